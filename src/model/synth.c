/* synth.c — writes synthetic DeepSeek V4 Flash GGUFs (see synth.h).
 *
 * The tensor list is layout.c's, the one model.c's binder checks, so a
 * file from here loads through ds4_model_open unchanged. Each
 * tensor's data comes from its own generator seeded by (seed, name), so the
 * values of a tensor do not depend on which other tensors exist.
 *
 * Quantised tensors are random codes with the block scales patched: for each
 * type the mean and RMS of a block with d = 1 (and dmin chosen to cancel the
 * mean, for the K-quants) are measured once with the library's dequantiser,
 * and d is then set to std / RMS. Every bit pattern of the code bytes is a
 * valid block for Q8_0, Q2_K, Q4_K and IQ2_XXS (model-spec §14). Those and
 * the F16/F32 tensors come from the counter-based generator of synth_fill.h
 * (large ones filled by several threads); ds4_synth_image_build leaves the
 * large weight matrices to the backend, which runs the same generator in
 * device memory. */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../quant/quant.h"
#include "layout.h"
#include "synth.h"
#include "synth_fill.h"

#define IMAGE_ALIGN (2u << 20) /* memory images start on a 2 MiB (huge page) boundary */

/* ---- presets ---- */

/* Ratios 0,0,4,R,4,R,...; hash routing on the first three layers. */
static void layout_layers(ds4_hparams *hp, uint32_t n_layer, uint32_t other_ratio) {
    hp->n_layer = n_layer;
    hp->n_hash_layer = n_layer < 3 ? n_layer : 3;
    for (uint32_t il = 0; il < DS4_MAX_LAYERS; il++)
        hp->compress_ratio[il] = il >= n_layer || il < 2 ? 0 : il % 2 == 0 ? 4 : other_ratio;
}

int ds4_synth_preset(const char *name, uint32_t n_layer, ds4_hparams *hp, ds4_err *err) {
    memset(hp, 0, sizeof *hp);
    /* Published constants (model-spec §1) shared by both presets. */
    hp->n_head_kv = 1;
    hp->n_rot = 64;
    hp->n_expert_shared = 1;
    hp->expert_weight_scale = 1.5f;
    hp->expert_weights_norm = true;
    hp->indexer_head_dim = 128;
    hp->n_hc = DS4_N_HC;
    hp->hc_sinkhorn_iter = 20;
    hp->hc_eps = 1e-6f;
    hp->rms_eps = 1e-6f;
    hp->rope_freq_base = 10000.0f;
    hp->compress_rope_freq_base = 160000.0f;
    hp->rope_scale_factor = 16.0f;
    hp->rope_orig_ctx = 65536;
    hp->yarn_beta_fast = 32.0f;
    hp->yarn_beta_slow = 1.0f;
    hp->context_length = 1048576;
    float clamp;
    uint32_t other_ratio, default_layers;
    if (!strcmp(name, "flash")) {
        hp->n_embd = 4096; hp->n_vocab = 129280; hp->n_head = 64; hp->head_dim = 512;
        hp->q_lora = 1024; hp->o_lora = 1024; hp->n_out_group = 8; hp->n_expert = 256;
        hp->n_expert_used = 6; hp->n_ff_exp = 2048; hp->n_swa = 128; hp->n_indexer_head = 64;
        hp->indexer_top_k = 512;
        clamp = 10.0f;
        other_ratio = 128;
        default_layers = 43;
    } else if (!strcmp(name, "tiny")) {
        hp->n_embd = 256; hp->n_vocab = 1024; hp->n_head = 8; hp->head_dim = 128;
        hp->q_lora = 128; hp->o_lora = 64; hp->n_out_group = 2; hp->n_expert = 16;
        hp->n_expert_used = 4; hp->n_ff_exp = 256; hp->n_swa = 16; hp->n_indexer_head = 16;
        hp->indexer_top_k = 8;
        clamp = 2.0f; /* low enough that the SwiGLU clamp fires (hf-reference §1.1) */
        other_ratio = 16;
        default_layers = 6;
    } else {
        return ds4_fail(err, "unknown preset '%s' (tiny or flash)", name);
    }
    if (n_layer == 0) n_layer = default_layers;
    if (n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "layer count %u is not in 1..%d", n_layer, DS4_MAX_LAYERS);
    for (int il = 0; il < DS4_MAX_LAYERS; il++) hp->swiglu_clamp[il] = clamp;
    layout_layers(hp, n_layer, other_ratio);
    return 0;
}

