/* engine_impl.h — the engine's private structures, shared by its files.
 *
 * engine.c     open/close, sessions, the chunked eval driver
 * forward.c    one chunk of tokens through all layers + the output head
 * attention.c  the attention sublayer (Q/KV, raw window, attention, output)
 * compressor.c KV compressor frontiers and the lightning indexer
 * moe.c        the FFN sublayer (router, routed + shared experts)
 * mtp.c        the MTP draft block and greedy speculative decoding
 *
 * KV state per layer (model-spec §7.1) is stored compactly: the raw window as
 * a ring of n_swa rows (position p at row p mod n_swa), compressed rows and
 * indexer rows appended in order, and the compressor frontiers in f32. Rows
 * are f16 in the official numerics (they are f16-rounded there anyway, so
 * nothing is lost) and f32 in exact mode. Tests include this header to
 * compare whole states. */
#ifndef DS4_ENGINE_IMPL_H
#define DS4_ENGINE_IMPL_H

#include <pthread.h>

#include "../backend/cpu/cpu_matmul.h"
#include "engine.h"
#include "numerics.h"

/* A growable-in-place array of fixed-width rows, f16 or f32. */
typedef struct kv_rows {
    void *data;
    bool f16;
    uint32_t width;
    uint32_t cap;
} kv_rows;

void kv_rows_put(kv_rows *r, uint32_t i, const float *src);
void kv_rows_get(const kv_rows *r, uint32_t i, float *dst);

/* Compressor frontier (model-spec §5.6): coff·R state rows of W = coff·hd. */
typedef struct comp_state {
    uint32_t ratio, coff, hd, width;
    float *kv, *score; /* [coff·R][W] each */
} comp_state;

/* The state a chunk's last token changed in one layer, recorded before it
 * did (the speculative verify's draft, dropped when rejected): each
 * compressor frontier with its row count. (The raw ring row it overwrote
 * held the position one window back, which no later token attends and the
 * next token rewrites.) */
typedef struct comp_mark {
    float *kv, *score;
    uint32_t n_rows;
} comp_mark;
typedef struct layer_mark {
    comp_mark comp, index;
} layer_mark;

typedef struct layer_kv {
    kv_rows raw;         /* n_swa rows of head_dim */
    kv_rows comp;        /* compressed attention rows */
    uint32_t n_comp;
    comp_state comp_st;
    kv_rows index_comp;  /* indexer rows (ratio 4) */
    uint32_t n_index_comp;
    comp_state index_st;
} layer_kv;

/* A session's speculative-decoding state (mtp.c, model-spec §8), present
 * when the engine has an MTP block. */
typedef struct spec_state {
    layer_kv mtp_kv;       /* the MTP block's raw ring */
    int mtp_lo, mtp_next;  /* it holds MTP positions [mtp_lo, mtp_next) */
    float *h;              /* [n_swa][HC·D] final streams, position q at row q mod n_swa */
    int h_n;               /* the last h_n positions' rows are valid (0..n_swa) */
    float *logits;         /* [2][n_vocab] the verify's */
    float *mtp_logits;     /* [n_vocab] the draft's */
    int32_t *mtp_tokens;   /* [ws.cap] the MTP's input tokens */
    layer_mark *marks;     /* [n_layer] */
    bool marking;          /* the forward pass records marks */
    bool can_drop;         /* the last eval accepted a draft and its marks are kept */
    void *arena;
} spec_state;

struct ds4_session {
    ds4_engine *e;
    int n_tokens;
    int32_t *tokens;   /* ctx */
    float *logits;     /* n_vocab; with CUDA the session's pinned buffer (ds4_cuda_session_logits),
                        * filled from the device when asked for (session_logits_ready) */
    layer_kv *layers;  /* n_layer */
    void *cuda;        /* ds4_cuda_session when the engine runs on CUDA, else NULL */
    spec_state *spec;  /* with an MTP block, else NULL */
};

