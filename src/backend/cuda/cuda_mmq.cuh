/* cuda_mmq.cuh — the batched products' weight decoding and block terms,
 * written once for the tensor-core kernels (cuda_mmq.cu) and for a host
 * emulation of them (ds4-cuda-bench --host-check).
 *
 * The tensor-core kernels multiply int8 tiles: a weight tile of BM rows x
 * 256 elements (one K step) is decoded to int8 codes in shared memory, the
 * activation codes are already int8, and mma.sync m16n8k32 gives the exact
 * integer dot of each 32-element segment. What a format adds on top:
 *
 *   Q8_0    codes as stored; per segment (= block) the f32 term
 *           (d_w * d_a) * isum, as ds4_dot_q8_0.
 *   Q2_K    code (0..3) x its 4-bit sub-block scale (<= 45, still int8), so
 *           the mma sums isum of a whole 256 block directly; the min term
 *           summ = sum_j m_j * bsum_j comes from a second, tiny product:
 *           the 16 mins (int8) against the 16 bsums of the activation block,
 *           each bsum split exactly as 64 * hi + lo (hi in -32..31, lo in
 *           0..63, both int8; two m16n8k16 mma's), summ = 64 * S_hi + S_lo.
 *   Q4_K    4-bit codes; the 6-bit scale does not fit the int8 product, so
 *           each segment's dot is scaled in int32 (isum += sc * dot); mins
 *           as for Q2_K with each 32-element min repeated for both of its
 *           16-element bsums.
 *   IQ2_XXS signed grid values (+-8, 25, 43) via the nibble tables of
 *           cuda_formats.cuh; isum += (2 * ls + 1) * dot per segment; the
 *           sum of terms is scaled by 1/8 at the end, as on the CPU.
 * Integer sums are exact whatever their order, and every f32 operation is
 * the CPU's (quant_dot.c), so the host emulation summing blocks in order
 * equals ds4_dot bit for bit; the GPU only sums the block terms of a row in
 * the same order too (one thread owns an output), so GPU and CPU agree
 * exactly unless the f32 ops are contracted (they are written with
 * __fmul_rn / __fsub_rn).
 *
 * Decode tasks: per K step a row is decoded by TPR tasks; a task first
 * loads its raw words (load: global loads only, issued early) and later
 * decodes them (decode: into 32-byte segments + scale metadata). Loads
 * are aligned words that never extend past the block's last byte (a
 * weight block can end an allocation and its mapped memory).
 *
 * Activation layout (ds4_cuda_mmq_act_bytes): for n = n_tok * in values,
 * int8 codes [n] (token t at t * in), f32 scales [n / 32] (Q8_0) or
 * [n / 256] (Q8_K), and for Q8_K the int16 bsums [n / 16] and the split
 * bsums: per 256 block 16 bytes lo then 16 bytes hi. Regions start 16-byte
 * aligned. */
#ifndef DS4_CUDA_MMQ_CUH
#define DS4_CUDA_MMQ_CUH

#include <string.h>

#include "cuda_formats.cuh"

/* Byte offsets of the activation regions. */
typedef struct mq_act_layout {
    size_t q, d, bs, split, bytes;
} mq_act_layout;

DS4_HD size_t mq_round16(size_t x) { return (x + 15) & ~(size_t)15; }

DS4_HD mq_act_layout mq_layout(int kind, size_t n) {
    mq_act_layout l = {0, 0, 0, 0, 0};
    l.d = mq_round16(n);
    if (kind == DS4_ACT_Q8_0) {
        l.bytes = l.d + mq_round16(4 * (n / 32));
    } else {
        size_t nb = n / 256;
        l.bs = l.d + mq_round16(4 * nb);
        l.split = l.bs + mq_round16(2 * (n / 16));
        l.bytes = l.split + 32 * nb;
    }
    return l;
}

