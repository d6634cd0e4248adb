/* cpu_matmul.c — weight × batch products on the CPU (see cpu_matmul.h).
 *
 * A batch of independent products runs as two parallel runs: first every
 * product's input rows are quantised (in parallel over rows) into the format
 * its weight type's dot product expects, then the output rows of all
 * products are cut into tiles, one task per tile, and each task dots its
 * rows with every token of its product. Row tiles are small enough (≤ 64 KiB
 * of weights) to stay in L2 while the tokens stream past. Batching matters
 * for decode, where a single product is too small to amortise a dispatch. */
#include "cpu_matmul.h"

#include <stdlib.h>
#include <string.h>

#include "../../quant/quant.h"

enum act_kind { ACT_F32, ACT_Q8_0, ACT_Q8_K };

static size_t q8_0_act_bytes(uint32_t n) { return (size_t)(n / DS4_QK8_0) * sizeof(ds4_block_q8_0_act); }
static size_t q8_K_bytes(uint32_t n) { return (size_t)(n / DS4_QK_K) * sizeof(ds4_block_q8_K); }

size_t cpu_act_row_bytes(uint32_t n_in) {
    size_t a = q8_0_act_bytes(n_in), b = q8_K_bytes(n_in);
    return a > b ? a : b;
}

int cpu_ctx_init(cpu_ctx *c, int n_threads, bool exact, size_t act_bytes, uint32_t max_in,
                 ds4_err *err) {
    memset(c, 0, sizeof *c);
    if (n_threads < 1) n_threads = 1;
    c->exact = exact;
    c->max_in = max_in;
    c->pool = cpu_pool_new(n_threads);
    if (!c->pool) return ds4_fail(err, "cpu backend: cannot start %d worker threads", n_threads);
    c->n_threads = cpu_pool_threads(c->pool);
    c->act_bytes = act_bytes;
    c->act_q = malloc(act_bytes ? act_bytes : 1);
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

static size_t act_row_bytes(enum act_kind k, uint32_t n_in) {
    return k == ACT_Q8_0 ? q8_0_act_bytes(n_in) : k == ACT_Q8_K ? q8_K_bytes(n_in) : 0;
}

static bool is_plain_float(uint32_t type) {
    return type == DS4_TYPE_F32 || type == DS4_TYPE_F16 || type == DS4_TYPE_BF16;
}

#define BATCH_MAX 64            /* products per parallel run */
#define INLINE_BYTES (64 << 10) /* weight bytes × tokens below which a batch runs on the caller */

/* One parallel run over up to BATCH_MAX products: quantise every product's
 * input rows into its own slice of act_q, then tile every product's rows. */
typedef struct batch_run {
    cpu_ctx *c;
    const cpu_mm *mm;
    int n;
    enum act_kind act[BATCH_MAX];
    size_t act_off[BATCH_MAX];
    int qrow0[BATCH_MAX + 1]; /* prefix sums of quantised token rows */
    int task0[BATCH_MAX + 1]; /* prefix sums of row tiles */
    uint32_t tile[BATCH_MAX];
} batch_run;

/* The product an index falls in, given prefix sums p[0..n]. */
static int find_job(const int *p, int n, int idx) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (p[mid] <= idx) lo = mid; else hi = mid - 1;
    }
    return lo;
}

static const float *x_row(const cpu_mm *m, int t) {
    return m->x + (size_t)(m->rows ? m->rows[t] : t) * m->ldx;
}

static const void *act_row(const batch_run *b, int j, int t) {
    return b->c->act_q + b->act_off[j] + (size_t)t * act_row_bytes(b->act[j], b->mm[j].w.n_in);
}

static void quantise_task(void *ctx, int q, int worker) {
    batch_run *b = ctx;
    int j = find_job(b->qrow0, b->n, q), t = q - b->qrow0[j];
    const cpu_mm *m = &b->mm[j];
    void *dst = (void *)act_row(b, j, t);
    if (b->act[j] == ACT_Q8_0)
        ds4_quantize_q8_0_act(x_row(m, t), dst, m->w.n_in);
    else
        ds4_quantize_q8_K(x_row(m, t), dst, m->w.n_in);
}

static float dot_row(const batch_run *b, int j, const uint8_t *row, int t) {
    const cpu_mm *m = &b->mm[j];
    uint32_t n = m->w.n_in;
    switch (m->w.type) {
    case DS4_TYPE_F32: return ds4_dot_f32(n, (const float *)row, x_row(m, t));
    case DS4_TYPE_F16: return ds4_dot_f16_f32(n, (const uint16_t *)row, x_row(m, t));
    case DS4_TYPE_BF16: return ds4_dot_bf16_f32(n, (const uint16_t *)row, x_row(m, t));
    case DS4_TYPE_Q8_0: return ds4_dot_q8_0(n, row, act_row(b, j, t));
    case DS4_TYPE_Q2_K: return ds4_dot_q2_K(n, row, act_row(b, j, t));
    case DS4_TYPE_Q4_K: return ds4_dot_q4_K(n, row, act_row(b, j, t));
    case DS4_TYPE_IQ2_XXS: return ds4_dot_iq2_xxs(n, row, act_row(b, j, t));
    default: return 0.0f; /* unreachable: the model validated the types */
    }
}

