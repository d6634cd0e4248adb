/* checkpoint.h — a checkpoint directory: its safetensors shards as one
 * name -> tensor table.
 *
 * The tensors come from model.safetensors.index.json (its weight_map names
 * the shards; every listed tensor must be in the shard it names) or, without
 * an index, from model.safetensors alone — other .safetensors files in the
 * directory (a fixture's reference outputs, say) are not model weights. A
 * name found in two shards is an error. Entries carry a `used` flag so the
 * converter can report what it left out. */
#ifndef DS4_CHECKPOINT_H
#define DS4_CHECKPOINT_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/error.h"
#include "safetensors.h"

typedef struct ds4_ckpt_entry {
    const ds4_st_tensor *t; /* t->name is the key */
    uint32_t shard;
    bool used;
} ds4_ckpt_entry;

typedef struct ds4_ckpt {
    ds4_st_file *shards;
    uint32_t n_shards;
    ds4_ckpt_entry *entries; /* sorted by name */
    uint64_t n_entries;
} ds4_ckpt;

int ds4_ckpt_open(ds4_ckpt *c, const char *dir, ds4_err *err);
void ds4_ckpt_close(ds4_ckpt *c);
/* NULL if absent. */
ds4_ckpt_entry *ds4_ckpt_find(const ds4_ckpt *c, const char *name);

#endif
