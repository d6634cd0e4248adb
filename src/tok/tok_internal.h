/* tok_internal.h — the tokenizer's tables, shared by vocab.c (which builds
 * them) and bpe.c / detok.c (which read them). Not for use outside src/tok/. */
#ifndef DS4_TOK_INTERNAL_H
#define DS4_TOK_INTERNAL_H

#include <stdint.h>

#include "tokenizer.h"

/* One merge, keyed by the ids of its two parts. */
typedef struct tok_merge {
    uint64_t key;    /* (uint64)left << 32 | right; TOK_EMPTY_KEY when unused */
    uint32_t rank;   /* lower merges first */
    int32_t result;  /* id of the merged token */
} tok_merge;

#define TOK_EMPTY_KEY UINT64_MAX

/* A special string that ds4_tokenize matches literally. */
typedef struct tok_special {
    const char *str;
    size_t len;
    int32_t id;
} tok_special;

struct ds4_tokenizer {
    int32_t n_vocab;
    char *strs;               /* every token string, back to back */
    uint64_t *str_off;        /* token i is strs[str_off[i] .. str_off[i+1]) */
    char *bytes;              /* every token's decoded bytes, back to back */
    uint64_t *bytes_off;
    size_t max_token_bytes;
    int32_t byte_token[256];  /* id of the token of each single byte */

    tok_merge *merges;        /* open-addressing hash table */
    uint64_t merge_mask;      /* table size - 1 (a power of two) */

    ds4_tok_specials specials;
    tok_special match[7];     /* the specials present, for ds4_tokenize */
    int n_match;
    uint8_t match_first[256]; /* 1 where some special starts with that byte */
};

static inline uint64_t tok_merge_slot(uint64_t key, uint64_t mask) {
    return (key * 0x9E3779B97F4A7C15ull >> 29) & mask;
}

/* The merge of (left, right), or NULL. */
static inline const tok_merge *tok_find_merge(const ds4_tokenizer *t, int32_t left, int32_t right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    for (uint64_t i = tok_merge_slot(key, t->merge_mask);; i = (i + 1) & t->merge_mask) {
        const tok_merge *m = &t->merges[i];
        if (m->key == key) return m;
        if (m->key == TOK_EMPTY_KEY) return NULL;
    }
}

#endif
