/* test_kvcache.c — the disk KV cache store without a model.
 *
 * Payloads come from a fake session whose payload is a DSV4 header followed
 * by seeded bytes, so every byte a lookup hands back can be compared with
 * what was saved. Checked here:
 *  (a) the save policy and eviction order against restatements of
 *      server-spec §5.6 / §5.8 written in this file;
 *  (b) a written .kv file, parsed by an independent reader written from the
 *      spec (header fields, text, payload, KTM map, integrity section and its
 *      SHA-1), and its name = SHA-1 of the text;
 *  (c) longest-prefix lookup, the hit counter, "consumed" loads;
 *  (d) faults: every truncation, byte flips, zero-filled ranges, wrong
 *      magic/version/quant, a legacy file without the integrity section —
 *      never used, always removed; files of a larger ctx kept, of another
 *      model removed; stale temporary files removed;
 *  (e) a full disk (RLIMIT_FSIZE in a child, and a 1 MiB tmpfs in a private
 *      mount namespace when run as root): the save fails, no temporary file
 *      remains, earlier entries still load; a writer killed mid-save leaves
 *      only a temporary file, never used, removed once stale; a removed
 *      directory is re-created;
 *  (f) eviction keeps the directory within the budget in the spec's order;
 *  (g) three processes saving, looking up and evicting in one directory:
 *      every hit returns the exact payload and every remaining file is valid. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../src/common/file.h"
#include "../src/kvcache/kvcache.h"
#include "testutil.h"

/* ------------------------------------------------------------ fake session */

typedef struct fake {
    int n_tokens;
    uint32_t ctx, seed;
    uint64_t body;      /* bytes after the 52-byte DSV4 header */
    uint8_t *loaded;    /* what the last load received */
    uint64_t loaded_len;
} fake;

static uint8_t seeded_byte(uint32_t seed, uint64_t i) {
    uint64_t x = (seed + 1) * 0x9E3779B97F4A7C15ull ^ (i * 0xBF58476D1CE4E5B9ull);
    x ^= x >> 31;
    return (uint8_t)(x * 0x94D049BB133111EBull >> 56);
}

static void le32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/* The payload the fake writes: DSV4 header (ctx, tokens) + seeded body. */
static uint8_t *fake_payload(const fake *f, uint64_t *len) {
    *len = 52 + f->body;
    uint8_t *b = calloc(1, *len);
    le32(b, 0x34565344u);
    le32(b + 4, 1);
    le32(b + 8, f->ctx);
    le32(b + 12, f->seed);
    le32(b + 28, (uint32_t)f->n_tokens);
    for (uint64_t i = 0; i < f->body; i++) b[52 + i] = seeded_byte(f->seed, i);
    return b;
}

static uint64_t fake_bytes(void *c) { return 52 + ((fake *)c)->body; }
static int fake_save(void *c, ds4_writer *w, ds4_err *err) {
    uint64_t len;
    uint8_t *b = fake_payload(c, &len);
    int rc = 0;
    for (uint64_t off = 0; off < len && rc == 0; off += 4096)
        rc = w->write(w->ctx, b + off, len - off < 4096 ? len - off : 4096);
    free(b);
    return rc ? ds4_fail(err, "write failed") : 0;
}
static int fake_load(void *c, ds4_reader *r, uint64_t nbytes, ds4_err *err) {
    fake *f = c;
    free(f->loaded);
    f->loaded = malloc(nbytes ? nbytes : 1);
    f->loaded_len = nbytes;
    f->n_tokens = 0;
    if (nbytes < 52 || r->read(r->ctx, f->loaded, nbytes)) return ds4_fail(err, "fake: truncated");
    f->n_tokens = (int)get32(f->loaded + 28);
    return 0;
}
static int fake_n(void *c) { return ((fake *)c)->n_tokens; }
static void fake_reset(void *c) {
    fake *f = c;
    f->n_tokens = 0;
    free(f->loaded);
    f->loaded = NULL;
    f->loaded_len = 0;
}

static ds4_kvcache_io fake_io(fake *f) {
    return (ds4_kvcache_io){.payload_bytes = fake_bytes, .save = fake_save, .load = fake_load,
                            .n_tokens = fake_n, .reset = fake_reset, .ctx = f};
}

/* true when the last load returned exactly the payload of (tokens, seed). */
static bool loaded_equals(const fake *f, int tokens, uint32_t seed, uint64_t body, uint32_t ctx) {
    fake want = {.n_tokens = tokens, .seed = seed, .body = body, .ctx = ctx};
    uint64_t len;
    uint8_t *b = fake_payload(&want, &len);
    bool ok = f->loaded && f->loaded_len == len && memcmp(f->loaded, b, len) == 0;
    free(b);
    return ok;
}

/* ------------------------------------------------------------- helpers */

static const char *tmpdir(void) {
    const char *t = getenv("DS4_TMP");
    return t && *t ? t : "/tmp";
}

static int logged_removals;
static void quiet_log(void *ud, const char *line) {
    if (strstr(line, "removed") && !strstr(line, "evicted")) logged_removals++;
    if (getenv("KV_TEST_VERBOSE")) fprintf(stderr, "log: %s\n", line);
}

static const ds4_kvcache_identity ID = {.quant_bits = 2, .ctx = 65536, .model_id = {1, 2, 3, 4, 5}};

