/* threads.c: a small fork-join thread pool. Workers spin briefly between jobs (a forward pass
 * issues hundreds of short jobs) and then sleep on a condition variable. Every spin gives the
 * core away now and then: when the machine has fewer free cores than threads, a thread that
 * only spins holds the core that the thread it waits for needs, for a whole time slice. */
#include "internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* ---------------------------------------------------------------------------------------
 * Pool state
 * ------------------------------------------------------------------------------------- */

#define SPIN_ROUNDS 100000
#define SPINS_PER_YIELD 256

typedef struct worker {
    sov_pool *pool;
    int index;
    pthread_t thread;
} worker;

struct sov_pool {
    int n_threads;
    worker *workers;            /* n_threads - 1 of them; the caller is thread 0 */
    atomic_uint generation;     /* bumped once per job */
    atomic_int pending;         /* workers still running the current job */
    atomic_int n_sleeping;
    atomic_bool stop;
    sov_pool_fn fn;
    void *arg;
    pthread_mutex_t mutex;
    pthread_cond_t wake;
};

/* ---------------------------------------------------------------------------------------
 * Workers
 * ------------------------------------------------------------------------------------- */

static void spin_pause(unsigned round) {
    if (round % SPINS_PER_YIELD == SPINS_PER_YIELD - 1) sched_yield();
    else CPU_RELAX();
}

static void wait_for_job(sov_pool *pool, unsigned seen) {
    for (int i = 0; i < SPIN_ROUNDS; i++) {
        if (atomic_load(&pool->generation) != seen || atomic_load(&pool->stop)) return;
        spin_pause((unsigned)i);
    }
    pthread_mutex_lock(&pool->mutex);
    atomic_fetch_add(&pool->n_sleeping, 1);
    while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop)) pthread_cond_wait(&pool->wake, &pool->mutex);
    atomic_fetch_sub(&pool->n_sleeping, 1);
    pthread_mutex_unlock(&pool->mutex);
}

static void *worker_main(void *p) {
    worker *w = p;
    sov_pool *pool = w->pool;
    unsigned seen = 0; /* the generation at init: a job may be posted before this thread runs */
    for (;;) {
        wait_for_job(pool, seen);
        if (atomic_load(&pool->stop)) return NULL;
        seen = atomic_load(&pool->generation);
        pool->fn(pool->arg, w->index, pool->n_threads);
        atomic_fetch_sub(&pool->pending, 1);
    }
}

/* ---------------------------------------------------------------------------------------
 * Public (library-internal) interface
 * ------------------------------------------------------------------------------------- */

sov_status sov_pool_init(int n_threads, sov_pool **out) {
    if (n_threads < 1 || n_threads > 256) return sov_fail(SOV_ERR_INVALID_ARGUMENT, "threads must be 1..256, not %d", n_threads);
    sov_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return sov_fail(SOV_ERR_NOMEM, "thread pool");
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    if (n_threads > 1) {
        pool->workers = calloc((size_t)n_threads - 1, sizeof(worker));
        if (!pool->workers) {
            sov_pool_free(pool);
            return sov_fail(SOV_ERR_NOMEM, "thread pool");
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker *w = &pool->workers[i - 1];
        w->pool = pool;
        w->index = i;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            pool->n_threads = i; /* only the threads started so far are joined */
            sov_pool_free(pool);
            return sov_fail(SOV_ERR_NOMEM, "cannot start thread %d", i);
        }
    }
    *out = pool;
    return SOV_OK;
}

void sov_pool_free(sov_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, true);
    pthread_mutex_lock(&pool->mutex);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 1; i < pool->n_threads; i++) pthread_join(pool->workers[i - 1].thread, NULL);
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->wake);
    free(pool->workers);
    free(pool);
}

int sov_pool_size(const sov_pool *pool) { return pool->n_threads; }

void sov_pool_run(sov_pool *pool, sov_pool_fn fn, void *arg) {
    if (pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store(&pool->pending, pool->n_threads - 1);
    atomic_fetch_add(&pool->generation, 1);
    if (atomic_load(&pool->n_sleeping) > 0) {
        pthread_mutex_lock(&pool->mutex);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->mutex);
    }
    fn(arg, 0, pool->n_threads);
    for (unsigned i = 0; atomic_load(&pool->pending) > 0; i++) spin_pause(i);
}
