/* fuzz_model.c — libFuzzer target for model loading (`make fuzz`).
 *
 * Feeds each input to ds4_model_open_memory() and, on success, touches the
 * first and last byte of every bound tensor, so a tensor extent outside the
 * input shows up under ASan. Inputs are whole GGUF files, so seed it with a
 * small synthetic model and raise -max_len, e.g.:
 *   ds4-mkmodel --preset tiny --layers 3 -o CORPUS_DIR/seed.gguf
 *   build-fuzz/fuzz/fuzz_model -max_len=16000000 -max_total_time=60 CORPUS_DIR
 * (tests/test_model_fuzz.c runs a deterministic mutation campaign in the
 * normal test suite.) */
#include "../../src/model/model.h"

static volatile uint8_t sink;

static void touch(const ds4_tensor *t) {
    if (t->data && t->nbytes)
        sink ^= ((const uint8_t *)t->data)[0] ^ ((const uint8_t *)t->data)[t->nbytes - 1];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ds4_model m;
    ds4_err err;
    if (ds4_model_open_memory(&m, data, size, &err) != 0) return 0;
    touch(&m.token_embd);
    touch(&m.output);
    touch(&m.output_norm);
    for (uint32_t il = 0; il < m.hp.n_layer; il++) {
        const ds4_layer *l = &m.layers[il];
        const ds4_tensor *all[] = {
            &l->hc_attn_fn, &l->attn_q_a, &l->attn_q_b, &l->attn_kv, &l->attn_output_a,
            &l->attn_output_b, &l->attn_compressor_ape, &l->attn_compressor_kv,
            &l->indexer_attn_q_b, &l->indexer_proj, &l->indexer_compressor_kv, &l->ffn_gate_inp,
            &l->exp_probs_b, &l->ffn_gate_exps, &l->ffn_up_exps, &l->ffn_down_exps,
            &l->ffn_gate_shexp, &l->ffn_down_shexp, &l->ffn_gate_tid2eid,
        };
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) touch(all[i]);
    }
    ds4_model_close(&m);
    return 0;
}
