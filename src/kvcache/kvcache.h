/* kvcache.h — the disk KV cache: session checkpoints in `.kv` files named by
 * the SHA-1 of the rendered text they cover (server-spec §5), so a later
 * request — or a restarted server — whose rendered prompt starts with that
 * text skips its prefill.
 *
 * File format (server-spec §5.3, byte-compatible with ds4's; little-endian):
 *
 *   0   "KVC"  3   version 1           4  quant bits (2|4)   5 save reason
 *   6   ext flags                      7  reserved 0
 *   8   u32 tokens (!= 0)   12 u32 hits   16 u32 ctx   20 u32 reserved
 *   24  u64 created   32 u64 last used   40 u64 payload bytes P
 *   48  u32 text bytes T   52  text[T]   52+T  DS4 session payload[P]
 *   then, iff ext bit 0: the KTM tool-id map
 *        "KTM" u8 1, u32 count, count × {u32 id_len, u32 dsml_len, id, dsml}
 *   then, iff ext bit 3 (ours): the integrity section, the file's last
 *        56 bytes: "KVX" u8 1, u32 flags (bit 0: exact numerics),
 *        u8 model_id[20], u64 covered (= its own offset), u8 sha1[20] over
 *        bytes [0, covered) — with hits and last used read as 0, since
 *        lookups update them in place — followed by this section's first 36
 *        bytes.
 *
 * ds4's readers only require the file to be at least 52+T+P bytes and read
 * the KTM map when bit 0 says so, so they load our files and never see the
 * integrity section. We write every file with it and use only files that
 * have it and verify: a file that fails (bad magic, version, quant, sizes,
 * missing or wrong section, checksum, text, token count) is removed with a
 * log line. A listing judges a file from a few bytes (header, integrity
 * section, the payload's own ctx and token fields, the KTM magic), which
 * catches damaged size and count fields at once; the checksum is verified
 * while a lookup streams the file into the session, and a mismatch resets
 * the session before the lookup returns. A file of another model
 * (model_id: a hash of the non-expert tensors, so q2 and q4 files of one
 * model share checkpoints as in ds4) or of the other numerics is removed
 * when a lookup meets it. Files written with a larger ctx, or another quant
 * under reject_different_quant, belong to another server sharing the
 * directory: skipped, kept. The hit counter and last-used time are updated
 * in place (two small pwrites, outside the checksum); everything else in a
 * file is written once.
 *
 * Writes go to `<sha>.kv.tmp.<pid>.<nonce>` (created O_EXCL, so unique even
 * across hosts sharing a pid), are fsynced, renamed over the real name and
 * the directory fsynced; any error (a full disk, RLIMIT_FSIZE) unlinks the
 * temporary file (the directory is re-created if someone removed it). A
 * reader keeps its open descriptor, so an eviction or a replacement racing
 * a load only unlinks a name (the reader still has the whole old file);
 * removals check that the name still points at the inode that was judged,
 * so a fresh file renamed over a bad one is not deleted. Temporary files
 * older than an hour (a crashed writer) are removed; younger ones are
 * never counted or read. Unlike ds4, a tool map change rewrites the whole
 * file rather than its tail in place, keeping every write atomic.
 *
 * How the server uses this module (server-spec §5.1, §5.6):
 *   start      ds4_kvcache_config_defaults + flags, ds4_kvcache_config_check
 *              (exit 2 on error), ds4_kvcache_identity_from_engine,
 *              ds4_kvcache_open (mkdir -p 0700, removes bad files, evicts to
 *              the budget).
 *   each request, after live reuse failed (§5.1 step 9):
 *              ds4_kvcache_lookup(text of the rendered request) → on a hit
 *              the session holds hit.tokens tokens covering text[0:hit.text_bytes];
 *              tokenize only the rest (rendered-chat tokenizer), then
 *              ds4_kvcache_schedule_reset(&sched, hit.tokens); on a miss the
 *              session is empty: cold prefill, schedule_reset(&sched, 0).
 *   cold       n = ds4_kvcache_cold_len(cfg, cached, prompt_len, anchor)
 *              (anchor from ds4_kvcache_chat_anchor); if n > 0 prefill to
 *              exactly n tokens, ds4_kvcache_save(reason COLD), note_saved,
 *              continue the prefill.
 *   continued  split prefill so chunks end at ds4_kvcache_next_continued;
 *              at each chunk end and before each decode token (not inside a
 *              tool call), if ds4_kvcache_continued_target(...) > 0: save
 *              (reason CONTINUED) and note_saved.
 *   evict      on a live miss with ds4_kvcache_should_save_live: save the
 *              whole live session (reason EVICT) before the lookup.
 *   shutdown   the same with reason SHUTDOWN, then ds4_kvcache_close.
 *   metrics    ds4_kvcache_disk_bytes (re-lists the directory),
 *              ds4_kvcache_get_stats.
 * The user/assistant ids for the chat anchor are the <｜User｜> and
 * <｜Assistant｜> special tokens. A hit's tool ids go back into the exact-
 * replay tool memory; free them with ds4_kvcache_hit_free.
 * A save's text is the concatenated token pieces of the stored tokens (or
 * the visible transcript with ext bit 1/2 in key_flags). The session must be
 * at exactly the stored length. None of these calls may overlap on one
 * store (the server's worker thread makes them all), except
 * ds4_kvcache_find_tool_ids, which client threads call while rendering. */
