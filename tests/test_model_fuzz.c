/* test_model_fuzz.c — ds4_model_open / ds4_mtp_open on thousands of broken
 * variants of a valid synthetic model: never a crash (run under ASan+UBSan
 * too), and either a one-line error or a model whose every bound tensor
 * lies inside the buffer with a size that matches its type and shape.
 *
 * Mutations (all deterministic): truncation at every 61st byte of the header
 * and at random points of the data (each into an exactly-sized buffer, so
 * ASan sees any over-read); for every metadata value and every tensor info,
 * extreme values written over its fields (0, 1, all ones, sign bits, NaN and
 * infinity for floats, huge array counts and dimensions); random byte flips
 * and random 8-byte overwrites in the header; flips inside the tid2eid
 * tables, which the loader checks itself. All files are memory-backed. */
#include <math.h>

#include "model_fixture.h"
#include "testutil.h"

typedef struct fuzz {
    uint64_t rng;
    int loaded, rejected;
    bool is_mtp;
    ds4_hparams hp; /* for MTP files: the main model's */
} fuzz;

static uint64_t next_rand(fuzz *z) {
    z->rng ^= z->rng << 13;
    z->rng ^= z->rng >> 7;
    z->rng ^= z->rng << 17;
    return z->rng;
}

/* A bound tensor must lie inside [buf, buf+size) and hold its shape. */
static bool tensor_ok(const ds4_tensor *t, const uint8_t *buf, uint64_t size) {
    if (!t->data) return true;
    const uint8_t *p = t->data;
    if (p < buf || p > buf + size || t->nbytes > (uint64_t)(buf + size - p)) return false;
    uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    uint64_t row = ds4_type_row_bytes(t->type, t->ne[0]);
    return row && t->nbytes == row * rows && t->name && t->name[0];
}

#define LAYER_TENSORS(X)                                                                       \
    X(hc_attn_fn) X(hc_attn_scale) X(hc_attn_base) X(hc_ffn_fn) X(hc_ffn_scale) X(hc_ffn_base) \
    X(attn_norm) X(attn_q_a) X(attn_q_a_norm) X(attn_q_b) X(attn_kv) X(attn_kv_a_norm)       \
    X(attn_sinks) X(attn_output_a) X(attn_output_b) X(attn_compressor_ape)                    \
    X(attn_compressor_kv) X(attn_compressor_gate) X(attn_compressor_norm) X(indexer_attn_q_b) \
    X(indexer_proj) X(indexer_compressor_ape) X(indexer_compressor_kv)                        \
    X(indexer_compressor_gate) X(indexer_compressor_norm) X(ffn_norm) X(ffn_gate_inp)         \
    X(exp_probs_b) X(ffn_gate_exps) X(ffn_up_exps) X(ffn_down_exps) X(ffn_gate_shexp)         \
    X(ffn_up_shexp) X(ffn_down_shexp) X(ffn_gate_tid2eid)

static bool layer_ok(const ds4_layer *l, const uint8_t *buf, uint64_t size, uint32_t n_expert) {
    bool ok = true;
#define CHECK_FIELD(f) ok &= tensor_ok(&l->f, buf, size);
    LAYER_TENSORS(CHECK_FIELD)
#undef CHECK_FIELD
    if (ok && l->ffn_gate_tid2eid.data) {
        const uint8_t *p = l->ffn_gate_tid2eid.data;
        for (uint64_t i = 0; i < l->ffn_gate_tid2eid.nbytes / 4; i++) {
            int32_t v;
            memcpy(&v, p + 4 * i, 4);
            ok &= v >= 0 && (uint32_t)v < n_expert;
        }
    }
    return ok;
}

static bool model_ok(const ds4_model *m, const uint8_t *buf, uint64_t size) {
    const ds4_hparams *hp = &m->hp;
    bool ok = hp->n_layer >= 1 && hp->n_layer <= DS4_MAX_LAYERS && hp->n_hc == DS4_N_HC &&
              hp->n_expert_used <= hp->n_expert && hp->n_hash_layer <= hp->n_layer;
    ok &= tensor_ok(&m->token_embd, buf, size) && tensor_ok(&m->output, buf, size) &&
          tensor_ok(&m->output_hc_base, buf, size) && tensor_ok(&m->output_hc_fn, buf, size) &&
          tensor_ok(&m->output_hc_scale, buf, size) && tensor_ok(&m->output_norm, buf, size);
    for (uint32_t il = 0; ok && il < hp->n_layer; il++) ok &= layer_ok(&m->layers[il], buf, size, hp->n_expert);
    return ok;
}

