/* cpu.c — the CPU executor: each instruction of the planned IR becomes a prepared step (its kernels,
 * its packed weights, its KV cache), and a run walks the steps with buffers at their planned arena
 * offsets. GEMMs go to the micro-kernel drivers of cg_llvm.h, everything else to the op kernels of
 * cg_ops.h, row-parallel on the thread pool. */
#include "runtime/cpu/cpu.h"

#include "passes/schedule.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* A configuration a step may run: a GEMM's micro-kernel and blocking, or attention's kernel. */
typedef struct Choice {
    TuneConfig c;
    const CgKernel *k;
    CgBlocking blk;
    void *fn;
} Choice;

typedef struct Step {
    const IrInstr *i;
    void *fn, *fn_tanh;             /* op kernels (route: post, tanh)                                */
    Choice ch[TILE_MAX_BUCKETS + 1];/* GEMM steps and attention: [0] the op's configuration, then     */
    int n_ch;                       /*   each one a bucket of its schedule won                         */
    Choice narrow;                  /* route: the kernel one vector wide of its narrow weights (k NULL: */
                                    /*   none; a packed weight of its nr runs on it, narrow_choice)     */
    TileSchedule *sched;            /* tuned: the configuration per token count (schedule.c)          */
    CgPackedB *pk;                  /* packed weights: linear 1; grouped E; route W1[,W2], [Wg], [Wc] */
                                    /*   (the constants' Wc stacked: one [2nc, D])                     */
    int n_pk;
    PanelFile *panels;              /* the panel cache's file holding some of pk (NULL: none)         */
    void **kt, **vc;                /* attention: each sequence's K and V caches (cg_attention_store), */
                                    /*   of kv_dt: [n_seqs]                                           */
    moe_dtype kv_dt;
    bool kv_pairs;                  /* attention's amx form: its caches in k pairs (cg_attention_kt_index) */
    int64_t att_hpc;                /* attention's query heads a kernel call (cg_attention_heads_per_call) */
    const void **vc_ptrs;           /* combine: the constant vectors                                  */
    int64_t *off;                   /* dispatch: CgRouting of this layer                              */
    int32_t *perm;
    float *gate_w;
    int dispatch;                   /* grouped ops: index of their dispatch step                      */
    int fuse;                       /* linear: it and the fuse - 1 linears after it read one input     */
                                    /*   (a layer's Q, K, V): run as one cg_gemm_multi (run_linears);  */
                                    /*   grouped up: 2, its down-projection next and h read by it alone */
                                    /*   (run_ffn: h kept packed in the drivers' work)                  */
} Step;

struct CpuModel {
    const IrModule *m;
    const WeightSet *w;
    CpuKernelSource *ks;
    CgPool *pool;
    CgWork work;
    Step *steps;
    int n_steps;
    int64_t max_pos, cap_t, last_t;
    unsigned char *arena;
    float *scratch;                 /* route scratch: h, z0, g, u, alpha logits                        */
    size_t scratch_per_t;           /* floats per token                                                */
    const int32_t *ids, *pos;       /* inputs of the current run                                      */
    const int32_t *seq;             /* ... each token's sequence (NULL: all sequence 0)                */
    int n_seqs;                     /* sequences with KV caches (cpu_model_set_sequences)             */
    CpuAttSeg *segs;                /* attention's runs of one sequence's rows: [T] at most            */
    int64_t segs_cap;
    const void **bound;             /* [n_values]: other inputs, bound to caller memory (embed/)       */
    bool external;                  /* arena, scratch and dispatch buffers lie in caller memory:       */
                                    /*   cap_t is fixed, runs allocate nothing                         */
    CpuProfile prof;
    PanelCache *panels;             /* packed weights kept in files (NULL: packed in memory alone)    */
    double in_memory_max;           /* > 0: bytes of panels the model may pack in memory after all (a   */
    double in_memory;               /*   panel cache's step failed; cpu_model_open counted them as     */
                                    /*   files), and those packed so far                               */
    bool dry;                       /* only request the kernels (cpu_request_kernels): no weights     */
    double ready, total;            /* CpuModelOptions.progress: the weights' bytes packed, of all    */
    void (*progress)(void *ctx, double ready, double total);
    void *progress_ctx;
    int tail;                       /* steps [tail, n_steps) make the logits from the final residual  */
                                    /*   rows alone (final norm, lm_head; n_steps: none such)         */
    int64_t last_rows;              /* ... and run on a run's last rows alone, this many (0: on all;  */
                                    /*   cpu_model_set_last_rows)                                     */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static const Tensor *param(const CpuModel *cm, const IrValue *v)
{
    const Tensor *t = weights_find(cm->w, v->tensor);
    MOE_ASSERT(t); /* weights_check ran before */
    return t;
}

/* A weight read in place: its bytes (made again if released: weights_data). */
static const void *param_data(const CpuModel *cm, const IrValue *v)
{
    const Tensor *t = param(cm, v);
    MOE_ASSERT(!weights_parts(cm->w, t, (const void *[2]){0}, &(size_t){0})); /* (one in two parts is only packed) */
    return weights_data(cm->w, t, &(RtError){{0}});
}

static void *addr(const CpuModel *cm, const IrValue *v, int64_t T)
{
    switch (v->kind) {
    case IR_VAL_INPUT:
        if (cm->bound[v->id]) return (void *)cm->bound[v->id];
        return (void *)(strcmp(v->name, "pos") == 0 ? cm->pos : cm->ids);
    case IR_VAL_PARAM: return (void *)param_data(cm, v);
    case IR_VAL_RESULT: break;
    }
    MOE_ASSERT(v->planned);
    return cm->arena + v->off_t * T + v->off_c;
}

static int64_t cols(const IrValue *v) { return v->type.dims[v->type.ndim - 1]; }

/* ---- row-parallel op kernels ------------------------------------------------------------------ */

typedef struct {
    cg_op_kind kind;
    void *fn;
    const void *a[6];
    void *o[4];
    int64_t T, chunk;
} RowTask;

typedef void (*k2_fn)(int64_t, int64_t, const void *, void *);
typedef void (*k3_fn)(int64_t, int64_t, const void *, const void *, void *);
typedef void (*k4_fn)(int64_t, int64_t, const void *, const void *, const void *, void *);
typedef void (*addnorm_fn)(int64_t, int64_t, const void *, const void *, const void *, void *, void *);
typedef void (*attn_fn)(int64_t, int64_t, int64_t, const void *, const void *, const void *, const void *, void *);
typedef void (*combine_fn)(int64_t, int64_t, const void *, const void *, const void *, const void *,
                           const void *const *, void *);
typedef void (*route_fn)(int64_t, int64_t, const void *, const void *, void *, const void *, void *, void *, void *);
typedef void (*dispatch_fn)(int64_t, const int32_t *, const float *, int64_t *, int32_t *, float *);

static void row_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    RowTask *r = ctx;
    int64_t row0 = task * r->chunk, rows = r->T - row0 < r->chunk ? r->T - row0 : r->chunk;
    if (rows <= 0) return;
    switch (r->kind) {
    case CG_OP_SCALE:
    case CG_OP_TANH: ((k2_fn)r->fn)(row0, rows, r->a[0], r->o[0]); break;
    case CG_OP_EMBED:
    case CG_OP_RMS_NORM:
    case CG_OP_ROPE:
    case CG_OP_SWIGLU:
    case CG_OP_ADD: ((k3_fn)r->fn)(row0, rows, r->a[0], r->a[1], r->o[0]); break;
    case CG_OP_ADD_RMS_NORM: ((addnorm_fn)r->fn)(row0, rows, r->a[0], r->a[1], r->a[2], r->o[0], r->o[1]); break;
    case CG_OP_COMBINE:
        ((combine_fn)r->fn)(row0, rows, r->a[0], r->a[1], r->a[2], r->a[3], (const void *const *)r->a[4], r->o[0]);
        break;
    case CG_OP_ROUTE_POST:
        ((route_fn)r->fn)(row0, rows, r->a[0], r->a[1], r->o[0], r->a[2], r->o[1], r->o[2], r->o[3]);
        break;
    default: MOE_ASSERT(!"not a row kernel");
    }
}

static void rows_run(CpuModel *cm, RowTask *r)
{
    int n = cg_pool_threads(cm->pool);
    r->chunk = (r->T + n - 1) / n;
    if (r->chunk < 1) r->chunk = 1;
    cg_pool_parallel_for(cm->pool, (r->T + r->chunk - 1) / r->chunk, row_task, r);
}

/* ---- preparing the steps ----------------------------------------------------------------------- */

static CgOpDesc desc(cg_op_kind kind, moe_dtype wdtype, int64_t ncols)
{
    return (CgOpDesc){.kind = kind, .wdtype = wdtype, .cols = ncols};
}

static bool want_op(CpuModel *cm, Step *st, void **slot, const CgOpDesc *d, RtError *err)
{
    *slot = cm->ks->op(cm->ks->ctx, d, err);
    (void)st;
    return *slot != NULL;
}

static const CgKernel *source_get(void *ctx, const CgKernelConfig *cfg)
{
    const CpuKernelSource *ks = ctx;
    RtError err;
    return ks->gemm(ks->ctx, cfg, &err);
}

/* The blocking of configuration c for kernel k, with k's edge kernels (a group's last rows, and a
 * decode step's one, on tiles of 4, 2 and 1 rows instead of one padded to k's rows); a source that
 * has no kernel of an edge's tile (an executable built before them) leaves the rows padded. */
