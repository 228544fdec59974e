/* tune_cuda.c — `moeppc tune SPEC --target sm_XX`: the grouped expert GEMMs of a bf16/f16 model on an
 * NVIDIA GPU: the block tile of the tensor-core path (every T > 16) and the form of the GEMV (T <= 16);
 * and the shape of its attention kernels.
 *
 * 1. Every tile BM x BN x BK in {32, 64, 128}^2 x {16, 32, 64} that the kernel generator accepts (its
 *    own checks: warp layout, shared memory) and whose shared memory the target's SMs have (the
 *    cp.async form's k tiles: sm_90 227 KB, sm_80 163 KB, others 99 KB), and every GEMV form (slots
 *    per pass {1, 4, 16} x warps {2, 4, 8} x k unroll {1, 4, 16}), is compiled by NVRTC for the
 *    target, in parallel, and discarded before anything runs if ptxas reports spills, serialises a
 *    wgmma form's MMAs (its "C7510" advisory) or a block whose registers exceed an SM's 65536. The tables of what survived and why the rest did not are printed.
 * 2. On a GPU of that architecture, per token bucket, one layer of the spec with random weights runs
 *    with the rule's configuration (T = 1: the GEMV's decode form), then with each candidate for the
 *    up- and for the down-projection (T <= 16: the GEMV forms with at most T slots per pass): the
 *    model's logits are checked against the rule's (bf16 tolerance, SEMANTICS.md §4), the grouped GEMM
 *    is timed with CUDA events (median after warm-up). Then each bucket's winner runs with deeper
 *    cp.async rings (4, 5 stages) and, for the down-projection, with k split 2, 4 and 8 ways (split-K:
 *    more blocks where the token count leaves SMs idle; the fastest configuration whose k has room
 *    for it when the winner's tile takes all of k). Attention's forms (CgCudaAttnForm: the
 *    per-query kernel's warps and key splits, the tiled kernel's queries per block, threads per query
 *    and key tile, for 16-bit models the tensor-core kernel's queries and key tile) run the same way, T queries at the end of a context of 512 positions (the model's logits
 *    checked, the attention timed). The winners go to a GPU tuning database
 *    (passes/tuning.h) that `run` and `bench` with --device cuda read, per token count.
 * Without a GPU the command stops after step 1 with an error: nothing is written. */
#include "tools/commands.h"

#include "passes/passes.h"

#ifdef MOEPPC_HAVE_CUDA
#include "passes/passes.h"
#include "passes/tuning.h"
#include "runtime/cuda/cuda_exec.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    TuneConfig c;             /* tile_m = BM, tile_n = BN, kc = BK; a GEMV form: tile_m = slots per
                                 pass, tile_n = warps, unroll = k unroll          */
    bool ok;
    bool pair;                /* a wgmma tile on the ring that lets two blocks share an SM (kept only
                                 if their registers fit too)                        */
    char why[128];            /* why it was discarded                               */
    int regs, smem, threads;
} GpuCand;

/* 3 x 3 x 3, and on sm_90 12 wgmma tiles and 6 with TMA, up to 18 of them again on a shallower ring
 * for two blocks an SM, the 6 TMA ones warp-specialised; attention 12 + 36 + 8 forms, and with GQA up
 * to 12 of other query heads a block */
enum { MAX_CANDS = 72 };
/* A grouped GEMM's share of the budget against attention's or the router's (1): the GEMMs take most of
 * a layer's time and have the most candidates (tiles, GEMV forms, deeper rings, split-K) */
enum { GEMM_WEIGHT = 2 };

/* The shared memory a block of `arch` may opt in to, in KB. */
static int arch_smem_kb(const char *arch)
{
    int sm = strncmp(arch, "sm_", 3) == 0 ? atoi(arch + 3) : 0;
    return sm >= 90 ? 227 : sm == 80 || sm == 87 ? 163 : sm ? 99 : 227;
}

/* The candidates of one grouped GEMM: every MMA tile of the grid (gemv false; on sm_90 for the
 * cp.async form also the wgmma tiles {64, 128} x {64, 128, 256} x {32, 64}, those of k 64 also with
 * W by the TMA, each on the deepest ring up to its default that fits, and again on the deepest ring
 * (of 3 or more) with which two blocks share an SM's shared memory, pair[] set: a block's first
 * tiles' wait and its epilogue then overlap the other's MMAs), each TMA tile also warp-specialised
 * and persistent on the deepest ring up to 6 that fits (its producer fills the next tile's slots
 * while the consumers' epilogue runs), or every GEMV form (slots per pass x
 * warps x k unroll, gemv true); their configurations in cfg. */
static int list_candidates(const CgCudaGemm *base, bool gemv, const char *arch, CgCudaGemm *list, TuneConfig *cfg,
                           bool *pair)
{
    static const int bms[] = {32, 64, 128}, bns[] = {32, 64, 128}, bks[] = {16, 32, 64};
    static const int slots[] = {1, 4, 16}, warps[] = {2, 4, 8}, unrolls[] = {1, 4, 16};
    int n = 0;
    memset(pair, 0, MAX_CANDS * sizeof *pair);
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 3; b++)
            for (size_t k = 0; k < 3; k++) {
                CgCudaGemm g = *base;
                if (gemv) g.bm = slots[a], g.bn = warps[b], g.bk = unrolls[k];
                else g.bm = bms[a], g.bn = bns[b], g.bk = bks[k];
                list[n] = g;
                cfg[n++] = gemv ? (TuneConfig){.tile_m = g.bm, .tile_n = g.bn, .unroll = g.bk}
                                : (TuneConfig){.tile_m = g.bm, .tile_n = g.bn, .kc = g.bk};
            }
    if (gemv || !cg_cuda_gemm_a16(base) || strcmp(arch, "sm_90") != 0) return n;
    static const int wbms[] = {64, 128}, wbns[] = {64, 128, 256}, wbks[] = {32, 64};
    for (size_t a = 0; a < 2; a++)
        for (size_t b = 0; b < 3; b++)
            for (size_t k = 0; k < 2; k++) {
                CgCudaGemm g = cg_cuda_gemm_wgmma(base);
                g.bm = wbms[a], g.bn = wbns[b], g.bk = wbks[k];
                for (int tma = 0; tma <= (g.bk == 64); tma++) { /* k tiles of 64: also with W by the TMA */
                    g.tma = tma;
                    /* a tile whose default ring does not fit the target's shared memory: the deepest
                     * ring that does, down to 3 (one tile in flight) */
                    int ring = cg_cuda_gemm_wgmma(base).stages;
                    for (g.stages = ring; g.stages > 3 && cg_cuda_gemm_smem(&g) > (size_t)arch_smem_kb(arch) * 1024;)
                        g.stages--;
                    list[n] = g;
                    cfg[n++] = (TuneConfig){.tile_m = g.bm, .tile_n = g.bn, .kc = g.bk, .wgmma = 1, .tma = tma,
                                            .stages = g.stages != ring ? g.stages : 0};
                    /* two blocks an SM: each within half the SM's shared memory (less the 1 KB the
                     * hardware keeps per block) */
                    int one = g.stages;
                    size_t half = ((size_t)arch_smem_kb(arch) + 1) * 1024 / 2 - 1024;
                    while (g.stages > 3 && cg_cuda_gemm_smem(&g) > half) g.stages--;
                    if (g.stages < one && cg_cuda_gemm_smem(&g) <= half) {
                        list[n] = g, pair[n] = true;
                        cfg[n++] = (TuneConfig){.tile_m = g.bm, .tile_n = g.bn, .kc = g.bk, .wgmma = 1, .tma = tma,
                                                .stages = g.stages != ring ? g.stages : 0};
                    }
                    if (!tma) continue;
                    /* warp-specialised and persistent (one block an SM): the deepest ring that fits, to 6 */
                    g.ws = true;
                    cg_cuda_gemm_persist(&g, 0, false); /* (DOWN's source with its stream-K tail) */
                    for (g.stages = 6; g.stages > 3 && cg_cuda_gemm_smem(&g) > (size_t)arch_smem_kb(arch) * 1024;)
                        g.stages--;
                    list[n] = g;
                    cfg[n++] = (TuneConfig){.tile_m = g.bm, .tile_n = g.bn, .kc = g.bk, .wgmma = 1, .tma = 1, .ws = 1,
                                            .stages = g.stages != ring ? g.stages : 0};
                    g.ws = g.stream_k = false;
                }
            }
    return n;
}

