/* hf_config.h — DeepSeek V4 hyperparameters from a checkpoint's config.json.
 *
 * Accepts both spellings (hf-reference.md §1.1, §3.1): the official
 * DeepSeek-V4-Flash config.json (compress_ratios, num_hash_layers,
 * qk_rope_head_dim, flat rope_scaling) and transformers' DeepseekV4Config
 * as saved by to_dict()/save_pretrained (layer_types + compress_rates,
 * mlp_layer_types, partial_rotary_factor, rope_parameters nested as
 * {main, compress}). Dimensions are required; the other fields default to
 * transformers' defaults, which are Flash's, except the layer pattern: a
 * config without compress_ratios or layer_types is refused because
 * transformers' default pattern is V4-Pro's. */
#ifndef DS4_HF_CONFIG_H
#define DS4_HF_CONFIG_H

#include "../common/error.h"
#include "../model/model.h"

int ds4_hf_config_read(const char *path, ds4_hparams *hp, ds4_err *err);

#endif
