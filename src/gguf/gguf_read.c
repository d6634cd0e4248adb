/* gguf_read.c — opening a GGUF v3 file: mmap, full validation, lookups.
 *
 * gguf_parse() checks the whole header before anything is exposed:
 *   header   magic, version 3, tensor and key counts bounded by the bytes left
 *            (a key costs >= 12 bytes, a tensor info >= 32), so the arrays
 *            allocated for them are never sized by an unchecked field;
 *   metadata every key non-empty and unique, every value parsed and checked
 *            (gguf_value.c); general.alignment, if present, a UINT32 power of two;
 *   tensors  names non-empty and unique, shapes and types valid
 *            (gguf_layout.c), offsets aligned, every extent inside the data
 *            section, and no two tensors overlapping (sorted by offset).
 * Errors are one line naming the key or tensor and the byte offset. */
#include "gguf_internal.h"
#include "../common/file.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define KV_MIN_BYTES (8 + 4 + 1)             /* key length, value type, smallest value */
#define TENSOR_INFO_MIN_BYTES (8 + 4 + 8 + 4 + 8) /* name length, n_dims, one dim, type, offset */

static int str_cmp(gguf_str a, gguf_str b) {
    uint64_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c) return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

static int kv_ptr_cmp(const void *a, const void *b) {
    return str_cmp((*(const gguf_kv *const *)a)->key, (*(const gguf_kv *const *)b)->key);
}

static int tensor_name_cmp(const void *a, const void *b) {
    return str_cmp((*(const gguf_tensor_info *const *)a)->name,
                   (*(const gguf_tensor_info *const *)b)->name);
}

static int tensor_offset_cmp(const void *a, const void *b) {
    uint64_t x = (*(const gguf_tensor_info *const *)a)->offset;
    uint64_t y = (*(const gguf_tensor_info *const *)b)->offset;
    return x < y ? -1 : x > y;
}

static int parse_header(gguf_file *f, gguf_cursor *c, ds4_err *err) {
    uint32_t magic;
    if (c->size < 24)
        return ds4_fail(err, "file too short for a GGUF header (%llu bytes, need 24)",
                        (unsigned long long)c->size);
    gguf_cursor_u32(c, &magic, "magic", err);
    if (magic != GGUF_MAGIC)
        return ds4_fail(err, "not a GGUF file: magic is 0x%08x, expected 0x%08x (\"GGUF\")", magic,
                        GGUF_MAGIC);
    gguf_cursor_u32(c, &f->version, "version", err);
    if (f->version != GGUF_VERSION)
        return ds4_fail(err, "unsupported GGUF version %u (ds4 reads version %u)", f->version,
                        GGUF_VERSION);
    gguf_cursor_u64(c, &f->n_tensors, "tensor count", err);
    gguf_cursor_u64(c, &f->n_kv, "metadata count", err);
    if (f->n_kv > (c->size - c->pos) / KV_MIN_BYTES)
        return ds4_fail(err, "metadata count %llu exceeds what the remaining %llu bytes can hold",
                        (unsigned long long)f->n_kv, (unsigned long long)(c->size - c->pos));
    /* The tensor infos follow the metadata, so this bound is loose here and
     * tightened after the metadata is read. */
    if (f->n_tensors > (c->size - c->pos) / TENSOR_INFO_MIN_BYTES)
        return ds4_fail(err, "tensor count %llu exceeds what the remaining %llu bytes can hold",
                        (unsigned long long)f->n_tensors, (unsigned long long)(c->size - c->pos));
    return 0;
}

static int parse_metadata(gguf_file *f, gguf_cursor *c, ds4_err *err) {
    char ctx[128], name[96];
    uint64_t i;
    f->kv = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv);
    f->kv_by_key = calloc(f->n_kv ? f->n_kv : 1, sizeof *f->kv_by_key);
    if (!f->kv || !f->kv_by_key) return ds4_fail(err, "out of memory for %llu metadata entries",
                                                 (unsigned long long)f->n_kv);
    for (i = 0; i < f->n_kv; i++) {
        gguf_kv *kv = &f->kv[i];
        uint32_t type;
        snprintf(ctx, sizeof ctx, "metadata key #%llu", (unsigned long long)i);
        if (gguf_cursor_str(c, &kv->key, "key", err)) return ds4_fail_prefix(err, ctx);
        if (kv->key.len == 0) return ds4_fail(err, "%s: empty key at byte %llu", ctx,
                                              (unsigned long long)(c->pos - 8));
        snprintf(ctx, sizeof ctx, "metadata key #%llu '%s'", (unsigned long long)i,
                 gguf_str_show(kv->key, name, sizeof name));
        if (gguf_cursor_u32(c, &type, "value type", err)) return ds4_fail_prefix(err, ctx);
        if (type >= GGUF_T_COUNT)
            return ds4_fail(err, "%s: value type %u at byte %llu is not a GGUF value type (0..12)",
                            ctx, type, (unsigned long long)(c->pos - 4));
        if (gguf_cursor_value(c, type, &kv->value, 0, err)) return ds4_fail_prefix(err, ctx);
        f->kv_by_key[i] = kv;
    }
    qsort(f->kv_by_key, f->n_kv, sizeof *f->kv_by_key, kv_ptr_cmp);
    for (i = 1; i < f->n_kv; i++) {
        const gguf_kv *a = f->kv_by_key[i - 1], *b = f->kv_by_key[i];
        if (str_cmp(a->key, b->key) == 0) {
            uint64_t ia = (uint64_t)(a - f->kv), ib = (uint64_t)(b - f->kv);
            return ds4_fail(err, "duplicate metadata key '%s' (entries #%llu and #%llu)",
                            gguf_str_show(a->key, name, sizeof name),
                            (unsigned long long)(ia < ib ? ia : ib),
                            (unsigned long long)(ia < ib ? ib : ia));
        }
    }
    return 0;
}