#ifndef DS4_KVCACHE_H
#define DS4_KVCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/error.h"
#include "../engine/session_payload.h"

#define DS4_KVC_HEADER_BYTES 48
#define DS4_KVC_FIXED_BYTES 52 /* header + u32 text bytes */
#define DS4_KVC_VERSION 1
#define DS4_KVC_INTEGRITY_BYTES 56
#define DS4_KVC_HIT_HALF_LIFE_S (6 * 3600)

enum ds4_kvc_reason {
    DS4_KVC_REASON_UNKNOWN = 0,
    DS4_KVC_REASON_COLD = 1,
    DS4_KVC_REASON_CONTINUED = 2,
    DS4_KVC_REASON_EVICT = 3,
    DS4_KVC_REASON_SHUTDOWN = 4,
    DS4_KVC_REASON_AGENT_SYSTEM = 5,
    DS4_KVC_REASON_AGENT_SESSION = 6,
};

enum ds4_kvc_ext {
    DS4_KVC_EXT_TOOL_MAP = 0x01,          /* KTM trailer present */
    DS4_KVC_EXT_RESPONSES_VISIBLE = 0x02, /* key is Responses-visible text */
    DS4_KVC_EXT_THINKING_VISIBLE = 0x04,  /* key is thinking-visible text */
    DS4_KVC_EXT_INTEGRITY = 0x08,         /* ours: integrity section at the end */
};

/* ---- configuration: the ds4-server flags (server-spec §1.3) ---- */

typedef struct ds4_kvcache_config {
    const char *dir;               /* --kv-disk-dir */
    uint64_t space_bytes;          /* --kv-disk-space-mb × MiB; default 4096 MiB */
    int min_tokens;                /* --kv-cache-min-tokens, 512, > 0 */
    int cold_max_tokens;           /* --kv-cache-cold-max-tokens, 30000; 0 = no cold saves */
    int continued_interval_tokens; /* --kv-cache-continued-interval-tokens, 10000; 0 = off */
    int boundary_trim_tokens;      /* --kv-cache-boundary-trim-tokens, 32 */
    int boundary_align_tokens;     /* --kv-cache-boundary-align-tokens, 2048; 0 = off */
    bool reject_different_quant;   /* --kv-cache-reject-different-quant */
    int tool_memory_max_ids;       /* --tool-memory-max-ids, 100000 (KTM load limit ×4) */
    /* One log line per event, no newline; NULL = stderr "ds4-kvcache: ...". */
    void (*log)(void *ud, const char *line);
    void *log_ud;
} ds4_kvcache_config;

void ds4_kvcache_config_defaults(ds4_kvcache_config *c);
/* The flag rules of ds4-server: min > 0; cold 0 or >= min; others >= 0. */
int ds4_kvcache_config_check(const ds4_kvcache_config *c, ds4_err *err);

/* ---- save policy: pure functions of the config (server-spec §5.6) ---- */

/* Stored length for a prompt of n tokens: n − trim rounded down to align,
 * if that is still >= min; otherwise n. 5000 → 4096, 1000 → 1000. */
int ds4_kvcache_store_len(const ds4_kvcache_config *c, int n);
/* Position of the last `user` token before the first `assistant` token, or
 * -1 if there is none or it is < min. */
