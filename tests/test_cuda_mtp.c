/* test_cuda_mtp.c — the MTP block on the CUDA backend
 * (ds4_cuda_session_mtp, model-spec §8) in the engine's speculative cycle
 * (ds4_session_eval_speculative on cuda with --mtp), on tiny synthetic
 * models (preset tiny: window 16, so the MTP's ring and the kept streams
 * slide) with their MTP files.
 *
 * There is no reference implementation of the MTP block but the CPU
 * engine's (test_mtp checks that one against plain decoding; transformers
 * does not build it). Strict check, as test_cuda_forward's: before each
 * cycle of a 70-token decode the CPU session gets the device's MTP state
 * (the kept final streams, the MTP's raw ring, its positions), then both
 * draft the same position from the same tokens; the device's draft logits
 * must be the CPU's within TOL_REL of the largest, with the same top-1
 * but for near-ties (within TOL_REL of the CPU's top-2 margin), for F16
 * weights and experts and in exact mode (plain f32 numerics); the published
 * types (q2 experts, the MTP's Q4_K as the published file: one step's
 * re-quantised activations can flip a rounding step) are reported and must
 * be finite. The first cycle runs the MTP over the prompt's last window.
 * The free-running difference (each backend from its own state) is
 * reported beside the main model's own.
 * On the device itself:
 *  - speculation appends the plain greedy run's tokens and leaves its
 *    logits bit for bit after every cycle (a run whose drafts are all
 *    right, with every fourth kept draft taken back; one whose drafts are
 *    all wrong; one verifying the MTP's own drafts with margin 0), and the
 *    final streams it keeps are the plain run's bits;
 *  - the MTP's logits at a position are the same bits whether it ran one
 *    position a cycle (wrong drafts), two (right ones) or one after a
 *    take-back;
 *  - a second session stepping between the cycles keeps its logits (the
 *    MTP block writes only its own) and the plain run's.
 * Built by `make cuda` (test-cuda runs it on a GPU machine); the plain
 * build compiles it too and it skips there. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/engine/engine_impl.h"
#include "engine_fixture.h"
#include "testutil.h"
#include "cuda_test.h"
#ifdef DS4_CUDA

enum { CTX = 160, PROMPT = 37, GEN = 70, NPOS = PROMPT + GEN + 2 };
#define TOL_REL 1e-3

/* A run's MTP logits by the position they draft (as its hook saw them). */
typedef struct seen {
    float *logits; /* [NPOS][n_vocab] */
    bool at[NPOS];
} seen;

typedef struct hook_ctx {
    char pattern;          /* 'r' right drafts, 'w' wrong ones, 'n' none */
    const int32_t *ref;    /* the plain run's tokens after the prompt */
    int n_vocab;
    seen *s;               /* where the MTP's logits go */
} hook_ctx;

static int32_t hook(void *ctx, int pos, int32_t draft, const float *mtp_logits) {
    (void)draft;
    hook_ctx *h = ctx;
    if (pos < NPOS && mtp_logits) {
        memcpy(h->s->logits + (size_t)pos * h->n_vocab, mtp_logits, sizeof(float) * (size_t)h->n_vocab);
        h->s->at[pos] = true;
    }
    const int i = pos - PROMPT;
    if (h->pattern == 'n' || i >= GEN) return -1;
    return h->pattern == 'r' ? h->ref[i] : (h->ref[i] + 1 + pos % 7) % h->n_vocab;
}

typedef struct model {
    const char *what;
    bool exact, f16;
    ds4_engine *cpu, *gpu;
    int32_t prompt[PROMPT], ref[GEN + 1];
    float *refl;  /* [GEN + 1][n_vocab] the plain run's logits after the prompt and each token */
    float *plain_streams; /* the plain run's kept streams at its end */
    size_t streams_bytes;
    int nv;
} model;

/* How far logits b are from a (the reference) over the positions both
 * saw. */
typedef struct diff {
    int n, mismatches, close_calls, nonfinite, worst_pos;
    double worst, sum_l2;
} diff;

static void diff_add(diff *d, const float *a, const float *b, int nv, int pos) {
    double mx = 0, md = 0, e2 = 0, r2 = 0;
    for (int i = 0; i < nv; i++) {
        d->nonfinite += !isfinite(b[i]);
        const double x = (double)a[i] - b[i];
        mx = fmax(mx, fabs(a[i]));
        md = fmax(md, fabs(x));
        e2 += x * x;
        r2 += (double)a[i] * a[i];
    }
    const double rel = md / (mx > 0 ? mx : 1);
    if (rel > d->worst) d->worst = rel, d->worst_pos = pos;
    d->sum_l2 += sqrt(e2 / (r2 > 0 ? r2 : 1));
    float ma, mb;
    if (top1(a, nv, &ma) != top1(b, nv, &mb)) {
        if (ma <= TOL_REL * mx) d->close_calls++;
        else d->mismatches++;
    }
    d->n++;
}

