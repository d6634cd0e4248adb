/* test_gguf_fuzz.c — deterministic mutation fuzzing of the GGUF reader.
 *
 * A small valid file is written with the writer (metadata of every kind,
 * tensors of three types), then mutated in every way a broken or hostile
 * file could differ: truncated at every length, single bytes flipped, huge
 * and boundary values written over every 4- and 8-byte window of the header,
 * tensor offsets moved out of range or onto each other, tensor types
 * replaced. Every mutant is handed to gguf_open_memory() in a buffer of its
 * exact size (so ASan sees any overread). Each must either fail with a
 * message or open cleanly, and then every pointer the reader hands out
 * (keys, strings, array items, tensor data) must lie inside the buffer and
 * every array item must be readable. */
#include "../src/common/file.h"
#include "../src/gguf/gguf.h"
#include "../src/quant/quant.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

static uint64_t n_ok, n_failed;

static bool inside(const uint8_t *base, uint64_t size, const void *p, uint64_t n) {
    const uint8_t *q = p;
    return q >= base && q <= base + size && n <= (uint64_t)(base + size - q);
}

static void check_value(const uint8_t *buf, uint64_t size, const gguf_value *v, int depth,
                        const char *label) {
    ds4_err err;
    if (v->type == GGUF_T_STRING) {
        CHECK(inside(buf, size, v->v.str.ptr, v->v.str.len), "%s: string outside", label);
        return;
    }
    if (v->type != GGUF_T_ARRAY) return;
    CHECK(inside(buf, size, v->v.arr.items, v->v.arr.bytes), "%s: array outside", label);
    if (v->v.arr.item_type == GGUF_T_STRING) {
        gguf_str *s = malloc((v->v.arr.count ? v->v.arr.count : 1) * sizeof *s);
        CHECK(v->v.arr.count <= size / 8, "%s: string count unbounded", label);
        CHECK(gguf_array_strings(v, s, &err) == 0, "%s: strings: %s", label, err.msg);
        for (uint64_t i = 0; i < v->v.arr.count; i++)
            CHECK(inside(buf, size, s[i].ptr, s[i].len), "%s: string %llu outside", label,
                  (unsigned long long)i);
        free(s);
    }
    gguf_array_iter it;
    gguf_value item;
    uint64_t n = 0;
    int rc;
    gguf_array_iter_init(&it, v);
    while ((rc = gguf_array_next(&it, &item, &err)) == 1) {
        if (depth < GGUF_MAX_ARRAY_DEPTH) check_value(buf, size, &item, depth + 1, label);
        n++;
    }
    CHECK(rc == 0 && n == v->v.arr.count, "%s: iterated %llu of %llu items: %s", label,
          (unsigned long long)n, (unsigned long long)v->v.arr.count, err.msg);
    if (v->v.arr.count)
        CHECK(gguf_array_get(v, v->v.arr.count - 1, &item, &err) == 0, "%s: last item: %s",
              label, err.msg);
}

