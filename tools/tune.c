/* tune.c — `moeppc tune`: measures, for every GEMM shape of a spec and every token bucket, the register
 * tiles this CPU can hold, checks each against the rule's own tile, and writes the winners (and what
 * was measured) to a tuning database (passes/tuning.h) that build, run, bench and compile use. */
#include "bench/probe.h"
#include "codegen/llvm/cg_internal.h"
#include "passes/passes.h"
#include "passes/tuning.h"
#include "tools/commands.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TUNE_USAGE "tune SPEC -o DB [--target cpu] [--tokens 1,16,64,512,4096] [--budget SECONDS] [--threads N] " \
                   "[--dtype f32|bf16|f16]"

typedef struct {
    char op[24];
    moe_dtype dt;
    int64_t n, k, groups, top_k;
    int rule_m, rule_n;
} Shape;

typedef struct {
    CgJit *jit;
    CgPool *pool;
    CgWork work;
    double deadline, t0, budget;
    int tried, total;
} Tuner;

/* Distinct GEMM shapes of the optimised IR, with the tile the rule gave them. */
static int collect_shapes(const IrModule *m, const ModelSpec *s, Shape *out, int max)
{
    int n = 0;
    for (const IrInstr *i = m->first; i && n < max; i = i->next) {
        bool lin = i->op == IR_OP_LINEAR, up = i->op == IR_OP_MOE_GROUPED_UP;
        if (!lin && !up && i->op != IR_OP_MOE_GROUPED_DOWN) continue;
        const IrValue *w = lin ? i->in[1] : i->in[up ? 3 : 5];
        Shape sh = {.dt = w->type.dtype, .n = w->type.dims[0], .k = w->type.dims[1],
                    .groups = lin ? 1 : ir_attr_int(i, "experts"), .top_k = s->top_k,
                    .rule_m = (int)ir_attr_int(i, "tile_m"), .rule_n = (int)ir_attr_int(i, "tile_n")};
        snprintf(sh.op, sizeof sh.op, "%s", lin ? "linear" : up ? "grouped_up" : "grouped_down");
        bool seen = false;
        for (int k = 0; k < n; k++)
            seen |= strcmp(out[k].op, sh.op) == 0 && out[k].dt == sh.dt && out[k].n == sh.n && out[k].k == sh.k &&
                    out[k].groups == sh.groups;
        if (!seen) out[n++] = sh;
    }
    return n;
}

/* The tiles worth trying: the rule's first, then heights × widths this ISA holds in registers. */
static int candidates(const Tuner *t, const Shape *sh, int *mr, int *nr, int max)
{
    static const int ms[] = {1, 2, 4, 6, 8, 12}, ns[] = {16, 32, 48, 64, 96};
    int n = 0;
    mr[n] = sh->rule_m, nr[n++] = sh->rule_n;
    for (size_t a = 0; a < MOE_ARRAY_LEN(ns); a++)
        for (size_t b = 0; b < MOE_ARRAY_LEN(ms) && n < max; b++) {
            CgKernelConfig c = cg_kernel_config_tile(t->jit, sh->dt, ms[b], ns[a]);
            if (c.mr != ms[b] || c.nr != ns[a] || (ms[b] == sh->rule_m && ns[a] == sh->rule_n)) continue;
            mr[n] = ms[b], nr[n++] = ns[a];
        }
    return n;
}

typedef struct {
    const Shape *sh;
    int64_t T, rows;          /* tokens; rows of A (slots for grouped) */
    void *w;                  /* groups × [N, K] weights in sh->dt */
    float *x, *out;
    int64_t *off;
    int32_t *perm;
    float *gw;
} Problem;

