/* cuda_mmq_bench.cuh — the batched products' part of ds4-cuda-bench
 * (included by cuda_bench.cu after its helpers).
 *
 *   mmq_host_check()   no GPU: decodes random weight blocks with the tensor
 *                      kernels' decode (cuda_mmq.cuh), forms the per-segment
 *                      integer dots, the split min sums and the f32 block
 *                      terms exactly as k_tc does, sums blocks in order and
 *                      requires ds4_dot's bits.
 *   mmq_bench(quick)   on a GPU, for every format and prefill shape: the
 *                      batched quantisation against ds4_quantize_act byte for
 *                      byte (all tokens), the tensor-core and plain products
 *                      against ds4_dot on the CPU (sampled tokens, every row;
 *                      the error is max |gpu - cpu| / max |cpu| per token,
 *                      tolerance 1e-5, and the count of outputs that are not
 *                      bit-identical), the routed MoE against a CPU loop of
 *                      moe.c's formula; then times each product (median of
 *                      graph replays) in µs and TFLOP/s. */
#include <sys/mman.h>

#include "cuda_mmq.cuh"
#include "cuda_mmq.h"

/* ---- host check ---- */

/* One token's activation in the mmq split layout, from the CPU blocks. */
struct mq_host_act {
    std::vector<int8_t> q;
    std::vector<float> d;
    std::vector<int8_t> split; /* per 256 block: lo[16], hi[16] */
};

static void mq_host_split(uint32_t wtype, const void *act, uint32_t n, mq_host_act *h) {
    bool q80 = wtype == DS4_TYPE_Q8_0;
    uint32_t bsz = q80 ? 32 : 256, nb = n / bsz;
    h->q.resize(n);
    h->d.resize(nb);
    h->split.assign(32 * (size_t)nb, 0);
    for (uint32_t b = 0; b < nb; b++) {
        if (q80) {
            const ds4_block_q8_0_act *a = (const ds4_block_q8_0_act *)act + b;
            memcpy(&h->q[32 * b], a->qs, 32);
            h->d[b] = a->d;
        } else {
            const ds4_block_q8_K *a = (const ds4_block_q8_K *)act + b;
            memcpy(&h->q[256 * b], a->qs, 256);
            h->d[b] = a->d;
            for (int j = 0; j < 16; j++) {
                h->split[32 * b + j] = (int8_t)(a->bsums[j] & 63);
                h->split[32 * b + 16 + j] = (int8_t)(a->bsums[j] >> 6);
            }
        }
    }
}

/* One row through k_tc's arithmetic, summed in block order. */
template <class F>
static float mq_emulate_row(const uint8_t *row, uint32_t in, const mq_host_act &a, const uint32_t *tab) {
    uint32_t nkb = (in + 255) / 256;
    float acc = 0.0f;
    for (uint32_t kb = 0; kb < nkb; kb++) {
        int nk = (int)F::act_kind == DS4_ACT_Q8_0 ? (int)std::min(8u, in / 32 - kb * 8) : 8;
        int8_t codes[256];
        float wd[8] = {0}, dmin = 0.0f;
        int sc[8] = {0};
        int8_t mins[16] = {0};
        for (int s = 0; s < F::TPR; s++) {
            if ((int)F::act_kind == DS4_ACT_Q8_0 && s >= nk) continue;
            typename F::raw r;
            F::load(row, kb, s, r);
            uint32_t c[8 * F::SEGS];
            mq_meta m;
            F::decode(r, s, tab, c, m);
            memcpy(codes + 32 * F::SEGS * s, c, sizeof c);
            if ((int)F::act_kind == DS4_ACT_Q8_0) wd[s] = m.d[0];
            else if (s == 0) wd[0] = m.d[0], dmin = m.d[1];
            for (int sg = 0; sg < F::SEGS && F::int_scale; sg++) sc[s * F::SEGS + sg] = m.sc[sg];
            const int nmin = F::folded ? 8 : 4;
            for (int j = 0; j < nmin && F::has_min; j++) mins[s * nmin + j] = (int8_t)m.mins[j];
        }
        int32_t isum = 0;
        for (int s = 0; s < nk; s++) {
            int32_t dot = 0;
            for (int i = 0; i < 32; i++) dot += codes[32 * s + i] * a.q[256 * kb + 32 * s + i];
            if ((int)F::act_kind == DS4_ACT_Q8_0) acc += F::term(wd[s], 0.0f, a.d[8 * kb + s], dot, 0);
            else if (F::int_scale) isum += sc[s] * dot;
            else isum += dot;
        }
        if ((int)F::act_kind == DS4_ACT_Q8_K) {
            int32_t slo = 0, shi = 0;
            for (int j = 0; j < 16 && F::has_min; j++) {
                slo += mins[j] * a.split[32 * kb + j];
                shi += mins[j] * a.split[32 * kb + 16 + j];
            }
            acc += F::term(wd[0], dmin, a.d[kb], isum, 64 * shi + slo);
        }
    }
    return acc * F::final_scale;
}

