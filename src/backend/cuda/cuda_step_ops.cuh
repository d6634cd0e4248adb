/* cuda_step_ops.cuh — device code of the decode step's operations other
 * than the quantised matrix-vector products (those are cuda_kernels.cu):
 * embedding, RMSNorm, hyper-connection pre/post with Sinkhorn, RoPE, the
 * FP8 KV and Hadamard+FP4 indexer round-trips, the KV compressor frontier,
 * the lightning indexer's scores and top-k, attention with sinks over the
 * raw window plus compressed rows, the router, and the output-head collapse
 * (model-spec §4, §5).
 *
 * Each kernel restates the CPU reference (src/engine/numerics.c,
 * forward.c, attention.c, compressor.c, moe.c) with the same float
 * operations in the same order wherever one thread owns a value; sums
 * across threads (norms, dot products, softmax denominators) are tree
 * sums, so results differ from the CPU's only by summation order. Compiled
 * with -fmad=false so no multiply-add is contracted that the CPU does not
 * contract. Everything that depends on the token or its position reads
 * them from device memory (step_io), so one captured graph serves every
 * step. Included once, by cuda_engine.cu.
 *
 * Exact mode (cuda_engine.h): the kernels that store or read KV rows are
 * templates on the row type RowT, __half in the official numerics and
 * float in exact mode, where the FP8 and Hadamard+FP4 round-trips are
 * skipped as well (row_exact<RowT>). */
#ifndef DS4_CUDA_STEP_OPS_CUH
#define DS4_CUDA_STEP_OPS_CUH

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "cuda_engine_impl.cuh"
#include "cuda_formats.cuh"
#include "cuda_async.cuh"
#include "cuda_block_meet.cuh"
#include "cuda_pdl.cuh"
#include "cuda_device_math.cuh"
#include "cuda_idx_scores.cuh"
#include "cuda_hc_split.cuh"

enum { OPS_THREADS = 512 };

/* ---------------------------------------------------------------- helpers */

__device__ float f16_round_dev(float x) { return __half2float(__float2half_rn(x)); }

/* Stored KV rows: f16 (official numerics) or f32 (exact mode). */
template <typename RowT> __device__ __forceinline__ constexpr bool row_exact() { return sizeof(RowT) == sizeof(float); }
__device__ __forceinline__ void row_put(__half *p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void row_put(float *p, float v) { *p = v; }
/* Values 2j and 2j+1 of a row. */
__device__ __forceinline__ float2 row_pair(const __half *r, int j) { return __half22float2(((const __half2 *)r)[j]); }
__device__ __forceinline__ float2 row_pair(const float *r, int j) { return ((const float2 *)r)[j]; }

/* ------------------------------------------------------------- kernels */

/* H = the token's embedding row in all HC streams (model-spec §5.1); block
 * 0 also fills the step's RoPE tables (rope_tabs), read by every later
 * rotation at those positions, a thread a pair. */
__global__ void k_embed(const void *embd, int f16, uint32_t D, const step_io *io, float *H, rope_tabs rt) {
    pdl_trigger();
    pdl_wait();
    if (blockIdx.x == 0) {
        const int half = (rt.plain.n_rot > rt.comp.n_rot ? rt.plain.n_rot : rt.comp.n_rot) / 2;
        for (int i = threadIdx.x; i < (2 + rt.n_win) * half; i += blockDim.x) {
            const int t = i / half, k = i % half;
            const rope_dev &rp = t == 0 ? rt.plain : rt.comp;
            if (k >= rp.n_rot / 2) continue;
            float2 *cs = t == 0 ? rt.cs0 : t == 1 ? rt.cs1 : rt.win[t - 2];
            cs[k] = rope_cs(k, t < 2 ? (int64_t)io->pos : (int64_t)io->pos + 1 - rt.win_ratio[t - 2], rp);
        }
    }
    uint32_t d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    size_t off = (size_t)io->token * D + d;
    float v = f16 ? __half2float(((const __half *)embd)[off]) : ((const float *)embd)[off];
    for (int h = 0; h < HC_N; h++) H[(size_t)h * D + d] = v;
}

/* One row of n values: yr = xr/rms(xr) (· w); by the whole block. */
__device__ void rmsnorm_row(const float *xr, float *yr, const float *w, int n, float eps, double *sh) {
    double ss = 0.0;
    for (int i0 = threadIdx.x; i0 < n; i0 += 8 * blockDim.x) {
        float v[8];
        load_batch<8>(xr, i0, blockDim.x, n, v);
#pragma unroll
        for (int k = 0; k < 8; k++)
            if (i0 + k * (int)blockDim.x < n) ss += (double)v[k] * (double)v[k];
    }
    float s = ds4_rms_scale(block_sum(ss, sh), n, eps);
    for (int i0 = threadIdx.x; i0 < n; i0 += 8 * blockDim.x) {
        float v[8], g[8];
        load_batch<8>(xr, i0, blockDim.x, n, v);
        if (w) load_batch<8>(w, i0, blockDim.x, n, g);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            int i = i0 + k * blockDim.x;
            if (i < n) yr[i] = w ? v[k] * s * g[k] : v[k] * s;
        }
    }
}

/* rows of n values: y = x/rms(x) (· w); one block per row. */
__global__ void k_rmsnorm(const float *x, float *y, const float *w, int n, size_t ld, float eps) {
    pdl_trigger();
    pdl_wait();
    __shared__ double sh[32];
    rmsnorm_row(x + blockIdx.x * ld, y + blockIdx.x * ld, w, n, eps, sh);
}

/* The final HC streams (hd = HC_N·D floats at H) of the step's token
 * into the session's ring of them at row pos mod n_swa: the MTP block
 * starts from them (the prefill copies its tokens' rows itself). */
__global__ void k_hring_put(const float *H, const step_io *io, int n_swa, uint32_t hd, float *ring) {
    pdl_trigger();
    const int pos = io->pos; /* step_io: the host's, read before the wait */
    pdl_wait();
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < hd) ring[(size_t)(pos % n_swa) * hd + i] = H[i];
}

/* The verify step's later token's raw rows (kv_prepare's side: a row of
 * row_bytes a layer) into each layer's ring at row io->pos mod n_swa, once
 * every token's attention has read the rows there; block il the layer's
 * (rings: the session's ring of each layer). */
__global__ void k_side_rows(const uint8_t *side, uint8_t *const *rings, uint32_t row_bytes, int n_swa,
                            const step_io *io) {
    pdl_trigger();
    const int pos = io->pos; /* step_io: the host's, read before the wait */
    pdl_wait();
    const uint8_t *src = side + (size_t)blockIdx.x * row_bytes;
    uint8_t *dst = rings[blockIdx.x] + (size_t)(pos % n_swa) * row_bytes;
    for (uint32_t i = 16 * threadIdx.x; i < row_bytes; i += 16 * blockDim.x) *(uint4 *)(dst + i) = *(const uint4 *)(src + i);
}

/* The MTP block's input (model-spec §8, steps 1-2, before the
 * projections): RMSNorm of the kept streams of position io->pos (the
 * session's ring row: HC_N rows of D) with hnorm into hn, and of
 * the token's embedding (k_embed's first stream, H) with enorm into en;
 * block b < HC_N a stream, block HC_N the embedding. */
__global__ void k_mtp_norms(const float *ring, int n_swa, const float *H, const float *hnorm, const float *enorm,
                            uint32_t D, float eps, const step_io *io, float *hn, float *en) {
    pdl_trigger();
    const int pos = io->pos; /* step_io: the host's, read before the wait */
    pdl_wait();
    __shared__ double sh[32];
    const bool emb = blockIdx.x == HC_N;
    rmsnorm_row(emb ? H : ring + ((size_t)(pos % n_swa) * HC_N + blockIdx.x) * D, emb ? en : hn + (size_t)blockIdx.x * D,
                emb ? enorm : hnorm, (int)D, eps, sh);
}

/* in_hc = E + P (model-spec §8 step 3): each of the HC_N streams' h_proj
 * product (in H) plus the embedding's e_proj product e. */
__global__ void k_mtp_join(float *H, const float *e, uint32_t D) {
    pdl_trigger();
    pdl_wait();
    const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < HC_N * D) H[i] += e[i % D];
}


static_assert(HC_MIX <= 32, "k_hc reduces the mix's sums with one warp reduce-scatter");

/* k_hc's mix turned into the next HC's post gates and mixing matrix
 * (hc_split_warp) by one warp off the critical path — an extra block of
 * k_attention_split (attention HC; the attention lasts ≥ 9 us) and a
 * one-warp kernel on the shared expert's side stream (FFN HC) — instead of
 * by k_hc itself, whose 20 dependent Sinkhorn iterations (~3.6 us)
 * finished 1.6-2.5 us after its x and a were written (H200, globaltimer
 * stamps), or by spare blocks of q/kv preparation and of the router's
 * selection, whose ends they set once those got faster. */
struct hc_split_args {
    const float *mix, *scale, *base;
    float *post, *comb;
    int iters;
    float hc_eps;
};

__device__ __forceinline__ void hc_split_block(const hc_split_args &h) {
    if (threadIdx.x < 32) hc_split_warp(h.mix, h.scale, h.base, h.iters, h.hc_eps, nullptr, h.post, h.comb);
}

