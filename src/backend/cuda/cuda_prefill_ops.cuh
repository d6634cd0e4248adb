/* cuda_prefill_ops.cuh — device code of the batched prefill (cuda_prefill.cu):
 * the decode step's per-token operations (cuda_step_ops.cuh) restated for a
 * chunk of T tokens at positions pos0 .. pos0+T-1, the token index in the
 * grid: embedding, hyper-connection pre/post with Sinkhorn, RMSNorms, RoPE,
 * the FP8 KV and Hadamard+FP4 round-trips, the compressors (every emission
 * of the chunk pooled in parallel from the chunk's projections and the
 * frontier as it was before the chunk), the indexer's scores and top-k per
 * token, attention per (token, head) over the raw window (ring rows before
 * the chunk, the chunk's own rows after) plus the compressed rows, the
 * router, plain-float GEMM/MoE for F16/F32 weights, the output collapse.
 *
 * Numerics are the CPU reference's (src/engine: forward.c, attention.c,
 * compressor.c, moe.c) with the same float operations in the same order
 * wherever one thread owns a value, as in the decode step; sums across
 * threads are tree sums. Compiled with -fmad=false.
 * The small __device__ helpers are cuda_device_math.cuh's, shared with the
 * decode step.
 * Included once, by cuda_prefill.cu. */
#ifndef DS4_CUDA_PREFILL_OPS_CUH
#define DS4_CUDA_PREFILL_OPS_CUH

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "cuda_async.cuh"
#include "cuda_device_math.cuh"
#include "cuda_engine_impl.cuh"
#include "cuda_formats.cuh"
#include "cuda_idx_scores.cuh"
#include "cuda_hc_split.cuh"

/* ---------------------------------------------------------------- helpers */

/* ------------------------------------------------------------- kernels */

/* H[t] = token t's embedding row in all HC streams; grid (D/256, T). */
__global__ void pf_embed(const void *embd, int f16, uint32_t D, const int32_t *tokens, float *H) {
    uint32_t d = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (d >= D) return;
    size_t off = (size_t)tokens[t] * D + d;
    float v = f16 ? __half2float(((const __half *)embd)[off]) : ((const float *)embd)[off];
    float *Ht = H + (size_t)t * HC_N * D;
    for (int h = 0; h < HC_N; h++) Ht[(size_t)h * D + d] = v;
}

/* Rows of n values: y = x/rms(x) (· w); one block per row. */
__global__ void pf_rmsnorm(const float *x, size_t ldx, float *y, size_t ldy, const float *w, int n, float eps) {
    __shared__ double sh[32];
    const float *xr = x + blockIdx.x * ldx;
    float *yr = y + blockIdx.x * ldy;
    double ss = 0.0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += (double)xr[i] * (double)xr[i];
    float s = ds4_rms_scale(block_sum(ss, sh), n, eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) yr[i] = w ? xr[i] * s * w[i] : xr[i] * s;
}

/* HC pre, step 1-2: mix[t][j] = (fn_j·H_t)·(1/rms(H_t)); PF_HC_TOK tokens a
 * block (fn read once for them), fn F16 or F32 [MIX][n]. */
enum { PF_HC_TOK = 4 };
__global__ void __launch_bounds__(256) pf_hc_mix(const void *fn, int f16, const float *H, uint32_t n, int T,
                                                 float eps, float *mix) {
    __shared__ double red[8][PF_HC_TOK][HC_MIX + 1];
    int t0 = blockIdx.x * PF_HC_TOK;
    float dot[PF_HC_TOK][HC_MIX];
    double ss[PF_HC_TOK];
#pragma unroll
    for (int k = 0; k < PF_HC_TOK; k++) {
        ss[k] = 0.0;
#pragma unroll
        for (int j = 0; j < HC_MIX; j++) dot[k][j] = 0.0f;
    }
    for (uint32_t c = threadIdx.x; c < n / 2; c += blockDim.x) {
        float2 h[PF_HC_TOK];
#pragma unroll
        for (int k = 0; k < PF_HC_TOK; k++) {
            h[k] = t0 + k < T ? ((const float2 *)(H + (size_t)(t0 + k) * n))[c] : make_float2(0.0f, 0.0f);
            ss[k] += (double)h[k].x * (double)h[k].x + (double)h[k].y * (double)h[k].y;
        }
#pragma unroll
        for (int j = 0; j < HC_MIX; j++) {
            float2 w = f16 ? __half22float2(((const __half2 *)fn)[(size_t)j * (n / 2) + c])
                           : ((const float2 *)fn)[(size_t)j * (n / 2) + c];
#pragma unroll
            for (int k = 0; k < PF_HC_TOK; k++) dot[k][j] += w.x * h[k].x + w.y * h[k].y;
        }
    }
    int wp = threadIdx.x >> 5, l = threadIdx.x & 31;
#pragma unroll
    for (int k = 0; k < PF_HC_TOK; k++)
#pragma unroll
        for (int j = 0; j <= HC_MIX; j++) {
            double v = j < HC_MIX ? (double)dot[k][j] : ss[k];
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            if (l == 0) red[wp][k][j] = v;
        }
    __syncthreads();
    for (int i = threadIdx.x; i < PF_HC_TOK * HC_MIX; i += blockDim.x) {
        int k = i / HC_MIX, j = i % HC_MIX;
        if (t0 + k >= T) continue;
        double tot = 0.0, s2 = 0.0;
        for (int w = 0; w < 8; w++) tot += red[w][k][j], s2 += red[w][k][HC_MIX];
        mix[(size_t)(t0 + k) * HC_MIX + j] = (float)tot * ds4_rms_scale(s2, (int)n, eps);
    }
}

/* HC pre, step 3-4 per token (one warp each, 8 a block). */
__global__ void pf_hc_split(const float *mix, const float *scale, const float *base, int iters, float hc_eps, int T,
                            float *pre_out, float *post_out, float *comb_out) {
    int t = blockIdx.x * 8 + (threadIdx.x >> 5);
    if (t >= T) return;
    hc_split_warp(mix + (size_t)t * HC_MIX, scale, base, iters, hc_eps, pre_out + (size_t)t * HC_N,
                  post_out + (size_t)t * HC_N, comb_out + (size_t)t * HC_N * HC_N);
}

/* x_t = Σ pre·H_t (its values in order of the streams), a_t = norm(x_t)·w,
 * by a block for nt ≤ 2 consecutive tokens (pre, H, a at the first): at
 * most V4 groups of four values of each a thread (D ≤ blockDim.x · 4·V4:
 * PF_HC_MAX_D, D % 4 == 0), every load issued before the sums, the sums of
 * squares in double, one block reduction for both. x itself is not kept.
 * sh: 64 doubles. */
enum { PF_HC_MAX_D = 4096 };
template <int V4>
__device__ void hc_x_block(const float (*pre)[HC_N], const float *H, uint32_t D, const float *norm_w, float rms_eps,
                           float *a, double *sh, int nt) {
    float4 wv[V4], xv[2][V4];
    const float4 zero = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (int i = 0; i < V4; i++) {
        const uint32_t d = 4 * (threadIdx.x + i * blockDim.x);
        wv[i] = d < D ? *(const float4 *)(norm_w + d) : zero;
    }
    double ss[2] = {0.0, 0.0};
#pragma unroll
    for (int k = 0; k < 2; k++) {
        float4 hv[HC_N][V4];
#pragma unroll
        for (int i = 0; i < V4; i++) {
            const uint32_t d = 4 * (threadIdx.x + i * blockDim.x);
#pragma unroll
            for (int h = 0; h < HC_N; h++)
                hv[h][i] = k < nt && d < D ? *(const float4 *)(H + ((size_t)k * HC_N + h) * D + d) : zero;
        }
#pragma unroll
        for (int i = 0; i < V4; i++) {
            float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
            for (int h = 0; h < HC_N; h++) {
                const float4 v = hv[h][i];
                x[0] += pre[k][h] * v.x, x[1] += pre[k][h] * v.y, x[2] += pre[k][h] * v.z, x[3] += pre[k][h] * v.w;
            }
            xv[k][i] = make_float4(x[0], x[1], x[2], x[3]);
#pragma unroll
            for (int e = 0; e < 4; e++) ss[k] += (double)x[e] * (double)x[e];
        }
    }
    const int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = blockDim.x >> 5;
#pragma unroll
    for (int k = 0; k < 2; k++)
        for (int o = 16; o > 0; o >>= 1) ss[k] += __shfl_xor_sync(0xffffffffu, ss[k], o);
    __syncthreads(); /* sh free */
    if (l == 0) sh[w] = ss[0], sh[32 + w] = ss[1];
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 2; k++) {
        if (k >= nt) break;
        double t = 0.0;
        for (int i = 0; i < nw; i++) t += sh[32 * k + i];
        const float s = ds4_rms_scale(t, (int)D, rms_eps);
#pragma unroll
        for (int i = 0; i < V4; i++) {
            const uint32_t d = 4 * (threadIdx.x + i * blockDim.x);
            const float4 x = xv[k][i], wn = wv[i];
            if (d < D)
                *(float4 *)(a + (size_t)k * D + d) = make_float4(x.x * s * wn.x, x.y * s * wn.y, x.z * s * wn.z,
                                                                 x.w * s * wn.w);
        }
    }
}

