/* tune.c — `moeppc tune`: measures, for every tunable kernel of a spec (the GEMMs: linear, router,
 * grouped up and down; attention) and every token bucket, the configurations this CPU can run,
 * checks each against the rule's own configuration, and writes the winners (and all that was
 * measured) to a tuning database (passes/tuning.h) that build, run, bench and compile use.
 *
 * The GEMM search is staged, each stage around the best of the last, since the full product of its
 * knobs (24 tiles x 4 unrolls x 4 K blocks x 4 M blocks) would not fit any budget:
 *   1. register tiles MxN (every one the ISA holds in registers), the rule's first;
 *   2. k unroll 1, 2, 8 (4 is the default) on the three best tiles;
 *   3. K blocks of 128, 256, 512 (where below K) and M blocks of 32, 128, 512 rows (where a group
 *      has more rows than the block) on the best so far;
 * then a confirmation round (the rule's and the three best measured again, each keeping its better
 * figure) decides. GEMMs on AMX tiles (bf16 on a CPU with AMX-BF16) search the AMX tiles instead
 * (32 or 16 rows by 32 or 16 columns, the rule's 32 x 32 first; no unroll stage: one k block a loop)
 * and write `act: amx` entries. Attention's search is its key block (4 .. 128; 16 the rule's). */
#include "bench/probe.h"
#include "codegen/llvm/cg_internal.h"
#include "codegen/llvm/ops/cg_ops.h"
#include "passes/passes.h"
#include "passes/tuning.h"
#include "runtime/cpu/cpu.h"
#include "tools/commands.h"
#include "tools/help.h"
#ifdef MOEPPC_HAVE_CUDA
#include "codegen/cuda/cg_cuda.h"
#endif

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char op[24];
    moe_dtype dt;
    bool act;                 /* the op's act_bf16: measured on the bf16 dot-product kernels */
    bool amx;                 /* (with act) the op's amx: on AMX tiles */
    moe_dtype kv_dt;          /* attention: its KV cache's (the op's kv_dtype; the entry's dtype is f32,
                                 that of its activations) */
    int64_t n, k, groups, top_k;
    double ffn_share;         /* grouped: the share of the top_k picks an FFN expert takes under a
                                 router of random weights, n_ffn / all experts (MoE++'s zero-computation
                                 experts take the rest; vanilla 1) */
    TuneConfig rule;
} Shape;

typedef struct {
    CgJit *jit;
    CgPool *pool;
    CgWork work;
    double deadline, t0, budget;
    double share_end;         /* the end of the current (shape, bucket)'s share of what is left */
    int tried, total;
    char **op_sym;            /* op kernels compiled so far (a JIT defines a symbol once) */
    void **op_fn;
    int n_op;
} Tuner;

static bool is_attention(const Shape *sh) { return strcmp(sh->op, "attention") == 0; }
static bool is_plain(const Shape *sh) { return !strcmp(sh->op, "linear") || !strcmp(sh->op, "route"); }

/* Distinct tunable shapes of the optimised IR, with the configuration the rule gave them. */
static int collect_shapes(const IrModule *m, const ModelSpec *s, Shape *out, int max)
{
    int n = 0;
    for (const IrInstr *i = m->first; i && n < max; i = i->next) {
        Shape sh = {.top_k = s->top_k, .groups = 1, .ffn_share = (double)s->n_ffn / (double)spec_n_experts(s)};
        if (i->op == IR_OP_ATTENTION) {
            int64_t H = ir_attr_int(i, "heads");
            CgOpDesc d;
            MOE_ASSERT(cg_op_desc_for(i, &d));
            if (d.amx) continue; /* attention's amx form: one kernel, no key block to choose */
            sh = (Shape){.dt = DT_F32, .kv_dt = d.wdtype, .n = H, .k = i->in[0]->type.dims[1] / H,
                         .groups = ir_attr_int(i, "kv_heads"), .rule = {.kv_block = TUNE_CPU_ATTENTION_KV_BLOCK}};
            snprintf(sh.op, sizeof sh.op, "attention");
        } else {
            bool up = i->op == IR_OP_MOE_GROUPED_UP, grouped = up || i->op == IR_OP_MOE_GROUPED_DOWN;
            if (i->op != IR_OP_LINEAR && i->op != IR_OP_MOE_ROUTE && !grouped) continue;
            const IrValue *w = i->in[i->op == IR_OP_MOE_GROUPED_DOWN ? 5 : up ? 3 : 1];
            sh.dt = w->type.dtype, sh.n = w->type.dims[0], sh.k = w->type.dims[1];
            sh.groups = grouped ? ir_attr_int(i, "experts") : 1;
            const IrAttr *act = ir_attr_get(i, "act_bf16");
            const IrAttr *amx = ir_attr_get(i, "amx");
            sh.act = act && act->i;
            sh.amx = sh.act && amx && amx->i;
            sh.rule = (TuneConfig){.tile_m = (int)ir_attr_int(i, "tile_m"), .tile_n = (int)ir_attr_int(i, "tile_n")};
            snprintf(sh.op, sizeof sh.op, "%s", i->op == IR_OP_LINEAR ? "linear" : i->op == IR_OP_MOE_ROUTE ? "route"
                                                 : up ? "grouped_up" : "grouped_down");
        }
        bool seen = false;
        for (int k = 0; k < n; k++)
            seen |= strcmp(out[k].op, sh.op) == 0 && out[k].dt == sh.dt && out[k].act == sh.act &&
                    out[k].amx == sh.amx && out[k].kv_dt == sh.kv_dt && out[k].n == sh.n && out[k].k == sh.k &&
                    out[k].groups == sh.groups;
        if (!seen) out[n++] = sh;
    }
    return n;
}

