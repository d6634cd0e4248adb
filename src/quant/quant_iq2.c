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
 *  - Each sub-block's error as a function of its step is then cheap to
 *    evaluate. A sweep gives each sub-block's best free step; candidate d
 *    values around 8*max_step/31 are tried (rounded to f16, as stored), with
 *    every sub-block taking its best ls of all 16; the best d is then
 *    refined by least squares with the chosen codes fixed. All errors use
 *    the stored d, so what is minimised is the error of the written block.
 * ggml's quantiser, by contrast, rounds to the levels {1,3,5} and projects
 * onto the grid through neighbour lists; searching the true grid values is
 * why this one is more accurate. The min over the 256 lines db*B + H is the
 * inner loop; it has an AVX2 form that rounds identically, so the output
 * does not depend on the CPU. About 0.25 ms per block on one core. */
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

typedef struct iq2_work {
    float grid[256][8];           /* grid magnitudes as floats */
    float grid_t[8][256];         /* the same, element-major */
    bool avx2;                    /* line_min_avx2 may be used */
    float c[GROUPS];              /* sum w x^2 per group */
    float B[GROUPS][256];         /* sum w G^2 */
    float H[GROUPS][256];         /* F - 2A: linear coefficient of the cost */
    float x[DS4_QK_K], w[DS4_QK_K];
} iq2_work;

static float f16_round(float v) {
    if (!(v > 0.0f)) return 0.0f;
    return ds4_f16_to_f32(ds4_f32_to_f16(fminf(v, 65504.0f)));
}

static void group_tables(iq2_work *wk, int k) {
    const float *x = wk->x + 8 * k, *w = wk->w + 8 * k;
    float c = 0.0f, a[256], b[256], flip[256];
    int negs = 0;
    for (int g = 0; g < 256; g++) a[g] = b[g] = 0.0f, flip[g] = FLT_MAX;
    for (int j = 0; j < 8; j++) {
        float wa = w[j] * fabsf(x[j]);
        const float *G = wk->grid_t[j];
        negs += x[j] < 0.0f;
        c += w[j] * x[j] * x[j];
        for (int g = 0; g < 256; g++) {
            float t = wa * G[g];
            a[g] += t;
            b[g] += w[j] * G[g] * G[g];
            flip[g] = t < flip[g] ? t : flip[g];
        }
    }
    wk->c[k] = c;
    for (int g = 0; g < 256; g++) {
        wk->B[k][g] = b[g];
        wk->H[k][g] = ((negs & 1) ? 4.0f * flip[g] : 0.0f) - 2.0f * a[g];
    }
}

#if HAVE_X86
/* min over g of db*B[g] + H[g]. The AVX2 version does the same roundings
 * (no FMA) and min is exact, so both give the same float. */
__attribute__((target("avx2"))) static float line_min_avx2(const float *B, const float *H, float db) {
    __m256 m = _mm256_set1_ps(FLT_MAX), t = _mm256_set1_ps(db);
    for (int g = 0; g < 256; g += 8)
        m = _mm256_min_ps(m, _mm256_add_ps(_mm256_mul_ps(t, _mm256_loadu_ps(B + g)), _mm256_loadu_ps(H + g)));
    __m128 h = _mm_min_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_min_ps(h, _mm_movehl_ps(h, h));
    h = _mm_min_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}
#endif

/* Error of group k at step db with its best grid point (returned in *g). */
static float group_error(const iq2_work *wk, int k, float db, int *g_out) {
    const float *B = wk->B[k], *H = wk->H[k];
#if HAVE_X86
    if (!g_out && wk->avx2) return wk->c[k] + db * line_min_avx2(B, H, db);
#endif
    float best = FLT_MAX;
    int bg = 0;
    for (int g = 0; g < 256; g++) {
        float v = db * B[g] + H[g];
        if (v < best) {
            best = v;
            bg = g;
        }
    }
    if (g_out) *g_out = bg;
    return wk->c[k] + db * best;
}

