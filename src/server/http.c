/* http.c — HTTP/1.1 on libmicrohttpd: routing, auth, body limits, error
 * shapes, and handing jobs to the worker.
 *
 * Threading: MHD's thread-per-connection mode. Each client gets a thread
 * that may block: it parses, renders and tokenizes (server-spec §3), then
 * waits for its job (non-streaming) or blocks in the SSE content reader
 * until the worker has produced bytes. Blocking is what makes the code
 * simple, and connections are few (agents, not browsers); a cap on
 * connections bounds the threads. The alternative, internal select with
 * suspend/resume, would need the worker to resume connections and a second
 * path for disconnect detection, for no gain at this scale.
 *
 * Disconnects: while a client waits, its thread polls the socket every
 * 250 ms; a closed peer (EOF or hang-up) cancels the job, and the worker
 * stops at its next prefill chunk or decode step. SSE headers go out as
 * soon as the job is queued, and the stream gets a ": keep-alive" comment
 * after --keepalive seconds (5) without output (queue wait, prefill,
 * withheld tool output), so clients' idle timeouts do not fire.
 *
 * Oversized bodies: a body over --max-body-mb by at most drain_cap() is
 * read and thrown away, then answered 413, so the client finishes writing
 * and reads the answer (answering first and closing makes the kernel reset
 * the connection under a client still writing: EPIPE instead of a 413).
 * A larger declared body is answered 413 at once and the connection closed
 * unread; a chunked body that streams past the cap is cut off (MHD cannot
 * queue a response mid-body). No oversized body is ever kept or parsed.
 *
 * Every response carries "Connection: close": one request per connection,
 * as ds4 (no races between a client reusing a socket and our timeout).
 * Slow or stalled clients are dropped by MHD's connection timeout. Nothing
 * is built from request data except JSON; no path touches the filesystem. */
#define _GNU_SOURCE /* POLLRDHUP */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "../common/clock.h"
#include "../common/xalloc.h"
#include "ctx.h"

typedef enum route {
    R_NONE,
    R_OPTIONS,
    R_MODELS,
    R_MODEL,
    R_HEALTH,
    R_METRICS,
    R_GENERATE, /* api says which */
    R_COUNT_TOKENS,
} route;

typedef struct conn {
    route route;
    srv_api api;
    const char *endpoint; /* metrics label */
    ds4_buf body;
    bool too_large;
    unsigned long long received; /* body bytes seen, kept or drained */
    srv_job *job;
} conn;

typedef struct sse_reader {
    srv_ctx *c;
    srv_job *job;
    int fd;
    double last_output;
} sse_reader;

static const char *model_id = "deepseek-v4-flash";

/* ------------------------------------------------------------------ */
/* responses */

static void common_headers(srv_ctx *c, struct MHD_Response *r, const char *ctype) {
    if (ctype) MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Connection", "close");
    if (c->cfg.cors) {
        MHD_add_response_header(r, "Access-Control-Allow-Origin", "*");
        MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
        MHD_add_response_header(r, "Access-Control-Allow-Headers", "*");
    }
}

static enum MHD_Result send_body(srv_ctx *c, struct MHD_Connection *con, conn *cn, int status,
                                 const char *ctype, const char *body, size_t len) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r) return MHD_NO;
    common_headers(c, r, ctype);
    enum MHD_Result ok = MHD_queue_response(con, (unsigned)status, r);
    MHD_destroy_response(r);
    srv_metrics_request(c->metrics, cn->endpoint, status);
    return ok;
}

static enum MHD_Result send_json(srv_ctx *c, struct MHD_Connection *con, conn *cn, int status, json_t *v) {
    char *s = srv_json_line(v);
    enum MHD_Result ok = send_body(c, con, cn, status, "application/json", s, strlen(s));
    free(s);
    return ok;
}

static enum MHD_Result send_error(srv_ctx *c, struct MHD_Connection *con, conn *cn, const srv_error *e) {
    char *body = srv_error_body(e, cn->api);
    enum MHD_Result ok = send_body(c, con, cn, e->status, "application/json", body, strlen(body));
    free(body);
    return ok;
}

