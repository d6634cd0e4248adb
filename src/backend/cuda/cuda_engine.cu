/* cuda_engine.cu — the CUDA backend's decode step (cuda_engine.h): weight
 * upload, device KV state, and the step enqueued once into a CUDA graph.
 *
 * Weights: every tensor the step reads is copied once into one device
 * arena in its GGUF block layout (the matvec kernels read those bytes
 * directly), or, for a synthetic model's large matrices, generated there
 * (cuda_synth.cuh); the small per-layer vectors (norm weights, HC scales
 * and biases, sinks, APE, router bias) are converted to f32 first, as the
 * CPU engine does at open. Before anything is loaded, the weights and one
 * session's state at ctx are checked against the free device memory.
 *
 * The step is the forward pass of src/engine/forward.c for one token, in
 * the same order: embedding, then per layer HC pre → attention (Q, KV,
 * compressors, indexer, attention, grouped output) → HC post → HC pre →
 * MoE (router, shared expert, routed experts) → HC post, then the output
 * head. Each HC post and the next HC pre are one kernel (k_hc), whose
 * Sinkhorn split for the next HC runs off the critical path (an extra
 * column of the attention's blocks; a spare block of the router's
 * launch); products that read the same activation share a launch (two
 * weight types: k_matvec_pair), and so do small kernels that share no
 * data (the preparation's launch: compressors, q/kv, indexer query); the
 * shared expert's gate/up rides with the router's product, its down in
 * the routed gate/up's launch (ds4_cuda_carried_mv). Quantised
 * products go through cuda_kernels.h with the activation quantised on the
 * device exactly as ds4_quantize_act does (inside the product's blocks
 * where the kernel allows it); the rest is cuda_step_ops.cuh. Kernels are
 * launched with programmatic dependent launch where the device has it
 * (cuda_pdl.cuh). Nothing depends on host values that change between
 * tokens: the token id and position live in device memory (step_io) and
 * the kernels derive window bounds, compressor emissions, compressed-row
 * counts and indexer activity from the position, so the enqueue is
 * captured once per session into a graph and replayed.
 *
 * Device memory per session: raw ring (n_swa rows) and compressed/indexer
 * rows (ctx/R + 2) as f16, frontiers as f32 — the CPU engine's layout;
 * with an MTP block also its raw ring and the final HC streams of the last
 * n_swa positions, which it starts from.
 *
 * The speculative verify step (model-spec §8) is the same enqueue for two
 * tokens, captured as the session's second graph: one workspace a token
 * (e->w[t]; the products' and routed experts' buffers as token pairs),
 * each kernel once for both (a column a token in the products, the
 * two-token MoE, a cluster, a row or a blockIdx.z a token elsewhere; a
 * compressor block runs the tokens' frontier updates in turn), the later
 * token's raw row aside until the end (k_side_rows: its ring slot is the
 * first of the earlier token's window). A rejected draft's closed windows
 * come back from a frontier snapshot its compressor took
 * (ds4_cuda_session_verify_reject). The MTP block (mtp_block) runs as
 * layer n_layer with the same machinery, one or two positions a graph. 
 *
 * Exact mode (plain f32 numerics, as the CPU engine's): every product goes
 * through cuda_exact.cuh (weights dequantised, f32 activations), the KV
 * rows are f32 and the FP8/FP4 round-trips are skipped (the row-handling
 * kernels of cuda_step_ops.cuh instantiated for float rows). The batched
 * prefill then runs as decode steps (cuda_prefill.cu). */
#include <cuda_runtime.h>
#ifdef DS4_CUDA_TIMELINE
#include <algorithm>
#include <vector>
#endif
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <utility>

#include "cuda_engine.h"
#include "cuda_gemm16.h"
#include "cuda_kernels.h"

extern "C" {
#include "../../engine/numerics.h"
#include "../../quant/quant.h"
}

#include "cuda_step_ops.cuh"
#include "cuda_pick.cuh"
#include "cuda_topk_grid.cuh"
#include "cuda_exact.cuh"
#include "cuda_engine_impl.cuh"
#include "cuda_synth.cuh"

/* Profiling: an event after the operations enqueued since the last mark. */
static void mark(ds4_cuda_engine *e, cudaStream_t st, const char *label) {
    if (!e->prof || e->n_ev >= 1024) return;
    if (!e->ev[e->n_ev] && cudaEventCreate(&e->ev[e->n_ev]) != cudaSuccess) return;
    e->ev_label[e->n_ev] = label;
    cudaEventRecord(e->ev[e->n_ev++], st);
}

/* Adds the intervals between the step's events to the per-label totals. */
static void prof_collect(ds4_cuda_engine *e) {
    cudaEventSynchronize(e->ev[e->n_ev - 1]);
    for (int i = 1; i < e->n_ev; i++) {
        float ms = 0;
        cudaEventElapsedTime(&ms, e->ev[i - 1], e->ev[i]);
        int k = 0;
        while (k < e->n_prof && strcmp(e->prof_label[k], e->ev_label[i])) k++;
        if (k == e->n_prof) {
            if (k == 48) continue;
            e->prof_label[e->n_prof++] = e->ev_label[i];
            e->prof_ms[k] = 0;
        }
        e->prof_ms[k] += ms;
    }
    e->n_prof_steps++;
}

static void prof_print(const ds4_cuda_engine *e) {
    if (!e->n_prof_steps) return;
    double total = 0;
    for (int k = 0; k < e->n_prof; k++) total += e->prof_ms[k];
    fprintf(stderr, "cuda profile: %d steps (uncaptured, an event after each operation), mean per step:\n",
            e->n_prof_steps);
    for (int k = 0; k < e->n_prof; k++)
        fprintf(stderr, "  %-28s %9.1f us  %5.1f%%\n", e->prof_label[k], 1e3 * e->prof_ms[k] / e->n_prof_steps,
                100 * e->prof_ms[k] / total);
    fprintf(stderr, "  %-28s %9.1f us\n", "total", 1e3 * total / e->n_prof_steps);
}

/* ------------------------------------------------------------ upload */

static uint64_t align256(uint64_t x) { return (x + 255) & ~(uint64_t)255; }

/* The synthetic fill of t's data, if it is generated on the device (the
 * fills are sorted by their offset into the model's image). */
static const ds4_synth_fill *fill_of(const ds4_cuda_engine *e, const ds4_tensor *t) {
    const uint8_t *base = e->m->file.base;
    if (!e->n_fills || !t->data || (const uint8_t *)t->data < base || (const uint8_t *)t->data >= base + e->m->file.size)
        return NULL; /* not in the model's image (the MTP file's) */
    uint64_t off = (uint64_t)((const uint8_t *)t->data - base);
    uint32_t lo = 0, hi = e->n_fills;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (e->fills[mid].offset < off) lo = mid + 1;
        else hi = mid;
    }
    return lo < e->n_fills && e->fills[lo].offset == off ? &e->fills[lo] : NULL;
}

/* Reserves room for t (counting) or puts it into the arena: copied from
 * the host, or generated there when it is a synthetic fill. */
static int put_tensor(ds4_cuda_engine *e, const ds4_tensor *t, dmat *out, bool counting, ds4_err *err) {
    memset(out, 0, sizeof *out);
    if (!t->data) return 0;
    uint64_t off = e->arena_used;
    e->arena_used = align256(e->arena_used + t->nbytes);
    if (counting) return 0;
    const ds4_synth_fill *f = fill_of(e, t);
    if (f && f->nbytes != t->nbytes)
        return ds4_fail(err, "cuda: synthetic fill of %s has %llu bytes, the tensor %llu", t->name,
                        (unsigned long long)f->nbytes, (unsigned long long)t->nbytes);
    if (f) {
        if (ds4_cuda_synth_fill(e->arena + off, f, e->stream, err)) return -1;
    } else {
        cudaError_t c = cudaMemcpy(e->arena + off, t->data, t->nbytes, cudaMemcpyHostToDevice);
        if (c != cudaSuccess) return cuda_fail(err, "weight upload", c);
    }
    const ds4_type_info *ti = ds4_type_info_get(t->type);
    out->w = e->arena + off;
    out->type = t->type;
    out->in = (uint32_t)t->ne[0];
    out->rows = (uint32_t)(t->n_dims > 1 ? t->ne[1] : 1);
    out->row_bytes = ti ? (uint64_t)t->ne[0] / ti->block_elems * ti->block_bytes : 0;
    return 0;
}

/* A device buffer of `bytes` outside the weight arena (small tensors, the
 * workspace), freed with the engine. */
static int small_alloc(ds4_cuda_engine *e, size_t bytes, void **out, ds4_err *err) {
    *out = NULL;
    if (e->n_small == e->cap_small) {
        int cap = e->cap_small ? 2 * e->cap_small : 256;
        void **p = (void **)realloc(e->small, cap * sizeof(void *));
        if (!p) return ds4_fail(err, "cuda: out of host memory");
        e->small = p;
        e->cap_small = cap;
    }
    cudaError_t c = cudaMalloc(out, bytes);
    if (c != cudaSuccess) return cuda_fail(err, "device allocation", c);
    e->small[e->n_small++] = *out;
    return 0;
}

/* A small tensor as f32 in its own device buffer (NULL if absent). */
static int put_f32(ds4_cuda_engine *e, const ds4_tensor *t, const float **out, ds4_err *err) {
    *out = NULL;
    if (!t->data) return 0;
    if (fill_of(e, t)) return ds4_fail(err, "cuda: %s is read on the host but was left to the device", t->name);
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) n *= t->ne[d];
    float *h = (float *)malloc(n * sizeof(float));
    if (!h) return ds4_fail(err, "cuda: out of host memory");
    ds4_dequantize_row(t->type, t->data, h, n);
    void *d = NULL;
    if (small_alloc(e, n * sizeof(float), &d, err)) {
        free(h);
        return -1;
    }
    cudaError_t c = cudaMemcpy(d, h, n * sizeof(float), cudaMemcpyHostToDevice);
    free(h);
    if (c != cudaSuccess) return cuda_fail(err, "small tensor upload", c);
    *out = (const float *)d;
    return 0;
}

/* An output head's HC collapse runs through k_hc (an HC pre without the
 * next sublayer's post and mixing matrix), whose threads load HC_MIX rows
 * of fn: the head's fn (output_hc_fn, the MTP's hc_head_fn) HC_N rows,
 * then zeros (check_model: F16 or F32 [HC_N·n_embd, HC_N]). */
static int put_head_mix(ds4_cuda_engine *e, const dmat &fn, dmat *mix, ds4_err *err) {
    void *d = NULL;
    if (small_alloc(e, (size_t)HC_MIX * fn.row_bytes, &d, err)) return -1;
    cudaError_t c = cudaMemset(d, 0, (size_t)HC_MIX * fn.row_bytes);
    if (c == cudaSuccess) c = cudaMemcpy(d, fn.w, (size_t)HC_N * fn.row_bytes, cudaMemcpyDeviceToDevice);
    if (c != cudaSuccess) return cuda_fail(err, "output head HC weights", c);
    *mix = fn;
    mix->w = (const uint8_t *)d;
    mix->rows = HC_MIX;
    return 0;
}

#define PUT(t, dst) if (put_tensor(e, &(t), &(dst), counting, err)) return -1

/* One block's weights (a layer's, or the MTP's) into D. */
static int put_layer(ds4_cuda_engine *e, const ds4_layer *S, dlayer *D, float clamp, bool counting, ds4_err *err) {
    dmat tid;
    PUT(S->hc_attn_fn, D->hc_attn_fn); PUT(S->hc_ffn_fn, D->hc_ffn_fn);
    PUT(S->attn_q_a, D->q_a); PUT(S->attn_q_b, D->q_b); PUT(S->attn_kv, D->kv);
    PUT(S->attn_output_a, D->out_a); PUT(S->attn_output_b, D->out_b);
    PUT(S->attn_compressor_kv, D->comp_kv); PUT(S->attn_compressor_gate, D->comp_gate);
    PUT(S->indexer_attn_q_b, D->idx_q_b); PUT(S->indexer_proj, D->idx_proj);
    PUT(S->indexer_compressor_kv, D->idx_comp_kv); PUT(S->indexer_compressor_gate, D->idx_comp_gate);
    PUT(S->ffn_gate_inp, D->gate_inp);
    PUT(S->ffn_gate_exps, D->gate_exps); PUT(S->ffn_up_exps, D->up_exps); PUT(S->ffn_down_exps, D->down_exps);
    PUT(S->ffn_gate_shexp, D->gate_sh); PUT(S->ffn_up_shexp, D->up_sh); PUT(S->ffn_down_shexp, D->down_sh);
    PUT(S->ffn_gate_tid2eid, tid);
    D->tid2eid = (const int32_t *)tid.w;
    D->ratio = S->compress_ratio;
    D->clamp = clamp;
    if (counting) return 0;
    return put_f32(e, &S->hc_attn_scale, &D->hc_attn_scale, err) || put_f32(e, &S->hc_attn_base, &D->hc_attn_base, err) ||
                   put_f32(e, &S->hc_ffn_scale, &D->hc_ffn_scale, err) ||
                   put_f32(e, &S->hc_ffn_base, &D->hc_ffn_base, err) || put_f32(e, &S->attn_norm, &D->attn_norm, err) ||
                   put_f32(e, &S->attn_q_a_norm, &D->q_a_norm, err) ||
                   put_f32(e, &S->attn_kv_a_norm, &D->kv_a_norm, err) || put_f32(e, &S->attn_sinks, &D->sinks, err) ||
                   put_f32(e, &S->ffn_norm, &D->ffn_norm, err) ||
                   put_f32(e, &S->attn_compressor_ape, &D->comp_ape, err) ||
                   put_f32(e, &S->attn_compressor_norm, &D->comp_norm, err) ||
                   put_f32(e, &S->indexer_compressor_ape, &D->index_ape, err) ||
                   put_f32(e, &S->indexer_compressor_norm, &D->index_norm, err) ||
                   put_f32(e, &S->exp_probs_b, &D->probs_bias, err)
               ? -1
               : 0;
}

/* The MTP block's weights: its block as layer n_layer (layer 1's SwiGLU
 * clamp, as the CPU engine's mtp_block), its input projections and norms,
 * its head's collapse. */
static int put_mtp(ds4_cuda_engine *e, bool counting, ds4_err *err) {
    const ds4_mtp_model *t = e->mtp;
    const ds4_hparams *hp = &e->m->hp;
    dmat head_fn;
    if (put_layer(e, &t->block, &e->L[hp->n_layer], hp->swiglu_clamp[hp->n_layer > 1 ? 1 : 0], counting, err))
        return -1;
    PUT(t->e_proj, e->mtp_e_proj); PUT(t->h_proj, e->mtp_h_proj); PUT(t->hc_head_fn, head_fn);
    if (counting) return 0;
    return put_f32(e, &t->enorm, &e->mtp_enorm, err) || put_f32(e, &t->hnorm, &e->mtp_hnorm, err) ||
                   put_f32(e, &t->norm, &e->mtp_norm, err) || put_f32(e, &t->hc_head_scale, &e->mtp_hc_scale, err) ||
                   put_f32(e, &t->hc_head_base, &e->mtp_hc_base, err) || put_head_mix(e, head_fn, &e->mtp_hc_mix, err)
               ? -1
               : 0;
}

static int upload_weights(ds4_cuda_engine *e, bool counting, ds4_err *err) {
    const ds4_model *m = e->m;
    e->arena_used = 0;
    PUT(m->token_embd, e->token_embd);
    PUT(m->output, e->output);
    PUT(m->output_hc_fn, e->output_hc_fn);
    for (uint32_t il = 0; il < m->hp.n_layer; il++) {
        if (put_layer(e, &m->layers[il], &e->L[il], m->hp.swiglu_clamp[il], counting, err)) return -1;
        if (!counting && m->hp.n_layer > 8 && (il + 1) % 4 == 0)
            fprintf(stderr, "\rcuda: uploading weights, layer %u/%u", il + 1, m->hp.n_layer);
    }
    if (e->mtp && put_mtp(e, counting, err)) return -1;
    if (counting) return 0;
    if (m->hp.n_layer > 8) fprintf(stderr, "\n");
    cudaError_t c = cudaStreamSynchronize(e->stream); /* the synthetic fills */
    if (c != cudaSuccess) return cuda_fail(err, "synthetic weight fill", c);
    if (put_f32(e, &m->output_hc_scale, &e->out_hc_scale, err) || put_f32(e, &m->output_hc_base, &e->out_hc_base, err) ||
        put_f32(e, &m->output_norm, &e->out_norm, err) || put_head_mix(e, e->output_hc_fn, &e->out_hc_mix, err))
        return -1;
    return 0;
}
#undef PUT

