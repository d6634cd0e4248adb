/* test_server_turn.c — the server's adapter layer fed synthetic model
 * output: generated text (with reasoning, content and a DSML tool block) is
 * split into pieces of every size, run through the turn (stop filter + DSML
 * parser) into each endpoint's emitter, and the resulting SSE events and
 * JSON bodies are checked against the protocol rules of server-spec §2.9 and
 * §2.12–§2.16: OpenAI tool_calls argument deltas that concatenate to the
 * call's JSON, Anthropic thinking/text/tool_use blocks with input_json_delta,
 * Responses function_call items, finish reasons, unterminated and malformed
 * blocks, stop strings, and the exact-replay tool memory. A random model
 * cannot be made to write DSML, so this is where the mapping is proven. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../src/server/ctx.h"
#include "../src/chat/chat.h"
#include "../src/server/turn.h"
#include "testutil.h"

#define BAR "\xEF\xBD\x9C"
#define D BAR "DSML" BAR

static const char *const CALL_TEXT =
    "Let me check.</think>I'll look it up.\n\n"
    "<" D "tool_calls>\n"
    "<" D "invoke name=\"get_weather\">\n"
    "<" D "parameter name=\"city\" string=\"true\">Paris & <Lyon> \"x\"</" D "parameter>\n"
    "<" D "parameter name=\"days\" string=\"false\">[1, 2]</" D "parameter>\n"
    "</" D "invoke>\n"
    "<" D "invoke name=\"noop\">\n"
    "</" D "invoke>\n"
    "</" D "tool_calls>";
static const char *const RAW_BLOCK_START = "\n\n<" D "tool_calls>";

static srv_parse_defaults defaults_high = {.think = SRV_THINK_HIGH};

static int write_buf(void *ctx, const char *data, size_t n) {
    ds4_buf_add(ctx, data, n);
    return 0;
}

typedef struct run {
    srv_request req;
    ds4_buf out;
    srv_result res;
    json_t *events; /* SSE: [{event, data}] */
} run;

/* Parses body as api's request, feeds text in pieces of `piece` bytes
 * (0 = whole), finishes with `finish`, and collects the output. */
static void run_turn(run *r, srv_api api, const char *body, const char *text, size_t piece, srv_finish finish) {
    memset(r, 0, sizeof *r);
    srv_error e;
    if (srv_parse_request(api, body, strlen(body), &defaults_high, &r->req, &e)) {
        CHECK(0, "request did not parse: %s", e.message);
        return;
    }
    srv_emitter *em = srv_emitter_new(&r->req, "chatcmpl-7", 1700000000, write_buf, &r->out);
    srv_usage u = {.prompt_tokens = 10, .cached_tokens = 4};
    srv_emit_begin(em, &u);
    srv_turn *t = srv_turn_new(&r->req, em);
    size_t n = strlen(text);
    for (size_t i = 0; i < n && !srv_turn_stop_hit(t) && !srv_turn_calls_closed(t);) {
        size_t k = piece ? piece : n;
        if (k > n - i) k = n - i;
        srv_turn_text(t, text + i, k);
        i += k;
    }
    srv_turn_finish(t, finish, finish == SRV_FINISH_ERROR ? "test error" : NULL, &r->res);
    r->res.usage = u;
    r->res.usage.completion_tokens = 5;
    srv_emit_finish(em, &r->res);
    srv_turn_free(t);
    srv_emitter_free(em);
    r->events = json_array();
    if (!r->req.stream) return;
    const char *p = r->out.p ? r->out.p : "";
    while (*p) {
        const char *end = strstr(p, "\n\n");
        if (!end) {
            CHECK(0, "SSE ends without a blank line: %s", p);
            break;
        }
        json_t *ev = json_object();
        for (const char *line = p; line < end;) {
            const char *nl = memchr(line, '\n', (size_t)(end - line));
            if (!nl) nl = end;
            if (!strncmp(line, "event: ", 7)) json_object_set_new(ev, "event", json_stringn(line + 7, (size_t)(nl - line - 7)));
            if (!strncmp(line, "data: ", 6)) {
                json_t *data = json_loadb(line + 6, (size_t)(nl - line - 6), JSON_DECODE_ANY, NULL);
                json_object_set_new(ev, "data", data ? data : json_stringn(line + 6, (size_t)(nl - line - 6)));
            }
            line = nl + 1;
        }
        if (json_object_get(ev, "data")) json_array_append_new(r->events, ev);
        else json_decref(ev);
        p = end + 2;
    }
}