/* hc_x_block for token blockIdx.x, 512 threads. */
__global__ void __launch_bounds__(512) pf_hc_x(const float *pre, const float *H, uint32_t D, const float *norm_w,
                                               float rms_eps, float *a) {
    __shared__ double sh[64];
    const int t = blockIdx.x;
    hc_x_block<PF_HC_MAX_D / 2048>((const float(*)[HC_N])(pre + (size_t)t * HC_N), H + (size_t)t * HC_N * D, D, norm_w,
                                  rms_eps, a + (size_t)t * D, sh, 1);
}

/* HC post of one value: post[dst]·y + Σ_src comb[src][dst]·old[src]. */
__device__ __forceinline__ float hc_post_value(const float *pt, const float *ct, float yv, const float *old, int dst) {
    float acc = pt[dst] * yv;
    for (int src = 0; src < HC_N; src++) acc += ct[src * HC_N + dst] * old[src];
    return acc;
}

/* HC post: H_t[dst] = post[dst]·y_t + Σ_src comb[src][dst]·H_t[src]; grid (D/256, T). */
__global__ void pf_hc_post(float *H, const float *y, const float *post, const float *comb, uint32_t D) {
    uint32_t d = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (d >= D) return;
    float *Ht = H + (size_t)t * HC_N * D;
    const float *pt = post + (size_t)t * HC_N, *ct = comb + (size_t)t * HC_N * HC_N;
    float yv = y[(size_t)t * D + d];
    float old[HC_N];
    for (int h = 0; h < HC_N; h++) old[h] = Ht[(size_t)h * D + d];
    for (int dst = 0; dst < HC_N; dst++) Ht[(size_t)dst * D + d] = hc_post_value(pt, ct, yv, old, dst);
}

/* The HC boundary between two sublayers for 16 tokens a block (256
 * threads), F16 fn, D a multiple of 64 up to PF_HC_MAX_D:
 *  1. in chunks of 64 dims: with POST, the post of the sublayer just run
 *     (H ← post·y + combᵀ·H, hc_post_value, in place: thread (token tid/16,
 *     4 dims) owns its values in all four streams); each chunk's H (and y)
 *     staged by cp.async PF_HCB_NS - 1 chunks ahead, each thread reading
 *     back only its own copies. The new H of the chunk as hi + lo f16
 *     (~22 bits) into shared memory (double-buffered), from which the mix
 *     of the next pre, mix[t][j] = (fn_j·H_t)·(1/rms(H_t)), runs on tensor
 *     cores: warp w takes the chunk's k steps 2w, 2w+1 (16 dims of one
 *     stream each, fn exact from L2), each summed by a fresh mma and added
 *     to f32 accumulators; the warps' sums added in order in double, Σ H²
 *     per thread in double;
 *  2. the split per token (hc_split_warp): pre in shared memory, post and
 *     comb over the ones just read (each block reads its tokens' first);
 *  3. a = norm(Σ pre·H)·w for two tokens at a time (hc_x_block), H read
 *     again.
 * One launch instead of pf_hc_post, the mix, pf_hc_split and pf_hc_x: H is
 * read twice and written once instead of read three times and written
 * once. Dynamic shared memory: pf_hcb_smem(). */
