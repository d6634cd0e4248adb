/* moe.c — the FFN sublayer: routed experts + one shared expert (model-spec §5.8).
 *
 * Router: logits = gate_inp · x, probabilities sqrt(softplus(logit)).
 * Hash-routed layers take their experts from tid2eid[token]; the others take
 * the top n_used of prob + bias (bias only for the choice; ties → lower
 * index). Weights are the chosen unbiased probabilities renormalised (floor
 * 2^-14) × scale. Each expert is SwiGLU with the gate clamped above and up
 * clamped both sides; the router weight multiplies the mid activation before
 * the down projection (it matters for the mid's Q8_K quantisation).
 *
 * Batched: the chunk's (token, slot) pairs are bucketed by expert, so each
 * expert's weights are read once per chunk, and all experts' products go to
 * the threads as one call. Each pair's down output lands in its own row and
 * every token sums its slots in selection order, the same sum a
 * single-token decode makes. */
#include <math.h>
#include <string.h>

#include "engine_impl.h"

typedef struct moe_job {
    ds4_session *s;
    const block_ref *b;
    const int32_t *tokens;
    int n;
} moe_job;

static void route_task(void *ctx, int t, int worker) {
    moe_job *j = ctx;
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    const ds4_layer *L = j->b->L;
    chunk_ws *ws = &e->ws;
    uint32_t ne = hp->n_expert, nu = hp->n_expert_used;
    float *prob = ws->router + (size_t)t * ne;
    for (uint32_t i = 0; i < ne; i++) prob[i] = sqrtf(softplus(prob[i]));
    int *eid = ws->eid + (size_t)t * nu;
    if (L->ffn_gate_tid2eid.data) {
        const int32_t *row = (const int32_t *)L->ffn_gate_tid2eid.data + (size_t)j->tokens[t] * nu;
        for (uint32_t i = 0; i < nu; i++) eid[i] = row[i];
    } else {
        float *biased = ws->wk[worker].tmp;
        const float *bias = j->b->lc->probs_bias;
        for (uint32_t i = 0; i < ne; i++) biased[i] = prob[i] + (bias ? bias[i] : 0.0f);
        topk_rank_order(biased, (int)ne, (int)nu, eid);
    }
    float *w = ws->ew + (size_t)t * nu;
    float sum = 0.0f;
    for (uint32_t i = 0; i < nu; i++) sum += prob[eid[i]];
    if (sum < 6.103515625e-05f) sum = 6.103515625e-05f; /* 2^-14 */
    for (uint32_t i = 0; i < nu; i++)
        w[i] = hp->expert_weights_norm ? prob[eid[i]] / sum * hp->expert_weight_scale
                                       : prob[eid[i]] * hp->expert_weight_scale;
}

/* mid = silu(min(g, c)) · clamp(u, -c, c) (· weight), in place in g. */
static void swiglu_row(float *g, const float *u, int n, float clamp, float weight) {
    for (int i = 0; i < n; i++) g[i] = swiglu(g[i], u[i], clamp, weight);
}

static void shared_mid_task(void *ctx, int t, int worker) {
    moe_job *j = ctx;
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    size_t ff = hp->n_ff_exp;
    swiglu_row(e->ws.sg + t * ff, e->ws.su + t * ff, (int)ff, j->b->swiglu_clamp, 1.0f);
}

static void expert_mid_task(void *ctx, int pair, int worker) {
    moe_job *j = ctx;
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    chunk_ws *ws = &e->ws;
    size_t ff = hp->n_ff_exp;
    float weight = ws->ew[(size_t)ws->gtok[pair] * hp->n_expert_used + ws->gslot[pair]];
    swiglu_row(ws->gg + pair * ff, ws->gu + pair * ff, (int)ff, j->b->swiglu_clamp, weight);
}

static void combine_task(void *ctx, int t, int worker) {
    moe_job *j = ctx;
    const ds4_hparams *hp = &j->s->e->model.hp;
    chunk_ws *ws = &j->s->e->ws;
    size_t D = hp->n_embd, nu = hp->n_expert_used;
    float *y = ws->y + (size_t)t * D;
    const float *sh = ws->sh + (size_t)t * D;
    const int *pairs = ws->pair_of + (size_t)t * nu;
    for (size_t d = 0; d < D; d++) {
        float acc = 0.0f;
        for (size_t k = 0; k < nu; k++) acc += ws->gd[(size_t)pairs[k] * D + d];
        y[d] = acc + sh[d];
    }
}

