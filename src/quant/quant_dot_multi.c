/* quant_dot_multi.c — one weight row dotted with several activation rows.
 *
 * A prefill chunk multiplies every weight row with many tokens. Done one
 * dot product at a time, each token pays again for decoding the row's
 * blocks (IQ2_XXS grid and sign lookups, Q2_K code and scale unpacking,
 * F16 conversion), which is what bounds those formats (BENCHMARKS.md).
 * Here a block is decoded once and its values are used for up to
 * DS4_DOT_MULTI_MAX tokens while they sit in registers.
 *
 * Results are those of ds4_dot() bit for bit, for every token: each
 * token's per-block integer sum is exact, and its float terms follow the
 * scalar recipe of quant_dot.c in block order, with one accumulator per
 * token. The tokens only share the weight decoding.
 *
 * The Q8_0 (AVX-512 VNNI) and IQ2_XXS (AVX-512 BITALG) kernels are also
 * faster than ds4_dot() for a single activation (Q8_0 ~20-35%, IQ2_XXS
 * ~5-10% on this Zen 4), so the forward pass uses them in decode too; a
 * single Q2_K or F16 activation goes to ds4_dot() (as fast), and
 * types and ISAs without a kernel here fall back to ds4_dot() per token. */
#include <string.h>

#include "quant_internal.h"

static void multi_generic(uint32_t wtype, uint64_t n, const void *w, const void *const *acts, int na,
                          float *out) {
    for (int k = 0; k < na; k++) out[k] = ds4_dot(wtype, n, w, acts[k]);
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#include "quant_simd.h"

#define AVX2 __attribute__((target("avx2,f16c")))
#define INLINE inline __attribute__((always_inline))

/* ---- Q8_0 (AVX-512 VNNI, 256-bit registers) ---- */

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,f16c")))

VNNI static INLINE __m256i dpbusd(__m256i u8, __m256i s8) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u8, s8);
}

/* vpdpbusd multiplies unsigned by signed bytes: the activation byte a goes
 * in as a + 128 (a ^ 0x80) against the signed weight, and 128 · Σ w (also
 * by vpdpbusd, shared by all tokens) is taken off again, so each block sum
 * is exact for every byte value. Per 8 blocks the eight float terms
 * (d_w · d_a) · isum are formed in one vector and then added to the
 * token's accumulator one by one, in block order, as the scalar recipe
 * does. */
VNNI static INLINE void q8_0_vnni(uint64_t n, const void *wv, const void *const *acts, const int na,
                                  float *out) {
    const ds4_block_q8_0 *b = wv;
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi8(1);
    float acc[DS4_DOT_MULTI_MAX] = {0};
    uint64_t nb = n / DS4_QK8_0, i = 0;
    for (; i + 8 <= nb; i += 8) {
        __m256i w[8], p[8];
        uint16_t dh[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            w[j] = _mm256_loadu_si256((const __m256i *)b[i + j].qs);
            p[j] = dpbusd(ones, w[j]);
            dh[j] = b[i + j].d;
        }
        __m256i wsum128 = _mm256_slli_epi32(hsum8_vec(p), 7);
        __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh));
#pragma GCC unroll 4
        for (int k = 0; k < na; k++) {
            const ds4_block_q8_0_act *a = (const ds4_block_q8_0_act *)acts[k] + i;
            float da[8], t[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                p[j] = dpbusd(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)a[j].qs), flip), w[j]);
                da[j] = a[j].d;
            }
            __m256i isum = _mm256_sub_epi32(hsum8_vec(p), wsum128);
            _mm256_storeu_ps(t, _mm256_mul_ps(_mm256_mul_ps(dw, _mm256_loadu_ps(da)), _mm256_cvtepi32_ps(isum)));
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) acc[k] += t[j];
        }
    }
    for (; i < nb; i++) {
        __m256i w = _mm256_loadu_si256((const __m256i *)b[i].qs);
        int32_t wsum = hsum_i32(dpbusd(ones, w));
        float dw = f16_to_f32(b[i].d);
#pragma GCC unroll 4
        for (int k = 0; k < na; k++) {
            const ds4_block_q8_0_act *a = (const ds4_block_q8_0_act *)acts[k] + i;
            __m256i x = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)a->qs), flip);
            acc[k] += (dw * a->d) * (float)(hsum_i32(dpbusd(x, w)) - 128 * wsum);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < na; k++) out[k] = acc[k];
}

