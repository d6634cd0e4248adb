/* mtp.c — the MTP draft block and greedy speculative decoding (model-spec §8).
 *
 * The MTP block predicts the token after next. For position q it combines
 * the main model's final streams h_q with the embedding of token t_{q+1}:
 * each stream becomes h_proj·RMSNorm(h_q,h, hnorm) + e_proj·RMSNorm(emb,
 * enorm), then one block that runs like main layer 1 (raw window only, RoPE
 * without YaRN, biased top-k routing) with its own raw ring, then the head
 * with the MTP's own collapse and norm and the model's vocabulary matrix.
 * Its argmax drafts t_{q+2}. This is the DeepSeek-V3 paper's wiring (and
 * the general engines'); ds4 feeds the embedding of t_q instead (model-spec
 * §8 notes it only saw a slight speedup) — which one V4 Flash was trained
 * with is for real weights to show.
 *
 * A cycle: the caller's next token `first` (the greedy choice at position
 * P) is known, so the MTP runs over the positions its ring lacks and
 * drafts d for P+1. The session keeps the final streams of its last n_swa
 * positions (a ring, filled by every forward chunk, prefill included), so
 * after a prompt the MTP block first runs over the prompt's last window —
 * its attention then sees what it would in a long decode — and after that
 * over the one or two positions each cycle adds. The target then evaluates [first, d] as one chunk — one
 * pass over the weights for two tokens. If its own choice after `first` is
 * d, both tokens stand; else the state d changed is put back from the
 * marks the forward pass recorded just before d's update (the compressor
 * frontiers and row counts; d's raw row replaced one no later token
 * attends), and the session is exactly as if only `first` had been
 * evaluated. Either way the tokens
 * appended are the ones plain greedy decoding gives, and so is the state.
 *
 * The MTP ring only holds positions the MTP has processed since the last
 * gap (more positions evaluated between cycles than the streams kept, a
 * reset): attention in the MTP block starts at mtp_lo.
 *
 * On the cuda backend the device keeps the final streams itself and runs
 * the MTP block (ds4_cuda_session_mtp, which leaves only the draft's two
 * most likely tokens and their logits on the host, or all its logits for
 * a draft hook); the cycle's verify is the device's verify step
 * (ds4_cuda_session_verify), which takes a wrong draft back itself. Without
 * an MTP block a cuda cycle verifies the draft the caller's hook gives
 * (ds4-bench --mtp-accept measures the verify step so). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine_impl.h"
#ifdef DS4_CUDA
#include "../backend/cuda/cuda_engine.h"
#endif

enum { HC = DS4_N_HC };

static size_t frontier_floats(const comp_state *st) { return (size_t)st->coff * st->ratio * st->width; }

/* Lays out (base NULL: only sizes) the marks of every layer after the fixed buffers. */
static size_t spec_layout(ds4_session *s, uint8_t *base) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    spec_state *sp = s->spec;
    size_t off = 0, HD = (size_t)HC * hp->n_embd;
#define CARVE(ptr, bytes)                                          \
    do {                                                           \
        if (base) (ptr) = (void *)(base + off);                    \
        off += ((bytes) + 63) & ~(size_t)63;                       \
    } while (0)
    CARVE(sp->h, (size_t)hp->n_swa * HD * sizeof(float));
    CARVE(sp->logits, 2 * (size_t)hp->n_vocab * sizeof(float));
    CARVE(sp->mtp_logits, (size_t)hp->n_vocab * sizeof(float));
    CARVE(sp->mtp_tokens, (size_t)e->ws.cap * sizeof(int32_t));
    CARVE(sp->marks, hp->n_layer * sizeof(layer_mark));
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const layer_kv *L = &s->layers[il];
        layer_mark *mk = base ? &sp->marks[il] : &(layer_mark){0};
        if (L->comp_st.kv) {
            CARVE(mk->comp.kv, frontier_floats(&L->comp_st) * sizeof(float));
            CARVE(mk->comp.score, frontier_floats(&L->comp_st) * sizeof(float));
        }
        if (L->index_st.kv) {
            CARVE(mk->index.kv, frontier_floats(&L->index_st) * sizeof(float));
            CARVE(mk->index.score, frontier_floats(&L->index_st) * sizeof(float));
        }
    }
#undef CARVE
    return off;
}

