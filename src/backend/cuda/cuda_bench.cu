/* cuda_bench.cu — ds4-cuda-bench: checks the CUDA matrix-vector kernels
 * against the CPU reference (src/quant, engine/numerics.c) and times them
 * against the measured memory bandwidth.
 *
 *   ds4-cuda-bench --host-check   no GPU needed: runs the kernels' block
 *                                 arithmetic (cuda_formats.cuh) on the CPU and
 *                                 requires it to equal ds4_dot_* bit for bit
 *   ds4-cuda-bench [--reps N] [--quick] [--device D] [--only SUBSTR]
 *                                 on a GPU: for every format and real decode
 *                                 shape (model-spec §2.2), random weights are
 *                                 made on the device, the GPU activation
 *                                 quantisation is compared byte for byte with
 *                                 the CPU's, the GPU result with ds4_matvec
 *                                 (max |Δ| / max |ref|, and a second run must
 *                                 be bitwise equal); then each kernel is timed
 *                                 from a CUDA graph of launches that rotate
 *                                 over weight copies totalling ~1 GiB (far
 *                                 past the L2), median of --reps replays.
 *                                 GB/s counts weight + activation + output
 *                                 bytes; "% copy" is against a device-to-device
 *                                 copy measured in the same run (read + write).
 *                                 Q8_0 and F16 products whose activation rows
 *                                 are 16-byte multiples also run with two activation
 *                                 columns (each column's bits = its
 *                                 one-column product's), timed against one.
 *                                 DS4_BENCH_L2_WARM=1: one weight copy and one
 *                                 expert set, so weights that fit come from L2.
 * Exit status: 0 all checks passed, 1 a check failed, 2 usage or CUDA error. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "cuda_async.cuh"
#include "cuda_formats.cuh"
#include "cuda_kernels.h"
#include "cuda_pdl.cuh"

extern "C" {
#include "../../engine/numerics.h"
}


#define CK(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess) {                                                              \
            fprintf(stderr, "cuda error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__, \
                    __LINE__, #call);                                                         \
            exit(2);                                                                          \
        }                                                                                     \
    } while (0)

#define DS(call)                                               \
    do {                                                       \
        ds4_err err_;                                          \
        if ((call) != 0) {                                     \
            fprintf(stderr, "%s: %s\n", #call, err_.msg);      \
            exit(2);                                           \
        }                                                      \
    } while (0)

static int g_failures = 0;

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float uniform(uint64_t *s) { return (float)(splitmix(s) >> 40) * (1.0f / 16777216.0f); }

/* Activation-like values: roughly normal, a few large outliers, some exact
 * zeros and ties, as real hidden states have. */
static void random_activation(float *x, uint32_t n, uint64_t *s) {
    for (uint32_t i = 0; i < n; i++) {
        float v = uniform(s) + uniform(s) + uniform(s) - 1.5f;
        uint32_t r = (uint32_t)splitmix(s) % 64;
        if (r == 0) v *= 12.0f;
        if (r == 1) v = 0.0f;
        if (r == 2 && i) v = -x[i - 1];
        x[i] = v;
    }
}

static const char *type_name(uint32_t t) { return ds4_type_name(t); }

/* ------------------------------------------------------------------ */
/* Host check: the kernels' unit decomposition, summed in block order   */
/* ------------------------------------------------------------------ */

struct split_act {
    std::vector<uint8_t> mem;
    act_view v;
};

/* The shared-memory layout the kernels stage, built on the host. */
static void build_split(uint32_t wtype, const void *act, uint32_t n, bool halves, split_act *sa) {
    bool q80 = wtype == DS4_TYPE_Q8_0;
    uint32_t bsz = q80 ? 32 : 256, nb = n / bsz;
    sa->mem.assign(n + 4 * nb + 32 * nb + 64, 0);
    uint8_t *base = (uint8_t *)(((uintptr_t)sa->mem.data() + 15) & ~(uintptr_t)15);
    int8_t *q = (int8_t *)base;
    float *d = (float *)(base + n);
    int16_t *bs = (int16_t *)(base + n + 4 * nb);
    for (uint32_t b = 0; b < nb; b++) {
        if (q80) {
            const ds4_block_q8_0_act *a = (const ds4_block_q8_0_act *)act + b;
            memcpy(q + 32 * b, a->qs, 32);
            d[b] = a->d;
        } else {
            const ds4_block_q8_K *a = (const ds4_block_q8_K *)act + b;
            for (uint32_t w = 0; w < 64; w++)
                memcpy(q + 256 * b + 4 * (halves ? act_halves_word(w) : w), a->qs + 4 * w, 4);
            d[b] = a->d;
            memcpy(bs + 16 * b, a->bsums, 32);
        }
    }
    sa->v.q = q;
    sa->v.d = d;
    sa->v.bsums = bs;
    sa->v.x = NULL;
}

/* A random activation of n values quantised as the CPU does (act) and in
 * the kernels' staged layout (sa). */
static void random_split_act(uint32_t wtype, uint32_t n, bool halves, uint64_t *seed, std::vector<uint8_t> &act,
                             split_act *sa) {
    std::vector<float> x(n);
    act.resize(ds4_act_row_bytes(wtype, n));
    random_activation(x.data(), n, seed);
    ds4_quantize_act(wtype, x.data(), act.data(), n);
    build_split(wtype, act.data(), n, halves, sa);
}

/* Rows r0 and r0 + 1 (stride bytes apart) as a warp computes them with
 * two-row units, but with the block terms added in block order. The lane
 * (and so the table copy) of each part varies with the block. */
template <class F>
static void emulate_rows(const uint8_t *row, uint32_t stride, uint32_t nb, const act_view &a, const uint32_t *tab,
                         float out[2]) {
    float acc[2] = {0.0f, 0.0f};
    for (uint32_t b = 0; b < nb; b++) {
        int32_t isum[2] = {0, 0}, summ[2] = {0, 0};
        for (int part = 0; part < F::G; part++) {
            int32_t is[2], sm[2];
            int lane = (int)((b * F::G + part) % 32);
            F::template unit<2>(row + b * F::block_bytes, stride, part, a, b, tab, lane % DS4_CUDA_IQ2_COPIES, is, sm);
            for (int r = 0; r < 2; r++) {
                isum[r] += is[r];
                summ[r] += sm[r];
            }
        }
        for (int r = 0; r < 2; r++) acc[r] += F::term(row + r * stride + b * F::block_bytes, a, b, isum[r], summ[r]);
    }
    for (int r = 0; r < 2; r++) out[r] = acc[r] * F::final_scale;
}

/* Random but valid blocks: random bytes with sane f16 scales. */
static void random_blocks(uint32_t wtype, uint8_t *w, uint64_t n_blocks, uint64_t *s) {
    const ds4_type_info *ti = ds4_type_info_get(wtype);
    uint64_t bytes = n_blocks * ti->block_bytes;
    for (uint64_t i = 0; i < bytes; i++) w[i] = (uint8_t)splitmix(s);
    for (uint64_t b = 0; b < n_blocks; b++) {
        uint8_t *blk = w + b * ti->block_bytes;
        uint16_t d = ds4_f32_to_f16((0.5f + uniform(s)) * 0.01f);
        uint16_t m = ds4_f32_to_f16((0.5f + uniform(s)) * 0.004f);
        switch (wtype) {
        case DS4_TYPE_Q8_0: case DS4_TYPE_IQ2_XXS: memcpy(blk, &d, 2); break;
        case DS4_TYPE_Q4_K: memcpy(blk, &d, 2); memcpy(blk + 2, &m, 2); break;
        case DS4_TYPE_Q2_K: memcpy(blk + 80, &d, 2); memcpy(blk + 82, &m, 2); break;
        }
    }
}

template <class F>
static int host_check_format(uint32_t wtype, uint32_t n_in, uint32_t rows, const uint32_t *tab, uint64_t *seed,
                             const char *label = NULL) {
    uint32_t nb = n_in / F::block_elems, row_bytes = nb * F::block_bytes;
    /* One row per 16-aligned buffer with padding, as a warp stages it. */
    uint32_t stride = ((row_bytes + 15) & ~15u) + 16;
    uint8_t *w = (uint8_t *)aligned_alloc(16, (size_t)stride * rows);
    std::vector<uint8_t> packed((size_t)row_bytes), act;
    split_act sa;
    random_split_act(wtype, n_in, F::act_halves, seed, act, &sa);
    int bad = 0;
    std::vector<float> want(rows);
    for (uint32_t r = 0; r < rows; r++) {
        random_blocks(wtype, packed.data(), nb, seed);
        memcpy(w + (size_t)r * stride, packed.data(), row_bytes);
        want[r] = ds4_dot(wtype, n_in, packed.data(), act.data());
    }
    for (uint32_t r = 0; r + 1 < rows; r += 2) {
        float got[2];
        emulate_rows<F>(w + (size_t)r * stride, stride, nb, sa.v, tab, got);
        for (int i = 0; i < 2; i++) {
            if (memcmp(&got[i], &want[r + i], 4)) {
                if (bad < 3)
                    printf("  %s n_in %u row %u: emulated %.9g, CPU %.9g\n", type_name(wtype), n_in, r + i, got[i],
                           want[r + i]);
                bad++;
            }
        }
    }
    free(w);
    printf("host-check %-8s n_in %5u: %u rows, %d differ from ds4_dot\n", label ? label : type_name(wtype), n_in,
           rows, bad);
    return bad;
}

