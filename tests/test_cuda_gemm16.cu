/* test_cuda_gemm16.cu — the prefill's Q8_0 products on f16 tensor cores
 * (cuda_gemm16.h) against the CPU's integer products (ds4_dot_q8_0 after
 * ds4_quantize_q8_0_act, src/quant).
 *
 * The f16 path rounds each weight d·q and each activation d·q to f16 (a
 * relative 2^-11 at most each) and accumulates in f32, so every output must
 * lie within 2^-10 · Σ_k |w_k·x_k| (+ f32 rounding) of the CPU's, where
 * w and x are the dequantised weight and activation; the test requires
 * that bound for every output and prints how much of it was used. Shapes:
 * the model's (q_a 4096 → 1024, q_b 1024 → 32768 in part, out_b 8192 →
 * 4096 in part) with strided inputs and outputs as the prefill passes them,
 * and tokens of very different magnitudes (1e-3 to 300). Also the
 * activation alone against the CPU's quantiser, bit for bit, and the F16
 * products from a split activation (ds4_gemm16_f16_split), both halves
 * and the hi half alone, against a double-precision product. Built by `make cuda`; `make test-cuda` runs it
 * on a GPU machine. */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <vector>

#include "../src/backend/cuda/cuda_gemm16.h"
extern "C" {
#include "../src/quant/quant.h"
}
#include "testutil.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

static void run_case(ds4_gemm16 *g, uint32_t rows, uint32_t in, uint32_t n, size_t ldx, size_t ldy) {
    const uint64_t rb = ds4_type_row_bytes(DS4_TYPE_Q8_0, in);
    std::vector<uint8_t> w(rows * rb);
    std::vector<float> wf(in), x((size_t)n * ldx, 0.0f), y((size_t)n * ldy, -7.0f);
    for (uint32_t r = 0; r < rows; r++) {
        for (uint32_t k = 0; k < in; k++) wf[k] = 0.05f * frand() * (k % 97 == 0 ? 8.0f : 1.0f);
        ds4_quantize_row(DS4_TYPE_Q8_0, wf.data(), &w[r * rb], in, NULL);
    }
    const float scale[] = {1.0f, 1e-3f, 300.0f, 0.02f};
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t k = 0; k < in; k++) x[t * ldx + k] = scale[t % 4] * frand() * (k % 61 == 3 ? 6.0f : 1.0f);
    uint8_t *dw;
    float *dx, *dy;
    cudaMalloc(&dw, w.size());
    cudaMalloc(&dx, x.size() * sizeof(float));
    cudaMalloc(&dy, y.size() * sizeof(float));
    cudaMemcpy(dw, w.data(), w.size(), cudaMemcpyHostToDevice);
    cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice);
    cudaMemcpy(dy, y.data(), y.size() * sizeof(float), cudaMemcpyHostToDevice);
    ds4_err err = {};
    int rc = ds4_gemm16_q8_0(g, dw, rows, in, dx, ldx, n, dy, ldy, NULL, &err);
    CHECK(rc == 0, "%u x %u, %u tokens: %s", rows, in, n, err.msg);
    cudaError_t c = cudaMemcpy(y.data(), dy, y.size() * sizeof(float), cudaMemcpyDeviceToHost);
    CHECK(c == cudaSuccess, "copy back: %s", cudaGetErrorString(c));
    std::vector<ds4_block_q8_0_act> act(in / 32);
    std::vector<float> wd(in), xd(in);
    double worst = 0.0;
    int bad = 0, untouched = 0;
    for (uint32_t t = 0; t < n; t++) {
        ds4_quantize_q8_0_act(&x[t * ldx], act.data(), in);
        for (uint32_t k = 0; k < in; k++) xd[k] = act[k / 32].d * act[k / 32].qs[k % 32];
        for (uint32_t r = 0; r < rows; r++) {
            ds4_dequantize_row(DS4_TYPE_Q8_0, &w[r * rb], wd.data(), in);
            double bound = 0.0;
            for (uint32_t k = 0; k < in; k++) bound += fabs((double)wd[k] * xd[k]);
            const float ref = ds4_dot_q8_0(in, &w[r * rb], act.data()), got = y[t * ldy + r];
            const double allowed = bound / 1024.0 + 1e-6 * fabs(ref) + 1e-30;
            const double used = fabs((double)got - ref) / allowed;
            if (!(used <= 1.0)) bad++;
            if (used > worst) worst = used;
        }
        for (size_t r = rows; r < ldy; r++) untouched += y[t * ldy + r] == -7.0f;
    }
    CHECK(bad == 0, "%u x %u, %u tokens: %d outputs beyond 2^-10 of sum |w x| (worst %.3g of it)", rows, in, n, bad,
          worst);
    CHECK(untouched == (int)(n * (ldy - rows)), "%u x %u: outputs past the rows were written", rows, in);
    printf("q8_0 %5u x %5u, %3u tokens (ldx %zu, ldy %zu): worst |gpu - cpu| = %.3f of the bound\n", rows, in, n, ldx,
           ldy, worst);
    cudaFree(dw);
    cudaFree(dx);
    cudaFree(dy);
}