/* Opens one mutant from an exact-size copy and checks the outcome. */
static void try_open(const uint8_t *src, uint64_t size, const char *label) {
    uint8_t *buf = malloc(size ? size : 1);
    gguf_file f;
    ds4_err err = {{0}};
    memcpy(buf, src, size);
    if (gguf_open_memory(&f, buf, size, &err) != 0) {
        n_failed++;
        CHECK(err.msg[0] != 0, "%s: failed without a message", label);
        CHECK(f.kv == NULL && f.tensors == NULL, "%s: failed open left allocations", label);
        free(buf);
        return;
    }
    n_ok++;
    CHECK(f.data_offset <= size && f.alignment && (f.alignment & (f.alignment - 1)) == 0,
          "%s: header fields", label);
    for (uint64_t i = 0; i < f.n_kv; i++) {
        CHECK(inside(buf, size, f.kv[i].key.ptr, f.kv[i].key.len) && f.kv[i].key.len > 0,
              "%s: key outside", label);
        check_value(buf, size, &f.kv[i].value, 0, label);
    }
    for (uint64_t i = 0; i < f.n_tensors; i++) {
        const gguf_tensor_info *t = &f.tensors[i];
        const ds4_type_info *ti = ds4_type_info_get(t->type);
        CHECK(inside(buf, size, t->name.ptr, t->name.len), "%s: name outside", label);
        CHECK(ti && t->ne[0] % ti->block_elems == 0, "%s: bad type or shape accepted", label);
        CHECK(t->nbytes > 0 && inside(buf, size, t->data, t->nbytes), "%s: tensor %llu data "
              "[%p, %llu bytes] outside buffer", label, (unsigned long long)i, t->data,
              (unsigned long long)t->nbytes);
        CHECK((const uint8_t *)t->data >= buf + f.data_offset, "%s: tensor before data", label);
        CHECK(gguf_find_tensor(&f, "f32.w") == NULL || gguf_find_tensor(&f, "f32.w")->n_dims,
              "%s: lookup", label);
    }
    gguf_close(&f);
    free(buf);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rng(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

static int fill_bytes(void *ctx, void *dst, uint64_t nbytes, ds4_err *err) {
    memset(dst, *(int *)ctx, nbytes);
    return 0;
}

/* Writes the seed file and returns it in memory. */
static uint8_t *make_seed(const char *path, uint64_t *size) {
    static const char *const strs[] = {"a", "bc", "", "déf"};
    static const float f32s[] = {1, 2, 3};
    static const uint8_t bools[] = {0, 1};
    /* [[7, 8] as UINT16, ["z"]] */
    static const uint8_t nested[] = {2, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 8, 0,
                                     8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0,
                                     1, 0, 0, 0, 0, 0, 0, 0, 'z'};
    static float f32_data[2 * 8];
    int fill_value = 0x3c;
    gguf_writer *w = gguf_writer_new(32);
    ds4_err err;
    gguf_writer_add_u32(w, "general.count", 3);
    gguf_writer_add_str(w, "general.name", "fuzz seed");
    gguf_writer_add_u64(w, "big", 1ull << 40);
    gguf_writer_add_bool(w, "flag", true);
    gguf_writer_add_f64(w, "pi", 3.14159);
    gguf_writer_add_str_array(w, "tokens", strs, 4);
    gguf_writer_add_array(w, "floats", GGUF_T_FLOAT32, f32s, 3);
    gguf_writer_add_array(w, "bools", GGUF_T_BOOL, bools, 2);
    gguf_writer_add_value(w, "nested", &(gguf_value){
        .type = GGUF_T_ARRAY, .v.arr = {GGUF_T_ARRAY, 2, nested, sizeof nested}});
    CHECK(gguf_writer_add_tensor(w, "f32.w", DS4_TYPE_F32, 2, (uint64_t[]){8, 2}, f32_data, NULL,
                                 NULL, &err) == 0, "seed tensor: %s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "q8.w", DS4_TYPE_Q8_0, 2, (uint64_t[]){32, 2}, NULL,
                                 fill_bytes, &fill_value, &err) == 0, "seed tensor: %s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "f16.v", DS4_TYPE_F16, 1, (uint64_t[]){5}, NULL, fill_bytes,
                                 &fill_value, &err) == 0, "seed tensor: %s", err.msg);
    CHECK(gguf_writer_write(w, path, &err) == 0, "seed write: %s", err.msg);
    gguf_writer_free(w);
    size_t n = 0;
    uint8_t *buf = (uint8_t *)ds4_read_file(path, &n, NULL);
    *size = n;
    return buf;
}

