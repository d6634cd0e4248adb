/* cache.c — KV reuse across requests (server-spec §5): which state a new
 * request starts from, and when checkpoints are saved.
 *
 * The decision, in ds4's order (§5.1), first source that gives tokens wins:
 *   memory-token      the live tokens are a proper prefix of the prompt's;
 *   thinking-visible  after a tool-less thinking turn, the prompt text
 *                     extends what that turn renders as (gen.c sets the
 *                     binding): EOS + the new text continue the live state;
 *   memory-text       the live tokens' bytes are a byte prefix of the prompt
 *                     text (the model sampled a tokenization the renderer
 *                     does not produce): keep them, tokenize only the rest;
 *   (miss)            the live session is saved to disk (reason evict);
 *   memory-snapshot   ours: the state at the end of the previous prompt,
 *                     or at the start of its last user turn, kept in RAM
 *                     as session payloads, begins this prompt (tokens or
 *                     bytes: the same request re-sent, a regenerate, an
 *                     edited last message) — restored, only the rest is
 *                     prefilled;
 *   disk-text         the longest disk checkpoint whose text is a byte
 *                     prefix of the prompt text (kvcache.h);
 *   none              cold prefill.
 * A restored prefix continues with the prompt's own tokens when they
 * extend it (so the evaluated tokens are exactly a cold run's), else with
 * the tokenization of the remaining text, as ds4 does.
 *
 * Saves (§5.6): cold (a prompt reused nothing: at the chat anchor or the
 * aligned store length, prefill split there), continued (aligned absolute
 * frontiers, during prefill and before decode tokens outside tool
 * blocks), evict (above), shutdown (the worker exits). A checkpoint's key
 * is the concatenated bytes of its tokens — except an evicted or shutdown
 * session that the thinking binding describes, keyed by its visible text
 * (ext bit 2) and continued after a load like the binding. Its KTM map
 * holds the exact-replay entries whose DSML occurs in that text, and a load
 * puts them back; a request naming tool ids the memory lacks (after a
 * restart) has them looked up in every file's map before it is rendered,
 * as ds4 does.
 * Every failure here only costs reuse: the request goes on cold. */
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "../common/xalloc.h"
#include "../engine/session_payload.h"
#include "../tok/tokenizer.h"
#include "ctx.h"

/* A session state in RAM: its payload and the tokens it holds. */
typedef struct snapshot {
    uint8_t *bytes;
    size_t len, cap;
    int32_t *tokens;
    int n;
} snapshot;

struct srv_cache {
    ds4_kvcache *kv; /* NULL: no disk cache */
    ds4_kvcache_schedule sched;
    snapshot snap[2]; /* SNAP_END, SNAP_TURN */
};

static void kv_log_line(void *ud, const char *line) {
    (void)ud;
    srv_log("%s", line);
}

int srv_cache_open(srv_ctx *c, ds4_err *err) {
    srv_cache *k = calloc(1, sizeof *k);
    if (!k) return ds4_fail(err, "out of memory");
    if (c->cfg.kv.dir) {
        ds4_kvcache_config cfg = c->cfg.kv;
        cfg.log = kv_log_line;
        ds4_kvcache_identity id;
        ds4_kvcache_identity_from_engine(c->engine, &id);
        if (ds4_kvcache_open(&k->kv, &cfg, &id, err)) {
            free(k);
            return -1;
        }
        ds4_kvcache_stats st;
        ds4_kvcache_get_stats(k->kv, &st);
        int files;
        uint64_t bytes = ds4_kvcache_disk_bytes(k->kv, &files);
        srv_metrics_kv_disk(c->metrics, &st, bytes, files);
    }
    c->cache = k;
    return 0;
}

void srv_cache_close(srv_ctx *c) {
    srv_cache *k = c->cache;
    if (!k) return;
    ds4_kvcache_close(k->kv);
    for (int i = 0; i < 2; i++) {
        free(k->snap[i].bytes);
        free(k->snap[i].tokens);
    }
    free(k);
    c->cache = NULL;
}

void srv_plan_free(srv_plan *p) {
    free(p->owned);
    p->owned = NULL;
}

