/* pretokenize.c — the three-level DeepSeek split of pretokenize.h.
 *
 * The text is decoded once into one class byte per character (plus its byte
 * offset); the three regex levels then walk those arrays. Each level hands
 * its pieces to the next, exactly as the reference applies each Split inside
 * the pieces of the previous one, so a lookahead never sees past the end of
 * the piece it runs in. The regex alternatives of level 3 are tried in
 * order at each position, leftmost-first like a backtracking engine; the
 * comments next to each say how its backtracking resolves. Everything is
 * linear in the text length. */
#include "pretokenize.h"

#include <stdbool.h>
#include <stdlib.h>
#include <utf8proc.h>

#include "../common/utf8.h"

/* Character classes (bit set). PS is \p{P} ∪ \p{S}: the regexes only ever
 * use the two together. ASCII marks U+0000–U+007F. */
enum {
    C_L = 1,     /* \p{L} */
    C_M = 2,     /* \p{M} */
    C_N = 4,     /* \p{N} */
    C_PS = 8,    /* \p{P} or \p{S} */
    C_WS = 16,   /* \s: White_Space */
    C_NL = 32,   /* \r or \n */
    C_CJK = 64,  /* [一-龥぀-ゟ゠-ヿ] */
    C_ASCII = 128,
};

static const uint8_t ascii_class[128] = {
    [0 ... 8] = C_ASCII,
    ['\t'] = C_ASCII | C_WS, ['\n'] = C_ASCII | C_WS | C_NL,
    ['\v'] = C_ASCII | C_WS, ['\f'] = C_ASCII | C_WS, ['\r'] = C_ASCII | C_WS | C_NL,
    [14 ... 31] = C_ASCII,
    [' '] = C_ASCII | C_WS,
    ['!' ... '/'] = C_ASCII | C_PS,
    ['0' ... '9'] = C_ASCII | C_N,
    [':' ... '@'] = C_ASCII | C_PS,
    ['A' ... 'Z'] = C_ASCII | C_L,
    ['[' ... '`'] = C_ASCII | C_PS,
    ['a' ... 'z'] = C_ASCII | C_L,
    ['{' ... '~'] = C_ASCII | C_PS,
    [127] = C_ASCII,
};

/* Unicode White_Space (PropList.txt), which is what \s means in the
 * reference engine. */
static bool is_white_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* The ranges of level 2: U+4E00–U+9FA5, U+3040–U+309F, U+30A0–U+30FF. */
static bool is_cjk(uint32_t cp) {
    return (cp >= 0x4E00 && cp <= 0x9FA5) || (cp >= 0x3040 && cp <= 0x30FF);
}