int ds4_kvcache_chat_anchor(const ds4_kvcache_config *c, const int32_t *tokens, int n, int32_t user_id,
                            int32_t assistant_id);
/* Tokens to cold-save for a request with `cached` reused tokens and a prompt
 * of prompt_len tokens (anchor from ds4_kvcache_chat_anchor); 0 = none. */
int ds4_kvcache_cold_len(const ds4_kvcache_config *c, int cached, int prompt_len, int anchor);
/* The continued-save step: the interval rounded up to a multiple of align
 * (10000 → 10240); 0 when continued saves are off. */
int ds4_kvcache_continued_step(const ds4_kvcache_config *c);
/* Evict and shutdown saves happen when the live session has >= min tokens. */
bool ds4_kvcache_should_save_live(const ds4_kvcache_config *c, int live_tokens);
/* Loads longer than cold_max tokens delete their file ("consumed"). */
bool ds4_kvcache_consumes_on_load(const ds4_kvcache_config *c, int tokens);
/* Bytes a file of file_bytes needs under the budget: × 1.01, rounded up. */
uint64_t ds4_kvcache_budget_required(uint64_t file_bytes);

/* The continued-save schedule of one live session. */
typedef struct ds4_kvcache_schedule {
    int last; /* the last continued frontier saved (or covered by a load) */
} ds4_kvcache_schedule;

/* After a live miss (0), a cold start (0) or a disk load (loaded tokens). */
void ds4_kvcache_schedule_reset(ds4_kvcache_schedule *s, int tokens);
/* live_tokens if a continued save is due there (a multiple of the step,
 * past the last one, >= min), else 0. */
int ds4_kvcache_continued_target(const ds4_kvcache_config *c, const ds4_kvcache_schedule *s,
                                 int live_tokens);
/* The next continued frontier after live_tokens (for splitting prefill so a
 * chunk ends exactly there), or 0 when continued saves are off. */
int ds4_kvcache_next_continued(const ds4_kvcache_config *c, const ds4_kvcache_schedule *s,
                               int live_tokens);
/* After any successful save of `tokens`: a save on a continued frontier
 * (continued, or a cold save landing there) suppresses the duplicate. */
void ds4_kvcache_note_saved(const ds4_kvcache_config *c, ds4_kvcache_schedule *s, int tokens);

/* ---- eviction (server-spec §5.8) ---- */

typedef struct ds4_kvcache_evict_item {
    uint64_t file_bytes;
    uint32_t tokens, hits;
    uint64_t last_used; /* unix seconds */
    bool protect;       /* the file just written */
} ds4_kvcache_evict_item;

/* (effective_hits + 1) · tokens / file_bytes, effective_hits = hits ·
 * 2^(−(now − last_used)/6h), 0 below 0.01 or when never used. */
double ds4_kvcache_eviction_score(const ds4_kvcache_evict_item *it, uint64_t now);
/* Indices of the items to delete, in deletion order (lowest score first,
 * ties: older last_used), until the total is <= budget. A protected item
 * is kept unless it alone exceeds the budget. Returns the count. */
int ds4_kvcache_plan_eviction(const ds4_kvcache_evict_item *items, int n, uint64_t budget, uint64_t now,
                              int *victims);

/* ---- the store ---- */

/* What identifies the states a server may use (checked per file). */
typedef struct ds4_kvcache_identity {
    uint8_t quant_bits; /* 2 or 4: the routed experts (other widths count as 4) */
    uint32_t ctx;
    bool exact;         /* plain-f32 numerics */
    uint8_t model_id[20];
} ds4_kvcache_identity;

/* Where payloads come from and go to: normally a session
 * (ds4_kvcache_session_io); tests use fakes. */
typedef struct ds4_kvcache_io {
    uint64_t (*payload_bytes)(void *ctx);
    int (*save)(void *ctx, ds4_writer *w, ds4_err *err);
    int (*load)(void *ctx, ds4_reader *r, uint64_t nbytes, ds4_err *err);
    int (*n_tokens)(void *ctx);
    void (*reset)(void *ctx);
    void *ctx;
} ds4_kvcache_io;

/* One exact-replay tool memory entry (server-spec §5.7). */
typedef struct ds4_kvcache_tool_id {
    char *id;
    size_t id_len;
    char *dsml;
    size_t dsml_len;
} ds4_kvcache_tool_id;

