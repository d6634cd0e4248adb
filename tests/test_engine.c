/* test_engine.c — the CPU forward pass, its numerics and the sampler.
 *
 * On tiny synthetic models (ds4_synth "tiny": window 16, ratios 4 and 16,
 * indexer top-k 8, so ~300 tokens slide the window, emit many compressed
 * rows and run indexer selections):
 *  (a) one-token decode, whole-prompt prefill and chunked prefill with chunk
 *      sizes that are not multiples of the ratios give bit-identical logits
 *      at every position and bit-identical KV state (raw window, compressed
 *      rows, frontiers, indexer rows), in the official numerics (q2 experts,
 *      Q8_0 weights) and the exact numerics (f32 model). Bitwise, not within
 *      a tolerance: every per-token quantity is computed by the same code
 *      with the same operand order whatever the batch, so any difference is
 *      a bug (a token seeing the wrong rows, a frontier walked differently);
 *  (b) 1, 2 and 3 worker threads give bit-identical logits;
 *  (c) the numeric primitives match naive restatements of model-spec §4–§5
 *      written here (RoPE/YaRN, Sinkhorn, E4M3 and E2M1 rounding with ties to
 *      the even code, FP8/FP4 block round-trips, Hadamard, top-k ties);
 *  (d) the sampler: greedy, seeded reproducibility, the xorshift64* stream,
 *      top-k / top-p / min-p filtering;
 *  plus bad input (unknown token, context overflow) and cancellation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/engine/engine_impl.h"
#include "../src/quant/quant.h"
#include "engine_fixture.h"
#include "session_state.h"
#include "testutil.h"

static bool all_finite(const float *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i])) return false;
    return true;
}

/* (a): decode vs prefill vs chunked prefill, all logits and state. */
static void test_paths_agree(const char *path, bool exact) {
    const int ctx = 512;
    ds4_engine *whole = open_engine(path, exact, 1, 320, ctx);
    ds4_engine *chunked = open_engine(path, exact, 1, 7, ctx);
    ds4_engine *odd = open_engine(path, exact, 2, 37, ctx);
    CHECK(whole && chunked && odd, "engines open");
    if (!whole || !chunked || !odd) return;
    uint32_t V = whole->model.hp.n_vocab;
    const int lens[] = {3, 190};
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        int n = lens[li];
        int32_t *tok = malloc(sizeof(int32_t) * (size_t)n);
        random_tokens(tok, n, V, (uint64_t)n);
        float *lw = malloc(sizeof(float) * (size_t)n * V), *lc = malloc(sizeof(float) * (size_t)n * V);
        float *ld = malloc(sizeof(float) * (size_t)n * V);
        ds4_session *sw, *sc, *sd, *so;
        ds4_err err;
        CHECK(!ds4_session_new(whole, &sw, &err) && !ds4_session_new(chunked, &sc, &err) &&
                  !ds4_session_new(whole, &sd, &err) && !ds4_session_new(odd, &so, &err),
              "sessions");
        CHECK(ds4_session_eval_all_logits(sw, tok, n, lw, &err) == 0, "whole prefill: %s", err.msg);
        CHECK(ds4_session_eval_all_logits(sc, tok, n, lc, &err) == 0, "chunked prefill: %s", err.msg);
        for (int i = 0; i < n; i++) {
            CHECK(ds4_session_eval(sd, tok + i, 1, NULL, NULL, &err) == 0, "decode %d: %s", i, err.msg);
            memcpy(ld + (size_t)i * V, ds4_session_logits(sd), V * sizeof(float));
        }
        /* the odd engine: caller-side pieces of 5 then chunks of 37 inside */
        int done = 0;
        while (done < n) {
            int m = done == 0 && n > 5 ? 5 : n - done;
            CHECK(ds4_session_eval(so, tok + done, m, NULL, NULL, &err) == 0, "odd eval: %s", err.msg);
            done += m;
        }
        CHECK(all_finite(lw, (size_t)n * V), "finite logits (n=%d exact=%d)", n, exact);
        CHECK(!memcmp(lw, lc, sizeof(float) * (size_t)n * V), "prefill vs chunked logits (n=%d exact=%d)", n,
              exact);
        CHECK(!memcmp(lw, ld, sizeof(float) * (size_t)n * V), "prefill vs decode logits (n=%d exact=%d)", n,
              exact);
        CHECK(!memcmp(ds4_session_logits(sw), lw + (size_t)(n - 1) * V, V * sizeof(float)), "last logits kept");
        CHECK(!memcmp(ds4_session_logits(so), ds4_session_logits(sw), V * sizeof(float)),
              "odd chunking last logits (n=%d exact=%d)", n, exact);
        char why[200] = "";
        CHECK(!state_diff(sw, sc, why, sizeof why), "state prefill vs chunked (n=%d exact=%d): %s", n, exact, why);
        CHECK(!state_diff(sw, sd, why, sizeof why), "state prefill vs decode (n=%d exact=%d): %s", n, exact, why);
        CHECK(!state_diff(sw, so, why, sizeof why), "state prefill vs odd (n=%d exact=%d): %s", n, exact, why);
        if (n == 190) { /* the prompt crossed every path: window, emissions, indexer top-k */
            const ds4_hparams *hp = &sw->e->model.hp;
            const layer_kv *L2 = &sw->layers[2], *L3 = &sw->layers[3];
            CHECK(n > (int)hp->n_swa && 47 > hp->indexer_top_k, "prompt longer than window and 4·top_k");
            CHECK(L2->n_comp == 47 && L2->n_index_comp == 47, "ratio-4 rows %u", L2->n_comp);
            CHECK(L3->n_comp == 190 / sw->e->model.layers[3].compress_ratio, "ratio-R rows %u", L3->n_comp);
        }
        ds4_session_free(sw);
        ds4_session_free(sc);
        ds4_session_free(sd);
        ds4_session_free(so);
        free(tok);
        free(lw);
        free(lc);
        free(ld);
    }
    ds4_engine_close(whole);
    ds4_engine_close(chunked);
    ds4_engine_close(odd);
}

