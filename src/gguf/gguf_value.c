/* gguf_value.c — GGUF metadata values: bounds-checked decoding and access.
 *
 * Everything that turns GGUF value bytes into a gguf_value lives here, for
 * the reader (over the mapped file) and the writer (checking caller-supplied
 * serialized arrays). Parsing never trusts a count: before walking an array
 * its item count is bounded by the bytes that remain (every item costs at
 * least gguf_type_min_size() bytes), so work and memory stay proportional to
 * the input size. Arrays of arrays recurse at most GGUF_MAX_ARRAY_DEPTH
 * levels, so a crafted file cannot exhaust the stack. */
#include "gguf_internal.h"

#include <string.h>

static const char *const type_names[GGUF_T_COUNT] = {
    "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32",
    "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64",
};

/* Fixed item sizes; 0 for the variable-size STRING and ARRAY. */
static const uint8_t type_sizes[GGUF_T_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *gguf_type_name(gguf_value_type t) {
    return (unsigned)t < GGUF_T_COUNT ? type_names[t] : "?";
}

uint64_t gguf_type_size(gguf_value_type t) {
    return (unsigned)t < GGUF_T_COUNT ? type_sizes[t] : 0;
}

uint64_t gguf_type_min_size(uint32_t type) {
    if (type == GGUF_T_STRING) return 8;
    if (type == GGUF_T_ARRAY) return 4 + 8;
    return gguf_type_size((gguf_value_type)type);
}

bool gguf_str_eq(gguf_str s, const char *cstr) {
    size_t n = strlen(cstr);
    return s.len == n && memcmp(s.ptr, cstr, n) == 0;
}

const char *gguf_str_show(gguf_str s, char *buf, size_t bufsize) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    uint64_t i;
    if (bufsize == 0) return buf;
    for (i = 0; i < s.len && i < 64; i++) {
        unsigned char ch = (unsigned char)s.ptr[i];
        if (o + 5 >= bufsize) break;
        if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
            buf[o++] = (char)ch;
        } else {
            buf[o++] = '\\';
            buf[o++] = 'x';
            buf[o++] = hex[ch >> 4];
            buf[o++] = hex[ch & 15];
        }
    }
    if (i < s.len && o + 4 <= bufsize) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
    return buf;
}

/* ---- cursor ---- */

static int need(gguf_cursor *c, uint64_t n, const char *what, ds4_err *err) {
    if (c->size - c->pos < n)
        return ds4_fail(err, "truncated: %s needs %llu bytes at byte %llu, only %llu remain",
                        what, (unsigned long long)n, (unsigned long long)c->pos,
                        (unsigned long long)(c->size - c->pos));
    return 0;
}

int gguf_cursor_u32(gguf_cursor *c, uint32_t *v, const char *what, ds4_err *err) {
    if (need(c, 4, what, err)) return -1;
    memcpy(v, c->base + c->pos, 4);
    c->pos += 4;
    return 0;
}

int gguf_cursor_u64(gguf_cursor *c, uint64_t *v, const char *what, ds4_err *err) {
    if (need(c, 8, what, err)) return -1;
    memcpy(v, c->base + c->pos, 8);
    c->pos += 8;
    return 0;
}

int gguf_cursor_str(gguf_cursor *c, gguf_str *s, const char *what, ds4_err *err) {
    uint64_t len;
    if (gguf_cursor_u64(c, &len, what, err)) return -1;
    if (len > c->size - c->pos)
        return ds4_fail(err, "%s length %llu at byte %llu exceeds the remaining %llu bytes",
                        what, (unsigned long long)len, (unsigned long long)(c->pos - 8),
                        (unsigned long long)(c->size - c->pos));
    s->ptr = (const char *)c->base + c->pos;
    s->len = len;
    c->pos += len;
    return 0;
}

/* Decodes a fixed-size scalar whose bytes are known to be present. */
static void decode_scalar(uint32_t type, const uint8_t *p, gguf_value *out) {
    uint8_t u8;
    uint16_t u16;
    uint32_t u32;
    uint64_t u64;
    float f32;
    out->type = (gguf_value_type)type;
    switch (type) {
    case GGUF_T_UINT8: case GGUF_T_BOOL:
        memcpy(&u8, p, 1); out->v.u64 = u8; break;
    case GGUF_T_INT8:
        memcpy(&u8, p, 1); out->v.i64 = (int8_t)u8; break;
    case GGUF_T_UINT16:
        memcpy(&u16, p, 2); out->v.u64 = u16; break;
    case GGUF_T_INT16:
        memcpy(&u16, p, 2); out->v.i64 = (int16_t)u16; break;
    case GGUF_T_UINT32:
        memcpy(&u32, p, 4); out->v.u64 = u32; break;
    case GGUF_T_INT32:
        memcpy(&u32, p, 4); out->v.i64 = (int32_t)u32; break;
    case GGUF_T_FLOAT32:
        memcpy(&f32, p, 4); out->v.f64 = f32; break;
    case GGUF_T_UINT64:
        memcpy(&u64, p, 8); out->v.u64 = u64; break;
    case GGUF_T_INT64:
        memcpy(&u64, p, 8); out->v.i64 = (int64_t)u64; break;
    case GGUF_T_FLOAT64:
        memcpy(&out->v.f64, p, 8); break;
    }
}

static int check_bool(const uint8_t *p, uint64_t at, ds4_err *err) {
    if (*p > 1)
        return ds4_fail(err, "bool value %u at byte %llu is not 0 or 1", *p, (unsigned long long)at);
    return 0;
}