/* The bytes tokens[0..n) stand for: a checkpoint's key, and what a prompt
 * text is compared with. */
static char *tokens_text(const srv_ctx *c, const int32_t *toks, int n, size_t *len) {
    ds4_buf b = {0};
    for (int i = 0; i < n; i++) {
        size_t k;
        const char *p = ds4_token_bytes(c->tok, toks[i], &k);
        if (p) ds4_buf_add(&b, p, k);
    }
    *len = b.len;
    return b.p ? ds4_buf_take(&b) : ds4_xstrdup("");
}

static void update_disk_metrics(srv_ctx *c) {
    ds4_kvcache_stats st;
    ds4_kvcache_get_stats(c->cache->kv, &st);
    int files;
    uint64_t bytes = ds4_kvcache_disk_bytes(c->cache->kv, &files);
    srv_metrics_kv_disk(c->metrics, &st, bytes, files);
}

/* Saves the whole live session under its tokens' text, or, when the
 * thinking binding describes it (a tool-less thinking answer, whose
 * reasoning the next prompt drops), under the text that next prompt starts
 * with (ext bit 2, as ds4): a lookup then continues it like the binding. */
static void save_live(srv_ctx *c, ds4_session *s, uint8_t reason) {
    srv_cache *k = c->cache;
    int n = ds4_session_n_tokens(s);
    bool visible = c->live_visible && c->live_visible_pos == n;
    size_t len;
    char *text = visible ? ds4_xstrdup(c->live_visible) : tokens_text(c, ds4_session_tokens(s), n, &len);
    if (visible) len = strlen(text);
    ds4_kvcache_tool_id *ids = NULL;
    int n_ids = c->toolmem ? srv_toolmem_export(c->toolmem, text, len, &ids) : 0;
    ds4_kvcache_save_req req = {.text = text, .text_len = len, .tokens = n, .reason = reason,
                                .key_flags = visible ? DS4_KVC_EXT_THINKING_VISIBLE : 0,
                                .tool_ids = ids, .n_tool_ids = n_ids};
    ds4_kvcache_io io = ds4_kvcache_session_io(s);
    ds4_err err = {{0}};
    double t0 = ds4_now();
    int rc = ds4_kvcache_save(k->kv, &io, &req, &err);
    static const char *const names[] = {"unknown", "cold", "continued", "evict", "shutdown"};
    const char *why = reason < 5 ? names[reason] : "other";
    if (rc == 0) {
        ds4_kvcache_note_saved(&c->cfg.kv, &k->sched, n);
        srv_trace(c, "--- trace: kv cache saved reason=%s tokens=%d save_ms=%.1f ---\n", why, n,
                  1000 * (ds4_now() - t0));
    } else {
        srv_trace(c, "--- trace: kv cache save %s reason=%s tokens=%d: %s ---\n", rc == 1 ? "skipped" : "failed",
                  why, n, err.msg);
    }
    srv_toolmem_export_free(ids, n_ids);
    free(text);
    update_disk_metrics(c);
}

/* ------------------------------------------------- tool ids after restart */

static void import_map(void *ud, const ds4_kvcache_tool_id *map, int n_map) {
    srv_toolmem_import(((srv_ctx *)ud)->toolmem, map, n_map);
}

void srv_cache_recall_tool_ids(srv_ctx *c, const srv_request *req) {
    if (!c->cache || !c->cache->kv || !c->toolmem) return;
    const char **want = NULL;
    int n = 0;
    for (int i = 0; i < req->n_msgs; i++) {
        const srv_message *m = &req->msgs[i];
        if (!m->n_calls) continue;
        const char **ids = ds4_xrealloc(NULL, sizeof *ids * (size_t)m->n_calls);
        for (int k = 0; k < m->n_calls; k++) ids[k] = m->calls[k].id;
        char *raw = srv_toolmem_lookup(c->toolmem, ids, m->n_calls);
        if (!raw) {
            want = ds4_xrealloc(want, sizeof *want * (size_t)(n + m->n_calls));
            for (int k = 0; k < m->n_calls; k++)
                if (ids[k] && *ids[k]) want[n++] = ids[k];
        }
        free(raw);
        free(ids);
    }
    if (n) {
        int files = ds4_kvcache_find_tool_ids(c->cache->kv, want, n, import_map, c);
        if (files) srv_log("exact replay: tool ids recalled from %d disk cache file(s)", files);
    }
    free(want);
}

