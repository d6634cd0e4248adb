/* cuda_exact.cuh — the products of the decode step in exact mode
 * (cuda_engine.h): every weight type dequantised on the fly and multiplied
 * with the f32 activation, no activation quantisation, as the CPU engine's
 * exact numerics do (model-spec §4). One warp per output row, each lane
 * dequantising every 32nd element of the row (src/quant/quant_rows.c's
 * formulas, so each weight value has the CPU's bits), partial sums in f32
 * added by a warp tree. Written for checking, not for speed: the weights are
 * read once per product at a fraction of the official kernels' bandwidth.
 *
 * Kernels: a matrix by a vector (k_exact_matvec), and the MoE expert
 * products (k_exact_gate_up with SwiGLU, k_exact_down summing the selected
 * experts in order), the plain-float MoE kernels of cuda_step_ops.cuh
 * generalised to every weight type. The IQ2_XXS grid and sign tables live
 * in constant memory, copied from src/quant by ds4_cuda_exact_init.
 * Included once, by cuda_engine.cu (after cuda_step_ops.cuh). */
#ifndef DS4_CUDA_EXACT_CUH
#define DS4_CUDA_EXACT_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda_pdl.cuh"

extern "C" {
#include "../../quant/quant.h"
extern const uint64_t ds4_iq2xxs_grid[256];
extern const uint8_t ds4_iq2xxs_signs[128];
}

__constant__ uint64_t exact_iq2_grid[256];
__constant__ uint8_t exact_iq2_signs[128];

/* Copies the IQ2_XXS tables to the device (once per process is enough). */
static int ds4_cuda_exact_init(ds4_err *err) {
    cudaError_t c = cudaMemcpyToSymbol(exact_iq2_grid, ds4_iq2xxs_grid, sizeof exact_iq2_grid);
    if (c == cudaSuccess) c = cudaMemcpyToSymbol(exact_iq2_signs, ds4_iq2xxs_signs, sizeof exact_iq2_signs);
    return c == cudaSuccess ? 0 : ds4_fail(err, "cuda: exact-mode tables: %s", cudaGetErrorString(c));
}

__device__ __forceinline__ float exact_f16(const uint8_t *p) { return __half2float(*(const __half *)p); }