/* Funnel shift right with the count clamped to 32 (32 gives hi). */
DS4_HD uint32_t mq_funnel(uint32_t lo, uint32_t hi, uint32_t sh) {
#ifdef __CUDA_ARCH__
    return __funnelshift_rc(lo, hi, sh);
#else
    return sh >= 32 ? hi : sh ? (lo >> sh) | (hi << (32 - sh)) : lo;
#endif
}

DS4_HD uint32_t mq_ld32(const uint8_t *p) { return *(const uint32_t *)p; }
DS4_HD uint32_t mq_ld16(const uint8_t *p) { return *(const uint16_t *)p; }

/* Decoded metadata of one task (what it writes besides codes). */
struct mq_meta {
    float d[2];        /* Q8_0: block scale; K-quants/IQ2: d, dmin (task 0 only) */
    uint8_t sc[2];     /* per-segment int scales (IQ2_XXS, Q4_K) */
    uint8_t mins[8];   /* Q2_K: 8 sub-block mins; Q4_K: 4 (2 per segment, repeated) */
};

/* Block terms, the CPU's f32 operations. */
DS4_HD float mq_term_plain(float dw, float da, int32_t isum) { return fs_mul(fs_mul(dw, da), (float)isum); }

/* K-quant terms (a 256 block): (da * d) * isum - (da * dmin) * summ. */
DS4_HD float mq_term_k(float dw, float dmw, float da, int32_t isum, int32_t summ) {
    return fs_sub(fs_mul(fs_mul(da, dw), (float)isum), fs_mul(fs_mul(da, dmw), (float)summ));
}

/* Q8_0's integer block sum as a float without an int-to-float conversion:
 * the mma adds MQ_FB_BIAS to the sum (its accumulator input), which makes
 * the bits of the float 1.5 * 2^23 + isum for |isum| < 2^22 (a Q8_0
 * block's sum is at most 32 * 128 * 127 in magnitude); subtracting 1.5 *
 * 2^23 is exact. */
#define MQ_FB_BIAS 0x4B400000
DS4_HD float mq_fb_float(int32_t biased) {
#ifdef __CUDA_ARCH__
    return fs_sub(__int_as_float(biased), 12582912.0f);
#else
    float f;
    memcpy(&f, &biased, sizeof f);
    return fs_sub(f, 12582912.0f);
#endif
}

/* The routed MoE's tiles of an expert with c pairs (k_plan): big = 0: nb
 * = 0 tiles of 128 slots and ns = ceil(c / 64) of 64. big = 1: one 128
 * tile per full 128 pairs and for the rest r one more, of 128 slots if r >
 * 64, else (0 < r <= 64) of 64. Either way fewer than 64 slots go unused,
 * and with big = 1 every 128 tile holds more than 64 pairs. */
DS4_HD void mq_moe_tiles(int c, int big, int *nb, int *ns) {
    int r = c % 128;
    *nb = big ? c / 128 + (r > 64) : 0;
    *ns = big ? (r > 0 && r <= 64) : (c + 63) / 64;
}

/* ---- Q8_0: task s = block s of the K step (8 blocks of 32). ---- */
struct mq_q8_0 {
    enum { TPR = 8, SEGS = 1, act_kind = DS4_ACT_Q8_0, has_min = 0, int_scale = 0, folded = 0, needs_tab = 0 };
    static constexpr float final_scale = 1.0f;
    DS4_HD static float term(float dw, float dmw, float da, int32_t isum, int32_t summ) {
        return mq_term_plain(dw, da, isum);
    }
    struct raw {
        uint32_t w[9];
        uint32_t sh;
    };
    /* row: the weight row; kb: K step; s: task. */
    DS4_HD static void load(const uint8_t *row, uint32_t kb, int s, raw &r) {
        uintptr_t addr = (uintptr_t)(row + (size_t)(kb * 8 + s) * 34);
        const uint8_t *base = (const uint8_t *)(addr & ~(uintptr_t)3);
        r.sh = (uint32_t)(addr & 3) * 8;
#pragma unroll
        for (int i = 0; i < 8; i++) r.w[i] = mq_ld32(base + 4 * i);
        /* The block ends at base + 34 when sh = 0: never read past it
         * (the last block of an allocation may end a mapped page). */
        r.w[8] = r.sh ? mq_ld32(base + 32) : mq_ld16(base + 32);
    }
    DS4_HD static void decode(const raw &r, int s, const uint32_t *tab, uint32_t *codes, mq_meta &m) {
#pragma unroll
        for (int i = 0; i < 8; i++) codes[i] = mq_funnel(r.w[i], r.w[i + 1], r.sh + 16);
        m.d[0] = fs_h2f((uint16_t)(r.w[0] >> r.sh));
    }
};

