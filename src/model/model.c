/* model.c — binds and validates the tensors of a DeepSeek V4 Flash GGUF.
 *
 * The expected inventory (model-spec.md §2.2, MTP §2.4) is layout.c's,
 * derived from the hyperparameters; every tensor is looked up by name and its type and shape
 * compared, and any tensor left over in the file is an error, so a file that
 * loads is exactly the architecture the engine runs. Messages name the tensor
 * and show the published type next to what was found:
 *     blk.7.attn_kv.weight: expected Q8_0 [4096,512], found Q4_K [4096,512]
 *     missing tensor blk.3.ffn_norm.weight
 *     unexpected tensor foo.weight
 *
 * Accepted types per slot: the published type, or F16/F32 (synthetic and
 * converted test models may store any weight as F16 or F32). Routed experts:
 * gate and up share one type from IQ2_XXS, Q4_K, F16, F32; down is Q2_K with
 * IQ2_XXS, Q4_K with Q4_K, or F16/F32. Hash-routed layers carry an I32
 * tid2eid table whose entries are checked to be valid expert ids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/quant.h"
#include "layout.h"
#include "model.h"

#define NAME_MAX_LEN 64

/* What a slot accepts. */
typedef enum slot_rule {
    RULE_FLOAT,       /* the published type, F16 or F32 */
    RULE_I32,         /* exactly I32 */
    RULE_EXPERT_GATE, /* IQ2_XXS, Q4_K, F16, F32 */
    RULE_EXPERT_UP,   /* the gate's type */
    RULE_EXPERT_DOWN, /* paired with the gate's type, or F16/F32 */
} slot_rule;

typedef struct binder {
    const gguf_file *f;
    bool *used;        /* per file tensor */
    char *names;       /* arena of NAME_MAX_LEN slots */
    size_t n_names, cap_names;
    uint64_t weight_bytes;
    uint32_t gate_type; /* set by the first RULE_EXPERT_GATE slot of a block */
    ds4_err *err;
} binder;

static bool is_float(uint32_t t) { return t == DS4_TYPE_F16 || t == DS4_TYPE_F32; }

static uint32_t expert_down_pair(uint32_t gate) {
    return gate == DS4_TYPE_IQ2_XXS ? DS4_TYPE_Q2_K : gate;
}

static bool type_accepted(const binder *b, slot_rule rule, uint32_t published, uint32_t t) {
    switch (rule) {
    case RULE_FLOAT: return t == published || is_float(t);
    case RULE_I32: return t == DS4_TYPE_I32;
    case RULE_EXPERT_GATE:
        return t == DS4_TYPE_IQ2_XXS || t == DS4_TYPE_Q4_K || is_float(t);
    case RULE_EXPERT_UP: return t == b->gate_type;
    case RULE_EXPERT_DOWN: return t == expert_down_pair(b->gate_type) || is_float(t);
    }
    return false;
}

/* Binds one tensor. ne holds n_dims expected dimensions. A missing optional
 * tensor leaves dst zeroed (data NULL) and succeeds. */
