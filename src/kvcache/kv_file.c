/* kv_file.c — encoding and checking the pieces of a `.kv` file (layout in
 * kvcache.h): the fixed header, the KTM tool-id map, our integrity section,
 * and a buffered file stream that hashes what passes through it so a file
 * is checksummed while it is written or loaded, never in a second pass. */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kv_internal.h"

#define STREAM_BUF (1u << 20)

void kv_put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

void kv_put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

uint32_t kv_get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

uint64_t kv_get64(const uint8_t *p) { return (uint64_t)kv_get32(p) | (uint64_t)kv_get32(p + 4) << 32; }

void kv_hex20(const uint8_t d[20], char out[41]) {
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 20; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[40] = '\0';
}

void kv_sha1_hex(const void *p, size_t n, char out[41]) {
    uint8_t d[20];
    SHA1(p, n, d);
    kv_hex20(d, out);
}

/* ---------------------------------------------------------------- header */

void kv_header_encode(const kv_header *h, uint8_t out[DS4_KVC_FIXED_BYTES]) {
    memset(out, 0, DS4_KVC_FIXED_BYTES);
    memcpy(out, "KVC", 3);
    out[3] = DS4_KVC_VERSION;
    out[4] = h->quant_bits;
    out[5] = h->reason;
    out[6] = h->ext_flags;
    kv_put32(out + 8, h->tokens);
    kv_put32(out + 12, h->hits);
    kv_put32(out + 16, h->ctx);
    kv_put64(out + 24, h->created);
    kv_put64(out + 32, h->last_used);
    kv_put64(out + 40, h->payload_bytes);
    kv_put32(out + 48, h->text_bytes);
}

const char *kv_header_decode(const uint8_t in[DS4_KVC_FIXED_BYTES], kv_header *h) {
    if (memcmp(in, "KVC", 3) != 0) return "bad magic";
    if (in[3] != DS4_KVC_VERSION) return "unsupported version";
    h->quant_bits = in[4];
    h->reason = in[5];
    h->ext_flags = in[6];
    h->tokens = kv_get32(in + 8);
    h->hits = kv_get32(in + 12);
    h->ctx = kv_get32(in + 16);
    h->created = kv_get64(in + 24);
    h->last_used = kv_get64(in + 32);
    h->payload_bytes = kv_get64(in + 40);
    h->text_bytes = kv_get32(in + 48);
    if (h->quant_bits != 2 && h->quant_bits != 4) return "quant bits not 2 or 4";
    if (h->tokens == 0) return "zero tokens";
    return NULL;
}

void kv_header_for_digest(const uint8_t in[DS4_KVC_FIXED_BYTES], uint8_t out[DS4_KVC_FIXED_BYTES]) {
    memcpy(out, in, DS4_KVC_FIXED_BYTES);
    memset(out + 12, 0, 4);
    memset(out + 32, 0, 8);
}

/* ------------------------------------------------------------- integrity */

void kv_integrity_encode(const kv_integrity *s, uint8_t out[DS4_KVC_INTEGRITY_BYTES]) {
    memcpy(out, "KVX", 3);
    out[3] = 1;
    kv_put32(out + 4, s->flags);
    memcpy(out + 8, s->model_id, 20);
    kv_put64(out + 28, s->covered);
    memcpy(out + 36, s->digest, 20);
}

const char *kv_integrity_decode(const uint8_t in[DS4_KVC_INTEGRITY_BYTES], kv_integrity *s) {
    if (memcmp(in, "KVX", 3) != 0) return "integrity section missing";
    if (in[3] != 1) return "unsupported integrity section version";
    s->flags = kv_get32(in + 4);
    memcpy(s->model_id, in + 8, 20);
    s->covered = kv_get64(in + 28);
    memcpy(s->digest, in + 36, 20);
    return NULL;
}

