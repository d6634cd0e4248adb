/* hf_config.c — config.json to ds4_hparams (see hf_config.h).
 *
 * Field sources (hf-reference.md §3.1): every deepseek4.* dimension has one
 * config.json key; the per-layer compress ratios come from compress_ratios
 * (official, may be longer than the layer count: its last entry is the MTP
 * block) or from layer_types mapped through compress_rates (transformers);
 * the hash-routed layer count from num_hash_layers or the leading hash_moe
 * entries of mlp_layer_types; YaRN from rope_scaling (official),
 * rope_parameters.compress (transformers, nested) or a flat rope_parameters.
 * A config without YaRN gets factor 1, which makes ds4's blend the plain
 * frequencies. What ds4 hard-codes is checked rather than carried: the
 * sqrt(softplus) router without expert groups, 4 HC streams, one KV head, a ratio of 4 exactly on
 * the overlapping (CSA) layers, YaRN magnitude 1. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "hf_config.h"

typedef struct cfg {
    const char *path;
    json_t *root;
} cfg;

/* A non-negative integer (an integral real such as 64.0 is accepted too). */
static int num_u32(const cfg *c, const char *key, json_t *v, uint32_t *out, ds4_err *err) {
    double d;
    if (json_is_integer(v)) d = (double)json_integer_value(v);
    else if (json_is_real(v)) d = json_real_value(v);
    else return ds4_fail(err, "%s: %s is not a number", c->path, key);
    if (!(d >= 0 && d <= 4294967295.0) || d != floor(d))
        return ds4_fail(err, "%s: %s = %g is not a non-negative 32-bit integer", c->path, key, d);
    *out = (uint32_t)d;
    return 0;
}

static int get_u32(const cfg *c, const char *key, bool required, uint32_t def, uint32_t *out,
                   ds4_err *err) {
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        if (required) return ds4_fail(err, "%s: missing %s", c->path, key);
        *out = def;
        return 0;
    }
    return num_u32(c, key, v, out, err);
}

static int num_f64(const cfg *c, const char *key, json_t *v, double *out, ds4_err *err) {
    if (json_is_integer(v)) *out = (double)json_integer_value(v);
    else if (json_is_real(v)) *out = json_real_value(v);
    else return ds4_fail(err, "%s: %s is not a number", c->path, key);
    if (!isfinite(*out) || fabs(*out) > 3.0e38)
        return ds4_fail(err, "%s: %s = %g is not a finite float", c->path, key, *out);
    return 0;
}

/* A float from obj[key] (obj may be NULL), else def. */
static int get_f64_in(const cfg *c, json_t *obj, const char *key, double def, double *out,
                      ds4_err *err) {
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    return num_f64(c, key, v, out, err);
}

static int get_bool(const cfg *c, const char *key, bool def, bool *out, ds4_err *err) {
    json_t *v = json_object_get(c->root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) return ds4_fail(err, "%s: %s is not true or false", c->path, key);
    *out = json_is_true(v);
    return 0;
}

static json_t *get_object(json_t *obj, const char *key) {
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    return json_is_object(v) ? v : NULL;
}

