/* quant_kquant.c — the Q2_K and Q4_K weight quantisers.
 *
 * Both formats store x = (d*sc_j)*q - (dmin*m_j): per 256-value block two
 * f16 super-scales, per sub-block an integer scale sc_j and min m_j, per
 * value a small code q. The quantiser minimises the weighted squared error
 * sum_i w_i (x_i - dequant_i)^2 (w = imatrix, or all ones).
 *
 * Search, per block:
 *  1. each sub-block gets a continuous fit x ~ a*q - b (b >= 0): 16 trial
 *     steps around (max - min)/qmax, each giving codes by rounding and then
 *     the least-squares (a, b) for those codes (ggml's make_qkx idea, here
 *     scored by the true weighted error);
 *  2. sixteen starting states, super-scales d from 0.78 to 1.08 times
 *     max a / smax and dmin = max b / smax with sc_j, m_j rounded from
 *     a_j, b_j, are evaluated side by side, one state per SIMD lane: (a)
 *     the best code of every value for the state, with the sums that make
 *     the error a quadratic in (d*sc_j, dmin*m_j); (b) for those codes each
 *     sub-block's best (sc, m) in a window, at O(1) per candidate (m is the
 *     rounded optimum for each sc); (c) the least-squares (d, dmin) for all
 *     codes and pairs, rounded to f16. The state with the least error in
 *     (a) is kept, and its (b)-(c) refinement goes on to
 *  3. polishing: every sub-block tries 16 (sc, m) pairs around its own,
 *     each with the best codes for that pair (one SIMD lane per pair), then
 *     (d, dmin) are refitted; twice. The best state seen is written.
 * Why this shape: the error of a code choice is a pass over the values,
 * but for fixed codes it is a quadratic in the scales, so most decisions
 * cost O(1) from the sums of one pass; the true-code passes are kept for
 * the few candidates that matter. Exhaustive (sc, m) windows with true
 * codes lowered the error by another 1-3% at 50x the time.
 * The vectors are GCC vector extensions of 4 floats (SSE2 or NEON); the
 * inner loop has an AVX2 form (used when ds4_quant_get_isa() allows) with
 * the same operations per lane, so the output does not depend on the
 * machine (test_quant_formats checks). Speed: BENCHMARKS.md; error
 * against ggml: tests/test_quant_ggml.c. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "quant_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

static inline v4f vsplat(float v) { return (v4f){v, v, v, v}; }
static inline v4f vselect(v4i mask, v4f a, v4f b) { return (v4f)(((v4i)a & mask) | ((v4i)b & ~mask)); }
/* a > b ? a : b and a < b ? a : b per lane (maxps/minps are exactly that) */
static inline v4f vmax(v4f a, v4f b) {
#if defined(__SSE2__)
    return (v4f)_mm_max_ps((__m128)a, (__m128)b);
#else
    return vselect(a > b, a, b);
#endif
}
static inline v4f vmin(v4f a, v4f b) {
#if defined(__SSE2__)
    return (v4f)_mm_min_ps((__m128)a, (__m128)b);
#else
    return vselect(a < b, a, b);
#endif
}
/* Nearest integer in [0, hi] (ties to even); NaN gives 0. */
static inline v4f vround_clamp(v4f v, v4f hi) {
    v = vmin(vmax(v, vsplat(0.0f)), hi);
    return (v + 12582912.0f) - 12582912.0f;
}
/* 1/v where v > 0, else 0 */
static inline v4f vinv(v4f v) { return vselect(v > 0.0f, 1.0f / vmax(v, vsplat(FLT_MIN)), vsplat(0.0f)); }

typedef struct kq_format {
    int n_sub;    /* sub-blocks per block */
    int sub_len;  /* values per sub-block */
    int qmax;     /* largest code */
    int smax;     /* largest sub-scale and sub-min */
    int radius;   /* sc window half-width in step 2(b) */
    float trial0, trial_step; /* trial steps (max-min)/(qmax + trial0 + t*trial_step) */
} kq_format;

static const kq_format q2_K_format = {16, 16, 3, 15, 1, -0.5f, 0.1f};
static const kq_format q4_K_format = {8, 32, 15, 63, 1, -1.0f, 0.125f};

/* One block's data and per-sub-block sums (weights w, values x). */
typedef struct kq_block {
    float x[DS4_QK_K], w[DS4_QK_K];
    float W[16], X1[16], XX[16]; /* sum w, sum w x, sum w x^2 */
    float a[16], b[16];          /* continuous fit of step 1 */
    bool avx2;                   /* code_sums_avx2 may be used */
} kq_block;