/* Stage 1: the rule's tile, then heights × widths this ISA holds in registers (AMX: tiles). */
static int tile_candidates(const Tuner *t, const Shape *sh, TuneConfig *out, int max)
{
    static const int ms[] = {1, 2, 4, 6, 8, 12}, ns[] = {16, 32, 48, 64, 96};
    static const int amx_tiles[][2] = {{32, 16}, {16, 32}, {16, 16}};
    int n = 0;
    out[n++] = sh->rule;
    if (sh->amx) {
        for (size_t a = 0; a < MOE_ARRAY_LEN(amx_tiles) && n < max; a++)
            if (amx_tiles[a][0] != sh->rule.tile_m || amx_tiles[a][1] != sh->rule.tile_n)
                out[n++] = (TuneConfig){.tile_m = amx_tiles[a][0], .tile_n = amx_tiles[a][1]};
        return n;
    }
    for (size_t a = 0; a < MOE_ARRAY_LEN(ns); a++)
        for (size_t b = 0; b < MOE_ARRAY_LEN(ms) && n < max; b++) {
            CgKernelConfig c = cg_kernel_config_tile(t->jit, sh->dt, ms[b], ns[a], 0);
            if (c.mr != ms[b] || c.nr != ns[a] || (ms[b] == sh->rule.tile_m && ns[a] == sh->rule.tile_n)) continue;
            out[n++] = (TuneConfig){.tile_m = ms[b], .tile_n = ns[a]};
        }
    return n;
}

static const int unrolls[] = {1, 2, 8}, kcs[] = {128, 256, 512}, mcs[] = {32, 128, 512}, kv_blocks[] = {16, 32, 48};
_Static_assert(TUNE_CPU_ATTENTION_KV_BLOCK == CG_ATTENTION_KV_BLOCK, "the pass's CPU rule is the kernel's default");
enum { UNROLL_TILES = 3 };

/* How many configurations the search of sh tries at most (for the progress bar). */
static int planned(const Tuner *t, const Shape *sh)
{
    if (is_attention(sh)) return 1 + (int)MOE_ARRAY_LEN(kv_blocks);
    TuneConfig c[64];
    int unroll_stage = sh->amx ? 0 : UNROLL_TILES * (int)MOE_ARRAY_LEN(unrolls);
    return tile_candidates(t, sh, c, 64) + unroll_stage + (int)MOE_ARRAY_LEN(kcs) + (int)MOE_ARRAY_LEN(mcs);
}

typedef struct {
    const Shape *sh;
    int64_t T, rows;          /* tokens; rows of A (slots for grouped; attention: context length) */
    void *w;                  /* groups × [N, K] weights in sh->dt (attention: the K cache's tiles) */
    float *x, *out;           /* A (attention: q); the output                                      */
    void *vc;                 /* attention: the V cache (sh->kv_dt, as the K cache)                */
    int64_t *off;
    int32_t *perm;            /* grouped: token of each slot; attention: the positions             */
    float *gw;
} Problem;

static void fill(moe_rng *r, float *x, size_t n)
{
    for (size_t j = 0; j < n; j++) x[j] = (float)(2 * rng_uniform(r) - 1);
}

