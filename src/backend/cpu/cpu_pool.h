/* cpu_pool.h — a fixed set of worker threads that run numbered tasks.
 *
 * cpu_pool_run(pool, n_tasks, fn, ctx) calls fn(ctx, task, worker) once for
 * every task in [0, n_tasks) and returns when all are done; the calling
 * thread works too (it is worker 0). Tasks are handed out through an atomic
 * counter, so which worker runs a task varies, but each task is one unit of
 * work: callers make every output element the product of exactly one task,
 * which keeps results bit-identical for any thread count. `worker` (0 ..
 * n_threads-1) indexes per-worker scratch. One run at a time per pool. */
#ifndef DS4_CPU_POOL_H
#define DS4_CPU_POOL_H

typedef struct cpu_pool cpu_pool;
typedef void (*cpu_task_fn)(void *ctx, int task, int worker);

/* n_threads >= 1 (1 = everything on the calling thread). NULL on failure. */
cpu_pool *cpu_pool_new(int n_threads);
void cpu_pool_free(cpu_pool *p);
int cpu_pool_threads(const cpu_pool *p);
void cpu_pool_run(cpu_pool *p, int n_tasks, cpu_task_fn fn, void *ctx);

/* DS4_THREADS from the environment if set and positive, else online cores. */
int cpu_default_threads(void);

#endif