static int parse_alignment(gguf_file *f, ds4_err *err) {
    const gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    if (!kv) return 0;
    if (kv->value.type != GGUF_T_UINT32)
        return ds4_fail(err, "general.alignment must be UINT32, found %s",
                        gguf_type_name(kv->value.type));
    if (kv->value.v.u64 == 0 || (kv->value.v.u64 & (kv->value.v.u64 - 1)))
        return ds4_fail(err, "general.alignment %llu is not a power of two",
                        (unsigned long long)kv->value.v.u64);
    f->alignment = (uint32_t)kv->value.v.u64;
    return 0;
}

static int parse_tensor_infos(gguf_file *f, gguf_cursor *c, ds4_err *err) {
    char ctx[128], name[96], what[32];
    uint64_t i;
    if (f->n_tensors > (c->size - c->pos) / TENSOR_INFO_MIN_BYTES)
        return ds4_fail(err, "tensor count %llu exceeds what the remaining %llu bytes at byte %llu "
                        "can hold", (unsigned long long)f->n_tensors,
                        (unsigned long long)(c->size - c->pos), (unsigned long long)c->pos);
    f->tensors = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensors);
    f->tensor_by_name = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *f->tensor_by_name);
    if (!f->tensors || !f->tensor_by_name)
        return ds4_fail(err, "out of memory for %llu tensor infos", (unsigned long long)f->n_tensors);
    for (i = 0; i < f->n_tensors; i++) {
        gguf_tensor_info *t = &f->tensors[i];
        snprintf(ctx, sizeof ctx, "tensor #%llu", (unsigned long long)i);
        if (gguf_cursor_str(c, &t->name, "name", err)) return ds4_fail_prefix(err, ctx);
        if (t->name.len == 0) return ds4_fail(err, "%s: empty name at byte %llu", ctx,
                                              (unsigned long long)(c->pos - 8));
        snprintf(ctx, sizeof ctx, "tensor '%s'", gguf_str_show(t->name, name, sizeof name));
        if (gguf_cursor_u32(c, &t->n_dims, "n_dims", err)) return ds4_fail_prefix(err, ctx);
        if (t->n_dims < 1 || t->n_dims > GGUF_MAX_DIMS)
            return ds4_fail(err, "%s: n_dims %u at byte %llu is out of range 1..%d", ctx, t->n_dims,
                            (unsigned long long)(c->pos - 4), GGUF_MAX_DIMS);
        for (uint32_t d = 0; d < GGUF_MAX_DIMS; d++) {
            t->ne[d] = 1;
            if (d >= t->n_dims) continue;
            snprintf(what, sizeof what, "ne[%u]", d);
            if (gguf_cursor_u64(c, &t->ne[d], what, err)) return ds4_fail_prefix(err, ctx);
        }
        if (gguf_cursor_u32(c, &t->type, "type", err) ||
            gguf_cursor_u64(c, &t->offset, "offset", err))
            return ds4_fail_prefix(err, ctx);
        f->tensor_by_name[i] = t;
    }
    return 0;
}

