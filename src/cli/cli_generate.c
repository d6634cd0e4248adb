/* cli_generate.c — `ds4 -p TEXT` / `ds4 --prompt-file FILE`: one answer,
 * streamed to stdout, then the stats line on stderr (server-spec §6.1).
 *
 * The prompt is a conversation of the -sys system text (unless empty) and
 * one user message, rendered in the chosen thinking mode. A prompt that
 * already starts with the BOS string is taken as a rendered chat prompt
 * and tokenized as it is (specials recognised). Without a prompt the
 * interactive chat starts (cli_repl.c). Ctrl+C simply ends the process. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_chat.h"

int ds4_cli_generate(const ds4_cli_options *o) {
    if (o->dump_logprobs) return ds4_cli_dump_logprobs(o);
    if (o->logits_out || o->token_ids) return ds4_cli_logits(o);
    if (o->perplexity_file) return ds4_cli_perplexity(o);
    if (!o->prompt && !o->prompt_file) return ds4_cli_repl(o);
    char *file_text = NULL;
    const char *prompt = o->prompt;
    if (o->prompt_file) {
        if (!(file_text = ds4_cli_read_file(o->prompt_file, NULL))) return 1;
        prompt = file_text;
    }
    cli_chat c;
    int rc = 1;
    if (cli_chat_open(&c, o, o->ctx) == 0) {
        cli_turn_stats st;
        bool raw = strncmp(prompt, DS4_CHAT_BOS, strlen(DS4_CHAT_BOS)) == 0;
        if (cli_chat_begin(&c, prompt, raw, &st) == 0) {
            cli_chat_reply(&c, &st);
            putchar('\n');
            cli_print_stats(&st);
            rc = st.finish == CLI_FINISH_ERROR ? 1 : 0;
        }
    }
    cli_chat_close(&c);
    free(file_text);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "ds4: error writing the output\n");
        rc = 1;
    }
    return rc;
}
