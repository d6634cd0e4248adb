/* forward.c — one chunk of tokens through the whole model (model-spec §5).
 *
 * Layer-major: every token of the chunk goes through layer 0, then layer 1,
 * and so on, so each weight matrix is read once per chunk (model-spec §6).
 * A decode step is a chunk of one token. Per-token work is independent of
 * the chunk it sits in, which is what makes batched prefill, chunked
 * prefill and token-by-token decode produce the same bits.
 *
 * The residual stream is the hyper-connection state H: DS4_N_HC streams of
 * n_embd floats per token. Each sublayer reads a weighted sum of the streams
 * (hc_pre_chunk) and writes back through the Sinkhorn-mixed comb matrix
 * (hc_post_chunk); there is no separate residual add. */
#include <math.h>
#include <string.h>

#include "engine_impl.h"

enum { HC = DS4_N_HC, HC_MIX = 2 * DS4_N_HC + DS4_N_HC * DS4_N_HC };

typedef struct chunk_job {
    ds4_engine *e;
    const float *in;
    size_t ld_in;
    float *out;
    size_t ld_out;
    const float *w;
    int width;
    const float *scale, *base;
    const int32_t *tokens;
    int t0;
    const head_ref *head;
} chunk_job;

static void norm_task(void *ctx, int t, int worker) {
    chunk_job *j = ctx;
    num_rmsnorm(j->out + (size_t)t * j->ld_out, j->in + (size_t)t * j->ld_in, j->w, j->width,
                j->e->model.hp.rms_eps);
}

void norm_chunk(ds4_engine *e, const float *in, size_t ld_in, float *out, size_t ld_out,
                const float *w, int width, int n) {
    chunk_job j = {.e = e, .in = in, .ld_in = ld_in, .out = out, .ld_out = ld_out, .w = w,
                   .width = width};
    cpu_parallel_for(&e->cpu, n, norm_task, &j);
}

static void hc_split_task(void *ctx, int t, int worker) {
    chunk_job *j = ctx;
    ds4_engine *e = j->e;
    chunk_ws *ws = &e->ws;
    const ds4_hparams *hp = &e->model.hp;
    size_t D = hp->n_embd;
    float pre[HC];
    hc_split(ws->mix + (size_t)t * HC_MIX, j->scale, j->base, (int)hp->hc_sinkhorn_iter,
             hp->hc_eps, pre, ws->post + (size_t)t * HC, ws->comb + (size_t)t * HC * HC);
    const float *H = ws->H + (size_t)t * HC * D;
    float *x = ws->x + (size_t)t * D;
    for (size_t d = 0; d < D; d++) {
        float acc = 0.0f;
        for (int h = 0; h < HC; h++) acc += pre[h] * H[h * D + d];
        x[d] = acc;
    }
}

void hc_pre_chunk(ds4_engine *e, const ds4_tensor *fn, const float *scale, const float *base,
                  int n) {
    chunk_ws *ws = &e->ws;
    size_t HD = (size_t)HC * e->model.hp.n_embd;
    norm_chunk(e, ws->H, HD, ws->hc_flat, HD, NULL, (int)HD, n);
    cpu_mat m = cpu_mat_of(fn);
    cpu_matmul(&e->cpu, &m, ws->hc_flat, HD, n, ws->mix, HC_MIX);
    chunk_job j = {.e = e, .scale = scale, .base = base};
    cpu_parallel_for(&e->cpu, n, hc_split_task, &j);
}

static void hc_post_task(void *ctx, int t, int worker) {
    chunk_job *j = ctx;
    chunk_ws *ws = &j->e->ws;
    size_t D = j->e->model.hp.n_embd;
    float *H = ws->H + (size_t)t * HC * D;
    const float *y = ws->y + (size_t)t * D;
    const float *post = ws->post + (size_t)t * HC;
    const float *comb = ws->comb + (size_t)t * HC * HC;
    for (size_t d = 0; d < D; d++) {
        float old[HC];
        for (int h = 0; h < HC; h++) old[h] = H[h * D + d];
        for (int dst = 0; dst < HC; dst++) {
            float acc = post[dst] * y[d];
            for (int src = 0; src < HC; src++) acc += comb[src * HC + dst] * old[src];
            H[dst * D + d] = acc;
        }
    }
}

void hc_post_chunk(ds4_engine *e, int n) {
    chunk_job j = {.e = e};
    cpu_parallel_for(&e->cpu, n, hc_post_task, &j);
}

static void embed_task(void *ctx, int t, int worker) {
    chunk_job *j = ctx;
    ds4_engine *e = j->e;
    size_t D = e->model.hp.n_embd;
    float *H = e->ws.H + (size_t)t * HC * D;
    cpu_mat m = cpu_mat_of(&e->model.token_embd);
    cpu_mat_row_f32(&m, (uint32_t)j->tokens[t], H);
    for (int h = 1; h < HC; h++) memcpy(H + h * D, H, D * sizeof(float));
}

