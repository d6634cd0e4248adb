/* error.c — formatting of ds4_err messages (see error.h). */
#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int ds4_fail(ds4_err *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

const char *ds4_format_dims(char *buf, size_t n, const uint64_t *dims, uint32_t n_dims) {
    size_t o = (size_t)snprintf(buf, n, "[");
    for (uint32_t i = 0; i < n_dims && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%llu", i ? "," : "", (unsigned long long)dims[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
    return buf;
}

int ds4_fail_prefix(ds4_err *err, const char *prefix) {
    if (err) {
        char old[sizeof err->msg];
        memcpy(old, err->msg, sizeof old);
        int n = snprintf(err->msg, sizeof err->msg, "%s: ", prefix);
        if (n > 0 && (size_t)n < sizeof err->msg)
            memcpy(err->msg + n, old, sizeof err->msg - (size_t)n - 1);
        err->msg[sizeof err->msg - 1] = 0;
    }
    return -1;
}
