/* pool.c — a fixed thread pool: n-1 workers created once plus the calling thread; parallel_for hands
 * out task indices from an atomic counter (dynamic balance on a noisy shared machine). Threads are
 * never pinned. */
#include "support/support.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

typedef struct Worker {
    struct CgPool *pool;
    int index;
} Worker;

struct CgPool {
    int n_threads;
    pthread_t *threads;
    Worker *workers;
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    uint64_t generation; /* bumped per parallel_for; workers wait for a new one */
    bool stop;
    int busy;            /* workers still inside the current job */
    cg_task_fn fn;
    void *ctx;
    int64_t n_tasks;
    atomic_llong next;
};

static void run_tasks(CgPool *p, int thread) {
    for (;;) {
        long long t = atomic_fetch_add(&p->next, 1);
        if (t >= p->n_tasks) return;
        p->fn(p->ctx, (int64_t)t, thread);
    }
}

static void *worker_main(void *arg) {
    Worker *w = arg;
    CgPool *p = w->pool;
    uint64_t seen = 0;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->generation == seen && !p->stop) pthread_cond_wait(&p->start_cv, &p->mu);
        if (p->stop) break;
        seen = p->generation;
        pthread_mutex_unlock(&p->mu);
        run_tasks(p, w->index);
        pthread_mutex_lock(&p->mu);
        if (--p->busy == 0) pthread_cond_signal(&p->done_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

CgPool *cg_pool_new(int n_threads) {
    CgPool *p = xcalloc(1, sizeof *p);
    p->n_threads = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->start_cv, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    p->threads = xcalloc((size_t)p->n_threads, sizeof *p->threads);
    p->workers = xcalloc((size_t)p->n_threads, sizeof *p->workers);
    for (int i = 1; i < p->n_threads; i++) {
        p->workers[i] = (Worker){p, i};
        int rc = pthread_create(&p->threads[i], NULL, worker_main, &p->workers[i]);
        MOE_ASSERT(rc == 0);
    }
    return p;
}

void cg_pool_free(CgPool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->start_cv);
    pthread_cond_destroy(&p->done_cv);
    pthread_mutex_destroy(&p->mu);
    free(p->threads);
    free(p->workers);
    free(p);
}

int cg_pool_threads(const CgPool *p) { return p ? p->n_threads : 1; }

void cg_pool_parallel_for(CgPool *p, int64_t n_tasks, cg_task_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++) fn(ctx, t, 0);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    p->busy = p->n_threads - 1;
    p->generation++;
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    pthread_mutex_lock(&p->mu);
    while (p->busy > 0) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}

int cpus_available(void)
{
    cpu_set_t set;
    int n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
    return n > 0 ? n : 1;
}
