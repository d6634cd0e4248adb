/* cuda_synth.cuh — synthetic weights generated in device memory: the
 * tensors a synthetic model image leaves out (ds4_synth_image_build) are
 * made by synth_fill.h's counter-based generator, one 64-bit word per
 * thread, so they never exist on the host and equal, byte for byte, what
 * the host would have generated. Internal to src/backend/cuda. */
#ifndef DS4_CUDA_SYNTH_CUH
#define DS4_CUDA_SYNTH_CUH

#include <cuda_runtime.h>

extern "C" {
#include "../../common/error.h"
#include "../../model/synth_fill.h"
}

/* Generates f's bytes at dst (8-byte aligned, with room for whole words:
 * the last word is written in full) on stream st. */
int ds4_cuda_synth_fill(void *dst, const ds4_synth_fill *f, cudaStream_t st, ds4_err *err);

#endif