const char *kv_layout_check(const kv_header *h, const kv_integrity *s, uint64_t file_size,
                            uint64_t *ktm_bytes) {
    if (file_size < DS4_KVC_FIXED_BYTES + DS4_KVC_INTEGRITY_BYTES) return "truncated";
    if (s->covered != file_size - DS4_KVC_INTEGRITY_BYTES) return "integrity section misplaced (truncated?)";
    uint64_t body = DS4_KVC_FIXED_BYTES + (uint64_t)h->text_bytes;
    if (h->payload_bytes > s->covered || body > s->covered - h->payload_bytes) return "truncated";
    uint64_t ktm = s->covered - body - h->payload_bytes;
    if (!(h->ext_flags & DS4_KVC_EXT_TOOL_MAP) && ktm != 0) return "unexpected bytes after the payload";
    if ((h->ext_flags & DS4_KVC_EXT_TOOL_MAP) && ktm < 8) return "tool-id map truncated";
    *ktm_bytes = ktm;
    return NULL;
}

/* ------------------------------------------------------------------- KTM */

static bool ktm_entry_ok(size_t id_len, size_t dsml_len) {
    return id_len >= 1 && id_len <= KV_KTM_MAX_ID && dsml_len >= 1 && dsml_len <= KV_KTM_MAX_DSML;
}

int kv_ktm_encode(const ds4_kvcache_tool_id *ids, int n, const char *text, size_t text_len, uint8_t **out,
                  size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    size_t bytes = 8;
    uint32_t count = 0;
    for (int i = 0; i < n; i++) {
        if (!ktm_entry_ok(ids[i].id_len, ids[i].dsml_len) ||
            !memmem(text, text_len, ids[i].dsml, ids[i].dsml_len))
            continue;
        bytes += 8 + ids[i].id_len + ids[i].dsml_len;
        count++;
    }
    if (count == 0) return 0;
    uint8_t *b = malloc(bytes), *p = b;
    if (!b) return -1;
    memcpy(p, "KTM", 3);
    p[3] = 1;
    kv_put32(p + 4, count);
    p += 8;
    for (int i = 0; i < n; i++) {
        if (!ktm_entry_ok(ids[i].id_len, ids[i].dsml_len) ||
            !memmem(text, text_len, ids[i].dsml, ids[i].dsml_len))
            continue;
        kv_put32(p, (uint32_t)ids[i].id_len);
        kv_put32(p + 4, (uint32_t)ids[i].dsml_len);
        memcpy(p + 8, ids[i].id, ids[i].id_len);
        memcpy(p + 8 + ids[i].id_len, ids[i].dsml, ids[i].dsml_len);
        p += 8 + ids[i].id_len + ids[i].dsml_len;
    }
    *out = b;
    *out_len = bytes;
    return 0;
}

void kv_tool_ids_free(ds4_kvcache_tool_id *ids, int n) {
    for (int i = 0; i < n && ids; i++) {
        free(ids[i].id);
        free(ids[i].dsml);
    }
    free(ids);
}

