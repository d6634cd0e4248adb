/* cuda_formats.cuh — the block formats' dot-product arithmetic, written once
 * for the GPU kernels and for a host emulation of them.
 *
 * A quantised row is cut into "units": each quant block is split into G
 * parts (G lanes of a warp work on one block). unit() computes the exact
 * integer partial sums of one part; the G partials of a block are added
 * (integers, so the order does not matter) and term() turns the block's
 * sums into its f32 contribution with the very float operations of the CPU
 * reference (src/quant/quant_dot.c), so every block term is bit-identical
 * to the CPU's. Only the order in which block terms are summed differs on
 * the GPU (a warp tree instead of block order); the host emulation sums in
 * block order and so must reproduce ds4_dot_* bit for bit
 * (ds4-cuda-bench --host-check).
 *
 * Units read weight bytes from a staging buffer (shared memory on the GPU)
 * whose start is 16-byte aligned, and the activation from a split layout
 * (act_view): int8 codes of all elements back to back (16-byte aligned),
 * the f32 block scales, and for Q8_K the int16 sums of each 16 codes.
 * A unit works on NR rows at once (rows `stride` bytes apart in the
 * buffer) that share one activation, which it loads once: the gate and up
 * rows of an expert, or neighbouring rows of a matrix.
 *
 * Shared-memory banks: a 16-byte load is served 8 lanes at a time, and the
 * 8 lanes must hit 8 different 16-byte bank groups (address / 16 mod 8) to
 * take one pass. Q2_K's activation pieces collide 4 ways in the natural
 * order, so its lanes walk the four shifts in a rotated order (+36% on
 * H200). Q8_0, Q4_K and IQ2_XXS collide only 2 ways; the same rotation
 * there cost more in selects than it saved (H200: Q4_K -6%, IQ2_XXS -4%,
 * Q8_0 even), so they load in the natural order.
 *
 * G per format: Q8_0 1 (a 34-byte block per lane), Q2_K 4 (16 code bytes =
 * 4 sub-blocks of 16 per lane), Q4_K 8 (16 code bytes = 32 nibbles per
 * lane), IQ2_XXS 8 (one 32-value sub-block per lane; fmt_iq2_xxs_g: 4 or 2).
 *
 * IQ2_XXS decodes without 64-bit grid lookups: each grid point is stored as
 * 8 nibbles (0, 1, 2 for the magnitudes 8, 25, 43) and each sign byte as 8
 * nibbles (3 where negative); their sum selects, per element, one byte of
 * the constant {8, 25, 43, -8, -25, -43} with one byte-permute per 4
 * values. Both tables are derived from src/quant's at init and replicated
 * DS4_CUDA_IQ2_COPIES (32) times across shared-memory banks: lane l reads
 * copy l, in bank l, so the random lookups of a warp never collide (with
 * 16 copies lanes l and l + 16 collided half the time: ncu counted 1.93
 * wavefronts a lookup, and the routed gate/up's shared-memory pipe was its
 * busiest unit). */
#ifndef DS4_CUDA_FORMATS_CUH
#define DS4_CUDA_FORMATS_CUH

#include <math.h>
#include <stdint.h>
#include <cuda_fp16.h>

extern "C" {
#include "../../quant/quant.h"
}

#define DS4_HD __host__ __device__ __forceinline__

/* RMSNorm scale of n values whose squares sum to ss (numerics.c num_rmsnorm:
 * 1/sqrt(mean + eps) in f32 from the double mean). */
DS4_HD float ds4_rms_scale(double ss, int n, float eps) { return 1.0f / sqrtf((float)(ss / n) + eps); }

/* Activation in the split layout the kernels stage into shared memory. */
typedef struct act_view {
    const int8_t *q;      /* codes, element i at q[i] (IQ2_XXS kernels: act_halves_word's order) */
    const float *d;       /* scale of activation block b (32 or 256 elements) */
    const int16_t *bsums; /* Q8_K: sum of codes 16j..16j+15 of block b at bsums[16b + j] */
    const float *x;       /* F16 weights: the f32 activation itself */
} act_view;

/* The IQ2_XXS tables of src/quant (quant_tables.c): the grid and the sign
 * masks, copied to the device by ds4_cuda_kernels_init. */
extern "C" const uint64_t ds4_iq2xxs_grid[256];
extern "C" const uint64_t ds4_iq2xxs_sign_masks[128];

/* Which activation a weight format sees (and how it is staged). */
enum { DS4_ACT_Q8_0 = 0, DS4_ACT_Q8_K = 1, DS4_ACT_F32 = 2 };

