/* test_synth_fill.c — synthetic weights that the backend generates
 * (src/model/synth_fill.h, ds4_synth_image_build), checked on the host:
 *
 * - the block generator, run here exactly as the CUDA kernel runs it (one
 *   64-bit word at a time, any order): every block of every type it makes
 *   (Q8_0, Q2_K, Q4_K, IQ2_XXS, F16, F32) dequantises, with the library's
 *   own dequantiser, to finite values; a tensor has mean ~0 and the
 *   intended standard deviation (within 10%); the scale fields hold the
 *   fill's d/dmin; its f16 rounding equals ds4_f32_to_f16 (incl.
 *   subnormals and ties);
 * - an image built with device fills lists exactly the weight matrices of
 *   at least the threshold (sorted, in the data section, their pages left
 *   untouched — they read as zeros), and generating the fills into it on
 *   the host gives, byte for byte, the image built wholly on the host: the
 *   device path cannot differ from the host path but by the kernel;
 * - the engine refuses such an image on the cpu backend with a clear
 *   error (the data is not in memory);
 * - a flash-size q2 image with device fills (43 layers, ~81 GiB of
 *   weights) builds in seconds with only a small part resident. */
#include <math.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "../src/engine/engine.h"
#include "../src/model/synth.h"
#include "../src/quant/quant.h"
#include "model_fixture.h"
#include "testutil.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* The words of a fill in reverse order, as independent threads would. */
static void generate(const ds4_synth_fill *f, uint8_t *dst) {
    uint64_t words = (f->nbytes + 7) / 8;
    for (uint64_t w = words; w-- > 0;) {
        uint64_t v = ds4_synth_word(f, w);
        memcpy(dst + 8 * w, &v, 8 * w + 8 <= f->nbytes ? 8 : f->nbytes - 8 * w);
    }
}

static void test_f16_rounding(void) {
    uint64_t s = 99;
    int bad = 0;
    for (int i = 0; i < 2000000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t bits = (uint32_t)(s >> 32);
        if (i < 65536) bits = ((uint32_t)i << 13) | (i & 1 ? 0x1000 : 0); /* f16 grid and exact ties */
        float f;
        memcpy(&f, &bits, 4);
        if (isnan(f)) continue;
        if (ds4_synth_f16(bits) != ds4_f32_to_f16(f)) bad++;
    }
    CHECK(bad == 0, "%d f32 values round to f16 differently from ds4_f32_to_f16", bad);
}