/* Between two sublayers, one launch (model-spec §5.3, then §5.2 and the
 * next sublayer's RMSNorm) of HC_BLOCKS blocks. Thread t of block b owns
 * HC_EPT consecutive dims d = b·HC_DPB + (t mod HC_TPS)·HC_EPT of stream
 * h = t / HC_TPS: it loads its MIX weights of fn (F16 or F32) before
 * waiting for the previous kernel; H is read from H_in and written to H
 * (two buffers, alternating between calls, so that any block may read any
 * element of H_in): with y, HC post of the finished sublayer, H[h] =
 * post[h]·y + Σ_src comb[src][h]·H_in[src] (the thread computes all
 * HC_N streams at its dims, and writes its own). It adds the products
 * fn_j·H and its stream's row of the streams' Gram matrix G[h][h'] =
 * Σ_d H[h][d]·H[h'][d] (h' ≥ h, doubles: the products of floats are
 * exact). Every block gets every block's HC_SUMS sums and adds them in
 * block order, so all hold the same totals: mix = (fn·H)·(1/rms(H)) with
 * Σ H² = trace G, the CPU's fn·(H/rms) up to rounding, and pre =
 * σ(mix·scale + base) + eps. Each block then writes x = Σ pre·H and
 * a = norm(x)·w for its own dims (their H in shared memory), with
 * Σ x² = Σ_hh' pre_h·pre_h'·G[h][h'] — no second exchange, and with aq8
 * a as Q8_0 too (the Q8_0 products after it copy those codes); block 0
 * writes mix, whose split into the next sublayer's post gates and mixing
 * matrix a later kernel does (hc_split_block).
 *
 * CL (sm_90+): the blocks are one thread-block cluster and exchange the
 * sums through distributed shared memory at one cluster barrier: no
 * global round trip and no finishing block. Otherwise through global
 * memory (part) at a grid barrier (count): the blocks are all resident
 * (checked at open), and the next kernel launches only once each has
 * started. Either way each block has its SM to itself (the launch asks
 * for the SM's shared memory: alone_smem). H200, ctx 4096: +1.6% a token
 * over 32 blocks whose block 0 finished once the others had counted their
 * partials in (notes/cuda-kernels.md §29).
 *
 * Several tokens (the verify step's) in one launch: a group of HC_BLOCKS
 * blocks (a cluster) a token, each with its token's buffers (hc_io); the
 * weights are the same. */
enum {
    HC_BLOCKS = 16,
    HC_THREADS = 512,
    HC_TPS = HC_THREADS / HC_N,            /* threads a stream */
    HC_EPT = 2,                            /* dims a thread */
    HC_DPB = HC_TPS * HC_EPT,              /* dims a block */
    HC_GRAM = HC_N * (HC_N + 1) / 2,       /* G[h][h'], h <= h', row by row */
    HC_SUMS = HC_MIX + HC_GRAM,            /* the sums a block exchanges */
    HC_PART = HC_BLOCKS * HC_SUMS          /* the grid form's exchanged sums */
};
static_assert(HC_SUMS <= 3 * (HC_THREADS / 32), "k_hc adds three of the block sums a warp");
static_assert(HC_BLOCKS <= 32 && (HC_BLOCKS & (HC_BLOCKS - 1)) == 0, "k_hc: a lane a block, a power of two");
static_assert(HC_TPS % 32 == 0 && HC_N == 4 && HC_DPB <= HC_THREADS, "k_hc: a warp within one stream, its Gram row four sums");

/* Index of G[h][h'] (h <= h') among k_hc's Gram sums. */
__device__ __forceinline__ int hc_gram_at(int h, int h2) { return h * HC_N - h * (h - 1) / 2 + (h2 - h); }

/* One token's buffers of a k_hc launch (see above; y NULL: no post). */
struct hc_io {
    const float *H_in;
    float *H;
    const float *y, *post, *comb;
    double *part;
    unsigned *count;
    float *mix, *x, *a;
    uint8_t *aq8;
};

/* NT: the tokens of the launch (1, or the verify step's 2: io1 for blocks
 * from HC_BLOCKS on; a kernel of its own, so the one-token step picks no
 * buffers at run time). */
template <bool CL, int NT>
__global__ void __launch_bounds__(HC_THREADS) k_hc(const hc_io io0, const hc_io io1, uint32_t D, const void *fn,
                                                    int f16, const float *scale, const float *base, float hc_eps,
                                                    const float *norm_w, float rms_eps) {
    __shared__ float red[HC_THREADS / 32][HC_MIX];
    __shared__ double redg[HC_THREADS / 32][HC_N];
    __shared__ double bsum[HC_BLOCKS][HC_SUMS]; /* CL: every block's sums */
    __shared__ double tot[HC_SUMS];
    __shared__ float pre_s[HC_N];
    __shared__ float sH[HC_N][HC_DPB];
    pdl_trigger();
    if (CL) cluster_arrive_relaxed();
    const int tid = threadIdx.x, lane = tid & 31, wp = tid >> 5, nw = blockDim.x >> 5, b = blockIdx.x % HC_BLOCKS;
    const hc_io &io = NT == 1 || blockIdx.x < HC_BLOCKS ? io0 : io1;
    const float *H_in = io.H_in, *y = io.y, *post = io.post, *comb = io.comb;
    float *H = io.H, *mix = io.mix, *x = io.x, *a = io.a;
    double *part = io.part;
    unsigned *count = io.count;
    uint8_t *aq8 = io.aq8;
    const uint32_t n = HC_N * D, h = tid / HC_TPS, p = (tid % HC_TPS) * HC_EPT, d = b * HC_DPB + p;
    const bool own = d < D; /* check_model: D even */
    const size_t c = own ? (size_t)h * D + d : 0;
    /* read once a step: evict-first (__ldcs), as cp_async16_once */
    float2 wv[HC_MIX];
    if (f16) {
        __half2 hw[HC_MIX];
#pragma unroll
        for (int j = 0; j < HC_MIX; j++) hw[j] = __ldcs((const __half2 *)((const __half *)fn + c + (size_t)j * n));
#pragma unroll
        for (int j = 0; j < HC_MIX; j++) wv[j] = __half22float2(hw[j]);
    } else {
#pragma unroll
        for (int j = 0; j < HC_MIX; j++) wv[j] = __ldcs((const float2 *)((const float *)fn + c + (size_t)j * n));
    }
    /* thread t < HC_DPB writes x and a for dim b·HC_DPB + t: its norm weight */
    const uint32_t dx = b * HC_DPB + tid;
    const bool xown = tid < HC_DPB && dx < D;
    const float wn = xown ? norm_w[dx] : 0.0f;
    /* the pre gates' scale and bias (weights): loaded after the exchange
     * they were one more dependent load on every block's chain */
    const float pre_scale = tid < HC_N ? scale[0] : 0.0f, pre_base = tid < HC_N ? base[tid] : 0.0f;
    pdl_wait();
    /* every stream at this thread's dims (constant indices: a register
     * array indexed by the thread's stream would go to local memory), and
     * the thread's own stream by the same operations */
    float2 hs[HC_N], v = make_float2(0.0f, 0.0f);
#pragma unroll
    for (int k = 0; k < HC_N; k++) hs[k] = own ? *(const float2 *)(H_in + (size_t)k * D + d) : make_float2(0.0f, 0.0f);
    if (own) v = *(const float2 *)(H_in + c);
    if (y && own) {
        const float2 yv = *(const float2 *)(y + d);
        auto post_of = [&](uint32_t dst) { /* HC post of stream dst */
            float ax = post[dst] * yv.x, ay = post[dst] * yv.y;
#pragma unroll
            for (int src = 0; src < HC_N; src++) {
                ax += comb[src * HC_N + dst] * hs[src].x;
                ay += comb[src * HC_N + dst] * hs[src].y;
            }
            return make_float2(ax, ay);
        };
        float2 nv[HC_N];
#pragma unroll
        for (int k = 0; k < HC_N; k++) nv[k] = post_of(k);
        v = post_of(h);
#pragma unroll
        for (int k = 0; k < HC_N; k++) hs[k] = nv[k];
    }
    if (own) {
        *(float2 *)(H + c) = v;
        sH[h][p] = v.x;
        sH[h][p + 1] = v.y;
    }
    /* float products and warp sums (a warp's 64 elements) for the mix: the
     * warp's reduce-scatter in doubles took twice the shuffles and 48
     * conversions a thread (H200, ctx 4096: +0.8%, 4 of 4 rounds) */
    float prod[32];
#pragma unroll
    for (int j = 0; j < 32; j++) prod[j] = j < HC_MIX ? wv[j].x * v.x + wv[j].y * v.y : 0.0f;
    const float ts = warp_scatter_sum32(prod, lane);
    if (lane < HC_MIX) red[wp][lane] = ts;
    /* this stream's products with every stream, in doubles; the block
     * keeps G[h][s] for s >= h */
    double g[HC_N];
#pragma unroll
    for (int k = 0; k < HC_N; k++) g[k] = (double)v.x * (double)hs[k].x + (double)v.y * (double)hs[k].y;
    const double gs = warp_scatter_sum4(g, lane);
    if ((lane & 7) == 0) redg[wp][lane >> 3] = gs;
    if (CL) cluster_wait(); /* every block runs: its shared memory may be written */
    __syncthreads();
    /* this block's sums to every block: the mix's over all warps, a Gram
     * row's over its stream's warps */
    if (tid < HC_SUMS) {
        double t = 0.0;
        if (tid < HC_MIX) {
            for (int i = 0; i < nw; i++) t += (double)red[i][tid];
        } else {
            int hg = 0, k = tid - HC_MIX; /* G[hg][hg + k] */
            while (k >= HC_N - hg) k -= HC_N - hg++;
            for (int i = 0; i < HC_TPS / 32; i++) t += redg[hg * (HC_TPS / 32) + i][hg + k];
        }
        if (CL)
#pragma unroll
            for (int r = 0; r < HC_BLOCKS; r++) *cluster_at(&bsum[b][tid], r) = t;
        else
            part[b * HC_SUMS + tid] = t;
    }
    /* after it, no block touches another's shared memory */
    if (CL) cluster_sync();
    else grid_ticket_sync(count, HC_BLOCKS);
    /* warp w adds sums w, w + nw, w + 2·nw over the blocks, a block a lane */
    double tv[3];
#pragma unroll
    for (int r = 0; r < 3; r++) {
        const int j = wp + r * nw;
        tv[r] = j >= HC_SUMS || lane >= HC_BLOCKS ? 0.0 : CL ? bsum[lane][j] : __ldcg(&part[lane * HC_SUMS + j]);
    }
#pragma unroll
    for (int r = 0; r < 3; r++) {
        for (int o = 16; o > 0; o >>= 1) tv[r] += __shfl_xor_sync(0xffffffffu, tv[r], o);
        if (lane == 0 && wp + r * nw < HC_SUMS) tot[wp + r * nw] = tv[r];
    }
    __syncthreads();
    if (tid < HC_MIX) {
        double hh = 0.0; /* Σ H² = trace G */
        for (int k = 0; k < HC_N; k++) hh += tot[HC_MIX + hc_gram_at(k, k)];
        float m = (float)tot[tid] * ds4_rms_scale(hh, (int)n, rms_eps);
        if (b == 0) mix[tid] = m;
        if (tid < HC_N) pre_s[tid] = dev_sigmoid(m * pre_scale + pre_base) + hc_eps;
    }
    __syncthreads();
    /* x and a for this block's dims */
    if (xown) {
        float xv = 0.0f;
        for (int hh = 0; hh < HC_N; hh++) xv += pre_s[hh] * sH[hh][tid];
        x[dx] = xv;
        double xx = 0.0;
        for (int i = 0; i < HC_N; i++)
            for (int k = i; k < HC_N; k++)
                xx += (k == i ? 1.0 : 2.0) * (double)pre_s[i] * (double)pre_s[k] * tot[HC_MIX + hc_gram_at(i, k)];
        const float av = xv * ds4_rms_scale(xx, (int)D, rms_eps) * wn;
        a[dx] = av;
        if (aq8) warp_q8_0_block(av, aq8 + 36 * (dx / 32), lane); /* a warp's 32 dims: one block */
    }
}

