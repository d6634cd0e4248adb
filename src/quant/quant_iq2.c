/* quant_iq2.c — the IQ2_XXS weight quantiser.
 *
 * Format (model-spec §3): per 256 values an f16 d; per 32-value sub-block a
 * 4-bit ls giving the step db = d*(0.5+ls)*0.25; per 8-value group a grid
 * point g (8 magnitudes in {8, 25, 43}) and 7 sign bits, the 8th sign being
 * their parity (an even number of negatives). Value = db * grid[g][j] * sign.
 *
 * The quantiser minimises sum_i w_i (x_i - dequant_i)^2 (w = imatrix or
 * ones), exactly for a given step, by exhaustive search:
 *  - For a group and a step db, the best signs for a grid point g agree
 *    with the signs of x; if that gives an odd number of negatives, the
 *    cheapest single flip costs 4*db*min_j(w_j |x_j| G_gj). So the group's
 *    error for g is c - 2 db A_g + db^2 B_g + db F_g with A_g, B_g, F_g
 *    independent of db: computed once per group, after which the best of
 *    all 256 grid points x all sign choices costs two flops per g.
 *  - Each sub-block's error at a given step is then the sum of its four
 *    groups' minima over 256 lines db*B + H, evaluated four steps at a
 *    time. A coarse sweep (8 steps 36% apart, then 4 around the best)
 *    gives each sub-block's best free step. Three super-scales d around
 *    8*max_step/31 are tried (rounded to f16, as stored), each sub-block
 *    taking the best of the four ls whose steps bracket its own best step;
 *    the best d is refined once by least squares with its codes fixed. All
 *    errors use the stored d, so what is minimised is the error of the
 *    written block. (Wider searches, 17 candidates d with all 16 ls each,
 *    lowered the RMSE by about 1% at 10x the time.)
 * ggml's quantiser, by contrast, rounds to the levels {1,3,5} and projects
 * onto the grid through neighbour lists; searching the true grid values is
 * why this one is more accurate. The table building and the line minima
 * have AVX2 forms, used when ds4_quant_get_isa() allows; they compute the
 * same floats (each grid point's sums in the same order, and min is exact),
 * so the output does not depend on the CPU (test_quant_formats checks).
 * Speed: BENCHMARKS.md. */
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

#define GROUPS (DS4_QK_K / 8)

typedef float v4f __attribute__((vector_size(16)));
static inline v4f vsplat(float v) { return (v4f){v, v, v, v}; }
/* a < b ? a : b per lane (minps is exactly that) */
static inline v4f vmin(v4f a, v4f b) {
#if HAVE_X86
    return (v4f)_mm_min_ps((__m128)a, (__m128)b);
#else
    typedef int32_t v4i __attribute__((vector_size(16)));
    v4i m = a < b;
    return (v4f)(((v4i)a & m) | ((v4i)b & ~m));
#endif
}

typedef struct iq2_work {
    v4f grid_t[8][64];            /* grid magnitudes, element-major, 4 grid points per vector */
    v4f grid2_t[8][64];           /* their squares */
    float grid[256][8];           /* grid magnitudes, point-major */
    float c[GROUPS];              /* sum w x^2 per group */
    v4f B[GROUPS][64];            /* sum w G^2 per grid point */
    v4f H[GROUPS][64];            /* F - 2A: linear coefficient of the cost */
    float x[DS4_QK_K], w[DS4_QK_K];
    bool avx2;                    /* the AVX2 forms may be used */
} iq2_work;

static float f16_round(float v) {
    if (!(v > 0.0f)) return 0.0f;
    return ds4_f16_to_f32(ds4_f32_to_f16(fminf(v, 65504.0f)));
}

/* The per-grid-point coefficients of group k: B = sum w G^2 and
 * H = F - 2A with A = sum w|x|G and F the parity flip cost. The SIMD width
 * does not change the result (each point's sums run over j in order). */
static void group_tables_v4(iq2_work *wk, int k, const float *wa, int negs) {
    const float *w = wk->w + 8 * k;
    for (int g = 0; g < 64; g++) {
        v4f t = wa[0] * wk->grid_t[0][g], a = t, flip = t, b = w[0] * wk->grid2_t[0][g];
        for (int j = 1; j < 8; j++) {
            t = wa[j] * wk->grid_t[j][g];
            a += t;
            b += w[j] * wk->grid2_t[j][g];
            flip = vmin(t, flip);
        }
        wk->B[k][g] = b;
        wk->H[k][g] = ((negs & 1) ? 4.0f * flip : vsplat(0.0f)) - 2.0f * a;
    }
}