static CgBlocking blocking_of(CpuModel *cm, const TuneConfig *c, const CgKernel *k, int64_t K)
{
    CgBlocking blk = cg_blocking_make(k, c->kc, c->mc, K);
    cg_blocking_edges(&blk, k, source_get, cm->ks);
    return blk;
}

/* The op's own configuration, as the specialize pass recorded it (absent attributes: the rule's). */
static TuneConfig op_config(const IrInstr *i)
{
    const IrAttr *a[5] = {ir_attr_get(i, "tile_m"), ir_attr_get(i, "tile_n"), ir_attr_get(i, "tile_unroll"),
                          ir_attr_get(i, "tile_k"), ir_attr_get(i, "tile_mc")};
    return (TuneConfig){.tile_m = a[0] ? (int)a[0]->i : 0, .tile_n = a[1] ? (int)a[1]->i : 0,
                        .unroll = a[2] ? (int)a[2]->i : 0, .kc = a[3] ? a[3]->i : 0, .mc = a[4] ? a[4]->i : 0};
}

static const Choice *find_choice(const Step *st, const TuneConfig *c)
{
    for (int k = 1; k < st->n_ch; k++)
        if (tune_config_equal(&st->ch[k].c, c)) return &st->ch[k];
    return NULL;
}

/* A tuned op's schedule, if it parses and suits the op (a GEMM schedule at the op's panel width). */
static bool schedule_of(Step *st, const IrInstr *i, int nr)
{
    const IrAttr *sa = ir_attr_get(i, "tile_schedule");
    TileSchedule sched;
    if (!sa || !tile_schedule_parse(sa->s, &sched) || sched.nr != nr) return false;
    st->sched = xmalloc(sizeof *st->sched);
    *st->sched = sched;
    return true;
}

static void drop_schedule(Step *st)
{
    free(st->sched);
    st->sched = NULL;
    st->n_ch = 1;
}

/* A GEMM step's kernels: the op's configuration, then every one a bucket of its schedule won (at the
 * op's panel width, which the packing fixes; a schedule this CPU cannot follow is dropped: the op's
 * own configuration then serves every call). */
static const CgKernel *gemm_of(CpuModel *cm, moe_dtype dt, bool act_bf16, bool amx, const TuneConfig *c,
                               RtError *err)
{
    CgKernelConfig want = {dt, c->tile_m, c->tile_n, c->unroll, act_bf16, amx, false};
    return cm->ks->gemm(cm->ks->ctx, &want, err);
}

static bool gemm_choices(CpuModel *cm, Step *st, const IrInstr *i, moe_dtype dt, int64_t K, RtError *err)
{
    Choice *c0 = &st->ch[0];
    const IrAttr *act = ir_attr_get(i, "act_bf16");
    const IrAttr *amx_attr = ir_attr_get(i, "amx");
    bool act_bf16 = act && act->i, amx = act_bf16 && amx_attr && amx_attr->i;
    c0->c = op_config(i);
    c0->k = gemm_of(cm, dt, act_bf16, amx, &c0->c, err);
    if (!c0->k) return false;
    c0->blk = blocking_of(cm, &c0->c, c0->k, K);
    st->n_ch = 1;
    if (!schedule_of(st, i, c0->k->cfg.nr)) return true;
    for (int b = 0; b < st->sched->n; b++) {
        TuneConfig c = tile_schedule_pick(st->sched, st->sched->b[b].tokens);
        if (find_choice(st, &c)) continue;
        const CgKernel *g = gemm_of(cm, dt, act_bf16, amx, &c, err);
        if (!g) return false;
        if (g->cfg.nr != c.tile_n || g->cfg.mr != c.tile_m || (c.unroll && g->cfg.k_unroll != c.unroll)) {
            drop_schedule(st); /* not for this ISA */
            return true;
        }
        st->ch[st->n_ch++] = (Choice){c, g, blocking_of(cm, &c, g, K), NULL};
    }
    return true;
}

/* A weight to pack: [n, k] at src, or in two parts (weights_parts: rows 0 .. rows_lo - 1 at src, the
 * rest at src_hi), or made (weights_made_on_read: random weights, src NULL: each task makes the rows
 * it packs), into panels nr wide; t its tensor (NULL: a copy). */
typedef struct {
    const void *src, *src_hi;
    int64_t rows_lo, n, k;
    int nr;
    const Tensor *t;
    bool made;
} PackSrc;

static PackSrc pack_src(const CpuModel *cm, const IrValue *w, int nr)
{
    const Tensor *t = param(cm, w);
    const void *part[2] = {NULL, NULL};
    size_t lo = 0;
    bool made = weights_made_on_read(cm->w, t);
    if (!made && !weights_parts(cm->w, t, part, &lo)) /* (two parts: each packed from where it is) */
        part[0] = weights_data(cm->w, t, &(RtError){{0}});
    return (PackSrc){part[0], part[1], (int64_t)(lo / ((size_t)w->type.dims[1] * dtype_size(t->dtype))),
                     w->type.dims[0], w->type.dims[1], nr, t, made};
}

/* Whether input k of i is a weight packed from where it lies (pack_src), not read there when running. */
static bool packed_in_place(const IrInstr *i, int k)
{
    if (i->in[k]->kind != IR_VAL_PARAM) return false;
    switch (i->op) {
    case IR_OP_LINEAR: return k == 1;
    case IR_OP_MOE_GROUPED_UP: return k >= 3 && k < 3 + ir_attr_int(i, "experts");
    case IR_OP_MOE_GROUPED_DOWN: return k >= 5 && k < 5 + ir_attr_int(i, "experts");
    case IR_OP_MOE_ROUTE: /* W1 [W2] [r Wg]: the constants' Wc are copied, then packed */
        return k >= 1 && k < 1 + ir_attr_int(i, "router_layers") + (ir_attr_int(i, "residual") ? 2 : 0);
    default: return false;
    }
}

/* Whether some op of m reads tensor in place (an embedding table that is also the lm_head). */
static bool read_in_place(const IrModule *m, const char *tensor)
{
    for (const IrInstr *i = m->first; i; i = i->next)
        for (int k = 0; k < i->n_in; k++)
            if (i->in[k]->kind == IR_VAL_PARAM && !packed_in_place(i, k) && strcmp(i->in[k]->tensor, tensor) == 0)
                return true;
    return false;
}

/* Packing on the pool: each weight's panels in runs of about 1 MiB, a task a run (the 7B's 15 GB
 * of weights are packed at start-up, and one thread did it alone). A made weight's task makes its
 * run's rows in its thread's scratch first (a run's bytes: they stay in cache for the packing, and
 * the weight's own pages are never touched: the 7B's start-up zeroed 15 GB fewer). */
typedef struct {
    CgPackedB *pk;
    const PackSrc *src; /* [n] */
    int64_t *first;     /* [n + 1] each weight's first task */
    int64_t *run;       /* [n] panels a task */
    int n;
    const WeightSet *w;
    void **scratch;     /* [threads] each thread's rows of a made weight, scratch_bytes each */
    size_t scratch_bytes;
} PackTasks;

static void pack_task(void *ctx, int64_t task, int thread)
{
    const PackTasks *pt = ctx;
    int e = 0;
    while (pt->first[e + 1] <= task) e++;
    const PackSrc *s = &pt->src[e];
    CgPackedB *b = &pt->pk[e];
    int64_t p0 = (task - pt->first[e]) * pt->run[e], p1 = p0 + pt->run[e] < b->n_panels ? p0 + pt->run[e] : b->n_panels;
    if (!s->made) {
        cg_pack_b_fill_parts(b, s->src, s->src_hi, s->rows_lo, 0, p0, p1);
        return;
    }
    int64_t r[4];
    cg_pack_b_source_rows(b, p0, p1, r);
    size_t row = (size_t)s->k * dtype_size(b->dtype);
    MOE_ASSERT((size_t)(r[1] - r[0] + r[3] - r[2]) * row <= pt->scratch_bytes);
    if (!pt->scratch[thread]) pt->scratch[thread] = xmalloc(pt->scratch_bytes);
    char *lo = pt->scratch[thread], *hi = lo + (size_t)(r[1] - r[0]) * row;
    weights_make_rows(pt->w, s->t, r[0], r[1] - r[0], lo);
    weights_make_rows(pt->w, s->t, r[2], r[3] - r[2], hi);
    cg_pack_b_fill_parts(b, lo, r[3] > r[2] ? hi : NULL, r[2] - r[0], r[0], p0, p1);
}

/* The panel cache's file for the step's weights (pk sized): kept are those whose source has an
 * identity (weights_identity); NULL: none (no cache, or it failed). */
static PanelFile *open_panels(CpuModel *cm, CgPackedB *pk, const PackSrc *src, int n, bool *hit)
{
    *hit = false;
    if (!cm->panels) return NULL;
    char **id = xcalloc((size_t)n, sizeof *id);
    for (int e = 0; e < n; e++) {
        char buf[1024];
        if (src[e].t && weights_identity(cm->w, src[e].t, buf, sizeof buf)) id[e] = xstrdup(buf);
    }
    PanelFile *f = panel_cache_open(cm->panels, pk, (const char *const *)id, n, hit);
    for (int e = 0; e < n; e++) free(id[e]);
    free(id);
    return f;
}

/* The step's packed weights, from n sources of dtype dt: mapped from the panel cache where it holds
 * them, else packed (into its new file, or memory). */
