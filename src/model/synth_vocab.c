/* synth_vocab.c — vocabularies for synthetic models (see synth.h).
 *
 * Token strings are byte-level encoded as in GPT-2 (model-spec §9): bytes
 * 33–126, 161–172 and 174–255 stand for themselves, the other 68 bytes map
 * to code points 256, 257, ... in increasing byte order, and pieces are
 * UTF-8 after mapping.
 *
 * The fallback vocabulary is: BOS (id 0) and EOS (id 1), the other five V4
 * specials, the 256 single-byte tokens, then tokens learned by byte-pair
 * merging over a short built-in text (most frequent adjacent pair first,
 * pairs of equal count in id order, until every word of the text is one
 * token) so the tokenizer's merge ranks are exercised, and unused filler up
 * to the requested size.
 *
 * From tokenizer.json: model.vocab (string -> id), model.merges ("a b"
 * strings or [a, b] pairs) and added_tokens (special -> CONTROL, else
 * USER_DEFINED); V4's <think>, </think> and ｜DSML｜ are appended when absent
 * and ids left free are unused filler.
 *
 * ds4_synth_vocab_write() puts a vocabulary into a GGUF as the tokenizer.*
 * keys (model-spec §2.1), for synthetic and converted models alike. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/utf8.h"
#include "../tok/tokenizer.h"
#include "synth.h"

/* The seven strings ds4 treats as specials (model-spec §9); ｜ is U+FF5C,
 * ▁ is U+2581. */
static const char *const v4_specials[] = {
    "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
    "<\xef\xbd\x9cUser\xef\xbd\x9c>",
    "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>",
    "<think>",
    "</think>",
    "\xef\xbd\x9c" "DSML\xef\xbd\x9c",
};
enum { N_V4_SPECIALS = 7 };

static int vocab_alloc(ds4_synth_vocab *v, uint32_t n_tokens, uint32_t n_merges, ds4_err *err) {
    memset(v, 0, sizeof *v);
    v->tokens = calloc(n_tokens ? n_tokens : 1, sizeof *v->tokens);
    v->types = calloc(n_tokens ? n_tokens : 1, sizeof *v->types);
    v->merges = calloc(n_merges ? n_merges : 1, sizeof *v->merges);
    v->n_tokens = n_tokens;
    if (!v->tokens || !v->types || !v->merges) {
        ds4_synth_vocab_free(v);
        return ds4_fail(err, "out of memory for a %u-token vocabulary", n_tokens);
    }
    return 0;
}

void ds4_synth_vocab_free(ds4_synth_vocab *v) {
    for (uint32_t i = 0; v->tokens && i < v->n_tokens; i++) free(v->tokens[i]);
    for (uint32_t i = 0; v->merges && i < v->n_merges; i++) free(v->merges[i]);
    free(v->tokens);
    free(v->types);
    free(v->merges);
    memset(v, 0, sizeof *v);
}

static char *join(const char *a, const char *sep, const char *b) {
    size_t la = strlen(a), ls = strlen(sep), lb = strlen(b);
    char *s = malloc(la + ls + lb + 1);
    if (s) {
        memcpy(s, a, la);
        memcpy(s + la, sep, ls);
        memcpy(s + la + ls, b, lb + 1);
    }
    return s;
}

static uint32_t find_token(const ds4_synth_vocab *v, const char *s) {
    for (uint32_t i = 0; i < v->n_tokens; i++)
        if (v->tokens[i] && !strcmp(v->tokens[i], s)) return i;
    return UINT32_MAX;
}

/* Unused ids get distinct names that no text tokenizes to. */
static int fill_unused(ds4_synth_vocab *v, ds4_err *err) {
    for (uint32_t i = 0; i < v->n_tokens; i++) {
        if (v->tokens[i]) continue;
        char buf[64];
        snprintf(buf, sizeof buf, "<\xef\xbd\x9cunused\xe2\x96\x81%u\xef\xbd\x9c>", i);
        if (!(v->tokens[i] = strdup(buf))) return ds4_fail(err, "out of memory");
        v->types[i] = DS4_TOKEN_UNUSED;
    }
    return 0;
}

/* ---- fallback: merges learned from a built-in text ---- */

