/* layout.c — the tensor slots of the architecture (see layout.h).
 *
 * Shapes are GGUF order (ne[0] contiguous): a projection from `in` to `out`
 * features is [in, out], stacked routed experts [in, out, n_expert]. The
 * published types are model-spec §2.2's. */
#include "layout.h"

#include <stdio.h>

#include "../quant/quant.h"

#define TOP(field) offsetof(ds4_model, field)
#define MTP(field) offsetof(ds4_mtp_model, field)
#define LAYER(field) offsetof(ds4_layer, field)

typedef struct walk {
    ds4_slot_fn fn;
    void *ctx;
    const char *prefix;
    int layer;
} walk;

static int emit(const walk *w, const char *suffix, ds4_slot_kind kind, ds4_slot_role role,
                uint32_t published, size_t offset, uint32_t n_dims, uint64_t ne0, uint64_t ne1,
                uint64_t ne2) {
    const ds4_slot s = {suffix, kind, role, published, n_dims, {ne0, ne1, ne2}, offset};
    return w->fn(w->ctx, w->prefix, w->layer, &s);
}

/* Shorthands: a projection [in, out], a vector of n. */
#define LIN(suffix, type, off, in, out) \
    TRY(emit(w, suffix, DS4_SLOT_WEIGHT, DS4_ROLE_LINEAR, type, off, 2, in, out, 1))
#define VEC(suffix, role, off, n) TRY(emit(w, suffix, DS4_SLOT_WEIGHT, role, DS4_TYPE_F32, off, 1, n, 1, 1))
#define TRY(x) do { int rc_ = (x); if (rc_) return rc_; } while (0)

/* The tensors every block has (main layers and the MTP block). */
static int block_common(const walk *w, const ds4_hparams *hp) {
    const uint64_t e = hp->n_embd, hc = (uint64_t)DS4_N_HC * e, hd = hp->head_dim;
    /* ds4-convert walks hyperparameters from a config.json not yet checked
     * against each other, so no dimension may divide by zero. */
    const uint64_t q_out = (uint64_t)hp->n_head * hd;
    const uint64_t group_in = hp->n_out_group ? q_out / hp->n_out_group : 0;
    const uint64_t o_mid = (uint64_t)hp->n_out_group * hp->o_lora, ff = hp->n_ff_exp;
    const uint64_t nx = hp->n_expert;
    LIN("hc_attn_fn.weight", DS4_TYPE_F16, LAYER(hc_attn_fn), hc, DS4_HC_MIX);
    VEC("hc_attn_scale.weight", DS4_ROLE_HC_SCALE, LAYER(hc_attn_scale), 3);
    VEC("hc_attn_base.weight", DS4_ROLE_OFFSET, LAYER(hc_attn_base), DS4_HC_MIX);
    VEC("attn_norm.weight", DS4_ROLE_NORM, LAYER(attn_norm), e);
    LIN("attn_q_a.weight", DS4_TYPE_Q8_0, LAYER(attn_q_a), e, hp->q_lora);
    VEC("attn_q_a_norm.weight", DS4_ROLE_NORM, LAYER(attn_q_a_norm), hp->q_lora);
    LIN("attn_q_b.weight", DS4_TYPE_Q8_0, LAYER(attn_q_b), hp->q_lora, q_out);
    LIN("attn_kv.weight", DS4_TYPE_Q8_0, LAYER(attn_kv), e, hd);
    VEC("attn_kv_a_norm.weight", DS4_ROLE_NORM, LAYER(attn_kv_a_norm), hd);
    VEC("attn_sinks.weight", DS4_ROLE_SINK, LAYER(attn_sinks), hp->n_head);
    LIN("attn_output_a.weight", DS4_TYPE_Q8_0, LAYER(attn_output_a), group_in, o_mid);
    LIN("attn_output_b.weight", DS4_TYPE_Q8_0, LAYER(attn_output_b), o_mid, e);
    LIN("hc_ffn_fn.weight", DS4_TYPE_F16, LAYER(hc_ffn_fn), hc, DS4_HC_MIX);
    VEC("hc_ffn_scale.weight", DS4_ROLE_HC_SCALE, LAYER(hc_ffn_scale), 3);
    VEC("hc_ffn_base.weight", DS4_ROLE_OFFSET, LAYER(hc_ffn_base), DS4_HC_MIX);
    VEC("ffn_norm.weight", DS4_ROLE_NORM, LAYER(ffn_norm), e);
    LIN("ffn_gate_inp.weight", DS4_TYPE_F16, LAYER(ffn_gate_inp), e, nx);
    TRY(emit(w, "exp_probs_b.bias", DS4_SLOT_BIAS, DS4_ROLE_OFFSET, DS4_TYPE_F32, LAYER(exp_probs_b),
             1, nx, 1, 1));
    TRY(emit(w, "ffn_gate_exps.weight", DS4_SLOT_EXPERT_GATE, DS4_ROLE_LINEAR, DS4_TYPE_IQ2_XXS,
             LAYER(ffn_gate_exps), 3, e, ff, nx));
    TRY(emit(w, "ffn_up_exps.weight", DS4_SLOT_EXPERT_UP, DS4_ROLE_LINEAR, DS4_TYPE_IQ2_XXS,
             LAYER(ffn_up_exps), 3, e, ff, nx));
    TRY(emit(w, "ffn_down_exps.weight", DS4_SLOT_EXPERT_DOWN, DS4_ROLE_LINEAR, DS4_TYPE_Q2_K,
             LAYER(ffn_down_exps), 3, ff, e, nx));
    LIN("ffn_gate_shexp.weight", DS4_TYPE_Q8_0, LAYER(ffn_gate_shexp), e, ff);
    LIN("ffn_up_shexp.weight", DS4_TYPE_Q8_0, LAYER(ffn_up_shexp), e, ff);
    LIN("ffn_down_shexp.weight", DS4_TYPE_Q8_0, LAYER(ffn_down_shexp), ff, e);
    return 0;
}