static ds4_kvcache *open_store(const char *dir, uint64_t space, ds4_kvcache_identity id) {
    ds4_kvcache_config c;
    ds4_kvcache_config_defaults(&c);
    c.dir = dir;
    c.space_bytes = space;
    c.min_tokens = 4;
    c.cold_max_tokens = 1000;
    c.log = quiet_log;
    ds4_kvcache *kc = NULL;
    ds4_err err;
    if (ds4_kvcache_open(&kc, &c, &id, &err)) fprintf(stderr, "open: %s\n", err.msg);
    return kc;
}

static void make_dir(char *out, size_t n, const char *name) {
    snprintf(out, n, "%s/%s", tmpdir(), name);
    mkdir(out, 0700);
}

static int save_text(ds4_kvcache *kc, const char *text, int tokens, uint32_t seed, uint64_t body,
                     const ds4_kvcache_tool_id *ids, int n_ids) {
    fake f = {.n_tokens = tokens, .seed = seed, .body = body, .ctx = ID.ctx};
    ds4_kvcache_io io = fake_io(&f);
    ds4_kvcache_save_req req = {.text = text, .text_len = strlen(text), .tokens = tokens,
                                .reason = DS4_KVC_REASON_COLD, .tool_ids = ids, .n_tool_ids = n_ids};
    ds4_err err;
    return ds4_kvcache_save(kc, &io, &req, &err);
}

static void path_for_text(char *out, size_t n, const char *dir, const char *text) {
    uint8_t d[20];
    SHA1((const uint8_t *)text, strlen(text), d);
    int k = snprintf(out, n, "%s/", dir);
    for (int i = 0; i < 20; i++) k += snprintf(out + k, n - k, "%02x", d[i]);
    snprintf(out + k, n - k, ".kv");
}

static void write_all(const char *path, const uint8_t *b, size_t len) {
    FILE *f = fopen(path, "wb");
    fwrite(b, 1, len, f);
    fclose(f);
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

static int count_files(const char *dir, const char *needle) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, needle)) n++;
    if (d) closedir(d);
    return n;
}

/* ------------------------------------------------ (b) independent reader */

typedef struct spec_file {
    uint8_t quant, reason, ext;
    uint32_t tokens, hits, ctx, text_len;
    uint64_t created, last_used, payload_len;
    const uint8_t *text, *payload, *ktm;
    size_t ktm_len;
    uint32_t flags;
    const uint8_t *model_id;
    bool digest_ok;
} spec_file;

/* Parses a whole .kv file from server-spec §5.3 plus our integrity section;
 * returns false when anything is out of place. */
static bool spec_parse(const uint8_t *b, size_t len, spec_file *s) {
    memset(s, 0, sizeof *s);
    if (len < 52 + 56 || memcmp(b, "KVC", 3) || b[3] != 1 || b[7] != 0 || get32(b + 20) != 0) return false;
    s->quant = b[4];
    s->reason = b[5];
    s->ext = b[6];
    s->tokens = get32(b + 8);
    s->hits = get32(b + 12);
    s->ctx = get32(b + 16);
    s->created = get64(b + 24);
    s->last_used = get64(b + 32);
    s->payload_len = get64(b + 40);
    s->text_len = get32(b + 48);
    if ((s->quant != 2 && s->quant != 4) || s->tokens == 0 || !(s->ext & 0x08)) return false;
    size_t sect = len - 56;
    if ((uint64_t)52 + s->text_len + s->payload_len > sect) return false;
    s->text = b + 52;
    s->payload = s->text + s->text_len;
    s->ktm = s->payload + s->payload_len;
    s->ktm_len = sect - (52 + s->text_len + s->payload_len);
    if (!(s->ext & 1) != (s->ktm_len == 0)) return false;
    const uint8_t *x = b + sect;
    if (memcmp(x, "KVX", 3) || x[3] != 1 || get64(x + 28) != sect) return false;
    s->flags = get32(x + 4);
    s->model_id = x + 8;
    uint8_t *copy = malloc(sect + 36);
    memcpy(copy, b, sect + 36);
    memset(copy + 12, 0, 4);
    memset(copy + 32, 0, 8);
    uint8_t d[20];
    SHA1(copy, sect + 36, d);
    free(copy);
    s->digest_ok = memcmp(d, x + 36, 20) == 0;
    return true;
}

