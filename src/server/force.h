/* force.h — ds4-server --force-output FILE, a test-only sampler: the
 * forward pass runs for every token as usual, but instead of sampling,
 * generation emits the tokens of a given text, then EOS. With it, tests
 * make a random-weight model write DSML tool calls, reasoning or any reply
 * they need (force.c explains the file format and which text a request
 * gets). */
#ifndef DS4_SERVER_FORCE_H
#define DS4_SERVER_FORCE_H

#include "../common/error.h"
#include "../tok/tokenizer.h"
#include "server.h"

/* Separates the outputs of successive assistant turns in FILE: a line
 * holding exactly this text. */
#define SRV_FORCE_MARKER "<<<ds4-next-output>>>"

typedef struct srv_force srv_force;

/* Reads and tokenizes FILE once; NULL with err set when it cannot be read. */
srv_force *srv_force_load(const char *path, const ds4_tokenizer *tok, ds4_err *err);
void srv_force_free(srv_force *f);
int srv_force_count(const srv_force *f); /* number of outputs in the file */
/* The tokens req's reply is forced to (*n of them; EOS follows), and which
 * output of the file they are (*index). */
const int32_t *srv_force_tokens(const srv_force *f, const srv_request *req, int *n, int *index);

#endif