static void run_free(run *r) {
    srv_request_free(&r->req);
    srv_result_free(&r->res);
    ds4_buf_free(&r->out);
    json_decref(r->events);
}

static bool json_text_equal(const char *a, const char *b) {
    json_t *x = json_loads(a, JSON_DECODE_ANY, NULL), *y = json_loads(b, JSON_DECODE_ANY, NULL);
    bool eq = x && y && json_equal(x, y);
    json_decref(x);
    json_decref(y);
    return eq;
}

static bool is_id(const char *s, const char *prefix, size_t hex) {
    size_t pl = strlen(prefix);
    if (!s || strncmp(s, prefix, pl) || strlen(s) != pl + hex) return false;
    for (size_t i = pl; s[i]; i++)
        if (!strchr("0123456789abcdef", s[i])) return false;
    return true;
}

static const char *CHAT_TOOLS =
    "{\"stream\":true,\"stream_options\":{\"include_usage\":true},\"messages\":[{\"role\":\"user\",\"content\":\"w?\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{}}}]}";

static void test_openai_stream(size_t piece) {
    run r;
    run_turn(&r, SRV_API_CHAT, CHAT_TOOLS, CALL_TEXT, piece, SRV_FINISH_STOP);
    ds4_buf reasoning = {0}, content = {0}, args[2] = {{0}};
    const char *ids[2] = {0}, *names[2] = {0};
    size_t n = json_array_size(r.events), i;
    json_t *ev;
    int finish_at = -1;
    json_array_foreach(r.events, i, ev) {
        json_t *data = json_object_get(ev, "data");
        json_t *choice = json_array_get(json_object_get(data, "choices"), 0);
        json_t *delta = json_object_get(choice, "delta");
        const char *s;
        if ((s = json_string_value(json_object_get(delta, "reasoning_content")))) ds4_buf_adds(&reasoning, s);
        if ((s = json_string_value(json_object_get(delta, "content")))) ds4_buf_adds(&content, s);
        size_t k;
        json_t *tc;
        json_array_foreach(json_object_get(delta, "tool_calls"), k, tc) {
            int idx = (int)json_integer_value(json_object_get(tc, "index"));
            if (idx < 0 || idx > 1) continue;
            json_t *fn = json_object_get(tc, "function");
            if (json_object_get(tc, "id")) {
                ids[idx] = json_string_value(json_object_get(tc, "id"));
                names[idx] = json_string_value(json_object_get(fn, "name"));
            }
            if ((s = json_string_value(json_object_get(fn, "arguments")))) ds4_buf_adds(&args[idx], s);
        }
        if (json_is_string(json_object_get(choice, "finish_reason"))) {
            finish_at = (int)i;
            CHECK(!strcmp(json_string_value(json_object_get(choice, "finish_reason")), "tool_calls"), "finish tool_calls");
        }
    }
    json_t *first = json_array_get(json_object_get(json_object_get(json_array_get(r.events, 0), "data"), "choices"), 0);
    const char *role = json_string_value(json_object_get(json_object_get(first, "delta"), "role"));
    CHECK(role && !strcmp(role, "assistant"), "piece %zu: role chunk first", piece);
    CHECK(reasoning.p && !strcmp(reasoning.p, "Let me check."), "piece %zu: reasoning '%s'", piece, reasoning.p);
    CHECK(content.p && !strcmp(content.p, "I'll look it up."), "piece %zu: content '%s'", piece, content.p);
    CHECK(is_id(ids[0], "call_", 32) && is_id(ids[1], "call_", 32) && strcmp(ids[0], ids[1]), "piece %zu: tool ids", piece);
    CHECK(names[0] && !strcmp(names[0], "get_weather") && names[1] && !strcmp(names[1], "noop"), "piece %zu: names", piece);
    CHECK(args[0].p && json_text_equal(args[0].p, "{\"city\":\"Paris & <Lyon> \\\"x\\\"\",\"days\":[1,2]}"),
          "piece %zu: streamed args '%s'", piece, args[0].p);
    CHECK(args[1].p && json_text_equal(args[1].p, "{}"), "piece %zu: empty args '%s'", piece, args[1].p);
    CHECK(finish_at == (int)n - 3, "piece %zu: finish chunk, usage chunk, [DONE]", piece);
    json_t *usage = json_object_get(json_object_get(json_array_get(r.events, n - 2), "data"), "usage");
    CHECK(json_integer_value(json_object_get(usage, "prompt_tokens")) == 10 &&
              json_integer_value(json_object_get(usage, "total_tokens")) == 15,
          "usage chunk");
    CHECK(!strcmp(json_string_value(json_object_get(json_array_get(r.events, n - 1), "data")), "[DONE]"), "[DONE] last");
    /* the result: same ids, exact raw block for replay */
    CHECK(r.res.n_calls == 2 && ids[0] && !strcmp(r.res.calls[0].id, ids[0]), "result keeps the streamed ids");
    CHECK(r.res.raw_dsml && !strncmp(r.res.raw_dsml, RAW_BLOCK_START, strlen(RAW_BLOCK_START)), "raw block starts at the separator");
    const char *after = strstr(CALL_TEXT, "</think>") + 8;
    ds4_buf whole = {0};
    ds4_buf_adds(&whole, r.res.content);
    ds4_buf_adds(&whole, r.res.raw_dsml ? r.res.raw_dsml : "");
    CHECK(!strcmp(whole.p, after), "content + raw block = generated text");
    ds4_buf_free(&whole);
    ds4_buf_free(&reasoning);
    ds4_buf_free(&content);
    ds4_buf_free(&args[0]);
    ds4_buf_free(&args[1]);
    run_free(&r);
}

