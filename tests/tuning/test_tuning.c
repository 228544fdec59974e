/* test_tuning.c — the tuning database: save → load round trips keep every field, tune_db_matches names
 * what differs, and every bad/NAME.yaml fails to load with exactly bad/NAME.err.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "passes/passes.h"
#include "passes/tuning.h"
#include "passes/schedule.h"
#include "tests/tiny_specs.h"

#define BAD_DIR MOEPPC_SOURCE_DIR "/tests/tuning/bad"

/* A fresh temporary folder per test; removed with its files at the end. */
static char tmp_dir[64];

static int setup_tmp(void **state)
{
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/moeppc-tuning-XXXXXX");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
    DIR *dir = opendir(tmp_dir);
    struct dirent *de;
    char path[512];
    while (dir && (de = readdir(dir)))
        if (de->d_name[0] != '.') {
            snprintf(path, sizeof path, "%s/%s", tmp_dir, de->d_name);
            unlink(path);
        }
    if (dir) closedir(dir);
    return rmdir(tmp_dir);
}

static TuneTarget sample_target(void)
{
    TuneTarget t;
    memset(&t, 0, sizeof t);
    snprintf(t.cpu, sizeof t.cpu, "znver3");
    snprintf(t.isa, sizeof t.isa, "avx512");
    snprintf(t.llvm, sizeof t.llvm, "14.0.6");
    snprintf(t.compiler, sizeof t.compiler, MOEPPC_VERSION);
    t.features = hash_str("+avx512f,+avx512bw,+fma");
    return t;
}

static TuneEntry make_entry(const char *op, moe_dtype dt, int64_t n, int64_t k, int64_t groups, int64_t tokens,
                            int n_measured)
{
    TuneEntry e;
    memset(&e, 0, sizeof e);
    snprintf(e.op, sizeof e.op, "%s", op);
    e.dtype = dt, e.n = n, e.k = k, e.groups = groups, e.tokens = tokens;
    for (int i = 0; i < n_measured; i++) { /* values with one decimal survive %.1f exactly */
        TuneConfig c = {2 + i, 8 * (n_measured - i), i % 3, i % 4 ? 0 : 128 * i, i % 5 == 1 ? 16 * i : 0, 0,
                        i % 6 == 2 ? 2 + i % 5 : 0, i % 7 == 3, i % 4 == 1 ? 2 << i % 3 : 0, i % 7 == 3,
                        i % 7 == 3 && i % 2, 0, 0, 0};
        if (!strcmp(op, "attention")) c = (TuneConfig){.kv_block = 4 + i};
        e.measured[i] = (TuneMeasure){c, (double)(1000 + 37 * i) / 10.0};
    }
    e.n_measured = n_measured;
    e.best = e.measured[n_measured / 2].c;
    return e;
}

/* An entry of one measurement, its best. */
static void add_one(TuneDb *db, const char *op, moe_dtype dt, int64_t n, int64_t k, int64_t groups, int64_t tokens,
                    TuneConfig best, double gflops)
{
    TuneEntry e = make_entry(op, dt, n, k, groups, tokens, 0);
    e.best = best;
    e.measured[e.n_measured++] = (TuneMeasure){best, gflops};
    tune_db_add(db, &e);
}

static void load_ok(const char *path, TuneDb *db)
{
    Diag d = {stderr, NULL, 0};
    assert_true(tune_db_load(path, db, &d));
    assert_int_equal(d.n_errors, 0);
}