static const char *get_string(json_t *obj, const char *key) {
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

typedef struct u32_field {
    const char *key;
    size_t off;
    bool required;
    uint32_t def;
} u32_field;

#define REQ(k, f) { k, offsetof(ds4_hparams, f), true, 0 }
#define OPT(k, f, d) { k, offsetof(ds4_hparams, f), false, d }

static const u32_field u32_fields[] = {
    REQ("num_hidden_layers", n_layer),
    REQ("hidden_size", n_embd),
    REQ("vocab_size", n_vocab),
    REQ("num_attention_heads", n_head),
    OPT("num_key_value_heads", n_head_kv, 1),
    REQ("head_dim", head_dim),
    REQ("q_lora_rank", q_lora),
    REQ("o_lora_rank", o_lora),
    REQ("o_groups", n_out_group),
    REQ("n_routed_experts", n_expert),
    REQ("num_experts_per_tok", n_expert_used),
    OPT("n_shared_experts", n_expert_shared, 1),
    REQ("moe_intermediate_size", n_ff_exp),
    OPT("sliding_window", n_swa, 128),
    REQ("index_n_heads", n_indexer_head),
    REQ("index_head_dim", indexer_head_dim),
    REQ("index_topk", indexer_top_k),
    OPT("hc_mult", n_hc, 4),
    OPT("hc_sinkhorn_iters", hc_sinkhorn_iter, 20),
};

static int read_rope_dims(const cfg *c, ds4_hparams *hp, ds4_err *err) {
    json_t *v = json_object_get(c->root, "qk_rope_head_dim");
    if (v && !json_is_null(v)) return num_u32(c, "qk_rope_head_dim", v, &hp->n_rot, err);
    double f;
    if (get_f64_in(c, c->root, "partial_rotary_factor", 64.0 / 512.0, &f, err)) return -1;
    double rot = f * hp->head_dim;
    if (!(rot >= 1) || rot != floor(rot))
        return ds4_fail(err, "%s: partial_rotary_factor %g x head_dim %u is not a whole number "
                        "of dims", c->path, f, hp->head_dim);
    hp->n_rot = (uint32_t)rot;
    return 0;
}

/* Per-layer ratios: compress_ratios, else layer_types through compress_rates. */
static int read_ratios(const cfg *c, ds4_hparams *hp, ds4_err *err) {
    json_t *cr = json_object_get(c->root, "compress_ratios");
    json_t *lt = json_object_get(c->root, "layer_types");
    if (json_is_array(cr)) {
        if (json_array_size(cr) < hp->n_layer)
            return ds4_fail(err, "%s: compress_ratios has %zu entries, fewer than the %u layers",
                            c->path, json_array_size(cr), hp->n_layer);
        for (uint32_t il = 0; il < hp->n_layer; il++)
            if (num_u32(c, "compress_ratios[]", json_array_get(cr, il), &hp->compress_ratio[il], err))
                return -1;
        return 0;
    }
    if (!json_is_array(lt))
        return ds4_fail(err, "%s: neither compress_ratios nor layer_types is given (transformers' "
                        "default layer pattern is V4-Pro's, not Flash's)", c->path);
    if (json_array_size(lt) < hp->n_layer)
        return ds4_fail(err, "%s: layer_types has %zu entries, fewer than the %u layers", c->path,
                        json_array_size(lt), hp->n_layer);
    json_t *rates = get_object(c->root, "compress_rates");
    uint32_t csa = 4, hca = 128;
    json_t *v;
    if ((v = rates ? json_object_get(rates, "compressed_sparse_attention") : NULL) &&
        num_u32(c, "compress_rates.compressed_sparse_attention", v, &csa, err))
        return -1;
    if ((v = rates ? json_object_get(rates, "heavily_compressed_attention") : NULL) &&
        num_u32(c, "compress_rates.heavily_compressed_attention", v, &hca, err))
        return -1;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const char *t = json_string_value(json_array_get(lt, il));
        if (!t) return ds4_fail(err, "%s: layer_types[%u] is not a string", c->path, il);
        if (!strcmp(t, "sliding_attention")) hp->compress_ratio[il] = 0;
        else if (!strcmp(t, "compressed_sparse_attention")) hp->compress_ratio[il] = csa;
        else if (!strcmp(t, "heavily_compressed_attention")) hp->compress_ratio[il] = hca;
        else return ds4_fail(err, "%s: layer_types[%u] = \"%.40s\" is unknown", c->path, il, t);
        /* ds4 overlaps windows exactly when the ratio is 4; transformers when the
         * layer is CSA. The two agree only if CSA layers use 4 and no HCA layer does. */
        if (!strcmp(t, "compressed_sparse_attention") && csa != 4)
            return ds4_fail(err, "%s: compressed_sparse_attention rate %u: ds4 needs 4", c->path, csa);
        if (!strcmp(t, "heavily_compressed_attention") && hca == 4)
            return ds4_fail(err, "%s: heavily_compressed_attention rate 4 would overlap windows "
                            "in ds4", c->path);
    }
    return 0;
}

