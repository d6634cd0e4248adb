/* safetensors.c — bounds-checked .safetensors reader (see safetensors.h).
 *
 * Validation order: header length, JSON, then per entry the dtype, shape and
 * byte range, then the tiling of the data section. Nothing is exposed until
 * all of it passed, so callers can use every pointer without re-checking. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "../common/file.h"
#include "safetensors.h"

static const struct {
    const char *name;
    uint32_t size;
} dtype_table[DS4_ST_DTYPE_COUNT] = {
    [DS4_ST_F64] = {"F64", 8},         [DS4_ST_F32] = {"F32", 4},
    [DS4_ST_F16] = {"F16", 2},         [DS4_ST_BF16] = {"BF16", 2},
    [DS4_ST_F8_E4M3] = {"F8_E4M3", 1}, [DS4_ST_F8_E5M2] = {"F8_E5M2", 1},
    [DS4_ST_F8_E8M0] = {"F8_E8M0", 1}, [DS4_ST_I64] = {"I64", 8},
    [DS4_ST_I32] = {"I32", 4},         [DS4_ST_I16] = {"I16", 2},
    [DS4_ST_I8] = {"I8", 1},           [DS4_ST_U64] = {"U64", 8},
    [DS4_ST_U32] = {"U32", 4},         [DS4_ST_U16] = {"U16", 2},
    [DS4_ST_U8] = {"U8", 1},           [DS4_ST_BOOL] = {"BOOL", 1},
};

const char *ds4_st_dtype_name(ds4_st_dtype t) {
    return (unsigned)t < DS4_ST_DTYPE_COUNT ? dtype_table[t].name : "?";
}

uint32_t ds4_st_dtype_size(ds4_st_dtype t) {
    return (unsigned)t < DS4_ST_DTYPE_COUNT ? dtype_table[t].size : 0;
}

static int parse_dtype(const char *s, ds4_st_dtype *out) {
    for (int i = 0; i < DS4_ST_DTYPE_COUNT; i++) {
        if (!strcmp(s, dtype_table[i].name)) {
            *out = (ds4_st_dtype)i;
            return 0;
        }
    }
    return -1;
}

void ds4_st_close(ds4_st_file *f) {
    if (!f) return;
    for (uint64_t i = 0; f->tensors && i < f->n_tensors; i++) free(f->tensors[i].name);
    free(f->tensors);
    if (f->mapped && f->base) munmap((void *)f->base, f->size);
    free(f->path);
    memset(f, 0, sizeof *f);
}

/* Shape: an array of non-negative integers, at most DS4_ST_MAX_DIMS long,
 * whose product (the element count) does not overflow. */
static int parse_shape(const ds4_st_file *f, const char *name, json_t *js, ds4_st_tensor *t,
                       ds4_err *err) {
    if (!json_is_array(js))
        return ds4_fail(err, "%s: tensor %s: \"shape\" is not an array", f->path, name);
    size_t n = json_array_size(js);
    if (n > DS4_ST_MAX_DIMS)
        return ds4_fail(err, "%s: tensor %s: %zu dimensions (at most %d)", f->path, name, n,
                        DS4_ST_MAX_DIMS);
    t->n_dims = (uint32_t)n;
    t->n_elements = 1;
    for (size_t i = 0; i < n; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return ds4_fail(err, "%s: tensor %s: shape[%zu] is not a non-negative integer", f->path,
                            name, i);
        uint64_t v = (uint64_t)json_integer_value(d);
        t->shape[i] = v;
        if (v && t->n_elements > UINT64_MAX / v)
            return ds4_fail(err, "%s: tensor %s: the element count overflows", f->path, name);
        t->n_elements *= v;
    }
    return 0;
}