static void assert_same_db(const TuneDb *a, const TuneDb *b)
{
    assert_string_equal(a->target.cpu, b->target.cpu);
    assert_string_equal(a->target.isa, b->target.isa);
    assert_string_equal(a->target.llvm, b->target.llvm);
    assert_string_equal(a->target.compiler, b->target.compiler);
    assert_true(a->target.features == b->target.features);
    assert_int_equal(a->n, b->n);
    for (int i = 0; i < a->n; i++) { /* field by field: a struct's padding is not content (nor is .line) */
        const TuneEntry *x = &a->e[i], *y = &b->e[i];
        assert_string_equal(x->op, y->op);
        assert_true(x->dtype == y->dtype && x->n == y->n && x->k == y->k && x->groups == y->groups &&
                    x->tokens == y->tokens && x->act_bf16 == y->act_bf16 && x->amx == y->amx);
        assert_true(tune_config_equal(&x->best, &y->best));
        assert_int_equal(x->n_measured, y->n_measured);
        for (int m = 0; m < x->n_measured; m++) {
            assert_true(tune_config_equal(&x->measured[m].c, &y->measured[m].c));
            assert_true(x->measured[m].gflops == y->measured[m].gflops);
        }
    }
}

static char *read_text(const char *path)
{
    size_t len;
    char *t = file_read_all(path, &len);
    assert_non_null(t);
    return t;
}

static void test_round_trip(void **state)
{
    TuneDb db;
    memset(&db, 0, sizeof db);
    db.target = sample_target();
    TuneEntry e1 = make_entry("grouped_up", DT_F32, 8192, 1536, 16, 512, 3);
    TuneEntry e2 = make_entry("linear", DT_BF16, 4096, 4096, 1, 1, 1);
    TuneEntry e3 = make_entry("grouped_down", DT_F16, 1536, 8192, 16, 64, TUNE_MAX_MEASURED);
    TuneEntry e4 = make_entry("attention", DT_F32, 16, 64, 4, 512, 5);
    TuneEntry e5 = make_entry("route", DT_BF16, 20, 4096, 1, 16, 4);
    TuneEntry e6 = make_entry("linear", DT_BF16, 4096, 4096, 1, 1, 1); /* e2's key on the bf16 dot product */
    e6.act_bf16 = true;
    TuneEntry e7 = make_entry("linear", DT_BF16, 4096, 4096, 1, 1, 1); /* and on AMX tiles */
    e7.act_bf16 = e7.amx = true;
    e7.measured[0].c = e7.best = (TuneConfig){.tile_m = 16, .tile_n = 32, .kc = 256};
    e3.measured[5].gflops = 0.0;
    tune_db_add(&db, &e1);
    tune_db_add(&db, &e2);
    tune_db_add(&db, &e3);
    tune_db_add(&db, &e4);
    tune_db_add(&db, &e5);
    tune_db_add(&db, &e6);
    tune_db_add(&db, &e7);
    for (int i = 0; i < 40; i++) { /* grows past the first allocation */
        TuneEntry e = make_entry("linear", DT_F32, 64, 64, 1, i + 1, 2);
        tune_db_add(&db, &e);
    }
    char path[128], path2[128], why[256] = "";
    snprintf(path, sizeof path, "%s/db.yaml", tmp_dir);
    snprintf(path2, sizeof path2, "%s/db2.yaml", tmp_dir);
    assert_true(tune_db_save(&db, path, why, sizeof why));
    TuneDb back;
    load_ok(path, &back);
    assert_same_db(&db, &back);
    assert_int_equal(back.e[0].line, 6);
    assert_int_equal(back.e[1].line, 7);
    /* saving what was loaded writes the same bytes */
    assert_true(tune_db_save(&back, path2, why, sizeof why));
    char *t1 = read_text(path), *t2 = read_text(path2);
    assert_string_equal(t1, t2);
    assert_non_null(strstr(t1, "  - {op: grouped_up, dtype: f32, n: 8192, k: 1536, groups: 16, tokens: 512, "
                               "best: 3x16/u1/mc16/sk4, measured: {2x24: 100.0, 3x16/u1/mc16/sk4: 103.7, 4x8/u2/s4: 107.4}}\n"));
    assert_non_null(strstr(t1, "  - {op: attention, dtype: f32, n: 16, k: 64, groups: 4, tokens: 512, best: kv6, "
                               "measured: {kv4: 100.0, kv5: 103.7, kv6: 107.4, kv7: 111.1, kv8: 114.8}}\n"));
    assert_non_null(strstr(t1, "  - {op: linear, dtype: bf16, act: bf16, n: 4096, k: 4096, groups: 1, tokens: 1, "));
    assert_non_null(strstr(t1, "  - {op: linear, dtype: bf16, act: amx, n: 4096, k: 4096, groups: 1, tokens: 1, "
                               "best: 16x32/kc256, measured: {16x32/kc256: 100.0}}\n"));
    free(t1);
    free(t2);
    tune_db_free(&back);
    tune_db_free(&db);
    assert_null(db.e);
    assert_int_equal(db.n, 0);
}

