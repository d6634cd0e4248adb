/* cli_chat.c — one turn of a ds4 conversation: render, sync the session,
 * sample, stream, record (cli_chat.h).
 *
 * Prefix reuse. The session holds the tokens of everything said so far —
 * the prompt tokens and the model's own sampled tokens, which need not be
 * what the tokenizer would make of the same text. So the conversation is
 * rendered as text and compared with the text the session holds: when the
 * old text is a prefix of the new one and the new part starts at a special
 * token (EOS or the User marker, where BPE cannot merge across), only the
 * new part is tokenized and evaluated after the session's own tokens.
 * Otherwise (the thinking mode changed, a reply was cut inside its
 * reasoning, a prefill was cancelled) the whole text is tokenized and
 * ds4_session_sync evaluates what is not already there. Reasoning is kept in
 * the rendering (keep_reasoning), as ds4's CLI keeps it in its transcript,
 * so a normal next turn always extends the previous text.
 *
 * Output. stdout gets the text as it is generated. In thinking mode the
 * reasoning is shown grey (ANSI 90) on a terminal, otherwise between
 * "<think>" and "</think>" markers; a newline separates it from the answer.
 * The stats line and a prefill progress line (terminal only) go to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../chat/dsml.h"
#include "../common/clock.h"
#include "../common/xalloc.h"
#include "../tok/tokenizer.h"
#include "cli_chat.h"

/* ---- the conversation ---- */

static void push_msg(cli_chat *c, ds4_role role, const char *content, const char *reasoning) {
    if (c->n_msgs == c->cap_msgs) {
        c->cap_msgs = c->cap_msgs ? c->cap_msgs * 2 : 8;
        c->msgs = ds4_xrealloc(c->msgs, (size_t)c->cap_msgs * sizeof *c->msgs);
    }
    c->msgs[c->n_msgs++] = (cli_msg){.role = role, .content = ds4_xstrdup(content ? content : ""),
                                     .reasoning = ds4_xstrdup(reasoning)};
}

static void pop_msg(cli_chat *c) {
    cli_msg *m = &c->msgs[--c->n_msgs];
    free(m->content);
    free(m->reasoning);
}

static int render(const cli_chat *c, ds4_buf *out) {
    ds4_chat_msg *msgs = ds4_xcalloc((size_t)c->n_msgs + 1, sizeof *msgs);
    for (int i = 0; i < c->n_msgs; i++)
        msgs[i] = (ds4_chat_msg){.role = c->msgs[i].role, .content = c->msgs[i].content,
                                 .reasoning = c->msgs[i].reasoning};
    ds4_chat chat = {.msgs = msgs, .n_msgs = c->n_msgs};
    ds4_chat_opts opts = {.mode = c->mode, .ctx = ds4_engine_ctx(c->eng), .keep_reasoning = true};
    ds4_err err = {{0}};
    int rc = ds4_chat_render(&chat, &opts, out, &err);
    if (rc) fprintf(stderr, "ds4: cannot render the conversation: %s\n", err.msg);
    free(msgs);
    return rc;
}

/* ---- engine and session ---- */

static int open_engine(cli_chat *c, int ctx) {
    const ds4_cli_options *o = c->o;
    ds4_engine_config cfg = {.model_path = o->model_path, .mtp_path = o->mtp_path, .ctx = ctx,
                             .threads = o->threads, .exact = o->exact, .quality = o->quality, .backend = o->backend,
                             .prefill_chunk = o->prefill_chunk};
    ds4_err err = {{0}};
    if (ds4_engine_open(&c->eng, &cfg, &err) || ds4_session_new(c->eng, &c->sess, &err)) {
        fprintf(stderr, "ds4: %s\n", err.msg);
        return 1;
    }
    c->tok = ds4_engine_tokenizer(c->eng);
    if (!c->tok || ds4_tokenizer_check_specials(c->tok, &err)) {
        fprintf(stderr, "ds4: %s: %s\n", o->model_path, c->tok ? err.msg : "the model has no tokenizer");
        return 1;
    }
    const ds4_model *m = ds4_engine_model(c->eng);
    fprintf(stderr, "ds4: context %d tokens, KV state %.1f MiB, backend %s\n", ds4_engine_ctx(c->eng),
            ds4_kv_bytes(&m->hp, (uint64_t)ds4_engine_ctx(c->eng)) / (1024.0 * 1024.0),
            ds4_engine_backend_name(c->eng));
    c->speculate = ds4_speculation_on(c->eng, o->mtp_draft, o->temperature);
    if (c->speculate)
        fprintf(stderr, "ds4: MTP speculative decoding on (margin %.1f)\n", (double)o->mtp_margin);
    else if (ds4_engine_has_mtp(c->eng))
        fprintf(stderr, "ds4: MTP loaded; speculation needs --temp 0 and --mtp-draft 2 or more\n");
    return 0;
}

