/* test_quant_formats.c — the block formats without ggml: independent oracles.
 *
 *  - Type table: ids, names, block sizes (model-spec §3), row byte counts.
 *  - f16: all 65536 values against the compiler's _Float16 (libgcc's IEEE
 *    conversions), and f32 -> f16 on every midpoint and its neighbours
 *    (where the compiler has _Float16).
 *  - bf16: f32 -> bf16 against a definition by distances in double.
 *  - The run-time activation quantisers against model-spec §3 written out
 *    again here with lrintf.
 *  - Quantisers: errors shrink with more bits, an imatrix lowers the error
 *    it weights, and zero, constant, huge and non-finite inputs are handled. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/quant/quant.h"
#include "quant_testdata.h"
#include "testutil.h"

static void test_types(void) {
    static const struct { uint32_t id; const char *name; uint32_t elems, bytes; } want[] = {
        {0, "F32", 1, 4}, {1, "F16", 1, 2}, {8, "Q8_0", 32, 34}, {10, "Q2_K", 256, 84},
        {12, "Q4_K", 256, 144}, {15, "Q8_K", 256, 292}, {16, "IQ2_XXS", 256, 66}, {26, "I32", 1, 4},
        {30, "BF16", 1, 2},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const ds4_type_info *ti = ds4_type_info_get(want[i].id);
        CHECK(ti && ti->id == want[i].id && !strcmp(ti->name, want[i].name) && ti->block_elems == want[i].elems &&
                  ti->block_bytes == want[i].bytes, "type %u", want[i].id);
        CHECK(!strcmp(ds4_type_name(want[i].id), want[i].name), "name of %u", want[i].id);
        CHECK(ds4_type_row_bytes(want[i].id, 4096) == 4096 / want[i].elems * want[i].bytes, "row bytes of %s",
              want[i].name);
    }
    CHECK(ds4_type_info_get(2) == NULL && !strcmp(ds4_type_name(2), "?"), "Q4_0 is not a ds4 type");
    CHECK(ds4_type_row_bytes(DS4_TYPE_Q4_K, 100) == 0, "partial block");
    CHECK(ds4_type_row_bytes(99, 256) == 0, "unknown type");
    CHECK(ds4_type_row_bytes(DS4_TYPE_F32, UINT64_MAX / 2) == 0, "overflowing row");
}

static void test_f16(void) {
#ifdef __FLT16_MAX__ /* the compiler's _Float16 is the oracle (gcc >= 12, clang >= 15 on x86) */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        _Float16 ref;
        uint16_t hv = (uint16_t)h;
        memcpy(&ref, &hv, 2);
        float ours = ds4_f16_to_f32(hv), want = (float)ref;
        int ok = isnan(want) ? isnan(ours) && (qt_bits(ours) >> 31) == (h >> 15) : qt_bits(ours) == qt_bits(want);
        if (!ok && bad++ < 5) CHECK(0, "f16 %04x -> %a, want %a", h, ours, want);
    }
    CHECK(bad == 0, "%d f16 -> f32 mismatches", bad);
    bad = 0;
    for (uint32_t h = 0; h < 0x7c00; h++) { /* every positive finite f16, its midpoints, +-1 ulp */
        for (int sgn = 0; sgn < 2; sgn++) {
            double a = ds4_f16_to_f32((uint16_t)h), b = h + 1 < 0x7c00 ? ds4_f16_to_f32((uint16_t)(h + 1)) : 65536.0;
            float mid = (float)((a + b) / 2);
            for (int k = -1; k <= 1; k++) {
                float f = qt_from_bits(qt_bits(mid) + (uint32_t)k);
                if (sgn) f = -f;
                _Float16 ref = (_Float16)f;
                uint16_t want;
                memcpy(&want, &ref, 2);
                if (ds4_f32_to_f16(f) != want && bad++ < 5) CHECK(0, "f32 %a -> f16 %04x, want %04x", f, ds4_f32_to_f16(f), want);
            }
        }
    }
    CHECK(bad == 0, "%d f32 -> f16 mismatches", bad);
