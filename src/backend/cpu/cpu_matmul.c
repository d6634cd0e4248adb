/* cpu_matmul.c — weight × batch products on the CPU (see cpu_matmul.h).
 *
 * The activations of the batch are quantised once per call (in parallel over
 * tokens) into the format the weight type's dot product expects; then the
 * output rows are cut into tiles, one task per tile, and each task dots its
 * rows with every token. Row tiles are small enough (≤ 64 KiB of weights) to
 * stay in L2 while the tokens stream past. */
#include "cpu_matmul.h"

#include <stdlib.h>
#include <string.h>

#include "../../quant/quant.h"

enum act_kind { ACT_F32, ACT_Q8_0, ACT_Q8_K };

static size_t q8_0_act_bytes(uint32_t n) { return (size_t)(n / DS4_QK8_0) * sizeof(ds4_block_q8_0_act); }
static size_t q8_K_bytes(uint32_t n) { return (size_t)(n / DS4_QK_K) * sizeof(ds4_block_q8_K); }

int cpu_ctx_init(cpu_ctx *c, int n_threads, bool exact, int max_tokens, uint32_t max_in,
                 ds4_err *err) {
    memset(c, 0, sizeof *c);
    if (n_threads < 1) n_threads = 1;
    if (max_tokens < 1) max_tokens = 1;
    c->exact = exact;
    c->max_tokens = max_tokens;
    c->max_in = max_in;
    c->pool = cpu_pool_new(n_threads);
    if (!c->pool) return ds4_fail(err, "cpu backend: cannot start %d worker threads", n_threads);
    c->n_threads = cpu_pool_threads(c->pool);
    size_t per_row = q8_0_act_bytes(max_in + DS4_QK8_0);
    if (q8_K_bytes(max_in + DS4_QK_K) > per_row) per_row = q8_K_bytes(max_in + DS4_QK_K);
    c->act_q_bytes = per_row;
    c->act_q = malloc(per_row * (size_t)max_tokens);
    c->row_f32 = calloc((size_t)c->n_threads, sizeof *c->row_f32);
    if (!c->act_q || !c->row_f32) {
        cpu_ctx_free(c);
        return ds4_fail(err, "cpu backend: out of memory for activation scratch");
    }
    for (int i = 0; i < c->n_threads; i++) {
        c->row_f32[i] = malloc(sizeof(float) * (max_in ? max_in : 1));
        if (!c->row_f32[i]) {
            cpu_ctx_free(c);
            return ds4_fail(err, "cpu backend: out of memory for row scratch");
        }
    }
    return 0;
}

void cpu_ctx_free(cpu_ctx *c) {
    if (c->row_f32)
        for (int i = 0; i < c->n_threads; i++) free(c->row_f32[i]);
    free(c->row_f32);
    free(c->act_q);
    cpu_pool_free(c->pool);
    memset(c, 0, sizeof *c);
}

cpu_mat cpu_mat_of(const ds4_tensor *t) {
    cpu_mat m = {t->type, (uint32_t)t->ne[0], (uint32_t)t->ne[1], 0, t->data};
    m.row_bytes = ds4_type_row_bytes(t->type, t->ne[0]);
    return m;
}

cpu_mat cpu_mat_expert(const ds4_tensor *t, uint32_t e) {
    cpu_mat m = cpu_mat_of(t);
    m.data += (size_t)e * m.n_out * m.row_bytes;
    return m;
}

cpu_mat cpu_mat_rows(cpu_mat m, uint32_t r0, uint32_t n) {
    m.data += (size_t)r0 * m.row_bytes;
    m.n_out = n;
    return m;
}

void cpu_mat_row_f32(const cpu_mat *w, uint32_t r, float *dst) {
    ds4_dequantize_row(w->type, w->data + (size_t)r * w->row_bytes, dst, w->n_in);
}

static enum act_kind act_kind_for(uint32_t type, bool exact) {
    if (exact) return ACT_F32;
    switch (type) {
    case DS4_TYPE_Q8_0: return ACT_Q8_0;
    case DS4_TYPE_Q2_K:
    case DS4_TYPE_Q4_K:
    case DS4_TYPE_IQ2_XXS: return ACT_Q8_K;
    default: return ACT_F32;
    }
}