/* Block mode (F::block_dot, the routed down's): a row's block terms in
 * block order, every rotation, against ds4_dot bit for bit. */
template <class F>
static int host_check_block(uint32_t wtype, uint32_t n_in, uint32_t rows, uint64_t *seed) {
    uint32_t nb = n_in / F::block_elems;
    std::vector<uint8_t> row((size_t)nb * F::block_bytes), act;
    split_act sa;
    random_split_act(wtype, n_in, F::act_halves, seed, act, &sa);
    int bad = 0;
    for (uint32_t r = 0; r < rows; r++) {
        random_blocks(wtype, row.data(), nb, seed);
        float want = ds4_dot(wtype, n_in, row.data(), act.data());
        for (int rot = 0; rot < 4; rot++) {
            float got = 0.0f;
            for (uint32_t b = 0; b < nb; b++)
                got += F::block_dot(row.data() + b * F::block_bytes, sa.v, b, (rot + b) & 3);
            if (memcmp(&got, &want, 4)) {
                if (bad < 3)
                    printf("  %s/blk n_in %u row %u rot %d: emulated %.9g, CPU %.9g\n", type_name(wtype), n_in, r, rot,
                           got, want);
                bad++;
            }
        }
    }
    char label[32];
    snprintf(label, sizeof label, "%s/blk", type_name(wtype));
    printf("host-check %-8s n_in %5u: %u rows, %d differ from ds4_dot\n", label, n_in, rows, bad);
    return bad;
}

/* F::unit_cols (rows against several activation columns at once, the
 * several-token products') against F::unit one column at a time: every
 * unit of random rows, integer sums equal. */
template <class F>
static int host_check_cols(uint32_t wtype, uint32_t n_in, uint64_t *seed) {
    const uint32_t nb = n_in / F::block_elems, row_bytes = nb * F::block_bytes;
    const uint32_t stride = ((row_bytes + 15) & ~15u) + 16;
    uint8_t *w = (uint8_t *)aligned_alloc(16, (size_t)stride * 2);
    std::vector<uint8_t> packed(row_bytes), act0, act1;
    for (int r = 0; r < 2; r++) {
        random_blocks(wtype, packed.data(), nb, seed);
        memcpy(w + (size_t)r * stride, packed.data(), row_bytes);
    }
    split_act s0, s1;
    random_split_act(wtype, n_in, F::act_halves, seed, act0, &s0);
    random_split_act(wtype, n_in, F::act_halves, seed, act1, &s1);
    const act_view a[2] = {s0.v, s1.v};
    int bad = 0;
    for (uint32_t b = 0; b < nb; b++)
        for (int part = 0; part < F::G; part++) {
            int32_t cols[4];
            F::template unit_cols<2, 2>(w + b * F::block_bytes, stride, part, a, b, cols);
            for (int c = 0; c < 2; c++) {
                int32_t is[2], sm[2];
                F::template unit<2>(w + b * F::block_bytes, stride, part, a[c], b, NULL, 0, is, sm);
                for (int r = 0; r < 2; r++) bad += is[r] != cols[r * 2 + c];
            }
        }
    free(w);
    printf("host-check %-8s n_in %5u: 2 rows x 2 columns, %d unit sums differ from one column's\n", type_name(wtype),
           n_in, bad);
    return bad;
}

static int host_check(void) {
    /* The tables as the kernels stage them (replicated). */
    static uint32_t tab[DS4_CUDA_IQ2_TABLE_WORDS * DS4_CUDA_IQ2_COPIES];
    if (!ds4_cuda_iq2_tables_replicated(tab)) {
        printf("host-check: IQ2_XXS grid has unexpected values\n");
        return 1;
    }
    uint64_t seed = 12345;
    int bad = 0;
    const uint32_t sizes[] = {256, 1024, 4096};
    for (uint32_t n : sizes) {
        bad += host_check_format<fmt_q8_0>(DS4_TYPE_Q8_0, n, 64, tab, &seed);
        bad += host_check_format<fmt_q2_K>(DS4_TYPE_Q2_K, n, 64, tab, &seed);
        bad += host_check_block<fmt_q2_K>(DS4_TYPE_Q2_K, n, 16, &seed);
        bad += host_check_format<fmt_q4_K>(DS4_TYPE_Q4_K, n, 64, tab, &seed);
        bad += host_check_block<fmt_q4_K>(DS4_TYPE_Q4_K, n, 16, &seed);
        bad += host_check_format<fmt_iq2_xxs>(DS4_TYPE_IQ2_XXS, n, 64, tab, &seed);
        bad += host_check_format<fmt_iq2_xxs4>(DS4_TYPE_IQ2_XXS, n, 64, tab, &seed, "IQ2_XXS/4");
        bad += host_check_format<fmt_iq2_xxs2>(DS4_TYPE_IQ2_XXS, n, 64, tab, &seed, "IQ2_XXS/2");
        bad += host_check_format<fmt_iq2_xxs_natural>(DS4_TYPE_IQ2_XXS, n, 64, tab, &seed, "IQ2_XXS/n");
    }
    bad += host_check_format<fmt_q8_0>(DS4_TYPE_Q8_0, 96, 64, tab, &seed);
    bad += host_check_cols<fmt_q8_0>(DS4_TYPE_Q8_0, 4096, &seed);
    bad += host_check_cols<fmt_q8_0>(DS4_TYPE_Q8_0, 96, &seed);
    printf("host-check: %s\n", bad ? "FAIL" : "ok");
    return bad ? 1 : 0;
}

/* ------------------------------------------------------------------ */
/* Device-side random weights                                          */
/* ------------------------------------------------------------------ */

__device__ __forceinline__ uint32_t hash32(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return (uint32_t)x;
}

__global__ void k_fill_words(uint32_t *w, uint64_t n_words, uint64_t seed) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n_words; i += (uint64_t)gridDim.x * blockDim.x)
        w[i] = hash32(seed * 0x100000001b3ull + i);
}

/* Sets the f16 scales of every block (offsets d_off, m_off; m_off < 0 = none)
 * to values in [0.005, 0.015) and [0.002, 0.006). */
__global__ void k_fix_scales(uint8_t *w, uint64_t n_blocks, uint32_t bbytes, int d_off, int m_off, uint64_t seed) {
    for (uint64_t b = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; b < n_blocks; b += (uint64_t)gridDim.x * blockDim.x) {
        uint32_t h = hash32(seed ^ (b * 0x9e3779b97f4a7c15ull));
        float d = (0.5f + (h & 0xffff) / 65536.0f) * 0.01f, m = (0.5f + (h >> 16) / 65536.0f) * 0.004f;
        __half hd = __float2half_rn(d), hm = __float2half_rn(m);
        *(__half *)(w + b * bbytes + d_off) = hd;
        if (m_off >= 0) *(__half *)(w + b * bbytes + m_off) = hm;
    }
}

/* F16 weights: uniform in [-0.05, 0.05). */
__global__ void k_fill_f16(__half *w, uint64_t n, uint64_t seed) {
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
        w[i] = __float2half_rn(((hash32(seed * 0x100000001b3ull + i) >> 8) / 16777216.0f - 0.5f) * 0.1f);
}

static void device_random_weights(uint32_t wtype, void *w, uint64_t bytes, uint64_t seed) {
    if (wtype == DS4_TYPE_F16) {
        k_fill_f16<<<2048, 256>>>((__half *)w, bytes / 2, seed);
    } else {
        k_fill_words<<<2048, 256>>>((uint32_t *)w, bytes / 4, seed);
        const ds4_type_info *ti = ds4_type_info_get(wtype);
        int d_off = wtype == DS4_TYPE_Q2_K ? 80 : 0;
        int m_off = wtype == DS4_TYPE_Q2_K ? 82 : wtype == DS4_TYPE_Q4_K ? 2 : -1;
        k_fix_scales<<<2048, 256>>>((uint8_t *)w, bytes / ti->block_bytes, ti->block_bytes, d_off, m_off, seed + 1);
    }
    CK(cudaGetLastError());
}

__global__ void k_empty(void) {}

