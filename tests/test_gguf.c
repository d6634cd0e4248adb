/* test_gguf.c — GGUF reader and writer: round trips and malformed files.
 *
 * Round trips write every value type (scalars, arrays of each scalar type,
 * string arrays, arrays of arrays) and tensors of several types at several
 * alignments, then read them back and compare everything. Malformed files
 * are built byte by byte (independently of the writer) so each targets one
 * rule, and each must fail with a message naming that rule. */
#include "../src/common/file.h"
#include "../src/gguf/gguf.h"
#include "../src/quant/quant.h"
#include "testutil.h"

#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[512];

static const char *tmp_path(const char *name) {
    static char buf[4][600];
    static int k;
    char *p = buf[k++ & 3];
    snprintf(p, 600, "%s/%s", tmpdir, name);
    return p;
}

static bool file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

/* ---- byte builder for hand-made files ---- */

typedef struct bytes {
    uint8_t data[8192];
    size_t len;
} bytes;

static void put(bytes *b, const void *p, size_t n) {
    memcpy(b->data + b->len, p, n);
    b->len += n;
}
static void put_u32(bytes *b, uint32_t v) { put(b, &v, 4); }
static void put_u64(bytes *b, uint64_t v) { put(b, &v, 8); }
static void put_str(bytes *b, const char *s) {
    put_u64(b, strlen(s));
    put(b, s, strlen(s));
}
static void put_header(bytes *b, uint64_t n_tensors, uint64_t n_kv) {
    b->len = 0;
    put_u32(b, GGUF_MAGIC);
    put_u32(b, 3);
    put_u64(b, n_tensors);
    put_u64(b, n_kv);
}
static void put_kv_u32(bytes *b, const char *key, uint32_t v) {
    put_str(b, key);
    put_u32(b, GGUF_T_UINT32);
    put_u32(b, v);
}
/* A tensor info with up to 4 dims. */
static void put_tensor(bytes *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                       uint32_t type, uint64_t offset) {
    put_str(b, name);
    put_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) put_u64(b, ne[d]);
    put_u32(b, type);
    put_u64(b, offset);
}
static void pad_to(bytes *b, size_t align) {
    while (b->len % align) b->data[b->len++] = 0;
}
static void put_zeros(bytes *b, size_t n) {
    memset(b->data + b->len, 0, n);
    b->len += n;
}

/* Expects open_memory to fail with `want` in the message. */
static void expect_error(const bytes *b, const char *want, const char *label) {
    gguf_file f;
    ds4_err err = {{0}};
    int rc = gguf_open_memory(&f, b->data, b->len, &err);
    CHECK(rc == -1, "%s: opened, expected an error containing '%s'", label, want);
    if (rc == 0) gguf_close(&f);
    CHECK(strstr(err.msg, want) != NULL, "%s: error '%s' lacks '%s'", label, err.msg, want);
}

static void expect_ok(const bytes *b, const char *label) {
    gguf_file f;
    ds4_err err = {{0}};
    int rc = gguf_open_memory(&f, b->data, b->len, &err);
    CHECK(rc == 0, "%s: %s", label, err.msg);
    if (rc == 0) gguf_close(&f);
}

