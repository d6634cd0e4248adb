/* cuda_kernels.h — the decode-time matrix-vector kernels of the CUDA backend.
 *
 * y = W·x for one token, with W in a GGUF block layout (Q8_0, Q2_K, Q4_K,
 * IQ2_XXS, F16; rows of n_in elements packed back to back, exactly the
 * ds4_block_* structs of quant.h) resident in device memory. The numerics are
 * the CPU backend's (model-spec §3, §5.10): x is first quantised on the
 * device with ds4_cuda_quantize_act() into the very bytes ds4_quantize_act()
 * would write (Q8_0-act for Q8_0 weights, Q8_K for the K-quants and IQ2_XXS,
 * plain f32 for F16), and each quant block contributes the same f32 term as
 * on the CPU; only the order in which block terms are summed differs.
 *
 * The fused routed-MoE decode path (model-spec §5.8) is two kernels around
 * one activation quantisation:
 *   ds4_cuda_moe_gate_up: mid[k] = silu(min(gate_e·x, c)) · clamp(up_e·x, ±c) · w[k]
 *                         for the n_sel experts e = ids[k];
 *   ds4_cuda_quantize_act(Q8_K) of mid (n_sel rows of n_ff);
 *   ds4_cuda_moe_down:    out = Σ_k down_{ids[k]}·mid[k] (+ add), summed in k order.
 * Expert ids and weights live in device memory, so the whole step can be
 * captured in a CUDA graph with the router running on the device.
 *
 * Every pointer argument except the context is a device pointer. Calls only
 * enqueue work on `stream` (NULL = the legacy default stream); they return
 * -1 with a message for arguments the kernels cannot take, and report a
 * launch failure. */
#ifndef DS4_CUDA_KERNELS_H
#define DS4_CUDA_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../../common/error.h"

/* Same type as cudaStream_t, without needing the CUDA headers. */
typedef struct CUstream_st *ds4_cuda_stream;

/* Per-device state: device properties and the IQ2_XXS tables in device
 * memory (copied from src/quant's tables). */
typedef struct ds4_cuda_kernels ds4_cuda_kernels;

/* Selects `device` for the calling thread and prepares the kernels. */
int ds4_cuda_kernels_init(ds4_cuda_kernels **out, int device, ds4_err *err);
void ds4_cuda_kernels_free(ds4_cuda_kernels *k);
/* Grid size in "waves" of resident blocks, for the benchmark's sweeps:
 * 0 (the default) lets each kernel pick, 1 = persistent blocks. */
void ds4_cuda_kernels_set_waves(ds4_cuda_kernels *k, int waves);
/* Multiprocessor count, the device name and its memory's peak bandwidth
 * in bytes/s (from the clock and bus width; 0: unknown), for reports. */
int ds4_cuda_kernels_sm_count(const ds4_cuda_kernels *k);
const char *ds4_cuda_kernels_device_name(const ds4_cuda_kernels *k);
double ds4_cuda_kernels_peak_bw(const ds4_cuda_kernels *k);

/* act = x (n floats) quantised for weights of type wtype; act holds
 * ds4_act_row_bytes(wtype, n) bytes. */
int ds4_cuda_quantize_act(ds4_cuda_kernels *k, uint32_t wtype, const float *x, void *act, uint32_t n,
                          ds4_cuda_stream stream, ds4_err *err);

/* y[r] = row r of w · x for r < n_rows; act = x quantised for wtype. */
int ds4_cuda_matvec(ds4_cuda_kernels *k, uint32_t wtype, const void *w, uint32_t n_rows, uint32_t n_in,
                    const void *act, float *y, ds4_cuda_stream stream, ds4_err *err);

/* Grouped and gated: the rows form n_groups equal groups, group g's rows
 * multiply elements g·n_in .. of the activation (act = n_groups·n_in
 * values quantised as one row); the attention output projection in one
 * launch. active: NULL, or a device int; while it is 0 the call does
 * nothing (y keeps its values), so a captured graph can skip products
 * whose result the step will not read. */
int ds4_cuda_matvec_grouped(ds4_cuda_kernels *k, uint32_t wtype, const void *w, uint32_t n_rows, uint32_t n_in,
                            const void *act, uint32_t n_groups, float *y, const int32_t *active,
                            ds4_cuda_stream stream, ds4_err *err);

