/* test_dsml.c — the DSML renderer and the incremental parser.
 *
 * Random tool calls are rendered canonically, wrapped in reasoning and
 * content, and parsed back: whole, split at every byte position, in random
 * pieces and byte by byte. Every way of feeding must give the same events,
 * and the parsed calls must equal the originals (arguments as Python's
 * json.dumps writes them) and re-render to the same bytes. Malformed blocks
 * must give an ERROR event however they are split. The assistant turns of
 * the oracle prompts (tests/chat) must parse as DeepSeek's official parser
 * parses them (tests/chat/parsed.json). Also: the marker
 * variants, think gating, held-back text, UTF-8 safety and the sampler's
 * position classification. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../src/chat/chat.h"
#include "../src/chat/dsml.h"
#include "../src/chat/json_py.h"
#include "../src/common/utf8.h"
#include "testutil.h"

#define BAR "\xEF\xBD\x9C"
#define D BAR "DSML" BAR

/* ---- deterministic randomness ---- */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(uint32_t n) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* ---- event recording (adjacent text deltas of one kind merged) ---- */

typedef struct rec {
    ds4_buf log;   /* one line per merged event */
    int last_type, last_index;
    ds4_buf pending; /* text of the event being merged */
    ds4_buf args;    /* concatenated CALL_ARGS of the current call */
    int errors;
    bool utf8_ok;    /* every text event was valid UTF-8 */
} rec;

static void rec_flush(rec *r) {
    if (r->last_type >= 0) {
        ds4_buf_addf(&r->log, "%d:%d:", r->last_type, r->last_index);
        ds4_buf_add(&r->log, r->pending.p, r->pending.len);
        ds4_buf_addc(&r->log, '\n');
    }
    r->last_type = -1;
    ds4_buf_truncate(&r->pending, 0);
}

static void rec_sink(void *ctx, const ds4_dsml_event *ev) {
    rec *r = ctx;
    if (ds4_utf8_valid_len(ev->text, ev->len) != ev->len || strlen(ev->text) != ev->len) r->utf8_ok = false;
    bool delta = ev->type == DS4_DSML_REASONING || ev->type == DS4_DSML_CONTENT ||
                 ev->type == DS4_DSML_CALL_ARGS;
    if (ev->type == DS4_DSML_CALL_START) ds4_buf_truncate(&r->args, 0);
    if (ev->type == DS4_DSML_CALL_ARGS) ds4_buf_add(&r->args, ev->text, ev->len);
    if (ev->type == DS4_DSML_CALL_END) {
        CHECK(r->args.len == ev->len && memcmp(r->args.p, ev->text, ev->len) == 0,
              "args deltas [%s] != end [%s]", ds4_buf_str(&r->args), ev->text);
    }
    if (ev->type == DS4_DSML_ERROR) r->errors++;
    if (!(delta && (int)ev->type == r->last_type && ev->index == r->last_index)) rec_flush(r);
    r->last_type = (int)ev->type;
    r->last_index = ev->index;
    if (ev->type == DS4_DSML_ERROR) ds4_buf_adds(&r->pending, "error");
    else ds4_buf_add(&r->pending, ev->text, ev->len);
    if (!delta) rec_flush(r);
}

/* Parses text fed in the given pieces (cuts: ascending split offsets). */
static char *parse_pieces(const char *text, size_t n, const ds4_dsml_opts *o, const size_t *cuts,
                          int ncuts, int *errors, bool *utf8_ok) {
    rec r = {.last_type = -1, .utf8_ok = true};
    ds4_dsml_parser *p = ds4_dsml_parser_new(o, rec_sink, &r);
    size_t at = 0;
    for (int i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        ds4_dsml_feed(p, text + at, end - at);
        at = end;
    }
    ds4_dsml_finish(p);
    ds4_dsml_parser_free(p);
    rec_flush(&r);
    ds4_buf_free(&r.pending);
    ds4_buf_free(&r.args);
    if (errors) *errors = r.errors;
    if (utf8_ok) *utf8_ok = r.utf8_ok;
    return ds4_buf_take(&r.log);
}

