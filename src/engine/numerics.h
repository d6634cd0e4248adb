/* numerics.h — the model's scalar building blocks, defined once.
 *
 * Everything the forward pass computes outside the big matrix products:
 * RMSNorm (double sum of squares), RoPE on the tail of a head with the
 * YaRN blend of the compressed layers (ds4's float order, model-spec §5.4),
 * the FP8-E4M3 KV round-trip, the Hadamard + FP4-E2M1 indexer round-trip,
 * the hyper-connection split with Sinkhorn normalisation, the router's
 * sqrt(softplus), SiLU, and top-k selection with ties to the lower index
 * (model-spec §4, §5.2, §5.7, §5.8). Tests check each against a naive
 * restatement of the spec's formulas. */
#ifndef DS4_NUMERICS_H
#define DS4_NUMERICS_H

#include <stdbool.h>
#include <stdint.h>

#include "../model/model.h"

/* y = x / rms(x) (· w if w != NULL); y may alias x. */
void num_rmsnorm(float *y, const float *x, const float *w, int n, float eps);

/* RoPE parameters of one layer kind (plain, or the compressed layers' YaRN). */
typedef struct rope_params {
    int n_rot;         /* rotated dims at the end of each head (even) */
    float theta_scale; /* base^(-2/n_rot): per-pair angle factor */
    bool yarn;
    float freq_scale;  /* 1/factor */
    float corr_low, corr_high; /* YaRN ramp range in pair indices */
} rope_params;

/* compressed = the layer has KV compression (YaRN with the compress base). */
void rope_params_init(rope_params *rp, const ds4_hparams *hp, bool compressed);
/* Rotates the last n_rot dims of x[0..head_dim) for position pos (inverse:
 * the opposite rotation). */
void rope_tail(float *x, int head_dim, int64_t pos, const rope_params *rp, bool inverse);

/* Nearest E4M3FN value (|v| clamped to 448), ties to the even code. */
float e4m3_round(float v);
/* Nearest E2M1 value (|v| clamped to 6), ties to the even code. */
float e2m1_round(float v);
/* FP8 KV round-trip of the first n_nope dims (64-wide blocks). */
void fp8_kv_roundtrip(float *row, int n_nope);
/* FP4 round-trip in 32-wide blocks (n multiple of 32). */
void fp4_roundtrip(float *x, int n);
/* Unnormalised Walsh–Hadamard (Sylvester order) times 1/sqrt(n); n a power of 2. */
void hadamard_inplace(float *x, int n);
/* Indexer QAT: Hadamard then FP4 round-trip. */
void indexer_qat(float *x, int n);

float f16_round(float x);

/* Hyper-connection split (model-spec §5.2 step 3): 2·hc+hc² mixing values →
 * pre weights (σ + eps), post weights (2σ) and the Sinkhorn-normalised comb
 * matrix comb[src·hc + dst]. hc must be DS4_N_HC. */
void hc_split(const float *mix, const float *scale, const float *base, int iters, float eps,
              float *pre, float *post, float *comb);

float sigmoid_plain(float z);
float silu(float x);
/* One routed/shared-expert value: silu(min(g, c)) · clamp(u, -c, c) · weight
 * (no clamp while c <= 0). */
float swiglu(float g, float u, float clamp, float weight);
float softplus(float x);

/* Indices of the k best scores (higher score first, ties → lower index),
 * written to out[0..k) in ascending index order. heap: k ints of scratch.
 * Requires 0 < k <= n. NaN scores rank lowest. */
void topk_indices_ascending(const float *score, int n, int k, int *heap, int *out);
/* The k best in rank order (best first), for routing; k small. */
void topk_rank_order(const float *score, int n, int k, int *out);

#endif
