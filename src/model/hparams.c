/* hparams.c — DeepSeek V4 Flash hyperparameters from `deepseek4.*` metadata.
 *
 * Every dimension the engine uses comes from here (model-spec.md §1), so the
 * published 4096-wide model and tiny synthetic models load through the same
 * code. Typing follows ds4 exactly, because the published files were written
 * for it: integer keys must be UINT32 (rope.scaling.original_context_length
 * and context_length may also be UINT64), float keys F32, F64, UINT32 or
 * INT32, the bool BOOL, compress_ratios an array of UINT32 or INT32 and
 * swiglu_clamp_exp an array of F32 or F64, both at least block_count long.
 *
 * After reading, the values are checked for consistency with each other and
 * with what the forward pass can run (e.g. heads divisible by output groups,
 * RoPE on an even tail shorter than the head, 4 HC streams). A failure names
 * the key(s) and the values. Dimensions are capped at DS4_MAX_DIM so every
 * product of two of them fits comfortably in 64 bits.
 *
 * Writing goes through the same key tables (ds4_model_meta_write), so the
 * synthetic writer and ds4-convert produce exactly what this reader takes.
 *
 * Also here: ds4_kv_bytes(), the session-state size at a given context. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "model.h"

#define KEY_PREFIX "deepseek4."

static const char *type_name(gguf_value_type t) {
    return t < GGUF_T_COUNT ? gguf_type_name(t) : "?";
}

static const gguf_kv *find_key(const gguf_file *f, const char *key, bool required, ds4_err *err) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv && required) ds4_fail(err, "missing metadata key %s", key);
    return kv;
}

/* Integer keys: UINT32 only, as ds4's model_get_u32. */
static int read_u32(const gguf_file *f, const char *key, uint32_t *out, ds4_err *err) {
    const gguf_kv *kv = find_key(f, key, true, err);
    if (!kv) return -1;
    if (kv->value.type != GGUF_T_UINT32)
        return ds4_fail(err, "%s: expected UINT32, found %s", key, type_name(kv->value.type));
    *out = (uint32_t)kv->value.v.u64;
    return 0;
}

/* UINT64 or UINT32, as ds4's required_u64. */
static int read_u64(const gguf_file *f, const char *key, bool required, uint64_t *out,
                    ds4_err *err) {
    const gguf_kv *kv = find_key(f, key, required, err);
    if (!kv) return required ? -1 : 0;
    if (kv->value.type != GGUF_T_UINT64 && kv->value.type != GGUF_T_UINT32)
        return ds4_fail(err, "%s: expected UINT64 or UINT32, found %s", key,
                        type_name(kv->value.type));
    *out = kv->value.v.u64;
    return 0;
}

/* F32, F64, UINT32 or INT32, as ds4's required_f32; the value must be finite. */
static int read_f32(const gguf_file *f, const char *key, float *out, ds4_err *err) {
    const gguf_kv *kv = find_key(f, key, true, err);
    if (!kv) return -1;
    double v;
    switch (kv->value.type) {
    case GGUF_T_FLOAT32: case GGUF_T_FLOAT64: v = kv->value.v.f64; break;
    case GGUF_T_UINT32: v = (double)kv->value.v.u64; break;
    case GGUF_T_INT32: v = (double)kv->value.v.i64; break;
    default:
        return ds4_fail(err, "%s: expected FLOAT32, FLOAT64, UINT32 or INT32, found %s", key,
                        type_name(kv->value.type));
    }
    if (!isfinite(v) || fabs(v) > 3.0e38)
        return ds4_fail(err, "%s: value %g is not a finite float", key, v);
    *out = (float)v;
    return 0;
}

static int read_bool(const gguf_file *f, const char *key, bool *out, ds4_err *err) {
    const gguf_kv *kv = find_key(f, key, true, err);
    if (!kv) return -1;
    if (kv->value.type != GGUF_T_BOOL)
        return ds4_fail(err, "%s: expected BOOL, found %s", key, type_name(kv->value.type));
    *out = kv->value.v.u64 != 0;
    return 0;
}

