/* test_convert.c — ds4-convert against independently built checkpoints.
 *
 * (a) A small random model is written as two checkpoints by a test-side
 *     safetensors writer (st_writer.h): transformers naming (F32 / F16 /
 *     BF16, fused gate_up, one file) and official DeepSeek naming (FP8 e4m3
 *     with E8M0 128x128 block scales for the projections, FP4 e2m1 experts
 *     with per-32 E8M0 scales, BF16 and F32 elsewhere, two shards plus an
 *     index). The expected GGUF contents are derived here from
 *     hf-reference.md §3-§4 with this file's own FP8/FP4/E8M0/BF16/F16
 *     decoders. Each checkpoint is converted, loaded with ds4_model_open,
 *     and every tensor compared: f32 outputs bit-exactly with the decoded
 *     originals, quantised outputs byte-exactly with the library quantiser
 *     applied to the decoded rows (IQ2_XXS under the synthetic importance of
 *     §4); the hyperparameters must match the config.json values.
 * (b) Malformed safetensors files and checkpoints give the expected clear
 *     error, and random mutations of a valid file never crash the reader. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../src/convert/convert.h"
#include "../src/convert/safetensors.h"
#include "../src/model/model.h"
#include "../src/quant/quant.h"
#include "st_writer.h"
#include "testutil.h"

/* The test model: small, but every block kind (sliding, ratio-4 with
 * indexer, ratio-8), hash and biased routing, partial FP8 blocks (32-row
 * and 64-row tails), K-quant-sized rows. */
enum { D = 256, V = 320, NL = 4, H = 2, HD = 128, ROT = 64, RQ = 32, G = 2, RO = 32, E = 2,
       K = 1, I = 256, HI = 2, DI = 64, TOPK = 2, SWA = 8, NHASH = 2, MIX = 24 };
static const uint32_t ratios[NL] = {0, 4, 8, 4};

typedef enum slot { S_Q8, S_F16, S_F32, S_GATE, S_DOWN, S_I32 } slot;

typedef struct expect {
    char name[96];
    slot slot;
    uint32_t nd;
    uint64_t ne[3];
    float *v;     /* ne0*ne1*ne2 values in GGUF order */
    int32_t *ids; /* S_I32 */
} expect;

typedef struct model_ck {
    st_writer hf, off;
    expect *x;
    size_t nx;
    uint64_t rng;
    int rot;      /* rotates the transformers dtype */
    int n_layers; /* the first n_layers of the pattern below */
} model_ck;

/* ---- independent element codecs (hf-reference.md §4) ---- */

static uint64_t next_u64(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float fp8_e4m3(uint8_t c) {
    if ((c & 0x7f) == 0x7f) return 0.0f; /* NaN codes decode to 0 */
    int e = (c >> 3) & 15, m = c & 7;
    double v = e ? ldexp(8 + m, e - 10) : ldexp(m, -9);
    return (float)(c & 0x80 ? -v : v);
}

static float fp4_e2m1(uint8_t nib) {
    static const float mag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
    return nib & 8 ? -mag[nib & 7] : mag[nib & 7];
}

static float e8m0(uint8_t e) { return (float)ldexp(1.0, e - 127); }

static uint16_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)(u >> 16); /* values here are exact in bf16 */
}

static uint16_t f16_bits(float x) { /* exact for the values used here */
    uint16_t s = signbit(x) ? 0x8000 : 0;
    x = fabsf(x);
    if (x == 0) return s;
    int e;
    float m = frexpf(x, &e);
    int be = e - 1 + 15;
    if (be >= 1) return (uint16_t)(s | be << 10 | (uint16_t)((m * 2 - 1) * 1024));
    return (uint16_t)(s | (uint16_t)(x * 16777216.0f));
}

/* ---- building both checkpoints ---- */

static expect *add_expect(model_ck *c, const char *name, slot s, uint32_t nd, uint64_t ne0,
                          uint64_t ne1, uint64_t ne2) {
    c->x = realloc(c->x, (c->nx + 1) * sizeof *c->x);
    expect *x = &c->x[c->nx++];
    memset(x, 0, sizeof *x);
    snprintf(x->name, sizeof x->name, "%s", name);
    x->slot = s;
    x->nd = nd;
    x->ne[0] = ne0, x->ne[1] = ne1, x->ne[2] = ne2;
    uint64_t n = ne0 * ne1 * ne2;
    if (s == S_I32) x->ids = calloc(n, sizeof *x->ids);
    else x->v = calloc(n, sizeof *x->v);
    return x;
}

/* Writes `truth` (rows x cols) into the transformers checkpoint as F32, F16 or BF16. */
static void add_hf_float(model_ck *c, const char *name, uint32_t nd, const uint64_t *shape,
                         const float *truth, uint64_t n, int force) {
    int kind = force >= 0 ? force : c->rot++ % 3;
    if (kind == 0) {
        st_add(&c->hf, name, "F32", nd, shape, truth, 4 * n);
        return;
    }
    uint16_t *b = malloc(2 * n);
    for (uint64_t i = 0; i < n; i++) b[i] = kind == 1 ? f16_bits(truth[i]) : bf16_bits(truth[i]);
    st_add(&c->hf, name, kind == 1 ? "F16" : "BF16", nd, shape, b, 2 * n);
    free(b);
}

/* Random values exact in bf16 and f16: +-(1 + k/128) * 2^j, j in [-6, 1]. */
static float plain_value(uint64_t *rng) {
    uint64_t r = next_u64(rng);
    float v = ldexpf(1.0f + (float)(r & 127) / 128.0f, (int)((r >> 7) % 8) - 6);
    return r >> 12 & 1 ? -v : v;
}

