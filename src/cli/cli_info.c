/* cli_info.c — `ds4 -m FILE --info` (alias --inspect): what a model file is
 * and what running it will need.
 *
 * Loads the model with full validation (so --info doubles as a file check),
 * then prints the hyperparameters, the tensor count and expert quantisation,
 * the file size, and the memory at the -c context: the mmapped weights plus
 * the session state from ds4_kv_bytes(). With --mtp, the MTP file is
 * validated against the model and summarised too. A bad file prints one
 * error line and exits 1. */
#include <stdio.h>
#include <string.h>

#include "../model/model.h"
#include "../quant/quant.h"
#include "cli.h"

static void print_bytes(const char *label, uint64_t n) {
    const double gib = 1024.0 * 1024.0 * 1024.0, mib = 1024.0 * 1024.0;
    if (n >= (uint64_t)gib) printf("%-18s %.2f GiB (%llu bytes)\n", label, n / gib, (unsigned long long)n);
    else printf("%-18s %.2f MiB (%llu bytes)\n", label, n / mib, (unsigned long long)n);
}

static void print_name(const gguf_file *f) {
    const gguf_kv *kv = gguf_find_kv(f, "general.name");
    char buf[96];
    if (kv && kv->value.type == GGUF_T_STRING)
        printf("%-18s %s\n", "name:", gguf_str_show(kv->value.v.str, buf, sizeof buf));
}

static void print_experts(const char *label, const char *quant, uint32_t gate, uint32_t down) {
    printf("%-18s %s (%s gate/up, %s down)\n", label, quant, ds4_type_name(gate), ds4_type_name(down));
}

static void print_model(const ds4_model *m, const char *path, int ctx) {
    const ds4_hparams *hp = &m->hp;
    printf("%-18s %s\n", "model:", path);
    print_name(&m->file);
    print_bytes("file size:", m->file.size);
    printf("%-18s %u (compression ratios ", "layers:", hp->n_layer);
    for (uint32_t il = 0; il < hp->n_layer; il++) printf("%s%u", il ? "," : "", hp->compress_ratio[il]);
    printf("; %u hash-routed)\n", hp->n_hash_layer);
    printf("%-18s %u\n", "embedding:", hp->n_embd);
    printf("%-18s %u\n", "vocab:", hp->n_vocab);
    printf("%-18s %u heads x %u (RoPE on %u), %u KV head, q_lora %u, o_lora %u x %u groups\n",
           "attention:", hp->n_head, hp->head_dim, hp->n_rot, hp->n_head_kv, hp->q_lora, hp->o_lora,
           hp->n_out_group);
    printf("%-18s %u tokens\n", "sliding window:", hp->n_swa);
    printf("%-18s %u heads x %u, top-k %u\n", "indexer:", hp->n_indexer_head, hp->indexer_head_dim,
           hp->indexer_top_k);
    printf("%-18s %u routed experts (%u used, %u shared), width %u, scale %g%s, SwiGLU clamp %g\n",
           "moe:", hp->n_expert, hp->n_expert_used, hp->n_expert_shared, hp->n_ff_exp,
           hp->expert_weight_scale, hp->expert_weights_norm ? " (renormalised)" : "",
           hp->swiglu_clamp[0]);
    print_experts("expert quant:", ds4_model_expert_quant_name(m), m->expert_gate_type,
                  m->expert_down_type);
    printf("%-18s %u streams, %u Sinkhorn iterations, eps %g\n", "hyper-connections:", hp->n_hc,
           hp->hc_sinkhorn_iter, hp->hc_eps);
    printf("%-18s base %g; compressed layers base %g, YaRN x%g from %llu (beta %g/%g)\n", "rope:",
           hp->rope_freq_base, hp->compress_rope_freq_base, hp->rope_scale_factor,
           (unsigned long long)hp->rope_orig_ctx, hp->yarn_beta_fast, hp->yarn_beta_slow);
    if (hp->context_length) printf("%-18s %llu\n", "trained context:", (unsigned long long)hp->context_length);
    printf("%-18s %llu\n", "tensors:", (unsigned long long)m->file.n_tensors);
    print_bytes("weights:", m->weight_bytes);
    char label[48];
    uint64_t kv = ds4_kv_bytes(hp, (uint64_t)ctx);
    snprintf(label, sizeof label, "KV at ctx %d:", ctx);
    print_bytes(label, kv);
    print_bytes("memory needed:", m->weight_bytes + kv);
}

int ds4_cli_info(const ds4_cli_options *o) {
    ds4_err err = {{0}};
    ds4_model m;
    if (ds4_model_open(&m, o->model_path, &err)) {
        fprintf(stderr, "ds4: %s\n", err.msg);
        return 1;
    }
    print_model(&m, o->model_path, o->ctx);
    int rc = 0;
    if (o->mtp_path) {
        ds4_mtp_model mtp;
        if (ds4_mtp_open(&mtp, o->mtp_path, &m.hp, &err)) {
            fprintf(stderr, "ds4: %s\n", err.msg);
            rc = 1;
        } else {
            printf("%-18s %s\n", "mtp:", o->mtp_path);
            print_bytes("mtp file size:", mtp.file.size);
            printf("%-18s %llu\n", "mtp tensors:", (unsigned long long)mtp.file.n_tensors);
            print_experts("mtp expert quant:",
                          ds4_expert_quant_name(mtp.expert_gate_type, mtp.expert_down_type),
                          mtp.expert_gate_type, mtp.expert_down_type);
            print_bytes("mtp weights:", mtp.weight_bytes);
            print_bytes("memory with mtp:", m.weight_bytes + mtp.weight_bytes + ds4_kv_bytes(&m.hp, (uint64_t)o->ctx));
            ds4_mtp_close(&mtp);
        }
    }
    ds4_model_close(&m);
    return rc;
}
