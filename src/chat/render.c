/* render.c — the conversation → prompt text renderer (see chat.h).
 *
 * This follows the official encoder's algorithm (encoding_dsv4.py:
 * encode_messages, merge_tool_messages, sort_tool_results_by_call_order,
 * _drop_thinking_messages, render_message) step by step:
 *
 *  1. Tool results become user turns: each tool message is a <tool_result>
 *     block of the user turn before it (a new user turn if there is none),
 *     and a user message that follows a user turn joins it; the blocks of a
 *     turn are joined with "\n\n".
 *  2. In a turn with several tool results, the results are put in the order
 *     of the calls of the latest assistant message with calls (matched by
 *     id; unknown ids count as position 0; the sort is stable).
 *  3. Thinking mode without tools drops history (unless keep_reasoning,
 *     the official drop_thinking=False): before the last user-like
 *     (user/developer) turn, assistants lose their reasoning and developer
 *     messages disappear. With tools nothing is dropped and every assistant
 *     keeps "<reasoning></think>".
 *  4. Each turn is rendered; a user/developer turn followed by an assistant
 *     turn or by nothing gets "<｜Assistant｜>" + "<think>" (thinking, and
 *     the turn is the last user-like one or nothing is dropped) or
 *     "</think>".
 *
 * Where ds4 (server-spec §4) differs from the official encoder we follow the
 * official encoder:
 *  - tools text: the official wording (ds4 rewrote it: "user question",
 *    entity-escaping rules, an extra closing sentence), placed after the
 *    first system/developer message's content instead of before it;
 *  - tool schemas, response_format and non-string arguments are
 *    re-serialised Python-style ({"a": 1}), not sent as the client's bytes
 *    or minified;
 *  - system messages stay where they are instead of being hoisted, and
 *    developer messages render as a user turn;
 *  - tool results are separated by "\n\n" and written raw (ds4 escapes an
 *    inner </tool_result>);
 *  - in thinking mode an assistant turn before the last user turn has no
 *    "</think>" at all (ds4 writes one), and with tools the history keeps
 *    every reasoning;
 *  - the arguments of a call that are not JSON become one "arguments"
 *    string parameter (as ds4), but JSON that is not an object is an error.
 * Additions of ours: exact replay of sampled DSML (ds4_chat_msg.raw_dsml)
 * and the escaping corner cases described in dsml.h. */
#include "chat.h"

#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../common/xalloc.h"
#include "dsml.h"
#include "json_py.h"

/* ---- the official fixed texts (encoding_dsv4.py, DeepSeek-V4-Flash) ---- */

/* REASONING_EFFORT_MAX: 476 bytes, SHA-256 f7a24f3b…50f7 (model-spec §10). */
const char ds4_chat_think_max_prefix[] =
    "Reasoning Effort: Absolute maximum with no shortcuts permitted.\n"
    "You MUST be very thorough in your thinking and comprehensively decompose the problem to "
    "resolve the root cause, rigorously stress-testing your logic against all potential paths, "
    "edge cases, and adversarial scenarios.\n"
    "Explicitly write out your entire deliberation process, documenting every intermediate step, "
    "considered alternative, and rejected hypothesis to ensure absolutely no assumption is left "
    "unchecked.\n\n";

/* TOOLS_TEMPLATE with its tokens filled in, split at {tool_schemas}:
 * 890 bytes, SHA-256 c7c90426…329c, and 99 bytes, SHA-256 69070285…b5a7.
 * (The 1183/146-byte texts whose hashes model-spec §10 lists are ds4's
 * rewrite of this text, not the official one.) */
#define BAR "\xEF\xBD\x9C"
#define DSML BAR "DSML" BAR
const char ds4_chat_tools_head[] =
    "## Tools\n\n"
    "You have access to a set of tools to help answer the user's question. You can invoke tools "
    "by writing a \"<" DSML "tool_calls>\" block like the following:\n\n"
    "<" DSML "tool_calls>\n"
    "<" DSML "invoke name=\"$TOOL_NAME\">\n"
    "<" DSML "parameter name=\"$PARAMETER_NAME\" string=\"true|false\">$PARAMETER_VALUE</" DSML
    "parameter>\n"
    "...\n"
    "</" DSML "invoke>\n"
    "<" DSML "invoke name=\"$TOOL_NAME2\">\n"
    "...\n"
    "</" DSML "invoke>\n"
    "</" DSML "tool_calls>\n\n"
    "String parameters should be specified as is and set `string=\"true\"`. For all other types "
    "(numbers, booleans, arrays, objects), pass the value in JSON format and set "
    "`string=\"false\"`.\n\n"
    "If thinking_mode is enabled (triggered by <think>), you MUST output your complete reasoning "
    "inside <think>...</think> BEFORE any tool calls or final response.\n\n"
    "Otherwise, output directly after </think> with tool calls or final response.\n\n"
    "### Available Tool Schemas\n\n";
