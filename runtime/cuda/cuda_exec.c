/* cuda_exec.c — the CUDA executor: each instruction of the planned IR becomes a prepared step (its
 * kernels, its device weights, its KV cache), and a call queues the steps on one stream with buffers
 * at their planned offsets in one device arena. Linear layers and the grouped expert GEMMs go to the
 * GEMM kernels of cuda_gemm.c (the decode GEMV for T <= CG_CUDA_GEMV_MAX_T, tiles above), everything
 * else to the op kernels of cuda_ops.c, which are the CPU kernels' kinds with the same constants. */
#include "runtime/cuda/cuda_exec.h"

#include "codegen/cuda/cg_cuda.h"
#include "passes/schedule.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct Kern {
    char *symbol, *source;
    void *fn;
    char launch[200];               /* its launch shape, for `moeppc emit --emit cuda`               */
} Kern;

/* "block B; grid X×Y at T = 1, X×Y at T = 512[; S B of dynamic shared memory]" */
static void launch_text(char *out, size_t n, const unsigned g1[3], const unsigned g2[3], const unsigned b[3],
                        size_t smem)
{
    int w = g1[2] > 1 ? snprintf(out, n, "block %u; grid %ux%ux%u at T = 1, %ux%ux%u at T = 512", b[0], g1[0], g1[1], g1[2],
                                 g2[0], g2[1], g2[2])
                      : snprintf(out, n, "block %u; grid %ux%u at T = 1, %ux%u at T = 512", b[0], g1[0], g1[1], g2[0], g2[1]);
    if (smem && w > 0 && (size_t)w < n) snprintf(out + w, n - (size_t)w, "; %zu B of dynamic shared memory", smem);
}

/* A GPU database's configurations by token count (CudaOptions.tile_sched): MMA tiles (BMxBN/kcBK...)
 * and GEMV forms (slots per pass x warps / u k unroll), in any bucket (the tuner measures the other
 * path's rule too: where the GEMV gives way to the tiles is measured, not fixed at
 * CG_CUDA_GEMV_MAX_T); `all` picks the path for T, `tiles` and `gemvs` the configuration on it.
 * Every configuration named gets its kernel. */
typedef struct GemmAlt {
    TileSchedule all, tiles, gemvs;
    TuneConfig c[2 * TILE_MAX_BUCKETS];
    bool is_gemv[2 * TILE_MAX_BUCKETS];
    CgCudaGemm g[2 * TILE_MAX_BUCKETS];
    int k[2 * TILE_MAX_BUCKETS], n;
    unsigned char *tmap[2 * TILE_MAX_BUCKETS]; /* g[j].tma: W's tensor map (its box; 128 bytes, aligned) */
} GemmAlt;

/* A's tensor map for a TMA kernel that reads A so (DOWN's h, UP's gathered x): its rows are the call's
 * slots, so it is made at a launch, again only when A's place, the slots or the box differ from the
 * last one's. */
typedef struct AMap {
    _Alignas(128) unsigned char map[128];
    uint64_t h, rows;
    unsigned box;
} AMap;

/* One weight matrix [n][k] (or E of them stacked): the tiled kernel (MMA/FMA; -1 when the shape has
 * none: the GEMV serves every T), the GEMV and its decode form for T = 1 (-1: none). */
typedef struct Gemm {
    CgCudaGemm tiled, gemv, gemv1;
    int k_tiled, k_gemv, k_gemv1;
    CgCudaGemm big;                   /* sm_90's TMA rule: the larger tile, where T gives a group its rows */
    int k_big;                        /* (cg_cuda_gemm_tma_large); -1: none, `tiled` for every T         */
    GemmAlt *alt;                     /* NULL: the rule's kernels for every T                          */
    uint64_t w;
    unsigned char *tmap, *tmap_big;   /* tiled.tma, big: the stacked weights' tensor maps (128 bytes, aligned) */
    struct AMap *amap;                /* a TMA kernel's (tiled or tuned) that reads A so: A's tensor map */
} Gemm;

/* Attention's forms other than the rule's: the tuner's candidate (CudaOptions.attn, every T) or a
 * database's schedule (CudaOptions.tile_sched[2]), a kernel per form. */
typedef struct AttnAlt {
    TileSchedule sched;               /* n = 0: f[0] for every T */
    CgCudaAttnForm f[TILE_MAX_BUCKETS];
    int k[TILE_MAX_BUCKETS], n;
    int ks[TILE_MAX_BUCKETS];         /* the form's kernel for several sequences' rows (or runs of them) */
} AttnAlt;

/* The router's forms other than the rule's (fused up to FUSED_ROUTE_MAX_T tokens, the GEMMs above):
 * the tuner's candidate (CudaOptions.route, every T) or a database's schedule (tile_sched[3]). A
 * configuration 1xN is the fused kernel with N threads a token; MxN/kcK the unfused path with the
 * router's linears on that FMA tile (above CG_CUDA_GEMV_MAX_T tokens; their GEMV at or below). */
typedef struct RouteAlt {
    TileSchedule sched;               /* n = 0: c[0] for every T */
    TuneConfig c[TILE_MAX_BUCKETS];
    CgCudaRouteFused rf[TILE_MAX_BUCKETS];
    int kfused[TILE_MAX_BUCKETS];     /* fused: its kernel                                   */
    CgCudaGemm *g;                    /* unfused: [config][n_gm], the linears' tiles         */
    int *k;                           /* ... and their kernels                               */
    int n;
} RouteAlt;

typedef struct Step {
    const IrInstr *i;
    int kern, kern_tanh, kern_scale, kern_kv; /* op kernels (route: post, tanh, scale; attention: +store) */
    CgOpDesc d, d_tanh, d_scale;
    int kern_fused;                 /* route: the fused router for small T (-1: none); attention: its
                                       tiled form for T >= CG_CUDA_ATTN_TILED_MIN_T                        */
    AttnAlt *att;                   /* attention: tuned forms (NULL: the rule's two kernels)              */
    RouteAlt *route;                /* route: tuned forms (NULL: the rule's)                              */
    CgCudaRouteFused rf;
    uint64_t wc_stack;              /* route: the constant experts' Wc stacked for the fused router       */
    Gemm gm[2 + 1 + 64];            /* linear 1; grouped 1 (stacked); route W1 [W2] [Wg] Wc...            */
    int n_gm;
    uint64_t kc, vc;                /* attention: the KV cache, [max_positions, kv_heads·head_dim] of the
                                       model's type (d.wdtype; f32 with MOEPPC_CUDA_ATTN_TC=0)       */
    uint64_t *kcs, *vcs;            /* ... each sequence's ([0] kc, vc; NULL: one sequence)           */
    int n_kv;                       /*   how many of them are allocated                              */
    uint64_t kvs;                   /*   their device table, kc, vc a sequence (n_kv >= 2; else 0)   */
    int kern_seqs;                  /* attention: the rule's per-query form for rows of several
                                       sequences in one launch (cg_cuda_attention_seqs_source)       */
    int kern_fused_seqs;            /*   its tiled form's (kern_fused's) for their runs of
                                       CG_CUDA_ATTN_TILED_MIN_T rows and more                        */
    int kern_kv_seqs;               /*   and their keys' and values' store (cg_cuda_kv_store_seqs_source) */
    int gq;                         /* attention: 1 with CudaOptions.no_attn_gq, every per-query form's
                                       CgCudaAttnForm.gq (the rule's, the database's); else 0        */
    uint64_t vc_ptrs;               /* combine: device array of the constant vectors' device pointers     */
    uint64_t off, perm, gate_w;     /* dispatch: the routing of this layer                                */
    int dispatch;                   /* grouped ops: index of their dispatch step                          */
    int partner;                    /* an a16 DOWN: its UP's step (whose path it follows); else -1       */
    bool a16;                       /* grouped UP/DOWN pair on the cp.async MMA form (T > GEMV): UP's x
                                       rounded to 16 bits into CudaModel.x16 first, h 16-bit in its
                                       f32 arena slot (only DOWN reads it)                               */
    int mlp_up, mlp_down;           /* a grouped DOWN that runs with its UP as one decode MLP kernel
                                       (mark_mlp): the UP's step (in the DOWN) and the DOWN's (in the
                                       UP); -1: none                                                      */
    CgCudaMlp mlp;                  /* the DOWN's: that kernel's (kern_mlp; -1: none)                     */
    int kern_mlp;
    int kern_round;                 /* a16 UP: the rounding kernel                                        */
    int kern_gather;                /* ... and the one into slot order, for a kernel that takes x by the
                                       TMA (cg_cuda_gemm_tma_a); -1: none                                 */
    int by;                         /* scale, dispatch: the combine step that does its work (dispatch:
                                       at T <= CG_CUDA_COMBINE_DISPATCH_MAX_T), or -1 (mark_fusions)     */
    int scale, disp;                /* combine: the scale and dispatch steps it does, or -1               */
    int kern_disp;                  /* combine with disp: its kernel that also dispatches                 */
    int pair, kern_pair;            /* rope: the earlier rope step it does too (the queries' with the
                                       keys'), and that kernel (d_pair); -1 if none                   */
    CgOpDesc d_pair;
    int comb, kern_cmb;             /* route: the combine step its fused kernel can do too (and that
                                       combine's scale and dispatch) up to CG_CUDA_COMBINE_DISPATCH_MAX_T
                                       tokens, and that kernel ("_cmb"); -1 if none                    */
    int lin[2], n_lin;              /* linear: the later linears of its input it does too, up to
                                       CG_CUDA_GEMV_MAX_T tokens (the attention's k and v with q)     */
    CgCudaGemm sg, sg1;             /* linear with n_lin: the GEMV and its decode form over all of them */
    int k_sg, k_sg1;
    uint64_t counter;               /* route with comb: the finished tokens (zero between calls)        */
    uint64_t tcount;                /* route, fused: each token's finished blocks when it has several
                                       (cg_cuda_route_fused_split; CG_CUDA_ROUTE_SPLIT_BLOCKS of them,
                                       zero between calls)                                         */
    bool dead_logits;               /* route with comb: no instruction reads its logits (not written)   */
    int64_t done;                   /* combine, linear: the call (CudaModel.call) in which an earlier
                                       step's kernel did its work (route, an earlier linear)            */
} Step;

typedef struct WMap {
    const Tensor *t;
    uint64_t d;
} WMap;

typedef struct HostOut {
    void *data;
    size_t bytes;
} HostOut;

/* What a captured graph ran: steps [first, last) `reps` times over on T rows, the logits tail on the
 * last `tail` of them (0: all), the rows' sequences seq[T] (a copy; NULL: sequence 0's alone). The
 * launches depend on nothing else: the positions and ids are read on the GPU, and the arena is laid
 * out for T. */
typedef struct GraphKey {
    int first, last, reps;
    int64_t T, tail;
    int32_t *seq;
} GraphKey;

static bool graph_key_is(const GraphKey *k, const GraphKey *q)
{
    return k->first == q->first && k->last == q->last && k->reps == q->reps && k->T == q->T && k->tail == q->tail &&
           !k->seq == !q->seq &&
           (!k->seq || !memcmp(k->seq, q->seq, (size_t)k->T * sizeof *k->seq));
}

static GraphKey graph_key_copy(const GraphKey *q)
{
    GraphKey k = *q;
    if (q->seq) k.seq = memcpy(xmalloc((size_t)q->T * sizeof *q->seq), q->seq, (size_t)q->T * sizeof *q->seq);
    return k;
}

