/* SAIL C runtime: the thread pool of sail_threads.h.
 *
 * A job is published through `generation`: odd while the caller rewrites the job (fn, ctx,
 * n_parts, next), even once it is published. A worker announces itself in `active` before it
 * reads the job, then checks that the generation is still the one it saw; the caller makes the
 * generation odd before it waits for `active` to drain and rewrites the job. With sequentially
 * consistent atomics either the caller sees the worker's announcement (and waits for it) or the
 * worker sees the odd generation (and backs off without reading the job), so no worker reads a
 * job being rewritten. A worker that saw a job late finds every part claimed and dereferences
 * nothing. Parts are claimed with one fetch-add on `next`.
 *
 * Sleeping uses the same two-sided check: a sleeper counts itself (under the mutex) before it
 * rechecks the condition, the waker changes the condition before it reads the count and, only
 * if someone sleeps, takes the mutex and broadcasts; so the fast path makes no system call.
 */
#define _POSIX_C_SOURCE 200809L /* pthreads, clock_gettime */
#include "sail_threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SAIL_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define SAIL_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define SAIL_CPU_RELAX() ((void)0)
#endif

struct sail_pool {
    int threads;
    pthread_t *workers;
    pthread_mutex_t mutex;
    pthread_cond_t wake; /* workers: a new generation */
    pthread_cond_t done; /* the caller: active reached 0 */
    atomic_uint generation;
    atomic_int active;         /* workers between announcing themselves and finishing a job */
    atomic_int next;           /* the next part to claim */
    atomic_int sleepers;       /* workers asleep on `wake` */
    atomic_int caller_waiting; /* the caller asleep on `done` */
    atomic_int stop;
    sail_pool_fn fn; /* the job: valid while the generation is even */
    void *ctx;
    int n_parts;
};

typedef struct worker_arg {
    sail_pool *pool;
} worker_arg;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Spin until ready(pool, arg) or SAIL_POOL_SPIN_US have passed; 1 if ready. The clock is read
 * every 64 pauses (a pause is 10-150 cycles). */
static int spin_until(sail_pool *pool, int (*ready)(sail_pool *, unsigned), unsigned arg) {
    long long deadline = -1;
    for (unsigned i = 1;; ++i) {
        if (ready(pool, arg)) return 1;
        SAIL_CPU_RELAX();
        if (i % 64 == 0) {
            const long long t = now_ns();
            if (deadline < 0)
                deadline = t + (long long)SAIL_POOL_SPIN_US * 1000;
            else if (t >= deadline)
                return 0;
        }
    }
}

/* A published generation other than `seen`. */
static int new_job(sail_pool *pool, unsigned seen) {
    const unsigned g = atomic_load(&pool->generation);
    return g != seen && !(g & 1u);
}

static int drained(sail_pool *pool, unsigned unused) {
    (void)unused;
    return atomic_load(&pool->active) == 0;
}

/* Claim and run parts of the current job until none are left. */
static void run_parts(sail_pool *pool) {
    const int n = pool->n_parts;
    for (int part; (part = atomic_fetch_add_explicit(&pool->next, 1, memory_order_relaxed)) < n;)
        pool->fn(pool->ctx, part, n);
}

/* A worker leaves a job (finished or backed off): the last one wakes a sleeping caller. */
static void leave(sail_pool *pool) {
    if (atomic_fetch_sub(&pool->active, 1) == 1 && atomic_load(&pool->caller_waiting)) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_signal(&pool->done);
        pthread_mutex_unlock(&pool->mutex);
    }
}

/* The caller: wait until no worker is inside a job. */
static void wait_drained(sail_pool *pool) {
    if (spin_until(pool, drained, 0)) return;
    pthread_mutex_lock(&pool->mutex);
    atomic_store(&pool->caller_waiting, 1);
    while (atomic_load(&pool->active) != 0) pthread_cond_wait(&pool->done, &pool->mutex);
    atomic_store(&pool->caller_waiting, 0);
    pthread_mutex_unlock(&pool->mutex);
}