static void test_layout(void) {
    char dir[512], path[600];
    make_dir(dir, sizeof dir, "layout");
    ds4_kvcache *kc = open_store(dir, 1 << 30, ID);
    const char *text = "<｜begin▁of▁sentence｜>system prompt with a tool call <dsml>call-a</dsml> and more";
    ds4_kvcache_tool_id ids[3] = {
        {.id = "call_1", .id_len = 6, .dsml = "<dsml>call-a</dsml>", .dsml_len = 19},
        {.id = "call_2", .id_len = 6, .dsml = "<dsml>not in the text</dsml>", .dsml_len = 28},
        {.id = "call_3", .id_len = 6, .dsml = "call-a", .dsml_len = 6},
    };
    uint64_t t0 = (uint64_t)time(NULL);
    CHECK(save_text(kc, text, 77, 9, 1000, ids, 3) == 0, "save");
    path_for_text(path, sizeof path, dir, text);
    size_t len;
    uint8_t *b = (uint8_t *)ds4_read_file(path, &len, NULL);
    CHECK(b != NULL, "file named by SHA-1 of the text: %s", path);
    spec_file s;
    if (b && spec_parse(b, len, &s)) {
        CHECK(s.quant == 2 && s.reason == 1 && s.ext == (0x08 | 0x01), "quant %u reason %u ext %#x", s.quant,
              s.reason, s.ext);
        CHECK(s.tokens == 77 && s.hits == 0 && s.ctx == ID.ctx, "tokens %u hits %u ctx %u", s.tokens, s.hits,
              s.ctx);
        CHECK(s.created >= t0 && s.created <= t0 + 5 && s.last_used == s.created, "times");
        CHECK(s.text_len == strlen(text) && memcmp(s.text, text, s.text_len) == 0, "text");
        fake f = {.n_tokens = 77, .seed = 9, .body = 1000, .ctx = ID.ctx};
        uint64_t plen;
        uint8_t *p = fake_payload(&f, &plen);
        CHECK(s.payload_len == plen && memcmp(s.payload, p, plen) == 0, "payload bytes");
        free(p);
        /* KTM: "KTM" 1, count, {id_len, dsml_len, id, dsml}: entries 1 and 3 occur in the text */
        CHECK(s.ktm_len == 8 + (8 + 6 + 19) + (8 + 6 + 6), "ktm length %zu", s.ktm_len);
        CHECK(memcmp(s.ktm, "KTM\1", 4) == 0 && get32(s.ktm + 4) == 2, "ktm header");
        CHECK(get32(s.ktm + 8) == 6 && get32(s.ktm + 12) == 19 && memcmp(s.ktm + 16, "call_1", 6) == 0 &&
                  memcmp(s.ktm + 22, "<dsml>call-a</dsml>", 19) == 0,
              "ktm entry 1");
        CHECK(memcmp(s.ktm + 41 + 8, "call_3", 6) == 0, "ktm entry 2");
        CHECK(s.flags == 0 && memcmp(s.model_id, ID.model_id, 20) == 0, "integrity flags / model id");
        CHECK(s.digest_ok, "SHA-1 over the file (hits, last used zeroed) matches");
    } else {
        CHECK(0, "independent reader rejects the file");
    }
    /* lookup returns the map; a hit bumps the counter and last used in place */
    fake f = {0};
    ds4_kvcache_io io = fake_io(&f);
    ds4_kvcache_hit hit;
    char req[512];
    snprintf(req, sizeof req, "%s and the next user turn", text);
    CHECK(ds4_kvcache_lookup(kc, &io, req, strlen(req), &hit) == 1, "lookup hit");
    CHECK(hit.tokens == 77 && hit.text_bytes == strlen(text) && hit.n_tool_ids == 2, "hit fields");
    CHECK(hit.n_tool_ids == 2 && !strcmp(hit.tool_ids[1].id, "call_3") && !strcmp(hit.tool_ids[1].dsml, "call-a"),
          "hit tool ids");
    CHECK(loaded_equals(&f, 77, 9, 1000, ID.ctx), "loaded payload bytes");
    ds4_kvcache_hit_free(&hit);
    free(b);
    b = (uint8_t *)ds4_read_file(path, &len, NULL);
    CHECK(b && spec_parse(b, len, &s) && s.hits == 1 && s.last_used >= t0 && s.digest_ok,
          "hit count 1 after a hit, checksum still valid");
    free(b);
    /* saving the same checkpoint again leaves the file alone */
    struct stat st1, st2;
    stat(path, &st1);
    CHECK(save_text(kc, text, 77, 9, 1000, ids, 3) == 0, "re-save");
    stat(path, &st2);
    CHECK(st1.st_ino == st2.st_ino, "identical re-save keeps the file");
    fake_reset(&f);
    ds4_kvcache_close(kc);
}

/* ------------------------------------------------------------ (a) policy */

static int spec_store_len(int n, int min, int trim, int align) {
    if (n > min + trim) {
        int s = n - trim;
        if (align) s = s / align * align;
        if (s >= min) return s;
    }
    return n;
}

