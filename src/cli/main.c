/* main.c — the ds4 command: option parsing and dispatch to a mode (cli.h).
 * Flags follow ds4's (server-spec.md §1.1–§1.2): integer flags must be
 * positive, an unknown option prints usage and exits 2. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/parse.h"
#include "cli.h"

static void usage(FILE *out) {
    fprintf(out,
        "usage: ds4 [options]\n"
        "\n"
        "  -m, --model FILE      GGUF model (default ./ds4flash.gguf)\n"
        "      --mtp FILE        MTP draft GGUF: greedy speculative decoding\n"
        "      --mtp-draft N     draft tokens a step, 1..16 (default 1 = off; 2 or more with --temp 0\n"
        "                        turns speculation on; one draft a step is verified so far)\n"
        "      --mtp-margin F    verify a draft only when the MTP's top logit leads by F, 0..1000 (default 3)\n"
        "  -p, --prompt TEXT     one-shot prompt (otherwise: interactive chat)\n"
        "      --prompt-file F   one-shot prompt read from a file\n"
        "  -sys, --system TEXT   system prompt (default \"You are a helpful assistant\"; \"\" = none)\n"
        "  -c, --ctx N           context tokens (default 32768)\n"
        "  -n, --tokens N        maximum generated tokens (default 50000)\n"
        "  -t, --threads N       CPU threads (default: all cores, or DS4_THREADS)\n"
        "      --temp F          temperature 0..100 (default 1.0; 0 = greedy)\n"
        "      --top-p F         0..1 (default 1.0)\n"
        "      --min-p F         0..1 (default 0.05)\n"
        "      --top-k N         0 = off (default), at most 1024\n"
        "      --seed N          sampling seed (default: time-based)\n"
        "      --think | --think-max | --nothink   thinking mode (default --think)\n"
        "      --exact           plain f32 numerics (for comparison with transformers)\n"
        "      --quality         exact kernels where a faster approximation exists (CUDA prefill)\n"
        "      --cpu | --cuda | --backend cpu|cuda\n"
        "      --info, --inspect print the model's hyperparameters, tensors and memory needs\n"
        "      --dump-tokens     tokenize -p/--prompt-file text as written, one token per line\n"
        "      --dump-logprobs F write a greedy continuation with its top-k alternatives as JSON\n"
        "      --logprobs-top-k N  alternatives per step for --dump-logprobs (default 20, at most 128)\n"
        "      --perplexity-file F  teacher-forced NLL of the text in F (first 32 tokens not scored)\n"
        "      --prefill-chunk N tokens per prefill chunk (default: the engine's)\n"
        "      --token-ids F --logits-out F  evaluate the token ids in F from position 0 and\n"
        "                        write float32 logits of every position, then exit\n"
        "  -h, --help            this help\n");
}

int main(int argc, char **argv) {
    ds4_cli_options o = {
        .model_path = "ds4flash.gguf",
        .system = "You are a helpful assistant",
        .ctx = 32768,
        .max_tokens = 50000,
        .temperature = 1.0f,
        .top_p = 1.0f,
        .min_p = 0.05f,
        .think = DS4_THINK_HIGH,
        .logprobs_top_k = 20,
        .mtp_draft = 1,
        .mtp_margin = 3.0f,
    };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *val = i + 1 < argc ? argv[i + 1] : NULL;
#define NEEDS_VALUE()                                                        \
    do {                                                                     \
        if (!val) {                                                          \
            fprintf(stderr, "ds4: %s needs a value\n", a);                   \
            return 2;                                                        \
        }                                                                    \
        i++;                                                                 \
    } while (0)
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { NEEDS_VALUE(); o.model_path = val; }
        else if (!strcmp(a, "--mtp")) { NEEDS_VALUE(); o.mtp_path = val; }
        else if (!strcmp(a, "--mtp-draft")) { NEEDS_VALUE(); if (ds4_parse_int_flag("ds4", a, val, 1, 16, &o.mtp_draft)) return 2; }
        else if (!strcmp(a, "--mtp-margin")) { NEEDS_VALUE(); if (ds4_parse_float_flag("ds4", a, val, 0, 1000, &o.mtp_margin)) return 2; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { NEEDS_VALUE(); o.prompt = val; }
        else if (!strcmp(a, "--prompt-file")) { NEEDS_VALUE(); o.prompt_file = val; }
        else if (!strcmp(a, "-sys") || !strcmp(a, "--system")) { NEEDS_VALUE(); o.system = val; }
        else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) { NEEDS_VALUE(); if (ds4_parse_int_flag("ds4", a, val, 1, INT_MAX, &o.ctx)) return 2; }
        else if (!strcmp(a, "-n") || !strcmp(a, "--tokens")) { NEEDS_VALUE(); if (ds4_parse_int_flag("ds4", a, val, 1, INT_MAX, &o.max_tokens)) return 2; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { NEEDS_VALUE(); if (ds4_parse_int_flag("ds4", a, val, 1, 4096, &o.threads)) return 2; }
        else if (!strcmp(a, "--temp")) { NEEDS_VALUE(); if (ds4_parse_float_flag("ds4", a, val, 0, 100, &o.temperature)) return 2; }
        else if (!strcmp(a, "--top-p")) { NEEDS_VALUE(); if (ds4_parse_float_flag("ds4", a, val, 0, 1, &o.top_p)) return 2; }
        else if (!strcmp(a, "--min-p")) { NEEDS_VALUE(); if (ds4_parse_float_flag("ds4", a, val, 0, 1, &o.min_p)) return 2; }
        else if (!strcmp(a, "--top-k")) { NEEDS_VALUE(); if (ds4_parse_int_flag("ds4", a, val, 0, 1024, &o.top_k)) return 2; }
        else if (!strcmp(a, "--seed")) {
            NEEDS_VALUE();
            uint64_t s;
            if (!ds4_parse_u64(val, 1, UINT64_MAX, &s)) { fprintf(stderr, "ds4: --seed needs a positive integer\n"); return 2; }
            o.seed = s;
        }
        else if (!strcmp(a, "--think")) o.think = DS4_THINK_HIGH;
        else if (!strcmp(a, "--think-max")) o.think = DS4_THINK_MAX;
        else if (!strcmp(a, "--nothink")) o.think = DS4_THINK_NONE;
        else if (!strcmp(a, "--exact")) o.exact = true;
        else if (!strcmp(a, "--quality")) o.quality = true;
        else if (!strcmp(a, "--cpu")) o.backend = "cpu";
        else if (!strcmp(a, "--cuda")) o.backend = "cuda";
        else if (!strcmp(a, "--backend")) {
            NEEDS_VALUE();
            if (strcmp(val, "cpu") && strcmp(val, "cuda")) { fprintf(stderr, "ds4: --backend is cpu or cuda\n"); return 2; }
            o.backend = val;
        }
        else if (!strcmp(a, "--info") || !strcmp(a, "--inspect")) o.info = true;
        else if (!strcmp(a, "--dump-tokens")) o.dump_tokens = true;
        else if (!strcmp(a, "--dump-logprobs")) { NEEDS_VALUE(); o.dump_logprobs = val; }
        else if (!strcmp(a, "--logprobs-top-k")) { NEEDS_VALUE(); if (ds4_parse_int_flag("ds4", a, val, 1, INT_MAX, &o.logprobs_top_k)) return 2; }
        else if (!strcmp(a, "--prefill-chunk")) { NEEDS_VALUE(); if (ds4_parse_int_flag("ds4", a, val, 1, INT_MAX, &o.prefill_chunk)) return 2; }
        else if (!strcmp(a, "--perplexity-file")) { NEEDS_VALUE(); o.perplexity_file = val; }
        else if (!strcmp(a, "--token-ids")) { NEEDS_VALUE(); o.token_ids = val; }
        else if (!strcmp(a, "--logits-out")) { NEEDS_VALUE(); o.logits_out = val; }
        else if (!strcmp(a, "--server")) { fprintf(stderr, "ds4: use ds4-server\n"); return 2; }
        else { fprintf(stderr, "ds4: unknown option '%s'\n", a); usage(stderr); return 2; }
#undef NEEDS_VALUE
    }
    if (o.prompt && o.prompt_file) {
        fprintf(stderr, "ds4: give either -p or --prompt-file, not both\n");
        return 2;
    }
    if (!o.token_ids != !o.logits_out) {
        fprintf(stderr, "ds4: --token-ids and --logits-out go together\n");
        return 2;
    }
    if (o.dump_logprobs && !o.prompt && !o.prompt_file) {
        fprintf(stderr, "ds4: --dump-logprobs needs -p TEXT or --prompt-file FILE\n");
        return 2;
    }
    if (o.perplexity_file && (o.prompt || o.prompt_file)) {
        fprintf(stderr, "ds4: --perplexity-file cannot be combined with -p or --prompt-file\n");
        return 2;
    }
    if (o.logprobs_top_k > 128) o.logprobs_top_k = 128;
    if (o.info) return ds4_cli_info(&o);
    if (o.dump_tokens) return ds4_cli_dump_tokens(&o);
    return ds4_cli_generate(&o);
}
