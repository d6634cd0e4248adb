/* convert.c — decodes checkpoint rows, re-encodes them and writes the GGUF.
 *
 * Element formats of the official checkpoint (hf-reference.md §4):
 *   F8_E4M3 (e4m3fn): sign, 4 exponent bits (bias 7), 3 mantissa bits, no
 *     infinities; exponent 0 is subnormal (m * 2^-9); 0x7f/0xff are NaN and
 *     decode to 0, as DeepSeek's own conversion does.
 *   F8_E8M0 scales: an unsigned exponent byte e meaning 2^(e-127); 0xff is
 *     NaN and refused.
 *   FP4 e2m1 codes: magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 with bit 3 the sign,
 *     two a byte (low nibble = even element), one E8M0 scale per 32 inputs.
 *   FP8 weights carry one scale per 128x128 block.
 * Each output tensor is produced while the GGUF is streamed out, its rows
 * spread over threads: decode a row to f32, check it is finite, encode it
 * with the library quantiser (model-spec §3). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../gguf/gguf.h"
#include "../model/synth.h"
#include "../quant/quant.h"
#include "convert_internal.h"
#include "hf_config.h"

/* ---- element decoding ---- */

static float e4m3_value(uint8_t b) {
    int e = (b >> 3) & 15, m = b & 7;
    if (e == 15 && m == 7) return 0.0f; /* the NaN codes 0x7f and 0xff */
    float v = e == 0 ? ldexpf((float)m, -9) : ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return b & 0x80 ? -v : v;
}

static float e2m1_value(uint8_t code) {
    static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    return code & 8 ? -mag[code & 7] : mag[code & 7];
}

static float load_f32(const uint8_t *p) {
    float v;
    memcpy(&v, p, 4);
    return v;
}

static uint16_t load_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

/* Element i of a scale tensor; false for an E8M0 NaN. */
static bool scale_value(const ds4_st_tensor *sc, uint64_t i, float *out) {
    const uint8_t *p = sc->data;
    switch (sc->dtype) {
    case DS4_ST_F8_E8M0:
        if (p[i] == 0xff) return false;
        *out = ldexpf(1.0f, (int)p[i] - 127);
        return true;
    case DS4_ST_F32: *out = load_f32(p + 4 * i); return true;
    case DS4_ST_BF16: *out = ds4_bf16_to_f32(load_u16(p + 2 * i)); return true;
    case DS4_ST_F16: *out = ds4_f16_to_f32(load_u16(p + 2 * i)); return true;
    default: return false;
    }
}

static void decode_plain(const ds4_st_tensor *t, uint64_t first, uint64_t n, float *out) {
    const uint8_t *p = t->data + first * ds4_st_dtype_size(t->dtype);
    for (uint64_t i = 0; i < n; i++) {
        switch (t->dtype) {
        case DS4_ST_F32: out[i] = load_f32(p + 4 * i); break;
        case DS4_ST_F16: out[i] = ds4_f16_to_f32(load_u16(p + 2 * i)); break;
        case DS4_ST_BF16: out[i] = ds4_bf16_to_f32(load_u16(p + 2 * i)); break;
        case DS4_ST_F64: {
            double d;
            memcpy(&d, p + 8 * i, 8);
            out[i] = (float)d;
            break;
        }
        case DS4_ST_F8_E4M3: out[i] = e4m3_value(p[i]); break;
        default: out[i] = NAN; break; /* the plan admits no other dtype */
        }
    }
}

