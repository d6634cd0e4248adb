/* quant_testdata.h — deterministic random data for the quant tests:
 * a small PRNG, weight-like float rows (Gaussian, heavy-tailed, with
 * outliers), random f16 scales, random-but-valid blocks of every format,
 * activation rows, and a float's bits (tests compare results bit for bit). */
#ifndef DS4_QUANT_TESTDATA_H
#define DS4_QUANT_TESTDATA_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "../src/quant/quant.h"

typedef struct { uint64_t s; } qt_rng;

static inline uint64_t qt_next(qt_rng *r) { /* splitmix64 */
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline double qt_uniform(qt_rng *r) { return (double)(qt_next(r) >> 11) * 0x1p-53; }

static inline float qt_gauss(qt_rng *r) {
    double u = qt_uniform(r), v = qt_uniform(r);
    return (float)(sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v));
}

/* kind 0: Gaussian; 1: heavy-tailed (Gaussian times a log-normal scale);
 * 2: Gaussian with 1% outliers of 8x; 3: Gaussian with a per-32 scale drift. */
static inline void qt_fill_weights(qt_rng *r, float *x, uint64_t n, int kind, float scale) {
    float drift = 1.0f;
    for (uint64_t i = 0; i < n; i++) {
        float v = qt_gauss(r);
        if (kind == 1) v *= expf(0.7f * qt_gauss(r));
        if (kind == 2 && qt_uniform(r) < 0.01) v *= 8.0f;
        if (kind == 3) {
            if (i % 32 == 0) drift = expf(0.8f * qt_gauss(r));
            v = v * drift + 0.3f * drift;
        }
        x[i] = scale * v;
    }
}

/* A finite f16 with exponent field in [1, 18] (2^-14 .. 2^3, normal), random
 * sign when signed; now and then a subnormal or a zero. */
static inline uint16_t qt_f16_scale(qt_rng *r, int allow_negative) {
    uint64_t v = qt_next(r);
    uint16_t man = (uint16_t)(v & 0x3ff), exp = (uint16_t)(1 + (v >> 10) % 18);
    if ((v >> 20) % 32 == 0) exp = 0;
    if ((v >> 25) % 64 == 0) man = 0, exp = 0;
    uint16_t sign = allow_negative && ((v >> 31) & 1) ? 0x8000 : 0;
    return (uint16_t)(sign | exp << 10 | man);
}

/* Random bytes for a whole row of blocks, then valid scales where the format
 * has f16 fields (random bytes there could be NaN/inf). */
static inline void qt_fill_blocks(qt_rng *r, uint32_t type, void *dst, uint64_t nblocks, int allow_negative) {
    const ds4_type_info *ti = ds4_type_info_get(type);
    uint8_t *p = dst;
    for (uint64_t i = 0; i < nblocks * ti->block_bytes; i++) p[i] = (uint8_t)qt_next(r);
    for (uint64_t b = 0; b < nblocks; b++) {
        switch (type) {
        case DS4_TYPE_Q8_0: ((ds4_block_q8_0 *)dst)[b].d = qt_f16_scale(r, allow_negative); break;
        case DS4_TYPE_Q2_K:
            ((ds4_block_q2_K *)dst)[b].d = qt_f16_scale(r, allow_negative);
            ((ds4_block_q2_K *)dst)[b].dmin = qt_f16_scale(r, allow_negative);
            break;
        case DS4_TYPE_Q4_K:
            ((ds4_block_q4_K *)dst)[b].d = qt_f16_scale(r, allow_negative);
            ((ds4_block_q4_K *)dst)[b].dmin = qt_f16_scale(r, allow_negative);
            break;
        case DS4_TYPE_IQ2_XXS: ((ds4_block_iq2_xxs *)dst)[b].d = qt_f16_scale(r, allow_negative); break;
        default: break;
        }
    }
}

/* Random Q8_K activation blocks over the full code range -128..127, with
 * consistent bsums and a positive or negative scale. */
static inline void qt_fill_q8_K(qt_rng *r, ds4_block_q8_K *a, uint64_t nblocks) {
    for (uint64_t b = 0; b < nblocks; b++) {
        a[b].d = (float)((qt_uniform(r) - 0.5) * 0.1);
        for (int i = 0; i < DS4_QK_K; i++) a[b].qs[i] = (int8_t)(qt_next(r) & 255);
        for (int j = 0; j < 16; j++) {
            int s = 0;
            for (int i = 0; i < 16; i++) s += a[b].qs[16 * j + i];
            a[b].bsums[j] = (int16_t)s;
        }
    }
}

/* Random activation row of n values for weight type wtype: Q8_0 activation
 * blocks, Q8_K blocks (the k-quants and IQ2_XXS) or Gaussian floats. */
static inline void qt_fill_act(qt_rng *r, uint32_t wtype, void *act, uint64_t n) {
    if (wtype == DS4_TYPE_Q8_0) {
        ds4_block_q8_0_act *a = act;
        for (uint64_t b = 0; b < n / DS4_QK8_0; b++) {
            a[b].d = (float)((qt_uniform(r) - 0.5) * 0.1);
            for (int i = 0; i < DS4_QK8_0; i++) a[b].qs[i] = (int8_t)(qt_next(r) & 255);
        }
    } else if (wtype == DS4_TYPE_Q2_K || wtype == DS4_TYPE_Q4_K || wtype == DS4_TYPE_IQ2_XXS) {
        qt_fill_q8_K(r, act, n / DS4_QK_K);
    } else {
        float *x = act;
        for (uint64_t i = 0; i < n; i++) x[i] = qt_gauss(r);
    }
}

static inline uint32_t qt_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float qt_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

#endif
