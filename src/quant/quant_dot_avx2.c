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

#define AVX2 __attribute__((target("avx2,f16c")))

AVX2 static inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* 32 signed x signed byte products, widened to 16 bits: 8 int32 partial sums. */
AVX2 static inline __m256i q8_0_block(const int8_t *w, const int8_t *a) {
    __m256i wl = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w));
    __m256i wh = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + 16)));
    __m256i al = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a));
    __m256i ah = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + 16)));
    return _mm256_add_epi32(_mm256_madd_epi16(wl, al), _mm256_madd_epi16(wh, ah));
}

/* Horizontal sums of 8 vectors at once: out[k] = sum of p[k]. */
AVX2 static inline void hsum8_i32(const __m256i *p, int32_t *out) {
    __m256i t0 = _mm256_hadd_epi32(p[0], p[1]), t1 = _mm256_hadd_epi32(p[2], p[3]);
    __m256i t2 = _mm256_hadd_epi32(p[4], p[5]), t3 = _mm256_hadd_epi32(p[6], p[7]);
    __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    __m128i v0 = _mm_add_epi32(_mm256_castsi256_si128(u0), _mm256_extracti128_si256(u0, 1));
    __m128i v1 = _mm_add_epi32(_mm256_castsi256_si128(u1), _mm256_extracti128_si256(u1, 1));
    _mm_storeu_si128((__m128i *)out, v0);
    _mm_storeu_si128((__m128i *)(out + 4), v1);
}

AVX2 static inline float f16_to_f32(uint16_t h) {
    return _cvtsh_ss(h);
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

/* The 8 scales and 8 mins of a Q4_K block as bytes (model-spec §3 packing,
 * four sub-blocks per 32-bit word). */
static inline void q4_K_unpack(const uint8_t *packed, uint8_t *sc, uint8_t *m) {
    uint32_t u[3], out[4];
    memcpy(u, packed, 12);
    out[0] = u[0] & 0x3f3f3f3f;
    out[1] = (u[2] & 0x0f0f0f0f) | ((u[0] >> 6) & 0x03030303) << 4;
    out[2] = u[1] & 0x3f3f3f3f;
    out[3] = ((u[2] >> 4) & 0x0f0f0f0f) | ((u[1] >> 6) & 0x03030303) << 4;
    memcpy(sc, out, 8);
    memcpy(m, out + 2, 8);
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

/* Per sub-block: signed grid values (|g| <= 43) times activations. The sign
 * goes on the grid, and the signed x signed product is |a| * (g signed like
 * a), which is exact for every activation byte including -128. */
AVX2 float ds4_dot_iq2_xxs_avx2(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_iq2_xxs *b = w;
    const uint64_t *grid = ds4_iq2xxs_grid, *smask = ds4_iq2xxs_sign_masks;
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        __m256i sum = _mm256_setzero_si256();
        for (int sb = 0; sb < 8; sb++) {
            uint32_t aux[2];
            memcpy(aux, b->qs + 4 * sb, 8);
            uint32_t A = aux[0], B = aux[1];
            __m256i g = _mm256_set_epi64x((int64_t)grid[A >> 24], (int64_t)grid[(A >> 16) & 255],
                                          (int64_t)grid[(A >> 8) & 255], (int64_t)grid[A & 255]);
            __m256i neg = _mm256_set_epi64x((int64_t)smask[(B >> 21) & 127], (int64_t)smask[(B >> 14) & 127],
                                            (int64_t)smask[(B >> 7) & 127], (int64_t)smask[B & 127]);
            __m256i sg = _mm256_sub_epi8(_mm256_xor_si256(g, neg), neg);
            __m256i q8 = _mm256_loadu_si256((const __m256i *)(a->qs + 32 * sb));
            __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(q8), _mm256_sign_epi8(sg, q8));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, _mm256_set1_epi16((int16_t)(2 * (B >> 28) + 1))));
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