/* Finds an array key whose items have one of two types and at least min_count items. */
static const gguf_kv *find_array(const gguf_file *f, const char *key, gguf_value_type t1,
                                 gguf_value_type t2, uint64_t min_count, ds4_err *err) {
    const gguf_kv *kv = find_key(f, key, true, err);
    if (!kv) return NULL;
    if (kv->value.type != GGUF_T_ARRAY) {
        ds4_fail(err, "%s: expected an array of %s or %s, found %s", key, type_name(t1),
                 type_name(t2), type_name(kv->value.type));
        return NULL;
    }
    gguf_value_type it = kv->value.v.arr.item_type;
    if (it != t1 && it != t2) {
        ds4_fail(err, "%s: expected an array of %s or %s, found an array of %s", key,
                 type_name(t1), type_name(t2), type_name(it));
        return NULL;
    }
    if (kv->value.v.arr.count < min_count) {
        ds4_fail(err, "%s has %llu entries, needs at least %llu (" KEY_PREFIX "block_count)", key,
                 (unsigned long long)kv->value.v.arr.count, (unsigned long long)min_count);
        return NULL;
    }
    return kv;
}

static int read_compress_ratios(const gguf_file *f, ds4_hparams *hp, ds4_err *err) {
    const char *key = KEY_PREFIX "attention.compress_ratios";
    const gguf_kv *kv = find_array(f, key, GGUF_T_UINT32, GGUF_T_INT32, hp->n_layer, err);
    if (!kv) return -1;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        gguf_value v;
        if (gguf_array_get(&kv->value, il, &v, err)) return ds4_fail_prefix(err, key);
        int64_t r = v.type == GGUF_T_INT32 ? v.v.i64 : (int64_t)v.v.u64;
        if (r != 0 && (r < 2 || r > DS4_MAX_COMPRESS_RATIO))
            return ds4_fail(err, "%s[%u] = %lld: a layer's ratio must be 0 or 2..%d", key, il,
                            (long long)r, DS4_MAX_COMPRESS_RATIO);
        hp->compress_ratio[il] = (uint32_t)r;
    }
    return 0;
}

static int read_swiglu_clamp(const gguf_file *f, ds4_hparams *hp, ds4_err *err) {
    const char *key = KEY_PREFIX "swiglu_clamp_exp";
    const gguf_kv *kv = find_array(f, key, GGUF_T_FLOAT32, GGUF_T_FLOAT64, hp->n_layer, err);
    if (!kv) return -1;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        gguf_value v;
        if (gguf_array_get(&kv->value, il, &v, err)) return ds4_fail_prefix(err, key);
        if (!(v.v.f64 > 0 && v.v.f64 < 3.0e38))
            return ds4_fail(err, "%s[%u] = %g: the clamp must be a positive finite number", key,
                            il, v.v.f64);
        hp->swiglu_clamp[il] = (float)v.v.f64;
    }
    return 0;
}

/* Optional expert-group keys: V4 has no group-limited routing, so 0 if present. */
static int check_zero_if_present(const gguf_file *f, const char *key, ds4_err *err) {
    if (!gguf_find_kv(f, key)) return 0;
    uint32_t v;
    if (read_u32(f, key, &v, err)) return -1;
    if (v != 0) return ds4_fail(err, "%s = %u: grouped expert routing is not supported (must be 0)", key, v);
    return 0;
}

static int check_architecture(const gguf_file *f, ds4_err *err) {
    const char *key = "general.architecture";
    const gguf_kv *kv = find_key(f, key, true, err);
    if (!kv) return -1;
    if (kv->value.type != GGUF_T_STRING)
        return ds4_fail(err, "%s: expected STRING, found %s", key, type_name(kv->value.type));
    if (!gguf_str_eq(kv->value.v.str, "deepseek4")) {
        int n = kv->value.v.str.len > 64 ? 64 : (int)kv->value.v.str.len;
        return ds4_fail(err, "%s: expected \"deepseek4\", found \"%.*s\"", key, n,
                        kv->value.v.str.ptr);
    }
    return 0;
}

