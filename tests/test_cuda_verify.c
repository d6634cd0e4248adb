/* test_cuda_verify.c — the CUDA speculative verify step
 * (ds4_cuda_session_verify, model-spec §8) against plain one-token steps,
 * on tiny synthetic models (preset tiny: window 16, ratios 4 and 16,
 * indexer top-k 8).
 *
 * Two sessions on one engine walk the same prompt: one in verify steps
 * (the prompt's token and, as draft, the next prompt token or a wrong one),
 * the other token by token. Every verify step must give, for each of its
 * tokens, the logits and greedy picks of the plain step at that position
 * bit for bit; a rejected draft is taken back
 * (ds4_cuda_session_verify_reject), after which the session's logits and
 * picks are the first token's, and the walk goes on from the draft's
 * position. After each accepted draft the whole KV state (raw ring,
 * compressed and indexer rows, every compressor frontier) must equal the
 * plain session's bit for bit; so must the logits after every later step,
 * which read the frontiers a take-back restored. The walk starts from a
 * batched prefill, and the drafts cover: rejected drafts that closed a
 * ratio-4 and a ratio-16 window (the frontier snapshot restored), and a
 * verify step whose second token turns the indexer on.
 *
 * The engine's speculative cycle on cuda (ds4_session_eval_speculative with
 * drafts from its hook; ds4_session_drop_draft after an accepted draft)
 * must append the plain run's tokens and leave its logits, bit for bit.
 *
 * Models: the published types (Q8_0 projections: two-column products; q2
 * experts: the two-token MoE kernels), F16 weights and experts (F16
 * two-column products; plain experts one token at a time) and the
 * published types in exact mode (every product one token at a time).
 * Built by `make cuda` (test-cuda runs it on a GPU machine); the plain
 * build compiles it too and it skips there. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/engine/engine_impl.h"
#include "engine_fixture.h"
#include "testutil.h"
#include "cuda_test.h"
#ifdef DS4_CUDA

enum { CTX = 128, N_PROMPT = 20, N_WALK = 100 };

static const char *const state_name[] = {"raw", "comp", "index", "comp_kv", "comp_score", "index_kv", "index_score"};

/* Bytes of KV buffer b of layer il (ds4_cuda_session_state's layouts). */
static size_t state_bytes(const ds4_model *m, uint32_t il, int b, bool exact) {
    const ds4_hparams *hp = &m->hp;
    const uint32_t r = m->layers[il].compress_ratio;
    const size_t el = exact ? 4 : 2, cap = r ? CTX / r + 2 : 0, coff = r == 4 ? 2 : 1;
    switch (b) {
    case 0: return (size_t)hp->n_swa * hp->head_dim * el;
    case 1: return cap * hp->head_dim * el;
    case 2: return r == 4 ? cap * hp->indexer_head_dim * el : 0;
    case 3: case 4: return r ? coff * r * coff * hp->head_dim * 4 : 0;
    default: return r == 4 ? 2 * 4 * 2 * (size_t)hp->indexer_head_dim * 4 : 0;
    }
}

/* Whether the two sessions' whole KV states are the same bits; if not,
 * what names the buffers that differ. */
static bool same_state(const ds4_model *m, ds4_cuda_session *a, ds4_cuda_session *b, bool exact, char *what,
                       size_t what_len) {
    ds4_err err = {{0}};
    size_t at = 0;
    what[0] = 0;
    for (uint32_t il = 0; il < m->hp.n_layer; il++)
        for (int k = 0; k < 7; k++) {
            size_t n = state_bytes(m, il, k, exact);
            if (!n) continue;
            uint8_t *x = malloc(n), *y = malloc(n);
            bool same = x && y && !ds4_cuda_session_state(a, il, state_name[k], x, n, false, &err) &&
                        !ds4_cuda_session_state(b, il, state_name[k], y, n, false, &err) && !memcmp(x, y, n);
            free(x);
            free(y);
            if (!same && at + 1 < what_len)
                at += (size_t)snprintf(what + at, what_len - at, " layer %u %s%s%s", il, state_name[k],
                                       err.msg[0] ? ": " : "", err.msg);
        }
    return what[0] == 0;
}

