/* cuda_engine.h — the whole decode step of the model on one GPU.
 *
 * ds4_cuda_engine holds a loaded model's weights in device memory (copied
 * once from the mmapped tensors) and the device workspace of one step.
 * ds4_cuda_session holds one conversation's KV state on the device: the raw
 * window ring, compressed rows, compressor frontiers and indexer rows
 * (model-spec §7.1; rows as f16, as the CPU backend keeps them in the
 * official numerics; f32 in exact mode).
 *
 * ds4_cuda_session_step() runs one token through the model (model-spec §5)
 * with the CPU backend's official numerics: the same activation
 * quantisation for quantised weights, FP8 KV and Hadamard+FP4 indexer
 * round-trips, f16 row storage; routing, top-k and every other decision are
 * made on the device, so the whole step is one CUDA graph (captured on the
 * session's first step, replayed after) with the token id and position
 * written to device memory before each launch. Only the logits come back.
 * In exact mode (ds4_cuda_engine_open) the step runs the CPU's exact
 * numerics instead.
 * ds4_cuda_session_prefill() runs a chunk of tokens through the model at
 * once (cuda_prefill.cu) and leaves the same state as that many steps.
 * ds4_cuda_session_verify() runs a token and a draft after it as one
 * step that reads the weights once for both (speculative decoding), and
 * ds4_cuda_session_mtp() the MTP block that drafts it.
 *
 * The plain (cpu-only) build never sees this header's implementation: the
 * engine calls it only when built with DS4_CUDA (`make cuda`). */
#ifndef DS4_CUDA_ENGINE_H
#define DS4_CUDA_ENGINE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../../common/error.h"
#include "../../model/model.h"
#include "../../model/synth_fill.h"

typedef struct ds4_cuda_engine ds4_cuda_engine;
typedef struct ds4_cuda_session ds4_cuda_session;

/* Whether a CUDA device is present (the engine's default backend then). */
bool ds4_cuda_available(void);

/* Uploads the model (which must outlive the engine, as must mtp: the MTP
 * block, or NULL) for contexts of up to ctx tokens. exact: plain f32
 * numerics as the CPU engine's exact mode (no activation quantisation:
 * weights dequantised and multiplied with f32 activations; no FP8/FP4
 * round-trips; KV rows stored as f32), for
 * checking against transformers, not for speed; the prefill then runs
 * token by token. The
 * n_fills synthetic tensors (synth_fill.h; offsets into the model's image,
 * sorted) are not copied but generated in device memory. Before loading,
 * the weights, one session's state at ctx and the workspace are checked
 * against the device's free memory: if they do not fit, the error gives
 * the numbers and the largest ctx that would; on success the use is
 * printed to stderr. */
int ds4_cuda_engine_open(ds4_cuda_engine **out, const ds4_model *m, const ds4_mtp_model *mtp, int ctx, bool exact,
                         bool quality, const ds4_synth_fill *fills, uint32_t n_fills, ds4_err *err);
void ds4_cuda_engine_close(ds4_cuda_engine *e);
/* "cuda (NVIDIA H100 ...)" style name for logs. */
const char *ds4_cuda_engine_device_name(const ds4_cuda_engine *e);

int ds4_cuda_session_new(ds4_cuda_engine *e, ds4_cuda_session **out, ds4_err *err);
void ds4_cuda_session_free(ds4_cuda_session *s);
/* Back to an empty state (frontiers cleared). */
int ds4_cuda_session_reset(ds4_cuda_session *s, ds4_err *err);
/* Token `token` at position `pos` (= tokens evaluated so far, < ctx);
 * logits (n_vocab floats, host memory) receive the next-token logits, or
 * with logits NULL they stay on the device until
 * ds4_cuda_session_fetch_logits copies them into the session's pinned
 * buffer (ds4_cuda_session_logits; another session's step or the
 * session's prefill copies them there first, so they are never lost).
 * Either way the step leaves its two most likely next tokens for
 * ds4_cuda_session_pick. */
int ds4_cuda_session_step(ds4_cuda_session *s, int32_t token, int pos, float *logits, ds4_err *err);
/* The speculative verify step (model-spec §8): tokens[0] at pos and
 * tokens[1] (a draft) at pos + 1 (< ctx) in one graph whose products read
 * each weight row once for both. Afterwards the session stands after both,
 * the picks of each token's logits are ds4_cuda_session_verify_pick's, and
 * the session's logits (fetched lazily, as a step's) and
 * ds4_cuda_session_pick are tokens[1]'s. Each token's logits and the state
 * are the bits two steps give. */
#define DS4_CUDA_VERIFY_TOKENS 2
int ds4_cuda_session_verify(ds4_cuda_session *s, const int32_t tokens[DS4_CUDA_VERIFY_TOKENS], int pos,
                            ds4_err *err);
