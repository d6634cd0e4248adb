/* emit_openai.c — OpenAI chat-completions and completions output, streamed
 * (server-spec §2.12, §2.13) and final (§2.9).
 *
 * Chat chunks carry reasoning as delta.reasoning_content, text as
 * delta.content, and tool calls live: a header delta with id, name and
 * empty arguments once the invoke tag is complete, then argument fragments.
 * Calls that could not be streamed go out whole in one chunk at the finish.
 * The usage chunk (choices: []) is sent only when stream_options asks for
 * it; the stream ends with "data: [DONE]". */
#include <stdlib.h>
#include <string.h>

#include "emit.h"

static json_t *chunk(srv_emitter *em, const char *object, json_t *choice) {
    return json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", em->id, "object", object, "created",
                     (json_int_t)em->created, "model", em->req->model, "choices", choice);
}

static void chat_delta(srv_emitter *em, json_t *delta) {
    json_t *choice = json_pack("{s:i,s:o,s:n}", "index", 0, "delta", delta, "finish_reason");
    emit_sse(em, NULL, chunk(em, "chat.completion.chunk", choice));
}

static json_t *call_json(const srv_tool_call *c, int index, bool with_index) {
    char *args = emit_compact_arguments(c->arguments);
    json_t *v = json_pack("{s:s,s:s,s:{s:s,s:s}}", "id", c->id, "type", "function", "function",
                          "name", c->name, "arguments", args);
    if (with_index) json_object_set_new(v, "index", json_integer(index));
    free(args);
    return v;
}

static void chat_begin(srv_emitter *em, const srv_usage *u) {
    chat_delta(em, json_pack("{s:s}", "role", "assistant"));
}

static void chat_reasoning(srv_emitter *em, const char *s, size_t n) {
    chat_delta(em, json_pack("{s:s%}", "reasoning_content", s, n));
}

static void chat_content(srv_emitter *em, const char *s, size_t n) {
    chat_delta(em, json_pack("{s:s%}", "content", s, n));
}

static void chat_tool_begin(srv_emitter *em, int index, const char *id, const char *name) {
    chat_delta(em, json_pack("{s:[{s:i,s:s,s:s,s:{s:s,s:s}}]}", "tool_calls", "index", index, "id",
                             id, "type", "function", "function", "name", name, "arguments", ""));
}

static void chat_tool_args(srv_emitter *em, int index, const char *s, size_t n) {
    chat_delta(em, json_pack("{s:[{s:i,s:{s:s%}}]}", "tool_calls", "index", index, "function",
                             "arguments", s, n));
}

static void stream_usage_and_done(srv_emitter *em, const char *object, const srv_result *res) {
    if (em->req->include_usage) {
        json_t *v = json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", em->id, "object", object,
                              "created", (json_int_t)em->created, "model", em->req->model,
                              "choices", "usage", emit_openai_usage(&res->usage));
        emit_sse(em, NULL, v);
    }
    emit_raw(em, "data: [DONE]\n\n", 14);
}

static void chat_finish(srv_emitter *em, const srv_result *res) {
    if (res->n_calls > em->n_live_calls) {
        json_t *calls = json_array();
        for (int i = em->n_live_calls; i < res->n_calls; i++)
            json_array_append_new(calls, call_json(&res->calls[i], i, true));
        chat_delta(em, json_pack("{s:o}", "tool_calls", calls));
    }
    json_t *choice = json_pack("{s:i,s:{},s:s}", "index", 0, "delta", "finish_reason",
                               srv_finish_name(res->finish));
    emit_sse(em, NULL, chunk(em, "chat.completion.chunk", choice));
    stream_usage_and_done(em, "chat.completion.chunk", res);
}

static void openai_error(srv_emitter *em, const char *message) {
    emit_sse(em, "error", json_pack("{s:{s:s,s:s}}", "error", "message", message, "type", "server_error"));
}

static void chat_final(srv_emitter *em, const srv_result *res) {
    json_t *msg = json_pack("{s:s,s:s}", "role", "assistant", "content", res->content ? res->content : "");
    if (res->reasoning && *res->reasoning)
        json_object_set_new(msg, "reasoning_content", json_string(res->reasoning));
    if (res->n_calls) {
        json_t *calls = json_array();
        for (int i = 0; i < res->n_calls; i++) json_array_append_new(calls, call_json(&res->calls[i], i, false));
        json_object_set_new(msg, "tool_calls", calls);
    }
    json_t *choice = json_pack("{s:i,s:o,s:s}", "index", 0, "message", msg, "finish_reason",
                               srv_finish_name(res->finish));
    json_t *v = json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o}", "id", em->id, "object", "chat.completion",
                          "created", (json_int_t)em->created, "model", em->req->model, "choices",
                          choice, "usage", emit_openai_usage(&res->usage));
    emit_body(em, v);
}

static void completion_content(srv_emitter *em, const char *s, size_t n) {
    json_t *choice = json_pack("{s:s%,s:i,s:n}", "text", s, n, "index", 0, "finish_reason");
    emit_sse(em, NULL, chunk(em, "text_completion", choice));
}

static void completion_finish(srv_emitter *em, const srv_result *res) {
    json_t *choice = json_pack("{s:s,s:i,s:s}", "text", "", "index", 0, "finish_reason",
                               srv_finish_name(res->finish));
    emit_sse(em, NULL, chunk(em, "text_completion", choice));
    stream_usage_and_done(em, "text_completion", res);
}

static void completion_final(srv_emitter *em, const srv_result *res) {
    json_t *choice = json_pack("{s:s,s:i,s:n,s:s}", "text", res->content ? res->content : "", "index",
                               0, "logprobs", "finish_reason", srv_finish_name(res->finish));
    json_t *v = json_pack("{s:s,s:s,s:I,s:s,s:[o],s:o}", "id", em->id, "object", "text_completion",
                          "created", (json_int_t)em->created, "model", em->req->model, "choices",
                          choice, "usage", emit_openai_usage(&res->usage));
    emit_body(em, v);
}

const srv_emit_ops srv_emit_chat_ops = {
    .begin = chat_begin,
    .reasoning = chat_reasoning,
    .content = chat_content,
    .tool_begin = chat_tool_begin,
    .tool_args = chat_tool_args,
    .finish = chat_finish,
    .error = openai_error,
};

const srv_emit_ops srv_emit_chat_final_ops = {.finish = chat_final};

const srv_emit_ops srv_emit_completions_ops = {
    .content = completion_content,
    .finish = completion_finish,
    .error = openai_error,
};

const srv_emit_ops srv_emit_completions_final_ops = {.finish = completion_final};
