/* cg_cuda.h — CUDA code generation: CUDA C source per kernel, specialised for its constants, compiled
 * with NVRTC to cubin (for one sm_XX) and/or PTX; plus the CUDA driver API, opened with dlopen.
 *
 * In:  an op descriptor (CgOpDesc of codegen/llvm/ops/cg_ops.h: the CPU kernels' kinds and constants,
 *      so both backends compile the same ops) or a grouped-GEMM descriptor (CgCudaGemm below); an
 *      architecture string ("sm_80", "sm_86", "sm_89", "sm_90").
 * Out: cg_cuda_op_source / cg_cuda_gemm_source: one NVRTC translation unit (xmalloc'd text; caller
 *      frees) defining exactly one `extern "C" __global__` kernel named by cg_cuda_*_symbol;
 *      cg_cuda_compile: PTX and/or cubin bytes, NVRTC's log, and the resource usage ptxas reported
 *      (registers, shared memory, spill stores/loads), without any GPU (CgCudaBinary; free with
 *      cg_cuda_binary_free). cg_cuda_*_launch: the grid, block and dynamic shared memory of a launch.
 * Conventions (the CPU kernels', cg_ops.h): activations are f32 row-major with T rows (T a run-time
 *      argument; T = 0 is a no-op); weights (embedding, norm weights, constant vectors, expert matrices)
 *      stay in their stored dtype (f32/bf16/f16) and are widened to f32 on load; ids and positions are
 *      int32, expert offsets int64. Kernels cover all T rows themselves (no row0/rows arguments: the
 *      grid does the splitting). Math is IEEE (no --use_fast_math): expf/tanhf/sqrtf as the CPU's libm
 *      within an ulp or two; RoPE angles in f64 like the CPU kernel.
 * Memory: the device buffers are the caller's; kernels never allocate. Sources and binaries are
 *      heap-allocated and owned by the caller.
 * Errors: cg_cuda_compile returns false with err = "NVRTC: <call>: <nvrtcGetErrorString>" followed by
 *      the kernel name and NVRTC's full log; the driver functions return false with the driver's
 *      message (cuGetErrorString) or "no CUDA driver (libcuda.so.1) on this machine".
 */
#ifndef MOEPPC_CG_CUDA_H
#define MOEPPC_CG_CUDA_H