#if HAVE_X86
__attribute__((target("avx2"))) static void group_tables_avx2(iq2_work *wk, int k, const float *wa, int negs) {
    const float *w = wk->w + 8 * k;
    const float *G = (const float *)wk->grid_t, *G2 = (const float *)wk->grid2_t;
    float *Bk = (float *)wk->B[k], *Hk = (float *)wk->H[k];
    __m256 four = _mm256_set1_ps(4.0f), two = _mm256_set1_ps(2.0f);
    for (int g = 0; g < 256; g += 8) {
        __m256 t = _mm256_mul_ps(_mm256_set1_ps(wa[0]), _mm256_loadu_ps(G + g)), a = t, flip = t;
        __m256 b = _mm256_mul_ps(_mm256_set1_ps(w[0]), _mm256_loadu_ps(G2 + g));
        for (int j = 1; j < 8; j++) {
            t = _mm256_mul_ps(_mm256_set1_ps(wa[j]), _mm256_loadu_ps(G + 256 * j + g));
            a = _mm256_add_ps(a, t);
            b = _mm256_add_ps(b, _mm256_mul_ps(_mm256_set1_ps(w[j]), _mm256_loadu_ps(G2 + 256 * j + g)));
            flip = _mm256_min_ps(t, flip);
        }
        __m256 f = (negs & 1) ? _mm256_mul_ps(four, flip) : _mm256_setzero_ps();
        _mm256_storeu_ps(Bk + g, b);
        _mm256_storeu_ps(Hk + g, _mm256_sub_ps(f, _mm256_mul_ps(two, a)));
    }
}
#endif

static void group_tables(iq2_work *wk, int k) {
    const float *x = wk->x + 8 * k, *w = wk->w + 8 * k;
    float c = 0.0f, wa[8];
    int negs = 0;
    for (int j = 0; j < 8; j++) {
        negs += x[j] < 0.0f;
        c += w[j] * x[j] * x[j];
        wa[j] = w[j] * fabsf(x[j]);
    }
    wk->c[k] = c;
#if HAVE_X86
    if (wk->avx2) {
        group_tables_avx2(wk, k, wa, negs);
        return;
    }
#endif
    group_tables_v4(wk, k, wa, negs);
}

/* min over g of db[q]*B[g] + H[g] for four steps. min is exact, so the
 * lane layout does not change the result. */
static void line_mins4(const iq2_work *wk, int k, const float *db, float *out) {
    const v4f *B = wk->B[k], *H = wk->H[k];
    v4f t0 = vsplat(db[0]), t1 = vsplat(db[1]), t2 = vsplat(db[2]), t3 = vsplat(db[3]);
    v4f m0 = vsplat(FLT_MAX), m1 = m0, m2 = m0, m3 = m0;
    for (int g = 0; g < 64; g++) {
        v4f b = B[g], h = H[g];
        m0 = vmin(t0 * b + h, m0);
        m1 = vmin(t1 * b + h, m1);
        m2 = vmin(t2 * b + h, m2);
        m3 = vmin(t3 * b + h, m3);
    }
    v4f m[4] = {m0, m1, m2, m3};
    for (int q = 0; q < 4; q++) {
        float best = m[q][0];
        for (int l = 1; l < 4; l++) best = m[q][l] < best ? m[q][l] : best;
        out[q] = best;
    }
}