/* One non-expert tensor, shape [d0, d1] (d1 = 0: a vector of d0); fp8: the
 * official checkpoint stores it block-scaled FP8 (hf-reference.md §4). */
static void add_tensor(model_ck *c, const char *gguf, const char *hf, const char *off, slot s,
                       bool fp8, uint64_t d0, uint64_t d1) {
    uint32_t nd = d1 ? 2 : 1;
    uint64_t rows = d1 ? d0 : 1, cols = d1 ? d1 : d0, n = rows * cols;
    uint64_t shape[2] = {d0, d1};
    expect *x = add_expect(c, gguf, s, nd, cols, rows, 1);
    if (fp8) {
        uint64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
        uint8_t *codes = malloc(n), *scales = malloc(sr * sc);
        for (uint64_t i = 0; i < sr * sc; i++) scales[i] = (uint8_t)(115 + next_u64(&c->rng) % 7);
        for (uint64_t r = 0; r < rows; r++)
            for (uint64_t col = 0; col < cols; col++) {
                uint8_t code = (uint8_t)next_u64(&c->rng);
                codes[r * cols + col] = code;
                x->v[r * cols + col] = fp8_e4m3(code) * e8m0(scales[(r / 128) * sc + col / 128]);
            }
        char sname[200];
        snprintf(sname, sizeof sname, "%.*s.scale", (int)(strlen(off) - 7), off);
        uint64_t sshape[2] = {sr, sc};
        st_add(&c->off, off, "F8_E4M3", 2, shape, codes, n);
        st_add(&c->off, sname, "F8_E8M0", 2, sshape, scales, sr * sc);
        free(codes);
        free(scales);
    } else {
        for (uint64_t i = 0; i < n; i++) x->v[i] = plain_value(&c->rng);
        if (s == S_F32) st_add(&c->off, off, "F32", nd, shape, x->v, 4 * n);
        else {
            uint16_t *b = malloc(2 * n);
            for (uint64_t i = 0; i < n; i++) b[i] = bf16_bits(x->v[i]);
            st_add(&c->off, off, "BF16", nd, shape, b, 2 * n);
            free(b);
        }
    }
    add_hf_float(c, hf, nd, shape, x->v, n, -1);
}

/* Projections published as Q8_0 are FP8 in the official checkpoint. */
static void add_plain(model_ck *c, const char *gguf, const char *hf, const char *off, slot s,
                      uint64_t d0, uint64_t d1) {
    add_tensor(c, gguf, hf, off, s, s == S_Q8, d0, d1);
}

/* One FP4 expert matrix [rows, cols] into the official checkpoint; truth to out. */
static void add_fp4(model_ck *c, const char *name, uint64_t rows, uint64_t cols, float *out) {
    uint64_t n = rows * cols;
    uint8_t *packed = malloc(n / 2), *scales = malloc(n / 32);
    for (uint64_t i = 0; i < n / 32; i++) scales[i] = (uint8_t)(124 + next_u64(&c->rng) % 5);
    for (uint64_t i = 0; i < n / 2; i++) {
        uint8_t b = (uint8_t)next_u64(&c->rng);
        packed[i] = b;
        float k = e8m0(scales[(2 * i) / 32]); /* rows are whole 32-groups */
        out[2 * i] = fp4_e2m1(b & 15) * k;
        out[2 * i + 1] = fp4_e2m1(b >> 4) * k;
    }
    uint64_t shape[2] = {rows, cols / 2}, sshape[2] = {rows, cols / 32};
    char sname[200];
    snprintf(sname, sizeof sname, "%.*s.scale", (int)(strlen(name) - 7), name);
    st_add(&c->off, name, "I8", 2, shape, packed, n / 2);
    st_add(&c->off, sname, "F8_E8M0", 2, sshape, scales, n / 32);
    free(packed);
    free(scales);
}

static void add_experts(model_ck *c, int il) {
    char gg[96], name[200];
    snprintf(gg, sizeof gg, "blk.%d.ffn_gate_exps.weight", il);
    add_expect(c, gg, S_GATE, 3, D, I, E);
    snprintf(gg, sizeof gg, "blk.%d.ffn_up_exps.weight", il);
    add_expect(c, gg, S_GATE, 3, D, I, E);
    snprintf(gg, sizeof gg, "blk.%d.ffn_down_exps.weight", il);
    add_expect(c, gg, S_DOWN, 3, I, D, E);
    /* after the last add_expect (it may move the array) */
    expect *gate = &c->x[c->nx - 3], *up = &c->x[c->nx - 2], *down = &c->x[c->nx - 1];
    float *gate_up = malloc(sizeof(float) * E * 2 * I * D);
    for (int e = 0; e < E; e++) {
        snprintf(name, sizeof name, "layers.%d.ffn.experts.%d.w1.weight", il, e);
        add_fp4(c, name, I, D, gate->v + (uint64_t)e * I * D);
        snprintf(name, sizeof name, "layers.%d.ffn.experts.%d.w3.weight", il, e);
        add_fp4(c, name, I, D, up->v + (uint64_t)e * I * D);
        snprintf(name, sizeof name, "layers.%d.ffn.experts.%d.w2.weight", il, e);
        add_fp4(c, name, D, I, down->v + (uint64_t)e * D * I);
        memcpy(gate_up + (uint64_t)e * 2 * I * D, gate->v + (uint64_t)e * I * D, sizeof(float) * I * D);
        memcpy(gate_up + (uint64_t)e * 2 * I * D + I * D, up->v + (uint64_t)e * I * D, sizeof(float) * I * D);
    }
    uint64_t s_gu[3] = {E, 2 * I, D}, s_dn[3] = {E, D, I};
    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.gate_up_proj", il);
    add_hf_float(c, name, 3, s_gu, gate_up, (uint64_t)E * 2 * I * D, 2);
    snprintf(name, sizeof name, "model.layers.%d.mlp.experts.down_proj", il);
    add_hf_float(c, name, 3, s_dn, down->v, (uint64_t)E * D * I, 1);
    free(gate_up);
}

