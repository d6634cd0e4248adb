/* gguf_write.c — writing GGUF v3 files.
 *
 * The writer keeps each metadata value already serialized (the bytes that
 * follow its type id in the file) and each tensor's description with its
 * data offset, assigned at add time: offsets are aligned and consecutive, so
 * the header is known before any data is produced. gguf_writer_write() then
 * streams header, padding and tensor data (from the caller's pointer, or one
 * tensor at a time from the fill callback into one reused buffer) into
 * `path.tmp`, syncs it and renames it over `path`. gguf_writer_write_memory()
 * lays the same bytes out in a caller's buffer, filling each tensor in place
 * (synthetic full-size models for benchmarks, without a file).
 *
 * Everything added is validated with the reader's own rules (gguf_value.c,
 * gguf_layout.c): ds4 never writes a file it would refuse to read. */
#include "gguf_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct writer_kv {
    char *key;
    uint32_t type;
    uint8_t *bytes; /* the serialized value */
    uint64_t len;
} writer_kv;

typedef struct writer_tensor {
    char *name;
    uint32_t type, n_dims;
    uint64_t ne[GGUF_MAX_DIMS];
    uint64_t nbytes, offset;
    const void *data;
    gguf_fill_fn fill;
    void *ctx;
} writer_tensor;

struct gguf_writer {
    uint32_t alignment;
    writer_kv *kv;
    uint64_t n_kv, cap_kv;
    writer_tensor *tensors;
    uint64_t n_tensors, cap_tensors;
    uint64_t data_size; /* end of the last tensor, relative to the data section */
    bool failed;
    ds4_err first_err;
};

/* Remembers the first problem; gguf_writer_write() reports it. */
__attribute__((format(printf, 2, 3))) static void record_error(gguf_writer *w, const char *fmt,
                                                                ...) {
    va_list ap;
    if (w->failed) return;
    w->failed = true;
    va_start(ap, fmt);
    vsnprintf(w->first_err.msg, sizeof w->first_err.msg, fmt, ap);
    va_end(ap);
}

static bool grow(void **items, uint64_t *cap, uint64_t need, size_t item_size) {
    uint64_t n = *cap ? *cap : 16;
    void *p;
    if (need <= *cap) return true;
    while (n < need) n *= 2;
    p = realloc(*items, n * item_size);
    if (!p) return false;
    *items = p;
    *cap = n;
    return true;
}

/* Why key cannot be added, or NULL if it can. */
static const char *key_problem(const gguf_writer *w, const char *key, bool internal) {
    if (!key[0]) return "the key is empty";
    if (!internal && strcmp(key, "general.alignment") == 0)
        return "the alignment is set through gguf_writer_new(), not as a key";
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) return "duplicate key";
    return NULL;
}

/* Takes ownership of bytes (NULL means the caller ran out of memory). */
static void add_kv_bytes(gguf_writer *w, const char *key, uint32_t type, uint8_t *bytes,
                         uint64_t len, bool internal) {
    const char *problem = bytes ? key_problem(w, key, internal) : "out of memory";
    char *copy = NULL;
    if (!problem && (!grow((void **)&w->kv, &w->cap_kv, w->n_kv + 1, sizeof *w->kv) ||
                     !(copy = strdup(key))))
        problem = "out of memory";
    if (problem) {
        record_error(w, "metadata key '%s': %s", key, problem);
        free(bytes);
        return;
    }
    w->kv[w->n_kv++] = (writer_kv){copy, type, bytes, len};
}

static void add_scalar(gguf_writer *w, const char *key, uint32_t type, const void *v) {
    uint64_t n = gguf_type_size((gguf_value_type)type);
    uint8_t *bytes = malloc(n);
    if (bytes) memcpy(bytes, v, n);
    add_kv_bytes(w, key, type, bytes, n, false);
}

