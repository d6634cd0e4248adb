/* kv_policy.c — when the server saves checkpoints and which files go when
 * the disk budget is full (server-spec §5.6, §5.8), as pure functions of
 * the configuration so they are tested without a model or a disk.
 *
 * Lengths are aligned because a checkpoint is useful only to a later prompt
 * that shares all its tokens: trimming the last few tokens keeps a
 * tokenizer merge across the end of the prompt out of the key, and aligned
 * frontiers (2048, continued every 10240) land on the same positions in
 * every session. The defaults are ds4's (ds4_kvstore.c:30-42). */
#include <math.h>
#include <stdlib.h>

#include "kvcache.h"

void ds4_kvcache_config_defaults(ds4_kvcache_config *c) {
    *c = (ds4_kvcache_config){
        .space_bytes = 4096ull << 20,
        .min_tokens = 512,
        .cold_max_tokens = 30000,
        .continued_interval_tokens = 10000,
        .boundary_trim_tokens = 32,
        .boundary_align_tokens = 2048,
        .tool_memory_max_ids = 100000,
    };
}

int ds4_kvcache_config_check(const ds4_kvcache_config *c, ds4_err *err) {
    if (!c->dir || !c->dir[0]) return ds4_fail(err, "--kv-disk-dir: no directory given");
    if (c->space_bytes == 0) return ds4_fail(err, "--kv-disk-space-mb must be > 0");
    if (c->min_tokens <= 0) return ds4_fail(err, "--kv-cache-min-tokens must be > 0");
    if (c->cold_max_tokens != 0 && c->cold_max_tokens < c->min_tokens)
        return ds4_fail(err, "--kv-cache-cold-max-tokens must be 0 or >= --kv-cache-min-tokens (%d)",
                        c->min_tokens);
    if (c->continued_interval_tokens < 0)
        return ds4_fail(err, "--kv-cache-continued-interval-tokens must be >= 0");
    if (c->boundary_trim_tokens < 0) return ds4_fail(err, "--kv-cache-boundary-trim-tokens must be >= 0");
    if (c->boundary_align_tokens < 0) return ds4_fail(err, "--kv-cache-boundary-align-tokens must be >= 0");
    if (c->tool_memory_max_ids <= 0) return ds4_fail(err, "--tool-memory-max-ids must be > 0");
    return 0;
}

int ds4_kvcache_store_len(const ds4_kvcache_config *c, int n) {
    if ((int64_t)n > (int64_t)c->min_tokens + c->boundary_trim_tokens) {
        int s = n - c->boundary_trim_tokens;
        if (c->boundary_align_tokens > 0) s -= s % c->boundary_align_tokens;
        if (s >= c->min_tokens) return s;
    }
    return n;
}

int ds4_kvcache_chat_anchor(const ds4_kvcache_config *c, const int32_t *tokens, int n, int32_t user_id,
                            int32_t assistant_id) {
    int last_user = -1;
    for (int i = 0; i < n; i++) {
        if (tokens[i] == assistant_id) break;
        if (tokens[i] == user_id) last_user = i;
    }
    return last_user >= c->min_tokens ? last_user : -1;
}

int ds4_kvcache_cold_len(const ds4_kvcache_config *c, int cached, int prompt_len, int anchor) {
    if (cached > 0 || c->cold_max_tokens == 0) return 0;
    if (prompt_len < c->min_tokens || prompt_len > c->cold_max_tokens) return 0;
    if (anchor >= c->min_tokens && anchor <= prompt_len) return anchor;
    return ds4_kvcache_store_len(c, prompt_len);
}

int ds4_kvcache_continued_step(const ds4_kvcache_config *c) {
    int step = c->continued_interval_tokens, align = c->boundary_align_tokens;
    if (step <= 0) return 0;
    if (align > 0) {
        int64_t up = ((int64_t)step + align - 1) / align * align;
        step = up > 0x7fffffff ? 0x7fffffff / align * align : (int)up;
    }
    return step;
}

bool ds4_kvcache_should_save_live(const ds4_kvcache_config *c, int live_tokens) {
    return live_tokens >= c->min_tokens;
}

bool ds4_kvcache_consumes_on_load(const ds4_kvcache_config *c, int tokens) {
    return c->cold_max_tokens > 0 && tokens > c->cold_max_tokens;
}

uint64_t ds4_kvcache_budget_required(uint64_t file_bytes) {
    uint64_t slack = file_bytes / 100 + (file_bytes % 100 != 0);
    return file_bytes > UINT64_MAX - slack ? UINT64_MAX : file_bytes + slack;
}

void ds4_kvcache_schedule_reset(ds4_kvcache_schedule *s, int tokens) { s->last = tokens; }

int ds4_kvcache_continued_target(const ds4_kvcache_config *c, const ds4_kvcache_schedule *s,
                                 int live_tokens) {
    int step = ds4_kvcache_continued_step(c);
    if (step <= 0 || live_tokens < c->min_tokens || live_tokens % step != 0 || live_tokens <= s->last)
        return 0;
    return live_tokens;
}

int ds4_kvcache_next_continued(const ds4_kvcache_config *c, const ds4_kvcache_schedule *s,
                               int live_tokens) {
    int step = ds4_kvcache_continued_step(c);
    if (step <= 0) return 0;
    int64_t from = live_tokens > s->last ? live_tokens : s->last;
    int64_t next = (from / step + 1) * step;
    while (next < c->min_tokens) next += step;
    return next > 0x7fffffff ? 0 : (int)next;
}

void ds4_kvcache_note_saved(const ds4_kvcache_config *c, ds4_kvcache_schedule *s, int tokens) {
    int step = ds4_kvcache_continued_step(c);
    if (step > 0 && tokens % step == 0 && tokens > s->last) s->last = tokens;
}

double ds4_kvcache_eviction_score(const ds4_kvcache_evict_item *it, uint64_t now) {
    if (it->file_bytes == 0) return 0.0;
    double eff = 0.0;
    if (it->hits > 0 && it->last_used > 0) {
        double age = now > it->last_used ? (double)(now - it->last_used) : 0.0;
        eff = it->hits * exp2(-age / DS4_KVC_HIT_HALF_LIFE_S);
        if (eff < 0.01) eff = 0.0;
    }
    return (eff + 1.0) * it->tokens / (double)it->file_bytes;
}

int ds4_kvcache_plan_eviction(const ds4_kvcache_evict_item *items, int n, uint64_t budget, uint64_t now,
                              int *victims) {
    uint64_t total = 0;
    for (int i = 0; i < n; i++) total += items[i].file_bytes;
    if (total <= budget) return 0;
    double *score = malloc((size_t)(n ? n : 1) * sizeof *score);
    bool *gone = calloc((size_t)(n ? n : 1), sizeof *gone);
    int count = 0;
    if (!score || !gone) goto out;
    for (int i = 0; i < n; i++)
        score[i] = items[i].protect && items[i].file_bytes <= budget ? INFINITY
                                                                      : ds4_kvcache_eviction_score(&items[i], now);
    while (total > budget) {
        int v = -1;
        for (int i = 0; i < n; i++) {
            if (gone[i] || score[i] == INFINITY) continue;
            if (v < 0 || score[i] < score[v] ||
                (score[i] == score[v] && items[i].last_used < items[v].last_used))
                v = i;
        }
        if (v < 0) break;
        gone[v] = true;
        victims[count++] = v;
        total -= items[v].file_bytes;
    }
out:
    free(score);
    free(gone);
    return count;
}
