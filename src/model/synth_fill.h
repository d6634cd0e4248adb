/* synth_fill.h — the counter-based generator of synthetic weight data,
 * shared by the host (synth.c) and the CUDA backend, which generates the
 * large tensors of a synthetic model directly in device memory.
 *
 * A tensor's data is a sequence of 64-bit little-endian words; word w is a
 * pure function of the tensor's ds4_synth_fill and w (splitmix64's mixer
 * of seed + (w + 1)·golden ratio), so any thread, on either side, makes any
 * word alone and host and device produce the same bytes:
 *  - quantised types (Q8_0, Q2_K, Q4_K, IQ2_XXS): random bytes, with each
 *    block's f16 scale fields (d, and dmin for the K-quants) set to the
 *    tensor's calibrated values (synth.c measures them; every bit pattern of
 *    the other bytes is a valid block, model-spec §14);
 *  - F16 / F32: element i is mean + std·u, u uniform on [-sqrt 3, sqrt 3)
 *    from the hash of i (24 bits). The sum is formed in double from an
 *    exact product, so a fused multiply-add gives the same result, and the
 *    f16 rounding is done here (to nearest even), not by the platform.
 * The last word of a tensor whose size is not a multiple of 8 is cut. */
#ifndef DS4_SYNTH_FILL_H
#define DS4_SYNTH_FILL_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define DS4_SYNTH_FN static inline __host__ __device__
#else
#define DS4_SYNTH_FN static inline
#endif

/* The type codes of src/quant/quant.h (GGUF's), restated so this header
 * needs nothing else. */
enum {
    DS4_SYNTH_F32 = 0, DS4_SYNTH_F16 = 1, DS4_SYNTH_Q8_0 = 8, DS4_SYNTH_Q2_K = 10, DS4_SYNTH_Q4_K = 12,
    DS4_SYNTH_IQ2_XXS = 16
};

/* One generated tensor: where its data lies in the model image and how to
 * make it. */
typedef struct ds4_synth_fill {
    uint64_t offset, nbytes; /* the data's bytes from the image's start */
    uint64_t seed;           /* the tensor's own seed */
    uint32_t type;           /* DS4_SYNTH_* */
    float mean, scale;       /* F16/F32: value = mean + scale·t, t integer in [-2^23, 2^23) */
    uint16_t d, dmin;        /* quantised: the f16 block scales */
} ds4_synth_fill;

DS4_SYNTH_FN uint64_t ds4_synth_hash(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* f32 bits to f16 bits, round to nearest even (what ds4_f32_to_f16 does). */
DS4_SYNTH_FN uint16_t ds4_synth_f16(uint32_t x) {
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) return sign | 0x7e00 | ((ax >> 13) & 0x3ff);
    if (ax >= 0x477ff000) return sign | 0x7c00;
    if (ax >= 0x38800000) {
        uint32_t r = ax - 0x38000000;
        r += 0xfff + ((r >> 13) & 1);
        return sign | (uint16_t)(r >> 13);
    }
    if (ax <= 0x33000000) return sign;
    uint32_t man = (ax & 0x7fffff) | 0x800000;
    int shift = 126 - (int)(ax >> 23);
    uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return sign | (uint16_t)q;
}

/* Element i of an F16/F32 tensor, as f32 bits. */
DS4_SYNTH_FN uint32_t ds4_synth_elem_bits(const ds4_synth_fill *f, uint64_t i) {
    int64_t t = (int64_t)(ds4_synth_hash(f->seed, i) >> 40) - (1 << 23);
    float v = (float)((double)f->mean + (double)f->scale * (double)t);
    uint32_t bits;
    memcpy(&bits, &v, 4);
    return bits;
}

/* Bytes per block and the offsets of the f16 scale fields (quant.h's
 * block structs); 0 bytes for a type this generator does not make. */
DS4_SYNTH_FN uint32_t ds4_synth_block_bytes(uint32_t type, uint32_t *d_off, int32_t *dmin_off) {
    *d_off = 0;
    *dmin_off = -1;
    switch (type) {
    case DS4_SYNTH_Q8_0: return 34;
    case DS4_SYNTH_Q2_K: *d_off = 80; *dmin_off = 82; return 84;
    case DS4_SYNTH_Q4_K: *dmin_off = 2; return 144;
    case DS4_SYNTH_IQ2_XXS: return 66;
    default: return 0;
    }
}

/* Whether the generator makes tensors of this type. */
DS4_SYNTH_FN int ds4_synth_fill_type_ok(uint32_t type) {
    uint32_t d;
    int32_t m;
    return type == DS4_SYNTH_F16 || type == DS4_SYNTH_F32 || ds4_synth_block_bytes(type, &d, &m) != 0;
}

/* Word w (bytes 8w..8w+7) of the tensor's data. */
DS4_SYNTH_FN uint64_t ds4_synth_word(const ds4_synth_fill *f, uint64_t w) {
    if (f->type == DS4_SYNTH_F16) {
        uint64_t v = 0;
        for (int k = 0; k < 4; k++) v |= (uint64_t)ds4_synth_f16(ds4_synth_elem_bits(f, 4 * w + k)) << (16 * k);
        return v;
    }
    if (f->type == DS4_SYNTH_F32)
        return (uint64_t)ds4_synth_elem_bits(f, 2 * w) | (uint64_t)ds4_synth_elem_bits(f, 2 * w + 1) << 32;
    uint32_t d_off;
    int32_t dmin_off;
    uint32_t bb = ds4_synth_block_bytes(f->type, &d_off, &dmin_off);
    uint64_t v = ds4_synth_hash(f->seed, w);
    if (!bb) return v;
    uint32_t off = (uint32_t)((8 * w) % bb); /* the first byte's place in its block */
    for (int k = 0; k < 8; k++, off = off + 1 == bb ? 0 : off + 1) {
        uint32_t byte;
        if (off - d_off < 2) byte = (uint32_t)(f->d >> (8 * (off - d_off))) & 0xff;
        else if (dmin_off >= 0 && off - (uint32_t)dmin_off < 2) byte = (uint32_t)(f->dmin >> (8 * (off - (uint32_t)dmin_off))) & 0xff;
        else continue;
        v = (v & ~(0xffull << (8 * k))) | (uint64_t)byte << (8 * k);
    }
    return v;
}

#endif