/* ------------------------------------------------------------ snapshots */

/* Two states kept in RAM as payloads: the end of the last prompt (a
 * regenerate, a retry or the same request re-sent needs no prefill at all)
 * and the start of its last user turn (an edited last message, or a
 * regenerate from a client that changes the turn, prefills only that
 * turn). Each is taken while the prompt is prefilled, which is split there;
 * the end when it fits in --kv-snapshot-mb, the turn start in half that. */
enum { SNAP_END, SNAP_TURN };

/* Keeps the session's state in a slot, if it is at most max bytes. */
static void snapshot_take(srv_ctx *c, ds4_session *s, snapshot *sn, uint64_t max) {
    int n = ds4_session_n_tokens(s);
    if (n == sn->n && n > 0 && !memcmp(sn->tokens, ds4_session_tokens(s), sizeof(int32_t) * (size_t)n))
        return; /* already held */
    sn->len = 0;
    sn->n = 0;
    uint64_t bytes = ds4_session_payload_bytes(s);
    if (n == 0 || bytes > max || n >= c->ctx_size) return;
    if (bytes > sn->cap) {
        free(sn->bytes);
        sn->cap = 0;
        if (!(sn->bytes = malloc(bytes))) return;
        sn->cap = bytes;
    }
    int32_t *toks = realloc(sn->tokens, sizeof(int32_t) * (size_t)n);
    if (!toks) return;
    sn->tokens = toks;
    memcpy(toks, ds4_session_tokens(s), sizeof(int32_t) * (size_t)n);
    size_t len;
    ds4_err err = {{0}};
    double t0 = ds4_now();
    if (ds4_session_save_payload_mem(s, sn->bytes, sn->cap, &len, &err) || len != bytes) {
        srv_log("prompt snapshot not kept: %s", err.msg[0] ? err.msg : "size mismatch");
        return;
    }
    sn->len = bytes;
    sn->n = n;
    srv_trace(c, "--- trace: snapshot kept tokens=%d bytes=%llu ms=%.1f ---\n", n, (unsigned long long)bytes,
              1000 * (ds4_now() - t0));
}

/* Restores the longest snapshot whose tokens begin the prompt's, or whose
 * bytes begin its text (a state reached through memory-text holds the
 * model's own tokenization); *text_len = the bytes it covers. */
static bool snapshot_restore(srv_ctx *c, ds4_session *s, const srv_job *job, size_t *text_len) {
    srv_cache *k = c->cache;
    snapshot *best = NULL;
    size_t best_len = 0, plen = strlen(job->prompt_text);
    for (int i = 0; i < 2; i++) {
        snapshot *sn = &k->snap[i];
        if (!sn->n || (best && sn->n <= best->n)) continue;
        size_t len;
        char *text = tokens_text(c, sn->tokens, sn->n, &len);
        bool tokens = sn->n <= job->n_tokens && !memcmp(sn->tokens, job->tokens, sizeof(int32_t) * (size_t)sn->n);
        if (tokens || (len <= plen && !memcmp(text, job->prompt_text, len))) {
            best = sn;
            best_len = len;
        }
        free(text);
    }
    if (!best) return false;
    ds4_err err = {{0}};
    if (ds4_session_load_payload_mem(s, best->bytes, best->len, &err)) {
        srv_log("prompt snapshot not restored: %s", err.msg);
        best->len = 0;
        best->n = 0;
        return false;
    }
    *text_len = best_len;
    return true;
}

/* ------------------------------------------------------------ decision */

static const char *miss_reason(int have, int n, int common) {
    if (have == 0) return "no-live-checkpoint";
    if (common == n && n <= have) return "incoming-prompt-shorter-than-live-checkpoint";
    return "token-mismatch";
}