static void matmul_task(void *ctx, int task, int worker) {
    batch_run *b = ctx;
    int j = find_job(b->task0, b->n, task);
    const cpu_mm *m = &b->mm[j];
    const cpu_mat *w = &m->w;
    uint32_t r0 = (uint32_t)(task - b->task0[j]) * b->tile[j];
    uint32_t r1 = r0 + b->tile[j] < w->n_out ? r0 + b->tile[j] : w->n_out;
    bool dequant = b->act[j] == ACT_F32 && !is_plain_float(w->type);
    for (uint32_t r = r0; r < r1; r++) {
        const uint8_t *row = w->data + (size_t)r * w->row_bytes;
        if (dequant) {
            float *rf = b->c->row_f32[worker];
            ds4_dequantize_row(w->type, row, rf, w->n_in);
            for (int t = 0; t < m->n_tok; t++) m->y[(size_t)t * m->ldy + r] = ds4_dot_f32(w->n_in, rf, x_row(m, t));
        } else {
            for (int t = 0; t < m->n_tok; t++) m->y[(size_t)t * m->ldy + r] = dot_row(b, j, row, t);
        }
    }
}

/* Rows per task: enough tasks to balance the threads, each tile's weights
 * small enough (64 KiB) to stay in L2 while the tokens stream past. */
static uint32_t tile_rows(const cpu_ctx *c, const cpu_mat *w) {
    uint32_t per = (w->n_out + 8u * (uint32_t)c->n_threads - 1) / (8u * (uint32_t)c->n_threads);
    uint32_t cap = w->row_bytes ? (uint32_t)(65536 / w->row_bytes) : 64;
    if (cap < 1) cap = 1;
    if (per > cap) per = cap;
    return per < 1 ? 1 : per;
}

static void run_batch(cpu_ctx *c, const cpu_mm *mm, int n) {
    batch_run b;
    b.c = c;
    b.mm = mm;
    b.n = n;
    size_t off = 0, weight_bytes = 0;
    b.qrow0[0] = b.task0[0] = 0;
    for (int j = 0; j < n; j++) {
        weight_bytes += (size_t)mm[j].w.n_out * mm[j].w.row_bytes * (size_t)mm[j].n_tok;
        b.act[j] = act_kind_for(mm[j].w.type, c->exact);
        b.act_off[j] = off;
        int nq = b.act[j] == ACT_F32 ? 0 : mm[j].n_tok;
        off += (size_t)nq * act_row_bytes(b.act[j], mm[j].w.n_in);
        b.qrow0[j + 1] = b.qrow0[j] + nq;
        b.tile[j] = tile_rows(c, &mm[j].w);
        int tasks = mm[j].n_tok > 0 ? (int)((mm[j].w.n_out + b.tile[j] - 1) / b.tile[j]) : 0;
        b.task0[j + 1] = b.task0[j] + tasks;
    }
    if (weight_bytes < INLINE_BYTES) { /* less work than waking the workers costs */
        for (int q = 0; q < b.qrow0[n]; q++) quantise_task(&b, q, 0);
        for (int t = 0; t < b.task0[n]; t++) matmul_task(&b, t, 0);
        return;
    }
    cpu_pool_run(c->pool, b.qrow0[n], quantise_task, &b);
    cpu_pool_run(c->pool, b.task0[n], matmul_task, &b);
}

void cpu_matmul_batch(cpu_ctx *c, const cpu_mm *mm, int n_mm) {
    int start = 0;
    size_t bytes = 0;
    for (int j = 0; j < n_mm; j++) {
        enum act_kind k = act_kind_for(mm[j].w.type, c->exact);
        size_t need = (size_t)mm[j].n_tok * act_row_bytes(k, mm[j].w.n_in);
        if (j > start && (j - start == BATCH_MAX || bytes + need > c->act_bytes)) {
            run_batch(c, mm + start, j - start);
            start = j;
            bytes = 0;
        }
        bytes += need;
    }
    if (n_mm > start) run_batch(c, mm + start, n_mm - start);
}

void cpu_matmul(cpu_ctx *c, const cpu_mat *w, const float *x, size_t ldx, int n_tok, float *y,
                size_t ldy) {
    cpu_mm m = {*w, x, ldx, NULL, n_tok, y, ldy};
    cpu_matmul_batch(c, &m, 1);
}

void cpu_parallel_for(cpu_ctx *c, int n, cpu_task_fn fn, void *ctx) {
    cpu_pool_run(c->pool, n, fn, ctx);
}

void cpu_parallel_for_cost(cpu_ctx *c, int n, cpu_task_fn fn, void *ctx, size_t cost_bytes) {
    if (cost_bytes < INLINE_BYTES) {
        for (int i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    cpu_pool_run(c->pool, n, fn, ctx);
}
