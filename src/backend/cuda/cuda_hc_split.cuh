/* cuda_hc_split.cuh — the hyper-connection piece the decode step
 * (cuda_step_ops.cuh) and the prefill (cuda_prefill_ops.cuh) share: the
 * split of one token's mix (model-spec §5.2 steps 3-4) by one warp. (The
 * decode step's output head collapses through k_hc, the prefill's through
 * pf_out_collapse.) */
#ifndef DS4_CUDA_HC_SPLIT_CUH
#define DS4_CUDA_HC_SPLIT_CUH

#include <math.h>

#include "cuda_device_math.cuh"
#include "cuda_engine_impl.cuh"
#include "cuda_formats.cuh"

/* One token's mix: HC_N pre gates, HC_N post gates, the HC_N x HC_N
 * mixing matrix (model.h). */
enum { HC_MIX = DS4_HC_MIX };
static_assert(HC_MIX == 2 * HC_N + HC_N * HC_N, "the mix holds pre, post and the mixing matrix");

/* pre gates (when pre_out is not NULL), post gates and the Sinkhorn-
 * normalised mixing matrix from mix m: lane l (mod 16) holds C[r][c],
 * r = l/4, c = l%4; every sum reads its four terms in the CPU's order, so
 * the bits are the CPU's. */
static __device__ void hc_split_warp(const float *m, const float *scale, const float *base, int iters,
                                     float hc_eps, float *pre_out, float *post_out, float *comb_out) {
    int lane = threadIdx.x & 31, l = lane & 15, r = l >> 2, col = l & 3;
    if (pre_out && lane < HC_N) pre_out[lane] = dev_sigmoid(m[lane] * scale[0] + base[lane]) + hc_eps;
    if (lane >= HC_N && lane < 2 * HC_N) post_out[lane - HC_N] = 2.0f * dev_sigmoid(m[lane] * scale[1] + base[lane]);
    float v = m[2 * HC_N + l] * scale[2] + base[2 * HC_N + l];
    float mx = __shfl_sync(0xffffffffu, v, r * 4);
    for (int k = 1; k < HC_N; k++) mx = fmaxf(mx, __shfl_sync(0xffffffffu, v, r * 4 + k));
    v = expf(v - mx);
    float sum = 0.0f;
    for (int k = 0; k < HC_N; k++) sum += __shfl_sync(0xffffffffu, v, r * 4 + k);
    v = v / sum + hc_eps;
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
            float rs = 0.0f;
            for (int k = 0; k < HC_N; k++) rs += __shfl_sync(0xffffffffu, v, r * 4 + k);
            v /= rs + hc_eps;
        }
        float cs = 0.0f;
        for (int k = 0; k < HC_N; k++) cs += __shfl_sync(0xffffffffu, v, k * 4 + col);
        v /= cs + hc_eps;
    }
    if (lane < HC_N * HC_N) comb_out[lane] = v;
}

#endif
