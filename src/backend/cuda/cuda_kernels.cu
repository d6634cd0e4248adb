/* cuda_kernels.cu — decode matrix-vector kernels: activation quantisers,
 * y = W·x for Q8_0 / Q2_K / Q4_K / IQ2_XXS / F16, and the fused routed-MoE
 * pair (gate+up with clamped SwiGLU, then down summed over experts).
 *
 * Why this shape. One decode token reads every weight byte once, so the
 * kernels are written to stream bytes: a matrix is cut into "items" (one
 * row, or a 1/S slice of a row when there are too few rows to fill the
 * machine; for the MoE, a row of gate plus the same row of up, or one row
 * of each selected expert's down). Each warp owns two shared-memory
 * buffers and streams its items through them with 16-byte cp.async copies
 * (sm_80+), loading item i+1 while it computes item i; blocks loop over
 * tiles of items (a grid of 1 or 2 "waves" of resident blocks, measured per
 * kernel kind). Staging through shared memory makes 16-byte coalesced loads
 * possible for the blocks whose size is not a multiple of 16 (34, 66 and 84
 * bytes) while keeping the GGUF layout; the block arithmetic then reads
 * shared memory freely (cuda_formats.cuh). A block requests its first
 * weights (before waiting for the previous kernel under programmatic
 * dependent launch, cuda_pdl.cuh), then stages the activation once in a
 * split layout (codes / scales / sums; an f32 activation stays in global
 * memory) — quantised already, or quantised by the block itself from f32
 * (the decode step: no separate quantisation launch) — and, for IQ2_XXS,
 * the decode tables, where the random lookups are cheapest. One launch
 * may cover several matrices that read the same activation, and
 * k_matvec_pair two products of different weight types (blocks split
 * between them: one start and drain instead of two). Products with
 * half to eight rows a resident warp go through k_matvec_stream instead
 * (each warp its own run of whole rows, streamed in chunks, no barrier
 * between warps); the MoE down through k_moe_down_rows (one expert's
 * row a warp; for Q2_K and Q4_K rows of 8 blocks or fewer, 32/nb rows a
 * warp and a whole block a lane). Measurements and the reasons for each
 * choice: notes/cuda-kernels.md (§15 for the stream and row kernels, §18
 * for the pair, §32 for the block mode).
 *
 * Rows whose byte length (or base address) is not 16-byte aligned, as in
 * tiny test models, take a synchronous 2-byte copy instead: slower, same
 * results. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <type_traits>

#include "cuda_async.cuh"
#include "cuda_formats.cuh"
#include "cuda_kernels.h"
#include "cuda_pdl.cuh"


#define FULL_MASK 0xffffffffu
/* Largest slice of one row a warp stages (a 4096-wide Q8_0 row). */
#define MAX_SLICE_BYTES 4352u

struct ds4_cuda_kernels {
    int device;
    int n_sm;
    size_t smem_optin;
    int waves; /* grid = waves x the blocks that fit at once; 0 = per kernel */
    int pdl_ok, pdl; /* the device has programmatic dependent launch; it is on */
    int split_per_sm;  /* matvec: split rows until there are this many items per SM */
    int deep;          /* matvec: 4 staging buffers per warp for slices <= MV_DEEP_SLICE */
    int stream;        /* matvec: k_matvec_stream for products with many rows (DS4_CUDA_STREAM=0: off) */
    int mvs_stages, mvs_chunk; /* its staging buffers per warp (2, 4, 8) and largest chunk in bytes */
    double peak_bw;    /* the memory's peak bandwidth, bytes/s (0: unknown) */
    int moe_nb;        /* MoE kernels: staging buffers per warp, 1 or 2 (DS4_CUDA_MOENB); 0: by format */
    int down_rows;     /* MoE down: 2 (DS4_CUDA_DOWNROWS=2) all of an output row's experts a warp
                          (k_moe_down), else one expert row a warp (k_moe_down_rows) */
    int down_blocks;   /* k_moe_down_rows' block mode where the format has one (DS4_CUDA_DOWNBLK=0: off) */
    char name[256];
    uint32_t *tables; /* the IQ2_XXS tables replicated as in shared memory (ds4_cuda_iq2_tables_replicated) */
    int iq2v;         /* DS4_CUDA_IQ2V: IQ2_XXS with 2 (1) or 4 (2) sub-blocks per lane, 0: one;
                         -1 (unset): the routed gate/up by row width (iq2_gate_up_variant) */
};

/* F16 weights: "blocks" of 8 halves (16 bytes), f32 activation. */
struct fmt_f16 {
    enum { block_elems = 8, block_bytes = 16, G = 1, act_kind = DS4_ACT_F32, needs_tab = 0, act_halves = 0 };
};

/* ------------------------------------------------------------------ */
/* Device helpers                                                      */
/* ------------------------------------------------------------------ */

__host__ __device__ constexpr uint32_t round16(uint32_t x) { return (x + 15) & ~15u; }

/* Copies `bytes` from global memory to a warp's buffer: asynchronous
 * 16-byte copies when source and length are 16-byte aligned, else plain
 * 2-byte copies (every block size is even). The 16-byte loop stays a loop:
 * rows are one to five pieces a lane, and unrolled it was ~55 instructions
 * of branches and remainders a row (ncu, the routed down); plain, every
 * product and MoE kernel was faster (decode +1.2%, H200). */
__device__ __forceinline__ void stage_span(uint8_t *dst, const uint8_t *src, uint32_t bytes, bool aligned,
                                           int lane) {
    if (aligned) {
#pragma unroll 1
        for (uint32_t o = 16u * lane; o < bytes; o += 512u) cp_async16_once(dst + o, src + o);
    } else {
        for (uint32_t o = 2u * lane; o < bytes; o += 64u) *(uint16_t *)(dst + o) = *(const uint16_t *)(src + o);
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

/* Formats whose unit takes several activation columns at once (their
 * weights unpacked once for all of them): F::multi_col. */
template <class F, class = void>
struct has_multi_col : std::false_type {};
template <class F>
struct has_multi_col<F, std::void_t<decltype(F::multi_col)>> : std::true_type {};

/* Adds to each lane's acc[r·NC + c] its blocks' terms of NR staged rows
 * (`stride` bytes apart) of nblk blocks with the activation blocks ab0..
 * of column c (a[c]): lane l takes units l, l + 32, ... in order (a unit:
 * 1/G of a block). A column's terms are those of a one-column call. */
template <class F, int NR, int NC>
__device__ __forceinline__ void span_acc(const uint8_t *span, uint32_t stride, uint32_t nblk, const act_view *a,
                                         uint32_t ab0, const uint32_t *tab, int lane, float *acc) {
    const uint32_t U = nblk * F::G;
    const int copy = lane % DS4_CUDA_IQ2_COPIES;
    auto step = [&](uint32_t u, bool valid) {
        uint32_t blk = u / F::G;
        int part = (int)(u % F::G);
        int32_t is[NR * NC], sm[NR * NC];
#pragma unroll
        for (int i = 0; i < NR * NC; i++) is[i] = sm[i] = 0;
        if (valid) {
            if constexpr (NC > 1 && has_multi_col<F>::value) {
                F::template unit_cols<NR, NC>(span + blk * F::block_bytes, stride, part, a, ab0 + blk, is);
            } else {
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    int32_t ic[NR], mc[NR];
                    F::template unit<NR>(span + blk * F::block_bytes, stride, part, a[c], ab0 + blk, tab, copy, ic,
                                         mc);
#pragma unroll
                    for (int r = 0; r < NR; r++) is[r * NC + c] = ic[r], sm[r * NC + c] = mc[r];
                }
            }
        }
#pragma unroll
        for (int r = 0; r < NR; r++)
#pragma unroll
            for (int c = 0; c < NC; c++) {
                const int i = r * NC + c;
#pragma unroll
                for (int o = F::G / 2; o > 0; o >>= 1) {
                    is[i] += __shfl_xor_sync(FULL_MASK, is[i], o);
                    if (F::has_summ) sm[i] += __shfl_xor_sync(FULL_MASK, sm[i], o);
                }
                if (valid && part == 0)
                    acc[i] += F::term(span + r * stride + blk * F::block_bytes, a[c], ab0 + blk, is[i], sm[i]);
            }
    };
    /* one unit a lane (the routed gate/up and down rows): no loop, every
     * lane valid. Not for Q8_0 (G = 1): there it cost the streaming
     * product 8 registers, which changed its occupancy-derived grid. */
    if (F::G > 1 && U == 32) step((uint32_t)lane, true);
    else
        for (uint32_t u0 = 0; u0 < U; u0 += 32) step(u0 + lane, u0 + lane < U);
}

/* F16: 8 halves per lane and unit, converted once for every column, f32
 * multiply-adds. */
template <class F, int NR, int NC>
__device__ __forceinline__ void span_acc_f16(const uint8_t *span, uint32_t stride, uint32_t nblk, const act_view *a,
                                             uint32_t ab0, int lane, float *acc) {
    for (uint32_t u = lane; u < nblk; u += 32) {
        float4 x0[NC], x1[NC];
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const float4 *x = (const float4 *)(a[c].x + 8u * (ab0 + u)); /* global or (normed) shared memory */
            x0[c] = x[0];
            x1[c] = x[1];
        }
#pragma unroll
        for (int r = 0; r < NR; r++) {
            uint4 w = *(const uint4 *)(span + r * stride + 16u * u);
            float2 f0 = __half22float2(*(const __half2 *)&w.x), f1 = __half22float2(*(const __half2 *)&w.y);
            float2 f2 = __half22float2(*(const __half2 *)&w.z), f3 = __half22float2(*(const __half2 *)&w.w);
#pragma unroll
            for (int c = 0; c < NC; c++) {
                float &t = acc[r * NC + c];
                t += f0.x * x0[c].x + f0.y * x0[c].y + f1.x * x0[c].z + f1.y * x0[c].w;
                t += f2.x * x1[c].x + f2.y * x1[c].y + f3.x * x1[c].z + f3.y * x1[c].w;
            }
        }
    }
}

/* A row's dot product from its lanes' sums (every lane gets it). */
template <class F>
__device__ __forceinline__ float row_total(float acc) {
    if constexpr (F::act_kind == DS4_ACT_F32) return warp_sum(acc);
    else return warp_sum(acc) * F::final_scale;
}

/* One entry point for both kinds of format: NR rows by NC activation
 * columns into acc[r·NC + c]. */
template <class F, int NR, int NC = 1>
__device__ __forceinline__ void rows_acc(const uint8_t *span, uint32_t stride, uint32_t nblk, const act_view *a,
                                         uint32_t ab0, const uint32_t *tab, int lane, float *acc) {
    if constexpr (F::act_kind == DS4_ACT_F32) span_acc_f16<F, NR, NC>(span, stride, nblk, a, ab0, lane, acc);
    else span_acc<F, NR, NC>(span, stride, nblk, a, ab0, tab, lane, acc);
}

/* The dot products of NR staged rows with NC activation columns over the
 * whole warp: out[r·NC + c] is in every lane. */
template <class F, int NR, int NC = 1>
__device__ __forceinline__ void dot_rows(const uint8_t *span, uint32_t stride, uint32_t nblk, const act_view *a,
                                         uint32_t ab0, const uint32_t *tab, int lane, float *out) {
    float acc[NR * NC];
#pragma unroll
    for (int i = 0; i < NR * NC; i++) acc[i] = 0.0f;
    rows_acc<F, NR, NC>(span, stride, nblk, a, ab0, tab, lane, acc);
#pragma unroll
    for (int i = 0; i < NR * NC; i++) out[i] = row_total<F>(acc[i]);
}

/* Shared-memory bytes of a staged activation of n elements. */
__host__ __device__ inline uint32_t act_smem_bytes(int kind, uint32_t n) {
    uint32_t b;
    if (kind == DS4_ACT_F32) b = 0; /* read from global memory, cached in L1 */
    else if (kind == DS4_ACT_Q8_0) b = n + 4 * (n / 32);
    else b = n + 4 * (n / 256) + 32 * (n / 256);
    return (b + 15) & ~15u;
}

/* Stages the activation (the CPU struct layout in global memory) into the
 * split layout; all threads of the block take part. An f32 activation (F16
 * weights) stays in global memory: each warp reads only its slice. The
 * copies are 4-byte cp.async pieces, a word of the struct layout each
 * (Q8_0 block: d, 8 code words; Q8_K: d, 64 code words, 8 sum words), all
 * in flight at once: the three copy loops this replaced each waited for
 * their loads before storing (through generic pointers the compiler cannot
 * move a load above a store to shared memory), an L2 round trip each on
 * the kernel's start. The caller waits for its copies (cp_async_wait<0>)
 * before the barrier that precedes their use. */
