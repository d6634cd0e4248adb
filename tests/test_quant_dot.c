/* test_quant_dot.c — the dot products.
 *
 *  - Every SIMD path (AVX2, AVX-512, where the CPU has them) gives exactly
 *    the scalar path's float for every format, on random blocks and
 *    activations over the full code range (including -128), with lengths
 *    that exercise the block batching and the float tails.
 *  - The scalar path equals the dot of the dequantised weights with the
 *    dequantised activations, within a float-summation bound.
 *  - With power-of-two scales all float steps are exact, so there the dot
 *    must equal the exact integer result: this pins the integer arithmetic
 *    independently of the float recipe.
 *  - ds4_dot / ds4_matvec / ds4_quantize_act agree with the typed entry points. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/quant/quant.h"
#include "quant_testdata.h"
#include "testutil.h"

static const uint32_t qtypes[] = {DS4_TYPE_Q8_0, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
static const uint32_t ftypes[] = {DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_BF16};

static double dequant_dot(uint32_t wtype, const void *w, const void *act, uint64_t n, double *mag) {
    float *wf = malloc(n * sizeof(float)), *af = malloc(n * sizeof(float));
    ds4_dequantize_row(wtype, w, wf, n);
    if (wtype == DS4_TYPE_Q8_0) {
        const ds4_block_q8_0_act *a = act;
        for (uint64_t i = 0; i < n; i++) af[i] = a[i / DS4_QK8_0].d * a[i / DS4_QK8_0].qs[i % DS4_QK8_0];
    } else {
        ds4_dequantize_row(DS4_TYPE_Q8_K, act, af, n);
    }
    double s = 0.0;
    *mag = 0.0;
    for (uint64_t i = 0; i < n; i++) {
        s += (double)wf[i] * af[i];
        *mag += fabs((double)wf[i] * af[i]);
    }
    free(wf);
    free(af);
    return s;
}

/* The K-quant min part, dmin*m_j*a_i, can cancel against the scale part:
 * its magnitude belongs in the rounding bound too. */
static double min_magnitude(uint32_t wtype, const void *w, const ds4_block_q8_K *a, uint64_t n) {
    double mag = 0.0;
    for (uint64_t b = 0; b < n / DS4_QK_K; b++) {
        for (int i = 0; i < DS4_QK_K; i++) {
            double m = 0.0;
            if (wtype == DS4_TYPE_Q2_K) {
                const ds4_block_q2_K *q = (const ds4_block_q2_K *)w + b;
                m = ds4_f16_to_f32(q->dmin) * (q->scales[i / 16] >> 4);
            } else if (wtype == DS4_TYPE_Q4_K) {
                const ds4_block_q4_K *q = (const ds4_block_q4_K *)w + b;
                int j = i / 32, mm = j < 4 ? q->scales[j + 4] & 63 : (q->scales[j + 4] >> 4) | ((q->scales[j] >> 6) << 4);
                m = ds4_f16_to_f32(q->dmin) * mm;
            }
            mag += 2.0 * fabs(m * a[b].d * a[b].qs[i]);
        }
    }
    return mag;
}

static void test_quantised(ds4_isa best) {
    qt_rng r = {11};
    static const uint64_t blocks[] = {1, 2, 3, 7, 8, 9, 16, 17, 40};
    for (size_t t = 0; t < sizeof qtypes / sizeof qtypes[0]; t++) {
        uint32_t type = qtypes[t];
        const ds4_type_info *ti = ds4_type_info_get(type);
        for (size_t s = 0; s < sizeof blocks / sizeof blocks[0]; s++) {
            uint64_t n = blocks[s] * ti->block_elems;
            if (type == DS4_TYPE_Q8_0) n *= 8; /* longer rows for the 8-block batches */
            void *w = malloc(ds4_type_row_bytes(type, n));
            void *act = malloc(ds4_act_row_bytes(type, n));
            for (int rep = 0; rep < 8; rep++) {
                qt_fill_blocks(&r, type, w, n / ti->block_elems, 1);
                qt_fill_act(&r, type, act, n);
                ds4_quant_set_isa(DS4_ISA_SCALAR);
                float ref = ds4_dot(type, n, w, act);
                for (int isa = DS4_ISA_AVX2; isa <= (int)best; isa++) {
                    ds4_quant_set_isa((ds4_isa)isa);
                    float v = ds4_dot(type, n, w, act);
                    CHECK(qt_bits(v) == qt_bits(ref), "%s n=%llu %s: %a != scalar %a", ti->name,
                          (unsigned long long)n, ds4_isa_name((ds4_isa)isa), v, ref);
                }
                double mag, exact = dequant_dot(type, w, act, n, &mag);
                if (type != DS4_TYPE_Q8_0) mag += min_magnitude(type, w, act, n);
                /* per block a few roundings, then one per addition: (blocks + 4) ulps of the magnitude, x2 */
                double tol = 0x1p-23 * mag * (double)(n / ti->block_elems + 4) + 1e-30;
                CHECK(fabs(ref - exact) <= tol, "%s n=%llu: scalar %.9g vs dequantised %.9g (tol %.3g)", ti->name,
                      (unsigned long long)n, ref, exact, tol);
            }
            free(w);
            free(act);
        }
    }
}