gguf_writer *gguf_writer_new(uint32_t alignment) {
    gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->alignment = alignment ? alignment : GGUF_DEFAULT_ALIGNMENT;
    if (w->alignment & (w->alignment - 1)) {
        record_error(w, "alignment %u is not a power of two", alignment);
        w->alignment = GGUF_DEFAULT_ALIGNMENT;
    } else if (w->alignment != GGUF_DEFAULT_ALIGNMENT) {
        uint8_t *bytes = malloc(4);
        if (bytes) memcpy(bytes, &w->alignment, 4);
        add_kv_bytes(w, "general.alignment", GGUF_T_UINT32, bytes, 4, true);
    }
    return w;
}

void gguf_writer_free(gguf_writer *w) {
    if (!w) return;
    for (uint64_t i = 0; i < w->n_kv; i++) {
        free(w->kv[i].key);
        free(w->kv[i].bytes);
    }
    for (uint64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->kv);
    free(w->tensors);
    free(w);
}

void gguf_writer_add_u8(gguf_writer *w, const char *key, uint8_t v) { add_scalar(w, key, GGUF_T_UINT8, &v); }
void gguf_writer_add_i8(gguf_writer *w, const char *key, int8_t v) { add_scalar(w, key, GGUF_T_INT8, &v); }
void gguf_writer_add_u16(gguf_writer *w, const char *key, uint16_t v) { add_scalar(w, key, GGUF_T_UINT16, &v); }
void gguf_writer_add_i16(gguf_writer *w, const char *key, int16_t v) { add_scalar(w, key, GGUF_T_INT16, &v); }
void gguf_writer_add_u32(gguf_writer *w, const char *key, uint32_t v) { add_scalar(w, key, GGUF_T_UINT32, &v); }
void gguf_writer_add_i32(gguf_writer *w, const char *key, int32_t v) { add_scalar(w, key, GGUF_T_INT32, &v); }
void gguf_writer_add_u64(gguf_writer *w, const char *key, uint64_t v) { add_scalar(w, key, GGUF_T_UINT64, &v); }
void gguf_writer_add_i64(gguf_writer *w, const char *key, int64_t v) { add_scalar(w, key, GGUF_T_INT64, &v); }
void gguf_writer_add_f32(gguf_writer *w, const char *key, float v) { add_scalar(w, key, GGUF_T_FLOAT32, &v); }
void gguf_writer_add_f64(gguf_writer *w, const char *key, double v) { add_scalar(w, key, GGUF_T_FLOAT64, &v); }

void gguf_writer_add_bool(gguf_writer *w, const char *key, bool v) {
    uint8_t b = v ? 1 : 0;
    add_scalar(w, key, GGUF_T_BOOL, &b);
}

static uint8_t *serialize_str(const char *s, uint64_t len) {
    uint8_t *bytes = malloc(8 + len);
    if (bytes) {
        memcpy(bytes, &len, 8);
        memcpy(bytes + 8, s, len);
    }
    return bytes;
}

void gguf_writer_add_str(gguf_writer *w, const char *key, const char *v) {
    uint64_t len = strlen(v);
    add_kv_bytes(w, key, GGUF_T_STRING, serialize_str(v, len), 8 + len, false);
}

/* An array value: item type, count, then `items_len` bytes of items. Checks
 * the items with the reader's parser before taking them. */
static void add_array_bytes(gguf_writer *w, const char *key, uint32_t item_type, uint64_t count,
                            const void *items, uint64_t items_len) {
    gguf_cursor c;
    gguf_value parsed;
    ds4_err err;
    uint8_t *bytes;
    int bad;
    if (items_len > UINT64_MAX - 12 || !(bytes = malloc(12 + items_len))) {
        record_error(w, "metadata key '%s': out of memory for a %llu-byte array", key,
                     (unsigned long long)items_len);
        return;
    }
    memcpy(bytes, &item_type, 4);
    memcpy(bytes + 4, &count, 8);
    if (items_len) memcpy(bytes + 12, items, items_len);
    c = (gguf_cursor){bytes, 12 + items_len, 0};
    bad = gguf_cursor_value(&c, GGUF_T_ARRAY, &parsed, 0, &err);
    if (!bad && c.pos != c.size)
        bad = ds4_fail(&err, "array items take %llu bytes but %llu were given",
                       (unsigned long long)(c.pos - 12), (unsigned long long)items_len);
    if (bad) {
        record_error(w, "metadata key '%s': %s", key, err.msg);
        free(bytes);
        return;
    }
    add_kv_bytes(w, key, GGUF_T_ARRAY, bytes, 12 + items_len, false);
}

