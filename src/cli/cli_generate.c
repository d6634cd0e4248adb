/* cli_generate.c — placeholder until its issue lands: generation is not built yet. */
#include <stdio.h>

#include "cli.h"

int ds4_cli_generate(const ds4_cli_options *o) {
    (void)o;
    fprintf(stderr, "ds4: generation is not available in this build yet\n");
    return 1;
}
