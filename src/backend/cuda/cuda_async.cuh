/* cuda_async.cuh — 16- and 4-byte asynchronous global→shared copies (cp.async,
 * sm_80+) and their group waits, for the kernels that stage rows or weight
 * tiles in shared memory. */
#ifndef DS4_CUDA_ASYNC_CUH
#define DS4_CUDA_ASYNC_CUH

__device__ __forceinline__ void cp_async16(void *sdst, const void *gsrc) {
    unsigned s = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gsrc) : "memory");
}

/* 4 bytes (cached at all levels, as cp.async allows for sizes below 16). */
__device__ __forceinline__ void cp_async4(void *sdst, const void *gsrc) {
    unsigned s = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(gsrc) : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

/* Waits until at most N committed groups of this thread are still in flight. */
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

#endif
