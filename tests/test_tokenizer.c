/* test_tokenizer.c — unit tests of src/tok: the pre-tokenizer split on
 * tricky text, BPE merge order, special strings, byte fallback, loading
 * errors, the GGUF path, the streaming detokenizer and lossless round trips.
 *
 * The expected splits follow the regexes of the official tokenizer.json
 * (pretokenize.h); they were produced by running those regexes in
 * JavaScript with \s set to Unicode White_Space. The comparison against the
 * real DeepSeek tokenizer on 20,000+ strings is
 * tests/node/test_tokenizer_oracle.mjs. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/gguf/gguf.h"
#include "../src/tok/pretokenize.h"
#include "../src/tok/tokenizer.h"
#include "byte_level.h"
#include "testutil.h"

/* ---- pre-tokenizer ---- */

typedef struct piece_list {
    char text[4096]; /* pieces joined with '|' */
    size_t len;
} piece_list;

static int collect(void *ctx, const char *piece, size_t len) {
    piece_list *l = ctx;
    if (l->len + len + 2 > sizeof l->text) return 1;
    if (l->len) l->text[l->len++] = '|';
    memcpy(l->text + l->len, piece, len);
    l->len += len;
    l->text[l->len] = 0;
    return 0;
}

static void check_split(const char *text, size_t len, const char *want, size_t want_len) {
    ds4_pretok p = {0};
    piece_list l = {{0}, 0};
    ds4_err err = {{0}};
    int rc = ds4_pretok_split(&p, text, len, collect, &l, &err);
    CHECK(rc == 0, "split of \"%s\" failed: %s", text, err.msg);
    CHECK(l.len == want_len && !memcmp(l.text, want, want_len),
          "split of \"%s\":\n  got  \"%s\"\n  want \"%s\"", text, l.text, want);
    ds4_pretok_free(&p);
}
#define SPLIT(text, want) check_split(text, sizeof(text) - 1, want, sizeof(want) - 1)

static void test_pretokenizer(void) {
    SPLIT("Hello world, it's 12345 apples.\n\n  int x = foo(a);\n",
          "Hello| world|,| it|'s| |123|45| apples|.\n\n| | int| x| =| foo|(a|);\n");
    /* real categories: ½ and ٣٤ are numbers, not letters (ds4's ASCII split differs) */
    SPLIT("a → b • c € 5 ½ ٣٤ x\n", "a| →| b| •| c| €| |5| |½| |٣٤| x|\n");
    /* CJK punctuation is \p{P}; the CJK ranges are their own level */
    SPLIT("(「日本」)、中文，標點！abc123def", "(「|日本|」)、|中文|，|標點|！|abc|123|def");
    SPLIT("日・本ゟ゠カ", "日|・|本ゟ|゠|カ");
    SPLIT("caffè è città 中文字 ok", "caffè| è| città| |中文字| ok");
    /* digits: runs of at most 3, then level 3 never reaches into them */
    SPLIT("1234567x", "123|456|7|x");
    SPLIT("  12", "  |12");
    SPLIT("Ⅻ½²x", "Ⅻ½²|x");
    /* whitespace: \s*[\r\n]+ | \s+(?!\S) | \s+ */
    SPLIT("x\t\tfoo", "x|\t|\tfoo");
    SPLIT("ab\n  \n cd", "ab|\n  \n| cd");
    SPLIT("  \r\n  x", "  \r\n| | x");
    SPLIT("   ", "   ");
    SPLIT("a  ", "a|  ");
    SPLIT("a\r\rb", "a|\r\r|b");
    SPLIT("foo \u3000bar", "foo| |\u3000bar");
    SPLIT("\xc2\xa0" "x", "\xc2\xa0" "x");
    SPLIT("\u1E9E,\u2028x", "\u1E9E|,|\u2028x");
    /* U+0085 is White_Space, U+FEFF is not (JavaScript's \s has it the other way round) */
    SPLIT("x\xc2\x85" " y", "x|\xc2\x85" "| y");
    SPLIT("x\xc2\x85" "\xc2\x85" "", "x|\xc2\x85" "\xc2\x85" "");
    SPLIT("x \uFEFF", "x| |\uFEFF");
    /* punctuation: [P][A-Za-z]+ and ' ?[\p{P}\p{S}]+[\r\n]*' */
    SPLIT("#include <stdio.h>", "#include| <|stdio|.h|>");
    SPLIT("'s 'S .Net", "'s| '|S| .|Net");
    SPLIT(" ::\n\n x", " ::\n\n| x");
    SPLIT("x ?!\r\n\r\ny", "x| ?!\r\n\r\n|y");
    /* marks, joiners and format characters */
    SPLIT("e\u0301x \u0301", "e\u0301x| \u0301");
    SPLIT("\u200d\u200dx", "\u200d|\u200dx");
    SPLIT("a\xc2\xad" " b", "a|\xc2\xad" "| b");
    SPLIT("👨‍👩‍👧 🇮🇹!", "👨|\u200d|👩|\u200d|👧| 🇮🇹!");
    /* invalid UTF-8: one uncategorised character per byte */
    SPLIT("a\xff\xfe" "b", "a|\xff|\xfe" "b");
    SPLIT("\xe4\xb8" "1", "\xe4\xb8|1");
    /* NUL is an ordinary control character */
    SPLIT("a\0b", "a|\0b");
}