static bool pack_sources(CpuModel *cm, Step *st, moe_dtype dt, const PackSrc *src, int n, bool kpair, bool swiglu,
                         RtError *err)
{
    st->pk = xcalloc((size_t)n, sizeof *st->pk);
    st->n_pk = n;
    for (int e = 0; e < n; e++) cg_pack_b_size(&st->pk[e], dt, src[e].n, src[e].k, src[e].nr, kpair, swiglu);
    bool hit;
    st->panels = open_panels(cm, st->pk, src, n, &hit);
    for (int e = 0; e < n; e++) cm->in_memory += st->pk[e].data ? 0 : (double)cg_packed_b_bytes(&st->pk[e]);
    if (cm->in_memory_max > 0 && cm->in_memory > cm->in_memory_max) {
        char a[32], b[32];
        str_bytes(cm->in_memory, a, sizeof a), str_bytes(cm->in_memory_max, b, sizeof b);
        snprintf(err->msg, sizeof err->msg, "not enough memory: the panel cache could not take %s of packed weights, "
                 "more than the %s of memory left beside the KV caches", a, b);
        st->n_pk = 0; /* (none allocated: the caller frees the model) */
        return false;
    }
    bool *done = xcalloc((size_t)n, sizeof *done); /* mapped, packed already */
    for (int e = 0; e < n; e++) {
        done[e] = hit && panel_file_holds(st->panels, st->pk[e].data);
        if (!st->pk[e].data) cg_pack_b_alloc_data(&st->pk[e]);
    }
    PackTasks pt = {st->pk, src, xmalloc((size_t)(n + 1) * sizeof *pt.first), xmalloc((size_t)n * sizeof *pt.run), n,
                    cm->w, xcalloc((size_t)cg_pool_threads(cm->pool), sizeof *pt.scratch), 0};
    pt.first[0] = 0;
    for (int e = 0; e < n; e++) {
        pt.run[e] = st->pk[e].panel_bytes ? (int64_t)(((size_t)1 << 20) / st->pk[e].panel_bytes) : 1;
        if (pt.run[e] < 1) pt.run[e] = 1;
        pt.first[e + 1] = pt.first[e] + (done[e] ? 0 : (st->pk[e].n_panels + pt.run[e] - 1) / pt.run[e]);
        size_t rows = (size_t)(pt.run[e] * src[e].nr), bytes = rows * (size_t)src[e].k * dtype_size(dt); /* (a run's) */
        if (src[e].made && !done[e] && bytes > pt.scratch_bytes) pt.scratch_bytes = bytes;
    }
    cg_pool_parallel_for(cm->pool, pt.first[n], pack_task, &pt);
    for (int t = 0; t < cg_pool_threads(cm->pool); t++) free(pt.scratch[t]);
    free(pt.first), free(pt.run), free(pt.scratch);
    if (st->panels && !hit) panel_file_commit(cm->panels, st->panels);
    for (int e = 0; e < n; e++) { /* the copy is what runs: the source's pages leave (weights_release) */
        if (!src[e].t || src[e].made || done[e] || read_in_place(cm->m, src[e].t->name)) continue;
        size_t row = (size_t)src[e].k * dtype_size(dt);
        weights_release(cm->w, src[e].src, (size_t)(src[e].src_hi ? src[e].rows_lo : src[e].n) * row);
        if (src[e].src_hi) weights_release(cm->w, src[e].src_hi, (size_t)(src[e].n - src[e].rows_lo) * row);
    }
    free(done);
    if (cm->progress) {
        for (int e = 0; e < n; e++) cm->ready += (double)src[e].n * (double)src[e].k * (double)dtype_size(dt);
        cm->progress(cm->progress_ctx, cm->ready, cm->total);
    }
    return true;
}

/* The weights i->in[idx[0..n)], for the op's GEMM kernel of their dtype; swiglu for up-projections. */
static bool pack_list(CpuModel *cm, Step *st, const IrInstr *i, const int *idx, int n, bool swiglu, RtError *err)
{
    moe_dtype dt = i->in[idx[0]]->type.dtype;
    if (!gemm_choices(cm, st, i, dt, i->in[idx[0]]->type.dims[1], err)) return false;
    if (cm->dry) return true;
    PackSrc *src = xmalloc((size_t)n * sizeof *src);
    for (int e = 0; e < n; e++) {
        MOE_ASSERT(i->in[idx[e]]->type.dtype == dt);
        src[e] = pack_src(cm, i->in[idx[e]], st->ch[0].k->cfg.nr);
    }
    bool ok = pack_sources(cm, st, dt, src, n, cg_kernel_kpair(&st->ch[0].k->cfg), swiglu, err);
    free(src);
    return ok;
}

static bool pack(CpuModel *cm, Step *st, const IrInstr *i, int first, int n, bool swiglu, RtError *err)
{
    int *idx = xmalloc((size_t)n * sizeof *idx);
    for (int e = 0; e < n; e++) idx[e] = first + e;
    bool ok = pack_list(cm, st, i, idx, n, swiglu, err);
    free(idx);
    return ok;
}

/* A route weight narrower than the op's panels (W2 and Wg are [E, ·], the constants' Wc [2nc, D])
 * pads each panel to the op's NR columns: on AVX-512's 48, two constants' 4 columns took as long
 * as W1's 160 (the 7B layer at T = 512). Those run on the narrowest tile this ISA holds, one vector
 * wide (8 rows), asked for until the source gives one of the width asked. */
static bool narrow_choice(CpuModel *cm, Step *st, moe_dtype dt, int64_t K, RtError *err)
{
    static const int widths[] = {4, 8, 16};
    st->narrow = (Choice){0};
    for (size_t w = 0; w < MOE_ARRAY_LEN(widths) && widths[w] < st->ch[0].k->cfg.nr; w++) {
        TuneConfig c = {.tile_m = 8, .tile_n = widths[w]};
        const CgKernel *g = gemm_of(cm, dt, false, false, &c, err);
        if (!g) return false;
        if (g->cfg.nr != c.tile_n || g->cfg.mr != c.tile_m) continue;
        st->narrow = (Choice){c, g, blocking_of(cm, &c, g, K), NULL};
        break;
    }
    return true;
}

static bool prepare_route(CpuModel *cm, Step *st, RtError *err)
{
    const IrInstr *i = st->i;
    int64_t nc = ir_attr_int(i, "n_const"), L = ir_attr_int(i, "router_layers"), D = cols(i->in[0]);
    CgOpDesc d;
    MOE_ASSERT(cg_op_desc_for(i, &d));
    if (!want_op(cm, st, &st->fn, &d, err)) return false;
    CgOpDesc th = desc(CG_OP_TANH, DT_F32, L == 2 ? i->in[1]->type.dims[0] : 1);
    if (L == 2 && !want_op(cm, st, &st->fn_tanh, &th, err)) return false;
    /* the operands: x, W1 [W2] [r Wg] Wc..; the first GEMM's weight is the op's (the tuned shape) */
    moe_dtype dt = i->in[1]->type.dtype;
    if (!gemm_choices(cm, st, i, dt, D, err) || !narrow_choice(cm, st, dt, D, err)) return false;
    if (cm->dry) return true;
    int nr = st->ch[0].k->cfg.nr, n = 0;
    int64_t res = ir_attr_int(i, "residual"), first_c = 1 + L + (res ? 2 : 0);
    PackSrc src[4]; /* W1 [W2] [Wg] [Wc] */
    for (int k = 1; k < first_c; k++) {
        if (res && k == 1 + L) continue; /* r, the previous layer's logits */
        const IrValue *w = i->in[k];
        MOE_ASSERT(w->type.dtype == dt);
        src[n++] = pack_src(cm, w, k > 1 && st->narrow.k && w->type.dims[0] < nr ? st->narrow.k->cfg.nr : nr);
    }
    /* the constants' Wc [2, D] each, stacked into one [2nc, D]: a single GEMM writes alpha's logits */
    void *wc = NULL;
    if (nc) {
        size_t bytes = 2 * (size_t)D * dtype_size(dt);
        wc = xmalloc((size_t)nc * bytes);
        for (int64_t c = 0; c < nc; c++) {
            const IrValue *w = i->in[first_c + c];
            MOE_ASSERT(w->type.dtype == dt && w->type.dims[0] == 2 && w->type.dims[1] == D);
            const void *data = weights_data(cm->w, param(cm, w), err);
            if (!data) {
                free(wc);
                return false;
            }
            memcpy((char *)wc + c * bytes, data, bytes);
        }
        src[n++] = (PackSrc){wc, NULL, 0, 2 * nc, D, st->narrow.k && 2 * nc < nr ? st->narrow.k->cfg.nr : nr, NULL, false};
    }
    bool ok = pack_sources(cm, st, dt, src, n, cg_kernel_kpair(&st->ch[0].k->cfg), false, err); /* (narrow alike) */
    free(wc);
    return ok;
}