static enum MHD_Result fail(srv_ctx *c, struct MHD_Connection *con, conn *cn, int status, const char *type,
                            const char *msg) {
    srv_error e;
    srv_error_set(&e, status, "%s", msg);
    if (type) e.type = type;
    return send_error(c, con, cn, &e);
}

/* ------------------------------------------------------------------ */
/* helpers */

static bool peer_closed(int fd) {
    if (fd < 0) return false;
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) return true;
    if (p.revents & POLLIN) {
        char ch;
        ssize_t r = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
        return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
    }
    return false;
}

static int conn_fd(struct MHD_Connection *con) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

static void deadline_in(struct timespec *ts, int ms) {
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_nsec += (long)ms * 1000000L;
    ts->tv_sec += ts->tv_nsec / 1000000000L;
    ts->tv_nsec %= 1000000000L;
}

/* Constant-time key check: compare SHA-256 digests, so neither the bytes
 * nor the length of the configured key leak through timing. */
static bool key_matches(const char *given, const char *want) {
    unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)given, strlen(given), a);
    SHA256((const unsigned char *)want, strlen(want), b);
    return CRYPTO_memcmp(a, b, sizeof a) == 0;
}

static bool authorized(srv_ctx *c, struct MHD_Connection *con) {
    if (!c->cfg.api_key) return true;
    const char *auth = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Authorization");
    if (auth && !strncasecmp(auth, "Bearer ", 7) && key_matches(auth + 7, c->cfg.api_key)) return true;
    const char *xkey = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "x-api-key");
    return xkey && key_matches(xkey, c->cfg.api_key);
}

static json_t *model_object(srv_ctx *c, const char *id) {
    int maxc = c->cfg.default_max_tokens < c->ctx_size ? c->cfg.default_max_tokens : c->ctx_size;
    return json_pack("{s:s,s:s,s:I,s:s,s:s,s:i,s:{s:i,s:i,s:b},s:[sssssssssss]}", "id", id, "object", "model",
                     "created", (json_int_t)1767225600, "owned_by", "ds4.c", "name", "DeepSeek V4 Flash",
                     "context_length", c->ctx_size, "top_provider", "context_length", c->ctx_size,
                     "max_completion_tokens", maxc, "is_moderated", 0, "supported_parameters", "tools",
                     "tool_choice", "max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "seed",
                     "stream", "reasoning_effort");
}

static route route_of(const char *method, const char *url, srv_api *api, const char **endpoint) {
    bool get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
    *api = SRV_API_CHAT;
    *endpoint = "other";
    if (!strcmp(method, "OPTIONS")) return R_OPTIONS;
    if (get && !strcmp(url, "/v1/models")) return *endpoint = "/v1/models", R_MODELS;
    if (get && !strncmp(url, "/v1/models/", 11) && url[11]) return *endpoint = "/v1/models/{id}", R_MODEL;
    if (get && !strcmp(url, "/health")) return *endpoint = "/health", R_HEALTH;
    if (get && !strcmp(url, "/metrics")) return *endpoint = "/metrics", R_METRICS;
    if (!post) return R_NONE;
    static const struct { const char *path; srv_api api; } gen_routes[] = {
        {"/v1/chat/completions", SRV_API_CHAT},
        {"/v1/completions", SRV_API_COMPLETIONS},
        {"/v1/responses", SRV_API_RESPONSES},
        {"/v1/messages", SRV_API_MESSAGES},
    };
    for (size_t i = 0; i < sizeof gen_routes / sizeof gen_routes[0]; i++)
        if (!strcmp(url, gen_routes[i].path)) {
            *api = gen_routes[i].api;
            *endpoint = gen_routes[i].path;
            return R_GENERATE;
        }
    if (!strcmp(url, "/v1/messages/count_tokens")) {
        *api = SRV_API_COUNT_TOKENS;
        *endpoint = "/v1/messages/count_tokens";
        return R_COUNT_TOKENS;
    }
    return R_NONE;
}

