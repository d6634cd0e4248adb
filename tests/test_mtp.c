/* test_mtp.c — greedy speculative decoding with the MTP block (mtp.c,
 * model-spec §8) against plain greedy decoding.
 *
 * There is no reference implementation of the MTP block to compare with
 * (hf-reference.md: transformers does not build it), so the tests check
 * what speculation promises whatever the draft: the tokens it appends are
 * exactly plain greedy decoding's, and the session state it leaves (KV
 * rows, compressor frontiers, indexer rows, logits) is bit for bit the
 * state plain decoding leaves. On the tiny preset (window 16, ratios 4 and
 * 16) 70 generated tokens slide the window and emit compressed rows at
 * both ratios, so a rejected draft whose position emits a row must be
 * undone too.
 *  (a) drafts forced by a hook from the plain run's own tokens: right
 *      (accepted), wrong (rejected, state put back), none — in a pattern
 *      that puts accepts and rejects on emission positions;
 *      and the MTP's logits at each position are the same bits whether it
 *      ran one position a cycle (after rejects) or two (after accepts) —
 *      so its ring and the streams it is given follow the session;
 *  (b) the MTP block's own drafts, every one verified (margin 0), and the
 *      default margin;
 *  (c) drop_draft after an accepted cycle, plain evals between cycles and
 *      a prompt evaluated in two parts, the MTP's logits again the same
 *      bits (the session keeps a window of final streams, prefill's
 *      included, so the MTP starts from the prompt's last window);
 *  (d) refusals: no MTP model, a token outside the vocabulary, an MTP file
 *      for another model shape. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_fixture.h"
#include "session_state.h"
#include "testutil.h"

enum { PROMPT = 37, GEN = 70 };

static int32_t ref_tokens[GEN + 1]; /* plain greedy continuation of the prompt */
static float *ref_logits;           /* [GEN + 1][n_vocab] logits before each of them */

/* The plain greedy run: ref_tokens[i] is chosen from the logits after the
 * prompt and ref_tokens[0..i-1]. */
static void plain_run(ds4_engine *e, const int32_t *prompt, ds4_session **keep) {
    int nv = (int)ds4_engine_model(e)->hp.n_vocab;
    ds4_session *s = NULL;
    ds4_err err = {{0}};
    CHECK(ds4_session_new(e, &s, &err) == 0, "session: %s", err.msg);
    CHECK(ds4_session_eval(s, prompt, PROMPT, NULL, NULL, &err) == 0, "prompt: %s", err.msg);
    ref_logits = malloc(sizeof(float) * (size_t)nv * (GEN + 1));
    for (int i = 0; i <= GEN; i++) {
        memcpy(ref_logits + (size_t)i * nv, ds4_session_logits(s), sizeof(float) * (size_t)nv);
        ref_tokens[i] = ds4_session_argmax(s, -1);
        if (i < GEN) CHECK(ds4_session_eval(s, &ref_tokens[i], 1, NULL, NULL, &err) == 0, "eval: %s", err.msg);
    }
    *keep = s;
}

/* The MTP's logits for each position as first seen: every run that keeps
 * the MTP ring from the prompt on must see the same bits there, whether
 * the MTP processed one position a cycle (rejects) or two (accepts). */
static float *mtp_seen;
static bool mtp_seen_at[GEN + PROMPT + 2];

typedef struct hook_plan {
    const char *pattern; /* per cycle, cycled: 'r' right draft, 'w' wrong, 'n' none, 'm' the MTP's own */
    int cycle, right, wrong, n_vocab;
    bool compare;        /* the run keeps the MTP ring from the prompt on */
    int compared, differ;
} hook_plan;