/* Attention's kernels: the op's key block, then each one a bucket of its schedule won. */
static bool prepare_attention(CpuModel *cm, Step *st, RtError *err)
{
    CgOpDesc d;
    MOE_ASSERT(cg_op_desc_for(st->i, &d));
    st->kv_dt = d.wdtype;
    st->kv_pairs = d.amx;
    st->att_hpc = cg_attention_heads_per_call(&d);
    if (!cm->dry) {
        size_t n = (size_t)cg_attention_cache_elems(cm->max_pos, d.kv_heads, d.head_dim);
        st->kt = xcalloc(1, sizeof *st->kt);
        st->vc = xcalloc(1, sizeof *st->vc);
        st->kt[0] = xcalloc(n, dtype_size(d.wdtype));
        st->vc[0] = xcalloc(n, dtype_size(d.wdtype));
    }
    if (!want_op(cm, st, &st->fn, &d, err)) return false;
    st->ch[0] = (Choice){.c = {.kv_block = d.kv_block ? d.kv_block : CG_ATTENTION_KV_BLOCK}, .fn = st->fn};
    st->n_ch = 1;
    if (d.amx || !schedule_of(st, st->i, 0)) return true; /* the amx form has no key block to schedule */
    for (int b = 0; b < st->sched->n; b++) {
        TuneConfig c = tile_schedule_pick(st->sched, st->sched->b[b].tokens);
        if (tune_config_equal(&c, &st->ch[0].c) || find_choice(st, &c)) continue;
        CgOpDesc db = d;
        db.kv_block = c.kv_block == CG_ATTENTION_KV_BLOCK ? 0 : c.kv_block;
        Choice *ch = &st->ch[st->n_ch];
        *ch = (Choice){.c = c};
        if (!want_op(cm, st, &ch->fn, &db, err)) return false;
        st->n_ch++;
    }
    return true;
}

static bool prepare_rowwise(CpuModel *cm, Step *st, RtError *err)
{
    const IrInstr *i = st->i;
    CgOpDesc d;
    MOE_ASSERT(cg_op_desc_for(i, &d));
    if (i->op == IR_OP_MOE_COMBINE) {
        st->vc_ptrs = xcalloc((size_t)(d.n_const + 1), sizeof *st->vc_ptrs);
        for (int64_t c = 0; c < d.n_const && !cm->dry; c++) st->vc_ptrs[c] = param_data(cm, i->in[4 + c]);
    }
    return want_op(cm, st, &st->fn, &d, err);
}

static bool prepare(CpuModel *cm, Step *st, RtError *err)
{
    const IrInstr *i = st->i;
    switch (i->op) {
    case IR_OP_LINEAR: return pack(cm, st, i, 1, 1, false, err);
    case IR_OP_ATTENTION: return prepare_attention(cm, st, err);
    case IR_OP_MOE_ROUTE: return prepare_route(cm, st, err);
    case IR_OP_ZEROS: return true;
    case IR_OP_MOE_DISPATCH: {
        CgOpDesc d;
        MOE_ASSERT(cg_op_desc_for(i, &d));
        st->off = xcalloc((size_t)(d.experts + 1), sizeof *st->off);
        return want_op(cm, st, &st->fn, &d, err);
    }
    case IR_OP_MOE_GROUPED_UP:
    case IR_OP_MOE_GROUPED_DOWN: {
        bool up = i->op == IR_OP_MOE_GROUPED_UP;
        st->dispatch = ir_instr_position(cm->m, i->in[1]->def); /* steps are in program order */
        return pack(cm, st, i, up ? 3 : 5, (int)ir_attr_int(i, "experts"), up, err);
    }
    case IR_OP_CONVERT:
        snprintf(err->msg, sizeof err->msg, "internal error: convert reached the CPU executor (run widen-activations)");
        return false;
    default: return prepare_rowwise(cm, st, err);
    }
}

/* ---- running the steps ------------------------------------------------------------------------- */

/* The configuration for a call on T tokens: the schedule's choice on a tuned op, else the op's own. */
static const Choice *choice_for(const Step *st, int64_t T)
{
    if (!st->sched) return &st->ch[0];
    TuneConfig c = tile_schedule_pick(st->sched, T);
    if (tune_config_equal(&c, &st->ch[0].c)) return &st->ch[0];
    const Choice *ch = find_choice(st, &c);
    return ch ? ch : &st->ch[0];
}

/* The bytes of a packed weight's elements (its panels' padding aside): what a GEMM over it reads. */
static double weight_bytes(const CgPackedB *b) { return (double)b->n * (double)b->k * (double)dtype_size(b->dtype); }

/* The configuration packed weight p of st runs at T tokens on: a route's narrow kernel for its narrow
 * weights, else choice_for. */
static const Choice *gemm_choice(const Step *st, int p, int64_t T)
{
    return st->narrow.k && st->pk[p].nr == st->narrow.k->cfg.nr ? &st->narrow : choice_for(st, T);
}

static void gemm(CpuModel *cm, const Step *st, int p, int64_t T, const float *x, int64_t lda, float *y, int64_t ldc)
{
    const Choice *c = gemm_choice(st, p, T);
    cg_gemm(c->k, &c->blk, cm->pool, &cm->work, T, x, lda, &st->pk[p], y, ldc, false);
}

/* Linears that read one input, each step's own weights and output (see Step.fuse): n steps from st,
 * one cg_gemm_multi when every step runs the same kernel and blocking at T (a tuning database may give
 * them different ones), else one cg_gemm each. */
static void run_linears(CpuModel *cm, const Step *st, int n, int64_t T)
{
    const Choice *c = choice_for(st, T);
    const CgPackedB *b[CG_GEMM_MULTI];
    float *y[CG_GEMM_MULTI];
    int64_t ldc[CG_GEMM_MULTI];
    bool same = true;
    for (int q = 0; q < n; q++) {
        const Choice *cq = choice_for(&st[q], T);
        same = same && cq->k == c->k && cq->blk.kc == c->blk.kc && cq->blk.mc == c->blk.mc &&
               memcmp(cq->blk.edge, c->blk.edge, sizeof c->blk.edge) == 0;
        b[q] = &st[q].pk[0], y[q] = addr(cm, st[q].i->out[0], T), ldc[q] = cols(st[q].i->out[0]);
    }
    const float *x = addr(cm, st->i->in[0], T);
    if (same) cg_gemm_multi(c->k, &c->blk, cm->pool, &cm->work, T, x, cols(st->i->in[0]), n, b, y, ldc);
    else for (int q = 0; q < n; q++) gemm(cm, &st[q], 0, T, x, cols(st->i->in[0]), y[q], ldc[q]);
}

/* Steps and outputs that read v. */
static int uses(const CpuModel *cm, const IrValue *v)
{
    int n = 0;
    for (int s = 0; s < cm->n_steps; s++)
        for (int k = 0; k < cm->steps[s].i->n_in; k++) n += cm->steps[s].i->in[k] == v;
    for (int k = 0; k < cm->m->n_outputs; k++) n += cm->m->outputs[k].value == v;
    return n;
}

/* Step.fuse of every grouped up-projection (see Step.fuse) and every linear: for a linear, the run of
 * consecutive linears from it (up to CG_GEMM_MULTI) with the same
 * input. None reads another's output, and the later outputs, written early (at the first one's step),
 * overwrite nothing alive: with no other step between them, a value alive at the first step is the
 * shared input or alive at the later steps too, and so never shares a later output's place, whatever
 * T (the CUDA executor, which fuses across other steps, checks the places instead). */
static void plan_fusion(CpuModel *cm)
{
    const char *ffn = getenv("MOEPPC_FUSE_FFN"); /* 0: each grouped GEMM on its own (an A/B) */
    for (int s = 0; s < cm->n_steps; s++) {
        const IrInstr *i = cm->steps[s].i;
        if (i->op == IR_OP_MOE_GROUPED_UP && s + 1 < cm->n_steps && !(ffn && strcmp(ffn, "0") == 0) &&
            cm->steps[s + 1].i->op == IR_OP_MOE_GROUPED_DOWN && cm->steps[s + 1].i->in[0] == i->out[0] &&
            uses(cm, i->out[0]) == 1)
            cm->steps[s].fuse = 2;
        if (i->op != IR_OP_LINEAR) continue;
        int n = 1;
        while (n < CG_GEMM_MULTI && s + n < cm->n_steps && cm->steps[s + n].i->op == IR_OP_LINEAR &&
               cm->steps[s + n].i->in[0] == i->in[0])
            n++;
        cm->steps[s].fuse = n;
        s += n - 1;
    }
}

static void run_rows(CpuModel *cm, const Step *st, cg_op_kind kind, int64_t T, const void *a0, const void *a1,
                     const void *a2, const void *a3, void *o0, void *o1)
{
    RowTask r = {.kind = kind, .fn = st->fn, .a = {a0, a1, a2, a3}, .o = {o0, o1}, .T = T};
    rows_run(cm, &r);
}

