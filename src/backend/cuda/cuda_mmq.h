/* cuda_mmq.h — batched quantised matrix products for CUDA prefill.
 *
 * The prefill counterpart of cuda_kernels.h: the same weights (GGUF block
 * layouts, ds4_block_* of quant.h, rows back to back in device memory) times
 * many tokens at once, with the CPU's numerics. Each token's activation is
 * quantised exactly as ds4_cuda_quantize_act() / ds4_quantize_act() would
 * quantise it alone (Q8_0-act for Q8_0 weights, Q8_K for Q2_K / Q4_K /
 * IQ2_XXS), and every quant block contributes the same f32 term as the CPU's
 * ds4_dot and, as on the CPU, one thread adds a row's block terms in block
 * order, so the quantised products equal ds4_dot bit for bit. F16 / F32
 * weights take the f32 activation itself; F16 runs on f16 tensor cores
 * with each activation split into two halves (22 significant bits, |x| <
 * 65504: the model's F16 products read RMS-normalised activations), which
 * differs from the CPU's f32 sums by rounding only (a few 1e-6 of a row's
 * largest output).
 *
 * The quantised activations use this file's own layout (not the CPU
 * struct): ds4_cuda_mmq_act_bytes() tells its size; only
 * ds4_cuda_mmq_quantize() writes it and only these products read it.
 *
 * Every pointer argument except the context is a device pointer (16-byte
 * aligned); calls only enqueue work on `st` (NULL = the legacy default
 * stream) and never synchronise, so they can be captured in a CUDA graph
 * once ds4_cuda_mmq_init() has run for the device. They return -1 with a
 * message for arguments the kernels cannot take, and report launch
 * failures. */
#ifndef DS4_CUDA_MMQ_H
#define DS4_CUDA_MMQ_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_kernels.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Uploads the tables the kernels need to the current device and lifts
 * their shared-memory limits; call once per device (after
 * ds4_cuda_kernels_init), outside stream capture. Idempotent. */
int ds4_cuda_mmq_init(ds4_cuda_kernels *k, ds4_err *err);

/* Bytes of the quantised activations of n_tok tokens of width `in` for
 * weights of `type` (0 if the type or width cannot be taken). F16 / F32:
 * n_tok * in floats (the activation is x itself). */
size_t ds4_cuda_mmq_act_bytes(uint32_t type, uint32_t in, uint32_t n_tok);

/* x f32 [n_tok][in] -> act (ds4_cuda_mmq_act_bytes bytes). For F16 / F32
 * weights this copies x. */
int ds4_cuda_mmq_quantize(ds4_cuda_kernels *k, uint32_t type, const float *x, uint32_t in, uint32_t n_tok,
                          void *act, ds4_cuda_stream st, ds4_err *err);

/* y[t*ldy + r] = (row r of W) · token t, for r < rows, t < n_tok (ldy >=
 * rows). type: Q8_0, Q2_K, Q4_K, IQ2_XXS, F16 or F32; act: the output of
 * ds4_cuda_mmq_quantize for the same type and `in`. */
int ds4_cuda_mmq(ds4_cuda_kernels *k, uint32_t type, const void *w, uint32_t rows, uint32_t in, const void *act,
                 uint32_t n_tok, float *y, uint32_t ldy, ds4_cuda_stream st, ds4_err *err);

/* Grouped (ds4_cuda_matvec_grouped, batched): the `rows` rows form n_groups
 * equal groups; group g's rows multiply elements g*in .. g*in+in-1 of each
 * token's activation, which is n_groups*in wide and quantised as one row
 * (ds4_cuda_mmq_quantize with width n_groups*in). y[t*ldy + r] for all
 * rows r (group g's rows are g*rows/n_groups ..). */
int ds4_cuda_mmq_grouped(ds4_cuda_kernels *k, uint32_t type, const void *w, uint32_t rows, uint32_t in,
                         uint32_t n_groups, const void *act, uint32_t n_tok, float *y, uint32_t ldy,
                         ds4_cuda_stream st, ds4_err *err);

/* Routed MoE for a batch (moe.c's ffn routed part, model-spec §5.8):
 *   out[t][o] = (sum over slots k = 0..n_used-1, in slot order, of
 *                down_{e} row o · mid_{t,k}) + add[t][o]      (add may be NULL)
 *   mid_{t,k} = silu(min(gate_e·x_t, c)) · clamp(up_e·x_t, ±c) · weights[t][k],
 *               quantised to Q8_K as the CPU does, e = ids[t][k]
 * gate, up: stacked [n_embd, n_ff, n_expert] of gate_type (expert e = rows
 * e*n_ff ..); down: stacked [n_ff, n_embd, n_expert] of down_type.
 * ids int32 / weights f32 [n_tok][n_used] on the device (the router's
 * output); an id outside [0, n_expert) contributes nothing. x_act: the
 * tokens quantised for gate_type (ds4_cuda_mmq_quantize, width n_embd).
 * clamp <= 0 disables the clamps. The pairs (token, slot) are bucketed by
 * expert on the device (no host round trip); grids come from host-known
 * bounds and tiles past the real counts exit at once. ws: device scratch
 * of ds4_cuda_mmq_moe_ws_bytes() bytes. Q8_0 experts work too (the shared
 * expert: n_expert 1, n_used 1, ids 0, weights 1). */
size_t ds4_cuda_mmq_moe_ws_bytes(uint32_t gate_type, uint32_t down_type, uint32_t n_embd, uint32_t n_ff,
                                 uint32_t n_expert, uint32_t n_used, uint32_t n_tok);
int ds4_cuda_mmq_moe(ds4_cuda_kernels *k, uint32_t gate_type, const void *gate, const void *up, uint32_t down_type,
                     const void *down, uint32_t n_embd, uint32_t n_ff, uint32_t n_expert, uint32_t n_used,
                     float clamp, const int32_t *ids, const float *weights, uint32_t n_tok, const void *x_act,
                     const float *add, float *out, void *ws, size_t ws_bytes, ds4_cuda_stream st, ds4_err *err);

/* Tests and benchmarks: which kernel the dense products take. 0 =
 * automatic, 1 = the plain one-thread-per-output kernel (F16: the f32
 * CUDA-core kernel), 64 or 128 = the int8 tensor-core kernel with tiles of
 * that many tokens (129: 128 with one decoded weight buffer instead of two;
 * 130 / 131: Q8_0 at 128 with one / two buffers, each block's integer sum
 * made a float by the mma's accumulator input instead of a conversion).
 * The routed MoE takes tiles of 128 pairs for experts with more than 64
 * pairs unless `which` is 64 (every tile 64 pairs). Process-wide, not
 * thread-safe. */
void ds4_cuda_mmq_set_kernel(int which);

#ifdef __cplusplus
}
#endif

#endif