/* ---- IQ2_XXS (66 B): task s = sub-block s (8 bytes at 2 + 8s). ---- */
struct mq_iq2_xxs {
    enum { TPR = 8, SEGS = 1, act_kind = DS4_ACT_Q8_K, has_min = 0, int_scale = 1, folded = 0, needs_tab = 1 };
    static constexpr float final_scale = 0.125f;
    DS4_HD static float term(float dw, float dmw, float da, int32_t isum, int32_t summ) {
        return mq_term_plain(dw, da, isum);
    }
    struct raw {
        uint32_t w[3], dw;
        uint32_t sh, dsh;
    };
    DS4_HD static void load(const uint8_t *row, uint32_t kb, int s, raw &r) {
        uintptr_t blk = (uintptr_t)(row + (size_t)kb * 66), addr = blk + 2 + 8 * s;
        const uint8_t *base = (const uint8_t *)(addr & ~(uintptr_t)3);
        r.sh = (uint32_t)(addr & 3) * 8;
        r.w[0] = mq_ld32(base);
        r.w[1] = mq_ld32(base + 4);
        /* Only w[2]'s low half is used, and only when sh = 16: no read past
         * the block. */
        r.w[2] = r.sh ? mq_ld16(base + 8) : 0;
        r.dsh = (uint32_t)(blk & 3) * 8;
        r.dw = s == 0 ? mq_ld32((const uint8_t *)(blk & ~(uintptr_t)3)) : 0;
    }
    DS4_HD static void decode(const raw &r, int s, const uint32_t *tab, uint32_t *codes, mq_meta &m) {
        uint32_t A = mq_funnel(r.w[0], r.w[1], r.sh), B = mq_funnel(r.w[1], r.w[2], r.sh);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            uint32_t sel = tab[(A >> (8 * k)) & 255] + tab[256 + ((B >> (7 * k)) & 127)];
            codes[2 * k] = fs_perm(DS4_IQ2_VALUES_LO, DS4_IQ2_VALUES_HI, sel);
            codes[2 * k + 1] = fs_perm(DS4_IQ2_VALUES_LO, DS4_IQ2_VALUES_HI, sel >> 16);
        }
        m.sc[0] = (uint8_t)(2 * (B >> 28) + 1);
        m.d[0] = fs_h2f((uint16_t)(r.dw >> r.dsh));
    }
};

/* ---- Q4_K (144 B): task p = qs[32p..32p+31]: segments 2p (low
 * nibbles) and 2p+1 (high nibbles). ---- */
