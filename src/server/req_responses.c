/* req_responses.c — POST /v1/responses requests (server-spec §2.7) into a
 * srv_request.
 *
 * The input is a list of typed items (messages, function calls and their
 * outputs, reasoning). Reasoning items are held until the next assistant
 * message or tool call and attached to it; a user or tool item arriving
 * first flushes them as an empty assistant message, as ds4 does. Function
 * calls following an assistant message join it, so one assistant turn with
 * text and calls renders as one turn. Namespaced tools are flattened to
 * NS+name for the prompt and remembered so output items carry the wire name
 * and namespace again. The server keeps no response store: previous_response_id
 * and conversation are refused, the client replays the full input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/xalloc.h"
#include "req.h"

typedef struct input_state {
    ds4_buf reasoning;  /* pending reasoning text */
    int open_assistant; /* index of the assistant message calls may join, -1 none */
} input_state;

static bool is_text_part(const char *t) {
    return !strcmp(t, "input_text") || !strcmp(t, "output_text") || !strcmp(t, "text") ||
           !strcmp(t, "summary_text") || !strcmp(t, "reasoning_text");
}

/* Text of a content value: string | null | [text parts]. */
static int item_text(json_t *c, const char *where, ds4_buf *out, srv_error *err) {
    if (!c || json_is_null(c)) return 0;
    if (json_is_string(c)) {
        ds4_buf_add(out, json_string_value(c), json_string_length(c));
        return 0;
    }
    if (!json_is_array(c))
        return srv_error_set(err, 400, "'%s' must be a string, null or an array of text parts", where);
    size_t i;
    json_t *p;
    json_array_foreach(c, i, p) {
        json_t *type = json_object_get(p, "type"), *text = json_object_get(p, "text");
        const char *t = json_is_string(type) ? json_string_value(type) : "(none)";
        if (!json_is_object(p) || !is_text_part(t))
            return srv_error_set(err, 400,
                                 "'%s[%zu]': content part type '%s' is not supported (this model "
                                 "reads text only)",
                                 where, i, t);
        if (!json_is_string(text)) return srv_error_set(err, 400, "'%s[%zu].text' must be a string", where, i);
        ds4_buf_add(out, json_string_value(text), json_string_length(text));
    }
    return 0;
}

static bool id_seen(const srv_request *r, const char *id) {
    for (int i = 0; i < r->n_msgs; i++)
        for (int j = 0; j < r->msgs[i].n_calls; j++)
            if (!strcmp(r->msgs[i].calls[j].id, id)) return true;
    return false;
}

static void flush_reasoning(srv_request *r, input_state *st) {
    if (!st->reasoning.len) return;
    srv_message *m = req_add_message(r, SRV_ROLE_ASSISTANT, NULL);
    m->reasoning = ds4_buf_take(&st->reasoning);
    st->open_assistant = -1;
}

/* The assistant message a tool call joins (a new one if none is open). */
static srv_message *assistant_for_call(srv_request *r, input_state *st) {
    if (st->open_assistant < 0) {
        req_add_message(r, SRV_ROLE_ASSISTANT, NULL);
        st->open_assistant = r->n_msgs - 1;
    }
    srv_message *m = &r->msgs[st->open_assistant];
    if (st->reasoning.len) {
        ds4_buf b = {0};
        if (m->reasoning) ds4_buf_adds(&b, m->reasoning);
        ds4_buf_add(&b, st->reasoning.p, st->reasoning.len);
        free(m->reasoning);
        m->reasoning = ds4_buf_take(&b);
        ds4_buf_free(&st->reasoning);
    }
    return m;
}

