/* test_kvcache_session.c — the DS4 session payload and the disk cache on a
 * tiny synthetic model (window 16, ratios 4 and 16, so 200 tokens slide the
 * window, emit compressed and indexer rows and run indexer selections).
 *
 *  (a) a payload's header and sections match model-spec §7.3, checked by a
 *      reader written here from the spec (field values, the size of every
 *      section, tokens, logits, row counts, raw rows in logical order);
 *  (b) save → load into a fresh session → evaluating more tokens gives
 *      bit-identical logits to the uninterrupted session, in the official
 *      and the exact numerics, and (official) in an engine with another
 *      prefill chunk and a larger ctx;
 *  (c) the loader refuses every truncation, a trailing byte, each header
 *      field made inconsistent, a wrong row count, a NaN, a non-f16 row
 *      value, an out-of-vocabulary token, a smaller ctx, and an
 *      exact-numerics payload in an official-numerics session; the session
 *      is then empty and still usable; of 1000 random mutants each is
 *      refused or re-saves to exactly its own bytes;
 *  (d) through the disk cache: save, restart (new store, new session),
 *      lookup by text prefix, continue → identical logits; a model with
 *      other weights does not use the file and removes it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/engine/engine_impl.h"
#include "../src/engine/session_payload.h"
#include "../src/kvcache/kvcache.h"
#include "engine_fixture.h"
#include "testutil.h"

#define N_PROMPT 200
#define N_MORE 12
#define N_REFUSE 80 /* the refusal cases need a valid payload, not a long one */

/* ------------------------------------------------------ saved payloads */

typedef struct membuf {
    uint8_t *p;
    size_t len;
} membuf;

static membuf save_payload(ds4_session *s) {
    size_t cap = (size_t)ds4_session_payload_bytes(s);
    membuf m = {.p = malloc(cap ? cap : 1)};
    ds4_err err;
    if (ds4_session_save_payload_mem(s, m.p, cap, &m.len, &err)) fprintf(stderr, "save: %s\n", err.msg);
    return m;
}

static uint32_t u32_at(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* ---------------------------------------------------- (a) spec reader */

static void check_layout(ds4_engine *e, ds4_session *s, const membuf *m, const int32_t *prompt, uint32_t n,
                         int chunk, int ctx) {
    const ds4_hparams *hp = &ds4_engine_model(e)->hp;
    const uint8_t *b = m->p;
    uint32_t h[13];
    for (int i = 0; i < 13; i++) h[i] = u32_at(b + 4 * i);
    uint32_t window = hp->n_swa < (uint32_t)ctx ? hp->n_swa : (uint32_t)ctx;
    CHECK(h[0] == 0x34565344u && h[1] == 1, "magic DSV4, version 1");
    CHECK(h[2] == (uint32_t)ctx && h[3] == (uint32_t)chunk && h[4] == hp->n_swa && h[5] == window &&
              h[6] == (uint32_t)ctx / 4 + 2,
          "ctx %u chunk %u raw cap %u window %u comp cap %u", h[2], h[3], h[4], h[5], h[6]);
    CHECK(h[7] == n && h[8] == hp->n_layer && h[9] == hp->head_dim && h[10] == hp->indexer_head_dim &&
              h[11] == hp->n_vocab && h[12] == window,
          "tokens, layers, dims, vocab, raw live");
    const uint8_t *p = b + 52;
    CHECK(memcmp(p, prompt, 4ull * n) == 0, "token ids");
    p += 4ull * n;
    CHECK(memcmp(p, ds4_session_logits(s), 4ull * hp->n_vocab) == 0, "next-token logits");
    p += 4ull * hp->n_vocab;
    uint64_t rows_bytes = 0;
    bool counts_ok = true;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = ds4_engine_model(e)->layers[il].compress_ratio;
        uint32_t nc = u32_at(p + 4 * il), ni = u32_at(p + 4 * (hp->n_layer + il));
        counts_ok &= nc == (r ? n / r : 0) && ni == (r == 4 ? n / 4 : 0);
        uint64_t coff = r == 4 ? 2 : 1;
        rows_bytes += 4ull * window * hp->head_dim;
        if (r) rows_bytes += 4ull * nc * hp->head_dim + 2 * 4ull * (coff * r) * (coff * hp->head_dim);
        if (r == 4) rows_bytes += 4ull * ni * hp->indexer_head_dim + 2 * 4ull * 8 * (2 * hp->indexer_head_dim);
    }
    CHECK(counts_ok, "n_comp = N/ratio, n_index_comp = N/4 on ratio-4 layers");
    p += 8ull * hp->n_layer;
    CHECK((uint64_t)(p - b) + rows_bytes == m->len && m->len == ds4_session_payload_bytes(s),
          "sections add up to the payload size (%zu)", m->len);
    /* layer 0's raw rows are positions N-16..N-1 in order */
    bool raw_ok = true;
    float row[1024];
    for (uint32_t i = 0; i < window; i++) {
        kv_rows_get(&s->layers[0].raw, (n - window + i) % hp->n_swa, row);
        raw_ok &= memcmp(p + 4ull * i * hp->head_dim, row, 4ull * hp->head_dim) == 0;
    }
    CHECK(raw_ok, "raw window rows in logical order");
}