static int bind(binder *b, ds4_tensor *dst, const char *name, slot_rule rule, uint32_t published,
                uint32_t n_dims, uint64_t ne0, uint64_t ne1, uint64_t ne2, bool optional) {
    memset(dst, 0, sizeof *dst);
    const gguf_tensor_info *ti = gguf_find_tensor(b->f, name);
    if (!ti) return optional ? 0 : ds4_fail(b->err, "missing tensor %s", name);
    const uint64_t want[3] = {ne0, ne1, ne2};
    bool shape_ok = ti->n_dims == n_dims;
    for (uint32_t i = 0; shape_ok && i < n_dims; i++) shape_ok = ti->ne[i] == want[i];
    if (rule == RULE_EXPERT_UP) published = b->gate_type;
    if (rule == RULE_EXPERT_DOWN) published = expert_down_pair(b->gate_type);
    const bool type_ok = type_accepted(b, rule, published, ti->type);
    if (!shape_ok || !type_ok) {
        /* An accepted type with a wrong shape: show the type as found. */
        const char *wt = type_ok ? ds4_type_name(ti->type)
                         : rule == RULE_EXPERT_GATE ? "IQ2_XXS or Q4_K" : ds4_type_name(published);
        char ws[96], fs[160];
        return ds4_fail(b->err, "%s: expected %s %s, found %s %s", name, wt,
                        ds4_format_dims(ws, sizeof ws, want, n_dims), ds4_type_name(ti->type),
                        ds4_format_dims(fs, sizeof fs, ti->ne, ti->n_dims));
    }
    const ds4_type_info *info = ds4_type_info_get(ti->type);
    if (!info || ti->ne[0] % info->block_elems)
        return ds4_fail(b->err, "%s: rows of %llu values are not a multiple of the %s block (%u)",
                        name, (unsigned long long)ti->ne[0], info ? info->name : "?",
                        info ? info->block_elems : 0);
    if (rule == RULE_EXPERT_GATE) b->gate_type = ti->type;
    if (b->n_names == b->cap_names) return ds4_fail(b->err, "internal: name arena full");
    char *stored = b->names + b->n_names++ * NAME_MAX_LEN;
    snprintf(stored, NAME_MAX_LEN, "%s", name);
    b->used[ti - b->f->tensors] = true;
    dst->name = stored;
    dst->type = ti->type;
    dst->n_dims = n_dims;
    for (uint32_t i = 0; i < 4; i++) dst->ne[i] = i < n_dims ? ti->ne[i] : 1;
    dst->data = ti->data;
    dst->nbytes = ti->nbytes;
    return 0;
}

/* Every tid2eid entry must name an expert (the table comes from the file). */
static int check_tid2eid(const ds4_tensor *t, uint32_t n_expert, ds4_err *err) {
    const uint8_t *p = t->data;
    uint64_t n = t->ne[0] * t->ne[1];
    for (uint64_t i = 0; i < n; i++) {
        int32_t v;
        memcpy(&v, p + 4 * i, 4);
        if (v < 0 || (uint32_t)v >= n_expert)
            return ds4_fail(err, "%s: entry %d at [%llu,%llu] is not an expert id (expert_count %u)",
                            t->name, v, (unsigned long long)(i % t->ne[0]),
                            (unsigned long long)(i / t->ne[0]), n_expert);
    }
    return 0;
}

/* Where bind_slot puts the tensors of a walk over the layout. */
typedef struct bind_target {
    binder *b;
    const ds4_hparams *hp;
    void *top;         /* ds4_model or ds4_mtp_model */
    ds4_layer *layers; /* the model's layers, or the MTP block */
} bind_target;

static int bind_slot(void *ctx, const char *prefix, int layer, const ds4_slot *s) {
    static const slot_rule rules[] = {
        [DS4_SLOT_WEIGHT] = RULE_FLOAT,           [DS4_SLOT_EXPERT_GATE] = RULE_EXPERT_GATE,
        [DS4_SLOT_EXPERT_UP] = RULE_EXPERT_UP,    [DS4_SLOT_EXPERT_DOWN] = RULE_EXPERT_DOWN,
        [DS4_SLOT_BIAS] = RULE_FLOAT,             [DS4_SLOT_TID2EID] = RULE_I32,
    };
    const bind_target *t = ctx;
    char *base = layer >= 0 ? (char *)&t->layers[layer]
                 : layer == DS4_LAYOUT_MTP_BLOCK ? (char *)t->layers : (char *)t->top;
    ds4_tensor *dst = (ds4_tensor *)(base + s->offset);
    char name[NAME_MAX_LEN];
    snprintf(name, sizeof name, "%s%s", prefix, s->suffix);
    /* Main layers load with or without the selection bias (as ds4 does). */
    const bool optional = s->kind == DS4_SLOT_BIAS && layer != DS4_LAYOUT_MTP_BLOCK;
    if (bind(t->b, dst, name, rules[s->kind], s->published, s->n_dims, s->ne[0], s->ne[1], s->ne[2],
             optional))
        return -1;
    return s->kind == DS4_SLOT_TID2EID ? check_tid2eid(dst, t->hp->n_expert, t->b->err) : 0;
}

static int check_unexpected(const binder *b) {
    for (uint64_t i = 0; i < b->f->n_tensors; i++) {
        if (b->used[i]) continue;
        gguf_str n = b->f->tensors[i].name;
        return ds4_fail(b->err, "unexpected tensor %.*s", n.len > 200 ? 200 : (int)n.len, n.ptr);
    }
    return 0;
}

