/* ds4-quant-bench — single-thread matrix-vector speed of every weight
 * format and dot-product path (scalar / AVX2 / AVX-512), in GB/s of weight
 * bytes read, next to the machine's own read bandwidth (the roofline for a
 * memory-bound matvec). A micro-benchmark, not a test.
 *
 *   ds4-quant-bench [--mb N] [--n-in N] [--seconds S] [--type NAME]
 *
 * Each format gets a weight matrix of about N MB (default 64, larger than
 * the caches) with random codes and rows of n-in values (default 4096); the
 * activation is quantised once, as the forward pass does. Each path runs
 * the matvec repeatedly for about S seconds (default 0.5); the best run
 * counts; time is the thread's CPU time. --type limits the table to one
 * format (F32, Q8_0, IQ2_XXS, ...). Last, the time the searching weight
 * quantisers (Q2_K, Q4_K, IQ2_XXS) take per 256-value block, without and
 * with an importance matrix (best of three runs over 256 blocks). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/clock.h"
#include "../src/quant/quant.h"

#define QUANT_BLOCKS 256 /* blocks per quantiser timing */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float rng_float(uint64_t *s) { return (float)((double)(rng_next(s) >> 11) * 0x1p-53 - 0.5); }

/* Random weights: floats for the float types; random bytes with small
 * positive f16 scales for the block types. */
static void fill_weights(uint32_t type, uint8_t *w, uint64_t rows, uint64_t row_bytes, uint64_t n_in, uint64_t *s) {
    if (type == DS4_TYPE_F32 || type == DS4_TYPE_F16 || type == DS4_TYPE_BF16) {
        float *tmp = malloc(n_in * sizeof(float));
        for (uint64_t r = 0; r < rows; r++) {
            for (uint64_t i = 0; i < n_in; i++) tmp[i] = rng_float(s) * 0.1f;
            ds4_quantize_row(type, tmp, w + r * row_bytes, n_in, NULL);
        }
        free(tmp);
        return;
    }
    for (uint64_t i = 0; i + 8 <= rows * row_bytes; i += 8) {
        uint64_t v = rng_next(s);
        memcpy(w + i, &v, 8);
    }
    const ds4_type_info *ti = ds4_type_info_get(type);
    uint16_t scale = ds4_f32_to_f16(1e-3f);
    for (uint64_t b = 0; b < rows * row_bytes / ti->block_bytes; b++) {
        uint8_t *blk = w + b * ti->block_bytes;
        size_t off = type == DS4_TYPE_Q2_K ? 80 : 0; /* where d (and dmin) live */
        memcpy(blk + off, &scale, 2);
        if (type == DS4_TYPE_Q2_K || type == DS4_TYPE_Q4_K) memcpy(blk + off + 2, &scale, 2);
    }
}

/* Reads every byte (four independent 64-bit XOR chains): the bandwidth a
 * memory-bound matvec could reach on one core. */
static uint64_t read_bytes(const uint8_t *p, uint64_t bytes) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (uint64_t i = 0; i + 32 <= bytes; i += 32) {
        uint64_t v[4];
        memcpy(v, p + i, 32);
        a ^= v[0];
        b ^= v[1];
        c ^= v[2];
        d ^= v[3];
    }
    return a ^ b ^ c ^ d;
}

static double best_rate(double seconds, double bytes, void (*fn)(void *), void *arg) {
    double best = 0.0, start = ds4_thread_cpu_now();
    int runs = 0;
    do {
        double t0 = ds4_thread_cpu_now();
        fn(arg);
        double dt = ds4_thread_cpu_now() - t0;
        if (dt > 0.0 && bytes / dt > best) best = bytes / dt;
        runs++;
    } while (ds4_thread_cpu_now() - start < seconds || runs < 3);
    return best / 1e9;
}

typedef struct {
    uint32_t type;
    const uint8_t *w;
    uint64_t rows, n_in;
    const void *act;
    float *y;
    uint8_t *dst;
    uint64_t bytes;
    uint64_t sink;
} bench_job;

static void run_matvec(void *p) {
    bench_job *j = p;
    ds4_matvec(j->type, j->w, j->rows, j->n_in, j->act, j->y);
}
static void run_read(void *p) {
    bench_job *j = p;
    j->sink ^= read_bytes(j->w, j->bytes);
}
static void run_memcpy(void *p) {
    bench_job *j = p;
    memcpy(j->dst, j->w, j->bytes);
}