/* IQ2_XXS nibble tables: 256 grid words, then 128 sign words; in shared
 * memory word w of copy c sits at [w * DS4_CUDA_IQ2_COPIES + c]. */
#define DS4_CUDA_IQ2_TABLE_WORDS (256 + 128)
#define DS4_CUDA_IQ2_COPIES 32
/* The bytes the nibbles select: 8, 25, 43, -8 | -25, -43, 0, 0. */
#define DS4_IQ2_VALUES_LO 0xf82b1908u
#define DS4_IQ2_VALUES_HI 0x0000d5e7u

DS4_HD uint32_t fs_funnel(uint32_t lo, uint32_t hi, uint32_t sh) {
#ifdef __CUDA_ARCH__
    return __funnelshift_r(lo, hi, sh);
#else
    return sh ? (lo >> sh) | (hi << (32 - sh)) : lo;
#endif
}

DS4_HD int fs_dp4a(uint32_t a, uint32_t b, int c) {
#ifdef __CUDA_ARCH__
    return __dp4a((int)a, (int)b, c);
#else
    for (int i = 0; i < 4; i++) c += (int8_t)(a >> (8 * i)) * (int8_t)(b >> (8 * i));
    return c;
#endif
}

/* Byte i of the result = byte (nibble i of s) of y:x, for the low 4
 * nibbles of s, each < 8 (the upper 16 bits of s are ignored). PTX prmt
 * directly: __byte_perm would first mask s with 0x7777, a LOP3 per call. */
DS4_HD uint32_t fs_perm(uint32_t x, uint32_t y, uint32_t s) {
#ifdef __CUDA_ARCH__
    uint32_t r;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : "r"(x), "r"(y), "r"(s));
    return r;
#else
    uint64_t v = (uint64_t)y << 32 | x;
    uint32_t r = 0;
    for (int i = 0; i < 4; i++) r |= (uint32_t)((v >> (8 * ((s >> (4 * i)) & 7))) & 255) << (8 * i);
    return r;
#endif
}

DS4_HD float fs_h2f(uint16_t h) {
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half(h));
#else
    return ds4_f16_to_f32(h);
#endif
}

/* Never contracted into an FMA, so block terms round as on the CPU. */
DS4_HD float fs_mul(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fmul_rn(a, b);
#else
    return a * b;
#endif
}

DS4_HD float fs_sub(float a, float b) {
#ifdef __CUDA_ARCH__
    return __fsub_rn(a, b);
#else
    return a - b;
#endif
}

DS4_HD uint16_t fs_ld16(const uint8_t *p) { return *(const uint16_t *)p; }

/* Where code word w (0..63) of a Q8_K block sits in shared memory for the
 * formats that read a 32-code sub-block as two 16-byte halves (act_halves:
 * IQ2_XXS): half h of sub-block sb at word 32h + 4sb, so that the 8 lanes of
 * a load that read 8 different sub-blocks' same half hit 8 different bank
 * groups (in the natural order, word 8sb + 4h, two lanes shared each). */
DS4_HD uint32_t act_halves_word(uint32_t w) { return (w & 4) << 3 | (w >> 3) << 2 | (w & 3); }

/* v, computed from the lane id so that ptxas keeps it in a register of the
 * thread: as a literal, a byte-permute operand was moved from a uniform
 * register before every use (53 of the 572 SASS instructions of the IQ2_XXS
 * gate/up's unit loop; cuobjdump, sm_90). */
DS4_HD uint32_t fs_in_register(uint32_t v) {
#ifdef __CUDA_ARCH__
    uint32_t l;
    asm volatile("mov.u32 %0, %%laneid;" : "=r"(l));
    return v + (l >> 5);
#else
    return v;
#endif
}

/* Unit interface, per format F:
 *   F::unit<NR>(b, stride, part, a, ab, tab, copy, isum[NR], summ[NR])
 *     b: block of row 0 in the buffer (row r at b + r*stride); ab: index of
 *     the activation block; tab/copy: IQ2_XXS tables and this lane's copy.
 *   F::term(b, a, ab, isum, summ): the block's f32 term, as on the CPU. */

