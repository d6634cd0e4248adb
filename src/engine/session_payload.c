/* session_payload.c — save and load a session as the DS4 payload
 * (model-spec §7.3; the layout and the load checks are described in
 * session_payload.h).
 *
 * The sizes of every section follow from the header alone (N and the model
 * shape), so the loader computes the exact payload size before it reads any
 * row and refuses a payload whose size differs. Row counts are not trusted
 * either: N tokens through a ratio-R compressor give exactly floor(N/R) rows,
 * and anything else is a corrupt or foreign payload.
 *
 * A CUDA session keeps its state on the device in the CPU session's layout
 * (cuda_engine.h ds4_cuda_session_state), so the payload is the same: saving
 * first copies the state into the host session's buffers, which then serve
 * as staging, and loading copies them to the device after every check
 * passed. Payloads move freely between the backends. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/quant.h"
#include "engine_impl.h"
#include "session_payload.h"
#ifdef DS4_CUDA
#include "../backend/cuda/cuda_engine.h"
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the DS4 payload is little-endian; this file assumes a little-endian host"
#endif

enum {
    H_MAGIC, H_VERSION, H_CTX, H_PREFILL, H_RAW_CAP, H_RAW_WINDOW, H_COMP_CAP, H_TOKENS,
    H_LAYERS, H_HEAD_DIM, H_INDEX_DIM, H_VOCAB, H_RAW_LIVE
};

bool ds4_engine_exact_numerics(const ds4_engine *e) { return e->exact; }

static uint32_t min_u32(uint32_t a, uint32_t b) { return a < b ? a : b; }

/* Logical raw window: the model's sliding window, or ctx if smaller. */
static uint32_t raw_window(const ds4_hparams *hp, uint32_t ctx) { return min_u32(hp->n_swa, ctx); }

/* A one-row f32 buffer wide enough for any row kind. */
static float *row_buffer(const ds4_hparams *hp) {
    uint32_t w = hp->head_dim > hp->indexer_head_dim ? hp->head_dim : hp->indexer_head_dim;
    return malloc((size_t)w * sizeof(float));
}

static uint64_t state_floats(const comp_state *st) { return (uint64_t)st->coff * st->ratio * st->width; }

/* Bytes of the body for n tokens, from the model shape alone. */
static uint64_t payload_bytes_for(const ds4_engine *e, uint32_t n, uint32_t raw_live) {
    const ds4_hparams *hp = &e->model.hp;
    uint64_t hd = hp->head_dim, ihd = hp->indexer_head_dim;
    uint64_t b = 4ull * DS4_PAYLOAD_HEADER_U32 + 4ull * n + 4ull * hp->n_vocab + 8ull * hp->n_layer;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint64_t r = e->model.layers[il].compress_ratio;
        b += 4ull * raw_live * hd;
        if (r) {
            uint64_t coff = r == 4 ? 2 : 1;
            b += 4ull * (n / r) * hd + 2 * 4ull * coff * r * coff * hd;
        }
        if (r == 4) b += 4ull * (n / 4) * ihd + 2 * 4ull * 2 * 4 * 2 * ihd;
    }
    return b;
}

uint64_t ds4_session_payload_bytes(const ds4_session *s) {
    uint32_t n = (uint32_t)s->n_tokens;
    return payload_bytes_for(s->e, n, min_u32(n, raw_window(&s->e->model.hp, (uint32_t)s->e->ctx)));
}

/* ------------------------------------------------------------ cuda state */

/* Copies a CUDA session's state between the device and the host session's
 * buffers (upload: to the device): every layer's raw ring, the compressed
 * and indexer rows that n_tokens produce, and the frontiers. A download
 * also sets the row counts, which only the device tracks. */
static int cuda_state_copy(const ds4_session *s, bool upload, ds4_err *err) {
#ifdef DS4_CUDA
    const ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    uint32_t n = (uint32_t)s->n_tokens;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        layer_kv *L = &s->layers[il];
        uint32_t r = e->model.layers[il].compress_ratio;
        struct state_buf { const char *name; void *p; size_t bytes; } b[7];
        int nb = 0;
        size_t el = L->raw.f16 ? 2 : 4; /* f32 rows in exact mode, on both backends */
        b[nb++] = (struct state_buf){"raw", L->raw.data, (size_t)L->raw.cap * L->raw.width * el};
        if (r) {
            size_t st = state_floats(&L->comp_st) * sizeof(float);
            b[nb++] = (struct state_buf){"comp", L->comp.data, (size_t)(n / r) * L->comp.width * el};
            b[nb++] = (struct state_buf){"comp_kv", L->comp_st.kv, st};
            b[nb++] = (struct state_buf){"comp_score", L->comp_st.score, st};
        }
        if (r == 4) {
            size_t st = state_floats(&L->index_st) * sizeof(float);
            b[nb++] = (struct state_buf){"index", L->index_comp.data, (size_t)(n / 4) * L->index_comp.width * el};
            b[nb++] = (struct state_buf){"index_kv", L->index_st.kv, st};
            b[nb++] = (struct state_buf){"index_score", L->index_st.score, st};
        }
        for (int i = 0; i < nb; i++)
            if (ds4_cuda_session_state(s->cuda, il, b[i].name, b[i].p, b[i].bytes, upload, err)) return -1;
        if (!upload) {
            L->n_comp = r ? n / r : 0;
            L->n_index_comp = r == 4 ? n / 4 : 0;
        }
    }
    return 0;