/* The parameters a block is written with. */
typedef struct kq_params {
    float d, dmin;
    int sc[16], m[16];
} kq_params;

static float f16_round(float v) {
    if (!(v > 0.0f)) return 0.0f;
    return ds4_f16_to_f32(ds4_f32_to_f16(fminf(v, 65504.0f)));
}

/* Weighted error of values D*q - M given the code sums Q1 = sum w q,
 * Q2 = sum w q^2, QX = sum w q x and the sub-block's W, X1, XX. */
static inline v4f quad_err(v4f D, v4f M, v4f Q1, v4f Q2, v4f QX, float W, float X1, float XX) {
    return XX - 2.0f * D * QX + 2.0f * M * X1 + D * D * Q2 - 2.0f * D * M * Q1 + M * M * W;
}

/* Code sums of sub-block j for 16 (D, M) pairs in four vectors, codes the
 * nearest level: Q1 = sum w q, Q2 = sum w q^2, QX = sum w q x. The four
 * vectors go through the loop together (independent chains). */
static void code_sums_v4(const kq_format *f, const kq_block *kb, int j, const v4f *M, const v4f *inv, v4f *Q1,
                         v4f *Q2, v4f *QX) {
    const float *x = kb->x + j * f->sub_len, *w = kb->w + j * f->sub_len;
    v4f qmax = vsplat((float)f->qmax), zero = vsplat(0.0f);
    v4f a0 = zero, a1 = zero, a2 = zero, a3 = zero, b0 = zero, b1 = zero, b2 = zero, b3 = zero;
    v4f c0 = zero, c1 = zero, c2 = zero, c3 = zero;
    for (int i = 0; i < f->sub_len; i++) {
        v4f xi = vsplat(x[i]), wi = vsplat(w[i]);
        v4f q0 = vround_clamp((xi + M[0]) * inv[0], qmax), q1 = vround_clamp((xi + M[1]) * inv[1], qmax);
        v4f q2 = vround_clamp((xi + M[2]) * inv[2], qmax), q3 = vround_clamp((xi + M[3]) * inv[3], qmax);
        v4f wq0 = wi * q0, wq1 = wi * q1, wq2 = wi * q2, wq3 = wi * q3;
        a0 += wq0, a1 += wq1, a2 += wq2, a3 += wq3;
        b0 += wq0 * q0, b1 += wq1 * q1, b2 += wq2 * q2, b3 += wq3 * q3;
        c0 += wq0 * xi, c1 += wq1 * xi, c2 += wq2 * xi, c3 += wq3 * xi;
    }
    Q1[0] = a0, Q1[1] = a1, Q1[2] = a2, Q1[3] = a3;
    Q2[0] = b0, Q2[1] = b1, Q2[2] = b2, Q2[3] = b3;
    QX[0] = c0, QX[1] = c1, QX[2] = c2, QX[3] = c3;
}

#if defined(__x86_64__) || defined(__i386__)
/* The same per lane with 8-float vectors: vectors 0-1 and 2-3 paired. */
__attribute__((target("avx2"))) static void code_sums_avx2(const kq_format *f, const kq_block *kb, int j,
                                                           const v4f *M, const v4f *inv, v4f *Q1, v4f *Q2,
                                                           v4f *QX) {
    const float *x = kb->x + j * f->sub_len, *w = kb->w + j * f->sub_len;
    __m256 qmax = _mm256_set1_ps((float)f->qmax), zero = _mm256_setzero_ps(), magic = _mm256_set1_ps(12582912.0f);
    __m256 M0 = _mm256_loadu_ps((const float *)M), M1 = _mm256_loadu_ps((const float *)M + 8);
    __m256 I0 = _mm256_loadu_ps((const float *)inv), I1 = _mm256_loadu_ps((const float *)inv + 8);
    __m256 a0 = zero, a1 = zero, b0 = zero, b1 = zero, c0 = zero, c1 = zero;
    for (int i = 0; i < f->sub_len; i++) {
        __m256 xi = _mm256_set1_ps(x[i]), wi = _mm256_set1_ps(w[i]);
        __m256 q0 = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_add_ps(xi, M0), I0), zero), qmax);
        __m256 q1 = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_add_ps(xi, M1), I1), zero), qmax);
        q0 = _mm256_sub_ps(_mm256_add_ps(q0, magic), magic);
        q1 = _mm256_sub_ps(_mm256_add_ps(q1, magic), magic);
        __m256 wq0 = _mm256_mul_ps(wi, q0), wq1 = _mm256_mul_ps(wi, q1);
        a0 = _mm256_add_ps(a0, wq0), a1 = _mm256_add_ps(a1, wq1);
        b0 = _mm256_add_ps(b0, _mm256_mul_ps(wq0, q0)), b1 = _mm256_add_ps(b1, _mm256_mul_ps(wq1, q1));
        c0 = _mm256_add_ps(c0, _mm256_mul_ps(wq0, xi)), c1 = _mm256_add_ps(c1, _mm256_mul_ps(wq1, xi));
    }
    _mm256_storeu_ps((float *)Q1, a0), _mm256_storeu_ps((float *)Q1 + 8, a1);
    _mm256_storeu_ps((float *)Q2, b0), _mm256_storeu_ps((float *)Q2 + 8, b1);
    _mm256_storeu_ps((float *)QX, c0), _mm256_storeu_ps((float *)QX + 8, c1);
}
#endif

