/* cli_util.c — small helpers shared by the ds4 command's modes. */
#include <stdio.h>

#include "../common/file.h"
#include "cli.h"

char *ds4_cli_read_file(const char *path, uint64_t *len) {
    ds4_err err = {{0}};
    size_t n = 0;
    char *text = ds4_read_file(path, &n, &err);
    if (!text) fprintf(stderr, "ds4: %s\n", err.msg);
    else if (len) *len = n;
    return text;
}
