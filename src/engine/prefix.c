/* prefix.c — prefix reuse: how much of a session's state a new prompt can
 * keep, and bringing a session to a prompt by evaluating only what it lacks.
 *
 * A session cannot drop tokens, so state is reusable only when every token
 * it holds is a prefix of the new prompt; then only the rest is evaluated.
 * A prompt equal to the session's tokens is evaluated afresh: the caller
 * wants a new generation from that point, and the server and the CLI keep
 * the last sampled token out of the session (it is never evaluated). Used by
 * the server's worker (src/server/gen.c) and the ds4 CLI. */
#include "engine.h"

int ds4_session_reusable(const ds4_session *s, const int32_t *tokens, int n, int *common) {
    int have = ds4_session_n_tokens(s), c = 0;
    const int32_t *live = ds4_session_tokens(s);
    while (c < have && c < n && live[c] == tokens[c]) c++;
    if (common) *common = c;
    return c == have && have < n ? have : 0;
}

int ds4_session_sync(ds4_session *s, const int32_t *tokens, int n, int *reused, ds4_progress_fn progress,
                     void *progress_ctx, ds4_err *err) {
    int keep = ds4_session_reusable(s, tokens, n, NULL);
    if (!keep) ds4_session_reset(s);
    if (reused) *reused = keep;
    return ds4_session_eval(s, tokens + keep, n - keep, progress, progress_ctx, err);
}
