/* model.h — DeepSeek V4 Flash hyperparameters and bound weights.
 *
 * ds4_model_open() reads every dimension from the `deepseek4.*` metadata
 * (model-spec.md §1), so the published 4096-wide model and tiny synthetic
 * models of the same architecture load through the same code. It then binds
 * and validates every tensor (name, shape, type) against the architecture
 * (model-spec §2.2): a mismatch is one clear error such as
 * `blk.7.attn_kv.weight: expected Q8_0 [4096,512], found Q4_K [4096,512]`.
 * Tensors are used in place from the mmapped file.
 *
 * Accepted weight types: the published ones (q2: IQ2_XXS gate/up + Q2_K down
 * experts; q4: Q4_K experts; Q8_0/F16/F32 elsewhere as in §2.2), and, for
 * synthetic and converted test models, F16 or F32 for any weight. */
#ifndef DS4_MODEL_H
#define DS4_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/error.h"
#include "../gguf/gguf.h"

#define DS4_MAX_LAYERS 128
#define DS4_N_HC 4 /* hyper-connection streams: fixed by the architecture */
#define DS4_HC_MIX (2 * DS4_N_HC + DS4_N_HC * DS4_N_HC) /* 24: pre + post gates, 4x4 mix */
#define DS4_MAX_DIM (1 << 24)          /* bound on every dimension read from metadata */
#define DS4_MAX_COMPRESS_RATIO 65536   /* bound on a layer's compression ratio */

typedef struct ds4_hparams {
    uint32_t n_layer;          /* deepseek4.block_count */
    uint32_t n_embd;           /* deepseek4.embedding_length */
    uint32_t n_vocab;          /* deepseek4.vocab_size */
    uint32_t n_head;           /* attention.head_count */
    uint32_t n_head_kv;        /* attention.head_count_kv (1) */
    uint32_t head_dim;         /* attention.key_length (= value_length) */
    uint32_t n_rot;            /* rope.dimension_count */
    uint32_t q_lora;           /* attention.q_lora_rank */
    uint32_t o_lora;           /* attention.output_lora_rank */
    uint32_t n_out_group;      /* attention.output_group_count */
    uint32_t n_expert;         /* expert_count */
    uint32_t n_expert_used;    /* expert_used_count */
    uint32_t n_expert_shared;  /* expert_shared_count (1) */
    uint32_t n_ff_exp;         /* expert_feed_forward_length */
    uint32_t n_hash_layer;     /* hash_layer_count */
    float expert_weight_scale; /* expert_weights_scale (1.5) */
    bool expert_weights_norm;  /* expert_weights_norm */
    float swiglu_clamp[DS4_MAX_LAYERS]; /* swiglu_clamp_exp */
    uint32_t n_swa;            /* attention.sliding_window */
    uint32_t compress_ratio[DS4_MAX_LAYERS]; /* attention.compress_ratios: 0, 4 or R */
    uint32_t n_indexer_head;   /* attention.indexer.head_count */
    uint32_t indexer_head_dim; /* attention.indexer.key_length (128) */
    uint32_t indexer_top_k;    /* attention.indexer.top_k */
    uint32_t n_hc;             /* hyper_connection.count (4) */
    uint32_t hc_sinkhorn_iter; /* hyper_connection.sinkhorn_iterations */
    float hc_eps;              /* hyper_connection.epsilon */
    float rms_eps;             /* attention.layer_norm_rms_epsilon */
    float rope_freq_base;      /* rope.freq_base (layers with ratio 0, MTP) */
    float compress_rope_freq_base; /* attention.compress_rope_freq_base */
    float rope_scale_factor;   /* rope.scaling.factor (YaRN, compressed layers) */
    uint64_t rope_orig_ctx;    /* rope.scaling.original_context_length */
    float yarn_beta_fast;      /* rope.scaling.yarn_beta_fast */
    float yarn_beta_slow;      /* rope.scaling.yarn_beta_slow */
    uint64_t context_length;   /* deepseek4.context_length (informational; 0 if absent) */
} ds4_hparams;

/* A bound tensor: points into the mapping. ne[] as stored (ne[0] contiguous). */
typedef struct ds4_tensor {
    const char *name; /* NUL-terminated copy owned by the model */
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[4];
    const void *data;
    uint64_t nbytes;
} ds4_tensor;