static void test_openai_final(void) {
    const char *body = "{\"messages\":[{\"role\":\"user\",\"content\":\"w?\"}],"
                       "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\"}}]}";
    run r;
    run_turn(&r, SRV_API_CHAT, body, CALL_TEXT, 3, SRV_FINISH_STOP);
    json_t *v = json_loads(r.out.p, 0, NULL);
    json_t *msg = json_object_get(json_array_get(json_object_get(v, "choices"), 0), "message");
    CHECK(!strcmp(json_string_value(json_object_get(msg, "content")), "I'll look it up."), "final content");
    CHECK(!strcmp(json_string_value(json_object_get(msg, "reasoning_content")), "Let me check."), "final reasoning");
    json_t *call = json_array_get(json_object_get(msg, "tool_calls"), 0);
    const char *args = json_string_value(json_object_get(json_object_get(call, "function"), "arguments"));
    CHECK(args && !strcmp(args, "{\"city\":\"Paris & <Lyon> \\\"x\\\"\",\"days\":[1,2]}"), "compact arguments: %s", args);
    CHECK(!strcmp(json_string_value(json_object_get(call, "type")), "function"), "call type");
    CHECK(!strcmp(json_string_value(json_object_get(json_array_get(json_object_get(v, "choices"), 0), "finish_reason")),
                  "tool_calls"), "final finish");
    json_t *u = json_object_get(v, "usage");
    CHECK(json_integer_value(json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens")) == 4 &&
              json_integer_value(json_object_get(json_object_get(u, "prompt_tokens_details"), "cache_write_tokens")) == 6,
          "usage details");
    json_decref(v);
    run_free(&r);
}

static void test_anthropic_stream(size_t piece) {
    const char *body = "{\"stream\":true,\"max_tokens\":50,\"messages\":[{\"role\":\"user\",\"content\":\"w?\"}],"
                       "\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\"}}]}";
    run r;
    run_turn(&r, SRV_API_MESSAGES, body, CALL_TEXT, piece, SRV_FINISH_STOP);
    ds4_buf order = {0}, json0 = {0};
    size_t i;
    json_t *ev;
    const char *tool_id = NULL;
    json_array_foreach(r.events, i, ev) {
        json_t *data = json_object_get(ev, "data");
        const char *type = json_string_value(json_object_get(data, "type"));
        CHECK(type && !strcmp(type, json_string_value(json_object_get(ev, "event"))), "event line = type");
        if (!type) continue;
        if (!strcmp(type, "content_block_start")) {
            json_t *cb = json_object_get(data, "content_block");
            ds4_buf_addf(&order, "start%d:%s ", (int)json_integer_value(json_object_get(data, "index")),
                         json_string_value(json_object_get(cb, "type")));
            if (!strcmp(json_string_value(json_object_get(cb, "type")), "tool_use") && !tool_id)
                tool_id = json_string_value(json_object_get(cb, "id"));
        } else if (!strcmp(type, "content_block_delta")) {
            json_t *dl = json_object_get(data, "delta");
            const char *dt = json_string_value(json_object_get(dl, "type"));
            if (!strcmp(dt, "input_json_delta") && json_integer_value(json_object_get(data, "index")) == 2)
                ds4_buf_adds(&json0, json_string_value(json_object_get(dl, "partial_json")));
            if (!strcmp(dt, "signature_delta")) {
                ds4_buf_adds(&order, "sig ");
                CHECK(!strcmp(json_string_value(json_object_get(dl, "signature")), "chatcmpl-7"), "signature = id");
            }
        } else if (!strcmp(type, "content_block_stop")) {
            ds4_buf_addf(&order, "stop%d ", (int)json_integer_value(json_object_get(data, "index")));
        } else if (!strcmp(type, "message_delta")) {
            ds4_buf_adds(&order, "delta ");
            CHECK(!strcmp(json_string_value(json_object_get(json_object_get(data, "delta"), "stop_reason")), "tool_use"),
                  "stop_reason tool_use");
        } else {
            ds4_buf_addf(&order, "%s ", type);
        }
    }
    const char *want = "message_start start0:thinking sig stop0 start1:text stop1 start2:tool_use stop2 "
                       "start3:tool_use stop3 delta message_stop ";
    CHECK(order.p && !strcmp(order.p, want), "piece %zu: block order\n got: %s\nwant: %s", piece, order.p, want);
    CHECK(is_id(tool_id, "toolu_", 32), "toolu_ id: %s", tool_id);
    CHECK(json0.p && json_text_equal(json0.p, "{\"city\":\"Paris & <Lyon> \\\"x\\\"\",\"days\":[1,2]}"),
          "piece %zu: input_json_delta '%s'", piece, json0.p);
    ds4_buf_free(&order);
    ds4_buf_free(&json0);
    run_free(&r);
}

static void test_anthropic_final(void) {
    const char *body = "{\"max_tokens\":50,\"messages\":[{\"role\":\"user\",\"content\":\"w?\"}],"
                       "\"tools\":[{\"name\":\"get_weather\",\"input_schema\":{\"type\":\"object\"}}]}";
    run r;
    run_turn(&r, SRV_API_MESSAGES, body, CALL_TEXT, 0, SRV_FINISH_STOP);
    json_t *v = json_loads(r.out.p, 0, NULL);
    json_t *c = json_object_get(v, "content");
    CHECK(json_array_size(c) == 4, "thinking, text, 2 tool_use");
    CHECK(!strcmp(json_string_value(json_object_get(json_array_get(c, 0), "signature")), "chatcmpl-7"), "signature");
    json_t *input = json_object_get(json_array_get(c, 2), "input");
    json_t *want = json_loads("{\"city\":\"Paris & <Lyon> \\\"x\\\"\",\"days\":[1,2]}", 0, NULL);
    CHECK(json_equal(input, want), "tool_use input object");
    json_t *u = json_object_get(v, "usage");
    CHECK(json_integer_value(json_object_get(u, "input_tokens")) == 0 &&
              json_integer_value(json_object_get(u, "cache_read_input_tokens")) == 4 &&
              json_integer_value(json_object_get(u, "cache_creation_input_tokens")) == 6,
          "Anthropic usage split");
    json_decref(want);
    json_decref(v);
    run_free(&r);
}

static void test_responses_stream(size_t piece) {
    const char *body = "{\"stream\":true,\"input\":\"w?\",\"reasoning\":{\"summary\":\"auto\"},"
                       "\"tools\":[{\"type\":\"function\",\"name\":\"get_weather\",\"parameters\":{}},"
                       "{\"type\":\"namespace\",\"name\":\"ns__\",\"tools\":[{\"name\":\"noop\"}]}]}";
    const char *text_ns = "Hmm.</think>Ok.\n\n<" D "tool_calls>\n<" D "invoke name=\"ns__noop\">\n<" D
                          "parameter name=\"a\" string=\"false\">1</" D "parameter>\n</" D "invoke>\n</" D "tool_calls>";
    run r;
    run_turn(&r, SRV_API_RESPONSES, body, text_ns, piece, SRV_FINISH_STOP);
    size_t i;
    json_t *ev;
    ds4_buf types = {0};
    bool seq_ok = true, fc_ok = false;
    json_array_foreach(r.events, i, ev) {
        json_t *data = json_object_get(ev, "data");
        seq_ok &= json_integer_value(json_object_get(data, "sequence_number")) == (json_int_t)i && !json_object_get(ev, "event");
        const char *type = json_string_value(json_object_get(data, "type"));
        if (strstr(type, ".delta") && i > 0 &&
            !strcmp(type, json_string_value(json_object_get(json_object_get(json_array_get(r.events, i - 1), "data"), "type"))))
            continue; /* collapse runs of deltas */
        ds4_buf_addf(&types, "%s\n", type);
        if (!strcmp(type, "response.function_call_arguments.done")) {
            fc_ok = !strcmp(json_string_value(json_object_get(data, "name")), "noop") &&
                    !strcmp(json_string_value(json_object_get(data, "namespace")), "ns__") &&
                    json_text_equal(json_string_value(json_object_get(data, "arguments")), "{\"a\":1}");
        }
    }
    CHECK(seq_ok, "sequence numbers, no event: lines");
    CHECK(fc_ok, "function call: wire name, namespace, arguments");
    const char *want =
        "response.created\nresponse.output_item.added\nresponse.reasoning_summary_part.added\n"
        "response.reasoning_summary_text.delta\nresponse.output_item.added\nresponse.content_part.added\n"
        "response.output_text.delta\nresponse.reasoning_summary_text.done\nresponse.reasoning_summary_part.done\n"
        "response.output_item.done\nresponse.output_text.done\nresponse.content_part.done\nresponse.output_item.done\n"
        "response.output_item.added\nresponse.function_call_arguments.delta\nresponse.function_call_arguments.done\n"
        "response.output_item.done\nresponse.completed\n";
    CHECK(types.p && !strcmp(types.p, want), "piece %zu: Responses lifecycle\n got:\n%s", piece, types.p);
    json_t *last = json_object_get(json_array_get(r.events, json_array_size(r.events) - 1), "data");
    json_t *out = json_object_get(json_object_get(last, "response"), "output");
    CHECK(json_array_size(out) == 3 &&
              !strcmp(json_string_value(json_object_get(json_array_get(out, 2), "type")), "function_call") &&
              is_id(json_string_value(json_object_get(json_array_get(out, 2), "call_id")), "call_", 32) &&
              is_id(json_string_value(json_object_get(json_array_get(out, 2), "id")), "fc_", 24),
          "completed output: reasoning, message, function_call");
    ds4_buf_free(&types);
    run_free(&r);
}

static void test_failures(void) {
    /* unterminated block: finish error, no calls */
    char cut[1024];
    snprintf(cut, sizeof cut, "%.*s", (int)(strstr(CALL_TEXT, "</" D "invoke>") - CALL_TEXT), CALL_TEXT);
    run r;
    run_turn(&r, SRV_API_CHAT, CHAT_TOOLS, cut, 5, SRV_FINISH_LENGTH);
    CHECK(r.res.finish == SRV_FINISH_ERROR && r.res.n_calls == 0 && r.res.error &&
              !strcmp(r.res.error, "unterminated tool call"),
          "unterminated -> error (%s)", srv_finish_name(r.res.finish));
    CHECK(strstr(r.out.p, "\"finish_reason\":\"error\""), "OpenAI finish_reason error");
    run_free(&r);

    /* a closed block that does not parse becomes text */
    const char *bad = "x</think>Text\n\n<" D "tool_calls>\n<" D "nonsense>\n</" D "tool_calls> tail";
    run_turn(&r, SRV_API_CHAT, CHAT_TOOLS, bad, 2, SRV_FINISH_STOP);
    CHECK(r.res.finish == SRV_FINISH_STOP && r.res.n_calls == 0, "malformed -> stop, no calls (%s, %d)",
          srv_finish_name(r.res.finish), r.res.n_calls);
    CHECK(r.res.content && strstr(r.res.content, "nonsense"), "malformed block returned as content: %s", r.res.content);
    run_free(&r);

    /* tools not active: DSML is plain content */
    run_turn(&r, SRV_API_CHAT, "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"w?\"}]}", CALL_TEXT, 4,
             SRV_FINISH_STOP);
    CHECK(r.res.n_calls == 0 && r.res.finish == SRV_FINISH_STOP && strstr(r.res.content, "tool_calls>"),
          "no tools: DSML stays text");
    CHECK(!strstr(r.out.p, "\"tool_calls\":[{"), "no tool_calls deltas without tools");
    run_free(&r);
}

static void test_stop_strings(void) {
    const char *body = "{\"stream\":true,\"think\":false,\"stop\":[\"END\",\"\",\"zz\"],\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    for (size_t piece = 1; piece <= 6; piece++) {
        run r;
        run_turn(&r, SRV_API_CHAT, body, "abc zENDxyz", piece, SRV_FINISH_LENGTH);
        CHECK(r.res.content && !strcmp(r.res.content, "abc z"), "piece %zu: truncated at stop: '%s'", piece, r.res.content);
        CHECK(!strstr(r.out.p, "EN") && !strstr(r.out.p, "xyz"), "piece %zu: stop text never streamed", piece);
        run_free(&r);
    }
    /* completions: raw text, thinking included */
    run r;
    run_turn(&r, SRV_API_COMPLETIONS, "{\"prompt\":\"p\",\"stream\":true}", "why</think>so", 1, SRV_FINISH_STOP);
    CHECK(!strcmp(r.res.content, "why</think>so") && !r.res.reasoning, "completions keep raw text");
    CHECK(strstr(r.out.p, "\"object\":\"text_completion\"") && strstr(r.out.p, "data: [DONE]"), "completion chunks");
    run_free(&r);
    /* a generated leading <think> is not reasoning; a short text is not held forever */
    for (size_t piece = 1; piece <= 8; piece += 7) {
        run_turn(&r, SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "<think>why</think>so",
                 piece, SRV_FINISH_STOP);
        CHECK(r.res.reasoning && !strcmp(r.res.reasoning, "why") && !strcmp(r.res.content, "so"),
              "piece %zu: leading <think> skipped: [%s] [%s]", piece, r.res.reasoning, r.res.content);
        run_free(&r);
    }
    run_turn(&r, SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "<th", 1, SRV_FINISH_LENGTH);
    CHECK(r.res.reasoning && !strcmp(r.res.reasoning, "<th"), "short text released at the end: [%s]", r.res.reasoning);
    run_free(&r);
    /* invalid UTF-8 from the model is replaced, JSON stays valid */
    run_turn(&r, SRV_API_CHAT, "{\"think\":false,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "a\xff" "b", 1,
             SRV_FINISH_STOP);
    json_t *v = json_loads(r.out.p, 0, NULL);
    CHECK(v != NULL, "valid JSON with invalid model bytes");
    json_decref(v);
    CHECK(!strcmp(r.res.content, "a\xEF\xBF\xBD" "b"), "U+FFFD replacement");
    run_free(&r);
}

