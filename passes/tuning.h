/* tuning.h — the tuning database: measured kernel configurations per target, op shape and token count.
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
 *   target: {cpu: znver3, isa: avx512, features: 1a2b3c4d5e6f7081}   # features: hash of the vector features
 *   entries:
 *     - {op: grouped_up, dtype: f32, n: 8192, k: 1536, groups: 16, tokens: 512, best: 8x48/u2,
 *        measured: {8x48: 181.2, 4x96: 179.9, 8x48/u2: 183.0, 8x48/u2/kc512: 176.4}}   # GFLOP/s
 *     - {op: attention, dtype: f32, n: 16, k: 64, groups: 4, tokens: 1, best: kv32,
 *        measured: {kv16: 3.1, kv32: 3.4}}
 *
 * A configuration (the keys of `measured`, and `best`) is fields joined by '/':
 *   MxN      the register tile: M rows of A by N columns of B (GEMM ops: linear, route, grouped_*)
 *   uU       k steps per micro-kernel loop iteration, 1..16 (absent: the ISA's default, 4)
 *   kcK      K in blocks of K (absent: the whole K in one pass)
 *   mcR      R rows of A per block of a panel, up to 65536 (absent: 256 rounded to M)
 *   kvB      keys per streaming block of attention, 1..1024 (op attention only; absent: 16)
 *   sS       GPU: k tiles in the cp.async ring of the tensor-core path, 2..6 (absent: 3)
 *   wg       GPU (sm_90): that path on the warpgroup MMA (wgmma) instead of mma.sync
 *   tma      GPU (sm_90, with wg and kc64): W's k tiles by the tensor memory accelerator
 *   ws       GPU (with tma): warp-specialised and persistent (a producer warpgroup, blocks looping
 *            over the tiles; CgCudaGemm.ws)
 *   skS      GPU, grouped_down: split-K, S blocks (2..16) each reduce a slice of K (absent: none)
 *   mlp      GPU, grouped_down at tokens 1: RxW/mlp, the down-projection and its up-projection as
 *            one decode MLP kernel (codegen/cuda's cg_cuda_mlp_*), R rows of h a block (8, 16, 32
 *            or 64) by W warps (1..32); its GFLOP/s are the down-projection's FLOPs over what the
 *            kernel takes beyond the up-projection's best GEMV, so that they compare with the GEMVs'.
 *            Where a bucket at 1 token measured it, a decode step runs the bucket's best: this
 *            kernel, or (a GEMV form best) the two GEMVs; without such a bucket, the rule's kernel.
 * Absent fields are the rule's values, so "8x48" is the rule's own configuration on AVX-512.
 * Shapes: GEMM ops key the weight [N, K] (route: its first router matrix) and groups (experts;
 * 1 for linear and route); attention keys n = heads, k = head_dim, groups = kv_heads and measures
 * `tokens` query rows at the end of a context of max(tokens, 512) positions. A CPU GEMM entry of
 * bf16 weights may say `act: bf16` (measured on the bf16 dot product, A rounded to bf16) or
 * `act: amx` (on AMX tiles, whose MxN is 1..16 or 32 by 16 or 32 and whose unroll is 1); it serves
 * only ops run that way, and such ops only it.
 *
 * A GPU database (`moeppc tune --target sm_XX`) has the same form: target.cpu is the GPU's name,
 * target.isa its architecture (sm_90), target.features a hash of the name, llvm the NVRTC version
 * ("NVRTC 13.0"); its entries are grouped_up/grouped_down (keyed by the weight's shape, as on the
 * CPU) with configurations MxN/kcK[/sS] = the CUDA block tile BM x BN x BK of the tensor-core path
 * (for UP, BN columns of each of a and b) and its stages; SxW/uU = the GEMV's slots per pass, warps
 * and k unroll; either with /skS on grouped_down. Any bucket may hold both (the tuner measures the
 * other path's rule too); the executor runs the path of the configuration it picks. Its
 * attention entries (keyed as the CPU's) have QxP[/kvB] = queries per block x threads per query and
 * the key tile of the tiled kernel, or 1xP = the per-query kernel with P threads (codegen/cuda's
 * CgCudaAttnForm); its route entries (keyed as the CPU's) 1xN = the fused router with N threads a
 * token, or MxN/kcK = the unfused path with the router's linears on that FMA tile.
 */
#ifndef MOEPPC_PASSES_TUNING_H
#define MOEPPC_PASSES_TUNING_H

#include "frontend/frontend.h"

#define TUNE_MAX_MEASURED 64
/* The rule's attention key block on the CPU: CG_ATTENTION_KV_BLOCK of codegen/llvm/ops/cg_ops.h (the
 * passes do not see codegen; tools/tune.c checks the two agree) */
#define TUNE_CPU_ATTENTION_KV_BLOCK 64

