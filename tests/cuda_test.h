/* cuda_test.h — the frame of a CUDA test program (test_cuda_forward.c,
 * test_cuda_verify.c): with DS4_CUDA (`make cuda`) the backend's header;
 * in the plain build, which compiles these tests too, a main() that skips.
 * Include after testutil.h; the test's own code goes under #ifdef DS4_CUDA. */
#ifndef DS4_CUDA_TEST_H
#define DS4_CUDA_TEST_H

#ifdef DS4_CUDA
#include "../src/backend/cuda/cuda_engine.h"
#else
int main(void) {
    (void)test_checks_;
    (void)test_failures_;
    TEST_SKIP("built without CUDA (make cuda builds this test)");
}
#endif

#endif
