/* test_server_gen.c — the worker's generation (gen.c) on a tiny random
 * model, driven directly: jobs are parsed, rendered and run on one session
 * the way the worker runs them. Checks the cache decisions (token-prefix
 * reuse, the thinking continuation: EOS + only the new text, a mismatch
 * resetting the session), cancellation before and during a job, max_tokens
 * and the usage the response reports; and greedy requests with MTP
 * speculation (drafts forced right and wrong through the config's hook)
 * answering and leaving the session exactly as without it, also when the
 * reply stops (max_tokens, a stop string) on a token a step evaluated
 * ahead, and the disk cache's continued saves falling on the same
 * frontiers. Needs ds4-mkmodel (skips without). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "../src/common/xalloc.h"
#include "../src/server/ctx.h"
#include "../src/tok/tokenizer.h"
#include "testutil.h"

static srv_ctx c;
static ds4_session *sess;

static srv_job *make_job(srv_api api, const char *body) {
    srv_job *j = srv_job_new();
    srv_parse_defaults d = {.think = SRV_THINK_HIGH};
    srv_error e;
    if (srv_parse_request(api, body, strlen(body), &d, &j->req, &e) || srv_prepare_prompt(&c, j, &e)) {
        CHECK(0, "job: %s", e.message);
        srv_job_unref(j);
        return NULL;
    }
    j->id = ds4_xstrdup("chatcmpl-1");
    return j;
}

/* Runs a job; returns its usage object's cached/prompt/completion tokens. */
static void run_job(srv_job *j, int *cached, int *prompt, int *completion) {
    srv_generate(&c, sess, j);
    json_t *v = json_loadb(j->out.p ? j->out.p : "", j->out.len, 0, NULL);
    json_t *u = json_object_get(v, "usage");
    *cached = (int)json_integer_value(json_object_get(json_object_get(u, "prompt_tokens_details"), "cached_tokens"));
    *prompt = (int)json_integer_value(json_object_get(u, "prompt_tokens"));
    *completion = (int)json_integer_value(json_object_get(u, "completion_tokens"));
    CHECK(v != NULL, "job output is JSON: %.*s", (int)j->out.len, j->out.p);
    json_decref(v);
}

/* ---- MTP speculation ---- */

static int32_t ref_next[4096]; /* plain greedy decoding's token at each position */
static int n_ref;

typedef struct oracle { int cycle, right, wrong; } oracle;

/* Drafts from the plain run: right twice, then wrong, in turn. */
static int32_t oracle_hook(void *ctx, int pos, int32_t draft, const float *logits) {
    (void)draft, (void)logits;
    oracle *o = ctx;
    if (pos >= n_ref) return -1;
    if (o->cycle++ % 3 == 2) return o->wrong++, (ref_next[pos] + 1) % ds4_tokenizer_n_vocab(c.tok);
    return o->right++, ref_next[pos];
}

/* The reply's content (chat or completion) and completion tokens. */
static char *job_text(srv_job *j, int *completion) {
    json_t *v = json_loadb(j->out.p ? j->out.p : "", j->out.len, 0, NULL);
    json_t *ch = json_array_get(json_object_get(v, "choices"), 0);
    json_t *t = json_object_get(json_object_get(ch, "message"), "content");
    if (!t) t = json_object_get(ch, "text");
    char *text = ds4_xstrdup(json_string_value(t) ? json_string_value(t) : "");
    *completion = (int)json_integer_value(json_object_get(json_object_get(v, "usage"), "completion_tokens"));
    json_decref(v);
    return text;
}

static srv_job *run_on(ds4_engine *e, ds4_session *s, const char *body) {
    c.engine = e;
    ds4_session_reset(s);
    srv_job *j = make_job(SRV_API_COMPLETIONS, body);
    if (j) srv_generate(&c, s, j);
    return j;
}