#else
    return ds4_fail(err, "internal: a cuda session in a build without CUDA");
#endif
}

/* ------------------------------------------------------------------ save */

static int put(ds4_writer *w, const void *p, size_t n, ds4_err *err) {
    if (n && w->write(w->ctx, p, n) != 0) return ds4_fail(err, "payload write failed");
    return 0;
}

static int put_rows(ds4_writer *w, const kv_rows *rows, uint32_t first, uint32_t count, uint32_t ring,
                    float *tmp, ds4_err *err) {
    for (uint32_t i = 0; i < count; i++) {
        uint32_t at = ring ? (first + i) % ring : first + i;
        kv_rows_get(rows, at, tmp);
        if (put(w, tmp, rows->width * sizeof(float), err)) return -1;
    }
    return 0;
}

static int put_state(ds4_writer *w, const comp_state *st, ds4_err *err) {
    size_t bytes = state_floats(st) * sizeof(float);
    return put(w, st->kv, bytes, err) || put(w, st->score, bytes, err) ? -1 : 0;
}

int ds4_session_save_payload(const ds4_session *s, ds4_writer *w, ds4_err *err) {
    const ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    uint32_t n = (uint32_t)s->n_tokens, ctx = (uint32_t)e->ctx;
    if (s->cuda && n < ctx && cuda_state_copy(s, false, err)) return ds4_fail_prefix(err, "session save");
    if (n >= ctx)
        return ds4_fail(err, "session holds %u tokens, the whole context of %u: a full context cannot be "
                        "continued, so it is not saved", n, ctx);
    uint32_t window = raw_window(hp, ctx), raw_live = min_u32(n, window);
    uint32_t h[DS4_PAYLOAD_HEADER_U32] = {
        [H_MAGIC] = DS4_PAYLOAD_MAGIC, [H_VERSION] = DS4_PAYLOAD_VERSION, [H_CTX] = ctx,
        [H_PREFILL] = (uint32_t)e->chunk, [H_RAW_CAP] = hp->n_swa, [H_RAW_WINDOW] = window,
        [H_COMP_CAP] = ctx / 4 + 2, [H_TOKENS] = n, [H_LAYERS] = hp->n_layer,
        [H_HEAD_DIM] = hp->head_dim, [H_INDEX_DIM] = hp->indexer_head_dim, [H_VOCAB] = hp->n_vocab,
        [H_RAW_LIVE] = raw_live,
    };
    if (session_logits_ready(s, err) || put(w, h, sizeof h, err) || put(w, s->tokens, 4ull * n, err) ||
        put(w, s->logits, 4ull * hp->n_vocab, err))
        return -1;
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if (put(w, &s->layers[il].n_comp, 4, err)) return -1;
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if (put(w, &s->layers[il].n_index_comp, 4, err)) return -1;
    float *tmp = row_buffer(hp);
    if (!tmp) return ds4_fail(err, "out of memory");
    int rc = 0;
    for (uint32_t il = 0; il < hp->n_layer && rc == 0; il++) {
        const layer_kv *L = &s->layers[il];
        uint32_t r = e->model.layers[il].compress_ratio;
        rc = put_rows(w, &L->raw, n - raw_live, raw_live, hp->n_swa, tmp, err);
        if (rc == 0 && r)
            rc = put_rows(w, &L->comp, 0, L->n_comp, 0, tmp, err) || put_state(w, &L->comp_st, err) ? -1 : 0;
        if (rc == 0 && r == 4)
            rc = put_rows(w, &L->index_comp, 0, L->n_index_comp, 0, tmp, err) ||
                         put_state(w, &L->index_st, err) ? -1 : 0;
    }
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------ load */

static int get(ds4_reader *r, void *p, size_t n, ds4_err *err) {
    if (n && r->read(r->ctx, p, n) != 0) return ds4_fail(err, "payload truncated");
    return 0;
}

static bool f16_exact(float v) { return ds4_f16_to_f32(ds4_f32_to_f16(v)) == v; }

/* One row of floats: finite, and representable when stored as f16. */
static int get_rows(ds4_reader *r, kv_rows *rows, uint32_t first, uint32_t count, uint32_t ring,
                    float *tmp, const char *what, uint32_t il, ds4_err *err) {
    for (uint32_t i = 0; i < count; i++) {
        if (get(r, tmp, rows->width * sizeof(float), err)) return -1;
        for (uint32_t k = 0; k < rows->width; k++) {
            if (!isfinite(tmp[k]))
                return ds4_fail(err, "layer %u %s row %u holds a non-finite value", il, what, i);
            if (rows->f16 && !f16_exact(tmp[k]))
                return ds4_fail(err, "layer %u %s row %u holds %g, not an f16 value (a payload of an "
                                "exact-numerics session?)", il, what, i, (double)tmp[k]);
        }
        kv_rows_put(rows, ring ? (first + i) % ring : first + i, tmp);
    }
    return 0;
}

static int get_state(ds4_reader *r, comp_state *st, const char *what, uint32_t il, ds4_err *err) {
    size_t n = state_floats(st);
    if (get(r, st->kv, n * sizeof(float), err) || get(r, st->score, n * sizeof(float), err)) return -1;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(st->kv[i]) || isnan(st->score[i]) || st->score[i] == INFINITY)
            return ds4_fail(err, "layer %u %s state holds an invalid value", il, what);
    return 0;
}

