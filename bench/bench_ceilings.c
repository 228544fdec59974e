/* bench_ceilings — this machine's f32 FMA peak, bf16 dot-product (vdpbf16ps) peak where the CPU has
 * AVX512-BF16, and memory read bandwidth on 1 and 2 threads (medians, min-max): the ceilings the
 * GEMM numbers are judged against. */
#include "bench/probe.h"

#include <stdlib.h>
#include <string.h>

enum { REPS = 9 };

static void report(const char *what, const char *unit, double v[REPS]) {
    qsort(v, REPS, sizeof *v, bench_cmp_double);
    printf("%-34s median %7.1f %s  (min %7.1f, max %7.1f, %d runs)\n", what, v[REPS / 2], unit, v[0],
           v[REPS - 1], REPS);
}

int main(int argc, char **argv) {
    int max_threads = argc > 1 ? atoi(argv[1]) : 2;
    size_t n = (size_t)1 << 26; /* 512 MiB of u64: far beyond any cache */
    uint64_t *buf = xmalloc(n * sizeof *buf);
    for (size_t i = 0; i < n; i++) buf[i] = i;
    printf("FMA probe ISA: %s (widest the compiler was told about)\n", probe_isa());
    for (int threads = 1; threads <= max_threads; threads++) {
        CgPool *pool = cg_pool_new(threads);
        double v[REPS];
        char what[64];
        probe_fma_peak_runs(pool, v, REPS);
        snprintf(what, sizeof what, "f32 FMA peak, %d thread(s)", threads);
        report(what, "GFLOP/s", v);
        if (probe_dot_gflops(pool, 1000000) > 0) {
            for (int r = 0; r < REPS; r++) v[r] = probe_dot_gflops(pool, 2500000);
            snprintf(what, sizeof what, "bf16 dot peak, %d thread(s)", threads);
            report(what, "GFLOP/s", v);
        }
        probe_read_gbs(pool, buf, n);
        for (int r = 0; r < REPS; r++) v[r] = probe_read_gbs(pool, buf, n);
        snprintf(what, sizeof what, "memory read, %d thread(s)", threads);
        report(what, "GB/s   ", v);
        cg_pool_free(pool);
    }
    free(buf);
    return 0;
}