static int32_t plan_hook(void *ctx, int pos, int32_t draft, const float *mtp_logits) {
    hook_plan *h = ctx;
    if (h->compare) {
        float *seen = mtp_seen + (size_t)pos * h->n_vocab;
        if (!mtp_seen_at[pos]) {
            memcpy(seen, mtp_logits, sizeof(float) * (size_t)h->n_vocab);
            mtp_seen_at[pos] = true;
        } else {
            h->compared++;
            h->differ += memcmp(seen, mtp_logits, sizeof(float) * (size_t)h->n_vocab) != 0;
        }
    }
    char c = h->pattern[h->cycle++ % strlen(h->pattern)];
    int i = pos - PROMPT; /* the reference index of the token at pos */
    if (c == 'n' || i > GEN) return -1;
    if (c == 'm') return draft;
    if (c == 'r') return h->right++, ref_tokens[i];
    h->wrong++;
    return (ref_tokens[i] + 1 + (int32_t)(pos % 7)) % h->n_vocab;
}

typedef struct run_opts {
    const ds4_spec_opts *spec;
    int drop_after;   /* cycle after which an accepted draft is dropped (-1: never) */
    int plain_every;  /* every k-th token evaluated plainly (0: never) */
    int prompt_split; /* the prompt evaluated as [0, split) then the rest (0: at once) */
} run_opts;

/* Speculative decoding of GEN tokens after the prompt; checks every token
 * against the plain run, then the state against `plain`. Returns the
 * accepted drafts. */
static int spec_run(ds4_engine *e, const int32_t *prompt, const run_opts *ro, const ds4_session *plain,
                    const char *what) {
    int nv = (int)ds4_engine_model(e)->hp.n_vocab;
    ds4_session *s = NULL;
    ds4_err err = {{0}};
    CHECK(ds4_session_new(e, &s, &err) == 0, "session: %s", err.msg);
    const int split = ro->prompt_split;
    CHECK(ds4_session_eval(s, prompt, split ? split : PROMPT, NULL, NULL, &err) == 0 &&
          (!split || ds4_session_eval(s, prompt + split, PROMPT - split, NULL, NULL, &err) == 0), "prompt: %s", err.msg);
    int done = 0, cycles = 0, accepted = 0, bad = 0;
    while (done < GEN && !bad) {
        int32_t first = ds4_session_argmax(s, -1);
        if (first != ref_tokens[done]) {
            CHECK(0, "%s: token %d is %d, plain decoding gives %d", what, done, first, ref_tokens[done]);
            bad = 1;
            break;
        }
        if (ro->plain_every && done % ro->plain_every == ro->plain_every - 1) {
            CHECK(ds4_session_eval(s, &first, 1, NULL, NULL, &err) == 0, "eval: %s", err.msg);
            done++;
            continue;
        }
        int32_t out[2];
        int n = ds4_session_eval_speculative(s, first, GEN - done, ro->spec, out, &err);
        CHECK(n == 1 || n == 2, "%s: speculative cycle: %s", what, err.msg);
        if (n < 1) return -1;
        if (n == 2 && cycles == ro->drop_after) {
            CHECK(ds4_session_drop_draft(s) == 1, "%s: drop_draft after an accept", what);
            CHECK(ds4_session_drop_draft(s) == 0, "%s: a second drop_draft has nothing to drop", what);
            n = 1;
        }
        for (int k = 0; k < n; k++)
            if (out[k] != ref_tokens[done + k]) {
                CHECK(0, "%s: token %d is %d, plain decoding gives %d", what, done + k, out[k], ref_tokens[done + k]);
                bad = 1;
            }
        accepted += n - 1;
        done += n;
        cycles++;
        CHECK(ds4_session_n_tokens(s) == PROMPT + done, "%s: %d tokens after %d generated", what,
              ds4_session_n_tokens(s), done);
        if (memcmp(ds4_session_logits(s), ref_logits + (size_t)done * nv, sizeof(float) * (size_t)nv) != 0) {
            CHECK(0, "%s: logits after token %d differ from plain decoding's", what, done);
            bad = 1;
        }
    }
    if (!bad) {
        char why[160] = "";
        CHECK(state_diff(s, plain, why, sizeof why) == 0, "%s: final state differs: %s", what, why);
        CHECK(memcmp(ds4_session_tokens(s), ds4_session_tokens(plain), sizeof(int32_t) * (PROMPT + GEN)) == 0,
              "%s: session tokens", what);
    }
    ds4_session_free(s);
    return accepted;
}