static int add_call_item(json_t *it, const char *type, const char *where, srv_request *r,
                         input_state *st, srv_error *err) {
    json_t *id = json_object_get(it, "call_id");
    if (!json_is_string(id)) id = json_object_get(it, "id");
    const char *name;
    char *args;
    if (!strcmp(type, "function_call") || !strcmp(type, "custom_tool_call")) {
        json_t *nm = json_object_get(it, "name"), *ns = json_object_get(it, "namespace");
        if (!json_is_string(nm) || !json_string_length(nm))
            return srv_error_set(err, 400, "'%s.name' must be a non-empty string", where);
        ds4_buf full = {0};
        if (json_is_string(ns)) ds4_buf_adds(&full, json_string_value(ns));
        ds4_buf_adds(&full, json_string_value(nm));
        json_t *a = json_object_get(it, !strcmp(type, "function_call") ? "arguments" : "input");
        if (!strcmp(type, "custom_tool_call") && json_is_string(a)) {
            json_t *wrapped = json_pack("{s:O}", "input", a);
            args = srv_json_dump(wrapped);
            json_decref(wrapped);
        } else {
            args = req_arguments_text(a);
        }
        srv_message *m = assistant_for_call(r, st);
        req_add_call(m, json_is_string(id) ? ds4_xstrdup(json_string_value(id)) : NULL,
                     ds4_buf_take(&full), args);
        return 0;
    }
    /* built-in client-executed calls: local_shell, web_search, tool_search, image_generation */
    if (!strcmp(type, "local_shell_call")) name = "local_shell";
    else if (!strcmp(type, "tool_search_call")) name = "tool_search";
    else name = type;
    json_t *a = json_object_get(it, "action");
    if (!a) a = json_object_get(it, "arguments");
    if (!a) a = json_object_get(it, "input");
    args = req_arguments_text(a);
    srv_message *m = assistant_for_call(r, st);
    req_add_call(m, json_is_string(id) ? ds4_xstrdup(json_string_value(id)) : NULL, ds4_xstrdup(name),
                 args);
    return 0;
}

static int parse_tool_list(json_t *tools, const char *where, srv_request *r, srv_error *err);

static int add_output_item(json_t *it, const char *type, const char *where, srv_request *r,
                           input_state *st, srv_error *err) {
    json_t *id = json_object_get(it, "call_id");
    if (!json_is_string(id)) id = json_object_get(it, "id");
    if (!json_is_string(id)) return srv_error_set(err, 400, "'%s.call_id' must be a string", where);
    if (!id_seen(r, json_string_value(id)))
        return srv_error_set(err, 400,
                             "Responses continuation state is not available for call_id %s; retry "
                             "by replaying the full input history",
                             json_string_value(id));
    flush_reasoning(r, st);
    st->open_assistant = -1;
    ds4_buf text = {0};
    json_t *out = json_object_get(it, "output");
    if (!strcmp(type, "tool_search_output")) {
        json_t *tools = json_object_get(it, "tools");
        if (tools && parse_tool_list(tools, where, r, err)) return -1;
        if (!out) out = tools;
    }
    if (json_is_string(out) || json_is_null(out) || !out) {
        if (json_is_string(out)) ds4_buf_add(&text, json_string_value(out), json_string_length(out));
    } else if (json_is_array(out) && json_is_object(json_array_get(out, 0)) &&
               json_is_string(json_object_get(json_array_get(out, 0), "text"))) {
        char w[96];
        snprintf(w, sizeof w, "%s.output", where);
        if (item_text(out, w, &text, err)) {
            ds4_buf_free(&text);
            return -1;
        }
    } else {
        char *s = srv_json_dump(out);
        ds4_buf_adds(&text, s);
        free(s);
    }
    srv_message *m = req_add_message(r, SRV_ROLE_TOOL, ds4_buf_take(&text));
    m->tool_call_id = ds4_xstrdup(json_string_value(id));
    return 0;
}

