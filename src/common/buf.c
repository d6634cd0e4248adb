/* buf.c — growable byte buffer (see buf.h). */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xalloc.h"

static void buf_reserve(ds4_buf *b, size_t extra) {
    if (extra > (size_t)-1 - b->len - 1) {
        fprintf(stderr, "ds4: buffer size overflow\n");
        abort();
    }
    size_t need = b->len + extra + 1;
    if (need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need) cap = cap > (size_t)-1 / 2 ? need : cap * 2;
    b->p = ds4_xrealloc(b->p, cap);
    b->cap = cap;
}

void ds4_buf_add(ds4_buf *b, const void *data, size_t n) {
    buf_reserve(b, n);
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    b->p[b->len] = 0;
}

void ds4_buf_adds(ds4_buf *b, const char *s) { ds4_buf_add(b, s, strlen(s)); }

void ds4_buf_addc(ds4_buf *b, char c) { ds4_buf_add(b, &c, 1); }

void ds4_buf_addf(ds4_buf *b, const char *fmt, ...) {
    va_list ap;
    buf_reserve(b, 64);
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->p[b->len] = 0;
        return;
    }
    if ((size_t)n >= b->cap - b->len) {
        buf_reserve(b, (size_t)n);
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
}

void ds4_buf_truncate(ds4_buf *b, size_t n) {
    if (n < b->len) {
        b->len = n;
        b->p[n] = 0;
    }
}

const char *ds4_buf_str(const ds4_buf *b) { return b->p ? b->p : ""; }

char *ds4_buf_take(ds4_buf *b) {
    if (!b->p) ds4_buf_add(b, "", 0);
    char *p = b->p;
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

void ds4_buf_free(ds4_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
