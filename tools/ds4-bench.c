/* ds4-bench — prefill and decode throughput at context frontiers.
 *
 *   ds4-bench -m ds4flash.gguf --prompt-file long.txt --ctx-max 32768 --csv out.csv
 *   ds4-bench --synthetic q2 --layers 2 --ctx-start 512 --ctx-max 2048 --step-mul 2
 *
 * The method is ds4's (server-spec §7.1): one fixed token sequence is walked
 * to each frontier f = ctx-start, next, ..., ctx-max. At each frontier the
 * incremental prefill of the tokens since the previous frontier is timed;
 * the session is then saved to an in-memory DS4 payload (untimed), exactly
 * --gen-tokens greedy decode steps are timed (argmax with EOS excluded, so
 * every row decodes the same number of tokens), and the payload is loaded
 * back (untimed) before moving on. One CSV row per frontier:
 * ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes
 * (kvcache_bytes = the payload size).
 *
 * --synthetic q2|q4 needs no model file: random weights of the published
 * layout (src/model/synth.c, the same generator ds4-mkmodel uses) are laid
 * out as a GGUF image in RAM and the engine reads them in place. With the
 * cuda backend named (--cuda, --backend cuda) the weight matrices of 1 MiB
 * or more are not made in RAM at all: the image leaves their pages
 * untouched and the backend generates them in device memory (synth_fill.h),
 * so a full-size model needs neither the host memory nor the copy. Without
 * a prompt file the sequence is random token ids.
 *
 * On stderr, a human summary: per frontier the decode time per token and
 * the weight bytes one decode step reads (src/model/traffic.c, from the
 * loaded model's own tensors), as GB/s and as a share of the memory read
 * bandwidth a multi-threaded read loop reaches just before that decode run
 * (probing each time, because on a shared machine the bandwidth left to us
 * drifts); the same per CPU-second (process CPU time against the probe's
 * thread CPU time), which other load disturbs far less; and the share of
 * the cores the decode got. Prefill is also given per CPU-second.
 *
 * --mtp FILE adds, at each frontier, the same decode with greedy MTP
 * speculation (model-spec §8), on stderr only: its
 * tok/s, the cycles and accepted drafts, and a cycle's time split into the
 * MTP draft and the two-token verify. --mtp-accept P forces the drafts'
 * acceptance to P (0..1): the drafts are the plain run's own next tokens,
 * right in a fraction P of the cycles and wrong in the others — synthetic
 * weights draft nothing right, so this is how the cost of a cycle is
 * measured; without it the MTP's own drafts are verified above
 * --mtp-margin (the acceptance of real weights on a real prompt). The
 * speculative tokens must be the plain run's (checked; a mismatch fails).
 * On the cuda backend --mtp-accept P without --mtp measures the verify
 * steps alone so: the cycle's draft costs nothing there, and the line says
 * so. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/backend/cpu/cpu_pool.h"
#include "../src/chat/chat.h"
#include "../src/common/clock.h"
#include "../src/common/parse.h"
#include "../src/engine/engine.h"
#include "../src/engine/session_payload.h"
#include "../src/model/synth.h"
#include "../src/model/traffic.h"
#include "../src/quant/quant.h"
#include "../src/tok/tokenizer.h"

typedef struct bench_opts {
    const char *model_path;
    const char *prompt_path, *chat_prompt_path;
    const char *system;
    const char *csv_path;
    const char *backend;
    const char *synthetic;   /* "q2" / "q4" or NULL */
    const char *preset;
    int layers;              /* 0 = the preset's count */
    int threads;
    int ctx_start, ctx_max, ctx_alloc, step_incr, gen_tokens, prefill_chunk;
    double step_mul;
    int bw_mib;              /* bandwidth probe buffer, 0 = skip */
    bool warm_weights;
    bool quality;            /* --quality: the engine's exact kernels where it has faster ones */
    const char *mtp_path;    /* --mtp: also the speculative decode */
    double mtp_accept;       /* --mtp-accept, < 0: the MTP's own drafts */
    float mtp_margin;        /* --mtp-margin */
} bench_opts;