static void close_engine(cli_chat *c) {
    ds4_session_free(c->sess);
    ds4_engine_close(c->eng);
    c->sess = NULL;
    c->eng = NULL;
    c->tok = NULL;
    c->sess_text_valid = false;
    c->held = -1;
}

void cli_chat_set_mode(cli_chat *c, ds4_think_mode mode) {
    c->mode = mode;
    int ctx = c->eng ? ds4_engine_ctx(c->eng) : c->o->ctx;
    if (ds4_chat_effective_mode(mode, ctx) != mode)
        fprintf(stderr, "ds4: Think Max needs a context of at least %d tokens (this one has %d): using --think\n",
                DS4_THINK_MAX_MIN_CTX, ctx);
}

int cli_chat_open(cli_chat *c, const ds4_cli_options *o, int ctx) {
    *c = (cli_chat){.o = o, .held = -1, .color = isatty(STDOUT_FILENO), .show_progress = isatty(STDERR_FILENO)};
    c->sampler = (ds4_sampler){.temperature = o->temperature, .top_p = o->top_p, .min_p = o->min_p,
                               .top_k = o->top_k};
    ds4_sampler_seed(&c->sampler, o->seed);
    if (open_engine(c, ctx)) return 1;
    cli_chat_set_mode(c, o->think);
    if (o->system && *o->system) push_msg(c, DS4_ROLE_SYSTEM, o->system, NULL);
    return 0;
}

void cli_chat_close(cli_chat *c) {
    close_engine(c);
    while (c->n_msgs) pop_msg(c);
    free(c->msgs);
    ds4_buf_free(&c->sess_text);
}

void cli_chat_forget(cli_chat *c) {
    while (c->n_msgs && c->msgs[c->n_msgs - 1].role != DS4_ROLE_SYSTEM) pop_msg(c);
    ds4_session_reset(c->sess);
    ds4_buf_truncate(&c->sess_text, 0);
    c->sess_text_valid = false;
    c->held = -1;
}

int cli_chat_set_ctx(cli_chat *c, int ctx) {
    close_engine(c);
    if (open_engine(c, ctx)) {
        close_engine(c);
        return 1;
    }
    cli_chat_set_mode(c, c->mode);
    return 0;
}

/* ---- tokens to evaluate ---- */

static bool starts_with(const char *s, size_t n, const char *prefix) {
    size_t k = strlen(prefix);
    return n >= k && memcmp(s, prefix, k) == 0;
}

static int32_t *append_ids(int32_t *ids, int n, const int32_t *more, int m) {
    ids = ds4_xrealloc(ids, ((size_t)n + (size_t)m + 1) * sizeof *ids);
    if (m) memcpy(ids + n, more, (size_t)m * sizeof *more);
    return ids;
}

/* The tokens the session must hold for text (see the top comment). */
static int target_tokens(const cli_chat *c, const char *text, size_t len, int32_t **out, int *n_out) {
    const ds4_buf *old = &c->sess_text;
    size_t from = 0;
    bool extend = c->sess_text_valid && old->len <= len && memcmp(old->p ? old->p : "", text, old->len) == 0;
    if (extend) {
        const char *rest = text + old->len;
        size_t n = len - old->len;
        extend = n == 0 || starts_with(rest, n, DS4_CHAT_EOS) || starts_with(rest, n, DS4_CHAT_USER);
        if (extend) from = old->len;
    }
    int32_t *ids = NULL;
    size_t n_new = 0;
    ds4_err err = {{0}};
    if (ds4_tokenize(c->tok, text + from, len - from, true, &ids, &n_new, &err)) {
        fprintf(stderr, "ds4: %s\n", err.msg);
        return -1;
    }
    if (n_new > (size_t)1 << 30) {
        free(ids);
        fprintf(stderr, "ds4: the prompt is too long\n");
        return -1;
    }
    if (!extend) {
        *out = ids;
        *n_out = (int)n_new;
        return 0;
    }
    int have = ds4_session_n_tokens(c->sess);
    int32_t *all = append_ids(NULL, 0, ds4_session_tokens(c->sess), have);
    if (c->held >= 0) all = append_ids(all, have++, &c->held, 1);
    all = append_ids(all, have, ids, (int)n_new);
    free(ids);
    *out = all;
    *n_out = have + (int)n_new;
    return 0;
}

