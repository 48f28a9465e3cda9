/* SAIL C runtime: a small persistent thread pool (pthreads, C11 atomics).
 *
 * A pool of T threads is the calling thread plus T - 1 workers created once. A job is a function
 * and a number of parts; sail_pool_run_parts calls the function once for every part and returns
 * when all have finished, so one job costs a wake-up, not a thread creation (which would be a
 * large part of a 0.5 ms GEMV).
 *
 * Parts are claimed, lowest first, by whichever thread is free: the caller too, which keeps
 * claiming until none are left. A worker that is asleep, or not on a core because the machine
 * is shared, costs the job nothing: the caller (and the other workers) run its parts. The
 * caller waits only for parts that a worker has claimed and not yet finished, so a job cut into
 * a few parts per thread loses at most about one part's time to a worker that is descheduled in
 * the middle of one. (A pool whose threads each own a fixed share waits for every thread to be
 * scheduled: on a machine with more runnable threads than cores, a scheduler time slice per job.)
 *
 * Waiting is bounded spinning, then sleeping: an idle worker spins for SAIL_POOL_SPIN_US
 * microseconds (the gap between the kernels of one token is shorter), then sleeps on a
 * condition variable; the caller waiting for a claimed part does the same. So a pool left idle,
 * or one whose machine is busy, does not hold a core.
 *
 * One job at a time per pool (calls on one pool from several threads must be serialized by the
 * caller); independent pools may run concurrently.
 */
#ifndef SAIL_THREADS_H
#define SAIL_THREADS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sail_pool sail_pool;

/* fn(ctx, part, n_parts) runs once for each part = 0 .. n_parts - 1, on some thread of the pool.
 * A part does not name a thread (one thread may run several parts, in increasing order); data
 * private to a part is indexed by part. */
typedef void (*sail_pool_fn)(void *ctx, int part, int n_parts);

/* A pool of `threads` threads (1..SAIL_POOL_MAX_THREADS), or NULL if out of range or out of
 * resources. A pool of 1 thread runs everything on the caller. */
sail_pool *sail_pool_create(int threads);
void sail_pool_destroy(sail_pool *pool);
/* Number of threads; 1 for NULL. */
int sail_pool_threads(const sail_pool *pool);
/* Run fn for parts 0 .. n_parts - 1 on the pool's threads (only the caller for NULL) and wait
 * for all; nothing for n_parts < 1. */
void sail_pool_run_parts(sail_pool *pool, sail_pool_fn fn, void *ctx, int n_parts);
/* sail_pool_run_parts with one part per thread. */
void sail_pool_run(sail_pool *pool, sail_pool_fn fn, void *ctx);

/* Parts to cut a job of `items` equal items into: up to SAIL_POOL_PARTS_PER_THREAD per thread
 * (so a descheduled worker holds up little), at least `min_items` items per part, and at most
 * `items`; 1 for a NULL pool. */
int sail_pool_parts(const sail_pool *pool, long items, long min_items);

#define SAIL_POOL_MAX_THREADS 256
#define SAIL_POOL_PARTS_PER_THREAD 4
/* Microseconds an idle thread spins before it sleeps (see above). */
#ifndef SAIL_POOL_SPIN_US
#define SAIL_POOL_SPIN_US 200
#endif

#ifdef __cplusplus
}
#endif

#endif /* SAIL_THREADS_H */
