/* cuda_engine_impl.cuh — the CUDA backend's internal data structures,
 * shared by its translation units (cuda_engine.cu: upload, sessions and the
 * decode step; others that enqueue work on the same weights and state):
 * the device copy of each weight matrix, the per-layer weight table, the
 * step workspace, the engine and the session with its device KV state.
 * Internal to src/backend/cuda; the C API is cuda_engine.h. */
#ifndef DS4_CUDA_ENGINE_IMPL_CUH
#define DS4_CUDA_ENGINE_IMPL_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda_engine.h"
#include "cuda_kernels.h"

extern "C" {
#include "../../model/model.h"
}

enum { HC_N = 4 };

/* The inputs of one step, written to device memory before each replay
 * (an ordered copy before the graph launch; no kernel writes them), so the
 * step's kernels read them before their programmatic wait (cuda_pdl.cuh). */
struct step_io {
    int32_t token;
    int32_t pos;
    int32_t idx_active; /* (pos+1)/4 > indexer top_k: the indexer picks rows */
    uint32_t serial;    /* distinct every step (never 0): ds4_cuda_ids_src's stamps */
    int32_t win_lo;     /* the attention's window starts at this position or later (the MTP
                           block's ring holds only the positions it ran; 0 elsewhere) */
};

/* RoPE parameters of one layer kind (numerics.h rope_params, by value). */
struct rope_dev {
    int n_rot;
    float theta_scale;
    int yarn;
    float freq_scale, corr_low, corr_high;
};

/* The step's RoPE tables, filled by k_embed (n_rot/2 (cos, sin) pairs
 * each): the plain and the compressed kind at the token's position, and
 * the compressed kind at pos + 1 - R for up to ROPE_WINS compressor
 * ratios R (the start of a window that closes at this step; a compressor
 * of another ratio computes its angles). */
enum { ROPE_WINS = 2 };
struct rope_tabs {
    rope_dev plain, comp;
    float2 *cs0, *cs1;
    float2 *win[ROPE_WINS];
    int win_ratio[ROPE_WINS];
    int n_win;
};

/* A weight matrix in device memory: rows of `in` elements of `type`. */
struct dmat {
    const uint8_t *w;
    uint32_t type, in, rows;
    uint64_t row_bytes;
};

struct dlayer {
    uint32_t ratio;
    dmat hc_attn_fn, hc_ffn_fn, q_a, q_b, kv, out_a, out_b;
    dmat comp_kv, comp_gate, idx_q_b, idx_proj, idx_comp_kv, idx_comp_gate;
    dmat gate_inp, gate_exps, up_exps, down_exps, gate_sh, up_sh, down_sh;
    const int32_t *tid2eid;
    const float *hc_attn_scale, *hc_attn_base, *hc_ffn_scale, *hc_ffn_base;
    const float *attn_norm, *q_a_norm, *kv_a_norm, *sinks, *ffn_norm;
    const float *comp_ape, *comp_norm, *index_ape, *index_norm, *probs_bias;
    float clamp;
};

/* Device workspace of one token of a step (shared by the engine's
 * sessions; the verify step uses DS4_CUDA_VERIFY_TOKENS of them). The
 * buffers that feed or take products and the routed experts (wpair) hold
 * the tokens' copies side by side, as the kernels' several-column forms
 * take them; the rest are each token's own. */
struct dwork {
    step_io *io;
    float *H, *hx, *mix, *post, *comb, *x, *a, *qr, *q, *kv, *ckv, *csc, *ikv, *isc, *iq, *iw;
    float *H2; /* k_hc's second buffer of the HC streams: call i reads one and writes the other; H after an even count */
    float *iscores, *att, *low, *y, *router, *ew, *mid, *smid, *sh, *ehc, *logits;
    float *qraw;     /* q_a's output before its RMSNorm (qr: after) */
    float *shgu;     /* the shared expert's gate, then up products (with the router's) */
    float *att_part; /* attention splits' weighted sums [head][split][head_dim] */
    float2 *att_ml;  /* and their (max, sum) [head][split] */
    struct pick_cand *pick_part; /* k_pick2's blocks' two each */
    unsigned *pick_count;        /* k_pick2's tickets (only grows) */
    double *hc_part;    /* k_hc's grid form: its blocks' sums (HC_PART) */
    unsigned *hc_count; /* k_hc's grid form: its barriers' arrivals (only grows) */
    struct topk_grid_state *tkg; /* the grid top-k's state and per-warp counts (cuda_topk_grid.cuh) */
    int *tk_wa, *tk_wt;
    int pdl_failed;  /* capturing with programmatic launches failed once */
    int32_t *ids, *zero_id, *sel, *n_sel;
    uint32_t *route_stamp; /* per layer (and the MTP block): the step serial once k_route has written ids and ew */
    float *one_w;
    uint8_t *actA, *actB;
    uint8_t *aq8;  /* ws.a as Q8_0, by the k_hc that writes it (hc_writes_q8) */
    uint8_t *attq; /* the attention's output as out_a's Q8_0 input (k_attention_combine) */
    uint8_t *lowq; /* low quantised for out_b */
    float *mtp_hn, *mtp_en; /* with an MTP block: its input's normed streams and embedding (k_mtp_norms) */
    rope_tabs rope; /* the step's RoPE cosines and sines (k_embed) */
};