/* ---- Q2_K (AVX2): codes and scales of a 32-value step decoded once ---- */

AVX2 static INLINE void q2_K_avx2(uint64_t n, const void *wv, const void *const *acts, const int na,
                                  float *out) {
    const ds4_block_q2_K *b = wv;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m15 = _mm_set1_epi8(15);
    float acc[DS4_DOT_MULTI_MAX] = {0};
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++) {
        __m128i sc8 = _mm_loadu_si128((const __m128i *)b->scales);
        __m128i scales = _mm_and_si128(sc8, m15);
        __m256i mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(sc8, 4), m15));
        __m256i sum[DS4_DOT_MULTI_MAX];
        for (int k = 0; k < na; k++) sum[k] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int h = 0; h < 2; h++) {
            __m256i bits = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * h));
#pragma GCC unroll 8
            for (int s = 0; s < 4; s++) {
                int j = 8 * h + 2 * s;
                __m256i codes = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * s), m3);
                __m128i pick = _mm_set_epi64x((int64_t)(0x0101010101010101ull * (uint64_t)(j + 1)),
                                              (int64_t)(0x0101010101010101ull * (uint64_t)j));
                __m256i sc = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scales, pick));
                #pragma GCC unroll 4
                for (int k = 0; k < na; k++) {
                    const ds4_block_q8_K *a = (const ds4_block_q8_K *)acts[k] + i;
                    __m256i q8 = _mm256_loadu_si256((const __m256i *)(a->qs + 128 * h + 32 * s));
                    sum[k] = _mm256_add_epi32(sum[k], _mm256_madd_epi16(_mm256_maddubs_epi16(codes, q8), sc));
                }
            }
        }
        float d = f16_to_f32(b->d), dmin = f16_to_f32(b->dmin);
        #pragma GCC unroll 4
        for (int k = 0; k < na; k++) {
            const ds4_block_q8_K *a = (const ds4_block_q8_K *)acts[k] + i;
            __m256i bsums = _mm256_loadu_si256((const __m256i *)a->bsums);
            int32_t summ = hsum_i32(_mm256_madd_epi16(mins, bsums));
            int32_t isum = hsum_i32(sum[k]);
            float dall = a->d * d, dmn = a->d * dmin;
            acc[k] += dall * (float)isum - dmn * (float)summ;
        }
    }
    for (int k = 0; k < na; k++) out[k] = acc[k];
}

/* ---- IQ2_XXS (AVX2): grid values and signs of a sub-block looked up once ---- */

AVX2 static INLINE void iq2_xxs_avx2(uint64_t n, const void *wv, const void *const *acts, const int na,
                                     float *out) {
    const ds4_block_iq2_xxs *b = wv;
    float acc[DS4_DOT_MULTI_MAX] = {0};
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++) {
        __m256i sum[DS4_DOT_MULTI_MAX];
        for (int k = 0; k < na; k++) sum[k] = _mm256_setzero_si256();
        #pragma GCC unroll 2
        for (int sb = 0; sb < 8; sb++) {
            uint32_t aux[2];
            memcpy(aux, b->qs + 4 * sb, 8);
            uint32_t A = aux[0], B = aux[1];
            __m256i g = iq2_xxs_grid_values(A);
            __m256i sg = iq2_xxs_sign_table(g, B);
            __m256i ls = _mm256_set1_epi16((int16_t)(2 * (B >> 28) + 1));
            #pragma GCC unroll 4
            for (int k = 0; k < na; k++) {
                const ds4_block_q8_K *a = (const ds4_block_q8_K *)acts[k] + i;
                sum[k] = _mm256_add_epi32(sum[k], iq2_xxs_madd(sg, a->qs + 32 * sb, ls));
            }
        }
        float d = f16_to_f32(b->d);
        #pragma GCC unroll 4
        for (int k = 0; k < na; k++) {
            const ds4_block_q8_K *a = (const ds4_block_q8_K *)acts[k] + i;
            acc[k] += (d * a->d) * (float)hsum_i32(sum[k]);
        }
    }
    for (int k = 0; k < na; k++) out[k] = 0.125f * acc[k];
}