/* (b): thread counts give the same bits (on a model with F16 weights and
 * Q4_K experts, so those paths run too). */
static void test_threads_agree(const char *path) {
    const int n = 120;
    float *ref = NULL;
    for (int threads = 1; threads <= 3; threads++) {
        ds4_engine *e = open_engine(path, false, threads, 50, 256);
        CHECK(e != NULL, "engine with %d threads", threads);
        if (!e) return;
        uint32_t V = e->model.hp.n_vocab;
        int32_t tok[n];
        random_tokens(tok, n, V, 99);
        float *l = malloc(sizeof(float) * (size_t)n * V);
        ds4_session *s;
        ds4_err err;
        CHECK(!ds4_session_new(e, &s, &err), "session");
        CHECK(!ds4_session_eval_all_logits(s, tok, n, l, &err), "eval: %s", err.msg);
        CHECK(all_finite(l, (size_t)n * V), "finite logits with %d threads", threads);
        if (!ref)
            ref = l;
        else {
            CHECK(!memcmp(ref, l, sizeof(float) * (size_t)n * V), "%d threads differ from 1", threads);
            free(l);
        }
        ds4_session_free(s);
        ds4_engine_close(e);
    }
    free(ref);
}

static int progress_calls;
static int cancel_after_first(void *ctx, int done, int total) {
    progress_calls++;
    return 1;
}

/* Bad input is refused with the state unchanged; cancellation keeps the
 * tokens done so far. */