/* Per head: unweighted RMSNorm, then RoPE of the tail (attention Q). */
__device__ void q_prepare(float *qh, float *xs, int hd, int n_rot, float eps, const float2 *cs) {
    __shared__ double sh[32];
    const float2 rv = rope_own(cs, n_rot); /* beside q's loads, not after the norm */
    double ss = 0.0;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        xs[i] = qh[i];
        ss += (double)xs[i] * (double)xs[i];
    }
    float s = ds4_rms_scale(block_sum(ss, sh), hd, eps);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) xs[i] = xs[i] * s;
    block_rope_own(xs, hd, n_rot, rv, cs, false);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) qh[i] = xs[i];
}

/* The token's KV row: weighted RMSNorm, RoPE, FP8 round-trip, f16 into the
 * raw window ring at row pos mod n_swa (attention.c qkv_prepare_task), or
 * into side (the verify step's later token: k_side_rows puts it in the
 * ring after every token's attention); exact mode: no round-trip, f32
 * rows. nw0: norm_w[threadIdx.x] (loaded before the kernel's wait: a
 * weight). */
template <typename RowT>
__device__ void kv_prepare(const float *kv, float *xs, const float *norm_w, float nw0, int hd, int n_rot, float eps,
                           const float2 *cs, int64_t pos, RowT *ring, int n_swa, RowT *side) {
    __shared__ double sh[32];
    __shared__ float sc[64];
    const float2 rv = rope_own(cs, n_rot); /* beside kv's loads, not after the norm */
    double ss = 0.0;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        xs[i] = kv[i];
        ss += (double)xs[i] * (double)xs[i];
    }
    float s = ds4_rms_scale(block_sum(ss, sh), hd, eps);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) xs[i] = xs[i] * s * (i == (int)threadIdx.x ? nw0 : norm_w[i]);
    block_rope_own(xs, hd, n_rot, rv, cs, false);
    if (!row_exact<RowT>()) block_fp8_roundtrip(xs, hd - n_rot, sc);
    RowT *row = side ? side : ring + (size_t)(pos % n_swa) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) row_put(&row[i], xs[i]);
}

/* KV compressor frontier (model-spec §5.6, compressor.c compressor_run) for
 * one token: store its kv/score(+APE) row; every R-th token pool the
 * frontier per dimension, RMSNorm, RoPE at the window start, FP8
 * (attention) or Hadamard+FP4 (indexer) round-trip, append the f16 row
 * number (pos+1)/R - 1, and shift/reset the frontier. One block. */
struct comp_args {
    const float *kv_cur, *sc_cur, *ape, *norm_w;
    float *st_kv, *st_sc;
    void *rows; /* RowT */
    int R, coff, hd, indexer;
    const float2 *win_cs; /* k_embed's table at the window's start, or NULL */
    /* or NULL: where this token closes a window, the whole frontier as it
     * was before the token is copied there first (the verify step's later
     * token: a rejected draft's window is put back from it) */
    float *snap_kv, *snap_sc;
};

template <typename RowT>
__device__ void compressor(const comp_args &c, float *out, float nw0, int n_rot, float eps, const rope_dev &rp,
                           int64_t p) {
    __shared__ double sh[32];
    __shared__ float sc[64];
    /* an emitting token's window rope entry, beside the frontier's loads */
    const float2 rv = (p + 1) % c.R == 0 && c.win_cs ? rope_own(c.win_cs, rp.n_rot) : make_float2(0.0f, 0.0f);
    const float *kv_cur = c.kv_cur, *sc_cur = c.sc_cur, *ape = c.ape, *norm_w = c.norm_w;
    float *st_kv = c.st_kv, *st_sc = c.st_sc;
    RowT *rows = (RowT *)c.rows;
    int R = c.R, coff = c.coff, hd = c.hd, indexer = c.indexer;
    int W = coff * hd, slot = (int)(p % R), row = (coff == 2 ? R : 0) + slot;
    if (c.snap_kv && (p + 1) % R == 0) {
        for (int k = threadIdx.x; k < coff * R * W; k += blockDim.x) c.snap_kv[k] = st_kv[k], c.snap_sc[k] = st_sc[k];
        __syncthreads();
    }
    /* Copies through registers, CH values a thread loaded before any is
     * stored: the compiler cannot tell the frontier from the projections,
     * so a plain loop waited for each store's loads in turn (one L2 round
     * trip an iteration; the shift below took ~5 us a closing window). */
    enum { CH = 8 };
    for (int k0 = threadIdx.x; k0 < W; k0 += CH * blockDim.x) {
        float kv[CH], sv[CH];
#pragma unroll
        for (int i = 0; i < CH; i++) {
            const int k = k0 + i * blockDim.x;
            if (k < W) kv[i] = kv_cur[k], sv[i] = sc_cur[k] + ape[(size_t)slot * W + k];
        }
#pragma unroll
        for (int i = 0; i < CH; i++) {
            const int k = k0 + i * blockDim.x;
            if (k < W) st_kv[(size_t)row * W + k] = kv[i], st_sc[(size_t)row * W + k] = sv[i];
        }
    }
    if ((p + 1) % R != 0) return;
    __syncthreads();
    /* Each thread pools its dimensions over the n_cand candidates, their
     * frontier values loaded CH at a time (one L2 round trip for a window
     * of 8, not one per candidate), the sums in candidate order. The same
     * arithmetic as pool_window (cuda_device_math.cuh, the prefill's), kept
     * written out here: through the helper ptxas gave this kernel 80
     * registers instead of 96 and the step ran 0.7% slower (H200, four
     * rounds at ctx 4096: 143.6 vs 144.9 tok/s). */
    const int n_cand = coff * R;
    double ss = 0.0;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        auto at = [&](int c) { return (size_t)c * W + (c < R ? j : hd + j); };
        float m = -INFINITY, s[CH], x[CH];
        for (int c0 = 0; c0 < n_cand; c0 += CH) {
#pragma unroll
            for (int k = 0; k < CH; k++) s[k] = c0 + k < n_cand ? st_sc[at(c0 + k)] : -INFINITY;
#pragma unroll
            for (int k = 0; k < CH; k++) m = fmaxf(m, s[k]);
        }
        float v = 0.0f;
        if (m != -INFINITY) {
            float sum = 0.0f, acc = 0.0f;
            for (int c0 = 0; c0 < n_cand; c0 += CH) {
#pragma unroll
                for (int k = 0; k < CH; k++)
                    if (c0 + k < n_cand) {
                        if (n_cand > CH) s[k] = st_sc[at(c0 + k)]; /* else still loaded */
                        x[k] = st_kv[at(c0 + k)];
                    }
#pragma unroll
                for (int k = 0; k < CH; k++)
                    if (c0 + k < n_cand) {
                        float w = expf(s[k] - m);
                        sum += w;
                        acc += w * x[k];
                    }
            }
            v = acc / sum;
        }
        out[j] = v;
        ss += (double)v * (double)v;
    }
    float s = ds4_rms_scale(block_sum(ss, sh), hd, eps);
    for (int j = threadIdx.x; j < hd; j += blockDim.x) out[j] = out[j] * s * (j == (int)threadIdx.x ? nw0 : norm_w[j]);
    if (c.win_cs) block_rope_own(out, hd, rp.n_rot, rv, c.win_cs, false);
    else block_rope(out, hd, p + 1 - R, rp, false);
    if (!row_exact<RowT>()) {
        if (indexer)
            block_indexer_qat(out, hd, sc);
        else
            block_fp8_roundtrip(out, hd - n_rot, sc);
    }
    RowT *dst = rows + (size_t)((p + 1) / R - 1) * hd;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) row_put(&dst[j], out[j]);
    __syncthreads();
    if (coff == 2) {
        const int n = R * W;
        for (int k0 = threadIdx.x; k0 < n; k0 += CH * blockDim.x) {
            float kv[CH], sv[CH];
#pragma unroll
            for (int i = 0; i < CH; i++) {
                const int k = k0 + i * blockDim.x;
                if (k < n) kv[i] = st_kv[(size_t)n + k], sv[i] = st_sc[(size_t)n + k];
            }
#pragma unroll
            for (int i = 0; i < CH; i++) {
                const int k = k0 + i * blockDim.x;
                if (k < n) {
                    st_kv[k] = kv[i];
                    st_sc[k] = sv[i];
                    st_kv[(size_t)n + k] = 0.0f;
                    st_sc[(size_t)n + k] = -INFINITY;
                }
            }
        }
    } else {
        for (int k = threadIdx.x; k < R * W; k += blockDim.x) {
            st_kv[k] = 0.0f;
            st_sc[k] = -INFINITY;
        }
    }
}

