/* quant_kquant.c — the Q2_K and Q4_K weight quantisers.
 *
 * Both formats store x = (d*sc_j)*q - (dmin*m_j): per 256-value block two
 * f16 super-scales, per sub-block an integer scale sc_j and min m_j, per
 * value a small code q. The quantiser minimises the weighted squared error
 * sum_i w_i (x_i - dequant_i)^2 (w = imatrix, or all ones), evaluated with
 * the dequantiser's own float formula and the f16-rounded super-scales, so
 * the error it optimises is the error the file will have.
 *
 * Search, per block:
 *  1. each sub-block gets a continuous least-squares fit a*q - b (b >= 0)
 *     over a sweep of candidate steps;
 *  2. for a few candidate super-scales d (around max a / smax) and
 *     dmin = max b / smax, alternate (a) choosing every sub-block's (sc, m)
 *     by trying a window of integers around the current value (wide on the
 *     first pass: all 16x16 pairs for Q2_K, +-6 for Q4_K; +-3/+-2 after),
 *     with the best code for each value, and (b) refitting d and dmin by
 *     weighted least squares given all codes, rounded to f16 — until the
 *     error stops falling. The best state seen is kept.
 * About 1.2 ms (Q2_K) and 0.5 ms (Q4_K) per block on one core; the error
 * is 2-20% below ggml's on the test data (test_quant_ggml). */
#include <float.h>
#include <math.h>
#include <string.h>

#include "quant_internal.h"

typedef struct kq_format {
    int n_sub;   /* sub-blocks per block */
    int sub_len; /* values per sub-block */
    int qmax;    /* largest code */
    int smax;    /* largest sub-scale and sub-min */
    int first_radius, radius; /* (sc, m) window half-width around the current
                               * pair: on the first pass, then while refining */
} kq_format;

static const kq_format q2_K_format = {16, 16, 3, 15, 15, 3}; /* first pass exhaustive */
static const kq_format q4_K_format = {8, 32, 15, 63, 6, 2};

typedef struct kq_state {
    float d, dmin; /* f16-representable, >= 0 */
    uint8_t sc[16], m[16];
    uint8_t L[DS4_QK_K];
    double err;
} kq_state;

static float f16_round(float v) {
    if (!(v > 0.0f)) return 0.0f;
    return ds4_f16_to_f32(ds4_f32_to_f16(fminf(v, 65504.0f)));
}

/* The code of value x for a step with inverse inv and offset off: the
 * nearest level, clamped (NaN gives 0). Written branch-free so the error
 * loop below vectorises; 1.5*2^23 rounds to an integer, to even. */
static inline float code_of(float x, float off, float inv, float qmax) {
    float v = (x + off) * inv;
    v = v > 0.0f ? v : 0.0f;
    v = v < qmax ? v : qmax;
    return (v + 12582912.0f) - 12582912.0f;
}

/* Weighted squared error of one sub-block coded with (sc, m). */
static float sub_error(const float *x, const float *w, int len, int qmax, float d, float dmin, int sc, int m) {
    float step = d * (float)sc, off = dmin * (float)m;
    float inv = step > 0.0f ? 1.0f / step : 0.0f, err = 0.0f;
    for (int i = 0; i < len; i++) {
        float e = x[i] - (step * code_of(x[i], off, inv, (float)qmax) - off);
        err += w[i] * e * e;
    }
    return err;
}

static void sub_codes(const float *x, int len, int qmax, float d, float dmin, int sc, int m, uint8_t *L) {
    float step = d * (float)sc, off = dmin * (float)m;
    float inv = step > 0.0f ? 1.0f / step : 0.0f;
    for (int i = 0; i < len; i++) L[i] = (uint8_t)code_of(x[i], off, inv, (float)qmax);
}