/* Dependency latencies (for the decode step's design): every block of the
 * producer spins ~5 us, then its block 0 stamps %globaltimer and publishes
 * seq (stamp_publish); block 0 of the consumer, launched with programmatic
 * serialization, stamps when a poll (stamp_await) sees seq and when its
 * pdl_wait returns. */
static __device__ unsigned long long dep_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__global__ void k_dep_producer(uint32_t *flag, uint32_t seq, unsigned long long *t) {
    pdl_trigger();
    pdl_wait();
    const unsigned long long t0 = dep_now();
    while (dep_now() - t0 < 5000) {}
    __syncthreads();
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        t[0] = dep_now();
        stamp_publish(flag, seq);
    }
}

__global__ void k_dep_consumer(const uint32_t *flag, uint32_t seq, unsigned long long *t) {
    pdl_trigger();
    stamp_await(flag, seq);
    if (blockIdx.x == 0 && threadIdx.x == 0) t[1] = dep_now();
    pdl_wait();
    if (blockIdx.x == 0 && threadIdx.x == 0) t[2] = dep_now();
}

/* Median ns from the producer's publication to the consumer's poll seeing
 * it and to its pdl_wait returning, one block an SM each. */
static void dep_latency(cudaStream_t st, int n_sm, int reps, double *poll_ns, double *wait_ns) {
    uint32_t *flag;
    unsigned long long *t, h[3];
    CK(cudaMalloc(&flag, 4));
    CK(cudaMalloc(&t, sizeof h));
    CK(cudaMemset(flag, 0, 4));
    std::vector<double> poll, wait;
    for (int i = 0; i < reps + 3; i++) {
        const uint32_t seq = (uint32_t)i + 1;
        CK(launch_with(true, 0, k_dep_producer, n_sm, 128, 0, st, flag, seq, t));
        CK(launch_with(true, 0, k_dep_consumer, n_sm, 128, 0, st, (const uint32_t *)flag, seq, t));
        CK(cudaMemcpyAsync(h, t, sizeof h, cudaMemcpyDeviceToHost, st));
        CK(cudaStreamSynchronize(st));
        if (i >= 3) poll.push_back((double)(h[1] - h[0])), wait.push_back((double)(h[2] - h[0]));
    }
    std::sort(poll.begin(), poll.end());
    std::sort(wait.begin(), wait.end());
    *poll_ns = poll[poll.size() / 2];
    *wait_ns = wait[wait.size() / 2];
    CK(cudaFree(flag));
    CK(cudaFree(t));
}

/* Streaming against a latency chain (for the decode step's design: can
 * weights stream while a chain of dependent loads runs?). Block 0's
 * thread 0 follows `hops` links of a random cycle through an L2-resident
 * table (__ldcg, one load waiting for the one before, as a latency
 * kernel's phases do); the other blocks stream `per_block` bytes each from
 * DRAM through shared memory, each warp keeping `inflight` 512-byte
 * chunks requested (cp.async; with `first`, marked evict-first in L2, so
 * that the table stays there), the bytes discarded. t: chain start/end,
 * then the streaming blocks' earliest start and latest end. */
enum { SC_WARPS = 8, SC_CHUNK = 512, SC_MAX_INFLIGHT = 8 };

/* cp.async.wait_group for a depth known at run time (1, 2, 4 or 8). */
__device__ __forceinline__ void sc_wait(int inflight) {
    switch (inflight) {
    case 1: cp_async_wait<0>(); break;
    case 2: cp_async_wait<1>(); break;
    case 4: cp_async_wait<3>(); break;
    default: cp_async_wait<7>(); break;
    }
}

__global__ void __launch_bounds__(SC_WARPS * 32) k_stream_chain(const uint8_t *w, size_t per_block, int inflight,
                                                                bool first, const uint32_t *ring, int hops,
                                                                uint32_t *sink, unsigned long long *t) {
    __shared__ __align__(16) uint8_t buf[SC_WARPS][SC_MAX_INFLIGHT][SC_CHUNK];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (blockIdx.x == 0) {
        if (threadIdx.x == 0 && hops > 0) {
            uint32_t i = 0;
            const unsigned long long t0 = dep_now();
            for (int h = 0; h < hops; h++) i = __ldcg(ring + i);
            t[1] = dep_now();
            t[0] = t0;
            *sink = i;
        }
        return;
    }
    if (per_block == 0) return;
    atomicMin(&t[2], dep_now());
    const uint8_t *src = w + (size_t)(blockIdx.x - 1) * per_block;
    const size_t chunks = per_block / SC_CHUNK / SC_WARPS;
    auto issue = [&](size_t c) {
        if (c < chunks) {
            uint8_t *d = &buf[warp][c % inflight][16 * lane];
            const uint8_t *g = src + (c * SC_WARPS + warp) * SC_CHUNK + 16 * lane;
            if (first) cp_async16_once(d, g);
            else cp_async16(d, g);
        }
        cp_async_commit();
    };
    for (int c = 0; c < inflight; c++) issue((size_t)c);
    for (size_t c = 0; c < chunks; c++) {
        sc_wait(inflight); /* the oldest of the `inflight` groups */
        issue(c + inflight);
    }
    cp_async_wait<0>();
    __syncthreads();
    if (threadIdx.x == 0) atomicMax(&t[3], dep_now());
}

/* ns a chain link and streaming GB/s, alone and together, for each depth. */
static void stream_chain(cudaStream_t st, int n_sm) {
    const size_t ring_n = (size_t)1 << 20, bytes = (size_t)8 << 30; /* a 4 MB table, an 8 GB stream */
    std::vector<uint32_t> perm(ring_n), ring(ring_n);
    for (size_t i = 0; i < ring_n; i++) perm[i] = (uint32_t)i;
    uint64_t x = 88172645463325252ull;
    for (size_t i = ring_n - 1; i > 0; i--) { /* one random cycle through every entry */
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        std::swap(perm[i], perm[x % i]);
    }
    for (size_t i = 0; i < ring_n; i++) ring[perm[i]] = perm[(i + 1) % ring_n];
    uint32_t *d_ring, *sink;
    uint8_t *w;
    unsigned long long *t, h[4];
    CK(cudaMalloc(&d_ring, ring_n * 4));
    CK(cudaMalloc(&sink, 4));
    CK(cudaMalloc(&t, sizeof h));
    CK(cudaMalloc(&w, bytes));
    CK(cudaMemset(w, 1, bytes));
    CK(cudaMemcpy(d_ring, ring.data(), ring_n * 4, cudaMemcpyHostToDevice));
    const int blocks = 2 * n_sm, hops = 1000;
    const size_t per_block = bytes / blocks / (SC_CHUNK * SC_WARPS) * (SC_CHUNK * SC_WARPS);
    printf("streaming %.1f GB over %d blocks against a chain of %d dependent L2 loads (block 0):\n", bytes / 1e9,
           blocks, hops);
    auto run = [&](int inflight, bool stream, bool chain, bool first, double *ns, double *gbs) {
        const unsigned long long init[4] = {0, 0, ~0ull, 0};
        for (int rep = 0; rep < 2; rep++) { /* the first warms the table into L2 */
            CK(cudaMemcpyAsync(t, init, sizeof init, cudaMemcpyHostToDevice, st));
            k_stream_chain<<<1 + blocks, SC_WARPS * 32, 0, st>>>(w, stream ? per_block : 0, inflight, first, d_ring,
                                                                 chain ? hops : 0, sink, t);
            CK(cudaMemcpyAsync(h, t, sizeof h, cudaMemcpyDeviceToHost, st));
            CK(cudaStreamSynchronize(st));
        }
        *ns = chain ? (double)(h[1] - h[0]) / hops : 0.0;
        *gbs = stream ? (double)per_block * blocks / (double)(h[3] - h[2]) : 0.0;
    };
    double ns0, g;
    run(1, false, true, false, &ns0, &g);
    printf("  chain alone: %.0f ns a link\n", ns0);
    for (int first = 1; first >= 0; first--)
        for (int inflight = 1; inflight <= SC_MAX_INFLIGHT; inflight *= 2) {
            double ns_a, gbs_a, ns_b, gbs_b;
            run(inflight, true, false, first, &ns_a, &gbs_a);
            run(inflight, true, true, first, &ns_b, &gbs_b);
            printf("  %s, %d x %d B in flight a warp (%d KB an SM): stream alone %.0f GB/s; together %.0f GB/s, "
                   "chain %.0f ns a link (%.2fx)\n",
                   first ? "stream evict-first" : "stream plain", inflight, SC_CHUNK,
                   inflight * SC_CHUNK * SC_WARPS * 2 / 1024, gbs_a, gbs_b, ns_b, ns_b / ns0);
        }
    CK(cudaFree(d_ring));
    CK(cudaFree(sink));
    CK(cudaFree(t));
    CK(cudaFree(w));
}