/* ------------------------------------------------------------ checks */

static bool matvec_type(uint32_t t) {
    return t == DS4_TYPE_Q8_0 || t == DS4_TYPE_Q2_K || t == DS4_TYPE_Q4_K || t == DS4_TYPE_IQ2_XXS ||
           t == DS4_TYPE_F16 || t == DS4_TYPE_F32;
}

static bool plain_type(uint32_t t) { return t == DS4_TYPE_F16 || t == DS4_TYPE_F32; }

static bool moe_type(uint32_t t) {
    return t == DS4_TYPE_Q8_0 || t == DS4_TYPE_Q2_K || t == DS4_TYPE_Q4_K || t == DS4_TYPE_IQ2_XXS || plain_type(t);
}

/* The dynamic shared memory that gives each block of a latency kernel its
 * multiprocessor to itself (the kernel uses none of it) where its grid
 * fits the device in one wave, else smem. PDL starts the next kernel's
 * blocks early, and a product's blocks prefetch weights before their own
 * wait: beside a latency kernel's block they slow its chain more than the
 * overlap gains. H200, ctx 4096: k_hc with two product blocks beside each
 * of its blocks +0.4% over the kernel it replaced, with one or none +1.6
 * to +2.0%; the attention's combine and the q/kv preparation alone +0.5%
 * (notes/cuda-kernels.md §29). */
template <typename... KArgs>
static size_t alone_smem(const ds4_cuda_engine *e, void (*kernel)(KArgs...), unsigned grid, size_t smem) {
    cudaFuncAttributes fa = {};
    if (grid > (unsigned)ds4_cuda_kernels_sm_count(e->k) || cudaFuncGetAttributes(&fa, kernel) != cudaSuccess ||
        e->sm_room <= fa.sharedSizeBytes + smem)
        return smem;
    const size_t room = e->sm_room - fa.sharedSizeBytes;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)room) != cudaSuccess) {
        cudaGetLastError();
        return smem;
    }
    return room;
}

/* k_hc as one cluster of HC_BLOCKS blocks where the device can place one
 * (sm_90+; DS4_CUDA_HC_CLUSTER=0: the grid form, for tests), else as a grid
 * whose blocks meet at grid barriers and so must all be resident; either
 * way each block with its SM to itself (alone_smem). The verify step's
 * tokens share a launch as clusters, or in the grid form where the device
 * holds all their blocks at once (hc_tokens). */
static int hc_form(ds4_cuda_engine *e, int cc_major, int n_sm, ds4_err *err) {
    const char *env = getenv("DS4_CUDA_HC_CLUSTER");
    const int nt = DS4_CUDA_VERIFY_TOKENS;
    if (cc_major >= 9 && !(env && !strcmp(env, "0"))) {
        e->hc_smem = alone_smem(e, k_hc<true, 1>, HC_BLOCKS, 0);
        e->hc_cluster = cluster_places(k_hc<true, 1>, HC_BLOCKS, HC_THREADS, e->hc_smem);
        e->hc_tokens = cluster_places(k_hc<true, nt>, HC_BLOCKS, HC_THREADS, 0); /* hc(): no smem */
        if (e->hc_cluster) return 0;
    }
    e->hc_smem = alone_smem(e, k_hc<false, 1>, HC_BLOCKS, 0);
    int per_sm = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_hc<false, 1>, HC_THREADS, e->hc_smem) != cudaSuccess ||
        per_sm * n_sm < HC_BLOCKS)
        return ds4_fail(err, "cuda: %s holds %d of the HC kernel's %d blocks at once", e->name, per_sm * n_sm,
                        HC_BLOCKS);
    e->hc_tokens = per_sm * n_sm >= nt * HC_BLOCKS && alone_smem(e, k_hc<false, nt>, nt * HC_BLOCKS, 0) == e->hc_smem;
    return 0;
}

/* A matrix the matvec kernels multiply. */
static int check_matvec(const ds4_tensor *t, ds4_err *err) {
    if (matvec_type(t->type)) return 0;
    return ds4_fail(err, "cuda: %s has type %s, which the CUDA backend cannot multiply yet", t->name,
                    ds4_type_name(t->type));
}

/* A block's (a layer's or the MTP's) weights are of types and shapes the
 * kernels take. */
static int check_block(const ds4_layer *L, const ds4_hparams *hp, ds4_err *err) {
    const ds4_tensor *mats[] = {&L->hc_attn_fn, &L->hc_ffn_fn, &L->attn_q_a, &L->attn_q_b, &L->attn_kv,
                                &L->attn_output_a, &L->attn_output_b, &L->attn_compressor_kv,
                                &L->attn_compressor_gate, &L->indexer_attn_q_b, &L->indexer_proj,
                                &L->indexer_compressor_kv, &L->indexer_compressor_gate, &L->ffn_gate_inp};
    for (size_t i = 0; i < sizeof mats / sizeof *mats; i++)
        if (mats[i]->data && check_matvec(mats[i], err)) return -1;
    const ds4_tensor *fns[] = {&L->hc_attn_fn, &L->hc_ffn_fn};
    for (int i = 0; i < 2; i++)
        if (!plain_type(fns[i]->type) || fns[i]->n_dims != 2 || fns[i]->ne[0] != HC_N * hp->n_embd ||
            fns[i]->ne[1] != HC_MIX)
            return ds4_fail(err, "cuda: %s must be F16 or F32 [%u, %d]", fns[i]->name, HC_N * hp->n_embd, HC_MIX);
    const ds4_tensor *moes[] = {&L->ffn_gate_exps, &L->ffn_up_exps, &L->ffn_down_exps, &L->ffn_gate_shexp,
                                &L->ffn_up_shexp, &L->ffn_down_shexp};
    for (size_t i = 0; i < sizeof moes / sizeof *moes; i++)
        if (!moe_type(moes[i]->type))
            return ds4_fail(err, "cuda: %s has type %s (the MoE kernels take Q8_0, Q2_K, Q4_K, IQ2_XXS, F16, F32)",
                            moes[i]->name, ds4_type_name(moes[i]->type));
    return 0;
}

/* An output head's HC weights (output_hc_fn, the MTP's hc_head_fn). */
static int check_head_fn(const ds4_tensor *hfn, const ds4_hparams *hp, ds4_err *err) {
    if (!plain_type(hfn->type) || hfn->n_dims != 2 || hfn->ne[0] != HC_N * hp->n_embd || hfn->ne[1] != HC_N)
        return ds4_fail(err, "cuda: %s must be F16 or F32 [%u, %d]", hfn->name, HC_N * hp->n_embd, HC_N);
    return 0;
}

/* The model (and the MTP block, if given) for the kernels. */
static int check_model(const ds4_model *m, const ds4_mtp_model *mtp, ds4_err *err) {
    const ds4_hparams *hp = &m->hp;
    if (hp->n_hc != HC_N) return ds4_fail(err, "cuda: %u HC streams (the kernels take %d)", hp->n_hc, HC_N);
    if (hp->n_embd > HC_BLOCKS * HC_DPB || hp->n_embd % HC_EPT)
        return ds4_fail(err, "cuda: n_embd %u is beyond the HC kernel's (even, at most %d)", hp->n_embd,
                        HC_BLOCKS * HC_DPB);
    const uint32_t ihd = hp->indexer_head_dim;
    if (hp->head_dim > 2 * ATT_TPB || hp->head_dim % 8 || hp->head_dim - hp->n_rot > 64 * 64 ||
        (ihd && (ihd < 64 || ihd > 512 || (ihd & (ihd - 1)) || hp->n_rot > ihd)))
        return ds4_fail(err, "cuda: head sizes %u/%u are beyond the kernels' limits", hp->head_dim, ihd);
    if (hp->n_expert > ROUTE_MAX_EXPERTS)
        return ds4_fail(err, "cuda: %u experts (the router takes at most %d)", hp->n_expert, ROUTE_MAX_EXPERTS);
    if (hp->n_expert_used > DS4_CUDA_MAX_SEL)
        return ds4_fail(err, "cuda: %u experts per token (at most %d)", hp->n_expert_used, DS4_CUDA_MAX_SEL);
    if (m->token_embd.type != DS4_TYPE_F16 && m->token_embd.type != DS4_TYPE_F32)
        return ds4_fail(err, "cuda: token_embd of type %s (F16 or F32 supported)", ds4_type_name(m->token_embd.type));
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if (check_block(&m->layers[il], hp, err)) return -1;
    if (check_matvec(&m->output, err) || check_head_fn(&m->output_hc_fn, hp, err)) return -1;
    if (!mtp) return 0;
    if (hp->n_layer + 1 > DS4_MAX_LAYERS) return ds4_fail(err, "cuda: no room for the MTP block after %u layers", hp->n_layer);
    return check_matvec(&mtp->e_proj, err) || check_matvec(&mtp->h_proj, err) || check_block(&mtp->block, hp, err) ||
                   check_head_fn(&mtp->hc_head_fn, hp, err)
               ? -1
               : 0;
}

/* ------------------------------------------------------------ engine */

/* A workspace buffer (counted in the engine's workspace bytes). */
static int dalloc(ds4_cuda_engine *e, void **p, size_t bytes, ds4_err *err) {
    if (small_alloc(e, bytes ? bytes : 16, p, err)) return -1;
    e->work_bytes += bytes;
    return 0;
}

/* A workspace buffer of `bytes` for each token (p: its field in e->w[0];
 * the other tokens' fields are the same field of e->w[t]): one allocation
 * with the tokens' copies `stride` bytes apart, or with stride 0 an
 * allocation each; registered for tok_ptr. */
static int walloc(ds4_cuda_engine *e, void **p, size_t bytes, size_t stride, ds4_err *err) {
    const int nt = DS4_CUDA_VERIFY_TOKENS;
    auto field = [&](int t) { return (void **)((uint8_t *)p + t * sizeof(dwork)); };
    if (e->n_wbufs == (int)(sizeof e->wbufs / sizeof *e->wbufs))
        return ds4_fail(err, "cuda: more workspace buffers than the table holds");
    ds4_cuda_engine::wbuf *b = &e->wbufs[e->n_wbufs++];
    b->bytes = bytes;
    if (stride && dalloc(e, p, (nt - 1) * stride + bytes, err)) return -1;
    for (int t = 0; t < nt; t++) {
        if (!stride && dalloc(e, field(t), bytes, err)) return -1;
        if (stride) *field(t) = (uint8_t *)*p + t * stride;
        b->base[t] = (uint8_t *)*field(t);
    }
    return 0;
}

/* The tokens' copies of an activation of n values quantised for type:
 * one row apart, as the several-column kernels take them, where that keeps
 * them 16-byte aligned (else as far as the next 256 bytes: one token at a
 * time then). */
static size_t act_stride(uint32_t type, size_t n) {
    const size_t row = ds4_act_row_bytes(type, n);
    return row && row % 16 == 0 ? row : align256(row ? row : 1);
}

static int alloc_work(ds4_cuda_engine *e, ds4_err *err) {
    const ds4_hparams *hp = &e->m->hp;
    dwork *w = &e->w[0];
    size_t D = hp->n_embd, hd = hp->head_dim, ihd = hp->indexer_head_dim, ff = hp->n_ff_exp;
    size_t nu = hp->n_expert_used, qdim = (size_t)hp->n_head * hd, lo = (size_t)hp->n_out_group * hp->o_lora;
    uint32_t max_cap = 16;
    for (uint32_t il = 0; il < hp->n_layer; il++) max_cap = e->comp_cap[il] > max_cap ? e->comp_cap[il] : max_cap;
    size_t max_n = 4 * D;
    size_t cand[] = {qdim, lo, nu * ff, hp->q_lora, (size_t)hp->n_vocab};
    for (size_t i = 0; i < sizeof cand / sizeof *cand; i++) max_n = cand[i] > max_n ? cand[i] : max_n;
    size_t act_bytes = max_n * 2 + 1024;
    for (int t = 1; t < DS4_CUDA_VERIFY_TOKENS; t++) e->w[t].rope = w->rope; /* the ratios; pointers below */
    /* F: each token's own; P: the tokens' copies side by side (the
     * products' and the routed experts' several-column forms read and
     * write them so); A: a quantised activation (act_bytes), the tokens'
     * copies one row of n values of weight type `type` apart */
#define F(ptr, n) if (walloc(e, (void **)&(ptr), (size_t)(n) * sizeof(*(ptr)), 0, err)) return -1
#define P(ptr, n) if (walloc(e, (void **)&(ptr), (size_t)(n) * sizeof(*(ptr)), (size_t)(n) * sizeof(*(ptr)), err)) return -1
#define A(ptr, type, n) if (walloc(e, (void **)&(ptr), act_bytes, act_stride(type, n), err)) return -1
    P(w->io, 1);
    F(w->H, 4 * D); F(w->H2, 4 * D); F(w->hx, D);
    F(w->hc_part, HC_PART); F(w->hc_count, 1);
    F(w->mix, DS4_HC_MIX); F(w->post, HC_N); F(w->comb, HC_N * HC_N);
    F(w->x, D); P(w->a, D); P(w->qraw, hp->q_lora); P(w->qr, hp->q_lora); P(w->q, qdim); P(w->kv, hd);
    F(w->rope.cs0, hp->n_rot / 2); F(w->rope.cs1, hp->n_rot / 2);
    for (int i = 0; i < w->rope.n_win; i++) F(w->rope.win[i], hp->n_rot / 2);
    P(w->ckv, 2 * hd); P(w->csc, 2 * hd); P(w->ikv, 2 * ihd); P(w->isc, 2 * ihd);
    P(w->iq, (size_t)hp->n_indexer_head * ihd); P(w->iw, hp->n_indexer_head);
    P(w->iscores, max_cap); F(w->sel, hp->indexer_top_k + 1); F(w->n_sel, 1);
    F(w->tkg, 1); F(w->tk_wa, (e->topk_grid + 1) * TOPK_GRID_WARPS); F(w->tk_wt, (e->topk_grid + 1) * TOPK_GRID_WARPS);
    P(w->att, qdim); A(w->attq, DS4_TYPE_Q8_0, qdim);
    F(w->att_part, qdim * e->att_splits); F(w->att_ml, (size_t)hp->n_head * e->att_splits);
    P(w->low, lo); A(w->lowq, e->m->layers[0].attn_output_b.type, lo); P(w->y, D);
    P(w->router, hp->n_expert); P(w->ids, nu); P(w->ew, nu); F(w->route_stamp, hp->n_layer + 1);
    P(w->mid, nu * ff); F(w->smid, ff); P(w->shgu, 2 * ff); P(w->sh, D); P(w->ehc, D); P(w->logits, hp->n_vocab);
    P(w->zero_id, 1); F(w->one_w, 1);
    F(w->pick_part, 2 * PICK_BLOCKS); F(w->pick_count, 1);
    A(w->actA, DS4_TYPE_Q8_0, ff); A(w->actB, e->m->layers[0].ffn_gate_exps.type, D); A(w->aq8, DS4_TYPE_Q8_0, D);
    if (e->mtp) { P(w->mtp_hn, HC_N * D); P(w->mtp_en, D); }
#undef A
#undef P
#undef F
    int32_t zero = 0;
    float one = 1.0f;
    cudaError_t c = cudaSuccess;
    for (int t = 0; t < DS4_CUDA_VERIFY_TOKENS && c == cudaSuccess; t++) {
        dwork *wt = &e->w[t];
        c = cudaMemcpy(wt->zero_id, &zero, sizeof zero, cudaMemcpyHostToDevice);
        if (c == cudaSuccess) c = cudaMemcpy(wt->one_w, &one, sizeof one, cudaMemcpyHostToDevice);
        if (c == cudaSuccess) c = cudaMemset(wt->hc_count, 0, sizeof *wt->hc_count);
        if (c == cudaSuccess) c = cudaMemset(wt->pick_count, 0, sizeof *wt->pick_count);
        if (c == cudaSuccess) c = cudaMemset(wt->tkg, 0, sizeof *wt->tkg);
        if (c == cudaSuccess) c = cudaMemset(wt->route_stamp, 0, (hp->n_layer + 1) * sizeof *wt->route_stamp);
    }
    /* a side row for every layer, and the MTP block's */
    e->side_row_bytes = (uint32_t)((e->exact ? sizeof(float) : sizeof(__half)) * hd);
    if (c == cudaSuccess && dalloc(e, (void **)&e->side, (size_t)(hp->n_layer + 1) * e->side_row_bytes, err))
        return -1;
    if (c == cudaSuccess && e->mtp && dalloc(e, (void **)&e->mtp_logits, hp->n_vocab * sizeof(float), err)) return -1;
    return c == cudaSuccess ? 0 : cuda_fail(err, "workspace init", c);
}