static void test_policy(void) {
    ds4_kvcache_config c;
    ds4_kvcache_config_defaults(&c);
    CHECK(c.min_tokens == 512 && c.cold_max_tokens == 30000 && c.continued_interval_tokens == 10000 &&
              c.boundary_trim_tokens == 32 && c.boundary_align_tokens == 2048 && !c.reject_different_quant &&
              c.space_bytes == 4096ull << 20,
          "ds4 defaults");
    CHECK(ds4_kvcache_store_len(&c, 5000) == 4096 && ds4_kvcache_store_len(&c, 1000) == 1000,
          "spec examples 5000->4096, 1000->1000");
    for (int n = 0; n < 70000; n += 37)
        CHECK(ds4_kvcache_store_len(&c, n) == spec_store_len(n, 512, 32, 2048), "store_len(%d)", n);
    c.boundary_align_tokens = 0;
    CHECK(ds4_kvcache_store_len(&c, 5000) == 4968, "no alignment");
    c.boundary_align_tokens = 2048;
    CHECK(ds4_kvcache_continued_step(&c) == 10240, "10000 rounds up to 10240");
    ds4_kvcache_schedule s;
    ds4_kvcache_schedule_reset(&s, 0);
    CHECK(ds4_kvcache_continued_target(&c, &s, 10240) == 10240, "due at 10240");
    CHECK(ds4_kvcache_continued_target(&c, &s, 10000) == 0 && ds4_kvcache_continued_target(&c, &s, 12288) == 0,
          "only at multiples of the step");
    CHECK(ds4_kvcache_next_continued(&c, &s, 3000) == 10240 && ds4_kvcache_next_continued(&c, &s, 10240) == 20480,
          "next frontier");
    ds4_kvcache_note_saved(&c, &s, 10240);
    CHECK(ds4_kvcache_continued_target(&c, &s, 10240) == 0 && ds4_kvcache_continued_target(&c, &s, 20480) == 20480,
          "no duplicate at the saved frontier");
    ds4_kvcache_note_saved(&c, &s, 4096); /* a cold save off the frontier changes nothing */
    CHECK(s.last == 10240, "cold save off a frontier");
    ds4_kvcache_schedule_reset(&s, 25000);
    CHECK(ds4_kvcache_continued_target(&c, &s, 20480) == 0 && ds4_kvcache_continued_target(&c, &s, 30720) == 30720,
          "after a disk load of 25000 the next frontier is 30720");
    c.continued_interval_tokens = 0;
    CHECK(ds4_kvcache_continued_step(&c) == 0 && ds4_kvcache_continued_target(&c, &s, 30720) == 0, "off");
    c.continued_interval_tokens = 10000;

    int32_t toks[2000];
    for (int i = 0; i < 2000; i++) toks[i] = 7;
    toks[10] = 100; /* user */
    toks[900] = 100;
    toks[1500] = 200; /* assistant */
    toks[1700] = 100;
    CHECK(ds4_kvcache_chat_anchor(&c, toks, 2000, 100, 200) == 900, "last user before the first assistant");
    toks[900] = 7;
    CHECK(ds4_kvcache_chat_anchor(&c, toks, 2000, 100, 200) == -1, "anchor below min");
    CHECK(ds4_kvcache_cold_len(&c, 0, 5000, 900) == 900, "cold at the anchor");
    CHECK(ds4_kvcache_cold_len(&c, 0, 5000, -1) == 4096, "cold at store_len");
    CHECK(ds4_kvcache_cold_len(&c, 10, 5000, 900) == 0, "no cold save after reuse");
    CHECK(ds4_kvcache_cold_len(&c, 0, 400, -1) == 0 && ds4_kvcache_cold_len(&c, 0, 30001, -1) == 0,
          "cold only for min <= prompt <= cold_max");
    c.cold_max_tokens = 0;
    CHECK(ds4_kvcache_cold_len(&c, 0, 5000, -1) == 0, "cold disabled");
    c.cold_max_tokens = 30000;
    CHECK(ds4_kvcache_should_save_live(&c, 512) && !ds4_kvcache_should_save_live(&c, 511), "live >= min");
    CHECK(ds4_kvcache_consumes_on_load(&c, 30001) && !ds4_kvcache_consumes_on_load(&c, 30000), "consumed");
    CHECK(ds4_kvcache_budget_required(100) == 101 && ds4_kvcache_budget_required(101) == 103 &&
              ds4_kvcache_budget_required(0) == 0,
          "x1.01 rounded up");

    ds4_err err;
    c.dir = "/x";
    CHECK(ds4_kvcache_config_check(&c, &err) == 0, "defaults valid");
    c.cold_max_tokens = 100;
    CHECK(ds4_kvcache_config_check(&c, &err) != 0, "cold_max below min rejected");
    c.cold_max_tokens = 0;
    CHECK(ds4_kvcache_config_check(&c, &err) == 0, "cold_max 0 allowed");
    c.min_tokens = 0;
    CHECK(ds4_kvcache_config_check(&c, &err) != 0, "min 0 rejected");
}

/* Eviction order from server-spec §5.8, restated. */
static double spec_score(const ds4_kvcache_evict_item *it, uint64_t now) {
    double eff = 0;
    if (it->hits && it->last_used) {
        eff = it->hits * pow(2.0, -((double)now - (double)it->last_used) / (6 * 3600.0));
        if (eff < 0.01) eff = 0;
    }
    return (eff + 1) * it->tokens / (double)it->file_bytes;
}

static void test_eviction_plan(void) {
    uint64_t now = 1700000000;
    ds4_kvcache_evict_item it[6] = {
        {.file_bytes = 100, .tokens = 50, .hits = 0, .last_used = now - 10},       /* 0.5 */
        {.file_bytes = 100, .tokens = 50, .hits = 3, .last_used = now},            /* 2.0 */
        {.file_bytes = 100, .tokens = 50, .hits = 3, .last_used = now - 6 * 3600}, /* 1.25 */
        {.file_bytes = 100, .tokens = 50, .hits = 0, .last_used = now - 20},       /* 0.5, older */
        {.file_bytes = 100, .tokens = 10, .hits = 0, .last_used = now, .protect = true},
        {.file_bytes = 100, .tokens = 60, .hits = 1, .last_used = now - 3600 * 60}, /* decayed to 0 */
    };
    for (int i = 0; i < 6; i++)
        CHECK(fabs(ds4_kvcache_eviction_score(&it[i], now) - spec_score(&it[i], now)) < 1e-12, "score %d", i);
    int v[6];
    int n = ds4_kvcache_plan_eviction(it, 6, 300, now, v);
    CHECK(n == 3 && v[0] == 3 && v[1] == 0 && v[2] == 5, "order: tie to older, then next lowest (%d: %d %d %d)",
          n, v[0], v[1], v[2]);
    CHECK(ds4_kvcache_plan_eviction(it, 6, 600, now, v) == 0, "within budget: nothing");
    it[4].file_bytes = 1000;
    n = ds4_kvcache_plan_eviction(it, 6, 900, now, v);
    bool took_protected = false;
    for (int i = 0; i < n; i++) took_protected |= v[i] == 4;
    CHECK(took_protected, "a protected file alone over the budget is not protected");
}