/* Same events whole, split at every byte, byte by byte and in random pieces. */
static void check_split_invariance(const char *name, const char *text, size_t n,
                                   const ds4_dsml_opts *o, bool every_split) {
    char *whole = parse_pieces(text, n, o, NULL, 0, NULL, NULL);
    size_t *cuts = malloc((n + 1) * sizeof *cuts);
    for (size_t c = 1; every_split && c < n; c++) {
        size_t cut[1] = {c};
        bool ok;
        char *got = parse_pieces(text, n, o, cut, 1, NULL, &ok);
        CHECK(strcmp(got, whole) == 0, "%s: split at %zu differs:\n%s\nvs\n%s", name, c, got, whole);
        CHECK(ok, "%s: split at %zu: invalid UTF-8 in an event", name, c);
        free(got);
    }
    for (size_t i = 0; i + 1 < n; i++) cuts[i] = i + 1;
    bool ok;
    char *bytes = parse_pieces(text, n, o, cuts, n > 0 ? (int)n - 1 : 0, NULL, &ok);
    CHECK(strcmp(bytes, whole) == 0, "%s: byte by byte differs:\n%s\nvs\n%s", name, bytes, whole);
    CHECK(ok, "%s: byte by byte: invalid UTF-8 in an event", name);
    free(bytes);
    for (int trial = 0; trial < 20; trial++) {
        int k = 0;
        for (size_t at = 1 + rnd(8); at < n; at += 1 + rnd(trial % 2 ? 40 : 6)) cuts[k++] = at;
        char *got = parse_pieces(text, n, o, cuts, k, NULL, NULL);
        CHECK(strcmp(got, whole) == 0, "%s: random split differs", name);
        free(got);
    }
    free(cuts);
    free(whole);
}

/* ---- random calls ---- */

static const char *const pieces[] = {
    "a", "Z", "0", " ", "\n", "\t", "\"", "\\", "<", ">", "&", "/", "'", "é", "中文", "🦊",
    "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9", "</" D "parameter>", "&lt;/" D "parameter>",
    "&amp;lt;/" D "parameter>", "<" D "invoke name=\"x\">", "</think>", "&amp;", "&lt;",
    "</" D "invoke>", "\x01", "{\"k\": 1}", "\r\n", "</tool_result>", "｜DSML｜"};

static void rand_text(ds4_buf *b, int maxlen) {
    int n = (int)rnd((uint32_t)maxlen + 1);
    for (int i = 0; i < n; i++) ds4_buf_adds(b, pieces[rnd(sizeof pieces / sizeof pieces[0])]);
}

static json_t *rand_json(int depth) {
    switch (rnd(depth > 2 ? 6 : 8)) {
    case 0: {
        ds4_buf b = {0};
        rand_text(&b, 6);
        json_t *v = json_stringn(ds4_buf_str(&b), b.len);
        ds4_buf_free(&b);
        return v;
    }
    case 1: return json_integer((json_int_t)rnd(2000000) - 1000000);
    case 2: return json_real(((double)rnd(1000000) - 500000) / (1 + rnd(1000)));
    case 3: return rnd(2) ? json_true() : json_false();
    case 4: return json_null();
    case 5: return json_integer((json_int_t)rnd(10));
    case 6: {
        json_t *a = json_array();
        for (int i = (int)rnd(4); i > 0; i--) json_array_append_new(a, rand_json(depth + 1));
        return a;
    }
    default: {
        json_t *o = json_object();
        for (int i = (int)rnd(4); i > 0; i--) {
            char key[16];
            snprintf(key, sizeof key, "k%u", rnd(100));
            json_object_set_new(o, key, rand_json(depth + 1));
        }
        return o;
    }
    }
}

static const char *const key_names[] = {"path", "content", "query", "a&b", "say \"hi\"", "数",
                                        "x<y>", "n", "flag", "items"};

/* A random arguments object: mostly strings, some other JSON values. */
static json_t *rand_args(void) {
    json_t *o = json_object();
    for (int i = (int)rnd(5); i > 0; i--) {
        const char *k = key_names[rnd(sizeof key_names / sizeof key_names[0])];
        json_t *v;
        if (rnd(2)) {
            ds4_buf b = {0};
            rand_text(&b, 12);
            v = json_stringn(ds4_buf_str(&b), b.len);
            ds4_buf_free(&b);
        } else {
            v = rand_json(0);
        }
        json_object_set_new(o, k, v);
    }
    return o;
}

