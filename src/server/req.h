/* req.h — helpers shared by the request parsers (req_*.c), private to them.
 *
 * Every helper that can fail fills a srv_error naming the field
 * ("messages[2].content[1].type") and returns -1, so each parser reads as a
 * list of fields and their rules. "Optional" getters return NULL for both a
 * missing key and JSON null (clients send null for "not set"). */
#ifndef DS4_SERVER_REQ_H
#define DS4_SERVER_REQ_H

#include "server.h"

/* Bounds on what one request may carry (sizes are bounded everywhere). */
#define SRV_MAX_STOP 16
#define SRV_MAX_STOP_LEN 1024

/* Optional member of a given jansson type; wrong type -> error. */
int req_opt(json_t *obj, const char *key, json_type type, json_t **out, const char *where,
            srv_error *err);
/* Optional string member copied into *out (left unchanged when absent). */
int req_opt_string(json_t *obj, const char *key, char **out, const char *where, srv_error *err);
int req_opt_bool(json_t *obj, const char *key, bool *out, bool *given, srv_error *err);
/* Number in [lo, hi]; sets *given. */
int req_opt_number(json_t *obj, const char *key, double lo, double hi, float *out, bool *given,
                   srv_error *err);
/* Non-negative integer (clamped to INT_MAX); first present key wins. */
int req_opt_count(json_t *obj, const char *key, int *out, srv_error *err);

/* Common generation fields: model, stream, stream_options, sampling, seed,
 * stop (stop_key: "stop", "stop_sequences" or NULL), max tokens. */
int req_common_fields(json_t *root, srv_request *r, const char *stop_key, srv_error *err);

/* Thinking controls (server-spec §2.3). */
int req_effort(json_t *v, const char *where, srv_request *r, srv_error *err);
int req_thinking_field(json_t *root, srv_request *r, srv_error *err);
/* After all controls: model aliases when no explicit control was given. */
void req_apply_model_alias(srv_request *r);

/* Appends a message (takes ownership of content etc.) and returns it. */
srv_message *req_add_message(srv_request *r, srv_role role, char *content);
void req_add_call(srv_message *m, char *id, char *name, char *arguments);
void req_add_tool(srv_request *r, char *schema_text);

/* JSON text for a tool call's arguments: strings are used as given (they are
 * JSON text already), other values are dumped compactly. */
char *req_arguments_text(json_t *v);

int srv_parse_chat(json_t *root, srv_request *r, srv_error *err);
int srv_parse_completion(json_t *root, srv_request *r, srv_error *err);
int srv_parse_anthropic(json_t *root, srv_request *r, srv_error *err);
int srv_parse_responses(json_t *root, srv_request *r, srv_error *err);

#endif
