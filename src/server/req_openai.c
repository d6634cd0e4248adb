/* req_openai.c — POST /v1/chat/completions and /v1/completions requests
 * (server-spec §2.4, §2.5) into a srv_request.
 *
 * Content arrays are flattened by concatenating text parts with no
 * separator, as ds4 does. Where ds4 silently dropped things (image parts,
 * unknown roles, tool calls without a name) we answer 400 naming the field:
 * silently answering a question about an image the model never saw is worse
 * than an error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/xalloc.h"
#include "req.h"

/* string | null | [string | {type:"text", text}] -> text. */
static int flatten_content(json_t *v, const char *where, char **out, srv_error *err) {
    *out = NULL;
    if (!v || json_is_null(v)) {
        *out = ds4_xstrdup("");
        return 0;
    }
    if (json_is_string(v)) {
        *out = ds4_xstrndup(json_string_value(v), json_string_length(v));
        return 0;
    }
    if (!json_is_array(v))
        return srv_error_set(err, 400, "'%s' must be a string, null or an array of parts", where);
    ds4_buf b = {0};
    size_t i;
    json_t *part;
    json_array_foreach(v, i, part) {
        if (json_is_string(part)) {
            ds4_buf_add(&b, json_string_value(part), json_string_length(part));
            continue;
        }
        if (!json_is_object(part)) {
            ds4_buf_free(&b);
            return srv_error_set(err, 400, "'%s[%zu]' must be an object or a string", where, i);
        }
        json_t *type = json_object_get(part, "type");
        json_t *text = json_object_get(part, "text");
        const char *t = json_is_string(type) ? json_string_value(type) : "text";
        if (strcmp(t, "text") && strcmp(t, "input_text") && strcmp(t, "output_text")) {
            ds4_buf_free(&b);
            return srv_error_set(err, 400,
                                 "'%s[%zu]': content part type '%s' is not supported (this "
                                 "model reads text only)",
                                 where, i, t);
        }
        if (!json_is_string(text)) {
            ds4_buf_free(&b);
            return srv_error_set(err, 400, "'%s[%zu].text' must be a string", where, i);
        }
        ds4_buf_add(&b, json_string_value(text), json_string_length(text));
    }
    *out = ds4_buf_take(&b);
    return 0;
}

static int parse_tool_calls(json_t *arr, const char *where, srv_message *m, srv_error *err) {
    if (!json_is_array(arr)) return srv_error_set(err, 400, "'%s' must be an array", where);
    size_t i;
    json_t *c;
    json_array_foreach(arr, i, c) {
        json_t *fn = json_object_get(c, "function");
        json_t *name = json_object_get(fn, "name");
        json_t *id = json_object_get(c, "id");
        if (!json_is_object(c) || !json_is_object(fn))
            return srv_error_set(err, 400, "'%s[%zu].function' must be an object", where, i);
        if (!json_is_string(name) || !json_string_length(name))
            return srv_error_set(err, 400, "'%s[%zu].function.name' must be a non-empty string",
                                 where, i);
        if (id && !json_is_null(id) && !json_is_string(id))
            return srv_error_set(err, 400, "'%s[%zu].id' must be a string", where, i);
        req_add_call(m, json_is_string(id) ? ds4_xstrdup(json_string_value(id)) : NULL,
                     ds4_xstrdup(json_string_value(name)),
                     req_arguments_text(json_object_get(fn, "arguments")));
    }
    return 0;
}

static int parse_role(const char *s, srv_role *out) {
    if (!strcmp(s, "system")) *out = SRV_ROLE_SYSTEM;
    else if (!strcmp(s, "developer")) *out = SRV_ROLE_DEVELOPER;
    else if (!strcmp(s, "user")) *out = SRV_ROLE_USER;
    else if (!strcmp(s, "assistant")) *out = SRV_ROLE_ASSISTANT;
    else if (!strcmp(s, "tool") || !strcmp(s, "function")) *out = SRV_ROLE_TOOL;
    else return -1;
    return 0;
}

/* tools[] of {"type":"function","function":{name,...}}: the function object
 * is the schema text the prompt shows. */
static int parse_openai_tools(json_t *root, srv_request *r, srv_error *err) {
    json_t *tools;
    if (req_opt(root, "tools", JSON_ARRAY, &tools, NULL, err)) return -1;
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *type = json_object_get(t, "type");
        json_t *fn = json_object_get(t, "function");
        if (json_is_string(type) && strcmp(json_string_value(type), "function"))
            return srv_error_set(err, 400, "'tools[%zu].type' '%s' is not supported; use 'function'",
                                 i, json_string_value(type));
        if (!json_is_object(fn) || !json_is_string(json_object_get(fn, "name")))
            return srv_error_set(err, 400, "'tools[%zu].function' must be an object with a 'name'",
                                 i);
        req_add_tool(r, srv_json_dump(fn));
    }
    json_t *tc = json_object_get(root, "tool_choice");
    if (json_is_string(tc)) r->tool_choice_none = !strcmp(json_string_value(tc), "none");
    else if (tc && !json_is_null(tc) && !json_is_object(tc))
        return srv_error_set(err, 400, "'tool_choice' must be a string or an object");
    return 0;
}