void gguf_writer_add_array(gguf_writer *w, const char *key, gguf_value_type item_type,
                           const void *items, uint64_t count) {
    uint64_t size = gguf_type_size(item_type);
    if (!size) {
        record_error(w, "metadata key '%s': gguf_writer_add_array takes fixed-size items, not %s",
                     key, gguf_type_name(item_type));
        return;
    }
    if (count > UINT64_MAX / size) {
        record_error(w, "metadata key '%s': array of %llu items is too large", key,
                     (unsigned long long)count);
        return;
    }
    add_array_bytes(w, key, item_type, count, items, count * size);
}

void gguf_writer_add_str_array(gguf_writer *w, const char *key, const char *const *strs,
                               uint64_t count) {
    uint64_t total = 0, pos = 0;
    uint8_t *items;
    for (uint64_t i = 0; i < count; i++) total += 8 + strlen(strs[i]);
    items = malloc(total ? total : 1);
    if (!items) {
        record_error(w, "metadata key '%s': out of memory", key);
        return;
    }
    for (uint64_t i = 0; i < count; i++) {
        uint64_t len = strlen(strs[i]);
        memcpy(items + pos, &len, 8);
        memcpy(items + pos + 8, strs[i], len);
        pos += 8 + len;
    }
    add_array_bytes(w, key, GGUF_T_STRING, count, items, total);
    free(items);
}

/* Encodes a decoded scalar at its GGUF width, refusing values that do not fit. */
static bool encode_scalar(const gguf_value *v, uint8_t out[8]) {
    uint64_t u = v->v.u64;
    int64_t s = v->v.i64;
    switch (v->type) {
    case GGUF_T_UINT8: if (u > UINT8_MAX) return false; out[0] = (uint8_t)u; return true;
    case GGUF_T_BOOL: if (u > 1) return false; out[0] = (uint8_t)u; return true;
    case GGUF_T_UINT16: { uint16_t x = (uint16_t)u; if (u > UINT16_MAX) return false; memcpy(out, &x, 2); return true; }
    case GGUF_T_UINT32: { uint32_t x = (uint32_t)u; if (u > UINT32_MAX) return false; memcpy(out, &x, 4); return true; }
    case GGUF_T_UINT64: memcpy(out, &u, 8); return true;
    case GGUF_T_INT8: { int8_t x = (int8_t)s; if (s != x) return false; memcpy(out, &x, 1); return true; }
    case GGUF_T_INT16: { int16_t x = (int16_t)s; if (s != x) return false; memcpy(out, &x, 2); return true; }
    case GGUF_T_INT32: { int32_t x = (int32_t)s; if (s != x) return false; memcpy(out, &x, 4); return true; }
    case GGUF_T_INT64: memcpy(out, &s, 8); return true;
    case GGUF_T_FLOAT32: { float x = (float)v->v.f64; memcpy(out, &x, 4); return true; }
    case GGUF_T_FLOAT64: memcpy(out, &v->v.f64, 8); return true;
    default: return false;
    }
}

void gguf_writer_add_value(gguf_writer *w, const char *key, const gguf_value *v) {
    uint8_t scalar[8];
    if (v->type == GGUF_T_STRING) {
        add_kv_bytes(w, key, GGUF_T_STRING, serialize_str(v->v.str.ptr, v->v.str.len),
                     8 + v->v.str.len, false);
    } else if (v->type == GGUF_T_ARRAY) {
        add_array_bytes(w, key, v->v.arr.item_type, v->v.arr.count, v->v.arr.items,
                        v->v.arr.bytes);
    } else if ((unsigned)v->type >= GGUF_T_COUNT) {
        record_error(w, "metadata key '%s': unknown value type %u", key, (unsigned)v->type);
    } else if (!encode_scalar(v, scalar)) {
        record_error(w, "metadata key '%s': value does not fit %s", key, gguf_type_name(v->type));
    } else {
        add_scalar(w, key, v->type, scalar);
    }
}