static double sub_error(const iq2_work *wk, int sb, float db) {
    double e = 0.0;
    for (int k = 4 * sb; k < 4 * sb + 4; k++) e += group_error(wk, k, db, NULL);
    return e;
}

static float step_of(float d, int ls) {
    return d * (0.5f + (float)ls) * 0.25f; /* as the dequantiser computes it */
}

/* Best ls of every sub-block for super-scale d; returns the block error. */
static double choose_ls(const iq2_work *wk, float d, int *ls) {
    double total = 0.0;
    for (int sb = 0; sb < 8; sb++) {
        double best = DBL_MAX;
        for (int l = 0; l < 16; l++) {
            double e = sub_error(wk, sb, step_of(d, l));
            if (e < best) {
                best = e;
                ls[sb] = l;
            }
        }
        total += best;
    }
    return total;
}

/* Codes of group k at step db: grid index and the 8 sign bits. */
static void group_codes(const iq2_work *wk, int k, float db, int *g, int *signs) {
    const float *x = wk->x + 8 * k, *w = wk->w + 8 * k;
    group_error(wk, k, db, g);
    int s = 0, negs = 0, imin = 0;
    float flip = FLT_MAX;
    for (int j = 0; j < 8; j++) {
        if (x[j] < 0.0f) {
            s |= 1 << j;
            negs++;
        }
        float t = w[j] * fabsf(x[j]) * wk->grid[*g][j];
        if (t < flip) {
            flip = t;
            imin = j;
        }
    }
    if (negs & 1) s ^= 1 << imin;
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
    float amax[8], max_step = 0.0f;
    for (int sb = 0; sb < 8; sb++) {
        amax[sb] = 0.0f;
        for (int i = 32 * sb; i < 32 * sb + 32; i++)
            if (wk->w[i] > 0.0f) amax[sb] = fmaxf(amax[sb], fabsf(wk->x[i]));
    }
    for (int k = 0; k < GROUPS; k++) group_tables(wk, k);
    /* best free step per sub-block: the largest |x| between 8 steps (the
     * smallest grid magnitude) and 70 (well past the largest, 43) */
    for (int sb = 0; sb < 8; sb++) {
        if (!(amax[sb] > 0.0f) || !(amax[sb] < FLT_MAX)) continue;
        double best = DBL_MAX;
        float best_step = 0.0f;
        for (int t = 0; t < 48; t++) {
            float db = amax[sb] / 70.0f * powf(70.0f / 8.0f, (float)t / 47.0f);
            double e = sub_error(wk, sb, db);
            if (e < best) {
                best = e;
                best_step = db;
            }
        }
        max_step = fmaxf(max_step, best_step);
    }
    if (!(max_step > 0.0f)) return; /* all zero (or nothing weighted): d = 0 */
    int ls[8], cand_ls[8];
    float d = 0.0f, prev_cand = -1.0f;
    double best = DBL_MAX;
    for (int t = 0; t < 17; t++) {
        float cand = f16_round(8.0f * max_step / 31.0f * powf(1.5f, (float)(t - 8) / 16.0f));
        if (cand == prev_cand || !(cand > 0.0f)) continue;
        prev_cand = cand;
        double e = choose_ls(wk, cand, cand_ls);
        if (e < best) {
            best = e;
            d = cand;
            memcpy(ls, cand_ls, sizeof ls);
        }
    }
    if (!(d > 0.0f)) return;
    for (int iter = 0; iter < 3; iter++) {
        float cand = refit_d(wk, ls, d);
        if (cand == d || !(cand > 0.0f)) break;
        double e = choose_ls(wk, cand, cand_ls);
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
    for (int g = 0; g < 256; g++)
        for (int j = 0; j < 8; j++) wk->grid[g][j] = wk->grid_t[j][g] = (float)((ds4_iq2xxs_grid[g] >> (8 * j)) & 255);
#if HAVE_X86
    __builtin_cpu_init();
    wk->avx2 = __builtin_cpu_supports("avx2");
#else
    wk->avx2 = false;
#endif
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