/* Continuous fit x ~ a*q - b with a, b >= 0 and q in 0..qmax. */
static void sub_fit(const float *x, const float *w, int len, int qmax, float *a_out, float *b_out) {
    float mn = x[0], mx = x[0];
    for (int i = 1; i < len; i++) {
        mn = fminf(mn, x[i]);
        mx = fmaxf(mx, x[i]);
    }
    if (mn > 0.0f) mn = 0.0f;
    *a_out = 0.0f;
    *b_out = -mn;
    if (!(mx > mn)) return;
    double best = DBL_MAX;
    for (int t = 0; t <= 20; t++) {
        float step = (mx - mn) / ((float)qmax + 0.1f * (float)(t - 6));
        double sw = 0, sq = 0, sqq = 0, sx = 0, sqx = 0;
        uint8_t q[32];
        for (int i = 0; i < len; i++) {
            q[i] = (uint8_t)ds4_round_clamp((x[i] - mn) / step, 0, qmax);
            sw += w[i];
            sq += (double)w[i] * q[i];
            sqq += (double)w[i] * q[i] * q[i];
            sx += (double)w[i] * x[i];
            sqx += (double)w[i] * q[i] * x[i];
        }
        double det = sw * sqq - sq * sq, a, c;
        if (det > 0.0) {
            a = (sw * sqx - sq * sx) / det;
            c = (sqq * sx - sq * sqx) / det;
        } else { /* one code for all: no offset to fit */
            if (!(sqq > 0.0)) continue;
            a = sqx / sqq;
            c = 0.0;
        }
        if (c > 0.0) {
            c = 0.0;
            a = sqx / sqq;
        }
        if (a < 0.0) continue;
        double err = 0.0;
        for (int i = 0; i < len; i++) {
            double e = x[i] - (a * q[i] + c);
            err += w[i] * e * e;
        }
        if (err < best) {
            best = err;
            *a_out = (float)a;
            *b_out = (float)-c;
        }
    }
}

/* Chooses every sub-block's (sc, m) in a window of the given radius around
 * (sc0, m0). */
static void choose_scales(const kq_format *f, const float *x, const float *w, const int *sc0, const int *m0,
                          int radius, kq_state *st) {
    st->err = 0.0;
    for (int j = 0; j < f->n_sub; j++) {
        const float *xj = x + j * f->sub_len, *wj = w + j * f->sub_len;
        int sc_lo = st->d > 0.0f ? sc0[j] - radius : 0, sc_hi = st->d > 0.0f ? sc0[j] + radius : 0;
        int m_lo = st->dmin > 0.0f ? m0[j] - radius : 0, m_hi = st->dmin > 0.0f ? m0[j] + radius : 0;
        if (sc_lo < 0) sc_lo = 0;
        if (m_lo < 0) m_lo = 0;
        if (sc_hi > f->smax) sc_hi = f->smax;
        if (m_hi > f->smax) m_hi = f->smax;
        float best = FLT_MAX;
        st->sc[j] = (uint8_t)sc_lo;
        st->m[j] = (uint8_t)m_lo;
        for (int sc = sc_lo; sc <= sc_hi; sc++) {
            for (int m = m_lo; m <= m_hi; m++) {
                float e = sub_error(xj, wj, f->sub_len, f->qmax, st->d, st->dmin, sc, m);
                if (e < best) {
                    best = e;
                    st->sc[j] = (uint8_t)sc;
                    st->m[j] = (uint8_t)m;
                }
            }
        }
        sub_codes(xj, f->sub_len, f->qmax, st->d, st->dmin, st->sc[j], st->m[j], st->L + j * f->sub_len);
        st->err += best;
    }
}

/* Weighted least squares for (d, dmin) with all codes and (sc, m) fixed:
 * minimise sum w (x - d*u + dmin*v)^2 with u = sc*q, v = m. */
static void refit_super(const kq_format *f, const float *x, const float *w, kq_state *st) {
    double suu = 0, suv = 0, svv = 0, sux = 0, svx = 0;
    for (int i = 0; i < f->n_sub * f->sub_len; i++) {
        int j = i / f->sub_len;
        double u = (double)st->sc[j] * st->L[i], v = st->m[j];
        suu += w[i] * u * u;
        suv += w[i] * u * v;
        svv += w[i] * v * v;
        sux += w[i] * u * x[i];
        svx += w[i] * v * x[i];
    }
    double det = suv * suv - suu * svv;
    double d = st->d, dmin = st->dmin;
    if (fabs(det) > 1e-12 * suu * svv && det != 0.0) {
        d = (suv * svx - sux * svv) / det;
        dmin = (suu * svx - suv * sux) / det;
    } else if (suu > 0.0) {
        d = (sux + dmin * suv) / suu;
    }
    if (d >= 0.0 && dmin >= 0.0) {
        st->d = f16_round((float)d);
        st->dmin = f16_round((float)dmin);
    }
}