/* The activation half alone (ds4_gemm16_act): every f16 value equals the
 * CPU's Q8_0 quantisation of the token (ds4_quantize_q8_0_act) with d·q
 * rounded to f16, bit for bit; strided rows, tokens of very different
 * magnitudes, zeros and a block with one large value. */
static void act_case(ds4_gemm16 *g, uint32_t in, uint32_t n, size_t ldx) {
    std::vector<float> x((size_t)n * ldx, 0.0f);
    const float scale[] = {1.0f, 1e-3f, 300.0f, 0.0f, 0.02f};
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t k = 0; k < in; k++)
            x[t * ldx + k] = scale[t % 5] * frand() * (k % 61 == 3 ? 6.0f : 1.0f) * (k / 32 == 5 && k % 32 ? 1e-4f : 1.0f);
    float *dx;
    cudaMalloc(&dx, x.size() * sizeof(float));
    cudaMemcpy(dx, x.data(), x.size() * sizeof(float), cudaMemcpyHostToDevice);
    ds4_err err = {};
    const void *d16 = ds4_gemm16_act(g, dx, ldx, in, n, NULL, &err);
    CHECK(d16 != NULL, "activation of %u x %u: %s", n, in, err.msg);
    std::vector<__half> got((size_t)n * in);
    cudaError_t c = d16 ? cudaMemcpy(got.data(), d16, got.size() * sizeof(__half), cudaMemcpyDeviceToHost)
                        : cudaErrorInvalidValue;
    CHECK(c == cudaSuccess, "copy back: %s", cudaGetErrorString(c));
    std::vector<ds4_block_q8_0_act> act(in / 32);
    long bad = 0;
    for (uint32_t t = 0; t < n; t++) {
        ds4_quantize_q8_0_act(&x[t * ldx], act.data(), in);
        for (uint32_t k = 0; k < in; k++)
            bad += __half_as_ushort(got[(size_t)t * in + k]) !=
                   __half_as_ushort(__float2half_rn(act[k / 32].d * (float)act[k / 32].qs[k % 32]));
    }
    CHECK(bad == 0, "activation of %u x %u (ldx %zu): %ld values differ from the CPU's Q8_0", n, in, ldx, bad);
    printf("activation %3u x %5u (ldx %zu): %ld values differ from the CPU's Q8_0\n", n, in, ldx, bad);
    cudaFree(dx);
}

/* F16 weights against an activation split into f16 hi + lo
 * (ds4_gemm16_f16_split): every output within 2e-5 of Σ_k |w_k·x_k| of a
 * double-precision product with the unsplit f32 activation (the split
 * keeps ~22 bits; the rest is the tensor cores' f32 accumulation). With
 * lo false the hi half alone (the prefill beside Q8_0 products on f16):
 * within 2^-11 + 2e-5 of it more, plus 2^-25 of Σ|w_k| for inputs that
 * are subnormal in f16. */