static void test_malformed(void) {
    bytes b;
    uint64_t ne1[1] = {32}, ne2[2] = {64, 2};

    put_header(&b, 0, 0);
    expect_ok(&b, "empty file with no tensors");
    b.data[0] = 'X';
    expect_error(&b, "not a GGUF file: magic is 0x46554758", "bad magic");
    put_header(&b, 0, 0);
    b.data[4] = 2;
    expect_error(&b, "unsupported GGUF version 2", "version 2");
    put_header(&b, 0, 0);
    b.len = 23;
    expect_error(&b, "file too short for a GGUF header (23 bytes", "short header");

    /* counts bounded by the remaining bytes */
    put_header(&b, 0, 1000);
    expect_error(&b, "metadata count 1000 exceeds what the remaining 0 bytes", "huge n_kv");
    put_header(&b, 1ull << 62, 0);
    expect_error(&b, "tensor count 4611686018427387904 exceeds", "huge n_tensors");
    put_header(&b, 2, 1);
    put_str(&b, "s");
    put_u32(&b, GGUF_T_STRING);
    put_str(&b, "a string long enough to pass the first, loose tensor count bound");
    put_tensor(&b, "t", 1, ne1, DS4_TYPE_F32, 0);
    expect_error(&b, "tensor count 2 exceeds what the remaining 33 bytes at byte 109 can hold",
                 "n_tensors > infos");

    /* strings and arrays */
    put_header(&b, 0, 1);
    put_u64(&b, 1000000000000000000ull);
    put_zeros(&b, 20);
    expect_error(&b, "metadata key #0: key length 1000000000000000000 at byte 24 exceeds the "
                     "remaining 20 bytes", "huge key length");
    put_header(&b, 0, 1);
    put_str(&b, "k");
    put_u32(&b, GGUF_T_STRING);
    put_u64(&b, UINT64_MAX);
    put_zeros(&b, 4);
    expect_error(&b, "metadata key #0 'k': string length 18446744073709551615 at byte 37 exceeds",
                 "huge string length");
    put_header(&b, 0, 1);
    put_str(&b, "arr");
    put_u32(&b, GGUF_T_ARRAY);
    put_u32(&b, GGUF_T_UINT32);
    put_u64(&b, 1ull << 62);
    put_zeros(&b, 16);
    expect_error(&b, "metadata key #0 'arr': array count 4611686018427387904 of UINT32 items at "
                     "byte 43 exceeds what the remaining 16 bytes can hold", "huge array count");
    put_header(&b, 0, 1);
    put_str(&b, "arr");
    put_u32(&b, GGUF_T_ARRAY);
    put_u32(&b, GGUF_T_STRING);
    put_u64(&b, 2);
    put_str(&b, "ok");
    put_u64(&b, 99);
    expect_error(&b, "metadata key #0 'arr': array item 1: string length 99", "bad string in array");
    put_header(&b, 0, 1);
    put_str(&b, "arr");
    put_u32(&b, GGUF_T_ARRAY);
    put_u32(&b, 13);
    put_u64(&b, 0);
    expect_error(&b, "array item type 13 at byte 39 is not a GGUF value type", "bad item type");
    put_header(&b, 0, 1);
    put_str(&b, "deep");
    put_u32(&b, GGUF_T_ARRAY);
    for (int d = 0; d < GGUF_MAX_ARRAY_DEPTH; d++) {
        put_u32(&b, GGUF_T_ARRAY);
        put_u64(&b, 1);
    }
    put_u32(&b, GGUF_T_UINT8);
    put_u64(&b, 0);
    expect_error(&b, "arrays nested more than 8 levels deep", "deep nesting");
    put_header(&b, 0, 1);
    put_str(&b, "deep");
    put_u32(&b, GGUF_T_ARRAY);
    for (int d = 0; d < GGUF_MAX_ARRAY_DEPTH - 1; d++) {
        put_u32(&b, GGUF_T_ARRAY);
        put_u64(&b, 1);
    }
    put_u32(&b, GGUF_T_UINT8);
    put_u64(&b, 0);
    expect_ok(&b, "nesting at the limit");

    /* values */
    put_header(&b, 0, 1);
    put_str(&b, "v");
    put_u32(&b, 13);
    expect_error(&b, "metadata key #0 'v': value type 13 at byte 33 is not a GGUF value type",
                 "bad value type");
    put_header(&b, 0, 1);
    put_str(&b, "v");
    put_u32(&b, GGUF_T_BOOL);
    b.data[b.len++] = 2;
    expect_error(&b, "metadata key #0 'v': bool value 2 at byte 37 is not 0 or 1", "bool 2");
    put_header(&b, 0, 1);
    put_str(&b, "v");
    put_u32(&b, GGUF_T_UINT64);
    put_u32(&b, 0);
    expect_error(&b, "metadata key #0 'v': truncated: UINT64 needs 8 bytes at byte 37, only 4 remain",
                 "truncated value");
    put_header(&b, 0, 2);
    put_kv_u32(&b, "a", 1);
    put_kv_u32(&b, "a", 2);
    expect_error(&b, "duplicate metadata key 'a' (entries #0 and #1)", "duplicate key");
    put_header(&b, 0, 1);
    put_kv_u32(&b, "", 1);
    expect_error(&b, "metadata key #0: empty key", "empty key");
    put_header(&b, 0, 1);
    put_str(&b, "bad\n\xff");
    put_u32(&b, 99);
    expect_error(&b, "'bad\\x0a\\xff': value type 99", "key shown escaped");

    /* alignment */
    put_header(&b, 0, 1);
    put_kv_u32(&b, "general.alignment", 3);
    expect_error(&b, "general.alignment 3 is not a power of two", "alignment 3");
    put_header(&b, 0, 1);
    put_kv_u32(&b, "general.alignment", 0);
    expect_error(&b, "general.alignment 0 is not a power of two", "alignment 0");
    put_header(&b, 0, 1);
    put_str(&b, "general.alignment");
    put_u32(&b, GGUF_T_INT32);
    put_u32(&b, 32);
    expect_error(&b, "general.alignment must be UINT32, found INT32", "alignment type");

    /* tensor infos */
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 0, ne1, DS4_TYPE_F32, 0);
    put_zeros(&b, 200);
    expect_error(&b, "tensor 't': n_dims 0 at byte 33 is out of range 1..8", "n_dims 0");
    put_header(&b, 1, 0);
    put_str(&b, "t");
    put_u32(&b, 9);
    put_zeros(&b, 200);
    expect_error(&b, "tensor 't': n_dims 9 at byte 33 is out of range 1..8", "n_dims 9");
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 1, ne1, 99, 0);
    pad_to(&b, 32);
    put_zeros(&b, 128);
    expect_error(&b, "tensor 't': unknown tensor type 99", "unknown type");
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 1, ne1, 2 /* Q4_0: ggml knows it, ds4 does not */, 0);
    pad_to(&b, 32);
    put_zeros(&b, 128);
    expect_error(&b, "unknown tensor type 2", "unsupported ggml type");
    put_header(&b, 1, 0);
    put_tensor(&b, "blk.0.attn_kv.weight", 2, (uint64_t[]){48, 2}, DS4_TYPE_Q8_0, 0);
    pad_to(&b, 32);
    put_zeros(&b, 128);
    expect_error(&b, "tensor 'blk.0.attn_kv.weight': ne[0] = 48 is not a multiple of the Q8_0 "
                     "block size 32", "ne0 not multiple");
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 2, (uint64_t[]){1ull << 32, 1ull << 32}, DS4_TYPE_F32, 0);
    pad_to(&b, 32);
    expect_error(&b, "tensor 't': element count overflows (dimension 1 is 4294967296)", "overflow");
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 3, (uint64_t[]){32, 0, 2}, DS4_TYPE_F32, 0);
    pad_to(&b, 32);
    put_zeros(&b, 256);
    expect_error(&b, "tensor 't': dimension 1 is 0", "zero dim");
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 1, (uint64_t[]){1ull << 63}, DS4_TYPE_F32, 0);
    pad_to(&b, 32);
    expect_error(&b, "dimension 0 is 9223372036854775808", "dim 2^63");
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 1, (uint64_t[]){1ull << 62}, DS4_TYPE_F32, 0);
    pad_to(&b, 32);
    expect_error(&b, "byte size of 4611686018427387904 F32 elements overflows", "nbytes overflow");
    put_header(&b, 1, 0);
    put_tensor(&b, "", 1, ne1, DS4_TYPE_F32, 0);
    put_zeros(&b, 200);
    expect_error(&b, "tensor #0: empty name", "empty name");

    /* extents: data section of 128 bytes after the 32-aligned header */
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 1, ne1, DS4_TYPE_F32, 32);
    pad_to(&b, 32);
    put_zeros(&b, 160);
    expect_ok(&b, "tensor ending exactly at end of file");
    b.len--;
    expect_error(&b, "data [offset 32, 128 bytes] extends past the end of the file (data section "
                     "at byte 64, file size 223)", "tensor one byte past the end");
    put_header(&b, 1, 0);
    put_tensor(&b, "blk.0.attn_kv.weight", 1, ne1, DS4_TYPE_F32, 64);
    pad_to(&b, 32);
    put_zeros(&b, 128);
    expect_error(&b, "tensor 'blk.0.attn_kv.weight': data [offset 64, 128 bytes] extends past the "
                     "end of the file (data section at byte 96, file size 224)", "past end");
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 1, ne1, DS4_TYPE_F32, UINT64_MAX - 31);
    pad_to(&b, 32);
    put_zeros(&b, 128);
    expect_error(&b, "extends past the end", "offset near 2^64");
    put_header(&b, 1, 0);
    put_tensor(&b, "t", 1, ne1, DS4_TYPE_F32, 16);
    pad_to(&b, 32);
    put_zeros(&b, 256);
    expect_error(&b, "tensor 't': offset 16 is not a multiple of the alignment 32", "misaligned");
    put_header(&b, 2, 0);
    put_tensor(&b, "a", 1, ne1, DS4_TYPE_F32, 0);
    put_tensor(&b, "b", 2, ne2, DS4_TYPE_Q8_0, 96);
    pad_to(&b, 32);
    put_zeros(&b, 256);
    expect_error(&b, "tensors 'a' [offset 0, 128 bytes] and 'b' [offset 96, 136 bytes] overlap",
                 "overlap");
    put_header(&b, 2, 0);
    put_tensor(&b, "b", 2, ne2, DS4_TYPE_Q8_0, 128);
    put_tensor(&b, "a", 1, ne1, DS4_TYPE_F32, 0);
    pad_to(&b, 32);
    put_zeros(&b, 264);
    expect_ok(&b, "adjacent tensors out of file order");
    put_header(&b, 2, 0);
    put_tensor(&b, "a", 1, ne1, DS4_TYPE_F32, 0);
    put_tensor(&b, "a", 1, ne1, DS4_TYPE_F32, 128);
    pad_to(&b, 32);
    put_zeros(&b, 256);
    expect_error(&b, "duplicate tensor name 'a'", "duplicate tensor");
    put_header(&b, 1, 1);
    put_kv_u32(&b, "general.alignment", 64);
    put_tensor(&b, "t", 1, ne1, DS4_TYPE_F32, 32);
    pad_to(&b, 64);
    put_zeros(&b, 256);
    expect_error(&b, "offset 32 is not a multiple of the alignment 64", "alignment 64 used");
}

