/* SAIL C runtime: a small persistent thread pool (pthreads, C11 atomics).
 *
 * A pool of T threads is the calling thread plus T - 1 workers created once. sail_pool_run
 * hands the same function to every thread and returns when all have finished, so one call
 * costs a wake-up, not a thread creation (which would be a large part of a 0.5 ms GEMV).
 * Idle workers spin briefly (a token loop calls again within microseconds), then sleep on a
 * condition variable, so a pool left idle does not hold a core.
 *
 * One sail_pool_run at a time per pool; independent pools may run concurrently.
 */
#ifndef SAIL_THREADS_H
#define SAIL_THREADS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sail_pool sail_pool;

/* fn(ctx, thread, n_threads) runs once on each thread, thread = 0 .. n_threads - 1. */
typedef void (*sail_pool_fn)(void *ctx, int thread, int n_threads);

/* A pool of `threads` threads (1..SAIL_POOL_MAX_THREADS), or NULL if out of range or out of
 * resources. A pool of 1 thread runs everything on the caller. */
sail_pool *sail_pool_create(int threads);
void sail_pool_destroy(sail_pool *pool);
/* Number of threads; 1 for NULL. */
int sail_pool_threads(const sail_pool *pool);
/* Run fn on every thread of the pool (only the caller for NULL) and wait for all. */
void sail_pool_run(sail_pool *pool, sail_pool_fn fn, void *ctx);

#define SAIL_POOL_MAX_THREADS 256

#ifdef __cplusplus
}
#endif

#endif /* SAIL_THREADS_H */