/* ---------------------------------------------------- (c) prefix lookup */

static void test_lookup(void) {
    char dir[512];
    make_dir(dir, sizeof dir, "lookup");
    ds4_kvcache *kc = open_store(dir, 1 << 30, ID);
    CHECK(save_text(kc, "alpha beta", 10, 1, 100, NULL, 0) == 0, "save 1");
    CHECK(save_text(kc, "alpha beta gamma", 16, 2, 100, NULL, 0) == 0, "save 2");
    CHECK(save_text(kc, "alpha beta gamma delta epsilon", 30, 3, 100, NULL, 0) == 0, "save 3");
    CHECK(save_text(kc, "alpha zeta", 10, 4, 100, NULL, 0) == 0, "save 4");
    CHECK(save_text(kc, "al", 3, 5, 100, NULL, 0) == 1, "below min tokens: skipped");
    fake f = {0};
    ds4_kvcache_io io = fake_io(&f);
    ds4_kvcache_hit hit;
    const char *q = "alpha beta gamma delta and more";
    CHECK(ds4_kvcache_lookup(kc, &io, q, strlen(q), &hit) == 1 && hit.text_bytes == 16 && hit.tokens == 16 &&
              loaded_equals(&f, 16, 2, 100, ID.ctx),
          "longest prefix wins (%zu)", hit.text_bytes);
    q = "alpha beta gamma delta epsilon";
    CHECK(ds4_kvcache_lookup(kc, &io, q, strlen(q), &hit) == 1 && hit.text_bytes == 30, "whole text");
    q = "alpha bet";
    CHECK(ds4_kvcache_lookup(kc, &io, q, strlen(q), &hit) == 0 && f.n_tokens == 0, "no prefix: miss, reset");
    q = "beta";
    CHECK(ds4_kvcache_lookup(kc, &io, q, strlen(q), &hit) == 0, "miss");
    /* a session not at the stored length is not saved */
    fake g = {.n_tokens = 20, .seed = 1, .body = 10, .ctx = ID.ctx};
    ds4_kvcache_io gio = fake_io(&g);
    ds4_kvcache_save_req req = {.text = "zzzzzz", .text_len = 6, .tokens = 18};
    ds4_err err;
    CHECK(ds4_kvcache_save(kc, &gio, &req, &err) == 1, "live length differs: skipped");
    /* consumed: a load longer than cold_max (1000 here) deletes the file */
    char path[600];
    CHECK(save_text(kc, "long session text", 1500, 6, 100, NULL, 0) == 0, "save long");
    path_for_text(path, sizeof path, dir, "long session text");
    q = "long session text!";
    CHECK(ds4_kvcache_lookup(kc, &io, q, strlen(q), &hit) == 1 && hit.consumed && !exists(path),
          "consumed on load");
    fake_reset(&f);
    ds4_kvcache_close(kc);
}

/* ------------------------------------------------------------- (d) faults */

/* Writes bytes under the file's own name and looks it up: it must miss,
 * hand back nothing, and the file must be gone. */
static int fault_case(ds4_kvcache *kc, const char *path, const uint8_t *b, size_t len, const char *req) {
    write_all(path, b, len);
    fake f = {0};
    ds4_kvcache_io io = fake_io(&f);
    ds4_kvcache_hit hit;
    int found = ds4_kvcache_lookup(kc, &io, req, strlen(req), &hit);
    int bad = found != 0 || f.n_tokens != 0 || exists(path);
    if (found) ds4_kvcache_hit_free(&hit);
    fake_reset(&f);
    unlink(path);
    return bad;
}