/* Indexer query head h (compressor.c idx_query_task) by one warp
 * (warp_idx_query: RoPE from the step's table, QAT unless exact, as the
 * prefill's pf_idx_query); head 0's warp also scales the head weights by
 * 1/√(ihd·nih). A block a head spent its time in barriers. */
template <int V>
__device__ void idx_query_warp(float *iq, float *iw, int h, int nih, int n_rot, const float2 *cs, int exact) {
    constexpr int IHD = 32 * V;
    const int lane = threadIdx.x & 31;
    float *qh = iq + (size_t)h * IHD + V * lane;
    float x[V];
#pragma unroll
    for (int v = 0; v < V; v += 2) *(float2 *)&x[v] = *(const float2 *)(qh + v);
    warp_idx_query<V>(x, lane, n_rot, cs, exact);
#pragma unroll
    for (int v = 0; v < V; v += 2) *(float2 *)(qh + v) = make_float2(x[v], x[v + 1]);
    if (h == 0) {
        const float denom = sqrtf((float)(IHD * nih));
        for (int j = lane; j < nih; j += 32) iw[j] = iw[j] / denom;
    }
}

/* Everything that reads the step's projections and writes what the
 * indexer's scores and the attention read, in one launch of independent
 * blocks of PREP_THREADS (each a separate launch before: ~5 us a launch,
 * H200 timeline): blocks 0..n_comp-1 the compressors (c[0] the
 * attention's, c[1] the indexer's; first, as on a token that emits a row
 * theirs is the longer chain), then q_prepare of each head, kv_prepare,
 * and with n_idx the indexer's query heads, a warp each (while the
 * indexer picks rows; ihd a power of two from 64 to 512, check_model). */
enum { PREP_THREADS = 512, PREP_IDX_HEADS = PREP_THREADS / 32 };
template <typename RowT>
struct prep_args {
    float *q;
    const float *kv, *norm_w;
    int n_head, hd, n_rot, n_swa;
    float eps;
    const float2 *cs; /* the layer's rope kind at the step's position */
    RowT *ring;
    RowT *side; /* the token's raw row goes here, not into the ring (kv_prepare) */
    comp_args c[2];
    int n_comp;
    rope_dev rp; /* the compressors' rope */
    float *iq, *iw;
    int n_idx, ihd, exact;
    const float2 *ics; /* the indexer's rope */
    const step_io *io;
};

/* Block b (past the compressors') of token a's preparation. */
template <typename RowT>
__device__ __forceinline__ void prep_block(const prep_args<RowT> &a, int b, float *xs, float nw0, int pos,
                                           int idx_active) {
    if (b < a.n_head) {
        q_prepare(a.q + (size_t)b * a.hd, xs, a.hd, a.n_rot, a.eps, a.cs);
    } else if (b == a.n_head) {
        kv_prepare(a.kv, xs, a.norm_w, nw0, a.hd, a.n_rot, a.eps, a.cs, pos, a.ring, a.n_swa, a.side);
    } else if (idx_active) {
        const int h = (b - a.n_head - 1) * PREP_IDX_HEADS + (int)(threadIdx.x >> 5);
        if (h >= a.n_idx) return;
        switch (a.ihd) {
        case 64: idx_query_warp<2>(a.iq, a.iw, h, a.n_idx, a.n_rot, a.ics, a.exact); break;
        case 128: idx_query_warp<4>(a.iq, a.iw, h, a.n_idx, a.n_rot, a.ics, a.exact); break;
        case 256: idx_query_warp<8>(a.iq, a.iw, h, a.n_idx, a.n_rot, a.ics, a.exact); break;
        default: idx_query_warp<16>(a.iq, a.iw, h, a.n_idx, a.n_rot, a.ics, a.exact); break;
        }
    }
}

/* NT tokens at consecutive positions (a0's, then a1's): each compressor
 * block runs the tokens' updates of its frontier in turn; the other
 * blocks, per token (n_head + 1 + the indexer query's each), are
 * independent. */
template <typename RowT, int NT>
__global__ void k_qkv_prepare(const prep_args<RowT> a0, const prep_args<RowT> a1) {
    extern __shared__ float xs[];
    pdl_trigger();
    /* step_io: the host's, read before the wait */
    const int pos0 = a0.io->pos, act0 = a0.io->idx_active;
    const int pos1 = NT > 1 ? a1.io->pos : 0, act1 = NT > 1 ? a1.io->idx_active : 0;
    const int n_comp = a0.n_comp, per = a0.n_head + 1 + (a0.n_idx + PREP_IDX_HEADS - 1) / PREP_IDX_HEADS;
    int b = (int)blockIdx.x;
    const bool z1 = NT > 1 && b >= n_comp && (b - n_comp) >= per;
    /* the KV block's norm weight, and an emitting compressor's, off their
     * chains */
    const bool emits = b < n_comp && ((pos0 + 1) % a0.c[b].R == 0 || (NT > 1 && (pos1 + 1) % a0.c[b].R == 0));
    const int lb = b < n_comp ? 0 : (b - n_comp) % per;
    const float *nw = b >= n_comp && lb == a0.n_head ? a0.norm_w : emits ? a0.c[b].norm_w : NULL;
    const int nw_n = b < n_comp ? a0.c[b].hd : a0.hd;
    const float nw0 = nw && (int)threadIdx.x < nw_n ? nw[threadIdx.x] : 0.0f;
    pdl_wait();
    if (b < n_comp) {
        compressor<RowT>(a0.c[b], xs, nw0, a0.n_rot, a0.eps, a0.rp, pos0);
        if (NT > 1) {
            __syncthreads(); /* the frontier as the first token left it */
            compressor<RowT>(a1.c[b], xs, nw0, a1.n_rot, a1.eps, a1.rp, pos1);
        }
    } else if (z1) {
        prep_block(a1, lb, xs, nw0, pos1, act1);
    } else {
        prep_block(a0, lb, xs, nw0, pos0, act0);
    }
}

/* Frontier rows to 0 / −∞ (session reset). */
__global__ void k_frontier_clear(float *kv, float *sc, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    kv[i] = 0.0f;
    sc[i] = -INFINITY;
}

/* score_c = Σ_h max(0, q_h·k_c)·w_h for the visible f32 indexer rows of
 * exact mode, one warp per row (f16 rows: idx_scores, on tensor cores);
 * nothing to do while every visible row is attended anyway. */
__global__ void k_idx_scores(const float *iq, const float *iw, const float *rows, int ihd, int nih, int top_k,
                             float *scores, const step_io *io) {
    pdl_trigger();
    const int visible = (io->pos + 1) / 4; /* step_io: the host's, read before the wait */
    pdl_wait();
    if (visible <= top_k) return;
    int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    int n_warps = (gridDim.x * blockDim.x) >> 5;
    for (int c = warp; c < visible; c += n_warps) {
        const float *k = rows + (size_t)c * ihd;
        float score = 0.0f;
        for (int h = 0; h < nih; h++) {
            const float *q = iq + (size_t)h * ihd;
            float d = 0.0f;
            for (int i = lane; i < ihd; i += 32) d += q[i] * k[i];
            d = warp_sum_f(d);
            score += (d > 0.0f ? d : 0.0f) * iw[h];
        }
        if (lane == 0) scores[c] = score;
    }
}

