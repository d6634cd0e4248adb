/* test_server_force_file.c — the --force-output file (src/server/force.c): how
 * a file splits into outputs (marker lines, CRLF, a trailing marker, lines
 * that only look like markers, an empty file), that each output's tokens
 * decode to exactly its bytes with the special strings as single tokens,
 * "</think>" in front for thinking-mode requests that lack one, which
 * output a conversation gets, and a clear error for a missing file. The
 * SDK and agent tests (tests/node) drive it through the server. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/model/synth.h"
#include "../src/server/force.h"
#include "testutil.h"

static const ds4_tokenizer *tok;
static const char *tmp;

static srv_force *load(const char *text, size_t len) {
    char path[512];
    snprintf(path, sizeof path, "%s/force-test.txt", tmp);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, len, f) != len || fclose(f)) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    ds4_err err = {{0}};
    srv_force *fo = srv_force_load(path, tok, &err);
    CHECK(fo != NULL, "load: %s", err.msg);
    return fo;
}

/* The bytes tokens[0..n) decode to. */
static char *decode(const int32_t *ids, int n) {
    ds4_buf b = {0};
    for (int i = 0; i < n; i++) {
        size_t len;
        const char *s = ds4_token_bytes(tok, ids[i], &len);
        ds4_buf_add(&b, s, len);
    }
    ds4_buf_adds(&b, "");
    return ds4_buf_take(&b);
}

/* A request with n_assistant assistant messages, thinking or not. */
static srv_request request(int n_assistant, bool thinking) {
    static srv_message msgs[8];
    for (int i = 0; i < 8; i++) msgs[i] = (srv_message){.role = i % 2 ? SRV_ROLE_ASSISTANT : SRV_ROLE_USER, .content = ""};
    return (srv_request){.msgs = msgs, .n_msgs = 2 * n_assistant + 1, .think = thinking ? SRV_THINK_HIGH : SRV_THINK_NONE};
}

/* Output k (as the k-th assistant turn sees it) decodes to want. */
static void expect(const srv_force *fo, int k, bool thinking, const char *want) {
    srv_request r = request(k, thinking);
    int n, index;
    const int32_t *ids = srv_force_tokens(fo, &r, &n, &index);
    char *got = decode(ids, n);
    CHECK(!strcmp(got, want), "turn %d%s: got '%s', want '%s'", k, thinking ? " (thinking)" : "", got, want);
    free(got);
}

#define M SRV_FORCE_MARKER

int main(void) {
    tmp = getenv("DS4_TMP") ? getenv("DS4_TMP") : "/tmp";
    ds4_err err = {{0}};
    ds4_synth_vocab v;
    if (ds4_synth_vocab_fallback(&v, 1024, &err)) {
        fprintf(stderr, "vocab: %s\n", err.msg);
        return 1;
    }
    ds4_tokenizer *t = ds4_tokenizer_from_arrays((const char *const *)v.tokens, v.n_tokens,
                                                 (const char *const *)v.merges, v.n_merges, &err);
    ds4_synth_vocab_free(&v);
    if (!t) {
        fprintf(stderr, "tokenizer: %s\n", err.msg);
        return 1;
    }
    tok = t;
    int32_t think_close = ds4_tokenizer_specials(tok).think_close;

    /* one output: exact bytes; thinking mode gets "</think>" in front */
    const char *call = "Hi.\n\n<" DS4_TOK_STR_DSML "tool_calls>\n</" DS4_TOK_STR_DSML "tool_calls>";
    srv_force *fo = load(call, strlen(call));
    CHECK(srv_force_count(fo) == 1, "one output");
    expect(fo, 0, false, call);
    expect(fo, 3, false, call); /* past the end: the last output */
    char with_close[256];
    snprintf(with_close, sizeof with_close, "%s%s", DS4_TOK_STR_THINK_CLOSE, call);
    expect(fo, 0, true, with_close);
    srv_request r = request(0, false);
    int n, index;
    const int32_t *ids = srv_force_tokens(fo, &r, &n, &index);
    int dsml = 0;
    for (int i = 0; i < n; i++) dsml += ids[i] == ds4_tokenizer_specials(tok).dsml;
    CHECK(dsml == 2 && index == 0, "｜DSML｜ is one special token each time (%d)", dsml);
    r.think = SRV_THINK_HIGH;
    ids = srv_force_tokens(fo, &r, &n, &index);
    CHECK(n > 0 && ids[0] == think_close, "thinking: the special </think> token first");
    srv_force_free(fo);

    /* outputs per turn; CRLF marker lines; reasoning already closed */
    const char *multi = "R</think>A\n" M "\nB\r\n" M "\r\nC\n";
    fo = load(multi, strlen(multi));
    CHECK(srv_force_count(fo) == 3, "three outputs (%d)", srv_force_count(fo));
    expect(fo, 0, true, "R</think>A"); /* has its own </think> */
    expect(fo, 0, false, "R</think>A");
    expect(fo, 1, false, "B");
    expect(fo, 2, false, "C\n");
    expect(fo, 3, false, "C\n");
    expect(fo, 1, true, "</think>B");
    srv_force_free(fo);

    /* a marker on the last line adds no empty output; an empty output between markers stays */
    fo = load("A\n" M "\n", strlen("A\n" M "\n"));
    CHECK(srv_force_count(fo) == 1, "trailing marker line (%d)", srv_force_count(fo));
    srv_force_free(fo);
    fo = load("A\n" M, strlen("A\n" M));
    CHECK(srv_force_count(fo) == 1, "trailing marker without newline (%d)", srv_force_count(fo));
    srv_force_free(fo);
    const char *gap = "A\n" M "\n" M "\nB";
    fo = load(gap, strlen(gap));
    CHECK(srv_force_count(fo) == 3, "empty output between markers (%d)", srv_force_count(fo));
    expect(fo, 1, false, "");
    expect(fo, 2, false, "B");
    srv_force_free(fo);

    /* lines that only contain the marker text do not split */
    const char *lookalike = "x " M "\n" M " y\n" M "x";
    fo = load(lookalike, strlen(lookalike));
    CHECK(srv_force_count(fo) == 1, "look-alike lines (%d)", srv_force_count(fo));
    expect(fo, 0, false, lookalike);
    srv_force_free(fo);

    /* an empty file: one empty output (EOS at once) */
    fo = load("", 0);
    CHECK(srv_force_count(fo) == 1, "empty file");
    expect(fo, 0, false, "");
    srv_force_free(fo);

    /* bytes that are not UTF-8 still round-trip */
    const char bin[] = "a\xff\xfe" "b\0c";
    fo = load(bin, sizeof bin - 1);
    r = request(0, false);
    ids = srv_force_tokens(fo, &r, &n, &index);
    char *got = decode(ids, n);
    CHECK(!memcmp(got, bin, sizeof bin - 1), "raw bytes round-trip");
    free(got);
    srv_force_free(fo);

    char missing[512];
    snprintf(missing, sizeof missing, "%s/no-such-force-file.txt", tmp);
    CHECK(srv_force_load(missing, tok, &err) == NULL && strstr(err.msg, "no-such-force-file.txt") &&
              strstr(err.msg, "No such file"),
          "missing file: %s", err.msg);

    ds4_tokenizer_free(t);
    return TEST_DONE();
}
