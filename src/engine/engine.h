/* engine.h — the inference engine as the CLI, the server and the tools see it.
 *
 * A ds4_engine owns the loaded model (and optional MTP model), the tokenizer,
 * the compute backend (cpu, later cuda) and its worker threads. A
 * ds4_session is one conversation's state: its tokens, KV state (raw window,
 * compressed rows, compressor frontiers, indexer rows; model-spec §7) and the
 * next-token logits. Sessions are independent; one engine serves many.
 *
 * Evaluation appends tokens: ds4_session_eval() runs batched prefill in
 * chunks (or one decode step for one token) and leaves the logits of the last
 * token. It gives exactly the state a token-by-token run gives (model-spec
 * §6, the CPU reference semantics). The progress callback is called between
 * chunks; returning non-zero cancels (the session then holds the tokens
 * evaluated so far).
 *
 * Numerics: default = the model's official numerics (FP8 KV round-trip,
 * Hadamard+FP4 indexer, f16 KV rows, activation quantisation for quantised
 * weights); `exact` = plain f32 with those simulations off (model-spec §4,
 * §5.10) for comparison with transformers. */
#ifndef DS4_ENGINE_H
#define DS4_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "../common/error.h"
#include "../model/model.h"
#include "../model/synth_fill.h"

typedef struct ds4_engine ds4_engine;
typedef struct ds4_session ds4_session;
typedef struct ds4_tokenizer ds4_tokenizer; /* src/tok/tokenizer.h */

typedef struct ds4_engine_config {
    const char *model_path;
    /* Instead of model_path: a GGUF image in memory (e.g. a synthetic model
     * from ds4_synth_model_image), read in place; it must outlive the engine. */
    const void *model_image;
    uint64_t model_image_size;
    const char *mtp_path;  /* NULL = none; else the MTP GGUF for speculative decoding (cpu backend) */
    int ctx;               /* max tokens per session, 0 = 4096 */
    int threads;           /* 0 = DS4_THREADS env or all cores */
    bool exact;            /* plain f32 numerics */
    bool quality;          /* --quality: exact kernels where a faster approximation exists
                              (the CUDA prefill's Q8_0 products on the integer path) */
    const char *backend;   /* "cpu", "cuda" or NULL = best available */
    int prefill_chunk;     /* tokens per prefill chunk, 0 = 256 (CUDA: 8192; capped at ctx); the
                              engine's scratch is sized for one chunk */
    /* With model_image: synthetic tensors the image does not hold
     * (ds4_synth_image_build's fills, synth_fill.h), generated where the
     * backend keeps its weights. The cuda backend fills them in device
     * memory while uploading; the cpu backend reads weights in place and
     * refuses such a config. */
    const ds4_synth_fill *synth_fills;
    uint32_t n_synth_fills;
} ds4_engine_config;

int ds4_engine_open(ds4_engine **out, const ds4_engine_config *cfg, ds4_err *err);
void ds4_engine_close(ds4_engine *e);
const ds4_model *ds4_engine_model(const ds4_engine *e);
const ds4_tokenizer *ds4_engine_tokenizer(const ds4_engine *e);
int ds4_engine_ctx(const ds4_engine *e);
const char *ds4_engine_backend_name(const ds4_engine *e);

int ds4_session_new(ds4_engine *e, ds4_session **out, ds4_err *err);
void ds4_session_free(ds4_session *s);
/* Forgets all tokens (state back to empty). */
void ds4_session_reset(ds4_session *s);
int ds4_session_n_tokens(const ds4_session *s);
const int32_t *ds4_session_tokens(const ds4_session *s);

/* Called after each prefill chunk with the tokens done so far (the last
 * call has done == total); non-zero cancels the chunks still to come. */
typedef int (*ds4_progress_fn)(void *ctx, int done, int total);

/* Appends and evaluates n tokens. Fails (state unchanged) if the context
 * would overflow. On cancel returns 1 with the tokens done so far kept. */
int ds4_session_eval(ds4_session *s, const int32_t *tokens, int n, ds4_progress_fn progress,
                     void *progress_ctx, ds4_err *err);
/* Prefix reuse (prefix.c). ds4_session_reusable: how many of the session's
 * tokens a prompt tokens[0..n) keeps — all of them when they are a proper
 * prefix of it, else 0 (the session must be reset); *common (optional) gets
 * the length of the common prefix. ds4_session_sync: makes the session hold
 * tokens[0..n) that way, evaluating only the tokens it lacks (*reused, optional,
 * gets the count kept); returns like ds4_session_eval. */