static const char training_text[] =
    "The engine reads every dimension of the model from its metadata, so a tiny model "
    "with the same architecture exercises the same code as the full one. Each layer "
    "keeps a sliding window of recent rows and, in most layers, a compressed history: "
    "the compressor pools a few tokens into one row, and the indexer picks which "
    "compressed rows the attention should read. The experts are chosen per token by a "
    "router, or by a hash of the token in the first layers. Tests check that the "
    "tokenizer, the template and the forward pass agree with independent references, "
    "that bad input gives a clear error, and that nothing crashes when a file is "
    "truncated or corrupted. The server streams tokens to its clients as they are "
    "generated, and the state of a conversation can be saved and restored later.\n"
    "int main(int argc, char **argv) {\n    for (int i = 0; i < argc; i++)\n"
    "        printf(\"%s\\n\", argv[i]);\n    return 0;\n}\n"
    "def tokenize(text):\n    return [token for token in text.split() if token]\n"
    "In 2024 and 2025 the numbers 128, 256, 4096 and 129280 appeared in the tables.\n";

/* Splits the text into words: an optional space and a letter run, a digit
 * run, or any other single byte; the symbols of a word are byte token ids. */
typedef struct bpe_word { uint32_t *sym; uint32_t n; } bpe_word;

static int is_letter(uint8_t c) { return (c | 32) >= 'a' && (c | 32) <= 'z'; }

