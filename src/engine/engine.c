/* engine.c — engine and session lifetime, and the chunked eval driver.
 *
 * ds4_engine_open loads and validates the model, checks the few shape rules
 * the forward pass relies on beyond the model loader's (engine_check_shapes),
 * copies the small per-layer tensors to f32, starts the worker threads and
 * lays out one workspace sized for a prefill chunk. Everything the decode
 * path touches is allocated here or in ds4_session_new; eval allocates
 * nothing. The workspace belongs to the engine, so evals of different
 * sessions take turns (eval_mu).
 *
 * A session holds the KV state of model-spec §7.1 for a context of ctx
 * tokens. Rows are allocated with calloc, so the pages of a long context are
 * only touched as it fills. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/quant.h"
#include "../tok/tokenizer.h"
#include "engine_impl.h"
#ifdef DS4_CUDA
#include "../backend/cuda/cuda_engine.h"
#endif

#define DEFAULT_CTX 4096
#define DEFAULT_PREFILL_CHUNK 256
#define DEFAULT_CUDA_PREFILL_CHUNK 8192

/* ---------------------------------------------------------------- checks */

static bool is_pow2(uint32_t v) { return v && (v & (v - 1)) == 0; }

static int engine_check_shapes(const ds4_model *m, bool exact, ds4_err *err) {
    const ds4_hparams *hp = &m->hp;
    if (hp->n_hc != DS4_N_HC)
        return ds4_fail(err, "hyper_connection.count is %u; the engine supports %d", hp->n_hc, DS4_N_HC);
    if (hp->n_layer < 1 || hp->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "block_count %u out of range 1..%d", hp->n_layer, DS4_MAX_LAYERS);
    if (hp->n_rot == 0 || hp->n_rot % 2 || hp->n_rot > hp->head_dim)
        return ds4_fail(err, "rope.dimension_count %u must be even and <= key_length %u", hp->n_rot,
                        hp->head_dim);
    if (hp->n_out_group == 0 || hp->n_head % hp->n_out_group)
        return ds4_fail(err, "head_count %u not divisible by output_group_count %u", hp->n_head,
                        hp->n_out_group);
    if (hp->n_swa < 1) return ds4_fail(err, "attention.sliding_window must be >= 1");
    if (hp->n_expert_used < 1 || hp->n_expert_used > hp->n_expert)
        return ds4_fail(err, "expert_used_count %u must be 1..expert_count %u", hp->n_expert_used,
                        hp->n_expert);
    if (hp->hc_sinkhorn_iter < 1) return ds4_fail(err, "hyper_connection.sinkhorn_iterations must be >= 1");
    if (!exact && (hp->head_dim - hp->n_rot) % 64)
        return ds4_fail(err, "official numerics need key_length - rope dims (%u) to be a multiple of 64 "
                        "(FP8 KV blocks); use exact mode", hp->head_dim - hp->n_rot);
    bool has_indexer = false;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = m->layers[il].compress_ratio;
        if (r == 1) return ds4_fail(err, "layer %u: compress ratio 1 is not a compression", il);
        has_indexer |= r == 4;
    }
    if (has_indexer) {
        if (hp->indexer_head_dim < hp->n_rot)
            return ds4_fail(err, "indexer key_length %u < rope dims %u", hp->indexer_head_dim, hp->n_rot);
        if (hp->indexer_top_k < 1) return ds4_fail(err, "attention.indexer.top_k must be >= 1");
        if (!exact && (!is_pow2(hp->indexer_head_dim) || hp->indexer_head_dim % 32))
            return ds4_fail(err, "official numerics need the indexer key_length (%u) to be a power of 2 "
                            ">= 32 (Hadamard + FP4); use exact mode", hp->indexer_head_dim);
    }
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_tensor *t = &m->layers[il].ffn_gate_tid2eid;
        if (!t->data) continue;
        const int32_t *v = t->data;
        uint64_t count = (uint64_t)hp->n_expert_used * hp->n_vocab;
        if (t->nbytes < count * sizeof(int32_t))
            return ds4_fail(err, "blk.%u.ffn_gate_tid2eid.weight is too small", il);
        for (uint64_t i = 0; i < count; i++)
            if (v[i] < 0 || (uint32_t)v[i] >= hp->n_expert)
                return ds4_fail(err, "blk.%u.ffn_gate_tid2eid.weight: token %llu slot %llu names expert %d "
                                "(expert_count %u)", il, (unsigned long long)(i / hp->n_expert_used),
                                (unsigned long long)(i % hp->n_expert_used), v[i], hp->n_expert);
    }
    return 0;
}