int spec_new(ds4_session *s) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    s->spec = calloc(1, sizeof *s->spec);
    if (!s->spec) return -1;
    spec_state *sp = s->spec;
    kv_rows *raw = &sp->mtp_kv.raw;
    raw->f16 = !e->exact;
    raw->width = hp->head_dim;
    raw->cap = hp->n_swa;
    raw->data = calloc((size_t)raw->cap * raw->width, raw->f16 ? sizeof(uint16_t) : sizeof(float));
    sp->arena = malloc(spec_layout(s, NULL));
    if (!raw->data || !sp->arena) return -1;
    spec_layout(s, sp->arena);
    return 0;
}

void spec_free(ds4_session *s) {
    if (!s->spec) return;
    free(s->spec->mtp_kv.raw.data);
    free(s->spec->arena);
    free(s->spec);
    s->spec = NULL;
}

void spec_reset(ds4_session *s) {
    spec_state *sp = s->spec;
    sp->mtp_lo = sp->mtp_next = 0;
    sp->h_n = 0;
    sp->marking = sp->can_drop = false;
}

/* After a forward chunk of n tokens at positions n_tokens.. (ws.H holds
 * their final streams): the last n_swa of them join the ring of streams
 * (on cuda the device's ring, which its steps fill themselves). */
void spec_after_forward(ds4_session *s, int n) {
    spec_state *sp = s->spec;
    const int W = (int)s->e->model.hp.n_swa;
    const size_t HD = (size_t)HC * s->e->model.hp.n_embd;
    for (int t = n > W ? n - W : 0; t < n && !s->cuda; t++)
        memcpy(sp->h + (size_t)((s->n_tokens + t) % W) * HD, s->e->ws.H + (size_t)t * HD, HD * sizeof(float));
    sp->h_n = sp->h_n + n < W ? sp->h_n + n : W;
    sp->can_drop = false;
}

static block_ref mtp_block(ds4_session *s) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    return (block_ref){.L = &e->mtp.block, .lc = &e->mtp_lc, .kv = &s->spec->mtp_kv, .rope = &e->rope_plain,
                       .swiglu_clamp = hp->swiglu_clamp[hp->n_layer > 1 ? 1 : 0], .raw_lo = s->spec->mtp_lo};
}

/* The MTP block over positions [q0, q0+n) (n <= the workspace's tokens;
 * their final streams in the ring, tokens[i] = t_{q0+i+1}); with `head`
 * the last position's draft logits go to mtp_logits. */
static void mtp_forward(ds4_session *s, int q0, const int32_t *tokens, int n, bool head) {
    ds4_engine *e = s->e;
    const ds4_model *m = &e->model;
    const ds4_mtp_model *mt = &e->mtp;
    chunk_ws *ws = &e->ws;
    spec_state *sp = s->spec;
    const size_t D = m->hp.n_embd, HD = HC * D;
    const int W = (int)m->hp.n_swa;
    for (int t = 0; t < n; t++) memcpy(ws->H + t * HD, sp->h + (size_t)((q0 + t) % W) * HD, HD * sizeof(float));
    cpu_mat emb = cpu_mat_of(&m->token_embd);
    for (int t = 0; t < n; t++) cpu_mat_row_f32(&emb, (uint32_t)tokens[t], ws->y + (size_t)t * D);
    norm_chunk(e, ws->y, D, ws->a, D, e->mtp_enorm, (int)D, n);
    norm_chunk(e, ws->H, D, ws->hc_flat, D, e->mtp_hnorm, (int)D, n * HC);
    cpu_mat ep = cpu_mat_of(&mt->e_proj), hpj = cpu_mat_of(&mt->h_proj);
    cpu_matmul(&e->cpu, &ep, ws->a, D, n, ws->x, D);
    cpu_matmul(&e->cpu, &hpj, ws->hc_flat, D, n * HC, ws->H, D);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < HC; h++) {
            float *dst = ws->H + ((size_t)t * HC + h) * D;
            const float *x = ws->x + (size_t)t * D;
            for (size_t d = 0; d < D; d++) dst[d] += x[d];
        }
    block_ref b = mtp_block(s);
    block_forward(s, &b, tokens, q0, n);
    if (!head) return;
    head_ref hr = {&mt->hc_head_fn, e->mtp_hc_scale, e->mtp_hc_base, e->mtp_norm};
    output_head(e, &hr, n - 1, 1, sp->mtp_logits);
}