static void diff_print(const char *what, const diff *d) {
    printf("  %s at %d positions: worst max|d|/max|logit| %.3g at %d, mean |d|/|ref| %.3g, top-1 differs at %d "
           "(+%d near-ties)\n", what, d->n, d->worst, d->worst_pos, d->n ? d->sum_l2 / d->n : 0.0, d->mismatches,
           d->close_calls);
}

/* Speculative decoding of GEN tokens on the device with the hook's
 * pattern (or, pattern 0, the MTP's own drafts and margin 0), a second
 * session stepping plainly beside it; every cycle checked against the
 * plain run, and at the end the kept streams. drop_every: every k-th
 * kept draft taken back (0: none). Returns the kept drafts. */
static int gpu_run(model *m, char pattern, int drop_every, seen *sn) {
    ds4_session *s = NULL, *b = NULL;
    ds4_err err = {{0}};
    hook_ctx h = {pattern, m->ref, m->nv, sn};
    ds4_spec_opts so = {.draft_hook = pattern ? hook : NULL, .hook_ctx = &h};
    int kept = 0, drops = 0, bad = 0, bpos = 0;
    void *streams = malloc(m->streams_bytes);
    if (!streams || ds4_session_new(m->gpu, &s, &err) || ds4_session_new(m->gpu, &b, &err) ||
        ds4_session_eval(s, m->prompt, PROMPT, NULL, NULL, &err) ||
        ds4_session_eval(b, m->prompt, PROMPT, NULL, NULL, &err)) {
        CHECK(0, "%s: %s", m->what, err.msg);
        goto out;
    }
    for (int i = 0; i < GEN && !bad;) {
        int32_t out[2];
        /* the other session steps first: its logits stay on the device
         * while this one's cycle runs */
        if (bpos < GEN && ds4_session_eval(b, &m->ref[bpos++], 1, NULL, NULL, &err)) {
            CHECK(0, "%s: plain session: %s", m->what, err.msg);
            break;
        }
        const int n = ds4_session_eval_speculative(s, m->ref[i], GEN - i, &so, out, &err);
        if (n < 0) {
            CHECK(0, "%s: cycle at %d: %s", m->what, PROMPT + i, err.msg);
            break;
        }
        kept += n == 2;
        const bool drop = n == 2 && drop_every && kept % drop_every == 0;
        if (drop) drops += ds4_session_drop_draft(s);
        const int k = drop ? 1 : n;
        bad = out[0] != m->ref[i] || (n == 2 && out[1] != m->ref[i + 1]) ||
              memcmp(ds4_session_logits(s), m->refl + (size_t)(i + k) * m->nv, sizeof(float) * m->nv) ||
              memcmp(ds4_session_logits(b), m->refl + (size_t)bpos * m->nv, sizeof(float) * m->nv);
        CHECK(!bad, "%s, drafts '%c': after position %d the sessions differ from the plain run", m->what,
              pattern ? pattern : 'm', PROMPT + i);
        i += k;
    }
    const uint32_t L = ds4_engine_model(m->gpu)->hp.n_layer;
    bool same = !ds4_cuda_session_state(s->cuda, L, "streams", streams, m->streams_bytes, false, &err) &&
                !memcmp(streams, m->plain_streams, m->streams_bytes);
    printf("  device, drafts '%c': %d kept, %d taken back; kept streams %s the plain run's\n", pattern ? pattern : 'm',
           kept, drops, same ? "equal" : "DIFFER from");
    CHECK(same, "%s, drafts '%c': the kept final streams differ from the plain run's %s", m->what,
          pattern ? pattern : 'm', err.msg);
    CHECK(!drop_every || drops > 2, "%s: too few take-backs (%d)", m->what, drops);
out:
    free(streams);
    ds4_session_free(s);
    ds4_session_free(b);
    return kept;
}

/* Strict: before each cycle the CPU session gets the device session's MTP
 * state, then both draft the position after the same token; the main
 * model's state (and so its logits) each backend keeps its own, which is
 * reported free-running beside the MTP's. */