static void test_random_round_trips(void) {
    for (int round = 0; round < 300; round++) {
        int ncalls = 1 + (int)rnd(3);
        ds4_tool_call calls[3];
        char *args_text[3];
        ds4_buf want_args[3] = {{0}};
        static const char *const names[] = {"get_weather", "read_file", "a&b\"c", "工具", "x"};
        for (int i = 0; i < ncalls; i++) {
            json_t *a = rand_args();
            args_text[i] = json_dumps(a, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ALLOW_NUL);
            ds4_json_py_dump(&want_args[i], a);
            json_decref(a);
            calls[i] = (ds4_tool_call){"id", names[rnd(5)], args_text[i]};
        }
        ds4_buf block = {0}, text = {0}, reasoning = {0}, content = {0};
        ds4_err err = {{0}};
        CHECK(ds4_dsml_render_calls(&block, calls, ncalls, &err) == 0, "render: %s", err.msg);
        bool thinking = rnd(2);
        if (thinking) {
            do {
                ds4_buf_truncate(&reasoning, 0);
                rand_text(&reasoning, 10);
            } while (strstr(ds4_buf_str(&reasoning), "</think>"));
            ds4_buf_add(&text, reasoning.p, reasoning.len);
            ds4_buf_adds(&text, "</think>");
        }
        do {
            ds4_buf_truncate(&content, 0);
            rand_text(&content, 6);
        } while (strstr(ds4_buf_str(&content), "tool_calls>"));
        ds4_buf_add(&text, content.p, content.len);
        ds4_buf_add(&text, block.p, block.len);
        ds4_dsml_opts o = {thinking, true};

        ds4_dsml_message m;
        int rc = ds4_dsml_parse_message(text.p, text.len, &o, &m, &err);
        CHECK(rc == 0, "round %d: parse failed: %s\n%s", round, err.msg, text.p);
        if (rc == 0) {
            CHECK(strcmp(ds4_buf_str(&m.reasoning), ds4_buf_str(&reasoning)) == 0,
                  "round %d: reasoning", round);
            CHECK(m.content.len == content.len &&
                      memcmp(ds4_buf_str(&m.content), ds4_buf_str(&content), content.len) == 0,
                  "round %d: content [%s] vs [%s]", round, ds4_buf_str(&m.content), content.p);
            CHECK(m.n_calls == ncalls, "round %d: %d calls", round, m.n_calls);
            ds4_tool_call back[3];
            for (int i = 0; i < m.n_calls && i < ncalls; i++) {
                CHECK(strcmp(m.calls[i].name, calls[i].name) == 0, "name %s", m.calls[i].name);
                CHECK(strcmp(m.calls[i].arguments, want_args[i].p) == 0,
                      "round %d: args\n got %s\nwant %s", round, m.calls[i].arguments,
                      want_args[i].p);
                back[i] = (ds4_tool_call){NULL, m.calls[i].name, m.calls[i].arguments};
            }
            CHECK(m.raw_block.len == block.len && memcmp(m.raw_block.p, block.p, block.len) == 0,
                  "round %d: raw block", round);
            ds4_buf again = {0};
            if (m.n_calls == ncalls) {
                CHECK(ds4_dsml_render_calls(&again, back, ncalls, &err) == 0, "%s", err.msg);
                CHECK(strcmp(ds4_buf_str(&again), block.p) == 0, "round %d: re-render differs",
                      round);
            }
            ds4_buf_free(&again);
            ds4_dsml_message_free(&m);
        }
        check_split_invariance("random", text.p, text.len, &o, round < 30);
        for (int i = 0; i < ncalls; i++) {
            free(args_text[i]);
            ds4_buf_free(&want_args[i]);
        }
        ds4_buf_free(&block);
        ds4_buf_free(&text);
        ds4_buf_free(&reasoning);
        ds4_buf_free(&content);
    }
}

/* ---- fixed inputs ---- */

