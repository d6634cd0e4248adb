/* cpu_matmul.c — weight × batch products on the CPU (see cpu_matmul.h).
 *
 * A batch of independent products runs as two parallel runs: first the
 * inputs are quantised (in parallel over rows) into the format their weight
 * type's dot product expects — once per distinct input, so products reading
 * the same activations (gate and up, all experts of a decode step, the
 * experts of a prefill chunk, each with its subset of token rows) share one
 * copy — then the output rows of all products are cut into tiles, one task
 * per tile. A tile's weights (≤ 64 KiB) stay in L2 while its product's
 * tokens pass in groups of DS4_DOT_MULTI_MAX, each row decoded once per
 * group (ds4_dot_multi). Small batches (decode) run both steps, or the
 * quantisation alone, on the calling thread: waking workers would cost more. */
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
    if (act_bytes < cpu_act_row_bytes(max_in)) act_bytes = cpu_act_row_bytes(max_in);
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
#define INLINE_QUANT (32 << 10) /* activation values below which the caller quantises them */

/* Quantised activations are shared: products that read the same input
 * (same x, ldx, width and activation format, e.g. an expert's gate and up,
 * or every expert of a decode step) use one quantised copy. A source holds
 * rows 0 .. n_rows-1 of its input, enough for every product's token rows. */
typedef struct act_src {
    const float *x;
    size_t ldx;
    uint32_t n_in;
    enum act_kind kind;
    int n_rows;
    size_t off;     /* in act_q */
    size_t row_bytes;
} act_src;

/* One parallel run over up to BATCH_MAX products: quantise every source's
 * rows into its slice of act_q, then tile every product's rows. */
