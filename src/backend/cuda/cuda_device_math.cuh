/* cuda_device_math.cuh — the small device helpers shared by the decode
 * step's kernels (cuda_step_ops.cuh) and the batched prefill's
 * (cuda_prefill_ops.cuh): block and warp reductions, sigmoid/softplus, RoPE
 * pairs, and the FP8 KV and Hadamard+FP4 indexer round-trips, each restating
 * src/engine/numerics.c with the same float operations; the mma.sync and
 * ldmatrix wrappers; the indexer's top-k selection. Internal linkage:
 * every translation unit that includes it gets its own copy. Built with
 * -fmad=false like its includers (no contraction the CPU does not do). */
#ifndef DS4_CUDA_DEVICE_MATH_CUH
#define DS4_CUDA_DEVICE_MATH_CUH

#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>

#include "cuda_engine_impl.cuh"

/* Sum over the block (every thread gets it); sh: blockDim/32 values of T
 * (double for the RMSNorm sums of squares, float elsewhere). */
template <typename T>
static __device__ T block_sum(T v, T *sh) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    T t = 0;
    for (int i = 0; i < nw; i++) t += sh[i];
    return t;
}

/* Warp reduce-scatter of 32 values a lane: lane l returns the warp's sum of
 * v[l]. Each value is added over the same xor tree as a per-value butterfly
 * (own + partner at distances 16, 8, 4, 2, 1), so the sums are the same
 * bits, for 31 shuffles instead of 160 (values known to be zero fold away). */
template <int O, typename T>
static __device__ __forceinline__ void scatter_level(T (&v)[32], int lane) {
    const bool up = lane & O;
#pragma unroll
    for (int i = 0; i < O; i++) {
        T send = up ? v[i] : v[i + O], keep = up ? v[i + O] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
    }
}

template <typename T>
static __device__ __forceinline__ T warp_scatter_sum32(T (&v)[32], int lane) {
    scatter_level<16>(v, lane);
    scatter_level<8>(v, lane);
    scatter_level<4>(v, lane);
    scatter_level<2>(v, lane);
    scatter_level<1>(v, lane);
    return v[0];
}

/* Warp reduce-scatter of 4 values a lane: lane l returns the warp's sum of
 * v[(l >> 3) & 3] (the first two levels halve the values, as
 * scatter_level, the last three add whole). */
template <typename T>
static __device__ __forceinline__ T warp_scatter_sum4(T (&v)[4], int lane) {
    const bool hi = lane & 16, odd = lane & 8;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        T send = hi ? v[i] : v[i + 2], keep = hi ? v[i + 2] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, 16);
    }
    T send = odd ? v[0] : v[1], keep = odd ? v[1] : v[0];
    T s = keep + __shfl_xor_sync(0xffffffffu, send, 8);
