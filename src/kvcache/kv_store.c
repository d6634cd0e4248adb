/* kv_store.c — the cache directory: listing, lookup and load, save,
 * eviction (server-spec §5.2, §5.5, §5.8; the rules and the concurrency
 * design are in kvcache.h).
 *
 * Nothing is cached in memory: the directory is re-listed on every lookup
 * and eviction, so several servers can share it. A listing judges each
 * file from its first 52 and last 56 bytes; the checksum over the whole
 * file is verified while a lookup loads it (the payload streams through the
 * hash into the session), and the session is reset if it fails. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kv_internal.h"

#define STALE_TMP_SECONDS 3600

struct ds4_kvcache {
    ds4_kvcache_config cfg;
    char *dir;
    ds4_kvcache_identity id;
    uint64_t nonce;
    ds4_kvcache_stats stats;
};

typedef struct kv_entry {
    char sha[41];
    char name[48];
    kv_header h;
    kv_integrity in;
    uint64_t size, ktm_bytes;
    dev_t dev;
    ino_t ino;
} kv_entry;

static void kv_log(ds4_kvcache *kc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void kv_log(ds4_kvcache *kc, const char *fmt, ...) {
    char line[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (kc->cfg.log)
        kc->cfg.log(kc->cfg.log_ud, line);
    else
        fprintf(stderr, "ds4-kvcache: %s\n", line);
}

static uint64_t now_s(void) { return (uint64_t)time(NULL); }

static char *path_of(const ds4_kvcache *kc, const char *name) {
    char *p = NULL;
    return asprintf(&p, "%s/%s", kc->dir, name) < 0 ? NULL : p;
}

static bool is_hex40(const char *s) {
    for (int i = 0; i < 40; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

static bool is_entry_name(const char *name) {
    return strlen(name) == 43 && is_hex40(name) && strcmp(name + 40, ".kv") == 0;
}

static bool is_tmp_name(const char *name) {
    return strlen(name) > 48 && is_hex40(name) && strncmp(name + 40, ".kv.tmp.", 8) == 0;
}

/* Unlinks path only if it still names the inode that was judged, so a
 * good file renamed over a bad one in between survives. */
static bool remove_if_same(ds4_kvcache *kc, const kv_entry *e, const char *why) {
    char *path = path_of(kc, e->name);
    struct stat st;
    bool gone = false;
    if (path && lstat(path, &st) == 0 && st.st_dev == e->dev && st.st_ino == e->ino && unlink(path) == 0) {
        kv_log(kc, "kv cache removed %s: %s", e->name, why);
        gone = true;
    }
    free(path);
    return gone;
}

/* A file found corrupt, truncated or useless is removed and counted. */
static void remove_bad(ds4_kvcache *kc, const kv_entry *e, const char *why) {
    if (remove_if_same(kc, e, why)) kc->stats.removed_bad++;
}

/* ------------------------------------------------------------- judging */

/* Judges an open file from its fixed header and integrity section.
 * Returns NULL when it is a well-formed entry of our format. */
static const char *judge_fd(int fd, kv_entry *e) {
    struct stat st;
    if (fstat(fd, &st) != 0) return "cannot stat";
    e->dev = st.st_dev;
    e->ino = st.st_ino;
    e->size = (uint64_t)st.st_size;
    uint8_t fixed[DS4_KVC_FIXED_BYTES], tail[DS4_KVC_INTEGRITY_BYTES];
    if (e->size < DS4_KVC_FIXED_BYTES || pread(fd, fixed, sizeof fixed, 0) != (ssize_t)sizeof fixed)
        return "truncated header";
    const char *why = kv_header_decode(fixed, &e->h);
    if (why) return why;
    if (!(e->h.ext_flags & DS4_KVC_EXT_INTEGRITY)) return "no integrity section (not written by ds4c)";
    if (e->size < DS4_KVC_FIXED_BYTES + DS4_KVC_INTEGRITY_BYTES ||
        pread(fd, tail, sizeof tail, (off_t)(e->size - sizeof tail)) != (ssize_t)sizeof tail)
        return "truncated";
    if ((why = kv_integrity_decode(tail, &e->in))) return why;
    if ((why = kv_layout_check(&e->h, &e->in, e->size, &e->ktm_bytes))) return why;
    /* Cheap cross-checks that catch a damaged size or count field without
     * hashing the file: the payload header repeats ctx and tokens, and the
     * KTM map must start where the sizes say. */
    uint8_t ph[4 * DS4_PAYLOAD_HEADER_U32], ktm[4];
    uint64_t at = DS4_KVC_FIXED_BYTES + (uint64_t)e->h.text_bytes;
    if (e->h.payload_bytes < sizeof ph || pread(fd, ph, sizeof ph, (off_t)at) != (ssize_t)sizeof ph)
        return "payload truncated";
    if (kv_get32(ph) != DS4_PAYLOAD_MAGIC || kv_get32(ph + 4) != DS4_PAYLOAD_VERSION)
        return "payload header is not DSV4 version 1";
    if (kv_get32(ph + 8) != e->h.ctx || kv_get32(ph + 28) != e->h.tokens)
        return "payload ctx or token count differs from the file header";
    if (e->ktm_bytes && (pread(fd, ktm, 4, (off_t)(at + e->h.payload_bytes)) != 4 || memcmp(ktm, "KTM\1", 4)))
        return "tool-id map header missing";
    return NULL;
}