int ds4_session_reusable(const ds4_session *s, const int32_t *tokens, int n, int *common);
int ds4_session_sync(ds4_session *s, const int32_t *tokens, int n, int *reused, ds4_progress_fn progress,
                     void *progress_ctx, ds4_err *err);
/* Next-token logits (n_vocab floats) after the last evaluated token (with
 * CUDA copied from the device on the first call after a step). */
const float *ds4_session_logits(const ds4_session *s);
/* ds4_argmax_except of the session's logits; with CUDA from the two
 * picks the step computed on the device, without copying the logits. */
int32_t ds4_session_argmax(const ds4_session *s, int32_t skip);
/* Like eval, but also copies the logits of every evaluated position into
 * all_logits[n * n_vocab] (for tests and perplexity). Evals of sessions of
 * one engine take turns (they share the engine's scratch). */
int ds4_session_eval_all_logits(ds4_session *s, const int32_t *tokens, int n, float *all_logits,
                                ds4_err *err);

/* ---- greedy speculative decoding with the MTP block (model-spec §8) ---- */

bool ds4_engine_has_mtp(const ds4_engine *e);
/* Whether decoding with these settings speculates (server-spec §1.1): an
 * MTP block, --mtp-draft 2 or more, greedy (temperature <= 0), and
 * DS4_MTP_SPEC_DISABLE unset. */
bool ds4_speculation_on(const ds4_engine *e, int mtp_draft, float temperature);

typedef struct ds4_spec_opts {
    /* A draft is verified only when the MTP's top logit leads its second by
     * at least this much (ds4's --mtp-margin; 0 verifies every draft). */
    float margin;
    /* Tests: called with the MTP's draft for position pos (and its logits)
     * instead of the margin; returns the draft to verify, or -1 for none. */
    int32_t (*draft_hook)(void *ctx, int pos, int32_t draft, const float *mtp_logits);
    void *hook_ctx;
    /* The hook does not read mtp_logits: on cuda they then stay on the
     * device (the hook gets NULL) and cost no copy. */
    bool hook_no_logits;
} ds4_spec_opts;

/* One cycle: evaluates `first` at the session's next position and, when
 * max_new >= 2, the context has room and the MTP's draft for the position
 * after clears the margin, verifies that draft in the same pass over the
 * weights. out gets the tokens appended: `first`, then the draft when the
 * model's own greedy choice after `first` is that draft. Returns their
 * count (1 or 2), or -1 with err (state unchanged). The logits and the
 * state are exactly those of evaluating the returned tokens one by one. */
int ds4_session_eval_speculative(ds4_session *s, int32_t first, int max_new, const ds4_spec_opts *o,
                                 int32_t out[2], ds4_err *err);
/* Right after a cycle that returned 2 tokens: takes the second back (for a
 * caller that stops on it, so the session holds what plain decoding leaves).
 * Returns 1, or 0 when there is nothing to take back. */
int ds4_session_drop_draft(ds4_session *s);

/* ---- sampling (model-spec §11) ---- */

typedef struct ds4_sampler {
    float temperature; /* <= 0: greedy (first index of the max) */
    float top_p;       /* 1.0 = off */
    float min_p;       /* 0 = off; default 0.05 */
    int top_k;         /* 0 = off, capped at 1024 */
    uint64_t rng;      /* xorshift64* state; seed it with ds4_sampler_seed */
} ds4_sampler;

void ds4_sampler_seed(ds4_sampler *s, uint64_t seed); /* 0 = time-based */
int32_t ds4_sample(ds4_sampler *s, const float *logits, int n_vocab);
/* The first index of the largest logit (NaN never is; with none larger
 * than -inf, the first index), and the same without index skip (-1: none;
 * ds4-bench leaves EOS out). */
int32_t ds4_argmax(const float *logits, int n_vocab);
int32_t ds4_argmax_except(const float *logits, int n_vocab, int32_t skip);
/* logits[top] minus the largest other logit (the MTP draft's confidence,
 * against --mtp-margin). */
float ds4_top_margin(const float *logits, int n_vocab, int32_t top);
/* ds4_sample of the session's logits (greedy through ds4_session_argmax). */
int32_t ds4_session_sample(const ds4_session *s, ds4_sampler *sp);

#endif
