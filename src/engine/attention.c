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

#include "../backend/cpu/cpu_vec.h"
#include "../quant/quant.h"
#include "engine_impl.h"

/* The rows a token attends, in order: its raw window (oldest first), then
 * the visible compressed rows (or the indexer's selection). */
typedef struct row_list {
    int lo;         /* first raw position */
    int n_raw;
    int n_comp;
    const int *sel; /* NULL: compressed rows 0..n_comp-1 */
} row_list;

typedef struct att_job {
    ds4_session *s;
    const block_ref *b;
    int pos0, n;
    int per_block;  /* heads per task in the few-token path */
    int t;          /* the token of the few-token path */
    row_list rows;  /* and its rows */
} att_job;

/* Per-token Q: unweighted RMSNorm of each head, RoPE of its tail. KV:
 * weighted RMSNorm, RoPE, and the official numerics' FP8 + f16 rounding. */
static void qkv_prepare_task(void *ctx, int t, int worker) {
    att_job *j = ctx;
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    const rope_params *rp = j->b->rope;
    int hd = (int)hp->head_dim;
    int64_t p = j->pos0 + t;
    float *q = e->ws.q + (size_t)t * hp->n_head * hd;
    for (uint32_t h = 0; h < hp->n_head; h++) {
        num_rmsnorm(q + h * hd, q + h * hd, NULL, hd, hp->rms_eps);
        rope_tail(q + h * hd, hd, p, rp, false);
    }
    float *kv = e->ws.kv + (size_t)t * hd;
    num_rmsnorm(kv, kv, j->b->lc->kv_a_norm, hd, hp->rms_eps);
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
    num_rmsnorm(qr, qr, j->b->lc->q_a_norm, (int)e->model.hp.q_lora, e->model.hp.rms_eps);
}

static row_list token_rows(const att_job *j, int t) {
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    const layer_kv *L = j->b->kv;
    uint32_t ratio = j->b->L->compress_ratio;
    int p = j->pos0 + t;
    row_list r = {p - (int)hp->n_swa + 1, 0, 0, NULL};
    if (r.lo < j->b->raw_lo) r.lo = j->b->raw_lo;
    r.n_raw = p - r.lo + 1;
    if (ratio) {
        uint32_t visible = (uint32_t)(p + 1) / ratio;
        if (visible > L->n_comp) visible = L->n_comp;
        int n_sel = ratio == 4 ? e->ws.n_sel[t] : -1;
        if (n_sel >= 0) {
            r.n_comp = n_sel;
            r.sel = e->ws.sel + (size_t)t * hp->indexer_top_k;
        } else {
            r.n_comp = (int)visible;
        }
    }
    return r;
}

/* Row k of the list as f32: from the ring (positions before the chunk), the
 * chunk's own KV rows, or the compressed rows. */
static void token_row(const att_job *j, const row_list *r, int k, float *dst) {
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    const layer_kv *L = j->b->kv;
    size_t hd = hp->head_dim;
    if (k < r->n_raw) {
        int pos = r->lo + k;
        if (pos < j->pos0)
            kv_rows_get(&L->raw, (uint32_t)pos % hp->n_swa, dst);
        else
            memcpy(dst, e->ws.kv + (size_t)(pos - j->pos0) * hd, hd * sizeof(float));
    } else {
        int c = k - r->n_raw;
        kv_rows_get(&L->comp, (uint32_t)(r->sel ? r->sel[c] : c), dst);
    }
}