const char ds4_chat_tools_tail[] =
    "\n\nYou MUST strictly follow the above defined tool name and parameter schemas to invoke "
    "tool calls.\n";

/* response_format_template before {schema}. */
static const char response_format_head[] =
    "## Response Format:\n\nYou MUST strictly adhere to the following schema to reply:\n";

ds4_think_mode ds4_chat_effective_mode(ds4_think_mode mode, int ctx) {
    if (mode == DS4_THINK_MAX && ctx < DS4_THINK_MAX_MIN_CTX) return DS4_THINK_HIGH;
    return mode;
}

/* ---- the preprocessed conversation (steps 1-3) ---- */

typedef struct block {
    bool is_result;
    const char *text;   /* user text or tool result content */
    const char *use_id; /* tool result: the call id it answers */
} block;

typedef struct turn {
    ds4_role role;           /* SYSTEM, DEVELOPER, USER or ASSISTANT */
    const ds4_chat_msg *msg; /* NULL for a user turn or the inserted system turn */
    block *blocks;           /* user turns */
    int n_blocks;
    bool carries_header;     /* tools / response_format go here */
} turn;

typedef struct conv {
    turn *turns;
    int n;
    block *blocks; /* storage for every user turn's blocks */
    int n_blocks;
} conv;

static const char *str_or_empty(const char *s) { return s ? s : ""; }

static bool is_user_like(ds4_role r) { return r == DS4_ROLE_USER || r == DS4_ROLE_DEVELOPER; }

static void conv_free(conv *cv) {
    free(cv->turns);
    free(cv->blocks);
}

/* Steps 1 and the header placement. Blocks of one user turn are contiguous
 * in cv->blocks because a user turn only grows while it is the last turn. */
static void conv_build(conv *cv, const ds4_chat *c, bool header) {
    cv->turns = ds4_xcalloc((size_t)c->n_msgs + 1, sizeof *cv->turns);
    cv->blocks = ds4_xcalloc((size_t)c->n_msgs + 1, sizeof *cv->blocks);
    if (header && !(c->n_msgs > 0 && (c->msgs[0].role == DS4_ROLE_SYSTEM ||
                                      c->msgs[0].role == DS4_ROLE_DEVELOPER))) {
        cv->turns[cv->n++] = (turn){.role = DS4_ROLE_SYSTEM, .carries_header = true};
    }
    for (int i = 0; i < c->n_msgs; i++) {
        const ds4_chat_msg *m = &c->msgs[i];
        if (m->role == DS4_ROLE_USER || m->role == DS4_ROLE_TOOL) {
            block b = {.is_result = m->role == DS4_ROLE_TOOL,
                       .text = str_or_empty(m->content),
                       .use_id = str_or_empty(m->tool_call_id)};
            turn *last = cv->n ? &cv->turns[cv->n - 1] : NULL;
            if (!last || last->role != DS4_ROLE_USER) {
                last = &cv->turns[cv->n++];
                *last = (turn){.role = DS4_ROLE_USER, .blocks = cv->blocks + cv->n_blocks};
            }
            cv->blocks[cv->n_blocks++] = b;
            last->n_blocks++;
        } else {
            bool head = header && i == 0 &&
                        (m->role == DS4_ROLE_SYSTEM || m->role == DS4_ROLE_DEVELOPER);
            cv->turns[cv->n++] = (turn){.role = m->role, .msg = m, .carries_header = head};
        }
    }
}

/* Position of call id `id` in the latest calls, 0 if unknown; a repeated id
 * takes its last position (a Python dict assignment). */
static int call_order(const ds4_chat_msg *calls_msg, const char *id) {
    int pos = 0;
    if (!calls_msg) return 0;
    for (int i = 0; i < calls_msg->n_calls; i++) {
        const char *cid = calls_msg->calls[i].id;
        if (cid && *cid && strcmp(cid, id) == 0) pos = i;
    }
    return pos;
}

/* Step 2: stable insertion sort of each turn's result blocks by call order
 * (in place; other blocks keep their slots). Only when the latest calls
 * have an id, as in the official encoder. */
