/* fuzz_tokenizer.c — libFuzzer target for the tokenizer (`make fuzz`).
 *
 * Tokenises each input (any bytes; the first byte chooses whether special
 * strings are parsed) with a small vocabulary that has multi-byte tokens,
 * tokens ending inside a character and the 7 specials, then streams the ids
 * through the detokenizer one at a time. Aborts unless every id is in range
 * and the bytes come back exactly. Run:
 * build-fuzz/fuzz/fuzz_tokenizer -max_total_time=60 CORPUS_DIR */
#include <stdlib.h>
#include <string.h>

#include "../../src/tok/tokenizer.h"
#include "../byte_level.h"

static ds4_tokenizer *tok;

static void init(void) {
    static char bytes[256][3];
    static const char *extra[] = {"Ġt", "he", "Ġthe", "ä¸", "ä¸Ń", "ðŁ", "ðŁĺ", "ĠĠ", "ĊĊ", "12",
                                  DS4_TOK_STR_BOS, DS4_TOK_STR_EOS, DS4_TOK_STR_USER,
                                  DS4_TOK_STR_ASSISTANT, DS4_TOK_STR_THINK_OPEN,
                                  DS4_TOK_STR_THINK_CLOSE, DS4_TOK_STR_DSML};
    static const char *merges[] = {"Ġ t", "h e", "Ġt he", "ä ¸", "ä¸ Ń", "ð Ł", "ðŁ ĺ",
                                   "Ġ Ġ", "Ċ Ċ", "1 2"};
    enum { N_EXTRA = sizeof extra / sizeof extra[0] };
    const char *tokens[256 + N_EXTRA];
    for (int b = 0; b < 256; b++) {
        byte_level_str(b, bytes[b]);
        tokens[b] = bytes[b];
    }
    for (int i = 0; i < N_EXTRA; i++) tokens[256 + i] = extra[i];
    ds4_err err;
    tok = ds4_tokenizer_from_arrays(tokens, 256 + N_EXTRA, merges, sizeof merges / sizeof merges[0],
                                    &err);
    if (!tok) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok) init();
    if (size == 0) return 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    int32_t *ids;
    size_t n;
    ds4_err err;
    if (ds4_tokenize(tok, text, len, data[0] & 1, &ids, &n, &err)) abort();
    ds4_detok d;
    if (ds4_detok_init(&d, tok, &err)) abort();
    char *out = malloc(len + 1);
    size_t got = 0;
    for (size_t i = 0; i < n; i++) {
        const char *b;
        size_t bl;
        if (ds4_detok_feed(&d, ids[i], &b, &bl, &err) || got + bl > len) abort();
        memcpy(out + got, b, bl);
        got += bl;
    }
    size_t tl;
    const char *tail = ds4_detok_flush(&d, &tl);
    if (got + tl != len) abort();
    memcpy(out + got, tail, tl);
    if (len && memcmp(out, text, len)) abort();
    free(out);
    free(ids);
    ds4_detok_free(&d);
    return 0;
}
