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

static void f16_scalar(size_t n, const uint16_t *src, float *dst) {
    for (size_t i = 0; i < n; i++) dst[i] = ds4_f16_to_f32(src[i]);
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

/* vcvtph2ps converts every half exactly, as the scalar conversion does
 * (subnormals and infinities included); the only difference, a signalling
 * NaN coming out quiet, cannot arise: ds4_f32_to_f16 stores quiet NaNs. */
__attribute__((target("avx2,f16c"))) static void f16_f16c(size_t n, const uint16_t *src, float *dst) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++) dst[i] = ds4_f16_to_f32(src[i]);
}

void cpu_f16_to_f32(size_t n, const uint16_t *src, float *dst) {
    if (ds4_quant_get_isa() >= DS4_ISA_AVX2) /* the ISA levels include F16C */
        f16_f16c(n, src, dst);
    else
        f16_scalar(n, src, dst);
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
void cpu_f16_to_f32(size_t n, const uint16_t *src, float *dst) { f16_scalar(n, src, dst); }
#endif
