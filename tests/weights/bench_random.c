/* bench_random.c — time random weights on the 0.6B/(8+4)E paper shape (not a test; prints seconds):
 * every tensor made whole (weights_data: what the interpreter or a GPU upload pays, on a pool, with
 * the first touch of its pages), then made again a run of rows at a time into one scratch of 1 MiB on
 * this thread alone (weights_make_rows: the generator's own speed, as the CPU backend's packing
 * makes them). usage: weights_bench [f32|bf16|f16] */
#include "tests/weights/util.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static double seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv)
{
    moe_dtype dt = DT_BF16;
    if (argc > 1 && !dtype_parse(argv[1], &dt)) return 2;
    ModelSpec s = tu_small_paper_spec(dt);
    double t0 = seconds();
    WeightSet *w;
    RtError err;
    if (!weights_random(&s, 1, &w, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    size_t bytes = 0, params = 0;
    for (int i = 0; i < weights_count(w); i++) {
        const Tensor *t = weights_at(w, i);
        if (!weights_data(w, t, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        bytes += t->nbytes;
        params += t->nbytes / dtype_size(dt);
    }
    double t1 = seconds();
    enum { SCRATCH = 1 << 20 };
    char *scratch = xmalloc(SCRATCH);
    for (int i = 0; i < weights_count(w); i++) {
        const Tensor *t = weights_at(w, i);
        size_t row = t->nbytes / (size_t)t->shape[0];
        int64_t run = row < SCRATCH ? (int64_t)(SCRATCH / row) : 1;
        for (int64_t r = 0; r < t->shape[0] && row <= SCRATCH; r += run)
            weights_make_rows(w, t, r, t->shape[0] - r < run ? t->shape[0] - r : run, scratch);
    }
    double t2 = seconds();
    printf("%s: %d tensors, %zu params, %.1f MB: made whole in %.2f s, by rows on one thread in %.2f s\n",
           dtype_name(dt), weights_count(w), params, (double)bytes / 1e6, t1 - t0, t2 - t1);
    free(scratch);
    weights_close(w);
    return 0;
}