/* Integer keys; `dim` marks tensor dimensions, which must be 1..DS4_MAX_DIM. */
typedef struct u32_key { const char *key; size_t off; bool dim; } u32_key;
#define U32_KEY(k, field, dim) { KEY_PREFIX k, offsetof(ds4_hparams, field), dim }

static const u32_key u32_keys[] = {
    U32_KEY("block_count", n_layer, false),
    U32_KEY("embedding_length", n_embd, true),
    U32_KEY("vocab_size", n_vocab, true),
    U32_KEY("attention.head_count", n_head, true),
    U32_KEY("attention.head_count_kv", n_head_kv, false),
    U32_KEY("attention.key_length", head_dim, true),
    U32_KEY("rope.dimension_count", n_rot, false),
    U32_KEY("attention.q_lora_rank", q_lora, true),
    U32_KEY("attention.output_lora_rank", o_lora, true),
    U32_KEY("attention.output_group_count", n_out_group, true),
    U32_KEY("expert_count", n_expert, true),
    U32_KEY("expert_used_count", n_expert_used, true),
    U32_KEY("expert_shared_count", n_expert_shared, false),
    U32_KEY("expert_feed_forward_length", n_ff_exp, true),
    U32_KEY("hash_layer_count", n_hash_layer, false),
    U32_KEY("attention.sliding_window", n_swa, true),
    U32_KEY("attention.indexer.head_count", n_indexer_head, true),
    U32_KEY("attention.indexer.key_length", indexer_head_dim, true),
    U32_KEY("attention.indexer.top_k", indexer_top_k, true),
    U32_KEY("hyper_connection.count", n_hc, false),
    U32_KEY("hyper_connection.sinkhorn_iterations", hc_sinkhorn_iter, true),
};

typedef struct f32_key { const char *key; size_t off; bool positive; } f32_key;
#define F32_KEY(k, field, pos) { KEY_PREFIX k, offsetof(ds4_hparams, field), pos }

static const f32_key f32_keys[] = {
    F32_KEY("expert_weights_scale", expert_weight_scale, true),
    F32_KEY("hyper_connection.epsilon", hc_eps, true),
    F32_KEY("attention.layer_norm_rms_epsilon", rms_eps, true),
    F32_KEY("rope.freq_base", rope_freq_base, true),
    F32_KEY("attention.compress_rope_freq_base", compress_rope_freq_base, true),
    F32_KEY("rope.scaling.factor", rope_scale_factor, true),
    F32_KEY("rope.scaling.yarn_beta_fast", yarn_beta_fast, false),
    F32_KEY("rope.scaling.yarn_beta_slow", yarn_beta_slow, false),
};

static int check_consistency(const ds4_hparams *hp, ds4_err *err) {
#define K(k) KEY_PREFIX k
    for (size_t i = 0; i < sizeof u32_keys / sizeof u32_keys[0]; i++) {
        uint32_t v;
        memcpy(&v, (const char *)hp + u32_keys[i].off, sizeof v);
        if (u32_keys[i].dim && (v < 1 || v > DS4_MAX_DIM))
            return ds4_fail(err, "%s = %u: must be 1..%d", u32_keys[i].key, v, DS4_MAX_DIM);
    }
    if (hp->n_head_kv != 1)
        return ds4_fail(err, K("attention.head_count_kv") " = %u: the architecture has one shared KV head", hp->n_head_kv);
    if (hp->n_hc != DS4_N_HC)
        return ds4_fail(err, K("hyper_connection.count") " = %u: the architecture has %d streams", hp->n_hc, DS4_N_HC);
    if (hp->n_expert_shared != 1)
        return ds4_fail(err, K("expert_shared_count") " = %u: the architecture has one shared expert", hp->n_expert_shared);
    if (hp->n_head % hp->n_out_group)
        return ds4_fail(err, K("attention.head_count") " (%u) is not divisible by " K("attention.output_group_count") " (%u)",
                        hp->n_head, hp->n_out_group);
    if (hp->n_rot == 0 || hp->n_rot % 2 || hp->n_rot >= hp->head_dim)
        return ds4_fail(err, K("rope.dimension_count") " = %u: must be even, non-zero and below " K("attention.key_length") " (%u)",
                        hp->n_rot, hp->head_dim);
    if ((hp->head_dim - hp->n_rot) % 64)
        return ds4_fail(err, K("attention.key_length") " - " K("rope.dimension_count") " = %u: must be a multiple of 64 (FP8 KV blocks)",
                        hp->head_dim - hp->n_rot);
    if (hp->n_expert_used > hp->n_expert)
        return ds4_fail(err, K("expert_used_count") " (%u) exceeds " K("expert_count") " (%u)",
                        hp->n_expert_used, hp->n_expert);
    if (hp->n_hash_layer > hp->n_layer)
        return ds4_fail(err, K("hash_layer_count") " (%u) exceeds " K("block_count") " (%u)",
                        hp->n_hash_layer, hp->n_layer);
    bool has_indexer = false;
    for (uint32_t il = 0; il < hp->n_layer; il++) has_indexer |= hp->compress_ratio[il] == 4;
    if (has_indexer && hp->indexer_head_dim < hp->n_rot)
        return ds4_fail(err, K("attention.indexer.key_length") " (%u) is below " K("rope.dimension_count") " (%u)",
                        hp->indexer_head_dim, hp->n_rot);
    if (hp->rope_orig_ctx < 1)
        return ds4_fail(err, K("rope.scaling.original_context_length") " must be at least 1");
    return 0;
#undef K
}