static void test_faults(void) {
    char dir[512], path[600];
    make_dir(dir, sizeof dir, "faults");
    ds4_kvcache *kc = open_store(dir, 1 << 30, ID);
    const char *text = "the cached prefix <dsml>x</dsml>";
    const char *req = "the cached prefix <dsml>x</dsml> plus a new turn";
    ds4_kvcache_tool_id id = {.id = "c1", .id_len = 2, .dsml = "<dsml>x</dsml>", .dsml_len = 14};
    CHECK(save_text(kc, text, 40, 3, 3000, &id, 1) == 0, "save");
    path_for_text(path, sizeof path, dir, text);
    size_t len;
    uint8_t *orig = (uint8_t *)ds4_read_file(path, &len, NULL), *b = malloc(len);
    int bad = 0, cases = 0;
    for (size_t cut = 0; cut < len; cut += (cut < 200 || cut > len - 200) ? 1 : 97, cases++)
        bad += fault_case(kc, path, orig, cut, req);
    CHECK(bad == 0, "truncations: %d of %d used or kept", bad, cases);
    bad = cases = 0;
    for (size_t pos = 0; pos < len; pos += (pos < 200 || pos > len - 200) ? 1 : 31) {
        if ((pos >= 12 && pos < 16) || (pos >= 32 && pos < 40)) continue; /* hits, last used: counters */
        for (int bit = 0; bit < 8; bit += 3) {
            memcpy(b, orig, len);
            b[pos] ^= (uint8_t)(1u << bit);
            bad += fault_case(kc, path, b, len, req);
            cases++;
        }
    }
    CHECK(bad == 0, "bit flips: %d of %d used or kept", bad, cases);
    bad = cases = 0;
    for (size_t pos = 0; pos < len; pos += 257, cases++) {
        memcpy(b, orig, len);
        memset(b + pos, 0, len - pos < 300 ? len - pos : 300);
        bad += fault_case(kc, path, b, len, req);
    }
    memset(b, 0, len);
    bad += fault_case(kc, path, b, len, req);
    CHECK(bad == 0, "zero-filled ranges: %d of %d used or kept", bad, cases + 1);
    memcpy(b, orig, len);
    b[0] = 'X';
    CHECK(fault_case(kc, path, b, len, req) == 0, "wrong magic");
    memcpy(b, orig, len);
    b[3] = 2;
    CHECK(fault_case(kc, path, b, len, req) == 0, "wrong version");
    memcpy(b, orig, len);
    b[4] = 8;
    CHECK(fault_case(kc, path, b, len, req) == 0, "wrong quant");
    memcpy(b, orig, len);
    b[6] &= (uint8_t)~0x08;
    CHECK(fault_case(kc, path, b, len, req) == 0, "no integrity bit (a legacy file)");
    memcpy(b, orig, len);
    b[len - 56 + 8] ^= 1; /* model id */
    CHECK(fault_case(kc, path, b, len, req) == 0, "another model's file");
    /* the intact file still works after all that */
    write_all(path, orig, len);
    fake f = {0};
    ds4_kvcache_io io = fake_io(&f);
    ds4_kvcache_hit hit;
    CHECK(ds4_kvcache_lookup(kc, &io, req, strlen(req), &hit) == 1 && loaded_equals(&f, 40, 3, 3000, ID.ctx),
          "intact file loads");
    ds4_kvcache_hit_free(&hit);
    fake_reset(&f);
    ds4_kvcache_close(kc);

    /* a server with a smaller ctx keeps the file but does not use it */
    ds4_kvcache_identity small = ID;
    small.ctx = 1024;
    kc = open_store(dir, 1 << 30, small);
    CHECK(ds4_kvcache_lookup(kc, &io, req, strlen(req), &hit) == 0 && exists(path), "larger ctx: kept, unused");
    ds4_kvcache_close(kc);
    /* another model's server removes it when it meets it */
    ds4_kvcache_identity other = ID;
    other.model_id[0] ^= 0xff;
    kc = open_store(dir, 1 << 30, other);
    CHECK(ds4_kvcache_lookup(kc, &io, req, strlen(req), &hit) == 0 && !exists(path), "other model: removed");
    ds4_kvcache_close(kc);
    /* stale temporary files go at open, fresh ones stay */
    char stale[700], fresh[700];
    snprintf(stale, sizeof stale, "%s/%040d.kv.tmp.1.0000000000000001", dir, 0);
    snprintf(fresh, sizeof fresh, "%s/%040d.kv.tmp.1.0000000000000002", dir, 0);
    write_all(stale, (const uint8_t *)"x", 1);
    write_all(fresh, (const uint8_t *)"x", 1);
    struct timespec old[2] = {{.tv_sec = time(NULL) - 7200}, {.tv_sec = time(NULL) - 7200}};
    utimensat(AT_FDCWD, stale, old, 0);
    kc = open_store(dir, 1 << 30, ID);
    CHECK(!exists(stale) && exists(fresh), "stale temporary file removed, fresh kept");
    unlink(fresh);
    ds4_kvcache_close(kc);
    free(orig);
    free(b);
}

/* ---------------------------------------------------------- (e) disk full */

static void test_disk_full(void) {
    char dir[512];
    make_dir(dir, sizeof dir, "full");
    ds4_kvcache *kc = open_store(dir, 1 << 30, ID);
    CHECK(save_text(kc, "small entry one", 20, 1, 1000, NULL, 0) == 0, "small save");
    ds4_kvcache_close(kc);
    pid_t pid = fork();
    if (pid == 0) {
        signal(SIGXFSZ, SIG_IGN);
        struct rlimit rl = {.rlim_cur = 64 << 10, .rlim_max = 64 << 10};
        setrlimit(RLIMIT_FSIZE, &rl);
        ds4_kvcache *k = open_store(dir, 1 << 30, ID);
        int rc = save_text(k, "a big entry that does not fit", 30, 2, 200 << 10, NULL, 0);
        int rc2 = save_text(k, "small entry two", 20, 3, 1000, NULL, 0);
        ds4_kvcache_close(k);
        _exit(rc == -1 && rc2 == 0 ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "over RLIMIT_FSIZE: the save fails, the next works");
    CHECK(count_files(dir, ".tmp.") == 0, "no temporary file left");
    char path[600];
    path_for_text(path, sizeof path, dir, "a big entry that does not fit");
    CHECK(!exists(path), "nothing under the real name");
    kc = open_store(dir, 1 << 30, ID);
    fake f = {0};
    ds4_kvcache_io io = fake_io(&f);
    ds4_kvcache_hit hit;
    const char *q = "small entry one, continued";
    CHECK(ds4_kvcache_lookup(kc, &io, q, strlen(q), &hit) == 1 && loaded_equals(&f, 20, 1, 1000, ID.ctx),
          "earlier entry intact");
    q = "small entry two!";
    CHECK(ds4_kvcache_lookup(kc, &io, q, strlen(q), &hit) == 1, "later entry written");
    fake_reset(&f);
    ds4_kvcache_close(kc);
}

/* A really full disk: a 1 MiB tmpfs in a private mount namespace (needs
 * root; skipped otherwise). Writes fail with ENOSPC. */
static int tmpfs_child(const char *dir) {
    if (unshare(CLONE_NEWNS) != 0 || mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0 ||
        mount("tmpfs", dir, "tmpfs", 0, "size=1m") != 0)
        return 77;
    ds4_kvcache *kc = open_store(dir, 1 << 30, ID);
    int fails = 0;
    fails += save_text(kc, "first entry", 20, 1, 300 << 10, NULL, 0) != 0;
    fails += save_text(kc, "second entry", 20, 2, 300 << 10, NULL, 0) != 0;
    fails += save_text(kc, "third entry, too big", 20, 3, 600 << 10, NULL, 0) != -1;
    fails += count_files(dir, ".tmp.") != 0;
    fails += count_files(dir, ".kv") != 2;
    fake f = {0};
    ds4_kvcache_io io = fake_io(&f);
    ds4_kvcache_hit hit;
    fails += ds4_kvcache_lookup(kc, &io, "first entry!", 12, &hit) != 1 || !loaded_equals(&f, 20, 1, 300 << 10, ID.ctx);
    fails += ds4_kvcache_lookup(kc, &io, "second entry!", 13, &hit) != 1 ||
             !loaded_equals(&f, 20, 2, 300 << 10, ID.ctx);
    fake_reset(&f);
    ds4_kvcache_close(kc);
    return fails ? 1 : 0;
}

static void test_tmpfs_full(void) {
    char dir[512];
    make_dir(dir, sizeof dir, "tmpfs");
    pid_t pid = fork();
    if (pid == 0) _exit(tmpfs_child(dir));
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
        printf("note: no private tmpfs here (not root?); the RLIMIT_FSIZE case covers a full disk\n");
        return;
    }
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "1 MiB tmpfs: the save that does not fit fails, no temporary file, earlier entries load");
}