static int parse_item(json_t *it, size_t i, srv_request *r, input_state *st, srv_error *err) {
    char where[48];
    snprintf(where, sizeof where, "input[%zu]", i);
    if (!json_is_object(it)) return srv_error_set(err, 400, "'%s' must be an object", where);
    json_t *type_v = json_object_get(it, "type"), *status = json_object_get(it, "status");
    if (type_v && !json_is_string(type_v)) return srv_error_set(err, 400, "'%s.type' must be a string", where);
    const char *type = type_v ? json_string_value(type_v) : "message";
    if (status && !json_is_null(status) &&
        (!json_is_string(status) || strcmp(json_string_value(status), "completed")))
        return srv_error_set(err, 400, "'%s.status' must be \"completed\" for replayed items", where);
    size_t tl = strlen(type);
    if (!strcmp(type, "message")) {
        json_t *role_v = json_object_get(it, "role");
        const char *role = json_is_string(role_v) ? json_string_value(role_v) : "user";
        srv_role rl;
        if (!strcmp(role, "user")) rl = SRV_ROLE_USER;
        else if (!strcmp(role, "assistant")) rl = SRV_ROLE_ASSISTANT;
        else if (!strcmp(role, "system")) rl = SRV_ROLE_SYSTEM;
        else if (!strcmp(role, "developer")) rl = SRV_ROLE_DEVELOPER;
        else
            return srv_error_set(err, 400,
                                 "'%s.role' '%s' is unknown; expected user, assistant, system or "
                                 "developer",
                                 where, role);
        ds4_buf text = {0};
        char w[64];
        snprintf(w, sizeof w, "%s.content", where);
        if (item_text(json_object_get(it, "content"), w, &text, err)) {
            ds4_buf_free(&text);
            return -1;
        }
        if (rl == SRV_ROLE_USER) flush_reasoning(r, st);
        srv_message *m = req_add_message(r, rl, ds4_buf_take(&text));
        if (rl == SRV_ROLE_ASSISTANT) {
            st->open_assistant = r->n_msgs - 1;
            if (st->reasoning.len) m->reasoning = ds4_buf_take(&st->reasoning);
        } else if (rl == SRV_ROLE_USER) {
            st->open_assistant = -1;
        }
        return 0;
    }
    if (!strcmp(type, "reasoning")) {
        json_t *parts[2] = {json_object_get(it, "summary"), json_object_get(it, "content")};
        for (int k = 0; k < 2; k++) {
            if (!parts[k] || json_is_null(parts[k])) continue;
            char w[64];
            snprintf(w, sizeof w, "%s.%s", where, k ? "content" : "summary");
            if (item_text(parts[k], w, &st->reasoning, err)) return -1;
        }
        return 0;
    }
    if (!strcmp(type, "function_call") || !strcmp(type, "custom_tool_call") ||
        !strcmp(type, "local_shell_call") || !strcmp(type, "web_search_call") ||
        !strcmp(type, "tool_search_call") || !strcmp(type, "image_generation_call"))
        return add_call_item(it, type, where, r, st, err);
    if (tl > 7 && !strcmp(type + tl - 7, "_output")) return add_output_item(it, type, where, r, st, err);
    if (!strcmp(type, "compaction") || !strcmp(type, "context_compaction")) return 0;
    return srv_error_set(err, 400, "'%s.type' '%s' is not a supported input item type", where, type);
}

static void add_tool_name(srv_request *r, char *flat, const char *name, const char *ns) {
    r->tool_names = ds4_xrealloc(r->tool_names, sizeof(srv_tool_name) * (size_t)(r->n_tool_names + 1));
    r->tool_names[r->n_tool_names++] =
        (srv_tool_name){.flat = flat, .name = ds4_xstrdup(name), .ns = ds4_xstrdup(ns)};
}

/* One function schema {name, description, parameters} as the prompt shows it. */
static void add_flat_function(srv_request *r, const char *name, json_t *desc, json_t *params) {
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(name));
    if (desc) json_object_set(o, "description", desc);
    if (params) json_object_set(o, "parameters", params);
    req_add_tool(r, srv_json_dump(o));
    json_decref(o);
}