/* ---- Q8_0: d f16, 32 int8 codes; activation Q8_0 with f32 scale. ---- */
struct fmt_q8_0 {
    enum { block_elems = 32, block_bytes = 34, G = 1, act_kind = DS4_ACT_Q8_0, needs_tab = 0, has_summ = 0,
           act_halves = 0 };
    static constexpr float final_scale = 1.0f;
    template <int NR>
    DS4_HD static void unit(const uint8_t *b, uint32_t stride, int part, const act_view &a, uint32_t ab,
                            const uint32_t *tab, int copy, int32_t *isum, int32_t *summ) {
        const uint4 *x = (const uint4 *)(a.q + 32 * ab);
        uint4 x0 = x[0], x1 = x[1];
        uint32_t xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
        for (int r = 0; r < NR; r++) {
            /* aligned through an integer, so the compiler loads these as
             * generic memory; derived from b (as IQ2_XXS does) they become
             * LDS, but the streaming product then needs 8 fewer registers,
             * its occupancy-derived grid grows and the step ran 1.7% slower
             * (notes/cuda-kernels.md §28) */
            uintptr_t addr = (uintptr_t)(b + r * stride + 2);
            const uint32_t *w = (const uint32_t *)(addr & ~(uintptr_t)3);
            uint32_t sh = (uint32_t)(addr & 3) * 8;
            uint32_t ws[9];
#pragma unroll
            for (int i = 0; i < 9; i++) ws[i] = w[i];
            int32_t s = 0;
#pragma unroll
            for (int i = 0; i < 8; i++) s = fs_dp4a(fs_funnel(ws[i], ws[i + 1], sh), xs[i], s);
            isum[r] = s;
            summ[r] = 0;
        }
    }
    /* NR rows by NC activation columns (isum[r·NC + c]): each row's words
     * loaded and aligned once, then dotted with every column; a column's
     * sum is unit's. */
    static constexpr bool multi_col = true;
    template <int NR, int NC>
    DS4_HD static void unit_cols(const uint8_t *b, uint32_t stride, int part, const act_view *a, uint32_t ab,
                                 int32_t *isum) {
        uint32_t xs[NC][8];
#pragma unroll
        for (int c = 0; c < NC; c++) {
            const uint4 *x = (const uint4 *)(a[c].q + 32 * ab);
            uint4 x0 = x[0], x1 = x[1];
            xs[c][0] = x0.x, xs[c][1] = x0.y, xs[c][2] = x0.z, xs[c][3] = x0.w;
            xs[c][4] = x1.x, xs[c][5] = x1.y, xs[c][6] = x1.z, xs[c][7] = x1.w;
        }
#pragma unroll
        for (int r = 0; r < NR; r++) {
            uintptr_t addr = (uintptr_t)(b + r * stride + 2); /* as unit's */
            const uint32_t *w = (const uint32_t *)(addr & ~(uintptr_t)3);
            uint32_t sh = (uint32_t)(addr & 3) * 8;
            uint32_t ws[9], wv[8];
#pragma unroll
            for (int i = 0; i < 9; i++) ws[i] = w[i];
#pragma unroll
            for (int i = 0; i < 8; i++) wv[i] = fs_funnel(ws[i], ws[i + 1], sh);
#pragma unroll
            for (int c = 0; c < NC; c++) {
                int32_t s = 0;
#pragma unroll
                for (int i = 0; i < 8; i++) s = fs_dp4a(wv[i], xs[c][i], s);
                isum[r * NC + c] = s;
            }
        }
    }
    DS4_HD static float term(const uint8_t *b, const act_view &a, uint32_t ab, int32_t isum, int32_t summ) {
        return fs_mul(fs_mul(fs_h2f(fs_ld16(b)), a.d[ab]), (float)isum);
    }
};

/* ---- Q2_K: scales[16], qs[64], d, dmin (84 B); activation Q8_K. ----
 * Part p = 2h + t reads qs[32h + 16t .. +15]; shift 2s of those bytes are
 * the codes of sub-block j = 8h + 2s + t (model-spec §3). */
