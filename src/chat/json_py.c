/* json_py.c — Python-compatible JSON serialisation (see json_py.h). */
#include "json_py.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

json_t *ds4_json_py_load(const char *text, size_t len, bool *unrepresentable, ds4_err *err) {
    json_error_t je;
    json_t *v = json_loadb(text, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (unrepresentable) *unrepresentable = !v && json_error_code(&je) == json_error_numeric_overflow;
    if (!v) ds4_fail(err, "line %d column %d: %s", je.line, je.column, je.text);
    return v;
}

int ds4_utf8_seq(const unsigned char *s, size_t n) {
    if (n == 0) return 0;
    unsigned c = s[0];
    if (c < 0x80) return 1;
    int need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) need = 2;
    else if (c == 0xE0) need = 3, lo = 0xA0;
    else if (c == 0xED) need = 3, hi = 0x9F; /* no UTF-16 surrogates */
    else if (c >= 0xE1 && c <= 0xEF) need = 3;
    else if (c == 0xF0) need = 4, lo = 0x90;
    else if (c == 0xF4) need = 4, hi = 0x8F; /* <= U+10FFFF */
    else if (c >= 0xF1 && c <= 0xF3) need = 4;
    else return -1;
    for (int i = 1; i < need; i++) {
        if ((size_t)i >= n) return 0;
        unsigned b = s[i];
        unsigned l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) return -1;
    }
    return need;
}

void ds4_json_py_escape(ds4_buf *out, const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0; /* run: start of bytes copied verbatim */
    while (i < n) {
        unsigned c = u[i];
        const char *esc = NULL;
        char tmp[8];
        int adv = 1;
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c < 0x20) {
            snprintf(tmp, sizeof tmp, "\\u%04x", c);
            esc = tmp;
        } else if (c >= 0x80) {
            adv = ds4_utf8_seq(u + i, n - i);
            if (adv <= 0) {
                esc = "\xEF\xBF\xBD"; /* U+FFFD for a byte that is not UTF-8 */
                adv = 1;
            }
        }
        if (esc) {
            ds4_buf_add(out, s + run, i - run);
            ds4_buf_adds(out, esc);
            run = i + (size_t)adv;
        }
        i += (size_t)adv;
    }
    ds4_buf_add(out, s + run, n - run);
}

/* Python's float.__repr__: the shortest digit string that reads back as the
 * same double, in fixed notation when the decimal exponent is in [-4, 16),
 * else "d.ddde+XX"; fixed notation always shows a fractional part. */
void ds4_json_py_float(ds4_buf *out, double x) {
    if (x == 0) {
        ds4_buf_adds(out, signbit(x) ? "-0.0" : "0.0");
        return;
    }
    char sci[40];
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(sci, sizeof sci, "%.*e", prec - 1, x);
        if (strtod(sci, NULL) == x) break;
    }
    /* sci = [-]d[.ddd]e[+-]XX */
    const char *p = sci;
    int neg = *p == '-';
    if (neg) p++;
    char digits[24];
    int nd = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[nd++] = *p;
    while (nd > 1 && digits[nd - 1] == '0') nd--;
    int exp10 = atoi(p + 1);
    int decpt = exp10 + 1; /* value = 0.DIGITS * 10^decpt */
    if (neg) ds4_buf_addc(out, '-');
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            ds4_buf_adds(out, "0.");
            for (int i = 0; i < -decpt; i++) ds4_buf_addc(out, '0');
            ds4_buf_add(out, digits, (size_t)nd);
        } else if (decpt >= nd) {
            ds4_buf_add(out, digits, (size_t)nd);
            for (int i = nd; i < decpt; i++) ds4_buf_addc(out, '0');
            ds4_buf_adds(out, ".0");
        } else {
            ds4_buf_add(out, digits, (size_t)decpt);
            ds4_buf_addc(out, '.');
            ds4_buf_add(out, digits + decpt, (size_t)(nd - decpt));
        }
        return;
    }
    ds4_buf_addc(out, digits[0]);
    if (nd > 1) {
        ds4_buf_addc(out, '.');
        ds4_buf_add(out, digits + 1, (size_t)(nd - 1));
    }
    ds4_buf_addf(out, "e%c%02d", exp10 < 0 ? '-' : '+', abs(exp10));
}

static void dump_string(ds4_buf *out, const char *s, size_t n) {
    ds4_buf_addc(out, '"');
    ds4_json_py_escape(out, s, n);
    ds4_buf_addc(out, '"');
}

void ds4_json_py_dump(ds4_buf *out, const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *key;
        size_t klen;
        json_t *val;
        int first = 1;
        ds4_buf_addc(out, '{');
        json_object_keylen_foreach((json_t *)v, key, klen, val) {
            if (!first) ds4_buf_adds(out, ", ");
            first = 0;
            dump_string(out, key, klen);
            ds4_buf_adds(out, ": ");
            ds4_json_py_dump(out, val);
        }
        ds4_buf_addc(out, '}');
        break;
    }
    case JSON_ARRAY: {
        ds4_buf_addc(out, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) ds4_buf_adds(out, ", ");
            ds4_json_py_dump(out, json_array_get(v, i));
        }
        ds4_buf_addc(out, ']');
        break;
    }
    case JSON_STRING:
        dump_string(out, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER:
        ds4_buf_addf(out, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        break;
    case JSON_REAL:
        ds4_json_py_float(out, json_real_value(v));
        break;
    case JSON_TRUE: ds4_buf_adds(out, "true"); break;
    case JSON_FALSE: ds4_buf_adds(out, "false"); break;
    case JSON_NULL: ds4_buf_adds(out, "null"); break;
    }
}

int ds4_json_py_truthy(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return json_object_size(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0;
    case JSON_TRUE: return 1;
    default: return 0;
    }
}
