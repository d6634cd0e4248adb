/* utf8.c — whole-string UTF-8 checks (see utf8.h). */
#include "utf8.h"

size_t ds4_utf8_valid_len(const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = ds4_utf8_decode(u + i, n - i, &cp);
        if (!k) break;
        i += k;
    }
    return i;
}

size_t ds4_utf8_incomplete_tail(const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    for (size_t k = 1; k <= 3 && k <= n; k++)
        if ((u[n - k] & 0xC0) != 0x80) return ds4_utf8_is_partial(u + n - k, k) ? k : 0;
    return 0;
}

void ds4_utf8_sanitize(ds4_buf *out, const char *s, size_t n) {
    size_t i = 0, run = 0; /* run: start of the bytes copied verbatim */
    while (i < n) {
        uint32_t cp;
        size_t k = ds4_utf8_decode((const uint8_t *)s + i, n - i, &cp);
        if (k) {
            i += k;
            continue;
        }
        ds4_buf_add(out, s + run, i - run);
        ds4_buf_adds(out, "\xEF\xBF\xBD");
        run = ++i;
    }
    ds4_buf_add(out, s + run, n - run);
}
