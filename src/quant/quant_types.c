/* quant_types.c — the table of element types and the f16/bf16 conversions.
 *
 * The conversions are plain bit manipulation, IEEE round-to-nearest-even,
 * exact for subnormals, infinities and NaNs (a NaN stays a NaN of the same
 * sign with its top payload bits and the quiet bit set, as the F16C
 * instructions do). They are written out rather than taken from F16C so
 * that every build of ds4 converts the same way; F16C/AVX-512 conversions
 * in the SIMD kernels are used only where they are bit-identical
 * (f16 -> f32 is exact). */
#include <string.h>

#include "quant_internal.h"

static const ds4_type_info type_table[] = {
    {DS4_TYPE_F32, "F32", 1, 4},
    {DS4_TYPE_F16, "F16", 1, 2},
    {DS4_TYPE_Q8_0, "Q8_0", DS4_QK8_0, sizeof(ds4_block_q8_0)},
    {DS4_TYPE_Q2_K, "Q2_K", DS4_QK_K, sizeof(ds4_block_q2_K)},
    {DS4_TYPE_Q4_K, "Q4_K", DS4_QK_K, sizeof(ds4_block_q4_K)},
    {DS4_TYPE_Q8_K, "Q8_K", DS4_QK_K, sizeof(ds4_block_q8_K)},
    {DS4_TYPE_IQ2_XXS, "IQ2_XXS", DS4_QK_K, sizeof(ds4_block_iq2_xxs)},
    {DS4_TYPE_I32, "I32", 1, 4},
    {DS4_TYPE_BF16, "BF16", 1, 2},
};

_Static_assert(sizeof(ds4_block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(ds4_block_q2_K) == 84, "Q2_K block is 84 bytes");
_Static_assert(sizeof(ds4_block_q4_K) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(ds4_block_iq2_xxs) == 66, "IQ2_XXS block is 66 bytes");
_Static_assert(sizeof(ds4_block_q8_K) == 292, "Q8_K block is 292 bytes");
_Static_assert(sizeof(ds4_block_q8_0_act) == 36, "Q8_0 activation block is 36 bytes");

const ds4_type_info *ds4_type_info_get(uint32_t type) {
    for (size_t i = 0; i < sizeof type_table / sizeof type_table[0]; i++)
        if (type_table[i].id == type) return &type_table[i];
    return NULL;
}

const char *ds4_type_name(uint32_t type) {
    const ds4_type_info *ti = ds4_type_info_get(type);
    return ti ? ti->name : "?";
}

uint64_t ds4_type_row_bytes(uint32_t type, uint64_t n) {
    const ds4_type_info *ti = ds4_type_info_get(type);
    if (!ti || n % ti->block_elems) return 0;
    uint64_t blocks = n / ti->block_elems;
    if (blocks > UINT64_MAX / ti->block_bytes) return 0;
    return blocks * ti->block_bytes;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float ds4_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000 | man << 13);
    if (exp) return bits_f32(sign | (exp + 112) << 23 | man << 13);
    /* zero or subnormal: man * 2^-24, exact in f32 */
    float v = (float)man * 0x1p-24f;
    return sign ? -v : v;
}

uint16_t ds4_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;
    if (ax > 0x7f800000) return sign | 0x7e00 | ((ax >> 13) & 0x3ff); /* NaN */
    if (ax >= 0x477ff000) return sign | 0x7c00; /* >= 65520 (incl. inf) rounds to inf */
    if (ax >= 0x38800000) {                      /* normal f16: >= 2^-14 */
        uint32_t r = ax - 0x38000000;            /* rebias the exponent 127 -> 15 */
        r += 0xfff + ((r >> 13) & 1);            /* round the 13 dropped bits to even */
        return sign | (uint16_t)(r >> 13);
    }
    if (ax <= 0x33000000) return sign; /* <= 2^-25: rounds to zero (2^-25 ties to even) */
    /* f16 subnormal: the value in units of 2^-24, rounded to even */
    uint32_t man = (ax & 0x7fffff) | 0x800000;
    int shift = 126 - (int)(ax >> 23); /* 14..24 */
    uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return sign | (uint16_t)q;
}

float ds4_bf16_to_f32(uint16_t h) {
    return bits_f32((uint32_t)h << 16);
}

uint16_t ds4_f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}
