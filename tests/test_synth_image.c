/* test_synth_image.c — synthetic models built in memory, and the decode
 * traffic count that ds4-bench's roofline rests on.
 *
 * - gguf_writer_write_memory() lays out exactly the bytes gguf_writer_write()
 *   puts in a file (data tensors and fill callbacks), and refuses a buffer of
 *   the wrong size;
 * - ds4_synth_model_image() equals ds4_synth_write_model()'s file byte for
 *   byte, and an engine opened on the image (ds4_engine_config.model_image)
 *   computes the same logits, bit for bit, as one opened on the file;
 * - ds4_decode_traffic_at() agrees with the bytes restated here from the
 *   shapes of model-spec §2.2 and the bits per weight of §13 (Q8_0 34 bytes
 *   per 32, IQ2_XXS 66 per 256, Q2_K 84 per 256, F16 2, I32 4), before and
 *   after the indexer starts selecting. */
#include <string.h>

#include "../src/engine/engine.h"
#include "../src/model/traffic.h"
#include "model_fixture.h"
#include "testutil.h"

static int fill_ramp(void *ctx, void *dst, uint64_t n, ds4_err *err) {
    uint8_t *p = dst;
    for (uint64_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 7 + 3);
    return 0;
}

static void test_writer_image(void) {
    ds4_err err = {{0}};
    static const float data[64] = {1, 2, 3};
    gguf_writer *w = gguf_writer_new(64);
    gguf_writer_add_str(w, "general.name", "image test");
    gguf_writer_add_u32(w, "x.count", 5);
    uint64_t ne_a[1] = {64}, ne_b[2] = {32, 3};
    CHECK(gguf_writer_add_tensor(w, "a", DS4_TYPE_F32, 1, ne_a, data, NULL, NULL, &err) == 0, "%s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "b", DS4_TYPE_Q8_0, 2, ne_b, NULL, fill_ramp, NULL, &err) == 0, "%s", err.msg);
    const char *path = fixture_path("writer.gguf");
    CHECK(gguf_writer_write(w, path, &err) == 0, "%s", err.msg);
    uint64_t fsize = 0, isize = gguf_writer_image_size(w);
    uint8_t *file = fixture_read(path, &fsize);
    CHECK(file && fsize == isize, "file %llu bytes, image size %llu", (unsigned long long)fsize,
          (unsigned long long)isize);
    uint8_t *img = malloc(isize + 1);
    memset(img, 0xee, isize + 1);
    CHECK(gguf_writer_write_memory(w, img, isize, &err) == 0, "%s", err.msg);
    CHECK(file && memcmp(file, img, isize) == 0, "image differs from the file");
    CHECK(img[isize] == 0xee, "wrote past the image");
    CHECK(gguf_writer_write_memory(w, img, isize - 1, &err) == -1 && strstr(err.msg, "needs"),
          "short buffer accepted: %s", err.msg);
    CHECK(gguf_writer_write_memory(w, img, isize + 1, &err) == -1, "long buffer accepted");
    gguf_file g;
    CHECK(gguf_open_memory(&g, img, isize, &err) == 0, "%s", err.msg);
    const gguf_tensor_info *b = gguf_find_tensor(&g, "b");
    CHECK(b && ((const uint8_t *)b->data)[5] == 7 * 5 + 3, "tensor b not filled in place");
    gguf_close(&g);
    free(img);
    free(file);
    gguf_writer_free(w);
}

static void eval_logits(ds4_engine_config *cfg, float *out, int n_vocab) {
    ds4_err err = {{0}};
    ds4_engine *e = NULL;
    ds4_session *s = NULL;
    int32_t toks[40];
    for (int i = 0; i < 40; i++) toks[i] = (i * 37 + 11) % n_vocab;
    CHECK(ds4_engine_open(&e, cfg, &err) == 0, "%s", err.msg);
    if (!e) return;
    CHECK(ds4_session_new(e, &s, &err) == 0, "%s", err.msg);
    CHECK(ds4_session_eval(s, toks, 40, NULL, NULL, &err) == 0, "%s", err.msg);
    memcpy(out, ds4_session_logits(s), sizeof *out * n_vocab);
    ds4_session_free(s);
    ds4_engine_close(e);
}

static void test_synth_image(void) {
    ds4_err err = {{0}};
    ds4_synth_config c;
    ds4_synth_vocab v;
    fixture_micro(&c, &v);
    const char *path = fixture_path("micro.gguf");
    CHECK(ds4_synth_write_model(&c, path, &err) == 0, "%s", err.msg);
    void *img = NULL;
    uint64_t isize = 0, fsize = 0;
    CHECK(ds4_synth_model_image(&c, &img, &isize, &err) == 0, "%s", err.msg);
    CHECK(((uintptr_t)img & ((2u << 20) - 1)) == 0, "image not 2 MiB-aligned");
    uint8_t *file = fixture_read(path, &fsize);
    CHECK(file && img && fsize == isize && memcmp(file, img, isize) == 0,
          "image (%llu bytes) differs from the file (%llu bytes)", (unsigned long long)isize,
          (unsigned long long)fsize);

    int n_vocab = (int)c.hp.n_vocab;
    float *a = calloc((size_t)n_vocab, sizeof *a), *b = calloc((size_t)n_vocab, sizeof *b);
    ds4_engine_config from_file = {.model_path = path, .ctx = 64, .threads = 2};
    ds4_engine_config from_image = {.model_image = img, .model_image_size = isize, .ctx = 64, .threads = 2};
    eval_logits(&from_file, a, n_vocab);
    eval_logits(&from_image, b, n_vocab);
    CHECK(memcmp(a, b, sizeof *a * n_vocab) == 0, "logits differ between file and image");

    /* A broken image: the error names the image, nothing crashes. */
    ds4_engine *e = NULL;
    ds4_engine_config truncated = {.model_image = img, .model_image_size = isize / 2, .ctx = 64};
    CHECK(ds4_engine_open(&e, &truncated, &err) == -1 && strncmp(err.msg, "model image: ", 13) == 0,
          "truncated image: %s", err.msg);
    free(a);
    free(b);
    free(file);
    free(img);
    ds4_synth_vocab_free(&v);
}

/* ---- decode traffic against the §2.2 shapes ---- */

static uint64_t q8(uint64_t n) { return n / 32 * 34; }
static uint64_t iq2xxs(uint64_t n) { return n / 256 * 66; }
static uint64_t q2k(uint64_t n) { return n / 256 * 84; }
static uint64_t f16(uint64_t n) { return n * 2; }

static uint64_t expected_traffic(const ds4_hparams *hp, uint64_t pos) {
    uint64_t D = hp->n_embd, hd = hp->head_dim, nh = hp->n_head, ql = hp->q_lora, og = hp->n_out_group;
    uint64_t ol = hp->o_lora, ff = hp->n_ff_exp, E = hp->n_expert, k = hp->n_expert_used;
    uint64_t V = hp->n_vocab, ih = hp->n_indexer_head, ihd = hp->indexer_head_dim, hc = 4, mix = 24;
    uint64_t total = q8(D * V) + f16(hc * D * 4) + f16(D); /* head, its HC mixer, one embedding row */
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        uint32_t r = hp->compress_ratio[il];
        total += q8(D * ql) + q8(ql * nh * hd) + q8(D * hd) + q8(nh * hd / og * og * ol) + q8(og * ol * D);
        total += 3 * q8(D * ff);                                  /* shared expert */
        total += k * (2 * iq2xxs(D * ff) + q2k(ff * D));          /* routed experts, q2 */
        total += 2 * f16(hc * D * mix) + f16(D * E);              /* HC mixers, router */
        if (il < hp->n_hash_layer) total += k * 4;                /* one tid2eid row */
        if (r) total += 2 * f16(D * (r == 4 ? 2 * hd : hd));      /* compressor kv + gate */
        if (r == 4) {
            total += 2 * f16(D * 2 * ihd);                        /* indexer compressor */
            if ((pos + 1) / 4 > hp->indexer_top_k) total += f16(ql * ih * ihd) + f16(D * ih);
        }
    }
    return total;
}