static void test_errors_and_cancel(const char *path) {
    ds4_engine *e = open_engine(path, false, 1, 10, 64);
    CHECK(e != NULL, "engine");
    if (!e) return;
    CHECK(ds4_engine_tokenizer(e) != NULL && !strcmp(ds4_engine_backend_name(e), "cpu") &&
              ds4_engine_ctx(e) == 64, "engine accessors");
    ds4_session *s;
    ds4_err err;
    CHECK(!ds4_session_new(e, &s, &err), "session");
    int32_t bad[2] = {1, (int32_t)e->model.hp.n_vocab};
    CHECK(ds4_session_eval(s, bad, 2, NULL, NULL, &err) == -1 && strstr(err.msg, "vocabulary"),
          "unknown token refused: %s", err.msg);
    CHECK(ds4_session_n_tokens(s) == 0, "state unchanged");
    int32_t many[65];
    random_tokens(many, 65, e->model.hp.n_vocab, 3);
    CHECK(ds4_session_eval(s, many, 65, NULL, NULL, &err) == -1 && strstr(err.msg, "context"),
          "overflow refused: %s", err.msg);
    CHECK(ds4_session_eval(s, many, 25, cancel_after_first, NULL, &err) == 1, "cancel returns 1");
    CHECK(progress_calls == 1 && ds4_session_n_tokens(s) == 10, "cancel kept one chunk (%d tokens)",
          ds4_session_n_tokens(s));
    ds4_session_reset(s);
    CHECK(ds4_session_n_tokens(s) == 0, "reset");
    ds4_session_free(s);
    ds4_engine_close(e);
    ds4_engine_config cfg = {.model_path = path, .backend = "metal"};
    CHECK(ds4_engine_open(&e, &cfg, &err) == -1 && e == NULL, "unknown backend refused");
}

/* ------------------------------------------------- (c) numeric primitives */

/* Spec §5.4 restated in double: θ = p·base^(-2k/n_rot), YaRN ramp on the pair index. */
static void naive_rope(double *x, int hd, int n_rot, int64_t p, double base, bool yarn, double low,
                       double high, double factor) {
    double *t = x + hd - n_rot;
    for (int k = 0; k < n_rot / 2; k++) {
        double th = (double)p * pow(base, -2.0 * k / n_rot);
        if (yarn) {
            double y = (k - low) / fmax(0.001, high - low);
            double ramp = 1.0 - fmin(1.0, fmax(0.0, y));
            th = th / factor * (1.0 - ramp) + th * ramp;
        }
        double c = cos(th), s = sin(th), x0 = t[2 * k], x1 = t[2 * k + 1];
        t[2 * k] = x0 * c - x1 * s;
        t[2 * k + 1] = x0 * s + x1 * c;
    }
}

static void test_rope(void) {
    ds4_hparams hp = {0};
    hp.n_rot = 64;
    hp.rope_freq_base = 10000;
    hp.compress_rope_freq_base = 160000;
    hp.rope_scale_factor = 16;
    hp.rope_orig_ctx = 65536;
    hp.yarn_beta_fast = 32;
    hp.yarn_beta_slow = 1;
    rope_params plain, comp;
    rope_params_init(&plain, &hp, false);
    rope_params_init(&comp, &hp, true);
    CHECK(!plain.yarn && comp.yarn, "yarn only on compressed layers");
    CHECK(comp.corr_low == 15.0f && comp.corr_high == 25.0f, "YaRN range %g..%g (spec: 15..25)",
          comp.corr_low, comp.corr_high);
    const int64_t positions[] = {0, 1, 7, 127, 1000, 65535};
    for (int yi = 0; yi < 2; yi++)
        for (size_t pi = 0; pi < sizeof positions / sizeof *positions; pi++) {
            float x[128];
            double xd[128];
            for (int i = 0; i < 128; i++) xd[i] = x[i] = (float)sin(i * 0.37 + 1.0);
            int64_t p = positions[pi];
            rope_tail(x, 128, p, yi ? &comp : &plain, false);
            naive_rope(xd, 128, 64, p, yi ? 160000 : 10000, yi, 15, 25, 16);
            double worst = 0;
            for (int i = 0; i < 128; i++) worst = fmax(worst, fabs(x[i] - xd[i]));
            /* float angles: the error grows with p·ulp */
            CHECK(worst < 1e-5 + 2e-7 * (double)p, "rope yarn=%d p=%lld max err %g", yi, (long long)p, worst);
            for (int i = 0; i < 64; i++) CHECK(x[i] == (float)sin(i * 0.37 + 1.0), "head dims untouched");
            rope_tail(x, 128, p, yi ? &comp : &plain, true);
            worst = 0;
            for (int i = 0; i < 128; i++) worst = fmax(worst, fabs(x[i] - (float)sin(i * 0.37 + 1.0)));
            CHECK(worst < 1e-5, "inverse rope undoes rope (p=%lld, err %g)", (long long)p, worst);
        }
}

