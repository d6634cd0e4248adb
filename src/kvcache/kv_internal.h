/* kv_internal.h — the `.kv` file's pieces as kv_file.c encodes and checks
 * them, shared with the directory store (kv_store.c). The layout itself is
 * documented in kvcache.h. */
#ifndef DS4_KV_INTERNAL_H
#define DS4_KV_INTERNAL_H

#include <openssl/evp.h>
#include <sys/types.h>

#include "kvcache.h"

#define KV_KTM_MAX_ID 256
#define KV_KTM_MAX_DSML (512ull << 20)

typedef struct kv_header {
    uint8_t quant_bits, reason, ext_flags;
    uint32_t tokens, hits, ctx;
    uint64_t created, last_used, payload_bytes;
    uint32_t text_bytes;
} kv_header;

typedef struct kv_integrity {
    uint32_t flags; /* bit 0: exact numerics */
    uint8_t model_id[20];
    uint64_t covered;
    uint8_t digest[20];
} kv_integrity;

void kv_put32(uint8_t *p, uint32_t v);
void kv_put64(uint8_t *p, uint64_t v);
uint32_t kv_get32(const uint8_t *p);
uint64_t kv_get64(const uint8_t *p);

/* The 52 fixed bytes. */
void kv_header_encode(const kv_header *h, uint8_t out[DS4_KVC_FIXED_BYTES]);
/* Parses and checks magic, version, quant, tokens; NULL or a reason. */
const char *kv_header_decode(const uint8_t in[DS4_KVC_FIXED_BYTES], kv_header *h);
/* The fixed bytes as hashed: hits and last used zeroed. */
void kv_header_for_digest(const uint8_t in[DS4_KVC_FIXED_BYTES], uint8_t out[DS4_KVC_FIXED_BYTES]);

/* The integrity section; the digest covers its first 36 bytes too. */
void kv_integrity_encode(const kv_integrity *s, uint8_t out[DS4_KVC_INTEGRITY_BYTES]);
const char *kv_integrity_decode(const uint8_t in[DS4_KVC_INTEGRITY_BYTES], kv_integrity *s);
#define KV_INTEGRITY_HASHED 36

/* Checks that a file of file_size bytes with header h and section s is laid
 * out consistently; *ktm_bytes = the KTM map's size (0 without bit 0). */
const char *kv_layout_check(const kv_header *h, const kv_integrity *s, uint64_t file_size,
                            uint64_t *ktm_bytes);

/* KTM map of the entries whose dsml occurs in text; NULL/0 when none.
 * Returns -1 on out of memory. */
int kv_ktm_encode(const ds4_kvcache_tool_id *ids, int n, const char *text, size_t text_len, uint8_t **out,
                  size_t *out_len);
/* Parses a whole KTM map (must use every byte); NULL or a reason. */
const char *kv_ktm_decode(const uint8_t *in, size_t len, int max_ids, ds4_kvcache_tool_id **ids, int *n);
void kv_tool_ids_free(ds4_kvcache_tool_id *ids, int n);

/* Buffered, hashing sequential I/O over a file descriptor. */
typedef struct kv_stream {
    int fd;
    EVP_MD_CTX *md;
    uint8_t *buf;
    size_t pos, len, cap;
    uint64_t offset;     /* file offset of the next byte for the caller */
    uint64_t limit;      /* reads: bytes the caller may still take */
    int saved_errno;
} kv_stream;

int kv_stream_init(kv_stream *s, int fd);
void kv_stream_free(kv_stream *s);
int kv_stream_write(kv_stream *s, const void *p, size_t n); /* hashes; 0 or -1 */
int kv_stream_flush(kv_stream *s);
int kv_stream_read(kv_stream *s, void *p, size_t n);        /* hashes; 0 or -1 */
/* Raw (unhashed) write/read, and hashing bytes that are not written or
 * read as they are (the header with hits and last used zeroed). */
int kv_stream_write_raw(kv_stream *s, const void *p, size_t n);
int kv_stream_read_raw(kv_stream *s, void *p, size_t n);
void kv_stream_hash(kv_stream *s, const void *p, size_t n);
void kv_stream_digest(kv_stream *s, uint8_t out[20]);
ds4_writer kv_stream_writer(kv_stream *s);
ds4_reader kv_stream_reader(kv_stream *s);

void kv_sha1_hex(const void *p, size_t n, char out[41]);
void kv_hex20(const uint8_t d[20], char out[41]);

#endif