/* Continues a restored prefix of `base` tokens covering text[0..text_len):
 * with the prompt's own tokens when they extend it, else with the
 * tokenization of the rest of the text. false when that would not fit. */
static bool continue_prefix(srv_ctx *c, ds4_session *s, srv_job *job, size_t text_len, srv_plan *p) {
    int base = ds4_session_n_tokens(s);
    const int32_t *live = ds4_session_tokens(s);
    if (base <= job->n_tokens && !memcmp(live, job->tokens, sizeof(int32_t) * (size_t)base)) {
        p->eval = job->tokens + base;
        p->n_eval = job->n_tokens - base;
    } else {
        const char *rest = job->prompt_text + text_len;
        size_t n_ids = 0;
        ds4_err err = {{0}};
        if (ds4_tokenize(c->tok, rest, strlen(rest), true, &p->owned, &n_ids, &err)) return false;
        p->eval = p->owned;
        p->n_eval = (int)n_ids;
    }
    if (base + p->n_eval >= c->ctx_size) {
        srv_plan_free(p);
        p->eval = NULL;
        p->n_eval = 0;
        return false;
    }
    p->base = base;
    return true;
}

/* memory-text: the live bytes are a prefix of the prompt text. */
static bool memory_text(srv_ctx *c, ds4_session *s, srv_job *job, srv_plan *p) {
    int have = ds4_session_n_tokens(s);
    if (have == 0) return false;
    size_t len;
    char *text = tokens_text(c, ds4_session_tokens(s), have, &len);
    bool ok = len < strlen(job->prompt_text) && !memcmp(text, job->prompt_text, len) &&
              continue_prefix(c, s, job, len, p);
    free(text);
    return ok;
}

/* A session that stopped before the EOS its visible text ends with (the
 * thinking binding, or a checkpoint keyed by it) continues with EOS + the
 * tokens of the prompt text after that visible text. */
static bool continue_after_eos(srv_ctx *c, ds4_session *s, srv_job *job, size_t text_len, srv_plan *p) {
    int have = ds4_session_n_tokens(s);
    const char *rest = job->prompt_text + text_len;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    ds4_err err = {{0}};
    bool ok = *rest && ds4_tokenize(c->tok, rest, strlen(rest), true, &ids, &n_ids, &err) == 0 &&
              have + (int)n_ids + 1 < c->ctx_size;
    if (ok) {
        p->owned = ds4_xrealloc(NULL, sizeof(int32_t) * (n_ids + 1));
        p->owned[0] = ds4_tokenizer_specials(c->tok).eos;
        memcpy(p->owned + 1, ids, sizeof(int32_t) * n_ids);
        p->eval = p->owned;
        p->n_eval = (int)n_ids + 1;
        p->base = have;
    }
    free(ids);
    return ok;
}

/* thinking-visible: the live session is the binding's. */
static bool thinking_visible(srv_ctx *c, ds4_session *s, srv_job *job, srv_plan *p) {
    if (!c->live_visible || ds4_session_n_tokens(s) != c->live_visible_pos) return false;
    size_t vl = strlen(c->live_visible);
    return !strncmp(job->prompt_text, c->live_visible, vl) && continue_after_eos(c, s, job, vl, p);
}

static void trace_mismatch(srv_ctx *c, ds4_session *s, const srv_job *job, int common) {
    int have = ds4_session_n_tokens(s);
    const int32_t *live = ds4_session_tokens(s);
    srv_trace(c, "first_mismatch_token: %d\n", common);
    int from = common > 8 ? common - 8 : 0;
    for (int i = from; i <= common + 8 && (i < have || i < job->n_tokens); i++) {
        const char *mark = i >= have ? "prompt-only" : i >= job->n_tokens ? "live-only"
                           : live[i] == job->tokens[i] ? "==" : "!=";
        size_t la = 0, lb = 0;
        const char *a = i < have ? ds4_token_bytes(c->tok, live[i], &la) : "";
        const char *b = i < job->n_tokens ? ds4_token_bytes(c->tok, job->tokens[i], &lb) : "";
        ds4_buf e = {0};
        for (int side = 0; side < 2; side++) {
            const char *t = side ? b : a;
            size_t n = side ? lb : la;
            ds4_buf_adds(&e, side ? " | " : "");
            for (size_t j = 0; j < n && t; j++) {
                unsigned char ch = (unsigned char)t[j];
                if (ch == '\n') ds4_buf_adds(&e, "\\n");
                else if (ch < 0x20 || ch == '\\') ds4_buf_addf(&e, "\\x%02x", ch);
                else ds4_buf_addc(&e, (char)ch);
            }
        }
        srv_trace(c, "  [%d] %s %s\n", i, mark, ds4_buf_str(&e));
        ds4_buf_free(&e);
    }
}

