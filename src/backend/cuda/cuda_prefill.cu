/* cuda_prefill.cu — batched prefill on the GPU (cuda_engine.h
 * ds4_cuda_session_prefill): a chunk of T tokens through every layer at
 * once, layer-major like src/engine/forward.c, leaving the session's state
 * (raw window ring, compressed and indexer rows, frontiers) exactly as T
 * decode steps would, so decode continues from it.
 *
 * Per layer, as forward.c / attention.c / compressor.c / moe.c:
 *   HC pre (mix for all tokens, Sinkhorn per token, x, attn norm; with
 *   the previous sublayer's HC post in one launch, pf_hc_boundary);
 *   Q low-rank, KV, the compressors' projections for all T tokens (batched
 *   products: cuda_mmq.h for quantised weights, pf_gemm_plain for F16/F32);
 *   KV norm, RoPE, FP8 round-trip, the chunk's KV rows as f16 (q's heads
 *   are normed and rotated by the attention kernel as it loads them);
 *   compressors: every emission of the chunk pooled in parallel from the
 *   chunk's projections and the frontier saved before the chunk, then the
 *   frontier as the walk leaves it; the indexer's scores and top-k per
 *   token; attention per (head, token) over the raw window (ring rows before
 *   the chunk, the chunk's rows after) and the compressed rows; the chunk's
 *   last n_swa KV rows into the ring; grouped output projection; HC post;
 *   HC pre, router, shared and routed experts (tokens grouped by expert in
 *   ds4_cuda_mmq_moe), HC post.
 * The output head runs for the last token only; with an MTP block the
 * chunk's last n_swa final streams are kept for it (keep_streams). In
 * exact mode (plain f32 numerics, f32 rows) the chunk runs as decode steps
 * instead.
 *
 * The workspace (activations of up to PF_MAX_CHUNK tokens) belongs to the
 * engine, allocated at the first prefill and grown when a larger chunk
 * comes, smaller chunks where a full one would leave less than
 * PREFILL_RESERVE of device memory; ds4_cuda_prefill_free releases it at
 * engine close. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_engine.h"
#include "cuda_kernels.h"
extern "C" {
#include "../../quant/quant.h"
}

#include "cuda_gemm16.h"
#include "cuda_mmq.h"

#include "cuda_engine_impl.cuh"
#include "cuda_prefill_ops.cuh"

enum { PF_MAX_CHUNK = 16384, PF_SCORE_FLOATS = 1 << 25 };

struct pf_ws {
    int cap;
    int32_t *tok;
    float *H, *mix, *pre, *post, *comb, *a, *qr, *q, *kv, *ckv, *csc, *ikv, *isc, *iq, *iw, *scores;
    float *att, *low, *y, *router, *ew, *sg, *su, *smid, *sh, *mid, *hc_flat, *hmix, *ehc, *logits;
    float *snap_kv, *snap_sc;
    __half *kvc, *mid16; /* mid16: the shared expert's SwiGLU as its f16 down input */
    int32_t *ids, *sel, *n_sel;
    uint8_t *act, *act2, *moe_ws;
    size_t act_bytes, moe_ws_bytes, score_ld;
    int score_tok; /* tokens whose scores fit the score buffer at once */
    __half *xh, *xl; /* an f32 input split hi + lo for the F16 products, split_n values */
    size_t split_n, split_ld;
    const float *split_x; /* what xh/xl hold: split_rows rows of split_in from split_x (xl if split_lo) */
    bool split_lo;
    uint32_t split_in;
    int split_rows;
    int att_mb; /* m-tiles of 16 heads per attention block (pf_attention<1 or 2, hd, split>) */
    ds4_gemm16 *g16; /* Q8_0 and F16 products by cuBLAS (cuda_gemm16.h); NULL with --quality */
    void *bufs[64];
    int n_bufs;
};

static void pf_ws_free(pf_ws *w) {
    if (!w) return;
    ds4_gemm16_free(w->g16);
    for (int i = 0; i < w->n_bufs; i++) cudaFree(w->bufs[i]);
    free(w);
}

void ds4_cuda_prefill_free(ds4_cuda_engine *e) {
    pf_ws_free(e->prefill);
    e->prefill = NULL;
}

static int pf_alloc(pf_ws *w, void **p, size_t bytes, ds4_err *err) {
    if (w->n_bufs == 64) return ds4_fail(err, "cuda prefill: too many workspace buffers");
    cudaError_t c = cudaMalloc(p, bytes ? bytes : 16);
    if (c != cudaSuccess) return cuda_fail(err, "prefill workspace", c);
    w->bufs[w->n_bufs++] = *p;
    return 0;
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static bool plain(uint32_t t) { return t == DS4_TYPE_F16 || t == DS4_TYPE_F32; }

/* The f16 products' largest weight (rows × in) and widest input of a
 * layer's Q8_0 projections: q_a, kv, q_b, out_a a group at a time, out_b
 * and the shared expert (cuda_gemm16.h; unless --quality). */
static void g16_sizes(const dlayer *L, const ds4_hparams *hp, size_t *max_w, size_t *max_in) {
    size_t gdim = (size_t)hp->n_head * hp->head_dim / hp->n_out_group;
    struct { const dmat *m; size_t rows, in; } p[] = {
        {&L->q_a, L->q_a.rows, L->q_a.in},     {&L->kv, L->kv.rows, L->kv.in},       {&L->q_b, L->q_b.rows, L->q_b.in},
        {&L->out_a, hp->o_lora, gdim},         {&L->out_b, L->out_b.rows, L->out_b.in},
        {&L->gate_sh, L->gate_sh.rows, L->gate_sh.in}, {&L->up_sh, L->up_sh.rows, L->up_sh.in},
        {&L->down_sh, L->down_sh.rows, L->down_sh.in}};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++)
        if (p[i].m->w && p[i].m->type == DS4_TYPE_Q8_0) {
            *max_w = max_sz(*max_w, p[i].rows * p[i].in);
            *max_in = max_sz(*max_in, p[i].in);
        }
}

