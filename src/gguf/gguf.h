/* gguf.h — GGUF v3 container: a bounds-checked mmap reader and a writer.
 *
 * Reader: gguf_open() maps the file read-only and validates the whole header
 * (every string length, array count, tensor info, offset and extent) against
 * the file size and the type table before anything is exposed. After a
 * successful open every pointer handed out points inside the mapping and
 * every extent has been checked, so consumers never re-validate bytes. No
 * allocation is ever sized by an unchecked field: counts are first bounded by
 * the bytes that remain in the file. Only version 3 is read; keys and tensor
 * names are non-empty and unique; tensors are aligned, lie inside the data
 * section and do not overlap; ne[0] is a whole number of blocks.
 *
 * Writer: gguf_writer collects metadata and tensor descriptions, then streams
 * the file out (header, aligned data section). Tensor data can be supplied as
 * a pointer or produced by a callback one tensor at a time, so multi-GB
 * synthetic models are written holding at most one tensor in memory.
 * model-spec.md §2.1. */
#ifndef DS4_GGUF_H
#define DS4_GGUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../common/error.h"

#define GGUF_MAGIC 0x46554747u /* "GGUF" little-endian */
#define GGUF_VERSION 3u
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DIMS 8
#define GGUF_MAX_ARRAY_DEPTH 8 /* arrays of arrays: nesting limit */

typedef enum gguf_value_type {
    GGUF_T_UINT8 = 0,
    GGUF_T_INT8 = 1,
    GGUF_T_UINT16 = 2,
    GGUF_T_INT16 = 3,
    GGUF_T_UINT32 = 4,
    GGUF_T_INT32 = 5,
    GGUF_T_FLOAT32 = 6,
    GGUF_T_BOOL = 7,
    GGUF_T_STRING = 8,
    GGUF_T_ARRAY = 9,
    GGUF_T_UINT64 = 10,
    GGUF_T_INT64 = 11,
    GGUF_T_FLOAT64 = 12,
    GGUF_T_COUNT
} gguf_value_type;

/* A string inside the mapping: not NUL-terminated. */
typedef struct gguf_str {
    const char *ptr;
    uint64_t len;
} gguf_str;

/* One metadata value. Scalars are decoded; arrays keep a pointer to their
 * first item in the mapping (items of a nested array are themselves arrays). */
typedef struct gguf_value {
    gguf_value_type type;
    union {
        uint64_t u64; /* UINT8..UINT32, UINT64, BOOL (0/1) */
        int64_t i64;  /* INT8..INT32, INT64 */
        double f64;   /* FLOAT32, FLOAT64 */
        gguf_str str;
        struct {
            gguf_value_type item_type;
            uint64_t count;
            const uint8_t *items;  /* first item in the mapping */
            uint64_t bytes;        /* total bytes of all items */
        } arr;
    } v;
} gguf_value;

typedef struct gguf_kv {
    gguf_str key;
    gguf_value value;
} gguf_kv;

typedef struct gguf_tensor_info {
    gguf_str name;
    uint32_t n_dims;
    uint64_t ne[GGUF_MAX_DIMS];   /* unused dims are 1 */
    uint32_t type;                /* ggml type id (see quant/quant.h) */
    uint64_t offset;              /* relative to the data section */
    uint64_t nbytes;              /* from the type table, checked in-file */
    const void *data;             /* inside the mapping */
} gguf_tensor_info;

typedef struct gguf_file {
    const uint8_t *base;          /* the whole file (mmap or caller buffer) */
    uint64_t size;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;         /* absolute start of the data section (<= size) */
    uint64_t n_kv;
    gguf_kv *kv;                  /* in file order */
    uint64_t n_tensors;
    gguf_tensor_info *tensors;    /* in file order */
    char *path;                   /* NULL for gguf_open_memory() */
    /* private: lookup indexes sorted by key / name */
    const gguf_kv **kv_by_key;
    const gguf_tensor_info **tensor_by_name;
} gguf_file;

/* Opens and fully validates `path`. On error returns -1 with one line in
 * err, prefixed with the path, naming what is wrong (the key or tensor, the
 * field, and the byte offset where it helps). The mapping is read-only and
 * stays valid until gguf_close(). */
int gguf_open(gguf_file *f, const char *path, ds4_err *err);
/* Same checks over a caller-owned buffer (used by the fuzz target); the
 * buffer must outlive `f`. */
int gguf_open_memory(gguf_file *f, const void *buf, uint64_t size, ds4_err *err);
/* Frees what open allocated; safe on a zeroed or already closed file. */
void gguf_close(gguf_file *f);

/* Lookups by exact name (binary search); NULL if absent. */
const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor_info *gguf_find_tensor(const gguf_file *f, const char *name);
bool gguf_str_eq(gguf_str s, const char *cstr);
/* "UINT32", "STRING", ...; "?" for ids outside the enum. */
const char *gguf_type_name(gguf_value_type t);
/* Bytes of one item of a fixed-size type (1, 2, 4 or 8); 0 for STRING,
 * ARRAY and unknown ids. */
