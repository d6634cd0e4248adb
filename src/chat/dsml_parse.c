/* dsml_parse.c — incremental parsing of generated text (see dsml.h).
 *
 * A state machine over a small pending buffer. Each piece of text is
 * appended to the buffer and consumed as far as it can be decided:
 *
 *   REASONING  (thinking turns) text up to "</think>"
 *   CONTENT    text up to a tool-call block opener; trailing whitespace is
 *              held back, because the "\n\n" right before a block (the
 *              official separator; any whitespace if the text has no
 *              "\n\n" there) belongs to the block, not to the content
 *   BLOCK      between invokes: whitespace, <invoke name="…"> or </tool_calls>
 *   INVOKE     between parameters: whitespace, <parameter …> or </invoke>
 *   STRING     a string="true" value, streamed as JSON string text
 *   JSON       a string="false" value, collected, validated, re-serialised
 *   AFTER      after </tool_calls>: only whitespace may follow
 *
 * Text that may be the start of a marker ("</thi", "<｜DS", "</｜DSML｜par",
 * "&amp;l") and incomplete UTF-8 stay in the buffer until the next piece
 * decides them. Anything that does not fit the grammar is an error; the
 * official parser (encoding_dsv4.py: parse_tool_calls) is stricter about
 * whitespace between tags ("\n" only), we accept any whitespace there.
 *
 * Marker styles (server-spec §4.5): "<｜DSML｜tool_calls>" (official),
 * "<DSML｜tool_calls>" (first bar missing) and "<tool_calls>" (plain XML)
 * open a block, and that block's other tags must use the same style.
 *
 * The arguments JSON of a call is built as the official decoder builds it,
 * '{"key": value, …}', with string values JSON-escaped and JSON values in
 * Python json.dumps form, so the concatenated CALL_ARGS deltas equal the
 * CALL_END text. */
#define _GNU_SOURCE /* memmem */
#include "dsml.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/json_escape.h"
#include "../common/utf8.h"
#include "../common/xalloc.h"
#include "json_py.h"

#define BAR "\xEF\xBD\x9C"

/* Longest tag (with its attributes) we wait for before calling it malformed. */
#define MAX_TAG_LEN 65536

#define N_STYLES 3
static const char *const style_prefix[N_STYLES] = {(BAR "DSML" BAR), ("DSML" BAR), ""};
static const char *const block_open[N_STYLES] = {("<" BAR "DSML" BAR "tool_calls>"),
                                                 ("<DSML" BAR "tool_calls>"), "<tool_calls>"};
static const char *const param_close[N_STYLES] = {("</" BAR "DSML" BAR "parameter>"),
                                                  ("</DSML" BAR "parameter>"), "</parameter>"};

enum state { ST_REASONING, ST_CONTENT, ST_BLOCK, ST_INVOKE, ST_STRING, ST_JSON, ST_AFTER,
             ST_ERROR, ST_DONE };

struct ds4_dsml_parser {
    ds4_dsml_opts o;
    ds4_dsml_sink sink;
    void *ctx;
    enum state st;
    ds4_buf in;      /* pending input; in.p[pos..in.len) is not consumed yet */
    size_t pos;
    int style;       /* marker style of the open block */
    bool started;    /* a block opener was seen */
    bool closed;     /* </tool_calls> was seen */
    ds4_buf raw;     /* exact bytes of the block, leading whitespace included */
    ds4_buf out;     /* scratch text of the event being sent */
    int n_calls;     /* calls completed so far = index of the current call */
    ds4_buf name;    /* current call's name */
    ds4_buf args;    /* current call's arguments JSON so far */
    ds4_buf keys;    /* current call's parameter names, each NUL-terminated */
    ds4_buf key;     /* current parameter's name */
    ds4_buf value;   /* current JSON value's bytes */
    bool json_in_str, json_esc;
};

/* ---- small helpers ---- */

static bool is_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

enum match { NO_MATCH, PARTIAL, FULL };

