/* utf8.h — strict UTF-8: the one definition of "valid UTF-8" in ds4 (RFC
 * 3629: no overlong forms, no surrogates, nothing above U+10FFFF), used by
 * the tokenizer, the chat and DSML code, the JSON writers and the server.
 *
 * The decoders are inline (the tokenizer calls them per character); the
 * whole-string helpers are in utf8.c. */
#ifndef DS4_COMMON_UTF8_H
#define DS4_COMMON_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Allowed range of the second byte after lead byte b0 (3- and 4-byte forms). */
static inline void ds4_utf8_second_range(uint8_t b0, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b0 == 0xE0) *lo = 0xA0;
    else if (b0 == 0xED) *hi = 0x9F;
    else if (b0 == 0xF0) *lo = 0x90;
    else if (b0 == 0xF4) *hi = 0x8F;
}

/* Length a sequence starting with b0 must have: 1..4, or 0 if b0 cannot start one. */
static inline size_t ds4_utf8_seq_len(uint8_t b0) {
    if (b0 < 0x80) return 1;
    if (b0 < 0xC2) return 0;
    if (b0 < 0xE0) return 2;
    if (b0 < 0xF0) return 3;
    if (b0 < 0xF5) return 4;
    return 0;
}

/* Decodes the character at s[0..n), n >= 1. Returns its length (1..4) and
 * sets *cp, or 0 when s does not start with a complete valid character. */
static inline size_t ds4_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    size_t k = ds4_utf8_seq_len(s[0]);
    if (k == 1) {
        *cp = s[0];
        return 1;
    }
    if (k == 0 || n < k) return 0;
    uint8_t lo, hi;
    ds4_utf8_second_range(s[0], &lo, &hi);
    if (s[1] < lo || s[1] > hi) return 0;
    uint32_t c = s[0] & (0x7F >> k);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        c = (c << 6) | (s[i] & 0x3F);
    }
    *cp = c;
    return k;
}

/* True when s[0..n), 1 <= n, is a proper prefix of some valid character
 * (so more bytes could still complete it). */
static inline bool ds4_utf8_is_partial(const uint8_t *s, size_t n) {
    size_t k = ds4_utf8_seq_len(s[0]);
    if (k < 2 || n >= k) return false;
    if (n >= 2) {
        uint8_t lo, hi;
        ds4_utf8_second_range(s[0], &lo, &hi);
        if (s[1] < lo || s[1] > hi) return false;
    }
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return false;
    return true;
}

/* Writes code point cp (at most U+10FFFF, not a surrogate) as UTF-8;
 * returns its length, 1-4. */
static inline size_t ds4_utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    size_t n = cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    for (size_t i = n - 1; i > 0; i--, cp >>= 6) out[i] = (char)(0x80 | (cp & 0x3F));
    out[0] = (char)((0xF00 >> n) | cp); /* lead byte: n ones, then the top bits */
    return n;
}

/* Length of the valid sequence at s[0..n): 1-4; 0 if the bytes are a valid
 * but incomplete prefix (or n is 0), so more bytes could complete it; -1 if
 * s[0] cannot start a valid sequence here. */
static inline int ds4_utf8_seq(const unsigned char *s, size_t n) {
    uint32_t cp;
    if (n == 0) return 0;
    size_t k = ds4_utf8_decode(s, n, &cp);
    if (k) return (int)k;
    return ds4_utf8_is_partial(s, n) ? 0 : -1;
}

/* Length of the longest valid prefix of s[0..n): n when all of it is valid. */
size_t ds4_utf8_valid_len(const char *s, size_t n);

/* Length of the incomplete character at the end of s[0..n): the at most 3
 * last bytes that form a proper prefix of a valid sequence, which more
 * bytes could complete (streams hold them back); 0 if none. */
size_t ds4_utf8_incomplete_tail(const char *s, size_t n);

/* Appends s[0..n) with every byte that is not part of a complete valid
 * character replaced by U+FFFD (as Python's errors="replace" does, byte by
 * byte), so the result is always valid UTF-8. */
void ds4_utf8_sanitize(ds4_buf *out, const char *s, size_t n);

#endif