static void strict_run(model *m, diff *strict, diff *free_main) {
    ds4_session *g = NULL, *c = NULL;
    ds4_err err = {{0}};
    seen sg = {0}, sc = {0};
    hook_ctx hg = {'w', m->ref, m->nv, &sg}, hc = {'n', m->ref, m->nv, &sc};
    ds4_spec_opts og = {.draft_hook = hook, .hook_ctx = &hg}, oc = {.draft_hook = hook, .hook_ctx = &hc};
    const uint32_t L = ds4_engine_model(m->gpu)->hp.n_layer;
    sg.logits = malloc(sizeof(float) * (size_t)m->nv * NPOS);
    sc.logits = malloc(sizeof(float) * (size_t)m->nv * NPOS);
    if (!sg.logits || !sc.logits || ds4_session_new(m->gpu, &g, &err) || ds4_session_new(m->cpu, &c, &err) ||
        ds4_session_eval(g, m->prompt, PROMPT, NULL, NULL, &err) ||
        ds4_session_eval(c, m->prompt, PROMPT, NULL, NULL, &err)) {
        CHECK(0, "%s: strict: %s", m->what, err.msg);
        goto out;
    }
    diff_add(free_main, m->refl, ds4_session_logits(c), m->nv, PROMPT);
    for (int i = 0; i < GEN; i++) {
        spec_state *gs = g->spec, *cs = c->spec;
        const kv_rows *raw = &cs->mtp_kv.raw;
        cs->mtp_lo = gs->mtp_lo, cs->mtp_next = gs->mtp_next, cs->h_n = gs->h_n;
        if (ds4_cuda_session_state(g->cuda, L, "streams", cs->h, m->streams_bytes, false, &err) ||
            ds4_cuda_session_state(g->cuda, L, "raw", raw->data,
                                   (size_t)raw->cap * raw->width * (raw->f16 ? 2 : 4), false, &err)) {
            CHECK(0, "%s: strict: %s", m->what, err.msg);
            break;
        }
        int32_t out[2];
        if (ds4_session_eval_speculative(g, m->ref[i], GEN - i, &og, out, &err) != 1 ||
            ds4_session_eval_speculative(c, m->ref[i], GEN - i, &oc, out, &err) != 1) {
            CHECK(0, "%s: strict cycle %d: %s", m->what, i, err.msg);
            break;
        }
        const int pos = PROMPT + i + 1;
        if (sg.at[pos] && sc.at[pos])
            diff_add(strict, sc.logits + (size_t)pos * m->nv, sg.logits + (size_t)pos * m->nv, m->nv, pos);
        diff_add(free_main, m->refl + (size_t)(i + 1) * m->nv, ds4_session_logits(c), m->nv, pos);
    }
out:
    free(sg.logits);
    free(sc.logits);
    ds4_session_free(g);
    ds4_session_free(c);
}

/* Whether two runs' MTP logits are the same bits wherever both saw them;
 * the positions compared. */
static int same_bits(const model *m, const seen *a, const seen *b, int *differ) {
    int n = 0;
    *differ = 0;
    for (int p = 0; p < NPOS; p++)
        if (a->at[p] && b->at[p]) {
            n++;
            *differ += memcmp(a->logits + (size_t)p * m->nv, b->logits + (size_t)p * m->nv, sizeof(float) * m->nv) != 0;
        }
    return n;
}

/* The CPU engine's MTP logits at each position from its own state, fed the
 * plain run's tokens (no draft verified: the MTP still runs each cycle). */
static void cpu_run(model *m, seen *sn) {
    ds4_session *s = NULL;
    ds4_err err = {{0}};
    hook_ctx h = {'n', m->ref, m->nv, sn};
    ds4_spec_opts so = {.draft_hook = hook, .hook_ctx = &h};
    if (ds4_session_new(m->cpu, &s, &err) || ds4_session_eval(s, m->prompt, PROMPT, NULL, NULL, &err)) {
        CHECK(0, "%s: cpu: %s", m->what, err.msg);
        ds4_session_free(s);
        return;
    }
    for (int i = 0; i < GEN; i++) {
        int32_t out[2];
        if (ds4_session_eval_speculative(s, m->ref[i], GEN - i, &so, out, &err) != 1) {
            CHECK(0, "%s: cpu cycle %d: %s", m->what, i, err.msg);
            break;
        }
    }
    ds4_session_free(s);
}