static void test_toolmem(void) {
    srv_toolmem *m = srv_toolmem_new(3, 1 << 20);
    const char *ab[] = {"call_a", "call_b"};
    srv_toolmem_remember(m, ab, 2, "BLOCK1", 6);
    const char *c[] = {"call_c"};
    srv_toolmem_remember(m, c, 1, "BLOCK2", 6);
    char *got = srv_toolmem_lookup(m, ab, 2);
    CHECK(got && !strcmp(got, "BLOCK1"), "ids of one block -> the block");
    free(got);
    const char *mixed[] = {"call_a", "call_c"};
    CHECK(!srv_toolmem_lookup(m, mixed, 2), "ids of different blocks -> canonical");
    const char *missing[] = {"call_a", "call_zz"};
    CHECK(!srv_toolmem_lookup(m, missing, 2), "unknown id -> canonical");
    const char *d[] = {"call_d"};
    srv_toolmem_remember(m, d, 1, "BLOCK3", 6); /* 4 ids > max 3: the LRU (call_c) goes */
    CHECK(srv_toolmem_count(m) == 3, "bounded by max ids");
    CHECK(!srv_toolmem_lookup(m, c, 1), "least recently used evicted");
    got = srv_toolmem_lookup(m, ab, 2);
    CHECK(got != NULL, "recently used kept");
    free(got);
    srv_toolmem_free(m);
}

