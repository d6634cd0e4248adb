/* cuda_topk_grid.cuh — the indexer's top-k over the whole machine, for the
 * decode step at long context (cuda_engine.cu adds it to the step when a
 * ratio-4 layer can see more than TOPK_GRID_MIN rows, and it runs at the
 * positions where it does; up to that the one-block block_topk_ascending
 * of k_idx_topk, from registers, is faster). Same selection as the
 * one-block version: the top_k largest scores by score_key order, ties to
 * the lower index, written as ascending row indices; n_sel = -1 while every
 * visible row is attended.
 *
 * The radix select is split into launches: four digit passes
 * (k_topk_grid_pass, shift 24, 16, 8, 0), then k_topk_grid_count and
 * k_topk_grid_write. Every warp of the grid owns a contiguous segment of
 * the rows (as the warps of one block do in block_topk_ascending). A pass:
 * each warp counts its keys under the prefix found so far into its own
 * histogram, each block adds its warps' bins into the state's global
 * histogram, and the last block to finish (a counter it resets) finds the
 * digit of the k-th key (warp_find_digit) and clears the histogram for the
 * next pass. The count launch stores each warp's keys above the k-th and
 * its ties; its last block turns them, in warp order, into each warp's
 * first output slot and tie rank. The write launch writes the picks.
 * The position comes from step_io (the graph is captured once). */
#ifndef DS4_CUDA_TOPK_GRID_CUH
#define DS4_CUDA_TOPK_GRID_CUH

#include <stdint.h>

#include "cuda_device_math.cuh"
#include "cuda_pdl.cuh"

/* TOPK_GRID_MIN: the rows k_idx_topk's 1024 threads hold in registers. */
enum { TOPK_GRID_THREADS = 256, TOPK_GRID_WARPS = TOPK_GRID_THREADS / 32, TOPK_GRID_MIN = TOPK_REG_SLOTS * 1024 };

/* Device state of the grid top-k (zeroed once; every launch leaves it
 * ready for the next step). */
struct topk_grid_state {
    uint32_t t, mask;  /* the k-th key's bits found so far */
    int need;          /* how many keys equal to t under mask to take */
    unsigned count;    /* blocks of the current launch done (the last resets it) */
    int hist[256];     /* the current pass's digit counts */
};

/* Blocks of the grid top-k for at most max_visible rows: about 2048 rows a
 * block (one batch of keys a lane), at most one block an SM. */
static inline int topk_grid_blocks(int n_sm, uint32_t max_visible) {
    int g = (int)((max_visible + 2047) / 2048);
    return g < 1 ? 1 : g > n_sm ? n_sm : g;
}

/* Warp gw's rows [*lo, *hi) of visible: segments of a multiple of 32. */
__device__ __forceinline__ void topk_grid_segment(int visible, int *lo, int *hi) {
    const int nw = gridDim.x * TOPK_GRID_WARPS, gw = blockIdx.x * TOPK_GRID_WARPS + (threadIdx.x >> 5);
    const int seg = ((visible + nw - 1) / nw + 31) & ~31;
    *lo = gw * seg < visible ? gw * seg : visible;
    *hi = *lo + seg < visible ? *lo + seg : visible;
}

/* True in the last block of the launch to get here (every block calls it
 * once, after its global writes); that block resets the counter. */
__device__ __forceinline__ bool topk_grid_last(unsigned *count, int *last_s) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) *last_s = atomicAdd(count, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!*last_s) return false;
    __threadfence();
    if (threadIdx.x == 0) *count = 0;
    return true;
}

