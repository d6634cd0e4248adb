/* cuda_mmq.cu — batched quantised matrix products for prefill (cuda_mmq.h):
 * activation quantisers into the split layout, the int8 tensor-core product
 * for Q8_0 / Q2_K / Q4_K / IQ2_XXS, an f16 tensor-core product for F16
 * weights (an f32 CUDA-core one for F32 weights and odd F16 shapes), a
 * plain one-thread-per-output product (odd shapes, misaligned weights),
 * and the routed MoE: a device-built plan (pairs
 * bucketed by expert), gate+up with the clamped SwiGLU, the mid
 * quantisation, down, and the per-token sum over slots.
 *
 * The tensor-core kernel (k_tc): a thread block owns BM = 128 weight rows x
 * BN tokens (BN = 64: 8 warps, BN = 128: 16 warps; each warp 32 x 32).
 * Per K step of 256 elements its threads load raw weight words into
 * registers (issued before the previous step's products, so their latency
 * hides behind them), decode them into int8 rows in shared memory
 * (cuda_mmq.cuh), and copy the activation codes with cp.async (double
 * buffered). Fragments come from ldmatrix (rows 272 bytes apart: the 8 row
 * addresses of one 8x16-byte matrix hit 8 different bank groups), products
 * from mma.sync m16n8k32 s8. Each output's block terms are added in block
 * order by one thread, with the CPU's f32 operations.
 *
 * F16 weights: k_h16 (f16 mma, the activation split into two halves). */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_async.cuh"
#include "cuda_mmq.cuh"
#include "cuda_mmq.h"

#define MQ_BM 128
#define MQ_SA 272 /* shared row stride of an int8 tile row (256 + 16) */

/* IQ2_XXS nibble tables: compact (the tensor-core decode) and replicated
 * DS4_CUDA_IQ2_COPIES times (fmt_iq2_xxs_natural::unit, the plain kernel). */
__device__ uint32_t g_mq_tab[DS4_CUDA_IQ2_TABLE_WORDS];
__device__ uint32_t g_mq_tab_rep[DS4_CUDA_IQ2_TABLE_WORDS * DS4_CUDA_IQ2_COPIES];

static int cuda_fail(ds4_err *err, const char *what, cudaError_t e) {
    return ds4_fail(err, "cuda: %s: %s", what, cudaGetErrorString(e));
}

static int check_launch(ds4_err *err, const char *what) {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : cuda_fail(err, what, e);
}

/* ------------------------------------------------------------------ */
/* Device helpers                                                      */
/* ------------------------------------------------------------------ */

__device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const void *p) {
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(s));
}

/* c += a (16x32, row) * b (32x8, col), int8 -> int32. */
__device__ __forceinline__ void mma_k32(int32_t *c, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* c = a (16x32, row) * b (32x8, col), int8 -> int32 (zero accumulator). */
__device__ __forceinline__ void mma_k32_z(int32_t *c, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%10,%10,%10};\n"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(0));
}

/* c = a (16x32, row) * b (32x8, col) + c0 (each element), int8 -> int32. */
__device__ __forceinline__ void mma_k32_c(int32_t *c, const uint32_t *a, const uint32_t *b, int32_t c0) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%10,%10,%10};\n"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c0));
}

/* c += a (16x16) * b (16x8), int8 -> int32. */
__device__ __forceinline__ void mma_k16(int32_t *c, uint32_t a0, uint32_t a1, uint32_t b0) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

/* ------------------------------------------------------------------ */
/* Activation quantisers (bit-exact with ds4_quantize_act)             */
/* ------------------------------------------------------------------ */

/* One warp per 32-value block b: d = amax/127, q = round(x * (1/d)).
 * rows / bpr: when rows is set, blocks of rows >= *rows are skipped. */
__global__ void k_quant_q8_0(const float *x, uint32_t nb, int8_t *q, float *d, const int *rows, uint32_t bpr) {
    uint32_t b = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (b >= nb || (rows && b >= (uint32_t)*rows * bpr)) return;
    float dd;
    q[32 * (size_t)b + lane] = (int8_t)warp_q8_0_code(x[32 * (size_t)b + lane], &dd);
    if (lane == 0) d[b] = dd;
}

/* One warp per 256-value block, 8 values per lane: the first value of
 * largest magnitude sets iscale = -127/max; d = 1/iscale; bsums per 16,
 * also split as 64 * hi + lo. */
__global__ void k_quant_q8_K(const float *x, uint32_t nb, int8_t *q, float *d, int16_t *bs, int8_t *split,
                             const int *rows, uint32_t bpr) {
    uint32_t b = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (b >= nb || (rows && b >= (uint32_t)*rows * bpr)) return;
    uint32_t w[2];
    int sum;
    const float dd = q8_K_warp_at(x, b, lane, w, &sum);
    *(uint2 *)(q + 256 * (size_t)b + 8 * lane) = make_uint2(w[0], w[1]);
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if ((lane & 1) == 0) {
        bs[16 * (size_t)b + lane / 2] = (int16_t)sum;
        split[32 * (size_t)b + lane / 2] = (int8_t)(sum & 63);
        split[32 * (size_t)b + 16 + lane / 2] = (int8_t)(sum >> 6);
    }
    if (lane == 0) d[b] = dd;
}

static int act_kind_of(uint32_t type) {
    switch (type) {
    case DS4_TYPE_Q8_0: return DS4_ACT_Q8_0;
    case DS4_TYPE_Q2_K: case DS4_TYPE_Q4_K: case DS4_TYPE_IQ2_XXS: return DS4_ACT_Q8_K;
    case DS4_TYPE_F16: case DS4_TYPE_F32: return DS4_ACT_F32;
    default: return -1;
    }
}

static int quantize_rows(uint32_t type, const float *x, uint32_t in, uint32_t n_rows, void *act, const int *dev_rows,
                         cudaStream_t st, ds4_err *err) {
    int kind = act_kind_of(type);
    size_t n = (size_t)in * n_rows;
    if (n == 0) return 0;
    if (kind == DS4_ACT_F32) {
        cudaError_t e = cudaMemcpyAsync(act, x, n * sizeof(float), cudaMemcpyDeviceToDevice, st);
        return e == cudaSuccess ? 0 : cuda_fail(err, "activation copy", e);
    }
    mq_act_layout l = mq_layout(kind, n);
    uint8_t *a = (uint8_t *)act;
    if (kind == DS4_ACT_Q8_0) {
        uint32_t nb = (uint32_t)(n / 32);
        k_quant_q8_0<<<(nb + 7) / 8, 256, 0, st>>>(x, nb, (int8_t *)a, (float *)(a + l.d), dev_rows, in / 32);
    } else {
        uint32_t nb = (uint32_t)(n / 256);
        k_quant_q8_K<<<(nb + 7) / 8, 256, 0, st>>>(x, nb, (int8_t *)a, (float *)(a + l.d), (int16_t *)(a + l.bs),
                                                    (int8_t *)(a + l.split), dev_rows, in / 256);
    }
    return check_launch(err, "activation quantisation launch");
}

/* ------------------------------------------------------------------ */
/* The plain product: one thread per output (fmt_* units, G parts)      */
/* ------------------------------------------------------------------ */

struct plain_params {
    const uint8_t *w;
    size_t row_bytes;
    uint32_t rows, in, a_stride, group_rows, n_tok, ldy;
    const uint8_t *act;
    size_t d_off, bs_off;
    float *y;
};