static rope_dev rope_of(const ds4_hparams *hp, bool compressed) {
    rope_params rp;
    rope_params_init(&rp, hp, compressed);
    rope_dev r = {rp.n_rot, rp.theta_scale, rp.yarn ? 1 : 0, rp.freq_scale, rp.corr_low, rp.corr_high};
    return r;
}

extern "C" bool ds4_cuda_available(void) {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

/* Lays out one session's KV state for ctx tokens (model-spec §7.1, the CPU
 * engine's layout) at base into s's layer pointers (s NULL: sizes only);
 * returns the bytes. */
static size_t session_layout(const ds4_cuda_engine *e, uint32_t ctx, ds4_cuda_session *s, uint8_t *base) {
    const ds4_hparams *hp = &e->m->hp;
    size_t hd = hp->head_dim, ihd = hp->indexer_head_dim, off = 0;
    size_t row_el = e->exact ? sizeof(float) : sizeof(__half); /* stored rows */
#define CARVE_B(ptr, type, bytes)                                            \
    do {                                                                     \
        if (s) (ptr) = (type *)(base + off);                                 \
        off = align256(off + (bytes));                                       \
    } while (0)
#define CARVE(ptr, type, n) CARVE_B(ptr, type, (size_t)(n) * sizeof(type))
#define CARVE_ROWS(ptr, n) CARVE_B(ptr, __half, (size_t)(n) * row_el)
    dlayer_kv scratch;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        dlayer_kv *K = s ? &s->L[il] : &scratch;
        uint32_t r = e->m->layers[il].compress_ratio;
        size_t cap = r ? ctx / r + 2 : 0;
        CARVE_ROWS(K->raw, (size_t)hp->n_swa * hd);
        if (r) {
            size_t coff = r == 4 ? 2 : 1;
            K->st_n = coff * r * coff * hd;
            CARVE_ROWS(K->comp, cap * hd);
            CARVE(K->st_kv, float, K->st_n);
            CARVE(K->st_sc, float, K->st_n);
        }
        if (r == 4) {
            K->ist_n = 2 * 4 * 2 * ihd;
            CARVE_ROWS(K->index, cap * ihd);
            CARVE(K->ist_kv, float, K->ist_n);
            CARVE(K->ist_sc, float, K->ist_n);
        }
    }
    if (e->mtp) { /* the MTP block's raw ring, and the streams it starts from */
        dlayer_kv *K = s ? &s->L[hp->n_layer] : &scratch;
        CARVE_ROWS(K->raw, (size_t)hp->n_swa * hd);
        CARVE(s->hring, float, (size_t)hp->n_swa * HC_N * hp->n_embd);
    }
#undef CARVE_ROWS
#undef CARVE
#undef CARVE_B
    return off;
}

static double gib(double bytes) { return bytes / 1073741824.0; }

/* Before the weights are loaded: weights + one session at ctx must fit in
 * what is free (the workspace is allocated already). */
static int check_fit(ds4_cuda_engine *e, size_t free_b, ds4_err *err) {
    size_t sess = session_layout(e, (uint32_t)e->ctx, NULL, NULL);
    size_t need = e->arena_size + sess + DEVICE_RESERVE;
    if (need <= free_b) return 0;
    int lo = 0, hi = e->ctx; /* the largest ctx that fits is in [lo, hi) */
    while (hi - lo > 1) {
        int mid = lo + (hi - lo) / 2;
        if (e->arena_size + session_layout(e, (uint32_t)mid, NULL, NULL) + DEVICE_RESERVE <= free_b) lo = mid;
        else hi = mid;
    }
    char fit[96];
    if (lo >= 1) snprintf(fit, sizeof fit, "the largest ctx that fits is %d", lo);
    else snprintf(fit, sizeof fit, "the weights alone do not fit (fewer layers?)");
    return ds4_fail(err, "cuda: ctx %d needs %.2f GiB of device memory (weights %.2f, session state %.2f, "
                    "reserve %.2f; workspace %.1f MiB allocated) but %.2f GiB are free on %s: %s", e->ctx,
                    gib((double)need), gib((double)e->arena_size), gib((double)sess), gib((double)DEVICE_RESERVE),
                    e->work_bytes / 1048576.0, gib((double)free_b), e->name, fit);
}

/* The indexer's tensor-core scores (official mode): its shared memory and
 * how many of its blocks the device holds at once (e->idx_slots, the decode
 * step's grid at most). */
static int idx_scores_setup(ds4_cuda_engine *e, ds4_err *err) {
    const ds4_hparams *hp = &e->m->hp;
    int nih = (int)hp->n_indexer_head, ihd = (int)hp->indexer_head_dim, per_sm = 0;
    size_t smem = idx_scores_smem(nih, ihd);
    if (ihd % 16) return ds4_fail(err, "cuda: indexer head dim %d is not a multiple of 16", ihd);
    cudaError_t c = cudaFuncSetAttribute(idx_scores, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (c == cudaSuccess) c = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, idx_scores, IX_THREADS, smem);
    if (c != cudaSuccess || per_sm < 1)
        return ds4_fail(err, "cuda: indexer scores of %d heads of %d need %zu bytes of shared memory a block: %s",
                        nih, ihd, smem, c != cudaSuccess ? cudaGetErrorString(c) : "more than the device holds");
    e->idx_slots = (uint32_t)(ds4_cuda_kernels_sm_count(e->k) * per_sm);
    return 0;
}

extern "C" int ds4_cuda_engine_open(ds4_cuda_engine **out, const ds4_model *m, const ds4_mtp_model *mtp, int ctx,
                                    bool exact, bool quality, const ds4_synth_fill *fills, uint32_t n_fills,
                                    ds4_err *err) {
    *out = NULL;
    if (check_model(m, mtp, err) || (exact && ds4_cuda_exact_init(err))) return -1;
    for (uint32_t i = 1; i < n_fills; i++)
        if (fills[i].offset <= fills[i - 1].offset) return ds4_fail(err, "cuda: synthetic fills are not sorted");
    ds4_cuda_engine *e = (ds4_cuda_engine *)calloc(1, sizeof *e);
    if (!e) return ds4_fail(err, "cuda: out of host memory");
    e->m = m;
    e->mtp = mtp;
    e->fills = fills;
    e->n_fills = n_fills;
    e->ctx = ctx;
    e->exact = exact;
    e->quality = quality;
    if (ds4_cuda_kernels_init(&e->k, 0, err)) {
        free(e);
        return -1;
    }
    const ds4_hparams *hp = &m->hp;
    uint32_t extra = 0; /* compressed rows one head attends at most */
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = m->layers[il].compress_ratio;
        e->comp_cap[il] = r ? (uint32_t)ctx / r + 2 : 0;
        uint32_t att = r == 4 && e->comp_cap[il] > hp->indexer_top_k ? hp->indexer_top_k : e->comp_cap[il];
        extra = att > extra ? att : extra;
    }
    /* Attention blocks: up to ATT_HG heads each (a divisor of n_head), and
     * enough row splits for about two blocks per multiprocessor. */
    e->att_hg = ATT_HG;
    while (hp->n_head % e->att_hg) e->att_hg--;
    int n_sm = ds4_cuda_kernels_sm_count(e->k);
    int groups = (int)hp->n_head / e->att_hg, chunks = (int)(hp->n_swa + extra + ATT_RC - 1) / ATT_RC;
    e->att_splits = 2 * (n_sm > 0 ? n_sm : 1) / groups;
    if (e->att_splits > chunks) e->att_splits = chunks;
    if (e->att_splits < 1) e->att_splits = 1;
    /* The indexer's top-k over the grid at positions where a ratio-4 layer
     * sees more than TOPK_ONE_ROWS rows (cuda_topk_grid.cuh), the one-block
     * k_idx_topk up to that. Tests: DS4_CUDA_TOPK_GRID=0 the one block, 1
     * the grid at every position, N > 1 the one block up to N rows (at most
     * TOPK_GRID_MIN, what it holds in registers) and the grid beyond. */
    bool has_indexer = false;
    for (uint32_t il = 0; il < hp->n_layer; il++) has_indexer |= m->layers[il].compress_ratio == 4;
    const uint32_t idx_rows = has_indexer ? (uint32_t)ctx / 4 : 0; /* the most rows a ratio-4 layer sees */
    const char *tg = getenv("DS4_CUDA_TOPK_GRID");
    const long forced = tg && *tg ? strtol(tg, NULL, 10) : -1;
    const int one_rows = forced > 1 && forced < TOPK_GRID_MIN ? (int)forced : TOPK_ONE_ROWS;
    const bool grid_topk = forced == 0 ? false : forced == 1 ? true : idx_rows > (uint32_t)one_rows;
    e->topk_grid = grid_topk && idx_rows ? topk_grid_blocks(idx_rows) : 0;
    int tk_per_sm = 0; /* its blocks must all be resident at once */
    if (e->topk_grid &&
        (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&tk_per_sm, k_topk_grid<false>, TOPK_GRID_THREADS, 0) !=
             cudaSuccess ||
         e->topk_grid > tk_per_sm * n_sm))
        e->topk_grid = 0; /* the one block then takes every position (its radix path) */
    /* up to TOPK_CLUSTER_MAX blocks (128k of context) as one cluster where
     * the device places one (DS4_CUDA_TOPK_CLUSTER=0: the grid form) */
    const char *tc = getenv("DS4_CUDA_TOPK_CLUSTER");
    e->topk_cluster = e->topk_grid > 0 && !(tc && !strcmp(tc, "0")) && topk_cluster_fits(e->topk_grid);
    e->topk_one_rows = !e->topk_grid ? INT_MAX : forced == 1 ? 0 : one_rows;
    /* k_idx_topk's threads: enough to hold its rows in registers, at least
     * 512 (a smaller block than 1024 fits beside the kernel before it and
     * launches early: H200, 43 layers at ctx 4096, 1024 rows, three rounds
     * 146.0 tok/s with 1024 threads, 147.3 with 256, 147.7 with 512) */
    const uint32_t one_max = idx_rows < (uint32_t)e->topk_one_rows ? idx_rows : (uint32_t)e->topk_one_rows;
    const int one_th = (int)((one_max + TOPK_REG_SLOTS - 1) / TOPK_REG_SLOTS + 31) / 32 * 32;
    e->topk_threads = one_th < 512 ? 512 : one_th > 1024 || one_max > TOPK_GRID_MIN ? 1024 : one_th;
    e->rope_plain = rope_of(hp, false);
    e->rope_comp = rope_of(hp, true);
    rope_tabs *rt = &e->w[0].rope;
    rt->plain = e->rope_plain;
    rt->comp = e->rope_comp;
    for (uint32_t il = 0; il < hp->n_layer; il++) { /* the compressors' ratios (the indexer's is 4) */
        int r = (int)m->layers[il].compress_ratio, seen = 0;
        for (int i = 0; i < rt->n_win; i++) seen |= rt->win_ratio[i] == r;
        if (r && !seen && rt->n_win < ROPE_WINS) rt->win_ratio[rt->n_win++] = r;
    }
    snprintf(e->name, sizeof e->name, "%s", ds4_cuda_kernels_device_name(e->k));
    const char *prof = getenv("DS4_CUDA_PROFILE");
    e->prof = prof && *prof && strcmp(prof, "0") != 0;
    cudaError_t c = cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking);
#ifdef DS4_CUDA_TIMELINE
    const char *tlv = getenv("DS4_CUDA_TIMELINE");
    e->tl_report = tlv ? atoi(tlv) : 40;
    if (c == cudaSuccess) c = cudaMalloc(&e->tl, sizeof(tl_buf));
    if (c == cudaSuccess) c = cudaMemset(e->tl, 0, 2 * sizeof(unsigned)) /* n, na */;
    if (c == cudaSuccess) c = tl_bind_here(e->tl);
    if (c == cudaSuccess) c = ds4_cuda_tl_bind_kernels(e->tl);
#endif
    if (c != cudaSuccess) {
        ds4_cuda_engine_close(e);
        return cuda_fail(err, "stream", c);
    }
    int smem_sm = 0, smem_reserved = 0, smem_optin = 0, cc_major = 0, dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev))
        cc_major = 0;
    if (cudaDeviceGetAttribute(&smem_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&smem_reserved, cudaDevAttrReservedSharedMemoryPerBlock, dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) == cudaSuccess)
        e->sm_room = (size_t)(smem_sm - smem_reserved < smem_optin ? smem_sm - smem_reserved : smem_optin);
    if (hc_form(e, cc_major, n_sm, err)) {
        ds4_cuda_engine_close(e);
        return -1;
    }
    upload_weights(e, true, NULL);
    e->arena_size = e->arena_used;
    size_t free_b = 0, total_b = 0;
    if (alloc_work(e, err)) {
        ds4_cuda_engine_close(e);
        return -1;
    }
    cudaMemGetInfo(&free_b, &total_b);
    if (check_fit(e, free_b, err)) {
        ds4_cuda_engine_close(e);
        return -1;
    }
    c = cudaMalloc(&e->arena, e->arena_size);
    if (c != cudaSuccess) {
        ds4_fail(err, "cuda: the weights need %.2f GiB of device memory; %.2f GiB are free on %s",
                 gib((double)e->arena_size), gib((double)free_b), e->name);
        ds4_cuda_engine_close(e);
        return -1;
    }
    if (upload_weights(e, false, err)) {
        ds4_cuda_engine_close(e);
        return -1;
    }
    e->fills = NULL; /* the caller's, valid during open only */
    e->n_fills = 0;
    size_t sess = session_layout(e, (uint32_t)ctx, NULL, NULL);
    fprintf(stderr, "cuda: %s (%.2f TB/s peak): weights %.2f GiB (%u tensors generated on the device), session state "
            "%.3f GiB per session at ctx %d, workspace %.1f MiB; %.2f of %.2f GiB free before the first session\n",
            e->name, ds4_cuda_kernels_peak_bw(e->k) / 1e12, gib((double)e->arena_size), n_fills, gib((double)sess),
            ctx, e->work_bytes / 1048576.0,
            gib((double)(free_b - e->arena_size)), gib((double)total_b));
    /* the attention on tensor cores where its shapes allow (f16 rows, head
     * dims a multiple of 64, at most 8 heads a block) */
    e->att_tc = !exact && hp->head_dim % 64 == 0 && e->att_hg <= 8;
    size_t smem = e->att_tc ? att_split_tc_smem((int)hp->head_dim)
                            : att_split_smem(e->att_hg, (int)hp->head_dim, exact ? sizeof(float) : sizeof(__half));
    const void *att_k[2] = {e->att_tc ? (const void *)k_attention_split_tc<1>
                            : exact   ? (const void *)k_attention_split<float, 1>
                                      : (const void *)k_attention_split<__half, 1>,
                            e->att_tc ? (const void *)k_attention_split_tc<DS4_CUDA_VERIFY_TOKENS>
                            : exact   ? (const void *)k_attention_split<float, DS4_CUDA_VERIFY_TOKENS>
                                      : (const void *)k_attention_split<__half, DS4_CUDA_VERIFY_TOKENS>};
    for (int i = 0; i < 2 && c == cudaSuccess; i++)
        c = cudaFuncSetAttribute(att_k[i], cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (c != cudaSuccess) {
        ds4_fail(err, "cuda: attention needs %zu bytes of shared memory per block: %s", smem, cudaGetErrorString(c));
        ds4_cuda_engine_close(e);
        return -1;
    }
    if (!exact && idx_scores_setup(e, err)) {
        ds4_cuda_engine_close(e);
        return -1;
    }
    if (!exact && !quality) ds4_gemm16_warm(); /* the prefill's f16 products use cuBLAS */
    *out = e;
    return 0;
}

extern "C" void ds4_cuda_engine_close(ds4_cuda_engine *e) {
    if (!e) return;
    prof_print(e);
    ds4_cuda_prefill_free(e);
    for (int i = 0; i < 1024; i++)
        if (e->ev[i]) cudaEventDestroy(e->ev[i]);
#ifdef DS4_CUDA_TIMELINE
    for (int i = 0; i < 6; i++)
        if (e->tl_ev[i]) cudaEventDestroy(e->tl_ev[i]);
#endif
    for (int i = 0; i < e->n_small; i++) cudaFree(e->small[i]);
    free(e->small);
    cudaFree(e->arena);
#ifdef DS4_CUDA_TIMELINE
    if (e->tl) cudaFree(e->tl);
#endif
    if (e->stream) cudaStreamDestroy(e->stream);
    ds4_cuda_kernels_free(e->k);
    free(e);
}