static void expect_parse(const char *name, const char *text, bool thinking, bool tools,
                         const char *reasoning, const char *content, int ncalls,
                         const char *name0, const char *args0) {
    ds4_dsml_opts o = {thinking, tools};
    ds4_dsml_message m;
    ds4_err err = {{0}};
    int rc = ds4_dsml_parse_message(text, strlen(text), &o, &m, &err);
    CHECK(rc == 0, "%s: %s", name, err.msg);
    CHECK(strcmp(ds4_buf_str(&m.reasoning), reasoning) == 0, "%s: reasoning [%s]", name,
          ds4_buf_str(&m.reasoning));
    CHECK(strcmp(ds4_buf_str(&m.content), content) == 0, "%s: content [%s]", name,
          ds4_buf_str(&m.content));
    CHECK(m.n_calls == ncalls, "%s: %d calls", name, m.n_calls);
    if (rc == 0 && ncalls > 0 && m.n_calls > 0) {
        CHECK(strcmp(m.calls[0].name, name0) == 0, "%s: name %s", name, m.calls[0].name);
        CHECK(strcmp(m.calls[0].arguments, args0) == 0, "%s: args %s", name, m.calls[0].arguments);
    }
    ds4_dsml_message_free(&m);
    check_split_invariance(name, text, strlen(text), &o, true);
}

static void test_well_formed(void) {
    /* The block of the official encoder's own example (tests/chat case
     * tools_system_think_single_call). */
    expect_parse("official", "The user wants to know the weather in Beijing. I should use the "
                 "get_weather tool.</think>\n\n<" D "tool_calls>\n<" D "invoke name=\"get_weather\">\n<" D
                 "parameter name=\"location\" string=\"true\">Beijing</" D "parameter>\n<" D
                 "parameter name=\"unit\" string=\"true\">celsius</" D "parameter>\n</" D
                 "invoke>\n</" D "tool_calls>",
                 true, true,
                 "The user wants to know the weather in Beijing. I should use the get_weather tool.",
                 "", 1, "get_weather", "{\"location\": \"Beijing\", \"unit\": \"celsius\"}");
    const char *variants[] = {
        ("Sure.<" D "tool_calls><" D "invoke name=\"f\"><" D "parameter name=\"n\" string=\"false\">"
         "[1,2]</" D "parameter></" D "invoke></" D "tool_calls>"),
        ("Sure.\r\n<DSML" BAR "tool_calls>\n <DSML" BAR "invoke  name=\"f\" >\n\t<DSML" BAR
         "parameter string=\"false\" name=\"n\"> [1, 2] </DSML" BAR "parameter>\n</DSML" BAR
         "invoke>\n</DSML" BAR "tool_calls>\n\n"),
        ("Sure.\n\n<tool_calls>\n<invoke name=\"f\">\n<parameter name=\"n\" string=\"false\">[1,\n2]"
         "</parameter>\n</invoke>\n</tool_calls>"),
    };
    for (int i = 0; i < 3; i++)
        expect_parse("variant", variants[i], false, true, "", "Sure.", 1, "f", "{\"n\": [1, 2]}");
    expect_parse("separator only", "Sure. \n\n\n<" D "tool_calls><" D "invoke name=\"f\"></" D
                 "invoke></" D "tool_calls>", false, true, "", "Sure. \n", 1, "f", "{}");
    expect_parse("no params", "<" D "tool_calls>\n<" D "invoke name=\"noop\">\n\n</" D "invoke>\n</" D
                 "tool_calls>", false, true, "", "", 1, "noop", "{}");
    expect_parse("entities", "<" D "tool_calls><" D "invoke name=\"a&amp;b&quot;&lt;\"><" D
                 "parameter name=\"s\" string=\"true\">x &amp; &amp;lt;/" D "parameter> &lt;/" D "parameter>"
                 "</" D "parameter></" D "invoke></" D "tool_calls>", false, true, "", "", 1,
                 "a&b\"<", "{\"s\": \"x &amp; &lt;/" D "parameter> </" D "parameter>\"}");
    expect_parse("dsml in reasoning", "think <" D "tool_calls> not a call</think>answer", true, true,
                 "think <" D "tool_calls> not a call", "answer", 0, NULL, NULL);
    expect_parse("no tools", "text <" D "tool_calls>\n<" D "invoke name=\"f\">", false, false, "",
                 "text <" D "tool_calls>\n<" D "invoke name=\"f\">", 0, NULL, NULL);
    expect_parse("held back at end", "a < b and </thi", true, true, "a < b and </thi", "", 0, NULL,
                 NULL);
    expect_parse("partial marker at end", "x</think>see <" D "tool_ca", true, true, "x",
                 "see <" D "tool_ca", 0, NULL, NULL);
    expect_parse("empty", "", true, true, "", "", 0, NULL, NULL);
    expect_parse("content keeps trailing ws", "done.\n\n", false, true, "", "done.\n\n", 0, NULL, NULL);
    expect_parse("utf8", "r\xC3\xA9\xE4\xB8\xAD</think>\xF0\x9F\xA6\x8A ok", true, true,
                 "r\xC3\xA9\xE4\xB8\xAD", "\xF0\x9F\xA6\x8A ok", 0, NULL, NULL);
    expect_parse("invalid utf8", "a\xFF" "b\xE4\xB8", false, true, "",
                 "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD", 0, NULL, NULL);
    expect_parse("whitespace after block", "<" D "tool_calls><" D "invoke name=\"f\"></" D "invoke></" D
                 "tool_calls>\n  \n", false, true, "", "", 1, "f", "{}");
}

