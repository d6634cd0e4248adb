/* cuda_timeline.cuh — a build option for finding the decode step's
 * critical path: `make cuda CUDA_TIMELINE=1` (never in a normal build).
 *
 * Every kernel of the step calls pdl_wait(); with the option, thread 0 of
 * block (0,0) stamps %globaltimer as it arrives there (tl_arrive) and again
 * once released (tl_stamp), into one device buffer shared by
 * the translation units that bind it (cuda_kernels.cu, cuda_engine.cu),
 * and pdl_launch() hands each kernel to ds4_cuda_tl_label() while the
 * step is captured, so the i-th stamp of a step belongs to the i-th
 * kernel. The gap from one kernel's release to the next one's is that
 * kernel's share of the critical path; the next kernel's arrival against
 * that release says whether its first block was resident in time to
 * prefetch (cuda_engine.cu prints the table;
 * notes/status.md, fourth session, tells how it was used). */
#ifndef DS4_CUDA_TIMELINE_CUH
#define DS4_CUDA_TIMELINE_CUH

#include <cuda_runtime.h>

#ifdef DS4_CUDA_TIMELINE
enum { TL_MAX = 1 << 16 };
struct tl_buf {
    unsigned n, na;
    unsigned long long t[TL_MAX], a[TL_MAX]; /* releases, arrivals */
};

/* This translation unit's view of the buffer (NULL: nothing recorded). */
static __device__ tl_buf *tl_dev;

/* %globaltimer into series t (count n), by thread 0 of block (0,0). */
__device__ __forceinline__ void tl_record(unsigned *n, unsigned long long *t) {
    if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
        unsigned long long now;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
        t[atomicAdd(n, 1u) % TL_MAX] = now;
    }
}

__device__ __forceinline__ void tl_stamp() { /* released from pdl_wait */
    if (tl_buf *b = tl_dev) tl_record(&b->n, b->t);
}

__device__ __forceinline__ void tl_arrive() { /* arrived at pdl_wait */
    if (tl_buf *b = tl_dev) tl_record(&b->na, b->a);
}

static inline cudaError_t tl_bind_here(tl_buf *b) { return cudaMemcpyToSymbol(tl_dev, &b, sizeof b); }

extern "C" {
void ds4_cuda_tl_label(const void *kernel);      /* while recording: the next kernel of the step */
void ds4_cuda_tl_record(int on);                 /* start (clears) or stop recording labels */
size_t ds4_cuda_tl_labels(const void *const **); /* the recorded kernels */
cudaError_t ds4_cuda_tl_bind_kernels(tl_buf *b); /* cuda_kernels.cu's view */
}
#else
__device__ __forceinline__ void tl_stamp() {}
__device__ __forceinline__ void tl_arrive() {}
static inline void ds4_cuda_tl_label(const void *) {}
#endif

#endif