/* Activation bytes of n tokens of width in for weights of type t (0 for plain types). */
static size_t act_need(uint32_t t, uint32_t in, uint32_t n) {
    return plain(t) ? 0 : ds4_cuda_mmq_act_bytes(t, in, n);
}

static int pf_ws_new(ds4_cuda_session *s, int cap, bool f16, pf_ws **out, ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    const ds4_model *m = e->m;
    const ds4_hparams *hp = &m->hp;
    pf_ws *w = (pf_ws *)calloc(1, sizeof *w);
    if (!w) return ds4_fail(err, "cuda: out of host memory");
    w->cap = cap;
    size_t C = (size_t)cap, D = hp->n_embd, hd = hp->head_dim, ihd = hp->indexer_head_dim, ff = hp->n_ff_exp;
    size_t nu = hp->n_expert_used, qdim = (size_t)hp->n_head * hd, low = (size_t)hp->n_out_group * hp->o_lora;
    size_t st_max = 16, max_vis = 16;
    size_t act = 0, moe = 16;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const dlayer *L = &e->L[il];
        st_max = max_sz(st_max, max_sz(s->L[il].st_n, s->L[il].ist_n));
        if (L->ratio == 4) max_vis = max_sz(max_vis, e->comp_cap[il]);
        const dmat *mats[] = {&L->q_a, &L->kv, &L->comp_kv, &L->comp_gate, &L->idx_comp_kv, &L->idx_comp_gate,
                              &L->idx_proj, &L->gate_inp, &L->gate_sh, &L->gate_exps};
        for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
            if (mats[i]->w) act = max_sz(act, act_need(mats[i]->type, (uint32_t)D, cap));
        act = max_sz(act, act_need(L->q_b.type, hp->q_lora, cap));
        if (L->idx_q_b.w) act = max_sz(act, act_need(L->idx_q_b.type, hp->q_lora, cap));
        act = max_sz(act, act_need(L->out_a.type, (uint32_t)qdim, cap));
        act = max_sz(act, act_need(L->out_b.type, (uint32_t)low, cap));
        act = max_sz(act, act_need(L->down_sh.type, (uint32_t)ff, cap));
        if (!plain(L->gate_exps.type)) {
            moe = max_sz(moe, ds4_cuda_mmq_moe_ws_bytes(L->gate_exps.type, L->down_exps.type, (uint32_t)D, (uint32_t)ff,
                                                       hp->n_expert, (uint32_t)nu, cap));
            moe = max_sz(moe, ds4_cuda_mmq_moe_ws_bytes(L->gate_sh.type, L->down_sh.type, (uint32_t)D, (uint32_t)ff, 1,
                                                       1, cap));
        }
    }
    size_t g16_w = 0, g16_in = 0;
    if (f16)
        for (uint32_t il = 0; il < hp->n_layer; il++) g16_sizes(&e->L[il], hp, &g16_w, &g16_in);
    if (g16_w && ds4_gemm16_new(&w->g16, g16_w, C * g16_in, err)) {
        pf_ws_free(w);
        return -1;
    }
    act = max_sz(act, act_need(e->output_hc_fn.type, HC_N * (uint32_t)D, 1));
    act = max_sz(act, act_need(e->output.type, (uint32_t)D, 1));
    w->act_bytes = act + 256;
    w->moe_ws_bytes = moe;
    w->score_ld = max_vis;
    size_t sc_tok = PF_SCORE_FLOATS / max_vis;
    w->score_tok = (int)(sc_tok < C ? (sc_tok ? sc_tok : 1) : C);
#define F(ptr, n) if (pf_alloc(w, (void **)&(w->ptr), (size_t)(n) * sizeof(*(w->ptr)), err)) goto fail
    F(tok, C); F(H, C * HC_N * D); F(mix, C * HC_MIX); F(pre, C * HC_N); F(post, C * HC_N); F(comb, C * HC_N * HC_N);
    F(a, C * D); F(qr, C * hp->q_lora); F(q, C * qdim); F(kv, C * hd); F(kvc, C * hd);
    F(ckv, C * 2 * hd); F(csc, C * 2 * hd); F(ikv, C * 2 * ihd); F(isc, C * 2 * ihd);
    F(iq, C * hp->n_indexer_head * ihd); F(iw, C * hp->n_indexer_head);
    F(scores, (size_t)w->score_tok * max_vis); F(sel, C * hp->indexer_top_k); F(n_sel, C);
    F(att, C * qdim); F(low, C * low); F(y, C * D); F(router, C * hp->n_expert); F(ids, C * nu); F(ew, C * nu);
    F(sg, C * ff); F(su, C * ff); F(smid, C * ff); F(mid16, C * ff); F(sh, C * D); F(mid, C * nu * ff);
    F(hc_flat, HC_N * D); F(hmix, HC_MIX); F(ehc, D); F(logits, hp->n_vocab);
    F(snap_kv, st_max); F(snap_sc, st_max);
    w->split_n = C * max_sz(max_sz(D, hp->q_lora), max_sz(qdim / hp->n_out_group, max_sz(low, ff)));
    F(xh, w->split_n); F(xl, w->split_n);
    F(act, w->act_bytes); F(act2, w->act_bytes); F(moe_ws, w->moe_ws_bytes);
#undef F
    *out = w;
    return 0;
fail:
    pf_ws_free(w);
    return -1;
}

/* ------------------------------------------------------------ profile */

/* DS4_CUDA_PREFILL_PROFILE=1: an event after each phase of every layer,
 * the time per phase kind printed after each prefill call. */
struct pf_prof {
    bool on;
    int n;
    cudaEvent_t ev[4096];
    const char *label[4096];
};
static pf_prof g_prof;

static void pmark(cudaStream_t st, const char *label) {
    pf_prof *p = &g_prof;
    if (!p->on || p->n >= 4096) return;
    if (!p->ev[p->n] && cudaEventCreate(&p->ev[p->n]) != cudaSuccess) return;
    p->label[p->n] = label;
    cudaEventRecord(p->ev[p->n++], st);
}

