/* cuda_gemm16.cu — a prefill chunk's Q8_0 products on f16 tensor cores
 * (cuda_gemm16.h): the weights dequantised to f16, the activation
 * quantised to Q8_0 as on the CPU and dequantised to f16, one cuBLAS
 * f16 × f16 → f32 product with f32 accumulation. */
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdlib.h>

#include "cuda_formats.cuh"
#include "cuda_gemm16.h"

/* cuBLAS's scratch, given explicitly so that all memory is allocated up front. */
enum { G16_BLAS_WS = 32 << 20 };

struct ds4_gemm16 {
    cublasHandle_t blas;
    __half *w16, *x16;
    void *blas_ws;
    size_t max_w, max_x;
};

/* Thread i: values 8(i%4).. of Q8_0 block i/4, d·q rounded once to f16
 * (d·q is exact in f32), stored as one 16-byte word. */
__global__ void k_g16_weights(const uint8_t *w, size_t n_parts, __half *out) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_parts) return;
    const uint8_t *b = w + (i / 4) * 34;
    const float d = __half2float(__ushort_as_half(*(const uint16_t *)b));
    const uint16_t *qs = (const uint16_t *)(b + 2 + 8 * (i % 4));
    __align__(16) __half h[8];
#pragma unroll
    for (int j = 0; j < 4; j++) {
        uint16_t two = qs[j];
        h[2 * j] = __float2half_rn(d * (float)(int8_t)(two & 255));
        h[2 * j + 1] = __float2half_rn(d * (float)(int8_t)(two >> 8));
    }
    *(uint4 *)(out + 8 * i) = *(const uint4 *)h;
}

/* Thread i: values 8(i % (in/8)).. of token i / (in/8), four threads a
 * Q8_0 block, quantised as the CPU does (quad_q8_0_f16: warp_q8_0_code's
 * d and codes), each d·q rounded to f16; out is [n][in]. Two 16-byte loads
 * a thread keep the conversion at memory speed (a warp a block, one
 * 128-byte load each, ran at a third of it). */
__global__ void k_g16_act(const float *x, size_t ldx, uint32_t in, uint32_t n, __half *out) {
    const uint32_t per_tok = in / 8;
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x, t = i / per_tok, c = 8 * (i % per_tok);
    const bool on = t < n; /* every lane reaches the shuffles */
    float4 a = make_float4(0.0f, 0.0f, 0.0f, 0.0f), b = a;
    if (on) {
        a = *(const float4 *)(x + t * ldx + c);
        b = *(const float4 *)(x + t * ldx + c + 4);
    }
    const float v[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
    __align__(16) __half2 h[4];
    quad_q8_0_f16(v, h);
    if (on) *(uint4 *)(out + t * in + c) = *(const uint4 *)h;
}

static int blas_fail(ds4_err *err, const char *what, cublasStatus_t s) {
    return ds4_fail(err, "cuda: %s: %s", what, cublasGetStatusString(s));
}

void ds4_gemm16_free(ds4_gemm16 *g) {
    if (!g) return;
    if (g->blas) cublasDestroy(g->blas);
    cudaFree(g->w16);
    cudaFree(g->x16);
    cudaFree(g->blas_ws);
    free(g);
}

int ds4_gemm16_new(ds4_gemm16 **out, size_t max_w, size_t max_x, ds4_err *err) {
    *out = NULL;
    ds4_gemm16 *g = (ds4_gemm16 *)calloc(1, sizeof *g);
    if (!g) return ds4_fail(err, "cuda: out of host memory");
    g->max_w = max_w;
    g->max_x = max_x;
    cudaError_t c = cudaMalloc((void **)&g->w16, 2 * max_w);
    if (c == cudaSuccess) c = cudaMalloc((void **)&g->x16, 2 * max_x);
    if (c == cudaSuccess) c = cudaMalloc(&g->blas_ws, G16_BLAS_WS);
    if (c != cudaSuccess) {
        ds4_gemm16_free(g);
        return ds4_fail(err, "cuda: f16 product buffers: %s", cudaGetErrorString(c));
    }
    cublasStatus_t s = cublasCreate(&g->blas);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasSetWorkspace(g->blas, g->blas_ws, G16_BLAS_WS);
    if (s != CUBLAS_STATUS_SUCCESS) {
        ds4_gemm16_free(g);
        return blas_fail(err, "cublas handle", s);
    }
    *out = g;
    return 0;
}

/* Y (column-major rows × n, ldy) = W16ᵀ (W16: in × rows) · X16 (in × n,
 * ldx) + beta·Y, f16 inputs, f32 accumulation and output: every product
 * and the warm-up. */
static cublasStatus_t g16_product(ds4_gemm16 *g, const __half *w16, uint32_t rows, uint32_t in, uint32_t n,
                                  const __half *x16, size_t ldx, float beta, float *y, size_t ldy) {
    const float one = 1.0f;
    return cublasGemmEx(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)n, (int)in, &one, w16, CUDA_R_16F, (int)in,
                        x16, CUDA_R_16F, (int)ldx, &beta, y, CUDA_R_32F, (int)ldy, CUBLAS_COMPUTE_32F,
                        CUBLAS_GEMM_DEFAULT);
}