/* ------------------------------------------------------- small constants */

static uint64_t tensor_elems(const ds4_tensor *t) {
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++) n *= t->ne[d];
    return t->data ? n : 0;
}

/* An f32 copy of a small tensor at base + *off (base NULL: only counts). */
static void take_const(float **dst, const ds4_tensor *t, float *base, size_t *off) {
    uint64_t n = tensor_elems(t);
    if (base && n) {
        *dst = base + *off;
        ds4_dequantize_row(t->type, t->data, *dst, n);
    }
    *off += n;
}

static void layer_consts_take(layer_consts *c, const ds4_layer *L, float *base, size_t *off) {
    take_const(&c->hc_attn_scale, &L->hc_attn_scale, base, off);
    take_const(&c->hc_attn_base, &L->hc_attn_base, base, off);
    take_const(&c->hc_ffn_scale, &L->hc_ffn_scale, base, off);
    take_const(&c->hc_ffn_base, &L->hc_ffn_base, base, off);
    take_const(&c->attn_norm, &L->attn_norm, base, off);
    take_const(&c->q_a_norm, &L->attn_q_a_norm, base, off);
    take_const(&c->kv_a_norm, &L->attn_kv_a_norm, base, off);
    take_const(&c->sinks, &L->attn_sinks, base, off);
    take_const(&c->ffn_norm, &L->ffn_norm, base, off);
    if (L->compress_ratio) {
        take_const(&c->comp_ape, &L->attn_compressor_ape, base, off);
        take_const(&c->comp_norm, &L->attn_compressor_norm, base, off);
    }
    if (L->compress_ratio == 4) {
        take_const(&c->index_ape, &L->indexer_compressor_ape, base, off);
        take_const(&c->index_norm, &L->indexer_compressor_norm, base, off);
    }
    take_const(&c->probs_bias, &L->exp_probs_b, base, off);
}

/* Lays out (base == NULL: only counts) f32 copies of the small tensors. */
static size_t consts_layout(ds4_engine *e, float *base) {
    size_t off = 0;
    const ds4_model *m = &e->model;
    take_const(&e->out_hc_scale, &m->output_hc_scale, base, &off);
    take_const(&e->out_hc_base, &m->output_hc_base, base, &off);
    take_const(&e->out_norm, &m->output_norm, base, &off);
    for (uint32_t il = 0; il < m->hp.n_layer; il++) layer_consts_take(&e->lc[il], &m->layers[il], base, &off);
    if (e->has_mtp) {
        const ds4_mtp_model *t = &e->mtp;
        layer_consts_take(&e->mtp_lc, &t->block, base, &off);
        take_const(&e->mtp_enorm, &t->enorm, base, &off);
        take_const(&e->mtp_hnorm, &t->hnorm, base, &off);
        take_const(&e->mtp_norm, &t->norm, base, &off);
        take_const(&e->mtp_hc_scale, &t->hc_head_scale, base, &off);
        take_const(&e->mtp_hc_base, &t->hc_head_base, base, &off);
    }
    return off;
}

/* ------------------------------------------------------------- workspace */

static uint32_t max_comp_rows_attended(const ds4_engine *e) {
    const ds4_hparams *hp = &e->model.hp;
    uint32_t mx = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = e->model.layers[il].compress_ratio, rows = e->comp_cap[il];
        if (r == 4 && rows > hp->indexer_top_k) rows = hp->indexer_top_k;
        if (r && rows > mx) mx = rows;
    }
    return mx;
}

static uint32_t max_u32(uint32_t a, uint32_t b) { return a > b ? a : b; }