static int check_tensor(const gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                        const uint64_t *ne, bool has_source, uint64_t *nbytes, uint64_t *offset,
                        ds4_err *err) {
    if (!has_source) return ds4_fail(err, "no data pointer and no fill callback");
    if (gguf_tensor_layout(type, n_dims, ne, nbytes, err)) return -1;
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0) return ds4_fail(err, "duplicate tensor name");
    /* data_size <= INT64_MAX, so aligning it cannot wrap. */
    *offset = w->data_size + (w->alignment - w->data_size % w->alignment) % w->alignment;
    if (*nbytes > (uint64_t)INT64_MAX - *offset)
        return ds4_fail(err, "data section would exceed 2^63 bytes");
    return 0;
}

int gguf_writer_add_tensor(gguf_writer *w, const char *name, uint32_t type, uint32_t n_dims,
                           const uint64_t *ne, const void *data, gguf_fill_fn fill, void *ctx,
                           ds4_err *err) {
    uint64_t nbytes = 0, offset = 0;
    char prefix[128];
    ds4_err local;
    if (!err) err = &local;
    snprintf(prefix, sizeof prefix, "tensor '%s'", name);
    if (!name[0]) {
        ds4_fail(err, "tensor with an empty name");
    } else if (check_tensor(w, name, type, n_dims, ne, data || fill, &nbytes, &offset, err)) {
        ds4_fail_prefix(err, prefix);
    } else {
        char *copy = strdup(name);
        if (copy && grow((void **)&w->tensors, &w->cap_tensors, w->n_tensors + 1,
                         sizeof *w->tensors)) {
            writer_tensor *t = &w->tensors[w->n_tensors++];
            *t = (writer_tensor){copy, type, n_dims, {0}, nbytes, offset, data, fill, ctx};
            memcpy(t->ne, ne, n_dims * sizeof *ne);
            w->data_size = offset + nbytes;
            return 0;
        }
        free(copy);
        ds4_fail(err, "%s: out of memory", prefix);
    }
    record_error(w, "%s", err->msg);
    return -1;
}

/* ---- streaming the file out ---- */

/* The destination: a FILE, a memory image (mem, cap bytes), or neither (a
 * dry run that only counts bytes). */
typedef struct out_file {
    FILE *fp;
    uint8_t *mem;
    uint64_t cap;
    uint64_t pos;
    bool failed;
} out_file;

static void put(out_file *o, const void *p, uint64_t n) {
    if (o->failed || n == 0) return;
    if (o->fp && fwrite(p, 1, n, o->fp) != n) o->failed = true;
    if (o->mem) {
        if (n > o->cap - o->pos) o->failed = true;
        else memcpy(o->mem + o->pos, p, n);
    }
    o->pos += n;
}

static void put_zeros_to(out_file *o, uint64_t target) {
    static const uint8_t zeros[4096];
    while (!o->failed && o->pos < target) {
        uint64_t n = target - o->pos < sizeof zeros ? target - o->pos : sizeof zeros;
        put(o, zeros, n);
    }
}

static void put_u32(out_file *o, uint32_t v) { put(o, &v, 4); }
static void put_u64(out_file *o, uint64_t v) { put(o, &v, 8); }

static void put_str(out_file *o, const char *s) {
    uint64_t len = strlen(s);
    put_u64(o, len);
    put(o, s, len);
}

/* Header and tensor infos, then padding up to the data section; returns
 * its start. Also finds the largest tensor that is filled by callback. */