/* ---- round trips ---- */

static int fill_pattern(void *ctx, void *dst, uint64_t nbytes, ds4_err *err) {
    uint8_t *p = dst;
    unsigned seed = *(unsigned *)ctx;
    for (uint64_t i = 0; i < nbytes; i++) p[i] = (uint8_t)(seed + i * 7);
    return 0;
}

static int fill_fail(void *ctx, void *dst, uint64_t nbytes, ds4_err *err) {
    return ds4_fail(err, "generator broke");
}

/* Serialized items of an array of arrays: [[1,2,3] as UINT32, [] as INT8,
 * [["x","yz"]] as an array of string arrays]. */
static size_t nested_items(uint8_t *out) {
    bytes b = {.len = 0};
    put_u32(&b, GGUF_T_UINT32);
    put_u64(&b, 3);
    put_u32(&b, 1);
    put_u32(&b, 2);
    put_u32(&b, 3);
    put_u32(&b, GGUF_T_INT8);
    put_u64(&b, 0);
    put_u32(&b, GGUF_T_ARRAY);
    put_u64(&b, 1);
    put_u32(&b, GGUF_T_STRING);
    put_u64(&b, 2);
    put_str(&b, "x");
    put_str(&b, "yz");
    memcpy(out, b.data, b.len);
    return b.len;
}

typedef struct tensor_case {
    const char *name;
    uint32_t type, n_dims;
    uint64_t ne[4];
    uint64_t nbytes;
    bool use_fill;
} tensor_case;

static const tensor_case tensor_cases[] = {
    {"f32.matrix", DS4_TYPE_F32, 2, {4, 3}, 48, false},
    {"f16.vector", DS4_TYPE_F16, 1, {7}, 14, false},
    {"q8_0.weight", DS4_TYPE_Q8_0, 2, {64, 2}, 4 * 34, true},
    {"q4_k.weight", DS4_TYPE_Q4_K, 3, {256, 1, 2}, 2 * 144, false},
    {"q2_k.weight", DS4_TYPE_Q2_K, 1, {512}, 2 * 84, true},
    {"iq2_xxs.weight", DS4_TYPE_IQ2_XXS, 4, {256, 1, 1, 1}, 66, false},
    {"bf16.x", DS4_TYPE_BF16, 1, {3}, 6, false},
    {"i32.ids", DS4_TYPE_I32, 2, {5, 2}, 40, true},
};
#define N_TENSOR_CASES (sizeof tensor_cases / sizeof tensor_cases[0])

static void fill_expected(unsigned seed, uint8_t *p, uint64_t n) {
    fill_pattern(&seed, p, n, NULL);
}