static int read_hash_layers(const cfg *c, ds4_hparams *hp, ds4_err *err) {
    json_t *v = json_object_get(c->root, "num_hash_layers");
    if (v && !json_is_null(v)) return num_u32(c, "num_hash_layers", v, &hp->n_hash_layer, err);
    json_t *mt = json_object_get(c->root, "mlp_layer_types");
    if (!json_is_array(mt)) {
        hp->n_hash_layer = hp->n_layer < 3 ? hp->n_layer : 3; /* transformers' default */
        return 0;
    }
    if (json_array_size(mt) < hp->n_layer)
        return ds4_fail(err, "%s: mlp_layer_types has %zu entries, fewer than the %u layers",
                        c->path, json_array_size(mt), hp->n_layer);
    hp->n_hash_layer = 0;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const char *t = json_string_value(json_array_get(mt, il));
        if (!t || (strcmp(t, "hash_moe") && strcmp(t, "moe")))
            return ds4_fail(err, "%s: mlp_layer_types[%u] is not \"hash_moe\" or \"moe\"", c->path, il);
        if (!strcmp(t, "hash_moe")) {
            if (hp->n_hash_layer != il)
                return ds4_fail(err, "%s: mlp_layer_types[%u] is hash_moe after a moe layer; ds4 "
                                "hashes exactly the first layers", c->path, il);
            hp->n_hash_layer++;
        }
    }
    return 0;
}

/* rope.freq_base, compress base and YaRN. */
static int read_rope(const cfg *c, ds4_hparams *hp, ds4_err *err) {
    json_t *rp = get_object(c->root, "rope_parameters");
    json_t *main = get_object(rp, "main"), *comp = get_object(rp, "compress");
    double theta, ctheta, maxpos;
    if (get_f64_in(c, main, "rope_theta", 10000.0, &theta, err)) return -1;
    if (get_f64_in(c, c->root, "rope_theta", theta, &theta, err)) return -1;
    if (get_f64_in(c, comp, "rope_theta", 160000.0, &ctheta, err)) return -1;
    if (get_f64_in(c, c->root, "compress_rope_theta", ctheta, &ctheta, err)) return -1;
    if (get_f64_in(c, c->root, "max_position_embeddings", 1048576.0, &maxpos, err)) return -1;
    if (!(theta > 0) || !(ctheta > 0))
        return ds4_fail(err, "%s: rope_theta and compress_rope_theta must be positive", c->path);
    hp->rope_freq_base = (float)theta;
    hp->compress_rope_freq_base = (float)ctheta;
    hp->context_length = maxpos >= 1 ? (uint64_t)maxpos : 0;

    json_t *yarn = get_object(c->root, "rope_scaling");
    if (!yarn) yarn = comp;
    if (!yarn && rp && !main) yarn = rp; /* flat rope_parameters */
    const char *type = get_string(yarn, "rope_type");
    if (!type) type = get_string(yarn, "type");
    double factor = 1, orig = maxpos, bf = 32, bs = 1, af = 1;
    if (type && !strcmp(type, "yarn")) {
        if (get_f64_in(c, yarn, "factor", 1.0, &factor, err) ||
            get_f64_in(c, yarn, "original_max_position_embeddings", maxpos, &orig, err) ||
            get_f64_in(c, yarn, "beta_fast", 32.0, &bf, err) ||
            get_f64_in(c, yarn, "beta_slow", 1.0, &bs, err) ||
            get_f64_in(c, yarn, "attention_factor", 1.0, &af, err))
            return -1;
        if (af != 1.0)
            return ds4_fail(err, "%s: YaRN attention_factor %g: ds4 applies magnitude 1", c->path, af);
    } else if (type && strcmp(type, "default")) {
        return ds4_fail(err, "%s: rope type \"%.32s\" is not supported (yarn or default)", c->path,
                        type);
    }
    if (!(factor > 0) || !(orig >= 1) || orig != floor(orig))
        return ds4_fail(err, "%s: YaRN factor %g / original_max_position_embeddings %g are invalid",
                        c->path, factor, orig);
    hp->rope_scale_factor = (float)factor;
    hp->rope_orig_ctx = (uint64_t)orig;
    hp->yarn_beta_fast = (float)bf;
    hp->yarn_beta_slow = (float)bs;
    return 0;
}