static bool mtp_ok(const ds4_mtp_model *m, const uint8_t *buf, uint64_t size, uint32_t n_expert) {
    return tensor_ok(&m->hc_head_base, buf, size) && tensor_ok(&m->hc_head_fn, buf, size) &&
           tensor_ok(&m->hc_head_scale, buf, size) && tensor_ok(&m->e_proj, buf, size) &&
           tensor_ok(&m->h_proj, buf, size) && tensor_ok(&m->enorm, buf, size) &&
           tensor_ok(&m->hnorm, buf, size) && tensor_ok(&m->norm, buf, size) &&
           layer_ok(&m->block, buf, size, n_expert);
}

/* Opens one variant and checks the outcome. */
static void try_open(fuzz *z, const uint8_t *buf, uint64_t size, const char *what, uint64_t where) {
    ds4_err err = {{0}};
    int rc;
    bool ok;
    if (z->is_mtp) {
        ds4_mtp_model m;
        rc = ds4_mtp_open_memory(&m, buf, size, &z->hp, &err);
        ok = rc || mtp_ok(&m, buf, size, z->hp.n_expert);
        if (!rc) ds4_mtp_close(&m);
    } else {
        ds4_model m;
        rc = ds4_model_open_memory(&m, buf, size, &err);
        ok = rc || model_ok(&m, buf, size);
        if (!rc) ds4_model_close(&m);
    }
    if (rc) {
        z->rejected++;
        ok = err.msg[0] && !strchr(err.msg, '\n');
    } else {
        z->loaded++;
    }
    CHECK(ok, "%s at %llu: %s", what, (unsigned long long)where, rc ? "bad error message" : "out-of-bounds tensor");
}

static void truncations(fuzz *z, const uint8_t *base, uint64_t size, uint64_t header_end) {
    for (uint64_t n = 0; n < size; n = n < header_end ? n + 61 : n + 1 + next_rand(z) % (size / 40)) {
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, base, n);
        try_open(z, copy, n, "truncation", n);
        free(copy);
    }
}

/* Overwrites `len` bytes at `off` with `val`, opens, restores. */
static void overwrite(fuzz *z, uint8_t *buf, uint64_t size, uint64_t off, const void *val, size_t len,
                      const char *what) {
    if (off + len > size) return;
    uint8_t saved[8];
    memcpy(saved, buf + off, len);
    memcpy(buf + off, val, len);
    try_open(z, buf, size, what, off);
    memcpy(buf + off, saved, len);
}

static void extreme_u32s(fuzz *z, uint8_t *buf, uint64_t size, uint64_t off, const char *what) {
    static const uint32_t vals[] = {0, 1, 2, 3, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFFu, 0x7FC00000u /* NaN */,
                                    0x7F800000u /* inf */, 0xFF800000u};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) overwrite(z, buf, size, off, &vals[i], 4, what);
}

static void extreme_u64s(fuzz *z, uint8_t *buf, uint64_t size, uint64_t off, const char *what) {
    static const uint64_t vals[] = {0, 1, 0xFFFFFFFFull, 0x100000000ull, 0x7FFFFFFFFFFFFFFFull,
                                    0xFFFFFFFFFFFFFFFFull, 0x0000100000000000ull};
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) overwrite(z, buf, size, off, &vals[i], 8, what);
}