static void check_scalar(const gguf_file *f, const char *key, gguf_value_type type,
                         uint64_t u, int64_t i, double d) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    CHECK(kv != NULL, "missing key %s", key);
    if (!kv) return;
    CHECK(kv->value.type == type, "%s: type %s, want %s", key, gguf_type_name(kv->value.type),
          gguf_type_name(type));
    switch (type) {
    case GGUF_T_INT8: case GGUF_T_INT16: case GGUF_T_INT32: case GGUF_T_INT64:
        CHECK(kv->value.v.i64 == i, "%s: %lld != %lld", key, (long long)kv->value.v.i64, (long long)i);
        break;
    case GGUF_T_FLOAT32: case GGUF_T_FLOAT64:
        CHECK(kv->value.v.f64 == d, "%s: %.17g != %.17g", key, kv->value.v.f64, d);
        break;
    default:
        CHECK(kv->value.v.u64 == u, "%s: %llu != %llu", key, (unsigned long long)kv->value.v.u64,
              (unsigned long long)u);
    }
}

static void round_trip(uint32_t alignment) {
    const char *path = tmp_path("rt.gguf");
    static const uint8_t a_u8[] = {0, 1, 255};
    static const int8_t a_i8[] = {-128, 0, 127};
    static const uint16_t a_u16[] = {0, 65535};
    static const int16_t a_i16[] = {-32768, 32767};
    static const uint32_t a_u32[] = {0, 7, 4294967295u};
    static const int32_t a_i32[] = {INT32_MIN, -1, INT32_MAX};
    static const float a_f32[] = {0.5f, -1e30f, 3.25f};
    static const uint8_t a_bool[] = {1, 0, 1, 1};
    static const uint64_t a_u64[] = {UINT64_MAX, 1ull << 63};
    static const int64_t a_i64[] = {INT64_MIN, INT64_MAX};
    static const double a_f64[] = {3.141592653589793, -0.0};
    static const char *const strs[] = {"alpha", "", "ünïcødé ✓", "with space"};
    uint8_t nested[256];
    size_t nested_len = nested_items(nested);
    uint8_t *data[N_TENSOR_CASES];
    unsigned seeds[N_TENSOR_CASES];
    gguf_writer *w = gguf_writer_new(alignment);
    gguf_file f;
    ds4_err err = {{0}};
    char label[64];
    snprintf(label, sizeof label, "alignment %u", alignment);

    gguf_writer_add_u8(w, "t.u8", 200);
    gguf_writer_add_i8(w, "t.i8", -100);
    gguf_writer_add_u16(w, "t.u16", 60000);
    gguf_writer_add_i16(w, "t.i16", -30000);
    gguf_writer_add_u32(w, "t.u32", 4000000000u);
    gguf_writer_add_i32(w, "t.i32", -2000000000);
    gguf_writer_add_f32(w, "t.f32", 1.5f);
    gguf_writer_add_bool(w, "t.bool", true);
    gguf_writer_add_str(w, "t.str", "héllo wörld");
    gguf_writer_add_str(w, "t.empty", "");
    gguf_writer_add_u64(w, "t.u64", (1ull << 63) + 5);
    gguf_writer_add_i64(w, "t.i64", INT64_MIN);
    gguf_writer_add_f64(w, "t.f64", 2.718281828459045);
    gguf_writer_add_array(w, "a.u8", GGUF_T_UINT8, a_u8, 3);
    gguf_writer_add_array(w, "a.i8", GGUF_T_INT8, a_i8, 3);
    gguf_writer_add_array(w, "a.u16", GGUF_T_UINT16, a_u16, 2);
    gguf_writer_add_array(w, "a.i16", GGUF_T_INT16, a_i16, 2);
    gguf_writer_add_array(w, "a.u32", GGUF_T_UINT32, a_u32, 3);
    gguf_writer_add_array(w, "a.i32", GGUF_T_INT32, a_i32, 3);
    gguf_writer_add_array(w, "a.f32", GGUF_T_FLOAT32, a_f32, 3);
    gguf_writer_add_array(w, "a.bool", GGUF_T_BOOL, a_bool, 4);
    gguf_writer_add_array(w, "a.u64", GGUF_T_UINT64, a_u64, 2);
    gguf_writer_add_array(w, "a.i64", GGUF_T_INT64, a_i64, 2);
    gguf_writer_add_array(w, "a.f64", GGUF_T_FLOAT64, a_f64, 2);
    gguf_writer_add_array(w, "a.empty", GGUF_T_UINT32, NULL, 0);
    gguf_writer_add_str_array(w, "a.str", strs, 4);
    gguf_writer_add_value(w, "a.nested", &(gguf_value){
        .type = GGUF_T_ARRAY, .v.arr = {GGUF_T_ARRAY, 3, nested, nested_len}});
    for (size_t i = 0; i < N_TENSOR_CASES; i++) {
        const tensor_case *tc = &tensor_cases[i];
        seeds[i] = (unsigned)(i * 31 + alignment);
        data[i] = malloc(tc->nbytes);
        fill_expected(seeds[i], data[i], tc->nbytes);
        int rc = gguf_writer_add_tensor(w, tc->name, tc->type, tc->n_dims, tc->ne,
                                        tc->use_fill ? NULL : data[i],
                                        tc->use_fill ? fill_pattern : NULL, &seeds[i], &err);
        CHECK(rc == 0, "%s: add %s: %s", label, tc->name, err.msg);
    }
    CHECK(gguf_writer_write(w, path, &err) == 0, "%s: write: %s", label, err.msg);
    gguf_writer_free(w);
    CHECK(!file_exists(tmp_path("rt.gguf.tmp")), "%s: temporary file left behind", label);

    if (gguf_open(&f, path, &err) != 0) {
        CHECK(0, "%s: open: %s", label, err.msg);
        for (size_t i = 0; i < N_TENSOR_CASES; i++) free(data[i]);
        return;
    }
    CHECK(f.version == 3 && f.alignment == (alignment ? alignment : 32), "%s: header", label);
    CHECK(f.data_offset % f.alignment == 0, "%s: data offset %llu unaligned", label,
          (unsigned long long)f.data_offset);
    CHECK(f.n_kv == 27u + (alignment && alignment != 32), "%s: n_kv %llu", label,
          (unsigned long long)f.n_kv);
    if (alignment && alignment != 32) check_scalar(&f, "general.alignment", GGUF_T_UINT32, alignment, 0, 0);
    else CHECK(gguf_find_kv(&f, "general.alignment") == NULL, "%s: default alignment written", label);
    check_scalar(&f, "t.u8", GGUF_T_UINT8, 200, 0, 0);
    check_scalar(&f, "t.i8", GGUF_T_INT8, 0, -100, 0);
    check_scalar(&f, "t.u16", GGUF_T_UINT16, 60000, 0, 0);
    check_scalar(&f, "t.i16", GGUF_T_INT16, 0, -30000, 0);
    check_scalar(&f, "t.u32", GGUF_T_UINT32, 4000000000u, 0, 0);
    check_scalar(&f, "t.i32", GGUF_T_INT32, 0, -2000000000, 0);
    check_scalar(&f, "t.f32", GGUF_T_FLOAT32, 0, 0, 1.5);
    check_scalar(&f, "t.bool", GGUF_T_BOOL, 1, 0, 0);
    check_scalar(&f, "t.u64", GGUF_T_UINT64, (1ull << 63) + 5, 0, 0);
    check_scalar(&f, "t.i64", GGUF_T_INT64, 0, INT64_MIN, 0);
    check_scalar(&f, "t.f64", GGUF_T_FLOAT64, 0, 0, 2.718281828459045);
    const gguf_kv *kv = gguf_find_kv(&f, "t.str");
    CHECK(kv && kv->value.type == GGUF_T_STRING && gguf_str_eq(kv->value.v.str, "héllo wörld"),
          "%s: t.str", label);
    kv = gguf_find_kv(&f, "t.empty");
    CHECK(kv && kv->value.type == GGUF_T_STRING && kv->value.v.str.len == 0, "%s: t.empty", label);
    CHECK(gguf_find_kv(&f, "t.missing") == NULL && gguf_find_kv(&f, "t.u8x") == NULL &&
          gguf_find_kv(&f, "t.u") == NULL, "%s: absent keys found", label);
    CHECK(gguf_str_eq(f.kv[f.n_kv - 1].key, "a.nested"), "%s: file order", label);

    /* scalar arrays: item by item through gguf_array_get */
    struct { const char *key; gguf_value_type t; const void *items; uint64_t n; } arrays[] = {
        {"a.u8", GGUF_T_UINT8, a_u8, 3},     {"a.i8", GGUF_T_INT8, a_i8, 3},
        {"a.u16", GGUF_T_UINT16, a_u16, 2},  {"a.i16", GGUF_T_INT16, a_i16, 2},
        {"a.u32", GGUF_T_UINT32, a_u32, 3},  {"a.i32", GGUF_T_INT32, a_i32, 3},
        {"a.f32", GGUF_T_FLOAT32, a_f32, 3}, {"a.bool", GGUF_T_BOOL, a_bool, 4},
        {"a.u64", GGUF_T_UINT64, a_u64, 2},  {"a.i64", GGUF_T_INT64, a_i64, 2},
        {"a.f64", GGUF_T_FLOAT64, a_f64, 2}, {"a.empty", GGUF_T_UINT32, NULL, 0},
    };
    for (size_t k = 0; k < sizeof arrays / sizeof arrays[0]; k++) {
        kv = gguf_find_kv(&f, arrays[k].key);
        CHECK(kv && kv->value.type == GGUF_T_ARRAY && kv->value.v.arr.item_type == arrays[k].t &&
              kv->value.v.arr.count == arrays[k].n, "%s: %s header", label, arrays[k].key);
        if (!kv) continue;
        CHECK(arrays[k].n == 0 || memcmp(kv->value.v.arr.items, arrays[k].items,
                                         kv->value.v.arr.bytes) == 0, "%s: %s bytes", label,
              arrays[k].key);
        for (uint64_t i = 0; i < arrays[k].n; i++) {
            gguf_value v;
            CHECK(gguf_array_get(&kv->value, i, &v, &err) == 0 && v.type == arrays[k].t,
                  "%s: %s[%llu]", label, arrays[k].key, (unsigned long long)i);
        }
        gguf_value v;
        CHECK(gguf_array_get(&kv->value, arrays[k].n, &v, &err) == -1 &&
              strstr(err.msg, "out of range"), "%s: %s index past end", label, arrays[k].key);
    }
    gguf_value v;
    kv = gguf_find_kv(&f, "a.i32");
    CHECK(kv && gguf_array_get(&kv->value, 0, &v, &err) == 0 && v.v.i64 == INT32_MIN, "a.i32[0]");
    kv = gguf_find_kv(&f, "a.f32");
    CHECK(kv && gguf_array_get(&kv->value, 1, &v, &err) == 0 && v.v.f64 == (double)-1e30f, "a.f32[1]");
    kv = gguf_find_kv(&f, "a.u64");
    CHECK(kv && gguf_array_get(&kv->value, 0, &v, &err) == 0 && v.v.u64 == UINT64_MAX, "a.u64[0]");
    kv = gguf_find_kv(&f, "a.f64");
    CHECK(kv && gguf_array_get(&kv->value, 1, &v, &err) == 0 && v.v.f64 == 0 && signbit(v.v.f64),
          "a.f64[1] is -0");

    kv = gguf_find_kv(&f, "a.str");
    CHECK(kv && kv->value.v.arr.item_type == GGUF_T_STRING && kv->value.v.arr.count == 4,
          "%s: a.str header", label);
    if (kv) {
        gguf_str s[4];
        CHECK(gguf_array_strings(&kv->value, s, &err) == 0, "%s: strings: %s", label, err.msg);
        for (int i = 0; i < 4; i++) CHECK(gguf_str_eq(s[i], strs[i]), "%s: a.str[%d]", label, i);
        CHECK(gguf_array_get(&kv->value, 2, &v, &err) == 0 && v.type == GGUF_T_STRING &&
              gguf_str_eq(v.v.str, strs[2]), "%s: a.str get 2", label);
        CHECK(gguf_array_strings(&gguf_find_kv(&f, "a.u8")->value, s, &err) == -1,
              "strings of a u8 array");
        gguf_array_iter it;
        int n = 0, rc;
        gguf_array_iter_init(&it, &kv->value);
        while ((rc = gguf_array_next(&it, &v, &err)) == 1)
            CHECK(n < 4 && v.type == GGUF_T_STRING && gguf_str_eq(v.v.str, strs[n++]),
                  "%s: iterated a.str[%d]", label, n);
        CHECK(rc == 0 && n == 4 && gguf_array_next(&it, &v, &err) == 0, "%s: iterator end", label);
        gguf_array_iter_init(&it, &f.kv[0].value);
        CHECK(f.kv[0].value.type == GGUF_T_ARRAY || gguf_array_next(&it, &v, &err) == -1,
              "iterating a scalar");
    }

    kv = gguf_find_kv(&f, "a.nested");
    CHECK(kv && kv->value.v.arr.item_type == GGUF_T_ARRAY && kv->value.v.arr.count == 3 &&
          kv->value.v.arr.bytes == nested_len && memcmp(kv->value.v.arr.items, nested, nested_len) == 0,
          "%s: a.nested header", label);
    if (kv) {
        gguf_value inner, x;
        CHECK(gguf_array_get(&kv->value, 0, &inner, &err) == 0 &&
              inner.v.arr.item_type == GGUF_T_UINT32 && inner.v.arr.count == 3 &&
              gguf_array_get(&inner, 2, &x, &err) == 0 && x.v.u64 == 3, "nested[0][2]");
        CHECK(gguf_array_get(&kv->value, 1, &inner, &err) == 0 &&
              inner.v.arr.item_type == GGUF_T_INT8 && inner.v.arr.count == 0, "nested[1]");
        CHECK(gguf_array_get(&kv->value, 2, &inner, &err) == 0 &&
              inner.v.arr.item_type == GGUF_T_ARRAY && inner.v.arr.count == 1 &&
              gguf_array_get(&inner, 0, &x, &err) == 0 && x.v.arr.item_type == GGUF_T_STRING &&
              gguf_array_get(&x, 1, &v, &err) == 0 && gguf_str_eq(v.v.str, "yz"), "nested[2][0][1]");
    }

    CHECK(f.n_tensors == N_TENSOR_CASES, "%s: n_tensors", label);
    uint64_t prev_end = 0;
    for (size_t i = 0; i < N_TENSOR_CASES && i < f.n_tensors; i++) {
        const tensor_case *tc = &tensor_cases[i];
        const gguf_tensor_info *t = gguf_find_tensor(&f, tc->name);
        CHECK(t == &f.tensors[i], "%s: find %s", label, tc->name);
        if (!t) continue;
        CHECK(t->type == tc->type && t->n_dims == tc->n_dims && t->nbytes == tc->nbytes,
              "%s: %s info", label, tc->name);
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++)
            CHECK(t->ne[d] == (d < tc->n_dims ? tc->ne[d] : 1), "%s: %s ne[%u]", label, tc->name, d);
        CHECK(t->offset % f.alignment == 0 && t->offset >= prev_end, "%s: %s offset", label, tc->name);
        CHECK((const uint8_t *)t->data == f.base + f.data_offset + t->offset, "%s: data ptr", label);
        CHECK(memcmp(t->data, data[i], tc->nbytes) == 0, "%s: %s data", label, tc->name);
        prev_end = t->offset + t->nbytes;
    }
    CHECK(f.data_offset + prev_end == f.size, "%s: file ends after the last tensor", label);
    CHECK(gguf_find_tensor(&f, "nope") == NULL, "absent tensor");
    gguf_close(&f);
    gguf_close(&f); /* closing twice is harmless */
    for (size_t i = 0; i < N_TENSOR_CASES; i++) free(data[i]);
}

