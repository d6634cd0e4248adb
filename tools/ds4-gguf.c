/* ds4-gguf — look inside a GGUF file, or write a sample one.
 *
 *   ds4-gguf [--array-limit N] FILE
 *       Validates FILE with ds4's reader and prints its header, metadata and
 *       tensor table as one JSON object. Metadata keeps file order and GGUF
 *       types: {"key", "type", "value"}, arrays add "item_type" and "count".
 *       UINT64/INT64 values are decimal strings (JSON numbers lose precision
 *       past 2^53); non-finite floats are "nan", "inf", "-inf"; strings that
 *       are not valid UTF-8 show U+FFFD for each bad byte. An item of an
 *       array of arrays is {"item_type", "count", "value"}. With
 *       --array-limit, arrays print at most N items and say "truncated": true.
 *   ds4-gguf --write-sample OUT [--alignment N]
 *       Writes a small file that uses every metadata type (arrays of each
 *       scalar type, string arrays, arrays of arrays) and tensors of every
 *       type ds4 reads, for checking GGUF readers against each other.
 *
 * Exit status: 0 ok, 1 the file is invalid or cannot be written, 2 usage. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "../src/common/parse.h"
#include "../src/gguf/gguf.h"
#include "../src/quant/quant.h"

static void usage(void) {
    fprintf(stderr, "usage: ds4-gguf [--array-limit N] FILE\n"
                    "       ds4-gguf --write-sample OUT [--alignment N]\n");
}

/* ---- dump ---- */

/* A JSON string of the bytes, invalid UTF-8 bytes replaced by U+FFFD. */
static json_t *json_bytes(const char *p, uint64_t n) {
    json_t *s = json_stringn(p, n);
    char *clean, *o;
    if (s) return s;
    clean = malloc(n * 3 + 1); /* each bad byte becomes 3 bytes */
    if (!clean) return NULL;
    o = clean;
    for (uint64_t i = 0; i < n;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t len = utf8proc_iterate((const utf8proc_uint8_t *)p + i,
                                                (utf8proc_ssize_t)(n - i), &cp);
        if (len > 0) {
            memcpy(o, p + i, (size_t)len);
            o += len;
            i += (uint64_t)len;
        } else {
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    s = json_stringn(clean, (size_t)(o - clean));
    free(clean);
    return s;
}

static json_t *json_float(double v) {
    if (isnan(v)) return json_string("nan");
    if (isinf(v)) return json_string(v > 0 ? "inf" : "-inf");
    return json_real(v);
}

static json_t *array_json(const gguf_value *arr, uint64_t limit, json_t *into, ds4_err *err);

/* The JSON for one value; arrays become {"item_type","count","value"}
 * (the caller merges these fields into the metadata entry). */
static json_t *value_json(const gguf_value *v, uint64_t limit, ds4_err *err) {
    char digits[32];
    switch (v->type) {
    case GGUF_T_UINT8: case GGUF_T_UINT16: case GGUF_T_UINT32:
        return json_integer((json_int_t)v->v.u64);
    case GGUF_T_INT8: case GGUF_T_INT16: case GGUF_T_INT32:
        return json_integer((json_int_t)v->v.i64);
    case GGUF_T_UINT64:
        snprintf(digits, sizeof digits, "%llu", (unsigned long long)v->v.u64);
        return json_string(digits);
    case GGUF_T_INT64:
        snprintf(digits, sizeof digits, "%lld", (long long)v->v.i64);
        return json_string(digits);
    case GGUF_T_FLOAT32: case GGUF_T_FLOAT64: return json_float(v->v.f64);
    case GGUF_T_BOOL: return json_boolean(v->v.u64);
    case GGUF_T_STRING: return json_bytes(v->v.str.ptr, v->v.str.len);
    case GGUF_T_ARRAY: return array_json(v, limit, json_object(), err);
    default: return NULL;
    }
}

static json_t *array_json(const gguf_value *arr, uint64_t limit, json_t *into, ds4_err *err) {
    json_t *items = json_array();
    uint64_t n = arr->v.arr.count < limit ? arr->v.arr.count : limit;
    gguf_array_iter it;
    json_object_set_new(into, "item_type", json_string(gguf_type_name(arr->v.arr.item_type)));
    json_object_set_new(into, "count", json_integer((json_int_t)arr->v.arr.count));
    gguf_array_iter_init(&it, arr);
    for (uint64_t i = 0; i < n; i++) {
        gguf_value item;
        json_t *j;
        if (gguf_array_next(&it, &item, err) != 1 || !(j = value_json(&item, limit, err))) {
            json_decref(items);
            json_decref(into);
            return NULL;
        }
        json_array_append_new(items, j);
    }
    json_object_set_new(into, "value", items);
    if (n < arr->v.arr.count) json_object_set_new(into, "truncated", json_true());
    return into;
}

static json_t *file_json(const gguf_file *f, uint64_t limit, ds4_err *err) {
    json_t *root = json_object(), *meta = json_array(), *tensors = json_array();
    json_object_set_new(root, "version", json_integer(f->version));
    json_object_set_new(root, "size", json_integer((json_int_t)f->size));
    json_object_set_new(root, "alignment", json_integer(f->alignment));
    json_object_set_new(root, "data_offset", json_integer((json_int_t)f->data_offset));
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "tensors", tensors);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        json_t *e = json_object(), *v;
        json_object_set_new(e, "key", json_bytes(kv->key.ptr, kv->key.len));
        json_object_set_new(e, "type", json_string(gguf_type_name(kv->value.type)));
        if (kv->value.type == GGUF_T_ARRAY) {
            v = array_json(&kv->value, limit, e, err); /* frees e on failure */
        } else if ((v = value_json(&kv->value, limit, err))) {
            json_object_set_new(e, "value", v);
        } else {
            json_decref(e);
        }
        if (!v) {
            json_decref(root);
            return NULL;
        }
        json_array_append_new(meta, e);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor_info *t = &f->tensors[i];
        json_t *e = json_object(), *shape = json_array();
        for (uint32_t d = 0; d < t->n_dims; d++)
            json_array_append_new(shape, json_integer((json_int_t)t->ne[d]));
        json_object_set_new(e, "name", json_bytes(t->name.ptr, t->name.len));
        json_object_set_new(e, "type", json_string(ds4_type_name(t->type)));
        json_object_set_new(e, "type_id", json_integer(t->type));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "offset", json_integer((json_int_t)t->offset));
        json_object_set_new(e, "nbytes", json_integer((json_int_t)t->nbytes));
        json_array_append_new(tensors, e);
    }
    return root;
}