static void run_route(CpuModel *cm, Step *st, int64_t T)
{
    const IrInstr *i = st->i;
    int64_t E = ir_attr_int(i, "experts"), nc = ir_attr_int(i, "n_const"), L = ir_attr_int(i, "router_layers");
    int64_t D = cols(i->in[0]), H1 = L == 2 ? i->in[1]->type.dims[0] : 0;
    const float *x = addr(cm, i->in[0], T);
    float *h = cm->scratch, *z0 = h + T * H1, *g = z0 + T * E, *alog = g + T * E;
    bool res = ir_attr_int(i, "residual");
    /* the first GEMM (W1, weight 0) and the constants' Wc (weight pc) both read x: one call packs it
     * once where their kernels take it alike (the 7B at T = 2048: Wc alone took 0.7-1.4 ms a layer,
     * most of it packing x again) */
    int pc = (int)L + res;
    float *y1 = L == 2 ? h : z0;
    int64_t ld1 = L == 2 ? H1 : E;
    const Choice *c1 = gemm_choice(st, 0, T), *cc = nc ? gemm_choice(st, pc, T) : NULL;
    bool shared = cc && cg_gemm_packs_alike(c1->k, &c1->blk, cc->k, &cc->blk);
    if (shared) {
        const CgKernel *k[2] = {c1->k, cc->k};
        const CgBlocking *blk[2] = {&c1->blk, &cc->blk};
        const CgPackedB *b[2] = {&st->pk[0], &st->pk[pc]};
        float *y[2] = {y1, alog};
        int64_t ldc[2] = {ld1, 2 * nc};
        cg_gemm_multi_kernels(k, blk, cm->pool, &cm->work, T, x, D, 2, b, y, ldc);
    } else {
        gemm(cm, st, 0, T, x, D, y1, ld1);
    }
    if (L == 2) {
        RowTask th = {.kind = CG_OP_TANH, .fn = st->fn_tanh, .a = {h}, .o = {h}, .T = T};
        rows_run(cm, &th);
        gemm(cm, st, 1, T, h, H1, z0, E);
    }
    if (res) gemm(cm, st, (int)L, T, addr(cm, i->in[1 + L], T), E, g, E);
    if (nc) { /* Wc · (s x) as s (Wc · x): the same f32 values where s is a power of two (the picks, 2) */
        if (!shared) gemm(cm, st, pc, T, x, D, alog, 2 * nc);
        float s = (float)ir_attr_float(i, "s");
        for (int64_t j = 0; j < T * 2 * nc; j++) alog[j] *= s;
    }
    RowTask r = {.kind = CG_OP_ROUTE_POST, .fn = st->fn, .T = T,
                 .a = {z0, res ? g : NULL, nc ? alog : NULL},
                 .o = {addr(cm, i->out[2], T), addr(cm, i->out[0], T), addr(cm, i->out[1], T),
                       nc ? addr(cm, i->out[3], T) : NULL}};
    rows_run(cm, &r);
}

/* Tokens a task of the K/V caches' store takes: a step of more spreads the store over the pool. */
enum { STORE_CHUNK = 64 };

typedef struct StoreJob {
    const CpuModel *cm;
    const Step *st;
    const float *k, *v;
    int64_t T, kvc, kvh, cap;
} StoreJob;

/* Tokens c·STORE_CHUNK .. of the step into the caches of their sequences, each at its position (no two
 * tokens share a sequence and a position, so tasks write apart), a run of one sequence's consecutive
 * positions at a time. */
static void store_task(void *ctx, int64_t c, int thread)
{
    (void)thread;
    const StoreJob *j = ctx;
    const int32_t *seq = j->cm->seq;
    const int32_t *pos = j->cm->pos;
    int64_t end = (c + 1) * STORE_CHUNK < j->T ? (c + 1) * STORE_CHUNK : j->T;
    for (int64_t t = c * STORE_CHUNK, u; t < end; t = u) {
        int s = seq ? seq[t] : 0;
        for (u = t + 1; u < end && (seq ? seq[u] : 0) == s && pos[u] == pos[u - 1] + 1;) u++;
        cg_attention_store_run(j->st->kt[s], j->st->vc[s], j->st->kv_dt, j->kvh, j->kvc / j->kvh, j->cap, pos[t], u - t,
                               j->k + t * j->kvc, j->v + t * j->kvc, j->kvc, j->st->kv_pairs);
    }
}

static void run_attention(CpuModel *cm, Step *st, int64_t T)
{
    const IrInstr *i = st->i;
    int64_t kvc = cols(i->in[1]), kvh = ir_attr_int(i, "kv_heads"), cap = cg_attention_cap(cm->max_pos);
    const float *k = addr(cm, i->in[1], T), *v = addr(cm, i->in[2], T);
    /* the KV caches of token t's sequence at position pos[t]: a prefill's on the pool's threads (one
     * thread took 1.2 ms a layer of the 0.6B at T = 512, a third of its attention) */
    StoreJob sj = {cm, st, k, v, T, kvc, kvh, cap};
    int64_t chunks = (T + STORE_CHUNK - 1) / STORE_CHUNK;
    if (chunks > 1) cg_pool_parallel_for(cm->pool, chunks, store_task, &sj);
    else store_task(&sj, 0, 0);
    int n = 0;
    for (int64_t t = 0; t < T; t++) { /* the segments: runs of tokens of one sequence */
        int s = cm->seq ? cm->seq[t] : 0;
        if (n && cm->segs[n - 1].kt == st->kt[s]) cm->segs[n - 1].rows++;
        else cm->segs[n++] = (CpuAttSeg){t, 1, st->kt[s], st->vc[s], 0};
    }
    cpu_attention_run_segs(cm->pool, choice_for(st, T)->fn, ir_attr_int(i, "heads"), st->att_hpc, cap,
                           addr(cm, i->in[0], T), cm->pos, addr(cm, i->out[0], T), cm->segs, n);
}

/* ---- attention's schedule over the threads -------------------------------------------------------- */

typedef struct {
    attn_fn fn;
    int64_t heads, hpc, rows;       /* query heads, a call's, rows per task */
    int64_t cap;
    const void *q;
    const int32_t *pos;
    void *out;
    const CpuAttSeg *segs;
    int n;
} AttTasks;

/* One task: a block of query rows of a call's heads (cg_attention_heads_per_call: one, or the query
 * heads of one kv head) of one sequence in one kernel call, which takes them a few at a time over each
 * tile of keys and values (heads interleaved by row would stream the cache from memory). */
static void att_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    const AttTasks *a = ctx;
    int lo = 0, hi = a->n - 1; /* the segment: its first task <= task < the next one's */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (a->segs[mid].task0 <= task) lo = mid;
        else hi = mid - 1;
    }
    const CpuAttSeg *s = &a->segs[lo];
    int64_t local = task - s->task0, blocks = (s->rows + a->rows - 1) / a->rows, calls = a->heads / a->hpc;
    /* the last block of rows of every head first: causal rows see the more keys the later they come,
     * so the largest tasks go first and the pool's last tasks are its smallest */
    int64_t h = local % calls * a->hpc, t0 = (blocks - 1 - local / calls) * a->rows;
    int64_t rows = t0 + a->rows < s->rows ? a->rows : s->rows - t0;
    a->fn((s->row0 + t0) * a->heads + h, rows, a->cap, a->q, s->kt, s->vc, a->pos, a->out);
}

void cpu_attention_run_segs(CgPool *pool, void *fn, int64_t heads, int64_t hpc, int64_t cap, const void *q,
                            const int32_t *pos, void *out, CpuAttSeg *segs, int n)
{
    int64_t T = 0, want = 8 * (int64_t)cg_pool_threads(pool); /* tasks enough to balance the causal triangle */
    for (int k = 0; k < n; k++) T += segs[k].rows;
    MOE_ASSERT(hpc >= 1 && heads % hpc == 0);
    int64_t calls = heads / hpc, blocks = (want + calls - 1) / calls, tasks = 0;
    AttTasks a = {(attn_fn)fn, heads, hpc, (T + blocks - 1) / blocks, cap, q, pos, out, segs, n};
    a.rows = (a.rows + 15) / 16 * 16; /* whole tiles of query rows (the kernels' are 1 to 4, or 16 on AMX) */
    for (int k = 0; k < n; k++) {
        segs[k].task0 = tasks;
        tasks += calls * ((segs[k].rows + a.rows - 1) / a.rows);
    }
    cg_pool_parallel_for(pool, tasks, att_task, &a);
}

void cpu_attention_run(CgPool *pool, void *fn, int64_t T, int64_t heads, int64_t hpc, int64_t cap, const void *q,
                       const void *kt, const void *vc, const int32_t *pos, void *out)
{
    CpuAttSeg one = {0, T, kt, vc, 0};
    cpu_attention_run_segs(pool, fn, heads, hpc, cap, q, pos, out, &one, 1);
}

typedef void (*dispatch_kernel)(int64_t, const int32_t *, const float *, int64_t *, int32_t *, float *);

/* A grouped step's routing (its dispatch's), the weights it reads (the experts some token picked) and,
 * for an up-projection, the FFN's multiply-adds counted. */
static CgRouting grouped_routing(CpuModel *cm, const Step *st)
{
    const IrInstr *i = st->i;
    const Step *ds = &cm->steps[st->dispatch];
    int64_t E = ir_attr_int(i, "experts");
    for (int64_t g = 0; g < E; g++)
        cm->prof.grouped_bytes += ds->off[g + 1] > ds->off[g] ? weight_bytes(&st->pk[g]) : 0;
    if (i->op == IR_OP_MOE_GROUPED_UP) /* up 2·I·D + down D·I per slot */
        cm->prof.ffn_macs += (double)ds->off[E] * 3.0 * (double)i->out[0]->type.dims[2] * (double)cols(i->in[0]);
    return (CgRouting){.n_groups = E, .off = ds->off, .perm = ds->perm, .gate_w = ds->gate_w};
}

/* A down-projection's output, holding its input y0 (which the scatter-add accumulates on). */
static float *down_output(CpuModel *cm, const Step *st, int64_t T)
{
    float *y = addr(cm, st->i->out[0], T), *y0 = addr(cm, st->i->in[4], T);
    if (y != y0) memcpy(y, y0, (size_t)(T * cols(st->i->out[0])) * sizeof *y);
    return y;
}

