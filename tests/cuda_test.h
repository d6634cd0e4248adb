/* cuda_test.h — the frame of a CUDA test program (test_cuda_forward.c,
 * test_cuda_verify.c, test_cuda_mtp.c): with DS4_CUDA (`make cuda`) the
 * backend's header and top1();
 * in the plain build, which compiles these tests too, a main() that skips.
 * Include after testutil.h; the test's own code goes under #ifdef DS4_CUDA. */
#ifndef DS4_CUDA_TEST_H
#define DS4_CUDA_TEST_H

#ifdef DS4_CUDA
#include <math.h>

#include "../src/backend/cuda/cuda_engine.h"

/* The index of the largest of x[0..n) (the first of equals) and, in
 * *margin, how far it leads the next largest. */
static inline int top1(const float *x, int n, float *margin) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    float second = -INFINITY;
    for (int i = 0; i < n; i++)
        if (i != b && x[i] > second) second = x[i];
    *margin = x[b] - second;
    return b;
}
#else
int main(void) {
    (void)test_checks_;
    (void)test_failures_;
    TEST_SKIP("built without CUDA (make cuda builds this test)");
}
#endif

#endif
