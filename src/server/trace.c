/* trace.c — server log lines on stderr (`MMDD HH:MM:SS ds4-server: …`,
 * server-spec §9.2) and the --trace file (§9.4): a human-readable record of
 * each request (raw JSON, rendered prompt, cache decision, generated text,
 * parsed result), unbuffered, serialised by a mutex. */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "ctx.h"

static void stamp(FILE *f) {
    time_t t = time(NULL);
    struct tm tm;
    localtime_r(&t, &tm);
    char b[32];
    strftime(b, sizeof b, "%m%d %H:%M:%S", &tm);
    fprintf(f, "%s ds4-server: ", b);
}

void srv_log(const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    flockfile(stderr);
    stamp(stderr);
    fputs(line, stderr);
    fputc('\n', stderr);
    funlockfile(stderr);
}

void srv_trace(srv_ctx *c, const char *fmt, ...) {
    if (!c->trace) return;
    pthread_mutex_lock(&c->trace_mu);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(c->trace, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&c->trace_mu);
}