/* Every strict prefix of a valid file (whose last tensor ends at the end of
 * the file) must be refused with a message about running out of bytes. */
static void truncations(void) {
    size_t size = 0;
    uint8_t *whole, *cut;
    int bad = 0;
    round_trip(32);
    whole = (uint8_t *)ds4_read_file(tmp_path("rt.gguf"), &size, NULL);
    if (!whole) {
        CHECK(0, "cannot reopen rt.gguf");
        return;
    }
    for (size_t n = 0; n < size; n++) {
        gguf_file f;
        ds4_err err = {{0}};
        cut = malloc(n ? n : 1); /* exact size, so ASan sees overreads */
        memcpy(cut, whole, n);
        if (gguf_open_memory(&f, cut, (uint64_t)n, &err) == 0) {
            gguf_close(&f);
            bad++;
        } else if (!strstr(err.msg, "truncated") && !strstr(err.msg, "exceeds") &&
                   !strstr(err.msg, "too short") && !strstr(err.msg, "past the end")) {
            CHECK(0, "prefix %zu: unexpected message '%s'", n, err.msg);
        }
        free(cut);
    }
    CHECK(bad == 0, "%d truncated files opened", bad);
    free(whole);
}

/* Offsets past 4 GiB through the mmap path: a sparse file whose one tensor
 * lies 5 GiB into the data section. */
