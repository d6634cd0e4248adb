/* ctx.h — the running server: its configuration, the job a request becomes,
 * the bounded queue and the worker (sched.c), the generation (gen.c), prompt
 * preparation (prompt.c), the tool memory (toolmem.c), metrics (metrics.c)
 * and the trace (trace.c).
 *
 * Threads: one per client connection (libmicrohttpd, http.c) and one worker.
 * A client thread parses, renders and tokenizes, then enqueues a job and
 * waits on it (non-streaming) or drains its output as SSE (streaming). The
 * worker owns the engine session. Shared between the two sides of a job:
 * its output buffer, its done flag and its cancel flag, under job->mu. */
#ifndef DS4_SERVER_CTX_H
#define DS4_SERVER_CTX_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include "../engine/engine.h"
#include "../kvcache/kvcache.h"
#include "server.h"

typedef struct srv_config {
    const char *host;
    int port;
    bool cors;
    const char *api_key;   /* NULL = no auth */
    const char *force_output; /* --force-output FILE (test-only), NULL = sample */
    int max_queue;         /* waiting jobs before 429 */
    size_t max_body;       /* bytes, 413 beyond */
    int io_timeout_s;      /* idle connection timeout */
    double keepalive_s;    /* SSE comment after this many silent seconds (< io timeout) */
    int default_max_tokens; /* -n */
    int mtp_draft;         /* --mtp-draft: speculation with 2 or more (greedy requests) */
    ds4_spec_opts spec;    /* --mtp-margin (tests set a draft hook) */
    float temperature, top_p, min_p; /* sampling defaults (forced in thinking mode) */
    int top_k;
    uint64_t seed;         /* 0 = time-based per request */
    srv_think think;       /* default thinking mode */
    int tool_memory_max_ids;
    bool exact_replay;     /* tool memory on */
    const char *trace_path;
    ds4_kvcache_config kv; /* disk KV cache; kv.dir NULL = off */
    size_t snapshot_max;   /* bytes of the in-RAM prompt snapshot, 0 = off */
    ds4_engine_config engine;
} srv_config;

typedef struct srv_metrics srv_metrics;
typedef struct srv_toolmem srv_toolmem;
typedef struct srv_cache srv_cache;

typedef struct srv_job srv_job;

typedef struct srv_ctx {
    srv_config cfg;
    ds4_engine *engine;
    const ds4_tokenizer *tok;
    int ctx_size;
    srv_metrics *metrics;
    srv_toolmem *toolmem;
    srv_cache *cache; /* NULL: live token-prefix reuse only */
    FILE *trace;
    pthread_mutex_t trace_mu;
    atomic_ulong next_id; /* chatcmpl-<n> counter */

    /* queue */
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    srv_job *q_head, *q_tail;
    int q_len;
    bool busy;
    atomic_bool stopping;
    pthread_t worker;

    /* worker only: after a tool-less thinking turn, the text its follow-up
     * renders (reasoning dropped) and the session length it belongs to */
    char *live_visible;
    int live_visible_pos;

    struct srv_force *force; /* --force-output: forced replies (force.h), NULL = off */
} srv_ctx;

struct srv_job {
    srv_request req;
    int32_t *tokens; /* rendered prompt */
    int n_tokens;
    char *prompt_text;
    char *id;        /* response id */
    int64_t created;
    unsigned long seq; /* request number (trace) */

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    atomic_bool cancelled; /* client gone or output not drained */
    bool done;
    int status;     /* HTTP status of a non-streaming answer */
    ds4_buf out;    /* bytes produced and not yet handed to the client */
    size_t out_pos; /* bytes of out already handed over */
    srv_job *next;
};

/* ---- prompt.c ---- */
/* The prompt text of a request (malloc'd); uses c->toolmem and c->ctx_size. */
int srv_render_prompt(srv_ctx *c, const srv_request *req, char **text, srv_error *err);
/* Renders req into job->prompt_text and tokenizes it into job->tokens;
 * checks the context (400 with the limit). */
int srv_prepare_prompt(srv_ctx *c, srv_job *job, srv_error *err);
/* The text the follow-up request of a finished turn renders up to and
 * including the turn's EOS (req + an assistant message with reasoning and
 * content); NULL where it cannot be known (other endpoints, render error). */
char *srv_render_continuation(srv_ctx *c, const srv_request *req, const char *reasoning, const char *content);
/* Number of prompt tokens of a request (count_tokens). */
int srv_count_tokens(srv_ctx *c, const srv_request *req, int *n, srv_error *err);

/* ---- sched.c ---- */
int srv_sched_start(srv_ctx *c);
void srv_sched_stop(srv_ctx *c);
srv_job *srv_job_new(void);
void srv_job_ref(srv_job *j);
void srv_job_unref(srv_job *j);
/* Appends output bytes (worker side) and wakes the client side. Fails once
 * the job is cancelled, or cancels it when the client has fallen too far
 * behind. */