/* ---- a small vocabulary built in the test ---- */

typedef struct vocab {
    char *tokens[400];
    size_t n;
} vocab;

static int32_t vocab_add(vocab *v, const char *s) {
    v->tokens[v->n] = strdup(s);
    return (int32_t)v->n++;
}

/* 256 byte tokens (id = byte), then the given extra tokens. */
static void vocab_init(vocab *v, const char *const *extra) {
    v->n = 0;
    for (int b = 0; b < 256; b++) {
        char s[3];
        byte_level_str(b, s);
        vocab_add(v, s);
    }
    for (; extra && *extra; extra++) vocab_add(v, *extra);
}

static void vocab_free(vocab *v) {
    for (size_t i = 0; i < v->n; i++) free(v->tokens[i]);
    v->n = 0;
}

static ds4_tokenizer *make(vocab *v, const char *const *merges, size_t n_merges) {
    ds4_err err = {{0}};
    ds4_tokenizer *t = ds4_tokenizer_from_arrays((const char *const *)v->tokens, v->n, merges,
                                                 n_merges, &err);
    CHECK(t != NULL, "tokenizer_from_arrays: %s", err.msg);
    return t;
}

/* Tokenises and compares with want[0..n). */
static void check_ids(const ds4_tokenizer *t, const char *text, bool specials, const int32_t *want,
                      size_t n) {
    int32_t *ids = NULL;
    size_t got = 0;
    ds4_err err = {{0}};
    int rc = ds4_tokenize(t, text, strlen(text), specials, &ids, &got, &err);
    CHECK(rc == 0, "tokenize \"%s\": %s", text, err.msg);
    bool same = got == n && (n == 0 || !memcmp(ids, want, n * sizeof *ids));
    CHECK(same, "tokenize \"%s\" (specials %d): got %zu ids, want %zu", text, specials, got, n);
    if (!same)
        for (size_t i = 0; i < got; i++) fprintf(stderr, "  got[%zu] = %d\n", i, (int)ids[i]);
    free(ids);
}
#define IDS(t, text, sp, ...)                                                        \
    do {                                                                             \
        const int32_t want_[] = {__VA_ARGS__};                                       \
        check_ids(t, text, sp, want_, sizeof want_ / sizeof want_[0]);               \
    } while (0)

