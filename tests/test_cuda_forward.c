/* test_cuda_forward.c — the CUDA backend's decode step against the CPU
 * backend (the readable reference), on the tiny synthetic model.
 *
 * Both engines open the same in-memory model (preset tiny: every layer
 * kind, window 16, ratios 4 and 16, indexer top-k 8, q2 experts) with the
 * official numerics. A prompt of N_TOK pseudo-random tokens is evaluated
 * on both, the CUDA one token by token through its captured graph; at
 * every position the logits must agree: the same top-1 token (unless the
 * CPU's own top-2 margin is below the tolerance) and max |Δlogit| within
 * TOL_REL of the largest |logit| (the kernels differ from the CPU only in
 * summation order; quantised activations and FP8/FP4/f16 round-trips can
 * turn such a difference into one rounding step of a value, hence a
 * relative bound rather than bit equality). Then a session reset must
 * reproduce the first positions exactly (graph replay after reset), and
 * a second session must not disturb the first.
 *
 * Built by `make cuda` (test-cuda runs it on a GPU machine); the plain
 * build compiles it too and it skips there. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/engine/engine_impl.h"
#include "../src/model/synth.h"
#include "testutil.h"
#ifdef DS4_CUDA
#include "../src/backend/cuda/cuda_engine.h"
#endif

#ifndef DS4_CUDA
int main(void) {
    (void)test_checks_;
    (void)test_failures_;
    TEST_SKIP("built without CUDA (make cuda builds this test)");
}
#else

#define N_TOK 300
#define TOL_REL 1e-3

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int top1(const float *x, int n, float *margin) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    float second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != b && x[i] > second) second = x[i];
    *margin = x[b] - second;
    return b;
}

/* The tiny model with n_layer layers (0: the preset's) as an image. */
static int tiny_image(uint32_t n_layer, void **image, uint64_t *size, ds4_err *err) {
    ds4_synth_config c;
    memset(&c, 0, sizeof c);
    c.seed = 7;
    c.name = "tiny (test_cuda_forward)";
    if (ds4_synth_preset("tiny", n_layer, &c.hp, err) || ds4_synth_expert_types("q2", &c.expert_gate_type, &c.expert_down_type, err))
        return -1;
    ds4_synth_vocab vocab;
    if (ds4_synth_vocab_fallback(&vocab, c.hp.n_vocab, err)) return -1;
    c.hp.n_vocab = vocab.n_tokens;
    c.vocab = &vocab;
    int rc = ds4_synth_model_image(&c, image, size, err);
    ds4_synth_vocab_free(&vocab);
    return rc;
}

static double rel_diff(const float *a, const float *b, size_t n) {
    double mx = 0, md = 0;
    for (size_t i = 0; i < n; i++) {
        mx = fmax(mx, fabs(a[i]));
        md = fmax(md, fabs((double)a[i] - b[i]));
        if (!isfinite(b[i])) return INFINITY;
    }
    return md / (mx > 0 ? mx : 1);
}

/* One token through n_layer-layer models on both backends; the last
 * layer's intermediate vectors side by side, to say where they part. */