static void test_speculation(const char *model, const char *mtp) {
    ds4_engine *plain_engine = c.engine, *e = NULL;
    ds4_engine_config ec = {.model_path = model, .mtp_path = mtp, .ctx = 2048, .threads = 2};
    ds4_err err = {{0}};
    ds4_session *ps = NULL, *ms = NULL;
    if (ds4_engine_open(&e, &ec, &err) || ds4_session_new(e, &ms, &err) || ds4_session_new(plain_engine, &ps, &err)) {
        CHECK(0, "MTP engine: %s", err.msg);
        return;
    }
    srv_config saved = c.cfg;
    c.cfg.temperature = 0;
    c.cfg.mtp_draft = 2;

    /* the reference: a longer greedy continuation than any run below */
    srv_job *ref = run_on(plain_engine, ps, "{\"prompt\":\"Once upon\",\"max_tokens\":40}");
    n_ref = ds4_session_n_tokens(ps);
    memcpy(ref_next, ds4_session_tokens(ps), sizeof(int32_t) * (size_t)n_ref);
    int ref_n;
    char *ref_text = job_text(ref, &ref_n);
    char stop[8] = "";
    if (strlen(ref_text) > 12) memcpy(stop, ref_text + 9, 3); /* a stop string well inside the reply */

    char bodies[4][200];
    snprintf(bodies[0], sizeof bodies[0], "{\"prompt\":\"Once upon\",\"max_tokens\":9}");
    snprintf(bodies[1], sizeof bodies[1], "{\"prompt\":\"Once upon\",\"max_tokens\":10}");
    snprintf(bodies[2], sizeof bodies[2], "{\"prompt\":\"Once upon\",\"max_tokens\":30}");
    json_t *js = json_string(stop);
    char *stop_json = json_dumps(js, JSON_ENCODE_ANY);
    snprintf(bodies[3], sizeof bodies[3], "{\"prompt\":\"Once upon\",\"max_tokens\":30,\"stop\":[%s]}", stop_json);
    CHECK(stop[0] != 0, "a stop string from the reference reply (%s)", ref_text);
    int accepted = 0, rejected = 0;
    for (int b = 0; b < 4; b++) {
        oracle o = {0};
        c.cfg.spec = (ds4_spec_opts){.draft_hook = oracle_hook, .hook_ctx = &o};
        srv_job *jp = run_on(plain_engine, ps, bodies[b]);
        srv_job *jm = run_on(e, ms, bodies[b]);
        int np, nm;
        char *tp = job_text(jp, &np), *tm = job_text(jm, &nm);
        CHECK(strcmp(tp, tm) == 0 && np == nm, "%s: reply '%s' (%d tokens) with MTP, '%s' (%d) without", bodies[b], tm,
              nm, tp, np);
        int n = ds4_session_n_tokens(ps);
        CHECK(ds4_session_n_tokens(ms) == n && !memcmp(ds4_session_tokens(ms), ds4_session_tokens(ps), sizeof(int32_t) * (size_t)n),
              "%s: the session holds %d tokens with MTP, %d without", bodies[b], ds4_session_n_tokens(ms), n);
        accepted += o.right;
        rejected += o.wrong;
        free(tp);
        free(tm);
        srv_job_unref(jp);
        srv_job_unref(jm);
    }
    CHECK(accepted > 10 && rejected > 5, "drafts verified: %d right, %d wrong", accepted, rejected);

    /* The disk cache's continued saves (every 4 tokens here) land on the same
     * frontiers with speculation: a step that accepts a draft must not skip
     * one. Each run starts from an empty cache directory. */
    uint64_t saves[2] = {0, 0};
    for (int run = 0; run < 2; run++) {
        char dir[600];
        snprintf(dir, sizeof dir, "%s/server-gen-kv-%d-%d", getenv("DS4_TMP") ? getenv("DS4_TMP") : "/tmp", (int)getpid(),
                 run);
        mkdir(dir, 0700);
        ds4_kvcache_config_defaults(&c.cfg.kv);
        c.cfg.kv.dir = dir;
        c.cfg.kv.min_tokens = 4;
        c.cfg.kv.cold_max_tokens = 0;
        c.cfg.kv.continued_interval_tokens = 4;
        c.cfg.kv.boundary_align_tokens = 0;
        c.engine = run ? e : plain_engine;
        if (srv_cache_open(&c, &err)) {
            CHECK(0, "cache: %s", err.msg);
            break;
        }
        oracle o = {0};
        c.cfg.spec = (ds4_spec_opts){.draft_hook = oracle_hook, .hook_ctx = &o};
        srv_job *j = run_on(run ? e : plain_engine, run ? ms : ps, "{\"prompt\":\"Once upon\",\"max_tokens\":30}");
        char *m = srv_metrics_render(c.metrics, &c); /* the disk counters are the open cache's */
        const char *key = "ds4_kv_disk_saves_total{reason=\"continued\"} ", *at = m ? strstr(m, key) : NULL;
        saves[run] = at ? strtoull(at + strlen(key), NULL, 10) : 0;
        free(m);
        if (run) CHECK(o.right > 5, "drafts accepted while saving: %d", o.right);
        srv_job_unref(j);
        srv_cache_close(&c);
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0, "removed %s", dir);
    }
    CHECK(saves[0] >= 6 && saves[1] == saves[0], "continued saves: %llu with speculation, %llu without",
          (unsigned long long)saves[1], (unsigned long long)saves[0]);
    free(stop_json);
    json_decref(js);
    free(ref_text);
    srv_job_unref(ref);
    c.cfg = saved;
    c.engine = plain_engine;
    ds4_session_free(ps);
    ds4_session_free(ms);
    ds4_engine_close(e);
}

