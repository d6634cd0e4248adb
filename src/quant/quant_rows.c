/* quant_rows.c — whole-row conversions: dequantisers of every weight type,
 * the run-time activation quantisers, the Q8_0 weight quantiser and the
 * ds4_quantize_row() dispatcher.
 *
 * Each dequantiser evaluates the formula of model-spec.md §3 with the float
 * operations in the order written there, which is also ggml's order, so a
 * block dequantises to the same bits here, in ggml and in the quantisers'
 * error estimates. The activation quantisers follow the spec to the bit:
 * they decide what the dot products see at run time. */
#include <math.h>
#include <string.h>

#include "quant_internal.h"

static void dequantize_q8_0(const ds4_block_q8_0 *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, b++) {
        float d = ds4_f16_to_f32(b->d);
        for (int j = 0; j < DS4_QK8_0; j++) *y++ = d * (float)b->qs[j];
    }
}

/* Element i: half h = i/128 uses qs[32h..32h+31]; within it, shift 2s picks
 * the run of 32 values 32s..32s+31, which is sub-blocks 2s and 2s+1. */
static void dequantize_q2_K(const ds4_block_q2_K *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, b++) {
        float d = ds4_f16_to_f32(b->d), dmin = ds4_f16_to_f32(b->dmin);
        for (int h = 0; h < 2; h++) {
            const uint8_t *q = b->qs + 32 * h;
            for (int s = 0; s < 4; s++) {
                for (int half = 0; half < 2; half++) {
                    uint8_t sc = b->scales[8 * h + 2 * s + half];
                    float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
                    for (int l = 0; l < 16; l++)
                        *y++ = dl * (float)((q[16 * half + l] >> (2 * s)) & 3) - ml;
                }
            }
        }
    }
}

/* Sub-blocks 2p and 2p+1 share qs[32p..32p+31]: low nibbles, then high. */
static void dequantize_q4_K(const ds4_block_q4_K *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, b++) {
        float d = ds4_f16_to_f32(b->d), dmin = ds4_f16_to_f32(b->dmin);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            ds4_q4_K_scale_min(b->scales, j, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            const uint8_t *q = b->qs + 32 * (j / 2);
            int shift = 4 * (j & 1);
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)((q[l] >> shift) & 15) - m1;
        }
    }
}

static void dequantize_iq2_xxs(const ds4_block_iq2_xxs *b, float *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, b++) {
        float d = ds4_f16_to_f32(b->d);
        for (int sb = 0; sb < 8; sb++) {
            uint32_t A = (uint32_t)b->qs[4 * sb] | (uint32_t)b->qs[4 * sb + 1] << 16;
            uint32_t B = (uint32_t)b->qs[4 * sb + 2] | (uint32_t)b->qs[4 * sb + 3] << 16;
            float db = d * (0.5f + (float)(B >> 28)) * 0.25f;
            for (int k = 0; k < 4; k++) {
                uint64_t g = ds4_iq2xxs_grid[(A >> (8 * k)) & 255];
                uint8_t signs = ds4_iq2xxs_signs[(B >> (7 * k)) & 127];
                for (int j = 0; j < 8; j++) {
                    float v = db * (float)((g >> (8 * j)) & 255);
                    *y++ = (signs >> j) & 1 ? -v : v;
                }
            }
        }
    }
}

void ds4_dequantize_row(uint32_t type, const void *src, float *dst, uint64_t n) {
    switch (type) {
    case DS4_TYPE_F32: memcpy(dst, src, n * sizeof(float)); return;
    case DS4_TYPE_F16:
        for (uint64_t i = 0; i < n; i++) dst[i] = ds4_f16_to_f32(((const uint16_t *)src)[i]);
        return;
    case DS4_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++) dst[i] = ds4_bf16_to_f32(((const uint16_t *)src)[i]);
        return;
    case DS4_TYPE_I32:
        for (uint64_t i = 0; i < n; i++) dst[i] = (float)((const int32_t *)src)[i];
        return;
    case DS4_TYPE_Q8_0: dequantize_q8_0(src, dst, n / DS4_QK8_0); return;
    case DS4_TYPE_Q2_K: dequantize_q2_K(src, dst, n / DS4_QK_K); return;
    case DS4_TYPE_Q4_K: dequantize_q4_K(src, dst, n / DS4_QK_K); return;
    case DS4_TYPE_IQ2_XXS: dequantize_iq2_xxs(src, dst, n / DS4_QK_K); return;
    case DS4_TYPE_Q8_K: {
        const ds4_block_q8_K *b = src;
        for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++)
            for (int j = 0; j < DS4_QK_K; j++) *dst++ = b->d * (float)b->qs[j];
        return;
    }
    default: memset(dst, 0, n * sizeof(float)); return;
    }
}

