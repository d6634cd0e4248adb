/* bpe.c — ds4_tokenize: special strings, then pre-tokenizer pieces, then
 * byte-pair merges inside each piece.
 *
 * A piece starts as one symbol per byte (the token of that byte) kept in a
 * doubly linked list over an array. A binary heap holds every adjacent pair
 * that has a merge, ordered by (merge rank, position): popping it gives the
 * lowest-rank pair, leftmost on ties, which is the reference BPE order.
 * Entries made stale by an earlier merge are recognised on pop (their ids
 * no longer match the list) and dropped, so a piece of n bytes costs
 * O(n log n) whatever its length.
 *
 * Long texts repeat their words, so a call on a long text keeps a memo of
 * the short pieces it has merged (piece -> where its ids already are in the
 * output); a repeated piece costs one hash instead of a BPE run. The memo
 * belongs to the call, which keeps the tokenizer immutable and shareable
 * between threads. */
#include <stdlib.h>
#include <string.h>

#include "pretokenize.h"
#include "tok_internal.h"

#define NONE UINT32_MAX

typedef struct pair {
    uint32_t rank;
    uint32_t left;   /* position of the left symbol */
    int32_t a, b;    /* ids of the two symbols when the pair was found */
    int32_t result;
} pair;

/* A memoised piece: its bytes (inside the caller's text) and its ids
 * (inside the output array, which only grows). */
typedef struct memo_entry {
    const char *piece; /* NULL = empty slot */
    uint64_t hash;
    uint32_t len, ids_off, n_ids;
} memo_entry;

#define MEMO_MIN_TEXT 4096   /* shorter texts go without a memo */
#define MEMO_MAX_PIECE 48    /* longer pieces are rarely repeated */
#define MEMO_MAX_SLOTS (1u << 17)

typedef struct tok_job {
    const ds4_tokenizer *t;
    memo_entry *memo;
    size_t memo_mask, memo_used;
    int32_t *ids;
    size_t n_ids, cap_ids;
    int32_t *sym;     /* symbol id per position, -1 once merged away */
    uint32_t *next, *prev;
    pair *heap;
    size_t n_heap, cap_heap, cap_pos;
    ds4_pretok pretok;
    ds4_err *err;
} tok_job;

static int grow_ids(tok_job *j, size_t more) {
    if (j->n_ids + more <= j->cap_ids) return 0;
    size_t cap = j->cap_ids ? j->cap_ids : 64;
    while (cap < j->n_ids + more) cap *= 2;
    int32_t *ids = realloc(j->ids, cap * sizeof *ids);
    if (!ids) return ds4_fail(j->err, "tokenizer: out of memory for %zu tokens", cap);
    j->ids = ids;
    j->cap_ids = cap;
    return 0;
}

static int grow_positions(tok_job *j, size_t n) {
    if (n <= j->cap_pos) return 0;
    size_t cap = j->cap_pos ? j->cap_pos : 64;
    while (cap < n) cap *= 2;
    int32_t *sym = realloc(j->sym, cap * sizeof *sym);
    if (sym) j->sym = sym;
    uint32_t *next = realloc(j->next, cap * sizeof *next);
    if (next) j->next = next;
    uint32_t *prev = realloc(j->prev, cap * sizeof *prev);
    if (prev) j->prev = prev;
    if (!sym || !next || !prev)
        return ds4_fail(j->err, "tokenizer: out of memory for a piece of %zu bytes", n);
    j->cap_pos = cap;
    return 0;
}

/* The heap starts with room for the initial pairs and grows when merges
 * push more (at most 2 per merge). */
static int grow_heap(tok_job *j, size_t n) {
    if (n <= j->cap_heap) return 0;
    size_t cap = j->cap_heap ? j->cap_heap : 64;
    while (cap < n) cap *= 2;
    pair *heap = realloc(j->heap, cap * sizeof *heap);
    if (!heap) return ds4_fail(j->err, "tokenizer: out of memory for %zu merge candidates", n);
    j->heap = heap;
    j->cap_heap = cap;
    return 0;
}

static int pair_less(const pair *x, const pair *y) {
    return x->rank != y->rank ? x->rank < y->rank : x->left < y->left;
}

static void heap_push(tok_job *j, pair p) {
    size_t i = j->n_heap++;
    while (i > 0) {
        size_t up = (i - 1) / 2;
        if (!pair_less(&p, &j->heap[up])) break;
        j->heap[i] = j->heap[up];
        i = up;
    }
    j->heap[i] = p;
}

static pair heap_pop(tok_job *j) {
    pair top = j->heap[0], last = j->heap[--j->n_heap];
    size_t i = 0, n = j->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) break;
        if (c + 1 < n && pair_less(&j->heap[c + 1], &j->heap[c])) c++;
        if (!pair_less(&j->heap[c], &last)) break;
        j->heap[i] = j->heap[c];
        i = c;
    }
    if (n) j->heap[i] = last;
    return top;
}

/* Queues the pair starting at position `left` if its two symbols merge. */
static int consider_pair(tok_job *j, uint32_t left) {
    uint32_t right = j->next[left];
    if (right == NONE) return 0;
    const tok_merge *m = tok_find_merge(j->t, j->sym[left], j->sym[right]);
    if (!m) return 0;
    if (grow_heap(j, j->n_heap + 1)) return -1;
    heap_push(j, (pair){m->rank, left, j->sym[left], j->sym[right], m->result});
    return 0;
}

