/* metrics.c — counters for GET /metrics, in the Prometheus text format
 * (version 0.0.4: "# HELP", "# TYPE", then `name{labels} value` lines).
 *
 * Requests are counted by endpoint and HTTP status; tokens in (prefilled and
 * reused) and out; prefill and decode time, so rates are counters divided
 * by seconds, plus the throughput of the last request as gauges; cancelled
 * jobs; the queue depth read at scrape time; the KV reuse decisions (by
 * source: a hit is any source but "none"), the prompt tokens reused from
 * RAM and from disk, and the disk cache's saves, failures, evictions,
 * removed bad files and size. One mutex; the counters are touched a few
 * times per request. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../common/xalloc.h"
#include "ctx.h"

#define MAX_SERIES 64

typedef struct series {
    char endpoint[48];
    int status;
    unsigned long count;
} series;

struct srv_metrics {
    pthread_mutex_t mu;
    series req[MAX_SERIES];
    int n_req;
    unsigned long prompt_tokens, cached_tokens, completion_tokens, cancelled;
    double prefill_seconds, decode_seconds;
    unsigned long prefill_tokens;
    double last_prefill_tps, last_decode_tps;
    /* KV reuse: decisions by source, tokens reused, the disk cache */
    char sources[12][24];
    unsigned long source_count[12];
    int n_sources;
    unsigned long reused_memory, reused_disk;
    bool kv_disk;
    ds4_kvcache_stats kv;
    uint64_t kv_bytes;
    int kv_files;
};

srv_metrics *srv_metrics_new(void) {
    srv_metrics *m = ds4_xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

void srv_metrics_free(srv_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m);
}