/* n values of type dt (a KV cache's) */
static void *filled(moe_rng *r, moe_dtype dt, size_t n)
{
    float *x = xmalloc(n * sizeof *x);
    fill(r, x, n);
    if (dt == DT_F32) return x;
    void *h = xmalloc(n * 2);
    cg_attention_put(h, dt, 0, x, (int64_t)n);
    free(x);
    return h;
}

/* Attention: T queries at the end of a context of max(T, 512) positions. */
static void attention_init(Problem *p, moe_rng *r)
{
    const Shape *sh = p->sh;
    int64_t C = p->T > 512 ? p->T : 512, q = p->T * sh->n * sh->k;
    p->rows = C;
    p->x = xmalloc((size_t)q * sizeof *p->x);
    fill(r, p->x, (size_t)q);
    p->w = filled(r, sh->kv_dt, (size_t)cg_attention_cache_elems(C, sh->groups, sh->k));
    p->vc = filled(r, sh->kv_dt, (size_t)cg_attention_cache_elems(C, sh->groups, sh->k));
    p->out = xcalloc((size_t)q, sizeof *p->out);
    p->perm = xmalloc((size_t)p->T * sizeof *p->perm);
    for (int64_t t = 0; t < p->T; t++) p->perm[t] = (int32_t)(C - p->T + t);
}

/* The output's floats: UP writes a row a slot, DOWN scatters into the T tokens' rows — more than
 * the slots where top_k times the FFN share is below 1 (a top-1 MoE++ model; until 2026-12-06 the
 * output had the slots' rows and DOWN's clearing of T rows overran it: found by random_models.py). */
static size_t out_count(const Problem *p)
{
    if (is_attention(p->sh)) return (size_t)(p->T * p->sh->n * p->sh->k);
    bool down = strcmp(p->sh->op, "grouped_down") == 0;
    return (size_t)((down && p->T > p->rows ? p->T : p->rows) * p->sh->n);
}

static void problem_init(Problem *p, const Shape *sh, int64_t T, uint64_t seed)
{
    moe_rng r;
    rng_seed(&r, seed);
    *p = (Problem){.sh = sh, .T = T};
    if (is_attention(sh)) {
        attention_init(p, &r);
        return;
    }
    /* grouped: the FFN picks of T tokens as a router of random weights makes them — T · top_k ·
     * ffn_share slots (at least one), each on an expert drawn at random, so groups differ in size as
     * they do in a model (a uniform split into equal groups favoured tiles that divide it exactly) */
    p->rows = is_plain(sh) ? T : (int64_t)fmax(1.0, floor((double)(T * sh->top_k) * sh->ffn_share + 0.5));
    size_t wn = (size_t)(sh->groups * sh->n * sh->k), xk = (size_t)sh->k; /* A is [rows, K] for every shape */
    p->w = xmalloc(wn * dtype_size(sh->dt));
    for (size_t j = 0; j < wn; j++) dtype_store(sh->dt, p->w, j, (2 * rng_uniform(&r) - 1) / sqrt((double)sh->k));
    p->x = xmalloc((size_t)p->rows * xk * sizeof *p->x);
    fill(&r, p->x, (size_t)p->rows * xk);
    p->out = xcalloc(out_count(p), sizeof *p->out);
    p->off = xmalloc((size_t)(sh->groups + 1) * sizeof *p->off);
    for (int64_t g = 0; g <= sh->groups; g++) p->off[g] = 0;
    for (int64_t s = 0; s < p->rows; s++) p->off[1 + (int64_t)(rng_uniform(&r) * (double)sh->groups) % sh->groups]++;
    for (int64_t g = 0; g < sh->groups; g++) p->off[g + 1] += p->off[g];
    p->perm = xmalloc((size_t)p->rows * sizeof *p->perm);
    p->gw = xmalloc((size_t)p->rows * sizeof *p->gw);
    for (int64_t s = 0; s < p->rows; s++) p->perm[s] = (int32_t)(s % T), p->gw[s] = 0.5f;
}

static void problem_free(Problem *p)
{
    free(p->w);
    free(p->x);
    free(p->out);
    free(p->vc);
    free(p->off);
    free(p->perm);
    free(p->gw);
}

/* Multiply-adds of one run, ×2 = its flops. */
static double problem_macs(const Problem *p)
{
    const Shape *sh = p->sh;
    if (!is_attention(sh)) return (double)p->rows * (double)sh->n * (double)sh->k;
    double keys = 0; /* q·k and p·v over each query's causal context */
    for (int64_t t = 0; t < p->T; t++) keys += (double)p->perm[t] + 1;
    return 2.0 * keys * (double)sh->n * (double)sh->k;
}