static size_t split_words(bpe_word *words, uint32_t byte_base) {
    size_t n = 0, len = sizeof training_text - 1;
    for (size_t i = 0; i < len;) {
        size_t j = i + 1;
        uint8_t c = (uint8_t)training_text[i];
        if (c == ' ' && j < len && is_letter((uint8_t)training_text[j])) c = 'a';
        if (is_letter(c)) while (j < len && is_letter((uint8_t)training_text[j])) j++;
        else if (c >= '0' && c <= '9') while (j < len && training_text[j] >= '0' && training_text[j] <= '9') j++;
        words[n].n = (uint32_t)(j - i);
        words[n].sym = malloc(sizeof(uint32_t) * (j - i));
        for (size_t k = i; k < j; k++) words[n].sym[k - i] = byte_base + (uint8_t)training_text[k];
        n++;
        i = j;
    }
    return n;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The most frequent adjacent pair (smallest key on ties), or 0 if no word
 * has two symbols left. */
static uint64_t best_pair(const bpe_word *words, size_t n_words, uint64_t *keys) {
    size_t nk = 0;
    for (size_t w = 0; w < n_words; w++)
        for (uint32_t i = 0; i + 1 < words[w].n; i++)
            keys[nk++] = (uint64_t)words[w].sym[i] << 32 | words[w].sym[i + 1];
    qsort(keys, nk, sizeof *keys, cmp_u64);
    uint64_t best = 0;
    size_t best_count = 0;
    for (size_t i = 0; i < nk;) {
        size_t j = i;
        while (j < nk && keys[j] == keys[i]) j++;
        if (j - i > best_count) { best_count = j - i; best = keys[i]; }
        i = j;
    }
    return best;
}

static void apply_merge(bpe_word *words, size_t n_words, uint32_t a, uint32_t b, uint32_t id) {
    for (size_t w = 0; w < n_words; w++) {
        uint32_t o = 0;
        for (uint32_t i = 0; i < words[w].n; i++) {
            if (i + 1 < words[w].n && words[w].sym[i] == a && words[w].sym[i + 1] == b) {
                words[w].sym[o++] = id;
                i++;
            } else {
                words[w].sym[o++] = words[w].sym[i];
            }
        }
        words[w].n = o;
    }
}

static int learn_merges(ds4_synth_vocab *v, uint32_t next_id, ds4_err *err) {
    const uint32_t byte_base = N_V4_SPECIALS;
    size_t len = sizeof training_text - 1;
    bpe_word *words = calloc(len, sizeof *words);
    uint64_t *keys = malloc(sizeof *keys * len);
    int rc = 0;
    size_t n_words = words && keys ? split_words(words, byte_base) : 0;
    if (!n_words) rc = ds4_fail(err, "out of memory");
    while (rc == 0 && next_id < v->n_tokens) {
        uint64_t pair = best_pair(words, n_words, keys);
        if (!pair) break;
        uint32_t a = (uint32_t)(pair >> 32), b = (uint32_t)pair;
        char *merged = join(v->tokens[a], "", v->tokens[b]);
        char *rule = join(v->tokens[a], " ", v->tokens[b]);
        if (!merged || !rule) { free(merged); free(rule); rc = ds4_fail(err, "out of memory"); break; }
        v->merges[v->n_merges++] = rule;
        /* Two merge paths can spell the same string: keep tokens unique. */
        uint32_t id = find_token(v, merged);
        if (id == UINT32_MAX) {
            id = next_id++;
            v->tokens[id] = merged;
            v->types[id] = DS4_TOKEN_NORMAL;
        } else {
            free(merged);
        }
        apply_merge(words, n_words, a, b, id);
    }
    for (size_t w = 0; words && w < n_words; w++) free(words[w].sym);
    free(words);
    free(keys);
    return rc;
}

int ds4_synth_vocab_fallback(ds4_synth_vocab *v, uint32_t n_vocab, ds4_err *err) {
    const uint32_t fixed = N_V4_SPECIALS + 256;
    if (n_vocab < fixed)
        return ds4_fail(err, "a byte-level vocabulary needs at least %u tokens, not %u", fixed, n_vocab);
    if (vocab_alloc(v, n_vocab, n_vocab - fixed, err)) return -1;
    int rc = 0;
    for (uint32_t i = 0; i < N_V4_SPECIALS && !rc; i++) {
        v->tokens[i] = strdup(v4_specials[i]);
        v->types[i] = DS4_TOKEN_CONTROL;
        if (!v->tokens[i]) rc = ds4_fail(err, "out of memory");
    }
    for (uint32_t b = 0; b < 256 && !rc; b++) {
        char buf[5];
        buf[ds4_utf8_encode(ds4_byte_level_cp((uint8_t)b), buf)] = 0;
        v->tokens[N_V4_SPECIALS + b] = strdup(buf);
        v->types[N_V4_SPECIALS + b] = DS4_TOKEN_NORMAL;
        if (!v->tokens[N_V4_SPECIALS + b]) rc = ds4_fail(err, "out of memory");
    }
    v->bos = 0;
    v->eos = 1;
    if (!rc) rc = learn_merges(v, fixed, err);
    if (!rc) rc = fill_unused(v, err);
    if (rc) ds4_synth_vocab_free(v);
    return rc;
}

/* ---- tokenizer.json ---- */

static int set_token(ds4_synth_vocab *v, uint64_t id, const char *s, int32_t type, ds4_err *err) {
    if (id >= v->n_tokens) return ds4_fail(err, "token id %llu out of range", (unsigned long long)id);
    free(v->tokens[id]);
    if (!(v->tokens[id] = strdup(s))) return ds4_fail(err, "out of memory");
    v->types[id] = type;
    return 0;
}

/* Highest id in model.vocab and added_tokens, validating their form. */
static int json_max_id(json_t *vocab, json_t *added, uint64_t *max_id, ds4_err *err) {
    const char *key;
    json_t *val;
    *max_id = 0;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= DS4_MAX_DIM)
            return ds4_fail(err, "model.vocab[\"%.40s\"] is not a token id below %d", key, DS4_MAX_DIM);
        if ((uint64_t)json_integer_value(val) > *max_id) *max_id = (uint64_t)json_integer_value(val);
    }
    size_t i;
    json_array_foreach(added, i, val) {
        json_t *id = json_object_get(val, "id"), *content = json_object_get(val, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= DS4_MAX_DIM ||
            !json_is_string(content))
            return ds4_fail(err, "added_tokens[%zu] needs an integer id below %d and a string content", i, DS4_MAX_DIM);
        if ((uint64_t)json_integer_value(id) > *max_id) *max_id = (uint64_t)json_integer_value(id);
    }
    return 0;
}