/* Opens and judges name. Returns the open fd (>= 0) for a good entry; -1
 * when the file vanished or is not a regular file (nothing to do); -2 when
 * it is bad (*why set, e's dev/ino identify it for removal). */
static int open_entry(ds4_kvcache *kc, const char *name, int flags, kv_entry *e, const char **why) {
    memset(e, 0, sizeof *e);
    memcpy(e->sha, name, 40);
    snprintf(e->name, sizeof e->name, "%s", name);
    char *path = path_of(kc, name);
    if (!path) return -1;
    int fd = open(path, flags | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && (flags & O_ACCMODE) == O_RDWR && (errno == EACCES || errno == EROFS))
        fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    free(path);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return -1;
    }
    *why = judge_fd(fd, e);
    if (*why) {
        close(fd);
        return -2;
    }
    return fd;
}

/* Lists the good entries; removes bad ones and stale temporary files. */
static int scan(ds4_kvcache *kc, kv_entry **out) {
    *out = NULL;
    DIR *d = opendir(kc->dir);
    if (!d) return 0;
    kv_entry *v = NULL;
    int n = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (is_tmp_name(de->d_name)) {
            char *path = path_of(kc, de->d_name);
            struct stat st;
            if (path && lstat(path, &st) == 0 && S_ISREG(st.st_mode) &&
                (uint64_t)st.st_mtime + STALE_TMP_SECONDS < now_s() && unlink(path) == 0)
                kv_log(kc, "kv cache removed stale temporary file %s", de->d_name);
            free(path);
            continue;
        }
        if (!is_entry_name(de->d_name)) continue;
        kv_entry e;
        const char *why = NULL;
        int fd = open_entry(kc, de->d_name, O_RDONLY, &e, &why);
        if (fd == -2) remove_bad(kc, &e, why);
        if (fd < 0) continue;
        close(fd);
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            kv_entry *nv = realloc(v, (size_t)cap * sizeof *v);
            if (!nv) break;
            v = nv;
        }
        v[n++] = e;
    }
    closedir(d);
    *out = v;
    return n;
}

/* ------------------------------------------------------------- eviction */

static void evict(ds4_kvcache *kc, const char *protect_name) {
    kv_entry *v;
    int n = scan(kc, &v);
    ds4_kvcache_evict_item *items = calloc((size_t)(n ? n : 1), sizeof *items);
    int *victims = malloc((size_t)(n ? n : 1) * sizeof *victims);
    if (items && victims) {
        for (int i = 0; i < n; i++)
            items[i] = (ds4_kvcache_evict_item){.file_bytes = v[i].size, .tokens = v[i].h.tokens,
                                                .hits = v[i].h.hits, .last_used = v[i].h.last_used,
                                                .protect = protect_name && !strcmp(v[i].name, protect_name)};
        int k = ds4_kvcache_plan_eviction(items, n, kc->cfg.space_bytes, now_s(), victims);
        for (int i = 0; i < k; i++) {
            const kv_entry *e = &v[victims[i]];
            char why[160];
            snprintf(why, sizeof why, "evicted reason=disk-cache-full tokens=%u hits=%u size=%.2f MiB",
                     e->h.tokens, e->h.hits, (double)e->size / (1 << 20));
            if (remove_if_same(kc, e, why)) kc->stats.evicted++;
        }
    }
    free(items);
    free(victims);
    free(v);
}