static void problem_init(Problem *p, const Shape *sh, int64_t T, uint64_t seed)
{
    moe_rng r;
    rng_seed(&r, seed);
    *p = (Problem){.sh = sh, .T = T, .rows = strcmp(sh->op, "linear") == 0 ? T : T * sh->top_k};
    size_t wn = (size_t)(sh->groups * sh->n * sh->k), xk = (size_t)sh->k; /* A is [rows, K] for every shape */
    p->w = xmalloc(wn * dtype_size(sh->dt));
    for (size_t j = 0; j < wn; j++) dtype_store(sh->dt, p->w, j, (2 * rng_uniform(&r) - 1) / sqrt((double)sh->k));
    p->x = xmalloc((size_t)p->rows * xk * sizeof *p->x);
    for (size_t j = 0; j < (size_t)p->rows * xk; j++) p->x[j] = (float)(2 * rng_uniform(&r) - 1);
    size_t outn = (size_t)(p->rows * sh->n);
    p->out = xcalloc(outn, sizeof *p->out);
    p->off = xmalloc((size_t)(sh->groups + 1) * sizeof *p->off);
    for (int64_t g = 0; g <= sh->groups; g++) p->off[g] = g * p->rows / sh->groups; /* uniform routing */
    p->perm = xmalloc((size_t)p->rows * sizeof *p->perm);
    p->gw = xmalloc((size_t)p->rows * sizeof *p->gw);
    for (int64_t s = 0; s < p->rows; s++) p->perm[s] = (int32_t)(s % T), p->gw[s] = 0.5f;
}

static void problem_free(Problem *p)
{
    free(p->w);
    free(p->x);
    free(p->out);
    free(p->off);
    free(p->perm);
    free(p->gw);
}

/* What problem_init and tune_one allocate for a shape at T tokens: the weights and their packed copy
 * (f32 at most), A, the output and the reference output. In double: a hostile spec's shapes overflow. */
static double problem_bytes(const Shape *sh, int64_t T)
{
    double rows = (double)T * (strcmp(sh->op, "linear") == 0 ? 1.0 : (double)sh->top_k);
    double w = (double)sh->groups * (double)sh->n * (double)sh->k;
    return w * ((double)dtype_size(sh->dt) + 4.0) + 4.0 * rows * ((double)sh->k + 2.0 * (double)sh->n);
}

/* One run of the shape's driver with kernel k on weights packed for its NR. */
static void run_once(Tuner *t, const Problem *p, const CgKernel *k, const CgPackedB *b)
{
    CgBlocking blk = cg_blocking_default(k);
    const Shape *sh = p->sh;
    CgRouting r = {sh->groups, p->off, p->perm, p->gw};
    if (strcmp(sh->op, "linear") == 0) cg_gemm(k, &blk, t->pool, &t->work, p->rows, p->x, sh->k, b, p->out, sh->n, false);
    else if (strcmp(sh->op, "grouped_up") == 0) cg_moe_up_swiglu(k, &blk, t->pool, &t->work, &r, p->x, b, p->out);
    else {
        memset(p->out, 0, (size_t)(p->T * sh->n) * sizeof *p->out);
        cg_moe_down_scatter(k, &blk, t->pool, &t->work, &r, p->x, b, p->out);
    }
}

typedef struct {
    int nr;
    CgPackedB *b;             /* [groups] */
} Packed;

static void pack_for(Packed *pk, const Problem *p, int nr)
{
    const Shape *sh = p->sh;
    if (pk->b && pk->nr == nr) return;
    for (int64_t g = 0; pk->b && g < sh->groups; g++) cg_packed_b_free(&pk->b[g]);
    free(pk->b);
    pk->b = xcalloc((size_t)sh->groups, sizeof *pk->b);
    pk->nr = nr;
    size_t gbytes = (size_t)(sh->n * sh->k) * dtype_size(sh->dt);
    for (int64_t g = 0; g < sh->groups; g++) {
        const char *w = (const char *)p->w + (size_t)g * gbytes;
        if (strcmp(sh->op, "grouped_up") == 0) cg_pack_b_swiglu(&pk->b[g], w, sh->dt, sh->n, sh->k, nr);
        else cg_pack_b(&pk->b[g], w, sh->dt, sh->n, sh->k, nr);
    }
}