static void add_tid2eid(model_ck *c, int il) {
    char gg[96], hf[200], off[200];
    snprintf(gg, sizeof gg, "blk.%d.ffn_gate_tid2eid.weight", il);
    snprintf(hf, sizeof hf, "model.layers.%d.mlp.gate.tid2eid", il);
    snprintf(off, sizeof off, "layers.%d.ffn.gate.tid2eid", il);
    expect *x = add_expect(c, gg, S_I32, 2, K, V, 1);
    int64_t *v = malloc(sizeof *v * V * K);
    for (int i = 0; i < V * K; i++) v[i] = x->ids[i] = (int32_t)(next_u64(&c->rng) % E);
    uint64_t shape[2] = {V, K};
    st_add(&c->hf, hf, "I64", 2, shape, v, sizeof *v * V * K);
    st_add(&c->off, off, "I64", 2, shape, v, sizeof *v * V * K);
    free(v);
}

#define P(gsuf, hsuf, osuf, s, d0, d1)                                              \
    do {                                                                           \
        snprintf(gg, sizeof gg, "blk.%d." gsuf, il);                               \
        snprintf(hf, sizeof hf, "model.layers.%d." hsuf, il);                      \
        snprintf(off, sizeof off, "layers.%d." osuf, il);                          \
        add_plain(c, gg, hf, off, s, d0, d1);                                      \
    } while (0)

static void add_layer(model_ck *c, int il) {
    char gg[96], hf[200], off[200];
    uint32_t r = ratios[il];
    uint64_t cw = (r == 4 ? 2 : 1) * HD;
    P("hc_attn_fn.weight", "attn_hc.fn", "hc_attn_fn", S_F16, MIX, 4 * D);
    P("hc_attn_scale.weight", "attn_hc.scale", "hc_attn_scale", S_F32, 3, 0);
    P("hc_attn_base.weight", "attn_hc.base", "hc_attn_base", S_F32, MIX, 0);
    P("attn_norm.weight", "input_layernorm.weight", "attn_norm.weight", S_F32, D, 0);
    P("attn_q_a.weight", "self_attn.q_a_proj.weight", "attn.wq_a.weight", S_Q8, RQ, D);
    P("attn_q_a_norm.weight", "self_attn.q_a_norm.weight", "attn.q_norm.weight", S_F32, RQ, 0);
    P("attn_q_b.weight", "self_attn.q_b_proj.weight", "attn.wq_b.weight", S_Q8, H * HD, RQ);
    P("attn_kv.weight", "self_attn.kv_proj.weight", "attn.wkv.weight", S_Q8, HD, D);
    P("attn_kv_a_norm.weight", "self_attn.kv_norm.weight", "attn.kv_norm.weight", S_F32, HD, 0);
    P("attn_sinks.weight", "self_attn.sinks", "attn.attn_sink", S_F32, H, 0);
    P("attn_output_a.weight", "self_attn.o_a_proj.weight", "attn.wo_a.weight", S_Q8, G * RO, H * HD / G);
    P("attn_output_b.weight", "self_attn.o_b_proj.weight", "attn.wo_b.weight", S_Q8, D, G * RO);
    P("hc_ffn_fn.weight", "ffn_hc.fn", "hc_ffn_fn", S_F16, MIX, 4 * D);
    P("hc_ffn_scale.weight", "ffn_hc.scale", "hc_ffn_scale", S_F32, 3, 0);
    P("hc_ffn_base.weight", "ffn_hc.base", "hc_ffn_base", S_F32, MIX, 0);
    P("ffn_norm.weight", "post_attention_layernorm.weight", "ffn_norm.weight", S_F32, D, 0);
    P("ffn_gate_inp.weight", "mlp.gate.weight", "ffn.gate.weight", S_F16, E, D);
    P("ffn_gate_shexp.weight", "mlp.shared_experts.gate_proj.weight", "ffn.shared_experts.w1.weight", S_Q8, I, D);
    P("ffn_up_shexp.weight", "mlp.shared_experts.up_proj.weight", "ffn.shared_experts.w3.weight", S_Q8, I, D);
    P("ffn_down_shexp.weight", "mlp.shared_experts.down_proj.weight", "ffn.shared_experts.w2.weight", S_Q8, D, I);
    if (r) {
        P("attn_compressor_ape.weight", "self_attn.compressor.position_bias", "attn.compressor.ape", S_F16, r, cw);
        P("attn_compressor_kv.weight", "self_attn.compressor.kv_proj.weight", "attn.compressor.wkv.weight", S_F16, cw, D);
        P("attn_compressor_gate.weight", "self_attn.compressor.gate_proj.weight", "attn.compressor.wgate.weight", S_F16, cw, D);
        P("attn_compressor_norm.weight", "self_attn.compressor.kv_norm.weight", "attn.compressor.norm.weight", S_F32, HD, 0);
    }
    if (r == 4) {
        snprintf(gg, sizeof gg, "blk.%d.indexer.attn_q_b.weight", il); /* FP8 in the checkpoint, F16 published */
        snprintf(hf, sizeof hf, "model.layers.%d.self_attn.compressor.indexer.q_b_proj.weight", il);
        snprintf(off, sizeof off, "layers.%d.attn.indexer.wq_b.weight", il);
        add_tensor(c, gg, hf, off, S_F16, true, HI * DI, RQ);
        P("indexer.proj.weight", "self_attn.compressor.indexer.scorer.weights_proj.weight", "attn.indexer.weights_proj.weight", S_F16, HI, D);
        P("indexer_compressor_ape.weight", "self_attn.compressor.indexer.position_bias", "attn.indexer.compressor.ape", S_F16, 4, 2 * DI);
        P("indexer_compressor_kv.weight", "self_attn.compressor.indexer.kv_proj.weight", "attn.indexer.compressor.wkv.weight", S_F16, 2 * DI, D);
        P("indexer_compressor_gate.weight", "self_attn.compressor.indexer.gate_proj.weight", "attn.indexer.compressor.wgate.weight", S_F16, 2 * DI, D);
        P("indexer_compressor_norm.weight", "self_attn.compressor.indexer.kv_norm.weight", "attn.indexer.compressor.norm.weight", S_F32, DI, 0);
    }
    if (il < NHASH) add_tid2eid(c, il);
    else P("exp_probs_b.bias", "mlp.gate.e_score_correction_bias", "ffn.gate.bias", S_F32, E, 0);
    add_experts(c, il);
}