static void test_refusals(const char *model, const char *mtp, const char *other_mtp) {
    ds4_err err = {{0}};
    ds4_engine *plain = open_engine(model, false, 2, 64, 256);
    ds4_session *s = NULL;
    int32_t out[2];
    CHECK(plain && ds4_session_new(plain, &s, &err) == 0, "plain engine");
    CHECK(!ds4_engine_has_mtp(plain), "no MTP without --mtp");
    CHECK(ds4_session_eval_speculative(s, 5, 4, NULL, out, &err) == -1 && strstr(err.msg, "MTP"),
          "speculation without an MTP model is refused: %s", err.msg);
    ds4_session_free(s);
    ds4_engine_close(plain);

    ds4_engine_config cfg = {.model_path = model, .mtp_path = other_mtp, .ctx = 256, .threads = 2, .prefill_chunk = 64};
    ds4_engine *e = NULL;
    CHECK(ds4_engine_open(&e, &cfg, &err) != 0 && !e, "an MTP file of another shape is refused");
    CHECK(strstr(err.msg, other_mtp) != NULL, "the error names the MTP file: %s", err.msg);
    cfg.mtp_path = "/nonexistent/mtp.gguf";
    CHECK(ds4_engine_open(&e, &cfg, &err) != 0 && !e, "a missing MTP file is refused: %s", err.msg);

    cfg.mtp_path = mtp;
    CHECK(ds4_engine_open(&e, &cfg, &err) == 0, "engine with MTP: %s", err.msg);
    if (!e) return;
    CHECK(ds4_session_new(e, &s, &err) == 0, "session");
    int32_t prompt[4] = {3, 4, 5, 6};
    CHECK(ds4_session_eval(s, prompt, 4, NULL, NULL, &err) == 0, "prompt");
    CHECK(ds4_session_eval_speculative(s, -1, 4, NULL, out, &err) == -1 && ds4_session_n_tokens(s) == 4,
          "a negative token is refused, nothing evaluated");
    CHECK(ds4_session_eval_speculative(s, 1 << 20, 4, NULL, out, &err) == -1 && ds4_session_n_tokens(s) == 4,
          "a token outside the vocabulary is refused");
    CHECK(ds4_session_drop_draft(s) == 0, "nothing to drop after a plain eval");
    ds4_session_free(s);
    ds4_engine_close(e);
}