/* gate, up: stacked [n_in, n_ff, n_expert] tensors of type wtype (expert e
 * = rows e·n_ff ..). ids[n_sel] (int32), weights[n_sel] (f32): the selected
 * experts and their router weights; an id outside [0, n_expert) gives a
 * zero mid row. x_act: x quantised for wtype. mid: n_sel·n_ff floats.
 * clamp <= 0 disables the clamps. */
int ds4_cuda_moe_gate_up(ds4_cuda_kernels *k, uint32_t wtype, const void *gate, const void *up,
                         uint32_t n_in, uint32_t n_ff, uint32_t n_expert, const int32_t *ids,
                         const float *weights, uint32_t n_sel, float clamp, const void *x_act,
                         float *mid, ds4_cuda_stream stream, ds4_err *err);

/* down: stacked [n_ff, n_out, n_expert] of type wtype; mid_act: the n_sel
 * mid rows quantised for wtype (one ds4_cuda_quantize_act over n_sel·n_ff).
 * out[o] = (Σ_k in order down_{ids[k]} row o · mid[k]) + add[o] (add may be
 * NULL); an invalid id contributes nothing. */
int ds4_cuda_moe_down(ds4_cuda_kernels *k, uint32_t wtype, const void *down, uint32_t n_ff,
                      uint32_t n_out, uint32_t n_expert, const int32_t *ids, uint32_t n_sel,
                      const void *mid_act, const float *add, float *out, ds4_cuda_stream stream,
                      ds4_err *err);

/* Programmatic dependent launch (sm_90+; off by default): the kernels are
 * launched so that they may start while the previous kernel on the stream
 * runs, request their first weights, and wait for it before reading their
 * activation (cuda_pdl.cuh). Ignored on devices without it. */
void ds4_cuda_kernels_set_pdl(ds4_cuda_kernels *k, int on);
int ds4_cuda_kernels_pdl(const ds4_cuda_kernels *k);
/* Matrix-vector tuning, for measuring: rows are cut into slices until
 * there are split_per_sm items per multiprocessor (<= 0: the default, 16);
 * deep: four staging buffers per warp instead of two where slices are
 * small (more weight bytes in flight). */
void ds4_cuda_kernels_set_matvec_tuning(ds4_cuda_kernels *k, int split_per_sm, int deep);

/* One launch for several products, described by ds4_cuda_mv:
 *  - up to DS4_CUDA_MV_SEGS matrices of the same type and n_in that read
 *    the same activation (seg[i]: rows of w into y), their rows one item
 *    space; or one matrix in n_groups groups (n_seg 1, as
 *    ds4_cuda_matvec_grouped);
 *  - the activation either quantised already (act) or as f32 (x), which
 *    every thread block quantises itself (the same bytes as
 *    ds4_cuda_quantize_act), optionally after an RMSNorm with weights
 *    norm_w (x/rms(x)·w, eps), whose result block 0 also writes to
 *    norm_out (if not NULL) for later products that read it;
 *  - active: NULL, or a device int; while it is 0 nothing is done. It is
 *    read before waiting for the previous kernel (programmatic launch), so
 *    no kernel on the stream may write it (the step's is copied from the
 *    host before the graph runs);
 *  - n_cols (0 = 1, at most DS4_CUDA_MV_COLS; more than 1 for Q8_0 and
 *    F16 weights only): activation columns, each weight row read once for
 *    all of them (several tokens' products):
 *    column c's activation follows column c-1's (x: n_groups·n_in floats
 *    on; act: that row quantised; norm_out: n_in floats on), its results
 *    are at seg[i].y + c·seg[i].y_col in each segment i. Each column's
 *    results are the bits a one-column product of it gives. */
#define DS4_CUDA_MV_SEGS 6
#define DS4_CUDA_MV_COLS 2
typedef struct ds4_cuda_mv_seg {
    const void *w;
    uint32_t rows;
    float *y;
    uint32_t y_col;
} ds4_cuda_mv_seg;
typedef struct ds4_cuda_mv {
    uint32_t wtype, n_in, n_groups, n_seg;
    ds4_cuda_mv_seg seg[DS4_CUDA_MV_SEGS];
    const void *act;
    const float *x, *norm_w;
    float eps;
    float *norm_out;
    const int32_t *active;
    uint32_t n_cols;
} ds4_cuda_mv;
int ds4_cuda_matvec_multi(ds4_cuda_kernels *k, const ds4_cuda_mv *mv, ds4_cuda_stream stream, ds4_err *err);
/* Two products in one launch where their weight types allow it (Q8_0 with
 * F16, the same number of columns; they must not read each other's
 * results: norm_out included), otherwise one after the other. */