/* ------------------------------------------------ (b) continuation */

static bool continue_equal(ds4_session *a, ds4_session *b, const int32_t *more, uint32_t n_vocab) {
    float *la = malloc(sizeof(float) * N_MORE * n_vocab), *lb = malloc(sizeof(float) * N_MORE * n_vocab);
    ds4_err err;
    bool ok = ds4_session_eval_all_logits(a, more, N_MORE, la, &err) == 0 &&
              ds4_session_eval_all_logits(b, more, N_MORE, lb, &err) == 0 &&
              memcmp(la, lb, sizeof(float) * N_MORE * n_vocab) == 0;
    free(la);
    free(lb);
    return ok;
}

static void test_roundtrip(const char *path, bool exact, int n) {
    const char *mode = exact ? "exact" : "official";
    ds4_engine *e = open_engine(path, exact, 2, 64, 512);
    ds4_engine *e2 = open_engine(path, exact, 2, 37, 1024);
    if (!e || !e2) {
        CHECK(0, "engines open");
        return;
    }
    uint32_t n_vocab = ds4_engine_model(e)->hp.n_vocab;
    int32_t prompt[N_PROMPT], more[N_MORE];
    random_tokens(prompt, N_PROMPT, n_vocab, 1);
    random_tokens(more, N_MORE, n_vocab, 2);
    ds4_session *s1, *s2, *s3, *ref2;
    ds4_err err;
    ds4_session_new(e, &s1, &err);
    ds4_session_new(e, &s2, &err);
    ds4_session_new(e2, &s3, &err);
    ds4_session_new(e2, &ref2, &err);
    CHECK(ds4_session_eval(s1, prompt, n, NULL, NULL, &err) == 0, "%s: prefill", mode);
    membuf m = save_payload(s1);
    check_layout(e, s1, &m, prompt, (uint32_t)n, 64, 512);
    CHECK(ds4_session_load_payload_mem(s2, m.p, m.len, &err) == 0, "%s: load: %s", mode, err.msg);
    CHECK(ds4_session_n_tokens(s2) == n && memcmp(ds4_session_tokens(s2), prompt, 4ull * n) == 0 &&
              memcmp(ds4_session_logits(s2), ds4_session_logits(s1), 4ull * n_vocab) == 0,
          "%s: tokens and logits restored", mode);
    membuf m2 = save_payload(s2);
    CHECK(m2.len == m.len && memcmp(m2.p, m.p, m.len) == 0, "%s: re-saving gives the same bytes", mode);
    free(m2.p);
    CHECK(continue_equal(s1, s2, more, n_vocab), "%s: restored session continues bit-identically", mode);
    if (!exact) { /* the exact numerics are slow on q2 weights: this once is enough */
        CHECK(ds4_session_eval(ref2, prompt, n, NULL, NULL, &err) == 0, "%s: prefill 2", mode);
        CHECK(ds4_session_load_payload_mem(s3, m.p, m.len, &err) == 0,
              "%s: load into chunk 37 / ctx 1024: %s", mode, err.msg);
        CHECK(continue_equal(ref2, s3, more, n_vocab),
              "%s: other chunk and larger ctx continue like an uninterrupted run there", mode);
    }
    ds4_session_free(s1);
    ds4_session_free(s2);
    ds4_session_free(s3);
    ds4_session_free(ref2);
    free(m.p);
    ds4_engine_close(e);
    ds4_engine_close(e2);
}