/* An empty database, quoted names and an all-digit feature hash come back unchanged. */
static void test_round_trip_odd_target(void **state)
{
    TuneDb db;
    memset(&db, 0, sizeof db);
    db.target = sample_target();
    snprintf(db.target.cpu, sizeof db.target.cpu, "1.5 \"weird\" cpu: x");
    snprintf(db.target.isa, sizeof db.target.isa, "true");
    db.target.features = 0x0123456789012345ull;
    char path[128], why[256] = "";
    snprintf(path, sizeof path, "%s/empty.yaml", tmp_dir);
    assert_true(tune_db_save(&db, path, why, sizeof why));
    TuneDb back;
    load_ok(path, &back);
    assert_same_db(&db, &back);
    tune_db_free(&back);
}

static void test_header_example_loads(void **state)
{
    char path[128];
    snprintf(path, sizeof path, "%s/example.yaml", tmp_dir);
    const char *text = "moeppc_tuning: 1\n"
                       "compiler: \"0.1.0\"          # MOEPPC_VERSION of the tuner\n"
                       "llvm: \"14.0.6\"\n"
                       "target: {cpu: znver3, isa: avx512, features: 1a2b3c4d5e6f7081}   # features: hash\n"
                       "entries:\n"
                       "  - {op: grouped_up, dtype: f32, n: 8192, k: 1536, groups: 16, tokens: 512, best: 8x48/u2,\n"
                       "     measured: {8x48: 181.2, 4x96: 179.9, 8x48/u2: 183.0, 8x48/u2/kc512: 176.4}}   # GFLOP/s\n"
                       "  - {op: attention, dtype: f32, n: 16, k: 64, groups: 4, tokens: 1, best: kv32,\n"
                       "     measured: {kv16: 3.1, kv32: 3.4}}\n";
    char why[256];
    assert_true(file_write_atomic(path, text, strlen(text), why, sizeof why));
    TuneDb db;
    load_ok(path, &db);
    assert_string_equal(db.target.cpu, "znver3");
    assert_string_equal(db.target.isa, "avx512");
    assert_string_equal(db.target.llvm, "14.0.6");
    assert_string_equal(db.target.compiler, "0.1.0");
    assert_true(db.target.features == 0x1a2b3c4d5e6f7081ull);
    const TuneEntry *e = &db.e[0];
    assert_string_equal(e->op, "grouped_up");
    assert_int_equal(e->dtype, DT_F32);
    assert_true(e->n == 8192 && e->k == 1536 && e->groups == 16 && e->tokens == 512);
    assert_true(e->best.tile_m == 8 && e->best.tile_n == 48 && e->best.unroll == 2);
    assert_int_equal(e->n_measured, 4);
    assert_true(e->measured[1].c.tile_m == 4 && e->measured[1].c.tile_n == 96 && e->measured[1].gflops == 179.9);
    assert_true(e->measured[3].c.kc == 512 && e->measured[3].c.unroll == 2 && e->measured[3].gflops == 176.4);
    assert_int_equal(db.n, 2);
    assert_string_equal(db.e[1].op, "attention");
    assert_true(db.e[1].best.kv_block == 32 && db.e[1].measured[0].c.kv_block == 16);
    assert_int_equal(e->line, 6);
    tune_db_free(&db);
}