/* Spec §5.2 step 3 restated in double. */
static void naive_sinkhorn(const float *mix, const float *scale, const float *base, int iters, double eps,
                           double *pre, double *post, double *C) {
    for (int h = 0; h < 4; h++) {
        pre[h] = 1.0 / (1.0 + exp(-(mix[h] * (double)scale[0] + base[h]))) + eps;
        post[h] = 2.0 / (1.0 + exp(-(mix[4 + h] * (double)scale[1] + base[4 + h])));
    }
    for (int r = 0; r < 4; r++) {
        double m = -1e300, s = 0;
        for (int c = 0; c < 4; c++) m = fmax(m, mix[8 + 4 * r + c] * (double)scale[2] + base[8 + 4 * r + c]);
        for (int c = 0; c < 4; c++) s += exp(mix[8 + 4 * r + c] * (double)scale[2] + base[8 + 4 * r + c] - m);
        for (int c = 0; c < 4; c++)
            C[4 * r + c] = exp(mix[8 + 4 * r + c] * (double)scale[2] + base[8 + 4 * r + c] - m) / s + eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it) /* rows */
            for (int r = 0; r < 4; r++) {
                double s = 0;
                for (int c = 0; c < 4; c++) s += C[4 * r + c];
                for (int c = 0; c < 4; c++) C[4 * r + c] /= s + eps;
            }
        for (int c = 0; c < 4; c++) {
            double s = 0;
            for (int r = 0; r < 4; r++) s += C[4 * r + c];
            for (int r = 0; r < 4; r++) C[4 * r + c] /= s + eps;
        }
    }
}

static void test_sinkhorn(void) {
    float mix[24], scale[3] = {0.7f, -0.3f, 1.9f}, base[24];
    for (int i = 0; i < 24; i++) {
        mix[i] = (float)sin(i * 1.7) * 2.0f;
        base[i] = (float)cos(i * 0.9);
    }
    float pre[4], post[4], comb[16];
    double dpre[4], dpost[4], dC[16];
    hc_split(mix, scale, base, 20, 1e-6f, pre, post, comb);
    naive_sinkhorn(mix, scale, base, 20, 1e-6, dpre, dpost, dC);
    double worst = 0;
    for (int i = 0; i < 4; i++) worst = fmax(worst, fmax(fabs(pre[i] - dpre[i]), fabs(post[i] - dpost[i])));
    for (int i = 0; i < 16; i++) worst = fmax(worst, fabs(comb[i] - dC[i]));
    CHECK(worst < 2e-6, "sinkhorn vs naive: %g", worst);
    for (int c = 0; c < 4; c++) {
        double s = 0;
        for (int r = 0; r < 4; r++) s += comb[4 * r + c];
        CHECK(fabs(s - 1.0) < 1e-4, "comb column %d sums to %g", c, s);
    }
}

/* E4M3FN table (spec §4): code i = e·8 + m, 0..126. */
static double e4m3_table(int i) {
    int e = i >> 3, m = i & 7;
    return e == 0 ? m / 512.0 : (1.0 + m / 8.0) * ldexp(1.0, e - 7);
}

static double naive_nearest(double v, double (*table)(int), int n_codes, double vmax) {
    double a = fmin(fabs(v), vmax);
    int best = 0;
    for (int i = 1; i < n_codes; i++) {
        double d = fabs(table(i) - a), db = fabs(table(best) - a);
        if (d < db || (d == db && (i % 2 == 0) && (best % 2 == 1))) best = i;
    }
    return v < 0 ? -table(best) : table(best);
}

static double e2m1_table(int i) {
    static const double v[8] = {0, 0.5, 1, 1.5, 2, 3, 4, 6};
    return v[i];
}