int ds4_hparams_read(const gguf_file *f, ds4_hparams *hp, ds4_err *err) {
    memset(hp, 0, sizeof *hp);
    if (check_architecture(f, err)) return -1;
    for (size_t i = 0; i < sizeof u32_keys / sizeof u32_keys[0]; i++) {
        uint32_t v;
        if (read_u32(f, u32_keys[i].key, &v, err)) return -1;
        memcpy((char *)hp + u32_keys[i].off, &v, sizeof v);
    }
    uint32_t value_length;
    if (read_u32(f, KEY_PREFIX "attention.value_length", &value_length, err)) return -1;
    if (value_length != hp->head_dim)
        return ds4_fail(err, KEY_PREFIX "attention.value_length (%u) differs from " KEY_PREFIX
                        "attention.key_length (%u): K and V share one latent", value_length, hp->head_dim);
    for (size_t i = 0; i < sizeof f32_keys / sizeof f32_keys[0]; i++) {
        float v = 0;
        if (read_f32(f, f32_keys[i].key, &v, err)) return -1;
        if (f32_keys[i].positive && !(v > 0))
            return ds4_fail(err, "%s = %g: must be positive", f32_keys[i].key, v);
        memcpy((char *)hp + f32_keys[i].off, &v, sizeof v);
    }
    if (read_bool(f, KEY_PREFIX "expert_weights_norm", &hp->expert_weights_norm, err)) return -1;
    if (read_u64(f, KEY_PREFIX "rope.scaling.original_context_length", true, &hp->rope_orig_ctx, err))
        return -1;
    if (read_u64(f, KEY_PREFIX "context_length", false, &hp->context_length, err)) return -1;
    if (check_zero_if_present(f, KEY_PREFIX "expert_group_count", err)) return -1;
    if (check_zero_if_present(f, KEY_PREFIX "expert_group_used_count", err)) return -1;
    if (hp->n_layer < 1 || hp->n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, KEY_PREFIX "block_count = %u: must be 1..%d", hp->n_layer, DS4_MAX_LAYERS);
    if (read_compress_ratios(f, hp, err)) return -1;
    if (read_swiglu_clamp(f, hp, err)) return -1;
    return check_consistency(hp, err);
}

/* ---- writing ---- */

typedef struct meta_out {
    gguf_writer *w;
    ds4_meta_hook hook;
    void *hook_ctx;
} meta_out;

#define PUT(o, kind, key, ...)                                                  \
    do {                                                                        \
        if (!(o)->hook || !(o)->hook((o)->hook_ctx, (o)->w, key))               \
            gguf_writer_add_##kind((o)->w, key, __VA_ARGS__);                   \
    } while (0)