/* One token's buffers of k_idx_topk. */
struct topk_tok {
    const float *scores;
    int *sel, *n_sel;
    const step_io *io;
};

/* The indexer's top_k of the visible rows as ascending row indices
 * (block_topk_ascending); n_sel = -1 while every visible row is attended.
 * Nothing at positions where more than max_rows rows are visible (the grid
 * top-k's, cuda_topk_grid.cuh, when the step holds both). A block a token
 * (NT: blockIdx.x's). */
template <int NT>
__global__ void __launch_bounds__(1024, 1) k_idx_topk(const topk_tok t0, const topk_tok t1, int top_k, int max_rows) {
    const bool z1 = NT > 1 && blockIdx.x != 0;
    const float *scores = z1 ? t1.scores : t0.scores;
    int *sel = z1 ? t1.sel : t0.sel, *n_sel = z1 ? t1.n_sel : t0.n_sel;
    const step_io *io = z1 ? t1.io : t0.io;
    pdl_trigger();
    const int visible = (io->pos + 1) / 4; /* step_io: the host's, read before the wait */
    pdl_wait();
    __shared__ topk_smem sm;
    if (visible > max_rows) return;
    if (visible <= top_k) {
        if (threadIdx.x == 0) *n_sel = -1;
        return;
    }
    block_topk_ascending(scores, visible, top_k, sel, &sm);
    if (threadIdx.x == 0) *n_sel = top_k;
}

/* Attention with a sink for one decode token (model-spec §5.5 steps 7-8),
 * split over blocks like flash decoding. Rows: the raw window (oldest
 * first), then the visible compressed rows or the indexer's selection; all
 * heads read the same rows (one KV head). k_attention_split's block (g, s)
 * takes the ATT_HG heads of group g and the row chunks s, s+S, ... of
 * ATT_RC rows, staged in shared memory by cp.async (the next chunk loads
 * while this one is used), and keeps per head a running max m, sum l and
 * weighted row sum o: for a chunk, thread (warp h, lane r) takes the dot of
 * head h with row r (in index order), warp h the chunk's max, the weights
 * exp(s − m) and their sum; then thread j rescales its pair (2j, 2j+1) of
 * every head's o and adds the chunk's rows in order. It writes (m, l) and o
 * to the split's slot. k_attention_combine adds the busy splits in split
 * order with the sink in the denominator and rotates the result back at
 * the query position; given out_q it also writes the head as out_a's Q8_0
 * input (a warp per 32 values, k_quantize_q8_0's arithmetic), which out_a's
 * blocks then only copy. Sums are regrouped against the CPU (chunks, then
 * splits), so results differ from it by rounding only. Rows in shared
 * memory are ATT_PAD bytes longer than a row so that the lanes of a
 * quarter warp read 16 bytes of 8 different rows without bank conflicts. */
enum { ATT_HG = 8, ATT_RC = 32, ATT_TPB = 256, ATT_PAD = 16 };

/* The rows one token attends: n_raw window rows from position lo, then
 * n_comp compressed rows (pick: the indexer's selection, or NULL: all). */
struct att_span {
    int lo, n_raw, n_comp;
    const int *pick;
};

__device__ __forceinline__ att_span att_rows(int p, int lo0, int n_swa, int ratio, const int *sel, const int *n_sel) {
    att_span a;
    a.lo = p - n_swa + 1 < lo0 ? lo0 : p - n_swa + 1; /* lo0: step_io.win_lo */
    a.n_raw = p - a.lo + 1;
    a.n_comp = 0;
    a.pick = NULL;
    if (ratio) {
        a.n_comp = (p + 1) / ratio;
        if (n_sel && *n_sel >= 0) {
            a.n_comp = *n_sel;
            a.pick = sel;
        }
    }
    return a;
}

/* Row r of the span: own, where not NULL, is the token's own raw row (the
 * last window row: the verify step's later token keeps it aside). */
template <typename RowT>
__device__ __forceinline__ const RowT *att_row(int r, const att_span &a, int n_swa, const RowT *ring,
                                               const RowT *comp, int hd, const RowT *own) {
    if (own && r == a.n_raw - 1) return own;
    return r < a.n_raw ? ring + (size_t)((a.lo + r) % n_swa) * hd
                       : comp + (size_t)(a.pick ? a.pick[r - a.n_raw] : r - a.n_raw) * hd;
}

/* One token's buffers of the attention's split kernels (k_attention_split,
 * k_attention_split_tc: NT tokens, blockIdx.z the token) and of its
 * combination (comb_tok, k_attention_combine). */
struct att_tok {
    const float *q;
    const int *sel, *n_sel;
    const step_io *io;
    float *part_o;
    float2 *part_ml;
    hc_split_args hs;
    const void *own; /* att_row's */
};
struct comb_tok {
    const float *part_o;
    const float2 *part_ml;
    const int *sel, *n_sel;
    const float2 *cs;
    const step_io *io;
    float *out;
    uint8_t *out_q;
};

/* Shared bytes of k_attention_split: q of hg heads, their chunk weights,
 * two row buffers. */
static inline size_t att_split_smem(int hg, int hd, size_t row_bytes) {
    return (size_t)hg * hd * 4 + (size_t)hg * ATT_RC * 4 + 2 * (size_t)ATT_RC * (hd * row_bytes + ATT_PAD);
}

/* q·row over hd values (8 f16 or 4 f32 per 16-byte step, in index order). */
__device__ __forceinline__ float att_dot(const float *q, const __half *row, int hd) {
    float d = 0.0f;
    for (int i = 0; i < hd; i += 8) {
        uint4 u = *(const uint4 *)(row + i);
        float4 qa = *(const float4 *)(q + i), qb = *(const float4 *)(q + i + 4);
        float2 k0 = __half22float2(*(const __half2 *)&u.x), k1 = __half22float2(*(const __half2 *)&u.y);
        float2 k2 = __half22float2(*(const __half2 *)&u.z), k3 = __half22float2(*(const __half2 *)&u.w);
        d += qa.x * k0.x; d += qa.y * k0.y; d += qa.z * k1.x; d += qa.w * k1.y;
        d += qb.x * k2.x; d += qb.y * k2.y; d += qb.z * k3.x; d += qb.w * k3.y;
    }
    return d;
}

__device__ __forceinline__ float att_dot(const float *q, const float *row, int hd) {
    float d = 0.0f;
    for (int i = 0; i < hd; i += 4) {
        float4 k = *(const float4 *)(row + i), x = *(const float4 *)(q + i);
        d += x.x * k.x; d += x.y * k.y; d += x.z * k.z; d += x.w * k.w;
    }
    return d;
}

/* True in the attention's extra column of blocks, whose block (last, 0)
 * does the attention HC's split. */
__device__ __forceinline__ bool att_hc_column(const hc_split_args &hs) {
    if (blockIdx.x != gridDim.x - 1) return false;
    if (blockIdx.y == 0) hc_split_block(hs);
    return true;
}

/* One chunk of a head's online softmax by its warp, lane r holding row
 * r's score sc (valid: a row of the chunk): the chunk's maximum, the new
 * running maximum *m_run, the rescale alpha of what came before, the
 * running sum *l_run; returns the row's weight e^(sc − m). */
__device__ __forceinline__ float att_online_softmax(float sc, bool valid, float *m_run, float *l_run, float *alpha) {
    float cm = sc;
    for (int off = 16; off > 0; off >>= 1) cm = fmaxf(cm, __shfl_xor_sync(0xffffffffu, cm, off));
    const float m_new = fmaxf(*m_run, cm);
    *alpha = expf(*m_run - m_new);
    const float pr = valid ? expf(sc - m_new) : 0.0f;
    *l_run = *l_run * *alpha + warp_sum_f(pr);
    *m_run = m_new;
    return pr;
}

/* Chunk c's rows into dst (rows rs bytes apart), by the whole block:
 * blockDim/ATT_RC threads a row, each finding the row (an indexer pick is a
 * load) once and then copying every such 16 bytes of it; with zero_tail,
 * the rows past the last visible one are zeros. One cp.async group. */
template <typename RowT>
__device__ __forceinline__ void att_stage_chunk(unsigned char *dst, int c, const att_span &a, int nr, const RowT *ring,
                                                const RowT *comp, int n_swa, int hd, int rs, bool zero_tail,
                                                const RowT *own) {
    const int tpr = (int)blockDim.x / ATT_RC, chunks16 = hd * (int)sizeof(RowT) / 16;
    const int r = (int)threadIdx.x / tpr, r0 = c * ATT_RC;
    if (r < ATT_RC && r0 + r < nr) {
        const unsigned char *src = (const unsigned char *)att_row(r0 + r, a, n_swa, ring, comp, hd, own);
        for (int k = threadIdx.x % tpr; k < chunks16; k += tpr) cp_async16(dst + (size_t)r * rs + 16 * k, src + 16 * k);
    } else if (r < ATT_RC && zero_tail) {
        for (int k = threadIdx.x % tpr; k < chunks16; k += tpr) *(uint4 *)(dst + (size_t)r * rs + 16 * k) = make_uint4(0, 0, 0, 0);
    }
    cp_async_commit();
}

