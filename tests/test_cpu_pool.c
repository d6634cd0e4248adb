/* test_cpu_pool.c — the CPU worker pool (src/backend/cpu/cpu_pool.c).
 *
 * For pools of 1, 2, 3 and 8 threads (8 oversubscribes this machine, which
 * is the case the claim protocol exists for): thousands of runs back to
 * back with task counts from 1 to 300, some separated by pauses long enough
 * for the workers to go to sleep on the futex, so both the spinning and the
 * sleeping hand-offs are taken. After every run each task must have run
 * exactly once, with that run's context, and a worker id within range —
 * nothing of a run may happen after cpu_pool_run returns (the next run's
 * checks would see it). A pool is also created and freed without runs. */
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "../src/backend/cpu/cpu_pool.h"
#include "testutil.h"

enum { MAX_TASKS = 300 };

typedef struct run_ctx {
    int run;                      /* which run this context belongs to */
    int n_threads;
    atomic_int hits[MAX_TASKS];   /* times each task ran */
    atomic_int bad_worker;
    atomic_int late;              /* tasks that saw a finished run */
    atomic_int finished;
} run_ctx;

static void task(void *ctxp, int t, int worker) {
    run_ctx *c = ctxp;
    if (atomic_load(&c->finished)) atomic_fetch_add(&c->late, 1);
    if (worker < 0 || worker >= c->n_threads) atomic_fetch_add(&c->bad_worker, 1);
    atomic_fetch_add(&c->hits[t], 1);
    /* a little work, different per task, so tasks finish out of order */
    volatile unsigned x = (unsigned)t;
    for (int i = 0; i < (t % 7) * 50; i++) x = x * 1664525u + 1013904223u;
}

static void pause_us(long us) {
    struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

static void test_pool(int n_threads, int runs) {
    cpu_pool *p = cpu_pool_new(n_threads);
    CHECK(p != NULL, "pool of %d", n_threads);
    if (!p) return;
    CHECK(cpu_pool_threads(p) == n_threads, "threads %d", cpu_pool_threads(p));
    static run_ctx ctx[2]; /* alternate, so a stale worker would hit the other one */
    int errors = 0;
    for (int r = 0; r < runs && errors < 5; r++) {
        run_ctx *c = &ctx[r & 1];
        memset(c, 0, sizeof *c);
        c->run = r;
        c->n_threads = n_threads;
        int n = 1 + (int)((unsigned)r * 2654435761u % MAX_TASKS);
        if (r % 97 == 0) n = 0;
        cpu_pool_run(p, n, task, c);
        atomic_store(&c->finished, 1);
        int wrong = 0;
        for (int t = 0; t < MAX_TASKS; t++) wrong += atomic_load(&c->hits[t]) != (t < n ? 1 : 0);
        if (wrong || atomic_load(&c->bad_worker) || atomic_load(&c->late)) errors++;
        CHECK(wrong == 0, "threads %d run %d (%d tasks): %d tasks ran a wrong number of times", n_threads, r,
              n, wrong);
        CHECK(atomic_load(&c->bad_worker) == 0, "threads %d run %d: worker id out of range", n_threads, r);
        CHECK(atomic_load(&c->late) == 0, "threads %d run %d: a task ran after the run returned",
              n_threads, r);
        if (r % 500 == 250) pause_us(2000); /* longer than the spin: workers sleep */
    }
    /* a task that ran late (after its run returned) would show up here */
    pause_us(1000);
    CHECK(atomic_load(&ctx[0].late) == 0 && atomic_load(&ctx[1].late) == 0, "threads %d: late tasks",
          n_threads);
    cpu_pool_free(p);
}

int main(void) {
    cpu_pool_free(cpu_pool_new(4)); /* never used */
    test_pool(1, 500);
    test_pool(2, 3000);
    test_pool(3, 3000);
    test_pool(8, 1500);
    return TEST_DONE();
}