static int json_merges(ds4_synth_vocab *v, json_t *merges, ds4_err *err) {
    size_t i;
    json_t *m;
    json_array_foreach(merges, i, m) {
        char *rule = NULL;
        if (json_is_string(m)) {
            rule = strdup(json_string_value(m));
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) {
            rule = join(json_string_value(json_array_get(m, 0)), " ",
                        json_string_value(json_array_get(m, 1)));
        } else {
            return ds4_fail(err, "model.merges[%zu] is neither \"a b\" nor [a, b]", i);
        }
        if (!rule) return ds4_fail(err, "out of memory");
        v->merges[v->n_merges++] = rule;
    }
    return 0;
}

static int vocab_from_json(ds4_synth_vocab *v, json_t *root, uint32_t min_vocab, ds4_err *err) {
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return ds4_fail(err, "not a BPE tokenizer.json: model.vocab (object) and model.merges (array) needed");
    if (added && !json_is_array(added)) return ds4_fail(err, "added_tokens is not an array");
    uint64_t max_id;
    if (json_max_id(vocab, added, &max_id, err)) return -1;
    uint64_t n = max_id + 1 + N_V4_SPECIALS;
    if (n < min_vocab) n = min_vocab;
    if (vocab_alloc(v, (uint32_t)n, (uint32_t)json_array_size(merges), err)) return -1;
    const char *key;
    json_t *val;
    json_object_foreach(vocab, key, val)
        if (set_token(v, (uint64_t)json_integer_value(val), key, DS4_TOKEN_NORMAL, err)) return -1;
    size_t i;
    json_array_foreach(added, i, val) {
        bool special = json_is_true(json_object_get(val, "special"));
        if (set_token(v, (uint64_t)json_integer_value(json_object_get(val, "id")),
                      json_string_value(json_object_get(val, "content")),
                      special ? DS4_TOKEN_CONTROL : DS4_TOKEN_USER_DEFINED, err))
            return -1;
    }
    uint32_t next = (uint32_t)max_id + 1;
    for (int s = 0; s < N_V4_SPECIALS; s++) {
        if (find_token(v, v4_specials[s]) != UINT32_MAX) continue;
        if (set_token(v, next++, v4_specials[s], DS4_TOKEN_CONTROL, err)) return -1;
    }
    v->bos = find_token(v, v4_specials[0]);
    v->eos = find_token(v, v4_specials[1]);
    /* The allocation reserved room for every special; trim what was not used. */
    if (v->n_tokens > next && v->n_tokens > min_vocab) {
        uint32_t keep = next > min_vocab ? next : min_vocab;
        for (uint32_t t = keep; t < v->n_tokens; t++) free(v->tokens[t]);
        v->n_tokens = keep;
    }
    if (json_merges(v, merges, err)) return -1;
    return fill_unused(v, err);
}

int ds4_synth_vocab_from_json(ds4_synth_vocab *v, const char *path, uint32_t min_vocab,
                              ds4_err *err) {
    memset(v, 0, sizeof *v);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root) return ds4_fail(err, "%s:%d: %s", path, je.line, je.text);
    int rc = vocab_from_json(v, root, min_vocab, err);
    json_decref(root);
    if (rc) {
        ds4_synth_vocab_free(v);
        return ds4_fail_prefix(err, path);
    }
    return 0;
}

void ds4_synth_vocab_write(gguf_writer *w, const ds4_synth_vocab *v, ds4_meta_hook hook,
                           void *hook_ctx) {
#define PUT(kind, key, ...) \
    do { if (!hook || !hook(hook_ctx, w, key)) gguf_writer_add_##kind(w, key, __VA_ARGS__); } while (0)
    PUT(str, "tokenizer.ggml.model", "gpt2");
    PUT(str, "tokenizer.ggml.pre", "joyai-llm");
    PUT(str_array, "tokenizer.ggml.tokens", (const char *const *)v->tokens, v->n_tokens);
    PUT(array, "tokenizer.ggml.token_type", GGUF_T_INT32, v->types, v->n_tokens);
    PUT(str_array, "tokenizer.ggml.merges", (const char *const *)v->merges, v->n_merges);
    PUT(u32, "tokenizer.ggml.bos_token_id", v->bos);
    PUT(u32, "tokenizer.ggml.eos_token_id", v->eos);
#undef PUT
}