/* One kernel configuration; 0 in a field = absent = the rule's value. */
typedef struct TuneConfig {
    int tile_m, tile_n;          /* register tile (GEMM ops)                                  */
    int unroll;                  /* k unroll of the micro-kernel                              */
    int64_t kc, mc;              /* K block, M block                                          */
    int kv_block;                /* attention's key block (CPU: keys per softmax update)       */
    int stages;                  /* GPU: the k tiles in flight of the cp.async MMA form       */
    int wgmma;                   /* GPU: 1 = that form on sm_90a's warpgroup MMA              */
    int split;                   /* GPU: split-K ways of the grouped down-projection          */
    int tma;                     /* GPU: 1 = wgmma's W tiles by the TMA                       */
    int ws;                      /* GPU: 1 = the TMA form warp-specialised and persistent      */
    int tc;                      /* GPU: 1 = attention's tensor-core form (tile_m queries a
                                    block, tile_n 16 a warp; 16-bit models)                   */
    int mlp;                     /* GPU: 1 = a decode step's down-projection with its up-
                                    projection as one decode MLP kernel, tile_m rows of h a
                                    block by tile_n warps (grouped_down at 1 token only)       */
    int gq;                      /* GPU: attention's per-query form's query heads a block
                                    (GQA's of one kv head; 0: the rule's)                       */
} TuneConfig;

typedef struct TuneMeasure {
    TuneConfig c;
    double gflops;               /* GFLOP/s (attention: of its q·k and p·v multiply-adds)     */
} TuneMeasure;

typedef struct TuneEntry {
    char op[24];                 /* "linear", "route", "grouped_up", "grouped_down", "attention" */
    moe_dtype dtype;             /* of the weights (attention: the model's; CPU entries f32)     */
    bool act_bf16;               /* CPU, bf16 weights: measured on the bf16 dot product (`act: bf16`,
                                    the ops' act_bf16); entries without it never serve those ops */
    bool amx;                    /* with act_bf16: measured on AMX tiles (`act: amx`, the ops' amx);
                                    such entries serve only AMX ops, and AMX ops only such entries */
    int64_t n, k, groups;        /* see the file format above                                 */
    int64_t tokens;              /* the token bucket measured */
    TuneConfig best;
    TuneMeasure measured[TUNE_MAX_MEASURED];
    int n_measured;
    int line;                    /* where it was read (0 when measured) */
} TuneEntry;

typedef struct TuneTarget {
    char cpu[64], isa[16], llvm[32], compiler[32];
    uint64_t features;           /* hash_str of the host's vector features (cg_vector_features); a
                                    database written before 2026-12-06 holds the whole string's */
    uint64_t features_all;       /* a host's: hash_str of its whole feature string (such an old
                                    database matches it); 0 in a database */
} TuneTarget;

typedef struct TuneDb {
    TuneTarget target;
    TuneEntry *e;
    int n, cap;
} TuneDb;

/* Configurations as text (schedule.c, which the runtime links without the YAML reader): */
/* The configuration as the file writes it ("8x48/u2/kc256"); "rule" when every field is absent. */
void tune_config_format(const TuneConfig *c, char *buf, size_t n);
/* The configuration of text; false when it is not one (see the file format). */
bool tune_config_parse(const char *text, TuneConfig *c);
bool tune_config_equal(const TuneConfig *a, const TuneConfig *b);
/* Is op one of the GEMM ops (linear, route, grouped_up, grouped_down)? */
bool tune_op_is_gemm(const char *op);
/* An attention instruction's model dtype, that of its queries' projection's weights (after
 * widen-activations its activations are f32): the dtype of its GPU entries (16-bit models have a
 * tensor-core form); DT_F32 when no linear feeds it. */
struct IrInstr;
moe_dtype tune_attention_dtype(const struct IrInstr *i);

bool tune_db_load(const char *path, TuneDb *db, Diag *d);
bool tune_db_load_string(const char *text, size_t len, TuneDb *db, Diag *d); /* the same from text */
bool tune_db_save(const TuneDb *db, const char *path, char *why, size_t why_len); /* atomic */
void tune_db_add(TuneDb *db, const TuneEntry *e);
void tune_db_free(TuneDb *db);
/* Does db apply to target t? If not, why says what differs (a warning for the user). */
bool tune_db_matches(const TuneDb *db, const TuneTarget *t, char *why, size_t why_len);
/* The identity of a GPU as a GPU database records it (see the file format). */
void tune_gpu_target(TuneTarget *t, const char *gpu_name, const char *arch, const char *nvrtc);
/* A GPU database's schedules for the grouped up- and down-projections, the attention and the router
 * of m (sched[0]: up, [1]: down, [2]: attention, [3]: route): per token bucket of the entries of m's
 * shape, the configurations that win some bucket with their measured GFLOP/s (schedule.h, width
 * TILE_SCHED_GPU: the executor picks per T by measured neighbours), allocated in arena; an op
 * without entries keeps sched[] as given. Returns how many of the four were set. */
struct IrModule;
int tune_db_gpu_schedules(const TuneDb *db, const struct IrModule *m, const char *sched[4], Arena *arena);
/* `--tuning DB` with `--device cuda` (db loaded from path): if it was made for this GPU (gpu name,
 * arch, nvrtc version, this moeppc), set sched[] from it and say so on stderr; a database for
 * another target is ignored with a warning. */
void tune_db_apply_gpu(const char *path, const TuneDb *db, const char *gpu, const char *arch, const char *nvrtc,
                       const struct IrModule *m, const char *sched[4], Arena *arena);

#endif