/* Device memory kept free beside the weights and sessions (the fit check),
 * and beside the prefill workspace (the decode step's graph, instantiated
 * after a prefill, and the driver need it). */
#define DEVICE_RESERVE ((size_t)256 << 20)
#define PREFILL_RESERVE ((size_t)1024 << 20)

struct ds4_cuda_engine {
    const ds4_model *m;
    const ds4_synth_fill *fills; /* synthetic tensors generated on the device (during open only) */
    uint32_t n_fills;
    uint64_t work_bytes; /* the step workspace (dalloc) */
    ds4_cuda_kernels *k;
    cudaStream_t stream;
    int ctx;
    bool exact; /* plain f32 numerics (cuda_exact.cuh products, f32 rows) */
    bool quality; /* --quality: the prefill's Q8_0 products on the integer path (cuda_mmq.h), not f16 */
    uint8_t *arena;
    uint64_t arena_used, arena_size;
    dlayer L[DS4_MAX_LAYERS];
    uint32_t comp_cap[DS4_MAX_LAYERS];
    dmat token_embd, output, output_hc_fn;
    /* The MTP block (model-spec §8), when given: its block is layer
     * n_layer of L (mtp_layer), its raw ring the sessions' L[n_layer];
     * mtp_hc_mix is its head's collapse as out_hc_mix is the model's. */
    const ds4_mtp_model *mtp;
    dmat mtp_e_proj, mtp_h_proj, mtp_hc_mix;
    const float *mtp_enorm, *mtp_hnorm, *mtp_norm, *mtp_hc_scale, *mtp_hc_base;
    float *mtp_logits;      /* the draft's logits (the step's stay in w[].logits) */
    /* the verify step's (and the MTP's two-position step's) later token's
     * raw row of each layer and the MTP block (kv_prepare's side):
     * k_side_rows puts them into the rings */
    uint8_t *side;
    uint32_t side_row_bytes;
    dmat out_hc_mix; /* output_hc_fn's HC_N rows and HC_MIX - HC_N of zeros: k_hc's fn for the head */
    const float *out_hc_scale, *out_hc_base, *out_norm;
    rope_dev rope_plain, rope_comp;
    int att_hg, att_splits; /* attention: heads per block, blocks per head group (k_attention_split) */
    bool att_tc;            /* k_attention_split_tc (tensor cores) instead of k_attention_split */
    int topk_grid;          /* blocks of the indexer's grid top-k, 0: the one-block k_idx_topk alone */
    bool topk_cluster;      /* those blocks as one cluster (k_topk_grid<true>) */
    bool hc_cluster;        /* k_hc's blocks as one cluster (k_hc<true>) */
    bool hc_tokens;         /* the verify step's tokens' k_hc in one launch (hc_form) */
    struct ds4_cuda_session *lazy; /* whose logits are only in w[cur].logits yet (ds4_cuda_session_fetch_logits) */
    size_t hc_smem;         /* k_hc's unused dynamic shared memory: an SM to itself */
    size_t sm_room;         /* the shared memory one block may hold on an SM (alone_smem) */
    int topk_one_rows;      /* k_idx_topk runs where at most this many rows are visible (0: not in the step) */
    int topk_threads;       /* k_idx_topk's block */
    uint32_t serial;        /* the last step's step_io.serial */
    uint32_t idx_slots; /* idx_scores blocks the device holds at once (official mode) */
    dwork w[DS4_CUDA_VERIFY_TOKENS]; /* w[0]: the one-token step's */
    /* every workspace buffer: token t's copy of wbufs[i].base[0] + k is
     * base[t] + k (tok_ptr) */
    struct wbuf { uint8_t *base[DS4_CUDA_VERIFY_TOKENS]; size_t bytes; } wbufs[64];
    int n_wbufs;
    /* DS4_CUDA_PROFILE: events after each operation of an uncaptured step */
    bool prof;
#ifdef DS4_CUDA_TIMELINE
    struct tl_buf *tl; /* cuda_timeline.cuh: the step's stamps */
    int tl_step, tl_report; /* steps run; the step to report (DS4_CUDA_TIMELINE=N) */
    int tl_vstep;           /* verify steps run (the N-th is reported too) */
    /* events around each step's parts: before the io copy, after the
     * graph, after the logits copy (the previous step's in [3..5]) */
    cudaEvent_t tl_ev[6];
    double tl_host_ms, tl_graph_ms, tl_copy_ms;
    int tl_n_ev;
#endif
    cudaEvent_t ev[1024];
    const char *ev_label[1024];
    int n_ev, n_prof_steps;
    const char *prof_label[48];
    double prof_ms[48];
    int n_prof;
    struct pf_ws *prefill; /* batched prefill workspace (cuda_prefill.cu), NULL until the first */
    int prefill_cap_max;   /* tokens per prefill chunk whose workspace fits (0: not yet limited) */
    void **small;      /* cudaMalloc'd small buffers, freed at close */
    int n_small, cap_small;
    char name[320];
};