/* Element i of a row of `type` (quant_rows.c ds4_dequantize_row). */
__device__ float exact_weight(const uint8_t *row, uint32_t type, uint32_t i) {
    switch (type) {
    case DS4_TYPE_F32: return ((const float *)row)[i];
    case DS4_TYPE_F16: return __half2float(((const __half *)row)[i]);
    case DS4_TYPE_Q8_0: { /* 34 B: d, 32 codes */
        const uint8_t *b = row + (size_t)(i / 32) * 34;
        return exact_f16(b) * (float)(int8_t)b[2 + i % 32];
    }
    case DS4_TYPE_Q2_K: { /* 84 B: scales[16], qs[64], d, dmin */
        const uint8_t *b = row + (size_t)(i / 256) * 84;
        uint32_t e = i % 256, h = e / 128, s = e % 128 / 32, half = e % 32 / 16, l = e % 16;
        uint8_t sc = b[8 * h + 2 * s + half];
        float d = exact_f16(b + 80), dmin = exact_f16(b + 82);
        float dl = d * (float)(sc & 15), ml = dmin * (float)(sc >> 4);
        return dl * (float)((b[16 + 32 * h + 16 * half + l] >> (2 * s)) & 3) - ml;
    }
    case DS4_TYPE_Q4_K: { /* 144 B: d, dmin, scales[12], qs[128] */
        const uint8_t *b = row + (size_t)(i / 256) * 144, *s = b + 4;
        uint32_t e = i % 256, j = e / 32, l = e % 32;
        int sc, m; /* quant_internal.h ds4_q4_K_scale_min */
        if (j < 4) {
            sc = s[j] & 63;
            m = s[j + 4] & 63;
        } else {
            sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
            m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
        float d1 = exact_f16(b) * (float)sc, m1 = exact_f16(b + 2) * (float)m;
        return d1 * (float)((b[16 + 32 * (j / 2) + l] >> (4 * (j & 1))) & 15) - m1;
    }
    case DS4_TYPE_IQ2_XXS: { /* 66 B: d, qs[32] (uint16) */
        const uint8_t *b = row + (size_t)(i / 256) * 66;
        const uint16_t *qs = (const uint16_t *)(b + 2);
        uint32_t e = i % 256, sb = e / 32, k = e % 32 / 8, j = e % 8;
        uint32_t A = (uint32_t)qs[4 * sb] | (uint32_t)qs[4 * sb + 1] << 16;
        uint32_t B = (uint32_t)qs[4 * sb + 2] | (uint32_t)qs[4 * sb + 3] << 16;
        float db = exact_f16(b) * (0.5f + (float)(B >> 28)) * 0.25f;
        float v = db * (float)((exact_iq2_grid[(A >> (8 * k)) & 255] >> (8 * j)) & 255);
        return (exact_iq2_signs[(B >> (7 * k)) & 127] >> j) & 1 ? -v : v;
    }
    default: return __int_as_float(0x7fc00000); /* check_model admits no other type */
    }
}

/* Σ row·x over n_in elements, the warp's lanes each every 32nd, then a warp tree. */
__device__ float exact_dot(const uint8_t *row, uint32_t type, uint32_t n_in, const float *x, int lane) {
    float d = 0.0f;
    for (uint32_t i = lane; i < n_in; i += 32) d += exact_weight(row, type, i) * x[i];
    for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
    return d;
}

/* y[r] = row r of w · x, one warp per row. */
__global__ void k_exact_matvec(const uint8_t *w, uint32_t type, uint64_t row_bytes, uint32_t n_rows, uint32_t n_in,
                               const float *x, float *y) {
    pdl_trigger();
    pdl_wait();
    uint32_t r = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (r >= n_rows) return;
    float d = exact_dot(w + r * row_bytes, type, n_in, x, lane);
    if (lane == 0) y[r] = d;
}

/* mid[k][r] = silu(min(g, c))·clamp(u, ±c)·w[k] of selected expert k's
 * row r (moe.c swiglu_row; as k_moe_plain_gate_up). */
__global__ void k_exact_gate_up(const uint8_t *gate, const uint8_t *up, uint32_t type, uint64_t row_bytes,
                                uint32_t n_in, uint32_t n_ff, uint32_t n_expert, const int32_t *ids,
                                const float *weights, uint32_t n_sel, float clamp, const float *x, float *mid) {
    pdl_trigger();
    pdl_wait();
    uint32_t item = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (item >= n_sel * n_ff) return;
    uint32_t k = item / n_ff, r = item % n_ff, e = (uint32_t)ids[k];
    float v = 0.0f;
    if (e < n_expert) {
        uint64_t off = ((uint64_t)e * n_ff + r) * row_bytes;
        float g = exact_dot(gate + off, type, n_in, x, lane), u = exact_dot(up + off, type, n_in, x, lane);
        v = ds4_swiglu(g, u, clamp, weights[k]);
    }
    if (lane == 0) mid[item] = v;
}

/* out[o] = Σ_k in order down_{ids[k]}[o]·mid[k] (+ add[o]). */
__global__ void k_exact_down(const uint8_t *down, uint32_t type, uint64_t row_bytes, uint32_t n_ff, uint32_t n_out,
                             uint32_t n_expert, const int32_t *ids, uint32_t n_sel, const float *mid, const float *add,
                             float *out) {
    pdl_trigger();
    pdl_wait();
    uint32_t o = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (o >= n_out) return;
    float acc = 0.0f;
    for (uint32_t k = 0; k < n_sel; k++) {
        uint32_t e = (uint32_t)ids[k];
        if (e < n_expert)
            acc += exact_dot(down + ((uint64_t)e * n_out + o) * row_bytes, type, n_ff, mid + (size_t)k * n_ff, lane);
    }
    if (lane == 0) out[o] = add ? acc + add[o] : acc;
}

#endif