/* Weight Q8_0, as ggml writes it: d = amax/127 stored as f16, codes rounded
 * half away from zero from x * (1/d) with the unrounded d. */
static void quantize_q8_0(const float *x, ds4_block_q8_0 *y, uint64_t nb) {
    for (uint64_t i = 0; i < nb; i++, y++, x += DS4_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < DS4_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y->d = ds4_f32_to_f16(d);
        for (int j = 0; j < DS4_QK8_0; j++) {
            float v = roundf(x[j] * id);
            y->qs[j] = (int8_t)(v == v ? fminf(fmaxf(v, -128.0f), 127.0f) : 0.0f);
        }
    }
}

uint64_t ds4_quantize_row(uint32_t type, const float *src, void *dst, uint64_t n,
                          const float *imatrix) {
    uint64_t bytes = ds4_type_row_bytes(type, n);
    if (!bytes) return 0;
    switch (type) {
    case DS4_TYPE_F32: memcpy(dst, src, n * sizeof(float)); break;
    case DS4_TYPE_F16:
        for (uint64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ds4_f32_to_f16(src[i]);
        break;
    case DS4_TYPE_BF16:
        for (uint64_t i = 0; i < n; i++) ((uint16_t *)dst)[i] = ds4_f32_to_bf16(src[i]);
        break;
    case DS4_TYPE_Q8_0: quantize_q8_0(src, dst, n / DS4_QK8_0); break;
    case DS4_TYPE_Q2_K: ds4_quantize_q2_K(src, dst, n, imatrix); break;
    case DS4_TYPE_Q4_K: ds4_quantize_q4_K(src, dst, n, imatrix); break;
    case DS4_TYPE_IQ2_XXS:
        if (!ds4_quantize_iq2_xxs(src, dst, n, imatrix)) return 0;
        break;
    case DS4_TYPE_Q8_K: ds4_quantize_q8_K(src, dst, n); break;
    default: return 0;
    }
    return bytes;
}

/* model-spec §3: d = amax/127 kept in f32, q = clamp(lrintf(x * (1/d))). */
void ds4_quantize_q8_0_act(const float *x, ds4_block_q8_0_act *y, uint64_t n) {
    for (uint64_t i = 0; i < n / DS4_QK8_0; i++, y++, x += DS4_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < DS4_QK8_0; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        y->d = d;
        for (int j = 0; j < DS4_QK8_0; j++) y->qs[j] = (int8_t)ds4_round_clamp(x[j] * id, -128, 127);
    }
}

/* model-spec §3: the first element of largest magnitude sets
 * iscale = -127/max; q = clamp(lrintf(iscale * x)); d = 1/iscale. */
void ds4_quantize_q8_K(const float *x, ds4_block_q8_K *y, uint64_t n) {
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, y++, x += DS4_QK_K) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < DS4_QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (amax == 0.0f) {
            memset(y, 0, sizeof *y);
            continue;
        }
        float iscale = -127.0f / max;
        for (int j = 0; j < DS4_QK_K; j++) y->qs[j] = (int8_t)ds4_round_clamp(iscale * x[j], -128, 127);
        for (int j = 0; j < DS4_QK_K / 16; j++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += y->qs[16 * j + l];
            y->bsums[j] = (int16_t)sum;
        }
        y->d = 1.0f / iscale;
    }
}