#pragma unroll
    for (int o = 4; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

static __device__ float block_max_f(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    int w = threadIdx.x >> 5, l = threadIdx.x & 31, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (l == 0) sh[w] = v;
    __syncthreads();
    float t = sh[0];
    for (int i = 1; i < nw; i++) t = fmaxf(t, sh[i]);
    return t;
}

/* v[k] = src[i0 + k·stride] for k < N, every load issued before any value is
 * used (a loop whose loads sit behind a bounds branch waits one memory
 * latency per load); indices at or past n read src[n - 1] (n > 0): the
 * caller masks them. */
template <int N, typename T>
static __device__ __forceinline__ void load_batch(const T *src, int i0, int stride, int n, T *v) {
#pragma unroll
    for (int k = 0; k < N; k++) {
        int i = i0 + k * stride;
        v[k] = src[i < n ? i : n - 1];
    }
}

static __device__ float warp_sum_f(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ float dev_sigmoid(float z) { return 1.0f / (1.0f + expf(-z)); }

static __device__ float dev_softplus(float x) {
    if (x > 20.0f) return x;
    if (x < -20.0f) return expf(x);
    return log1pf(expf(x));
}

/* One value of a compressor window (compressor.c): the softmax of the
 * candidates' scores weighting their values, over n_cand candidates CH at a
 * time — every load of a batch issued before any is used (one memory round
 * trip a batch, not one a candidate) — with the max and the sums in
 * candidate order. score(k), value(k): candidate k's. 0 when every score
 * is -inf. Scores stay loaded from the max's pass when n_cand <= CH. The
 * prefill's compressor uses it; the decode step's k_qkv_prepare keeps the
 * same loop written out (cuda_step_ops.cuh says why). */
template <int CH, class Score, class Value>
static __device__ __forceinline__ float pool_window(int n_cand, Score score, Value value) {
    float m = -INFINITY, s[CH], x[CH];
    for (int c0 = 0; c0 < n_cand; c0 += CH) {
#pragma unroll
        for (int k = 0; k < CH; k++) s[k] = c0 + k < n_cand ? score(c0 + k) : -INFINITY;
#pragma unroll
        for (int k = 0; k < CH; k++) m = fmaxf(m, s[k]);
    }
    float v = 0.0f;
    if (m != -INFINITY) {
        float sum = 0.0f, acc = 0.0f;
        for (int c0 = 0; c0 < n_cand; c0 += CH) {
#pragma unroll
            for (int k = 0; k < CH; k++)
                if (c0 + k < n_cand) {
                    if (n_cand > CH) s[k] = score(c0 + k);
                    x[k] = value(c0 + k);
                }
#pragma unroll
            for (int k = 0; k < CH; k++)
                if (c0 + k < n_cand) {
                    float w = expf(s[k] - m);
                    sum += w;
                    acc += w * x[k];
                }
        }
        v = acc / sum;
    }
    return v;
}

/* Cosine and sine of RoPE pair k at position pos (numerics.c rope_tail:
 * the per-pair angle is pos·theta_scale^k as a chain of float
 * multiplications, the YaRN blend in the same order). */
static __device__ float2 rope_cs(int k, int64_t pos, const rope_dev &rp) {
    float theta_ext = (float)pos;
    for (int i = 0; i < k; i++) theta_ext *= rp.theta_scale;
    float theta = theta_ext;
    if (rp.yarn) {
        float y = ((float)k - rp.corr_low) / fmaxf(0.001f, rp.corr_high - rp.corr_low);
        float ramp = 1.0f - fminf(1.0f, fmaxf(0.0f, y));
        float theta_interp = rp.freq_scale * theta_ext;
        theta = theta_interp * (1.0f - ramp) + theta_ext * ramp;
    }
    return make_float2(cosf(theta), sinf(theta));
}

/* A pair (x0, x1) rotated by the angle of cosine c, sine s. */
static __device__ __forceinline__ void rope_rot2(float &x0, float &x1, float c, float s) {
    const float a = x0, b = x1;
    x0 = a * c - b * s;
    x1 = a * s + b * c;
}

/* Pair k of a tail t rotated by the angle of cosine c, sine s. */
static __device__ __forceinline__ void rope_rotate(float *t, int k, float c, float s) {
    rope_rot2(t[2 * k], t[2 * k + 1], c, s);
}

/* One RoPE pair k of a tail t[0..n_rot) at position pos (inverse: the
 * sine negated). */
static __device__ void rope_pair(float *t, int k, int64_t pos, const rope_dev &rp, bool inverse) {
    const float2 cs = rope_cs(k, pos, rp);
    rope_rotate(t, k, cs.x, inverse ? -cs.y : cs.y);
}

/* The block rotates the tail of x[0..hd) (shared memory) in place. */
static __device__ void block_rope(float *x, int hd, int64_t pos, const rope_dev &rp, bool inverse) {
    __syncthreads();
    for (int k = threadIdx.x; k < rp.n_rot / 2; k += blockDim.x) rope_pair(x + hd - rp.n_rot, k, pos, rp, inverse);
    __syncthreads();
}

/* block_rope at the step's position with its cosines and sines from the
 * table cs (n_rot/2 pairs, k_embed's): the same values, without each
 * block's chain of angle products, cosf and sinf (~1-1.5 us of a q/kv
 * preparation, indexer query or combine block on an H200). Thread k's
 * entry cs[k] (k < n_rot/2) is already in v (rope_own), so that its load
 * went out beside the block's data loads instead of after the barrier
 * here; entries past blockDim.x are loaded here. */
static __device__ void block_rope_own(float *x, int hd, int n_rot, float2 v, const float2 *cs, bool inverse) {
    __syncthreads();
    for (int k = threadIdx.x; k < n_rot / 2; k += blockDim.x) {
        const float2 c = k == (int)threadIdx.x ? v : cs[k];
        rope_rotate(x + hd - n_rot, k, c.x, inverse ? -c.y : c.y);
    }
    __syncthreads();
}

/* Thread k's entry of a rope table for block_rope_own. */
static __device__ __forceinline__ float2 rope_own(const float2 *cs, int n_rot) {
    return (int)threadIdx.x < n_rot / 2 ? cs[threadIdx.x] : make_float2(0.0f, 0.0f);
}

static __device__ float e4m3_round_dev(float v) {
    if (v != v) return 0.0f;
    float a = fabsf(v);
    if (a > 448.0f) a = 448.0f;
    float step;
    if (a < 0.015625f) {
        step = 0.001953125f;
    } else {
        int e;
        frexpf(a, &e);
        step = ldexpf(1.0f, e - 4);
    }
    float r = rintf(a / step) * step;
    return v < 0 ? -r : r;
}

static __device__ float e2m1_round_dev(float v) {
    if (v != v) return 0.0f;
    float a = fabsf(v);
    if (a > 6.0f) a = 6.0f;
    float step = a < 2.0f ? 0.5f : a < 4.0f ? 1.0f : 2.0f;
    float r = rintf(a / step) * step;
    return v < 0 ? -r : r;
}

/* A block's scale from the largest |value| of its values (a fmaxf fold from 0). */
template <bool FP4>
static __device__ __forceinline__ float scaled_block_scale(float amax) {
    constexpr float lim = FP4 ? 6.0f : 448.0f, amax_floor = FP4 ? 7.052966104933725e-38f : 1e-4f;
    if (amax < amax_floor) amax = amax_floor;
    return exp2f(ceilf(log2f(amax / lim)));
}

/* One value's round trip at its block's scale. */
template <bool FP4>
static __device__ __forceinline__ float scaled_round(float x, float scale) {
    constexpr float lim = FP4 ? 6.0f : 448.0f;
    float q = x / scale;
    q = fminf(lim, fmaxf(-lim, q));
    return (FP4 ? e2m1_round_dev(q) : e4m3_round_dev(q)) * scale;
}

/* Block-scaled round trip of x[0..n/B·B) in shared memory, FP8 e4m3 in
 * blocks of B = 64 (limit 448) or FP4 e2m1 in blocks of 32 (limit 6): each
 * block's scale is 2^ceil(log2(amax / limit)) (amax at least a floor), each
 * value divided by it, clamped to ±limit, rounded to the format and scaled
 * back (numerics.c fp8_kv_roundtrip, indexer_qat); sc: n/B floats of
 * shared scratch. */
template <bool FP4>
static __device__ void block_scaled_roundtrip(float *x, int n, float *sc) {
    constexpr int B = FP4 ? 32 : 64;
    __syncthreads();
    for (int b = threadIdx.x; b < n / B; b += blockDim.x) {
        float amax = 0.0f;
        for (int i = 0; i < B; i++) amax = fmaxf(amax, fabsf(x[B * b + i]));
        sc[b] = scaled_block_scale<FP4>(amax);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n / B * B; i += blockDim.x) x[i] = scaled_round<FP4>(x[i], sc[i / B]);
    __syncthreads();
}

/* FP8 KV round-trip of x[0..n_nope) (numerics.c fp8_kv_roundtrip). */
static __device__ void block_fp8_roundtrip(float *x, int n_nope, float *sc) {
    block_scaled_roundtrip<false>(x, n_nope, sc);
}

/* Hadamard (Sylvester order, ·1/√n) then FP4 round-trip of x[0..n) in
 * shared memory (numerics.c indexer_qat); sc: n/32 floats. */
static __device__ void block_indexer_qat(float *x, int n, float *sc) {
    __syncthreads();
    for (int h = 1; h < n; h *= 2) {
        for (int i = threadIdx.x; i < n / 2; i += blockDim.x) {
            int j = (i / h) * 2 * h + (i % h);
            float a = x[j], b = x[j + h];
            x[j] = a + b;
            x[j + h] = a - b;
        }
        __syncthreads();
    }
    float s = (float)(1.0 / sqrt((double)n));
    for (int i = threadIdx.x; i < n; i += blockDim.x) x[i] *= s;
    block_scaled_roundtrip<true>(x, n, sc);
}

/* block_indexer_qat for a vector of n = 32·V values held by one warp, lane
 * l holding values V·l .. V·l+V-1 (V a power of two up to 32): the
 * Hadamard's partners below V in the lane, above by xor shuffles (the
 * lower index takes a + b, the upper a - b), the FP4 block maxima over
 * the 32/V lanes of a block — the block version's operations, so its bits.
 * Every lane of the warp must call it. */
template <int V>
static __device__ __forceinline__ void warp_indexer_qat(float x[V], int lane) {
#pragma unroll
    for (int h = 1; h < 32 * V; h *= 2) {
        if (h < V) {
#pragma unroll
            for (int v = 0; v < V; v++)
                if (!(v & h)) {
                    const float a = x[v], b = x[v + h];
                    x[v] = a + b;
                    x[v + h] = a - b;
                }
        } else {
            const bool upper = lane & (h / V);
#pragma unroll
            for (int v = 0; v < V; v++) {
                const float o = __shfl_xor_sync(0xffffffffu, x[v], h / V);
                x[v] = upper ? o - x[v] : x[v] + o;
            }
        }
    }
    const float s = (float)(1.0 / sqrt((double)(32 * V)));
    float amax = 0.0f;
#pragma unroll
    for (int v = 0; v < V; v++) {
        x[v] *= s;
        amax = fmaxf(amax, fabsf(x[v]));
    }
#pragma unroll
    for (int o = 1; o < 32 / V; o *= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const float scale = scaled_block_scale<true>(amax);
#pragma unroll
    for (int v = 0; v < V; v++) x[v] = scaled_round<true>(x[v], scale);
}

/* An indexer query head of ihd = 32·V values held by one warp as in
 * warp_indexer_qat (V ≥ 2, so a RoPE pair stays in a lane): RoPE of the
 * tail from the (cos, sin) pairs cs, then QAT unless exact — the
 * operations of block_rope_own + block_indexer_qat, so their bits. Every
 * lane of the warp must call it. */
template <int V>
static __device__ __forceinline__ void warp_idx_query(float x[V], int lane, int n_rot, const float2 *cs, bool exact) {
    constexpr int IHD = 32 * V;
#pragma unroll
    for (int v = 0; v < V; v += 2)
        if (V * lane + v >= IHD - n_rot) {
            const float2 c = cs[(V * lane + v - (IHD - n_rot)) / 2];
            rope_rot2(x[v], x[v + 1], c.x, c.y);
        }
    if (!exact) warp_indexer_qat<V>(x, lane);
}

/* mma.sync m16n8k16 (f16 in, f32 accumulate) and ldmatrix helpers. */
__device__ __forceinline__ uint32_t pa_smem(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

__device__ __forceinline__ void pa_ldm_x4(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(pa_smem(p)));
}

__device__ __forceinline__ void pa_ldm_x2(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(r[0]), "=r"(r[1]) : "r"(pa_smem(p)));
}

__device__ __forceinline__ void pa_ldm_x4_t(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(pa_smem(p)));
}

__device__ __forceinline__ void pa_mma(float *c, const uint32_t *a, const uint32_t *b) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Radix key of a score: larger scores give larger keys, −0 and +0 the
 * same, NaN the smallest. */
static __device__ uint32_t score_key(float f) {
    if (f != f) return 0u;
    if (f == 0.0f) f = 0.0f;
    uint32_t b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

/* Inclusive prefix sum over the warp's lanes. */
static __device__ int warp_scan_incl(int v) {
    int l = threadIdx.x & 31;
    for (int o = 1; o < 32; o <<= 1) {
        int u = __shfl_up_sync(0xffffffffu, v, o);
        if (l >= o) v += u;
    }
    return v;
}

/* The keys of scores[i0 + stride·u] for u < n and i0 + stride·u < end into
 * key[u] (0 elsewhere); bit u of the result says which are there. Every
 * load is issued before any is converted: score_key branches on the value,
 * so a conversion between two loads waits out each load in turn. */
template <int N>
static __device__ __forceinline__ unsigned load_keys(const float *scores, int i0, int stride, int n, int end,
                                                     uint32_t (&key)[N]) {
    float raw[N];
    unsigned valid = 0;
#pragma unroll
    for (int u = 0; u < N; u++) {
        const int i = i0 + stride * u;
        const bool v = u < n && i < end;
        raw[u] = v ? scores[i] : 0.0f;
        valid |= (unsigned)v << u;
    }
#pragma unroll
    for (int u = 0; u < N; u++) key[u] = valid >> u & 1u ? score_key(raw[u]) : 0u;
    return valid;
}

/* f(valid, i, key) for the indices of lo..hi (the calling warp's segment) in
 * ascending order, lane l taking i ≡ lo + l (mod 32); 32·TOPK_BATCH keys
 * loaded before any is used. Every lane calls f the same number of times
 * (valid = i < hi), so f may use warp votes. */
enum { TOPK_BATCH = 8 };

template <typename F>
static __device__ void warp_keys(const float *scores, int lo, int hi, F f) {
    int lane = threadIdx.x & 31;
    for (int base = lo; base < hi; base += 32 * TOPK_BATCH) {
        uint32_t key[TOPK_BATCH];
        const unsigned valid = load_keys(scores, base + lane, 32, TOPK_BATCH, hi, key);
#pragma unroll
        for (int u = 0; u < TOPK_BATCH; u++) f(valid >> u & 1u, base + 32 * u + lane, key[u]);
    }
}

/* Of a thread's N register keys (slot e valid with bit e of valid), how
 * many are above t and how many equal to it, under mask. */
template <int N>
static __device__ __forceinline__ void keys_above_ties(const uint32_t (&key)[N], unsigned valid, uint32_t mask,
                                                       uint32_t t, int *above, int *ties) {
    int a = 0, e = 0;
#pragma unroll
    for (int u = 0; u < N; u++) {
        const uint32_t k = key[u] & mask;
        a += (valid >> u & 1u) && k > t;
        e += (valid >> u & 1u) && k == t;
    }
    *above = a;
    *ties = e;
}

/* Shared memory of block_topk_radix. */
struct topk_radix_smem {
    int hist[32][256]; /* a warp's own histogram */
    int total[256];
    int ties[32], out[32]; /* a warp's counts, then what comes before its segment */
    uint32_t prefix;
    int need;
};

/* The pieces of the radix select, shared by the one-block top-k below and
 * the decode step's grid-wide one (cuda_topk_grid.cuh). */

/* Adds each lane's bin (-1: none) to the warp's histogram h, one add for
 * lanes sharing a bin (the whole warp agreeing, else __match_any_sync
 * groups). Every lane of the warp must call it. */
static __device__ __forceinline__ void warp_hist_add(int bin, int *h) {
    const int lane = threadIdx.x & 31, bin0 = __shfl_sync(0xffffffffu, bin, 0);
    if (__all_sync(0xffffffffu, bin == bin0)) {
        if (lane == 0 && bin0 >= 0) atomicAdd(&h[bin0], 32);
    } else {
        const unsigned same = __match_any_sync(0xffffffffu, bin);
        if (bin >= 0 && lane == __ffs(same) - 1) atomicAdd(&h[bin], __popc(same));
    }
}

/* Counts the keys of [lo, hi) whose bits under mask equal t into the warp's
 * 256-bin histogram h by digit (key >> shift) & 255 (warp_hist_add). h must
 * be zero. */
static __device__ void warp_digit_hist(const float *scores, int lo, int hi, uint32_t t, uint32_t mask, int shift,
                                       int *h) {
    warp_keys(scores, lo, hi, [&](bool valid, int, uint32_t key) {
        warp_hist_add(valid && (key & mask) == t ? (int)((key >> shift) & 255u) : -1, h);
    });
}

/* By one warp: the digit d of the need-th largest key among those counted
 * in total[256] (digits at shift); *prefix = t | d << shift, *need_out = how
 * many of the keys with that digit to take. */
static __device__ void warp_find_digit(const int *total, uint32_t t, int shift, int need, uint32_t *prefix,
                                       int *need_out) {
    /* lane l: bins 255-8l down to 248-8l; counts from the top */
    const int lane = threadIdx.x & 31;
    int own = 0;
    for (int j = 0; j < 8; j++) own += total[255 - 8 * lane - j];
    int incl = warp_scan_incl(own);
    unsigned hit = __ballot_sync(0xffffffffu, incl >= need);
    if (lane == __ffs(hit) - 1) {
        int acc = incl - own, d = 255 - 8 * lane;
        for (int j = 0; j < 8; j++, d--) {
            if (acc + total[d] >= need) break;
            acc += total[d];
        }
        *prefix = t | ((uint32_t)d << shift);
        *need_out = need - acc;
    }
}

/* The warp's keys of [lo, hi) above t and equal to t (in every lane). */
static __device__ void warp_count_above(const float *scores, int lo, int hi, uint32_t t, int *above, int *ties) {
    int a = 0, e = 0;
    warp_keys(scores, lo, hi, [&](bool valid, int, uint32_t key) {
        a += valid && key > t;
        e += valid && key == t;
    });
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_xor_sync(0xffffffffu, a, o);
        e += __shfl_xor_sync(0xffffffffu, e, o);
    }
    *above = a;
    *ties = e;
}

/* Writes the warp's picks of [lo, hi) in index order from sel[out]: keys
 * above t, and ties while the tie rank (from tie_rank, the ties before the
 * segment) is below need. */
static __device__ void warp_write_picks(const float *scores, int lo, int hi, uint32_t t, int need, int tie_rank,
                                        int out, int *sel) {
    const unsigned below = (1u << (threadIdx.x & 31)) - 1u;
    warp_keys(scores, lo, hi, [&](bool valid, int i, uint32_t key) {
        bool tie = valid && key == t;
        unsigned tm = __ballot_sync(0xffffffffu, tie);
        bool pick = valid && (key > t || (tie && tie_rank + __popc(tm & below) < need));
        unsigned pm = __ballot_sync(0xffffffffu, pick);
        if (pick) sel[out + __popc(pm & below)] = i;
        tie_rank += __popc(tm);
        out += __popc(pm);
    });
}

/* block_topk_ascending's path for more rows than the registers hold
 * (block_topk_registers): the same selection and output. Warp w owns the
 * contiguous segment w·seg.. of the indices. Radix select of the k-th key,
 * 8 bits a pass: each warp counts the keys that share the prefix found so
 * far into its own histogram (warp_digit_hist), the warps' bins are added,
 * warp 0 finds the bin holding the k-th from the top. Then each warp counts
 * its keys above the k-th and its ties; one warp scan gives every warp the
 * ties before its segment (the first `need` ties are taken) and its first
 * output slot; each warp writes its picks in index order (ballots). */
static __device__ void block_topk_radix(const float *scores, int visible, int top_k, int *sel,
                                        topk_radix_smem *sm) {
    const int nw = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int seg = ((visible + nw - 1) / nw + 31) & ~31;
    const int lo = w * seg < visible ? w * seg : visible, hi = lo + seg < visible ? lo + seg : visible;
    uint32_t t = 0, mask = 0;
    int need = top_k; /* how many of the keys matching t under mask to take */
    int *h = sm->hist[w];
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = lane; b < 256; b += 32) h[b] = 0;
        __syncwarp();
        warp_digit_hist(scores, lo, hi, t, mask, shift, h);
        __syncthreads();
        for (int b = threadIdx.x; b < 256; b += blockDim.x) {
            int n = 0;
            for (int v = 0; v < nw; v++) n += sm->hist[v][b];
            sm->total[b] = n;
        }
        __syncthreads();
        if (w == 0) warp_find_digit(sm->total, t, shift, need, &sm->prefix, &sm->need);
        __syncthreads();
        t = sm->prefix;
        need = sm->need;
        mask |= 255u << shift;
    }
    /* t is the k-th key; all keys above it and the first `need` ties */
    int above, ties;
    warp_count_above(scores, lo, hi, t, &above, &ties);
    if (lane == 0) sm->ties[w] = ties, sm->out[w] = above;
    __syncthreads();
    if (w == 0) {
        int tw = lane < nw ? sm->ties[lane] : 0, aw = lane < nw ? sm->out[lane] : 0;
        int tb = warp_scan_incl(tw) - tw, take = need - tb < 0 ? 0 : need - tb < tw ? need - tb : tw;
        int pw = aw + take, pb = warp_scan_incl(pw) - pw;
        if (lane < nw) sm->ties[lane] = tb, sm->out[lane] = pb;
    }
    __syncthreads();
    warp_write_picks(scores, lo, hi, t, need, sm->ties[w], sm->out[w], sel);
}