template <class F>
__global__ void k_plain(const plain_params p) {
    uint32_t r = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (r >= p.rows) return;
    uint32_t col = (r / p.group_rows) * p.in;
    size_t e0 = (size_t)t * p.a_stride + col; /* first activation element */
    const uint32_t bsz = (int)F::act_kind == DS4_ACT_Q8_0 ? 32 : 256;
    act_view a = {};
    a.q = (const int8_t *)p.act + e0;
    a.d = (const float *)(p.act + p.d_off) + e0 / bsz;
    a.bsums = (const int16_t *)(p.act + p.bs_off) + e0 / 16;
    const uint8_t *row = p.w + (size_t)r * p.row_bytes;
    uint32_t nb = p.in / F::block_elems;
    float acc = 0.0f;
    for (uint32_t b = 0; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * F::block_bytes;
        /* The units read whole aligned words, which for the 34- and 66-byte
         * blocks can pass the block's end: copy those blocks first. */
        uint32_t copy[(F::block_bytes + 3) / 4 + 4];
        if (F::block_bytes % 4) {
            for (int i = 0; i < F::block_bytes / 2; i++) ((uint16_t *)copy)[i] = ((const uint16_t *)blk)[i];
            blk = (const uint8_t *)copy;
        }
        int32_t isum = 0, summ = 0;
        for (int part = 0; part < F::G; part++) {
            int32_t is, sm;
            F::template unit<1>(blk, 0, part, a, b, g_mq_tab_rep, 0, &is, &sm);
            isum += is;
            summ += sm;
        }
        acc += F::term(blk, a, b, isum, summ);
    }
    p.y[(size_t)t * p.ldy + r] = acc * F::final_scale;
}

/* ------------------------------------------------------------------ */
/* F16 / F32 weights: a 64 x 64 f32 tile per block, 4 x 4 per thread     */
/* ------------------------------------------------------------------ */

template <class WT>
__device__ __forceinline__ float wload(const WT *w, size_t i);
template <>
__device__ __forceinline__ float wload<float>(const float *w, size_t i) { return w[i]; }
template <>
__device__ __forceinline__ float wload<__half>(const __half *w, size_t i) { return __half2float(w[i]); }

