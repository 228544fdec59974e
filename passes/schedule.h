/* schedule.h — tile schedules (schedule.c): the tuning database's measurements carried on a GEMM op
 * (attribute tile_schedule) and the run-time choice of the register-tile height for a token count. */
#ifndef MOEPPC_PASSES_SCHEDULE_H
#define MOEPPC_PASSES_SCHEDULE_H

#include "passes/tuning.h"

#define TILE_MAX_BUCKETS 16

typedef struct TileBucket {
    int64_t tokens;
    int mr[TUNE_MAX_MEASURED];
    double gflops[TUNE_MAX_MEASURED];
    int n;
} TileBucket;

typedef struct TileSchedule {
    int nr;                          /* the panel width every entry shares */
    TileBucket b[TILE_MAX_BUCKETS];  /* by increasing tokens */
    int n;
} TileSchedule;

/* "NR;T:MR@G,…;…" from the entries of one op shape (sorted here by tokens), keeping the tiles of width nr. */
char *tile_schedule_format(const TuneEntry **e, int n, int nr, Arena *arena);
bool  tile_schedule_parse(const char *s, TileSchedule *out);
/* The register-tile height for T tokens: a bucket's best, or between buckets the neighbouring
 * winner with the higher GFLOP/s interpolated in log T. */
int   tile_schedule_pick(const TileSchedule *s, int64_t T);

#endif
