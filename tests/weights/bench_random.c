/* bench_random.c — time weights_random on the 0.6B/(8+4)E paper shape (not a test; prints seconds).
 * usage: weights_bench [f32|bf16|f16] */
#include "tests/weights/util.h"

#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    moe_dtype dt = DT_BF16;
    if (argc > 1 && !dtype_parse(argv[1], &dt)) return 2;
    ModelSpec s = tu_small_paper_spec(dt);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    WeightSet *w;
    RtError err;
    if (!weights_random(&s, 1, &w, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    size_t bytes = 0, params = 0;
    for (int i = 0; i < weights_count(w); i++) {
        bytes += weights_at(w, i)->nbytes;
        params += weights_at(w, i)->nbytes / dtype_size(dt);
    }
    printf("%s: %d tensors, %zu params, %.1f MB in %.2f s\n", dtype_name(dt), weights_count(w), params,
           (double)bytes / 1e6, (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec));
    weights_close(w);
    return 0;
}