bool convert_decode_row(const src_ref *s, uint64_t row, float *out, ds4_err *err) {
    const uint64_t cols = s->cols;
    if (row >= s->rows) {
        ds4_fail(err, "%s: row %llu out of range", s->t->name, (unsigned long long)row);
        return false;
    }
    switch (s->enc) {
    case ENC_PLAIN:
        decode_plain(s->t, row * cols, cols, out);
        break;
    case ENC_FP8_BLOCK: {
        decode_plain(s->t, row * cols, cols, out);
        uint64_t sc_cols = (cols + 127) / 128, base = (row / 128) * sc_cols;
        for (uint64_t b = 0; b < sc_cols; b++) {
            float k;
            if (!scale_value(s->scale, base + b, &k)) {
                ds4_fail(err, "%s: scale block (%llu,%llu) is NaN", s->scale->name,
                         (unsigned long long)(row / 128), (unsigned long long)b);
                return false;
            }
            uint64_t end = (b + 1) * 128 < cols ? (b + 1) * 128 : cols;
            for (uint64_t c = b * 128; c < end; c++) out[c] *= k;
        }
        break;
    }
    case ENC_FP4: {
        const uint8_t *p = s->t->data + row * (cols / 2);
        for (uint64_t g = 0; g < cols / 32; g++) {
            float k;
            if (!scale_value(s->scale, row * (cols / 32) + g, &k)) {
                ds4_fail(err, "%s: scale (%llu,%llu) is NaN", s->scale->name,
                         (unsigned long long)row, (unsigned long long)g);
                return false;
            }
            for (uint64_t j = 16 * g; j < 16 * (g + 1); j++) {
                out[2 * j] = e2m1_value(p[j] & 15) * k;
                out[2 * j + 1] = e2m1_value(p[j] >> 4) * k;
            }
        }
        break;
    }
    }
    for (uint64_t c = 0; c < cols; c++) {
        if (!isfinite(out[c])) {
            ds4_fail(err, "%s: row %llu, column %llu is not finite", s->t->name,
                     (unsigned long long)row, (unsigned long long)c);
            return false;
        }
    }
    return true;
}

/* ---- writing one tensor ---- */

/* Row rho of an output tensor: its source and the row within it. */
static const src_ref *row_source(const out_tensor *t, uint64_t rho, uint64_t *src_row) {
    uint64_t e = rho / t->ne[1], r = rho % t->ne[1];
    if (t->n_src > 1) {
        *src_row = r;
        return &t->src[e];
    }
    *src_row = e * t->src_stride + t->src_offset + r;
    return &t->src[0];
}

/* A share of one pass over a tensor: items [first, last) are rows when
 * encoding, matrices (ne[2] slices) when summing the importance columns. */
typedef struct pass_job {
    const out_tensor *t;
    bool summing;
    float *imat;  /* ne[2] x ne[0]: written when summing, read when encoding */
    uint8_t *dst;
    uint64_t row_bytes, first, last;
    pthread_mutex_t *lock;
    bool *failed;
    ds4_err *err;
} pass_job;

static bool sum_columns(const pass_job *j, float *row, ds4_err *err) {
    const out_tensor *t = j->t;
    for (uint64_t e = j->first; e < j->last; e++) {
        float *w = j->imat + e * t->ne[0];
        for (uint64_t r = 0; r < t->ne[1]; r++) {
            uint64_t src_row;
            const src_ref *s = row_source(t, e * t->ne[1] + r, &src_row);
            if (!convert_decode_row(s, src_row, row, err)) return false;
            for (uint64_t c = 0; c < t->ne[0]; c++) w[c] += row[c] * row[c];
        }
    }
    return true;
}

static bool encode_rows(const pass_job *j, float *row, ds4_err *err) {
    const out_tensor *t = j->t;
    for (uint64_t rho = j->first; rho < j->last; rho++) {
        uint64_t src_row;
        const src_ref *s = row_source(t, rho, &src_row);
        const float *imat = j->imat ? j->imat + (rho / t->ne[1]) * t->ne[0] : NULL;
        if (!convert_decode_row(s, src_row, row, err)) return false;
        if (ds4_quantize_row(t->type, row, j->dst + rho * j->row_bytes, t->ne[0], imat) != j->row_bytes) {
            ds4_fail(err, "%s: cannot encode as %s", t->name, ds4_type_name(t->type));
            return false;
        }
    }
    return true;
}

static void *run_job(void *arg) {
    pass_job *j = arg;
    ds4_err local = {{0}};
    float *row = malloc(j->t->ne[0] * sizeof *row);
    bool ok = row && (j->summing ? sum_columns(j, row, &local) : encode_rows(j, row, &local));
    if (!row) ds4_fail(&local, "%s: out of memory", j->t->name);
    free(row);
    if (!ok) {
        pthread_mutex_lock(j->lock);
        if (!*j->failed && j->err) *j->err = local;
        *j->failed = true;
        pthread_mutex_unlock(j->lock);
    }
    return NULL;
}

