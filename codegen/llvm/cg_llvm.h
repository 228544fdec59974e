/* cg_llvm.h — CPU code generation through the LLVM C API: a grouped-GEMM kernel generator for MoE.
 *
 * In:  the host CPU (detected once: name + feature string; MOEPPC_ISA=avx512|avx2|sse or a parameter
 *      caps the vector ISA), a kernel configuration (B dtype f32/bf16/f16, register tile MR x NR,
 *      K unroll), weights W[N, K] in their stored dtype (PyTorch layout, y = x W^T), activations f32.
 * Out: a micro-kernel built as LLVM IR, optimised with "default<O3>" for the host's features and
 *      JIT-compiled with LLJIT (or written to an object file); drivers that run it as a plain GEMM
 *      C[M, N] (+)= A[M, K] W^T and as the two grouped GEMMs of an MoE layer (SwiGLU up-projection,
 *      gate-weighted scatter-add down-projection), parallel over N panels on a thread pool.
 * Memory: CgJit owns the LLVM context, target machines, the JIT and every kernel it compiled (kernels
 *      live until cg_jit_free). CgPackedB owns its panels (cg_packed_b_free); CgWork owns reusable
 *      scratch (cg_work_free); CgPool owns its threads (cg_pool_free). Inputs are borrowed, never kept.
 * Errors: functions that can fail return false/NULL and write the reason (LLVM's own message
 *      included) to err[errlen]; broken invariants (bad shapes passed by our own compiler) abort.
 * Threads: building kernels is not thread-safe (one CgJit per thread, or build before running);
 *      running kernels and drivers is.
 * Object files: cg_jit_kernel(..., obj_path) also writes the optimised module as an ELF object
 *      defining the kernel symbol (cg_kernel_symbol); link it into an executable like any C object
 *      (it has no dependencies beyond libc/libm) and call it with the cg_kernel_fn signature.
 */
#ifndef MOEPPC_CG_LLVM_H
#define MOEPPC_CG_LLVM_H

#include "support/support.h"

#include <stdbool.h>
#include <stdint.h>

/* ---- target ------------------------------------------------------------------------------- */
typedef enum {
    CG_ISA_AUTO,   /* widest present, unless MOEPPC_ISA says narrower */
    CG_ISA_SSE,    /* 4 x f32, no FMA (mul + add), f16 converted with integer ops */
    CG_ISA_AVX2,   /* 8 x f32, FMA, F16C */
    CG_ISA_AVX512, /* 16 x f32, FMA, F16C */
} cg_isa;

typedef struct CgTarget {
    char   cpu[64];        /* LLVMGetHostCPUName (may be wrong on new CPUs: the features decide) */
    char  *features;       /* host features, with everything above `isa` switched off at the end */
    cg_isa isa;            /* chosen ISA, never above what the host has */
    int    vec_width;      /* f32 lanes per vector: 16, 8 or 4 */
    bool   has_fma, has_f16c;
    bool   has_bf16_dot;   /* AVX512-BF16 (vdpbf16ps) with the AVX-512 ISA: CgKernelConfig.a_bf16 kernels */
    bool   has_amx;        /* AMX-TILE + AMX-BF16 with the AVX-512 ISA, and the kernel let this process use
                              the tiles (cg_amx_grant): CgKernelConfig.amx kernels */
} CgTarget;

const char *cg_isa_name(cg_isa isa); /* "avx512", "avx2", "sse" */
/* Of an LLVM feature string ("+avx2,-avx512f,+sha,…"), the vector extensions a kernel's code can use
 * under isa, present ("+"), sorted, comma-separated (malloc'd): sse*, ssse3, then avx*, fma, f16c for AVX2,
 * then avx512* and amx* for AVX-512. Hosts with the same CPU name and these run the same kernels alike;
 * the rest (sha, rdpid, shstk, …) is what virtual machines of one CPU model differ in. */