/* Output head (model-spec §5.9) for tokens [t0, t0+n) of the chunk: HC
 * collapse with sigmoid weights, RMSNorm, vocabulary projection. */
static void out_collapse_task(void *ctx, int i, int worker) {
    chunk_job *j = ctx;
    ds4_engine *e = j->e;
    const head_ref *h = j->head;
    chunk_ws *ws = &e->ws;
    const ds4_hparams *hp = &e->model.hp;
    size_t D = hp->n_embd;
    int t = j->t0 + i;
    const float *H = ws->H + (size_t)t * HC * D;
    const float *z = ws->mix + (size_t)t * HC_MIX;
    float w[HC];
    for (int k = 0; k < HC; k++) w[k] = sigmoid_plain(z[k] * h->hc_scale[0] + h->hc_base[k]) + hp->hc_eps;
    float *o = ws->ehc + (size_t)t * D;
    for (size_t d = 0; d < D; d++) {
        float acc = 0.0f;
        for (int k = 0; k < HC; k++) acc += w[k] * H[k * D + d];
        o[d] = acc;
    }
    num_rmsnorm(o, o, h->norm, (int)D, hp->rms_eps);
}

void output_head(ds4_engine *e, const head_ref *h, int t0, int n, float *logits) {
    chunk_ws *ws = &e->ws;
    const ds4_model *m = &e->model;
    size_t D = m->hp.n_embd, HD = HC * D;
    norm_chunk(e, ws->H + (size_t)t0 * HD, HD, ws->hc_flat + (size_t)t0 * HD, HD, NULL, (int)HD, n);
    cpu_mat fn = cpu_mat_of(h->hc_fn);
    cpu_matmul(&e->cpu, &fn, ws->hc_flat + (size_t)t0 * HD, HD, n, ws->mix + (size_t)t0 * HC_MIX, HC_MIX);
    chunk_job j = {.e = e, .t0 = t0, .head = h};
    cpu_parallel_for(&e->cpu, n, out_collapse_task, &j);
    cpu_mat out = cpu_mat_of(&m->output);
    cpu_matmul(&e->cpu, &out, ws->ehc + (size_t)t0 * D, D, n, logits, m->hp.n_vocab);
}

block_ref layer_block(ds4_session *s, int il) {
    ds4_engine *e = s->e;
    const ds4_layer *L = &e->model.layers[il];
    return (block_ref){.L = L, .lc = &e->lc[il], .kv = &s->layers[il],
                       .rope = L->compress_ratio ? &e->rope_comp : &e->rope_plain,
                       .swiglu_clamp = e->model.hp.swiglu_clamp[il], .raw_lo = 0,
                       .mark = s->spec && s->spec->marking ? &s->spec->marks[il] : NULL};
}

void block_forward(ds4_session *s, const block_ref *b, const int32_t *tokens, int pos0, int n) {
    ds4_engine *e = s->e;
    chunk_ws *ws = &e->ws;
    int D = (int)e->model.hp.n_embd;
    hc_pre_chunk(e, &b->L->hc_attn_fn, b->lc->hc_attn_scale, b->lc->hc_attn_base, n);
    norm_chunk(e, ws->x, D, ws->a, D, b->lc->attn_norm, D, n);
    attention_sublayer(s, b, pos0, n);
    hc_post_chunk(e, n);
    hc_pre_chunk(e, &b->L->hc_ffn_fn, b->lc->hc_ffn_scale, b->lc->hc_ffn_base, n);
    norm_chunk(e, ws->x, D, ws->a, D, b->lc->ffn_norm, D, n);
    ffn_sublayer(s, b, tokens, n);
    hc_post_chunk(e, n);
}

void forward_chunk(ds4_session *s, const int32_t *tokens, int n, float *all_logits) {
    ds4_engine *e = s->e;
    const ds4_model *m = &e->model;
    chunk_job j = {.e = e, .tokens = tokens};
    cpu_parallel_for(&e->cpu, n, embed_task, &j);
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        block_ref b = layer_block(s, (int)il);
        block_forward(s, &b, tokens, s->n_tokens, n);
    }
    head_ref head = {&m->output_hc_fn, e->out_hc_scale, e->out_hc_base, e->out_norm};
    if (all_logits) {
        output_head(e, &head, 0, n, all_logits);
        memcpy(s->logits, all_logits + (size_t)(n - 1) * m->hp.n_vocab, m->hp.n_vocab * sizeof(float));
    } else {
        output_head(e, &head, n - 1, 1, s->logits);
    }
    if (s->spec) spec_after_forward(s, n);
}
