/* cuda_pick.cuh — the decode step's greedy pick: the two most likely next
 * tokens, computed on the device at the end of the step and written
 * straight into the session's mapped pinned memory, so that greedy
 * decoding needs no copy at all instead of the 517 KB of logits (which
 * stay on the device until asked for: ds4_cuda_session_fetch_logits).
 * H200, 43 q2 layers at ctx 4096: 32 blocks of 512 threads, a logit
 * loaded at a time, and an 8-byte copy after the graph took ~16 + 7 µs.
 *
 * Order: the larger logit first, the lower index on ties; NaN and -inf
 * are never picked (-1 where fewer than two logits are above -inf). The
 * engine's ds4_argmax_except(logits, n, skip) is then the first of the
 * two that is not skip (sampler.c's definition; engine.c falls back to it
 * when neither is). PICK_BLOCKS blocks each take a contiguous slice and
 * leave their two in pick_part; the last block to count in (a ticket on
 * a counter that only grows, PICK_BLOCKS a power of two) merges them;
 * with pick_logit it also writes their logits (the MTP draft's margin). */
#ifndef DS4_CUDA_PICK_CUH
#define DS4_CUDA_PICK_CUH

#include <math.h>
#include <stdint.h>

#include "cuda_pdl.cuh"

enum { PICK_BLOCKS = 128, PICK_THREADS = 256, PICK_LOADS = 4 };
static_assert((PICK_BLOCKS & (PICK_BLOCKS - 1)) == 0, "the pick's ticket needs a power of two");
static_assert(2 * PICK_BLOCKS <= PICK_THREADS, "the last block takes a candidate a thread");

/* A candidate: logit and index; idx < 0 is none. */
struct pick_cand {
    float v;
    int idx;
};

__device__ __forceinline__ bool pick_better(pick_cand a, pick_cand b) {
    return a.idx >= 0 && (b.idx < 0 || a.v > b.v || (a.v == b.v && a.idx < b.idx));
}

/* (first, second) with c offered: the best two of the three. */
__device__ __forceinline__ void pick_offer(pick_cand &first, pick_cand &second, pick_cand c) {
    if (pick_better(c, first)) {
        second = first;
        first = c;
    } else if (pick_better(c, second)) {
        second = c;
    }
}

/* The best two of the warp's lanes' pairs, in every lane. */
__device__ __forceinline__ void pick_warp(pick_cand &first, pick_cand &second) {
    for (int o = 16; o > 0; o >>= 1) {
        pick_cand f = {__shfl_xor_sync(0xffffffffu, first.v, o), __shfl_xor_sync(0xffffffffu, first.idx, o)};
        pick_cand s = {__shfl_xor_sync(0xffffffffu, second.v, o), __shfl_xor_sync(0xffffffffu, second.idx, o)};
        pick_offer(first, second, f);
        pick_offer(first, second, s);
    }
}

/* The best two of the block's threads' pairs, in thread 0. */
__device__ __forceinline__ void pick_block(pick_cand &first, pick_cand &second) {
    __shared__ pick_cand sh[PICK_THREADS / 32][2];
    const int lane = threadIdx.x & 31, wp = threadIdx.x >> 5;
    pick_warp(first, second);
    if (lane == 0) sh[wp][0] = first, sh[wp][1] = second;
    __syncthreads();
    if (wp == 0) {
        first = second = pick_cand{0.0f, -1};
        if (lane < (int)(blockDim.x >> 5)) first = sh[lane][0], second = sh[lane][1];
        pick_warp(first, second);
    }
}

__global__ void __launch_bounds__(PICK_THREADS) k_pick2(const float *logits, int n, pick_cand *part, unsigned *count,
                                                        int32_t *pick, float *pick_logit) {
    pdl_trigger();
    pdl_wait();
    __shared__ bool last;
    const int per = (n + PICK_BLOCKS - 1) / PICK_BLOCKS, lo = blockIdx.x * per, hi = lo + per < n ? lo + per : n;
    pick_cand first = {0.0f, -1}, second = {0.0f, -1};
    /* PICK_LOADS logits a thread in flight together, offered in index order */
    for (int i0 = lo + threadIdx.x; i0 < hi; i0 += PICK_LOADS * blockDim.x) {
        float v[PICK_LOADS];
#pragma unroll
        for (int k = 0; k < PICK_LOADS; k++) {
            const int i = i0 + k * blockDim.x;
            v[k] = i < hi ? logits[i] : -INFINITY;
        }
#pragma unroll
        for (int k = 0; k < PICK_LOADS; k++)
            if (v[k] > -INFINITY) pick_offer(first, second, pick_cand{v[k], i0 + k * (int)blockDim.x}); /* false for NaN */
    }
    pick_block(first, second);
    if (threadIdx.x == 0) {
        part[2 * blockIdx.x] = first;
        part[2 * blockIdx.x + 1] = second;
        __threadfence();
        last = atomicAdd(count, 1u) % PICK_BLOCKS == PICK_BLOCKS - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    first = second = pick_cand{0.0f, -1};
    if (threadIdx.x < 2 * PICK_BLOCKS) {
        const pick_cand *p = part + threadIdx.x;
        first = pick_cand{__ldcg(&p->v), __ldcg(&p->idx)};
    }
    pick_block(first, second);
    if (threadIdx.x == 0) pick[0] = first.idx, pick[1] = second.idx;
    if (threadIdx.x == 0 && pick_logit) pick_logit[0] = first.v, pick_logit[1] = second.v;
}

#endif