static int binder_init(binder *b, const gguf_file *f, size_t n_slots, ds4_err *err) {
    memset(b, 0, sizeof *b);
    b->f = f;
    b->err = err;
    b->used = calloc(f->n_tensors ? f->n_tensors : 1, sizeof *b->used);
    b->names = malloc(n_slots * NAME_MAX_LEN);
    b->cap_names = n_slots;
    if (!b->used || !b->names) {
        free(b->used);
        free(b->names);
        return ds4_fail(err, "out of memory binding %llu tensors", (unsigned long long)f->n_tensors);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) b->weight_bytes += f->tensors[i].nbytes;
    return 0;
}

/* The tokenizer arrays the engine needs (model-spec §2.1): tokens, one per
 * vocabulary entry, and merges, both arrays of strings. */
static int check_tokenizer(const gguf_file *f, uint32_t n_vocab, ds4_err *err) {
    static const char *const keys[] = {"tokenizer.ggml.tokens", "tokenizer.ggml.merges"};
    for (int i = 0; i < 2; i++) {
        const gguf_kv *kv = gguf_find_kv(f, keys[i]);
        if (!kv) return ds4_fail(err, "missing metadata key %s", keys[i]);
        if (kv->value.type != GGUF_T_ARRAY || kv->value.v.arr.item_type != GGUF_T_STRING)
            return ds4_fail(err, "%s: expected an array of STRING", keys[i]);
        if (i == 0 && kv->value.v.arr.count != n_vocab)
            return ds4_fail(err, "%s has %llu entries, expected deepseek4.vocab_size (%u)", keys[i],
                            (unsigned long long)kv->value.v.arr.count, n_vocab);
    }
    return 0;
}

static int bind_model_tensors(binder *b, ds4_model *m) {
    const ds4_hparams *hp = &m->hp;
    bind_target t = {b, hp, m, m->layers};
    if (ds4_layout_top(hp, bind_slot, &t)) return -1;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer *l = &m->layers[il];
        m->layers[il].compress_ratio = hp->compress_ratio[il];
        if (ds4_layout_layer(hp, il, bind_slot, &t)) return -1;
        if (il == 0) {
            m->expert_gate_type = l->ffn_gate_exps.type;
            m->expert_down_type = l->ffn_down_exps.type;
        } else if (l->ffn_gate_exps.type != m->expert_gate_type ||
                   l->ffn_down_exps.type != m->expert_down_type) {
            return ds4_fail(b->err, "blk.%u: routed experts are %s/%s, but layer 0's are %s/%s", il,
                            ds4_type_name(l->ffn_gate_exps.type), ds4_type_name(l->ffn_down_exps.type),
                            ds4_type_name(m->expert_gate_type), ds4_type_name(m->expert_down_type));
        }
    }
    return check_unexpected(b);
}

/* Runs one binding pass; on success the model takes the name arena. */
static int bind_all(const gguf_file *f, size_t n_slots, char **names, uint64_t *weight_bytes,
                    int (*fn)(binder *, void *), void *target, ds4_err *err) {
    binder b;
    if (binder_init(&b, f, n_slots, err)) return -1;
    int rc = fn(&b, target);
    free(b.used);
    if (rc) {
        free(b.names);
        return -1;
    }
    *names = b.names;
    *weight_bytes = b.weight_bytes;
    return 0;
}

static int bind_model_fn(binder *b, void *m) { return bind_model_tensors(b, m); }

static int model_finish_open(ds4_model *m, ds4_err *err) {
    if (ds4_hparams_read(&m->file, &m->hp, err) || check_tokenizer(&m->file, m->hp.n_vocab, err) ||
        bind_all(&m->file, 8 + (size_t)m->hp.n_layer * 40, &m->names, &m->weight_bytes,
                 bind_model_fn, m, err)) {
        gguf_close(&m->file);
        memset(m, 0, sizeof *m);
        return -1;
    }
    return 0;
}

int ds4_model_open(ds4_model *m, const char *path, ds4_err *err) {
    memset(m, 0, sizeof *m);
    if (gguf_open(&m->file, path, err)) return -1;
    return model_finish_open(m, err) ? ds4_fail_prefix(err, path) : 0;
}

int ds4_model_open_memory(ds4_model *m, const void *buf, uint64_t size, ds4_err *err) {
    memset(m, 0, sizeof *m);
    if (gguf_open_memory(&m->file, buf, size, err)) return -1;
    return model_finish_open(m, err);
}