struct CudaModel {
    const IrModule *m;
    const WeightSet *w;
    CudaOptions o;
    double ready, total;            /* CudaOptions.progress: the weights' bytes uploaded, of all     */
    bool dry;                       /* only collect the kernels (cuda_module_kernels): no GPU          */
    bool pdl;                       /* CudaOptions.pdl, where this GPU and the kernels' target allow it */
    CgCudaDriver *drv;
    bool own_drv;                   /* opened here (else CudaOptions.driver, borrowed)                  */
    struct { const IrValue *v; uint64_t d; } bound[4]; /* caller_workspace: inputs in device memory   */
    int n_bound;
    char arch[16], info[256];
    int sms;                        /* the GPU's SMs: the blocks a persistent (ws) GEMM launches       */
    int tail;                       /* the logits tail's first step (ir_logits_tail)                   */
    Kern *k;
    int n_k, cap_k;
    Step *steps;
    int n_steps;
    WMap *wmap;
    int n_w, cap_w;
    void *stage;                    /* random weights made here a run of rows at a time, then uploaded  */
    size_t stage_bytes;             /*   (dupload_made; freed once the steps are prepared)            */
    uint64_t *allocs;               /* every allocation that lives as long as the model                */
    int n_allocs, cap_allocs;
    double bytes;
    int64_t max_pos, cap_t, last_t;
    uint64_t arena, ids, pos, seqs, scratch, x16; /* sized by cap_t (seqs: the rows' sequences)      */
    uint64_t att_rows;              /* sized by cap_t: a call of several sequences' (seq) rows, those
                                       of its runs (a sequence's consecutive rows) shorter than
                                       CG_CUDA_ATTN_TILED_MIN_T, n_att_rows of them: attention's one
                                       launch over the caches' table (attend_seqs); then the other
                                       runs' first row and row count each, n_att_long of them, with
                                       att_long_rows rows in all: the tiled form's one launch; set
                                       with the ids                                               */
    int32_t *att_rows_h;
    int64_t n_att_rows, att_runs;   /*   ... and the call's runs                                     */
    int64_t n_att_long, att_long_rows;
    bool att_alone;                 /*   each row the only one of its sequence in the call (the
                                       attention kernel stores its own key and value)               */
    uint64_t attn_part, attn_cnt;   /* the per-query attention's key splits below
                                       CG_CUDA_ATTN_TILED_MIN_T tokens: partial results, arrivals
                                       (zero between launches); 0: no split                       */
    size_t attn_part_bytes, attn_cnt_n;
    size_t scratch_per_t;           /* route scratch floats per token                                   */
    size_t x16_per_t;               /* bytes per token of x16: the widest a16 UP's input, 16-bit, k_top
                                       rows of it (a TMA UP's x in slot order, the gather16 kernel's) */
    struct { GraphKey key; int ops; void *g; } graphs[8]; /* step ranges captured as CUDA graphs, for
                                       this cap_t: T = 1 (the decode step: all of them), and runs of
                                       several sequences' rows seen twice in a row (a --batch decode
                                       step); round robin; ops: the GPU operations each holds      */
    int n_graphs;
    GraphKey seen;                  /* the last run of several sequences' rows (its seq copied)      */
    void *ev0, *ev1;
    double last_ms;
    int ops;                        /* the GPU operations (launches, fills, copies) of the last call */
    int64_t call;                   /* run_range calls so far (Step.done)                            */
    int n_seqs;                     /* sequences with KV caches (cuda_model_set_sequences)           */
    const int32_t *seq;             /* the current run's tokens' sequences (host; NULL: all 0)       */
    HostOut *outs;                  /* per module output: its host copy                                 */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int64_t cols(const IrValue *v) { return v->type.dims[v->type.ndim - 1]; }

static size_t round64(size_t n) { return (n + 63) & ~(size_t)63; }

/* ---- device memory ------------------------------------------------------------------------------ */

static bool dalloc(CudaModel *cm, uint64_t *p, size_t bytes, const char *what, bool keep, RtError *err)
{
    char e[512];
    if (!cg_cuda_alloc(cm->drv, p, bytes, e, sizeof e)) {
        bool mb = bytes >= (size_t)1 << 20;
        snprintf(err->msg, sizeof err->msg, "allocating %.1f %s on the GPU for %s: %s",
                 (double)bytes / (mb ? 1048576.0 : 1024.0), mb ? "MB" : "KB", what, e);
        return false;
    }
    cm->bytes += (double)bytes;
    if (keep) {
        if (cm->n_allocs == cm->cap_allocs)
            cm->allocs = xrealloc(cm->allocs, (size_t)(cm->cap_allocs = cm->cap_allocs ? 2 * cm->cap_allocs : 64) * sizeof *cm->allocs);
        cm->allocs[cm->n_allocs++] = *p;
    }
    return true;
}

static bool dupload(CudaModel *cm, uint64_t dst, const void *src, size_t bytes, RtError *err)
{
    char e[512];
    if (cg_cuda_upload(cm->drv, dst, src, bytes, e, sizeof e)) return true;
    snprintf(err->msg, sizeof err->msg, "uploading to the GPU: %s", e);
    return false;
}

static const Tensor *param(const CudaModel *cm, const IrValue *v)
{
    const Tensor *t = weights_find(cm->w, v->tensor);
    MOE_ASSERT(t); /* weights_check ran before */
    return t;
}

static size_t tensor_bytes(const IrValue *v) { return (size_t)ir_type_numel(&v->type, 1) * dtype_size(v->type.dtype); }

/* A random tensor not made yet (weights_made_on_read) to device address d, made 64 MiB of rows at a
 * time (CudaOptions.upload_run) into one host buffer and uploaded from there: its own pages are never
 * touched (made whole, the 7B's 15 GB were faulted in and given back a tensor at a time). */
static bool dupload_made(CudaModel *cm, uint64_t d, const Tensor *t, RtError *err)
{
    size_t row = t->nbytes / (size_t)t->shape[0], want = cm->o.upload_run ? cm->o.upload_run : (size_t)64 << 20;
    int64_t run = row < want ? (int64_t)(want / row) : 1;
    if (run > t->shape[0]) run = t->shape[0];
    if (cm->stage_bytes < (size_t)run * row) {
        free(cm->stage);
        cm->stage = xmalloc(cm->stage_bytes = (size_t)run * row);
    }
    for (int64_t r = 0; r < t->shape[0]; r += run) {
        int64_t n = t->shape[0] - r < run ? t->shape[0] - r : run;
        weights_make_rows(cm->w, t, r, n, cm->stage);
        if (!dupload(cm, d + (uint64_t)r * row, cm->stage, (size_t)n * row, err)) return false;
    }
    return true;
}

/* A parameter's bytes [bytes] to device address d, whole or from its two parts (weights_parts), or
 * made (dupload_made). */
/* (The upload is synchronous: the device copy is what runs, and the checkpoint's pages then leave the
 * process, weights_release.) */
static bool dupload_tensor_data(CudaModel *cm, uint64_t d, const Tensor *t, size_t bytes, RtError *err);

/* ... and said to CudaOptions.progress */
static bool dupload_tensor(CudaModel *cm, uint64_t d, const Tensor *t, size_t bytes, RtError *err)
{
    if (!dupload_tensor_data(cm, d, t, bytes, err)) return false;
    cm->ready += (double)bytes;
    if (cm->o.progress) cm->o.progress(cm->o.progress_ctx, cm->ready < cm->total ? cm->ready : cm->total, cm->total);
    return true;
}

static bool dupload_tensor_data(CudaModel *cm, uint64_t d, const Tensor *t, size_t bytes, RtError *err)
{
    const void *part[2];
    size_t lo;
    if (weights_made_on_read(cm->w, t) && t->nbytes) {
        MOE_ASSERT(bytes == t->nbytes);
        return dupload_made(cm, d, t, err);
    }
    if (!weights_parts(cm->w, t, part, &lo)) {
        const void *data = weights_data(cm->w, t, err); /* (a random tensor released: made again) */
        if (!dupload(cm, d, data, bytes, err)) return false;
        weights_release(cm->w, data, bytes);
        return true;
    }
    MOE_ASSERT(bytes == t->nbytes);
    if (!dupload(cm, d, part[0], lo, err) || !dupload(cm, d + lo, part[1], bytes - lo, err)) return false;
    weights_release(cm->w, part[0], lo);
    weights_release(cm->w, part[1], bytes - lo);
    return true;
}

/* The device copy of a parameter, uploaded on first use. */
static bool wdev(CudaModel *cm, const IrValue *v, uint64_t *out, RtError *err)
{
    *out = 0;
    if (cm->dry) return true;
    const Tensor *t = param(cm, v);
    for (int j = 0; j < cm->n_w; j++)
        if (cm->wmap[j].t == t) return *out = cm->wmap[j].d, true;
    if (cm->o.weights_in_place) {
        const void *whole = weights_data(cm->w, t, err);
        if (!whole && t->nbytes) return false;
        *out = (uint64_t)(uintptr_t)whole;
    } else if (!dalloc(cm, out, tensor_bytes(v), v->tensor, true, err) ||
               !dupload_tensor(cm, *out, t, tensor_bytes(v), err))
        return false;
    if (cm->n_w == cm->cap_w) cm->wmap = xrealloc(cm->wmap, (size_t)(cm->cap_w = cm->cap_w ? 2 * cm->cap_w : 64) * sizeof *cm->wmap);
    cm->wmap[cm->n_w++] = (WMap){t, *out};
    return true;
}

/* A device array of the device addresses of weights ins[0..n) (weights used in place). */
static bool wtable(CudaModel *cm, IrValue *const *ins, int n, const char *what, uint64_t *out, RtError *err)
{
    uint64_t *ptrs = xcalloc((size_t)n + 1, sizeof *ptrs);
    bool ok = true;
    for (int e = 0; ok && e < n; e++) {
        const Tensor *t = param(cm, ins[e]);
        ptrs[e] = (uint64_t)(uintptr_t)weights_data(cm->w, t, err);
        ok = ptrs[e] || !t->nbytes;
    }
    ok = ok && dalloc(cm, out, (size_t)n * sizeof *ptrs, what, true, err) && dupload(cm, *out, ptrs, (size_t)n * sizeof *ptrs, err);
    free(ptrs);
    return ok;
}

/* The experts' matrices i->in[first..first+n) stacked [n][rows][cols] (the grouped GEMMs' layout),
 * or, with the weights in place, a table of where each one is. */
static bool wstack(CudaModel *cm, const IrInstr *i, int first, int n, uint64_t *out, RtError *err)
{
    *out = 0;
    if (cm->dry) return true;
    if (cm->o.weights_in_place) return wtable(cm, i->in + first, n, "the experts' weight table", out, err);
    size_t per = tensor_bytes(i->in[first]);
    if (!dalloc(cm, out, per * (size_t)n, "stacked expert weights", true, err)) return false;
    for (int e = 0; e < n; e++) {
        MOE_ASSERT(tensor_bytes(i->in[first + e]) == per);
        if (!dupload_tensor(cm, *out + per * (size_t)e, param(cm, i->in[first + e]), per, err)) return false;
    }
    return true;
}

/* ---- kernels ------------------------------------------------------------------------------------ */

/* Register a kernel (source owned from here on); the index of the one with that symbol if known. */
static int kern_add(CudaModel *cm, const char *symbol, char *source)
{
    for (int j = 0; j < cm->n_k; j++)
        if (strcmp(cm->k[j].symbol, symbol) == 0) {
            free(source);
            return j;
        }
    if (cm->n_k == cm->cap_k) cm->k = xrealloc(cm->k, (size_t)(cm->cap_k = cm->cap_k ? 2 * cm->cap_k : 32) * sizeof *cm->k);
    cm->k[cm->n_k] = (Kern){.symbol = xstrdup(symbol), .source = source};
    return cm->n_k++;
}

static bool kern_have(const CudaModel *cm, const char *sym, int *out)
{
    for (int j = 0; j < cm->n_k; j++)
        if (strcmp(cm->k[j].symbol, sym) == 0) return *out = j, true;
    return false;
}

/* Kernel src (taken; NULL: generation failed, err set, nothing added) added as sym, with its launch
 * shapes at T = 1 and 512 (g1, g2, b from the op's or the GEMM's launch function). */
static bool kern_new(CudaModel *cm, const char *sym, char *src, const unsigned g1[3], const unsigned g2[3],
                     const unsigned b[3], size_t smem, int *out)
{
    if (!src) return false;
    *out = kern_add(cm, sym, src);
    launch_text(cm->k[*out].launch, sizeof cm->k[*out].launch, g1, g2, b, smem);
    return true;
}

static bool op_kern(CudaModel *cm, const CgOpDesc *d, int *out, RtError *err)
{
    char sym[600];
    cg_cuda_op_symbol(d, sym, sizeof sym);
    if (kern_have(cm, sym, out)) return true;
    char *src = cg_cuda_op_source(d, err->msg, sizeof err->msg); /* checks d before it is launched */
    unsigned g1[3], g2[3], b[3];
    size_t smem = 0;
    if (src) cg_cuda_op_launch(d, 1, g1, b, &smem), cg_cuda_op_launch(d, 512, g2, b, &smem);
    return kern_new(cm, sym, src, g1, g2, b, smem, out);
}

static bool gemm_kern(CudaModel *cm, const CgCudaGemm *g, int *out, RtError *err)
{
    char sym[256];
    cg_cuda_gemm_symbol(g, sym, sizeof sym);
    if (kern_have(cm, sym, out)) return true;
    char *src = cg_cuda_gemm_source(g, err->msg, sizeof err->msg); /* checks g before it is launched */
    unsigned g1[3], g2[3], b[3];
    size_t smem = 0;
    if (src) cg_cuda_gemm_launch(g, 1, g1, b, &smem), cg_cuda_gemm_launch(g, 512, g2, b, &smem);
    return kern_new(cm, sym, src, g1, g2, b, smem, out);
}

static bool half_dtype(moe_dtype dt) { return dt == DT_BF16 || dt == DT_F16; }

/* The architecture the kernels are compiled for: the built-in images' (an executable, the embedding
 * library), else this GPU's (NVRTC here; a dry run: the target's). */
static const char *kernel_arch(const CudaModel *cm)
{
    return cm->o.n_images && cm->o.images_arch ? cm->o.images_arch : cm->arch;
}

/* Can the grouped GEMMs run on wgmma here: kernels for sm_90 or the emulator (a dry run: the target's)
 * on that GPU. */
static bool wgmma_here(const CudaModel *cm)
{
    const char *ka = kernel_arch(cm);
    return strcmp(ka, cm->arch) == 0 && (strcmp(ka, "sm_90") == 0 || strcmp(ka, CG_CUDA_EMU_ARCH) == 0);
}

bool cuda_tma_rule(const char *karch, const char *garch, const CudaOptions *o)
{
    return !o->no_tma && karch && garch && strcmp(karch, "sm_90") == 0 && strcmp(garch, "sm_90") == 0;
}

/* The kernel of every configuration of a tuned schedule (text as CudaOptions.tile_sched): tiles on
 * gm->tiled's path in the configuration's form (none when `tiles` is false: no tiled kernel), GEMV
 * forms on gm->gemv's. */
/* A GEMV form (slots x warps / u unroll) rather than a tile (MxN/kcK...)? */
static bool config_is_gemv(const TuneConfig *c) { return c->unroll > 0 && !c->kc && !c->stages && !c->wgmma; }

static bool gemm_alt(CudaModel *cm, Gemm *gm, const char *text, bool tiles, RtError *err)
{
    GemmAlt *a = gm->alt = xcalloc(1, sizeof *gm->alt);
    TileSchedule *all = &a->all;
    if (!tile_schedule_parse(text, all) || all->nr != TILE_SCHED_GPU) {
        snprintf(err->msg, sizeof err->msg, "the tuning database's tile schedule '%s' is not a GPU one", text);
        return false;
    }
    int kept = 0;
    for (int b = 0; b < all->n; b++) { /* (the decode MLP's configurations are mark_mlp's, no GEMM's) */
        TileBucket *bk = &all->b[b];
        int m = 0;
        for (int c = 0; c < bk->n; c++)
            if (!bk->c[c].mlp) bk->c[m] = bk->c[c], bk->gflops[m++] = bk->gflops[c];
        bk->n = m;
        if (m) all->b[kept++] = *bk;
    }
    if (!(all->n = kept)) { /* (nothing but the MLP: the rule's GEMMs) */
        free(a), gm->alt = NULL;
        return true;
    }
    a->tiles.nr = a->gemvs.nr = all->nr;
    for (int b = 0; b < all->n; b++) { /* each bucket's configurations of each path */
        for (int path = 0; path < 2; path++) {
            TileSchedule *to = path ? &a->gemvs : &a->tiles;
            TileBucket nb = {.tokens = all->b[b].tokens};
            for (int c = 0; c < all->b[b].n; c++)
                if (config_is_gemv(&all->b[b].c[c]) == path && (path || tiles))
                    nb.c[nb.n] = all->b[b].c[c], nb.gflops[nb.n++] = all->b[b].gflops[c];
            if (nb.n) to->b[to->n++] = nb;
        }
        for (int c = 0; c < all->b[b].n; c++) {
            const TuneConfig *t = &all->b[b].c[c];
            bool gv = config_is_gemv(t), have = false;
            if (!gv && !tiles) continue;
            for (int j = 0; j < a->n; j++) have |= a->is_gemv[j] == gv && tune_config_equal(&a->c[j], t);
            if (have) continue;
            CgCudaGemm g = gv ? gm->gemv : gm->tiled;
            if (!gv && cg_cuda_gemm_a16(&g)) { /* the configuration's form: mma.sync or (sm_90) wgmma */
                if (t->wgmma && !wgmma_here(cm)) continue; /* (the pick then finds no kernel: the rule's runs) */
                g = t->wgmma ? cg_cuda_gemm_wgmma(&g) : cg_cuda_gemm_async(&g);
            }
            bool tma_ok = !gv && t->wgmma && (t->tma || cm->o.tma) && !g.w_table && (t->kc ? t->kc : g.bk) == 64;
            if (gv) g.bm = t->tile_m, g.bn = t->tile_n, g.bk = t->unroll ? t->unroll : g.bk;
            else g.bm = t->tile_m, g.bn = t->tile_n, g.bk = t->kc ? (int)t->kc : g.bk;
            if (!gv && t->stages && cg_cuda_gemm_a16(&g)) g.stages = t->stages;
            g.split = t->split; /* (the generator refuses it on UP: a database made by hand) */
            g.tma = tma_ok;
            g.gather_a = tma_ok && g.kind == CG_CUDA_GEMM_UP && cm->o.tma_gather_a;
            g.ws = tma_ok && t->ws; /* (a database's ws without TMA here: the plain TMA form) */
            cg_cuda_gemm_persist(&g, cm->sms, cm->o.no_stream_k);
            a->c[a->n] = *t, a->is_gemv[a->n] = gv, a->g[a->n] = g;
            if (!gemm_kern(cm, &a->g[a->n], &a->k[a->n], err)) return false;
            a->n++;
        }
    }
    return true;
}

/* The kernels of one weight matrix [n][k] (per group): tiles (MMA for 16-bit weights with k a multiple
 * of 8, FMA for f32) and the GEMV. */
static bool gemm_setup(CudaModel *cm, Gemm *gm, cg_cuda_gemm_kind kind, moe_dtype dt, int64_t E, int64_t k_top,
                       int64_t n, int64_t k, int64_t ldc, bool f32_math, bool a16, RtError *err)
{
    bool half = half_dtype(dt) && !f32_math, table = cm->o.weights_in_place && kind != CG_CUDA_GEMM_LINEAR;
    gm->k_tiled = gm->k_big = -1;
    if (!half || k % 8 == 0) {
        gm->tiled = cg_cuda_gemm_default(kind, half ? CG_CUDA_PATH_MMA : CG_CUDA_PATH_FMA, dt, E, k_top, n, k);
        bool rule_tma = a16 && !table && cuda_tma_rule(kernel_arch(cm), cm->arch, &cm->o);
        bool wg = a16 && (cm->o.wgmma || cm->o.tma || cm->o.ws || rule_tma) && wgmma_here(cm);
        const int *tile = cm->o.tile[kind == CG_CUDA_GEMM_DOWN];
        int stages = cm->o.stages[kind == CG_CUDA_GEMM_DOWN];
        /* W by the TMA (the rule's or asked for), not warp-specialised, no tile or ring asked for: the
         * rule's two tiles */
        bool two = wg && (rule_tma || cm->o.tma) && !cm->o.ws && !cm->o.no_tile_pair && !table && tile[0] <= 0 &&
                   stages <= 0;
        if (a16)
            gm->tiled = two  ? cg_cuda_gemm_tma(&gm->tiled, false)
                        : wg ? cg_cuda_gemm_wgmma(&gm->tiled)
                             : cg_cuda_gemm_async(&gm->tiled);
        gm->tiled.w_table = table;
        if (half && kind != CG_CUDA_GEMM_LINEAR && tile[0] > 0)
            gm->tiled.bm = tile[0], gm->tiled.bn = tile[1], gm->tiled.bk = tile[2];
        if (a16 && stages > 0) gm->tiled.stages = stages;
        gm->tiled.tma = wg && (cm->o.tma || cm->o.ws || rule_tma) && !table && gm->tiled.bk == 64;
        gm->tiled.gather_a = gm->tiled.tma && kind == CG_CUDA_GEMM_UP && cm->o.tma_gather_a;
        gm->tiled.ldc = ldc;
        if (kind == CG_CUDA_GEMM_DOWN) gm->tiled.split = cm->o.split_down;
        gm->tiled.ws = gm->tiled.tma && cm->o.ws && gm->tiled.split <= 1;
        cg_cuda_gemm_persist(&gm->tiled, cm->sms, cm->o.no_stream_k);
        if (!gemm_kern(cm, &gm->tiled, &gm->k_tiled, err)) return false;
        gm->big = cg_cuda_gemm_tma(&gm->tiled, true); /* (keeps the rest: tma, ldc, split) */
        gm->big.ws = gm->big.ws && gm->big.tma && gm->big.split <= 1 && !cm->o.no_ws;
        cg_cuda_gemm_persist(&gm->big, cm->sms, cm->o.no_stream_k);
        if (two && gm->tiled.tma && !gemm_kern(cm, &gm->big, &gm->k_big, err)) return false;
    }
    gm->gemv = cg_cuda_gemm_default(kind, CG_CUDA_PATH_GEMV, dt, E, k_top, n, k);
    gm->gemv.ldc = ldc;
    gm->gemv.w_table = table;
    if (kind == CG_CUDA_GEMM_DOWN) gm->gemv.split = cm->o.split_down;
    gm->k_gemv1 = -1;
    const int *gv = cm->o.gemv[kind == CG_CUDA_GEMM_DOWN];
    bool gv_set = kind != CG_CUDA_GEMM_LINEAR && gv[0] > 0; /* the tuner's candidate, T = 1 included */
    if (gv_set) gm->gemv.bm = gv[0], gm->gemv.bn = gv[1], gm->gemv.bk = gv[2];
    if (!gemm_kern(cm, &gm->gemv, &gm->k_gemv, err)) return false;
    gm->gemv1 = cg_cuda_gemm_decode(&gm->gemv);
    if (!cm->o.no_decode_gemv && !gv_set && !gemm_kern(cm, &gm->gemv1, &gm->k_gemv1, err)) return false;
    const char *sched = cm->o.tile_sched[kind == CG_CUDA_GEMM_DOWN];
    return !sched || kind == CG_CUDA_GEMM_LINEAR || !half || gemm_alt(cm, gm, sched, gm->k_tiled >= 0, err);
}

/* W's tensor map for a TMA kernel g of gm (its weights stacked at gm->w), into *map (allocated: a
 * tensor map is 128 bytes, 64-byte aligned). */
static bool tma_map(CudaModel *cm, const Gemm *gm, const CgCudaGemm *g, unsigned char **map, RtError *err)
{
    uint64_t rows;
    unsigned box;
    char e[512];
    cg_cuda_gemm_tma_map(g, &rows, &box);
    if (!*map && !(*map = aligned_alloc(128, 128))) {
        snprintf(err->msg, sizeof err->msg, "out of host memory for a tensor map");
        return false;
    }
    if (cg_cuda_tensor_map_2d(cm->drv, *map, gm->w, (uint64_t)g->k, rows, 64, box, true, e, sizeof e)) return true;
    snprintf(err->msg, sizeof err->msg, "the tensor map of %lld x %lld weights for the TMA: %s", (long long)rows,
             (long long)g->k, e);
    return false;
}

/* Does one of gm's tiled kernels read A by the TMA (cg_cuda_gemm_tma_a; big: as tiled). */
static bool gemm_tma_a(const Gemm *gm)
{
    bool any = gm->k_tiled >= 0 && cg_cuda_gemm_tma_a(&gm->tiled);
    for (int j = 0; gm->alt && j < gm->alt->n; j++) any |= cg_cuda_gemm_tma_a(&gm->alt->g[j]);
    return any;
}

/* The tensor maps of gm's TMA kernels (after its weights are on the device). */
static bool tma_maps(CudaModel *cm, Gemm *gm, RtError *err)
{
    if (cm->dry) return true;
    if (gemm_tma_a(gm) && !gm->amap) {
        if (!(gm->amap = aligned_alloc(128, sizeof *gm->amap))) {
            snprintf(err->msg, sizeof err->msg, "out of host memory for a tensor map");
            return false;
        }
        memset(gm->amap, 0, sizeof *gm->amap); /* (h 0: none made yet) */
    }
    if (gm->k_tiled >= 0 && gm->tiled.tma && !tma_map(cm, gm, &gm->tiled, &gm->tmap, err)) return false;
    if (gm->k_big >= 0 && !tma_map(cm, gm, &gm->big, &gm->tmap_big, err)) return false;
    for (int j = 0; gm->alt && j < gm->alt->n; j++)
        if (gm->alt->g[j].tma && !tma_map(cm, gm, &gm->alt->g[j], &gm->alt->tmap[j], err)) return false;
    return true;
}

/* f32_math: f32 activations whatever the weights (the router, SEMANTICS.md §4), else tensor cores
 * for 16-bit weights. */
static bool linear_setup(CudaModel *cm, Gemm *gm, const IrValue *w, int64_t ldc, bool f32_math, RtError *err)
{
    return gemm_setup(cm, gm, CG_CUDA_GEMM_LINEAR, w->type.dtype, 1, 1, w->type.dims[0], w->type.dims[1], ldc, f32_math, false,
                      err) &&
           wdev(cm, w, &gm->w, err);
}

/* ---- preparing the steps ------------------------------------------------------------------------ */

bool cuda_route_fused_desc(const IrInstr *i, bool wc_table, CgCudaRouteFused *rf)
{
    int64_t nc = ir_attr_int(i, "n_const"), L = ir_attr_int(i, "router_layers");
    bool res = ir_attr_int(i, "residual"), same_dtype = true;
    for (int k = 1; k < i->n_in; k++)
        same_dtype &= (res && k == 1 + (int)L) || i->in[k]->type.dtype == i->in[1]->type.dtype;
    *rf = (CgCudaRouteFused){.wc_table = wc_table && nc > 0, .wdtype = i->in[1]->type.dtype, .d = cols(i->in[0]),
                             .h1 = L == 2 ? i->in[1]->type.dims[0] : 0, .residual = res, .s = ir_attr_float(i, "s")};
    return same_dtype && cg_op_desc_for(i, &rf->post);
}

/* The fused router rf's kernel (false, nothing added, when its vectors do not fit one block). */
static bool route_fused_kern(CudaModel *cm, const CgCudaRouteFused *rf, int *out)
{
    char sym[800], why[512];
    cg_cuda_route_fused_symbol(rf, sym, sizeof sym);
    if (kern_have(cm, sym, out)) return true;
    char *src = cg_cuda_route_fused_source(rf, why, sizeof why);
    if (!src) return false;
    unsigned g1[3], g2[3], bl[3];
    size_t smem;
    cg_cuda_route_fused_launch(rf, 1, g1, bl, &smem);
    cg_cuda_route_fused_launch(rf, 512, g2, bl, &smem);
    return kern_new(cm, sym, src, g1, g2, bl, smem, out);
}

/* The tuned router forms (RouteAlt), after the rule's kernels are set up. A fused form where the
 * fused router cannot be (vectors too large, weights of mixed dtypes) is left out: the pick then
 * finds no kernel and the rule's path runs. */
static bool route_alt(CudaModel *cm, Step *st, RtError *err)
{
    const char *text = cm->o.tile_sched[3];
    if (cm->o.route[0] <= 0 && !text) return true;
    RouteAlt *a = st->route = xcalloc(1, sizeof *st->route);
    TuneConfig list[TILE_MAX_BUCKETS];
    int n = 0;
    if (cm->o.route[0] > 0) {
        list[n++] = (TuneConfig){.tile_m = cm->o.route[0], .tile_n = cm->o.route[1], .kc = cm->o.route[2]};
    } else {
        if (!tile_schedule_parse(text, &a->sched) || a->sched.nr != TILE_SCHED_GPU) {
            snprintf(err->msg, sizeof err->msg, "the tuning database's router schedule '%s' is not a GPU one", text);
            return false;
        }
        for (int b = 0; b < a->sched.n; b++)
            for (int c = 0; c < a->sched.b[b].n; c++) {
                bool have = false;
                for (int j = 0; j < n; j++) have |= tune_config_equal(&list[j], &a->sched.b[b].c[c]);
                if (have) continue;
                if (n == TILE_MAX_BUCKETS) {
                    snprintf(err->msg, sizeof err->msg, "the router schedule '%s' names more than %d forms", text,
                             TILE_MAX_BUCKETS);
                    return false;
                }
                list[n++] = a->sched.b[b].c[c];
            }
    }
    a->g = xcalloc((size_t)(n * st->n_gm), sizeof *a->g), a->k = xcalloc((size_t)(n * st->n_gm), sizeof *a->k);
    for (int j = 0; j < n; j++) {
        const TuneConfig *t = &list[j];
        a->c[a->n] = *t, a->kfused[a->n] = -1;
        if (t->tile_m == 1) { /* fused, t->tile_n threads */
            if (st->kern_fused < 0) continue;
            a->rf[a->n] = st->rf, a->rf[a->n].threads = t->tile_n;
            if (!route_fused_kern(cm, &a->rf[a->n], &a->kfused[a->n])) {
                snprintf(err->msg, sizeof err->msg, "the router form %dx%d: %d threads a block (whole warps, 32..1024)",
                         t->tile_m, t->tile_n, t->tile_n);
                return false;
            }
        } else { /* every linear of the router on this FMA tile */
            for (int q = 0; q < st->n_gm; q++) {
                CgCudaGemm *g = &a->g[a->n * st->n_gm + q];
                *g = st->gm[q].tiled;
                g->bm = t->tile_m, g->bn = t->tile_n, g->bk = t->kc ? (int)t->kc : g->bk;
                if (st->gm[q].k_tiled < 0 || !gemm_kern(cm, g, &a->k[a->n * st->n_gm + q], err)) return false;
            }
        }
        a->n++;
    }
    return true;
}

/* The MoE combine step c's instruction is, for the kernels that fold one (the combine's own dispatch,
 * the fused router's "_cmb" form): a COMBINE, or the ZEROS a vanilla MoE layer starts its output with
 * (the down-projection's y0, its dispatch's picks a route's), a combine of no zero-computation
 * experts: y = 0. Sets io to its x, the route's weights and ids, and d to its descriptor; NULL when ci
 * is neither, else the instruction that made the weights. */
static const IrInstr *combine_of(const CudaModel *cm, const IrInstr *ci, const IrValue *io[3], CgOpDesc *d)
{
    if (ci->op == IR_OP_MOE_COMBINE) {
        io[0] = ci->in[0], io[1] = ci->in[1], io[2] = ci->in[2];
        MOE_ASSERT(cg_op_desc_for(ci, d));
        return ci->in[1]->def;
    }
    if (ci->op != IR_OP_ZEROS) return NULL;
    for (int s = 0; s < cm->n_steps; s++) {
        const IrInstr *di = cm->steps[s].i;
        if (di->op != IR_OP_MOE_GROUPED_DOWN || di->in[4] != ci->out[0]) continue; /* (its y0) */
        const IrInstr *dp = di->in[1]->def, *ri = dp && dp->op == IR_OP_MOE_DISPATCH ? dp->in[0]->def : NULL;
        if (!ri || ri->op != IR_OP_MOE_ROUTE || ri->out[1] != dp->in[0] ||
            ir_attr_int(ri, "n_const") || cols(ri->in[0]) != cols(ci->out[0]) || ci->out[0]->type.dtype != DT_F32)
            continue;
        io[0] = ri->in[0], io[1] = ri->out[0], io[2] = ri->out[1];
        *d = (CgOpDesc){.kind = CG_OP_COMBINE, .wdtype = DT_F32, .cols = cols(ci->out[0]), .k = cols(ri->out[1]),
                        .s = ir_attr_float(ri, "s")}; /* copy_lo = copy_hi: no copy experts */
        return ri;
    }
    return NULL;
}

static bool prepare_route(CudaModel *cm, Step *st, RtError *err)
{
    const IrInstr *i = st->i;
    int64_t nc = ir_attr_int(i, "n_const"), L = ir_attr_int(i, "router_layers"), D = cols(i->in[0]);
    MOE_ASSERT(cg_op_desc_for(i, &st->d));
    if (!op_kern(cm, &st->d, &st->kern, err)) return false;
    if (L == 2) {
        st->d_tanh = (CgOpDesc){.kind = CG_OP_TANH, .wdtype = DT_F32, .cols = i->in[1]->type.dims[0]};
        if (!op_kern(cm, &st->d_tanh, &st->kern_tanh, err)) return false;
    }
    if (nc) {
        st->d_scale = (CgOpDesc){.kind = CG_OP_SCALE, .wdtype = DT_F32, .cols = D, .s = ir_attr_float(i, "s")};
        if (!op_kern(cm, &st->d_scale, &st->kern_scale, err)) return false;
    }
    /* every operand but x and the residual logits r is a weight: W1 [W2] [Wg] Wc... */
    int res_at = 1 + (int)L;
    bool res = ir_attr_int(i, "residual");
    for (int k = 1; k < i->n_in; k++) {
        if (res && k == res_at) continue;
        MOE_ASSERT(st->n_gm < (int)MOE_ARRAY_LEN(st->gm));
        bool is_const = k > (res ? res_at + 1 : (int)L);
        if (!linear_setup(cm, &st->gm[st->n_gm++], i->in[k], is_const ? 2 * nc : 0, true, err)) return false;
    }
    /* the fused router for small T, when its vectors fit one block and its weights share a dtype */
    st->kern_fused = -1;
    if (!cuda_route_fused_desc(i, cm->o.weights_in_place, &st->rf) || !route_fused_kern(cm, &st->rf, &st->kern_fused)) {
        st->comb = -1; /* (no fused router: the combine runs apart) */
        return route_alt(cm, st, err);
    }
    if (!route_alt(cm, st, err)) return false;
    if (!cm->dry && !cm->o.no_route_split) { /* a few tokens' blocks apart: their arrivals */
        uint32_t zero[CG_CUDA_ROUTE_SPLIT_BLOCKS] = {0};
        if (!dalloc(cm, &st->tcount, sizeof zero, "the router's token counters", true, err) ||
            !dupload(cm, st->tcount, zero, sizeof zero, err))
            return false;
    }
    if (st->comb >= 0) { /* its form that also combines (and dispatches): mark_fusions */
        const Step *cs = &cm->steps[st->comb];
        CgCudaRouteFused rc = st->rf;
        const IrValue *io[3];
        MOE_ASSERT(combine_of(cm, cs->i, io, &rc.combine));
        if (cs->disp >= 0) rc.combine.experts = ir_attr_int(cm->steps[cs->disp].i, "experts");
        if (!route_fused_kern(cm, &rc, &st->kern_cmb)) st->comb = -1; /* (mixed dtypes: apart) */
        else if (!cm->dry && (!dalloc(cm, &st->counter, 4, "the router's block counter", true, err) ||
                              !dupload(cm, st->counter, &(uint32_t){0}, 4, err)))
            return false;
    }
    if (nc && !cm->dry && cm->o.weights_in_place)
        return wtable(cm, i->in + i->n_in - nc, (int)nc, "the constant experts' gate table", &st->wc_stack, err);
    if (nc && !cm->dry) { /* Wc of every constant expert, [2][D] each, one after the other */
        size_t per = tensor_bytes(i->in[i->n_in - nc]);
        if (!dalloc(cm, &st->wc_stack, per * (size_t)nc, "the constant experts' gates", true, err)) return false;
        for (int64_t c = 0; c < nc; c++)
            if (!dupload_tensor(cm, st->wc_stack + per * (size_t)c, param(cm, i->in[i->n_in - nc + c]), per, err))
                return false;
    }
    return true;
}

/* Room for form f's key splits (the per-query kernel's, below CG_CUDA_ATTN_TILED_MIN_T tokens) in the
 * buffers every attention step shares (one at a time on the stream; the last split resets its count). */
static bool attn_split_room(CudaModel *cm, const CgOpDesc *d, const CgCudaAttnForm *f, RtError *err)
{
    if (f->bq != 1 || f->bkv <= 1 || cm->dry || cm->o.caller_workspace || cm->o.no_attn_split) return true;
    size_t rows = (size_t)(CG_CUDA_ATTN_TILED_MIN_T - 1) * (size_t)d->heads;
    size_t bytes = rows * (size_t)f->bkv * (size_t)(d->head_dim + 2) * sizeof(float);
    if (bytes > cm->attn_part_bytes) {
        if (!dalloc(cm, &cm->attn_part, bytes, "attention's key splits", true, err)) return false;
        cm->attn_part_bytes = bytes;
    }
    if (rows <= cm->attn_cnt_n) return true;
    unsigned *zero = xcalloc(rows, sizeof *zero);
    bool ok = dalloc(cm, &cm->attn_cnt, rows * sizeof *zero, "attention's split counts", true, err) &&
              dupload(cm, cm->attn_cnt, zero, rows * sizeof *zero, err);
    free(zero);
    if (ok) cm->attn_cnt_n = rows;
    return ok;
}

static bool attn_kern(CudaModel *cm, const CgOpDesc *d, const CgCudaAttnForm *f, int *out, RtError *err)
{
    char sym[600];
    cg_cuda_attention_symbol(d, f, sym, sizeof sym);
    if (!attn_split_room(cm, d, f, err)) return false;
    if (kern_have(cm, sym, out)) return true;
    unsigned g1[3], g2[3], b[3];
    cg_cuda_attention_launch(d, f, 1, g1, b), cg_cuda_attention_launch(d, f, 512, g2, b);
    return kern_new(cm, sym, cg_cuda_attention_source(d, f, err->msg, sizeof err->msg), g1, g2, b, 0, out);
}

/* Form f's kernel for rows of several sequences in one launch (a per-query form: rows; a tiled one:
 * runs of rows, cg_cuda_attention_seqs_source). */
static bool attn_seqs_kern(CudaModel *cm, const CgOpDesc *d, const CgCudaAttnForm *f, int *out, RtError *err)
{
    char sym[640];
    cg_cuda_attention_seqs_symbol(d, f, sym, sizeof sym);
    if (kern_have(cm, sym, out)) return true;
    unsigned g1[3], g2[3], b[3];
    cg_cuda_attention_seqs_launch(d, f, 1, g1, b), cg_cuda_attention_seqs_launch(d, f, 512, g2, b);
    return kern_new(cm, sym, cg_cuda_attention_seqs_source(d, f, err->msg, sizeof err->msg), g1, g2, b, 0, out);
}

static bool prepare_attention(CudaModel *cm, Step *st, RtError *err)
{
    const IrInstr *i = st->i;
    int64_t kvc = cols(i->in[1]);
    MOE_ASSERT(cuda_attention_desc(i, &st->d));
    if (cm->o.no_attn_tc) st->d.wdtype = DT_F32; /* (the rule's prefill form then the f32 tiled one) */
    char sym[128];
    cg_cuda_kv_store_symbol(kvc, st->d.wdtype, sym, sizeof sym);
    st->kern_kv = kern_add(cm, sym, cg_cuda_kv_store_source(kvc, st->d.wdtype));
    snprintf(cm->k[st->kern_kv].launch, sizeof cm->k[st->kern_kv].launch, "block 256; grid T");
    cg_cuda_kv_store_seqs_symbol(kvc, st->d.wdtype, sym, sizeof sym);
    st->kern_kv_seqs = kern_add(cm, sym, cg_cuda_kv_store_seqs_source(kvc, st->d.wdtype));
    snprintf(cm->k[st->kern_kv_seqs].launch, sizeof cm->k[st->kern_kv_seqs].launch, "block 256; grid (T, 2)");
    if (!cm->dry) {
        size_t bytes = (size_t)(cm->max_pos * kvc) * (st->d.wdtype == DT_F32 ? sizeof(float) : 2);
        if (!dalloc(cm, &st->kc, bytes, "the KV cache", true, err) || !dalloc(cm, &st->vc, bytes, "the KV cache", true, err))
            return false;
    }
    CgCudaAttnForm one = cg_cuda_attention_rule(&st->d, 1), tiled = cg_cuda_attention_rule(&st->d, CG_CUDA_ATTN_TILED_MIN_T);
    one.gq = st->gq = cm->o.no_attn_gq ? 1 : 0;
    if (!attn_split_room(cm, &st->d, &one, err) ||
        !(st->gq ? attn_kern(cm, &st->d, &one, &st->kern, err) : op_kern(cm, &st->d, &st->kern, err)) ||
        !attn_seqs_kern(cm, &st->d, &one, &st->kern_seqs, err) || !attn_kern(cm, &st->d, &tiled, &st->kern_fused, err) ||
        !attn_seqs_kern(cm, &st->d, &tiled, &st->kern_fused_seqs, err))
        return false;
    const char *text = cm->o.tile_sched[2];
    if (cm->o.attn.bq <= 0 && !text) return true;
    AttnAlt *a = st->att = xcalloc(1, sizeof *st->att);
    if (cm->o.attn.bq > 0) { /* the tuner's candidate */
        a->f[0] = cm->o.attn, a->n = 1;
        return attn_kern(cm, &st->d, &a->f[0], &a->k[0], err) && attn_seqs_kern(cm, &st->d, &a->f[0], &a->ks[0], err);
    }
    if (!tile_schedule_parse(text, &a->sched) || a->sched.nr != TILE_SCHED_GPU) {
        snprintf(err->msg, sizeof err->msg, "the tuning database's attention schedule '%s' is not a GPU one", text);
        return false;
    }
    for (int b = 0; b < a->sched.n; b++)
        for (int c = 0; c < a->sched.b[b].n; c++) {
            const TuneConfig *t = &a->sched.b[b].c[c];
            CgCudaAttnForm f = cuda_attn_form(t);
            if (f.bq == 1 && st->gq) f.gq = st->gq; /* (MOEPPC_CUDA_ATTN_GQ=0's G over the database's) */
            bool have = false;
            for (int j = 0; j < a->n; j++) have |= !memcmp(&a->f[j], &f, sizeof f);
            if (have) continue;
            if (a->n == TILE_MAX_BUCKETS) {
                snprintf(err->msg, sizeof err->msg, "the attention schedule '%s' names more than %d forms", text,
                         TILE_MAX_BUCKETS);
                return false;
            }
            a->f[a->n] = f;
            if (!attn_kern(cm, &st->d, &f, &a->k[a->n], err) || !attn_seqs_kern(cm, &st->d, &f, &a->ks[a->n], err))
                return false;
            a->n++;
        }
    return true;
}

static bool prepare_rowwise(CudaModel *cm, Step *st, RtError *err)
{
    const IrInstr *i = st->i;
    if (!cg_op_desc_for(i, &st->d)) { /* the dense form's ops (softmax, top-k, ...) are fused away */
        snprintf(err->msg, sizeof err->msg, "the CUDA executor has no kernel for %s (%%%s): run the optimising passes",
                 ir_op_info(i->op)->name, i->n_out ? i->out[0]->name : "?");
        return false;
    }
    for (int k = 0; k < i->n_in; k++) { /* the embedding table, norm weights, constant vectors */
        uint64_t unused;
        if (i->in[k]->kind == IR_VAL_PARAM && !wdev(cm, i->in[k], &unused, err)) return false;
    }
    if (i->op == IR_OP_MOE_COMBINE && st->d.n_const && !cm->dry) {
        uint64_t ptrs[64] = {0};
        MOE_ASSERT(st->d.n_const <= (int64_t)MOE_ARRAY_LEN(ptrs));
        for (int64_t c = 0; c < st->d.n_const; c++)
            if (!wdev(cm, i->in[4 + c], &ptrs[c], err)) return false;
        size_t bytes = (size_t)(st->d.n_const + 1) * sizeof *ptrs;
        if (!dalloc(cm, &st->vc_ptrs, bytes, "constant-expert pointers", true, err) ||
            !dupload(cm, st->vc_ptrs, ptrs, bytes, err))
            return false;
    }
    if (i->op == IR_OP_ROPE && st->pair >= 0) { /* the earlier RoPE too (mark_fusions): the wider one as x */
        const IrInstr *ai = cm->steps[st->pair].i;
        CgOpDesc da;
        MOE_ASSERT(cg_op_desc_for(ai, &da));
        CgOpDesc dd = da.heads >= st->d.heads ? da : st->d;
        dd.kv_heads = da.heads >= st->d.heads ? st->d.heads : da.heads;
        if (!op_kern(cm, &dd, &st->kern_pair, err)) return false;
        st->d_pair = dd;
    }
    if (i->op == IR_OP_MOE_COMBINE && st->disp >= 0) { /* its form that also dispatches (mark_fusions) */
        CgOpDesc dd = st->d;
        dd.experts = ir_attr_int(cm->steps[st->disp].i, "experts");
        if (!op_kern(cm, &dd, &st->kern_disp, err)) return false;
    }
    return op_kern(cm, &st->d, &st->kern, err);
}

static bool prepare(CudaModel *cm, Step *st, RtError *err)
{
    const IrInstr *i = st->i;
    switch (i->op) {
    case IR_OP_LINEAR: {
        st->n_gm = 1;
        if (!linear_setup(cm, &st->gm[0], i->in[1], 0, false, err)) return false;
        if (!st->n_lin) return true;
        st->sg = st->gm[0].gemv; /* with the later linears (mark_fusions): one GEMV over all their rows */
        st->sg.seg[0] = st->sg.n;
        if (st->sg.bm > 8) st->sg.bm = 8; /* (16 slots a pass and the segments' pointers spill on sm_80) */
        for (int k = 0; k < st->n_lin; k++) {
            int64_t rows = cm->steps[st->lin[k]].i->in[1]->type.dims[0];
            if (k == 0 && st->n_lin == 2) st->sg.seg[1] = rows;
            st->sg.n += rows;
        }
        st->sg1 = cg_cuda_gemm_decode(&st->sg);
        return gemm_kern(cm, &st->sg, &st->k_sg, err) && (cm->o.no_decode_gemv || gemm_kern(cm, &st->sg1, &st->k_sg1, err));
    }
    case IR_OP_ATTENTION: return prepare_attention(cm, st, err);
    case IR_OP_MOE_ROUTE: return prepare_route(cm, st, err);
    case IR_OP_ZEROS: { /* a vanilla layer's y0 that also dispatches (mark_fusions): the combine kernel */
        const IrValue *io[3];
        if (st->disp < 0) return true;
        MOE_ASSERT(combine_of(cm, st->i, io, &st->d));
        CgOpDesc dd = st->d;
        dd.experts = ir_attr_int(cm->steps[st->disp].i, "experts");
        return op_kern(cm, &dd, &st->kern_disp, err);
    }
    case IR_OP_MOE_DISPATCH: {
        MOE_ASSERT(cg_op_desc_for(i, &st->d));
        if (!cm->dry && !cm->o.caller_workspace &&
            !dalloc(cm, &st->off, (size_t)(st->d.experts + 1) * sizeof(int64_t), "expert offsets", true, err))
            return false;
        return op_kern(cm, &st->d, &st->kern, err);
    }
    case IR_OP_MOE_GROUPED_UP:
    case IR_OP_MOE_GROUPED_DOWN: {
        bool up = i->op == IR_OP_MOE_GROUPED_UP;
        int first = up ? 3 : 5, E = (int)ir_attr_int(i, "experts");
        st->dispatch = ir_instr_position(cm->m, i->in[1]->def); /* steps are in program order */
        int64_t k_top = cols(cm->steps[st->dispatch].i->in[0]);
        const IrValue *w = i->in[first];
        st->n_gm = 1;
        st->kern_round = st->kern_gather = -1;
        if (st->a16 && up) {
            char sym[64];
            cg_cuda_round16_symbol(w->type.dtype, sym, sizeof sym);
            if (!kern_have(cm, sym, &st->kern_round)) {
                unsigned g1[3], g2[3], b[3];
                cg_cuda_round16_launch(cols(i->in[0]), g1, b), cg_cuda_round16_launch(512 * cols(i->in[0]), g2, b);
                kern_new(cm, sym, cg_cuda_round16_source(w->type.dtype), g1, g2, b, 0, &st->kern_round);
            }
        }
        bool ok = gemm_setup(cm, &st->gm[0], up ? CG_CUDA_GEMM_UP : CG_CUDA_GEMM_DOWN, w->type.dtype, E, k_top,
                             up ? w->type.dims[0] / 2 : w->type.dims[0], w->type.dims[1], 0, false, st->a16, err);
        if (ok && st->a16 && up && gemm_tma_a(&st->gm[0])) { /* x into slot order, for the TMA */
            char sym[64];
            cg_cuda_gather16_symbol(w->type.dtype, sym, sizeof sym);
            if (!kern_have(cm, sym, &st->kern_gather)) {
                unsigned g1[3], g2[3], b[3];
                cg_cuda_gather16_launch(k_top, cols(i->in[0]), g1, b);
                cg_cuda_gather16_launch(512 * k_top, cols(i->in[0]), g2, b);
                kern_new(cm, sym, cg_cuda_gather16_source(w->type.dtype), g1, g2, b, 0, &st->kern_gather);
            }
        }
        if (ok && st->mlp_up >= 0) { /* and with its UP, as one kernel (mark_mlp) */
            char sym[256];
            MOE_ASSERT(st->mlp.k_top == k_top);
            cg_cuda_mlp_symbol(&st->mlp, sym, sizeof sym);
            if (!kern_have(cm, sym, &st->kern_mlp)) {
                char why[400];
                char *src = cg_cuda_mlp_source(&st->mlp, why, sizeof why);
                unsigned g1[3], g2[3], b[3];
                size_t smem = 0;
                if (src) cg_cuda_mlp_launch(&st->mlp, 1, g1, b, &smem), cg_cuda_mlp_launch(&st->mlp, 512, g2, b, &smem);
                else snprintf(err->msg, sizeof err->msg,
                              "the decode MLP's shape %dx%d (MOEPPC_CUDA_MLP=RxW, or a tuning database's RxW/mlp): %s",
                              st->mlp.rows, st->mlp.warps, why);
                ok = kern_new(cm, sym, src, g1, g2, b, smem, &st->kern_mlp);
            }
        }
        return ok && wstack(cm, i, first, E, &st->gm[0].w, err) && tma_maps(cm, &st->gm[0], err);
    }
    case IR_OP_CONVERT:
        snprintf(err->msg, sizeof err->msg, "internal error: convert reached the CUDA executor (run widen-activations)");
        return false;
    default: return prepare_rowwise(cm, st, err);
    }
}

/* ---- compiling and loading the kernels ------------------------------------------------------------ */

/* Cubins NVRTC made in this process, by symbol and architecture: models after the first (tests,
 * benchmarks) load them without compiling again. Reachable until exit. */
typedef struct CachedCubin {
    char *symbol;
    char arch[16];
    void *cubin;
} CachedCubin;
static CachedCubin *cubin_cache;
static int n_cubin_cache, cap_cubin_cache;
static pthread_mutex_t cubin_cache_mu = PTHREAD_MUTEX_INITIALIZER;

static const void *cache_find(const char *symbol, const char *arch)
{
    const void *hit = NULL;
    pthread_mutex_lock(&cubin_cache_mu);
    for (int j = 0; j < n_cubin_cache && !hit; j++)
        if (strcmp(cubin_cache[j].symbol, symbol) == 0 && strcmp(cubin_cache[j].arch, arch) == 0) hit = cubin_cache[j].cubin;
    pthread_mutex_unlock(&cubin_cache_mu);
    return hit;
}

/* Keeps b's cubin (b no longer owns it). */
static void cache_add(const char *symbol, const char *arch, CgCudaBinary *b)
{
    pthread_mutex_lock(&cubin_cache_mu);
    if (n_cubin_cache == cap_cubin_cache)
        cubin_cache = xrealloc(cubin_cache, (size_t)(cap_cubin_cache = cap_cubin_cache ? 2 * cap_cubin_cache : 64) * sizeof *cubin_cache);
    CachedCubin *c = &cubin_cache[n_cubin_cache++];
    c->symbol = xstrdup(symbol);
    snprintf(c->arch, sizeof c->arch, "%s", arch);
    c->cubin = b->cubin;
    b->cubin = NULL;
    pthread_mutex_unlock(&cubin_cache_mu);
}

static const CudaKernelImage *find_image(const CudaModel *cm, const char *symbol)
{
    for (int j = 0; j < cm->o.n_images; j++)
        if (strcmp(cm->o.images[j].symbol, symbol) == 0) return &cm->o.images[j];
    return NULL;
}

/* Embedded images first (the cubin when it is for this GPU, else the PTX for the driver to compile);
 * whatever is left is compiled by NVRTC for this GPU, in parallel. */
static bool load_kernels(CudaModel *cm, RtError *err)
{
    double t0 = now_s();
    int *todo = xmalloc((size_t)(cm->n_k + 1) * sizeof *todo), n_todo = 0, n_embedded = 0, n_cached = 0, n_fresh = 0;
    const void *cached;
    char e[2048];
    bool ok = true;
    for (int j = 0; j < cm->n_k && ok; j++) {
        const CudaKernelImage *img = cm->o.images ? find_image(cm, cm->k[j].symbol) : NULL;
        if (img) {
            bool cubin_fits = img->cubin && cm->o.images_arch && strcmp(cm->o.images_arch, cm->arch) == 0;
            const void *image = cubin_fits ? (const void *)img->cubin : (const void *)img->ptx;
            if (!image) {
                snprintf(err->msg, sizeof err->msg,
                         "this executable's kernels were built for %s only and this GPU is %s: rebuild with --target %s",
                         cm->o.images_arch ? cm->o.images_arch : "another GPU", cm->arch, cm->arch);
                ok = false;
            } else if (!cg_cuda_function(cm->drv, image, cm->k[j].symbol, &cm->k[j].fn, e, sizeof e)) {
                snprintf(err->msg, sizeof err->msg, "loading kernel %s: %s", cm->k[j].symbol, e);
                ok = false;
            }
            n_embedded++;
        } else if ((cached = cache_find(cm->k[j].symbol, cm->arch))) {
            if (!cg_cuda_function(cm->drv, cached, cm->k[j].symbol, &cm->k[j].fn, e, sizeof e)) {
                snprintf(err->msg, sizeof err->msg, "loading kernel %s: %s", cm->k[j].symbol, e);
                ok = false;
            }
            n_cached++;
        } else todo[n_todo++] = j;
    }
    if (ok && n_todo && !cm->o.compile) {
        snprintf(err->msg, sizeof err->msg, "kernel %s is not built into this executable and it cannot compile kernels",
                 cm->k[todo[0]].symbol);
        ok = false;
    }
    if (ok && n_todo) {
        CudaKernelCode *code = xcalloc((size_t)n_todo, sizeof *code);
        CgCudaBinary *bins = xcalloc((size_t)n_todo, sizeof *bins);
        for (int q = 0; q < n_todo; q++) code[q] = (CudaKernelCode){.symbol = cm->k[todo[q]].symbol, .source = cm->k[todo[q]].source};
        ok = cm->o.compile(code, n_todo, cm->arch, bins, err->msg, sizeof err->msg);
        for (int q = 0; ok && q < n_todo; q++) {
            Kern *k = &cm->k[todo[q]];
            if (!cg_cuda_function(cm->drv, bins[q].cubin, k->symbol, &k->fn, e, sizeof e)) {
                snprintf(err->msg, sizeof err->msg, "loading kernel %s: %s", k->symbol, e);
                ok = false;
            }
            if (ok) cache_add(k->symbol, cm->arch, &bins[q]);
            n_fresh += bins[q].compiled;
        }
        for (int q = 0; ok && q < n_todo; q++) cg_cuda_binary_free(&bins[q]);
        free(bins);
        free(code);
    }
    free(todo);
    char name[128];
    cg_cuda_device_name(cm->drv, name, sizeof name);
    const char *by = strcmp(cm->arch, CG_CUDA_EMU_ARCH) == 0 ? "the host's C++ compiler" : "NVRTC";
    if ((n_todo || n_cached) && n_fresh == n_todo)
        snprintf(cm->info, sizeof cm->info, "%s (%s), %d kernels compiled by %s in %.1f s (%d more already compiled)",
                 name, cm->arch, n_todo, by, now_s() - t0, n_cached);
    else if (n_todo || n_cached)
        snprintf(cm->info, sizeof cm->info, "%s (%s), %d kernels in %.1f s: %d compiled by %s, %d taken from its cache "
                 "(%d more already compiled)", name, cm->arch, n_todo, now_s() - t0, n_fresh, by, n_todo - n_fresh,
                 n_cached);
    else
        snprintf(cm->info, sizeof cm->info, "%s (%s), %d kernels built into this executable (%s)", name, cm->arch,
                 n_embedded, cm->o.images_arch && strcmp(cm->o.images_arch, cm->arch) == 0 ? "cubin" : "PTX");
    if (cm->pdl) snprintf(cm->info + strlen(cm->info), sizeof cm->info - strlen(cm->info), ", programmatic launches");
    return ok;
}

/* ---- the model ---------------------------------------------------------------------------------- */

/* Bytes of weights and KV caches the model will put on the GPU. */
static double bytes_needed(const IrModule *m, int64_t max_positions, bool weights_in_place)
{
    double b = 0;
    for (int j = 0; j < m->n_values && !weights_in_place; j++)
        if (m->values[j]->kind == IR_VAL_PARAM) b += (double)tensor_bytes(m->values[j]);
    for (const IrInstr *i = m->first; i; i = i->next)
        if (i->op == IR_OP_ATTENTION) /* (at most: f32 caches) */
            b += 2.0 * 4.0 * (double)max_positions * (double)cols(i->in[1]);
    return b;
}

/* Every captured graph (they hold the addresses of buffers about to go). */
static void graphs_drop(CudaModel *cm)
{
    for (int j = 0; j < cm->n_graphs && j < (int)MOE_ARRAY_LEN(cm->graphs); j++) {
        cg_cuda_graph_free(cm->drv, cm->graphs[j].g);
        free(cm->graphs[j].key.seq);
    }
    cm->n_graphs = 0;
}

static void model_free_buffers(CudaModel *cm)
{
    if (!cm->drv || cm->o.caller_workspace) return; /* there, they are addresses in the caller's workspace */
    graphs_drop(cm);
    uint64_t *bufs[] = {&cm->arena, &cm->ids, &cm->pos, &cm->seqs, &cm->att_rows, &cm->scratch, &cm->x16};
    for (size_t j = 0; j < MOE_ARRAY_LEN(bufs); j++) cg_cuda_free(cm->drv, *bufs[j]), *bufs[j] = 0;
    for (int s = 0; s < cm->n_steps; s++) {
        cg_cuda_free(cm->drv, cm->steps[s].perm);
        cg_cuda_free(cm->drv, cm->steps[s].gate_w);
        cm->steps[s].perm = cm->steps[s].gate_w = 0;
    }
}

/* Row-wise work folded into the MoE combine, one launch less each per layer of a decode step: the
 * scale of the combine's x that feeds the up-projection (same s, first read after the combine: the
 * combine writes it too), and the dispatch of the route's picks that the combine reads (its block 0
 * does it at T <= CG_CUDA_COMBINE_DISPATCH_MAX_T; the offsets and permutation are the executor's
 * buffers, read by this layer's grouped GEMMs only). A range of steps that runs one of these without
 * its combine would miss it: the benchmarks' ranges keep them together. */
static void mark_fusions(CudaModel *cm)
{
    int *first_use = xmalloc(((size_t)cm->m->n_values + 1) * sizeof *first_use);
    for (int v = 0; v < cm->m->n_values; v++) first_use[v] = -1;
    for (int s = 0; s < cm->n_steps; s++) {
        const IrInstr *i = cm->steps[s].i;
        cm->steps[s].by = cm->steps[s].scale = cm->steps[s].disp = cm->steps[s].kern_disp = -1;
        cm->steps[s].comb = cm->steps[s].kern_cmb = cm->steps[s].done = -1;
        cm->steps[s].pair = cm->steps[s].kern_pair = -1;
        cm->steps[s].n_lin = 0, cm->steps[s].k_sg = cm->steps[s].k_sg1 = -1;
        for (int k = 0; k < i->n_in; k++)
            if (i->in[k]->kind == IR_VAL_RESULT && first_use[i->in[k]->id] < 0) first_use[i->in[k]->id] = s;
    }
    for (int c = 0; c < cm->n_steps && !cm->o.no_fuse; c++) {
        Step *cs = &cm->steps[c];
        const IrInstr *ci = cs->i;
        const IrValue *io[3];
        CgOpDesc unused;
        if (!combine_of(cm, ci, io, &unused)) continue;
        for (int s = 0; s < cm->n_steps; s++) {
            Step *st = &cm->steps[s];
            const IrInstr *i = st->i;
            if (i->op == IR_OP_SCALE && ci->op == IR_OP_MOE_COMBINE && s < c && cs->scale < 0 && i->in[0] == ci->in[0] &&
                ir_attr_float(i, "s") == ir_attr_float(ci, "s") && i->out[0]->type.dtype == DT_F32 &&
                ci->in[0]->type.dtype == DT_F32 && first_use[i->out[0]->id] > c)
                cs->scale = s, st->by = c;
            if (i->op == IR_OP_MOE_DISPATCH && s > c && cs->disp < 0 && i->in[0] == io[2] &&
                i->in[0]->def->out[0] == io[1] && ir_attr_int(i, "experts") <= 1024)
                cs->disp = s, st->by = c;
        }
    }
    /* the fused router (one block a token) can do its combine too: it writes the combine's y (and its
     * scale's u) at the router's step, early, so only where no value alive from there to the combine
     * shares their places, at any T it takes (<= CG_CUDA_COMBINE_DISPATCH_MAX_T) */
    int *def, *last;
    ir_liveness(cm->m, &def, &last);
    for (int c = 0; c < cm->n_steps && !cm->o.no_fuse; c++) {
        const Step *cs = &cm->steps[c];
        const IrValue *io[3];
        CgOpDesc unused;
        const IrInstr *ci = cs->i, *ri = combine_of(cm, ci, io, &unused);
        if (!ri || ri->op != IR_OP_MOE_ROUTE || ri->out[0] != io[1] || ri->out[1] != io[2] || ri->in[0] != io[0] ||
            (ci->op == IR_OP_MOE_COMBINE && ir_attr_int(ci, "n_const") && ri->out[3] != ci->in[3]))
            continue;
        int r = ir_instr_position(cm->m, ri);
        const IrValue *early[2] = {ci->out[0], cs->scale >= 0 ? cm->steps[cs->scale].i->out[0] : NULL};
        bool ok = true, dead = last[ri->out[2]->id] == r; /* the last layer's logits: not written then */
        for (int v = 0; v < cm->m->n_values && ok; v++) {
            const IrValue *val = cm->m->values[v];
            if (val->kind != IR_VAL_RESULT || val == early[0] || val == early[1] || def[v] > c || last[v] < r ||
                (dead && val == ri->out[2]))
                continue;
            for (int q = 0; q < 2 && ok; q++)
                for (int64_t T = 1; early[q] && T <= CG_CUDA_COMBINE_DISPATCH_MAX_T && ok; T++)
                    ok = !ir_places_overlap(val, early[q], T);
        }
        if (ok) cm->steps[r].comb = c, cm->steps[r].dead_logits = dead;
    }
    /* dense layers of one input (the attention's q, k, v) in one GEMV launch, up to CG_CUDA_GEMV_MAX_T
     * tokens, at the first one's step: the later ones' outputs are written early, so only where no
     * other value alive from there to the last of them shares their places */
    for (int a = 0; a < cm->n_steps && !cm->o.no_fuse; a++) {
        Step *sa = &cm->steps[a];
        const IrInstr *ai = sa->i;
        if (ai->op != IR_OP_LINEAR || sa->n_lin || sa->by >= 0) continue;
        for (int b = a + 1; b < cm->n_steps && sa->n_lin < 2; b++) {
            const IrInstr *bi = cm->steps[b].i;
            if (bi->op != IR_OP_LINEAR || bi->in[0] != ai->in[0] || bi->in[1]->type.dtype != ai->in[1]->type.dtype)
                continue;
            const IrValue *early[3] = {bi->out[0]};
            for (int k = 0; k < sa->n_lin; k++) early[k + 1] = cm->steps[sa->lin[k]].i->out[0];
            bool ok = true;
            for (int v = 0; v < cm->m->n_values && ok; v++) {
                const IrValue *val = cm->m->values[v];
                bool mine = val == early[0] || val == early[1] || val == early[2];
                if (val->kind != IR_VAL_RESULT || mine || def[v] > b || last[v] < a) continue;
                for (int q = 0; q < 1 + sa->n_lin && ok; q++)
                    for (int64_t T = 1; T <= CG_CUDA_GEMV_MAX_T && ok; T++) ok = !ir_places_overlap(val, early[q], T);
            }
            if (!ok) break; /* (a later one would write over the same values) */
            sa->lin[sa->n_lin++] = b, cm->steps[b].by = a;
        }
    }
    /* two RoPEs on the same positions, one launch: the earlier (a) runs late, with the later (b), so
     * a's output must not be read before b, and a's input must keep its place until b: no value made
     * from a to b overlaps it but b's own output exactly (same shape: the thread that reads an
     * element writes it) */
    for (int b = 0; b < cm->n_steps && !cm->o.no_fuse; b++) {
        const IrInstr *bi = cm->steps[b].i;
        for (int a = b - 1; bi->op == IR_OP_ROPE && a >= 0 && cm->steps[b].pair < 0; a--) {
            const IrInstr *ai = cm->steps[a].i;
            if (ai->op != IR_OP_ROPE || ai->in[1] != bi->in[1] || cm->steps[a].by >= 0 || cm->steps[a].pair >= 0 ||
                ir_attr_float(ai, "theta") != ir_attr_float(bi, "theta") ||
                cols(ai->in[0]) / ir_attr_int(ai, "heads") != cols(bi->in[0]) / ir_attr_int(bi, "heads") ||
                first_use[ai->out[0]->id] <= b)
                continue;
            const IrValue *q = ai->in[0];
            bool ok = q->kind == IR_VAL_RESULT;
            for (int v = 0; v < cm->m->n_values && ok; v++) {
                const IrValue *val = cm->m->values[v];
                if (val->kind != IR_VAL_RESULT || val == q || def[v] <= a || def[v] > b) continue;
                bool exact = val == bi->out[0] && val->off_t == q->off_t && val->off_c == q->off_c && cols(val) == cols(q);
                ok = exact || (!ir_places_overlap(val, q, 1) && !ir_places_overlap(val, q, 3));
            }
            if (ok) cm->steps[b].pair = a, cm->steps[a].by = b;
        }
    }
    free(def);
    free(last);
    free(first_use);
}

/* The grouped UP/DOWN pairs that run on the cp.async MMA form above the GEMV's T: 16-bit weights of
 * one dtype, k of both and UP's n multiples of 8, and UP's h read by that DOWN only (it holds h
 * 16-bit where the plan put the f32 one). */
static void mark_a16(CudaModel *cm)
{
    for (int s = 0; s < cm->n_steps; s++) cm->steps[s].partner = -1;
    if (cm->o.no_async_gemm) return;
    int *uses = ir_use_counts(cm->m);
    for (int s = 0; s < cm->n_steps; s++) {
        const IrInstr *dn = cm->steps[s].i, *up = dn->op == IR_OP_MOE_GROUPED_DOWN ? dn->in[0]->def : NULL;
        if (!up || up->op != IR_OP_MOE_GROUPED_UP || uses[dn->in[0]->id] != 1) continue;
        const IrValue *wu = up->in[3], *wd = dn->in[5];
        if (!half_dtype(wu->type.dtype) || wd->type.dtype != wu->type.dtype || wu->type.dims[1] % 8 ||
            wd->type.dims[1] % 8 || cols(up->in[0]) != wu->type.dims[1])
            continue;
        Step *su = &cm->steps[ir_instr_position(cm->m, up)];
        su->a16 = cm->steps[s].a16 = true;
        cm->steps[s].partner = ir_instr_position(cm->m, up);
        size_t bytes = (size_t)wu->type.dims[1] * 2 * (size_t)cols(up->in[1]->def->in[0]); /* slot order: k_top rows */
        if (bytes > cm->x16_per_t) cm->x16_per_t = bytes;
    }
    free(uses);
}

/* A database's word on the decode MLP (its down-projection's bucket at 1 token, where it measured the
 * kernel: passes/tuning.h): 1 and the shape in *m where the kernel was that bucket's best, 0 where a
 * GEMV form was (the two GEMVs then run), -1 where it says nothing (the rule's kernel). */
static int mlp_tuned(const CudaModel *cm, CgCudaMlp *m)
{
    TileSchedule ts;
    const char *text = cm->o.tile_sched[1];
    if (!text || !tile_schedule_parse(text, &ts) || ts.n == 0 || ts.b[0].tokens != 1) return -1;
    const TileBucket *b = &ts.b[0];
    int best = 0;
    bool measured = false;
    for (int c = 0; c < b->n; c++) {
        measured |= b->c[c].mlp != 0;
        if (b->gflops[c] > b->gflops[best]) best = c;
    }
    if (!measured) return -1;
    if (!b->c[best].mlp) return 0;
    m->rows = b->c[best].tile_m, m->warps = b->c[best].tile_n;
    return 1;
}

/* The grouped UP/DOWN pairs that can run as one decode MLP kernel (cg_cuda_mlp_*; at T = 1, mlp_now):
 * DOWN right after its UP on the same routing, UP's h read by that DOWN only, weights of one 16-bit
 * dtype, stacked (not used in place), in shapes the kernel takes; the kernel's shape the rule's, a
 * database's (mlp_tuned: none where the GEMVs measured faster) or MOEPPC_CUDA_MLP's. */
static void mark_mlp(CudaModel *cm)
{
    for (int s = 0; s < cm->n_steps; s++) cm->steps[s].mlp_up = cm->steps[s].mlp_down = cm->steps[s].kern_mlp = -1;
    if (cm->o.no_mlp || cm->o.weights_in_place) return;
    int *uses = ir_use_counts(cm->m);
    for (int s = 1; s < cm->n_steps; s++) {
        const IrInstr *dn = cm->steps[s].i, *up = cm->steps[s - 1].i;
        if (dn->op != IR_OP_MOE_GROUPED_DOWN || up->op != IR_OP_MOE_GROUPED_UP || dn->in[0] != up->out[0] ||
            uses[up->out[0]->id] != 1 || dn->in[1] != up->in[1])
            continue;
        const IrValue *wu = up->in[3], *wd = dn->in[5];
        CgCudaMlp mlp = cg_cuda_mlp_rule(wu->type.dtype, ir_attr_int(dn, "experts"), cols(up->in[2]), wd->type.dims[0],
                                         wd->type.dims[1]); /* (in[2]: the slots, [T, k_top]) */
        if (wd->type.dtype != wu->type.dtype || !mlp.rows || wu->type.dims[0] != 2 * mlp.i ||
            wu->type.dims[1] != mlp.d || cols(up->in[0]) != mlp.d)
            continue;
        if (cm->o.mlp[0] > 0) mlp.rows = cm->o.mlp[0], mlp.warps = cm->o.mlp[1]; /* (checked by its generator) */
        else if (mlp_tuned(cm, &mlp) == 0) continue;
        cm->steps[s].mlp_up = s - 1, cm->steps[s - 1].mlp_down = s, cm->steps[s].mlp = mlp;
    }
    free(uses);
}

static CudaModel *model_new(const IrModule *m, const WeightSet *w, int64_t max_positions, const CudaOptions *o,
                            bool dry, RtError *err)
{
    MOE_ASSERT(m->planned);
    CudaModel *cm = xcalloc(1, sizeof *cm);
    cm->m = m;
    cm->w = w;
    cm->o = o ? *o : (CudaOptions){0};
    cm->dry = dry;
    if (dry && cm->o.images_arch) snprintf(cm->arch, sizeof cm->arch, "%s", cm->o.images_arch); /* the target's */
    cm->max_pos = max_positions;
    cm->n_seqs = 1;
    cm->scratch_per_t = cg_route_scratch_floats(m);
    for (const IrInstr *i = m->first; i; i = i->next) cm->n_steps++;
    cm->steps = xcalloc((size_t)cm->n_steps, sizeof *cm->steps);
    cm->outs = xcalloc((size_t)m->n_outputs + 1, sizeof *cm->outs);
    int s = 0;
    for (const IrInstr *i = m->first; i; i = i->next) cm->steps[s++].i = i;
    cm->tail = ir_logits_tail(m);
    MOE_ASSERT(dry || !cm->o.caller_workspace || cm->o.driver);
    if (!dry) {
        char e[512];
        cm->drv = cm->o.driver;
        if (!cm->drv) cm->drv = cg_cuda_driver_open(cm->o.device, e, sizeof e), cm->own_drv = true;
        if (!cm->drv) {
            snprintf(err->msg, sizeof err->msg, "%s", e);
            cuda_model_free(cm);
            return NULL;
        }
        cg_cuda_device_arch(cm->drv, cm->arch, sizeof cm->arch);
        cm->sms = cg_cuda_device_sms(cm->drv);
        /* programmatic launches need the kernels' griddepcontrol: compiled for sm_90+ (here, or built in) */
        const char *karch = kernel_arch(cm);
        bool emu = strcmp(cm->arch, CG_CUDA_EMU_ARCH) == 0; /* (a GPU's default; the emulator's on asking) */
        cm->pdl = (cm->o.pdl || (!cm->o.no_pdl && !emu)) && cg_cuda_can_pdl(cm->drv) &&
                  (strcmp(karch, CG_CUDA_EMU_ARCH) == 0 || (strncmp(karch, "sm_", 3) == 0 && atoi(karch + 3) >= 90));
        size_t free_b = 0, total_b = 0;
        double need = bytes_needed(m, max_positions, cm->o.weights_in_place);
        if (cg_cuda_mem_info(cm->drv, &free_b, &total_b) && need > 0.95 * (double)free_b) {
            char n[32], f[32], t[32]; /* (each in its own unit: a small model on a large device) */
            str_bytes(need, n, sizeof n), str_bytes((double)free_b, f, sizeof f);
            str_bytes((double)total_b, t, sizeof t);
            snprintf(err->msg, sizeof err->msg,
                     "not enough GPU memory: the weights and KV caches need %s and %s of %s is free", n, f, t);
            cuda_model_free(cm);
            return NULL;
        }
        if (!cm->o.caller_workspace &&
            (!cg_cuda_event_new(cm->drv, &cm->ev0, e, sizeof e) || !cg_cuda_event_new(cm->drv, &cm->ev1, e, sizeof e))) {
            snprintf(err->msg, sizeof err->msg, "%s", e);
            cuda_model_free(cm);
            return NULL;
        }
    }
    mark_a16(cm);
    mark_mlp(cm);
    mark_fusions(cm);
    for (int k = 0; cm->o.progress && !dry && k < m->n_values; k++)
        if (m->values[k]->kind == IR_VAL_PARAM) cm->total += (double)tensor_bytes(m->values[k]);
    for (s = 0; s < cm->n_steps; s++) {
        if (!prepare(cm, &cm->steps[s], err)) {
            cuda_model_free(cm);
            return NULL;
        }
    }
    if (cm->o.progress && !dry) cm->o.progress(cm->o.progress_ctx, cm->total, cm->total); /* (all there now) */
    free(cm->stage); /* (every weight uploaded) */
    cm->stage = NULL, cm->stage_bytes = 0;
    if (!dry && !load_kernels(cm, err)) {
        cuda_model_free(cm);
        return NULL;
    }
    return cm;
}

CudaModel *cuda_model_new(const IrModule *m, const WeightSet *w, int64_t max_positions, const CudaOptions *o,
                          RtError *err)
{
    return model_new(m, w, max_positions, o, false, err);
}

bool cuda_module_kernels(const IrModule *m, const CudaOptions *o, CudaKernelCode **out, int *n, RtError *err)
{
    CudaModel *cm = model_new(m, NULL, 1, o, true, err);
    if (!cm) return false;
    *out = xcalloc((size_t)cm->n_k + 1, sizeof **out);
    *n = cm->n_k;
    for (int j = 0; j < cm->n_k; j++) {
        (*out)[j] = (CudaKernelCode){.symbol = cm->k[j].symbol, .source = cm->k[j].source};
        snprintf((*out)[j].launch, sizeof (*out)[j].launch, "%s", cm->k[j].launch);
        cm->k[j].symbol = cm->k[j].source = NULL;
    }
    cuda_model_free(cm);
    return true;
}

void cuda_kernel_code_free(CudaKernelCode *k, int n)
{
    for (int j = 0; j < n && k; j++) {
        free(k[j].symbol);
        free(k[j].source);
    }
    free(k);
}

static bool ensure_capacity(CudaModel *cm, int64_t T, RtError *err)
{
    if (T <= cm->cap_t) return true;
    MOE_ASSERT(!cm->o.caller_workspace); /* its calls are checked against the workspace before */
    model_free_buffers(cm);
    cm->cap_t = 0;
    size_t arena = (size_t)(cm->m->arena_t * T + cm->m->arena_c) + 64;
    size_t scratch = 4 * round64(cm->scratch_per_t * (size_t)T * sizeof(float)) + 64;
    if (!dalloc(cm, &cm->arena, arena, "the activation arena", false, err) ||
        !dalloc(cm, &cm->ids, (size_t)T * sizeof(int32_t), "token ids", false, err) ||
        !dalloc(cm, &cm->pos, (size_t)T * sizeof(int32_t), "positions", false, err) ||
        !dalloc(cm, &cm->seqs, (size_t)T * sizeof(int32_t), "the rows' sequences", false, err) ||
        !dalloc(cm, &cm->att_rows, (size_t)T * sizeof(int32_t), "attention's rows of short runs", false, err) ||
        !dalloc(cm, &cm->scratch, scratch, "the router scratch", false, err) ||
        (cm->x16_per_t && !dalloc(cm, &cm->x16, cm->x16_per_t * (size_t)T, "16-bit expert inputs", false, err)))
        return false;
    for (int s = 0; s < cm->n_steps; s++) {
        Step *st = &cm->steps[s];
        if (st->i->op != IR_OP_MOE_DISPATCH) continue;
        size_t n = (size_t)(T * cols(st->i->in[0]));
        if (!dalloc(cm, &st->perm, n * sizeof(int32_t), "the expert permutation", false, err) ||
            !dalloc(cm, &st->gate_w, n * sizeof(float), "the gate weights", false, err))
            return false;
    }
    cm->att_rows_h = xrealloc(cm->att_rows_h, (size_t)T * sizeof *cm->att_rows_h);
    cm->cap_t = T;
    return true;
}

/* ---- running the steps ------------------------------------------------------------------------- */

typedef struct Run {
    CudaModel *cm;
    int64_t T;
    long long TT;                   /* T as the kernels take it                                          */
    RtError *err;
    int64_t lay_t, row0;            /* the T the arena is laid out for, and the first row a result's     */
                                    /*   address points at (the logits tail on the last row: T - 1)      */
    int first, last;                /* the steps [first, last) this call runs                             */
} Run;

static Run run_of(CudaModel *cm, int64_t T, RtError *err)
{
    return (Run){cm, T, (long long)T, err, T, 0, 0, cm->n_steps};
}

static uint64_t addr(const Run *r, const IrValue *v)
{
    CudaModel *cm = r->cm;
    switch (v->kind) {
    case IR_VAL_INPUT:
        for (int j = 0; j < cm->n_bound; j++)
            if (cm->bound[j].v == v) return cm->bound[j].d;
        MOE_ASSERT(!cm->o.caller_workspace);
        return strcmp(v->name, "pos") == 0 ? cm->pos : cm->ids;
    case IR_VAL_PARAM: {
        const Tensor *t = param(cm, v);
        for (int j = 0; j < cm->n_w; j++)
            if (cm->wmap[j].t == t) return cm->wmap[j].d;
        MOE_ASSERT(!"a parameter that was never uploaded");
        return 0;
    }
    case IR_VAL_RESULT: break;
    }
    MOE_ASSERT(v->planned);
    return cm->arena + (uint64_t)(v->off_t * r->lay_t + v->off_c) + (uint64_t)(r->row0 * cols(v)) * dtype_size(v->type.dtype);
}

static bool launch(const Run *r, const Step *st, int kern, const unsigned g[3], const unsigned b[3], size_t smem,
                   void **args)
{
    char e[512];
    const Kern *k = &r->cm->k[kern];
    r->cm->ops++;
    if (cg_cuda_launch_async_pdl(r->cm->drv, k->fn, g, b, smem, args, r->cm->pdl, e, sizeof e)) return true;
    snprintf(r->err->msg, sizeof r->err->msg, "launching %s (for %%%s): %s", k->symbol,
             st->i->n_out ? st->i->out[0]->name : "?", e);
    return false;
}

static bool op(const Run *r, const Step *st, int kern, const CgOpDesc *d, void **args)
{
    unsigned g[3], b[3];
    size_t smem;
    cg_cuda_op_launch(d, r->T, g, b, &smem);
    return launch(r, st, kern, g, b, smem, args);
}

/* Whether T tokens run gm on its GEMV (else its tiles): the tuner's forced path (grouped GEMMs), a
 * database's measured neighbours (the path of the configuration they pick, if it has a kernel here),
 * else the rule: the GEMV up to CG_CUDA_GEMV_MAX_T tokens. */
static bool gemv_at(const Run *r, const Gemm *gm)
{
    if (gm->k_tiled < 0) return true;
    int force = gm->tiled.kind == CG_CUDA_GEMM_LINEAR ? 0 : r->cm->o.force_path;
    if (force) return force == 2;
    if (gm->alt && gm->alt->all.n) {
        TuneConfig c = tile_schedule_pick(&gm->alt->all, r->T);
        for (int j = 0; j < gm->alt->n; j++)
            if (tune_config_equal(&gm->alt->c[j], &c)) return gm->alt->is_gemv[j];
    }
    return r->T <= CG_CUDA_GEMV_MAX_T;
}

/* The same for step st's GEMM: an a16 DOWN follows its UP (h is 16-bit only on the tiles). */
static bool step_gemv(const Run *r, const Step *st, const Gemm *gm)
{
    return st->partner >= 0 ? gemv_at(r, &r->cm->steps[st->partner].gm[0]) : gemv_at(r, gm);
}

static bool gemm_launch(const Run *r, const Step *st, const CgCudaGemm *g, int kern, void **args)
{
    unsigned gr[3], b[3];
    size_t smem;
    cg_cuda_gemm_launch(g, r->T, gr, b, &smem);
    return launch(r, st, kern, gr, b, smem, args);
}

/* The kernel of gm that runs this call (*kern), and W's tensor map for a TMA one (*map): the GEMV for a
 * few tokens, the tiles above. */
static const CgCudaGemm *gemm_pick(const Run *r, const Step *st, const Gemm *gm, int *kern, const unsigned char **map)
{
    bool gemv = step_gemv(r, st, gm), decode = gemv && r->T == 1 && gm->k_gemv1 >= 0;
    const CgCudaGemm *g = decode ? &gm->gemv1 : gemv ? &gm->gemv : &gm->tiled;
    *kern = decode ? gm->k_gemv1 : gemv ? gm->k_gemv : gm->k_tiled;
    const TileSchedule *ts = !gm->alt ? NULL : gemv ? &gm->alt->gemvs : &gm->alt->tiles;
    *map = gm->tmap;
    if (!gemv && gm->k_big >= 0 && cg_cuda_gemm_tma_large(&gm->big, r->T)) /* the rule's larger tile */
        g = &gm->big, *kern = gm->k_big, *map = gm->tmap_big;
    if (ts && ts->n) { /* the tuned configuration for this T */
        TuneConfig c = tile_schedule_pick(ts, r->T);
        for (int j = 0; j < gm->alt->n; j++)
            if (gm->alt->is_gemv[j] == gemv && tune_config_equal(&gm->alt->c[j], &c))
                g = &gm->alt->g[j], *kern = gm->alt->k[j], *map = gm->alt->tmap[j];
    }
    return g;
}

/* Does DOWN step dn run with its UP as the decode MLP kernel in this call: T = 1, both steps in the
 * call's range, each on its GEMV path with a decode form (not MOEPPC_CUDA_DECODE_GEMV=0's general
 * GEMV, not the tuner's candidate; a database's T = 1 GEMV form is not asked: where the database
 * measured the kernel against the GEMVs, mark_mlp kept it or not), and DOWN's output not in UP's
 * input's place (the plan may give it x's once x is dead). Else the two GEMVs. */
static bool mlp_now(const Run *r, const Step *dn)
{
    CudaModel *cm = r->cm;
    int s = (int)(dn - cm->steps);
    if (dn->kern_mlp < 0 || r->T != 1 || dn->mlp_up < r->first || s >= r->last) return false;
    const Step *up = &cm->steps[dn->mlp_up];
    if (up->gm[0].k_gemv1 < 0 || dn->gm[0].k_gemv1 < 0 || !step_gemv(r, up, &up->gm[0]) ||
        !step_gemv(r, dn, &dn->gm[0]))
        return false;
    uint64_t x = addr(r, up->i->in[0]), y = addr(r, dn->i->out[0]), bytes = (uint64_t)(r->T * dn->mlp.d) * 4;
    return x + bytes <= y || y + bytes <= x;
}

/* out = x W^T (or the grouped forms) on gemm_pick's kernel. */
static bool gemm(const Run *r, const Step *st, const Gemm *gm, void **args)
{
    int kern;
    const unsigned char *map;
    const CgCudaGemm *g = gemm_pick(r, st, gm, &kern, &map);
    if (g->tma) { /* W's tensor map, its last argument (then A's: DOWN's h, a TMA UP's gathered x) */
        void *with_map[9];
        int n = g->kind == CG_CUDA_GEMM_UP ? 6 : 7;
        memcpy(with_map, args, (size_t)n * sizeof *args);
        with_map[n] = (void *)map;
        uint64_t rows;
        unsigned box;
        if (cg_cuda_gemm_tma_map_a(g, r->T, &rows, &box)) {
            char e[512];
            AMap *a = gm->amap;
            uint64_t h = *(const uint64_t *)args[1];
            if (a->h != h || a->rows != rows || a->box != box) {
                a->h = 0; /* (until made) */
                if (!cg_cuda_tensor_map_2d(r->cm->drv, a->map, h, (uint64_t)g->k, rows, 64, box, true, e, sizeof e)) {
                    snprintf(r->err->msg, sizeof r->err->msg, "the tensor map of the %s's input: %s",
                             g->kind == CG_CUDA_GEMM_UP ? "up-projection" : "down-projection", e);
                    return false;
                }
                a->h = h, a->rows = rows, a->box = box;
            }
            with_map[n + 1] = (void *)a->map;
        }
        return gemm_launch(r, st, g, kern, with_map);
    }
    return gemm_launch(r, st, g, kern, args);
}

/* out = x W^T; on tile g (kernel k) when given and T is above the GEMV's. */
static bool linear(const Run *r, const Step *st, const Gemm *gm, const CgCudaGemm *g, int k, uint64_t x, uint64_t out)
{
    uint64_t w = gm->w;
    void *args[] = {(void *)&r->TT, &x, &w, &out};
    return g && !gemv_at(r, gm) ? gemm_launch(r, st, g, k, args) : gemm(r, st, gm, args);
}

/* Tokens up to which the router runs as one fused kernel (weights streamed once per token; above,
 * the GEMM kernels share them across tokens). */
#define FUSED_ROUTE_MAX_T 64

static bool run_route_fused(const Run *r, const Step *st, const CgCudaRouteFused *rf, int kern)
{
    const IrInstr *i = st->i;
    CudaModel *cm = r->cm;
    int64_t L = ir_attr_int(i, "router_layers"), nc = ir_attr_int(i, "n_const");
    bool res = st->rf.residual;
    int p = 0;
    uint64_t x = addr(r, i->in[0]), w1 = st->gm[p++].w, w2 = L == 2 ? st->gm[p++].w : 0;
    uint64_t rr = res ? addr(r, i->in[1 + L]) : 0, wg = res ? st->gm[p++].w : 0, wc = nc ? st->wc_stack : 0;
    uint64_t logits = addr(r, i->out[2]), wts = addr(r, i->out[0]), ids = addr(r, i->out[1]);
    uint64_t alpha = nc ? addr(r, i->out[3]) : 0;
    uint64_t y = 0, u = 0, vc = 0, off = 0, perm = 0, gw = 0, counter = st->counter;
    if (kern == st->kern_cmb) { /* and the combine (with its scale and dispatch): skipped when reached */
        Step *cs = &cm->steps[st->comb];
        y = addr(r, cs->i->out[0]), vc = cs->vc_ptrs, cs->done = cm->call;
        if (st->dead_logits) logits = 0;
        if (cs->scale >= 0) u = addr(r, cm->steps[cs->scale].i->out[0]);
        if (cs->disp >= 0) off = cm->steps[cs->disp].off, perm = cm->steps[cs->disp].perm, gw = cm->steps[cs->disp].gate_w;
    }
    /* a few tokens' blocks apart (CgCudaRouteFused.split), their partial rows in the router scratch */
    CgCudaRouteFused at = *rf;
    at.split = cm->o.no_route_split ? 1 : cg_cuda_route_fused_split(rf, r->T);
    uint64_t part = cm->scratch, tcount = st->tcount;
    void *a[] = {(void *)&r->TT, &x, &w1, &w2, &rr, &wg, &wc, &logits, &wts, &ids, &alpha, &y, &u, &vc, &off, &perm, &gw,
                 &counter, &part, &tcount};
    if (kern != st->kern_cmb) a[11] = &part, a[12] = &tcount; /* (the forms without the combine's arguments) */
    unsigned g[3], b[3];
    size_t smem;
    cg_cuda_route_fused_launch(&at, r->T, g, b, &smem);
    return launch(r, st, kern, g, b, smem, a);
}

static bool run_route(const Run *r, const Step *st)
{
    const IrInstr *i = st->i;
    const RouteAlt *ra = st->route;
    int pick = -1; /* the tuned form for this T, if it has a kernel here */
    if (ra) {
        TuneConfig c = ra->sched.n ? tile_schedule_pick(&ra->sched, r->T) : ra->c[0];
        for (int j = 0; j < ra->n; j++)
            if (tune_config_equal(&ra->c[j], &c)) pick = j;
    }
    int fk = pick >= 0 && ra->c[pick].tile_m == 1 ? ra->kfused[pick]
             : pick < 0 && r->T <= FUSED_ROUTE_MAX_T ? st->kern_fused : -1; /* a fused router's kernel */
    if (fk >= 0) { /* the rule's (a database's too, if it picked the rule's form) also combining, for few tokens */
        if (fk == st->kern_fused && st->comb >= 0 && r->T <= CG_CUDA_COMBINE_DISPATCH_MAX_T) fk = st->kern_cmb;
        return run_route_fused(r, st, pick >= 0 ? &ra->rf[pick] : &st->rf, fk);
    }
    const CgCudaGemm *tg = pick >= 0 ? ra->g + pick * st->n_gm : NULL; /* the linears' tuned tiles */
    const int *tk = pick >= 0 ? ra->k + pick * st->n_gm : NULL;
#define LIN(q, x, out) linear(r, st, &st->gm[q], tg ? tg + (q) : NULL, tk ? tk[q] : -1, x, out)
    int64_t T = r->T, E = ir_attr_int(i, "experts"), nc = ir_attr_int(i, "n_const"), L = ir_attr_int(i, "router_layers");
    int64_t D = cols(i->in[0]), H1 = L == 2 ? i->in[1]->type.dims[0] : 0;
    uint64_t x = addr(r, i->in[0]), h = r->cm->scratch;
    uint64_t z0 = h + round64((size_t)(T * H1) * 4), g = z0 + round64((size_t)(T * E) * 4);
    uint64_t u = g + round64((size_t)(T * E) * 4), alog = u + round64((size_t)(T * D) * 4);
    int p = 0;
    if (L == 2) {
        if (!LIN(p, x, h)) return false;
        p++;
        void *ta[] = {(void *)&r->TT, &h, &h};
        if (!op(r, st, st->kern_tanh, &st->d_tanh, ta) || !LIN(p, h, z0)) return false;
        p++;
    } else if (!LIN(p, x, z0)) return false;
    else p++;
    bool res = ir_attr_int(i, "residual");
    if (res && !LIN(p, addr(r, i->in[1 + L]), g)) return false;
    p += res;
    if (nc) {
        void *sa[] = {(void *)&r->TT, &x, &u};
        if (!op(r, st, st->kern_scale, &st->d_scale, sa)) return false;
        for (int64_t c = 0; c < nc; c++, p++)
            if (!LIN(p, u, alog + (uint64_t)(2 * c) * 4)) return false;
    }
#undef LIN
    uint64_t gg = res ? g : 0, al = nc ? alog : 0, logits = addr(r, i->out[2]), wts = addr(r, i->out[0]);
    uint64_t ids = addr(r, i->out[1]), alpha = nc ? addr(r, i->out[3]) : 0;
    void *a[] = {(void *)&r->TT, &z0, &gg, &logits, &al, &wts, &ids, &alpha};
    return op(r, st, st->kern, &st->d, a);
}

/* The attention form for T rows of one sequence (the rule's, or the database's for T, or the tuner's
 * candidate) and its kernel; *kseqs: the form's kernel for rows of several sequences. */
static int attn_pick(const Step *st, int64_t T, CgCudaAttnForm *f, int *kseqs)
{
    *f = cg_cuda_attention_rule(&st->d, T); /* prefill: tiled, keys and values shared by a block's queries */
    if (f->bq == 1 && st->gq) f->gq = st->gq;
    int kern = f->bq == 1 ? st->kern : st->kern_fused;
    *kseqs = f->bq == 1 ? st->kern_seqs : st->kern_fused_seqs;
    const AttnAlt *at = st->att;
    if (at && !at->sched.n) *f = at->f[0], kern = at->k[0], *kseqs = at->ks[0];
    if (at && at->sched.n) { /* the database's form for this T */
        TuneConfig c = tile_schedule_pick(&at->sched, T);
        CgCudaAttnForm want = cuda_attn_form(&c);
        if (want.bq == 1 && st->gq) want.gq = st->gq;
        for (int j = 0; j < at->n; j++)
            if (!memcmp(&at->f[j], &want, sizeof want)) *f = want, kern = at->k[j], *kseqs = at->ks[j];
    }
    return kern;
}

/* The per-query form's launch of r's rows (its arguments aa, the caches' or their table's): with key
 * splits where there is room for them (below CG_CUDA_ATTN_TILED_MIN_T rows). */
static bool attend_launch(const Run *r, const Step *st, const CgCudaAttnForm *f, int kern, bool seqs, void **aa,
                          uint64_t *part, uint64_t *cnt)
{
    unsigned g[3], b[3];
    if (seqs) cg_cuda_attention_seqs_launch(&st->d, f, r->T, g, b);
    else cg_cuda_attention_launch(&st->d, f, r->T, g, b);
    if (g[2] > 1 && r->T < CG_CUDA_ATTN_TILED_MIN_T && r->cm->attn_part)
        *part = r->cm->attn_part, *cnt = r->cm->attn_cnt;
    else g[2] = 1; /* (no room for the splits: one block a query and head group) */
    return launch(r, st, kern, g, b, 0, aa);
}

/* Attention of r's rows over caches kc, vc, their positions at pos (device); stored: their keys and
 * values are in the caches already (attend_seqs stored them). */
static bool attend(const Run *r, const Step *st, uint64_t pos, uint64_t kc, uint64_t vc, bool stored)
{
    const IrInstr *i = st->i;
    uint64_t k = addr(r, i->in[1]), v = addr(r, i->in[2]), q = addr(r, i->in[0]), out = addr(r, i->out[0]);
    unsigned g[3] = {(unsigned)r->T, 1, 1}, b[3] = {256, 1, 1};
    void *ka[] = {(void *)&r->TT, &k, &pos, &kc}, *va[] = {(void *)&r->TT, &v, &pos, &vc};
    uint64_t knew = 0, vnew = 0, part = 0, cnt = 0;
    void *aa[] = {(void *)&r->TT, &q, &kc, &vc, &pos, &out, &knew, &vnew, &part, &cnt};
    CgCudaAttnForm f;
    int unused, kern = attn_pick(st, r->T, &f, &unused);
    if (!stored && r->T == 1 && f.bq == 1 && !r->cm->o.no_fuse) knew = k, vnew = v; /* decode: the kernel stores them */
    else if (!stored && (!launch(r, st, st->kern_kv, g, b, 0, ka) || !launch(r, st, st->kern_kv, g, b, 0, va)))
        return false;
    if (f.bq == 1) return attend_launch(r, st, &f, kern, false, aa, &part, &cnt);
    cg_cuda_attention_launch(&st->d, &f, r->T, g, b);
    return launch(r, st, kern, g, b, 0, aa);
}

/* The runs of cm->seq[T] (each a sequence's consecutive rows): how many (att_runs); the rows of
 * those shorter than CG_CUDA_ATTN_TILED_MIN_T, in order, into att_rows_h (n_att_rows), then each
 * other's first row and row count (n_att_long of them, att_long_rows rows); att_alone: whether each
 * row is the only one of its sequence (a decode step of several sequences). */
static void attention_rows(CudaModel *cm, int64_t T)
{
    const int32_t *seq = cm->seq;
    int32_t *list = cm->att_rows_h, *runs = xmalloc((size_t)T * sizeof *runs); /* (each 32 rows or more) */
    int *count = xcalloc((size_t)cm->n_seqs, sizeof *count);
    int64_t n = 0, nl = 0;
    cm->att_runs = cm->att_long_rows = 0, cm->att_alone = true;
    for (int64_t t0 = 0, t1; t0 < T; t0 = t1, cm->att_runs++) {
        for (t1 = t0 + 1; t1 < T && seq[t1] == seq[t0]; t1++) {}
        if (t1 - t0 >= CG_CUDA_ATTN_TILED_MIN_T) {
            runs[2 * nl] = (int32_t)t0, runs[2 * nl + 1] = (int32_t)(t1 - t0), nl++;
            cm->att_long_rows += t1 - t0;
        } else
            for (int64_t t = t0; t < t1; t++) list[n++] = (int32_t)t;
    }
    memcpy(list + n, runs, (size_t)(2 * nl) * sizeof *runs); /* n + 2 nl <= T: a long run's 2 entries, 32 rows */
    for (int64_t t = 0; t < T; t++) cm->att_alone &= ++count[seq[t]] == 1;
    cm->n_att_rows = n, cm->n_att_long = nl;
    free(count);
    free(runs);
}

/* Several sequences' rows (cm->seq: a serving batch's step) over the caches' table: those of its
 * runs shorter than CG_CUDA_ATTN_TILED_MIN_T (att_rows: the decoding sequences' rows, short prompts'
 * chunks) in one launch of the per-query form, the longer runs in one of the tiled form's (the form
 * for their rows in all, where it is a tiled one). Where each row is its sequence's only one (a
 * decode step) each row's blocks store its key and value as the others read theirs; else one launch
 * first stores every row's. Sets *seqs when it ran (else each run attends as a run of one sequence's
 * rows alone) and *runs when the tiled launch did (else the long runs attend alone, their keys and
 * values stored); false only when a launch failed. */
static bool attend_seqs(const Run *r, const Step *st, bool *seqs, bool *runs)
{
    const CudaModel *cm = r->cm;
    *seqs = *runs = false;
    CgCudaAttnForm f;
    int kseqs;
    attn_pick(st, 1, &f, &kseqs);
    if (cm->att_runs < 2 || r->row0 || r->T != r->lay_t || f.bq != 1 || !st->kvs || cm->o.no_fuse ||
        cm->o.no_attn_seqs)
        return true;
    const IrInstr *i = st->i;
    uint64_t k = addr(r, i->in[1]), v = addr(r, i->in[2]), q = addr(r, i->in[0]), out = addr(r, i->out[0]);
    uint64_t kvs = st->kvs;
    *seqs = true;
    if (!cm->att_alone) {
        unsigned g[3] = {(unsigned)r->T, 2, 1}, b[3] = {256, 1, 1};
        void *ka[] = {(void *)&r->TT, &k, &v, (void *)&cm->pos, &kvs, (void *)&cm->seqs};
        if (!launch(r, st, st->kern_kv_seqs, g, b, 0, ka)) return false;
    }
    CgCudaAttnForm fl;
    int kl;
    attn_pick(st, cm->att_long_rows, &fl, &kl);
    if (cm->n_att_long && fl.bq > 1) {
        unsigned g[3], b[3];
        long long R = (long long)cm->n_att_long;
        uint64_t list = cm->att_rows + (uint64_t)cm->n_att_rows * sizeof(int32_t);
        cg_cuda_attention_seqs_launch(&st->d, &fl,
                                      cg_cuda_attention_run_tiles(&fl, cm->att_rows_h + cm->n_att_rows, R), g, b);
        void *la[] = {&R, &q, &kvs, (void *)&cm->seqs, &list, (void *)&cm->pos, &out};
        if (!launch(r, st, kl, g, b, 0, la)) return false;
        *runs = true;
    }
    if (!cm->n_att_rows) return true;
    uint64_t rows = cm->n_att_rows < r->T ? cm->att_rows : 0, part = 0, cnt = 0;
    uint64_t knew = cm->att_alone ? k : 0, vnew = cm->att_alone ? v : 0;
    Run rs = *r; /* the listed rows: the launch's */
    rs.T = cm->n_att_rows, rs.TT = (long long)rs.T;
    void *aa[] = {(void *)&rs.TT, &q, &kvs, (void *)&cm->seqs, &rows, (void *)&cm->pos, &out, &knew, &vnew,
                  &part, &cnt};
    return attend_launch(&rs, st, &f, kseqs, true, aa, &part, &cnt);
}

/* Several sequences' rows (cuda_model_run_seqs): each run of one sequence's rows attends over its
 * own caches, as a run of those rows alone (their results' addresses offset by the first row), but
 * for those attend_seqs took. */
static bool run_attention(const Run *r, const Step *st)
{
    const CudaModel *cm = r->cm;
    if (!cm->seq) return attend(r, st, cm->pos, st->kc, st->vc, false);
    bool seqs, runs;
    if (!attend_seqs(r, st, &seqs, &runs)) return false;
    for (int64_t t0 = 0, t1; t0 < r->T && !runs; t0 = t1) {
        int s = cm->seq[r->row0 + t0];
        for (t1 = t0 + 1; t1 < r->T && cm->seq[r->row0 + t1] == s; t1++) {}
        if (seqs && t1 - t0 < CG_CUDA_ATTN_TILED_MIN_T) continue; /* (in attend_seqs's launch) */
        Run rs = *r;
        rs.T = t1 - t0, rs.TT = (long long)rs.T, rs.row0 = r->row0 + t0;
        if (!attend(&rs, st, cm->pos + (uint64_t)rs.row0 * sizeof(int32_t), st->kcs[s], st->vcs[s], seqs))
            return false;
    }
    return true;
}

static bool run_step(const Run *r, const Step *st)
{
    CudaModel *cm = r->cm;
    const IrInstr *i = st->i;
    char e[512];
    uint64_t out = i->n_out ? addr(r, i->out[0]) : 0;
    uint64_t a0 = i->n_in > 0 ? addr(r, i->in[0]) : 0, a1 = i->n_in > 1 ? addr(r, i->in[1]) : 0;
    if (st->by >= 0 && i->op != IR_OP_LINEAR && (i->op != IR_OP_MOE_DISPATCH || r->T <= CG_CUDA_COMBINE_DISPATCH_MAX_T))
        return true; /* another step's kernel does it (mark_fusions) */
    if (st->done == cm->call) return true; /* (a combine) its route did it, in this call */
    switch (i->op) {
    case IR_OP_LINEAR: {
        bool fold = st->n_lin && r->T <= CG_CUDA_GEMV_MAX_T && !st->gm[0].alt && gemv_at(r, &st->gm[0]);
        for (int k = 0; fold && k < st->n_lin; k++) fold = !cm->steps[st->lin[k]].gm[0].alt && gemv_at(r, &cm->steps[st->lin[k]].gm[0]);
        if (!fold) return linear(r, st, &st->gm[0], NULL, -1, a0, out);
        uint64_t w[3] = {st->gm[0].w}, o[3] = {out};
        for (int k = 0; k < st->n_lin; k++) { /* theirs too: skipped when reached */
            Step *sb = &cm->steps[st->lin[k]];
            w[k + 1] = sb->gm[0].w, o[k + 1] = addr(r, sb->i->out[0]), sb->done = cm->call;
        }
        void *la[] = {(void *)&r->TT, &a0, &w[0], &o[0], &w[1], &o[1], &w[2], &o[2]};
        bool dec = r->T == 1 && st->k_sg1 >= 0;
        return gemm_launch(r, st, dec ? &st->sg1 : &st->sg, dec ? st->k_sg1 : st->k_sg, la);
    }
    case IR_OP_MOE_ROUTE: return run_route(r, st);
    case IR_OP_ATTENTION: return run_attention(r, st);
    case IR_OP_ZEROS:
        if (st->disp >= 0 && r->T <= CG_CUDA_COMBINE_DISPATCH_MAX_T) { /* zeros and the dispatch: one launch */
            const IrInstr *ri = cm->steps[st->disp].i->in[0]->def;
            uint64_t x = addr(r, ri->in[0]), w = addr(r, ri->out[0]), ids = addr(r, ri->out[1]), none = 0;
            uint64_t off = cm->steps[st->disp].off, perm = cm->steps[st->disp].perm, gw = cm->steps[st->disp].gate_w;
            void *a[] = {(void *)&r->TT, &x, &w, &ids, &none, &none, &out, &none, &off, &perm, &gw};
            return op(r, st, st->kern_disp, &st->d, a);
        }
        cm->ops++;
        if (cg_cuda_fill32_async(cm->drv, out, 0, (size_t)(r->T * cols(i->out[0])), e, sizeof e)) return true;
        snprintf(r->err->msg, sizeof r->err->msg, "%s", e);
        return false;
    case IR_OP_MOE_DISPATCH: {
        uint64_t w = addr(r, i->in[0]->def->out[0]); /* the route's weights, beside its ids */
        uint64_t off = st->off, perm = st->perm, gw = st->gate_w;
        void *a[] = {(void *)&r->TT, &a0, &w, &off, &perm, &gw};
        return op(r, st, st->kern, &st->d, a);
    }
    case IR_OP_MOE_GROUPED_UP: {
        if (st->mlp_down >= 0 && mlp_now(r, &cm->steps[st->mlp_down])) return true; /* its DOWN's kernel does it */
        const Step *ds = &cm->steps[st->dispatch];
        uint64_t off = ds->off, perm = ds->perm, w = st->gm[0].w;
        if (st->a16 && !step_gemv(r, st, &st->gm[0])) { /* x to 16 bits first; h comes out 16-bit */
            int kern;
            const unsigned char *map;
            long long n = (long long)(r->T * cols(i->in[0])), d = cols(i->in[0]), slots = r->T * st->gm[0].tiled.k_top,
                      groups = st->gm[0].tiled.experts;
            unsigned g[3], b[3];
            if (cg_cuda_gemm_tma_a(gemm_pick(r, st, &st->gm[0], &kern, &map))) { /* in slot order, for the TMA */
                void *ga[] = {&slots, &d, &groups, &a0, &off, &perm, &cm->x16};
                cg_cuda_gather16_launch(slots, d, g, b);
                if (!launch(r, st, st->kern_gather, g, b, 0, ga)) return false;
            } else {
                void *ra[] = {&n, &a0, &cm->x16};
                cg_cuda_round16_launch(n, g, b);
                if (!launch(r, st, st->kern_round, g, b, 0, ra)) return false;
            }
            a0 = cm->x16;
        }
        void *a[] = {(void *)&r->TT, &a0, &off, &perm, &w, &out};
        return gemm(r, st, &st->gm[0], a);
    }
    case IR_OP_MOE_GROUPED_DOWN: {
        const Step *ds = &cm->steps[st->dispatch];
        uint64_t y0 = addr(r, i->in[4]), off = ds->off, perm = ds->perm, gw = ds->gate_w, w = st->gm[0].w;
        if (y0 != out) { /* (the plan shares their place when y0 dies here: ir_inplace_input) */
            cm->ops++;
            if (!cg_cuda_copy_async(cm->drv, out, y0, (size_t)(r->T * cols(i->out[0])) * 4, e, sizeof e)) {
                snprintf(r->err->msg, sizeof r->err->msg, "%s", e);
                return false;
            }
        }
        if (st->mlp_up >= 0 && mlp_now(r, st)) { /* with its UP: from UP's x */
            const Step *us = &cm->steps[st->mlp_up];
            uint64_t x = addr(r, us->i->in[0]), wu = us->gm[0].w;
            void *a[] = {(void *)&r->TT, &x, &off, &perm, &gw, &wu, &w, &out};
            unsigned g[3], b[3];
            size_t smem;
            cg_cuda_mlp_launch(&st->mlp, r->T, g, b, &smem);
            return launch(r, st, st->kern_mlp, g, b, smem, a);
        }
        void *a[] = {(void *)&r->TT, &a0, &off, &perm, &gw, &w, &out};
        return gemm(r, st, &st->gm[0], a);
    }
    case IR_OP_ADD_RMS_NORM: {
        uint64_t w = addr(r, i->in[2]), o1 = addr(r, i->out[1]);
        void *a[] = {(void *)&r->TT, &a0, &a1, &w, &out, &o1};
        return op(r, st, st->kern, &st->d, a);
    }
    case IR_OP_MOE_COMBINE: {
        uint64_t ids = addr(r, i->in[2]), alpha = ir_attr_int(i, "n_const") ? addr(r, i->in[3]) : 0, vp = st->vc_ptrs;
        uint64_t u = st->scale >= 0 ? addr(r, cm->steps[st->scale].i->out[0]) : 0, off = 0, perm = 0, gw = 0;
        bool disp = st->disp >= 0 && r->T <= CG_CUDA_COMBINE_DISPATCH_MAX_T;
        if (disp) off = cm->steps[st->disp].off, perm = cm->steps[st->disp].perm, gw = cm->steps[st->disp].gate_w;
        void *a[] = {(void *)&r->TT, &a0, &a1, &ids, &alpha, &vp, &out, &u, &off, &perm, &gw};
        return op(r, st, disp ? st->kern_disp : st->kern, &st->d, a);
    }
    case IR_OP_EMBED: {
        void *a[] = {(void *)&r->TT, &a1, &a0, &out}; /* ids, table */
        return op(r, st, st->kern, &st->d, a);
    }
    case IR_OP_SCALE:
    case IR_OP_TANH: {
        void *a[] = {(void *)&r->TT, &a0, &out};
        return op(r, st, st->kern, &st->d, a);
    }
    default: { /* rms_norm (x, w), rope (x, pos), swiglu and add (a, b) */
        if (i->op == IR_OP_ROPE && st->pair >= 0) { /* with the earlier RoPE: the wider one is x */
            const IrInstr *ai = cm->steps[st->pair].i;
            uint64_t ax = addr(r, ai->in[0]), ao = addr(r, ai->out[0]);
            bool wide = st->d_pair.heads == ir_attr_int(ai, "heads");
            void *pa[] = {(void *)&r->TT, wide ? &ax : &a0, &a1, wide ? &ao : &out, wide ? &a0 : &ax, wide ? &out : &ao};
            return op(r, st, st->kern_pair, &st->d_pair, pa);
        }
        void *a[] = {(void *)&r->TT, &a0, &a1, &out};
        return op(r, st, st->kern, &st->d, a);
    }
    }
}

static bool fail_cuda(RtError *err, const char *what, const char *e)
{
    snprintf(err->msg, sizeof err->msg, "%s: %s", what, e);
    return false;
}

static bool run_range(CudaModel *cm, int first, int last, int64_t T, RtError *err)
{
    Run r = run_of(cm, T, err);
    r.first = first, r.last = last;
    Run tail = r;
    int64_t n = cm->o.last_rows < T ? cm->o.last_rows : T;
    tail.T = n, tail.TT = (long long)n, tail.row0 = T - n; /* the logits tail on the last n rows alone */
    cm->call++;
    char e[512];
    for (int s = first; s < last; s++) {
        if (!run_step(n > 0 && n < T && s >= cm->tail ? &tail : &r, &cm->steps[s])) return false;
        if (cm->o.sync_each && !cg_cuda_sync(cm->drv, e, sizeof e)) {
            const IrInstr *i = cm->steps[s].i;
            snprintf(err->msg, sizeof err->msg, "instruction %d (%s %%%s) failed on the GPU: %s", s, ir_op_info(i->op)->name,
                     i->n_out ? i->out[0]->name : "?", e);
            return false;
        }
    }
    return true;
}

/* run_range `reps` times over */
static bool run_ranges(CudaModel *cm, int first, int last, int reps, int64_t T, RtError *err)
{
    for (int q = 0; q < reps; q++)
        if (!run_range(cm, first, last, T, err)) return false;
    return true;
}

bool cuda_model_run_steps(CudaModel *cm, int first, int last, const int32_t *ids, const int32_t *pos, int64_t T,
                          RtError *err)
{
    return cuda_model_run_steps_reps(cm, first, last, 1, ids, pos, T, err);
}

bool cuda_model_run_steps_reps(CudaModel *cm, int first, int last, int reps, const int32_t *ids, const int32_t *pos,
                               int64_t T, RtError *err)
{
    if (T <= 0) {
        snprintf(err->msg, sizeof err->msg, "no tokens to run");
        return false;
    }
    for (int64_t t = 0; t < T; t++) {
        if (pos[t] < 0 || pos[t] >= cm->max_pos) {
            snprintf(err->msg, sizeof err->msg, "position %d of token %lld is outside [0, %lld) (max positions)", pos[t],
                     (long long)t, (long long)cm->max_pos);
            return false;
        }
    }
    MOE_ASSERT(0 <= first && first <= last && last <= cm->n_steps && reps >= 1 && !cm->o.caller_workspace);
    if (!ensure_capacity(cm, T, err)) return false;
    char e[512];
    /* A decode step (T = 1) runs as a CUDA graph: its launch gaps are the GPU's, not the host's. Any
     * range of steps does (the benchmarks time the MoE block and the GEMMs of a decode step so). So
     * does a run of several sequences' rows laid out as the run before it (--batch decoding the
     * same sequences step after step; a layout seen once is not captured). */
    GraphKey key = {first, last, reps, T, cm->o.last_rows < T ? cm->o.last_rows : 0, (int32_t *)cm->seq};
    bool use_graph = (T == 1 || cm->seq) && !cm->o.no_graph && !cm->o.poison && !cm->o.sync_each;
    void *graph = NULL;
    int graph_ops = 0;
    for (int j = 0; use_graph && j < cm->n_graphs && j < (int)MOE_ARRAY_LEN(cm->graphs); j++)
        if (graph_key_is(&cm->graphs[j].key, &key)) graph = cm->graphs[j].g, graph_ops = cm->graphs[j].ops;
    bool capture = use_graph && !graph && (!cm->seq || graph_key_is(&cm->seen, &key));
    if (cm->seq && !graph_key_is(&cm->seen, &key)) {
        free(cm->seen.seq);
        cm->seen = graph_key_copy(&key);
    }
    cm->ops = graph_ops;
    cm->n_att_rows = cm->att_runs = cm->n_att_long = 0;
    if (cm->seq) attention_rows(cm, T);
    if (!cg_cuda_upload_async(cm->drv, cm->ids, ids, (size_t)T * sizeof *ids, e, sizeof e) ||
        !cg_cuda_upload_async(cm->drv, cm->pos, pos, (size_t)T * sizeof *pos, e, sizeof e) ||
        (cm->seq && !cg_cuda_upload_async(cm->drv, cm->seqs, cm->seq, (size_t)T * sizeof *cm->seq, e, sizeof e)) ||
        (cm->n_att_rows + cm->n_att_long &&
         !cg_cuda_upload_async(cm->drv, cm->att_rows, cm->att_rows_h,
                               (size_t)(cm->n_att_rows + 2 * cm->n_att_long) * sizeof *cm->att_rows_h, e, sizeof e)))
        return fail_cuda(err, "queueing the inputs", e);
    if (cm->o.poison && !cg_cuda_fill32_async(cm->drv, cm->arena, 0xffc00000u,
                                              (size_t)(cm->m->arena_t * T + cm->m->arena_c) / 4, e, sizeof e))
        return fail_cuda(err, "poisoning the arena", e);
    /* the events bracket the launches (or the graph) alone: the inputs' upload (two small copies from
     * host memory, microseconds on the stream) is no part of what the benchmarks time */
    if (!cg_cuda_event_record(cm->drv, cm->ev0, e, sizeof e)) return fail_cuda(err, "queueing the inputs", e);
    if (graph) {
        if (!cg_cuda_graph_launch(cm->drv, graph, e, sizeof e)) return fail_cuda(err, "launching the decode graph", e);
    } else if (!run_ranges(cm, first, last, reps, T, err)) {
        cg_cuda_sync(cm->drv, e, sizeof e);
        return false;
    }
    if (!cg_cuda_event_record(cm->drv, cm->ev1, e, sizeof e) || !cg_cuda_sync(cm->drv, e, sizeof e))
        return fail_cuda(err, "running the model on the GPU", e);
    float ms = 0;
    if (cg_cuda_event_ms(cm->drv, cm->ev0, cm->ev1, &ms, e, sizeof e)) cm->last_ms = ms;
    cm->last_t = T;
    if (capture) { /* the first such step ran eagerly; capture it for the next ones */
        if (!cg_cuda_capture_begin(cm->drv, e, sizeof e)) return fail_cuda(err, "capturing the decode step", e);
        int ops = cm->ops;
        cm->ops = 0;
        bool ok = run_ranges(cm, first, last, reps, T, err);
        MOE_ASSERT(!ok || cm->ops == ops); /* the graph holds what the eager call ran */
        void *g = NULL;
        bool ended = cg_cuda_capture_end(cm->drv, &g, e, sizeof e);
        if (!ok) return false;
        if (!ended) return fail_cuda(err, "capturing the decode step", e);
        int j = cm->n_graphs++ % (int)MOE_ARRAY_LEN(cm->graphs); /* the oldest goes when all are taken */
        if (cm->n_graphs > (int)MOE_ARRAY_LEN(cm->graphs)) {
            cg_cuda_graph_free(cm->drv, cm->graphs[j].g);
            free(cm->graphs[j].key.seq);
        }
        cm->graphs[j].key = graph_key_copy(&key), cm->graphs[j].ops = ops, cm->graphs[j].g = g;
    }
    return true;
}

bool cuda_model_run(CudaModel *cm, const int32_t *ids, const int32_t *pos, int64_t T, RtError *err)
{
    return cuda_model_run_steps(cm, 0, cm->n_steps, ids, pos, T, err);
}

bool cuda_model_set_sequences(CudaModel *cm, int n, RtError *err)
{
    MOE_ASSERT(!cm->dry && n >= 1);
    for (int s = 0; s < cm->n_steps; s++) { /* (n = 1 too: a run by sequences reads kcs[0]) */
        Step *st = &cm->steps[s];
        if (st->i->op != IR_OP_ATTENTION || (st->kcs && st->n_kv >= n)) continue;
        size_t bytes = (size_t)(cm->max_pos * cols(st->i->in[1])) * (st->d.wdtype == DT_F32 ? sizeof(float) : 2);
        if (!st->n_kv) st->n_kv = 1; /* kc, vc */
        st->kcs = xrealloc(st->kcs, (size_t)n * sizeof *st->kcs);
        st->vcs = xrealloc(st->vcs, (size_t)n * sizeof *st->vcs);
        st->kcs[0] = st->kc, st->vcs[0] = st->vc;
        for (; st->n_kv < n; st->n_kv++) /* (after a failure, a later call goes on from there) */
            if (!dalloc(cm, &st->kcs[st->n_kv], bytes, "the KV caches of --batch", true, err) ||
                !dalloc(cm, &st->vcs[st->n_kv], bytes, "the KV caches of --batch", true, err))
                return false;
        if (n < 2) continue;
        uint64_t *tab = xmalloc((size_t)(2 * n) * sizeof *tab), d = 0;
        for (int q = 0; q < n; q++) tab[2 * q] = st->kcs[q], tab[2 * q + 1] = st->vcs[q];
        bool ok = dalloc(cm, &d, (size_t)(2 * n) * sizeof *tab, "the KV caches' table", false, err) &&
                  dupload(cm, d, tab, (size_t)(2 * n) * sizeof *tab, err);
        free(tab);
        if (st->kvs) { /* the table it replaces, once the stream is done with it, and the graphs that read
                          it (after a failure too: it is short of the caches allocated, and no table
                          takes the one-launch path) */
            char e[512];
            cg_cuda_sync(cm->drv, e, sizeof e); /* (a failure is the next call's to report) */
            graphs_drop(cm);
            cg_cuda_free(cm->drv, st->kvs);
        }
        st->kvs = ok ? d : 0;
        if (!ok) return cg_cuda_free(cm->drv, d), false;
    }
    if (n > cm->n_seqs) cm->n_seqs = n;
    return true;
}

bool cuda_model_run_steps_seqs(CudaModel *cm, int first, int last, int reps, const int32_t *ids, const int32_t *pos,
                               const int32_t *seq, int64_t T, RtError *err)
{
    if (!rt_sequences_ok(seq, T, cm->n_seqs, err)) return false;
    cm->seq = seq;
    bool ok = cuda_model_run_steps_reps(cm, first, last, reps, ids, pos, T, err);
    cm->seq = NULL;
    return ok;
}

bool cuda_model_run_seqs(CudaModel *cm, const int32_t *ids, const int32_t *pos, const int32_t *seq, int64_t T,
                         RtError *err)
{
    return cuda_model_run_steps_seqs(cm, 0, cm->n_steps, 1, ids, pos, seq, T, err);
}

bool cuda_model_copy_sequence(CudaModel *cm, int from, int to, int64_t positions, RtError *err)
{
    if (!rt_copy_ok(from, to, positions, cm->n_seqs, cm->max_pos, err)) return false;
    char e[512];
    for (int s = 0; s < cm->n_steps && from != to && positions > 0; s++) {
        const Step *st = &cm->steps[s];
        if (st->i->op != IR_OP_ATTENTION) continue;
        size_t bytes = (size_t)(positions * cols(st->i->in[1])) * (st->d.wdtype == DT_F32 ? sizeof(float) : 2); /* [pos][cols] */
        if (!cg_cuda_copy_async(cm->drv, st->kcs[to], st->kcs[from], bytes, e, sizeof e) ||
            !cg_cuda_copy_async(cm->drv, st->vcs[to], st->vcs[from], bytes, e, sizeof e))
            return fail_cuda(err, "copying a sequence's KV caches", e);
    }
    return true;
}

void cuda_model_set_last_rows(CudaModel *cm, int64_t n) { cm->o.last_rows = n > 0 ? n : 0; }

const void *cuda_model_output(CudaModel *cm, const char *name, int64_t *ncols, moe_dtype *dtype, RtError *err)
{
    for (int k = 0; k < cm->m->n_outputs; k++) {
        const IrValue *v = cm->m->outputs[k].value;
        if (strcmp(cm->m->outputs[k].name, name) != 0 || v->kind != IR_VAL_RESULT) continue;
        size_t bytes = (size_t)(cm->last_t * cols(v)) * dtype_size(v->type.dtype);
        HostOut *h = &cm->outs[k];
        if (h->bytes < bytes) {
            free(h->data);
            h->data = xmalloc(bytes);
            h->bytes = bytes;
        }
        Run r = run_of(cm, cm->last_t, err);
        char e[512];
        size_t skip = 0; /* the logits of the last rows alone (the rest was not computed): only they come */
        if (cm->o.last_rows > 0 && cm->o.last_rows < cm->last_t && cm->tail < cm->n_steps &&
            v->def == cm->steps[cm->n_steps - 1].i)
            skip = (size_t)((cm->last_t - cm->o.last_rows) * cols(v)) * dtype_size(v->type.dtype);
        if (!cg_cuda_download(cm->drv, (char *)h->data + skip, addr(&r, v) + skip, bytes - skip, e, sizeof e)) {
            fail_cuda(err, "copying an output from the GPU", e);
            return NULL;
        }
        if (ncols) *ncols = cols(v);
        if (dtype) *dtype = v->type.dtype;
        return h->data;
    }
    return NULL;
}

bool cuda_model_write(CudaModel *cm, const IrValue *v, const void *host, RtError *err)
{
    MOE_ASSERT(v->kind == IR_VAL_RESULT && cm->last_t > 0);
    Run r = run_of(cm, cm->last_t, err);
    return dupload(cm, addr(&r, v), host, (size_t)(cm->last_t * cols(v)) * dtype_size(v->type.dtype), err);
}

double cuda_model_last_ms(const CudaModel *cm) { return cm->last_ms; }

int cuda_model_last_ops(const CudaModel *cm) { return cm->ops; }

int cuda_model_graphs(const CudaModel *cm)
{
    return cm->n_graphs < (int)MOE_ARRAY_LEN(cm->graphs) ? cm->n_graphs : (int)MOE_ARRAY_LEN(cm->graphs);
}

const char *cuda_model_device(const CudaModel *cm) { return cm->info; }

double cuda_model_bytes(const CudaModel *cm) { return cm->bytes; }

void cuda_model_free(CudaModel *cm)
{
    if (!cm) return;
    model_free_buffers(cm);
    if (cm->drv) {
        for (int j = 0; j < cm->n_allocs; j++) cg_cuda_free(cm->drv, cm->allocs[j]);
        for (int s = 0; s < cm->n_steps && !cm->o.caller_workspace; s++) cg_cuda_free(cm->drv, cm->steps[s].kvs);
        cg_cuda_event_free(cm->drv, cm->ev0);
        cg_cuda_event_free(cm->drv, cm->ev1);
        if (cm->own_drv) cg_cuda_driver_close(cm->drv);
    }
    for (int j = 0; j < cm->n_k; j++) {
        free(cm->k[j].symbol);
        free(cm->k[j].source);
    }
    for (int k = 0; k < cm->m->n_outputs; k++) free(cm->outs[k].data);
    free(cm->outs);
    free(cm->seen.seq);
    free(cm->att_rows_h);
    free(cm->k);
    free(cm->allocs);
    free(cm->wmap);
    free(cm->stage);
    for (int s = 0; s < cm->n_steps; s++)
    {
        for (int g = 0; g < cm->steps[s].n_gm; g++) {
            Gemm *gm = &cm->steps[s].gm[g];
            for (int j = 0; gm->alt && j < gm->alt->n; j++) free(gm->alt->tmap[j]);
            free(gm->alt), free(gm->tmap), free(gm->tmap_big), free(gm->amap);
        }
        free(cm->steps[s].att);
        free(cm->steps[s].kcs), free(cm->steps[s].vcs);
        if (cm->steps[s].route) free(cm->steps[s].route->g), free(cm->steps[s].route->k);
        free(cm->steps[s].route);
    }
    free(cm->steps);
    free(cm);
}

/* ---- on the caller's workspace and stream (CudaOptions.caller_workspace) ------------------------- */

static uint64_t take(uint64_t *at, size_t bytes)
{
    uint64_t p = *at;
    *at += round64(bytes);
    return p;
}

/* The per-call buffers of T tokens from base: the arena, the router scratch, and per dispatch its
 * expert offsets, permutation and gate weights; stored into `set` when given. The bytes. */
static size_t workspace_layout(const CudaModel *cm, int64_t T, uint64_t base, CudaModel *set)
{
    uint64_t at = base;
    uint64_t arena = take(&at, (size_t)(cm->m->arena_t * T + cm->m->arena_c));
    uint64_t scratch = take(&at, 4 * round64(cm->scratch_per_t * (size_t)T * sizeof(float)));
    uint64_t x16 = take(&at, cm->x16_per_t * (size_t)T);
    if (set) set->arena = arena, set->scratch = scratch, set->x16 = x16;
    for (int s = 0; s < cm->n_steps; s++) {
        const Step *st = &cm->steps[s];
        if (st->i->op != IR_OP_MOE_DISPATCH) continue;
        size_t n = (size_t)(T * cols(st->i->in[0]));
        uint64_t off = take(&at, (size_t)(st->d.experts + 1) * sizeof(int64_t));
        uint64_t perm = take(&at, n * sizeof(int32_t)), gw = take(&at, n * sizeof(float));
        if (set) set->steps[s].off = off, set->steps[s].perm = perm, set->steps[s].gate_w = gw;
    }
    return (size_t)(at - base);
}

size_t cuda_model_workspace_bytes(const CudaModel *cm, int64_t T)
{
    MOE_ASSERT(cm->o.caller_workspace && T > 0);
    return workspace_layout(cm, T, 0, NULL);
}

void cuda_model_set_workspace(CudaModel *cm, uint64_t workspace, int64_t T)
{
    MOE_ASSERT(cm->o.caller_workspace && T > 0 && workspace % 64 == 0);
    workspace_layout(cm, T, workspace, cm);
    cm->cap_t = T;
}

void cuda_model_bind_input(CudaModel *cm, const IrValue *v, uint64_t dev)
{
    MOE_ASSERT(v->kind == IR_VAL_INPUT && dev % 16 == 0);
    for (int j = 0; j < cm->n_bound; j++)
        if (cm->bound[j].v == v) return (void)(cm->bound[j].d = dev);
    MOE_ASSERT(cm->n_bound < (int)MOE_ARRAY_LEN(cm->bound));
    cm->bound[cm->n_bound].v = v;
    cm->bound[cm->n_bound++].d = dev;
}

bool cuda_model_enqueue(CudaModel *cm, int64_t T, RtError *err)
{
    MOE_ASSERT(cm->o.caller_workspace && T > 0 && T <= cm->cap_t);
    cm->last_t = T;
    cm->ops = 0;
    return run_range(cm, 0, cm->n_steps, T, err);
}

uint64_t cuda_model_output_addr(const CudaModel *cm, const char *name, int64_t T)
{
    for (int k = 0; k < cm->m->n_outputs; k++) {
        const IrValue *v = cm->m->outputs[k].value;
        if (strcmp(cm->m->outputs[k].name, name) != 0 || v->kind != IR_VAL_RESULT) continue;
        Run r = run_of((CudaModel *)cm, T, NULL);
        return addr(&r, v);
    }
    return 0;
}

static bool gpu_identity(int ordinal, char *name, size_t n, char *arch, size_t arch_n, RtError *err)
{
    CgCudaDriver *d = cg_cuda_driver_open(ordinal, err->msg, sizeof err->msg);
    if (!d) return false;
    cg_cuda_device_name(d, name, n);
    cg_cuda_device_arch(d, arch, arch_n);
    cg_cuda_driver_close(d);
    return true;
}

const CudaBackend cuda_backend = {cuda_model_new,     cuda_model_run,  cuda_model_output,        cuda_model_device,
                                  cuda_model_last_ms, cuda_model_free, gpu_identity,             cuda_model_set_sequences,
                                  cuda_model_run_seqs, cuda_model_set_last_rows,
                                  cuda_model_copy_sequence};