#else
    printf("no _Float16 in this compiler: f16 checked against ggml only (test_quant_ggml)\n");
#endif
    CHECK(ds4_f32_to_f16(INFINITY) == 0x7c00 && ds4_f32_to_f16(-INFINITY) == 0xfc00, "inf");
    uint16_t hn = ds4_f32_to_f16(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff), "NaN stays NaN: %04x", hn);
    CHECK(ds4_f32_to_f16(-0.0f) == 0x8000, "-0");
}

/* bf16 by definition: the nearer of the two bf16 values around f, ties to
 * the even one; NaN stays NaN. */
static uint16_t bf16_reference(float f) {
    uint32_t u = qt_bits(f);
    if (isnan(f)) return (uint16_t)((u >> 16) | 0x40);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    if ((u & 0xffff) == 0) return lo;
    double vlo = qt_from_bits((uint32_t)lo << 16);
    double vhi = (hi & 0x7fff) == 0x7f80 ? copysign(0x1p128, f) /* rounding up overflows */
                                         : qt_from_bits((uint32_t)hi << 16);
    double dl = fabs((double)f - vlo), dh = fabs(vhi - (double)f);
    if (dl != dh) return dl < dh ? lo : hi;
    return (lo & 1) ? hi : lo;
}

static void test_bf16(void) {
    qt_rng r = {21};
    int bad = 0;
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)qt_next(&r);
        if (i % 4 == 0) u = (u & 0xffff0000u) | 0x8000u; /* exact ties */
        float f = qt_from_bits(u);
        if (ds4_f32_to_bf16(f) != bf16_reference(f) && bad++ < 5)
            CHECK(0, "bf16 of %a (%08x): %04x want %04x", f, u, ds4_f32_to_bf16(f), bf16_reference(f));
    }
    CHECK(bad == 0, "%d f32 -> bf16 mismatches", bad);
    for (uint32_t h = 0; h < 65536; h++)
        if (qt_bits(ds4_bf16_to_f32((uint16_t)h)) != h << 16 && bad++ < 5) CHECK(0, "bf16 %04x", h);
}

/* model-spec §3, Q8_0 activation: amax/127 in f32, lrintf(x * (1/d)). */
static void q8_0_act_spec(const float *x, ds4_block_q8_0_act *y, uint64_t n) {
    for (uint64_t b = 0; b < n / 32; b++) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++)
            if (fabsf(x[32 * b + i]) > amax) amax = fabsf(x[32 * b + i]);
        float d = amax / 127.0f, id = d == 0.0f ? 0.0f : 1.0f / d;
        y[b].d = d;
        for (int i = 0; i < 32; i++) {
            long q = d == 0.0f ? 0 : lrintf(x[32 * b + i] * id);
            y[b].qs[i] = (int8_t)(q < -128 ? -128 : q > 127 ? 127 : q);
        }
    }
}

/* model-spec §3, Q8_K: first element of largest |x| sets iscale = -127/max. */
static void q8_K_spec(const float *x, ds4_block_q8_K *y, uint64_t n) {
    for (uint64_t b = 0; b < n / 256; b++) {
        const float *xb = x + 256 * b;
        float amax = 0.0f, max = 0.0f;
        for (int i = 0; i < 256; i++)
            if (fabsf(xb[i]) > amax) amax = fabsf(xb[i]), max = xb[i];
        memset(&y[b], 0, sizeof y[b]);
        if (amax == 0.0f) continue;
        float iscale = -127.0f / max;
        for (int i = 0; i < 256; i++) {
            long q = lrintf(iscale * xb[i]);
            y[b].qs[i] = (int8_t)(q < -128 ? -128 : q > 127 ? 127 : q);
            y[b].bsums[i / 16] = (int16_t)(y[b].bsums[i / 16] + y[b].qs[i]);
        }
        y[b].d = 1.0f / iscale;
    }
}