/* The listed candidates' kernels (code[q] for candidate out[map[q]]) compiled for arch by NVRTC in
 * parallel; a candidate whose kernel spills, whose wgmma ptxas serialises (a wgmma form slower than
 * the rest for certain) or whose block's registers exceed an SM's is discarded.
 * Frees the code; returns n, or -1 when NVRTC fails (err). */
static int compile_filter(GpuCand *out, int n, CudaKernelCode *code, const int *map, int n_code, const char *arch,
                          char *err, size_t errlen)
{
    CgCudaBinary bins[MAX_CANDS];
    bool ok = cuda_compile_kernels(code, n_code, arch, true, false, bins, err, errlen);
    for (int q = 0; q < n_code; q++) {
        GpuCand *c = &out[map[q]];
        if (ok) {
            c->regs = bins[q].registers, c->smem += bins[q].smem_bytes;
            if (bins[q].spill_stores > 0 || bins[q].spill_loads > 0)
                snprintf(c->why, sizeof c->why, "spills (%d bytes stored, %d loaded)", bins[q].spill_stores,
                         bins[q].spill_loads), c->ok = false;
            else if (bins[q].wgmma_serialized[0])
                snprintf(c->why, sizeof c->why, "ptxas serialises its wgmma (%.90s)", bins[q].wgmma_serialized), c->ok = false;
            else if ((long)c->regs * c->threads > 65536)
                snprintf(c->why, sizeof c->why, "%d registers x %d threads exceed an SM's 65536", c->regs, c->threads),
                    c->ok = false;
            else if (c->pair && 2L * c->regs * c->threads > 65536) /* (then only a shallower ring) */
                snprintf(c->why, sizeof c->why, "two blocks an SM: 2 x %d registers x %d threads exceed its 65536",
                         c->regs, c->threads), c->ok = false;
            cg_cuda_binary_free(&bins[q]);
        }
        free(code[q].symbol);
        free(code[q].source);
    }
    return ok ? n : -1;
}

/* Step 1 for one grouped GEMM: candidates compiled and checked; returns how many were listed. */
static int gpu_candidates(const CgCudaGemm *base, bool gemv, const char *arch, GpuCand *out, char *err, size_t errlen)
{
    CgCudaGemm list[MAX_CANDS];
    TuneConfig cfg[MAX_CANDS];
    bool pair[MAX_CANDS];
    int n_list = list_candidates(base, gemv, arch, list, cfg, pair);
    CudaKernelCode code[MAX_CANDS];
    int map[MAX_CANDS], n = 0, n_code = 0;
    for (int q = 0; q < n_list; q++) {
        const CgCudaGemm *g = &list[q];
        GpuCand *c = &out[n];
        *c = (GpuCand){.c = cfg[q], .ok = true, .pair = pair[q]};
        char why[512], sym[256];
        char *src = cg_cuda_gemm_source(g, why, sizeof why);
        if (!src) { /* the generator's reason, after the symbol it names */
            const char *r = strstr(why, ": ");
            snprintf(c->why, sizeof c->why, "%s", r ? r + 2 : why);
            c->ok = false;
            n++;
            continue;
        }
        unsigned grid[3], block[3];
        size_t smem;
        cg_cuda_gemm_launch(g, 512, grid, block, &smem);
        c->threads = (int)(block[0] * block[1] * block[2]);
        c->smem = (int)smem; /* dynamic; the compile adds the static */
        if (smem > (size_t)arch_smem_kb(arch) * 1024) {
            snprintf(c->why, sizeof c->why, "%zu B of shared memory, above %s's %d KB", smem, arch, arch_smem_kb(arch));
            c->ok = false;
            free(src);
            n++;
            continue;
        }
        cg_cuda_gemm_symbol(g, sym, sizeof sym);
        code[n_code] = (CudaKernelCode){.symbol = xstrdup(sym), .source = src};
        map[n_code++] = n++;
    }
    return compile_filter(out, n, code, map, n_code, arch, err, errlen);
}

/* Step 1 for attention (d): every form, the per-query kernel with 1, 2, 4 or 8 warps (its keys in 1,
 * 8 or 32 splits; the rule's: cg_cuda_attention_splits) and, with GQA, with 2 or 4 warps and each
 * other number of a kv head's query heads a block (gq: 1, 2, 4), the tiled one with {16, 32, 64, 128}
 * queries x {2, 4, 8} threads x key tiles {the rule's, 16, 64} and, for 16-bit models, the tensor-core
 * one with {16, 32, 64, 128} queries x key tiles {32, 64}, generated, compiled and checked as the
 * GEMMs' tiles; returns how many were listed (-1: NVRTC failed). */