template <class WT>
__global__ void __launch_bounds__(256) k_fgemm(const WT *w, uint32_t rows, uint32_t in, uint32_t group_rows,
                                                const float *x, uint32_t a_stride, uint32_t n_tok, float *y,
                                                uint32_t ldy) {
    __shared__ float sw[32][68], sx[32][68];
    const int tid = threadIdx.x, tr = tid % 16, tc = tid / 16;
    const uint32_t r0 = blockIdx.x * 64, t0 = blockIdx.y * 64;
    const uint32_t col = (r0 / group_rows) * in;
    float acc[4][4] = {};
    for (uint32_t k0 = 0; k0 < in; k0 += 32) {
        for (int i = tid; i < 64 * 32; i += 256) {
            int rr = i / 32, kk = i % 32;
            uint32_t r = min(r0 + rr, rows - 1), t = min(t0 + rr, n_tok - 1), k = k0 + kk;
            sw[kk][rr] = k < in ? wload<WT>(w, (size_t)r * in + k) : 0.0f;
            sx[kk][rr] = k < in ? x[(size_t)t * a_stride + col + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < 32; kk++) {
            float4 a = *(const float4 *)&sw[kk][4 * tr], b = *(const float4 *)&sx[kk][4 * tc];
            float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) {
            uint32_t r = r0 + 4 * tr + i, t = t0 + 4 * tc + j;
            if (r < rows && t < n_tok && (r / group_rows) * in == col) y[(size_t)t * ldy + r] = acc[i][j];
        }
}

/* ------------------------------------------------------------------ */
/* F16 weights on tensor cores                                          */
/* ------------------------------------------------------------------ */

/* The CPU multiplies f16 weights (exact in f32) with f32 activations. Here
 * each activation is split into two halves, hi = f16(x) and lo = f16(x -
 * hi), which carry 22 significant bits, and W·x = W·hi + W·lo with f16
 * mma's accumulating in f32: each product w·hi, w·lo is exact, so the
 * result differs from the CPU's only by summation order and the ~2^-22
 * relative truncation of x (tiny lo parts become f16 subnormals, an
 * absolute error below 6e-8 · |w|). The mma accumulates one 16-wide k
 * slice at a time from zero and f32 adds collect the slices (section F16
 * of notes/cuda-kernels.md "Batched products"). Valid for |x| < 65504 (f16 range);
 * every F16 product in the model reads RMS-normalised activations.
 * Tiles: 128 rows x 128 tokens x 32 k per step, 8 warps of 32 x 64;
 * weights by cp.async, activations through registers (split on the way),
 * both double-buffered. Shared rows are 40 halves (80 bytes) apart, so
 * ldmatrix's 8 row addresses hit 8 different bank groups. */
#define H_BM 128
#define H_BN 128
#define H_BK 32
#define H_LD 40
#define H_TILE (H_BM * H_LD)
#define H_SMEM (6 * H_TILE * 2)

__device__ __forceinline__ void mma_f16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__global__ void __launch_bounds__(256, 2) k_h16(const __half *w, uint32_t rows, uint32_t in, uint32_t group_rows,
                                                 const float *x, uint32_t a_stride, uint32_t n_tok, float *y,
                                                 uint32_t ldy) {
    extern __shared__ __align__(16) uint8_t smem[];
    __half *sw = (__half *)smem, *sxh = sw + 2 * H_TILE, *sxl = sw + 4 * H_TILE; /* [2][tile] each */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp & 3, wn = warp >> 2, g = lane >> 2, tg = lane & 3;
    const uint32_t row0 = blockIdx.x * H_BM, t0 = blockIdx.y * H_BN;
    const uint32_t col0 = (row0 / group_rows) * in;
    const __half *wsrc[2];
    const float *xsrc[4];
    for (int i = 0; i < 2; i++) {
        int c = tid + 256 * i; /* 4 chunks of 8 halves per row */
        wsrc[i] = w + (size_t)min(row0 + c / 4, rows - 1) * in + 8 * (c % 4);
    }
    for (int i = 0; i < 4; i++) {
        int c = tid + 256 * i; /* 8 float4 per token */
        xsrc[i] = x + (size_t)min(t0 + c / 8, n_tok - 1) * a_stride + col0 + 4 * (c % 8);
    }
    float4 xr[4];
    auto stage_w = [&](uint32_t k0, int buf) {
        for (int i = 0; i < 2; i++) {
            int c = tid + 256 * i;
            cp_async16(sw + buf * H_TILE + (c / 4) * H_LD + 8 * (c % 4), wsrc[i] + k0);
        }
        cp_async_commit();
    };
    auto load_x = [&](uint32_t k0) {
        for (int i = 0; i < 4; i++) xr[i] = *(const float4 *)(xsrc[i] + k0);
    };
    auto store_x = [&](int buf) {
        for (int i = 0; i < 4; i++) {
            int c = tid + 256 * i, o = buf * H_TILE + (c / 8) * H_LD + 4 * (c % 8);
            float v[4] = {xr[i].x, xr[i].y, xr[i].z, xr[i].w};
            __half h[4], l[4];
            for (int j = 0; j < 4; j++) {
                h[j] = __float2half_rn(v[j]);
                l[j] = __float2half_rn(v[j] - __half2float(h[j]));
            }
            *(uint2 *)(sxh + o) = *(const uint2 *)h;
            *(uint2 *)(sxl + o) = *(const uint2 *)l;
        }
    };
    float acc[2][8][4] = {};
    stage_w(0, 0);
    load_x(0);
    store_x(0);
    cp_async_wait<0>();
    __syncthreads();
    const uint32_t nk = in / H_BK;
    const int mrow = wm * 32, ncol = wn * 64;
    for (uint32_t kt = 0; kt < nk; kt++) {
        const int cur = kt & 1;
        if (kt + 1 < nk) {
            stage_w((kt + 1) * H_BK, cur ^ 1);
            load_x((kt + 1) * H_BK);
        }
        const __half *cw = sw + cur * H_TILE, *ch = sxh + cur * H_TILE, *cl = sxl + cur * H_TILE;
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            uint32_t a[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                ldmatrix_x4(a[mi], cw + (mrow + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * H_LD + ks * 16 +
                                       (lane >> 4) * 8);
#pragma unroll
            for (int nj = 0; nj < 4; nj++) {
                uint32_t bh[4], bl[4];
                int o = (ncol + nj * 16 + (lane & 7) + (lane >> 4) * 8) * H_LD + ks * 16 + ((lane >> 3) & 1) * 8;
                ldmatrix_x4(bh, ch + o);
                ldmatrix_x4(bl, cl + o);
#pragma unroll
                for (int mi = 0; mi < 2; mi++) {
                    /* Each 16-wide k slice into a zeroed accumulator, then a
                     * plain f32 add: the tensor cores' own accumulation
                     * truncates, which over K = 4096 gave 1.1-1.6e-5 relative
                     * error when acc itself was the mma accumulator. */
                    float t0[4] = {0.0f, 0.0f, 0.0f, 0.0f}, t1[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                    mma_f16(t0, a[mi], bh[0], bh[1]);
                    mma_f16(t0, a[mi], bl[0], bl[1]);
                    mma_f16(t1, a[mi], bh[2], bh[3]);
                    mma_f16(t1, a[mi], bl[2], bl[3]);
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        acc[mi][2 * nj][e] += t0[e];
                        acc[mi][2 * nj + 1][e] += t1[e];
                    }
                }
            }
        }
        if (kt + 1 < nk) store_x(cur ^ 1);
        cp_async_wait<0>();
        __syncthreads();
    }
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 8; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                uint32_t r = row0 + mrow + mi * 16 + g + 8 * (e >> 1), t = t0 + ncol + ni * 8 + 2 * tg + (e & 1);
                if (r < rows && t < n_tok) y[(size_t)t * ldy + r] = acc[mi][ni][e];
            }
}

/* ------------------------------------------------------------------ */
/* The tensor-core product                                             */
/* ------------------------------------------------------------------ */

enum { MODE_DENSE = 0, MODE_GATE_UP = 1, MODE_DOWN = 2 };

/* Q8_0 with each block's integer sum turned into a float by the mma's
 * accumulator input and one f32 subtraction instead of an int-to-float
 * conversion (same terms, same bits); chosen by ds4_cuda_mmq_set_kernel
 * 130 / 131 (BN 128, one / two decoded weight buffers). */
struct mq_q8_0_fb : mq_q8_0 {};
template <class F>
struct q8_bias {
    static constexpr bool on = false;
};
template <>
struct q8_bias<mq_q8_0_fb> {
    static constexpr bool on = true;
};

struct tc_params {
    const uint8_t *w0, *w1; /* weights (gate/up: w0 gate, w1 up) */
    size_t row_bytes, expert_bytes;
    uint32_t rows;          /* rows of the product (of one expert) */
    uint32_t nkb, nb32;     /* K steps; Q8_0: blocks of 32 per row */
    const uint8_t *act;
    size_t d_off, split_off;
    uint32_t a_stride;      /* activation elements per token row */
    uint32_t in, group_rows;
    uint32_t n_tok;         /* dense: tokens */
    float *y;
    uint32_t ldy;
    int mode;
    const int *tile_expert, *tile_slot, *pair_tok; /* MoE: per tile its expert and first pair slot */
    const float *pair_w;
    float clamp;
};

template <int BN, int NBUF>
struct tc_cfg {
    enum {
        NW = BN / 8,
        NT = NW * 32,
        /* shared memory: [tab], NBUF x A ([sA BM*SA][sWd 8*BM f32][sWsc BM*8]
         * [sWmin BM*16]), 2 x B ([sB BN*SA][sAd 8*BN f32][sAsp BN*32]) */
        TAB = DS4_CUDA_IQ2_TABLE_WORDS * 4,
        WD_OFF = MQ_BM * MQ_SA, /* within an A buffer */
        WSC_OFF = WD_OFF + 8 * MQ_BM * 4,
        WMIN_OFF = WSC_OFF + MQ_BM * 8,
        A_SZ = WMIN_OFF + MQ_BM * 16,
        B_OFF = TAB + NBUF * A_SZ,
        B_SZ = BN * MQ_SA,
        AD_SZ = 8 * BN * 4,
        ASP_SZ = BN * 32,
        STAGE = B_SZ + AD_SZ + ASP_SZ,
        SMEM = B_OFF + 2 * STAGE,
    };
};

/* NBUF = 1: one decoded weight tile; its next step is decoded after every
 * warp's products (two barriers a step), while the other resident block
 * computes. NBUF = 2: step k+1 is decoded into the other buffer before step
 * k's products, one barrier a step, so one block's warps overlap decoding
 * and products. */
template <class F, int BN, int NBUF>
__global__ void __launch_bounds__(tc_cfg<BN, NBUF>::NT, BN == 64 ? 2 : 1) k_tc(const tc_params p) {
    typedef tc_cfg<BN, NBUF> C;
    constexpr int NT = C::NT;
    constexpr int NTASK = (MQ_BM * F::TPR + NT - 1) / NT; /* decode tasks per thread */
    constexpr int NBCH = BN * 16 / NT;                     /* 16-byte activation chunks per thread */
    extern __shared__ __align__(16) uint8_t smem[];
    uint32_t *tab = (uint32_t *)smem;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp & 3, wn = warp >> 2, g = lane >> 2, tg = lane & 3;
    const uint32_t rt = blockIdx.x, ct = blockIdx.y;

    int expert = 0;
    uint32_t cbase = ct * BN; /* the tile's first token (dense) or pair slot (MoE) */
    if (p.mode != MODE_DENSE) {
        expert = p.tile_expert[ct];
        if (expert < 0) return;
        cbase = (uint32_t)p.tile_slot[ct];
    }
    if (F::needs_tab)
        for (int i = tid; i < DS4_CUDA_IQ2_TABLE_WORDS; i += NT) tab[i] = g_mq_tab[i];

    /* Decode tasks of this thread: rows trow0 + i * (NT / TPR), part tpart
     * (TPR divides NT). Row pointers are formed when loading. */
    constexpr int RSTEP = NT / F::TPR;
    const int tpart = tid % F::TPR, trow0 = tid / F::TPR;
    const uint32_t row0 = rt * MQ_BM;
    const uint8_t *const wbase = p.w0 + (size_t)expert * p.expert_bytes;
    auto row_ptr = [&](int r) -> const uint8_t * {
        if (p.mode == MODE_GATE_UP)
            return (r < 64 ? wbase : p.w1 + (size_t)expert * p.expert_bytes) + (size_t)(rt * 64 + (r & 63)) * p.row_bytes;
        return wbase + (size_t)min(row0 + (uint32_t)r, p.rows - 1) * p.row_bytes;
    };
    /* Activation chunks of this thread: 16 bytes at column 16 * bc of tile
     * rows (tid / 16) + i * (NT / 16); their token (or pair) rows. */
    const int bc = tid & 15, bn0 = tid >> 4;
    const uint32_t col0 = p.mode == MODE_DENSE ? (row0 / p.group_rows) * p.in : 0;
    uint32_t arow[NBCH];
#pragma unroll
    for (int i = 0; i < NBCH; i++) {
        uint32_t j = cbase + bn0 + i * (NT / 16), ar;
        if (p.mode == MODE_DENSE) ar = min(j, p.n_tok - 1);
        else if (p.mode == MODE_GATE_UP) ar = p.pair_tok[j] < 0 ? 0 : p.pair_tok[j];
        else ar = j;
        arow[i] = ar;
    }
    const int8_t *aq = (const int8_t *)p.act + col0;
    const float *ad = (const float *)(p.act + p.d_off);
    const uint8_t *asp = p.act + p.split_off;

    auto nk_of = [&](uint32_t kb) -> int {
        if ((int)F::act_kind == DS4_ACT_Q8_0) return (int)min(8u, p.nb32 - kb * 8);
        return 8;
    };
    /* Activation codes and scales of K step kb into stage buffer buf. */
    auto stage_b = [&](uint32_t kb, int buf) {
        uint8_t *sb = smem + C::B_OFF + buf * C::STAGE;
        float *sad = (float *)(sb + C::B_SZ);
        uint8_t *ssp = sb + C::B_SZ + C::AD_SZ;
        int nk = nk_of(kb);
#pragma unroll
        for (int i = 0; i < NBCH; i++) {
            const int bn = bn0 + i * (NT / 16);
            const size_t e0 = (size_t)arow[i] * p.a_stride + col0; /* first element of the row */
            if (bc < 2 * nk) cp_async16(sb + bn * MQ_SA + 16 * bc, aq + (size_t)arow[i] * p.a_stride + kb * 256 + 16 * bc);
            if ((int)F::act_kind == DS4_ACT_Q8_0) {
                if (bc < nk) cp_async4(sad + bc * BN + bn, ad + e0 / 32 + kb * 8 + bc);
            } else {
                size_t blk = e0 / 256 + kb;
                if (bc == 0) cp_async4(sad + bn, ad + blk);
                if (bc < 2) cp_async16(ssp + bn * 32 + 16 * bc, asp + 32 * blk + 16 * bc);
            }
        }
        cp_async_commit();
    };
    typename F::raw raw[NTASK];
    auto load_a = [&](uint32_t kb) {
        int nk = nk_of(kb);
#pragma unroll
        for (int i = 0; i < NTASK; i++) {
            int r = trow0 + i * RSTEP;
            if (r < MQ_BM && ((int)F::act_kind != DS4_ACT_Q8_0 || tpart < nk)) F::load(row_ptr(r), kb, tpart, raw[i]);
        }
    };
    auto decode_a = [&](uint32_t kb, int buf) {
        uint8_t *sA = smem + C::TAB + buf * C::A_SZ, *sWsc = sA + C::WSC_OFF, *sWmin = sA + C::WMIN_OFF;
        float *sWd = (float *)(sA + C::WD_OFF);
        int nk = nk_of(kb);
#pragma unroll
        for (int i = 0; i < NTASK; i++) {
            int r = trow0 + i * RSTEP, s = tpart;
            if (r >= MQ_BM || ((int)F::act_kind == DS4_ACT_Q8_0 && s >= nk)) continue;
            uint32_t codes[8 * F::SEGS];
            mq_meta m;
            F::decode(raw[i], s, tab, codes, m);
#pragma unroll
            for (int sg = 0; sg < F::SEGS; sg++) {
                uint4 *dst = (uint4 *)(sA + r * MQ_SA + 32 * (s * F::SEGS + sg));
                dst[0] = make_uint4(codes[8 * sg], codes[8 * sg + 1], codes[8 * sg + 2], codes[8 * sg + 3]);
                dst[1] = make_uint4(codes[8 * sg + 4], codes[8 * sg + 5], codes[8 * sg + 6], codes[8 * sg + 7]);
            }
            if ((int)F::act_kind == DS4_ACT_Q8_0) {
                sWd[s * MQ_BM + r] = m.d[0];
            } else {
                if (s == 0) {
                    sWd[r] = m.d[0];
                    sWd[MQ_BM + r] = m.d[1];
                }
                if (F::int_scale)
                    for (int sg = 0; sg < F::SEGS; sg++) sWsc[r * 8 + s * F::SEGS + sg] = m.sc[sg];
                if (F::has_min) {
                    constexpr int NMIN = F::folded ? 8 : 4;
                    for (int j = 0; j < NMIN; j++) sWmin[r * 16 + s * NMIN + j] = m.mins[j];
                }
            }
        }
    };

    float acc[2][4][4];
    int32_t iacc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.0f, iacc[mi][ni][e] = 0;

    /* Prologue: step 0 staged (NBUF = 2: step 1's weights requested). */
    stage_b(0, 0);
    load_a(0);
    __syncthreads(); /* tables */
    decode_a(0, 0);
    if (NBUF == 2 && 1 < p.nkb) load_a(1);
    cp_async_wait<0>();
    __syncthreads();

    for (uint32_t kb = 0; kb < p.nkb; kb++) {
        /* BN = 128: a warp whose first column holds no token or pair has
         * none at all (MoE tiles fill their pair slots from the first): it
         * skips its products and only helps to stage and decode. Asked
         * again every step (an L1 hit): a flag kept through the loop costs
         * a register and ptxas spills. */
        const bool wlive = BN == 64 || (p.mode == MODE_DENSE ? cbase + wn * 32 < p.n_tok
                                                             : __ldg(p.pair_tok + cbase + wn * 32) >= 0);
        const int cur = kb & 1;
        if (kb + 1 < p.nkb) {
            stage_b(kb + 1, cur ^ 1);
            if (NBUF == 2) {
                decode_a(kb + 1, cur ^ 1);
                if (kb + 2 < p.nkb) load_a(kb + 2);
            } else {
                load_a(kb + 1);
            }
        }
        const uint8_t *sA = smem + C::TAB + (NBUF == 2 ? cur : 0) * C::A_SZ;
        const uint8_t *sWsc = sA + C::WSC_OFF, *sWmin = sA + C::WMIN_OFF;
        const float *sWd = (const float *)(sA + C::WD_OFF);
        const uint8_t *sb = smem + C::B_OFF + cur * C::STAGE;
        const float *sad = (const float *)(sb + C::B_SZ);
        const uint8_t *ssp = sb + C::B_SZ + C::AD_SZ;
        const int nk = wlive ? nk_of(kb) : 0;
        const int mrow = wm * 32, ncol = wn * 32;
        for (int s = 0; s < nk; s++) {
            uint32_t a[2][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                ldmatrix_x4(a[mi], sA + (mrow + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * MQ_SA + s * 32 +
                                       (lane >> 4) * 16);
#pragma unroll
            for (int nj = 0; nj < 2; nj++) {
                uint32_t t4[4];
                ldmatrix_x4(t4, sb + (ncol + nj * 16 + (lane & 7) + (lane >> 4) * 8) * MQ_SA + s * 32 +
                                    ((lane >> 3) & 1) * 16);
                b[2 * nj][0] = t4[0], b[2 * nj][1] = t4[1], b[2 * nj + 1][0] = t4[2], b[2 * nj + 1][1] = t4[3];
            }
            if ((int)F::act_kind == DS4_ACT_Q8_0) {
                float wd[2][2];
                float2 da[4];
#pragma unroll
                for (int mi = 0; mi < 2; mi++)
                    for (int h = 0; h < 2; h++) wd[mi][h] = sWd[s * MQ_BM + mrow + mi * 16 + g + 8 * h];
#pragma unroll
                for (int ni = 0; ni < 4; ni++) da[ni] = *(const float2 *)(sad + s * BN + ncol + ni * 8 + 2 * tg);
#pragma unroll
                for (int mi = 0; mi < 2; mi++)
#pragma unroll
                    for (int ni = 0; ni < 4; ni++) {
                        int32_t c[4];
                        if (q8_bias<F>::on) {
                            mma_k32_c(c, a[mi], b[ni], MQ_FB_BIAS);
#pragma unroll
                            for (int e = 0; e < 4; e++)
                                acc[mi][ni][e] += fs_mul(fs_mul(wd[mi][e >> 1], (e & 1) ? da[ni].y : da[ni].x),
                                                         mq_fb_float(c[e]));
                        } else {
                            mma_k32_z(c, a[mi], b[ni]);
#pragma unroll
                            for (int e = 0; e < 4; e++)
                                acc[mi][ni][e] +=
                                    F::term(wd[mi][e >> 1], 0.0f, (e & 1) ? da[ni].y : da[ni].x, c[e], 0);
                        }
                    }
            } else if (F::int_scale) {
                int sc[2][2];
#pragma unroll
                for (int mi = 0; mi < 2; mi++)
                    for (int h = 0; h < 2; h++) sc[mi][h] = sWsc[(mrow + mi * 16 + g + 8 * h) * 8 + s];
#pragma unroll
                for (int mi = 0; mi < 2; mi++)
#pragma unroll
                    for (int ni = 0; ni < 4; ni++) {
                        int32_t c[4];
                        mma_k32_z(c, a[mi], b[ni]);
#pragma unroll
                        for (int e = 0; e < 4; e++) iacc[mi][ni][e] += sc[mi][e >> 1] * c[e];
                    }
            } else {
#pragma unroll
                for (int mi = 0; mi < 2; mi++)
#pragma unroll
                    for (int ni = 0; ni < 4; ni++) mma_k32(iacc[mi][ni], a[mi], b[ni]);
            }
        }
        if ((int)F::act_kind == DS4_ACT_Q8_K && wlive) {
            /* The block's f32 terms (and the min sums). */
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                uint32_t am0 = 0, am1 = 0;
                if (F::has_min) {
                    am0 = *(const uint32_t *)(sWmin + (mrow + mi * 16 + g) * 16 + 4 * tg);
                    am1 = *(const uint32_t *)(sWmin + (mrow + mi * 16 + g + 8) * 16 + 4 * tg);
                }
                float dw[2], dmw[2];
                for (int h = 0; h < 2; h++) {
                    dw[h] = sWd[mrow + mi * 16 + g + 8 * h];
                    dmw[h] = sWd[MQ_BM + mrow + mi * 16 + g + 8 * h];
                }
#pragma unroll
                for (int ni = 0; ni < 4; ni++) {
                    int32_t slo[4] = {0, 0, 0, 0}, shi[4] = {0, 0, 0, 0};
                    if (F::has_min) {
                        const uint8_t *sp = ssp + (ncol + ni * 8 + g) * 32 + 4 * tg;
                        mma_k16(slo, am0, am1, *(const uint32_t *)sp);
                        mma_k16(shi, am0, am1, *(const uint32_t *)(sp + 16));
                    }
                    float2 da = *(const float2 *)(sad + ncol + ni * 8 + 2 * tg);
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float dav = (e & 1) ? da.y : da.x;
                        acc[mi][ni][e] += F::term(dw[e >> 1], dmw[e >> 1], dav, iacc[mi][ni][e], 64 * shi[e] + slo[e]);
                        iacc[mi][ni][e] = 0;
                    }
                }
            }
        }
        if (NBUF == 1) {
            __syncthreads(); /* every warp is done with sA */
            if (kb + 1 < p.nkb) decode_a(kb + 1, 0);
        }
        cp_async_wait<0>();
        __syncthreads();
    }

    /* Epilogue. */
    const int mrow = wm * 32, ncol = wn * 32;
    if (p.mode == MODE_GATE_UP) {
        /* gate rows 0..63, up rows 64..127 of the tile meet in shared memory
         * ([128][BN + 1] floats over the weight and activation buffers: the
         * loop's last barrier came after every read of them) */
        static_assert(MQ_BM * (BN + 1) * 4 <= C::SMEM - C::TAB, "gate/up exchange must fit");
        float *so = (float *)(smem + C::TAB);
#pragma unroll
        for (int mi = 0; mi < 2; mi++)
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    so[(mrow + mi * 16 + g + 8 * (e >> 1)) * (BN + 1) + ncol + ni * 8 + 2 * tg + (e & 1)] =
                        acc[mi][ni][e] * F::final_scale;
        __syncthreads();
        for (int i = tid; i < 64 * BN; i += NT) {
            int r = i & 63, n = i >> 6;
            uint32_t pr = cbase + n;
            int tok = p.pair_tok[pr];
            float v = tok < 0 ? 0.0f : ds4_swiglu(so[r * (BN + 1) + n], so[(64 + r) * (BN + 1) + n], p.clamp, p.pair_w[pr]);
            p.y[(size_t)pr * p.ldy + rt * 64 + r] = v;
        }
        return;
    }
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                uint32_t r = row0 + mrow + mi * 16 + g + 8 * (e >> 1), j = cbase + ncol + ni * 8 + 2 * tg + (e & 1);
                if (r >= p.rows) continue;
                if (p.mode == MODE_DENSE ? j >= p.n_tok : p.pair_tok[j] < 0) continue;
                p.y[(size_t)j * p.ldy + r] = acc[mi][ni][e] * F::final_scale;
            }
}

/* ------------------------------------------------------------------ */
/* MoE plan and combine                                                 */
/* ------------------------------------------------------------------ */

/* One block: counts pairs per expert, cuts each expert's segment of pair
 * slots into tiles (mq_moe_tiles: the 128 tiles first), maps tiles to
 * experts (-1: unused) and their first slots, places the pairs (from each
 * segment's first slot, so a tile's pairs fill its first columns). As
 * every 128 tile holds > 64 pairs there are at most n_pairs / 65 of them,
 * and with big = 1 at most one 64 tile per expert. The 128 tiles are
 * entries 0 .. n_big-1 of tile_expert / tile_slot, the 64 tiles entries
 * n_big .. n_big+n_small-1. */
enum { PLAN_BATCH = 8 };
__global__ void __launch_bounds__(1024) k_plan(const int32_t *ids, const float *wts, uint32_t n_pairs, uint32_t n_used,
                                               uint32_t n_expert, int big, uint32_t n_big, uint32_t n_small,
                                               uint32_t bound, int *tile_expert, int *tile_slot, int *pair_tok,
                                               float *pair_w, int *pair_of, int *total) {
    extern __shared__ int sm[];
    int *cnt = sm, *fill = sm + n_expert, *off = sm + 2 * n_expert, *nbo = off + n_expert + 1,
        *nso = nbo + n_expert + 1;
    const int tid = threadIdx.x, nt = blockDim.x;
    for (uint32_t e = tid; e < n_expert; e += nt) cnt[e] = fill[e] = 0;
    __syncthreads();
    /* the pairs in rounds of PLAN_BATCH a thread, every id of a round loaded
     * before any is used (one load latency a round, not one a pair) */
    for (uint32_t i0 = 0; i0 < n_pairs; i0 += PLAN_BATCH * nt) {
        int e[PLAN_BATCH];
#pragma unroll
        for (int k = 0; k < PLAN_BATCH; k++) {
            uint32_t i = i0 + k * nt + tid;
            e[k] = i < n_pairs ? ids[i] : -1;
        }
#pragma unroll
        for (int k = 0; k < PLAN_BATCH; k++)
            if (e[k] >= 0 && (uint32_t)e[k] < n_expert) atomicAdd(&cnt[e[k]], 1);
    }
    __syncthreads();
    if (tid == 0) {
        off[0] = nbo[0] = nso[0] = 0;
        for (uint32_t e = 0; e < n_expert; e++) {
            int nb, ns;
            mq_moe_tiles(cnt[e], big, &nb, &ns);
            off[e + 1] = off[e] + 128 * nb + 64 * ns;
            nbo[e + 1] = nbo[e] + nb;
            nso[e + 1] = nso[e] + ns;
        }
        *total = off[n_expert];
    }
    for (uint32_t t = tid; t < n_big + n_small; t += nt) tile_expert[t] = -1;
    __syncthreads();
    for (uint32_t e = tid; e < n_expert; e += nt) {
        int nb = nbo[e + 1] - nbo[e];
        for (int t = 0; t < nb; t++) {
            tile_expert[nbo[e] + t] = (int)e;
            tile_slot[nbo[e] + t] = off[e] + 128 * t;
        }
        for (int t = 0; t < nso[e + 1] - nso[e]; t++) {
            tile_expert[n_big + nso[e] + t] = (int)e;
            tile_slot[n_big + nso[e] + t] = off[e] + 128 * nb + 64 * t;
        }
        for (int q = off[e] + cnt[e]; q < off[e + 1]; q++) pair_tok[q] = -1, pair_w[q] = 0.0f;
    }
    for (uint32_t q = off[n_expert] + tid; q < bound; q += nt) pair_tok[q] = -1, pair_w[q] = 0.0f;
    for (uint32_t i0 = 0; i0 < n_pairs; i0 += PLAN_BATCH * nt) {
        int e[PLAN_BATCH];
        float wt[PLAN_BATCH];
#pragma unroll
        for (int k = 0; k < PLAN_BATCH; k++) {
            uint32_t i = i0 + k * nt + tid;
            e[k] = i < n_pairs ? ids[i] : -1;
            wt[k] = i < n_pairs ? wts[i] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < PLAN_BATCH; k++) {
            uint32_t i = i0 + k * nt + tid;
            if (i >= n_pairs) break;
            if (e[k] >= 0 && (uint32_t)e[k] < n_expert) {
                int q = off[e[k]] + atomicAdd(&fill[e[k]], 1);
                pair_tok[q] = (int)(i / n_used);
                pair_w[q] = wt[k];
                pair_of[i] = q;
            } else {
                pair_of[i] = -1;
            }
        }
    }
}

/* out[t][o] = (sum over slots in order of down[pair][o]) + add[t][o], four
 * outputs a thread (n_embd a multiple of 4): every slot's row loaded before
 * the sum (a thread per output, a load per slot behind its branch, ran at
 * ~60% of memory speed). */
__global__ void k_combine(const float *gd, const int *pair_of, uint32_t n_tok, uint32_t n_used, uint32_t n_embd,
                          const float *add, float *out) {
    const size_t i = 4 * (blockIdx.x * (size_t)blockDim.x + threadIdx.x);
    if (i >= (size_t)n_tok * n_embd) return;
    const size_t t = i / n_embd, o = i % n_embd;
    float4 v[DS4_CUDA_MAX_SEL];
    int q[DS4_CUDA_MAX_SEL];
#pragma unroll
    for (uint32_t k = 0; k < DS4_CUDA_MAX_SEL; k++) q[k] = k < n_used ? pair_of[t * n_used + k] : -1;
#pragma unroll
    for (uint32_t k = 0; k < DS4_CUDA_MAX_SEL; k++)
        v[k] = q[k] >= 0 ? *(const float4 *)(gd + (size_t)q[k] * n_embd + o) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
    for (uint32_t k = 0; k < DS4_CUDA_MAX_SEL; k++)
        if (q[k] >= 0) acc.x += v[k].x, acc.y += v[k].y, acc.z += v[k].z, acc.w += v[k].w;
    if (add) {
        const float4 a = *(const float4 *)(add + i);
        acc.x += a.x, acc.y += a.y, acc.z += a.z, acc.w += a.w;
    }
    *(float4 *)(out + i) = acc;
}

/* ------------------------------------------------------------------ */
/* Host side                                                            */
/* ------------------------------------------------------------------ */

static uint64_t g_ready_devices; /* bit d: ds4_cuda_mmq_init ran for device d */
static int g_smem_optin[64];     /* shared memory a block may use, per device */

/* Lifts a kernel's shared-memory limit when the device has that much. */
template <class K>
static cudaError_t allow_smem(K kernel, int bytes, int optin) {
    return bytes > optin ? cudaSuccess
                         : cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
}

template <class F>
static cudaError_t allow_tc_smem(int optin) {
    cudaError_t e;
    if ((e = allow_smem(k_tc<F, 64, 1>, (int)tc_cfg<64, 1>::SMEM, optin)) ||
        (e = allow_smem(k_tc<F, 128, 1>, (int)tc_cfg<128, 1>::SMEM, optin)))
        return e;
    return allow_smem(k_tc<F, 128, 2>, (int)tc_cfg<128, 2>::SMEM, optin);
}

extern "C" int ds4_cuda_mmq_init(ds4_cuda_kernels *k, ds4_err *err) {
    int dev = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return cuda_fail(err, "current device", e);
    if (dev >= 64) return ds4_fail(err, "cuda: device %d (the batched products take devices 0-63)", dev);
    if ((g_ready_devices >> dev) & 1) return 0;
    if ((e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess)
        return cuda_fail(err, "device attribute", e);
    /* The 64-token tiles (86.5 KB) and the F16 kernel (61 KB) must fit;
     * the 128-token ones (130 / 172 KB, Hopper) are used where they do. */
    if (optin < (int)tc_cfg<64, 1>::SMEM)
        return ds4_fail(err, "cuda: the batched products need %d bytes of shared memory per block, the device "
                        "allows %d", (int)tc_cfg<64, 1>::SMEM, optin);
    uint32_t compact[DS4_CUDA_IQ2_TABLE_WORDS];
    static uint32_t rep[DS4_CUDA_IQ2_TABLE_WORDS * DS4_CUDA_IQ2_COPIES];
    if (!ds4_cuda_iq2_tables(compact)) return ds4_fail(err, "cuda: the IQ2_XXS grid holds a value other than 8, 25 or 43");
    ds4_cuda_iq2_replicate(compact, rep);
    if ((e = cudaMemcpyToSymbol(g_mq_tab, compact, sizeof compact)) != cudaSuccess ||
        (e = cudaMemcpyToSymbol(g_mq_tab_rep, rep, sizeof rep)) != cudaSuccess ||
        (e = allow_tc_smem<mq_q8_0>(optin)) || (e = allow_tc_smem<mq_q2_K>(optin)) ||
        (e = allow_smem(k_tc<mq_q8_0_fb, 128, 1>, (int)tc_cfg<128, 1>::SMEM, optin)) ||
        (e = allow_smem(k_tc<mq_q8_0_fb, 128, 2>, (int)tc_cfg<128, 2>::SMEM, optin)) ||
        (e = allow_tc_smem<mq_q4_K>(optin)) || (e = allow_tc_smem<mq_iq2_xxs>(optin)) ||
        (e = allow_smem(k_h16, H_SMEM, optin)))
        return cuda_fail(err, "mmq setup", e);
    g_smem_optin[dev] = optin;
    g_ready_devices |= 1ull << dev;
    return 0;
}

/* The current device's shared-memory limit, or -1 (with a message) if
 * ds4_cuda_mmq_init has not run for it. */
static int check_ready(ds4_err *err) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev >= 64 || !((g_ready_devices >> dev) & 1))
        return ds4_fail(err, "cuda: ds4_cuda_mmq_init was not called for this device");
    return g_smem_optin[dev];
}