int main(int argc, char **argv) {
    double mb = 64, seconds = 0.5;
    uint64_t n_in = 4096;
    const char *only = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = atof(argv[++i]);
        else if (!strcmp(argv[i], "--n-in") && i + 1 < argc) n_in = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--type") && i + 1 < argc) only = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--mb N] [--n-in N (multiple of 256)] [--seconds S] [--type NAME]\n", argv[0]);
            return 2;
        }
    }
    if (!(mb > 0) || n_in == 0 || n_in % 256 || !(seconds > 0)) {
        fprintf(stderr, "ds4-quant-bench: --mb and --seconds must be > 0, --n-in a multiple of 256\n");
        return 2;
    }
    ds4_isa best = ds4_quant_best_isa();
    uint64_t total = (uint64_t)(mb * 1024 * 1024);
    uint64_t seed = 42;

    uint8_t *buf = malloc(total), *dst = malloc(total);
    float *x = malloc(n_in * sizeof(float));
    void *act = malloc(n_in * 4 + 4096);
    if (!buf || !dst || !x || !act) {
        fprintf(stderr, "ds4-quant-bench: out of memory for %.0f MB\n", mb);
        return 1;
    }
    for (uint64_t i = 0; i < total; i++) buf[i] = (uint8_t)i;
    memset(dst, 0, total);
    bench_job mem = {.w = buf, .dst = dst, .bytes = total};
    printf("single thread, %.0f MB of weights per format, rows of %llu values, best ISA %s\n", mb,
           (unsigned long long)n_in, ds4_isa_name(best));
    printf("memory read:           %6.1f GB/s\n", best_rate(seconds, (double)total, run_read, &mem));
    printf("memcpy (read + write): %6.1f GB/s of bytes copied\n\n", best_rate(seconds, (double)total, run_memcpy, &mem));

    printf("%-8s %9s %10s %10s %10s %12s\n", "format", "bits/wt", "scalar", "avx2", "avx512", "Gweights/s");
    const uint32_t types[] = {DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_BF16, DS4_TYPE_Q8_0,
                              DS4_TYPE_Q4_K, DS4_TYPE_Q2_K, DS4_TYPE_IQ2_XXS};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        uint32_t type = types[t];
        if (only && strcmp(only, ds4_type_name(type))) continue;
        uint64_t row_bytes = ds4_type_row_bytes(type, n_in), rows = total / row_bytes;
        fill_weights(type, buf, rows, row_bytes, n_in, &seed);
        for (uint64_t i = 0; i < n_in; i++) x[i] = rng_float(&seed);
        ds4_quantize_act(type, x, act, n_in);
        float *y = malloc(rows * sizeof(float));
        bench_job job = {.type = type, .w = buf, .rows = rows, .n_in = n_in, .act = act, .y = y};
        double rate[3] = {0, 0, 0}, bytes = (double)(rows * row_bytes);
        for (int isa = 0; isa <= (int)best; isa++) {
            ds4_quant_set_isa((ds4_isa)isa);
            rate[isa] = best_rate(seconds, bytes, run_matvec, &job);
        }
        ds4_quant_set_isa(best);
        double bits = 8.0 * (double)row_bytes / (double)n_in;
        printf("%-8s %9.4g", ds4_type_name(type), bits);
        for (int isa = 0; isa < 3; isa++) {
            if (isa <= (int)best) printf(" %10.2f", rate[isa]);
            else printf(" %10s", "-");
        }
        printf(" %12.2f\n", rate[best] * 8.0 / bits);
        free(y);
    }
    printf("\n(GB/s of weight bytes per second of thread CPU time; the activation is quantised\n"
           " once, outside the timing)\n\nquantisers, %d blocks of near-Gaussian values, best of 3 runs:\n"
           "%-8s %14s %14s\n", QUANT_BLOCKS, "format", "no imatrix", "imatrix");
    const uint32_t searched[] = {DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS};
    const uint64_t n = QUANT_BLOCKS * 256;
    float *src = malloc(n * sizeof(float)), *imat = malloc(n * sizeof(float));
    uint8_t *blocks = malloc(n * 2); /* more than any of the three needs */
    for (uint64_t i = 0; i < n; i++) { /* sums of uniforms: roughly Gaussian */
        float v = 0.0f, u = 0.0f;
        for (int k = 0; k < 4; k++) v += rng_float(&seed), u += rng_float(&seed);
        src[i] = 0.02f * v;
        imat[i] = expf(2.5f * u); /* skewed positive importances, like activations' mean squares */
    }
    for (size_t t = 0; t < sizeof searched / sizeof searched[0]; t++) {
        if (only && strcmp(only, ds4_type_name(searched[t]))) continue;
        printf("%-8s", ds4_type_name(searched[t]));
        for (int with_imatrix = 0; with_imatrix < 2; with_imatrix++) {
            double best = 1e30;
            for (int run = 0; run < 3; run++) {
                double t0 = ds4_thread_cpu_now();
                ds4_quantize_row(searched[t], src, blocks, n, with_imatrix ? imat : NULL);
                double dt = ds4_thread_cpu_now() - t0;
                best = dt < best ? dt : best;
            }
            printf(" %8.1f us/blk", best * 1e6 / QUANT_BLOCKS);
        }
        printf("\n");
    }
    printf("(thread CPU time per 256-value block; per value: divide by 256)\n");
    free(src);
    free(imat);
    free(blocks);
    free(buf);
    free(dst);
    free(x);
    free(act);
    return mem.sink == 12345 ? 1 : 0;
}