static uint64_t write_header(const gguf_writer *w, out_file *o, uint64_t *max_fill) {
    put_u32(o, GGUF_MAGIC);
    put_u32(o, GGUF_VERSION);
    put_u64(o, w->n_tensors);
    put_u64(o, w->n_kv);
    for (uint64_t i = 0; i < w->n_kv; i++) {
        put_str(o, w->kv[i].key);
        put_u32(o, w->kv[i].type);
        put(o, w->kv[i].bytes, w->kv[i].len);
    }
    for (uint64_t i = 0; i < w->n_tensors; i++) {
        const writer_tensor *t = &w->tensors[i];
        put_str(o, t->name);
        put_u32(o, t->n_dims);
        put(o, t->ne, t->n_dims * 8);
        put_u32(o, t->type);
        put_u64(o, t->offset);
        if (!t->data && t->nbytes > *max_fill) *max_fill = t->nbytes;
    }
    uint64_t data_start = o->pos + (w->alignment - o->pos % w->alignment) % w->alignment;
    put_zeros_to(o, data_start);
    return data_start;
}

/* Callback-filled tensors go through one reused buffer to a file, and
 * straight into their place in a memory image. */
static int write_all(gguf_writer *w, out_file *o, ds4_err *err) {
    uint64_t max_fill = 0;
    uint8_t *buf = NULL;
    uint64_t data_start = write_header(w, o, &max_fill);
    if (o->mem) max_fill = 0;
    if (max_fill && !(buf = malloc(max_fill)))
        return ds4_fail(err, "out of memory for a %llu-byte tensor buffer",
                        (unsigned long long)max_fill);
    for (uint64_t i = 0; i < w->n_tensors && !o->failed; i++) {
        const writer_tensor *t = &w->tensors[i];
        put_zeros_to(o, data_start + t->offset);
        if (t->data) {
            put(o, t->data, t->nbytes);
        } else {
            uint8_t *dst = o->mem ? o->mem + o->pos : buf;
            if (o->mem && t->nbytes > o->cap - o->pos) {
                o->failed = true;
                break;
            }
            if (t->fill(t->ctx, dst, t->nbytes, err)) {
                char ctx[128];
                free(buf);
                snprintf(ctx, sizeof ctx, "tensor '%s'", t->name);
                return ds4_fail_prefix(err, ctx);
            }
            if (o->mem) o->pos += t->nbytes;
            else put(o, buf, t->nbytes);
        }
    }
    free(buf);
    return 0;
}

int gguf_writer_write(gguf_writer *w, const char *path, ds4_err *err) {
    out_file o = {0};
    char *tmp;
    int rc;
    if (w->failed) return ds4_fail(err, "%s", w->first_err.msg);
    tmp = malloc(strlen(path) + 5);
    if (!tmp) return ds4_fail(err, "%s: out of memory", path);
    sprintf(tmp, "%s.tmp", path);
    o.fp = fopen(tmp, "wb");
    if (!o.fp) {
        rc = ds4_fail(err, "cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return rc;
    }
    rc = write_all(w, &o, err);
    if (rc == 0 && (o.failed || fflush(o.fp) != 0 || fsync(fileno(o.fp)) != 0)) {
        rc = ds4_fail(err, "cannot write %s: %s", tmp, strerror(errno));
    }
    if (fclose(o.fp) != 0 && rc == 0) rc = ds4_fail(err, "cannot write %s: %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = ds4_fail(err, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (rc != 0) unlink(tmp);
    free(tmp);
    return rc;
}

uint64_t gguf_writer_image_size(const gguf_writer *w) {
    out_file o = {0};
    uint64_t max_fill = 0;
    return write_header(w, &o, &max_fill) + w->data_size;
}

int gguf_writer_write_memory(gguf_writer *w, void *dst, uint64_t size, ds4_err *err) {
    out_file o = {.mem = dst, .cap = size};
    if (w->failed) return ds4_fail(err, "%s", w->first_err.msg);
    if (size != gguf_writer_image_size(w))
        return ds4_fail(err, "memory image is %llu bytes, the file needs %llu",
                        (unsigned long long)size, (unsigned long long)gguf_writer_image_size(w));
    if (write_all(w, &o, err)) return -1;
    if (o.failed) return ds4_fail(err, "internal: memory image overflow");
    put_zeros_to(&o, size);
    return 0;
}
