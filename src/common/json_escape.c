/* json_escape.c — JSON string bodies for arbitrary bytes (see json_escape.h). */
#include "json_escape.h"

#include <stdint.h>
#include <stdio.h>

#include "utf8.h"

static const char *control_escape(uint8_t c, char tmp[8]) {
    switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    case '\b': return "\\b";
    case '\f': return "\\f";
    default: break;
    }
    if (c >= 0x20) return NULL;
    snprintf(tmp, 8, "\\u%04x", c);
    return tmp;
}

void ds4_json_escape(ds4_buf *out, const char *s, size_t n, ds4_json_bad_utf8 bad) {
    const uint8_t *u = (const uint8_t *)s;
    const int latin1 = bad == DS4_JSON_BAD_LATIN1 && ds4_utf8_valid_len(s, n) != n;
    size_t i = 0, run = 0; /* run: start of the bytes copied verbatim */
    while (i < n) {
        char tmp[8];
        const char *esc = control_escape(u[i], tmp);
        size_t adv = 1;
        if (u[i] >= 0x80) {
            uint32_t cp;
            adv = latin1 ? 0 : ds4_utf8_decode(u + i, n - i, &cp);
            if (!adv) {
                adv = 1;
                if (bad == DS4_JSON_BAD_REPLACE) {
                    esc = "\xEF\xBF\xBD";
                } else {
                    snprintf(tmp, sizeof tmp,
                             bad == DS4_JSON_BAD_SURROGATE ? "\\udc%02x" : "\\u%04x", u[i]);
                    esc = tmp;
                }
            }
        }
        if (esc) {
            ds4_buf_add(out, s + run, i - run);
            ds4_buf_adds(out, esc);
            run = i + adv;
        }
        i += adv;
    }
    ds4_buf_add(out, s + run, n - run);
}