/* ---- prefill ---- */

typedef struct prefill_ctx {
    cli_chat *c;
    bool shown;
} prefill_ctx;

static int on_prefill(void *ctx, int done, int total) {
    prefill_ctx *p = ctx;
    if (p->c->show_progress && done < total) {
        char bar[31];
        int fill = (int)((long long)done * 30 / total);
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\rprocessing %d input tokens: [%s] %d/%d (%.0f%%)", total, bar, done, total,
                100.0 * done / total);
        p->shown = true;
    }
    return p->c->interrupt && *p->c->interrupt ? 1 : 0;
}

/* Brings the session to text. Returns 0, 1 when cancelled, -1 on error. */
static int prefill(cli_chat *c, const char *text, cli_turn_stats *st) {
    size_t len = strlen(text);
    int32_t *ids = NULL;
    int n = 0;
    if (target_tokens(c, text, len, &ids, &n)) return -1;
    int ctx = ds4_engine_ctx(c->eng);
    st->prompt_tokens = n;
    if (n >= ctx) {
        free(ids);
        fprintf(stderr, "ds4: the prompt has %d tokens but the context is %d (use -c or /ctx)\n", n, ctx);
        return -1;
    }
    prefill_ctx pc = {.c = c};
    ds4_err err = {{0}};
    double t0 = ds4_now();
    int rc = ds4_session_sync(c->sess, ids, n, &st->reused, on_prefill, &pc, &err);
    st->prefill_s = ds4_now() - t0;
    free(ids);
    if (pc.shown) fputs("\r\033[K", stderr);
    c->held = -1;
    ds4_buf_truncate(&c->sess_text, 0);
    c->sess_text_valid = rc == 0;
    if (rc == 0) ds4_buf_add(&c->sess_text, text, len);
    if (rc < 0) fprintf(stderr, "ds4: %s\n", err.msg);
    return rc == 0 ? 0 : rc == 1 ? 1 : -1;
}

/* ---- decoding and output ---- */

typedef struct reply {
    bool color, in_reasoning;
    ds4_buf reasoning, content;
} reply;

static void end_reasoning(reply *r) {
    if (!r->in_reasoning) return;
    fputs(r->color ? "\033[0m\n" : "</think>\n", stdout);
    r->in_reasoning = false;
}

static void on_text(void *ctx, const ds4_dsml_event *ev) {
    reply *r = ctx;
    if (ev->type == DS4_DSML_REASONING) {
        if (!r->in_reasoning && !r->reasoning.len) {
            fputs(r->color ? "\033[90m" : "<think>", stdout);
            r->in_reasoning = true;
        }
        ds4_buf_add(&r->reasoning, ev->text, ev->len);
        fwrite(ev->text, 1, ev->len, stdout);
    } else if (ev->type == DS4_DSML_CONTENT) {
        end_reasoning(r);
        ds4_buf_add(&r->content, ev->text, ev->len);
        fwrite(ev->text, 1, ev->len, stdout);
    }
}

/* Evaluates tok (the turn's latest token). With speculation the same step
 * may also evaluate the token after it, which goes to *ahead (else -1).
 * Non-zero on an engine error (reported). */
static int eval_next(cli_chat *c, int32_t tok, int room, int32_t *ahead) {
    ds4_err err = {{0}};
    *ahead = -1;
    if (c->speculate) {
        ds4_spec_opts so = {.margin = c->o->mtp_margin};
        int32_t out[2];
        int n = ds4_session_eval_speculative(c->sess, tok, room, &so, out, &err);
        if (n == 2) *ahead = out[1];
        if (n > 0) return 0;
    } else if (ds4_session_eval(c->sess, &tok, 1, NULL, NULL, &err) == 0) {
        return 0;
    }
    fprintf(stderr, "\nds4: %s\n", err.msg);
    return 1;
}

/* Samples until EOS, the token limit, Ctrl+C or an engine error. A token
 * that speculation evaluated ahead is taken instead of sampling; if the
 * turn stops on it, it is taken back, so the session never holds the last
 * token (`held`). */