static void pprint(int n_tok) {
    pf_prof *p = &g_prof;
    if (!p->on || p->n < 2) return;
    cudaEventSynchronize(p->ev[p->n - 1]);
    const char *lab[64];
    double ms[64], total = 0;
    int nl = 0;
    for (int i = 1; i < p->n; i++) {
        float t = 0;
        cudaEventElapsedTime(&t, p->ev[i - 1], p->ev[i]);
        int k = 0;
        while (k < nl && strcmp(lab[k], p->label[i])) k++;
        if (k == nl) {
            if (nl == 64) continue;
            lab[nl] = p->label[i], ms[nl++] = 0;
        }
        ms[k] += t;
        total += t;
    }
    fprintf(stderr, "cuda prefill profile: %d tokens, %.1f ms (%.0f tok/s), summed over layers:\n", n_tok, total,
            n_tok / (total * 1e-3));
    for (int k = 0; k < nl; k++) fprintf(stderr, "  %-28s %9.2f ms  %5.1f%%\n", lab[k], ms[k], 100 * ms[k] / total);
    p->n = 0;
}

/* ------------------------------------------------------------ products */

struct pfq {
    ds4_cuda_engine *e;
    pf_ws *w;
    cudaStream_t st;
    ds4_err *err;
    const float *memo_x; /* what w->act holds: x quantised for memo_type, memo_in wide, memo_n tokens */
    uint32_t memo_type, memo_in;
    int memo_n;
    bool post_due;      /* the last sublayer's HC post is still to run (hc_post) */
    bool round16;       /* this sublayer's Q8_0 products run on f16: F16 products round x to f16 once too */
    const float *g16_x; /* what the f16 products' activation buffer g16_x16 holds: g16_n rows of g16_in, stride g16_ld */
    const void *g16_x16;
    size_t g16_ld;
    uint32_t g16_in;
    int g16_n;
};

/* The inputs changed: act, xh/xl and the f16 activation no longer hold a known input. */
static void forget(pfq *q) {
    q->memo_x = NULL;
    q->g16_x = NULL;
    q->w->split_x = NULL;
}

/* x [n][in] quantised for weights of `type` into buf (act remembers its input). */
static const void *quantize(pfq *q, uint32_t type, const float *x, uint32_t in, int n, uint8_t *buf) {
    bool is_act = buf == q->w->act;
    if (is_act && q->memo_x == x && q->memo_type == type && q->memo_in == in && q->memo_n == n) return buf;
    if (ds4_cuda_mmq_quantize(q->e->k, type, x, in, (uint32_t)n, buf, (ds4_cuda_stream)q->st, q->err)) return NULL;
    if (is_act) q->memo_x = x, q->memo_type = type, q->memo_in = in, q->memo_n = n;
    return buf;
}

/* Y[t·ldy + r] = rows [row0, row0+n_rows) of m · X_t (X: n tokens of m.in, stride ldx). */
static int proj_rows(pfq *q, const dmat &m, uint32_t row0, uint32_t n_rows, uint32_t in, const float *X, size_t ldx,
                     int n, float *Y, size_t ldy, uint8_t *buf) {
    const uint8_t *wt = m.w + (uint64_t)row0 * (plain(m.type) ? (uint64_t)in * (m.type == DS4_TYPE_F16 ? 2 : 4)
                                                              : m.row_bytes);
    if (m.type == DS4_TYPE_F16 && in % HG_BK == 0 && ((uintptr_t)wt & 15) == 0 && ((uintptr_t)X & 15) == 0 &&
        ldx % 4 == 0 && (size_t)n * in <= q->w->split_n) {
        pf_ws *w = q->w;
        const bool lo = !q->round16;
        if (w->split_x != X || w->split_ld != ldx || w->split_in != in || w->split_rows != n || (lo && !w->split_lo)) {
            size_t threads = (size_t)n * in / 8;
            pf_split_f16<<<(unsigned)((threads + 255) / 256), 256, 0, q->st>>>(X, ldx, in, n, w->xh, lo ? w->xl : NULL);
            w->split_x = X, w->split_ld = ldx, w->split_in = in, w->split_rows = n, w->split_lo = lo;
        }
        if (w->g16) /* not --quality */
            return ds4_gemm16_f16_split(w->g16, wt, n_rows, in, w->xh, lo ? w->xl : NULL, (uint32_t)n, Y, ldy,
                                        (ds4_cuda_stream)q->st, q->err);
        dim3 grid((n_rows + HG_BN - 1) / HG_BN, (n + HG_BM - 1) / HG_BM);
        pf_gemm_f16<<<grid, 256, pf_gemm_f16_smem(), q->st>>>((const __half *)wt, n_rows, in, w->xh, w->xl, n, Y, ldy);
        return launched(q->err, "prefill f16 gemm");
    }
    if (plain(m.type)) {
        dim3 grid((n_rows + PG_TILE - 1) / PG_TILE, (n + PG_TILE - 1) / PG_TILE);
        pf_gemm_plain<<<grid, 256, 0, q->st>>>(wt, m.type == DS4_TYPE_F16, n_rows, in, X, ldx, n, Y, ldy);
        return launched(q->err, "prefill plain gemm");
    }
    if (m.type == DS4_TYPE_Q8_0 && ds4_gemm16_fits(q->w->g16, n_rows, in, (uint32_t)n)) {
        if (q->g16_x != X || q->g16_ld != ldx || q->g16_in != in || q->g16_n != n) {
            q->g16_x = NULL;
            q->g16_x16 = ds4_gemm16_act(q->w->g16, X, ldx, in, (uint32_t)n, (ds4_cuda_stream)q->st, q->err);
            if (!q->g16_x16) return -1;
            q->g16_x = X, q->g16_ld = ldx, q->g16_in = in, q->g16_n = n;
        }
        return ds4_gemm16_q8_0_x16(q->w->g16, wt, n_rows, in, q->g16_x16, in, (uint32_t)n, Y, ldy,
                                   (ds4_cuda_stream)q->st, q->err);
    }
    if (ldx != in) return ds4_fail(q->err, "cuda prefill: strided input to a quantised product");
    const void *act = quantize(q, m.type, X, in, n, buf);
    if (!act) return -1;
    return ds4_cuda_mmq(q->e->k, m.type, wt, n_rows, in, act, (uint32_t)n, Y, (uint32_t)ldy, (ds4_cuda_stream)q->st,
                        q->err);
}