static void code_sums(const kq_format *f, const kq_block *kb, int j, const v4f *D, const v4f *M, v4f *Q1, v4f *Q2,
                      v4f *QX) {
    v4f inv[4] = {vinv(D[0]), vinv(D[1]), vinv(D[2]), vinv(D[3])};
#if defined(__x86_64__) || defined(__i386__)
    if (kb->avx2) {
        code_sums_avx2(f, kb, j, M, inv, Q1, Q2, QX);
        return;
    }
#endif
    code_sums_v4(f, kb, j, M, inv, Q1, Q2, QX);
}

/* Step 1 for sub-block j: 16 trial steps, four per vector. */
static void sub_fit(const kq_format *f, kq_block *kb, int j) {
    const float *x = kb->x + j * f->sub_len;
    float mn = x[0], mx = x[0];
    for (int i = 1; i < f->sub_len; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    if (mn > 0.0f) mn = 0.0f;
    kb->a[j] = 0.0f;
    kb->b[j] = -mn;
    if (!(mx > mn)) return;
    float W = kb->W[j], X1 = kb->X1[j], XX = kb->XX[j], best = FLT_MAX;
    v4f step[4], off[4], Q1s[4], Q2s[4], QXs[4];
    for (int t = 0; t < 16; t++) step[t / 4][t % 4] = (mx - mn) / ((float)f->qmax + f->trial0 + f->trial_step * (float)t);
    for (int v = 0; v < 4; v++) off[v] = vsplat(-mn);
    code_sums(f, kb, j, step, off, Q1s, Q2s, QXs);
    for (int v = 0; v < 4; v++) {
        v4f Q1 = Q1s[v], Q2 = Q2s[v], QX = QXs[v];
        /* least squares x ~ a*q + c; c > 0 (a positive min) is not storable,
         * and when all codes are equal (det ~ 0) only a is fitted */
        v4f det = W * Q2 - Q1 * Q1;
        v4i single = det <= 1e-5f * W * Q2;
        det = vselect(single, vsplat(1.0f), det);
        v4f a = (W * QX - Q1 * X1) / det, c = (Q2 * X1 - Q1 * QX) / det;
        v4i pos = (c > 0.0f) | single;
        a = vselect(pos, QX / vmax(Q2, vsplat(FLT_MIN)), a);
        c = vselect(pos, vsplat(0.0f), c);
        v4f err = quad_err(a, -c, Q1, Q2, QX, W, X1, XX);
        v4i ok = (Q2 > 0.0f) & (a >= 0.0f);
        for (int l = 0; l < 4; l++) {
            if (ok[l] && err[l] < best) {
                best = err[l];
                kb->a[j] = a[l];
                kb->b[j] = -c[l];
            }
        }
    }
}

/* Least-squares (d, dmin) for x ~ d*u - dmin*v, u = sc*q, v = m, from the
 * sums; false if there is no usable solution. */
static bool refit_super(double suu, double suv, double svv, double sux, double svx, float *d, float *dmin) {
    double det = suv * suv - suu * svv, nd, nm;
    if (det < -1e-9 * suu * svv) {
        nd = (suv * svx - sux * svv) / det;
        nm = (suu * svx - suv * sux) / det;
    } else if (suu > 0.0 && !(svv > 0.0)) { /* no mins in use */
        nd = sux / suu;
        nm = *dmin;
    } else {
        return false;
    }
    if (!(nd >= 0.0 && nm >= 0.0)) return false;
    *d = f16_round((float)nd);
    *dmin = f16_round((float)nm);
    return true;
}

/* Lane state of step 2: 16 parameter sets refined side by side. */
typedef struct kq_lanes {
    v4f d[4], dmin[4];
    v4f sc[16][4], m[16][4];
} kq_lanes;

/* Step 2 (a)-(c) on all lanes: codes for the current parameters (their
 * error is returned), then better (sc, m) for those codes and refitted
 * super-scales. */
static void lanes_round(const kq_format *f, const kq_block *kb, kq_lanes *st, v4f *err) {
    v4f zero = vsplat(0.0f), smax = vsplat((float)f->smax), Suu[4], Suv[4], Svv[4], Sux[4], Svx[4], inv_dmin[4];
    for (int v = 0; v < 4; v++) {
        err[v] = Suu[v] = Suv[v] = Svv[v] = Sux[v] = Svx[v] = zero;
        inv_dmin[v] = vinv(st->dmin[v]);
    }
    for (int j = 0; j < f->n_sub; j++) {
        v4f D[4], M[4], Q1[4], Q2[4], QX[4];
        float W = kb->W[j], X1 = kb->X1[j], XX = kb->XX[j], inv_W = W > 0.0f ? 1.0f / W : 0.0f;
        for (int v = 0; v < 4; v++) {
            D[v] = st->d[v] * st->sc[j][v];
            M[v] = st->dmin[v] * st->m[j][v];
        }
        code_sums(f, kb, j, D, M, Q1, Q2, QX);
        for (int v = 0; v < 4; v++) {
            v4f best = quad_err(D[v], M[v], Q1[v], Q2[v], QX[v], W, X1, XX);
            v4f sc0 = st->sc[j][v], best_sc = sc0, best_m = st->m[j][v];
            err[v] += best;
            for (int r = -f->radius; r <= f->radius; r++) {
                v4f sc = vmin(vmax(sc0 + (float)r, zero), smax), Dc = st->d[v] * sc;
                /* the optimal M for this D is (D*Q1 - X1)/W: round it to a multiple of dmin */
                v4f m = vround_clamp((Dc * Q1[v] - X1) * inv_W * inv_dmin[v], smax);
                v4f e = quad_err(Dc, st->dmin[v] * m, Q1[v], Q2[v], QX[v], W, X1, XX);
                v4i better = e < best;
                best = vselect(better, e, best);
                best_sc = vselect(better, sc, best_sc);
                best_m = vselect(better, m, best_m);
            }
            st->sc[j][v] = best_sc;
            st->m[j][v] = best_m;
            Suu[v] += best_sc * best_sc * Q2[v];
            Suv[v] += best_sc * best_m * Q1[v];
            Svv[v] += best_m * best_m * W;
            Sux[v] += best_sc * QX[v];
            Svx[v] += best_m * X1;
        }
    }
    for (int v = 0; v < 4; v++) {
        for (int l = 0; l < 4; l++) {
            float nd = st->d[v][l], nm = st->dmin[v][l];
            if (refit_super(Suu[v][l], Suv[v][l], Svv[v][l], Sux[v][l], Svx[v][l], &nd, &nm)) {
                st->d[v][l] = nd;
                st->dmin[v][l] = nm;
            }
        }
    }
}

static void lane_params(const kq_lanes *st, int n_sub, int v, int l, kq_params *p) {
    p->d = st->d[v][l];
    p->dmin = st->dmin[v][l];
    for (int j = 0; j < n_sub; j++) {
        p->sc[j] = (int)st->sc[j][v][l];
        p->m[j] = (int)st->m[j][v][l];
    }
}

/* Step 2: returns the best state's error; *out gets the state and *next
 * what the round made of it (where step 3 starts). */
static float lanes_search(const kq_format *f, const kq_block *kb, kq_params *out, kq_params *next) {
    float max_a = 0.0f, max_b = 0.0f, best = FLT_MAX;
    for (int j = 0; j < f->n_sub; j++) {
        max_a = kb->a[j] > max_a ? kb->a[j] : max_a;
        max_b = kb->b[j] > max_b ? kb->b[j] : max_b;
    }
    kq_lanes st;
    v4f smax = vsplat((float)f->smax);
    for (int v = 0; v < 4; v++) {
        for (int l = 0; l < 4; l++) { /* d from 0.78 to 1.08 times max a / smax */
            st.d[v][l] = f16_round(max_a * (0.78f + 0.02f * (float)(4 * v + l)) / (float)f->smax);
            st.dmin[v][l] = f16_round(max_b / (float)f->smax);
        }
        v4f inv_d = vinv(st.d[v]), inv_dmin = vinv(st.dmin[v]);
        for (int j = 0; j < f->n_sub; j++) {
            st.sc[j][v] = vround_clamp(kb->a[j] * inv_d, smax);
            st.m[j][v] = vround_clamp(kb->b[j] * inv_dmin, smax);
        }
    }
    kq_lanes start = st;
    v4f err[4];
    lanes_round(f, kb, &st, err);
    lane_params(&start, f->n_sub, 0, 0, out); /* should every error be inf */
    lane_params(&st, f->n_sub, 0, 0, next);
    for (int v = 0; v < 4; v++) {
        for (int l = 0; l < 4; l++) {
            if (err[v][l] < best) {
                best = err[v][l];
                lane_params(&start, f->n_sub, v, l, out);
                lane_params(&st, f->n_sub, v, l, next);
            }
        }
    }
    return best;
}

/* Step 3: each sub-block's best of 16 (sc, m) pairs around its own, with
 * true codes, then (d, dmin) refitted. Returns the error of the pairs
 * chosen (before the refit). */
static float polish(const kq_format *f, const kq_block *kb, kq_params *p) {
    static const int dsc[16] = {0, -1, 1, 0, 0, -1, -1, 1, 1, -2, 2, 0, 0, -2, 2, 0};
    static const int dm[16] = {0, 0, 0, -1, 1, -1, 1, -1, 1, 0, 0, -2, 2, -1, 1, 0};
    double suu = 0, suv = 0, svv = 0, sux = 0, svx = 0;
    float total = 0.0f;
    for (int j = 0; j < f->n_sub; j++) {
        float W = kb->W[j], X1 = kb->X1[j], XX = kb->XX[j], best = FLT_MAX, q1 = 0, q2 = 0, qx = 0;
        int bsc = p->sc[j], bm = p->m[j];
        v4f sc[4], m[4], D[4], M[4], Q1[4], Q2[4], QX[4];
        for (int c = 0; c < 16; c++) {
            int s = p->sc[j] + dsc[c], mm = p->m[j] + dm[c];
            sc[c / 4][c % 4] = (float)(s < 0 ? 0 : s > f->smax ? f->smax : s);
            m[c / 4][c % 4] = (float)(mm < 0 ? 0 : mm > f->smax ? f->smax : mm);
        }
        for (int v = 0; v < 4; v++) {
            D[v] = p->d * sc[v];
            M[v] = p->dmin * m[v];
        }
        code_sums(f, kb, j, D, M, Q1, Q2, QX);
        v4f e[4];
        for (int v = 0; v < 4; v++) e[v] = quad_err(D[v], M[v], Q1[v], Q2[v], QX[v], W, X1, XX);
        for (int c = 0; c < 16; c++) {
            int v = c / 4, l = c % 4;
            if (e[v][l] < best) {
                best = e[v][l];
                bsc = (int)sc[v][l];
                bm = (int)m[v][l];
                q1 = Q1[v][l], q2 = Q2[v][l], qx = QX[v][l];
            }
        }
        p->sc[j] = bsc;
        p->m[j] = bm;
        total += best;
        suu += (double)bsc * bsc * q2;
        suv += (double)bsc * bm * q1;
        svv += (double)bm * bm * W;
        sux += (double)bsc * qx;
        svx += (double)bm * X1;
    }
    refit_super(suu, suv, svv, sux, svx, &p->d, &p->dmin);
    return total;
}

static void kq_search(const kq_format *f, kq_block *kb, kq_params *out) {
    for (int j = 0; j < f->n_sub; j++) sub_fit(f, kb, j);
    kq_params p;
    float best = lanes_search(f, kb, out, &p);
    for (int round = 0; round < 2; round++) {
        kq_params before = p;
        float e = polish(f, kb, &p);
        if (e < best) {
            best = e;
            *out = before; /* the pairs chosen, with the super-scales they were chosen for */
            memcpy(out->sc, p.sc, sizeof p.sc);
            memcpy(out->m, p.m, sizeof p.m);
        }
    }
}

/* Loads one block: weights are the imatrix or ones (non-finite or negative
 * entries count as zero, so a bad imatrix cannot derail the search), values
 * that are not finite become 0; then the per-sub-block sums. */
static void kq_load(const kq_format *f, kq_block *kb, const float *x, const float *imatrix) {
    for (int i = 0; i < DS4_QK_K; i++) {
        float v = imatrix ? imatrix[i] : 1.0f;
        kb->w[i] = v > 0.0f && v < FLT_MAX ? v : 0.0f;
        kb->x[i] = fabsf(x[i]) <= FLT_MAX ? x[i] : 0.0f;
    }
    for (int j = 0; j < f->n_sub; j++) {
        float W = 0.0f, X1 = 0.0f, XX = 0.0f;
        for (int i = j * f->sub_len; i < (j + 1) * f->sub_len; i++) {
            W += kb->w[i];
            X1 += kb->w[i] * kb->x[i];
            XX += kb->w[i] * kb->x[i] * kb->x[i];
        }
        kb->W[j] = W;
        kb->X1[j] = X1;
        kb->XX[j] = XX;
    }
}

/* The code of every value for the chosen parameters (the rounding of
 * code_sums). */
static void kq_codes(const kq_format *f, const kq_block *kb, const kq_params *p, uint8_t *L) {
    v4f qmax = vsplat((float)f->qmax);
    for (int j = 0; j < f->n_sub; j++) {
        v4f M = vsplat(p->dmin * (float)p->m[j]), inv = vinv(vsplat(p->d * (float)p->sc[j]));
        for (int i = j * f->sub_len; i < (j + 1) * f->sub_len; i += 4) {
            v4f xv;
            memcpy(&xv, kb->x + i, sizeof xv);
            v4f q = vround_clamp((xv + M) * inv, qmax);
            for (int l = 0; l < 4; l++) L[i + l] = (uint8_t)q[l];
        }
    }
}

void ds4_quantize_q2_K(const float *x, ds4_block_q2_K *y, uint64_t n, const float *imatrix) {
    kq_block kb;
    kb.avx2 = ds4_quant_get_isa() >= DS4_ISA_AVX2;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, y++) {
        kq_params p;
        uint8_t L[DS4_QK_K];
        kq_load(&q2_K_format, &kb, x + i * DS4_QK_K, imatrix ? imatrix + i * DS4_QK_K : NULL);
        kq_search(&q2_K_format, &kb, &p);
        kq_codes(&q2_K_format, &kb, &p, L);
        memset(y, 0, sizeof *y);
        y->d = ds4_f32_to_f16(p.d);
        y->dmin = ds4_f32_to_f16(p.dmin);
        for (int j = 0; j < 16; j++) y->scales[j] = (uint8_t)(p.sc[j] | p.m[j] << 4);
        for (int e = 0; e < DS4_QK_K; e++) /* e = 128h + 32s + l -> qs[32h + l], bits 2s */
            y->qs[32 * (e / 128) + e % 32] |= (uint8_t)(L[e] << (2 * ((e % 128) / 32)));
    }
}