/* ---- IQ2_XXS (AVX-512 BITALG + VPOPCNTDQ): signs computed in registers ----
 *
 * The four 7-bit sign indices of a sub-block are shifted into the four
 * 64-bit lanes, completed with their parity bit (the table's bit 7), and
 * vpshufbitqmb turns the 8 bits of each lane into a 32-bit byte mask that
 * negates the grid values: no sign-table loads or vector inserts. */

#define BITALG __attribute__((target("avx512f,avx512bw,avx512vl,avx512bitalg,avx512vpopcntdq,avx2,f16c")))

BITALG static INLINE void iq2_xxs_bitalg(uint64_t n, const void *wv, const void *const *acts, const int na,
                                         float *out) {
    const ds4_block_iq2_xxs *b = wv;
    const __m256i shifts = _mm256_set_epi64x(21, 14, 7, 0), m127 = _mm256_set1_epi64x(127);
    const __m256i one = _mm256_set1_epi64x(1), bytes = _mm256_set1_epi64x(0x0706050403020100ll);
    float acc[DS4_DOT_MULTI_MAX] = {0};
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, b++) {
        __m256i sum[DS4_DOT_MULTI_MAX];
#pragma GCC unroll 4
        for (int k = 0; k < na; k++) sum[k] = _mm256_setzero_si256();
#pragma GCC unroll 2
        for (int sb = 0; sb < 8; sb++) {
            uint32_t aux[2];
            memcpy(aux, b->qs + 4 * sb, 8);
            uint32_t A = aux[0], B = aux[1];
            __m256i g = iq2_xxs_grid_values(A);
            __m256i s = _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(B), shifts), m127);
            s = _mm256_or_si256(s, _mm256_slli_epi64(_mm256_and_si256(_mm256_popcnt_epi64(s), one), 7));
            __mmask32 neg = _mm256_bitshuffle_epi64_mask(s, bytes);
            __m256i sg = _mm256_mask_sub_epi8(g, neg, _mm256_setzero_si256(), g);
            __m256i ls = _mm256_set1_epi16((int16_t)(2 * (B >> 28) + 1));
#pragma GCC unroll 4
            for (int k = 0; k < na; k++) {
                const ds4_block_q8_K *a = (const ds4_block_q8_K *)acts[k] + i;
                sum[k] = _mm256_add_epi32(sum[k], iq2_xxs_madd(sg, a->qs + 32 * sb, ls));
            }
        }
        float d = f16_to_f32(b->d);
#pragma GCC unroll 4
        for (int k = 0; k < na; k++) {
            const ds4_block_q8_K *a = (const ds4_block_q8_K *)acts[k] + i;
            acc[k] += (d * a->d) * (float)hsum_i32(sum[k]);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < na; k++) out[k] = 0.125f * acc[k];
}

/* ---- F16 weights, f32 activations (AVX-512): the row converted once ----
 * The 16 lanes and their halving-tree reduction of quant_dot.c, per token. */

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")))

AVX512 static INLINE void f16_avx512(uint64_t n, const void *wv, const void *const *acts, const int na,
                                     float *out) {
    const uint16_t *w = wv;
    __m512 acc[DS4_DOT_MULTI_MAX];
#pragma GCC unroll 4
    for (int k = 0; k < na; k++) acc[k] = _mm512_setzero_ps();
    uint64_t i = 0;
    for (; i + DS4_FDOT_LANES <= n; i += DS4_FDOT_LANES) {
        __m512 wf = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i)));
#pragma GCC unroll 4
        for (int k = 0; k < na; k++)
            acc[k] = _mm512_add_ps(acc[k], _mm512_mul_ps(wf, _mm512_loadu_ps((const float *)acts[k] + i)));
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m512 wf = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + i));
#pragma GCC unroll 4
        for (int k = 0; k < na; k++) {
            __m512 p = _mm512_mul_ps(wf, _mm512_maskz_loadu_ps(m, (const float *)acts[k] + i));
            acc[k] = _mm512_mask_add_ps(acc[k], m, acc[k], p);
        }
    }