/* Does s[0..n) start with lit (FULL), or is it a proper prefix of it? */
static enum match match_lit(const char *s, size_t n, const char *lit, size_t litlen) {
    if (n >= litlen) return memcmp(s, lit, litlen) == 0 ? FULL : NO_MATCH;
    return memcmp(s, lit, n) == 0 ? PARTIAL : NO_MATCH;
}

/* The escaped spelling of the close tag inside a string value:
 * "&" ("amp;")*k "lt;" + close tag without its "<" (dsml.h). */
static enum match match_escape(const char *s, size_t n, const char *close, size_t close_len,
                               size_t *len, int *k) {
    size_t i = 1;
    *k = 0;
    enum match m;
    while ((m = match_lit(s + i, n - i, "amp;", 4)) == FULL) {
        i += 4;
        (*k)++;
    }
    if (m == PARTIAL) return PARTIAL;
    m = match_lit(s + i, n - i, "lt;", 3);
    if (m != FULL) return m;
    i += 3;
    m = match_lit(s + i, n - i, close + 1, close_len - 1);
    if (m != FULL) return m;
    *len = i + close_len - 1;
    return FULL;
}

static void send(ds4_dsml_parser *p, ds4_dsml_event_type type, int index, const char *text,
                 size_t len) {
    ds4_dsml_event ev = {type, index, text ? text : "", text ? len : 0};
    p->sink(p->ctx, &ev);
}

/* Sends reasoning or content text. */
static void send_text(ds4_dsml_parser *p, ds4_dsml_event_type type, const char *s, size_t n) {
    if (n == 0) return;
    ds4_buf_truncate(&p->out, 0);
    ds4_utf8_sanitize(&p->out, s, n);
    send(p, type, 0, p->out.p, p->out.len);
}

static void send_args(ds4_dsml_parser *p, const char *s, size_t n) {
    ds4_buf_add(&p->args, s, n);
    send(p, DS4_DSML_CALL_ARGS, p->n_calls, s, n);
}

/* Sends the ERROR event (fmt has one %s or %.Ns for arg, which may be a
 * piece of the generated text) and stops the parser. */
static int fail(ds4_dsml_parser *p, const char *fmt, const char *arg) {
    char msg[512];
    snprintf(msg, sizeof msg, fmt, arg);
    p->st = ST_ERROR;
    ds4_buf_truncate(&p->out, 0);
    ds4_utf8_sanitize(&p->out, msg, strlen(msg));
    send(p, DS4_DSML_ERROR, p->n_calls, p->out.p, p->out.len);
    return -1;
}

/* Sends an ERROR event "what: 'TEXT'" quoting text[0..len) (at most 60
 * bytes). Callers quote exactly the bytes that decided the error, so the
 * message does not depend on how the text was split into pieces. */
static int fail_text(ds4_dsml_parser *p, const char *what, const char *text, size_t len) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s: '%.*s'", what, (int)(len < 60 ? len : 60), text);
    return fail(p, "%s", msg);
}

/* Marks n pending bytes consumed; inside a block they are part of it. */
static void consume(ds4_dsml_parser *p, size_t n) {
    if (p->st >= ST_BLOCK && p->st <= ST_JSON) ds4_buf_add(&p->raw, p->in.p + p->pos, n);
    p->pos += n;
}

/* ---- tags ---- */

enum word { W_TOOL_CALLS, W_INVOKE, W_PARAMETER };

typedef struct tag {
    bool close;
    enum word word;
    bool has_name;
    int string; /* -1 absent, 0 false, 1 true */
} tag;

/* Attribute value with the XML entities decoded (names are escaped by
 * ds4_dsml_render_calls; other entities a model writes are decoded too) and
 * bytes that are not UTF-8 replaced by U+FFFD. False if it holds a control
 * character, which no tool or parameter name has. */