template <class F>
static int mq_host_check_format(uint32_t wtype, uint32_t in, uint32_t rows, const uint32_t *tab, uint64_t *seed) {
    uint32_t row_bytes = (uint32_t)ds4_type_row_bytes(wtype, in);
    /* Rows back to back, ending exactly where an inaccessible page starts:
     * a decode that reads past the last block crashes the check. */
    size_t bytes = (size_t)row_bytes * rows, page = 4096, span = (bytes + page - 1) / page * page;
    uint8_t *map = (uint8_t *)mmap(NULL, span + 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED || mprotect(map + page + span, page, PROT_NONE)) {
        printf("host-check mmq: mmap failed\n");
        return 1;
    }
    uint8_t *base = map + page + span - bytes;
    std::vector<float> x(in);
    std::vector<uint8_t> act(ds4_act_row_bytes(wtype, in));
    random_activation(x.data(), in, seed);
    ds4_quantize_act(wtype, x.data(), act.data(), in);
    mq_host_act ha;
    mq_host_split(wtype, act.data(), in, &ha);
    random_blocks(wtype, base, (uint64_t)in / ds4_type_info_get(wtype)->block_elems * rows, seed);
    int bad = 0;
    for (uint32_t r = 0; r < rows; r++) {
        const uint8_t *row = base + (size_t)r * row_bytes;
        float want = ds4_dot(wtype, in, row, act.data()), got = mq_emulate_row<F>(row, in, ha, tab);
        if (memcmp(&got, &want, 4)) {
            if (bad < 3) printf("  %s n_in %u row %u: mmq %.9g, CPU %.9g\n", type_name(wtype), in, r, got, want);
            bad++;
        }
    }
    munmap(map, span + 2 * page);
    printf("host-check mmq %-8s n_in %5u: %u rows, %d differ from ds4_dot\n", type_name(wtype), in, rows, bad);
    return bad;
}