/* One transformer block as its sublayers see it: a main layer
 * (layer_block) or the MTP block (mtp.c, model-spec §8). */
typedef struct layer_consts layer_consts;
typedef struct block_ref {
    const ds4_layer *L;
    const layer_consts *lc;
    layer_kv *kv;
    const rope_params *rope; /* YaRN'd for compressed layers */
    float swiglu_clamp;
    int raw_lo;              /* first position the raw ring holds (0; later for the MTP block) */
    layer_mark *mark;        /* non-NULL: record the chunk's last token's changes here */
} block_ref;

/* Per-worker scratch for attention and the indexer. */
typedef struct worker_scratch {
    float *rows;     /* gathered KV rows, (n_swa + top_k or comp cap) × head_dim */
    float *scores;   /* per row scores */
    int *heap;       /* top-k heap (indexer_top_k) */
    float *tmp;      /* max(head_dim, n_expert)-sized temporary */
} worker_scratch;

/* Activations of one chunk of tokens; sized once for prefill_chunk tokens. */
typedef struct chunk_ws {
    int cap;              /* tokens */
    float *H;             /* [n][hc·D] residual streams */
    float *hc_flat;       /* [n][hc·D] normed streams for the hc fn */
    float *mix;           /* [n][2hc+hc²] */
    float *post, *comb;   /* [n][hc], [n][hc²] */
    float *x;             /* [n][D] sublayer input (weighted stream sum) */
    float *a;             /* [n][D] normed input */
    float *qr;            /* [n][q_lora] (normed in place: qn) */
    float *q;             /* [n][n_head·hd] */
    float *kv;            /* [n][hd] */
    float *ckv, *csc;     /* [n][2·hd] compressor kv/score */
    float *ikv, *isc;     /* [n][2·ihd] indexer compressor */
    float *iq;            /* [n][n_ih·ihd] */
    float *iw;            /* [n][n_ih] */
    int *n_sel;           /* [n] selected compressed rows (-1 = all visible) */
    int *sel;             /* [n][top_k] */
    float *iscores;       /* indexer scores of one token over all rows */
    float *att;           /* [n][n_head·hd] attention output */
    float *grows;         /* one token's attended rows (few-token path) */
    float *low;           /* [n][n_group·o_lora] */
    float *y;             /* [n][D] sublayer output */
    float *router;        /* [n][n_expert] logits → probs */
    int *eid;             /* [n][used] */
    float *ew;            /* [n][used] */
    float *sg, *su;       /* [n][ff] shared gate/up → mid */
    float *sh;            /* [n][D] shared out */
    int *ecount;          /* [n_expert + 1] bucket starts */
    int *efill;           /* [n_expert] bucket fill cursors */
    int *gtok, *gslot;    /* [n·used] (token, slot) pairs bucketed by expert */
    int *pair_of;         /* [n·used] (token, slot) → its pair index */
    float *gg, *gu;       /* [n·used][ff] per pair expert gate/up → mid */
    float *gd;            /* [n·used][D] per pair expert down */
    cpu_mm *mm;           /* [2·n_expert] products of one batched call */
    float *ehc;           /* [n][D] output-head stream mix */
    worker_scratch *wk;   /* per worker */
} chunk_ws;

/* Small per-layer tensors as f32 copies (the file may store them as F32 or
 * F16), made once at open so the forward pass never converts them. */
struct layer_consts {
    float *hc_attn_scale, *hc_attn_base, *hc_ffn_scale, *hc_ffn_base;
    float *attn_norm, *q_a_norm, *kv_a_norm, *sinks, *ffn_norm;
    float *comp_ape, *comp_norm;          /* ape: [ratio][coff·hd] */
    float *index_ape, *index_norm;        /* ape: [4][2·ihd] */
    float *probs_bias;                    /* NULL if absent */
};