static void build_model(model_ck *c, int n_layers) {
    memset(c, 0, sizeof *c);
    c->n_layers = n_layers;
    c->rng = 0x9e3779b97f4a7c15ull;
    add_plain(c, "token_embd.weight", "model.embed_tokens.weight", "embed.weight", S_F16, V, D);
    for (int il = 0; il < n_layers; il++) add_layer(c, il);
    add_plain(c, "output_hc_base.weight", "model.hc_head.hc_base", "hc_head_base", S_F32, 4, 0);
    add_plain(c, "output_hc_fn.weight", "model.hc_head.hc_fn", "hc_head_fn", S_F16, 4, 4 * D);
    add_plain(c, "output_hc_scale.weight", "model.hc_head.hc_scale", "hc_head_scale", S_F32, 1, 0);
    add_plain(c, "output_norm.weight", "model.norm.weight", "norm.weight", S_F32, D, 0);
    add_plain(c, "output.weight", "lm_head.weight", "head.weight", S_Q8, V, D);
}

static void free_model(model_ck *c) {
    for (size_t i = 0; i < c->nx; i++) {
        free(c->x[i].v);
        free(c->x[i].ids);
    }
    free(c->x);
    st_free(&c->hf);
    st_free(&c->off);
}

/* ---- config.json in both spellings ---- */

static const char *hf_config =
    "{\"model_type\": \"deepseek_v4\", \"vocab_size\": 320, \"hidden_size\": 256,"
    " \"num_hidden_layers\": 4, \"num_attention_heads\": 2, \"num_key_value_heads\": 1,"
    " \"head_dim\": 128, \"partial_rotary_factor\": 0.5, \"q_lora_rank\": 32, \"o_groups\": 2,"
    " \"o_lora_rank\": 32, \"n_routed_experts\": 2, \"num_experts_per_tok\": 1,"
    " \"n_shared_experts\": 1, \"moe_intermediate_size\": 256, \"index_n_heads\": 2,"
    " \"index_head_dim\": 64, \"index_topk\": 2, \"sliding_window\": 8, \"hc_mult\": 4,"
    " \"hc_sinkhorn_iters\": 20, \"hc_eps\": 1e-06, \"swiglu_limit\": 7.0, \"rms_norm_eps\": 1e-06,"
    " \"routed_scaling_factor\": 1.5, \"norm_topk_prob\": true, \"scoring_func\": \"sqrtsoftplus\","
    " \"rope_theta\": 10000.0, \"compress_rope_theta\": 160000.0, \"max_position_embeddings\": 1048576,"
    " \"layer_types\": [\"sliding_attention\", \"compressed_sparse_attention\","
    " \"heavily_compressed_attention\", \"compressed_sparse_attention\"],"
    " \"compress_rates\": {\"compressed_sparse_attention\": 4, \"heavily_compressed_attention\": 8},"
    " \"mlp_layer_types\": [\"hash_moe\", \"hash_moe\", \"moe\", \"moe\"],"
    " \"rope_parameters\": {\"main\": {\"rope_type\": \"default\", \"rope_theta\": 10000.0},"
    " \"compress\": {\"rope_type\": \"yarn\", \"rope_theta\": 160000.0, \"factor\": 16.0,"
    " \"original_max_position_embeddings\": 65536, \"beta_fast\": 32.0, \"beta_slow\": 1.0,"
    " \"attention_factor\": 1.0}}}\n";

static const char *official_config =
    "{\"vocab_size\": 320, \"hidden_size\": 256, \"num_hidden_layers\": 4,"
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 128,"
    " \"qk_rope_head_dim\": 64, \"q_lora_rank\": 32, \"o_groups\": 2, \"o_lora_rank\": 32,"
    " \"n_routed_experts\": 2, \"num_experts_per_tok\": 1, \"n_shared_experts\": 1,"
    " \"moe_intermediate_size\": 256, \"index_n_heads\": 2, \"index_head_dim\": 64,"
    " \"index_topk\": 2, \"sliding_window\": 8, \"hc_mult\": 4, \"hc_sinkhorn_iters\": 20,"
    " \"hc_eps\": 1e-06, \"swiglu_limit\": 7.0, \"rms_norm_eps\": 1e-06,"
    " \"routed_scaling_factor\": 1.5, \"norm_topk_prob\": true, \"scoring_func\": \"sqrtsoftplus\","
    " \"topk_method\": \"noaux_tc\", \"rope_theta\": 10000, \"compress_rope_theta\": 160000,"
    " \"max_position_embeddings\": 1048576, \"num_hash_layers\": 2,"
    " \"compress_ratios\": [0, 4, 8, 4, 0], \"num_nextn_predict_layers\": 1,"
    " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 16, \"original_max_position_embeddings\": 65536,"
    " \"beta_fast\": 32, \"beta_slow\": 1},"
    " \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\", \"scale_fmt\": \"ue8m0\","
    " \"weight_block_size\": [128, 128], \"expert_dtype\": \"fp4\"}}\n";

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot write %s", path);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void make_dir(char *out, size_t n, const char *name) {
    const char *tmp = getenv("DS4_TMP") ? getenv("DS4_TMP") : "/tmp";
    snprintf(out, n, "%s/%s", tmp, name);
    mkdir(out, 0755);
}