char *cg_vector_features(const char *features, cg_isa isa);
/* The widest ISA the host supports (ignores MOEPPC_ISA). */
cg_isa cg_host_isa(void);
/* Fill t for the host capped at max_isa (CG_ISA_AUTO reads MOEPPC_ISA). false on a bad MOEPPC_ISA. */
bool cg_target_detect(CgTarget *t, cg_isa max_isa, char *err, size_t errlen);
void cg_target_dispose(CgTarget *t);

/* ---- JIT and kernels ---------------------------------------------------------------------- */
typedef struct CgJit CgJit;

/* Detect the host, cap the ISA at `max_isa` (CG_ISA_AUTO: the env MOEPPC_ISA, else the widest),
 * and start an LLJIT for it. NULL with err filled on failure. */
CgJit          *cg_jit_new(cg_isa max_isa, char *err, size_t errlen);
void            cg_jit_free(CgJit *jit);
const CgTarget *cg_jit_target(const CgJit *jit);
const char     *cg_llvm_version(void); /* of the LLVM this was built with, e.g. "14.0.6" */
/* From now on also write every module jit optimises to DIR/SYMBOL.ll (NULL: stop). */
void            cg_jit_dump_ir(CgJit *jit, const char *dir);

typedef struct CgKernelConfig {
    moe_dtype b_dtype;  /* DT_F32, DT_BF16 or DT_F16 */
    int       mr, nr;   /* register tile: MR rows of A x NR columns of B (NR a multiple of vec_width) */
    int       k_unroll; /* k steps per loop iteration (remainder handled by a second loop) */
    bool      a_bf16;   /* bf16 weights times A rounded to bf16, both in k pairs, by vdpbf16ps (AVX512-BF16,
                           f32 accumulators): twice the f32 FMA's multiply-adds per instruction */
    bool      amx;      /* (with a_bf16) the same product on AMX tiles (tdpbf16ps): MR 1..16 rows (one A
                           tile) or 32 (two), NR 16 or 32 columns (one or two B tiles), K in blocks of 32;
                           A packed row-major a 32-k block at a time (see cg_kernel_fn) */
    bool      kpair_b;  /* (bf16, without a_bf16) f32 FMAs on B in k pairs, each pair widened to two f32
                           vectors, A in f32 as usual: every bf16 FMA kernel on AVX-512
                           (cg_kernel_form), among them the AMX kernels' few-row edges (decode), which
                           share their weights' packing (the drivers round their A to bf16 then, as
                           the AMX tiles') */
} CgKernelConfig;

/* The tile that fits the register file of jit's ISA: 8x48 on AVX-512, 6x16 on AVX2, 4x8 on SSE. */
CgKernelConfig cg_kernel_config_default(const CgJit *jit, moe_dtype b_dtype);
/* The same for a target detected without a JIT (what the passes' rule takes for this host). */
CgKernelConfig cg_target_default_tile(const CgTarget *t, moe_dtype b_dtype);
/* Does this CPU run vdpbf16ps at least 1.5 times as many multiply-adds per second as f32 FMAs (AMD
 * Zen 4: 2x; Intel Sapphire Rapids: about 0.5x, PERFORMANCE.md)? Measured once (a few ms) on the
 * first call; false without AVX512-BF16 or when ISA is capped below AVX-512. MOEPPC_BF16_DOT=1 or 0
 * overrides the measurement (1 still needs the instruction). */
bool cg_bf16_dot_pays(const CgTarget *t);
/* That measured ratio (0 without AVX512-BF16 at the AVX-512 ISA). */
double cg_bf16_dot_ratio(const CgTarget *t);
/* An AMX kernel (has_amx) of mr x nr if it is one (mr 1..16 or 32, nr 16 or 32), else 32 x 32. */
CgKernelConfig cg_kernel_config_amx(int mr, int nr);
/* Ask Linux once for this process's use of the AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM); the
 * answer is kept. An AMX instruction before a grant kills the process, so every path that runs an
 * AMX kernel (the drivers below) asks first. False off Linux/x86-64 or where the kernel refuses. */
bool cg_amx_grant(void);
/* The tile mr x nr if jit's ISA holds it in registers (nr a multiple of the vector width, the
 * accumulators within the register file), else the default; mr, nr = 0: the default. k_unroll in
 * 1..16 is kept, else (0) the default's. */