static int parse_offsets(const ds4_st_file *f, const char *name, json_t *js, uint64_t *begin,
                         uint64_t *end, ds4_err *err) {
    if (!json_is_array(js) || json_array_size(js) != 2)
        return ds4_fail(err, "%s: tensor %s: \"data_offsets\" is not an array of 2 integers",
                        f->path, name);
    json_t *b = json_array_get(js, 0), *e = json_array_get(js, 1);
    if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
        json_integer_value(e) < 0)
        return ds4_fail(err, "%s: tensor %s: \"data_offsets\" are not non-negative integers",
                        f->path, name);
    *begin = (uint64_t)json_integer_value(b);
    *end = (uint64_t)json_integer_value(e);
    if (*end < *begin)
        return ds4_fail(err, "%s: tensor %s: data_offsets [%llu, %llu] end before they begin",
                        f->path, name, (unsigned long long)*begin, (unsigned long long)*end);
    uint64_t data_size = f->size - f->data_offset;
    if (*end > data_size)
        return ds4_fail(err,
                        "%s: tensor %s: data_offsets [%llu, %llu] run past the data section "
                        "(%llu bytes)",
                        f->path, name, (unsigned long long)*begin, (unsigned long long)*end,
                        (unsigned long long)data_size);
    return 0;
}

static int parse_entry(const ds4_st_file *f, const char *name, json_t *obj, ds4_st_tensor *t,
                       uint64_t *begin, uint64_t *end, ds4_err *err) {
    if (!*name) return ds4_fail(err, "%s: a tensor has an empty name", f->path);
    if (!json_is_object(obj))
        return ds4_fail(err, "%s: tensor %s: entry is not a JSON object", f->path, name);
    json_t *jd = json_object_get(obj, "dtype");
    if (!json_is_string(jd))
        return ds4_fail(err, "%s: tensor %s: missing \"dtype\" string", f->path, name);
    if (parse_dtype(json_string_value(jd), &t->dtype))
        return ds4_fail(err, "%s: tensor %s: unknown dtype \"%.32s\"", f->path, name,
                        json_string_value(jd));
    json_t *js = json_object_get(obj, "shape");
    if (!js) return ds4_fail(err, "%s: tensor %s: missing \"shape\"", f->path, name);
    if (parse_shape(f, name, js, t, err)) return -1;
    json_t *jo = json_object_get(obj, "data_offsets");
    if (!jo) return ds4_fail(err, "%s: tensor %s: missing \"data_offsets\"", f->path, name);
    if (parse_offsets(f, name, jo, begin, end, err)) return -1;
    uint32_t es = ds4_st_dtype_size(t->dtype);
    if (t->n_elements > UINT64_MAX / es)
        return ds4_fail(err, "%s: tensor %s: byte size overflows", f->path, name);
    t->nbytes = t->n_elements * es;
    if (*end - *begin != t->nbytes)
        return ds4_fail(err,
                        "%s: tensor %s: %s shape needs %llu bytes, data_offsets [%llu, %llu] "
                        "hold %llu",
                        f->path, name, ds4_st_dtype_name(t->dtype),
                        (unsigned long long)t->nbytes, (unsigned long long)*begin,
                        (unsigned long long)*end, (unsigned long long)(*end - *begin));
    return 0;
}

