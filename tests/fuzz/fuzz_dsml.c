/* fuzz_dsml.c — libFuzzer target for the incremental DSML parser (`make fuzz`).
 *
 * The first input byte picks the options (thinking, tools) and a piece
 * size; the rest is generated text. The text is parsed whole and in pieces
 * of that size; both must give the same events (adjacent text deltas
 * merged), every event text must be valid UTF-8, and the CALL_ARGS deltas
 * must add up to the CALL_END text. Run:
 * build-fuzz/fuzz/fuzz_dsml -max_total_time=60 CORPUS_DIR tests/fuzz/corpus_dsml
 * (committed seeds: canonical, variant-style and escaped blocks). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/chat/dsml.h"
#include "../../src/chat/json_py.h"
#include "../../src/common/utf8.h"

typedef struct log {
    ds4_buf events, args;
    int last_type;
} log;

static void on_event(void *ctx, const ds4_dsml_event *ev) {
    log *l = ctx;
    if (ds4_utf8_valid_len(ev->text, ev->len) != ev->len) abort();
    if (ev->type == DS4_DSML_CALL_START) ds4_buf_truncate(&l->args, 0);
    if (ev->type == DS4_DSML_CALL_ARGS) ds4_buf_add(&l->args, ev->text, ev->len);
    if (ev->type == DS4_DSML_CALL_END &&
        (l->args.len != ev->len || memcmp(l->args.p, ev->text, ev->len) != 0))
        abort();
    bool delta = ev->type == DS4_DSML_REASONING || ev->type == DS4_DSML_CONTENT ||
                 ev->type == DS4_DSML_CALL_ARGS;
    if (!delta || (int)ev->type != l->last_type) ds4_buf_addf(&l->events, "\n%d:%d:", ev->type, ev->index);
    l->last_type = delta ? (int)ev->type : -1;
    ds4_buf_add(&l->events, ev->text, ev->len);
}

static void parse(const ds4_dsml_opts *o, const char *s, size_t n, size_t piece, log *l) {
    *l = (log){.last_type = -1};
    ds4_dsml_parser *p = ds4_dsml_parser_new(o, on_event, l);
    for (size_t at = 0; at < n; at += piece) {
        ds4_dsml_position(p);
        ds4_dsml_feed(p, s + at, n - at < piece ? n - at : piece);
    }
    ds4_dsml_finish(p);
    ds4_dsml_parser_free(p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    ds4_dsml_opts o = {data[0] & 1, (data[0] & 2) != 0};
    size_t piece = 1 + (data[0] >> 2);
    const char *s = (const char *)data + 1;
    log whole, split;
    parse(&o, s, size - 1, size, &whole);
    parse(&o, s, size - 1, piece, &split);
    if (whole.events.len != split.events.len ||
        memcmp(ds4_buf_str(&whole.events), ds4_buf_str(&split.events), whole.events.len) != 0)
        abort();
    ds4_buf_free(&whole.events);
    ds4_buf_free(&whole.args);
    ds4_buf_free(&split.events);
    ds4_buf_free(&split.args);
    return 0;
}