/* ------------------------------------------------------ (c) refusals */

static void put_u32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

static void test_refusals(const char *path) {
    ds4_engine *e = open_engine(path, false, 2, 64, 512), *ex = open_engine(path, true, 2, 64, 512),
               *small = open_engine(path, false, 2, 64, 256);
    if (!e || !ex || !small) {
        CHECK(0, "engines open");
        return;
    }
    const ds4_hparams *hp = &ds4_engine_model(e)->hp;
    int32_t prompt[N_REFUSE];
    random_tokens(prompt, N_REFUSE, hp->n_vocab, 1);
    ds4_session *s, *t, *sx, *ss;
    ds4_err err;
    ds4_session_new(e, &s, &err);
    ds4_session_new(e, &t, &err);
    ds4_session_new(ex, &sx, &err);
    ds4_session_new(small, &ss, &err);
    ds4_session_eval(s, prompt, N_REFUSE, NULL, NULL, &err);
    ds4_session_eval(sx, prompt, 20, NULL, NULL, &err); /* raw rows hold exact f32 values */
    membuf m = save_payload(s), mx = save_payload(sx);
    uint8_t *b = malloc(m.len + 1);
    int bad = 0, cases = 0;
    for (size_t cut = 0; cut < m.len; cut += cut < 4096 ? 13 : 4099, cases++) {
        if (cases % 32 == 0) ds4_session_eval(t, prompt, 5, NULL, NULL, &err); /* something to lose */
        bad += ds4_session_load_payload_mem(t, m.p, cut, &err) == 0 || ds4_session_n_tokens(t) != 0;
    }
    CHECK(bad == 0, "truncated payloads: %d of %d accepted or half-loaded", bad, cases);
    memcpy(b, m.p, m.len);
    b[m.len] = 0;
    CHECK(ds4_session_load_payload_mem(t, b, m.len + 1, &err) != 0 && ds4_session_n_tokens(t) == 0,
          "a trailing byte");
    struct {
        int field;
        uint32_t value;
        const char *what;
    } bad_fields[] = {
        {0, 0x34565345u, "magic"}, {1, 2, "version"}, {2, 513, "ctx above ours"}, {2, 0, "ctx 0"},
        {3, 0, "prefill 0"}, {4, 15, "raw cap below the window"}, {5, 15, "raw window"},
        {6, 131, "compressed cap"}, {7, N_REFUSE + 1, "tokens"}, {7, 512, "tokens = ctx"},
        {8, 7, "layers"}, {9, 129, "head dim"}, {10, 64, "indexer dim"}, {11, 1025, "vocab"},
        {12, 15, "raw live"},
    };
    for (size_t i = 0; i < sizeof bad_fields / sizeof bad_fields[0]; i++) {
        memcpy(b, m.p, m.len);
        put_u32(b + 4 * bad_fields[i].field, bad_fields[i].value);
        ds4_session_eval(t, prompt, 5, NULL, NULL, &err);
        CHECK(ds4_session_load_payload_mem(t, b, m.len, &err) != 0 && ds4_session_n_tokens(t) == 0,
              "header %s refused", bad_fields[i].what);
    }
    size_t counts = 52 + 4ull * N_REFUSE + 4ull * hp->n_vocab;
    memcpy(b, m.p, m.len);
    put_u32(b + counts + 4 * 2, u32_at(b + counts + 4 * 2) + 1); /* layer 2 (ratio 4) n_comp */
    put_u32(b + counts + 4 * 3, u32_at(b + counts + 4 * 3) - 1); /* keep the size: layer 3 one fewer */
    CHECK(ds4_session_load_payload_mem(t, b, m.len, &err) != 0 && ds4_session_n_tokens(t) == 0,
          "wrong row counts refused");
    size_t rows = counts + 8ull * hp->n_layer;
    float v = NAN;
    memcpy(b, m.p, m.len);
    memcpy(b + rows + 40, &v, 4);
    CHECK(ds4_session_load_payload_mem(t, b, m.len, &err) != 0 && ds4_session_n_tokens(t) == 0,
          "NaN in a raw row refused");
    v = 1.0f + 0x1p-20f;
    memcpy(b, m.p, m.len);
    memcpy(b + rows + 40, &v, 4);
    CHECK(ds4_session_load_payload_mem(t, b, m.len, &err) != 0 && strstr(err.msg, "f16"),
          "non-f16 row value refused: %s", err.msg);
    memcpy(b, m.p, m.len);
    put_u32(b + 52 + 4 * 10, hp->n_vocab);
    CHECK(ds4_session_load_payload_mem(t, b, m.len, &err) != 0 && ds4_session_n_tokens(t) == 0,
          "token outside the vocabulary");
    memcpy(b, m.p, m.len);
    v = INFINITY;
    memcpy(b + 52 + 4ull * N_REFUSE + 8, &v, 4);
    CHECK(ds4_session_load_payload_mem(t, b, m.len, &err) != 0, "infinite logit refused");
    CHECK(ds4_session_load_payload_mem(ss, m.p, m.len, &err) != 0 && ds4_session_n_tokens(ss) == 0,
          "payload of ctx 512 refused by a ctx 256 engine");
    CHECK(ds4_session_load_payload_mem(t, mx.p, mx.len, &err) != 0 && ds4_session_n_tokens(t) == 0,
          "exact-numerics payload refused by an official-numerics session: %s", err.msg);
    CHECK(ds4_session_load_payload_mem(t, m.p, m.len, &err) == 0 && ds4_session_n_tokens(t) == N_REFUSE,
          "the session is still usable after refusals");
    /* Random byte changes: each mutant is refused (session empty) or, if it
     * still describes a valid state, re-saves to the same bytes (up to the
     * informational ctx / chunk / raw cap / compressed cap fields). */
    uint64_t x = 99;
    int refused = 0, roundtrip_bad = 0;
    for (int i = 0; i < 1000; i++) {
        memcpy(b, m.p, m.len);
        for (int k = 0; k < 1 + i % 3; k++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            b[(x >> 17) % m.len] ^= (uint8_t)(1u << ((x >> 9) % 8));
        }
        if (ds4_session_load_payload_mem(t, b, m.len, &err) != 0) {
            refused++;
            roundtrip_bad += ds4_session_n_tokens(t) != 0;
            continue;
        }
        membuf again = save_payload(t);
        memcpy(again.p + 8, b + 8, 12);  /* ctx, prefill chunk, raw cap */
        memcpy(again.p + 24, b + 24, 4); /* compressed cap */
        roundtrip_bad += again.len != m.len || memcmp(again.p, b, m.len) != 0;
        free(again.p);
    }
    CHECK(roundtrip_bad == 0, "mutants: %d half-loaded or not re-saved identically (%d refused of 1000)",
          roundtrip_bad, refused);
    ds4_session *full;
    ds4_engine *tiny_ctx = open_engine(path, false, 2, 8, 40);
    ds4_session_new(tiny_ctx, &full, &err);
    ds4_session_eval(full, prompt, 40, NULL, NULL, &err);
    size_t full_cap = (size_t)ds4_session_payload_bytes(full), full_len;
    uint8_t *full_bytes = malloc(full_cap);
    CHECK(ds4_session_save_payload_mem(full, full_bytes, full_cap, &full_len, &err) != 0,
          "a full context is not saved");
    free(full_bytes);
    ds4_session_free(full);
    ds4_engine_close(tiny_ctx);
    free(b);
    free(m.p);
    free(mx.p);
    ds4_session_free(s);
    ds4_session_free(t);
    ds4_session_free(sx);
    ds4_session_free(ss);
    ds4_engine_close(e);
    ds4_engine_close(ex);
    ds4_engine_close(small);
}