static int attn_candidates(const CgOpDesc *d, const char *arch, GpuCand *out, char *err, size_t errlen)
{
    static const int warps[] = {1, 2, 4, 8}, splits[] = {0, 8, 32}, bqs[] = {16, 32, 64, 128}, tpqs[] = {2, 4, 8},
                     bkvs[] = {0, 16, 64};
    CgCudaAttnForm list[MAX_CANDS];
    int n_list = 0;
    for (size_t w = 0; w < MOE_ARRAY_LEN(warps); w++)
        for (size_t k = 0; k < MOE_ARRAY_LEN(splits); k++)
            list[n_list++] = (CgCudaAttnForm){1, 32 * warps[w], splits[k], 0};
    int64_t group = d->heads / d->kv_heads;
    for (int w = 2; w <= 4; w *= 2)
        for (int g = 1; g <= CG_CUDA_ATTN_GQ_MAX && group > 1; g *= 2)
            for (size_t k = 0; k < MOE_ARRAY_LEN(splits) && group % g == 0; k++)
                if (g != cg_cuda_attention_heads_per_block(d, w)) {
                    MOE_ASSERT(n_list < MAX_CANDS); /* (12 more at most: 68 with the 16-bit forms) */
                    list[n_list++] = (CgCudaAttnForm){1, 32 * w, splits[k], g};
                }
    for (size_t a = 0; a < MOE_ARRAY_LEN(bqs) && d->wdtype != DT_F32; a++) /* tensor cores: 16-bit models */
        for (size_t k = 0; k < 2; k++) list[n_list++] = (CgCudaAttnForm){bqs[a], 0, k ? 64 : 32, 0};
    for (size_t a = 0; a < MOE_ARRAY_LEN(bqs); a++)
        for (size_t b = 0; b < MOE_ARRAY_LEN(tpqs); b++)
            for (size_t k = 0; k < MOE_ARRAY_LEN(bkvs); k++)
                list[n_list++] = (CgCudaAttnForm){bqs[a], tpqs[b], bkvs[k], 0};
    CudaKernelCode code[MAX_CANDS];
    int map[MAX_CANDS], n_code = 0;
    for (int q = 0; q < n_list; q++) {
        const CgCudaAttnForm *f = &list[q];
        GpuCand *c = &out[q];
        *c = (GpuCand){.c = cuda_attn_config(f), .ok = true, .threads = f->tpq ? f->bq * f->tpq : 2 * f->bq};
        char why[512], sym[600];
        char *src = cg_cuda_attention_source(d, f, why, sizeof why);
        if (!src) {
            const char *r = strstr(why, ": ");
            snprintf(c->why, sizeof c->why, "%s", r ? r + 2 : why);
            c->ok = false;
            continue;
        }
        cg_cuda_attention_symbol(d, f, sym, sizeof sym);
        code[n_code] = (CudaKernelCode){.symbol = xstrdup(sym), .source = src};
        map[n_code++] = q;
    }
    return compile_filter(out, n_list, code, map, n_code, arch, err, errlen);
}

/* Step 1 for the router (instruction i, its first matrix w1): the fused kernel with 64 .. 1024
 * threads a token (where its vectors fit a block), the unfused path's linears on FMA tiles
 * {16, 32, 64} x {16, 32, 64} x {16, 32} (w1's shape checked); returns how many were listed. */
static int route_candidates(const IrInstr *i, const IrValue *w1, const char *arch, GpuCand *out, char *err,
                            size_t errlen)
{
    static const int threads[] = {64, 128, 256, 512, 1024}, tiles[] = {16, 32, 64}, kcs[] = {16, 32};
    CudaKernelCode code[MAX_CANDS];
    int map[MAX_CANDS], n = 0, n_code = 0;
    CgCudaRouteFused rf;
    bool fused = cuda_route_fused_desc(i, false, &rf);
    for (size_t a = 0; a < MOE_ARRAY_LEN(threads) + MOE_ARRAY_LEN(tiles) * MOE_ARRAY_LEN(tiles) * MOE_ARRAY_LEN(kcs); a++) {
        GpuCand *c = &out[n++];
        char why[512], sym[800];
        char *src;
        if (a < MOE_ARRAY_LEN(threads)) {
            rf.threads = threads[a];
            *c = (GpuCand){.c = {.tile_m = 1, .tile_n = rf.threads}, .ok = true, .threads = rf.threads};
            src = fused ? cg_cuda_route_fused_source(&rf, why, sizeof why) : NULL;
            if (!fused) snprintf(why, sizeof why, ": the router's weights are of mixed dtypes (no fused kernel)");
            cg_cuda_route_fused_symbol(&rf, sym, sizeof sym);
        } else {
            size_t q = a - MOE_ARRAY_LEN(threads);
            CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_LINEAR, CG_CUDA_PATH_FMA, w1->type.dtype, 1, 1,
                                                w1->type.dims[0], w1->type.dims[1]);
            g.bm = tiles[q / 6], g.bn = tiles[q / 2 % 3], g.bk = kcs[q % 2];
            *c = (GpuCand){.c = {.tile_m = g.bm, .tile_n = g.bn, .kc = g.bk}, .ok = true, .threads = 256};
            src = cg_cuda_gemm_source(&g, why, sizeof why);
            cg_cuda_gemm_symbol(&g, sym, sizeof sym);
        }
        if (!src) {
            const char *r = strstr(why, ": ");
            snprintf(c->why, sizeof c->why, "%s", r ? r + 2 : why);
            c->ok = false;
            continue;
        }
        code[n_code] = (CudaKernelCode){.symbol = xstrdup(sym), .source = src};
        map[n_code++] = n - 1;
    }
    return compile_filter(out, n, code, map, n_code, arch, err, errlen);
}

static void print_candidates(const char *what, const char *noun, const GpuCand *c, int n)
{
    int good = 0;
    for (int k = 0; k < n; k++) good += c[k].ok;
    printf("%s: %d of %d %s compile for the target without spills\n", what, good, n, noun);
    for (int k = 0; k < n; k++) {
        char name[64];
        tune_config_format(&c[k].c, name, sizeof name);
        if (c[k].ok)
            printf("  %-20s ok         %3d registers x %3d threads, %6d B shared%s\n", name, c[k].regs, c[k].threads,
                   c[k].smem, c[k].pair ? " (two blocks an SM)" : "");
        else printf("  %-20s discarded  %s\n", name, c[k].why);
    }
    fflush(stdout);
}

/* ---- step 2: on the GPU ---------------------------------------------------------------------------- */

typedef struct {
    const ModelSpec *s;
    IrModule *m;
    WeightSet *w;
    int step[2];               /* indices of the grouped up and down instructions */
    double deadline;
    double share_end, weight_left; /* the end of the current kernel's share of the time left, and the
                                      weight of the kernels still to come (see take_share) */
    int warmup, reps;          /* runs a measurement makes: 3 and 9 on a GPU, 0 and 1 on the CUDA
                                  emulator (its timings say nothing of a GPU's: the flow is what runs) */
    const char *arch;
    const char *garch;         /* the GPU's (the emulator's on it): its rule is what runs there */
    int device;                /* its ordinal (--device cuda:N) */
    int att_step;              /* the first attention instruction, and its kernels' descriptor */
    CgOpDesc att;
    GpuCand att_cand[MAX_CANDS];
    int n_att;
    int route_step;            /* the MoE layer's router, its first matrix, its forms */
    const IrValue *route_w1;
    GpuCand route_cand[MAX_CANDS];
    int n_route;
} GpuLayer;

/* The next kernel to tune, of weight w, gets its share of the time left: w / (the weight of it and
 * those after it). What one leaves unused goes to the rest, so a tight budget still measures the
 * rule and the first candidates of every kernel at every bucket rather than all of the first buckets
 * and none of the last (attention's and the router's above all, tuned after the GEMMs); with none
 * left, its rule alone. */
static void take_share(GpuLayer *L, double w)
{
    double now = now_s();
    L->share_end = now + (L->deadline - now) * w / L->weight_left;
    L->weight_left -= w;
}