/* A server killed in the middle of a save: its payload writer dies after
 * half the bytes. Nothing appears under the real name, the temporary file
 * is ignored (not counted, not used) until it is stale, then removed. */
static int dying_save(void *c, ds4_writer *w, ds4_err *err) {
    uint64_t len;
    uint8_t *b = fake_payload(c, &len);
    w->write(w->ctx, b, len / 2);
    raise(SIGKILL);
    free(b);
    return ds4_fail(err, "unreachable");
}

static void test_killed_save(void) {
    char dir[512], path[600];
    make_dir(dir, sizeof dir, "killed");
    ds4_kvcache *kc = open_store(dir, 1 << 30, ID);
    CHECK(save_text(kc, "survivor", 20, 1, 5000, NULL, 0) == 0, "save");
    pid_t pid = fork();
    if (pid == 0) {
        fake f = {.n_tokens = 20, .seed = 2, .body = 3 << 20, .ctx = ID.ctx};
        ds4_kvcache_io io = fake_io(&f);
        io.save = dying_save;
        ds4_kvcache_save_req req = {.text = "victim text", .text_len = 11, .tokens = 20};
        ds4_err err;
        ds4_kvcache_save(kc, &io, &req, &err);
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "writer killed mid-save");
    path_for_text(path, sizeof path, dir, "victim text");
    CHECK(!exists(path) && count_files(dir, ".tmp.") == 1, "no file under the real name, one temporary file");
    int n = 0;
    ds4_kvcache_disk_bytes(kc, &n);
    CHECK(n == 1, "the temporary file is not an entry");
    fake f = {0};
    ds4_kvcache_io io = fake_io(&f);
    ds4_kvcache_hit hit;
    CHECK(ds4_kvcache_lookup(kc, &io, "victim text and more", 20, &hit) == 0, "nothing to load for it");
    CHECK(ds4_kvcache_lookup(kc, &io, "survivor and more", 17, &hit) == 1 && loaded_equals(&f, 20, 1, 5000, ID.ctx),
          "the other entry still loads");
    fake_reset(&f);
    DIR *d = opendir(dir);
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (!strstr(de->d_name, ".tmp.")) continue;
        char tmp[1024];
        snprintf(tmp, sizeof tmp, "%s/%s", dir, de->d_name);
        struct timespec old[2] = {{.tv_sec = time(NULL) - 7200}, {.tv_sec = time(NULL) - 7200}};
        utimensat(AT_FDCWD, tmp, old, 0);
    }
    if (d) closedir(d);
    ds4_kvcache_evict(kc);
    CHECK(count_files(dir, ".tmp.") == 0, "stale temporary file removed by the next listing");
    ds4_kvcache_close(kc);
}

/* The directory removed under a running store: the next save re-creates it. */
static void test_dir_removed(void) {
    char dir[512];
    make_dir(dir, sizeof dir, "gone");
    ds4_kvcache *kc = open_store(dir, 1 << 30, ID);
    CHECK(save_text(kc, "before removal", 20, 1, 100, NULL, 0) == 0, "save");
    char path[600];
    path_for_text(path, sizeof path, dir, "before removal");
    unlink(path);
    rmdir(dir);
    CHECK(save_text(kc, "after removal", 20, 2, 100, NULL, 0) == 0 && count_files(dir, ".kv") == 1,
          "save after the directory was removed");
    ds4_kvcache_close(kc);
}

/* --------------------------------------------------------- (f) eviction */

static void set_counters(const char *path, uint32_t hits, uint64_t last_used) {
    int fd = open(path, O_WRONLY);
    uint8_t b[8];
    le32(b, hits);
    pwrite(fd, b, 4, 12);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(last_used >> (8 * i));
    pwrite(fd, b, 8, 32);
    close(fd);
}