#pragma GCC unroll 4
    for (int k = 0; k < na; k++) {
        float lanes[DS4_FDOT_LANES];
        _mm512_storeu_ps(lanes, acc[k]);
        out[k] = ds4_fdot_reduce(lanes);
    }
}

/* One entry per kernel and ISA, with the token count a constant in each
 * case so the compiler unrolls the token loops. */
#define MULTI_ENTRY(name, attr, body)                                                              \
    attr static void name(uint64_t n, const void *w, const void *const *acts, int na, float *out) { \
        switch (na) {                                                                              \
        case 1: body(n, w, acts, 1, out); break;                                                   \
        case 2: body(n, w, acts, 2, out); break;                                                   \
        case 3: body(n, w, acts, 3, out); break;                                                   \
        default: body(n, w, acts, 4, out); break;                                                  \
        }                                                                                          \
    }
MULTI_ENTRY(multi_q8_0_vnni, VNNI, q8_0_vnni)
MULTI_ENTRY(multi_q2_K_avx2, AVX2, q2_K_avx2)
MULTI_ENTRY(multi_iq2_xxs_avx2, AVX2, iq2_xxs_avx2)
MULTI_ENTRY(multi_iq2_xxs_bitalg, BITALG, iq2_xxs_bitalg)
MULTI_ENTRY(multi_f16_avx512, AVX512, f16_avx512)

/* CPU features beyond the ISA level, checked once (a benign race: every
 * thread computes the same value). */
static bool cpu_has(int *cached, bool (*probe)(void)) {
    int v = __atomic_load_n(cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = probe() ? 1 : 0;
        __atomic_store_n(cached, v, __ATOMIC_RELAXED);
    }
    return v;
}
static bool probe_vnni(void) { return __builtin_cpu_supports("avx512vnni"); }
static bool probe_bitalg(void) {
    return __builtin_cpu_supports("avx512bitalg") && __builtin_cpu_supports("avx512vpopcntdq");
}
static int has_vnni = -1, has_bitalg = -1;

typedef void (*multi_fn)(uint64_t n, const void *w, const void *const *acts, int na, float *out);

/* The kernel for a weight type (NULL: ds4_dot per activation). */
static multi_fn multi_kernel(uint32_t wtype) {
    ds4_isa isa = ds4_quant_get_isa();
    if (isa < DS4_ISA_AVX2) return NULL;
    switch (wtype) {
    case DS4_TYPE_Q8_0: return isa == DS4_ISA_AVX512 && cpu_has(&has_vnni, probe_vnni) ? multi_q8_0_vnni : NULL;
    case DS4_TYPE_Q2_K: return multi_q2_K_avx2;
    case DS4_TYPE_IQ2_XXS:
        return isa == DS4_ISA_AVX512 && cpu_has(&has_bitalg, probe_bitalg) ? multi_iq2_xxs_bitalg : multi_iq2_xxs_avx2;
    case DS4_TYPE_F16: return isa == DS4_ISA_AVX512 ? multi_f16_avx512 : NULL;
    default: return NULL;
    }
}
#else
typedef void (*multi_fn)(uint64_t n, const void *w, const void *const *acts, int na, float *out);
static multi_fn multi_kernel(uint32_t wtype) { return NULL; }
#endif

void ds4_dot_multi(uint32_t wtype, uint64_t n, const void *w, const void *const *acts, int n_act, float *out) {
    multi_fn f = multi_kernel(wtype);
    for (int k = 0; k < n_act; k += DS4_DOT_MULTI_MAX) {
        int na = n_act - k < DS4_DOT_MULTI_MAX ? n_act - k : DS4_DOT_MULTI_MAX;
        if (na == 1 && (wtype == DS4_TYPE_Q2_K || wtype == DS4_TYPE_F16)) /* ds4_dot is as fast */
            out[k] = ds4_dot(wtype, n, w, acts[k]);
        else if (f)
            f(n, w, acts + k, na, out + k);
        else
            multi_generic(wtype, n, w, acts + k, na, out + k);
    }
}
