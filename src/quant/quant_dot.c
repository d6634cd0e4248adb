/* quant_dot.c — the scalar dot-product kernels (the reference), run-time
 * ISA selection, and the type-generic entry points (ds4_dot, ds4_matvec).
 *
 * What every path computes, bit for bit:
 *  - Quantised weights: per block an exact integer sum (model-spec §3), then
 *    one f32 term per block computed as written in each kernel below, and
 *    the terms added into one f32 accumulator in block order.
 *  - Float weights (f32/f16/bf16 with f32 activations): element i adds the
 *    rounded product w_i*x_i (no fused multiply-add) into partial sum
 *    i % 16; the 16 partial sums are reduced as a halving tree
 *    (ds4_fdot_reduce). That is one AVX-512 register or two AVX2 ones.
 * The SIMD files repeat these float operations exactly, so results do not
 * depend on the CPU; the tests check equality. Contraction of a*b+c into
 * an FMA would break this (quant_internal.h turns it off). */
#include <string.h>

#include "quant_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

static float dot_q8_0(uint64_t n, const void *w, const ds4_block_q8_0_act *a) {
    const ds4_block_q8_0 *b = w;
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK8_0; i++) {
        int32_t isum = 0;
        for (int j = 0; j < DS4_QK8_0; j++) isum += b[i].qs[j] * a[i].qs[j];
        acc += (ds4_f16_to_f32(b[i].d) * a[i].d) * (float)isum;
    }
    return acc;
}

/* isum = sum_j sc_j * (codes . q8 of sub-block j), summ = sum_j m_j * bsums_j;
 * term = (a.d*d)*isum - (a.d*dmin)*summ. */
static float dot_q2_K(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_q2_K *b = w;
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        int32_t isum = 0, summ = 0;
        for (int j = 0; j < 16; j++) {
            const uint8_t *q = b->qs + 32 * (j / 8) + 16 * (j & 1);
            int shift = 2 * ((j / 2) & 3);
            int32_t s = 0;
            for (int l = 0; l < 16; l++) s += ((q[l] >> shift) & 3) * a->qs[16 * j + l];
            isum += (b->scales[j] & 15) * s;
            summ += (b->scales[j] >> 4) * a->bsums[j];
        }
        float dall = a->d * ds4_f16_to_f32(b->d), dmin = a->d * ds4_f16_to_f32(b->dmin);
        acc += dall * (float)isum - dmin * (float)summ;
    }
    return acc;
}

static float dot_q4_K(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_q4_K *b = w;
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        int32_t isum = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            ds4_q4_K_scale_min(b->scales, j, &sc, &m);
            const uint8_t *q = b->qs + 32 * (j / 2);
            int shift = 4 * (j & 1);
            int32_t s = 0;
            for (int l = 0; l < 32; l++) s += ((q[l] >> shift) & 15) * a->qs[32 * j + l];
            isum += sc * s;
            summ += m * (a->bsums[2 * j] + a->bsums[2 * j + 1]);
        }
        float dall = a->d * ds4_f16_to_f32(b->d), dmin = a->d * ds4_f16_to_f32(b->dmin);
        acc += dall * (float)isum - dmin * (float)summ;
    }
    return acc;
}

/* isum = sum_sb (2*ls+1) * (signed grid . q8); term = (d*a.d)*isum; the sum
 * of the terms is scaled by 1/8 once at the end (model-spec §3). */