extern "C" size_t ds4_cuda_mmq_act_bytes(uint32_t type, uint32_t in, uint32_t n_tok) {
    int kind = act_kind_of(type);
    if (kind < 0 || in == 0) return 0;
    if (kind == DS4_ACT_F32) return (size_t)in * n_tok * sizeof(float);
    if (in % (kind == DS4_ACT_Q8_0 ? 32 : 256)) return 0;
    return mq_layout(kind, (size_t)in * n_tok).bytes;
}

extern "C" int ds4_cuda_mmq_quantize(ds4_cuda_kernels *k, uint32_t type, const float *x, uint32_t in, uint32_t n_tok,
                                     void *act, ds4_cuda_stream st, ds4_err *err) {
    if (ds4_cuda_mmq_act_bytes(type, in, 1) == 0)
        return ds4_fail(err, "cuda: no batched activation for %s rows of %u values", ds4_type_name(type), in);
    if ((uintptr_t)x % 16 || (uintptr_t)act % 16)
        return ds4_fail(err, "cuda: batched activation buffers must be 16-byte aligned");
    return quantize_rows(type, x, in, n_tok, act, NULL, (cudaStream_t)st, err);
}

/* Which kernel a dense product takes. */
static bool tc_usable(uint32_t type, const void *w, uint32_t n_groups, uint32_t group_rows) {
    if (n_groups > 1 && group_rows % MQ_BM) return false; /* a row tile reads one group's activation */
    switch (type) {
    case DS4_TYPE_Q8_0: case DS4_TYPE_IQ2_XXS: return true;
    case DS4_TYPE_Q2_K: return (uintptr_t)w % 4 == 0;
    case DS4_TYPE_Q4_K: return (uintptr_t)w % 16 == 0;
    default: return false;
    }
}

