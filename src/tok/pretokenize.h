/* pretokenize.h — the DeepSeek-V3 / V4 ("joyai-llm") pre-tokenizer split.
 *
 * Cuts text into the pieces that BPE then merges independently. It is the
 * official tokenizer.json pre_tokenizer, a Sequence of three regex Splits
 * (each "Isolated": matches and the gaps between them both become pieces,
 * and every later split runs inside each piece of the earlier one):
 *
 *   1. \p{N}{1,3}
 *   2. [一-龥぀-ゟ゠-ヿ]+
 *   3. [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
 *      | [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
 *      | ?[\p{P}\p{S}]+[\r\n]*
 *      | \s*[\r\n]+
 *      | \s+(?!\S)
 *      | \s+
 *
 * implemented by hand with Unicode general categories from utf8proc. \s is
 * what it means in Oniguruma, the regex engine of the reference (Rust)
 * tokenizers library: U+0009–U+000D, U+0085 and the categories Zs, Zl, Zp
 * (Oniguruma's doc/RE, "\s whitespace char, Unicode case"), which is the
 * White_Space property; llama.cpp agrees. JavaScript's \s differs on
 * exactly two code points: it lacks U+0085 and has U+FEFF.
 * Bytes that are not valid UTF-8 are one character each, in no category. */
#ifndef DS4_PRETOKENIZE_H
#define DS4_PRETOKENIZE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"

/* Called once per piece, in order; a nonzero return stops the split and is
 * returned by ds4_pretok_split. Pieces are never empty. */
typedef int (*ds4_piece_fn)(void *ctx, const char *piece, size_t len);

/* Reusable scratch space (per-character classes and offsets); zero-init it. */
typedef struct ds4_pretok {
    uint8_t *cls;
    uint32_t *off;
    size_t cap;
} ds4_pretok;

/* Splits text[0..len). Returns 0, the callback's nonzero value, or -1 with
 * a message when out of memory or len >= 4 GiB. */
int ds4_pretok_split(ds4_pretok *p, const char *text, size_t len, ds4_piece_fn fn, void *ctx,
                     ds4_err *err);
void ds4_pretok_free(ds4_pretok *p);

#endif