enum { PF_HCB_TOK = 16, PF_HCB_CH = 64, PF_HCB_AS = HC_N * PF_HCB_CH + 8, PF_HCB_NS = 3 };
static inline size_t pf_hcb_smem(void) {
    return (size_t)2 * 2 * PF_HCB_TOK * PF_HCB_AS * 2 + (size_t)PF_HCB_NS * (HC_N + 1) * PF_HCB_TOK * PF_HCB_CH * 4;
}
template <bool POST>
__global__ void __launch_bounds__(256) pf_hc_boundary(float *H, const float *y, float *post, float *comb,
                                                      const __half *fn, uint32_t D, int T, float eps,
                                                      const float *scale, const float *base, int iters, float hc_eps,
                                                      const float *norm_w, float *a) {
    extern __shared__ __align__(16) unsigned char hcb_raw[];
    /* the chunks' A tiles, [buffer][hi, lo][token][stream·64 + dim]; after the loop the warps' mix sums */
    typedef __half a_tile[2][PF_HCB_TOK][PF_HCB_AS];
    static_assert(2 * sizeof(a_tile) >= 8 * PF_HCB_TOK * HC_MIX * sizeof(float), "the warps' sums fit over the A tiles");
    static_assert(HC_N * PF_HCB_CH / 16 == 2 * 8, "a chunk is two k steps for each of the 8 warps");
    a_tile *As = (a_tile *)hcb_raw;
    float(*red)[PF_HCB_TOK][HC_MIX] = (float(*)[PF_HCB_TOK][HC_MIX])hcb_raw;
    /* staged chunks, [stage][stream, y][token][dim] */
    typedef float stage[HC_N + 1][PF_HCB_TOK][PF_HCB_CH];
    stage *St = (stage *)(hcb_raw + 2 * sizeof(a_tile));
    __shared__ double red_ss[PF_HCB_TOK], sh[64];
    __shared__ float mixs[PF_HCB_TOK][HC_MIX], pres[PF_HCB_TOK][HC_N];
    __shared__ float posts[PF_HCB_TOK][HC_N], combs[PF_HCB_TOK][HC_N * HC_N];
    const int t0 = blockIdx.x * PF_HCB_TOK, tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2,
              q4 = lane & 3;
    const uint32_t n = HC_N * D, n_ch = D / PF_HCB_CH;
    /* this thread's token and dims in a chunk */
    const int k = tid >> 4, dl = 4 * (tid & 15);
    const bool valid = t0 + k < T;
    float *Hk = H + (size_t)(valid ? t0 + k : 0) * n;
    const float *yk = y + (size_t)(valid ? t0 + k : 0) * D;
    auto stage_chunk = [&](uint32_t c) {
        if (c < n_ch && valid) {
            float(*dst)[PF_HCB_TOK][PF_HCB_CH] = St[c % PF_HCB_NS];
            const uint32_t d = c * PF_HCB_CH + dl;
#pragma unroll
            for (int h = 0; h < HC_N; h++) cp_async16(&dst[h][k][dl], Hk + (size_t)h * D + d);
            if (POST) cp_async16(&dst[HC_N][k][dl], yk + d);
        }
        cp_async_commit(); /* empty past the end: the group count stays the same */
    };
#pragma unroll
    for (int c = 0; c < PF_HCB_NS - 1; c++) stage_chunk(c);
    if (POST) {
        for (int i = tid; i < PF_HCB_TOK * HC_N * (HC_N + 1); i += blockDim.x) {
            const int kt = i / (HC_N * (HC_N + 1)), j = i % (HC_N * (HC_N + 1)), t = t0 + kt < T ? t0 + kt : T - 1;
            if (j < HC_N) posts[kt][j] = post[(size_t)t * HC_N + j];
            else combs[kt][j - HC_N] = comb[(size_t)t * HC_N * HC_N + j - HC_N];
        }
        __syncthreads();
    }
    float acc[3][4];
#pragma unroll
    for (int j = 0; j < 3; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;
    double ss = 0.0;
    /* fn's B fragments of a chunk (the warp's two k steps × 3 n-tiles), loaded a chunk ahead */
    auto fn_frags = [&](uint32_t c, uint32_t (&b)[2][3][2]) {
#pragma unroll
        for (int st = 0; st < 2; st++) {
            const int ks = 2 * warp + st, h = ks / (PF_HCB_CH / 16), kk = ks % (PF_HCB_CH / 16) * 16;
#pragma unroll
            for (int j = 0; j < 3; j++) {
                const __half *fr = fn + (size_t)(j * 8 + g) * n + (size_t)h * D + c * PF_HCB_CH + kk + 2 * q4;
                b[st][j][0] = *(const uint32_t *)fr;
                b[st][j][1] = *(const uint32_t *)(fr + 8);
            }
        }
    };
    uint32_t fb[2][3][2], fb_next[2][3][2];
    fn_frags(0, fb);
    for (uint32_t c = 0; c < n_ch; c++) {
        stage_chunk(c + PF_HCB_NS - 1);
        if (c + 1 < n_ch) fn_frags(c + 1, fb_next);
        cp_async_wait<PF_HCB_NS - 1>(); /* this thread's copies of chunk c are in */
        const int buf = c & 1;
        float(*src)[PF_HCB_TOK][PF_HCB_CH] = St[c % PF_HCB_NS];
        float v[HC_N][4];
#pragma unroll
        for (int h = 0; h < HC_N; h++) {
            const float4 x = valid ? *(const float4 *)&src[h][k][dl] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            v[h][0] = x.x, v[h][1] = x.y, v[h][2] = x.z, v[h][3] = x.w;
        }
        if (POST && valid) {
            const float4 y4 = *(const float4 *)&src[HC_N][k][dl];
            const float yv[4] = {y4.x, y4.y, y4.z, y4.w};
#pragma unroll
            for (int e = 0; e < 4; e++) {
                float old[HC_N];
#pragma unroll
                for (int h = 0; h < HC_N; h++) old[h] = v[h][e];
#pragma unroll
                for (int h = 0; h < HC_N; h++) v[h][e] = hc_post_value(posts[k], combs[k], yv[e], old, h);
            }
#pragma unroll
            for (int h = 0; h < HC_N; h++)
                *(float4 *)(Hk + (size_t)h * D + c * PF_HCB_CH + dl) = make_float4(v[h][0], v[h][1], v[h][2], v[h][3]);
        }
#pragma unroll
        for (int h = 0; h < HC_N; h++) {
            __align__(8) __half hi[4], lo[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                ss += (double)v[h][e] * (double)v[h][e];
                hi[e] = __float2half_rn(v[h][e]);
                lo[e] = __float2half_rn(v[h][e] - __half2float(hi[e]));
            }
            *(uint2 *)&As[buf][0][k][h * PF_HCB_CH + dl] = *(const uint2 *)hi;
            *(uint2 *)&As[buf][1][k][h * PF_HCB_CH + dl] = *(const uint2 *)lo;
        }
        __syncthreads();
#pragma unroll
        for (int st = 0; st < 2; st++) {
            const int ks = 2 * warp + st, h = ks / (PF_HCB_CH / 16), kk = ks % (PF_HCB_CH / 16) * 16;
            uint32_t ah[4], al[4];
            const int ar = (lane & 7) + ((lane >> 3) & 1) * 8, ac = h * PF_HCB_CH + kk + (lane >> 4) * 8;
            pa_ldm_x4(ah, &As[buf][0][ar][ac]);
            pa_ldm_x4(al, &As[buf][1][ar][ac]);
#pragma unroll
            for (int j = 0; j < 3; j++) {
                float cc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                pa_mma(cc, ah, fb[st][j]);
                pa_mma(cc, al, fb[st][j]);
                acc[j][0] += cc[0], acc[j][1] += cc[1], acc[j][2] += cc[2], acc[j][3] += cc[3];
            }
        }
#pragma unroll
        for (int st = 0; st < 2; st++)
#pragma unroll
            for (int j = 0; j < 3; j++) fb[st][j][0] = fb_next[st][j][0], fb[st][j][1] = fb_next[st][j][1];
    }
    for (int o = 8; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o); /* the token's 16 threads */
    if ((tid & 15) == 0) red_ss[k] = ss;
    __syncthreads(); /* every warp's products are done with As */
#pragma unroll
    for (int j = 0; j < 3; j++) {
        int col = j * 8 + 2 * q4;
        red[warp][g][col] = acc[j][0], red[warp][g][col + 1] = acc[j][1];
        red[warp][g + 8][col] = acc[j][2], red[warp][g + 8][col + 1] = acc[j][3];
    }
    __syncthreads();
    for (int i = tid; i < PF_HCB_TOK * HC_MIX; i += blockDim.x) {
        int r = i / HC_MIX, j = i % HC_MIX;
        double tot = 0.0;
        for (int w = 0; w < 8; w++) tot += red[w][r][j];
        mixs[r][j] = (float)tot * ds4_rms_scale(red_ss[r], (int)n, eps);
    }
    __syncthreads();
    for (int kt = warp; kt < PF_HCB_TOK && t0 + kt < T; kt += 8)
        hc_split_warp(mixs[kt], scale, base, iters, hc_eps, pres[kt], post + (size_t)(t0 + kt) * HC_N,
                      comb + (size_t)(t0 + kt) * HC_N * HC_N);
    __syncthreads(); /* pre; H's new values (the block's own writes) */
    for (int kt = 0; kt < PF_HCB_TOK && t0 + kt < T; kt += 2)
        hc_x_block<PF_HC_MAX_D / 1024>(pres + kt, H + (size_t)(t0 + kt) * n, D, norm_w, eps, a + (size_t)(t0 + kt) * D,
                                      sh, t0 + kt + 1 < T ? 2 : 1);
}

/* Plain-float products: Y[t][r] = W_r · X_t for W F16 or F32 (rows of n_in),
 * f32 accumulation; 64×64 tiles of (token, row), 256 threads × 4×4. */
enum { PG_TILE = 64, PG_K = 16 };
__global__ void __launch_bounds__(256) pf_gemm_plain(const void *W, int f16, uint32_t n_rows, uint32_t n_in,
                                                     const float *X, size_t ldx, int T, float *Y, size_t ldy) {
    __shared__ float xs[PG_K][PG_TILE + 1], ws[PG_K][PG_TILE + 1];
    int t0 = blockIdx.y * PG_TILE, r0 = blockIdx.x * PG_TILE;
    int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (uint32_t k0 = 0; k0 < n_in; k0 += PG_K) {
        for (int i = threadIdx.x; i < PG_K * PG_TILE; i += 256) {
            int kk = i % PG_K, rr = i / PG_K;
            uint32_t k = k0 + kk;
            int t = t0 + rr;
            xs[kk][rr] = (t < T && k < n_in) ? X[(size_t)t * ldx + k] : 0.0f;
            uint32_t r = r0 + rr;
            float w = 0.0f;
            if (r < n_rows && k < n_in)
                w = f16 ? __half2float(((const __half *)W)[(size_t)r * n_in + k]) : ((const float *)W)[(size_t)r * n_in + k];
            ws[kk][rr] = w;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < PG_K; kk++) {
            float xv[4], wv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) xv[i] = xs[kk][ty * 4 + i], wv[i] = ws[kk][tx * 4 + i];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += xv[i] * wv[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int t = t0 + ty * 4 + i;
        if (t >= T) continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint32_t r = r0 + tx * 4 + j;
            if (r < n_rows) Y[(size_t)t * ldy + r] = acc[i][j];
        }
    }
}

/* X (n rows of `in` f32, stride ldx) as hi + lo f16 rows of `in`:
 * hi = f16(x), lo = f16(x - hi), so hi + lo keeps ~22 bits of x. Eight
 * values a thread (in and ldx multiples of 8 and 4, X 16-byte aligned):
 * a value a thread ran at a third of memory speed. */
__global__ void pf_split_f16(const float *X, size_t ldx, uint32_t in, int n, __half *xh, __half *xl /* NULL: hi only */) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, t = i / (in / 8), k = 8 * (i % (in / 8));
    if (t >= (size_t)n) return;
    const float4 a = *(const float4 *)(X + t * ldx + k), b = *(const float4 *)(X + t * ldx + k + 4);
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    __align__(16) __half hi[8], lo[8];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        hi[j] = __float2half_rn(v[j]);
        lo[j] = __float2half_rn(v[j] - __half2float(hi[j]));
    }
    *(uint4 *)(xh + t * in + k) = *(const uint4 *)hi;
    if (xl) *(uint4 *)(xl + t * in + k) = *(const uint4 *)lo;
}