#include "codegen/llvm/ops/cg_ops.h"
#include "support/support.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- op kernels ------------------------------------------------------------------------------------
 * Kernel argument lists (C types as the driver passes them: long long = int64, int = int32):
 *   EMBED         (long long T, const int *ids, const void *table, float *out)        grid T, block 256
 *   RMS_NORM      (long long T, const float *x, const void *w, float *out)            one block per row
 *   ADD_RMS_NORM  (long long T, const float *a, const float *b, const void *w, float *sum, float *out)
 *   ROPE          (long long T, const float *x, const int *pos, float *out)           out may alias x
 *                  with kv_heads > 0 (queries' and keys' RoPE in one launch): (..., const float *x2,
 *                  float *out2), x2 [T, kv_heads·head_dim]; out2 may alias x exactly (same shape)
 *   ATTENTION     (long long T, const float *q, KV *kc, KV *vc, const int *pos, float *out,
 *                  const float *knew, const float *vnew, float *part, unsigned *cnt)  the caches
 *                  [max_pos, kv_heads·head_dim] of KV = the model's type (d->wdtype: float, or u16
 *                  for bf16/f16: SEMANTICS §4's activations in the model's type); knew/vnew
 *                  NULL, or (T = 1 only: a decode step) the new key and value row, read from there
 *                  and stored into the caches at pos[0] by the kernel (no separate KV store). One
 *                  block of CG_CUDA_ATTN_WARPS warps per (query t, G query heads from h = G·blockIdx.y
 *                  (cg_cuda_attention_heads_per_block: GQA's heads of one kv head), key split s): the keys
 *                  0..pos[t] go to up to grid.z splits of at least CG_CUDA_ATTN_SPLIT_MIN_KEYS
 *                  (flash-decoding: a decode step's 16 heads would otherwise keep 16 SMs busy;
 *                  grid.z = ceil(S / T) for the form's S, cg_cuda_attention_launch);
 *                  within a block the warps take KB keys at a time (their loads in flight together),
 *                  each keeps an online max/sum/accumulator, the block merges them in shared memory.
 *                  With more than one split each writes its (max, sum, accumulator) to part
 *                  [T][heads][S][head_dim + 2] and the last of them to arrive (cnt [T][heads], zero
 *                  between launches: it resets its count) merges them; part NULL: one split, grid.z
 *                  1 (blocks past the first split return). Works for prefill and for decode (T = 1).
 *                  Its tiled form for prefill (T >= CG_CUDA_ATTN_TILED_MIN_T, same arguments,
 *                  cg_cuda_attention_*): a block per BQ consecutive queries and head, TPQ threads a
 *                  query (dimensions strided by TPQ), tiles of BKV keys and values staged in shared
 *                  memory once for all the block's queries, the same online softmax (its arguments
 *                  the first six only: the KV store runs before it). For 16-bit models (d->wdtype
 *                  bf16/f16: the model's, activations stay f32) its tensor-core form: a warp per 16
 *                  queries on mma.sync m16n8k16, q, k, v and the softmax's weights rounded to the
 *                  model's type, scores, softmax and sums in f32 (SEMANTICS.md §4), the same six
 *                  arguments. The kernels' shapes are a CgCudaAttnForm (the tuner's knobs; the
 *                  rule's below).
 *   SWIGLU, ADD   (long long T, const float *a, const float *b, float *out)           grid-stride
 *   SCALE, TANH   (long long T, const float *x, float *out)                           grid-stride
 *   ROUTE_POST    (long long T, const float *z0, const float *g, float *logits, const float *alpha_logits,
 *                  float *weights, int *ids, float *alpha)   one warp per token (g, alpha_logits,
 *                  alpha may be NULL exactly as on the CPU)
 *   COMBINE       (long long T, const float *x, const float *weights, const int *ids, const float *alpha,
 *                  const void *const *vc, float *y, float *u, long long *off, int *perm, float *gate_w)
 *                  vc: a device array of n_const device pointers; u: NULL, or u = s x written too (the
 *                  scale op, fused); with CgOpDesc.experts > 0 (at most 1024) and off given, block 0
 *                  also does DISPATCH of (ids, weights) over that many experts (the executor's choice
 *                  at T <= CG_CUDA_COMBINE_DISPATCH_MAX_T: one launch less a decode layer)
 *   DISPATCH      (long long T, const int *ids, const float *weights, long long *off, int *perm,
 *                  float *gate_w)   ONE block: counts with shared atomics, prefix sum, then a stable
 *                  (by token) placement with __match_any_sync ranks; deterministic, no host round trip.
 */
#define CG_CUDA_ATTN_WARPS 4
#define CG_CUDA_ATTN_BQ 64
#define CG_CUDA_ATTN_TILED_MIN_T 32
#define CG_CUDA_ATTN_SPLIT_MIN_KEYS 64 /* the per-query kernel's key splits: keys a split at least      */
#define CG_CUDA_ATTN_SPLIT_BLOCKS 256  /* ... and the blocks a query's heads should fill (the rule's S) */
#define CG_CUDA_ATTN_SPLIT_MAX 32
/* An attention kernel's shape: bq >= 2: the tiled kernel, bq queries a block, tpq threads a query (a
 * power of two up to 32; bq x tpq whole warps, at most 1024), key/value tiles of bkv rows (0: 32, or
 * 16 above head_dim 128; at most 48 KB of shared memory for both); tpq = 0: its tensor-core form
 * (16-bit models, head_dim a multiple of 16 up to 128), bq 16..128 queries (16 a warp), key tiles of
 * bkv (0: 64; a multiple of 16 up to 128, within 48 KB); bq = 1: the per-query kernel, tpq = 32 x its
 * warps, bkv its key splits (0 or 1: none; at most CG_CUDA_ATTN_SPLIT_MAX). As a tuning configuration
 * (cuda_attn_config): bq x tpq [/kv bkv], the tensor-core form bq x 16 [/kv bkv]/tc. */
typedef struct CgCudaAttnForm {
    int bq, tpq, bkv;
    int gq; /* the per-query form's query heads a block, a divisor of heads / kv_heads up to
               CG_CUDA_ATTN_GQ_MAX within its 32 KB (0: cg_cuda_attention_heads_per_block's; symbol
               `_gG` when another) */
} CgCudaAttnForm;
/* The per-query kernel's query heads a block (G): the largest divisor of heads / kv_heads up to
 * CG_CUDA_ATTN_GQ_MAX whose shared accumulators (G · warps · head_dim floats) fit 32 KB; with GQA the
 * query heads of one kv head, so that each load of its keys and values serves G heads (a block per
 * (query, G heads, key split): grid.y = heads / G). */
#define CG_CUDA_ATTN_GQ_MAX 4
int cg_cuda_attention_heads_per_block(const CgOpDesc *d, int warps);
/* The per-query kernel's key splits for d: enough blocks that a query's head blocks fill
 * CG_CUDA_ATTN_SPLIT_BLOCKS (a power of two, 1..CG_CUDA_ATTN_SPLIT_MAX). */
int cg_cuda_attention_splits(const CgOpDesc *d);
/* The rule's form for T tokens: per query (4 warps, cg_cuda_attention_splits) below
 * CG_CUDA_ATTN_TILED_MIN_T, else tiled 64 queries a block: on tensor cores where the form allows
 * (16-bit models), else 4 threads a query. */
CgCudaAttnForm cg_cuda_attention_rule(const CgOpDesc *d, int64_t T);
/* The rule's forms keep their names (the per-query one is the ATTENTION op's, cg_cuda_op_symbol). */
void  cg_cuda_attention_symbol(const CgOpDesc *d, const CgCudaAttnForm *f, char *out, size_t n);
/* NULL with err set when d or f is out of range. */
char *cg_cuda_attention_source(const CgOpDesc *d, const CgCudaAttnForm *f, char *err, size_t errlen);
void  cg_cuda_attention_launch(const CgOpDesc *d, const CgCudaAttnForm *f, int64_t T, unsigned grid[3],
                               unsigned block[3]);
/* A form for a serving batch's step: rows of several sequences in one launch. Symbol: the form's
 * with "_seqs"; NULL with err set when d or f is out of range.
 * The per-query form (bq 1): T rows, ATTENTION's arguments but (kc, vc) replaced by (const unsigned
 * long long *kvs, const int *seq, const int *rows): the launch's row i is the model's row t = rows[i]
 * (rows NULL: i; q, pos, out, knew, vnew, seq at t; part and cnt at i), its K and V caches at
 * kvs[2 seq[t]] and kvs[2 seq[t] + 1], its new key and value (knew, vnew, as at T = 1) stored there at
 * pos[t], no other row of the launch of its sequence (or knew NULL: the caches hold every row's
 * already, stored by cg_cuda_kv_store_seqs_source: rows of any sequences, several of one among them);
 * its grid (heads, T, splits) (cg_cuda_attention_seqs_launch: a row's heads together, so that GQA's
 * heads of a kv head read its caches through L2 once).
 * A tiled form (bq > 1): runs of consecutive rows, each of one sequence, whose keys and values the
 * caches hold already (cg_cuda_kv_store_seqs_source), arguments (long long R, const float *q, const
 * unsigned long long *kvs, const int *seq, const int *runs, const int *pos, float *out): run k of R
 * its rows runs[2 k] .. runs[2 k] + runs[2 k + 1] - 1, each tile of bq of a run's rows a block as in
 * the form's own launch, the tiles in the runs' order (T of cg_cuda_attention_seqs_launch: their
 * count, cg_cuda_attention_run_tiles; grid (tiles, heads)). */
void    cg_cuda_attention_seqs_symbol(const CgOpDesc *d, const CgCudaAttnForm *f, char *out, size_t n);
char   *cg_cuda_attention_seqs_source(const CgOpDesc *d, const CgCudaAttnForm *f, char *err, size_t errlen);
void    cg_cuda_attention_seqs_launch(const CgOpDesc *d, const CgCudaAttnForm *f, int64_t T, unsigned grid[3],
                                      unsigned block[3]);
int64_t cg_cuda_attention_run_tiles(const CgCudaAttnForm *f, const int32_t *runs, int64_t n);
#define CG_CUDA_DISPATCH_THREADS 1024
#define CG_CUDA_COMBINE_DISPATCH_MAX_T 16

/* `moeppc_cu_<cg_op_symbol without its moeppc_op_ prefix>`. */
void  cg_cuda_op_symbol(const CgOpDesc *d, char *out, size_t n);
/* NULL with err set if d is inconsistent or unsupported. */
char *cg_cuda_op_source(const CgOpDesc *d, char *err, size_t errlen);
void  cg_cuda_op_launch(const CgOpDesc *d, int64_t T, unsigned grid[3], unsigned block[3], size_t *smem);

/* The fused router (a decode step's whole moe.route in one launch): one block per token computes
 * z0 = W2 tanh(W1 x) (or W x with a one-layer router), adds the gating residual Wg r, the constant
 * experts' alpha logits Wc (s x), all in f32 with the weights widened on load, then decides as
 * ROUTE_POST (`post` gives its constants). Weights in their stored dtype, all of `wdtype`; the
 * constant experts' Wc stacked [2·n_const][D].
 *   (long long T, const float *x, const void *w1, const void *w2, const float *r, const void *wg,
 *    const void *wc, float *logits, float *weights, int *ids, float *alpha)   grid T, block `threads`
 * w2 is NULL with a one-layer router, r and wg without a residual, wc without constant experts.
 * "_cmb" forms take (..., float *y, float *u, const void *const *vc, long long *off, int *perm,
 * float *gate_w, unsigned *counter) after them: COMBINE's and DISPATCH's, and a counter of finished
 * tokens, zero before the launch and zero again after it (the last token's block resets it). Every
 * form then takes (..., float *part, unsigned *tcount): with grid.y = P > 1 blocks a token (`split`,
 * few tokens: one block streams W1's 0.5 MB at the 7B's shape one row a warp at a time), the
 * token's rows of W1 (tanh'd with two layers) and of Wc (times s) are dealt over its P blocks into
 * part [T][(h1 or experts) + 2·n_const], and the last of them to arrive (tcount [T], zero before the
 * launch, reset by it) reads them back and goes on as one block does; P = 1: neither is read. */
typedef struct CgCudaRouteFused {
    CgOpDesc post;           /* the ROUTE_POST descriptor                                   */
    bool wc_table;           /* wc is a device array of n_const pointers to each [2][D] Wc,
                                not the matrices stacked ("_wt" symbols)                   */
    moe_dtype wdtype;
    int64_t d, h1;           /* hidden size; the first layer's width (0: one-layer router)  */
    bool residual;
    double s;                /* the experts' input scale (alpha is computed from s·x)       */
    int threads;             /* a block's threads: whole warps, 32..1024 (0: 256; the GPU
                                tuner's knob, "_tN" symbols)                               */
    int split;               /* blocks a token at launch (grid.y; 0 or 1: one); not in the
                                text: cg_cuda_route_fused_split is the rule's              */
    CgOpDesc combine;        /* kind COMBINE ("_cmb" symbols): each block then also does its
                                token's MoE combine (COMBINE's y, u, vc; constants of the same
                                s, n_const and, with constants, weight dtype) and, with
                                combine.experts > 0 and off given, the last block to finish
                                the DISPATCH; otherwise kind 0 (none)                      */
} CgCudaRouteFused;
void  cg_cuda_route_fused_symbol(const CgCudaRouteFused *r, char *out, size_t n);
/* NULL with err set when the vectors do not fit one block's shared memory (then: the unfused path). */
char *cg_cuda_route_fused_source(const CgCudaRouteFused *r, char *err, size_t errlen);
void  cg_cuda_route_fused_launch(const CgCudaRouteFused *r, int64_t T, unsigned grid[3], unsigned block[3], size_t *smem);
/* The rule's blocks a token for T tokens: about CG_CUDA_ROUTE_SPLIT_BLOCKS blocks in all, none
 * with fewer rows than warps (1: one block a token, from CG_CUDA_ROUTE_SPLIT_BLOCKS tokens). */
#define CG_CUDA_ROUTE_SPLIT_BLOCKS 32
int   cg_cuda_route_fused_split(const CgCudaRouteFused *r, int64_t T);

/* The KV cache store: (long long T, const float *src, const int *pos, KV *cache), cache row pos[t]
 * = src row t (cols elements each) rounded to KV, the model's type dt as for ATTENTION (float, or u16
 * for bf16/f16); grid T, block 256. */
void  cg_cuda_kv_store_symbol(int64_t cols, moe_dtype dt, char *out, size_t n);
char *cg_cuda_kv_store_source(int64_t cols, moe_dtype dt);
/* Its form for rows of several sequences (a serving batch's step): (long long T, const float *k,
 * const float *v, const int *pos, const unsigned long long *kvs, const int *seq), grid (T, 2), block
 * 256: row t's key into kvs[2 seq[t]] and its value into kvs[2 seq[t] + 1], at row pos[t]. */
void  cg_cuda_kv_store_seqs_symbol(int64_t cols, moe_dtype dt, char *out, size_t n);
char *cg_cuda_kv_store_seqs_source(int64_t cols, moe_dtype dt);

/* ---- grouped GEMMs of the MoE experts ---------------------------------------------------------------
 * Routing as cg_llvm.h's CgRouting, on the device: off[E+1] (int64), perm[n_slots], gate_w[n_slots]
 * from DISPATCH. Expert weights stacked in their stored dtype, checkpoint layout:
 *   up   w_up   [E][2I][K=D]  (rows 0..I-1 give a, rows I..2I-1 give b)
 *   down w_down [E][D][K=I]
 * Kernel arguments:
 *   UP   (long long T, const float *x, const long long *off, const int *perm, const void *w_up,
 *         float *h)                h[s, I] = silu(a) * b, [a | b] = x[perm[s]] . W_up[g]^T
 *   DOWN (long long T, const float *h, const long long *off, const int *perm, const float *gate_w,
 *         const void *w_down, float *y)   y[perm[s], D] += gate_w[s] * (h[s] . W_down[g]^T)
 *   (stages >= 3, "a16": x and h are u16 of the weight dtype, UP's h too)
 * The down epilogue uses f32 atomicAdd into y (y holds the combine's output first): with top-k = 2 two
 * FFN picks of one token may land in either order, so the last bit of y is not deterministic.
 * Paths:
 *   MMA  bf16/f16 weights: mma.sync.m16n8k16 (sm_80+), f32 accumulators; tile BM x BN x BK, warps
 *        2 along M and 2 or 4 along N. Two forms:
 *        stages 2  activations f32, rounded to the weight dtype when staged into shared memory; the
 *                  next k tile's loads go through registers (the router's and dense linears)
 *        stages 3+ ("a16": the grouped UP/DOWN of 16-bit models) activations already 16-bit in memory
 *                  (UP: x rounded by the round16 kernel, its h written 16-bit for DOWN; the same
 *                  numbers as rounding on the way, SEMANTICS.md §4), a ring of `stages` k tiles in
 *                  dynamic shared memory filled by cp.async, fragments by ldmatrix.
 *   FMA  f32 math on f32 activations, weights of any dtype widened on load: plain FMA register tiles
 *        (each thread TM x TN outputs); f32 models, and the router of 16-bit ones (SEMANTICS.md §4).
 *   GEMV T <= CG_CUDA_GEMV_MAX_T (decode): one warp per output row (up: the a and b rows of one
 *        column) walking the groups that have slots, 16-byte weight loads, all slots of a group
 *        accumulated in registers; weight-bandwidth bound. Grid ceil(N / warps): no block is spent
 *        on the groups a decode step does not use. With one slot a pass (bm 1: the decode form)
 *        grid.y = T·k (linear: T) rows of blocks, one slot each (its group from off[]; slots past
 *        off[E], the zero-computation picks', return at once): the slots run side by side.
 *   LINEAR (long long T, const float *x, const void *w, float *out)   out[t, ldc] = x[t] . W^T, W [n][k]:
 *         a dense layer (experts = top_k = 1, no routing): the attention projections, the router's
 *         matrices and the lm_head, on the same three paths.
 * The M dimension of MMA/FMA is covered without a host round trip: grid.y = ceil(T*k / BM) + E tiles,
 * a block finds its (group, tile) by walking off[] and returns if it has none. */
#define CG_CUDA_GEMV_MAX_T 16

typedef enum { CG_CUDA_GEMM_UP, CG_CUDA_GEMM_DOWN, CG_CUDA_GEMM_LINEAR } cg_cuda_gemm_kind;
typedef enum { CG_CUDA_PATH_MMA, CG_CUDA_PATH_FMA, CG_CUDA_PATH_GEMV } cg_cuda_gemm_path;

typedef struct CgCudaGemm {
    cg_cuda_gemm_kind kind;
    cg_cuda_gemm_path path;
    moe_dtype wdtype;        /* DT_F32 (FMA/GEMV) or DT_BF16/DT_F16 (MMA/GEMV) */
    int64_t   experts;       /* E: FFN experts (groups)                        */
    int64_t   k_top;         /* top_k: bounds the slots, T*k                   */
    int64_t   n, k;          /* output columns (UP: I, the a/b width; DOWN: D), reduction length */
    int       bm, bn, bk;    /* MMA/FMA tile; GEMV: bm = slots of a group per pass over its weights
                                (1..16), bn = warps per block, bk = unroll of the k loop             */
    int64_t   ldc;           /* LINEAR: the output's row stride (0: n)           */
    bool      w_table;       /* UP/DOWN: the weight argument is a device array of E pointers, one
                                matrix per group wherever it lives (weights used in place, the
                                embedding library), not the E matrices stacked ("_wt" symbols)   */
    int       stages;        /* MMA: 2 (0 reads as 2) registers between k tiles; 3..6 (UP/DOWN) a
                                cp.async ring of k tiles in dynamic shared memory, activations
                                16-bit in memory (a16 below; "_s3" symbols)                      */
    bool      wgmma;         /* the cp.async form on sm_90a's warpgroup MMA (wgmma.mma_async
                                m64nNk16, A and B read from shared memory by descriptors): a
                                warpgroup per 64 rows, bm 64 or 128, bn <= 256 (UP: 128) ("_wg") */
    bool      tma;           /* wgmma with bk 64, weights stacked: W's k tiles come by the tensor
                                memory accelerator (cp.async.bulk.tensor, one thread, an mbarrier
                                per ring slot) into 128-byte-swizzled rows; the kernel takes a
                                last argument, the weights' CUtensorMap (cg_cuda_gemm_tma_map;
                                "_tma"); A comes so too, its map after W's
                                (cg_cuda_gemm_tma_map_a): DOWN's h, and UP's x gathered into
                                slot order, 16-bit, by the gather16 kernel first              */
    bool      gather_a;      /* UP, tma: A's rows gathered through perm by the threads' cp.async
                                (x 16-bit in token order, round16) instead of by the TMA ("_ga";
                                the form before 2026-12-05, an A/B)                             */
    bool      ws;            /* tma, split 0/1: warp-specialised and persistent ("_ws"). A producer
                                warpgroup fills the ring (W and A by the TMA from one thread;
                                gather_a: UP's A by its 128 threads' cp.async, each tile
                                published ST - 2 tiles later, once landed and fenced) and the
                                consumer warpgroups (one per 64 rows) take slots through full and
                                empty mbarriers: no block barrier in the k loop. Each block walks
                                tiles blockIdx.x, + gridDim.x, ... (M tiles of all groups, then N
                                tiles), the ring running on across tiles, so the producer fills
                                the next tile's first slots while the consumers' epilogue runs.
                                Register split by setmaxnreg (producer 40, consumers 232) with two
                                consumer warpgroups.                                           */
    int       persist;       /* ws: the blocks a launch keeps (the device's SMs times the blocks an
                                SM holds; the runtime's); 0: one block per tile. Not in the text */
    bool      stream_k;      /* DOWN, ws: a last wave of tiles that would leave more than a tenth
                                of the blocks idle is dealt out as k tiles instead (stream-K):
                                each block a contiguous run of that wave's tiles' k tiles, cut
                                where a tile ends, its partial sums added into y by the epilogue
                                as split-K's are; the whole waves before it run as tiles. (With
                                persist 0, blocks at least the tiles: all by stream-K.) ("_stk";
                                cg_cuda_gemm_persist)                                          */
    int       split;         /* DOWN: split-K, 2..16 blocks (grid.z) each reduce a slice of k (whole
                                k tiles; the GEMV's 8-element chunks) and add their partial
                                products into y with the epilogue's atomicAdd; 0/1 none ("_skS") */
    int64_t   seg[2];        /* LINEAR GEMV: several dense layers of one input in one launch (the
                                attention's q, k, v): rows [0, seg0) of (w, out), [seg0, seg0+seg1)
                                of a second matrix (w2, out2) and the rest of a third (w3, out3);
                                seg1 0: two matrices, the rest of the second. Each output's row
                                stride is its own width. Arguments (T, x, w, out, w2, out2, w3,
                                out3); {0, 0}: one matrix ("_sgA_B")                           */
} CgCudaGemm;

/* The default tile for the path: MMA 64x64x32 (UP computes a and b: 64x128 of W; DOWN 64x128), FMA
 * 64x64x16, GEMV 16 slots per pass, 4 warps, k unrolled 1 (UP: twice the sums) or 4 times. */
CgCudaGemm cg_cuda_gemm_default(cg_cuda_gemm_kind kind, cg_cuda_gemm_path path, moe_dtype wdtype,
                                int64_t experts, int64_t k_top, int64_t n, int64_t k);
/* The GEMV of one decode step (T = 1: one slot per group; right for any T, best at 1): one slot per
 * pass, so few registers hold sums, and the whole k loop unrolled (up to 16 loads per lane and
 * matrix in flight). */
CgCudaGemm cg_cuda_gemm_decode(const CgCudaGemm *gemv);
/* The cp.async form of an MMA UP/DOWN (a16, 3 stages, 128 x 128 of W per block, 8 warps). */
static inline bool cg_cuda_gemm_a16(const CgCudaGemm *g) { return g->path == CG_CUDA_PATH_MMA && g->stages >= 3; }
CgCudaGemm cg_cuda_gemm_async(const CgCudaGemm *mma);
/* The wgmma form (sm_90 only; its kernels compile for sm_90a): 128 x 128 of W per block (two
 * warpgroups), a ring of 5 k tiles of 64 (3 in flight, one multiplied while the last one's MMAs drain). */
CgCudaGemm cg_cuda_gemm_wgmma(const CgCudaGemm *mma);
/* sm_90's rule for the wgmma form with W by the TMA (the caller sets tma): two tiles, the winners of
 * the H200 database at the 7B's shapes (tuning/gpu-h200-moepp-7b.yaml): where a group has fewer rows
 * than CG_CUDA_TMA_LARGE_ROWS on average (`large` false), 64 rows by 128 columns (DOWN on a ring of 4,
 * so two blocks share an SM; UP's two matrices on the default 5); from there (`large`) 128 rows by
 * 128 columns (UP) or 256 (DOWN), rings of 4, DOWN's warp-specialised (ws; the caller clears it for
 * split-K and sets persist). Narrower where n is (UP below 128 columns: 64, DOWN below 256: 128).
 * cg_cuda_gemm_tma_large: whether T tokens' slots average that many rows a group. */
#define CG_CUDA_TMA_LARGE_ROWS 128
CgCudaGemm cg_cuda_gemm_tma(const CgCudaGemm *mma, bool large);
bool cg_cuda_gemm_tma_large(const CgCudaGemm *g, int64_t T);
/* A warp-specialised form's blocks (persist: `blocks`, the device's SMs; 0 where not known) and, for
 * DOWN, its last wave by stream-K unless `no_stream_k`; neither for any other form. */
void cg_cuda_gemm_persist(CgCudaGemm *g, int blocks, bool no_stream_k);
/* The tensor map a TMA kernel takes (its last argument, by value): the weights as one 2-D array of
 * u16, [experts x matrices x n rows][k], tiles of BN rows x 64 k, 128-byte swizzle, zeros past the
 * ends. rows/box for cg_cuda_tensor_map_2d. */
void cg_cuda_gemm_tma_map(const CgCudaGemm *g, uint64_t *rows, unsigned *box_rows);
/* A TMA kernel reads its A ([T * k_top slots][k] u16, rows in slot order: DOWN's h, UP's x gathered
 * by the gather16 kernel; not a gather_a UP) by the TMA too: a second tensor map after W's, its tiles
 * BM rows x 64 k, 128-byte swizzle, zeros past the ends; rows/box for cg_cuda_tensor_map_2d at T
 * tokens. False (no such map) for any other kernel. */
bool cg_cuda_gemm_tma_map_a(const CgCudaGemm *g, int64_t T, uint64_t *rows, unsigned *box_rows);
bool cg_cuda_gemm_tma_a(const CgCudaGemm *g); /* does g read A so (and take that map) */
/* In the source of a kernel that needs sm_90a (cg_cuda_compile looks for it). */
#define CG_CUDA_SM90A_MARK "#define MOEPPC_SM90A 1\n"
/* Dynamic shared memory a GEMM's launch needs (above 48 KB the launch opts in, cg_cuda_launch*). */
size_t cg_cuda_gemm_smem(const CgCudaGemm *g);
/* The kernel that rounds f32 activations to 16 bits for an a16 UP: (long long n, const float *x,
 * u16 *y), y[i] = x[i] rounded to nearest even in wdtype, n a multiple of 8; launch for n. */
void  cg_cuda_round16_symbol(moe_dtype wdtype, char *out, size_t n);
char *cg_cuda_round16_source(moe_dtype wdtype);
void  cg_cuda_round16_launch(int64_t n, unsigned grid[3], unsigned block[3]);
/* The same into slot order for a TMA UP (cg_cuda_gemm_tma_map_a): (long long slots, long long d,
 * long long e, const float *x, const long long *off, const int *perm, u16 *y), y's row s = x's row
 * perm[s] rounded, for the slots of the e groups' picks (s < off[e]; later rows are left as they
 * are: no output row reads them), d a multiple of 8; launch for `slots` rows of d. */
void  cg_cuda_gather16_symbol(moe_dtype wdtype, char *out, size_t n);
char *cg_cuda_gather16_source(moe_dtype wdtype);
void  cg_cuda_gather16_launch(int64_t slots, int64_t d, unsigned grid[3], unsigned block[3]);
const char *cg_cuda_gemm_path_name(cg_cuda_gemm_path p); /* "mma", "fma", "gemv" */
void  cg_cuda_gemm_symbol(const CgCudaGemm *g, char *out, size_t n);
char *cg_cuda_gemm_source(const CgCudaGemm *g, char *err, size_t errlen);
void  cg_cuda_gemm_launch(const CgCudaGemm *g, int64_t T, unsigned grid[3], unsigned block[3], size_t *smem);

/* ---- the decode MLP: a grouped UP and its DOWN in one launch ----------------------------------------
 * For a decode step (T = 1; right for any T, one slot a row of blocks): block (c, s) takes slot s's
 * group e and rows [c·rows, (c+1)·rows) of h, each silu(a)·b from W_up[e]'s rows as the GEMV makes
 * them (a warp a row, f32 sums), kept in shared memory; W_down[e]'s columns of those rows (DOWN's k
 * slice: d rows of `rows` weights) come by cp.async into shared memory from the block's start, so
 * that both matrices' share of the block streams at once; then y[perm[s]] += gate_w[s] ·
 * W_down[e][:, slice] · h[slice], four rows a reduction (red.global.add.v4.f32 on sm_90, atomics
 * elsewhere). What it saves against the two decode GEMVs: DOWN's launch, its ramp after UP's tail, h's
 * trip through memory; what it costs: d/4 reductions a block instead of d a slot. 16-bit weights,
 * stacked as the grouped GEMMs take them; d and i multiples of 8.
 *   (long long T, const float *x, const long long *off, const int *perm, const float *gate_w,
 *    const void *w_up, const void *w_down, float *y)      grid (ceil(i / rows), T·k_top), `warps` warps,
 *   d·rows·2 bytes of dynamic shared memory
 * x [T][d] as UP's, y [T][d] as DOWN's (holding y0 before). */
typedef struct CgCudaMlp {
    moe_dtype wdtype;
    int64_t experts, k_top;
    int64_t d, i;            /* UP's k and DOWN's n; UP's n (the a/b width) and DOWN's k        */
    int rows;                /* h's rows a block: 8, 16, 32 or 64 (0 in the rule: no such kernel) */
    int warps;               /* 1..32                                                          */
} CgCudaMlp;
/* The rule's: 8 warps, 32 rows (16 where d·64 bytes exceed 96 KB of shared memory, none where d·32
 * do: every target's opt-in holds the slice); rows 0 for f32 weights and d or i not multiples of 8. */
CgCudaMlp cg_cuda_mlp_rule(moe_dtype wdtype, int64_t experts, int64_t k_top, int64_t d, int64_t i);
void   cg_cuda_mlp_symbol(const CgCudaMlp *m, char *out, size_t n);  /* "moeppc_cu_gemm_mlp_..." */
char  *cg_cuda_mlp_source(const CgCudaMlp *m, char *err, size_t errlen); /* NULL with err when out of range */
size_t cg_cuda_mlp_smem(const CgCudaMlp *m);
void   cg_cuda_mlp_launch(const CgCudaMlp *m, int64_t T, unsigned grid[3], unsigned block[3], size_t *smem);

/* ---- the kernels of a spec ----------------------------------------------------------------------- */
/* Every distinct op and grouped-GEMM kernel a model of this spec needs (derived from the spec's shapes,
 * as the passes' final IR has them; GEMMs: the MMA or FMA path by dtype plus the GEMV path and its decode form). Arrays
 * are xmalloc'd; caller frees. */
struct ModelSpec;
void cg_cuda_spec_kernels(const struct ModelSpec *s, CgOpDesc **ops, int *n_ops, CgCudaGemm **gemms,
                          int *n_gemms);

/* ---- NVRTC ---------------------------------------------------------------------------------------- */
typedef struct CgCudaBinary {
    char   *ptx;           /* NUL-terminated PTX (NULL unless want_ptx)                         */
    size_t  ptx_len;       /* its text's bytes, the NUL not counted                             */
    void   *cubin;         /* cubin bytes for arch (NULL unless want_cubin)                     */
    size_t  cubin_len;
    char   *log;           /* NVRTC's program log (ptxas -v lines included with a cubin)          */
    double  compile_ms;    /* wall clock of nvrtcCompileProgram (both passes when both asked)    */
    bool    compiled;      /* compiled now, not taken from a cache (MOEPPC_NVRTC_CACHE, the emulator's) */
    /* From "ptxas info" lines (cubin only; -1 when not reported). */
    int     registers;
    int     smem_bytes;    /* static shared memory                                              */
    int     spill_stores, spill_loads;  /* bytes */
    /* ptxas's "(C7510) Potential Performance Loss: wgmma.mma_async instructions are serialized due
     * to ..." (an info line, not a warning): the reason, "" when the kernel's wgmmas pipeline */
    char    wgmma_serialized[160];
} CgCudaBinary;

/* Compile `source` (one kernel, named `name` for messages) for arch "sm_XX". want_cubin: SASS for that
 * exact arch with -Xptxas -v; want_ptx: PTX for compute_XX (JIT-able on newer GPUs). Options:
 * -std=c++17 -default-device, IEEE math (no --use_fast_math).
 * Arch "emu" (CG_CUDA_EMU_ARCH): for the CUDA emulator instead (cg_cuda_emu_compile; cubin only). */
bool cg_cuda_compile(const char *source, const char *name, const char *arch, bool want_cubin, bool want_ptx,
                     CgCudaBinary *out, char *err, size_t errlen);
void cg_cuda_binary_free(CgCudaBinary *b);

/* ---- the CUDA emulator (codegen/cuda/emu) ------------------------------------------------------------
 * libmoeppc_cudaemu.so stands in for libcuda.so.1 when MOEPPC_CUDA_DRIVER names it (cg_cuda_driver_open
 * below): it runs kernels compiled for arch "emu" on the CPU, every CUDA thread a fiber, so that the GPU
 * path's tests run where there is no GPU (semantics and limits: emu/cudaemu.c). cg_cuda_device_arch
 * says "emu" for it. cg_cuda_emu_compile compiles one kernel with the host's C++ compiler
 * (emu/emu_compile.c: cache folder, compiler); out->cubin is the image the emulator loads; no resource
 * report (-1). */
#define CG_CUDA_EMU_ARCH "emu"
bool cg_cuda_emu_compile(const char *source, const char *name, CgCudaBinary *out, char *err, size_t errlen);
/* b->cubin, an image of cg_cuda_emu_compile (the object's path), replaced by a self-contained one
 * carrying the object's bytes (what an emitted library embeds: the cache folder may vanish). */
bool cg_cuda_emu_embed(CgCudaBinary *b, char *err, size_t errlen);
/* "NVRTC x.y" or NULL with err set (the library's version call). */
bool cg_cuda_nvrtc_version(int *major, int *minor);
const char *cg_cuda_nvrtc_version_text(void); /* "NVRTC 13.0": what GPU tuning databases record */
/* Whether this NVRTC compiles for sm_XX (arch "sm_90": its number in nvrtcGetSupportedArchs). */
bool cg_cuda_nvrtc_supports(const char *arch);

/* ---- driver API (cuda_driver.c: dlopen("libcuda.so.1"), never linked) ---------------------------------
 * MOEPPC_CUDA_DRIVER in the environment names another library to open instead (the emulator). */
typedef struct CgCudaDriver CgCudaDriver;
/* Open the driver, cuInit, take device `ordinal`, create a context. NULL with err set: "no CUDA
 * driver (libcuda.so.1) on this machine" when the library is absent, else the driver's message. */
CgCudaDriver *cg_cuda_driver_open(int ordinal, char *err, size_t errlen);
/* Open the driver and cuInit only, no context on any device: for the queries of the devices below
 * (cg_cuda_device_count, cg_cuda_device_info, cg_cuda_driver_version) and close, nothing else. */
CgCudaDriver *cg_cuda_driver_probe(char *err, size_t errlen);
/* For a library inside someone else's CUDA program (embed/): retain the primary context (the CUDA
 * runtime's) of the device whose context is current on this thread, else of device 0; create no
 * stream: the asynchronous calls below go to the one cg_cuda_set_stream gives (NULL: the legacy
 * default stream). The context is not made current: bracket calls with cg_cuda_push / cg_cuda_pop.
 * Close unloads the modules it loaded and releases the context (memory is the caller's to free). */
CgCudaDriver *cg_cuda_driver_attach(char *err, size_t errlen);
void          cg_cuda_driver_close(CgCudaDriver *d);
void cg_cuda_set_stream(CgCudaDriver *d, void *stream);     /* a CUstream (= cudaStream_t); attached only */
bool cg_cuda_push(CgCudaDriver *d, char *err, size_t errlen); /* make the driver's context current      */
void cg_cuda_pop(CgCudaDriver *d);                          /* and restore the previous one           */
int  cg_cuda_device_ordinal(const CgCudaDriver *d);
/* What a pointer is to the driver (cuPointerGetAttribute): memory it does not know (plain host
 * memory, or garbage), page-locked host memory, device memory, managed memory; *ordinal is the
 * device it lives on (-1 when none). No synchronisation. */
typedef enum { CG_CUDA_MEM_UNKNOWN, CG_CUDA_MEM_PINNED, CG_CUDA_MEM_DEVICE, CG_CUDA_MEM_MANAGED } cg_cuda_mem;
cg_cuda_mem cg_cuda_pointer_memory(CgCudaDriver *d, uint64_t p, int *ordinal);
/* Device to device, ordered after the work of every stream that blocks on the legacy one. */
bool cg_cuda_copy(CgCudaDriver *d, uint64_t dst, uint64_t src, size_t bytes, char *err, size_t errlen);
/* Device memory as 64-bit addresses (CUdeviceptr). */
bool cg_cuda_alloc(CgCudaDriver *d, uint64_t *ptr, size_t bytes, char *err, size_t errlen);
void cg_cuda_free(CgCudaDriver *d, uint64_t ptr);
bool cg_cuda_upload(CgCudaDriver *d, uint64_t dst, const void *src, size_t bytes, char *err, size_t errlen);
bool cg_cuda_download(CgCudaDriver *d, void *dst, uint64_t src, size_t bytes, char *err, size_t errlen);
/* Load a cubin or PTX image and look up `name`; the module lives until the driver is closed. */
bool cg_cuda_function(CgCudaDriver *d, const void *image, const char *name, void **fn, char *err, size_t errlen);
/* Launch on the default stream and synchronise; args as cuLaunchKernel's kernelParams. */
bool cg_cuda_launch(CgCudaDriver *d, void *fn, const unsigned grid[3], const unsigned block[3], size_t smem,
                    void **args, char *err, size_t errlen);
/* The device's compute capability as "sm_XY" ("emu" for the emulator), its name, its free and total memory. */
void cg_cuda_device_arch(CgCudaDriver *d, char *out, size_t n);
void cg_cuda_device_name(CgCudaDriver *d, char *out, size_t n);
/* The devices d's driver has (`moeppc --version --verbose`): how many; device `ordinal`'s name,
 * architecture ("sm_90"; "emu" for the emulator's; "" when the driver does not say), SMs and memory
 * (0 when the driver does not say), no context made on it (false: no such device); the CUDA version
 * the driver supports (12040 for 12.4; 0 when it does not say). */
typedef struct CgCudaDeviceInfo {
    char   name[128], arch[16];
    int    sms;
    size_t bytes;
} CgCudaDeviceInfo;
int  cg_cuda_device_count(CgCudaDriver *d);
bool cg_cuda_device_info(CgCudaDriver *d, int ordinal, CgCudaDeviceInfo *out);
int  cg_cuda_driver_version(CgCudaDriver *d);
int  cg_cuda_device_sms(CgCudaDriver *d);                   /* its multiprocessors (1 if unknown)      */
bool cg_cuda_mem_info(CgCudaDriver *d, size_t *free_bytes, size_t *total_bytes);

/* The driver's one stream (non-blocking, created at open): launches, copies and fills queue on it
 * and return at once; errors of the work itself surface at cg_cuda_sync. A host source of an
 * asynchronous upload must stay valid until the next sync. Events time the stream; a capture turns
 * everything queued between begin and end into a CUDA graph (nothing runs while capturing), which
 * cg_cuda_graph_launch replays on the stream. */
bool cg_cuda_launch_async(CgCudaDriver *d, void *fn, const unsigned grid[3], const unsigned block[3], size_t smem,
                          void **args, char *err, size_t errlen);
/* The same with programmatic dependent launch when pdl (cuLaunchKernelEx, attribute
 * PROGRAMMATIC_STREAM_SERIALIZATION): the kernel may start while the one before it in the stream
 * still runs; every generated kernel waits for it before it reads anything a kernel before it writes,
 * and lets its dependents launch only after that wait (PDL_ENTRY: griddepcontrol on sm_90+; the
 * prelude in cuda_src.c states the contract). cg_cuda_can_pdl: the driver has cuLaunchKernelEx and
 * the GPU is sm_90 or newer (or the emulator, which checks the waits). */
bool cg_cuda_launch_async_pdl(CgCudaDriver *d, void *fn, const unsigned grid[3], const unsigned block[3], size_t smem,
                              void **args, bool pdl, char *err, size_t errlen);
bool cg_cuda_can_pdl(CgCudaDriver *d);
/* A tensor map (128 bytes at map, 64-byte aligned) of the u16 matrix [rows][inner] at device
 * address addr (rows `inner` elements apart), boxes of box_rows x box_inner, 128-byte swizzle when
 * swizzle128, zeros outside (cuTensorMapEncodeTiled; false with a message where the driver has no
 * tensor maps or refuses the shape). */
bool cg_cuda_tensor_map_2d(CgCudaDriver *d, void *map, uint64_t addr, uint64_t inner, uint64_t rows, unsigned box_inner,
                           unsigned box_rows, bool swizzle128, char *err, size_t errlen);
bool cg_cuda_sync(CgCudaDriver *d, char *err, size_t errlen);
bool cg_cuda_upload_async(CgCudaDriver *d, uint64_t dst, const void *src, size_t bytes, char *err, size_t errlen);
bool cg_cuda_copy_async(CgCudaDriver *d, uint64_t dst, uint64_t src, size_t bytes, char *err, size_t errlen);
bool cg_cuda_fill32_async(CgCudaDriver *d, uint64_t dst, uint32_t value, size_t count, char *err, size_t errlen);
bool cg_cuda_event_new(CgCudaDriver *d, void **ev, char *err, size_t errlen);
bool cg_cuda_event_record(CgCudaDriver *d, void *ev, char *err, size_t errlen);
/* Milliseconds between two recorded events (waits for `to`). */
bool cg_cuda_event_ms(CgCudaDriver *d, void *from, void *to, float *ms, char *err, size_t errlen);
void cg_cuda_event_free(CgCudaDriver *d, void *ev);
bool cg_cuda_capture_begin(CgCudaDriver *d, char *err, size_t errlen);
bool cg_cuda_capture_end(CgCudaDriver *d, void **exec, char *err, size_t errlen);
bool cg_cuda_graph_launch(CgCudaDriver *d, void *exec, char *err, size_t errlen);
void cg_cuda_graph_free(CgCudaDriver *d, void *exec);

#endif