/* The draft for position P+1 given `first` at P = n_tokens into *draft,
 * or -1 (no streams to start from, or below the margin); -1 with err if
 * the device failed. */
static int mtp_draft(ds4_session *s, int32_t first, const ds4_spec_opts *o, int32_t *draft, ds4_err *err) {
    spec_state *sp = s->spec;
    const int P = s->n_tokens, cap = s->e->ws.cap, n_vocab = (int)s->e->model.hp.n_vocab;
    const bool hook = o && o->draft_hook;
    float *logits = s->cuda && hook && o->hook_no_logits ? NULL : sp->mtp_logits; /* the hook's, on cuda */
    *draft = -1;
    if (sp->h_n == 0) return 0;
    /* mtp_next <= P - 1: a cycle leaves it at the position it drafted from,
     * and sessions only grow (a reset empties it) */
    const int q_avail = P - sp->h_n; /* the first position whose streams are kept */
    if (sp->mtp_next < q_avail) sp->mtp_lo = sp->mtp_next = q_avail; /* a gap: the ring starts again */
    int32_t d = -1;
    float margin = 0.0f;
    while (sp->mtp_next < P) { /* in pieces the workspace holds */
        const int q0 = sp->mtp_next, n = P - q0 < cap ? P - q0 : cap;
        const bool head = q0 + n == P;
        int32_t *tok = sp->mtp_tokens;
        for (int i = 0; i < n; i++) tok[i] = q0 + i + 1 < P ? s->tokens[q0 + i + 1] : first;
#ifdef DS4_CUDA
        if (s->cuda) {
            int32_t pick[2];
            float logit[2];
            if (ds4_cuda_session_mtp(s->cuda, tok, q0, n, sp->mtp_lo, head, pick, logit, hook ? logits : NULL, err))
                return -1;
            if (head) d = pick[0], margin = pick[1] < 0 ? INFINITY : logit[0] - logit[1];
        } else
#endif
            mtp_forward(s, q0, tok, n, head);
        sp->mtp_next = q0 + n;
    }
    if (!s->cuda) {
        d = ds4_argmax(sp->mtp_logits, n_vocab);
        if (!hook) margin = ds4_top_margin(sp->mtp_logits, n_vocab, d);
    }
    if (hook) *draft = o->draft_hook(o->hook_ctx, P + 1, d, logits);
    else if (d >= 0 && margin >= (o ? o->margin : 0.0f)) *draft = d;
    return 0;
}

/* Puts back what the verify's second token changed (the marks), so the
 * session holds `first` as its last token; the logits and the tail follow. */
static void drop_last(ds4_session *s) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    spec_state *sp = s->spec;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        layer_kv *L = &s->layers[il];
        const layer_mark *mk = &sp->marks[il];
        if (L->comp_st.kv) {
            memcpy(L->comp_st.kv, mk->comp.kv, frontier_floats(&L->comp_st) * sizeof(float));
            memcpy(L->comp_st.score, mk->comp.score, frontier_floats(&L->comp_st) * sizeof(float));
            L->n_comp = mk->comp.n_rows;
        }
        if (L->index_st.kv) {
            memcpy(L->index_st.kv, mk->index.kv, frontier_floats(&L->index_st) * sizeof(float));
            memcpy(L->index_st.score, mk->index.score, frontier_floats(&L->index_st) * sizeof(float));
            L->n_index_comp = mk->index.n_rows;
        }
    }
    sp->h_n--; /* the dropped position's streams; the next forward rewrites its row */
    memcpy(s->logits, sp->logits, hp->n_vocab * sizeof(float));
    s->n_tokens--;
    sp->can_drop = false;
}

bool ds4_engine_has_mtp(const ds4_engine *e) { return e->has_mtp; }

bool ds4_speculation_on(const ds4_engine *e, int mtp_draft, float temperature) {
    return e->has_mtp && mtp_draft > 1 && !(temperature > 0.0f) && !getenv("DS4_MTP_SPEC_DISABLE");
}

#ifdef DS4_CUDA
/* A cycle on the cuda backend (eval_mu held): the MTP's draft (or without
 * an MTP block the hook's), if any, verified with `first` in one device
 * step. */
