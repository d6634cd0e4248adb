/* xalloc.h — allocations that do not fail.
 *
 * For the small bookkeeping of strings, message lists and token arrays,
 * running out of memory is not a recoverable condition, so these print
 * "ds4: out of memory (N bytes)" and abort instead of making every caller
 * check (the convention ds4_buf follows too). Buffers sized by a model or
 * a file are allocated with malloc and their failure reported as an error. */
#ifndef DS4_XALLOC_H
#define DS4_XALLOC_H

#include <stddef.h>

void *ds4_xmalloc(size_t n);
void *ds4_xcalloc(size_t count, size_t size);
void *ds4_xrealloc(void *p, size_t n);
/* A copy of s; NULL for NULL (an absent optional string stays absent). */
char *ds4_xstrdup(const char *s);
/* A NUL-terminated copy of s[0..n) (which may hold NULs). */
char *ds4_xstrndup(const char *s, size_t n);

#endif
