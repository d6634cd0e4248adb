/* emit_anthropic.c — Anthropic Messages output, streamed (server-spec §2.14)
 * and final (§2.9).
 *
 * The stream is message_start, then content blocks with increasing
 * indexes — thinking (closed by a signature_delta equal to the message id),
 * text, tool_use with input_json_delta fragments — then message_delta with
 * the stop reason and message_stop. A response with thinking but neither
 * text nor tools gets an empty text block, as clients expect one. Usage
 * follows ds4: cache_read = reused tokens, cache_creation = prefilled
 * tokens, input_tokens = the rest (0). */
#include <stdlib.h>
#include <string.h>

#include "emit.h"

static const char *stop_reason(srv_finish f) {
    if (f == SRV_FINISH_TOOL_CALLS) return "tool_use";
    if (f == SRV_FINISH_LENGTH) return "max_tokens";
    return "end_turn";
}

static json_t *usage_json(const srv_usage *u, int output_tokens) {
    int written = u->prompt_tokens - u->cached_tokens;
    return json_pack("{s:i,s:i,s:i,s:i}", "input_tokens", u->prompt_tokens - u->cached_tokens - written,
                     "output_tokens", output_tokens, "cache_read_input_tokens", u->cached_tokens,
                     "cache_creation_input_tokens", written);
}

/* One SSE event whose JSON starts with "type", as Anthropic sends it. */
static void event(srv_emitter *em, const char *type, json_t *fields) {
    json_t *o = json_pack("{s:s}", "type", type);
    json_object_update(o, fields);
    json_decref(fields);
    emit_sse(em, type, o);
}

static void block_start(srv_emitter *em, emit_block kind, json_t *block) {
    em->open_block = kind;
    event(em, "content_block_start", json_pack("{s:i,s:o}", "index", em->block_index, "content_block", block));
}

static void block_delta(srv_emitter *em, json_t *delta) {
    event(em, "content_block_delta", json_pack("{s:i,s:o}", "index", em->block_index, "delta", delta));
}

static void close_block(srv_emitter *em) {
    if (em->open_block == BLOCK_NONE) return;
    if (em->open_block == BLOCK_THINKING)
        block_delta(em, json_pack("{s:s,s:s}", "type", "signature_delta", "signature", em->id));
    event(em, "content_block_stop", json_pack("{s:i}", "index", em->block_index));
    em->block_index++;
    em->open_block = BLOCK_NONE;
}

static void a_begin(srv_emitter *em, const srv_usage *u) {
    json_t *msg = json_pack("{s:s,s:s,s:s,s:s,s:[],s:n,s:n,s:o}", "id", em->id, "type", "message",
                            "role", "assistant", "model", em->req->model, "content", "stop_reason",
                            "stop_sequence", "usage", usage_json(u, 0));
    event(em, "message_start", json_pack("{s:o}", "message", msg));
}

static void a_reasoning(srv_emitter *em, const char *s, size_t n) {
    if (em->open_block != BLOCK_THINKING) {
        close_block(em);
        block_start(em, BLOCK_THINKING, json_pack("{s:s,s:s,s:s}", "type", "thinking", "thinking", "", "signature", ""));
        em->had_thinking = true;
    }
    block_delta(em, json_pack("{s:s,s:s%}", "type", "thinking_delta", "thinking", s, n));
}

static void a_content(srv_emitter *em, const char *s, size_t n) {
    if (em->open_block != BLOCK_TEXT) {
        close_block(em);
        block_start(em, BLOCK_TEXT, json_pack("{s:s,s:s}", "type", "text", "text", ""));
        em->had_text = true;
    }
    block_delta(em, json_pack("{s:s,s:s%}", "type", "text_delta", "text", s, n));
}

static void a_tool_begin(srv_emitter *em, int index, const char *id, const char *name) {
    close_block(em);
    block_start(em, BLOCK_TOOL, json_pack("{s:s,s:s,s:s,s:{}}", "type", "tool_use", "id", id, "name", name, "input"));
}

static void a_tool_args(srv_emitter *em, int index, const char *s, size_t n) {
    if (em->open_block == BLOCK_TOOL)
        block_delta(em, json_pack("{s:s,s:s%}", "type", "input_json_delta", "partial_json", s, n));
}

static void a_tool_end(srv_emitter *em, int index) {
    if (em->open_block == BLOCK_TOOL) close_block(em);
}

static void a_finish(srv_emitter *em, const srv_result *res) {
    close_block(em);
    for (int i = em->n_live_calls; i < res->n_calls; i++) {
        const srv_tool_call *c = &res->calls[i];
        a_tool_begin(em, i, c->id, c->name);
        char *args = emit_compact_arguments(c->arguments);
        a_tool_args(em, i, args, strlen(args));
        free(args);
        close_block(em);
    }
    if (em->had_thinking && !em->had_text && res->n_calls == 0) {
        block_start(em, BLOCK_TEXT, json_pack("{s:s,s:s}", "type", "text", "text", ""));
        close_block(em);
    }
    json_t *u = json_pack("{s:i}", "output_tokens", res->usage.completion_tokens);
    event(em, "message_delta", json_pack("{s:{s:s,s:n},s:o}", "delta", "stop_reason",
                                         stop_reason(res->finish), "stop_sequence", "usage", u));
    event(em, "message_stop", json_object());
}

static void a_error(srv_emitter *em, const char *message) {
    emit_sse(em, "error", json_pack("{s:s,s:{s:s,s:s}}", "type", "error", "error", "type", "api_error", "message", message));
}

static void a_final(srv_emitter *em, const srv_result *res) {
    json_t *content = json_array();
    if (res->reasoning && *res->reasoning)
        json_array_append_new(content, json_pack("{s:s,s:s,s:s}", "type", "thinking", "thinking",
                                                 res->reasoning, "signature", em->id));
    if (res->content && *res->content)
        json_array_append_new(content, json_pack("{s:s,s:s}", "type", "text", "text", res->content));
    for (int i = 0; i < res->n_calls; i++)
        json_array_append_new(content, json_pack("{s:s,s:s,s:s,s:o}", "type", "tool_use", "id", res->calls[i].id,
                                                 "name", res->calls[i].name, "input",
                                                 emit_arguments_object(res->calls[i].arguments)));
    if (!(res->content && *res->content) && res->n_calls == 0)
        json_array_append_new(content, json_pack("{s:s,s:s}", "type", "text", "text", ""));
    json_t *v = json_pack("{s:s,s:s,s:s,s:s,s:o,s:s,s:n,s:o}", "id", em->id, "type", "message", "role",
                          "assistant", "model", em->req->model, "content", content, "stop_reason",
                          stop_reason(res->finish), "stop_sequence", "usage",
                          usage_json(&res->usage, res->usage.completion_tokens));
    emit_body(em, v);
}

const srv_emit_ops srv_emit_anthropic_ops = {
    .begin = a_begin,
    .reasoning = a_reasoning,
    .content = a_content,
    .tool_begin = a_tool_begin,
    .tool_args = a_tool_args,
    .tool_end = a_tool_end,
    .finish = a_finish,
    .error = a_error,
};

const srv_emit_ops srv_emit_anthropic_final_ops = {.finish = a_final};
