/* ds4-tokenize — the tokenizer of a GGUF, in bulk: for tests and speed.
 *
 *   ds4-tokenize -m FILE --batch [--no-specials]
 *       Reads records from stdin, each `LEN\n` followed by LEN raw bytes, and
 *       writes one line per record: the token ids separated by spaces, a
 *       TAB, then the bytes the streaming detokenizer gives back for those
 *       ids (fed one at a time, then flushed) in lowercase hex. One process
 *       tokenises any number of strings, so an oracle test of 20,000
 *       strings takes seconds.
 *   ds4-tokenize -m FILE --bench TEXTFILE [--seconds S]
 *       Tokenises TEXTFILE repeatedly on one thread for about S seconds of
 *       CPU time (default 2) and prints the speed in MB/s of CPU time.
 *
 * Special strings are recognised unless --no-specials is given. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/common/clock.h"
#include "../src/common/file.h"
#include "../src/gguf/gguf.h"
#include "../src/tok/tokenizer.h"

static void usage(void) {
    fprintf(stderr,
            "usage: ds4-tokenize -m FILE --batch [--no-specials]   (records LEN\\n BYTES on stdin)\n"
            "       ds4-tokenize -m FILE --bench TEXTFILE [--seconds S] [--no-specials]\n");
}

static int put_hex(const char *b, size_t n) {
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        putchar(hex[(unsigned char)b[i] >> 4]);
        putchar(hex[(unsigned char)b[i] & 15]);
    }
    return 0;
}

static int run_batch(const ds4_tokenizer *tok, bool specials) {
    ds4_detok detok;
    ds4_err err = {{0}};
    if (ds4_detok_init(&detok, tok, &err)) {
        fprintf(stderr, "ds4-tokenize: %s\n", err.msg);
        return 1;
    }
    char *buf = NULL;
    size_t cap = 0, record = 0;
    int rc = 0;
    unsigned long long len;
    while (scanf("%llu", &len) == 1) {
        if (getchar() != '\n' || len > (1ull << 31)) {
            fprintf(stderr, "ds4-tokenize: record %zu: bad length line\n", record);
            rc = 1;
            break;
        }
        if (len + 1 > cap) {
            cap = len + 1;
            char *nb = realloc(buf, cap);
            if (!nb) {
                fprintf(stderr, "ds4-tokenize: out of memory\n");
                rc = 1;
                break;
            }
            buf = nb;
        }
        if (fread(buf, 1, len, stdin) != len) {
            fprintf(stderr, "ds4-tokenize: record %zu: truncated\n", record);
            rc = 1;
            break;
        }
        int32_t *ids;
        size_t n;
        if (ds4_tokenize(tok, buf, len, specials, &ids, &n, &err)) {
            fprintf(stderr, "ds4-tokenize: record %zu: %s\n", record, err.msg);
            rc = 1;
            break;
        }
        for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", (int)ids[i]);
        putchar('\t');
        for (size_t i = 0; i < n; i++) {
            const char *out;
            size_t olen;
            if (!ds4_detok_feed(&detok, ids[i], &out, &olen, &err)) put_hex(out, olen);
        }
        size_t flen;
        const char *tail = ds4_detok_flush(&detok, &flen);
        put_hex(tail, flen);
        putchar('\n');
        free(ids);
        record++;
    }
    free(buf);
    ds4_detok_free(&detok);
    if (fflush(stdout) || ferror(stdout)) rc = 1;
    return rc;
}

static int run_bench(const ds4_tokenizer *tok, const char *path, double seconds, bool specials) {
    ds4_err err = {{0}};
    size_t size = 0;
    char *text = ds4_read_file(path, &size, &err);
    if (!text) {
        fprintf(stderr, "ds4-tokenize: %s\n", err.msg);
        return 1;
    }
    if (size == 0) {
        fprintf(stderr, "ds4-tokenize: %s is empty\n", path);
        free(text);
        return 1;
    }
    size_t runs = 0, n_tokens = 0;
    double t0 = ds4_thread_cpu_now(), t;
    do {
        int32_t *ids;
        if (ds4_tokenize(tok, text, size, specials, &ids, &n_tokens, &err)) {
            fprintf(stderr, "ds4-tokenize: %s\n", err.msg);
            free(text);
            return 1;
        }
        free(ids);
        runs++;
        t = ds4_thread_cpu_now() - t0;
    } while (t < seconds);
    printf("%zu bytes -> %zu tokens (%.3f bytes/token); %zu runs in %.2f s CPU: %.1f MB/s\n", size,
           n_tokens, (double)size / (double)(n_tokens ? n_tokens : 1), runs, t,
           (double)size * (double)runs / t / 1e6);
    free(text);
    return 0;
}

int main(int argc, char **argv) {
    const char *model = NULL, *bench = NULL;
    bool batch = false, specials = true;
    double seconds = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-m") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(a, "--bench") && i + 1 < argc) bench = argv[++i];
        else if (!strcmp(a, "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(a, "--batch")) batch = true;
        else if (!strcmp(a, "--no-specials")) specials = false;
        else {
            usage();
            return 2;
        }
    }
    if (!model || batch == (bench != NULL)) {
        usage();
        return 2;
    }
    gguf_file f;
    ds4_err err = {{0}};
    if (gguf_open(&f, model, &err)) {
        fprintf(stderr, "ds4-tokenize: %s\n", err.msg);
        return 1;
    }
    ds4_tokenizer *tok = ds4_tokenizer_from_gguf(&f, &err);
    gguf_close(&f);
    if (!tok) {
        fprintf(stderr, "ds4-tokenize: %s: %s\n", model, err.msg);
        return 1;
    }
    int rc = batch ? run_batch(tok, specials) : run_bench(tok, bench, seconds, specials);
    ds4_tokenizer_free(tok);
    return rc;
}
