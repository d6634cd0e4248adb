/* cpu_pool.c — worker threads for the CPU backend (see cpu_pool.h).
 *
 * A run publishes (fn, ctx, n_tasks) and opens a claim word that holds the
 * run's generation in its high half and the next unclaimed task in its low
 * half. Anyone taking a task (workers and the caller alike) does a
 * compare-and-swap on that word, which succeeds only while the generation is
 * the one it saw and tasks are left; so the caller never waits for a worker
 * that has not yet woken up: it takes the remaining tasks itself and then
 * waits only for tasks that were actually claimed. That matters on an
 * oversubscribed machine, where a woken worker may get a CPU only after a
 * scheduler time slice: with the old "wait until every worker has checked
 * in" rule each run cost a slice, and decode collapsed below single-thread
 * speed. At the end of a run the word is closed (low half all ones) before
 * the next run's fields are written, so a worker that read an old word can
 * never claim a task of the next run with the previous run's descriptor.
 *
 * Waiting is adaptive. An idle worker spins for a short while (a decode step
 * issues runs back to back with little serial work between them, and a
 * sleeping worker takes tens of microseconds to wake), yielding the CPU
 * between rounds; after SPIN_SECONDS it sleeps on a futex, and the caller makes
 * the wake-up system call only when somebody sleeps. The caller waiting for
 * claimed tasks does the same on the count of finished tasks. */
#include "cpu_pool.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../../common/clock.h"

#define SPIN_SECONDS 50e-6       /* spin this long (50 µs) before sleeping */
#define CLOSED 0xffffffffu       /* low half of the claim word between runs */

struct cpu_pool {
    int n_threads;
    pthread_t *threads;
    /* the current run; written only while the claim word is closed */
    _Atomic(cpu_task_fn) fn;
    _Atomic(void *) ctx;
    atomic_uint n_tasks;
    _Atomic uint64_t claim; /* generation << 32 | next task (CLOSED between runs) */
    atomic_uint done;       /* tasks of this run finished by workers or the caller */
    /* futex words */
    atomic_uint wake;       /* generation of the latest run (or stop) */
    atomic_int sleepers;    /* workers asleep (or about to be) on wake */
    atomic_uint caller_asleep;
    atomic_int stop;
    uint32_t gen;           /* caller side: the generation of the last run */
};

typedef struct worker_arg {
    cpu_pool *pool;
    int id;
} worker_arg;

static void futex_wait(atomic_uint *addr, unsigned expected) {
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void futex_wake(atomic_uint *addr, int n) {
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spins until (*addr == value) == equal, or SPIN_SECONDS pass; true if the
 * condition came. Yields the CPU every few rounds so spinning threads do not
 * starve the thread that would change the value when cores are short. */
static bool spin_until(atomic_uint *addr, unsigned value, bool equal) {
    double t0 = 0;
    for (int round = 0;; round++) {
        for (int i = 0; i < 64; i++) {
            if ((atomic_load_explicit(addr, memory_order_acquire) == value) == equal) return true;
            cpu_relax();
        }
        if (round == 0) t0 = ds4_now();
        else if (ds4_now() - t0 > SPIN_SECONDS) return false;
        if (round % 4 == 3) sched_yield();
    }
}

/* Claims and runs tasks of generation gen until none are left. */
static void run_tasks(cpu_pool *p, uint32_t gen, int worker) {
    uint64_t w = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        if ((uint32_t)(w >> 32) != gen) return;
        uint32_t t = (uint32_t)w;
        if (t >= atomic_load_explicit(&p->n_tasks, memory_order_relaxed)) return;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &w, w + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        /* Task t of this run is ours: the run cannot end (nor its fields
         * change) before we count it done. */
        cpu_task_fn fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
        fn(atomic_load_explicit(&p->ctx, memory_order_relaxed), (int)t, worker);
        atomic_fetch_add(&p->done, 1);
        if (worker && atomic_load(&p->caller_asleep)) futex_wake(&p->done, 1);
        w = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
}

static void *worker_main(void *argp) {
    worker_arg *arg = argp;
    cpu_pool *p = arg->pool;
    int id = arg->id;
    free(arg);
    unsigned seen = 0; /* runs are numbered from 1 */
    for (;;) {
        if (!spin_until(&p->wake, seen, false)) {
            atomic_fetch_add(&p->sleepers, 1);
            while (atomic_load(&p->wake) == seen) futex_wait(&p->wake, seen);
            atomic_fetch_sub(&p->sleepers, 1);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = atomic_load_explicit(&p->wake, memory_order_acquire);
        run_tasks(p, seen, id);
    }
}

cpu_pool *cpu_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    cpu_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    atomic_init(&p->claim, (uint64_t)CLOSED);
    if (n_threads > 1) {
        p->threads = calloc((size_t)n_threads - 1, sizeof *p->threads);
        if (!p->threads) {
            free(p);
            return NULL;
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *arg = malloc(sizeof *arg);
            if (arg) {
                arg->pool = p;
                arg->id = i;
            }
            if (!arg || pthread_create(&p->threads[i - 1], NULL, worker_main, arg) != 0) {
                free(arg);
                p->n_threads = i; /* the ones started so far get stopped */
                cpu_pool_free(p);
                return NULL;
            }
        }
    }
    return p;
}

void cpu_pool_free(cpu_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->wake, 1);
    futex_wake(&p->wake, INT_MAX);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i - 1], NULL);
    free(p->threads);
    free(p);
}

int cpu_pool_threads(const cpu_pool *p) { return p->n_threads; }

void cpu_pool_run(cpu_pool *p, int n_tasks, cpu_task_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (p->n_threads == 1 || n_tasks == 1) {
        for (int t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    /* The claim word is closed here, so nobody reads these fields for a task. */
    uint32_t gen = ++p->gen;
    if (gen == 0) gen = ++p->gen; /* 0 is the workers' initial "seen" */
    atomic_store_explicit(&p->fn, fn, memory_order_relaxed);
    atomic_store_explicit(&p->ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&p->n_tasks, (unsigned)n_tasks, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->claim, (uint64_t)gen << 32, memory_order_release);
    atomic_store(&p->wake, gen);
    if (atomic_load(&p->sleepers) > 0) futex_wake(&p->wake, INT_MAX);

    run_tasks(p, gen, 0);
    /* Every task is claimed; wait for the ones workers are still running. */
    unsigned target = (unsigned)n_tasks, d;
    if (!spin_until(&p->done, target, true)) {
        atomic_store(&p->caller_asleep, 1);
        while ((d = atomic_load(&p->done)) != target) futex_wait(&p->done, d);
        atomic_store(&p->caller_asleep, 0);
    }
    atomic_store_explicit(&p->claim, (uint64_t)gen << 32 | CLOSED, memory_order_release);
}

int cpu_default_threads(void) {
    const char *env = getenv("DS4_THREADS");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end == 0 && v > 0 && v <= 1024) return (int)v;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)(n > 1024 ? 1024 : n) : 1;
}