/* Runs of a step timed in one call (bench_cuda_time_steps' in_graph): up to CG_CUDA_GEMV_MAX_T tokens
 * a kernel takes microseconds, of the order of a graph's launch, which 10 runs then share (each run's
 * results are taken before the timing). */
static int in_graph(int64_t T) { return T <= CG_CUDA_GEMV_MAX_T ? 10 : 1; }

/* One model with configuration c for grouped GEMM `kind` (zeros: the rule's; a GEMV form when gemv):
 * its logits for ids (copied to *logits) and the median ms of that GEMM, and its FFN picks. A decode
 * MLP (c->mlp; DOWN at T = 1): the model with that kernel's shape, the time of both GEMMs' steps. */
static bool run_config(GpuLayer *L, const TuneConfig *c, bool gemv, int kind, const int32_t *ids, const int32_t *pos,
                       int64_t T, float **logits, double *ms, int64_t *picks, RtError *err)
{
    CudaOptions o = {.compile = cuda_nvrtc_cubins, .no_async_gemm = cuda_env_off("MOEPPC_CUDA_ASYNC_GEMM"),
                     .device = L->device};
    static const TuneConfig rule = {0};
    if (c->mlp) o.mlp[0] = c->tile_m, o.mlp[1] = c->tile_n, c = &rule; /* (the GEMMs' rule otherwise) */
    else if (gemv) o.gemv[kind][0] = c->tile_m, o.gemv[kind][1] = c->tile_n, o.gemv[kind][2] = c->unroll;
    else o.tile[kind][0] = c->tile_m, o.tile[kind][1] = c->tile_n, o.tile[kind][2] = (int)c->kc;
    o.stages[kind] = c->stages;
    o.split_down = kind == 1 ? c->split : 0;
    o.force_path = c->tile_m ? (gemv ? 2 : 1) : 0; /* a candidate runs on its path at any T (the other GEMM too) */
    o.wgmma = c->wgmma; /* (the other GEMM too: its logits then check wgmma twice) */
    o.tma = c->tma;
    o.no_tma = c->tile_m && !c->tma; /* a candidate without the TMA: not the rule's TMA form either */
    o.ws = c->ws;
    CudaModel *cm = cuda_model_new(L->m, L->w, L->s->max_positions, &o, err);
    if (!cm) return false;
    int64_t cols = 0;
    moe_dtype dt;
    char name[64];
    snprintf(name, sizeof name, "route.%lld.ids", (long long)(L->s->n_layers - 1));
    bool ok = cuda_model_run(cm, ids, pos, T, err);
    const float *lg = ok ? cuda_model_output(cm, "logits", &cols, &dt, err) : NULL;
    if (lg) *logits = memcpy(xmalloc((size_t)(T * cols) * sizeof **logits), lg, (size_t)(T * cols) * sizeof **logits);
    const int32_t *rid = lg ? cuda_model_output(cm, name, &cols, &dt, err) : NULL;
    int first = o.mlp[0] ? L->step[0] : L->step[kind]; /* (the MLP: from UP's step) */
    ok = rid && bench_cuda_time_steps(cm, first, L->step[kind] + 1, in_graph(T), ids, pos, NULL, T, L->warmup, L->reps,
                                      ms, err);
    for (int64_t j = 0; ok && j < T * cols; j++) *picks += rid[j] >= 0 && rid[j] < L->s->n_ffn;
    cuda_model_free(cm);
    return ok;
}

/* The rule's configuration of a grouped GEMM at T on a path (gemv, else the tiles), as the executor
 * runs it: the cp.async form's tile (on an sm_90 GPU its wgmma form with W by the TMA: cuda_tma_rule),
 * or the GEMV (its decode form at T = 1). */
static TuneConfig path_rule(const GpuLayer *L, const TuneEntry *e, int kind, int64_t T, bool gemv)
{
    CgCudaGemm d = cg_cuda_gemm_default(kind == 0 ? CG_CUDA_GEMM_UP : CG_CUDA_GEMM_DOWN,
                                        gemv ? CG_CUDA_PATH_GEMV : CG_CUDA_PATH_MMA, e->dtype, e->groups, L->s->top_k,
                                        kind == 0 ? e->n / 2 : e->n, e->k);
    CudaOptions env = {0};
    cuda_options_env(&env);
    bool tma = !gemv && !env.no_async_gemm && cuda_tma_rule(L->garch, L->garch, &env);
    if (!gemv && !env.no_async_gemm)
        d = !tma               ? cg_cuda_gemm_async(&d)
            : env.no_tile_pair ? cg_cuda_gemm_wgmma(&d)
                               : cg_cuda_gemm_tma(&d, cg_cuda_gemm_tma_large(&d, T));
    if (gemv && T == 1 && !env.no_decode_gemv) d = cg_cuda_gemm_decode(&d);
    int ring = cg_cuda_gemm_wgmma(&d).stages; /* (a configuration's stages: 0 for its form's default) */
    return gemv ? (TuneConfig){.tile_m = d.bm, .tile_n = d.bn, .unroll = d.bk}
                : (TuneConfig){.tile_m = d.bm, .tile_n = d.bn, .kc = d.bk, .wgmma = tma, .tma = tma,
                               .stages = tma && d.stages != ring ? d.stages : 0, .ws = tma && d.ws && !env.no_ws};
}

/* The rule's configuration at T: the GEMV up to CG_CUDA_GEMV_MAX_T tokens, the tiles above. */
static TuneConfig rule_config(const GpuLayer *L, const TuneEntry *e, int kind, int64_t T)
{
    return path_rule(L, e, kind, T, T <= CG_CUDA_GEMV_MAX_T);
}

/* A GEMV form rather than a tile (as the executor tells them apart). */
static bool config_gemv(const TuneConfig *c) { return c->unroll > 0 && !c->kc && !c->stages && !c->wgmma; }

/* Does configuration c of grouped GEMM `kind` (entry e's shape; a GEMV form when gemv) with its
 * stages and split compile and fit the target's shared memory, and has each split of k a tile or
 * 8-element chunk of its own? */
static bool config_fits(const GpuLayer *L, const TuneEntry *e, int kind, bool gemv, const TuneConfig *c)
{
    CgCudaGemm g = cg_cuda_gemm_default(kind == 0 ? CG_CUDA_GEMM_UP : CG_CUDA_GEMM_DOWN,
                                        gemv ? CG_CUDA_PATH_GEMV : CG_CUDA_PATH_MMA, e->dtype, e->groups, L->s->top_k,
                                        kind == 0 ? e->n / 2 : e->n, e->k);
    if (gemv) g.bm = c->tile_m, g.bn = c->tile_n, g.bk = c->unroll;
    else {
        g = c->wgmma ? cg_cuda_gemm_wgmma(&g) : cg_cuda_gemm_async(&g);
        g.bm = c->tile_m, g.bn = c->tile_n, g.bk = (int)c->kc, g.stages = c->stages ? c->stages : g.stages;
        g.tma = c->tma, g.ws = c->ws;
        cg_cuda_gemm_persist(&g, 0, false);
    }
    g.split = c->split;
    char err[256];
    char *src = cg_cuda_gemm_source(&g, err, sizeof err);
    free(src);
    return src && cg_cuda_gemm_smem(&g) <= (size_t)arch_smem_kb(L->arch) * 1024 &&
           c->split * (gemv ? 8 : g.bk) <= e->k;
}