static int proj(pfq *q, const dmat &m, const float *X, int n, float *Y) {
    return proj_rows(q, m, 0, m.rows, m.in, X, m.in, n, Y, m.rows, q->w->act);
}

/* ------------------------------------------------------------ sublayers */

/* The HC post of the sublayer just run (q->post_due) for tokens t0..t0+n-1. */
static int hc_post_now(pfq *q, int t0, int n) {
    uint32_t D = q->e->m->hp.n_embd;
    pf_ws *w = q->w;
    q->post_due = false;
    pf_hc_post<<<dim3((D + 255) / 256, n), 256, 0, q->st>>>(w->H + (size_t)t0 * HC_N * D, w->y + (size_t)t0 * D,
                                                            w->post + (size_t)t0 * HC_N,
                                                            w->comb + (size_t)t0 * HC_N * HC_N, D);
    pmark(q->st, "hc post");
    return launched(q->err, "prefill hc post");
}

/* HC pre into w->a (the due post first): one pf_hc_boundary launch for an
 * F16 fn, else the post, the plain mix, the split and x apart. */
static int hc_pre(pfq *q, const dmat &fn, const float *scale, const float *base, const float *norm_w, int T) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    pf_ws *w = q->w;
    uint32_t D = hp->n_embd;
    forget(q);
    if (fn.type == DS4_TYPE_F16 && D % PF_HCB_CH == 0) {
        auto k = q->post_due ? pf_hc_boundary<true> : pf_hc_boundary<false>;
        k<<<(T + PF_HCB_TOK - 1) / PF_HCB_TOK, 256, pf_hcb_smem(), q->st>>>(
            w->H, w->y, w->post, w->comb, (const __half *)fn.w, D, T, hp->rms_eps, scale, base,
            (int)hp->hc_sinkhorn_iter, hp->hc_eps, norm_w, w->a);
        q->post_due = false;
        pmark(q->st, "hc post + pre");
        return launched(q->err, "prefill hc boundary");
    }
    if (q->post_due && hc_post_now(q, 0, T)) return -1;
    pf_hc_mix<<<(T + PF_HC_TOK - 1) / PF_HC_TOK, 256, 0, q->st>>>(fn.w, fn.type == DS4_TYPE_F16, w->H, HC_N * D, T,
                                                                  hp->rms_eps, w->mix);
    pmark(q->st, "hc pre mix");
    pf_hc_split<<<(T + 7) / 8, 256, 0, q->st>>>(w->mix, scale, base, (int)hp->hc_sinkhorn_iter, hp->hc_eps, T, w->pre,
                                                w->post, w->comb);
    pf_hc_x<<<T, 512, 0, q->st>>>(w->pre, w->H, D, norm_w, hp->rms_eps, w->a);
    pmark(q->st, "hc pre split, x");
    return launched(q->err, "prefill hc pre");
}

/* The sublayer's output w->y is ready: its HC post runs with the next HC
 * pre (hc_pre) or, after the last layer, for the head's token alone
 * (output_head). */
static int hc_post(pfq *q) {
    q->post_due = true;
    return 0;
}

/* One compressor over the chunk: emissions, then the frontier after it. */
static int compressor(pfq *q, const float *kvp, const float *scp, size_t ld, const float *ape, const float *norm_w,
                      float *st_kv, float *st_sc, size_t st_n, __half *rows, int R, int coff, int hd, bool indexer,
                      int pos0, int T) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    pf_ws *w = q->w;
    cudaError_t c = cudaMemcpyAsync(w->snap_kv, st_kv, st_n * sizeof(float), cudaMemcpyDeviceToDevice, q->st);
    if (c == cudaSuccess)
        c = cudaMemcpyAsync(w->snap_sc, st_sc, st_n * sizeof(float), cudaMemcpyDeviceToDevice, q->st);
    if (c != cudaSuccess) return cuda_fail(q->err, "prefill frontier copy", c);
    pf_comp pc = {kvp, scp, ld, ape, w->snap_kv, w->snap_sc, R, coff, hd, coff * hd, pos0};
    int n_emit = (pos0 + T) / R - pos0 / R;
    if (n_emit > 0)
        pf_comp_emit<<<n_emit, hd >= 512 ? 512 : 256, hd * sizeof(float), q->st>>>(
            pc, norm_w, (int)hp->n_rot, hp->rms_eps, e->rope_comp, indexer ? 1 : 0, rows);
    pf_comp_state<<<(unsigned)((st_n + 255) / 256), 256, 0, q->st>>>(pc, T, st_kv, st_sc);
    pmark(q->st, "compressors");
    return launched(q->err, "prefill compressor");
}