/* ---- the one-block top-k from registers (block_topk_registers) ----
 * For up to TOPK_REG_SLOTS keys a thread (8192 rows with 1024 threads: every
 * decode step below the grid top-k's TOPK_GRID_MIN): the keys are read once
 * into registers, and a pass is one block barrier, where the radix path
 * above reads the scores again and meets 3 barriers a pass. */
enum { TOPK_REG_SLOTS = 8, TOPK_REG_BITS = 4, TOPK_REG_BINS = 1 << TOPK_REG_BITS };

/* Shared memory of block_topk_registers. */
struct topk_reg_smem {
    int count[2][32][TOPK_REG_BINS]; /* a warp's bin counts, of even and odd passes */
    int scan[32];                    /* a warp's packed counts for the output slots */
};

/* The shared memory of block_topk_ascending: one path runs. */
union topk_smem {
    topk_radix_smem radix;
    topk_reg_smem reg;
};

/* In every lane: how many of the warp's candidates (slots e < per with bit
 * e of valid, key bits under mask equal to t) have the digit
 * (key >> shift) & 15 equal to lane & 15. Four ballots of digit bits a slot;
 * lane b keeps the candidates whose four bits spell b. */
static __device__ int warp_reg_bin_count(const uint32_t *key, int per, unsigned valid, uint32_t t, uint32_t mask,
                                         int shift) {
    const int b = threadIdx.x & (TOPK_REG_BINS - 1);
    int n = 0;
#pragma unroll
    for (int e = 0; e < TOPK_REG_SLOTS; e++) {
        if (e >= per) break; /* per is the same in the whole block */
        unsigned m = __ballot_sync(0xffffffffu, (valid >> e & 1u) && (key[e] & mask) == t);
        if (!m) continue; /* the same in the whole warp */
        const uint32_t d = key[e] >> shift;
#pragma unroll
        for (int j = 0; j < TOPK_REG_BITS; j++) {
            unsigned bit = __ballot_sync(0xffffffffu, d >> j & 1u);
            m &= (b >> j & 1) ? bit : ~bit;
        }
        n += __popc(m);
    }
    return n;
}

