/* cuda_exec.h — the CUDA executor: runs an optimised, planned IR module on an NVIDIA GPU with the
 * kernels of codegen/cuda.
 *
 * In:  a module after the pipeline with PassOptions.codegen (activations f32, memory planned: the
 *      same module the CPU executor runs), the weights (WeightSet, host memory), and where the kernels
 *      come from: images embedded in a built executable (cubin for one sm_XX and/or PTX), or NVRTC
 *      at load time for this GPU's architecture (compiled in parallel, one thread per core).
 * Out: per call, the module's outputs (logits [T, V] f32, route.L.ids i32, route.L.weights f32)
 *      copied back to host memory on request (cuda_model_output), valid until the next call.
 *      Attention keeps a KV cache per layer on the device, so a call with positions n.. continues a
 *      sequence (decode).
 * Memory: the weights are uploaded once at load, in their stored dtype (the experts of a layer
 *      stacked [E][rows][cols] for the grouped GEMMs); activations live in one device arena laid out
 *      by the memory plan (grown to the largest T seen); the routing buffers, the KV caches and the
 *      router scratch beside it. Everything runs on one stream; a call with T = 1 (a decode step) is
 *      captured once as a CUDA graph and replayed afterwards (a range of steps at T = 1 too).
 * Errors: no driver or GPU, NVRTC failures (kernel name and log), device out of memory, a kernel
 *      that faults: false with a message. The module and the WeightSet are borrowed.
 */
#ifndef MOEPPC_RUNTIME_CUDA_EXEC_H
#define MOEPPC_RUNTIME_CUDA_EXEC_H

#include "codegen/cuda/cg_cuda.h"
#include "ir/ir.h"
#include "passes/tuning.h"
#include "runtime/runtime.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One kernel as code: its symbol and its CUDA C source (both owned by the list). */
typedef struct CudaKernelCode {
    char *symbol;
    char *source;
    char launch[200];               /* its launch shape at T = 1 and 512 (cuda_module_kernels)       */
} CudaKernelCode;

/* A compiled kernel embedded in an executable: cubin for `arch` and/or PTX (NUL-terminated). */
typedef struct CudaKernelImage {
    const char *symbol;
    const unsigned char *cubin;
    size_t cubin_len;
    const char *ptx;
} CudaKernelImage;

/* Compile kernels to cubins for arch (out[n]; false with err set). */
typedef bool (*CudaCompileFn)(const CudaKernelCode *k, int n, const char *arch, struct CgCudaBinary *out, char *err,
                              size_t errlen);

