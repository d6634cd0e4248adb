/* kv_session.c — the disk cache's view of the engine: payload I/O bound to
 * a session, and what identifies the states a server may load (the routed
 * quant, ctx, numerics and a hash of the model).
 *
 * The model id hashes the deepseek4.* metadata and, for every tensor except
 * the routed experts, its name, type, shape and the first and last 64 bytes
 * of its data. The routed experts are left out on purpose: they are what
 * the q2 and q4 files of one model differ in, and ds4 lets those share
 * checkpoints (server-spec §5.9; --kv-cache-reject-different-quant makes it
 * strict through the quant byte instead). Sampling the data keeps the hash
 * cheap on an 80 GiB file (a few pages per tensor) while two synthetic
 * models of equal shape but different seeds still differ. */
#include <openssl/evp.h>
#include <string.h>

#include "kvcache.h"

static uint64_t payload_bytes(void *s) { return ds4_session_payload_bytes(s); }
static int save(void *s, ds4_writer *w, ds4_err *err) { return ds4_session_save_payload(s, w, err); }
static int load(void *s, ds4_reader *r, uint64_t nbytes, ds4_err *err) {
    return ds4_session_load_payload(s, r, nbytes, err);
}
static int n_tokens(void *s) { return ds4_session_n_tokens(s); }
static void reset(void *s) { ds4_session_reset(s); }

ds4_kvcache_io ds4_kvcache_session_io(ds4_session *s) {
    return (ds4_kvcache_io){.payload_bytes = payload_bytes, .save = save, .load = load,
                            .n_tokens = n_tokens, .reset = reset, .ctx = s};
}

static void hash_u64(EVP_MD_CTX *md, uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (8 * i));
    EVP_DigestUpdate(md, b, 8);
}

static bool is_routed_expert(gguf_str name) {
    static const char *const kinds[] = {".ffn_gate_exps.", ".ffn_up_exps.", ".ffn_down_exps."};
    for (int k = 0; k < 3; k++) {
        size_t n = strlen(kinds[k]);
        for (uint64_t i = 0; i + n <= name.len; i++)
            if (memcmp(name.ptr + i, kinds[k], n) == 0) return true;
    }
    return false;
}

void ds4_kvcache_model_id(const ds4_model *m, uint8_t out[20]) {
    const gguf_file *f = &m->file;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned int len = 0;
    memset(out, 0, 20);
    if (!md || EVP_DigestInit_ex(md, EVP_sha1(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return;
    }
    EVP_DigestUpdate(md, "ds4c model id 1", 15);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (kv->key.len < 10 || memcmp(kv->key.ptr, "deepseek4.", 10) != 0) continue;
        hash_u64(md, kv->key.len);
        EVP_DigestUpdate(md, kv->key.ptr, kv->key.len);
        const gguf_value *v = &kv->value;
        hash_u64(md, v->type);
        if (v->type == GGUF_T_STRING) {
            hash_u64(md, v->v.str.len);
            EVP_DigestUpdate(md, v->v.str.ptr, v->v.str.len);
        } else if (v->type == GGUF_T_ARRAY) {
            hash_u64(md, v->v.arr.item_type);
            hash_u64(md, v->v.arr.count);
            if (v->v.arr.item_type != GGUF_T_STRING) EVP_DigestUpdate(md, v->v.arr.items, v->v.arr.bytes);
        } else {
            hash_u64(md, v->v.u64);
        }
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor_info *t = &f->tensors[i];
        if (is_routed_expert(t->name)) continue;
        hash_u64(md, t->name.len);
        EVP_DigestUpdate(md, t->name.ptr, t->name.len);
        hash_u64(md, t->type);
        hash_u64(md, t->n_dims);
        for (int d = 0; d < GGUF_MAX_DIMS; d++) hash_u64(md, t->ne[d]);
        uint64_t k = t->nbytes < 64 ? t->nbytes : 64;
        EVP_DigestUpdate(md, t->data, k);
        EVP_DigestUpdate(md, (const uint8_t *)t->data + t->nbytes - k, k);
    }
    EVP_DigestFinal_ex(md, out, &len);
    EVP_MD_CTX_free(md);
}

void ds4_kvcache_identity_from_engine(const ds4_engine *e, ds4_kvcache_identity *id) {
    const ds4_model *m = ds4_engine_model(e);
    memset(id, 0, sizeof *id);
    id->quant_bits = strcmp(ds4_model_expert_quant_name(m), "q2") == 0 ? 2 : 4;
    id->ctx = (uint32_t)ds4_engine_ctx(e);
    id->exact = ds4_engine_exact_numerics(e);
    ds4_kvcache_model_id(m, id->model_id);
}