static int dump(const char *path, uint64_t limit) {
    gguf_file f;
    ds4_err err = {{0}};
    json_t *root;
    if (gguf_open(&f, path, &err) != 0) {
        fprintf(stderr, "ds4-gguf: %s\n", err.msg);
        return 1;
    }
    root = file_json(&f, limit, &err);
    gguf_close(&f);
    if (!root) {
        fprintf(stderr, "ds4-gguf: %s: %s\n", path, err.msg[0] ? err.msg : "out of memory");
        return 1;
    }
    if (json_dumpf(root, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17)) ||
        fputc('\n', stdout) == EOF || fflush(stdout)) {
        json_decref(root);
        fprintf(stderr, "ds4-gguf: cannot write the output: %s\n", strerror(errno));
        return 1;
    }
    json_decref(root);
    return 0;
}

/* ---- sample ---- */

static int fill_pattern(void *ctx, void *dst, uint64_t nbytes, ds4_err *err) {
    uint8_t *p = dst;
    uint32_t x = *(const uint32_t *)ctx;
    for (uint64_t i = 0; i < nbytes; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (uint8_t)(x >> 24);
    }
    return 0;
}

/* Serialized items of [[1, 2, 3] UINT16, [] INT64, [["x", "yz"], [7] FLOAT32]]. */
static size_t nested_sample(uint8_t *out) {
    static const struct { uint32_t type; uint64_t count; } hdr[] = {
        {GGUF_T_UINT16, 3}, {GGUF_T_INT64, 0}, {GGUF_T_ARRAY, 2}, {GGUF_T_STRING, 2},
        {GGUF_T_FLOAT32, 1}};
    static const uint16_t u16s[3] = {1, 2, 3};
    const float seven = 7.0f;
    uint64_t one = 1, two = 2;
    size_t n = 0;
#define PUT(p, len) (memcpy(out + n, (p), (len)), n += (len))
    for (int i = 0; i < 2; i++) {
        PUT(&hdr[i].type, 4);
        PUT(&hdr[i].count, 8);
        if (i == 0) PUT(u16s, 6);
    }
    PUT(&hdr[2].type, 4);
    PUT(&hdr[2].count, 8);
    PUT(&hdr[3].type, 4);
    PUT(&hdr[3].count, 8);
    PUT(&one, 8);
    PUT("x", 1);
    PUT(&two, 8);
    PUT("yz", 2);
    PUT(&hdr[4].type, 4);
    PUT(&hdr[4].count, 8);
    PUT(&seven, 4);
#undef PUT
    return n;
}