static void test_malformed(void) {
    static const struct { const char *name, *text, *want; } bad[] = {
        {"unterminated invoke", "<" D "tool_calls>\n<" D "invoke name=\"f\">\n<" D
         "parameter name=\"a\" string=\"true\">x</" D "parameter>\n", "unterminated"},
        {"unterminated string", "<" D "tool_calls><" D "invoke name=\"f\"><" D
         "parameter name=\"a\" string=\"true\">x</" D "param", "unterminated"},
        {"unterminated block", "<" D "tool_calls>\n", "unterminated"},
        {"bad attribute", "<" D "tool_calls><" D "invoke nam=\"f\">", "attribute"},
        {"attribute without quotes", "<" D "tool_calls><" D "invoke name=f>", "attribute"},
        {"unknown tag", "<" D "tool_calls><" D "call name=\"f\">", "unknown tag"},
        {"missing string attr", "<" D "tool_calls><" D "invoke name=\"f\"><" D
         "parameter name=\"a\">x</" D "parameter>", "no string"},
        {"bad string attr", "<" D "tool_calls><" D "invoke name=\"f\"><" D
         "parameter name=\"a\" string=\"yes\">x</" D "parameter>", "string attribute"},
        {"bad json", "<" D "tool_calls><" D "invoke name=\"f\"><" D
         "parameter name=\"a\" string=\"false\">{nope}</" D "parameter></" D "invoke></" D "tool_calls>",
         "not valid JSON"},
        {"empty json", "<" D "tool_calls><" D "invoke name=\"f\"><" D
         "parameter name=\"a\" string=\"false\"></" D "parameter>", "not valid JSON"},
        {"duplicate parameter", "<" D "tool_calls><" D "invoke name=\"f\"><" D
         "parameter name=\"a\" string=\"true\">1</" D "parameter><" D
         "parameter name=\"a\" string=\"true\">2</" D "parameter>", "duplicate"},
        {"text between tags", "<" D "tool_calls>\nhello<" D "invoke name=\"f\">", "unexpected text"},
        {"text after block", "<" D "tool_calls><" D "invoke name=\"f\"></" D "invoke></" D
         "tool_calls> trailing", "after the tool_calls"},
        {"empty block", "<" D "tool_calls>\n</" D "tool_calls>", "empty"},
        {"mixed styles", "<" D "tool_calls>\n<invoke name=\"f\">", "unexpected text"},
        {"invoke without name", "<" D "tool_calls><" D "invoke>", "name"},
        {"parameter outside invoke", "<" D "tool_calls><" D "parameter name=\"a\" string=\"true\">",
         "expected <invoke>"},
        {"control character in name", "<" D "tool_calls><" D "invoke name=\"a\x01\">",
         "control character"},
        {"closing tag attributes", "<" D "tool_calls><" D "invoke name=\"f\"></" D "invoke x=\"1\">",
         "closing tag"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ds4_dsml_opts o = {false, true};
        ds4_dsml_message m;
        ds4_err err = {{0}};
        int rc = ds4_dsml_parse_message(bad[i].text, strlen(bad[i].text), &o, &m, &err);
        CHECK(rc == -1, "%s: accepted", bad[i].name);
        CHECK(strstr(err.msg, bad[i].want) != NULL, "%s: message '%s' lacks '%s'", bad[i].name,
              err.msg, bad[i].want);
        ds4_dsml_message_free(&m);
        size_t n = strlen(bad[i].text);
        char *whole = parse_pieces(bad[i].text, n, &o, NULL, 0, NULL, NULL);
        for (size_t c = 1; c < n; c++) {
            size_t cut[1] = {c};
            int errors;
            char *got = parse_pieces(bad[i].text, n, &o, cut, 1, &errors, NULL);
            CHECK(errors == 1 && strcmp(got, whole) == 0, "%s: split at %zu: %d errors\n%s",
                  bad[i].name, c, errors, got);
            free(got);
        }
        free(whole);
    }
    /* A tag that never ends is cut off rather than buffered forever. */
    ds4_buf huge = {0};
    ds4_buf_adds(&huge, "<" D "tool_calls><" D "invoke name=\"");
    for (int i = 0; i < 70000; i++) ds4_buf_addc(&huge, 'x');
    ds4_dsml_opts o = {false, true};
    int errors;
    size_t cuts[2] = {100, 40000};
    free(parse_pieces(huge.p, huge.len, &o, cuts, 2, &errors, NULL));
    CHECK(errors == 1, "unterminated huge tag: %d errors", errors);
    ds4_buf_adds(&huge, "\"></" D "invoke></" D "tool_calls>");
    free(parse_pieces(huge.p, huge.len, &o, NULL, 0, &errors, NULL));
    CHECK(errors == 1, "complete huge tag: %d errors", errors);
    ds4_buf_free(&huge);
}

/* tests/chat/parsed.json: the official parser's view of every assistant
 * turn in the oracle prompts (text ends with EOS, which generation stops
 * at; our parser is fed the text before it). */
static void test_official_parses(void) {
    const char *root = getenv("DS4_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/chat/parsed.json", root ? root : ".");
    json_error_t je;
    json_t *all = json_load_file(path, 0, &je);
    CHECK(all != NULL, "cannot load %s: %s", path, je.text);
    CHECK(json_array_size(all) >= 30, "only %zu parsed turns", json_array_size(all));
    int n_calls = 0;
    for (size_t i = 0; i < json_array_size(all); i++) {
        json_t *t = json_array_get(all, i);
        const char *name = json_string_value(json_object_get(t, "case"));
        const char *text = json_string_value(json_object_get(t, "text"));
        size_t n = strlen(text), eos = strlen(DS4_CHAT_EOS);
        CHECK(n >= eos && strcmp(text + n - eos, DS4_CHAT_EOS) == 0, "%s: no EOS", name);
        ds4_dsml_opts o = {json_is_true(json_object_get(t, "thinking")), true};
        ds4_dsml_message m;
        ds4_err err = {{0}};
        int rc = ds4_dsml_parse_message(text, n - eos, &o, &m, &err);
        CHECK(rc == 0, "%s: %s", name, err.msg);
        CHECK(strcmp(ds4_buf_str(&m.reasoning), json_string_value(json_object_get(t, "reasoning"))) == 0,
              "%s: reasoning [%s]", name, ds4_buf_str(&m.reasoning));
        CHECK(strcmp(ds4_buf_str(&m.content), json_string_value(json_object_get(t, "content"))) == 0,
              "%s: content [%s]", name, ds4_buf_str(&m.content));
        json_t *calls = json_object_get(t, "calls");
        CHECK((size_t)m.n_calls == json_array_size(calls), "%s: %d calls", name, m.n_calls);
        for (int k = 0; k < m.n_calls && (size_t)k < json_array_size(calls); k++, n_calls++) {
            json_t *c = json_array_get(calls, (size_t)k);
            CHECK(strcmp(m.calls[k].name, json_string_value(json_object_get(c, "name"))) == 0,
                  "%s: name %s", name, m.calls[k].name);
            CHECK(strcmp(m.calls[k].arguments, json_string_value(json_object_get(c, "arguments"))) == 0,
                  "%s: arguments\n got %s\nwant %s", name, m.calls[k].arguments,
                  json_string_value(json_object_get(c, "arguments")));
        }
        ds4_dsml_message_free(&m);
    }
    CHECK(n_calls >= 10, "only %d calls", n_calls);
    json_decref(all);
}

static void sink_none(void *ctx, const ds4_dsml_event *ev) { (void)ctx, (void)ev; }

/* The position after feeding each prefix of a canonical message. */
static void test_positions(void) {
    const char *text = "think</think>ok\n\n<" D "tool_calls>\n<" D "invoke name=\"f\">\n<" D
                       "parameter name=\"s\" string=\"true\">str</" D "parameter>\n<" D
                       "parameter name=\"j\" string=\"false\">{\"k\": \"v\", \"n\": 1}</" D
                       "parameter>\n</" D "invoke>\n</" D "tool_calls>";
    static const struct { const char *after; ds4_dsml_pos want; } at[] = {
        {"thi", DS4_DSML_POS_TEXT},
        {"</think>o", DS4_DSML_POS_TEXT},
        {"ok\n\n<" BAR, DS4_DSML_POS_STRUCTURAL},
        {"tool_calls>\n", DS4_DSML_POS_STRUCTURAL},
        {"invoke name=\"", DS4_DSML_POS_STRUCTURAL},
        {"string=\"true\">", DS4_DSML_POS_STRING},
        {"string=\"true\">st", DS4_DSML_POS_STRING},
        {"str</", DS4_DSML_POS_STRUCTURAL},
        {"string=\"false\">", DS4_DSML_POS_JSON},
        {"{\"k", DS4_DSML_POS_JSON_STRING},
        {"{\"k\": ", DS4_DSML_POS_JSON},
        {"\"n\": 1", DS4_DSML_POS_JSON},
        {"1}</" D "parameter>\n", DS4_DSML_POS_STRUCTURAL},
    };
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++) {
        const char *hit = strstr(text, at[i].after);
        CHECK(hit != NULL, "marker %s", at[i].after);
        if (!hit) continue;
        size_t n = (size_t)(hit - text) + strlen(at[i].after);
        ds4_dsml_opts o = {true, true};
        ds4_dsml_parser *p = ds4_dsml_parser_new(&o, sink_none, NULL);
        for (size_t k = 0; k < n; k++) ds4_dsml_feed(p, text + k, 1);
        CHECK(ds4_dsml_position(p) == at[i].want, "after '%s': position %d, want %d", at[i].after,
              ds4_dsml_position(p), at[i].want);
        CHECK(!ds4_dsml_calls_closed(p), "closed too early");
        ds4_dsml_parser_free(p);
    }
    ds4_dsml_opts o = {true, true};
    ds4_dsml_parser *p = ds4_dsml_parser_new(&o, sink_none, NULL);
    ds4_dsml_feed(p, text, strlen(text));
    CHECK(ds4_dsml_calls_closed(p), "not closed after </tool_calls>");
    size_t rl;
    const char *raw = ds4_dsml_raw_block(p, &rl);
    CHECK(raw && strncmp(raw, "\n\n<" D "tool_calls>", 5) == 0 && rl == strlen(strstr(text, "\n\n<")),
          "raw block");
    ds4_dsml_parser_free(p);
}

