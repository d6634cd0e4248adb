/* emit_responses.c — OpenAI Responses output, streamed (server-spec §2.15)
 * and final (§2.9).
 *
 * Events are "data: <json>" lines (no event: line, no [DONE]), each with a
 * sequence_number right after its type. Reasoning is shown only when the
 * request opted in with reasoning.summary; its item stays open while the
 * message streams and is closed at the finish, followed by the message's
 * done events, one item per function call (arguments in one delta: tool
 * arguments are not streamed for this API) and the terminal
 * response.completed / response.incomplete / response.failed carrying the
 * whole response object. output_index follows first appearance. */
#include <stdlib.h>
#include <string.h>

#include "emit.h"

static void event(srv_emitter *em, const char *type, json_t *fields) {
    json_t *o = json_pack("{s:s,s:i}", "type", type, "sequence_number", em->seq++);
    json_object_update(o, fields);
    json_decref(fields);
    emit_sse(em, NULL, o);
}

static const char *item_status(const srv_result *res) {
    return res->finish == SRV_FINISH_LENGTH || res->finish == SRV_FINISH_ERROR ? "incomplete" : "completed";
}

static json_t *usage_json(const srv_usage *u) {
    return json_pack("{s:i,s:{s:i,s:i},s:i,s:{s:i},s:i}", "input_tokens", u->prompt_tokens,
                     "input_tokens_details", "cached_tokens", u->cached_tokens, "cache_write_tokens",
                     u->prompt_tokens - u->cached_tokens, "output_tokens", u->completion_tokens,
                     "output_tokens_details", "reasoning_tokens", 0, "total_tokens",
                     u->prompt_tokens + u->completion_tokens);
}

static json_t *reasoning_item(const char *id, const char *status, const char *text) {
    json_t *summary = json_array();
    if (text) json_array_append_new(summary, json_pack("{s:s,s:s}", "type", "summary_text", "text", text));
    return json_pack("{s:s,s:s,s:s,s:o}", "id", id, "type", "reasoning", "status", status, "summary", summary);
}

static json_t *message_item(const char *id, const char *status, const char *text) {
    json_t *content = json_array();
    if (text)
        json_array_append_new(content, json_pack("{s:s,s:s,s:[]}", "type", "output_text", "text", text, "annotations"));
    return json_pack("{s:s,s:s,s:s,s:s,s:o}", "id", id, "type", "message", "status", status, "role",
                     "assistant", "content", content);
}

/* A function call item; namespaced tools go out under their wire name. */
static json_t *call_item(const srv_request *req, const srv_tool_call *c, const char *fc_id,
                         const char *status, const char *arguments) {
    if (!strcmp(c->name, "tool_search"))
        return json_pack("{s:s,s:s,s:s,s:s,s:s,s:o}", "id", fc_id, "type", "tool_search_call", "status", status,
                         "call_id", c->id, "execution", "client", "arguments",
                         emit_arguments_object(c->arguments));
    const char *name = c->name, *ns = NULL;
    for (int i = 0; i < req->n_tool_names; i++)
        if (!strcmp(req->tool_names[i].flat, c->name)) name = req->tool_names[i].name, ns = req->tool_names[i].ns;
    json_t *v = json_pack("{s:s,s:s,s:s,s:s}", "id", fc_id, "type", "function_call", "status", status, "name", name);
    if (ns) json_object_set_new(v, "namespace", json_string(ns));
    json_object_set_new(v, "call_id", json_string(c->id));
    json_object_set_new(v, "arguments", json_string(arguments));
    return v;
}

static json_t *response_object(srv_emitter *em, const char *status, json_t *output, const srv_result *res) {
    json_t *v = json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", em->id, "object", "response", "created_at",
                          (json_int_t)em->created, "status", status, "model", em->req->model);
    if (res && res->finish == SRV_FINISH_ERROR)
        json_object_set_new(v, "error", json_pack("{s:s,s:s}", "code", "server_error", "message", "generation failed"));
    if (res && res->finish == SRV_FINISH_LENGTH)
        json_object_set_new(v, "incomplete_details", json_pack("{s:s}", "reason", "max_tokens"));
    json_object_set_new(v, "output", output);
    if (res) json_object_set_new(v, "usage", usage_json(&res->usage));
    return v;
}

static const char *response_status(const srv_result *res) {
    if (res->finish == SRV_FINISH_ERROR) return "failed";
    if (res->finish == SRV_FINISH_LENGTH) return "incomplete";
    return "completed";
}

static void r_begin(srv_emitter *em, const srv_usage *u) {
    event(em, "response.created", json_pack("{s:o}", "response", response_object(em, "in_progress", json_array(), NULL)));
}

static void r_reasoning(srv_emitter *em, const char *s, size_t n) {
    if (!em->req->reasoning_summary) return;
    if (em->rs_index < 0) {
        em->rs_index = em->next_output_index++;
        em->rs_id = srv_random_id("rs_", 24);
        event(em, "response.output_item.added",
              json_pack("{s:i,s:o}", "output_index", em->rs_index, "item", reasoning_item(em->rs_id, "in_progress", NULL)));
        event(em, "response.reasoning_summary_part.added",
              json_pack("{s:s,s:i,s:i,s:{s:s,s:s}}", "item_id", em->rs_id, "output_index", em->rs_index,
                        "summary_index", 0, "part", "type", "summary_text", "text", ""));
    }
    event(em, "response.reasoning_summary_text.delta",
          json_pack("{s:s,s:i,s:i,s:s%}", "item_id", em->rs_id, "output_index", em->rs_index, "summary_index", 0,
                    "delta", s, n));
}