static void test_activation_quantisers(void) {
    qt_rng r = {22};
    const uint64_t n = 32 * 256;
    float *x = malloc(n * sizeof(float));
    ds4_block_q8_0_act *a = malloc(n / 32 * sizeof *a), *b = malloc(n / 32 * sizeof *b);
    ds4_block_q8_K *c = malloc(n / 256 * sizeof *c), *d = malloc(n / 256 * sizeof *d);
    for (int kind = 0; kind < 5; kind++) {
        qt_fill_weights(&r, x, n, kind % 4, kind == 4 ? 1e-30f : 3.0f);
        for (int i = 0; i < 256; i++) x[256 + i] = 0.0f;                 /* a zero block */
        for (int i = 0; i < 256; i++) x[512 + i] = (float)(i % 5) - 2.0f; /* ties: +-2 first at i=0 */
        x[1024] = -1e30f;                                                 /* huge negative max */
        for (int i = 0; i < 32; i++) x[2048 + i] = (float)i - 0.5f;     /* exact halves */
        ds4_quantize_q8_0_act(x, a, n);
        q8_0_act_spec(x, b, n);
        CHECK(memcmp(a, b, n / 32 * sizeof *a) == 0, "Q8_0 activation differs from the spec (kind %d)", kind);
        ds4_quantize_q8_K(x, c, n);
        q8_K_spec(x, d, n);
        CHECK(memcmp(c, d, n / 256 * sizeof *c) == 0, "Q8_K activation differs from the spec (kind %d)", kind);
    }
    CHECK(c[2].d > 0.0f || c[2].d < 0.0f, "tie block has a scale");
    free(x);
    free(a);
    free(b);
    free(c);
    free(d);
}

static double rel_err(uint32_t type, const float *x, uint64_t n, const float *imatrix, const float *weights) {
    void *q = malloc(ds4_type_row_bytes(type, n));
    float *y = malloc(n * sizeof(float));
    CHECK(ds4_quantize_row(type, x, q, n, imatrix) == ds4_type_row_bytes(type, n), "%s size", ds4_type_name(type));
    ds4_dequantize_row(type, q, y, n);
    double e = 0.0, s = 0.0;
    for (uint64_t i = 0; i < n; i++) {
        double w = weights ? weights[i] : 1.0;
        e += w * ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        s += w * (double)x[i] * x[i];
    }
    free(q);
    free(y);
    return s > 0.0 ? sqrt(e / s) : sqrt(e);
}