static double out_rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t j = 0; j < n; j++) {
        num = fmax(num, fabs((double)a[j] - (double)b[j]));
        den = fmax(den, fabs((double)b[j]));
    }
    return den > 0 ? num / den : num;
}

/* Median GFLOP/s of tile (mr, nr) on p after a warm-up; -1 if it is wrong against ref. */
static double measure(Tuner *t, Problem *p, Packed *pk, int mr, int nr, const float *ref, size_t n_out)
{
    CgKernelConfig cfg = cg_kernel_config_tile(t->jit, p->sh->dt, mr, nr);
    char err[512];
    const CgKernel *k = cg_jit_kernel(t->jit, &cfg, NULL, err, sizeof err);
    if (!k) return -1;
    pack_for(pk, p, nr);
    run_once(t, p, k, pk->b);
    if (ref && out_rel_err(p->out, ref, n_out) > 1e-5) {
        fprintf(stderr, "\nmoeppc tune: warning: tile %dx%d disagrees with the rule's tile on %s; discarded\n", mr, nr,
                p->sh->op);
        return -1;
    }
    double s[9];
    int reps = 0;
    for (double t0 = bench_now_s(); reps < 9 && (reps < 3 || bench_now_s() - t0 < 0.2); reps++) {
        double a = bench_now_s();
        run_once(t, p, k, pk->b);
        s[reps] = bench_now_s() - a;
    }
    qsort(s, (size_t)reps, sizeof *s, bench_cmp_double);
    return 2e-9 * (double)p->rows * (double)p->sh->n * (double)p->sh->k / s[reps / 2];
}

static void progress(const Tuner *t, const Shape *sh, int64_t T, const TuneEntry *e)
{
    double left = t->deadline - bench_now_s();
    double best = 0;
    for (int c = 0; c < e->n_measured; c++) best = fmax(best, e->measured[c].gflops);
    fprintf(stderr, "\r[tune] %-12s %lldx%lldx%lld T=%-5lld %3d/%d configs  best %dx%d %7.1f GFLOP/s  %4.0f s left ",
            sh->op, (long long)sh->n, (long long)sh->k, (long long)sh->groups, (long long)T, t->tried, t->total,
            e->best_m, e->best_n, best, left > 0 ? left : 0);
    fflush(stderr);
}

/* Measure every candidate tile of one shape at T tokens, the rule's first; false if the budget ran out
 * before the rule's own tile was measured (then no entry). */
static bool tune_one(Tuner *t, const Shape *sh, int64_t T, TuneEntry *e)
{
    int mr[64], nr[64], nc = candidates(t, sh, mr, nr, 64);
    Problem p;
    problem_init(&p, sh, T, hash_str(sh->op) ^ (uint64_t)T);
    Packed pk = {0};
    size_t n_out = (size_t)(p.rows * sh->n);
    float *ref = NULL;
    *e = (TuneEntry){.dtype = sh->dt, .n = sh->n, .k = sh->k, .groups = sh->groups, .tokens = T};
    snprintf(e->op, sizeof e->op, "%s", sh->op);
    double best = -1;
    for (int c = 0; c < nc && e->n_measured < TUNE_MAX_MEASURED; c++) {
        if (c > 0 && bench_now_s() > t->deadline) break;
        double g = measure(t, &p, &pk, mr[c], nr[c], ref, n_out);
        if (c == 0) ref = memcpy(xmalloc(n_out * sizeof *ref), p.out, n_out * sizeof *ref);
        t->tried++;
        if (g < 0) continue;
        e->measured[e->n_measured++] = (TuneMeasure){mr[c], nr[c], g};
        if (g > best) best = g, e->best_m = mr[c], e->best_n = nr[c];
        progress(t, sh, T, e);
    }
    for (int64_t g = 0; pk.b && g < sh->groups; g++) cg_packed_b_free(&pk.b[g]);
    free(pk.b);
    free(ref);
    problem_free(&p);
    return e->n_measured > 0;
}