static void large_sparse_file(void) {
    const char *path = tmp_path("sparse.gguf");
    const uint64_t offset = 5ull << 30;
    bytes b;
    gguf_file f;
    ds4_err err;
    FILE *fp;
    put_header(&b, 1, 0);
    put_tensor(&b, "far", 2, (uint64_t[]){256, 4}, DS4_TYPE_Q4_K, offset);
    pad_to(&b, 32);
    fp = fopen(path, "wb");
    fwrite(b.data, 1, b.len, fp);
    fclose(fp);
    if (truncate(path, (off_t)(b.len + offset + 4 * 144)) != 0) {
        printf("sparse files unsupported here: large-offset check skipped\n");
        return;
    }
    CHECK(gguf_open(&f, path, &err) == 0, "sparse open: %s", err.msg);
    if (f.tensors) {
        CHECK(f.tensors[0].nbytes == 4 * 144 && (const uint8_t *)f.tensors[0].data ==
              f.base + b.len + offset && ((const uint8_t *)f.tensors[0].data)[575] == 0,
              "far tensor");
        gguf_close(&f);
    }
    CHECK(truncate(path, (off_t)(b.len + offset + 4 * 144 - 1)) == 0, "shrink");
    CHECK(gguf_open(&f, path, &err) == -1 && strstr(err.msg, "tensor 'far': data [offset "
          "5368709120, 576 bytes] extends past the end"), "one byte short: %s", err.msg);
    unlink(path);
}

