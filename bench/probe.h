/* probe.h — this machine's ceilings, measured: f32 FMA peak and memory read bandwidth, each on all
 * threads of a pool. Built alone with -O3 -march=native (see codegen/llvm/CMakeLists.txt). */
#ifndef MOEPPC_BENCH_PROBE_H
#define MOEPPC_BENCH_PROBE_H

#include "codegen/llvm/cg_llvm.h"

const char *probe_isa(void);                       /* "avx512", "avx2" or "sse": what the probe uses */
double probe_fma_gflops(CgPool *pool, long iters); /* one timed run: iters x 24 (AVX-512) or 12 FMAs a thread */
/* The FMA peak as every benchmark measures it: a warm-up run (clocks up, threads awake), then n
 * runs of 120M vector FMAs a thread into v[0..n) (a cold, short probe read 40 % low on a shared VM). */
void   probe_fma_peak_runs(CgPool *pool, double *v, int n);
/* One timed run of iters x 24 vdpbf16ps per thread (GFLOP/s, 2 per multiply-add); -1 when the
 * probe was not built with AVX512-BF16. */
double probe_dot_gflops(CgPool *pool, long iters);
double probe_read_gbs(CgPool *pool, const uint64_t *buf, size_t n); /* one timed sum of buf[0..n) */
double bench_now_s(void);
int    bench_cmp_double(const void *a, const void *b);

#endif