/* One digit pass (shift 24 first: starts from an empty prefix). */
__global__ void __launch_bounds__(TOPK_GRID_THREADS) k_topk_grid_pass(const float *scores, int top_k, int min_rows,
                                                                      int shift, topk_grid_state *st,
                                                                      const step_io *io) {
    pdl_trigger();
    pdl_wait();
    __shared__ int h[TOPK_GRID_WARPS][256];
    __shared__ int tot[256];
    __shared__ int last;
    const int visible = (io->pos + 1) / 4;
    if (visible <= top_k || visible <= min_rows) return;
    const bool first = shift == 24;
    const uint32_t t = first ? 0u : st->t, mask = first ? 0u : st->mask;
    const int need = first ? top_k : st->need, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int lo, hi;
    topk_grid_segment(visible, &lo, &hi);
    for (int b = lane; b < 256; b += 32) h[w][b] = 0;
    __syncwarp();
    warp_digit_hist(scores, lo, hi, t, mask, shift, h[w]);
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
        int n = 0;
        for (int v = 0; v < TOPK_GRID_WARPS; v++) n += h[v][b];
        if (n) atomicAdd(&st->hist[b], n);
    }
    if (!topk_grid_last(&st->count, &last)) return;
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
        tot[b] = __ldcg(&st->hist[b]);
        st->hist[b] = 0;
    }
    __syncthreads();
    if (w == 0) {
        __shared__ uint32_t prefix;
        __shared__ int need_out;
        warp_find_digit(tot, t, shift, need, &prefix, &need_out);
        __syncwarp();
        if (lane == 0) {
            st->t = prefix;
            st->mask = mask | 255u << shift;
            st->need = need_out;
        }
    }
}

/* Each warp's keys above the k-th and ties (wa, wt); the last block turns
 * them into each warp's first output slot (wa) and tie rank (wt). */
__global__ void __launch_bounds__(TOPK_GRID_THREADS) k_topk_grid_count(const float *scores, int top_k, int min_rows,
                                                                       topk_grid_state *st, int *wa, int *wt,
                                                                       const step_io *io) {
    pdl_trigger();
    pdl_wait();
    __shared__ int last;
    const int visible = (io->pos + 1) / 4;
    if (visible <= top_k || visible <= min_rows) return;
    const int gw = blockIdx.x * TOPK_GRID_WARPS + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    int lo, hi, above, ties;
    topk_grid_segment(visible, &lo, &hi);
    warp_count_above(scores, lo, hi, st->t, &above, &ties);
    if (lane == 0) wa[gw] = above, wt[gw] = ties;
    if (!topk_grid_last(&st->count, &last)) return;
    if (threadIdx.x >= 32) return;
    const int nw = gridDim.x * TOPK_GRID_WARPS, need = st->need;
    int tb = 0, pb = 0; /* ties and picks of the warps before this chunk of 32 */
    for (int c = 0; c < nw; c += 32) {
        int i = c + lane;
        int tw = i < nw ? __ldcg(&wt[i]) : 0, aw = i < nw ? __ldcg(&wa[i]) : 0;
        int ti = warp_scan_incl(tw), tbl = tb + ti - tw;
        int take = need - tbl < 0 ? 0 : need - tbl < tw ? need - tbl : tw;
        int pw = aw + take, pi = warp_scan_incl(pw);
        if (i < nw) wt[i] = tbl, wa[i] = pb + pi - pw;
        tb += __shfl_sync(0xffffffffu, ti, 31);
        pb += __shfl_sync(0xffffffffu, pi, 31);
    }
}

/* The picks, in index order; n_sel = top_k, or -1 while every visible row
 * is attended. Each launch does nothing at positions where at most min_rows
 * rows are visible (k_idx_topk's, when the step holds both). */
__global__ void __launch_bounds__(TOPK_GRID_THREADS) k_topk_grid_write(const float *scores, int top_k, int min_rows,
                                                                       const topk_grid_state *st, const int *wa,
                                                                       const int *wt, int *sel, int *n_sel,
                                                                       const step_io *io) {
    pdl_trigger();
    pdl_wait();
    const int visible = (io->pos + 1) / 4;
    if (visible <= min_rows) return; /* k_idx_topk's position */
    if (blockIdx.x == 0 && threadIdx.x == 0) *n_sel = visible <= top_k ? -1 : top_k;
    if (visible <= top_k) return;
    const int gw = blockIdx.x * TOPK_GRID_WARPS + (threadIdx.x >> 5);
    int lo, hi;
    topk_grid_segment(visible, &lo, &hi);
    warp_write_picks(scores, lo, hi, st->t, st->need, __ldcg(&wt[gw]), __ldcg(&wa[gw]), sel);
}

#endif
