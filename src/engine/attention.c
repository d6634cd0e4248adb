/* attention.c — the attention sublayer for a chunk of tokens (model-spec §5.5).
 *
 * Input ws.a (attn-normed), output ws.y. Steps: low-rank Q with per-head
 * unweighted RMSNorm and RoPE on each head's tail; one 512-wide (head_dim)
 * KV latent that is both key and value, RoPE'd, FP8 round-tripped and
 * f16-rounded in the official numerics; the compressor(s) and indexer of
 * compressed layers (compressor.c); then, per token, a softmax over the raw
 * window rows, the visible (or indexer-selected) compressed rows and the
 * per-head sink logit; inverse RoPE on the output; grouped low-rank output
 * projection.
 *
 * Within a chunk the raw window of token p is the ring (positions before the
 * chunk) plus this chunk's own KV rows (positions ≥ pos0), so every token
 * sees exactly what a token-by-token decode would show it; the chunk's rows
 * enter the ring after all tokens attended. */
#include <math.h>
#include <string.h>

#include "../quant/quant.h"
#include "engine_impl.h"

typedef struct att_job {
    ds4_session *s;
    int il, pos0, n;
    int blocks;     /* head blocks per token */
    int per_block;  /* heads per block */
} att_job;

/* Per-token Q: unweighted RMSNorm of each head, RoPE of its tail. KV:
 * weighted RMSNorm, RoPE, and the official numerics' FP8 + f16 rounding. */
static void qkv_prepare_task(void *ctx, int t, int worker) {
    att_job *j = ctx;
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    const rope_params *rp = e->model.layers[j->il].compress_ratio ? &e->rope_comp : &e->rope_plain;
    int hd = (int)hp->head_dim;
    int64_t p = j->pos0 + t;
    float *q = e->ws.q + (size_t)t * hp->n_head * hd;
    for (uint32_t h = 0; h < hp->n_head; h++) {
        num_rmsnorm(q + h * hd, q + h * hd, NULL, hd, hp->rms_eps);
        rope_tail(q + h * hd, hd, p, rp, false);
    }
    float *kv = e->ws.kv + (size_t)t * hd;
    num_rmsnorm(kv, kv, e->lc[j->il].kv_a_norm, hd, hp->rms_eps);
    rope_tail(kv, hd, p, rp, false);
    if (!e->exact) {
        fp8_kv_roundtrip(kv, hd - (int)hp->n_rot);
        for (int i = 0; i < hd; i++) kv[i] = f16_round(kv[i]);
    }
}

static void qnorm_task(void *ctx, int t, int worker) {
    att_job *j = ctx;
    ds4_engine *e = j->s->e;
    float *qr = e->ws.qr + (size_t)t * e->model.hp.q_lora;
    num_rmsnorm(qr, qr, e->lc[j->il].q_a_norm, (int)e->model.hp.q_lora, e->model.hp.rms_eps);
}

/* Gathers the rows token t attends (raw window, then compressed) as f32. */
static int gather_rows(const att_job *j, int t, float *rows) {
    ds4_session *s = j->s;
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    layer_kv *L = &s->layers[j->il];
    uint32_t ratio = e->model.layers[j->il].compress_ratio;
    size_t hd = hp->head_dim;
    int p = j->pos0 + t;
    int lo = p - (int)hp->n_swa + 1;
    if (lo < 0) lo = 0;
    int nr = 0;
    for (int pos = lo; pos <= p; pos++, nr++) {
        if (pos < j->pos0)
            kv_rows_get(&L->raw, (uint32_t)pos % hp->n_swa, rows + nr * hd);
        else
            memcpy(rows + nr * hd, e->ws.kv + (size_t)(pos - j->pos0) * hd, hd * sizeof(float));
    }
    if (ratio) {
        uint32_t visible = (uint32_t)(p + 1) / ratio;
        if (visible > L->n_comp) visible = L->n_comp;
        int n_sel = ratio == 4 ? e->ws.n_sel[t] : -1;
        if (n_sel >= 0) {
            const int *sel = e->ws.sel + (size_t)t * hp->indexer_top_k;
            for (int i = 0; i < n_sel; i++, nr++) kv_rows_get(&L->comp, (uint32_t)sel[i], rows + nr * hd);
        } else {
            for (uint32_t c = 0; c < visible; c++, nr++) kv_rows_get(&L->comp, c, rows + nr * hd);
        }
    }
    return nr;
}