extern "C" const char *ds4_cuda_engine_device_name(const ds4_cuda_engine *e) { return e->name; }

/* ------------------------------------------------------------ the step */

/* Enqueue helpers: each returns 0 or -1 with err set. */
struct enq {
    ds4_cuda_engine *e;
    cudaStream_t st;
    ds4_err *err;
    bool pdl;   /* programmatic dependent launch (cuda_pdl.cuh) */
    bool hc_q8; /* k_hc also writes ws.a as Q8_0 (ws.aq8) for the Q8_0 products of it */
    bool sh_carry; /* the routed gate/up carries the shared expert's down (shared_down() otherwise) */
    int nt;        /* tokens evaluated: 1, or the verify step's DS4_CUDA_VERIFY_TOKENS */
    bool cols;     /* the tokens' products as one launch of a column each where cols_fit */
    bool moe_tokens; /* the tokens' routed experts as one launch each where moe_tokens_fit */
};

/* Token t's copy of the workspace address p of token 0 (NULL stays NULL). */
template <typename T>
static T *tok_ptr(const ds4_cuda_engine *e, T *p, int t) {
    if (!p || !t) return p;
    const uint8_t *b = (const uint8_t *)p;
    for (int i = 0; i < e->n_wbufs; i++) {
        const ds4_cuda_engine::wbuf &wb = e->wbufs[i];
        if (b >= wb.base[0] && b < wb.base[0] + wb.bytes) return (T *)(wb.base[t] + (b - wb.base[0]));
    }
    fprintf(stderr, "cuda: %p is not in token 0's workspace\n", (const void *)p);
    abort();
}

/* How far token 1's copy of p lies from p, in units of T. */
template <typename T>
static ptrdiff_t tok_stride(const ds4_cuda_engine *e, const T *p) {
    return (const uint8_t *)tok_ptr(e, p, 1) - (const uint8_t *)p;
}

/* kernel<<<grid, block, smem, q->st>>>(args...), programmatic when q->pdl. */
template <typename... KArgs, typename... Args>
static int run(enq *q, const char *what, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
               Args &&...args) {
    cudaError_t c = pdl_launch(q->pdl, kernel, grid, block, smem, q->st, std::forward<Args>(args)...);
    return c == cudaSuccess ? 0 : cuda_fail(q->err, what, c);
}

/* run, each block with its multiprocessor to itself (alone_smem). */
template <typename... KArgs, typename... Args>
static int run_alone(enq *q, const char *what, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                     Args &&...args) {
    return run(q, what, kernel, grid, block, alone_smem(q->e, kernel, grid.x * grid.y * grid.z, smem),
               std::forward<Args>(args)...);
}

/* rows rows of m (from w) by x into y (token 0's; each token's): f32
 * weights, or any type in exact mode. */
static int exact_mv(enq *q, const dmat &m, const uint8_t *w, uint32_t rows, const float *x, float *y) {
    for (int t = 0; t < q->nt; t++) {
        const float *xt = tok_ptr(q->e, x, t);
        float *yt = tok_ptr(q->e, y, t);
        if (q->e->exact ? run(q, "exact matvec", k_exact_matvec, (rows * 32 + 255) / 256, 256, 0, w, m.type,
                              m.row_bytes, rows, m.in, xt, yt)
                        : run(q, "f32 matvec", k_matvec_f32, (rows * 32 + 255) / 256, 256, 0, (const float *)w, rows,
                              m.in, xt, yt))
            return -1;
    }
    return 0;
}

/* The product of x (normed by norm_w first, if not NULL, and then written
 * to norm_out) by the quantised or F16 matrix m into y — with x NULL, of
 * the quantised activation the caller puts in .act; active: see
 * ds4_cuda_mv. */
static ds4_cuda_mv mv_of(const enq *q, const dmat &m, float *y, const float *x, const float *norm_w, float *norm_out,
                         const int32_t *active) {
    ds4_cuda_mv d = {};
    d.wtype = m.type;
    d.n_in = m.in;
    d.n_groups = 1;
    d.n_seg = 1;
    d.seg[0] = {m.w, m.rows, y};
    d.x = x;
    d.norm_w = norm_w;
    d.eps = q->e->m->hp.rms_eps;
    d.norm_out = norm_out;
    d.active = active;
    return d;
}

/* Whether k_hc writing `a` also writes it as Q8_0 into ws.aq8: for the
 * sublayers' input ws.a (the output head's goes to ws.ehc), whose Q8_0
 * products then copy 4.6 KB of codes instead of quantising its 16 KB of
 * f32 in each of their blocks (k_hc's blocks own 256 dims: a warp a Q8_0
 * block). H200, 43 q2 layers: +1.2% at 4k, +1.3% at 64k. */
static bool hc_writes_q8(const enq *q, const float *a, int t = 0) {
    return q->hc_q8 && !q->e->exact && a == q->e->w[t].a && q->e->m->hp.n_embd % 256 == 0;
}

/* A product of ws.a with Q8_0 weights reads that copy. */
static void read_hc_q8(const enq *q, ds4_cuda_mv *d) {
    if (d->wtype == DS4_TYPE_Q8_0 && !d->norm_w && hc_writes_q8(q, d->x)) d->act = q->e->w[0].aq8, d->x = NULL;
}

/* Whether d (token 0's buffers) runs for the q->nt tokens as one launch of
 * a column each (ds4_cuda_mv.n_cols): Q8_0 or F16 weights, and each
 * buffer's tokens' copies where the columns are read and written. */
static bool cols_fit(const enq *q, const ds4_cuda_mv *d) {
    const ds4_cuda_engine *e = q->e;
    const size_t nin = (size_t)d->n_groups * d->n_in, act = ds4_act_row_bytes(d->wtype, nin);
    if (!q->cols || q->nt < 2 || q->nt > DS4_CUDA_MV_COLS || (d->wtype != DS4_TYPE_Q8_0 && d->wtype != DS4_TYPE_F16))
        return false;
    if (d->x ? nin % 4 || tok_stride(e, d->x) != (ptrdiff_t)(nin * sizeof(float))
             : act % 16 || tok_stride(e, (const uint8_t *)d->act) != (ptrdiff_t)act)
        return false;
    if (d->norm_out && tok_stride(e, d->norm_out) != (ptrdiff_t)(d->n_in * sizeof(float))) return false;
    for (uint32_t i = 0; i < d->n_seg; i++) {
        const ptrdiff_t c = tok_stride(e, d->seg[i].y);
        if (c < (ptrdiff_t)(d->seg[i].rows * sizeof(float)) || c / sizeof(float) > UINT32_MAX) return false;
    }
    return true;
}

/* d (token 0's buffers) for token t: its copies. */
static ds4_cuda_mv mv_col(const enq *q, const ds4_cuda_mv &d0, int t) {
    const ds4_cuda_engine *e = q->e;
    ds4_cuda_mv d = d0;
    d.x = tok_ptr(e, d0.x, t);
    d.act = tok_ptr(e, (const uint8_t *)d0.act, t);
    d.norm_out = tok_ptr(e, d0.norm_out, t);
    d.active = tok_ptr(e, d0.active, t);
    for (uint32_t i = 0; i < d.n_seg; i++) d.seg[i].y = tok_ptr(e, d0.seg[i].y, t);
    return d;
}

/* d (token 0's buffers, cols_fit) as one product of a column per token.
 * It works while the last token's `active` is set (the indexer's flag
 * turns on with the position and stays on). */
static ds4_cuda_mv with_cols(const enq *q, const ds4_cuda_mv &d0) {
    ds4_cuda_mv d = d0;
    d.n_cols = (uint32_t)q->nt;
    d.active = tok_ptr(q->e, d0.active, q->nt - 1);
    for (uint32_t i = 0; i < d.n_seg; i++) d.seg[i].y_col = (uint32_t)(tok_stride(q->e, d.seg[i].y) / sizeof(float));
    return d;
}

/* The product d (token 0's buffers) for the q->nt tokens: one launch with
 * a column per token where cols_fit, else a launch per token. */
static int mv_tokens(enq *q, const ds4_cuda_mv &d0) {
    ds4_cuda_engine *e = q->e;
    if (cols_fit(q, &d0)) {
        const ds4_cuda_mv d = with_cols(q, d0);
        return ds4_cuda_matvec_multi(e->k, &d, (ds4_cuda_stream)q->st, q->err);
    }
    for (int t = 0; t < q->nt; t++) {
        const ds4_cuda_mv d = mv_col(q, d0, t);
        if (ds4_cuda_matvec_multi(e->k, &d, (ds4_cuda_stream)q->st, q->err)) return -1;
    }
    return 0;
}

/* Two products that read no result of each other: one launch where the
 * types pair (ds4_cuda_matvec_pair) — for several tokens where both take
 * a column each —, else mv_tokens each. */
static int mv_pair(enq *q, const ds4_cuda_mv &a, const ds4_cuda_mv &b) {
    if (q->nt == 1) return ds4_cuda_matvec_pair(q->e->k, &a, &b, (ds4_cuda_stream)q->st, q->err);
    if (cols_fit(q, &a) && cols_fit(q, &b)) {
        const ds4_cuda_mv ac = with_cols(q, a), bc = with_cols(q, b);
        return ds4_cuda_matvec_pair(q->e->k, &ac, &bc, (ds4_cuda_stream)q->st, q->err);
    }
    return mv_tokens(q, a) || mv_tokens(q, b) ? -1 : 0;
}

/* Products of x by the matrices m[i] -> y[i] (at most 2 · DS4_CUDA_MV_SEGS;
 * token 0's buffers, for each of the q->nt tokens: mv_tokens):
 * neighbours of the same type and width share one launch, each block
 * quantising x itself, and two such launches of types that pair
 * (ds4_cuda_matvec_pair: Q8_0 and F16) become one; f32 weights (every type
 * in exact mode) take a plain warp-per-row kernel.
 * norm_w: x is RMSNormed (·norm_w) first, and the normed x written to
 * norm_out (quantised types and F16 only; by the first launch only).
 * active: see ds4_cuda_mv. */
static int mv_list(enq *q, const dmat *const *m, float *const *y, int n, const float *x, const float *norm_w = NULL,
                   float *norm_out = NULL, const int32_t *active = NULL) {
    ds4_cuda_mv d[2] = {};
    int nd = 0;
    for (int i = 0; i < n;) {
        if (m[i]->type == DS4_TYPE_F32 || q->e->exact) {
            if (norm_w) return ds4_fail(q->err, "cuda: a normed product of f32 weights or in exact mode");
            if (exact_mv(q, *m[i], m[i]->w, m[i]->rows, x, y[i])) return -1;
            i++;
            continue;
        }
        ds4_cuda_mv *c = &d[nd];
        *c = mv_of(q, *m[i], y[i], x, norm_w, nd == 0 ? norm_out : NULL, active);
        read_hc_q8(q, c);
        nd++, i++;
        while (i < n && c->n_seg < DS4_CUDA_MV_SEGS && m[i]->type == c->wtype && m[i]->in == c->n_in) {
            c->seg[c->n_seg].w = m[i]->w;
            c->seg[c->n_seg].rows = m[i]->rows;
            c->seg[c->n_seg++].y = y[i++];
        }
        if (nd == 2 || i == n || m[i]->type == DS4_TYPE_F32) {
            if (nd == 2 ? mv_pair(q, d[0], d[1]) : mv_tokens(q, d[0])) return -1;
            nd = 0;
        }
    }
    return 0;
}

static int mv(enq *q, const dmat &m, const float *x, float *y) {
    const dmat *mm = &m;
    return mv_list(q, &mm, &y, 1, x);
}

/* The split of token t's last k_hc's mix into ws.post / ws.comb, for the
 * kernel that does it (hc_split_block). */
static hc_split_args hc_split_of(const ds4_cuda_engine *e, int t, const float *scale, const float *base) {
    const dwork *w = &e->w[t];
    return hc_split_args{w->mix, scale, base, w->post, w->comb, (int)e->m->hp.hc_sinkhorn_iter, e->m->hp.hc_eps};
}

/* HC between sublayers (k_hc), for the q->nt tokens in one launch: post
 * of the finished sublayer's output y (NULL before the first), then pre of
 * the next into x / a (ws.x / ws.a for a layer's sublayers; token 0's
 * buffers, each token its own copies) and its mix into ws.mix, whose split
 * into post gates and mixing matrix (ws.post, ws.comb) a later kernel of
 * the sublayer does (hc_split_of; check_model: fn is F16 or F32).
 * Sublayer `sub` (2·layer, + 1 for the FFN) reads ws.H or ws.H2 by its
 * parity and writes the other: after every layer's two, the streams are
 * back in ws.H for the output head, whose HC (sub 2·n_layer, out_hc_mix)
 * leaves them in ws.H2. */
static int hc(enq *q, uint32_t sub, const float *y, const dmat &fn, const float *scale, const float *base,
              const float *norm_w, float *x, float *a) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    hc_io io[DS4_CUDA_VERIFY_TOKENS];
    for (int t = 0; t < q->nt; t++) {
        dwork *w = &e->w[t];
        float *at = tok_ptr(e, a, t);
        io[t] = {sub % 2 ? w->H2 : w->H, sub % 2 ? w->H : w->H2, tok_ptr(e, y, t), w->post, w->comb, w->hc_part,
                 w->hc_count, w->mix, tok_ptr(e, x, t), at, hc_writes_q8(q, at, t) ? w->aq8 : NULL};
    }
    const int cl = e->hc_cluster ? HC_BLOCKS : 0;
    cudaError_t c = cudaSuccess;
    const bool all = q->nt == DS4_CUDA_VERIFY_TOKENS && e->hc_tokens;
    auto kernel = all ? (e->hc_cluster ? k_hc<true, DS4_CUDA_VERIFY_TOKENS> : k_hc<false, DS4_CUDA_VERIFY_TOKENS>)
                      : (e->hc_cluster ? k_hc<true, 1> : k_hc<false, 1>);
    for (int t = 0; t < q->nt && c == cudaSuccess; t += all ? q->nt : 1) {
        const int n = all ? q->nt : 1;
        /* the verify step's tokens' clusters share multiprocessors (each
         * block alone: 7.86 / 7.92 against 7.77 / 7.79 ms a verify step,
         * H200, 4k); the grid form keeps every block resident alone */
        const size_t smem = n > 1 && e->hc_cluster ? 0 : e->hc_smem;
        c = pdl_launch_cluster(q->pdl, cl, kernel, n * HC_BLOCKS, HC_THREADS, smem, q->st, io[t], io[t + n - 1],
                               hp->n_embd, (const void *)fn.w, (int)(fn.type == DS4_TYPE_F16), scale, base,
                               hp->hc_eps, norm_w, hp->rms_eps);
    }
    if (c != cudaSuccess) return cuda_fail(q->err, "hc", c);
    mark(e, q->st, y ? "hc post + pre" : "hc pre");
    return 0;
}

/* The indexer's top_k of each token's visible scores into its ws.sel /
 * ws.n_sel: one block a token (k_idx_topk, the tokens' in one launch),
 * and where the context allows more than its topk_one_rows, the grid
 * top-k (k_topk_grid, a launch a token) after it; at each position one of
 * the two works and the other returns at once (the grid alone,
 * topk_one_rows 0, takes every position). */
static int idx_topk(enq *q, int top_k) {
    ds4_cuda_engine *e = q->e;
    const int g = e->topk_grid, one = e->topk_one_rows;
    topk_tok tk[DS4_CUDA_VERIFY_TOKENS];
    for (int t = 0; t < q->nt; t++) tk[t] = {e->w[t].iscores, e->w[t].sel, e->w[t].n_sel, e->w[t].io};
    if (one && run(q, "indexer top-k", q->nt > 1 ? k_idx_topk<DS4_CUDA_VERIFY_TOKENS> : k_idx_topk<1>, q->nt,
                   e->topk_threads, 0, tk[0], tk[q->nt - 1], top_k, one))
        return -1;
    for (int t = 0; t < q->nt && g; t++) {
        dwork *w = &e->w[t];
        const float *sc = w->iscores;
        const step_io *io = w->io;
        if (e->topk_cluster) {
            cudaError_t c = pdl_launch_cluster(q->pdl, g, k_topk_grid<true>, g, TOPK_GRID_THREADS, 0, q->st, sc, top_k,
                                               one, w->tkg, w->tk_wa, w->tk_wt, w->sel, w->n_sel, io);
            if (c != cudaSuccess) return cuda_fail(q->err, "indexer cluster top-k", c);
        } else if (run(q, "indexer grid top-k", k_topk_grid<false>, g, TOPK_GRID_THREADS, 0, sc, top_k, one, w->tkg,
                       w->tk_wa, w->tk_wt, w->sel, w->n_sel, io)) {
            return -1;
        }
    }
    return 0;
}