/* Shapes, types, extents and overlaps, once the data section is known. */
static int check_tensors(gguf_file *f, ds4_err *err) {
    char name[96], name2[96];
    uint64_t data_size = f->size - f->data_offset, i;
    const gguf_tensor_info **by_off;
    for (i = 0; i < f->n_tensors; i++) {
        gguf_tensor_info *t = &f->tensors[i];
        gguf_str_show(t->name, name, sizeof name);
        if (gguf_tensor_layout(t->type, t->n_dims, t->ne, &t->nbytes, err)) {
            char ctx[128];
            snprintf(ctx, sizeof ctx, "tensor '%s'", name);
            return ds4_fail_prefix(err, ctx);
        }
        if (t->offset % f->alignment)
            return ds4_fail(err, "tensor '%s': offset %llu is not a multiple of the alignment %u",
                            name, (unsigned long long)t->offset, f->alignment);
        if (t->offset > data_size || t->nbytes > data_size - t->offset)
            return ds4_fail(err, "tensor '%s': data [offset %llu, %llu bytes] extends past the end "
                            "of the file (data section at byte %llu, file size %llu)", name,
                            (unsigned long long)t->offset, (unsigned long long)t->nbytes,
                            (unsigned long long)f->data_offset, (unsigned long long)f->size);
        t->data = f->base + f->data_offset + t->offset;
    }
    qsort(f->tensor_by_name, f->n_tensors, sizeof *f->tensor_by_name, tensor_name_cmp);
    for (i = 1; i < f->n_tensors; i++)
        if (str_cmp(f->tensor_by_name[i - 1]->name, f->tensor_by_name[i]->name) == 0)
            return ds4_fail(err, "duplicate tensor name '%s'",
                            gguf_str_show(f->tensor_by_name[i]->name, name, sizeof name));
    if (f->n_tensors < 2) return 0;
    by_off = malloc(f->n_tensors * sizeof *by_off);
    if (!by_off) return ds4_fail(err, "out of memory sorting %llu tensors",
                                 (unsigned long long)f->n_tensors);
    memcpy(by_off, f->tensor_by_name, f->n_tensors * sizeof *by_off);
    qsort(by_off, f->n_tensors, sizeof *by_off, tensor_offset_cmp);
    for (i = 1; i < f->n_tensors; i++) {
        const gguf_tensor_info *a = by_off[i - 1], *b = by_off[i];
        if (a->offset + a->nbytes > b->offset) { /* no overflow: both end inside the file */
            ds4_fail(err, "tensors '%s' [offset %llu, %llu bytes] and '%s' [offset %llu, %llu "
                     "bytes] overlap", gguf_str_show(a->name, name, sizeof name),
                     (unsigned long long)a->offset, (unsigned long long)a->nbytes,
                     gguf_str_show(b->name, name2, sizeof name2),
                     (unsigned long long)b->offset, (unsigned long long)b->nbytes);
            free(by_off);
            return -1;
        }
    }
    free(by_off);
    return 0;
}

static int parse(gguf_file *f, const uint8_t *base, uint64_t size, ds4_err *err) {
    gguf_cursor c = {base, size, 0};
    uint64_t pad;
    f->base = base;
    f->size = size;
    if (parse_header(f, &c, err) || parse_metadata(f, &c, err) || parse_alignment(f, err) ||
        parse_tensor_infos(f, &c, err))
        return -1;
    /* c.pos <= size and alignment <= 2^31, so this cannot overflow. A file
     * without tensors may end before the padding: then the (empty) data
     * section starts at the end of the file. */
    pad = (f->alignment - c.pos % f->alignment) % f->alignment;
    f->data_offset = c.pos + pad;
    if (f->data_offset > size) {
        if (f->n_tensors)
            return ds4_fail(err, "data section would start at byte %llu, past the end of the file "
                            "(%llu bytes)", (unsigned long long)f->data_offset,
                            (unsigned long long)size);
        f->data_offset = size;
    }
    return check_tensors(f, err);
}

int gguf_open_memory(gguf_file *f, const void *buf, uint64_t size, ds4_err *err) {
    memset(f, 0, sizeof *f);
    if (parse(f, buf, size, err)) {
        gguf_close(f);
        return -1;
    }
    return 0;
}

int gguf_open(gguf_file *f, const char *path, ds4_err *err) {
    const void *map;
    uint64_t size;
    memset(f, 0, sizeof *f);
    if (ds4_map_file(path, &map, &size, err)) return -1;
    f->path = strdup(path);
    if (!f->path) {
        munmap((void *)map, (size_t)size);
        return ds4_fail(err, "%s: out of memory", path);
    }
    if (parse(f, map, size, err)) {
        gguf_close(f);
        return ds4_fail_prefix(err, path);
    }
    return 0;
}

void gguf_close(gguf_file *f) {
    if (f->path && f->base) munmap((void *)f->base, (size_t)f->size);
    free(f->path);
    free(f->kv);
    free(f->kv_by_key);
    free(f->tensors);
    free(f->tensor_by_name);
    memset(f, 0, sizeof *f);
}

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    gguf_kv probe = {{key, strlen(key)}, {0}};
    const gguf_kv *pp = &probe, **hit;
    if (!f->kv_by_key) return NULL;
    hit = bsearch(&pp, f->kv_by_key, f->n_kv, sizeof *f->kv_by_key, kv_ptr_cmp);
    return hit ? *hit : NULL;
}

const gguf_tensor_info *gguf_find_tensor(const gguf_file *f, const char *name) {
    gguf_tensor_info probe = {.name = {name, strlen(name)}};
    const gguf_tensor_info *pp = &probe, **hit;
    if (!f->tensor_by_name) return NULL;
    hit = bsearch(&pp, f->tensor_by_name, f->n_tensors, sizeof *f->tensor_by_name,
                  tensor_name_cmp);
    return hit ? *hit : NULL;
}
