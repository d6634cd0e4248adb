/* safetensors.h — a bounds-checked reader for .safetensors files.
 *
 * Format (huggingface safetensors): u64 little-endian header length N, then
 * N bytes of JSON, then the data section. The JSON object maps each tensor
 * name to {"dtype", "shape", "data_offsets": [begin, end]} with offsets
 * relative to the data section; an optional "__metadata__" maps strings to
 * strings.
 *
 * The file is treated as hostile: ds4_st_open() validates everything before
 * exposing anything — the header length against the file size, the JSON
 * (duplicate names rejected), every dtype, every shape (overflow-checked
 * element counts), that each tensor's byte range equals its shape times its
 * element size, and that the ranges tile the data section exactly (no
 * overlap, no gap, nothing past the end), as the reference implementation
 * requires. Afterwards every data pointer handed out lies inside the mapping
 * and has the stated number of bytes. Errors name the file, the tensor and
 * the field. */
#ifndef DS4_SAFETENSORS_H
#define DS4_SAFETENSORS_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/error.h"

#define DS4_ST_MAX_DIMS 8
#define DS4_ST_MAX_HEADER (100u << 20) /* the reference implementation's limit */

typedef enum ds4_st_dtype {
    DS4_ST_F64, DS4_ST_F32, DS4_ST_F16, DS4_ST_BF16,
    DS4_ST_F8_E4M3, DS4_ST_F8_E5M2, DS4_ST_F8_E8M0,
    DS4_ST_I64, DS4_ST_I32, DS4_ST_I16, DS4_ST_I8,
    DS4_ST_U64, DS4_ST_U32, DS4_ST_U16, DS4_ST_U8, DS4_ST_BOOL,
    DS4_ST_DTYPE_COUNT
} ds4_st_dtype;

typedef struct ds4_st_tensor {
    char *name;
    ds4_st_dtype dtype;
    uint32_t n_dims;
    uint64_t shape[DS4_ST_MAX_DIMS];
    uint64_t n_elements;
    uint64_t nbytes;
    const uint8_t *data; /* inside the mapping, nbytes long */
} ds4_st_tensor;

typedef struct ds4_st_file {
    char *path;              /* for messages */
    const uint8_t *base;     /* the whole file */
    uint64_t size;
    bool mapped;             /* base is our mmap */
    uint64_t data_offset;    /* 8 + header length */
    uint64_t n_tensors;
    ds4_st_tensor *tensors;  /* sorted by name */
} ds4_st_file;

int ds4_st_open(ds4_st_file *f, const char *path, ds4_err *err);
/* Same validation over a caller-owned buffer that must outlive f; `label`
 * names it in messages. */
int ds4_st_open_memory(ds4_st_file *f, const void *buf, uint64_t size, const char *label,
                       ds4_err *err);
/* Safe on a zeroed or already closed file. */
void ds4_st_close(ds4_st_file *f);

/* Binary search by exact name; NULL if absent. */
const ds4_st_tensor *ds4_st_find(const ds4_st_file *f, const char *name);

const char *ds4_st_dtype_name(ds4_st_dtype t);
uint32_t ds4_st_dtype_size(ds4_st_dtype t);

#endif
