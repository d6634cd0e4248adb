/* test_quant_dot_multi.c — ds4_dot_multi (one weight row, several activations).
 *
 * For every weight format and every ISA the CPU has, on random blocks and
 * activations over the full code range (including -128 in weights and
 * activations), with 1..9 activations (more than one group of
 * DS4_DOT_MULTI_MAX) and lengths that exercise the 8-block batching and its
 * tail: each output equals the scalar ds4_dot of that activation, bit for
 * bit. The single-token dot is the oracle (test_quant_dot.c checks it
 * against dequantised arithmetic and exact integer results). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/quant/quant.h"
#include "quant_testdata.h"
#include "testutil.h"

static const uint32_t types[] = {DS4_TYPE_Q8_0, DS4_TYPE_Q2_K, DS4_TYPE_Q4_K, DS4_TYPE_IQ2_XXS,
                                 DS4_TYPE_F32, DS4_TYPE_F16, DS4_TYPE_BF16};

static void fill_weights(qt_rng *r, uint32_t type, void *w, uint64_t n) {
    if (type == DS4_TYPE_F32 || type == DS4_TYPE_F16 || type == DS4_TYPE_BF16) {
        float *x = malloc(n * sizeof(float));
        for (uint64_t i = 0; i < n; i++) x[i] = qt_gauss(r);
        ds4_quantize_row(type, x, w, n, NULL);
        free(x);
    } else {
        const ds4_type_info *ti = ds4_type_info_get(type);
        qt_fill_blocks(r, type, w, n / ti->block_elems, 1);
        if (type == DS4_TYPE_Q8_0) { /* make -128 weight codes appear too */
            ds4_block_q8_0 *b = w;
            for (uint64_t i = 0; i < n / DS4_QK8_0; i++) b[i].qs[qt_next(r) % 32] = -128;
        }
    }
}

int main(void) {
    qt_rng r = {12345};
    static const uint64_t lens[] = {256, 512, 2048, 2304, 4096 + 256 * 3};
    ds4_isa best = ds4_quant_best_isa();
    for (int isa = 0; isa <= (int)best; isa++) {
        ds4_quant_set_isa((ds4_isa)isa);
        for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
            uint32_t type = types[ti];
            for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
                uint64_t n = lens[li];
                void *w = malloc(ds4_type_row_bytes(type, n));
                fill_weights(&r, type, w, n);
                enum { NA = 9 };
                uint64_t ab = ds4_act_row_bytes(type, n);
                uint8_t *act = malloc(ab * NA);
                const void *acts[NA];
                for (int k = 0; k < NA; k++) {
                    acts[k] = act + ab * (size_t)(NA - 1 - k); /* not in memory order */
                    qt_fill_act(&r, type, act + ab * (size_t)k, n);
                }
                for (int na = 1; na <= NA; na++) {
                    float out[NA];
                    ds4_dot_multi(type, n, w, acts, na, out);
                    ds4_quant_set_isa(DS4_ISA_SCALAR);
                    int bad = 0;
                    for (int k = 0; k < na; k++) {
                        float ref = ds4_dot(type, n, w, acts[k]);
                        bad += memcmp(&ref, &out[k], sizeof ref) != 0;
                    }
                    ds4_quant_set_isa((ds4_isa)isa);
                    CHECK(bad == 0, "%s isa %s n %llu: %d of %d activations differ from ds4_dot",
                          ds4_type_name(type), ds4_isa_name((ds4_isa)isa), (unsigned long long)n, bad, na);
                }
                free(act);
                free(w);
            }
        }
    }
    return TEST_DONE();
}