/* F16 weights on tensor cores: Y[t][r] = W_r · (hi_t + lo_t), two f16
 * products with f32 accumulation (W exact, X to ~22 bits). Block tile 128
 * tokens × 128 rows, k-steps of 32 in a 3-stage cp.async pipeline; 8 warps
 * as 4 × 2, each 32 tokens × 64 rows. n_in a multiple of 32, rows 16-byte
 * aligned. */
enum { HG_BM = 128, HG_BN = 128, HG_BK = 32, HG_S = HG_BK + 8, HG_STAGES = 3 };
static inline size_t pf_gemm_f16_smem() { return (size_t)HG_STAGES * (2 * HG_BM + HG_BN) * HG_S * 2; }

__global__ void __launch_bounds__(256) pf_gemm_f16(const __half *W, uint32_t n_rows, uint32_t n_in, const __half *xh,
                                                   const __half *xl, int T, float *Y, size_t ldy) {
    extern __shared__ __align__(16) unsigned char hg_raw[];
    __half *sm = (__half *)hg_raw; /* per stage: A hi [BM][S], A lo [BM][S], B [BN][S] */
    const int stage_h = (2 * HG_BM + HG_BN) * HG_S;
    int t0 = blockIdx.y * HG_BM, r0 = blockIdx.x * HG_BN;
    int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wm = warp >> 1, wn = warp & 1;
    auto load = [&](int kt, int st) {
        __half *A = sm + st * stage_h, *Al = A + HG_BM * HG_S, *B = Al + HG_BM * HG_S;
        uint32_t k0 = (uint32_t)kt * HG_BK;
        for (int i = tid; i < HG_BM * (HG_BK / 8); i += 256) {
            int r = i / (HG_BK / 8), c = (i % (HG_BK / 8)) * 8, t = t0 + r;
            __half *dh = A + r * HG_S + c, *dl = Al + r * HG_S + c;
            if (t < T) {
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(pa_smem(dh)),
                             "l"(xh + (size_t)t * n_in + k0 + c));
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(pa_smem(dl)),
                             "l"(xl + (size_t)t * n_in + k0 + c));
            } else {
                *(uint4 *)dh = make_uint4(0, 0, 0, 0);
                *(uint4 *)dl = make_uint4(0, 0, 0, 0);
            }
        }
        for (int i = tid; i < HG_BN * (HG_BK / 8); i += 256) {
            int r = i / (HG_BK / 8), c = (i % (HG_BK / 8)) * 8;
            uint32_t row = r0 + r;
            __half *d = B + r * HG_S + c;
            if (row < n_rows)
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(pa_smem(d)),
                             "l"(W + (size_t)row * n_in + k0 + c));
            else
                *(uint4 *)d = make_uint4(0, 0, 0, 0);
        }
    };
    float acc[2][8][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[i][j][0] = acc[i][j][1] = acc[i][j][2] = acc[i][j][3] = 0.0f;
    int n_k = (int)(n_in / HG_BK);
    for (int s = 0; s < HG_STAGES - 1; s++) {
        if (s < n_k) load(s, s);
        asm volatile("cp.async.commit_group;");
    }
    for (int kt = 0; kt < n_k; kt++) {
        asm volatile("cp.async.wait_group %0;" ::"n"(HG_STAGES - 2));
        __syncthreads();
        int nk = kt + HG_STAGES - 1;
        if (nk < n_k) load(nk, nk % HG_STAGES);
        asm volatile("cp.async.commit_group;");
        const __half *A = sm + (kt % HG_STAGES) * stage_h, *Al = A + HG_BM * HG_S, *B = Al + HG_BM * HG_S;
#pragma unroll
        for (int kk = 0; kk < HG_BK; kk += 16) {
            uint32_t ah[2][4], al[2][4];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                int off = (wm * 32 + i * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * HG_S + kk + (lane >> 4) * 8;
                pa_ldm_x4(ah[i], A + off);
                pa_ldm_x4(al[i], Al + off);
            }
#pragma unroll
            for (int j = 0; j < 8; j++) {
                uint32_t b[2];
                pa_ldm_x2(b, B + (wn * 64 + j * 8 + (lane & 7)) * HG_S + kk + ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int i = 0; i < 2; i++) {
                    pa_mma(acc[i][j], ah[i], b);
                    pa_mma(acc[i][j], al[i], b);
                }
            }
        }
    }
    asm volatile("cp.async.wait_group 0;");
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int t = t0 + wm * 32 + i * 16 + (lane >> 2) + (e >> 1) * 8;
                uint32_t r = r0 + wn * 64 + j * 8 + (lane & 3) * 2 + (e & 1);
                if (t < T && r < n_rows) Y[(size_t)t * ldy + r] = acc[i][j][e];
            }
}

/* Per token: weighted RMSNorm, RoPE, FP8 round-trip, f16 → kvc[t]. */
__global__ void pf_kv_prepare(const float *kv, const float *norm_w, int hd, int n_rot, float eps, rope_dev rp,
                              int pos0, __half *kvc) {
    extern __shared__ float xs[];
    __shared__ double sh[32];
    __shared__ float sc[64];
    int t = blockIdx.x;
    double ss = 0.0;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        xs[i] = kv[(size_t)t * hd + i];
        ss += (double)xs[i] * (double)xs[i];
    }
    float s = ds4_rms_scale(block_sum(ss, sh), hd, eps);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) xs[i] = xs[i] * s * norm_w[i];
    block_rope(xs, hd, pos0 + t, rp, false);
    block_fp8_roundtrip(xs, hd - n_rot, sc);
    for (int i = threadIdx.x; i < hd; i += blockDim.x) kvc[(size_t)t * hd + i] = __float2half_rn(xs[i]);
}

/* The chunk's last rows into the raw window ring: kvc rows first..T-1. */
__global__ void pf_ring_put(const __half *kvc, int hd, int first, int pos0, __half *ring, int n_swa) {
    int t = first + blockIdx.x;
    __half *dst = ring + (size_t)((pos0 + t) % n_swa) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) dst[i] = kvc[(size_t)t * hd + i];
}

/* ---- compressor (compressor.c compressor_run) over a chunk ----
 *
 * A frontier column's values depend only on which position wrote it last,
 * so every emission of the chunk is pooled in parallel: candidate c of the
 * window w emitting at position (w+1)·R-1 is, with coff 2, position
 * (w-1)·R + c (lane A, column j) for c < R and w·R + c-R (lane B, column
 * hd + j) after; with coff 1, position w·R + c. A position of the chunk
 * gives the chunk's projections (score + APE, as the frontier stores it),
 * an earlier one the frontier saved before the chunk (old). */
struct pf_comp {
    const float *kv, *sc; /* chunk projections, rows of ld */
    size_t ld;
    const float *ape;
    const float *old_kv, *old_sc; /* frontier before the chunk, rows of W */
    int R, coff, hd, W, pos0;
};