/* One layer's KV state: stored rows as f16, in exact mode as f32 (the
 * pointers then address floats: cast with the engine's exact flag). */
struct dlayer_kv {
    __half *raw, *comp, *index;
    float *st_kv, *st_sc, *ist_kv, *ist_sc;
    size_t st_n, ist_n;
};

struct ds4_cuda_session {
    ds4_cuda_engine *e;
    dlayer_kv L[DS4_MAX_LAYERS];
    void *state;      /* one allocation for every layer's state */
    /* pinned: a step's inputs, a token's each (DS4_CUDA_VERIFY_TOKENS), then
     * MTP_IO_SLOTS for the MTP block's positions (launched back to back:
     * each copy must find its own still there) */
    step_io *h_io;
    float *h_logits;  /* pinned, n_vocab */
    float *h_logits0; /* pinned, n_vocab: the last verify step's first token's, once fetched (fetch_lazy) */
    /* pinned and mapped: the last step's two picks for each of its tokens,
     * then the MTP draft's two (MTP_PICK) and their logits (h_mtp_logit;
     * written by k_pick2 through d_pick, d_mtp_logit) */
    int32_t *h_pick;
    int32_t *d_pick;
    float *h_mtp_logit, *d_mtp_logit;
    /* with an MTP block: the final HC streams of the last n_swa positions
     * (row pos mod n_swa, HC_N·n_embd floats), which it starts from */
    float *hring;
    /* the MTP block at [positions - 1]: without, with its head */
    cudaGraphExec_t mtp_graph[DS4_CUDA_VERIFY_TOKENS][2];
    uint8_t **ring_tab; /* device: each layer's raw ring, then the MTP block's (k_side_rows) */
    bool pick_valid;  /* h_pick belongs to the logits the session has now */
    int cur;          /* the token of the last step whose logits and picks are the session's */
    cudaGraphExec_t graph, verify_graph;
    /* the verify step's frontier snapshot: each compressor's frontier as it
     * was before tokens[1] closed a window (null until the first verify) */
    float *snap;
    float *snap_at[DS4_MAX_LAYERS][2][2]; /* [layer][attention, indexer][kv, score] */
    int verify_pos;   /* the last verify step's pos, -1 once taken back or stepped on */
};

/* Where the MTP draft's two picks follow the steps' in d_pick; the MTP
 * positions launched before the host waits (ds4_cuda_session_mtp). */
enum { MTP_PICK = 2 * DS4_CUDA_VERIFY_TOKENS, MTP_IO_SLOTS = 32 };

/* Releases the prefill workspace (cuda_prefill.cu); at engine close. */
void ds4_cuda_prefill_free(ds4_cuda_engine *e);

static inline int cuda_fail(ds4_err *err, const char *what, cudaError_t e) {
    return ds4_fail(err, "cuda: %s: %s", what, cudaGetErrorString(e));
}

static inline int launched(ds4_err *err, const char *what) {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : cuda_fail(err, what, e);
}

#endif
