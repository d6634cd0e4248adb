/* cli_repl.c — `ds4` without a prompt: the interactive chat (server-spec §6.2).
 *
 * Lines are read with libedit (history in ~/.ds4_history, 512 entries, saved
 * after every line); when stdin is not a terminal, plain lines are read with
 * no prompt, so the chat can be driven through a pipe. Every line is a user
 * turn of one conversation kept in the session, so a turn evaluates only its
 * own new tokens (cli_chat.c). Lines starting with '/' are commands.
 *
 * Ctrl+C while the model works stops it and returns to the prompt: a
 * partial answer is kept in the conversation; an answer with no token yet
 * is dropped together with its question. Ctrl+C at the prompt is ignored;
 * Ctrl+D (end of input) leaves. The SIGINT flag is the one global here: a
 * signal handler can reach nothing else. */
#include <editline/readline.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/parse.h"
#include "../common/xalloc.h"
#include "cli_chat.h"

#define HISTORY_MAX 512

static volatile sig_atomic_t interrupted;

static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
}

static void print_help(void) {
    printf("ds4 interactive chat. Type a message, or a command:\n"
           "  /help         this help\n"
           "  /think        thinking mode, high effort (the default)\n"
           "  /think-max    Think Max (needs a context of at least %d tokens)\n"
           "  /nothink      answer without thinking\n"
           "  /ctx N        context of N tokens (the conversation is evaluated again)\n"
           "  /read FILE    send the contents of FILE as the next message\n"
           "  /new          start a new conversation\n"
           "  /quit, /exit  leave (or Ctrl+D)\n"
           "Ctrl+C stops the answer being generated.\n",
           DS4_THINK_MAX_MIN_CTX);
}

typedef struct line_reader {
    bool tty;
    char *history; /* path, NULL = no history file */
    char *buf;     /* getline buffer (not a terminal) */
    size_t cap;
} line_reader;

static void reader_open(line_reader *r) {
    *r = (line_reader){.tty = isatty(STDIN_FILENO)};
    if (!r->tty) return;
    rl_catch_signals = 0; /* our SIGINT handler stays in place */
    using_history();
    stifle_history(HISTORY_MAX);
    const char *home = getenv("HOME");
    if (home && *home) {
        size_t n = strlen(home) + sizeof "/.ds4_history";
        r->history = ds4_xmalloc(n);
        snprintf(r->history, n, "%s/.ds4_history", home);
        read_history(r->history);
    }
}

static void reader_close(line_reader *r) {
    free(r->history);
    free(r->buf);
}

/* The next line (without its newline; the caller frees it), or NULL at end
 * of input. A Ctrl+C at the prompt gives an empty line. */
static char *read_line(line_reader *r) {
    interrupted = 0;
    if (r->tty) {
        char *line = readline("ds4> ");
        if (!line && interrupted) {
            putchar('\n');
            return strdup("");
        }
        if (line && *line) {
            add_history(line);
            if (r->history) write_history(r->history);
        }
        return line;
    }
    errno = 0;
    ssize_t n = getline(&r->buf, &r->cap, stdin);
    if (n < 0) {
        if (errno == EINTR && interrupted) {
            clearerr(stdin);
            return strdup("");
        }
        return NULL;
    }
    while (n > 0 && (r->buf[n - 1] == '\n' || r->buf[n - 1] == '\r')) r->buf[--n] = 0;
    return strdup(r->buf);
}

static void run_turn(cli_chat *c, const char *text) {
    cli_turn_stats st;
    interrupted = 0;
    int rc = cli_chat_begin(c, text, false, &st);
    if (rc < 0) return;
    if (rc == 0) cli_chat_reply(c, &st);
    putchar('\n');
    fflush(stdout);
    if (st.finish == CLI_FINISH_CANCEL)
        fprintf(stderr, "ds4: interrupted%s\n", st.generated ? "" : " (the message was dropped)");
    cli_print_stats(&st);
}

/* Returns 1 to leave, 0 to go on, -1 on a fatal error. */
static int run_command(cli_chat *c, const char *line) {
    const char *arg = strchr(line, ' ');
    size_t name_len = arg ? (size_t)(arg - line) : strlen(line);
    while (arg && *arg == ' ') arg++;
#define IS(name) (name_len == strlen(name) && !strncmp(line, name, name_len))
    if (IS("/quit") || IS("/exit")) return 1;
    if (IS("/help")) {
        print_help();
    } else if (IS("/think")) {
        cli_chat_set_mode(c, DS4_THINK_HIGH);
    } else if (IS("/think-max")) {
        cli_chat_set_mode(c, DS4_THINK_MAX);
    } else if (IS("/nothink")) {
        cli_chat_set_mode(c, DS4_THINK_NONE);
    } else if (IS("/new")) {
        cli_chat_forget(c);
    } else if (IS("/ctx")) {
        int64_t n;
        if (!arg || !ds4_parse_i64(arg, 1, INT_MAX, &n)) {
            fprintf(stderr, "ds4: /ctx needs a positive integer\n");
            return 0;
        }
        int old = ds4_engine_ctx(c->eng);
        if (cli_chat_set_ctx(c, (int)n) && cli_chat_set_ctx(c, old)) return -1;
    } else if (IS("/read")) {
        if (!arg || !*arg) {
            fprintf(stderr, "ds4: /read needs a file name\n");
            return 0;
        }
        char *text = ds4_cli_read_file(arg, NULL);
        if (text) run_turn(c, text);
        free(text);
    } else {
        fprintf(stderr, "ds4: unknown command %.*s (try /help)\n", (int)name_len, line);
    }
#undef IS
    return 0;
}

int ds4_cli_repl(const ds4_cli_options *o) {
    cli_chat c;
    if (cli_chat_open(&c, o, o->ctx)) {
        cli_chat_close(&c);
        return 1;
    }
    c.interrupt = &interrupted;
    struct sigaction sa = {.sa_handler = on_sigint}; /* no SA_RESTART: reads return EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    print_help();
    fflush(stdout);
    line_reader r;
    reader_open(&r);
    int rc = 0;
    for (;;) {
        char *line = read_line(&r);
        if (!line) {
            if (r.tty) putchar('\n');
            break;
        }
        int done = 0;
        if (line[0] == '/') done = run_command(&c, line);
        else if (line[0]) run_turn(&c, line);
        free(line);
        if (done) {
            rc = done < 0 ? 1 : 0;
            break;
        }
    }
    reader_close(&r);
    cli_chat_close(&c);
    return rc;
}