static void test_merge_order(void) {
    vocab v;
    const char *extra[] = {"ab", "bb", "aa", "aaa", "Ġa", "Ġab", NULL};
    vocab_init(&v, extra);
    enum { AB = 256, BB, AA, AAA, SP_A, SP_AB };
    /* lower rank first */
    const char *m1[] = {"b b", "a b"};
    ds4_tokenizer *t = make(&v, m1, 2);
    IDS(t, "abb", false, 'a', BB);
    ds4_tokenizer_free(t);
    const char *m2[] = {"a b", "b b"};
    t = make(&v, m2, 2);
    IDS(t, "abb", false, AB, 'b');
    ds4_tokenizer_free(t);
    /* equal pairs: leftmost first; merged tokens merge further */
    const char *m3[] = {"a a", "aa a", "Ġ a", "Ġa b"};
    t = make(&v, m3, 4);
    IDS(t, "aaaa", false, AA, AA);
    IDS(t, "aaaaa", false, AA, AAA);
    IDS(t, "aaa", false, AAA);
    IDS(t, " ab a", false, SP_AB, SP_A);
    ds4_tokenizer_free(t);
    /* a merge whose result is not a token never applies: bytes remain */
    const char *m4[] = {"b a", "a b"};
    t = make(&v, m4, 2);
    IDS(t, "bab", false, 'b', AB);
    ds4_tokenizer_free(t);
    /* a symbol pair with no merge at all falls back to the byte tokens */
    t = make(&v, NULL, 0);
    IDS(t, "ab", false, 'a', 'b');
    IDS(t, "\xe4\xb8\xad", false, 0xe4, 0xb8, 0xad);
    ds4_tokenizer_free(t);
    /* a long piece (heap path with many merges) */
    t = make(&v, m3, 4);
    char long_a[2001];
    memset(long_a, 'a', 2000);
    long_a[2000] = 0;
    int32_t *ids;
    size_t n;
    ds4_err err = {{0}};
    CHECK(!ds4_tokenize(t, long_a, 2000, false, &ids, &n, &err), "%s", err.msg);
    CHECK(n == 1000, "2000 a's -> %zu tokens, want 1000", n);
    bool all_aa = true;
    for (size_t i = 0; i < n; i++) all_aa = all_aa && ids[i] == AA;
    CHECK(all_aa, "2000 a's are 1000 'aa'");
    free(ids);
    ds4_tokenizer_free(t);
    vocab_free(&v);
}

static void test_specials(void) {
    vocab v;
    const char *extra[] = {DS4_TOK_STR_BOS,        DS4_TOK_STR_EOS,         DS4_TOK_STR_USER,
                           DS4_TOK_STR_ASSISTANT,  DS4_TOK_STR_THINK_OPEN,  DS4_TOK_STR_THINK_CLOSE,
                           DS4_TOK_STR_DSML,       "</",                    NULL};
    vocab_init(&v, extra);
    enum { BOS = 256, EOS, USER, ASSIST, THINK, UNTHINK, DSML, LT_SLASH };
    const char *merges[] = {"< /"};
    ds4_tokenizer *t = make(&v, merges, 1);
    ds4_tok_specials s = ds4_tokenizer_specials(t);
    CHECK(s.bos == BOS && s.eos == EOS && s.user == USER && s.assistant == ASSIST &&
              s.think_open == THINK && s.think_close == UNTHINK && s.dsml == DSML,
          "special ids found by string");
    ds4_err err = {{0}};
    CHECK(ds4_tokenizer_check_specials(t, &err) == 0, "all specials present: %s", err.msg);
    IDS(t, DS4_TOK_STR_USER "a" DS4_TOK_STR_ASSISTANT DS4_TOK_STR_THINK_CLOSE, true, USER, 'a', ASSIST,
        UNTHINK);
    IDS(t, "<think>", false, '<', 't', 'h', 'i', 'n', 'k', '>');
    IDS(t, "<thin<think>>", true, '<', 't', 'h', 'i', 'n', THINK, '>');
    /* the DSML close marker: "</" is text, then the special */
    IDS(t, "</" DS4_TOK_STR_DSML "x", true, LT_SLASH, DSML, 'x');
    IDS(t, DS4_TOK_STR_BOS DS4_TOK_STR_BOS, true, BOS, BOS);
    IDS(t, "", true);
    /* a special token decodes to its own string */
    size_t len;
    const char *b = ds4_token_bytes(t, USER, &len);
    CHECK(len == strlen(DS4_TOK_STR_USER) && !memcmp(b, DS4_TOK_STR_USER, len), "special bytes");
    ds4_tokenizer_free(t);
    vocab_free(&v);

    /* a vocabulary without specials: none is matched, and check_specials names the first */
    vocab_init(&v, NULL);
    t = make(&v, NULL, 0);
    s = ds4_tokenizer_specials(t);
    CHECK(s.bos == -1 && s.dsml == -1, "absent specials are -1");
    CHECK(ds4_tokenizer_check_specials(t, &err) == -1 && strstr(err.msg, DS4_TOK_STR_BOS),
          "check_specials names BOS: %s", err.msg);
    IDS(t, "<think>", true, '<', 't', 'h', 'i', 'n', 'k', '>');
    ds4_tokenizer_free(t);
    vocab_free(&v);
}