/* Every prefix of a good database either loads or fails with diagnostics; none crashes or leaks. */
static void test_truncations(void **state)
{
    char path[128], why[256];
    snprintf(path, sizeof path, "%s/cut.yaml", tmp_dir);
    const char *text = "moeppc_tuning: 1\ncompiler: \"0.1.0\"\nllvm: \"14.0.6\"\n"
                       "target: {cpu: znver3, isa: avx512, features: 1a2b3c4d5e6f7081}\nentries:\n"
                       "  - {op: grouped_up, dtype: f32, n: 8192, k: 1536, groups: 16, tokens: 512, best: 8x48,\n"
                       "     measured: {8x48: 181.2, 4x96: 179.9, 6x64: 178.0}}\n";
    int n_loaded = 0;
    for (size_t cut = 0; cut <= strlen(text); cut++) {
        assert_true(file_write_atomic(path, text, cut, why, sizeof why));
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);
        Diag d = {f, "cut.yaml", 0};
        TuneDb db;
        bool ok = tune_db_load(path, &db, &d);
        fclose(f);
        assert_true(ok ? d.n_errors == 0 && len == 0 : d.n_errors > 0 && db.n == 0 && db.e == NULL);
        n_loaded += ok;
        tune_db_free(&db);
        free(out);
    }
    assert_true(n_loaded >= 1); /* the whole text (and the cut before its final newline) */
}

static void test_save_fails_cleanly(void **state)
{
    TuneDb db;
    memset(&db, 0, sizeof db);
    db.target = sample_target();
    char why[256] = "";
    assert_false(tune_db_save(&db, "/nonexistent-dir/db.yaml", why, sizeof why));
    assert_non_null(strstr(why, "/nonexistent-dir/db.yaml"));
}

static void test_missing_file(void **state)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    Diag d = {f, NULL, 0};
    TuneDb db;
    assert_false(tune_db_load("/nonexistent-dir/db.yaml", &db, &d));
    fclose(f);
    assert_string_equal(text, "/nonexistent-dir/db.yaml: error: cannot read the tuning database: "
                              "No such file or directory\n");
    assert_null(db.e);
    assert_int_equal(db.n, 0);
    free(text);
}

static void test_matches(void **state)
{
    TuneDb db;
    memset(&db, 0, sizeof db);
    db.target = sample_target();
    TuneTarget t = sample_target();
    char why[512] = "junk";
    assert_true(tune_db_matches(&db, &t, why, sizeof why));
    assert_string_equal(why, "");
    assert_true(tune_db_matches(&db, &t, NULL, 0));

    snprintf(t.cpu, sizeof t.cpu, "icelake");
    assert_false(tune_db_matches(&db, &t, why, sizeof why));
    assert_string_equal(why, "tuned for cpu znver3 (avx512) with LLVM 14.0.6 by moeppc 0.1.0; "
                             "this is cpu icelake (avx512) with LLVM 14.0.6 by moeppc 0.1.0 (differs: cpu)");

    t = sample_target();
    snprintf(t.llvm, sizeof t.llvm, "17.0.1");
    snprintf(t.compiler, sizeof t.compiler, "0.2.0");
    assert_false(tune_db_matches(&db, &t, why, sizeof why));
    assert_string_equal(why, "tuned for cpu znver3 (avx512) with LLVM 14.0.6 by moeppc 0.1.0; "
                             "this is cpu znver3 (avx512) with LLVM 17.0.1 by moeppc 0.2.0 "
                             "(differs: LLVM version, compiler version)");

    t = sample_target();
    db.target.features = 0x1a2b3c4d5e6f7081ull;
    t.features = 0x1a2b3c4d5e6f7082ull;
    snprintf(t.isa, sizeof t.isa, "avx2");
    assert_false(tune_db_matches(&db, &t, why, sizeof why));
    assert_string_equal(why, "tuned for cpu znver3 (avx512, features 1a2b3c4d5e6f7081) with LLVM 14.0.6 by moeppc "
                             "0.1.0; this is cpu znver3 (avx2, features 1a2b3c4d5e6f7082) with LLVM 14.0.6 by moeppc "
                             "0.1.0 (differs: isa, cpu features)");
    assert_false(tune_db_matches(&db, &t, NULL, 0));

    /* a host's vector features match a database's; so does its whole string an older database's */
    t = sample_target();
    t.features = 0x1a2b3c4d5e6f7081ull, t.features_all = 0x77ull;
    assert_true(tune_db_matches(&db, &t, NULL, 0));
    t.features = 0x1a2b3c4d5e6f7082ull, t.features_all = 0x1a2b3c4d5e6f7081ull;
    assert_true(tune_db_matches(&db, &t, NULL, 0));
    t.features_all = 0x77ull;
    assert_false(tune_db_matches(&db, &t, NULL, 0));
    db.target.features = 0;
    t.features = 0x1a2b3c4d5e6f7082ull, t.features_all = 0; /* (0: no whole string, not a hash of one) */
    assert_false(tune_db_matches(&db, &t, NULL, 0));
}