/* By every warp alike, from the nw warps' counts of one pass (cnt[w][bin]):
 * the digit of the need-th largest candidate; *need becomes how many with
 * that digit to take, *in_bin how many candidates have it. Lane l adds the
 * counts of bin 15 − (l & 15) over the even (l < 16) or odd warps (no bank
 * conflicts), the halves are added; lanes 0..15 then run from the top bin
 * down. */
static __device__ uint32_t warp_reg_find_digit(const int (*cnt)[TOPK_REG_BINS], int nw, int *need, int *in_bin) {
    const int lane = threadIdx.x & 31, bin = TOPK_REG_BINS - 1 - (lane & (TOPK_REG_BINS - 1));
    int n = 0;
    for (int v = lane >> 4; v < nw; v += 2) n += cnt[v][bin];
    n += __shfl_xor_sync(0xffffffffu, n, 16);
    const int incl = warp_scan_incl(n);
    const unsigned hit = __ballot_sync(0xffffffffu, incl >= *need) & 0xffffu;
    const int f = __ffs(hit) - 1;
    *need -= __shfl_sync(0xffffffffu, incl - n, f);
    *in_bin = __shfl_sync(0xffffffffu, n, f);
    return (uint32_t)(TOPK_REG_BINS - 1 - f);
}

/* block_topk_ascending's path for visible ≤ TOPK_REG_SLOTS·blockDim.x. Thread
 * j holds the keys of indices j·per .. j·per + per − 1 (per = ⌈visible /
 * blockDim.x⌉). Radix select of the k-th key from the top, 4 bits a pass:
 * the warps count the candidates (keys sharing the prefix t found so far)
 * by digit (warp_reg_bin_count), one barrier, every warp adds the counts and
 * finds the same digit (warp_reg_find_digit; the counts alternate between
 * two buffers, so a pass's writes never meet the previous pass's reads).
 * It stops early once every candidate with the digit is taken (no tie left
 * to break). Then thread j's picks are its keys above t under the mask and
 * its first ties while the tie rank is below need: one block scan of the
 * packed counts (above << 16 | ties; both below 2^16) gives each thread the
 * keys above and ties before its indices, and a pick's slot is
 * above-before + min(ties-before, need). */