/* --------------------------------------------------- (d) disk cache */

static void quiet(void *ud, const char *line) {
    if (getenv("KV_TEST_VERBOSE")) fprintf(stderr, "log: %s\n", line);
}

static ds4_kvcache *open_store(const char *dir, ds4_engine *e) {
    ds4_kvcache_config c;
    ds4_kvcache_config_defaults(&c);
    c.dir = dir;
    c.min_tokens = 64;
    c.log = quiet;
    ds4_kvcache_identity id;
    ds4_kvcache_identity_from_engine(e, &id);
    ds4_kvcache *kc = NULL;
    ds4_err err;
    if (ds4_kvcache_open(&kc, &c, &id, &err)) fprintf(stderr, "kvcache open: %s\n", err.msg);
    return kc;
}

static void test_disk_cache(const char *path, const char *other_path) {
    char dir[600];
    snprintf(dir, sizeof dir, "%s/kv-session", tmpdir());
    ds4_engine *e = open_engine(path, false, 2, 64, 512);
    if (!e) {
        CHECK(0, "engine opens");
        return;
    }
    ds4_kvcache_identity id;
    ds4_kvcache_identity_from_engine(e, &id);
    CHECK(id.quant_bits == 2 && id.ctx == 512 && !id.exact, "identity of a q2 model");
    uint32_t n_vocab = ds4_engine_model(e)->hp.n_vocab;
    int32_t prompt[N_PROMPT], more[N_MORE];
    random_tokens(prompt, N_PROMPT, n_vocab, 1);
    random_tokens(more, N_MORE, n_vocab, 2);
    ds4_session *s1, *s2;
    ds4_err err;
    ds4_session_new(e, &s1, &err);
    ds4_session_eval(s1, prompt, N_PROMPT, NULL, NULL, &err);
    ds4_kvcache *kc = open_store(dir, e);
    ds4_kvcache_io io1 = ds4_kvcache_session_io(s1);
    const char *text = "rendered text of the first 200 tokens";
    ds4_kvcache_save_req req = {.text = text, .text_len = strlen(text), .tokens = N_PROMPT,
                                .reason = DS4_KVC_REASON_EVICT};
    CHECK(ds4_kvcache_save(kc, &io1, &req, &err) == 0, "store: %s", err.msg);
    ds4_kvcache_close(kc);

    /* "restart": a new store and a new session */
    kc = open_store(dir, e);
    ds4_session_new(e, &s2, &err);
    ds4_session_eval(s2, more, 3, NULL, NULL, &err); /* stale state the lookup replaces */
    ds4_kvcache_io io2 = ds4_kvcache_session_io(s2);
    ds4_kvcache_hit hit;
    const char *q = "rendered text of the first 200 tokens, then the new user turn";
    CHECK(ds4_kvcache_lookup(kc, &io2, q, strlen(q), &hit) == 1 && hit.tokens == N_PROMPT &&
              hit.text_bytes == strlen(text),
          "disk hit");
    CHECK(continue_equal(s1, s2, more, n_vocab), "continued after a disk load = uninterrupted");
    ds4_kvcache_close(kc);

    ds4_engine *other = open_engine(other_path, false, 2, 64, 512);
    ds4_session *so;
    ds4_session_new(other, &so, &err);
    ds4_kvcache_identity oid;
    ds4_kvcache_identity_from_engine(other, &oid);
    CHECK(memcmp(oid.model_id, id.model_id, 20) != 0, "different weights, different model id");
    kc = open_store(dir, other);
    ds4_kvcache_io io3 = ds4_kvcache_session_io(so);
    int n_files = 0;
    ds4_kvcache_disk_bytes(kc, &n_files);
    CHECK(n_files == 1, "the other model's store counts the file");
    CHECK(ds4_kvcache_lookup(kc, &io3, q, strlen(q), &hit) == 0 && ds4_session_n_tokens(so) == 0,
          "another model's checkpoint is not used");
    ds4_kvcache_disk_bytes(kc, &n_files);
    CHECK(n_files == 0, "and is removed");
    ds4_kvcache_close(kc);
    ds4_session_free(so);
    ds4_engine_close(other);
    ds4_session_free(s1);
    ds4_session_free(s2);
    ds4_engine_close(e);
}

int main(void) {
    char path[600], other[600];
    snprintf(path, sizeof path, "%s/kv-tiny.gguf", tmpdir());
    snprintf(other, sizeof other, "%s/kv-tiny-other.gguf", tmpdir());
    if (write_tiny(path, DS4_WEIGHTS_PUBLISHED, "q2", 7, "kvcache test") ||
        write_tiny(other, DS4_WEIGHTS_PUBLISHED, "q2", 8, "kvcache test")) {
        CHECK(0, "tiny models written");
        return TEST_DONE();
    }
    test_roundtrip(path, false, N_PROMPT);
    test_roundtrip(path, true, 100); /* still slides the window and runs the indexer's top-k */
    test_refusals(path);
    test_disk_cache(path, other);
    unlink(path);
    unlink(other);
    return TEST_DONE();
}
