/* clock.c — monotonic, thread-CPU and process-CPU seconds (see clock.h). */
#include "clock.h"

#include <time.h>

static double seconds(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double ds4_now(void) { return seconds(CLOCK_MONOTONIC); }

double ds4_thread_cpu_now(void) { return seconds(CLOCK_THREAD_CPUTIME_ID); }

double ds4_process_cpu_now(void) { return seconds(CLOCK_PROCESS_CPUTIME_ID); }