__device__ __forceinline__ void pf_cand(const pf_comp &c, int64_t pos, int col, float *kv, float *sc) {
    if (pos >= c.pos0) {
        size_t t = (size_t)(pos - c.pos0);
        int slot = (int)(pos % c.R);
        *kv = c.kv[t * c.ld + col];
        *sc = c.sc[t * c.ld + col] + c.ape[(size_t)slot * c.W + col];
        return;
    }
    int64_t wp = pos >= 0 ? pos / c.R : -((-pos + c.R - 1) / c.R);
    int slot = (int)(pos - wp * c.R), w_cur = c.pos0 / c.R;
    int row = -1;
    if (wp == w_cur) row = (c.coff == 2 ? c.R : 0) + slot;
    else if (c.coff == 2 && wp == w_cur - 1) row = slot;
    if (row < 0) {
        *kv = 0.0f;
        *sc = -INFINITY;
        return;
    }
    *kv = c.old_kv[(size_t)row * c.W + col];
    *sc = c.old_sc[(size_t)row * c.W + col];
}

enum { PF_CB = 8 }; /* window candidates a batch (pool_window) */

/* One block per emission e (window w = pos0/R + e): pool, RMSNorm, RoPE at
 * the window start, FP8 (attention) or QAT (indexer), f16 row w. */
__global__ void pf_comp_emit(pf_comp c, const float *norm_w, int n_rot, float eps, rope_dev rp, int indexer,
                             __half *rows) {
    extern __shared__ float out[];
    __shared__ double sh[32];
    __shared__ float sc[64];
    int64_t w = c.pos0 / c.R + blockIdx.x;
    int R = c.R, n_cand = c.coff * R, hd = c.hd;
    double ss = 0.0;
    /* each value pooled over its window's candidates PF_CB at a time
     * (pool_window: a ratio-128 window's 2 × 128 loads a value one after
     * another took 0.28 ms a layer) */
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        auto cand = [&](int k, bool want_score) {
            const int64_t pos = c.coff == 2 ? (k < R ? (w - 1) * R + k : w * R + k - R) : w * R + k;
            float kv, sc;
            pf_cand(c, pos, c.coff == 2 && k >= R ? hd + j : j, &kv, &sc);
            return want_score ? sc : kv;
        };
        const float v = pool_window<PF_CB>(n_cand, [&](int k) { return cand(k, true); },
                                           [&](int k) { return cand(k, false); });
        out[j] = v;
        ss += (double)v * (double)v;
    }
    float s = ds4_rms_scale(block_sum(ss, sh), hd, eps);
    for (int j = threadIdx.x; j < hd; j += blockDim.x) out[j] = out[j] * s * norm_w[j];
    block_rope(out, hd, w * R, rp, false);
    if (indexer)
        block_indexer_qat(out, hd, sc);
    else
        block_fp8_roundtrip(out, hd - n_rot, sc);
    __half *dst = rows + (size_t)w * hd;
    for (int j = threadIdx.x; j < hd; j += blockDim.x) dst[j] = __float2half_rn(out[j]);
}

/* The frontier after the chunk, as T decode steps leave it: one thread per
 * value (row r, column k) of st (coff·R rows of W). */
__global__ void pf_comp_state(pf_comp c, int T, float *st_kv, float *st_sc) {
    int i = blockIdx.x * blockDim.x + threadIdx.x, R = c.R, W = c.W;
    if (i >= c.coff * R * W) return;
    int r = i / W, k = i % W;
    int64_t p_last = (int64_t)c.pos0 + T - 1, wl = p_last / R;
    bool emit_end = (p_last + 1) % R == 0;
    bool emitted = (c.pos0 + T) / R - c.pos0 / R > 0;
    float kv = 0.0f, sc = -INFINITY;
    bool lane_a = c.coff == 2 && r < R;
    int slot = c.coff == 2 ? r % R : r;
    if (emit_end) {
        if (lane_a) pf_cand(c, wl * R + slot, k, &kv, &sc);
    } else if (lane_a) {
        pf_cand(c, (wl - 1) * R + slot, k, &kv, &sc);
    } else {
        int64_t pos = wl * R + slot;
        if (pos <= p_last)
            pf_cand(c, pos, k, &kv, &sc);
        else if (!emitted)
            kv = c.old_kv[i], sc = c.old_sc[i];
    }
    st_kv[i] = kv;
    st_sc[i] = sc;
}

/* ---- indexer (compressor.c indexer_select) ---- */

/* Query heads of the active tokens: a block per token, its RoPE (cos, sin)
 * pairs computed once, then a warp per head (the next head's values loaded
 * while this one is done): RoPE at pos, QAT; warp 0 scales the token's
 * head weights by 1/√(ihd·nih). Lane l holds values V·l .. V·l+V-1
 * (ihd = 32·V, V ≥ 2, so a RoPE pair stays in a lane); the same operations
 * as block_rope + block_indexer_qat (warp_indexer_qat), so the same bits —
 * a block of ihd threads a head spent its time in barriers (0.88 ms of an
 * 8k chunk's ratio-4 layer on an H200). */
enum { PF_IQ_WARPS = 8 };
template <int V>
__global__ void __launch_bounds__(PF_IQ_WARPS * 32) pf_idx_query(float *iq, float *iw, int nih, rope_dev rp,
                                                                   int pos_first) {
    constexpr int IHD = 32 * V;
    __shared__ float2 cs[IHD / 2];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, t = blockIdx.x;
    for (int k = threadIdx.x; k < rp.n_rot / 2; k += blockDim.x) cs[k] = rope_cs(k, pos_first + t, rp);
    __syncthreads();
    float nx[V];
    auto fetch = [&](int head) {
        const float *qh = iq + ((size_t)t * nih + head) * IHD + V * lane;
#pragma unroll
        for (int v = 0; v < V; v += 2) *(float2 *)&nx[v] = *(const float2 *)(qh + v);
    };
    if (warp < nih) fetch(warp);
    for (int head = warp; head < nih; head += PF_IQ_WARPS) {
        float x[V];
#pragma unroll
        for (int v = 0; v < V; v++) x[v] = nx[v];
        if (head + PF_IQ_WARPS < nih) fetch(head + PF_IQ_WARPS);
        warp_idx_query<V>(x, lane, rp.n_rot, cs, false);
        float *qh = iq + ((size_t)t * nih + head) * IHD + V * lane;
#pragma unroll
        for (int v = 0; v < V; v += 2) *(float2 *)(qh + v) = make_float2(x[v], x[v + 1]);
    }
    if (warp == 0) {
        const float denom = sqrtf((float)(IHD * nih));
        for (int h = lane; h < nih; h += 32) iw[(size_t)t * nih + h] = iw[(size_t)t * nih + h] / denom;
    }
}

/* Top-k of token t's visible scores as ascending row indices (ties → lower
 * index; block_topk_ascending), one block of 1024 per token;
 * n_sel[t] = -1 while every visible row is attended. */
__global__ void __launch_bounds__(1024, 1) pf_idx_topk(const float *scores_all, size_t lds, int top_k, int pos0,
                                                    int *sel_all, int *n_sel) {
    __shared__ topk_smem sm;
    int t = blockIdx.x, visible = (pos0 + t + 1) / 4;
    if (visible <= top_k) {
        if (threadIdx.x == 0) n_sel[t] = -1;
        return;
    }
    const float *scores = scores_all + (size_t)t * lds;
    int *sel = sel_all + (size_t)t * top_k;
    block_topk_ascending(scores, visible, top_k, sel, &sm);
    if (threadIdx.x == 0) n_sel[t] = top_k;
}