/* A token's buffers in the split kernels: blockIdx.z's of NT. */
#define ATT_TOKEN(RowT)                                                                              \
    const bool z1 = NT > 1 && blockIdx.z != 0;                                                       \
    const float *q = z1 ? t1.q : t0.q;                                                               \
    const int *sel = z1 ? t1.sel : t0.sel, *n_sel = z1 ? t1.n_sel : t0.n_sel;                         \
    const step_io *io = z1 ? t1.io : t0.io;                                                          \
    float *part_o = z1 ? t1.part_o : t0.part_o;                                                      \
    float2 *part_ml = z1 ? t1.part_ml : t0.part_ml;                                                  \
    const RowT *own = (const RowT *)(z1 ? t1.own : t0.own)

template <typename RowT, int NT>
__global__ void __launch_bounds__(ATT_TPB) k_attention_split(const att_tok t0, const att_tok t1, const RowT *ring,
                                                             int n_swa, const RowT *comp, int ratio, int hd, int hg) {
    ATT_TOKEN(RowT);
    pdl_trigger();
    const int pos = io->pos, lo0 = io->win_lo; /* the host writes step_io before the step: read before the wait */
    pdl_wait();
    if (att_hc_column(z1 ? t1.hs : t0.hs)) return;
    extern __shared__ __align__(16) unsigned char att_raw[];
    const int rs = hd * (int)sizeof(RowT) + ATT_PAD;
    float *qs = (float *)att_raw, *ps = qs + hg * hd;
    unsigned char *buf = (unsigned char *)(ps + hg * ATT_RC);
    __shared__ float alpha_sh[ATT_HG];
    const att_span a = att_rows(pos, lo0, n_swa, ratio, sel, n_sel);
    const int nr = a.n_raw + a.n_comp, n_chunks = (nr + ATT_RC - 1) / ATT_RC;
    const int g = blockIdx.x, s = blockIdx.y, S = gridDim.y, h0 = g * hg;
    if (s >= n_chunks) return;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    auto load = [&](int c, int b) {
        att_stage_chunk(buf + (size_t)b * ATT_RC * rs, c, a, nr, ring, comp, n_swa, hd, rs, false, own);
    };
    {
        /* q's first loads in flight before the first chunk is requested */
        const float4 *q4 = (const float4 *)(q + (size_t)h0 * hd);
        const int n4 = hg * hd / 4;
        float4 v[4];
        load_batch<4>(q4, tid, blockDim.x, n4, v);
        load(s, 0);
        for (int i0 = tid;;) {
#pragma unroll
            for (int k = 0; k < 4; k++)
                if (i0 + k * (int)blockDim.x < n4) ((float4 *)qs)[i0 + k * blockDim.x] = v[k];
            i0 += 4 * blockDim.x;
            if (i0 >= n4) break;
            load_batch<4>(q4, i0, blockDim.x, n4, v);
        }
    }
    const float scale = 1.0f / sqrtf((float)hd);
    float m_run = -INFINITY, l_run = 0.0f; /* head `warp`'s, in every lane of that warp */
    float2 o[ATT_HG];
#pragma unroll
    for (int h = 0; h < ATT_HG; h++) o[h] = make_float2(0.0f, 0.0f);
    const int j = tid; /* this thread's pair of every head's output */
    int b = 0;
    for (int c = s; c < n_chunks; c += S, b ^= 1) {
        cp_async_wait<0>();
        __syncthreads(); /* chunk c staged; the other buffer is free */
        if (c + S < n_chunks) load(c + S, b ^ 1);
        const unsigned char *rows = buf + (size_t)b * ATT_RC * rs;
        const int nrow = nr - c * ATT_RC < ATT_RC ? nr - c * ATT_RC : ATT_RC;
        if (warp < hg) {
            float sc = -INFINITY;
            if (lane < nrow) sc = scale * att_dot(qs + warp * hd, (const RowT *)(rows + (size_t)lane * rs), hd);
            float alpha;
            const float pr = att_online_softmax(sc, lane < nrow, &m_run, &l_run, &alpha);
            ps[warp * ATT_RC + lane] = pr;
            if (lane == 0) alpha_sh[warp] = alpha;
        }
        __syncthreads();
        if (2 * j < hd) {
#pragma unroll
            for (int h = 0; h < ATT_HG; h++)
                if (h < hg) {
                    o[h].x *= alpha_sh[h];
                    o[h].y *= alpha_sh[h];
                }
            for (int r = 0; r < nrow; r++) {
                float2 v = row_pair((const RowT *)(rows + (size_t)r * rs), j);
#pragma unroll
                for (int h = 0; h < ATT_HG; h++)
                    if (h < hg) {
                        float p = ps[h * ATT_RC + r];
                        o[h].x += p * v.x;
                        o[h].y += p * v.y;
                    }
            }
        }
    }
    if (2 * j < hd)
#pragma unroll
        for (int h = 0; h < ATT_HG; h++)
            if (h < hg) ((float2 *)(part_o + ((size_t)(h0 + h) * S + s) * hd))[j] = o[h];
    if (warp < hg && lane == 0) part_ml[(size_t)(h0 + warp) * S + s] = make_float2(m_run, l_run);
}

/* k_attention_split for f16 rows on tensor cores (the official numerics;
 * exact mode keeps the f32 kernel above): the same blocks, chunks, online
 * softmax and outputs, with q·row and the weighted row sums as mma.sync
 * m16n8k16 products. The block's ≤ 8 heads are the A rows (padded to 16);
 * q and the weights p enter as f16 hi + lo (x = hi + lo to ~22 bits, as
 * the prefill's split attention), rows exactly as stored; f32
 * accumulation; the padding rows of q and p are left as they are (their
 * product rows are never read). Scores: warp w takes rows 8(w&3).. of the chunk over half
 * of the head dims (w>>2), the halves added in order; weights: warp w the
 * dims 64w.. (hd ≤ 512, a multiple of 64). The f32 kernel spent ~5.6 M
 * instructions a launch on these two loops (ncu, 43-layer step, ctx 4096).
 * Shared: q hi/lo [16][hd+8] f16, the chunk's partial scores [2][8][32]
 * f32, p as hi/lo [16][40] f16, two row buffers. */
enum { ATT_TC_QLD = 8, ATT_TC_PLD = ATT_RC + 8 };
static inline size_t att_split_tc_smem(int hd) {
    return 2 * 16 * (size_t)(hd + ATT_TC_QLD) * 2 + 2 * 8 * ATT_RC * 4 + 2 * 16 * ATT_TC_PLD * 2 +
           2 * (size_t)ATT_RC * (hd * 2 + ATT_PAD);
}