typedef struct ds4_layer {
    uint32_t compress_ratio; /* 0, 4, or the layer's other ratio */
    /* hyper-connections */
    ds4_tensor hc_attn_fn, hc_attn_scale, hc_attn_base;
    ds4_tensor hc_ffn_fn, hc_ffn_scale, hc_ffn_base;
    /* attention */
    ds4_tensor attn_norm, attn_q_a, attn_q_a_norm, attn_q_b;
    ds4_tensor attn_kv, attn_kv_a_norm, attn_sinks;
    ds4_tensor attn_output_a, attn_output_b;
    /* compressor (compress_ratio != 0) */
    ds4_tensor attn_compressor_ape, attn_compressor_kv, attn_compressor_gate, attn_compressor_norm;
    /* indexer (compress_ratio == 4) */
    ds4_tensor indexer_attn_q_b, indexer_proj;
    ds4_tensor indexer_compressor_ape, indexer_compressor_kv, indexer_compressor_gate,
        indexer_compressor_norm;
    /* MoE */
    ds4_tensor ffn_norm, ffn_gate_inp, exp_probs_b; /* exp_probs_b.data NULL if absent */
    ds4_tensor ffn_gate_exps, ffn_up_exps, ffn_down_exps;
    ds4_tensor ffn_gate_shexp, ffn_up_shexp, ffn_down_shexp;
    ds4_tensor ffn_gate_tid2eid; /* hash-routed layers only, else data NULL */
} ds4_layer;

typedef struct ds4_model {
    gguf_file file;
    ds4_hparams hp;
    ds4_tensor token_embd, output_hc_base, output_hc_fn, output_hc_scale, output_norm, output;
    ds4_layer layers[DS4_MAX_LAYERS];
    uint32_t expert_gate_type, expert_down_type; /* routed expert quantisation */
    uint64_t weight_bytes;  /* sum of all tensor data */
    char *names;            /* storage of the ds4_tensor names */
} ds4_model;

/* The separate MTP GGUF (model-spec §2.4): one extra block named mtp.0.*. */
typedef struct ds4_mtp_model {
    gguf_file file;
    ds4_tensor hc_head_base, hc_head_fn, hc_head_scale;
    ds4_tensor e_proj, h_proj, enorm, hnorm, norm;
    ds4_layer block; /* compress_ratio 0, no tid2eid */
    uint32_t expert_gate_type, expert_down_type;
    uint64_t weight_bytes;
    char *names;
} ds4_mtp_model;

/* Reads and checks the deepseek4.* metadata (used by ds4_model_open). */
int ds4_hparams_read(const gguf_file *f, ds4_hparams *hp, ds4_err *err);

/* Called before each metadata key is written; returns true to skip the
 * default value (it may write its own through w). Tests shape broken files
 * this way. */
typedef bool (*ds4_meta_hook)(void *ctx, gguf_writer *w, const char *key);
/* Writes general.architecture, general.name and (hp non-NULL) every
 * deepseek4.* key that ds4_hparams_read reads, plus the published keys it
 * ignores. hook may be NULL. */
void ds4_model_meta_write(gguf_writer *w, const char *name, const ds4_hparams *hp,
                          ds4_meta_hook hook, void *hook_ctx);

/* Errors start with the path ("PATH: missing tensor ..."). */
int ds4_model_open(ds4_model *m, const char *path, ds4_err *err);
/* The same over a caller-owned buffer that must outlive the model (fuzzing);
 * errors carry no path prefix. ds4-bench opens synthetic models this way
 * (ds4_synth_model_image). */
int ds4_model_open_memory(ds4_model *m, const void *buf, uint64_t size, ds4_err *err);
void ds4_model_close(ds4_model *m);
/* Validates against the main model's hyperparameters. */
int ds4_mtp_open(ds4_mtp_model *mtp, const char *path, const ds4_hparams *hp, ds4_err *err);
int ds4_mtp_open_memory(ds4_mtp_model *mtp, const void *buf, uint64_t size,
                        const ds4_hparams *hp, ds4_err *err);
void ds4_mtp_close(ds4_mtp_model *mtp);

/* Bytes of session state (KV rows as f16, compressor frontiers as f32) for
 * ctx tokens; the exact accounting is documented at its definition in
 * hparams.c. Weights are mmapped on top of this (ds4_model.weight_bytes). */
uint64_t ds4_kv_bytes(const ds4_hparams *hp, uint64_t ctx);

/* "q2", "q4", "f16", "f32" or "mixed" from the routed expert types. */
const char *ds4_model_expert_quant_name(const ds4_model *m);
const char *ds4_expert_quant_name(uint32_t gate_type, uint32_t down_type);
/* How the weights other than the routed experts are stored (the --type of
 * ds4-mkmodel and ds4-convert: "q8", "f16", "f32"): as published (Q8_0 /
 * F16 / F32 per §2.2), with every Q8_0 weight as F16, or all as F32. */
typedef enum ds4_weight_form {
    DS4_WEIGHTS_PUBLISHED = 0, /* "q8" */
    DS4_WEIGHTS_F16 = 1,
    DS4_WEIGHTS_F32 = 2,
} ds4_weight_form;
bool ds4_weight_form_from_name(const char *name, ds4_weight_form *form);
/* The type a weight published as `published` gets under the form. */
uint32_t ds4_weight_form_type(ds4_weight_form form, uint32_t published);

/* The inverse: gate/up and down types for "q2", "q4", "f16" or "f32";
 * false for any other name. */
bool ds4_expert_quant_types(const char *name, uint32_t *gate_type, uint32_t *down_type);

#endif