/* One golden case: loading bad/NAME.yaml fails with exactly bad/NAME.err; false (printed) if not. */
static bool check_bad_case(const char *name)
{
    char yaml[512], err[512], shown[128];
    snprintf(yaml, sizeof yaml, BAD_DIR "/%s.yaml", name);
    snprintf(err, sizeof err, BAD_DIR "/%s.err", name);
    snprintf(shown, sizeof shown, "%s.yaml", name);
    size_t len = 0, elen = 0;
    char *text = NULL, *expected = file_read_all(err, &elen);
    FILE *f = open_memstream(&text, &len);
    Diag d = {f, shown, 0};
    TuneDb db;
    memset(&db, 0xab, sizeof db); /* load must leave it empty whatever it held */
    bool loaded = tune_db_load(yaml, &db, &d);
    fclose(f);
    bool ok = !loaded && d.n_errors > 0 && db.e == NULL && db.n == 0 && expected && strcmp(text, expected) == 0;
    if (!ok)
        fprintf(stderr, "bad/%s.yaml: loaded=%d errors=%d\n--- expected (%s)\n%s--- got\n%s", name, loaded,
                d.n_errors, err, expected ? expected : "(missing)\n", text);
    free(text);
    free(expected);
    return ok;
}

static void test_bad_databases(void **state)
{
    DIR *dir = opendir(BAD_DIR);
    assert_non_null(dir);
    struct dirent *de;
    int n_cases = 0, n_failed = 0;
    while ((de = readdir(dir))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".yaml") != 0) continue;
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)(l - 5), de->d_name);
        n_cases++;
        if (!check_bad_case(name)) n_failed++;
    }
    closedir(dir);
    assert_int_equal(n_failed, 0);
    assert_true(n_cases >= 9);
}

/* Every database shipped in tuning/ loads, with entries, each entry's best among its measurements;
 * a GPU one (gpu-*.yaml) names an sm_90 GPU and puts its T = 4096 grouped GEMMs on wgmma with the TMA
 * (the tiles the H200 measured fastest), a CPU one (cpu-*.yaml) names an x86 ISA. */
