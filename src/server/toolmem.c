/* toolmem.c — the exact-replay tool memory (server-spec §4.8): tool-call id
 * -> the exact DSML bytes the model sampled for the block holding that call.
 *
 * Clients send tool calls back as JSON whose spacing and key order may
 * differ from what the model wrote; rendering the remembered bytes instead
 * keeps the next prompt token-identical to the KV state. All ids of one
 * generated block share one refcounted copy of the block. Entries live in a
 * chained hash table (id -> entry) and an LRU list; the least recently used
 * entries go first when there are more than max_ids of them or the blocks
 * take more than max_bytes. One mutex: client threads look up, the worker
 * remembers. The disk KV cache stores, with each checkpoint, the entries
 * whose block occurs in the checkpoint's text (the KTM map, server-spec
 * §5.7), and a load puts them back, so exact replay survives a restart. */
#define _GNU_SOURCE /* memmem */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../common/xalloc.h"
#include "ctx.h"

typedef struct block {
    char *raw;
    size_t len;
    int refs;
    unsigned long seen; /* export pass that last tested it */
    bool in_text;       /* ... and whether it occurs in that pass's text */
} block;

typedef struct entry {
    char *id;
    block *blk;
    struct entry *hnext;       /* hash chain */
    struct entry *prev, *next; /* LRU: head = most recent */
} entry;

struct srv_toolmem {
    pthread_mutex_t mu;
    entry **table;
    size_t n_buckets;
    entry *head, *tail;
    int count, max_ids;
    size_t bytes, max_bytes;
    unsigned long pass; /* export passes so far */
};

