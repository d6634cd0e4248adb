/* quant_dot_avx2.c — AVX2 (+F16C) dot-product kernels.
 *
 * Same results as the scalar kernels in quant_dot.c, bit for bit: integer
 * block sums are exact (8-bit products are widened to 16 bits before any
 * sum that could overflow; signed x signed products put the sign on the
 * operand that cannot be -128), and the float terms are computed with the
 * scalar recipe, one block at a time, in block order. The target attribute
 * keeps the rest of the build baseline x86-64; these functions are only
 * called when CPUID says AVX2 and F16C are there. */
#include <string.h>

#include "quant_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "quant_simd.h"

#define AVX2 __attribute__((target("avx2,f16c")))

/* 32 signed x signed byte products, widened to 16 bits: 8 int32 partial sums. */
AVX2 static inline __m256i q8_0_block(const int8_t *w, const int8_t *a) {
    __m256i wl = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w));
    __m256i wh = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)));
    __m256i al = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a));
    __m256i ah = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + 16)));
    return _mm256_add_epi32(_mm256_madd_epi16(wl, al), _mm256_madd_epi16(wh, ah));
}

AVX2 static float dot_q8_0(uint64_t n, const void *w, const ds4_block_q8_0_act *a) {
    const ds4_block_q8_0 *b = w;
    uint64_t nb = n / DS4_QK8_0, i = 0;
    float acc = 0.0f;
    for (; i + 8 <= nb; i += 8) {
        __m256i p[8];
        int32_t isum[8];
        for (int k = 0; k < 8; k++) p[k] = q8_0_block(b[i + k].qs, a[i + k].qs);
        hsum8_i32(p, isum);
        for (int k = 0; k < 8; k++) acc += (f16_to_f32(b[i + k].d) * a[i + k].d) * (float)isum[k];
    }
    for (; i < nb; i++) acc += (f16_to_f32(b[i].d) * a[i].d) * (float)hsum_i32(q8_0_block(b[i].qs, a[i].qs));
    return acc;
}

AVX2 static float dot_q2_K(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_q2_K *b = w;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m15 = _mm_set1_epi8(15);
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        __m128i sc8 = _mm_loadu_si128((const __m128i *)b->scales);
        __m128i scales = _mm_and_si128(sc8, m15);
        __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), m15));
        __m256i bsums = _mm256_loadu_si256((const __m256i *)a->bsums);
        int32_t summ = hsum_i32(_mm256_madd_epi16(mins, bsums));
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * h));
#pragma GCC unroll 4
            for (int s = 0; s < 4; s++) {
                int j = 8 * h + 2 * s; /* sub-blocks j (bytes 0..15) and j+1 (16..31) */
                __m256i codes = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * s), m3);
                __m256i q8 = _mm256_loadu_si256((const __m256i *)(a->qs + 128 * h + 32 * s));
                __m128i pick = _mm_set_epi64x((int64_t)(0x0101010101010101ull * (uint64_t)(j + 1)),
                                              (int64_t)(0x0101010101010101ull * (uint64_t)j));
                __m256i sc = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scales, pick));
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(_mm256_maddubs_epi16(codes, q8), sc));
            }
        }
        int32_t isum = hsum_i32(sum);
        float dall = a->d * f16_to_f32(b->d), dmin = a->d * f16_to_f32(b->dmin);
        acc += dall * (float)isum - dmin * (float)summ;
    }
    return acc;
}

AVX2 static float dot_q4_K(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_q4_K *b = w;
    const __m256i m15 = _mm256_set1_epi8(15);
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        uint8_t sc[8], m[8];
        q4_K_unpack(b->scales, sc, m);
        int32_t summ = 0;
        for (int j = 0; j < 8; j++) summ += m[j] * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
        __m256i sum = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * p));
            __m256i lo = _mm256_and_si256(bits, m15);
            __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m15);
            __m256i plo = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(a->qs + 64 * p)));
            __m256i phi = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(a->qs + 64 * p + 32)));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(plo, _mm256_set1_epi16(sc[2 * p])));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(phi, _mm256_set1_epi16(sc[2 * p + 1])));
        }
        int32_t isum = hsum_i32(sum);
        float dall = a->d * f16_to_f32(b->d), dmin = a->d * f16_to_f32(b->dmin);
        acc += dall * (float)isum - dmin * (float)summ;
    }
    return acc;
}

/* Per sub-block: signed grid values times activations (iq2_xxs_madd). */
AVX2 float ds4_dot_iq2_xxs_avx2(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_iq2_xxs *b = w;
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        __m256i sum = _mm256_setzero_si256();
        for (int sb = 0; sb < 8; sb++) {
            uint32_t aux[2];
            memcpy(aux, b->qs + 4 * sb, 8);
            uint32_t A = aux[0], B = aux[1];
            __m256i g = iq2_xxs_grid_values(A);
            __m256i sg = iq2_xxs_sign_table(g, B);
            __m256i ls = _mm256_set1_epi16((int16_t)(2 * (B >> 28) + 1));
            sum = _mm256_add_epi32(sum, iq2_xxs_madd(sg, a->qs + 32 * sb, ls));
        }
        acc += (f16_to_f32(b->d) * a->d) * (float)hsum_i32(sum);
    }
    return 0.125f * acc;
}

/* Float dots: lanes 0..7 in lo, 8..15 in hi; the tail goes to its lane. */
#define FDOT_AVX2(name, wtype, load8, conv1)                                          \
    AVX2 static float name(uint64_t n, const wtype *w, const float *x) {              \
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();                    \
        uint64_t i = 0;                                                               \
        for (; i + DS4_FDOT_LANES <= n; i += DS4_FDOT_LANES) {                        \
            lo = _mm256_add_ps(lo, _mm256_mul_ps(load8(w + i), _mm256_loadu_ps(x + i))); \
            hi = _mm256_add_ps(hi, _mm256_mul_ps(load8(w + i + 8), _mm256_loadu_ps(x + i + 8))); \
        }                                                                             \
        float acc[DS4_FDOT_LANES];                                                    \
        _mm256_storeu_ps(acc, lo);                                                    \
        _mm256_storeu_ps(acc + 8, hi);                                                \
        for (; i < n; i++) acc[i % DS4_FDOT_LANES] += conv1(w[i]) * x[i];              \
        return ds4_fdot_reduce(acc);                                                  \
    }

AVX2 static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
AVX2 static inline __m256 load8_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
AVX2 static inline __m256 load8_bf16(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}
static inline float id_f32(float v) { return v; }

FDOT_AVX2(dot_f32, float, load8_f32, id_f32)
FDOT_AVX2(dot_f16, uint16_t, load8_f16, ds4_f16_to_f32)
FDOT_AVX2(dot_bf16, uint16_t, load8_bf16, ds4_bf16_to_f32)

const ds4_dot_kernels ds4_dot_avx2_kernels = {
    dot_q8_0, dot_q2_K, dot_q4_K, ds4_dot_iq2_xxs_avx2, dot_f16, dot_bf16, dot_f32,
};

#endif /* x86 */