/* Carves every workspace buffer out of base (NULL: only sizes). */
static size_t ws_layout(ds4_engine *e, uint8_t *base) {
    const ds4_hparams *hp = &e->model.hp;
    chunk_ws *ws = &e->ws;
    size_t off = 0, n = (size_t)ws->cap;
    size_t D = hp->n_embd, HD = DS4_N_HC * D, hd = hp->head_dim, ihd = hp->indexer_head_dim;
    size_t nu = hp->n_expert_used, ff = hp->n_ff_exp;
#define CARVE(ptr, count)                                                           \
    do {                                                                            \
        size_t bytes_ = ((count) * sizeof(*(ptr)) + 63) & ~(size_t)63;              \
        if (base) (ptr) = (void *)(base + off);                                     \
        off += bytes_;                                                              \
    } while (0)
    CARVE(ws->H, n * HD);
    CARVE(ws->hc_flat, n * HD);
    CARVE(ws->mix, n * (2 * DS4_N_HC + DS4_N_HC * DS4_N_HC));
    CARVE(ws->post, n * DS4_N_HC);
    CARVE(ws->comb, n * DS4_N_HC * DS4_N_HC);
    CARVE(ws->x, n * D);
    CARVE(ws->a, n * D);
    CARVE(ws->qr, n * hp->q_lora);
    CARVE(ws->q, n * hp->n_head * hd);
    CARVE(ws->kv, n * hd);
    CARVE(ws->ckv, n * 2 * hd);
    CARVE(ws->csc, n * 2 * hd);
    CARVE(ws->ikv, n * 2 * ihd);
    CARVE(ws->isc, n * 2 * ihd);
    CARVE(ws->iq, n * hp->n_indexer_head * ihd);
    CARVE(ws->iw, n * hp->n_indexer_head);
    CARVE(ws->n_sel, n);
    CARVE(ws->sel, n * hp->indexer_top_k);
    CARVE(ws->iscores, (size_t)e->ctx / 4 + 2);
    CARVE(ws->att, n * hp->n_head * hd);
    CARVE(ws->grows, ((size_t)hp->n_swa + max_comp_rows_attended(e)) * hd);
    CARVE(ws->low, n * hp->n_out_group * hp->o_lora);
    CARVE(ws->y, n * D);
    CARVE(ws->router, n * hp->n_expert);
    CARVE(ws->eid, n * nu);
    CARVE(ws->ew, n * nu);
    CARVE(ws->sg, n * ff);
    CARVE(ws->su, n * ff);
    CARVE(ws->sh, n * D);
    CARVE(ws->ecount, (size_t)hp->n_expert + 1);
    CARVE(ws->efill, (size_t)hp->n_expert);
    CARVE(ws->gtok, n * nu);
    CARVE(ws->gslot, n * nu);
    CARVE(ws->pair_of, n * nu);
    CARVE(ws->gg, n * nu * ff);
    CARVE(ws->gu, n * nu * ff);
    CARVE(ws->gd, n * nu * D);
    CARVE(ws->mm, max_u32(2 * hp->n_expert, hp->n_out_group) + 8);
    CARVE(ws->ehc, n * D);
    CARVE(ws->wk, (size_t)e->cpu.n_threads);
    size_t rows = hp->n_swa + max_comp_rows_attended(e);
    size_t tmp = max_u32(max_u32((uint32_t)hd, (uint32_t)ihd), hp->n_expert);
    for (int w = 0; w < e->cpu.n_threads; w++) {
        worker_scratch *wk = base ? &ws->wk[w] : &(worker_scratch){0};
        CARVE(wk->rows, rows * hd);
        CARVE(wk->scores, rows);
        CARVE(wk->heap, (size_t)hp->indexer_top_k + 1);
        CARVE(wk->tmp, tmp);
    }
#undef CARVE
    return off;
}

/* Quantised-activation bytes per token of the largest batched product call
 * the forward pass makes (see attention.c, moe.c). */
static size_t act_bytes_per_token(const ds4_hparams *hp) {
    uint32_t D = hp->n_embd, gdim = hp->n_head * hp->head_dim / hp->n_out_group;
    size_t need[] = {
        6 * cpu_act_row_bytes(D),                                   /* attention inputs */
        cpu_act_row_bytes(hp->q_lora) + cpu_act_row_bytes(D),       /* q_b; indexer */
        hp->n_out_group * cpu_act_row_bytes(gdim),                  /* grouped output */
        cpu_act_row_bytes(hp->n_out_group * hp->o_lora),            /* output b */
        3 * cpu_act_row_bytes(D),                                   /* router + shared */
        cpu_act_row_bytes(hp->n_ff_exp),                            /* shared down */
        2 * (size_t)hp->n_expert_used * cpu_act_row_bytes(D),       /* expert gate/up */
        (size_t)hp->n_expert_used * cpu_act_row_bytes(hp->n_ff_exp), /* expert down */
        cpu_act_row_bytes(DS4_N_HC * D),                            /* hc fns */
    };
    size_t mx = 0;
    for (size_t i = 0; i < sizeof need / sizeof *need; i++)
        if (need[i] > mx) mx = need[i];
    return mx;
}