int ds4_layout_layer(const ds4_hparams *hp, uint32_t il, ds4_slot_fn fn, void *ctx) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "blk.%u.", il);
    const walk layer = {fn, ctx, prefix, (int)il}, *w = &layer;
    const uint32_t r = hp->compress_ratio[il];
    const uint64_t e = hp->n_embd;
    TRY(block_common(w, hp));
    if (r != 0) {
        const uint64_t cw = (r == 4 ? 2 : 1) * (uint64_t)hp->head_dim;
        TRY(emit(w, "attn_compressor_ape.weight", DS4_SLOT_WEIGHT, DS4_ROLE_OFFSET, DS4_TYPE_F16,
                 LAYER(attn_compressor_ape), 2, cw, r, 1));
        LIN("attn_compressor_kv.weight", DS4_TYPE_F16, LAYER(attn_compressor_kv), e, cw);
        LIN("attn_compressor_gate.weight", DS4_TYPE_F16, LAYER(attn_compressor_gate), e, cw);
        VEC("attn_compressor_norm.weight", DS4_ROLE_NORM, LAYER(attn_compressor_norm), hp->head_dim);
    }
    if (r == 4) {
        const uint64_t id = hp->indexer_head_dim, icw = 2 * id;
        LIN("indexer.attn_q_b.weight", DS4_TYPE_F16, LAYER(indexer_attn_q_b), hp->q_lora,
            (uint64_t)hp->n_indexer_head * id);
        LIN("indexer.proj.weight", DS4_TYPE_F16, LAYER(indexer_proj), e, hp->n_indexer_head);
        TRY(emit(w, "indexer_compressor_ape.weight", DS4_SLOT_WEIGHT, DS4_ROLE_OFFSET, DS4_TYPE_F16,
                 LAYER(indexer_compressor_ape), 2, icw, 4, 1));
        LIN("indexer_compressor_kv.weight", DS4_TYPE_F16, LAYER(indexer_compressor_kv), e, icw);
        LIN("indexer_compressor_gate.weight", DS4_TYPE_F16, LAYER(indexer_compressor_gate), e, icw);
        VEC("indexer_compressor_norm.weight", DS4_ROLE_NORM, LAYER(indexer_compressor_norm), id);
    }
    if (il < hp->n_hash_layer)
        TRY(emit(w, "ffn_gate_tid2eid.weight", DS4_SLOT_TID2EID, DS4_ROLE_ROUTING, DS4_TYPE_I32,
                 LAYER(ffn_gate_tid2eid), 2, hp->n_expert_used, hp->n_vocab, 1));
    return 0;
}

int ds4_layout_top(const ds4_hparams *hp, ds4_slot_fn fn, void *ctx) {
    const uint64_t e = hp->n_embd;
    walk top = {fn, ctx, "", DS4_LAYOUT_TOP}, *w = &top;
    TRY(emit(w, "token_embd.weight", DS4_SLOT_WEIGHT, DS4_ROLE_EMBEDDING, DS4_TYPE_F16, TOP(token_embd),
             2, e, hp->n_vocab, 1));
    VEC("output_hc_base.weight", DS4_ROLE_OFFSET, TOP(output_hc_base), DS4_N_HC);
    LIN("output_hc_fn.weight", DS4_TYPE_F16, TOP(output_hc_fn), DS4_N_HC * e, DS4_N_HC);
    VEC("output_hc_scale.weight", DS4_ROLE_HC_SCALE, TOP(output_hc_scale), 1);
    VEC("output_norm.weight", DS4_ROLE_NORM, TOP(output_norm), e);
    LIN("output.weight", DS4_TYPE_Q8_0, TOP(output), e, hp->n_vocab);
    return 0;
}

int ds4_layout_mtp(const ds4_hparams *hp, ds4_slot_fn fn, void *ctx) {
    const uint64_t e = hp->n_embd;
    walk head = {fn, ctx, "mtp.0.", DS4_LAYOUT_TOP}, *w = &head;
    VEC("hc_head_base.weight", DS4_ROLE_OFFSET, MTP(hc_head_base), DS4_N_HC);
    LIN("hc_head_fn.weight", DS4_TYPE_F16, MTP(hc_head_fn), DS4_N_HC * e, DS4_N_HC);
    VEC("hc_head_scale.weight", DS4_ROLE_HC_SCALE, MTP(hc_head_scale), 1);
    LIN("e_proj.weight", DS4_TYPE_Q8_0, MTP(e_proj), e, e);
    LIN("h_proj.weight", DS4_TYPE_Q8_0, MTP(h_proj), e, e);
    VEC("enorm.weight", DS4_ROLE_NORM, MTP(enorm), e);
    VEC("hnorm.weight", DS4_ROLE_NORM, MTP(hnorm), e);
    VEC("norm.weight", DS4_ROLE_NORM, MTP(norm), e);
    const walk block = {fn, ctx, "mtp.0.", DS4_LAYOUT_MTP_BLOCK};
    return block_common(&block, hp);
}