#if HAVE_X86
__attribute__((target("avx2"))) static void line_mins4_avx2(const iq2_work *wk, int k, const float *db, float *out) {
    const float *B = (const float *)wk->B[k], *H = (const float *)wk->H[k];
    __m256 t0 = _mm256_set1_ps(db[0]), t1 = _mm256_set1_ps(db[1]), t2 = _mm256_set1_ps(db[2]);
    __m256 t3 = _mm256_set1_ps(db[3]), m0 = _mm256_set1_ps(FLT_MAX), m1 = m0, m2 = m0, m3 = m0;
    for (int g = 0; g < 256; g += 8) {
        __m256 b = _mm256_loadu_ps(B + g), h = _mm256_loadu_ps(H + g);
        m0 = _mm256_min_ps(_mm256_add_ps(_mm256_mul_ps(t0, b), h), m0);
        m1 = _mm256_min_ps(_mm256_add_ps(_mm256_mul_ps(t1, b), h), m1);
        m2 = _mm256_min_ps(_mm256_add_ps(_mm256_mul_ps(t2, b), h), m2);
        m3 = _mm256_min_ps(_mm256_add_ps(_mm256_mul_ps(t3, b), h), m3);
    }
    __m256 m[4] = {m0, m1, m2, m3};
    for (int q = 0; q < 4; q++) {
        __m128 v = _mm_min_ps(_mm256_castps256_ps128(m[q]), _mm256_extractf128_ps(m[q], 1));
        v = _mm_min_ps(v, _mm_movehl_ps(v, v));
        v = _mm_min_ss(v, _mm_shuffle_ps(v, v, 1));
        out[q] = _mm_cvtss_f32(v);
    }
}
#endif

/* Errors of group k at four steps db[0..3], each with its best grid point
 * and signs: c + db * min_g (db*B[g] + H[g]). */
static void group_errors4(const iq2_work *wk, int k, const float *db, float *err) {
    float m[4];
#if HAVE_X86
    if (wk->avx2) line_mins4_avx2(wk, k, db, m);
    else
#endif
        line_mins4(wk, k, db, m);
    for (int q = 0; q < 4; q++) err[q] = wk->c[k] + db[q] * m[q];
}

/* Errors of sub-block sb at four steps. */
static void sub_errors4(const iq2_work *wk, int sb, const float *db, double *err) {
    for (int q = 0; q < 4; q++) err[q] = 0.0;
    for (int k = 4 * sb; k < 4 * sb + 4; k++) {
        float e[4];
        group_errors4(wk, k, db, e);
        for (int q = 0; q < 4; q++) err[q] += e[q];
    }
}

static float step_of(float d, int ls) {
    return d * (0.5f + (float)ls) * 0.25f; /* as the dequantiser computes it */
}

/* Best ls of sub-block sb for super-scale d among four candidates around
 * the one whose step is nearest the sub-block's own best step; returns
 * the sub-block's error. */
static double choose_ls(const iq2_work *wk, int sb, float d, float own_step, int *ls) {
    int l0 = (int)floorf(4.0f * own_step / d - 0.5f) - 1; /* candidates l0 .. l0+3 */
    if (l0 < 0) l0 = 0;
    if (l0 > 12) l0 = 12;
    float db[4];
    double e[4], best = DBL_MAX;
    for (int q = 0; q < 4; q++) db[q] = step_of(d, l0 + q);
    sub_errors4(wk, sb, db, e);
    for (int q = 0; q < 4; q++) {
        if (e[q] < best) {
            best = e[q];
            *ls = l0 + q;
        }
    }
    return best;
}

/* Block error for super-scale d, each sub-block taking its best ls. */
static double choose_all_ls(const iq2_work *wk, float d, const float *own_step, int *ls) {
    double total = 0.0;
    for (int sb = 0; sb < 8; sb++) total += choose_ls(wk, sb, d, own_step[sb], &ls[sb]);
    return total;
}

/* The first grid point with the least cost db*B[g] + H[g] for group k. */
static int line_argmin(const iq2_work *wk, int k, float db) {
    const v4f *B = wk->B[k], *H = wk->H[k];
    typedef int32_t v4i __attribute__((vector_size(16)));
    v4f t = vsplat(db), m = vsplat(FLT_MAX);
    v4i idx = {0, 1, 2, 3}, at = idx;
    for (int i = 0; i < 64; i++, idx += 4) {
        v4f v = t * B[i] + H[i];
        v4i less = v < m;
        m = (v4f)(((v4i)v & less) | ((v4i)m & ~less));
        at = (idx & less) | (at & ~less);
    }
    int g = at[0];
    float best = m[0];
    for (int l = 1; l < 4; l++) {
        if (m[l] < best || (m[l] == best && at[l] < g)) {
            best = m[l];
            g = at[l];
        }
    }
    return g;
}