typedef struct CudaOptions {
    int device;                     /* ordinal                                                     */
    const CudaKernelImage *images;  /* embedded kernels, or NULL: NVRTC now                         */
    int n_images;
    const char *images_arch;        /* the sm_XX the cubins were built for (cuda_module_kernels:
                                       the target they are for, which decides wgmma's kernels)    */
    bool no_graph;                  /* never capture decode steps as a CUDA graph                   */
    bool poison;                    /* fill the arena with NaN before every call (tests: catches
                                       elements no kernel wrote)                                    */
    bool sync_each;                 /* synchronise after every instruction and name a failing one   */
    int64_t last_rows;              /* > 0: the logits tail (ir_logits_tail: final norm, lm_head) on
                                       the last this many rows of a call alone, and only those rows
                                       of the logits downloaded: what decoding reads after a prefill
                                       (1), or a serving step's rows that need logits, put last;
                                       0: every row                                                 */
    int tile[2][3];                 /* MMA tiles (m, n, k) of the grouped up and down GEMMs
                                       ({0}: the default, cg_cuda_gemm_async's or _default's)      */
    const char *tile_sched[4];      /* tuned configurations of the grouped up and down GEMMs, of
                                       attention and of the router by token count (passes/schedule.h,
                                       TILE_SCHED_GPU; tune_db_gpu_schedules): MMA tiles above
                                       CG_CUDA_GEMV_MAX_T, GEMV forms (slots x warps / u k unroll) at
                                       or below; attention forms (queries x threads / kv key tile,
                                       CgCudaAttnForm); router forms (as CudaOptions.route); a kernel
                                       per configuration, the one for T picked by its measured
                                       neighbours; NULL: the rule's                                 */
    CgCudaAttnForm attn;            /* attention's form for every T ({0}: the rule's; the GPU tuner's
                                       candidates)                                                  */
    int route[3];                   /* the router's form for every T ({0}: the rule's; the GPU tuner's
                                       candidates): {1, threads} the fused kernel, {bm, bn, bk} the
                                       unfused path's linears on that FMA tile                     */
    int stages[2];                  /* k tiles in flight of the grouped up and down GEMMs' cp.async
                                       form (0: its 3; the GPU tuner's candidates)                  */
    int force_path;                 /* the grouped GEMMs on their tiles (1) or their GEMV (2) at every T
                                       (0: the rule's or the database's; the GPU tuner's candidates)  */
    int split_down;                 /* split-K ways of the grouped down GEMM, tiles and GEMV (0: none;
                                       the GPU tuner's candidates)                                  */
    int gemv[2][3];                 /* the GEMV form (slots per pass, warps, k unroll) of the grouped
                                       up and down GEMMs for every T <= CG_CUDA_GEMV_MAX_T, T = 1
                                       included ({0}: the rule's; the GPU tuner's candidates)       */
    bool no_decode_gemv;            /* T = 1 on the general GEMV too, not on its decode form
                                       (cg_cuda_gemm_decode; MOEPPC_CUDA_DECODE_GEMV=0: an A/B)     */
    bool no_async_gemm;             /* the grouped GEMMs of 16-bit models on the register-pipelined
                                       MMA form with f32 activations, not the cp.async form with
                                       16-bit ones (MOEPPC_CUDA_ASYNC_GEMM=0: an A/B)               */
    bool wgmma;                     /* those of the cp.async form on sm_90a's wgmma, on an sm_90 GPU
                                       (or the emulator; elsewhere ignored) (MOEPPC_CUDA_WGMMA=1; the
                                       rule's sm_90 form takes W by the TMA too, cuda_tma_rule: without
                                       it wgmma was slower on an H200 than mma.sync; a tuning database's
                                       entries can ask for it per tile: "/wg")                      */
    bool tma;                       /* the grouped GEMMs of 16-bit models on wgmma (implied) with W's
                                       k tiles by the tensor memory accelerator where the tile's k is 64
                                       and the weights are stacked, also where the rule would not put
                                       them (the emulator; a database's wgmma tiles) (MOEPPC_CUDA_TMA=1) */
    bool no_tma;                    /* not the rule's TMA form on an sm_90 GPU (cuda_tma_rule): the
                                       cp.async mma.sync form, as other GPUs run (MOEPPC_CUDA_TMA=0:
                                       an A/B; the GPU tuner's non-TMA candidates)                  */
    bool no_tile_pair;              /* the TMA form on one tile for every T (the wgmma form's 128 x
                                       64 / 128 x 128), not the rule's two (cg_cuda_gemm_tma)
                                       (MOEPPC_CUDA_TILE_PAIR=0: an A/B)                            */
    bool tma_gather_a;              /* the TMA form's UP gathers x's rows through perm by cp.async, as
                                       before 2026-12-05, not x gathered into slot order first and
                                       taken by the TMA (MOEPPC_CUDA_TMA_A=0: an A/B)               */
    bool no_ws;                     /* the rule's large DOWN tile (cg_cuda_gemm_tma) not warp-
                                       specialised (MOEPPC_CUDA_WS=0: an A/B)                        */
    bool ws;                        /* the TMA form (implied) warp-specialised and persistent
                                       (CgCudaGemm.ws; MOEPPC_CUDA_WS=1; sm_90; opt-in: on an H200
                                       it ran 0.87x the plain TMA form; a database's entries: "/ws") */
    bool no_stream_k;               /* a persistent DOWN's last wave as whole tiles, not by stream-K
                                       (CgCudaGemm.stream_k; MOEPPC_CUDA_STREAMK=0: an A/B)          */
    bool no_mlp;                    /* a decode step's grouped UP and DOWN as their two GEMVs, not as
                                       one decode MLP kernel (cg_cuda_mlp_*; MOEPPC_CUDA_MLP=0: an A/B) */
    bool no_route_split;            /* the fused router on one block a token at every T, not a few
                                       tokens' W1 rows dealt over several (cg_cuda_route_fused_split;
                                       MOEPPC_CUDA_ROUTE_SPLIT=0: an A/B)                          */
    int mlp[2];                     /* that kernel's rows of h a block and warps ({0}: the rule's,
                                       cg_cuda_mlp_rule; MOEPPC_CUDA_MLP=RxW: device-check's A/Bs)   */
    bool no_fuse;                   /* keep the folded launches apart (the router's combine, the
                                       combine's scale and dispatch, attention's KV store, the
                                       queries' RoPE; MOEPPC_CUDA_FUSE=0: an A/B of what folding
                                       them saves)                                                 */
    bool no_attn_split;             /* the per-query attention kernel on one block a query and head,
                                       its keys not split across blocks (MOEPPC_CUDA_ATTN_SPLIT=0: an
                                       A/B of flash-decoding's splits)                             */
    bool no_attn_seqs;              /* a serving batch's attention a launch a run of a sequence's rows,
                                       not one over the caches' table (MOEPPC_CUDA_ATTN_SEQS=0: an
                                       A/B of cg_cuda_attention_seqs_source)                       */
    bool no_attn_gq;                /* the per-query attention one query head a block, not GQA's G of a
                                       kv head (MOEPPC_CUDA_ATTN_GQ=0: an A/B of CgCudaAttnForm.gq) */
    bool no_attn_tc;                /* a 16-bit model's attention in f32 throughout: f32 KV caches,
                                       prefill on the f32 tiled form, not on tensor cores
                                       (MOEPPC_CUDA_ATTN_TC=0: an A/B)                             */
    bool pdl;                       /* launch every kernel with programmatic dependent launch, where
                                       the GPU (sm_90+) and the kernels' target allow it: each may
                                       start while the one before it drains; the default on a GPU, this
                                       asks for it on the emulator too (MOEPPC_CUDA_PDL=1)         */
    bool no_pdl;                    /* plain launches on a GPU too (MOEPPC_CUDA_PDL=0: an A/B)      */
    size_t upload_run;              /* random weights are made and uploaded this many bytes of rows at
                                       a time at most (0: 64 MiB; a test's few hundred bytes take a
                                       tiny model's tensors in several runs)                       */
    CudaCompileFn compile;          /* what is not embedded: cuda_nvrtc_cubins, or NULL (an
                                       executable: every kernel must be built in)                   */
    /* Inside someone else's CUDA program (the embedding library, embed/layer_cuda.c):               */
    struct CgCudaDriver *driver;    /* use this driver (cg_cuda_driver_attach: the primary context,
                                       the caller's stream), borrowed, instead of opening one; the
                                       context must be current around every call                   */
    bool weights_in_place;          /* every WeightSet tensor's data is a device address (16-byte
                                       aligned), used where it is: nothing is uploaded; the grouped
                                       GEMMs and the fused router reach the experts' matrices through
                                       device tables of pointers built at load ("_wt" kernels)      */
    bool caller_workspace;          /* no device buffers per call of its own: the activation arena,
                                       the router scratch and the routing live in the workspace
                                       given to cuda_model_set_workspace; inputs are bound to device
                                       memory (cuda_model_bind_input) and calls only queue work
                                       (cuda_model_enqueue)                                        */
    /* Called as weights are uploaded (on the thread of cuda_model_new): the bytes uploaded and of all
     * of them (start-up's progress, as CpuModelOptions.progress; NULL: none). */
    void (*progress)(void *ctx, double ready, double total);
    void *progress_ctx;
} CudaOptions;