static int indexer(pfq *q, ds4_cuda_session *s, uint32_t il, int pos0, int T) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    const dlayer *L = &e->L[il];
    pf_ws *w = q->w;
    int top_k = (int)hp->indexer_top_k, ihd = (int)hp->indexer_head_dim, nih = (int)hp->n_indexer_head;
    /* first token whose visible rows exceed top_k */
    int t0 = 4 * (top_k + 1) - 1 - pos0;
    if (t0 < 0) t0 = 0;
    if (t0 < T) {
        int n = T - t0;
        size_t qd = (size_t)nih * ihd;
        if (proj_rows(q, L->idx_q_b, 0, L->idx_q_b.rows, L->idx_q_b.in, w->qr + (size_t)t0 * hp->q_lora, hp->q_lora, n,
                      w->iq + (size_t)t0 * qd, qd, w->act2))
            return -1;
        /* the head weights w->iw came with the compressor projections */
        float *iq = w->iq + (size_t)t0 * qd, *iw = w->iw + (size_t)t0 * nih;
        switch (ihd) {
        case 64: pf_idx_query<2><<<n, PF_IQ_WARPS * 32, 0, q->st>>>(iq, iw, nih, e->rope_comp, pos0 + t0); break;
        case 128: pf_idx_query<4><<<n, PF_IQ_WARPS * 32, 0, q->st>>>(iq, iw, nih, e->rope_comp, pos0 + t0); break;
        case 256: pf_idx_query<8><<<n, PF_IQ_WARPS * 32, 0, q->st>>>(iq, iw, nih, e->rope_comp, pos0 + t0); break;
        default: pf_idx_query<16><<<n, PF_IQ_WARPS * 32, 0, q->st>>>(iq, iw, nih, e->rope_comp, pos0 + t0); break;
        }
        if (launched(q->err, "prefill indexer query")) return -1;
        pmark(q->st, "indexer q, w");
        for (int b = t0; b < T; b += w->score_tok) {
            int nb = T - b < w->score_tok ? T - b : w->score_tok;
            idx_scores<<<nb, IX_THREADS, idx_scores_smem(nih, ihd), q->st>>>(
                w->iq + (size_t)b * qd, w->iw + (size_t)b * nih, s->L[il].index, ihd, nih, pos0 + b,
                (const int32_t *)NULL, top_k, w->scores, w->score_ld);
            pmark(q->st, "indexer scores");
            pf_idx_topk<<<nb, 1024, 0, q->st>>>(w->scores, w->score_ld, top_k, pos0 + b, w->sel + (size_t)b * top_k,
                                                w->n_sel + b);
            if (launched(q->err, "prefill indexer scores")) return -1;
        }
        pmark(q->st, "indexer top-k");
    }
    if (t0 > 0) {
        /* tokens before t0 attend every visible row */
        int n = t0 < T ? t0 : T;
        pf_idx_topk<<<n, 32, 0, q->st>>>(w->scores, w->score_ld, top_k, pos0, w->sel, w->n_sel);
        if (launched(q->err, "prefill indexer")) return -1;
    }
    return 0;
}

static int attention(pfq *q, ds4_cuda_session *s, uint32_t il, int pos0, int T) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    const dlayer *L = &e->L[il];
    dlayer_kv *K = &s->L[il];
    pf_ws *w = q->w;
    int hd = (int)hp->head_dim, ihd = (int)hp->indexer_head_dim, n_rot = (int)hp->n_rot;
    uint32_t D = hp->n_embd;
    rope_dev rp = L->ratio ? e->rope_comp : e->rope_plain;
    q->round16 = w->g16 && L->q_a.type == DS4_TYPE_Q8_0 && L->kv.type == DS4_TYPE_Q8_0 &&
                 L->q_b.type == DS4_TYPE_Q8_0 && L->out_a.type == DS4_TYPE_Q8_0;
    if (hc_pre(q, L->hc_attn_fn, L->hc_attn_scale, L->hc_attn_base, L->attn_norm, T) || proj(q, L->q_a, w->a, T, w->qr) ||
        proj(q, L->kv, w->a, T, w->kv))
        return -1;
    int coff = L->ratio == 4 ? 2 : 1;
    if (L->ratio && (proj(q, L->comp_kv, w->a, T, w->ckv) || proj(q, L->comp_gate, w->a, T, w->csc))) return -1;
    /* ratio 4: the indexer's compressor and head weights, every token (from the same split of a) */
    if (L->ratio == 4 && (proj(q, L->idx_comp_kv, w->a, T, w->ikv) || proj(q, L->idx_comp_gate, w->a, T, w->isc) ||
                          proj(q, L->idx_proj, w->a, T, w->iw)))
        return -1;
    pmark(q->st, "q_a, kv, compressor proj");
    pf_rmsnorm<<<T, 512, 0, q->st>>>(w->qr, hp->q_lora, w->qr, hp->q_lora, L->q_a_norm, (int)hp->q_lora, hp->rms_eps);
    forget(q); /* qr normed in place */
    if (launched(q->err, "prefill q norm") ||
        proj_rows(q, L->q_b, 0, L->q_b.rows, L->q_b.in, w->qr, hp->q_lora, T, w->q, L->q_b.rows, w->act2))
        return -1;
    pmark(q->st, "q norm, q_b");
    /* q's heads are prepared (norm, RoPE) by the attention kernel as it loads them */
    pf_kv_prepare<<<T, 512, hd * sizeof(float), q->st>>>(w->kv, L->kv_a_norm, hd, n_rot, hp->rms_eps, rp, pos0, w->kvc);
    if (launched(q->err, "prefill kv prepare")) return -1;
    pmark(q->st, "kv prepare");
    if (L->ratio &&
        compressor(q, w->ckv, w->csc, (size_t)coff * hd, L->comp_ape, L->comp_norm, K->st_kv, K->st_sc, K->st_n, K->comp,
                   (int)L->ratio, coff, hd, false, pos0, T))
        return -1;
    if (L->ratio == 4 &&
        (compressor(q, w->ikv, w->isc, 2 * (size_t)ihd, L->index_ape, L->index_norm, K->ist_kv, K->ist_sc, K->ist_n,
                    K->index, 4, 2, ihd, true, pos0, T) ||
         indexer(q, s, il, pos0, T)))
        return -1;
    pf_att pa = {K->raw, w->kvc, K->comp, L->ratio == 4 ? w->sel : NULL, L->ratio == 4 ? w->n_sel : NULL,
                 (int)hp->n_swa, (int)L->ratio, pos0, (int)hp->indexer_top_k};
    /* With f16 output projections the attention writes their f16 input
     * itself (over att); beside Q8_0 products on f16 (round16) it rounds Q
     * and P to f16 once: q comes from q_b's f16 product and the output goes
     * to out_a's Q8_0 codes on f16, so the hi + lo split (kept where the
     * products keep ~22 bits: F16 weights, --quality) would buy nothing. */
    uint32_t qdim = hp->n_head * hp->head_dim, gdim = qdim / hp->n_out_group, nlow = hp->n_out_group * hp->o_lora;
    __half *att16 = w->g16 && L->out_a.type == DS4_TYPE_Q8_0 ? (__half *)w->att : NULL;
    const bool split = !q->round16;
    dim3 agrid((hp->n_head + 16 * w->att_mb - 1) / (16 * w->att_mb), T);
    const float *qv = w->q, *sinks = L->sinks;
    float *att32 = w->att;
    int n_head = (int)hp->n_head;
    float eps = hp->rms_eps;
    void *args[] = {&qv, &pa, &sinks, &n_head, &eps, &rp, &att32, &att16};
    cudaError_t c = cudaLaunchKernel(pf_att_kernel(w->att_mb, hd, split), agrid, dim3(128 * w->att_mb), args,
                                     pf_att_smem(w->att_mb, hd, (int)hp->indexer_top_k, split), q->st);
    if (c != cudaSuccess) return cuda_fail(q->err, "prefill attention", c);
    int first = T > (int)hp->n_swa ? T - (int)hp->n_swa : 0;
    pf_ring_put<<<T - first, 256, 0, q->st>>>(w->kvc, hd, first, pos0, K->raw, (int)hp->n_swa);
    if (launched(q->err, "prefill attention")) return -1;
    pmark(q->st, "attention");
    /* grouped output projection: group g's heads → rows g·o_lora.. of out_a */
    if (att16) {
        for (uint32_t g = 0; g < hp->n_out_group; g++)
            if (ds4_gemm16_q8_0_x16(w->g16, L->out_a.w + (uint64_t)g * hp->o_lora * L->out_a.row_bytes, hp->o_lora,
                                    gdim, att16 + g * gdim, qdim, (uint32_t)T, w->low + g * hp->o_lora, nlow,
                                    (ds4_cuda_stream)q->st, q->err))
                return -1;
    } else if (plain(L->out_a.type)) { /* a group at a time */
        for (uint32_t g = 0; g < hp->n_out_group; g++)
            if (proj_rows(q, L->out_a, g * hp->o_lora, hp->o_lora, gdim, w->att + g * gdim, qdim, T,
                          w->low + g * hp->o_lora, nlow, w->act2))
                return -1;
    } else {
        const void *act = quantize(q, L->out_a.type, w->att, qdim, T, w->act2);
        if (!act || ds4_cuda_mmq_grouped(e->k, L->out_a.type, L->out_a.w, nlow, gdim, hp->n_out_group, act, (uint32_t)T,
                                         w->low, nlow, (ds4_cuda_stream)q->st, q->err))
            return -1;
    }
    if (proj_rows(q, L->out_b, 0, L->out_b.rows, L->out_b.in, w->low, nlow, T, w->y, D, w->act2)) return -1;
    pmark(q->st, "out_a, out_b");
    return hc_post(q);
}

