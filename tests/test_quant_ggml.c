/* test_quant_ggml.c — ds4's block formats against ggml's own code.
 *
 * ggml (libggml-base.so shipped by node-llama-cpp, loaded with dlopen) is an
 * independent implementation of the same file formats. Checked here:
 *  - f16/bf16 conversions: all 65536 halves, and f32 -> f16/bf16 on edge
 *    cases and random values, bit for bit;
 *  - dequantisation of random blocks of every quantised weight type, bit
 *    for bit;
 *  - the Q8_0 weight quantiser (byte for byte) and the Q8_K activation
 *    quantiser (ggml's quantize_row_q8_K_ref rounds with its magic-number
 *    nearest_int, which is round-half-even like ds4's lrintf, and uses the
 *    same -127/max scale: the blocks must agree);
 *  - quantiser quality: ds4's Q2_K, Q4_K and IQ2_XXS error, weighted by the
 *    importance matrix, against ggml's on the same data.
 * Exits 77 when the library is not there. */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/quant/quant.h"
#include "quant_testdata.h"
#include "testutil.h"

#define GGML_LIB "tests/node/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so"

/* The few ggml entry points used (signatures from ggml.h / ggml-quants.h;
 * ggml_fp16_t and ggml_bf16_t are 16-bit values passed like uint16_t). */
typedef void (*dequant_fn)(const void *x, float *y, int64_t k);
typedef size_t (*quant_fn)(const float *src, void *dst, int64_t nrows, int64_t n_per_row, const float *imatrix);
static struct {
    float (*fp16_to_fp32)(uint16_t);
    uint16_t (*fp32_to_fp16)(float);
    float (*bf16_to_fp32)(uint16_t);
    uint16_t (*fp32_to_bf16)(float);
    dequant_fn dq_q8_0, dq_q2_K, dq_q4_K, dq_iq2_xxs;
    quant_fn q_q8_0, q_q2_K, q_q4_K, q_iq2_xxs;
    void (*q8_K_ref)(const float *x, void *y, int64_t k);
    void (*quantize_init)(int type);
    void (*quantize_free)(void);
} gg;

static void *must(void *lib, const char *name) {
    void *p = dlsym(lib, name);
    if (!p) {
        printf("skipped: %s has no %s\n", GGML_LIB, name);
        exit(77);
    }
    return p;
}

static void load_ggml(void) {
    const char *root = getenv("DS4_ROOT");
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", root ? root : ".", GGML_LIB);
    void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        printf("skipped: cannot load ggml (%s)\n", dlerror());
        exit(77);
    }
    *(void **)&gg.fp16_to_fp32 = must(lib, "ggml_fp16_to_fp32");
    *(void **)&gg.fp32_to_fp16 = must(lib, "ggml_fp32_to_fp16");
    *(void **)&gg.bf16_to_fp32 = must(lib, "ggml_bf16_to_fp32");
    *(void **)&gg.fp32_to_bf16 = must(lib, "ggml_fp32_to_bf16");
    *(void **)&gg.dq_q8_0 = must(lib, "dequantize_row_q8_0");
    *(void **)&gg.dq_q2_K = must(lib, "dequantize_row_q2_K");
    *(void **)&gg.dq_q4_K = must(lib, "dequantize_row_q4_K");
    *(void **)&gg.dq_iq2_xxs = must(lib, "dequantize_row_iq2_xxs");
    *(void **)&gg.q_q8_0 = must(lib, "quantize_q8_0");
    *(void **)&gg.q_q2_K = must(lib, "quantize_q2_K");
    *(void **)&gg.q_q4_K = must(lib, "quantize_q4_K");
    *(void **)&gg.q_iq2_xxs = must(lib, "quantize_iq2_xxs");
    *(void **)&gg.q8_K_ref = must(lib, "quantize_row_q8_K_ref");
    *(void **)&gg.quantize_init = must(lib, "ggml_quantize_init");
    *(void **)&gg.quantize_free = must(lib, "ggml_quantize_free");
}

static int same_float(float a, float b) {
    return qt_bits(a) == qt_bits(b) || (isnan(a) && isnan(b));
}

