/* gguf_layout.c — what makes a tensor description valid, and its byte size.
 *
 * One definition shared by the reader (every tensor info in a file) and the
 * writer (every tensor added), so ds4 never writes a file it would refuse to
 * read. Sizes follow ggml: a row of ne[0] elements is ne[0]/block_elems
 * blocks of block_bytes; ds4 requires ne[0] to be a whole number of blocks
 * (model-spec.md §2.1 rounds up, but no valid ggml tensor needs it). All
 * products are overflow-checked and kept within INT64_MAX, the limit of
 * ggml's signed sizes. */
#include "gguf_internal.h"

#include "../quant/quant.h"

/* TEMPORARY private copy of the block table until src/quant/ provides
 * ds4_type_info_get(); then this goes and the quant table is the only one. */
static const ds4_type_info fallback_types[] = {
    {DS4_TYPE_F32, "F32", 1, 4},          {DS4_TYPE_F16, "F16", 1, 2},
    {DS4_TYPE_Q8_0, "Q8_0", 32, 34},      {DS4_TYPE_Q2_K, "Q2_K", 256, 84},
    {DS4_TYPE_Q4_K, "Q4_K", 256, 144},    {DS4_TYPE_Q8_K, "Q8_K", 256, 292},
    {DS4_TYPE_IQ2_XXS, "IQ2_XXS", 256, 66}, {DS4_TYPE_I32, "I32", 1, 4},
    {DS4_TYPE_BF16, "BF16", 1, 2},
};

static const ds4_type_info *type_info(uint32_t type) {
    for (size_t i = 0; i < sizeof fallback_types / sizeof fallback_types[0]; i++)
        if (fallback_types[i].id == type) return &fallback_types[i];
    return NULL;
}

int gguf_tensor_layout(uint32_t type, uint32_t n_dims, const uint64_t *ne, uint64_t *nbytes,
                       ds4_err *err) {
    const ds4_type_info *ti;
    uint64_t elems = 1, row_bytes, total;
    uint32_t d;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return ds4_fail(err, "n_dims %u is out of range 1..%d", n_dims, GGUF_MAX_DIMS);
    ti = type_info(type);
    if (!ti) return ds4_fail(err, "unknown tensor type %u", type);
    for (d = 0; d < n_dims; d++) {
        if (ne[d] == 0 || ne[d] > (uint64_t)INT64_MAX)
            return ds4_fail(err, "dimension %u is %llu (must be 1..2^63-1)", d,
                            (unsigned long long)ne[d]);
        if (__builtin_mul_overflow(elems, ne[d], &elems) || elems > (uint64_t)INT64_MAX)
            return ds4_fail(err, "element count overflows (dimension %u is %llu)", d,
                            (unsigned long long)ne[d]);
    }
    if (ne[0] % ti->block_elems)
        return ds4_fail(err, "ne[0] = %llu is not a multiple of the %s block size %u",
                        (unsigned long long)ne[0], ti->name, ti->block_elems);
    if (__builtin_mul_overflow(ne[0] / ti->block_elems, (uint64_t)ti->block_bytes, &row_bytes) ||
        __builtin_mul_overflow(row_bytes, elems / ne[0], &total) || total > (uint64_t)INT64_MAX)
        return ds4_fail(err, "byte size of %llu %s elements overflows", (unsigned long long)elems,
                        ti->name);
    *nbytes = total;
    return 0;
}