/* ---- attention: a block per (token, group of 16·MB heads), on tensor cores ----
 * Rows of token t (position p): raw positions lo..p (lo = max(0, p-n_swa+1))
 * from the ring (before pos0) or the chunk's rows kvc, then the visible
 * compressed rows or the indexer's selection (staged in shared memory
 * first: read from global memory, each tile's row copies waited on an
 * index load — 9% of the kernel's time). Rows stream through shared
 * memory in tiles of R (cp.async, double-buffered); scores S = Q·Kᵀ and
 * the output P·V are f16 mma.sync with f32 accumulation, K = V exact (f16
 * rows). With SPLIT Q and P are each split as hi + lo f16 (two products)
 * so they keep ~22 bits, as the prefill's products do for F16 weights and
 * with --quality; without, they are rounded to f16 once, as the Q8_0
 * products on f16 tensor cores (cuda_gemm16.h) that make q and read the
 * output round theirs: a score within ~2^-11 of Σ|q·k|, a weight within
 * 2^-11 of itself, half the mma and half Q's shared memory (the prefill's
 * attention 3.68 → 3.09 ms at 4096 tokens × 640 rows, H200). The softmax is online (running max from the sink, rescaled sums);
 * the output × 1/den, rotated back at p. Heads padded to 16s. q is q_b's
 * output: the block norms and rotates its heads as it loads them. The output
 * is f32 (out), or, with out16, what the Q8_0 output projection on f16
 * tensor cores reads (cuda_gemm16.h): each 32-value block quantised as the
 * CPU does and d·q rounded to f16 — the f32 rows are never written.
 *
 * Work split: the block's 4·MB warps are (m-tile of 16 heads, quarter of
 * the head dims). For S each warp sums its quarter of the dims (A = Q from
 * shared memory, B = the tile's rows) and the four partial sums are added
 * in order by the softmax threads (8 per head, R/8 columns each, running
 * max and sum in registers); for P·V each warp owns its quarter of the
 * output dims for its 16 heads (64 accumulators a thread for hd 512).
 * Shared rows (Q, K tiles) are XOR-swizzled by 16-byte chunks so ldmatrix
 * is free of bank conflicts. The prefill runs MB = 2, R = 16 (32 heads,
 * ~109 KB at hd 512: two blocks an SM on sm_90) where the device allows
 * it, else MB = 1 (~71 KB: sm_89/sm_120); test_cuda_attention times the
 * other shapes too. */
enum { PA_ROWS = 16 };

struct pf_att {
    const __half *ring, *kvc, *comp;
    const int *sel, *n_sel; /* NULL unless ratio 4 */
    int n_swa, ratio, pos0, top_k;
};

/* Row r of the token's rows (raw rows from position lo, ring slot ring0 =
 * lo % n_swa; then the compressed rows). */
__device__ __forceinline__ const __half *pf_att_row(const pf_att &a, int r, int n_raw, int lo, int ring0,
                                                    const int *pick, int hd) {
    if (r < n_raw) {
        const int pos = lo + r, slot = ring0 + r < a.n_swa ? ring0 + r : ring0 + r - a.n_swa; /* r < n_swa */
        return pos < a.pos0 ? a.ring + (size_t)slot * hd : a.kvc + (size_t)(pos - a.pos0) * hd;
    }
    return a.comp + (size_t)(pick ? pick[r - n_raw] : r - n_raw) * hd;
}

/* Offset (in halves) of 16-byte chunk c of row r in a swizzled [rows][hd] f16 array. */
__device__ __forceinline__ int pa_sw(int r, int c, int hd) { return r * hd + ((c ^ (r & 7)) << 3); }

/* Shared bytes of pf_attention<mb, hd, split, r> for heads of hd and an
 * indexer selection of top_k rows. */
static inline size_t pf_att_smem(int mb, int hd, int top_k, bool split, int r = PA_ROWS) {
    size_t hb = 16 * (size_t)mb, parts = split ? 2 : 1;
    return parts * hb * hd * 2 + 2 * (size_t)r * hd * 2 + 4 * hb * (r + 4) * 4 + parts * hb * (r + 8) * 2 +
           2 * hb * 4 + (size_t)top_k * 4;
}

template <int MB, int HD, bool SPLIT, int R = PA_ROWS>
__global__ void __launch_bounds__(MB * 128, 2) pf_attention(const float *q, pf_att a, const float *sinks, int n_head,
                                                            float eps, rope_dev rp, float *out, __half *out16) {
    static_assert(R == 16 || R == 32, "tile rows");
    static_assert(HD >= 128 && HD <= 512 && (HD & (HD - 1)) == 0, "head size");
    static_assert(SPLIT || R >= 8 * MB, "the f32 output must fit over Q and the row tiles");
    constexpr int hd = HD; /* a constant: the loops unroll and the swizzled addresses fold (-16% time) */
    extern __shared__ __align__(16) unsigned char pa_raw[];
    constexpr int HB = 16 * MB, SP = R + 4, PS = R + 8, NC = R / 8; /* NC: softmax columns a thread */
    constexpr int PARTS = SPLIT ? 2 : 1;
    __half *qh = (__half *)pa_raw, *ql = qh + HB * hd; /* ql, pl: SPLIT only */
    __half *kt = qh + PARTS * HB * hd; /* 2 buffers of R × hd */
    float *sp = (float *)(kt + 2 * R * hd); /* [quarter][HB][SP] partial scores */
    __half *ph = (__half *)(sp + 4 * HB * SP), *pl = ph + HB * PS;
    float *resc = (float *)(ph + PARTS * HB * PS), *lfin = resc + HB;
    int *pk = (int *)(lfin + HB); /* the token's selection (a.top_k rows) */
    float *os = (float *)pa_raw; /* the output, over Q (and the row tiles) at the end */
    const int h0 = blockIdx.x * HB, t = blockIdx.y, p = a.pos0 + t;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, m = warp >> 2, quarter = warp & 3;
    int lo = p - a.n_swa + 1 < 0 ? 0 : p - a.n_swa + 1, n_raw = p - lo + 1, n_comp = 0;
    const int *pick = NULL;
    if (a.ratio) {
        n_comp = (p + 1) / a.ratio;
        if (a.n_sel && a.n_sel[t] >= 0) { /* the same for the whole block */
            n_comp = a.n_sel[t];
            const int *sel = a.sel + (size_t)t * a.top_k;
            for (int i = threadIdx.x; i < n_comp; i += blockDim.x) pk[i] = sel[i];
            __syncthreads();
            pick = pk;
        }
    }
    const int nr = n_raw + n_comp, n_tiles = (nr + R - 1) / R, ring0 = lo % a.n_swa;
    const int qd = hd >> 2, NT = hd >> 5;
    /* tile loads: TPRL threads a row, thread tid copies chunks lc, lc + TPRL,
     * ... of row lr, its address found once a tile (finding it for every
     * 16-byte chunk was a quarter of the kernel's instructions) */
    constexpr int TPRL = MB * 128 / R, CPT = HD / 8 / TPRL;
    static_assert(MB * 128 % R == 0 && HD / 8 % TPRL == 0, "tile loads");
    const int lr = tid / TPRL, lc = tid % TPRL;
    auto load_tile = [&](int j, int b) {
        __half *dst = kt + b * R * hd;
        const int row = j * R + lr;
        if (row < nr) {
            const __half *src = pf_att_row(a, row, n_raw, lo, ring0, pick, hd);
#pragma unroll
            for (int i = 0; i < CPT; i++) {
                const int c = lc + i * TPRL;
                asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(pa_smem(dst + pa_sw(lr, c, hd))),
                             "l"(src + c * 8));
            }
        } else {
#pragma unroll
            for (int i = 0; i < CPT; i++) *(uint4 *)(dst + pa_sw(lr, lc + i * TPRL, hd)) = make_uint4(0, 0, 0, 0);
        }
        asm volatile("cp.async.commit_group;");
    };
    load_tile(0, 0);
    /* Q of the block's heads from q_b's output, as attention.c prepares a
     * head (unweighted RMSNorm: the sum of squares in double, lane-strided,
     * then the xor tree; RoPE of the tail at p), into hi + lo halves (padded
     * heads zero). A warp a head, the next head's values loaded while this
     * one is done; the RoPE pairs (values e, e+1) sit in lanes 2m, 2m+1. */
    float2 *cs = (float2 *)sp; /* (cos, sin) of pair k at p; sp is free until the first tile */
    for (int k = tid; k < rp.n_rot / 2; k += blockDim.x) cs[k] = rope_cs(k, p, rp);
    __syncthreads();
    {
        constexpr int NW = MB * 4, V = HD / 32;
        const float *qt = q + (size_t)t * n_head * hd;
        float nx[V];
        auto fetch = [&](int hl) {
            const bool on = h0 + hl < n_head;
#pragma unroll
            for (int j = 0; j < V; j++) nx[j] = on ? qt[(size_t)(h0 + hl) * hd + 32 * j + lane] : 0.0f;
        };
        fetch(warp);
        for (int hl = warp; hl < HB; hl += NW) {
            float v[V];
#pragma unroll
            for (int j = 0; j < V; j++) v[j] = nx[j];
            if (hl + NW < HB) fetch(hl + NW);
            double ss = 0.0;
#pragma unroll
            for (int j = 0; j < V; j++) ss += (double)v[j] * (double)v[j];
            for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
            const float s = ds4_rms_scale(ss, hd, eps);
#pragma unroll
            for (int j = 0; j < V; j++) {
                v[j] = v[j] * s;
                const float other = __shfl_xor_sync(0xffffffffu, v[j], 1);
                const int e = 32 * j + (lane & ~1);
                if (e >= hd - rp.n_rot) {
                    const float2 c = cs[(e - (hd - rp.n_rot)) / 2];
                    float x0 = lane & 1 ? other : v[j], x1 = lane & 1 ? v[j] : other;
                    rope_rot2(x0, x1, c.x, c.y);
                    v[j] = lane & 1 ? x1 : x0;
                }
                const int d = 32 * j + lane, o = pa_sw(hl, d >> 3, hd) + (d & 7);
                const __half hi = __float2half_rn(v[j]);
                qh[o] = hi;
                if (SPLIT) ql[o] = __float2half_rn(v[j] - __half2float(hi));
            }
        }
    }
    /* softmax role: head hs of the block, columns NC·sub .. NC·sub+NC-1 of a
     * tile; the running max and sum start from the sink (exp(sink - m) = 1) */
    const int hs = tid >> 3, sub = tid & 7;
    const bool hv = h0 + hs < n_head;
    float m_run = hv ? sinks[h0 + hs] : 0.0f, l_run = 1.0f;
    const float scale = 1.0f / sqrtf((float)hd);
    float acc[16][4];
