/* cli.h — the ds4 command's options and its modes.
 *
 * main.c parses the command line (server-spec.md §1.1–§1.2) into a
 * ds4_cli_options and hands it to one mode; each mode lives in its own file:
 * cli_info.c (--info / --inspect), cli_dump_tokens.c (--dump-tokens),
 * cli_generate.c (one-shot prompt), cli_repl.c (the interactive chat),
 * cli_logprobs.c (--dump-logprobs, --token-ids/--logits-out,
 * --perplexity-file). The turn
 * machinery they share is in cli_chat.h. */
#ifndef DS4_CLI_H
#define DS4_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "../chat/chat.h" /* ds4_think_mode */

typedef struct ds4_cli_options {
    const char *model_path;   /* -m, default ./ds4flash.gguf */
    const char *mtp_path;     /* --mtp */
    int mtp_draft;            /* --mtp-draft, default 1; speculation needs 2 or more and --temp 0 */
    float mtp_margin;         /* --mtp-margin, default 3.0 */
    const char *prompt;       /* -p */
    const char *prompt_file;  /* --prompt-file */
    const char *system;       /* -sys; default "You are a helpful assistant" */
    int ctx;                  /* -c, default 32768 */
    int threads;              /* -t, 0 = all cores (or DS4_THREADS) */
    int max_tokens;           /* -n, default 50000 */
    float temperature;        /* --temp, default 1.0 */
    float top_p;              /* --top-p, default 1.0 */
    float min_p;              /* --min-p, default 0.05 */
    int top_k;                /* --top-k, default 0 (off) */
    uint64_t seed;            /* --seed, 0 = time-based */
    ds4_think_mode think;     /* --think (default), --think-max, --nothink */
    bool exact;               /* --exact: plain f32, official-numerics simulations off */
    bool quality;             /* --quality: exact kernels where a faster approximation exists */
    const char *backend;      /* "cpu" | "cuda" | NULL = best available */
    bool info;                /* --info / --inspect */
    bool dump_tokens;         /* --dump-tokens */
    int prefill_chunk;        /* --prefill-chunk, 0 = the engine's default */
    const char *dump_logprobs; /* --dump-logprobs FILE */
    int logprobs_top_k;       /* --logprobs-top-k, default 20, at most 128 */
    const char *perplexity_file; /* --perplexity-file FILE */
    const char *token_ids;    /* --token-ids FILE (with --logits-out) */
    const char *logits_out;   /* --logits-out FILE */
} ds4_cli_options;

/* Each mode returns the process exit code. */
int ds4_cli_info(const ds4_cli_options *o);
int ds4_cli_dump_tokens(const ds4_cli_options *o);
int ds4_cli_generate(const ds4_cli_options *o);   /* one-shot, or the REPL without a prompt */
int ds4_cli_repl(const ds4_cli_options *o);
int ds4_cli_dump_logprobs(const ds4_cli_options *o);
int ds4_cli_logits(const ds4_cli_options *o);     /* --token-ids + --logits-out */
int ds4_cli_perplexity(const ds4_cli_options *o);

/* Reads a whole file into a NUL-terminated malloc'd buffer (len optional);
 * NULL with a message on stderr on failure. */
char *ds4_cli_read_file(const char *path, uint64_t *len);

#endif
