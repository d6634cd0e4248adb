/* session_state.h — bitwise comparison of two CPU sessions' whole KV state
 * (raw window rows still in the window, compressed and indexer rows,
 * compressor frontiers), for the engine tests that must show two ways of
 * evaluating leave the same state (test_engine.c, test_mtp.c). */
#ifndef DS4_TEST_SESSION_STATE_H
#define DS4_TEST_SESSION_STATE_H

#include <stdio.h>
#include <string.h>

#include "../src/engine/engine_impl.h"

static inline bool rows_equal(const kv_rows *a, const kv_rows *b, uint32_t i) {
    size_t bytes = (size_t)a->width * (a->f16 ? 2 : 4);
    return memcmp((const uint8_t *)a->data + i * bytes, (const uint8_t *)b->data + i * bytes, bytes) == 0;
}

static inline bool frontier_equal(const comp_state *a, const comp_state *b) {
    size_t n = (size_t)a->coff * a->ratio * a->width;
    return memcmp(a->kv, b->kv, n * sizeof(float)) == 0 && memcmp(a->score, b->score, n * sizeof(float)) == 0;
}

/* Bitwise comparison of two sessions' whole KV state. */
static inline int state_diff(const ds4_session *a, const ds4_session *b, char *why, size_t len) {
    const ds4_hparams *hp = &a->e->model.hp;
    if (a->n_tokens != b->n_tokens) return snprintf(why, len, "token counts %d vs %d", a->n_tokens, b->n_tokens), 1;
    for (uint32_t il = 0; il < hp->n_layer; il++) {
        const layer_kv *x = &a->layers[il], *y = &b->layers[il];
        int live = a->n_tokens < (int)hp->n_swa ? a->n_tokens : (int)hp->n_swa;
        for (int k = 0; k < live; k++) {
            uint32_t slot = (uint32_t)(a->n_tokens - 1 - k) % hp->n_swa;
            if (!rows_equal(&x->raw, &y->raw, slot))
                return snprintf(why, len, "layer %u raw row of position %d", il, a->n_tokens - 1 - k), 1;
        }
        if (x->n_comp != y->n_comp || x->n_index_comp != y->n_index_comp)
            return snprintf(why, len, "layer %u row counts %u/%u vs %u/%u", il, x->n_comp, x->n_index_comp,
                            y->n_comp, y->n_index_comp), 1;
        for (uint32_t c = 0; c < x->n_comp; c++)
            if (!rows_equal(&x->comp, &y->comp, c)) return snprintf(why, len, "layer %u comp row %u", il, c), 1;
        for (uint32_t c = 0; c < x->n_index_comp; c++)
            if (!rows_equal(&x->index_comp, &y->index_comp, c))
                return snprintf(why, len, "layer %u indexer row %u", il, c), 1;
        if (x->comp_st.kv && !frontier_equal(&x->comp_st, &y->comp_st))
            return snprintf(why, len, "layer %u compressor frontier", il), 1;
        if (x->index_st.kv && !frontier_equal(&x->index_st, &y->index_st))
            return snprintf(why, len, "layer %u indexer frontier", il), 1;
    }
    return 0;
}

#endif
