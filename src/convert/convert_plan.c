/* convert_plan.c — which GGUF tensor comes from which checkpoint tensor.
 *
 * The GGUF side (names, published types, shapes) is model/layout.c's; the
 * table below adds the checkpoint names of hf-reference.md §3 (transformers
 * state-dict key, official DeepSeek key). A checkpoint tensor's shape is
 * the GGUF shape reversed ([out, in]) and holds the same values in the same
 * order. Every source is found, its logical shape checked against
 * config.json, and its encoding decided here, so the writing pass cannot
 * meet a surprise in the layout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../model/layout.h"
#include "../quant/quant.h"
#include "convert_internal.h"

/* Checkpoint names after the block prefixes ("model.layers.L." /
 * "layers.L."; none for the model's own tensors). The routed experts are
 * planned apart (plan_experts_hf, plan_experts_official). */
typedef struct ckpt_names {
    const char *gguf, *hf, *official;
} ckpt_names;

static const ckpt_names names[] = {
    {"token_embd.weight", "model.embed_tokens.weight", "embed.weight"},
    {"output_hc_base.weight", "model.hc_head.hc_base", "hc_head_base"},
    {"output_hc_fn.weight", "model.hc_head.hc_fn", "hc_head_fn"},
    {"output_hc_scale.weight", "model.hc_head.hc_scale", "hc_head_scale"},
    {"output_norm.weight", "model.norm.weight", "norm.weight"},
    {"output.weight", "lm_head.weight", "head.weight"},
    {"hc_attn_fn.weight", "attn_hc.fn", "hc_attn_fn"},
    {"hc_attn_scale.weight", "attn_hc.scale", "hc_attn_scale"},
    {"hc_attn_base.weight", "attn_hc.base", "hc_attn_base"},
    {"attn_norm.weight", "input_layernorm.weight", "attn_norm.weight"},
    {"attn_q_a.weight", "self_attn.q_a_proj.weight", "attn.wq_a.weight"},
    {"attn_q_a_norm.weight", "self_attn.q_a_norm.weight", "attn.q_norm.weight"},
    {"attn_q_b.weight", "self_attn.q_b_proj.weight", "attn.wq_b.weight"},
    {"attn_kv.weight", "self_attn.kv_proj.weight", "attn.wkv.weight"},
    {"attn_kv_a_norm.weight", "self_attn.kv_norm.weight", "attn.kv_norm.weight"},
    {"attn_sinks.weight", "self_attn.sinks", "attn.attn_sink"},
    {"attn_output_a.weight", "self_attn.o_a_proj.weight", "attn.wo_a.weight"},
    {"attn_output_b.weight", "self_attn.o_b_proj.weight", "attn.wo_b.weight"},
    {"hc_ffn_fn.weight", "ffn_hc.fn", "hc_ffn_fn"},
    {"hc_ffn_scale.weight", "ffn_hc.scale", "hc_ffn_scale"},
    {"hc_ffn_base.weight", "ffn_hc.base", "hc_ffn_base"},
    {"ffn_norm.weight", "post_attention_layernorm.weight", "ffn_norm.weight"},
    {"ffn_gate_inp.weight", "mlp.gate.weight", "ffn.gate.weight"},
    {"exp_probs_b.bias", "mlp.gate.e_score_correction_bias", "ffn.gate.bias"},
    {"ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight"},
    {"ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight"},
    {"ffn_down_shexp.weight", "mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight"},
    {"attn_compressor_ape.weight", "self_attn.compressor.position_bias", "attn.compressor.ape"},
    {"attn_compressor_kv.weight", "self_attn.compressor.kv_proj.weight", "attn.compressor.wkv.weight"},
    {"attn_compressor_gate.weight", "self_attn.compressor.gate_proj.weight", "attn.compressor.wgate.weight"},
    {"attn_compressor_norm.weight", "self_attn.compressor.kv_norm.weight", "attn.compressor.norm.weight"},
    {"indexer.attn_q_b.weight", "self_attn.compressor.indexer.q_b_proj.weight", "attn.indexer.wq_b.weight"},
    {"indexer.proj.weight", "self_attn.compressor.indexer.scorer.weights_proj.weight", "attn.indexer.weights_proj.weight"},
    {"indexer_compressor_ape.weight", "self_attn.compressor.indexer.position_bias", "attn.indexer.compressor.ape"},
    {"indexer_compressor_kv.weight", "self_attn.compressor.indexer.kv_proj.weight", "attn.indexer.compressor.wkv.weight"},
    {"indexer_compressor_gate.weight", "self_attn.compressor.indexer.gate_proj.weight", "attn.indexer.compressor.wgate.weight"},
    {"indexer_compressor_norm.weight", "self_attn.compressor.indexer.kv_norm.weight", "attn.indexer.compressor.norm.weight"},
    {"ffn_gate_tid2eid.weight", "mlp.gate.tid2eid", "ffn.gate.tid2eid"},
};