static void run_grouped(CpuModel *cm, Step *st, int64_t T)
{
    const IrInstr *i = st->i;
    CgRouting r = grouped_routing(cm, st);
    const Choice *c = choice_for(st, T);
    if (i->op == IR_OP_MOE_GROUPED_UP)
        cg_moe_up_swiglu(c->k, &c->blk, cm->pool, &cm->work, &r, addr(cm, i->in[0], T), st->pk, addr(cm, i->out[0], T));
    else
        cg_moe_down_scatter(c->k, &c->blk, cm->pool, &cm->work, &r, addr(cm, i->in[0], T), st->pk,
                            down_output(cm, st, T));
}

static bool apart(const char *a, size_t an, const char *b, size_t bn) { return a + an <= b || b + bn <= a; }

/* An up-projection and its down-projection (Step.fuse 2) in one cg_moe_ffn where the down-projection's
 * kernel at T takes h packed (cg_moe_ffn_packs_h) and its output y does not share x's place (y is
 * written before the call reads x), else one after the other. h's tiles go in h's own place, unused
 * then, where they fit and it shares neither x's place (the tiles' padding is zeroed while x is
 * packed) nor y's (written before); else in the drivers' work. */

static void run_ffn(CpuModel *cm, Step *st, int64_t T)
{
    Step *dn = st + 1;
    const Choice *u = choice_for(st, T), *d = choice_for(dn, T);
    const char *x0 = addr(cm, st->i->in[0], T), *y0 = addr(cm, dn->i->out[0], T);
    char *h0 = addr(cm, st->i->out[0], T);
    size_t xn = (size_t)(T * cols(st->i->in[0])) * sizeof(float);
    size_t yn = (size_t)(T * cols(dn->i->out[0])) * sizeof(float);
    size_t hn = (size_t)(T * cols(cm->steps[st->dispatch].i->in[0]) * cols(st->i->out[0])); /* slots x I */
    if (!cg_moe_ffn_packs_h(d->k, &d->blk, st->i->out[0]->type.dims[2]) || !apart(x0, xn, y0, yn)) {
        run_grouped(cm, st, T);
        run_grouped(cm, dn, T);
        return;
    }
    CgRouting r = grouped_routing(cm, st);
    grouped_routing(cm, dn);
    float *y = down_output(cm, dn, T);
    bool room = apart(h0, hn * sizeof(float), x0, xn) && apart(h0, hn * sizeof(float), y0, yn);
    cm->prof.ffn_fused++;
    cg_moe_ffn(u->k, &u->blk, d->k, &d->blk, cm->pool, &cm->work, &r, (const float *)x0, st->pk, dn->pk, y,
               room ? (float *)h0 : NULL, room ? hn : 0);
}

/* The logits' tail on the last n of T rows alone: each result's rows T - n .. T - 1 (the others are not
 * written). */
static void run_tail_step(CpuModel *cm, const Step *st, int64_t T, int64_t n)
{
    const IrInstr *i = st->i;
    const void *in[3] = {0};
    void *out[2] = {0};
    for (int k = 0; k < i->n_in && k < 3; k++) {
        const IrValue *v = i->in[k];
        size_t row = v->kind == IR_VAL_RESULT ? (size_t)cols(v) * dtype_size(v->type.dtype) : 0; /* weights: as they are */
        in[k] = (const unsigned char *)addr(cm, v, T) + (size_t)(T - n) * row;
    }
    for (int k = 0; k < i->n_out && k < 2; k++)
        out[k] = (unsigned char *)addr(cm, i->out[k], T) + (size_t)(T - n) * (size_t)cols(i->out[k]) * dtype_size(i->out[k]->type.dtype);
    switch (i->op) {
    case IR_OP_LINEAR: gemm(cm, st, 0, n, in[0], cols(i->in[0]), out[0], cols(i->out[0])); break;
    case IR_OP_RMS_NORM: run_rows(cm, st, CG_OP_RMS_NORM, n, in[0], in[1], NULL, NULL, out[0], NULL); break;
    case IR_OP_ADD_RMS_NORM: run_rows(cm, st, CG_OP_ADD_RMS_NORM, n, in[0], in[1], in[2], NULL, out[0], out[1]); break;
    default: MOE_ASSERT(!"not a tail op");
    }
}

void cpu_model_set_last_rows(CpuModel *cm, int64_t n) { cm->last_rows = cm->tail < cm->n_steps && n > 0 ? n : 0; }
int64_t cpu_model_last_rows(const CpuModel *cm) { return cm->last_rows; }

static void run_step(CpuModel *cm, Step *st, int64_t T)
{
    const IrInstr *i = st->i;
    void *out = i->n_out ? addr(cm, i->out[0], T) : NULL; /* (a packed weight's own bytes never: made again) */
    const void *a0 = i->n_in > 0 ? addr(cm, i->in[0], T) : NULL;
    const void *a1 = i->n_in > 1 && !packed_in_place(i, 1) ? addr(cm, i->in[1], T) : NULL;
    switch (i->op) {
    case IR_OP_LINEAR: gemm(cm, st, 0, T, a0, cols(i->in[0]), out, cols(i->out[0])); break;
    case IR_OP_MOE_ROUTE: run_route(cm, st, T); break;
    case IR_OP_ATTENTION: run_attention(cm, st, T); break;
    case IR_OP_MOE_GROUPED_UP:
    case IR_OP_MOE_GROUPED_DOWN: run_grouped(cm, st, T); break;
    case IR_OP_ZEROS: memset(out, 0, (size_t)(T * cols(i->out[0])) * sizeof(float)); break;
    case IR_OP_MOE_DISPATCH: {
        const IrValue *w = i->in[0]->def->out[0]; /* the route's weights, beside its ids */
        ((dispatch_kernel)st->fn)(T, a0, addr(cm, w, T), st->off, st->perm, st->gate_w);
        break;
    }
    case IR_OP_ADD_RMS_NORM:
        run_rows(cm, st, CG_OP_ADD_RMS_NORM, T, a0, a1, addr(cm, i->in[2], T), NULL, out, addr(cm, i->out[1], T));
        break;
    case IR_OP_MOE_COMBINE: {
        RowTask r = {.kind = CG_OP_COMBINE, .fn = st->fn, .T = T, .o = {out},
                     .a = {a0, a1, addr(cm, i->in[2], T), ir_attr_int(i, "n_const") ? addr(cm, i->in[3], T) : NULL,
                           st->vc_ptrs}};
        rows_run(cm, &r);
        break;
    }
    case IR_OP_EMBED: run_rows(cm, st, CG_OP_EMBED, T, a1, a0, NULL, NULL, out, NULL); break; /* ids, table */
    default: {
        static const cg_op_kind kinds[IR_OP_COUNT] = {[IR_OP_RMS_NORM] = CG_OP_RMS_NORM,
            [IR_OP_ROPE] = CG_OP_ROPE, [IR_OP_SWIGLU] = CG_OP_SWIGLU, [IR_OP_ADD] = CG_OP_ADD,
            [IR_OP_SCALE] = CG_OP_SCALE, [IR_OP_TANH] = CG_OP_TANH};
        run_rows(cm, st, kinds[i->op], T, a0, a1, NULL, NULL, out, NULL);
    }
    }
}

static double *profile_slot(CpuModel *cm, ir_op op)
{
    switch (op) {
    case IR_OP_LINEAR: return &cm->prof.gemm_s;
    case IR_OP_MOE_GROUPED_UP:
    case IR_OP_MOE_GROUPED_DOWN: return &cm->prof.grouped_s;
    case IR_OP_ATTENTION: return &cm->prof.attention_s;
    case IR_OP_MOE_ROUTE:
    case IR_OP_MOE_COMBINE:
    case IR_OP_MOE_DISPATCH: return &cm->prof.route_s;
    default: return &cm->prof.other_s;
    }
}

/* ---- the model ------------------------------------------------------------------------------------ */

static void ensure_capacity(CpuModel *cm, int64_t T)
{
    if (T <= cm->cap_t) return;
    MOE_ASSERT(!cm->external); /* the caller's workspace bounds T (cpu_model_run_steps checks) */
    free(cm->arena);
    free(cm->scratch);
    cm->arena = xcalloc((size_t)(cm->m->arena_t * T + cm->m->arena_c) + 64, 1);
    cm->scratch = xcalloc(cm->scratch_per_t * (size_t)T + 1, sizeof(float));
    for (int s = 0; s < cm->n_steps; s++) {
        Step *st = &cm->steps[s];
        if (st->i->op != IR_OP_MOE_DISPATCH) continue;
        int64_t k = cols(st->i->in[0]);
        free(st->perm);
        free(st->gate_w);
        st->perm = xcalloc((size_t)(T * k), sizeof *st->perm);
        st->gate_w = xcalloc((size_t)(T * k), sizeof *st->gate_w);
    }
    cm->cap_t = T;
}

/* Attention's segments for T tokens (runs of one sequence's rows: T at most). */
static void ensure_segments(CpuModel *cm, int64_t T)
{
    if (T <= cm->segs_cap) return;
    free(cm->segs);
    cm->segs = xcalloc((size_t)T, sizeof *cm->segs);
    cm->segs_cap = T;
}

static void model_bytes(const IrModule *m, int64_t max_positions, double *kv, double *packed);

