/* test_server_parse.c — request parsing for every endpoint (server-spec
 * §2.3–§2.7) and the native error bodies (§2.16): fields and defaults,
 * thinking controls and model aliases, message flattening, Anthropic
 * blocks and system parts, Responses items (reasoning attachment, call
 * merging, namespaces), and a useful 400 for each kind of bad input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../src/server/server.h"
#include "testutil.h"

static srv_parse_defaults defaults = {.think = SRV_THINK_HIGH};

static int parse(srv_api api, const char *body, srv_request *r, srv_error *e) {
    return srv_parse_request(api, body, strlen(body), &defaults, r, e);
}

/* Parses a body that must fail; checks status and that the message
 * contains `needle`. */
static void bad(srv_api api, const char *body, int status, const char *needle) {
    srv_request r;
    srv_error e;
    int rc = parse(api, body, &r, &e);
    CHECK(rc == -1, "should fail: %s", body);
    if (rc == -1)
        CHECK(e.status == status && strstr(e.message, needle), "%s -> %d '%s' (want %d, '%s')", body, e.status,
              e.message, status, needle);
    else
        srv_request_free(&r);
}

static void test_chat(void) {
    srv_request r;
    srv_error e;
    const char *body =
        "{\"model\":\"m1\",\"max_completion_tokens\":77,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":5000,"
        "\"seed\":42,\"stop\":[\"a\",\"\",\"bb\"],\"stream\":true,\"stream_options\":{\"include_usage\":true},"
        "\"n\":3,\"logprobs\":true,\"ignore_eos\":true,\"messages\":["
        "{\"role\":\"developer\",\"content\":\"dev\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},\"b\",{\"type\":\"text\",\"text\":\"c\"}]},"
        "{\"role\":\"assistant\",\"content\":null,\"reasoning_content\":\"why\",\"tool_calls\":["
        "{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1}}},"
        "{\"id\":\"call_2\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{\\\"y\\\": 2}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"r1\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}}],"
        "\"tool_choice\":\"required\"}";
    CHECK(parse(SRV_API_CHAT, body, &r, &e) == 0, "chat parses: %s", e.message);
    CHECK(!strcmp(r.model, "m1") && r.max_tokens == 77 && r.stream && r.include_usage && r.ignore_eos, "chat fields");
    CHECK(r.temperature_set && r.temperature == 0.5f && r.top_p_set && r.top_k == 1024 && r.seed == 42, "sampling");
    CHECK(r.n_stop == 2 && !strcmp(r.stop[1], "bb"), "stop: empty strings dropped");
    CHECK(r.n_msgs == 4 && r.msgs[0].role == SRV_ROLE_DEVELOPER, "developer role kept");
    CHECK(!strcmp(r.msgs[1].content, "abc"), "content parts concatenated: %s", r.msgs[1].content);
    CHECK(!strcmp(r.msgs[2].content, "") && !strcmp(r.msgs[2].reasoning, "why"), "null content, reasoning");
    CHECK(r.msgs[2].n_calls == 2 && !strcmp(r.msgs[2].calls[0].arguments, "{\"x\":1}") &&
              !strcmp(r.msgs[2].calls[1].arguments, "{\"y\": 2}"),
          "arguments: object dumped, string kept");
    CHECK(r.msgs[3].role == SRV_ROLE_TOOL && !strcmp(r.msgs[3].tool_call_id, "call_1"), "tool message");
    CHECK(r.n_tools == 1 && r.has_tools && strstr(r.tools[0], "\"name\":\"f\"") && !strstr(r.tools[0], "\"type\":\"function\""),
          "tool schema = the function object: %s", r.tools[0]);
    CHECK(r.think == SRV_THINK_HIGH && !r.think_explicit, "thinking on by default");
    srv_request_free(&r);

    /* defaults */
    CHECK(parse(SRV_API_CHAT, "{\"messages\":[{\"content\":\"x\"}]}", &r, &e) == 0, "minimal chat");
    CHECK(!strcmp(r.model, "deepseek-v4-flash") && r.max_tokens == -1 && !r.stream && r.msgs[0].role == SRV_ROLE_USER &&
              !r.ignore_eos,
          "defaults: model, max_tokens, role user");
    srv_request_free(&r);

    /* tool_choice none disables tools */
    CHECK(parse(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":\"none\","
                              "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\"}}]}", &r, &e) == 0, "none");
    CHECK(r.n_tools == 1 && !r.has_tools, "tool_choice none -> tools inactive");
    srv_request_free(&r);
}

