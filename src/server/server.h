/* server.h — the types the ds4-server modules share.
 *
 * Data flows one way (DESIGN.md): an HTTP request (http.c) is parsed by an
 * API adapter (req_*.c) into one protocol-neutral srv_request; the prompt is
 * rendered and tokenized in the client thread (prompt.c); a srv_job carrying
 * it goes through the bounded queue to the one worker (sched.c), which runs
 * the generation (gen.c). Generation produces protocol-neutral events
 * (reasoning text, content text, tool-call pieces, a final srv_result) that an
 * emitter (emit_*.c) turns into the endpoint's SSE events or final JSON,
 * written into the job's output buffer that the client thread drains.
 *
 * Every allocation made by a parser is owned by the srv_request and freed by
 * srv_request_free(); strings are NUL-terminated UTF-8. */
#ifndef DS4_SERVER_H
#define DS4_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../common/buf.h"

/* Random lowercase hex id: prefix + ndigits hex digits (/dev/urandom). */
char *srv_random_id(const char *prefix, int ndigits);

/* ------------------------------------------------------------------ */
/* requests */

typedef enum srv_api {
    SRV_API_CHAT,        /* POST /v1/chat/completions */
    SRV_API_COMPLETIONS, /* POST /v1/completions */
    SRV_API_RESPONSES,   /* POST /v1/responses */
    SRV_API_MESSAGES,    /* POST /v1/messages (Anthropic) */
    SRV_API_COUNT_TOKENS /* POST /v1/messages/count_tokens */
} srv_api;

typedef enum srv_think {
    SRV_THINK_NONE = 0,
    SRV_THINK_HIGH = 1,
    SRV_THINK_MAX = 2,
} srv_think;

typedef enum srv_role {
    SRV_ROLE_SYSTEM,
    SRV_ROLE_DEVELOPER,
    SRV_ROLE_USER,
    SRV_ROLE_ASSISTANT,
    SRV_ROLE_TOOL, /* tool / function results */
} srv_role;

typedef struct srv_tool_call {
    char *id;        /* as the client sent it (may be "") */
    char *name;
    char *arguments; /* JSON text, normally an object */
} srv_tool_call;

typedef struct srv_message {
    srv_role role;
    char *content;   /* flattened text, never NULL */
    char *reasoning; /* prior-turn reasoning, NULL if none */
    srv_tool_call *calls;
    int n_calls;
    char *tool_call_id; /* tool results: the call they answer (NULL if none) */
} srv_message;

/* A Responses tool that came in a namespace: its flattened prompt name and
 * the wire name + namespace it goes back out with. */
typedef struct srv_tool_name {
    char *flat, *name, *ns;
} srv_tool_name;

typedef struct srv_request {
    srv_api api;
    char *model;         /* echoed verbatim; default "deepseek-v4-flash" */
    srv_message *msgs;   /* chat-like APIs */
    int n_msgs;
    char *prompt;        /* completions */
    char **tools;        /* one JSON schema text per tool, as rendered */
    int n_tools;
    bool tool_choice_none;
    bool has_tools; /* n_tools > 0 and tool choice is not "none" */
    srv_tool_name *tool_names; /* Responses namespaces */
    int n_tool_names;

    bool stream, include_usage;
    int max_tokens;                  /* -1 = server default */
    bool temperature_set, top_p_set, min_p_set, top_k_set;
    float temperature, top_p, min_p; /* meaningful when *_set */
    int top_k;
    uint64_t seed;                   /* 0 = time-based */
    bool ignore_eos; /* never sample EOS (as vLLM's ignore_eos; benchmarks) */
    srv_think think;
    bool think_explicit; /* a thinking control was given (aliases then don't apply) */
    char **stop;
    int n_stop;
    bool reasoning_summary; /* Responses: reasoning.summary opted in */
} srv_request;

void srv_request_free(srv_request *r);
/* Frees n calls and their strings, then the array. */
void srv_tool_calls_free(srv_tool_call *c, int n);

