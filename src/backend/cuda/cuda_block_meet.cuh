/* cuda_block_meet.cuh — where the blocks of one launch meet: a thread-block
 * cluster's barrier and distributed shared memory (sm_90+), and a grid
 * barrier through a counter for grids whose blocks are all resident. Shared
 * by the indexer's grid top-k (cuda_topk_grid.cuh) and the HC kernel
 * (cuda_step_ops.cuh). Below sm_90 the cluster helpers compile to nothing:
 * their callers take the grid form there. */
#ifndef DS4_CUDA_BLOCK_MEET_CUH
#define DS4_CUDA_BLOCK_MEET_CUH

#include <cooperative_groups.h>

__device__ __forceinline__ void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    cooperative_groups::this_cluster().sync();
#endif
}

/* The two halves of cluster_sync: a block's shared memory may be written
 * by the others only once the block runs, so a kernel that stores into
 * other blocks arrives (relaxed: nothing of its own to publish) when it
 * starts and waits before its first remote store. */
__device__ __forceinline__ void cluster_arrive_relaxed() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void cluster_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory");
#endif
}

/* p in the shared memory of the cluster's block `rank`. */
template <typename T>
__device__ __forceinline__ T *cluster_at(T *p, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
    return p;
#endif
}

/* Barrier of a grid of n blocks, all resident, through a counter that only
 * grows (zeroed once; n a power of two, so it divides 2^32 and wrapping is
 * harmless): the n arrivals at one barrier take the tickets of one aligned
 * group, and each block waits until the count reaches the group's end.
 * Writes before it are visible after it to loads that bypass L1 (__ldcg). */
__device__ __forceinline__ void grid_ticket_sync(unsigned *count, unsigned n) {
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        const unsigned t = atomicAdd(count, 1u), end = t - t % n + n;
        unsigned v;
        do asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(count) : "memory");
        while ((int)(v - end) < 0);
    }
    __syncthreads();
}

#endif