/* What this host is, as a tuning database records it. */
static void host_identity(const CgJit *jit, TuneTarget *t)
{
    const CgTarget *ct = cg_jit_target(jit);
    memset(t, 0, sizeof *t);
    snprintf(t->cpu, sizeof t->cpu, "%s", ct->cpu);
    snprintf(t->isa, sizeof t->isa, "%s", cg_isa_name(ct->isa));
    snprintf(t->llvm, sizeof t->llvm, "%s", cg_llvm_version());
    snprintf(t->compiler, sizeof t->compiler, "%s", MOEPPC_VERSION);
    t->features = hash_str(ct->features);
}

bool tuning_load_for_host(const char *path, TuneDb *db)
{
    Diag d = {stderr, path, 0};
    if (!tune_db_load(path, db, &d)) return false;
    char err[512], why[512];
    CgJit *jit = cg_jit_new(CG_ISA_AUTO, err, sizeof err);
    TuneTarget host;
    if (jit) host_identity(jit, &host);
    cg_jit_free(jit);
    if (!jit || !tune_db_matches(db, &host, why, sizeof why)) {
        fprintf(stderr, "%s: warning: %s; its entries are ignored and the rule decides\n", path, jit ? why : err);
        tune_db_free(db);
        memset(db, 0, sizeof *db);
    }
    return true;
}

typedef struct {
    const char *spec, *out;
    int64_t tokens[16];
    int n_tokens, threads;
    double budget;
    bool dtype_set;
    moe_dtype dtype;
} TuneArgs;

static int parse_tune_args(int argc, char **argv, TuneArgs *a)
{
    *a = (TuneArgs){.tokens = {1, 16, 64, 512, 4096}, .n_tokens = 5, .threads = 2, .budget = 60};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end;
        if (strcmp(o, "--help") == 0) return printf("usage: moeppc %s\n", TUNE_USAGE), -1;
        if (o[0] == '-' && !v) return usage_error("tune", TUNE_USAGE, "option '%s' needs a value", o);
        if (strcmp(o, "-o") == 0) a->out = v, i++;
        else if (strcmp(o, "--target") == 0) {
            if (strcmp(v, "cpu") != 0) return usage_error("tune", TUNE_USAGE, "--target: only 'cpu' can be tuned here, found '%s'", v);
            i++;
        } else if (strcmp(o, "--budget") == 0) {
            a->budget = strtod(v, &end);
            if (*end || !(a->budget >= 0 && a->budget < 1e6)) return usage_error("tune", TUNE_USAGE, "--budget: expected seconds, found '%s'", v);
            i++;
        } else if (strcmp(o, "--threads") == 0) {
            a->threads = (int)strtol(v, &end, 10);
            if (*end || a->threads < 1 || a->threads > 256) return usage_error("tune", TUNE_USAGE, "--threads: expected 1..256, found '%s'", v);
            i++;
        } else if (strcmp(o, "--dtype") == 0) {
            if (!dtype_parse(v, &a->dtype) || a->dtype > DT_F16) return usage_error("tune", TUNE_USAGE, "--dtype: expected f32, bf16 or f16, found '%s'", v);
            a->dtype_set = true, i++;
        } else if (strcmp(o, "--tokens") == 0) {
            a->n_tokens = 0;
            for (const char *q = v; *q && a->n_tokens < 16; q = *end ? end + 1 : end) {
                long long T = strtoll(q, &end, 10);
                if (end == q || T < 1 || T > 65536 || (*end && *end != ',')) return usage_error("tune", TUNE_USAGE, "--tokens: expected a list like 1,64,512, found '%s'", v);
                a->tokens[a->n_tokens++] = T;
            }
            i++;
        } else if (o[0] == '-') return usage_error("tune", TUNE_USAGE, "unknown option '%s'", o);
        else if (!a->spec) a->spec = o;
        else return usage_error("tune", TUNE_USAGE, "unexpected argument '%s'", o);
    }
    if (!a->spec) return usage_error("tune", TUNE_USAGE, "%s", "missing SPEC");
    if (!a->out) return usage_error("tune", TUNE_USAGE, "%s", "missing -o DB");
    return 0;
}