static uint64_t hash_str(const char *s) { /* FNV-1a */
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

srv_toolmem *srv_toolmem_new(int max_ids, size_t max_bytes) {
    srv_toolmem *m = ds4_xcalloc(1, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    m->n_buckets = 4096;
    m->table = ds4_xcalloc(m->n_buckets, sizeof *m->table);
    m->max_ids = max_ids;
    m->max_bytes = max_bytes;
    return m;
}

static void block_unref(srv_toolmem *m, block *b) {
    if (--b->refs) return;
    m->bytes -= b->len;
    free(b->raw);
    free(b);
}

static void lru_unlink(srv_toolmem *m, entry *e) {
    if (e->prev) e->prev->next = e->next;
    else m->head = e->next;
    if (e->next) e->next->prev = e->prev;
    else m->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(srv_toolmem *m, entry *e) {
    e->next = m->head;
    e->prev = NULL;
    if (m->head) m->head->prev = e;
    m->head = e;
    if (!m->tail) m->tail = e;
}

static entry **find_slot(srv_toolmem *m, const char *id) {
    entry **p = &m->table[hash_str(id) & (m->n_buckets - 1)];
    while (*p && strcmp((*p)->id, id)) p = &(*p)->hnext;
    return p;
}

static void remove_entry(srv_toolmem *m, entry *e) {
    entry **p = find_slot(m, e->id);
    *p = e->hnext;
    lru_unlink(m, e);
    block_unref(m, e->blk);
    free(e->id);
    free(e);
    m->count--;
}

/* Doubles the table when chains get long (keeps lookups O(1)). */
static void maybe_grow(srv_toolmem *m) {
    if ((size_t)m->count < m->n_buckets * 2) return;
    size_t nb = m->n_buckets * 2;
    entry **t = calloc(nb, sizeof *t);
    if (!t) return;
    for (size_t i = 0; i < m->n_buckets; i++) {
        for (entry *e = m->table[i], *next; e; e = next) {
            next = e->hnext;
            entry **slot = &t[hash_str(e->id) & (nb - 1)];
            e->hnext = *slot;
            *slot = e;
        }
    }
    free(m->table);
    m->table = t;
    m->n_buckets = nb;
}

void srv_toolmem_remember(srv_toolmem *m, const char *const *ids, int n, const char *raw, size_t len) {
    if (n <= 0 || !raw || len > m->max_bytes) return;
    pthread_mutex_lock(&m->mu);
    block *b = ds4_xmalloc(sizeof *b);
    *b = (block){.raw = ds4_xstrndup(raw, len), .len = len, .refs = 1};
    m->bytes += len;
    for (int i = 0; i < n; i++) {
        if (!ids[i] || !*ids[i]) continue;
        entry **slot = find_slot(m, ids[i]);
        if (*slot) remove_entry(m, *slot);
        entry *e = ds4_xcalloc(1, sizeof *e);
        e->id = ds4_xstrdup(ids[i]);
        e->blk = b;
        b->refs++;
        slot = find_slot(m, ids[i]);
        *slot = e;
        lru_push_front(m, e);
        m->count++;
    }
    block_unref(m, b); /* the entries hold it now */
    while (m->tail && (m->count > m->max_ids || m->bytes > m->max_bytes)) remove_entry(m, m->tail);
    maybe_grow(m);
    pthread_mutex_unlock(&m->mu);
}

char *srv_toolmem_lookup(srv_toolmem *m, const char *const *ids, int n) {
    if (n <= 0) return NULL;
    pthread_mutex_lock(&m->mu);
    block *b = NULL;
    for (int i = 0; i < n; i++) {
        entry *e = ids[i] ? *find_slot(m, ids[i]) : NULL;
        if (!e || (b && e->blk != b)) {
            b = NULL;
            break;
        }
        b = e->blk;
        lru_unlink(m, e);
        lru_push_front(m, e);
    }
    char *out = b ? ds4_xstrndup(b->raw, b->len) : NULL;
    pthread_mutex_unlock(&m->mu);
    return out;
}

int srv_toolmem_export(srv_toolmem *m, const char *text, size_t len, ds4_kvcache_tool_id **out) {
    *out = NULL;
    pthread_mutex_lock(&m->mu);
    unsigned long pass = ++m->pass;
    ds4_kvcache_tool_id *v = NULL;
    int n = 0;
    for (entry *e = m->head; e; e = e->next) {
        block *b = e->blk;
        if (b->seen != pass) {
            b->seen = pass;
            b->in_text = memmem(text, len, b->raw, b->len) != NULL;
        }
        if (!b->in_text) continue;
        v = ds4_xrealloc(v, (size_t)(n + 1) * sizeof *v);
        v[n++] = (ds4_kvcache_tool_id){.id = ds4_xstrdup(e->id), .id_len = strlen(e->id),
                                       .dsml = ds4_xstrndup(b->raw, b->len), .dsml_len = b->len};
    }
    pthread_mutex_unlock(&m->mu);
    *out = v;
    return n;
}

/* ids sharing one block must share it again, or a lookup of all of a
 * block's ids would find different blocks and fall back to canonical. */
void srv_toolmem_import(srv_toolmem *m, const ds4_kvcache_tool_id *ids, int n) {
    bool *done = ds4_xcalloc((size_t)(n > 0 ? n : 1), sizeof *done);
    const char **group = ds4_xcalloc((size_t)(n > 0 ? n : 1), sizeof *group);
    for (int i = 0; i < n; i++) {
        if (done[i]) continue;
        int k = 0;
        for (int j = i; j < n; j++) {
            if (done[j] || ids[j].dsml_len != ids[i].dsml_len || memcmp(ids[j].dsml, ids[i].dsml, ids[i].dsml_len))
                continue;
            done[j] = true;
            if (strlen(ids[j].id) == ids[j].id_len) group[k++] = ids[j].id; /* an id with a NUL is never asked for */
        }
        if (k) srv_toolmem_remember(m, group, k, ids[i].dsml, ids[i].dsml_len);
    }
    free(done);
    free(group);
}

void srv_toolmem_export_free(ds4_kvcache_tool_id *ids, int n) {
    for (int i = 0; i < n; i++) {
        free(ids[i].id);
        free(ids[i].dsml);
    }
    free(ids);
}

int srv_toolmem_count(srv_toolmem *m) {
    pthread_mutex_lock(&m->mu);
    int n = m->count;
    pthread_mutex_unlock(&m->mu);
    return n;
}

void srv_toolmem_free(srv_toolmem *m) {
    if (!m) return;
    while (m->head) remove_entry(m, m->head);
    free(m->table);
    pthread_mutex_destroy(&m->mu);
    free(m);
}
