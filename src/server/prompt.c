/* prompt.c — a parsed request becomes prompt text and tokens (client
 * thread, before queueing; server-spec §2.2 "tokenization and the context
 * check happen in the client thread").
 *
 * The chat module renders the conversation exactly as the official encoder
 * does (chat.h). Before rendering, each assistant message with tool calls is
 * looked up in the tool memory: when every call id maps to the same sampled
 * DSML block, that exact block is rendered instead of the canonical one, so
 * the prompt reproduces the tokens already in the KV state (§4.8); ids the
 * memory lacks (after a restart) are first looked up in the disk KV cache's
 * tool-id maps (cache.c).
 * /v1/completions wraps its prompt in the chat template with ds4's system
 * text "You are a helpful assistant" (§2.5). */
#include <stdlib.h>
#include <string.h>

#include "../chat/chat.h"
#include "../common/xalloc.h"
#include "../tok/tokenizer.h"
#include "ctx.h"

static ds4_role chat_role(srv_role r) {
    switch (r) {
    case SRV_ROLE_SYSTEM: return DS4_ROLE_SYSTEM;
    case SRV_ROLE_DEVELOPER: return DS4_ROLE_DEVELOPER;
    case SRV_ROLE_USER: return DS4_ROLE_USER;
    case SRV_ROLE_ASSISTANT: return DS4_ROLE_ASSISTANT;
    case SRV_ROLE_TOOL: return DS4_ROLE_TOOL;
    }
    return DS4_ROLE_USER;
}

static ds4_think_mode chat_mode(srv_think t) {
    return t == SRV_THINK_NONE ? DS4_THINK_NONE : t == SRV_THINK_MAX ? DS4_THINK_MAX : DS4_THINK_HIGH;
}

/* Renders req's conversation followed by `extra` (2 messages, or NULL). */
static int render_with(srv_ctx *c, const srv_request *req, const srv_message *extra, char **text, srv_error *err) {
    int n_req = req->api == SRV_API_COMPLETIONS ? 2 : req->n_msgs;
    int n = n_req + (extra ? 2 : 0);
    ds4_chat_msg *msgs = ds4_xcalloc((size_t)n + 1, sizeof *msgs);
    ds4_tool_call **calls = ds4_xcalloc((size_t)n + 1, sizeof *calls);
    char **raw = ds4_xcalloc((size_t)n + 1, sizeof *raw);
    if (req->api == SRV_API_COMPLETIONS) {
        msgs[0] = (ds4_chat_msg){.role = DS4_ROLE_SYSTEM, .content = "You are a helpful assistant"};
        msgs[1] = (ds4_chat_msg){.role = DS4_ROLE_USER, .content = req->prompt};
    }
    for (int i = req->api == SRV_API_COMPLETIONS ? 2 : 0; i < n; i++) {
        const srv_message *m = i < n_req ? &req->msgs[i] : &extra[i - n_req];
        msgs[i] = (ds4_chat_msg){
            .role = chat_role(m->role),
            .content = m->content,
            .reasoning = m->reasoning,
            .n_calls = m->n_calls,
            .tool_call_id = m->tool_call_id,
        };
        if (m->n_calls) {
            calls[i] = ds4_xcalloc((size_t)m->n_calls, sizeof **calls);
            const char **ids = ds4_xcalloc((size_t)m->n_calls, sizeof *ids);
            for (int k = 0; k < m->n_calls; k++) {
                calls[i][k] = (ds4_tool_call){.id = m->calls[k].id, .name = m->calls[k].name,
                                              .arguments = m->calls[k].arguments};
                ids[k] = m->calls[k].id;
            }
            msgs[i].calls = calls[i];
            if (c->toolmem) raw[i] = srv_toolmem_lookup(c->toolmem, ids, m->n_calls);
            msgs[i].raw_dsml = raw[i];
            free(ids);
        }
    }
    ds4_chat chat = {
        .msgs = msgs,
        .n_msgs = n,
        .tools = req->has_tools ? (const char *const *)req->tools : NULL,
        .n_tools = req->has_tools ? req->n_tools : 0,
    };
    ds4_chat_opts opts = {.mode = chat_mode(req->think), .ctx = c->ctx_size};
    ds4_buf out = {0};
    ds4_err e = {{0}};
    int rc = ds4_chat_render(&chat, &opts, &out, &e);
    for (int i = 0; i < n; i++) {
        free(calls[i]);
        free(raw[i]);
    }
    free(calls);
    free(raw);
    free(msgs);
    if (rc) {
        ds4_buf_free(&out);
        return srv_error_set(err, 400, "cannot render the conversation: %s", e.msg);
    }
    *text = ds4_buf_take(&out);
    return 0;
}

int srv_render_prompt(srv_ctx *c, const srv_request *req, char **text, srv_error *err) {
    return render_with(c, req, NULL, text, err);
}

static int tokenize(srv_ctx *c, const char *text, int32_t **ids, int *n, srv_error *err) {
    size_t nn = 0;
    ds4_err e = {{0}};
    if (ds4_tokenize(c->tok, text, strlen(text), true, ids, &nn, &e))
        return srv_error_set(err, 500, "tokenizer failed: %s", e.msg);
    *n = (int)nn;
    return 0;
}

int srv_count_tokens(srv_ctx *c, const srv_request *req, int *n, srv_error *err) {
    char *text;
    if (srv_render_prompt(c, req, &text, err)) return -1;
    int32_t *ids = NULL;
    int rc = tokenize(c, text, &ids, n, err);
    free(ids);
    free(text);
    return rc;
}

char *srv_render_continuation(srv_ctx *c, const srv_request *req, const char *reasoning, const char *content) {
    if (req->api != SRV_API_CHAT && req->api != SRV_API_MESSAGES) return NULL;
    srv_message extra[2] = {
        {.role = SRV_ROLE_ASSISTANT, .content = (char *)content, .reasoning = (char *)reasoning},
        {.role = SRV_ROLE_USER, .content = "."},
    };
    char *text = NULL;
    srv_error e;
    if (render_with(c, req, extra, &text, &e)) return NULL;
    /* cut before the last User marker: what remains ends with the turn's EOS */
    char *cut = NULL;
    for (char *p = strstr(text, DS4_CHAT_USER); p; p = strstr(p + 1, DS4_CHAT_USER)) cut = p;
    size_t eos = strlen(DS4_CHAT_EOS);
    if (!cut || (size_t)(cut - text) < eos || memcmp(cut - eos, DS4_CHAT_EOS, eos)) {
        free(text);
        return NULL;
    }
    *cut = 0;
    return text;
}

int srv_prepare_prompt(srv_ctx *c, srv_job *job, srv_error *err) {
    srv_cache_recall_tool_ids(c, &job->req);
    if (srv_render_prompt(c, &job->req, &job->prompt_text, err)) return -1;
    if (tokenize(c, job->prompt_text, &job->tokens, &job->n_tokens, err)) return -1;
    if (job->n_tokens >= c->ctx_size) {
        srv_error_set(err, 400, "Prompt has %d tokens, but the configured context size is %d tokens",
                      job->n_tokens, c->ctx_size);
        err->param = job->req.api == SRV_API_COMPLETIONS ? "prompt"
                     : job->req.api == SRV_API_RESPONSES ? "input"
                                                         : "messages";
        err->code = "context_length_exceeded";
        err->n_prompt = job->n_tokens;
        err->n_ctx = c->ctx_size;
        return -1;
    }
    return 0;
}
