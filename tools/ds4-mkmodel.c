/* ds4-mkmodel — writes a synthetic DeepSeek V4 Flash GGUF (and optionally
 * its MTP file) with seeded random weights in the published layout.
 *
 *   ds4-mkmodel --preset tiny -o tiny.gguf
 *   ds4-mkmodel --preset flash --layers 2 --experts q2 -o flash2.gguf
 *
 * The work is in src/model/synth.c; this file parses options. The MTP file
 * gets Q4_K experts for q2/q4 models (as published) and the model's expert
 * type otherwise. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/parse.h"
#include "../src/model/synth.h"
#include "../src/quant/quant.h"

static void usage(FILE *out) {
    fprintf(out,
        "usage: ds4-mkmodel [options] -o FILE\n"
        "  --preset tiny|flash      dimensions (default tiny)\n"
        "  --layers N               layer count (ratios 0,0,4,R,4,R,...)\n"
        "  --experts q2|q4|f16|f32  routed expert types (default q2)\n"
        "  --type q8|f16|f32        other weights: q8 = as published (default), f16 = Q8_0\n"
        "                           slots as F16, f32 = every weight F32\n"
        "  --seed N                 random seed (default 1)\n"
        "  --tokenizer FILE         vocabulary and merges from a tokenizer.json\n"
        "  --mtp FILE               also write the MTP GGUF\n"
        "  -o FILE                  output path\n");
}

static int parse_u64(const char *flag, const char *s, uint64_t min, uint64_t max, uint64_t *out) {
    if (!ds4_parse_u64(s, min, max, out)) {
        fprintf(stderr, "ds4-mkmodel: %s needs an integer in %llu..%llu, got '%s'\n", flag,
                (unsigned long long)min, (unsigned long long)max, s);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *preset = "tiny", *experts = "q2", *type = "q8", *tokenizer = NULL;
    const char *mtp_path = NULL, *out_path = NULL;
    uint64_t layers = 0, seed = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        if (!val) {
            fprintf(stderr, "ds4-mkmodel: %s needs a value\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--preset")) preset = val;
        else if (!strcmp(a, "--layers")) { if (parse_u64(a, val, 1, DS4_MAX_LAYERS, &layers)) return 2; }
        else if (!strcmp(a, "--experts")) experts = val;
        else if (!strcmp(a, "--type")) type = val;
        else if (!strcmp(a, "--seed")) { if (parse_u64(a, val, 0, UINT64_MAX, &seed)) return 2; }
        else if (!strcmp(a, "--tokenizer")) tokenizer = val;
        else if (!strcmp(a, "--mtp")) mtp_path = val;
        else if (!strcmp(a, "-o")) out_path = val;
        else { fprintf(stderr, "ds4-mkmodel: unknown option '%s'\n", a); usage(stderr); return 2; }
    }
    if (!out_path) { fprintf(stderr, "ds4-mkmodel: -o FILE is required\n"); usage(stderr); return 2; }

    ds4_err err = {{0}};
    ds4_synth_config c;
    memset(&c, 0, sizeof c);
    c.seed = seed;
    if (!ds4_weight_form_from_name(type, &c.weights)) {
        fprintf(stderr, "ds4-mkmodel: --type is q8, f16 or f32\n");
        return 2;
    }
    if (ds4_synth_preset(preset, (uint32_t)layers, &c.hp, &err) ||
        ds4_synth_expert_types(experts, &c.expert_gate_type, &c.expert_down_type, &err)) {
        fprintf(stderr, "ds4-mkmodel: %s\n", err.msg);
        return 2;
    }
    ds4_synth_vocab vocab;
    int rc = tokenizer ? ds4_synth_vocab_from_json(&vocab, tokenizer, c.hp.n_vocab, &err)
                       : ds4_synth_vocab_fallback(&vocab, c.hp.n_vocab, &err);
    if (rc) {
        fprintf(stderr, "ds4-mkmodel: %s\n", err.msg);
        return 1;
    }
    c.hp.n_vocab = vocab.n_tokens;
    c.vocab = &vocab;
    rc = ds4_synth_write_model(&c, out_path, &err);
    if (rc == 0 && mtp_path) {
        if (c.expert_gate_type == DS4_TYPE_IQ2_XXS || c.expert_gate_type == DS4_TYPE_Q4_K)
            c.expert_gate_type = c.expert_down_type = DS4_TYPE_Q4_K;
        rc = ds4_synth_write_mtp(&c, mtp_path, &err);
    }
    ds4_synth_vocab_free(&vocab);
    if (rc) {
        fprintf(stderr, "ds4-mkmodel: %s\n", err.msg);
        return 1;
    }
    return 0;
}