/* Softmax attention with a sink for heads [h0, h1) of token t. */
static void attend_task(void *ctx, int task, int worker) {
    att_job *j = ctx;
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    worker_scratch *wk = &e->ws.wk[worker];
    int t = task / j->blocks, b = task % j->blocks;
    uint32_t h0 = (uint32_t)(b * j->per_block);
    uint32_t h1 = h0 + (uint32_t)j->per_block < hp->n_head ? h0 + (uint32_t)j->per_block : hp->n_head;
    const rope_params *rp = e->model.layers[j->il].compress_ratio ? &e->rope_comp : &e->rope_plain;
    size_t hd = hp->head_dim;
    int nr = gather_rows(j, t, wk->rows);
    float scale = 1.0f / sqrtf((float)hd);
    const float *sinks = e->lc[j->il].sinks;
    for (uint32_t h = h0; h < h1; h++) {
        const float *q = e->ws.q + ((size_t)t * hp->n_head + h) * hd;
        float *o = e->ws.att + ((size_t)t * hp->n_head + h) * hd;
        float m = sinks[h];
        for (int r = 0; r < nr; r++) {
            wk->scores[r] = scale * ds4_dot_f32(hd, q, wk->rows + r * hd);
            if (wk->scores[r] > m) m = wk->scores[r];
        }
        float den = expf(sinks[h] - m);
        memset(o, 0, hd * sizeof(float));
        for (int r = 0; r < nr; r++) {
            float w = expf(wk->scores[r] - m);
            den += w;
            const float *row = wk->rows + r * hd;
            for (size_t d = 0; d < hd; d++) o[d] += w * row[d];
        }
        float inv = 1.0f / den;
        for (size_t d = 0; d < hd; d++) o[d] *= inv;
        rope_tail(o, (int)hd, j->pos0 + t, rp, true);
    }
}

void attention_sublayer(ds4_session *s, int il, int pos0, int n) {
    ds4_engine *e = s->e;
    const ds4_model *m = &e->model;
    const ds4_hparams *hp = &m->hp;
    const ds4_layer *L = &m->layers[il];
    const layer_consts *lc = &e->lc[il];
    chunk_ws *ws = &e->ws;
    layer_kv *kvl = &s->layers[il];
    size_t D = hp->n_embd, hd = hp->head_dim, qdim = (size_t)hp->n_head * hd;
    att_job j = {s, il, pos0, n, 1, (int)hp->n_head};

    /* Q and KV projections. */
    cpu_mat w = cpu_mat_of(&L->attn_q_a);
    cpu_matmul(&e->cpu, &w, ws->a, D, n, ws->qr, hp->q_lora);
    cpu_parallel_for(&e->cpu, n, qnorm_task, &j);
    w = cpu_mat_of(&L->attn_q_b);
    cpu_matmul(&e->cpu, &w, ws->qr, hp->q_lora, n, ws->q, qdim);
    w = cpu_mat_of(&L->attn_kv);
    cpu_matmul(&e->cpu, &w, ws->a, D, n, ws->kv, hd);
    cpu_parallel_for(&e->cpu, n, qkv_prepare_task, &j);

    /* Compressed layers: frontier update (may emit rows) and the indexer. */
    if (L->compress_ratio) {
        size_t cw = (L->compress_ratio == 4 ? 2 : 1) * hd;
        w = cpu_mat_of(&L->attn_compressor_kv);
        cpu_matmul(&e->cpu, &w, ws->a, D, n, ws->ckv, cw);
        w = cpu_mat_of(&L->attn_compressor_gate);
        cpu_matmul(&e->cpu, &w, ws->a, D, n, ws->csc, cw);
        compressor_run(e, &kvl->comp_st, &kvl->comp, &kvl->n_comp, ws->ckv, ws->csc, cw, pos0, n,
                       lc->comp_ape, lc->comp_norm, false);
        if (L->compress_ratio == 4) {
            size_t iw = 2 * (size_t)hp->indexer_head_dim;
            w = cpu_mat_of(&L->indexer_compressor_kv);
            cpu_matmul(&e->cpu, &w, ws->a, D, n, ws->ikv, iw);
            w = cpu_mat_of(&L->indexer_compressor_gate);
            cpu_matmul(&e->cpu, &w, ws->a, D, n, ws->isc, iw);
            compressor_run(e, &kvl->index_st, &kvl->index_comp, &kvl->n_index_comp, ws->ikv, ws->isc,
                           iw, pos0, n, lc->index_ape, lc->index_norm, true);
            indexer_select(s, il, pos0, n);
        }
    }

    /* Attention: split heads when there are few tokens to keep threads busy. */
    int want = 2 * e->cpu.n_threads;
    if (n < want) {
        int blocks = (want + n - 1) / n;
        if (blocks > (int)hp->n_head) blocks = (int)hp->n_head;
        j.per_block = ((int)hp->n_head + blocks - 1) / blocks;
        j.blocks = ((int)hp->n_head + j.per_block - 1) / j.per_block;
    }
    cpu_parallel_for(&e->cpu, n * j.blocks, attend_task, &j);

    /* The chunk's KV rows join the raw window ring. */
    int first = n > (int)hp->n_swa ? n - (int)hp->n_swa : 0;
    for (int t = first; t < n; t++)
        kv_rows_put(&kvl->raw, (uint32_t)(pos0 + t) % hp->n_swa, ws->kv + (size_t)t * hd);

    /* Grouped output projection: group g of heads → rows g·o_lora.. of out_a. */
    size_t gdim = qdim / hp->n_out_group, low_dim = (size_t)hp->n_out_group * hp->o_lora;
    cpu_mat oa = cpu_mat_of(&L->attn_output_a);
    for (uint32_t g = 0; g < hp->n_out_group; g++) {
        cpu_mat part = cpu_mat_rows(oa, g * hp->o_lora, hp->o_lora);
        cpu_matmul(&e->cpu, &part, ws->att + g * gdim, qdim, n, ws->low + g * hp->o_lora, low_dim);
    }
    w = cpu_mat_of(&L->attn_output_b);
    cpu_matmul(&e->cpu, &w, ws->low, low_dim, n, ws->y, D);
}