static void open_message(srv_emitter *em) {
    if (em->msg_index >= 0) return;
    em->msg_index = em->next_output_index++;
    em->msg_id = srv_random_id("msg_", 24);
    event(em, "response.output_item.added",
          json_pack("{s:i,s:o}", "output_index", em->msg_index, "item", message_item(em->msg_id, "in_progress", NULL)));
    event(em, "response.content_part.added",
          json_pack("{s:s,s:i,s:i,s:{s:s,s:s,s:[]}}", "item_id", em->msg_id, "output_index", em->msg_index,
                    "content_index", 0, "part", "type", "output_text", "text", "", "annotations"));
}

static void r_content(srv_emitter *em, const char *s, size_t n) {
    open_message(em);
    event(em, "response.output_text.delta",
          json_pack("{s:s,s:i,s:i,s:s%}", "item_id", em->msg_id, "output_index", em->msg_index, "content_index", 0,
                    "delta", s, n));
}

static void r_finish(srv_emitter *em, const srv_result *res) {
    const char *st = item_status(res);
    json_t *output = json_array();
    if (em->rs_index >= 0) {
        const char *text = em->reasoning.p ? em->reasoning.p : "";
        const char *rs_status = res->reasoning_closed ? "completed" : "incomplete";
        event(em, "response.reasoning_summary_text.done",
              json_pack("{s:s,s:i,s:i,s:s}", "item_id", em->rs_id, "output_index", em->rs_index, "summary_index", 0,
                        "text", text));
        event(em, "response.reasoning_summary_part.done",
              json_pack("{s:s,s:i,s:i,s:{s:s,s:s}}", "item_id", em->rs_id, "output_index", em->rs_index,
                        "summary_index", 0, "part", "type", "summary_text", "text", text));
        json_t *item = reasoning_item(em->rs_id, rs_status, text);
        json_array_append(output, item);
        event(em, "response.output_item.done", json_pack("{s:i,s:o}", "output_index", em->rs_index, "item", item));
    }
    if (em->msg_index >= 0) {
        const char *text = em->content.p ? em->content.p : "";
        event(em, "response.output_text.done",
              json_pack("{s:s,s:i,s:i,s:s}", "item_id", em->msg_id, "output_index", em->msg_index, "content_index", 0,
                        "text", text));
        event(em, "response.content_part.done",
              json_pack("{s:s,s:i,s:i,s:{s:s,s:s,s:[]}}", "item_id", em->msg_id, "output_index", em->msg_index,
                        "content_index", 0, "part", "type", "output_text", "text", text, "annotations"));
        json_t *item = message_item(em->msg_id, st, text);
        json_array_append(output, item);
        event(em, "response.output_item.done", json_pack("{s:i,s:o}", "output_index", em->msg_index, "item", item));
    }
    for (int i = 0; i < res->n_calls; i++) {
        const srv_tool_call *c = &res->calls[i];
        int oi = em->next_output_index++;
        char *fc_id = srv_random_id("fc_", 24);
        char *args = emit_compact_arguments(c->arguments);
        event(em, "response.output_item.added",
              json_pack("{s:i,s:o}", "output_index", oi, "item", call_item(em->req, c, fc_id, "in_progress", "")));
        if (strcmp(c->name, "tool_search")) {
            event(em, "response.function_call_arguments.delta",
                  json_pack("{s:s,s:i,s:s}", "item_id", fc_id, "output_index", oi, "delta", args));
            json_t *done = call_item(em->req, c, fc_id, st, args);
            json_t *fields = json_pack("{s:s,s:i,s:O}", "item_id", fc_id, "output_index", oi, "name",
                                       json_object_get(done, "name"));
            if (json_object_get(done, "namespace"))
                json_object_set(fields, "namespace", json_object_get(done, "namespace"));
            json_object_set_new(fields, "arguments", json_string(args));
            event(em, "response.function_call_arguments.done", fields);
            json_decref(done);
        }
        json_t *item = call_item(em->req, c, fc_id, "completed", args);
        json_array_append(output, item);
        event(em, "response.output_item.done", json_pack("{s:i,s:o}", "output_index", oi, "item", item));
        free(args);
        free(fc_id);
    }
    const char *terminal = res->finish == SRV_FINISH_ERROR    ? "response.failed"
                           : res->finish == SRV_FINISH_LENGTH ? "response.incomplete"
                                                              : "response.completed";
    event(em, terminal, json_pack("{s:o}", "response", response_object(em, response_status(res), output, res)));
}

static void r_error(srv_emitter *em, const char *message) {
    emit_sse(em, "error", json_pack("{s:{s:s,s:s}}", "error", "message", message, "type", "server_error"));
}

static void r_final(srv_emitter *em, const srv_result *res) {
    const char *st = item_status(res);
    json_t *output = json_array();
    if (em->req->reasoning_summary && res->reasoning && *res->reasoning) {
        char *id = srv_random_id("rs_", 24);
        json_array_append_new(output, reasoning_item(id, res->reasoning_closed ? "completed" : "incomplete", res->reasoning));
        free(id);
    }
    if (res->content && *res->content) {
        char *id = srv_random_id("msg_", 24);
        json_array_append_new(output, message_item(id, st, res->content));
        free(id);
    }
    for (int i = 0; i < res->n_calls; i++) {
        char *fc_id = srv_random_id("fc_", 24);
        char *args = emit_compact_arguments(res->calls[i].arguments);
        json_array_append_new(output, call_item(em->req, &res->calls[i], fc_id, "completed", args));
        free(args);
        free(fc_id);
    }
    emit_body(em, response_object(em, response_status(res), output, res));
}

const srv_emit_ops srv_emit_responses_ops = {
    .begin = r_begin,
    .reasoning = r_reasoning,
    .content = r_content,
    .finish = r_finish,
    .error = r_error,
};

const srv_emit_ops srv_emit_responses_final_ops = {.finish = r_final};