/* ------------------------------------------------------------ the engine */

int ds4_engine_open(ds4_engine **out, const ds4_engine_config *cfg, ds4_err *err) {
    *out = NULL;
    if (!cfg || (!cfg->model_path && !cfg->model_image))
        return ds4_fail(err, "engine: no model path given");
    /* Errors about the model start with its name. */
    const char *model_name = cfg->model_path ? cfg->model_path : "model image";
#ifdef DS4_CUDA
    /* The cuda backend runs the forward pass; NULL picks it when a GPU is present. */
    bool use_cuda = cfg->backend ? strcmp(cfg->backend, "cuda") == 0 : !cfg->exact && ds4_cuda_available();
    if (cfg->backend && !use_cuda && strcmp(cfg->backend, "cpu") != 0)
        return ds4_fail(err, "backend '%s' is not available (cpu or cuda)", cfg->backend);
#else
    if (cfg->backend && strcmp(cfg->backend, "cpu") != 0)
        return ds4_fail(err, "backend '%s' is not available in this build (only cpu)", cfg->backend);
#endif
    if (cfg->ctx < 0) return ds4_fail(err, "context size %d is negative", cfg->ctx);
    if (cfg->prefill_chunk < 0) return ds4_fail(err, "prefill chunk %d is negative", cfg->prefill_chunk);
    if (cfg->ctx > (1 << 26)) return ds4_fail(err, "context size %d is larger than %d", cfg->ctx, 1 << 26);
    if (cfg->n_synth_fills && !cfg->model_image)
        return ds4_fail(err, "engine: synthetic fills are given without a model image");
#ifdef DS4_CUDA
    if (cfg->n_synth_fills && !use_cuda)
#else
    if (cfg->n_synth_fills)
#endif
        return ds4_fail(err, "the model image leaves %u weight tensors to be generated on the GPU "
                        "(synthetic weights on the device); the cpu backend reads weights from memory: "
                        "use the cuda backend, or build the image with every tensor on the host",
                        cfg->n_synth_fills);
    ds4_engine *e = calloc(1, sizeof *e);
    if (!e) return ds4_fail(err, "out of memory");
    pthread_mutex_init(&e->eval_mu, NULL);
    int open_rc = cfg->model_path ? ds4_model_open(&e->model, cfg->model_path, err)
                                  : ds4_model_open_memory(&e->model, cfg->model_image,
                                                          cfg->model_image_size, err);
    if (open_rc != 0) {
        if (!cfg->model_path) ds4_fail_prefix(err, model_name);
        ds4_engine_close(e);
        return -1;
    }
    e->model_open = true;
    e->exact = cfg->exact;
    const ds4_hparams *hp = &e->model.hp;
    if (engine_check_shapes(&e->model, e->exact, err) != 0) {
        ds4_fail_prefix(err, model_name);
        ds4_engine_close(e);
        return -1;
    }
    if (cfg->mtp_path) {
        if (ds4_mtp_open(&e->mtp, cfg->mtp_path, hp, err) != 0) {
            ds4_engine_close(e);
            return -1;
        }
        e->has_mtp = true;
    }
    e->ctx = cfg->ctx ? cfg->ctx : DEFAULT_CTX;
    e->chunk = cfg->prefill_chunk ? cfg->prefill_chunk : DEFAULT_PREFILL_CHUNK;
    if (e->chunk > e->ctx) e->chunk = e->ctx;
    if (e->has_mtp && e->chunk < 2) { /* the verify is a chunk of two */
        ds4_engine_close(e);
        return ds4_fail(err, "MTP speculation needs a context and prefill chunk of at least 2 tokens");
    }
    e->cuda_chunk = cfg->prefill_chunk ? cfg->prefill_chunk : DEFAULT_CUDA_PREFILL_CHUNK;
    if (e->cuda_chunk > e->ctx) e->cuda_chunk = e->ctx;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = e->model.layers[il].compress_ratio;
        e->comp_cap[il] = r ? (uint32_t)e->ctx / r + 2 : 0;
    }
    rope_params_init(&e->rope_plain, hp, false);
    rope_params_init(&e->rope_comp, hp, true);

    size_t n_consts = consts_layout(e, NULL);
    e->consts_arena = malloc((n_consts ? n_consts : 1) * sizeof(float));
    if (!e->consts_arena) {
        ds4_engine_close(e);
        return ds4_fail(err, "out of memory for model constants");
    }
    consts_layout(e, e->consts_arena);

    uint32_t max_in = max_u32(DS4_N_HC * hp->n_embd, hp->q_lora);
    max_in = max_u32(max_in, hp->n_head * hp->head_dim / hp->n_out_group);
    max_in = max_u32(max_in, hp->n_out_group * hp->o_lora);
    max_in = max_u32(max_in, hp->n_ff_exp);
    int threads = cfg->threads > 0 ? cfg->threads : cpu_default_threads();
    if (cpu_ctx_init(&e->cpu, threads, e->exact, act_bytes_per_token(hp) * (size_t)e->chunk, max_in, err) != 0) {
        ds4_engine_close(e);
        return -1;
    }
    e->ws.cap = e->chunk;
    size_t ws_bytes = ws_layout(e, NULL);
    e->ws_arena = malloc(ws_bytes);
    if (!e->ws_arena) {
        ds4_engine_close(e);
        return ds4_fail(err, "out of memory for a %d-token workspace (%zu MiB)", e->chunk, ws_bytes >> 20);
    }
    ws_layout(e, e->ws_arena);
    e->tok = ds4_tokenizer_from_gguf(&e->model.file, err);
    if (!e->tok) {
        ds4_fail_prefix(err, model_name);
        ds4_engine_close(e);
        return -1;
    }