static void test_half_conversions(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float ours = ds4_f16_to_f32((uint16_t)h), theirs = gg.fp16_to_fp32((uint16_t)h);
        if (!same_float(ours, theirs) && bad++ < 5) CHECK(0, "f16 %04x: ours %a ggml %a", h, ours, theirs);
        if (!isnan(ours) && ds4_f32_to_f16(ours) != h && bad++ < 5) CHECK(0, "f16 %04x does not round-trip", h);
        float b = ds4_bf16_to_f32((uint16_t)h);
        if (!same_float(b, gg.bf16_to_fp32((uint16_t)h)) && bad++ < 5) CHECK(0, "bf16 %04x", h);
    }
    CHECK(bad == 0, "%d half/bf16 -> f32 mismatches", bad);

    /* f32 -> f16/bf16: every f16 midpoint and its neighbours, specials, random bit patterns */
    qt_rng r = {1};
    bad = 0;
    for (uint32_t i = 0; i < 400000; i++) {
        float f;
        if (i < 65536 * 3) {
            uint32_t h = i / 3;
            float a = ds4_f16_to_f32((uint16_t)h), b = ds4_f16_to_f32((uint16_t)(h + 1));
            if (isnan(a) || isnan(b) || isinf(a) || isinf(b)) continue;
            f = (float)(((double)a + b) / 2);
            f = qt_from_bits(qt_bits(f) + (uint32_t)(i % 3) - 1);
        } else {
            f = qt_from_bits((uint32_t)qt_next(&r));
        }
        uint16_t o = ds4_f32_to_f16(f), t = gg.fp32_to_fp16(f);
        if (o != t && !(isnan(f) && (o & 0x7fff) > 0x7c00 && (t & 0x7fff) > 0x7c00) && bad++ < 5)
            CHECK(0, "f32 %a (%08x) -> f16: ours %04x ggml %04x", f, qt_bits(f), o, t);
        uint16_t ob = ds4_f32_to_bf16(f), tb = gg.fp32_to_bf16(f);
        if (ob != tb && bad++ < 5) CHECK(0, "f32 %a -> bf16: ours %04x ggml %04x", f, ob, tb);
    }
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, 65504.0f, 65519.99f, 65520.0f, 1e-8f, -1e-8f,
                              0x1p-24f, 0x1p-25f, 0x1.000002p-25f, 0x1p-14f, 0x1.ff8p-15f, 3.4e38f, 1e-45f};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        CHECK(ds4_f32_to_f16(specials[i]) == gg.fp32_to_fp16(specials[i]), "f16 of %a", specials[i]);
        CHECK(ds4_f32_to_bf16(specials[i]) == gg.fp32_to_bf16(specials[i]), "bf16 of %a", specials[i]);
    }
    CHECK(bad == 0, "%d f32 -> f16/bf16 mismatches", bad);
}

static void test_dequantize(void) {
    static const struct { uint32_t type; dequant_fn *fn; } cases[] = {
        {DS4_TYPE_Q8_0, &gg.dq_q8_0}, {DS4_TYPE_Q2_K, &gg.dq_q2_K},
        {DS4_TYPE_Q4_K, &gg.dq_q4_K}, {DS4_TYPE_IQ2_XXS, &gg.dq_iq2_xxs},
    };
    qt_rng r = {2};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const ds4_type_info *ti = ds4_type_info_get(cases[c].type);
        uint64_t nb = 512, n = nb * ti->block_elems;
        void *blocks = malloc(nb * ti->block_bytes);
        float *ours = malloc(n * sizeof(float)), *theirs = malloc(n * sizeof(float));
        qt_fill_blocks(&r, cases[c].type, blocks, nb, 1);
        ds4_dequantize_row(cases[c].type, blocks, ours, n);
        (*cases[c].fn)(blocks, theirs, (int64_t)n);
        uint64_t bad = 0, first = 0;
        for (uint64_t i = 0; i < n; i++)
            if (!same_float(ours[i], theirs[i]) && !bad++) first = i;
        CHECK(bad == 0, "%s dequantise: %llu of %llu values differ, first at %llu: %a vs %a", ti->name,
              (unsigned long long)bad, (unsigned long long)n, (unsigned long long)first, ours[first], theirs[first]);
        free(blocks);
        free(ours);
        free(theirs);
    }
}