/* One type: n_blocks blocks at standard deviation std. */
static void check_type(uint32_t type, float std) {
    ds4_synth_config c;
    ds4_synth_vocab v;
    fixture_micro(&c, &v);
    ds4_synth_vocab_free(&v);
    const ds4_type_info *ti = ds4_type_info_get(type);
    uint64_t n_blocks = type == DS4_TYPE_F16 || type == DS4_TYPE_F32 ? 4096 : 2048;
    uint64_t n = n_blocks * ti->block_elems, nbytes = n_blocks * ti->block_bytes;
    /* The fill's parameters from a real image: a tensor of this type. */
    ds4_synth_fill f = {.nbytes = nbytes, .seed = 0x1234567887654321ull, .type = type};
    if (type == DS4_TYPE_F16 || type == DS4_TYPE_F32) {
        f.mean = 0;
        f.scale = (float)(std * sqrt(3.0) / 8388608.0);
    }
    uint8_t *raw = malloc(nbytes + 8);
    float *val = malloc(sizeof(float) * n);
    if (type != DS4_TYPE_F16 && type != DS4_TYPE_F32) {
        /* Scales as synth.c calibrates them: measure with d = 1 (dmin 0), then
         * set d = std / rms (and dmin cancelling the mean for the K-quants). */
        uint32_t d_off;
        int32_t dmin_off;
        ds4_synth_block_bytes(type, &d_off, &dmin_off);
        f.d = ds4_f32_to_f16(1.0f);
        f.dmin = 0;
        generate(&f, raw);
        ds4_dequantize_row(type, raw, val, n);
        double sum = 0, sq = 0;
        for (uint64_t i = 0; i < n; i++) sum += val[i], sq += (double)val[i] * val[i];
        double mean_d = sum / n, ratio = 0;
        if (dmin_off >= 0) {
            f.d = 0;
            f.dmin = ds4_f32_to_f16(1.0f);
            generate(&f, raw);
            ds4_dequantize_row(type, raw, val, n);
            sum = 0;
            for (uint64_t i = 0; i < n; i++) sum += val[i];
            ratio = mean_d / -(sum / n);
            f.d = ds4_f32_to_f16(1.0f);
            f.dmin = ds4_f32_to_f16((float)ratio);
            generate(&f, raw);
            ds4_dequantize_row(type, raw, val, n);
            sq = 0;
            for (uint64_t i = 0; i < n; i++) sq += (double)val[i] * val[i];
        }
        float d = std / (float)sqrt(sq / n);
        f.d = ds4_f32_to_f16(d);
        f.dmin = ds4_f32_to_f16(d * (float)ratio);
        generate(&f, raw);
        int bad_scale = 0;
        for (uint64_t b = 0; b < n_blocks; b++) {
            const uint8_t *blk = raw + b * ti->block_bytes;
            uint16_t hd, hm = 0;
            memcpy(&hd, blk + d_off, 2);
            if (dmin_off >= 0) memcpy(&hm, blk + dmin_off, 2);
            bad_scale += hd != f.d || (dmin_off >= 0 && hm != f.dmin);
        }
        CHECK(bad_scale == 0, "%s: %d blocks with other scales than the fill's", ti->name, bad_scale);
    } else {
        generate(&f, raw);
    }
    ds4_dequantize_row(type, raw, val, n);
    double sum = 0, sq = 0;
    uint64_t bad = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (!isfinite(val[i])) bad++;
        sum += val[i];
        sq += (double)val[i] * val[i];
    }
    double mean = sum / n, sd = sqrt(sq / n - mean * mean);
    CHECK(bad == 0, "%s: %llu non-finite values", ti->name, (unsigned long long)bad);
    CHECK(fabs(sd / std - 1) < 0.1, "%s: standard deviation %g, intended %g", ti->name, sd, (double)std);
    CHECK(fabs(mean) < 0.1 * std, "%s: mean %g at standard deviation %g", ti->name, mean, (double)std);
    /* Words are independent of order: the forward pass gives the same bytes. */
    uint8_t *fwd = malloc(nbytes + 8);
    for (uint64_t w = 0; w * 8 < nbytes; w++) {
        uint64_t x = ds4_synth_word(&f, w);
        memcpy(fwd + 8 * w, &x, 8 * w + 8 <= nbytes ? 8 : nbytes - 8 * w);
    }
    CHECK(memcmp(fwd, raw, nbytes) == 0, "%s: words depend on their order", ti->name);
    free(fwd);
    free(raw);
    free(val);
}

static void test_block_generator(void) {
    const uint32_t types[] = {DS4_TYPE_Q8_0, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS, DS4_TYPE_F16,
                              DS4_TYPE_F32};
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) {
        CHECK(ds4_synth_fill_type_ok(types[i]), "type %u not generated", types[i]);
        check_type(types[i], 1.0f / 64.0f);  /* 1/sqrt(4096): a projection of the flash width */
        check_type(types[i], 1.0f / 45.25f); /* 1/sqrt(2048): the expert down projection */
    }
    CHECK(!ds4_synth_fill_type_ok(DS4_TYPE_I32), "I32 cannot be generated");
}