static void usage(FILE *out) {
    fprintf(out,
        "usage: ds4-bench (--prompt-file FILE | --chat-prompt-file FILE | --synthetic q2|q4) [options]\n"
        "\n"
        "Prefill and greedy decode tok/s at context frontiers ctx-start, ..., ctx-max\n"
        "(CSV: ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes).\n"
        "\n"
        "Input:\n"
        "  --prompt-file FILE       raw text; its tokens are sliced at each frontier\n"
        "  --chat-prompt-file FILE  FILE rendered as one non-thinking chat user turn\n"
        "  -sys, --system TEXT      system text for --chat-prompt-file\n"
        "                           (default \"You are a helpful assistant.\")\n"
        "  (with --synthetic and no prompt file: random token ids)\n"
        "Model:\n"
        "  -m, --model FILE         GGUF model (default ds4flash.gguf)\n"
        "  --synthetic q2|q4        random weights of the published layout, built in memory\n"
        "                           (with --cuda: the large matrices generated on the GPU)\n"
        "  --preset flash|tiny      dimensions for --synthetic (default flash)\n"
        "  --layers N               layer count for --synthetic (default: the preset's)\n"
        "  --backend cpu|cuda, --cpu, --cuda   compute backend (default: best available)\n"
        "  -t, --threads N          CPU threads (default DS4_THREADS or all cores)\n"
        "  --prefill-chunk N        tokens per prefill chunk (default: the engine's)\n"
        "  --warm-weights           touch every weight page before measuring\n"
        "  --quality                exact kernels where a faster approximation exists (CUDA prefill)\n"
        "Sweep:\n"
        "  --ctx-start N            first frontier (default 2048)\n"
        "  --ctx-max N              last frontier (default 32768)\n"
        "  --ctx-alloc N            session context (default ctx-max + gen-tokens + 1)\n"
        "  --step-incr N            linear step when --step-mul is 1 (default 2048)\n"
        "  --step-mul F             geometric step: next = ceil(cur * F) (default 1)\n"
        "  -n, --gen-tokens N       greedy decode tokens per frontier (default 128)\n"
        "Speculation:\n"
        "  --mtp FILE               also decode with MTP speculation at each frontier (stderr)\n"
        "  --mtp-accept P           force the drafts' acceptance rate to P (0..1) with the plain\n"
        "                           run's tokens (default: the MTP's own drafts); with --cuda and\n"
        "                           no --mtp: the verify steps alone (no MTP block runs)\n"
        "  --mtp-margin F           margin for the MTP's own drafts (default 3)\n"
        "Output:\n"
        "  --csv FILE               CSV there instead of stdout\n"
        "  --bw-mib N               memory bandwidth probe buffer in MiB (default 512, 0 = skip)\n"
        "  -h, --help               this help\n");
}

/* ------------------------------------------------------------ options */

/* A count flag: an int >= min (the message names the flag and the range). */
static int int_flag(const char *flag, const char *s, int min, int *out) {
    return ds4_parse_int_flag("ds4-bench", flag, s, min, INT_MAX, out);
}

