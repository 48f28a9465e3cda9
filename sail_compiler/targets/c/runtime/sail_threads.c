/* SAIL C runtime: the thread pool of sail_threads.h. */
#define _POSIX_C_SOURCE 200809L /* pthreads, sched_yield */
#include "sail_threads.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SAIL_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define SAIL_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define SAIL_CPU_RELAX() ((void)0)
#endif

/* Spin iterations (each a pause, ~10-100 cycles) before an idle worker sleeps: a few tens of
 * microseconds, longer than the gap between the GEMVs of one token, shorter than a person
 * notices. An assumption, not a measured optimum. */
#define SAIL_SPIN_ITERATIONS 20000

struct sail_pool {
    int threads;
    pthread_t *workers;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    atomic_uint generation; /* incremented once per job */
    atomic_int pending;     /* workers still running the current job */
    atomic_int stop;
    sail_pool_fn fn;        /* the current job, published by the generation increment */
    void *ctx;
};

typedef struct worker_arg {
    sail_pool *pool;
    int index;
} worker_arg;

static void *worker_main(void *arg_) {
    worker_arg *arg = (worker_arg *)arg_;
    sail_pool *pool = arg->pool;
    int index = arg->index;
    unsigned seen = 0;
    free(arg);
    for (;;) {
        unsigned gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        for (int i = 0; gen == seen && i < SAIL_SPIN_ITERATIONS; ++i) {
            SAIL_CPU_RELAX();
            gen = atomic_load_explicit(&pool->generation, memory_order_acquire);
        }
        if (gen == seen) {
            pthread_mutex_lock(&pool->mutex);
            while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&pool->wake, &pool->mutex);
            pthread_mutex_unlock(&pool->mutex);
        }
        seen = gen;
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) return NULL;
        pool->fn(pool->ctx, index, pool->threads);
        atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel);
    }
}

sail_pool *sail_pool_create(int threads) {
    if (threads < 1 || threads > SAIL_POOL_MAX_THREADS) return NULL;
    sail_pool *pool = (sail_pool *)calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->threads = threads;
    atomic_init(&pool->generation, 0u);
    atomic_init(&pool->pending, 0);
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
    for (int i = 1; i < threads; ++i) {
        worker_arg *arg = (worker_arg *)malloc(sizeof *arg);
        if (arg) {
            arg->pool = pool;
            arg->index = i;
        }
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
        atomic_store_explicit(&pool->stop, 1, memory_order_release);
        pthread_mutex_lock(&pool->mutex);
        atomic_fetch_add_explicit(&pool->generation, 1u, memory_order_acq_rel);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
        for (int i = 1; i < pool->threads; ++i) pthread_join(pool->workers[i - 1], NULL);
        pthread_cond_destroy(&pool->wake);
        pthread_mutex_destroy(&pool->mutex);
    }
    free(pool->workers);
    free(pool);
}

int sail_pool_threads(const sail_pool *pool) { return pool ? pool->threads : 1; }

void sail_pool_run(sail_pool *pool, sail_pool_fn fn, void *ctx) {
    if (!pool || pool->threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->ctx = ctx;
    atomic_store_explicit(&pool->pending, pool->threads - 1, memory_order_relaxed);
    /* The mutex orders the increment with a worker that is about to wait on the condition. */
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add_explicit(&pool->generation, 1u, memory_order_acq_rel);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    fn(ctx, 0, pool->threads);
    /* Spin, then yield: on an oversubscribed machine the workers we wait for need the core. */
    for (int i = 0; atomic_load_explicit(&pool->pending, memory_order_acquire) > 0; ++i) {
        if (i < SAIL_SPIN_ITERATIONS)
            SAIL_CPU_RELAX();
        else
            sched_yield();
    }
}