static int ffn(pfq *q, uint32_t il, int T) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    const dlayer *L = &e->L[il];
    pf_ws *w = q->w;
    uint32_t D = hp->n_embd, ff = hp->n_ff_exp, nu = hp->n_expert_used, ne = hp->n_expert;
    q->round16 = w->g16 && L->gate_sh.type == DS4_TYPE_Q8_0 && L->up_sh.type == DS4_TYPE_Q8_0;
    if (hc_pre(q, L->hc_ffn_fn, L->hc_ffn_scale, L->hc_ffn_base, L->ffn_norm, T) || proj(q, L->gate_inp, w->a, T, w->router))
        return -1;
    pf_route<<<T, 256, 2 * ne * sizeof(float), q->st>>>(w->router, L->probs_bias, L->tid2eid, (int)ne, (int)nu,
                                                   hp->expert_weight_scale, hp->expert_weights_norm, w->tok, w->ids,
                                                   w->ew);
    if (launched(q->err, "prefill router")) return -1;
    pmark(q->st, "router");
    /* shared expert → sh */
    bool sh_g16 = w->g16 && L->gate_sh.type == DS4_TYPE_Q8_0 && L->up_sh.type == DS4_TYPE_Q8_0 &&
                  L->down_sh.type == DS4_TYPE_Q8_0;
    if (plain(L->gate_sh.type) || sh_g16) { /* three products and the SwiGLU between */
        if (proj(q, L->gate_sh, w->a, T, w->sg) || proj(q, L->up_sh, w->a, T, w->su)) return -1;
        size_t n = (size_t)T * ff;
        if (sh_g16) { /* the SwiGLU written as the down product's f16 input */
            pf_swiglu_q8_0_f16<<<(unsigned)((n / 8 + 255) / 256), 256, 0, q->st>>>(w->sg, w->su, n, L->clamp,
                                                                                     w->mid16);
            if (launched(q->err, "prefill shared swiglu") ||
                ds4_gemm16_q8_0_x16(w->g16, L->down_sh.w, D, ff, w->mid16, ff, (uint32_t)T, w->sh, D,
                                    (ds4_cuda_stream)q->st, q->err))
                return -1;
        } else {
            pf_swiglu_rows<<<(unsigned)((n + 255) / 256), 256, 0, q->st>>>(w->sg, w->su, n, L->clamp, w->smid);
            if (launched(q->err, "prefill shared swiglu") ||
                proj_rows(q, L->down_sh, 0, L->down_sh.rows, L->down_sh.in, w->smid, ff, T, w->sh, D, w->act2))
                return -1;
        }
    } else {
        const void *act = quantize(q, L->gate_sh.type, w->a, D, T, w->act);
        /* ids of the shared expert: token t's slot 0 of expert 0 (w->n_sel
         * is free here; zero-filled ids come from the memset) */
        if (!act) return -1;
        cudaError_t c = cudaMemsetAsync(w->n_sel, 0, (size_t)T * sizeof(int32_t), q->st);
        if (c != cudaSuccess) return cuda_fail(q->err, "prefill shared ids", c);
        pf_fill_f32<<<(T + 255) / 256, 256, 0, q->st>>>(w->smid, T, 1.0f);
        if (launched(q->err, "prefill shared weights") ||
            ds4_cuda_mmq_moe(e->k, L->gate_sh.type, L->gate_sh.w, L->up_sh.w, L->down_sh.type, L->down_sh.w, D, ff, 1, 1,
                             L->clamp, w->n_sel, w->smid, (uint32_t)T, act, NULL, w->sh, w->moe_ws, w->moe_ws_bytes,
                             (ds4_cuda_stream)q->st, q->err))
            return -1;
    }
    pmark(q->st, "shared expert");
    /* routed experts + sh → y */
    if (plain(L->gate_exps.type)) {
        size_t items = (size_t)T * nu * ff;
        pf_moe_plain_gate_up<<<(unsigned)((items * 32 + 255) / 256), 256, 0, q->st>>>(
            L->gate_exps.w, L->up_exps.w, L->gate_exps.type == DS4_TYPE_F16, D, ff, ne, w->ids, w->ew, nu, T, L->clamp,
            w->a, w->mid);
        size_t outs = (size_t)T * D;
        pf_moe_plain_down<<<(unsigned)((outs * 32 + 255) / 256), 256, 0, q->st>>>(
            L->down_exps.w, L->down_exps.type == DS4_TYPE_F16, ff, D, ne, w->ids, nu, T, w->mid, w->sh, w->y);
        if (launched(q->err, "prefill plain experts")) return -1;
    } else {
        const void *act = quantize(q, L->gate_exps.type, w->a, D, T, w->act);
        if (!act || ds4_cuda_mmq_moe(e->k, L->gate_exps.type, L->gate_exps.w, L->up_exps.w, L->down_exps.type,
                                     L->down_exps.w, D, ff, ne, nu, L->clamp, w->ids, w->ew, (uint32_t)T, act, w->sh,
                                     w->y, w->moe_ws, w->moe_ws_bytes, (ds4_cuda_stream)q->st, q->err))
            return -1;
    }
    pmark(q->st, "routed experts");
    return hc_post(q);
}