void ds4_kvcache_evict(ds4_kvcache *kc) { evict(kc, NULL); }

uint64_t ds4_kvcache_disk_bytes(ds4_kvcache *kc, int *n_files) {
    kv_entry *v;
    int n = scan(kc, &v);
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += v[i].size;
    free(v);
    if (n_files) *n_files = n;
    return total;
}

/* ---------------------------------------------------------- open, close */

static int mkdir_p(const char *dir) {
    char *tmp = strdup(dir);
    if (!tmp) return -1;
    int rc = 0;
    for (char *p = tmp + 1; *p && rc == 0; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0700) != 0 && errno != EEXIST) rc = -1;
        *p = '/';
    }
    if (rc == 0 && mkdir(tmp, 0700) != 0 && errno != EEXIST) rc = -1;
    free(tmp);
    struct stat st;
    if (rc == 0 && (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))) {
        errno = ENOTDIR;
        rc = -1;
    }
    return rc;
}

int ds4_kvcache_open(ds4_kvcache **out, const ds4_kvcache_config *cfg, const ds4_kvcache_identity *id,
                     ds4_err *err) {
    *out = NULL;
    if (ds4_kvcache_config_check(cfg, err)) return -1;
    if (id->quant_bits != 2 && id->quant_bits != 4)
        return ds4_fail(err, "kv cache: quant bits %u is not 2 or 4", id->quant_bits);
    if (mkdir_p(cfg->dir) != 0)
        return ds4_fail(err, "kv cache: cannot create directory %s: %s", cfg->dir, strerror(errno));
    ds4_kvcache *kc = calloc(1, sizeof *kc);
    if (!kc || !(kc->dir = strdup(cfg->dir))) {
        free(kc);
        return ds4_fail(err, "out of memory");
    }
    kc->cfg = *cfg;
    kc->cfg.dir = kc->dir;
    kc->id = *id;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    kc->nonce = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec ^ (uint64_t)getpid() << 32;
    evict(kc, NULL);
    kv_log(kc, "KV disk cache %s (budget=%llu MiB, cross-quant=%s, min=%d, cold_max=%d, continued=%d, "
           "trim=%d, align=%d)", kc->dir, (unsigned long long)(cfg->space_bytes >> 20),
           cfg->reject_different_quant ? "reject" : "accept", cfg->min_tokens, cfg->cold_max_tokens,
           cfg->continued_interval_tokens, cfg->boundary_trim_tokens, cfg->boundary_align_tokens);
    *out = kc;
    return 0;
}

void ds4_kvcache_close(ds4_kvcache *kc) {
    if (!kc) return;
    free(kc->dir);
    free(kc);
}

/* ---------------------------------------------------------------- lookup */

/* Why a well-formed entry is not for this server; NULL if it is. `keep`
 * says whether it belongs to someone else (kept) or is useless (removed). */
static const char *incompatible(const ds4_kvcache *kc, const kv_entry *e, bool *keep) {
    *keep = true;
    if (e->h.ctx > kc->id.ctx) return "written with a larger ctx";
    if (kc->cfg.reject_different_quant && e->h.quant_bits != kc->id.quant_bits) return "other quant";
    *keep = false;
    if (memcmp(e->in.model_id, kc->id.model_id, 20) != 0) return "written by another model";
    if ((e->in.flags & 1) != (uint32_t)kc->id.exact) return "written with the other numerics";
    return NULL;
}

static int by_text_then_tokens(const void *a, const void *b) {
    const kv_entry *x = a, *y = b;
    if (x->h.text_bytes != y->h.text_bytes) return x->h.text_bytes < y->h.text_bytes ? 1 : -1;
    return x->h.tokens < y->h.tokens ? 1 : x->h.tokens > y->h.tokens ? -1 : 0;
}