/* A plain 16-byte grid-stride copy, the other estimate of the roofline. */
__global__ void k_copy(const uint4 *a, uint4 *b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        b[i] = a[i];
}

/* ------------------------------------------------------------------ */
/* Timing                                                              */
/* ------------------------------------------------------------------ */

struct timing {
    double us;     /* median time of one call */
    double spread; /* (max - min) / median over the replays, for reading noise */
};

/* Captures calls(i) for i < n_calls into one graph and returns the median
 * per-call time over `reps` replays (after 3 warm-up replays). */
template <class Fn>
static timing time_graph(cudaStream_t st, int n_calls, int reps, Fn calls) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed));
    for (int i = 0; i < n_calls; i++) calls(i);
    CK(cudaStreamEndCapture(st, &g));
    CK(cudaGraphInstantiate(&ge, g, 0));
    for (int i = 0; i < 3; i++) CK(cudaGraphLaunch(ge, st));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<double> t;
    for (int r = 0; r < reps; r++) {
        CK(cudaEventRecord(e0, st));
        CK(cudaGraphLaunch(ge, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        t.push_back(ms * 1000.0 / n_calls);
    }
    std::sort(t.begin(), t.end());
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaGraphExecDestroy(ge));
    CK(cudaGraphDestroy(g));
    timing r = {t[t.size() / 2], (t.back() - t.front()) / t[t.size() / 2]};
    return r;
}

/* Device-to-device copy bandwidth, bytes read + written per second: the
 * better of cudaMemcpyAsync and a copy kernel (1 GiB each way). */
static double copy_bandwidth(cudaStream_t st, int reps, int n_sm, double *memcpy_gbs, double *kernel_gbs) {
    size_t bytes = (size_t)1 << 30;
    void *a, *b;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    CK(cudaMemset(a, 1, bytes));
    timing t = time_graph(st, 4, reps, [&](int i) { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, st)); });
    *memcpy_gbs = 2.0 * bytes / (t.us * 1e-6) / 1e9;
    t = time_graph(st, 4, reps, [&](int i) { k_copy<<<n_sm * 8, 512, 0, st>>>((const uint4 *)a, (uint4 *)b, bytes / 16); });
    *kernel_gbs = 2.0 * bytes / (t.us * 1e-6) / 1e9;
    CK(cudaFree(a));
    CK(cudaFree(b));
    return std::max(*memcpy_gbs, *kernel_gbs);
}

/* ------------------------------------------------------------------ */
/* Checks and timings                                                  */
/* ------------------------------------------------------------------ */

struct result {
    char name[64];
    char shape[48];
    double mbytes; /* per call */
    double us, spread, gbs; /* at the default grid */
    int best_waves;
    double best_gbs;
    double err; /* max |gpu - cpu| / max |cpu| */
    long act_bad;  /* activation blocks differing from the CPU's bytes */
    bool ok;
};

static std::vector<result> g_results;
static double g_copy_gbs = 0.0;

/* Grid sizes tried for every timed case (ds4_cuda_kernels_set_waves);
 * 0 = the kernels' own choice, the default column. */
static const int WAVES[] = {0, 1, 2, 4, 8};
#define N_WAVES 5

/* Times fn at each grid size; t[0] is the default. */
template <class Fn>
static void time_waves(ds4_cuda_kernels *k, cudaStream_t st, int n_calls, int reps, Fn fn, timing *t) {
    for (int i = 0; i < N_WAVES; i++) {
        ds4_cuda_kernels_set_waves(k, WAVES[i]);
        t[i] = time_graph(st, n_calls, reps, fn);
    }
    ds4_cuda_kernels_set_waves(k, 0);
}

static void add_result(const char *name, const char *shape, double bytes, const timing *tw, double err, long act_bad,
                       bool ok) {
    result r;
    timing t = tw[0];
    int best = 0;
    for (int i = 1; i < N_WAVES; i++)
        if (tw[i].us < tw[best].us) best = i;
    r.best_waves = WAVES[best];
    r.best_gbs = bytes / (tw[best].us * 1e-6) / 1e9;
    snprintf(r.name, sizeof r.name, "%s", name);
    snprintf(r.shape, sizeof r.shape, "%s", shape);
    r.mbytes = bytes / 1e6;
    r.us = t.us;
    r.spread = t.spread;
    r.gbs = bytes / (t.us * 1e-6) / 1e9;
    r.err = err;
    r.act_bad = act_bad;
    r.ok = ok;
    if (!ok) g_failures++;
    g_results.push_back(r);
    printf("%-24s %-22s %9.2f MB %9.2f us %8.1f GB/s %6.1f%% copy  err %.2e  act-mismatch %ld  %s  [waves", r.name,
           r.shape, r.mbytes, r.us, r.gbs, 100.0 * r.gbs / g_copy_gbs, r.err, r.act_bad, ok ? "ok" : "FAIL");
    for (int i = 0; i < N_WAVES; i++) printf(" %d: %.2f us", WAVES[i], tw[i].us);
    printf("; spread %.0f%%]\n", 100.0 * t.spread);
    fflush(stdout);
}

/* max |a - b| / max |b|; non-finite a counts as an error of 1e30. */
static double rel_err(const float *a, const float *b, size_t n) {
    double md = 0.0, mr = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i])) return 1e30;
        md = std::max(md, (double)fabsf(a[i] - b[i]));
        mr = std::max(mr, (double)fabsf(b[i]));
    }
    return mr > 0 ? md / mr : md;
}

/* Quantises x on the device and on the CPU; returns the number of
 * activation blocks whose bytes differ, and leaves both copies. */
static long check_act(ds4_cuda_kernels *k, uint32_t wtype, const float *d_x, void *d_act, const float *x, uint32_t n,
                      std::vector<uint8_t> &act_cpu, cudaStream_t st) {
    size_t ab = ds4_act_row_bytes(wtype, n);
    act_cpu.resize(ab);
    ds4_quantize_act(wtype, x, act_cpu.data(), n);
    DS(ds4_cuda_quantize_act(k, wtype, d_x, d_act, n, st, &err_));
    std::vector<uint8_t> got(ab);
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(got.data(), d_act, ab, cudaMemcpyDeviceToHost));
    size_t bb = wtype == DS4_TYPE_F16 ? ab : ds4_act_row_bytes(wtype, wtype == DS4_TYPE_Q8_0 ? 32 : 256);
    long bad = 0;
    for (size_t o = 0; o < ab; o += bb)
        if (memcmp(got.data() + o, act_cpu.data() + o, bb)) bad++;
    return bad;
}

/* --only SUBSTR: run only the cases whose name contains it. */
static const char *g_only = NULL;

static bool selected(const char *name) { return !g_only || strstr(name, g_only); }

/* Weight copies a timing rotates over: ~1 GiB, far past the L2; with
 * DS4_BENCH_L2_WARM=1 one copy (and one expert set), so the weights come
 * from the L2 where they fit (what an L2 prefetch could give). */
static double target_bytes() { return getenv("DS4_BENCH_L2_WARM") ? 1.0 : 1024.0 * 1024 * 1024; }

/* The product with two activation columns (ds4_cuda_mv.n_cols, the
 * several-token decode step's): each column's results must be the bits of
 * its one-column product — quantised activations (the first column is x,
 * whose one-column results y1 the caller has), and f32 columns quantised
 * in the blocks after an RMSNorm — and the time against one column's. */