void srv_cache_decide(srv_ctx *c, ds4_session *s, srv_job *job, srv_plan *p) {
    srv_cache *k = c->cache;
    memset(p, 0, sizeof *p);
    p->source = "none";
    const char *disk_file = NULL;
    double load_ms = 0;
    ds4_kvcache_hit hit = {0};
    int have = ds4_session_n_tokens(s), common;
    int reusable = ds4_session_reusable(s, job->tokens, job->n_tokens, &common);
    const char *miss = reusable ? "live-prefix-match" : miss_reason(have, job->n_tokens, common);
    if (reusable) {
        p->source = "memory-token";
        p->base = reusable;
        p->eval = job->tokens + reusable;
        p->n_eval = job->n_tokens - reusable;
    } else if (thinking_visible(c, s, job, p)) {
        p->source = "thinking-visible";
    } else if (memory_text(c, s, job, p)) {
        p->source = "memory-text";
    } else {
        if (have > 0) {
            srv_log("live kv cache miss live=%d prompt=%d common=%d reason=%s", have, job->n_tokens, common, miss);
            if (k) ds4_kvcache_schedule_reset(&k->sched, 0);
            if (k && k->kv && ds4_kvcache_should_save_live(&c->cfg.kv, have)) save_live(c, s, DS4_KVC_REASON_EVICT);
        }
        size_t snap_text = 0;
        if (k && snapshot_restore(c, s, job, &snap_text) && continue_prefix(c, s, job, snap_text, p)) {
            p->source = "memory-snapshot";
            ds4_kvcache_schedule_reset(&k->sched, p->base);
        } else if (k && k->kv) {
            double t0 = ds4_now();
            ds4_kvcache_io io = ds4_kvcache_session_io(s);
            if (ds4_kvcache_lookup(k->kv, &io, job->prompt_text, strlen(job->prompt_text), &hit)) {
                bool eos_first = hit.ext_flags & DS4_KVC_EXT_THINKING_VISIBLE;
                if (eos_first ? continue_after_eos(c, s, job, hit.text_bytes, p)
                              : continue_prefix(c, s, job, hit.text_bytes, p)) {
                    p->source = "disk-text";
                    p->disk_cached = p->base;
                    disk_file = hit.name;
                    ds4_kvcache_schedule_reset(&k->sched, p->base);
                    if (c->toolmem) srv_toolmem_import(c->toolmem, hit.tool_ids, hit.n_tool_ids);
                    load_ms = 1000 * (ds4_now() - t0);
                }
            }
            update_disk_metrics(c);
        }
        if (!strcmp(p->source, "none")) {
            ds4_session_reset(s);
            if (k) ds4_kvcache_schedule_reset(&k->sched, 0);
            p->base = 0;
            p->eval = job->tokens;
            p->n_eval = job->n_tokens;
        }
    }
    free(c->live_visible); /* a binding lives for the next job only */
    c->live_visible = NULL;
    p->cached = job->n_tokens > p->n_eval ? job->n_tokens - p->n_eval : 0;
    if (p->disk_cached > p->cached) p->disk_cached = p->cached;
    srv_metrics_cache_decision(c->metrics, p->source, p->cached - p->disk_cached, p->disk_cached);
    if (c->trace) {
        srv_trace(c, "--- cache decision ---\nlive_tokens_before: %d\nprompt_tokens: %d\nlive_prompt_common: %d\n"
                     "memory_token_reusable: %s\nmemory_miss_reason: %s\ncache_source: %s\ncached_tokens: %d\n"
                     "disk_cached_tokens: %d\n",
                  have, job->n_tokens, common, reusable ? "true" : "false", miss, p->source, p->cached,
                  p->disk_cached);
        if (disk_file)
            srv_trace(c, "disk_cache_file: %s\ndisk_load_ms: %.1f\ndisk_tool_ids: %d\n", disk_file, load_ms,
                      hit.n_tool_ids);
        if (!reusable && have > 0) trace_mismatch(c, s, job, common);
    }
    ds4_kvcache_hit_free(&hit);
}

