/* cli_logprobs.c — the ds4 command's numeric outputs for checking a model:
 *
 * `--dump-logprobs FILE` (server-spec §6.3): the prompt is built as for a
 * one-shot answer (pass --nothink -sys "" for the API's template), then the
 * model decodes greedily and every step is written as JSON: the selected
 * token and the top-k tokens by logit with their log-probabilities. A step
 * that selects EOS is written and ends the dump; otherwise there are -n
 * steps (at most what the context leaves). Token texts are JSON strings:
 * valid UTF-8 as is, and when a piece is not valid UTF-8 each byte >= 0x80
 * is written as \u00XX (DS4_JSON_BAD_LATIN1); "bytes" always holds the
 * exact bytes. Floats use
 * %.9g, enough to read back the same float.
 *
 * `--token-ids FILE --logits-out FILE`: evaluates the whitespace-separated
 * token ids of FILE from position 0 and writes the float32 logits of every
 * position, row-major [n_tokens][n_vocab], native byte order.
 *
 * `--perplexity-file FILE`: the text (BOS put first unless it starts with
 * one; special strings recognised; cut at the context) is evaluated with
 * teacher forcing, and each token from the 33rd on is scored by its
 * negative log-probability given the tokens before it (the first 32 are a
 * fixed prefix, as ds4 does). Logits are taken a block of positions at a
 * time, so memory does not grow with the text. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/clock.h"
#include "../common/json_escape.h"
#include "../common/xalloc.h"
#include "../tok/tokenizer.h"
#include "cli_chat.h"

static void write_token(FILE *f, const ds4_tokenizer *tok, int32_t id) {
    size_t n;
    const char *b = ds4_token_bytes(tok, id, &n);
    ds4_buf text = {0};
    ds4_json_escape(&text, b, n, DS4_JSON_BAD_LATIN1);
    fprintf(f, "{\"id\":%d,\"text\":\"%s\",\"bytes\":[", (int)id, ds4_buf_str(&text));
    ds4_buf_free(&text);
    for (size_t i = 0; i < n; i++) fprintf(f, "%s%u", i ? "," : "", (unsigned char)b[i]);
    fputs("]}", f);
}

/* The k largest logits, descending; equal logits in index order. */
static int top_k(const float *logits, int n_vocab, int k, int32_t *ids) {
    int n = 0;
    for (int32_t v = 0; v < n_vocab; v++) {
        if (n == k && !(logits[v] > logits[ids[n - 1]])) continue;
        int j = n < k ? n++ : n - 1;
        while (j > 0 && logits[v] > logits[ids[j - 1]]) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = v;
    }
    return n;
}

static double log_sum_exp(const float *logits, int n_vocab) {
    float max = logits[0];
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - max);
    return max + log(sum);
}

static int dump_steps(cli_chat *c, FILE *f, cli_turn_stats *st) {
    const ds4_tokenizer *tok = c->tok;
    const int n_vocab = ds4_tokenizer_n_vocab(tok), k = c->o->logprobs_top_k;
    const int32_t eos = ds4_tokenizer_specials(tok).eos;
    int room = ds4_engine_ctx(c->eng) - st->prompt_tokens - 1;
    int steps = c->o->max_tokens < room ? c->o->max_tokens : room;
    int32_t *ids = ds4_xmalloc((size_t)k * sizeof *ids);
    fprintf(f, "{\"source\":\"ds4\",\"prompt_tokens\":%d,\"ctx\":%d,\"top_k\":%d,\"steps\":[", st->prompt_tokens,
            ds4_engine_ctx(c->eng), k);
    int rc = 0;
    for (int step = 0; step < steps; step++) {
        const float *logits = ds4_session_logits(c->sess);
        int32_t sel = ds4_argmax(logits, n_vocab);
        double lse = log_sum_exp(logits, n_vocab);
        fprintf(f, "%s\n{\"step\":%d,\"selected\":", step ? "," : "", step);
        write_token(f, tok, sel);
        fputs(",\"top_logprobs\":[", f);
        int n = top_k(logits, n_vocab, k, ids);
        for (int i = 0; i < n; i++) {
            fputs(i ? ",{\"token\":" : "{\"token\":", f);
            write_token(f, tok, ids[i]);
            fprintf(f, ",\"logit\":%.9g,\"logprob\":%.9g}", logits[ids[i]], (double)logits[ids[i]] - lse);
        }
        fputs("]}", f);
        st->generated++;
        if (sel == eos || step + 1 == steps) break;
        ds4_err err = {{0}};
        if (ds4_session_eval(c->sess, &sel, 1, NULL, NULL, &err)) {
            fprintf(stderr, "ds4: %s\n", err.msg);
            rc = 1;
            break;
        }
    }
    fputs("\n]}\n", f);
    free(ids);
    return rc;
}