static void test_traffic(void) {
    ds4_err err = {{0}};
    ds4_synth_config c;
    ds4_synth_vocab v;
    fixture_micro(&c, &v);
    void *img = NULL;
    uint64_t isize = 0;
    CHECK(ds4_synth_model_image(&c, &img, &isize, &err) == 0, "%s", err.msg);
    ds4_model m;
    CHECK(ds4_model_open_memory(&m, img, isize, &err) == 0, "%s", err.msg);
    uint64_t switch_pos = 4 * (uint64_t)m.hp.indexer_top_k + 3; /* first pos with (pos+1)/4 > top_k */
    uint64_t positions[] = {0, switch_pos - 1, switch_pos, 1000};
    for (int i = 0; i < 4; i++) {
        ds4_decode_traffic t;
        ds4_decode_traffic_at(&m, positions[i], &t);
        uint64_t want = expected_traffic(&m.hp, positions[i]);
        CHECK(t.total == want, "pos %llu: %llu bytes, expected %llu", (unsigned long long)positions[i],
              (unsigned long long)t.total, (unsigned long long)want);
        CHECK(t.total == t.layers + t.head &&
              t.layers == t.attention + t.shared_expert + t.routed_experts + t.hc + t.router +
                              t.compressors + t.indexer,
              "parts do not add up at pos %llu", (unsigned long long)positions[i]);
        CHECK((t.indexer != 0) == (positions[i] >= switch_pos), "indexer at pos %llu: %llu",
              (unsigned long long)positions[i], (unsigned long long)t.indexer);
    }
    ds4_model_close(&m);
    free(img);
    ds4_synth_vocab_free(&v);
}

int main(void) {
    test_writer_image();
    test_synth_image();
    test_traffic();
    return TEST_DONE();
}