/* Scales 1 (f16 0x3c00) and activation scale 1 or 1/8 — every float step is
 * exact, so the result is the exact integer dot. */
static void test_exact_integers(ds4_isa best) {
    qt_rng r = {12};
    for (size_t t = 0; t < sizeof qtypes / sizeof qtypes[0]; t++) {
        uint32_t type = qtypes[t];
        const ds4_type_info *ti = ds4_type_info_get(type);
        uint64_t n = 5 * ti->block_elems * (type == DS4_TYPE_Q8_0 ? 4 : 1);
        void *w = malloc(ds4_type_row_bytes(type, n));
        void *act = malloc(ds4_act_row_bytes(type, n));
        float *wf = malloc(n * sizeof(float));
        qt_fill_blocks(&r, type, w, n / ti->block_elems, 0);
        qt_fill_act(&r, type, act, n);
        for (uint64_t b = 0; b < n / ti->block_elems; b++) {
            switch (type) {
            case DS4_TYPE_Q8_0: ((ds4_block_q8_0 *)w)[b].d = 0x3c00; ((ds4_block_q8_0_act *)act)[b].d = 1.0f; break;
            case DS4_TYPE_Q2_K: ((ds4_block_q2_K *)w)[b].d = ((ds4_block_q2_K *)w)[b].dmin = 0x3c00; break;
            case DS4_TYPE_Q4_K: ((ds4_block_q4_K *)w)[b].d = ((ds4_block_q4_K *)w)[b].dmin = 0x3c00; break;
            case DS4_TYPE_IQ2_XXS: ((ds4_block_iq2_xxs *)w)[b].d = 0x3c00; break;
            }
            if (type != DS4_TYPE_Q8_0) ((ds4_block_q8_K *)act)[b].d = 1.0f;
        }
        ds4_dequantize_row(type, w, wf, n); /* with d = 1: exact small multiples of 1/8 */
        double exact = 0.0;
        for (uint64_t i = 0; i < n; i++) {
            int q = type == DS4_TYPE_Q8_0 ? ((ds4_block_q8_0_act *)act)[i / 32].qs[i % 32]
                                          : ((ds4_block_q8_K *)act)[i / 256].qs[i % 256];
            exact += (double)wf[i] * q;
        }
        for (int isa = DS4_ISA_SCALAR; isa <= (int)best; isa++) {
            ds4_quant_set_isa((ds4_isa)isa);
            float v = ds4_dot(type, n, w, act);
            CHECK((double)v == exact, "%s %s: integer dot %.1f, exact %.1f", ti->name, ds4_isa_name((ds4_isa)isa),
                  v, exact);
        }
        free(w);
        free(act);
        free(wf);
    }
}

static void test_float(ds4_isa best) {
    qt_rng r = {13};
    for (uint64_t n = 0; n < 300; n += n < 40 ? 1 : 37) {
        float *x = malloc((n + 1) * sizeof(float)), *wf = malloc((n + 1) * sizeof(float));
        uint16_t *wh = malloc((n + 1) * sizeof(uint16_t));
        for (uint64_t i = 0; i < n; i++) {
            x[i] = qt_gauss(&r);
            wf[i] = qt_gauss(&r) * 0.1f;
        }
        for (size_t t = 0; t < sizeof ftypes / sizeof ftypes[0]; t++) {
            uint32_t type = ftypes[t];
            const void *w = wf;
            if (type != DS4_TYPE_F32) {
                ds4_quantize_row(type, wf, wh, n, NULL);
                w = wh;
            }
            ds4_quant_set_isa(DS4_ISA_SCALAR);
            float ref = ds4_dot(type, n, w, x);
            for (int isa = DS4_ISA_AVX2; isa <= (int)best; isa++) {
                ds4_quant_set_isa((ds4_isa)isa);
                float v = ds4_dot(type, n, w, x);
                CHECK(qt_bits(v) == qt_bits(ref), "%s n=%llu %s: %a != scalar %a", ds4_type_name(type),
                      (unsigned long long)n, ds4_isa_name((ds4_isa)isa), v, ref);
            }
            float *deq = malloc((n + 1) * sizeof(float));
            ds4_dequantize_row(type, w, deq, n);
            double exact = 0.0, mag = 0.0;
            for (uint64_t i = 0; i < n; i++) {
                exact += (double)deq[i] * x[i];
                mag += fabs((double)deq[i] * x[i]);
            }
            CHECK(fabs(ref - exact) <= 0x1p-23 * mag * (double)(n / 16 + 6), "%s n=%llu: %.9g vs %.9g",
                  ds4_type_name(type), (unsigned long long)n, ref, exact);
            free(deq);
        }
        free(x);
        free(wf);
        free(wh);
    }
}