template <int NT>
__global__ void __launch_bounds__(ATT_TPB) k_attention_split_tc(const att_tok t0, const att_tok t1, const __half *ring,
                                                                int n_swa, const __half *comp, int ratio, int hd,
                                                                int hg) {
    ATT_TOKEN(__half);
    pdl_trigger();
    const int pos = io->pos, lo0 = io->win_lo; /* the host writes step_io before the step: read before the wait */
    extern __shared__ __align__(16) unsigned char att_raw[];
    const int qld = hd + ATT_TC_QLD, rs = hd * 2 + ATT_PAD;
    __half *qh = (__half *)att_raw, *ql = qh + 16 * qld;
    float *sc = (float *)(ql + 16 * qld); /* [2][8][ATT_RC] */
    __half *ph = (__half *)(sc + 2 * 8 * ATT_RC), *pl = ph + 16 * ATT_TC_PLD;
    unsigned char *buf = (unsigned char *)(pl + 16 * ATT_TC_PLD);
    __shared__ float alpha_sh[ATT_HG];
    const int g = blockIdx.x, s = blockIdx.y, S = gridDim.y, h0 = g * hg;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    /* Without the indexer's selection the rows follow from the position
     * alone, and all but two were written by earlier steps: the first
     * chunk is requested before the wait, and after it only the rows this
     * step wrote are staged again (the token's raw row, and the compressed
     * row its window closes; the verify step's later token: the earlier
     * token's too). */
    const bool early = !n_sel && blockIdx.x != gridDim.x - 1;
    att_span a = att_rows(pos, lo0, n_swa, ratio, sel, NULL);
    int nr = a.n_raw + a.n_comp, n_chunks = (nr + ATT_RC - 1) / ATT_RC;
    /* rows past the last are zeros: weight 0 times a stale value could be NaN */
    auto load = [&](int c, int b) {
        att_stage_chunk(buf + (size_t)b * ATT_RC * rs, c, a, nr, ring, comp, n_swa, hd, rs, true, own);
    };
    if (early && s < n_chunks) load(s, 0);
    pdl_wait();
    if (att_hc_column(z1 ? t1.hs : t0.hs)) return;
    if (early) {
        if (s >= n_chunks) return;
        /* the rows this step wrote, by the threads that staged them (their
         * earlier copies waited for first: copies to one place are not
         * ordered) */
        const int tpr = (int)blockDim.x / ATT_RC, r = tid / tpr, row = s * ATT_RC + r;
        /* the later token's: the earlier token's rows too (one launch
         * prepared both: it may still run) */
        const int first = z1 ? 2 : 1;
        const bool emitted = ratio && ((pos + 1) % ratio == 0 || (z1 && pos % ratio == 0));
        if (r < ATT_RC && ((row >= a.n_raw - first && row < a.n_raw) || (emitted && row == nr - 1))) {
            cp_async_wait<0>();
            const unsigned char *src = (const unsigned char *)att_row(row, a, n_swa, ring, comp, hd, own);
            for (int k = tid % tpr; k < hd * 2 / 16; k += tpr) cp_async16(buf + (size_t)r * rs + 16 * k, src + 16 * k);
        }
        cp_async_commit();
    } else {
        a = att_rows(pos, lo0, n_swa, ratio, sel, n_sel);
        nr = a.n_raw + a.n_comp;
        n_chunks = (nr + ATT_RC - 1) / ATT_RC;
        if (s >= n_chunks) return;
        load(s, 0);
    }
    /* q of the hg heads as f16 hi + lo, four values a thread at a time, the
     * loads in flight together. The A rows past hg (padding) are never
     * written: they only make product rows that are never read. */
    {
        const float4 *q4 = (const float4 *)(q + (size_t)h0 * hd);
        const int n4 = hg * hd / 4;
        for (int i0 = tid; i0 < n4; i0 += 4 * (int)blockDim.x) {
            float4 v[4];
            load_batch<4>(q4, i0, blockDim.x, n4, v);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const int i = i0 + k * (int)blockDim.x;
                if (i >= n4) break;
                const int h = 4 * i / hd, d = 4 * i % hd;
                const float f[4] = {v[k].x, v[k].y, v[k].z, v[k].w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const __half hi = __float2half_rn(f[e]);
                    qh[h * qld + d + e] = hi;
                    ql[h * qld + d + e] = __float2half_rn(f[e] - __half2float(hi));
                }
            }
        }
    }
    const float scale = 1.0f / sqrtf((float)hd);
    float m_run = -INFINITY, l_run = 0.0f; /* head `warp`'s, in every lane of that warp */
    const int ntw = 64 * warp < hd ? 8 : 0; /* this warp's 8-dim tiles of the output: dims 64·warp.. */
    float o[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    int b = 0;
    for (int c = s; c < n_chunks; c += S, b ^= 1) {
        cp_async_wait<0>();
        __syncthreads(); /* chunk c staged (and q, p's padding); the other buffer is free */
        if (c + S < n_chunks) load(c + S, b ^ 1);
        const unsigned char *rows = buf + (size_t)b * ATT_RC * rs;
        const int nrow = nr - c * ATT_RC < ATT_RC ? nr - c * ATT_RC : ATT_RC;
        {   /* scores of rows 8·nt.. over dims kh·hd/2.. */
            const int nt = warp & 3, kh = warp >> 2, d_end = (kh + 1) * hd / 2;
            float chi[4] = {0, 0, 0, 0}, clo[4] = {0, 0, 0, 0};
            for (int d0 = kh * hd / 2; d0 < d_end; d0 += 16) {
                uint32_t ah[4], al[4], bb[2];
                const int ar = lane & 15, ac = d0 + (lane >> 4) * 8;
                pa_ldm_x4(ah, qh + ar * qld + ac);
                pa_ldm_x4(al, ql + ar * qld + ac);
                pa_ldm_x2(bb, rows + (size_t)(nt * 8 + (lane & 7)) * rs + 2 * (d0 + ((lane >> 3) & 1) * 8));
                pa_mma(chi, ah, bb);
                pa_mma(clo, al, bb);
            }
            const int hr = lane >> 2, rc = nt * 8 + (lane & 3) * 2;
            sc[(kh * 8 + hr) * ATT_RC + rc] = chi[0] + clo[0];
            sc[(kh * 8 + hr) * ATT_RC + rc + 1] = chi[1] + clo[1];
        }
        __syncthreads();
        if (warp < hg) {
            float sv = -INFINITY;
            if (lane < nrow) sv = scale * (sc[warp * ATT_RC + lane] + sc[(8 + warp) * ATT_RC + lane]);
            float alpha;
            const float pr = att_online_softmax(sv, lane < nrow, &m_run, &l_run, &alpha);
            const __half hi = __float2half_rn(pr);
            ph[warp * ATT_TC_PLD + lane] = hi;
            pl[warp * ATT_TC_PLD + lane] = __float2half_rn(pr - __half2float(hi));
            if (lane == 0) alpha_sh[warp] = alpha;
        }
        __syncthreads();
        {   /* o[h][d] = o·alpha[h] + Σ_r p[h][r]·row_r[d] for this warp's dims */
            const float al8 = alpha_sh[lane >> 2];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                o[j][0] *= al8;
                o[j][1] *= al8;
            }
#pragma unroll
            for (int k0 = 0; k0 < ATT_RC; k0 += 16) {
                uint32_t ah[4], al[4];
                const int ar = lane & 15, ac = k0 + (lane >> 4) * 8;
                pa_ldm_x4(ah, ph + ar * ATT_TC_PLD + ac);
                pa_ldm_x4(al, pl + ar * ATT_TC_PLD + ac);
#pragma unroll
                for (int j = 0; j < 8; j += 2) {
                    if (j >= ntw) break;
                    uint32_t bv[4]; /* two 8-dim tiles: rows k0.. of dims 64·warp + 8j.. */
                    pa_ldm_x4_t(bv, rows + (size_t)(k0 + (lane & 15)) * rs + 2 * (64 * warp + 8 * j + (lane >> 4) * 8));
                    pa_mma(o[j], ah, bv);
                    pa_mma(o[j], al, bv);
                    pa_mma(o[j + 1], ah, bv + 2);
                    pa_mma(o[j + 1], al, bv + 2);
                }
            }
        }
    }
    /* this lane's head lane/4 (rows 8.. of the fragments are padding) */
    const int hr = lane >> 2;
    if (hr < hg)
#pragma unroll
        for (int j = 0; j < 8; j++)
            if (j < ntw)
                *(float2 *)(part_o + ((size_t)(h0 + hr) * S + s) * hd + 64 * warp + 8 * j + (lane & 3) * 2) =
                    make_float2(o[j][0], o[j][1]);
    if (warp < hg && lane == 0) part_ml[(size_t)(h0 + warp) * S + s] = make_float2(m_run, l_run);
}

/* out[h] = (Σ_s o_s·e^(m_s−M)) / (e^(sink−M) + Σ_s l_s·e^(m_s−M)) over the
 * busy splits in order, M the largest of the sink and the m_s, rotated back
 * at the query position; one block per head, a pair per thread. Shared:
 * hd outputs, then the splits' m (turned into weights) and l. */
enum { COMB_EARLY = 16 };
template <int NT>
__global__ void k_attention_combine(const comb_tok t0, const comb_tok t1, int S, int n_swa, int ratio,
                                    const float *sinks, int hd, int n_rot) {
    const bool z1 = NT > 1 && blockIdx.z != 0; /* the token: blockIdx.z's of NT */
    const float *part_o = z1 ? t1.part_o : t0.part_o;
    const float2 *part_ml = z1 ? t1.part_ml : t0.part_ml;
    const int *sel = z1 ? t1.sel : t0.sel, *n_sel = z1 ? t1.n_sel : t0.n_sel;
    const float2 *cs = z1 ? t1.cs : t0.cs;
    const step_io *io = z1 ? t1.io : t0.io;
    float *out = z1 ? t1.out : t0.out;
    uint8_t *out_q = z1 ? t1.out_q : t0.out_q;
    pdl_trigger();
    const int h = blockIdx.x, pos = io->pos, lo0 = io->win_lo; /* step_io: the host's, read before the wait */
    const float sink = sinks[h];              /* a weight: read before the wait, off thread 0's chain */
    pdl_wait();
    const float2 rv = rope_own(cs, n_rot); /* the step's table: beside the splits' loads, not after the sums */
    /* this thread's first COMB_EARLY splits' pair, requested before the
     * busy count and the weights are known (stale past busy, never used):
     * their latency overlaps the (m, l) loads and thread 0's weights */
    const float2 *po = (const float2 *)(part_o + (size_t)h * S * hd);
    const int j0 = threadIdx.x;
    float2 ve[COMB_EARLY];
    if (2 * j0 < hd) load_batch<COMB_EARLY>(po + j0, 0, hd / 2, S * (hd / 2) - j0, ve);
    /* and split threadIdx.x's (m, l), beside the indexer's n_sel */
    const float2 ml0 = (int)threadIdx.x < S ? part_ml[(size_t)h * S + threadIdx.x] : make_float2(0.0f, 0.0f);
    extern __shared__ float os[];
    const att_span a = att_rows(pos, lo0, n_swa, ratio, sel, n_sel);
    const int n_chunks = (a.n_raw + a.n_comp + ATT_RC - 1) / ATT_RC, busy = n_chunks < S ? n_chunks : S;
    float *wsplit = os + hd, *lsplit = wsplit + S;
    __shared__ float inv_s;
    for (int s = threadIdx.x; s < busy; s += blockDim.x) {
        const float2 ml = s == (int)threadIdx.x ? ml0 : part_ml[(size_t)h * S + s];
        wsplit[s] = ml.x;
        lsplit[s] = ml.y;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float M = sink;
        for (int s = 0; s < busy; s++) M = fmaxf(M, wsplit[s]);
        float den = expf(sink - M);
        for (int s = 0; s < busy; s++) {
            float w = expf(wsplit[s] - M);
            den += lsplit[s] * w;
            wsplit[s] = w;
        }
        inv_s = 1.0f / den;
    }
    __syncthreads();
    const float inv = inv_s;
    for (int j = threadIdx.x; 2 * j < hd; j += blockDim.x) {
        float2 t = make_float2(0.0f, 0.0f);
        int s0 = 0;
        if (j == j0) {
#pragma unroll
            for (int k = 0; k < COMB_EARLY; k++)
                if (k < busy) {
                    t.x += ve[k].x * wsplit[k];
                    t.y += ve[k].y * wsplit[k];
                }
            s0 = COMB_EARLY;
        }
        for (; s0 < busy; s0 += 8) {
            float2 v[8];
            load_batch<8>(po + j, s0 * (hd / 2), hd / 2, busy * (hd / 2) - j, v);
#pragma unroll
            for (int k = 0; k < 8; k++)
                if (s0 + k < busy) {
                    t.x += v[k].x * wsplit[s0 + k];
                    t.y += v[k].y * wsplit[s0 + k];
                }
        }
        os[2 * j] = t.x * inv;
        os[2 * j + 1] = t.y * inv;
    }
    block_rope_own(os, hd, n_rot, rv, cs, true);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) out[(size_t)h * hd + i] = os[i];
    if (out_q)
        for (int b = threadIdx.x >> 5; b < hd / 32; b += blockDim.x >> 5)
            warp_q8_0_block(os[32 * b + (threadIdx.x & 31)], out_q + 36 * ((size_t)h * (hd / 32) + b), threadIdx.x & 31);
}