/* Loads one candidate. Returns 1 on success; 0 after logging why not. */
static int load_entry(ds4_kvcache *kc, const ds4_kvcache_io *io, const kv_entry *cand, const char *text,
                      size_t len, ds4_kvcache_hit *hit) {
    kv_entry e;
    const char *why = NULL;
    bool keep;
    int fd = open_entry(kc, cand->name, O_RDWR, &e, &why);
    if (fd == -2) remove_bad(kc, &e, why);
    if (fd < 0) return 0;
    if (e.h.text_bytes > len || (why = incompatible(kc, &e, &keep))) { /* replaced since the listing */
        close(fd);
        return 0;
    }
    kv_stream s;
    if (kv_stream_init(&s, fd)) {
        close(fd);
        return 0;
    }
    char *stored = malloc(e.h.text_bytes ? e.h.text_bytes : 1);
    uint8_t *ktm = NULL;
    uint8_t fixed[DS4_KVC_FIXED_BYTES], hashed[DS4_KVC_FIXED_BYTES], sect[KV_INTEGRITY_HASHED], digest[20];
    ds4_err err = {{0}};
    bool loaded = false;
    why = NULL;
    if (!stored) why = "out of memory";
    else if (kv_stream_read_raw(&s, fixed, sizeof fixed)) why = "truncated";
    if (!why) {
        kv_header_for_digest(fixed, hashed);
        kv_stream_hash(&s, hashed, sizeof hashed);
        if (kv_stream_read(&s, stored, e.h.text_bytes)) why = "truncated text";
        else if (memcmp(stored, text, e.h.text_bytes) != 0) why = "cached text does not match its name";
    }
    if (!why) {
        ds4_reader r = kv_stream_reader(&s);
        s.limit = e.h.payload_bytes;
        loaded = true;
        if (io->load(io->ctx, &r, e.h.payload_bytes, &err) != 0) why = err.msg;
        else if (s.limit != 0) why = "payload not fully consumed";
        s.limit = UINT64_MAX;
    }
    if (!why && e.ktm_bytes) {
        if (!(ktm = malloc(e.ktm_bytes)) || kv_stream_read(&s, ktm, e.ktm_bytes)) why = "truncated tool-id map";
    }
    if (!why) {
        if (kv_stream_read(&s, sect, sizeof sect)) why = "truncated integrity section";
        kv_stream_digest(&s, digest);
        if (!why && memcmp(digest, e.in.digest, 20) != 0) why = "checksum mismatch";
    }
    if (!why && io->n_tokens(io->ctx) != (int)e.h.tokens) why = "payload token count differs from the header";
    if (!why && e.ktm_bytes)
        why = kv_ktm_decode(ktm, e.ktm_bytes, kc->cfg.tool_memory_max_ids, &hit->tool_ids, &hit->n_tool_ids);
    if (why) {
        if (loaded) io->reset(io->ctx);
        char msg[600];
        snprintf(msg, sizeof msg, "load failed: %s", why);
        remove_bad(kc, &e, msg);
    } else {
        hit->tokens = (int)e.h.tokens;
        hit->text_bytes = e.h.text_bytes;
        hit->reason = e.h.reason;
        hit->ext_flags = e.h.ext_flags;
        snprintf(hit->name, sizeof hit->name, "%s", e.name);
        if (ds4_kvcache_consumes_on_load(&kc->cfg, hit->tokens)) {
            hit->consumed = true;
            remove_if_same(kc, &e, "consumed by a load longer than cold_max");
        } else {
            uint8_t upd[8];
            kv_put32(upd, e.h.hits + 1);
            ssize_t w1 = pwrite(fd, upd, 4, 12);
            kv_put64(upd, now_s());
            ssize_t w2 = pwrite(fd, upd, 8, 32);
            (void)w1;
            (void)w2; /* a read-only file just keeps its old counters */
        }
        kv_log(kc, "kv cache hit text tokens=%d text=%u reason=%u file=%s%s", hit->tokens, e.h.text_bytes,
               e.h.reason, e.name, hit->consumed ? " consumed" : "");
    }
    kv_stream_free(&s);
    close(fd);
    free(stored);
    free(ktm);
    return why ? 0 : 1;
}

/* match[i] = entry i's name is SHA-1 of text[0:T]. v is sorted by T
 * descending; walking it backwards hashes the request text once, taking a
 * digest of the running hash at each distinct T. */