static uint8_t class_of(uint32_t cp) {
    if (cp < 0x80) return ascii_class[cp];
    uint8_t c = 0;
    switch (utf8proc_category((utf8proc_int32_t)cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO:
        c = C_L; break;
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
        c = C_M; break;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO:
        c = C_N; break;
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS:
    case UTF8PROC_CATEGORY_PE: case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF:
    case UTF8PROC_CATEGORY_PO: case UTF8PROC_CATEGORY_SM: case UTF8PROC_CATEGORY_SC:
    case UTF8PROC_CATEGORY_SK: case UTF8PROC_CATEGORY_SO:
        c = C_PS; break;
    default:
        break;
    }
    if (is_white_space(cp)) c |= C_WS;
    if (is_cjk(cp)) c |= C_CJK;
    return c;
}

/* One split in progress: the classes and byte offsets of the characters
 * (off has one extra entry, the end of the text). */
typedef struct splitter {
    const char *text;
    const uint8_t *cls;
    const uint32_t *off;
    ds4_piece_fn fn;
    void *ctx;
} splitter;

static int emit(const splitter *s, size_t a, size_t b) {
    return s->fn(s->ctx, s->text + s->off[a], s->off[b] - s->off[a]);
}

static size_t run_of(const uint8_t *cls, size_t i, size_t end, uint8_t mask) {
    while (i < end && (cls[i] & mask)) i++;
    return i;
}

/* End of the level-3 match starting at i (within the piece [.., end)), or
 * i when no alternative matches there. */
static size_t match_at(const splitter *s, size_t i, size_t end) {
    const uint8_t *cls = s->cls;
    uint8_t c0 = cls[i], c1 = i + 1 < end ? cls[i + 1] : 0;
    const uint8_t ascii_punct = C_ASCII | C_PS, ascii_alpha = C_ASCII | C_L;

    /* [!-/:-@[-`{-~][A-Za-z]+ */
    if ((c0 & ascii_punct) == ascii_punct && (c1 & ascii_alpha) == ascii_alpha) {
        size_t j = i + 1;
        while (j < end && (cls[j] & ascii_alpha) == ascii_alpha) j++;
        return j;
    }
    /* [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+ : the optional prefix is taken
     * when a letter/mark follows it; otherwise the run must start at i. */
    if (!(c0 & (C_NL | C_L | C_PS)) && (c1 & (C_L | C_M))) return run_of(cls, i + 1, end, C_L | C_M);
    if (c0 & (C_L | C_M)) return run_of(cls, i, end, C_L | C_M);
    /*  ?[\p{P}\p{S}]+[\r\n]* : the space is taken only before punctuation. */
    {
        size_t j = i;
        if (s->text[s->off[i]] == ' ' && (c1 & C_PS)) j = i + 1;
        if (cls[j] & C_PS) return run_of(cls, run_of(cls, j, end, C_PS), end, C_NL);
    }
    if (!(c0 & C_WS)) return i;
    size_t ws_end = run_of(cls, i, end, C_WS);
    /* \s*[\r\n]+ : \s* backtracks to the last \r or \n of the whitespace
     * run; the match ends right after it. */
    for (size_t k = ws_end; k > i; k--)
        if (cls[k - 1] & C_NL) return k;
    /* \s+(?!\S) : the whole run at the end of the piece, else the run
     * minus its last character (which is followed by whitespace). */
    if (ws_end == end) return ws_end;
    if (ws_end - i >= 2) return ws_end - 1;
    /* \s+ */
    return ws_end;
}

/* Level 3: every match is a piece and so is every gap between matches. */
static int split_level3(const splitter *s, size_t a, size_t b) {
    size_t gap = a, i = a;
    int rc;
    while (i < b) {
        size_t m = match_at(s, i, b);
        if (m == i) {
            i++;
            continue;
        }
        if (gap < i && (rc = emit(s, gap, i))) return rc;
        if ((rc = emit(s, i, m))) return rc;
        i = gap = m;
    }
    return gap < b ? emit(s, gap, b) : 0;
}

/* Level 2: runs of [一-龥぀-ゟ゠-ヿ] and the text between them. */
static int split_level2(const splitter *s, size_t a, size_t b) {
    int rc;
    for (size_t i = a; i < b;) {
        bool cjk = s->cls[i] & C_CJK;
        size_t j = i + 1;
        while (j < b && (bool)(s->cls[j] & C_CJK) == cjk) j++;
        if ((rc = split_level3(s, i, j))) return rc;
        i = j;
    }
    return 0;
}

/* Level 1: \p{N}{1,3} chunks and the text between them. A chunk of digits
 * contains no CJK and no level-3 match start, so it is a piece as it is. */
static int split_level1(const splitter *s, size_t n) {
    int rc;
    for (size_t i = 0; i < n;) {
        size_t j = i;
        if (s->cls[i] & C_N) {
            while (j < n && j - i < 3 && (s->cls[j] & C_N)) j++;
            rc = emit(s, i, j);
        } else {
            while (j < n && !(s->cls[j] & C_N)) j++;
            rc = split_level2(s, i, j);
        }
        if (rc) return rc;
        i = j;
    }
    return 0;
}

static int reserve(ds4_pretok *p, size_t n, ds4_err *err) {
    if (n <= p->cap) return 0;
    size_t cap = p->cap ? p->cap : 256;
    while (cap < n) cap *= 2;
    uint8_t *cls = realloc(p->cls, cap);
    if (!cls) return ds4_fail(err, "pre-tokenizer: out of memory for %zu characters", n);
    p->cls = cls;
    uint32_t *off = realloc(p->off, cap * sizeof *off);
    if (!off) return ds4_fail(err, "pre-tokenizer: out of memory for %zu characters", n);
    p->off = off;
    p->cap = cap;
    return 0;
}

int ds4_pretok_split(ds4_pretok *p, const char *text, size_t len, ds4_piece_fn fn, void *ctx,
                     ds4_err *err) {
    if (len >= UINT32_MAX) return ds4_fail(err, "pre-tokenizer: text of %zu bytes is over 4 GiB", len);
    if (reserve(p, len + 1, err)) return -1;
    const uint8_t *u = (const uint8_t *)text;
    size_t n = 0;
    for (size_t pos = 0; pos < len; n++) {
        p->off[n] = (uint32_t)pos;
        if (u[pos] < 0x80) {
            p->cls[n] = ascii_class[u[pos]];
            pos++;
            continue;
        }
        uint32_t cp;
        size_t k = ds4_utf8_decode(u + pos, len - pos, &cp);
        p->cls[n] = k ? class_of(cp) : 0; /* an invalid byte: no category */
        pos += k ? k : 1;
    }
    p->off[n] = (uint32_t)len;
    splitter s = {text, p->cls, p->off, fn, ctx};
    return split_level1(&s, n);
}

void ds4_pretok_free(ds4_pretok *p) {
    free(p->cls);
    free(p->off);
    *p = (ds4_pretok){0};
}
