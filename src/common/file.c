/* file.c — reading and mapping whole files (see file.h). */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"

char *ds4_read_file(const char *path, size_t *len, ds4_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    ds4_buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) ds4_buf_add(&b, chunk, n);
    if (ferror(f)) {
        ds4_fail(err, "%s: cannot read: %s", path, strerror(errno));
        fclose(f);
        ds4_buf_free(&b);
        return NULL;
    }
    fclose(f);
    if (len) *len = b.len;
    size_t n_alloc = b.len + 1;
    char *text = ds4_buf_take(&b), *fit = realloc(text, n_alloc); /* give back the slack */
    return fit ? fit : text;
}

int ds4_map_file(const char *path, const void **base, uint64_t *size, ds4_err *err) {
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ds4_fail(err, "%s: cannot open: %s", path, strerror(errno));
    if (fstat(fd, &st) != 0) {
        ds4_fail(err, "%s: cannot stat: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return ds4_fail(err, "%s: not a regular file", path);
    }
    if (st.st_size == 0) {
        close(fd);
        return ds4_fail(err, "%s: file is empty", path);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return ds4_fail(err, "%s: cannot mmap %lld bytes: %s", path, (long long)st.st_size,
                        strerror(errno));
    *base = map;
    *size = (uint64_t)st.st_size;
    return 0;
}
