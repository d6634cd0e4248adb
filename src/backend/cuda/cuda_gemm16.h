/* cuda_gemm16.h — a prefill chunk's Q8_0 products on f16 tensor cores.
 *
 * Y[t·ldy + r] = Σ_k W[r][k]·X[t][k] for a Q8_0 matrix W (rows × in, GGUF
 * blocks back to back) and n tokens of an f32 activation X (stride ldx).
 * Each token's activation is first quantised to Q8_0 exactly as the CPU
 * quantises it (ds4_quantize_q8_0_act: d = amax/127, codes round(x/d)), so
 * the product keeps the official activation quantisation; then every
 * weight d_w·q_w and activation d_a·q_a is rounded to f16 (a relative error
 * of at most 2^-11 each, where the exact integer path of cuda_mmq.h has
 * none) and cuBLAS multiplies them with f32 accumulation. The sum of a row
 * thus differs from ds4_dot's by at most ~2^-10 of Σ|w·x| plus f32
 * rounding, while the integer path's per-block f32 scaling costs it 3-4x
 * the tensor-core time (notes/cuda-kernels.md §19). The upstream engine's
 * GPU prefill likewise leaves the integer path (model-spec §5.10); the
 * engine's --quality keeps cuda_mmq.h's exact products instead.
 *
 * The activations must stay within f16's range (|x| < 65504), as the
 * model's do: RMS-normalised inputs, attention outputs, clamped SwiGLU.
 *
 * Pointers are device pointers (16-byte aligned); calls only enqueue on
 * `st` and never synchronise. */
#ifndef DS4_CUDA_GEMM16_H
#define DS4_CUDA_GEMM16_H

#include <stddef.h>
#include <stdint.h>

#include "cuda_kernels.h" /* ds4_err, ds4_cuda_stream */

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ds4_gemm16 ds4_gemm16;

/* A cuBLAS handle and f16 buffers for weights of up to max_w elements and
 * activations of up to max_x elements (tokens × in). */
int ds4_gemm16_new(ds4_gemm16 **out, size_t max_w, size_t max_x, ds4_err *err);
void ds4_gemm16_free(ds4_gemm16 *g);

/* Whether ds4_gemm16_q8_0 takes this shape (in a multiple of 32, the
 * buffers large enough). */
int ds4_gemm16_fits(const ds4_gemm16 *g, uint32_t rows, uint32_t in, uint32_t n);

int ds4_gemm16_q8_0(ds4_gemm16 *g, const void *w, uint32_t rows, uint32_t in, const float *x, size_t ldx, uint32_t n,
                    float *y, size_t ldy, ds4_cuda_stream st, ds4_err *err);

/* ds4_gemm16_q8_0 in two halves, so that one activation serves several
 * products (q_a and kv, the shared expert's gate and up):
 * ds4_gemm16_act quantises and rounds x (16-byte aligned, ldx a multiple
 * of 4) into the handle's f16 buffer and returns it ([n][in], device
 * memory; NULL and *err when it does not fit); the buffer holds it until
 * the next ds4_gemm16_act or ds4_gemm16_q8_0. ds4_gemm16_q8_0_x16
 * multiplies by an activation already in that form (f16 of each Q8_0 d·q,
 * rows of stride ldx16 ≥ in): the buffer's, or one a kernel wrote that way
 * (the prefill attention's output, quad_q8_0_f16). */
const void *ds4_gemm16_act(ds4_gemm16 *g, const float *x, size_t ldx, uint32_t in, uint32_t n, ds4_cuda_stream st,
                           ds4_err *err);
int ds4_gemm16_q8_0_x16(ds4_gemm16 *g, const void *w, uint32_t rows, uint32_t in, const void *x16, size_t ldx16,
                        uint32_t n, float *y, size_t ldy, ds4_cuda_stream st, ds4_err *err);

/* Y[t·ldy + r] = W_r · (hi_t + lo_t) for an F16 matrix W (rows × in as
 * stored, 16-byte aligned) and n tokens already split into f16 halves
 * hi = f16(x), lo = f16(x - hi) ([n][in] each; ~22 bits of x): two cuBLAS
 * products with f32 accumulation, the second added onto the first; with
 * xl NULL, W_r · hi_t alone (x rounded to f16 once: within ~2^-11 of
 * Σ|w·x| more, as the Q8_0 products on f16 round theirs). The
 * prefill's own kernel (pf_gemm_f16) sums each 16-wide k slice from zero,
 * so its error does not grow with K as the tensor cores' accumulation
 * does (~1e-5 of Σ|w·x| at K = 4096, notes/cuda-kernels.md §9); this one
 * is about twice as fast and the prefill's default (--quality keeps
 * pf_gemm_f16). */
int ds4_gemm16_f16_split(ds4_gemm16 *g, const void *w, uint32_t rows, uint32_t in, const void *xh, const void *xl,
                         uint32_t n, float *y, size_t ldy, ds4_cuda_stream st, ds4_err *err);

/* cuBLAS loads its libraries and kernels at a process's first product
 * (~50-60 ms on an H200, which the first prefill chunk would pay): one small
 * product through the same handle set-up and call, at model load, takes
 * that off the first request. Best effort: a failure only leaves the cost where it was. */
void ds4_gemm16_warm(void);

#ifdef __cplusplus
}
#endif

#endif
