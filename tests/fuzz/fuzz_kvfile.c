/* fuzz_kvfile.c — libFuzzer target for reading `.kv` cache files (`make fuzz`).
 *
 * Each input is written as a cache file named by the SHA-1 of the text its
 * header claims to hold, and a lookup for that text is run with a fake
 * session that hashes the payload it is given. A hit is allowed only when
 * the file really is intact: its SHA-1 over the file (hits and last used
 * zeroed) matches the integrity section, and the session received exactly
 * the payload bytes of the file. Then an eviction pass with a tiny budget
 * runs over the directory. Run:
 *   build-fuzz/fuzz/fuzz_kvfile -max_total_time=60 CORPUS_DIR tests/fuzz/corpus_kvfile
 * (the committed seed is a valid file with a KTM map, written by the store). */
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../src/kvcache/kvcache.h"

typedef struct fake {
    int n_tokens;
    EVP_MD_CTX *sha;
} fake;

static uint64_t fake_bytes(void *c) { return 0; }
static int fake_save(void *c, ds4_writer *w, ds4_err *err) { return -1; }
static int fake_load(void *c, ds4_reader *r, uint64_t nbytes, ds4_err *err) {
    fake *f = c;
    uint8_t buf[65536];
    uint32_t tokens = 0;
    for (uint64_t off = 0; off < nbytes;) {
        size_t k = nbytes - off < sizeof buf ? (size_t)(nbytes - off) : sizeof buf;
        if (r->read(r->ctx, buf, k)) return ds4_fail(err, "truncated");
        if (off == 0 && k >= 32) memcpy(&tokens, buf + 28, 4);
        EVP_DigestUpdate(f->sha, buf, k);
        off += k;
    }
    f->n_tokens = (int)tokens;
    return 0;
}
static int fake_n(void *c) { return ((fake *)c)->n_tokens; }
static void fake_reset(void *c) { ((fake *)c)->n_tokens = 0; }
static void no_log(void *ud, const char *line) {}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

static char dir[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) snprintf(dir, sizeof dir, "/tmp/fuzz_kvfile.%d", (int)getpid());
    if (size < 52) return 0;
    uint32_t t = get32(data + 48);
    if (t == 0 || t > size - 52) return 0;
    char *text = malloc(t + 2);
    memcpy(text, data + 52, t);
    memcpy(text + t, "!", 2);
    uint8_t d[20];
    SHA1((const uint8_t *)text, t, d);
    char path[128];
    int k = snprintf(path, sizeof path, "%s/", dir);
    for (int i = 0; i < 20; i++) k += snprintf(path + k, sizeof path - k, "%02x", d[i]);
    snprintf(path + k, sizeof path - k, ".kv");

    ds4_kvcache_config c;
    ds4_kvcache_config_defaults(&c);
    c.dir = dir;
    c.min_tokens = 1;
    c.tool_memory_max_ids = 16;
    c.log = no_log;
    ds4_kvcache_identity id = {.quant_bits = 2, .ctx = 1u << 20};
    if (size >= 56) memcpy(id.model_id, data + size - 48, 20); /* the file's own claim */
    ds4_kvcache *kc;
    if (ds4_kvcache_open(&kc, &c, &id, NULL)) abort();
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, size, f);
    fclose(f);
    fake fk = {.sha = EVP_MD_CTX_new()};
    EVP_DigestInit_ex(fk.sha, EVP_sha1(), NULL);
    ds4_kvcache_io io = {.payload_bytes = fake_bytes, .save = fake_save, .load = fake_load, .n_tokens = fake_n,
                         .reset = fake_reset, .ctx = &fk};
    ds4_kvcache_hit hit;
    if (ds4_kvcache_lookup(kc, &io, text, t + 1, &hit) == 1) {
        /* intact file: checksum verifies and the payload reached the session whole */
        uint64_t covered = size - 56, p = get64(data + 40);
        uint8_t *copy = malloc(covered + 36), digest[20], got[20], want[20];
        memcpy(copy, data, covered + 36);
        memset(copy + 12, 0, 4);
        memset(copy + 32, 0, 8);
        SHA1(copy, covered + 36, digest);
        free(copy);
        if (memcmp(digest, data + covered + 36, 20) != 0) abort();
        EVP_DigestFinal_ex(fk.sha, got, NULL);
        SHA1(data + 52 + t, p, want);
        if (memcmp(got, want, 20) != 0 || hit.tokens != fk.n_tokens) abort();
        ds4_kvcache_hit_free(&hit);
    } else if (fk.n_tokens != 0) {
        abort(); /* a miss leaves the session empty */
    }
    EVP_MD_CTX_free(fk.sha);
    c.space_bytes = 1;
    ds4_kvcache_close(kc);
    if (ds4_kvcache_open(&kc, &c, &id, NULL)) abort(); /* open evicts to the 1-byte budget */
    ds4_kvcache_close(kc);
    unlink(path);
    rmdir(dir);
    free(text);
    return 0;
}
