/* json_escape.h — the body of a JSON string literal for arbitrary bytes.
 *
 * One escaper for every JSON string ds4 writes by hand (jansson writes the
 * rest). Valid characters are written raw, as Python's json.dumps(...,
 * ensure_ascii=False) writes them: '"' and '\\' escaped, \b \f \n \r \t,
 * \u00XX for the other controls below 0x20, everything else (DEL and all
 * non-ASCII characters) as is. The official prompt encoder is Python, so
 * the chat renderer needs exactly this (chat/json_py.h).
 *
 * Bytes that are not part of a valid UTF-8 character (common/utf8.h) are
 * written as the caller's format says:
 *   REPLACE    U+FFFD for each such byte (Python's errors="replace"): the
 *              text stays valid and readable; the chat renderer, DSML.
 *   SURROGATE  \udcXX, a lone low surrogate, for byte XX (Python's
 *              "surrogateescape", PEP 383). Real text never contains a lone
 *              surrogate, so the mapping is lossless: --dump-tokens.
 *   LATIN1     when the string is not valid UTF-8 as a whole, every byte
 *              >= 0x80 as \u00XX (ds4's --dump-logprobs, server-spec §6.3,
 *              where a separate "bytes" array is authoritative). */
#ifndef DS4_JSON_ESCAPE_H
#define DS4_JSON_ESCAPE_H

#include <stddef.h>

#include "buf.h"

typedef enum ds4_json_bad_utf8 {
    DS4_JSON_BAD_REPLACE,
    DS4_JSON_BAD_SURROGATE,
    DS4_JSON_BAD_LATIN1,
} ds4_json_bad_utf8;

/* Appends the escaped bytes of s[0..n), without the quotes. */
void ds4_json_escape(ds4_buf *out, const char *s, size_t n, ds4_json_bad_utf8 bad);

#endif
