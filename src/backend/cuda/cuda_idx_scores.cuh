/* cuda_idx_scores.cuh — the lightning indexer's scores on tensor cores, one
 * kernel for the decode step (cuda_step_ops.cuh, f16 rows) and the batched
 * prefill (cuda_prefill_ops.cuh):
 *   scores[t][c] = Σ_h max(0, q_{t,h}·k_c)·w_{t,h}   for c < visible(t).
 * Block (x, y) serves token x and the row tiles y, y + gridDim.y, ...: the
 * head dots of a tile of IX_ROWS rows on tensor cores (q split hi + lo f16,
 * rows exact f16, f32 accumulation), a warp's task 16 heads × 32 rows; the
 * ReLU and head weights applied to the accumulators, the task's 16 heads
 * summed across its lanes (a tree), the m-tiles' sums added in order. A
 * row's arithmetic does not depend on the grid. Row tiles double-buffered
 * (cp.async). Static (internal linkage): each including translation unit
 * launches its own copy. */
#ifndef DS4_CUDA_IDX_SCORES_CUH
#define DS4_CUDA_IDX_SCORES_CUH

#include <cuda_fp16.h>
#include <stdint.h>

#include "cuda_device_math.cuh"
#include "cuda_pdl.cuh"

enum { IX_ROWS = 64, IX_THREADS = 256 };

/* Dynamic shared memory of idx_scores: q hi + lo, two row tiles, the
 * m-tiles' partial sums and the head weights. */
static inline size_t idx_scores_smem(int nih, int ihd) {
    size_t mh = (size_t)(nih + 15) / 16 * 16, qs = (size_t)ihd + 8;
    return 2 * mh * qs * 2 + 2 * (size_t)IX_ROWS * qs * 2 + (mh / 16) * IX_ROWS * 4 + mh * 4;
}

/* Token t = blockIdx.x sits at position (pos_at ? *pos_at : pos_first) + t
 * (the decode step passes its step_io's pos, read after pdl_wait) and sees
 * visible = (position+1)/4 rows; nothing to do while visible <= top_k
 * (every row is attended). q, w: the token's nih·ihd query and nih weights
 * (token t's at iq + t·nih·ihd, iw + t·nih); scores row t at t·lds.
 * ihd % 16 == 0. */