static const ckpt_names *find_names(const char *gguf) {
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(names[i].gguf, gguf)) return &names[i];
    return NULL;
}

/* The output type of a slot under the options. */
static uint32_t slot_type(const convert_plan *p, const ds4_slot *s) {
    switch (s->kind) {
    case DS4_SLOT_EXPERT_GATE: case DS4_SLOT_EXPERT_UP: return p->o->expert_gate_type;
    case DS4_SLOT_EXPERT_DOWN: return p->o->expert_down_type;
    case DS4_SLOT_TID2EID: return DS4_TYPE_I32;
    default: return ds4_weight_form_type(p->o->weights, s->published);
    }
}

/* `<w>.scale` (official: "x.weight" -> "x.scale") or `<w>_scale_inv` (transformers FP8). */
static ds4_ckpt_entry *find_scale(const convert_plan *p, const char *name) {
    char buf[256];
    size_t n = strlen(name);
    if (n > 7 && !strcmp(name + n - 7, ".weight") && n + 8 < sizeof buf) {
        snprintf(buf, sizeof buf, "%.*s.scale", (int)(n - 7), name);
        ds4_ckpt_entry *e = ds4_ckpt_find(p->ck, buf);
        if (e) return e;
    }
    if (n + 11 < sizeof buf) {
        snprintf(buf, sizeof buf, "%s_scale_inv", name);
        return ds4_ckpt_find(p->ck, buf);
    }
    return NULL;
}

static bool scale_dtype_ok(ds4_st_dtype t) {
    return t == DS4_ST_F8_E8M0 || t == DS4_ST_F32 || t == DS4_ST_BF16 || t == DS4_ST_F16;
}

static int check_scale(const char *name, const ds4_st_tensor *sc, uint64_t r, uint64_t c,
                       ds4_err *err) {
    if (!scale_dtype_ok(sc->dtype))
        return ds4_fail(err, "%s: dtype %s cannot hold scales", sc->name, ds4_st_dtype_name(sc->dtype));
    if (sc->n_dims != 2 || sc->shape[0] != r || sc->shape[1] != c) {
        char got[128];
        ds4_format_dims(got, sizeof got, sc->shape, sc->n_dims);
        return ds4_fail(err, "%s: scale of %s: expected shape [%llu,%llu], found %s", sc->name,
                        name, (unsigned long long)r, (unsigned long long)c, got);
    }
    return 0;
}

/* Finds a source, checks its logical shape (checkpoint order) and picks its encoding. */
static int find_src(convert_plan *p, const char *name, uint32_t nd, const uint64_t *want,
                    bool fp4_ok, src_ref *s, ds4_err *err) {
    ds4_ckpt_entry *e = ds4_ckpt_find(p->ck, name);
    if (!e) return ds4_fail(err, "missing %s", name);
    const ds4_st_tensor *t = e->t;
    e->used = true;
    memset(s, 0, sizeof *s);
    s->t = t;
    uint64_t shape[DS4_ST_MAX_DIMS];
    memcpy(shape, t->shape, sizeof shape);
    switch (t->dtype) {
    case DS4_ST_F32: case DS4_ST_F16: case DS4_ST_BF16: case DS4_ST_F64:
        s->enc = ENC_PLAIN;
        break;
    case DS4_ST_F8_E4M3: {
        ds4_ckpt_entry *se = find_scale(p, name);
        s->enc = se ? ENC_FP8_BLOCK : ENC_PLAIN;
        if (se) {
            s->scale = se->t;
            se->used = true;
        }
        break;
    }
    case DS4_ST_I8: case DS4_ST_U8:
        if (fp4_ok && t->n_dims >= 1) {
            s->enc = ENC_FP4;
            shape[t->n_dims - 1] *= 2;
            break;
        }
        /* fall through */
    default:
        return ds4_fail(err, "%s: dtype %s is not a weight type here", name,
                        ds4_st_dtype_name(t->dtype));
    }
    bool same = t->n_dims == nd;
    for (uint32_t i = 0; same && i < nd; i++) same = shape[i] == want[i];
    if (!same) {
        char w[128], g[128];
        ds4_format_dims(w, sizeof w, want, nd);
        ds4_format_dims(g, sizeof g, t->shape, t->n_dims);
        return ds4_fail(err, "%s: expected shape %s, found %s%s", name, w, g,
                        s->enc == ENC_FP4 ? " (FP4-packed, 2 values a byte)" : "");
    }
    s->cols = nd ? shape[nd - 1] : 1;
    s->rows = 1;
    for (uint32_t i = 0; i + 1 < nd; i++) s->rows *= shape[i];
    if (s->enc == ENC_FP8_BLOCK) {
        if (nd != 2) return ds4_fail(err, "%s: a block-scaled FP8 tensor must be 2-D", name);
        if (check_scale(name, s->scale, (s->rows + 127) / 128, (s->cols + 127) / 128, err))
            return -1;
    } else if (s->enc == ENC_FP4) {
        if (s->cols % 32) return ds4_fail(err, "%s: FP4 rows of %llu values are not whole 32-groups",
                                          name, (unsigned long long)s->cols);
        ds4_ckpt_entry *se = find_scale(p, name);
        if (!se) return ds4_fail(err, "missing the FP4 scale of %s", name);
        se->used = true;
        s->scale = se->t;
        if (check_scale(name, s->scale, s->rows, s->cols / 32, err)) return -1;
    }
    return 0;
}