#if HAVE_X86
/* The same: the least cost first, then the first point that has it. */
__attribute__((target("avx2"))) static int line_argmin_avx2(const iq2_work *wk, int k, float db) {
    const float *B = (const float *)wk->B[k], *H = (const float *)wk->H[k];
    __m256 t = _mm256_set1_ps(db), m0 = _mm256_set1_ps(FLT_MAX), m1 = m0;
    for (int g = 0; g < 256; g += 16) {
        m0 = _mm256_min_ps(_mm256_add_ps(_mm256_mul_ps(t, _mm256_loadu_ps(B + g)), _mm256_loadu_ps(H + g)), m0);
        m1 = _mm256_min_ps(_mm256_add_ps(_mm256_mul_ps(t, _mm256_loadu_ps(B + g + 8)), _mm256_loadu_ps(H + g + 8)), m1);
    }
    __m256 m = _mm256_min_ps(m0, m1);
    __m128 v = _mm_min_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    v = _mm_min_ps(v, _mm_movehl_ps(v, v));
    v = _mm_min_ss(v, _mm_shuffle_ps(v, v, 1));
    __m256 best = _mm256_set1_ps(_mm_cvtss_f32(v));
    for (int g = 0; g < 256; g += 8) {
        __m256 c = _mm256_add_ps(_mm256_mul_ps(t, _mm256_loadu_ps(B + g)), _mm256_loadu_ps(H + g));
        int hit = _mm256_movemask_ps(_mm256_cmp_ps(c, best, _CMP_EQ_OQ));
        if (hit) return g + __builtin_ctz((unsigned)hit);
    }
    return 0; /* not reached: some point has the least cost */
}
#endif

/* Codes of group k at step db: grid index and the 8 sign bits. */
static void group_codes(const iq2_work *wk, int k, float db, int *g_out, int *signs) {
    const float *x = wk->x + 8 * k, *w = wk->w + 8 * k;
#if HAVE_X86
    int g = wk->avx2 ? line_argmin_avx2(wk, k, db) : line_argmin(wk, k, db);
#else
    int g = line_argmin(wk, k, db);
#endif
    int s = 0, negs = 0, imin = 0;
    float flip = FLT_MAX;
    for (int j = 0; j < 8; j++) {
        if (x[j] < 0.0f) {
            s |= 1 << j;
            negs++;
        }
        float t = w[j] * fabsf(x[j]) * wk->grid[g][j];
        if (t < flip) {
            flip = t;
            imin = j;
        }
    }
    if (negs & 1) s ^= 1 << imin;
    *g_out = g;
    *signs = s;
}

/* Least-squares d for fixed codes: x ~ d * u with u = (0.5+ls)/4 * G * sign. */
static float refit_d(const iq2_work *wk, const int *ls, float d) {
    double sux = 0.0, suu = 0.0;
    for (int k = 0; k < GROUPS; k++) {
        int g, s;
        group_codes(wk, k, step_of(d, ls[k / 4]), &g, &s);
        float f = (0.5f + (float)ls[k / 4]) * 0.25f;
        for (int j = 0; j < 8; j++) {
            double u = (double)f * wk->grid[g][j] * ((s >> j) & 1 ? -1.0 : 1.0);
            sux += wk->w[8 * k + j] * u * wk->x[8 * k + j];
            suu += wk->w[8 * k + j] * u * u;
        }
    }
    return suu > 0.0 ? f16_round((float)(sux / suu)) : d;
}