static void test_quantisers(void) {
    qt_rng r = {23};
    const uint64_t n = 4 * 256;
    float *x = malloc(n * sizeof(float)), *im = malloc(n * sizeof(float));
    qt_fill_weights(&r, x, n, 0, 0.02f);
    for (uint64_t i = 0; i < n; i++) im[i] = expf(2.0f * qt_gauss(&r));
    double e8 = rel_err(DS4_TYPE_Q8_0, x, n, NULL, NULL), e4 = rel_err(DS4_TYPE_Q4_K, x, n, NULL, NULL);
    double e2 = rel_err(DS4_TYPE_Q2_K, x, n, NULL, NULL), eiq = rel_err(DS4_TYPE_IQ2_XXS, x, n, NULL, NULL);
    double ef16 = rel_err(DS4_TYPE_F16, x, n, NULL, NULL), ebf = rel_err(DS4_TYPE_BF16, x, n, NULL, NULL);
    printf("relative RMSE: f16 %.2g bf16 %.2g q8_0 %.4f q4_K %.4f q2_K %.4f iq2_xxs %.4f\n", ef16, ebf, e8, e4, e2, eiq);
    CHECK(ef16 < 1e-3 && ebf < 4e-3 && e8 < 0.01 && e4 < 0.1 && e2 < 0.3 && eiq < 0.4, "error levels");
    CHECK(ef16 < e8 && e8 < e4 && e4 < e2, "more bits, less error");
    CHECK(rel_err(DS4_TYPE_F32, x, n, NULL, NULL) == 0.0, "f32 is exact");
    const uint32_t searched[] = {DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
    for (int t = 0; t < 3; t++) {
        double plain = rel_err(searched[t], x, n, NULL, im), steered = rel_err(searched[t], x, n, im, im);
        CHECK(steered < plain, "%s: imatrix-weighted error %.4f with imatrix, %.4f without",
              ds4_type_name(searched[t]), steered, plain);
    }

    /* awkward inputs: zeros, a constant, huge values, infinities and NaN must not crash */
    const uint32_t all[] = {DS4_TYPE_Q8_0, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS, DS4_TYPE_F16, DS4_TYPE_BF16};
    float *y = malloc(n * sizeof(float));
    uint8_t *q = malloc(n * 2);
    for (int t = 0; t < 6; t++) {
        memset(x, 0, n * sizeof(float));
        ds4_quantize_row(all[t], x, q, n, NULL);
        ds4_dequantize_row(all[t], q, y, n);
        int zeros = 1;
        for (uint64_t i = 0; i < n; i++) zeros &= y[i] == 0.0f;
        CHECK(zeros, "%s: zeros round-trip", ds4_type_name(all[t]));
        for (uint64_t i = 0; i < n; i++) x[i] = 0.25f;
        ds4_quantize_row(all[t], x, q, n, NULL);
        ds4_dequantize_row(all[t], q, y, n);
        double worst = 0.0;
        for (uint64_t i = 0; i < n; i++) worst = fmax(worst, fabs(y[i] - 0.25));
        CHECK(worst < 0.25 * 0.002, "%s: constant 0.25, worst error %g",
              ds4_type_name(all[t]), worst);
        for (uint64_t i = 0; i < n; i++) x[i] = (i % 7 == 0) ? 1e30f : (i % 11 == 0) ? -INFINITY : (i % 13 == 0) ? NAN : 1.0f;
        ds4_quantize_row(all[t], x, q, n, im);
        ds4_dequantize_row(all[t], q, y, n);
    }
    CHECK(ds4_quantize_row(DS4_TYPE_Q2_K, x, q, 100, NULL) == 0, "partial block refused");
    CHECK(ds4_quantize_row(DS4_TYPE_I32, x, q, 16, NULL) == 0, "no quantiser for I32");
    free(x);
    free(im);
    free(y);
    free(q);
}

/* The searching quantisers write the same bytes whichever dot-product ISA
 * is active (IQ2_XXS has AVX2 table and line-minimum forms that must
 * compute the same floats as the portable ones). */
static void test_quantisers_isa_independent(void) {
    qt_rng r = {29};
    const uint64_t n = 8 * 256;
    float *x = malloc(n * sizeof(float)), *im = malloc(n * sizeof(float));
    uint8_t *ref = malloc(n), *q = malloc(n);
    const uint32_t searched[] = {DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
    ds4_isa best = ds4_quant_best_isa();
    for (int kind = 0; kind < 4; kind++) {
        qt_fill_weights(&r, x, n, kind, 0.02f);
        for (uint64_t i = 0; i < n; i++) im[i] = expf(1.5f * qt_gauss(&r));
        for (int t = 0; t < 3; t++) {
            const float *w = kind & 1 ? im : NULL;
            ds4_quant_set_isa(DS4_ISA_SCALAR);
            uint64_t bytes = ds4_quantize_row(searched[t], x, ref, n, w);
            for (int isa = 1; isa <= (int)best; isa++) {
                ds4_quant_set_isa((ds4_isa)isa);
                ds4_quantize_row(searched[t], x, q, n, w);
                CHECK(memcmp(ref, q, bytes) == 0, "%s (data %d): %s output differs from scalar",
                      ds4_type_name(searched[t]), kind, ds4_isa_name((ds4_isa)isa));
            }
        }
    }
    ds4_quant_set_isa(best);
    free(x);
    free(im);
    free(ref);
    free(q);
}

int main(void) {
    test_types();
    test_f16();
    test_bf16();
    test_activation_quantisers();
    test_quantisers();
    test_quantisers_isa_independent();
    return TEST_DONE();
}