int ds4_gemm16_fits(const ds4_gemm16 *g, uint32_t rows, uint32_t in, uint32_t n) {
    return g && in % 32 == 0 && (size_t)rows * in <= g->max_w && (size_t)n * in <= g->max_x;
}

const void *ds4_gemm16_act(ds4_gemm16 *g, const float *x, size_t ldx, uint32_t in, uint32_t n, ds4_cuda_stream stream,
                           ds4_err *err) {
    if (!g || in % 32 || ldx % 4 || ((uintptr_t)x & 15) || (size_t)n * in > g->max_x) {
        ds4_fail(err, "cuda: f16 activation of %u x %u (stride %zu) does not fit its buffer", n, in, ldx);
        return NULL;
    }
    size_t threads = (size_t)n * (in / 8);
    k_g16_act<<<(unsigned)((threads + 255) / 256), 256, 0, (cudaStream_t)stream>>>(x, ldx, in, n, g->x16);
    cudaError_t c = cudaGetLastError();
    if (c != cudaSuccess) {
        ds4_fail(err, "cuda: f16 activation: %s", cudaGetErrorString(c));
        return NULL;
    }
    return g->x16;
}

int ds4_gemm16_q8_0_x16(ds4_gemm16 *g, const void *w, uint32_t rows, uint32_t in, const void *x16, size_t ldx16,
                        uint32_t n, float *y, size_t ldy, ds4_cuda_stream stream, ds4_err *err) {
    if (!ds4_gemm16_fits(g, rows, in, n) || ldx16 < in)
        return ds4_fail(err, "cuda: f16 product of %u x %u for %u tokens does not fit its buffers", rows, in, n);
    cudaStream_t st = (cudaStream_t)stream;
    size_t parts = (size_t)rows * in / 8;
    k_g16_weights<<<(unsigned)((parts + 255) / 256), 256, 0, st>>>((const uint8_t *)w, parts, g->w16);
    cudaError_t c = cudaGetLastError();
    if (c != cudaSuccess) return ds4_fail(err, "cuda: f16 weights: %s", cudaGetErrorString(c));
    cublasStatus_t s = cublasSetStream(g->blas, st);
    if (s == CUBLAS_STATUS_SUCCESS) s = g16_product(g, g->w16, rows, in, n, (const __half *)x16, ldx16, 0.0f, y, ldy);
    return s == CUBLAS_STATUS_SUCCESS ? 0 : blas_fail(err, "f16 product", s);
}

int ds4_gemm16_q8_0(ds4_gemm16 *g, const void *w, uint32_t rows, uint32_t in, const float *x, size_t ldx, uint32_t n,
                    float *y, size_t ldy, ds4_cuda_stream stream, ds4_err *err) {
    if (!ds4_gemm16_fits(g, rows, in, n))
        return ds4_fail(err, "cuda: f16 product of %u x %u for %u tokens does not fit its buffers", rows, in, n);
    const void *x16 = ds4_gemm16_act(g, x, ldx, in, n, stream, err);
    return x16 ? ds4_gemm16_q8_0_x16(g, w, rows, in, x16, in, n, y, ldy, stream, err) : -1;
}

int ds4_gemm16_f16_split(ds4_gemm16 *g, const void *w, uint32_t rows, uint32_t in, const void *xh, const void *xl,
                         uint32_t n, float *y, size_t ldy, ds4_cuda_stream stream, ds4_err *err) {
    if (!g || ((uintptr_t)w & 15) || in % 8)
        return ds4_fail(err, "cuda: f16 product of %u x %u: unaligned weights or no handle", rows, in);
    cublasStatus_t s = cublasSetStream(g->blas, (cudaStream_t)stream);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = g16_product(g, (const __half *)w, rows, in, n, (const __half *)xh, in, 0.0f, y, ldy);
    if (s == CUBLAS_STATUS_SUCCESS && xl)
        s = g16_product(g, (const __half *)w, rows, in, n, (const __half *)xl, in, 1.0f, y, ldy);
    return s == CUBLAS_STATUS_SUCCESS ? 0 : blas_fail(err, "f16 product", s);
}

void ds4_gemm16_warm(void) {
    enum { N = 256 };
    ds4_gemm16 *g = NULL;
    float *y = NULL;
    ds4_err err = {{0}};
    if (ds4_gemm16_new(&g, N * N, N * N, &err) == 0 && cudaMalloc((void **)&y, 4 * N * N) == cudaSuccess &&
        cudaMemset(g->w16, 0, 2 * N * N) == cudaSuccess && cudaMemset(g->x16, 0, 2 * N * N) == cudaSuccess) {
        g16_product(g, g->w16, N, N, N, g->x16, N, 0.0f, y, N);
        cudaDeviceSynchronize();
    }
    cudaFree(y);
    ds4_gemm16_free(g);
    cudaGetLastError(); /* a failure is not sticky */
}
