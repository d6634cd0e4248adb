/* tok_json.c — token bytes as a JSON string (see tok_json.h). */
#include "tok_json.h"

#include <stdint.h>

#include "utf8.h"

int ds4_json_write_bytes(FILE *out, const char *bytes, size_t len) {
    const uint8_t *s = (const uint8_t *)bytes;
    putc('"', out);
    for (size_t i = 0; i < len;) {
        uint8_t b = s[i];
        uint32_t cp;
        size_t k = ds4_utf8_decode(s + i, len - i, &cp);
        if (!k) {
            fprintf(out, "\\udc%02x", b);
            i++;
            continue;
        }
        if (k > 1) {
            fwrite(s + i, 1, k, out);
        } else if (b == '"' || b == '\\') {
            putc('\\', out);
            putc(b, out);
        } else if (b == '\n') {
            fputs("\\n", out);
        } else if (b == '\r') {
            fputs("\\r", out);
        } else if (b == '\t') {
            fputs("\\t", out);
        } else if (b == '\b') {
            fputs("\\b", out);
        } else if (b == '\f') {
            fputs("\\f", out);
        } else if (b < 0x20 || b == 0x7F) {
            fprintf(out, "\\u%04x", b);
        } else {
            putc(b, out);
        }
        i += k;
    }
    putc('"', out);
    return ferror(out) ? -1 : 0;
}
