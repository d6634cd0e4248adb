/* vocab.c — loading the tokenizer: vocabulary, merges, byte map, specials.
 *
 * Everything the hot path needs is resolved to ids here, once: BPE starts
 * from the token of each single byte and merges pairs of ids through one
 * hash table keyed by (left id, right id), so tokenising never hashes a
 * string. The string -> id table exists only while loading. Every token's
 * decoded bytes are precomputed for the detokenizer.
 *
 * Byte-level encoding: ds4_byte_level_cp (tokenizer.h). */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"
#include "../common/utf8.h"

#define N_BYTE_CPS 324 /* code points used by the byte-level encoding: 0..323 */

static bool byte_stands_for_itself(uint32_t b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
}

uint32_t ds4_byte_level_cp(uint8_t b) {
    if (byte_stands_for_itself(b)) return b;
    uint32_t cp = 256;
    for (uint32_t c = 0; c < b; c++) cp += !byte_stands_for_itself(c);
    return cp;
}

static void byte_level_map(uint32_t cp_of_byte[256], int16_t byte_of_cp[N_BYTE_CPS]) {
    for (int i = 0; i < N_BYTE_CPS; i++) byte_of_cp[i] = -1;
    for (int b = 0; b < 256; b++) {
        cp_of_byte[b] = ds4_byte_level_cp((uint8_t)b);
        byte_of_cp[cp_of_byte[b]] = (int16_t)b;
    }
}

/* ---- string -> id table, used while loading ---- */

typedef struct str_table {
    const ds4_tokenizer *t;
    int32_t *slot; /* -1 = empty */
    uint64_t mask;
} str_table;

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 32);
}

static uint64_t pow2_at_least(uint64_t n) {
    uint64_t p = 16;
    while (p < n) p *= 2;
    return p;
}

/* Finds the id of string s, or -1. */
static int32_t str_table_find(const str_table *st, const char *s, size_t n) {
    const ds4_tokenizer *t = st->t;
    for (uint64_t i = hash_bytes(s, n) & st->mask;; i = (i + 1) & st->mask) {
        int32_t id = st->slot[i];
        if (id < 0) return -1;
        uint64_t a = t->str_off[id], b = t->str_off[id + 1];
        if (b - a == n && !memcmp(t->strs + a, s, n)) return id;
    }
}

/* Indexes every token string; a repeated string keeps its lowest id. */
static int str_table_build(str_table *st, const ds4_tokenizer *t, ds4_err *err) {
    st->t = t;
    uint64_t size = pow2_at_least(2 * (uint64_t)t->n_vocab);
    st->mask = size - 1;
    st->slot = malloc(size * sizeof *st->slot);
    if (!st->slot) return ds4_fail(err, "tokenizer: out of memory");
    memset(st->slot, 0xff, size * sizeof *st->slot);
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const char *s = t->strs + t->str_off[id];
        size_t n = t->str_off[id + 1] - t->str_off[id];
        uint64_t i = hash_bytes(s, n) & st->mask;
        bool dup = false;
        for (; st->slot[i] >= 0; i = (i + 1) & st->mask) {
            int32_t o = st->slot[i];
            if (t->str_off[o + 1] - t->str_off[o] == n && !memcmp(t->strs + t->str_off[o], s, n)) {
                dup = true;
                break;
            }
        }
        if (!dup) st->slot[i] = id;
    }
    return 0;
}

/* ---- building ---- */

static int copy_tokens(ds4_tokenizer *t, const gguf_str *tokens, size_t n, ds4_err *err) {
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) total += tokens[i].len;
    t->strs = malloc(total ? total : 1);
    t->str_off = malloc((n + 1) * sizeof *t->str_off);
    if (!t->strs || !t->str_off) return ds4_fail(err, "tokenizer: out of memory for %zu tokens", n);
    uint64_t pos = 0;
    for (size_t i = 0; i < n; i++) {
        t->str_off[i] = pos;
        if (tokens[i].len) memcpy(t->strs + pos, tokens[i].ptr, tokens[i].len);
        pos += tokens[i].len;
    }
    t->str_off[n] = pos;
    return 0;
}

