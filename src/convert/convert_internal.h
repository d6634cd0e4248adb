/* convert_internal.h — the conversion plan shared by convert_plan.c (which
 * tensors, from where, in which type) and convert.c (decoding, re-encoding,
 * writing).
 *
 * Every output tensor is a list of rows of ne[0] values. Row rho (0 <=
 * rho < ne[1]*ne[2]) of expert slice e = rho / ne[1], row r = rho % ne[1],
 * comes from:
 *   one source:  source row e*src_stride + src_offset + r (a plain copy has
 *                stride ne[1] and offset 0; transformers' fused gate_up
 *                has stride 2*I and offset 0 for gate, I for up);
 *   n sources:   row r of source e (the official per-expert tensors).
 * A source is viewed as a matrix of `rows` x `cols` logical values, cols
 * being its last dimension (unpacked for FP4). */
#ifndef DS4_CONVERT_INTERNAL_H
#define DS4_CONVERT_INTERNAL_H

#include "../model/model.h"
#include "checkpoint.h"
#include "convert.h"

typedef enum src_enc {
    ENC_PLAIN,     /* F32, F16, BF16, F64, or F8_E4M3 without a scale */
    ENC_FP8_BLOCK, /* F8_E4M3 times a 128x128 block scale */
    ENC_FP4,       /* I8/U8 pairs of e2m1 codes times a per-32 E8M0 scale */
} src_enc;

typedef struct src_ref {
    const ds4_st_tensor *t;
    const ds4_st_tensor *scale; /* FP8_BLOCK, FP4 */
    src_enc enc;
    uint64_t rows, cols;
} src_ref;

typedef enum out_kind { OUT_ROWS, OUT_TID2EID } out_kind;

typedef struct out_tensor {
    char name[96];
    uint32_t type;
    uint32_t n_dims;
    uint64_t ne[3];
    out_kind kind;
    uint32_t n_src;
    src_ref *src;
    uint64_t src_stride, src_offset;
    uint32_t n_expert; /* OUT_TID2EID: ids must be below it */
    int threads;
    uint32_t seq, count; /* progress: this is tensor seq of count */
    bool progress;
} out_tensor;

typedef struct convert_plan {
    const ds4_hparams *hp;
    const ds4_convert_opts *o;
    ds4_ckpt *ck;
    bool official; /* naming */
    out_tensor *t;
    size_t n, cap;
} convert_plan;

/* Builds the tensor list; every missing or mis-shaped source is an error. */
int convert_plan_build(convert_plan *p, ds4_err *err);
void convert_plan_free(convert_plan *p);

/* Decodes row `row` of a source into out[0..cols); false (with a message)
 * on a non-finite value or scale. */
bool convert_decode_row(const src_ref *s, uint64_t row, float *out, ds4_err *err);

#endif
