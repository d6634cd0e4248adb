/* req_common.c — the request-parsing rules shared by every endpoint
 * (server-spec §2.2–§2.3), and srv_parse_request(), the parsers' entry.
 *
 * Unlike ds4's selective parser (which answered every problem with
 * "invalid JSON request"), we parse the whole body with jansson and answer a
 * wrong type, a missing field or an out-of-range value with a message that
 * names the field. jansson rejects invalid UTF-8 inside strings, so text
 * reaching the renderer is valid UTF-8. Unknown keys are ignored, as the
 * SDKs send many we do not use. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/utf8.h"
#include "../common/xalloc.h"
#include "req.h"

static const char *type_name(json_type t) {
    switch (t) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

int req_opt(json_t *obj, const char *key, json_type type, json_t **out, const char *where,
            srv_error *err) {
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) return 0;
    bool ok = json_typeof(v) == type || (type == JSON_REAL && json_is_number(v)) ||
              (type == JSON_TRUE && json_is_boolean(v));
    if (!ok)
        return srv_error_set(err, 400, "'%s%s%s' must be %s", where ? where : "", where ? "." : "",
                             key, type_name(type));
    *out = v;
    return 0;
}

int req_opt_string(json_t *obj, const char *key, char **out, const char *where, srv_error *err) {
    json_t *v;
    if (req_opt(obj, key, JSON_STRING, &v, where, err)) return -1;
    if (v) {
        free(*out);
        *out = ds4_xstrndup(json_string_value(v), json_string_length(v));
    }
    return 0;
}

int req_opt_bool(json_t *obj, const char *key, bool *out, bool *given, srv_error *err) {
    json_t *v;
    if (req_opt(obj, key, JSON_TRUE, &v, NULL, err)) return -1;
    if (v) {
        *out = json_is_true(v);
        if (given) *given = true;
    }
    return 0;
}

int req_opt_number(json_t *obj, const char *key, double lo, double hi, float *out, bool *given,
                   srv_error *err) {
    json_t *v;
    if (req_opt(obj, key, JSON_REAL, &v, NULL, err)) return -1;
    if (!v) return 0;
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return srv_error_set(err, 400, "'%s' must be between %g and %g, got %g", key, lo, hi, x);
    *out = (float)x;
    *given = true;
    return 0;
}

int req_opt_count(json_t *obj, const char *key, int *out, srv_error *err) {
    json_t *v;
    if (req_opt(obj, key, JSON_INTEGER, &v, NULL, err)) return -1;
    if (!v) return 0;
    json_int_t x = json_integer_value(v);
    if (x < 0) return srv_error_set(err, 400, "'%s' must be >= 0, got %lld", key, (long long)x);
    *out = x > INT_MAX ? INT_MAX : (int)x;
    return 0;
}

static int add_stop(srv_request *r, json_t *s, const char *key, srv_error *err) {
    if (!json_is_string(s)) return srv_error_set(err, 400, "'%s' entries must be strings", key);
    size_t n = json_string_length(s);
    if (n == 0) return 0; /* empty strings are dropped */
    if (n > SRV_MAX_STOP_LEN)
        return srv_error_set(err, 400, "'%s' entries must be at most %d bytes", key,
                             SRV_MAX_STOP_LEN);
    if (r->n_stop >= SRV_MAX_STOP)
        return srv_error_set(err, 400, "'%s' may hold at most %d sequences", key, SRV_MAX_STOP);
    r->stop = ds4_xrealloc(r->stop, sizeof(char *) * (size_t)(r->n_stop + 1));
    r->stop[r->n_stop++] = ds4_xstrndup(json_string_value(s), n);
    return 0;
}

int req_common_fields(json_t *root, srv_request *r, const char *stop_key, srv_error *err) {
    if (req_opt_string(root, "model", &r->model, NULL, err)) return -1;
    if (!r->model) r->model = ds4_xstrdup("deepseek-v4-flash");
    if (req_opt_bool(root, "stream", &r->stream, NULL, err)) return -1;
    if (req_opt_bool(root, "ignore_eos", &r->ignore_eos, NULL, err)) return -1;
    json_t *so;
    if (req_opt(root, "stream_options", JSON_OBJECT, &so, NULL, err)) return -1;
    if (so && req_opt_bool(so, "include_usage", &r->include_usage, NULL, err)) return -1;
    if (req_opt_number(root, "temperature", 0, 100, &r->temperature, &r->temperature_set, err) ||
        req_opt_number(root, "top_p", 0, 1, &r->top_p, &r->top_p_set, err) ||
        req_opt_number(root, "min_p", 0, 1, &r->min_p, &r->min_p_set, err))
        return -1;
    json_t *v;
    if (req_opt(root, "top_k", JSON_INTEGER, &v, NULL, err)) return -1;
    if (v) {
        json_int_t k = json_integer_value(v);
        if (k < 0) return srv_error_set(err, 400, "'top_k' must be >= 0");
        r->top_k = k > 1024 ? 1024 : (int)k;
        r->top_k_set = true;
    }
    if (req_opt(root, "seed", JSON_INTEGER, &v, NULL, err)) return -1;
    if (v && json_integer_value(v) > 0) r->seed = (uint64_t)json_integer_value(v);
    if (stop_key) {
        json_t *s = json_object_get(root, stop_key);
        if (json_is_string(s)) {
            if (add_stop(r, s, stop_key, err)) return -1;
        } else if (json_is_array(s)) {
            size_t i;
            json_t *e;
            json_array_foreach(s, i, e) if (add_stop(r, e, stop_key, err)) return -1;
        } else if (s && !json_is_null(s)) {
            return srv_error_set(err, 400, "'%s' must be a string or an array of strings",
                                 stop_key);
        }
    }
    return 0;
}