int main(void) {
    char model[512], mtp[512], other_mtp[512];
    snprintf(model, sizeof model, "%s/ds4_test_mtp_model.gguf", tmpdir());
    snprintf(mtp, sizeof mtp, "%s/ds4_test_mtp_block.gguf", tmpdir());
    snprintf(other_mtp, sizeof other_mtp, "%s/ds4_test_mtp_other_block.gguf", tmpdir());
    if (write_tiny(model, DS4_WEIGHTS_PUBLISHED, "q2", 11, "mtp test") ||
        write_tiny_mtp(mtp, DS4_WEIGHTS_PUBLISHED, "q4", 12)) {
        CHECK(0, "tiny model and MTP file written");
        return TEST_DONE();
    }
    /* an MTP file for a model of another width */
    ds4_synth_config oc;
    ds4_err err = {{0}};
    if (tiny_config(&oc, DS4_WEIGHTS_PUBLISHED, "q4", 13, NULL) == 0) {
        oc.hp.n_embd = 512;
        CHECK(ds4_synth_write_mtp(&oc, other_mtp, &err) == 0, "other MTP file: %s", err.msg);
    }

    ds4_engine_config cfg = {.model_path = model, .mtp_path = mtp, .ctx = 256, .threads = 2, .prefill_chunk = 64};
    ds4_engine *e = NULL;
    CHECK(ds4_engine_open(&e, &cfg, &err) == 0, "engine with MTP: %s", err.msg);
    if (!e) return TEST_DONE();
    CHECK(ds4_engine_has_mtp(e), "the engine has the MTP block");
    int nv = (int)ds4_engine_model(e)->hp.n_vocab;
    int32_t prompt[PROMPT];
    random_tokens(prompt, PROMPT, (uint32_t)nv, 5);
    ds4_session *plain = NULL;
    plain_run(e, prompt, &plain);

    /* (a) forced drafts */
    mtp_seen = malloc(sizeof(float) * (size_t)nv * (GEN + PROMPT + 2));
    const char *patterns[] = {"w", "r", "rw", "rrw", "wwr", "rnw"};
    for (size_t i = 0; i < sizeof patterns / sizeof *patterns; i++) {
        hook_plan h = {.pattern = patterns[i], .n_vocab = nv, .compare = true};
        ds4_spec_opts o = {.draft_hook = plan_hook, .hook_ctx = &h};
        run_opts ro = {.spec = &o, .drop_after = -1};
        char what[64];
        snprintf(what, sizeof what, "forced drafts '%s'", patterns[i]);
        int acc = spec_run(e, prompt, &ro, plain, what);
        CHECK(acc == h.right, "%s: %d accepted, %d right drafts", what, acc, h.right);
        if (strchr(patterns[i], 'w')) CHECK(h.wrong > 10, "%s: %d wrong drafts verified", what, h.wrong);
        if (i > 0) CHECK(h.compared > 20 && h.differ == 0, "%s: MTP logits differ from the first run's at %d of %d "
                         "positions", what, h.differ, h.compared);
    }

    /* (b) the MTP block's own drafts */
    {
        hook_plan h = {.pattern = "m", .n_vocab = nv};
        ds4_spec_opts o = {.draft_hook = plan_hook, .hook_ctx = &h};
        run_opts ro = {.spec = &o, .drop_after = -1};
        int acc = spec_run(e, prompt, &ro, plain, "MTP drafts, all verified");
        printf("MTP drafts (random weights): %d of %d cycles accepted\n", acc, h.cycle);
        ds4_spec_opts margin = {.margin = 3.0f};
        ro.spec = &margin;
        spec_run(e, prompt, &ro, plain, "MTP drafts, margin 3");
        ds4_spec_opts zero = {.margin = 0.0f};
        ro.spec = &zero;
        spec_run(e, prompt, &ro, plain, "MTP drafts, margin 0");
    }

    /* (c) drop_draft, and plain evals between cycles */
    {
        hook_plan h = {.pattern = "rrwr", .n_vocab = nv, .compare = true};
        ds4_spec_opts o = {.draft_hook = plan_hook, .hook_ctx = &h};
        run_opts ro = {.spec = &o, .drop_after = 4};
        spec_run(e, prompt, &ro, plain, "drop after an accept");
        CHECK(h.compared > 20 && h.differ == 0, "drop after an accept: MTP logits differ at %d of %d positions",
              h.differ, h.compared);
        h = (hook_plan){.pattern = "rw", .n_vocab = nv, .compare = true};
        ro = (run_opts){.spec = &o, .drop_after = -1, .plain_every = 5};
        spec_run(e, prompt, &ro, plain, "plain evals between cycles");
        CHECK(h.compared > 20 && h.differ == 0, "plain evals between cycles: MTP logits differ at %d of %d positions",
              h.differ, h.compared);
        /* the prompt's streams kept across its chunks: the MTP's first run
         * over the prompt's last window sees the same */
        h = (hook_plan){.pattern = "wr", .n_vocab = nv, .compare = true};
        ro = (run_opts){.spec = &o, .drop_after = -1, .prompt_split = PROMPT - 5};
        spec_run(e, prompt, &ro, plain, "prompt in two evals");
        CHECK(h.compared > 20 && h.differ == 0, "prompt in two evals: MTP logits differ at %d of %d positions", h.differ,
              h.compared);
    }
    ds4_session_free(plain);
    free(ref_logits);
    free(mtp_seen);
    ds4_engine_close(e);

    /* (d) */
    test_refusals(model, mtp, other_mtp);
    remove(model);
    remove(mtp);
    remove(other_mtp);
    return TEST_DONE();
}
