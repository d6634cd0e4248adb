/* checkpoint.c — shards of a checkpoint directory as one table (see
 * checkpoint.h). Shard names from the index are checked to be plain file
 * names inside the directory before anything is opened. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"

static char *join(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static bool file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

void ds4_ckpt_close(ds4_ckpt *c) {
    if (!c) return;
    for (uint32_t i = 0; c->shards && i < c->n_shards; i++) ds4_st_close(&c->shards[i]);
    free(c->shards);
    free(c->entries);
    memset(c, 0, sizeof *c);
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const ds4_ckpt_entry *)a)->t->name, ((const ds4_ckpt_entry *)b)->t->name);
}

ds4_ckpt_entry *ds4_ckpt_find(const ds4_ckpt *c, const char *name) {
    uint64_t lo = 0, hi = c->n_entries;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        int r = strcmp(name, c->entries[mid].t->name);
        if (!r) return &c->entries[mid];
        if (r < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

static int open_shard(ds4_ckpt *c, const char *dir, const char *file, ds4_err *err) {
    char *path = join(dir, file);
    if (!path) return ds4_fail(err, "out of memory");
    int rc = ds4_st_open(&c->shards[c->n_shards], path, err);
    free(path);
    if (rc) return -1;
    c->n_shards++;
    return 0;
}

/* Merges every shard's tensors into one sorted table; a repeated name is an error. */
static int build_table(ds4_ckpt *c, ds4_err *err) {
    uint64_t n = 0;
    for (uint32_t i = 0; i < c->n_shards; i++) n += c->shards[i].n_tensors;
    c->entries = calloc(n ? n : 1, sizeof *c->entries);
    if (!c->entries) return ds4_fail(err, "out of memory for %llu tensors", (unsigned long long)n);
    for (uint32_t i = 0; i < c->n_shards; i++)
        for (uint64_t j = 0; j < c->shards[i].n_tensors; j++)
            c->entries[c->n_entries++] = (ds4_ckpt_entry){&c->shards[i].tensors[j], i, false};
    qsort(c->entries, c->n_entries, sizeof *c->entries, cmp_entry);
    for (uint64_t i = 1; i < c->n_entries; i++)
        if (!strcmp(c->entries[i].t->name, c->entries[i - 1].t->name))
            return ds4_fail(err, "tensor %s is in both %s and %s", c->entries[i].t->name,
                            c->shards[c->entries[i - 1].shard].path,
                            c->shards[c->entries[i].shard].path);
    return 0;
}

static bool plain_file_name(const char *s) {
    return *s && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..");
}

static int open_indexed(ds4_ckpt *c, const char *dir, const char *index_path, ds4_err *err) {
    json_error_t je;
    json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &je);
    if (!root) return ds4_fail(err, "%s: %s (line %d)", index_path, je.text, je.line);
    int rc = -1;
    const char **files = NULL;
    json_t *map = json_object_get(root, "weight_map");
    if (!json_is_object(map)) {
        ds4_fail(err, "%s: no \"weight_map\" object", index_path);
        goto out;
    }
    size_t n_map = json_object_size(map), n_files = 0;
    files = calloc(n_map ? n_map : 1, sizeof *files);
    c->shards = calloc(n_map ? n_map : 1, sizeof *c->shards);
    if (!files || !c->shards) {
        ds4_fail(err, "out of memory");
        goto out;
    }
    const char *name;
    json_t *v;
    json_object_foreach(map, name, v) {
        const char *file = json_string_value(v);
        if (!file || !plain_file_name(file)) {
            ds4_fail(err, "%s: weight_map[\"%.80s\"] is not a file name in the directory",
                     index_path, name);
            goto out;
        }
        size_t k = 0;
        while (k < n_files && strcmp(files[k], file)) k++;
        if (k == n_files) {
            files[n_files++] = file;
            if (open_shard(c, dir, file, err)) goto out;
        }
    }
    if (build_table(c, err)) goto out;
    json_object_foreach(map, name, v) {
        ds4_ckpt_entry *e = ds4_ckpt_find(c, name);
        const char *file = json_string_value(v);
        if (!e) {
            ds4_fail(err, "%s: lists %.120s in %s, which has no such tensor", index_path, name, file);
            goto out;
        }
        const char *shard = c->shards[e->shard].path;
        size_t ls = strlen(shard), lf = strlen(file);
        if (ls < lf || strcmp(shard + ls - lf, file)) {
            ds4_fail(err, "%s: lists %.120s in %s, but it is in %s", index_path, name, file, shard);
            goto out;
        }
    }
    rc = 0;
out:
    free(files);
    json_decref(root);
    return rc;
}

int ds4_ckpt_open(ds4_ckpt *c, const char *dir, ds4_err *err) {
    memset(c, 0, sizeof *c);
    char *index = join(dir, "model.safetensors.index.json");
    char *single = join(dir, "model.safetensors");
    int rc = -1;
    if (!index || !single) {
        ds4_fail(err, "out of memory");
    } else if (file_exists(index)) {
        rc = open_indexed(c, dir, index, err);
    } else if (file_exists(single)) {
        c->shards = calloc(1, sizeof *c->shards);
        if (!c->shards) ds4_fail(err, "out of memory");
        else rc = open_shard(c, dir, "model.safetensors", err) || build_table(c, err) ? -1 : 0;
    } else {
        ds4_fail(err, "%s: no model.safetensors.index.json or model.safetensors", dir);
    }
    free(index);
    free(single);
    if (rc) ds4_ckpt_close(c);
    return rc;
}