typedef struct batch_run {
    cpu_ctx *c;
    const cpu_mm *mm;
    int n, n_src;
    act_src src[BATCH_MAX];
    int src_of[BATCH_MAX];    /* -1: plain f32 input */
    int qrow0[BATCH_MAX + 1]; /* prefix sums of quantised source rows */
    int task0[BATCH_MAX + 1]; /* prefix sums of row tiles */
    uint32_t tile[BATCH_MAX];
    size_t act_used;
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

static int token_row(const cpu_mm *m, int t) { return m->rows ? m->rows[t] : t; }

static const float *x_row(const cpu_mm *m, int t) {
    return m->x + (size_t)token_row(m, t) * m->ldx;
}

static const void *act_row(const batch_run *b, int j, int t) {
    const act_src *s = &b->src[b->src_of[j]];
    return b->c->act_q + s->off + (size_t)token_row(&b->mm[j], t) * s->row_bytes;
}

/* Rows of the input product m reads: 1 + its largest token row. */
static int rows_needed(const cpu_mm *m) {
    if (!m->rows) return m->n_tok;
    int mx = -1;
    for (int t = 0; t < m->n_tok; t++)
        if (m->rows[t] > mx) mx = m->rows[t];
    return mx + 1;
}

/* Adds product m to b's sources; false (b unchanged) if the quantised
 * activations would not fit in act_bytes. */
static bool batch_add_source(batch_run *b, int j, const cpu_mm *m) {
    enum act_kind k = act_kind_for(m->w.type, b->c->exact);
    if (k == ACT_F32 || m->n_tok == 0) {
        b->src_of[j] = -1;
        return true;
    }
    int need = rows_needed(m);
    size_t rb = act_row_bytes(k, m->w.n_in);
    for (int i = 0; i < b->n_src; i++) {
        act_src *s = &b->src[i];
        if (s->x != m->x || s->ldx != m->ldx || s->n_in != m->w.n_in || s->kind != k) continue;
        if (need > s->n_rows) {
            if (i != b->n_src - 1) continue; /* only the last source can grow in place */
            if (b->act_used + (size_t)(need - s->n_rows) * rb > b->c->act_bytes) return false;
            b->act_used += (size_t)(need - s->n_rows) * rb;
            s->n_rows = need;
        }
        b->src_of[j] = i;
        return true;
    }
    if (b->act_used + (size_t)need * rb > b->c->act_bytes) return false;
    b->src[b->n_src] = (act_src){m->x, m->ldx, m->w.n_in, k, need, b->act_used, rb};
    b->act_used += (size_t)need * rb;
    b->src_of[j] = b->n_src++;
    return true;
}

static void quantise_task(void *ctx, int q, int worker) {
    batch_run *b = ctx;
    int i = find_job(b->qrow0, b->n_src, q), r = q - b->qrow0[i];
    const act_src *s = &b->src[i];
    void *dst = b->c->act_q + s->off + (size_t)r * s->row_bytes;
    if (s->kind == ACT_Q8_0)
        ds4_quantize_q8_0_act(s->x + (size_t)r * s->ldx, dst, s->n_in);
    else
        ds4_quantize_q8_K(s->x + (size_t)r * s->ldx, dst, s->n_in);
}

/* Tokens of a quantised or plain-float product go through the weight tile
 * in groups of DS4_DOT_MULTI_MAX: the group's activations stay in L1 while
 * the tile's rows (in L2) are each decoded once for the whole group. */
static void matmul_multi_tile(const batch_run *b, int j, uint32_t r0, uint32_t r1) {
    const cpu_mm *m = &b->mm[j];
    const cpu_mat *w = &m->w;
    for (int t0 = 0; t0 < m->n_tok; t0 += DS4_DOT_MULTI_MAX) {
        int na = m->n_tok - t0 < DS4_DOT_MULTI_MAX ? m->n_tok - t0 : DS4_DOT_MULTI_MAX;
        const void *acts[DS4_DOT_MULTI_MAX];
        for (int k = 0; k < na; k++)
            acts[k] = b->src_of[j] >= 0 ? act_row(b, j, t0 + k) : (const void *)x_row(m, t0 + k);
        for (uint32_t r = r0; r < r1; r++) {
            float out[DS4_DOT_MULTI_MAX];
            ds4_dot_multi(w->type, w->n_in, w->data + (size_t)r * w->row_bytes, acts, na, out);
            for (int k = 0; k < na; k++) m->y[(size_t)(t0 + k) * m->ldy + r] = out[k];
        }
    }
}

static void matmul_task(void *ctx, int task, int worker) {
    batch_run *b = ctx;
    int j = find_job(b->task0, b->n, task);
    const cpu_mm *m = &b->mm[j];
    const cpu_mat *w = &m->w;
    uint32_t r0 = (uint32_t)(task - b->task0[j]) * b->tile[j];
    uint32_t r1 = r0 + b->tile[j] < w->n_out ? r0 + b->tile[j] : w->n_out;
    if (b->src_of[j] >= 0 || is_plain_float(w->type)) {
        matmul_multi_tile(b, j, r0, r1);
        return;
    }
    /* exact mode: quantised rows dequantised once per row */
    for (uint32_t r = r0; r < r1; r++) {
        float *rf = b->c->row_f32[worker];
        ds4_dequantize_row(w->type, w->data + (size_t)r * w->row_bytes, rf, w->n_in);
        for (int t = 0; t < m->n_tok; t++) m->y[(size_t)t * m->ldy + r] = ds4_dot_f32(w->n_in, rf, x_row(m, t));
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

static void run_batch(batch_run *b) {
    cpu_ctx *c = b->c;
    size_t weight_bytes = 0, quant_values = 0;
    b->qrow0[0] = b->task0[0] = 0;
    for (int i = 0; i < b->n_src; i++) {
        b->qrow0[i + 1] = b->qrow0[i] + b->src[i].n_rows;
        quant_values += (size_t)b->src[i].n_rows * b->src[i].n_in;
    }
    for (int j = 0; j < b->n; j++) {
        const cpu_mm *m = &b->mm[j];
        weight_bytes += (size_t)m->w.n_out * m->w.row_bytes * (size_t)m->n_tok;
        b->tile[j] = tile_rows(c, &m->w);
        int tasks = m->n_tok > 0 ? (int)((m->w.n_out + b->tile[j] - 1) / b->tile[j]) : 0;
        b->task0[j + 1] = b->task0[j] + tasks;
    }
    /* Little work: cheaper on the caller than waking the workers. */
    if (quant_values < INLINE_QUANT || weight_bytes < INLINE_BYTES)
        for (int q = 0; q < b->qrow0[b->n_src]; q++) quantise_task(b, q, 0);
    else
        cpu_pool_run(c->pool, b->qrow0[b->n_src], quantise_task, b);
    if (weight_bytes < INLINE_BYTES)
        for (int t = 0; t < b->task0[b->n]; t++) matmul_task(b, t, 0);
    else
        cpu_pool_run(c->pool, b->task0[b->n], matmul_task, b);
}

void cpu_matmul_batch(cpu_ctx *c, const cpu_mm *mm, int n_mm) {
    batch_run b;
    b.c = c;
    b.mm = mm;
    b.n = b.n_src = 0;
    b.act_used = 0;
    for (int j = 0; j < n_mm; j++) {
        if (b.n == BATCH_MAX || (b.n > 0 && !batch_add_source(&b, b.n, &mm[j]))) {
            run_batch(&b);
            b.mm = mm + j;
            b.n = b.n_src = 0;
            b.act_used = 0;
        }
        if (b.n == 0 && !batch_add_source(&b, 0, &mm[j])) {
            /* Its rows alone do not fit; act_q holds one row of any width
             * up to max_in (cpu_ctx_init), so run it token by token. */
            for (int t = 0; t < mm[j].n_tok; t++) {
                cpu_mm one = mm[j];
                one.x = x_row(&mm[j], t);
                one.rows = NULL;
                one.n_tok = 1;
                one.y += (size_t)t * mm[j].ldy;
                cpu_matmul_batch(c, &one, 1);
            }
            b.mm = mm + j + 1;
            continue;
        }
        b.n++;
    }
    if (b.n > 0) run_batch(&b);
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
