/* sched.c — the bounded FIFO queue, the one worker thread, and the job's
 * shared output buffer.
 *
 * The worker owns one engine session (the live KV state) and runs jobs one
 * at a time in arrival order (server-spec §3). A job whose client went away
 * is skipped when dequeued, and a running one stops at its next prefill
 * chunk or decode step (gen.c checks job->cancelled); ds4 ran such jobs to
 * the end.
 *
 * Batching later: the worker loop is the only place that knows jobs run one
 * at a time. srv_generate() is written as prepare -> prefill -> a loop of
 * decode steps over a per-job state; a batching worker would keep several
 * (job, session) pairs, admit new jobs from this queue while others decode,
 * and run one batched engine step for all of them per iteration. The queue,
 * the job's output buffer and the cancellation protocol stay as they are.
 *
 * Output flow control: the worker never waits for a client. If a client
 * stops reading and its undelivered output passes SRV_MAX_PENDING bytes,
 * the job is cancelled, so a stalled client cannot hold the worker. */
#include <stdlib.h>
#include <string.h>

#include "../common/xalloc.h"
#include "ctx.h"

#define SRV_MAX_PENDING (16u << 20)

srv_job *srv_job_new(void) {
    srv_job *j = ds4_xcalloc(1, sizeof *j);
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 1;
    j->status = 200;
    return j;
}

void srv_job_ref(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    j->refs++;
    pthread_mutex_unlock(&j->mu);
}

void srv_job_unref(srv_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left) return;
    srv_request_free(&j->req);
    free(j->tokens);
    free(j->prompt_text);
    free(j->id);
    ds4_buf_free(&j->out);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

int srv_job_write(void *ctx, const char *data, size_t n) {
    srv_job *j = ctx;
    if (atomic_load(&j->cancelled)) return -1;
    pthread_mutex_lock(&j->mu);
    int rc = 0;
    if (j->out.len - j->out_pos + n > SRV_MAX_PENDING) {
        atomic_store(&j->cancelled, true);
        rc = -1;
    } else {
        ds4_buf_add(&j->out, data, n);
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return rc;
}

int srv_enqueue(srv_ctx *c, srv_job *j, srv_error *err) {
    pthread_mutex_lock(&c->q_mu);
    if (c->stopping) {
        pthread_mutex_unlock(&c->q_mu);
        return srv_error_set(err, 503, "server shutting down");
    }
    if (c->q_len >= c->cfg.max_queue) {
        int n = c->q_len;
        pthread_mutex_unlock(&c->q_mu);
        srv_error_set(err, 429, "the server is busy: %d requests are already waiting (--max-queue %d); retry later",
                      n, c->cfg.max_queue);
        err->type = "rate_limit_exceeded";
        return -1;
    }
    srv_job_ref(j);
    j->next = NULL;
    if (c->q_tail) c->q_tail->next = j;
    else c->q_head = j;
    c->q_tail = j;
    c->q_len++;
    pthread_cond_signal(&c->q_cv);
    pthread_mutex_unlock(&c->q_mu);
    return 0;
}

int srv_queue_depth(srv_ctx *c, bool *busy) {
    pthread_mutex_lock(&c->q_mu);
    int n = c->q_len;
    if (busy) *busy = c->busy;
    pthread_mutex_unlock(&c->q_mu);
    return n;
}

static void finish_job(srv_job *j) {
    pthread_mutex_lock(&j->mu);
    j->done = true;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

static void *worker_main(void *arg) {
    srv_ctx *c = arg;
    ds4_session *s = NULL;
    ds4_err err = {{0}};
    if (ds4_session_new(c->engine, &s, &err)) {
        srv_log("cannot create the engine session: %s", err.msg);
        s = NULL;
    }
    for (;;) {
        pthread_mutex_lock(&c->q_mu);
        while (!c->q_head && !c->stopping) pthread_cond_wait(&c->q_cv, &c->q_mu);
        srv_job *j = c->q_head;
        if (!j) { /* stopping and drained */
            pthread_mutex_unlock(&c->q_mu);
            break;
        }
        c->q_head = j->next;
        if (!c->q_head) c->q_tail = NULL;
        c->q_len--;
        c->busy = true;
        pthread_mutex_unlock(&c->q_mu);

        if (atomic_load(&j->cancelled)) {
            srv_metrics_cancelled(c->metrics);
            srv_log("request %lu skipped: client gone while queued", j->seq);
        } else if (!s || c->stopping) {
            srv_reject_job(j, 503, s ? "server shutting down" : "engine session unavailable");
        } else {
            srv_generate(c, s, j);
        }
        finish_job(j);
        srv_job_unref(j);
        pthread_mutex_lock(&c->q_mu);
        c->busy = false;
        pthread_mutex_unlock(&c->q_mu);
    }
    srv_cache_shutdown(c, s);
    ds4_session_free(s);
    free(c->live_visible);
    c->live_visible = NULL;
    return NULL;
}

int srv_sched_start(srv_ctx *c) {
    pthread_mutex_init(&c->q_mu, NULL);
    pthread_cond_init(&c->q_cv, NULL);
    return pthread_create(&c->worker, NULL, worker_main, c) ? -1 : 0;
}

void srv_sched_stop(srv_ctx *c) {
    pthread_mutex_lock(&c->q_mu);
    c->stopping = true;
    pthread_cond_broadcast(&c->q_cv);
    pthread_mutex_unlock(&c->q_mu);
    pthread_join(c->worker, NULL);
}