static int read_all(const cfg *c, ds4_hparams *hp, ds4_err *err) {
    for (size_t i = 0; i < sizeof u32_fields / sizeof u32_fields[0]; i++) {
        const u32_field *f = &u32_fields[i];
        uint32_t v;
        if (get_u32(c, f->key, f->required, f->def, &v, err)) return -1;
        memcpy((char *)hp + f->off, &v, sizeof v);
    }
    if (hp->n_layer < 1 || hp->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "%s: num_hidden_layers = %u: must be 1..%d", c->path, hp->n_layer,
                        DS4_MAX_LAYERS);
    if (hp->n_hc != DS4_N_HC)
        return ds4_fail(err, "%s: hc_mult = %u: the architecture has %d streams", c->path, hp->n_hc,
                        DS4_N_HC);
    if (hp->n_head_kv != 1)
        return ds4_fail(err, "%s: num_key_value_heads = %u: the architecture has one KV head",
                        c->path, hp->n_head_kv);
    if (hp->n_expert_shared != 1)
        return ds4_fail(err, "%s: n_shared_experts = %u: ds4 supports exactly one", c->path,
                        hp->n_expert_shared);
    const char *scoring = get_string(c->root, "scoring_func");
    if (scoring && strcmp(scoring, "sqrtsoftplus"))
        return ds4_fail(err, "%s: scoring_func \"%.32s\": ds4 computes sqrtsoftplus", c->path,
                        scoring);
    uint32_t groups;
    if (get_u32(c, "n_group", false, 1, &groups, err)) return -1;
    if (groups > 1)
        return ds4_fail(err, "%s: n_group = %u: ds4 routes without expert groups", c->path, groups);
    double v;
    if (get_f64_in(c, c->root, "routed_scaling_factor", 1.5, &v, err)) return -1;
    hp->expert_weight_scale = (float)v;
    if (get_bool(c, "norm_topk_prob", true, &hp->expert_weights_norm, err)) return -1;
    if (get_f64_in(c, c->root, "swiglu_limit", 10.0, &v, err)) return -1;
    if (!(v > 0)) return ds4_fail(err, "%s: swiglu_limit must be positive", c->path);
    for (uint32_t il = 0; il < hp->n_layer; il++) hp->swiglu_clamp[il] = (float)v;
    if (get_f64_in(c, c->root, "hc_eps", 1e-6, &v, err)) return -1;
    hp->hc_eps = (float)v;
    if (get_f64_in(c, c->root, "rms_norm_eps", 1e-6, &v, err)) return -1;
    hp->rms_eps = (float)v;
    if (!(hp->hc_eps > 0) || !(hp->rms_eps > 0))
        return ds4_fail(err, "%s: hc_eps and rms_norm_eps must be positive", c->path);
    if (read_rope_dims(c, hp, err) || read_ratios(c, hp, err) || read_hash_layers(c, hp, err) ||
        read_rope(c, hp, err))
        return -1;
    if (hp->n_hash_layer > hp->n_layer)
        return ds4_fail(err, "%s: %u hash layers but only %u layers", c->path, hp->n_hash_layer,
                        hp->n_layer);
    return 0;
}

int ds4_hf_config_read(const char *path, ds4_hparams *hp, ds4_err *err) {
    memset(hp, 0, sizeof *hp);
    json_error_t je;
    cfg c = {path, json_load_file(path, JSON_REJECT_DUPLICATES, &je)};
    if (!c.root && je.line < 1) return ds4_fail(err, "%s", je.text); /* I/O: names the path */
    if (!c.root) return ds4_fail(err, "%s: %s (line %d)", path, je.text, je.line);
    int rc = json_is_object(c.root) ? read_all(&c, hp, err)
                                    : ds4_fail(err, "%s: not a JSON object", path);
    json_decref(c.root);
    return rc;
}
