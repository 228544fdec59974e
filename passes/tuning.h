/* tuning.h — the tuning database: measured GEMM tile choices per target, op shape and token count.
 *
 * In:  a YAML file written by `moeppc tune` (format below), or entries the tuner measured.
 * Out: a TuneDb; the specialize pass consults it (PassOptions.tuning) and records on each GEMM op the
 *      winning tile and a schedule of the measured tiles per token bucket, which the executor uses to
 *      pick a tile for any token count from its measured neighbours.
 * Memory: a TuneDb owns its entries; tune_db_free releases them.
 * Errors: a malformed file (not YAML, wrong types, missing keys) is a diagnostic FILE:LINE:COL; an
 *      entry made by another compiler or LLVM version or for another target is ignored with a warning,
 *      never silently used.
 *
 * File format (one YAML document, a person can read and diff it):
 *   moeppc_tuning: 1
 *   compiler: "0.1.0"          # MOEPPC_VERSION of the tuner
 *   llvm: "14.0.6"
 *   target: {cpu: znver3, isa: avx512, features: 1a2b3c4d5e6f7081}   # features: hash of the feature string
 *   entries:
 *     - {op: grouped_up, dtype: f32, n: 8192, k: 1536, groups: 16, tokens: 512, best: 8x48,
 *        measured: {8x48: 181.2, 4x96: 179.9, 6x64: 178.0}}       # GFLOP/s per tile
 */
#ifndef MOEPPC_PASSES_TUNING_H
#define MOEPPC_PASSES_TUNING_H

#include "frontend/frontend.h"

#define TUNE_MAX_MEASURED 32

typedef struct TuneMeasure {
    int tile_m, tile_n;
    double gflops;
} TuneMeasure;

typedef struct TuneEntry {
    char op[24];                 /* "linear", "grouped_up", "grouped_down" */
    moe_dtype dtype;             /* of the weights */
    int64_t n, k, groups;        /* the weight's [N, K]; groups = 1 for linear */
    int64_t tokens;              /* the token bucket measured */
    int best_m, best_n;
    TuneMeasure measured[TUNE_MAX_MEASURED];
    int n_measured;
    int line;                    /* where it was read (0 when measured) */
} TuneEntry;

typedef struct TuneTarget {
    char cpu[64], isa[16], llvm[32], compiler[32];
    uint64_t features;           /* hash_str of the host feature string */
} TuneTarget;

typedef struct TuneDb {
    TuneTarget target;
    TuneEntry *e;
    int n, cap;
} TuneDb;

bool tune_db_load(const char *path, TuneDb *db, Diag *d);
bool tune_db_load_string(const char *text, size_t len, TuneDb *db, Diag *d); /* the same from text */
bool tune_db_save(const TuneDb *db, const char *path, char *why, size_t why_len); /* atomic */
void tune_db_add(TuneDb *db, const TuneEntry *e);
void tune_db_free(TuneDb *db);
/* Does db apply to target t? If not, why says what differs (a warning for the user). */
bool tune_db_matches(const TuneDb *db, const TuneTarget *t, char *why, size_t why_len);

#endif
