/* quant.h — the tensor element types ds4 reads and the arithmetic on them.
 *
 * Weight formats (model-spec.md §3): F32, F16, BF16, Q8_0, Q2_K, Q4_K,
 * IQ2_XXS, I32. Run-time activation formats: Q8_0 with an f32 scale
 * (`ds4_block_q8_0_act`, for Q8_0 weights) and Q8_K (for the K-quants and
 * IQ2_XXS). For each weight format there is a dequantiser, a dot product of
 * one weight row with a quantised activation row using the spec's integer
 * arithmetic, and (for Q8_0, Q2_K, Q4_K, IQ2_XXS) a quantiser.
 *
 * Dot products have a portable scalar path (the reference) and AVX2 and
 * AVX-512 paths picked once at run time from CPUID; ds4_quant_set_isa()
 * forces one (tests and the micro-benchmark compare them). All paths return
 * the same float, bit for bit (quant_dot.c defines the arithmetic).
 *
 * Files: quant_types.c (type table, f16/bf16), quant_tables.c (IQ2_XXS
 * constants), quant_rows.c (dequantisers, activation quantisers, Q8_0),
 * quant_kquant.c and quant_iq2.c (the searching quantisers), quant_dot.c
 * (scalar kernels, ISA choice, ds4_dot/ds4_matvec), quant_dot_avx2.c and
 * quant_dot_avx512.c, quant_dot_multi.c (one row × several activations).
 * Tests: tests/test_quant_{formats,dot,dot_multi,ggml}.c;
 * speed: tools/ds4-quant-bench.c. */
#ifndef DS4_QUANT_H
#define DS4_QUANT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ggml type ids, as stored in GGUF tensor infos. */
enum {
    DS4_TYPE_F32 = 0,
    DS4_TYPE_F16 = 1,
    DS4_TYPE_Q8_0 = 8,
    DS4_TYPE_Q2_K = 10,
    DS4_TYPE_Q4_K = 12,
    DS4_TYPE_Q8_K = 15,
    DS4_TYPE_IQ2_XXS = 16,
    DS4_TYPE_I32 = 26,
    DS4_TYPE_BF16 = 30,
};

#define DS4_QK8_0 32
#define DS4_QK_K 256

typedef struct { uint16_t d; int8_t qs[32]; } ds4_block_q8_0;                 /* 34 B */
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } ds4_block_q2_K; /* 84 B */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } ds4_block_q4_K; /* 144 B */
typedef struct { uint16_t d; uint16_t qs[32]; } ds4_block_iq2_xxs;            /* 66 B */
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } ds4_block_q8_K; /* 292 B */
/* Run-time Q8_0 activation block: the scale stays f32 (model-spec §3). */
typedef struct { float d; int8_t qs[32]; } ds4_block_q8_0_act;

typedef struct ds4_type_info {
    uint32_t id;
    const char *name;       /* "Q8_0", ... as ggml spells them */
    uint32_t block_elems;
    uint32_t block_bytes;
} ds4_type_info;

/* NULL for ids ds4 does not know. */
const ds4_type_info *ds4_type_info_get(uint32_t type);
const char *ds4_type_name(uint32_t type); /* "?" if unknown */
/* Bytes of n elements; n must be a multiple of the block size (else 0). */
uint64_t ds4_type_row_bytes(uint32_t type, uint64_t n);

/* IEEE conversions, round-to-nearest-even. */
float ds4_f16_to_f32(uint16_t h);
uint16_t ds4_f32_to_f16(float f);
float ds4_bf16_to_f32(uint16_t h);
uint16_t ds4_f32_to_bf16(float f);

/* Dequantises n elements (a multiple of the block size) of any weight type
 * (I32 converts to float; an unknown type writes zeros). Bit-identical to
 * ggml's dequantisers. */
void ds4_dequantize_row(uint32_t type, const void *src, float *dst, uint64_t n);

