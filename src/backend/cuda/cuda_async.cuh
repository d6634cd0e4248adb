/* cuda_async.cuh — 16- and 4-byte asynchronous global→shared copies (cp.async,
 * sm_80+) and their group waits, for the kernels that stage rows or weight
 * tiles in shared memory. */
#ifndef DS4_CUDA_ASYNC_CUH
#define DS4_CUDA_ASYNC_CUH

#include <stdint.h>

__device__ __forceinline__ void cp_async16(void *sdst, const void *gsrc) {
    unsigned s = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gsrc) : "memory");
}

/* 16 bytes that are read once a step (weights), marked evict-first in L2:
 * a decode step streams ~9 GB through a 50-60 MB L2, and plain copies
 * push out the small data the latency kernels read back (activations,
 * HC streams, KV rows), whose loads then go to DRAM behind the stream
 * (ds4-cuda-bench --contention: a chain of dependent L2 loads beside a
 * full-rate stream takes ~650 ns a link with the stream evict-first,
 * ~950 ns with it plain, 142 ns alone). */
__device__ __forceinline__ void cp_async16_once(void *sdst, const void *gsrc) {
    uint64_t pol;
    asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;\n" : "=l"(pol));
    unsigned s = (unsigned)__cvta_generic_to_shared(sdst);
    asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gsrc), "l"(pol)
                 : "memory");
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