static void match_names(const kv_entry *v, int n, const char *text, size_t len, bool *match) {
    EVP_MD_CTX *run = EVP_MD_CTX_new(), *snap = EVP_MD_CTX_new();
    if (!run || !snap || EVP_DigestInit_ex(run, EVP_sha1(), NULL) != 1) goto out;
    size_t at = 0;
    char name[41] = {0};
    for (int i = n - 1; i >= 0; i--) {
        size_t t = v[i].h.text_bytes;
        if (t > len) break;
        if (t != at || !name[0]) {
            EVP_DigestUpdate(run, text + at, t - at);
            at = t;
            uint8_t d[20];
            if (EVP_MD_CTX_copy_ex(snap, run) != 1 || EVP_DigestFinal_ex(snap, d, NULL) != 1) goto out;
            kv_hex20(d, name);
        }
        match[i] = memcmp(name, v[i].sha, 40) == 0;
    }
out:
    EVP_MD_CTX_free(run);
    EVP_MD_CTX_free(snap);
}

int ds4_kvcache_lookup(ds4_kvcache *kc, const ds4_kvcache_io *io, const char *text, size_t len,
                       ds4_kvcache_hit *hit) {
    memset(hit, 0, sizeof *hit);
    kv_entry *v;
    int n = scan(kc, &v), found = 0;
    if (n > 1) qsort(v, (size_t)n, sizeof *v, by_text_then_tokens);
    bool *match = calloc((size_t)(n ? n : 1), sizeof *match);
    if (match) match_names(v, n, text, len, match);
    for (int i = 0; i < n && match && !found; i++) {
        kv_entry *e = &v[i];
        bool keep;
        if (!match[i] || (int64_t)e->h.tokens < kc->cfg.min_tokens) continue;
        const char *why = incompatible(kc, e, &keep);
        if (why) {
            if (!keep) remove_bad(kc, e, why);
            continue;
        }
        found = load_entry(kc, io, e, text, len, hit);
    }
    free(match);
    free(v);
    if (!found) io->reset(io->ctx);
    if (found) kc->stats.hits++;
    else kc->stats.misses++;
    return found;
}

int ds4_kvcache_find_tool_ids(const ds4_kvcache *kc, const char *const *ids, int n,
                              void (*found)(void *ud, const ds4_kvcache_tool_id *map, int n_map), void *ud) {
    DIR *d = opendir(kc->dir);
    if (!d) return 0;
    bool *seen = calloc((size_t)(n > 0 ? n : 1), sizeof *seen);
    int files = 0, missing = n;
    struct dirent *de;
    while (seen && missing > 0 && (de = readdir(d)) != NULL) {
        if (!is_entry_name(de->d_name)) continue;
        char *path = path_of(kc, de->d_name);
        int fd = path ? open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
        free(path);
        if (fd < 0) continue;
        kv_entry e;
        struct stat st;
        uint8_t *ktm = NULL;
        ds4_kvcache_tool_id *map = NULL;
        int n_map = 0;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && !judge_fd(fd, &e) && e.ktm_bytes &&
            e.ktm_bytes <= KV_KTM_MAX_DSML && (ktm = malloc(e.ktm_bytes)) &&
            pread(fd, ktm, e.ktm_bytes, (off_t)(DS4_KVC_FIXED_BYTES + e.h.text_bytes + e.h.payload_bytes)) ==
                (ssize_t)e.ktm_bytes &&
            !kv_ktm_decode(ktm, e.ktm_bytes, kc->cfg.tool_memory_max_ids, &map, &n_map)) {
            bool wanted = false;
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n_map && !seen[i]; j++)
                    if (map[j].id_len == strlen(ids[i]) && !memcmp(map[j].id, ids[i], map[j].id_len))
                        seen[i] = wanted = true, missing--;
            if (wanted) {
                found(ud, map, n_map);
                files++;
            }
            kv_tool_ids_free(map, n_map);
        }
        free(ktm);
        close(fd);
    }
    closedir(d);
    free(seen);
    return files;
}

void ds4_kvcache_get_stats(const ds4_kvcache *kc, ds4_kvcache_stats *out) { *out = kc->stats; }

void ds4_kvcache_hit_free(ds4_kvcache_hit *hit) {
    kv_tool_ids_free(hit->tool_ids, hit->n_tool_ids);
    hit->tool_ids = NULL;
    hit->n_tool_ids = 0;
}

/* ------------------------------------------------------------------ save */