/* What problem_init and tune_one allocate for a shape at T tokens: the weights and their packed copy
 * (f32 at most), A, the output and the reference output (attention: q, the caches — the K tiles
 * past C too — out and ref). In double: a hostile spec's shapes overflow. */
static double problem_bytes(const Shape *sh, int64_t T)
{
    if (!strcmp(sh->op, "attention")) {
        double C = T > 512 ? (double)T : 512.0, q = (double)T * (double)sh->n * (double)sh->k;
        return 4.0 * (3.0 * q + 2.0 * (C + 64.0 + CG_ATTENTION_KT_KEYS) * (double)sh->groups * (double)sh->k);
    }
    double rows = (double)T * (is_plain(sh) ? 1.0 : (double)sh->top_k);
    double w = (double)sh->groups * (double)sh->n * (double)sh->k;
    return w * ((double)dtype_size(sh->dt) + 4.0) + 4.0 * rows * ((double)sh->k + 2.0 * (double)sh->n);
}

typedef struct {
    int nr;
    CgPackedB *b;             /* [groups] */
} Packed;

static void packed_free(Packed *pk, int64_t groups)
{
    for (int64_t g = 0; pk->b && g < groups; g++) cg_packed_b_free(&pk->b[g]);
    free(pk->b);
    pk->b = NULL;
}

static void pack_for(Packed *pk, const Problem *p, int nr, bool kpair)
{
    const Shape *sh = p->sh;
    if (pk->b && pk->nr == nr && pk->b[0].kpair == kpair) return;
    packed_free(pk, sh->groups);
    pk->b = xcalloc((size_t)sh->groups, sizeof *pk->b);
    pk->nr = nr;
    size_t gbytes = (size_t)(sh->n * sh->k) * dtype_size(sh->dt);
    for (int64_t g = 0; g < sh->groups; g++) {
        const char *w = (const char *)p->w + (size_t)g * gbytes;
        if (strcmp(sh->op, "grouped_up") == 0) cg_pack_b_swiglu(&pk->b[g], w, sh->dt, sh->n, sh->k, nr, kpair);
        else cg_pack_b(&pk->b[g], w, sh->dt, sh->n, sh->k, nr, kpair);
    }
}

/* A candidate ready to run: a GEMM kernel with its blocking and packed weights, or attention's kernel. */
typedef struct {
    const CgKernel *k;
    CgBlocking blk;
    void *att;
} Runnable;

/* One run of the shape's kernel, split over the pool as the executor splits it. */
static void run_once(Tuner *t, const Problem *p, const Runnable *rn, const Packed *pk)
{
    const Shape *sh = p->sh;
    if (is_attention(sh)) {
        CgOpDesc d = {.kind = CG_OP_ATTENTION, .heads = sh->n, .kv_heads = sh->groups}; /* (prepare's form) */
        cpu_attention_run(t->pool, rn->att, p->T, sh->n, cg_attention_heads_per_call(&d), cg_attention_cap(p->rows),
                          p->x, p->w, p->vc, p->perm, p->out);
        return;
    }
    CgRouting r = {sh->groups, p->off, p->perm, p->gw};
    if (is_plain(sh)) cg_gemm(rn->k, &rn->blk, t->pool, &t->work, p->rows, p->x, sh->k, pk->b, p->out, sh->n, false);
    else if (strcmp(sh->op, "grouped_up") == 0) cg_moe_up_swiglu(rn->k, &rn->blk, t->pool, &t->work, &r, p->x, pk->b, p->out);
    else {
        memset(p->out, 0, out_count(p) * sizeof *p->out);
        cg_moe_down_scatter(rn->k, &rn->blk, t->pool, &t->work, &r, p->x, pk->b, p->out);
    }
}

/* The kernel of configuration c, compiled (and cached by the JIT, or here for attention); false if it
 * cannot be built. */
