/* test_cuda_attention.cu — the batched prefill's attention kernel
 * (cuda_prefill_ops.cuh pf_attention) at the full model's shape (64 heads
 * of 512, window 128), which test_cuda_forward's tiny model (8 heads of
 * 128) does not reach: every kernel shape (16 or 32 heads a block, 16- or
 * 32-row tiles, Q and P split into hi + lo f16 or rounded to f16 once
 * (the prefill's choice beside Q8_0 products on f16 tensor cores)) that
 * fits the device against a double-precision CPU
 * reference of the same rows, then each shape's time for a 4096-token
 * chunk at 8k context.
 *
 * Cases: ratio 4 with the indexer's selection (512 of the visible
 * compressed rows, ring rows before the chunk and the chunk's own rows
 * after); ratio 128 from position 0 (the first tokens see fewer rows than
 * a tile); ratio 0. RoPE is off (n_rot 0: the rotation is the decode
 * step's code, checked by test_cuda_forward). Reference: for each checked
 * (token, head) the head's unweighted RMSNorm (the kernel norms q_b's
 * output as it loads it), the softmax over the sink and the rows of
 * Q·K/√hd in double, then P·V; rows as stored (f16).
 * Passes when every checked output is within 1e-4 of the largest |ref| of
 * its head with the split (Q and P kept to ~22 bits, K/V exact), within
 * 2e-3 without it (Q and P rounded to f16: each weight off by ~2^-11 of
 * itself plus the score's 2^-11 of Σ|q·k|/√hd, ~11 here), and when the
 * kernel's f16 output (for the f16 output projection) is, bit for bit, the
 * CPU's Q8_0 quantisation of its f32 output with each d·q rounded to f16.
 *
 * Also the indexer at the full shape (64 heads of 128, top-k 512), which
 * the tiny model's few rows do not reach either: idx_scores
 * (cuda_idx_scores.cuh) over 16384 rows with its row tiles spread over
 * 1, 37, 256 and 300 blocks (bit for bit the same scores; within 1e-5 of
 * the largest |score| from a double-precision reference; nothing written
 * while the visible rows are at most top-k), and the top-k both ways —
 * pf_idx_topk (block_topk_ascending, one block: from registers up to 8192
 * rows, else the radix select), the radix select alone at every size
 * (k_topk_radix) and the decode step's grid top-k (cuda_topk_grid.cuh, run
 * twice so its state is checked to reset) — against a sort by numerics.c's
 * order (NaN as -inf, ties to the lower index) on those scores and on
 * tie-heavy, NaN/±0, ±inf and nearly-equal inputs from 513 to 262144 rows
 * (1M context); then the kernels' times at 1024 to 262144 visible rows.
 *
 * And the decode step's greedy pick (cuda_pick.cuh, k_pick2) over the full
 * vocabulary (129280) and small ones: the token ds4_argmax_except returns
 * (its definition written plainly here: the first index of the largest
 * logit above -inf other than skip; with none, 1 if skip is 0, else 0) must
 * follow from the two picks for every skip tried, on random logits, ties
 * across the blocks' slices, NaN, ±inf, all -inf and one finite logit, the
 * kernel run twice per case (its ticket counter carries over), the first
 * time also writing the picks' logits, which must be theirs.
 *
 * Built by `make cuda` (cuda.mk); run on a GPU machine (exit 77 without
 * a device, 1 on a failed check). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <algorithm>
#include <vector>

#include "../src/backend/cuda/cuda_prefill_ops.cuh"
extern "C" {
#include "../src/quant/quant.h"
}
#include "../src/backend/cuda/cuda_topk_grid.cuh"
#include "../src/backend/cuda/cuda_pick.cuh"

enum { HEADS = 64, HD = 512, NSWA = 128, TOPK = 512 };
static const float EPS = 1e-6f; /* the heads' RMSNorm */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static double urand(void) { /* [-1, 1) */
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (double)(rng >> 11) * (2.0 / 9007199254740992.0) - 1.0;
}