static void kq_block(const kq_format *f, const float *x, const float *w, kq_state *best) {
    float a[16], b[16], max_a = 0.0f, max_b = 0.0f;
    for (int j = 0; j < f->n_sub; j++) {
        sub_fit(x + j * f->sub_len, w + j * f->sub_len, f->sub_len, f->qmax, &a[j], &b[j]);
        max_a = fmaxf(max_a, a[j]);
        max_b = fmaxf(max_b, b[j]);
    }
    static const float factors[] = {1.0f, 0.95f, 0.9f, 0.85f, 1.05f};
    best->err = DBL_MAX;
    for (size_t t = 0; t < sizeof factors / sizeof factors[0]; t++) {
        kq_state st;
        int sc0[16], m0[16];
        st.d = f16_round(max_a * factors[t] / (float)f->smax);
        st.dmin = f16_round(max_b / (float)f->smax);
        for (int j = 0; j < f->n_sub; j++) {
            sc0[j] = st.d > 0.0f ? ds4_round_clamp(a[j] / st.d, 0, f->smax) : 0;
            m0[j] = st.dmin > 0.0f ? ds4_round_clamp(b[j] / st.dmin, 0, f->smax) : 0;
        }
        double prev = DBL_MAX;
        for (int iter = 0; iter < 8; iter++) {
            choose_scales(f, x, w, sc0, m0, iter == 0 ? f->first_radius : f->radius, &st);
            if (st.err < best->err) *best = st;
            if (!(st.err < prev * (1.0 - 1e-6))) break;
            prev = st.err;
            float old_d = st.d, old_dmin = st.dmin;
            refit_super(f, x, w, &st);
            for (int j = 0; j < f->n_sub; j++) {
                sc0[j] = st.d > 0.0f ? ds4_round_clamp(old_d * st.sc[j] / st.d, 0, f->smax) : 0;
                m0[j] = st.dmin > 0.0f ? ds4_round_clamp(old_dmin * st.m[j] / st.dmin, 0, f->smax) : 0;
            }
        }
    }
}

/* Weights of one block: the imatrix, or ones. Non-finite or negative
 * entries count as zero so a bad imatrix cannot derail the search. */
static void block_weights(const float *imatrix, uint64_t offset, float *w) {
    for (int i = 0; i < DS4_QK_K; i++) {
        float v = imatrix ? imatrix[offset + i] : 1.0f;
        w[i] = v > 0.0f && v < FLT_MAX ? v : 0.0f;
    }
}

void ds4_quantize_q2_K(const float *x, ds4_block_q2_K *y, uint64_t n, const float *imatrix) {
    float w[DS4_QK_K];
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, y++) {
        kq_state st;
        block_weights(imatrix, i * DS4_QK_K, w);
        kq_block(&q2_K_format, x + i * DS4_QK_K, w, &st);
        memset(y, 0, sizeof *y);
        y->d = ds4_f32_to_f16(st.d);
        y->dmin = ds4_f32_to_f16(st.dmin);
        for (int j = 0; j < 16; j++) y->scales[j] = (uint8_t)(st.sc[j] | st.m[j] << 4);
        for (int e = 0; e < DS4_QK_K; e++) /* e = 128h + 32s + l -> qs[32h + l], bits 2s */
            y->qs[32 * (e / 128) + e % 32] |= (uint8_t)(st.L[e] << (2 * ((e % 128) / 32)));
    }
}

void ds4_quantize_q4_K(const float *x, ds4_block_q4_K *y, uint64_t n, const float *imatrix) {
    float w[DS4_QK_K];
    for (uint64_t i = 0; i < n / DS4_QK_K; i++, y++) {
        kq_state st;
        block_weights(imatrix, i * DS4_QK_K, w);
        kq_block(&q4_K_format, x + i * DS4_QK_K, w, &st);
        memset(y, 0, sizeof *y);
        y->d = ds4_f32_to_f16(st.d);
        y->dmin = ds4_f32_to_f16(st.dmin);
        for (int j = 0; j < 4; j++) {
            y->scales[j] = (uint8_t)(st.sc[j] | (st.sc[j + 4] >> 4) << 6);
            y->scales[j + 4] = (uint8_t)(st.m[j] | (st.m[j + 4] >> 4) << 6);
            y->scales[j + 8] = (uint8_t)((st.sc[j + 4] & 15) | (st.m[j + 4] & 15) << 4);
        }
        for (int e = 0; e < DS4_QK_K; e++) { /* sub-block j = e/32 -> qs[32(j/2) + l], nibble j&1 */
            int j = e / 32;
            y->qs[32 * (j / 2) + e % 32] |= (uint8_t)(st.L[e] << (4 * (j & 1)));
        }
    }
}
