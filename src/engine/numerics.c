/* numerics.c — scalar building blocks of the forward pass (see numerics.h).
 *
 * Float operation order follows the CPU reference described in model-spec
 * §4–§5 so that the official-numerics mode reproduces its bits where the spec
 * pins them down (RoPE angles, FP8/FP4 rounding, Sinkhorn). */
#include "numerics.h"

#include <math.h>
#include <string.h>

#include "../quant/quant.h"

void num_rmsnorm(float *y, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * (double)x[i];
    float s = 1.0f / sqrtf((float)(ss / n) + eps);
    if (w)
        for (int i = 0; i < n; i++) y[i] = x[i] * s * w[i];
    else
        for (int i = 0; i < n; i++) y[i] = x[i] * s;
}

/* YaRN correction dimension (as a pair-space boundary) for a rotation count. */
static float yarn_corr_dim(int n_rot, float n_ctx_orig, float beta, float base) {
    return (float)n_rot * logf(n_ctx_orig / (beta * 2.0f * (float)M_PI)) / (2.0f * logf(base));
}

void rope_params_init(rope_params *rp, const ds4_hparams *hp, bool compressed) {
    memset(rp, 0, sizeof *rp);
    rp->n_rot = (int)hp->n_rot;
    float base = compressed ? hp->compress_rope_freq_base : hp->rope_freq_base;
    rp->theta_scale = powf(base, -2.0f / (float)hp->n_rot);
    rp->freq_scale = 1.0f;
    if (compressed && hp->rope_scale_factor > 1.0f) {
        rp->yarn = true;
        rp->freq_scale = 1.0f / hp->rope_scale_factor;
        float lo = floorf(yarn_corr_dim(rp->n_rot, (float)hp->rope_orig_ctx, hp->yarn_beta_fast, base));
        float hi = ceilf(yarn_corr_dim(rp->n_rot, (float)hp->rope_orig_ctx, hp->yarn_beta_slow, base));
        rp->corr_low = lo > 0.0f ? lo : 0.0f;
        rp->corr_high = hi < (float)(rp->n_rot - 1) ? hi : (float)(rp->n_rot - 1);
    }
}

void rope_tail(float *x, int head_dim, int64_t pos, const rope_params *rp, bool inverse) {
    float *t = x + head_dim - rp->n_rot;
    float theta_ext = (float)pos;
    for (int k = 0; k < rp->n_rot / 2; k++) {
        float theta = theta_ext;
        if (rp->yarn) {
            float y = ((float)k - rp->corr_low) / fmaxf(0.001f, rp->corr_high - rp->corr_low);
            float ramp = 1.0f - fminf(1.0f, fmaxf(0.0f, y));
            float theta_interp = rp->freq_scale * theta_ext;
            theta = theta_interp * (1.0f - ramp) + theta_ext * ramp;
        }
        float c = cosf(theta), s = sinf(theta);
        if (inverse) s = -s;
        float x0 = t[2 * k], x1 = t[2 * k + 1];
        t[2 * k] = x0 * c - x1 * s;
        t[2 * k + 1] = x0 * s + x1 * c;
        theta_ext *= rp->theta_scale;
    }
}

/* E4M3FN: 3 mantissa bits, normals down to 2^-6, subnormal step 2^-9, max
 * 448. Rounding to the nearest representable value with ties to even
 * mantissa is the same as ties to the even code (code = exponent·8 + m). */
float e4m3_round(float v) {
    if (v != v) return 0.0f;
    float a = fabsf(v);
    if (a > 448.0f) a = 448.0f;
    float step;
    if (a < 0.015625f) {
        step = 0.001953125f; /* 2^-9 */
    } else {
        int e;
        frexpf(a, &e);                /* a = m·2^e, m in [0.5, 1) */
        step = ldexpf(1.0f, e - 4);   /* 2^(floor(log2 a) - 3) */
    }
    float r = rintf(a / step) * step;
    return v < 0 ? -r : r;
}

/* E2M1 values {0, .5, 1, 1.5, 2, 3, 4, 6}: step 0.5 below 2, 1 below 4, 2 above. */
float e2m1_round(float v) {
    if (v != v) return 0.0f;
    float a = fabsf(v);
    if (a > 6.0f) a = 6.0f;
    float step = a < 2.0f ? 0.5f : a < 4.0f ? 1.0f : 2.0f;
    float r = rintf(a / step) * step;
    return v < 0 ? -r : r;
}

void fp8_kv_roundtrip(float *row, int n_nope) {
    for (int b = 0; b + 64 <= n_nope; b += 64) {
        float amax = 0.0f;
        for (int i = 0; i < 64; i++) amax = fmaxf(amax, fabsf(row[b + i]));
        if (amax < 1e-4f) amax = 1e-4f;
        float scale = exp2f(ceilf(log2f(amax / 448.0f)));
        for (int i = 0; i < 64; i++) {
            float q = row[b + i] / scale;
            q = fminf(448.0f, fmaxf(-448.0f, q));
            row[b + i] = e4m3_round(q) * scale;
        }
    }
}

void fp4_roundtrip(float *x, int n) {
    for (int b = 0; b + 32 <= n; b += 32) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[b + i]));
        if (amax < 7.052966104933725e-38f) amax = 7.052966104933725e-38f;
        float scale = exp2f(ceilf(log2f(amax / 6.0f)));
        for (int i = 0; i < 32; i++) {
            float q = x[b + i] / scale;
            q = fminf(6.0f, fmaxf(-6.0f, q));
            x[b + i] = e2m1_round(q) * scale;
        }
    }
}