typedef struct mm_job {
    cpu_ctx *c;
    const cpu_mat *w;
    const float *x;
    size_t ldx;
    int n_tok;
    float *y;
    size_t ldy;
    enum act_kind act;
    uint32_t tile;
} mm_job;

static void quantise_task(void *ctx, int t, int worker) {
    mm_job *j = ctx;
    uint8_t *dst = j->c->act_q + (size_t)t * j->c->act_q_bytes;
    const float *x = j->x + (size_t)t * j->ldx;
    if (j->act == ACT_Q8_0)
        ds4_quantize_q8_0_act(x, (ds4_block_q8_0_act *)dst, j->w->n_in);
    else
        ds4_quantize_q8_K(x, (ds4_block_q8_K *)dst, j->w->n_in);
}

static float dot_row(const mm_job *j, const uint8_t *row, int t) {
    uint32_t n = j->w->n_in;
    const float *x = j->x + (size_t)t * j->ldx;
    const void *aq = j->c->act_q + (size_t)t * j->c->act_q_bytes;
    switch (j->w->type) {
    case DS4_TYPE_F32: return ds4_dot_f32(n, (const float *)row, x);
    case DS4_TYPE_F16: return ds4_dot_f16_f32(n, (const uint16_t *)row, x);
    case DS4_TYPE_BF16: return ds4_dot_bf16_f32(n, (const uint16_t *)row, x);
    case DS4_TYPE_Q8_0: return ds4_dot_q8_0(n, row, aq);
    case DS4_TYPE_Q2_K: return ds4_dot_q2_K(n, row, aq);
    case DS4_TYPE_Q4_K: return ds4_dot_q4_K(n, row, aq);
    case DS4_TYPE_IQ2_XXS: return ds4_dot_iq2_xxs(n, row, aq);
    default: return 0.0f; /* unreachable: the model validated the types */
    }
}

static bool is_plain_float(uint32_t type) {
    return type == DS4_TYPE_F32 || type == DS4_TYPE_F16 || type == DS4_TYPE_BF16;
}

static void matmul_task(void *ctx, int task, int worker) {
    mm_job *j = ctx;
    const cpu_mat *w = j->w;
    uint32_t r0 = (uint32_t)task * j->tile;
    uint32_t r1 = r0 + j->tile < w->n_out ? r0 + j->tile : w->n_out;
    bool dequant = j->act == ACT_F32 && !is_plain_float(w->type);
    for (uint32_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + (size_t)r * w->row_bytes;
        if (dequant) {
            float *rf = j->c->row_f32[worker];
            ds4_dequantize_row(w->type, row, rf, w->n_in);
            for (int t = 0; t < j->n_tok; t++)
                j->y[(size_t)t * j->ldy + r] = ds4_dot_f32(w->n_in, rf, j->x + (size_t)t * j->ldx);
        } else {
            for (int t = 0; t < j->n_tok; t++) j->y[(size_t)t * j->ldy + r] = dot_row(j, row, t);
        }
    }
}

void cpu_matmul(cpu_ctx *c, const cpu_mat *w, const float *x, size_t ldx, int n_tok, float *y,
                size_t ldy) {
    if (n_tok <= 0 || w->n_out == 0) return;
    mm_job j = {c, w, x, ldx, n_tok, y, ldy, act_kind_for(w->type, c->exact), 1};
    if (j.act != ACT_F32) cpu_pool_run(c->pool, n_tok, quantise_task, &j);
    uint32_t per_task = (w->n_out + 8u * (uint32_t)c->n_threads - 1) / (8u * (uint32_t)c->n_threads);
    uint32_t cap = w->row_bytes ? (uint32_t)(65536 / w->row_bytes) : 64;
    if (cap < 1) cap = 1;
    if (per_task > cap) per_task = cap;
    if (per_task < 1) per_task = 1;
    j.tile = per_task;
    int n_tasks = (int)((w->n_out + per_task - 1) / per_task);
    cpu_pool_run(c->pool, n_tasks, matmul_task, &j);
}

void cpu_parallel_for(cpu_ctx *c, int n, cpu_task_fn fn, void *ctx) {
    cpu_pool_run(c->pool, n, fn, ctx);
}