/* y = out_b·low. For quantised weights low is quantised once, by its own
 * launch, and every block of the product reads the codes: staged in each
 * of out_b's ~660 blocks, the 8192 floats were 21 MB of L2 reads on the
 * critical path (out_b took ~4 us longer than out_a, H200 timeline). */
static int out_b(enq *q, const dmat &m) {
    ds4_cuda_engine *e = q->e;
    dwork *w = &e->w[0];
    if (m.type == DS4_TYPE_F32 || m.type == DS4_TYPE_F16 || e->exact) return mv(q, m, w->low, w->y);
    ds4_cuda_mv d = mv_of(q, m, w->y, NULL, NULL, NULL, NULL);
    d.act = w->lowq;
    const ds4_cuda_stream st = (ds4_cuda_stream)q->st;
    if (cols_fit(q, &d) && tok_stride(e, w->low) == (ptrdiff_t)(m.in * sizeof(float))) /* the tokens' rows at once */
        return ds4_cuda_quantize_act(e->k, m.type, w->low, w->lowq, (uint64_t)m.in * q->nt, st, q->err) ||
                       mv_tokens(q, d) ? -1 : 0;
    for (int t = 0; t < q->nt; t++) { /* each token's in turn: its codes may overlap the next token's */
        const ds4_cuda_mv dt = mv_col(q, d, t);
        if (ds4_cuda_quantize_act(e->k, m.type, tok_ptr(e, w->low, t), (void *)dt.act, m.in, st, q->err) ||
            ds4_cuda_matvec_multi(e->k, &dt, st, q->err))
            return -1;
    }
    return 0;
}

/* k_embed's table for the window start of a ratio-R compressor, or NULL. */
static const float2 *rope_window(const rope_tabs &rt, int R) {
    for (int i = 0; i < rt.n_win; i++)
        if (rt.win_ratio[i] == R) return rt.win[i];
    return NULL;
}

/* Layer il's side row: the later token's raw row of a verify step (or of
 * the MTP's two-position step, il = n_layer) until put_side_rows. */
static uint8_t *side_row(const ds4_cuda_engine *e, uint32_t il) { return e->side + (size_t)il * e->side_row_bytes; }

/* The side rows of layers il0..il0+n-1 into their rings at the later
 * token's position (k_side_rows), once every token's attention has read
 * the rings. */
static int put_side_rows(enq *q, ds4_cuda_session *s, uint32_t il0, uint32_t n) {
    const ds4_cuda_engine *e = q->e;
    return run(q, "later token's raw rows", k_side_rows, n, 64, 0, (const uint8_t *)side_row(e, il0),
               (uint8_t *const *)s->ring_tab + il0, e->side_row_bytes, (int)e->m->hp.n_swa,
               (const step_io *)e->w[q->nt - 1].io);
}

/* Token t's arguments of k_qkv_prepare. RowT: the stored rows' type
 * (float in exact mode). */
template <typename RowT>
static prep_args<RowT> prep_of(const enq *q, ds4_cuda_session *s, uint32_t il, int t) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    const dlayer *L = &e->L[il];
    dlayer_kv *K = &s->L[il];
    dwork *w = &e->w[t];
    int hd = (int)hp->head_dim, ihd = (int)hp->indexer_head_dim;
    prep_args<RowT> pa = {};
    pa.q = w->q;
    pa.kv = w->kv;
    pa.norm_w = L->kv_a_norm;
    pa.n_head = (int)hp->n_head;
    pa.hd = hd;
    pa.n_rot = (int)hp->n_rot;
    pa.n_swa = (int)hp->n_swa;
    pa.eps = hp->rms_eps;
    pa.cs = L->ratio ? w->rope.cs1 : w->rope.cs0; /* this layer's rope kind at the token's position */
    pa.ring = (RowT *)K->raw;
    /* the verify step's later token keeps its raw row aside until every
     * token's attention has read the ring (k_side_rows), and the frontiers
     * it shifts (snap_at) */
    pa.side = t > 0 ? (RowT *)side_row(e, il) : NULL;
    const bool snap = t > 0 && t == q->nt - 1;
    pa.c[0] = {w->ckv, w->csc, L->comp_ape, L->comp_norm, K->st_kv, K->st_sc, K->comp, (int)L->ratio,
               L->ratio == 4 ? 2 : 1, hd, 0, rope_window(w->rope, (int)L->ratio),
               snap ? s->snap_at[il][0][0] : NULL, snap ? s->snap_at[il][0][1] : NULL};
    pa.c[1] = {w->ikv, w->isc, L->index_ape, L->index_norm, K->ist_kv, K->ist_sc, K->index, 4, 2, ihd, 1,
               rope_window(w->rope, 4), snap ? s->snap_at[il][1][0] : NULL, snap ? s->snap_at[il][1][1] : NULL};
    pa.n_comp = L->ratio == 4 ? 2 : L->ratio ? 1 : 0;
    pa.rp = e->rope_comp;
    pa.iq = w->iq;
    pa.iw = w->iw;
    pa.n_idx = L->ratio == 4 ? (int)hp->n_indexer_head : 0;
    pa.ihd = ihd;
    pa.exact = (int)e->exact;
    pa.ics = w->rope.cs1;
    pa.io = w->io;
    return pa;
}

/* The q/kv preparations, the compressors and the indexer's queries of the
 * q->nt tokens in one launch (k_qkv_prepare: a later token's compressor
 * updates follow the earlier one's in the same block). The kernels after
 * it that read rows of past positions before their programmatic wait
 * stage the rows this step wrote again after it, the earlier token's
 * among them. */
template <typename RowT>
static int prepare(enq *q, ds4_cuda_session *s, uint32_t il) {
    const ds4_hparams *hp = &q->e->m->hp;
    const prep_args<RowT> p0 = prep_of<RowT>(q, s, il, 0), p1 = prep_of<RowT>(q, s, il, q->nt - 1);
    const int hd = (int)hp->head_dim, ihd = (int)hp->indexer_head_dim;
    const int per = p0.n_head + 1 + (p0.n_idx + PREP_IDX_HEADS - 1) / PREP_IDX_HEADS;
    /* each block alone on its multiprocessor, the verify step's too (its
     * blocks sharing them measured equal: 7.69 / 7.71 against 7.70 / 7.68
     * ms, H200, 4k) */
    return run_alone(q, "q/kv prepare, compressors, indexer query",
                     q->nt > 1 ? k_qkv_prepare<RowT, DS4_CUDA_VERIFY_TOKENS> : k_qkv_prepare<RowT, 1>,
                     p0.n_comp + q->nt * per, PREP_THREADS, (size_t)(hd > ihd ? hd : ihd) * sizeof(float), p0, p1);
}

/* The q->nt tokens' indexer scores over their visible compressed rows and
 * their top-k (a ratio-4 layer): in official mode the scores of every
 * token in one launch (idx_scores: blockIdx.x the token, at position pos +
 * x; each token's query, weights and scores one copy apart). */
static int indexer(enq *q, ds4_cuda_session *s, uint32_t il) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    dlayer_kv *K = &s->L[il];
    dwork *w = &e->w[0];
    int nih = (int)hp->n_indexer_head, ihd = (int)hp->indexer_head_dim, top_k = (int)hp->indexer_top_k;
    /* scores: a grid fixed at capture, its blocks take every gridDim.y-th
     * row tile of the visible rows (at most comp_cap) */
    uint32_t tiles = (e->comp_cap[il] + IX_ROWS - 1) / IX_ROWS, blocks = (e->comp_cap[il] + 7) / 8;
    const uint32_t slots = e->idx_slots / q->nt > 0 ? e->idx_slots / q->nt : 1;
    const ptrdiff_t lds = tok_stride(e, w->iscores) / (ptrdiff_t)sizeof(float);
    if (!e->exact) {
        if (q->nt > 1 && (tok_stride(e, w->iq) != (ptrdiff_t)(nih * ihd * sizeof(float)) ||
                          tok_stride(e, w->iw) != (ptrdiff_t)(nih * sizeof(float))))
            return ds4_fail(q->err, "cuda: the indexer's tokens' buffers are not side by side");
        if (run(q, "indexer scores", idx_scores, dim3(q->nt, tiles < slots ? tiles : slots), IX_THREADS,
                idx_scores_smem(nih, ihd), (const float *)w->iq, (const float *)w->iw, (const __half *)K->index, ihd,
                nih, 0, (const int32_t *)&w->io->pos, top_k, w->iscores, (size_t)(q->nt > 1 ? lds : 0)))
            return -1;
    } else {
        for (int t = 0; t < q->nt; t++) {
            dwork *wt = &e->w[t];
            if (run(q, "indexer scores", k_idx_scores, blocks < 1024 ? blocks : 1024, 256, 0, (const float *)wt->iq,
                    (const float *)wt->iw, (const float *)K->index, ihd, nih, top_k, wt->iscores,
                    (const step_io *)wt->io))
                return -1;
        }
    }
    return idx_topk(q, top_k);
}

/* The q->nt tokens' attention over their windows and selected compressed
 * rows, each kernel once for all (blockIdx.z the token): the splits, then
 * their combination into ws.att (and out_a's Q8_0 input ws.attq when
 * att_q). A later token's own raw row is read from its side row. */
template <typename RowT>
static int attend(enq *q, ds4_cuda_session *s, uint32_t il, bool att_q) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    const dlayer *L = &e->L[il];
    dlayer_kv *K = &s->L[il];
    int hd = (int)hp->head_dim;
    att_tok at[DS4_CUDA_VERIFY_TOKENS];
    comb_tok ct[DS4_CUDA_VERIFY_TOKENS];
    for (int t = 0; t < q->nt; t++) {
        dwork *w = &e->w[t];
        const int *n_sel = L->ratio == 4 ? w->n_sel : NULL;
        at[t] = {w->q, w->sel, n_sel, w->io, w->att_part, w->att_ml,
                 hc_split_of(e, t, L->hc_attn_scale, L->hc_attn_base),
                 t > 0 ? (const void *)side_row(e, il) : NULL};
        ct[t] = {w->att_part, w->att_ml, w->sel, n_sel, L->ratio ? w->rope.cs1 : w->rope.cs0, w->io, w->att,
                 att_q ? w->attq : NULL};
    }
    const att_tok &a1 = at[q->nt - 1];
    const comb_tok &c1 = ct[q->nt - 1];
    const bool two = q->nt == DS4_CUDA_VERIFY_TOKENS;
    /* one extra column of blocks: the attention HC's split (a ~4 us chain
     * that the ≥ 9 us of attention hides) */
    const dim3 att_grid(hp->n_head / e->att_hg + 1, e->att_splits, q->nt);
    int att_bad; /* att_tc is never set in exact mode, where RowT is float */
    if (!e->att_tc)
        att_bad = run(q, "attention", two ? k_attention_split<RowT, DS4_CUDA_VERIFY_TOKENS> : k_attention_split<RowT, 1>,
                      att_grid, ATT_TPB, att_split_smem(e->att_hg, hd, sizeof(RowT)), at[0], a1,
                      (const RowT *)K->raw, (int)hp->n_swa, (const RowT *)K->comp, (int)L->ratio, hd, e->att_hg);
    else
        att_bad = run(q, "attention", two ? k_attention_split_tc<DS4_CUDA_VERIFY_TOKENS> : k_attention_split_tc<1>,
                      att_grid, ATT_TPB, att_split_tc_smem(hd), at[0], a1, (const __half *)K->raw, (int)hp->n_swa,
                      (const __half *)K->comp, (int)L->ratio, hd, e->att_hg);
    if (att_bad) return -1;
    /* the combination: each block alone on its multiprocessor for one
     * token; the verify step's 2·n_head blocks share them (alone: 7.79 /
     * 7.79 against 7.68 / 7.68 ms a verify step, H200, 4k) */
    const size_t comb_smem = (hd + 2 * e->att_splits) * sizeof(float);
    if (two)
        return run(q, "attention combine", k_attention_combine<DS4_CUDA_VERIFY_TOKENS>, dim3(hp->n_head, 1, q->nt), 256,
                   comb_smem, ct[0], c1, e->att_splits, (int)hp->n_swa, (int)L->ratio, L->sinks, hd, (int)hp->n_rot);
    return run_alone(q, "attention combine", k_attention_combine<1>, hp->n_head, 256, comb_smem, ct[0], c1,
                     e->att_splits, (int)hp->n_swa, (int)L->ratio, L->sinks, hd, (int)hp->n_rot);
}

/* The attention sublayer for the q->nt tokens: the products read each
 * weight row once for all (mv_tokens); the preparations (a later token's
 * compressors continue the earlier one's frontiers), the indexer and the
 * attention run once for all. Token 1's raw row, whose ring
 * slot is that of position pos + 1 - n_swa (the first of token 0's
 * window), waits aside until the step's end (k_side_rows); the rows it
 * emits are past token 0's visible counts, and its frontier updates are
 * not read by token 0. RowT: the stored rows' type (float in exact
 * mode). */
template <typename RowT>
static int attention(enq *q, ds4_cuda_session *s, uint32_t il) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    const dlayer *L = &e->L[il];
    dwork *w = &e->w[0];
    int hd = (int)hp->head_dim;
    /* the first layer and the MTP block (layer n_layer) start from their
     * input streams: no sublayer's output to add first */
    const bool first = il == 0 || il == hp->n_layer;
    if (hc(q, 2 * il, first ? NULL : w->y, L->hc_attn_fn, L->hc_attn_scale, L->hc_attn_base, L->attn_norm, w->x, w->a))
        return -1;
    /* Every product of the normed x: Q8_0 ones in one launch, F16 ones in
     * another (the indexer's head weights too: they are read only while the
     * indexer is active, and cost little). */
    const dmat *ms[7] = {&L->q_a, &L->kv};
    float *ys[7] = {w->qraw, w->kv};
    int n = 2;
    if (L->ratio) ms[n] = &L->comp_kv, ys[n++] = w->ckv, ms[n] = &L->comp_gate, ys[n++] = w->csc;
    if (L->ratio == 4) {
        ms[n] = &L->idx_comp_kv, ys[n++] = w->ikv, ms[n] = &L->idx_comp_gate, ys[n++] = w->isc;
        ms[n] = &L->idx_proj, ys[n++] = w->iw;
    }
    if (mv_list(q, ms, ys, n, w->a)) return -1;
    mark(e, q->st, "q_a, kv, compressor and indexer projections");
    /* q_b of the q_a-normed qraw; the normed rows (ws.qr) also feed the
     * indexer's query. */
    if (L->q_b.type == DS4_TYPE_F32 || e->exact) {
        for (int t = 0; t < q->nt; t++) {
            dwork *wt = &e->w[t];
            if (run(q, "q norm", k_rmsnorm, 1, 1024, 0, (const float *)wt->qraw, wt->qr, L->q_a_norm, (int)hp->q_lora,
                    (size_t)0, hp->rms_eps))
                return -1;
        }
        if (mv(q, L->q_b, w->qr, w->q)) return -1;
    } else if (L->ratio == 4 && L->idx_q_b.type != DS4_TYPE_F32) {
        /* with the indexer's query projection (only while the indexer
         * picks rows), which norms qraw itself: one launch where the types
         * pair */
        const ds4_cuda_mv dq = mv_of(q, L->q_b, w->q, w->qraw, L->q_a_norm, w->qr, NULL),
                          di = mv_of(q, L->idx_q_b, w->iq, w->qraw, L->q_a_norm, NULL, &w->io->idx_active);
        if (mv_pair(q, dq, di)) return -1;
    } else {
        const dmat *mq = &L->q_b;
        float *yq = w->q;
        if (mv_list(q, &mq, &yq, 1, w->qraw, L->q_a_norm, w->qr)) return -1;
    }
    mark(e, q->st, "attn q norm + q_b");
    /* The query projection only while the indexer picks rows. */
    if (L->ratio == 4 && (L->q_b.type == DS4_TYPE_F32 || e->exact || L->idx_q_b.type == DS4_TYPE_F32)) {
        const dmat *mi = &L->idx_q_b;
        float *yi = w->iq;
        if (L->idx_q_b.type == DS4_TYPE_F32 || e->exact ? mv(q, L->idx_q_b, w->qr, w->iq)
                                            : mv_list(q, &mi, &yi, 1, w->qr, NULL, NULL, &w->io->idx_active))
            return -1;
        mark(e, q->st, "indexer q_b");
    }
    /* a Q8_0 out_a's input quantised by the combine (each of out_a's
     * blocks quantised its group's 4096 values itself) */
    const bool att_q = !e->exact && L->out_a.type == DS4_TYPE_Q8_0 && hd % 32 == 0;
    /* the preparations, the compressors (none on a layer without a ratio)
     * and the indexer's queries in one launch */
    if (prepare<RowT>(q, s, il)) return -1;
    mark(e, q->st, "q/kv norm, rope, fp8; compressor frontiers; indexer query");
    if (L->ratio == 4) {
        if (indexer(q, s, il)) return -1;
        mark(e, q->st, "indexer scores, top-k");
    }
    if (attend<RowT>(q, s, il, att_q)) return -1;
    mark(e, q->st, "attention");
    /* Grouped output: group g's heads through rows g·o_lora.. of out_a, all
     * groups in one launch (f32 weights, exact mode: one launch per group). */
    uint32_t qdim = hp->n_head * hp->head_dim, gdim = qdim / hp->n_out_group;
    if (L->out_a.type == DS4_TYPE_F32 || e->exact) {
        for (uint32_t g = 0; g < hp->n_out_group; g++)
            if (exact_mv(q, L->out_a, L->out_a.w + (uint64_t)g * hp->o_lora * L->out_a.row_bytes, hp->o_lora,
                         w->att + (size_t)g * gdim, w->low + g * hp->o_lora))
                return -1;
    } else {
        /* rows: every group's, gdim wide; a Q8_0 out_a reads the combine's codes */
        ds4_cuda_mv d = mv_of(q, L->out_a, w->low, att_q ? NULL : w->att, NULL, NULL, NULL);
        d.n_groups = hp->n_out_group;
        if (att_q) d.act = w->attq;
        if (mv_tokens(q, d)) return -1;
    }
    mark(e, q->st, "attn out_a (grouped)");
    if (out_b(q, L->out_b)) return -1;
    mark(e, q->st, "attn out_b");
    return 0;
}

