/* dsml_render.c — canonical DSML for tool calls (see dsml.h).
 *
 * The layout is the official encoder's (encoding_dsv4.py:
 * tool_calls_template, tool_call_template, encode_arguments_to_dsml):
 * parameters joined by "\n" inside an invoke (so an invoke without
 * parameters has an empty line), invokes joined by "\n" inside the block. */
#include "dsml.h"

#include <string.h>

#include "json_py.h"

#define BAR "\xEF\xBD\x9C" /* U+FF5C FULLWIDTH VERTICAL LINE */
#define DSML BAR "DSML" BAR
static const char param_close[] = "</" DSML "parameter>";

/* Attribute value: only '&' and '"' are escaped (see dsml.h). */
static void add_attr(ds4_buf *out, const char *s) {
    for (; *s; s++) {
        if (*s == '&') ds4_buf_adds(out, "&amp;");
        else if (*s == '"') ds4_buf_adds(out, "&quot;");
        else ds4_buf_addc(out, *s);
    }
}

/* Length of "&" ("amp;")* "lt;" + close-tag-without-"<" at s, or 0. */
static size_t escaped_close_len(const char *s, size_t n) {
    size_t i = 1;
    if (n == 0 || s[0] != '&') return 0;
    while (n - i >= 4 && memcmp(s + i, "amp;", 4) == 0) i += 4;
    size_t tail = sizeof param_close - 2; /* close tag without '<' */
    if (n - i < 3 + tail || memcmp(s + i, "lt;", 3) != 0 ||
        memcmp(s + i + 3, param_close + 1, tail) != 0)
        return 0;
    return i + 3 + tail;
}

static void add_string_value(ds4_buf *out, const char *s, size_t n) {
    size_t run = 0, i = 0;
    const size_t close_len = sizeof param_close - 1;
    while (i < n) {
        if (s[i] == '<' && n - i >= close_len && memcmp(s + i, param_close, close_len) == 0) {
            ds4_buf_add(out, s + run, i - run);
            ds4_buf_adds(out, "&lt;");
            ds4_buf_add(out, param_close + 1, close_len - 1);
            i += close_len;
            run = i;
        } else if (s[i] == '&' && escaped_close_len(s + i, n - i)) {
            ds4_buf_add(out, s + run, i - run);
            ds4_buf_adds(out, "&amp;");
            i++;
            run = i;
        } else {
            i++;
        }
    }
    ds4_buf_add(out, s + run, n - run);
}

static void add_json_value(ds4_buf *out, const json_t *v) {
    ds4_buf tmp = {0};
    ds4_json_py_dump(&tmp, v);
    const size_t close_len = sizeof param_close - 1;
    size_t run = 0;
    for (size_t i = 0; i + close_len <= tmp.len; i++) {
        if (tmp.p[i] == '<' && memcmp(tmp.p + i, param_close, close_len) == 0) {
            ds4_buf_add(out, tmp.p + run, i - run);
            ds4_buf_adds(out, "\\u003c");
            run = i + 1;
        }
    }
    ds4_buf_add(out, tmp.p + run, tmp.len - run);
    ds4_buf_free(&tmp);
}

static void add_param_open(ds4_buf *out, const char *key, bool is_string) {
    ds4_buf_adds(out, "<" DSML "parameter name=\"");
    add_attr(out, key);
    ds4_buf_adds(out, is_string ? "\" string=\"true\">" : "\" string=\"false\">");
}

static int add_invoke(ds4_buf *out, const ds4_tool_call *c, int index, ds4_err *err) {
    ds4_buf_adds(out, "<" DSML "invoke name=\"");
    add_attr(out, c->name ? c->name : "");
    ds4_buf_adds(out, "\">\n");
    const char *args = c->arguments;
    bool unrepresentable = false;
    ds4_err jerr;
    json_t *v = args ? ds4_json_py_load(args, strlen(args), &unrepresentable, &jerr) : NULL;
    if (unrepresentable) {
        return ds4_fail(err, "tool call %d (%s): arguments: %s", index, c->name ? c->name : "?",
                        jerr.msg);
    } else if (!v) {
        /* Not JSON: the official encoder falls back to {"arguments": text}
         * (and for a missing text to {"arguments": None}). */
        add_param_open(out, "arguments", args != NULL);
        if (args) add_string_value(out, args, strlen(args));
        else ds4_buf_adds(out, "null");
        ds4_buf_adds(out, param_close);
    } else if (!json_is_object(v)) {
        json_decref(v);
        return ds4_fail(err, "tool call %d (%s): arguments must be a JSON object", index,
                        c->name ? c->name : "?");
    } else {
        const char *key;
        size_t klen;
        json_t *val;
        bool first = true;
        json_object_keylen_foreach(v, key, klen, val) {
            (void)klen;
            if (!first) ds4_buf_addc(out, '\n');
            first = false;
            bool is_string = json_is_string(val);
            add_param_open(out, key, is_string);
            if (is_string) add_string_value(out, json_string_value(val), json_string_length(val));
            else add_json_value(out, val);
            ds4_buf_adds(out, param_close);
        }
        json_decref(v);
    }
    ds4_buf_adds(out, "\n</" DSML "invoke>");
    return 0;
}

int ds4_dsml_render_calls(ds4_buf *out, const ds4_tool_call *calls, int n, ds4_err *err) {
    size_t mark = out->len;
    ds4_buf_adds(out, "\n\n<" DSML "tool_calls>\n");
    for (int i = 0; i < n; i++) {
        if (i) ds4_buf_addc(out, '\n');
        if (add_invoke(out, &calls[i], i, err)) {
            ds4_buf_truncate(out, mark);
            return -1;
        }
    }
    ds4_buf_adds(out, "\n</" DSML "tool_calls>");
    return 0;
}