/* Splits n_items over the threads (one thread for small work). */
static int run_pass(pass_job proto, uint64_t n_items, uint64_t work) {
    const out_tensor *t = proto.t;
    long cores = t->threads > 0 ? t->threads : sysconf(_SC_NPROCESSORS_ONLN);
    uint64_t n = work < (1u << 18) || cores < 1 ? 1 : (uint64_t)cores;
    if (n > n_items) n = n_items ? n_items : 1;
    if (n > 256) n = 256;
    pthread_t tid[256];
    bool created[256] = {false};
    pass_job jobs[256];
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    bool failed = false;
    for (uint64_t i = 0; i < n; i++) {
        jobs[i] = proto;
        jobs[i].first = n_items * i / n;
        jobs[i].last = n_items * (i + 1) / n;
        jobs[i].lock = &lock;
        jobs[i].failed = &failed;
        created[i] = n > 1 && !pthread_create(&tid[i], NULL, run_job, &jobs[i]);
        if (!created[i]) run_job(&jobs[i]); /* one job, or no thread: do it here */
    }
    for (uint64_t i = 0; i < n; i++)
        if (created[i]) pthread_join(tid[i], NULL);
    return failed ? -1 : 0;
}

/* IQ2_XXS is searched under an importance weight per column. Without a
 * measured importance matrix, ds4's own converter uses the column's sum of
 * squares over the rows of the matrix (hf-reference.md §4); each expert of a
 * stacked tensor is its own matrix. */
static int fill_rows(const out_tensor *t, uint8_t *dst, uint64_t nbytes, ds4_err *err) {
    uint64_t rows = t->ne[1] * t->ne[2], row_bytes = ds4_type_row_bytes(t->type, t->ne[0]);
    if (!row_bytes || rows * row_bytes != nbytes)
        return ds4_fail(err, "%s: %llu bytes requested, %llu expected", t->name,
                        (unsigned long long)nbytes, (unsigned long long)(rows * row_bytes));
    pass_job job = {.t = t, .dst = dst, .row_bytes = row_bytes, .err = err};
    int rc = 0;
    if (t->type == DS4_TYPE_IQ2_XXS) {
        job.imat = calloc(t->ne[2] * t->ne[0], sizeof *job.imat);
        if (!job.imat) return ds4_fail(err, "%s: out of memory", t->name);
        job.summing = true;
        rc = run_pass(job, t->ne[2], rows * t->ne[0]);
        job.summing = false;
    }
    if (!rc) rc = run_pass(job, rows, rows * t->ne[0]);
    free(job.imat);
    return rc;
}

static int fill_tid2eid(const out_tensor *t, uint8_t *dst, uint64_t nbytes, ds4_err *err) {
    const ds4_st_tensor *s = t->src[0].t;
    uint64_t n = s->n_elements;
    if (nbytes != 4 * n) return ds4_fail(err, "%s: size mismatch", t->name);
    for (uint64_t i = 0; i < n; i++) {
        int64_t v;
        if (s->dtype == DS4_ST_I64) memcpy(&v, s->data + 8 * i, 8);
        else {
            int32_t w;
            memcpy(&w, s->data + 4 * i, 4);
            v = w;
        }
        if (v < 0 || v >= (int64_t)t->n_expert)
            return ds4_fail(err, "%s: token %llu routes to expert %lld, outside 0..%u", s->name,
                            (unsigned long long)(i / t->ne[0]), (long long)v, t->n_expert - 1);
        int32_t w = (int32_t)v;
        memcpy(dst + 4 * i, &w, 4);
    }
    return 0;
}

static int fill_tensor(void *ctx, void *dst, uint64_t nbytes, ds4_err *err) {
    const out_tensor *t = ctx;
    if (t->progress)
        fprintf(stderr, "[%u/%u] %-36s %-7s [%llu,%llu,%llu]\n", t->seq, t->count, t->name,
                ds4_type_name(t->type), (unsigned long long)t->ne[0],
                (unsigned long long)t->ne[1], (unsigned long long)t->ne[2]);
    return t->kind == OUT_TID2EID ? fill_tid2eid(t, dst, nbytes, err)
                                  : fill_rows(t, dst, nbytes, err);
}