static srv_think think_of(srv_api api, const char *body) {
    srv_request r;
    srv_error e;
    if (parse(api, body, &r, &e)) {
        CHECK(0, "%s: %s", body, e.message);
        return (srv_think)-1;
    }
    srv_think t = r.think;
    srv_request_free(&r);
    return t;
}

static void test_thinking(void) {
#define M "\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]"
    CHECK(think_of(SRV_API_CHAT, "{" M "}") == SRV_THINK_HIGH, "default high");
    CHECK(think_of(SRV_API_CHAT, "{\"model\":\"deepseek-chat\"," M "}") == SRV_THINK_NONE, "deepseek-chat alias");
    CHECK(think_of(SRV_API_CHAT, "{\"model\":\"deepseek-chat\",\"thinking\":true," M "}") == SRV_THINK_HIGH,
          "explicit control beats the alias");
    CHECK(think_of(SRV_API_CHAT, "{\"model\":\"deepseek-reasoner\",\"think\":false," M "}") == SRV_THINK_NONE, "think:false");
    CHECK(think_of(SRV_API_CHAT, "{\"reasoning_effort\":\"max\"," M "}") == SRV_THINK_MAX, "effort max");
    CHECK(think_of(SRV_API_CHAT, "{\"reasoning_effort\":\"low\"," M "}") == SRV_THINK_HIGH, "effort low -> high");
    CHECK(think_of(SRV_API_CHAT, "{\"reasoning_effort\":\"none\"," M "}") == SRV_THINK_NONE, "effort none");
    CHECK(think_of(SRV_API_CHAT, "{\"reasoning_effort\":null," M "}") == SRV_THINK_HIGH, "effort null ignored");
    CHECK(think_of(SRV_API_CHAT, "{\"thinking\":{\"type\":\"disabled\"},\"reasoning_effort\":\"max\"," M "}") == SRV_THINK_NONE,
          "disabled wins over an effort");
    CHECK(think_of(SRV_API_CHAT, "{\"thinking\":{\"type\":\"adaptive\"},\"model\":\"deepseek-chat\"," M "}") == SRV_THINK_NONE,
          "unknown thinking type keeps the default (alias applies)");
    CHECK(think_of(SRV_API_MESSAGES, "{\"output_config\":{\"effort\":\"max\"}," M "}") == SRV_THINK_MAX, "output_config.effort");
    CHECK(think_of(SRV_API_MESSAGES, "{\"thinking\":{\"type\":\"enabled\",\"budget_tokens\":10}," M "}") == SRV_THINK_HIGH,
          "anthropic enabled");
    CHECK(think_of(SRV_API_RESPONSES, "{\"input\":\"x\",\"reasoning\":{\"effort\":\"minimal\"}}") == SRV_THINK_HIGH,
          "responses minimal -> high");
    CHECK(think_of(SRV_API_RESPONSES, "{\"input\":\"x\",\"reasoning\":{\"effort\":\"none\"}}") == SRV_THINK_NONE,
          "responses none");
    CHECK(think_of(SRV_API_COMPLETIONS, "{\"prompt\":\"x\",\"think\":false}") == SRV_THINK_NONE, "completions think");
#undef M
}