/* A request error in a protocol-neutral form; http.c renders it in the
 * endpoint's native shape (OpenAI or Anthropic). */
typedef struct srv_error {
    int status;         /* HTTP status */
    const char *type;   /* OpenAI type; Anthropic type derived from status */
    const char *param;  /* NULL or the offending field */
    const char *code;   /* NULL or e.g. "context_length_exceeded" */
    long n_prompt, n_ctx; /* context errors only (else -1) */
    char message[512];
} srv_error;

int srv_error_set(srv_error *e, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Native error body for api (ends with "\n"); caller frees. */
char *srv_error_body(const srv_error *e, srv_api api);

/* Parsers: body[len] is the raw JSON body. On failure fill err and return -1.
 * req_common.c holds the helpers they share. */
typedef struct srv_parse_defaults {
    srv_think think; /* server default thinking mode */
} srv_parse_defaults;

int srv_parse_request(srv_api api, const char *body, size_t len, const srv_parse_defaults *d,
                      srv_request *out, srv_error *err);

/* ------------------------------------------------------------------ */
/* generation results and protocol events */

typedef enum srv_finish {
    SRV_FINISH_STOP,
    SRV_FINISH_LENGTH,
    SRV_FINISH_TOOL_CALLS,
    SRV_FINISH_ERROR,
} srv_finish;

const char *srv_finish_name(srv_finish f); /* "stop", "length", "tool_calls", "error" */

typedef struct srv_usage {
    int prompt_tokens;
    int cached_tokens;
    int completion_tokens;
} srv_usage;

typedef struct srv_result {
    srv_finish finish;
    char *reasoning;       /* NULL if none */
    bool reasoning_closed; /* </think> was seen */
    char *content;         /* never NULL after generation */
    srv_tool_call *calls;  /* parsed calls with final ids */
    int n_calls;
    char *raw_dsml;        /* the exact sampled tool block (exact replay) */
    char *error;           /* finish == ERROR: why */
    srv_usage usage;
} srv_result;

void srv_result_free(srv_result *r);

/* Where an emitter writes bytes. Returns 0, or -1 once the client is gone. */
typedef int (*srv_write_fn)(void *ctx, const char *data, size_t n);

/* Turns generation events into one endpoint's wire format. Streaming
 * emitters write SSE events as things happen; non-streaming ones write the
 * whole JSON body at finish. id is the response id ("chatcmpl-7"). */
typedef struct srv_emitter srv_emitter;

srv_emitter *srv_emitter_new(const srv_request *req, const char *id, int64_t created,
                             srv_write_fn write, void *write_ctx);
void srv_emitter_free(srv_emitter *em);
/* Prompt usage is known when output starts (Anthropic message_start). */
void srv_emit_begin(srv_emitter *em, const srv_usage *u);
void srv_emit_reasoning(srv_emitter *em, const char *s, size_t n);
void srv_emit_content(srv_emitter *em, const char *s, size_t n);
/* A tool call whose invoke tag completed; id is its final id. */
void srv_emit_tool_begin(srv_emitter *em, int index, const char *id, const char *name);
/* Arguments JSON fragment for the call being streamed. */
void srv_emit_tool_args(srv_emitter *em, int index, const char *s, size_t n);
void srv_emit_tool_end(srv_emitter *em, int index);
/* Final events / body. Calls in res that were not streamed are sent whole. */
void srv_emit_finish(srv_emitter *em, const srv_result *res);
/* A failure after SSE headers went out (prefill failed). */
void srv_emit_error(srv_emitter *em, const char *message);

/* Tool ids for one endpoint: "call_"+32 hex, "toolu_"+32 hex (Anthropic). */
char *srv_new_tool_id(srv_api api);

/* JSON helpers used by the emitters: compact dump (caller frees). */
char *srv_json_dump(json_t *v);
/* Compact JSON text of v followed by a newline (a reply body); takes v. */
char *srv_json_line(json_t *v);

#endif