static void test_generic(ds4_isa best) {
    qt_rng r = {14};
    const uint64_t n = 512, rows = 5;
    float *x = malloc(n * sizeof(float)), *wf = malloc(rows * n * sizeof(float)), y[5];
    qt_fill_weights(&r, x, n, 1, 1.0f);
    qt_fill_weights(&r, wf, rows * n, 0, 0.05f);
    const uint32_t all[] = {DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_BF16, DS4_TYPE_Q8_0,
                            DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
    ds4_quant_set_isa(best);
    for (size_t t = 0; t < sizeof all / sizeof all[0]; t++) {
        uint32_t type = all[t];
        uint64_t rb = ds4_type_row_bytes(type, n);
        uint8_t *w = malloc(rows * rb);
        void *act = malloc(ds4_act_row_bytes(type, n));
        CHECK(ds4_quantize_row(type, wf, w, rows * n, NULL) == rows * rb, "%s quantise", ds4_type_name(type));
        CHECK(ds4_quantize_act(type, x, act, n), "%s activation", ds4_type_name(type));
        ds4_matvec(type, w, rows, n, act, y);
        for (uint64_t k = 0; k < rows; k++) {
            float d;
            switch (type) {
            case DS4_TYPE_F32: d = ds4_dot_f32(n, (const float *)(w + k * rb), x); break;
            case DS4_TYPE_F16: d = ds4_dot_f16_f32(n, (const uint16_t *)(w + k * rb), x); break;
            case DS4_TYPE_BF16: d = ds4_dot_bf16_f32(n, (const uint16_t *)(w + k * rb), x); break;
            case DS4_TYPE_Q8_0: d = ds4_dot_q8_0(n, w + k * rb, act); break;
            case DS4_TYPE_Q2_K: d = ds4_dot_q2_K(n, w + k * rb, act); break;
            case DS4_TYPE_Q4_K: d = ds4_dot_q4_K(n, w + k * rb, act); break;
            default: d = ds4_dot_iq2_xxs(n, w + k * rb, act); break;
            }
            CHECK(qt_bits(d) == qt_bits(y[k]), "%s matvec row %llu", ds4_type_name(type), (unsigned long long)k);
            /* quantised end to end: close to the float dot of the original row */
            double ref = 0.0, mag = 0.0;
            for (uint64_t i = 0; i < n; i++) {
                ref += (double)wf[k * n + i] * x[i];
                mag += fabs((double)wf[k * n + i] * x[i]);
            }
            double tol = type == DS4_TYPE_IQ2_XXS || type == DS4_TYPE_Q2_K ? 0.5 : 0.1;
            CHECK(fabs(y[k] - ref) <= tol * mag, "%s row %llu: %g vs float %g", ds4_type_name(type),
                  (unsigned long long)k, y[k], ref);
        }
        free(w);
        free(act);
    }
    CHECK(ds4_act_row_bytes(DS4_TYPE_Q2_K, 100) == 0, "act bytes of a partial block");
    CHECK(!ds4_quantize_act(DS4_TYPE_I32, x, y, 16), "no activation for I32");
    free(x);
    free(wf);
}

int main(void) {
    ds4_isa best = ds4_quant_best_isa();
    printf("best ISA here: %s\n", ds4_isa_name(best));
    CHECK(ds4_quant_set_isa(DS4_ISA_SCALAR) && ds4_quant_get_isa() == DS4_ISA_SCALAR, "force scalar");
    CHECK(ds4_quant_set_isa(best) && ds4_quant_get_isa() == best, "force best");
    CHECK(!ds4_quant_set_isa((ds4_isa)7), "unknown ISA refused");
    test_quantised(best);
    test_exact_integers(best);
    test_float(best);
    test_generic(best);
    return TEST_DONE();
}