typedef struct CudaModel CudaModel;

/* Attention instruction i's kernel descriptor for the GPU: its wdtype the model's (tune_attention_dtype;
 * 16-bit ones take the tensor-core prefill form). False when i is not one. */
static inline bool cuda_attention_desc(const IrInstr *i, CgOpDesc *d)
{
    if (!cg_op_desc_for(i, d) || d->kind != CG_OP_ATTENTION) return false;
    d->wdtype = tune_attention_dtype(i);
    return true;
}

/* An attention form as a tuning configuration (passes/tuning.h: QxP[/kvB], the per-query form's G
 * 1xP[/kvB]/gG, the tensor-core form Qx16[/kvB]/tc) and back. */
static inline TuneConfig cuda_attn_config(const CgCudaAttnForm *f)
{
    return (TuneConfig){.tile_m = f->bq, .tile_n = f->tpq ? f->tpq : 16, .kv_block = f->bkv, .tc = f->tpq == 0,
                        .gq = f->gq};
}

static inline CgCudaAttnForm cuda_attn_form(const TuneConfig *c)
{
    return (CgCudaAttnForm){c->tile_m, c->tc ? 0 : c->tile_n, c->kv_block, c->gq};
}

/* The fused router's descriptor for moe.route instruction i (CgCudaRouteFused, 256 threads); false
 * when its weights are of mixed dtypes (no fused kernel). wc_table: weights used in place. */
