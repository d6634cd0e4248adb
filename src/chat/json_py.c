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
    ds4_json_escape(out, s, n, DS4_JSON_BAD_REPLACE);
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
