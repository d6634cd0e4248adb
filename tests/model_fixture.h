/* model_fixture.h — synthetic models for the model tests (test_model.c,
 * test_model_fuzz.c): a scratch directory, the "micro" configuration (the
 * tiny preset cut to 4 layers with ratios 0,0,4,16, 4 experts and a
 * 300-token vocabulary, about 2 MB, so many files can be written quickly)
 * and whole-file reads for the memory-backed loader. */
#ifndef DS4_MODEL_FIXTURE_H
#define DS4_MODEL_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/file.h"
#include "../src/model/model.h"
#include "../src/model/synth.h"
#include "../src/quant/quant.h"

static char fixture_dir_[512];

static const char *fixture_path(const char *name) {
    static char buf[4][700];
    static int k;
    if (!fixture_dir_[0]) {
        const char *t = getenv("DS4_TMP");
        if (t && *t) snprintf(fixture_dir_, sizeof fixture_dir_, "%s", t);
        else {
            snprintf(fixture_dir_, sizeof fixture_dir_, "/tmp/ds4-model-test-XXXXXX");
            if (!mkdtemp(fixture_dir_)) { perror("mkdtemp"); exit(1); }
        }
    }
    char *p = buf[k++ & 3];
    snprintf(p, 700, "%s/%s", fixture_dir_, name);
    return p;
}

/* Reads a whole file; NULL on failure. */
static uint8_t *fixture_read(const char *path, uint64_t *size) {
    size_t n = 0;
    uint8_t *buf = (uint8_t *)ds4_read_file(path, &n, NULL);
    *size = n;
    return buf;
}

/* The micro configuration with a fallback vocabulary owned by *v. */
static void fixture_micro(ds4_synth_config *c, ds4_synth_vocab *v) {
    ds4_err err = {{0}};
    memset(c, 0, sizeof *c);
    if (ds4_synth_preset("tiny", 4, &c->hp, &err) ||
        ds4_synth_expert_types("q2", &c->expert_gate_type, &c->expert_down_type, &err) ||
        ds4_synth_vocab_fallback(v, 300, &err)) {
        fprintf(stderr, "fixture: %s\n", err.msg);
        exit(1);
    }
    c->hp.n_expert = 4;
    c->hp.n_expert_used = 2;
    c->hp.n_vocab = 300;
    c->seed = 7;
    c->vocab = v;
}

#endif
