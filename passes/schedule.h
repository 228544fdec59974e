/* schedule.h — tuning schedules (schedule.c): the tuning database's measurements carried on an op
 * (attribute tile_schedule) and the run-time choice of a configuration for a token count. */
#ifndef MOEPPC_PASSES_SCHEDULE_H
#define MOEPPC_PASSES_SCHEDULE_H

#include "passes/tuning.h"

#define TILE_MAX_BUCKETS 16
#define TILE_SCHED_GPU (-1) /* the nr of a schedule of GPU block tiles (tile_m x tile_n / kc) */

typedef struct TileBucket {
    int64_t tokens;
    TuneConfig c[TILE_MAX_BUCKETS];  /* the configurations that win some bucket, measured here */
    double gflops[TILE_MAX_BUCKETS];
    int n;
} TileBucket;

typedef struct TileSchedule {
    int nr;                          /* the panel width every GEMM entry shares (0: attention;
                                        TILE_SCHED_GPU: the GPU's grouped GEMM tiles, any width) */
    TileBucket b[TILE_MAX_BUCKETS];  /* by increasing tokens */
    int n;
} TileSchedule;

/* "NR;T:CONFIG@G,…;…" from the entries of one op shape (sorted here by tokens): per bucket, the
 * measurements of the configurations that won some bucket, of GEMM tiles only those of width nr
 * (nr = 0 for attention); on a GPU, where a bucket measured the decode MLP (`mlp`), also its best
 * MLP and its best other configuration, won or not: the executor then knows whether the two GEMVs beat
 * the MLP, and has a GEMV for that T where the MLP does not run. */
char *tile_schedule_format(const TuneEntry **e, int n, int nr, Arena *arena);
bool  tile_schedule_parse(const char *s, TileSchedule *out);
/* The CPU's panel width for one GEMM shape's entries: the packing fixes one width for every token
 * count, so among the widths measured at every bucket and, at each, no slower than the rule's own
 * configuration where the bucket measured it (the rule's width always qualifies), the one whose best
 * loses least summed over the buckets (each bucket's best GFLOP/s over the best at the width): a
 * width ahead by a hair at 512 tokens cannot cost a decode step a third, nor a width that wins small
 * T lose the rule's speed at 512. *out: that width's best configuration in `near` (the bucket
 * nearest 512 tokens). False if no width qualifies. */
bool  tile_schedule_width(const TuneEntry **e, int n, const TuneEntry *near, const TuneConfig *rule, TuneConfig *out);

/* The configuration for T tokens: a bucket's best, or between buckets the neighbouring winner with
 * the higher GFLOP/s interpolated in log T. */
TuneConfig tile_schedule_pick(const TileSchedule *s, int64_t T);

#endif
