/* cli_info.c — placeholder until its issue lands: --info is not built yet. */
#include <stdio.h>

#include "cli.h"

int ds4_cli_info(const ds4_cli_options *o) {
    (void)o;
    fprintf(stderr, "ds4: --info is not available in this build yet\n");
    return 1;
}