struct fmt_q2_K {
    enum { block_elems = 256, block_bytes = 84, G = 4, act_kind = DS4_ACT_Q8_K, needs_tab = 0, has_summ = 1,
           act_halves = 0 };
    static constexpr float final_scale = 1.0f;
    /* the 16 codes at shift sh of four qs words against 16 activation codes */
    DS4_HD static int32_t codes_dot(const uint32_t q[4], int sh, uint4 x) {
        int32_t d = fs_dp4a((q[0] >> sh) & 0x03030303u, x.x, 0);
        d = fs_dp4a((q[1] >> sh) & 0x03030303u, x.y, d);
        d = fs_dp4a((q[2] >> sh) & 0x03030303u, x.z, d);
        return fs_dp4a((q[3] >> sh) & 0x03030303u, x.w, d);
    }
    template <int NR>
    DS4_HD static void unit(const uint8_t *b, uint32_t stride, int part, const act_view &a, uint32_t ab,
                            const uint32_t *tab, int copy, int32_t *isum, int32_t *summ) {
        int h = part >> 1, t = part & 1;
        const int8_t *xq = a.q + 256 * ab;
        const int16_t *bs = a.bsums + 16 * ab;
        /* Step i handles shift s = (i + rot) & 3: the 8 lanes of a load
         * (two blocks x four parts) then read 8 different bank groups. */
        const int rot = 2 * (int)(ab & 1) + h;
        uint4 x[4];
        int bsum[4], j[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            j[i] = 8 * h + 2 * ((i + rot) & 3) + t;
            x[i] = *(const uint4 *)(xq + 16 * j[i]);
            bsum[i] = bs[j[i]];
        }
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const uint8_t *br = b + r * stride;
            const uint32_t *qw = (const uint32_t *)(br + 16 + 32 * h + 16 * t);
            uint32_t q[4] = {qw[0], qw[1], qw[2], qw[3]};
            int32_t is = 0, sm = 0;
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int32_t d = codes_dot(q, 2 * ((i + rot) & 3), x[i]);
                uint8_t sc = br[j[i]];
                is += (sc & 15) * d;
                sm += (sc >> 4) * bsum[i];
            }
            isum[r] = is;
            summ[r] = sm;
        }
    }
    DS4_HD static float term(const uint8_t *b, const act_view &a, uint32_t ab, int32_t isum, int32_t summ) {
        float dall = fs_mul(a.d[ab], fs_h2f(fs_ld16(b + 80)));
        float dmin = fs_mul(a.d[ab], fs_h2f(fs_ld16(b + 82)));
        return fs_sub(fs_mul(dall, (float)isum), fs_mul(dmin, (float)summ));
    }
    /* A whole block by one lane (the routed down's block mode): the four
     * parts' sums, then the term. Each part takes its shifts in the order
     * rot, rot + 1, ... (mod 4): lanes of one quarter warp with different
     * rot read different 16-byte groups of their activation blocks. */
    DS4_HD static float block_dot(const uint8_t *b, const act_view &a, uint32_t ab, int rot) {
        const int8_t *xq = a.q + 256 * ab;
        const int16_t *bs = a.bsums + 16 * ab;
        int32_t is = 0, sm = 0;
#pragma unroll
        for (int part = 0; part < 4; part++) {
            const int h = part >> 1, t = part & 1;
            const uint32_t *qw = (const uint32_t *)(b + 16 + 32 * h + 16 * t);
            const uint32_t q[4] = {qw[0], qw[1], qw[2], qw[3]};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                const int s = (i + rot) & 3, j = 8 * h + 2 * s + t, sh = 2 * s;
                const uint4 x = *(const uint4 *)(xq + 16 * j); /* one 16-byte load */
                const int32_t d = codes_dot(q, sh, x);
                const uint8_t sc = b[j];
                is += (sc & 15) * d;
                sm += (sc >> 4) * bs[j];
            }
        }
        return term(b, a, ab, is, sm);
    }
};

/* ---- Q4_K: d, dmin, scales[12], qs[128] (144 B); activation Q8_K. ----
 * Part c reads qs[16c .. 16c+15]: low nibbles are values 16(c&1).. of
 * sub-block 2(c>>1), high nibbles the same values of sub-block 2(c>>1)+1. */
