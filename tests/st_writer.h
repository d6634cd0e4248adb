/* st_writer.h — a test-side safetensors writer (header-only).
 *
 * Written from the format description (u64 header length, JSON header with
 * dtype / shape / data_offsets, data section), independently of the
 * library's reader, so the reader is tested against a second
 * implementation. Tensors are laid out in insertion order; the header is
 * padded with spaces to a multiple of 8 as the reference writer does.
 * st_header_bytes() builds a file from a raw header string, for tests of
 * malformed files. */
#ifndef DS4_TEST_ST_WRITER_H
#define DS4_TEST_ST_WRITER_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct st_entry {
    char name[200];
    char dtype[16];
    uint32_t nd;
    uint64_t shape[4];
    uint8_t *data;
    uint64_t nbytes;
} st_entry;

typedef struct st_writer {
    st_entry *e;
    size_t n, cap;
} st_writer;

static void st_add(st_writer *w, const char *name, const char *dtype, uint32_t nd,
                   const uint64_t *shape, const void *data, uint64_t nbytes) {
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->e = realloc(w->e, w->cap * sizeof *w->e);
        if (!w->e) abort();
    }
    st_entry *e = &w->e[w->n++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->dtype, sizeof e->dtype, "%s", dtype);
    e->nd = nd;
    memcpy(e->shape, shape, nd * sizeof *shape);
    e->data = malloc(nbytes ? nbytes : 1);
    if (!e->data) abort();
    memcpy(e->data, data, nbytes);
    e->nbytes = nbytes;
}

/* Removes an entry by name (for "missing tensor" tests); returns 1 if found. */
static int st_remove(st_writer *w, const char *name) {
    for (size_t i = 0; i < w->n; i++) {
        if (strcmp(w->e[i].name, name)) continue;
        free(w->e[i].data);
        memmove(&w->e[i], &w->e[i + 1], (w->n - i - 1) * sizeof *w->e);
        w->n--;
        return 1;
    }
    return 0;
}

static st_entry *st_get(st_writer *w, const char *name) {
    for (size_t i = 0; i < w->n; i++)
        if (!strcmp(w->e[i].name, name)) return &w->e[i];
    return NULL;
}

static void st_free(st_writer *w) {
    for (size_t i = 0; i < w->n; i++) free(w->e[i].data);
    free(w->e);
    memset(w, 0, sizeof *w);
}

/* Writes entries [first, last) as one file; returns 0 on success. */
static int st_write_range(const st_writer *w, size_t first, size_t last, const char *path) {
    json_t *root = json_object();
    json_object_set_new(root, "__metadata__", json_pack("{s:s}", "format", "pt"));
    uint64_t off = 0;
    for (size_t i = first; i < last; i++) {
        const st_entry *e = &w->e[i];
        json_t *shape = json_array();
        for (uint32_t d = 0; d < e->nd; d++) json_array_append_new(shape, json_integer((json_int_t)e->shape[d]));
        json_object_set_new(root, e->name,
                            json_pack("{s:s,s:o,s:[I,I]}", "dtype", e->dtype, "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + e->nbytes)));
        off += e->nbytes;
    }
    char *hdr = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (!hdr) return -1;
    size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    int rc = f ? 0 : -1;
    if (f) {
        uint8_t len[8];
        for (int i = 0; i < 8; i++) len[i] = (uint8_t)((uint64_t)padded >> (8 * i));
        fwrite(len, 1, 8, f);
        fwrite(hdr, 1, hl, f);
        for (size_t i = hl; i < padded; i++) fputc(' ', f);
        for (size_t i = first; i < last; i++) fwrite(w->e[i].data, 1, w->e[i].nbytes, f);
        rc = fclose(f) ? -1 : 0;
    }
    free(hdr);
    return rc;
}

static int st_write(const st_writer *w, const char *path) {
    return st_write_range(w, 0, w->n, path);
}

/* A file image: declared header length `hlen`, header text, then `data_len`
 * bytes of 0x11. The caller frees it; *size receives its length. */
static uint8_t *st_header_bytes(uint64_t hlen, const char *header, uint64_t data_len,
                                uint64_t *size) {
    size_t h = strlen(header);
    *size = 8 + h + data_len;
    uint8_t *b = malloc(*size ? *size : 1);
    if (!b) abort();
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(hlen >> (8 * i));
    memcpy(b + 8, header, h);
    memset(b + 8 + h, 0x11, data_len);
    return b;
}

#endif