typedef struct span {
    uint64_t begin, end;
    uint64_t index;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_tensor(const void *a, const void *b) {
    return strcmp(((const ds4_st_tensor *)a)->name, ((const ds4_st_tensor *)b)->name);
}

/* The byte ranges must tile [0, data size) exactly. */
static int check_tiling(const ds4_st_file *f, span *spans, uint64_t n, ds4_err *err) {
    qsort(spans, n, sizeof *spans, cmp_span);
    uint64_t pos = 0;
    for (uint64_t i = 0; i < n; i++) {
        const ds4_st_tensor *t = &f->tensors[spans[i].index];
        if (spans[i].begin < pos)
            return ds4_fail(err, "%s: tensor %s: data_offsets [%llu, %llu] overlap tensor %s",
                            f->path, t->name, (unsigned long long)spans[i].begin,
                            (unsigned long long)spans[i].end,
                            f->tensors[spans[i - 1].index].name);
        if (spans[i].begin > pos)
            return ds4_fail(err, "%s: tensor %s: data_offsets begin at %llu, leaving a gap after "
                            "byte %llu", f->path, t->name, (unsigned long long)spans[i].begin,
                            (unsigned long long)pos);
        pos = spans[i].end;
    }
    uint64_t data_size = f->size - f->data_offset;
    if (pos != data_size)
        return ds4_fail(err, "%s: the data section has %llu bytes but the tensors cover %llu",
                        f->path, (unsigned long long)data_size, (unsigned long long)pos);
    return 0;
}

static int parse_header(ds4_st_file *f, ds4_err *err) {
    if (f->size < 8)
        return ds4_fail(err, "%s: %llu bytes, too short for a safetensors header", f->path,
                        (unsigned long long)f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | f->base[i];
    if (hlen > f->size - 8)
        return ds4_fail(err, "%s: header length %llu exceeds the file (%llu bytes)", f->path,
                        (unsigned long long)hlen, (unsigned long long)f->size);
    if (hlen > DS4_ST_MAX_HEADER)
        return ds4_fail(err, "%s: header length %llu exceeds the %u-byte limit", f->path,
                        (unsigned long long)hlen, DS4_ST_MAX_HEADER);
    if (hlen < 2 || f->base[8] != '{')
        return ds4_fail(err, "%s: the header is not a JSON object", f->path);
    f->data_offset = 8 + hlen;

    json_error_t je;
    json_t *root = json_loadb((const char *)f->base + 8, hlen, JSON_REJECT_DUPLICATES, &je);
    if (!root)
        return ds4_fail(err, "%s: header JSON: %s (at byte %d of the header)", f->path, je.text,
                        je.position);
    int rc = -1;
    span *spans = NULL;
    if (!json_is_object(root)) {
        ds4_fail(err, "%s: the header is not a JSON object", f->path);
        goto out;
    }
    json_t *meta = json_object_get(root, "__metadata__");
    if (meta) {
        const char *k;
        json_t *v;
        if (!json_is_object(meta)) {
            ds4_fail(err, "%s: \"__metadata__\" is not an object", f->path);
            goto out;
        }
        json_object_foreach(meta, k, v) {
            if (!json_is_string(v)) {
                ds4_fail(err, "%s: __metadata__ value \"%.64s\" is not a string", f->path, k);
                goto out;
            }
        }
    }
    uint64_t n = json_object_size(root) - (meta ? 1 : 0);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    spans = calloc(n ? n : 1, sizeof *spans);
    if (!f->tensors || !spans) {
        ds4_fail(err, "%s: out of memory for %llu tensors", f->path, (unsigned long long)n);
        goto out;
    }
    const char *name;
    json_t *obj;
    json_object_foreach(root, name, obj) {
        if (!strcmp(name, "__metadata__")) continue;
        ds4_st_tensor *t = &f->tensors[f->n_tensors];
        if (parse_entry(f, name, obj, t, &spans[f->n_tensors].begin, &spans[f->n_tensors].end, err))
            goto out;
        t->name = strdup(name);
        if (!t->name) {
            ds4_fail(err, "%s: out of memory", f->path);
            goto out;
        }
        t->data = f->base + f->data_offset + spans[f->n_tensors].begin;
        spans[f->n_tensors].index = f->n_tensors;
        f->n_tensors++;
    }
    if (check_tiling(f, spans, f->n_tensors, err)) goto out;
    /* Data pointers were set before sorting; sorting moves whole structs. */
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_tensor);
    rc = 0;
out:
    free(spans);
    json_decref(root);
    return rc;
}

int ds4_st_open_memory(ds4_st_file *f, const void *buf, uint64_t size, const char *label,
                       ds4_err *err) {
    memset(f, 0, sizeof *f);
    f->path = strdup(label ? label : "(memory)");
    if (!f->path) return ds4_fail(err, "out of memory");
    f->base = buf;
    f->size = size;
    if (parse_header(f, err)) {
        ds4_st_close(f);
        return -1;
    }
    return 0;
}

int ds4_st_open(ds4_st_file *f, const char *path, ds4_err *err) {
    const void *map;
    memset(f, 0, sizeof *f);
    if (ds4_map_file(path, &map, &f->size, err)) return -1;
    f->base = map;
    f->mapped = true;
    f->path = strdup(path);
    if (!f->path) {
        ds4_st_close(f);
        return ds4_fail(err, "out of memory");
    }
    if (parse_header(f, err)) {
        ds4_st_close(f);
        return -1;
    }
    return 0;
}

const ds4_st_tensor *ds4_st_find(const ds4_st_file *f, const char *name) {
    uint64_t lo = 0, hi = f->n_tensors;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->tensors[mid].name);
        if (!c) return &f->tensors[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}