int main(void) {
    char path[600], label[96];
    const char *tmp = getenv("DS4_TMP");
    uint64_t size = 0, header_end, mutants = 0;
    uint8_t *seed, *m;
    gguf_file f;
    ds4_err err;
    static const uint64_t huge[] = {UINT64_MAX, 1ull << 63, (1ull << 63) - 1, 1ull << 32,
                                    (1ull << 32) - 1, 1ull << 31, 0, 1, 9, 13, 31};

    snprintf(path, sizeof path, "%s/fuzz-seed.gguf", tmp && *tmp ? tmp : "/tmp");
    seed = make_seed(path, &size);
    if (!seed || !size) {
        CHECK(0, "cannot build the seed file");
        return TEST_DONE();
    }
    CHECK(gguf_open_memory(&f, seed, size, &err) == 0, "seed does not open: %s", err.msg);
    header_end = f.data_offset;
    m = malloc(size);

    /* 1. every truncation */
    for (uint64_t n = 0; n < size; n++, mutants++) {
        snprintf(label, sizeof label, "truncated to %llu", (unsigned long long)n);
        try_open(seed, n, label);
    }
    /* 2. boundary values over every 4- and 8-byte window of the header */
    for (uint64_t at = 0; at < header_end; at++) {
        for (size_t k = 0; k < sizeof huge / sizeof huge[0]; k++) {
            uint32_t v32 = (uint32_t)huge[k];
            memcpy(m, seed, size);
            if (at + 8 <= size) {
                memcpy(m + at, &huge[k], 8);
                snprintf(label, sizeof label, "u64 %llx at %llu", (unsigned long long)huge[k],
                         (unsigned long long)at);
                try_open(m, size, label);
                mutants++;
            }
            memcpy(m, seed, size);
            memcpy(m + at, &v32, 4);
            snprintf(label, sizeof label, "u32 %x at %llu", v32, (unsigned long long)at);
            try_open(m, size, label);
            mutants++;
        }
    }
    /* 3. tensor offsets and types */
    for (uint64_t i = 0; i < f.n_tensors; i++) {
        const gguf_tensor_info *t = &f.tensors[i];
        uint64_t type_at = (uint64_t)((const uint8_t *)t->name.ptr - seed) + t->name.len + 4 +
                           8 * t->n_dims;
        uint64_t offset_at = type_at + 4;
        uint64_t offsets[] = {0, 32, 64, 96, t->offset + 32, f.size - f.data_offset,
                              f.size - f.data_offset - 32, f.size, UINT64_MAX - 31};
        for (size_t k = 0; k < sizeof offsets / sizeof offsets[0]; k++, mutants++) {
            memcpy(m, seed, size);
            memcpy(m + offset_at, &offsets[k], 8);
            snprintf(label, sizeof label, "tensor %llu offset %llu", (unsigned long long)i,
                     (unsigned long long)offsets[k]);
            try_open(m, size, label);
        }
        for (uint32_t type = 0; type < 40; type++, mutants++) {
            memcpy(m, seed, size);
            memcpy(m + type_at, &type, 4);
            snprintf(label, sizeof label, "tensor %llu type %u", (unsigned long long)i, type);
            try_open(m, size, label);
        }
        for (uint64_t j = 0; j < f.n_tensors; j++, mutants++) { /* onto another tensor */
            memcpy(m, seed, size);
            memcpy(m + offset_at, &f.tensors[j].offset, 8);
            try_open(m, size, "tensor offset copied");
        }
    }
    /* 4. random byte flips, bursts and value splats anywhere */
    for (int k = 0; k < 3000; k++, mutants++) {
        int n_changes = 1 + (int)(rng() % 4);
        memcpy(m, seed, size);
        for (int c = 0; c < n_changes; c++) {
            uint64_t at = rng() % (k % 2 ? header_end : size);
            switch (rng() % 3) {
            case 0: m[at] ^= (uint8_t)(1u << (rng() % 8)); break;
            case 1: m[at] = (uint8_t)rng(); break;
            default:
                if (at + 8 <= size) {
                    uint64_t v = huge[rng() % (sizeof huge / sizeof huge[0])];
                    memcpy(m + at, &v, 8);
                }
            }
        }
        snprintf(label, sizeof label, "random mutation %d", k);
        try_open(m, size, label);
    }
    gguf_close(&f);
    free(m);
    free(seed);
    printf("%llu mutants: %llu opened, %llu rejected\n", (unsigned long long)mutants,
           (unsigned long long)n_ok, (unsigned long long)n_failed);
    CHECK(mutants >= 2000 && n_failed > 0 && n_ok > 0, "mutant counts");
    return TEST_DONE();
}
