/* fuzz_server.c — libFuzzer target for the server's request-to-response
 * path without the engine (`make fuzz`; tests/test_server_fuzz.c also runs
 * it over deterministic mutations).
 *
 * Input: one flag byte (endpoint, piece size), a request body, a NUL, then
 * text standing in for the model's output. The body goes through the
 * endpoint's parser; an accepted request is rendered into a prompt, and the
 * text is run through the turn (stop strings, DSML parser) into the
 * endpoint's emitter. Whatever the bytes: no crash, rejected bodies get a
 * message, and every SSE data line and every JSON body is a JSON object. Run:
 * build-fuzz/fuzz/fuzz_server -max_total_time=60 CORPUS_DIR */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../../src/server/ctx.h"
#include "../../src/server/turn.h"

static int fuzz_write(void *ctx, const char *data, size_t n) {
    ds4_buf_add(ctx, data, n);
    return 0;
}

/* Every "data: " line of an SSE stream, or the whole body, must be JSON
 * (JSON text has no raw newlines, so lines split events safely). */
static void check_output(const srv_request *req, const ds4_buf *out) {
    const char *p = out->p ? out->p : "";
    if (!req->stream) {
        json_t *v = json_loads(p, JSON_ALLOW_NUL, NULL);
        if (!json_is_object(v)) abort(); /* a failed json_pack would show as null */
        json_decref(v);
        return;
    }
    for (const char *line = p; *line;) {
        const char *end = strchr(line, '\n');
        if (!end) abort(); /* every event ends with a blank line */
        if (!strncmp(line, "data: ", 6) && strncmp(line + 6, "[DONE]", 6)) {
            json_t *v = json_loadb(line + 6, (size_t)(end - line - 6), JSON_ALLOW_NUL, NULL);
            if (!json_is_object(v)) abort();
            json_decref(v);
        }
        line = end + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static const srv_api apis[] = {SRV_API_CHAT, SRV_API_COMPLETIONS, SRV_API_RESPONSES, SRV_API_MESSAGES};
    srv_api api = apis[data[0] & 3];
    size_t piece = (size_t)(data[0] >> 2) + 1;
    const char *body = (const char *)data + 1;
    size_t rest = size - 1;
    const char *nul = memchr(body, 0, rest);
    size_t body_len = nul ? (size_t)(nul - body) : rest;
    const char *text = nul ? nul + 1 : "";
    size_t text_len = nul ? rest - body_len - 1 : 0;

    srv_parse_defaults d = {.think = SRV_THINK_HIGH};
    srv_request req;
    srv_error e;
    if (srv_parse_request(api, body, body_len, &d, &req, &e)) {
        if (!e.message[0] || e.status < 400) abort();
        char *eb = srv_error_body(&e, api);
        json_t *v = json_loads(eb, 0, NULL);
        if (!v) abort();
        json_decref(v);
        free(eb);
        return 0;
    }
    srv_ctx c = {.ctx_size = 32768};
    char *prompt = NULL;
    if (srv_render_prompt(&c, &req, &prompt, &e) == 0) free(prompt);

    ds4_buf out = {0};
    srv_emitter *em = srv_emitter_new(&req, "chatcmpl-1", 0, fuzz_write, &out);
    srv_usage u = {.prompt_tokens = 3};
    srv_emit_begin(em, &u);
    srv_turn *t = srv_turn_new(&req, em);
    for (size_t at = 0; at < text_len && !srv_turn_stop_hit(t); at += piece) {
        srv_turn_greedy(t);
        srv_turn_text(t, text + at, text_len - at < piece ? text_len - at : piece);
    }
    srv_result res = {0};
    srv_turn_finish(t, SRV_FINISH_STOP, NULL, &res);
    res.usage = u;
    srv_emit_finish(em, &res);
    check_output(&req, &out);
    srv_result_free(&res);
    srv_turn_free(t);
    srv_emitter_free(em);
    ds4_buf_free(&out);
    srv_request_free(&req);
    return 0;
}