int ds4_synth_expert_types(const char *name, uint32_t *gate, uint32_t *down, ds4_err *err) {
    if (!ds4_expert_quant_types(name, gate, down))
        return ds4_fail(err, "unknown expert type '%s' (q2, q4, f16 or f32)", name);
    return 0;
}

/* ---- random values ---- */

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t name_seed(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull ^ seed;
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return h;
}

static void random_bytes(uint64_t *s, uint8_t *dst, uint64_t n) {
    uint64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t r = splitmix64(s);
        memcpy(dst + i, &r, 8);
    }
    if (i < n) {
        uint64_t r = splitmix64(s);
        memcpy(dst + i, &r, n - i);
    }
}

/* Offsets of the f16 scale fields inside one block (quant.h structs). */
typedef struct quant_layout { uint32_t type, d_off, dmin_off; bool has_dmin; } quant_layout;
static const quant_layout quant_layouts[] = {
    {DS4_TYPE_Q8_0, 0, 0, false},
    {DS4_TYPE_Q2_K, 80, 82, true},
    {DS4_TYPE_Q4_K, 0, 2, true},
    {DS4_TYPE_IQ2_XXS, 0, 0, false},
};

typedef struct quant_calib { float rms; float dmin_ratio; bool done; } quant_calib;

static const quant_layout *layout_of(uint32_t type) {
    for (size_t i = 0; i < sizeof quant_layouts / sizeof quant_layouts[0]; i++)
        if (quant_layouts[i].type == type) return &quant_layouts[i];
    return NULL;
}

static void set_scales(const quant_layout *q, uint8_t *block, float d, float dmin) {
    uint16_t h = ds4_f32_to_f16(d);
    memcpy(block + q->d_off, &h, 2);
    if (q->has_dmin) {
        h = ds4_f32_to_f16(dmin);
        memcpy(block + q->dmin_off, &h, 2);
    }
}

/* Mean and RMS of random blocks under given scales. */
static void block_stats(const quant_layout *q, const ds4_type_info *ti, float d, float dmin,
                        double *mean, double *rms) {
    enum { N_BLOCKS = 64 };
    uint64_t s = 12345;
    uint8_t *raw = malloc((size_t)ti->block_bytes * N_BLOCKS);
    float *val = malloc(sizeof(float) * ti->block_elems * N_BLOCKS);
    random_bytes(&s, raw, (uint64_t)ti->block_bytes * N_BLOCKS);
    for (int b = 0; b < N_BLOCKS; b++) set_scales(q, raw + (size_t)b * ti->block_bytes, d, dmin);
    uint64_t n = (uint64_t)ti->block_elems * N_BLOCKS;
    ds4_dequantize_row(q->type, raw, val, n);
    double sum = 0, sq = 0;
    for (uint64_t i = 0; i < n; i++) { sum += val[i]; sq += (double)val[i] * val[i]; }
    *mean = sum / (double)n;
    *rms = sqrt(sq / (double)n);
    free(raw);
    free(val);
}

static void calibrate(const quant_layout *q, quant_calib *c) {
    const ds4_type_info *ti = ds4_type_info_get(q->type);
    double mean_d, mean_m, rms;
    block_stats(q, ti, 1.0f, 0.0f, &mean_d, &rms);
    c->dmin_ratio = 0;
    if (q->has_dmin) {
        block_stats(q, ti, 0.0f, 1.0f, &mean_m, &rms);
        if (mean_m < 0) c->dmin_ratio = (float)(mean_d / -mean_m);
    }
    block_stats(q, ti, 1.0f, c->dmin_ratio, &mean_d, &rms);
    c->rms = rms > 0 ? (float)rms : 1.0f;
    c->done = true;
}

