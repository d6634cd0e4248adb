/* file.h — whole files: read into memory, or mapped read-only.
 *
 * ds4_read_file() reads any readable path to its end (regular files, pipes,
 * /dev/stdin) into a malloc'd buffer of exactly len + 1 bytes, the last a
 * NUL, so text can be used as a C string and binary data by length.
 * ds4_map_file() maps a regular, non-empty file read-only (model weights,
 * checkpoints): pages come from the page cache on demand and the caller
 * unmaps with munmap().
 * Errors name the path: "PATH: cannot open: No such file or directory". */
#ifndef DS4_FILE_H
#define DS4_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "error.h"

/* len may be NULL; free() the result. */
char *ds4_read_file(const char *path, size_t *len, ds4_err *err);
int ds4_map_file(const char *path, const void **base, uint64_t *size, ds4_err *err);

#endif
