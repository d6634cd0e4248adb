/* convert.h — a DeepSeek V4 checkpoint directory to a ds4 GGUF.
 *
 * Input: config.json plus safetensors (model.safetensors, or shards named by
 * model.safetensors.index.json) in either naming (hf-reference.md §3): the
 * transformers DeepseekV4ForCausalLM state dict (model.layers.L.self_attn.*,
 * fused experts.gate_up_proj) or the official DeepSeek-V4-Flash checkpoint
 * (layers.L.attn.*, per-expert w1/w2/w3). Element types: F32, F16, BF16,
 * F64, F8_E4M3 (with an F8_E8M0/F32/BF16 128x128 block scale `<w>.scale`,
 * or without a scale) and the official FP4 expert packing (I8/U8, two e2m1
 * codes a byte, F8_E8M0 scale per 32 inputs).
 *
 * Output: the GGUF of model-spec.md §2.2 — same bytes in a reversed shape
 * (no transposes), gate_up split, experts stacked to [in, out, n_expert],
 * tid2eid narrowed to I32 — with every deepseek4.* key from config.json and
 * a tokenizer (tokenizer.json, or the byte-level fallback vocabulary).
 * Weights are re-encoded per the type options. */
#ifndef DS4_CONVERT_H
#define DS4_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/error.h"
#include "../model/model.h"

typedef struct ds4_convert_opts {
    const char *in_dir;
    const char *out_path;
    const char *tokenizer_path; /* NULL: fallback vocabulary of vocab_size tokens */
    const char *name;           /* general.name; NULL: a default */
    ds4_weight_form weights;    /* all but the routed experts */
    uint32_t expert_gate_type;  /* routed gate and up */
    uint32_t expert_down_type;  /* routed down */
    int threads;                /* 0 = all cores */
    bool quiet;                 /* no per-tensor progress on stderr */
} ds4_convert_opts;

/* Sets the type fields from --type (f32|f16|q8) and --experts (f32|f16|q2|q4). */
int ds4_convert_set_types(ds4_convert_opts *o, const char *type, const char *experts,
                          ds4_err *err);

int ds4_convert(const ds4_convert_opts *o, ds4_err *err);

#endif
