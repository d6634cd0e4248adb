/* quant_internal.h — what the quant/ files share and nobody else needs.
 *
 * The IQ2_XXS format constants, the per-ISA dot-product kernels (scalar,
 * AVX2, AVX-512) and small helpers used by the quantisers. Kernels of every
 * ISA compute bit-identical results: the integer part of a block is exact,
 * and the float part follows the one recipe written next to each scalar
 * kernel in quant_dot.c, which the SIMD files repeat with the same
 * operations in the same order. */
#ifndef DS4_QUANT_INTERNAL_H
#define DS4_QUANT_INTERNAL_H

#include "quant.h"

/* No fused multiply-add contraction anywhere in quant/: dequantisers must
 * round like ggml's, and every dot-product path like the scalar one, also
 * when the compiler may use FMA (-march=native, AVX-512 target functions). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

/* IQ2_XXS: 256 grid points of 8 magnitudes in {8, 25, 43} (byte j of the
 * little-endian u64 is element j) and the 128 sign bytes (bit j set =
 * element j negative; bit 7 is the parity of bits 0..6). */
extern const uint64_t ds4_iq2xxs_grid[256];
extern const uint8_t ds4_iq2xxs_signs[128];
/* ds4_iq2xxs_signs expanded to bytes: 0xff for a negative element, else 0. */
extern const uint64_t ds4_iq2xxs_sign_masks[128];

/* Lanes of the f32 partial sums in the float dot products (see quant_dot.c). */
#define DS4_FDOT_LANES 16

typedef struct ds4_dot_kernels {
    float (*q8_0)(uint64_t n, const void *w, const ds4_block_q8_0_act *a);
    float (*q2_K)(uint64_t n, const void *w, const ds4_block_q8_K *a);
    float (*q4_K)(uint64_t n, const void *w, const ds4_block_q8_K *a);
    float (*iq2_xxs)(uint64_t n, const void *w, const ds4_block_q8_K *a);
    float (*f16)(uint64_t n, const uint16_t *w, const float *x);
    float (*bf16)(uint64_t n, const uint16_t *w, const float *x);
    float (*f32)(uint64_t n, const float *w, const float *x);
} ds4_dot_kernels;

extern const ds4_dot_kernels ds4_dot_scalar_kernels;
extern const ds4_dot_kernels ds4_dot_avx2_kernels;
extern const ds4_dot_kernels ds4_dot_avx512_kernels;
/* Shared by the AVX2 and AVX-512 tables (needs AVX2). */
float ds4_dot_iq2_xxs_avx2(uint64_t n, const void *w, const ds4_block_q8_K *a);

/* Q4_K: the 6-bit scale and min of sub-block j (0..7) from the 12 packed bytes. */
static inline void ds4_q4_K_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Reduction of the DS4_FDOT_LANES partial sums, as a halving tree:
 * lane l += lane l+8, then l+4, l+2, l+1. */
static inline float ds4_fdot_reduce(float *acc) {
    for (int half = DS4_FDOT_LANES / 2; half >= 1; half /= 2)
        for (int l = 0; l < half; l++) acc[l] = acc[l] + acc[l + half];
    return acc[0];
}

/* Nearest integer to v (ties to even, as lrintf in the default rounding
 * mode), clamped to [lo, hi]; NaN gives 0 clamped. Never undefined. */
static inline int ds4_round_clamp(float v, int lo, int hi) {
    if (!(v == v)) v = 0.0f;
    if (v <= (float)lo) return lo;
    if (v >= (float)hi) return hi;
    /* |v| < 2^22 here, so adding 1.5*2^23 rounds to an integer, to even. */
    return (int)((v + 12582912.0f) - 12582912.0f);
}

/* Quantisers of the formats with searches (quant_kquant.c, quant_iq2.c);
 * n is a multiple of 256. The IQ2_XXS one needs a work area and returns
 * false if it cannot allocate it. */
void ds4_quantize_q2_K(const float *x, ds4_block_q2_K *y, uint64_t n, const float *imatrix);
void ds4_quantize_q4_K(const float *x, ds4_block_q4_K *y, uint64_t n, const float *imatrix);
bool ds4_quantize_iq2_xxs(const float *x, ds4_block_iq2_xxs *y, uint64_t n, const float *imatrix);

#endif
