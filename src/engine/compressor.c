/* compressor.c — KV compressor frontiers and the lightning indexer
 * (model-spec §5.6, §5.7), plus the row storage they append to.
 *
 * The compressor walks the chunk's tokens in order exactly as decode does:
 * each token's projected kv and score (+ APE) go into its frontier row, and
 * every R-th token pools the frontier per dimension (softmax over the
 * scores) into one compressed row: RMSNorm, RoPE at the window start, the
 * official FP8 (attention) or Hadamard+FP4 (indexer) round-trip, and f16
 * storage. Ratio 4 keeps two lanes: the previous window's first half and the
 * current window's second half, 8 candidates per dimension. After an
 * emission the frontier rows that will be rewritten are reset to 0/−∞, so
 * the saved state is canonical whatever path produced it.
 *
 * The indexer scores every visible indexer row for each token whose visible
 * count exceeds top_k and keeps the top_k (ties → lower row). */
#include <math.h>
#include <string.h>

#include "../backend/cpu/cpu_vec.h"
#include "../quant/quant.h"
#include "engine_impl.h"

void kv_rows_put(kv_rows *r, uint32_t i, const float *src) {
    if (r->f16) {
        uint16_t *d = (uint16_t *)r->data + (size_t)i * r->width;
        for (uint32_t k = 0; k < r->width; k++) d[k] = ds4_f32_to_f16(src[k]);
    } else {
        memcpy((float *)r->data + (size_t)i * r->width, src, r->width * sizeof(float));
    }
}

void kv_rows_get(const kv_rows *r, uint32_t i, float *dst) {
    if (r->f16) {
        cpu_f16_to_f32(r->width, (const uint16_t *)r->data + (size_t)i * r->width, dst);
    } else {
        memcpy(dst, (const float *)r->data + (size_t)i * r->width, r->width * sizeof(float));
    }
}

static void frontier_reset_rows(comp_state *st, uint32_t r0, uint32_t r1) {
    for (uint32_t r = r0; r < r1; r++)
        for (uint32_t k = 0; k < st->width; k++) {
            st->kv[(size_t)r * st->width + k] = 0.0f;
            st->score[(size_t)r * st->width + k] = -INFINITY;
        }
}

/* Per-dimension softmax pooling of the frontier into out[hd]. */
static void frontier_pool(const comp_state *st, float *out) {
    uint32_t R = st->ratio, W = st->width, n_cand = st->coff * R;
    for (uint32_t j = 0; j < st->hd; j++) {
        /* candidate c: row c; ratio 4 takes lane B (rows R..2R-1) at column hd + j */
        float m = -INFINITY;
        for (uint32_t c = 0; c < n_cand; c++) {
            size_t col = c < R ? j : st->hd + j;
            m = fmaxf(m, st->score[(size_t)c * W + col]);
        }
        if (m == -INFINITY) {
            out[j] = 0.0f;
            continue;
        }
        float sum = 0.0f, acc = 0.0f;
        for (uint32_t c = 0; c < n_cand; c++) {
            size_t col = c < R ? j : st->hd + j;
            float w = expf(st->score[(size_t)c * W + col] - m);
            sum += w;
            acc += w * st->kv[(size_t)c * W + col];
        }
        out[j] = acc / sum;
    }
}

void compressor_run(ds4_engine *e, comp_state *st, kv_rows *rows, uint32_t *n_rows,
                    const float *kv, const float *sc, size_t ld, int pos0, int n,
                    const float *ape, const float *norm_w, bool indexer, comp_mark *mark) {
    const ds4_hparams *hp = &e->model.hp;
    uint32_t R = st->ratio, W = st->width;
    float *out = e->ws.wk[0].tmp;
    for (int t = 0; t < n; t++) {
        int64_t p = pos0 + t;
        if (mark && t == n - 1) {
            size_t bytes = (size_t)st->coff * R * W * sizeof(float);
            memcpy(mark->kv, st->kv, bytes);
            memcpy(mark->score, st->score, bytes);
            mark->n_rows = *n_rows;
        }
        uint32_t slot = (uint32_t)(p % R);
        uint32_t row = (st->coff == 2 ? R : 0) + slot;
        memcpy(st->kv + (size_t)row * W, kv + (size_t)t * ld, W * sizeof(float));
        for (uint32_t k = 0; k < W; k++)
            st->score[(size_t)row * W + k] = sc[(size_t)t * ld + k] + ape[(size_t)slot * W + k];
        if ((p + 1) % R != 0) continue;
        frontier_pool(st, out);
        num_rmsnorm(out, out, norm_w, (int)st->hd, hp->rms_eps);
        rope_tail(out, (int)st->hd, p + 1 - R, &e->rope_comp, false);
        if (!e->exact) {
            if (indexer)
                indexer_qat(out, (int)st->hd);
            else
                fp8_kv_roundtrip(out, (int)st->hd - (int)hp->n_rot);
        }
        kv_rows_put(rows, (*n_rows)++, out);
        if (st->coff == 2) {
            memcpy(st->kv, st->kv + (size_t)R * W, (size_t)R * W * sizeof(float));
            memcpy(st->score, st->score + (size_t)R * W, (size_t)R * W * sizeof(float));
            frontier_reset_rows(st, R, 2 * R);
        } else {
            frontier_reset_rows(st, 0, R);
        }
    }
}