static int g_force_bn = 0; /* bench: 0 = choose */

template <class F, int BN, int NBUF>
static int launch_tc(const tc_params &p, dim3 grid, cudaStream_t st, ds4_err *err) {
    k_tc<F, BN, NBUF><<<grid, tc_cfg<BN, NBUF>::NT, tc_cfg<BN, NBUF>::SMEM, st>>>(p);
    return check_launch(err, "mmq launch");
}

/* bn: 64, 128 (two decoded weight buffers) or 129 (128 with one). */
template <class F>
static int run_tc(tc_params &p, uint32_t row_tiles, uint32_t n_cols, int bn, cudaStream_t st, ds4_err *err) {
    dim3 g128(row_tiles, (n_cols + 127) / 128);
    if (bn == 128) return launch_tc<F, 128, 2>(p, g128, st, err);
    if (bn == 129) return launch_tc<F, 128, 1>(p, g128, st, err);
    return launch_tc<F, 64, 1>(p, dim3(row_tiles, (n_cols + 63) / 64), st, err);
}

static int run_tc_type(uint32_t type, tc_params &p, uint32_t row_tiles, uint32_t n_cols, int bn, cudaStream_t st,
                       ds4_err *err) {
    dim3 g128(row_tiles, (n_cols + 127) / 128);
    if (bn >= 130 && type == DS4_TYPE_Q8_0)
        return bn == 130 ? launch_tc<mq_q8_0_fb, 128, 1>(p, g128, st, err) : launch_tc<mq_q8_0_fb, 128, 2>(p, g128, st, err);
    if (bn >= 130) bn = bn == 130 ? 129 : 128;
    switch (type) {
    case DS4_TYPE_Q8_0: return run_tc<mq_q8_0>(p, row_tiles, n_cols, bn, st, err);
    case DS4_TYPE_Q2_K: return run_tc<mq_q2_K>(p, row_tiles, n_cols, bn, st, err);
    case DS4_TYPE_Q4_K: return run_tc<mq_q4_K>(p, row_tiles, n_cols, bn, st, err);
    default: return run_tc<mq_iq2_xxs>(p, row_tiles, n_cols, bn, st, err);
    }
}

