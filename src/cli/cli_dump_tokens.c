/* cli_dump_tokens.c — placeholder until its issue lands: --dump-tokens is not built yet. */
#include <stdio.h>

#include "cli.h"

int ds4_cli_dump_tokens(const ds4_cli_options *o) {
    (void)o;
    fprintf(stderr, "ds4: --dump-tokens is not available in this build yet\n");
    return 1;
}