/* Token t's two most likely next tokens from the last verify step (as
 * ds4_cuda_session_pick's). */
void ds4_cuda_session_verify_pick(const ds4_cuda_session *s, int t, int32_t pick[2]);
/* Whether the last verify step's tokens[1] can still be taken back (no
 * take-back, step, prefill, reset or loaded payload since). */
bool ds4_cuda_session_verify_pending(const ds4_cuda_session *s);
/* Takes back the last verify step's tokens[1] (a rejected draft, or one a
 * caller stops on): the state is then the state after tokens[0] alone up
 * to what evaluating position pos + 1 rewrites (its raw row, its frontier
 * row, rows it emitted), and the session's logits and picks are
 * tokens[0]'s. Only after ds4_cuda_session_verify, before the session's
 * next step (other sessions' steps may come between). */
int ds4_cuda_session_verify_reject(ds4_cuda_session *s, ds4_err *err);
int ds4_cuda_session_fetch_logits(ds4_cuda_session *s, ds4_err *err);
/* The MTP block (model-spec §8; the engine opened with one) at positions
 * q0..q0+n-1 in turn: position q from the final HC streams the session's
 * steps, verify steps and prefills kept for it (those of its last n_swa
 * positions) and tokens[q - q0] = t_{q+1}, its own raw ring holding the
 * positions it ran from raw_lo on. With head, the last position's draft:
 * its two most likely tokens (as ds4_cuda_session_pick's) into pick, their
 * logits into pick_logit, and with logits non-NULL all n_vocab of them.
 * The session's own logits and picks stay as they were. */
int ds4_cuda_session_mtp(ds4_cuda_session *s, const int32_t *tokens, int q0, int n, int raw_lo, bool head,
                         int32_t pick[2], float pick_logit[2], float *logits, ds4_err *err);
/* The last step's two most likely next tokens (the larger logit first,
 * the lower index on ties; NaN and -inf never, -1 where fewer than two
 * logits are above -inf): 1, or 0 where the session's logits are not a
 * step's (after a prefill, a reset, or ds4_cuda_session_logits_replaced). */
int ds4_cuda_session_pick(const ds4_cuda_session *s, int32_t pick[2]);
/* The caller wrote the session's pinned logits itself (a loaded payload). */
void ds4_cuda_session_logits_replaced(ds4_cuda_session *s);
/* The pinned host buffer (n_vocab floats) that step and prefill copy the
 * logits into from the device: passed as their logits, it saves them a
 * 517 KB copy a token (the engine's sessions use it as theirs). */
float *ds4_cuda_session_logits(ds4_cuda_session *s);
/* Tokens[0..n) at positions pos0.. (pos0 = tokens evaluated so far,
 * pos0 + n <= ctx) in batched chunks; logits receive the last token's
 * next-token logits. The state after it is the state after n steps. */
int ds4_cuda_session_prefill(ds4_cuda_session *s, const int32_t *tokens, int n, int pos0, float *logits,
                             ds4_err *err);

/* For tests: copies `bytes` of the step workspace buffer `name` ("H", "x",
 * "a", "qr", "q", "att", "low", "y", "router" (logits), "ids", "ew",
 * "smid", "sh", "mix", "ehc", "sel" and "n_sel": the indexer's selection
 * (int32), "logits") to host memory; after a step these hold the last
 * layer's (for sel/n_sel the last ratio-4 layer's, or the output head's)
 * values; after a verify step, its first token's. */
int ds4_cuda_session_debug_read(ds4_cuda_session *s, const char *name, void *dst, size_t bytes, ds4_err *err);

/* For tests: one layer's KV state buffer `which` ("raw": n_swa rows of
 * head_dim f16 (f32 in exact mode, as all rows); "comp" and "index":
 * compressed / indexer rows as f16, row
 * i at i·width; "comp_kv", "comp_score", "index_kv", "index_score": the
 * frontiers, f32 [coff·R][coff·width]) — the CPU engine's layouts — copied
 * from the device into host (upload false) or from host to the device
 * (upload true), `bytes` from the buffer's start. Uploading the CPU
 * session's state before a step makes the step start where the CPU's did.
 * With an MTP block, layer n_layer is its: "raw", its ring, and "streams",
 * the final HC streams kept for it (n_swa rows of HC·n_embd f32, position
 * q at row q mod n_swa: the CPU's spec_state h). */
int ds4_cuda_session_state(ds4_cuda_session *s, uint32_t layer, const char *which, void *host, size_t bytes,
                           bool upload, ds4_err *err);

/* With DS4_CUDA_PROFILE=1 in the environment the step runs without the
 * graph, with an event after each operation, and the engine prints the
 * time per operation kind (summed over layers, mean per step) at close. */

#ifdef __cplusplus
}
#endif

#endif