static int parse_tool_list(json_t *tools, const char *where, srv_request *r, srv_error *err) {
    if (!json_is_array(tools)) return srv_error_set(err, 400, "'%s.tools' must be an array", where);
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *type = json_object_get(t, "type"), *name = json_object_get(t, "name");
        const char *ty = json_is_string(type) ? json_string_value(type) : "function";
        if (!json_is_object(t)) return srv_error_set(err, 400, "'%s[%zu]' must be an object", where, i);
        if (!strcmp(ty, "function") || !strcmp(ty, "custom")) {
            if (!json_is_string(name))
                return srv_error_set(err, 400, "'%s[%zu].name' must be a string", where, i);
            req_add_tool(r, srv_json_dump(t));
        } else if (!strcmp(ty, "namespace")) {
            json_t *inner = json_object_get(t, "tools");
            if (!json_is_string(name) || !json_is_array(inner))
                return srv_error_set(err, 400, "'%s[%zu]' namespace needs 'name' and 'tools'", where, i);
            size_t j;
            json_t *f;
            json_array_foreach(inner, j, f) {
                json_t *fn = json_object_get(f, "name");
                if (!json_is_string(fn))
                    return srv_error_set(err, 400, "'%s[%zu].tools[%zu].name' must be a string", where, i, j);
                ds4_buf flat = {0};
                ds4_buf_adds(&flat, json_string_value(name));
                ds4_buf_adds(&flat, json_string_value(fn));
                add_flat_function(r, flat.p, json_object_get(f, "description"),
                                  json_object_get(f, "parameters"));
                add_tool_name(r, ds4_buf_take(&flat), json_string_value(fn), json_string_value(name));
            }
        } else if (!strcmp(ty, "tool_search")) {
            add_flat_function(r, "tool_search", json_object_get(t, "description"),
                              json_object_get(t, "parameters"));
        }
        /* hosted tools (web_search, file_search, ...) run server-side at
         * OpenAI; this server has none of them, so they are not offered. */
    }
    return 0;
}

int srv_parse_responses(json_t *root, srv_request *r, srv_error *err) {
    if (req_common_fields(root, r, NULL, err)) return -1;
    if (req_opt_count(root, "max_tokens", &r->max_tokens, err)) return -1;
    if (req_opt_count(root, "max_output_tokens", &r->max_tokens, err)) return -1;
    static const char *const stateful[] = {"previous_response_id", "conversation"};
    for (int k = 0; k < 2; k++) {
        json_t *v = json_object_get(root, stateful[k]);
        if (v && !json_is_null(v))
            return srv_error_set(err, 400, "%s is not supported; replay full input instead", stateful[k]);
    }
    json_t *reasoning;
    if (req_opt(root, "reasoning", JSON_OBJECT, &reasoning, NULL, err)) return -1;
    if (reasoning) {
        if (req_effort(json_object_get(reasoning, "effort"), "reasoning.effort", r, err)) return -1;
        json_t *s = json_object_get(reasoning, "summary");
        if (json_is_string(s)) {
            const char *v = json_string_value(s);
            r->reasoning_summary = !strcmp(v, "auto") || !strcmp(v, "concise") || !strcmp(v, "detailed");
        }
    }
    json_t *tools;
    if (req_opt(root, "tools", JSON_ARRAY, &tools, NULL, err)) return -1;
    if (tools && parse_tool_list(tools, "tools", r, err)) return -1;
    json_t *tc = json_object_get(root, "tool_choice");
    if (json_is_string(tc)) {
        const char *v = json_string_value(tc);
        if (!strcmp(v, "none")) r->tool_choice_none = true;
        else if (strcmp(v, "auto"))
            return srv_error_set(err, 400, "tool_choice=%s not supported", v);
    } else if (json_is_object(tc)) {
        return srv_error_set(err, 400, "forced tool_choice not supported");
    } else if (tc && !json_is_null(tc)) {
        return srv_error_set(err, 400, "'tool_choice' must be a string");
    }
    char *instructions = NULL;
    if (req_opt_string(root, "instructions", &instructions, NULL, err)) return -1;
    if (instructions) req_add_message(r, SRV_ROLE_SYSTEM, instructions);
    json_t *input = json_object_get(root, "input");
    if (!input || json_is_null(input)) return srv_error_set(err, 400, "missing input");
    if (json_is_string(input)) {
        req_add_message(r, SRV_ROLE_USER, ds4_xstrndup(json_string_value(input), json_string_length(input)));
        return 0;
    }
    if (!json_is_array(input)) return srv_error_set(err, 400, "'input' must be a string or an array");
    if (json_array_size(input) == 0) return srv_error_set(err, 400, "'input' must not be empty");
    input_state st = {.open_assistant = -1};
    size_t i;
    json_t *it;
    json_array_foreach(input, i, it) {
        if (parse_item(it, i, r, &st, err)) {
            ds4_buf_free(&st.reasoning);
            return -1;
        }
    }
    flush_reasoning(r, &st);
    ds4_buf_free(&st.reasoning);
    return 0;
}