int ds4_cuda_matvec_pair(ds4_cuda_kernels *k, const ds4_cuda_mv *a, const ds4_cuda_mv *b, ds4_cuda_stream stream,
                         ds4_err *err);

/* Where a MoE launch's ids and weights come from, for when its first
 * weights can be requested (under programmatic launch):
 *  - fixed: no kernel writes them (the shared expert): before waiting for
 *    the previous kernel;
 *  - stamp (device): an earlier kernel of the step stores the step's
 *    *serial (device) there once it has written them (k_route): as soon as
 *    it has, before waiting for the kernels in between;
 *  - neither (zero): the previous kernel writes them: after waiting. */
typedef struct ds4_cuda_ids_src {
    int fixed;
    const uint32_t *stamp, *serial;
} ds4_cuda_ids_src;

/* A Q8_0 product that rides along in the routed gate/up's launch as items
 * of its own: out[j] = w_j · act for rows j < rows of n_in values, act the
 * Q8_0 codes an earlier kernel wrote (the shared expert's down: its
 * weights need not wait for the router, and the launch it had costs ~3 µs
 * a layer). Same arithmetic as ds4_cuda_moe_down of one Q8_0 expert. */
typedef struct ds4_cuda_carried_mv {
    const void *w, *act;
    float *out;
    uint32_t rows, n_in;
} ds4_cuda_carried_mv;

/* ds4_cuda_moe_gate_up with the activation quantised (x_act) or as f32 x
 * (x_act NULL; quantised in every block), the ids' source, and a carried
 * product (NULL: none). */
int ds4_cuda_moe_gate_up_x(ds4_cuda_kernels *k, uint32_t wtype, const void *gate, const void *up, uint32_t n_in,
                           uint32_t n_ff, uint32_t n_expert, const int32_t *ids, const float *weights,
                           uint32_t n_sel, float clamp, const void *x_act, const float *x, ds4_cuda_ids_src src,
                           const ds4_cuda_carried_mv *carried, float *mid, ds4_cuda_stream stream, ds4_err *err);
/* ds4_cuda_moe_down with the ids' source. */
int ds4_cuda_moe_down_x(ds4_cuda_kernels *k, uint32_t wtype, const void *down, uint32_t n_ff, uint32_t n_out,
                        uint32_t n_expert, const int32_t *ids, uint32_t n_sel, const void *mid_act,
                        const float *add, ds4_cuda_ids_src src, float *out, ds4_cuda_stream stream, ds4_err *err);

/* The most experts one MoE call takes (a token). */
#define DS4_CUDA_MAX_SEL 8

/* Several tokens' routed experts in one launch each (the speculative verify
 * step's), at most DS4_CUDA_MOE_TOKENS: ids/weights hold n_tok runs of
 * n_sel / n_tok selections, token t's activation at x_act + t·(one
 * quantised row's bytes); mid holds every selection's row, as one call's;
 * the down's add and out are [n_tok][n_out], token t summing its own
 * selections in order. Each token's results are the bits of its one-token
 * call. src: where the ids come from (a stamp: the last token's, published
 * after every token's ids). */
#define DS4_CUDA_MOE_TOKENS 2
int ds4_cuda_moe_tokens_gate_up(ds4_cuda_kernels *k, uint32_t wtype, const void *gate, const void *up, uint32_t n_in,
                                uint32_t n_ff, uint32_t n_expert, const int32_t *ids, const float *weights,
                                uint32_t n_sel, uint32_t n_tok, float clamp, const void *x_act,
                                ds4_cuda_ids_src src, float *mid, ds4_cuda_stream stream, ds4_err *err);
int ds4_cuda_moe_tokens_down(ds4_cuda_kernels *k, uint32_t wtype, const void *down, uint32_t n_ff, uint32_t n_out,
                             uint32_t n_expert, const int32_t *ids, uint32_t n_sel, uint32_t n_tok,
                             const void *mid_act, const float *add, ds4_cuda_ids_src src, float *out,
                             ds4_cuda_stream stream, ds4_err *err);

#ifdef __cplusplus
}
#endif

#endif