#pragma unroll
    for (int k = 0; k < 16; k++) acc[k][0] = acc[k][1] = acc[k][2] = acc[k][3] = 0.0f;
    const int arow = m * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, acol = lane >> 4;
    const int brow = (lane & 7) + (lane >> 4) * 8, bcol = (lane >> 3) & 1;
    const int vrow = (lane & 7) + ((lane >> 3) & 1) * 8, vcol = quarter * (qd >> 3) + (lane >> 4);
    for (int j = 0; j < n_tiles; j++) {
        asm volatile("cp.async.wait_group 0;");
        __syncthreads();
        if (j + 1 < n_tiles) load_tile(j + 1, (j + 1) & 1);
        const __half *K = kt + (j & 1) * R * hd;
        /* partial S over this warp's quarter of the dims: 16 heads × R rows */
        {
            float c[R / 8][4];
#pragma unroll
            for (int n = 0; n < R / 8; n++) c[n][0] = c[n][1] = c[n][2] = c[n][3] = 0.0f;
            for (int k0 = quarter * qd; k0 < quarter * qd + qd; k0 += 16) {
                int c0 = k0 >> 3;
                uint32_t ah[4], al[4];
                pa_ldm_x4(ah, qh + pa_sw(arow, c0 + acol, hd));
                if (SPLIT) pa_ldm_x4(al, ql + pa_sw(arow, c0 + acol, hd));
#pragma unroll
                for (int np = 0; np < R / 16; np++) {
                    uint32_t b[4];
                    pa_ldm_x4(b, K + pa_sw(np * 16 + brow, c0 + bcol, hd));
                    pa_mma(c[2 * np], ah, b);
                    if (SPLIT) pa_mma(c[2 * np], al, b);
                    pa_mma(c[2 * np + 1], ah, b + 2);
                    if (SPLIT) pa_mma(c[2 * np + 1], al, b + 2);
                }
            }
            float *dst = sp + (quarter * HB + m * 16 + (lane >> 2)) * SP + (lane & 3) * 2;
#pragma unroll
            for (int n = 0; n < R / 8; n++) {
                *(float2 *)(dst + n * 8) = make_float2(c[n][0], c[n][1]);
                *(float2 *)(dst + 8 * SP + n * 8) = make_float2(c[n][2], c[n][3]);
            }
        }
        __syncthreads();
        /* online softmax: the four partial sums in order, P as hi (+ lo);
         * without lo the sum adds the rounded weights P·V will use */
        {
            const float *s0 = sp + hs * SP + NC * sub;
            float v[NC], mx = -INFINITY;
#pragma unroll
            for (int e = 0; e < NC; e++) {
                float s = s0[e] + s0[HB * SP + e] + s0[2 * HB * SP + e] + s0[3 * HB * SP + e];
                v[e] = j * R + NC * sub + e < nr ? scale * s : -INFINITY;
                mx = fmaxf(mx, v[e]);
            }
            for (int o = 4; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            float m_new = fmaxf(m_run, mx), sum = 0.0f;
#pragma unroll
            for (int e = 0; e < NC; e += 2) {
                float e0 = hv ? expf(v[e] - m_new) : 0.0f, e1 = hv ? expf(v[e + 1] - m_new) : 0.0f;
                __half2 hi = __floats2half2_rn(e0, e1);
                float2 hf = __half22float2(hi);
                *(__half2 *)(ph + hs * PS + NC * sub + e) = hi;
                if (SPLIT) {
                    *(__half2 *)(pl + hs * PS + NC * sub + e) = __floats2half2_rn(e0 - hf.x, e1 - hf.y);
                    sum += e0 + e1;
                } else {
                    sum += hf.x + hf.y;
                }
            }
            for (int o = 4; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            float sc = hv ? expf(m_run - m_new) : 1.0f;
            l_run = l_run * sc + sum;
            m_run = m_new;
            if (sub == 0) resc[hs] = sc;
        }
        __syncthreads();
        /* O = O·resc + P·V over this warp's quarter of the output dims */
        {
            float s0 = resc[m * 16 + (lane >> 2)], s1 = resc[m * 16 + (lane >> 2) + 8];
#pragma unroll
            for (int k = 0; k < 16; k++) acc[k][0] *= s0, acc[k][1] *= s0, acc[k][2] *= s1, acc[k][3] *= s1;
#pragma unroll
            for (int ks = 0; ks < R / 16; ks++) {
                uint32_t pah[4], pal[4];
                const __half *pa =
                    ph + (m * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * PS + ks * 16 + (lane >> 4) * 8;
                pa_ldm_x4(pah, pa);
                if (SPLIT) pa_ldm_x4(pal, pa + HB * PS);
#pragma unroll
                for (int nn = 0; nn < 16; nn += 2) {
                    if (nn < NT) {
                        uint32_t b[4];
                        pa_ldm_x4_t(b, K + pa_sw(ks * 16 + vrow, vcol + nn, hd));
                        pa_mma(acc[nn], pah, b);
                        if (SPLIT) pa_mma(acc[nn], pal, b);
                        pa_mma(acc[nn + 1], pah, b + 2);
                        if (SPLIT) pa_mma(acc[nn + 1], pal, b + 2);
                    }
                }
            }
        }
    }
    if (sub == 0) lfin[hs] = l_run;
    for (int k = tid; k < rp.n_rot / 2; k += blockDim.x) cs[k] = rope_cs(k, p, rp); /* sp is free again */
    __syncthreads();
    /* output × 1/den into shared (over Q), inverse RoPE (rope_pair's values
     * from the table), store */
#pragma unroll
    for (int nn = 0; nn < 16; nn++) {
        if (nn < NT) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int hl = m * 16 + (lane >> 2) + (e >> 1) * 8, d = quarter * qd + nn * 8 + (lane & 3) * 2 + (e & 1);
                os[hl * hd + d] = acc[nn][e] * (1.0f / lfin[hl]);
            }
        }
    }
    __syncthreads();
    int n_valid = n_head - h0 < HB ? n_head - h0 : HB;
    for (int i = tid; i < n_valid * (rp.n_rot / 2); i += blockDim.x) {
        int hl = i / (rp.n_rot / 2), k = i % (rp.n_rot / 2);
        rope_rotate(os + hl * hd + hd - rp.n_rot, k, cs[k].x, -cs[k].y);
    }
    __syncthreads();
    if (out16) { /* as k_g16_act would convert the f32 output (hd a multiple of 32: whole blocks a head) */
        __half *o = out16 + ((size_t)t * n_head + h0) * hd;
        const int n8 = n_valid * hd / 8;
        for (int i0 = 0; i0 < n8; i0 += blockDim.x) { /* the same trip count for every lane */
            const int i = i0 + tid;
            const float4 a = i < n8 ? ((const float4 *)os)[2 * i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            const float4 b = i < n8 ? ((const float4 *)os)[2 * i + 1] : a;
            const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
            __align__(16) __half2 h[4];
            quad_q8_0_f16(v, h);
            if (i < n8) ((uint4 *)o)[i] = *(const uint4 *)h;
        }
        return;
    }
    float4 *o = (float4 *)(out + ((size_t)t * n_head + h0) * hd);
    for (int i = tid; i < n_valid * hd / 4; i += blockDim.x) o[i] = ((const float4 *)os)[i];
}

/* The attention kernel for mb m-tiles a block, heads of hd (128, 256 or
 * 512; NULL otherwise), Q and P split or not, 16-row tiles: for
 * cudaFuncSetAttribute and cudaLaunchKernel (arguments as pf_attention's). */
template <int MB, bool SPLIT>
static const void *pf_att_for(int hd) {
    return hd == 128   ? (const void *)pf_attention<MB, 128, SPLIT>
           : hd == 256 ? (const void *)pf_attention<MB, 256, SPLIT>
           : hd == 512 ? (const void *)pf_attention<MB, 512, SPLIT>
                       : NULL;
}
static inline const void *pf_att_kernel(int mb, int hd, bool split) {
    return split ? (mb == 2 ? pf_att_for<2, true>(hd) : pf_att_for<1, true>(hd))
                 : (mb == 2 ? pf_att_for<2, false>(hd) : pf_att_for<1, false>(hd));
}

/* ---- MoE ---- */

/* Router per token (a block each; block_route). */
__global__ void pf_route(const float *logits_all, const float *bias, const int32_t *tid2eid, int ne, int nu,
                         float wscale, int wnorm, const int32_t *tokens, int32_t *ids_all, float *weights_all) {
    extern __shared__ float prob[]; /* 2·ne */
    __shared__ int chosen[DS4_CUDA_MAX_SEL];
    int t = blockIdx.x;
    const float *logits = logits_all + (size_t)t * ne;
    block_route(logits, bias, tid2eid, tokens[t], ne, nu, wscale, wnorm, prob, chosen, ids_all + (size_t)t * nu,
                weights_all + (size_t)t * nu);
}

/* mid = swiglu(g, u) with weight 1 (the shared expert), n values. */
__global__ void pf_swiglu_rows(const float *g, const float *u, size_t n, float clamp, float *mid) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) mid[i] = ds4_swiglu(g[i], u[i], clamp, 1.0f);
}