template <class F>
__device__ act_view stage_act(uint8_t *s, const uint8_t *g, uint32_t n, int tid, int nth) {
    constexpr int KIND = F::act_kind;
    constexpr bool HALVES = F::act_halves;
    act_view a = {};
    if (KIND == DS4_ACT_F32) {
        a.x = (const float *)g;
        return a;
    }
    const uint32_t *gw = (const uint32_t *)g;
    uint32_t *q = (uint32_t *)s;
    /* the code words (a power of two a block: no division) apart from
     * the scales and sums: a division and a three-way select a word were
     * ~24 instructions of each copy (ncu, the routed down: 11% of its
     * instructions) */
    if (KIND == DS4_ACT_Q8_0) {
        const uint32_t nb = n / 32;
        float *d = (float *)(s + n);
        for (uint32_t j = tid; j < nb * 8; j += nth) cp_async4(q + j, gw + 9 * (j >> 3) + 1 + (j & 7));
        for (uint32_t b = tid; b < nb; b += nth) cp_async4(d + b, gw + 9 * b);
        a.d = d;
    } else {
        const uint32_t nb = n / 256;
        float *d = (float *)(s + n);
        uint32_t *bs = (uint32_t *)(s + n + 4 * nb);
        for (uint32_t j = tid; j < nb * 64; j += nth) {
            const uint32_t b = j >> 6, w = j & 63;
            cp_async4(q + 64 * b + (HALVES ? act_halves_word(w) : w), gw + 73 * b + 1 + w);
        }
        for (uint32_t j = tid; j < nb * 9; j += nth) { /* d, then the 8 words of sums */
            const uint32_t b = j / 9, o = j - 9 * b;
            cp_async4(o ? (void *)(bs + 8 * b + o - 1) : (void *)(d + b), gw + 73 * b + (o ? 64 + o : 0));
        }
        a.d = d;
        a.bsums = (const int16_t *)bs;
    }
    cp_async_commit();
    a.q = (const int8_t *)s;
    return a;
}

/* Passes of stage_act_x whose loads are issued together (Q8_0: 4 blocks
 * of 32 a warp and pass; Q8_K: one block of 256). More registers for them
 * cost the kernels occupancy: 8 Q8_0 passes took k_matvec<Q8_0> from 32
 * to 64 registers and out_a/out_b from 26/25 to 30/26 us a layer (H100). */
enum { QX_P = 2, QX_PK = 2 };

/* v[k][j] = x[ix[k] + j] (· scale · norm_w[ix[k] + j]): every load issued
 * before any is used (a branch per load serializes them). */
template <int P, int W>
__device__ __forceinline__ void load_x(const float *x, const float *norm_w, float scale, const uint32_t *ix,
                                       float (*v)[W]) {
    if (norm_w) {
        float w[P][W];
#pragma unroll
        for (int k = 0; k < P; k++)
#pragma unroll
            for (int j = 0; j < W; j++) {
                v[k][j] = x[ix[k] + j];
                w[k][j] = norm_w[ix[k] + j];
            }
#pragma unroll
        for (int k = 0; k < P; k++)
#pragma unroll
            for (int j = 0; j < W; j++) v[k][j] = __fmul_rn(__fmul_rn(v[k][j], scale), w[k][j]);
    } else {
#pragma unroll
        for (int k = 0; k < P; k++)
#pragma unroll
            for (int j = 0; j < W; j++) v[k][j] = x[ix[k] + j];
    }
}

/* Q8_0 of one 32-value block over 8 lanes (lane & 7 holding values
 * 4(lane & 7)..+3 in v): d = amax/127, codes round(v/d) into q, d into
 * d[b]; every lane takes part in the shuffles, only b < nb writes. */
__device__ __forceinline__ void q8_0_put(int8_t *q, float *d, uint32_t b, uint32_t nb, int lane, const float v[4]) {
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++) amax = fmaxf(amax, fabsf(v[j]));
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(FULL_MASK, amax, o));
    float dd = amax / 127.0f, id = dd != 0.0f ? 1.0f / dd : 0.0f;
    if (b < nb) {
        uint32_t wd = 0;
#pragma unroll
        for (int j = 0; j < 4; j++)
            wd |= (uint32_t)(uint8_t)(int8_t)round_clamp(__fmul_rn(v[j], id), -128, 127) << (8 * j);
        *(uint32_t *)(q + 32 * b + 4 * (lane & 7)) = wd;
        if ((lane & 7) == 0) d[b] = dd;
    }
}

/* Stages an f32 activation x[0..n) quantised in the block (the bytes
 * ds4_cuda_quantize_act writes, in the split layout), optionally after an
 * RMSNorm v = x·(1/rms(x))·norm_w (written to norm_out by the block
 * whose `first` is set: a product's block 0, in a pair each half's). An f32
 * activation (F16 weights) stays in global memory unless it is normed
 * (then v is kept in shared memory). All threads take part; red: 32
 * doubles of scratch. */
template <class F>
__device__ act_view stage_act_x(uint8_t *s, const float *x, uint32_t n, const float *norm_w, float eps,
                                float *norm_out, double *red, int tid, int nth, bool first) {
    constexpr int KIND = F::act_kind;
    constexpr bool HALVES = F::act_halves;
    act_view a = {};
    const int lane = tid & 31, wp = tid >> 5, nw = nth >> 5;
    float scale = 1.0f;
    if (norm_w) {
        /* each thread's values in index order as before, 4 loads at once */
        double ss = 0.0;
        for (uint32_t i0 = tid; i0 < n; i0 += 4 * nth) {
            float v[4];
#pragma unroll
            for (int k = 0; k < 4; k++) v[k] = x[i0 + k * nth < n ? i0 + k * nth : n - 1];
#pragma unroll
            for (int k = 0; k < 4; k++)
                if (i0 + k * nth < n) ss = __dadd_rn(ss, __dmul_rn((double)v[k], (double)v[k]));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(FULL_MASK, ss, o);
        if (lane == 0) red[wp] = ss;
        __syncthreads();
        double t = 0.0;
        for (int i = 0; i < nw; i++) t += red[i];
        scale = ds4_rms_scale(t, n, eps);
        if (norm_out && first)
            for (uint32_t i0 = tid; i0 < n; i0 += 4 * nth) {
                float v[4], w[4];
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    uint32_t i = i0 + k * nth < n ? i0 + k * nth : n - 1;
                    v[k] = x[i];
                    w[k] = norm_w[i];
                }
#pragma unroll
                for (int k = 0; k < 4; k++)
                    if (i0 + k * nth < n) norm_out[i0 + k * nth] = __fmul_rn(__fmul_rn(v[k], scale), w[k]);
            }
    }
    auto val = [&](uint32_t i) { return norm_w ? __fmul_rn(__fmul_rn(x[i], scale), norm_w[i]) : x[i]; };
    if (KIND == DS4_ACT_F32) {
        if (norm_w) {
            float *v = (float *)s;
            for (uint32_t i = tid; i < n; i += nth) v[i] = val(i);
            a.x = v;
        } else {
            a.x = x;
        }
    } else if (KIND == DS4_ACT_Q8_0) {
        /* 8 lanes per 32-value block, 4 values each; a warp takes 4 blocks a
         * pass and loads QX_P passes' values before quantising any (the
         * loads' latency, not their count, is the cost) */
        uint32_t nb = n / 32;
        int8_t *q = (int8_t *)s;
        float *d = (float *)(s + n);
        for (uint32_t c0 = 4 * wp; c0 < nb; c0 += 4 * nw * QX_P) {
            float v[QX_P][4];
            uint32_t ix[QX_P];
#pragma unroll
            for (int k = 0; k < QX_P; k++) {
                uint32_t b = c0 + 4 * nw * k + (lane >> 3);
                ix[k] = 32 * (b < nb ? b : nb - 1) + 4 * (lane & 7); /* clamped: no branch per load */
            }
            load_x<QX_P, 4>(x, norm_w, scale, ix, v);
#pragma unroll
            for (int k = 0; k < QX_P; k++) {
                if (c0 + 4 * nw * k >= nb) break; /* the same for the whole warp */
                q8_0_put(q, d, c0 + 4 * nw * k + (lane >> 3), nb, lane, v[k]);
            }
        }
        a.q = q;
        a.d = d;
    } else {
        /* one warp per 256-value block, 8 values per lane, QX_PK blocks'
         * values loaded before quantising any */
        uint32_t nb = n / 256;
        int8_t *q = (int8_t *)s;
        float *d = (float *)(s + n);
        int16_t *bs = (int16_t *)(s + n + 4 * nb);
        for (uint32_t c0 = wp; c0 < nb; c0 += nw * QX_PK) {
            float v[QX_PK][8];
            uint32_t ix[QX_PK];
#pragma unroll
            for (int k = 0; k < QX_PK; k++) ix[k] = 256 * (c0 + nw * k < nb ? c0 + nw * k : nb - 1) + 8 * lane;
            load_x<QX_PK, 8>(x, norm_w, scale, ix, v);
#pragma unroll
            for (int k = 0; k < QX_PK; k++) {
                uint32_t b = c0 + nw * k;
                if (b >= nb) break;
                uint32_t w[2];
                int sum;
                float dd = q8_K_warp(v[k], lane, w, &sum);
                uint32_t *qw = (uint32_t *)(q + 256 * b);
                qw[HALVES ? act_halves_word(2 * lane) : 2 * lane] = w[0];
                qw[HALVES ? act_halves_word(2 * lane + 1) : 2 * lane + 1] = w[1];
                sum += __shfl_xor_sync(FULL_MASK, sum, 1);
                if ((lane & 1) == 0) bs[16 * b + lane / 2] = (int16_t)sum;
                if (lane == 0) d[b] = dd;
            }
        }
        a.q = q;
        a.d = d;
        a.bsums = bs;
    }
    return a;
}

/* Shared-memory bytes of the IQ2_XXS tables (0 for other formats). */
template <class F>
__host__ __device__ constexpr uint32_t table_bytes() {
    return F::needs_tab ? DS4_CUDA_IQ2_TABLE_WORDS * DS4_CUDA_IQ2_COPIES * 4 : 0;
}

/* The IQ2_XXS nibble tables (48 KB, replicated DS4_CUDA_IQ2_COPIES times
 * in global memory already) into shared memory at s, for the formats that
 * need them: 16-byte cp.async pieces that join the caller's next committed
 * group. Constants, so every kernel stages them first, before it waits for
 * the previous kernel; the copy loop this replaced (a word loaded, then
 * stored 16 times) waited an L2 round trip per 4 words a thread, on the
 * routed gate/up's critical path (ncu: 11% of its stall samples). The
 * caller waits for its copies (cp_async_wait<0>) before the barrier that
 * precedes the first lookup. */
template <class F>
__device__ __forceinline__ const uint32_t *stage_tables(uint8_t *s, const uint32_t *g, int tid, int nth) {
    if constexpr (!F::needs_tab) {
        return nullptr;
    } else {
        for (uint32_t i = tid; i < table_bytes<F>() / 16; i += nth) cp_async16(s + 16 * i, (const uint8_t *)g + 16 * i);
        return (const uint32_t *)s;
    }
}

/* ------------------------------------------------------------------ */
/* Activation quantisers (model-spec §3, bit-exact with quant_rows.c)  */
/* ------------------------------------------------------------------ */

/* One warp per 32-value block: d = amax/127 (f32), q = round(x·(1/d)). */
__global__ void k_quantize_q8_0(const float *x, uint8_t *y, uint32_t nb) {
    pdl_trigger();
    pdl_wait();
    uint32_t b = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (b >= nb) return;
    warp_q8_0_block(x[32 * b + lane], y + 36 * b, lane);
}

/* One warp per 256-value block, 8 values per lane (q8_K_warp); bsums per 16. */
__global__ void k_quantize_q8_K(const float *x, uint8_t *y, uint32_t nb) {
    pdl_trigger();
    pdl_wait();
    uint32_t b = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    if (b < nb) warp_q8_K_block(x, y, b, threadIdx.x & 31);
}

/* ------------------------------------------------------------------ */
/* y = W·x                                                             */
/* ------------------------------------------------------------------ */

struct mv_params {
    const uint8_t *w[DS4_CUDA_MV_SEGS]; /* segment matrices (group 0 of w[0] with groups) */
    float *y[DS4_CUDA_MV_SEGS];
    uint32_t seg_end[DS4_CUDA_MV_SEGS]; /* rows of segments 0..i together */
    uint32_t n_seg;
    const uint8_t *act;                 /* quantised activation, or NULL: */
    const float *x, *norm_w;            /* f32 activation quantised per block (normed first) */
    float eps;
    float *norm_out;
    const uint32_t *tab;
    uint32_t n_in, row_bytes;
    uint32_t S, lgS, slice_blocks, slice_bytes; /* S = 2^lgS slices per row */
    uint32_t lgC;                       /* k_matvec_stream: a row is 2^lgC chunks of slice_bytes */
    uint32_t buf_stride, act_smem;
    uint32_t nbuf;                 /* staging buffers per warp: 2 or 4 (tiles in flight) */
    uint32_t n_groups, group_rows; /* activation groups, rows per group */
    size_t act_group_bytes;        /* bytes of one group's quantised activation */
    const int32_t *active;         /* NULL, or skip the whole call while *active == 0 */
    int aligned;
    /* columns (the kernels' NC > 1): column c's activation at x + c·x_col
     * (act + c·act_col, norm_out + c·n_in), its results at y + c·y_col of
     * its segment */
    size_t x_col, act_col;
    uint32_t y_col[DS4_CUDA_MV_SEGS];
};