static bool decode_attr(ds4_buf *out, const char *s, size_t n) {
    static const struct { const char *ent, *ch; } ents[] = {
        {"&amp;", "&"}, {"&quot;", "\""}, {"&lt;", "<"}, {"&gt;", ">"}, {"&apos;", "'"}};
    ds4_buf raw = {0};
    ds4_buf_truncate(out, 0);
    for (size_t i = 0; i < n;) {
        size_t e = 0;
        for (; s[i] == '&' && e < sizeof ents / sizeof ents[0]; e++) {
            size_t l = strlen(ents[e].ent);
            if (n - i >= l && memcmp(s + i, ents[e].ent, l) == 0) break;
        }
        if (s[i] == '&' && e < sizeof ents / sizeof ents[0]) {
            ds4_buf_adds(&raw, ents[e].ch);
            i += strlen(ents[e].ent);
        } else {
            if ((unsigned char)s[i] < 0x20) {
                ds4_buf_free(&raw);
                return false;
            }
            ds4_buf_addc(&raw, s[i++]);
        }
    }
    ds4_utf8_sanitize(out, ds4_buf_str(&raw), raw.len);
    ds4_buf_free(&raw);
    return true;
}

/* "Need more text" for a tag that is still incomplete: 0, or an error once
 * the pending text is longer than any sane tag (the same error as for a
 * complete tag that long, so the outcome does not depend on the split). */
static long need_more(ds4_dsml_parser *p, size_t n) {
    return n > MAX_TAG_LEN ? fail(p, "tool call tag longer than %s bytes", "65536") : 0;
}

/* Lexes the tag at s[0] == '<'. Returns its length, 0 if more text is
 * needed, -1 on error (sent). The name attribute goes to p->key. */
static long lex_tag(ds4_dsml_parser *p, const char *s, size_t n, tag *t) {
    size_t i = 1;
    *t = (tag){.string = -1};
    if (i == n) return need_more(p, n);
    if (s[i] == '/') t->close = true, i++;
    const char *pre = style_prefix[p->style];
    enum match m = match_lit(s + i, n - i, pre, strlen(pre));
    if (m == PARTIAL) return need_more(p, n);
    if (m == NO_MATCH) {
        size_t e = i;
        while (e < n && s[e] == pre[e - i]) e++;
        return fail_text(p, "unexpected text in a tool call block", s, e + 1);
    }
    i += strlen(pre);
    size_t w0 = i;
    while (i < n && ((s[i] >= 'a' && s[i] <= 'z') || s[i] == '_')) i++;
    if (i == n) return need_more(p, n);
    static const char *const words[] = {"tool_calls", "invoke", "parameter"};
    size_t wl = i - w0;
    int wi = 0;
    while (wi < 3 && !(strlen(words[wi]) == wl && memcmp(s + w0, words[wi], wl) == 0)) wi++;
    if (wi == 3) return fail_text(p, "unknown tag in a tool call block", s, i + 1);
    t->word = (enum word)wi;
    for (;;) {
        size_t ws0 = i;
        while (i < n && is_ws(s[i])) i++;
        if (i == n) return need_more(p, n);
        if (s[i] == '>') return i + 1 > MAX_TAG_LEN ? need_more(p, i + 1) : (long)i + 1;
        if (t->close) return fail_text(p, "closing tag with attributes", s, i + 1);
        if (i == ws0) return fail_text(p, "bad attribute in tag", s, i + 1);
        size_t a0 = i;
        while (i < n && s[i] >= 'a' && s[i] <= 'z') i++;
        size_t al = i - a0;
        if (i + 1 >= n) return need_more(p, n);
        if (al == 0 || s[i] != '=' || s[i + 1] != '"')
            return fail_text(p, "bad attribute in tag", s, i + 2);
        i += 2;
        size_t v0 = i;
        while (i < n && s[i] != '"') i++;
        if (i == n) return need_more(p, n);
        size_t vl = i - v0;
        i++;
        if (al == 4 && memcmp(s + a0, "name", 4) == 0 && !t->has_name) {
            t->has_name = true;
            if (!decode_attr(&p->key, s + v0, vl))
                return fail_text(p, "control character in a name attribute", s, i);
        } else if (al == 6 && memcmp(s + a0, "string", 6) == 0 && t->string < 0) {
            if (vl == 4 && memcmp(s + v0, "true", 4) == 0) t->string = 1;
            else if (vl == 5 && memcmp(s + v0, "false", 5) == 0) t->string = 0;
            else return fail_text(p, "string attribute must be \"true\" or \"false\"", s, i);
        } else {
            return fail_text(p, "unknown or repeated attribute in tag", s, i);
        }
    }
}