struct fmt_q4_K {
    enum { block_elems = 256, block_bytes = 144, G = 8, act_kind = DS4_ACT_Q8_K, needs_tab = 0, has_summ = 1,
           act_halves = 0 };
    static constexpr float final_scale = 1.0f;
    /* 16 qs bytes: low nibbles against xl, high nibbles against xh (by value:
     * the callers' 16-byte loads stay single loads) */
    DS4_HD static void nibbles_dot(uint4 q, uint4 xl, uint4 xh, int32_t &lo, int32_t &hi) {
        lo = fs_dp4a(q.x & 0x0f0f0f0fu, xl.x, lo);
        lo = fs_dp4a(q.y & 0x0f0f0f0fu, xl.y, lo);
        lo = fs_dp4a(q.z & 0x0f0f0f0fu, xl.z, lo);
        lo = fs_dp4a(q.w & 0x0f0f0f0fu, xl.w, lo);
        hi = fs_dp4a((q.x >> 4) & 0x0f0f0f0fu, xh.x, hi);
        hi = fs_dp4a((q.y >> 4) & 0x0f0f0f0fu, xh.y, hi);
        hi = fs_dp4a((q.z >> 4) & 0x0f0f0f0fu, xh.z, hi);
        hi = fs_dp4a((q.w >> 4) & 0x0f0f0f0fu, xh.w, hi);
    }
    /* Scale and min of sub-block j (6 bits each in scales[12]); LOW: j < 4. */
    template <bool LOW>
    DS4_HD static void scale_min_at(const uint8_t *s, int j, int &sc, int &m) {
        if (LOW) {
            sc = s[j] & 63;
            m = s[j + 4] & 63;
        } else {
            sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
            m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
    }
    DS4_HD static void scale_min(const uint8_t *s, int j, int &sc, int &m) {
        if (j < 4) scale_min_at<true>(s, j, sc, m);
        else scale_min_at<false>(s, j, sc, m);
    }
    template <int NR>
    DS4_HD static void unit(const uint8_t *b, uint32_t stride, int part, const act_view &a, uint32_t ab,
                            const uint32_t *tab, int copy, int32_t *isum, int32_t *summ) {
        int p = part >> 1, h = part & 1;
        const int8_t *xq = a.q + 256 * ab + 64 * p + 16 * h;
        uint4 x0 = *(const uint4 *)xq, x1 = *(const uint4 *)(xq + 32);
        const int16_t *bs = a.bsums + 16 * ab + 4 * p;
        int bs01 = bs[0] + bs[1], bs23 = bs[2] + bs[3];
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const uint8_t *br = b + r * stride;
            const uint4 q = *(const uint4 *)(br + 16 + 16 * part);
            int32_t lo = 0, hi = 0;
            nibbles_dot(q, x0, x1, lo, hi);
            int sc0, m0, sc1, m1;
            scale_min(br + 4, 2 * p, sc0, m0);
            scale_min(br + 4, 2 * p + 1, sc1, m1);
            isum[r] = sc0 * lo + sc1 * hi;
            summ[r] = h ? 0 : m0 * bs01 + m1 * bs23;
        }
    }
    DS4_HD static float term(const uint8_t *b, const act_view &a, uint32_t ab, int32_t isum, int32_t summ) {
        float dall = fs_mul(a.d[ab], fs_h2f(fs_ld16(b)));
        float dmin = fs_mul(a.d[ab], fs_h2f(fs_ld16(b + 2)));
        return fs_sub(fs_mul(dall, (float)isum), fs_mul(dmin, (float)summ));
    }
    /* A whole block by one lane (the routed down's block mode): the 32-byte
     * groups of qs in the order rot&1 ^ 0, 1, 2, 3 — lanes of one quarter
     * warp with different rot read different 16-byte groups of their
     * activation blocks, and group c < 2 exactly when step i < 2, so
     * scale_min's form stays known at compile time. */
    DS4_HD static float block_dot(const uint8_t *b, const act_view &a, uint32_t ab, int rot) {
        const int8_t *xq = a.q + 256 * ab;
        const int16_t *bs = a.bsums + 16 * ab;
        int32_t is = 0, sm = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int c = i ^ (rot & 1);
            const uint4 *qw = (const uint4 *)(b + 16 + 32 * c);
            const uint4 *xw = (const uint4 *)(xq + 64 * c);
            int32_t lo = 0, hi = 0;
#pragma unroll
            for (int hh = 0; hh < 2; hh++) {
                const uint4 q = qw[hh], xl = xw[hh], xh = xw[2 + hh];
                nibbles_dot(q, xl, xh, lo, hi);
            }
            const uint8_t *s = b + 4;
            const int j = 2 * c;
            int sc0, m0, sc1, m1;
            if (i < 2) scale_min_at<true>(s, j, sc0, m0), scale_min_at<true>(s, j + 1, sc1, m1);
            else scale_min_at<false>(s, j, sc0, m0), scale_min_at<false>(s, j + 1, sc1, m1);
            is += sc0 * lo + sc1 * hi;
            sm += m0 * (bs[4 * c] + bs[4 * c + 1]) + m1 * (bs[4 * c + 2] + bs[4 * c + 3]);
        }
        return term(b, a, ab, is, sm);
    }
};

