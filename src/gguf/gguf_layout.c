/* gguf_layout.c — what makes a tensor description valid, and its byte size.
 *
 * One definition shared by the reader (every tensor info in a file) and the
 * writer (every tensor added), so ds4 never writes a file it would refuse to
 * read. Sizes follow ggml: a row of ne[0] elements is ne[0]/block_elems
 * blocks of block_bytes; ds4 requires ne[0] to be a whole number of blocks
 * (model-spec.md §2.1 rounds up, but no valid ggml tensor needs it). All
 * products are overflow-checked and kept within INT64_MAX, the limit of
 * ggml's signed sizes. The block table is quant.h's ds4_type_info_get(). */
#include "gguf_internal.h"

#include "../quant/quant.h"

int gguf_tensor_layout(uint32_t type, uint32_t n_dims, const uint64_t *ne, uint64_t *nbytes,
                       ds4_err *err) {
    const ds4_type_info *ti;
    uint64_t elems = 1, row_bytes, total;
    uint32_t d;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return ds4_fail(err, "n_dims %u is out of range 1..%d", n_dims, GGUF_MAX_DIMS);
    ti = ds4_type_info_get(type);
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