/* The 128-token variant a type takes (128: two decoded weight buffers,
 * 129: one; the dense products' choice), 0 if the device lacks the shared
 * memory for either. */
static int tc_big_bn(uint32_t type, int optin) {
    if (type != DS4_TYPE_Q8_0 && (int)tc_cfg<128, 2>::SMEM <= optin) return 128;
    return (int)tc_cfg<128, 1>::SMEM <= optin ? 129 : 0;
}

static void fill_act(tc_params &p, uint32_t type, const void *act, uint32_t a_stride, size_t n_act_rows) {
    mq_act_layout l = mq_layout(act_kind_of(type), (size_t)a_stride * n_act_rows);
    p.act = (const uint8_t *)act;
    p.d_off = l.d;
    p.split_off = l.split;
    p.a_stride = a_stride;
}

/* Tests and benchmarks: 0 = automatic, 1 = the plain kernel, 64 / 128 =
 * the tensor-core kernel with that tile width. */
extern "C" void ds4_cuda_mmq_set_kernel(int which) { g_force_bn = which; }

extern "C" int ds4_cuda_mmq_grouped(ds4_cuda_kernels *k, uint32_t type, const void *w, uint32_t rows, uint32_t in,
                                    uint32_t n_groups, const void *act, uint32_t n_tok, float *y, uint32_t ldy,
                                    ds4_cuda_stream stream, ds4_err *err) {
    cudaStream_t st = (cudaStream_t)stream;
    int kind = act_kind_of(type);
    if (kind < 0) return ds4_fail(err, "cuda: no batched product for weight type %s", ds4_type_name(type));
    int optin = check_ready(err);
    if (optin < 0) return -1;
    uint32_t be = kind == DS4_ACT_F32 ? 1 : kind == DS4_ACT_Q8_0 ? 32 : 256;
    if (in == 0 || in % be)
        return ds4_fail(err, "cuda: %s rows of %u values (need a positive multiple of %u)", ds4_type_name(type), in, be);
    if (n_groups == 0 || rows % n_groups || (kind == DS4_ACT_F32 && n_groups > 1 && (rows / n_groups) % 64))
        return ds4_fail(err, "cuda: %u rows do not split into %u equal groups%s", rows, n_groups,
                        kind == DS4_ACT_F32 ? " of a multiple of 64 rows" : "");
    /* The block loads need Q2_K rows 4-byte and Q4_K rows 16-byte aligned. */
    if ((type == DS4_TYPE_Q2_K && (uintptr_t)w % 4) || (type == DS4_TYPE_Q4_K && (uintptr_t)w % 16))
        return ds4_fail(err, "cuda: %s weights not %d-byte aligned", ds4_type_name(type), type == DS4_TYPE_Q2_K ? 4 : 16);
    if (ldy < rows) return ds4_fail(err, "cuda: ldy %u < rows %u", ldy, rows);
    if ((uintptr_t)w % 2 || (uintptr_t)act % 16 || (kind == DS4_ACT_F32 && (uintptr_t)act % 16))
        return ds4_fail(err, "cuda: misaligned weights (need 2 bytes) or activation (need 16)");
    if (rows == 0 || n_tok == 0) return 0;
    uint32_t group_rows = rows / n_groups, a_stride = in * n_groups;
    if (type == DS4_TYPE_F16 && g_force_bn != 1 && in % H_BK == 0 && (uintptr_t)w % 16 == 0 &&
        (n_groups == 1 || group_rows % H_BM == 0)) {
        dim3 grid((rows + H_BM - 1) / H_BM, (n_tok + H_BN - 1) / H_BN);
        k_h16<<<grid, 256, H_SMEM, st>>>((const __half *)w, rows, in, group_rows, (const float *)act, a_stride, n_tok,
                                         y, ldy);
        return check_launch(err, "f16 product launch");
    }
    if (kind == DS4_ACT_F32) {
        dim3 grid((rows + 63) / 64, (n_tok + 63) / 64);
        if (type == DS4_TYPE_F16)
            k_fgemm<__half><<<grid, 256, 0, st>>>((const __half *)w, rows, in, group_rows, (const float *)act, a_stride,
                                                  n_tok, y, ldy);
        else
            k_fgemm<float><<<grid, 256, 0, st>>>((const float *)w, rows, in, group_rows, (const float *)act, a_stride,
                                                 n_tok, y, ldy);
        return check_launch(err, "f32 product launch");
    }
    size_t row_bytes = ds4_type_row_bytes(type, in);
    if (g_force_bn == 1 || !tc_usable(type, w, n_groups, group_rows)) {
        plain_params p;
        p.w = (const uint8_t *)w;
        p.row_bytes = row_bytes;
        p.rows = rows;
        p.in = in;
        p.a_stride = a_stride;
        p.group_rows = group_rows;
        p.n_tok = n_tok;
        p.ldy = ldy;
        p.act = (const uint8_t *)act;
        mq_act_layout l = mq_layout(kind, (size_t)a_stride * n_tok);
        p.d_off = l.d;
        p.bs_off = l.bs;
        p.y = y;
        dim3 grid((rows + 127) / 128, n_tok);
        switch (type) {
        case DS4_TYPE_Q8_0: k_plain<fmt_q8_0><<<grid, 128, 0, st>>>(p); break;
        case DS4_TYPE_Q2_K: k_plain<fmt_q2_K><<<grid, 128, 0, st>>>(p); break;
        case DS4_TYPE_Q4_K: k_plain<fmt_q4_K><<<grid, 128, 0, st>>>(p); break;
        default: k_plain<fmt_iq2_xxs_natural><<<grid, 128, 0, st>>>(p); break;
        }
        return check_launch(err, "plain product launch");
    }
    tc_params p = {};
    p.w0 = (const uint8_t *)w;
    p.row_bytes = row_bytes;
    p.rows = rows;
    p.nb32 = in / 32;
    p.nkb = (in + 255) / 256;
    p.in = in;
    p.group_rows = group_rows;
    p.n_tok = n_tok;
    p.y = y;
    p.ldy = ldy;
    p.mode = MODE_DENSE;
    fill_act(p, type, act, a_stride, n_tok);
    /* 128-token tiles decode each weight tile half as often; 64 wins only
     * while 128 would leave SMs idle (H100, 512 tokens: q_a 87 vs 93 us,
     * shexp down 65 vs 50 us). */
    uint32_t row_tiles = (rows + MQ_BM - 1) / MQ_BM;
    int bn = g_force_bn >= 64 ? g_force_bn
             : (uint64_t)row_tiles * ((n_tok + 127) / 128) * 10 >= (uint64_t)ds4_cuda_kernels_sm_count(k) * 9 ? 128
                                                                                                          : 64;
    /* Two decoded weight buffers pay off for the K-quants (H100, 4096
     * tokens: IQ2_XXS 299 -> 284 us, Q2_K 276 -> 259, Q4_K 317 -> 307) but
     * not for Q8_0, whose per-block scaling already keeps the SM busy
     * (attn_output_b 1525 us with one buffer, 1656 with two). */
    if (bn == 128 && g_force_bn == 0 && type == DS4_TYPE_Q8_0) bn = 129;
    /* Devices with less shared memory per block than Hopper (sm_80: 163
     * KB, sm_89 / sm_120: 99 KB) take the smaller tiles. */
    if ((bn == 128 || bn == 131) && (int)tc_cfg<128, 2>::SMEM > optin) bn = 129;
    if ((bn == 129 || bn == 130) && (int)tc_cfg<128, 1>::SMEM > optin) bn = 64;
    return run_tc_type(type, p, row_tiles, n_tok, bn, st, err);
}

