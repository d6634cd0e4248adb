/* cuda_topk_grid.cuh — the indexer's top-k over the whole machine, for the
 * decode step at long context (cuda_engine.cu adds it to the step when a
 * ratio-4 layer can see more than TOPK_ONE_ROWS rows, and it runs at the
 * positions where it does; up to that the one-block block_topk_ascending
 * of k_idx_topk, from registers, is faster). Same selection as the
 * one-block version: the top_k largest scores by score_key order, ties to
 * the lower index, written as ascending row indices; n_sel = -1 while every
 * visible row is attended.
 *
 * One launch whose blocks meet at grid barriers (topk_grid_sync) where six
 * launches used to meet at kernel boundaries (each paid its wait and
 * reloaded the keys: ~35 us a ratio-4 layer at ctx 65536). Every warp owns
 * a contiguous segment of at most 32·TOPK_BATCH rows (as the warps of one
 * block do in block_topk_ascending) and holds its keys in registers, read
 * once. Radix select of the k-th key, 8 bits a pass: each warp counts its
 * keys under the prefix found so far into its own histogram, each block
 * adds its warps' bins into the pass's global histogram, a barrier, then
 * every block reads the totals and finds the same digit (warp_find_digit);
 * it stops once every key with that digit is taken (no tie left). Then
 * each warp counts its keys above the k-th and its ties, a barrier, and
 * each block adds up the counts of the warps before it (its first output
 * slot and tie rank), and the warps write their picks in index order.
 *
 * The blocks must all be resident at once: the grid is at most what the
 * device holds beside the kernels around it (topk_grid_blocks, checked at
 * open), and the kernel lets the next one launch (PDL) only after the first
 * barrier, which every block has reached. The state is left zeroed for the
 * next call by the last block out. The position comes from step_io (the
 * graph is captured once). Up to TOPK_CLUSTER_MAX blocks the same kernel
 * runs as one thread-block cluster (k_topk_grid<true>, below), without
 * the global state. */
#ifndef DS4_CUDA_TOPK_GRID_CUH
#define DS4_CUDA_TOPK_GRID_CUH

#include <stdint.h>

#include "cuda_block_meet.cuh"
#include "cuda_device_math.cuh"
#include "cuda_pdl.cuh"

/* TOPK_GRID_MIN: the rows k_idx_topk's 1024 threads hold in registers;
 * TOPK_GRID_ROWS: the rows of one block (TOPK_BATCH keys a lane). */
enum {
    TOPK_GRID_THREADS = 256,
    TOPK_GRID_WARPS = TOPK_GRID_THREADS / 32,
    TOPK_GRID_MIN = TOPK_REG_SLOTS * 1024,
    TOPK_GRID_ROWS = TOPK_GRID_WARPS * 32 * TOPK_BATCH,
    TOPK_GRID_PASSES = 4
};

/* Device state of the grid top-k (zeroed once; every call leaves it zeroed). */
struct topk_grid_state {
    unsigned arrive; /* blocks arrived at the call's barriers so far */
    unsigned leave;  /* blocks done (the last one resets the state) */
    int hist[TOPK_GRID_PASSES][256];
};

/* Blocks of the grid top-k for at most max_visible rows. */
static inline int topk_grid_blocks(uint32_t max_visible) {
    int g = (int)((max_visible + TOPK_GRID_ROWS - 1) / TOPK_GRID_ROWS);
    return g < 1 ? 1 : g;
}

/* Warp gw's rows [*lo, *hi) of visible: segments of a multiple of 32. */
__device__ __forceinline__ void topk_grid_segment(int visible, int *lo, int *hi) {
    const int nw = gridDim.x * TOPK_GRID_WARPS, gw = blockIdx.x * TOPK_GRID_WARPS + (threadIdx.x >> 5);
    const int seg = ((visible + nw - 1) / nw + 31) & ~31;
    *lo = gw * seg < visible ? gw * seg : visible;
    *hi = *lo + seg < visible ? *lo + seg : visible;
}

/* Barrier of the whole grid: returns once `target` block arrivals are
 * counted (the call's n-th barrier: n·gridDim.x), with every write before it
 * visible to every block. */
__device__ __forceinline__ void topk_grid_sync(unsigned *arrive, unsigned target) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(arrive, 1u);
        while (*(volatile unsigned *)arrive < target) {
        }
        __threadfence();
    }
    __syncthreads();
}

/* The cluster form (CL: the grid is one thread-block cluster, sm_90+, at
 * most TOPK_CLUSTER_MAX blocks): the blocks exchange their histograms and
 * warp counts through distributed shared memory and meet at cluster
 * barriers instead of global arrivals (a grid barrier costs ~2 us, §16);
 * the hardware schedules a cluster's blocks together, so nothing can be
 * starved and the next kernel may launch at once. */