#ifdef DS4_CUDA
    if (use_cuda && ds4_cuda_engine_open((ds4_cuda_engine **)&e->cuda, &e->model, e->has_mtp ? &e->mtp : NULL,
                                         e->ctx, e->exact, cfg->quality, cfg->synth_fills, cfg->n_synth_fills,
                                         err) != 0) {
        ds4_engine_close(e);
        return -1;
    }
#endif
    *out = e;
    return 0;
}

void ds4_engine_close(ds4_engine *e) {
    if (!e) return;
#ifdef DS4_CUDA
    ds4_cuda_engine_close(e->cuda);
#endif
    cpu_ctx_free(&e->cpu);
    free(e->ws_arena);
    free(e->consts_arena);
    ds4_tokenizer_free(e->tok);
    if (e->has_mtp) ds4_mtp_close(&e->mtp);
    if (e->model_open) ds4_model_close(&e->model);
    pthread_mutex_destroy(&e->eval_mu);
    free(e);
}

const ds4_model *ds4_engine_model(const ds4_engine *e) { return &e->model; }
const ds4_tokenizer *ds4_engine_tokenizer(const ds4_engine *e) { return e->tok; }
int ds4_engine_ctx(const ds4_engine *e) { return e->ctx; }
const char *ds4_engine_backend_name(const ds4_engine *e) { return e->cuda ? "cuda" : "cpu"; }

/* -------------------------------------------------------------- sessions */

static int rows_alloc(kv_rows *r, uint32_t cap, uint32_t width, bool f16) {
    r->f16 = f16;
    r->width = width;
    r->cap = cap;
    r->data = calloc((size_t)cap * width, f16 ? sizeof(uint16_t) : sizeof(float));
    return r->data ? 0 : -1;
}

static int frontier_alloc(comp_state *st, uint32_t ratio, uint32_t hd) {
    st->ratio = ratio;
    st->coff = ratio == 4 ? 2 : 1;
    st->hd = hd;
    st->width = st->coff * hd;
    size_t n = (size_t)st->coff * ratio * st->width;
    st->kv = malloc(n * sizeof(float));
    st->score = malloc(n * sizeof(float));
    return st->kv && st->score ? 0 : -1;
}

static void frontier_clear(comp_state *st) {
    if (!st->kv) return;
    size_t n = (size_t)st->coff * st->ratio * st->width;
    for (size_t i = 0; i < n; i++) {
        st->kv[i] = 0.0f;
        st->score[i] = -INFINITY;
    }
}