/* ---- tensor list ---- */

typedef enum init_kind {
    INIT_GAUSS,   /* mean + std * unit noise */
    INIT_TID2EID, /* distinct random experts per token */
} init_kind;

typedef struct tensor_spec {
    struct synth *owner;
    char name[64];
    uint32_t type, n_dims;
    uint64_t ne[3];
    init_kind init;
    float mean, std;
    bool matrix;  /* a weight matrix (linear or embedding role) */
    bool device;  /* left for the backend to generate (ds4_synth_image_build) */
} tensor_spec;

typedef struct synth {
    const ds4_synth_config *c;
    gguf_writer *w;
    tensor_spec *specs;
    size_t n_specs, cap_specs;
    quant_calib calib[sizeof quant_layouts / sizeof quant_layouts[0]];
    ds4_err *err;
    uint64_t device_min_bytes;  /* 0: every tensor generated here */
    const uint8_t *image;       /* the image being written, for the fills' offsets */
    ds4_synth_fill *fills;      /* tensors left to the backend */
    uint32_t n_fills;
    uint64_t fill_bytes;
} synth;

/* The generator of a Gaussian-init tensor of a type synth_fill.h makes. */
static void fill_params(synth *s, const tensor_spec *t, uint64_t nbytes, ds4_synth_fill *f) {
    memset(f, 0, sizeof *f);
    f->nbytes = nbytes;
    f->seed = name_seed(s->c->seed, t->name);
    f->type = t->type;
    if (t->type == DS4_TYPE_F16 || t->type == DS4_TYPE_F32) {
        f->mean = t->mean;
        f->scale = (float)(t->std * sqrt(3.0) / 8388608.0); /* t/2^23·sqrt 3: variance 1 */
        return;
    }
    const quant_layout *q = layout_of(t->type);
    quant_calib *c = &s->calib[q - quant_layouts];
    if (!c->done) calibrate(q, c);
    float d = t->std / c->rms;
    f->d = ds4_f32_to_f16(d);
    f->dmin = q->has_dmin ? ds4_f32_to_f16(d * c->dmin_ratio) : 0;
}

typedef struct fill_job {
    const ds4_synth_fill *f;
    uint8_t *dst;
    uint64_t w0, w1; /* words [w0, w1) */
} fill_job;

static void *fill_words(void *arg) {
    fill_job *j = arg;
    uint64_t n_full = j->f->nbytes / 8;
    for (uint64_t w = j->w0; w < j->w1; w++) {
        uint64_t v = ds4_synth_word(j->f, w);
        memcpy(j->dst + 8 * w, &v, w < n_full ? 8 : j->f->nbytes - 8 * w);
    }
    return NULL;
}

/* The whole tensor, on up to 16 threads when it is large. */
static void fill_generated(const ds4_synth_fill *f, uint8_t *dst) {
    enum { MAX_THREADS = 16 };
    uint64_t words = (f->nbytes + 7) / 8;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n = f->nbytes < (8u << 20) || cores < 2 ? 1 : cores > MAX_THREADS ? MAX_THREADS : (int)cores;
    fill_job jobs[MAX_THREADS];
    pthread_t tid[MAX_THREADS];
    int started = 0;
    for (int i = 0; i < n; i++) jobs[i] = (fill_job){f, dst, words * i / n, words * (i + 1) / n};
    for (int i = 1; i < n; i++, started++)
        if (pthread_create(&tid[i], NULL, fill_words, &jobs[i])) break;
    fill_words(&jobs[0]);
    for (int i = 1; i <= started; i++) pthread_join(tid[i], NULL);
    for (int i = started + 1; i < n; i++) fill_words(&jobs[i]); /* threads that did not start */
}

