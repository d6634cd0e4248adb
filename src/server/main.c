/* main.c — the ds4-server command: flags (server-spec §1.1, §1.3, plus
 * --api-key, --max-queue, --max-body-mb, --io-timeout, --kv-snapshot-mb),
 * model loading, the KV cache, the worker, and the HTTP server until
 * SIGINT/SIGTERM (the worker then saves the live session to the disk cache).
 *
 * Integer flags must be in range, an unknown flag prints usage and exits 2.
 * SIGINT and SIGTERM are blocked before any thread starts, so only the
 * HTTP module's sigwait() sees them. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/parse.h"
#include "../tok/tokenizer.h"
#include "ctx.h"
#include "force.h"

static void usage(FILE *out) {
    fprintf(out,
        "usage: ds4-server [options]\n"
        "\n"
        "Model and engine:\n"
        "  -m, --model FILE        GGUF model (default ./ds4flash.gguf)\n"
        "      --mtp FILE          MTP draft GGUF: greedy speculative decoding\n"
        "      --mtp-draft N       draft tokens a step, 1..16 (default 1 = off; 2 or more speculates on\n"
        "                          requests with temperature 0; one draft a step is verified so far)\n"
        "      --mtp-margin F      verify a draft only when the MTP's top logit leads by F, 0..1000 (default 3)\n"
        "  -c, --ctx N             context tokens (default 32768)\n"
        "  -n, --tokens N          default max output tokens when a request sets none (default 393216)\n"
        "  -t, --threads N         CPU threads (default: all cores, or DS4_THREADS)\n"
        "      --exact             plain f32 numerics\n"
        "      --quality           exact kernels where a faster approximation exists (CUDA prefill)\n"
        "      --cpu | --cuda | --backend cpu|cuda\n"
        "      --chdir DIR         change directory before loading the model\n"
        "\n"
        "Sampling defaults (forced in thinking mode, as DeepSeek's API does):\n"
        "      --temp F            0..100 (default 1.0; 0 = greedy)\n"
        "      --top-p F           0..1 (default 1.0)\n"
        "      --min-p F           0..1 (default 0.05)\n"
        "      --top-k N           0 = off (default), at most 1024\n"
        "      --seed N            fixed sampling seed (default: per request, time-based)\n"
        "      --think | --think-max | --nothink   default thinking mode (default --think)\n"
        "\n"
        "HTTP:\n"
        "      --host ADDR         IPv4 address to bind (default 127.0.0.1; localhost ok)\n"
        "      --port N            port (default 8000; 0 = any free port)\n"
        "      --cors              send Access-Control-Allow-* headers\n"
        "      --api-key KEY       require 'Authorization: Bearer KEY' or 'x-api-key: KEY'\n"
        "      --max-queue N       requests waiting for the model before 429 (default 64)\n"
        "      --max-body-mb N     largest request body in MiB before 413 (default 64)\n"
        "      --io-timeout N      seconds an idle or stalled connection is kept (default 30)\n"
        "      --keepalive N       SSE keep-alive comment after N silent seconds (default 5)\n"
        "      --trace FILE        write a human-readable trace of every request\n"
        "      --tool-memory-max-ids N         tool ids remembered for exact DSML replay (default 100000)\n"
        "      --disable-exact-dsml-tool-replay  render tool calls canonically instead\n"
        "\n"
        "Testing:\n"
        "      --force-output FILE TEST ONLY: replies are FILE's text instead of sampled tokens (the\n"
        "                          forward pass still runs); outputs separated by lines '" SRV_FORCE_MARKER "'\n"
        "                          go to successive assistant turns (src/server/README.md)\n"
        "\n"
        "KV cache (a request starts from the longest saved state its prompt extends):\n"
        "      --kv-snapshot-mb N  RAM for the state at the end of the last prompt (and, in\n"
        "                          half of it, at its last user turn), so a retry, regenerate or\n"
        "                          edited last message skips that prefill (default 4096; 0 = off)\n"
        "      --kv-disk-dir DIR   keep checkpoints in DIR (created 0700; off by default)\n"
        "      --kv-disk-space-mb N                 disk budget (default 4096)\n"
        "      --kv-cache-min-tokens N              shortest checkpoint (default 512)\n"
        "      --kv-cache-cold-max-tokens N         longest prompt saved cold (default 30000; 0 = none)\n"
        "      --kv-cache-continued-interval-tokens N  save every N tokens (default 10000; 0 = off)\n"
        "      --kv-cache-boundary-trim-tokens N    tokens left out of a cold save (default 32)\n"
        "      --kv-cache-boundary-align-tokens N   save lengths aligned to N (default 2048; 0 = off)\n"
        "      --kv-cache-reject-different-quant    use only checkpoints of the same expert quant\n"
        "  -h, --help              this help\n");
}

static bool needs_value(const char *a) {
    static const char *const flags[] = {
        "-m", "--model", "--mtp", "--mtp-draft", "--mtp-margin", "-c", "--ctx", "-n", "--tokens", "-t", "--threads", "--backend",
        "--chdir", "--temp", "--top-p", "--min-p", "--top-k", "--seed", "--host", "--port",
        "--api-key", "--max-queue", "--max-body-mb", "--io-timeout", "--keepalive", "--trace", "--tool-memory-max-ids",
        "--force-output",
        "--kv-snapshot-mb", "--kv-disk-dir", "--kv-disk-space-mb", "--kv-cache-min-tokens",
        "--kv-cache-cold-max-tokens", "--kv-cache-continued-interval-tokens", "--kv-cache-boundary-trim-tokens",
        "--kv-cache-boundary-align-tokens",
    };
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (!strcmp(a, flags[i])) return true;
    return false;
}

static int parse_args(int argc, char **argv, srv_config *cfg) {
    int max_body_mb = 64, keepalive = 5, disk_mb = 4096, snapshot_mb = 4096;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = true;
#define IS(x) (!strcmp(a, x))
        if (IS("-h") || IS("--help")) {
            usage(stdout);
            exit(0);
        } else if (IS("--cors")) cfg->cors = true, takes = false;
        else if (IS("--exact")) cfg->engine.exact = true, takes = false;
        else if (IS("--quality")) cfg->engine.quality = true, takes = false;
        else if (IS("--cpu")) cfg->engine.backend = "cpu", takes = false;
        else if (IS("--cuda")) cfg->engine.backend = "cuda", takes = false;
        else if (IS("--think")) cfg->think = SRV_THINK_HIGH, takes = false;
        else if (IS("--think-max")) cfg->think = SRV_THINK_MAX, takes = false;
        else if (IS("--nothink")) cfg->think = SRV_THINK_NONE, takes = false;
        else if (IS("--disable-exact-dsml-tool-replay")) cfg->exact_replay = false, takes = false;
        else if (IS("--kv-cache-reject-different-quant")) cfg->kv.reject_different_quant = true, takes = false;
        if (!takes) continue;
        if (!v && needs_value(a)) {
            fprintf(stderr, "ds4-server: %s needs a value\n", a);
            return -1;
        }
        int rc = 0;
        if (IS("-m") || IS("--model")) cfg->engine.model_path = v;
        else if (IS("--mtp")) cfg->engine.mtp_path = v;
        else if (IS("--mtp-draft")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, 16, &cfg->mtp_draft);
        else if (IS("--mtp-margin")) rc = ds4_parse_float_flag("ds4-server", a, v, 0, 1000, &cfg->spec.margin);
        else if (IS("-c") || IS("--ctx")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, INT_MAX, &cfg->engine.ctx);
        else if (IS("-n") || IS("--tokens")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, INT_MAX, &cfg->default_max_tokens);
        else if (IS("-t") || IS("--threads")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, 4096, &cfg->engine.threads);
        else if (IS("--backend")) {
            if (strcmp(v, "cpu") && strcmp(v, "cuda")) {
                fprintf(stderr, "ds4-server: --backend must be cpu or cuda, got '%s'\n", v);
                rc = -1;
            }
            cfg->engine.backend = v;
        } else if (IS("--chdir")) {
            if (chdir(v)) {
                fprintf(stderr, "ds4-server: --chdir %s: %s\n", v, strerror(errno));
                rc = -1;
            }
        } else if (IS("--temp")) rc = ds4_parse_float_flag("ds4-server", a, v, 0, 100, &cfg->temperature);
        else if (IS("--top-p")) rc = ds4_parse_float_flag("ds4-server", a, v, 0, 1, &cfg->top_p);
        else if (IS("--min-p")) rc = ds4_parse_float_flag("ds4-server", a, v, 0, 1, &cfg->min_p);
        else if (IS("--top-k")) rc = ds4_parse_int_flag("ds4-server", a, v, 0, 1024, &cfg->top_k);
        else if (IS("--seed")) {
            uint64_t s;
            if (!ds4_parse_u64(v, 1, UINT64_MAX, &s)) {
                fprintf(stderr, "ds4-server: --seed needs a positive integer, got '%s'\n", v);
                rc = -1;
            } else cfg->seed = s;
        } else if (IS("--host")) cfg->host = v;
        else if (IS("--port")) rc = ds4_parse_int_flag("ds4-server", a, v, 0, 65535, &cfg->port);
        else if (IS("--api-key")) {
            if (!*v) {
                fprintf(stderr, "ds4-server: --api-key must not be empty\n");
                rc = -1;
            }
            cfg->api_key = v;
        } else if (IS("--max-queue")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, 1 << 20, &cfg->max_queue);
        else if (IS("--max-body-mb")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, 4096, &max_body_mb);
        else if (IS("--io-timeout")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, 86400, &cfg->io_timeout_s);
        else if (IS("--keepalive")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, 3600, &keepalive);
        else if (IS("--trace")) cfg->trace_path = v;
        else if (IS("--force-output")) cfg->force_output = v;
        else if (IS("--tool-memory-max-ids")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, INT_MAX, &cfg->tool_memory_max_ids);
        else if (IS("--kv-snapshot-mb")) rc = ds4_parse_int_flag("ds4-server", a, v, 0, 1 << 30, &snapshot_mb);
        else if (IS("--kv-disk-dir")) cfg->kv.dir = v;
        else if (IS("--kv-disk-space-mb")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, 1 << 30, &disk_mb);
        else if (IS("--kv-cache-min-tokens")) rc = ds4_parse_int_flag("ds4-server", a, v, 1, INT_MAX, &cfg->kv.min_tokens);
        else if (IS("--kv-cache-cold-max-tokens")) rc = ds4_parse_int_flag("ds4-server", a, v, 0, INT_MAX, &cfg->kv.cold_max_tokens);
        else if (IS("--kv-cache-continued-interval-tokens"))
            rc = ds4_parse_int_flag("ds4-server", a, v, 0, INT_MAX, &cfg->kv.continued_interval_tokens);
        else if (IS("--kv-cache-boundary-trim-tokens")) rc = ds4_parse_int_flag("ds4-server", a, v, 0, INT_MAX, &cfg->kv.boundary_trim_tokens);
        else if (IS("--kv-cache-boundary-align-tokens"))
            rc = ds4_parse_int_flag("ds4-server", a, v, 0, INT_MAX, &cfg->kv.boundary_align_tokens);
        else {
            fprintf(stderr, "ds4-server: unknown option '%s'\n\n", a);
            usage(stderr);
            return -1;
        }
#undef IS
        if (rc) return -1;
        i++;
    }
    cfg->max_body = (size_t)max_body_mb << 20;
    cfg->kv.space_bytes = (uint64_t)disk_mb << 20;
    cfg->snapshot_max = (size_t)snapshot_mb << 20;
    cfg->kv.tool_memory_max_ids = cfg->tool_memory_max_ids;
    ds4_err err = {{0}};
    ds4_kvcache_config check = cfg->kv; /* the knobs are checked even without a directory, as ds4 does */
    if (!check.dir) check.dir = ".";
    if (ds4_kvcache_config_check(&check, &err)) {
        fprintf(stderr, "ds4-server: %s\n", err.msg);
        return -1;
    }
    /* an SSE stream silent for the connection timeout would be dropped by
     * libmicrohttpd, so keep-alives come at least twice per timeout */
    cfg->keepalive_s = keepalive < cfg->io_timeout_s / 2.0 ? keepalive : cfg->io_timeout_s / 2.0;
    return 0;
}

