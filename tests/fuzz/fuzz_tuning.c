/* fuzz_tuning.c — a tuning database (tune_db_load_string, what `--tuning DB` reads), then what compile
 * does with it: the specialize pass on specs/tiny/tiny-moepp.yaml takes its tiles from the database.
 * Accepted: every entry is sound, the database saves and loads back the same, the pipeline run with it
 * leaves verified IR, and each tile schedule it recorded parses and picks a measured tile height. */
#include "tests/fuzz/fuzz.h"
#include "tests/tiny_specs.h"

#include "ir/ir.h"
#include "passes/passes.h"
#include "passes/schedule.h"
#include "passes/tuning.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static ModelSpec tiny;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    FUZZ_CHECK(tiny_spec_load("tiny-moepp", &tiny), "cannot load tiny-moepp");
    return 0;
}

static void check_entry(const TuneEntry *e)
{
    FUZZ_CHECK(tune_op_is_gemm(e->op) || !strcmp(e->op, "attention"), "op '%s'", e->op);
    FUZZ_CHECK(e->n >= 1 && e->k >= 1 && e->groups >= 1 && e->tokens >= 1, "a size below 1 accepted");
    FUZZ_CHECK(e->n_measured >= 1 && e->n_measured <= TUNE_MAX_MEASURED, "%d measured tiles", e->n_measured);
    bool best = false;
    for (int i = 0; i < e->n_measured; i++) {
        const TuneMeasure *m = &e->measured[i];
        bool gemm = tune_op_is_gemm(e->op);
        FUZZ_CHECK(gemm ? m->c.tile_m >= 1 && m->c.tile_n >= 1 && m->c.kv_block == 0 : m->c.kv_block >= 1 || m->c.tile_m >= 1,
                   "a configuration of the wrong kind for %s", e->op);
        FUZZ_CHECK(!gemm || !m->c.tma || m->c.wgmma, "a TMA configuration without wgmma accepted");
        FUZZ_CHECK(!gemm || !m->c.ws || m->c.tma, "a warp-specialised configuration without TMA accepted");
        FUZZ_CHECK(isfinite(m->gflops) && m->gflops >= 0, "bad measurement");
        best |= tune_config_equal(&m->c, &e->best);
    }
    FUZZ_CHECK(best, "the best configuration is not among the measured");
}

/* tune_db_save → tune_db_load: the same entries (GFLOP/s are written to 0.1). */
static void check_saved(const TuneDb *db)
{
    char path[128], why[256];
    snprintf(path, sizeof path, "%s/tuning.yaml", fuzz_tmpdir());
    FUZZ_CHECK(tune_db_save(db, path, why, sizeof why), "cannot save: %s", why);
    FuzzDiag fd;
    fuzz_diag_open(&fd, path);
    TuneDb back;
    bool ok = tune_db_load(path, &back, &fd.d);
    fuzz_diag_close(&fd, !ok);
    FUZZ_CHECK(ok && back.n == db->n, "the saved database does not load back the same");
    FUZZ_CHECK(tune_db_matches(&back, &db->target, NULL, 0), "the target changed on the way");
    for (int i = 0; i < db->n; i++) {
        const TuneEntry *a = &db->e[i], *b = &back.e[i];
        FUZZ_CHECK(!strcmp(a->op, b->op) && a->dtype == b->dtype && a->n == b->n && a->k == b->k &&
                       a->groups == b->groups && a->tokens == b->tokens && tune_config_equal(&a->best, &b->best) &&
                       a->n_measured == b->n_measured,
                   "entry %d reads back different", i);
        for (int j = 0; j < a->n_measured; j++)
            FUZZ_CHECK(tune_config_equal(&a->measured[j].c, &b->measured[j].c) &&
                           fabs(a->measured[j].gflops - b->measured[j].gflops) <= 0.05 + 1e-9 * a->measured[j].gflops,
                       "entry %d tile %d reads back different", i, j);
    }
    tune_db_free(&back);
}

/* A schedule on an op parses, and for any T picks a configuration measured at some bucket. */
static void check_schedule(const IrInstr *i)
{
    const IrAttr *a = ir_attr_get(i, "tile_schedule");
    if (!a) return;
    TileSchedule s;
    FUZZ_CHECK(tile_schedule_parse(a->s, &s), "tile_schedule '%s' does not parse", a->s);
    int64_t nr = i->op == IR_OP_ATTENTION ? 0 : ir_attr_int(i, "tile_n");
    FUZZ_CHECK(s.nr == nr, "tile_schedule '%s' for tile_n %lld", a->s, (long long)nr);
    static const int64_t Ts[] = {1, 3, 16, 100, 512, 5000, 1 << 20};
    for (size_t k = 0; k < MOE_ARRAY_LEN(Ts); k++) {
        TuneConfig pick = tile_schedule_pick(&s, Ts[k]);
        bool found = false;
        for (int b = 0; b < s.n; b++)
            for (int c = 0; c < s.b[b].n; c++) found |= tune_config_equal(&s.b[b].c[c], &pick);
        FUZZ_CHECK(found, "tile_schedule '%s' picks what it never measured for T = %lld", a->s, (long long)Ts[k]);
    }
}

static void check_specialized(const TuneDb *db)
{
    IrModule *m = ir_lower_spec(&tiny);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .tuning = db};
    FuzzDiag fd;
    fuzz_diag_open(&fd, "tiny-moepp.yaml");
    FUZZ_CHECK(passes_run(m, &po, &fd.d), "the pipeline with this database broke the IR");
    fuzz_diag_close(&fd, false);
    for (const IrInstr *i = m->first; i; i = i->next) check_schedule(i);
    ir_module_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzDiag fd;
    fuzz_diag_open(&fd, "tuning.yaml");
    TuneDb db;
    bool ok = tune_db_load_string((const char *)data, size, &db, &fd.d);
    fuzz_diag_close(&fd, !ok);
    if (!ok) return 0;
    for (int i = 0; i < db.n; i++) check_entry(&db.e[i]);
    check_saved(&db);
    check_specialized(&db);
    tune_db_free(&db);
    return 0;
}