/* The output head for token t of the chunk. */
static int output_head(pfq *q, int t) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    pf_ws *w = q->w;
    uint32_t D = hp->n_embd;
    forget(q);
    q->round16 = false; /* one token: its F16 products keep ~22 bits */
    if (q->post_due && hc_post_now(q, t, 1)) return -1;
    const float *Ht = w->H + (size_t)t * HC_N * D;
    pf_rmsnorm<<<1, 1024, 0, q->st>>>(Ht, 0, w->hc_flat, 0, NULL, (int)(HC_N * D), hp->rms_eps);
    if (launched(q->err, "prefill head norm") || proj(q, e->output_hc_fn, w->hc_flat, 1, w->hmix)) return -1;
    pf_out_collapse<<<1, 1024, 0, q->st>>>(w->hmix, e->out_hc_scale, e->out_hc_base, hp->hc_eps, Ht, D, e->out_norm,
                                           hp->rms_eps, w->ehc);
    if (launched(q->err, "prefill head collapse")) return -1;
    return proj(q, e->output, w->ehc, 1, w->logits);
}

/* With an MTP block: the final HC streams of the chunk's last n_swa
 * tokens (the last sublayer's post for them first) into the session's ring
 * of them, row pos mod n_swa (as the decode step's k_hring_put). */
static int keep_streams(pfq *q, ds4_cuda_session *s, int pos0, int T) {
    const ds4_hparams *hp = &q->e->m->hp;
    const int W = (int)hp->n_swa, k = T < W ? T : W, t0 = T - k;
    const size_t HD = (size_t)HC_N * hp->n_embd;
    if (q->post_due && hc_post_now(q, t0, k)) return -1;
    q->post_due = false; /* the head's token is among them */
    const int slot = (pos0 + t0) % W, n1 = k < W - slot ? k : W - slot;
    cudaError_t c = cudaMemcpyAsync(s->hring + slot * HD, q->w->H + t0 * HD, n1 * HD * sizeof(float),
                                    cudaMemcpyDeviceToDevice, q->st);
    if (c == cudaSuccess && n1 < k)
        c = cudaMemcpyAsync(s->hring, q->w->H + (t0 + n1) * HD, (k - n1) * HD * sizeof(float), cudaMemcpyDeviceToDevice,
                            q->st);
    return c == cudaSuccess ? 0 : cuda_fail(q->err, "prefill streams kept", c);
}

static int prefill_chunk(ds4_cuda_session *s, const int32_t *tokens, int T, int pos0, ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    const ds4_hparams *hp = &e->m->hp;
    pf_ws *w = e->prefill;
    pfq q = {e, w, e->stream, err, NULL, 0, 0, 0};
    forget(&q);
    cudaError_t c = cudaMemcpyAsync(w->tok, tokens, (size_t)T * sizeof(int32_t), cudaMemcpyHostToDevice, q.st);
    if (c != cudaSuccess) return cuda_fail(err, "prefill tokens", c);
    pf_embed<<<dim3((hp->n_embd + 255) / 256, T), 256, 0, q.st>>>(e->token_embd.w, e->token_embd.type == DS4_TYPE_F16,
                                                                  hp->n_embd, w->tok, w->H);
    if (launched(err, "prefill embedding")) return -1;
    pmark(q.st, "embedding");
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if (attention(&q, s, il, pos0, T) || ffn(&q, il, T)) return -1;
    if (s->hring && keep_streams(&q, s, pos0, T)) return -1;
    if (output_head(&q, T - 1)) return -1;
    pmark(q.st, "output head");
    return 0;
}

/* The kernels' shapes and shared memory for this model on this device;
 * the attention's heads a block (w->att_mb) from the device's limit (both
 * of its variants, Q and P split or not, the same). */
