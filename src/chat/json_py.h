/* json_py.h — JSON text exactly as Python's json.dumps writes it.
 *
 * DeepSeek's official prompt encoder (encoding_dsv4.py) is Python: it parses
 * tool schemas, response formats and tool-call arguments and re-serialises
 * them with json.dumps(value, ensure_ascii=False), i.e. ", " and ": "
 * separators, keys in their original order, non-ASCII characters written
 * raw, control characters escaped, and floats in Python's shortest
 * round-trip repr ("1.0", "1e-05", "1e+16"). The prompt the model was
 * trained on contains that text, so we reproduce it byte for byte.
 *
 * Values are loaded with jansson, which keeps object keys in document order
 * and lets a repeated key overwrite the earlier value in place, as a Python
 * dict does. Known differences: integers outside the 64-bit range (Python
 * keeps them exact) are reported as unrepresentable, and the NaN/Infinity
 * literals Python accepts are invalid JSON here. */
#ifndef DS4_CHAT_JSON_PY_H
#define DS4_CHAT_JSON_PY_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "../common/buf.h"
#include "../common/error.h"
#include "../common/json_escape.h" /* strings: ds4_json_escape(..., DS4_JSON_BAD_REPLACE) */

/* Parses any JSON value (not only objects/arrays; NUL allowed in strings).
 * Returns a new reference, or NULL with err set ("line L column C: why").
 * *unrepresentable (if given) tells valid JSON we cannot hold (an integer
 * beyond 64 bits) from text that is not JSON. */
json_t *ds4_json_py_load(const char *text, size_t len, bool *unrepresentable, ds4_err *err);

/* Appends json.dumps(v, ensure_ascii=False). */
void ds4_json_py_dump(ds4_buf *out, const json_t *v);

/* Appends a Python float repr (finite x). */
void ds4_json_py_float(ds4_buf *out, double x);

/* Python truthiness of a JSON value: null, false, 0, 0.0, "", [] and {}
 * are false. The official encoder skips a falsy response_format. */
int ds4_json_py_truthy(const json_t *v);

#endif