int main(int argc, char **argv) {
    static srv_ctx c;
    c.cfg = (srv_config){
        .host = "127.0.0.1",
        .port = 8000,
        .max_queue = 64,
        .io_timeout_s = 30,
        .default_max_tokens = 393216,
        .mtp_draft = 1,
        .spec = {.margin = 3.0f},
        .temperature = 1.0f,
        .top_p = 1.0f,
        .min_p = 0.05f,
        .think = SRV_THINK_HIGH,
        .tool_memory_max_ids = 100000,
        .exact_replay = true,
        .engine = {.model_path = "ds4flash.gguf", .ctx = 32768},
    };
    ds4_kvcache_config_defaults(&c.cfg.kv);
    if (parse_args(argc, argv, &c.cfg)) return 2;

    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file-size limit fails a cache write (EFBIG), never kills the server */

    ds4_err err = {{0}};
    if (ds4_engine_open(&c.engine, &c.cfg.engine, &err)) {
        fprintf(stderr, "ds4-server: %s\n", err.msg);
        return 1;
    }
    c.tok = ds4_engine_tokenizer(c.engine);
    c.ctx_size = ds4_engine_ctx(c.engine);
    if (ds4_tokenizer_check_specials(c.tok, &err)) {
        fprintf(stderr, "ds4-server: the model's tokenizer cannot serve chat: %s\n", err.msg);
        ds4_engine_close(c.engine);
        return 1;
    }
    if (c.cfg.force_output) {
        c.force = srv_force_load(c.cfg.force_output, c.tok, &err);
        if (!c.force) {
            fprintf(stderr, "ds4-server: %s\n", err.msg);
            ds4_engine_close(c.engine);
            return 1;
        }
        srv_log("TEST ONLY: --force-output %s: replies are its %d forced output(s), not sampled", c.cfg.force_output,
                srv_force_count(c.force));
    }
    if (c.cfg.think == SRV_THINK_MAX && c.ctx_size < 393216)
        srv_log("warning: --think-max needs --ctx >= 393216; requests asking for max use high");
    if (c.cfg.trace_path) {
        c.trace = fopen(c.cfg.trace_path, "w");
        if (!c.trace) {
            fprintf(stderr, "ds4-server: --trace %s: %s\n", c.cfg.trace_path, strerror(errno));
            ds4_engine_close(c.engine);
            return 1;
        }
        setvbuf(c.trace, NULL, _IONBF, 0);
    }
    pthread_mutex_init(&c.trace_mu, NULL);
    c.metrics = srv_metrics_new();
    if (c.cfg.exact_replay) c.toolmem = srv_toolmem_new(c.cfg.tool_memory_max_ids, (size_t)512 << 20);
    srv_log("model %s: ctx=%d backend=%s", c.cfg.engine.model_path, c.ctx_size, ds4_engine_backend_name(c.engine));
    int rc = 1;
    if (srv_cache_open(&c, &err)) {
        srv_log("%s", err.msg);
    } else if (srv_sched_start(&c)) {
        srv_log("cannot start the worker thread");
    } else if (srv_http_run(&c) == 0) {
        rc = 0;
    } else {
        srv_sched_stop(&c);
    }
    srv_cache_close(&c);
    srv_toolmem_free(c.toolmem);
    srv_force_free(c.force);
    srv_metrics_free(c.metrics);
    if (c.trace) fclose(c.trace);
    ds4_engine_close(c.engine);
    return rc;
}