/* ---- states ---- */

/* Each step returns 1 if it made progress, 0 if it needs more text, -1 on
 * error. `final` means no more text will come. */

static int step_reasoning(ds4_dsml_parser *p, bool final) {
    const char *s = p->in.p + p->pos;
    size_t n = p->in.len - p->pos;
    const char *hit = memmem(s, n, "</think>", 8);
    if (hit) {
        send_text(p, DS4_DSML_REASONING, s, (size_t)(hit - s));
        consume(p, (size_t)(hit - s) + 8);
        p->st = ST_CONTENT;
        return 1;
    }
    size_t keep = 0;
    if (!final) {
        for (size_t k = n < 7 ? n : 7; k > 0 && !keep; k--)
            if (memcmp(s + n - k, "</think>", k) == 0) keep = k;
        keep += ds4_utf8_incomplete_tail(s, n - keep);
    }
    send_text(p, DS4_DSML_REASONING, s, n - keep);
    consume(p, n - keep);
    return 0;
}

static int step_content(ds4_dsml_parser *p, bool final) {
    const char *s = p->in.p + p->pos;
    size_t n = p->in.len - p->pos, stop = n;
    for (size_t i = 0; p->o.tools && i < n && stop == n; i++) {
        if (s[i] != '<') continue;
        for (int k = 0; k < N_STYLES; k++) {
            size_t ml = strlen(block_open[k]);
            enum match m = match_lit(s + i, n - i, block_open[k], ml);
            if (m == FULL) {
                /* The block takes the "\n\n" before it (the official
                 * separator) or, without one, all whitespace before it. */
                size_t w = i;
                while (w > 0 && is_ws(s[w - 1])) w--;
                if (i - w >= 2 && s[i - 1] == '\n' && s[i - 2] == '\n') w = i - 2;
                send_text(p, DS4_DSML_CONTENT, s, w);
                consume(p, w);
                p->st = ST_BLOCK;
                p->style = k;
                p->started = true;
                consume(p, i - w + ml);
                return 1;
            }
            if (m == PARTIAL && stop == n) stop = i;
        }
    }
    if (final) stop = n;
    size_t emit = stop;
    if (!final && p->o.tools)
        while (emit > 0 && is_ws(s[emit - 1])) emit--;
    if (!final) emit -= ds4_utf8_incomplete_tail(s, emit);
    send_text(p, DS4_DSML_CONTENT, s, emit);
    consume(p, emit);
    return 0;
}

static int start_param(ds4_dsml_parser *p, const tag *t) {
    const char *k = ds4_buf_str(&p->key);
    if (!t->has_name) return fail(p, "parameter without a name in call to '%s'", p->name.p);
    if (t->string < 0) return fail(p, "parameter '%s' has no string=\"true|false\" attribute", k);
    for (size_t off = 0; off < p->keys.len; off += strlen(p->keys.p + off) + 1)
        if (strcmp(p->keys.p + off, k) == 0) return fail(p, "duplicate parameter '%s'", k);
    ds4_buf_add(&p->keys, k, strlen(k) + 1);
    ds4_buf_truncate(&p->out, 0);
    if (p->args.len > 1) ds4_buf_adds(&p->out, ", ");
    ds4_buf_addc(&p->out, '"');
    ds4_json_escape(&p->out, p->key.p, p->key.len, DS4_JSON_BAD_REPLACE);
    ds4_buf_adds(&p->out, t->string ? "\": \"" : "\": ");
    send_args(p, p->out.p, p->out.len);
    ds4_buf_truncate(&p->value, 0);
    p->json_in_str = p->json_esc = false;
    p->st = t->string ? ST_STRING : ST_JSON;
    return 1;
}

