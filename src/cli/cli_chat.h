/* cli_chat.h — a conversation with the model as the ds4 command runs it:
 * the one-shot prompt is a conversation of one turn, the REPL one of many.
 *
 * A turn renders the whole conversation (chat.h, with every reasoning kept
 * so each rendering extends the previous one), brings the engine session to
 * that text by evaluating only what it lacks, then samples, streams the
 * answer to stdout (reasoning visibly apart from the answer) and records the
 * reply as an assistant message. cli_chat.c explains the prefix reuse. */
#ifndef DS4_CLI_CHAT_H
#define DS4_CLI_CHAT_H

#include <signal.h>
#include <stdbool.h>

#include "../chat/chat.h"
#include "../common/buf.h"
#include "../engine/engine.h"
#include "cli.h"

typedef enum cli_finish {
    CLI_FINISH_EOS,    /* the model ended its turn */
    CLI_FINISH_LENGTH, /* -n or the context was reached */
    CLI_FINISH_CANCEL, /* Ctrl+C */
    CLI_FINISH_ERROR,  /* the engine failed while decoding (message printed) */
} cli_finish;

typedef struct cli_msg {
    ds4_role role;
    char *content;
    char *reasoning; /* assistant only; NULL = none */
} cli_msg;

typedef struct cli_chat {
    const ds4_cli_options *o;
    ds4_engine *eng;
    ds4_session *sess;
    const ds4_tokenizer *tok;
    ds4_think_mode mode; /* as asked; Think Max renders as High below its context */
    ds4_sampler sampler;
    cli_msg *msgs;
    int n_msgs, cap_msgs;
    /* What the session holds, as text: its tokens' bytes plus those of
     * `held`, the last sampled token, which is never evaluated (-1: none).
     * Invalid after a cancelled or failed prefill. */
    ds4_buf sess_text;
    bool sess_text_valid;
    int32_t held;
    bool speculate;                   /* greedy speculative decoding with the MTP block */
    bool thinking, raw_turn;          /* the turn being run */
    volatile sig_atomic_t *interrupt; /* set by Ctrl+C in the REPL; NULL in one-shot */
    bool color;                       /* stdout is a terminal */
    bool show_progress;               /* stderr is a terminal */
} cli_chat;

typedef struct cli_turn_stats {
    int prompt_tokens; /* tokens of the rendered conversation */
    int reused;        /* of which were already in the session */
    int generated;
    double prefill_s, decode_s;
    cli_finish finish;
} cli_turn_stats;

/* Opens the engine at context ctx and an empty conversation (with -sys as
 * its system message unless empty); prints the context-memory line and, if
 * Think Max cannot apply, a warning. Returns 0 or 1 (message printed). */
int cli_chat_open(cli_chat *c, const ds4_cli_options *o, int ctx);
void cli_chat_close(cli_chat *c);
/* Reopens the engine at a new context; the conversation is kept and the
 * next turn evaluates it all again. */
int cli_chat_set_ctx(cli_chat *c, int ctx);
/* Forgets the conversation but its system message; the session is emptied. */
void cli_chat_forget(cli_chat *c);
/* Changes the thinking mode, warning when Think Max falls back to High. */
void cli_chat_set_mode(cli_chat *c, ds4_think_mode mode);

/* Starts a turn: adds the user message `text` (or, with raw, takes text as
 * an already-rendered prompt starting with BOS, which is not recorded),
 * renders the conversation and brings the session to it. Returns 0; 1 when
 * Ctrl+C cancelled the prefill; -1 when the turn cannot run (too long for
 * the context, a failed prefill; message printed). On 1 and -1 the user
 * message is removed again. */
int cli_chat_begin(cli_chat *c, const char *text, bool raw, cli_turn_stats *st);
/* Generates the reply after cli_chat_begin returned 0, streaming it to
 * stdout, and records it (complete or partial) as an assistant message; a
 * reply cancelled before its first token is dropped with its question. */
void cli_chat_reply(cli_chat *c, cli_turn_stats *st);

/* "ds4: prompt: N tokens (R reused), prefill: X t/s, generation: G tokens, Y t/s" on stderr. */
void cli_print_stats(const cli_turn_stats *st);

#endif
