/* pool.c — a fixed thread pool: n-1 workers created once plus the calling thread; parallel_for hands
 * out task indices from an atomic counter (dynamic balance on a noisy shared machine). Threads are
 * never pinned.
 *
 * A job is open from its start until the caller has run out of tasks; a worker joins it only while
 * it is open (a CAS on one state word that holds the job's generation, whether it is closed and how
 * many workers are inside), and the caller then waits only for the workers that joined. A worker the
 * scheduler has not run yet (other processes on the CPUs) therefore costs the job nothing: it finds
 * the job closed when it does run and goes back to waiting; the caller never waits a time slice for a
 * worker that had nothing to do.
 *
 * A worker done with a job, and a caller waiting for its workers, spin for up to SPIN_NS before they
 * sleep on the condition variables: a decode step is some hundred jobs of tens of microseconds, and
 * a sleeping worker on a VM is woken by an interprocessor interrupt through the hypervisor. A pool
 * with more threads than the process has CPUs (cpus_available) never spins: there a spinning thread
 * holds the CPU a thread with work is waiting for. */
#include "support/support.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

enum { SPIN_NS = 100000 };

/* The state word: generation << GEN_SHIFT | CLOSED | workers inside the job. */
enum { GEN_SHIFT = 24 };
#define CLOSED ((uint64_t)1 << (GEN_SHIFT - 1))
#define ACTIVE_MASK (CLOSED - 1)

typedef struct Worker {
    struct CgPool *pool;
    int index;
} Worker;

struct CgPool {
    int n_threads;
    int64_t spin_ns; /* SPIN_NS, or 0 when oversubscribed */
    pthread_t *threads;
    Worker *workers;
    pthread_mutex_t mu;
    pthread_cond_t start_cv, done_cv;
    _Atomic uint64_t state; /* a new generation is stored under mu; the rest by CAS and fetch ops */
    bool stop;
    cg_task_fn fn;
    void *ctx;
    int64_t n_tasks;
    atomic_llong next;
};

static uint64_t generation(uint64_t state) { return state >> GEN_SHIFT; }

static _Thread_local int tasks_inside; /* this thread's tasks running (cg_pool_in_task) */

static void run_task(cg_task_fn fn, void *ctx, int64_t t, int thread) {
    tasks_inside++;
    fn(ctx, t, thread);
    tasks_inside--;
}

bool cg_pool_in_task(void) { return tasks_inside > 0; }

static void run_tasks(CgPool *p, int thread) {
    for (;;) {
        long long t = atomic_fetch_add(&p->next, 1);
        if (t >= p->n_tasks) return;
        run_task(p->fn, p->ctx, (int64_t)t, thread);
    }
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Spin until done(p, arg) or the pool's spin_ns have passed; whether done. */
static bool spin_until(CgPool *p, bool (*done)(CgPool *, uint64_t), uint64_t arg) {
    if (p->spin_ns == 0) return done(p, arg);
    int64_t end = now_ns() + p->spin_ns;
    for (int i = 1;; i++) {
        if (done(p, arg)) return true;
        cpu_relax();
        if (i % 64 == 0 && now_ns() > end) return false;
    }
}

static bool new_job(CgPool *p, uint64_t seen) { return generation(atomic_load(&p->state)) != seen; }
static bool workers_done(CgPool *p, uint64_t unused) {
    return (void)unused, (atomic_load(&p->state) & ACTIVE_MASK) == 0;
}

/* Join job gen if it is still open: whether this worker is now inside it. */
static bool join(CgPool *p, uint64_t gen) {
    uint64_t s = atomic_load(&p->state);
    while (generation(s) == gen && !(s & CLOSED))
        if (atomic_compare_exchange_weak(&p->state, &s, s + 1)) return true;
    return false;
}

static void *worker_main(void *arg) {
    Worker *w = arg;
    CgPool *p = w->pool;
    uint64_t seen = 0;
    for (;;) {
        spin_until(p, new_job, seen); /* (stop is seen under the lock, after at most SPIN_NS) */
        pthread_mutex_lock(&p->mu);
        while (generation(atomic_load(&p->state)) == seen && !p->stop) pthread_cond_wait(&p->start_cv, &p->mu);
        bool stop = p->stop;
        seen = generation(atomic_load(&p->state));
        pthread_mutex_unlock(&p->mu);
        if (stop) break;
        if (!join(p, seen)) continue; /* closed: the caller ran out of tasks before this worker ran */
        run_tasks(p, w->index);
        uint64_t before = atomic_fetch_sub(&p->state, 1);
        if ((before & CLOSED) && (before & ACTIVE_MASK) == 1) { /* the last: the caller may sleep on done_cv */
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->done_cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    return NULL;
}

CgPool *cg_pool_new(int n_threads) {
    CgPool *p = xcalloc(1, sizeof *p);
    p->n_threads = n_threads < 1 ? 1 : n_threads;
    MOE_ASSERT((uint64_t)p->n_threads < ACTIVE_MASK);
    p->spin_ns = p->n_threads <= cpus_available() ? SPIN_NS : 0;
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
bool cg_pool_spins(const CgPool *p) { return p && p->n_threads > 1 && p->spin_ns > 0; }

void cg_pool_parallel_for(CgPool *p, int64_t n_tasks, cg_task_fn fn, void *ctx) {
    if (n_tasks <= 0) return;
    if (!p || p->n_threads == 1 || n_tasks == 1) {
        for (int64_t t = 0; t < n_tasks; t++) run_task(fn, ctx, t, 0);
        return;
    }
    /* Every worker of the last job has left it (the caller waited), so these fields are the caller's. */
    p->fn = fn;
    p->ctx = ctx;
    p->n_tasks = n_tasks;
    atomic_store(&p->next, 0);
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->state, (generation(atomic_load(&p->state)) + 1) << GEN_SHIFT); /* open, nobody inside */
    pthread_cond_broadcast(&p->start_cv);
    pthread_mutex_unlock(&p->mu);
    run_tasks(p, 0);
    uint64_t before = atomic_fetch_or(&p->state, CLOSED); /* from here on no worker joins */
    if ((before & ACTIVE_MASK) == 0 || spin_until(p, workers_done, 0)) return;
    pthread_mutex_lock(&p->mu);
    while (!workers_done(p, 0)) pthread_cond_wait(&p->done_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
}