static void test_anthropic(void) {
    srv_request r;
    srv_error e;
    const char *body =
        "{\"max_tokens\":9,\"stop_sequences\":[\"S\"],\"system\":[{\"type\":\"text\",\"text\":\"x-anthropic-billing: 1\"},"
        "{\"type\":\"text\",\"text\":\"one\"},\"two\\n\",{\"type\":\"text\",\"text\":\"three\"}],"
        "\"tools\":[{\"name\":\"get\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\"},\"cache_control\":{}}],"
        "\"messages\":[{\"content\":\"hi\",\"role\":\"user\"},"
        "{\"role\":\"assistant\",\"content\":[{\"type\":\"thinking\",\"thinking\":\"hmm\",\"signature\":\"s\"},"
        "{\"type\":\"redacted_thinking\",\"data\":\"z\"},{\"type\":\"text\",\"text\":\"calling\"},"
        "{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get\",\"input\":{\"k\":\"v\"}}]},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"toolu_1\","
        "\"content\":[{\"type\":\"text\",\"text\":\"res\"}]},{\"type\":\"text\",\"text\":\"more\"}]}]}";
    CHECK(parse(SRV_API_MESSAGES, body, &r, &e) == 0, "anthropic parses: %s", e.message);
    CHECK(r.max_tokens == 9 && r.n_stop == 1, "fields");
    CHECK(r.n_msgs == 5, "system + user + assistant + tool + user (%d)", r.n_msgs);
    CHECK(r.msgs[0].role == SRV_ROLE_SYSTEM && !strcmp(r.msgs[0].content, "one\ntwo\nthree"),
          "system parts joined, x-anthropic dropped: '%s'", r.msgs[0].content);
    CHECK(r.msgs[2].role == SRV_ROLE_ASSISTANT && !strcmp(r.msgs[2].content, "calling") &&
              !strcmp(r.msgs[2].reasoning, "hmm") && r.msgs[2].n_calls == 1 &&
              !strcmp(r.msgs[2].calls[0].arguments, "{\"k\":\"v\"}"),
          "assistant blocks");
    CHECK(r.msgs[3].role == SRV_ROLE_TOOL && !strcmp(r.msgs[3].content, "res") && !strcmp(r.msgs[3].tool_call_id, "toolu_1"),
          "tool_result -> tool message");
    CHECK(r.msgs[4].role == SRV_ROLE_USER && !strcmp(r.msgs[4].content, "more"), "text after results -> user");
    CHECK(r.n_tools == 1 && !strcmp(r.tools[0], "{\"name\":\"get\",\"description\":\"d\",\"parameters\":{\"type\":\"object\"}}"),
          "tool in function shape: %s", r.tools[0]);
    srv_request_free(&r);
    /* Claude Code 2.x puts its environment block in a role "system" message */
    CHECK(parse(SRV_API_MESSAGES,
                "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"system\",\"content\":"
                "[{\"type\":\"text\",\"text\":\"# Env\"}]},{\"role\":\"system\",\"content\":\"more\"}]}",
                &r, &e) == 0 &&
              r.n_msgs == 3 && r.msgs[1].role == SRV_ROLE_SYSTEM && !strcmp(r.msgs[1].content, "# Env") &&
              r.msgs[2].role == SRV_ROLE_SYSTEM && !strcmp(r.msgs[2].content, "more"),
          "role system messages: %s", e.message);
    srv_request_free(&r);
}