static int step_structural(ds4_dsml_parser *p) {
    const char *s = p->in.p + p->pos;
    size_t n = p->in.len - p->pos, i = 0;
    while (i < n && is_ws(s[i])) i++;
    consume(p, i);
    s += i, n -= i;
    if (n == 0) return 0;
    if (s[0] != '<') return fail_text(p, "unexpected text in a tool call block", s, 1);
    tag t;
    long len = lex_tag(p, s, n, &t);
    if (len <= 0) return (int)len;
    consume(p, (size_t)len);
    if (p->st == ST_BLOCK) {
        if (!t.close && t.word == W_INVOKE) {
            if (!t.has_name || t.string >= 0)
                return fail_text(p, "invoke needs exactly a name attribute", s, (size_t)len);
            ds4_buf_truncate(&p->name, 0);
            ds4_buf_add(&p->name, p->key.p, p->key.len);
            ds4_buf_truncate(&p->args, 0);
            ds4_buf_truncate(&p->keys, 0);
            send(p, DS4_DSML_CALL_START, p->n_calls, p->name.p, p->name.len);
            send_args(p, "{", 1);
            p->st = ST_INVOKE;
            return 1;
        }
        if (t.close && t.word == W_TOOL_CALLS) {
            if (p->n_calls == 0) return fail(p, "empty tool_calls block%s", "");
            p->st = ST_AFTER;
            p->closed = true;
            return 1;
        }
        return fail_text(p, "expected <invoke> or </tool_calls>, got", s, (size_t)len);
    }
    if (!t.close && t.word == W_PARAMETER) return start_param(p, &t);
    if (t.close && t.word == W_INVOKE) {
        send_args(p, "}", 1);
        send(p, DS4_DSML_CALL_END, p->n_calls, p->args.p, p->args.len);
        p->n_calls++;
        p->st = ST_BLOCK;
        return 1;
    }
    return fail_text(p, "expected <parameter> or </invoke>, got", s, (size_t)len);
}

static int step_string(ds4_dsml_parser *p) {
    const char *s = p->in.p + p->pos;
    size_t n = p->in.len - p->pos, i = 0, run = 0;
    const char *close = param_close[p->style];
    size_t close_len = strlen(close);
    ds4_buf_truncate(&p->out, 0);
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        if (c == '<') {
            enum match m = match_lit(s + i, n - i, close, close_len);
            if (m == PARTIAL) break;
            if (m == FULL) {
                ds4_json_escape(&p->out, s + run, i - run, DS4_JSON_BAD_REPLACE);
                ds4_buf_addc(&p->out, '"');
                send_args(p, p->out.p, p->out.len);
                consume(p, i + close_len);
                p->st = ST_INVOKE;
                return 1;
            }
        } else if (c == '&') {
            size_t len;
            int k;
            enum match m = match_escape(s + i, n - i, close, close_len, &len, &k);
            if (m == PARTIAL) break;
            if (m == FULL) {
                ds4_json_escape(&p->out, s + run, i - run, DS4_JSON_BAD_REPLACE);
                if (k == 0) {
                    ds4_json_escape(&p->out, close, close_len, DS4_JSON_BAD_REPLACE);
                } else {
                    /* one "amp;" less */
                    ds4_json_escape(&p->out, "&", 1, DS4_JSON_BAD_REPLACE);
                    ds4_json_escape(&p->out, s + i + 5, len - 5, DS4_JSON_BAD_REPLACE);
                }
                i += len;
                run = i;
                continue;
            }
        } else if (c >= 0x80 && ds4_utf8_seq((const unsigned char *)s + i, n - i) == 0) {
            break;
        }
        i++;
    }
    ds4_json_escape(&p->out, s + run, i - run, DS4_JSON_BAD_REPLACE);
    if (p->out.len) send_args(p, p->out.p, p->out.len);
    consume(p, i);
    return 0;
}