static void one_model(const char *what, ds4_weight_form weights, const char *experts, const char *mtp_experts,
                      bool exact) {
    char path[512], mpath[512];
    snprintf(path, sizeof path, "%s/ds4-test-cuda-mtp-%d.gguf", tmpdir(), (int)getpid());
    snprintf(mpath, sizeof mpath, "%s/ds4-test-cuda-mtp-%d-mtp.gguf", tmpdir(), (int)getpid());
    model m = {.what = what, .exact = exact, .f16 = weights == DS4_WEIGHTS_F16};
    seen sr = {0}, sw = {0}, sc = {0};
    ds4_session *pl = NULL;
    ds4_err err = {{0}};
    printf("== %s\n", what);
    if (write_tiny(path, weights, experts, 11, "tiny (test_cuda_mtp)") ||
        write_tiny_mtp(mpath, weights, mtp_experts, 12)) {
        CHECK(0, "%s: writing the model", what);
        goto out;
    }
    ds4_engine_config cc = {.model_path = path, .mtp_path = mpath, .ctx = CTX, .threads = 2, .exact = exact,
                            .backend = "cpu"};
    ds4_engine_config gc = cc;
    gc.backend = "cuda";
    if (ds4_engine_open(&m.cpu, &cc, &err) || ds4_engine_open(&m.gpu, &gc, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        goto out;
    }
    const ds4_hparams *hp = &ds4_engine_model(m.gpu)->hp;
    m.nv = (int)hp->n_vocab;
    m.streams_bytes = (size_t)hp->n_swa * DS4_N_HC * hp->n_embd * sizeof(float);
    random_tokens(m.prompt, PROMPT, (uint32_t)m.nv, 21);
    m.refl = malloc(sizeof(float) * (size_t)m.nv * (GEN + 1));
    m.plain_streams = malloc(m.streams_bytes);
    sr.logits = malloc(sizeof(float) * (size_t)m.nv * NPOS);
    sw.logits = malloc(sizeof(float) * (size_t)m.nv * NPOS);
    sc.logits = malloc(sizeof(float) * (size_t)m.nv * NPOS);
    if (!m.refl || !m.plain_streams || !sr.logits || !sw.logits || !sc.logits) goto out;
    /* the device's plain greedy run (its last token evaluated too: the
     * speculative runs end there) */
    if (ds4_session_new(m.gpu, &pl, &err) || ds4_session_eval(pl, m.prompt, PROMPT, NULL, NULL, &err)) {
        CHECK(0, "%s: plain: %s", what, err.msg);
        goto out;
    }
    for (int i = 0; i <= GEN; i++) {
        memcpy(m.refl + (size_t)i * m.nv, ds4_session_logits(pl), sizeof(float) * m.nv);
        m.ref[i] = ds4_session_argmax(pl, -1);
        if (i < GEN && ds4_session_eval(pl, &m.ref[i], 1, NULL, NULL, &err)) {
            CHECK(0, "%s: plain: %s", what, err.msg);
            goto out;
        }
    }
    if (ds4_cuda_session_state(pl->cuda, hp->n_layer, "streams", m.plain_streams, m.streams_bytes, false, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        goto out;
    }
    const int right = gpu_run(&m, 'r', 4, &sr);
    const int wrong = gpu_run(&m, 'w', 0, &sw);
    gpu_run(&m, 0, 0, NULL);
    CHECK(right > 10 && wrong == 0, "%s: right drafts kept %d, wrong ones %d", what, right, wrong);
    int differ = 0, n = same_bits(&m, &sr, &sw, &differ);
    printf("  device: the MTP's logits one position a cycle and two: %d positions, %d differ\n", n, differ);
    CHECK(n >= GEN / 2 && differ == 0, "%s: %d of %d positions' MTP logits differ between runs", what, differ, n);
    diff strict = {0}, free_main = {0}, free_mtp = {0};
    strict_run(&m, &strict, &free_main);
    diff_print("strict, the MTP against the cpu's", &strict);
    CHECK(strict.n == GEN - 1 && strict.nonfinite == 0, "%s: strict: %d positions, %d non-finite", what, strict.n,
          strict.nonfinite);
    if (exact || m.f16)
        CHECK(strict.worst <= TOL_REL && strict.mismatches == 0,
              "%s: strict: the MTP's logits differ from the cpu's by %.3g of the largest at %d, top-1 at %d", what,
              strict.worst, strict.worst_pos, strict.mismatches);
    cpu_run(&m, &sc);
    for (int p = 0; p < NPOS; p++)
        if (sw.at[p] && sc.at[p]) diff_add(&free_mtp, sc.logits + (size_t)p * m.nv, sw.logits + (size_t)p * m.nv, m.nv, p);
    diff_print("free-running, the model against the cpu's", &free_main);
    diff_print("free-running, the MTP against the cpu's", &free_mtp);
out:
    ds4_session_free(pl);
    ds4_engine_close(m.cpu);
    ds4_engine_close(m.gpu);
    free(m.refl);
    free(m.plain_streams);
    free(sr.logits);
    free(sw.logits);
    free(sc.logits);
    unlink(path);
    unlink(mpath);
}

int main(void) {
    if (!ds4_cuda_available()) TEST_SKIP("no CUDA device");
    one_model("published types, q2 experts (MTP q4)", DS4_WEIGHTS_PUBLISHED, "q2", "q4", false);
    one_model("F16 weights and experts", DS4_WEIGHTS_F16, "f16", "f16", false);
    one_model("published types, exact", DS4_WEIGHTS_PUBLISHED, "q2", "q4", true);
    return TEST_DONE();
}
#endif