static void test_load_errors(void) {
    vocab v;
    ds4_err err = {{0}};
    vocab_init(&v, NULL);
    /* a missing byte token */
    free(v.tokens[0x41]);
    v.tokens[0x41] = strdup("not-A");
    CHECK(!ds4_tokenizer_from_arrays((const char *const *)v.tokens, v.n, NULL, 0, &err) &&
              strstr(err.msg, "byte 0x41"),
          "missing byte token: %s", err.msg);
    vocab_free(&v);
    vocab_init(&v, NULL);
    const char *bad[] = {"ab"};
    CHECK(!ds4_tokenizer_from_arrays((const char *const *)v.tokens, v.n, bad, 1, &err) &&
              strstr(err.msg, "merge 0"),
          "merge without a space: %s", err.msg);
    CHECK(!ds4_tokenizer_from_arrays((const char *const *)v.tokens, 0, NULL, 0, &err),
          "empty vocabulary");
    ds4_tokenizer *t = make(&v, NULL, 0);
    size_t len = 99;
    CHECK(ds4_token_bytes(t, -1, &len) == NULL && len == 0, "id -1");
    CHECK(ds4_token_bytes(t, 256, &len) == NULL && len == 0, "id n_vocab");
    CHECK(ds4_tokenizer_n_vocab(t) == 256, "n_vocab");
    const char *b = ds4_token_bytes(t, 0x20, &len);
    CHECK(len == 1 && b[0] == ' ', "Ġ decodes to a space");
    b = ds4_token_str(t, 0x20, &len);
    CHECK(len == 2 && !memcmp(b, "\xc4\xa0", 2), "token string of the space is Ġ");
    b = ds4_token_bytes(t, 0, &len);
    CHECK(len == 1 && b[0] == 0, "Ā decodes to NUL");
    ds4_tokenizer_free(t);
    vocab_free(&v);
}

/* ---- GGUF ---- */

static ds4_tokenizer *load_gguf(const char *path, const char *pre, bool tokens_as_string,
                                vocab *v, const char *const *merges, size_t n_merges, ds4_err *err) {
    gguf_writer *w = gguf_writer_new(GGUF_DEFAULT_ALIGNMENT);
    gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    if (pre) gguf_writer_add_str(w, "tokenizer.ggml.pre", pre);
    if (tokens_as_string) gguf_writer_add_str(w, "tokenizer.ggml.tokens", "x");
    else gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", (const char *const *)v->tokens, v->n);
    gguf_writer_add_str_array(w, "tokenizer.ggml.merges", merges, n_merges);
    int rc = gguf_writer_write(w, path, err);
    gguf_writer_free(w);
    CHECK(rc == 0, "gguf write: %s", err->msg);
    gguf_file f;
    if (gguf_open(&f, path, err)) return NULL;
    ds4_tokenizer *t = ds4_tokenizer_from_gguf(&f, err);
    gguf_close(&f);
    return t;
}

static void test_gguf(void) {
    const char *dir = getenv("DS4_TMP") ? getenv("DS4_TMP") : "/tmp";
    char path[1024];
    snprintf(path, sizeof path, "%s/test_tokenizer.gguf", dir);
    vocab v;
    const char *extra[] = {"ab", DS4_TOK_STR_EOS, NULL};
    vocab_init(&v, extra);
    const char *merges[] = {"a b"};
    ds4_err err = {{0}};
    ds4_tokenizer *t = load_gguf(path, "joyai-llm", false, &v, merges, 1, &err);
    CHECK(t != NULL, "load from GGUF: %s", err.msg);
    if (t) {
        IDS(t, "abc" DS4_TOK_STR_EOS, true, 256, 'c', 257);
        CHECK(ds4_tokenizer_specials(t).eos == 257, "eos from GGUF");
        ds4_tokenizer_free(t);
    }
    t = load_gguf(path, "llama-bpe", false, &v, merges, 1, &err);
    CHECK(!t && strstr(err.msg, "tokenizer.ggml.pre"), "unknown pre-tokenizer: %s", err.msg);
    t = load_gguf(path, NULL, true, &v, merges, 1, &err);
    CHECK(!t && strstr(err.msg, "tokenizer.ggml.tokens"), "tokens not an array: %s", err.msg);
    ds4_tokenizer_free(t);
    vocab_free(&v);
}

/* ---- detokenizer and round trips ---- */

typedef struct stream {
    char out[8192];
    size_t len;
} stream;