static void test_responses(void) {
    srv_request r;
    srv_error e;
    const char *body =
        "{\"instructions\":\"be nice\",\"max_output_tokens\":5,\"store\":false,\"reasoning\":{\"summary\":\"auto\"},"
        "\"tools\":[{\"type\":\"function\",\"name\":\"shell\",\"parameters\":{}},"
        "{\"type\":\"namespace\",\"name\":\"mcp__x__\",\"tools\":[{\"name\":\"read\",\"description\":\"r\"}]},"
        "{\"type\":\"web_search\"}],"
        "\"input\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_text\",\"text\":\"hi\"}]},"
        "{\"type\":\"reasoning\",\"summary\":[{\"type\":\"summary_text\",\"text\":\"think\"}]},"
        "{\"type\":\"message\",\"role\":\"assistant\",\"content\":[{\"type\":\"output_text\",\"text\":\"ok\"}]},"
        "{\"type\":\"function_call\",\"call_id\":\"call_9\",\"name\":\"shell\",\"arguments\":\"{}\"},"
        "{\"type\":\"function_call_output\",\"call_id\":\"call_9\",\"output\":\"done\"},"
        "{\"type\":\"reasoning\",\"summary\":[],\"content\":[{\"type\":\"reasoning_text\",\"text\":\"again\"}]}]}";
    CHECK(parse(SRV_API_RESPONSES, body, &r, &e) == 0, "responses parses: %s", e.message);
    CHECK(r.max_tokens == 5 && r.reasoning_summary, "fields");
    CHECK(r.n_msgs == 5, "system, user, assistant(+call), tool, trailing reasoning (%d)", r.n_msgs);
    CHECK(r.msgs[0].role == SRV_ROLE_SYSTEM && !strcmp(r.msgs[0].content, "be nice"), "instructions first");
    CHECK(r.msgs[2].role == SRV_ROLE_ASSISTANT && !strcmp(r.msgs[2].content, "ok") && !strcmp(r.msgs[2].reasoning, "think") &&
              r.msgs[2].n_calls == 1 && !strcmp(r.msgs[2].calls[0].id, "call_9"),
          "reasoning attached, call merged into the assistant message");
    CHECK(r.msgs[3].role == SRV_ROLE_TOOL && !strcmp(r.msgs[3].content, "done"), "function_call_output");
    CHECK(r.msgs[4].role == SRV_ROLE_ASSISTANT && !strcmp(r.msgs[4].reasoning, "again"), "trailing reasoning");
    CHECK(r.n_tools == 2 && strstr(r.tools[1], "\"name\":\"mcp__x__read\""), "namespace flattened, hosted tools skipped");
    CHECK(r.n_tool_names == 1 && !strcmp(r.tool_names[0].name, "read") && !strcmp(r.tool_names[0].ns, "mcp__x__"),
          "wire name remembered");
    srv_request_free(&r);
    CHECK(parse(SRV_API_RESPONSES, "{\"input\":\"just text\"}", &r, &e) == 0 && r.n_msgs == 1 &&
              r.msgs[0].role == SRV_ROLE_USER,
          "string input");
    srv_request_free(&r);
}