/* Whether moe_gate_up runs the quantised kernel for these gate weights,
 * the one path that can carry another product (ds4_cuda_carried_mv). */
static bool gate_up_can_carry(const ds4_cuda_engine *e, const dmat &gate) {
    return !e->exact && !plain_type(gate.type);
}

/* Expert gate/up and down (several experts, or the shared one as expert 0
 * of 1, fixed_ids): the quantised MoE kernels, or plain-float ones for
 * F16/F32, or in exact mode cuda_exact.cuh's for every type. */
static int moe_gate_up(enq *q, const dmat &gate, const dmat &up, uint32_t n_ff, uint32_t n_expert, const int32_t *ids,
                       const float *weights, uint32_t n_sel, float clamp, ds4_cuda_ids_src src, const void *x_act,
                       const float *x, float *mid, const ds4_cuda_carried_mv *carried = NULL) {
    if (carried && !gate_up_can_carry(q->e, gate))
        return ds4_fail(q->err, "cuda: the %s gate/up cannot carry another product", ds4_type_name(gate.type));
    if (q->e->exact)
        return run(q, "exact gate/up", k_exact_gate_up, (n_sel * n_ff * 32 + 255) / 256, 256, 0, gate.w, up.w,
                   gate.type, gate.row_bytes, gate.in, n_ff, n_expert, ids, weights, n_sel, clamp, x, mid);
    if (plain_type(gate.type))
        return run(q, "plain gate/up", k_moe_plain_gate_up, (n_sel * n_ff * 32 + 255) / 256, 256, 0,
                   (const void *)gate.w, (const void *)up.w, (int)(gate.type == DS4_TYPE_F16), gate.in, n_ff, n_expert,
                   ids, weights, n_sel, clamp, x, mid);
    return ds4_cuda_moe_gate_up_x(q->e->k, gate.type, gate.w, up.w, gate.in, n_ff, n_expert, ids, weights, n_sel, clamp,
                                  x_act, x, src, carried, mid, (ds4_cuda_stream)q->st, q->err);
}

static int moe_down(enq *q, const dmat &down, uint32_t n_ff, uint32_t n_out, uint32_t n_expert, const int32_t *ids,
                    uint32_t n_sel, ds4_cuda_ids_src src, const float *mid, uint8_t *act, const float *add,
                    float *out) {
    if (q->e->exact)
        return run(q, "exact down", k_exact_down, (n_out * 32 + 255) / 256, 256, 0, down.w, down.type, down.row_bytes,
                   n_ff, n_out, n_expert, ids, n_sel, mid, add, out);
    if (plain_type(down.type))
        return run(q, "plain down", k_moe_plain_down, (n_out * 32 + 255) / 256, 256, 0, (const void *)down.w,
                   (int)(down.type == DS4_TYPE_F16), n_ff, n_out, n_expert, ids, n_sel, mid, add, out);
    if (ds4_cuda_quantize_act(q->e->k, down.type, mid, act, n_sel * n_ff, (ds4_cuda_stream)q->st, q->err)) return -1;
    return ds4_cuda_moe_down_x(q->e->k, down.type, down.w, n_ff, n_out, n_expert, ids, n_sel, act, add, src, out,
                               (ds4_cuda_stream)q->st, q->err);
}

static int shared_expert(enq *q, uint32_t il);
static int shared_down(enq *q, uint32_t il, int t);

/* The shared expert's ids: fixed (expert 0 of 1, weight 1). */
static const ds4_cuda_ids_src shared_ids = {1, NULL, NULL};

/* Whether the shared expert's gate and up rows join the router's product,
 * and its SwiGLU and quantisation the router's launch (quantised gate/up
 * of one type, a Q8_0 down, not exact mode); else shared_expert(). */
static bool shared_with_router(const ds4_cuda_engine *e, const dlayer *L) {
    return !e->exact && !plain_type(L->gate_sh.type) && L->gate_sh.type == L->up_sh.type &&
           L->down_sh.type == DS4_TYPE_Q8_0 && L->gate_inp.type != DS4_TYPE_F32 && e->m->hp.n_ff_exp % 32 == 0;
}

/* Where a token's routed ids come from: its k_route's stamp for layer il. */
static ds4_cuda_ids_src route_src(const dwork *w, uint32_t il) { return {0, w->route_stamp + il, &w->io->serial}; }

/* Whether the tokens' routed experts (gate type gt, down type dt) run as
 * one launch each (ds4_cuda_moe_tokens_*): quantised experts, and the
 * buffers' tokens' copies where those kernels take them. */
static bool moe_tokens_fit(const enq *q, uint32_t gt, uint32_t dt) {
    const ds4_cuda_engine *e = q->e;
    const dwork *w = &e->w[0];
    const size_t D = e->m->hp.n_embd, nu = e->m->hp.n_expert_used, ff = e->m->hp.n_ff_exp, f = sizeof(float);
    return q->moe_tokens && q->nt > 1 && q->nt <= DS4_CUDA_MOE_TOKENS && !e->exact && !plain_type(gt) &&
           !plain_type(dt) &&
           ds4_act_row_bytes(gt, D) % 16 == 0 && tok_stride(e, w->actB) == (ptrdiff_t)ds4_act_row_bytes(gt, D) &&
           tok_stride(e, w->a) == (ptrdiff_t)(D * f) && tok_stride(e, w->ids) == (ptrdiff_t)(nu * sizeof(int32_t)) &&
           tok_stride(e, w->ew) == (ptrdiff_t)(nu * f) && tok_stride(e, w->mid) == (ptrdiff_t)(nu * ff * f) &&
           tok_stride(e, w->sh) == (ptrdiff_t)(D * f) && tok_stride(e, w->y) == (ptrdiff_t)(D * f);
}

/* The MoE sublayer for the q->nt tokens: HC and router with selection as
 * one launch each for all of them, and so the products that read weights
 * (the router's, the shared expert's, the routed experts' where
 * moe_tokens_fit; a token at a time otherwise). */
static int ffn(enq *q, uint32_t il) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    const dlayer *L = &e->L[il];
    dwork *w = &e->w[0];
    uint32_t D = hp->n_embd, ff = hp->n_ff_exp, nu = hp->n_expert_used, ne = hp->n_expert;
    if (hc(q, 2 * il + 1, w->y, L->hc_ffn_fn, L->hc_ffn_scale, L->hc_ffn_base, L->ffn_norm, w->x, w->a)) return -1;
    const bool with_router = shared_with_router(e, L);
    if (with_router) {
        ds4_cuda_mv dg = mv_of(q, L->gate_sh, w->shgu, w->a, NULL, NULL, NULL),
                    dr = mv_of(q, L->gate_inp, w->router, w->a, NULL, NULL, NULL);
        dg.seg[dg.n_seg++] = {L->up_sh.w, L->up_sh.rows, w->shgu + ff, 0};
        read_hc_q8(q, &dg);
        if (mv_pair(q, dg, dr)) return -1;
    } else if (shared_expert(q, il) || mv(q, L->gate_inp, w->a, w->router)) {
        return -1;
    }
    /* the routed gate/up's Q8_K input, quantised once here into actB (free
     * until the routed down's own input) */
    const uint32_t gt = L->gate_exps.type;
    const bool x_q8k = !e->exact && D % 256 == 0 &&
                       (gt == DS4_TYPE_IQ2_XXS || gt == DS4_TYPE_Q2_K || gt == DS4_TYPE_Q4_K);
    /* with the shared expert here: the FFN HC's split in block 1, the
     * shared SwiGLU and quantisation in 8-warp blocks after it; a row of
     * blocks a token */
    route_io ri[DS4_CUDA_VERIFY_TOKENS];
    for (int t = 0; t < q->nt; t++) {
        dwork *wt = &e->w[t];
        ri[t] = {wt->router, wt->io, wt->ids, wt->ew, wt->route_stamp + il,
                 with_router ? hc_split_of(e, t, L->hc_ffn_scale, L->hc_ffn_base) : hc_split_args{},
                 {wt->shgu, wt->smid, with_router ? wt->actA : NULL, (int)ff, L->clamp},
                 {wt->a, x_q8k ? wt->actB : NULL, (int)(D / 256)}};
    }
    const dim3 route_grid(route_blocks(ri[0].hs, ri[0].sm, ri[0].ra), q->nt);
    if (run(q, "router", q->nt == 1 ? k_route<1> : k_route<DS4_CUDA_VERIFY_TOKENS>, route_grid, 256,
            2 * ne * sizeof(float), ri[0], ri[q->nt - 1], L->probs_bias, L->tid2eid, (int)ne, (int)nu,
            hp->expert_weight_scale, (int)hp->expert_weights_norm))
        return -1;
    mark(e, q->st, "router + selection");
    const uint32_t dt = L->down_exps.type;
    if (moe_tokens_fit(q, gt, dt)) {
        const ds4_cuda_stream st = (ds4_cuda_stream)q->st;
        const uint32_t nt = (uint32_t)q->nt;
        /* every token's ids are written once the last token has its stamp
         * (k_route) */
        const ds4_cuda_ids_src routed = route_src(&e->w[nt - 1], il);
        /* the shared expert's down: expert 0 of each token where the
         * tokens' codes lie as that kernel takes them */
        if (with_router && tok_stride(e, w->actA) == (ptrdiff_t)ds4_act_row_bytes(DS4_TYPE_Q8_0, ff)) {
            if (ds4_cuda_moe_tokens_down(e->k, L->down_sh.type, L->down_sh.w, ff, D, 1, w->zero_id, nt, nt, w->actA,
                                         NULL, shared_ids, w->sh, st, q->err))
                return -1;
        } else if (with_router) {
            for (int t = 0; t < q->nt; t++)
                if (shared_down(q, il, t)) return -1;
        }
        if ((!x_q8k && ds4_cuda_quantize_act(e->k, gt, w->a, w->actB, D * nt, st, q->err)) ||
            ds4_cuda_moe_tokens_gate_up(e->k, gt, L->gate_exps.w, L->up_exps.w, D, ff, ne, w->ids, w->ew, nu * nt, nt,
                                        L->clamp, w->actB, routed, w->mid, st, q->err))
            return -1;
        mark(e, q->st, "routed gate/up");
        if (ds4_cuda_quantize_act(e->k, dt, w->mid, w->actB, nu * nt * ff, st, q->err) ||
            ds4_cuda_moe_tokens_down(e->k, dt, L->down_exps.w, ff, D, ne, w->ids, nu * nt, nt, w->actB, w->sh,
                                     routed, w->y, st, q->err))
            return -1;
        mark(e, q->st, "routed down");
        return 0;
    }
    /* a token at a time: every gate/up before the first down (a down's
     * quantised input may overlap the next token's gate/up input in actB) */
    const bool carry = with_router && gate_up_can_carry(e, L->gate_exps) && q->sh_carry;
    for (int t = 0; t < q->nt; t++) {
        dwork *wt = &e->w[t];
        /* the shared expert's down as items of the routed gate/up's launch
         * where that is the quantised kernel: one launch less a layer, its
         * weights not waiting for the router (DS4_CUDA_SHGU=0: its own
         * launch) */
        const ds4_cuda_carried_mv sh_down = {L->down_sh.w, wt->actA, wt->sh, D, ff};
        if (with_router && !carry && shared_down(q, il, t)) return -1;
        /* the routed experts' first weights as soon as k_route has chosen them */
        if (moe_gate_up(q, L->gate_exps, L->up_exps, ff, ne, wt->ids, wt->ew, nu, L->clamp, route_src(wt, il),
                        x_q8k ? wt->actB : NULL, x_q8k ? NULL : wt->a, wt->mid, carry ? &sh_down : NULL))
            return -1;
    }
    mark(e, q->st, "routed gate/up");
    for (int t = 0; t < q->nt; t++) {
        dwork *wt = &e->w[t];
        if (moe_down(q, L->down_exps, ff, D, ne, wt->ids, nu, route_src(wt, il), wt->mid, wt->actB, wt->sh, wt->y))
            return -1;
    }
    mark(e, q->st, "routed down");
    return 0;
}

/* Token t's shared expert down product of ws.actA (quantised by the
 * router's launch) into ws.sh, in line before the routed gate/up, where
 * the routed gate/up cannot carry it (F16/F32 routed experts, or
 * DS4_CUDA_SHGU=0). Carried it is +1.2% (notes/cuda-kernels.md §36); a
 * second stream beside it was +0.8% in session 21 and equal or 0.1-0.3%
 * slower from session 22 on (§34, §35). */
static int shared_down(enq *q, uint32_t il, int t) {
    ds4_cuda_engine *e = q->e;
    const dlayer *L = &e->L[il];
    dwork *w = &e->w[t];
    if (ds4_cuda_moe_down_x(e->k, L->down_sh.type, L->down_sh.w, e->m->hp.n_ff_exp, e->m->hp.n_embd, 1, w->zero_id,
                            1, w->actA, NULL, shared_ids, w->sh, (ds4_cuda_stream)q->st, q->err))
        return -1;
    mark(e, q->st, "shared expert down");
    return 0;
}

/* Shared expert: one "expert" of weight 1 through the MoE kernels, into
 * ws.sh, for the routed down to add; each token's in turn. */
static int shared_expert(enq *q, uint32_t il) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    const dlayer *L = &e->L[il];
    for (int t = 0; t < q->nt; t++) {
        dwork *w = &e->w[t];
        if (run(q, "hc split", k_hc_split, 1, 32, 0, hc_split_of(e, t, L->hc_ffn_scale, L->hc_ffn_base)) ||
            moe_gate_up(q, L->gate_sh, L->up_sh, hp->n_ff_exp, 1, w->zero_id, w->one_w, 1, L->clamp, shared_ids, NULL,
                        w->a, w->smid) ||
            moe_down(q, L->down_sh, hp->n_ff_exp, hp->n_embd, 1, w->zero_id, 1, shared_ids, w->smid, w->actA, NULL,
                     w->sh))
            return -1;
    }
    mark(e, q->st, "shared expert");
    return 0;
}

/* The output head and the greedy picks of each token (token t's two into
 * the session's d_pick + 2t). */
static int output_head(enq *q, ds4_cuda_session *s) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    /* the last FFN's HC post and the collapse (model-spec §5.3, §5.9) as
     * one more HC pre: pre = σ(mix·scale + base) + eps are the collapse's
     * weights, a = norm(Σ pre·H)·out_norm its output */
    dwork *w = &e->w[0];
    if (hc(q, 2 * hp->n_layer, w->y, e->out_hc_mix, e->out_hc_scale, e->out_hc_base, e->out_norm, w->hx, w->ehc))
        return -1;
    /* the final streams (ws.H2 now) kept for the MTP block */
    const uint32_t HD = HC_N * hp->n_embd;
    for (int t = 0; t < q->nt && s->hring; t++)
        if (run(q, "streams kept", k_hring_put, (HD + 255) / 256, 256, 0, (const float *)e->w[t].H2,
                (const step_io *)e->w[t].io, (int)hp->n_swa, HD, s->hring))
            return -1;
    if (mv(q, e->output, w->ehc, w->logits)) return -1;
    for (int t = 0; t < q->nt; t++) {
        dwork *wt = &e->w[t];
        if (run(q, "greedy pick", k_pick2, PICK_BLOCKS, PICK_THREADS, 0, (const float *)wt->logits, (int)hp->n_vocab,
                wt->pick_part, wt->pick_count, s->d_pick + 2 * t, (float *)NULL))
            return -1;
    }
    mark(e, q->st, "hc post, output head, greedy pick");
    return 0;
}