void srv_metrics_request(srv_metrics *m, const char *endpoint, int status) {
    pthread_mutex_lock(&m->mu);
    int i;
    for (i = 0; i < m->n_req; i++)
        if (m->req[i].status == status && !strcmp(m->req[i].endpoint, endpoint)) break;
    if (i == m->n_req && m->n_req < MAX_SERIES) {
        snprintf(m->req[i].endpoint, sizeof m->req[i].endpoint, "%s", endpoint);
        m->req[i].status = status;
        m->n_req++;
    }
    if (i < m->n_req) m->req[i].count++;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_prefill(srv_metrics *m, int tokens, double seconds, int cached) {
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += (unsigned long)(tokens + cached);
    m->cached_tokens += (unsigned long)cached;
    m->prefill_tokens += (unsigned long)tokens;
    m->prefill_seconds += seconds;
    if (seconds > 0 && tokens > 0) m->last_prefill_tps = tokens / seconds;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_decode(srv_metrics *m, int tokens, double seconds) {
    pthread_mutex_lock(&m->mu);
    m->completion_tokens += (unsigned long)tokens;
    m->decode_seconds += seconds;
    if (seconds > 0 && tokens > 0) m->last_decode_tps = tokens / seconds;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_cancelled(srv_metrics *m) {
    pthread_mutex_lock(&m->mu);
    m->cancelled++;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_cache_decision(srv_metrics *m, const char *source, int memory_tokens, int disk_tokens) {
    pthread_mutex_lock(&m->mu);
    int i;
    for (i = 0; i < m->n_sources; i++)
        if (!strcmp(m->sources[i], source)) break;
    if (i == m->n_sources && m->n_sources < 12) snprintf(m->sources[m->n_sources++], sizeof m->sources[0], "%s", source);
    if (i < m->n_sources) m->source_count[i]++;
    m->reused_memory += (unsigned long)memory_tokens;
    m->reused_disk += (unsigned long)disk_tokens;
    pthread_mutex_unlock(&m->mu);
}

void srv_metrics_kv_disk(srv_metrics *m, const ds4_kvcache_stats *st, uint64_t bytes, int files) {
    pthread_mutex_lock(&m->mu);
    m->kv_disk = true;
    m->kv = *st;
    m->kv_bytes = bytes;
    m->kv_files = files;
    pthread_mutex_unlock(&m->mu);
}

static void metric(ds4_buf *b, const char *name, const char *type, const char *help) {
    ds4_buf_addf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

char *srv_metrics_render(srv_metrics *m, srv_ctx *c) {
    bool busy;
    int depth = srv_queue_depth(c, &busy);
    ds4_buf b = {0};
    pthread_mutex_lock(&m->mu);
    metric(&b, "ds4_requests_total", "counter", "HTTP requests by endpoint and status.");
    for (int i = 0; i < m->n_req; i++)
        ds4_buf_addf(&b, "ds4_requests_total{endpoint=\"%s\",status=\"%d\"} %lu\n", m->req[i].endpoint,
                     m->req[i].status, m->req[i].count);
    metric(&b, "ds4_prompt_tokens_total", "counter", "Prompt tokens of generation requests (reused included).");
    ds4_buf_addf(&b, "ds4_prompt_tokens_total %lu\n", m->prompt_tokens);
    metric(&b, "ds4_completion_tokens_total", "counter", "Generated tokens.");
    ds4_buf_addf(&b, "ds4_completion_tokens_total %lu\n", m->completion_tokens);
    metric(&b, "ds4_cache_hit_tokens_total", "counter", "Prompt tokens not prefilled (reused state from RAM or disk).");
    ds4_buf_addf(&b, "ds4_cache_hit_tokens_total %lu\n", m->cached_tokens);
    metric(&b, "ds4_prefill_tokens_total", "counter", "Prompt tokens evaluated.");
    ds4_buf_addf(&b, "ds4_prefill_tokens_total %lu\n", m->prefill_tokens);
    metric(&b, "ds4_prefill_seconds_total", "counter", "Time spent in prefill.");
    ds4_buf_addf(&b, "ds4_prefill_seconds_total %.6f\n", m->prefill_seconds);
    metric(&b, "ds4_decode_seconds_total", "counter", "Time spent decoding.");
    ds4_buf_addf(&b, "ds4_decode_seconds_total %.6f\n", m->decode_seconds);
    metric(&b, "ds4_prefill_tokens_per_second", "gauge", "Prefill throughput of the last request.");
    ds4_buf_addf(&b, "ds4_prefill_tokens_per_second %.3f\n", m->last_prefill_tps);
    metric(&b, "ds4_decode_tokens_per_second", "gauge", "Decode throughput of the last request.");
    ds4_buf_addf(&b, "ds4_decode_tokens_per_second %.3f\n", m->last_decode_tps);
    metric(&b, "ds4_cancelled_total", "counter", "Jobs stopped because the client went away.");
    ds4_buf_addf(&b, "ds4_cancelled_total %lu\n", m->cancelled);
    unsigned long hits = 0, misses = 0;
    metric(&b, "ds4_kv_cache_decisions_total", "counter", "Where generation requests started from (none = cold).");
    for (int i = 0; i < m->n_sources; i++) {
        ds4_buf_addf(&b, "ds4_kv_cache_decisions_total{source=\"%s\"} %lu\n", m->sources[i], m->source_count[i]);
        if (!strcmp(m->sources[i], "none")) misses += m->source_count[i];
        else hits += m->source_count[i];
    }
    metric(&b, "ds4_kv_cache_hits_total", "counter", "Requests that reused KV state (any source).");
    ds4_buf_addf(&b, "ds4_kv_cache_hits_total %lu\n", hits);
    metric(&b, "ds4_kv_cache_misses_total", "counter", "Requests prefilled from scratch.");
    ds4_buf_addf(&b, "ds4_kv_cache_misses_total %lu\n", misses);
    metric(&b, "ds4_kv_cache_reused_tokens_total", "counter", "Prompt tokens not prefilled, by where their state came from.");
    ds4_buf_addf(&b, "ds4_kv_cache_reused_tokens_total{from=\"memory\"} %lu\n", m->reused_memory);
    ds4_buf_addf(&b, "ds4_kv_cache_reused_tokens_total{from=\"disk\"} %lu\n", m->reused_disk);
    if (m->kv_disk) {
        static const char *const reasons[] = {"unknown", "cold", "continued", "evict", "shutdown"};
        metric(&b, "ds4_kv_disk_saves_total", "counter", "Checkpoints written to the disk cache, by reason.");
        for (int r = 1; r < 5; r++)
            ds4_buf_addf(&b, "ds4_kv_disk_saves_total{reason=\"%s\"} %llu\n", reasons[r],
                         (unsigned long long)m->kv.stored[r]);
        metric(&b, "ds4_kv_disk_save_failures_total", "counter", "Saves that failed on I/O (nothing half-written stays).");
        ds4_buf_addf(&b, "ds4_kv_disk_save_failures_total %llu\n", (unsigned long long)m->kv.store_failed);
        metric(&b, "ds4_kv_disk_saves_skipped_total", "counter", "Saves the policy skipped (budget, length).");
        ds4_buf_addf(&b, "ds4_kv_disk_saves_skipped_total %llu\n", (unsigned long long)m->kv.store_skipped);
        metric(&b, "ds4_kv_disk_hits_total", "counter", "Disk lookups that loaded a checkpoint.");
        ds4_buf_addf(&b, "ds4_kv_disk_hits_total %llu\n", (unsigned long long)m->kv.hits);
        metric(&b, "ds4_kv_disk_misses_total", "counter", "Disk lookups that found nothing usable.");
        ds4_buf_addf(&b, "ds4_kv_disk_misses_total %llu\n", (unsigned long long)m->kv.misses);
        metric(&b, "ds4_kv_disk_evictions_total", "counter", "Files removed to stay within --kv-disk-space-mb.");
        ds4_buf_addf(&b, "ds4_kv_disk_evictions_total %llu\n", (unsigned long long)m->kv.evicted);
        metric(&b, "ds4_kv_disk_removed_bad_total", "counter", "Corrupt, truncated or foreign files removed.");
        ds4_buf_addf(&b, "ds4_kv_disk_removed_bad_total %llu\n", (unsigned long long)m->kv.removed_bad);
        metric(&b, "ds4_kv_disk_bytes", "gauge", "Bytes of valid checkpoint files in --kv-disk-dir.");
        ds4_buf_addf(&b, "ds4_kv_disk_bytes %llu\n", (unsigned long long)m->kv_bytes);
        metric(&b, "ds4_kv_disk_files", "gauge", "Valid checkpoint files in --kv-disk-dir.");
        ds4_buf_addf(&b, "ds4_kv_disk_files %d\n", m->kv_files);
    }
    pthread_mutex_unlock(&m->mu);
    metric(&b, "ds4_queue_depth", "gauge", "Jobs waiting for the worker.");
    ds4_buf_addf(&b, "ds4_queue_depth %d\n", depth);
    metric(&b, "ds4_busy", "gauge", "1 while the worker runs a job.");
    ds4_buf_addf(&b, "ds4_busy %d\n", busy ? 1 : 0);
    return ds4_buf_take(&b);
}