/* true when name already holds this exact checkpoint. */
static bool already_stored(ds4_kvcache *kc, const char *name, const ds4_kvcache_save_req *req,
                           const uint8_t *ktm, size_t ktm_len) {
    kv_entry e;
    const char *why = NULL;
    bool keep, same = false;
    int fd = open_entry(kc, name, O_RDONLY, &e, &why);
    if (fd == -2) remove_bad(kc, &e, why);
    if (fd < 0) return false;
    if (!incompatible(kc, &e, &keep) && e.h.tokens == (uint32_t)req->tokens && e.h.text_bytes == req->text_len &&
        e.ktm_bytes == ktm_len && (e.h.ext_flags & ~DS4_KVC_EXT_TOOL_MAP) ==
                                      (DS4_KVC_EXT_INTEGRITY | req->key_flags)) {
        uint64_t off = DS4_KVC_FIXED_BYTES + e.h.text_bytes + e.h.payload_bytes;
        char *buf = malloc(req->text_len + ktm_len + 1);
        same = buf && pread(fd, buf, req->text_len, DS4_KVC_FIXED_BYTES) == (ssize_t)req->text_len &&
               memcmp(buf, req->text, req->text_len) == 0 &&
               (ktm_len == 0 || (pread(fd, buf, ktm_len, (off_t)off) == (ssize_t)ktm_len &&
                                 memcmp(buf, ktm, ktm_len) == 0));
        free(buf);
    }
    close(fd);
    return same;
}

/* Creates a uniquely named temporary file next to the final one. */
static int create_tmp(ds4_kvcache *kc, const char *sha, char **tmp_path) {
    for (int attempt = 0; attempt < 16; attempt++) {
        kc->nonce = kc->nonce * 6364136223846793005ull + 1442695040888963407ull;
        char name[96];
        snprintf(name, sizeof name, "%s.kv.tmp.%ld.%016llx", sha, (long)getpid(),
                 (unsigned long long)kc->nonce);
        char *path = path_of(kc, name);
        if (!path) return -1;
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            *tmp_path = path;
            return fd;
        }
        free(path);
        if (errno == ENOENT && attempt == 0 && mkdir_p(kc->dir) == 0) continue; /* directory was removed */
        if (errno != EEXIST) return -1;
    }
    return -1;
}

static int write_file(ds4_kvcache *kc, int fd, const ds4_kvcache_io *io, const ds4_kvcache_save_req *req,
                      uint64_t payload_bytes, const uint8_t *ktm, size_t ktm_len, ds4_err *err) {
    kv_stream s;
    if (kv_stream_init(&s, fd)) return ds4_fail(err, "out of memory");
    uint64_t now = now_s();
    kv_header h = {.quant_bits = kc->id.quant_bits, .reason = req->reason,
                   .ext_flags = (uint8_t)(DS4_KVC_EXT_INTEGRITY | req->key_flags |
                                          (ktm_len ? DS4_KVC_EXT_TOOL_MAP : 0)),
                   .tokens = (uint32_t)req->tokens, .ctx = kc->id.ctx, .created = now, .last_used = now,
                   .payload_bytes = payload_bytes, .text_bytes = (uint32_t)req->text_len};
    uint8_t fixed[DS4_KVC_FIXED_BYTES], hashed[DS4_KVC_FIXED_BYTES], sect[DS4_KVC_INTEGRITY_BYTES];
    kv_header_encode(&h, fixed);
    kv_header_for_digest(fixed, hashed);
    kv_stream_hash(&s, hashed, sizeof hashed);
    ds4_writer w = kv_stream_writer(&s);
    int rc = -1;
    if (kv_stream_write_raw(&s, fixed, sizeof fixed) || kv_stream_write(&s, req->text, req->text_len)) goto io;
    uint64_t start = s.offset;
    if (io->save(io->ctx, &w, err) != 0) {
        if (s.saved_errno) goto io;
        goto out;
    }
    if (s.offset - start != payload_bytes) {
        ds4_fail(err, "payload wrote %llu bytes, announced %llu", (unsigned long long)(s.offset - start),
                 (unsigned long long)payload_bytes);
        goto out;
    }
    if (ktm_len && kv_stream_write(&s, ktm, ktm_len)) goto io;
    kv_integrity in = {.flags = kc->id.exact ? 1u : 0u, .covered = s.offset};
    memcpy(in.model_id, kc->id.model_id, 20);
    kv_integrity_encode(&in, sect);
    kv_stream_hash(&s, sect, KV_INTEGRITY_HASHED);
    kv_stream_digest(&s, in.digest);
    kv_integrity_encode(&in, sect);
    if (kv_stream_write_raw(&s, sect, sizeof sect) || kv_stream_flush(&s)) goto io;
    if (fsync(fd) != 0) {
        s.saved_errno = errno;
        goto io;
    }
    rc = 0;
    goto out;
io:
    ds4_fail(err, "%s", strerror(s.saved_errno ? s.saved_errno : EIO));
out:
    kv_stream_free(&s);
    return rc;
}