extern "C" int ds4_cuda_mmq(ds4_cuda_kernels *k, uint32_t type, const void *w, uint32_t rows, uint32_t in,
                            const void *act, uint32_t n_tok, float *y, uint32_t ldy, ds4_cuda_stream st, ds4_err *err) {
    return ds4_cuda_mmq_grouped(k, type, w, rows, in, 1, act, n_tok, y, ldy, st, err);
}

/* ---- MoE ---- */

#define MOE_BN 64

/* Workspace carving (all regions 256-byte aligned). */
struct moe_ws {
    int *tile_expert, *tile_slot, *pair_tok, *pair_of, *total;
    float *pair_w, *mid, *gd;
    uint8_t *mid_act;
    size_t bytes;
    uint32_t bound, n_tiles; /* pair slots; tile entries (both k_plan layouts fit) */
};

static moe_ws moe_carve(uint8_t *base, uint32_t down_type, uint32_t n_embd, uint32_t n_ff, uint32_t n_expert,
                        uint32_t n_used, uint32_t n_tok) {
    moe_ws w = {};
    uint64_t pairs = (uint64_t)n_tok * n_used;
    w.bound = (uint32_t)((pairs + (uint64_t)n_expert * (MOE_BN - 1) + MOE_BN - 1) / MOE_BN * MOE_BN);
    w.n_tiles = w.bound / MOE_BN + (uint32_t)(pairs / 65) + n_expert;
    size_t o = 0;
    auto take = [&](size_t bytes) -> uint8_t * {
        uint8_t *p = base ? base + o : NULL;
        o += (bytes + 255) & ~(size_t)255;
        return p;
    };
    w.total = (int *)take(sizeof(int));
    w.tile_expert = (int *)take(sizeof(int) * w.n_tiles);
    w.tile_slot = (int *)take(sizeof(int) * w.n_tiles);
    w.pair_tok = (int *)take(sizeof(int) * w.bound);
    w.pair_w = (float *)take(sizeof(float) * w.bound);
    w.pair_of = (int *)take(sizeof(int) * pairs);
    w.mid = (float *)take(sizeof(float) * w.bound * (size_t)n_ff);
    w.mid_act = take(ds4_cuda_mmq_act_bytes(down_type, n_ff, w.bound));
    w.gd = (float *)take(sizeof(float) * w.bound * (size_t)n_embd);
    w.bytes = o;
    return w;
}