static void f16_case(ds4_gemm16 *g, uint32_t rows, uint32_t in, uint32_t n, size_t ldy, bool lo) {
    std::vector<__half> w((size_t)rows * in), xh((size_t)n * in), xl((size_t)n * in);
    std::vector<float> x((size_t)n * in), y((size_t)n * ldy, -7.0f);
    for (auto &v : w) v = __float2half_rn(0.05f * frand());
    const float scale[] = {1.0f, 1e-3f, 300.0f};
    for (size_t i = 0; i < x.size(); i++) {
        x[i] = scale[(i / in) % 3] * frand();
        xh[i] = __float2half_rn(x[i]);
        xl[i] = __float2half_rn(x[i] - __half2float(xh[i]));
    }
    __half *dw, *dh, *dl;
    float *dy;
    cudaMalloc(&dw, w.size() * 2);
    cudaMalloc(&dh, xh.size() * 2);
    cudaMalloc(&dl, xl.size() * 2);
    cudaMalloc(&dy, y.size() * 4);
    cudaMemcpy(dw, w.data(), w.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dh, xh.data(), xh.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dl, xl.data(), xl.size() * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dy, y.data(), y.size() * 4, cudaMemcpyHostToDevice);
    ds4_err err = {};
    int rc = ds4_gemm16_f16_split(g, dw, rows, in, dh, lo ? dl : NULL, n, dy, ldy, NULL, &err);
    CHECK(rc == 0, "f16 %u x %u: %s", rows, in, err.msg);
    cudaMemcpy(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost);
    double worst = 0.0;
    int bad = 0, untouched = 0;
    for (uint32_t t = 0; t < n; t++) {
        for (uint32_t r = 0; r < rows; r++) {
            double ref = 0.0, mag = 0.0, wmag = 0.0;
            for (uint32_t k = 0; k < in; k++) {
                const double wk = (double)__half2float(w[(size_t)r * in + k]), p = wk * x[(size_t)t * in + k];
                ref += p;
                mag += fabs(p);
                wmag += fabs(wk);
            }
            const double bound = lo ? 2e-5 * mag : (2e-5 + ldexp(1.0, -11)) * mag + ldexp(wmag, -25);
            const double used = fabs(y[t * ldy + r] - ref) / (bound + 1e-30);
            bad += !(used <= 1.0);
            if (used > worst) worst = used;
        }
        for (size_t r = rows; r < ldy; r++) untouched += y[t * ldy + r] == -7.0f;
    }
    const char *what = lo ? "hi + lo" : "hi alone";
    CHECK(bad == 0, "f16 %u x %u, %u tokens, %s: %d outputs beyond the bound (worst %.3g of it)", rows, in, n, what,
          bad, worst);
    CHECK(untouched == (int)(n * (ldy - rows)), "f16 %u x %u: outputs past the rows were written", rows, in);
    printf("f16  %5u x %5u, %3u tokens (ldy %zu), %-8s: worst |gpu - ref| = %.3f of the bound\n", rows, in, n, ldy,
           what, worst);
    cudaFree(dw);
    cudaFree(dh);
    cudaFree(dl);
    cudaFree(dy);
}

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) TEST_SKIP("no CUDA device");
    ds4_gemm16 *g = NULL;
    ds4_err err = {};
    if (ds4_gemm16_new(&g, (size_t)4096 * 8192, (size_t)128 * 8192, &err)) {
        printf("FAIL: %s\n", err.msg);
        return 1;
    }
    act_case(g, 4096, 37, 4096);
    act_case(g, 4096, 9, 32768); /* an out_a group's strided input */
    act_case(g, 96, 3, 104);     /* a partial warp of threads */
    run_case(g, 1024, 4096, 37, 4096, 1024);    /* q_a */
    run_case(g, 2048, 1024, 128, 1024, 2048);   /* part of q_b */
    run_case(g, 256, 8192, 5, 8192, 4096);      /* out_b rows, strided output */
    run_case(g, 384, 4096, 9, 32768, 8192);     /* an out_a group: strided input */
    for (int lo = 1; lo >= 0; lo--) {
        f16_case(g, 1024, 4096, 33, 1024, lo); /* a compressor projection */
        f16_case(g, 256, 4096, 7, 256, lo);    /* the router */
        f16_case(g, 520, 1024, 5, 600, lo);    /* part of the indexer's q_b, strided output */
    }
    CHECK(!ds4_gemm16_fits(g, 4096, 8192 + 32, 1), "a weight past the buffer is refused");
    CHECK(!ds4_gemm16_fits(g, 16, 100, 1), "a width that is not whole Q8_0 blocks is refused");
    CHECK(ds4_gemm16_q8_0(g, NULL, 16, 100, NULL, 100, 1, NULL, 16, NULL, &err) != 0, "and reported");
    CHECK(ds4_gemm16_act(g, NULL, 4096, 4096, 257, NULL, &err) == NULL, "an activation past the buffer is refused");
    ds4_gemm16_free(g);
    return TEST_DONE();
}