/* The MTP block at q->nt consecutive positions (model-spec §8; step_io:
 * each position q, its token t_{q+1} and the first position the MTP's
 * ring holds), read once for all as the verify step reads the model: the
 * input from the streams kept for q and the token's embedding, the block
 * as layer n_layer (a later position's raw row aside until the end,
 * k_side_rows), and with `head` the last position's head: its logits
 * (e->mtp_logits) and two most likely drafts (d_pick + MTP_PICK, their
 * logits d_mtp_logit). */
static int mtp_block(enq *q, ds4_cuda_session *s, bool head) {
    ds4_cuda_engine *e = q->e;
    const ds4_hparams *hp = &e->m->hp;
    const uint32_t il = hp->n_layer, D = hp->n_embd;
    dwork *w = &e->w[0];
    for (int t = 0; t < q->nt; t++) {
        dwork *wt = &e->w[t];
        /* k_embed: the embedding (ws.H's first stream) and the RoPE tables */
        if (run(q, "embedding", k_embed, (D + 255) / 256, 256, 0, (const void *)e->token_embd.w,
                (int)(e->token_embd.type == DS4_TYPE_F16), D, (const step_io *)wt->io, wt->H, wt->rope) ||
            run(q, "mtp input norms", k_mtp_norms, HC_N + 1, 256, 0, (const float *)s->hring, (int)hp->n_swa,
                (const float *)wt->H, e->mtp_hnorm, e->mtp_enorm, D, hp->rms_eps, (const step_io *)wt->io,
                wt->mtp_hn, wt->mtp_en))
            return -1;
    }
    if (mv(q, e->mtp_e_proj, w->mtp_en, w->x)) return -1;
    for (int h = 0; h < HC_N; h++)
        if (mv(q, e->mtp_h_proj, w->mtp_hn + (size_t)h * D, w->H + (size_t)h * D)) return -1;
    for (int t = 0; t < q->nt; t++)
        if (run(q, "mtp input", k_mtp_join, (HC_N * D + 255) / 256, 256, 0, e->w[t].H, (const float *)e->w[t].x, D))
            return -1;
    mark(e, q->st, "mtp input");
    if ((e->exact ? attention<float>(q, s, il) : attention<__half>(q, s, il)) || ffn(q, il)) return -1;
    if (q->nt > 1 && put_side_rows(q, s, il, 1)) return -1;
    if (!head) return 0;
    /* its head: as the model's (output_head) with its own collapse and
     * norm, the vocabulary product for the last position only */
    enq last = *q;
    last.nt = 1;
    if (hc(q, 2 * il + 2, w->y, e->mtp_hc_mix, e->mtp_hc_scale, e->mtp_hc_base, e->mtp_norm, w->hx, w->ehc) ||
        mv(&last, e->output, tok_ptr(e, w->ehc, q->nt - 1), e->mtp_logits) ||
        run(q, "draft pick", k_pick2, PICK_BLOCKS, PICK_THREADS, 0, (const float *)e->mtp_logits, (int)hp->n_vocab,
            w->pick_part, w->pick_count, s->d_pick + MTP_PICK, s->d_mtp_logit))
        return -1;
    mark(e, q->st, "mtp head, draft pick");
    return 0;
}

/* Switches for measuring (on unless set to 0): DS4_CUDA_PDL, programmatic
 * dependent launch (also off once a capture with it failed; the kernels
 * ignore it where the device lacks it); DS4_CUDA_HCQ8, k_hc's Q8_0 copy of
 * a (hc_writes_q8); DS4_CUDA_SHGU, the shared expert's down carried by the
 * routed gate/up's launch (ffn); DS4_CUDA_VERIFY_COLS and
 * DS4_CUDA_VERIFY_MOE, the verify step's products and routed experts for
 * its tokens at once (cols_fit, moe_tokens_fit; else a token at a time).
 * DS4_CUDA_WAVES=n: every matrix kernel's
 * grid is n waves of resident blocks (ds4_cuda_kernels_set_waves; default
 * per kernel); DS4_CUDA_SPLIT=n, DS4_CUDA_DEEP=1:
 * ds4_cuda_kernels_set_matvec_tuning. */
static bool env_on(const char *name) {
    const char *v = getenv(name);
    return !(v && !strcmp(v, "0"));
}

/* What a step runs: the model for its tokens, or the MTP block at its
 * positions without or with its head (mtp_block). */
enum step_part { STEP_MODEL, STEP_MTP, STEP_MTP_HEAD };

/* The whole step of nt tokens (1, or the verify step's; the MTP block's
 * one or two positions), enqueued on the engine's stream. */
static int enqueue_step(ds4_cuda_session *s, int nt, step_part part, ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    const ds4_hparams *hp = &e->m->hp;
    ds4_cuda_kernels_set_pdl(e->k, !e->w[0].pdl_failed && env_on("DS4_CUDA_PDL"));
    const char *waves = getenv("DS4_CUDA_WAVES");
    ds4_cuda_kernels_set_waves(e->k, waves ? atoi(waves) : 0);
    const char *split = getenv("DS4_CUDA_SPLIT"), *deep = getenv("DS4_CUDA_DEEP");
    ds4_cuda_kernels_set_matvec_tuning(e->k, split ? atoi(split) : 0, deep && !strcmp(deep, "1"));
    enq q = {e, e->stream, err, ds4_cuda_kernels_pdl(e->k) != 0, env_on("DS4_CUDA_HCQ8"), env_on("DS4_CUDA_SHGU"),
             nt, env_on("DS4_CUDA_VERIFY_COLS"), env_on("DS4_CUDA_VERIFY_MOE")};
    e->n_ev = 0;
    mark(e, q.st, "start");
    if (part != STEP_MODEL) return mtp_block(&q, s, part == STEP_MTP_HEAD);
    for (int t = 0; t < nt; t++)
        if (run(&q, "embedding", k_embed, (hp->n_embd + 255) / 256, 256, 0, (const void *)e->token_embd.w,
                (int)(e->token_embd.type == DS4_TYPE_F16), hp->n_embd, (const step_io *)e->w[t].io, e->w[t].H,
                e->w[t].rope))
            return -1;
    mark(e, q.st, "embedding");
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if ((e->exact ? attention<float>(&q, s, il) : attention<__half>(&q, s, il)) || ffn(&q, il)) return -1;
    if (nt > 1 && put_side_rows(&q, s, 0, hp->n_layer)) return -1;
    return output_head(&q, s);
}

/* ------------------------------------------------------------ sessions */

extern "C" int ds4_cuda_session_new(ds4_cuda_engine *e, ds4_cuda_session **out, ds4_err *err) {
    *out = NULL;
    const ds4_hparams *hp = &e->m->hp;
    ds4_cuda_session *s = (ds4_cuda_session *)calloc(1, sizeof *s);
    if (!s) return ds4_fail(err, "cuda: out of host memory");
    s->e = e;
    size_t total = session_layout(e, (uint32_t)e->ctx, NULL, NULL);
    cudaError_t c0 = cudaMalloc(&s->state, total ? total : 256);
    if (c0 != cudaSuccess) {
        free(s);
        return ds4_fail(err, "cuda: a %d-token session needs %.1f MiB of device memory: %s", e->ctx,
                        total / 1048576.0, cudaGetErrorString(c0));
    }
    session_layout(e, (uint32_t)e->ctx, s, (uint8_t *)s->state);
    cudaError_t c = cudaMemset(s->state, 0, total ? total : 256);
    if (c == cudaSuccess) c = cudaMallocHost(&s->h_io, (DS4_CUDA_VERIFY_TOKENS + MTP_IO_SLOTS) * sizeof(step_io));
    if (c == cudaSuccess) c = cudaMallocHost(&s->h_logits, hp->n_vocab * sizeof(float));
    if (c == cudaSuccess) memset(s->h_logits, 0, hp->n_vocab * sizeof(float));
    if (c == cudaSuccess) c = cudaHostAlloc(&s->h_pick, (MTP_PICK + 2) * sizeof(int32_t), cudaHostAllocMapped);
    if (c == cudaSuccess) c = cudaHostGetDevicePointer(&s->d_pick, s->h_pick, 0);
    if (c == cudaSuccess) c = cudaHostAlloc(&s->h_mtp_logit, 2 * sizeof(float), cudaHostAllocMapped);
    if (c == cudaSuccess) c = cudaHostGetDevicePointer(&s->d_mtp_logit, s->h_mtp_logit, 0);
    const uint32_t n_rings = hp->n_layer + (s->hring ? 1 : 0); /* and the MTP block's */
    if (c == cudaSuccess) c = cudaMalloc(&s->ring_tab, n_rings * sizeof *s->ring_tab);
    for (uint32_t il = 0; il < n_rings && c == cudaSuccess; il++)
        c = cudaMemcpy(s->ring_tab + il, &s->L[il].raw, sizeof *s->ring_tab, cudaMemcpyHostToDevice);
    if (c != cudaSuccess) {
        ds4_cuda_session_free(s);
        return cuda_fail(err, "session setup", c);
    }
    if (ds4_cuda_session_reset(s, err)) {
        ds4_cuda_session_free(s);
        return -1;
    }
    *out = s;
    return 0;
}

extern "C" float *ds4_cuda_session_logits(ds4_cuda_session *s) { return s->h_logits; }

/* The lazy session's logits from the workspace into its pinned buffer. */
static int fetch_lazy(ds4_cuda_engine *e, ds4_err *err) {
    ds4_cuda_session *o = e->lazy;
    if (!o) return 0;
    cudaError_t c = cudaMemcpyAsync(o->h_logits, e->w[o->cur].logits, e->m->hp.n_vocab * sizeof(float),
                                    cudaMemcpyDeviceToHost, e->stream);
    if (c == cudaSuccess && o->verify_pos >= 0) /* for a take-back (ds4_cuda_session_verify_reject) */
        c = cudaMemcpyAsync(o->h_logits0, e->w[0].logits, e->m->hp.n_vocab * sizeof(float), cudaMemcpyDeviceToHost,
                            e->stream);
    if (c == cudaSuccess) c = cudaStreamSynchronize(e->stream);
    if (c != cudaSuccess) return cuda_fail(err, "logits", c);
    e->lazy = NULL;
    return 0;
}

extern "C" int ds4_cuda_session_fetch_logits(ds4_cuda_session *s, ds4_err *err) {
    return s->e->lazy == s ? fetch_lazy(s->e, err) : 0;
}

extern "C" int ds4_cuda_session_pick(const ds4_cuda_session *s, int32_t pick[2]) {
    if (!s->pick_valid) return 0;
    pick[0] = s->h_pick[2 * s->cur];
    pick[1] = s->h_pick[2 * s->cur + 1];
    return 1;
}

extern "C" void ds4_cuda_session_verify_pick(const ds4_cuda_session *s, int t, int32_t pick[2]) {
    pick[0] = s->h_pick[2 * t];
    pick[1] = s->h_pick[2 * t + 1];
}

extern "C" void ds4_cuda_session_logits_replaced(ds4_cuda_session *s) {
    if (s->e->lazy == s) s->e->lazy = NULL;
    s->pick_valid = false;
    s->verify_pos = -1;
}

extern "C" void ds4_cuda_session_free(ds4_cuda_session *s) {
    if (!s) return;
    ds4_cuda_session_logits_replaced(s); /* the engine forgets it as the lazy one */
    if (s->graph) cudaGraphExecDestroy(s->graph);
    if (s->verify_graph) cudaGraphExecDestroy(s->verify_graph);
    for (int k = 0; k < DS4_CUDA_VERIFY_TOKENS; k++)
        for (int i = 0; i < 2; i++)
            if (s->mtp_graph[k][i]) cudaGraphExecDestroy(s->mtp_graph[k][i]);
    cudaFreeHost(s->h_mtp_logit);
    cudaFree(s->ring_tab);
    cudaFree(s->snap);
    cudaFreeHost(s->h_logits0);
    cudaFreeHost(s->h_io);
    cudaFreeHost(s->h_logits);
    cudaFreeHost(s->h_pick);
    cudaFree(s->state);
    free(s);
}

extern "C" int ds4_cuda_session_reset(ds4_cuda_session *s, ds4_err *err) {
    const ds4_hparams *hp = &s->e->m->hp;
    ds4_cuda_session_logits_replaced(s); /* and no take-back pending */
    cudaStream_t st = s->e->stream;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        dlayer_kv *K = &s->L[il];
        if (K->st_n) k_frontier_clear<<<(unsigned)((K->st_n + 255) / 256), 256, 0, st>>>(K->st_kv, K->st_sc, K->st_n);
        if (K->ist_n)
            k_frontier_clear<<<(unsigned)((K->ist_n + 255) / 256), 256, 0, st>>>(K->ist_kv, K->ist_sc, K->ist_n);
    }
    if (launched(err, "frontier reset")) return -1;
    cudaError_t c = cudaStreamSynchronize(st);
    return c == cudaSuccess ? 0 : cuda_fail(err, "frontier reset", c);
}

static int capture_once(ds4_cuda_session *s, int nt, step_part part, cudaGraphExec_t *graph, ds4_err *err) {
    cudaStream_t st = s->e->stream;
    cudaError_t c = cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal);
    if (c != cudaSuccess) return cuda_fail(err, "graph capture", c);
    int rc = enqueue_step(s, nt, part, err);
    cudaGraph_t g = NULL;
    c = cudaStreamEndCapture(st, &g);
    if (rc) {
        if (g) cudaGraphDestroy(g);
        return -1;
    }
    if (c != cudaSuccess) return cuda_fail(err, "graph capture", c);
    c = cudaGraphInstantiate(graph, g, 0);
    cudaGraphDestroy(g);
    return c == cudaSuccess ? 0 : cuda_fail(err, "graph instantiate", c);
}

/* Captures the step of nt tokens into *graph; if that fails with
 * programmatic launches, once more without them (and says so). */
static int capture(ds4_cuda_session *s, int nt, step_part part, cudaGraphExec_t *graph, ds4_err *err) {
    if (!capture_once(s, nt, part, graph, err)) return 0;
    if (!ds4_cuda_kernels_pdl(s->e->k)) return -1;
    fprintf(stderr, "cuda: capturing the step with programmatic launches failed (%s); capturing without\n", err->msg);
    cudaGetLastError();
    s->e->w[0].pdl_failed = 1;
    return capture_once(s, nt, part, graph, err);
}

#ifdef DS4_CUDA_TIMELINE
/* cuda_timeline.cuh: the last step's kernels, each with the time from its
 * wait's release to the next kernel's, when its first block arrived at the
 * wait against the release before (negative: in time to prefetch), and the
 * sum per kernel. */