static void test_shipped_databases(void **state)
{
    (void)state;
    DIR *dir = opendir(MOEPPC_SOURCE_DIR "/tuning");
    assert_non_null(dir);
    struct dirent *de;
    int n_cpu = 0, n_gpu = 0;
    while ((de = readdir(dir))) {
        size_t l = strlen(de->d_name);
        if (l < 6 || strcmp(de->d_name + l - 5, ".yaml") != 0) continue;
        char path[512];
        snprintf(path, sizeof path, "%s/tuning/%s", MOEPPC_SOURCE_DIR, de->d_name);
        TuneDb db = {0};
        Diag d = {.out = stderr, .file = path};
        assert_true(tune_db_load(path, &db, &d));
        assert_true(db.n > 0);
        bool gpu = strncmp(de->d_name, "gpu-", 4) == 0, wgmma_tma = false;
        assert_true(gpu || strncmp(de->d_name, "cpu-", 4) == 0);
        for (int i = 0; i < db.n; i++) {
            const TuneEntry *e = &db.e[i];
            bool found = false;
            for (int j = 0; j < e->n_measured; j++) found |= tune_config_equal(&e->measured[j].c, &e->best);
            if (!found) fprintf(stderr, "%s:%d: the best of %s is not among its measurements\n", path, e->line, e->op);
            assert_true(found);
            wgmma_tma |= e->tokens == 4096 && strncmp(e->op, "grouped_", 8) == 0 && e->best.wgmma && e->best.tma;
        }
        if (gpu) assert_string_equal(db.target.isa, "sm_90"), assert_true(wgmma_tma), n_gpu++;
        else assert_true(strcmp(db.target.isa, "sm_90") != 0), n_cpu++;
        tune_db_free(&db);
    }
    closedir(dir);
    assert_true(n_cpu >= 4 && n_gpu >= 1);
}

/* A GPU database: its identity (GPU name, sm, NVRTC) must match, and its entries give the grouped
 * GEMMs' tile schedules by the weight's shape (other shapes change nothing): per bucket the winners'
 * measurements, and per T the pick by measured neighbours. */