/* The session's logits (fetched from the device) equal ref's bits. */
static bool logits_are(ds4_cuda_session *s, const float *ref, size_t nv) {
    ds4_err err = {{0}};
    return !ds4_cuda_session_fetch_logits(s, &err) && !memcmp(ds4_cuda_session_logits(s), ref, nv * sizeof(float));
}

struct cover {
    int verified, accepted, rejected, rejected_r4, rejected_r16, idx_turns_on;
};

static void walk(const char *what, ds4_weight_form weights, const char *experts, bool exact) {
    char path[512];
    snprintf(path, sizeof path, "%s/ds4-test-cuda-verify-%d.gguf", tmpdir(), (int)getpid());
    ds4_engine *e = NULL;
    ds4_session *sa = NULL, *sb = NULL;
    ds4_err err = {{0}};
    float *l0 = NULL, *l1 = NULL, *ref = NULL;
    struct cover cv = {0};
    if (write_tiny(path, weights, experts, 7, "tiny (test_cuda_verify)")) {
        CHECK(0, "%s: writing the model", what);
        return;
    }
    ds4_engine_config cfg = {.model_path = path, .ctx = CTX, .threads = 2, .exact = exact, .backend = "cuda"};
    if (ds4_engine_open(&e, &cfg, &err) || ds4_session_new(e, &sa, &err) || ds4_session_new(e, &sb, &err)) {
        CHECK(0, "%s: %s", what, err.msg);
        goto out;
    }
    const ds4_model *m = ds4_engine_model(e);
    const size_t nv = m->hp.n_vocab;
    ds4_cuda_session *A = sa->cuda, *B = sb->cuda;
    int32_t toks[N_PROMPT + N_WALK + 1];
    random_tokens(toks, N_PROMPT + N_WALK + 1, (uint32_t)nv, 11);
    l0 = malloc(nv * sizeof(float));
    l1 = malloc(nv * sizeof(float));
    ref = malloc(nv * sizeof(float));
    if (!l0 || !l1 || !ref || ds4_cuda_session_prefill(A, toks, N_PROMPT, 0, ref, &err) ||
        ds4_cuda_session_prefill(B, toks, N_PROMPT, 0, ref, &err)) {
        CHECK(0, "%s: prefill: %s", what, err.msg);
        goto out;
    }
    uint64_t r = 0x2545f4914f6cdd1dull;
    char where[700];
    const int idx_on = 4 * ((int)m->hp.indexer_top_k + 1) - 1; /* the first position whose indexer picks rows */
    for (int p = N_PROMPT; p + 1 < N_PROMPT + N_WALK;) {
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        /* rejected: at idx_on - 2 (a verify step starts at idx_on - 1) and
         * where the draft or the next cycle's closes a ratio-16 window */
        const bool accept = r % 5 < 3 && p != idx_on - 2 && (p + 2) % 16 && (p + 3) % 16;
        const int32_t tv[2] = {toks[p], accept ? toks[p + 1] : (int32_t)((toks[p + 1] + 1 + r % 13) % nv)};
        int32_t pa[2][2], pb[2];
        /* the verify step; its tokens' logits read before the plain
         * session's steps reuse the workspace */
        if (ds4_cuda_session_verify(A, tv, p, &err) || ds4_cuda_session_debug_read(A, "logits", l0, nv * 4, &err) ||
            ds4_cuda_session_fetch_logits(A, &err)) {
            CHECK(0, "%s: verify at %d: %s", what, p, err.msg);
            goto out;
        }
        memcpy(l1, ds4_cuda_session_logits(A), nv * sizeof(float));
        ds4_cuda_session_verify_pick(A, 0, pa[0]);
        ds4_cuda_session_verify_pick(A, 1, pa[1]);
        cv.verified++;
        cv.idx_turns_on += p + 1 == idx_on;
        if (ds4_cuda_session_step(B, tv[0], p, ref, &err)) {
            CHECK(0, "%s: step at %d: %s", what, p, err.msg);
            goto out;
        }
        ds4_cuda_session_pick(B, pb);
        CHECK(!memcmp(l0, ref, nv * 4) && pa[0][0] == pb[0] && pa[0][1] == pb[1],
              "%s: position %d: the verify step's first token differs from the step", what, p);
        if (accept) {
            if (ds4_cuda_session_step(B, tv[1], p + 1, ref, &err)) {
                CHECK(0, "%s: step at %d: %s", what, p + 1, err.msg);
                goto out;
            }
            ds4_cuda_session_pick(B, pb);
            CHECK(!memcmp(l1, ref, nv * 4) && pa[1][0] == pb[0] && pa[1][1] == pb[1],
                  "%s: position %d: the verify step's draft differs from the step", what, p + 1);
            CHECK(same_state(m, A, B, exact, where, sizeof where), "%s: after position %d the state differs:%s",
                  what, p + 1, where);
            cv.accepted++;
            p += 2;
            continue;
        }
        int32_t pr[2] = {-1, -1};
        if (ds4_cuda_session_verify_reject(A, &err)) {
            CHECK(0, "%s: take-back at %d: %s", what, p, err.msg);
            goto out;
        }
        ds4_cuda_session_pick(A, pr);
        CHECK(pr[0] == pa[0][0] && pr[1] == pa[0][1] && logits_are(A, l0, nv),
              "%s: position %d: after the take-back the logits or picks are not the first token's", what, p);
        cv.rejected++;
        for (uint32_t il = 0; il < m->hp.n_layer; il++) { /* windows the draft closed */
            const uint32_t ratio = m->layers[il].compress_ratio;
            if (ratio && (p + 2) % ratio == 0) {
                cv.rejected_r4 += ratio == 4;
                cv.rejected_r16 += ratio == 16;
            }
        }
        p += 1;
    }
    printf("== %s: %d verify steps (%d drafts accepted, %d rejected; windows closed by rejected drafts: %d ratio-4, "
           "%d ratio-16 layer frontiers; %d turned the indexer on)\n", what, cv.verified, cv.accepted, cv.rejected,
           cv.rejected_r4, cv.rejected_r16, cv.idx_turns_on);
    CHECK(cv.accepted > 10 && cv.rejected > 10 && cv.rejected_r4 > 0 && cv.rejected_r16 > 0 && cv.idx_turns_on == 1,
          "%s: the walk does not cover every case", what);
out:
    free(l0);
    free(l1);
    free(ref);
    ds4_session_free(sa);
    ds4_session_free(sb);
    ds4_engine_close(e);
    unlink(path);
}