struct mq_q4_K {
    enum { TPR = 4, SEGS = 2, act_kind = DS4_ACT_Q8_K, has_min = 1, int_scale = 1, folded = 0, needs_tab = 0 };
    static constexpr float final_scale = 1.0f;
    DS4_HD static float term(float dw, float dmw, float da, int32_t isum, int32_t summ) {
        return mq_term_k(dw, dmw, da, isum, summ);
    }
    struct raw {
        uint32_t q[8], s[3], dd;
    };
    DS4_HD static void load(const uint8_t *row, uint32_t kb, int p, raw &r) {
        const uint8_t *blk = row + (size_t)kb * 144;
#ifdef __CUDA_ARCH__
        uint4 a = *(const uint4 *)(blk + 16 + 32 * p), b = *(const uint4 *)(blk + 32 + 32 * p);
        r.q[0] = a.x, r.q[1] = a.y, r.q[2] = a.z, r.q[3] = a.w, r.q[4] = b.x, r.q[5] = b.y, r.q[6] = b.z, r.q[7] = b.w;
#else
        for (int i = 0; i < 8; i++) r.q[i] = mq_ld32(blk + 16 + 32 * p + 4 * i);
#endif
        for (int i = 0; i < 3; i++) r.s[i] = mq_ld32(blk + 4 + 4 * i);
        r.dd = mq_ld32(blk);
    }
    DS4_HD static void decode(const raw &r, int p, const uint32_t *tab, uint32_t *codes, mq_meta &m) {
#pragma unroll
        for (int i = 0; i < 8; i++) {
            codes[i] = r.q[i] & 0x0f0f0f0fu;
            codes[8 + i] = (r.q[i] >> 4) & 0x0f0f0f0fu;
        }
        uint8_t sb[12];
        for (int i = 0; i < 12; i++) sb[i] = (uint8_t)(r.s[i / 4] >> (8 * (i % 4)));
        for (int h = 0; h < 2; h++) {
            int sc, mn;
            fmt_q4_K::scale_min(sb, 2 * p + h, sc, mn);
            m.sc[h] = (uint8_t)sc;
            m.mins[2 * h] = m.mins[2 * h + 1] = (uint8_t)mn;
        }
        m.d[0] = fs_h2f((uint16_t)r.dd);
        m.d[1] = fs_h2f((uint16_t)(r.dd >> 16));
    }
};

/* ---- Q2_K (84 B): task h = qs[32h..32h+31]: segments 4h+i (shift
 * 2i), sub-blocks 8h+2i (first 16 bytes) and 8h+2i+1; codes scaled. ---- */
struct mq_q2_K {
    enum { TPR = 2, SEGS = 4, act_kind = DS4_ACT_Q8_K, has_min = 1, int_scale = 0, folded = 1, needs_tab = 0 };
    static constexpr float final_scale = 1.0f;
    DS4_HD static float term(float dw, float dmw, float da, int32_t isum, int32_t summ) {
        return mq_term_k(dw, dmw, da, isum, summ);
    }
    struct raw {
        uint32_t q[8], s[2], dd;
    };
    DS4_HD static void load(const uint8_t *row, uint32_t kb, int h, raw &r) {
        const uint8_t *blk = row + (size_t)kb * 84;
#pragma unroll
        for (int i = 0; i < 8; i++) r.q[i] = mq_ld32(blk + 16 + 32 * h + 4 * i);
        r.s[0] = mq_ld32(blk + 8 * h);
        r.s[1] = mq_ld32(blk + 8 * h + 4);
        r.dd = mq_ld32(blk + 80);
    }
    DS4_HD static void decode(const raw &r, int h, const uint32_t *tab, uint32_t *codes, mq_meta &m) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint32_t sc0 = (r.s[i / 2] >> (16 * (i & 1))) & 15, sc1 = (r.s[i / 2] >> (16 * (i & 1) + 8)) & 15;
#pragma unroll
            for (int w = 0; w < 8; w++) codes[8 * i + w] = ((r.q[w] >> (2 * i)) & 0x03030303u) * (w < 4 ? sc0 : sc1);
        }
        for (int j = 0; j < 8; j++) m.mins[j] = (uint8_t)((r.s[j / 4] >> (8 * (j % 4) + 4)) & 15);
        m.d[0] = fs_h2f((uint16_t)r.dd);
        m.d[1] = fs_h2f((uint16_t)(r.dd >> 16));
    }
};

#endif