/* Bytes of an activation of n values as quantised for F (global layout). */
template <class F>
static size_t act_row_bytes_of(uint32_t n) {
    return (int)F::act_kind == DS4_ACT_F32 ? (size_t)n * 4 : (int)F::act_kind == DS4_ACT_Q8_0 ? (size_t)n / 32 * 36
                                                                                            : (size_t)n / 256 * 292;
}

/* Weights of row `row` (of group g, or of the segments' joint row space)
 * and where its result goes (*ycol: the segment's column stride). */
__device__ __forceinline__ const uint8_t *mv_row(const mv_params &p, uint32_t g, uint32_t row, float **y,
                                                 uint32_t *ycol) {
    uint32_t sg = 0, start = 0;
    while (sg + 1 < p.n_seg && row >= p.seg_end[sg]) start = p.seg_end[sg++];
    size_t r = (size_t)g * p.group_rows + (row - start);
    *y = p.y[sg] + r;
    *ycol = p.y_col[sg];
    return p.w[sg] + r * p.row_bytes;
}

/* Stages the NC activation columns of group g side by side (p.act_smem
 * bytes each, from s); the norm's scratch `red` is reused column after
 * column, hence the barrier between them. */
template <class F, int NW, int NC>
__device__ __forceinline__ void stage_columns(const mv_params &p, uint8_t *s, double *red, uint32_t g, int tid,
                                              bool first, act_view *a) {
#pragma unroll
    for (int c = 0; c < NC; c++) {
        if (c) __syncthreads();
        uint8_t *sc = s + (size_t)c * p.act_smem;
        a[c] = p.x ? stage_act_x<F>(sc, p.x + c * p.x_col + (size_t)g * p.n_in, p.n_in, p.norm_w, p.eps,
                                    p.norm_out ? p.norm_out + (size_t)c * p.n_in : nullptr, red, tid, NW * 32, first)
                   : stage_act<F>(sc, p.act + c * p.act_col + (size_t)g * p.act_group_bytes, p.n_in, tid, NW * 32);
    }
}

/* Items are (row, slice) pairs;  a tile is NW consecutive items, one per
 * warp, so a row's S slices meet in one thread block and are added in
 * slice order through shared memory. With activation groups, gridDim.x is
 * a multiple of n_groups and block b works on the tiles of group
 * b / (gridDim.x / n_groups) only, staging only that group's activation.
 * Under programmatic dependent launch the first weights are requested
 * before waiting for the previous kernel (which writes the activation). */
template <class F, int NW, int NC = 1>
__device__ __forceinline__ void matvec_body(const mv_params &p, uint8_t *smem, uint32_t blk, uint32_t nblk) {
    pdl_trigger();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* Shared memory: [tables][NC activations][32 doubles][NC x 2 x NW partials][NW x nbuf buffers]. */
    uint8_t *s = smem + table_bytes<F>() + NC * p.act_smem;
    double *red = (double *)s;
    float *partial = (float *)(s + 32 * sizeof(double));
    uint8_t *const buf = s + 32 * sizeof(double) + NC * 2 * NW * sizeof(float) + warp * p.nbuf * p.buf_stride;
    if (p.active && *p.active == 0) { /* step_io: written before the step's first kernel */
        pdl_wait(); /* ending only after the kernel before it: the next one's wait covers both */
        return;
    }
    const uint32_t *tab = stage_tables<F>(smem, p.tab, tid, NW * 32); /* joins the first weights' group */

    const uint32_t bpg = nblk / p.n_groups, g = blk / bpg;
    const uint32_t n_items = p.group_rows * p.S, n_tiles = (n_items + NW - 1) / NW;
    uint32_t tile = blk % bpg, item = tile * NW + warp;
    float *yrow;
    uint32_t ycol;
    /* tiles it .. it + nbuf - 1 in flight: the first nbuf before the activation */
    auto issue = [&](uint32_t t, uint8_t *dst) {
        uint32_t i = t * NW + warp;
        if (t < n_tiles && i < n_items)
            stage_span(dst, mv_row(p, g, i >> p.lgS, &yrow, &ycol) + (size_t)(i & (p.S - 1)) * p.slice_bytes,
                       p.slice_bytes, p.aligned, lane);
        cp_async_commit();
    };
    for (uint32_t k = 0; k < p.nbuf; k++) issue(tile + k * bpg, buf + k * p.buf_stride);
    s = smem + table_bytes<F>();
    pdl_wait();
    act_view a[NC];
    stage_columns<F, NW, NC>(p, s, red, g, tid, blk == 0, a);
    if (F::needs_tab || !p.x) cp_async_wait<0>(); /* this thread's table and activation copies */
    __syncthreads();
    for (uint32_t it = 0; tile < n_tiles; it++) {
        uint32_t ntile = tile + bpg, nitem = ntile * NW + warp;
        uint8_t *cur = buf + (it & (p.nbuf - 1)) * p.buf_stride; /* nbuf: 2 or 4 */
        if (p.nbuf == 4) cp_async_wait<3>();
        else cp_async_wait<1>();
        __syncwarp();
        uint32_t sl = item & (p.S - 1);
        float r[NC];
#pragma unroll
        for (int c = 0; c < NC; c++) r[c] = 0.0f;
        if (item < n_items) dot_rows<F, 1, NC>(cur, 0, p.slice_blocks, a, sl * p.slice_blocks, tab, lane, r);
        if (item < n_items) mv_row(p, g, item >> p.lgS, &yrow, &ycol);
        if (p.S == 1) {
            if (item < n_items && lane == 0)
#pragma unroll
                for (int c = 0; c < NC; c++) yrow[c * ycol] = r[c];
        } else {
            float *pp = partial + (it & 1) * NC * NW;
            if (lane == 0)
#pragma unroll
                for (int c = 0; c < NC; c++) pp[c * NW + warp] = r[c];
            __syncthreads();
            if (item < n_items && lane == 0 && sl == 0)
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    float t = 0.0f;
                    for (uint32_t k = 0; k < p.S; k++) t += pp[c * NW + warp + k];
                    yrow[c * ycol] = t;
                }
        }
        __syncwarp();
        issue(tile + p.nbuf * bpg, cur);
        tile = ntile;
        item = nitem;
    }
}

template <class F, int NW, int NC = 1>
__global__ void __launch_bounds__(NW * 32, F::act_kind == DS4_ACT_Q8_0 ? 8 : 1) k_matvec(const mv_params p) {
    extern __shared__ __align__(16) uint8_t smem[];
    matvec_body<F, NW, NC>(p, smem, blockIdx.x, gridDim.x);
}

/* Streaming product for matrices with many rows (no fewer than half the
 * resident warps): each warp owns a contiguous run of whole rows of one
 * activation group and streams them through NST staging buffers in chunks
 * (a row is 2^lgC chunks of slice_bytes), the next NST - 1 chunks in flight
 * while one is used. Lanes keep their block sums across a
 * row's chunks in block order (as dot_rows over the whole row: the same
 * result) and the warp adds them at the row's end; no synchronisation
 * between warps once the activation is staged, and nothing but the chunk
 * index to compute per step (k_matvec spends its issue slots on per-item
 * bookkeeping for short rows, and its slices of long rows meet through a
 * block barrier per tile). */
/* Stages from ds4-cuda-bench on an H200 (attn_q_b / out_a / out_b, us):
 * 2 stages of <= 1088 bytes 13.5/13.9/13.7; 2 x 2176 13.6/14.4/13.7;
 * 4 x 2176 15.2/15.7/14.1; 8 x 2176 17.0/17.4/17.0 (fewer stages leave room
 * for more warps). Chunks by the memory's bandwidth: the bytes in flight
 * that keep DRAM busy grow with it (Little's law). In the decode step
 * (ctx 4096, after k_hc lost its second exchange) 2176 bytes against 1088:
 * H200 (4.8 TB/s, 43 q2 layers) ahead in 17 of 20 alternating rounds over
 * five calls, +0.2 to +1% (ctx 65536 4 of 4, q4 +0.3%); H100 (3.35 TB/s,
 * 41 layers) -1.4% (3 of 3). DS4_CUDA_MVS=stages,bytes (stages 2, 4 or 8)
 * overrides. */
enum { MVS_STAGES = 2, MVS_CHUNK = 1088, MVS_CHUNK_WIDE = 2176 };
static const double MVS_WIDE_BW = 4e12; /* bytes/s from which MVS_CHUNK_WIDE */

template <class F, int NW, int NST, int NC = 1>
__device__ __forceinline__ void matvec_stream_body(const mv_params &p, uint8_t *smem, uint32_t blk, uint32_t nblk) {
    pdl_trigger();
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* Shared memory: [tables][NC activations][32 doubles][NW x NST buffers]. */
    uint8_t *s = smem + table_bytes<F>() + NC * p.act_smem;
    double *red = (double *)s;
    uint8_t *const buf = s + 32 * sizeof(double) + warp * NST * p.buf_stride;
    if (p.active && *p.active == 0) { /* step_io: written before the step's first kernel */
        pdl_wait(); /* ending only after the kernel before it: the next one's wait covers both */
        return;
    }
    const uint32_t *tab = stage_tables<F>(smem, p.tab, tid, NW * 32); /* joins the first weights' group */

    const uint32_t bpg = nblk / p.n_groups, g = blk / bpg;
    const uint32_t wg = (blk % bpg) * NW + warp, nwg = bpg * NW;
    const uint32_t r0 = (uint32_t)((uint64_t)p.group_rows * wg / nwg);
    const uint32_t n_steps = ((uint32_t)((uint64_t)p.group_rows * (wg + 1) / nwg) - r0) << p.lgC;
    const uint32_t last = (1u << p.lgC) - 1;
    float *yrow;
    uint32_t ycol;
    auto issue = [&](uint32_t k, uint8_t *dst) {
        if (k < n_steps)
            stage_span(dst, mv_row(p, g, r0 + (k >> p.lgC), &yrow, &ycol) + (size_t)(k & last) * p.slice_bytes,
                       p.slice_bytes, true, lane);
        cp_async_commit();
    };
    for (uint32_t k = 0; k < NST; k++) issue(k, buf + k * p.buf_stride);
    s = smem + table_bytes<F>();
    pdl_wait();
    /* as in k_matvec: one shared helper for the two measured 1.5% slower
     * (43 q2 layers, H200, notes/cuda-kernels.md §15) */
    act_view a[NC];
    stage_columns<F, NW, NC>(p, s, red, g, tid, blk == 0, a);
    if (F::needs_tab || !p.x) cp_async_wait<0>(); /* this thread's table and activation copies */
    __syncthreads();
    float acc[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) acc[c] = 0.0f;
    for (uint32_t k = 0; k < n_steps; k++) {
        uint8_t *cur = buf + (k % NST) * p.buf_stride;
        cp_async_wait<NST - 1>();
        __syncwarp();
        rows_acc<F, 1, NC>(cur, 0, p.slice_blocks, a, (k & last) * p.slice_blocks, tab, lane, acc);
        if ((k & last) == last) {
            mv_row(p, g, r0 + (k >> p.lgC), &yrow, &ycol);
#pragma unroll
            for (int c = 0; c < NC; c++) {
                float r = row_total<F>(acc[c]);
                if (lane == 0) yrow[c * ycol] = r;
                acc[c] = 0.0f;
            }
        }
        __syncwarp();
        issue(k + NST, cur);
    }
}

template <class F, int NW, int NST, int NC = 1>
__global__ void __launch_bounds__(NW * 32) k_matvec_stream(const mv_params p) {
    extern __shared__ __align__(16) uint8_t smem[];
    matvec_stream_body<F, NW, NST, NC>(p, smem, blockIdx.x, gridDim.x);
}

/* Two products of different weight types in one launch (each alone pays
 * its own start and drain, ~4 us: notes/cuda-kernels.md §16): blocks
 * 0..split-1 run the first (S0: its streaming body with S0 stages, 0: the
 * tiled one), the others the second; no block waits for another. */
template <class F, int S, int NW, int NC>
__device__ __forceinline__ void matvec_one(const mv_params &p, uint8_t *smem, uint32_t blk, uint32_t nblk) {
    if constexpr (S > 0) matvec_stream_body<F, NW, S, NC>(p, smem, blk, nblk);
    else matvec_body<F, NW, NC>(p, smem, blk, nblk);
}

/* NC: both halves' activation columns. */
template <class F0, int S0, class F1, int S1, int NW, int NC = 1>
__global__ void __launch_bounds__(NW * 32) k_matvec_pair(const mv_params p0, const mv_params p1, uint32_t split) {
    extern __shared__ __align__(16) uint8_t smem[];
    if (blockIdx.x < split) matvec_one<F0, S0, NW, NC>(p0, smem, blockIdx.x, split);
    else matvec_one<F1, S1, NW, NC>(p1, smem, blockIdx.x - split, gridDim.x - split);
}

/* ------------------------------------------------------------------ */
/* Routed MoE: gate + up + SwiGLU, and down over the selected experts  */
/* ------------------------------------------------------------------ */