static void bench_columns(ds4_cuda_kernels *k, cudaStream_t st, const char *name, uint32_t wtype, const uint8_t *d_w,
                          size_t wstride, int n_copies, uint32_t n_rows, uint32_t n_in, const std::vector<float> &x,
                          const std::vector<float> &y1, int reps, uint64_t seed) {
    const size_t ab = ds4_act_row_bytes(wtype, n_in);
    std::vector<float> x2(2 * (size_t)n_in), nw(n_in), y2((size_t)2 * n_rows), one(n_rows);
    uint64_t s = seed * 31 + 5;
    memcpy(x2.data(), x.data(), n_in * sizeof(float));
    random_activation(x2.data() + n_in, n_in, &s);
    for (uint32_t i = 0; i < n_in; i++) nw[i] = 0.5f + uniform(&s);
    float *d_x2, *d_nw, *d_y2, *d_y1, *d_norm;
    uint8_t *d_act2;
    CK(cudaMalloc(&d_x2, x2.size() * sizeof(float)));
    CK(cudaMalloc(&d_nw, n_in * sizeof(float)));
    CK(cudaMalloc(&d_norm, x2.size() * sizeof(float)));
    CK(cudaMalloc(&d_act2, 2 * ab));
    CK(cudaMalloc(&d_y2, y2.size() * sizeof(float)));
    CK(cudaMalloc(&d_y1, n_rows * sizeof(float)));
    CK(cudaMemcpy(d_x2, x2.data(), x2.size() * sizeof(float), cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_nw, nw.data(), n_in * sizeof(float), cudaMemcpyHostToDevice));
    for (int c = 0; c < 2; c++) DS(ds4_cuda_quantize_act(k, wtype, d_x2 + (size_t)c * n_in, d_act2 + c * ab, n_in, st, &err_));
    auto mv = [&](const uint8_t *w, int cols, const void *act, const float *xf, const float *norm_w, float *y) {
        ds4_cuda_mv d = {};
        d.wtype = wtype;
        d.n_in = n_in;
        d.n_groups = 1;
        d.n_seg = 1;
        d.seg[0] = {w, n_rows, y, n_rows};
        d.act = act;
        d.x = xf;
        d.norm_w = norm_w;
        d.eps = 1e-6f;
        d.norm_out = norm_w ? d_norm : NULL;
        d.n_cols = (uint32_t)cols;
        DS(ds4_cuda_matvec_multi(k, &d, st, &err_));
    };
    auto fetch = [&](const float *d, float *h, size_t n) {
        CK(cudaStreamSynchronize(st));
        CK(cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost));
    };
    /* quantised columns */
    CK(cudaMemsetAsync(d_y2, 0xff, y2.size() * sizeof(float), st));
    mv(d_w, 2, d_act2, NULL, NULL, d_y2);
    fetch(d_y2, y2.data(), y2.size());
    mv(d_w, 1, d_act2 + ab, NULL, NULL, d_y1);
    fetch(d_y1, one.data(), n_rows);
    bool ok = memcmp(y2.data(), y1.data(), n_rows * sizeof(float)) == 0 &&
              memcmp(y2.data() + n_rows, one.data(), n_rows * sizeof(float)) == 0;
    /* f32 columns normed in the blocks (F16 weights keep an unnormed x in global memory: normed here) */
    bool ok_x = true;
    for (int c = 0; c < 2; c++) {
        mv(d_w, 1, NULL, d_x2 + (size_t)c * n_in, d_nw, d_y1);
        fetch(d_y1, one.data(), n_rows);
        if (c == 0) {
            CK(cudaMemsetAsync(d_y2, 0xff, y2.size() * sizeof(float), st));
            mv(d_w, 2, NULL, d_x2, d_nw, d_y2);
            fetch(d_y2, y2.data(), y2.size());
        }
        ok_x &= memcmp(y2.data() + (size_t)c * n_rows, one.data(), n_rows * sizeof(float)) == 0;
    }
    timing t1[N_WAVES], t2[N_WAVES];
    time_waves(k, st, n_copies, reps, [&](int c) { mv(d_w + wstride * c, 2, d_act2, NULL, NULL, d_y2); }, t2);
    time_waves(k, st, n_copies, reps, [&](int c) { mv(d_w + wstride * c, 1, d_act2, NULL, NULL, d_y1); }, t1);
    char nm[64], shape[48];
    snprintf(nm, sizeof nm, "%s, 2 columns", name);
    snprintf(shape, sizeof shape, "%s %u->%u x2", type_name(wtype), n_in, n_rows);
    printf("  %s: columns %s (quantised), %s (f32 + norm); 2 columns %.2f us against 1 column %.2f us (x%.2f)\n",
           name, ok ? "bit for bit" : "DIFFER", ok_x ? "bit for bit" : "DIFFER", t2[0].us, t1[0].us,
           t2[0].us / t1[0].us);
    add_result(nm, shape, (double)ds4_type_row_bytes(wtype, n_in) * n_rows + 2.0 * ab + 8.0 * n_rows, t2, 0.0, 0,
               ok && ok_x);
    CK(cudaFree(d_x2));
    CK(cudaFree(d_nw));
    CK(cudaFree(d_norm));
    CK(cudaFree(d_act2));
    CK(cudaFree(d_y2));
    CK(cudaFree(d_y1));
}

static void bench_matvec(ds4_cuda_kernels *k, cudaStream_t st, const char *name, uint32_t wtype, uint32_t n_in,
                         uint32_t n_rows, int reps, uint64_t seed) {
    if (!selected(name)) return;
    size_t row_bytes = ds4_type_row_bytes(wtype, n_in), wbytes = row_bytes * n_rows;
    size_t wstride = (wbytes + 255) & ~(size_t)255;
    int n_copies = (int)std::min(256.0, std::max(1.0, ceil(target_bytes() / wbytes)));
    uint8_t *d_w;
    CK(cudaMalloc(&d_w, wstride * n_copies));
    for (int c = 0; c < n_copies; c++) device_random_weights(wtype, d_w + wstride * c, wbytes, seed + 7919 * c);
    std::vector<float> x(n_in);
    uint64_t s = seed;
    random_activation(x.data(), n_in, &s);
    float *d_x, *d_y;
    void *d_act;
    size_t ab = ds4_act_row_bytes(wtype, n_in);
    CK(cudaMalloc(&d_x, n_in * sizeof(float)));
    CK(cudaMalloc(&d_act, ab));
    CK(cudaMalloc(&d_y, n_rows * sizeof(float)));
    CK(cudaMemcpy(d_x, x.data(), n_in * sizeof(float), cudaMemcpyHostToDevice));
    std::vector<uint8_t> act_cpu;
    long act_bad = check_act(k, wtype, d_x, d_act, x.data(), n_in, act_cpu, st);

    /* Correctness: the GPU run with the GPU activation, against ds4_matvec
     * on the CPU activation; a second run must give the same bits. */
    CK(cudaMemsetAsync(d_y, 0xff, n_rows * sizeof(float), st));
    DS(ds4_cuda_matvec(k, wtype, d_w, n_rows, n_in, d_act, d_y, st, &err_));
    std::vector<float> y(n_rows), y2(n_rows), ref(n_rows);
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(y.data(), d_y, n_rows * sizeof(float), cudaMemcpyDeviceToHost));
    CK(cudaMemsetAsync(d_y, 0xff, n_rows * sizeof(float), st));
    DS(ds4_cuda_matvec(k, wtype, d_w, n_rows, n_in, d_act, d_y, st, &err_));
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(y2.data(), d_y, n_rows * sizeof(float), cudaMemcpyDeviceToHost));
    std::vector<uint8_t> w(wbytes);
    CK(cudaMemcpy(w.data(), d_w, wbytes, cudaMemcpyDeviceToHost));
    ds4_matvec(wtype, w.data(), n_rows, n_in, act_cpu.data(), ref.data());
    double err = rel_err(y.data(), ref.data(), n_rows);
    bool same = memcmp(y.data(), y2.data(), n_rows * sizeof(float)) == 0;
    bool ok = err < 1e-5 && same && act_bad == 0;
    if (!same) printf("  %s: two runs differ (race?)\n", name);

    timing t[N_WAVES];
    time_waves(k, st, n_copies, reps, [&](int c) {
        DS(ds4_cuda_matvec(k, wtype, d_w + wstride * c, n_rows, n_in, d_act, d_y, st, &err_));
    }, t);
    char shape[48];
    snprintf(shape, sizeof shape, "%s %u->%u", type_name(wtype), n_in, n_rows);
    add_result(name, shape, (double)wbytes + ab + 4.0 * n_rows, t, err, act_bad, ok);
    if (ab % 16 == 0 && (wtype == DS4_TYPE_Q8_0 || wtype == DS4_TYPE_F16))
        bench_columns(k, st, name, wtype, d_w, wstride, n_copies, n_rows, n_in, x, y, reps, seed);
    CK(cudaFree(d_w));
    CK(cudaFree(d_x));
    CK(cudaFree(d_act));
    CK(cudaFree(d_y));
}

/* Two tokens' routed experts in one launch each (ds4_cuda_moe_tokens_*,
 * the verify step's): token t takes expert set i + t of bench_moe's sets
 * (ids and weights back to back), its own activation and add; mid and out
 * must be the bits of the two one-token steps; the two-token step timed
 * against the one-token step. */