/* Invalid arguments render as the official encoder renders them. */
static void test_render_fallbacks(void) {
    ds4_tool_call c[] = {{NULL, "f", "not json"}, {NULL, "g", NULL}};
    ds4_buf out = {0};
    ds4_err err = {{0}};
    CHECK(ds4_dsml_render_calls(&out, c, 2, &err) == 0, "%s", err.msg);
    CHECK(strstr(out.p, "<" D "parameter name=\"arguments\" string=\"true\">not json</" D "parameter>"),
          "%s", out.p);
    CHECK(strstr(out.p, "<" D "parameter name=\"arguments\" string=\"false\">null</" D "parameter>"),
          "%s", out.p);
    ds4_tool_call tag_in_json = {NULL, "h", "{\"v\": [\"</" D "parameter>\"]}"};
    ds4_buf_truncate(&out, 0);
    CHECK(ds4_dsml_render_calls(&out, &tag_in_json, 1, &err) == 0, "%s", err.msg);
    CHECK(strstr(out.p, "[\"\\u003c/" D "parameter>\"]") != NULL, "%s", out.p);
    ds4_dsml_opts o = {false, true};
    ds4_dsml_message m;
    CHECK(ds4_dsml_parse_message(out.p, out.len, &o, &m, &err) == 0, "%s", err.msg);
    CHECK(m.n_calls == 1 && strcmp(m.calls[0].arguments, "{\"v\": [\"</" D "parameter>\"]}") == 0,
          "json with close tag: %s", m.n_calls ? m.calls[0].arguments : "");
    ds4_dsml_message_free(&m);
    ds4_buf_free(&out);
}

int main(void) {
    test_well_formed();
    test_official_parses();
    test_malformed();
    test_positions();
    test_render_fallbacks();
    test_random_round_trips();
    return TEST_DONE();
}