static void test_fp8_fp4(void) {
    int bad = 0;
    /* every code value, every midpoint (ties), and points just around them */
    for (int i = 0; i < 126; i++) {
        double lo = e4m3_table(i), hi = e4m3_table(i + 1), mid = (lo + hi) / 2;
        const double probes[] = {lo, hi, mid, nextafterf((float)mid, 0), nextafterf((float)mid, 1000)};
        for (int k = 0; k < 5; k++)
            for (int sg = -1; sg <= 1; sg += 2) {
                float v = (float)(sg * probes[k]);
                if ((double)e4m3_round(v) != naive_nearest(v, e4m3_table, 127, 448)) bad++;
            }
    }
    for (int i = 0; i < 20000; i++) {
        float v = (float)(sin(i * 12.9898) * pow(2.0, (i % 30) - 15));
        if ((double)e4m3_round(v) != naive_nearest(v, e4m3_table, 127, 448)) bad++;
    }
    CHECK(bad == 0, "e4m3 rounding mismatches: %d", bad);
    CHECK(e4m3_round(1000.0f) == 448.0f && e4m3_round(-449.0f) == -448.0f, "e4m3 clamps");
    bad = 0;
    for (int i = 0; i < 7; i++) {
        double mid = (e2m1_table(i) + e2m1_table(i + 1)) / 2;
        for (int sg = -1; sg <= 1; sg += 2)
            if ((double)e2m1_round((float)(sg * mid)) != naive_nearest(sg * mid, e2m1_table, 8, 6)) bad++;
    }
    for (int i = 0; i < 5000; i++) {
        float v = (float)(sin(i * 3.1) * 7.0);
        if ((double)e2m1_round(v) != naive_nearest(v, e2m1_table, 8, 6)) bad++;
    }
    CHECK(bad == 0, "e2m1 rounding mismatches: %d", bad);

    /* FP8 KV block round-trip: power-of-two scale from ceil(log2(amax/448)) */
    float row[128], orig[128];
    for (int i = 0; i < 128; i++) orig[i] = row[i] = (float)(sin(i * 0.77) * (i < 64 ? 3.0 : 0.01));
    fp8_kv_roundtrip(row, 64);
    bad = 0;
    double amax = 0;
    for (int i = 0; i < 64; i++) amax = fmax(amax, fabs(orig[i]));
    double scale = pow(2.0, ceil(log2(fmax(amax, 1e-4) / 448.0)));
    for (int i = 0; i < 64; i++)
        if ((double)row[i] != naive_nearest(orig[i] / scale, e4m3_table, 127, 448) * scale) bad++;
    for (int i = 64; i < 128; i++)
        if (row[i] != orig[i]) bad++;
    CHECK(bad == 0, "fp8 kv round-trip mismatches: %d", bad);

    /* FP4 block round-trip (blocks of 32, scale from ceil(log2(amax/6))) */
    float v[64], vo[64];
    for (int i = 0; i < 64; i++) vo[i] = v[i] = (float)(cos(i * 1.3) * (i < 32 ? 0.02 : 50.0));
    fp4_roundtrip(v, 64);
    bad = 0;
    for (int b = 0; b < 64; b += 32) {
        double am = 0;
        for (int i = 0; i < 32; i++) am = fmax(am, fabs(vo[b + i]));
        double sc = pow(2.0, ceil(log2(am / 6.0)));
        for (int i = 0; i < 32; i++)
            if ((double)v[b + i] != naive_nearest(vo[b + i] / sc, e2m1_table, 8, 6) * sc) bad++;
    }
    CHECK(bad == 0, "fp4 round-trip mismatches: %d", bad);
}

static void test_hadamard(void) {
    float x[128];
    double ref[128];
    for (int i = 0; i < 128; i++) x[i] = (float)sin(i * 0.41 + 0.2);
    for (int i = 0; i < 128; i++) {
        double s = 0;
        for (int j = 0; j < 128; j++) s += (__builtin_popcount(i & j) & 1 ? -1.0 : 1.0) * x[j];
        ref[i] = s / sqrt(128.0);
    }
    hadamard_inplace(x, 128);
    double worst = 0;
    for (int i = 0; i < 128; i++) worst = fmax(worst, fabs(x[i] - ref[i]));
    CHECK(worst < 1e-5, "hadamard vs Sylvester matrix: %g", worst);
}