/* Extreme values over every metadata value and every tensor-info field. */
static void targeted(fuzz *z, uint8_t *buf, uint64_t size, const gguf_file *f) {
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        uint64_t type_off = (uint64_t)((const uint8_t *)kv->key.ptr - f->base) + kv->key.len;
        uint64_t val_off = type_off + 4;
        extreme_u32s(z, buf, size, type_off, "kv type");
        if (kv->value.type == GGUF_T_ARRAY) {
            extreme_u32s(z, buf, size, val_off, "array item type");
            extreme_u64s(z, buf, size, val_off + 4, "array count");
            if (kv->value.v.arr.item_type != GGUF_T_STRING && kv->value.v.arr.count)
                extreme_u32s(z, buf, size, (uint64_t)(kv->value.v.arr.items - f->base), "array item");
        } else if (kv->value.type == GGUF_T_STRING) {
            extreme_u64s(z, buf, size, val_off, "string length");
        } else {
            extreme_u32s(z, buf, size, val_off, "scalar");
        }
        extreme_u64s(z, buf, size, type_off - kv->key.len - 8, "key length");
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor_info *t = &f->tensors[i];
        uint64_t off = (uint64_t)((const uint8_t *)t->name.ptr - f->base) + t->name.len;
        extreme_u32s(z, buf, size, off, "n_dims");
        for (uint32_t d = 0; d < t->n_dims; d++) extreme_u64s(z, buf, size, off + 4 + 8 * d, "dim");
        uint64_t type_off = off + 4 + 8 * (uint64_t)t->n_dims;
        extreme_u32s(z, buf, size, type_off, "tensor type");
        extreme_u64s(z, buf, size, type_off + 4, "tensor offset");
    }
}

static void random_flips(fuzz *z, uint8_t *buf, uint64_t size, uint64_t lo, uint64_t hi, int n,
                         const char *what) {
    for (int i = 0; i < n && hi > lo; i++) {
        uint64_t off = lo + next_rand(z) % (hi - lo);
        if (next_rand(z) & 1) {
            uint8_t v = buf[off] ^ (uint8_t)(1 + next_rand(z) % 255);
            overwrite(z, buf, size, off, &v, 1, what);
        } else {
            uint64_t v = next_rand(z);
            overwrite(z, buf, size, off, &v, 8, what);
        }
    }
}

static void fuzz_file(fuzz *z, const char *path, int n_random) {
    uint64_t size;
    uint8_t *buf = fixture_read(path, &size);
    CHECK(buf != NULL, "read %s", path);
    if (!buf) return;
    gguf_file f;
    ds4_err err = {{0}};
    if (gguf_open_memory(&f, buf, size, &err)) {
        CHECK(0, "base file: %s", err.msg);
        free(buf);
        return;
    }
    int before = z->loaded;
    try_open(z, buf, size, "unmodified", 0);
    CHECK(z->loaded == before + 1, "the unmodified file loads");
    truncations(z, buf, size, f.data_offset);
    targeted(z, buf, size, &f);
    random_flips(z, buf, size, 0, f.data_offset, n_random, "header flip");
    for (uint64_t i = 0; i < f.n_tensors; i++) {
        const gguf_tensor_info *t = &f.tensors[i];
        if (t->type != DS4_TYPE_I32) continue;
        uint64_t lo = (uint64_t)((const uint8_t *)t->data - f.base);
        random_flips(z, buf, size, lo, lo + t->nbytes, 40, "tid2eid flip");
    }
    gguf_close(&f);
    free(buf);
}

int main(void) {
    ds4_synth_vocab v;
    ds4_synth_config c;
    fixture_micro(&c, &v);
    ds4_err err = {{0}};
    const char *model = fixture_path("fuzz.gguf"), *mtp = fixture_path("fuzz-mtp.gguf");
    if (ds4_synth_write_model(&c, model, &err) || ds4_synth_write_mtp(&c, mtp, &err)) {
        fprintf(stderr, "write: %s\n", err.msg);
        return 1;
    }
    fuzz z = {.rng = 0x9E3779B97F4A7C15ull};
    fuzz_file(&z, model, 1500);
    int model_variants = z.loaded + z.rejected;
    z.is_mtp = true;
    z.hp = c.hp;
    fuzz_file(&z, mtp, 300);
    printf("model variants %d, mtp variants %d: %d loaded, %d rejected\n", model_variants,
           z.loaded + z.rejected - model_variants, z.loaded, z.rejected);
    CHECK(model_variants >= 1000, "at least 1000 model variants (%d)", model_variants);
    CHECK(z.rejected > 0 && z.loaded > 1, "both outcomes occur");
    ds4_synth_vocab_free(&v);
    return TEST_DONE();
}