enum { TOPK_CLUSTER_MAX = 16 };

/* Where the grid top-k is in the step, it takes the positions that see
 * more than TOPK_ONE_ROWS rows, the one block (512 threads) those up to it:
 * the one block holding 4097-8192 rows in 1024 threads is slower than
 * either form (isolated, 8192 rows: 17.3 us against the grid's 11.8 and the
 * cluster's 9.9). H200, 43 layers, against the one block to TOPK_GRID_MIN
 * rows: ctx 16384 +0.9%, 24576 +2.1%, 4096 of an allocated 100000 +1.0%;
 * the grid form (allocations past 128k) 16k-24k +0.9 to +1.7% (notes §38). */
enum { TOPK_ONE_ROWS = 4096 };

/* The picks, in index order, into sel; n_sel = top_k, or -1 while every
 * visible row is attended. Nothing at positions where at most min_rows rows
 * are visible (k_idx_topk's, when the step holds both). st, wa, wt: the
 * grid form's global state (unused by the cluster form). */
template <bool CL>
__global__ void __launch_bounds__(TOPK_GRID_THREADS) k_topk_grid(const float *scores, int top_k, int min_rows,
                                                                 topk_grid_state *st, int *wa, int *wt, int *sel,
                                                                 int *n_sel, const step_io *io) {
    const int visible = (io->pos + 1) / 4; /* step_io: the host's, read before the wait */
    if (CL) pdl_trigger(); /* the cluster's blocks are all resident */
    pdl_wait();
    __shared__ int h[TOPK_GRID_WARPS][256];
    __shared__ int tot[256];
    __shared__ int cbin[2][256];               /* CL: this block's bins of a pass, by the pass's parity */
    __shared__ int cw[2][TOPK_GRID_WARPS];     /* CL: its warps' keys above and ties */
    __shared__ uint32_t s_prefix;
    __shared__ int s_need, s_done, s_before[2][TOPK_GRID_WARPS + 1];
    if (visible <= min_rows || visible <= top_k) {
        if (!CL) pdl_trigger();
        /* the position is this kernel's beyond min_rows, and every one when
         * min_rows is 0 (no visible row yet included: a stale n_sel would
         * pick rows) */
        if ((visible > min_rows || min_rows == 0) && blockIdx.x == 0 && threadIdx.x == 0) *n_sel = -1;
        return;
    }
    const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, gw = blockIdx.x * TOPK_GRID_WARPS + w;
    int lo, hi;
    topk_grid_segment(visible, &lo, &hi);
    uint32_t key[TOPK_BATCH];
    const unsigned valid = load_keys(scores, lo + lane, 32, TOPK_BATCH, hi, key);
    uint32_t t = 0, mask = 0;
    int need = top_k, barriers = 0;
    for (int pass = 0, shift = 24; pass < TOPK_GRID_PASSES; pass++, shift -= 8) {
        for (int b = lane; b < 256; b += 32) h[w][b] = 0;
        __syncwarp();
#pragma unroll
        for (int u = 0; u < TOPK_BATCH; u++) /* warp_digit_hist, from registers */
            warp_hist_add((valid >> u & 1u) && (key[u] & mask) == t ? (int)((key[u] >> shift) & 255u) : -1, h[w]);
        __syncthreads();
        if (CL) {
            /* a block rewrites cbin[pass & 1] only after the next pass's
             * barrier, which every block passes after reading this one */
            for (int b = threadIdx.x; b < 256; b += TOPK_GRID_THREADS) {
                int n = 0;
                for (int v = 0; v < TOPK_GRID_WARPS; v++) n += h[v][b];
                cbin[pass & 1][b] = n;
            }
            cluster_sync();
            for (int b = threadIdx.x; b < 256; b += TOPK_GRID_THREADS) {
                int n = 0;
                for (int r = 0; r < (int)gridDim.x; r++) n += *cluster_at(&cbin[pass & 1][b], r);
                tot[b] = n;
            }
        } else {
            for (int b = threadIdx.x; b < 256; b += TOPK_GRID_THREADS) {
                int n = 0;
                for (int v = 0; v < TOPK_GRID_WARPS; v++) n += h[v][b];
                if (n) atomicAdd(&st->hist[pass][b], n);
            }
            topk_grid_sync(&st->arrive, ++barriers * gridDim.x);
            if (pass == 0) pdl_trigger(); /* every block is resident: the next kernel may take the rest */
            for (int b = threadIdx.x; b < 256; b += TOPK_GRID_THREADS) tot[b] = __ldcg(&st->hist[pass][b]);
        }
        __syncthreads();
        if (w == 0) {
            warp_find_digit(tot, t, shift, need, &s_prefix, &s_need);
            __syncwarp();
            if (lane == 0) s_done = tot[(s_prefix >> shift) & 255u] == s_need;
        }
        __syncthreads();
        t = s_prefix;
        need = s_need;
        mask |= 255u << shift;
        if (s_done) break; /* the same in every block */
    }
    /* t is the k-th key under mask: every key above it, and the first `need` ties */
    int above, ties;
    keys_above_ties(key, valid, mask, t, &above, &ties);
    above = __reduce_add_sync(0xffffffffu, above);
    ties = __reduce_add_sync(0xffffffffu, ties);
    if (CL) {
        if (lane == 0) cw[0][w] = above, cw[1][w] = ties;
        cluster_sync();
    } else {
        if (lane == 0) wa[gw] = above, wt[gw] = ties;
        topk_grid_sync(&st->arrive, ++barriers * gridDim.x);
        /* the hist arrays are read: block 0 clears them for the next call */
        if (blockIdx.x == 0)
            for (int b = threadIdx.x; b < TOPK_GRID_PASSES * 256; b += TOPK_GRID_THREADS) (&st->hist[0][0])[b] = 0;
    }
    /* warp v's counts (of the whole grid) */
    auto count_of = [&](int v, int which) {
        if (CL) return *cluster_at(&cw[which][v % TOPK_GRID_WARPS], v / TOPK_GRID_WARPS);
        return __ldcg(which ? &wt[v] : &wa[v]);
    };
    /* the counts of the warps of earlier blocks, then of this block's warps before each */
    int ab = 0, tb = 0;
    for (int v = threadIdx.x; v < (int)blockIdx.x * TOPK_GRID_WARPS; v += TOPK_GRID_THREADS)
        ab += count_of(v, 0), tb += count_of(v, 1);
    ab = __reduce_add_sync(0xffffffffu, ab);
    tb = __reduce_add_sync(0xffffffffu, tb);
    if (lane == 0) s_before[0][w] = ab, s_before[1][w] = tb;
    __syncthreads();
    if (w == 0) {
        const int ba = lane < TOPK_GRID_WARPS ? s_before[0][lane] : 0, bt = lane < TOPK_GRID_WARPS ? s_before[1][lane] : 0;
        const int ta = __reduce_add_sync(0xffffffffu, ba), tt = __reduce_add_sync(0xffffffffu, bt);
        /* lane l < warps: block total + the block's warps before l */
        const int oa = lane < TOPK_GRID_WARPS ? count_of(blockIdx.x * TOPK_GRID_WARPS + lane, 0) : 0;
        const int ot = lane < TOPK_GRID_WARPS ? count_of(blockIdx.x * TOPK_GRID_WARPS + lane, 1) : 0;
        const int ia = warp_scan_incl(oa), it = warp_scan_incl(ot);
        __syncwarp();
        if (lane < TOPK_GRID_WARPS) s_before[0][lane] = ta + ia - oa, s_before[1][lane] = tt + it - ot;
    }
    __syncthreads();
    if (CL) cluster_sync(); /* no block leaves while another reads its counts */
    const int a_before = s_before[0][w], t_before = s_before[1][w];
    /* warp_write_picks, from registers */
    const unsigned below = (1u << lane) - 1u;
    int tie_rank = t_before, out = a_before + (t_before < need ? t_before : need);
#pragma unroll
    for (int u = 0; u < TOPK_BATCH; u++) {
        const uint32_t k = key[u] & mask;
        const bool v = valid >> u & 1u, tie = v && k == t;
        const unsigned tm = __ballot_sync(0xffffffffu, tie);
        const bool pick = v && (k > t || (tie && tie_rank + __popc(tm & below) < need));
        const unsigned pm = __ballot_sync(0xffffffffu, pick);
        if (pick) sel[out + __popc(pm & below)] = lo + 32 * u + lane;
        tie_rank += __popc(tm);
        out += __popc(pm);
    }
    if (blockIdx.x == 0 && threadIdx.x == 0) *n_sel = top_k;
    if (CL) return;
    /* the last block out resets the barrier for the next call */
    __syncthreads();
    if (threadIdx.x == 0 && atomicAdd(&st->leave, 1u) == gridDim.x - 1) {
        st->arrive = 0;
        st->leave = 0;
        __threadfence();
    }
}

/* Whether the g blocks of the grid top-k run here as one cluster: sm_90+,
 * at most TOPK_CLUSTER_MAX (16 needs non-portable sizes: to 128k of
 * context), and the device can place such a cluster. */
static inline bool topk_cluster_fits(int g) {
    int dev = 0, major = 0;
    if (g < 1 || g > TOPK_CLUSTER_MAX || cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess || major < 9) {
        cudaGetLastError();
        return false;
    }
    return cluster_places(k_topk_grid<true>, g, TOPK_GRID_THREADS, 0);
}

#endif