int main(void) {
    const char *build = getenv("DS4_BUILD") ? getenv("DS4_BUILD") : "build";
    const char *tmp = getenv("DS4_TMP") ? getenv("DS4_TMP") : "/tmp";
    char mk[512], model[512], mtp[512], cmd[1700];
    snprintf(mk, sizeof mk, "%s/bin/ds4-mkmodel", build);
    snprintf(model, sizeof model, "%s/server-gen-tiny.gguf", tmp);
    snprintf(mtp, sizeof mtp, "%s/server-gen-tiny-mtp.gguf", tmp);
    if (access(mk, X_OK)) TEST_SKIP("ds4-mkmodel not built");
    snprintf(cmd, sizeof cmd, "'%s' --preset tiny --seed 1 --mtp '%s' -o '%s' >/dev/null", mk, mtp, model);
    if (system(cmd)) TEST_SKIP("ds4-mkmodel failed");

    ds4_err err = {{0}};
    ds4_engine_config ec = {.model_path = model, .ctx = 2048, .threads = 2};
    if (ds4_engine_open(&c.engine, &ec, &err)) {
        fprintf(stderr, "engine: %s\n", err.msg);
        return 1;
    }
    c.tok = ds4_engine_tokenizer(c.engine);
    c.ctx_size = ds4_engine_ctx(c.engine);
    c.metrics = srv_metrics_new();
    c.cfg = (srv_config){.default_max_tokens = 1000, .temperature = 1, .top_p = 1, .min_p = 0.05f};
    CHECK(ds4_session_new(c.engine, &sess, &err) == 0, "session: %s", err.msg);
    int32_t eos = ds4_tokenizer_specials(c.tok).eos;
    int cached, prompt, completion;

    /* a first turn: nothing to reuse; max_tokens honoured */
    srv_job *j1 = make_job(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":4,"
                                         "\"ignore_eos\":true}");
    run_job(j1, &cached, &prompt, &completion);
    CHECK(cached == 0 && prompt == j1->n_tokens && completion == 4, "first turn usage %d %d %d", cached, prompt, completion);
    CHECK(ds4_session_n_tokens(sess) == j1->n_tokens + 3, "the last sampled token is not evaluated (%d)",
          ds4_session_n_tokens(sess));

    /* the thinking continuation: as if the turn had ended "R</think>C" + EOS */
    int pos = ds4_session_n_tokens(sess);
    c.live_visible = srv_render_continuation(&c, &j1->req, "R", "C");
    c.live_visible_pos = pos;
    CHECK(c.live_visible != NULL, "continuation text");
    srv_job *j2 = make_job(SRV_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"},{\"role\":\"assistant\","
                                         "\"content\":\"C\"},{\"role\":\"user\",\"content\":\"more\"}],\"max_tokens\":2,"
                                         "\"ignore_eos\":true}");
    run_job(j2, &cached, &prompt, &completion);
    const int32_t *toks = ds4_session_tokens(sess);
    int n_new = ds4_session_n_tokens(sess) - pos - 1; /* minus the last decoded token */
    CHECK(toks[pos] == eos, "continuation starts with the EOS the turn ended with");
    CHECK(n_new > 1 && n_new < j2->n_tokens, "only the new text was evaluated (%d of %d)", n_new, j2->n_tokens);
    CHECK(prompt == j2->n_tokens && cached == j2->n_tokens - n_new, "usage: cached %d prompt %d new %d", cached, prompt, n_new);
    CHECK(c.live_visible == NULL, "a binding is used once");

    /* token-prefix reuse: the same conversation extended */
    int before = ds4_session_n_tokens(sess);
    srv_job *j3 = make_job(SRV_API_COMPLETIONS, "{\"prompt\":\"hello\",\"max_tokens\":2}");
    run_job(j3, &cached, &prompt, &completion);
    CHECK(cached == 0 && before > 0, "a different prompt resets the session");
    srv_job *j4 = make_job(SRV_API_COMPLETIONS, "{\"prompt\":\"hello\",\"max_tokens\":2}");
    run_job(j4, &cached, &prompt, &completion);
    CHECK(cached == 0, "the same prompt again: the live session is longer, no reuse without a rewind");

    /* cancellation: a cancelled job stops at once, a retry resumes its prefix */
    srv_job *j5 = make_job(SRV_API_CHAT, "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"long\"}],"
                                         "\"ignore_eos\":true,\"max_tokens\":500}");
    atomic_store(&j5->cancelled, true);
    srv_generate(&c, sess, j5);
    CHECK(j5->out.len == 0 || !strstr(j5->out.p, "\"content\""), "cancelled job produced no text");
    CHECK(ds4_session_n_tokens(sess) <= j5->n_tokens, "cancelled before decoding");

    srv_job *jobs[] = {j1, j2, j3, j4, j5};
    for (size_t i = 0; i < sizeof jobs / sizeof jobs[0]; i++) srv_job_unref(jobs[i]);
    test_speculation(model, mtp);
    ds4_session_free(sess);
    srv_metrics_free(c.metrics);
    ds4_engine_close(c.engine);
    return TEST_DONE();
}