static void test_eviction(void) {
    char dir[512], p[6][600];
    make_dir(dir, sizeof dir, "evict");
    const uint64_t body = 10000;
    const uint64_t file = 52 + 6 + 52 + body + 56; /* texts are 6 bytes */
    ds4_kvcache *kc = open_store(dir, 1 << 30, ID);
    const char *texts[6] = {"text-0", "text-1", "text-2", "text-3", "text-4", "text-5"};
    uint64_t now = (uint64_t)time(NULL);
    for (int i = 0; i < 5; i++) {
        CHECK(save_text(kc, texts[i], 100, (uint32_t)i, body, NULL, 0) == 0, "save %d", i);
        path_for_text(p[i], sizeof p[i], dir, texts[i]);
    }
    set_counters(p[0], 5, now);         /* most useful */
    set_counters(p[1], 0, now - 100);   /* never hit, older */
    set_counters(p[2], 0, now - 50);    /* never hit */
    set_counters(p[3], 2, now - 3600);  /* some hits */
    set_counters(p[4], 1, now - 86400 * 3); /* decayed below 0.01 */
    ds4_kvcache_close(kc);
    /* budget for 3 files + the new one's slack: saving text-5 must evict 3 */
    kc = open_store(dir, 4 * file, ID);
    CHECK(count_files(dir, ".kv") == 4, "open evicts to the budget (one file)");
    CHECK(!exists(p[4]), "first victim: the lowest score (1, 1, 1 tie), the oldest last_used");
    CHECK(save_text(kc, texts[5], 100, 5, body, NULL, 0) == 0, "save 5");
    path_for_text(p[5], sizeof p[5], dir, texts[5]);
    int n;
    uint64_t total = ds4_kvcache_disk_bytes(kc, &n);
    CHECK(total <= 4 * file && n == 4, "within budget: %llu bytes in %d files", (unsigned long long)total, n);
    CHECK(exists(p[5]), "the file just written is protected");
    CHECK(exists(p[0]) && exists(p[2]) && exists(p[3]) && !exists(p[1]), "next victim: the older tie");
    /* a budget smaller than one file: saves are skipped */
    ds4_kvcache_close(kc);
    kc = open_store(dir, file, ID);
    CHECK(save_text(kc, "text-9", 100, 9, body, NULL, 0) == 1, "over budget: skipped");
    CHECK(ds4_kvcache_disk_bytes(kc, &n) <= file, "open evicted to a one-file budget");
    ds4_kvcache_close(kc);
}

/* ------------------------------------------------------ (g) concurrency */

static int worker(const char *dir, int w) {
    logged_removals = 0; /* counted from here on, in this process */
    ds4_kvcache *kc = open_store(dir, 6 * 40000, ID);
    if (!kc) return 1;
    fake f = {0};
    ds4_kvcache_io io = fake_io(&f);
    int bad = 0, hits = 0;
    uint64_t x = 12345 + (uint64_t)w;
    for (int it = 0; it < 100; it++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        int k = (int)(x >> 33) % 10;
        char text[64], req[80];
        snprintf(text, sizeof text, "shared-text-%d", k);
        if ((x >> 20) & 1) {
            if (save_text(kc, text, 50 + k, (uint32_t)k, 30000 + (uint64_t)k * 100, NULL, 0) < 0) bad++;
        } else {
            snprintf(req, sizeof req, "%s and more", text);
            ds4_kvcache_hit hit;
            if (ds4_kvcache_lookup(kc, &io, req, strlen(req), &hit) == 1) {
                if (!loaded_equals(&f, 50 + k, (uint32_t)k, 30000 + (uint64_t)k * 100, ID.ctx)) bad++;
                hits++;
                ds4_kvcache_hit_free(&hit);
            }
        }
    }
    fake_reset(&f);
    ds4_kvcache_close(kc);
    if (bad || logged_removals) fprintf(stderr, "worker %d: %d bad payloads, %d removals\n", w, bad, logged_removals);
    return bad || logged_removals > 0 ? 1 : hits == 0 ? 2 : 0;
}

static void test_concurrency(void) {
    char dir[512];
    make_dir(dir, sizeof dir, "shared");
    pid_t pids[3];
    for (int w = 0; w < 3; w++)
        if ((pids[w] = fork()) == 0) _exit(worker(dir, w));
    int ok = 0;
    for (int w = 0; w < 3; w++) {
        int st = 0;
        waitpid(pids[w], &st, 0);
        ok += WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    CHECK(ok == 3, "every worker had hits, all with exact payloads, and removed nothing as corrupt (%d/3)", ok);
    CHECK(count_files(dir, ".tmp.") == 0, "no temporary files left");
    DIR *d = opendir(dir);
    struct dirent *de;
    int files = 0, valid = 0;
    uint64_t total = 0;
    while (d && (de = readdir(d))) {
        if (!strstr(de->d_name, ".kv")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        size_t len;
        uint8_t *b = (uint8_t *)ds4_read_file(path, &len, NULL);
        spec_file s;
        files++;
        total += len;
        valid += b && spec_parse(b, len, &s) && s.digest_ok;
        free(b);
    }
    if (d) closedir(d);
    CHECK(files > 0 && valid == files, "every remaining file is valid (%d of %d)", valid, files);
    CHECK(total <= 6 * 40000, "within the shared budget (%llu)", (unsigned long long)total);
}

int main(void) {
    test_policy();
    test_eviction_plan();
    test_layout();
    test_lookup();
    test_faults();
    test_disk_full();
    test_tmpfs_full();
    test_killed_save();
    test_dir_removed();
    test_eviction();
    test_concurrency();
    return TEST_DONE();
}