static int fill_tensor(void *ctx, void *dst, uint64_t nbytes, ds4_err *err) {
    tensor_spec *t = ctx;
    synth *s = t->owner;
    uint64_t rng = name_seed(s->c->seed, t->name);
    uint64_t n = t->ne[0] * t->ne[1] * t->ne[2];
    const ds4_type_info *ti = ds4_type_info_get(t->type);
    if (!ti || ds4_type_row_bytes(t->type, t->ne[0]) * (n / t->ne[0]) != nbytes)
        return ds4_fail(err, "%s: %llu bytes do not match type %u and shape", t->name,
                        (unsigned long long)nbytes, t->type);
    if (t->init == INIT_TID2EID && t->type == DS4_TYPE_I32) {
        uint32_t n_expert = s->c->hp.n_expert, k = (uint32_t)t->ne[0];
        uint32_t *perm = malloc(sizeof *perm * n_expert);
        if (!perm) return ds4_fail(err, "out of memory");
        int32_t *out = dst;
        for (uint64_t tok = 0; tok < t->ne[1]; tok++) {
            for (uint32_t i = 0; i < n_expert; i++) perm[i] = i;
            for (uint32_t i = 0; i < k && i < n_expert; i++) {
                uint32_t j = i + (uint32_t)(splitmix64(&rng) % (n_expert - i));
                uint32_t tmp = perm[i]; perm[i] = perm[j]; perm[j] = tmp;
                out[tok * k + i] = (int32_t)perm[i];
            }
        }
        free(perm);
        return 0;
    }
    if (t->type == DS4_TYPE_I32) {
        memset(dst, 0, nbytes);
        return 0;
    }
    if (!ds4_synth_fill_type_ok(t->type)) return ds4_fail(err, "%s: cannot generate type %u", t->name, t->type);
    ds4_synth_fill f;
    fill_params(s, t, nbytes, &f);
    if (t->device) {
        f.offset = (uint64_t)((const uint8_t *)dst - s->image);
        s->fills[s->n_fills++] = f;
        s->fill_bytes += nbytes;
        return 0;
    }
    fill_generated(&f, dst);
    return 0;
}

static int add(synth *s, const char *prefix, const char *suffix, uint32_t type, init_kind init, bool matrix,
               float mean, float std, uint32_t n_dims, uint64_t ne0, uint64_t ne1, uint64_t ne2) {
    if (s->n_specs == s->cap_specs) return ds4_fail(s->err, "internal: tensor list full");
    tensor_spec *t = &s->specs[s->n_specs];
    memset(t, 0, sizeof *t);
    t->owner = s;
    snprintf(t->name, sizeof t->name, "%s%s", prefix, suffix);
    t->type = type;
    t->n_dims = n_dims;
    t->ne[0] = ne0; t->ne[1] = ne1; t->ne[2] = ne2;
    t->init = init;
    t->mean = mean;
    t->std = std;
    if (s->c->tensor_hook &&
        s->c->tensor_hook(s->c->hook_ctx, s->w, t->name, &t->type, &t->n_dims, t->ne))
        return 0;
    for (uint32_t i = t->n_dims; i < 3; i++) t->ne[i] = 1;
    if (s->device_min_bytes && matrix && init == INIT_GAUSS && ds4_synth_fill_type_ok(t->type) &&
        ds4_type_info_get(t->type)) {
        uint64_t rows = t->ne[1] * t->ne[2];
        t->device = ds4_type_row_bytes(t->type, t->ne[0]) * rows >= s->device_min_bytes;
    }
    s->n_specs++;
    return gguf_writer_add_tensor(s->w, t->name, t->type, t->n_dims, t->ne, NULL, fill_tensor, t,
                                  s->err);
}

/* Synthetic values by what a tensor is: mean and standard deviation
 * (projections 1/sqrt(fan_in), norms near 1, small HC scales and offsets). */
static void role_init(const ds4_slot *sl, float *mean, float *std) {
    *mean = 0;
    *std = 0;
    switch (sl->role) {
    case DS4_ROLE_LINEAR: *std = 1.0f / sqrtf((float)sl->ne[0]); break;
    case DS4_ROLE_EMBEDDING: *std = 1.0f; break;
    case DS4_ROLE_NORM: *mean = 1; *std = 0.1f; break;
    case DS4_ROLE_HC_SCALE: *mean = 0.1f; *std = 0.02f; break;
    case DS4_ROLE_OFFSET: *std = 0.1f; break;
    case DS4_ROLE_SINK: *std = 0.5f; break;
    case DS4_ROLE_ROUTING: break;
    }
}