static CpuModel *model_new(const IrModule *m, const WeightSet *w, int64_t max_positions, CpuKernelSource *ks,
                           const CpuModelOptions *o, double in_memory_max, bool dry, RtError *err)
{
    int threads = o->threads;
    const char *panel_cache = o->panel_cache;
    MOE_ASSERT(m->planned);
    CpuModel *cm = xcalloc(1, sizeof *cm);
    cm->m = m;
    cm->w = w;
    cm->ks = ks;
    cm->dry = dry;
    cm->max_pos = max_positions;
    cm->n_seqs = 1;
    cm->pool = dry ? NULL : cg_pool_new(threads < 1 ? 1 : threads);
    cm->panels = panel_cache && *panel_cache && !dry ? panel_cache_new(panel_cache, cm->pool, o->panel_cache_verify)
                                                     : NULL;
    cm->in_memory_max = in_memory_max;
    if (o->progress && !dry) {
        double kv;
        model_bytes(m, max_positions, &kv, &cm->total); /* (the same count of the weights pack_sources adds) */
        cm->progress = o->progress, cm->progress_ctx = o->progress_ctx;
    }
    cm->scratch_per_t = cg_route_scratch_floats(m);
    cm->bound = xcalloc((size_t)m->n_values + 1, sizeof *cm->bound); /* binding never allocates */
    for (const IrInstr *i = m->first; i; i = i->next) cm->n_steps++;
    cm->steps = xcalloc((size_t)cm->n_steps, sizeof *cm->steps);
    int s = 0;
    for (const IrInstr *i = m->first; i; i = i->next) cm->steps[s++].i = i;
    for (s = 0; s < cm->n_steps; s++) {
        if (!prepare(cm, &cm->steps[s], err)) {
            cpu_model_free(cm);
            return NULL;
        }
    }
    cm->tail = ir_logits_tail(m);
    plan_fusion(cm);
    return cm;
}

/* Bytes of one sequence's K and V caches of attention op i. */
static double cache_bytes(const IrInstr *i, int64_t max_positions)
{
    CgOpDesc d;
    MOE_ASSERT(cg_op_desc_for(i, &d));
    return 2.0 * (double)dtype_size(d.wdtype) * (double)cg_attention_cache_elems(max_positions, d.kv_heads, d.head_dim);
}

/* The KV caches' bytes (kv) and the packed weights' (packed). */
static void model_bytes(const IrModule *m, int64_t max_positions, double *kv, double *packed)
{
    *kv = *packed = 0;
    for (const IrInstr *i = m->first; i; i = i->next) {
        if (i->op == IR_OP_ATTENTION) *kv += cache_bytes(i, max_positions);
        if (i->op != IR_OP_LINEAR && i->op != IR_OP_MOE_GROUPED_UP && i->op != IR_OP_MOE_GROUPED_DOWN &&
            i->op != IR_OP_MOE_ROUTE)
            continue;
        for (int k = 1; k < i->n_in; k++)
            if (i->in[k]->kind == IR_VAL_PARAM)
                *packed += (double)ir_type_numel(&i->in[k]->type, 1) * (double)dtype_size(i->in[k]->type.dtype);
    }
}

/* (the arena, sized by the tokens of a call, is small beside the packed weights and the caches) */
double cpu_model_bytes_needed(const IrModule *m, int64_t max_positions)
{
    double kv, packed;
    model_bytes(m, max_positions, &kv, &packed);
    return kv + packed;
}

double cpu_model_bytes_freed(const IrModule *m)
{
    double b = 0;
    for (const IrInstr *i = m->first; i; i = i->next)
        for (int k = 0; k < i->n_in; k++)
            if (packed_in_place(i, k) && !read_in_place(m, i->in[k]->tensor))
                b += (double)ir_type_numel(&i->in[k]->type, 1) * (double)dtype_size(i->in[k]->type.dtype);
    return b;
}

double cpu_model_bytes_on_random(const IrModule *m, const ModelSpec *s, bool panel_files)
{
    double kv, packed;
    model_bytes(m, s->max_positions, &kv, &packed);
    return (double)weights_random_bytes(s) - cpu_model_bytes_freed(m) + kv + (panel_files ? 0 : packed);
}

CpuModel *cpu_model_new(const IrModule *m, const WeightSet *w, int64_t max_positions, CpuKernelSource *ks,
                        int threads, RtError *err)
{
    return cpu_model_open(m, w, max_positions, ks, &(CpuModelOptions){.threads = threads}, err);
}

CpuModel *cpu_model_open(const IrModule *m, const WeightSet *w, int64_t max_positions, CpuKernelSource *ks,
                         const CpuModelOptions *o, RtError *err)
{
    double kv, packed, have = mem_available_bytes();
    model_bytes(m, max_positions, &kv, &packed);
    /* With a panel cache the panels are file pages, which the kernel writes back and evicts as it does
     * a checkpoint's: a model larger than memory runs, paged from its files; what packs in memory after
     * all (a step the cache could not take) is checked as it packs (pack_sources). */
    struct stat sb;
    bool files = o->panel_cache && *o->panel_cache && make_dirs(o->panel_cache) && stat(o->panel_cache, &sb) == 0 &&
                 S_ISDIR(sb.st_mode); /* (one this user may only read may hold every file: checked as it packs) */
    double need = kv + (files ? 0 : packed);
    if (!files && weights_release_frees(w)) need -= cpu_model_bytes_freed(m); /* (op by op: a layer's at most more) */
    if (need > 0.9 * have) {
        char a[32], b[32];
        str_bytes(need, a, sizeof a), str_bytes(have, b, sizeof b);
        snprintf(err->msg, sizeof err->msg,
                 "not enough memory: the CPU backend needs %s for its packed weights and KV caches beyond the "
                 "weights themselves, and %s is available", a, b);
        return NULL;
    }
    RtError ignored; /* (cpu.h: what prefetch did not make is made when asked, with its own error) */
    if (ks->prefetch) ks->prefetch(ks->ctx, m, &ignored);
    double left = 0.9 * have - need > 1 ? 0.9 * have - need : 1; /* (what may pack in memory after all) */
    CpuModel *cm = model_new(m, w, max_positions, ks, o, files ? left : 0, false, err);
    if (cm && cm->panels && o->panel_cache_max > 0) panel_cache_trim(cm->panels, o->panel_cache_max);
    return cm;
}

bool cpu_request_kernels(const IrModule *m, CpuKernelSource *ks, RtError *err)
{
    CpuModel *cm = model_new(m, NULL, 1, ks, &(CpuModelOptions){.threads = 1}, 0, true, err);
    bool ok = cm != NULL;
    cpu_model_free(cm);
    return ok;
}

bool cpu_model_run(CpuModel *cm, const int32_t *ids, const int32_t *pos, int64_t T, RtError *err)
{
    return cpu_model_run_steps(cm, 0, cm->n_steps, ids, pos, T, err);
}

bool cpu_model_set_sequences(CpuModel *cm, int n, RtError *err)
{
    MOE_ASSERT(n >= 1 && !cm->dry);
    double need = 0, have = mem_available_bytes();
    for (int s = 0; s < cm->n_steps; s++)
        if (cm->steps[s].i->op == IR_OP_ATTENTION) need += (double)(n - cm->n_seqs) * cache_bytes(cm->steps[s].i, cm->max_pos);
    if (need > 0.9 * have) {
        char a[32], b[32];
        str_bytes(need, a, sizeof a), str_bytes(have, b, sizeof b);
        snprintf(err->msg, sizeof err->msg, "not enough memory: KV caches for %d sequences of %lld positions need %s "
                 "more, and %s is available", n, (long long)cm->max_pos, a, b);
        return false;
    }
    for (int s = 0; s < cm->n_steps; s++) {
        Step *st = &cm->steps[s];
        if (st->i->op != IR_OP_ATTENTION) continue;
        size_t elems = (size_t)cg_attention_cache_elems(cm->max_pos, ir_attr_int(st->i, "kv_heads"),
                                                        cols(st->i->in[1]) / ir_attr_int(st->i, "kv_heads"));
        for (int q = n; q < cm->n_seqs; q++) free(st->kt[q]), free(st->vc[q]);
        st->kt = xrealloc(st->kt, (size_t)n * sizeof *st->kt);
        st->vc = xrealloc(st->vc, (size_t)n * sizeof *st->vc);
        for (int q = cm->n_seqs; q < n; q++) {
            st->kt[q] = xcalloc(elems, dtype_size(st->kv_dt));
            st->vc[q] = xcalloc(elems, dtype_size(st->kv_dt));
        }
    }
    cm->n_seqs = n;
    return true;
}

int cpu_model_sequences(const CpuModel *cm) { return cm->n_seqs; }

bool cpu_model_copy_sequence(CpuModel *cm, int from, int to, int64_t positions, RtError *err)
{
    if (!rt_copy_ok(from, to, positions, cm->n_seqs, cm->max_pos, err)) return false;
    if (from == to || positions == 0) return true;
    int64_t cap = cg_attention_cap(cm->max_pos), tiles = (positions + CG_ATTENTION_KT_KEYS - 1) / CG_ATTENTION_KT_KEYS;
    for (int s = 0; s < cm->n_steps; s++) {
        const Step *st = &cm->steps[s];
        if (st->i->op != IR_OP_ATTENTION) continue;
        int64_t G = ir_attr_int(st->i, "kv_heads"), hd = cols(st->i->in[1]) / G;
        size_t es = dtype_size(st->kv_dt), head = (size_t)(cap * hd) * es; /* a kv head's keys, and its values */
        int64_t rows = st->kv_pairs ? positions + positions % 2 : positions; /* in pairs: whole pairs */
        for (int64_t g = 0; g < G; g++) { /* its first whole key tiles; its first value rows */
            size_t at = (size_t)g * head;
            memcpy((char *)st->kt[to] + at, (const char *)st->kt[from] + at, (size_t)(tiles * CG_ATTENTION_KT_KEYS * hd) * es);
            memcpy((char *)st->vc[to] + at, (const char *)st->vc[from] + at, (size_t)(rows * hd) * es);
        }
    }
    return true;
}

