/* fuzz_gguf.c — libFuzzer target for the GGUF reader (`make fuzz`).
 *
 * Feeds each input to gguf_open_memory(); on success, walks every value and
 * tensor the way a consumer would, so an out-of-range pointer shows up under
 * ASan. Run: build-fuzz/fuzz/fuzz_gguf -max_total_time=60 CORPUS_DIR tests/fuzz/corpus_gguf
 * (the committed seeds: the fuzz test's seed file, an empty file, and the
 * output of `ds4-gguf --write-sample`; new inputs go to CORPUS_DIR). */
#include "../../src/gguf/gguf.h"

#include <stdlib.h>

static volatile uint8_t sink;

static void touch(const void *p, uint64_t n) {
    if (n) sink ^= ((const uint8_t *)p)[0] ^ ((const uint8_t *)p)[n - 1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    gguf_file f;
    ds4_err err;
    if (gguf_open_memory(&f, data, size, &err) != 0) return 0;
    for (uint64_t i = 0; i < f.n_kv; i++) {
        const gguf_value *v = &f.kv[i].value;
        touch(f.kv[i].key.ptr, f.kv[i].key.len);
        if (v->type == GGUF_T_STRING) touch(v->v.str.ptr, v->v.str.len);
        if (v->type != GGUF_T_ARRAY) continue;
        touch(v->v.arr.items, v->v.arr.bytes);
        gguf_array_iter it;
        gguf_value item;
        uint64_t n = 0;
        int rc;
        gguf_array_iter_init(&it, v);
        while ((rc = gguf_array_next(&it, &item, &err)) == 1) {
            if (item.type == GGUF_T_STRING) touch(item.v.str.ptr, item.v.str.len);
            n++;
        }
        if (rc != 0 || n != v->v.arr.count) abort(); /* validated at open */
    }
    for (uint64_t i = 0; i < f.n_tensors; i++) {
        touch(f.tensors[i].data, f.tensors[i].nbytes);
        if (gguf_find_tensor(&f, "x") == &f.tensors[i]) sink ^= 1;
    }
    gguf_close(&f);
    return 0;
}