/* ---- checking a converted file ---- */

static uint32_t expected_type(slot s, const char *type, const char *experts) {
    bool q8 = !strcmp(type, "q8"), f16 = !strcmp(type, "f16");
    switch (s) {
    case S_Q8: return q8 ? DS4_TYPE_Q8_0 : f16 ? DS4_TYPE_F16 : DS4_TYPE_F32;
    case S_F16: return q8 || f16 ? DS4_TYPE_F16 : DS4_TYPE_F32;
    case S_F32: return DS4_TYPE_F32;
    case S_I32: return DS4_TYPE_I32;
    case S_GATE: case S_DOWN:
        if (!strcmp(experts, "q2")) return s == S_GATE ? DS4_TYPE_IQ2_XXS : DS4_TYPE_Q2_K;
        if (!strcmp(experts, "q4")) return DS4_TYPE_Q4_K;
        return !strcmp(experts, "f16") ? DS4_TYPE_F16 : DS4_TYPE_F32;
    }
    return 0;
}

static void check_hparams(const ds4_hparams *hp, int n_layers, const char *label) {
    CHECK(hp->n_layer == (uint32_t)n_layers && hp->n_embd == D && hp->n_vocab == V && hp->n_head == H &&
              hp->head_dim == HD && hp->n_rot == ROT && hp->q_lora == RQ && hp->o_lora == RO &&
              hp->n_out_group == G,
          "%s: attention dims", label);
    CHECK(hp->n_expert == E && hp->n_expert_used == K && hp->n_ff_exp == I &&
              hp->n_hash_layer == (uint32_t)(n_layers < NHASH ? n_layers : NHASH) &&
              hp->n_expert_shared == 1,
          "%s: expert dims (hash %u)", label, hp->n_hash_layer);
    CHECK(hp->n_swa == SWA && hp->n_indexer_head == HI && hp->indexer_head_dim == DI &&
              hp->indexer_top_k == TOPK && hp->n_hc == 4 && hp->hc_sinkhorn_iter == 20,
          "%s: window / indexer / HC", label);
    for (int il = 0; il < n_layers; il++) {
        CHECK(hp->compress_ratio[il] == ratios[il], "%s: ratio[%d] = %u", label, il,
              hp->compress_ratio[il]);
        CHECK(hp->swiglu_clamp[il] == 7.0f, "%s: swiglu clamp[%d]", label, il);
    }
    CHECK(hp->rope_freq_base == 10000.0f && hp->compress_rope_freq_base == 160000.0f &&
              hp->rope_scale_factor == 16.0f && hp->rope_orig_ctx == 65536 &&
              hp->yarn_beta_fast == 32.0f && hp->yarn_beta_slow == 1.0f,
          "%s: rope", label);
    CHECK(hp->expert_weight_scale == 1.5f && hp->expert_weights_norm && hp->rms_eps == 1e-6f &&
              hp->hc_eps == 1e-6f,
          "%s: scalars", label);
}

static void check_tensor(const gguf_file *f, const expect *x, uint32_t type, const char *label) {
    const gguf_tensor_info *t = gguf_find_tensor(f, x->name);
    CHECK(t != NULL, "%s: %s missing from the GGUF", label, x->name);
    if (!t) return;
    CHECK(t->type == type, "%s: %s has type %s, expected %s", label, x->name,
          ds4_type_name(t->type), ds4_type_name(type));
    bool shape_ok = t->n_dims == x->nd;
    for (uint32_t i = 0; i < 3 && shape_ok; i++) shape_ok = t->ne[i] == x->ne[i];
    CHECK(shape_ok, "%s: %s has shape [%llu,%llu,%llu]", label, x->name,
          (unsigned long long)t->ne[0], (unsigned long long)t->ne[1], (unsigned long long)t->ne[2]);
    if (!shape_ok || t->type != type) return;
    uint64_t rows = x->ne[1] * x->ne[2];
    if (type == DS4_TYPE_I32) {
        CHECK(!memcmp(t->data, x->ids, 4 * rows * x->ne[0]), "%s: %s ids differ", label, x->name);
        return;
    }
    uint64_t rb = ds4_type_row_bytes(type, x->ne[0]);
    uint8_t *buf = malloc(rb);
    /* IQ2_XXS: importance = each column's sum of squares over its matrix
     * (one per expert), summed in row order (hf-reference.md §4). */
    float *imat = NULL;
    if (type == DS4_TYPE_IQ2_XXS) {
        imat = calloc(x->ne[2] * x->ne[0], sizeof *imat);
        for (uint64_t r = 0; r < rows; r++)
            for (uint64_t col = 0; col < x->ne[0]; col++) {
                float v = x->v[r * x->ne[0] + col];
                imat[(r / x->ne[1]) * x->ne[0] + col] += v * v;
            }
    }
    uint64_t bad = 0, first = 0;
    /* Quantised expert tensors: a sample of rows (every 5th and each expert's
     * last) pins the row mapping without re-running the slow searches. */
    bool sample = x->nd == 3 && type != DS4_TYPE_F32 && type != DS4_TYPE_F16;
    for (uint64_t r = 0; r < rows; r++) {
        if (sample && r % 5 && (r + 1) % x->ne[1]) continue;
        ds4_quantize_row(type, x->v + r * x->ne[0], buf, x->ne[0],
                         imat ? imat + (r / x->ne[1]) * x->ne[0] : NULL);
        if (memcmp(buf, (const uint8_t *)t->data + r * rb, rb) && !bad++) first = r;
    }
    CHECK(bad == 0, "%s: %s: %llu of %llu rows differ from the decoded original (first row %llu)",
          label, x->name, (unsigned long long)bad, (unsigned long long)rows,
          (unsigned long long)first);
    free(buf);
    free(imat);
}

