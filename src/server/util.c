/* util.c — small helpers of the server: ids, error bodies and
 * the destructors of the shared request/result types (server.h).
 *
 * Error bodies follow each protocol's own shape so SDKs raise their proper
 * exception classes: OpenAI routes get {"error":{message,type,param,code}},
 * /v1/messages gets Anthropic's {"type":"error","error":{type,message}}
 * (server-spec §2.16; ds4 sent the OpenAI shape everywhere, which Anthropic
 * clients cannot classify). */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/xalloc.h"
#include "server.h"

char *srv_random_id(const char *prefix, int ndigits) {
    unsigned char raw[32];
    size_t want = (size_t)(ndigits + 1) / 2;
    if (want > sizeof raw) want = sizeof raw;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t got = fd >= 0 ? read(fd, raw, want) : -1;
    if (fd >= 0) close(fd);
    if (got != (ssize_t)want) { /* fallback: time, pid and a counter */
        static unsigned long counter;
        uint64_t x = (uint64_t)time(NULL) * 6364136223846793005ull ^ (uint64_t)getpid() ^
                     (uint64_t)__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) << 32;
        for (size_t i = 0; i < want; i++) {
            x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
            raw[i] = (unsigned char)((x * 2685821657736338717ull) >> 56);
        }
    }
    ds4_buf b = {0};
    ds4_buf_adds(&b, prefix);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < ndigits; i++) {
        unsigned v = raw[i / 2];
        char c = hex[i % 2 ? v & 15 : v >> 4];
        ds4_buf_add(&b, &c, 1);
    }
    return ds4_buf_take(&b);
}

char *srv_new_tool_id(srv_api api) {
    return srv_random_id(api == SRV_API_MESSAGES ? "toolu_" : "call_", 32);
}

char *srv_json_dump(json_t *v) {
    char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    return s ? s : ds4_xstrdup("null");
}

char *srv_json_line(json_t *v) {
    char *s = srv_json_dump(v);
    json_decref(v);
    ds4_buf b = {0};
    ds4_buf_adds(&b, s);
    ds4_buf_adds(&b, "\n");
    free(s);
    return ds4_buf_take(&b);
}

const char *srv_finish_name(srv_finish f) {
    switch (f) {
    case SRV_FINISH_STOP: return "stop";
    case SRV_FINISH_LENGTH: return "length";
    case SRV_FINISH_TOOL_CALLS: return "tool_calls";
    case SRV_FINISH_ERROR: return "error";
    }
    return "error";
}

int srv_error_set(srv_error *e, int status, const char *fmt, ...) {
    e->status = status;
    e->type = status >= 500 ? "server_error" : "invalid_request_error";
    e->param = NULL;
    e->code = NULL;
    e->n_prompt = e->n_ctx = -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

/* Anthropic's error type names by status (docs.anthropic.com "Errors"). */
static const char *anthropic_error_type(int status) {
    switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503: return "overloaded_error";
    default: return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

char *srv_error_body(const srv_error *e, srv_api api) {
    json_t *inner = json_object();
    json_t *root;
    if (api == SRV_API_MESSAGES || api == SRV_API_COUNT_TOKENS) {
        json_object_set_new(inner, "type", json_string(anthropic_error_type(e->status)));
        json_object_set_new(inner, "message", json_string(e->message));
        root = json_object();
        json_object_set_new(root, "type", json_string("error"));
        json_object_set_new(root, "error", inner);
    } else {
        json_object_set_new(inner, "message", json_string(e->message));
        json_object_set_new(inner, "type", json_string(e->type ? e->type : "invalid_request_error"));
        json_object_set_new(inner, "param", e->param ? json_string(e->param) : json_null());
        json_object_set_new(inner, "code", e->code ? json_string(e->code) : json_null());
        root = json_object();
        json_object_set_new(root, "error", inner);
    }
    if (e->n_prompt >= 0) {
        json_object_set_new(inner, "n_prompt_tokens", json_integer(e->n_prompt));
        json_object_set_new(inner, "n_ctx", json_integer(e->n_ctx));
    }
    return srv_json_line(root);
}

void srv_tool_calls_free(srv_tool_call *c, int n) {
    for (int i = 0; i < n; i++) {
        free(c[i].id);
        free(c[i].name);
        free(c[i].arguments);
    }
    free(c);
}

void srv_request_free(srv_request *r) {
    if (!r) return;
    free(r->model);
    for (int i = 0; i < r->n_msgs; i++) {
        free(r->msgs[i].content);
        free(r->msgs[i].reasoning);
        free(r->msgs[i].tool_call_id);
        srv_tool_calls_free(r->msgs[i].calls, r->msgs[i].n_calls);
    }
    free(r->msgs);
    free(r->prompt);
    for (int i = 0; i < r->n_tools; i++) free(r->tools[i]);
    free(r->tools);
    for (int i = 0; i < r->n_tool_names; i++) {
        free(r->tool_names[i].flat);
        free(r->tool_names[i].name);
        free(r->tool_names[i].ns);
    }
    free(r->tool_names);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->stop);
    *r = (srv_request){0};
}

void srv_result_free(srv_result *r) {
    if (!r) return;
    free(r->reasoning);
    free(r->content);
    srv_tool_calls_free(r->calls, r->n_calls);
    free(r->raw_dsml);
    free(r->error);
    *r = (srv_result){0};
}