typedef struct ds4_kvcache_save_req {
    const char *text; /* cache text (the file's key) */
    size_t text_len;
    int tokens;       /* the stored length; the session must be exactly there */
    uint8_t reason;   /* DS4_KVC_REASON_* */
    uint8_t key_flags; /* 0, DS4_KVC_EXT_RESPONSES_VISIBLE or _THINKING_VISIBLE */
    /* Tool memory; only entries whose dsml occurs in text are written. */
    const ds4_kvcache_tool_id *tool_ids;
    int n_tool_ids;
} ds4_kvcache_save_req;

typedef struct ds4_kvcache_hit {
    int tokens;           /* tokens now in the session */
    size_t text_bytes;    /* request text[0:text_bytes] is covered by them */
    uint8_t reason, ext_flags;
    bool consumed;        /* the file was deleted after loading */
    char name[48];        /* "<sha>.kv" */
    ds4_kvcache_tool_id *tool_ids; /* the KTM map (free with ds4_kvcache_hit_free) */
    int n_tool_ids;
} ds4_kvcache_hit;

typedef struct ds4_kvcache ds4_kvcache;

void ds4_kvcache_identity_from_engine(const ds4_engine *e, ds4_kvcache_identity *id);
/* Payload I/O bound to a session of an engine. */
ds4_kvcache_io ds4_kvcache_session_io(ds4_session *s);
/* Hash of the model's non-routed-expert tensors (names, types, shapes and
 * data samples) and hyperparameters. */
void ds4_kvcache_model_id(const ds4_model *m, uint8_t out[20]);

int ds4_kvcache_open(ds4_kvcache **out, const ds4_kvcache_config *cfg, const ds4_kvcache_identity *id,
                     ds4_err *err);
void ds4_kvcache_close(ds4_kvcache *kc);

/* Saves the payload under SHA-1(text). Returns 0 when stored (or an equal
 * file is already there), 1 when policy skipped it (err says why: below
 * min, session not at the stored length, over the budget), -1 on I/O
 * failure (nothing half-written remains). Evicts to the budget after. */
int ds4_kvcache_save(ds4_kvcache *kc, const ds4_kvcache_io *io, const ds4_kvcache_save_req *req,
                     ds4_err *err);
/* Loads the longest checkpoint whose text is a byte prefix of text into io.
 * Returns 1 on a hit (filled *hit), 0 on a miss (io reset to empty). Bad
 * candidates are logged, removed where the rules above say so, and the
 * next one is tried. */
int ds4_kvcache_lookup(ds4_kvcache *kc, const ds4_kvcache_io *io, const char *text, size_t len,
                       ds4_kvcache_hit *hit);
void ds4_kvcache_hit_free(ds4_kvcache_hit *hit);
/* Exact-replay ids after a restart (server-spec §4.8 persistence): reads
 * the KTM map of every file that has one and calls found() with the whole
 * map of each file holding any of ids[0..n), until all are found. Only
 * reads (never removes or counts), so unlike the other calls it may run on
 * any thread while the worker uses the store. Returns the files reported. */
int ds4_kvcache_find_tool_ids(const ds4_kvcache *kc, const char *const *ids, int n,
                              void (*found)(void *ud, const ds4_kvcache_tool_id *map, int n_map), void *ud);
/* Runs eviction now (open and save do it too). */
void ds4_kvcache_evict(ds4_kvcache *kc);

/* Total bytes of the valid entries, and their count (for /metrics). */
uint64_t ds4_kvcache_disk_bytes(ds4_kvcache *kc, int *n_files);

/* What this store has done since it was opened (for /metrics). */
typedef struct ds4_kvcache_stats {
    uint64_t stored[7];     /* files written, by DS4_KVC_REASON_* */
    uint64_t store_skipped; /* saves policy refused (budget, length) */
    uint64_t store_failed;  /* saves that failed on I/O (disk full, ...) */
    uint64_t hits;          /* lookups that loaded a file */
    uint64_t misses;        /* lookups that found nothing usable */
    uint64_t evicted;       /* files removed to stay within the budget */
    uint64_t removed_bad;   /* corrupt, truncated or foreign files removed */
} ds4_kvcache_stats;

void ds4_kvcache_get_stats(const ds4_kvcache *kc, ds4_kvcache_stats *out);

#endif