/* A slot of the layout: routed experts as configured, the rest per c->weights. */
static int add_slot(void *ctx, const char *prefix, int layer, const ds4_slot *sl) {
    synth *s = ctx;
    const ds4_synth_config *c = s->c;
    /* As published: the selection bias exists only in non-hash layers. */
    if (sl->kind == DS4_SLOT_BIAS && layer >= 0 && (uint32_t)layer < c->hp.n_hash_layer) return 0;
    uint32_t type;
    switch (sl->kind) {
    case DS4_SLOT_EXPERT_GATE: case DS4_SLOT_EXPERT_UP: type = c->expert_gate_type; break;
    case DS4_SLOT_EXPERT_DOWN: type = c->expert_down_type; break;
    case DS4_SLOT_TID2EID: type = DS4_TYPE_I32; break;
    default: type = ds4_weight_form_type(c->weights, sl->published); break;
    }
    float mean, std;
    role_init(sl, &mean, &std);
    bool matrix = sl->role == DS4_ROLE_LINEAR || sl->role == DS4_ROLE_EMBEDDING;
    return add(s, prefix, sl->suffix, type, sl->kind == DS4_SLOT_TID2EID ? INIT_TID2EID : INIT_GAUSS, matrix,
               mean, std, sl->n_dims, sl->ne[0], sl->ne[1], sl->ne[2]);
}

static int synth_begin(synth *s, const ds4_synth_config *c, size_t cap, ds4_err *err) {
    memset(s, 0, sizeof *s);
    s->c = c;
    s->err = err;
    if (c->vocab && c->vocab->n_tokens != c->hp.n_vocab)
        return ds4_fail(err, "vocabulary has %u tokens, the model %u", c->vocab->n_tokens,
                        c->hp.n_vocab);
    s->w = gguf_writer_new(GGUF_DEFAULT_ALIGNMENT);
    s->specs = calloc(cap, sizeof *s->specs);
    s->cap_specs = cap;
    if (!s->w || !s->specs) {
        gguf_writer_free(s->w);
        free(s->specs);
        return ds4_fail(err, "out of memory");
    }
    return 0;
}

/* MemAvailable from /proc/meminfo, or 0 when unknown. */
static uint64_t memory_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    unsigned long long kb = 0;
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    fclose(f);
    return (uint64_t)kb << 10;
}

/* Where synth_finish puts the model: a file (path), a malloc'd image, or
 * (device_min_bytes > 0) an anonymous mapping with the large matrices left
 * untouched and listed as fills. */
typedef struct synth_out {
    const char *path;
    ds4_synth_image *img;
} synth_out;

/* An image larger than the memory available is refused up front: with
 * overcommit the allocation would succeed and the process be killed while
 * filling it. Only the bytes generated here count. */