struct moe_params {
    const uint8_t *w0, *w1; /* gate, up (gate_up) or down, unused */
    const uint8_t *act;
    const float *x; /* gate_up: f32 activation quantised per block (act NULL) */
    const int32_t *ids;
    const float *weights, *add;
    float *out;
    const uint32_t *tab;
    uint32_t n_in, n_rows, n_expert, n_sel; /* n_rows per expert */
    uint32_t row_bytes, nb;                 /* one row: bytes, blocks */
    uint32_t part_stride, buf_stride, act_smem;
    size_t expert_bytes;
    float clamp;
    int aligned;
    int fixed_ids; /* ids/weights do not come from an earlier kernel */
    /* or (not NULL) an earlier kernel publishes *serial in *stamp once it
     * has written them (ds4_cuda_ids_src) */
    const uint32_t *stamp, *serial;
    /* gate/up: a Q8_0 product carried as items after the routed ones
     * (ds4_cuda_carried_mv; c_rows 0: none) */
    const uint8_t *c_w, *c_act;
    float *c_out;
    uint32_t c_rows, c_nb, c_row_bytes, c_act_off;
    int c_aligned;
    /* several tokens (the kernels' NT > 1): selections k belong to token
     * k / tok_sel; gate/up stage token t's activation at act + t·act_tok
     * (x + t·n_in) into shared memory t·tok_smem on; the down writes token
     * t's rows at out + t·n_rows (add likewise) */
    uint32_t tok_sel, tok_smem;
    size_t act_tok;
};

/* The launch's ids (and gate/up's weights) in shared memory before its
 * pdl_wait, once their writer has published them: the first weights can
 * be requested while the kernels in between end. */
static __device__ void moe_stamped_ids(const moe_params &p, int32_t *ids, float *wts) {
    stamp_await(p.stamp, *p.serial);
    if (threadIdx.x < p.n_sel) {
        ids[threadIdx.x] = __ldcg(p.ids + threadIdx.x);
        if (wts) wts[threadIdx.x] = __ldcg(p.weights + threadIdx.x);
    }
    __syncthreads();
}

/* Item (k, r): row r of gate and of up of expert ids[k], staged side by
 * side; the warp writes mid[k·n_rows + r]. Items past the routed ones
 * (k ≥ n_sel) are the carried Q8_0 product's rows j = item − n_sel·n_rows,
 * its activation staged beside the routed one: one launch less a layer
 * for the shared expert's down, whose weights do not wait for the router. */
