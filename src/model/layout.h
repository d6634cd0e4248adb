/* layout.h — the tensors of a DeepSeek V4 Flash GGUF, described once.
 *
 * The published layout (model-spec.md §2.2; the MTP file, §2.4) as a list of
 * slots derived from the hyperparameters: name, the type in the published
 * files, shape, and where the bound tensor lives. The loader (model.c)
 * binds and validates every slot and the synthetic writer (synth.c)
 * generates every slot, so a synthetic file loads by construction. Slots
 * come in the order synthetic files store them: the model's own tensors,
 * then per layer the block every layer has, its compressor (ratio != 0),
 * its indexer (ratio 4) and its hash-routing table (hash layers). */
#ifndef DS4_LAYOUT_H
#define DS4_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

typedef enum ds4_slot_kind {
    DS4_SLOT_WEIGHT,      /* the published type, or F16/F32 in test models */
    DS4_SLOT_EXPERT_GATE, /* routed experts: gate (IQ2_XXS, Q4_K, F16 or F32), */
    DS4_SLOT_EXPERT_UP,   /* up (the gate's type) */
    DS4_SLOT_EXPERT_DOWN, /* and down (paired with the gate's, or F16/F32) */
    DS4_SLOT_BIAS,        /* exp_probs_b: published in non-hash layers and the MTP block */
    DS4_SLOT_TID2EID,     /* the I32 hash-routing table */
} ds4_slot_kind;

/* What the values are, so synthetic models can give each a sensible scale. */
typedef enum ds4_slot_role {
    DS4_ROLE_LINEAR,     /* a projection [in, out] */
    DS4_ROLE_EMBEDDING,  /* token_embd */
    DS4_ROLE_NORM,       /* RMSNorm weights, near 1 */
    DS4_ROLE_HC_SCALE,   /* hyper-connection gate scales, small */
    DS4_ROLE_OFFSET,     /* biases, HC bases, compressor position biases */
    DS4_ROLE_SINK,       /* attention sink logits */
    DS4_ROLE_ROUTING,    /* tid2eid expert ids */
} ds4_slot_role;

typedef struct ds4_slot {
    const char *suffix; /* the name after the prefix ("", "blk.L.", "mtp.0.") */
    ds4_slot_kind kind;
    ds4_slot_role role;
    uint32_t published; /* DS4_TYPE_*, as published (routed experts: the q2 types) */
    uint32_t n_dims;
    uint64_t ne[3];     /* ne[0] contiguous; 1 past n_dims */
    size_t offset;      /* of the ds4_tensor in ds4_model / ds4_mtp_model (layer
                           DS4_LAYOUT_TOP) or in the ds4_layer */
} ds4_slot;

#define DS4_LAYOUT_TOP (-1)       /* the model's (or MTP file's) own tensors */
#define DS4_LAYOUT_MTP_BLOCK (-2) /* the MTP file's block */

/* Called for each slot in file order; a nonzero return stops the walk and
 * is returned. layer: 0..n_layer-1, DS4_LAYOUT_TOP or DS4_LAYOUT_MTP_BLOCK. */
typedef int (*ds4_slot_fn)(void *ctx, const char *prefix, int layer, const ds4_slot *s);

/* The model's own tensors: token_embd and the output head. */
int ds4_layout_top(const ds4_hparams *hp, ds4_slot_fn fn, void *ctx);
/* Layer il ("blk.il."). */
int ds4_layout_layer(const ds4_hparams *hp, uint32_t il, ds4_slot_fn fn, void *ctx);
/* The MTP file: its head, then its block ("mtp.0."). */
int ds4_layout_mtp(const ds4_hparams *hp, ds4_slot_fn fn, void *ctx);

#endif