static void convert_and_check(const model_ck *c, const char *dir, const char *type,
                              const char *experts, const char *label) {
    char out[2200];
    snprintf(out, sizeof out, "%s-%s-%s.gguf", dir, type, experts);
    ds4_convert_opts o = {.in_dir = dir, .out_path = out, .quiet = true, .threads = 2};
    ds4_err err = {{0}};
    int rc = ds4_convert_set_types(&o, type, experts, &err);
    if (!rc) rc = ds4_convert(&o, &err);
    CHECK(rc == 0, "%s: convert --type %s --experts %s: %s", label, type, experts, err.msg);
    if (rc) return;
    ds4_model m;
    rc = ds4_model_open(&m, out, &err);
    CHECK(rc == 0, "%s: ds4_model_open: %s", label, err.msg);
    if (rc) return;
    check_hparams(&m.hp, c->n_layers, label);
    CHECK(m.file.n_tensors == c->nx, "%s: %llu tensors, expected %zu", label,
          (unsigned long long)m.file.n_tensors, c->nx);
    for (size_t i = 0; i < c->nx; i++)
        check_tensor(&m.file, &c->x[i], expected_type(c->x[i].slot, type, experts), label);
    ds4_model_close(&m);
    printf("%s --type %s --experts %s: %zu tensors checked\n", label, type, experts, c->nx);
}

/* ---- (a) both namings ---- */

/* config text with num_hidden_layers set to n (the arrays keep 4+ entries,
 * which the converter truncates as it does the official 44th entry). */
static void write_config(const char *dir, const char *text, int n) {
    char path[2300], *t = strdup(text), *p = strstr(t, "\"num_hidden_layers\": 4");
    CHECK(p != NULL, "config template");
    if (p) p[strlen("\"num_hidden_layers\": ")] = (char)('0' + n);
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, t);
    free(t);
}

static void write_checkpoints(const model_ck *c, const char *tag, char *hf_dir, char *off_dir,
                              size_t n) {
    char path[2300], name[64];
    snprintf(name, sizeof name, "ckpt-hf%s", tag);
    make_dir(hf_dir, n, name);
    write_config(hf_dir, hf_config, c->n_layers);
    snprintf(path, sizeof path, "%s/model.safetensors", hf_dir);
    CHECK(st_write(&c->hf, path) == 0, "write %s", path);

    snprintf(name, sizeof name, "ckpt-official%s", tag);
    make_dir(off_dir, n, name);
    write_config(off_dir, official_config, c->n_layers);
    size_t half = c->off.n / 2;
    const char *shard[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    for (int s = 0; s < 2; s++) {
        snprintf(path, sizeof path, "%s/%s", off_dir, shard[s]);
        CHECK(st_write_range(&c->off, s ? half : 0, s ? c->off.n : half, path) == 0, "write %s", path);
    }
    json_t *map = json_object();
    for (size_t i = 0; i < c->off.n; i++)
        json_object_set_new(map, c->off.e[i].name, json_string(shard[i >= half]));
    json_t *index = json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t)0, "weight_map", map);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", off_dir);
    CHECK(json_dump_file(index, path, 0) == 0, "write %s", path);
    json_decref(index);
}

/* ---- (b) malformed input ---- */

static void expect_st_error(const char *header, uint64_t hlen, uint64_t data_len,
                            const char *want) {
    uint64_t size;
    uint8_t *b = st_header_bytes(hlen ? hlen : strlen(header), header, data_len, &size);
    ds4_st_file f;
    ds4_err err = {{0}};
    int rc = ds4_st_open_memory(&f, b, size, "bad.safetensors", &err);
    CHECK(rc != 0 && strstr(err.msg, want), "header %.60s: expected an error with \"%s\", got %s",
          header, want, rc ? err.msg : "success");
    if (!rc) ds4_st_close(&f);
    free(b);
}