/* A token decodes to raw bytes when every character of its string is one of
 * the byte map's code points; otherwise (specials) its bytes are its string. */
static int decode_tokens(ds4_tokenizer *t, const int16_t byte_of_cp[N_BYTE_CPS], ds4_err *err) {
    uint64_t total = t->str_off[t->n_vocab]; /* decoded bytes never exceed the string */
    t->bytes = malloc(total ? total : 1);
    t->bytes_off = malloc(((size_t)t->n_vocab + 1) * sizeof *t->bytes_off);
    if (!t->bytes || !t->bytes_off) return ds4_fail(err, "tokenizer: out of memory");
    uint64_t pos = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        const uint8_t *s = (const uint8_t *)t->strs + t->str_off[id];
        size_t n = t->str_off[id + 1] - t->str_off[id], k = 0, out = 0;
        t->bytes_off[id] = pos;
        bool byte_level = true;
        while (k < n) {
            uint32_t cp;
            size_t l = ds4_utf8_decode(s + k, n - k, &cp);
            if (!l || cp >= N_BYTE_CPS || byte_of_cp[cp] < 0) {
                byte_level = false;
                break;
            }
            t->bytes[pos + out++] = (char)byte_of_cp[cp];
            k += l;
        }
        if (!byte_level) {
            memcpy(t->bytes + pos, s, n);
            out = n;
        }
        pos += out;
        if (out > t->max_token_bytes) t->max_token_bytes = out;
    }
    t->bytes_off[t->n_vocab] = pos;
    return 0;
}

static int find_byte_tokens(ds4_tokenizer *t, const str_table *st, const uint32_t cp_of_byte[256],
                            ds4_err *err) {
    for (int b = 0; b < 256; b++) {
        char s[4];
        size_t n = ds4_utf8_encode(cp_of_byte[b], s);
        t->byte_token[b] = str_table_find(st, s, n);
        if (t->byte_token[b] < 0)
            return ds4_fail(err, "tokenizer: the vocabulary has no token for byte 0x%02x "
                                 "(string U+%04X); not a byte-level BPE vocabulary",
                            b, (unsigned)cp_of_byte[b]);
    }
    return 0;
}

static int build_merges(ds4_tokenizer *t, const str_table *st, const gguf_str *merges, size_t n,
                        ds4_err *err) {
    uint64_t size = pow2_at_least(2 * (uint64_t)n);
    t->merge_mask = size - 1;
    t->merges = malloc(size * sizeof *t->merges);
    char *joined = malloc(t->str_off[t->n_vocab] + 1);
    if (!t->merges || !joined) {
        free(joined);
        return ds4_fail(err, "tokenizer: out of memory for %zu merges", n);
    }
    for (uint64_t i = 0; i < size; i++) t->merges[i].key = TOK_EMPTY_KEY;
    for (size_t r = 0; r < n; r++) {
        const char *s = merges[r].ptr;
        size_t len = merges[r].len;
        const char *sp = memchr(s, ' ', len);
        if (!sp || sp == s || sp == s + len - 1) {
            free(joined);
            return ds4_fail(err, "tokenizer: merge %zu (\"%.*s\") is not \"left right\"", r,
                            (int)(len < 64 ? len : 64), s);
        }
        size_t nl = (size_t)(sp - s), nr = len - nl - 1;
        int32_t left = str_table_find(st, s, nl), right = str_table_find(st, sp + 1, nr);
        /* A merged string longer than every token cannot be one. */
        if (left < 0 || right < 0 || nl + nr > t->str_off[t->n_vocab]) continue;
        memcpy(joined, s, nl);
        memcpy(joined + nl, sp + 1, nr);
        int32_t result = str_table_find(st, joined, nl + nr);
        if (result < 0) continue;
        uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
        uint64_t i = tok_merge_slot(key, t->merge_mask);
        while (t->merges[i].key != TOK_EMPTY_KEY && t->merges[i].key != key)
            i = (i + 1) & t->merge_mask;
        if (t->merges[i].key == key) continue; /* a repeated pair keeps its first rank */
        t->merges[i] = (tok_merge){key, (uint32_t)r, result};
    }
    free(joined);
    return 0;
}