/* Quantises n floats to `type` (Q8_0, Q2_K, Q4_K, IQ2_XXS, F16, BF16, F32,
 * Q8_K). imatrix (n importance weights >= 0, may be NULL = all ones) steers
 * the Q2_K, Q4_K and IQ2_XXS searches, which minimise
 * sum_i imatrix_i * (x_i - dequant_i)^2. Q8_0 is bit-identical to ggml's
 * (roundf). Returns bytes written, 0 on unsupported type or an n that is not
 * a multiple of the block size. */
uint64_t ds4_quantize_row(uint32_t type, const float *src, void *dst, uint64_t n,
                          const float *imatrix);

/* Run-time activation quantisers (model-spec §3, exact rounding). */
void ds4_quantize_q8_0_act(const float *x, ds4_block_q8_0_act *y, uint64_t n);
void ds4_quantize_q8_K(const float *x, ds4_block_q8_K *y, uint64_t n);

/* Dot products of one weight row (n elements) with a quantised activation. */
float ds4_dot_q8_0(uint64_t n, const void *w, const ds4_block_q8_0_act *a);
float ds4_dot_q2_K(uint64_t n, const void *w, const ds4_block_q8_K *a);
float ds4_dot_q4_K(uint64_t n, const void *w, const ds4_block_q8_K *a);
float ds4_dot_iq2_xxs(uint64_t n, const void *w, const ds4_block_q8_K *a);
/* Plain-float weights with f32 activations: f32 products summed in 16
 * lanes, then a fixed halving tree (quant_dot.c). */
float ds4_dot_f16_f32(uint64_t n, const uint16_t *w, const float *x);
float ds4_dot_bf16_f32(uint64_t n, const uint16_t *w, const float *x);
float ds4_dot_f32(uint64_t n, const float *w, const float *x);

/* Type-generic forms for the forward pass. The activation of a weight type
 * is Q8_0-act blocks for Q8_0, Q8_K blocks for Q2_K/Q4_K/IQ2_XXS and plain
 * f32 for F32/F16/BF16. ds4_act_row_bytes() is 0 for other types or an n
 * that is not a multiple of the block; ds4_quantize_act() then returns
 * false. ds4_dot() returns 0 for a type without a dot product. */
uint64_t ds4_act_row_bytes(uint32_t wtype, uint64_t n);
bool ds4_quantize_act(uint32_t wtype, const float *x, void *act, uint64_t n);
float ds4_dot(uint32_t wtype, uint64_t n, const void *w, const void *act);
/* y[r] = row r of W (n_rows rows of n_in elements, n_in a multiple of the
 * block size, rows packed back to back) dotted with the quantised
 * activation act, for r < n_rows. Single-threaded: callers split rows. */
void ds4_matvec(uint32_t wtype, const void *w, uint64_t n_rows, uint64_t n_in, const void *act, float *y);
/* One weight row with n_act activation rows (each in the weight type's
 * activation format): out[k] = ds4_dot(wtype, n, w, acts[k]), bit for bit.
 * The row's blocks are decoded once per DS4_DOT_MULTI_MAX activations
 * (quant_dot_multi.c), which is what makes batched prefill fast. */
#define DS4_DOT_MULTI_MAX 4
void ds4_dot_multi(uint32_t wtype, uint64_t n, const void *w, const void *const *acts, int n_act, float *out);

/* Every ISA computes bit-identical dot products (integer block sums are
 * exact; the float steps are the same operations in the same order), so
 * the choice only changes speed. */
typedef enum ds4_isa { DS4_ISA_SCALAR = 0, DS4_ISA_AVX2 = 1, DS4_ISA_AVX512 = 2 } ds4_isa;
/* The best ISA this CPU supports (CPUID; scalar on non-x86 CPUs). */
ds4_isa ds4_quant_best_isa(void);
/* Forces the dot-product path; returns false if the CPU lacks it. */
bool ds4_quant_set_isa(ds4_isa isa);
ds4_isa ds4_quant_get_isa(void);
const char *ds4_isa_name(ds4_isa isa);

#endif