void hadamard_inplace(float *x, int n) {
    for (int h = 1; h < n; h *= 2)
        for (int i = 0; i < n; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float s = (float)(1.0 / sqrt((double)n));
    for (int i = 0; i < n; i++) x[i] *= s;
}

void indexer_qat(float *x, int n) {
    hadamard_inplace(x, n);
    fp4_roundtrip(x, n);
}

float f16_round(float x) { return ds4_f16_to_f32(ds4_f32_to_f16(x)); }

float sigmoid_plain(float z) { return 1.0f / (1.0f + expf(-z)); }

float silu(float x) {
    float s;
    if (x >= 0.0f) {
        s = 1.0f / (1.0f + expf(-x));
    } else {
        float e = expf(x);
        s = e / (1.0f + e);
    }
    return x * s;
}

float swiglu(float g, float u, float clamp, float weight) {
    if (clamp > 0.0f) {
        g = fminf(g, clamp);
        u = fminf(fmaxf(u, -clamp), clamp);
    }
    return silu(g) * u * weight;
}

float softplus(float x) {
    if (x > 20.0f) return x;
    if (x < -20.0f) return expf(x);
    return log1pf(expf(x));
}

void hc_split(const float *mix, const float *scale, const float *base, int iters, float eps,
              float *pre, float *post, float *comb) {
    enum { H = DS4_N_HC };
    for (int h = 0; h < H; h++) {
        pre[h] = sigmoid_plain(mix[h] * scale[0] + base[h]) + eps;
        post[h] = 2.0f * sigmoid_plain(mix[H + h] * scale[1] + base[H + h]);
    }
    float *c = comb;
    for (int i = 0; i < H * H; i++) c[i] = mix[2 * H + i] * scale[2] + base[2 * H + i];
    for (int r = 0; r < H; r++) {
        float m = c[r * H];
        for (int k = 1; k < H; k++) m = fmaxf(m, c[r * H + k]);
        float sum = 0.0f;
        for (int k = 0; k < H; k++) {
            c[r * H + k] = expf(c[r * H + k] - m);
            sum += c[r * H + k];
        }
        for (int k = 0; k < H; k++) c[r * H + k] = c[r * H + k] / sum + eps;
    }
    for (int it = 0; it < iters; it++) {
        if (it > 0) {
            for (int r = 0; r < H; r++) {
                float s = 0.0f;
                for (int k = 0; k < H; k++) s += c[r * H + k];
                for (int k = 0; k < H; k++) c[r * H + k] /= s + eps;
            }
        }
        for (int k = 0; k < H; k++) {
            float s = 0.0f;
            for (int r = 0; r < H; r++) s += c[r * H + k];
            for (int r = 0; r < H; r++) c[r * H + k] /= s + eps;
        }
    }
}

/* Total order: higher score first, NaN lowest, equal scores → lower index. */
static int better(const float *s, int a, int b) {
    float x = s[a], y = s[b];
    if (x != x) x = -INFINITY;
    if (y != y) y = -INFINITY;
    if (x != y) return x > y;
    return a < b;
}

/* Min-heap by "better": the root is the worst of the kept set. */
static void heap_sift_down(const float *s, int *h, int n, int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && better(s, h[w], h[l])) w = l;
        if (r < n && better(s, h[w], h[r])) w = r;
        if (w == i) return;
        int t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void sort_ints_ascending(int *a, int n) {
    /* heapsort: in place, no allocation */
    for (int start = n / 2 - 1; start >= 0; start--) {
        for (int i = start;;) {
            int l = 2 * i + 1, r = l + 1, m = i;
            if (l < n && a[l] > a[m]) m = l;
            if (r < n && a[r] > a[m]) m = r;
            if (m == i) break;
            int t = a[i]; a[i] = a[m]; a[m] = t;
            i = m;
        }
    }
    for (int end = n - 1; end > 0; end--) {
        int t = a[0]; a[0] = a[end]; a[end] = t;
        for (int i = 0;;) {
            int l = 2 * i + 1, r = l + 1, m = i;
            if (l < end && a[l] > a[m]) m = l;
            if (r < end && a[r] > a[m]) m = r;
            if (m == i) break;
            int u = a[i]; a[i] = a[m]; a[m] = u;
            i = m;
        }
    }
}

void topk_indices_ascending(const float *score, int n, int k, int *heap, int *out) {
    int size = 0;
    for (int i = 0; i < n; i++) {
        if (size < k) {
            heap[size++] = i;
            if (size == k)
                for (int j = k / 2 - 1; j >= 0; j--) heap_sift_down(score, heap, k, j);
        } else if (better(score, i, heap[0])) {
            heap[0] = i;
            heap_sift_down(score, heap, k, 0);
        }
    }
    memcpy(out, heap, sizeof(int) * (size_t)size);
    sort_ints_ascending(out, size);
}

void topk_rank_order(const float *score, int n, int k, int *out) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            int taken = 0;
            for (int q = 0; q < j; q++) taken |= out[q] == i;
            if (taken) continue;
            if (best < 0 || better(score, i, best)) best = i;
        }
        out[j] = best;
    }
}