/* A file from the writer with no metadata and no tensors. */
static void empty_file(void) {
    gguf_writer *w = gguf_writer_new(0);
    gguf_file f;
    ds4_err err;
    CHECK(gguf_writer_write(w, tmp_path("empty.gguf"), &err) == 0, "empty write: %s", err.msg);
    gguf_writer_free(w);
    CHECK(gguf_open(&f, tmp_path("empty.gguf"), &err) == 0, "empty open: %s", err.msg);
    CHECK(f.n_kv == 0 && f.n_tensors == 0 && f.size == 32 && f.data_offset == 32, "empty layout");
    gguf_close(&f);
}

/* Expects the writer's first recorded error to contain want, and no file. */
static void expect_write_error(gguf_writer *w, const char *want, const char *label) {
    const char *path = tmp_path("bad.gguf");
    ds4_err err = {{0}};
    unlink(path);
    CHECK(gguf_writer_write(w, path, &err) == -1, "%s: write succeeded", label);
    CHECK(strstr(err.msg, want) != NULL, "%s: error '%s' lacks '%s'", label, err.msg, want);
    CHECK(!file_exists(path) && !file_exists(tmp_path("bad.gguf.tmp")), "%s: file left", label);
    gguf_writer_free(w);
}

static void writer_errors(void) {
    gguf_writer *w;
    ds4_err err;
    uint64_t ne[2] = {32, 2};
    float buf[64] = {0};
    unsigned seed = 1;

    w = gguf_writer_new(0);
    gguf_writer_add_u32(w, "a", 1);
    gguf_writer_add_str(w, "a", "again");
    gguf_writer_add_u32(w, "", 1); /* only the first error is kept */
    expect_write_error(w, "metadata key 'a': duplicate key", "duplicate key");
    w = gguf_writer_new(0);
    gguf_writer_add_u32(w, "", 1);
    expect_write_error(w, "metadata key '': the key is empty", "empty key");
    w = gguf_writer_new(48);
    expect_write_error(w, "alignment 48 is not a power of two", "alignment 48");
    w = gguf_writer_new(64);
    gguf_writer_add_u32(w, "general.alignment", 64);
    expect_write_error(w, "metadata key 'general.alignment': the alignment is set through "
                          "gguf_writer_new()", "alignment key");
    w = gguf_writer_new(0);
    gguf_writer_add_array(w, "b", GGUF_T_BOOL, (uint8_t[]){0, 2}, 2);
    expect_write_error(w, "metadata key 'b': array item 1: bool value 2", "bool array");
    w = gguf_writer_new(0);
    gguf_writer_add_array(w, "s", GGUF_T_STRING, NULL, 0);
    expect_write_error(w, "takes fixed-size items, not STRING", "string via add_array");
    w = gguf_writer_new(0);
    gguf_writer_add_value(w, "v", &(gguf_value){.type = GGUF_T_UINT8, .v.u64 = 256});
    expect_write_error(w, "metadata key 'v': value does not fit UINT8", "u8 range");
    w = gguf_writer_new(0);
    gguf_writer_add_value(w, "v", &(gguf_value){.type = GGUF_T_INT16, .v.i64 = -40000});
    expect_write_error(w, "value does not fit INT16", "i16 range");
    w = gguf_writer_new(0);
    gguf_writer_add_value(w, "n", &(gguf_value){
        .type = GGUF_T_ARRAY, .v.arr = {GGUF_T_UINT32, 2, (const uint8_t *)buf, 12}});
    expect_write_error(w, "array items take 8 bytes but 12 were given", "array bytes mismatch");
    w = gguf_writer_new(0);
    gguf_writer_add_value(w, "n", &(gguf_value){
        .type = GGUF_T_ARRAY, .v.arr = {GGUF_T_STRING, 1, (const uint8_t *)"\x05\0\0\0\0\0\0\0ab", 10}});
    expect_write_error(w, "string length 5", "bad serialized string array");

    w = gguf_writer_new(0);
    CHECK(gguf_writer_add_tensor(w, "t", DS4_TYPE_Q8_0, 2, (uint64_t[]){48, 2}, buf, NULL, NULL,
                                 &err) == -1 &&
          strstr(err.msg, "tensor 't': ne[0] = 48 is not a multiple of the Q8_0 block size 32"),
          "ne0 error: %s", err.msg);
    expect_write_error(w, "tensor 't': ne[0] = 48", "tensor error is sticky");
    w = gguf_writer_new(0);
    CHECK(gguf_writer_add_tensor(w, "t", DS4_TYPE_F32, 2, ne, buf, NULL, NULL, &err) == 0, "add t");
    CHECK(gguf_writer_add_tensor(w, "t", DS4_TYPE_F32, 2, ne, buf, NULL, NULL, &err) == -1 &&
          strstr(err.msg, "tensor 't': duplicate tensor name"), "dup tensor: %s", err.msg);
    gguf_writer_free(w);
    w = gguf_writer_new(0);
    CHECK(gguf_writer_add_tensor(w, "t", 99, 1, ne, buf, NULL, NULL, &err) == -1 &&
          strstr(err.msg, "tensor 't': unknown tensor type 99"), "type 99: %s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "u", DS4_TYPE_F32, 0, ne, buf, NULL, NULL, NULL) == -1,
          "n_dims 0 with NULL err");
    CHECK(gguf_writer_add_tensor(w, "v", DS4_TYPE_F32, 9, ne, buf, NULL, NULL, &err) == -1 &&
          strstr(err.msg, "n_dims 9 is out of range"), "n_dims 9: %s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "x", DS4_TYPE_F32, 1, ne, NULL, NULL, NULL, &err) == -1 &&
          strstr(err.msg, "no data pointer and no fill callback"), "no data: %s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "", DS4_TYPE_F32, 1, ne, buf, NULL, NULL, &err) == -1 &&
          strstr(err.msg, "empty name"), "empty name: %s", err.msg);
    gguf_writer_free(w);

    /* a failing fill callback or an unwritable path leaves nothing behind */
    w = gguf_writer_new(0);
    gguf_writer_add_tensor(w, "ok", DS4_TYPE_F32, 2, ne, NULL, fill_pattern, &seed, &err);
    gguf_writer_add_tensor(w, "broken", DS4_TYPE_F32, 2, ne, NULL, fill_fail, NULL, &err);
    expect_write_error(w, "tensor 'broken': generator broke", "fill error");
    w = gguf_writer_new(0);
    CHECK(gguf_writer_write(w, tmp_path("no/such/dir/x.gguf"), &err) == -1 &&
          strstr(err.msg, "cannot create") && strstr(err.msg, "x.gguf.tmp"), "bad dir: %s", err.msg);
    /* a write over an existing file replaces it whole */
    gguf_writer_add_u32(w, "k", 5);
    CHECK(gguf_writer_write(w, tmp_path("over.gguf"), &err) == 0, "write 1");
    gguf_writer_add_u32(w, "k2", 6);
    CHECK(gguf_writer_write(w, tmp_path("over.gguf"), &err) == 0, "write 2 (same writer again)");
    gguf_writer_free(w);
    gguf_file f;
    CHECK(gguf_open(&f, tmp_path("over.gguf"), &err) == 0 && f.n_kv == 2, "overwritten file");
    gguf_close(&f);
}

