/* session_payload.h — a session's complete state as the DS4 payload
 * (model-spec §7.3), the bytes the disk KV cache stores (server-spec §5.4).
 *
 * Layout (little-endian): 13 u32 header fields — magic "DSV4" (0x34565344),
 * version 1, ctx, prefill chunk, raw cap, raw window, compressed cap (ctx/4 +
 * 2), token count N, layers, head dim, indexer head dim, vocab, raw rows
 * stored (min(N, raw window)) — then u32 tokens[N], f32 logits[vocab],
 * u32 n_comp[layers], u32 n_index_comp[layers], and per layer: the raw
 * window rows of positions N−raw_live … N−1 in order (f32 × head dim), for
 * compressed layers the n_comp rows then the compressor state kv and score
 * (f32 [coff·R][coff·head dim] each), for ratio-4 layers the n_index_comp
 * indexer rows then the indexer state kv and score. Rows are written as f32
 * whatever the session stores (f16 rows widen exactly).
 *
 * Loading checks everything before it is used: magic, version, saved ctx ≤
 * ours, N < our ctx, layers/dims/vocab equal to the model's, raw window and
 * raw rows consistent with N, each layer's row counts exactly what N tokens
 * produce (floor(N/ratio)), the total size equal to `nbytes` (nothing
 * missing, nothing trailing), every token inside the vocabulary, every float
 * free of NaN (infinities only where the compressor keeps −∞ scores), and,
 * for a session that stores f16 rows, every row value an f16 value (a payload
 * of an exact-numerics session is refused rather than silently rounded).
 * The prefill chunk and raw cap fields are recorded but not required to
 * match: the CPU engine's state does not depend on how the prompt was
 * chunked (test_engine checks chunk-invariance bit for bit), and the raw
 * window is stored in logical order whatever ring the writer had.
 *
 * On any failure the session is reset to empty: never half-loaded. MTP state
 * is not part of the payload (ds4 does not save it either). */
#ifndef DS4_SESSION_PAYLOAD_H
#define DS4_SESSION_PAYLOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine.h"

#define DS4_PAYLOAD_MAGIC 0x34565344u /* "DSV4" little-endian */
#define DS4_PAYLOAD_VERSION 1u
#define DS4_PAYLOAD_HEADER_U32 13

/* Byte sinks and sources. write/read return 0 when all n bytes moved,
 * -1 otherwise (short read = truncated, write error = errno set). */
typedef struct ds4_writer {
    int (*write)(void *ctx, const void *buf, size_t n);
    void *ctx;
} ds4_writer;

typedef struct ds4_reader {
    int (*read)(void *ctx, void *buf, size_t n);
    void *ctx;
} ds4_reader;

/* Exact size of the payload ds4_session_save_payload would write now. */
uint64_t ds4_session_payload_bytes(const ds4_session *s);
/* Writes the payload. Refuses a full session (N == ctx): ds4's loader
 * rejects such payloads, so they would only waste disk. */
int ds4_session_save_payload(const ds4_session *s, ds4_writer *w, ds4_err *err);
/* Replaces the session's state with the payload of exactly nbytes bytes. */
int ds4_session_load_payload(ds4_session *s, ds4_reader *r, uint64_t nbytes, ds4_err *err);

/* The same in memory. Save writes into buf[0..cap) and sets *len to the
 * bytes written (a payload larger than cap fails as a write error); load
 * reads the payload of exactly len bytes at buf. */
int ds4_session_save_payload_mem(const ds4_session *s, void *buf, size_t cap, size_t *len, ds4_err *err);
int ds4_session_load_payload_mem(ds4_session *s, const void *buf, size_t len, ds4_err *err);

/* true when the engine runs plain-f32 numerics (--exact): the disk cache
 * keeps states of the two numerics apart. */
bool ds4_engine_exact_numerics(const ds4_engine *e);

#endif