static void find_specials(ds4_tokenizer *t, const str_table *st) {
    static const char *const strs[7] = {DS4_TOK_STR_BOS,         DS4_TOK_STR_EOS,
                                        DS4_TOK_STR_USER,        DS4_TOK_STR_ASSISTANT,
                                        DS4_TOK_STR_THINK_OPEN,  DS4_TOK_STR_THINK_CLOSE,
                                        DS4_TOK_STR_DSML};
    int32_t ids[7];
    for (int i = 0; i < 7; i++) {
        ids[i] = str_table_find(st, strs[i], strlen(strs[i]));
        if (ids[i] < 0) continue;
        t->match[t->n_match++] = (tok_special){strs[i], strlen(strs[i]), ids[i]};
        t->match_first[(uint8_t)strs[i][0]] = 1;
    }
    t->specials = (ds4_tok_specials){ids[0], ids[1], ids[2], ids[3], ids[4], ids[5], ids[6]};
}

static ds4_tokenizer *build(const gguf_str *tokens, size_t n_tokens, const gguf_str *merges,
                            size_t n_merges, ds4_err *err) {
    if (n_tokens == 0 || n_tokens > INT32_MAX) {
        ds4_fail(err, "tokenizer: %zu tokens (need 1 .. %d)", n_tokens, INT32_MAX);
        return NULL;
    }
    if (n_merges > UINT32_MAX) {
        ds4_fail(err, "tokenizer: %zu merges is too many", n_merges);
        return NULL;
    }
    ds4_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        ds4_fail(err, "tokenizer: out of memory");
        return NULL;
    }
    t->n_vocab = (int32_t)n_tokens;
    uint32_t cp_of_byte[256];
    int16_t byte_of_cp[N_BYTE_CPS];
    byte_level_map(cp_of_byte, byte_of_cp);
    str_table st = {0};
    int rc = copy_tokens(t, tokens, n_tokens, err);
    if (!rc) rc = str_table_build(&st, t, err);
    if (!rc) rc = decode_tokens(t, byte_of_cp, err);
    if (!rc) rc = find_byte_tokens(t, &st, cp_of_byte, err);
    if (!rc) rc = build_merges(t, &st, merges, n_merges, err);
    if (!rc) find_specials(t, &st);
    free(st.slot);
    if (rc) {
        ds4_tokenizer_free(t);
        return NULL;
    }
    return t;
}

ds4_tokenizer *ds4_tokenizer_from_arrays(const char *const *tokens, size_t n_tokens,
                                         const char *const *merges, size_t n_merges,
                                         ds4_err *err) {
    gguf_str *tv = malloc((n_tokens + n_merges + 1) * sizeof *tv);
    if (!tv) {
        ds4_fail(err, "tokenizer: out of memory");
        return NULL;
    }
    gguf_str *mv = tv + n_tokens;
    for (size_t i = 0; i < n_tokens; i++) tv[i] = (gguf_str){tokens[i], strlen(tokens[i])};
    for (size_t i = 0; i < n_merges; i++) mv[i] = (gguf_str){merges[i], strlen(merges[i])};
    ds4_tokenizer *t = build(tv, n_tokens, mv, n_merges, err);
    free(tv);
    return t;
}