/* Buckets the chunk's (token, slot) pairs by expert: expert e owns pairs
 * ecount[e] .. ecount[e+1]-1, in token order. */
static void bucket_pairs(chunk_ws *ws, uint32_t n_expert, uint32_t nu, int n) {
    memset(ws->ecount, 0, sizeof(int) * (n_expert + 1));
    for (int i = 0; i < n * (int)nu; i++) ws->ecount[ws->eid[i] + 1]++;
    for (uint32_t e = 0; e < n_expert; e++) ws->ecount[e + 1] += ws->ecount[e];
    int *fill = ws->efill;
    memcpy(fill, ws->ecount, sizeof(int) * n_expert);
    for (int t = 0; t < n; t++)
        for (uint32_t k = 0; k < nu; k++) {
            int e = ws->eid[(size_t)t * nu + k];
            ws->gtok[fill[e]] = t;
            ws->gslot[fill[e]] = (int)k;
            ws->pair_of[(size_t)t * nu + k] = fill[e];
            fill[e]++;
        }
}

void ffn_sublayer(ds4_session *s, const block_ref *b, const int32_t *tokens, int n) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    const ds4_layer *L = b->L;
    chunk_ws *ws = &e->ws;
    size_t D = hp->n_embd, ff = hp->n_ff_exp;
    moe_job j = {s, b, tokens, n};

    /* Router and shared expert gate/up read the same input: one call. */
    cpu_mm *mm = ws->mm;
    mm[0] = (cpu_mm){cpu_mat_of(&L->ffn_gate_inp), ws->a, D, NULL, n, ws->router, hp->n_expert};
    mm[1] = (cpu_mm){cpu_mat_of(&L->ffn_gate_shexp), ws->a, D, NULL, n, ws->sg, ff};
    mm[2] = (cpu_mm){cpu_mat_of(&L->ffn_up_shexp), ws->a, D, NULL, n, ws->su, ff};
    cpu_matmul_batch(&e->cpu, mm, 3);
    cpu_parallel_for(&e->cpu, n, route_task, &j);
    cpu_parallel_for(&e->cpu, n, shared_mid_task, &j);
    cpu_mat w = cpu_mat_of(&L->ffn_down_shexp);
    cpu_matmul(&e->cpu, &w, ws->sg, ff, n, ws->sh, D);

    /* Routed experts: every used expert's gate and up in one call over its
     * tokens, the SwiGLU mid per pair, then every down in one call. */
    bucket_pairs(ws, hp->n_expert, hp->n_expert_used, n);
    int n_mm = 0;
    for (uint32_t x = 0; x < hp->n_expert; x++) {
        int start = ws->ecount[x], count = ws->ecount[x + 1] - start;
        if (!count) continue;
        mm[n_mm++] = (cpu_mm){cpu_mat_expert(&L->ffn_gate_exps, x), ws->a, D, ws->gtok + start, count,
                              ws->gg + (size_t)start * ff, ff};
        mm[n_mm++] = (cpu_mm){cpu_mat_expert(&L->ffn_up_exps, x), ws->a, D, ws->gtok + start, count,
                              ws->gu + (size_t)start * ff, ff};
    }
    cpu_matmul_batch(&e->cpu, mm, n_mm);
    cpu_parallel_for(&e->cpu, n * (int)hp->n_expert_used, expert_mid_task, &j);
    n_mm = 0;
    for (uint32_t x = 0; x < hp->n_expert; x++) {
        int start = ws->ecount[x], count = ws->ecount[x + 1] - start;
        if (!count) continue;
        mm[n_mm++] = (cpu_mm){cpu_mat_expert(&L->ffn_down_exps, x), ws->gg + (size_t)start * ff, ff, NULL,
                              count, ws->gd + (size_t)start * D, D};
    }
    cpu_matmul_batch(&e->cpu, mm, n_mm);
    cpu_parallel_for(&e->cpu, n, combine_task, &j);
}
