/* sampler.c — next-token sampling (model-spec §11).
 *
 * temperature ≤ 0: greedy, the first index of the maximum logit.
 * top_k > 0 (capped at 1024): the k largest logits in descending order,
 * weights exp((l − l_max)/T), then the walk: keep candidates while
 * p_i ≥ min_p·p_0 (the first is always kept), stop once the kept mass
 * reaches top_p; sample among the kept ones.
 * top_k = 0 and top_p ≥ 1: one pass over the vocabulary keeping tokens with
 * exp((l − l_max)/T) ≥ min_p, sampled in index order.
 * top_k = 0 and top_p < 1: the whole vocabulary sorted descending, then the
 * same walk. Randomness: xorshift64*, 24-bit uniforms, r = u·Σ, subtract
 * weights until r ≤ 0. Descending order breaks ties by lower index so a seed
 * always gives the same token. */
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "engine.h"

#define TOP_K_CAP 1024
#define RNG_ZERO_REPLACEMENT 0x9E3779B97F4A7C15ull

void ds4_sampler_seed(ds4_sampler *s, uint64_t seed) {
    if (seed == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = (uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec;
    }
    s->rng = seed;
}

static float rng_uniform(ds4_sampler *s) {
    uint64_t x = s->rng ? s->rng : RNG_ZERO_REPLACEMENT;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    s->rng = x;
    uint64_t out = x * 0x2545F4914F6CDD1Dull;
    return (float)((out >> 40) & 0xFFFFFF) / 16777216.0f;
}

/* Greedy sampling runs once a token over the whole vocabulary (129280
 * logits), so it is written for speed: each block of ARG_BLOCK logits goes
 * through ARG_LANES independent running maxima (no loop-carried load, so
 * the compiler vectorises it), and only the first block holding the
 * maximum is scanned again for its index. A loop that kept an index and
 * compared against logits[best] waited on that load every element: ~360 us
 * a token on the dev machine, 1.4% of the H200 decode rate on the GPU
 * machine's (BENCHMARKS.md session 13). */
enum { ARG_BLOCK = 256, ARG_LANES = 16 };

/* The largest of x[0..n) that is not NaN, or -INFINITY. */
static float block_max(const float *x, int n) {
    float m[ARG_LANES];
    for (int k = 0; k < ARG_LANES; k++) m[k] = -INFINITY;
    int i = 0;
    for (; i + ARG_LANES <= n; i += ARG_LANES)
        for (int k = 0; k < ARG_LANES; k++) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
    for (; i < n; i++) m[0] = x[i] > m[0] ? x[i] : m[0];
    for (int k = 1; k < ARG_LANES; k++) m[0] = m[k] > m[0] ? m[k] : m[0];
    return m[0];
}

int32_t ds4_argmax_except(const float *logits, int n_vocab, int32_t skip) {
    float best = -INFINITY;
    int best_b0 = -1;
    for (int b0 = 0; b0 < n_vocab; b0 += ARG_BLOCK) {
        const int n = n_vocab - b0 < ARG_BLOCK ? n_vocab - b0 : ARG_BLOCK;
        float m;
        if (skip >= b0 && skip < b0 + n) { /* the two sides of the skipped index */
            const float lo = block_max(logits + b0, skip - b0), hi = block_max(logits + skip + 1, b0 + n - skip - 1);
            m = hi > lo ? hi : lo;
        } else {
            m = block_max(logits + b0, n);
        }
        if (m > best) best = m, best_b0 = b0;
    }
    if (best_b0 < 0) return skip == 0 && n_vocab > 1 ? 1 : 0; /* every logit -inf or NaN */
    for (int i = best_b0;; i++)
        if (i != skip && logits[i] == best) return i;
}

int32_t ds4_argmax(const float *logits, int n_vocab) { return ds4_argmax_except(logits, n_vocab, -1); }

float ds4_top_margin(const float *logits, int n_vocab, int32_t top) {
    float second = -INFINITY;
    for (int i = 0; i < n_vocab; i++)
        if (i != top && logits[i] > second) second = logits[i];
    return logits[top] - second;
}

typedef struct cand {
    float logit;
    int32_t id;
} cand;

/* Descending logit, then ascending id. */
static int cand_cmp(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    if (a->logit != b->logit) return a->logit > b->logit ? -1 : 1;
    return a->id < b->id ? -1 : a->id > b->id;
}

/* The walk over candidates sorted descending; returns the sampled id. */
static int32_t walk_and_sample(ds4_sampler *s, cand *c, int n, float T) {
    float lmax = c[0].logit, total = 0.0f;
    for (int i = 0; i < n; i++) {
        c[i].logit = expf((c[i].logit - lmax) / T); /* reuse as weight */
        total += c[i].logit;
    }
    float p0 = c[0].logit / total, mass = 0.0f, kept_sum = 0.0f;
    int kept = 0;
    for (int i = 0; i < n; i++) {
        float p = c[i].logit / total;
        if (i > 0 && p < s->min_p * p0) break;
        kept++;
        kept_sum += c[i].logit;
        mass += p;
        if (mass >= s->top_p) break;
    }
    float r = rng_uniform(s) * kept_sum;
    for (int i = 0; i < kept; i++) {
        r -= c[i].logit;
        if (r <= 0.0f) return c[i].id;
    }
    return c[kept - 1].id;
}

/* Keeps the k best (descending) of the vocabulary in c[0..k) by insertion. */
static int top_k_candidates(const float *logits, int n_vocab, int k, cand *c) {
    int n = 0;
    for (int i = 0; i < n_vocab; i++) {
        float l = logits[i];
        if (n == k && !(l > c[k - 1].logit)) continue;
        int pos = n < k ? n++ : k - 1;
        while (pos > 0 && l > c[pos - 1].logit) {
            c[pos] = c[pos - 1];
            pos--;
        }
        c[pos] = (cand){l, i};
    }
    return n;
}

int32_t ds4_sample(ds4_sampler *s, const float *logits, int n_vocab) {
    if (n_vocab <= 0) return 0;
    if (!(s->temperature > 0.0f)) return ds4_argmax(logits, n_vocab);
    float T = s->temperature;
    if (s->top_k > 0) {
        cand c[TOP_K_CAP];
        int k = s->top_k > TOP_K_CAP ? TOP_K_CAP : s->top_k;
        if (k > n_vocab) k = n_vocab;
        int n = top_k_candidates(logits, n_vocab, k, c);
        return walk_and_sample(s, c, n, T);
    }
    if (s->top_p < 1.0f) {
        cand *c = malloc(sizeof(cand) * (size_t)n_vocab);
        if (!c) return ds4_argmax(logits, n_vocab);
        for (int i = 0; i < n_vocab; i++) c[i] = (cand){logits[i], i};
        qsort(c, (size_t)n_vocab, sizeof *c, cand_cmp);
        int32_t id = walk_and_sample(s, c, n_vocab, T);
        free(c);
        return id;
    }
    float lmax = logits[ds4_argmax(logits, n_vocab)], total = 0.0f;
    for (int i = 0; i < n_vocab; i++) {
        float w = expf((logits[i] - lmax) / T);
        if (w >= s->min_p) total += w;
    }
    float r = rng_uniform(s) * total;
    int32_t last = 0;
    for (int i = 0; i < n_vocab; i++) {
        float w = expf((logits[i] - lmax) / T);
        if (w < s->min_p) continue;
        last = i;
        r -= w;
        if (r <= 0.0f) return i;
    }
    return last;
}
