/* cli_dump_tokens.c — `ds4 -m FILE --dump-tokens -p TEXT | --prompt-file F`.
 *
 * Loads only the GGUF's tokenizer (the header is validated, no tensor is
 * bound), tokenises the text exactly as written — the 7 special strings are
 * recognised, no BOS and no chat template are added — and prints one token
 * per line: `ID<TAB>PIECE`, PIECE being the token's bytes as a JSON string.
 * A token may hold part of a character, so bytes that are not valid UTF-8
 * are written as \udcXX (DS4_JSON_BAD_SURROGATE, common/json_escape.h): a
 * JSON reader gets U+DC80..U+DCFF exactly for raw bytes 0x80..0xFF. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/json_escape.h"
#include "../gguf/gguf.h"
#include "../tok/tokenizer.h"
#include "cli.h"

static int dump(const ds4_tokenizer *tok, const char *text, size_t len) {
    int32_t *ids = NULL;
    size_t n = 0;
    ds4_err err = {{0}};
    if (ds4_tokenize(tok, text, len, true, &ids, &n, &err)) {
        fprintf(stderr, "ds4: %s\n", err.msg);
        return 1;
    }
    ds4_buf piece = {0};
    for (size_t i = 0; i < n; i++) {
        size_t blen;
        const char *b = ds4_token_bytes(tok, ids[i], &blen);
        ds4_buf_truncate(&piece, 0);
        ds4_json_escape(&piece, b, blen, DS4_JSON_BAD_SURROGATE);
        printf("%d\t\"%s\"\n", (int)ids[i], ds4_buf_str(&piece));
    }
    ds4_buf_free(&piece);
    free(ids);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "ds4: error writing the tokens\n");
        return 1;
    }
    return 0;
}

int ds4_cli_dump_tokens(const ds4_cli_options *o) {
    if (!o->prompt && !o->prompt_file) {
        fprintf(stderr, "ds4: --dump-tokens needs -p TEXT or --prompt-file FILE\n");
        return 2;
    }
    char *file_text = NULL;
    uint64_t len = 0;
    const char *text = o->prompt;
    if (o->prompt_file) {
        if (!(file_text = ds4_cli_read_file(o->prompt_file, &len))) return 1;
        text = file_text;
    } else {
        len = strlen(text);
    }
    gguf_file f;
    ds4_err err = {{0}};
    ds4_tokenizer *tok = NULL;
    int rc = 1;
    if (gguf_open(&f, o->model_path, &err)) {
        fprintf(stderr, "ds4: %s\n", err.msg);
    } else {
        tok = ds4_tokenizer_from_gguf(&f, &err);
        gguf_close(&f);
        if (!tok) fprintf(stderr, "ds4: %s: %s\n", o->model_path, err.msg);
        else rc = dump(tok, text, (size_t)len);
    }
    ds4_tokenizer_free(tok);
    free(file_text);
    return rc;
}