static int pf_kernels_setup(pf_ws *w, const ds4_hparams *hp, ds4_err *err) {
    uint32_t ihd = hp->indexer_head_dim;
    if (!pf_att_kernel(1, (int)hp->head_dim, true) || hp->n_rot > hp->head_dim || hp->n_indexer_head > 64 ||
        (ihd && (ihd < 64 || ihd > 512 || (ihd & (ihd - 1)))) || hp->n_embd > PF_HC_MAX_D || hp->n_embd % 4)
        return ds4_fail(err, "cuda prefill: heads of %u (indexer %u of %u) or a width of %u are beyond the kernels' shapes",
                        hp->head_dim, hp->n_indexer_head, hp->indexer_head_dim, hp->n_embd);
    /* attention: 32 heads a block where the device's shared memory allows, else 16 */
    int dev = 0, optin = 0;
    cudaError_t c = cudaGetDevice(&dev);
    if (c == cudaSuccess) c = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (c != cudaSuccess) return cuda_fail(err, "prefill device attributes", c);
    int hd = (int)hp->head_dim;
    int top_k = (int)hp->indexer_top_k;
    w->att_mb = hp->n_head > 16 && pf_att_smem(2, hd, top_k, true) <= (size_t)optin ? 2 : 1;
    size_t smem = pf_att_smem(w->att_mb, hd, top_k, true); /* the split variant's: the larger */
    if (smem > (size_t)optin || pf_gemm_f16_smem() > (size_t)optin || pf_hcb_smem() > (size_t)optin ||
        idx_scores_smem((int)hp->n_indexer_head, (int)hp->indexer_head_dim) > (size_t)optin)
        return ds4_fail(err,
                        "cuda prefill: the kernels need %zu (attention), %zu (f16 products), %zu (HC) and %zu "
                        "(indexer) bytes of shared memory a block, the device allows %d",
                        smem, pf_gemm_f16_smem(), pf_hcb_smem(),
                        idx_scores_smem((int)hp->n_indexer_head, (int)hp->indexer_head_dim), optin);
    for (int split = 0; split < 2 && c == cudaSuccess; split++) {
        const void *att = pf_att_kernel(w->att_mb, hd, split);
        c = cudaFuncSetAttribute(att, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (c == cudaSuccess) c = cudaFuncSetAttribute(att, cudaFuncAttributePreferredSharedMemoryCarveout, 100);
    }
    if (c == cudaSuccess)
        c = cudaFuncSetAttribute(pf_gemm_f16, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pf_gemm_f16_smem());
    if (c == cudaSuccess)
        c = cudaFuncSetAttribute(pf_hc_boundary<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pf_hcb_smem());
    if (c == cudaSuccess)
        c = cudaFuncSetAttribute(pf_hc_boundary<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)pf_hcb_smem());
    if (c == cudaSuccess)
        c = cudaFuncSetAttribute(idx_scores, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)idx_scores_smem((int)hp->n_indexer_head, (int)hp->indexer_head_dim));
    if (c != cudaSuccess) return cuda_fail(err, "prefill kernel attributes", c);
    return 0;
}

extern "C" int ds4_cuda_session_prefill(ds4_cuda_session *s, const int32_t *tokens, int n, int pos0, float *logits,
                                        ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    const ds4_hparams *hp = &e->m->hp;
    if (n <= 0) return ds4_fail(err, "cuda prefill: %d tokens", n);
    if (pos0 < 0 || pos0 + n > e->ctx)
        return ds4_fail(err, "cuda prefill: positions %d..%d outside the context of %d", pos0, pos0 + n - 1, e->ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= hp->n_vocab)
            return ds4_fail(err, "cuda: token %d outside the vocabulary", tokens[i]);
    ds4_cuda_session_logits_replaced(s); /* by the prefill's, below */
    if (e->exact) { /* exact mode: the decode step's f32 numerics, token by token */
        for (int i = 0; i < n; i++)
            if (ds4_cuda_session_step(s, tokens[i], pos0 + i, logits, err)) return -1;
        return 0;
    }
    int want = n < PF_MAX_CHUNK ? n : PF_MAX_CHUNK;
    if (e->prefill_cap_max && want > e->prefill_cap_max) want = e->prefill_cap_max;
    if (!e->prefill || e->prefill->cap < want) {
        ds4_cuda_prefill_free(e);
        if (ds4_cuda_mmq_init(e->k, err)) return -1;
        /* The workspace leaves PREFILL_RESERVE free (the decode step's graph
         * is instantiated later): where it does not, the same chunk without
         * the f16 products (cuBLAS and their buffers: ~0.2 GiB), then chunks
         * halved, each first with them again. */
        size_t free0 = 0, total_b = 0;
        cudaMemGetInfo(&free0, &total_b);
        for (bool f16 = !e->quality;;) {
            size_t free_b = 0;
            int r = pf_ws_new(s, want, f16, &e->prefill, err);
            if (r == 0 && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess && free_b >= PREFILL_RESERVE) {
                fprintf(stderr, "cuda: prefill workspace for %d-token chunks%s: %.2f GiB\n", want,
                        e->prefill->g16 ? "" : " (integer products)", (double)(free0 - free_b) / 1073741824.0);
                break;
            }
            cudaGetLastError(); /* a failed allocation is not sticky */
            ds4_cuda_prefill_free(e);
            if (f16) {
                f16 = false;
                continue;
            }
            if (want <= 16)
                return r ? -1 : ds4_fail(err, "cuda prefill: no room for a workspace of %d tokens beside %.2f GiB kept free",
                                         want, PREFILL_RESERVE / 1073741824.0);
            want /= 2;
            e->prefill_cap_max = want;
            f16 = !e->quality;
        }
        if (pf_kernels_setup(e->prefill, hp, err)) {
            ds4_cuda_prefill_free(e);
            return -1;
        }
    }
    const char *pe = getenv("DS4_CUDA_PREFILL_PROFILE");
    g_prof.on = pe && *pe && strcmp(pe, "0") != 0;
    g_prof.n = 0;
    pmark(e->stream, "start");
    for (int done = 0; done < n;) {
        int T = n - done < e->prefill->cap ? n - done : e->prefill->cap;
        if (prefill_chunk(s, tokens + done, T, pos0 + done, err)) return -1;
        done += T;
    }
    cudaError_t c = cudaMemcpyAsync(s->h_logits, e->prefill->logits, hp->n_vocab * sizeof(float), cudaMemcpyDeviceToHost,
                                    e->stream);
    if (c == cudaSuccess) c = cudaStreamSynchronize(e->stream);
    if (c != cudaSuccess) return cuda_fail(err, "prefill", c);
    pprint(n);
    if (logits != s->h_logits) memcpy(logits, s->h_logits, hp->n_vocab * sizeof(float));
    return 0;
}