static char *dup_bytes(const uint8_t *p, size_t n) {
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

const char *kv_ktm_decode(const uint8_t *in, size_t len, int max_ids, ds4_kvcache_tool_id **ids, int *n) {
    *ids = NULL;
    *n = 0;
    if (len < 8 || memcmp(in, "KTM", 3) != 0 || in[3] != 1) return "bad tool-id map header";
    uint32_t count = kv_get32(in + 4);
    if (count == 0 || count > 4ull * (uint64_t)max_ids) return "tool-id map count out of range";
    if (count > (len - 8) / 10) return "tool-id map count exceeds its bytes";
    ds4_kvcache_tool_id *out = calloc(count, sizeof *out);
    if (!out) return "out of memory";
    size_t off = 8;
    const char *why = NULL;
    uint32_t i = 0;
    for (; i < count && !why; i++) {
        if (len - off < 8) {
            why = "tool-id map truncated";
            break;
        }
        size_t id_len = kv_get32(in + off), dsml_len = kv_get32(in + off + 4);
        off += 8;
        if (!ktm_entry_ok(id_len, dsml_len)) why = "tool-id map entry size out of range";
        else if (len - off < id_len + dsml_len) why = "tool-id map truncated";
        else {
            out[i].id = dup_bytes(in + off, id_len);
            out[i].dsml = dup_bytes(in + off + id_len, dsml_len);
            out[i].id_len = id_len;
            out[i].dsml_len = dsml_len;
            if (!out[i].id || !out[i].dsml) why = "out of memory";
            off += id_len + dsml_len;
        }
    }
    if (!why && off != len) why = "bytes after the tool-id map";
    if (why) {
        kv_tool_ids_free(out, (int)count);
        return why;
    }
    *ids = out;
    *n = (int)count;
    return NULL;
}

/* ---------------------------------------------------------------- stream */

int kv_stream_init(kv_stream *s, int fd) {
    memset(s, 0, sizeof *s);
    s->fd = fd;
    s->limit = UINT64_MAX;
    s->buf = malloc(STREAM_BUF);
    s->cap = STREAM_BUF;
    s->md = EVP_MD_CTX_new();
    if (!s->buf || !s->md || EVP_DigestInit_ex(s->md, EVP_sha1(), NULL) != 1) {
        kv_stream_free(s);
        errno = ENOMEM;
        return -1;
    }
    return 0;
}

void kv_stream_free(kv_stream *s) {
    free(s->buf);
    EVP_MD_CTX_free(s->md);
    s->buf = NULL;
    s->md = NULL;
}

void kv_stream_hash(kv_stream *s, const void *p, size_t n) { EVP_DigestUpdate(s->md, p, n); }

void kv_stream_digest(kv_stream *s, uint8_t out[20]) {
    unsigned int len = 0;
    EVP_DigestFinal_ex(s->md, out, &len);
}

int kv_stream_flush(kv_stream *s) {
    size_t done = 0;
    while (done < s->len) {
        ssize_t w = write(s->fd, s->buf + done, s->len - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            s->saved_errno = w < 0 ? errno : EIO;
            return -1;
        }
        done += (size_t)w;
    }
    s->len = 0;
    return 0;
}

int kv_stream_write_raw(kv_stream *s, const void *p, size_t n) {
    const uint8_t *b = p;
    while (n) {
        if (s->len == s->cap && kv_stream_flush(s)) return -1;
        size_t k = s->cap - s->len < n ? s->cap - s->len : n;
        memcpy(s->buf + s->len, b, k);
        s->len += k;
        s->offset += k;
        b += k;
        n -= k;
    }
    return 0;
}

int kv_stream_write(kv_stream *s, const void *p, size_t n) {
    kv_stream_hash(s, p, n);
    return kv_stream_write_raw(s, p, n);
}

int kv_stream_read_raw(kv_stream *s, void *p, size_t n) {
    if (n > s->limit) return -1;
    uint8_t *b = p;
    while (n) {
        if (s->pos == s->len) {
            ssize_t r = read(s->fd, s->buf, s->cap);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                s->saved_errno = r < 0 ? errno : 0;
                return -1;
            }
            s->pos = 0;
            s->len = (size_t)r;
        }
        size_t k = s->len - s->pos < n ? s->len - s->pos : n;
        memcpy(b, s->buf + s->pos, k);
        s->pos += k;
        s->offset += k;
        if (s->limit != UINT64_MAX) s->limit -= k;
        b += k;
        n -= k;
    }
    return 0;
}

int kv_stream_read(kv_stream *s, void *p, size_t n) {
    if (kv_stream_read_raw(s, p, n)) return -1;
    kv_stream_hash(s, p, n);
    return 0;
}

static int writer_fn(void *ctx, const void *buf, size_t n) { return kv_stream_write(ctx, buf, n); }
static int reader_fn(void *ctx, void *buf, size_t n) { return kv_stream_read(ctx, buf, n); }

ds4_writer kv_stream_writer(kv_stream *s) { return (ds4_writer){.write = writer_fn, .ctx = s}; }
ds4_reader kv_stream_reader(kv_stream *s) { return (ds4_reader){.read = reader_fn, .ctx = s}; }