/* The round trip of exact replay: a generated tool turn is remembered; the
 * client sends the calls back as re-serialised JSON (different spacing);
 * the next prompt must contain the sampled bytes, not a canonical
 * rendering. With an unknown id it falls back to the canonical DSML. */
static void test_exact_replay(void) {
    srv_ctx c = {.ctx_size = 32768, .toolmem = srv_toolmem_new(100, 1 << 20)};
    run r;
    run_turn(&r, SRV_API_CHAT, CHAT_TOOLS, CALL_TEXT, 7, SRV_FINISH_STOP);
    CHECK(r.res.n_calls == 2 && r.res.raw_dsml, "tool turn");
    if (r.res.n_calls != 2 || !r.res.raw_dsml) return;
    const char *ids[2] = {r.res.calls[0].id, r.res.calls[1].id};
    srv_toolmem_remember(c.toolmem, ids, 2, r.res.raw_dsml, strlen(r.res.raw_dsml));
    for (int known = 1; known >= 0; known--) {
        char body[2048];
        snprintf(body, sizeof body,
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"w?\"},"
                 "{\"role\":\"assistant\",\"content\":\"I'll look it up.\",\"reasoning_content\":\"Let me check.\","
                 "\"tool_calls\":[{\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
                 "\"arguments\":\"{\\\"days\\\":[1,2],\\\"city\\\":\\\"Paris & <Lyon> \\\\\\\"x\\\\\\\"\\\"}\"}},"
                 "{\"id\":\"%s\",\"type\":\"function\",\"function\":{\"name\":\"noop\",\"arguments\":\"{}\"}}]},"
                 "{\"role\":\"tool\",\"tool_call_id\":\"%s\",\"content\":\"sunny\"},"
                 "{\"role\":\"tool\",\"tool_call_id\":\"%s\",\"content\":\"ok\"}],"
                 "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"parameters\":{}}}]}",
                 known ? ids[0] : "call_other", ids[1], known ? ids[0] : "call_other", ids[1]);
        srv_request req;
        srv_error e;
        CHECK(srv_parse_request(SRV_API_CHAT, body, strlen(body), &defaults_high, &req, &e) == 0, "replay request: %s", e.message);
        char *prompt = NULL;
        CHECK(srv_render_prompt(&c, &req, &prompt, &e) == 0, "render: %s", e.message);
        if (prompt) {
            /* the sampled block has the generated "[1, 2]" and key order city, days */
            ds4_buf want = {0};
            ds4_buf_adds(&want, "I'll look it up.");
            ds4_buf_adds(&want, r.res.raw_dsml);
            bool exact = strstr(prompt, want.p) != NULL;
            CHECK(exact == (known == 1), "%s id: %s rendering", known ? "known" : "unknown", known ? "exact" : "canonical");
            if (!known) CHECK(strstr(prompt, "invoke name=\"get_weather\""), "canonical DSML rendered");
            ds4_buf_free(&want);
        }
        free(prompt);
        srv_request_free(&req);
    }
    run_free(&r);
    srv_toolmem_free(c.toolmem);
}