/* Header checks against this engine and the model. */
static int check_header(const ds4_engine *e, const uint32_t *h, ds4_err *err) {
    const ds4_hparams *hp = &e->model.hp;
    uint32_t ctx = (uint32_t)e->ctx;
    if (h[H_MAGIC] != DS4_PAYLOAD_MAGIC) return ds4_fail(err, "not a DS4 session payload (bad magic)");
    if (h[H_VERSION] != DS4_PAYLOAD_VERSION)
        return ds4_fail(err, "payload version %u is not supported (expected %u)", h[H_VERSION],
                        DS4_PAYLOAD_VERSION);
    if (h[H_CTX] == 0 || h[H_CTX] > ctx)
        return ds4_fail(err, "payload was saved with ctx %u; this engine's ctx is %u", h[H_CTX], ctx);
    if (h[H_TOKENS] >= ctx || h[H_TOKENS] > h[H_CTX])
        return ds4_fail(err, "payload holds %u tokens; ctx is %u (saved with %u)", h[H_TOKENS], ctx,
                        h[H_CTX]);
    if (h[H_LAYERS] != hp->n_layer || h[H_HEAD_DIM] != hp->head_dim ||
        h[H_INDEX_DIM] != hp->indexer_head_dim || h[H_VOCAB] != hp->n_vocab)
        return ds4_fail(err, "payload shape (layers %u, head dim %u, indexer dim %u, vocab %u) differs from "
                        "the model (%u, %u, %u, %u)", h[H_LAYERS], h[H_HEAD_DIM], h[H_INDEX_DIM],
                        h[H_VOCAB], hp->n_layer, hp->head_dim, hp->indexer_head_dim, hp->n_vocab);
    if (h[H_PREFILL] == 0 || h[H_PREFILL] > h[H_CTX])
        return ds4_fail(err, "payload prefill chunk %u is outside 1..%u", h[H_PREFILL], h[H_CTX]);
    uint32_t window = raw_window(hp, h[H_CTX]);
    if (h[H_RAW_WINDOW] != window)
        return ds4_fail(err, "payload raw window %u differs from the model's %u", h[H_RAW_WINDOW], window);
    if (h[H_RAW_CAP] < window || h[H_RAW_LIVE] != min_u32(h[H_TOKENS], window))
        return ds4_fail(err, "payload raw rows (cap %u, live %u) are inconsistent with %u tokens",
                        h[H_RAW_CAP], h[H_RAW_LIVE], h[H_TOKENS]);
    if (h[H_COMP_CAP] > ctx / 4 + 2)
        return ds4_fail(err, "payload compressed capacity %u exceeds this engine's %u", h[H_COMP_CAP],
                        ctx / 4 + 2);
    return 0;
}