void ds4_quantize_q4_K(const float *x, ds4_block_q4_K *y, uint64_t n, const float *imatrix) {
    kq_block kb;
    kb.avx2 = ds4_quant_get_isa() >= DS4_ISA_AVX2;
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, y++) {
        kq_params p;
        uint8_t L[DS4_QK_K];
        kq_load(&q4_K_format, &kb, x + i * DS4_QK_K, imatrix ? imatrix + i * DS4_QK_K : NULL);
        kq_search(&q4_K_format, &kb, &p);
        kq_codes(&q4_K_format, &kb, &p, L);
        memset(y, 0, sizeof *y);
        y->d = ds4_f32_to_f16(p.d);
        y->dmin = ds4_f32_to_f16(p.dmin);
        for (int j = 0; j < 4; j++) {
            y->scales[j] = (uint8_t)(p.sc[j] | (p.sc[j + 4] >> 4) << 6);
            y->scales[j + 4] = (uint8_t)(p.m[j] | (p.m[j + 4] >> 4) << 6);
            y->scales[j + 8] = (uint8_t)((p.sc[j + 4] & 15) | (p.m[j + 4] & 15) << 4);
        }
        for (int e = 0; e < DS4_QK_K; e++) { /* sub-block j = e/32 -> qs[32(j/2) + l], nibble j&1 */
            int j = e / 32;
            y->qs[32 * (j / 2) + e % 32] |= (uint8_t)(L[e] << (4 * (j & 1)));
        }
    }
}
