/* synth.h — synthetic DeepSeek V4 Flash GGUFs for tests and speed work.
 *
 * ds4_synth_write_model() writes a file with the published tensor layout
 * (model-spec.md §2.2) for any hyperparameters, filled with seeded random
 * weights scaled so activations stay finite through every layer: linear
 * weights with standard deviation 1/sqrt(fan_in), norm weights near 1, small
 * HC scales and biases. Quantised tensors get random codes with calibrated
 * block scales (no quantiser is run), so full-size files are cheap to make;
 * tensor data is produced while the file is streamed out, one tensor at a
 * time (or generated in place into a memory image, or left to the GPU:
 * ds4_synth_image_build). ds4_synth_write_mtp()
 * writes the matching MTP file (§2.4).
 *
 * Presets: "tiny" (n_embd 256, 6 layers with ratios 0,0,4,16,4,16, 3 hash
 * layers, 8 heads of 128, 16 experts top-4, 16 indexer heads of 128, top-k
 * 8, window 16; the widths of hf-reference.md §1.3 T1 with the short window
 * and ratio of model-spec §14 so a few hundred tokens exercise every path)
 * and "flash" (the published dimensions).
 *
 * The vocabulary is either a byte-level fallback (BOS, EOS, the five other
 * V4 specials, the 256 byte tokens and merges learned from a built-in text)
 * or a Hugging Face tokenizer.json, padded with unused tokens to n_vocab.
 *
 * Tests shape deliberately broken files through the two hooks, which see
 * every metadata key and tensor before it is written. */
#ifndef DS4_SYNTH_H
#define DS4_SYNTH_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/error.h"
#include "../gguf/gguf.h"
#include "model.h"
#include "synth_fill.h"

/* GGUF token types (llama.cpp's convention). */
enum { DS4_TOKEN_NORMAL = 1, DS4_TOKEN_CONTROL = 3, DS4_TOKEN_USER_DEFINED = 4, DS4_TOKEN_UNUSED = 5 };

typedef struct ds4_synth_vocab {
    uint32_t n_tokens;
    char **tokens;   /* byte-level encoded strings, unique */
    int32_t *types;  /* DS4_TOKEN_* */
    uint32_t n_merges;
    char **merges;   /* "left right", rank = index */
    uint32_t bos, eos;
} ds4_synth_vocab;

/* Called before each tensor is added; may change its type and dimensions
 * (data is generated for what it leaves) or return true to skip it. */
typedef bool (*ds4_synth_tensor_hook)(void *ctx, gguf_writer *w, const char *name, uint32_t *type,
                                      uint32_t *n_dims, uint64_t ne[3]);

typedef struct ds4_synth_config {
    ds4_hparams hp;
    uint32_t expert_gate_type, expert_down_type; /* routed experts */
    ds4_weight_form weights;                     /* everything else */
    uint64_t seed;
    const ds4_synth_vocab *vocab; /* n_tokens == hp.n_vocab; NULL: no tokenizer keys */
    const char *name;             /* general.name */
    ds4_meta_hook meta_hook;       /* see model.h */
    ds4_synth_tensor_hook tensor_hook;
    void *hook_ctx;
} ds4_synth_config;

/* Fills hp with a preset ("tiny" or "flash") of n_layer layers (0: the
 * preset's own count) with the ratio pattern 0,0,4,R,4,R,... (R = 16 tiny,
 * 128 flash) and min(3, n_layer) hash layers. */
int ds4_synth_preset(const char *name, uint32_t n_layer, ds4_hparams *hp, ds4_err *err);
/* Expert types from "q2", "q4", "f16" or "f32". */
int ds4_synth_expert_types(const char *name, uint32_t *gate, uint32_t *down, ds4_err *err);

int ds4_synth_vocab_fallback(ds4_synth_vocab *v, uint32_t n_vocab, ds4_err *err);
/* Reads tokenizer.json (model.vocab, model.merges, added_tokens), adds the V4
 * specials it lacks and pads to at least min_vocab tokens. */
int ds4_synth_vocab_from_json(ds4_synth_vocab *v, const char *path, uint32_t min_vocab,
                              ds4_err *err);
void ds4_synth_vocab_free(ds4_synth_vocab *v);
/* The tokenizer.* keys; hook may be NULL (ds4_meta_hook, model.h). */
void ds4_synth_vocab_write(gguf_writer *w, const ds4_synth_vocab *v, ds4_meta_hook hook,
                           void *hook_ctx);

int ds4_synth_write_model(const ds4_synth_config *c, const char *path, ds4_err *err);
/* The same model as an in-memory GGUF image (for ds4_model_open_memory, so
 * benchmarks need no multi-GB file): *image is 2 MiB-aligned, *size bytes;
 * the caller frees it with free() after closing the model. */
int ds4_synth_model_image(const ds4_synth_config *c, void **image, uint64_t *size, ds4_err *err);

/* A model image whose large weight matrices may be left to the backend. */
typedef struct ds4_synth_image {
    void *base;               /* the GGUF image */
    uint64_t size;
    bool mapped;              /* an anonymous mapping (fills left untouched), else malloc'd */
    ds4_synth_fill *fills;    /* tensors not generated here, in image order */
    uint32_t n_fills;
    uint64_t fill_bytes;      /* their data bytes */
} ds4_synth_image;
/* Like ds4_synth_model_image; with device_min_bytes > 0 the weight matrices
 * (linear and embedding roles, every type synth_fill.h makes) of at least
 * that many bytes are not generated: the image is an anonymous mapping
 * reserved without backing, their pages are never touched, and img->fills
 * says how to generate each. Pass the fills to the engine
 * (ds4_engine_config.synth_fills): the cuda backend generates them in
 * device memory; reading them on the host gives zeros. Free with
 * ds4_synth_image_free after closing the engine. */
int ds4_synth_image_build(const ds4_synth_config *c, uint64_t device_min_bytes, ds4_synth_image *img,
                          ds4_err *err);
void ds4_synth_image_free(ds4_synth_image *img);
int ds4_synth_write_mtp(const ds4_synth_config *c, const char *path, ds4_err *err);

#endif
