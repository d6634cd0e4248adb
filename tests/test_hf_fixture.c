/* test_hf_fixture.c — the forward pass against transformers.
 *
 * tests/fixtures/hf-tiny/ holds a tiny random DeepseekV4ForCausalLM (made by
 * tools/hf-fixture/make_fixture.py with transformers 5.17 / torch 2.11, CPU,
 * float32): its state dict, config.json, the prompt ids and the logits of
 * every position. This test converts it with ds4-convert's library code
 * (--type f32 --experts f32), runs the engine with exact numerics and
 * compares every position's logits: max |Δ| <= 1e-4 (the logits have std
 * ~1; hf-reference.md §5 measured ~1e-5 for a faithful re-statement) and the
 * same argmax everywhere. It does so for a batched prefill with the default
 * chunk, token-by-token decode (chunk 1) and chunks of 7 and 64, whose
 * boundaries fall inside compressor windows. Skips (77) when the fixture is
 * absent. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/convert/convert.h"
#include "../src/convert/safetensors.h"
#include "../src/engine/engine.h"
#include "../src/quant/quant.h"
#include "testutil.h"

#define MAX_ABS_DIFF 1e-4

typedef struct reference {
    ds4_st_file file;
    const int32_t *ids_raw;
    int32_t *ids;
    const ds4_st_tensor *logits;
    int n, vocab;
} reference;

static int load_reference(reference *r, const char *dir) {
    char path[2200];
    snprintf(path, sizeof path, "%s/reference.safetensors", dir);
    ds4_err err = {{0}};
    if (ds4_st_open(&r->file, path, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    const ds4_st_tensor *ids = ds4_st_find(&r->file, "input_ids");
    r->logits = ds4_st_find(&r->file, "logits");
    if (!ids || !r->logits || ids->dtype != DS4_ST_I32 || r->logits->dtype != DS4_ST_F32 ||
        ids->n_dims != 1 || r->logits->n_dims != 2 || r->logits->shape[0] != ids->shape[0]) {
        fprintf(stderr, "%s: expected input_ids I32 [N] and logits F32 [N, V]\n", path);
        return -1;
    }
    r->n = (int)ids->shape[0];
    r->vocab = (int)r->logits->shape[1];
    r->ids = malloc((size_t)r->n * sizeof *r->ids);
    if (!r->ids) return -1;
    memcpy(r->ids, ids->data, (size_t)r->n * sizeof *r->ids);
    return 0;
}

static float ref_logit(const reference *r, size_t i) {
    float v;
    memcpy(&v, r->logits->data + 4 * i, 4);
    return v;
}

static int argmax_row(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Runs the whole prompt with one prefill chunk size and compares. */
static void run_mode(const char *gguf, const reference *r, int chunk, const char *label) {
    ds4_engine_config cfg = {.model_path = gguf, .ctx = r->n + 8, .exact = true,
                             .prefill_chunk = chunk};
    ds4_engine *e = NULL;
    ds4_session *s = NULL;
    ds4_err err = {{0}};
    float *out = calloc((size_t)r->n * r->vocab, sizeof *out);
    CHECK(out != NULL, "out of memory");
    if (!out) return;
    int rc = ds4_engine_open(&e, &cfg, &err);
    CHECK(rc == 0, "%s: engine open: %s", label, err.msg);
    if (rc == 0) rc = ds4_session_new(e, &s, &err);
    CHECK(rc == 0, "%s: session: %s", label, err.msg);
    if (rc == 0) rc = ds4_session_eval_all_logits(s, r->ids, r->n, out, &err);
    CHECK(rc == 0, "%s: eval: %s", label, err.msg);
    if (rc == 0) {
        double max_abs = 0, sum_abs = 0;
        int worst_pos = 0, argmax_bad = 0, first_bad = -1;
        for (int t = 0; t < r->n; t++) {
            const float *row = out + (size_t)t * r->vocab;
            int ref_best = 0;
            for (int v = 0; v < r->vocab; v++) {
                float ref = ref_logit(r, (size_t)t * r->vocab + v);
                double d = fabs((double)row[v] - ref);
                if (!(d <= max_abs)) { /* also catches NaN */
                    max_abs = isnan(d) ? INFINITY : d;
                    worst_pos = t;
                }
                sum_abs += d;
                if (ref > ref_logit(r, (size_t)t * r->vocab + ref_best)) ref_best = v;
            }
            if (argmax_row(row, r->vocab) != ref_best) {
                argmax_bad++;
                if (first_bad < 0) first_bad = t;
            }
        }
        printf("%-22s max |d| %.3g (position %d), mean |d| %.3g, argmax differs at %d of %d "
               "positions\n", label, max_abs, worst_pos, sum_abs / ((double)r->n * r->vocab),
               argmax_bad, r->n);
        CHECK(max_abs <= MAX_ABS_DIFF, "%s: max |d| %.3g > %.0e (worst position %d)", label,
              max_abs, MAX_ABS_DIFF, worst_pos);
        CHECK(argmax_bad == 0, "%s: argmax differs at %d positions (first %d)", label, argmax_bad,
              first_bad);
    }
    ds4_session_free(s);
    ds4_engine_close(e);
    free(out);
}

int main(void) {
    const char *root = getenv("DS4_ROOT") ? getenv("DS4_ROOT") : ".";
    const char *tmp = getenv("DS4_TMP") ? getenv("DS4_TMP") : "/tmp";
    char dir[2048], gguf[2048], probe[2100];
    snprintf(dir, sizeof dir, "%s/tests/fixtures/hf-tiny", root);
    snprintf(probe, sizeof probe, "%s/model.safetensors", dir);
    if (access(probe, R_OK)) TEST_SKIP("tests/fixtures/hf-tiny is not there");
    snprintf(gguf, sizeof gguf, "%s/hf-tiny-f32.gguf", tmp);

    ds4_convert_opts o = {.in_dir = dir, .out_path = gguf, .quiet = true};
    ds4_err err = {{0}};
    int rc = ds4_convert_set_types(&o, "f32", "f32", &err);
    if (rc == 0) rc = ds4_convert(&o, &err);
    CHECK(rc == 0, "convert: %s", err.msg);
    reference r = {0};
    int lr = load_reference(&r, dir);
    CHECK(lr == 0, "reference.safetensors unreadable");
    if (rc == 0 && lr == 0) {
        run_mode(gguf, &r, 0, "prefill (default chunk)");
        run_mode(gguf, &r, 1, "decode (chunk 1)");
        run_mode(gguf, &r, 7, "prefill chunk 7");
        run_mode(gguf, &r, 64, "prefill chunk 64");
    }
    free(r.ids);
    ds4_st_close(&r.file);
    return TEST_DONE();
}