bool cpu_model_run_seqs(CpuModel *cm, const int32_t *ids, const int32_t *pos, const int32_t *seq, int64_t T,
                        RtError *err)
{
    if (!rt_sequences_ok(seq, T, cm->n_seqs, err)) return false;
    cm->seq = seq;
    bool ok = cpu_model_run_steps(cm, 0, cm->n_steps, ids, pos, T, err);
    cm->seq = NULL;
    return ok;
}

void *cpu_model_buffer(const CpuModel *cm, const IrValue *v, int64_t T) { return addr(cm, v, T); }

bool cpu_model_run_steps(CpuModel *cm, int first, int last, const int32_t *ids, const int32_t *pos, int64_t T,
                         RtError *err)
{
    for (int64_t t = 0; pos && t < T; t++) {
        if (pos[t] < 0 || pos[t] >= cm->max_pos) {
            snprintf(err->msg, sizeof err->msg, "position %d of token %lld is outside [0, %lld) (max positions)", pos[t],
                     (long long)t, (long long)cm->max_pos);
            return false;
        }
    }
    if (T <= 0) {
        snprintf(err->msg, sizeof err->msg, "no tokens to run");
        return false;
    }
    if (cm->external && T > cm->cap_t) {
        snprintf(err->msg, sizeof err->msg, "%lld tokens exceed the workspace's %lld", (long long)T,
                 (long long)cm->cap_t);
        return false;
    }
    double arena = (double)cm->m->arena_t * (double)T + (double)cm->m->arena_c;
    double have = !cm->external && T > cm->cap_t ? mem_available_bytes() : 1e300; /* only when the arena grows */
    if (arena > 0.9 * have) {
        char a[32], b[32];
        str_bytes(arena, a, sizeof a), str_bytes(have, b, sizeof b);
        snprintf(err->msg, sizeof err->msg, "not enough memory: %lld tokens need an activation arena of %s, and %s is "
                 "available", (long long)T, a, b);
        return false;
    }
    ensure_capacity(cm, T);
    ensure_segments(cm, T);
    cm->ids = ids;
    cm->pos = pos;
    MOE_ASSERT(0 <= first && first <= last && last <= cm->n_steps);
    for (int s = first; s < last; s++) {
        double t0 = now_s();
        bool tail = cm->last_rows && s >= cm->tail && T > cm->last_rows;
        int fuse = cm->steps[s].fuse, s0 = s;
        if (tail) run_tail_step(cm, &cm->steps[s], T, cm->last_rows);
        else if (fuse > 1 && s + fuse <= last && !(cm->last_rows && s + fuse > cm->tail)) {
            if (cm->steps[s].i->op == IR_OP_MOE_GROUPED_UP) run_ffn(cm, &cm->steps[s], T);
            else run_linears(cm, &cm->steps[s], fuse, T); /* (a range that cuts the run: one at a time) */
            s += fuse - 1;
        } else run_step(cm, &cm->steps[s], T);
        for (int q = s0; q <= s; q++) /* the steps just run: a linear reads its whole weight */
            if (cm->steps[q].i->op == IR_OP_LINEAR) cm->prof.gemm_bytes += weight_bytes(&cm->steps[q].pk[0]);
        *profile_slot(cm, cm->steps[s].i->op) += now_s() - t0;
    }
    cm->last_t = T;
    return true;
}

const void *cpu_model_output(const CpuModel *cm, const char *name, int64_t *ncols, moe_dtype *dtype)
{
    for (int k = 0; k < cm->m->n_outputs; k++) {
        const IrValue *v = cm->m->outputs[k].value;
        if (strcmp(cm->m->outputs[k].name, name) != 0 || v->kind != IR_VAL_RESULT) continue;
        if (ncols) *ncols = cols(v);
        if (dtype) *dtype = v->type.dtype;
        return addr(cm, v, cm->last_t);
    }
    return NULL;
}

CpuProfile cpu_model_profile(const CpuModel *cm) { return cm->prof; }

bool cpu_model_panel_stats(const CpuModel *cm, PanelCacheStats *st)
{
    if (cm->panels) *st = panel_cache_stats(cm->panels);
    return cm->panels != NULL;
}

/* ---- caller memory (embed/): bound inputs and a workspace -------------------------------------- */

void cpu_model_bind_input(CpuModel *cm, const IrValue *input, const void *data)
{
    MOE_ASSERT(input->kind == IR_VAL_INPUT && input->id < cm->m->n_values);
    cm->bound[input->id] = data;
}

static size_t block64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

/* What the GEMM drivers need for runs on up to T tokens: every kernel a step may pick, on the rows
 * it can see (T, or T·k slots for the grouped GEMMs), with its blocking. */
static CgWorkNeed work_need(const CpuModel *cm, int64_t T)
{
    CgWorkNeed need = {0};
    int threads = cg_pool_threads(cm->pool);
    for (int s = 0; s < cm->n_steps; s++) {
        const Step *st = &cm->steps[s];
        bool grouped = st->i->op == IR_OP_MOE_GROUPED_UP || st->i->op == IR_OP_MOE_GROUPED_DOWN;
        int64_t m = grouped ? T * cols(cm->steps[st->dispatch].i->in[0]) : T, groups = grouped ? st->n_pk : 1;
        for (int p = 0; p < st->n_pk; p++) {
            for (int k = 0; k < st->n_ch; k++)
                cg_work_need(&need, st->ch[k].k, &st->ch[k].blk, threads, m, groups, st->pk[p].k);
            if (st->narrow.k) cg_work_need(&need, st->narrow.k, &st->narrow.blk, threads, m, groups, st->pk[p].k);
        }
        if (st->i->op != IR_OP_MOE_GROUPED_UP || st->fuse != 2) continue;
        const Step *dn = st + 1; /* its down-projection, fused with it: what cg_moe_ffn needs as well */
        int64_t inter = st->i->out[0]->type.dims[2];
        for (int k = 0; k < st->n_ch; k++)
            for (int q = 0; q < dn->n_ch; q++)
                if (cg_moe_ffn_packs_h(dn->ch[q].k, &dn->ch[q].blk, inter))
                    cg_work_need_ffn(&need, st->ch[k].k, &st->ch[k].blk, dn->ch[q].k, &dn->ch[q].blk, threads, m,
                                     groups, cols(st->i->in[0]), inter);
    }
    return need;
}

/* The workspace for T tokens, laid out from base (NULL: only measured): the arena, the route
 * scratch, each dispatch's permutation and gate weights, the drivers' scratch. */
static size_t workspace_layout(CpuModel *cm, unsigned char *base, int64_t T)
{
    size_t at = block64((size_t)(cm->m->arena_t * T + cm->m->arena_c) + 64); /* as ensure_capacity */
    if (base) cm->arena = base;
    if (base) cm->scratch = (float *)(base + at);
    at += block64((cm->scratch_per_t * (size_t)T + 1) * sizeof(float));
    for (int s = 0; s < cm->n_steps; s++) {
        Step *st = &cm->steps[s];
        if (st->i->op != IR_OP_MOE_DISPATCH) continue;
        size_t n = (size_t)(T * cols(st->i->in[0]));
        if (base) st->perm = (int32_t *)(base + at);
        at += block64(n * sizeof(int32_t));
        if (base) st->gate_w = (float *)(base + at);
        at += block64(n * sizeof(float));
    }
    CgWorkNeed need = work_need(cm, T);
    if (base) cg_work_borrow(&cm->work, base + at, &need);
    return at + cg_work_need_bytes(&need);
}

size_t cpu_model_workspace_bytes(const CpuModel *cm, int64_t max_t)
{
    return workspace_layout((CpuModel *)cm, NULL, max_t); /* with no base it only measures */
}

static void free_run_buffers(CpuModel *cm)
{
    if (cm->external) return; /* the caller's */
    free(cm->arena);
    free(cm->scratch);
    for (int s = 0; s < cm->n_steps; s++) {
        free(cm->steps[s].perm);
        free(cm->steps[s].gate_w);
    }
}

void cpu_model_set_workspace(CpuModel *cm, void *ws, int64_t max_t)
{
    MOE_ASSERT(((uintptr_t)ws & 63) == 0 && max_t > 0);
    free_run_buffers(cm);
    workspace_layout(cm, ws, max_t);
    ensure_segments(cm, max_t); /* now, not in a run */
    cm->external = true;
    cm->cap_t = max_t;
}

void cpu_model_free(CpuModel *cm)
{
    if (!cm) return;
    free_run_buffers(cm);
    for (int s = 0; s < cm->n_steps; s++) {
        Step *st = &cm->steps[s];
        for (int e = 0; e < st->n_pk; e++)
            if (!panel_file_holds(st->panels, st->pk[e].data)) cg_packed_b_free(&st->pk[e]);
        panel_file_free(st->panels);
        free(st->pk);
        free(st->sched);
        for (int q = 0; st->kt && q < cm->n_seqs; q++) free(st->kt[q]), free(st->vc[q]);
        free(st->kt);
        free(st->vc);
        free(st->vc_ptrs);
        free(st->off);
    }
    free(cm->steps);
    free(cm->segs);
    free(cm->bound);
    cg_work_free(&cm->work);
    cg_pool_free(cm->pool);
    panel_cache_free(cm->panels);
    free(cm);
}
