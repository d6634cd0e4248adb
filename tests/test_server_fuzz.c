/* test_server_fuzz.c — deterministic mutation fuzzing of the server's
 * request-to-response path, run in the normal suite (under ASan with
 * SAN=1). It feeds tests/fuzz/fuzz_server.c's target (included here, so
 * the checks live in one place) with valid requests of every endpoint
 * paired with model output full of DSML, then with mutants of them: every
 * truncation, byte flips, inserted JSON fragments (deep nesting, huge
 * numbers, lone surrogates, wrong types) and mangled tool blocks. The target
 * aborts on any invalid output; reaching the end is the pass. */
#include "fuzz/fuzz_server.c"

#include <stdio.h>

#include "testutil.h"

#define BAR "\xEF\xBD\x9C"
#define D BAR "DSML" BAR

static const char *const bodies[] = {
    "{\"stream\":true,\"stop\":[\"zz\"],\"messages\":[{\"role\":\"system\",\"content\":\"s\"},{\"role\":\"user\",\"content\":\"hi\"},"
    "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"id\":\"c1\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":1}\"}}]},"
    "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"r\"}],\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
    "\"parameters\":{\"type\":\"object\"}}}]}",
    "{\"prompt\":\"once\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
    "{\"stream\":true,\"reasoning\":{\"summary\":\"auto\"},\"input\":[{\"role\":\"user\",\"content\":\"x\"},"
    "{\"type\":\"function_call\",\"call_id\":\"c\",\"name\":\"f\",\"arguments\":\"{}\"},"
    "{\"type\":\"function_call_output\",\"call_id\":\"c\",\"output\":\"o\"}],\"tools\":[{\"type\":\"function\",\"name\":\"f\"}]}",
    "{\"stream\":true,\"system\":\"s\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":"
    "[{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\",\"input\":{}}]},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\","
    "\"tool_use_id\":\"t\",\"content\":\"r\"}]}],\"tools\":[{\"name\":\"f\",\"input_schema\":{}}]}",
};

static const char *const outputs[] = {
    "why</think>Sure.\n\n<" D "tool_calls>\n<" D "invoke name=\"f\">\n<" D "parameter name=\"a\" string=\"false\">{\"b\": [1, 2]}</" D
    "parameter>\n<" D "parameter name=\"s\" string=\"true\">x &lt;/" D "parameter> y</" D "parameter>\n</" D "invoke>\n</" D
    "tool_calls>",
    "no think close <" D "tool_calls> zz tail \xff\xfe <think>",
};

static const char *const fragments[] = {
    "{", "}", "[", "]", "\"", ":", ",", "null", "true", "1e999", "-1", "\"\\ud800\"", "\\u0000", "[[[[[[[[[[[[[[[[",
    "{\"role\":\"tool\"}", "\"stream\":false,", "\"max_tokens\":0,", "\xc3", "\xff",
};

static uint64_t rng = 0x2545F4914F6CDD1Dull;
static uint32_t rnd(uint32_t n) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static long n_runs;

static void run_input(int flags, const char *body, size_t blen, const char *out, size_t olen) {
    ds4_buf in = {0};
    unsigned char f = (unsigned char)flags;
    ds4_buf_add(&in, &f, 1);
    ds4_buf_add(&in, body, blen);
    ds4_buf_add(&in, "", 1);
    ds4_buf_add(&in, out, olen);
    LLVMFuzzerTestOneInput((const uint8_t *)in.p, in.len);
    ds4_buf_free(&in);
    n_runs++;
}

int main(void) {
    size_t nb = sizeof bodies / sizeof bodies[0], no = sizeof outputs / sizeof outputs[0];
    for (size_t b = 0; b < nb; b++) {
        for (size_t o = 0; o < no; o++)
            for (int piece = 0; piece < 4; piece++) run_input((int)b | piece << 2, bodies[b], strlen(bodies[b]), outputs[o], strlen(outputs[o]));
        /* the same body on each endpoint, streaming and not */
        for (int api = 0; api < 4; api++) run_input(api, bodies[b], strlen(bodies[b]), outputs[0], strlen(outputs[0]));
        /* every truncation of the body */
        for (size_t cut = 0; cut < strlen(bodies[b]); cut++) run_input((int)b, bodies[b], cut, outputs[0], strlen(outputs[0]));
    }
    /* every truncation of the model output */
    for (size_t o = 0; o < no; o++)
        for (size_t cut = 0; cut <= strlen(outputs[o]); cut++)
            for (size_t b = 0; b < nb; b++) run_input((int)b | 1 << 2, bodies[b], strlen(bodies[b]), outputs[o], cut);
    /* random mutants */
    for (int i = 0; i < 4000; i++) {
        size_t b = rnd((uint32_t)nb), o = rnd((uint32_t)no);
        ds4_buf body = {0}, out = {0};
        ds4_buf_adds(&body, bodies[b]);
        ds4_buf_adds(&out, outputs[o]);
        int edits = 1 + (int)rnd(4);
        for (int k = 0; k < edits; k++) {
            ds4_buf *t = rnd(3) ? &body : &out;
            size_t at = t->len ? rnd((uint32_t)t->len) : 0;
            ds4_buf tail = {0};
            switch (rnd(3)) {
            case 0: /* flip a byte */
                if (t->len) t->p[at] ^= (char)(1u << rnd(8));
                break;
            case 1: /* insert a fragment */
                ds4_buf_add(&tail, t->p + at, t->len - at);
                ds4_buf_truncate(t, at);
                ds4_buf_adds(t, fragments[rnd(sizeof fragments / sizeof fragments[0])]);
                ds4_buf_add(t, tail.p ? tail.p : "", tail.len);
                break;
            default: /* delete a span */
                if (t->len) {
                    size_t n = 1 + rnd(8);
                    if (n > t->len - at) n = t->len - at;
                    memmove(t->p + at, t->p + at + n, t->len - at - n);
                    ds4_buf_truncate(t, t->len - n);
                }
            }
            ds4_buf_free(&tail);
        }
        run_input((int)rnd(256), body.p ? body.p : "", body.len, out.p ? out.p : "", out.len);
        ds4_buf_free(&body);
        ds4_buf_free(&out);
    }
    CHECK(n_runs > 5000, "ran %ld inputs", n_runs);
    printf("%ld inputs\n", n_runs);
    return TEST_DONE();
}