static void diagnose(uint32_t n_layer, int32_t token) {
    ds4_err err = {0};
    void *image = NULL;
    uint64_t size = 0;
    ds4_engine *cpu = NULL, *gpu = NULL;
    ds4_session *sc = NULL, *sg = NULL;
    if (tiny_image(n_layer, &image, &size, &err)) { printf("diagnose: %s\n", err.msg); return; }
    ds4_engine_config cfg = {.model_image = image, .model_image_size = size, .ctx = 64, .threads = 2, .backend = "cpu"};
    if (ds4_engine_open(&cpu, &cfg, &err) || (cfg.backend = "cuda", ds4_engine_open(&gpu, &cfg, &err)) ||
        ds4_session_new(cpu, &sc, &err) || ds4_session_new(gpu, &sg, &err) ||
        ds4_session_eval(sc, &token, 1, NULL, NULL, &err) || ds4_session_eval(sg, &token, 1, NULL, NULL, &err)) {
        printf("diagnose: %s\n", err.msg);
    } else {
        const ds4_hparams *hp = &cpu->model.hp;
        const chunk_ws *w = &cpu->ws;
        size_t D = hp->n_embd, qd = (size_t)hp->n_head * hp->head_dim, nu = hp->n_expert_used;
        struct { const char *name; const float *ref; size_t n; } f[] = {
            {"qr", w->qr, hp->q_lora}, {"q", w->q, qd}, {"att", w->att, qd},
            {"low", w->low, (size_t)hp->n_out_group * hp->o_lora}, {"x", w->x, D}, {"a", w->a, D},
            {"router", w->router, hp->n_expert}, {"ew", w->ew, nu}, {"smid", w->sg, hp->n_ff_exp},
            {"sh", w->sh, D}, {"y", w->y, D}, {"H", w->H, 4 * D}, {"mix", w->mix, 4}, {"ehc", w->ehc, D}};
        printf("diagnose %u layer(s), token %d, last layer's values, max|d|/max|ref|:", n_layer, token);
        float *buf = malloc(sizeof(float) * 4 * (qd > 4 * D ? qd : 4 * D));
        for (size_t i = 0; buf && i < sizeof f / sizeof *f; i++) {
            if (ds4_cuda_session_debug_read(sg->cuda, f[i].name, buf, f[i].n * sizeof(float), &err)) continue;
            if (!strcmp(f[i].name, "router"))
                for (size_t k = 0; k < f[i].n; k++) buf[k] = sqrtf(softplus(buf[k]));
            printf(" %s %.2g", f[i].name, rel_diff(f[i].ref, buf, f[i].n));
        }
        int32_t ids[8] = {0};
        if (buf && !ds4_cuda_session_debug_read(sg->cuda, "ids", ids, nu * sizeof(int32_t), &err)) {
            printf(" | experts cpu");
            for (size_t k = 0; k < nu; k++) printf(" %d", w->eid[k]);
            printf(" cuda");
            for (size_t k = 0; k < nu; k++) printf(" %d", ids[k]);
        }
        printf(" | logits %.2g\n", rel_diff(ds4_session_logits(sc), ds4_session_logits(sg), hp->n_vocab));
        free(buf);
    }
    ds4_session_free(sc);
    ds4_session_free(sg);
    ds4_engine_close(cpu);
    ds4_engine_close(gpu);
    free(image);
}