static void conv_sort_results(conv *cv) {
    const ds4_chat_msg *calls_msg = NULL;
    bool any_id = false;
    size_t cap = (size_t)cv->n_blocks + 1;
    int *slots = ds4_xmalloc(cap * sizeof *slots), *keys = ds4_xmalloc(cap * sizeof *keys);
    block *sorted = ds4_xmalloc(cap * sizeof *sorted);
    for (int t = 0; t < cv->n; t++) {
        turn *tu = &cv->turns[t];
        if (tu->role == DS4_ROLE_ASSISTANT && tu->msg->n_calls > 0) {
            calls_msg = tu->msg;
            any_id = false;
            for (int i = 0; i < calls_msg->n_calls; i++)
                if (calls_msg->calls[i].id && *calls_msg->calls[i].id) any_id = true;
            continue;
        }
        if (tu->role != DS4_ROLE_USER || !any_id) continue;
        int n = 0;
        for (int b = 0; b < tu->n_blocks; b++)
            if (tu->blocks[b].is_result) slots[n++] = b;
        if (n < 2) continue;
        for (int i = 0; i < n; i++) {
            block b = tu->blocks[slots[i]];
            int key = call_order(calls_msg, b.use_id), j = i;
            while (j > 0 && keys[j - 1] > key) {
                sorted[j] = sorted[j - 1];
                keys[j] = keys[j - 1];
                j--;
            }
            sorted[j] = b;
            keys[j] = key;
        }
        for (int i = 0; i < n; i++) tu->blocks[slots[i]] = sorted[i];
    }
    free(slots);
    free(keys);
    free(sorted);
}

static int last_user_like(const conv *cv) {
    for (int t = cv->n - 1; t >= 0; t--)
        if (is_user_like(cv->turns[t].role)) return t;
    return -1;
}

/* Step 3 (thinking mode without tools): developer turns before the last
 * user-like turn go; the reasoning of earlier assistants is never rendered
 * (render_turn writes no think part for them). */
static void conv_drop_thinking(conv *cv) {
    int last = last_user_like(cv), n = 0;
    for (int t = 0; t < cv->n; t++) {
        if (t < last && cv->turns[t].role == DS4_ROLE_DEVELOPER) continue;
        cv->turns[n++] = cv->turns[t];
    }
    cv->n = n;
}

/* ---- step 4 ---- */

typedef struct header {
    ds4_buf tools; /* "\n\n" + tools text, or empty */
    ds4_buf rf;    /* "\n\n" + response format text, or empty */
} header;

static int header_build(header *h, const ds4_chat *c, bool *present, ds4_err *err) {
    *present = false;
    if (c->n_tools > 0) {
        ds4_buf_adds(&h->tools, "\n\n");
        ds4_buf_adds(&h->tools, ds4_chat_tools_head);
        for (int i = 0; i < c->n_tools; i++) {
            const char *t = str_or_empty(c->tools[i]);
            json_t *v = ds4_json_py_load(t, strlen(t), NULL, err);
            if (!v) {
                char where[48];
                snprintf(where, sizeof where, "tools[%d]: invalid JSON", i);
                return ds4_fail_prefix(err, where);
            }
            if (i) ds4_buf_addc(&h->tools, '\n');
            ds4_json_py_dump(&h->tools, v);
            json_decref(v);
        }
        ds4_buf_adds(&h->tools, ds4_chat_tools_tail);
        *present = true;
    }
    if (c->response_format) {
        const char *t = c->response_format;
        json_t *v = ds4_json_py_load(t, strlen(t), NULL, err);
        if (!v) return ds4_fail_prefix(err, "response_format: invalid JSON");
        if (ds4_json_py_truthy(v)) {
            ds4_buf_adds(&h->rf, "\n\n");
            ds4_buf_adds(&h->rf, response_format_head);
            ds4_json_py_dump(&h->rf, v);
            *present = true;
        }
        json_decref(v);
    }
    return 0;
}

typedef struct render_ctx {
    const conv *cv;
    const header *h;
    bool thinking;   /* thinking or Think Max */
    bool max_prefix; /* Think Max */
    bool drop;       /* history reasoning is dropped (no tools) */
    int last_user;   /* index of the last user-like turn, -1 if none */
} render_ctx;