static void tl_report(ds4_cuda_engine *e) {
    const void *const *k;
    size_t n = ds4_cuda_tl_labels(&k);
    if (n < 2 || n > TL_MAX) return;
    /* a series' last n stamps in time order (false: not that many); *before:
     * the stamp before them, or 0 */
    auto last_n = [&](const unsigned *cnt, const unsigned long long *ser, std::vector<unsigned long long> &out,
                      unsigned long long *before) {
        unsigned c = 0;
        std::vector<unsigned long long> all(TL_MAX);
        if (cudaMemcpy(&c, cnt, sizeof c, cudaMemcpyDeviceToHost) != cudaSuccess ||
            cudaMemcpy(all.data(), ser, all.size() * sizeof all[0], cudaMemcpyDeviceToHost) != cudaSuccess || c < n)
            return false;
        out.resize(n);
        for (size_t i = 0; i < n; i++) out[i] = all[(c - n + i) % TL_MAX];
        std::sort(out.begin(), out.end());
        *before = c > n ? all[(c - n - 1) % TL_MAX] : 0;
        return true;
    };
    std::vector<unsigned long long> last, arr;
    unsigned long long prev = 0, unused;
    if (!last_n(&e->tl->n, e->tl->t, last, &prev) || !last_n(&e->tl->na, e->tl->a, arr, &unused)) return;
    std::vector<const char *> names;
    std::vector<double> sum;
    std::vector<int> cnt;
    fprintf(stderr, "cuda timeline (step %d, %zu kernels, %.1f us from the first release to the last):\n", e->tl_step,
            n, (last[n - 1] - last[0]) / 1000.0);
    if (e->tl_n_ev > 1)
        fprintf(stderr, "  per step, averages of %d (events): host between steps %.1f us, io copy + graph %.1f us, logits copy (when asked for) %.1f us\n",
                e->tl_n_ev - 1, 1000.0 * e->tl_host_ms / (e->tl_n_ev - 1), 1000.0 * e->tl_graph_ms / (e->tl_n_ev - 1),
                1000.0 * e->tl_copy_ms / (e->tl_n_ev - 1));
    if (prev) /* the last kernel of the step before runs in this gap, and the host's work between steps */
        fprintf(stderr, "  from the step before's last release: %.1f us\n", (last[0] - prev) / 1000.0);
    for (size_t i = 0; i + 1 < n; i++) {
        const char *name = "?";
        cudaFuncGetName(&name, k[i]);
        double us = (last[i + 1] - last[i]) / 1000.0;
        double at = i ? ((double)arr[i] - (double)last[i - 1]) / 1000.0 : 0.0;
        fprintf(stderr, "  %4zu %8.2f us  arrived %+7.2f  %s\n", i, us, at, name);
        size_t j = 0;
        while (j < names.size() && strcmp(names[j], name)) j++;
        if (j == names.size()) names.push_back(name), sum.push_back(0.0), cnt.push_back(0);
        sum[j] += us, cnt[j]++;
    }
    for (size_t j = 0; j < names.size(); j++) fprintf(stderr, "  total %9.1f us x%-4d %s\n", sum[j], cnt[j], names[j]);
}
#endif

/* The inputs of a step of nt tokens from pos (step_io, written to the
 * pinned hio and copied to the device before the graph on the stream; the
 * tokens' side by side: walloc P; win_lo: the MTP block's), then the step:
 * its captured graph (made first if *graph is NULL), or under
 * DS4_CUDA_PROFILE the enqueue with an event after each operation. Not
 * waited for: hio must stay as it is until the stream has passed the
 * copy. */
static int launch_step(ds4_cuda_session *s, const int32_t *tokens, int nt, int pos, int win_lo, step_part part,
                       step_io *hio, cudaGraphExec_t *graph, const char *what, ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    if (!e->prof && !*graph && capture(s, nt, part, graph, err)) return -1;
    if (++e->serial == 0) e->serial = 1;
    for (int t = 0; t < nt; t++)
        hio[t] = {tokens[t], pos + t, (pos + t + 1) / 4 > (int)e->m->hp.indexer_top_k, e->serial, win_lo};
    cudaError_t c = cudaMemcpyAsync(e->w[0].io, hio, nt * sizeof(step_io), cudaMemcpyHostToDevice, e->stream);
    if (c == cudaSuccess && e->prof) {
        if (enqueue_step(s, nt, part, err)) return -1;
        prof_collect(e);
        return 0;
    }
    if (c == cudaSuccess) c = cudaGraphLaunch(*graph, e->stream);
    return c == cudaSuccess ? 0 : cuda_fail(err, what, c);
}

extern "C" int ds4_cuda_session_step(ds4_cuda_session *s, int32_t token, int pos, float *logits, ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    const ds4_hparams *hp = &e->m->hp;
    if (token < 0 || (uint32_t)token >= hp->n_vocab) return ds4_fail(err, "cuda: token %d outside the vocabulary", token);
    if (pos < 0 || pos >= e->ctx) return ds4_fail(err, "cuda: position %d outside the context of %d", pos, e->ctx);
#ifdef DS4_CUDA_TIMELINE
    ds4_cuda_tl_record(!e->prof && !s->graph);
#endif
    if (e->lazy && e->lazy != s && fetch_lazy(e, err)) return -1; /* the workspace's logits are the lazy one's */
    if (!e->prof && !s->graph && capture(s, 1, STEP_MODEL, &s->graph, err)) return -1;
#ifdef DS4_CUDA_TIMELINE
    ds4_cuda_tl_record(0);
#endif
#ifdef DS4_CUDA_TIMELINE
    if (!e->tl_ev[0])
        for (int i = 0; i < 6; i++) cudaEventCreate(&e->tl_ev[i]);
    cudaEventRecord(e->tl_ev[0], e->stream);
#endif
    if (launch_step(s, &token, 1, pos, 0, STEP_MODEL, s->h_io, &s->graph, "decode step", err)) return -1;
    cudaError_t c = cudaSuccess;
#ifdef DS4_CUDA_TIMELINE
    cudaEventRecord(e->tl_ev[1], e->stream);
#endif
    if (logits)
        c = cudaMemcpyAsync(s->h_logits, e->w[0].logits, hp->n_vocab * sizeof(float), cudaMemcpyDeviceToHost, e->stream);
#ifdef DS4_CUDA_TIMELINE
    cudaEventRecord(e->tl_ev[2], e->stream);
#endif
    if (c == cudaSuccess) c = cudaStreamSynchronize(e->stream);
#ifdef DS4_CUDA_TIMELINE
    if (e->tl_n_ev++ > 0) { /* host: the previous step's copy done → this step's first event */
        float ms[3] = {0, 0, 0};
        cudaEventElapsedTime(&ms[0], e->tl_ev[5], e->tl_ev[0]);
        cudaEventElapsedTime(&ms[1], e->tl_ev[0], e->tl_ev[1]);
        cudaEventElapsedTime(&ms[2], e->tl_ev[1], e->tl_ev[2]);
        e->tl_host_ms += ms[0], e->tl_graph_ms += ms[1], e->tl_copy_ms += ms[2];
    }
    for (int i = 0; i < 3; i++) std::swap(e->tl_ev[i], e->tl_ev[3 + i]);
#endif
    if (c != cudaSuccess) return cuda_fail(err, "decode step", c);
    s->pick_valid = true;
    s->cur = 0;
    s->verify_pos = -1;
    e->lazy = logits ? NULL : s;
    if (logits && logits != s->h_logits) memcpy(logits, s->h_logits, hp->n_vocab * sizeof(float));
#ifdef DS4_CUDA_TIMELINE
    if (++e->tl_step == e->tl_report) tl_report(e);
#endif
    return 0;
}

/* The verify step's frontier snapshot (snap_at: each compressor's whole
 * frontier) and pinned buffer for token 0's logits, allocated with the
 * session's first verify step. */
static int snap_alloc(ds4_cuda_session *s, ds4_err *err) {
    if (s->snap) return 0;
    const ds4_hparams *hp = &s->e->m->hp;
    size_t n = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) n += 2 * (s->L[il].st_n + s->L[il].ist_n);
    cudaError_t c = s->h_logits0 ? cudaSuccess : cudaMallocHost(&s->h_logits0, hp->n_vocab * sizeof(float));
    if (c == cudaSuccess) c = cudaMalloc(&s->snap, (n ? n : 1) * sizeof(float));
    if (c != cudaSuccess) {
        s->snap = NULL;
        return cuda_fail(err, "verify step's frontier snapshot", c);
    }
    float *at = s->snap;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const size_t len[2] = {s->L[il].st_n, s->L[il].ist_n};
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < 2; j++) {
                s->snap_at[il][k][j] = len[k] ? at : NULL;
                at += len[k];
            }
    }
    return 0;
}

extern "C" int ds4_cuda_session_verify(ds4_cuda_session *s, const int32_t tokens[DS4_CUDA_VERIFY_TOKENS], int pos,
                                       ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    const ds4_hparams *hp = &e->m->hp;
    const int nt = DS4_CUDA_VERIFY_TOKENS;
    for (int t = 0; t < nt; t++)
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= hp->n_vocab)
            return ds4_fail(err, "cuda: token %d outside the vocabulary", tokens[t]);
    if (pos < 0 || pos > e->ctx - nt)
        return ds4_fail(err, "cuda: positions %d..%d outside the context of %d", pos, pos + nt - 1, e->ctx);
    if (e->lazy && e->lazy != s && fetch_lazy(e, err)) return -1; /* the workspace's logits are the lazy one's */
#ifdef DS4_CUDA_TIMELINE
    ds4_cuda_tl_record(!e->prof && !s->verify_graph); /* its kernels replace the step's in the report */
#endif
    if (snap_alloc(s, err) || (!e->prof && !s->verify_graph && capture(s, nt, STEP_MODEL, &s->verify_graph, err)))
        return -1;
#ifdef DS4_CUDA_TIMELINE
    ds4_cuda_tl_record(0);
#endif
    if (launch_step(s, tokens, nt, pos, 0, STEP_MODEL, s->h_io, &s->verify_graph, "verify step", err)) return -1;
    cudaError_t c = cudaStreamSynchronize(e->stream);
    if (c != cudaSuccess) return cuda_fail(err, "verify step", c);
    s->pick_valid = true;
    s->cur = nt - 1;
    s->verify_pos = pos;
    e->lazy = s;
#ifdef DS4_CUDA_TIMELINE
    if (++e->tl_vstep == e->tl_report) tl_report(e);
#endif
    return 0;
}

extern "C" bool ds4_cuda_session_verify_pending(const ds4_cuda_session *s) { return s->verify_pos >= 0; }

extern "C" int ds4_cuda_session_verify_reject(ds4_cuda_session *s, ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    const ds4_hparams *hp = &e->m->hp;
    if (s->verify_pos < 0) return ds4_fail(err, "cuda: nothing to take back (no verify step last)");
    /* the frontiers the draft's position closed a window of */
    const int p = s->verify_pos + 1;
    cudaError_t c = cudaSuccess;
    for (uint32_t il = 0; il < hp->n_layer && c == cudaSuccess; il++) {
        dlayer_kv *K = &s->L[il];
        const int r = (int)e->L[il].ratio;
        if (!r || (p + 1) % r) continue;
        float *const dst[2][2] = {{K->st_kv, K->st_sc}, {K->ist_kv, K->ist_sc}}; /* snap_at's order */
        const size_t len[2] = {K->st_n, K->ist_n};
        for (int k = 0; k < 2; k++)
            for (int j = 0; j < 2 && len[k] && c == cudaSuccess; j++)
                c = cudaMemcpyAsync(dst[k][j], s->snap_at[il][k][j], len[k] * sizeof(float), cudaMemcpyDeviceToDevice,
                                    e->stream);
    }
    if (c == cudaSuccess) c = cudaStreamSynchronize(e->stream);
    if (c != cudaSuccess) return cuda_fail(err, "verify step's take-back", c);
    /* token 0's logits, where the session's buffer holds token 1's already
     * (fetch_lazy kept them) */
    if (e->lazy != s) memcpy(s->h_logits, s->h_logits0, hp->n_vocab * sizeof(float));
    s->cur = 0;
    s->verify_pos = -1;
    return 0;
}

extern "C" int ds4_cuda_session_mtp(ds4_cuda_session *s, const int32_t *tokens, int q0, int n, int raw_lo, bool head,
                                    int32_t pick[2], float pick_logit[2], float *logits, ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    const ds4_hparams *hp = &e->m->hp;
    if (!s->hring) return ds4_fail(err, "cuda: the engine has no MTP block");
    if (n < 1 || q0 < 0 || q0 + n > e->ctx || raw_lo < 0 || raw_lo > q0)
        return ds4_fail(err, "cuda: MTP positions %d..%d (ring from %d) outside the context of %d", q0, q0 + n - 1,
                        raw_lo, e->ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= hp->n_vocab)
            return ds4_fail(err, "cuda: token %d outside the vocabulary", tokens[i]);
    /* the step's logits (w[].logits, the lazy session's) and picks stay:
     * the block writes only its own; the positions go back to back, each
     * with its own pinned inputs, the host waiting when they run out */
    cudaError_t c = cudaSuccess;
    for (int i = 0, k, launch = 0; i < n && c == cudaSuccess; i += k, launch++) {
        k = n - i >= DS4_CUDA_VERIFY_TOKENS ? DS4_CUDA_VERIFY_TOKENS : 1; /* positions a step */
        const bool h = head && i + k == n;
        const int slot = launch % (MTP_IO_SLOTS / DS4_CUDA_VERIFY_TOKENS);
        if (launch && !slot) c = cudaStreamSynchronize(e->stream);
        if (c == cudaSuccess &&
            launch_step(s, tokens + i, k, q0 + i, raw_lo, h ? STEP_MTP_HEAD : STEP_MTP,
                        s->h_io + DS4_CUDA_VERIFY_TOKENS * (1 + slot), &s->mtp_graph[k - 1][h], "MTP step", err))
            return -1;
    }
    if (c == cudaSuccess) c = head && logits ? cudaMemcpyAsync(logits, e->mtp_logits, hp->n_vocab * sizeof(float),
                                                     cudaMemcpyDeviceToHost, e->stream)
                                   : cudaSuccess;
    if (c == cudaSuccess) c = cudaStreamSynchronize(e->stream);
    if (c != cudaSuccess) return cuda_fail(err, "MTP step", c);
    if (head) {
        pick[0] = s->h_pick[MTP_PICK], pick[1] = s->h_pick[MTP_PICK + 1];
        pick_logit[0] = s->h_mtp_logit[0], pick_logit[1] = s->h_mtp_logit[1];
    }
    return 0;
}

extern "C" int ds4_cuda_session_debug_read(ds4_cuda_session *s, const char *name, void *dst, size_t bytes,
                                           ds4_err *err) {
    dwork *w = &s->e->w[0];
    struct { const char *name; const void *p; } bufs[] = {
        {"H", w->H2}, {"x", w->x}, {"a", w->a}, {"qr", w->qr}, {"q", w->q}, {"att", w->att}, {"low", w->low},
        {"y", w->y}, {"router", w->router}, {"ids", w->ids}, {"ew", w->ew}, {"smid", w->smid}, {"sh", w->sh},
        {"mix", w->mix}, {"ehc", w->ehc}, {"sel", w->sel}, {"n_sel", w->n_sel}, {"logits", w->logits}};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++)
        if (!strcmp(bufs[i].name, name)) {
            cudaError_t c = cudaMemcpy(dst, bufs[i].p, bytes, cudaMemcpyDeviceToHost);
            return c == cudaSuccess ? 0 : cuda_fail(err, "debug read", c);
        }
    return ds4_fail(err, "cuda: no workspace buffer '%s'", name);
}

extern "C" int ds4_cuda_session_state(ds4_cuda_session *s, uint32_t layer, const char *which, void *host, size_t bytes,
                                      bool upload, ds4_err *err) {
    ds4_cuda_engine *e = s->e;
    const ds4_hparams *hp = &e->m->hp;
    const bool mtp = layer == hp->n_layer && s->hring; /* the MTP block's */
    if (layer >= hp->n_layer && !mtp) return ds4_fail(err, "cuda: no layer %u", layer);
    dlayer_kv *K = &s->L[layer];
    size_t cap = e->comp_cap[layer], el = e->exact ? sizeof(float) : sizeof(__half);
    struct { const char *name; void *p; size_t size; } bufs[] = {
        {"raw", K->raw, (size_t)hp->n_swa * hp->head_dim * el},
        {"streams", mtp ? s->hring : NULL, mtp ? (size_t)hp->n_swa * HC_N * hp->n_embd * sizeof(float) : 0},
        {"comp", K->comp, K->comp ? cap * hp->head_dim * el : 0},
        {"index", K->index, K->index ? cap * hp->indexer_head_dim * el : 0},
        {"comp_kv", K->st_kv, K->st_n * sizeof(float)}, {"comp_score", K->st_sc, K->st_n * sizeof(float)},
        {"index_kv", K->ist_kv, K->ist_n * sizeof(float)}, {"index_score", K->ist_sc, K->ist_n * sizeof(float)}};
    for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) {
        if (strcmp(bufs[i].name, which)) continue;
        if (bytes > bufs[i].size)
            return ds4_fail(err, "cuda: layer %u state '%s' holds %zu bytes, not %zu", layer, which, bufs[i].size, bytes);
        if (!bytes) return 0;
        /* on the step's stream, then wait: the next graph launch sees it */
        cudaError_t c = upload ? cudaMemcpyAsync(bufs[i].p, host, bytes, cudaMemcpyHostToDevice, e->stream)
                               : cudaMemcpyAsync(host, bufs[i].p, bytes, cudaMemcpyDeviceToHost, e->stream);
        if (c == cudaSuccess) c = cudaStreamSynchronize(e->stream);
        return c == cudaSuccess ? 0 : cuda_fail(err, "state copy", c);
    }
    return ds4_fail(err, "cuda: no state buffer '%s'", which);
}
