/* detok.c — streaming detokenizer (see tokenizer.h).
 *
 * After each token the output is everything fed so far minus a trailing
 * incomplete character: the at most 3 last bytes that form a proper prefix
 * of a valid UTF-8 sequence. Those are held and put in front of the next
 * token's bytes. Bytes that cannot start or continue a valid sequence are
 * released at once, so invalid UTF-8 is reproduced exactly, not repaired. */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"
#include "../common/utf8.h"

int ds4_detok_init(ds4_detok *d, const ds4_tokenizer *tok, ds4_err *err) {
    *d = (ds4_detok){.tok = tok};
    d->cap = ds4_tokenizer_max_token_bytes(tok) + sizeof d->held;
    d->buf = malloc(d->cap);
    if (!d->buf) return ds4_fail(err, "detokenizer: out of memory");
    return 0;
}

int ds4_detok_feed(ds4_detok *d, int32_t id, const char **out, size_t *len, ds4_err *err) {
    size_t n;
    const char *bytes = ds4_token_bytes(d->tok, id, &n);
    *out = d->buf;
    *len = 0;
    if (!bytes)
        return ds4_fail(err, "detokenizer: token id %d is outside the vocabulary (0..%d)", (int)id,
                        (int)ds4_tokenizer_n_vocab(d->tok) - 1);
    memcpy(d->buf, d->held, d->n_held);
    memcpy(d->buf + d->n_held, bytes, n);
    size_t total = d->n_held + n, keep = ds4_utf8_incomplete_tail(d->buf, total);
    d->n_held = keep;
    memcpy(d->held, d->buf + total - keep, keep);
    *len = total - keep;
    return 0;
}

const char *ds4_detok_flush(ds4_detok *d, size_t *len) {
    memcpy(d->buf, d->held, d->n_held);
    *len = d->n_held;
    d->n_held = 0;
    return d->buf;
}

void ds4_detok_free(ds4_detok *d) {
    free(d->buf);
    *d = (ds4_detok){0};
}