static void test_topk(void) {
    float s[10] = {1, 5, 3, 5, 2, 5, 0, NAN, 4, 5};
    int heap[4], out[4], rank[3];
    topk_indices_ascending(s, 10, 4, heap, out);
    CHECK(out[0] == 1 && out[1] == 3 && out[2] == 5 && out[3] == 9, "top-4 of ties: %d %d %d %d", out[0],
          out[1], out[2], out[3]);
    topk_indices_ascending(s, 10, 3, heap, out);
    CHECK(out[0] == 1 && out[1] == 3 && out[2] == 5, "ties go to the lower index");
    topk_rank_order(s, 10, 3, rank);
    CHECK(rank[0] == 1 && rank[1] == 3 && rank[2] == 5, "rank order");
    float t[5] = {-1, 2, 7, 2, 9};
    topk_rank_order(t, 5, 3, rank);
    CHECK(rank[0] == 4 && rank[1] == 2 && rank[2] == 1, "rank order desc %d %d %d", rank[0], rank[1], rank[2]);
}

/* ---------------------------------------------------------- (d) sampling */

static uint64_t naive_xorshift(uint64_t *x) {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    return *x * 0x2545F4914F6CDD1Dull;
}

/* The definition ds4_argmax_except follows, written plainly: the first
 * index (not skip) of the largest non-NaN logit; with none above -inf, the
 * first index not skipped. */
static int32_t plain_argmax(const float *x, int n, int32_t skip) {
    int32_t best = -1;
    for (int32_t i = 0; i < n; i++)
        if (i != skip && x[i] == x[i] && (best < 0 || x[i] > x[best])) best = i;
    if (best < 0 || x[best] == -INFINITY) return skip == 0 && n > 1 ? 1 : 0;
    return best;
}

/* Greedy over vocabulary-sized and odd-sized arrays: ties (few distinct
 * values), the skipped index at and around block edges, NaN and -inf. */
static void test_argmax(void) {
    enum { N = 129280 };
    static float x[N];
    uint64_t r = 7;
    int bad = 0, cases = 0;
    const int sizes[] = {1, 2, 15, 16, 17, 255, 256, 257, 1000, N};
    for (int si = 0; si < (int)(sizeof sizes / sizeof *sizes); si++)
        for (int kind = 0; kind < 5; kind++)
            for (int rep = 0; rep < 6; rep++) {
                const int n = sizes[si];
                for (int i = 0; i < n; i++) {
                    uint64_t u = naive_xorshift(&r) >> 40;
                    x[i] = kind == 1 ? (float)(u % 4) : (float)u / 16777216.0f - 0.5f; /* kind 1: ties */
                    if (kind == 2 && u % 7 == 0) x[i] = NAN;
                    if (kind == 3) x[i] = u % 5 ? -INFINITY : x[i];
                    if (kind == 4) x[i] = u % 3 ? NAN : -INFINITY;
                }
                const int32_t skips[] = {-1, 0, n - 1, n / 2, 255, 256, plain_argmax(x, n, -1)};
                for (int k = 0; k < (int)(sizeof skips / sizeof *skips); k++) {
                    if (skips[k] >= n) continue;
                    cases++;
                    bad += ds4_argmax_except(x, n, skips[k]) != plain_argmax(x, n, skips[k]);
                }
                bad += ds4_argmax(x, n) != plain_argmax(x, n, -1);
            }
    CHECK(bad == 0, "ds4_argmax_except matches the plain definition (%d of %d cases differ)", bad, cases);
}

