/* tok_json.h — writing token bytes as a JSON string, losslessly.
 *
 * Token bytes need not be valid UTF-8 (a token may hold part of a
 * character). Valid characters are written as themselves (with the escapes
 * JSON requires: \" \\ \b \f \n \r \t, \u00XX for other controls and DEL);
 * each byte that is not part of a valid character is written as \udcXX, a
 * lone low surrogate, following Python's "surrogateescape" (PEP 383). Real
 * text never contains a lone surrogate, so the mapping is unambiguous and
 * invertible: a JSON reader gets U+DC80..U+DCFF exactly for raw bytes
 * 0x80..0xFF. */
#ifndef DS4_TOK_JSON_H
#define DS4_TOK_JSON_H

#include <stddef.h>
#include <stdio.h>

/* Writes "..." to out; returns 0, or -1 on a write error. */
int ds4_json_write_bytes(FILE *out, const char *bytes, size_t len);

#endif
