/* cpu_vec.h — small f32 vector loops of the forward pass, with SIMD paths.
 *
 * The engine files are compiled for baseline x86-64; the loops that run
 * per attention row go through here to use AVX-512 (or AVX2) where the CPU
 * has it. Every path rounds each element exactly as the plain C loop does
 * (a product, then a sum, never fused), so results do not depend on the
 * path. */
#ifndef DS4_CPU_VEC_H
#define DS4_CPU_VEC_H

#include <stddef.h>

/* y[i] = y[i] + a * x[i] for i < n. */
void cpu_axpy_f32(size_t n, float a, const float *x, float *y);

#endif