/* Thinking controls of the OpenAI routes: thinking, think, reasoning_effort. */
static int parse_openai_thinking(json_t *root, srv_request *r, srv_error *err) {
    if (req_thinking_field(root, r, err)) return -1;
    bool think, given = false;
    if (req_opt_bool(root, "think", &think, &given, err)) return -1;
    if (given) {
        r->think = think ? (r->think == SRV_THINK_NONE ? SRV_THINK_HIGH : r->think) : SRV_THINK_NONE;
        r->think_explicit = true;
    }
    bool disabled = r->think_explicit && r->think == SRV_THINK_NONE;
    if (req_effort(json_object_get(root, "reasoning_effort"), "reasoning_effort", r, err)) return -1;
    if (disabled) r->think = SRV_THINK_NONE; /* an explicit "off" wins over an effort level */
    return 0;
}

int srv_parse_chat(json_t *root, srv_request *r, srv_error *err) {
    if (req_common_fields(root, r, "stop", err)) return -1;
    if (req_opt_count(root, "max_tokens", &r->max_tokens, err)) return -1;
    if (req_opt_count(root, "max_completion_tokens", &r->max_tokens, err)) return -1;
    if (parse_openai_thinking(root, r, err) || parse_openai_tools(root, r, err)) return -1;
    json_t *msgs = json_object_get(root, "messages");
    if (!msgs || json_is_null(msgs)) return srv_error_set(err, 400, "missing messages");
    if (!json_is_array(msgs)) return srv_error_set(err, 400, "'messages' must be an array");
    if (json_array_size(msgs) == 0)
        return srv_error_set(err, 400, "'messages' must contain at least one message");
    size_t i;
    json_t *m;
    char where[64];
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m)) return srv_error_set(err, 400, "'messages[%zu]' must be an object", i);
        json_t *role_v = json_object_get(m, "role");
        srv_role role = SRV_ROLE_USER;
        if (role_v && !json_is_string(role_v))
            return srv_error_set(err, 400, "'messages[%zu].role' must be a string", i);
        if (role_v && parse_role(json_string_value(role_v), &role))
            return srv_error_set(err, 400,
                                 "'messages[%zu].role' '%s' is unknown; expected system, "
                                 "developer, user, assistant or tool",
                                 i, json_string_value(role_v));
        char *content;
        snprintf(where, sizeof where, "messages[%zu].content", i);
        if (flatten_content(json_object_get(m, "content"), where, &content, err)) return -1;
        srv_message *msg = req_add_message(r, role, content);
        json_t *rc = json_object_get(m, "reasoning_content");
        if (rc && !json_is_null(rc)) {
            snprintf(where, sizeof where, "messages[%zu].reasoning_content", i);
            if (flatten_content(rc, where, &msg->reasoning, err)) return -1;
        }
        snprintf(where, sizeof where, "messages[%zu]", i);
        if (req_opt_string(m, "tool_call_id", &msg->tool_call_id, where, err)) return -1;
        json_t *calls = json_object_get(m, "tool_calls");
        if (calls && !json_is_null(calls)) {
            snprintf(where, sizeof where, "messages[%zu].tool_calls", i);
            if (parse_tool_calls(calls, where, msg, err)) return -1;
        }
    }
    return 0;
}

int srv_parse_completion(json_t *root, srv_request *r, srv_error *err) {
    if (req_common_fields(root, r, "stop", err)) return -1;
    if (req_opt_count(root, "max_tokens", &r->max_tokens, err)) return -1;
    if (parse_openai_thinking(root, r, err)) return -1;
    json_t *p = json_object_get(root, "prompt");
    if (!p || json_is_null(p)) return srv_error_set(err, 400, "missing prompt");
    if (json_is_array(p)) {
        json_t *first = json_array_get(p, 0);
        if (!json_is_string(first))
            return srv_error_set(err, 400,
                                 "'prompt' must be a string or an array starting with a string "
                                 "(token-id prompts are not supported)");
        p = first;
    }
    if (!json_is_string(p)) return srv_error_set(err, 400, "'prompt' must be a string");
    r->prompt = ds4_xstrndup(json_string_value(p), json_string_length(p));
    return 0;
}