static void decode(cli_chat *c, bool thinking, reply *r, cli_turn_stats *st) {
    ds4_dsml_opts po = {.thinking = thinking};
    ds4_dsml_parser *parser = ds4_dsml_parser_new(&po, on_text, r);
    ds4_detok detok;
    ds4_err err = {{0}};
    if (!parser || ds4_detok_init(&detok, c->tok, &err)) abort();
    const ds4_tok_specials sp = ds4_tokenizer_specials(c->tok);
    int room = ds4_engine_ctx(c->eng) - st->prompt_tokens - 1;
    int max_new = c->o->max_tokens < room ? c->o->max_tokens : room;
    double t0 = ds4_now();
    st->finish = CLI_FINISH_LENGTH;
    int32_t ahead = -1;
    bool evaluated = false; /* the token in hand came from `ahead` */
    while (st->generated < max_new) {
        if (c->interrupt && *c->interrupt) {
            st->finish = CLI_FINISH_CANCEL;
            break;
        }
        int32_t tok = ahead >= 0 ? ahead : ds4_session_sample(c->sess, &c->sampler);
        evaluated = ahead >= 0;
        ahead = -1;
        size_t nb;
        const char *bytes = ds4_token_bytes(c->tok, tok, &nb);
        ds4_buf_add(&c->sess_text, bytes, nb);
        c->held = tok;
        if (tok == sp.eos) {
            st->finish = CLI_FINISH_EOS;
            break;
        }
        /* the prompt already opened the reasoning: a repeated <think> is not shown */
        bool skip = thinking && st->generated == 0 && tok == sp.think_open;
        st->generated++;
        if (!skip && ds4_detok_feed(&detok, tok, &bytes, &nb, &err) == 0) {
            ds4_dsml_feed(parser, bytes, nb);
            fflush(stdout);
        }
        if (st->generated >= max_new) break;
        if (!evaluated && eval_next(c, tok, max_new - st->generated + 1, &ahead)) {
            st->finish = CLI_FINISH_ERROR;
            break;
        }
        evaluated = false;
        c->held = -1;
    }
    if (evaluated || ahead >= 0) ds4_session_drop_draft(c->sess);
    size_t tail_n;
    const char *tail = ds4_detok_flush(&detok, &tail_n);
    ds4_dsml_feed(parser, tail, tail_n);
    ds4_dsml_finish(parser);
    end_reasoning(r);
    fflush(stdout);
    st->decode_s = ds4_now() - t0;
    ds4_detok_free(&detok);
    ds4_dsml_parser_free(parser);
}

/* ---- turns ---- */

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

int cli_chat_begin(cli_chat *c, const char *text, bool raw, cli_turn_stats *st) {
    *st = (cli_turn_stats){0};
    c->raw_turn = raw;
    if (raw) {
        c->thinking = ends_with(text, DS4_CHAT_THINK_START);
        int rc = prefill(c, text, st);
        if (rc == 1) st->finish = CLI_FINISH_CANCEL;
        return rc;
    }
    c->thinking = ds4_chat_effective_mode(c->mode, ds4_engine_ctx(c->eng)) != DS4_THINK_NONE;
    push_msg(c, DS4_ROLE_USER, text, NULL);
    ds4_buf prompt = {0};
    int rc = render(c, &prompt) ? -1 : prefill(c, ds4_buf_str(&prompt), st);
    ds4_buf_free(&prompt);
    if (rc == 1) st->finish = CLI_FINISH_CANCEL;
    if (rc) pop_msg(c);
    return rc;
}

void cli_chat_reply(cli_chat *c, cli_turn_stats *st) {
    reply r = {.color = c->color};
    decode(c, c->thinking, &r, st);
    if (c->raw_turn) {
        /* an already-rendered prompt is not part of the conversation */
    } else if (st->finish == CLI_FINISH_CANCEL && st->generated == 0) {
        pop_msg(c); /* nothing to keep: the turn never happened */
    } else {
        push_msg(c, DS4_ROLE_ASSISTANT, ds4_buf_str(&r.content), c->thinking ? ds4_buf_str(&r.reasoning) : NULL);
    }
    ds4_buf_free(&r.reasoning);
    ds4_buf_free(&r.content);
}

void cli_print_stats(const cli_turn_stats *st) {
    int prefilled = st->prompt_tokens - st->reused;
    fprintf(stderr, "ds4: prompt: %d tokens (%d reused), prefill: %.2f t/s, generation: %d tokens, %.2f t/s\n",
            st->prompt_tokens, st->reused, st->prefill_s > 0 ? prefilled / st->prefill_s : 0.0, st->generated,
            st->decode_s > 0 ? st->generated / st->decode_s : 0.0);
}
