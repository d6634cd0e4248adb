/* emit.c — the protocol-neutral half of the emitters: choosing the protocol
 * table, SSE framing, and the bookkeeping every protocol shares (text
 * streamed so far, calls already streamed live).
 *
 * The generation side calls srv_emit_*() in the order things happen; the
 * emitter for a non-streaming request ignores everything but the finish and
 * writes one JSON body there. Once a write fails the emitter goes quiet, and
 * the generation learns of it through its own cancellation check. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/xalloc.h"
#include "emit.h"

void emit_raw(srv_emitter *em, const char *s, size_t n) {
    if (em->failed || !n) return;
    if (em->write(em->write_ctx, s, n)) em->failed = true;
}

void emit_sse(srv_emitter *em, const char *event, json_t *v) {
    if (!v) { /* json_pack fails only on invalid UTF-8, which turn.c never lets through */
        fprintf(stderr, "ds4-server: internal error: an SSE event could not be built\n");
        return;
    }
    char *json = srv_json_dump(v);
    json_decref(v);
    ds4_buf b = {0};
    if (event) ds4_buf_addf(&b, "event: %s\n", event);
    ds4_buf_adds(&b, "data: ");
    ds4_buf_adds(&b, json);
    ds4_buf_adds(&b, "\n\n");
    emit_raw(em, b.p, b.len);
    ds4_buf_free(&b);
    free(json);
}

void emit_body(srv_emitter *em, json_t *v) {
    char *s = srv_json_line(v);
    emit_raw(em, s, strlen(s));
    free(s);
}

json_t *emit_openai_usage(const srv_usage *u) {
    return json_pack("{s:i,s:i,s:i,s:{s:i,s:i}}", "prompt_tokens", u->prompt_tokens,
                     "completion_tokens", u->completion_tokens, "total_tokens",
                     u->prompt_tokens + u->completion_tokens, "prompt_tokens_details",
                     "cached_tokens", u->cached_tokens, "cache_write_tokens",
                     u->prompt_tokens - u->cached_tokens);
}

char *emit_compact_arguments(const char *args) {
    json_t *v = json_loads(args ? args : "", JSON_DECODE_ANY, NULL);
    if (!v) return ds4_xstrdup(args ? args : "");
    char *s = srv_json_dump(v);
    json_decref(v);
    return s;
}

json_t *emit_arguments_object(const char *args) {
    json_t *v = json_loads(args ? args : "", 0, NULL);
    if (json_is_object(v)) return v;
    json_decref(v);
    return json_object();
}

srv_emitter *srv_emitter_new(const srv_request *req, const char *id, int64_t created,
                             srv_write_fn write, void *write_ctx) {
    srv_emitter *em = ds4_xcalloc(1, sizeof *em);
    em->req = req;
    em->id = ds4_xstrdup(id);
    em->created = created;
    em->write = write;
    em->write_ctx = write_ctx;
    em->rs_index = em->msg_index = -1;
    bool s = req->stream;
    switch (req->api) {
    case SRV_API_CHAT: em->ops = s ? &srv_emit_chat_ops : &srv_emit_chat_final_ops; break;
    case SRV_API_COMPLETIONS:
        em->ops = s ? &srv_emit_completions_ops : &srv_emit_completions_final_ops;
        break;
    case SRV_API_RESPONSES:
        em->ops = s ? &srv_emit_responses_ops : &srv_emit_responses_final_ops;
        break;
    default: em->ops = s ? &srv_emit_anthropic_ops : &srv_emit_anthropic_final_ops; break;
    }
    return em;
}

void srv_emitter_free(srv_emitter *em) {
    if (!em) return;
    free(em->id);
    free(em->rs_id);
    free(em->msg_id);
    ds4_buf_free(&em->reasoning);
    ds4_buf_free(&em->content);
    free(em);
}

void srv_emit_begin(srv_emitter *em, const srv_usage *u) {
    if (em->ops->begin) em->ops->begin(em, u);
}

void srv_emit_reasoning(srv_emitter *em, const char *s, size_t n) {
    if (!n) return;
    ds4_buf_add(&em->reasoning, s, n);
    if (em->ops->reasoning) em->ops->reasoning(em, s, n);
}

void srv_emit_content(srv_emitter *em, const char *s, size_t n) {
    if (!n) return;
    ds4_buf_add(&em->content, s, n);
    if (em->ops->content) em->ops->content(em, s, n);
}

void srv_emit_tool_begin(srv_emitter *em, int index, const char *id, const char *name) {
    if (index + 1 > em->n_live_calls) em->n_live_calls = index + 1;
    if (em->ops->tool_begin) em->ops->tool_begin(em, index, id, name);
}

void srv_emit_tool_args(srv_emitter *em, int index, const char *s, size_t n) {
    if (n && em->ops->tool_args) em->ops->tool_args(em, index, s, n);
}

void srv_emit_tool_end(srv_emitter *em, int index) {
    if (em->ops->tool_end) em->ops->tool_end(em, index);
}

void srv_emit_finish(srv_emitter *em, const srv_result *res) {
    /* A tail of the final content that was never streamed (e.g. a tool block
     * that failed to parse and became text) is sent before the finish. */
    if (em->req->stream && res->content && em->content.len < strlen(res->content) &&
        !strncmp(res->content, em->content.p ? em->content.p : "", em->content.len)) {
        const char *tail = res->content + em->content.len;
        srv_emit_content(em, tail, strlen(tail));
    }
    em->ops->finish(em, res);
}

void srv_emit_error(srv_emitter *em, const char *message) {
    if (em->ops->error) em->ops->error(em, message);
}
