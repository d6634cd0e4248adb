/* error.h — the one way ds4 functions report failure.
 *
 * A function that can fail returns int (0 = ok, -1 = error) and takes a
 * `ds4_err *err` as its last argument; on failure it writes one line of text
 * saying what went wrong, naming the thing (a tensor, a key, a field) that is
 * wrong. Callers print err->msg and never have to guess. `err` may be NULL
 * when the caller does not care. Errors never abort the process. */
#ifndef DS4_ERROR_H
#define DS4_ERROR_H

#include <stddef.h>
#include <stdint.h>

typedef struct ds4_err {
    char msg[512];
} ds4_err;

/* Formats into err->msg (if err is non-NULL) and returns -1, so a failing
 * path can be written `return ds4_fail(err, "...", ...);`. */
int ds4_fail(ds4_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes err->msg with "prefix: " to add context while unwinding. */
int ds4_fail_prefix(ds4_err *err, const char *prefix);

/* Writes a shape as "[4096,512]" into buf (truncated to n bytes), for
 * messages; returns buf. */
const char *ds4_format_dims(char *buf, size_t n, const uint64_t *dims, uint32_t n_dims);

#endif
