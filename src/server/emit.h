/* emit.h — the emitter state shared by emit.c and the per-protocol
 * emitters (emit_openai.c, emit_anthropic.c, emit_responses.c); private to
 * them.
 *
 * One srv_emitter serves one response. The generic part (emit.c) keeps what
 * every protocol needs: where bytes go, which tool calls were already
 * streamed live, and the text streamed so far (so the finish can send a tail
 * that was never streamed). The protocol part is a table of callbacks. */
#ifndef DS4_SERVER_EMIT_H
#define DS4_SERVER_EMIT_H

#include "server.h"

typedef struct srv_emit_ops {
    void (*begin)(srv_emitter *em, const srv_usage *u);
    void (*reasoning)(srv_emitter *em, const char *s, size_t n);
    void (*content)(srv_emitter *em, const char *s, size_t n);
    void (*tool_begin)(srv_emitter *em, int index, const char *id, const char *name);
    void (*tool_args)(srv_emitter *em, int index, const char *s, size_t n);
    void (*tool_end)(srv_emitter *em, int index);
    void (*finish)(srv_emitter *em, const srv_result *res);
    void (*error)(srv_emitter *em, const char *message);
} srv_emit_ops;

typedef enum { BLOCK_NONE, BLOCK_THINKING, BLOCK_TEXT, BLOCK_TOOL } emit_block;

struct srv_emitter {
    const srv_request *req;
    const srv_emit_ops *ops;
    char *id;
    int64_t created;
    srv_write_fn write;
    void *write_ctx;
    bool failed;          /* the client is gone: write nothing more */
    int n_live_calls;     /* calls streamed live (indexes 0..n-1) */
    ds4_buf reasoning, content; /* text streamed so far */

    /* Anthropic: content blocks */
    int block_index;
    emit_block open_block;
    bool had_text, had_thinking;

    /* Responses: items */
    int seq;
    int next_output_index;
    int rs_index, msg_index; /* -1 = not opened */
    char *rs_id, *msg_id;
};

/* Writes raw bytes unless the client is gone. */
void emit_raw(srv_emitter *em, const char *s, size_t n);
/* "data: <json>\n\n" (event == NULL) or "event: E\ndata: <json>\n\n"; takes v. */
void emit_sse(srv_emitter *em, const char *event, json_t *v);
/* The JSON body of a non-streaming reply, "<json>\n"; takes v. */
void emit_body(srv_emitter *em, json_t *v);

/* Shared JSON pieces. */
json_t *emit_openai_usage(const srv_usage *u);
/* arguments text -> compact JSON text (re-minified when it parses). */
char *emit_compact_arguments(const char *args);
/* arguments text -> JSON value (object when it parses, else {}). */
json_t *emit_arguments_object(const char *args);

extern const srv_emit_ops srv_emit_chat_ops, srv_emit_completions_ops, srv_emit_anthropic_ops,
    srv_emit_responses_ops;
extern const srv_emit_ops srv_emit_chat_final_ops, srv_emit_completions_final_ops,
    srv_emit_anthropic_final_ops, srv_emit_responses_final_ops;

#endif