CgKernelConfig cg_kernel_config_tile(const CgJit *jit, moe_dtype b_dtype, int mr, int nr, int k_unroll);
/* The form target t runs cfg in: on AVX-512, bf16 weights times f32 A (neither a_bf16 nor amx) take the
 * k-pair form (kpair_b), whose widening is one op a vector where the plain form's is two (a zero
 * extension and a shift), and those ops share Intel's two FMA ports (8x48 in cache, one Intel core:
 * 131-137 -> 151-155 GFLOP/s; the same products in the same order, so the same results); else cfg. */
CgKernelConfig cg_kernel_form(const CgTarget *t, CgKernelConfig cfg);
/* Are cfg's weights packed in k pairs (cg_pack_b's kpair): the dot product's, AMX's and kpair_b's? */
bool cg_kernel_kpair(const CgKernelConfig *cfg);

/* The generated micro-kernel (symbol cg_kernel_symbol):
 *   for i < MR, j < NR:  c[i*ldc + j] = (beta ? c[i*ldc + j] : 0) + sum_{k < kc} ap[k*MR + i] * B(k, j)
 * ap: packed A, kc x MR (k-major, the MR rows of a tile interleaved; padded rows are zero).
 * bp: one panel of packed B, kc x NR in the stored dtype (k-major, see CgPackedB); B(k, j) is
 *     bp[k*NR + j] converted to f32 after loading (bf16: shift left 16; f16: fpext or integer ops).
 * The kernel always computes the full MR x NR tile; drivers handle edges by zero padding.
 * a_bf16 kernels take ap as kc/2 (rounded up) x MR 32-bit words, word (p, i) = the bf16 of A(2p, i)
 * in its low half and of A(2p+1, i) in its high half, and bp in k pairs likewise (see CgPackedB);
 * an odd kc's last pair holds zeros in its high halves.
 * amx kernels take the same words in another order: for each block of 16 pairs (32 k steps), MR rows
 * of 16 words, row i's at [(p/16)*MR*16 + i*16 + p%16] (a tile's rows, 64 bytes apart); they run
 * ceil(kc/32) blocks, so the words past kc up to the block's end must be zeros (in B too: kpair
 * panels pad K to a multiple of 32).
 * pf, pf_shift: what the FMA and dot-product kernels prefetch into L2 as they go: for the bytes of
 * bp they read at offset o, the line at pf + (o >> pf_shift) (pf = bp + CG_B_PREFETCH, shift 0: their
 * own weights ahead; or a 2^-pf_shift share of the panel a driver reads next; never dereferenced, so
 * any address). The AMX kernels prefetch their own panel ahead: they ignore both. */
typedef void (*cg_kernel_fn)(int64_t kc, const float *ap, const void *bp, float *c, int64_t ldc,
                             int32_t beta, const void *pf, int64_t pf_shift);
/* The bytes ahead of B a kernel's own prefetch runs (pf = bp + CG_B_PREFETCH). */
#define CG_B_PREFETCH 4096

typedef struct CgKernel {
    CgKernelConfig cfg;
    cg_kernel_fn   fn;
    char           symbol[64];
    double         compile_ms; /* build + O3 + codegen + link, wall clock */
} CgKernel;

void cg_kernel_symbol(const CgKernelConfig *cfg, cg_isa isa, char *out, size_t outlen);
/* The kernel for cfg, compiled on first request and cached in jit. When obj_path is not NULL the
 * optimised module is also written there as an object file (even if the kernel was cached). */
const CgKernel *cg_jit_kernel(CgJit *jit, const CgKernelConfig *cfg, const char *obj_path,
                              char *err, size_t errlen);
/* The kernel's optimised LLVM IR as text (xmalloc'd; caller frees), for inspection and tests. */
char *cg_kernel_ir_text(CgJit *jit, const CgKernelConfig *cfg, char *err, size_t errlen);