#define CK(x)                                                                                  \
    do {                                                                                       \
        cudaError_t c_ = (x);                                                                  \
        if (c_ != cudaSuccess) {                                                               \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(c_)); \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

struct att_case {
    const char *name;
    int ratio, pos0, T;
};

struct att_data {
    att_case c;
    int n_comp_rows;
    std::vector<float> q, sinks;
    std::vector<__half> ring, kvc, comp;
    std::vector<float> ringf, kvcf, compf; /* the same rows as floats, for the reference */
    std::vector<int> checked;              /* tokens the reference covers */
    std::vector<double> ref;               /* their outputs [checked][HEADS][HD] */
    std::vector<int> sel, n_sel;
    float *d_q, *d_sinks, *d_out;
    __half *d_ring, *d_kvc, *d_comp;
    int *d_sel, *d_nsel;
};

static void make_data(att_data *a) {
    const att_case &c = a->c;
    size_t T = (size_t)c.T;
    a->q.resize(T * HEADS * HD);
    for (auto &v : a->q) v = (float)(4.0 * urand());
    a->sinks.resize(HEADS);
    for (auto &v : a->sinks) v = (float)urand();
    a->ring.resize((size_t)NSWA * HD);
    a->kvc.resize(T * HD);
    for (auto &v : a->ring) v = __float2half((float)urand());
    for (auto &v : a->kvc) v = __float2half((float)urand());
    a->n_comp_rows = c.ratio ? (c.pos0 + c.T) / c.ratio + 1 : 1;
    a->comp.resize((size_t)a->n_comp_rows * HD);
    for (auto &v : a->comp) v = __float2half((float)urand());
    a->sel.assign(T * TOPK, 0);
    a->n_sel.assign(T, -1);
    if (c.ratio == 4) {
        std::vector<int> idx;
        for (int t = 0; t < c.T; t++) {
            int vis = (c.pos0 + t + 1) / 4;
            if (vis <= TOPK) continue;
            idx.resize(vis);
            for (int i = 0; i < vis; i++) idx[i] = i;
            for (int i = 0; i < TOPK; i++) { /* partial shuffle, then ascending */
                int j = i + (int)((urand() * 0.5 + 0.5) * (vis - i));
                if (j >= vis) j = vis - 1;
                int x = idx[i];
                idx[i] = idx[j], idx[j] = x;
            }
            std::vector<char> on(vis, 0);
            for (int i = 0; i < TOPK; i++) on[idx[i]] = 1;
            int k = 0;
            for (int i = 0; i < vis; i++)
                if (on[i]) a->sel[(size_t)t * TOPK + k++] = i;
            a->n_sel[t] = TOPK;
        }
    }
    auto to_float = [](const std::vector<__half> &h, std::vector<float> &f) {
        f.resize(h.size());
        for (size_t i = 0; i < h.size(); i++) f[i] = __half2float(h[i]);
    };
    to_float(a->ring, a->ringf);
    to_float(a->kvc, a->kvcf);
    to_float(a->comp, a->compf);
    CK(cudaMalloc(&a->d_q, a->q.size() * 4));
    CK(cudaMalloc(&a->d_sinks, HEADS * 4));
    CK(cudaMalloc(&a->d_out, a->q.size() * 4));
    CK(cudaMalloc(&a->d_ring, a->ring.size() * 2));
    CK(cudaMalloc(&a->d_kvc, a->kvc.size() * 2));
    CK(cudaMalloc(&a->d_comp, a->comp.size() * 2));
    CK(cudaMalloc(&a->d_sel, a->sel.size() * 4));
    CK(cudaMalloc(&a->d_nsel, a->n_sel.size() * 4));
    CK(cudaMemcpy(a->d_q, a->q.data(), a->q.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(a->d_sinks, a->sinks.data(), HEADS * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(a->d_ring, a->ring.data(), a->ring.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(a->d_kvc, a->kvc.data(), a->kvc.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(a->d_comp, a->comp.data(), a->comp.size() * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(a->d_sel, a->sel.data(), a->sel.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(a->d_nsel, a->n_sel.data(), a->n_sel.size() * 4, cudaMemcpyHostToDevice));
}

static void free_data(att_data *a) {
    void *p[] = {a->d_q, a->d_sinks, a->d_out, a->d_ring, a->d_kvc, a->d_comp, a->d_sel, a->d_nsel};
    for (void *x : p) cudaFree(x);
}

/* The rows token t attends, as pointers to the float copies. */
static std::vector<const float *> rows_of(const att_data *a, int t) {
    const att_case &c = a->c;
    std::vector<const float *> r;
    int p = c.pos0 + t, lo = p - NSWA + 1 < 0 ? 0 : p - NSWA + 1;
    for (int pos = lo; pos <= p; pos++)
        r.push_back(pos < c.pos0 ? &a->ringf[(size_t)(pos % NSWA) * HD] : &a->kvcf[(size_t)(pos - c.pos0) * HD]);
    if (c.ratio) {
        if (a->n_sel[t] >= 0)
            for (int k = 0; k < a->n_sel[t]; k++) r.push_back(&a->compf[(size_t)a->sel[(size_t)t * TOPK + k] * HD]);
        else
            for (int k = 0; k < (p + 1) / c.ratio; k++) r.push_back(&a->compf[(size_t)k * HD]);
    }
    return r;
}

/* The reference outputs of the checked tokens (every head), in double. */
static void reference(att_data *a) {
    const att_case &c = a->c;
    int toks[] = {0, 1, 2, 7, 15, 16, 17, 100, 127, 128, 129, 300, c.T / 2, c.T - 2, c.T - 1};
    for (int t : toks)
        if (t < c.T && (a->checked.empty() || a->checked.back() < t)) a->checked.push_back(t);
    a->ref.assign(a->checked.size() * HEADS * HD, 0.0);
    std::vector<double> s;
    for (size_t ci = 0; ci < a->checked.size(); ci++) {
        int t = a->checked[ci];
        std::vector<const float *> r = rows_of(a, t);
        s.resize(r.size());
        for (int h = 0; h < HEADS; h++) {
            const float *qraw = &a->q[((size_t)t * HEADS + h) * HD];
            double qh[HD], ss = 0.0; /* the head normed (unweighted RMSNorm), as the kernel prepares it */
            for (int i = 0; i < HD; i++) ss += (double)qraw[i] * qraw[i];
            for (int i = 0; i < HD; i++) qh[i] = qraw[i] / sqrt(ss / HD + EPS);
            double m = a->sinks[h];
            for (size_t k = 0; k < r.size(); k++) {
                double d = 0.0;
                for (int i = 0; i < HD; i++) d += qh[i] * (double)r[k][i];
                s[k] = d / sqrt((double)HD);
                if (s[k] > m) m = s[k];
            }
            double den = exp(a->sinks[h] - m), *o = &a->ref[(ci * HEADS + h) * HD];
            for (size_t k = 0; k < r.size(); k++) {
                double e = exp(s[k] - m);
                den += e;
                for (int i = 0; i < HD; i++) o[i] += e * (double)r[k][i];
            }
            for (int i = 0; i < HD; i++) o[i] /= den;
        }
    }
}

/* The kernel shapes: heads a block 16·mb, rows a tile r, Q and P split or
 * not; the prefill runs the first of its variant that fits. */
struct att_shape {
    int mb, r;
    bool split;
};
static const att_shape shapes[] = {{2, 16, false}, {1, 16, false}, {2, 32, false}, {1, 32, false},
                                   {2, 16, true},  {1, 16, true},  {2, 32, true},  {1, 32, true}};
enum { N_SHAPES = sizeof shapes / sizeof shapes[0] };

template <bool SPLIT>
static const void *att_kernel(att_shape sh) {
    return sh.mb == 2 ? (sh.r == 16 ? (const void *)pf_attention<2, HD, SPLIT, 16> : (const void *)pf_attention<2, HD, SPLIT, 32>)
                      : (sh.r == 16 ? (const void *)pf_attention<1, HD, SPLIT, 16> : (const void *)pf_attention<1, HD, SPLIT, 32>);
}
static const void *att_kernel_of(att_shape sh) { return sh.split ? att_kernel<true>(sh) : att_kernel<false>(sh); }

static void launch(const att_data *a, att_shape sh, cudaStream_t st, __half *out16 = NULL) {
    const att_case &c = a->c;
    pf_att pa = {a->d_ring, a->d_kvc, a->d_comp, c.ratio == 4 ? a->d_sel : NULL, c.ratio == 4 ? a->d_nsel : NULL,
                 NSWA, c.ratio, c.pos0, TOPK};
    rope_dev rp = {0, 1.0f, 0, 1.0f, 0.0f, 1.0f};
    dim3 grid(HEADS / (16 * sh.mb), c.T);
    size_t smem = pf_att_smem(sh.mb, HD, TOPK, sh.split, sh.r);
    const float *q = a->d_q, *sinks = a->d_sinks;
    int n_head = HEADS;
    float eps = EPS, *out = a->d_out;
    void *args[] = {&q, &pa, &sinks, &n_head, &eps, &rp, &out, &out16};
    CK(cudaLaunchKernel(att_kernel_of(sh), grid, dim3(128 * sh.mb), args, smem, st));
}

/* The f16 output (out16: what the f16 output projection reads) of the
 * checked tokens against the CPU's Q8_0 quantiser (src/quant
 * ds4_quantize_q8_0_act) applied to the kernel's f32 output, each d·q
 * rounded to f16: the number of values that differ in any bit. */
static long check16(att_data *a, att_shape sh, const std::vector<float> &out) {
    __half *d16;
    CK(cudaMalloc(&d16, a->q.size() * sizeof(__half)));
    CK(cudaMemset(d16, 0xff, a->q.size() * sizeof(__half)));
    launch(a, sh, 0, d16);
    CK(cudaGetLastError());
    std::vector<__half> got(a->q.size());
    CK(cudaMemcpy(got.data(), d16, got.size() * sizeof(__half), cudaMemcpyDeviceToHost));
    CK(cudaFree(d16));
    std::vector<ds4_block_q8_0_act> blk(HEADS * HD / 32);
    long bad = 0;
    for (int t : a->checked) {
        const size_t base = (size_t)t * HEADS * HD;
        ds4_quantize_q8_0_act(&out[base], blk.data(), HEADS * HD);
        for (size_t i = 0; i < (size_t)HEADS * HD; i++) {
            const __half want = __float2half_rn(blk[i / 32].d * (float)blk[i / 32].qs[i % 32]);
            bad += __half_as_ushort(got[base + i]) != __half_as_ushort(want);
        }
    }
    return bad;
}

/* Worst |gpu - ref| / max|ref| of a head over the checked tokens; the f16
 * output's differing values (check16) into *bad16. */
static double check(att_data *a, att_shape sh, long *bad16) {
    CK(cudaMemset(a->d_out, 0xff, a->q.size() * 4));
    launch(a, sh, 0);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    std::vector<float> out(a->q.size());
    CK(cudaMemcpy(out.data(), a->d_out, out.size() * 4, cudaMemcpyDeviceToHost));
    *bad16 = check16(a, sh, out);
    double worst = 0.0;
    for (size_t ci = 0; ci < a->checked.size(); ci++) {
        int t = a->checked[ci];
        for (int h = 0; h < HEADS; h++) {
            const double *ref = &a->ref[(ci * HEADS + h) * HD];
            const float *g = &out[((size_t)t * HEADS + h) * HD];
            double mx = 0.0, md = 0.0;
            for (int i = 0; i < HD; i++) {
                if (fabs(ref[i]) > mx) mx = fabs(ref[i]);
                double d = fabs((double)g[i] - ref[i]);
                if (!(d <= md)) md = d; /* NaN counts as worst */
            }
            double rel = mx > 0 ? md / mx : md;
            if (!(rel <= worst)) worst = rel;
        }
    }
    return worst;
}

/* ---- the indexer: 64 heads of 128, top-k 512 ---- */
enum { IX_HEADS = 64, IX_HD = 128 };

/* The top k of s as ascending indices: numerics.c's order (NaN as -inf, the
 * lower index first among equals) by a full sort. */
static std::vector<int> topk_ref(const std::vector<float> &s, int k) {
    std::vector<int> idx(s.size());
    for (size_t i = 0; i < s.size(); i++) idx[i] = (int)i;
    auto val = [&](int i) { return s[i] != s[i] ? -INFINITY : s[i]; };
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return val(a) > val(b); });
    idx.resize(k);
    std::sort(idx.begin(), idx.end());
    return idx;
}

/* block_topk_ascending's radix path alone (the one-block top-k above
 * TOPK_REG_SLOTS rows a thread), to hold the register path against it. */
__global__ void __launch_bounds__(1024, 1) k_topk_radix(const float *scores, int visible, int *sel) {
    __shared__ topk_radix_smem sm;
    block_topk_radix(scores, visible, TOPK, sel, &sm);
}

/* The decode step's grid top-k (cuda_topk_grid.cuh) over vis rows: its
 * grid form, or its blocks as one cluster (where topk_cluster_fits). */
static void topk_grid_run(bool cluster, const float *d_s, int g, topk_grid_state *d_st, int *d_wa, int *d_wt,
                          int *d_sel, int *d_nsel, const step_io *d_io) {
    if (cluster)
        CK(launch_with(false, g, k_topk_grid<true>, g, TOPK_GRID_THREADS, 0, (cudaStream_t)0, (const float *)d_s,
                       (int)TOPK, 0, d_st, d_wa, d_wt, d_sel, d_nsel, d_io));
    else k_topk_grid<false><<<g, TOPK_GRID_THREADS>>>(d_s, TOPK, 0, d_st, d_wa, d_wt, d_sel, d_nsel, d_io);
}

/* One way of the top-k over vis rows: 0 pf_idx_topk (one block, as the
 * prefill and decode contexts up to TOPK_GRID_MIN rows), 1 the grid top-k
 * (longer decode contexts), 2 the radix path alone in one block, 3 the
 * grid top-k as a cluster. */
static void topk_way(int way, const float *d_s, int vis, int g, topk_grid_state *d_st, int *d_wa, int *d_wt,
                     int *d_sel, int *d_nsel, const step_io *d_io) {
    if (way == 0) pf_idx_topk<<<1, 1024>>>(d_s, 0, TOPK, 4 * vis - 1, d_sel, d_nsel);
    else if (way == 1 || way == 3) topk_grid_run(way == 3, d_s, g, d_st, d_wa, d_wt, d_sel, d_nsel, d_io);
    else k_topk_radix<<<1, 1024>>>(d_s, vis, d_sel);
}


/* The device side of one top-k case: n scores (zeroed), the picks, the
 * grid's state (zeroed) and per-warp counts for g blocks, the step_io. */
struct topk_dev {
    float *s;
    int *sel, *nsel, *wa, *wt;
    topk_grid_state *st;
    step_io *io;
};

static topk_dev topk_dev_new(int n, int g, step_io io) {
    topk_dev d;
    const size_t s_bytes = (size_t)(n > 0 ? n : 1) * 4; /* one score where none is visible */
    CK(cudaMalloc(&d.s, s_bytes));
    CK(cudaMalloc(&d.sel, TOPK * 4));
    CK(cudaMalloc(&d.nsel, 4));
    CK(cudaMalloc(&d.st, sizeof *d.st));
    CK(cudaMalloc(&d.wa, (size_t)g * TOPK_GRID_WARPS * 4));
    CK(cudaMalloc(&d.wt, (size_t)g * TOPK_GRID_WARPS * 4));
    CK(cudaMalloc(&d.io, sizeof io));
    CK(cudaMemset(d.s, 0, s_bytes));
    CK(cudaMemset(d.st, 0, sizeof *d.st));
    CK(cudaMemcpy(d.io, &io, sizeof io, cudaMemcpyHostToDevice));
    return d;
}

static void topk_dev_free(topk_dev &d) {
    CK(cudaFree(d.s));
    CK(cudaFree(d.sel));
    CK(cudaFree(d.nsel));
    CK(cudaFree(d.st));
    CK(cudaFree(d.wa));
    CK(cudaFree(d.wt));
    CK(cudaFree(d.io));
}

/* The top-k of one token seeing s.size() rows against topk_ref, the ways
 * of topk_way, the grid's sized for rows_for rows where that is more (the
 * step's grid is sized for its whole context); their times (ms) into
 * ms[0..3] when ms. */
static bool topk_case(const char *name, const std::vector<float> &s, float *ms, int rows_for = 0) {
    const int vis = (int)s.size(), g = topk_grid_blocks((uint32_t)(rows_for > vis ? rows_for : vis));
    topk_dev d = topk_dev_new(vis, g, step_io{0, 4 * vis - 1, 1});
    CK(cudaMemcpy(d.s, s.data(), s.size() * 4, cudaMemcpyHostToDevice));
    const std::vector<int> ref = topk_ref(s, TOPK);
    bool ok = true;
    const int n_ways = topk_cluster_fits(g) ? 4 : 3;
    for (int way = 0; way < n_ways; way++) {
        CK(cudaMemset(d.sel, 0xff, TOPK * 4));
        CK(cudaMemset(d.nsel, 0, 4));
        /* the grid version twice: its state must be ready again after a step */
        for (int rep = 0; rep < (way == 1 || way == 3 ? 2 : 1); rep++)
            topk_way(way, d.s, vis, g, d.st, d.wa, d.wt, d.sel, d.nsel, d.io);
        CK(cudaGetLastError());
        std::vector<int> sel(TOPK);
        int n_sel = 0;
        CK(cudaMemcpy(sel.data(), d.sel, TOPK * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(&n_sel, d.nsel, 4, cudaMemcpyDeviceToHost));
        bool good = (way == 2 || n_sel == TOPK) && sel == ref; /* k_topk_radix leaves n_sel */
        static const char *const way_name[4] = {"one block:", "grid of blocks:", "radix, one block:",
                                                "cluster of blocks:"};
        printf("indexer top-k, %-38s %6d rows, %-17s %s\n", name, vis, way_name[way], good ? "ok" : "FAIL");
        ok &= good;
        if (ms) {
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            CK(cudaEventRecord(e0));
            for (int k = 0; k < 20; k++) topk_way(way, d.s, vis, g, d.st, d.wa, d.wt, d.sel, d.nsel, d.io);
            CK(cudaEventRecord(e1));
            CK(cudaEventSynchronize(e1));
            CK(cudaEventElapsedTime(&ms[way], e0, e1));
            ms[way] /= 20;
            CK(cudaEventDestroy(e0));
            CK(cudaEventDestroy(e1));
        }
    }
    topk_dev_free(d);
    return ok;
}

/* The grid top-k, in both forms, where at most top_k rows are visible
 * (none at positions 0-2), its grid sized for rows_for rows as where it is
 * the step's only top-k (min_rows 0): n_sel must become -1 whatever an
 * earlier step left there. */
static bool topk_idle_case(int vis, int rows_for) {
    const int g = topk_grid_blocks((uint32_t)rows_for);
    const step_io io = {0, vis ? 4 * vis - 1 : 2, 1};
    topk_dev d = topk_dev_new(vis, g, io);
    bool ok = true;
    for (int cluster = 0; cluster < 1 + topk_cluster_fits(g); cluster++) {
        const int stale = TOPK;
        CK(cudaMemcpy(d.nsel, &stale, 4, cudaMemcpyHostToDevice));
        topk_grid_run(cluster, d.s, g, d.st, d.wa, d.wt, d.sel, d.nsel, d.io);
        CK(cudaGetLastError());
        int n_sel = 0;
        CK(cudaMemcpy(&n_sel, d.nsel, 4, cudaMemcpyDeviceToHost));
        printf("indexer top-k, %d rows visible at position %d, %s of %d blocks: n_sel %d %s\n", vis, io.pos,
               cluster ? "cluster" : "grid", g, n_sel, n_sel == -1 ? "ok" : "FAIL");
        ok &= n_sel == -1;
    }
    topk_dev_free(d);
    return ok;
}

/* Scores of one token seeing vis rows, the row tiles over ny blocks. */
static std::vector<float> scores_run(const float *d_q, const float *d_w, const __half *d_rows, int vis, int ny,
                                     float *d_s, int *d_pos) {
    int pos = 4 * vis - 1;
    CK(cudaMemcpy(d_pos, &pos, 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(d_s, 0xff, (size_t)vis * 4));
    idx_scores<<<dim3(1, ny), IX_THREADS, idx_scores_smem(IX_HEADS, IX_HD)>>>(d_q, d_w, d_rows, IX_HD, IX_HEADS, 0,
                                                                            d_pos, TOPK, d_s, 0);
    CK(cudaGetLastError());
    std::vector<float> s(vis);
    CK(cudaMemcpy(s.data(), d_s, s.size() * 4, cudaMemcpyDeviceToHost));
    return s;
}

static int indexer_checks(void) {
    const int vis = 16384, big = 262144;
    int failed = 0, dev = 0, n_sm = 0, per_sm = 0;
    size_t smem = idx_scores_smem(IX_HEADS, IX_HD);
    CK(cudaFuncSetAttribute(idx_scores, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    CK(cudaDeviceGetAttribute(&n_sm, cudaDevAttrMultiProcessorCount, dev));
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, idx_scores, IX_THREADS, smem));
    std::vector<float> q((size_t)IX_HEADS * IX_HD), w(IX_HEADS);
    std::vector<__half> rows((size_t)big * IX_HD);
    for (float &v : q) v = (float)urand();
    for (float &v : w) v = (float)(0.1 * urand());
    for (__half &v : rows) v = __float2half_rn((float)urand());
    float *d_q, *d_w, *d_s;
    __half *d_rows;
    int *d_pos;
    CK(cudaMalloc(&d_q, q.size() * 4));
    CK(cudaMalloc(&d_w, w.size() * 4));
    CK(cudaMalloc(&d_rows, rows.size() * 2));
    CK(cudaMalloc(&d_s, (size_t)big * 4));
    CK(cudaMalloc(&d_pos, 4));
    CK(cudaMemcpy(d_q, q.data(), q.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_w, w.data(), w.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_rows, rows.data(), rows.size() * 2, cudaMemcpyHostToDevice));
    /* scores: the same bits on any grid, close to a double reference */
    std::vector<float> s1 = scores_run(d_q, d_w, d_rows, vis, 1, d_s, d_pos);
    bool same = true;
    for (int ny : {37, vis / IX_ROWS, 300}) same &= scores_run(d_q, d_w, d_rows, vis, ny, d_s, d_pos) == s1;
    double mx = 0.0, md = 0.0;
    for (int c = 0; c < vis; c++) {
        double sc = 0.0;
        for (int h = 0; h < IX_HEADS; h++) {
            const float *qh = &q[(size_t)h * IX_HD];
            const __half *k = &rows[(size_t)c * IX_HD];
            double d = 0.0;
            for (int i = 0; i < IX_HD; i++) d += (double)qh[i] * (double)__half2float(k[i]);
            sc += (d > 0.0 ? d : 0.0) * w[h];
        }
        mx = fabs(sc) > mx ? fabs(sc) : mx;
        double err = fabs((double)s1[c] - sc);
        if (!(err <= md)) md = err;
    }
    bool close = md <= 1e-5 * mx;
    /* at most top_k visible rows: nothing written */
    int pos = 4 * TOPK - 1;
    CK(cudaMemcpy(d_pos, &pos, 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(d_s, 0xff, TOPK * 4));
    idx_scores<<<dim3(1, 4), IX_THREADS, smem>>>(d_q, d_w, d_rows, IX_HD, IX_HEADS, 0, d_pos, TOPK, d_s, 0);
    std::vector<unsigned> untouched(TOPK);
    CK(cudaMemcpy(untouched.data(), d_s, TOPK * 4, cudaMemcpyDeviceToHost));
    bool idle = true;
    for (unsigned u : untouched) idle &= u == 0xffffffffu;
    printf("indexer scores, %d rows: grids of 1, 37, 256, 300 blocks %s; worst |d|/max|ref| %.3g %s; "
           "%d rows visible: nothing written %s\n",
           vis, same ? "identical" : "DIFFER", md / mx, close ? "ok" : "FAIL", TOPK, idle ? "ok" : "FAIL");
    failed += !same + !close + !idle;
    /* top-k */
    std::vector<float> t(big);
    failed += !topk_case("of the scores above", s1, NULL);
    for (int i = 0; i < big; i++) t[i] = (float)(int)((urand() + 1.0) * 2.5);
    failed += !topk_case("5 values (ties)", std::vector<float>(t.begin(), t.begin() + vis), NULL);
    failed += !topk_case("5 values (ties)", t, NULL);
    for (int i = 0; i < big; i++) t[i] = i % 7 == 0 ? NAN : i % 3 == 0 ? -0.0f : i % 3 == 1 ? 0.0f : -1.0f;
    failed += !topk_case("NaN, -0, +0, -1", t, NULL);
    for (int i = 0; i < 600; i++) t[i] = i % 6 == 0 ? NAN : (float)urand();
    failed += !topk_case("NaN among 500 values", std::vector<float>(t.begin(), t.begin() + 600), NULL);
    failed += !topk_case("all equal", std::vector<float>(TOPK + 1, 2.5f), NULL);
    failed += !topk_case("all equal", std::vector<float>(20000, -1.5f), NULL);
    for (int i = 0; i < 20000; i++) t[i] = (float)(urand() - 0.5) * (i % 2 ? 1e-3f : 1e3f);
    failed += !topk_case("both signs, two scales", std::vector<float>(t.begin(), t.begin() + 20000), NULL);
    /* the grid sized for the whole context at positions that see few rows:
     * just past the one block's TOPK_ONE_ROWS, and (DS4_CUDA_TOPK_GRID=1,
     * the grid alone) hardly more than top_k */
    for (int i = 0; i < TOPK_ONE_ROWS + 4; i++) t[i] = (float)urand();
    failed += !topk_case("uniform, grid for 16400 rows", std::vector<float>(t.begin(), t.begin() + 600), NULL, 16400);
    failed += !topk_case("uniform, grid for 32768 rows",
                         std::vector<float>(t.begin(), t.begin() + TOPK_ONE_ROWS + 4), NULL, 32768);
    for (int v : {0, 1, (int)TOPK}) failed += !topk_idle_case(v, 16400);
    /* the register path's sizes: one key a thread, several, the largest, one past it */
    for (int n : {1024, 1025, 3000, 8192, 8193}) {
        for (int i = 0; i < n; i++) t[i] = (float)(int)((urand() + 1.0) * 2.5);
        failed += !topk_case("5 values (ties)", std::vector<float>(t.begin(), t.begin() + n), NULL);
        for (int i = 0; i < n; i++) t[i] = i % 7 == 0 ? NAN : i % 3 == 0 ? -0.0f : i % 3 == 1 ? 0.0f : -1.0f;
        failed += !topk_case("NaN, -0, +0, -1", std::vector<float>(t.begin(), t.begin() + n), NULL);
        for (int i = 0; i < n; i++) t[i] = i % 5 == 0 ? -INFINITY : i % 5 == 1 ? INFINITY : (float)urand();
        failed += !topk_case("+-inf among values", std::vector<float>(t.begin(), t.begin() + n), NULL);
        /* keys equal but for the last bits: every radix digit matters */
        for (int i = 0; i < n; i++) t[i] = 1.0f + (float)(int)((urand() + 1.0) * 20) * 1.2e-7f;
        failed += !topk_case("nearly equal", std::vector<float>(t.begin(), t.begin() + n), NULL);
    }
    /* times */
    for (int n : {1024, 4096, 8192, vis, 32768, big}) {
        float ms_t[4] = {0, 0, 0, 0}, ms_s = 0;
        for (int i = 0; i < n; i++) t[i] = (float)urand();
        failed += !topk_case("uniform", std::vector<float>(t.begin(), t.begin() + n), ms_t);
        int tiles = n / IX_ROWS, ny = tiles < n_sm * per_sm ? tiles : n_sm * per_sm;
        pos = 4 * n - 1;
        CK(cudaMemcpy(d_pos, &pos, 4, cudaMemcpyHostToDevice));
        cudaEvent_t e0, e1;
        CK(cudaEventCreate(&e0));
        CK(cudaEventCreate(&e1));
        CK(cudaEventRecord(e0));
        for (int k = 0; k < 20; k++)
            idx_scores<<<dim3(1, ny), IX_THREADS, smem>>>(d_q, d_w, d_rows, IX_HD, IX_HEADS, 0, d_pos, TOPK, d_s, 0);
        CK(cudaEventRecord(e1));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms_s, e0, e1));
        printf("time, indexer of one token over %d rows: scores %.1f us (%d blocks), top-k %.1f us (one block), "
               "%.1f us (grid, %d blocks), %.1f us (radix, one block), %.1f us (cluster; 0: not run)\n",
               n, ms_s / 20 * 1e3, ny, ms_t[0] * 1e3, ms_t[1] * 1e3, topk_grid_blocks((uint32_t)n),
               ms_t[2] * 1e3, ms_t[3] * 1e3);
        CK(cudaEventDestroy(e0));
        CK(cudaEventDestroy(e1));
    }
    CK(cudaFree(d_q));
    CK(cudaFree(d_w));
    CK(cudaFree(d_rows));
    CK(cudaFree(d_s));
    CK(cudaFree(d_pos));
    return failed;
}

/* ---- the greedy pick ---- */

static int32_t argmax_plain(const std::vector<float> &x, int32_t skip) {
    int32_t best = -1;
    for (int32_t i = 0; i < (int32_t)x.size(); i++)
        if (i != skip && x[i] > -INFINITY && (best < 0 || x[i] > x[best])) best = i;
    return best >= 0 ? best : skip == 0 && x.size() > 1 ? 1 : 0;
}

/* One case: k_pick2 twice, each time every skip checked. */
static bool pick_case(const char *name, const std::vector<float> &x, pick_cand *d_part, unsigned *d_count,
                      int32_t *d_pick) {
    const int n = (int)x.size();
    float *d_x = NULL, *d_v = NULL;
    CK(cudaMalloc(&d_x, sizeof(float) * n));
    CK(cudaMalloc(&d_v, 2 * sizeof(float)));
    CK(cudaMemcpy(d_x, x.data(), sizeof(float) * n, cudaMemcpyHostToDevice));
    int bad = 0;
    for (int run = 0; run < 2; run++) {
        /* the first run also writes the two picks' logits (the MTP draft's margin) */
        k_pick2<<<PICK_BLOCKS, PICK_THREADS>>>(d_x, n, d_part, d_count, d_pick, run ? NULL : d_v);
        CK(cudaGetLastError());
        int32_t pk[2];
        CK(cudaMemcpy(pk, d_pick, sizeof pk, cudaMemcpyDeviceToHost));
        if (!run) {
            float v[2];
            CK(cudaMemcpy(v, d_v, sizeof v, cudaMemcpyDeviceToHost));
            for (int k = 0; k < 2; k++) bad += pk[k] >= 0 && v[k] != x[pk[k]];
        }
        const int32_t skips[] = {-1, 0, 1, n - 1, n / 2, argmax_plain(x, -1), pk[1] >= 0 ? pk[1] : 2};
        for (int32_t skip : skips) {
            int32_t t = pk[0] != skip ? pk[0] : pk[1];
            if (t < 0) t = skip == 0 && n > 1 ? 1 : 0;
            bad += t != argmax_plain(x, skip);
        }
    }
    CK(cudaFree(d_x));
    CK(cudaFree(d_v));
    printf("greedy pick, %-36s %6d logits: %s\n", name, n, bad ? "FAIL" : "ok");
    return bad == 0;
}

static int pick_checks(void) {
    pick_cand *d_part = NULL;
    unsigned *d_count = NULL;
    int32_t *d_pick = NULL;
    CK(cudaMalloc(&d_part, sizeof(pick_cand) * 2 * PICK_BLOCKS));
    CK(cudaMalloc(&d_count, sizeof(unsigned)));
    CK(cudaMalloc(&d_pick, 2 * sizeof(int32_t)));
    CK(cudaMemset(d_count, 0, sizeof(unsigned)));
    int failed = 0;
    const int sizes[] = {129280, 1000, 33, 2, 1};
    for (int n : sizes) {
        std::vector<float> x(n);
        for (float &v : x) v = (float)urand() * 20.0f;
        failed += !pick_case("random", x, d_part, d_count, d_pick);
        if (n > 2) { /* the maximum twice, in different blocks' slices where there are several */
            x[n - 1] = x[n / 3] = 25.0f;
            failed += !pick_case("tied maximum", x, d_part, d_count, d_pick);
            x[0] = 25.0f; /* three of them, the first at 0 */
            failed += !pick_case("tied maximum at 0", x, d_part, d_count, d_pick);
        }
        for (int i = 0; i < n; i++) x[i] = i % 3 ? NAN : (float)urand(); /* NaN never wins */
        failed += !pick_case("NaN among values", x, d_part, d_count, d_pick);
        for (int i = 0; i < n; i++) x[i] = i % 5 == 1 ? INFINITY : i % 5 == 2 ? -INFINITY : (float)urand();
        failed += !pick_case("+-inf among values", x, d_part, d_count, d_pick);
        std::fill(x.begin(), x.end(), -INFINITY);
        failed += !pick_case("all -inf", x, d_part, d_count, d_pick);
        x[n - 1] = -3.0f;
        failed += !pick_case("one finite, last", x, d_part, d_count, d_pick);
        for (int i = 0; i < n; i++) x[i] = i % 2 ? NAN : -INFINITY;
        failed += !pick_case("NaN and -inf only", x, d_part, d_count, d_pick);
        std::fill(x.begin(), x.end(), 1.5f);
        failed += !pick_case("all equal", x, d_part, d_count, d_pick);
    }
    CK(cudaFree(d_part));
    CK(cudaFree(d_count));
    CK(cudaFree(d_pick));
    return failed;
}

int main(void) {
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device\n");
        return 77;
    }
    int optin = 0;
    CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
    bool fits[N_SHAPES];
    for (int i = 0; i < N_SHAPES; i++) {
        att_shape sh = shapes[i];
        size_t smem = pf_att_smem(sh.mb, HD, TOPK, sh.split, sh.r);
        fits[i] = smem <= (size_t)optin;
        printf("%d heads a block, %d-row tiles, %s: %zu bytes of shared memory%s\n", 16 * sh.mb, sh.r,
               sh.split ? "split" : "f16", smem, fits[i] ? "" : " (over the device's limit: not run)");
        if (!fits[i]) continue;
        const void *f = att_kernel_of(sh);
        CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
        CK(cudaFuncSetAttribute(f, cudaFuncAttributePreferredSharedMemoryCarveout, 100));
    }
    att_case cases[] = {{"ratio 4, selection, chunk at 4096", 4, 4096, 4096},
                        {"ratio 128 from position 0", 128, 0, 300},
                        {"ratio 0 at 200", 0, 200, 150}};
    int failed = 0;
    for (const att_case &c : cases) {
        att_data a = {};
        a.c = c;
        make_data(&a);
        reference(&a);
        for (int i = 0; i < N_SHAPES; i++) {
            if (!fits[i]) continue;
            long bad16 = 0;
            double w = check(&a, shapes[i], &bad16);
            bool ok = w <= (shapes[i].split ? 1e-4 : 2e-3) && bad16 == 0;
            failed += !ok;
            printf("%-34s %2d heads, %d rows, %-5s: worst |d|/max|ref| %.3g, f16 output: %ld values off the CPU's "
                   "Q8_0 %s\n",
                   c.name, 16 * shapes[i].mb, shapes[i].r, shapes[i].split ? "split" : "f16", w, bad16,
                   ok ? "ok" : "FAIL");
        }
        if (c.ratio == 4) {
            /* time: 640 rows a token (128 window + 512 selected) */
            cudaEvent_t e0, e1;
            CK(cudaEventCreate(&e0));
            CK(cudaEventCreate(&e1));
            double flop = 4.0 * c.T * HEADS * (double)(NSWA + TOPK) * HD;
            for (int i = 0; i < N_SHAPES; i++) {
                if (!fits[i]) continue;
                launch(&a, shapes[i], 0);
                CK(cudaEventRecord(e0));
                for (int k = 0; k < 5; k++) launch(&a, shapes[i], 0);
                CK(cudaEventRecord(e1));
                CK(cudaEventSynchronize(e1));
                float ms = 0;
                CK(cudaEventElapsedTime(&ms, e0, e1));
                ms /= 5;
                printf("time, %d tokens x 640 rows, %2d heads, %d rows, %-5s: %.3f ms (%.0f TFLOP/s)\n", c.T,
                       16 * shapes[i].mb, shapes[i].r, shapes[i].split ? "split" : "f16", ms,
                       flop / (ms * 1e-3) * 1e-12);
            }
        }
        free_data(&a);
    }
    failed += indexer_checks();
    failed += pick_checks();
    printf("tests/test_cuda_attention.cu: %s\n", failed ? "FAILED" : "ok");
    return failed ? 1 : 0;
}
