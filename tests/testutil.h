/* testutil.h — tiny assertion helpers shared by the C tests.
 *
 * CHECK(cond, fmt, ...) records a failure with file:line and a message and
 * carries on; TEST_DONE() prints "name: N checks, M failed" and returns the
 * exit code the runner expects (0 pass, 1 fail). TEST_SKIP(msg) exits 77. */
#ifndef DS4_TESTUTIL_H
#define DS4_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>

static int test_checks_, test_failures_;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        test_checks_++;                                                         \
        if (!(cond)) {                                                          \
            test_failures_++;                                                   \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

#define TEST_SKIP(msg)                                                          \
    do {                                                                        \
        printf("skipped: %s\n", msg);                                          \
        exit(77);                                                               \
    } while (0)

#define TEST_DONE()                                                             \
    (printf("%s: %d checks, %d failed\n", __FILE__, test_checks_, test_failures_), \
     test_failures_ ? 1 : 0)

#endif