/* 0 = ok, 1 = help printed, 2 = usage error (message printed). */
static int parse_args(int argc, char **argv, bench_opts *o) {
    *o = (bench_opts){.model_path = "ds4flash.gguf", .system = "You are a helpful assistant.",
                      .preset = "flash", .ctx_start = 2048, .ctx_max = 32768, .step_incr = 2048,
                      .gen_tokens = 128, .step_mul = 1.0, .bw_mib = 512, .mtp_accept = -1.0,
                      .mtp_margin = 3.0f};
    bool model_given = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define IS(s) (strcmp(a, s) == 0)
        if (IS("-h") || IS("--help")) { usage(stdout); return 1; }
        if (IS("--cpu")) { o->backend = "cpu"; continue; }
        if (IS("--cuda")) { o->backend = "cuda"; continue; }
        if (IS("--warm-weights")) { o->warm_weights = true; continue; }
        if (IS("--quality")) { o->quality = true; continue; }
        if (a[0] != '-') {
            fprintf(stderr, "ds4-bench: unexpected argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool known = IS("-m") || IS("--model") || IS("--prompt-file") || IS("--chat-prompt-file") ||
                     IS("-sys") || IS("--system") || IS("--csv") || IS("--backend") || IS("--synthetic") ||
                     IS("--preset") || IS("--layers") || IS("-t") || IS("--threads") || IS("--ctx-start") ||
                     IS("--ctx-max") || IS("--ctx-alloc") || IS("--step-incr") || IS("--step-mul") ||
                     IS("--gen-tokens") || IS("--tokens") || IS("-n") || IS("--prefill-chunk") ||
                     IS("--bw-mib") || IS("--mtp") || IS("--mtp-accept") || IS("--mtp-margin");
        if (!known) {
            fprintf(stderr, "ds4-bench: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
        if (!v) {
            fprintf(stderr, "ds4-bench: %s needs a value\n", a);
            return 2;
        }
        i++;
        int rc = 0;
        if (IS("-m") || IS("--model")) { o->model_path = v; model_given = true; }
        else if (IS("--prompt-file")) o->prompt_path = v;
        else if (IS("--chat-prompt-file")) o->chat_prompt_path = v;
        else if (IS("-sys") || IS("--system")) o->system = v;
        else if (IS("--csv")) o->csv_path = v;
        else if (IS("--backend")) o->backend = v;
        else if (IS("--synthetic")) o->synthetic = v;
        else if (IS("--preset")) o->preset = v;
        else if (IS("--layers")) rc = int_flag(a, v, 1, &o->layers);
        else if (IS("-t") || IS("--threads")) rc = int_flag(a, v, 1, &o->threads);
        else if (IS("--ctx-start")) rc = int_flag(a, v, 1, &o->ctx_start);
        else if (IS("--ctx-max")) rc = int_flag(a, v, 1, &o->ctx_max);
        else if (IS("--ctx-alloc")) rc = int_flag(a, v, 1, &o->ctx_alloc);
        else if (IS("--step-incr")) rc = int_flag(a, v, 1, &o->step_incr);
        else if (IS("--prefill-chunk")) rc = int_flag(a, v, 1, &o->prefill_chunk);
        else if (IS("--bw-mib")) rc = int_flag(a, v, 0, &o->bw_mib);
        else if (IS("--mtp")) o->mtp_path = v;
        else if (IS("--mtp-margin")) rc = ds4_parse_float_flag("ds4-bench", a, v, 0, 1000, &o->mtp_margin);
        else if (IS("--mtp-accept")) {
            float p;
            rc = ds4_parse_float_flag("ds4-bench", a, v, 0, 1, &p);
            o->mtp_accept = p;
        }
        else if (IS("--gen-tokens") || IS("--tokens") || IS("-n")) rc = int_flag(a, v, 1, &o->gen_tokens);
        else if (IS("--step-mul")) {
            char *end;
            errno = 0;
            o->step_mul = strtod(v, &end);
            if (errno || end == v || *end || !isfinite(o->step_mul) || o->step_mul < 1.0) {
                fprintf(stderr, "ds4-bench: --step-mul needs a number >= 1, got '%s'\n", v);
                return 2;
            }
        }
#undef IS
        if (rc) return 2;
    }
    if (o->prompt_path && o->chat_prompt_path) {
        fprintf(stderr, "ds4-bench: give only one of --prompt-file and --chat-prompt-file\n");
        return 2;
    }
    if (!o->prompt_path && !o->chat_prompt_path && !o->synthetic) {
        fprintf(stderr, "ds4-bench: --prompt-file or --chat-prompt-file is required (or --synthetic)\n");
        return 2;
    }
    if (o->synthetic && model_given) {
        fprintf(stderr, "ds4-bench: --synthetic builds its own model; drop -m\n");
        return 2;
    }
    if (o->synthetic && strcmp(o->synthetic, "q2") != 0 && strcmp(o->synthetic, "q4") != 0) {
        fprintf(stderr, "ds4-bench: --synthetic is q2 or q4, got '%s'\n", o->synthetic);
        return 2;
    }
    if (!o->synthetic && (o->layers || strcmp(o->preset, "flash") != 0)) {
        fprintf(stderr, "ds4-bench: --preset and --layers go with --synthetic\n");
        return 2;
    }
    if (strcmp(o->preset, "flash") != 0 && strcmp(o->preset, "tiny") != 0) {
        fprintf(stderr, "ds4-bench: --preset is flash or tiny, got '%s'\n", o->preset);
        return 2;
    }
    if (o->backend && strcmp(o->backend, "cpu") != 0 && strcmp(o->backend, "cuda") != 0) {
        fprintf(stderr, "ds4-bench: --backend is cpu or cuda, got '%s'\n", o->backend);
        return 2;
    }
    if (o->mtp_accept >= 0 && !o->mtp_path && !(o->backend && !strcmp(o->backend, "cuda"))) {
        fprintf(stderr, "ds4-bench: --mtp-accept goes with --mtp (or alone with --cuda: the verify steps)\n");
        return 2;
    }
    if (o->ctx_start > o->ctx_max) {
        fprintf(stderr, "ds4-bench: --ctx-start %d is larger than --ctx-max %d\n", o->ctx_start, o->ctx_max);
        return 2;
    }
    if (o->ctx_max > INT_MAX - o->gen_tokens - 1) {
        fprintf(stderr, "ds4-bench: --ctx-max + --gen-tokens is too large\n");
        return 2;
    }
    if (!o->ctx_alloc) o->ctx_alloc = o->ctx_max + o->gen_tokens + 1;
    if (o->ctx_alloc <= o->ctx_max + o->gen_tokens) {
        fprintf(stderr, "ds4-bench: --ctx-alloc %d must be greater than ctx-max + gen-tokens (%d)\n",
                o->ctx_alloc, o->ctx_max + o->gen_tokens);
        return 2;
    }
    return 0;
}

/* The frontier after cur (server-spec §1.4): +step-incr, or ceil(cur * step-mul)
 * but at least cur + 1; never past ctx-max. */
static int next_frontier(const bench_opts *o, int cur) {
    double next = o->step_mul == 1.0 ? (double)cur + o->step_incr : ceil((double)cur * o->step_mul);
    if (next < (double)cur + 1) next = (double)cur + 1;
    return next > (double)o->ctx_max ? o->ctx_max : (int)next;
}

/* ----------------------------------------------- memory read bandwidth */

typedef uint64_t u64x8 __attribute__((vector_size(64)));

/* A buffer well beyond the last-level cache, read by `threads` threads. */
typedef struct bw_probe {
    u64x8 *buf;
    size_t nvec;
    int threads;
} bw_probe;

typedef struct bw_job {
    const u64x8 *base;
    size_t n;       /* vectors in this thread's slice */
    uint64_t sink;  /* keeps the loads alive */
    double cpu;     /* the thread's CPU seconds for the read */
} bw_job;

static void *bw_read_slice(void *arg) {
    bw_job *j = arg;
    double c0 = ds4_thread_cpu_now();
    u64x8 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    size_t i = 0;
    for (; i + 4 <= j->n; i += 4) {
        a0 ^= j->base[i];
        a1 ^= j->base[i + 1];
        a2 ^= j->base[i + 2];
        a3 ^= j->base[i + 3];
    }
    for (; i < j->n; i++) a0 ^= j->base[i];
    u64x8 a = a0 ^ a1 ^ a2 ^ a3;
    uint64_t s = 0;
    for (int k = 0; k < 8; k++) s ^= a[k];
    j->sink = s;
    j->cpu = ds4_thread_cpu_now() - c0;
    return NULL;
}

/* Allocates and writes the buffer once, so every page is resident. */
static int bw_probe_init(bw_probe *p, int threads, int mib) {
    size_t bytes = (size_t)mib << 20;
    p->buf = NULL;
    p->nvec = bytes / sizeof(u64x8);
    p->threads = threads;
    if (threads < 1 || p->nvec < (size_t)threads || posix_memalign((void **)&p->buf, 1 << 21, bytes)) return -1;
    memset(p->buf, 0x5a, bytes);
    return 0;
}

/* Read rates in bytes per second: of wall time, and per CPU-second (bytes
 * over the threads' summed CPU time: what a core reads while it runs,
 * whatever share of the machine it gets). */
typedef struct bw_rate {
    double wall, per_cpu;
} bw_rate;

/* Best of three passes, each thread reading its share once (thread start
 * and join are inside the wall timing: microseconds against tens of
 * milliseconds). Zeros if threads could not start. */
static bw_rate bw_probe_measure(bw_probe *p) {
    bw_job jobs[64];
    pthread_t tid[64];
    int threads = p->threads < 64 ? p->threads : 64;
    bw_rate best = {0, 0};
    double bytes = (double)(p->nvec * sizeof(u64x8));
    for (int pass = 0; pass < 3; pass++) {
        int started = 0;
        double t0 = ds4_now();
        for (int t = 0; t < threads; t++) {
            size_t lo = p->nvec * t / threads, hi = p->nvec * (t + 1) / threads;
            jobs[t] = (bw_job){p->buf + lo, hi - lo, 0, 0};
            if (pthread_create(&tid[t], NULL, bw_read_slice, &jobs[t])) break;
            started++;
        }
        double cpu = 0;
        for (int t = 0; t < started; t++) {
            pthread_join(tid[t], NULL);
            cpu += jobs[t].cpu;
        }
        double dt = ds4_now() - t0;
        if (started < threads) return (bw_rate){0, 0};
        if (dt > 0 && bytes / dt > best.wall) best.wall = bytes / dt;
        if (cpu > 0 && bytes / cpu > best.per_cpu) best.per_cpu = bytes / cpu;
    }
    return best;
}

/* ------------------------------------------------------------ the model */

/* Builds the synthetic model image (freed by the caller with
 * ds4_synth_image_free); for the cuda backend the large matrices are left
 * to the device. */
static int build_synthetic(const bench_opts *o, ds4_synth_image *img, ds4_err *err) {
    ds4_synth_config c;
    memset(&c, 0, sizeof c);
    c.seed = 1;
    c.name = "DeepSeek V4 Flash (synthetic, ds4-bench)";
    if (ds4_synth_preset(o->preset, (uint32_t)o->layers, &c.hp, err) ||
        ds4_synth_expert_types(o->synthetic, &c.expert_gate_type, &c.expert_down_type, err))
        return -1;
    ds4_synth_vocab vocab;
    if (ds4_synth_vocab_fallback(&vocab, c.hp.n_vocab, err)) return -1;
    c.hp.n_vocab = vocab.n_tokens;
    c.vocab = &vocab;
    bool on_device = o->backend && strcmp(o->backend, "cuda") == 0;
    int rc = ds4_synth_image_build(&c, on_device ? (uint64_t)1 << 20 : 0, img, err);
    ds4_synth_vocab_free(&vocab);
    return rc;
}

/* Reads one byte per page of every tensor so the weights are resident. */
static void warm_weights(const ds4_model *m) {
    const uint8_t *p = m->file.base + m->file.data_offset;
    uint64_t n = m->file.size - m->file.data_offset, page = (uint64_t)sysconf(_SC_PAGESIZE);
    volatile uint8_t sink = 0;
    for (uint64_t i = 0; i < n; i += page) sink ^= p[i];
    (void)sink;
}

/* ---------------------------------------------------------- the prompt */

static char *read_text_file(const char *path, size_t *len, ds4_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) { ds4_fail(err, "cannot open %s: %s", path, strerror(errno)); return NULL; }
    ds4_buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) ds4_buf_add(&b, chunk, n);
    if (ferror(f)) {
        ds4_fail(err, "cannot read %s: %s", path, strerror(errno));
        fclose(f);
        ds4_buf_free(&b);
        return NULL;
    }
    fclose(f);
    *len = b.len;
    return ds4_buf_take(&b);
}

/* The benchmark's token sequence: the prompt file's tokens, or random ids. */
static int prompt_tokens(const bench_opts *o, ds4_engine *e, int32_t **ids, size_t *n, ds4_err *err) {
    const ds4_tokenizer *tok = ds4_engine_tokenizer(e);
    *ids = NULL;
    *n = 0;
    if (!o->prompt_path && !o->chat_prompt_path) {
        int32_t n_vocab = ds4_tokenizer_n_vocab(tok);
        uint64_t rng = 0x9e3779b97f4a7c15ull;
        *ids = malloc(sizeof **ids * (size_t)o->ctx_max);
        if (!*ids) return ds4_fail(err, "out of memory");
        for (int i = 0; i < o->ctx_max; i++) {
            rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27; /* xorshift64* */
            (*ids)[i] = (int32_t)((rng * 0x2545f4914f6cdd1dull >> 33) % (uint64_t)n_vocab);
        }
        *n = (size_t)o->ctx_max;
        return 0;
    }
    const char *path = o->prompt_path ? o->prompt_path : o->chat_prompt_path;
    size_t len;
    char *text = read_text_file(path, &len, err);
    if (!text) return -1;
    int rc;
    if (o->prompt_path) {
        rc = ds4_tokenize(tok, text, len, false, ids, n, err);
    } else {
        ds4_chat_msg msgs[2] = {{.role = DS4_ROLE_SYSTEM, .content = o->system},
                                {.role = DS4_ROLE_USER, .content = text}};
        ds4_chat chat = {.msgs = msgs, .n_msgs = 2};
        ds4_chat_opts copts = {.mode = DS4_THINK_NONE, .ctx = o->ctx_alloc};
        ds4_buf rendered = {0};
        rc = ds4_chat_render(&chat, &copts, &rendered, err);
        if (rc == 0) rc = ds4_tokenize(tok, rendered.p, rendered.len, true, ids, n, err);
        ds4_buf_free(&rendered);
    }
    free(text);
    if (rc) return ds4_fail_prefix(err, path);
    if (*n < (size_t)o->ctx_max) {
        free(*ids);
        *ids = NULL;
        return ds4_fail(err, "%s has %zu tokens, fewer than --ctx-max %d", path, *n,
                        o->ctx_max);
    }
    return 0;
}

/* ------------------------------------------------------- the snapshot */

/* The session's payload, in a buffer grown to fit. */
typedef struct snapshot {
    uint8_t *p;
    size_t len, cap;
} snapshot;

static int snapshot_save(ds4_session *s, snapshot *m, ds4_err *err) {
    uint64_t need = ds4_session_payload_bytes(s);
    if (need > m->cap) {
        if (need > SIZE_MAX) return ds4_fail(err, "snapshot of %llu bytes is too large", (unsigned long long)need);
        uint8_t *p = realloc(m->p, (size_t)need);
        if (!p) return ds4_fail(err, "out of memory for a %llu-byte snapshot", (unsigned long long)need);
        m->p = p;
        m->cap = (size_t)need;
    }
    return ds4_session_save_payload_mem(s, m->p, m->cap, &m->len, err);
}

static int snapshot_restore(ds4_session *s, const snapshot *m, ds4_err *err) {
    return ds4_session_load_payload_mem(s, m->p, m->len, err);
}

/* ---------------------------------------------------------- speculation */

/* The draft hook of a speculative run: times the MTP's draft (the hook
 * runs right after it) and, with --mtp-accept, replaces it by the plain
 * run's token at that position — right in a fraction P of the cycles
 * (cycle i is right iff floor((i+1)·P) > floor(i·P)), else another token. */
typedef struct spec_run {
    const bench_opts *o;
    const int32_t *ref; /* the plain run's tokens from position base */
    int base, n_ref, n_vocab;
    int cycles, drafts, accepted;
    double t_draft;     /* when the current cycle's draft was ready, 0: the cycle had none */
} spec_run;

static int32_t spec_hook(void *ctx, int pos, int32_t draft, const float *mtp_logits) {
    spec_run *r = ctx;
    const double now = ds4_now();
    const int i = pos - r->base;
    int32_t d = -1;
    if (r->o->mtp_accept < 0) {
        if (ds4_top_margin(mtp_logits, r->n_vocab, draft) >= r->o->mtp_margin) d = draft;
    } else if (i >= 0 && i < r->n_ref) {
        const double p = r->o->mtp_accept;
        const bool right = floor((r->drafts + 1) * p) > floor(r->drafts * p);
        d = right ? r->ref[i] : (r->ref[i] + 1) % r->n_vocab;
    }
    if (d >= 0) r->t_draft = now, r->drafts++;
    return d;
}

/* The speculative decode of gen tokens from the session's state (the
 * frontier f), which must give the plain run's tokens ref; on stderr its
 * rate and the split of a cycle. */
static int spec_decode(const bench_opts *o, ds4_session *s, int n_vocab, int f, const int32_t *ref, int32_t eos,
                       double plain_s, ds4_err *err) {
    spec_run r = {.o = o, .ref = ref, .base = f, .n_ref = o->gen_tokens, .n_vocab = n_vocab};
    ds4_spec_opts so = {.margin = o->mtp_margin, .draft_hook = spec_hook, .hook_ctx = &r,
                        .hook_no_logits = o->mtp_accept >= 0};
    double draft_s = 0, verify_s = 0, t0 = ds4_now();
    int done = 0;
    while (done < o->gen_tokens) {
        int32_t first = ds4_session_argmax(s, eos), out[2];
        double c0 = ds4_now();
        r.t_draft = 0;
        int n = ds4_session_eval_speculative(s, first, o->gen_tokens - done, &so, out, err);
        double c1 = ds4_now();
        if (n < 0) return -1;
        for (int k = 0; k < n; k++)
            if (out[k] != ref[done + k])
                return ds4_fail(err, "speculative token %d is %d, the plain run's %d", done + k, out[k], ref[done + k]);
        if (r.t_draft > 0) draft_s += r.t_draft - c0, verify_s += c1 - r.t_draft;
        r.cycles++;
        r.accepted += n - 1;
        done += n;
    }
    double t = ds4_now() - t0;
    fprintf(stderr, "ds4-bench: ctx %6d: speculative decode%s %d tok %7.2f tok/s (plain %.2f, x%.2f) | %d cycles, "
            "%d drafts accepted (%.0f%% of those verified%s) | a cycle with a draft: MTP %.2f ms + verify %.2f ms\n", f,
            o->mtp_path ? "" : " (no MTP block: the verify steps alone)", o->gen_tokens,
            o->gen_tokens / t, o->gen_tokens / plain_s, plain_s / t, r.cycles, r.accepted,
            r.drafts ? 100.0 * r.accepted / r.drafts : 0.0, o->mtp_accept >= 0 ? ", forced" : "",
            r.drafts ? draft_s * 1e3 / r.drafts : 0.0, r.drafts ? verify_s * 1e3 / r.drafts : 0.0);
    return 0;
}

/* --------------------------------------------------------------- decode */

/* ------------------------------------------------------------------ run */

typedef struct frontier_result {
    int ctx, prefill_tokens;
    double prefill_s, gen_s;
    double prefill_cpu, gen_cpu; /* process CPU seconds of each */
    bw_rate bw;         /* read bandwidth probed just before the decode, 0 = none */
    uint64_t kv_bytes;
} frontier_result;

/* What a sweep needs. */
typedef struct bench_run {
    const bench_opts *o;
    ds4_engine *e;
    int threads;
    const int32_t *ids;
    FILE *csv;
    bw_probe probe;     /* probe.buf NULL: no bandwidth probes */
    double bw_min, bw_max; /* wall-time probes */
} bench_run;

/* Bytes for people: "734.0 MB", "9.561 GB". */
static const char *show_bytes(double b, char buf[32]) {
    if (b < 1e9) snprintf(buf, 32, "%.1f MB", b / 1e6);
    else snprintf(buf, 32, "%.3f GB", b / 1e9);
    return buf;
}

static void print_setup(const bench_run *b, const ds4_synth_image *img, double build_s, double open_s) {
    const bench_opts *o = b->o;
    const ds4_model *m = ds4_engine_model(b->e);
    if (o->synthetic)
        fprintf(stderr, "ds4-bench: model: synthetic %s %s, %u layers, %.2f GiB of weights, %.2f GiB of them "
                "generated by the backend (image built in %.1f s, engine opened in %.1f s)\n", o->preset,
                o->synthetic, m->hp.n_layer, (double)m->weight_bytes / (1 << 30),
                (double)img->fill_bytes / (1 << 30), build_s, open_s);
    else
        fprintf(stderr, "ds4-bench: model: %s, %s experts, %u layers, %.2f GiB of weights\n", o->model_path,
                ds4_model_expert_quant_name(m), m->hp.n_layer, (double)m->weight_bytes / (1 << 30));
    fprintf(stderr, "ds4-bench: backend %s, %d threads, ctx %d, simd %s\n", ds4_engine_backend_name(b->e),
            b->threads, ds4_engine_ctx(b->e), ds4_isa_name(ds4_quant_get_isa()));
    if (b->probe.buf)
        fprintf(stderr, "ds4-bench: memory read bandwidth probed before each decode run (%d threads, %d MiB, "
                "best of 3 passes)\n", b->threads, o->bw_mib);
    ds4_decode_traffic t;
    ds4_decode_traffic_at(m, 0, &t);
    char s[8][32];
    fprintf(stderr,
            "ds4-bench: weights read per decode token: %s = layers %s (attention %s, shared expert %s, "
            "routed experts %s, hc+router %s, compressors %s) + head %s",
            show_bytes(t.total, s[0]), show_bytes(t.layers, s[1]), show_bytes(t.attention, s[2]),
            show_bytes(t.shared_expert, s[3]), show_bytes(t.routed_experts, s[4]),
            show_bytes(t.hc + t.router, s[5]), show_bytes(t.compressors, s[6]), show_bytes(t.head, s[7]));
    ds4_decode_traffic_at(m, (uint64_t)o->ctx_max + o->gen_tokens, &t);
    if (t.indexer)
        fprintf(stderr, "; + indexer %s past ctx %u", show_bytes(t.indexer, s[0]), 4 * m->hp.indexer_top_k);
    fprintf(stderr, "\n");
}

/* Mean weight bytes per step over the decode positions [ctx, ctx + n). */
static double mean_traffic(const ds4_model *m, int ctx, int n) {
    double sum = 0;
    for (int i = 0; i < n; i++) {
        ds4_decode_traffic t;
        ds4_decode_traffic_at(m, (uint64_t)ctx + i, &t);
        sum += (double)t.total;
    }
    return sum / n;
}

/* One summary line per frontier: wall-time rates against the wall-time
 * probe, then the same per CPU-second (the decode's process CPU time, the
 * probe's thread CPU time), which a shared machine disturbs much less, and
 * the share of the cores the decode got (CPU time over wall time × threads;
 * idle pool workers count while they spin). */
static void print_frontier(const bench_run *b, const frontier_result *r) {
    int gen = b->o->gen_tokens;
    double ms = r->gen_s * 1e3 / gen, bytes = mean_traffic(ds4_engine_model(b->e), r->ctx, gen);
    double gbps = bytes / (ms * 1e-3) / 1e9, cpu_ms = r->gen_cpu * 1e3 / gen;
    double cpu_gbps = cpu_ms > 0 ? bytes / (cpu_ms * 1e-3) / 1e9 : 0;
    char s[32];
    fprintf(stderr, "ds4-bench: ctx %6d: prefill %6d tok %8.2f tok/s (%.2f per CPU-second) | decode %4d tok "
            "%7.2f tok/s, %8.2f ms/tok, %s/tok = %.2f GB/s", r->ctx, r->prefill_tokens,
            r->prefill_tokens / r->prefill_s, r->prefill_cpu > 0 ? r->prefill_tokens / r->prefill_cpu : 0.0, gen,
            gen / r->gen_s, ms, show_bytes(bytes, s), gbps);
    if (r->bw.wall > 0) fprintf(stderr, " = %.0f%% of %.2f GB/s probed", 100.0 * gbps * 1e9 / r->bw.wall, r->bw.wall / 1e9);
    fprintf(stderr, " | per CPU-second: %.2f ms/tok, %.2f GB/s", cpu_ms, cpu_gbps);
    if (r->bw.per_cpu > 0)
        fprintf(stderr, " = %.0f%% of %.2f GB/s probed", 100.0 * cpu_gbps * 1e9 / r->bw.per_cpu, r->bw.per_cpu / 1e9);
    fprintf(stderr, " | cpu share %.0f%%\n", 100.0 * r->gen_cpu / (r->gen_s * b->threads));
}

static int run_sweep(bench_run *b, ds4_err *err) {
    const bench_opts *o = b->o;
    ds4_session *s = NULL;
    if (ds4_session_new(b->e, &s, err)) return -1;
    int32_t eos = ds4_tokenizer_specials(ds4_engine_tokenizer(b->e)).eos;
    snapshot snap = {0};
    int rc = 0, prev = 0;
    const bool spec = o->mtp_path || o->mtp_accept >= 0;
    int32_t *ref = spec ? calloc((size_t)o->gen_tokens, sizeof *ref) : NULL; /* the plain run's tokens */
    if (spec && !ref) {
        ds4_session_free(s);
        return ds4_fail(err, "out of memory");
    }
    fprintf(b->csv, "ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes\n");
    fflush(b->csv);
    for (int f = o->ctx_start;; f = next_frontier(o, f)) {
        frontier_result r = {.ctx = f, .prefill_tokens = f - prev};
        double c0 = ds4_process_cpu_now(), t0 = ds4_now();
        rc = ds4_session_sync(s, b->ids, f, NULL, NULL, NULL, err);
        r.prefill_s = ds4_now() - t0;
        r.prefill_cpu = ds4_process_cpu_now() - c0;
        if (rc) { ds4_fail_prefix(err, "prefill"); break; }
        if ((rc = snapshot_save(s, &snap, err))) break;
        r.kv_bytes = snap.len;
        if (b->probe.buf) {
            r.bw = bw_probe_measure(&b->probe);
            if (r.bw.wall > 0 && (b->bw_min == 0 || r.bw.wall < b->bw_min)) b->bw_min = r.bw.wall;
            if (r.bw.wall > b->bw_max) b->bw_max = r.bw.wall;
        }
        c0 = ds4_process_cpu_now();
        t0 = ds4_now();
        for (int i = 0; i < o->gen_tokens && rc == 0; i++) {
            int32_t next = ds4_session_argmax(s, eos); /* §7.1: EOS excluded */
            if (ref) ref[i] = next;
            rc = ds4_session_eval(s, &next, 1, NULL, NULL, err);
        }
        r.gen_s = ds4_now() - t0;
        r.gen_cpu = ds4_process_cpu_now() - c0;
        if (rc) { ds4_fail_prefix(err, "decode"); break; }
        if ((rc = snapshot_restore(s, &snap, err))) break;
        if (ref && ((rc = spec_decode(o, s, (int)ds4_engine_model(b->e)->hp.n_vocab, f, ref, eos, r.gen_s, err)) || (rc = snapshot_restore(s, &snap, err)))) {
            ds4_fail_prefix(err, "speculative decode");
            break;
        }
        fprintf(b->csv, "%d,%d,%.2f,%d,%.2f,%llu\n", f, r.prefill_tokens,
                r.prefill_s > 0 ? r.prefill_tokens / r.prefill_s : 0.0, o->gen_tokens,
                r.gen_s > 0 ? o->gen_tokens / r.gen_s : 0.0, (unsigned long long)r.kv_bytes);
        fflush(b->csv);
        print_frontier(b, &r);
        prev = f;
        if (f >= o->ctx_max) break;
    }
    if (rc == 0 && b->bw_max > 0)
        fprintf(stderr, "ds4-bench: read bandwidth probes (wall time): %.2f-%.2f GB/s\n", b->bw_min / 1e9,
                b->bw_max / 1e9);
    free(snap.p);
    free(ref);
    ds4_session_free(s);
    return rc;
}

int main(int argc, char **argv) {
    bench_opts o;
    int prc = parse_args(argc, argv, &o);
    if (prc) return prc == 1 ? 0 : 2;

    ds4_err err = {{0}};
    ds4_synth_image img = {0};
    double build_s = 0, open_s;
    if (o.synthetic) {
        double t0 = ds4_now();
        if (build_synthetic(&o, &img, &err)) {
            fprintf(stderr, "ds4-bench: %s\n", err.msg);
            return 1;
        }
        build_s = ds4_now() - t0;
    }
    bench_run b = {.o = &o, .threads = o.threads ? o.threads : cpu_default_threads(), .csv = stdout};
    ds4_engine_config cfg = {.model_path = o.synthetic ? NULL : o.model_path, .mtp_path = o.mtp_path,
                             .model_image = img.base,
                             .model_image_size = img.size, .ctx = o.ctx_alloc, .threads = b.threads,
                             .backend = o.backend, .prefill_chunk = o.prefill_chunk, .quality = o.quality,
                             .synth_fills = img.fills, .n_synth_fills = img.n_fills};
    double t_open = ds4_now();
    if (ds4_engine_open(&b.e, &cfg, &err)) {
        fprintf(stderr, "ds4-bench: %s\n", err.msg);
        ds4_synth_image_free(&img);
        return 1;
    }
    open_s = ds4_now() - t_open;
    if (o.warm_weights && !img.n_fills) warm_weights(ds4_engine_model(b.e));

    int32_t *ids = NULL;
    size_t n_ids = 0;
    int rc = 1;
    if (prompt_tokens(&o, b.e, &ids, &n_ids, &err)) {
        fprintf(stderr, "ds4-bench: %s\n", err.msg);
        goto done;
    }
    b.ids = ids;
    if (o.csv_path && !(b.csv = fopen(o.csv_path, "w"))) {
        fprintf(stderr, "ds4-bench: cannot create %s: %s\n", o.csv_path, strerror(errno));
        b.csv = stdout;
        goto done;
    }
    if (o.bw_mib && bw_probe_init(&b.probe, b.threads, o.bw_mib)) {
        fprintf(stderr, "ds4-bench: out of memory for the %d MiB bandwidth probe (--bw-mib)\n", o.bw_mib);
        goto done;
    }
    print_setup(&b, &img, build_s, open_s);
    if (run_sweep(&b, &err)) {
        fprintf(stderr, "ds4-bench: %s\n", err.msg);
        goto done;
    }
    rc = 0;
done:
    if (b.csv != stdout && fclose(b.csv) != 0 && rc == 0) {
        fprintf(stderr, "ds4-bench: cannot write %s: %s\n", o.csv_path, strerror(errno));
        rc = 1;
    }
    free(b.probe.buf);
    free(ids);
    ds4_engine_close(b.e);
    ds4_synth_image_free(&img);
    return rc;
}