/* The shared expert's SwiGLU as its Q8_0 down product's f16 input
 * (cuda_gemm16.h): ds4_swiglu of 8 values a thread, then quad_q8_0_f16 —
 * the bits pf_swiglu_rows and k_g16_act would give, without the f32 rows.
 * n a multiple of 32 (whole Q8_0 blocks), rows of a multiple of 32. */
__global__ void pf_swiglu_q8_0_f16(const float *g, const float *u, size_t n, float clamp, __half *out) {
    const size_t i = 8 * ((size_t)blockIdx.x * blockDim.x + threadIdx.x);
    const bool on = i < n; /* every lane reaches the shuffles */
    float v[8];
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const float4 a = on ? *(const float4 *)(g + i + 4 * h) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        const float4 b = on ? *(const float4 *)(u + i + 4 * h) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        v[4 * h] = ds4_swiglu(a.x, b.x, clamp, 1.0f);
        v[4 * h + 1] = ds4_swiglu(a.y, b.y, clamp, 1.0f);
        v[4 * h + 2] = ds4_swiglu(a.z, b.z, clamp, 1.0f);
        v[4 * h + 3] = ds4_swiglu(a.w, b.w, clamp, 1.0f);
    }
    __align__(16) __half2 h[4];
    quad_q8_0_f16(v, h);
    if (on) *(uint4 *)(out + i) = *(const uint4 *)h;
}

__device__ float pf_plain_dot(const void *w, int f16, size_t row, uint32_t n_in, const float *x, int lane) {
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

/* x[0..n) = v. */
__global__ void pf_fill_f32(float *x, int n, float v) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = v;
}

/* Plain-float routed experts for T tokens: a warp per (token, slot, row). */
__global__ void pf_moe_plain_gate_up(const void *gate, const void *up, int f16, uint32_t n_in, uint32_t n_ff,
                                     uint32_t n_expert, const int32_t *ids, const float *weights, uint32_t nu, int T,
                                     float clamp, const float *x, float *mid) {
    size_t item = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (item >= (size_t)T * nu * n_ff) return;
    size_t tk = item / n_ff;
    uint32_t r = item % n_ff, t = (uint32_t)(tk / nu), e = (uint32_t)ids[tk];
    float v = 0.0f;
    if (e < n_expert) {
        size_t row = (size_t)e * n_ff + r;
        const float *xt = x + (size_t)t * n_in;
        float g = pf_plain_dot(gate, f16, row, n_in, xt, lane), u = pf_plain_dot(up, f16, row, n_in, xt, lane);
        v = ds4_swiglu(g, u, clamp, weights[tk]);
    }
    if (lane == 0) mid[item] = v;
}

/* out[t][o] = Σ_k in order down_{ids[t][k]} row o · mid[t][k] + add[t][o]. */
__global__ void pf_moe_plain_down(const void *down, int f16, uint32_t n_ff, uint32_t n_out, uint32_t n_expert,
                                  const int32_t *ids, uint32_t nu, int T, const float *mid, const float *add,
                                  float *out) {
    size_t item = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (item >= (size_t)T * n_out) return;
    uint32_t t = (uint32_t)(item / n_out), o = item % n_out;
    float acc = 0.0f;
    for (uint32_t k = 0; k < nu; k++) {
        uint32_t e = (uint32_t)ids[(size_t)t * nu + k];
        if (e < n_expert)
            acc += pf_plain_dot(down, f16, (size_t)e * n_out + o, n_ff, mid + ((size_t)t * nu + k) * n_ff, lane);
    }
    if (lane == 0) out[item] = acc + add[item];
}

/* The output head's collapse of one token (model-spec §5.9 steps 2-3) by
 * one block: e = Σ w_h·H[h] with w_h = σ(z_h·scale + base_h) + eps, then
 * RMSNorm with output_norm. */
__global__ void pf_out_collapse(const float *z, const float *scale, const float *base, float hc_eps, const float *H,
                                uint32_t D, const float *norm_w, float rms_eps, float *e) {
    __shared__ float w[HC_N];
    __shared__ double sh[32];
    if (threadIdx.x < HC_N) w[threadIdx.x] = dev_sigmoid(z[threadIdx.x] * scale[0] + base[threadIdx.x]) + hc_eps;
    __syncthreads();
    double ss = 0.0;
    for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0.0f;
        for (int h = 0; h < HC_N; h++) acc += w[h] * H[(size_t)h * D + d];
        e[d] = acc;
        ss += (double)acc * (double)acc;
    }
    float s = ds4_rms_scale(block_sum(ss, sh), (int)D, rms_eps);
    for (uint32_t d = threadIdx.x; d < D; d += blockDim.x) e[d] = e[d] * s * norm_w[d];
}

#endif