/* ---- IQ2_XXS: d f16, 8 sub-blocks of (A, B) u32 (66 B); Q8_K. ----
 * Sub-block sb: byte k of A picks grid point k, bits 7k.. of B its signs,
 * B>>28 the sub-block scale; the nibble tables turn them into signed bytes.
 * G lanes per block, each adding the integer sums of SUB = 8/G neighbouring
 * sub-blocks before the group's xor-shuffles: G = 8 (fmt_iq2_xxs) one
 * sub-block a lane; G = 4, 2 shuffle rounds per 64 values instead of 3 per
 * 32; G = 2 one round per 128 values (a 4096-wide row is one step of the
 * warp). The integer sum of each block stays exact, so every G gives the
 * same terms bit for bit. Lane order: the sub-blocks are walked in a
 * per-lane rotated order so that the 8 lanes of a 16-byte activation load
 * read at most 2 lanes per bank group, instead of 4 (G=4) or 8 (G=2) in the
 * natural order; with the halves layout (act_halves_word) one each for G = 8
 * and 2 (ncu: the gate/up's activation loads took 8 wavefronts each, 4
 * ideal; step +0.6% at 4k, ahead in 4 of 4 rounds, +0.8% at 64k). G = 4 and
 * 2 are chosen at run time (cuda_kernels.cu iq2_gate_up_variant,
 * DS4_CUDA_IQ2V). */
template <int GG, bool HALVES = true>
struct fmt_iq2_xxs_g {
    /* HALVES: the activation in act_halves_word's layout (the kernels that
     * stage it in shared memory), else in the natural one (cuda_mmq.cu's
     * plain kernel reads the global copy) */
    enum { block_elems = 256, block_bytes = 66, G = GG, act_kind = DS4_ACT_Q8_K, needs_tab = 1, has_summ = 0,
           act_halves = HALVES };
    enum { SUB = 8 / GG };
    static constexpr float final_scale = 0.125f;
    /* Table lookups by byte offset: word w of copy c sits at w·128 + 4c
     * (32 copies: lane l reads copy l, so its lookups always hit bank l),
     * so a code's offset is its bits shifted into place, masked and or-ed
     * with the lane's 4c — two operations a lookup. */
    static_assert(DS4_CUDA_IQ2_COPIES == 32, "IQ2_XXS lookups assume 32 table copies (128-byte rows)");
    DS4_HD static uint32_t tab_at(const uint8_t *t, uint32_t off) { return *(const uint32_t *)(t + off); }
    template <int NR>
    DS4_HD static void unit(const uint8_t *b, uint32_t stride, int part, const act_view &a, uint32_t ab,
                            const uint32_t *tab, int copy, int32_t *isum, int32_t *summ) {
        const uint8_t *grid = (const uint8_t *)tab, *sign = grid + 256 * 128;
        const uint32_t c4 = 4u * (uint32_t)copy, vlo = fs_in_register(DS4_IQ2_VALUES_LO);
        /* G = 4: lanes p and p + 2 of a block start on different halves;
         * G = 2: the 4 blocks of a quarter warp start on different quarters. */
        const int rot = GG == 4 ? (part >> 1) : GG == 2 ? (int)(ab & 3) : 0;
        /* this part's SUB sub-blocks of row r: 8·SUB bytes from byte 2 + 8·SUB·part,
         * read as aligned words shifted by sh (the same for every sub-block) */
        const uint32_t *w[NR];
        uint32_t sh = 0;
#pragma unroll
        for (int r = 0; r < NR; r++) {
            const uint8_t *p = b + r * stride + 2 + 8 * SUB * part;
            const uint32_t lo = (uint32_t)(uintptr_t)p & 3;
            w[r] = (const uint32_t *)(p - lo); /* derived from b: shared-memory loads, not generic */
            sh = lo * 8;
        }
#pragma unroll
        for (int r = 0; r < NR; r++) isum[r] = summ[r] = 0;
#pragma unroll
        for (int j = 0; j < SUB; j++) {
            const int sl = (j + rot) & (SUB - 1), sb = SUB * part + sl;
            const int8_t *xq = a.q + 256 * ab + (HALVES ? 16 : 32) * sb;
            uint4 x0 = *(const uint4 *)xq, x1 = *(const uint4 *)(xq + (HALVES ? 128 : 16));
            uint32_t xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
            for (int r = 0; r < NR; r++) {
                const uint32_t *ws = w[r] + 2 * sl;
                uint32_t w0 = ws[0], w1 = ws[1], w2 = ws[2];
                uint32_t A = fs_funnel(w0, w1, sh), B = fs_funnel(w1, w2, sh);
                int32_t s = 0;
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    uint32_t go = ((k ? A >> (8 * k - 7) : A << 7) & (255u << 7)) | c4;
                    uint32_t so = ((k ? B >> (7 * k - 7) : B << 7) & (127u << 7)) | c4;
                    uint32_t sel = tab_at(grid, go) + tab_at(sign, so);
                    s = fs_dp4a(fs_perm(vlo, DS4_IQ2_VALUES_HI, sel), xs[2 * k], s);
                    s = fs_dp4a(fs_perm(vlo, DS4_IQ2_VALUES_HI, sel >> 16), xs[2 * k + 1], s);
                }
                isum[r] += (int32_t)(2 * (B >> 28) + 1) * s;
            }
        }
    }
    DS4_HD static float term(const uint8_t *b, const act_view &a, uint32_t ab, int32_t isum, int32_t summ) {
        return fs_mul(fs_mul(fs_h2f(fs_ld16(b)), a.d[ab]), (float)isum);
    }
};
typedef fmt_iq2_xxs_g<8> fmt_iq2_xxs;
typedef fmt_iq2_xxs_g<4> fmt_iq2_xxs4;
typedef fmt_iq2_xxs_g<2> fmt_iq2_xxs2;
typedef fmt_iq2_xxs_g<8, false> fmt_iq2_xxs_natural;