static int load_body(ds4_session *s, ds4_reader *r, uint64_t nbytes, ds4_err *err) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    uint32_t h[DS4_PAYLOAD_HEADER_U32];
    if (nbytes < sizeof h) return ds4_fail(err, "payload of %llu bytes is shorter than its header",
                                           (unsigned long long)nbytes);
    if (get(r, h, sizeof h, err) || check_header(e, h, err)) return -1;
    uint32_t n = h[H_TOKENS], raw_live = h[H_RAW_LIVE];
    uint64_t want = payload_bytes_for(e, n, raw_live);
    if (nbytes != want)
        return ds4_fail(err, "payload is %llu bytes; %u tokens of this model take exactly %llu",
                        (unsigned long long)nbytes, n, (unsigned long long)want);
    if (get(r, s->tokens, 4ull * n, err)) return -1;
    for (uint32_t i = 0; i < n; i++)
        if (s->tokens[i] < 0 || (uint32_t)s->tokens[i] >= hp->n_vocab)
            return ds4_fail(err, "payload token %u is %d, outside the vocabulary of %u", i, s->tokens[i],
                            hp->n_vocab);
#ifdef DS4_CUDA
    if (s->cuda) ds4_cuda_session_logits_replaced(s->cuda); /* the device's are not these */
#endif
    if (get(r, s->logits, 4ull * hp->n_vocab, err)) return -1;
    for (uint32_t i = 0; i < hp->n_vocab; i++)
        if (!isfinite(s->logits[i])) return ds4_fail(err, "payload logit %u is not finite", i);
    uint32_t counts[2 * DS4_MAX_LAYERS];
    if (get(r, counts, 8ull * hp->n_layer, err)) return -1;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t ratio = e->model.layers[il].compress_ratio;
        uint32_t comp = ratio ? n / ratio : 0, index = ratio == 4 ? n / 4 : 0;
        if (counts[il] != comp || counts[hp->n_layer + il] != index)
            return ds4_fail(err, "layer %u: payload has %u compressed and %u indexer rows; %u tokens give "
                            "%u and %u", il, counts[il], counts[hp->n_layer + il], n, comp, index);
    }
    float *tmp = row_buffer(hp);
    if (!tmp) return ds4_fail(err, "out of memory");
    int rc = 0;
    for (uint32_t il = 0; il < hp->n_layer && rc == 0; il++) {
        layer_kv *L = &s->layers[il];
        uint32_t ratio = e->model.layers[il].compress_ratio;
        rc = get_rows(r, &L->raw, n - raw_live, raw_live, hp->n_swa, tmp, "raw", il, err);
        if (rc == 0 && ratio) {
            rc = get_rows(r, &L->comp, 0, counts[il], 0, tmp, "compressed", il, err) ||
                         get_state(r, &L->comp_st, "compressor", il, err) ? -1 : 0;
            L->n_comp = counts[il];
        }
        if (rc == 0 && ratio == 4) {
            rc = get_rows(r, &L->index_comp, 0, counts[hp->n_layer + il], 0, tmp, "indexer", il, err) ||
                         get_state(r, &L->index_st, "indexer compressor", il, err) ? -1 : 0;
            L->n_index_comp = counts[hp->n_layer + il];
        }
    }
    free(tmp);
    if (rc == 0) s->n_tokens = (int)n;
    return rc;
}

int ds4_session_load_payload(ds4_session *s, ds4_reader *r, uint64_t nbytes, ds4_err *err) {
    ds4_session_reset(s);
    if (load_body(s, r, nbytes, err) == 0 && (!s->cuda || cuda_state_copy(s, true, err) == 0)) return 0;
    ds4_session_reset(s);
    return ds4_fail_prefix(err, "session payload");
}

/* ---------------------------------------------------------------- memory */

typedef struct mem_stream {
    uint8_t *p;
    size_t len, cap, pos; /* len: bytes held; cap: room for writing; pos: next byte read */
} mem_stream;

static int mem_write(void *ctx, const void *buf, size_t n) {
    mem_stream *m = ctx;
    if (n > m->cap - m->len) return -1;
    memcpy(m->p + m->len, buf, n);
    m->len += n;
    return 0;
}

static int mem_read(void *ctx, void *buf, size_t n) {
    mem_stream *m = ctx;
    if (n > m->len - m->pos) return -1;
    memcpy(buf, m->p + m->pos, n);
    m->pos += n;
    return 0;
}

int ds4_session_save_payload_mem(const ds4_session *s, void *buf, size_t cap, size_t *len, ds4_err *err) {
    mem_stream m = {.p = buf, .cap = cap};
    ds4_writer w = {.write = mem_write, .ctx = &m};
    int rc = ds4_session_save_payload(s, &w, err);
    *len = m.len;
    return rc;
}

int ds4_session_load_payload_mem(ds4_session *s, const void *buf, size_t len, ds4_err *err) {
    mem_stream m = {.p = (uint8_t *)buf, .len = len};
    ds4_reader r = {.read = mem_read, .ctx = &m};
    return ds4_session_load_payload(s, &r, len, err);
}