static void test_malformed_files(void) {
    ds4_st_file f;
    ds4_err err = {{0}};
    uint8_t tiny[4] = {1, 0, 0, 0};
    CHECK(ds4_st_open_memory(&f, tiny, 4, "t", &err) != 0 && strstr(err.msg, "too short"), "%s", err.msg);
    const char *ok = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    expect_st_error(ok, 1 << 20, 8, "exceeds the file");
    expect_st_error(ok, (uint64_t)1 << 62, 8, "exceeds the file");
    expect_st_error("[1,2,3]", 0, 0, "not a JSON object");
    expect_st_error("{\"a\":", 0, 0, "header JSON");
    expect_st_error("{\"a\":{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, "unknown dtype");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 4, "run past");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 0, 12, "overlap");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}", 0, 20, "gap");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8, "shape needs 12 bytes");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 8, "non-negative");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 0, 8, "end before");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                    "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 0, 16, "duplicate");
    expect_st_error(ok, 0, 12, "the tensors cover 8");
    expect_st_error("{\"__metadata__\":{\"x\":1}}", 0, 0, "is not a string");
    expect_st_error("{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 0, 1, "dimensions");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 0, 8, "overflow");
    expect_st_error("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, "dtype");
    expect_st_error("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 0, 8, "data_offsets");

    /* Random mutations of a valid two-tensor file: any outcome but a crash. */
    st_writer w = {0};
    float vals[6] = {1, 2, 3, 4, 5, 6};
    uint64_t s1[1] = {2}, s2[2] = {2, 2};
    st_add(&w, "x.weight", "F32", 1, s1, vals, 8);
    st_add(&w, "y.weight", "BF16", 2, s2, vals, 8);
    char path[2200];
    make_dir(path, sizeof path, "mut");
    strcat(path, "/m.safetensors");
    CHECK(st_write(&w, path) == 0, "write %s", path);
    st_free(&w);
    FILE *fp = fopen(path, "rb");
    uint8_t good[512];
    size_t n = fp ? fread(good, 1, sizeof good, fp) : 0;
    if (fp) fclose(fp);
    CHECK(ds4_st_open_memory(&f, good, n, "good", &err) == 0 && f.n_tensors == 2, "valid file: %s", err.msg);
    ds4_st_close(&f);
    uint64_t rng = 12345;
    int opened = 0;
    for (int iter = 0; iter < 4000; iter++) {
        uint8_t b[512];
        memcpy(b, good, n);
        int edits = 1 + (int)(next_u64(&rng) % 4);
        for (int k = 0; k < edits; k++) b[next_u64(&rng) % n] = (uint8_t)next_u64(&rng);
        uint64_t len = iter % 7 ? n : next_u64(&rng) % (n + 1);
        if (ds4_st_open_memory(&f, b, len, "mut", &err) == 0) {
            opened++;
            for (uint64_t i = 0; i < f.n_tensors; i++)
                CHECK(f.tensors[i].data + f.tensors[i].nbytes <= b + len, "tensor past the buffer");
            ds4_st_close(&f);
        }
    }
    printf("mutations: %d of 4000 still valid files\n", opened);
}

/* Converting a modified copy of the transformers checkpoint fails with `want`. */
static void expect_convert_error(model_ck *c, const char *config, void (*edit)(st_writer *),
                                 const char *want) {
    char dir[2048], path[2300];
    make_dir(dir, sizeof dir, "ckpt-bad");
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_text(path, config);
    st_writer w = {0};
    for (size_t i = 0; i < c->hf.n; i++)
        st_add(&w, c->hf.e[i].name, c->hf.e[i].dtype, c->hf.e[i].nd, c->hf.e[i].shape,
               c->hf.e[i].data, c->hf.e[i].nbytes);
    if (edit) edit(&w);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(st_write(&w, path) == 0, "write %s", path);
    st_free(&w);
    snprintf(path, sizeof path, "%s/out.gguf", dir);
    ds4_convert_opts o = {.in_dir = dir, .out_path = path, .quiet = true};
    ds4_err err = {{0}};
    ds4_convert_set_types(&o, "f32", "f32", &err);
    int rc = ds4_convert(&o, &err);
    CHECK(rc != 0 && strstr(err.msg, want), "expected an error with \"%s\", got %s", want,
          rc ? err.msg : "success");
    struct stat sb;
    CHECK(stat(path, &sb) != 0, "a failed conversion left %s behind", path);
}

static void drop_kv(st_writer *w) { st_remove(w, "model.layers.3.self_attn.kv_proj.weight"); }

static void bad_gate_shape(st_writer *w) {
    st_entry *e = st_get(w, "model.layers.0.mlp.gate.weight");
    e->shape[0] = 1;
    e->nbytes /= 2;
}

static void bad_tid2eid(st_writer *w) {
    st_entry *e = st_get(w, "model.layers.1.mlp.gate.tid2eid");
    int64_t v = 7;
    memcpy(e->data + 8 * 5, &v, 8);
}

static void bad_dtype(st_writer *w) {
    st_entry *e = st_get(w, "model.layers.2.self_attn.sinks"); /* same element size, wrong kind */
    snprintf(e->dtype, sizeof e->dtype, "%s", !strcmp(e->dtype, "F32") ? "I32" : "I16");
}

static void nan_weight(st_writer *w) {
    st_entry *e = st_get(w, "model.norm.weight");
    float nan = NAN;
    if (!strcmp(e->dtype, "F32")) memcpy(e->data + 4, &nan, 4);
    else memcpy(e->data + 2, (uint16_t[]){0x7fc0}, 2); /* NaN in both F16 and BF16 */
}

static void test_bad_checkpoints(model_ck *c) {
    expect_convert_error(c, hf_config, drop_kv, "missing model.layers.3.self_attn.kv_proj.weight");
    expect_convert_error(c, hf_config, bad_gate_shape,
                         "model.layers.0.mlp.gate.weight: expected shape [2,256], found [1,256]");
    expect_convert_error(c, hf_config, bad_tid2eid, "routes to expert 7");
    expect_convert_error(c, hf_config, bad_dtype, "model.layers.2.self_attn.sinks: dtype I");
    expect_convert_error(c, hf_config, nan_weight, "model.norm.weight: row 0, column 1 is not finite");
    const char *no_layers = "{\"vocab_size\": 320, \"hidden_size\": 256, \"num_hidden_layers\": 4,"
                            " \"num_attention_heads\": 2, \"head_dim\": 128, \"q_lora_rank\": 32,"
                            " \"o_groups\": 2, \"o_lora_rank\": 32, \"n_routed_experts\": 2,"
                            " \"num_experts_per_tok\": 1, \"moe_intermediate_size\": 256,"
                            " \"index_n_heads\": 2, \"index_head_dim\": 64, \"index_topk\": 2}";
    expect_convert_error(c, no_layers, NULL, "neither compress_ratios nor layer_types");
    /* Zero output groups: a clear error about the o_a projection, no division by zero. */
    char zero_groups[4096];
    snprintf(zero_groups, sizeof zero_groups, "%s", hf_config);
    memcpy(strstr(zero_groups, "\"o_groups\": 2") + 12, "0", 1);
    expect_convert_error(c, zero_groups, NULL, "model.layers.0.self_attn.o_a_proj.weight: expected shape");
    expect_convert_error(c, "{\"hidden_size\": 256}", NULL, "missing num_hidden_layers");
    expect_convert_error(c, "{\"num_hidden_layers\": 4.5}", NULL, "num_hidden_layers = 4.5");

    ds4_convert_opts o = {0};
    ds4_err err = {{0}};
    CHECK(ds4_convert_set_types(&o, "q3", "f32", &err) != 0 && strstr(err.msg, "--type q3"), "%s", err.msg);
    CHECK(ds4_convert_set_types(&o, "f32", "q8", &err) != 0 && strstr(err.msg, "--experts q8"), "%s", err.msg);

    char dir[2048];
    make_dir(dir, sizeof dir, "ckpt-empty");
    o = (ds4_convert_opts){.in_dir = dir, .out_path = "/nonexistent/x.gguf", .quiet = true};
    ds4_convert_set_types(&o, "f32", "f32", &err);
    char cfg[2300];
    snprintf(cfg, sizeof cfg, "%s/config.json", dir);
    write_text(cfg, hf_config);
    CHECK(ds4_convert(&o, &err) != 0 && strstr(err.msg, "no model.safetensors"), "%s", err.msg);
}

/* An index naming a shard outside the directory, or a tensor the shard lacks. */
static void test_bad_index(const char *off_dir) {
    char path[2300];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", off_dir);
    const char *cases[2][2] = {
        {"{\"weight_map\": {\"embed.weight\": \"../model-00001-of-00002.safetensors\"}}", "not a file name"},
        {"{\"weight_map\": {\"nope.weight\": \"model-00001-of-00002.safetensors\"}}", "has no such tensor"},
    };
    for (int i = 0; i < 2; i++) {
        write_text(path, cases[i][0]);
        ds4_convert_opts o = {.in_dir = off_dir, .out_path = "/dev/null", .quiet = true};
        ds4_err err = {{0}};
        ds4_convert_set_types(&o, "f32", "f32", &err);
        CHECK(ds4_convert(&o, &err) != 0 && strstr(err.msg, cases[i][1]), "index case %d: %s", i, err.msg);
    }
}

/* --tokenizer: the vocabulary comes from tokenizer.json, padded to vocab_size. */
static void test_tokenizer_json(const char *hf_dir) {
    char tok[2300], out[2300];
    snprintf(tok, sizeof tok, "%s/tokenizer.json", hf_dir);
    write_text(tok, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"ab\": 2},"
                    " \"merges\": [\"a b\"]}, \"added_tokens\": []}");
    snprintf(out, sizeof out, "%s-tok.gguf", hf_dir);
    ds4_convert_opts o = {.in_dir = hf_dir, .out_path = out, .tokenizer_path = tok, .quiet = true};
    ds4_err err = {{0}};
    ds4_convert_set_types(&o, "f32", "f32", &err);
    int rc = ds4_convert(&o, &err);
    CHECK(rc == 0, "convert --tokenizer: %s", err.msg);
    gguf_file f;
    if (rc || gguf_open(&f, out, &err)) return;
    const gguf_kv *tokens = gguf_find_kv(&f, "tokenizer.ggml.tokens");
    const gguf_kv *merges = gguf_find_kv(&f, "tokenizer.ggml.merges");
    CHECK(tokens && tokens->value.v.arr.count == V, "tokens: expected %d entries", V);
    CHECK(merges && merges->value.v.arr.count == 1, "merges: expected the one merge");
    if (tokens && tokens->value.v.arr.count == V) {
        gguf_value t2;
        CHECK(gguf_array_get(&tokens->value, 2, &t2, &err) == 0 && gguf_str_eq(t2.v.str, "ab"),
              "token 2 should be \"ab\"");
    }
    gguf_close(&f);
}

int main(void) {
    /* All four layers in f32 / f16 (bit-exact checks of every path); the
     * quantised runs use the first two layers, as the K-quant and IQ2_XXS
     * searches are slow. */
    model_ck full, two;
    build_model(&full, NL);
    build_model(&two, 2);
    char hf_dir[2048], off_dir[2048], hf2[2048], off2[2048];
    write_checkpoints(&full, "", hf_dir, off_dir, sizeof hf_dir);
    write_checkpoints(&two, "-2", hf2, off2, sizeof hf2);

    convert_and_check(&full, hf_dir, "f32", "f32", "transformers");
    convert_and_check(&full, off_dir, "f32", "f32", "official");
    convert_and_check(&full, off_dir, "q8", "f16", "official");
    convert_and_check(&two, hf2, "q8", "q4", "transformers");
    convert_and_check(&two, off2, "f16", "q2", "official");
    test_tokenizer_json(hf2);

    test_malformed_files();
    test_bad_checkpoints(&full);
    test_bad_index(off_dir);
    free_model(&full);
    free_model(&two);
    return TEST_DONE();
}
