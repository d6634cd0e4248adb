/* cpu_pool.c — worker threads for the CPU backend (see cpu_pool.h).
 *
 * A run publishes (fn, ctx, n_tasks) under a mutex and bumps a generation
 * counter; workers wake on a condition variable, take task numbers from an
 * atomic counter until none are left, and the last one to finish signals the
 * caller. Workers spin briefly on the generation before sleeping, because a
 * decode step issues many short runs back to back and a condvar wake-up per
 * run would cost more than the work; a worker that sees the new generation
 * while spinning starts without touching the mutex. */
#include "cpu_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define SPIN_ROUNDS 20000 /* pause instructions before sleeping: ~1 ms */

struct cpu_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    atomic_uint gen;  /* bumped once per run (and once to stop) */
    atomic_int stop;
    cpu_task_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next;    /* next task number to hand out */
    atomic_int running; /* workers (not the caller) still busy with this run */
};

typedef struct worker_arg {
    cpu_pool *pool;
    int id;
} worker_arg;

static void run_tasks(cpu_pool *p, int worker) {
    for (;;) {
        int t = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (t >= p->n_tasks) break;
        p->fn(p->ctx, t, worker);
    }
}

static void cpu_relax(int spins) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((spins & 1023) == 1023) sched_yield(); /* be fair on an oversubscribed machine */
}

static void *worker_main(void *argp) {
    worker_arg *arg = argp;
    cpu_pool *p = arg->pool;
    int id = arg->id;
    free(arg);
    unsigned seen = 0; /* the generation at creation: a run may start before we get here */
    for (;;) {
        /* Fast path: spin without the mutex, so a run wakes all workers at once. */
        unsigned g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen && spins < SPIN_ROUNDS)
            cpu_relax(spins++);
        if (g == seen) {
            pthread_mutex_lock(&p->mu);
            while ((g = atomic_load(&p->gen)) == seen) pthread_cond_wait(&p->wake, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) return NULL;
        seen = g;
        run_tasks(p, id);
        if (atomic_fetch_sub_explicit(&p->running, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

cpu_pool *cpu_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    cpu_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->next, 0);
    atomic_init(&p->running, 0);
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
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
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
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    atomic_store(&p->running, p->n_threads - 1);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    int spins = 0;
    while (atomic_load_explicit(&p->running, memory_order_acquire) > 0 && spins < SPIN_ROUNDS)
        cpu_relax(spins++);
    pthread_mutex_lock(&p->mu);
    while (atomic_load(&p->running) > 0) pthread_cond_wait(&p->done, &p->mu);
    pthread_mutex_unlock(&p->mu);
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