static void test_sampler(void) {
    float l[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f, -7.0f};
    ds4_sampler g = {.temperature = 0, .top_p = 1, .min_p = 0.05f};
    CHECK(ds4_sample(&g, l, 6) == 1 && ds4_argmax(l, 6) == 1, "greedy = first max");

    ds4_sampler a = {.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.0f}, b;
    ds4_sampler_seed(&a, 42);
    b = a;
    int same = 1, hist[6] = {0};
    for (int i = 0; i < 2000; i++) {
        int x = ds4_sample(&a, l, 6), y = ds4_sample(&b, l, 6);
        same &= x == y;
        hist[x]++;
    }
    CHECK(same, "same seed, same tokens");
    CHECK(hist[1] > 400 && hist[3] > 400 && hist[5] < 10, "full-vocab sampling follows the weights");

    /* the RNG stream: draw r = u·Σ by hand for a two-token distribution */
    float two[2] = {0.0f, 0.0f};
    ds4_sampler c = {.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.0f};
    ds4_sampler_seed(&c, 12345);
    uint64_t x = 12345;
    int match = 1;
    for (int i = 0; i < 100; i++) {
        double u = (double)((naive_xorshift(&x) >> 40) & 0xFFFFFF) / 16777216.0;
        int expect = u * 2.0 <= 1.0 ? 0 : 1;
        match &= ds4_sample(&c, two, 2) == expect;
    }
    CHECK(match, "xorshift64* stream and r = u·Σ walk");

    /* min_p: tokens below min_p·p_max never come out */
    ds4_sampler m = {.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.5f};
    ds4_sampler_seed(&m, 7);
    int ok = 1;
    for (int i = 0; i < 500; i++) {
        int t = ds4_sample(&m, l, 6);
        ok &= t == 1 || t == 3 || t == 4;
    }
    CHECK(ok, "min_p filter");
    /* top_k = 2: only the two best (ties → lower index: 1 and 3) */
    ds4_sampler k = {.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.0f, .top_k = 2};
    ds4_sampler_seed(&k, 9);
    ok = 1;
    for (int i = 0; i < 500; i++) {
        int t = ds4_sample(&k, l, 6);
        ok &= t == 1 || t == 3;
    }
    CHECK(ok, "top_k filter");
    /* top_p small: only the best survives the walk */
    ds4_sampler p = {.temperature = 1.0f, .top_p = 0.1f, .min_p = 0.0f};
    ds4_sampler_seed(&p, 11);
    ok = 1;
    for (int i = 0; i < 200; i++) ok &= ds4_sample(&p, l, 6) == 1;
    CHECK(ok, "top_p filter keeps the first candidate");
    ds4_sampler p2 = {.temperature = 1.0f, .top_p = 0.6f, .min_p = 0.0f};
    ds4_sampler_seed(&p2, 11);
    int seen[6] = {0};
    for (int i = 0; i < 1000; i++) seen[ds4_sample(&p2, l, 6)]++;
    CHECK(seen[1] && seen[3] && !seen[4] && !seen[0], "top_p 0.6 keeps the two tied best");
}

int main(void) {
    test_rope();
    test_sinkhorn();
    test_fp8_fp4();
    test_hadamard();
    test_topk();
    test_sampler();
    test_argmax();

    char q2[512], f32[512], q4[512];
    snprintf(q2, sizeof q2, "%s/engine_tiny_q2.gguf", tmpdir());
    snprintf(f32, sizeof f32, "%s/engine_tiny_f32.gguf", tmpdir());
    snprintf(q4, sizeof q4, "%s/engine_tiny_q4.gguf", tmpdir());
    CHECK(write_tiny(q2, DS4_WEIGHTS_PUBLISHED, "q2", 7, "engine test") == 0, "tiny q2 model written");
    CHECK(write_tiny(f32, DS4_WEIGHTS_F32, "f32", 7, "engine test") == 0, "tiny f32 model written");
    CHECK(write_tiny(q4, DS4_WEIGHTS_F16, "q4", 7, "engine test") == 0, "tiny f16/q4 model written");
    test_paths_agree(q2, false);
    test_paths_agree(f32, true);
    test_threads_agree(q4);
    test_errors_and_cancel(q2);
    remove(q2);
    remove(f32);
    remove(q4);
    return TEST_DONE();
}