static int write_sample(const char *out, uint32_t alignment) {
    static const uint8_t a_u8[] = {0, 1, 255};
    static const int8_t a_i8[] = {-128, -1, 127};
    static const uint16_t a_u16[] = {0, 65535};
    static const int16_t a_i16[] = {-32768, 32767};
    static const uint32_t a_u32[] = {0, 1, 4294967295u};
    static const int32_t a_i32[] = {-2147483647 - 1, 0, 2147483647};
    static const float a_f32[] = {0.1f, -2.5f, 3.4028234e38f, 1e-45f};
    static const uint8_t a_bool[] = {1, 0, 1};
    static const uint64_t a_u64[] = {0, 9007199254740993ull, 18446744073709551615ull};
    static const int64_t a_i64[] = {-9223372036854775807ll - 1, -1, 9223372036854775807ll};
    static const double a_f64[] = {0.1, -1e300, 5e-324};
    static const char *const strs[] = {"hello", "", "ünïcödé ✓ 你好", "tab\there", "emoji 🙂"};
    static const struct { const char *name; uint32_t type, n_dims; uint64_t ne[4]; } tensors[] = {
        {"token_embd.weight", DS4_TYPE_F16, 2, {64, 8}},
        {"blk.0.attn_norm.weight", DS4_TYPE_F32, 1, {64}},
        {"blk.0.attn_q.weight", DS4_TYPE_Q8_0, 2, {64, 4}},
        {"blk.0.ffn_gate_exps.weight", DS4_TYPE_IQ2_XXS, 3, {256, 2, 2}},
        {"blk.0.ffn_down_exps.weight", DS4_TYPE_Q2_K, 3, {256, 2, 2}},
        {"blk.0.ffn_up_exps.weight", DS4_TYPE_Q4_K, 4, {256, 1, 2, 1}},
        {"blk.0.hc.weight", DS4_TYPE_BF16, 2, {6, 5}},
        {"blk.0.ffn_gate_tid2eid.weight", DS4_TYPE_I32, 2, {3, 7}},
    };
    static uint32_t seeds[sizeof tensors / sizeof tensors[0]];
    uint8_t nested[256];
    size_t nested_len = nested_sample(nested);
    gguf_writer *w = gguf_writer_new(alignment);
    ds4_err err = {{0}};
    int rc = 0;
    if (!w) {
        fprintf(stderr, "ds4-gguf: out of memory\n");
        return 1;
    }
    gguf_writer_add_str(w, "general.architecture", "ds4-sample");
    gguf_writer_add_str(w, "general.name", "ds4 GGUF sample — every metadata type");
    gguf_writer_add_u8(w, "sample.u8", 250);
    gguf_writer_add_i8(w, "sample.i8", -7);
    gguf_writer_add_u16(w, "sample.u16", 65000);
    gguf_writer_add_i16(w, "sample.i16", -32000);
    gguf_writer_add_u32(w, "sample.u32", 4000000000u);
    gguf_writer_add_i32(w, "sample.i32", -2000000000);
    gguf_writer_add_f32(w, "sample.f32", 1.0f / 3.0f);
    gguf_writer_add_bool(w, "sample.bool.true", true);
    gguf_writer_add_bool(w, "sample.bool.false", false);
    gguf_writer_add_str(w, "sample.str", "line one\nline \"two\" ✓");
    gguf_writer_add_str(w, "sample.str.empty", "");
    gguf_writer_add_u64(w, "sample.u64", 18446744073709551615ull);
    gguf_writer_add_i64(w, "sample.i64", -9223372036854775807ll - 1);
    gguf_writer_add_f64(w, "sample.f64", 3.141592653589793);
    gguf_writer_add_array(w, "sample.arr.u8", GGUF_T_UINT8, a_u8, 3);
    gguf_writer_add_array(w, "sample.arr.i8", GGUF_T_INT8, a_i8, 3);
    gguf_writer_add_array(w, "sample.arr.u16", GGUF_T_UINT16, a_u16, 2);
    gguf_writer_add_array(w, "sample.arr.i16", GGUF_T_INT16, a_i16, 2);
    gguf_writer_add_array(w, "sample.arr.u32", GGUF_T_UINT32, a_u32, 3);
    gguf_writer_add_array(w, "sample.arr.i32", GGUF_T_INT32, a_i32, 3);
    gguf_writer_add_array(w, "sample.arr.f32", GGUF_T_FLOAT32, a_f32, 4);
    gguf_writer_add_array(w, "sample.arr.bool", GGUF_T_BOOL, a_bool, 3);
    gguf_writer_add_array(w, "sample.arr.u64", GGUF_T_UINT64, a_u64, 3);
    gguf_writer_add_array(w, "sample.arr.i64", GGUF_T_INT64, a_i64, 3);
    gguf_writer_add_array(w, "sample.arr.f64", GGUF_T_FLOAT64, a_f64, 3);
    gguf_writer_add_array(w, "sample.arr.empty", GGUF_T_UINT32, NULL, 0);
    gguf_writer_add_str_array(w, "sample.arr.str", strs, sizeof strs / sizeof strs[0]);
    gguf_writer_add_value(w, "sample.arr.nested", &(gguf_value){
        .type = GGUF_T_ARRAY, .v.arr = {GGUF_T_ARRAY, 3, nested, nested_len}});
    for (size_t i = 0; i < sizeof tensors / sizeof tensors[0] && rc == 0; i++) {
        seeds[i] = (uint32_t)i + 1;
        rc = gguf_writer_add_tensor(w, tensors[i].name, tensors[i].type, tensors[i].n_dims,
                                    tensors[i].ne, NULL, fill_pattern, &seeds[i], &err);
    }
    if (rc == 0) rc = gguf_writer_write(w, out, &err);
    gguf_writer_free(w);
    if (rc != 0) {
        fprintf(stderr, "ds4-gguf: %s\n", err.msg);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *file = NULL, *sample = NULL;
    uint64_t limit = UINT64_MAX, alignment = 0;
    for (int i = 1; i < argc; i++) {
        bool has_arg = i + 1 < argc;
        if (strcmp(argv[i], "--array-limit") == 0 && has_arg) {
            if (!ds4_parse_u64(argv[++i], 0, UINT64_MAX, &limit)) {
                fprintf(stderr, "ds4-gguf: --array-limit needs a number, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (strcmp(argv[i], "--write-sample") == 0 && has_arg) {
            sample = argv[++i];
        } else if (strcmp(argv[i], "--alignment") == 0 && has_arg) {
            if (!ds4_parse_u64(argv[++i], 1, 1u << 31, &alignment) ||
                (alignment & (alignment - 1))) {
                fprintf(stderr, "ds4-gguf: --alignment needs a power of two, got '%s'\n", argv[i]);
                return 2;
            }
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage();
            return 0;
        } else if (argv[i][0] != '-' && !file) {
            file = argv[i];
        } else {
            fprintf(stderr, "ds4-gguf: unexpected argument '%s'\n", argv[i]);
            usage();
            return 2;
        }
    }
    if (!!file == !!sample || (alignment && !sample)) {
        usage();
        return 2;
    }
    return sample ? write_sample(sample, (uint32_t)alignment) : dump(file, limit);
}