struct ds4_engine {
    ds4_model model;
    bool model_open;
    ds4_tokenizer *tok;
    int ctx;
    int chunk;
    int cuda_chunk;    /* tokens per batched CUDA prefill call */
    bool exact;
    cpu_ctx cpu;
    chunk_ws ws;
    uint8_t *ws_arena;
    rope_params rope_plain, rope_comp;
    layer_consts lc[DS4_MAX_LAYERS];
    float *out_hc_scale, *out_hc_base, *out_norm;
    float *consts_arena;
    uint32_t comp_cap[DS4_MAX_LAYERS]; /* compressed rows per layer at ctx */
    bool has_mtp;
    ds4_mtp_model mtp;
    layer_consts mtp_lc;
    float *mtp_enorm, *mtp_hnorm, *mtp_norm, *mtp_hc_scale, *mtp_hc_base;
    pthread_mutex_t eval_mu;
    void *cuda;        /* ds4_cuda_engine (DS4_CUDA builds, cuda backend), else NULL */
};

/* s->logits current (the CUDA step leaves them on the device until asked
 * for): 0, or -1 with err where the device failed. */
int session_logits_ready(const ds4_session *s, ds4_err *err);

/* What every eval checks before it changes anything (engine.c): a count
 * in 0..the context's room, tokens in the vocabulary; 0 or -1 with err. */
int eval_check(const ds4_session *s, const int32_t *tokens, int n, ds4_err *err);

/* One chunk [pos0, pos0+n) of tokens through every layer (forward.c). If
 * all_logits is non-NULL every position's logits go there ([n][n_vocab]),
 * else the last token's go to s->logits. */
void forward_chunk(ds4_session *s, const int32_t *tokens, int n, float *all_logits);

/* The output head's tensors (model-spec §5.9): the model's, or the MTP
 * block's collapse and norm before the model's vocabulary projection. */
typedef struct head_ref {
    const ds4_tensor *hc_fn;
    const float *hc_scale, *hc_base, *norm;
} head_ref;

/* Main layer il of session s as a block. */
block_ref layer_block(ds4_session *s, int il);
/* Block b for tokens [pos0, pos0+n) of the chunk: ws.H in, ws.H out. */
void block_forward(ds4_session *s, const block_ref *b, const int32_t *tokens, int pos0, int n);
/* Logits of chunk tokens [t0, t0+n) from ws.H through head h into logits. */
void output_head(ds4_engine *e, const head_ref *h, int t0, int n, float *logits);

/* Sublayers (attention.c, moe.c, compressor.c); pos0 = first position. */
void attention_sublayer(ds4_session *s, const block_ref *b, int pos0, int n);
void ffn_sublayer(ds4_session *s, const block_ref *b, const int32_t *tokens, int n);
void compressor_run(ds4_engine *e, comp_state *st, kv_rows *rows, uint32_t *n_rows,
                    const float *kv, const float *sc, size_t ld, int pos0, int n,
                    const float *ape, const float *norm_w, bool indexer, comp_mark *mark);
void indexer_select(ds4_session *s, const block_ref *b, int pos0, int n);

/* Speculative state (mtp.c): allocated with the session when the engine
 * has an MTP block; emptied by ds4_session_reset; after each CPU forward
 * chunk it keeps the last n_swa positions' final streams. */
int spec_new(ds4_session *s);
void spec_free(ds4_session *s);
void spec_reset(ds4_session *s);
void spec_after_forward(ds4_session *s, int n);

/* HC pre for the chunk: from ws.H with hc_{attn,ffn}_* tensors to ws.x/post/comb. */
void hc_pre_chunk(ds4_engine *e, const ds4_tensor *fn, const float *scale, const float *base,
                  int n);
/* H ← post·y + combᵀ·H for the chunk (ws.y, ws.post, ws.comb). */
void hc_post_chunk(ds4_engine *e, int n);
/* ws.a[t] = RMSNorm(ws.x[t], w) for the chunk. */
void norm_chunk(ds4_engine *e, const float *in, size_t ld_in, float *out, size_t ld_out,
                const float *w, int width, int n);

#endif