bool cuda_route_fused_desc(const IrInstr *i, bool wc_table, CgCudaRouteFused *rf);

/* True when the environment variable `name` is "0" (a switch that is on unless turned off). Inline:
 * the run driver reads these switches in builds without the CUDA executor too. */
static inline bool cuda_env_off(const char *name)
{
    const char *v = getenv(name);
    return v && strcmp(v, "0") == 0;
}

/* True when it is "1" (a switch that is off unless turned on). */
static inline bool cuda_env_on(const char *name)
{
    const char *v = getenv(name);
    return v && strcmp(v, "1") == 0;
}

/* The executor's switches from the environment, over o's other fields: MOEPPC_CUDA_DECODE_GEMV=0,
 * MOEPPC_CUDA_ASYNC_GEMM=0, MOEPPC_CUDA_FUSE=0, MOEPPC_CUDA_ATTN_SPLIT=0, MOEPPC_CUDA_ATTN_TC=0,
 * MOEPPC_CUDA_ATTN_SEQS=0, MOEPPC_CUDA_ATTN_GQ=0, MOEPPC_CUDA_WGMMA=1, MOEPPC_CUDA_PDL=1, MOEPPC_CUDA_TMA=1,
 * MOEPPC_CUDA_WS=1|0, MOEPPC_CUDA_TILE_PAIR=0,
 * MOEPPC_CUDA_TMA_A=0, MOEPPC_CUDA_MLP=0|RxW, MOEPPC_CUDA_ROUTE_SPLIT=0, MOEPPC_CUDA_STREAMK=0 (the A/Bs of
 * scripts/device-check.sh). */
static inline void cuda_options_env(CudaOptions *o)
{
    o->no_decode_gemv = cuda_env_off("MOEPPC_CUDA_DECODE_GEMV");
    o->no_async_gemm = cuda_env_off("MOEPPC_CUDA_ASYNC_GEMM");
    o->no_fuse = cuda_env_off("MOEPPC_CUDA_FUSE");
    o->no_mlp = cuda_env_off("MOEPPC_CUDA_MLP");
    o->no_route_split = cuda_env_off("MOEPPC_CUDA_ROUTE_SPLIT");
    const char *mlp = getenv("MOEPPC_CUDA_MLP");
    if (!mlp || sscanf(mlp, "%dx%d", &o->mlp[0], &o->mlp[1]) != 2) o->mlp[0] = o->mlp[1] = 0;
    o->no_attn_split = cuda_env_off("MOEPPC_CUDA_ATTN_SPLIT");
    o->no_attn_tc = cuda_env_off("MOEPPC_CUDA_ATTN_TC");
    o->no_attn_seqs = cuda_env_off("MOEPPC_CUDA_ATTN_SEQS");
    o->no_attn_gq = cuda_env_off("MOEPPC_CUDA_ATTN_GQ");
    o->wgmma = cuda_env_on("MOEPPC_CUDA_WGMMA");
    o->pdl = cuda_env_on("MOEPPC_CUDA_PDL");
    o->tma = cuda_env_on("MOEPPC_CUDA_TMA");
    o->no_tma = cuda_env_off("MOEPPC_CUDA_TMA");
    o->no_pdl = cuda_env_off("MOEPPC_CUDA_PDL");
    o->ws = cuda_env_on("MOEPPC_CUDA_WS");
    o->no_ws = cuda_env_off("MOEPPC_CUDA_WS");
    o->no_stream_k = cuda_env_off("MOEPPC_CUDA_STREAMK");
    o->no_tile_pair = cuda_env_off("MOEPPC_CUDA_TILE_PAIR");
    o->tma_gather_a = cuda_env_off("MOEPPC_CUDA_TMA_A");
}