void ds4_model_close(ds4_model *m) {
    gguf_close(&m->file);
    free(m->names);
    memset(m, 0, sizeof *m);
}

typedef struct mtp_target { ds4_mtp_model *mtp; const ds4_hparams *hp; } mtp_target;

static int bind_mtp_fn(binder *b, void *target) {
    ds4_mtp_model *mtp = ((mtp_target *)target)->mtp;
    bind_target t = {b, ((mtp_target *)target)->hp, mtp, &mtp->block};
    if (ds4_layout_mtp(t.hp, bind_slot, &t)) return -1;
    mtp->block.compress_ratio = 0;
    mtp->expert_gate_type = mtp->block.ffn_gate_exps.type;
    mtp->expert_down_type = mtp->block.ffn_down_exps.type;
    return check_unexpected(b);
}

static int mtp_finish_open(ds4_mtp_model *mtp, const ds4_hparams *hp, ds4_err *err) {
    mtp_target t = {mtp, hp};
    if (bind_all(&mtp->file, 48, &mtp->names, &mtp->weight_bytes, bind_mtp_fn, &t, err)) {
        gguf_close(&mtp->file);
        memset(mtp, 0, sizeof *mtp);
        return -1;
    }
    return 0;
}

int ds4_mtp_open(ds4_mtp_model *mtp, const char *path, const ds4_hparams *hp, ds4_err *err) {
    memset(mtp, 0, sizeof *mtp);
    if (gguf_open(&mtp->file, path, err)) return -1;
    return mtp_finish_open(mtp, hp, err) ? ds4_fail_prefix(err, path) : 0;
}

int ds4_mtp_open_memory(ds4_mtp_model *mtp, const void *buf, uint64_t size,
                        const ds4_hparams *hp, ds4_err *err) {
    memset(mtp, 0, sizeof *mtp);
    if (gguf_open_memory(&mtp->file, buf, size, err)) return -1;
    return mtp_finish_open(mtp, hp, err);
}

void ds4_mtp_close(ds4_mtp_model *mtp) {
    gguf_close(&mtp->file);
    free(mtp->names);
    memset(mtp, 0, sizeof *mtp);
}

const char *ds4_model_expert_quant_name(const ds4_model *m) {
    return ds4_expert_quant_name(m->expert_gate_type, m->expert_down_type);
}

/* The routed-expert quantisations by name (model-spec §2.2): the two
 * published ones and the float forms of test models. */
static const struct {
    const char *name;
    uint32_t gate, down;
} expert_quants[] = {
    {"q2", DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K},
    {"q4", DS4_TYPE_Q4_K, DS4_TYPE_Q4_K},
    {"f16", DS4_TYPE_F16, DS4_TYPE_F16},
    {"f32", DS4_TYPE_F32, DS4_TYPE_F32},
};

const char *ds4_expert_quant_name(uint32_t g, uint32_t d) {
    for (size_t i = 0; i < sizeof expert_quants / sizeof expert_quants[0]; i++)
        if (expert_quants[i].gate == g && expert_quants[i].down == d) return expert_quants[i].name;
    return "mixed";
}

bool ds4_weight_form_from_name(const char *name, ds4_weight_form *form) {
    if (!strcmp(name, "q8")) *form = DS4_WEIGHTS_PUBLISHED;
    else if (!strcmp(name, "f16")) *form = DS4_WEIGHTS_F16;
    else if (!strcmp(name, "f32")) *form = DS4_WEIGHTS_F32;
    else return false;
    return true;
}

uint32_t ds4_weight_form_type(ds4_weight_form form, uint32_t published) {
    if (form == DS4_WEIGHTS_F32) return DS4_TYPE_F32;
    if (form == DS4_WEIGHTS_F16 && published == DS4_TYPE_Q8_0) return DS4_TYPE_F16;
    return published;
}

bool ds4_expert_quant_types(const char *name, uint32_t *gate, uint32_t *down) {
    for (size_t i = 0; i < sizeof expert_quants / sizeof expert_quants[0]; i++) {
        if (strcmp(expert_quants[i].name, name)) continue;
        *gate = expert_quants[i].gate;
        *down = expert_quants[i].down;
        return true;
    }
    return false;
}