static __device__ void block_topk_registers(const float *scores, int visible, int top_k, int *sel,
                                            topk_reg_smem *sm) {
    const int nw = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int per = (visible + (int)blockDim.x - 1) / (int)blockDim.x, first = (int)threadIdx.x * per;
    uint32_t key[TOPK_REG_SLOTS];
    const unsigned valid = load_keys(scores, first, 1, per, visible, key);
    uint32_t t = 0, mask = 0;
    int need = top_k; /* how many of the keys matching t under mask to take */
    for (int shift = 32 - TOPK_REG_BITS, buf = 0; shift >= 0; shift -= TOPK_REG_BITS, buf ^= 1) {
        const int n = warp_reg_bin_count(key, per, valid, t, mask, shift);
        if (lane < TOPK_REG_BINS) sm->count[buf][w][lane] = n;
        __syncthreads();
        int in_bin;
        t |= warp_reg_find_digit(sm->count[buf], nw, &need, &in_bin) << shift;
        mask |= (uint32_t)(TOPK_REG_BINS - 1) << shift;
        if (in_bin == need) break;
    }
    int above, ties;
    keys_above_ties(key, valid, mask, t, &above, &ties);
    const int own = above << 16 | ties, incl = warp_scan_incl(own);
    if (lane == 31) sm->scan[w] = incl;
    __syncthreads();
    const int wt = lane < nw ? sm->scan[lane] : 0, wincl = warp_scan_incl(wt);
    const int before = __shfl_sync(0xffffffffu, wincl - wt, w) + incl - own;
    int a = before >> 16, r = before & 0xffff;
#pragma unroll
    for (int e = 0; e < TOPK_REG_SLOTS; e++) {
        const uint32_t k = key[e] & mask;
        if (!(valid >> e & 1u) || k < t) continue;
        if (k > t || r < need) sel[a + (r < need ? r : need)] = first + e;
        if (k > t) a++;
        else r++;
    }
}