static int write_image(synth *s, ds4_synth_image *img) {
    uint64_t n = gguf_writer_image_size(s->w), avail = memory_available(), host = n;
    bool mapped = s->device_min_bytes > 0;
    if (mapped) {
        host = 0;
        for (size_t i = 0; i < s->n_specs; i++)
            if (!s->specs[i].device) host += ds4_type_row_bytes(s->specs[i].type, s->specs[i].ne[0]) *
                                             s->specs[i].ne[1] * s->specs[i].ne[2];
    }
    if (avail && host > avail)
        return ds4_fail(s->err, "a %.2f GiB model image does not fit in the %.2f GiB of memory available "
                        "(fewer layers?)", (double)host / (1 << 30), (double)avail / (1 << 30));
    void *buf = NULL;
    if (n > SIZE_MAX) return ds4_fail(s->err, "a %.2f GiB model image is too large", (double)n / (1 << 30));
    if (mapped) {
        /* Reserved without backing: the pages the backend generates are never touched here. */
        buf = mmap(NULL, (size_t)n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (buf == MAP_FAILED) buf = NULL;
        s->fills = calloc(s->n_specs ? s->n_specs : 1, sizeof *s->fills);
        if (!s->fills && buf) { munmap(buf, (size_t)n); buf = NULL; }
    } else if (posix_memalign(&buf, IMAGE_ALIGN, (size_t)n) != 0) {
        buf = NULL;
    } else {
        madvise(buf, (size_t)n, MADV_HUGEPAGE); /* fewer TLB misses on weights; advisory */
    }
    if (!buf) return ds4_fail(s->err, "out of memory for a %.2f GiB model image", (double)n / (1 << 30));
    s->image = buf;
    int rc = gguf_writer_write_memory(s->w, buf, n, s->err);
    img->base = buf;
    img->size = n;
    img->mapped = mapped;
    img->fills = s->fills;
    img->n_fills = s->n_fills;
    img->fill_bytes = s->fill_bytes;
    s->fills = NULL;
    if (rc) ds4_synth_image_free(img);
    return rc;
}

static int synth_finish(synth *s, int rc, const synth_out *out) {
    if (rc == 0) rc = out->path ? gguf_writer_write(s->w, out->path, s->err) : write_image(s, out->img);
    gguf_writer_free(s->w);
    free(s->specs);
    free(s->fills);
    return rc;
}

static int add_model_tensors(synth *s) {
    const ds4_hparams *hp = &s->c->hp;
    if (ds4_layout_top(hp, add_slot, s)) return -1;
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if (ds4_layout_layer(hp, il, add_slot, s)) return -1;
    return 0;
}

static int synth_model(const ds4_synth_config *c, const synth_out *out, uint64_t device_min_bytes,
                       ds4_err *err) {
    if (c->hp.n_layer < 1 || c->hp.n_layer > DS4_MAX_LAYERS)
        return ds4_fail(err, "layer count %u is not in 1..%d", c->hp.n_layer, DS4_MAX_LAYERS);
    synth s;
    if (synth_begin(&s, c, 16 + (size_t)c->hp.n_layer * 40, err)) return -1;
    s.device_min_bytes = device_min_bytes;
    ds4_model_meta_write(s.w, c->name ? c->name : "DeepSeek V4 Flash (synthetic)", &c->hp,
                         c->meta_hook, c->hook_ctx);
    if (c->vocab) ds4_synth_vocab_write(s.w, c->vocab, c->meta_hook, c->hook_ctx);
    return synth_finish(&s, add_model_tensors(&s), out);
}

int ds4_synth_write_model(const ds4_synth_config *c, const char *path, ds4_err *err) {
    synth_out out = {.path = path};
    return synth_model(c, &out, 0, err);
}

int ds4_synth_model_image(const ds4_synth_config *c, void **image, uint64_t *size, ds4_err *err) {
    ds4_synth_image img;
    synth_out out = {.img = &img};
    memset(&img, 0, sizeof img);
    *image = NULL;
    *size = 0;
    if (synth_model(c, &out, 0, err)) return -1;
    *image = img.base;
    *size = img.size;
    return 0;
}

int ds4_synth_image_build(const ds4_synth_config *c, uint64_t device_min_bytes, ds4_synth_image *img,
                          ds4_err *err) {
    synth_out out = {.img = img};
    memset(img, 0, sizeof *img);
    return synth_model(c, &out, device_min_bytes, err);
}

void ds4_synth_image_free(ds4_synth_image *img) {
    if (img->mapped && img->base) munmap(img->base, (size_t)img->size);
    else free(img->base);
    free(img->fills);
    memset(img, 0, sizeof *img);
}

/* The published MTP file carries no model metadata that ds4 reads; we write
 * the architecture and name so tools can tell what it is. */
int ds4_synth_write_mtp(const ds4_synth_config *c, const char *path, ds4_err *err) {
    synth s;
    if (synth_begin(&s, c, 64, err)) return -1;
    ds4_model_meta_write(s.w, "DeepSeek V4 Flash MTP (synthetic)", NULL, c->meta_hook, c->hook_ctx);
    synth_out out = {.path = path};
    return synth_finish(&s, ds4_layout_mtp(&c->hp, add_slot, &s), &out);
}