static bool prepare(Tuner *t, Problem *p, Packed *pk, const TuneConfig *c, Runnable *rn)
{
    char err[512];
    memset(rn, 0, sizeof *rn);
    const Shape *sh = p->sh;
    if (is_attention(sh)) {
        CgOpDesc d = {.kind = CG_OP_ATTENTION, .wdtype = sh->kv_dt, .heads = sh->n, .kv_heads = sh->groups,
                      .head_dim = sh->k, .cols = sh->n * sh->k, .kv_block = c->kv_block == CG_ATTENTION_KV_BLOCK ? 0 : c->kv_block};
        char sym[256];
        cg_op_symbol(&d, sym, sizeof sym);
        for (int k = 0; k < t->n_op && !rn->att; k++)
            if (!strcmp(t->op_sym[k], sym)) rn->att = t->op_fn[k];
        if (rn->att) return true;
        LLVMModuleRef mod = cg_ops_build(cg_jit_context(t->jit), &d, cg_jit_target(t->jit)->vec_width, sym, err,
                                         sizeof err);
        rn->att = mod ? cg_jit_compile_module(t->jit, mod, sym, err, sizeof err) : NULL;
        if (!rn->att) return false;
        t->op_sym = xrealloc(t->op_sym, (size_t)(t->n_op + 1) * sizeof *t->op_sym);
        t->op_fn = xrealloc(t->op_fn, (size_t)(t->n_op + 1) * sizeof *t->op_fn);
        t->op_sym[t->n_op] = xstrdup(sym);
        t->op_fn[t->n_op++] = rn->att;
        return true;
    }
    CgKernelConfig cfg = sh->amx ? cg_kernel_config_amx(c->tile_m, c->tile_n)
                                 : cg_kernel_config_tile(t->jit, sh->dt, c->tile_m, c->tile_n, c->unroll);
    cfg.a_bf16 = sh->act;
    cfg = cg_kernel_form(cg_jit_target(t->jit), cfg); /* as the executor runs it */
    if (sh->amx && (cfg.mr != c->tile_m || cfg.nr != c->tile_n)) return false;
    rn->k = cg_jit_kernel(t->jit, &cfg, NULL, err, sizeof err);
    if (!rn->k) return false;
    rn->blk = cg_blocking_make(rn->k, c->kc, c->mc, sh->k);
    if (!cg_jit_edges(t->jit, rn->k, &rn->blk, err, sizeof err)) return false; /* as the executor runs it */
    pack_for(pk, p, cfg.nr, cg_kernel_kpair(&cfg));
    return true;
}

/* Median GFLOP/s of configuration c on p after a warm-up; -1 if it cannot be built or is wrong
 * against ref (the rule's output). */
static double measure(Tuner *t, Problem *p, Packed *pk, const TuneConfig *c, const float *ref)
{
    Runnable rn;
    if (!prepare(t, p, pk, c, &rn)) return -1;
    run_once(t, p, &rn, pk);
    if (ref && tune_rel_err(p->out, ref, out_count(p)) > 1e-5) {
        char name[64];
        tune_config_format(c, name, sizeof name);
        fprintf(stderr, "\nmoeppc tune: warning: %s disagrees with the rule's configuration on %s; discarded\n", name,
                p->sh->op);
        return -1;
    }
    double s[9];
    int reps = 0;
    for (double t0 = bench_now_s(); reps < 9 && (reps < 3 || bench_now_s() - t0 < 0.2); reps++) {
        double a = bench_now_s();
        run_once(t, p, &rn, pk);
        s[reps] = bench_now_s() - a;
    }
    qsort(s, (size_t)reps, sizeof *s, bench_cmp_double);
    return 2e-9 * problem_macs(p) / s[reps / 2];
}

static void progress(const Tuner *t, const Shape *sh, int64_t T, const TuneEntry *e)
{
    double left = t->deadline - bench_now_s();
    double best = 0;
    for (int c = 0; c < e->n_measured; c++) best = fmax(best, e->measured[c].gflops);
    char name[64];
    tune_config_format(&e->best, name, sizeof name);
    fprintf(stderr, "\r[tune] %-12s %lldx%lldx%lld T=%-5lld %4d/%d configs  best %-16s %7.1f GFLOP/s  %4.0f s left ",
            sh->op, (long long)sh->n, (long long)sh->k, (long long)sh->groups, (long long)T, t->tried, t->total, name,
            best, left > 0 ? left : 0);
    fflush(stderr);
}

typedef struct {
    Tuner *t;
    Problem p;
    Packed pk;
    float *ref;
    TuneEntry *e;
    bool out_of_time;
} Search;

static bool measured_already(const TuneEntry *e, const TuneConfig *c)
{
    for (int k = 0; k < e->n_measured; k++)
        if (tune_config_equal(&e->measured[k].c, c)) return true;
    return false;
}