int main(void) {
    if (!ds4_cuda_available()) TEST_SKIP("no CUDA device");
    ds4_err err = {0};
    for (uint32_t nl = 1; nl <= 6; nl++) diagnose(nl, 17);
    ds4_synth_config c;
    memset(&c, 0, sizeof c);
    c.seed = 7;
    c.name = "tiny (test_cuda_forward)";
    if (ds4_synth_preset("tiny", 0, &c.hp, &err) ||
        ds4_synth_expert_types("q2", &c.expert_gate_type, &c.expert_down_type, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    ds4_synth_vocab vocab;
    if (ds4_synth_vocab_fallback(&vocab, c.hp.n_vocab, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    c.hp.n_vocab = vocab.n_tokens;
    c.vocab = &vocab;
    void *image = NULL;
    uint64_t size = 0;
    int rc = ds4_synth_model_image(&c, &image, &size, &err);
    ds4_synth_vocab_free(&vocab);
    if (rc) return fprintf(stderr, "%s\n", err.msg), 1;

    ds4_engine_config cfg = {.model_image = image, .model_image_size = size, .ctx = 512, .threads = 4,
                             .backend = "cpu"};
    ds4_engine *cpu = NULL, *gpu = NULL;
    if (ds4_engine_open(&cpu, &cfg, &err)) return fprintf(stderr, "cpu: %s\n", err.msg), 1;
    cfg.backend = "cuda";
    if (ds4_engine_open(&gpu, &cfg, &err)) return fprintf(stderr, "cuda: %s\n", err.msg), 1;
    CHECK(strcmp(ds4_engine_backend_name(gpu), "cuda") == 0, "backend %s", ds4_engine_backend_name(gpu));
    const ds4_hparams *hp = &ds4_engine_model(cpu)->hp;
    int nv = (int)hp->n_vocab;
    printf("tiny model: %u layers, n_embd %u, vocab %d, window %u, top-k %u; %d tokens\n", hp->n_layer,
           hp->n_embd, nv, hp->n_swa, hp->indexer_top_k, N_TOK);

    int32_t toks[N_TOK];
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < N_TOK; i++) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        toks[i] = (int32_t)(r % (uint64_t)nv);
    }
    float *lc = malloc(sizeof(float) * nv * N_TOK), *lg = malloc(sizeof(float) * nv * N_TOK);
    ds4_session *sc = NULL, *sg = NULL, *sg2 = NULL;
    if (!lc || !lg || ds4_session_new(cpu, &sc, &err) || ds4_session_new(gpu, &sg, &err) ||
        ds4_session_new(gpu, &sg2, &err))
        return fprintf(stderr, "session: %s\n", err.msg), 1;
    double t0 = now_s();
    if (ds4_session_eval_all_logits(sc, toks, N_TOK, lc, &err)) return fprintf(stderr, "cpu eval: %s\n", err.msg), 1;
    double t1 = now_s();
    if (ds4_session_eval_all_logits(sg, toks, N_TOK, lg, &err)) return fprintf(stderr, "cuda eval: %s\n", err.msg), 1;
    double t2 = now_s();

    double worst_abs = 0, worst_rel = 0;
    int worst_pos = 0, mismatches = 0, close_calls = 0, nonfinite = 0;
    for (int p = 0; p < N_TOK; p++) {
        const float *a = lc + (size_t)p * nv, *b = lg + (size_t)p * nv;
        double mx = 0, md = 0;
        for (int i = 0; i < nv; i++) {
            if (!isfinite(b[i])) nonfinite++;
            mx = fmax(mx, fabs(a[i]));
            md = fmax(md, fabs((double)a[i] - b[i]));
        }
        double rel = md / (mx > 0 ? mx : 1);
        if (md > worst_abs) worst_abs = md;
        if (rel > worst_rel) worst_rel = rel, worst_pos = p;
        float ma, mb;
        int ta = top1(a, nv, &ma), tb = top1(b, nv, &mb);
        if (ta != tb) {
            if (ma <= TOL_REL * mx)
                close_calls++;
            else
                mismatches++;
        }
        if (p < 4 || p % 50 == 0 || p == N_TOK - 1)
            printf("pos %3d: top1 cpu %6d cuda %6d  max|logit| %.4f  max|d| %.3g  rel %.3g\n", p, ta, tb, mx, md, rel);
    }
    printf("all %d positions: max|d| %.3g, worst relative %.3g at pos %d (tolerance %.0e), top-1 mismatches %d "
           "(+%d within tolerance of a tie)\n", N_TOK, worst_abs, worst_rel, worst_pos, TOL_REL, mismatches,
           close_calls);
    printf("time: cpu %.3f s (batched prefill), cuda %.3f s token by token = %.0f tok/s incl. graph capture\n",
           t1 - t0, t2 - t1, N_TOK / (t2 - t1));
    CHECK(nonfinite == 0, "%d non-finite CUDA logits", nonfinite);
    CHECK(worst_rel <= TOL_REL, "worst relative difference %.3g at pos %d", worst_rel, worst_pos);
    CHECK(mismatches == 0, "%d positions with a different top-1 token", mismatches);

    /* Reset + replay gives the same logits; another session is independent. */
    enum { N_RE = 40 };
    float *again = malloc(sizeof(float) * nv * N_RE);
    if (!again) return 1;
    if (ds4_session_eval_all_logits(sg2, toks + 5, N_RE, again, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    ds4_session_reset(sg);
    if (ds4_session_eval_all_logits(sg, toks, N_RE, again, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    CHECK(memcmp(again, lg, sizeof(float) * nv * N_RE) == 0, "logits after reset differ from the first run");
    /* Continuing past the stored positions still works and agrees with the CPU. */
    const float *last_c = ds4_session_logits(sc);
    int32_t next = 0;
    float m;
    next = top1(last_c, nv, &m);
    ds4_session_reset(sg);
    if (ds4_session_eval(sg, toks, N_TOK, NULL, NULL, &err) || ds4_session_eval(sg, &next, 1, NULL, NULL, &err) ||
        ds4_session_eval(sc, &next, 1, NULL, NULL, &err))
        return fprintf(stderr, "%s\n", err.msg), 1;
    double md = 0, mx = 0;
    for (int i = 0; i < nv; i++) {
        md = fmax(md, fabs((double)ds4_session_logits(sc)[i] - ds4_session_logits(sg)[i]));
        mx = fmax(mx, fabs(ds4_session_logits(sc)[i]));
    }
    printf("decode step %d after prefill: max|d| %.3g (rel %.3g)\n", N_TOK, md, md / mx);
    CHECK(md <= TOL_REL * mx, "decode after prefill differs: %.3g", md);
    /* A bad token is a clear error. */
    int32_t bad = nv + 5;
    CHECK(ds4_session_eval(sg, &bad, 1, NULL, NULL, &err) != 0, "bad token accepted");

    free(again);
    free(lc);
    free(lg);
    ds4_session_free(sc);
    ds4_session_free(sg);
    ds4_session_free(sg2);
    ds4_engine_close(cpu);
    ds4_engine_close(gpu);
    free(image);
    return TEST_DONE();
}
#endif