/* Greedy positions (server-spec §4.7): tags and JSON punctuation are
 * greedy, string payloads and text are sampled. */
static void test_greedy_positions(void) {
    srv_request req;
    srv_error e;
    CHECK(srv_parse_request(SRV_API_CHAT, CHAT_TOOLS, strlen(CHAT_TOOLS), &defaults_high, &req, &e) == 0, "req");
    ds4_buf sink = {0};
    srv_emitter *em = srv_emitter_new(&req, "chatcmpl-1", 0, write_buf, &sink);
    srv_turn *t = srv_turn_new(&req, em);
    static const struct { const char *piece; bool greedy; } steps[] = {
        {"hmm</think>Sure", false},
        {"\n\n<" D "tool_calls>\n<" D "invoke name=\"get_", true},
        {"weather\">\n<" D "parameter name=\"city\" string=\"true\">Par", false},
        {"is</" D "parameter>\n<" D "parameter name=\"days\" string=\"false\">[1", true},
        {", \"a b", false},
    };
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
        srv_turn_text(t, steps[i].piece, strlen(steps[i].piece));
        CHECK(srv_turn_greedy(t) == steps[i].greedy, "after step %zu: greedy %d", i, srv_turn_greedy(t));
    }
    srv_turn_free(t);
    srv_emitter_free(em);
    ds4_buf_free(&sink);
    srv_request_free(&req);
}