static void feed(ds4_detok *d, stream *s, int32_t id, const char *want, size_t want_len) {
    const char *out;
    size_t len;
    ds4_err err = {{0}};
    CHECK(ds4_detok_feed(d, id, &out, &len, &err) == 0, "feed %d: %s", (int)id, err.msg);
    CHECK(len == want_len && !memcmp(out, want, len), "feed %d: got %zu bytes, want %zu", (int)id,
          len, want_len);
    memcpy(s->out + s->len, out, len);
    s->len += len;
}
#define FEED(d, s, id, want) feed(d, s, id, want, sizeof(want) - 1)

static void test_detok(void) {
    vocab v;
    const char *extra[] = {"ä¸", "Ń", NULL}; /* bytes e4 b8 (first 2 of 中); byte 0xad */
    vocab_init(&v, extra);
    ds4_tokenizer *t = make(&v, NULL, 0);
    ds4_detok d;
    ds4_err err = {{0}};
    CHECK(ds4_detok_init(&d, t, &err) == 0, "detok init: %s", err.msg);
    stream s = {{0}, 0};
    /* 中 = e4 b8 ad, split across two tokens */
    FEED(&d, &s, 'a', "a");
    FEED(&d, &s, 256, "");
    FEED(&d, &s, 257, "\xe4\xb8\xad");
    /* one byte at a time: 😀 = f0 9f 98 80 */
    FEED(&d, &s, 0xf0, "");
    FEED(&d, &s, 0x9f, "");
    FEED(&d, &s, 0x98, "");
    FEED(&d, &s, 0x80, "\xf0\x9f\x98\x80");
    /* an incomplete character broken by ASCII: passed on as it is */
    FEED(&d, &s, 0xe4, "");
    FEED(&d, &s, 'x', "\xe4x");
    /* bytes that can never be valid are not held */
    FEED(&d, &s, 0xff, "\xff");
    FEED(&d, &s, 0x80, "\x80");
    FEED(&d, &s, 0xc0, "\xc0");
    /* e0 80 is overlong: not a prefix of anything valid */
    FEED(&d, &s, 0xe0, "");
    FEED(&d, &s, 0x80, "\xe0\x80");
    /* a held prefix then a new lead byte: the old one is released */
    FEED(&d, &s, 0xe4, "");
    FEED(&d, &s, 0xe4, "\xe4");
    size_t len;
    const char *tail = ds4_detok_flush(&d, &len);
    CHECK(len == 1 && (uint8_t)tail[0] == 0xe4, "flush gives the held byte verbatim");
    tail = ds4_detok_flush(&d, &len);
    CHECK(len == 0, "flush resets");
    const char *out;
    CHECK(ds4_detok_feed(&d, 9999, &out, &len, &err) == -1 && len == 0, "bad id is an error");
    ds4_detok_free(&d);
    ds4_tokenizer_free(t);
    vocab_free(&v);
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static size_t put_utf8(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | cp >> 6); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | cp >> 12); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    o[0] = (char)(0xF0 | cp >> 18); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

/* decode(encode(x)) == x, streaming one id at a time, and the output never
 * ends inside a character when the input is valid UTF-8. */
static void round_trip(const ds4_tokenizer *t, ds4_detok *d, const char *text, size_t n, bool valid) {
    int32_t *ids;
    size_t n_ids;
    ds4_err err = {{0}};
    if (ds4_tokenize(t, text, n, true, &ids, &n_ids, &err)) {
        CHECK(0, "tokenize: %s", err.msg);
        return;
    }
    char *out = malloc(n + 8);
    size_t len = 0;
    bool ok = true, whole = true;
    for (size_t i = 0; i < n_ids; i++) {
        const char *b;
        size_t bl;
        if (ds4_detok_feed(d, ids[i], &b, &bl, &err) || len + bl > n) {
            ok = false;
            break;
        }
        memcpy(out + len, b, bl);
        len += bl;
        /* with valid input, every emitted prefix ends on a character boundary */
        if (valid && len < n && ((uint8_t)text[len] & 0xC0) == 0x80) whole = false;
    }
    const char *tail = ds4_detok_flush(d, &n_ids);
    if (ok && len + n_ids <= n) {
        memcpy(out + len, tail, n_ids);
        len += n_ids;
    } else {
        ok = false;
    }
    CHECK(ok && len == n && !memcmp(out, text, n), "round trip of %zu bytes", n);
    CHECK(whole, "streamed output split a character");
    free(out);
    free(ids);
}