/* Does the rule put a 16-bit model's grouped GEMMs on sm_90a's wgmma with W by the TMA: kernels for
 * sm_90 (`karch`: NVRTC's here, or an executable's built-in ones) on an sm_90 GPU (`garch`; not the
 * emulator, whose default stays the form other GPUs run), unless o->no_tma. Measured on an H200 (2026-12-04):
 * the 7B layer's grouped GEMMs 1.4x faster at T = 512 and 4096 than on the cp.async mma.sync form. */
bool cuda_tma_rule(const char *karch, const char *garch, const CudaOptions *o);

CudaModel *cuda_model_new(const IrModule *m, const WeightSet *w, int64_t max_positions, const CudaOptions *o,
                          RtError *err);
bool       cuda_model_run(CudaModel *cm, const int32_t *ids, const int32_t *pos, int64_t T, RtError *err);
/* Sequences (moeppc run --batch): from now on the model keeps KV caches for n sequences (n at least
 * the number it has; sequence 0 is cuda_model_run's); false with a message where GPU memory lacks. */
bool       cuda_model_set_sequences(CudaModel *cm, int n, RtError *err);
/* cpu_model_copy_sequence's contract, on the GPU (device-to-device copies on the model's stream). */
bool       cuda_model_copy_sequence(CudaModel *cm, int from, int to, int64_t positions, RtError *err);
/* T tokens of several sequences in one run: token t of sequence seq[t] at position pos[t], which
 * attends to that sequence's caches alone (cpu_model_run_seqs' contract); NULL seq: cuda_model_run.
 * A run laid out as the one before it (the same T, rows' sequences and last_rows: --batch decoding the
 * same sequences step after step) is captured as a CUDA graph and replayed while the layout holds. */
bool       cuda_model_run_seqs(CudaModel *cm, const int32_t *ids, const int32_t *pos, const int32_t *seq, int64_t T,
                               RtError *err);
/* CudaOptions.last_rows from now on (the logits tail on a call's last n rows alone, and only they
 * copied; 0: every row). */
void       cuda_model_set_last_rows(CudaModel *cm, int64_t n);
/* Instructions [first, last) only, after a full run on the same T (benchmarks time a part this way);
 * at T = 1 the range is captured as a CUDA graph, as a decode step is (the last 8 ranges kept). */
bool       cuda_model_run_steps(CudaModel *cm, int first, int last, const int32_t *ids, const int32_t *pos,
                                int64_t T, RtError *err);
/* The same range `reps` times over in one call (one graph at T = 1): a part of a decode step timed as
 * it runs inside the whole step's graph, the graph's launch shared by the repetitions (bench's
 * "in a graph" figures). A range that rewrites all it reads from (the whole step: its KV rows are
 * stored again with the same values; the MoE block) leaves the outputs one run would. */
bool       cuda_model_run_steps_reps(CudaModel *cm, int first, int last, int reps, const int32_t *ids,
                                     const int32_t *pos, int64_t T, RtError *err);
/* Instructions [first, last) of a run of several sequences' rows (as cuda_model_run_seqs runs them;
 * seq NULL: cuda_model_run_steps_reps): bench --batch times a serving batch's decode step so. */
bool       cuda_model_run_steps_seqs(CudaModel *cm, int first, int last, int reps, const int32_t *ids,
                                     const int32_t *pos, const int32_t *seq, int64_t T, RtError *err);
/* A module output of the last run, copied to host memory owned by the model: [T, cols]. NULL if the
 * name is not an output (or the copy failed: err says why). */
const void *cuda_model_output(CudaModel *cm, const char *name, int64_t *cols, moe_dtype *dtype, RtError *err);
/* Overwrite value v (a result) for the T of the last call with host data ([T, cols] of its dtype):
 * benchmarks impose a routing this way and then run the instructions after the router. */
bool       cuda_model_write(CudaModel *cm, const IrValue *v, const void *host, RtError *err);
/* Milliseconds of GPU time (CUDA events) of the last call's launches or graph (its inputs' upload
 * before them not counted). */
double     cuda_model_last_ms(const CudaModel *cm);
/* The GPU operations (kernel launches, fills, copies) the last call queued, a graph's included: what
 * folding a decode step's kernels saves (bench prints it; tests check it). */