static int mmq_host_check(void) {
    uint32_t tab[DS4_CUDA_IQ2_TABLE_WORDS];
    if (!ds4_cuda_iq2_tables(tab)) return 1;
    uint64_t seed = 777;
    int bad = 0;
    for (uint32_t n : {256u, 1024u, 4096u}) {
        bad += mq_host_check_format<mq_q8_0>(DS4_TYPE_Q8_0, n, 48, tab, &seed);
        bad += mq_host_check_format<mq_q2_K>(DS4_TYPE_Q2_K, n, 48, tab, &seed);
        bad += mq_host_check_format<mq_q4_K>(DS4_TYPE_Q4_K, n, 48, tab, &seed);
        bad += mq_host_check_format<mq_iq2_xxs>(DS4_TYPE_IQ2_XXS, n, 48, tab, &seed);
    }
    bad += mq_host_check_format<mq_q8_0>(DS4_TYPE_Q8_0, 96, 48, tab, &seed);
    bad += mq_host_check_format<mq_q8_0>(DS4_TYPE_Q8_0, 416, 48, tab, &seed);
    /* The float-bits conversion of Q8_0 block sums (set_kernel 130 / 131)
     * equals (float)isum for every sum a block can have. */
    long fb_bad = 0;
    for (int32_t isum = -32 * 128 * 128; isum <= 32 * 128 * 128; isum++) {
        float a = mq_fb_float(isum + MQ_FB_BIAS), b = (float)isum;
        fb_bad += memcmp(&a, &b, sizeof a) != 0;
    }
    printf("host-check mmq Q8_0 float-bits sums: %ld of %d differ\n", fb_bad, 2 * 32 * 128 * 128 + 1);
    bad += fb_bad != 0;
    /* MoE tiles per expert: every pair has a slot, fewer than 64 unused,
     * each 128 tile more than 64 pairs (k_plan's grid bound n_pairs / 65),
     * at most one 64 tile with big = 1. */
    int tiles_bad = 0;
    for (int big = 0; big < 2; big++)
        for (int c = 0; c <= 5000; c++) {
            int nb, ns;
            mq_moe_tiles(c, big, &nb, &ns);
            /* pairs fill the 128 tiles first: the last one holds last128 */
            int waste = 128 * nb + 64 * ns - c, last128 = std::min(c, 128 * nb) - 128 * (nb - 1);
            tiles_bad += waste < 0 || waste >= 64 || (big ? ns > 1 : nb != 0) || (nb > 0 && last128 <= 64);
        }
    printf("host-check mmq MoE tiles: %d of 10002 expert sizes wrong\n", tiles_bad);
    bad += tiles_bad != 0;
    printf("host-check mmq: %s\n", bad ? "FAIL" : "ok");
    return bad ? 1 : 0;
}

/* ---- GPU checks and timings ---- */

struct mq_result {
    char name[48], shape[64];
    double us, tflops, err;
    long inexact, act_bad;
    bool ok;
};
static std::vector<mq_result> g_mq_results;

static void mq_add(const char *name, const char *shape, double flop, double us, double err, long inexact, long act_bad,
                   bool ok) {
    mq_result r;
    snprintf(r.name, sizeof r.name, "%s", name);
    snprintf(r.shape, sizeof r.shape, "%s", shape);
    r.us = us;
    r.tflops = us > 0 ? flop / (us * 1e-6) / 1e12 : 0.0;
    r.err = err;
    r.inexact = inexact;
    r.act_bad = act_bad;
    r.ok = ok;
    if (!ok) g_failures++;
    g_mq_results.push_back(r);
    printf("%-22s %-34s %10.1f us %7.1f TFLOP/s  err %.2e  inexact %ld  act-mismatch %ld  %s\n", r.name, r.shape, r.us,
           r.tflops, r.err, r.inexact, r.act_bad, ok ? "ok" : "FAIL");
    fflush(stdout);
}

/* The CPU's activation bytes of token t (width n) from the mmq layout on
 * the host (a copy of the device buffer). */
static void mq_to_cpu_act(uint32_t wtype, const uint8_t *lay, uint32_t n, uint32_t n_tok, uint32_t t, uint8_t *out) {
    int kind = wtype == DS4_TYPE_Q8_0 ? DS4_ACT_Q8_0 : DS4_ACT_Q8_K;
    mq_act_layout l = mq_layout(kind, (size_t)n * n_tok);
    const int8_t *q = (const int8_t *)lay + (size_t)t * n;
    if (kind == DS4_ACT_Q8_0) {
        const float *d = (const float *)(lay + l.d) + (size_t)t * n / 32;
        ds4_block_q8_0_act *b = (ds4_block_q8_0_act *)out;
        for (uint32_t i = 0; i < n / 32; i++) {
            b[i].d = d[i];
            memcpy(b[i].qs, q + 32 * i, 32);
        }
    } else {
        const float *d = (const float *)(lay + l.d) + (size_t)t * n / 256;
        const int16_t *bs = (const int16_t *)(lay + l.bs) + (size_t)t * n / 16;
        ds4_block_q8_K *b = (ds4_block_q8_K *)out;
        for (uint32_t i = 0; i < n / 256; i++) {
            b[i].d = d[i];
            memcpy(b[i].qs, q + 256 * i, 256);
            memcpy(b[i].bsums, bs + 16 * i, 32);
        }
    }
}

