/* buf.h — a growable byte buffer (always NUL-terminated).
 *
 * The one way ds4 code builds strings of unknown length: rendered prompts,
 * JSON text, event payloads. A zeroed ds4_buf is empty and valid. The bytes
 * may contain NULs; `len` is authoritative and p[len] is always 0 once
 * anything was added. Running out of memory is not a recoverable condition
 * for a few-kilobyte string, so the add functions abort with a message
 * instead of making every caller check (the Redis zmalloc convention). */
#ifndef DS4_BUF_H
#define DS4_BUF_H

#include <stddef.h>

typedef struct ds4_buf {
    char *p;
    size_t len, cap;
} ds4_buf;

void ds4_buf_add(ds4_buf *b, const void *data, size_t n);
void ds4_buf_adds(ds4_buf *b, const char *s);
void ds4_buf_addc(ds4_buf *b, char c);
void ds4_buf_addf(ds4_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops everything after the first n bytes (n <= len). */
void ds4_buf_truncate(ds4_buf *b, size_t n);
/* The bytes as a C string ("" for an empty buffer; never NULL). */
const char *ds4_buf_str(const ds4_buf *b);
/* Hands the bytes to the caller (NUL-terminated, never NULL; free() them)
 * and leaves b empty. */
char *ds4_buf_take(ds4_buf *b);
void ds4_buf_free(ds4_buf *b);

#endif
