/* req_anthropic.c — POST /v1/messages and /v1/messages/count_tokens requests
 * (server-spec §2.6) into a srv_request.
 *
 * Blocks are classified by their own `type`. tool_result blocks become tool
 * messages (the chat renderer merges them into the user turn in call order,
 * as the official encoder does), followed by a user message holding the
 * text blocks if any; thinking blocks become the message's reasoning;
 * tool_use blocks become tool calls whose input is kept as JSON. Image and
 * document blocks are refused with a 400 (the model reads text only);
 * redacted_thinking is ignored. A tool_result must answer a tool_use earlier
 * in the same request: we keep no hidden live state, so an orphan result
 * could only be rendered wrongly. Messages may also have role "system"
 * (Claude Code 2.x sends its environment block so): text only, rendered
 * like the top-level system text.
 *
 * Tools are shown to the model in the OpenAI function shape it was trained
 * on ({name, description, parameters}), input_schema becoming parameters;
 * ds4 showed the raw Anthropic object. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/xalloc.h"
#include "req.h"

/* Text of a tool_result's content: string or array of text blocks. */
static int tool_result_text(json_t *c, const char *where, ds4_buf *out, srv_error *err) {
    if (!c || json_is_null(c)) return 0;
    if (json_is_string(c)) {
        ds4_buf_add(out, json_string_value(c), json_string_length(c));
        return 0;
    }
    if (!json_is_array(c))
        return srv_error_set(err, 400, "'%s.content' must be a string or an array of blocks", where);
    size_t i;
    json_t *b;
    json_array_foreach(c, i, b) {
        json_t *type = json_object_get(b, "type");
        json_t *text = json_object_get(b, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") || !json_is_string(text))
            return srv_error_set(err, 400,
                                 "'%s.content[%zu]': only text blocks are supported in tool results",
                                 where, i);
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

/* One message's blocks. Assistant: text, reasoning and calls go into one
 * message. User: each tool_result becomes a tool message, then the text
 * (if any, or if there were no results) one user message. System: text. */
static int parse_blocks(json_t *content, size_t mi, srv_request *r, srv_role role, srv_error *err) {
    ds4_buf text = {0}, reasoning = {0};
    srv_message *am = role == SRV_ROLE_ASSISTANT ? req_add_message(r, role, NULL) : NULL;
    int am_index = r->n_msgs - 1, n_results = 0;
    size_t i;
    json_t *b;
    char where[64];
    int rc = 0;
    json_array_foreach(content, i, b) {
        snprintf(where, sizeof where, "messages[%zu].content[%zu]", mi, i);
        json_t *type = json_object_get(b, "type");
        if (!json_is_object(b) || !json_is_string(type)) {
            rc = srv_error_set(err, 400, "'%s' must be an object with a string 'type'", where);
            break;
        }
        const char *t = json_string_value(type);
        if (!strcmp(t, "text")) {
            json_t *tx = json_object_get(b, "text");
            if (!json_is_string(tx)) {
                rc = srv_error_set(err, 400, "'%s.text' must be a string", where);
                break;
            }
            ds4_buf_add(&text, json_string_value(tx), json_string_length(tx));
        } else if (!strcmp(t, "thinking")) {
            json_t *th = json_object_get(b, "thinking");
            if (json_is_string(th)) ds4_buf_add(&reasoning, json_string_value(th), json_string_length(th));
        } else if (!strcmp(t, "redacted_thinking")) {
            continue;
        } else if (!strcmp(t, "tool_use") && am) {
            json_t *id = json_object_get(b, "id"), *name = json_object_get(b, "name");
            json_t *input = json_object_get(b, "input");
            if (!json_is_string(name) || !json_string_length(name) || !json_is_string(id)) {
                rc = srv_error_set(err, 400, "'%s' needs a string 'id' and a non-empty 'name'", where);
                break;
            }
            if (input && !json_is_null(input) && !json_is_object(input)) {
                rc = srv_error_set(err, 400, "'%s.input' must be an object", where);
                break;
            }
            req_add_call(&r->msgs[am_index], ds4_xstrdup(json_string_value(id)),
                         ds4_xstrdup(json_string_value(name)),
                         input && !json_is_null(input) ? srv_json_dump(input) : ds4_xstrdup("{}"));
        } else if (!strcmp(t, "tool_result") && role == SRV_ROLE_USER) {
            json_t *id = json_object_get(b, "tool_use_id");
            if (!json_is_string(id)) {
                rc = srv_error_set(err, 400, "'%s.tool_use_id' must be a string", where);
                break;
            }
            if (!id_seen(r, json_string_value(id))) {
                rc = srv_error_set(err, 400,
                                   "Anthropic continuation state is not available for tool_use_id "
                                   "%s; retry by replaying the full messages history",
                                   json_string_value(id));
                break;
            }
            ds4_buf body = {0};
            if (tool_result_text(json_object_get(b, "content"), where, &body, err)) {
                ds4_buf_free(&body);
                rc = -1;
                break;
            }
            srv_message *tm = req_add_message(r, SRV_ROLE_TOOL, ds4_buf_take(&body));
            tm->tool_call_id = ds4_xstrdup(json_string_value(id));
            n_results++;
        } else {
            rc = srv_error_set(err, 400, "'%s': content block type '%s' is not supported in a%s %s message",
                               where, t, am ? "n" : "",
                               am ? "assistant" : role == SRV_ROLE_SYSTEM ? "system" : "user");
            break;
        }
    }
    if (!rc && am) {
        srv_message *m = &r->msgs[am_index];
        free(m->content);
        m->content = ds4_buf_take(&text);
        if (reasoning.len) m->reasoning = ds4_buf_take(&reasoning);
    } else if (!rc && (text.len || n_results == 0)) {
        req_add_message(r, role, ds4_buf_take(&text));
    }
    ds4_buf_free(&text);
    ds4_buf_free(&reasoning);
    return rc;
}

/* system: string | null | [string | {text}]; "x-anthropic-" parts dropped;
 * parts joined by "\n" unless the previous part ends with one. */
static int parse_system(json_t *root, srv_request *r, srv_error *err) {
    json_t *s = json_object_get(root, "system");
    if (!s || json_is_null(s)) return 0;
    ds4_buf b = {0};
    if (json_is_string(s)) {
        ds4_buf_add(&b, json_string_value(s), json_string_length(s));
    } else if (json_is_array(s)) {
        size_t i;
        json_t *p;
        json_array_foreach(s, i, p) {
            json_t *tx = json_is_string(p) ? p : json_object_get(p, "text");
            if (!json_is_string(tx)) {
                ds4_buf_free(&b);
                return srv_error_set(err, 400, "'system[%zu]' must be a string or a text block", i);
            }
            const char *str = json_string_value(tx);
            if (!strncmp(str, "x-anthropic-", 12)) continue;
            if (b.len && b.p[b.len - 1] != '\n') ds4_buf_adds(&b, "\n");
            ds4_buf_add(&b, str, json_string_length(tx));
        }
    } else {
        return srv_error_set(err, 400, "'system' must be a string or an array of text blocks");
    }
    if (b.len) req_add_message(r, SRV_ROLE_SYSTEM, ds4_buf_take(&b));
    ds4_buf_free(&b);
    return 0;
}

static int parse_tools(json_t *root, srv_request *r, srv_error *err) {
    json_t *tools;
    if (req_opt(root, "tools", JSON_ARRAY, &tools, NULL, err)) return -1;
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        if (!json_is_object(t) || !json_is_string(json_object_get(t, "name")))
            return srv_error_set(err, 400, "'tools[%zu]' must be an object with a string 'name'", i);
        json_t *schema = json_object_get(t, "input_schema");
        if (schema && !json_is_object(schema))
            return srv_error_set(err, 400, "'tools[%zu].input_schema' must be an object", i);
        json_t *fn = json_pack("{s:O}", "name", json_object_get(t, "name"));
        json_t *desc = json_object_get(t, "description");
        if (json_is_string(desc)) json_object_set(fn, "description", desc);
        json_object_set_new(fn, "parameters", schema ? json_incref(schema) : json_pack("{s:s}", "type", "object"));
        req_add_tool(r, srv_json_dump(fn));
        json_decref(fn);
    }
    json_t *tc;
    if (req_opt(root, "tool_choice", JSON_OBJECT, &tc, NULL, err)) return -1;
    json_t *type = json_object_get(tc, "type");
    if (json_is_string(type) && !strcmp(json_string_value(type), "none")) r->tool_choice_none = true;
    return 0;
}

int srv_parse_anthropic(json_t *root, srv_request *r, srv_error *err) {
    if (req_common_fields(root, r, "stop_sequences", err)) return -1;
    if (req_opt_count(root, "max_tokens", &r->max_tokens, err)) return -1;
    if (req_thinking_field(root, r, err)) return -1;
    bool disabled = r->think_explicit && r->think == SRV_THINK_NONE;
    json_t *oc;
    if (req_opt(root, "output_config", JSON_OBJECT, &oc, NULL, err)) return -1;
    if (oc && req_effort(json_object_get(oc, "effort"), "output_config.effort", r, err)) return -1;
    if (req_effort(json_object_get(root, "reasoning_effort"), "reasoning_effort", r, err)) return -1;
    if (disabled) r->think = SRV_THINK_NONE;
    if (parse_system(root, r, err) || parse_tools(root, r, err)) return -1;
    json_t *msgs = json_object_get(root, "messages");
    if (!msgs || json_is_null(msgs)) return srv_error_set(err, 400, "missing messages");
    if (!json_is_array(msgs)) return srv_error_set(err, 400, "'messages' must be an array");
    if (json_array_size(msgs) == 0)
        return srv_error_set(err, 400, "'messages' must contain at least one message");
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) {
        if (!json_is_object(m)) return srv_error_set(err, 400, "'messages[%zu]' must be an object", i);
        json_t *role_v = json_object_get(m, "role");
        if (!json_is_string(role_v))
            return srv_error_set(err, 400, "'messages[%zu].role' must be a string", i);
        const char *role = json_string_value(role_v);
        srv_role rl;
        if (!strcmp(role, "user")) rl = SRV_ROLE_USER;
        else if (!strcmp(role, "assistant")) rl = SRV_ROLE_ASSISTANT;
        else if (!strcmp(role, "system")) rl = SRV_ROLE_SYSTEM;
        else
            return srv_error_set(err, 400,
                                 "'messages[%zu].role' '%s' is unknown; expected user, assistant or system",
                                 i, role);
        json_t *c = json_object_get(m, "content");
        if (json_is_array(c)) {
            if (parse_blocks(c, i, r, rl, err)) return -1;
        } else if (json_is_string(c) || !c || json_is_null(c)) {
            req_add_message(r, rl, json_is_string(c) ? ds4_xstrndup(json_string_value(c), json_string_length(c)) : NULL);
        } else {
            return srv_error_set(err, 400, "'messages[%zu].content' must be a string or an array", i);
        }
    }
    return 0;
}
