/* cpu_vec.c — see cpu_vec.h. The SIMD paths are picked by the same ISA
 * choice as the dot products (ds4_quant_get_isa), so forcing the scalar
 * ISA in a test forces these loops too. */
#include "cpu_vec.h"

#include "../../quant/quant.h"

/* No contraction of a*x + y into a fused multiply-add on any path. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#else
#pragma GCC optimize("fp-contract=off")
#endif

static void axpy_scalar(size_t n, float a, const float *x, float *y) {
    for (size_t i = 0; i < n; i++) y[i] = y[i] + a * x[i];
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

__attribute__((target("avx2"))) static void axpy_avx2(size_t n, float a, const float *x, float *y) {
    __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_mul_ps(va, _mm256_loadu_ps(x + i))));
    for (; i < n; i++) y[i] = y[i] + a * x[i];
}

__attribute__((target("avx512f"))) static void axpy_avx512(size_t n, float a, const float *x, float *y) {
    __m512 va = _mm512_set1_ps(a);
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_mul_ps(va, _mm512_loadu_ps(x + i))));
    for (; i < n; i++) y[i] = y[i] + a * x[i];
}

void cpu_axpy_f32(size_t n, float a, const float *x, float *y) {
    switch (ds4_quant_get_isa()) {
    case DS4_ISA_AVX512: axpy_avx512(n, a, x, y); break;
    case DS4_ISA_AVX2: axpy_avx2(n, a, x, y); break;
    default: axpy_scalar(n, a, x, y); break;
    }
}
#else
void cpu_axpy_f32(size_t n, float a, const float *x, float *y) { axpy_scalar(n, a, x, y); }
#endif