/* ---- packed weights ----------------------------------------------------------------------- */
/* W[N, K] (row n = output column n) cut into panels of NR columns, each K-major:
 *   data + p*panel_bytes holds element (k, j) at [k*NR + j] = W[p*NR + j, k], zero when p*NR+j >= N.
 * The dtype is kept (bf16/f16 stay 2 bytes). SwiGLU packing takes W_up[2I, K] and puts rows a and b
 * of the same output column in the same panel: panel p = a rows p*NR/2 .. +NR/2, then the same b rows
 * (b = rows I..2I-1), so one tile pass yields both halves. Panels are 64-byte aligned. */
typedef struct CgPackedB {
    moe_dtype dtype;
    int       nr;
    bool      swiglu;      /* n = 2I, panels interleave a and b halves */
    bool      kpair;       /* bf16 in k pairs for a_bf16 kernels: (k, j) at [k/2][NR][k%2], K padded with
                              zeros to a multiple of 32 (the AMX kernels' k block; the others read kc) */
    int64_t   n, k;        /* logical shape of W */
    int64_t   n_panels;
    size_t    panel_bytes; /* K (kpair: rounded up to even) * NR * dtype_size, rounded up to 64 */
    void     *data;        /* [n_panels][K][NR] */
} CgPackedB;

void cg_pack_b(CgPackedB *out, const void *w, moe_dtype dtype, int64_t n, int64_t k, int nr, bool kpair);
void cg_pack_b_swiglu(CgPackedB *out, const void *w_up, moe_dtype dtype, int64_t two_i, int64_t k,
                      int nr, bool kpair);
/* The same in two steps, so that threads can share the work: cg_pack_b_alloc sizes out (swiglu: W_up
 * [2I, K] as above), then cg_pack_b_fill packs panels p0 .. p1 - 1 of w into it, any ranges in any
 * order (each panel's padding zeroed with it). */
void cg_pack_b_alloc(CgPackedB *out, moe_dtype dtype, int64_t n, int64_t k, int nr, bool kpair, bool swiglu);
/* cg_pack_b_alloc in two: the form alone (data NULL), then memory for the panels (or the caller
 * points data at cg_packed_b_bytes of its own, 64-byte aligned: a panel cache's file). */
void cg_pack_b_size(CgPackedB *out, moe_dtype dtype, int64_t n, int64_t k, int nr, bool kpair, bool swiglu);
void cg_pack_b_alloc_data(CgPackedB *b);
size_t cg_packed_b_bytes(const CgPackedB *b);
/* The panels' layout (pack.c's order of bytes for a form): a panel cache's files (runtime/cpu/
 * panel_cache.c) are keyed by it, so change it whenever that order changes. */
#define CG_PANEL_LAYOUT 1
void cg_pack_b_fill(CgPackedB *b, const void *w, int64_t p0, int64_t p1);
/* The same for a W held in two parts: rows 0 .. rows_lo - 1 at w, the rest at w_hi (w_hi NULL: all
 * at w), e.g. a Mixtral expert's w1 and w3 read in place as its [2I, K] up projection; each part's
 * first skip rows left out (row r at w + (r - skip)·K, or at w_hi + (r - rows_lo - skip)·K): a W made
 * a few panels at a time, only the rows cg_pack_b_source_rows names, with skip its first. */
void cg_pack_b_fill_parts(CgPackedB *b, const void *w, const void *w_hi, int64_t rows_lo, int64_t skip, int64_t p0,
                          int64_t p1);
/* The rows of W that panels p0 .. p1 - 1 of b read: rows[0] .. rows[1] - 1, and for swiglu also
 * rows[2] .. rows[3] - 1 (the b half's: I + the a half's; an empty range otherwise). */
void cg_pack_b_source_rows(const CgPackedB *b, int64_t p0, int64_t p1, int64_t rows[4]);
void cg_packed_b_free(CgPackedB *b);

/* ---- thread pool: CgPool, support.h (pool.c) ------------------------------------------------ */

/* ---- drivers ------------------------------------------------------------------------------ */
/* Reusable scratch (packed A, per-thread tiles, the groups' first tiles); grows on demand,
 * zero-initialise it. A borrowed CgWork (cg_work_borrow) lives in caller memory and never grows:
 * a call needing more than cg_work_need said is a broken invariant. */
