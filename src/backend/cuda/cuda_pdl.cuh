/* cuda_pdl.cuh — programmatic dependent launch (sm_90+) for the decode
 * step's kernels, shared by cuda_kernels.cu and cuda_engine.cu, and their
 * launches in thread-block clusters (cluster_places: whether one fits).
 *
 * A kernel launched with the programmatic-serialization attribute may start
 * while the kernel before it on the stream is still running; it must call
 * pdl_wait() before it reads anything an earlier kernel wrote or writes
 * anything an earlier kernel may still read (pdl_wait returns once the
 * previous grid has finished and its memory is visible; earlier grids
 * finished before that one passed its own pdl_wait). Work that touches
 * only constant data (weights) goes before it: the step's matrix kernels
 * request their first weight tiles first. pdl_trigger() lets the next
 * kernel be scheduled as soon as every block of this one has started.
 * Both are no-ops below sm_90 and when the kernel was launched without the
 * attribute (graph capture keeps the attribute as a programmatic edge). */
#ifndef DS4_CUDA_PDL_CUH
#define DS4_CUDA_PDL_CUH

#include <cuda_runtime.h>
#include <utility>

#include "cuda_timeline.cuh"

__device__ __forceinline__ void pdl_wait() {
    tl_arrive();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
    tl_stamp();
}

__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}

/* A finer dependency than pdl_wait, for a small output that a kernel
 * writes long before it ends (k_route's expert ids): the writer, after
 * its stores, publishes the step's serial (host-written, distinct every
 * step) with stamp_publish; a later kernel's block waits for that output
 * alone with stamp_await and reads it with loads that bypass L1 (__ldcg)
 * before its own pdl_wait. It cannot wait forever: under programmatic
 * launch a kernel starts only once every block of the one before it has
 * started, so the writing block is running by then (without it, it has
 * finished). */
__device__ __forceinline__ void stamp_publish(uint32_t *stamp, uint32_t serial) {
    asm volatile("st.release.gpu.global.u32 [%0], %1;\n" ::"l"(stamp), "r"(serial) : "memory");
}

__device__ __forceinline__ void stamp_await(const uint32_t *stamp, uint32_t serial) {
    if (threadIdx.x == 0) {
        uint32_t v;
        do asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(stamp) : "memory");
        while (v != serial);
    }
    __syncthreads();
}

/* kernel<<<grid, block, smem, st>>>(args...), with programmatic
 * serialization after the previous kernel when pdl is set; cluster > 0:
 * the grid's blocks in clusters of that many (sm_90+). The launch alone:
 * the step's kernels go through pdl_launch_cluster, which also labels
 * them for the timeline build; tests call this. */
template <typename... KArgs, typename... Args>
static cudaError_t launch_with(bool pdl, int cluster, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                               cudaStream_t st, Args &&...args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cudaLaunchAttribute attr[2];
    int n = 0;
    if (pdl) {
        attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[n++].val.programmaticStreamSerializationAllowed = 1;
    }
    if (cluster > 0) {
        attr[n].id = cudaLaunchAttributeClusterDimension;
        attr[n].val.clusterDim.x = (unsigned)cluster;
        attr[n].val.clusterDim.y = 1;
        attr[n++].val.clusterDim.z = 1;
    }
    cfg.attrs = attr;
    cfg.numAttrs = n;
    return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

template <typename... KArgs, typename... Args>
static cudaError_t pdl_launch_cluster(bool pdl, int cluster, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                                      size_t smem, cudaStream_t st, Args &&...args) {
    ds4_cuda_tl_label((const void *)kernel);
    return launch_with(pdl, cluster, kernel, grid, block, smem, st, std::forward<Args>(args)...);
}

/* Whether the device can place one cluster of `blocks` blocks of kernel
 * (threads and dynamic shared memory each): beyond the portable 8 the
 * kernel is first let use non-portable sizes (Hopper allows 16). A
 * refusal is no error: the caller takes its grid form. */
template <typename... KArgs>
static bool cluster_places(void (*kernel)(KArgs...), int blocks, int threads, size_t smem) {
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr = {};
    cfg.gridDim = blocks;
    cfg.blockDim = threads;
    cfg.dynamicSmemBytes = smem;
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = (unsigned)blocks;
    attr.val.clusterDim.y = attr.val.clusterDim.z = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    int clusters = 0;
    if ((blocks > 8 && cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) != cudaSuccess) ||
        cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess)
        clusters = 0;
    cudaGetLastError();
    return clusters > 0;
}

template <typename... KArgs, typename... Args>
static cudaError_t pdl_launch(bool pdl, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st,
                              Args &&...args) {
    return pdl_launch_cluster(pdl, 0, kernel, grid, block, smem, st, std::forward<Args>(args)...);
}

#endif