int ds4_cli_dump_logprobs(const ds4_cli_options *o) {
    char *file_text = NULL;
    const char *prompt = o->prompt;
    if (o->prompt_file && !(prompt = file_text = ds4_cli_read_file(o->prompt_file, NULL))) return 1;
    FILE *f = fopen(o->dump_logprobs, "w");
    if (!f) {
        fprintf(stderr, "ds4: cannot create %s: %s\n", o->dump_logprobs, strerror(errno));
        free(file_text);
        return 1;
    }
    cli_chat c;
    cli_turn_stats st;
    int rc = 1;
    bool raw = strncmp(prompt, DS4_CHAT_BOS, strlen(DS4_CHAT_BOS)) == 0;
    if (cli_chat_open(&c, o, o->ctx) == 0 && cli_chat_begin(&c, prompt, raw, &st) == 0) {
        double t0 = ds4_now();
        rc = dump_steps(&c, f, &st);
        st.decode_s = ds4_now() - t0;
        cli_print_stats(&st);
    }
    if (fclose(f) && rc == 0) {
        fprintf(stderr, "ds4: error writing %s\n", o->dump_logprobs);
        rc = 1;
    }
    cli_chat_close(&c);
    free(file_text);
    return rc;
}

/* ---- --token-ids / --logits-out ---- */

static int read_ids(const char *path, int32_t **ids, int *n, int n_vocab) {
    char *text = ds4_cli_read_file(path, NULL);
    if (!text) return 1;
    int cap = 0;
    *n = 0;
    *ids = NULL;
    for (char *p = text, *end;; p = end) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
        if (!*p) break;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v >= n_vocab || (*end && !strchr(" \t\r\n", *end))) {
            fprintf(stderr, "ds4: %s: token %d is not an id in 0..%d\n", path, *n + 1, n_vocab - 1);
            free(text);
            free(*ids);
            *ids = NULL;
            return 1;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 256;
            *ids = ds4_xrealloc(*ids, (size_t)cap * sizeof **ids);
        }
        (*ids)[(*n)++] = (int32_t)v;
    }
    free(text);
    if (!*n) fprintf(stderr, "ds4: %s holds no token ids\n", path);
    return *n ? 0 : 1;
}

int ds4_cli_logits(const ds4_cli_options *o) {
    cli_chat c;
    int32_t *ids = NULL;
    int n = 0, rc = 1;
    if (cli_chat_open(&c, o, o->ctx) == 0 && read_ids(o->token_ids, &ids, &n, ds4_tokenizer_n_vocab(c.tok)) == 0) {
        size_t n_vocab = (size_t)ds4_tokenizer_n_vocab(c.tok);
        float *logits = malloc((size_t)n * n_vocab * sizeof *logits);
        ds4_err err = {{0}};
        FILE *f = NULL;
        if (!logits) {
            fprintf(stderr, "ds4: out of memory for %d x %zu logits\n", n, n_vocab);
        } else if (ds4_session_eval_all_logits(c.sess, ids, n, logits, &err)) {
            fprintf(stderr, "ds4: %s\n", err.msg);
        } else if (!(f = fopen(o->logits_out, "wb"))) {
            fprintf(stderr, "ds4: cannot create %s: %s\n", o->logits_out, strerror(errno));
        } else {
            size_t w = fwrite(logits, sizeof *logits, (size_t)n * n_vocab, f);
            if (fclose(f) || w != (size_t)n * n_vocab) fprintf(stderr, "ds4: error writing %s\n", o->logits_out);
            else rc = 0;
        }
        free(logits);
    }
    free(ids);
    cli_chat_close(&c);
    return rc;
}