/* The published file types these counts UINT32; a value past 32 bits (only
 * from an unusual config.json) is kept whole as UINT64, which the reader
 * also takes. */
static void put_count(const meta_out *o, const char *key, uint64_t v) {
    if (v <= UINT32_MAX) PUT(o, u32, key, (uint32_t)v);
    else PUT(o, u64, key, v);
}

void ds4_model_meta_write(gguf_writer *w, const char *name, const ds4_hparams *hp,
                          ds4_meta_hook hook, void *hook_ctx) {
    const meta_out o = {w, hook, hook_ctx};
    PUT(&o, str, "general.architecture", "deepseek4");
    PUT(&o, str, "general.name", name);
    if (!hp) return;
    if (hp->context_length) put_count(&o, KEY_PREFIX "context_length", hp->context_length);
    for (size_t i = 0; i < sizeof u32_keys / sizeof u32_keys[0]; i++) {
        uint32_t v;
        memcpy(&v, (const char *)hp + u32_keys[i].off, sizeof v);
        PUT(&o, u32, u32_keys[i].key, v);
    }
    PUT(&o, u32, KEY_PREFIX "attention.value_length", hp->head_dim);
    for (size_t i = 0; i < sizeof f32_keys / sizeof f32_keys[0]; i++) {
        float v;
        memcpy(&v, (const char *)hp + f32_keys[i].off, sizeof v);
        PUT(&o, f32, f32_keys[i].key, v);
    }
    PUT(&o, bool, KEY_PREFIX "expert_weights_norm", hp->expert_weights_norm);
    put_count(&o, KEY_PREFIX "rope.scaling.original_context_length", hp->rope_orig_ctx);
    PUT(&o, array, KEY_PREFIX "attention.compress_ratios", GGUF_T_UINT32, hp->compress_ratio,
        hp->n_layer);
    PUT(&o, array, KEY_PREFIX "swiglu_clamp_exp", GGUF_T_FLOAT32, hp->swiglu_clamp, hp->n_layer);
    /* Not read by ds4; written with the published file's values (model-spec §1). */
    PUT(&o, u32, KEY_PREFIX "expert_group_count", 0);
    PUT(&o, u32, KEY_PREFIX "expert_group_used_count", 0);
    PUT(&o, u32, KEY_PREFIX "expert_gating_func", 4); /* sqrt(softplus) */
    PUT(&o, str, KEY_PREFIX "rope.scaling.type", "yarn");
    PUT(&o, u32, KEY_PREFIX "nextn_predict_layers", 1);
}

/* Session state at ctx tokens, with every KV row stored as f16 and the
 * compressor frontiers (pending kv + score rows) as f32 (model-spec §7.1):
 *   every layer:   n_swa raw rows of head_dim
 *   ratio r != 0:  ctx/r + 2 compressed rows of head_dim, and a frontier of
 *                  2 x rows x width f32, where rows x width = 2r x 2·head_dim
 *                  for r = 4 (the two overlapping lanes) and r x head_dim else
 *   ratio 4:       ctx/4 + 2 indexer rows of indexer_head_dim, and the
 *                  indexer frontier 2 x 8 x 2·indexer_head_dim f32.
 * Token lists, logits and backend scratch are not included. */
uint64_t ds4_kv_bytes(const ds4_hparams *hp, uint64_t ctx) {
    const uint64_t f16 = 2, f32 = 4;
    uint64_t total = 0;
    for (uint32_t il = 0; il < hp->n_layer && il < DS4_MAX_LAYERS; il++) {
        uint64_t r = hp->compress_ratio[il];
        total += (uint64_t)hp->n_swa * hp->head_dim * f16;
        if (r == 0) continue;
        total += (ctx / r + 2) * hp->head_dim * f16;
        uint64_t lanes = r == 4 ? 2 : 1;
        total += 2 * (lanes * r) * (lanes * hp->head_dim) * f32;
        if (r == 4) {
            total += (ctx / 4 + 2) * hp->indexer_head_dim * f16;
            total += 2 * 8 * (2 * (uint64_t)hp->indexer_head_dim) * f32;
        }
    }
    return total;
}
