/* ceilings_probe.c — FMA peak: independent FMA chains per thread in the widest vector ISA the
 * compiler was told about (-march=native), enough to cover FMA latency x throughput on any current
 * core (2 pipes x 4-5 cycles) and few enough to stay in registers: 24 of AVX-512's 32, 12 of AVX2's
 * 16 (24 there spilled ten chains to the stack and read 88 GFLOP/s a core where the GEMMs reached
 * 99). Bandwidth: each thread sums its share of a large buffer. */
#include "bench/probe.h"

#include <immintrin.h>
#include <stdlib.h>
#include <time.h>

double bench_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#if defined(__AVX512F__)
typedef __m512 vec;
#define VEC_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VEC_SET1 _mm512_set1_ps
#define VEC_LANES 16
#define VEC_ISA "avx512"
#define VEC_CHAINS 24
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vec;
#define VEC_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VEC_SET1 _mm256_set1_ps
#define VEC_LANES 8
#define VEC_ISA "avx2"
#define VEC_CHAINS 12
#else
typedef __m128 vec;
#define VEC_FMA(a, b, c) _mm_add_ps(_mm_mul_ps(a, b), c) /* no FMA: a mul and an add, 2 flops */
#define VEC_SET1 _mm_set1_ps
#define VEC_LANES 4
#define VEC_ISA "sse"
#define VEC_CHAINS 12
#endif

const char *probe_isa(void) { return VEC_ISA; }

static volatile float sink_f;
static volatile uint64_t sink_u;

static void fma_task(void *ctx, int64_t t, int thread) {
    long iters = *(const long *)ctx;
    vec m = VEC_SET1(0.999999f), a = VEC_SET1(1e-7f), c[VEC_CHAINS];
    /* Distinct starting values: identical chains would be merged into one by the compiler. */
    for (int i = 0; i < VEC_CHAINS; i++) c[i] = VEC_SET1(1.0f + 0.001f * (float)i);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 24 /* (the chains in registers, not in the array) */
        for (int k = 0; k < VEC_CHAINS; k++) c[k] = VEC_FMA(c[k], m, a);
        __asm__ volatile("" : "+x"(m)); /* keep the loop a loop */
    }
    vec s = c[0];
    for (int i = 1; i < VEC_CHAINS; i++) s = s + c[i];
    sink_f = s[0];
}

/* GFLOP/s of one run of task on every thread of pool, each doing flops_per_iter per iteration. */
static double timed_gflops(CgPool *pool, cg_task_fn task, long iters, double flops_per_iter) {
    int threads = cg_pool_threads(pool);
    double t0 = bench_now_s();
    cg_pool_parallel_for(pool, threads, task, &iters);
    double dt = bench_now_s() - t0;
    return (double)threads * (double)iters * flops_per_iter / dt * 1e-9;
}

double probe_fma_gflops(CgPool *pool, long iters) {
    return timed_gflops(pool, fma_task, iters, (double)VEC_CHAINS * VEC_LANES * 2.0);
}

void probe_fma_peak_runs(CgPool *pool, double *v, int n) {
    long scale = 24 / VEC_CHAINS; /* the same work per run whatever the chains */
    probe_fma_gflops(pool, 2000000 * scale);
    for (int r = 0; r < n; r++) v[r] = probe_fma_gflops(pool, 5000000 * scale);
}

#if defined(__AVX512BF16__)
/* bf16 dot-product peak: 24 independent vdpbf16ps chains, 32 multiply-adds (64 flops) each. */
static void dot_task(void *ctx, int64_t t, int thread) {
    long iters = *(const long *)ctx;
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3080), y = (__m512bh)_mm512_set1_epi16(0x3f80);
    __m512 c[24];
    for (int i = 0; i < 24; i++) c[i] = _mm512_set1_ps(1.0f + 0.001f * (float)i);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 24 /* (the chains in registers, not in the array) */
        for (int k = 0; k < 24; k++) c[k] = _mm512_dpbf16_ps(c[k], x, y);
        __asm__ volatile("" : "+v"(x)); /* keep the loop a loop */
    }
    __m512 s = c[0];
    for (int i = 1; i < 24; i++) s = _mm512_add_ps(s, c[i]);
    sink_f = s[0];
}

double probe_dot_gflops(CgPool *pool, long iters) { return timed_gflops(pool, dot_task, iters, 24.0 * 64.0); }
#else
double probe_dot_gflops(CgPool *pool, long iters) {
    (void)pool, (void)iters;
    return -1;
}
#endif

typedef struct ReadJob {
    const uint64_t *buf;
    size_t n;
    int parts;
} ReadJob;

static void read_task(void *ctx, int64_t t, int thread) {
    const ReadJob *j = ctx;
    size_t begin = j->n * (size_t)t / (size_t)j->parts, end = j->n * (size_t)(t + 1) / (size_t)j->parts;
    uint64_t s = 0;
    for (size_t i = begin; i < end; i++) s += j->buf[i];
    sink_u = s;
}

double probe_read_gbs(CgPool *pool, const uint64_t *buf, size_t n) {
    ReadJob j = {buf, n, cg_pool_threads(pool)};
    double t0 = bench_now_s();
    cg_pool_parallel_for(pool, j.parts, read_task, &j);
    return (double)n * 8.0 / (bench_now_s() - t0) * 1e-9;
}