/* ---- --perplexity-file ---- */

#define PPL_PREFIX 32 /* tokens given, not scored */
#define PPL_BLOCK 64  /* positions evaluated per logits block */

static int perplexity_tokens(const cli_chat *c, const char *path, int32_t **ids, int *n) {
    uint64_t len;
    char *text = ds4_cli_read_file(path, &len);
    if (!text) return 1;
    bool has_bos = strncmp(text, DS4_CHAT_BOS, strlen(DS4_CHAT_BOS)) == 0;
    size_t n_text = 0;
    int32_t *t = NULL;
    ds4_err err = {{0}};
    int rc = ds4_tokenize(c->tok, text, (size_t)len, true, &t, &n_text, &err);
    free(text);
    if (rc) {
        fprintf(stderr, "ds4: %s\n", err.msg);
        return 1;
    }
    int ctx = ds4_engine_ctx(c->eng), bos = has_bos ? 0 : 1;
    size_t total = n_text + (size_t)bos;
    if (total > (size_t)ctx) {
        fprintf(stderr, "ds4: %s: %zu tokens, only the first %d (the context) are used\n", path, total, ctx);
        total = (size_t)ctx;
    }
    *ids = ds4_xmalloc((total + 1) * sizeof **ids);
    if (bos) (*ids)[0] = ds4_tokenizer_specials(c->tok).bos;
    if (total > (size_t)bos) memcpy(*ids + bos, t, (total - (size_t)bos) * sizeof *t);
    free(t);
    *n = (int)total;
    return 0;
}

int ds4_cli_perplexity(const ds4_cli_options *o) {
    cli_chat c;
    int32_t *ids = NULL;
    int n = 0, rc = 1;
    if (cli_chat_open(&c, o, o->ctx) == 0 && perplexity_tokens(&c, o->perplexity_file, &ids, &n) == 0) {
        const size_t n_vocab = (size_t)ds4_tokenizer_n_vocab(c.tok);
        float *logits = ds4_xmalloc(PPL_BLOCK * n_vocab * sizeof *logits);
        double nll = 0;
        int scored = 0;
        ds4_err err = {{0}};
        rc = 0;
        /* logits at position p predict token p + 1; the last position predicts nothing */
        for (int p = 0; p < n - 1 && rc == 0; p += PPL_BLOCK) {
            int m = n - 1 - p < PPL_BLOCK ? n - 1 - p : PPL_BLOCK;
            if (ds4_session_eval_all_logits(c.sess, ids + p, m, logits, &err)) {
                fprintf(stderr, "ds4: %s\n", err.msg);
                rc = 1;
                break;
            }
            for (int i = 0; i < m; i++) {
                if (p + i + 1 < PPL_PREFIX) continue;
                const float *row = logits + (size_t)i * n_vocab;
                nll += log_sum_exp(row, (int)n_vocab) - row[ids[p + i + 1]];
                scored++;
            }
        }
        free(logits);
        if (rc == 0 && !scored) {
            fprintf(stderr, "ds4: %s: %d tokens, nothing to score after the %d-token prefix\n", o->perplexity_file,
                    n, PPL_PREFIX);
            rc = 1;
        }
        if (rc == 0)
            printf("tokens=%d scored=%d nll=%.6f avg_nll=%.6f ppl=%.6f\n", n, scored, nll, nll / scored,
                   exp(nll / scored));
    }
    free(ids);
    cli_chat_close(&c);
    return rc;
}