int        cuda_model_last_ops(const CudaModel *cm);
/* How many ranges of steps (a decode step: all of them) have been captured as CUDA graphs, at most 8. */
int        cuda_model_graphs(const CudaModel *cm);
/* The GPU: "NVIDIA H200 (sm_90)". */
const char *cuda_model_device(const CudaModel *cm);
/* Device bytes the model holds (weights, caches, arena). */
double     cuda_model_bytes(const CudaModel *cm);
void       cuda_model_free(CudaModel *cm);

/* With CudaOptions.caller_workspace: bytes of device workspace (a multiple of 64, to be 256-byte
 * aligned) for calls of up to T tokens; give it (device address, the T it was sized for); bind each
 * module input (a result of no instruction: "x", "r") to device memory of [T, cols] f32, 16-byte
 * aligned, for the next call; queue a call of T tokens on the driver's stream without waiting for
 * it (false with err when a launch is refused; the work queued before stays queued); the device
 * address of an output of a call of T tokens in the workspace (0 if no such output). */
size_t     cuda_model_workspace_bytes(const CudaModel *cm, int64_t T);
void       cuda_model_set_workspace(CudaModel *cm, uint64_t workspace, int64_t T);
void       cuda_model_bind_input(CudaModel *cm, const IrValue *v, uint64_t dev);
bool       cuda_model_enqueue(CudaModel *cm, int64_t T, RtError *err);
uint64_t   cuda_model_output_addr(const CudaModel *cm, const char *name, int64_t T);

/* cuda_compile.c: NVRTC over kernels, in parallel (one thread per core): cubin and/or PTX for arch
 * in out[n] (free each with cg_cuda_binary_free). cuda_nvrtc_cubins: cubins only (a CudaCompileFn).
 * Linking either needs the NVRTC library; the executor alone does not. cuda_warn_serialized: a warning
 * on stderr for each kernel whose wgmma ptxas serialised (what will run; the tuner discards them). */
bool cuda_compile_kernels(const CudaKernelCode *k, int n, const char *arch, bool cubin, bool ptx,
                          struct CgCudaBinary *out, char *err, size_t errlen);
void cuda_warn_serialized(const CudaKernelCode *k, const struct CgCudaBinary *bin, int n);
bool cuda_nvrtc_cubins(const CudaKernelCode *k, int n, const char *arch, struct CgCudaBinary *out, char *err,
                       size_t errlen);

/* The executor as the run driver (runtime/cpu/driver.c) calls it: through these pointers, so that the
 * driver links without CUDA. */
typedef struct CudaBackend {
    CudaModel *(*model_new)(const IrModule *m, const WeightSet *w, int64_t max_positions, const CudaOptions *o,
                            RtError *err);
    bool (*run)(CudaModel *cm, const int32_t *ids, const int32_t *pos, int64_t T, RtError *err);
    const void *(*output)(CudaModel *cm, const char *name, int64_t *cols, moe_dtype *dtype, RtError *err);
    const char *(*device)(const CudaModel *cm);
    double (*last_ms)(const CudaModel *cm);
    void (*model_free)(CudaModel *cm);
    /* GPU `ordinal`'s name and architecture ("sm_90"), as a GPU tuning database records them. */
    bool (*identity)(int ordinal, char *name, size_t n, char *arch, size_t arch_n, RtError *err);
    bool (*set_sequences)(CudaModel *cm, int n, RtError *err);
    bool (*run_seqs)(CudaModel *cm, const int32_t *ids, const int32_t *pos, const int32_t *seq, int64_t T, RtError *err);
    void (*set_last_rows)(CudaModel *cm, int64_t n);
    bool (*copy_sequence)(CudaModel *cm, int from, int to, int64_t positions, RtError *err);
} CudaBackend;
extern const CudaBackend cuda_backend;

/* Every kernel the module needs, as code (no GPU, no driver): what `moeppc build --target` compiles
 * and embeds. The array is xmalloc'd; free with cuda_kernel_code_free. */
bool cuda_module_kernels(const IrModule *m, const CudaOptions *o, CudaKernelCode **out, int *n, RtError *err);
void cuda_kernel_code_free(CudaKernelCode *k, int n);

#endif