static void test_round_trip(void) {
    vocab v;
    /* multi-byte tokens, some ending inside a character */
    const char *extra[] = {"ä¸Ń", "ä¸", "Ġt", "he", "Ġthe", "ðŁ", "ðŁĺ", "Ġ", NULL};
    vocab_init(&v, extra);
    const char *merges[] = {"ä ¸", "ä¸ Ń", "Ġ t", "h e", "Ġt he", "ð Ł", "ðŁ ĺ"};
    ds4_tokenizer *t = make(&v, merges, 7);
    ds4_detok d;
    ds4_err err = {{0}};
    CHECK(ds4_detok_init(&d, t, &err) == 0, "%s", err.msg);
    static const uint32_t pool[] = {'a', 't', 'h', 'e', ' ', '\n', '\r', '\t', '1', '.', 0xe9, 0x301,
                                    0x4e2d, 0x6587, 0x200d, 0x1f600, 0x1f44d, 0x3000, 0x85,
                                    0xfeff, 0xe000, 0x10ffff, 0x663, '<', '>'};
    char buf[512];
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = 0, k = rnd() % 60;
        for (size_t i = 0; i < k; i++) {
            uint32_t cp = rnd() % 4 ? pool[rnd() % (sizeof pool / sizeof pool[0])] : rnd() % 0x110000;
            if (cp >= 0xD800 && cp < 0xE000) cp = 'x';
            n += put_utf8(buf + n, cp);
        }
        if (rnd() % 4 == 0) {
            memcpy(buf + n, "<think>", 7);
            n += 7;
        }
        round_trip(t, &d, buf, n, true);
    }
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = rnd() % 200;
        for (size_t i = 0; i < n; i++) buf[i] = (char)(rnd() % 4 ? 0x80 | rnd() % 0x80 : rnd());
        round_trip(t, &d, buf, n, false);
    }
    ds4_detok_free(&d);
    ds4_tokenizer_free(t);
    vocab_free(&v);
}

/* A long text (which gets a memo of merged pieces) tokenises exactly like
 * its parts on their own: the parts are separated by a special token, so
 * they are independent, and each part is too short for a memo. */
static void test_long_text_memo(void) {
    vocab v;
    const char *extra[] = {"Ġt", "he", "Ġthe", "ä¸", "ä¸Ń", "ab", "abab", DS4_TOK_STR_THINK_OPEN, NULL};
    vocab_init(&v, extra);
    const char *merges[] = {"Ġ t", "h e", "Ġt he", "ä ¸", "ä¸ Ń", "a b", "ab ab"};
    ds4_tokenizer *t = make(&v, merges, 7);
    static const char *const words[] = {" the", "the", " ab", "abab", "ababab", " 中", "中中",
                                        "\n\n", "  ", "12345", "x", " the the", "é"};
    static char text[40000];
    size_t len = 0, n_parts = 0, part_start[4000], part_len[4000];
    while (len < sizeof text - 200 && n_parts < 4000) {
        part_start[n_parts] = len;
        for (int k = 1 + rnd() % 8; k > 0; k--) {
            const char *w = words[rnd() % (sizeof words / sizeof words[0])];
            memcpy(text + len, w, strlen(w));
            len += strlen(w);
        }
        part_len[n_parts] = len - part_start[n_parts];
        n_parts++;
        memcpy(text + len, "<think>", 7);
        len += 7;
    }
    int32_t *all, *one;
    size_t n_all, n_one, pos = 0;
    ds4_err err = {{0}};
    CHECK(!ds4_tokenize(t, text, len, true, &all, &n_all, &err), "%s", err.msg);
    bool same = true;
    for (size_t p = 0; p < n_parts && same; p++) {
        CHECK(!ds4_tokenize(t, text + part_start[p], part_len[p], true, &one, &n_one, &err), "%s",
              err.msg);
        same = pos + n_one + 1 <= n_all && !memcmp(all + pos, one, n_one * sizeof *one) &&
               all[pos + n_one] == 256 + 7;
        pos += n_one + 1;
        free(one);
    }
    CHECK(same && pos == n_all, "a %zu-byte text tokenises like its %zu parts", len, n_parts);
    free(all);
    ds4_tokenizer_free(t);
    vocab_free(&v);
}

int main(void) {
    test_pretokenizer();
    test_merge_order();
    test_specials();
    test_load_errors();
    test_gguf();
    test_detok();
    test_round_trip();
    test_long_text_memo();
    return TEST_DONE();
}