/* What split-K starts from: the fastest configuration measured so far whose k has room for two
 * splits (the winner, unless its tile takes all of k at once; then the next that does). */
static TuneConfig split_base(const GpuLayer *L, const TuneEntry *e, int kind)
{
    TuneConfig base = e->best;
    double best = -1;
    for (int i = 0; i < e->n_measured; i++) {
        TuneConfig c = e->measured[i].c;
        c.split = 2;
        if (e->measured[i].gflops > best && !c.mlp && config_fits(L, e, kind, config_gemv(&c), &c))
            best = e->measured[i].gflops, base = e->measured[i].c;
    }
    return base;
}

/* The order in which tiles are measured, so that a budget that runs out has tried each form's likeliest
 * ones (on an H200 the first budgets ran out inside the mma.sync tiles, before any wgmma one): round
 * robin over the forms (wgmma with W by the TMA, the same warp-specialised, wgmma, mma.sync), within
 * each deeper k tiles first, then larger tiles first at T >= 512 and smaller first below (where an
 * expert has few rows). Candidates of a kind in c[n], reordered in place. */
static long tile_rank(const TuneConfig *c, int64_t T)
{
    return -1000000L * c->kc + (T >= 512 ? -1L : 1L) * c->tile_m * c->tile_n;
}

static void order_tiles(TuneConfig *c, int n, int64_t T)
{
    TuneConfig by[4][MAX_CANDS];
    int nb[4] = {0};
    for (int q = 0; q < n; q++) {
        int f = c[q].ws ? 1 : c[q].tma ? 0 : c[q].wgmma ? 2 : 3, at = nb[f]++;
        for (; at > 0 && tile_rank(&by[f][at - 1], T) > tile_rank(&c[q], T); at--) /* (a stable insertion sort) */
            by[f][at] = by[f][at - 1];
        by[f][at] = c[q];
    }
    int m = 0;
    for (int r = 0; m < n; r++)
        for (int f = 0; f < 4; f++)
            if (r < nb[f]) c[m++] = by[f][r];
}

/* The decode MLP's shapes to measure (RxW/mlp: rows of h a block {16, 32, 64} x warps {4, 8, 16}, the
 * rule's first) where the layer's grouped GEMMs can run as that kernel (16-bit weights, d and i
 * multiples of 8), each one its generator takes and whose W_down slice the target's shared memory
 * holds; their count. */
static int mlp_candidates(const GpuLayer *L, TuneConfig *out)
{
    const IrInstr *dn = L->m->first;
    for (int k = 0; k < L->step[1]; k++) dn = dn->next;
    const IrValue *wd = dn->in[5];
    CgCudaMlp m = cg_cuda_mlp_rule(wd->type.dtype, ir_attr_int(dn, "experts"), L->s->top_k, wd->type.dims[0],
                                   wd->type.dims[1]);
    if (!m.rows) return 0;
    static const int rows[] = {16, 32, 64}, warps[] = {4, 8, 16};
    int n = 0;
    out[n++] = (TuneConfig){.tile_m = m.rows, .tile_n = m.warps, .mlp = 1};
    for (size_t r = 0; r < MOE_ARRAY_LEN(rows); r++)
        for (size_t w = 0; w < MOE_ARRAY_LEN(warps); w++) {
            CgCudaMlp c = m;
            c.rows = rows[r], c.warps = warps[w];
            char err[256];
            char *src = cg_cuda_mlp_source(&c, err, sizeof err);
            free(src);
            bool fits = src && cg_cuda_mlp_smem(&c) <= (size_t)arch_smem_kb(L->arch) * 1024;
            if (fits && (c.rows != m.rows || c.warps != m.warps)) /* (the rule's is first) */
                out[n++] = (TuneConfig){.tile_m = c.rows, .tile_n = c.warps, .mlp = 1};
        }
    return n;
}

/* The entries of both grouped GEMMs at T: the rule's configuration, then every candidate (MMA tiles
 * above CG_CUDA_GEMV_MAX_T; at or below, the GEMV forms with no more slots per pass than T; at T = 1
 * the down-projection's decode MLP shapes first: the pair's time less the up-projection's best is what
 * the kernel costs the down-projection, which its GFLOP/s count by). */
static bool tune_bucket(GpuLayer *L, const GpuCand cand[2][2][MAX_CANDS], const int n_cand[2][2], int64_t T,
                        TuneDb *db, RtError *err)
{
    int form = T <= CG_CUDA_GEMV_MAX_T;
    int32_t *ids = xmalloc((size_t)T * sizeof *ids), *pos = xmalloc((size_t)T * sizeof *pos);
    for (int64_t t = 0; t < T; t++) ids[t] = (int32_t)((t * 2654435761u) % (uint64_t)L->s->vocab), pos[t] = (int32_t)t;
    bool ok = true;
    double up_ms = -1; /* the up-projection's best at T */
    for (int kind = 0; kind < 2 && ok; kind++) {
        take_share(L, GEMM_WEIGHT);
        const IrInstr *gi = L->m->first;
        for (int k = 0; k < L->step[kind]; k++) gi = gi->next;
        const IrValue *w = gi->in[kind == 0 ? 3 : 5];
        TuneEntry e = {.dtype = w->type.dtype, .n = w->type.dims[0], .k = w->type.dims[1],
                       .groups = ir_attr_int(gi, "experts"), .tokens = T};
        snprintf(e.op, sizeof e.op, "%s", kind == 0 ? "grouped_up" : "grouped_down");
        TuneConfig none = {0};
        float *ref = NULL;
        double ms;
        int64_t picks = 0;
        ok = run_config(L, &none, false, kind, ids, pos, T, &ref, &ms, &picks, err);
        double flop = 2.0 * (double)picks * (double)e.n * (double)e.k, best = -1;
        TuneConfig rc = rule_config(L, &e, kind, T);
        if (ok) e.measured[e.n_measured++] = (TuneMeasure){rc, 1e-9 * flop / (ms * 1e-3)}, e.best = rc, best = ms;
        /* the candidates and the other path's rule (where the GEMV gives way to the tiles is measured),
         * then the winning tile with deeper rings (one and two more k tiles than its form's 3, or one
         * more than wgmma's 5), then (down) the winner with k split 2, 4 and 8 ways (or, when its tile
         * takes all of k at once, the fastest configuration that can split) */
        TuneConfig todo[MAX_CANDS + 16];
        int n_todo = kind == 1 && T == 1 && up_ms > 0 ? mlp_candidates(L, todo) : 0;
        for (int q = 0; q < n_cand[form][kind]; q++) {
            const GpuCand *c = &cand[form][kind][q];
            if (c->ok && !tune_config_equal(&c->c, &rc) && !(form && c->c.tile_m > T)) todo[n_todo++] = c->c;
        }
        if (!form) order_tiles(todo, n_todo, T); /* (T > 16: no MLP among them) */
        todo[n_todo++] = path_rule(L, &e, kind, T, !form);
        int n_deeper = !cuda_env_off("MOEPPC_CUDA_ASYNC_GEMM") ? 2 : 0, n_split = kind == 1 ? 3 : 0;
        for (int q = 0; ok && q < n_todo + n_deeper + n_split && e.n_measured < TUNE_MAX_MEASURED && now_s() < L->share_end;
             q++) {
            TuneConfig c = q < n_todo ? todo[q] : e.best;
            int x = q - n_todo;
            if (x >= 0 && x < n_deeper && (config_gemv(&c) || c.mlp)) continue; /* (rings are the tiles') */
            if (x >= 0 && x < n_deeper) c.stages = (c.wgmma ? 6 : 4) + x; /* a deeper ring */
            else if (x >= 0) c = split_base(L, &e, kind), c.split = 2 << (x - n_deeper); /* split-K */
            if (x >= 0 && !config_fits(L, &e, kind, config_gemv(&c), &c)) continue;
            float *lg = NULL;
            int64_t p = 0;
            if (!run_config(L, &c, config_gemv(&c), kind, ids, pos, T, &lg, &ms, &p, err)) {
                ok = false;
                break;
            }
            double re = tune_rel_err(lg, ref, (size_t)(T * L->s->vocab));
            free(lg);
            char name[64];
            tune_config_format(&c, name, sizeof name);
            if (re > 2e-2) {
                fprintf(stderr, "moeppc tune: warning: %s %s: logits differ from the rule's by %.3g; discarded\n",
                        e.op, name, re);
                continue;
            }
            if (c.mlp) ms = fmax(ms - up_ms, 0.05 * ms); /* (what it costs beyond the up-projection's best) */
            e.measured[e.n_measured++] = (TuneMeasure){c, 1e-9 * flop / (ms * 1e-3)};
            if (ms < best) best = ms, e.best = c;
            fprintf(stderr, "\r[tune] %-12s T=%-5lld %-14s %8.3f ms (best %.3f ms) ", e.op, (long long)T, name, ms, best);
        }
        free(ref);
        if (kind == 0) up_ms = best;
        if (ok && e.n_measured) tune_db_add(db, &e);
    }
    fputc('\n', stderr);
    free(ids);
    free(pos);
    return ok;
}

