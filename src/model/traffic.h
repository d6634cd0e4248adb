/* traffic.h — weight bytes one decoded token reads (model-spec §13).
 *
 * The numerator of a memory-bandwidth roofline: for a model as loaded (its
 * real tensor types and sizes, its real layer count), the bytes of weights a
 * single-token decode step at a given position has to stream from memory,
 * by component. It counts what the forward pass touches: every layer's
 * attention projections, HC mixers, router, shared expert and compressors;
 * n_expert_used of the routed experts; the indexer's q_b and projection only
 * on ratio-4 layers whose visible compressed rows exceed the indexer top-k
 * (the engine skips the indexer before that); the output head and its HC
 * mixer in full; one embedding row. Norm vectors and other per-layer
 * constants (kilobytes, copied to f32 at load) and KV state are not weights
 * streamed per token and are left out. */
#ifndef DS4_TRAFFIC_H
#define DS4_TRAFFIC_H

#include <stdint.h>

#include "model.h"

typedef struct ds4_decode_traffic {
    uint64_t attention;      /* attn_q_a, attn_q_b, attn_kv, attn_output_a/b */
    uint64_t shared_expert;  /* ffn_{gate,up,down}_shexp */
    uint64_t routed_experts; /* n_expert_used × one expert's gate + up + down */
    uint64_t hc;             /* hc_attn_fn + hc_ffn_fn */
    uint64_t router;         /* ffn_gate_inp (+ a tid2eid row on hash layers) */
    uint64_t compressors;    /* attention and indexer compressor kv + gate */
    uint64_t indexer;        /* indexer_attn_q_b + indexer_proj, when selecting */
    uint64_t head;           /* output + output_hc_fn + one token_embd row */
    uint64_t layers;         /* sum of the per-layer parts above */
    uint64_t total;          /* layers + head */
} ds4_decode_traffic;

/* Bytes a decode step for the token at position pos (0-based) reads. */
void ds4_decode_traffic_at(const ds4_model *m, uint64_t pos, ds4_decode_traffic *t);

#endif