static int render_turn(const render_ctx *rc, int t, ds4_buf *out, ds4_err *err) {
    const turn *tu = &rc->cv->turns[t];
    const ds4_chat_msg *m = tu->msg;
    const header *h = rc->h;
    bool thinking = rc->thinking, drop = rc->drop;
    int last_user = rc->last_user;
    if (t == 0 && rc->max_prefix) ds4_buf_adds(out, ds4_chat_think_max_prefix);
    switch (tu->role) {
    case DS4_ROLE_SYSTEM:
    case DS4_ROLE_DEVELOPER:
        if (tu->role == DS4_ROLE_DEVELOPER) {
            if (!m->content || !*m->content)
                return ds4_fail(err, "a developer message must have content");
            ds4_buf_adds(out, DS4_CHAT_USER);
        }
        if (m) ds4_buf_adds(out, str_or_empty(m->content));
        if (tu->carries_header) {
            ds4_buf_add(out, h->tools.p, h->tools.len);
            ds4_buf_add(out, h->rf.p, h->rf.len);
        }
        break;
    case DS4_ROLE_USER:
        ds4_buf_adds(out, DS4_CHAT_USER);
        for (int b = 0; b < tu->n_blocks; b++) {
            if (b) ds4_buf_adds(out, "\n\n");
            if (tu->blocks[b].is_result) ds4_buf_adds(out, "<tool_result>");
            ds4_buf_adds(out, tu->blocks[b].text);
            if (tu->blocks[b].is_result) ds4_buf_adds(out, "</tool_result>");
        }
        break;
    case DS4_ROLE_ASSISTANT:
        if (thinking && (!drop || t > last_user)) {
            ds4_buf_adds(out, str_or_empty(m->reasoning));
            ds4_buf_adds(out, DS4_CHAT_THINK_END);
        }
        ds4_buf_adds(out, str_or_empty(m->content));
        if (m->raw_dsml) {
            ds4_buf_adds(out, m->raw_dsml);
        } else if (m->n_calls > 0 && ds4_dsml_render_calls(out, m->calls, m->n_calls, err)) {
            return -1;
        }
        ds4_buf_adds(out, DS4_CHAT_EOS);
        break;
    case DS4_ROLE_TOOL:
        break; /* merged into user turns by conv_build */
    }
    if (t + 1 < rc->cv->n && rc->cv->turns[t + 1].role != DS4_ROLE_ASSISTANT) return 0;
    if (is_user_like(tu->role)) {
        ds4_buf_adds(out, DS4_CHAT_ASSISTANT);
        bool open_think = thinking && (!drop || t >= last_user);
        ds4_buf_adds(out, open_think ? DS4_CHAT_THINK_START : DS4_CHAT_THINK_END);
    }
    return 0;
}

/* The counts and pointers of c are consistent (the rest is checked while
 * rendering). */
static int check_shape(const ds4_chat *c, ds4_err *err) {
    if (c->n_msgs < 0 || (c->n_msgs > 0 && !c->msgs))
        return ds4_fail(err, "bad message list (%d messages)", c->n_msgs);
    if (c->n_tools < 0 || (c->n_tools > 0 && !c->tools))
        return ds4_fail(err, "bad tool list (%d tools)", c->n_tools);
    for (int i = 0; i < c->n_msgs; i++) {
        const ds4_chat_msg *m = &c->msgs[i];
        if ((unsigned)m->role > DS4_ROLE_TOOL) return ds4_fail(err, "message %d: bad role", i);
        if (m->n_calls < 0 || (m->n_calls > 0 && !m->calls))
            return ds4_fail(err, "message %d: bad tool call list (%d calls)", i, m->n_calls);
    }
    return 0;
}

int ds4_chat_render(const ds4_chat *c, const ds4_chat_opts *o, ds4_buf *out, ds4_err *err) {
    if (check_shape(c, err)) return -1;
    ds4_think_mode mode = ds4_chat_effective_mode(o->mode, o->ctx);
    header h = {0};
    bool header_present;
    conv cv = {0};
    size_t mark = out->len;
    int rc = header_build(&h, c, &header_present, err);
    if (rc == 0) {
        conv_build(&cv, c, header_present);
        conv_sort_results(&cv);
        /* The official encoder keeps all reasoning once any tools are given. */
        render_ctx r = {.cv = &cv, .h = &h, .thinking = mode != DS4_THINK_NONE,
                        .max_prefix = mode == DS4_THINK_MAX,
                        .drop = c->n_tools == 0 && !o->keep_reasoning};
        if (r.thinking && r.drop) conv_drop_thinking(&cv);
        r.last_user = last_user_like(&cv);
        ds4_buf_adds(out, DS4_CHAT_BOS);
        for (int t = 0; t < cv.n && rc == 0; t++) rc = render_turn(&r, t, out, err);
    }
    if (rc) ds4_buf_truncate(out, mark);
    conv_free(&cv);
    ds4_buf_free(&h.tools);
    ds4_buf_free(&h.rf);
    return rc;
}