/* ------------------------------------------------------------------ */
/* SSE */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max) {
    sse_reader *rd = cls;
    srv_job *j = rd->job;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        size_t avail = j->out.len - j->out_pos;
        if (avail) {
            size_t n = avail < max ? avail : max;
            memcpy(buf, j->out.p + j->out_pos, n);
            j->out_pos += n;
            if (j->out_pos == j->out.len) {
                ds4_buf_truncate(&j->out, 0);
                j->out_pos = 0;
            }
            pthread_mutex_unlock(&j->mu);
            rd->last_output = ds4_now();
            return (ssize_t)n;
        }
        if (j->done) {
            pthread_mutex_unlock(&j->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        struct timespec ts;
        deadline_in(&ts, 250);
        pthread_cond_timedwait(&j->cv, &j->mu, &ts);
        if (j->out.len - j->out_pos) continue;
        if (peer_closed(rd->fd)) {
            atomic_store(&j->cancelled, true);
            pthread_mutex_unlock(&j->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (ds4_now() - rd->last_output >= rd->c->cfg.keepalive_s) { /* at an event boundary: nothing pending */
            static const char ka[] = ": keep-alive\n\n";
            size_t n = sizeof ka - 1 < max ? sizeof ka - 1 : max;
            memcpy(buf, ka, n);
            pthread_mutex_unlock(&j->mu);
            rd->last_output = ds4_now();
            return (ssize_t)n;
        }
    }
}

static void sse_free(void *cls) {
    sse_reader *rd = cls;
    srv_job_unref(rd->job);
    free(rd);
}

/* ------------------------------------------------------------------ */
/* endpoints */

static void trace_request(srv_ctx *c, srv_job *job, conn *cn) {
    if (!c->trace) return;
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    const srv_request *r = &job->req;
    srv_trace(c,
              "===== request %lu %s =====\nkind: %s\nmodel: %s\nstream: %s\ntools: %d\nthink_mode: %s\n"
              "prompt_tokens: %d\nmax_tokens: %d\nstream_include_usage: %s\n--- raw request json ---\n%.*s\n"
              "--- rendered prompt ---\n%s\n",
              job->seq, when, cn->endpoint, r->model, r->stream ? "true" : "false", r->has_tools ? r->n_tools : 0,
              r->think == SRV_THINK_NONE ? "none" : r->think == SRV_THINK_MAX ? "max" : "high", job->n_tokens,
              r->max_tokens, r->include_usage ? "true" : "false", (int)cn->body.len, cn->body.p ? cn->body.p : "",
              job->prompt_text);
}

static enum MHD_Result handle_generate(srv_ctx *c, struct MHD_Connection *con, conn *cn) {
    srv_parse_defaults d = {.think = c->cfg.think};
    srv_error e;
    srv_job *job = srv_job_new();
    if (srv_parse_request(cn->api, cn->body.p ? cn->body.p : "", cn->body.len, &d, &job->req, &e) ||
        srv_prepare_prompt(c, job, &e)) {
        srv_job_unref(job);
        return send_error(c, con, cn, &e);
    }
    job->seq = atomic_fetch_add(&c->next_id, 1) + 1;
    job->created = (int64_t)time(NULL);
    if (cn->api == SRV_API_RESPONSES) {
        job->id = srv_random_id("resp_", 24);
    } else {
        char id[48];
        snprintf(id, sizeof id, "%s-%lu", cn->api == SRV_API_COMPLETIONS ? "cmpl" : "chatcmpl", job->seq);
        job->id = ds4_xstrdup(id);
    }
    trace_request(c, job, cn);
    if (srv_enqueue(c, job, &e)) {
        srv_job_unref(job);
        return send_error(c, con, cn, &e);
    }
    cn->job = job; /* the conn's reference; released when the request ends */
    int fd = conn_fd(con);

    if (job->req.stream) {
        sse_reader *rd = ds4_xcalloc(1, sizeof *rd);
        *rd = (sse_reader){.c = c, .job = job, .fd = fd, .last_output = ds4_now()};
        srv_job_ref(job);
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, rd, sse_free);
        if (!r) {
            sse_free(rd);
            return MHD_NO;
        }
        common_headers(c, r, "text/event-stream");
        MHD_add_response_header(r, "Cache-Control", "no-cache");
        MHD_add_response_header(r, "X-Accel-Buffering", "no"); /* proxies: do not buffer SSE */
        enum MHD_Result ok = MHD_queue_response(con, MHD_HTTP_OK, r);
        MHD_destroy_response(r);
        srv_metrics_request(c->metrics, cn->endpoint, 200);
        return ok;
    }

    pthread_mutex_lock(&job->mu);
    while (!job->done) {
        struct timespec ts;
        deadline_in(&ts, 250);
        pthread_cond_timedwait(&job->cv, &job->mu, &ts);
        if (!job->done && peer_closed(fd)) {
            atomic_store(&job->cancelled, true);
            pthread_mutex_unlock(&job->mu);
            srv_metrics_request(c->metrics, cn->endpoint, 499); /* client closed request */
            return MHD_NO;
        }
    }
    pthread_mutex_unlock(&job->mu);
    return send_body(c, con, cn, job->status, "application/json", job->out.p ? job->out.p : "", job->out.len);
}

static enum MHD_Result handle_count_tokens(srv_ctx *c, struct MHD_Connection *con, conn *cn) {
    srv_parse_defaults d = {.think = c->cfg.think};
    srv_error e;
    srv_request req;
    if (srv_parse_request(SRV_API_COUNT_TOKENS, cn->body.p ? cn->body.p : "", cn->body.len, &d, &req, &e))
        return send_error(c, con, cn, &e);
    int n = 0;
    int rc = srv_count_tokens(c, &req, &n, &e);
    srv_request_free(&req);
    if (rc) return send_error(c, con, cn, &e);
    return send_json(c, con, cn, 200, json_pack("{s:i}", "input_tokens", n));
}

static enum MHD_Result handle_get(srv_ctx *c, struct MHD_Connection *con, conn *cn, const char *url) {
    switch (cn->route) {
    case R_MODELS:
        return send_json(c, con, cn, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", model_object(c, model_id)));
    case R_MODEL: {
        const char *id = url + strlen("/v1/models/");
        if (strcmp(id, model_id) && strcmp(id, "deepseek-chat") && strcmp(id, "deepseek-reasoner")) {
            srv_error e;
            srv_error_set(&e, 404, "The model '%.200s' does not exist; this server serves %s", id, model_id);
            e.code = "model_not_found";
            return send_error(c, con, cn, &e);
        }
        return send_json(c, con, cn, 200, model_object(c, id));
    }
    case R_HEALTH: {
        bool busy;
        int depth = srv_queue_depth(c, &busy);
        return send_json(c, con, cn, 200,
                         json_pack("{s:s,s:b,s:b,s:s,s:i,s:i,s:b,s:i}", "status", "ok", "model_loaded", 1, "ready", 1,
                                   "model", model_id, "queue_depth", depth, "max_queue", c->cfg.max_queue, "busy",
                                   busy, "context_length", c->ctx_size));
    }
    case R_METRICS: {
        char *text = srv_metrics_render(c->metrics, c);
        enum MHD_Result ok = send_body(c, con, cn, 200, "text/plain; version=0.0.4", text, strlen(text));
        free(text);
        return ok;
    }
    default: return fail(c, con, cn, 404, NULL, "unknown endpoint");
    }
}

/* The body is in (or drained, or, for a body declared past drain_cap, will
 * never be read). */
static enum MHD_Result finish_request(srv_ctx *c, struct MHD_Connection *con, conn *cn, const char *url,
                                      const char *method) {
    if (cn->route == R_OPTIONS) return send_body(c, con, cn, 204, NULL, "", 0);
    if (cn->route != R_HEALTH && cn->route != R_NONE && !authorized(c, con))
        return fail(c, con, cn, 401, "authentication_error",
                    "invalid or missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'");
    if (cn->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "request body exceeds the limit of %zu MiB (--max-body-mb)", c->cfg.max_body >> 20);
        return fail(c, con, cn, 413, NULL, msg);
    }
    switch (cn->route) {
    case R_GENERATE: return handle_generate(c, con, cn);
    case R_COUNT_TOKENS: return handle_count_tokens(c, con, cn);
    case R_NONE: {
        char msg[300];
        snprintf(msg, sizeof msg, "unknown endpoint: %.16s %.200s", method, url);
        return fail(c, con, cn, 404, NULL, msg);
    }
    default: return handle_get(c, con, cn, url);
    }
}

/* The largest body still read (and discarded) before a 413: the limit plus
 * 3x the limit, but at most 32 MiB of waste per request. */
static unsigned long long drain_cap(const srv_ctx *c) {
    unsigned long long lim = c->cfg.max_body, extra = 3 * lim;
    if (extra > (32ull << 20)) extra = 32ull << 20;
    return lim + extra;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size,
                                  void **con_cls) {
    srv_ctx *c = cls;
    conn *cn = *con_cls;
    if (!cn) { /* headers are in */
        cn = calloc(1, sizeof *cn);
        if (!cn) return MHD_NO;
        *con_cls = cn;
        cn->route = route_of(method, url, &cn->api, &cn->endpoint);
        const char *cl = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Content-Length");
        unsigned long long declared = cl ? strtoull(cl, NULL, 10) : 0;
        if (declared > c->cfg.max_body) {
            cn->too_large = true; /* drained, then answered in finish_request */
            if (declared > drain_cap(c)) return finish_request(c, con, cn, url, method); /* now, unread */
        }
        return MHD_YES;
    }
    if (*upload_size) { /* body bytes */
        cn->received += *upload_size;
        if (cn->received > drain_cap(c)) return MHD_NO; /* chunked, past the cap: close */
        if (!cn->too_large && cn->body.len + *upload_size > c->cfg.max_body) {
            cn->too_large = true;
            ds4_buf_free(&cn->body);
        }
        if (!cn->too_large) ds4_buf_add(&cn->body, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    return finish_request(c, con, cn, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls, enum MHD_RequestTerminationCode toe) {
    conn *cn = *con_cls;
    if (!cn) return;
    if (cn->job) {
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) atomic_store(&cn->job->cancelled, true);
        srv_job_unref(cn->job);
    }
    ds4_buf_free(&cn->body);
    free(cn);
    *con_cls = NULL;
}

/* ------------------------------------------------------------------ */

static void *exit_on_second_signal(void *arg) {
    int sig;
    sigwait(arg, &sig);
    _exit(130);
}

int srv_http_run(srv_ctx *c) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->cfg.port)};
    const char *host = !strcmp(c->cfg.host, "localhost") ? "127.0.0.1" : c->cfg.host;
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        srv_log("--host must be an IPv4 address (or localhost), got '%s'", c->cfg.host);
        return -1;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)c->cfg.port, NULL, NULL, on_request, c, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)c->cfg.io_timeout_s, MHD_OPTION_CONNECTION_LIMIT, 512u,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(128 << 10), MHD_OPTION_NOTIFY_COMPLETED, on_completed, c,
        MHD_OPTION_END); /* no LISTENING_ADDRESS_REUSE: it means SO_REUSEPORT, and a second server on a busy
                          * port would silently share it (MHD's default SO_REUSEADDR allows quick restarts) */
    if (!d) {
        srv_log("cannot listen on %s:%d: %s", host, c->cfg.port, strerror(errno));
        return -1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    srv_log("listening on http://%s:%u", host, di ? di->port : (unsigned)c->cfg.port);

    /* SIGINT/SIGTERM are blocked in every thread (main.c); wait here. */
    static sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    int sig = 0;
    sigwait(&set, &sig);
    srv_log("signal %d: shutting down (a second signal exits at once)", sig);
    pthread_t t;
    if (!pthread_create(&t, NULL, exit_on_second_signal, &set)) pthread_detach(t);
    srv_sched_stop(c); /* the running job ends, queued ones get 503 */
    MHD_stop_daemon(d);
    return 0;
}
