/* batch_rows.h — the rows the batched-sequences tests (tests/cpu/test_cpu.c, tests/cuda/test_cuda_model.c)
 * run: step 0 a prefill whose rows come in runs {sequence, first position, end} (one sequence's in two
 * runs, others between: mixed rows), then decode steps of one row a sequence, the order turned by one
 * each step. */
#ifndef MOEPPC_TESTS_BATCH_ROWS_H
#define MOEPPC_TESTS_BATCH_ROWS_H

#include <stdint.h>

/* Step `step`'s rows into ids, pos, sq (each sequence's tokens at seqs + q * stride; len[q] its next
 * position, advanced by a decode step); their count. */
static inline int64_t batch_rows(int step, int n_seqs, const int (*runs)[3], int n_runs, const int32_t *seqs,
                                 int64_t stride, int64_t *len, int32_t *ids, int32_t *pos, int32_t *sq)
{
    int64_t T = 0;
    if (step == 0) {
        for (int r = 0; r < n_runs; r++)
            for (int t = runs[r][1]; t < runs[r][2]; t++)
                ids[T] = seqs[runs[r][0] * stride + t], pos[T] = t, sq[T++] = runs[r][0];
        return T;
    }
    for (int j = 0; j < n_seqs; j++) {
        int q = (j + step) % n_seqs;
        ids[T] = seqs[q * stride + len[q]], pos[T] = (int32_t)len[q], sq[T++] = q;
        len[q]++;
    }
    return T;
}

#endif