template <class F, int NW, int NB, int NT = 1>
__global__ void __launch_bounds__(NW * 32) k_moe_gate_up(const moe_params p) {
    extern __shared__ __align__(16) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* Shared memory: [tables][activation, carried activation][ids, weights][NW x NB buffers]. */
    uint8_t *s = smem + table_bytes<F>() + p.act_smem;
    int32_t *ids = (int32_t *)s;
    float *wts = (float *)(s + 4 * DS4_CUDA_MAX_SEL * NT);
    uint8_t *const buf = s + 8 * DS4_CUDA_MAX_SEL * NT + warp * NB * p.buf_stride; /* NB buffers of buf_stride */
    const uint32_t n_routed = p.n_sel * p.n_rows;

    /* The first weights are requested before the activation is staged (and,
     * when the ids are fixed, before waiting for the previous kernel). */
    pdl_trigger();
    const uint32_t *tab = stage_tables<F>(smem, p.tab, tid, blockDim.x); /* constants: before the wait */
    if (p.stamp) moe_stamped_ids(p, ids, wts);
    else if (!p.fixed_ids) pdl_wait();
    const uint32_t n_items = n_routed + p.c_rows, n_tiles = (n_items + NW - 1) / NW;
    /* item = k·n_rows + r, carried from one tile to the next by the grid's
     * stride: an unsigned division an item was ~40 of its ~730 instructions */
    const uint32_t stride = gridDim.x * NW, stride_k = stride / p.n_rows, stride_r = stride % p.n_rows;
    auto advance = [&](uint32_t &k, uint32_t &r) {
        k += stride_k;
        r += stride_r;
        if (r >= p.n_rows) r -= p.n_rows, k++;
    };
    auto issue = [&](uint32_t k, uint32_t r, uint8_t *dst, const int32_t *id_list) {
        if (k >= p.n_sel) { /* a carried row */
            const uint32_t j = (k - p.n_sel) * p.n_rows + r;
            stage_span(dst, p.c_w + (size_t)j * p.c_row_bytes, p.c_row_bytes, p.c_aligned, lane);
            return;
        }
        uint32_t e = (uint32_t)id_list[k];
        if (e >= p.n_expert) return;
        size_t off = (size_t)e * p.expert_bytes + (size_t)r * p.row_bytes;
        stage_span(dst, p.w0 + off, p.row_bytes, p.aligned, lane);
        stage_span(dst + p.part_stride, p.w1 + off, p.row_bytes, p.aligned, lane);
    };
    uint32_t tile = blockIdx.x, item = tile * NW + warp, k = item / p.n_rows, r = item % p.n_rows;
    if (tile < n_tiles && item < n_items) issue(k, r, buf, p.stamp ? ids : p.ids);
    cp_async_commit();
    if (!p.stamp && tid < (int)p.n_sel) {
        ids[tid] = p.ids[tid];
        wts[tid] = p.weights[tid];
    }
    s = smem + table_bytes<F>();
    if (p.fixed_ids || p.stamp) pdl_wait();
    act_view a[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
        a[t] = p.x ? stage_act_x<F>(s + t * p.tok_smem, p.x + (size_t)t * p.n_in, p.n_in, nullptr, 0.0f, nullptr,
                                    nullptr, tid, NW * 32, false)
                   : stage_act<F>(s + t * p.tok_smem, p.act + t * p.act_tok, p.n_in, tid, NW * 32);
    const act_view ca = p.c_rows ? stage_act<fmt_q8_0>(s + p.c_act_off, p.c_act, p.c_nb * fmt_q8_0::block_elems, tid,
                                                       NW * 32)
                                 : act_view{};
    if (F::needs_tab || !p.x || p.c_rows) cp_async_wait<0>(); /* this thread's table and activation copies */
    __syncthreads();
    for (uint32_t it = 0; tile < n_tiles; it++) {
        uint32_t ntile = tile + gridDim.x, nitem = ntile * NW + warp, nk = k, nr = r;
        advance(nk, nr);
        uint8_t *cur = buf + (NB == 2 ? (it & 1) : 0) * p.buf_stride;
        if (NB == 2) { /* the next item loads while this one is used */
            if (ntile < n_tiles && nitem < n_items) issue(nk, nr, buf + ((it + 1) & 1) * p.buf_stride, ids);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncwarp();
        if (item < n_routed) {
            float mid = 0.0f;
            if ((uint32_t)ids[k] < p.n_expert) {
                float gu[2];
                dot_rows<F, 2>(cur, p.part_stride, p.nb, &a[NT > 1 ? k / p.tok_sel : 0], 0, tab, lane, gu);
                mid = ds4_swiglu(gu[0], gu[1], p.clamp, wts[k]);
            }
            if (lane == 0) p.out[item] = mid;
        } else if (item < n_items) { /* k_moe_down_rows<fmt_q8_0>'s dot of one row: the same bits */
            float d;
            dot_rows<fmt_q8_0, 1>(cur, 0, p.c_nb, &ca, 0, nullptr, lane, &d);
            if (lane == 0) p.c_out[item - n_routed] = d;
        }
        __syncwarp();
        if (NB == 1) { /* one buffer: the next item after this one */
            if (ntile < n_tiles && nitem < n_items) issue(nk, nr, buf, ids);
            cp_async_commit();
        }
        tile = ntile;
        item = nitem;
        k = nk;
        r = nr;
    }
}

/* Item o: row o of down of every selected expert, staged side by side; the
 * warp adds the n_sel dot products in selection order. The activation is
 * the n_sel quantised mid rows back to back. */
template <class F, int NW, int NB>
__global__ void __launch_bounds__(NW * 32) k_moe_down(const moe_params p) {
    extern __shared__ __align__(16) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* Shared memory: [tables][activation][ids][NW x 2 buffers]. */
    uint8_t *s = smem + table_bytes<F>() + p.act_smem;
    int32_t *ids = (int32_t *)s;
    uint8_t *const buf = s + 8 * DS4_CUDA_MAX_SEL + warp * NB * p.buf_stride; /* NB buffers of buf_stride */

    /* The first weights are requested before the activation is staged (and,
     * when the ids are fixed, before waiting for the previous kernel). */
    pdl_trigger();
    const uint32_t *tab = stage_tables<F>(smem, p.tab, tid, blockDim.x); /* constants: before the wait */
    if (p.stamp) moe_stamped_ids(p, ids, nullptr);
    else if (!p.fixed_ids) pdl_wait();
    const uint32_t n_items = p.n_rows, n_tiles = (n_items + NW - 1) / NW;
    auto issue = [&](uint32_t o, uint8_t *dst, const int32_t *id_list) {
        for (uint32_t k = 0; k < p.n_sel; k++) {
            uint32_t e = (uint32_t)id_list[k];
            if (e < p.n_expert)
                stage_span(dst + k * p.part_stride, p.w0 + (size_t)e * p.expert_bytes + (size_t)o * p.row_bytes,
                           p.row_bytes, p.aligned, lane);
        }
    };
    uint32_t tile = blockIdx.x, item = tile * NW + warp;
    if (tile < n_tiles && item < n_items) issue(item, buf, p.stamp ? ids : p.ids);
    cp_async_commit();
    if (!p.stamp && tid < (int)p.n_sel) ids[tid] = p.ids[tid];
    s = smem + table_bytes<F>();
    if (p.fixed_ids || p.stamp) pdl_wait();
    const act_view a = stage_act<F>(s, p.act, p.n_in * p.n_sel, tid, NW * 32);
    cp_async_wait<0>(); /* this thread's table and activation copies */
    __syncthreads();
    for (uint32_t it = 0; tile < n_tiles; it++) {
        uint32_t ntile = tile + gridDim.x, nitem = ntile * NW + warp;
        uint8_t *cur = buf + (NB == 2 ? (it & 1) : 0) * p.buf_stride;
        if (NB == 2) { /* the next item loads while this one is used */
            if (ntile < n_tiles && nitem < n_items) issue(nitem, buf + ((it + 1) & 1) * p.buf_stride, ids);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncwarp();
        if (item < n_items) {
            float acc = 0.0f;
            for (uint32_t k = 0; k < p.n_sel; k++) {
                if ((uint32_t)ids[k] >= p.n_expert) continue;
                float d;
                dot_rows<F, 1>(cur + k * p.part_stride, 0, p.nb, &a, k * p.nb, tab, lane, &d);
                acc += d;
            }
            if (lane == 0) p.out[item] = p.add ? acc + p.add[item] : acc;
        }
        __syncwarp();
        if (NB == 1) { /* one buffer: the next item after this one */
            if (ntile < n_tiles && nitem < n_items) issue(nitem, buf, ids);
            cp_async_commit();
        }
        tile = ntile;
        item = nitem;
    }
}

/* Down, rows of one expert a warp: a block's warps are (row slot r,
 * selected expert k), R = blockDim/32/n_sel row slots; iteration it takes
 * slots (it·gridDim + block)·R + r. Each warp stages its slot's rows of
 * expert ids[k] (the next iteration's while it uses these), writes their
 * dot products to shared memory, and after a barrier one thread a row adds
 * the row's n_sel products in selection order (+ add): k_moe_down's sums
 * with every expert's row in flight at once and a sixth of the staging per
 * warp.
 *
 * RPW = 0: a slot is one row, its blocks' parts over the lanes (units, as
 * every product). RPW > 0 (block mode, rows of 32/RPW blocks): a slot is
 * RPW consecutive rows, lane l takes block l / RPW of row l % RPW whole
 * (F::block_dot) and the row's block terms are added across its lanes.
 * The per-row work the unit form repeats for each row (the parts'
 * reduction, the term, the warp sum, the loop) is then shared by RPW rows:
 * the routed down was instruction-bound (notes/cuda-kernels.md §28). */
template <class F, int RPW, int NT = 1>
__global__ void __launch_bounds__(512) k_moe_down_rows(const moe_params p) {
    constexpr int ROWS = RPW ? RPW : 1; /* rows a slot */
    extern __shared__ __align__(16) uint8_t smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, nth = blockDim.x;
    /* warp = r·S + k and R = warps / S by subtraction (S ≤ 8·NT, ≤ 16 warps):
     * a division by the runtime S was ~30 instructions, twice, a warp */
    const int S = (int)p.n_sel;
    int k = warp, r = 0, R = 0;
    while (k >= S) k -= S, r++;
    for (int t = S; t <= nth / 32; t += S) R++;
    /* Shared memory: [tables][activation][ids][2 x R·ROWS x S products][warps x 2 buffers]. */
    uint8_t *s = smem + table_bytes<F>() + p.act_smem;
    int32_t *ids = (int32_t *)s;
    float *part = (float *)(s + 4 * DS4_CUDA_MAX_SEL * NT);
    uint8_t *const buf =
        s + 4 * DS4_CUDA_MAX_SEL * NT + round16(8 * DS4_CUDA_MAX_SEL * NT * R * ROWS) + warp * 2 * p.part_stride;
    pdl_trigger();
    const uint32_t *tab = stage_tables<F>(smem, p.tab, tid, blockDim.x); /* constants: before the wait */
    if (p.stamp) moe_stamped_ids(p, ids, nullptr);
    else if (!p.fixed_ids) pdl_wait();
    const uint32_t slot_rows = (uint32_t)(R * ROWS);
    const uint32_t n_it = (p.n_rows + gridDim.x * slot_rows - 1) / (gridDim.x * slot_rows);
    /* the first row of slot `slot` in iteration it */
    auto row_of = [&](uint32_t it, int slot) {
        return ((it * gridDim.x + blockIdx.x) * (uint32_t)R + (uint32_t)slot) * ROWS;
    };
    /* this warp's expert (none past the R·S working warps) */
    auto expert = [&](const int32_t *id_list) { return warp < R * S ? (uint32_t)id_list[k] : p.n_expert; };
    auto issue = [&](uint32_t it, uint8_t *dst, uint32_t e) {
        uint32_t o = row_of(it, r);
        if (it < n_it && o < p.n_rows && e < p.n_expert) {
            const uint32_t n = p.n_rows - o < (uint32_t)ROWS ? p.n_rows - o : (uint32_t)ROWS;
            stage_span(dst, p.w0 + (size_t)e * p.expert_bytes + (size_t)o * p.row_bytes, n * p.row_bytes, p.aligned,
                       lane);
        }
        cp_async_commit();
    };
    issue(0, buf, expert(p.stamp ? ids : p.ids));
    if (!p.stamp && tid < S) ids[tid] = p.ids[tid];
    s = smem + table_bytes<F>();
    if (p.fixed_ids || p.stamp) pdl_wait();
    const act_view a = stage_act<F>(s, p.act, p.n_in * p.n_sel, tid, nth);
    cp_async_wait<0>(); /* this thread's table and activation copies */
    __syncthreads();
    const uint32_t e = expert(ids); /* read once: the loop's rows all belong to it */
    const int rho = RPW ? lane % ROWS : 0, blk = RPW ? lane / ROWS : 0; /* block mode: this lane's row and block */
    for (uint32_t it = 0; it < n_it; it++) {
        uint8_t *cur = buf + (it & 1) * p.part_stride;
        issue(it + 1, buf + ((it + 1) & 1) * p.part_stride, e);
        cp_async_wait<1>();
        __syncwarp();
        float *pp = part + (it & 1) * R * ROWS * S;
        if (warp < R * S) {
            const bool live = row_of(it, r) + rho < p.n_rows && e < p.n_expert;
            float d = 0.0f;
            if constexpr (RPW == 0) {
                if (live) dot_rows<F, 1>(cur, 0, p.nb, &a, k * p.nb, tab, lane, &d);
            } else {
                if (live)
                    d = F::block_dot(cur + rho * p.row_bytes + blk * F::block_bytes, a, k * p.nb + blk, blk & 3);
#pragma unroll
                for (int o = ROWS; o < 32; o <<= 1) d += __shfl_xor_sync(FULL_MASK, d, o);
            }
            if (RPW ? blk == 0 : lane == 0) pp[(r * ROWS + rho) * S + k] = d;
        }
        __syncthreads();
        if (tid < NT * R * ROWS) { /* token t = tid / (R·ROWS) sums its own selections */
            const int t = NT > 1 ? tid / (R * ROWS) : 0, row = tid - t * R * ROWS;
            const int k0 = NT > 1 ? t * (int)p.tok_sel : 0, k1 = NT > 1 ? k0 + (int)p.tok_sel : S;
            uint32_t o = row_of(it, 0) + row;
            if (o < p.n_rows) {
                float acc = 0.0f;
                for (int kk = k0; kk < k1; kk++)
                    if ((uint32_t)ids[kk] < p.n_expert) acc += pp[row * S + kk];
                const size_t ot = (size_t)t * p.n_rows + o;
                p.out[ot] = p.add ? acc + p.add[ot] : acc;
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* Host side                                                           */
/* ------------------------------------------------------------------ */

enum { MV_WARPS = 8, GU_WARPS = 8, DN_WARPS = 4, MV_DEEP_SLICE = 2176 };

static int cuda_fail(ds4_err *err, const char *what, cudaError_t e) {
    return ds4_fail(err, "cuda: %s: %s", what, cudaGetErrorString(e));
}

/* Grid of a persistent kernel: `waves` times as many blocks as fit at
 * once (1: every block stays resident and loops over tiles; more: the
 * hardware hands out the extra blocks as others finish, which evens out the
 * tail), at most one per tile. */
template <class K>
static int launch_grid(ds4_cuda_kernels *k, K kernel, int threads, size_t smem, uint32_t n_tiles, int waves,
                       int *grid, ds4_err *err) {
    if (k->waves) waves = k->waves;
    if (smem > k->smem_optin)
        return ds4_fail(err, "cuda: kernel needs %zu bytes of shared memory, the device allows %zu", smem,
                        k->smem_optin);
    int per_sm = 0;
    cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
    if (e != cudaSuccess) return cuda_fail(err, "occupancy", e);
    if (per_sm < 1) per_sm = 1;
    uint64_t g = (uint64_t)per_sm * (uint64_t)k->n_sm * (uint64_t)waves;
    *grid = (int)(g < n_tiles ? g : n_tiles);
    if (*grid < 1) *grid = 1;
    return 0;
}

/* The streaming kernel with nst staging buffers a warp (2, 4 or 8). */
/* The formats with several-column products: the step's dense products
 * are Q8_0 and F16 (the routed experts' formats go through the MoE
 * kernels), and each instantiation costs CI's four-architecture build. */
template <class F>
static constexpr bool has_cols() {
    return std::is_same<F, fmt_q8_0>::value || std::is_same<F, fmt_f16>::value;
}

/* Columns beyond the first stream with MVS_STAGES only. */
template <class F>
static void (*stream_kernel(int nst, int nc))(const mv_params) {
    if constexpr (has_cols<F>())
        if (nc == 2) return k_matvec_stream<F, MV_WARPS, MVS_STAGES, 2>;
    return nst == 8 ? k_matvec_stream<F, MV_WARPS, 8> : nst == 4 ? k_matvec_stream<F, MV_WARPS, 4>
                                                              : k_matvec_stream<F, MV_WARPS, 2>;
}

template <class F>
static void (*tiled_kernel(int nc))(const mv_params) {
    if constexpr (has_cols<F>())
        if (nc == 2) return k_matvec<F, MV_WARPS, 2>;
    return k_matvec<F, MV_WARPS>;
}

/* A product as planned for its launch: the kernel's parameters, its
 * streaming stages (0: the tiled k_matvec), shared memory, grid, and the
 * weight bytes it reads. */
struct mv_plan {
    mv_params p;
    int cols;
    int stages;
    size_t smem;
    int grid;
    uint64_t bytes;
};

template <class F>
static int plan_matvec(ds4_cuda_kernels *k, const ds4_cuda_mv *d, mv_plan *pl, ds4_err *err) {
    const int NW = MV_WARPS;
    uint32_t n_rows = 0;
    for (uint32_t i = 0; i < d->n_seg; i++) n_rows += d->seg[i].rows;
    uint32_t nb = d->n_in / F::block_elems, row_bytes = nb * F::block_bytes;
    /* Split rows into S slices while there are too few items to fill the
     * device or a row is longer than a staging buffer. */
    uint32_t S = 1, target = (uint32_t)k->n_sm * (uint32_t)k->split_per_sm;
    for (;;) {
        uint32_t s2 = 2 * S;
        bool can = s2 <= (uint32_t)NW && nb % s2 == 0 && (row_bytes / s2) % 16 == 0;
        if (!can || ((uint64_t)n_rows * S >= target && row_bytes / S <= MAX_SLICE_BYTES)) break;
        S = s2;
    }
    mv_params p = {};
    p.n_seg = d->n_seg;
    p.aligned = row_bytes % 16 == 0 && (row_bytes / S) % 16 == 0;
    for (uint32_t i = 0, end = 0; i < d->n_seg; i++) {
        p.w[i] = (const uint8_t *)d->seg[i].w;
        p.y[i] = d->seg[i].y;
        p.y_col[i] = d->seg[i].y_col;
        end += d->n_groups > 1 ? d->seg[i].rows / d->n_groups : d->seg[i].rows;
        p.seg_end[i] = end;
        p.aligned &= (uintptr_t)d->seg[i].w % 16 == 0;
    }
    p.act = (const uint8_t *)d->act;
    p.x = d->x;
    p.norm_w = d->norm_w;
    p.eps = d->eps;
    p.norm_out = d->norm_out;
    p.tab = k->tables;
    p.n_in = d->n_in;
    p.row_bytes = row_bytes;
    p.S = S;
    while ((1u << p.lgS) < S) p.lgS++;
    p.slice_blocks = nb / S;
    p.slice_bytes = row_bytes / S;
    p.buf_stride = round16(p.slice_bytes) + 16;
    p.nbuf = k->deep && p.slice_bytes <= MV_DEEP_SLICE ? 4 : 2;
    p.n_groups = d->n_groups;
    p.group_rows = n_rows / d->n_groups;
    p.act_group_bytes = act_row_bytes_of<F>(d->n_in);
    p.active = d->active;
    p.act_smem = act_smem_bytes(F::act_kind, d->n_in);
    if ((int)F::act_kind == DS4_ACT_F32 && d->x && d->norm_w) p.act_smem = round16(d->n_in * 4);
    const int nc = d->n_cols > 1 ? (int)d->n_cols : 1;
    p.x_col = (size_t)d->n_groups * d->n_in;
    p.act_col = d->n_groups * p.act_group_bytes;
    pl->cols = nc;
    pl->bytes = (uint64_t)n_rows * row_bytes;
    /* Many rows: k_matvec_stream, rows in chunks of at most k->mvs_chunk
     * bytes that keep the lanes' block order (a multiple of 32 units). */
    uint32_t cb = nb;
    while (cb * F::block_bytes > (uint32_t)k->mvs_chunk && cb % 2 == 0 && (cb / 2 * F::block_bytes) % 16 == 0 &&
           (cb / 2 * F::G) % 32 == 0)
        cb /= 2;
    if (k->stream && p.aligned && row_bytes % 16 == 0 && cb * F::block_bytes <= (uint32_t)k->mvs_chunk) {
        mv_params q = p;
        q.S = 1;
        q.lgS = 0;
        q.slice_blocks = cb;
        q.slice_bytes = cb * F::block_bytes;
        while ((cb << q.lgC) < nb) q.lgC++;
        q.buf_stride = round16(q.slice_bytes) + 16;
        const int nst = nc > 1 ? MVS_STAGES : k->mvs_stages;
        size_t smem = table_bytes<F>() + nc * p.act_smem + 32 * sizeof(double) + (size_t)NW * nst * q.buf_stride;
        void (*kern)(const mv_params) = stream_kernel<F>(nst, nc);
        int per_sm = 0;
        if (smem <= k->smem_optin &&
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, NW * 32, smem) == cudaSuccess &&
            per_sm > 0 && 2ull * n_rows >= (uint64_t)per_sm * k->n_sm * NW) {
            int grid = per_sm * k->n_sm;
            pl->grid = grid < (int)d->n_groups ? (int)d->n_groups : grid / (int)d->n_groups * (int)d->n_groups;
            pl->p = q;
            pl->stages = nst;
            pl->smem = smem;
            return 0;
        }
    }
    const size_t fixed = table_bytes<F>() + 32 * sizeof(double) + nc * 2 * NW * sizeof(float) +
                         (size_t)NW * p.nbuf * p.buf_stride;
    size_t smem = fixed + nc * p.act_smem;
    uint32_t n_tiles = d->n_groups * (uint32_t)(((uint64_t)p.group_rows * S + NW - 1) / NW);
    /* Unsplit rows with a quantised activation: 2 waves even out the tail
     * (attn_q_b, 1 -> 2 waves: H100 16.3 -> 15.4 us, H200 13.5 -> 13.3 us;
     * 4 waves helped the H100 more but cost the H200); split rows, the MoE
     * kernels, and blocks that quantise x themselves (a longer start, paid
     * once per block) run best persistent (the decode step, 12 layers at
     * ctx 512 on an H100: 1 wave for every kernel -10 us a layer). */
    int grid = 1;
    if (launch_grid(k, tiled_kernel<F>(nc), NW * 32, smem, n_tiles, S == 1 && !d->x ? 2 : 1, &grid, err)) return -1;
    pl->grid = grid < (int)d->n_groups ? (int)d->n_groups : grid / (int)d->n_groups * (int)d->n_groups;
    pl->p = p;
    pl->stages = 0;
    pl->smem = smem;
    return 0;
}

template <class F>
static int run_matvec(ds4_cuda_kernels *k, const ds4_cuda_mv *d, cudaStream_t st, ds4_err *err) {
    mv_plan pl;
    if (plan_matvec<F>(k, d, &pl, err)) return -1;
    void (*kern)(const mv_params) = pl.stages ? stream_kernel<F>(pl.stages, pl.cols) : tiled_kernel<F>(pl.cols);
    cudaError_t e = pdl_launch(k->pdl, kern, pl.grid, MV_WARPS * 32, pl.smem, st, pl.p);
    return e == cudaSuccess ? 0 : cuda_fail(err, "matvec launch", e);
}

/* The pair kernel for the stages of both halves (each 0 or MVS_STAGES)
 * and their columns (1, or 2 where both formats have several). */
template <class F0, class F1>
static void (*pair_kernel(int s0, int s1, int nc))(const mv_params, const mv_params, uint32_t) {
    const int NW = MV_WARPS, S = MVS_STAGES;
    if constexpr (has_cols<F0>() && has_cols<F1>())
        if (nc == 2)
            return s0 ? (s1 ? k_matvec_pair<F0, S, F1, S, NW, 2> : k_matvec_pair<F0, S, F1, 0, NW, 2>)
                      : (s1 ? k_matvec_pair<F0, 0, F1, S, NW, 2> : k_matvec_pair<F0, 0, F1, 0, NW, 2>);
    return s0 ? (s1 ? k_matvec_pair<F0, S, F1, S, NW> : k_matvec_pair<F0, S, F1, 0, NW>)
              : (s1 ? k_matvec_pair<F0, 0, F1, S, NW> : k_matvec_pair<F0, 0, F1, 0, NW>);
}

/* d0 (type F0) and d1 (F1) in one launch: one wave of the pair kernel,
 * its blocks shared in proportion to each half's time — its weight bytes,
 * counted twice through the tiled body (k_matvec's, stages 0) against the
 * streaming one — and no more to a half than it would take alone; two
 * launches where the pair does not apply (activation groups, other staging
 * depths, a shared-memory or occupancy failure). The router + shared
 * expert pair (Q8_0 streamed, the F16 router tiled) split by bytes gave
 * the router too few blocks: H200, 43 q2 layers, ctx 4096, the router's
 * bytes weighted 1.25 / 1.5 / 2 against 1: +0.8 / +1.1 / +1.15% (one
 * call; +0.2% in another, on another H200); the pairs whose halves share
 * a body were best at 1 (0.75, 1.25, 1.5, 2: equal or slower). */
static double pair_cost(const mv_plan &pl) { return (double)pl.bytes * (pl.stages ? 1.0 : 2.0); }

template <class F0, class F1>
static int run_pair(ds4_cuda_kernels *k, const ds4_cuda_mv *d0, const ds4_cuda_mv *d1, cudaStream_t st,
                    ds4_err *err) {
    mv_plan a, b;
    if (plan_matvec<F0>(k, d0, &a, err) || plan_matvec<F1>(k, d1, &b, err)) return -1;
    const bool fits = d0->n_groups == 1 && d1->n_groups == 1 && a.cols == b.cols &&
                      (a.stages == 0 || a.stages == MVS_STAGES) && (b.stages == 0 || b.stages == MVS_STAGES);
    auto kern = pair_kernel<F0, F1>(a.stages, b.stages, a.cols);
    const size_t smem = a.smem > b.smem ? a.smem : b.smem;
    int per_sm = 0;
    if (!fits || smem > k->smem_optin ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kern, MV_WARPS * 32, smem) != cudaSuccess ||
        per_sm < 1)
        return run_matvec<F0>(k, d0, st, err) || run_matvec<F1>(k, d1, st, err) ? -1 : 0;
    const int total = per_sm * k->n_sm;
    int g0 = (int)((double)total * pair_cost(a) / (pair_cost(a) + pair_cost(b)) + 0.5);
    g0 = g0 < 1 ? 1 : g0 > total - 1 ? total - 1 : g0;
    if (g0 > a.grid) g0 = a.grid;
    int g1 = total - g0 < b.grid ? total - g0 : b.grid;
    if (g1 < 1) g1 = 1;
    cudaError_t e = pdl_launch(k->pdl, kern, g0 + g1, MV_WARPS * 32, smem, st, a.p, b.p, (uint32_t)g0);
    return e == cudaSuccess ? 0 : cuda_fail(err, "matvec pair launch", e);
}

/* The down product one expert row a warp (k_moe_down_rows), every format:
 * ds4-cuda-bench on an H200, q4 down 25.1 -> 20.2 us, Q2_K 14.6 -> 14.5 and
 * the shared expert's Q8_0 6.34 -> 6.51 in isolation; in the decode step
 * (43 q2 layers, ctx 4096, H200, three alternating rounds) 144.0 against
 * 142.0 tok/s with all three on it. DS4_CUDA_DOWNROWS=2: k_moe_down. */
static bool moe_down_rows(const ds4_cuda_kernels *k) { return k->down_rows != 2; }

/* The formats with a whole-block dot (F::block_dot). */
template <class F>
static constexpr bool has_block_dot() {
    return std::is_same<F, fmt_q2_K>::value || std::is_same<F, fmt_q4_K>::value;
}

/* Block mode of k_moe_down_rows (a block a lane, 32/nb rows a warp) for
 * the formats with a block_dot and rows of 1, 2, 4 or 8 blocks (the
 * model's 2048-wide down rows are 8); 0: the unit form.
 * DS4_CUDA_DOWNBLK=0 turns it off. */
template <class F>
static int down_rows_per_warp(const ds4_cuda_kernels *k, uint32_t nb) {
    if (!has_block_dot<F>() || !k->down_blocks) return 0;
    return nb == 1 ? 32 : nb == 2 ? 16 : nb == 4 ? 8 : nb == 8 ? 4 : 0;
}

template <class F, int NT>
static void (*down_rows_kernel_nt(int rpw))(const moe_params) {
    if constexpr (has_block_dot<F>()) {
        switch (rpw) {
        case 32: return k_moe_down_rows<F, 32, NT>;
        case 16: return k_moe_down_rows<F, 16, NT>;
        case 8: return k_moe_down_rows<F, 8, NT>;
        case 4: return k_moe_down_rows<F, 4, NT>;
        }
    }
    return k_moe_down_rows<F, 0, NT>;
}

template <class F>
static void (*down_rows_kernel(int rpw, uint32_t n_tok = 1))(const moe_params) {
    return n_tok == 2 ? down_rows_kernel_nt<F, 2>(rpw) : down_rows_kernel_nt<F, 1>(rpw);
}

/* Staging buffers per warp of the MoE kernels: one for Q4_K (more warps
 * fit: ds4-cuda-bench on an H200, q4 gate+up 1732 -> 1938 GB/s, down 994 ->
 * 1127) and for IQ2_XXS (its 48 KB of tables leave room for three 8-warp
 * blocks an SM with one, two with two: gate+up 17.49 vs 17.72 us), two
 * (the next item loading during this one) for Q2_K (down 1105 vs 970 GB/s). */
template <class F>
static int moe_buffers(const ds4_cuda_kernels *k) {
    if (k->moe_nb) return k->moe_nb;
    return std::is_same<F, fmt_q4_K>::value || F::needs_tab ? 1 : 2;
}

template <class F>
static int run_gate_up(ds4_cuda_kernels *k, const void *gate, const void *up, uint32_t n_in, uint32_t n_ff,
                       uint32_t n_expert, const int32_t *ids, const float *weights, uint32_t n_sel, float clamp,
                       const void *x_act, const float *x, ds4_cuda_ids_src src, const ds4_cuda_carried_mv *c,
                       float *mid, cudaStream_t st, ds4_err *err, uint32_t n_tok = 1) {
    const int NW = GU_WARPS;
    moe_params p = {};
    p.w0 = (const uint8_t *)gate;
    p.w1 = (const uint8_t *)up;
    p.act = (const uint8_t *)x_act;
    p.x = x;
    p.fixed_ids = src.fixed;
    p.stamp = src.stamp;
    p.serial = src.serial;
    p.ids = ids;
    p.weights = weights;
    p.out = mid;
    p.tab = k->tables;
    p.n_in = n_in;
    p.n_rows = n_ff;
    p.n_expert = n_expert;
    p.n_sel = n_sel;
    p.nb = n_in / F::block_elems;
    p.row_bytes = p.nb * F::block_bytes;
    p.expert_bytes = (size_t)n_ff * p.row_bytes;
    p.part_stride = round16(p.row_bytes) + 16;
    p.buf_stride = 2 * p.part_stride;
    p.tok_smem = act_smem_bytes(F::act_kind, n_in);
    p.act_smem = n_tok * p.tok_smem;
    p.tok_sel = n_sel / n_tok;
    p.act_tok = act_row_bytes_of<F>(n_in);
    p.clamp = clamp;
    p.aligned = (uintptr_t)gate % 16 == 0 && (uintptr_t)up % 16 == 0 && p.row_bytes % 16 == 0;
    if (c && c->rows) {
        p.c_w = (const uint8_t *)c->w;
        p.c_act = (const uint8_t *)c->act;
        p.c_out = c->out;
        p.c_rows = c->rows;
        p.c_nb = c->n_in / fmt_q8_0::block_elems;
        p.c_row_bytes = p.c_nb * fmt_q8_0::block_bytes;
        p.c_aligned = (uintptr_t)c->w % 16 == 0 && p.c_row_bytes % 16 == 0;
        p.c_act_off = p.act_smem;
        p.act_smem += act_smem_bytes(DS4_ACT_Q8_0, c->n_in);
        const uint32_t c_stride = round16(p.c_row_bytes) + 16;
        if (p.buf_stride < c_stride) p.buf_stride = c_stride;
    }
    const int nb = moe_buffers<F>(k);
    size_t smem = table_bytes<F>() + p.act_smem + 8 * DS4_CUDA_MAX_SEL * n_tok + (size_t)NW * nb * p.buf_stride;
    uint32_t n_tiles = (uint32_t)(((uint64_t)n_sel * n_ff + p.c_rows + NW - 1) / NW);
    int grid = 1;
    void (*kern)(const moe_params) = n_tok == 2 ? (nb == 1 ? k_moe_gate_up<F, NW, 1, 2> : k_moe_gate_up<F, NW, 2, 2>)
                                     : nb == 1  ? k_moe_gate_up<F, NW, 1>
                                                : k_moe_gate_up<F, NW, 2>;
    if (launch_grid(k, kern, NW * 32, smem, n_tiles, 1, &grid, err)) return -1;
    cudaError_t e = pdl_launch(k->pdl, kern, grid, NW * 32, smem, st, p);
    return e == cudaSuccess ? 0 : cuda_fail(err, "moe gate/up launch", e);
}

template <class F>
static int run_down(ds4_cuda_kernels *k, const void *down, uint32_t n_ff, uint32_t n_out, uint32_t n_expert,
                    const int32_t *ids, uint32_t n_sel, const void *mid_act, const float *add, ds4_cuda_ids_src src,
                    float *out, cudaStream_t st, ds4_err *err, uint32_t n_tok = 1) {
    const int NW = DN_WARPS;
    moe_params p = {};
    p.w0 = (const uint8_t *)down;
    p.act = (const uint8_t *)mid_act;
    p.ids = ids;
    p.fixed_ids = src.fixed;
    p.stamp = src.stamp;
    p.serial = src.serial;
    p.add = add;
    p.out = out;
    p.tab = k->tables;
    p.n_in = n_ff;
    p.n_rows = n_out;
    p.n_expert = n_expert;
    p.n_sel = n_sel;
    p.nb = n_ff / F::block_elems;
    p.row_bytes = p.nb * F::block_bytes;
    p.expert_bytes = (size_t)n_out * p.row_bytes;
    p.part_stride = round16(p.row_bytes) + 16;
    p.buf_stride = n_sel * p.part_stride;
    p.act_smem = act_smem_bytes(F::act_kind, n_ff * n_sel);
    p.tok_sel = n_sel / n_tok;
    p.aligned = (uintptr_t)down % 16 == 0 && p.row_bytes % 16 == 0;
    if (n_tok > 1 && !moe_down_rows(k))
        return ds4_fail(err, "cuda: several tokens' down needs k_moe_down_rows (DS4_CUDA_DOWNROWS is 2)");
    if (moe_down_rows(k)) { /* k_moe_down_rows: n_sel·R warps, R slots an iteration */
        const int rpw = down_rows_per_warp<F>(k, p.nb), rows = rpw ? rpw : 1;
        int R = (8 + (int)n_sel - 1) / (int)n_sel, threads = 32 * (int)n_sel * R;
        p.part_stride = round16(rows * p.row_bytes) + 16;
        size_t smem = table_bytes<F>() + p.act_smem + 4 * DS4_CUDA_MAX_SEL * n_tok +
                      round16(8 * DS4_CUDA_MAX_SEL * n_tok * R * rows) + (size_t)threads / 32 * 2 * p.part_stride;
        uint32_t n_blocks = (n_out + R * rows - 1) / (R * rows);
        void (*kern)(const moe_params) = down_rows_kernel<F>(rpw, n_tok);
        int grid = 1;
        if (launch_grid(k, kern, threads, smem, n_blocks, 1, &grid, err)) return -1;
        cudaError_t e = pdl_launch(k->pdl, kern, grid, threads, smem, st, p);
        return e == cudaSuccess ? 0 : cuda_fail(err, "moe down launch", e);
    }
    const int nb = moe_buffers<F>(k);
    size_t smem = table_bytes<F>() + p.act_smem + 8 * DS4_CUDA_MAX_SEL + (size_t)NW * nb * p.buf_stride;
    uint32_t n_tiles = (n_out + NW - 1) / NW;
    int grid = 1;
    void (*kern)(const moe_params) = nb == 1 ? k_moe_down<F, NW, 1> : k_moe_down<F, NW, 2>;
    if (launch_grid(k, kern, NW * 32, smem, n_tiles, 1, &grid, err)) return -1;
    cudaError_t e = pdl_launch(k->pdl, kern, grid, NW * 32, smem, st, p);
    return e == cudaSuccess ? 0 : cuda_fail(err, "moe down launch", e);
}

/* Lets every kernel use all the shared memory the device allows (the
 * IQ2_XXS variants have no down kernel: the down matrices are Q2_K). */
template <class F, bool DOWN = true>
static cudaError_t allow_smem(int bytes) {
    cudaError_t e;
    if ((e = cudaFuncSetAttribute(k_matvec<F, MV_WARPS>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)))
        return e;
    if constexpr (has_cols<F>())
        if ((e = cudaFuncSetAttribute(k_matvec<F, MV_WARPS, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) ||
            (e = cudaFuncSetAttribute(k_matvec_stream<F, MV_WARPS, MVS_STAGES, 2>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)))
            return e;
    if ((e = cudaFuncSetAttribute(k_matvec_stream<F, MV_WARPS, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) ||
        (e = cudaFuncSetAttribute(k_matvec_stream<F, MV_WARPS, 4>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) ||
        (e = cudaFuncSetAttribute(k_matvec_stream<F, MV_WARPS, 8>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)))
        return e;
    if ((e = cudaFuncSetAttribute(k_moe_gate_up<F, GU_WARPS, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) ||
        (e = cudaFuncSetAttribute(k_moe_gate_up<F, GU_WARPS, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) ||
        (e = cudaFuncSetAttribute(k_moe_gate_up<F, GU_WARPS, 1, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) ||
        (e = cudaFuncSetAttribute(k_moe_gate_up<F, GU_WARPS, 2, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)))
        return e;
    if constexpr (!DOWN) return cudaSuccess;
    if ((e = cudaFuncSetAttribute(k_moe_down<F, DN_WARPS, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) ||
        (e = cudaFuncSetAttribute(k_moe_down<F, DN_WARPS, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) ||
        (e = cudaFuncSetAttribute(k_moe_down_rows<F, 0>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) ||
        (e = cudaFuncSetAttribute(k_moe_down_rows<F, 0, 2>, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)))
        return e;
    if constexpr (has_block_dot<F>()) /* block mode */
        for (int rpw = 4; rpw <= 32; rpw *= 2)
            for (uint32_t nt = 1; nt <= DS4_CUDA_MOE_TOKENS; nt++)
                if ((e = cudaFuncSetAttribute(down_rows_kernel<F>(rpw, nt), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                              bytes)))
                    return e;
    return cudaSuccess;
}

template <class F0, class F1>
static cudaError_t allow_pair_smem(int bytes) {
    cudaError_t e = cudaSuccess;
    for (int nc = 1; nc <= 2 && e == cudaSuccess; nc++)
        for (int s0 = 0; s0 <= MVS_STAGES && e == cudaSuccess; s0 += MVS_STAGES)
            for (int s1 = 0; s1 <= MVS_STAGES && e == cudaSuccess; s1 += MVS_STAGES)
                e = cudaFuncSetAttribute(pair_kernel<F0, F1>(s0, s1, nc), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         bytes);
    return e;
}

/* ------------------------------------------------------------------ */
/* Public API                                                          */
/* ------------------------------------------------------------------ */

extern "C" int ds4_cuda_kernels_init(ds4_cuda_kernels **out, int device, ds4_err *err) {
    *out = NULL;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return cuda_fail(err, "select device", e);
    cudaDeviceProp prop;
    if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess) return cuda_fail(err, "device properties", e);
    if (prop.major < 8)
        return ds4_fail(err, "cuda: %s has compute capability %d.%d; the kernels need 8.0 or newer", prop.name,
                        prop.major, prop.minor);
    ds4_cuda_kernels *k = (ds4_cuda_kernels *)calloc(1, sizeof *k);
    if (!k) return ds4_fail(err, "cuda: out of host memory");
    k->device = device;
    k->n_sm = prop.multiProcessorCount;
    k->smem_optin = prop.sharedMemPerBlockOptin;
    k->waves = 0;
    k->split_per_sm = 16;
    const char *sv = getenv("DS4_CUDA_STREAM");
    k->stream = !(sv && !strcmp(sv, "0"));
    const char *drv = getenv("DS4_CUDA_DOWNROWS");
    k->down_rows = drv && (drv[0] == '1' || drv[0] == '2') ? drv[0] - '0' : 0;
    const char *dbk = getenv("DS4_CUDA_DOWNBLK");
    k->down_blocks = !(dbk && dbk[0] == '0');
    const char *nbv = getenv("DS4_CUDA_MOENB");
    k->moe_nb = nbv && (nbv[0] == '1' || nbv[0] == '2') ? nbv[0] - '0' : 0;
    k->mvs_stages = MVS_STAGES;
    int mem_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&mem_khz, cudaDevAttrMemoryClockRate, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, device) != cudaSuccess)
        mem_khz = bus_bits = 0, cudaGetLastError();
    k->peak_bw = 2.0 * mem_khz * 1e3 * bus_bits / 8; /* double data rate */
    k->mvs_chunk = k->peak_bw >= MVS_WIDE_BW ? MVS_CHUNK_WIDE : MVS_CHUNK;
    const char *mv = getenv("DS4_CUDA_MVS");
    if (mv) {
        int st = 0, ch = 0;
        if (sscanf(mv, "%d,%d", &st, &ch) >= 1 && (st == 2 || st == 4 || st == 8)) k->mvs_stages = st;
        if (ch >= 512 && ch <= 16384) k->mvs_chunk = ch;
    }
    k->pdl_ok = prop.major >= 9;
    const char *v = getenv("DS4_CUDA_IQ2V");
    k->iq2v = v && (v[0] == '0' || v[0] == '1' || v[0] == '2') ? v[0] - '0' : -1;
    snprintf(k->name, sizeof k->name, "%s", prop.name);
    uint32_t host_tab[DS4_CUDA_IQ2_TABLE_WORDS * DS4_CUDA_IQ2_COPIES];
    if (!ds4_cuda_iq2_tables_replicated(host_tab)) {
        free(k);
        return ds4_fail(err, "cuda: the IQ2_XXS grid holds a value other than 8, 25 or 43");
    }
    if ((e = cudaMalloc(&k->tables, sizeof host_tab)) != cudaSuccess ||
        (e = cudaMemcpy(k->tables, host_tab, sizeof host_tab, cudaMemcpyHostToDevice)) != cudaSuccess ||
        (e = allow_smem<fmt_q8_0>((int)k->smem_optin)) != cudaSuccess ||
        (e = allow_smem<fmt_q2_K>((int)k->smem_optin)) != cudaSuccess ||
        (e = allow_smem<fmt_q4_K>((int)k->smem_optin)) != cudaSuccess ||
        (e = allow_smem<fmt_iq2_xxs>((int)k->smem_optin)) != cudaSuccess ||
        (e = allow_smem<fmt_iq2_xxs4, false>((int)k->smem_optin)) != cudaSuccess ||
        (e = allow_smem<fmt_iq2_xxs2, false>((int)k->smem_optin)) != cudaSuccess ||
        (e = allow_smem<fmt_f16>((int)k->smem_optin)) != cudaSuccess ||
        (e = allow_pair_smem<fmt_q8_0, fmt_f16>((int)k->smem_optin)) != cudaSuccess) {
        ds4_cuda_kernels_free(k);
        return cuda_fail(err, "kernel setup", e);
    }
    *out = k;
    return 0;
}

extern "C" void ds4_cuda_kernels_free(ds4_cuda_kernels *k) {
    if (!k) return;
    cudaFree(k->tables);
    free(k);
}

extern "C" void ds4_cuda_kernels_set_waves(ds4_cuda_kernels *k, int waves) { k->waves = waves < 0 ? 0 : waves; }

extern "C" void ds4_cuda_kernels_set_pdl(ds4_cuda_kernels *k, int on) { k->pdl = on && k->pdl_ok; }

extern "C" int ds4_cuda_kernels_pdl(const ds4_cuda_kernels *k) { return k->pdl; }

extern "C" void ds4_cuda_kernels_set_matvec_tuning(ds4_cuda_kernels *k, int split_per_sm, int deep) {
    k->split_per_sm = split_per_sm > 0 ? split_per_sm : 16;
    k->deep = deep != 0;
}


extern "C" int ds4_cuda_kernels_sm_count(const ds4_cuda_kernels *k) { return k->n_sm; }

extern "C" const char *ds4_cuda_kernels_device_name(const ds4_cuda_kernels *k) { return k->name; }

extern "C" double ds4_cuda_kernels_peak_bw(const ds4_cuda_kernels *k) { return k->peak_bw; }

extern "C" int ds4_cuda_quantize_act(ds4_cuda_kernels *k, uint32_t wtype, const float *x, void *act, uint32_t n,
                                     ds4_cuda_stream stream, ds4_err *err) {
    cudaStream_t st = (cudaStream_t)stream;
    if (n == 0) return 0;
    cudaError_t e;
    switch (wtype) {
    case DS4_TYPE_F16: {
        e = cudaMemcpyAsync(act, x, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, st);
        return e == cudaSuccess ? 0 : cuda_fail(err, "activation copy", e);
    }
    case DS4_TYPE_Q8_0:
        if (n % 32) return ds4_fail(err, "cuda: Q8_0 activation of %u values (not a multiple of 32)", n);
        e = pdl_launch(k->pdl, k_quantize_q8_0, (n / 32 + 7) / 8, 256, 0, st, x, (uint8_t *)act, n / 32);
        return e == cudaSuccess ? 0 : cuda_fail(err, "Q8_0 activation launch", e);
    case DS4_TYPE_Q2_K: case DS4_TYPE_Q4_K: case DS4_TYPE_IQ2_XXS:
        if (n % 256) return ds4_fail(err, "cuda: Q8_K activation of %u values (not a multiple of 256)", n);
        if ((uintptr_t)x % 16) return ds4_fail(err, "cuda: Q8_K activation source not 16-byte aligned");
        e = pdl_launch(k->pdl, k_quantize_q8_K, (n / 256 + 7) / 8, 256, 0, st, x, (uint8_t *)act, n / 256);
        return e == cudaSuccess ? 0 : cuda_fail(err, "Q8_K activation launch", e);
    default:
        return ds4_fail(err, "cuda: no activation format for weight type %s", ds4_type_name(wtype));
    }
}

/* Shape checks shared by the entry points. */
static int check_shape(uint32_t wtype, uint32_t n_in, const void *w, const void *act, ds4_err *err) {
    const ds4_type_info *ti = ds4_type_info_get(wtype);
    if (!ti || !(wtype == DS4_TYPE_Q8_0 || wtype == DS4_TYPE_Q2_K || wtype == DS4_TYPE_Q4_K ||
                 wtype == DS4_TYPE_IQ2_XXS || wtype == DS4_TYPE_F16))
        return ds4_fail(err, "cuda: no matrix-vector kernel for weight type %s", ds4_type_name(wtype));
    uint32_t be = wtype == DS4_TYPE_F16 ? 8 : ti->block_elems;
    if (n_in == 0 || n_in % be)
        return ds4_fail(err, "cuda: %s rows of %u values (must be a positive multiple of %u)", ti->name, n_in, be);
    if ((uintptr_t)w % 2 || (uintptr_t)act % 16)
        return ds4_fail(err, "cuda: misaligned weights (need 2 bytes) or activation (need 16)");
    return 0;
}

extern "C" int ds4_cuda_matvec(ds4_cuda_kernels *k, uint32_t wtype, const void *w, uint32_t n_rows,
                               uint32_t n_in, const void *act, float *y, ds4_cuda_stream stream, ds4_err *err) {
    return ds4_cuda_matvec_grouped(k, wtype, w, n_rows, n_in, act, 1, y, NULL, stream, err);
}

extern "C" int ds4_cuda_matvec_grouped(ds4_cuda_kernels *k, uint32_t wtype, const void *w, uint32_t n_rows,
                                       uint32_t n_in, const void *act, uint32_t n_groups, float *y,
                                       const int32_t *active, ds4_cuda_stream stream, ds4_err *err) {
    ds4_cuda_mv d = {};
    d.wtype = wtype;
    d.n_in = n_in;
    d.n_groups = n_groups;
    d.n_seg = 1;
    d.seg[0].w = w;
    d.seg[0].rows = n_rows;
    d.seg[0].y = y;
    d.act = act;
    d.active = active;
    return ds4_cuda_matvec_multi(k, &d, stream, err);
}

/* The checks every product passes; *n_rows: its rows (0: nothing to do). */
static int check_mv(const ds4_cuda_mv *d, uint32_t *n_rows, ds4_err *err) {
    if (d->n_seg < 1 || d->n_seg > DS4_CUDA_MV_SEGS)
        return ds4_fail(err, "cuda: %u matrices in one product (1..%d)", d->n_seg, DS4_CUDA_MV_SEGS);
    if (d->n_groups == 0 || (d->n_groups > 1 && d->n_seg > 1))
        return ds4_fail(err, "cuda: %u activation groups over %u matrices", d->n_groups, d->n_seg);
    if (!d->act == !d->x) return ds4_fail(err, "cuda: a product needs exactly one of act and x");
    if (d->x && ((uintptr_t)d->x % 16 || (d->norm_w && d->n_groups > 1)))
        return ds4_fail(err, "cuda: misaligned f32 activation, or a norm over groups");
    if (d->n_cols > DS4_CUDA_MV_COLS)
        return ds4_fail(err, "cuda: %u activation columns in one product (1..%d)", d->n_cols, DS4_CUDA_MV_COLS);
    if (d->n_cols > 1 && d->wtype != DS4_TYPE_Q8_0 && d->wtype != DS4_TYPE_F16)
        return ds4_fail(err, "cuda: several activation columns with %s weights (Q8_0 and F16 only)",
                        ds4_type_name(d->wtype));
    if (d->n_cols > 1 && (d->x ? (d->n_groups * d->n_in) % 4 : ds4_act_row_bytes(d->wtype, d->n_groups * d->n_in) % 16))
        return ds4_fail(err, "cuda: activation columns of %u values are not 16-byte aligned", d->n_groups * d->n_in);
    *n_rows = 0;
    for (uint32_t i = 0; i < d->n_seg; i++) {
        if (check_shape(d->wtype, d->n_in, d->seg[i].w, d->x ? (const void *)d->x : d->act, err)) return -1;
        *n_rows += d->seg[i].rows;
    }
    if (*n_rows % d->n_groups)
        return ds4_fail(err, "cuda: %u rows do not split into %u equal groups", *n_rows, d->n_groups);
    return 0;
}

extern "C" int ds4_cuda_matvec_multi(ds4_cuda_kernels *k, const ds4_cuda_mv *d, ds4_cuda_stream stream,
                                     ds4_err *err) {
    uint32_t n_rows = 0;
    if (check_mv(d, &n_rows, err)) return -1;
    if (n_rows == 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    switch (d->wtype) {
    case DS4_TYPE_Q8_0: return run_matvec<fmt_q8_0>(k, d, st, err);
    case DS4_TYPE_Q2_K: return run_matvec<fmt_q2_K>(k, d, st, err);
    case DS4_TYPE_Q4_K: return run_matvec<fmt_q4_K>(k, d, st, err);
    case DS4_TYPE_IQ2_XXS:
        return k->iq2v == 1   ? run_matvec<fmt_iq2_xxs4>(k, d, st, err)
               : k->iq2v == 2 ? run_matvec<fmt_iq2_xxs2>(k, d, st, err)
                              : run_matvec<fmt_iq2_xxs>(k, d, st, err);
    default: return run_matvec<fmt_f16>(k, d, st, err);
    }
}

extern "C" int ds4_cuda_matvec_pair(ds4_cuda_kernels *k, const ds4_cuda_mv *a, const ds4_cuda_mv *b,
                                    ds4_cuda_stream stream, ds4_err *err) {
    uint32_t ra = 0, rb = 0;
    if (check_mv(a, &ra, err) || check_mv(b, &rb, err)) return -1;
    cudaStream_t st = (cudaStream_t)stream;
    if (ra && rb && a->wtype == DS4_TYPE_Q8_0 && b->wtype == DS4_TYPE_F16)
        return run_pair<fmt_q8_0, fmt_f16>(k, a, b, st, err);
    if (ra && rb && a->wtype == DS4_TYPE_F16 && b->wtype == DS4_TYPE_Q8_0)
        return run_pair<fmt_q8_0, fmt_f16>(k, b, a, st, err);
    return ds4_cuda_matvec_multi(k, a, stream, err) || ds4_cuda_matvec_multi(k, b, stream, err) ? -1 : 0;
}

/* IQ2_XXS gate/up variant: DS4_CUDA_IQ2V when set, else by the row's
 * 256-value blocks — 4 sub-blocks per lane from 16 blocks (4096 wide: the
 * flash experts; H100, 24 q2 layers at ctx 4096: 260.6 -> 244.8 us per
 * layer), 2 from 8, else one (lanes of a narrower row would sit idle). */
static int iq2_gate_up_variant(const ds4_cuda_kernels *k, uint32_t n_in) {
    if (k->iq2v >= 0) return k->iq2v;
    uint32_t blocks = n_in / 256;
    return blocks >= 16 ? 2 : blocks >= 8 ? 1 : 0;
}

static int check_moe(uint32_t wtype, uint32_t n_sel, ds4_err *err, uint32_t n_tok = 1) {
    if (!(wtype == DS4_TYPE_Q8_0 || wtype == DS4_TYPE_Q2_K || wtype == DS4_TYPE_Q4_K || wtype == DS4_TYPE_IQ2_XXS))
        return ds4_fail(err, "cuda: no MoE kernel for expert type %s", ds4_type_name(wtype));
    if (n_tok == 0 || n_tok > DS4_CUDA_MOE_TOKENS)
        return ds4_fail(err, "cuda: %u tokens in one MoE call (1..%d supported)", n_tok, DS4_CUDA_MOE_TOKENS);
    if (n_sel == 0 || n_sel % n_tok || n_sel / n_tok > DS4_CUDA_MAX_SEL)
        return ds4_fail(err, "cuda: %u selected experts for %u tokens (1..%d a token)", n_sel, n_tok, DS4_CUDA_MAX_SEL);
    return 0;
}

/* Gate/up with the activation quantised already (x_act) or as f32 (xf),
 * for n_tok tokens (ds4_cuda_moe_tokens_gate_up). */
static int gate_up(ds4_cuda_kernels *k, uint32_t wtype, const void *gate, const void *up, uint32_t n_in, uint32_t n_ff,
                   uint32_t n_expert, const int32_t *ids, const float *weights, uint32_t n_sel, float clamp,
                   const void *x_act, const float *xf, ds4_cuda_ids_src src, const ds4_cuda_carried_mv *c,
                   float *mid, ds4_cuda_stream stream, ds4_err *err, uint32_t n_tok = 1) {
    const void *x = x_act ? x_act : (const void *)xf;
    if (check_moe(wtype, n_sel, err, n_tok) || check_shape(wtype, n_in, gate, x, err) ||
        check_shape(wtype, n_in, up, x, err) || (c && c->rows && check_shape(DS4_TYPE_Q8_0, c->n_in, c->w, c->act, err)))
        return -1;
    if (n_tok > 1 && ds4_act_row_bytes(wtype, n_in) % 16)
        return ds4_fail(err, "cuda: a token's activation of %u values is not a multiple of 16 bytes", n_in);
    if (n_ff == 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
#define GATE_UP(F)                                                                                                    \
    run_gate_up<F>(k, gate, up, n_in, n_ff, n_expert, ids, weights, n_sel, clamp, x_act, xf, src, c, mid, st, err, \
                   n_tok)
    switch (wtype) {
    case DS4_TYPE_Q8_0: return GATE_UP(fmt_q8_0);
    case DS4_TYPE_Q2_K: return GATE_UP(fmt_q2_K);
    case DS4_TYPE_Q4_K: return GATE_UP(fmt_q4_K);
    default: {
        int v = iq2_gate_up_variant(k, n_in);
        return v == 1 ? GATE_UP(fmt_iq2_xxs4) : v == 2 ? GATE_UP(fmt_iq2_xxs2) : GATE_UP(fmt_iq2_xxs);
    }
    }
#undef GATE_UP
}

extern "C" int ds4_cuda_moe_gate_up(ds4_cuda_kernels *k, uint32_t wtype, const void *gate, const void *up,
                                    uint32_t n_in, uint32_t n_ff, uint32_t n_expert, const int32_t *ids,
                                    const float *weights, uint32_t n_sel, float clamp, const void *x_act,
                                    float *mid, ds4_cuda_stream stream, ds4_err *err) {
    return gate_up(k, wtype, gate, up, n_in, n_ff, n_expert, ids, weights, n_sel, clamp, x_act, NULL,
                   ds4_cuda_ids_src{}, NULL, mid, stream, err);
}

extern "C" int ds4_cuda_moe_gate_up_x(ds4_cuda_kernels *k, uint32_t wtype, const void *gate, const void *up,
                                      uint32_t n_in, uint32_t n_ff, uint32_t n_expert, const int32_t *ids,
                                      const float *weights, uint32_t n_sel, float clamp, const void *x_act,
                                      const float *x, ds4_cuda_ids_src src, const ds4_cuda_carried_mv *carried,
                                      float *mid, ds4_cuda_stream stream, ds4_err *err) {
    return gate_up(k, wtype, gate, up, n_in, n_ff, n_expert, ids, weights, n_sel, clamp, x_act, x, src, carried, mid,
                   stream, err);
}

extern "C" int ds4_cuda_moe_down(ds4_cuda_kernels *k, uint32_t wtype, const void *down, uint32_t n_ff,
                                 uint32_t n_out, uint32_t n_expert, const int32_t *ids, uint32_t n_sel,
                                 const void *mid_act, const float *add, float *out, ds4_cuda_stream stream,
                                 ds4_err *err) {
    return ds4_cuda_moe_down_x(k, wtype, down, n_ff, n_out, n_expert, ids, n_sel, mid_act, add, ds4_cuda_ids_src{},
                               out, stream, err);
}

/* The down for n_tok tokens (ds4_cuda_moe_tokens_down). */
static int down(ds4_cuda_kernels *k, uint32_t wtype, const void *w, uint32_t n_ff, uint32_t n_out, uint32_t n_expert,
                const int32_t *ids, uint32_t n_sel, const void *mid_act, const float *add, ds4_cuda_ids_src src,
                float *out, ds4_cuda_stream stream, ds4_err *err, uint32_t n_tok = 1) {
    if (check_moe(wtype, n_sel, err, n_tok) || check_shape(wtype, n_ff, w, mid_act, err)) return -1;
    if (n_out == 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
#define DOWN(F) run_down<F>(k, w, n_ff, n_out, n_expert, ids, n_sel, mid_act, add, src, out, st, err, n_tok)
    switch (wtype) {
    case DS4_TYPE_Q8_0: return DOWN(fmt_q8_0);
    case DS4_TYPE_Q2_K: return DOWN(fmt_q2_K);
    case DS4_TYPE_Q4_K: return DOWN(fmt_q4_K);
    default: return DOWN(fmt_iq2_xxs);
    }
#undef DOWN
}

extern "C" int ds4_cuda_moe_down_x(ds4_cuda_kernels *k, uint32_t wtype, const void *w, uint32_t n_ff,
                                   uint32_t n_out, uint32_t n_expert, const int32_t *ids, uint32_t n_sel,
                                   const void *mid_act, const float *add, ds4_cuda_ids_src src, float *out,
                                   ds4_cuda_stream stream, ds4_err *err) {
    return down(k, wtype, w, n_ff, n_out, n_expert, ids, n_sel, mid_act, add, src, out, stream, err);
}

extern "C" int ds4_cuda_moe_tokens_gate_up(ds4_cuda_kernels *k, uint32_t wtype, const void *gate, const void *up,
                                           uint32_t n_in, uint32_t n_ff, uint32_t n_expert, const int32_t *ids,
                                           const float *weights, uint32_t n_sel, uint32_t n_tok, float clamp,
                                           const void *x_act, ds4_cuda_ids_src src, float *mid,
                                           ds4_cuda_stream stream, ds4_err *err) {
    return gate_up(k, wtype, gate, up, n_in, n_ff, n_expert, ids, weights, n_sel, clamp, x_act, NULL, src, NULL, mid,
                   stream, err, n_tok);
}

extern "C" int ds4_cuda_moe_tokens_down(ds4_cuda_kernels *k, uint32_t wtype, const void *w, uint32_t n_ff,
                                        uint32_t n_out, uint32_t n_expert, const int32_t *ids, uint32_t n_sel,
                                        uint32_t n_tok, const void *mid_act, const float *add, ds4_cuda_ids_src src,
                                        float *out, ds4_cuda_stream stream, ds4_err *err) {
    return down(k, wtype, w, n_ff, n_out, n_expert, ids, n_sel, mid_act, add, src, out, stream, err, n_tok);
}

#ifdef DS4_CUDA_TIMELINE
/* cuda_timeline.cuh: the kernels launched while a step is captured. */
static const void *g_tl_kernels[4096];
static size_t g_tl_n;
static bool g_tl_on;

extern "C" void ds4_cuda_tl_label(const void *kernel) {
    if (g_tl_on && g_tl_n < sizeof g_tl_kernels / sizeof *g_tl_kernels) g_tl_kernels[g_tl_n++] = kernel;
}

extern "C" void ds4_cuda_tl_record(int on) {
    if (on) g_tl_n = 0;
    g_tl_on = on != 0;
}

extern "C" size_t ds4_cuda_tl_labels(const void *const **out) {
    *out = g_tl_kernels;
    return g_tl_n;
}

extern "C" cudaError_t ds4_cuda_tl_bind_kernels(tl_buf *b) { return tl_bind_here(b); }
#endif
