/* cuda_synth.cu — the device side of synthetic weights (cuda_synth.cuh):
 * a grid-stride kernel writing ds4_synth_word() for every word of a
 * tensor. The arithmetic is synth_fill.h's, shared with the host. */
#include "cuda_synth.cuh"

__global__ static void k_synth_fill(unsigned long long *dst, ds4_synth_fill f, uint64_t words) {
    uint64_t stride = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t w = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; w < words; w += stride)
        dst[w] = ds4_synth_word(&f, w);
}

int ds4_cuda_synth_fill(void *dst, const ds4_synth_fill *f, cudaStream_t st, ds4_err *err) {
    if ((uintptr_t)dst % 8) return ds4_fail(err, "cuda: synthetic tensor destination is not 8-byte aligned");
    if (!ds4_synth_fill_type_ok(f->type)) return ds4_fail(err, "cuda: cannot generate tensors of type %u", f->type);
    uint64_t words = (f->nbytes + 7) / 8;
    if (!words) return 0;
    uint64_t blocks = (words + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    k_synth_fill<<<(unsigned)blocks, 256, 0, st>>>((unsigned long long *)dst, *f, words);
    cudaError_t c = cudaGetLastError();
    return c == cudaSuccess ? 0 : ds4_fail(err, "cuda: synthetic tensor fill: %s", cudaGetErrorString(c));
}