int ds4_session_new(ds4_engine *e, ds4_session **out, ds4_err *err) {
    *out = NULL;
    const ds4_hparams *hp = &e->model.hp;
    ds4_session *s = calloc(1, sizeof *s);
    if (!s) return ds4_fail(err, "out of memory for a session");
    s->e = e;
    s->tokens = calloc((size_t)e->ctx, sizeof(int32_t));
    s->logits = calloc(hp->n_vocab, sizeof(float));
    s->layers = calloc(hp->n_layer, sizeof(layer_kv));
    int bad = !s->tokens || !s->logits || !s->layers;
    bool f16 = !e->exact;
    for (uint32_t il = 0; il < hp->n_layer && !bad; il++) {
        layer_kv *L = &s->layers[il];
        uint32_t r = e->model.layers[il].compress_ratio;
        bad |= rows_alloc(&L->raw, hp->n_swa, hp->head_dim, f16);
        if (r) {
            bad |= rows_alloc(&L->comp, e->comp_cap[il], hp->head_dim, f16);
            bad |= frontier_alloc(&L->comp_st, r, hp->head_dim);
        }
        if (r == 4) {
            bad |= rows_alloc(&L->index_comp, e->comp_cap[il], hp->indexer_head_dim, f16);
            bad |= frontier_alloc(&L->index_st, 4, hp->indexer_head_dim);
        }
    }
    if (!bad && e->has_mtp) bad |= spec_new(s);
    if (bad) {
        ds4_session_free(s);
        return ds4_fail(err, "out of memory for a %d-token session", e->ctx);
    }
#ifdef DS4_CUDA
    if (e->cuda && ds4_cuda_session_new(e->cuda, (ds4_cuda_session **)&s->cuda, err) != 0) {
        ds4_session_free(s);
        return -1;
    }
    if (s->cuda) { /* the device's logits land there: no copy a token */
        free(s->logits);
        s->logits = ds4_cuda_session_logits(s->cuda);
    }
#endif
    ds4_session_reset(s);
    *out = s;
    return 0;
}

void ds4_session_free(ds4_session *s) {
    if (!s) return;
#ifdef DS4_CUDA
    ds4_cuda_session_free(s->cuda);
#endif
    if (s->layers)
        for (uint32_t il = 0; il < s->e->model.hp.n_layer; il++) {
            layer_kv *L = &s->layers[il];
            free(L->raw.data);
            free(L->comp.data);
            free(L->comp_st.kv);
            free(L->comp_st.score);
            free(L->index_comp.data);
            free(L->index_st.kv);
            free(L->index_st.score);
        }
    spec_free(s);
    free(s->layers);
    free(s->tokens);
    if (!s->cuda) free(s->logits); /* else the CUDA session's, freed with it */
    free(s);
}

void ds4_session_reset(ds4_session *s) {
    s->n_tokens = 0;
#ifdef DS4_CUDA
    if (s->cuda) ds4_cuda_session_reset(s->cuda, NULL);
#endif
    memset(s->logits, 0, s->e->model.hp.n_vocab * sizeof(float));
    for (uint32_t il = 0; il < s->e->model.hp.n_layer; il++) {
        layer_kv *L = &s->layers[il];
        L->n_comp = 0;
        L->n_index_comp = 0;
        frontier_clear(&L->comp_st);
        frontier_clear(&L->index_st);
    }
    if (s->spec) spec_reset(s);
}

int ds4_session_n_tokens(const ds4_session *s) { return s->n_tokens; }
const int32_t *ds4_session_tokens(const ds4_session *s) { return s->tokens; }
int session_logits_ready(const ds4_session *s, ds4_err *err) {
#ifdef DS4_CUDA
    if (s->cuda) { /* the copy uses the engine's stream and workspace: in turn with evals */
        pthread_mutex_lock(&s->e->eval_mu);
        int rc = ds4_cuda_session_fetch_logits(s->cuda, err);
        pthread_mutex_unlock(&s->e->eval_mu);
        return rc;
    }
#endif
    (void)s, (void)err;
    return 0;
}

const float *ds4_session_logits(const ds4_session *s) {
    ds4_err err = {0};
    if (session_logits_ready(s, &err)) /* the device failed: the next eval reports it too */
        fprintf(stderr, "ds4: %s\n", err.msg);
    return s->logits;
}

int32_t ds4_session_argmax(const ds4_session *s, int32_t skip) {
#ifdef DS4_CUDA
    int32_t pick[2];
    if (s->cuda && ds4_cuda_session_pick(s->cuda, pick)) {
        const int32_t t = pick[0] != skip ? pick[0] : pick[1];
        if (t >= 0) return t; /* else no logit above -inf: the definition's fallback */
    }
#endif
    return ds4_argmax_except(ds4_session_logits(s), (int)s->e->model.hp.n_vocab, skip);
}