int srv_job_write(void *job, const char *data, size_t n);
/* Enqueues (the queue takes a reference). -1 when full or stopping. */
int srv_enqueue(srv_ctx *c, srv_job *j, srv_error *err);
int srv_queue_depth(srv_ctx *c, bool *busy);

/* ---- gen.c ---- */
/* Runs one job to completion on the worker's session. */
void srv_generate(srv_ctx *c, ds4_session *s, srv_job *job);
/* Answers a job that cannot run: a JSON error with `status`, or an SSE
 * error event when the stream's headers are already out. */
void srv_reject_job(srv_job *job, int status, const char *msg);

/* ---- toolmem.c: exact DSML replay (server-spec §4.8) ---- */
srv_toolmem *srv_toolmem_new(int max_ids, size_t max_bytes);
void srv_toolmem_free(srv_toolmem *m);
/* Remembers that each of ids[0..n) was sampled in block raw. */
void srv_toolmem_remember(srv_toolmem *m, const char *const *ids, int n, const char *raw, size_t len);
/* The block all of ids[0..n) map to (malloc'd copy), or NULL when any id is
 * unknown or they map to different blocks. */
char *srv_toolmem_lookup(srv_toolmem *m, const char *const *ids, int n);
int srv_toolmem_count(srv_toolmem *m);
/* The entries whose block occurs in text (for a disk checkpoint's KTM map);
 * returns the count, *out freed with srv_toolmem_export_free. */
int srv_toolmem_export(srv_toolmem *m, const char *text, size_t len, ds4_kvcache_tool_id **out);
void srv_toolmem_export_free(ds4_kvcache_tool_id *ids, int n);
/* Remembers a loaded KTM map (ids with equal DSML share one block). */
void srv_toolmem_import(srv_toolmem *m, const ds4_kvcache_tool_id *ids, int n);

/* ---- cache.c: KV reuse across requests (server-spec §5) ---- */
/* What a job evaluates after the cache decision: the session already
 * holds `base` tokens; eval[0..n_eval) follow. */
typedef struct srv_plan {
    const int32_t *eval;
    int32_t *owned; /* eval's storage when it is not the job's tokens */
    int n_eval;
    int base;
    int cached;      /* usage: prompt tokens not prefilled */
    int disk_cached; /* of which loaded from disk */
    const char *source; /* server-spec §9.4 cache_source, plus memory-snapshot */
} srv_plan;

/* Opens the disk cache (when cfg.kv.dir; flags already checked) and the
 * prompt snapshot. */
int srv_cache_open(srv_ctx *c, ds4_err *err);
void srv_cache_close(srv_ctx *c);
/* The decision (§5.1): leaves the session holding plan->base tokens. */
void srv_cache_decide(srv_ctx *c, ds4_session *s, srv_job *job, srv_plan *plan);
void srv_plan_free(srv_plan *plan);
/* Evaluates the plan's tokens, saving cold and continued checkpoints on
 * the way and the prompt snapshot at the end; returns like ds4_session_eval. */
int srv_cache_prefill(srv_ctx *c, ds4_session *s, srv_job *job, const srv_plan *plan, ds4_progress_fn progress,
                      void *progress_ctx, ds4_err *err);
/* Before each decode token outside a tool block: a continued save when due
 * (srv_cache_decode_point_due: at that many live tokens). */
void srv_cache_decode_point(srv_ctx *c, ds4_session *s);
bool srv_cache_decode_point_due(const srv_ctx *c, int live_tokens);
/* Client thread, before rendering: tool-call ids of req's history that
 * the tool memory lacks are looked up in the disk cache's KTM maps. */
void srv_cache_recall_tool_ids(srv_ctx *c, const srv_request *req);
/* The worker is exiting: the shutdown save. */
void srv_cache_shutdown(srv_ctx *c, ds4_session *s);

/* ---- metrics.c ---- */
srv_metrics *srv_metrics_new(void);
void srv_metrics_free(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, const char *endpoint, int status);
void srv_metrics_prefill(srv_metrics *m, int tokens, double seconds, int cached);
void srv_metrics_decode(srv_metrics *m, int tokens, double seconds);
void srv_metrics_cancelled(srv_metrics *m);
/* A cache decision: source ("none" = miss), tokens reused from RAM and disk. */
void srv_metrics_cache_decision(srv_metrics *m, const char *source, int memory_tokens, int disk_tokens);
/* The disk cache's counters and size, after each operation (worker). */
void srv_metrics_kv_disk(srv_metrics *m, const ds4_kvcache_stats *st, uint64_t bytes, int files);
/* Prometheus text exposition. */
char *srv_metrics_render(srv_metrics *m, srv_ctx *c);

/* ---- trace.c ---- */
void srv_trace(srv_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void srv_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- http.c ---- */
int srv_http_run(srv_ctx *c); /* serves until SIGINT/SIGTERM */


#endif