typedef struct CgWork {
    float   *a_packed;
    size_t   a_cap;      /* floats */
    float   *tiles;
    size_t   tiles_cap;  /* floats */
    int64_t *tile_off;
    size_t   tile_off_cap;
    float   *h_packed;   /* cg_moe_ffn: h in the down-projection's packed tiles */
    size_t   h_cap;      /* floats */
    int64_t *h_tile_off;
    size_t   h_tile_off_cap;
    bool     borrowed;
} CgWork;
void cg_work_free(CgWork *w);       /* frees what it owns; a borrowed one is only forgotten */

/* Blocking: K in blocks of kc (0: whole K in one pass), M in blocks of mc rows (multiple of MR).
 * edge: kernels of fewer rows (same NR and B dtype, MR descending; NULL after the last) for the rows
 * of a group past its last whole MR tile, packed as tiles of their own MR: none, and those rows are
 * zero-padded to a whole tile (a decode step's one row then costs MR rows). */
enum { CG_GEMM_EDGES = 3 };
typedef struct CgBlocking {
    int64_t kc, mc;
    const CgKernel *edge[CG_GEMM_EDGES];
} CgBlocking;
/* blk->edge: kern's edge kernels — MR 4, 2 and, for 16-bit weights, 1 (AMX: 16, 4, 1), below kern's MR, of its
 * panel width, dtype and unroll — from get (the JIT, or a table of compiled kernels). One that get
 * cannot give, or gives of another tile, leaves blk without edges (rows padded): false then. */
typedef const CgKernel *(*cg_kernel_get)(void *ctx, const CgKernelConfig *cfg);
bool cg_blocking_edges(CgBlocking *blk, const CgKernel *kern, cg_kernel_get get, void *ctx);
CgBlocking cg_blocking_default(const CgKernel *kern);
/* The blocking a configuration asks for on K columns: kc (0 or >= K: one pass), mc rows (0: the
 * default; else rounded up to MR, at most 65536). The executor and the tuner share it. */
CgBlocking cg_blocking_make(const CgKernel *kern, int64_t kc, int64_t mc, int64_t K);
/* cg_blocking_edges from jit. False (err) if one cannot be built. */
bool cg_jit_edges(CgJit *jit, const CgKernel *kern, CgBlocking *blk, char *err, size_t errlen);

/* What a driver call needs in a CgWork: cg_work_need raises need to cover a call of kern with blk
 * on `threads` threads over up to m rows in n_groups groups of K columns. */
typedef struct CgWorkNeed {
    size_t a_floats, tile_floats, n_tile_off, h_floats;
} CgWorkNeed;
void   cg_work_need(CgWorkNeed *need, const CgKernel *kern, const CgBlocking *blk, int threads, int64_t m,
                    int64_t n_groups, int64_t K);
/* ... and for a cg_moe_ffn call of up (up_blk) and down (down_blk) on up to m slots of n_groups groups,
 * x of D columns and h of `inter`. */
void   cg_work_need_ffn(CgWorkNeed *need, const CgKernel *up, const CgBlocking *up_blk, const CgKernel *down,
                        const CgBlocking *down_blk, int threads, int64_t m, int64_t n_groups, int64_t D,
                        int64_t inter);
size_t cg_work_need_bytes(const CgWorkNeed *need);  /* five 64-byte aligned blocks (the last two empty without h) */
/* Use mem (64-byte aligned, cg_work_need_bytes(need) bytes) from now on; what w owned is freed. */
void   cg_work_borrow(CgWork *w, void *mem, const CgWorkNeed *need);

/* C[M, N] (+)= A[M, K] . W^T, A row-major with stride lda, C with ldc; b packed without swiglu. */
void cg_gemm(const CgKernel *kern, const CgBlocking *blk, CgPool *pool, CgWork *work, int64_t m,
             const float *a, int64_t lda, const CgPackedB *b, float *c, int64_t ldc,
             bool accumulate);

