/* tokenizer.h — DeepSeek V4's byte-level BPE tokenizer and a streaming
 * detokenizer (model-spec.md §9).
 *
 * The vocabulary is `tokenizer.ggml.tokens` (GPT-2 byte-level encoded
 * strings) and `tokenizer.ggml.merges` ("left right", rank = index). Text is
 * first split at the 7 special strings below (when asked), then by the
 * official DeepSeek-V3 pre-tokenizer (the split V4 GGUFs call "joyai-llm",
 * with real Unicode categories: pretokenize.h), then each piece is merged by
 * BPE. Special tokens are found by their exact strings, never by id.
 *
 * A tokenizer is immutable after loading, so one instance may be used by
 * many threads at once. */
#ifndef DS4_TOKENIZER_H
#define DS4_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"
#include "../gguf/gguf.h"

/* The special strings of V4 (model-spec.md §9; ｜ is U+FF5C, ▁ is U+2581). */
#define DS4_TOK_STR_BOS "<｜begin▁of▁sentence｜>"
#define DS4_TOK_STR_EOS "<｜end▁of▁sentence｜>"
#define DS4_TOK_STR_USER "<｜User｜>"
#define DS4_TOK_STR_ASSISTANT "<｜Assistant｜>"
#define DS4_TOK_STR_THINK_OPEN "<think>"
#define DS4_TOK_STR_THINK_CLOSE "</think>"
#define DS4_TOK_STR_DSML "｜DSML｜"

typedef struct ds4_tokenizer ds4_tokenizer;

/* Ids of the special tokens, -1 where the vocabulary lacks the string. The
 * tokenizer itself needs none of them. Who needs which: prompt rendering
 * needs bos, user, assistant, think_open and think_close; generation needs
 * eos; tool calls need dsml. ds4_tokenizer_check_specials() checks all 7,
 * which every real V4 GGUF has. */
typedef struct ds4_tok_specials {
    int32_t bos, eos, user, assistant, think_open, think_close, dsml;
} ds4_tok_specials;

/* Reads tokenizer.ggml.tokens and tokenizer.ggml.merges (and checks
 * tokenizer.ggml.model / .pre when present). Returns NULL with a message
 * naming the key or entry that is wrong. The tokenizer copies what it needs:
 * `f` may be closed afterwards. */
ds4_tokenizer *ds4_tokenizer_from_gguf(const gguf_file *f, ds4_err *err);

/* Same from plain arrays of NUL-terminated strings (tests, tools). tokens[i]
 * is the byte-level encoded string of id i; merges[r] is "left right". The
 * vocabulary must hold a token for each of the 256 single bytes. A merge
 * whose parts or result are not in the vocabulary is ignored (it could never
 * produce a token); a merge string without a space is an error. */
ds4_tokenizer *ds4_tokenizer_from_arrays(const char *const *tokens, size_t n_tokens,
                                         const char *const *merges, size_t n_merges,
                                         ds4_err *err);

void ds4_tokenizer_free(ds4_tokenizer *tok);

int32_t ds4_tokenizer_n_vocab(const ds4_tokenizer *tok);
ds4_tok_specials ds4_tokenizer_specials(const ds4_tokenizer *tok);
/* Fails naming the first of the 7 special strings missing from the vocabulary. */
int ds4_tokenizer_check_specials(const ds4_tokenizer *tok, ds4_err *err);

/* Tokenises text[0..len) (any bytes; invalid UTF-8 is split byte by byte and
 * still encoded losslessly). No BOS is added. With parse_specials the 7
 * special strings present in the vocabulary are matched literally (longest
 * first at each position, leftmost position first) and everything between
 * them is BPE text; without it the whole text is BPE text. On success *ids
 * is a malloc'd array (the caller frees it; NULL when *n_ids is 0). Fails
 * only when out of memory or when len exceeds 4 GiB - 1. */
int ds4_tokenize(const ds4_tokenizer *tok, const char *text, size_t len, bool parse_specials,
                 int32_t **ids, size_t *n_ids, ds4_err *err);

/* The decoded bytes of one token (not NUL-terminated): byte-level tokens are
 * mapped back to raw bytes; a token whose string is not byte-level encoded
 * (a special such as <｜User｜>) is its string verbatim. NULL with *len = 0
 * for an id out of range. */
const char *ds4_token_bytes(const ds4_tokenizer *tok, int32_t id, size_t *len);
/* The token's string as stored in the vocabulary (byte-level encoded). */
const char *ds4_token_str(const ds4_tokenizer *tok, int32_t id, size_t *len);
/* The code point byte b stands for in token strings (GPT-2 byte-level
 * encoding, model-spec §9): bytes 33-126, 161-172 and 174-255 stand for
 * themselves, the other 68 for U+0100, U+0101, ... in increasing order. */
uint32_t ds4_byte_level_cp(uint8_t b);
/* Longest ds4_token_bytes() of any token. */
size_t ds4_tokenizer_max_token_bytes(const ds4_tokenizer *tok);

/* ---- streaming detokenizer ----
 *
 * Fed one token id at a time, it hands back the bytes that can be shown now:
 * never a partial UTF-8 character. Trailing bytes that are a proper prefix
 * of a valid UTF-8 sequence are held until the next token completes (or
 * breaks) them; bytes that can never become valid UTF-8 are passed on as
 * they are, so the concatenated output is exactly the tokens' bytes. */
typedef struct ds4_detok {
    const ds4_tokenizer *tok;
    char *buf;         /* output of the last call */
    size_t cap;
    uint8_t held[4];   /* incomplete UTF-8 tail carried to the next token */
    size_t n_held;
} ds4_detok;

int ds4_detok_init(ds4_detok *d, const ds4_tokenizer *tok, ds4_err *err);
/* Adds token `id`; *out and *len give the bytes ready to emit (valid until the
 * next call; *len may be 0). Fails (emitting nothing) for an id out of range. */
int ds4_detok_feed(ds4_detok *d, int32_t id, const char **out, size_t *len, ds4_err *err);
/* Ends the stream: returns any held bytes verbatim and resets the state. */
const char *ds4_detok_flush(ds4_detok *d, size_t *len);
void ds4_detok_free(ds4_detok *d);

#endif