/* The kernel a form tunes: attention's (CgCudaAttnForm) or the router's (CudaOptions.route). */
typedef enum { FORM_ATTENTION, FORM_ROUTE } FormKind;

/* The model with form c (NULL: the rule's) of `kind`, for T tokens at the end of a context of P
 * positions (ids, pos hold the whole context: its first P - T positions are run first, filling the
 * KV cache): the logits for the T (copied to *logits) and the median ms of the form's instruction. */
static bool run_form(GpuLayer *L, FormKind kind, const TuneConfig *c, const int32_t *ids, const int32_t *pos,
                     int64_t P, int64_t T, float **logits, double *ms, RtError *err)
{
    /* (no_fuse: the forms alone; the rule's router would do the combine too) */
    CudaOptions o = {.compile = cuda_nvrtc_cubins, .no_async_gemm = cuda_env_off("MOEPPC_CUDA_ASYNC_GEMM"),
                     .no_fuse = true, .device = L->device};
    if (c && kind == FORM_ATTENTION) o.attn = cuda_attn_form(c);
    if (c && kind == FORM_ROUTE) o.route[0] = c->tile_m, o.route[1] = c->tile_n, o.route[2] = (int)c->kc;
    int step = kind == FORM_ATTENTION ? L->att_step : L->route_step;
    CudaModel *cm = cuda_model_new(L->m, L->w, L->s->max_positions, &o, err);
    if (!cm) return false;
    int64_t cols = 0;
    moe_dtype dt;
    bool ok = (P == T || cuda_model_run(cm, ids, pos, P - T, err)) && cuda_model_run(cm, ids + P - T, pos + P - T, T, err);
    const float *lg = ok ? cuda_model_output(cm, "logits", &cols, &dt, err) : NULL;
    if (lg) *logits = memcpy(xmalloc((size_t)(T * cols) * sizeof **logits), lg, (size_t)(T * cols) * sizeof **logits);
    ok = lg && bench_cuda_time_steps(cm, step, step + 1, in_graph(T), ids + P - T, pos + P - T, NULL, T, L->warmup,
                                     L->reps, ms, err);
    cuda_model_free(cm);
    return ok;
}

/* Entry e (its op, shape and tokens T set) of a form's kernel: the rule's form rc, then every
 * candidate that compiled and that `usable` takes at T, each run as run_form does over a context of
 * P positions, its logits checked against the rule's (bf16 tolerance, else discarded with a warning)
 * and timed; GFLOP/s from flop. The entry goes to db when something was measured. */
static bool tune_forms(GpuLayer *L, FormKind kind, TuneEntry *e, const TuneConfig *rc, const GpuCand *cand, int n_cand,
                       bool (*usable)(const TuneConfig *c, int64_t T), int64_t P, double flop,
                       TuneDb *db, RtError *err)
{
    int64_t T = e->tokens;
    int32_t *ids = xmalloc((size_t)P * sizeof *ids), *pos = xmalloc((size_t)P * sizeof *pos);
    for (int64_t t = 0; t < P; t++) ids[t] = (int32_t)((t * 2654435761u) % (uint64_t)L->s->vocab), pos[t] = (int32_t)t;
    float *ref = NULL;
    double ms, best = 0;
    take_share(L, 1);
    bool ok = run_form(L, kind, NULL, ids, pos, P, T, &ref, &ms, err);
    if (ok) e->measured[e->n_measured++] = (TuneMeasure){*rc, 1e-9 * flop / (ms * 1e-3)}, e->best = *rc, best = ms;
    for (int q = 0; ok && q < n_cand && e->n_measured < TUNE_MAX_MEASURED && now_s() < L->share_end; q++) {
        const TuneConfig *c = &cand[q].c;
        if (!cand[q].ok || tune_config_equal(c, rc) || !usable(c, T)) continue;
        float *lg = NULL;
        if (!(ok = run_form(L, kind, c, ids, pos, P, T, &lg, &ms, err))) break;
        char name[64];
        tune_config_format(c, name, sizeof name);
        double re = tune_rel_err(lg, ref, (size_t)(T * L->s->vocab));
        free(lg);
        if (re > 2e-2) {
            fprintf(stderr, "moeppc tune: warning: %s %s: logits differ from the rule's by %.3g; discarded\n", e->op, name, re);
            continue;
        }
        e->measured[e->n_measured++] = (TuneMeasure){*c, 1e-9 * flop / (ms * 1e-3)};
        if (ms < best) best = ms, e->best = *c;
        fprintf(stderr, "\r[tune] %-12s T=%-5lld %-14s %8.3f ms (best %.3f ms) ", e->op, (long long)T, name, ms, best);
    }
    fputc('\n', stderr);
    if (ok && e->n_measured) tune_db_add(db, e);
    free(ref), free(ids), free(pos);
    return ok;
}