static float dot_iq2_xxs(uint64_t n, const void *w, const ds4_block_q8_K *a) {
    const ds4_block_iq2_xxs *b = w;
    float acc = 0.0f;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++, a++) {
        int32_t isum = 0;
        const int8_t *q8 = a->qs;
        for (int sb = 0; sb < 8; sb++) {
            uint32_t A = (uint32_t)b->qs[4 * sb] | (uint32_t)b->qs[4 * sb + 1] << 16;
            uint32_t B = (uint32_t)b->qs[4 * sb + 2] | (uint32_t)b->qs[4 * sb + 3] << 16;
            int32_t s = 0;
            for (int k = 0; k < 4; k++, q8 += 8) {
                uint64_t g = ds4_iq2xxs_grid[(A >> (8 * k)) & 255];
                uint8_t signs = ds4_iq2xxs_signs[(B >> (7 * k)) & 127];
                for (int j = 0; j < 8; j++) {
                    int v = (int)((g >> (8 * j)) & 255) * q8[j];
                    s += (signs >> j) & 1 ? -v : v;
                }
            }
            isum += (int32_t)(2 * (B >> 28) + 1) * s;
        }
        acc += (ds4_f16_to_f32(b->d) * a->d) * (float)isum;
    }
    return 0.125f * acc;
}

static float dot_f32(uint64_t n, const float *w, const float *x) {
    float acc[DS4_FDOT_LANES] = {0};
    for (uint64_t i = 0; i < n; i++) acc[i % DS4_FDOT_LANES] += w[i] * x[i];
    return ds4_fdot_reduce(acc);
}

static float dot_f16(uint64_t n, const uint16_t *w, const float *x) {
    float acc[DS4_FDOT_LANES] = {0};
    for (uint64_t i = 0; i < n; i++) acc[i % DS4_FDOT_LANES] += ds4_f16_to_f32(w[i]) * x[i];
    return ds4_fdot_reduce(acc);
}

static float dot_bf16(uint64_t n, const uint16_t *w, const float *x) {
    float acc[DS4_FDOT_LANES] = {0};
    for (uint64_t i = 0; i < n; i++) acc[i % DS4_FDOT_LANES] += ds4_bf16_to_f32(w[i]) * x[i];
    return ds4_fdot_reduce(acc);
}

const ds4_dot_kernels ds4_dot_scalar_kernels = {
    dot_q8_0, dot_q2_K, dot_q4_K, dot_iq2_xxs, dot_f16, dot_bf16, dot_f32,
};

/* ---- ISA selection: one process-wide choice, made once (or forced). ---- */

#if defined(__x86_64__) || defined(__i386__)
static const ds4_dot_kernels *const kernels_by_isa[] = {
    &ds4_dot_scalar_kernels, &ds4_dot_avx2_kernels, &ds4_dot_avx512_kernels,
};
#else /* other CPUs: the scalar kernels only */
static const ds4_dot_kernels *const kernels_by_isa[] = {
    &ds4_dot_scalar_kernels, &ds4_dot_scalar_kernels, &ds4_dot_scalar_kernels,
};
#endif
/* The one mutable global of quant/: the cached CPU check, which tests and the
 * benchmark may override. Results do not depend on it, only speed. Read and
 * written atomically; -1 until first use. */
static int active_isa = -1;

ds4_isa ds4_quant_best_isa(void) {
#if defined(__x86_64__) || defined(__i386__)
    unsigned eax, ebx, ecx, edx;
    bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C);
    __builtin_cpu_init();
    if (!f16c || !__builtin_cpu_supports("avx2")) return DS4_ISA_SCALAR;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return DS4_ISA_AVX512;
    return DS4_ISA_AVX2;
#else
    return DS4_ISA_SCALAR;
#endif
}

bool ds4_quant_set_isa(ds4_isa isa) {
    if ((int)isa < 0 || isa > ds4_quant_best_isa()) return false;
    __atomic_store_n(&active_isa, (int)isa, __ATOMIC_RELEASE);
    return true;
}

ds4_isa ds4_quant_get_isa(void) {
    int isa = __atomic_load_n(&active_isa, __ATOMIC_ACQUIRE);
    if (isa < 0) {
        isa = (int)ds4_quant_best_isa();
        __atomic_store_n(&active_isa, isa, __ATOMIC_RELEASE);
    }
    return (ds4_isa)isa;
}