static void open_errors(void) {
    gguf_file f;
    ds4_err err;
    FILE *fp;
    CHECK(gguf_open(&f, tmp_path("missing.gguf"), &err) == -1 &&
          strstr(err.msg, "missing.gguf: cannot open: No such file"), "missing: %s", err.msg);
    CHECK(gguf_open(&f, tmpdir, &err) == -1 && strstr(err.msg, "not a regular file"), "dir: %s",
          err.msg);
    fp = fopen(tmp_path("zero.gguf"), "wb");
    fclose(fp);
    CHECK(gguf_open(&f, tmp_path("zero.gguf"), &err) == -1 && strstr(err.msg, "file is empty"),
          "empty: %s", err.msg);
    fp = fopen(tmp_path("text.gguf"), "wb");
    fputs("this is not a gguf file at all", fp);
    fclose(fp);
    CHECK(gguf_open(&f, tmp_path("text.gguf"), &err) == -1 &&
          strstr(err.msg, "text.gguf: not a GGUF file: magic is 0x73696874"), "text: %s", err.msg);
}

static void small_helpers(void) {
    char buf[96];
    char longname[200];
    memset(longname, 'n', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    CHECK(strcmp(gguf_str_show((gguf_str){longname, 199}, buf, sizeof buf) + 64, "...") == 0,
          "long names are cut: %s", buf);
    CHECK(strcmp(gguf_str_show((gguf_str){"a\\b\0", 4}, buf, sizeof buf), "a\\x5cb\\x00") == 0,
          "escapes: %s", buf);
    CHECK(strcmp(gguf_type_name(GGUF_T_FLOAT64), "FLOAT64") == 0 &&
          strcmp(gguf_type_name((gguf_value_type)77), "?") == 0, "type names");
    CHECK(gguf_type_size(GGUF_T_INT16) == 2 && gguf_type_size(GGUF_T_STRING) == 0, "type sizes");
}

int main(void) {
    const char *t = getenv("DS4_TMP");
    snprintf(tmpdir, sizeof tmpdir, "%s", t && *t ? t : "/tmp/test_gguf.XXXXXX");
    if (!(t && *t) && !mkdtemp(tmpdir)) TEST_SKIP("no scratch directory");
    small_helpers();
    test_malformed();
    round_trip(0);
    round_trip(1);
    round_trip(8);
    round_trip(64);
    round_trip(4096);
    truncations();
    large_sparse_file();
    empty_file();
    writer_errors();
    open_errors();
    return TEST_DONE();
}
