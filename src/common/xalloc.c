/* xalloc.c — allocations that abort when memory runs out (see xalloc.h). */
#include "xalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *checked(void *p, size_t n) {
    if (!p) {
        fprintf(stderr, "ds4: out of memory (%zu bytes)\n", n);
        abort();
    }
    return p;
}

void *ds4_xmalloc(size_t n) { return checked(malloc(n ? n : 1), n); }

void *ds4_xcalloc(size_t count, size_t size) {
    return checked(calloc(count ? count : 1, size ? size : 1), count * size);
}

void *ds4_xrealloc(void *p, size_t n) { return checked(realloc(p, n ? n : 1), n); }

char *ds4_xstrdup(const char *s) { return s ? ds4_xstrndup(s, strlen(s)) : NULL; }

char *ds4_xstrndup(const char *s, size_t n) {
    char *p = ds4_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    return p;
}
