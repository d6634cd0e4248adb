/* cpu_vec.h — small f32 vector loops of the forward pass, with SIMD paths.
 *
 * The engine files are compiled for baseline x86-64; the loops that run
 * per attention row (and the f16 KV row reads) go through here to use AVX-512 (or AVX2) where the CPU
 * has it. Every path rounds each element exactly as the plain C loop does
 * (a product, then a sum, never fused), so results do not depend on the
 * path. */
#ifndef DS4_CPU_VEC_H
#define DS4_CPU_VEC_H

#include <stddef.h>
#include <stdint.h>

/* y[i] = y[i] + a * x[i] for i < n. */
void cpu_axpy_f32(size_t n, float a, const float *x, float *y);
/* dst[i] = src[i] (IEEE half) as f32, i < n: ds4_f16_to_f32's values for
 * every half except signalling NaNs (these come out quiet). */
void cpu_f16_to_f32(size_t n, const uint16_t *src, float *dst);

#endif