/* The top_k best of scores[0..visible) as ascending indices into sel
 * (ties → lower index: numerics.c topk_indices_ascending; NaN below every
 * number, score_key), by the whole block (blockDim.x a multiple of 32, at
 * most 1024; the kernels declare __launch_bounds__(1024, 1)); needs
 * 0 < top_k < visible. From registers while the block can hold the keys,
 * else the radix select over the scores in memory; both take the same set
 * and write it in the same order. */
static __device__ void block_topk_ascending(const float *scores, int visible, int top_k, int *sel, topk_smem *sm) {
    if (visible <= TOPK_REG_SLOTS * (int)blockDim.x) block_topk_registers(scores, visible, top_k, sel, &sm->reg);
    else block_topk_radix(scores, visible, top_k, sel, &sm->radix);
}

/* Router of one token by the whole block (model-spec §5.8 steps 2-4,
 * moe.c route_task): prob = sqrt(softplus(logit)) into prob[0..ne); experts
 * from tid2eid[token] (hash layers) or the top nu of prob + bias (ties →
 * lower index, NaN as −inf); weights = renormalised unbiased probs ×
 * wscale. prob[2·ne] (the second half: the selection keys) and chosen[nu]
 * are the caller's shared memory; ne ≤ ROUTE_MAX_EXPERTS (check_model).
 * The selection is one warp's: lane l holds the radix keys (score_key) of
 * experts l·K .. l·K + K − 1, K = ⌈ne/32⌉, so lower lanes hold lower
 * indices; each of nu rounds takes the largest key by one warp max, the
 * lowest lane holding it, and there its first such key — exactly "the
 * largest, ties to the lower index" — and the winner drops it. (Counting
 * each key's rank on the whole block, as before, cost ~2 µs of issue for
 * 256 experts: the decode step's k_route took ~6 µs on top-k layers.) */
