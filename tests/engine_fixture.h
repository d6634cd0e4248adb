/* engine_fixture.h — tiny synthetic models and engines for the engine-level
 * tests (test_engine.c, test_kvcache_session.c): the scratch directory, the
 * "tiny" preset written with the fallback vocabulary (and its MTP file), an
 * engine over such a file, and reproducible random token ids (xorshift64). */
#ifndef DS4_ENGINE_FIXTURE_H
#define DS4_ENGINE_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/engine/engine.h"
#include "../src/model/synth.h"

static inline const char *tmpdir(void) {
    const char *t = getenv("DS4_TMP");
    return t && *t ? t : "/tmp";
}

static inline int tiny_config(ds4_synth_config *c, ds4_weight_form weights, const char *experts,
                              uint64_t seed, const char *name) {
    ds4_err err = {{0}};
    memset(c, 0, sizeof *c);
    if (ds4_synth_preset("tiny", 0, &c->hp, &err) ||
        ds4_synth_expert_types(experts, &c->expert_gate_type, &c->expert_down_type, &err)) {
        fprintf(stderr, "preset: %s\n", err.msg);
        return -1;
    }
    c->weights = weights;
    c->seed = seed;
    c->name = name;
    return 0;
}

/* The MTP file for the tiny preset (its block's experts as given). */
static inline int write_tiny_mtp(const char *path, ds4_weight_form weights, const char *experts, uint64_t seed) {
    ds4_synth_config c;
    ds4_err err = {{0}};
    if (tiny_config(&c, weights, experts, seed, NULL)) return -1;
    int rc = ds4_synth_write_mtp(&c, path, &err);
    if (rc) fprintf(stderr, "synth mtp: %s\n", err.msg);
    return rc;
}

/* The tiny preset (all its layers) with the given weights, experts and seed. */
static inline int write_tiny(const char *path, ds4_weight_form weights, const char *experts,
                             uint64_t seed, const char *name) {
    ds4_err err = {{0}};
    ds4_synth_config c;
    if (tiny_config(&c, weights, experts, seed, name)) return -1;
    ds4_synth_vocab v;
    if (ds4_synth_vocab_fallback(&v, c.hp.n_vocab, &err)) {
        fprintf(stderr, "vocab: %s\n", err.msg);
        return -1;
    }
    c.vocab = &v;
    int rc = ds4_synth_write_model(&c, path, &err);
    if (rc) fprintf(stderr, "synth: %s\n", err.msg);
    ds4_synth_vocab_free(&v);
    return rc;
}

static inline ds4_engine *open_engine(const char *path, bool exact, int threads, int chunk, int ctx) {
    ds4_engine_config cfg = {.model_path = path, .ctx = ctx, .threads = threads, .exact = exact,
                             .prefill_chunk = chunk};
    ds4_engine *e = NULL;
    ds4_err err = {{0}};
    if (ds4_engine_open(&e, &cfg, &err)) fprintf(stderr, "engine_open: %s\n", err.msg);
    return e;
}

static inline void random_tokens(int32_t *tok, int n, uint32_t n_vocab, uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (int i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        tok[i] = (int32_t)(x % n_vocab);
    }
}

#endif
