/* gguf_internal.h — pieces shared by the GGUF reader and writer (not for
 * use outside src/gguf/).
 *
 * A gguf_cursor walks a byte range with every read bounds-checked; values
 * are parsed and validated by gguf_cursor_value(), which the reader uses on
 * the file and the writer uses on caller-supplied serialized arrays, so both
 * sides accept exactly the same encodings. gguf_tensor_layout() holds the one
 * definition of a valid tensor shape and its byte size. */
#ifndef DS4_GGUF_INTERNAL_H
#define DS4_GGUF_INTERNAL_H

#include "gguf.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF is little-endian and ds4 reads it in place: big-endian hosts are not supported"
#endif

typedef struct gguf_cursor {
    const uint8_t *base;
    uint64_t size; /* readable bytes from base */
    uint64_t pos;
} gguf_cursor;

/* Each fails with "truncated: <what> needs N bytes at byte P, only M remain". */
int gguf_cursor_u32(gguf_cursor *c, uint32_t *v, const char *what, ds4_err *err);
int gguf_cursor_u64(gguf_cursor *c, uint64_t *v, const char *what, ds4_err *err);
int gguf_cursor_str(gguf_cursor *c, gguf_str *s, const char *what, ds4_err *err);
/* Parses one value of `type` (already read) at the cursor and validates it
 * completely (bools are 0/1, array items are all in range, nesting is at
 * most GGUF_MAX_ARRAY_DEPTH). depth is 0 for a top-level value. */
int gguf_cursor_value(gguf_cursor *c, uint32_t type, gguf_value *out, unsigned depth,
                      ds4_err *err);

/* Smallest encoding of one item of `type`: the fixed size, 8 for a string
 * (its length), 12 for an array (item type + count). */
uint64_t gguf_type_min_size(uint32_t type);

/* Validates a tensor description (known type, 1..GGUF_MAX_DIMS dims, every
 * dim in 1..INT64_MAX, ne[0] a multiple of the block size, element count and
 * byte size without overflow) and returns its byte size. Messages name the
 * problem without the tensor (the caller prefixes it). */
int gguf_tensor_layout(uint32_t type, uint32_t n_dims, const uint64_t *ne, uint64_t *nbytes,
                       ds4_err *err);

#endif