static int add_out(convert_plan *p, const char *prefix, const char *name, uint32_t type,
                   uint32_t nd, const uint64_t *ne, out_tensor **out, ds4_err *err) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 64;
        out_tensor *t = realloc(p->t, cap * sizeof *t);
        if (!t) return ds4_fail(err, "out of memory");
        p->t = t;
        p->cap = cap;
    }
    out_tensor *t = &p->t[p->n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s%s", prefix, name);
    t->type = type;
    t->n_dims = nd;
    for (uint32_t i = 0; i < 3; i++) t->ne[i] = i < nd ? ne[i] : 1;
    t->threads = p->o->threads;
    const ds4_type_info *ti = ds4_type_info_get(type);
    if (!ti) return ds4_fail(err, "%s: unknown output type %u", t->name, type);
    if (t->ne[0] % ti->block_elems)
        return ds4_fail(err, "%s: rows of %llu values cannot be stored as %s (blocks of %u)",
                        t->name, (unsigned long long)t->ne[0], ti->name, ti->block_elems);
    p->n++;
    *out = t;
    return 0;
}

static int alloc_src(out_tensor *t, uint32_t n, ds4_err *err) {
    t->src = calloc(n, sizeof *t->src);
    if (!t->src) return ds4_fail(err, "out of memory");
    t->n_src = n;
    return 0;
}

static int plan_entry(convert_plan *p, const ds4_slot *sl, const char *gguf_prefix,
                      const char *src_prefix, ds4_err *err) {
    const ckpt_names *m = find_names(sl->suffix);
    if (!m) return ds4_fail(err, "internal: no checkpoint name for %s", sl->suffix);
    char name[256];
    snprintf(name, sizeof name, "%s%s", src_prefix, p->official ? m->official : m->hf);
    const uint32_t nd = sl->n_dims;
    const uint64_t want[2] = {sl->ne[nd - 1], sl->ne[0]}; /* checkpoint order */
    out_tensor *t;
    if (add_out(p, gguf_prefix, sl->suffix, slot_type(p, sl), nd, sl->ne, &t, err)) return -1;
    if (alloc_src(t, 1, err)) return -1;
    t->src_stride = t->ne[1];
    if (sl->kind == DS4_SLOT_TID2EID) {
        ds4_ckpt_entry *e = ds4_ckpt_find(p->ck, name);
        if (!e) return ds4_fail(err, "missing %s", name);
        e->used = true;
        const ds4_st_tensor *st = e->t;
        if (st->dtype != DS4_ST_I64 && st->dtype != DS4_ST_I32)
            return ds4_fail(err, "%s: dtype %s, expected I64 or I32", name, ds4_st_dtype_name(st->dtype));
        if (st->n_dims != 2 || st->shape[0] != want[0] || st->shape[1] != want[1]) {
            char w[64], g[128];
            ds4_format_dims(w, sizeof w, want, 2);
            ds4_format_dims(g, sizeof g, st->shape, st->n_dims);
            return ds4_fail(err, "%s: expected shape %s, found %s", name, w, g);
        }
        t->kind = OUT_TID2EID;
        t->n_expert = p->hp->n_expert;
        t->src[0] = (src_ref){.t = st, .enc = ENC_PLAIN, .rows = want[0], .cols = want[1]};
        return 0;
    }
    return find_src(p, name, nd, want, false, &t->src[0], err);
}