/* At T = 1 a block of one query: the per-query kernel's forms only; from CG_CUDA_ATTN_TILED_MIN_T
 * tokens on, that kernel's key splits have no room (run unsplit: the same as its form without). */
static bool attention_usable(const TuneConfig *c, int64_t T)
{
    if (c->tile_m == 1 && c->kv_block > 1) return T < CG_CUDA_ATTN_TILED_MIN_T;
    return T > 1 || c->tile_m == 1;
}

/* Attention's entry at T: the rule's form, then every candidate, for T queries at the end of a
 * context of 512 positions (as the CPU tuner; fewer when the model takes fewer, more when T is more). */
static bool tune_attention(GpuLayer *L, int64_t T, TuneDb *db, RtError *err)
{
    int64_t P = L->s->max_positions < 512 ? L->s->max_positions : 512, keys = 0;
    if (P < T) P = T;
    for (int64_t t = P - T; t < P; t++) keys += t + 1;
    double flop = 4.0 * (double)keys * (double)L->att.heads * (double)L->att.head_dim; /* q.k and p.v */
    TuneEntry e = {.dtype = L->att.wdtype, .n = L->att.heads, .k = L->att.head_dim, .groups = L->att.kv_heads, .tokens = T};
    snprintf(e.op, sizeof e.op, "attention");
    CgCudaAttnForm rf = cg_cuda_attention_rule(&L->att, T);
    TuneConfig rc = cuda_attn_config(&rf);
    return tune_forms(L, FORM_ATTENTION, &e, &rc, L->att_cand, L->n_att, attention_usable, P, flop, db, err);
}

/* At T <= 16 the unfused router's linears run the GEMV: of its tiles only the rule's stands for all. */
static bool route_usable(const TuneConfig *c, int64_t T)
{
    CgCudaGemm d = cg_cuda_gemm_default(CG_CUDA_GEMM_LINEAR, CG_CUDA_PATH_FMA, DT_F32, 1, 1, 64, 64);
    return T > CG_CUDA_GEMV_MAX_T || c->tile_m == 1 || (c->tile_m == d.bm && c->tile_n == d.bn && c->kc == d.bk);
}

/* The router's entry at T (T tokens at positions 0..T-1, as the GEMMs'): the rule's form (fused up
 * to 64 tokens, the unfused path on the FMA path's default tile above), then every candidate. */
static bool tune_route(GpuLayer *L, int64_t T, TuneDb *db, RtError *err)
{
    const IrValue *w = L->route_w1;
    TuneEntry e = {.dtype = w->type.dtype, .n = w->type.dims[0], .k = w->type.dims[1], .groups = 1, .tokens = T};
    snprintf(e.op, sizeof e.op, "route");
    double flop = 2.0 * (double)T * (double)e.n * (double)e.k; /* its first matrix's, as the CPU counts */
    bool fused_rule = L->route_cand[0].ok && T <= 64;           /* (the executor's FUSED_ROUTE_MAX_T) */
    CgCudaGemm d = cg_cuda_gemm_default(CG_CUDA_GEMM_LINEAR, CG_CUDA_PATH_FMA, e.dtype, 1, 1, e.n, e.k);
    TuneConfig rc = fused_rule ? (TuneConfig){.tile_m = 1, .tile_n = 256} : (TuneConfig){.tile_m = d.bm, .tile_n = d.bn, .kc = d.bk};
    return tune_forms(L, FORM_ROUTE, &e, &rc, L->route_cand, L->n_route, route_usable, T, flop, db, err);
}

/* The layer the tuner runs: one MoE layer of the spec (and the dense ones before it), as bench --device
 * cuda, with the instructions of its grouped GEMMs; false (said) for a model the GPU tuner cannot tune. */
static bool layer_init(GpuLayer *L, ModelSpec *s, const TuneArgs *a, const char *arch)
{
    if (!load_spec(a->spec, s)) return false;
    if (a->dtype_set) s->dtype = a->dtype;
    if (s->dtype != DT_BF16 && s->dtype != DT_F16) {
        fprintf(stderr, "moeppc tune: error: --target %s tunes the tensor-core path of bf16/f16 models; %s is %s (its "
                        "f32 FMA path has no tile option)\n", arch, a->spec, dtype_name(s->dtype));
        return false;
    }
    s->n_layers = s->moe_every;
    s->vocab = 256;
    for (int q = 0; q < a->n_tokens; q++)
        if (s->max_positions < a->tokens[q]) s->max_positions = a->tokens[q];
    *L = (GpuLayer){.s = s, .m = ir_lower_spec(s), .deadline = now_s() + a->budget, .arch = arch};
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true};
    Diag d = {stderr, a->spec, 0};
    MOE_ASSERT(passes_run(L->m, &po, &d));
    int route = bench_instr_index(L->m, IR_OP_MOE_ROUTE, -1);
    L->step[0] = bench_instr_index(L->m, IR_OP_MOE_GROUPED_UP, route);
    L->step[1] = bench_instr_index(L->m, IR_OP_MOE_GROUPED_DOWN, route);
    L->route_step = route;
    const IrInstr *ri = L->m->first;
    for (int k = 0; route >= 0 && k < route; k++) ri = ri->next;
    L->route_w1 = route >= 0 ? ri->in[1] : NULL;
    L->att_step = bench_instr_index(L->m, IR_OP_ATTENTION, -1);
    const IrInstr *ai = L->m->first;
    for (int k = 0; k < L->att_step; k++) ai = ai->next;
    if (L->att_step < 0 || !cuda_attention_desc(ai, &L->att)) L->att_step = -1; /* (no attention: nothing to tune) */
    if (L->step[0] >= 0 && L->step[1] >= 0) return true;
    fprintf(stderr, "moeppc tune: error: %s has no grouped expert GEMMs to tune\n", a->spec);
    return false;
}

/* Step 1 for both grouped GEMMs, MMA tiles (form 0) and GEMV forms (1), and attention's forms, with
 * the tables printed; false (said) when NVRTC fails. */