/* ds4-bench's way: drafts from the hook, the plain run's greedy tokens
 * (ref, from position N_PROMPT) two cycles in three, another token the
 * third. */
struct hook_ctx {
    const int32_t *ref;
    int calls;
};

static int32_t draft_of(void *ctx, int pos, int32_t draft, const float *mtp_logits) {
    (void)draft, (void)mtp_logits;
    struct hook_ctx *h = ctx;
    const int32_t right = h->ref[pos - N_PROMPT];
    return h->calls++ % 3 != 2 ? right : (right + 5) % 1024;
}

/* The engine's cycle on greedy decoding against the plain run's tokens
 * and logits. */
static void engine_cycles(void) {
    enum { N_GEN = CTX - N_PROMPT - 1 };
    char path[512];
    snprintf(path, sizeof path, "%s/ds4-test-cuda-verify-e-%d.gguf", tmpdir(), (int)getpid());
    ds4_engine *e = NULL;
    ds4_session *sp = NULL, *pl = NULL;
    ds4_err err = {{0}};
    int cycles = 0, pairs = 0, drops = 0;
    float *refl = NULL;
    if (write_tiny(path, DS4_WEIGHTS_PUBLISHED, "q2", 7, "tiny (test_cuda_verify)")) {
        CHECK(0, "engine cycles: writing the model");
        return;
    }
    ds4_engine_config cfg = {.model_path = path, .ctx = CTX, .threads = 2, .backend = "cuda"};
    int32_t prompt[N_PROMPT], ref[N_GEN];
    random_tokens(prompt, N_PROMPT, 1024, 12);
    struct hook_ctx h = {ref, 0};
    ds4_spec_opts so = {.draft_hook = draft_of, .hook_ctx = &h};
    if (ds4_engine_open(&e, &cfg, &err) || ds4_session_new(e, &sp, &err) || ds4_session_new(e, &pl, &err) ||
        ds4_session_eval(sp, prompt, N_PROMPT, NULL, NULL, &err) ||
        ds4_session_eval(pl, prompt, N_PROMPT, NULL, NULL, &err)) {
        CHECK(0, "engine cycles: %s", err.msg);
        goto out;
    }
    const size_t nv = ds4_engine_model(e)->hp.n_vocab;
    refl = malloc((N_GEN + 1) * nv * sizeof(float)); /* the plain run's logits after each token */
    if (!refl) goto out;
    memcpy(refl, ds4_session_logits(pl), nv * sizeof(float));
    for (int i = 0; i < N_GEN; i++) {
        ref[i] = ds4_session_argmax(pl, -1);
        if (ds4_session_eval(pl, &ref[i], 1, NULL, NULL, &err)) {
            CHECK(0, "engine cycles: plain decode: %s", err.msg);
            goto out;
        }
        memcpy(refl + (size_t)(i + 1) * nv, ds4_session_logits(pl), nv * sizeof(float));
    }
    for (int i = 0; i < N_GEN;) {
        int32_t out[2];
        const int n = ds4_session_eval_speculative(sp, ref[i], N_GEN - i, &so, out, &err);
        if (n < 0) {
            CHECK(0, "engine cycles at %d: %s", N_PROMPT + i, err.msg);
            goto out;
        }
        cycles++;
        pairs += n == 2;
        /* every fourth pair: the draft taken back, as a caller stopping on it */
        const bool drop = n == 2 && pairs % 4 == 0;
        if (drop) drops += ds4_session_drop_draft(sp);
        const int kept = drop ? 1 : n;
        CHECK(out[0] == ref[i] && (n < 2 || out[1] == ref[i + 1]) && ds4_session_n_tokens(sp) == N_PROMPT + i + kept &&
                  !memcmp(ds4_session_logits(sp), refl + (size_t)(i + kept) * nv, nv * sizeof(float)),
              "engine cycles: after position %d the speculative session differs from the plain run", N_PROMPT + i);
        i += kept;
    }
    printf("== engine cycles on cuda: %d cycles, %d drafts kept, %d of them taken back\n", cycles, pairs, drops);
    CHECK(pairs > 10 && drops > 2 && cycles > pairs, "engine cycles: the walk does not cover every case");
out:
    free(refl);
    ds4_session_free(sp);
    ds4_session_free(pl);
    ds4_engine_close(e);
    unlink(path);
}

int main(void) {
    if (!ds4_cuda_available()) TEST_SKIP("no CUDA device");
    engine_cycles();
    walk("published types, q2 experts", DS4_WEIGHTS_PUBLISHED, "q2", false);
    walk("F16 weights and experts", DS4_WEIGHTS_F16, "f16", false);
    walk("published types, q2 experts, exact", DS4_WEIGHTS_PUBLISHED, "q2", true);
    return TEST_DONE();
}
#endif
