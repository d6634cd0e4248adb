/* cpu_matmul.h — weight matrix × a batch of activation vectors on the CPU.
 *
 * y[t][o] = Σ_i W[o][i] · x[t][i] for every token t of the batch and every
 * output row o. One weight row is dotted with all tokens of the batch while
 * it is hot in cache, so a prefill chunk reads each weight once; a decode
 * step is the same call with one token. Every y element is one dot product
 * computed by one task (several tokens' at once through ds4_dot_multi,
 * each bit-identical to ds4_dot), so results do not depend on the batch
 * size or the thread count (decode and batched prefill agree bit for bit).
 *
 * Numerics (model-spec §3, §5.10): in the official mode Q8_0 weights see the
 * activations quantised to Q8_0 (f32 scale), K-quant and IQ2_XXS weights see
 * Q8_K, F16/BF16/F32 weights see f32 activations. In exact mode every weight
 * row is dequantised to f32 and dotted with the f32 activations. */
#ifndef DS4_CPU_MATMUL_H
#define DS4_CPU_MATMUL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../common/error.h"
#include "../../model/model.h"
#include "cpu_pool.h"

/* A 2-D weight view: n_out rows of n_in elements of one type. */
typedef struct cpu_mat {
    uint32_t type;
    uint32_t n_in, n_out;
    size_t row_bytes;
    const uint8_t *data;
} cpu_mat;

/* The shared machinery: threads, numerics mode and scratch: act_bytes of
 * quantised activations (enough for the largest batch the caller runs; a
 * larger batch is split, and a product whose input rows alone do not fit
 * runs token by token; at least one row of max_in values is allocated)
 * and one dequantised row per worker (max_in). */
typedef struct cpu_ctx {
    cpu_pool *pool;
    int n_threads;
    bool exact;
    uint32_t max_in;
    uint8_t *act_q;      /* quantised activations of the current batch */
    size_t act_bytes;
    float **row_f32;     /* per worker: one dequantised weight row (max_in) */
} cpu_ctx;

int cpu_ctx_init(cpu_ctx *c, int n_threads, bool exact, size_t act_bytes, uint32_t max_in,
                 ds4_err *err);
void cpu_ctx_free(cpu_ctx *c);
/* Quantised-activation bytes one token row of n_in values may need. */
size_t cpu_act_row_bytes(uint32_t n_in);

/* Views of bound tensors: a 2-D [in, out] tensor, expert e of a 3-D
 * [in, out, n_expert] tensor, and rows [r0, r0+n) of a view. */
cpu_mat cpu_mat_of(const ds4_tensor *t);
cpu_mat cpu_mat_expert(const ds4_tensor *t, uint32_t e);
cpu_mat cpu_mat_rows(cpu_mat m, uint32_t r0, uint32_t n);

/* One product: y[t] = W · x[r(t)] for t in [0, n_tok), where r(t) = t, or
 * rows[t] when rows is given (a subset of the tokens, e.g. one expert's).
 * x rows are ldx floats apart, y rows ldy. */
typedef struct cpu_mm {
    cpu_mat w;
    const float *x;
    size_t ldx;
    const int *rows;
    int n_tok;
    float *y;
    size_t ldy;
} cpu_mm;

/* Runs independent products as one parallel run (one dispatch for, say,
 * all the experts of a decode step); outputs must not overlap inputs. */
void cpu_matmul_batch(cpu_ctx *c, const cpu_mm *mm, int n_mm);
void cpu_matmul(cpu_ctx *c, const cpu_mat *w, const float *x, size_t ldx, int n_tok, float *y,
                size_t ldy);

/* Dequantised row r of a view (n_in floats) — embeddings and tests. */
void cpu_mat_row_f32(const cpu_mat *w, uint32_t r, float *dst);

/* Runs fn(ctx, i, worker) for i in [0, n) on the pool; with a small total
 * cost estimate (bytes touched) everything runs on the caller instead. */
void cpu_parallel_for(cpu_ctx *c, int n, cpu_task_fn fn, void *ctx);
void cpu_parallel_for_cost(cpu_ctx *c, int n, cpu_task_fn fn, void *ctx, size_t cost_bytes);

#endif