static int finish_json_value(ds4_dsml_parser *p) {
    const char *v = p->value.p ? p->value.p : "";
    size_t a = 0, b = p->value.len;
    while (a < b && is_ws(v[a])) a++;
    while (b > a && is_ws(v[b - 1])) b--;
    ds4_err err;
    json_t *j = ds4_json_py_load(v + a, b - a, NULL, &err);
    if (!j) {
        char msg[480];
        snprintf(msg, sizeof msg, "parameter '%.100s' (string=\"false\") is not valid JSON: %.300s",
                 ds4_buf_str(&p->key), err.msg);
        return fail(p, "%s", msg);
    }
    ds4_buf_truncate(&p->out, 0);
    ds4_json_py_dump(&p->out, j);
    json_decref(j);
    send_args(p, p->out.p, p->out.len);
    p->st = ST_INVOKE;
    return 1;
}

static int step_json(ds4_dsml_parser *p) {
    const char *s = p->in.p + p->pos;
    size_t n = p->in.len - p->pos, i = 0;
    const char *close = param_close[p->style];
    size_t close_len = strlen(close);
    while (i < n) {
        char c = s[i];
        if (c == '<') {
            enum match m = match_lit(s + i, n - i, close, close_len);
            if (m == PARTIAL) break;
            if (m == FULL) {
                ds4_buf_add(&p->value, s, i);
                consume(p, i + close_len);
                return finish_json_value(p);
            }
        }
        if (p->json_in_str) {
            if (p->json_esc) p->json_esc = false;
            else if (c == '\\') p->json_esc = true;
            else if (c == '"') p->json_in_str = false;
        } else if (c == '"') {
            p->json_in_str = true;
        }
        i++;
    }
    ds4_buf_add(&p->value, s, i);
    consume(p, i);
    return 0;
}

static int step_after(ds4_dsml_parser *p) {
    const char *s = p->in.p + p->pos;
    size_t n = p->in.len - p->pos, i = 0;
    while (i < n && is_ws(s[i])) i++;
    p->pos += i;
    if (i < n) return fail_text(p, "text after the tool_calls block", s + i, 1);
    return 0;
}

static int run(ds4_dsml_parser *p, bool final) {
    int r;
    do {
        switch (p->st) {
        case ST_REASONING: r = step_reasoning(p, final); break;
        case ST_CONTENT: r = step_content(p, final); break;
        case ST_BLOCK:
        case ST_INVOKE: r = step_structural(p); break;
        case ST_STRING: r = step_string(p); break;
        case ST_JSON: r = step_json(p); break;
        case ST_AFTER: r = step_after(p); break;
        default: return -1;
        }
    } while (r > 0);
    if (r < 0) return -1;
    memmove(p->in.p, p->in.p + p->pos, p->in.len - p->pos);
    ds4_buf_truncate(&p->in, p->in.len - p->pos);
    p->pos = 0;
    return 0;
}

/* ---- public API ---- */

ds4_dsml_parser *ds4_dsml_parser_new(const ds4_dsml_opts *o, ds4_dsml_sink sink, void *ctx) {
    ds4_dsml_parser *p = ds4_xcalloc(1, sizeof *p);
    p->o = *o;
    p->sink = sink;
    p->ctx = ctx;
    p->st = o->thinking ? ST_REASONING : ST_CONTENT;
    ds4_buf_add(&p->in, "", 0); /* in.p is never NULL */
    return p;
}

void ds4_dsml_parser_free(ds4_dsml_parser *p) {
    if (!p) return;
    ds4_buf *bufs[] = {&p->in, &p->raw, &p->out, &p->name, &p->args, &p->keys, &p->key,
                       &p->value};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) ds4_buf_free(bufs[i]);
    free(p);
}

int ds4_dsml_feed(ds4_dsml_parser *p, const char *text, size_t len) {
    if (p->st == ST_ERROR) return -1;
    if (p->st == ST_DONE) return 0;
    ds4_buf_add(&p->in, text, len);
    return run(p, false);
}

int ds4_dsml_finish(ds4_dsml_parser *p) {
    if (p->st == ST_ERROR) return -1;
    if (p->st == ST_DONE) return 0;
    if (run(p, true)) return -1;
    static const char *const where[] = {
        [ST_BLOCK] = "between invokes", [ST_INVOKE] = "inside an invoke",
        [ST_STRING] = "inside a string parameter", [ST_JSON] = "inside a JSON parameter"};
    if (p->st >= ST_BLOCK && p->st <= ST_JSON)
        return fail(p, "unterminated tool call block (text ended %s)", where[p->st]);
    p->st = ST_DONE;
    send(p, DS4_DSML_DONE, p->n_calls, NULL, 0);
    return 0;
}

