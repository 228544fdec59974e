/* test_pool.c — the thread pool (support/pool.c): every task of a job runs once and its stores are
 * seen when parallel_for returns, with workers spinning, asleep and not running at all; a thread
 * index is never in two tasks at once; a caller never waits for a worker that has not joined its job
 * (workers held in a signal handler, as a scheduler holds them when other processes have the CPUs). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "support/support.h"

#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void sleep_us(long us) { nanosleep(&(struct timespec){us / 1000000, us % 1000000 * 1000}, NULL); }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void add_task(void *ctx, int64_t t, int thread) { (void)thread, atomic_fetch_add((atomic_llong *)ctx + t, 1); }

static void test_every_task_once(void **state) {
    (void)state;
    for (int threads = 1; threads <= 3; threads++) {
        CgPool *pool = cg_pool_new(threads);
        assert_int_equal(cg_pool_threads(pool), threads);
        for (int64_t n = 0; n < 40; n += 13) {
            atomic_llong hits[40];
            for (int i = 0; i < 40; i++) atomic_init(&hits[i], 0);
            for (int rep = 0; rep < 3; rep++) cg_pool_parallel_for(pool, n, add_task, hits);
            for (int64_t i = 0; i < 40; i++) assert_int_equal(atomic_load(&hits[i]), i < n ? 3 : 0);
        }
        cg_pool_free(pool);
    }
}

/* A task of about 10 us that ends with a plain store: the caller must see it once parallel_for returns. */
static void slow_set_task(void *ctx, int64_t t, int thread) {
    (void)thread;
    volatile double x = 1.0;
    for (int i = 0; i < 4000; i++) x = x * 1.0000001 + 1e-9;
    ((int64_t *)ctx)[t] = t + 1 + (x > 0 ? 0 : 1);
}

/* Jobs back to back (workers still spinning from the last) and after pauses longer than the spin
 * (workers asleep): each returns with every task's plain stores done and visible; a pool frees both
 * while its workers spin and while they sleep. */
static void test_spin_and_sleep(void **state) {
    (void)state;
    for (int threads = 2; threads <= 3; threads++) {
        CgPool *pool = cg_pool_new(threads);
        int64_t vals[48];
        for (int round = 0; round < 120; round++) {
            memset(vals, 0, sizeof vals);
            cg_pool_parallel_for(pool, 48, slow_set_task, vals);
            for (int64_t i = 0; i < 48; i++) assert_int_equal(vals[i], i + 1);
            if (round % 40 == 39) sleep_us(400); /* past the spin */
        }
        if (threads == 3) sleep_us(1000); /* the workers asleep */
        cg_pool_free(pool);                /* (threads 2: still spinning) */
    }
}

/* Tasks that check their thread index is theirs alone while they run, and count themselves in one
 * of two arrays by job: a task of the last job still running (or starting late) after its
 * parallel_for returned changes counts checked already. */
typedef struct Exclusive {
    atomic_int busy[4];
    int64_t *counts; /* this job's: plain stores, each task its own element */
    atomic_int clash;
} Exclusive;

static void exclusive_task(void *ctx, int64_t t, int thread) {
    Exclusive *e = ctx;
    if (thread < 0 || thread >= 4 || atomic_exchange(&e->busy[thread], 1) != 0) {
        atomic_store(&e->clash, 1);
        return;
    }
    volatile int spin = (int)(t % 7) * 40;
    while (spin > 0) spin--;
    e->counts[t]++;
    atomic_store(&e->busy[thread], 0);
}

static void test_exclusive_threads(void **state) {
    (void)state;
    for (int threads = 2; threads <= 4; threads++) {
        CgPool *pool = cg_pool_new(threads);
        Exclusive e = {0};
        int64_t counts[2][64] = {{0}}, expect[2][64] = {{0}};
        for (int job = 0; job < 4000; job++) {
            int64_t n = 2 + job % 63;
            e.counts = counts[job % 2];
            cg_pool_parallel_for(pool, n, exclusive_task, &e);
            for (int64_t t = 0; t < n; t++) expect[job % 2][t]++;
            for (int a = 0; a < 2; a++)
                for (int t = 0; t < 64; t++) assert_int_equal(counts[a][t], expect[a][t]);
            if (job % 1000 == 999) sleep_us(300);
        }
        assert_int_equal(atomic_load(&e.clash), 0);
        cg_pool_free(pool);
    }
}

/* ---- workers that do not run: held in a SIGUSR1 handler until released ---------------------- */
static atomic_int g_held, g_left, g_release;

static void hold_handler(int sig) {
    (void)sig;
    atomic_fetch_add(&g_held, 1);
    while (!atomic_load(&g_release)) nanosleep(&(struct timespec){0, 200000}, NULL);
    atomic_fetch_add(&g_left, 1);
}