int32_t ds4_session_sample(const ds4_session *s, ds4_sampler *sp) {
    if (!(sp->temperature > 0.0f)) return ds4_session_argmax(s, -1); /* ds4_sample's greedy case */
    return ds4_sample(sp, ds4_session_logits(s), (int)s->e->model.hp.n_vocab);
}

/* ------------------------------------------------------------------ eval */

/* One chunk through the model: forward_chunk, or on CUDA the batched
 * prefill (the decode step token by token when every position's logits
 * are wanted). */
static int forward_any(ds4_session *s, const int32_t *tokens, int n, float *all_logits, ds4_err *err) {
#ifdef DS4_CUDA
    if (s->cuda) { /* the device keeps the final streams for the MTP itself (spec_after_forward counts them) */
        if (!all_logits && n > 1) {
            if (ds4_cuda_session_prefill(s->cuda, tokens, n, s->n_tokens, s->logits, err)) return -1;
        } else {
            uint32_t n_vocab = s->e->model.hp.n_vocab;
            for (int i = 0; i < n; i++) {
                float *dst = all_logits ? all_logits + (size_t)i * n_vocab : NULL; /* NULL: on the device until asked */
                if (ds4_cuda_session_step(s->cuda, tokens[i], s->n_tokens + i, dst, err) != 0) return -1;
            }
            if (all_logits) memcpy(s->logits, all_logits + (size_t)(n - 1) * n_vocab, n_vocab * sizeof(float));
        }
        if (s->spec) spec_after_forward(s, n);
        return 0;
    }
#endif
    forward_chunk(s, tokens, n, all_logits);
    return 0;
}

int eval_check(const ds4_session *s, const int32_t *tokens, int n, ds4_err *err) {
    const ds4_engine *e = s->e;
    uint32_t n_vocab = e->model.hp.n_vocab;
    if (n < 0) return ds4_fail(err, "eval: negative token count %d", n);
    if (n == 0) return 0;
    if (!tokens) return ds4_fail(err, "eval: no tokens given");
    if (n > e->ctx - s->n_tokens)
        return ds4_fail(err, "context full: %d tokens + %d new exceed the context of %d", s->n_tokens, n,
                        e->ctx);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= n_vocab)
            return ds4_fail(err, "eval: token %d at index %d is outside the vocabulary (%u)", tokens[i], i,
                            n_vocab);
    return 0;
}

static int eval_tokens(ds4_session *s, const int32_t *tokens, int n, float *all_logits,
                       ds4_progress_fn progress, void *progress_ctx, ds4_err *err) {
    ds4_engine *e = s->e;
    uint32_t n_vocab = e->model.hp.n_vocab;
    if (eval_check(s, tokens, n, err)) return -1;
    if (n == 0) return 0;
    pthread_mutex_lock(&e->eval_mu);
    int done = 0, rc = 0;
    while (done < n) {
        int chunk = s->cuda ? e->cuda_chunk : e->chunk;
        int m = n - done < chunk ? n - done : chunk;
        if (forward_any(s, tokens + done, m, all_logits ? all_logits + (size_t)done * n_vocab : NULL, err) != 0) {
            rc = -1;
            break;
        }
        memcpy(s->tokens + s->n_tokens, tokens + done, (size_t)m * sizeof(int32_t));
        s->n_tokens += m;
        done += m;
        if (progress && progress(progress_ctx, done, n) && done < n) {
            rc = 1;
            break;
        }
    }
    pthread_mutex_unlock(&e->eval_mu);
    return rc;
}

int ds4_session_eval(ds4_session *s, const int32_t *tokens, int n, ds4_progress_fn progress,
                     void *progress_ctx, ds4_err *err) {
    return eval_tokens(s, tokens, n, NULL, progress, progress_ctx, err);
}

int ds4_session_eval_all_logits(ds4_session *s, const int32_t *tokens, int n, float *all_logits,
                                ds4_err *err) {
    if (!all_logits && n > 0) return ds4_fail(err, "eval_all_logits: no output buffer");
    return eval_tokens(s, tokens, n, all_logits, NULL, NULL, err);
}
