/* traffic.c — weight bytes per decoded token (see traffic.h). */
#include <string.h>

#include "traffic.h"

/* Bytes of one slice along the last dimension (one expert of a stacked
 * [in, out, n_expert] tensor, one row of a [width, rows] table). */
static uint64_t slice_bytes(const ds4_tensor *t) {
    uint64_t n = t->n_dims ? t->ne[t->n_dims - 1] : 1;
    return n ? t->nbytes / n : 0;
}

void ds4_decode_traffic_at(const ds4_model *m, uint64_t pos, ds4_decode_traffic *t) {
    const ds4_hparams *hp = &m->hp;
    memset(t, 0, sizeof *t);
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const ds4_layer *L = &m->layers[il];
        t->attention += L->attn_q_a.nbytes + L->attn_q_b.nbytes + L->attn_kv.nbytes +
                        L->attn_output_a.nbytes + L->attn_output_b.nbytes;
        t->shared_expert += L->ffn_gate_shexp.nbytes + L->ffn_up_shexp.nbytes + L->ffn_down_shexp.nbytes;
        t->routed_experts += (uint64_t)hp->n_expert_used *
            (slice_bytes(&L->ffn_gate_exps) + slice_bytes(&L->ffn_up_exps) + slice_bytes(&L->ffn_down_exps));
        t->hc += L->hc_attn_fn.nbytes + L->hc_ffn_fn.nbytes;
        t->router += L->ffn_gate_inp.nbytes;
        if (L->ffn_gate_tid2eid.data) t->router += slice_bytes(&L->ffn_gate_tid2eid);
        if (L->compress_ratio) t->compressors += L->attn_compressor_kv.nbytes + L->attn_compressor_gate.nbytes;
        if (L->compress_ratio == 4) {
            t->compressors += L->indexer_compressor_kv.nbytes + L->indexer_compressor_gate.nbytes;
            if ((pos + 1) / 4 > hp->indexer_top_k)
                t->indexer += L->indexer_attn_q_b.nbytes + L->indexer_proj.nbytes;
        }
    }
    t->layers = t->attention + t->shared_expert + t->routed_experts + t->hc + t->router +
                t->compressors + t->indexer;
    t->head = m->output.nbytes + m->output_hc_fn.nbytes + slice_bytes(&m->token_embd);
    t->total = t->layers + t->head;
}