/* C_q[M, N_q] = A[M, K] . W_q^T for q < n (at most CG_GEMM_MULTI) matrices of one A, as n cg_gemm
 * calls compute them, in one call: A packed once and the panels of all n spread over the threads
 * together (a layer's Q, K and V projections: one pool dispatch instead of three at a decode step).
 * Each b[q] packed without swiglu for kern, of the same K (N_q may differ); ldc[q] C_q's row stride. */
#define CG_GEMM_MULTI 4
void cg_gemm_multi(const CgKernel *kern, const CgBlocking *blk, CgPool *pool, CgWork *work, int64_t m,
                   const float *a, int64_t lda, int n, const CgPackedB *const *b, float *const *c,
                   const int64_t *ldc);
/* Whether kernel b (blocking bb) takes A packed as kernel a (blocking ba) packs it: the same rows and
 * form, kernel and edges alike, and panels no wider (the per-thread tiles are a's). */
bool cg_gemm_packs_alike(const CgKernel *a, const CgBlocking *ba, const CgKernel *b, const CgBlocking *bb);
/* cg_gemm_multi with each matrix on its own kernel and blocking (kern[q], blk[q]; each packs A alike
 * with kern[0], cg_gemm_packs_alike; A packed once by kern[0] and blk[0]'s blocking of K and rows): a
 * router's W1 and its constants' narrow Wc, say. */
void cg_gemm_multi_kernels(const CgKernel *const *kern, const CgBlocking *const *blk, CgPool *pool, CgWork *work,
                           int64_t m, const float *a, int64_t lda, int n, const CgPackedB *const *b, float *const *c,
                           const int64_t *ldc);

/* Tokens grouped by expert: group g owns slots off[g] .. off[g+1]-1; slot s is token perm[s] with
 * gate weight gate_w[s]. A token appears at most once per group (top-k picks distinct experts). */
typedef struct CgRouting {
    int64_t        n_groups;
    const int64_t *off;    /* [n_groups + 1], off[0] = 0 */
    const int32_t *perm;   /* [n_slots] token index */
    const float   *gate_w; /* [n_slots] */
} CgRouting;

/* h[s, I] = silu(a) * b with [a | b] = x[perm[s]] . W_up[g]^T, for every slot s of every group g.
 * x: [T, K] f32; w_up: n_groups packed SwiGLU weights [2I, K]; h: [n_slots, I] f32. */
void cg_moe_up_swiglu(const CgKernel *kern, const CgBlocking *blk, CgPool *pool, CgWork *work,
                      const CgRouting *r, const float *x, const CgPackedB *w_up, float *h);
/* out[perm[s], D] += gate_w[s] * (h[s] . W_down[g]^T) for every slot s of every group g.
 * h: [n_slots, I]; w_down: n_groups packed [D, I]; out: [T, D], accumulated (zero it first). */
void cg_moe_down_scatter(const CgKernel *kern, const CgBlocking *blk, CgPool *pool, CgWork *work,
                         const CgRouting *r, const float *h, const CgPackedB *w_down, float *out);
/* Whether cg_moe_ffn can hand `inter` columns of h to down (blocking blk): its kernels read A as f32
 * words or bf16 pairs, all alike, with no padding words (not AMX tiles). */
bool cg_moe_ffn_packs_h(const CgKernel *down, const CgBlocking *blk, int64_t inter);
/* cg_moe_up_swiglu (up, up_blk) then cg_moe_down_scatter (down, down_blk) in one call, h never stored
 * as f32 rows: the up-projection's epilogue writes it straight into the down-projection's packed tiles
 * (as its kernels read them), which do not pack it again: in room (room_floats floats of the caller's,
 * say where the two calls' h would lie; not overlapping x) where they fit, else in work's h_packed.
 * The same numbers as the two calls (bf16 pairs rounded as the down-projection's pack rounds them).
 * down passes cg_moe_ffn_packs_h for w_down's K, which is w_up's N / 2. */
void cg_moe_ffn(const CgKernel *up, const CgBlocking *up_blk, const CgKernel *down, const CgBlocking *down_blk,
                CgPool *pool, CgWork *work, const CgRouting *r, const float *x, const CgPackedB *w_up,
                const CgPackedB *w_down, float *out, float *room, size_t room_floats);

#endif
