/* gen.c — one job's generation on the worker: prefix reuse, prefill, and
 * the decode loop. What happens to the generated text (stop strings, DSML
 * parsing, protocol events, the final result) is turn.c's business.
 *
 * Sampling: in thinking mode the server defaults are forced (as DeepSeek's
 * API does), otherwise the request's values where given; with tools active,
 * tokens that land in DSML structure or JSON punctuation are decoded
 * greedily while argument payloads keep the sampling (server-spec §4.7).
 * Generation stops at EOS, a stop string, the close of a tool-call block,
 * max_tokens, a full context, shutdown, or cancellation (checked at every
 * prefill chunk and decode step). The token that ends a turn is never
 * evaluated.
 *
 * Prefix reuse (which state the prompt starts from, checkpoint saves) is
 * cache.c's; after a tool-less thinking turn this file leaves the binding
 * (c->live_visible: what the turn renders as in the follow-up, whose
 * reasoning is dropped) that lets the next request continue the live
 * state (ds4's "thinking live continuation", server-spec §4.10). A batching worker would split this function at the decode loop:
 * prefill per job, then one batched engine step per iteration for all
 * running jobs, each with its own turn and sampler. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/clock.h"
#include "../common/xalloc.h"
#include "../tok/tokenizer.h"
#include "ctx.h"
#include "force.h"
#include "turn.h"

typedef struct prefill_ctx {
    srv_ctx *c;
    srv_job *job;
    double t_start, t_log;
} prefill_ctx;

static int on_prefill_progress(void *ctx, int done, int total) {
    prefill_ctx *p = ctx;
    double now = ds4_now();
    if (now - p->t_log >= 5.0) {
        p->t_log = now;
        srv_log("request %lu prefill %d/%d (%.0f%%) %.1f t/s", p->job->seq, done, total,
                total ? 100.0 * done / total : 100.0, done / (now - p->t_start + 1e-9));
    }
    return atomic_load(&p->job->cancelled) || atomic_load(&p->c->stopping) ? 1 : 0;
}

static ds4_sampler make_sampler(const srv_ctx *c, const srv_request *r, unsigned long seq) {
    const srv_config *cfg = &c->cfg;
    bool client = r->think == SRV_THINK_NONE;
    ds4_sampler sp = {
        .temperature = client && r->temperature_set ? r->temperature : cfg->temperature,
        .top_p = client && r->top_p_set ? r->top_p : cfg->top_p,
        .min_p = client && r->min_p_set ? r->min_p : cfg->min_p,
        .top_k = client && r->top_k_set ? r->top_k : cfg->top_k,
    };
    uint64_t seed = r->seed ? r->seed : cfg->seed;
    if (!seed)
        seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)seq * 0xBF58476D1CE4E5B9ull;
    ds4_sampler_seed(&sp, seed ? seed : 1);
    return sp;
}

static const char *api_name(srv_api a) {
    switch (a) {
    case SRV_API_MESSAGES: return "messages";
    case SRV_API_RESPONSES: return "responses";
    case SRV_API_COMPLETIONS: return "completions";
    default: return "chat";
    }
}

static void trace_result(srv_ctx *c, srv_job *job, const srv_result *res, const char *text, double secs) {
    if (!c->trace) return;
    srv_trace(c, "--- generated text ---\n%s\n--- parsed message ---\nfinish: %s\ngenerated_tokens: %d\n"
                 "elapsed_sec: %.3f\n",
              text, srv_finish_name(res->finish), res->usage.completion_tokens, secs);
    if (res->error) srv_trace(c, "error: %s\n", res->error);
    if (res->reasoning) srv_trace(c, "reasoning: %s\n", res->reasoning);
    srv_trace(c, "content: %s\n", res->content ? res->content : "");
    for (int i = 0; i < res->n_calls; i++)
        srv_trace(c, "tool_call[%d]: id=%s name=%s arguments=%s\n", i, res->calls[i].id, res->calls[i].name,
                  res->calls[i].arguments);
    srv_trace(c, "===== end request %lu =====\n", job->seq);
}

static void fail_job(srv_job *job, srv_emitter *em, int status, const char *msg) {
    if (job->req.stream) {
        srv_emit_error(em, msg);
        return;
    }
    srv_error e;
    srv_error_set(&e, status, "%s", msg);
    char *body = srv_error_body(&e, job->req.api);
    job->status = status;
    srv_job_write(job, body, strlen(body));
    free(body);
}

void srv_reject_job(srv_job *job, int status, const char *msg) {
    srv_emitter *em = srv_emitter_new(&job->req, job->id, job->created, srv_job_write, job);
    fail_job(job, em, status, msg);
    srv_emitter_free(em);
}

void srv_generate(srv_ctx *c, ds4_session *s, srv_job *job) {
    const srv_request *req = &job->req;
    srv_emitter *em = srv_emitter_new(req, job->id, job->created, srv_job_write, job);
    ds4_err err = {{0}};

    /* ---- prefix reuse + prefill ---- */
    srv_plan plan;
    srv_cache_decide(c, s, job, &plan);
    int cached = plan.cached, n_eval = plan.n_eval;
    srv_log("request %lu %s ctx=%d..%d:%d%s%s prompt start (cache %s)", job->seq, api_name(req->api), cached,
            job->n_tokens, n_eval, req->has_tools ? " TOOLS" : "", req->think != SRV_THINK_NONE ? " THINKING" : "",
            plan.source);
    prefill_ctx pc = {.c = c, .job = job, .t_start = ds4_now(), .t_log = ds4_now()};
    int rc = srv_cache_prefill(c, s, job, &plan, on_prefill_progress, &pc, &err);
    srv_plan_free(&plan);
    double t_decode = ds4_now();
    if (rc == 1 || atomic_load(&job->cancelled)) {
        srv_metrics_cancelled(c->metrics);
        srv_log("request %lu stopped during prefill (%s)", job->seq,
                atomic_load(&c->stopping) ? "shutdown" : "client gone");
        /* the evaluated part of the prompt stays: a client that retries resumes from it */
        if (atomic_load(&c->stopping)) fail_job(job, em, 503, "server shutting down");
        srv_emitter_free(em);
        return;
    }
    if (rc) {
        srv_log("request %lu prefill failed: %s", job->seq, err.msg);
        fail_job(job, em, 500, err.msg);
        srv_emitter_free(em);
        return;
    }
    srv_metrics_prefill(c->metrics, n_eval, t_decode - pc.t_start, cached);

    /* ---- decode ---- */
    srv_usage usage = {.prompt_tokens = job->n_tokens, .cached_tokens = cached};
    srv_emit_begin(em, &usage);
    srv_turn *turn = srv_turn_new(req, em);
    srv_finish finish = SRV_FINISH_LENGTH;
    const char *error = NULL;
    int generated = 0;
    ds4_detok detok;
    if (ds4_detok_init(&detok, c->tok, &err)) {
        finish = SRV_FINISH_ERROR;
        error = err.msg;
    } else {
        const int32_t eos = ds4_tokenizer_specials(c->tok).eos;
        const int n_vocab = ds4_tokenizer_n_vocab(c->tok);
        ds4_sampler sampler = make_sampler(c, req, job->seq);
        int n_forced = 0, forced_index = 0; /* --force-output: the reply's tokens replace sampling */
        const int32_t *forced = c->force ? srv_force_tokens(c->force, req, &n_forced, &forced_index) : NULL;
        if (forced) srv_trace(c, "--- trace: forced output %d (%d tokens) ---\n", forced_index, n_forced);
        int max_new = req->max_tokens >= 0 ? req->max_tokens : c->cfg.default_max_tokens;
        float *masked = req->ignore_eos ? ds4_xmalloc(sizeof(float) * (size_t)n_vocab) : NULL;
        /* MTP speculation: greedy requests whose every token is the argmax */
        const bool speculate = ds4_speculation_on(c->engine, c->cfg.mtp_draft, sampler.temperature) && !forced &&
                               !masked;
        int32_t ahead = -1;     /* the token after the last one, evaluated by the same speculative step */
        bool evaluated = false; /* the token in hand is `ahead`'s */
        while (generated < max_new) {
            if (atomic_load(&job->cancelled) || atomic_load(&c->stopping)) {
                finish = SRV_FINISH_ERROR;
                error = atomic_load(&c->stopping) ? "shutdown requested" : "client disconnected";
                break;
            }
            /* ignore_eos: EOS can never win */
            const int32_t skip = masked && eos >= 0 && eos < n_vocab ? eos : -1;
            int32_t tok;
            evaluated = ahead >= 0;
            if (evaluated) {
                tok = ahead;
                ahead = -1;
            } else if (forced) {
                tok = generated < n_forced ? forced[generated] : eos;
            } else if (srv_turn_greedy(turn)) {
                tok = ds4_session_argmax(s, skip); /* with CUDA the logits stay on the device */
            } else {
                const float *logits = ds4_session_logits(s);
                if (skip >= 0) {
                    memcpy(masked, logits, sizeof(float) * (size_t)n_vocab);
                    masked[skip] = -INFINITY;
                    logits = masked;
                }
                tok = ds4_sample(&sampler, logits, n_vocab);
            }
            if (tok == eos) {
                finish = SRV_FINISH_STOP;
                break;
            }
            generated++;
            const char *bytes;
            size_t nb;
            if (ds4_detok_feed(&detok, tok, &bytes, &nb, &err) == 0) srv_turn_text(turn, bytes, nb);
            if (srv_turn_stop_hit(turn)) {
                finish = SRV_FINISH_STOP;
                break;
            }
            if (srv_turn_calls_closed(turn)) {
                finish = SRV_FINISH_TOOL_CALLS;
                break;
            }
            if (generated >= max_new) break; /* length */
            if (evaluated) { /* already in the session */
                evaluated = false;
                /* plain decoding would pass a decode point with the session
                 * just before it: a continued save due there (an exact
                 * frontier, server-spec §5) takes it back and evaluates it again */
                if (srv_turn_in_tool_block(turn) || !srv_cache_decode_point_due(c, ds4_session_n_tokens(s) - 1)) continue;
                ds4_session_drop_draft(s);
            }
            if (ds4_session_n_tokens(s) + 1 > c->ctx_size) break; /* length */
            if (!srv_turn_in_tool_block(turn)) srv_cache_decode_point(c, s);
            int32_t out[2];
            int rc_eval = speculate ? ds4_session_eval_speculative(s, tok, max_new - generated + 1, &c->cfg.spec, out, &err)
                                    : ds4_session_eval(s, &tok, 1, NULL, NULL, &err);
            if (speculate && rc_eval == 2) ahead = out[1];
            if (rc_eval < 0) {
                finish = SRV_FINISH_ERROR;
                error = err.msg;
                break;
            }
        }
        /* a stop on a token evaluated ahead (or one left unread): the session keeps what plain decoding would */
        if (evaluated || ahead >= 0) ds4_session_drop_draft(s);
        free(masked);
        size_t tail_n;
        const char *tail = ds4_detok_flush(&detok, &tail_n);
        srv_turn_text(turn, tail, tail_n);
        ds4_detok_free(&detok);
    }
    srv_metrics_decode(c->metrics, generated, ds4_now() - t_decode);

    srv_result res = {0};
    srv_turn_finish(turn, finish, error, &res);
    res.usage = usage;
    res.usage.completion_tokens = generated;
    if (res.raw_dsml && c->toolmem) {
        const char **ids = ds4_xcalloc((size_t)res.n_calls, sizeof *ids);
        for (int i = 0; i < res.n_calls; i++) ids[i] = res.calls[i].id;
        srv_toolmem_remember(c->toolmem, ids, res.n_calls, res.raw_dsml, strlen(res.raw_dsml));
        free(ids);
    }
    srv_emit_finish(em, &res);
    if (res.finish == SRV_FINISH_STOP && !srv_turn_stop_hit(turn) && !error && req->think != SRV_THINK_NONE &&
        res.reasoning_closed && res.n_calls == 0 && !req->has_tools) {
        c->live_visible = srv_render_continuation(c, req, res.reasoning, res.content);
        c->live_visible_pos = ds4_session_n_tokens(s);
    }
    srv_log("request %lu finish=%s%s%s%s tokens=%d calls=%d", job->seq, srv_finish_name(res.finish),
            res.error ? " error=\"" : "", res.error ? res.error : "", res.error ? "\"" : "", generated, res.n_calls);
    trace_result(c, job, &res, srv_turn_generated(turn), ds4_now() - pc.t_start);
    if (atomic_load(&job->cancelled)) srv_metrics_cancelled(c->metrics);
    srv_result_free(&res);
    srv_turn_free(turn);
    srv_emitter_free(em);
}