/* The compact IQ2_XXS nibble tables (DS4_CUDA_IQ2_TABLE_WORDS words) from
 * src/quant's grid and signs; false if a grid byte is not 8, 25 or 43. */
static inline bool ds4_cuda_iq2_tables(uint32_t *out) {
    for (int g = 0; g < 256; g++) {
        uint32_t w = 0;
        for (int j = 0; j < 8; j++) {
            uint32_t v = (uint32_t)(ds4_iq2xxs_grid[g] >> (8 * j)) & 255;
            uint32_t code = v == 8 ? 0 : v == 25 ? 1 : v == 43 ? 2 : 15;
            if (code == 15) return false;
            w |= code << (4 * j);
        }
        out[g] = w;
    }
    for (int s = 0; s < 128; s++) {
        uint32_t w = 0;
        for (int j = 0; j < 8; j++)
            if ((ds4_iq2xxs_sign_masks[s] >> (8 * j)) & 1) w |= 3u << (4 * j);
        out[256 + s] = w;
    }
    return true;
}

/* The compact tables as the kernels hold them in shared memory: word w
 * of copy c at [w * DS4_CUDA_IQ2_COPIES + c] (DS4_CUDA_IQ2_TABLE_WORDS *
 * DS4_CUDA_IQ2_COPIES words), so that a block copies them in 16-byte
 * pieces. */
static inline void ds4_cuda_iq2_replicate(const uint32_t *compact, uint32_t *out) {
    for (int i = 0; i < DS4_CUDA_IQ2_TABLE_WORDS * DS4_CUDA_IQ2_COPIES; i++) out[i] = compact[i / DS4_CUDA_IQ2_COPIES];
}

/* ds4_cuda_iq2_tables, replicated. */
static inline bool ds4_cuda_iq2_tables_replicated(uint32_t *out) {
    uint32_t compact[DS4_CUDA_IQ2_TABLE_WORDS];
    if (!ds4_cuda_iq2_tables(compact)) return false;
    ds4_cuda_iq2_replicate(compact, out);
    return true;
}

/* silu(min(g, c)) · clamp(u, ±c) · w with moe.c's operations, each
 * product rounded on its own (no contraction whatever the build flags). */
static __device__ __forceinline__ float ds4_swiglu(float g, float u, float clamp, float w) {
    if (clamp > 0.0f) {
        g = fminf(g, clamp);
        u = fminf(fmaxf(u, -clamp), clamp);
    }
    float s;
    if (g >= 0.0f) {
        s = 1.0f / (1.0f + expf(-g));
    } else {
        float e = expf(g);
        s = e / (1.0f + e);
    }
    return __fmul_rn(__fmul_rn(__fmul_rn(g, s), u), w);
}

/* ds4_round_clamp: nearest, ties to even; NaN -> 0; clamped. */
static __device__ __forceinline__ int round_clamp(float v, int lo, int hi) {
    if (!(v == v)) v = 0.0f;
    if (v <= (float)lo) return lo;
    if (v >= (float)hi) return hi;
    return __float2int_rn(v);
}

/* Q8_0 of one 32-value block by a warp, lane i holding value i (as
 * quant_rows.c: d = amax/127, codes round(v·(1/d))): lane i's code, and
 * the block's d in *d. */