/* Softmax attention with a sink for heads [h0, h1) of token t over nr rows. */
static void attend_heads(const att_job *j, int t, uint32_t h0, uint32_t h1, const float *rows, int nr,
                         float *scores) {
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    const rope_params *rp = j->b->rope;
    size_t hd = hp->head_dim;
    float scale = 1.0f / sqrtf((float)hd);
    const float *sinks = j->b->lc->sinks;
    for (uint32_t h = h0; h < h1; h++) {
        const float *q = e->ws.q + ((size_t)t * hp->n_head + h) * hd;
        float *o = e->ws.att + ((size_t)t * hp->n_head + h) * hd;
        float m = sinks[h];
        for (int r = 0; r < nr; r++) {
            scores[r] = scale * ds4_dot_f32(hd, q, rows + r * hd);
            if (scores[r] > m) m = scores[r];
        }
        float den = expf(sinks[h] - m);
        memset(o, 0, hd * sizeof(float));
        for (int r = 0; r < nr; r++) {
            float w = expf(scores[r] - m);
            den += w;
            cpu_axpy_f32(hd, w, rows + r * hd, o);
        }
        float inv = 1.0f / den;
        for (size_t d = 0; d < hd; d++) o[d] *= inv;
        rope_tail(o, (int)hd, j->pos0 + t, rp, true);
    }
}

/* Many tokens: one task per token gathers its rows and runs every head. */
static void attend_token_task(void *ctx, int t, int worker) {
    att_job *j = ctx;
    worker_scratch *wk = &j->s->e->ws.wk[worker];
    size_t hd = j->s->e->model.hp.head_dim;
    row_list r = token_rows(j, t);
    int nr = r.n_raw + r.n_comp;
    for (int k = 0; k < nr; k++) token_row(j, &r, k, wk->rows + k * hd);
    attend_heads(j, t, 0, j->s->e->model.hp.n_head, wk->rows, nr, wk->scores);
}

/* Few tokens (decode): the token's rows are gathered once into a shared
 * buffer (in parallel), then blocks of heads run in parallel. */
#define GATHER_ROWS_PER_TASK 32

static void gather_shared_task(void *ctx, int task, int worker) {
    att_job *j = ctx;
    size_t hd = j->s->e->model.hp.head_dim;
    int nr = j->rows.n_raw + j->rows.n_comp;
    for (int k = task * GATHER_ROWS_PER_TASK; k < nr && k < (task + 1) * GATHER_ROWS_PER_TASK; k++)
        token_row(j, &j->rows, k, j->s->e->ws.grows + k * hd);
}

static void attend_block_task(void *ctx, int b, int worker) {
    att_job *j = ctx;
    uint32_t n_head = j->s->e->model.hp.n_head;
    uint32_t h0 = (uint32_t)(b * j->per_block);
    uint32_t h1 = h0 + (uint32_t)j->per_block < n_head ? h0 + (uint32_t)j->per_block : n_head;
    attend_heads(j, j->t, h0, h1, j->s->e->ws.grows, j->rows.n_raw + j->rows.n_comp,
                 j->s->e->ws.wk[worker].scores);
}