/* Tokens the CPU checks: the first, the last, and a spread between. */
static std::vector<uint32_t> mq_sample(uint32_t n_tok, uint32_t want) {
    std::vector<uint32_t> s;
    for (uint32_t i = 0; i < want && i < n_tok; i++) s.push_back(want >= n_tok ? i : (uint32_t)((uint64_t)i * (n_tok - 1) / (want - 1)));
    return s;
}

/* Dense product case: rows = n_groups * group rows; in per group. */
static void mq_case(ds4_cuda_kernels *k, cudaStream_t st, const char *name, uint32_t wtype, uint32_t in, uint32_t rows,
                    uint32_t n_groups, uint32_t n_tok, int reps, uint64_t seed, bool plain_too) {
    if (!selected(name)) return;
    uint32_t width = in * n_groups;
    size_t wbytes = (wtype == DS4_TYPE_F16 ? 2 * (size_t)in : ds4_type_row_bytes(wtype, in)) * rows;
    uint8_t *d_w;
    CK(cudaMalloc(&d_w, wbytes + 256));
    device_random_weights(wtype, d_w, wbytes, seed);
    std::vector<float> x((size_t)width * n_tok);
    uint64_t s = seed;
    for (uint32_t t = 0; t < n_tok; t++) random_activation(&x[(size_t)t * width], width, &s);
    float *d_x, *d_y;
    uint8_t *d_act;
    size_t ab = ds4_cuda_mmq_act_bytes(wtype, width, n_tok);
    CK(cudaMalloc(&d_x, x.size() * 4));
    CK(cudaMalloc(&d_act, ab));
    CK(cudaMalloc(&d_y, (size_t)rows * n_tok * 4));
    CK(cudaMemcpy(d_x, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    DS(ds4_cuda_mmq_quantize(k, wtype, d_x, width, n_tok, d_act, st, &err_));
    CK(cudaStreamSynchronize(st));
    std::vector<uint8_t> lay(ab), hw(wbytes);
    CK(cudaMemcpy(lay.data(), d_act, ab, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(hw.data(), d_w, wbytes, cudaMemcpyDeviceToHost));
    size_t crow = ds4_act_row_bytes(wtype, width);
    std::vector<uint8_t> cpu_act(crow), gpu_act(crow);
    long act_bad = 0;
    if (wtype != DS4_TYPE_F16)
        for (uint32_t t = 0; t < n_tok; t++) {
            ds4_quantize_act(wtype, &x[(size_t)t * width], cpu_act.data(), width);
            mq_to_cpu_act(wtype, lay.data(), width, n_tok, t, gpu_act.data());
            act_bad += memcmp(cpu_act.data(), gpu_act.data(), crow) != 0;
        }
    /* CPU reference for sampled tokens, every row. */
    std::vector<uint32_t> ts = mq_sample(n_tok, n_tok <= 64 ? n_tok : 6);
    size_t wrow = wbytes / rows, gact = ds4_act_row_bytes(wtype, in);
    std::vector<float> ref((size_t)ts.size() * rows);
    for (size_t i = 0; i < ts.size(); i++) {
        ds4_quantize_act(wtype, &x[(size_t)ts[i] * width], cpu_act.data(), width);
        for (uint32_t r = 0; r < rows; r++) {
            uint32_t g = r / (rows / n_groups);
            ref[i * rows + r] = ds4_dot(wtype, in, hw.data() + r * wrow, cpu_act.data() + g * gact);
        }
    }
    char shape[64];
    snprintf(shape, sizeof shape, "%s %ux(%u->%u) tok %u", type_name(wtype), n_groups, in, rows / n_groups, n_tok);
    double flop = 2.0 * rows * in * (double)n_tok;
    /* Every kernel variant: 0 = the automatic choice, 1 = plain (F16: the
     * CUDA-core kernel), 64 / 128 / 129 = tensor-core tile widths. */
    std::vector<int> kinds = {0};
    if (plain_too || wtype == DS4_TYPE_F16) kinds.push_back(1);
    if (wtype != DS4_TYPE_F16) kinds.insert(kinds.end(), {64, 128, 129});
    if (wtype == DS4_TYPE_Q8_0) kinds.insert(kinds.end(), {130, 131});
    for (int kind : kinds) {
        ds4_cuda_mmq_set_kernel(kind);
        CK(cudaMemsetAsync(d_y, 0xff, (size_t)rows * n_tok * 4, st));
        DS(ds4_cuda_mmq_grouped(k, wtype, d_w, rows, in, n_groups, d_act, n_tok, d_y, rows, st, &err_));
        CK(cudaStreamSynchronize(st));
        std::vector<float> y((size_t)rows * n_tok);
        CK(cudaMemcpy(y.data(), d_y, y.size() * 4, cudaMemcpyDeviceToHost));
        double err = 0.0;
        long inexact = 0;
        for (size_t i = 0; i < ts.size(); i++) {
            const float *g = &y[(size_t)ts[i] * rows], *c = &ref[i * rows];
            err = std::max(err, rel_err(g, c, rows));
            for (uint32_t r = 0; r < rows; r++) inexact += memcmp(&g[r], &c[r], 4) != 0;
        }
        /* Quantised products must equal ds4_dot bit for bit. */
        bool ok = err <= 1e-5 && act_bad == 0 && (wtype == DS4_TYPE_F16 || inexact == 0);
        timing t = {0, 0};
        if (reps > 0)
            t = time_graph(st, 3, reps, [&](int i) {
                DS(ds4_cuda_mmq_grouped(k, wtype, d_w, rows, in, n_groups, d_act, n_tok, d_y, rows, st, &err_));
            });
        char nm[64];
        if (kind == 0) snprintf(nm, sizeof nm, "%s", name);
        else if (kind == 1) snprintf(nm, sizeof nm, "%s (%s)", name, wtype == DS4_TYPE_F16 ? "cuda cores" : "plain");
        else if (kind >= 130) snprintf(nm, sizeof nm, "%s (BN 128%s fb)", name, kind == 130 ? " 1 buf" : "");
        else snprintf(nm, sizeof nm, "%s (BN %d%s)", name, kind == 129 ? 128 : kind, kind == 129 ? " 1 buf" : "");
        mq_add(nm, shape, flop, t.us, err, inexact, act_bad, ok);
    }
    ds4_cuda_mmq_set_kernel(0);
    CK(cudaFree(d_w));
    CK(cudaFree(d_x));
    CK(cudaFree(d_act));
    CK(cudaFree(d_y));
}

/* Routed MoE case: random routing (distinct experts per token), the CPU
 * loop of moe.c on sampled tokens. */
static void mq_moe_case(ds4_cuda_kernels *k, cudaStream_t st, const char *name, uint32_t gtype, uint32_t dtype,
                        uint32_t n_embd, uint32_t n_ff, uint32_t n_expert, uint32_t n_used, uint32_t n_tok, int reps,
                        uint64_t seed) {
    if (!selected(name)) return;
    if (n_embd % ds4_type_info_get(gtype)->block_elems || n_ff % ds4_type_info_get(dtype)->block_elems) {
        fprintf(stderr, "%s: n_embd %u / n_ff %u are not whole blocks of the weight types\n", name, n_embd, n_ff);
        exit(2);
    }
    size_t grb = ds4_type_row_bytes(gtype, n_embd), drb = ds4_type_row_bytes(dtype, n_ff);
    size_t gbytes = grb * n_ff * n_expert, dbytes = drb * n_embd * n_expert;
    uint8_t *d_gate, *d_up, *d_down;
    CK(cudaMalloc(&d_gate, gbytes));
    CK(cudaMalloc(&d_up, gbytes));
    CK(cudaMalloc(&d_down, dbytes));
    device_random_weights(gtype, d_gate, gbytes, seed);
    device_random_weights(gtype, d_up, gbytes, seed + 1);
    device_random_weights(dtype, d_down, dbytes, seed + 2);
    uint64_t s = seed;
    std::vector<float> x((size_t)n_embd * n_tok), add((size_t)n_embd * n_tok), wts((size_t)n_tok * n_used);
    std::vector<int32_t> ids((size_t)n_tok * n_used);
    for (uint32_t t = 0; t < n_tok; t++) {
        random_activation(&x[(size_t)t * n_embd], n_embd, &s);
        random_activation(&add[(size_t)t * n_embd], n_embd, &s);
        for (uint32_t j = 0; j < n_used; j++) {
            int32_t e;
            bool dup;
            do {
                e = (int32_t)(splitmix(&s) % n_expert);
                dup = false;
                for (uint32_t i = 0; i < j; i++) dup |= ids[(size_t)t * n_used + i] == e;
            } while (dup && n_used <= n_expert);
            ids[(size_t)t * n_used + j] = e;
            wts[(size_t)t * n_used + j] = 0.05f + uniform(&s) * 0.3f;
        }
    }
    float *d_x, *d_add, *d_wts, *d_out;
    int32_t *d_ids;
    uint8_t *d_xact, *d_ws;
    size_t xab = ds4_cuda_mmq_act_bytes(gtype, n_embd, n_tok);
    size_t wsb = ds4_cuda_mmq_moe_ws_bytes(gtype, dtype, n_embd, n_ff, n_expert, n_used, n_tok);
    CK(cudaMalloc(&d_x, x.size() * 4));
    CK(cudaMalloc(&d_add, add.size() * 4));
    CK(cudaMalloc(&d_wts, wts.size() * 4));
    CK(cudaMalloc(&d_ids, ids.size() * 4));
    CK(cudaMalloc(&d_out, add.size() * 4));
    CK(cudaMalloc(&d_xact, xab));
    CK(cudaMalloc(&d_ws, wsb));
    CK(cudaMemcpy(d_x, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_add, add.data(), add.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_wts, wts.data(), wts.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    const float clamp = 10.0f;
    auto run = [&]() {
        DS(ds4_cuda_mmq_quantize(k, gtype, d_x, n_embd, n_tok, d_xact, st, &err_));
        DS(ds4_cuda_mmq_moe(k, gtype, d_gate, d_up, dtype, d_down, n_embd, n_ff, n_expert, n_used, clamp, d_ids, d_wts,
                            n_tok, d_xact, d_add, d_out, d_ws, wsb, st, &err_));
    };
    /* CPU: moe.c's formula for sampled tokens. */
    std::vector<uint32_t> ts = mq_sample(n_tok, 4);
    std::vector<uint8_t> xa(ds4_act_row_bytes(gtype, n_embd)), ma(ds4_act_row_bytes(dtype, n_ff));
    std::vector<uint8_t> hg(grb * n_ff), hu(grb * n_ff), hd(drb * n_embd);
    std::vector<float> mid(n_ff), ref((size_t)ts.size() * n_embd);
    for (size_t ti = 0; ti < ts.size(); ti++) {
        uint32_t t = ts[ti];
        ds4_quantize_act(gtype, &x[(size_t)t * n_embd], xa.data(), n_embd);
        std::vector<std::vector<float>> per(n_used, std::vector<float>(n_embd));
        for (uint32_t j = 0; j < n_used; j++) {
            int32_t e = ids[(size_t)t * n_used + j];
            CK(cudaMemcpy(hg.data(), d_gate + (size_t)e * hg.size(), hg.size(), cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hu.data(), d_up + (size_t)e * hu.size(), hu.size(), cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(hd.data(), d_down + (size_t)e * hd.size(), hd.size(), cudaMemcpyDeviceToHost));
            float w = wts[(size_t)t * n_used + j];
            for (uint32_t r = 0; r < n_ff; r++) {
                float gv = ds4_dot(gtype, n_embd, hg.data() + r * grb, xa.data());
                float uv = ds4_dot(gtype, n_embd, hu.data() + r * grb, xa.data());
                mid[r] = swiglu(gv, uv, clamp, w);
            }
            ds4_quantize_act(dtype, mid.data(), ma.data(), n_ff);
            for (uint32_t o = 0; o < n_embd; o++) per[j][o] = ds4_dot(dtype, n_ff, hd.data() + o * drb, ma.data());
        }
        for (uint32_t o = 0; o < n_embd; o++) {
            float a = 0.0f;
            for (uint32_t j = 0; j < n_used; j++) a += per[j][o];
            ref[ti * n_embd + o] = a + add[(size_t)t * n_embd + o];
        }
    }
    char shape[64];
    snprintf(shape, sizeof shape, "%s+%s %ux%u tok %u", type_name(gtype), type_name(dtype), n_expert, n_used, n_tok);
    /* 0: the automatic tiles (128 pairs for experts with more than 64);
     * 64: every tile 64 pairs. */
    for (int kind : {0, 64}) {
        ds4_cuda_mmq_set_kernel(kind);
        CK(cudaMemsetAsync(d_out, 0xff, add.size() * 4, st));
        run();
        CK(cudaStreamSynchronize(st));
        std::vector<float> out(add.size());
        CK(cudaMemcpy(out.data(), d_out, out.size() * 4, cudaMemcpyDeviceToHost));
        double err = 0.0;
        long inexact = 0;
        for (size_t ti = 0; ti < ts.size(); ti++) {
            const float *g = &out[(size_t)ts[ti] * n_embd], *c = &ref[ti * n_embd];
            err = std::max(err, rel_err(g, c, n_embd));
            for (uint32_t o = 0; o < n_embd; o++) inexact += memcmp(&g[o], &c[o], 4) != 0;
        }
        timing tm = {0, 0};
        if (reps > 0) tm = time_graph(st, 2, reps, [&](int i) { run(); });
        char nm[64];
        snprintf(nm, sizeof nm, kind ? "%s (64 tiles)" : "%s", name);
        mq_add(nm, shape, 2.0 * 3.0 * n_embd * (double)n_ff * n_used * n_tok, tm.us, err, inexact, 0, err <= 1e-5);
    }
    ds4_cuda_mmq_set_kernel(0);
    CK(cudaFree(d_gate));
    CK(cudaFree(d_up));
    CK(cudaFree(d_down));
    CK(cudaFree(d_x));
    CK(cudaFree(d_add));
    CK(cudaFree(d_wts));
    CK(cudaFree(d_ids));
    CK(cudaFree(d_out));
    CK(cudaFree(d_xact));
    CK(cudaFree(d_ws));
}

static void mmq_bench(ds4_cuda_kernels *k, cudaStream_t st, int reps, bool quick) {
    DS(ds4_cuda_mmq_init(k, &err_));
    /* Odd shapes: token counts and rows off the tiles, one-block rows, a
     * partial Q8_0 K step, groups; every kernel, full CPU check. */
    mq_case(k, st, "odd q8_0", DS4_TYPE_Q8_0, 416, 200, 1, 37, 0, 101, true);
    mq_case(k, st, "odd q8_0 grouped", DS4_TYPE_Q8_0, 512, 512, 2, 70, 0, 102, true);
    mq_case(k, st, "odd q2_K", DS4_TYPE_Q2_K, 256, 130, 1, 65, 0, 103, true);
    mq_case(k, st, "odd q4_K", DS4_TYPE_Q4_K, 512, 384, 1, 129, 0, 104, true);
    mq_case(k, st, "odd iq2_xxs", DS4_TYPE_IQ2_XXS, 768, 256, 1, 3, 0, 105, true);
    mq_case(k, st, "odd f16", DS4_TYPE_F16, 72, 29, 1, 33, 0, 106, false);
    mq_case(k, st, "odd f16 tc", DS4_TYPE_F16, 96, 150, 1, 131, 0, 109, true);
    mq_case(k, st, "odd f16 tc grouped", DS4_TYPE_F16, 64, 256, 2, 17, 0, 110, true);
    mq_moe_case(k, st, "odd moe q2", DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, 256, 256, 8, 3, 37, 0, 107);
    mq_moe_case(k, st, "odd moe q8_0", DS4_TYPE_Q8_0, DS4_TYPE_Q8_0, 512, 192, 1, 1, 70, 0, 108);
    /* ~112 pairs per expert: 128-pair tiles, some experts also a 64 tile. */
    mq_moe_case(k, st, "odd moe q2 big", DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, 256, 256, 8, 3, 300, 0, 111);
    /* n_ff a multiple of 256: Q4_K down rows are whole 256-value blocks */
    mq_moe_case(k, st, "odd moe q4 big", DS4_TYPE_Q4_K, DS4_TYPE_Q4_K, 512, 512, 5, 2, 333, 0, 112);

    /* Prefill shapes (model-spec §2.2). */
    const uint32_t toks[] = {512, 4096};
    for (uint32_t n : toks) {
        if (quick && n != 4096) continue;
        mq_case(k, st, "attn_q_a", DS4_TYPE_Q8_0, 4096, 1024, 1, n, reps, 201, false);
        mq_case(k, st, "attn_q_b", DS4_TYPE_Q8_0, 1024, 32768, 1, n, reps, 202, false);
        mq_case(k, st, "attn_kv", DS4_TYPE_Q8_0, 4096, 512, 1, n, reps, 203, false);
        mq_case(k, st, "attn_output_a", DS4_TYPE_Q8_0, 4096, 8192, 8, n, reps, 204, false);
        mq_case(k, st, "attn_output_b", DS4_TYPE_Q8_0, 8192, 4096, 1, n, reps, 205, false);
        mq_case(k, st, "shexp gate", DS4_TYPE_Q8_0, 4096, 2048, 1, n, reps, 206, false);
        mq_case(k, st, "shexp down", DS4_TYPE_Q8_0, 2048, 4096, 1, n, reps, 207, false);
        mq_case(k, st, "dense iq2_xxs", DS4_TYPE_IQ2_XXS, 4096, 2048, 1, n, reps, 208, false);
        mq_case(k, st, "dense q2_K", DS4_TYPE_Q2_K, 2048, 4096, 1, n, reps, 209, false);
        mq_case(k, st, "dense q4_K", DS4_TYPE_Q4_K, 4096, 2048, 1, n, reps, 210, false);
        mq_case(k, st, "compressor f16", DS4_TYPE_F16, 4096, 1024, 1, n, reps, 211, true);
        mq_case(k, st, "indexer q_b f16", DS4_TYPE_F16, 1024, 8192, 1, n, reps, 212, true);
        mq_case(k, st, "router f16", DS4_TYPE_F16, 4096, 256, 1, n, reps, 213, true);
    }
    const uint32_t mtoks[] = {512, 2048, 4096, 8192};
    for (uint32_t n : mtoks) {
        if (quick && n < 4096) continue;
        char nm[3][32];
        snprintf(nm[0], 32, "moe q2 @%u", n);
        snprintf(nm[1], 32, "moe q4 @%u", n);
        snprintf(nm[2], 32, "shexp fused @%u", n);
        mq_moe_case(k, st, nm[0], DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, 4096, 2048, 256, 6, n, reps, 301);
        mq_moe_case(k, st, nm[1], DS4_TYPE_Q4_K, DS4_TYPE_Q4_K, 4096, 2048, 256, 6, n, reps, 302);
        mq_moe_case(k, st, nm[2], DS4_TYPE_Q8_0, DS4_TYPE_Q8_0, 4096, 2048, 1, 1, n, reps, 303);
    }
    printf("\n| case | shape | us | TFLOP/s | max rel err | not bit-exact | act mismatch | check |\n");
    printf("|---|---|---:|---:|---:|---:|---:|---|\n");
    for (const mq_result &r : g_mq_results)
        printf("| %s | %s | %.1f | %.1f | %.1e | %ld | %ld | %s |\n", r.name, r.shape, r.us, r.tflops, r.err, r.inexact,
               r.act_bad, r.ok ? "ok" : "FAIL");
}