/* The thinking continuation (gen.c): what a finished tool-less thinking
 * turn remembers must be exactly the start of its follow-up's prompt, end
 * with the turn's EOS, and leave the dropped reasoning out. */
static void test_thinking_continuation(void) {
    srv_ctx c = {.ctx_size = 32768};
    static const struct { srv_api api; const char *first, *follow; } cases[] = {
        {SRV_API_CHAT, "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"hi\"}]}",
         "{\"messages\":[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"hi\"},"
         "{\"role\":\"assistant\",\"content\":\"Hello there.\"},{\"role\":\"user\",\"content\":\"more\"}]}"},
        {SRV_API_MESSAGES, "{\"system\":\"S\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         "{\"system\":\"S\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\",\"content\":"
         "[{\"type\":\"thinking\",\"thinking\":\"secret plan\",\"signature\":\"x\"},{\"type\":\"text\",\"text\":\"Hello there.\"}]},"
         "{\"role\":\"user\",\"content\":\"more\"}]}"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        srv_request first, follow;
        srv_error e;
        CHECK(srv_parse_request(cases[i].api, cases[i].first, strlen(cases[i].first), &defaults_high, &first, &e) == 0 &&
                  srv_parse_request(cases[i].api, cases[i].follow, strlen(cases[i].follow), &defaults_high, &follow, &e) == 0,
              "requests parse");
        char *visible = srv_render_continuation(&c, &first, "secret plan", "Hello there.");
        char *prompt = NULL;
        CHECK(srv_render_prompt(&c, &follow, &prompt, &e) == 0, "follow-up renders");
        CHECK(visible && prompt && !strncmp(prompt, visible, strlen(visible)), "case %zu: visible is the follow-up's start\n%s\n%s",
              i, visible ? visible : "(null)", prompt ? prompt : "(null)");
        CHECK(visible && strlen(visible) > 20 && !strcmp(visible + strlen(visible) - strlen(DS4_CHAT_EOS), DS4_CHAT_EOS) &&
                  !strstr(visible, "secret plan") && strstr(visible, "Hello there."),
              "case %zu: ends with EOS, reasoning dropped: %s", i, visible ? visible : "(null)");
        free(visible);
        free(prompt);
        srv_request_free(&first);
        srv_request_free(&follow);
    }
    srv_request comp;
    srv_error e;
    CHECK(srv_parse_request(SRV_API_COMPLETIONS, "{\"prompt\":\"x\"}", 14, &defaults_high, &comp, &e) == 0, "completion");
    CHECK(srv_render_continuation(&c, &comp, "r", "c") == NULL, "no continuation for completions");
    srv_request_free(&comp);
}

int main(void) {
    for (size_t piece = 0; piece <= 9; piece++) test_openai_stream(piece);
    test_openai_stream(1000);
    test_openai_final();
    for (size_t piece = 0; piece <= 9; piece += 3) test_anthropic_stream(piece);
    test_anthropic_final();
    for (size_t piece = 0; piece <= 9; piece += 3) test_responses_stream(piece);
    test_failures();
    test_stop_strings();
    test_toolmem();
    test_exact_replay();
    test_greedy_positions();
    test_thinking_continuation();
    return TEST_DONE();
}