/* transformers: gate_up_proj [E, 2I, D] split in two, down_proj [E, D, I]. */
static int plan_experts_hf(convert_plan *p, const char *gp, const char *sp, ds4_err *err) {
    const ds4_hparams *hp = p->hp;
    const uint64_t E = hp->n_expert, I = hp->n_ff_exp, D = hp->n_embd;
    char name[256];
    src_ref gu, down;
    uint64_t want_gu[3] = {E, 2 * I, D}, want_down[3] = {E, D, I};
    snprintf(name, sizeof name, "%smlp.experts.gate_up_proj", sp);
    if (find_src(p, name, 3, want_gu, false, &gu, err)) return -1;
    snprintf(name, sizeof name, "%smlp.experts.down_proj", sp);
    if (find_src(p, name, 3, want_down, false, &down, err)) return -1;
    static const char *const names[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"};
    for (int k = 0; k < 3; k++) {
        uint64_t ne[3] = {k < 2 ? D : I, k < 2 ? I : D, E};
        out_tensor *t;
        if (add_out(p, gp, names[k], k < 2 ? p->o->expert_gate_type : p->o->expert_down_type, 3, ne, &t, err) ||
            alloc_src(t, 1, err))
            return -1;
        t->src[0] = k < 2 ? gu : down;
        t->src_stride = k < 2 ? 2 * I : D;
        t->src_offset = k == 1 ? I : 0;
    }
    return 0;
}

/* Official: layers.L.ffn.experts.X.w1/w3 [I, D] and w2 [D, I] per expert, often FP4. */
static int plan_experts_official(convert_plan *p, const char *gp, const char *sp, ds4_err *err) {
    const ds4_hparams *hp = p->hp;
    const uint64_t E = hp->n_expert, I = hp->n_ff_exp, D = hp->n_embd;
    static const char *const names[3] = {"ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"};
    static const char *const w[3] = {"w1", "w3", "w2"};
    for (int k = 0; k < 3; k++) {
        uint64_t ne[3] = {k < 2 ? D : I, k < 2 ? I : D, E};
        uint64_t want[2] = {ne[1], ne[0]};
        out_tensor *t;
        if (add_out(p, gp, names[k], k < 2 ? p->o->expert_gate_type : p->o->expert_down_type, 3, ne, &t, err) ||
            alloc_src(t, (uint32_t)E, err))
            return -1;
        for (uint64_t x = 0; x < E; x++) {
            char name[256];
            snprintf(name, sizeof name, "%sffn.experts.%llu.%s.weight", sp, (unsigned long long)x, w[k]);
            if (find_src(p, name, 2, want, true, &t->src[x], err)) return -1;
        }
    }
    return 0;
}

typedef struct plan_walk {
    convert_plan *p;
    char src_prefix[64];
    ds4_err *err;
} plan_walk;

static int plan_slot(void *ctx, const char *prefix, int layer, const ds4_slot *s) {
    plan_walk *w = ctx;
    convert_plan *p = w->p;
    switch (s->kind) {
    case DS4_SLOT_BIAS: /* non-hash layers only: hash layers route by tid2eid */
        if ((uint32_t)layer < p->hp->n_hash_layer) return 0;
        break;
    case DS4_SLOT_EXPERT_GATE: /* the three stacked expert tensors at once */
        return p->official ? plan_experts_official(p, prefix, w->src_prefix, w->err)
                           : plan_experts_hf(p, prefix, w->src_prefix, w->err);
    case DS4_SLOT_EXPERT_UP: case DS4_SLOT_EXPERT_DOWN: return 0;
    default: break;
    }
    return plan_entry(p, s, prefix, w->src_prefix, w->err);
}

int convert_plan_build(convert_plan *p, ds4_err *err) {
    if (ds4_ckpt_find(p->ck, "model.embed_tokens.weight")) p->official = false;
    else if (ds4_ckpt_find(p->ck, "embed.weight")) p->official = true;
    else return ds4_fail(err, "unrecognised checkpoint naming: neither model.embed_tokens.weight "
                         "(transformers) nor embed.weight (official DeepSeek) is present");
    plan_walk w = {.p = p, .err = err};
    if (ds4_layout_top(p->hp, plan_slot, &w)) return -1;
    for (uint32_t il = 0; il < p->hp->n_layer; il++) {
        snprintf(w.src_prefix, sizeof w.src_prefix, "%slayers.%u.", p->official ? "" : "model.", il);
        if (ds4_layout_layer(p->hp, il, plan_slot, &w)) return -1;
    }
    return 0;
}

void convert_plan_free(convert_plan *p) {
    for (size_t i = 0; p->t && i < p->n; i++) free(p->t[i].src);
    free(p->t);
    p->t = NULL;
    p->n = p->cap = 0;
}