/* reasoning_effort and friends: max -> Think Max; none -> off; the other
 * known levels collapse to high; null is ignored (server-spec §2.3). */
int req_effort(json_t *v, const char *where, srv_request *r, srv_error *err) {
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return srv_error_set(err, 400, "'%s' must be a string", where);
    const char *s = json_string_value(v);
    if (!strcmp(s, "max")) {
        r->think = SRV_THINK_MAX;
    } else if (!strcmp(s, "none")) {
        r->think = SRV_THINK_NONE;
    } else if (!strcmp(s, "xhigh") || !strcmp(s, "high") || !strcmp(s, "medium") ||
               !strcmp(s, "low") || !strcmp(s, "minimal")) {
        r->think = SRV_THINK_HIGH;
    } else {
        return srv_error_set(err, 400,
                             "'%s' must be one of none, minimal, low, medium, high, xhigh, max; "
                             "got '%s'",
                             where, s);
    }
    r->think_explicit = true;
    return 0;
}

/* `thinking`: a boolean or {"type":"enabled"|"disabled", ...}; other type
 * strings (e.g. "adaptive") keep the default. */
int req_thinking_field(json_t *root, srv_request *r, srv_error *err) {
    json_t *t = json_object_get(root, "thinking");
    if (!t || json_is_null(t)) return 0;
    if (json_is_boolean(t)) {
        r->think = json_is_true(t) ? SRV_THINK_HIGH : SRV_THINK_NONE;
        r->think_explicit = true;
        return 0;
    }
    if (!json_is_object(t))
        return srv_error_set(err, 400, "'thinking' must be a boolean or an object");
    json_t *type;
    if (req_opt(t, "type", JSON_STRING, &type, "thinking", err)) return -1;
    if (type && !strcmp(json_string_value(type), "enabled")) {
        if (r->think == SRV_THINK_NONE) r->think = SRV_THINK_HIGH;
        r->think_explicit = true;
    } else if (type && !strcmp(json_string_value(type), "disabled")) {
        r->think = SRV_THINK_NONE;
        r->think_explicit = true;
    }
    return 0;
}

void req_apply_model_alias(srv_request *r) {
    if (r->think_explicit || !r->model) return;
    if (!strcmp(r->model, "deepseek-chat")) r->think = SRV_THINK_NONE;
    else if (!strcmp(r->model, "deepseek-reasoner")) r->think = SRV_THINK_HIGH;
}

srv_message *req_add_message(srv_request *r, srv_role role, char *content) {
    r->msgs = ds4_xrealloc(r->msgs, sizeof(srv_message) * (size_t)(r->n_msgs + 1));
    srv_message *m = &r->msgs[r->n_msgs++];
    *m = (srv_message){.role = role, .content = content ? content : ds4_xstrdup("")};
    return m;
}

void req_add_call(srv_message *m, char *id, char *name, char *arguments) {
    m->calls = ds4_xrealloc(m->calls, sizeof(srv_tool_call) * (size_t)(m->n_calls + 1));
    m->calls[m->n_calls++] =
        (srv_tool_call){.id = id ? id : ds4_xstrdup(""), .name = name, .arguments = arguments};
}

void req_add_tool(srv_request *r, char *schema_text) {
    r->tools = ds4_xrealloc(r->tools, sizeof(char *) * (size_t)(r->n_tools + 1));
    r->tools[r->n_tools++] = schema_text;
}

char *req_arguments_text(json_t *v) {
    if (!v || json_is_null(v)) return ds4_xstrdup("{}");
    if (json_is_string(v)) return ds4_xstrndup(json_string_value(v), json_string_length(v));
    return srv_json_dump(v);
}

int srv_parse_request(srv_api api, const char *body, size_t len, const srv_parse_defaults *d,
                      srv_request *out, srv_error *err) {
    *out = (srv_request){.api = api, .max_tokens = -1, .think = d->think};
    if (len == 0) return srv_error_set(err, 400, "request body is empty; expected a JSON object");
    size_t valid = ds4_utf8_valid_len(body, len);
    if (valid < len)
        return srv_error_set(err, 400, "request body is not valid UTF-8 (byte 0x%02x at offset %zu)",
                             (unsigned char)body[valid], valid);
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY, &je);
    if (!root)
        return srv_error_set(err, 400, "invalid JSON request: %s (line %d, column %d)", je.text,
                             je.line, je.column);
    int rc;
    if (!json_is_object(root)) {
        rc = srv_error_set(err, 400, "invalid JSON request: the body must be a JSON object");
    } else {
        switch (api) {
        case SRV_API_CHAT: rc = srv_parse_chat(root, out, err); break;
        case SRV_API_COMPLETIONS: rc = srv_parse_completion(root, out, err); break;
        case SRV_API_RESPONSES: rc = srv_parse_responses(root, out, err); break;
        default: rc = srv_parse_anthropic(root, out, err); break;
        }
    }
    json_decref(root);
    if (rc) {
        srv_request_free(out);
        return -1;
    }
    out->has_tools = out->n_tools > 0 && !out->tool_choice_none;
    req_apply_model_alias(out);
    return 0;
}