ds4_dsml_pos ds4_dsml_position(const ds4_dsml_parser *p) {
    const char *s = p->in.p + p->pos;
    size_t n = p->in.len - p->pos;
    switch (p->st) {
    case ST_CONTENT: {
        size_t i = 0;
        while (i < n && is_ws(s[i])) i++;
        return n - i >= 2 && s[i] == '<' ? DS4_DSML_POS_STRUCTURAL : DS4_DSML_POS_TEXT;
    }
    case ST_BLOCK:
    case ST_INVOKE: return DS4_DSML_POS_STRUCTURAL;
    case ST_STRING: return n && s[0] == '<' ? DS4_DSML_POS_STRUCTURAL : DS4_DSML_POS_STRING;
    case ST_JSON:
        if (n && s[0] == '<') return DS4_DSML_POS_STRUCTURAL;
        return p->json_in_str ? DS4_DSML_POS_JSON_STRING : DS4_DSML_POS_JSON;
    default: return DS4_DSML_POS_TEXT;
    }
}

bool ds4_dsml_calls_closed(const ds4_dsml_parser *p) { return p->closed; }

const char *ds4_dsml_raw_block(const ds4_dsml_parser *p, size_t *len) {
    if (len) *len = p->raw.len;
    return p->started ? ds4_buf_str(&p->raw) : NULL;
}

/* ---- whole messages ---- */

typedef struct collector {
    ds4_dsml_message *msg;
    char error[512];
} collector;

static void collect(void *ctx, const ds4_dsml_event *ev) {
    collector *c = ctx;
    ds4_dsml_message *m = c->msg;
    switch (ev->type) {
    case DS4_DSML_REASONING: ds4_buf_add(&m->reasoning, ev->text, ev->len); break;
    case DS4_DSML_CONTENT: ds4_buf_add(&m->content, ev->text, ev->len); break;
    case DS4_DSML_CALL_START: {
        ds4_dsml_call *calls = ds4_xrealloc(m->calls, ((size_t)m->n_calls + 1) * sizeof *calls);
        m->calls = calls;
        ds4_buf name = {0};
        ds4_buf_add(&name, ev->text, ev->len);
        calls[m->n_calls++] = (ds4_dsml_call){ds4_buf_take(&name), NULL};
        break;
    }
    case DS4_DSML_CALL_END: {
        ds4_buf args = {0};
        ds4_buf_add(&args, ev->text, ev->len);
        m->calls[m->n_calls - 1].arguments = ds4_buf_take(&args);
        break;
    }
    case DS4_DSML_ERROR: snprintf(c->error, sizeof c->error, "%s", ev->text); break;
    default: break;
    }
}

int ds4_dsml_parse_message(const char *text, size_t len, const ds4_dsml_opts *o,
                           ds4_dsml_message *msg, ds4_err *err) {
    memset(msg, 0, sizeof *msg);
    collector c = {msg, {0}};
    ds4_dsml_parser *p = ds4_dsml_parser_new(o, collect, &c);
    int rc = ds4_dsml_feed(p, text, len);
    if (rc == 0) rc = ds4_dsml_finish(p);
    size_t rl;
    const char *raw = ds4_dsml_raw_block(p, &rl);
    if (raw) ds4_buf_add(&msg->raw_block, raw, rl);
    ds4_dsml_parser_free(p);
    if (rc) return ds4_fail(err, "%s", c.error);
    return 0;
}

void ds4_dsml_message_free(ds4_dsml_message *msg) {
    ds4_buf_free(&msg->reasoning);
    ds4_buf_free(&msg->content);
    ds4_buf_free(&msg->raw_block);
    for (int i = 0; i < msg->n_calls; i++) {
        free(msg->calls[i].name);
        free(msg->calls[i].arguments);
    }
    free(msg->calls);
    memset(msg, 0, sizeof *msg);
}
