/* quant_dot_avx512.c — AVX-512 (F, BW, VL, DQ) dot-product kernels.
 *
 * Same contract as quant_dot_avx2.c: bit-identical to the scalar kernels of
 * quant_dot.c. The wider registers take half a Q2_K or Q4_K block per step
 * and 16 floats per step with a masked tail. Selected at run time only
 * when CPUID reports the four AVX-512 subsets used here. */
#include <string.h>

#include "quant_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "quant_simd.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")))

AVX512 static inline int32_t hsum512_i32(__m512i v) {
    return hsum_i32(_mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)));
}

/* 16-bit lanes 0..15 = a, 16..31 = b. */
AVX512 static inline __m512i set_2x_epi16(int a, int b) {
    return _mm512_mask_mov_epi16(_mm512_set1_epi16((int16_t)a), 0xffff0000u, _mm512_set1_epi16((int16_t)b));
}

/* 32 signed x signed products widened to 16 bits, folded to 8 int32. */
AVX512 static inline __m256i q8_0_block(const int8_t *w, const int8_t *a) {
    __m512i w16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)w));
    __m512i a16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)a));
    __m512i p = _mm512_madd_epi16(w16, a16);
    return _mm256_add_epi32(_mm512_castsi512_si256(p), _mm512_extracti64x4_epi64(p, 1));
}

AVX512 static float dot_q8_0(uint64_t n, const void *w, const ds4_block_q8_0_act *a) {
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

/* 16-bit lane l of the index vector = base + l/8: the sub-block each
 * 16-bit product sum of a 64-value step belongs to. */
AVX512 static inline __m512i sub_block_index(int base, int per) {
    int16_t idx[32];
    for (int l = 0; l < 32; l++) idx[l] = (int16_t)(base + l / per);
    return _mm512_loadu_si512(idx);
}

/* A step takes 64 consecutive values: the 32 code bytes of half h, copied
 * to both register halves and shifted by 2s and 2s+2 (two runs of 32),
 * against 64 consecutive activations: sub-blocks 8h+s .. 8h+s+3. */
AVX512 static float dot_q2_K(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_q2_K *b = w;
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m128i m15 = _mm_set1_epi8(15);
    __m512i shift[2], pick[4];
    for (int s = 0; s < 2; s++) shift[s] = set_2x_epi16(4 * s, 4 * s + 2);
    for (int k = 0; k < 4; k++) pick[k] = sub_block_index(4 * k, 8);
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        __m128i sc8 = _mm_loadu_si128((const __m128i *)b->scales);
        __m512i scales = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(sc8, m15)));
        __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), m15));
        int32_t summ = hsum_i32(_mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)a->bsums)));
        __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m512i bits = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qs + 32 * h)));
#pragma GCC unroll 2
            for (int s = 0; s < 2; s++) {
                __m512i codes = _mm512_and_si512(_mm512_srlv_epi16(bits, shift[s]), m3);
                __m512i q8 = _mm512_loadu_si512(a->qs + 128 * h + 64 * s);
                __m512i sc = _mm512_permutexvar_epi16(pick[2 * h + s], scales);
                sum = _mm512_add_epi32(sum, _mm512_madd_epi16(_mm512_maddubs_epi16(codes, q8), sc));
            }
        }
        int32_t isum = hsum512_i32(sum);
        float dall = a->d * f16_to_f32(b->d), dmin = a->d * f16_to_f32(b->dmin);
        acc += dall * (float)isum - dmin * (float)summ;
    }
    return acc;
}

/* A step takes sub-blocks 2p and 2p+1: the 32 code bytes they share, in
 * both register halves, low nibbles then high, against 64 consecutive
 * activations. */
AVX512 static float dot_q4_K(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_q4_K *b = w;
    const __m512i m15 = _mm512_set1_epi8(15), shift = set_2x_epi16(0, 4);
    __m512i pick[4];
    for (int p = 0; p < 4; p++) pick[p] = sub_block_index(2 * p, 16);
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        uint8_t sc[8], m[8];
        q4_K_unpack(b->scales, sc, m);
        int32_t summ = 0;
        for (int j = 0; j < 8; j++) summ += m[j] * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
        __m512i scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)sc)));
        __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            __m512i bits = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b->qs + 32 * p)));
            __m512i codes = _mm512_and_si512(_mm512_srlv_epi16(bits, shift), m15);
            __m512i prod = _mm512_maddubs_epi16(codes, _mm512_loadu_si512(a->qs + 64 * p));
            sum = _mm512_add_epi32(sum, _mm512_madd_epi16(prod, _mm512_permutexvar_epi16(pick[p], scales)));
        }
        int32_t isum = hsum512_i32(sum);
        float dall = a->d * f16_to_f32(b->d), dmin = a->d * f16_to_f32(b->dmin);
        acc += dall * (float)isum - dmin * (float)summ;
    }
    return acc;
}

/* Float dots: one register holds the 16 partial sums; the tail is masked. */
#define FDOT_AVX512(name, wtype, load16)                                              \
    AVX512 static float name(uint64_t n, const wtype *w, const float *x) {            \
        __m512 acc = _mm512_setzero_ps();                                             \
        uint64_t i = 0;                                                               \
        for (; i + DS4_FDOT_LANES <= n; i += DS4_FDOT_LANES)                          \
            acc = _mm512_add_ps(acc, _mm512_mul_ps(load16(w + i, 0xffff), _mm512_loadu_ps(x + i))); \
        if (i < n) {                                                                  \
            __mmask16 k = (__mmask16)((1u << (n - i)) - 1);                           \
            __m512 p = _mm512_mul_ps(load16(w + i, k), _mm512_maskz_loadu_ps(k, x + i)); \
            acc = _mm512_mask_add_ps(acc, k, acc, p);                                 \
        }                                                                             \
        float lanes[DS4_FDOT_LANES];                                                  \
        _mm512_storeu_ps(lanes, acc);                                                 \
        return ds4_fdot_reduce(lanes);                                                \
    }

AVX512 static inline __m512 load16_f32(const float *p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }
AVX512 static inline __m512 load16_f16(const uint16_t *p, __mmask16 k) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p));
}
AVX512 static inline __m512 load16_bf16(const uint16_t *p, __mmask16 k) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

FDOT_AVX512(dot_f32, float, load16_f32)
FDOT_AVX512(dot_f16, uint16_t, load16_f16)
FDOT_AVX512(dot_bf16, uint16_t, load16_bf16)

/* IQ2_XXS uses the AVX2 kernel: its cost is the grid and sign table
 * lookups, which 512-bit registers do not make cheaper; k-mask signs and
 * gathers both measured slower on this machine (BENCHMARKS.md). */
const ds4_dot_kernels ds4_dot_avx512_kernels = {
    dot_q8_0, dot_q2_K, dot_q4_K, ds4_dot_iq2_xxs_avx2, dot_f16, dot_bf16, dot_f32,
};

#endif /* x86 */