static void test_gpu_tiles(void **state)
{
    (void)state;
    ModelSpec s;
    assert_true(tiny_spec_load("tiny-bf16", &s));
    IrModule *m = ir_lower_spec(&s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true};
    Diag d = {stderr, "tiny-bf16", 0};
    assert_true(passes_run(m, &po, &d));
    const IrInstr *up = m->first, *down = m->first;
    while (up->op != IR_OP_MOE_GROUPED_UP) up = up->next;
    while (down->op != IR_OP_MOE_GROUPED_DOWN) down = down->next;
    TuneDb db;
    memset(&db, 0, sizeof db);
    tune_gpu_target(&db.target, "NVIDIA H200", "sm_90", "NVRTC 13.0");
    TuneTarget same, other;
    tune_gpu_target(&same, "NVIDIA H200", "sm_90", "NVRTC 13.0");
    tune_gpu_target(&other, "NVIDIA H100 80GB HBM3", "sm_90", "NVRTC 13.0");
    assert_true(tune_db_matches(&db, &same, NULL, 0));
    assert_false(tune_db_matches(&db, &other, NULL, 0));
    const IrValue *wu = up->in[3], *wd = down->in[5];
    const int64_t buckets[] = {64, 512, 4096};
    for (int b = 0; b < 3; b++)
        for (int kind = 0; kind < 2; kind++) {
            const IrValue *w = kind ? wd : wu;
            TuneEntry e;
            memset(&e, 0, sizeof e);
            snprintf(e.op, sizeof e.op, "%s", kind ? "grouped_down" : "grouped_up");
            e.dtype = w->type.dtype, e.n = w->type.dims[0], e.k = w->type.dims[1];
            e.groups = ir_attr_int(kind ? down : up, "experts"), e.tokens = buckets[b];
            e.best = (TuneConfig){.tile_m = 32 * (b + 1), .tile_n = 64 + 64 * kind, .kc = 16 << b};
            e.measured[e.n_measured++] = (TuneMeasure){e.best, 100.0};
            if (b < 2) /* the 64 and 512 buckets also measured each other's winner: 90 at 64, 50 at 512 */
                e.measured[e.n_measured++] = (TuneMeasure){{.tile_m = 32 * (2 - b), .tile_n = 64 + 64 * kind,
                                                            .kc = 16 << (1 - b)}, b ? 50.0 : 90.0};
            tune_db_add(&db, &e);
        }
    TuneEntry stranger = db.e[0];
    stranger.n += 8, stranger.tokens = 512, stranger.best.tile_m = 128; /* another shape: not this model's */
    stranger.measured[0].c = stranger.best;
    tune_db_add(&db, &stranger);
    /* attention: the per-query form at T = 1, a tiled one at 512 (keyed heads, head_dim, kv_heads
     * and the model's dtype); entries of other heads or of an f32 model are not this model's */
    const IrInstr *att = m->first;
    while (att->op != IR_OP_ATTENTION) att = att->next;
    int64_t H = ir_attr_int(att, "heads"), hd = att->in[0]->type.dims[1] / H, kvh = ir_attr_int(att, "kv_heads");
    moe_dtype adt = tune_attention_dtype(att); /* the model's (its f32 activations are not the key: */
    assert_int_equal(adt, DT_BF16);              /* an f32 entry of its shape is another model's)      */
    add_one(&db, "attention", adt, H, hd, kvh, 1, (TuneConfig){.tile_m = 1, .tile_n = 64}, 10.0);
    add_one(&db, "attention", adt, H, hd, kvh, 512, (TuneConfig){.tile_m = 64, .tile_n = 8, .kv_block = 16}, 10.0);
    add_one(&db, "attention", adt, H + 1, hd, kvh, 512, (TuneConfig){.tile_m = 64, .tile_n = 8}, 10.0);
    add_one(&db, "attention", DT_F32, H, hd, kvh, 64, (TuneConfig){.tile_m = 16, .tile_n = 8}, 10.0);
    /* the router: fused with 128 threads at T = 1, its linears on 32x16/kc16 at 512 (keyed by W1) */
    const IrInstr *route = m->first;
    while (route->op != IR_OP_MOE_ROUTE) route = route->next;
    const IrValue *w1 = route->in[1];
    add_one(&db, "route", w1->type.dtype, w1->type.dims[0], w1->type.dims[1], 1, 1, (TuneConfig){.tile_m = 1, .tile_n = 128}, 5.0);
    add_one(&db, "route", w1->type.dtype, w1->type.dims[0], w1->type.dims[1], 1, 512,
            (TuneConfig){.tile_m = 32, .tile_n = 16, .kc = 16}, 5.0);
    const char *sched[4] = {NULL, NULL, NULL, NULL};
    assert_int_equal(tune_db_gpu_schedules(&db, m, sched, &m->arena), 4);
    assert_string_equal(sched[2], "-1;1:1x64@10.0;512:64x8/kv16@10.0");
    assert_string_equal(sched[3], "-1;1:1x128@5.0;512:32x16/kc16@5.0");
    assert_string_equal(sched[0], "-1;64:32x64/kc16@100.0,64x64/kc32@90.0;512:64x64/kc32@100.0,32x64/kc16@50.0;"
                                  "4096:96x64/kc64@100.0");
    TileSchedule ts;
    assert_true(tile_schedule_parse(sched[1], &ts));
    assert_int_equal(ts.nr, TILE_SCHED_GPU);
    /* per T: a bucket's best; between 64 and 512 the winner whose GFLOP/s, interpolated in log T, is
     * higher (T = 80: 32x128 at 94.6 against 91.1; T = 200: 64x128 at 95.5 against 72.6) */
    const struct { int64_t T; int tm, kc; } want[] = {{16, 32, 16}, {64, 32, 16}, {80, 32, 16}, {200, 64, 32},
                                                      {512, 64, 32}, {1000, 64, 32}, {4096, 96, 64}, {9999, 96, 64}};
    for (size_t q = 0; q < MOE_ARRAY_LEN(want); q++) {
        TuneConfig c = tile_schedule_pick(&ts, want[q].T);
        assert_true(c.tile_m == want[q].tm && c.tile_n == 128 && c.kc == want[q].kc);
    }
    /* save and load keep a GPU database as it was */
    char path[128], why[256];
    snprintf(path, sizeof path, "%s/gpu.yaml", tmp_dir);
    assert_true(tune_db_save(&db, path, why, sizeof why));
    TuneDb back;
    load_ok(path, &back);
    assert_same_db(&db, &back);
    char *text = read_text(path);
    assert_non_null(strstr(text, "target: {cpu: \"NVIDIA H200\", isa: sm_90, features: "));
    assert_non_null(strstr(text, "best: 64x64/kc32, measured: {64x64/kc32: 100.0, 32x64/kc16: 50.0}"));
    free(text);
    tune_db_free(&back);
    tune_db_free(&db);
    ir_module_free(m);
}