/* Device-fill image against the host-built one. */
static void test_image(const char *experts, ds4_weight_form form, uint64_t min_bytes) {
    ds4_err err = {{0}};
    ds4_synth_config c;
    ds4_synth_vocab v;
    fixture_micro(&c, &v);
    c.weights = form;
    CHECK(ds4_synth_expert_types(experts, &c.expert_gate_type, &c.expert_down_type, &err) == 0, "%s", err.msg);
    ds4_synth_image host = {0}, dev = {0};
    CHECK(ds4_synth_image_build(&c, 0, &host, &err) == 0, "%s", err.msg);
    CHECK(ds4_synth_image_build(&c, min_bytes, &dev, &err) == 0, "%s", err.msg);
    CHECK(host.n_fills == 0 && !host.mapped && dev.mapped, "fills %u, mapped %d/%d", host.n_fills, host.mapped,
          dev.mapped);
    if (!host.base || !dev.base) goto done;
    CHECK(dev.size == host.size, "sizes %llu and %llu", (unsigned long long)dev.size, (unsigned long long)host.size);
    gguf_file g;
    CHECK(gguf_open_memory(&g, host.base, host.size, &err) == 0, "%s", err.msg);
    /* Exactly the matrices of at least min_bytes, in order. */
    uint32_t want = 0, k = 0;
    uint64_t bytes = 0;
    for (uint64_t i = 0; i < g.n_tensors; i++) {
        const gguf_tensor_info *t = &g.tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%.*s", (int)t->name.len, t->name.ptr);
        /* Matrices: every 2-D or 3-D tensor but the compressors' APE and tid2eid (layout.c). */
        bool matrix = t->n_dims >= 2 && !strstr(name, "_ape.") && !strstr(name, "tid2eid");
        if (matrix && t->nbytes >= min_bytes) {
            want++;
            bytes += t->nbytes;
            uint64_t off = (uint64_t)((const uint8_t *)t->data - (const uint8_t *)host.base);
            CHECK(k < dev.n_fills && dev.fills[k].offset == off && dev.fills[k].nbytes == t->nbytes,
                  "%s: fill %u does not match", name, k);
            k++;
        }
    }
    CHECK(want == dev.n_fills && bytes == dev.fill_bytes, "%u fills (%llu bytes), expected %u (%llu)", dev.n_fills,
          (unsigned long long)dev.fill_bytes, want, (unsigned long long)bytes);
    gguf_close(&g);
    /* Untouched data reads as zeros; generating it gives the host image. */
    uint8_t *d = dev.base;
    bool zero = true;
    for (uint32_t i = 0; i < dev.n_fills; i++) {
        for (uint64_t b = 0; b < dev.fills[i].nbytes; b += 4099) zero &= d[dev.fills[i].offset + b] == 0;
        generate(&dev.fills[i], d + dev.fills[i].offset);
    }
    CHECK(zero, "device-filled tensors were written on the host");
    CHECK(memcmp(dev.base, host.base, host.size) == 0, "%s/%d: host generation of the fills differs from the host image",
          experts, (int)form);

    /* The cpu backend refuses the fills (the weights are not in memory). */
    ds4_engine *e = NULL;
    ds4_engine_config cfg = {.model_image = dev.base, .model_image_size = dev.size, .ctx = 64, .threads = 1,
                             .backend = "cpu", .synth_fills = dev.fills, .n_synth_fills = dev.n_fills};
    CHECK(ds4_engine_open(&e, &cfg, &err) == -1 && strstr(err.msg, "generated on the GPU") &&
              strstr(err.msg, "cpu backend"),
          "cpu backend with device fills: %s", err.msg);
    cfg.backend = NULL;
#ifndef DS4_CUDA
    CHECK(ds4_engine_open(&e, &cfg, &err) == -1 && strstr(err.msg, "generated on the GPU"),
          "default backend without CUDA: %s", err.msg);
#endif
    cfg.model_image = NULL;
    cfg.model_path = "unused.gguf";
    CHECK(ds4_engine_open(&e, &cfg, &err) == -1 && strstr(err.msg, "without a model image"), "fills without image: %s",
          err.msg);
    ds4_engine_close(e);
done:
    ds4_synth_image_free(&host);
    ds4_synth_image_free(&dev);
    ds4_synth_vocab_free(&v);
}

/* Resident set of the process, from getrusage (max) — kB. */
static long max_rss_kb(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
}

static void test_flash_image(void) {
    ds4_err err = {{0}};
    ds4_synth_config c;
    memset(&c, 0, sizeof c);
    c.seed = 1;
    CHECK(ds4_synth_preset("flash", 0, &c.hp, &err) == 0, "%s", err.msg);
    CHECK(ds4_synth_expert_types("q2", &c.expert_gate_type, &c.expert_down_type, &err) == 0, "%s", err.msg);
    long rss0 = max_rss_kb();
    double t0 = now_s();
    ds4_synth_image img = {0};
    CHECK(ds4_synth_image_build(&c, 1u << 20, &img, &err) == 0, "%s", err.msg);
    double dt = now_s() - t0;
    long rss = max_rss_kb() - rss0;
    printf("flash q2 image with device fills: %.2f GiB, %.2f GiB of it in %u fills, built in %.2f s, "
           "resident +%.0f MiB\n", img.size / 1073741824.0, img.fill_bytes / 1073741824.0, img.n_fills, dt,
           rss / 1024.0);
    CHECK(img.size > (80ull << 30) && img.fill_bytes > img.size / 100 * 99, "%llu bytes, %llu in fills",
          (unsigned long long)img.size, (unsigned long long)img.fill_bytes);
    CHECK(rss < 1024 * 1024, "building made %ld kB resident", rss);
    CHECK(dt < 30, "building took %.1f s", dt);
    ds4_synth_image_free(&img);
}

int main(void) {
    (void)fixture_path; /* model_fixture.h's file helpers are not needed here */
    (void)fixture_read;
    test_f16_rounding();
    test_block_generator();
    test_image("q2", DS4_WEIGHTS_PUBLISHED, 1);
    test_image("q4", DS4_WEIGHTS_F16, 4096);
    test_image("f16", DS4_WEIGHTS_F32, 1);
    test_flash_image();
    return TEST_DONE();
}