static void bench_moe_tokens(ds4_cuda_kernels *k, cudaStream_t st, const char *name, uint32_t gtype, uint32_t dtype,
                             const uint8_t *d_gate, const uint8_t *d_up, const uint8_t *d_down, const int32_t *d_ids,
                             const float *d_wts, int n_sets, uint32_t n_in, uint32_t n_ff, uint32_t n_expert,
                             uint32_t n_sel, int reps, uint64_t seed) {
    const float clamp = 10.0f;
    const size_t xab = ds4_act_row_bytes(gtype, n_in), mab = ds4_act_row_bytes(dtype, n_ff) * n_sel;
    uint64_t s = seed * 7 + 3;
    std::vector<float> x(2 * (size_t)n_in), add(2 * (size_t)n_in);
    random_activation(x.data(), 2 * n_in, &s);
    random_activation(add.data(), 2 * n_in, &s);
    float *d_x, *d_add, *d_mid1, *d_mid2, *d_out1, *d_out2;
    uint8_t *d_xact, *d_mact1, *d_mact2;
    CK(cudaMalloc(&d_x, x.size() * 4));
    CK(cudaMalloc(&d_add, add.size() * 4));
    CK(cudaMalloc(&d_mid1, 2 * (size_t)n_sel * n_ff * 4));
    CK(cudaMalloc(&d_mid2, 2 * (size_t)n_sel * n_ff * 4));
    CK(cudaMalloc(&d_out1, 2 * (size_t)n_in * 4));
    CK(cudaMalloc(&d_out2, 2 * (size_t)n_in * 4));
    CK(cudaMalloc(&d_xact, 2 * xab));
    CK(cudaMalloc(&d_mact1, 2 * mab));
    CK(cudaMalloc(&d_mact2, 2 * mab));
    CK(cudaMemcpy(d_x, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_add, add.data(), add.size() * 4, cudaMemcpyHostToDevice));
    DS(ds4_cuda_quantize_act(k, gtype, d_x, d_xact, 2 * n_in, st, &err_)); /* two rows' bytes: blocks do not span them */
    auto one_token = [&](int set, int t, float *mid, uint8_t *mact, float *out) {
        const int32_t *ids = d_ids + (size_t)(set + t) * n_sel;
        DS(ds4_cuda_moe_gate_up(k, gtype, d_gate, d_up, n_in, n_ff, n_expert, ids, d_wts + (size_t)(set + t) * n_sel,
                                n_sel, clamp, d_xact + t * xab, mid, st, &err_));
        DS(ds4_cuda_quantize_act(k, dtype, mid, mact, n_sel * n_ff, st, &err_));
        DS(ds4_cuda_moe_down(k, dtype, d_down, n_ff, n_in, n_expert, ids, n_sel, mact, d_add + (size_t)t * n_in, out,
                             st, &err_));
    };
    auto two_tokens = [&](int set) {
        DS(ds4_cuda_moe_tokens_gate_up(k, gtype, d_gate, d_up, n_in, n_ff, n_expert, d_ids + (size_t)set * n_sel,
                                       d_wts + (size_t)set * n_sel, 2 * n_sel, 2, clamp, d_xact, ds4_cuda_ids_src{},
                                       d_mid2, st, &err_));
        DS(ds4_cuda_quantize_act(k, dtype, d_mid2, d_mact2, 2 * n_sel * n_ff, st, &err_));
        DS(ds4_cuda_moe_tokens_down(k, dtype, d_down, n_ff, n_in, n_expert, d_ids + (size_t)set * n_sel, 2 * n_sel, 2,
                                    d_mact2, d_add, ds4_cuda_ids_src{}, d_out2, st, &err_));
    };
    for (int t = 0; t < 2; t++)
        one_token(0, t, d_mid1 + (size_t)t * n_sel * n_ff, d_mact1 + t * mab, d_out1 + (size_t)t * n_in);
    CK(cudaMemsetAsync(d_mid2, 0xff, 2 * (size_t)n_sel * n_ff * 4, st));
    CK(cudaMemsetAsync(d_out2, 0xff, 2 * (size_t)n_in * 4, st));
    two_tokens(0);
    std::vector<float> m1(2 * (size_t)n_sel * n_ff), m2(m1.size()), o1(2 * (size_t)n_in), o2(o1.size());
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(m1.data(), d_mid1, m1.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(m2.data(), d_mid2, m2.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(o1.data(), d_out1, o1.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(o2.data(), d_out2, o2.size() * 4, cudaMemcpyDeviceToHost));
    const bool mid_same = memcmp(m1.data(), m2.data(), m1.size() * 4) == 0;
    const bool out_same = memcmp(o1.data(), o2.data(), o1.size() * 4) == 0;
    timing t1[N_WAVES], t2[N_WAVES];
    time_waves(k, st, n_sets - 1, reps, [&](int c) { two_tokens(c); }, t2);
    time_waves(k, st, n_sets - 1, reps, [&](int c) { one_token(c, 0, d_mid1, d_mact1, d_out1); }, t1);
    printf("  %s, 2 tokens: mid %s, out %s; step %.2f us against one token's %.2f us (x%.2f)\n", name,
           mid_same ? "bit for bit" : "DIFFERS", out_same ? "bit for bit" : "DIFFERS", t2[0].us, t1[0].us,
           t2[0].us / t1[0].us);
    char nm[64], shape[48];
    snprintf(nm, sizeof nm, "%s step, 2 tokens", name);
    snprintf(shape, sizeof shape, "%s+%s x%u x2", type_name(gtype), type_name(dtype), n_sel);
    const double bytes = 2.0 * n_sel * (2.0 * ds4_type_row_bytes(gtype, n_in) * n_ff + ds4_type_row_bytes(dtype, n_ff) * n_in);
    add_result(nm, shape, bytes, t2, 0.0, 0, mid_same && out_same);
    CK(cudaFree(d_x));
    CK(cudaFree(d_add));
    CK(cudaFree(d_mid1));
    CK(cudaFree(d_mid2));
    CK(cudaFree(d_out1));
    CK(cudaFree(d_out2));
    CK(cudaFree(d_xact));
    CK(cudaFree(d_mact1));
    CK(cudaFree(d_mact2));
}

/* The routed-MoE decode step for n_sel experts out of n_expert stacked
 * [n_in, n_ff] gate/up and [n_ff, n_out] down matrices. */
static void bench_moe(ds4_cuda_kernels *k, cudaStream_t st, const char *name, uint32_t gtype, uint32_t dtype,
                      uint32_t n_in, uint32_t n_ff, uint32_t n_expert, uint32_t n_sel, int reps, uint64_t seed) {
    if (!selected(name)) return;
    const float clamp = 10.0f;
    size_t grow = ds4_type_row_bytes(gtype, n_in), drow = ds4_type_row_bytes(dtype, n_ff);
    size_t gexp = grow * n_ff, dexp = drow * n_in;
    uint8_t *d_gate, *d_up, *d_down;
    CK(cudaMalloc(&d_gate, gexp * n_expert));
    CK(cudaMalloc(&d_up, gexp * n_expert));
    CK(cudaMalloc(&d_down, dexp * n_expert));
    device_random_weights(gtype, d_gate, gexp * n_expert, seed + 1);
    device_random_weights(gtype, d_up, gexp * n_expert, seed + 2);
    device_random_weights(dtype, d_down, dexp * n_expert, seed + 3);

    /* Expert sets: n_sets rotations of n_sel distinct experts with weights. */
    const int n_sets = getenv("DS4_BENCH_L2_WARM") ? 1 : 64;
    uint64_t s = seed;
    std::vector<int32_t> ids(n_sets * n_sel);
    std::vector<float> wts(n_sets * n_sel);
    for (int i = 0; i < n_sets; i++) {
        for (uint32_t j = 0; j < n_sel; j++) {
            int32_t e;
            bool dup;
            do {
                e = (int32_t)(splitmix(&s) % n_expert);
                dup = false;
                for (uint32_t q = 0; q < j; q++) dup |= ids[i * n_sel + q] == e;
            } while (dup);
            ids[i * n_sel + j] = e;
            wts[i * n_sel + j] = 0.1f + 0.3f * uniform(&s);
        }
    }
    int32_t *d_ids;
    float *d_wts, *d_x, *d_mid, *d_add, *d_out;
    void *d_xact, *d_midact;
    size_t xab = ds4_act_row_bytes(gtype, n_in), mab = ds4_act_row_bytes(dtype, n_ff) * n_sel;
    CK(cudaMalloc(&d_ids, ids.size() * 4));
    CK(cudaMalloc(&d_wts, wts.size() * 4));
    CK(cudaMalloc(&d_x, n_in * 4));
    CK(cudaMalloc(&d_mid, (size_t)n_sel * n_ff * 4));
    CK(cudaMalloc(&d_add, n_in * 4));
    CK(cudaMalloc(&d_out, n_in * 4));
    CK(cudaMalloc(&d_xact, xab));
    CK(cudaMalloc(&d_midact, mab));
    CK(cudaMemcpy(d_ids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_wts, wts.data(), wts.size() * 4, cudaMemcpyHostToDevice));
    std::vector<float> x(n_in), add(n_in);
    random_activation(x.data(), n_in, &s);
    random_activation(add.data(), n_in, &s);
    CK(cudaMemcpy(d_x, x.data(), n_in * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(d_add, add.data(), n_in * 4, cudaMemcpyHostToDevice));

    /* GPU: one step with expert set 0. */
    std::vector<uint8_t> xact_cpu;
    long act_bad = check_act(k, gtype, d_x, d_xact, x.data(), n_in, xact_cpu, st);
    CK(cudaMemsetAsync(d_mid, 0xff, (size_t)n_sel * n_ff * 4, st));
    CK(cudaMemsetAsync(d_out, 0xff, n_in * 4, st));
    DS(ds4_cuda_moe_gate_up(k, gtype, d_gate, d_up, n_in, n_ff, n_expert, d_ids, d_wts, n_sel, clamp, d_xact, d_mid,
                            st, &err_));
    DS(ds4_cuda_quantize_act(k, dtype, d_mid, d_midact, n_sel * n_ff, st, &err_));
    DS(ds4_cuda_moe_down(k, dtype, d_down, n_ff, n_in, n_expert, d_ids, n_sel, d_midact, d_add, d_out, st, &err_));
    std::vector<float> mid(n_sel * n_ff), out(n_in);
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(mid.data(), d_mid, mid.size() * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(out.data(), d_out, n_in * 4, cudaMemcpyDeviceToHost));

    /* CPU reference of the same step (engine/moe.c order). */
    std::vector<float> mid_ref(n_sel * n_ff), g(n_ff), u(n_ff), out_ref(n_in, 0.0f), part(n_in);
    std::vector<uint8_t> gw(gexp), uw(gexp), dw(dexp);
    std::vector<std::vector<uint8_t>> dws(n_sel);
    for (uint32_t j = 0; j < n_sel; j++) {
        size_t e = (size_t)ids[j];
        CK(cudaMemcpy(gw.data(), d_gate + e * gexp, gexp, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(uw.data(), d_up + e * gexp, gexp, cudaMemcpyDeviceToHost));
        dws[j].resize(dexp);
        CK(cudaMemcpy(dws[j].data(), d_down + e * dexp, dexp, cudaMemcpyDeviceToHost));
        ds4_matvec(gtype, gw.data(), n_ff, n_in, xact_cpu.data(), g.data());
        ds4_matvec(gtype, uw.data(), n_ff, n_in, xact_cpu.data(), u.data());
        for (uint32_t r = 0; r < n_ff; r++) mid_ref[j * n_ff + r] = swiglu(g[r], u[r], clamp, wts[j]);
    }
    double mid_err = rel_err(mid.data(), mid_ref.data(), mid.size());
    std::vector<uint8_t> midact_cpu(mab);
    ds4_quantize_act(dtype, mid_ref.data(), midact_cpu.data(), n_sel * n_ff);
    size_t mrow = ds4_act_row_bytes(dtype, n_ff);
    std::vector<float> acc(n_in, 0.0f);
    for (uint32_t j = 0; j < n_sel; j++) {
        ds4_matvec(dtype, dws[j].data(), n_in, n_ff, midact_cpu.data() + j * mrow, part.data());
        for (uint32_t o = 0; o < n_in; o++) acc[o] += part[o];
    }
    for (uint32_t o = 0; o < n_in; o++) out_ref[o] = acc[o] + add[o];
    double out_err = rel_err(out.data(), out_ref.data(), n_in);

    /* The down kernel alone on the CPU's quantised mid: summation order only. */
    CK(cudaMemcpy(d_midact, midact_cpu.data(), mab, cudaMemcpyHostToDevice));
    DS(ds4_cuda_moe_down(k, dtype, d_down, n_ff, n_in, n_expert, d_ids, n_sel, d_midact, d_add, d_out, st, &err_));
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(out.data(), d_out, n_in * 4, cudaMemcpyDeviceToHost));
    double down_err = rel_err(out.data(), out_ref.data(), n_in);
    printf("  %s: mid err %.2e, out err %.2e (GPU chain), down-only err %.2e\n", name, mid_err, out_err, down_err);

    bool ok = act_bad == 0 && mid_err < 1e-5 && down_err < 1e-5 && out_err < 1e-2;
    double gu_bytes = 2.0 * n_sel * gexp + xab + 4.0 * n_sel * n_ff;
    double dn_bytes = (double)n_sel * dexp + mab + 8.0 * n_in;
    char shape[48];
    snprintf(shape, sizeof shape, "%s %ux%u x%u", type_name(gtype), n_in, n_ff, n_sel);
    char nm[64];
    timing t[N_WAVES];
    time_waves(k, st, n_sets, reps, [&](int i) {
        DS(ds4_cuda_moe_gate_up(k, gtype, d_gate, d_up, n_in, n_ff, n_expert, d_ids + i * n_sel, d_wts + i * n_sel,
                                n_sel, clamp, d_xact, d_mid, st, &err_));
    }, t);
    snprintf(nm, sizeof nm, "%s gate+up", name);
    add_result(nm, shape, gu_bytes, t, mid_err, act_bad, ok);
    time_waves(k, st, n_sets, reps, [&](int i) {
        DS(ds4_cuda_moe_down(k, dtype, d_down, n_ff, n_in, n_expert, d_ids + i * n_sel, n_sel, d_midact, d_add, d_out,
                             st, &err_));
    }, t);
    snprintf(nm, sizeof nm, "%s down", name);
    snprintf(shape, sizeof shape, "%s %ux%u x%u", type_name(dtype), n_ff, n_in, n_sel);
    add_result(nm, shape, dn_bytes, t, down_err, 0, ok);
    time_waves(k, st, n_sets, reps, [&](int i) {
        DS(ds4_cuda_quantize_act(k, gtype, d_x, d_xact, n_in, st, &err_));
        DS(ds4_cuda_moe_gate_up(k, gtype, d_gate, d_up, n_in, n_ff, n_expert, d_ids + i * n_sel, d_wts + i * n_sel,
                                n_sel, clamp, d_xact, d_mid, st, &err_));
        DS(ds4_cuda_quantize_act(k, dtype, d_mid, d_midact, n_sel * n_ff, st, &err_));
        DS(ds4_cuda_moe_down(k, dtype, d_down, n_ff, n_in, n_expert, d_ids + i * n_sel, n_sel, d_midact, d_add, d_out,
                             st, &err_));
    }, t);
    snprintf(nm, sizeof nm, "%s step (4 kernels)", name);
    snprintf(shape, sizeof shape, "%s+%s x%u", type_name(gtype), type_name(dtype), n_sel);
    add_result(nm, shape, gu_bytes + dn_bytes, t, out_err, act_bad, ok);

    /* The gate/up carrying a Q8_0 product of the shared down's shape
     * (ds4_cuda_carried_mv): mid bit for bit as without it, the carried
     * rows against the CPU's product. */
    if (n_ff % 32 == 0) {
        const size_t crow = ds4_type_row_bytes(DS4_TYPE_Q8_0, n_ff), cab = ds4_act_row_bytes(DS4_TYPE_Q8_0, n_ff);
        uint8_t *d_cw;
        void *d_cact;
        float *d_cout;
        CK(cudaMalloc(&d_cw, crow * n_in));
        CK(cudaMalloc(&d_cact, cab));
        CK(cudaMalloc(&d_cout, n_in * 4));
        device_random_weights(DS4_TYPE_Q8_0, d_cw, crow * n_in, seed + 4);
        std::vector<float> cx(n_ff), cref(n_in), cout_(n_in), mid2(n_sel * n_ff);
        random_activation(cx.data(), n_ff, &s);
        std::vector<uint8_t> cact(cab), cw(crow * n_in);
        ds4_quantize_act(DS4_TYPE_Q8_0, cx.data(), cact.data(), n_ff);
        CK(cudaMemcpy(d_cact, cact.data(), cab, cudaMemcpyHostToDevice));
        CK(cudaMemcpy(cw.data(), d_cw, cw.size(), cudaMemcpyDeviceToHost));
        ds4_matvec(DS4_TYPE_Q8_0, cw.data(), n_in, n_ff, cact.data(), cref.data());
        const ds4_cuda_carried_mv c = {d_cw, d_cact, d_cout, n_in, n_ff};
        CK(cudaMemsetAsync(d_mid, 0xff, (size_t)n_sel * n_ff * 4, st));
        CK(cudaMemsetAsync(d_cout, 0xff, n_in * 4, st));
        DS(ds4_cuda_moe_gate_up_x(k, gtype, d_gate, d_up, n_in, n_ff, n_expert, d_ids, d_wts, n_sel, clamp, d_xact,
                                  NULL, ds4_cuda_ids_src{}, &c, d_mid, st, &err_));
        CK(cudaStreamSynchronize(st));
        CK(cudaMemcpy(mid2.data(), d_mid, mid2.size() * 4, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(cout_.data(), d_cout, n_in * 4, cudaMemcpyDeviceToHost));
        const bool mid_same = memcmp(mid2.data(), mid.data(), mid.size() * 4) == 0;
        const double c_err = rel_err(cout_.data(), cref.data(), n_in);
        printf("  %s carried: mid %s, carried rows err %.2e\n", name, mid_same ? "bit for bit" : "DIFFERS", c_err);
        time_waves(k, st, n_sets, reps, [&](int i) {
            DS(ds4_cuda_moe_gate_up_x(k, gtype, d_gate, d_up, n_in, n_ff, n_expert, d_ids + i * n_sel,
                                      d_wts + i * n_sel, n_sel, clamp, d_xact, NULL, ds4_cuda_ids_src{}, &c, d_mid, st,
                                      &err_));
        }, t);
        snprintf(nm, sizeof nm, "%s gate+up, carried down", name);
        snprintf(shape, sizeof shape, "%s x%u + Q8_0 %ux%u", type_name(gtype), n_sel, n_ff, n_in);
        add_result(nm, shape, gu_bytes + (double)crow * n_in + cab + 4.0 * n_in, t, c_err, 0,
                   mid_same && c_err < 1e-5);
        CK(cudaFree(d_cw));
        CK(cudaFree(d_cact));
        CK(cudaFree(d_cout));
    }

    if (n_sets > 1 && xab % 16 == 0) bench_moe_tokens(k, st, name, gtype, dtype, d_gate, d_up, d_down, d_ids, d_wts, n_sets, n_in, n_ff,
                                     n_expert, n_sel, reps, seed);
    CK(cudaFree(d_gate));
    CK(cudaFree(d_up));
    CK(cudaFree(d_down));
    CK(cudaFree(d_ids));
    CK(cudaFree(d_wts));
    CK(cudaFree(d_x));
    CK(cudaFree(d_mid));
    CK(cudaFree(d_add));
    CK(cudaFree(d_out));
    CK(cudaFree(d_xact));
    CK(cudaFree(d_midact));
}

#include "cuda_mmq_bench.cuh"

static void usage(void) {
    fprintf(stderr, "usage: ds4-cuda-bench [--host-check] [--mmq] [--contention] [--reps N] [--quick] [--device D] "
                    "[--only SUBSTR]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int reps = 30, device = 0;
    bool quick = false, mmq = false, contention = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--host-check")) return host_check() | mmq_host_check();
        else if (!strcmp(argv[i], "--mmq")) mmq = true;
        else if (!strcmp(argv[i], "--contention")) contention = true;
        else if (!strcmp(argv[i], "--quick")) quick = true;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) device = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) g_only = argv[++i];
        else usage();
    }
    if (reps < 1) usage();
    if (host_check()) g_failures++;
    ds4_cuda_kernels *k;
    DS(ds4_cuda_kernels_init(&k, device, &err_));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    if (mmq) { /* the batched products only */
        if (mmq_host_check()) g_failures++;
        mmq_bench(k, st, reps, quick);
        printf("%s: %d check(s) failed\n", g_failures ? "FAIL" : "ok", g_failures);
        ds4_cuda_kernels_free(k);
        return g_failures ? 1 : 0;
    }
    double memcpy_gbs, kernel_gbs;
    g_copy_gbs = copy_bandwidth(st, reps, ds4_cuda_kernels_sm_count(k), &memcpy_gbs, &kernel_gbs);
    timing te = time_graph(st, 256, reps, [&](int i) { k_empty<<<1, 32, 0, st>>>(); });
    printf("device: %s, %d SMs; device-to-device copy (read+write) %.1f GB/s cudaMemcpy, %.1f GB/s copy kernel; "
           "empty kernel in a graph %.2f us\n",
           ds4_cuda_kernels_device_name(k), ds4_cuda_kernels_sm_count(k), memcpy_gbs, kernel_gbs, te.us);
    double poll_ns, wait_ns;
    dep_latency(st, ds4_cuda_kernels_sm_count(k), reps, &poll_ns, &wait_ns);
    printf("after a kernel's last store (st.release): a poll sees it in %.0f ns, the next kernel's "
           "griddepcontrol.wait returns in %.0f ns\n", poll_ns, wait_ns);
    if (contention) {
        stream_chain(st, ds4_cuda_kernels_sm_count(k));
        ds4_cuda_kernels_free(k);
        return 0;
    }

    /* Odd shapes: unaligned rows (the 2-byte staging path), one-block rows. */
    bench_matvec(k, st, "odd q8_0", DS4_TYPE_Q8_0, 96, 37, 3, 11);
    bench_matvec(k, st, "odd iq2_xxs", DS4_TYPE_IQ2_XXS, 256, 50, 3, 12);
    bench_matvec(k, st, "odd q2_K", DS4_TYPE_Q2_K, 256, 50, 3, 13);
    bench_matvec(k, st, "odd q4_K", DS4_TYPE_Q4_K, 512, 33, 3, 14);
    bench_matvec(k, st, "odd f16", DS4_TYPE_F16, 72, 29, 3, 15);
    bench_moe(k, st, "odd moe-q2", DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, 256, 256, 8, 6, 3, 16);

    /* Real decode shapes (model-spec §2.2). */
    bench_matvec(k, st, "attn_q_b", DS4_TYPE_Q8_0, 1024, 32768, reps, 21);
    bench_matvec(k, st, "attn_q_a", DS4_TYPE_Q8_0, 4096, 1024, reps, 22);
    bench_matvec(k, st, "attn_kv", DS4_TYPE_Q8_0, 4096, 512, reps, 23);
    bench_matvec(k, st, "attn_output_a", DS4_TYPE_Q8_0, 4096, 8192, reps, 24);
    bench_matvec(k, st, "attn_output_b", DS4_TYPE_Q8_0, 8192, 4096, reps, 25);
    bench_matvec(k, st, "shexp gate", DS4_TYPE_Q8_0, 4096, 2048, reps, 26);
    bench_matvec(k, st, "shexp down", DS4_TYPE_Q8_0, 2048, 4096, reps, 27);
    if (!quick) bench_matvec(k, st, "output head", DS4_TYPE_Q8_0, 4096, 129280, reps, 28);
    bench_matvec(k, st, "router", DS4_TYPE_F16, 4096, 256, reps, 31);
    bench_matvec(k, st, "compressor kv", DS4_TYPE_F16, 4096, 1024, reps, 32);
    bench_matvec(k, st, "indexer q_b", DS4_TYPE_F16, 1024, 8192, reps, 33);
    bench_matvec(k, st, "hc_attn_fn", DS4_TYPE_F16, 16384, 24, reps, 34);
    bench_matvec(k, st, "expert gate iq2_xxs", DS4_TYPE_IQ2_XXS, 4096, 2048, reps, 41);
    bench_matvec(k, st, "expert down q2_K", DS4_TYPE_Q2_K, 2048, 4096, reps, 42);
    bench_matvec(k, st, "expert gate q4_K", DS4_TYPE_Q4_K, 4096, 2048, reps, 43);
    bench_matvec(k, st, "expert down q4_K", DS4_TYPE_Q4_K, 2048, 4096, reps, 44);
    bench_matvec(k, st, "big iq2_xxs", DS4_TYPE_IQ2_XXS, 4096, 65536, reps, 45);
    bench_matvec(k, st, "big q2_K", DS4_TYPE_Q2_K, 4096, 65536, reps, 46);
    bench_matvec(k, st, "big q4_K", DS4_TYPE_Q4_K, 4096, 65536, reps, 47);
    bench_moe(k, st, "moe q2", DS4_TYPE_IQ2_XXS, DS4_TYPE_Q2_K, 4096, 2048, 256, 6, reps, 51);
    bench_moe(k, st, "moe q4", DS4_TYPE_Q4_K, DS4_TYPE_Q4_K, 4096, 2048, 256, 6, reps, 52);
    /* The shared expert through the same kernels (one Q8_0 "expert", chosen
     * from 64 copies so that the timing rotates past the L2). */
    bench_moe(k, st, "shexp fused", DS4_TYPE_Q8_0, DS4_TYPE_Q8_0, 4096, 2048, 64, 1, reps, 53);

    printf("\n%s, %d SMs; copy %.1f GB/s; empty graph kernel %.2f us; reps %d\n", ds4_cuda_kernels_device_name(k),
           ds4_cuda_kernels_sm_count(k), g_copy_gbs, te.us, reps);
    printf("| case | shape | MB/call | us/call | GB/s | %% of copy | best waves: GB/s (%%) | max rel err | check |\n");
    printf("|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (const result &r : g_results)
        printf("| %s | %s | %.2f | %.2f | %.0f | %.1f | %d: %.0f (%.1f) | %.1e | %s |\n", r.name, r.shape, r.mbytes,
               r.us, r.gbs, 100.0 * r.gbs / g_copy_gbs, r.best_waves, r.best_gbs, 100.0 * r.best_gbs / g_copy_gbs,
               r.err, r.ok ? "ok" : "FAIL");
    printf("%s: %d check(s) failed\n", g_failures ? "FAIL" : "ok", g_failures);
    ds4_cuda_kernels_free(k);
    return g_failures ? 1 : 0;
}
