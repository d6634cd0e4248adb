/* quant_dot_avx512.c — AVX-512 (F, BW, VL, DQ) dot-product kernels.
 *
 * Same contract as quant_dot_avx2.c: bit-identical to the scalar kernels of
 * quant_dot.c. The wider registers take half a Q2_K or Q4_K block per step
 * and 16 floats per step with a masked tail. Selected at run time only
 * when CPUID reports the four AVX-512 subsets used here. */
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>
#include <string.h>

#include "quant_internal.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")))

AVX512 static inline int32_t hsum256_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

AVX512 static inline int32_t hsum512_i32(__m512i v) {
    return hsum256_i32(_mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1)));
}

/* Two 256-bit loads side by side in one register. */
AVX512 static inline __m512i load_2x256(const void *lo, const void *hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)lo)),
                              _mm256_loadu_si256((const __m256i *)hi), 1);
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

AVX512 static inline void hsum8_i32(const __m256i *p, int32_t *out) {
    __m256i t0 = _mm256_hadd_epi32(p[0], p[1]), t1 = _mm256_hadd_epi32(p[2], p[3]);
    __m256i t2 = _mm256_hadd_epi32(p[4], p[5]), t3 = _mm256_hadd_epi32(p[6], p[7]);
    __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    __m128i v0 = _mm_add_epi32(_mm256_castsi256_si128(u0), _mm256_extracti128_si256(u0, 1));
    __m128i v1 = _mm_add_epi32(_mm256_castsi256_si128(u1), _mm256_extracti128_si256(u1, 1));
    _mm_storeu_si128((__m128i *)out, v0);
    _mm_storeu_si128((__m128i *)(out + 4), v1);
}

AVX512 static inline float f16_to_f32(uint16_t h) {
    return _cvtsh_ss(h);
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
    for (; i < nb; i++) acc += (f16_to_f32(b[i].d) * a[i].d) * (float)hsum256_i32(q8_0_block(b[i].qs, a[i].qs));
    return acc;
}

/* Shift s of the 64 code bytes gives elements 32s.. (bytes 0..31) and
 * 128+32s.. (bytes 32..63): sub-blocks 2s, 2s+1, 8+2s, 9+2s, 16 each. */
AVX512 static float dot_q2_K(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_q2_K *b = w;
    const __m512i m3 = _mm512_set1_epi8(3);
    const __m128i m15 = _mm_set1_epi8(15);
    __m512i pick[4]; /* 16-bit lane -> sub-block index, per shift */
    for (int s = 0; s < 4; s++) {
        pick[s] = _mm512_mask_mov_epi16(_mm512_set1_epi16((int16_t)(2 * s)), 0xffffff00u,
                                        _mm512_set1_epi16((int16_t)(2 * s + 1)));
        pick[s] = _mm512_mask_mov_epi16(pick[s], 0xffff0000u, _mm512_set1_epi16((int16_t)(8 + 2 * s)));
        pick[s] = _mm512_mask_mov_epi16(pick[s], 0xff000000u, _mm512_set1_epi16((int16_t)(9 + 2 * s)));
    }
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        __m128i sc8 = _mm_loadu_si128((const __m128i *)b->scales);
        __m512i scales = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(sc8, m15)));
        __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), m15));
        int32_t summ = hsum256_i32(_mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)a->bsums)));
        __m512i bits = _mm512_loadu_si512(b->qs);
        __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int s = 0; s < 4; s++) {
            __m512i codes = _mm512_and_si512(_mm512_srli_epi16(bits, 2 * s), m3);
            __m512i q8 = load_2x256(a->qs + 32 * s, a->qs + 128 + 32 * s);
            __m512i sc = _mm512_permutexvar_epi16(pick[s], scales);
            sum = _mm512_add_epi32(sum, _mm512_madd_epi16(_mm512_maddubs_epi16(codes, q8), sc));
        }
        int32_t isum = hsum512_i32(sum);
        float dall = a->d * f16_to_f32(b->d), dmin = a->d * f16_to_f32(b->dmin);
        acc += dall * (float)isum - dmin * (float)summ;
    }
    return acc;
}

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

/* 64 code bytes hold sub-blocks 4h..4h+3: low nibbles of bytes 0..31 and
 * 32..63 are sub-blocks 4h and 4h+2, high nibbles 4h+1 and 4h+3. */
AVX512 static float dot_q4_K(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_q4_K *b = w;
    const __m512i m15 = _mm512_set1_epi8(15);
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        uint8_t sc[8], m[8];
        q4_K_unpack(b->scales, sc, m);
        int32_t summ = 0;
        for (int j = 0; j < 8; j++) summ += m[j] * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
        __m512i sum = _mm512_setzero_si512();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            const int8_t *q8 = a->qs + 128 * h;
            __m512i bits = _mm512_loadu_si512(b->qs + 64 * h);
            __m512i lo = _mm512_and_si512(bits, m15);
            __m512i hi = _mm512_and_si512(_mm512_srli_epi16(bits, 4), m15);
            __m512i plo = _mm512_maddubs_epi16(lo, load_2x256(q8, q8 + 64));
            __m512i phi = _mm512_maddubs_epi16(hi, load_2x256(q8 + 32, q8 + 96));
            sum = _mm512_add_epi32(sum, _mm512_madd_epi16(plo, set_2x_epi16(sc[4 * h], sc[4 * h + 2])));
            sum = _mm512_add_epi32(sum, _mm512_madd_epi16(phi, set_2x_epi16(sc[4 * h + 1], sc[4 * h + 3])));
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