typedef struct idx_job {
    ds4_session *s;
    const layer_kv *kv;
    int pos0, t0, t;
    uint32_t visible;
    int block;
} idx_job;

/* Indexer query heads: RoPE (compressed-layer params), QAT; head weights scaled. */
static void idx_query_task(void *ctx, int i, int worker) {
    idx_job *j = ctx;
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    int t = j->t0 + i, ihd = (int)hp->indexer_head_dim, nih = (int)hp->n_indexer_head;
    float *q = e->ws.iq + (size_t)t * nih * ihd;
    for (int h = 0; h < nih; h++) {
        rope_tail(q + h * ihd, ihd, j->pos0 + t, &e->rope_comp, false);
        if (!e->exact) indexer_qat(q + h * ihd, ihd);
    }
    float *w = e->ws.iw + (size_t)t * nih;
    float denom = sqrtf((float)(ihd * nih));
    for (int h = 0; h < nih; h++) w[h] = w[h] / denom;
}

static void idx_score_task(void *ctx, int task, int worker) {
    idx_job *j = ctx;
    ds4_engine *e = j->s->e;
    const ds4_hparams *hp = &e->model.hp;
    const layer_kv *L = j->kv;
    size_t ihd = hp->indexer_head_dim, nih = hp->n_indexer_head;
    const float *q = e->ws.iq + (size_t)j->t * nih * ihd;
    const float *w = e->ws.iw + (size_t)j->t * nih;
    float *k = e->ws.wk[worker].tmp;
    uint32_t c0 = (uint32_t)task * (uint32_t)j->block;
    uint32_t c1 = c0 + (uint32_t)j->block < j->visible ? c0 + (uint32_t)j->block : j->visible;
    for (uint32_t c = c0; c < c1; c++) {
        kv_rows_get(&L->index_comp, c, k);
        float score = 0.0f;
        for (size_t h = 0; h < nih; h++) {
            float d = ds4_dot_f32(ihd, q + h * ihd, k);
            score += (d > 0.0f ? d : 0.0f) * w[h];
        }
        e->ws.iscores[c] = score;
    }
}

void indexer_select(ds4_session *s, const block_ref *b, int pos0, int n) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    const ds4_layer *L = b->L;
    chunk_ws *ws = &e->ws;
    const layer_kv *kvl = b->kv;
    uint32_t top_k = hp->indexer_top_k;
    int t0 = n;
    for (int t = 0; t < n; t++) {
        uint32_t visible = (uint32_t)(pos0 + t + 1) / 4;
        ws->n_sel[t] = visible > top_k ? (int)top_k : -1;
        if (visible > top_k && t < t0) t0 = t;
    }
    if (t0 == n) return;
    size_t qdim = (size_t)hp->n_indexer_head * hp->indexer_head_dim;
    cpu_mm mm[2] = {
        {cpu_mat_of(&L->indexer_attn_q_b), ws->qr + (size_t)t0 * hp->q_lora, hp->q_lora, NULL, n - t0,
         ws->iq + (size_t)t0 * qdim, qdim},
        {cpu_mat_of(&L->indexer_proj), ws->a + (size_t)t0 * hp->n_embd, hp->n_embd, NULL, n - t0,
         ws->iw + (size_t)t0 * hp->n_indexer_head, hp->n_indexer_head},
    };
    cpu_matmul_batch(&e->cpu, mm, 2);
    idx_job j = {s, kvl, pos0, t0, 0, 0, 256};
    cpu_parallel_for(&e->cpu, n - t0, idx_query_task, &j);
    for (int t = t0; t < n; t++) {
        j.t = t;
        j.visible = (uint32_t)(pos0 + t + 1) / 4;
        if (j.visible > kvl->n_index_comp) j.visible = kvl->n_index_comp;
        if (j.visible <= top_k) { /* cannot happen: rows are emitted before this */
            ws->n_sel[t] = -1;
            continue;
        }
        cpu_parallel_for_cost(&e->cpu, (int)((j.visible + 255) / 256), idx_score_task, &j,
                              (size_t)j.visible * qdim * sizeof(float));
        topk_indices_ascending(ws->iscores, (int)j.visible, (int)top_k, ws->wk[0].heap,
                               ws->sel + (size_t)t * top_k);
    }
}