static __global__ void __launch_bounds__(IX_THREADS)
    idx_scores(const float *iq, const float *iw, const __half *rows, int ihd, int nih, int pos_first,
               const int32_t *pos_at, int top_k, float *scores, size_t lds) {
    pdl_trigger();
    const int pos = pos_at ? *pos_at : pos_first; /* the decode step's step_io: the host's, read before the wait */
    pdl_wait();
    extern __shared__ __align__(16) unsigned char ix_raw[];
    const int MT = (nih + 15) / 16, MH = MT * 16, QS = ihd + 8;
    __half *qh = (__half *)ix_raw, *ql = qh + (size_t)MH * QS, *kt = ql + (size_t)MH * QS; /* kt: 2 tiles */
    float *part = (float *)(kt + 2 * (size_t)IX_ROWS * QS), *wh = part + MT * IX_ROWS;
    int t = blockIdx.x, visible = (pos + t + 1) / 4, tid = threadIdx.x;
    int warp = tid >> 5, lane = tid & 31;
    const int chunks = ihd / 8, nw = blockDim.x >> 5, n_tiles = (visible + IX_ROWS - 1) / IX_ROWS;
    if (visible <= top_k || (int)blockIdx.y >= n_tiles) return;
    auto load = [=](int c0, int b) {
        __half *dst = kt + (size_t)b * IX_ROWS * QS;
        for (int i = tid; i < IX_ROWS * chunks; i += blockDim.x) {
            int r = i / chunks, c = i % chunks;
            __half *d = dst + (size_t)r * QS + c * 8;
            if (c0 + r < visible)
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(pa_smem(d)),
                             "l"(rows + (size_t)(c0 + r) * ihd + c * 8));
            else
                *(uint4 *)d = make_uint4(0, 0, 0, 0);
        }
        asm volatile("cp.async.commit_group;");
    };
    load(blockIdx.y * IX_ROWS, 0);
    /* thread h's head weight (h < MH) loaded with q, not after q's stores
     * to shared memory */
    const float wt = tid < nih ? iw[(size_t)t * nih + tid] : 0.0f;
    const float4 *qt = (const float4 *)(iq + (size_t)t * nih * ihd);
    const int nq4 = nih * ihd / 4;
    for (int i0 = tid; i0 < MH * ihd / 4; i0 += 8 * blockDim.x) {
        float4 v4[8];
        load_batch<8>(qt, i0, blockDim.x, nq4, v4);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int i = i0 + k * blockDim.x, h = 4 * i / ihd, d = 4 * i % ihd;
            if (i >= MH * ihd / 4) break;
            float v[4] = {v4[k].x, v4[k].y, v4[k].z, v4[k].w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float x = h < nih ? v[e] : 0.0f;
                __half hi = __float2half_rn(x);
                qh[(size_t)h * QS + d + e] = hi;
                ql[(size_t)h * QS + d + e] = __float2half_rn(x - __half2float(hi));
            }
        }
    }
    if (tid < MH) wh[tid] = wt;
    for (int h = tid + blockDim.x; h < MH; h += blockDim.x) wh[h] = h < nih ? iw[(size_t)t * nih + h] : 0.0f;
    for (int it = blockIdx.y, j = 0; it < n_tiles; it += gridDim.y, j++) {
        int c0 = it * IX_ROWS;
        asm volatile("cp.async.wait_group 0;");
        __syncthreads();
        if (it + (int)gridDim.y < n_tiles) load(c0 + (int)gridDim.y * IX_ROWS, (j + 1) & 1);
        const __half *K = kt + (size_t)(j & 1) * IX_ROWS * QS;
        /* a task: 16 heads × 32 rows (4 n-tiles sharing the q fragments) */
        for (int task = warp; task < MT * (IX_ROWS / 32); task += nw) {
            int m = task / (IX_ROWS / 32), n0 = (task % (IX_ROWS / 32)) * 4;
            float c[4][4];
#pragma unroll
            for (int nn = 0; nn < 4; nn++) c[nn][0] = c[nn][1] = c[nn][2] = c[nn][3] = 0.0f;
            const __half *arow = qh + (size_t)(m * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * QS + (lane >> 4) * 8;
            const __half *brow = K + (size_t)(n0 * 8 + (lane & 7)) * QS + ((lane >> 3) & 1) * 8;
            for (int k0 = 0; k0 < ihd; k0 += 16) {
                uint32_t ah[4], al[4];
                pa_ldm_x4(ah, arow + k0);
                pa_ldm_x4(al, arow + (size_t)MH * QS + k0);
#pragma unroll
                for (int nn = 0; nn < 4; nn++) {
                    uint32_t b[2];
                    pa_ldm_x2(b, brow + (size_t)nn * 8 * QS + k0);
                    pa_mma(c[nn], ah, b);
                    pa_mma(c[nn], al, b);
                }
            }
            /* heads g and g+8 of the m-tile in this lane, then the tree over g */
            float w0 = wh[m * 16 + (lane >> 2)], w1 = wh[m * 16 + (lane >> 2) + 8];
#pragma unroll
            for (int nn = 0; nn < 4; nn++) {
                float v0 = (c[nn][0] > 0.0f ? c[nn][0] : 0.0f) * w0 + (c[nn][2] > 0.0f ? c[nn][2] : 0.0f) * w1;
                float v1 = (c[nn][1] > 0.0f ? c[nn][1] : 0.0f) * w0 + (c[nn][3] > 0.0f ? c[nn][3] : 0.0f) * w1;
                for (int o = 4; o < 32; o <<= 1) {
                    v0 += __shfl_xor_sync(0xffffffffu, v0, o);
                    v1 += __shfl_xor_sync(0xffffffffu, v1, o);
                }
                if (lane < 4) {
                    int col = (n0 + nn) * 8 + lane * 2;
                    part[m * IX_ROWS + col] = v0;
                    part[m * IX_ROWS + col + 1] = v1;
                }
            }
        }
        __syncthreads();
        for (int r = tid; r < IX_ROWS && c0 + r < visible; r += blockDim.x) {
            float score = 0.0f;
            for (int m = 0; m < MT; m++) score += part[m * IX_ROWS + r];
            scores[(size_t)t * lds + c0 + r] = score;
        }
    }
}

#endif
