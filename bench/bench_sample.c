/* bench_sample.c — what choosing a token costs (runtime/sample.c), per draw, over a 32000-token
 * vocabulary of flat logits (roughly normal, spread 0.3: the worst case for top-p, whose nucleus is then
 * most of the vocabulary): greedy, top-k 40, a draw over every token, top-p 0.9. Each the median of 5
 * runs of 200 draws. Usage: bench_sample [VOCAB]. */
#include "runtime/runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    int64_t V = argc > 1 ? atoll(argv[1]) : 32000;
    if (V < 2 || V > 10000000) {
        fprintf(stderr, "usage: bench_sample [VOCAB: 2 to 10000000]\n");
        return 2;
    }
    double *l = xmalloc((size_t)V * sizeof *l);
    moe_rng r;
    rng_seed(&r, 3);
    for (int64_t v = 0; v < V; v++) {
        double x = 0;
        for (int k = 0; k < 4; k++) x += rng_uniform(&r) - 0.5;
        l[v] = 0.3 * x;
    }
    const SampleParams ps[] = {{.temperature = 0, .top_p = 1}, {.temperature = 1, .top_k = 40, .top_p = 1},
                               {.temperature = 1, .top_p = 1}, {.temperature = 1, .top_p = 0.9}};
    const char *name[] = {"greedy", "top-k 40", "every token", "top-p 0.9"};
    printf("bench_sample: a draw over %lld flat logits (median of 5 runs of 200)\n", (long long)V);
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        double ms[5];
        int64_t check = 0;
        for (int run = 0; run < 5; run++) {
            Sampler s;
            sampler_init(&s, &ps[i], 1, V);
            double t0 = now_s();
            for (int k = 0; k < 200; k++) check += sampler_next(&s, l, NULL, 0, 0);
            ms[run] = (now_s() - t0) / 200 * 1e3;
            sampler_free(&s);
        }
        qsort(ms, 5, sizeof ms[0], cmp_double);
        printf("  %-12s %.3f ms a draw (ids summed: %lld)\n", name[i], ms[2], (long long)check);
    }
    free(l);
    return 0;
}