/* Measure c (unless measured, or out of time or room); the first call is the rule's and sets ref. */
static void try_config(Search *s, const TuneConfig *c)
{
    TuneEntry *e = s->e;
    if (s->out_of_time || e->n_measured == TUNE_MAX_MEASURED || measured_already(e, c)) return;
    if (s->ref && bench_now_s() > s->t->share_end) {
        s->out_of_time = true;
        return;
    }
    double g = measure(s->t, &s->p, &s->pk, c, s->ref);
    if (!s->ref) s->ref = memcpy(xmalloc(out_count(&s->p) * sizeof *s->ref), s->p.out, out_count(&s->p) * sizeof *s->ref);
    s->t->tried++;
    if (g < 0) return;
    double best = -1;
    for (int k = 0; k < e->n_measured; k++) best = fmax(best, e->measured[k].gflops);
    e->measured[e->n_measured++] = (TuneMeasure){*c, g};
    if (g > best) e->best = *c;
    progress(s->t, &s->p.sh[0], s->p.T, e);
}

static int cmp_gflops_desc(const void *a, const void *b)
{
    double x = ((const TuneMeasure *)a)->gflops, y = ((const TuneMeasure *)b)->gflops;
    return x > y ? -1 : x < y;
}

/* Stages 2 and 3 of the GEMM search (the file comment). */
static void refine_gemm(Search *s)
{
    const Shape *sh = s->p.sh;
    TuneMeasure top[TUNE_MAX_MEASURED];
    int n_top = s->e->n_measured;
    memcpy(top, s->e->measured, (size_t)n_top * sizeof *top);
    qsort(top, (size_t)n_top, sizeof *top, cmp_gflops_desc);
    for (int k = 0; k < n_top && k < UNROLL_TILES && !sh->amx; k++)
        for (size_t u = 0; u < MOE_ARRAY_LEN(unrolls); u++) {
            TuneConfig c = top[k].c;
            c.unroll = unrolls[u];
            try_config(s, &c);
        }
    for (size_t b = 0; b < MOE_ARRAY_LEN(kcs); b++) {
        TuneConfig c = s->e->best;
        if (kcs[b] >= sh->k) continue; /* one pass already */
        c.kc = kcs[b];
        try_config(s, &c);
    }
    int64_t rows_per_group = (s->p.rows + sh->groups - 1) / sh->groups;
    for (size_t b = 0; b < MOE_ARRAY_LEN(mcs); b++) {
        TuneConfig c = s->e->best;
        int64_t mc = (mcs[b] + c.tile_m - 1) / c.tile_m * c.tile_m, dflt = (256 + c.tile_m - 1) / c.tile_m * c.tile_m;
        if (rows_per_group <= mc && rows_per_group <= dflt) continue; /* one block either way: the default */
        c.mc = mc;
        try_config(s, &c);
    }
}

/* The confirmation round: the rule's configuration and the three best measured again, each keeping the
 * higher of its two figures. The rule ran first, on weights just packed and caches cold, and a winner
 * by one noisy run is no winner; this is what keeps the rule's choice when nothing beats it. */
static void confirm(Search *s, const TuneConfig *rule)
{
    TuneEntry *e = s->e;
    TuneMeasure top[TUNE_MAX_MEASURED];
    memcpy(top, e->measured, (size_t)e->n_measured * sizeof *top);
    qsort(top, (size_t)e->n_measured, sizeof *top, cmp_gflops_desc);
    for (int k = -1; k < 3 && k < e->n_measured; k++) {
        const TuneConfig *c = k < 0 ? rule : &top[k].c;
        if ((k >= 0 && tune_config_equal(c, rule)) || !measured_already(e, c)) continue;
        if (bench_now_s() > s->t->share_end) break;
        double g = measure(s->t, &s->p, &s->pk, c, s->ref);
        for (int j = 0; j < e->n_measured; j++)
            if (tune_config_equal(&e->measured[j].c, c) && g > e->measured[j].gflops) e->measured[j].gflops = g;
    }
    int best = 0;
    for (int j = 1; j < e->n_measured; j++)
        if (e->measured[j].gflops > e->measured[best].gflops) best = j;
    e->best = e->measured[best].c;
}

/* Search one shape at T tokens, the rule's configuration first; false if the budget ran out before the
 * rule's own was measured (then no entry). */