static void fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static int save_checked(ds4_kvcache *kc, const ds4_kvcache_io *io, const ds4_kvcache_save_req *req,
                        ds4_err *err) {
    if (req->tokens < kc->cfg.min_tokens)
        return ds4_fail(err, "%d tokens is below the minimum of %d", req->tokens, kc->cfg.min_tokens), 1;
    int live = io->n_tokens(io->ctx);
    if (live != req->tokens) {
        kv_log(kc, "kv cache skipped tokens=%d because live checkpoint is at %d", req->tokens, live);
        return ds4_fail(err, "the session is at %d tokens, not %d", live, req->tokens), 1;
    }
    if (req->text_len > UINT32_MAX || req->text_len == 0)
        return ds4_fail(err, "cache text of %zu bytes cannot be a key", req->text_len), 1;
    if (req->key_flags & ~(DS4_KVC_EXT_RESPONSES_VISIBLE | DS4_KVC_EXT_THINKING_VISIBLE))
        return ds4_fail(err, "key flags 0x%x are not key kinds", req->key_flags), 1;
    uint64_t payload_bytes = io->payload_bytes(io->ctx);
    if (payload_bytes == 0) return ds4_fail(err, "empty payload"), 1;
    uint8_t *ktm = NULL;
    size_t ktm_len = 0;
    if (kv_ktm_encode(req->tool_ids, req->n_tool_ids, req->text, req->text_len, &ktm, &ktm_len))
        return ds4_fail(err, "out of memory");
    uint64_t file_bytes = DS4_KVC_FIXED_BYTES + req->text_len + payload_bytes + ktm_len + DS4_KVC_INTEGRITY_BYTES;
    uint64_t required = ds4_kvcache_budget_required(file_bytes);
    if (required > kc->cfg.space_bytes) {
        kv_log(kc, "kv cache skipped tokens=%d because estimated file size %.2f MiB (%.2f MiB with safety) "
               "exceeds budget %.2f MiB", req->tokens, (double)file_bytes / (1 << 20),
               (double)required / (1 << 20), (double)kc->cfg.space_bytes / (1 << 20));
        free(ktm);
        return ds4_fail(err, "file of %llu bytes exceeds the budget", (unsigned long long)file_bytes), 1;
    }
    char sha[41], name[48];
    kv_sha1_hex(req->text, req->text_len, sha);
    snprintf(name, sizeof name, "%s.kv", sha);
    if (already_stored(kc, name, req, ktm, ktm_len)) {
        free(ktm);
        return 0;
    }
    char *tmp = NULL, *path = path_of(kc, name);
    int fd = path ? create_tmp(kc, sha, &tmp) : -1;
    int rc;
    if (fd < 0) {
        rc = ds4_fail(err, "cannot create a temporary file in %s: %s", kc->dir, strerror(errno));
    } else {
        rc = write_file(kc, fd, io, req, payload_bytes, ktm, ktm_len, err);
        if (close(fd) != 0 && rc == 0) rc = ds4_fail(err, "%s", strerror(errno));
        if (rc == 0 && rename(tmp, path) != 0) rc = ds4_fail(err, "rename: %s", strerror(errno));
        if (rc != 0) unlink(tmp);
    }
    if (rc == 0) {
        if (req->reason < 7) kc->stats.stored[req->reason]++;
        fsync_dir(kc->dir);
        kv_log(kc, "kv cache stored tokens=%d reason=%u size=%.2f MiB file=%s", req->tokens, req->reason,
               (double)file_bytes / (1 << 20), name);
        evict(kc, name);
    } else {
        kc->stats.store_failed++;
        kv_log(kc, "kv cache store failed (reason %u): %s", req->reason, err->msg);
    }
    free(ktm);
    free(tmp);
    free(path);
    return rc;
}

int ds4_kvcache_save(ds4_kvcache *kc, const ds4_kvcache_io *io, const ds4_kvcache_save_req *req,
                     ds4_err *err) {
    ds4_err local;
    int rc = save_checked(kc, io, req, err ? err : &local);
    if (rc == 1) kc->stats.store_skipped++;
    return rc;
}