static int spec_cuda(ds4_session *s, int32_t first, int max_new, const ds4_spec_opts *o, int32_t out[2],
                     ds4_err *err) {
    const int P = s->n_tokens;
    int32_t d = -1;
    if (max_new >= 2 && P + 2 <= s->e->ctx) {
        if (s->spec && mtp_draft(s, first, o, &d, err)) return -1;
        if (!s->spec) d = o->draft_hook(o->hook_ctx, P + 1, -1, NULL);
    }
    out[0] = first;
    if (d < 0 || (uint32_t)d >= s->e->model.hp.n_vocab) {
        if (ds4_cuda_session_step(s->cuda, first, P, NULL, err)) return -1;
        if (s->spec) spec_after_forward(s, 1);
        s->tokens[s->n_tokens++] = first;
        return 1;
    }
    const int32_t pair[2] = {first, d};
    int32_t pick[2];
    if (ds4_cuda_session_verify(s->cuda, pair, P, err)) return -1;
    if (s->spec) spec_after_forward(s, 2);
    ds4_cuda_session_verify_pick(s->cuda, 0, pick);
    s->tokens[P] = first;
    if (pick[0] != d) {
        if (ds4_cuda_session_verify_reject(s->cuda, err)) return -1;
        if (s->spec) s->spec->h_n--; /* the draft's streams; its next step rewrites them */
        s->n_tokens = P + 1;
        return 1;
    }
    s->tokens[P + 1] = d;
    s->n_tokens = P + 2;
    out[1] = d;
    return 2;
}
#endif

int ds4_session_eval_speculative(ds4_session *s, int32_t first, int max_new, const ds4_spec_opts *o,
                                 int32_t out[2], ds4_err *err) {
    ds4_engine *e = s->e;
    const ds4_hparams *hp = &e->model.hp;
    spec_state *sp = s->spec;
#ifdef DS4_CUDA
    if (s->cuda) {
        if (!sp && (!o || !o->draft_hook))
            return ds4_fail(err, "speculative decoding needs an MTP model (--mtp FILE)");
        if (eval_check(s, &first, 1, err)) return -1;
        pthread_mutex_lock(&e->eval_mu);
        int n = spec_cuda(s, first, max_new, o, out, err);
        pthread_mutex_unlock(&e->eval_mu);
        return n;
    }
#endif
    if (!sp) return ds4_fail(err, "speculative decoding needs an MTP model (--mtp FILE)");
    if (eval_check(s, &first, 1, err)) return -1;
    pthread_mutex_lock(&e->eval_mu);
    int P = s->n_tokens;
    int32_t d = -1;
    if (max_new >= 2 && P + 2 <= e->ctx) mtp_draft(s, first, o, &d, err); /* the cpu's cannot fail */
    if (d < 0 || (uint32_t)d >= hp->n_vocab) {
        forward_chunk(s, &first, 1, NULL);
        s->tokens[P] = first;
        s->n_tokens = P + 1;
        pthread_mutex_unlock(&e->eval_mu);
        out[0] = first;
        return 1;
    }
    int32_t pair[2] = {first, d};
    sp->marking = true;
    forward_chunk(s, pair, 2, sp->logits);
    sp->marking = false;
    s->tokens[P] = first;
    s->tokens[P + 1] = d;
    s->n_tokens = P + 2;
    out[0] = first;
    int n_out = 1;
    if (ds4_argmax(sp->logits, (int)hp->n_vocab) == d) {
        out[n_out++] = d;
        sp->can_drop = true;
    } else {
        drop_last(s);
    }
    pthread_mutex_unlock(&e->eval_mu);
    return n_out;
}

int ds4_session_drop_draft(ds4_session *s) {
#ifdef DS4_CUDA
    if (s->cuda) {
        if (!ds4_cuda_session_verify_pending(s->cuda)) return 0;
        ds4_err err = {{0}};
        pthread_mutex_lock(&s->e->eval_mu);
        int rc = ds4_cuda_session_verify_reject(s->cuda, &err);
        if (!rc) s->n_tokens--;
        if (!rc && s->spec) s->spec->h_n--;
        pthread_mutex_unlock(&s->e->eval_mu);
        if (rc) fprintf(stderr, "ds4: %s\n", err.msg);
        return rc ? 0 : 1;
    }
#endif
    if (!s->spec || !s->spec->can_drop) return 0;
    pthread_mutex_lock(&s->e->eval_mu);
    drop_last(s);
    pthread_mutex_unlock(&s->e->eval_mu);
    return 1;
}