/* The process's thread ids (Linux: /proc/self/task), up to cap; how many. */
static int thread_ids(pid_t *ids, int cap) {
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.' && n < cap) ids[n++] = (pid_t)atoi(e->d_name);
    closedir(d);
    return n;
}

static atomic_int g_jobs_done;

/* Releases the held workers after 5 s, so that a pool whose caller waits for them fails the test
 * instead of hanging it. */
static void *release_later(void *unused) {
    (void)unused;
    double end = now_s() + 5.0;
    while (!atomic_load(&g_jobs_done) && now_s() < end) sleep_us(1000);
    atomic_store(&g_release, 1);
    return NULL;
}

static void thread_task(void *ctx, int64_t t, int thread) { ((int *)ctx)[t] = thread + 1; }

static void slow_thread_task(void *ctx, int64_t t, int thread) {
    slow_set_task(&(int64_t[48]){0}, 0, thread);
    ((int *)ctx)[t] = thread + 1;
}

static void test_workers_not_running(void **state) {
    (void)state;
    struct sigaction sa = {0};
    sa.sa_handler = hold_handler;
    sigemptyset(&sa.sa_mask);
    assert_int_equal(sigaction(SIGUSR1, &sa, NULL), 0);
    for (int threads = 2; threads <= 3; threads++) {
        pid_t before[64], after[64];
        int n_before = thread_ids(before, 64);
        CgPool *pool = cg_pool_new(threads);
        int n_after = thread_ids(after, 64), n_workers = 0;
        atomic_store(&g_held, 0), atomic_store(&g_left, 0), atomic_store(&g_release, 0);
        atomic_store(&g_jobs_done, 0);
        sleep_us(2000); /* the workers past their spin, in pthread_cond_wait (without the pool's lock) */
        for (int i = 0; i < n_after; i++) {
            bool old = false;
            for (int j = 0; j < n_before; j++) old |= after[i] == before[j];
            if (old) continue;
            assert_int_equal(syscall(SYS_tgkill, getpid(), after[i], SIGUSR1), 0);
            n_workers++;
        }
        assert_int_equal(n_workers, threads - 1);
        for (double end = now_s() + 10.0; atomic_load(&g_held) < n_workers;) {
            assert_true(now_s() < end);
            sleep_us(100);
        }
        pthread_t releaser;
        assert_int_equal(pthread_create(&releaser, NULL, release_later, NULL), 0);
        int ran[16];
        for (int job = 0; job < 300; job++) { /* the caller alone, and no waiting for the others */
            memset(ran, 0, sizeof ran);
            cg_pool_parallel_for(pool, 16, thread_task, ran);
            for (int t = 0; t < 16; t++) assert_int_equal(ran[t], 1);
        }
        bool released_early = atomic_load(&g_release);
        atomic_store(&g_jobs_done, 1);
        pthread_join(releaser, NULL);
        assert_false(released_early);
        for (double end = now_s() + 10.0; atomic_load(&g_left) < n_workers;) {
            assert_true(now_s() < end);
            sleep_us(100);
        }
        /* Released, the workers find the jobs they missed closed, and join the next ones. */
        bool helped = false;
        for (double end = now_s() + 20.0; !helped && now_s() < end;) {
            memset(ran, 0, sizeof ran);
            cg_pool_parallel_for(pool, 16, slow_thread_task, ran);
            for (int t = 0; t < 16; t++) assert_true(ran[t] >= 1 && ran[t] <= threads);
            for (int t = 0; t < 16; t++) helped |= ran[t] > 1;
        }
        assert_true(helped);
        cg_pool_free(pool);
    }
}

static void note_in_task(void *ctx, int64_t t, int thread) { (void)thread, ((bool *)ctx)[t] = cg_pool_in_task(); }

/* Each task, on a worker or on the caller, one at a time or many, knows it runs inside a pool's task;
 * the caller, before and after, does not. */
static void test_in_task(void **state) {
    (void)state;
    for (int threads = 1; threads <= 3; threads++) {
        CgPool *pool = cg_pool_new(threads);
        for (int64_t n = 1; n <= 64; n += 63) {
            bool in[64] = {false};
            assert_false(cg_pool_in_task());
            cg_pool_parallel_for(pool, n, note_in_task, in);
            for (int64_t t = 0; t < n; t++) assert_true(in[t]);
            assert_false(cg_pool_in_task());
        }
        cg_pool_free(pool);
    }
    bool in[2] = {false};
    cg_pool_parallel_for(NULL, 2, note_in_task, in);
    assert_true(in[0] && in[1] && !cg_pool_in_task());
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_task_once),
        cmocka_unit_test(test_spin_and_sleep),
        cmocka_unit_test(test_exclusive_threads),
        cmocka_unit_test(test_workers_not_running),
        cmocka_unit_test(test_in_task),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