/* Merges one piece of n >= 2 bytes and appends its token ids (room for n
 * ids has been made). */
static int bpe_merge(tok_job *j, const uint8_t *s, size_t n) {
    const ds4_tokenizer *t = j->t;
    if (grow_positions(j, n) || grow_heap(j, n)) return -1;
    for (size_t i = 0; i < n; i++) {
        j->sym[i] = t->byte_token[s[i]];
        j->next[i] = i + 1 < n ? (uint32_t)(i + 1) : NONE;
        j->prev[i] = i ? (uint32_t)(i - 1) : NONE;
    }
    j->n_heap = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (consider_pair(j, (uint32_t)i)) return -1;
    while (j->n_heap) {
        pair p = heap_pop(j);
        uint32_t left = p.left, right = j->next[left];
        if (j->sym[left] != p.a || right == NONE || j->sym[right] != p.b) continue; /* stale */
        j->sym[left] = p.result;
        j->sym[right] = -1;
        j->next[left] = j->next[right];
        if (j->next[left] != NONE) j->prev[j->next[left]] = left;
        if ((j->prev[left] != NONE && consider_pair(j, j->prev[left])) || consider_pair(j, left))
            return -1;
    }
    for (uint32_t i = 0; i != NONE; i = j->next[i]) j->ids[j->n_ids++] = j->sym[i];
    return 0;
}

static uint64_t hash_piece(const uint8_t *s, size_t n) {
    uint64_t h = n * 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001B3ull;
    return h ^ (h >> 29);
}

/* Sizes the memo for a text of len bytes; without memory it goes without. */
static void memo_init(tok_job *j, size_t len) {
    if (len < MEMO_MIN_TEXT || len >= UINT32_MAX) return; /* offsets are 32-bit */
    size_t slots = 1024;
    while (slots < len / 8 && slots < MEMO_MAX_SLOTS) slots *= 2;
    j->memo = calloc(slots, sizeof *j->memo);
    j->memo_mask = slots - 1;
}

/* Pre-tokenizer callback: appends the token ids of one piece. */
static int bpe_piece(void *ctx, const char *piece, size_t n) {
    tok_job *j = ctx;
    const uint8_t *s = (const uint8_t *)piece;
    if (grow_ids(j, n)) return -1;
    if (n == 1) {
        j->ids[j->n_ids++] = j->t->byte_token[s[0]];
        return 0;
    }
    if (!j->memo || n > MEMO_MAX_PIECE) return bpe_merge(j, s, n);
    uint64_t h = hash_piece(s, n);
    size_t i = h & j->memo_mask;
    for (memo_entry *e; (e = &j->memo[i])->piece; i = (i + 1) & j->memo_mask) {
        if (e->hash == h && e->len == n && !memcmp(e->piece, piece, n)) {
            memcpy(j->ids + j->n_ids, j->ids + e->ids_off, e->n_ids * sizeof *j->ids);
            j->n_ids += e->n_ids;
            return 0;
        }
    }
    size_t start = j->n_ids;
    if (bpe_merge(j, s, n)) return -1;
    if (j->memo_used < (j->memo_mask + 1) / 2) { /* full enough: stop adding */
        j->memo[i] = (memo_entry){piece, h, (uint32_t)n, (uint32_t)start, (uint32_t)(j->n_ids - start)};
        j->memo_used++;
    }
    return 0;
}

static int tokenize_text(tok_job *j, const char *text, size_t len) {
    if (!len) return 0;
    int rc = ds4_pretok_split(&j->pretok, text, len, bpe_piece, j, j->err);
    return rc ? -1 : 0;
}

/* The longest special string at text[i..len), or NULL. */
static const tok_special *special_at(const ds4_tokenizer *t, const char *text, size_t len, size_t i) {
    const tok_special *best = NULL;
    for (int k = 0; k < t->n_match; k++) {
        const tok_special *sp = &t->match[k];
        if (sp->len <= len - i && !memcmp(text + i, sp->str, sp->len) && (!best || sp->len > best->len))
            best = sp;
    }
    return best;
}

int ds4_tokenize(const ds4_tokenizer *t, const char *text, size_t len, bool parse_specials,
                 int32_t **ids, size_t *n_ids, ds4_err *err) {
    tok_job j = {.t = t, .err = err};
    memo_init(&j, len);
    size_t seg = 0;
    int rc = 0;
    if (parse_specials && t->n_match) {
        for (size_t i = 0; i < len && !rc; i++) {
            if (!t->match_first[(uint8_t)text[i]]) continue;
            const tok_special *sp = special_at(t, text, len, i);
            if (!sp) continue;
            rc = tokenize_text(&j, text + seg, i - seg);
            if (!rc) rc = grow_ids(&j, 1);
            if (!rc) j.ids[j.n_ids++] = sp->id;
            seg = i + sp->len;
            i = seg - 1;
        }
    }
    if (!rc) rc = tokenize_text(&j, text + seg, len - seg);
    free(j.sym);
    free(j.next);
    free(j.prev);
    free(j.heap);
    free(j.memo);
    ds4_pretok_free(&j.pretok);
    if (rc) {
        free(j.ids);
        *ids = NULL;
        *n_ids = 0;
        return -1;
    }
    *ids = j.n_ids ? j.ids : NULL;
    if (!j.n_ids) free(j.ids);
    *n_ids = j.n_ids;
    return 0;
}