static void test_bad_input(void) {
    bad(SRV_API_CHAT, "{", 400, "invalid JSON");
    bad(SRV_API_CHAT, "", 400, "empty");
    bad(SRV_API_CHAT, "\"str\"", 400, "JSON object");
    bad(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", 400, "UTF-8");
    bad(SRV_API_CHAT, "{}", 400, "missing messages");
    bad(SRV_API_CHAT, "{\"messages\":[]}", 400, "at least one");
    bad(SRV_API_CHAT, "{\"messages\":[1]}", 400, "messages[0]");
    bad(SRV_API_CHAT, "{\"messages\":[{\"role\":7}]}", 400, "role");
    bad(SRV_API_CHAT, "{\"messages\":[{\"role\":\"robot\"}]}", 400, "robot");
    bad(SRV_API_CHAT, "{\"messages\":[{\"content\":[{\"type\":\"input_audio\"}]}]}", 400, "input_audio");
    bad(SRV_API_CHAT, "{\"messages\":[{\"content\":[{\"type\":\"text\",\"text\":5}]}]}", 400, "text");
    bad(SRV_API_CHAT, "{\"messages\":[{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{}}]}]}", 400, "name");
    bad(SRV_API_CHAT, "{\"messages\":[{\"content\":\"x\"}],\"max_tokens\":1.5}", 400, "max_tokens");
    bad(SRV_API_CHAT, "{\"messages\":[{\"content\":\"x\"}],\"temperature\":-1}", 400, "temperature");
    bad(SRV_API_CHAT, "{\"messages\":[{\"content\":\"x\"}],\"stop\":7}", 400, "stop");
    bad(SRV_API_CHAT, "{\"messages\":[{\"content\":\"x\"}],\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\","
                      "\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}", 400, "at most 16");
    bad(SRV_API_CHAT, "{\"messages\":[{\"content\":\"x\"}],\"stream_options\":true}", 400, "stream_options");
    bad(SRV_API_CHAT, "{\"messages\":[{\"content\":\"x\"}],\"tools\":[{\"type\":\"code_interpreter\"}]}", 400, "code_interpreter");
    bad(SRV_API_COMPLETIONS, "{\"prompt\":5}", 400, "prompt");
    bad(SRV_API_MESSAGES, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image\"}]}]}", 400, "image");
    bad(SRV_API_MESSAGES, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 400, "content");
    bad(SRV_API_MESSAGES, "{\"messages\":[{\"role\":\"robot\",\"content\":\"x\"}]}", 400, "expected user, assistant or system");
    bad(SRV_API_MESSAGES, "{\"messages\":[{\"role\":\"system\",\"content\":[{\"type\":\"tool_result\","
                          "\"tool_use_id\":\"t\"}]}]}", 400, "not supported in a system message");
    bad(SRV_API_MESSAGES, "{\"system\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", 400, "system");
    bad(SRV_API_MESSAGES, "{\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t\","
                          "\"name\":\"f\",\"input\":[1]}]}]}", 400, "input");
    bad(SRV_API_RESPONSES, "{\"input\":[{\"type\":\"message\",\"role\":\"user\",\"status\":\"in_progress\",\"content\":\"x\"}]}",
        400, "status");
    bad(SRV_API_RESPONSES, "{\"input\":\"x\",\"tool_choice\":{\"type\":\"function\",\"name\":\"f\"}}", 400, "forced");
    bad(SRV_API_RESPONSES, "{\"input\":\"x\",\"conversation\":\"c\"}", 400, "conversation is not supported");
    bad(SRV_API_RESPONSES, "{\"input\":[]}", 400, "empty");
}

static void test_error_bodies(void) {
    srv_error e;
    srv_error_set(&e, 400, "bad thing");
    char *o = srv_error_body(&e, SRV_API_CHAT);
    CHECK(!strcmp(o, "{\"error\":{\"message\":\"bad thing\",\"type\":\"invalid_request_error\",\"param\":null,\"code\":null}}\n"),
          "OpenAI error body: %s", o);
    free(o);
    srv_error_set(&e, 429, "busy");
    o = srv_error_body(&e, SRV_API_MESSAGES);
    CHECK(!strcmp(o, "{\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"busy\"}}\n"),
          "Anthropic error body: %s", o);
    free(o);
    srv_error_set(&e, 400, "Prompt has 9 tokens, but the configured context size is 8 tokens");
    e.code = "context_length_exceeded";
    e.param = "messages";
    e.n_prompt = 9;
    e.n_ctx = 8;
    o = srv_error_body(&e, SRV_API_CHAT);
    json_t *v = json_loads(o, 0, NULL);
    json_t *err = json_object_get(v, "error");
    CHECK(json_integer_value(json_object_get(err, "n_prompt_tokens")) == 9 &&
              json_integer_value(json_object_get(err, "n_ctx")) == 8 &&
              !strcmp(json_string_value(json_object_get(err, "code")), "context_length_exceeded"),
          "context error body: %s", o);
    json_decref(v);
    free(o);
}

int main(void) {
    test_chat();
    test_thinking();
    test_anthropic();
    test_responses();
    test_bad_input();
    test_error_bodies();
    return TEST_DONE();
}