static int parse_array(gguf_cursor *c, gguf_value *out, unsigned depth, ds4_err *err) {
    uint32_t item_type;
    uint64_t count, start, i;
    char ctx[64];
    if (gguf_cursor_u32(c, &item_type, "array item type", err)) return -1;
    if (item_type >= GGUF_T_COUNT)
        return ds4_fail(err, "array item type %u at byte %llu is not a GGUF value type (0..12)",
                        item_type, (unsigned long long)(c->pos - 4));
    if (gguf_cursor_u64(c, &count, "array count", err)) return -1;
    if (count > (c->size - c->pos) / gguf_type_min_size(item_type))
        return ds4_fail(err, "array count %llu of %s items at byte %llu exceeds what the remaining "
                        "%llu bytes can hold", (unsigned long long)count,
                        type_names[item_type], (unsigned long long)(c->pos - 8),
                        (unsigned long long)(c->size - c->pos));
    if (item_type == GGUF_T_ARRAY && depth + 1 >= GGUF_MAX_ARRAY_DEPTH)
        return ds4_fail(err, "arrays nested more than %d levels deep at byte %llu",
                        GGUF_MAX_ARRAY_DEPTH, (unsigned long long)(c->pos - 12));
    start = c->pos;
    if (item_type == GGUF_T_BOOL) {
        for (i = 0; i < count; i++)
            if (check_bool(c->base + start + i, start + i, err))
                return ds4_fail_prefix(err, (snprintf(ctx, sizeof ctx, "array item %llu",
                                                      (unsigned long long)i), ctx));
        c->pos += count;
    } else if (item_type == GGUF_T_STRING || item_type == GGUF_T_ARRAY) {
        for (i = 0; i < count; i++) {
            gguf_value item;
            int rc = item_type == GGUF_T_STRING
                         ? gguf_cursor_str(c, &item.v.str, "string", err)
                         : parse_array(c, &item, depth + 1, err);
            if (rc)
                return ds4_fail_prefix(err, (snprintf(ctx, sizeof ctx, "array item %llu",
                                                      (unsigned long long)i), ctx));
        }
    } else {
        c->pos += count * type_sizes[item_type]; /* bounded above */
    }
    out->type = GGUF_T_ARRAY;
    out->v.arr.item_type = (gguf_value_type)item_type;
    out->v.arr.count = count;
    out->v.arr.items = c->base + start;
    out->v.arr.bytes = c->pos - start;
    return 0;
}

int gguf_cursor_value(gguf_cursor *c, uint32_t type, gguf_value *out, unsigned depth,
                      ds4_err *err) {
    uint64_t size;
    if (type >= GGUF_T_COUNT)
        return ds4_fail(err, "value type %u is not a GGUF value type (0..12)", type);
    if (type == GGUF_T_STRING) {
        out->type = GGUF_T_STRING;
        return gguf_cursor_str(c, &out->v.str, "string", err);
    }
    if (type == GGUF_T_ARRAY) return parse_array(c, out, depth, err);
    size = type_sizes[type];
    if (need(c, size, type_names[type], err)) return -1;
    if (type == GGUF_T_BOOL && check_bool(c->base + c->pos, c->pos, err)) return -1;
    decode_scalar(type, c->base + c->pos, out);
    c->pos += size;
    return 0;
}

/* ---- array access (arrays come from a validated parse, but every step
 * still goes through the cursor so a misuse cannot read out of range) ---- */

void gguf_array_iter_init(gguf_array_iter *it, const gguf_value *arr) {
    it->arr = arr;
    it->index = 0;
    it->pos = 0;
}

int gguf_array_next(gguf_array_iter *it, gguf_value *out, ds4_err *err) {
    const gguf_value *arr = it->arr;
    gguf_cursor c;
    if (arr->type != GGUF_T_ARRAY)
        return ds4_fail(err, "value is %s, not an array", gguf_type_name(arr->type));
    if (it->index >= arr->v.arr.count) return 0;
    c = (gguf_cursor){arr->v.arr.items, arr->v.arr.bytes, it->pos};
    if (gguf_cursor_value(&c, arr->v.arr.item_type, out, 1, err)) return -1;
    it->pos = c.pos;
    it->index++;
    return 1;
}

int gguf_array_get(const gguf_value *arr, uint64_t i, gguf_value *out, ds4_err *err) {
    gguf_array_iter it;
    uint64_t size;
    if (arr->type != GGUF_T_ARRAY) return ds4_fail(err, "value is %s, not an array",
                                                   gguf_type_name(arr->type));
    if (i >= arr->v.arr.count)
        return ds4_fail(err, "array index %llu out of range (count %llu)", (unsigned long long)i,
                        (unsigned long long)arr->v.arr.count);
    size = gguf_type_size(arr->v.arr.item_type);
    if (size) { /* jump straight to it */
        gguf_array_iter_init(&it, arr);
        it.index = i;
        it.pos = i * size;
        return gguf_array_next(&it, out, err) == 1 ? 0 : -1;
    }
    gguf_array_iter_init(&it, arr);
    for (uint64_t k = 0; k <= i; k++)
        if (gguf_array_next(&it, out, err) != 1) return -1;
    return 0;
}

int gguf_array_strings(const gguf_value *arr, gguf_str *out, ds4_err *err) {
    gguf_array_iter it;
    gguf_value v;
    if (arr->type != GGUF_T_ARRAY || arr->v.arr.item_type != GGUF_T_STRING)
        return ds4_fail(err, "value is not an array of strings");
    gguf_array_iter_init(&it, arr);
    for (uint64_t i = 0; i < arr->v.arr.count; i++) {
        if (gguf_array_next(&it, &v, err) != 1) return -1;
        out[i] = v.v.str;
    }
    return 0;
}