uint64_t gguf_type_size(gguf_value_type t);
/* Writes s into buf (always NUL-terminated) for messages: at most 64 bytes
 * of it, non-printable bytes as \xNN, "..." when cut. Returns buf. */
const char *gguf_str_show(gguf_str s, char *buf, size_t bufsize);

/* Array element access. Item i of an array: a decoded scalar, a string, or
 * (arrays of arrays) a nested array value. O(1) for fixed-size items, O(i)
 * for strings and arrays: walk those with gguf_array_next(). */
int gguf_array_get(const gguf_value *arr, uint64_t i, gguf_value *out, ds4_err *err);
/* Fills out[0..count) with the strings of an array of strings in one pass;
 * caller allocates arr->v.arr.count entries (bounded by the file: each
 * string costs >= 8 bytes). */
int gguf_array_strings(const gguf_value *arr, gguf_str *out, ds4_err *err);

/* Sequential access to the items of any array, O(1) per item. */
typedef struct gguf_array_iter {
    const gguf_value *arr;
    uint64_t index; /* of the next item */
    uint64_t pos;   /* its byte offset within arr->v.arr.items */
} gguf_array_iter;
void gguf_array_iter_init(gguf_array_iter *it, const gguf_value *arr);
/* 1 with the next item in *out, 0 after the last, -1 on error. */
int gguf_array_next(gguf_array_iter *it, gguf_value *out, ds4_err *err);

/* ---- writer ----
 *
 * The add functions never fail on the spot: the first problem (a duplicate
 * or empty key, a bad item type, out of memory) is remembered and
 * gguf_writer_write() reports it. Integer keys keep exactly the GGUF type of
 * the function used (ds4's own integer keys are UINT32). The writer owns
 * `general.alignment`: it is written (UINT32) when the alignment given to
 * gguf_writer_new() is not the default 32, and adding it by hand is an
 * error. The file is written to `path.tmp`, synced, then renamed over
 * `path`, so a failed write never leaves a partial file under the real name. */

typedef struct gguf_writer gguf_writer;

/* Produces the `nbytes` bytes of one tensor's data into dst (called once per
 * tensor, in tensor order, while the file is written; dst is reused, so only
 * one tensor is in memory at a time). */
typedef int (*gguf_fill_fn)(void *ctx, void *dst, uint64_t nbytes, ds4_err *err);

/* alignment: a power of two (0 means the default 32). */
gguf_writer *gguf_writer_new(uint32_t alignment);
void gguf_writer_free(gguf_writer *w);
void gguf_writer_add_u8(gguf_writer *w, const char *key, uint8_t v);
void gguf_writer_add_i8(gguf_writer *w, const char *key, int8_t v);
void gguf_writer_add_u16(gguf_writer *w, const char *key, uint16_t v);
void gguf_writer_add_i16(gguf_writer *w, const char *key, int16_t v);
void gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v);
void gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v);
void gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v);
void gguf_writer_add_i64(gguf_writer *w, const char *key, int64_t v);
void gguf_writer_add_f32(gguf_writer *w, const char *key, float v);
void gguf_writer_add_f64(gguf_writer *w, const char *key, double v);
void gguf_writer_add_bool(gguf_writer *w, const char *key, bool v);
void gguf_writer_add_str(gguf_writer *w, const char *key, const char *v);
/* Array of fixed-size scalars of item_type; `items` holds count packed
 * little-endian values. */
void gguf_writer_add_array(gguf_writer *w, const char *key, gguf_value_type item_type,
                           const void *items, uint64_t count);
void gguf_writer_add_str_array(gguf_writer *w, const char *key, const char *const *strs,
                               uint64_t count);
/* Any value as the reader returns it (copies metadata between files). For
 * arrays, v.arr.items/bytes hold the serialized items exactly as in a GGUF
 * file, which is how arrays of arrays are written; they are validated. */
void gguf_writer_add_value(gguf_writer *w, const char *key, const gguf_value *v);
/* Adds a tensor; ne has n_dims entries. Data comes from `data` (copied at
 * write time, must stay valid) or, if data is NULL, from fill(ctx, ...).
 * The shape and type are checked here (same rules as the reader). */
int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                           const uint64_t *ne, const void *data, gguf_fill_fn fill, void *ctx,
                           ds4_err *err);
/* Writes the complete file; returns -1 with a message on the first recorded
 * add error, a fill error or an I/O error. May be called again. */
int gguf_writer_write(gguf_writer *w, const char *path, ds4_err *err);
/* The file as it would be written, laid out in memory instead: dst holds
 * exactly gguf_writer_image_size() bytes (the caller allocates it, e.g.
 * page-aligned for a model that gguf_open_memory() then reads in place). */
uint64_t gguf_writer_image_size(const gguf_writer *w);
int gguf_writer_write_memory(gguf_writer *w, void *dst, uint64_t size, ds4_err *err);

#endif