static void *worker_main(void *arg_) {
    worker_arg *arg = (worker_arg *)arg_;
    sail_pool *pool = arg->pool;
    unsigned seen = 0;
    free(arg);
    for (;;) {
        if (!spin_until(pool, new_job, seen)) {
            pthread_mutex_lock(&pool->mutex);
            atomic_fetch_add(&pool->sleepers, 1);
            while (!new_job(pool, seen)) pthread_cond_wait(&pool->wake, &pool->mutex);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->mutex);
        }
        const unsigned g = atomic_load(&pool->generation);
        if (g & 1u) continue; /* being rewritten since new_job: wait for it */
        atomic_fetch_add(&pool->active, 1);
        if (atomic_load(&pool->generation) != g) { /* rewritten meanwhile: back off */
            leave(pool);
            continue;
        }
        seen = g;
        if (atomic_load(&pool->stop)) {
            leave(pool);
            return NULL;
        }
        run_parts(pool);
        leave(pool);
    }
}

/* Make the job (fn, ctx, n_parts) current and wake the workers. */
static void publish(sail_pool *pool, sail_pool_fn fn, void *ctx, int n_parts) {
    const unsigned g = atomic_load_explicit(&pool->generation, memory_order_relaxed);
    atomic_store(&pool->generation, g + 1u); /* odd: workers keep out */
    wait_drained(pool); /* a worker that saw the previous job late */
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n_parts = n_parts;
    atomic_store_explicit(&pool->next, 0, memory_order_relaxed);
    atomic_store(&pool->generation, g + 2u);
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }
}

sail_pool *sail_pool_create(int threads) {
    if (threads < 1 || threads > SAIL_POOL_MAX_THREADS) return NULL;
    sail_pool *pool = (sail_pool *)calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->threads = threads;
    atomic_init(&pool->generation, 0u);
    atomic_init(&pool->active, 0);
    atomic_init(&pool->next, 0);
    atomic_init(&pool->sleepers, 0);
    atomic_init(&pool->caller_waiting, 0);
    atomic_init(&pool->stop, 0);
    if (threads == 1) return pool;
    pool->workers = (pthread_t *)calloc((size_t)threads - 1, sizeof(pthread_t));
    if (!pool->workers || pthread_mutex_init(&pool->mutex, NULL) != 0) {
        free(pool->workers);
        free(pool);
        return NULL;
    }
    if (pthread_cond_init(&pool->wake, NULL) != 0) {
        pthread_mutex_destroy(&pool->mutex);
        free(pool->workers);
        free(pool);
        return NULL;
    }
    if (pthread_cond_init(&pool->done, NULL) != 0) {
        pthread_cond_destroy(&pool->wake);
        pthread_mutex_destroy(&pool->mutex);
        free(pool->workers);
        free(pool);
        return NULL;
    }
    for (int i = 1; i < threads; ++i) {
        worker_arg *arg = (worker_arg *)malloc(sizeof *arg);
        if (arg) arg->pool = pool;
        if (!arg || pthread_create(&pool->workers[i - 1], NULL, worker_main, arg) != 0) {
            free(arg);
            pool->threads = i; /* destroy joins the i - 1 workers started so far */
            sail_pool_destroy(pool);
            return NULL;
        }
    }
    return pool;
}

void sail_pool_destroy(sail_pool *pool) {
    if (!pool) return;
    if (pool->threads > 1) {
        atomic_store(&pool->stop, 1);
        publish(pool, NULL, NULL, 0);
        pthread_mutex_lock(&pool->mutex); /* wake sleepers that counted themselves late */
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
        for (int i = 1; i < pool->threads; ++i) pthread_join(pool->workers[i - 1], NULL);
        pthread_cond_destroy(&pool->done);
        pthread_cond_destroy(&pool->wake);
        pthread_mutex_destroy(&pool->mutex);
    }
    free(pool->workers);
    free(pool);
}

int sail_pool_threads(const sail_pool *pool) { return pool ? pool->threads : 1; }

int sail_pool_parts(const sail_pool *pool, long items, long min_items) {
    if (items < 1) return 1;
    if (min_items < 1) min_items = 1;
    long parts = (long)sail_pool_threads(pool) * (pool ? SAIL_POOL_PARTS_PER_THREAD : 1);
    if (parts > items / min_items) parts = items / min_items;
    return parts < 1 ? 1 : (int)parts;
}

void sail_pool_run_parts(sail_pool *pool, sail_pool_fn fn, void *ctx, int n_parts) {
    if (n_parts < 1) return;
    if (!pool || pool->threads == 1 || n_parts == 1) {
        for (int part = 0; part < n_parts; ++part) fn(ctx, part, n_parts);
        return;
    }
    publish(pool, fn, ctx, n_parts);
    run_parts(pool);
    wait_drained(pool);
}

void sail_pool_run(sail_pool *pool, sail_pool_fn fn, void *ctx) {
    sail_pool_run_parts(pool, fn, ctx, sail_pool_threads(pool));
}