static void tune_all(Tuner *t, const TuneArgs *a, const Shape *sh, int n_sh, TuneDb *db)
{
    for (int b = 0; b < a->n_tokens; b++)
        for (int s = 0; s < n_sh && bench_now_s() < t->deadline; s++) {
            TuneEntry e;
            if (tune_one(t, &sh[s], a->tokens[b], &e)) tune_db_add(db, &e);
        }
    fputc('\n', stderr);
}

/* The largest problem must fit in the available memory: refused before anything is allocated. */
static bool problems_fit(const Shape *sh, int n_sh, const TuneArgs *a)
{
    double most = 0, have = mem_available_bytes();
    int at = 0;
    int64_t at_t = 1;
    for (int k = 0; k < n_sh; k++)
        for (int b = 0; b < a->n_tokens; b++)
            if (problem_bytes(&sh[k], a->tokens[b]) > most)
                most = problem_bytes(&sh[k], a->tokens[b]), at = k, at_t = a->tokens[b];
    if (most <= 0.9 * have) return true;
    char need[32], avail[32];
    str_bytes(most, need, sizeof need), str_bytes(have, avail, sizeof avail);
    fprintf(stderr, "moeppc tune: error: not enough memory: %s %lldx%lld (%lld groups) at T = %lld needs %s, and %s is "
            "available\n", sh[at].op, (long long)sh[at].n, (long long)sh[at].k, (long long)sh[at].groups,
            (long long)at_t, need, avail);
    return false;
}

int cmd_tune(int argc, char **argv)
{
    TuneArgs a;
    int rc = parse_tune_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    ModelSpec s;
    if (!load_spec(a.spec, &s)) return 1;
    if (a.dtype_set) s.dtype = a.dtype;
    IrModule *m = ir_lower_spec(&s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true};
    Diag d = {stderr, a.spec, 0};
    MOE_ASSERT(passes_run(m, &po, &d));
    Shape sh[64];
    int n_sh = collect_shapes(m, &s, sh, 64);
    if (!problems_fit(sh, n_sh, &a)) {
        ir_module_free(m);
        return 1;
    }
    char err[512];
    Tuner t = {.jit = cg_jit_new(CG_ISA_AUTO, err, sizeof err), .pool = cg_pool_new(a.threads), .t0 = bench_now_s()};
    t.deadline = t.t0 + a.budget;
    TuneDb db = {0};
    if (!t.jit) fprintf(stderr, "moeppc tune: error: %s\n", err);
    rc = t.jit ? 0 : 1;
    if (t.jit) {
        int mr[64], nr[64];
        for (int k = 0; k < n_sh; k++) t.total += a.n_tokens * candidates(&t, &sh[k], mr, nr, 64);
        host_identity(t.jit, &db.target);
        tune_all(&t, &a, sh, n_sh, &db);
        if (db.n == 0) printf("the budget (%.0f s) was too small to try anything: the rule's tiles are kept\n", a.budget);
        char why[512];
        if (!tune_db_save(&db, a.out, why, sizeof why)) {
            fprintf(stderr, "moeppc tune: error: %s\n", why);
            rc = 1;
        } else {
            printf("wrote %s: %d entries (of %d shapes x %d token buckets), %d tiles tried in %.1f s\n", a.out, db.n,
                   n_sh, a.n_tokens, t.tried, bench_now_s() - t.t0);
        }
    }
    tune_db_free(&db);
    cg_work_free(&t.work);
    cg_pool_free(t.pool);
    cg_jit_free(t.jit);
    ir_module_free(m);
    return rc;
}