/* ------------------------------------------------------------- prefill */

/* Prefill runs in pieces (split at checkpoints); progress is reported over
 * the whole prompt. */
typedef struct piece_progress {
    ds4_progress_fn fn;
    void *ctx;
    int offset, total;
} piece_progress;

static int on_piece(void *ctx, int done, int total) {
    (void)total;
    piece_progress *pp = ctx;
    return pp->fn ? pp->fn(pp->ctx, pp->offset + done, pp->total) : 0;
}

int srv_cache_prefill(srv_ctx *c, ds4_session *s, srv_job *job, const srv_plan *p, ds4_progress_fn progress,
                      void *progress_ctx, ds4_err *err) {
    srv_cache *k = c->cache;
    bool disk = k && k->kv;
    const ds4_kvcache_config *kc = &c->cfg.kv;
    int end = p->base + p->n_eval, cold = 0, turn = 0;
    ds4_tok_specials sp = ds4_tokenizer_specials(c->tok);
    if (disk && p->base == 0) {
        int anchor = ds4_kvcache_chat_anchor(kc, job->tokens, job->n_tokens, sp.user, sp.assistant);
        cold = ds4_kvcache_cold_len(kc, 0, end, anchor);
    }
    if (k && c->cfg.snapshot_max) /* the last user turn starts at its User token */
        for (int i = p->n_eval - 1; i > 0 && !turn; i--)
            if (p->eval[i] == sp.user) turn = p->base + i;
    int pos = p->base;
    while (pos < end) {
        int stop = end;
        if (cold > pos && cold < stop) stop = cold;
        if (turn > pos && turn < stop) stop = turn;
        int next = disk ? ds4_kvcache_next_continued(kc, &k->sched, pos) : 0;
        if (next > pos && next < stop) stop = next;
        piece_progress pp = {.fn = progress, .ctx = progress_ctx, .offset = pos - p->base, .total = end - p->base};
        int rc = ds4_session_eval(s, p->eval + (pos - p->base), stop - pos, on_piece, &pp, err);
        if (rc) return rc;
        pos = stop;
        if (pos == turn) snapshot_take(c, s, &k->snap[SNAP_TURN], c->cfg.snapshot_max / 2);
        if (disk && pos == cold) save_live(c, s, DS4_KVC_REASON_COLD);
        if (disk && ds4_kvcache_continued_target(kc, &k->sched, pos)) save_live(c, s, DS4_KVC_REASON_CONTINUED);
    }
    if (k && c->cfg.snapshot_max) snapshot_take(c, s, &k->snap[SNAP_END], c->cfg.snapshot_max);
    return 0;
}

bool srv_cache_decode_point_due(const srv_ctx *c, int live_tokens) {
    const srv_cache *k = c->cache;
    return k && k->kv && ds4_kvcache_continued_target(&c->cfg.kv, &k->sched, live_tokens);
}

void srv_cache_decode_point(srv_ctx *c, ds4_session *s) {
    if (srv_cache_decode_point_due(c, ds4_session_n_tokens(s))) save_live(c, s, DS4_KVC_REASON_CONTINUED);
}

void srv_cache_shutdown(srv_ctx *c, ds4_session *s) {
    srv_cache *k = c->cache;
    if (k && k->kv && s && ds4_kvcache_should_save_live(&c->cfg.kv, ds4_session_n_tokens(s)))
        save_live(c, s, DS4_KVC_REASON_SHUTDOWN);
}
