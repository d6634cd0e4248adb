/* fuzz_safetensors.c — libFuzzer target for the safetensors reader (`make fuzz`).
 *
 * Feeds each input to ds4_st_open_memory(); on success, reads every byte of
 * every tensor and looks each name up again, so a range the validation let
 * through outside the buffer shows up under ASan. Run:
 * build-fuzz/fuzz/fuzz_safetensors -max_total_time=60 CORPUS_DIR tests/fuzz/corpus_safetensors
 * (committed seed: a small valid two-tensor file). */
#include <stdint.h>
#include <stdlib.h>

#include "../../src/convert/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds4_st_file f;
    ds4_err err;
    if (ds4_st_open_memory(&f, data, size, "fuzz", &err)) return 0;
    unsigned sum = 0;
    for (uint64_t i = 0; i < f.n_tensors; i++) {
        const ds4_st_tensor *t = &f.tensors[i];
        for (uint64_t b = 0; b < t->nbytes; b++) sum += t->data[b];
        if (ds4_st_find(&f, t->name) != t) abort();
    }
    ds4_st_close(&f);
    return (int)(sum & 0);
}