const char *ds4_isa_name(ds4_isa isa) {
    switch (isa) {
    case DS4_ISA_SCALAR: return "scalar";
    case DS4_ISA_AVX2: return "avx2";
    case DS4_ISA_AVX512: return "avx512";
    }
    return "?";
}

static const ds4_dot_kernels *kernels(void) {
    return kernels_by_isa[ds4_quant_get_isa()];
}

float ds4_dot_q8_0(uint64_t n, const void *w, const ds4_block_q8_0_act *a) { return kernels()->q8_0(n, w, a); }
float ds4_dot_q2_K(uint64_t n, const void *w, const ds4_block_q8_K *a) { return kernels()->q2_K(n, w, a); }
float ds4_dot_q4_K(uint64_t n, const void *w, const ds4_block_q8_K *a) { return kernels()->q4_K(n, w, a); }
float ds4_dot_iq2_xxs(uint64_t n, const void *w, const ds4_block_q8_K *a) { return kernels()->iq2_xxs(n, w, a); }
float ds4_dot_f16_f32(uint64_t n, const uint16_t *w, const float *x) { return kernels()->f16(n, w, x); }
float ds4_dot_bf16_f32(uint64_t n, const uint16_t *w, const float *x) { return kernels()->bf16(n, w, x); }
float ds4_dot_f32(uint64_t n, const float *w, const float *x) { return kernels()->f32(n, w, x); }

/* ---- Type-generic helpers for the forward pass. ---- */

uint64_t ds4_act_row_bytes(uint32_t wtype, uint64_t n) {
    switch (wtype) {
    case DS4_TYPE_F32: case DS4_TYPE_F16: case DS4_TYPE_BF16: return n * sizeof(float);
    case DS4_TYPE_Q8_0: return n % DS4_QK8_0 ? 0 : n / DS4_QK8_0 * sizeof(ds4_block_q8_0_act);
    case DS4_TYPE_Q2_K: case DS4_TYPE_Q4_K: case DS4_TYPE_IQ2_XXS:
        return n % DS4_QK_K ? 0 : n / DS4_QK_K * sizeof(ds4_block_q8_K);
    default: return 0;
    }
}

bool ds4_quantize_act(uint32_t wtype, const float *x, void *act, uint64_t n) {
    if (!ds4_act_row_bytes(wtype, n)) return false;
    switch (wtype) {
    case DS4_TYPE_Q8_0: ds4_quantize_q8_0_act(x, act, n); break;
    case DS4_TYPE_Q2_K: case DS4_TYPE_Q4_K: case DS4_TYPE_IQ2_XXS: ds4_quantize_q8_K(x, act, n); break;
    default: memcpy(act, x, n * sizeof(float)); break;
    }
    return true;
}

static float dot_with(const ds4_dot_kernels *k, uint32_t wtype, uint64_t n, const void *w, const void *act) {
    switch (wtype) {
    case DS4_TYPE_F32: return k->f32(n, w, act);
    case DS4_TYPE_F16: return k->f16(n, w, act);
    case DS4_TYPE_BF16: return k->bf16(n, w, act);
    case DS4_TYPE_Q8_0: return k->q8_0(n, w, act);
    case DS4_TYPE_Q2_K: return k->q2_K(n, w, act);
    case DS4_TYPE_Q4_K: return k->q4_K(n, w, act);
    case DS4_TYPE_IQ2_XXS: return k->iq2_xxs(n, w, act);
    default: return 0.0f;
    }
}

float ds4_dot(uint32_t wtype, uint64_t n, const void *w, const void *act) {
    return dot_with(kernels(), wtype, n, w, act);
}

void ds4_matvec(uint32_t wtype, const void *w, uint64_t n_rows, uint64_t n_in, const void *act, float *y) {
    const ds4_dot_kernels *k = kernels();
    uint64_t row_bytes = ds4_type_row_bytes(wtype, n_in);
    for (uint64_t r = 0; r < n_rows; r++) y[r] = dot_with(k, wtype, n_in, (const uint8_t *)w + r * row_bytes, act);
}