/* Router (model-spec §5.8 steps 2-4, moe.c route_task): probabilities
 * sqrt(softplus(logit)); experts from tid2eid[token] or the top n_used of
 * prob + bias (ties → lower index); weights = renormalised unbiased probs
 * × scale. One block. */
/* The shared expert's gate and up rows (gu: the ff gate values, then the
 * ff up values) through moe.c's clamped SwiGLU of weight 1 and quantised
 * as Q8_0 for its down product (act), as the MoE kernels and
 * k_quantize_q8_0 do it: a warp per 32 values. */
struct shared_mid_args {
    const float *gu;
    float *mid;   /* the f32 values too (ws.smid, as the MoE kernels leave it) */
    uint8_t *act; /* NULL: nothing to do */
    int ff;
    float clamp;
};

/* The routed experts' input x quantised to Q8_K (ra.nb blocks of 256 into
 * ra.act; act NULL: nothing to do). */
struct routed_act_args {
    const float *x;
    uint8_t *act;
    int nb;
};

/* Blocks of k_route after block 1: the shared expert's SwiGLU (8 warps a
 * block, one Q8_0 block of 32 a warp), then the routed input's Q8_K
 * quantisation (one block of 256 a warp). */
__host__ __device__ static inline int route_shared_blocks(const shared_mid_args &sm) { return sm.act ? (sm.ff / 32 + 7) / 8 : 0; }
static inline int route_blocks(const hc_split_args &hs, const shared_mid_args &sm, const routed_act_args &ra) {
    const int after = route_shared_blocks(sm) + (ra.act ? (ra.nb + 7) / 8 : 0);
    return after || hs.mix ? 2 + after : 1;
}

/* Block 0: the router (block_route), then ids and weights published in
 * *stamp (ds4_cuda_ids_src: the routed gate/up and down request their
 * first weights as soon as they are). With the FFN's HC split (hs.mix not
 * NULL) block 1 runs it, with sm.act the blocks after that the shared
 * expert's SwiGLU and quantisation, and with ra.act the next ones the
 * routed experts' input as Q8_K (which their gate/up then only copies:
 * each of its ~400 blocks quantising x itself was ~a quarter of its
 * samples in ncu): work that needs only the products of the normed x, in
 * the launch already on the chain (each was a launch of its own on the
 * side stream: H200, 43 layers, the shared expert cost 12.6 us a layer
 * there). route_blocks() gives the grid.
 *
 * NT tokens (1, or the verify step's 2): a row of blocks a token
 * (blockIdx.y), each with its token's buffers (route_io); a later token's
 * block 0 publishes its stamp only once the token before has published its
 * own, so the last token's stamp says every token's ids are written. */
struct route_io {
    const float *logits;
    const step_io *io;
    int32_t *ids;
    float *weights;
    uint32_t *stamp;
    hc_split_args hs;
    shared_mid_args sm;
    routed_act_args ra;
};

template <int NT>
__global__ void k_route(const route_io r0, const route_io r1, const float *bias, const int32_t *tid2eid, int ne,
                        int nu, float wscale, int wnorm) {
    pdl_trigger();
    const route_io &r = NT == 1 || blockIdx.y == 0 ? r0 : r1;
    const float *logits = r.logits;
    int32_t *ids = r.ids;
    float *weights = r.weights;
    const hc_split_args &hs = r.hs;
    const shared_mid_args &sm = r.sm;
    const routed_act_args &ra = r.ra;
    const int32_t token = r.io->token; /* step_io: the host's, read before the wait */
    const uint32_t serial = r.io->serial;
    pdl_wait();
    extern __shared__ float prob[]; /* 2·ne */
    __shared__ int chosen[DS4_CUDA_MAX_SEL];
    const int n_sm = route_shared_blocks(sm), lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    if (blockIdx.x == 0) {
        block_route(logits, bias, tid2eid, token, ne, nu, wscale, wnorm, prob, chosen, ids, weights);
        if (NT > 1 && blockIdx.y > 0) stamp_await(r0.stamp, serial); /* thread 0's */
        if (threadIdx.x == 0) stamp_publish(r.stamp, serial); /* block_route's thread 0 wrote them */
    } else if (blockIdx.x == 1) {
        if (hs.mix) hc_split_block(hs);
    } else if ((int)blockIdx.x < 2 + n_sm) {
        for (int b = (blockIdx.x - 2) * nw + (threadIdx.x >> 5); b < sm.ff / 32; b += n_sm * nw) {
            const int i = 32 * b + lane;
            const float v = ds4_swiglu(sm.gu[i], sm.gu[sm.ff + i], sm.clamp, 1.0f);
            sm.mid[i] = v;
            warp_q8_0_block(v, sm.act + 36 * b, lane);
        }
    } else {
        const int b = (blockIdx.x - 2 - n_sm) * nw + (threadIdx.x >> 5);
        if (b < ra.nb) warp_q8_K_block(ra.x, ra.act, (uint32_t)b, lane);
    }
}

/* The FFN HC's split (hc_split_block) as its own one-warp kernel, on the
 * shared expert's side stream: off the router's critical path. */
__global__ void k_hc_split(hc_split_args hs) {
    pdl_trigger();
    pdl_wait();
    hc_split_block(hs);
}

/* y = x (f32 weights are not in the matvec kernels: plain dot per warp). */
__global__ void k_matvec_f32(const float *w, uint32_t n_rows, uint32_t n_in, const float *x, float *y) {
    pdl_trigger();
    pdl_wait();
    uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (warp >= n_rows) return;
    const float *row = w + (size_t)warp * n_in;
    float d = 0.0f;
    for (uint32_t i = lane; i < n_in; i += 32) d += row[i] * x[i];
    d = warp_sum_f(d);
    if (lane == 0) y[warp] = d;
}

/* Plain-float experts (F16 or F32 weights, f32 activations; test models and
 * --type f16 files): one warp per (selected expert, row). gate_up: mid[k][r]
 * = silu(min(g, c))·clamp(u, ±c)·w[k] (moe.c swiglu_row); down: out[o] =
 * Σ_k in order down_{ids[k]}[o]·mid[k] (+ add[o]). */
__device__ float plain_dot(const void *w, int f16, size_t row, uint32_t n_in, const float *x, int lane) {
    float d = 0.0f;
    if (f16) {
        const __half *r = (const __half *)w + row * n_in;
        for (uint32_t i = lane; i < n_in; i += 32) d += __half2float(r[i]) * x[i];
    } else {
        const float *r = (const float *)w + row * n_in;
        for (uint32_t i = lane; i < n_in; i += 32) d += r[i] * x[i];
    }
    return warp_sum_f(d);
}

__global__ void k_moe_plain_gate_up(const void *gate, const void *up, int f16, uint32_t n_in, uint32_t n_ff,
                                    uint32_t n_expert, const int32_t *ids, const float *weights, uint32_t n_sel,
                                    float clamp, const float *x, float *mid) {
    pdl_trigger();
    pdl_wait();
    uint32_t item = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (item >= n_sel * n_ff) return;
    uint32_t k = item / n_ff, r = item % n_ff, e = (uint32_t)ids[k];
    float v = 0.0f;
    if (e < n_expert) {
        size_t row = (size_t)e * n_ff + r;
        float g = plain_dot(gate, f16, row, n_in, x, lane), u = plain_dot(up, f16, row, n_in, x, lane);
        v = ds4_swiglu(g, u, clamp, weights[k]);
    }
    if (lane == 0) mid[item] = v;
}

__global__ void k_moe_plain_down(const void *down, int f16, uint32_t n_ff, uint32_t n_out, uint32_t n_expert,
                                 const int32_t *ids, uint32_t n_sel, const float *mid, const float *add, float *out) {
    pdl_trigger();
    pdl_wait();
    uint32_t o = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
    if (o >= n_out) return;
    float acc = 0.0f;
    for (uint32_t k = 0; k < n_sel; k++) {
        uint32_t e = (uint32_t)ids[k];
        if (e < n_expert) acc += plain_dot(down, f16, (size_t)e * n_out + o, n_ff, mid + (size_t)k * n_ff, lane);
    }
    if (lane == 0) out[o] = add ? acc + add[o] : acc;
}

#endif
