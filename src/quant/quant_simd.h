/* quant_simd.h — x86 SIMD helpers shared by the dot-product kernels
 * (quant_dot_avx2.c, quant_dot_avx512.c, quant_dot_multi.c).
 *
 * Internal header: include it after quant_internal.h, inside the files'
 * x86-only section. Each helper carries the smallest target attribute it
 * needs (AVX2 + F16C), which is a subset of every kernel's target, so it
 * is inlined into AVX2, AVX-512, VNNI and BITALG code alike. Integer sums
 * are exact and the F16 conversion is exact, so sharing them keeps every
 * kernel's results bit for bit. */
#ifndef DS4_QUANT_SIMD_H
#define DS4_QUANT_SIMD_H

#include <stdint.h>
#include <string.h>
#include <immintrin.h>

#define DS4_SIMD_AVX2 __attribute__((target("avx2,f16c"), always_inline))

/* Horizontal sum of the 8 int32 lanes of v. */
DS4_SIMD_AVX2 static inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* Horizontal sums of 8 vectors at once: lane k = sum of the lanes of p[k]. */
DS4_SIMD_AVX2 static inline __m256i hsum8_vec(const __m256i *p) {
    __m256i t0 = _mm256_hadd_epi32(p[0], p[1]), t1 = _mm256_hadd_epi32(p[2], p[3]);
    __m256i t2 = _mm256_hadd_epi32(p[4], p[5]), t3 = _mm256_hadd_epi32(p[6], p[7]);
    __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    /* u0 = [s0..s3 low halves | s0..s3 high halves], u1 likewise for s4..s7 */
    __m256i lo = _mm256_permute2x128_si256(u0, u1, 0x20), hi = _mm256_permute2x128_si256(u0, u1, 0x31);
    return _mm256_add_epi32(lo, hi);
}

/* out[k] = sum of the lanes of p[k], k < 8. */
DS4_SIMD_AVX2 static inline void hsum8_i32(const __m256i *p, int32_t *out) {
    _mm256_storeu_si256((__m256i *)out, hsum8_vec(p));
}

/* IEEE half to float (exact). */
DS4_SIMD_AVX2 static inline float f16_to_f32(uint16_t h) {
    return _cvtsh_ss(h);
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

/* IQ2_XXS sub-block: A = its first 32-bit word (four grid indices), the
 * 32 unsigned grid values in byte order. */
DS4_SIMD_AVX2 static inline __m256i iq2_xxs_grid_values(uint32_t A) {
    const uint64_t *grid = ds4_iq2xxs_grid;
    return _mm256_set_epi64x((int64_t)grid[A >> 24], (int64_t)grid[(A >> 16) & 255],
                             (int64_t)grid[(A >> 8) & 255], (int64_t)grid[A & 255]);
}

/* The grid values g negated where the four 7-bit sign indices of B (the
 * sub-block's second word) say so, through the sign-mask table. */
DS4_SIMD_AVX2 static inline __m256i iq2_xxs_sign_table(__m256i g, uint32_t B) {
    const uint64_t *smask = ds4_iq2xxs_sign_masks;
    __m256i neg = _mm256_set_epi64x((int64_t)smask[(B >> 21) & 127], (int64_t)smask[(B >> 14) & 127],
                                    (int64_t)smask[(B >> 7) & 127], (int64_t)smask[B & 127]);
    return _mm256_sub_epi8(_mm256_xor_si256(g, neg), neg);
}

/* Signed grid values sg (|g| <= 43) times 32 activations q8, times the
 * sub-block scale ls (16-bit lanes): 8 int32 partial sums. The sign goes
 * on the grid, and the signed x signed product is |a| * (g signed like
 * a), which is exact for every activation byte including -128. */
DS4_SIMD_AVX2 static inline __m256i iq2_xxs_madd(__m256i sg, const int8_t *q8, __m256i ls) {
    __m256i a = _mm256_loadu_si256((const __m256i *)q8);
    __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(sg, a));
    return _mm256_madd_epi16(p, ls);
}

#endif