static bool tune_one(Tuner *t, const Shape *sh, int64_t T, TuneEntry *e)
{
    Search s = {.t = t, .e = e};
    problem_init(&s.p, sh, T, hash_str(sh->op) ^ (uint64_t)T);
    *e = (TuneEntry){.dtype = sh->dt, .act_bf16 = sh->act, .amx = sh->amx, .n = sh->n, .k = sh->k,
                     .groups = sh->groups, .tokens = T};
    snprintf(e->op, sizeof e->op, "%s", sh->op);
    if (is_attention(sh)) {
        try_config(&s, &sh->rule);
        for (size_t b = 0; b < MOE_ARRAY_LEN(kv_blocks); b++) try_config(&s, &(TuneConfig){.kv_block = kv_blocks[b]});
    } else {
        TuneConfig c[64];
        int nc = tile_candidates(t, sh, c, 64);
        for (int k = 0; k < nc; k++) try_config(&s, &c[k]);
        if (e->n_measured) refine_gemm(&s);
    }
    if (e->n_measured > 1) confirm(&s, &sh->rule);
    packed_free(&s.pk, sh->groups);
    free(s.ref);
    problem_free(&s.p);
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
    char *vec = cg_vector_features(ct->features, ct->isa);
    t->features = hash_str(vec), t->features_all = hash_str(ct->features);
    free(vec);
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

bool tuning_load_gpu_or_host(const char *path, const char *arch, TuneDb *db, bool *gpu)
{
    *gpu = false;
    Diag d = {stderr, path, 0};
    if (!tune_db_load(path, db, &d)) return false;
    if (strncmp(db->target.isa, "sm_", 3) != 0) { /* a CPU database: checked against this host */
        tune_db_free(db);
        return tuning_load_for_host(path, db);
    }
    char why[256] = "";
#ifdef MOEPPC_HAVE_CUDA
    const char *nvrtc = cg_cuda_nvrtc_version_text();
#else
    const char *nvrtc = "no NVRTC";
#endif
    if (!arch) snprintf(why, sizeof why, "a database for %s GPUs, and this build is for the CPU alone", db->target.isa);
    else if (strcmp(db->target.isa, arch) != 0) snprintf(why, sizeof why, "made for %s, and this build is for %s", db->target.isa, arch);
    else if (strcmp(db->target.llvm, nvrtc) != 0 || strcmp(db->target.compiler, MOEPPC_VERSION) != 0)
        snprintf(why, sizeof why, "made with %s by moeppc %s; this is %s and moeppc %s", db->target.llvm,
                 db->target.compiler, nvrtc, MOEPPC_VERSION);
    if (why[0]) {
        fprintf(stderr, "%s: warning: %s; its entries are ignored and the rule decides\n", path, why);
        tune_db_free(db);
        memset(db, 0, sizeof *db);
        return true;
    }
    fprintf(stderr, "%s: the GPU tiles measured on %s are built in (a GPU of another model runs them too)\n", path,
            db->target.cpu);
    *gpu = true;
    return true;
}

/* Every (shape, bucket) gets an equal share of the time left when its turn comes (what one leaves
 * unused goes to those after it), so a tight budget still measures the rule and the first candidates
 * of every shape rather than all of the first shapes and none of the last. */
static void tune_all(Tuner *t, const TuneArgs *a, const Shape *sh, int n_sh, TuneDb *db)
{
    int left = a->n_tokens * n_sh;
    for (int b = 0; b < a->n_tokens; b++)
        for (int s = 0; s < n_sh && bench_now_s() < t->deadline; s++, left--) {
            double now = bench_now_s();
            t->share_end = now + (t->deadline - now) / left;
            TuneEntry e;
            if (tune_one(t, &sh[s], a->tokens[b], &e)) tune_db_add(db, &e);
        }
    fputc('\n', stderr);
}

/* An entry reduced to the rule's configuration and its measurement: the executor picks among a
 * bucket's measured configurations (schedule.c), not by the entry's best alone. */
static void keep_rule(TuneEntry *e, const TuneConfig *rule)
{
    for (int j = 0; j < e->n_measured; j++)
        if (tune_config_equal(&e->measured[j].c, rule)) {
            e->measured[0] = e->measured[j];
            e->n_measured = 1;
            break;
        }
    e->best = *rule;
}

/* --check: the model timed at each bucket on db and on the rule, three rounds each alternating, the
 * best of each's medians kept; where db's is slower by more than the margin (2 %) its entries of that
 * bucket keep the rule's configuration alone (dropped, the entries' neighbours would stand in for
 * them). Both models are held at once, on random weights packed as they are made (never whole): the
 * whole model where both models' panels and caches and the weights read in place (m, the rule's IR)
 * fit in 90 % of the memory available (bench --model's accounting), else its first layer and a
 * vocabulary of 256 (said). False on an error (said). */
static bool check_db(const TuneArgs *a, const ModelSpec *full, const IrModule *m, const Shape *sh, int n_sh,
                     TuneDb *db)
{
    ModelSpec s = *full;
    double need = 2 * cpu_model_bytes_on_random(m, &s, false);
    double have = mem_available_bytes();
    bool whole = need <= 0.9 * have;
    if (!whole) {
        char b[2][32];
        str_bytes(need, b[0], sizeof b[0]), str_bytes(have, b[1], sizeof b[1]);
        fprintf(stderr, "moeppc tune: --check times the first layer: the whole model on both configurations needs %s "
                        "(90 %% of the %s available at most)\n", b[0], b[1]);
        s.n_layers = s.moe_every, s.vocab = 256;
    }
    RtError err = {{0}};
    BenchModel *rule = bench_model_new(&s, NULL, a->threads, &err);
    BenchModel *tuned = rule ? bench_model_new(&s, db, a->threads, &err) : NULL;
    bool ok = tuned != NULL;
    for (int b = 0; ok && b < a->n_tokens; b++) {
        int64_t T = a->tokens[b];
        if (T > s.max_positions) continue;
        double best[2] = {INFINITY, INFINITY}, t;
        for (int r = 0; ok && r < 6; r++)
            if ((ok = bench_model_median(r % 2 ? tuned : rule, T, 3, &t, &err))) best[r % 2] = fmin(best[r % 2], t);
        if (!ok) break;
        bool keep = best[1] <= (1 + a->check_margin / 100) * best[0];
        printf("check at T = %lld (%s): the rule %.3f ms, the database %.3f ms: %s\n", (long long)T,
               whole ? "the model" : "its first layer", 1e3 * best[0], 1e3 * best[1],
               keep ? "kept" : "the rule's configurations kept for this bucket");
        for (int j = 0; !keep && j < db->n; j++)
            for (int k = 0; db->e[j].tokens == T && k < n_sh; k++)
                if (!strcmp(db->e[j].op, sh[k].op) && db->e[j].n == sh[k].n && db->e[j].k == sh[k].k &&
                    db->e[j].groups == sh[k].groups && db->e[j].act_bf16 == sh[k].act && db->e[j].amx == sh[k].amx)
                    keep_rule(&db->e[j], &sh[k].rule);
    }
    if (!ok) fprintf(stderr, "moeppc tune: error: --check: %s\n", err.msg);
    bench_model_free(tuned);
    bench_model_free(rule);
    return ok;
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
    int rc = tune_parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    char why[512];
    if (!file_can_write(a.out, why, sizeof why)) { /* said now, not after the budget */
        fprintf(stderr, "moeppc tune: error: %s\n", why);
        return 1;
    }
    if (a.target != TARGET_CPU && a.check)
        return usage_error("tune", TUNE_USAGE, "%s", "--check times the model on the CPU: not with a GPU --target");
    if (a.target != TARGET_CPU) return tune_cuda(&a);
    ModelSpec s;
    if (!load_spec(a.spec, &s)) return 1;
    if (a.dtype_set) s.dtype = a.dtype;
    IrModule *m = ir_lower_spec(&s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true};
    cpu_host_pass_options(&po);
    if (s.dtype == DT_BF16) {
        fprintf(stderr, "moeppc tune: bf16 GEMMs on the bf16 dot product: %s\n", cpu_bf16_dot_why(why, sizeof why));
        if (po.amx) fprintf(stderr, "moeppc tune: bf16 GEMMs on AMX tiles: yes (their tiles searched: act: amx)\n");
    }
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
        for (int k = 0; k < n_sh; k++) t.total += a.n_tokens * planned(&t, &sh[k]);
        host_identity(t.jit, &db.target);
        tune_all(&t, &a, sh, n_sh, &db);
        if (db.n == 0) printf("the budget (%.0f s) was too small to try anything: the rule's configurations are kept\n",
                              a.budget);
        if (db.n && a.check && !check_db(&a, &s, m, sh, n_sh, &db)) rc = 1;
        if (rc == 0 && !tune_db_save(&db, a.out, why, sizeof why)) {
            fprintf(stderr, "moeppc tune: error: %s\n", why);
            rc = 1;
        } else if (rc == 0) {
            printf("wrote %s: %d entries (of %d shapes x %d token buckets), %d configurations tried in %.1f s\n", a.out, db.n,
                   n_sh, a.n_tokens, t.tried, bench_now_s() - t.t0);
        }
    }
    tune_db_free(&db);
    for (int k = 0; k < t.n_op; k++) free(t.op_sym[k]);
    free(t.op_sym);
    free(t.op_fn);
    cg_work_free(&t.work);
    cg_pool_free(t.pool);
    cg_jit_free(t.jit);
    ir_module_free(m);
    return rc;
}
