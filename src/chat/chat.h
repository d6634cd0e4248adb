/* chat.h — rendering a conversation into the prompt text the model expects.
 *
 * The output is exactly what DeepSeek's official V4 encoder
 * (encoding/encoding_dsv4.py, published with DeepSeek-V4-Flash) produces for
 * the same conversation: BOS, the optional Think-Max paragraph, system and
 * developer messages, users (tool results merged into the user turn in call
 * order), assistants with their kept or dropped reasoning and their tool
 * calls as DSML, then the Assistant marker with `<think>` or `</think>`.
 * The tokenizer turns the text into tokens, recognising the special-token
 * strings (BOS, EOS, User, Assistant, <think>, </think>, ｜DSML｜) in it.
 *
 * How an API request maps onto the official encoder's input (the same
 * mapping vLLM's DeepSeek-V4 adapter uses): the request's tools and
 * response_format are attached to the first message when it is a system or
 * developer message, else to a new empty system message put first.
 *
 * All strings are NUL-terminated UTF-8 and only borrowed for the call. */
#ifndef DS4_CHAT_H
#define DS4_CHAT_H

#include <stdbool.h>

#include "../common/buf.h"
#include "../common/error.h"

typedef enum ds4_role {
    DS4_ROLE_SYSTEM,
    DS4_ROLE_DEVELOPER,
    DS4_ROLE_USER,
    DS4_ROLE_ASSISTANT,
    DS4_ROLE_TOOL, /* a tool result ("tool" / "function" messages) */
} ds4_role;

typedef struct ds4_tool_call {
    const char *id;        /* may be NULL; orders tool results (call order) */
    const char *name;
    const char *arguments; /* JSON text, normally an object, key order kept */
} ds4_tool_call;

typedef struct ds4_chat_msg {
    ds4_role role;
    const char *content;   /* NULL = empty */
    const char *reasoning; /* assistant reasoning_content; NULL = none */
    const ds4_tool_call *calls;
    int n_calls;
    const char *tool_call_id; /* DS4_ROLE_TOOL: the call answered; may be NULL */
    /* Assistant with tool calls: the exact DSML bytes the model sampled
     * (leading whitespace included, as ds4_dsml_raw_block returns them),
     * written instead of the canonical rendering of `calls` so the prompt
     * matches the tokens already in the KV cache. NULL = canonical. */
    const char *raw_dsml;
} ds4_chat_msg;

typedef struct ds4_chat {
    const ds4_chat_msg *msgs;
    int n_msgs;
    const char *const *tools; /* JSON text of each tool's function object */
    int n_tools;              /* 0 = no tools (also for tool_choice "none") */
    const char *response_format; /* JSON text or NULL */
} ds4_chat;

typedef enum ds4_think_mode {
    DS4_THINK_NONE, /* non-thinking: "<｜Assistant｜></think>" */
    DS4_THINK_HIGH, /* thinking: "<｜Assistant｜><think>" */
    DS4_THINK_MAX,  /* thinking + the official reasoning-effort paragraph */
} ds4_think_mode;

/* Think Max needs a context of at least this many tokens; below it the
 * request is rendered as plain thinking (model card recommendation, as ds4). */
#define DS4_THINK_MAX_MIN_CTX 393216

typedef struct ds4_chat_opts {
    ds4_think_mode mode;
    int ctx; /* the session's context size (decides whether Max applies) */
    /* Keep every assistant's reasoning in thinking mode even without tools
     * (the official encoder's drop_thinking=False). The ds4 CLI uses it so
     * each rendered conversation extends the previous one (prefix reuse). */
    bool keep_reasoning;
} ds4_chat_opts;

/* The mode actually used for a request mode and context size. */
ds4_think_mode ds4_chat_effective_mode(ds4_think_mode mode, int ctx);

/* Appends the rendered prompt to out. A conversation that ends with a user,
 * developer or tool message ends with the generation prompt (Assistant
 * marker + <think> or </think>); one that ends with an assistant message ends
 * with its EOS. Fails (out unchanged) on invalid JSON in tools or
 * response_format, on tool-call arguments that are JSON but not an object or
 * hold an integer beyond 64 bits (json_py.h), and on an empty developer
 * message (the official encoder rejects it). */
int ds4_chat_render(const ds4_chat *c, const ds4_chat_opts *o, ds4_buf *out, ds4_err *err);

/* The official special-token strings and fixed texts (for the tokenizer,
 * tests and the server). */
#define DS4_CHAT_BOS "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
#define DS4_CHAT_EOS "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>"
#define DS4_CHAT_USER "<\xEF\xBD\x9CUser\xEF\xBD\x9C>"
#define DS4_CHAT_ASSISTANT "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>"
#define DS4_CHAT_THINK_START "<think>"
#define DS4_CHAT_THINK_END "</think>"

/* The Think-Max paragraph (476 bytes) and the tools text around the schemas
 * (890 bytes before, 99 after), exactly as the official encoder has them. */
extern const char ds4_chat_think_max_prefix[];
extern const char ds4_chat_tools_head[];
extern const char ds4_chat_tools_tail[];

#endif