/* ---- vocabulary ---- */

static int load_vocab(const ds4_convert_opts *o, uint32_t n_vocab, ds4_synth_vocab *v,
                      ds4_err *err) {
    if (!o->tokenizer_path) return ds4_synth_vocab_fallback(v, n_vocab, err);
    if (ds4_synth_vocab_from_json(v, o->tokenizer_path, n_vocab, err)) return -1;
    if (v->n_tokens != n_vocab) {
        ds4_fail(err, "%s has %u tokens, more than config.json's vocab_size %u",
                 o->tokenizer_path, v->n_tokens, n_vocab);
        ds4_synth_vocab_free(v);
        return -1;
    }
    return 0;
}

/* Tensors the plan did not use (mtp.* is counted, not listed). */
static void report_unused(const ds4_ckpt *ck, bool quiet) {
    uint64_t mtp = 0, other = 0;
    for (uint64_t i = 0; i < ck->n_entries; i++) {
        if (ck->entries[i].used) continue;
        if (!strncmp(ck->entries[i].t->name, "mtp.", 4)) {
            mtp++;
            continue;
        }
        if (other++ < 8) fprintf(stderr, "ds4-convert: warning: unused tensor %s\n", ck->entries[i].t->name);
    }
    if (other > 8) fprintf(stderr, "ds4-convert: warning: %llu more unused tensors\n",
                           (unsigned long long)(other - 8));
    if (mtp && !quiet)
        fprintf(stderr, "ds4-convert: %llu mtp.* tensors left out (the MTP block is a separate GGUF)\n",
                (unsigned long long)mtp);
}

int ds4_convert_set_types(ds4_convert_opts *o, const char *type, const char *experts,
                          ds4_err *err) {
    if (!ds4_weight_form_from_name(type, &o->weights))
        return ds4_fail(err, "--type %s: expected f32, f16 or q8", type);
    if (!ds4_expert_quant_types(experts, &o->expert_gate_type, &o->expert_down_type))
        return ds4_fail(err, "--experts %s: expected f32, f16, q2 or q4", experts);
    return 0;
}

int ds4_convert(const ds4_convert_opts *o, ds4_err *err) {
    ds4_hparams hp;
    ds4_ckpt ck = {0};
    ds4_synth_vocab vocab = {0};
    convert_plan plan = {.hp = &hp, .o = o, .ck = &ck};
    gguf_writer *w = NULL;
    int rc = -1;
    char cfg[4096];
    if ((size_t)snprintf(cfg, sizeof cfg, "%s/config.json", o->in_dir) >= sizeof cfg)
        return ds4_fail(err, "%s: path too long", o->in_dir);
    if (ds4_hf_config_read(cfg, &hp, err) || ds4_ckpt_open(&ck, o->in_dir, err)) goto out;
    if (convert_plan_build(&plan, err)) goto out;
    report_unused(&ck, o->quiet);
    if (load_vocab(o, hp.n_vocab, &vocab, err)) goto out;
    w = gguf_writer_new(0);
    if (!w) {
        ds4_fail(err, "out of memory");
        goto out;
    }
    ds4_model_meta_write(w, o->name ? o->name : "DeepSeek V4 (converted by ds4-convert)", &hp,
                         NULL, NULL);
    ds4_synth_vocab_write(w, &vocab, NULL, NULL);
    for (size_t i = 0; i < plan.n; i++) {
        out_tensor *t = &plan.t[i];
        t->seq = (uint32_t)i + 1;
        t->count = (uint32_t)plan.n;
        t->progress = !o->quiet;
        if (gguf_writer_add_tensor(w, t->name, t->type, t->n_dims, t->ne, NULL, fill_tensor, t, err))
            goto out;
    }
    if (gguf_writer_write(w, o->out_path, err)) goto out;
    if (!o->quiet)
        fprintf(stderr, "ds4-convert: wrote %s (%zu tensors, %s naming)\n", o->out_path, plan.n,
                plan.official ? "official" : "transformers");
    rc = 0;
out:
    gguf_writer_free(w);
    ds4_synth_vocab_free(&vocab);
    convert_plan_free(&plan);
    ds4_ckpt_close(&ck);
    return rc;
}