enum { ROUTE_KEYS_PER_LANE = 8, ROUTE_MAX_EXPERTS = 32 * ROUTE_KEYS_PER_LANE };

static __device__ void warp_route_select(const float *key, int ne, int nu, int *chosen) {
    const int lane = threadIdx.x & 31, K = (ne + 31) / 32;
    uint32_t kk[ROUTE_KEYS_PER_LANE]; /* 0 below every key: empty or taken */
#pragma unroll
    for (int k = 0; k < ROUTE_KEYS_PER_LANE; k++) {
        const int i = lane * K + k;
        kk[k] = k < K && i < ne ? score_key(key[i]) : 0u;
    }
    for (int r = 0; r < nu; r++) {
        uint32_t bv = kk[0];
        int bk = 0;
#pragma unroll
        for (int k = 1; k < ROUTE_KEYS_PER_LANE; k++)
            if (kk[k] > bv) bv = kk[k], bk = k;
        const uint32_t m = __reduce_max_sync(0xffffffffu, bv);
        const int w = __ffs(__ballot_sync(0xffffffffu, bv == m)) - 1;
        if (lane == w) {
            chosen[r] = lane * K + bk;
#pragma unroll
            for (int k = 0; k < ROUTE_KEYS_PER_LANE; k++)
                if (k == bk) kk[k] = 0u;
        }
    }
}

static __device__ void block_route(const float *logits, const float *bias, const int32_t *tid2eid, int32_t token,
                                   int ne, int nu, float wscale, int wnorm, float *prob, int *chosen, int32_t *ids,
                                   float *weights) {
    float *key = prob + ne;
    for (int i = threadIdx.x; i < ne; i += blockDim.x) {
        const float p = sqrtf(dev_softplus(logits[i])), v = p + (bias ? bias[i] : 0.0f);
        prob[i] = p;
        key[i] = v != v ? -INFINITY : v;
    }
    __syncthreads();
    if (tid2eid) {
        if (threadIdx.x < (unsigned)nu) chosen[threadIdx.x] = tid2eid[(size_t)token * nu + threadIdx.x];
    } else if (threadIdx.x < 32) {
        warp_route_select(key, ne, nu, chosen);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float sum = 0.0f;
        for (int i = 0; i < nu; i++) sum += prob[chosen[i]];
        if (sum < 6.103515625e-05f) sum = 6.103515625e-05f;
        for (int i = 0; i < nu; i++) {
            ids[i] = chosen[i];
            weights[i] = wnorm ? prob[chosen[i]] / sum * wscale : prob[chosen[i]] * wscale;
        }
    }
}

#endif
