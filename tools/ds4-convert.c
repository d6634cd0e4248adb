/* ds4-convert — converts a DeepSeek V4 checkpoint directory into a ds4 GGUF.
 *
 *   ds4-convert [options] CHECKPOINT_DIR -o OUT.gguf
 *
 * CHECKPOINT_DIR holds config.json and model.safetensors (or shards listed by
 * model.safetensors.index.json), in transformers or official DeepSeek naming
 * (src/convert/convert.h says what is accepted). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/parse.h"
#include "../src/convert/convert.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: ds4-convert [options] CHECKPOINT_DIR -o OUT.gguf\n"
            "\n"
            "Converts config.json + safetensors (transformers DeepseekV4ForCausalLM or\n"
            "official DeepSeek-V4-Flash naming, F32/F16/BF16/FP8/FP4) into a ds4 GGUF.\n"
            "\n"
            "options:\n"
            "  -o FILE            output GGUF (required)\n"
            "  --type T           non-expert weights: f32, f16, or q8 (the published types:\n"
            "                     Q8_0 projections, F16 embedding/HC/compressor/indexer/router;\n"
            "                     norms, sinks, HC base/scale and biases are always F32).\n"
            "                     Default q8\n"
            "  --experts T        routed experts: f32, f16, q2 (IQ2_XXS gate/up, Q2_K down) or\n"
            "                     q4 (Q4_K). Default q4\n"
            "  --tokenizer FILE   tokenizer.json for the vocabulary (default: a byte-level\n"
            "                     fallback vocabulary of config.json's vocab_size)\n"
            "  --name NAME        general.name\n"
            "  --threads N        encoding threads (default: all cores)\n"
            "  -q, --quiet        no per-tensor progress\n"
            "  -h, --help         this help\n");
}

static const char *need_arg(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "ds4-convert: %s needs a value\n", argv[*i]);
        exit(2);
    }
    return argv[++*i];
}

int main(int argc, char **argv) {
    ds4_convert_opts o = {0};
    const char *type = "q8", *experts = "q4";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-o")) o.out_path = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--type")) type = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--experts")) experts = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--tokenizer")) o.tokenizer_path = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--name")) o.name = need_arg(argc, argv, &i);
        else if (!strcmp(a, "--threads")) {
            const char *v = need_arg(argc, argv, &i);
            int64_t n;
            if (!ds4_parse_i64(v, 1, 1024, &n)) {
                fprintf(stderr, "ds4-convert: --threads %s: expected 1..1024\n", v);
                return 2;
            }
            o.threads = (int)n;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) o.quiet = true;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (a[0] == '-') {
            fprintf(stderr, "ds4-convert: unknown option %s\n", a);
            usage(stderr);
            return 2;
        } else if (!o.in_dir) o.in_dir = a;
        else {
            fprintf(stderr, "ds4-convert: more than one checkpoint directory (%s)\n", a);
            return 2;
        }
    }
    if (!o.in_dir || !o.out_path) {
        usage(stderr);
        return 2;
    }
    ds4_err err = {{0}};
    if (ds4_convert_set_types(&o, type, experts, &err) || ds4_convert(&o, &err)) {
        fprintf(stderr, "ds4-convert: %s\n", err.msg);
        return 1;
    }
    return 0;
}