static void quantize_block(iq2_work *wk, ds4_block_iq2_xxs *y) {
    memset(y, 0, sizeof *y);
    float amax[8], own_step[8], max_step = 0.0f;
    for (int sb = 0; sb < 8; sb++) {
        amax[sb] = 0.0f;
        own_step[sb] = 0.0f;
        for (int i = 32 * sb; i < 32 * sb + 32; i++)
            if (wk->w[i] > 0.0f) amax[sb] = fmaxf(amax[sb], fabsf(wk->x[i]));
    }
    for (int k = 0; k < GROUPS; k++) group_tables(wk, k);
    /* best free step per sub-block: the largest |x| between 8 steps (the
     * smallest grid magnitude) and 70 (well past the largest, 43), 8 steps
     * 36% apart, then four steps around the best */
    for (int sb = 0; sb < 8; sb++) {
        if (!(amax[sb] > 0.0f) || !(amax[sb] < FLT_MAX)) continue;
        const float ratio = 1.3631f; /* (70/8)^(1/7) */
        double best = DBL_MAX, e[4];
        float db[4];
        for (int t = 0; t < 8; t += 4) {
            for (int q = 0; q < 4; q++) db[q] = amax[sb] / 70.0f * powf(ratio, (float)(t + q));
            sub_errors4(wk, sb, db, e);
            for (int q = 0; q < 4; q++) {
                if (e[q] < best) {
                    best = e[q];
                    own_step[sb] = db[q];
                }
            }
        }
        float s0 = own_step[sb], r1 = powf(ratio, 0.25f), r2 = r1 * r1;
        db[0] = s0 / r2, db[1] = s0 / r1, db[2] = s0 * r1, db[3] = s0 * r2;
        sub_errors4(wk, sb, db, e);
        for (int q = 0; q < 4; q++) {
            if (e[q] < best) {
                best = e[q];
                own_step[sb] = db[q];
            }
        }
        max_step = fmaxf(max_step, own_step[sb]);
    }
    if (!(max_step > 0.0f)) return; /* all zero (or nothing weighted): d = 0 */
    for (int sb = 0; sb < 8; sb++)
        if (!(own_step[sb] > 0.0f)) own_step[sb] = max_step;
    /* super-scale candidates: the largest sub-block step near ls = 15 */
    int ls[8], cand_ls[8];
    float d = 0.0f, prev_cand = -1.0f;
    double best = DBL_MAX;
    for (int t = 0; t < 3; t++) {
        float cand = f16_round(8.0f * max_step / 31.0f * powf(1.5f, (float)(t - 1) / 6.0f));
        if (cand == prev_cand || !(cand > 0.0f)) continue;
        prev_cand = cand;
        double e = choose_all_ls(wk, cand, own_step, cand_ls);
        if (e < best) {
            best = e;
            d = cand;
            memcpy(ls, cand_ls, sizeof ls);
        }
    }
    if (!(d > 0.0f)) return;
    for (int iter = 0; iter < 1; iter++) {
        float cand = refit_d(wk, ls, d);
        if (cand == d || !(cand > 0.0f)) break;
        double e = choose_all_ls(wk, cand, own_step, cand_ls);
        if (!(e < best)) break;
        best = e;
        d = cand;
        memcpy(ls, cand_ls, sizeof ls);
    }
    y->d = ds4_f32_to_f16(d);
    for (int sb = 0; sb < 8; sb++) {
        uint32_t A = 0, B = (uint32_t)ls[sb] << 28;
        for (int k = 0; k < 4; k++) {
            int g, s;
            group_codes(wk, 4 * sb + k, step_of(d, ls[sb]), &g, &s);
            A |= (uint32_t)g << (8 * k);
            B |= (uint32_t)(s & 127) << (7 * k);
        }
        y->qs[4 * sb] = (uint16_t)A;
        y->qs[4 * sb + 1] = (uint16_t)(A >> 16);
        y->qs[4 * sb + 2] = (uint16_t)B;
        y->qs[4 * sb + 3] = (uint16_t)(B >> 16);
    }
}

bool ds4_quantize_iq2_xxs(const float *x, ds4_block_iq2_xxs *y, uint64_t n, const float *imatrix) {
    iq2_work *wk = malloc(sizeof *wk);
    if (!wk) return false;
    for (int g = 0; g < 256; g++) {
        for (int j = 0; j < 8; j++) {
            float G = (float)((ds4_iq2xxs_grid[g] >> (8 * j)) & 255);
            wk->grid[g][j] = wk->grid_t[j][g / 4][g % 4] = G;
            wk->grid2_t[j][g / 4][g % 4] = G * G;
        }
    }
    wk->avx2 = ds4_quant_get_isa() >= DS4_ISA_AVX2; /* ds4_quant_set_isa() chooses, for the tests */
    for (uint64_t i = 0; i < n / DS4_QK_K; i++) {
        double sum_w = 0.0;
        for (int e = 0; e < DS4_QK_K; e++) {
            float v = imatrix ? imatrix[i * DS4_QK_K + e] : 1.0f;
            float xv = x[i * DS4_QK_K + e];
            wk->w[e] = v > 0.0f && v < FLT_MAX ? v : 0.0f;
            wk->x[e] = fabsf(xv) < FLT_MAX ? xv : 0.0f; /* inf/NaN cannot be encoded: 0 */
            sum_w += wk->w[e];
        }
        if (!(sum_w > 0.0))
            for (int e = 0; e < DS4_QK_K; e++) wk->w[e] = 1.0f;
        quantize_block(wk, y + i);
    }
    free(wk);
    return true;
}