/* The decode MLP in a GPU database (grouped_down at 1 token, RxW/mlp): a bucket's schedule names its best
 * MLP and its best GEMV beside the winners, won or not (the executor then knows whether the two
 * GEMVs beat the MLP, and has a GEMV where it does not run), no other MLP; its text parses back;
 * where it wins, the bucket's pick is it. */
static void test_gpu_mlp(void **state)
{
    (void)state;
    TuneConfig gemv = {.tile_m = 1, .tile_n = 4, .unroll = 4}, m16 = {.tile_m = 16, .tile_n = 8, .mlp = 1},
               m32 = {.tile_m = 32, .tile_n = 8, .mlp = 1}, tile = {.tile_m = 64, .tile_n = 128, .kc = 32};
    char name[64];
    tune_config_format(&m16, name, sizeof name);
    assert_string_equal(name, "16x8/mlp");
    TuneConfig back;
    assert_true(tune_config_parse("16x8/mlp", &back) && tune_config_equal(&back, &m16));
    assert_false(tune_config_parse("16x8/mlp/mlp", &back));
    for (int wins = 0; wins < 2; wins++) {
        TuneEntry e1 = make_entry("grouped_down", DT_BF16, 64, 128, 4, 1, 0), e64 = make_entry("grouped_down", DT_BF16,
                                                                                              64, 128, 4, 64, 0);
        e1.measured[e1.n_measured++] = (TuneMeasure){gemv, 10.0};
        e1.measured[e1.n_measured++] = (TuneMeasure){m16, wins ? 12.0 : 9.0};
        e1.measured[e1.n_measured++] = (TuneMeasure){m32, 8.0};
        e64.measured[e64.n_measured++] = (TuneMeasure){tile, 100.0};
        const TuneEntry *found[2] = {&e64, &e1};
        Arena a = {0};
        char *text = tile_schedule_format(found, 2, TILE_SCHED_GPU, &a);
        assert_string_equal(text, wins ? "-1;1:1x4/u4@10.0,16x8/mlp@12.0;64:64x128/kc32@100.0"
                                       : "-1;1:1x4/u4@10.0,16x8/mlp@9.0;64:64x128/kc32@100.0");
        assert_null(strstr(text, "32x8")); /* (the MLPs after the best are not named) */
        TileSchedule ts;
        assert_true(tile_schedule_parse(text, &ts));
        TuneConfig at1 = tile_schedule_pick(&ts, 1);
        assert_true(tune_config_equal(&at1, wins ? &m16 : &gemv));
        arena_free(&a);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_round_trip_odd_target, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_header_example_loads, setup_tmp, teardown_tmp),
        cmocka_unit_test_setup_teardown(test_truncations, setup_tmp, teardown_tmp),
        cmocka_unit_test(test_save_fails_cleanly),
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_matches),
        cmocka_unit_test(test_bad_databases),
        cmocka_unit_test_setup_teardown(test_gpu_tiles, setup_tmp, teardown_tmp),
        cmocka_unit_test(test_shipped_databases),
        cmocka_unit_test(test_gpu_mlp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