void attention_sublayer(ds4_session *s, const block_ref *b, int pos0, int n) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    const ds4_layer *L = b->L;
    const layer_consts *lc = b->lc;
    chunk_ws *ws = &e->ws;
    layer_kv *kvl = b->kv;
    size_t D = hp->n_embd, hd = hp->head_dim, qdim = (size_t)hp->n_head * hd;
    att_job j = {.s = s, .b = b, .pos0 = pos0, .n = n};

    /* Everything that reads the attn-normed input, as one call: Q low-rank,
     * KV, and the compressors' kv/score projections of compressed layers. */
    cpu_mm *mm = ws->mm;
    int n_mm = 0;
    size_t cw = (L->compress_ratio == 4 ? 2 : 1) * hd, iw = 2 * (size_t)hp->indexer_head_dim;
    mm[n_mm++] = (cpu_mm){cpu_mat_of(&L->attn_q_a), ws->a, D, NULL, n, ws->qr, hp->q_lora};
    mm[n_mm++] = (cpu_mm){cpu_mat_of(&L->attn_kv), ws->a, D, NULL, n, ws->kv, hd};
    if (L->compress_ratio) {
        mm[n_mm++] = (cpu_mm){cpu_mat_of(&L->attn_compressor_kv), ws->a, D, NULL, n, ws->ckv, cw};
        mm[n_mm++] = (cpu_mm){cpu_mat_of(&L->attn_compressor_gate), ws->a, D, NULL, n, ws->csc, cw};
    }
    if (L->compress_ratio == 4) {
        mm[n_mm++] = (cpu_mm){cpu_mat_of(&L->indexer_compressor_kv), ws->a, D, NULL, n, ws->ikv, iw};
        mm[n_mm++] = (cpu_mm){cpu_mat_of(&L->indexer_compressor_gate), ws->a, D, NULL, n, ws->isc, iw};
    }
    cpu_matmul_batch(&e->cpu, mm, n_mm);
    cpu_parallel_for(&e->cpu, n, qnorm_task, &j);
    cpu_mat w = cpu_mat_of(&L->attn_q_b);
    cpu_matmul(&e->cpu, &w, ws->qr, hp->q_lora, n, ws->q, qdim);
    cpu_parallel_for(&e->cpu, n, qkv_prepare_task, &j);

    /* Compressed layers: frontier update (may emit rows) and the indexer. */
    if (L->compress_ratio) {
        compressor_run(e, &kvl->comp_st, &kvl->comp, &kvl->n_comp, ws->ckv, ws->csc, cw, pos0, n,
                       lc->comp_ape, lc->comp_norm, false, b->mark ? &b->mark->comp : NULL);
        if (L->compress_ratio == 4) {
            compressor_run(e, &kvl->index_st, &kvl->index_comp, &kvl->n_index_comp, ws->ikv, ws->isc,
                           iw, pos0, n, lc->index_ape, lc->index_norm, true, b->mark ? &b->mark->index : NULL);
            indexer_select(s, b, pos0, n);
        }
    }

    /* Attention: per token when there are enough tokens to keep the threads
     * busy, else token by token with the heads split across threads. */
    int want = 2 * e->cpu.n_threads;
    if (n >= want) {
        cpu_parallel_for(&e->cpu, n, attend_token_task, &j);
    } else {
        int blocks = want < (int)hp->n_head ? want : (int)hp->n_head;
        j.per_block = ((int)hp->n_head + blocks - 1) / blocks;
        blocks = ((int)hp->n_head + j.per_block - 1) / j.per_block;
        for (int t = 0; t < n; t++) {
            j.t = t;
            j.rows = token_rows(&j, t);
            int nr = j.rows.n_raw + j.rows.n_comp;
            size_t row_bytes = (size_t)nr * hd * sizeof(float);
            cpu_parallel_for_cost(&e->cpu, (nr + GATHER_ROWS_PER_TASK - 1) / GATHER_ROWS_PER_TASK,
                                  gather_shared_task, &j, row_bytes);
            cpu_parallel_for_cost(&e->cpu, blocks, attend_block_task, &j, row_bytes * hp->n_head);
        }
    }

    /* The chunk's KV rows join the raw window ring. */
    int first = n > (int)hp->n_swa ? n - (int)hp->n_swa : 0;
    for (int t = first; t < n; t++)
        kv_rows_put(&kvl->raw, (uint32_t)(pos0 + t) % hp->n_swa, ws->kv + (size_t)t * hd);

    /* Grouped output projection: group g of heads → rows g·o_lora.. of out_a. */
    size_t gdim = qdim / hp->n_out_group, low_dim = (size_t)hp->n_out_group * hp->o_lora;
    cpu_mat oa = cpu_mat_of(&L->attn_output_a);
    for (uint32_t g = 0; g < hp->n_out_group; g++)
        mm[g] = (cpu_mm){cpu_mat_rows(oa, g * hp->o_lora, hp->o_lora), ws->att + g * gdim, qdim, NULL, n,
                         ws->low + g * hp->o_lora, low_dim};
    cpu_matmul_batch(&e->cpu, mm, (int)hp->n_out_group);
    w = cpu_mat_of(&L->attn_output_b);
    cpu_matmul(&e->cpu, &w, ws->low, low_dim, n, ws->y, D);
}