/* The array of strings stored under `key`, malloc'd (count in *n). */
static gguf_str *gguf_strings(const gguf_file *f, const char *key, size_t *n, ds4_err *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) {
        ds4_fail(err, "tokenizer: the GGUF has no %s", key);
        return NULL;
    }
    if (kv->value.type != GGUF_T_ARRAY || kv->value.v.arr.item_type != GGUF_T_STRING) {
        ds4_fail(err, "tokenizer: %s is not an array of strings", key);
        return NULL;
    }
    *n = kv->value.v.arr.count;
    gguf_str *out = malloc((*n ? *n : 1) * sizeof *out);
    if (!out) {
        ds4_fail(err, "tokenizer: out of memory for %s", key);
        return NULL;
    }
    if (gguf_array_strings(&kv->value, out, err)) {
        free(out);
        ds4_fail_prefix(err, key);
        return NULL;
    }
    return out;
}

/* An optional string key must, when present, be one of the accepted values. */
static int check_name(const gguf_file *f, const char *key, const char *const *ok, ds4_err *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv) return 0;
    if (kv->value.type != GGUF_T_STRING) return ds4_fail(err, "tokenizer: %s is not a string", key);
    for (; *ok; ok++)
        if (gguf_str_eq(kv->value.v.str, *ok)) return 0;
    gguf_str s = kv->value.v.str;
    return ds4_fail(err, "tokenizer: %s is \"%.*s\"; ds4 implements only DeepSeek V4's tokenizer",
                    key, (int)(s.len < 64 ? s.len : 64), s.ptr);
}

ds4_tokenizer *ds4_tokenizer_from_gguf(const gguf_file *f, ds4_err *err) {
    static const char *const models[] = {"gpt2", NULL};
    static const char *const pres[] = {"joyai-llm", "deepseek-v3", NULL};
    if (check_name(f, "tokenizer.ggml.model", models, err) ||
        check_name(f, "tokenizer.ggml.pre", pres, err))
        return NULL;
    size_t n_tokens = 0, n_merges = 0;
    gguf_str *tokens = gguf_strings(f, "tokenizer.ggml.tokens", &n_tokens, err);
    if (!tokens) return NULL;
    gguf_str *merges = gguf_strings(f, "tokenizer.ggml.merges", &n_merges, err);
    ds4_tokenizer *t = merges ? build(tokens, n_tokens, merges, n_merges, err) : NULL;
    free(tokens);
    free(merges);
    return t;
}

void ds4_tokenizer_free(ds4_tokenizer *t) {
    if (!t) return;
    free(t->strs);
    free(t->str_off);
    free(t->bytes);
    free(t->bytes_off);
    free(t->merges);
    free(t);
}

int32_t ds4_tokenizer_n_vocab(const ds4_tokenizer *t) { return t->n_vocab; }

ds4_tok_specials ds4_tokenizer_specials(const ds4_tokenizer *t) { return t->specials; }

int ds4_tokenizer_check_specials(const ds4_tokenizer *t, ds4_err *err) {
    const ds4_tok_specials *s = &t->specials;
    const struct { int32_t id; const char *str; } all[7] = {
        {s->bos, DS4_TOK_STR_BOS},           {s->eos, DS4_TOK_STR_EOS},
        {s->user, DS4_TOK_STR_USER},         {s->assistant, DS4_TOK_STR_ASSISTANT},
        {s->think_open, DS4_TOK_STR_THINK_OPEN}, {s->think_close, DS4_TOK_STR_THINK_CLOSE},
        {s->dsml, DS4_TOK_STR_DSML}};
    for (int i = 0; i < 7; i++)
        if (all[i].id < 0)
            return ds4_fail(err, "tokenizer: the vocabulary has no special token %s", all[i].str);
    return 0;
}

const char *ds4_token_bytes(const ds4_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = t->bytes_off[id + 1] - t->bytes_off[id];
    return t->bytes + t->bytes_off[id];
}

const char *ds4_token_str(const ds4_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return NULL;
    }
    *len = t->str_off[id + 1] - t->str_off[id];
    return t->strs + t->str_off[id];
}

size_t ds4_tokenizer_max_token_bytes(const ds4_tokenizer *t) { return t->max_token_bytes; }