static void test_q8_quantisers(void) {
    qt_rng r = {3};
    uint64_t n = 64 * DS4_QK_K;
    float *x = malloc(n * sizeof(float));
    for (int kind = 0; kind < 4; kind++) {
        qt_fill_weights(&r, x, n, kind, kind == 1 ? 1e-3f : 0.05f);
        for (int i = 0; i < 64; i++) x[2 * DS4_QK_K + i] = 0.0f; /* some all-zero Q8_0 blocks */
        ds4_block_q8_0 ours[64 * 8], theirs[64 * 8];
        ds4_quantize_row(DS4_TYPE_Q8_0, x, ours, n, NULL);
        gg.q_q8_0(x, theirs, 1, (int64_t)n, NULL);
        CHECK(memcmp(ours, theirs, sizeof ours) == 0, "Q8_0 quantiser differs from ggml (kind %d)", kind);

        memset(x + 5 * DS4_QK_K, 0, DS4_QK_K * sizeof(float)); /* an all-zero Q8_K block */
        ds4_block_q8_K a[64], b[64];
        ds4_quantize_q8_K(x, a, n);
        gg.q8_K_ref(x, b, (int64_t)n);
        int bad = 0;
        for (int i = 0; i < 64; i++) {
            int same = qt_bits(a[i].d) == qt_bits(b[i].d) && memcmp(a[i].qs, b[i].qs, sizeof a[i].qs) == 0;
            /* ggml leaves bsums unset for an all-zero block; ds4 writes zeros */
            if (a[i].d != 0.0f) same = same && memcmp(a[i].bsums, b[i].bsums, sizeof a[i].bsums) == 0;
            bad += !same;
        }
        CHECK(bad == 0, "Q8_K activation: %d of 64 blocks differ from quantize_row_q8_K_ref (kind %d)", bad, kind);
    }
    free(x);
}

/* sum_i w_i (x_i - y_i)^2 */
static double weighted_sq_err(const float *x, const float *y, const float *w, uint64_t n) {
    double e = 0.0;
    for (uint64_t i = 0; i < n; i++) e += (w ? w[i] : 1.0) * ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
    return e;
}

static void test_quality(void) {
    static const struct { uint32_t type; quant_fn *fn; double margin; } cases[] = {
        {DS4_TYPE_Q2_K, &gg.q_q2_K, 1.0}, {DS4_TYPE_Q4_K, &gg.q_q4_K, 1.0},
        {DS4_TYPE_IQ2_XXS, &gg.q_iq2_xxs, 1.0},
    };
    const uint64_t nb = getenv("DS4_SAN") && atoi(getenv("DS4_SAN")) ? 8 : 24, n = nb * DS4_QK_K;
    float *x = malloc(n * sizeof(float)), *imat = malloc(n * sizeof(float)), *ones = malloc(n * sizeof(float));
    float *y = malloc(n * sizeof(float));
    void *q = malloc(n * 2);
    for (uint64_t i = 0; i < n; i++) ones[i] = 1.0f;
    gg.quantize_init(16 /* GGML_TYPE_IQ2_XXS */);
    qt_rng r = {4};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *name = ds4_type_name(cases[c].type);
        for (int with_imatrix = 0; with_imatrix < 2; with_imatrix++) {
            double e_ours = 0, e_theirs = 0;
            for (int kind = 0; kind < 4; kind++) {
                qt_fill_weights(&r, x, n, kind, 0.02f);
                for (uint64_t i = 0; i < n; i++) /* activations' mean squares: skewed, positive */
                    imat[i] = with_imatrix ? expf(1.5f * qt_gauss(&r)) : 1.0f;
                const float *w = with_imatrix ? imat : NULL;
                ds4_quantize_row(cases[c].type, x, q, n, w);
                ds4_dequantize_row(cases[c].type, q, y, n);
                double eo = weighted_sq_err(x, y, w, n);
                /* ggml's IQ2_XXS insists on an imatrix: ones stand for none */
                const float *gw = w ? w : cases[c].type == DS4_TYPE_IQ2_XXS ? ones : NULL;
                (*cases[c].fn)(x, q, 1, (int64_t)n, gw);
                ds4_dequantize_row(cases[c].type, q, y, n);
                double et = weighted_sq_err(x, y, w, n);
                double ss = 0.0; /* weighted signal energy, to make errors relative */
                for (uint64_t i = 0; i < n; i++) ss += (w ? w[i] : 1.0) * (double)x[i] * x[i];
                printf("%-8s imatrix=%d data=%d  rel. weighted RMSE: ds4 %.5f  ggml %.5f  (ratio %.3f)\n", name,
                       with_imatrix, kind, sqrt(eo / ss), sqrt(et / ss), sqrt(eo / et));
                e_ours += eo / ss;
                e_theirs += et / ss;
            }
            CHECK(e_ours <= e_theirs * cases[c].margin, "%s (imatrix=%d): ds4 error %.6g > ggml %.6g x %.2f", name,
                  with_imatrix, e_ours, e_theirs, cases[c].margin);
        }
    }
    gg.quantize_free();
    free(x);
    free(imat);
    free(ones);
    free(y);
    free(q);
}

int main(void) {
    load_ggml();
    test_half_conversions();
    test_dequantize();
    test_q8_quantisers();
    test_quality();
    return TEST_DONE();
}