static __device__ __forceinline__ int warp_q8_0_code(float v, float *d) {
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    *d = amax / 127.0f;
    float id = *d != 0.0f ? 1.0f / *d : 0.0f;
    return round_clamp(__fmul_rn(v, id), -128, 127);
}

/* The same Q8_0 block held by four consecutive lanes 4k..4k+3, eight values
 * each (lane 4k+j: values 8j..8j+7), for bandwidth-bound conversions: the
 * d and codes of warp_q8_0_code (the same maximum, division and rounding),
 * each d·q rounded to f16 into h. Every lane of the warp must call it. */
static __device__ __forceinline__ void quad_q8_0_f16(const float v[8], __half2 h[4]) {
    float amax = fabsf(v[0]);
#pragma unroll
    for (int j = 1; j < 8; j++) amax = fmaxf(amax, fabsf(v[j]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
#pragma unroll
    for (int j = 0; j < 4; j++)
        h[j] = __floats2half2_rn(__fmul_rn(d, (float)round_clamp(__fmul_rn(v[2 * j], id), -128, 127)),
                                 __fmul_rn(d, (float)round_clamp(__fmul_rn(v[2 * j + 1], id), -128, 127)));
}

/* The same block as the 36-byte block of the quantised activation (f32 d,
 * then the 32 codes) at blk. */
static __device__ __forceinline__ void warp_q8_0_block(float v, uint8_t *blk, int lane) {
    float d;
    blk[4 + lane] = (uint8_t)(int8_t)warp_q8_0_code(v, &d);
    if (lane == 0) *(float *)blk = d;
}

/* Q8_K of one 256-value block over a warp, lane l holding values 8l..8l+7:
 * the first value of largest magnitude sets iscale = -127/max; the codes
 * round(iscale·v) packed four to a word into w, their sum into *sum8.
 * Returns d = 1/iscale (0 and zero codes for an all-zero block). */
static __device__ __forceinline__ float q8_K_warp(const float v[8], int lane, uint32_t w[2], int *sum8) {
    float amax = 0.0f, mx = 0.0f;
    int idx = 1 << 30;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        float ax = fabsf(v[j]);
        if (ax > amax) {
            amax = ax;
            mx = v[j];
            idx = 8 * lane + j;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        float oa = __shfl_xor_sync(0xffffffffu, amax, o), om = __shfl_xor_sync(0xffffffffu, mx, o);
        int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (oa > amax || (oa == amax && oi < idx)) {
            amax = oa;
            mx = om;
            idx = oi;
        }
    }
    w[0] = w[1] = 0;
    *sum8 = 0;
    if (amax == 0.0f) return 0.0f;
    float iscale = -127.0f / mx;
    int sum = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        int q = round_clamp(__fmul_rn(iscale, v[j]), -128, 127);
        sum += q;
        w[j / 4] |= (uint32_t)(uint8_t)(int8_t)q << (8 * (j % 4));
    }
    *sum8 = sum;
    return 1.0f / iscale;
}

/* q8_K_warp of block b of x (256 values, 16-byte aligned): lane l loads
 * values 8l..8l+7. */
static __device__ __forceinline__ float q8_K_warp_at(const float *x, uint32_t b, int lane, uint32_t w[2], int *sum8) {
    const float4 *src = (const float4 *)(x + 256 * (size_t)b + 8 * lane);
    const float4 p0 = src[0], p1 = src[1];
    const float v[8] = {p0.x, p0.y, p0.z, p0.w, p1.x, p1.y, p1.z, p1.w};
    return q8_K_warp(v, lane, w, sum8);
}

/* Block b of x (256 values) as the 292-byte block of the quantised
 * activation (f32 d, 256 codes, 16 sums of 16) at y + 292·b, by a warp. */
static __device__ __forceinline__ void warp_q8_K_block(const float *x, uint8_t *y, uint32_t b, int lane) {
    uint32_t w[2];
    int sum;
    const float d = q8_K_warp_at(x, b, lane, w, &sum);
    uint8_t *blk = y + 292 * (size_t)b;
    *(uint32_t *)(blk + 4 + 8 * lane) = w[0]; /* 4-byte aligned only */
    *(uint32_t *)(blk + 8 + 8 * lane) = w[1];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    if ((lane & 1) == 0) *(int16_t *)(blk + 260 + lane) = (int16_t)sum;
    if (lane == 0) *(float *)blk = d;
}

#endif