extern "C" size_t ds4_cuda_mmq_moe_ws_bytes(uint32_t gate_type, uint32_t down_type, uint32_t n_embd, uint32_t n_ff,
                                            uint32_t n_expert, uint32_t n_used, uint32_t n_tok) {
    return moe_carve(NULL, down_type, n_embd, n_ff, n_expert, n_used, n_tok).bytes;
}

static bool moe_type_ok(uint32_t t) {
    return t == DS4_TYPE_Q8_0 || t == DS4_TYPE_Q2_K || t == DS4_TYPE_Q4_K || t == DS4_TYPE_IQ2_XXS;
}

extern "C" int ds4_cuda_mmq_moe(ds4_cuda_kernels *k, uint32_t gate_type, const void *gate, const void *up,
                                uint32_t down_type, const void *down, uint32_t n_embd, uint32_t n_ff,
                                uint32_t n_expert, uint32_t n_used, float clamp, const int32_t *ids,
                                const float *weights, uint32_t n_tok, const void *x_act, const float *add, float *out,
                                void *ws, size_t ws_bytes, ds4_cuda_stream stream, ds4_err *err) {
    cudaStream_t st = (cudaStream_t)stream;
    int optin = check_ready(err);
    if (optin < 0) return -1;
    if (!moe_type_ok(gate_type) || !moe_type_ok(down_type))
        return ds4_fail(err, "cuda: no batched MoE for expert types %s / %s", ds4_type_name(gate_type),
                        ds4_type_name(down_type));
    if (ds4_cuda_mmq_act_bytes(gate_type, n_embd, 1) == 0 || ds4_cuda_mmq_act_bytes(down_type, n_ff, 1) == 0 ||
        n_ff % 64 || n_expert == 0 || n_used == 0 || n_used > DS4_CUDA_MAX_SEL)
        return ds4_fail(err, "cuda: batched MoE shape n_embd %u n_ff %u (n_ff must be a multiple of 64 and of the "
                        "blocks) experts %u used %u", n_embd, n_ff, n_expert, n_used);
    size_t gu_rb = ds4_type_row_bytes(gate_type, n_embd), dn_rb = ds4_type_row_bytes(down_type, n_ff);
    if (!tc_usable(gate_type, gate, 1, n_ff) || !tc_usable(gate_type, up, 1, n_ff) ||
        !tc_usable(down_type, down, 1, n_embd) || (uintptr_t)out % 16 || (uintptr_t)add % 16)
        return ds4_fail(err, "cuda: batched MoE weights misaligned");
    if (n_tok == 0) return 0;
    moe_ws w = moe_carve((uint8_t *)ws, down_type, n_embd, n_ff, n_expert, n_used, n_tok);
    if (!ws || ws_bytes < w.bytes || (uintptr_t)ws % 256)
        return ds4_fail(err, "cuda: MoE workspace of %zu bytes (need %zu, 256-byte aligned)", ws_bytes, w.bytes);

    /* Tiles of 128 pairs (where an expert has more than 64) decode each
     * expert's weight tile once per 128 of its pairs instead of per 64;
     * ds4_cuda_mmq_set_kernel(64) keeps every tile at 64. */
    uint32_t n_pairs = n_tok * n_used;
    int bn_g = tc_big_bn(gate_type, optin), bn_d = tc_big_bn(down_type, optin);
    int big = g_force_bn != 64 && bn_g && bn_d && n_pairs >= 65;
    uint32_t n_big = big ? n_pairs / 65 : 0, n_small = big ? n_expert : w.bound / MOE_BN;
    k_plan<<<1, 1024, sizeof(int) * (5 * n_expert + 3), st>>>(ids, weights, n_pairs, n_used, n_expert, big, n_big,
                                                              n_small, w.bound, w.tile_expert, w.tile_slot,
                                                              w.pair_tok, w.pair_w, w.pair_of, w.total);
    if (check_launch(err, "MoE plan launch")) return -1;
    /* Both tile lists of a product: the 128 tiles, then the 64 tiles. */
    auto run_tiles = [&](tc_params &p, uint32_t type, int bn, uint32_t row_tiles) -> int {
        if (n_big) {
            p.tile_expert = w.tile_expert;
            p.tile_slot = w.tile_slot;
            if (run_tc_type(type, p, row_tiles, n_big * 128, bn, st, err)) return -1;
        }
        p.tile_expert = w.tile_expert + n_big;
        p.tile_slot = w.tile_slot + n_big;
        return run_tc_type(type, p, row_tiles, n_small * MOE_BN, MOE_BN, st, err);
    };

    tc_params p = {};
    p.w0 = (const uint8_t *)gate;
    p.w1 = (const uint8_t *)up;
    p.row_bytes = gu_rb;
    p.expert_bytes = gu_rb * n_ff;
    p.rows = n_ff;
    p.nb32 = n_embd / 32;
    p.nkb = (n_embd + 255) / 256;
    p.in = n_embd;
    p.group_rows = n_ff;
    p.y = w.mid;
    p.ldy = n_ff;
    p.mode = MODE_GATE_UP;
    p.pair_tok = w.pair_tok;
    p.pair_w = w.pair_w;
    p.clamp = clamp;
    fill_act(p, gate_type, x_act, n_embd, n_tok);
    if (run_tiles(p, gate_type, bn_g, n_ff / 64)) return -1;

    if (quantize_rows(down_type, w.mid, n_ff, w.bound, w.mid_act, w.total, st, err)) return -1;

    p.w0 = (const uint8_t *)down;
    p.w1 = NULL;
    p.row_bytes = dn_rb;
    p.expert_bytes = dn_rb * n_embd;
    p.rows = n_embd;
    p.nb32 = n_ff / 32;
    p.nkb = (n_ff + 255) / 256;
    p.in = n_ff;
    p.group_rows = n_embd;
    p.y = w.gd;
    p.ldy = n_embd;
    p.mode = MODE_DOWN;
    fill_act(p, down_type, w.mid_act, n_ff, w.bound);
    if (run_tiles(p, down_type, bn_d, (n_embd + MQ_BM - 1) / MQ_BM)) return -1;

    size_t threads = (size_t)n_tok * n_embd / 4;
    k_combine<<<(unsigned)((threads + 255) / 256), 256, 0, st>>>(w.gd, w.pair_of, n_tok, n_used, n_embd, add, out);
    return check_launch(err, "MoE combine launch");
}