static bool layer_candidates(GpuLayer *L, const char *arch, GpuCand cand[2][2][MAX_CANDS], int n_cand[2][2])
{
    for (int q = 0; q < 4; q++) {
        int form = q / 2, kind = q % 2;
        const IrInstr *gi = L->m->first;
        for (int k = 0; k < L->step[kind]; k++) gi = gi->next;
        const IrValue *w = gi->in[kind == 0 ? 3 : 5];
        int64_t E = ir_attr_int(gi, "experts");
        CgCudaGemm base = cg_cuda_gemm_default(kind == 0 ? CG_CUDA_GEMM_UP : CG_CUDA_GEMM_DOWN,
                                               form ? CG_CUDA_PATH_GEMV : CG_CUDA_PATH_MMA, w->type.dtype, E, L->s->top_k,
                                               kind == 0 ? w->type.dims[0] / 2 : w->type.dims[0], w->type.dims[1]);
        if (!form && !cuda_env_off("MOEPPC_CUDA_ASYNC_GEMM")) base = cg_cuda_gemm_async(&base); /* as the executor runs them */
        char err[1024], what[160];
        n_cand[form][kind] = gpu_candidates(&base, form, arch, cand[form][kind], err, sizeof err);
        if (n_cand[form][kind] < 0) {
            fprintf(stderr, "moeppc tune: error: NVRTC: %s\n", err);
            return false;
        }
        snprintf(what, sizeof what, "%s %lldx%lld, %lld experts%s (%s, %s)", kind == 0 ? "grouped_up" : "grouped_down",
                 (long long)w->type.dims[0], (long long)w->type.dims[1], (long long)E, form ? ", T <= 16" : "", arch,
                 cg_cuda_nvrtc_version_text());
        print_candidates(what, form ? "GEMV forms (slots x warps / u k unroll)" : "tiles", cand[form][kind],
                         n_cand[form][kind]);
    }
    char err[1024], what[160];
    const IrInstr *ri = L->m->first;
    for (int k = 0; k < L->route_step; k++) ri = ri->next;
    if ((L->n_route = route_candidates(ri, L->route_w1, arch, L->route_cand, err, sizeof err)) < 0) {
        fprintf(stderr, "moeppc tune: error: NVRTC: %s\n", err);
        return false;
    }
    snprintf(what, sizeof what, "route %lldx%lld (%s, %s)", (long long)L->route_w1->type.dims[0],
             (long long)L->route_w1->type.dims[1], arch, cg_cuda_nvrtc_version_text());
    print_candidates(what, "forms (1xN: fused, N threads a token; MxN/kcK: the linears' FMA tile)", L->route_cand, L->n_route);
    if (L->att_step < 0) return true;
    if ((L->n_att = attn_candidates(&L->att, arch, L->att_cand, err, sizeof err)) < 0) {
        fprintf(stderr, "moeppc tune: error: NVRTC: %s\n", err);
        return false;
    }
    snprintf(what, sizeof what, "attention %lld heads x %lld, %lld kv heads (%s, %s)", (long long)L->att.heads,
             (long long)L->att.head_dim, (long long)L->att.kv_heads, arch, cg_cuda_nvrtc_version_text());
    print_candidates(what, "forms (queries x threads / kv key tile; 1xP: a block per query)", L->att_cand, L->n_att);
    return true;
}

/* Device 0's name and architecture (garch, 16 bytes), if it is a GPU of architecture arch; false
 * (said) otherwise. The CUDA emulator stands for any architecture (its kernels are compiled for it):
 * the whole search runs, and the database is the emulator's (isa emu: no GPU takes it), its timings
 * the CPU's (a warning says so). */
static bool gpu_of_arch(const char *arch, int device, char *gpu, size_t n, char *garch)
{
    char err[512];
    garch[0] = 0;
    CgCudaDriver *drv = cg_cuda_driver_open(device, err, sizeof err);
    if (drv) cg_cuda_device_name(drv, gpu, n), cg_cuda_device_arch(drv, garch, 16);
    cg_cuda_driver_close(drv);
    if (drv && strcmp(garch, CG_CUDA_EMU_ARCH) == 0) {
        fprintf(stderr, "moeppc tune: warning: measuring on the CUDA emulator (%s): its timings are the CPU's and "
                        "say nothing of a GPU's; the database is the emulator's (isa %s)\n", gpu, garch);
        return true;
    }
    if (drv && strcmp(garch, arch) == 0) return true;
    if (drv) snprintf(err, sizeof err, "this GPU, %s, is %s", gpu, garch);
    fprintf(stderr, "moeppc tune: error: measuring the tiles needs a GPU of architecture %s (%s); nothing written\n",
            arch, err);
    return false;
}

int tune_cuda(const TuneArgs *a)
{
    const char *arch = pass_target_name(a->target);
    double t0 = now_s();
    ModelSpec s;
    GpuLayer L = {0};
    static GpuCand cand[2][2][MAX_CANDS];
    int n_cand[2][2] = {{0}};
    char gpu[128] = "", garch[16] = "";
    RtError err = {{0}};
    bool ok = layer_init(&L, &s, a, arch) && layer_candidates(&L, arch, cand, n_cand) &&
              gpu_of_arch(arch, a->device, gpu, sizeof gpu, garch);
    L.garch = garch, L.device = a->device;
    if (ok && !weights_random(&s, 1, &L.w, &err)) fprintf(stderr, "moeppc tune: error: %s\n", err.msg), ok = false;
    bool emu = strcmp(garch, CG_CUDA_EMU_ARCH) == 0;
    if (ok) /* (step 1 counts against the budget: it is time spent) */
        printf("step 1 took %.1f s; %.1f s of the budget are left to measure%s\n", now_s() - t0,
               fmax(0, L.deadline - now_s()), now_s() < L.deadline ? "" : " (only each kernel's rule)");
    L.warmup = emu ? 0 : 3, L.reps = emu ? 1 : 9;
    /* the budget's shares: a grouped GEMM weighs GEMM_WEIGHT, attention and the router 1 each */
    L.weight_left = a->n_tokens * (2 * GEMM_WEIGHT + (L.att_step >= 0) + 1);
    TuneDb db = {0};
    tune_gpu_target(&db.target, gpu, garch, cg_cuda_nvrtc_version_text());
    /* every kernel at every bucket has its turn, its rule measured however little is left (one run of
     * the layer each past the budget at most), so that the database has an entry for each */
    for (int q = 0; q < a->n_tokens && ok; q++) {
        ok = tune_bucket(&L, (const GpuCand(*)[2][MAX_CANDS])cand, (const int(*)[2])n_cand, a->tokens[q], &db, &err);
        if (!ok) fprintf(stderr, "moeppc tune: error: CUDA backend: %s\n", err.msg);
    }
    /* attention and the router after every GEMM bucket, each with its share of what is left */
    for (int q = 0; q < a->n_tokens && ok && L.att_step >= 0; q++) {
        ok = tune_attention(&L, a->tokens[q], &db, &err);
        if (!ok) fprintf(stderr, "moeppc tune: error: CUDA backend: %s\n", err.msg);
    }
    for (int q = 0; q < a->n_tokens && ok; q++) { /* then the router */
        ok = tune_route(&L, a->tokens[q], &db, &err);
        if (!ok) fprintf(stderr, "moeppc tune: error: CUDA backend: %s\n", err.msg);
    }
    char why[512];
    if (ok && !tune_db_save(&db, a->out, why, sizeof why)) fprintf(stderr, "moeppc tune: error: %s\n", why), ok = false;
    if (ok) printf("wrote %s: %d entries for %s (%s) in %.1f s\n", a->out, db.n, gpu, garch, now_s() - t0);
    tune_db_free(&db);
    if (L.w) weights_close(L.w);
    ir_module_free(L.m);
    return ok ? 0 : 1;
}
#else
int tune_cuda(const TuneArgs *a)
{
    fprintf(stderr, "moeppc tune: error: --target %s: this moeppc was built without the CUDA toolkit's NVRTC\n",
            pass_target_name(a->target));
    return 1;
}
#endif
