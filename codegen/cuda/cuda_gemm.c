/* cuda_gemm.c — CUDA C for the grouped GEMMs of the MoE experts (cg_cuda.h: UP with the SwiGLU
 * epilogue, DOWN with the gate-weighted scatter-add), three paths: tensor-core MMA (bf16/f16),
 * f32 FMA tiles, and the decode GEMV. Every shape and tile is a compile-time constant. */
#include "codegen/cuda/cuda_internal.h"

#include <string.h>

#define FMA_THREADS 256 /* 16 x 16 threads */

const char *cg_cuda_gemm_path_name(cg_cuda_gemm_path p)
{
    return p == CG_CUDA_PATH_MMA ? "mma" : p == CG_CUDA_PATH_FMA ? "fma" : "gemv";
}

CgCudaGemm cg_cuda_gemm_default(cg_cuda_gemm_kind kind, cg_cuda_gemm_path path, moe_dtype wdtype, int64_t experts,
                                int64_t k_top, int64_t n, int64_t k)
{
    CgCudaGemm g = {.kind = kind, .path = path, .wdtype = wdtype, .experts = experts, .k_top = k_top, .n = n, .k = k};
    switch (path) {
    case CG_CUDA_PATH_MMA: /* measured on an H200 (7B layer, T = 512 and 4096): 64x128 wins for DOWN */
        g.bm = 64, g.bn = kind == CG_CUDA_GEMM_DOWN && n >= 128 ? 128 : 64, g.bk = 32;
        break;
    case CG_CUDA_PATH_FMA: g.bm = 64, g.bn = 64, g.bk = 16; break;
    case CG_CUDA_PATH_GEMV: g.bm = CG_CUDA_GEMV_MAX_T, g.bn = 4, g.bk = kind == CG_CUDA_GEMM_UP ? 1 : 4; break;
    }
    return g;
}

CgCudaGemm cg_cuda_gemm_async(const CgCudaGemm *mma)
{
    CgCudaGemm g = *mma;
    g.stages = 3, g.bm = 128, g.bn = g.kind == CG_CUDA_GEMM_UP ? 64 : 128, g.bk = 32, g.wgmma = false;
    return g;
}

CgCudaGemm cg_cuda_gemm_wgmma(const CgCudaGemm *mma)
{
    CgCudaGemm g = cg_cuda_gemm_async(mma);
    g.wgmma = true, g.stages = 5, g.bk = 64; /* 3 tiles in flight, one being multiplied, one draining */
    return g;
}

CgCudaGemm cg_cuda_gemm_tma(const CgCudaGemm *mma, bool large)
{
    CgCudaGemm g = cg_cuda_gemm_wgmma(mma);
    bool up = g.kind == CG_CUDA_GEMM_UP;
    g.bm = large ? 128 : 64;
    g.bn = up ? (g.n >= 128 ? 128 : 64) : large && g.n >= 256 ? 256 : 128;
    if (large || !up) g.stages = 4;
    g.ws = large && !up; /* (the caller: not with split-K; its blocks, persist) */
    return g;
}

bool cg_cuda_gemm_tma_large(const CgCudaGemm *g, int64_t T)
{
    return T * g->k_top >= (int64_t)CG_CUDA_TMA_LARGE_ROWS * g->experts;
}

void cg_cuda_gemm_persist(CgCudaGemm *g, int blocks, bool no_stream_k)
{
    g->persist = g->ws && blocks > 0 ? blocks : 0;
    g->stream_k = g->ws && g->kind == CG_CUDA_GEMM_DOWN && !no_stream_k; /* (also where blocks are not known:
                                                                            a build's kernels) */
}

/* The GEMV's k elements per split (8-element chunks dealt evenly; all of k / 8 * 8 unsplit). */
static int64_t split_chunk(const CgCudaGemm *g)
{
    int64_t chunks = g->k / 8, s = g->split > 1 ? g->split : 1;
    return (chunks + s - 1) / s * 8;
}

CgCudaGemm cg_cuda_gemm_decode(const CgCudaGemm *gemv)
{
    CgCudaGemm g = *gemv;
    int64_t iters = (split_chunk(&g) + 255) / 256; /* 16-byte loads per lane and matrix */
    g.bm = 1;
    g.bk = (int)(iters < 1 ? 1 : iters > 16 ? 16 : iters);
    return g;
}

void cg_cuda_gemm_symbol(const CgCudaGemm *g, char *out, size_t n)
{
    static const char *kinds[] = {"up", "down", "linear"};
    int w = snprintf(out, n, "moeppc_cu_gemm_%s_%s_%s_e%lld_k%lld_n%lld_k%lld_t%dx%dx%d", kinds[g->kind],
                     cg_cuda_gemm_path_name(g->path), dtype_name(g->wdtype), (long long)g->experts,
                     (long long)g->k_top, (long long)g->n, (long long)g->k, g->bm, g->bn, g->bk);
    if (g->ldc && g->ldc != g->n && w > 0 && (size_t)w < n) w += snprintf(out + w, n - (size_t)w, "_ld%lld", (long long)g->ldc);
    if (g->stages >= 3 && w > 0 && (size_t)w < n) w += snprintf(out + w, n - (size_t)w, "_s%d", g->stages);
    if (g->wgmma && w > 0 && (size_t)w < n) w += snprintf(out + w, n - (size_t)w, "_wg");
    if (g->tma && w > 0 && (size_t)w < n) w += snprintf(out + w, n - (size_t)w, "_tma");
    if (g->gather_a && w > 0 && (size_t)w < n) w += snprintf(out + w, n - (size_t)w, "_ga");
    if (g->ws && w > 0 && (size_t)w < n) w += snprintf(out + w, n - (size_t)w, "_ws");
    if (g->stream_k && w > 0 && (size_t)w < n) w += snprintf(out + w, n - (size_t)w, "_stk");
    if (g->split > 1 && w > 0 && (size_t)w < n) w += snprintf(out + w, n - (size_t)w, "_sk%d", g->split);
    if (g->w_table && w > 0 && (size_t)w < n) w += snprintf(out + w, n - (size_t)w, "_wt");
    if (g->seg[0] && w > 0 && (size_t)w < n)
        snprintf(out + w, n - (size_t)w, "_sg%lld_%lld", (long long)g->seg[0], (long long)g->seg[1]);
}

/* Warps of an MMA block: 2 along M, and along N 4 when the block's outputs (both matrices of UP)
 * are 128 or more columns wide, else 2. */
static int mma_warps_n(const CgCudaGemm *g)
{
    return g->bn * (g->kind == CG_CUDA_GEMM_UP ? 2 : 1) >= 128 ? 4 : 2;
}

/* (ws: a producer warpgroup before the consumers) */
static int mma_threads(const CgCudaGemm *g)
{
    return g->wgmma ? 128 * (g->bm / 64 + (g->ws ? 1 : 0)) : 64 * mma_warps_n(g);
}

/* Shared memory of the MMA path: `stages` k tiles of A and B (two for the register form, static),
 * 16-bit, rows padded by 8 halves (16 bytes: ldmatrix's eight row addresses hit distinct banks). */
static long mma_smem(const CgCudaGemm *g)
{
    if (g->wgmma) /* no padding: wgmma reads 8 x 16-byte core matrices; TMA: 1 KB to align the ring, mbarriers
                     (ws: a full and an empty one a slot) */
        return (long)g->stages * (g->bm + (g->kind == CG_CUDA_GEMM_UP ? 2 : 1) * g->bn) * g->bk * 2 +
               (g->tma ? 1024 + (g->ws ? 16L : 8L) * g->stages : 0);
    return (long)(g->stages >= 3 ? g->stages : 2) * (g->bm + (g->kind == CG_CUDA_GEMM_UP ? 2 : 1) * g->bn) * (g->bk + 8) * 2;
}

/* The most dynamic shared memory a block may opt in to (sm_90; sm_80 163 KB, sm_86/89 99 KB: the
 * tuner's compile for the target finds those). */
#define MMA_SMEM_MAX (227 * 1024)

size_t cg_cuda_gemm_smem(const CgCudaGemm *g) { return cg_cuda_gemm_a16(g) ? (size_t)mma_smem(g) : 0; }

void cg_cuda_gemm_tma_map(const CgCudaGemm *g, uint64_t *rows, unsigned *box_rows)
{
    *rows = (uint64_t)g->experts * (g->kind == CG_CUDA_GEMM_UP ? 2 : 1) * (uint64_t)g->n;
    *box_rows = (unsigned)g->bn;
}

bool cg_cuda_gemm_tma_a(const CgCudaGemm *g)
{
    return g->tma && (g->kind == CG_CUDA_GEMM_DOWN || (g->kind == CG_CUDA_GEMM_UP && !g->gather_a));
}

bool cg_cuda_gemm_tma_map_a(const CgCudaGemm *g, int64_t T, uint64_t *rows, unsigned *box_rows)
{
    if (!cg_cuda_gemm_tma_a(g)) return false;
    *rows = (uint64_t)T * (uint64_t)g->k_top;
    *box_rows = (unsigned)g->bm;
    return true;
}

static bool check(const CgCudaGemm *g, char *err, size_t errlen)
{
    const char *why = NULL;
    bool half = g->wdtype == DT_BF16 || g->wdtype == DT_F16;
    if (g->experts <= 0 || g->k_top <= 0 || g->n <= 0 || g->k <= 0) why = "experts, top_k, n and k must be positive";
    else if (!half && g->wdtype != DT_F32) why = "weights must be f32, bf16 or f16";
    else if (g->path == CG_CUDA_PATH_MMA && (!half || g->k % 8))
        why = "the MMA path needs bf16/f16 weights and k a multiple of 8 (16-byte rows)";
    else if (g->wgmma && (g->path != CG_CUDA_PATH_MMA || g->stages < 3))
        why = "wgmma: the cp.async form of the MMA path (stages >= 3)";
    else if (g->wgmma && ((g->bm != 64 && g->bm != 128) || g->bn % 8 || g->bn < 8 ||
                          (g->kind == CG_CUDA_GEMM_UP ? 2 : 1) * g->bn > 256 || g->bk % 16 || g->bk > 128))
        why = "wgmma tile: bm 64 or 128 (a warpgroup per 64 rows), bn a multiple of 8 up to 256 (UP: 128), bk of 16 up to 128";
    else if (g->path == CG_CUDA_PATH_MMA && !g->wgmma &&
             (g->bm % 32 || g->bn % (8 * mma_warps_n(g)) || g->bk % 16 || g->bm > 128 || g->bn > 128 || g->bk > 64))
        why = "MMA tile: bm a multiple of 32, bn of 8 x its warps along N, bk of 16; bm, bn <= 128, bk <= 64";
    else if (g->stages != 0 && (g->stages < 2 || g->stages > 6 || g->path != CG_CUDA_PATH_MMA))
        why = "pipeline stages: 2..6, on the MMA path";
    else if (g->stages >= 3 && g->kind == CG_CUDA_GEMM_LINEAR)
        why = "the cp.async form (stages >= 3) is for the grouped UP/DOWN (their activations 16-bit)";
    else if (g->stages >= 3 && g->kind == CG_CUDA_GEMM_UP && g->n % 8)
        why = "the cp.async form of UP writes h 16-bit for DOWN: n must be a multiple of 8";
    else if (g->path == CG_CUDA_PATH_MMA && g->stages < 3 && mma_smem(g) > 48 * 1024)
        why = "MMA tile: its two k tiles need more than 48 KB of shared memory";
    else if (g->path == CG_CUDA_PATH_MMA && mma_smem(g) > MMA_SMEM_MAX)
        why = "MMA tile: its k tiles need more than 227 KB of shared memory";
    else if (g->path == CG_CUDA_PATH_FMA && (g->bm % 16 || g->bn % 16 || g->bk <= 0))
        why = "the FMA path needs bm, bn multiples of 16";
    else if (g->path == CG_CUDA_PATH_GEMV && (g->bn <= 0 || g->bn > 32)) why = "GEMV: 1..32 warps";
    else if (g->path == CG_CUDA_PATH_GEMV && (g->bm <= 0 || g->bm > CG_CUDA_GEMV_MAX_T || g->bk <= 0 || g->bk > 32))
        why = "GEMV: 1..16 slots per pass and a k unroll of 1..32";
    else if (g->kind == CG_CUDA_GEMM_LINEAR && (g->experts != 1 || g->k_top != 1))
        why = "a linear layer is one group of one pick per token";
    else if (g->tma && (!g->wgmma || g->bk != 64 || g->w_table || g->bn > 256))
        why = "TMA: the wgmma form with bk 64 (a 128-byte row of k) and the weights stacked, not a table";
    else if (g->gather_a && (!g->tma || g->kind != CG_CUDA_GEMM_UP))
        why = "gather_a: a TMA UP's A gathered by cp.async instead of by the TMA";
    else if (g->ws && (!g->tma || g->split > 1))
        why = "warp-specialised (ws): the TMA form, not split-K";
    else if (g->persist < 0 || (g->persist && !g->ws)) why = "persist: a block count of the warp-specialised form";
    else if (g->stream_k && (g->kind != CG_CUDA_GEMM_DOWN || !g->ws))
        why = "stream-K: a warp-specialised DOWN (its epilogue adds into y)";
    else if (g->split < 0 || g->split > 16 || (g->split > 1 && g->kind != CG_CUDA_GEMM_DOWN))
        why = "split-K: 2..16 ways, DOWN only (its epilogue adds into y)";
    else if (g->ldc && g->ldc < g->n) why = "ldc < n";
    else if (g->w_table && g->kind == CG_CUDA_GEMM_LINEAR) why = "a linear layer has one matrix, not a table";
    else if ((g->seg[0] || g->seg[1]) && (g->kind != CG_CUDA_GEMM_LINEAR || g->path != CG_CUDA_PATH_GEMV || g->ldc ||
                                         g->seg[0] <= 0 || g->seg[1] < 0 || g->seg[0] + g->seg[1] >= g->n))
        why = "segments: the GEMV of a linear layer, no ldc, two or three matrices of at least a row each";
    if (why) {
        char sym[256];
        cg_cuda_gemm_symbol(g, sym, sizeof sym);
        snprintf(err, errlen, "cuda gemm %s: %s", sym, why);
    }
    return why == NULL;
}

/* The constants and the signature every path starts with, then PDL_ENTRY (unless `late`: the kernel
 * waits further on, emit_gemv). */
static void emit_head(CgBuf *b, const CgCudaGemm *g, const char *name, int threads, bool late)
{
    const char *entry = late ? "" : "    PDL_ENTRY();\n";
    bool up = g->kind == CG_CUDA_GEMM_UP;
    cb_printf(b, "#define E %lld\n#define N %lld\n#define KD %lld\n#define BM %d\n#define BN %d\n#define BK %d\n"
                 "#define NB %d\n#define NT %d\n#define SPLIT %d\n",
              (long long)g->experts, (long long)g->n, (long long)g->k, g->bm, g->bn, g->bk, up ? 2 : 1, threads,
              g->split > 1 ? g->split : 1);
    /* UP: W rows of a are e*2N + n, of b e*2N + N + n; DOWN: e*N + n. With a table, group e's matrix
     * starts at wtab[e] (the kernel sets wv to it once it knows e) and its rows count from 0. */
    if (g->w_table) cb_printf(b, "#define WROW(e, mat, n) ((long long)(mat) * N + (n))\n");
    else cb_printf(b, "#define WROW(e, mat, n) ((long long)(e) * (NB * N) + (mat) * N + (n))\n");
    cb_printf(b, "#define LDC %lld\n", (long long)(g->ldc ? g->ldc : g->n));
    const char *wparam = g->w_table ? "const void *const *wtab" : "const void *wv";
    const char *xt = cg_cuda_gemm_a16(g) ? "u16" : "float", *ht = up && cg_cuda_gemm_a16(g) ? "u16" : "float";
    static const char tmw[] = ", const __grid_constant__ CUtensorMap tmw",
                      tmwx[] = ", const __grid_constant__ CUtensorMap tmw, const __grid_constant__ CUtensorMap tmx";
    const char *tmap = !g->tma ? "" : cg_cuda_gemm_tma_a(g) ? tmwx : tmw; /* W's map, then A's */
    /* ws: one block an SM stated, so that ptxas knows the registers at entry and keeps setmaxnreg */
    const char *bounds = g->ws ? "NT, 1" : "NT";
    if (g->kind == CG_CUDA_GEMM_LINEAR)
        cb_printf(b, "extern \"C\" __global__ void __launch_bounds__(NT) %s(long long T, const float *x, "
                     "const void *wv, float *out%s) {\n"
                     "%s"
                     "#define AROW(s) (x + (long long)(s) * KD)\n", name,
                  g->seg[0] ? ", const void *wv2, float *out2, const void *wv3, float *out3" : "", entry);
    else if (up)
        cb_printf(b, "extern \"C\" __global__ void __launch_bounds__(%s) %s(long long T, const %s *x, "
                     "const long long *off, const int *perm, %s, %s *out%s) {\n"
                     "%s"
                     "#define AROW(s) (x + (long long)perm[s] * KD)\n", bounds, name, xt, wparam, ht, tmap, entry);
    else
        cb_printf(b, "extern \"C\" __global__ void __launch_bounds__(%s) %s(long long T, const %s *x, "
                     "const long long *off, const int *perm, const float *gate_w, %s, float *out%s) {\n"
                     "%s"
                     "#define AROW(s) (x + (long long)(s) * KD)\n", bounds, name, xt, wparam, tmap, entry);
}

static void emit_find_tile(CgBuf *b, const CgCudaGemm *g)
{
    if (g->kind == CG_CUDA_GEMM_LINEAR) { /* one group: the T rows */
        cb_printf(b, "    long long ge = T, m0 = (long long)blockIdx.x * BM;\n"
                     "    const int e = 0;\n"
                     "    if (m0 >= T) return;\n"
                     "    int n0 = blockIdx.y * BN;\n");
        return;
    }
    cb_printf(b, "    long long ty = blockIdx.x, gs = 0, ge = 0;\n"
                 "    int e = 0;\n"
                 "    for (; e < E; e++) {  /* this block's (group, M tile), from off[] on the device */\n"
                 "        gs = off[e], ge = off[e + 1];\n"
                 "        long long tiles = (ge - gs + BM - 1) / BM;\n"
                 "        if (ty < tiles) break;\n"
                 "        ty -= tiles;\n"
                 "    }\n"
                 "    if (e == E) return;\n"
                 "    long long m0 = gs + ty * BM;\n"
                 "    int n0 = blockIdx.y * BN;\n");
    if (g->w_table) cb_printf(b, "    const void *wv = wtab[e];  /* this group's matrix, where its owner keeps it */\n");
}

/* The k tiles [KT0, KT1) of a tiled block: all of them, or its slice of a split-K DOWN (blockIdx.z). */
static void emit_k_range(CgBuf *b)
{
    cb_printf(b, "    const int KT_ALL = (KD + BK - 1) / BK;\n"
                 "    const int KT0 = SPLIT > 1 ? (int)((long long)blockIdx.z * KT_ALL / SPLIT) : 0;\n"
                 "    const int KT1 = SPLIT > 1 ? (int)((long long)(blockIdx.z + 1) * KT_ALL / SPLIT) : KT_ALL;\n");
}

/* The MMAs of one 16-deep k step of an mma.sync tile, in KK(MB) (below): every matrix x row block
 * (the warp's first MB) x column block. */
static const char mma_nest[] =
    "        _Pragma(\"unroll\") for (int mat = 0; mat < NB; mat++) \\\n"
    "            _Pragma(\"unroll\") for (int i = 0; i < MI; i++) \\\n"
    "                _Pragma(\"unroll\") for (int j = 0; j < NI; j++) if (i < MB) mma(acc[mat][i][j], af[i], bfr[mat][j]); \\\n";

/* The k loop's MMAs in two forms: KK(MI) for a warp with rows in two or more of its 16-row blocks,
 * KK(1) for one with rows in its first only (a group of up to 16 rows, or a group's last few), which
 * loads and multiplies that block alone; a warp past the tile's last row does neither (warp-uniform
 * branches; the block counts are constants, so each form is the plain loop nest). `mlive`: the warp's
 * blocks that hold a row. */
static const char mma_live[] =
    "    const long long wrows = ge - m0 - wm * (BM / 2);  /* rows of the tile at and past this warp's first */\n"
    "    const int mlive = wrows <= 0 ? 0 : wrows >= MI * 16 ? MI : (int)((wrows + 15) / 16);\n";
static const char mma_kk[] =
    "        if (mlive > 1) KK(MI);\n"
    "        else if (mlive == 1) KK(1);\n";

/* Tensor cores (mma.sync m16n8k16, f32 accumulators). The k loop is software-pipelined through
 * registers: the next k tile's global loads are issued before the current tile's MMAs and land in
 * the other of two shared-memory buffers, so one barrier per tile and the loads' latency hides
 * behind the math. A (activations, f32) is rounded to the weight dtype on its way to shared memory. */
static void emit_mma(CgBuf *b, const CgCudaGemm *g, const char *name)
{
    bool up = g->kind == CG_CUDA_GEMM_UP, bf = g->wdtype == DT_BF16;
    int wn = mma_warps_n(g);
    cb_printf(b, "#define WN %d\n#define MI (BM / 32)\n#define NI (BN / WN / 8)\n#define LDS (BK + 8)\n"
                 "#define PACK %s\n#define mma %s\n", wn, bf ? "pack_bf16" : "pack_f16", bf ? "mma_16816_bf16" : "mma_16816_f16");
    cb_printf(b, "#define A_CH (BM * BK / 8)\n#define B_CH (NB * BN * BK / 8)\n"
                 "#define A_IT ((A_CH + NT - 1) / NT)\n#define B_IT ((B_CH + NT - 1) / NT)\n");
    emit_head(b, g, name, mma_threads(g), false);
    emit_find_tile(b, g);
    emit_k_range(b);
    cb_printf(b,
        "    __shared__ __align__(16) u16 As[2][BM][LDS];\n"
        "    __shared__ __align__(16) u16 Bs[2][NB][BN][LDS];\n"
        "    const u16 *w = (const u16 *)wv;\n"
        "    int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5, wm = wid / WN, wn = wid %% WN;\n"
        "    int gr = lane >> 2, gc = (lane & 3) * 2;\n"
        "%s"
        "    float acc[NB][MI][NI][4];\n"
        "#pragma unroll\n"
        "    for (int q = 0; q < NB * MI * NI * 4; q++) (&acc[0][0][0][0])[q] = 0.0f;\n"
        "    float4 ra[A_IT][2];\n"
        "    uint4 rb[B_IT];\n"
        "#define LOAD(k0) do { /* global -> registers */ \\\n"
        "        _Pragma(\"unroll\") for (int it = 0; it < A_IT; it++) { \\\n"
        "            int q = tid + it * NT, r = q / (BK / 8), c = (q %% (BK / 8)) * 8; \\\n"
        "            ra[it][0] = ra[it][1] = make_float4(0.f, 0.f, 0.f, 0.f); \\\n"
        "            if (q < A_CH && m0 + r < ge && (k0) + c < KD) { \\\n"
        "                const float4 *src = (const float4 *)(AROW(m0 + r) + (k0) + c); \\\n"
        "                ra[it][0] = src[0]; ra[it][1] = src[1]; } } \\\n"
        "        _Pragma(\"unroll\") for (int it = 0; it < B_IT; it++) { \\\n"
        "            int q = tid + it * NT, mat = q / (BN * BK / 8), rem = q %% (BN * BK / 8); \\\n"
        "            int r = rem / (BK / 8), c = (rem %% (BK / 8)) * 8; \\\n"
        "            rb[it] = make_uint4(0u, 0u, 0u, 0u); \\\n"
        "            if (q < B_CH && n0 + r < N && (k0) + c < KD) \\\n"
        "                rb[it] = *(const uint4 *)(w + WROW(e, mat, n0 + r) * KD + (k0) + c); } \\\n"
        "    } while (0)\n"
        "#define STORE(buf) do { /* registers -> shared (A rounded to 16 bits) */ \\\n"
        "        _Pragma(\"unroll\") for (int it = 0; it < A_IT; it++) { \\\n"
        "            int q = tid + it * NT, r = q / (BK / 8), c = (q %% (BK / 8)) * 8; \\\n"
        "            if (q < A_CH) *(uint4 *)&As[buf][r][c] = make_uint4(PACK(ra[it][0].x, ra[it][0].y), \\\n"
        "                PACK(ra[it][0].z, ra[it][0].w), PACK(ra[it][1].x, ra[it][1].y), PACK(ra[it][1].z, ra[it][1].w)); } \\\n"
        "        _Pragma(\"unroll\") for (int it = 0; it < B_IT; it++) { \\\n"
        "            int q = tid + it * NT, mat = q / (BN * BK / 8), rem = q %% (BN * BK / 8); \\\n"
        "            if (q < B_CH) *(uint4 *)&Bs[buf][mat][rem / (BK / 8)][(rem %% (BK / 8)) * 8] = rb[it]; } \\\n"
        "    } while (0)\n"
        "    LOAD(KT0 * BK);\n"
        "    STORE(0);\n"
        "    __syncthreads();\n"
        "    int buf = 0;\n"
        "#define KK(MB) do { \\\n"
        "    _Pragma(\"unroll\") for (int kk = 0; kk < BK; kk += 16) { \\\n"
        "        u32 af[MI][4], bfr[NB][NI][2]; \\\n"
        "        _Pragma(\"unroll\") for (int i = 0; i < MI; i++) if (i < MB) { \\\n"
        "            int r = wm * (BM / 2) + i * 16 + gr; \\\n"
        "            af[i][0] = *(const u32 *)&As[buf][r][kk + gc]; \\\n"
        "            af[i][1] = *(const u32 *)&As[buf][r + 8][kk + gc]; \\\n"
        "            af[i][2] = *(const u32 *)&As[buf][r][kk + gc + 8]; \\\n"
        "            af[i][3] = *(const u32 *)&As[buf][r + 8][kk + gc + 8]; \\\n"
        "        } \\\n"
        "        _Pragma(\"unroll\") for (int mat = 0; mat < NB; mat++) \\\n"
        "            _Pragma(\"unroll\") for (int j = 0; j < NI; j++) { \\\n"
        "                int cn = wn * (BN / WN) + j * 8 + gr; \\\n"
        "                bfr[mat][j][0] = *(const u32 *)&Bs[buf][mat][cn][kk + gc]; \\\n"
        "                bfr[mat][j][1] = *(const u32 *)&Bs[buf][mat][cn][kk + gc + 8]; \\\n"
        "            } \\\n"
        "%s"
        "    } } while (0)\n"
        "    for (int k0 = KT0 * BK; k0 < KT1 * BK; k0 += BK) {\n"
        "        bool more = k0 + BK < KT1 * BK;\n"
        "        if (more) LOAD(k0 + BK);  /* in flight while the tensor cores work on this tile */\n"
        "%s"
        "        if (more) STORE(buf ^ 1);\n"
        "        __syncthreads();\n"
        "        buf ^= 1;\n"
        "    }\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < MI; i++)\n"
        "#pragma unroll\n"
        "        for (int j = 0; j < NI; j++)\n"
        "#pragma unroll\n"
        "            for (int q = 0; q < 4; q++) {  /* c0,c1: row gr; c2,c3: row gr + 8 */\n"
        "                long long s = m0 + wm * (BM / 2) + i * 16 + gr + (q >> 1) * 8;\n"
        "                int n = n0 + wn * (BN / WN) + j * 8 + gc + (q & 1);\n"
        "                if (s >= ge || n >= N) continue;\n", mma_live, mma_nest, mma_kk);
    if (g->kind == CG_CUDA_GEMM_LINEAR)
        cb_printf(b, "                out[s * LDC + n] = acc[0][i][j][q];\n");
    else if (up)
        cb_printf(b, "                float a = acc[0][i][j][q];\n"
                     "                out[s * N + n] = a / (1.0f + expf(-a)) * acc[1][i][j][q];\n");
    else
        cb_printf(b, "                atomicAdd(out + (long long)perm[s] * N + n, gate_w[s] * acc[0][i][j][q]);\n");
    cb_printf(b, "            }\n}\n");
}

/* W's part of a ring slot's LOAD when threads copy it by cp.async (each its chunks, b* found by the
 * kernel beforehand, as A's). */
static const char load_b_cp[] =
    "#define LOAD_B(slot, st_, k0) _Pragma(\"unroll\") for (int it = 0; it < B_IT; it++) if (bdst[it] >= 0) \\\n"
    "            cp_async16(st_ + bdst[it], bok[it] ? bsrc[it] + (k0) : bsrc[it], bok[it] && (k0) + bcol[it] < KD ? 16u : 0u)\n"
    "#define ADVANCE_B(d) _Pragma(\"unroll\") for (int it = 0; it < B_IT; it++) bsrc[it] += bok[it] ? (d) : 0, bcol[it] += (d)\n";

/* The cp.async ring of the MMA forms: LOAD(slot, k0) copies k tile k0 into ring slot `slot` (each
 * thread its chunks: asrc/adst/acol/aok for A, the b* for B, found by the kernel beforehand), then
 * the first PF tiles go in flight (the prefetch distance: ST - 1 for mma.sync, ST - 2 for wgmma,
 * whose last tile's MMAs may still read theirs), one commit group each. */
static const char cp_ring_start[] =
    "#define LOAD(slot, k0) do { /* global -> shared, zeros past the rows and past KD */ \\\n"
    "        u16 *st_ = sm + (slot) * STAGE; \\\n"
    "        _Pragma(\"unroll\") for (int it = 0; it < A_IT; it++) if (adst[it] >= 0) \\\n"
    "            cp_async16(st_ + adst[it], aok[it] ? asrc[it] + (k0) : asrc[it], aok[it] && (k0) + acol[it] < KD ? 16u : 0u); \\\n"
    "        LOAD_B(slot, st_, k0); \\\n"
    "    } while (0)\n"
    "    const int KT = KT1 - KT0;  /* this block's k tiles, counted from KT0 (split-K: the sources too) */\n"
    "    if (SPLIT > 1) {\n"
    "#pragma unroll\n"
    "        for (int it = 0; it < A_IT; it++) asrc[it] += aok[it] ? KT0 * BK : 0, acol[it] += KT0 * BK;\n"
    "        ADVANCE_B(KT0 * BK);\n"
    "    }\n"
    "#pragma unroll\n"
    "    for (int s = 0; s < PF; s++) {  /* the first PF tiles in flight */\n"
    "        if (s < KT) LOAD(s, s * BK);\n"
    "        cp_async_commit();\n"
    "    }\n";

/* The ring when every tile comes by the TMA (DOWN's A and W, LOAD_B: thread 0 and the slot's
 * mbarrier): the same first PF tiles, the commit groups kept (empty) so the k loop is the same. */
static const char cp_ring_start_tma[] =
    "#define LOAD(slot, k0) do { u16 *st_ = sm + (slot) * STAGE; LOAD_B(slot, st_, k0); } while (0)\n"
    "    const int KT = KT1 - KT0;  /* this block's k tiles, counted from KT0 (split-K: the coordinates too) */\n"
    "#pragma unroll\n"
    "    for (int s = 0; s < PF; s++) {  /* the first PF tiles in flight */\n"
    "        if (s < KT) LOAD(s, s * BK);\n"
    "        cp_async_commit();\n"
    "    }\n";

/* Tensor cores fed by cp.async (sm_80+), the grouped UP/DOWN of 16-bit models ("a16": x and h are
 * 16-bit in memory, so they copy to shared memory as they are). A ring of ST k tiles of A and B in
 * dynamic shared memory: ST - 1 tiles are in flight while the tensor cores work on the oldest, one
 * barrier per k tile; fragments come out of shared memory by ldmatrix (A: one x4 per 16 rows, B: one
 * x4 per two 8-column blocks). Each thread's copy sources (rows gathered through perm) are found once. */
static void emit_mma_async(CgBuf *b, const CgCudaGemm *g, const char *name)
{
    bool up = g->kind == CG_CUDA_GEMM_UP, bf = g->wdtype == DT_BF16;
    int wn = mma_warps_n(g);
    cb_printf(b, "#define WN %d\n#define MI (BM / 32)\n#define NI (BN / WN / 8)\n#define LDS (BK + 8)\n#define ST %d\n"
                 "#define PF (ST - 1)\n#define STAGE ((BM + NB * BN) * LDS)\n#define PACK %s\n#define mma %s\n",
              wn, g->stages, bf ? "pack_bf16" : "pack_f16", bf ? "mma_16816_bf16" : "mma_16816_f16");
    cb_printf(b, "#define A_CH (BM * BK / 8)\n#define B_CH (NB * BN * BK / 8)\n"
                 "#define A_IT ((A_CH + NT - 1) / NT)\n#define B_IT ((B_CH + NT - 1) / NT)\n");
    emit_head(b, g, name, mma_threads(g), false);
    emit_find_tile(b, g);
    emit_k_range(b);
    cb_printf(b,
        "    DYN_SHARED(u16, sm);  /* [ST][BM + NB*BN][LDS]: a stage is A's rows, then each matrix's */\n"
        "    const u16 *w = (const u16 *)wv;\n"
        "    int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5, wm = wid / WN, wn = wid %% WN;\n"
        "%s"
        "    const u16 *asrc[A_IT], *bsrc[B_IT];  /* this thread's 16-byte chunks: source at k 0, place */\n"
        "    int adst[A_IT], bdst[B_IT], acol[A_IT], bcol[B_IT];\n"
        "    bool aok[A_IT], bok[B_IT];\n"
        "#pragma unroll\n"
        "    for (int it = 0; it < A_IT; it++) {\n"
        "        int q = tid + it * NT, r = q / (BK / 8), c = (q %% (BK / 8)) * 8;\n"
        "        aok[it] = q < A_CH && m0 + r < ge;\n"
        "        asrc[it] = aok[it] ? AROW(m0 + r) + c : x;\n"
        "        adst[it] = q < A_CH ? r * LDS + c : -1, acol[it] = c;\n"
        "    }\n"
        "#pragma unroll\n"
        "    for (int it = 0; it < B_IT; it++) {\n"
        "        int q = tid + it * NT, mat = q / (BN * BK / 8), rem = q %% (BN * BK / 8);\n"
        "        int r = rem / (BK / 8), c = (rem %% (BK / 8)) * 8;\n"
        "        bok[it] = q < B_CH && n0 + r < N;\n"
        "        bsrc[it] = bok[it] ? w + WROW(e, mat, n0 + r) * KD + c : w;\n"
        "        bdst[it] = q < B_CH ? (BM + mat * BN + r) * LDS + c : -1, bcol[it] = c;\n"
        "    }\n"
        "%s%s", mma_live, load_b_cp, cp_ring_start);
    cb_printf(b,
        "    float acc[NB][MI][NI][4];\n"
        "#pragma unroll\n"
        "    for (int q = 0; q < NB * MI * NI * 4; q++) (&acc[0][0][0][0])[q] = 0.0f;\n"
        "#define KK(MB) do { \\\n"
        "    _Pragma(\"unroll\") for (int kk = 0; kk < BK; kk += 16) { \\\n"
        "        u32 af[MI][4], bfr[NB][NI][2]; \\\n"
        "        _Pragma(\"unroll\") for (int i = 0; i < MI; i++)  /* lanes 0-15: rows 0-15 at kk, 16-31: at kk + 8 */ \\\n"
        "            if (i < MB) ldmatrix_x4(af[i], As + (wm * (BM / 2) + i * 16 + (lane & 15)) * LDS + kk + (lane >> 4) * 8); \\\n"
        "        _Pragma(\"unroll\") for (int mat = 0; mat < NB; mat++) { \\\n"
        "            const u16 *bw = Bs + (mat * BN + wn * (BN / WN) + (lane & 7)) * LDS + kk + ((lane >> 3) & 1) * 8; \\\n"
        "            _Pragma(\"unroll\") for (int j = 0; j + 1 < NI; j += 2) {  /* matrices (j, k lo), (j, k hi), (j+1, lo), (j+1, hi) */ \\\n"
        "                u32 t4[4]; \\\n"
        "                ldmatrix_x4(t4, bw + (j + (lane >> 4)) * 8 * LDS); \\\n"
        "                bfr[mat][j][0] = t4[0], bfr[mat][j][1] = t4[1], bfr[mat][j + 1][0] = t4[2], bfr[mat][j + 1][1] = t4[3]; \\\n"
        "            } \\\n"
        "            if (NI & 1) ldmatrix_x2(bfr[mat][NI - 1], bw + (NI - 1) * 8 * LDS); \\\n"
        "        } \\\n"
        "%s"
        "    } } while (0)\n"
        "    for (int kt = 0; kt < KT; kt++) {\n"
        "        cp_async_wait<PF - 1>();  /* tile kt has landed (for this thread) */\n"
        "        __syncthreads();          /* ... for every thread; and all are done with tile kt - 1 */\n"
        "        int nk = kt + PF;         /* refill tile kt - 1's slot */\n"
        "        if (nk < KT) LOAD(nk %% ST, nk * BK);\n"
        "        cp_async_commit();        /* (empty groups at the end keep the count uniform) */\n"
        "        const u16 *As = sm + (kt %% ST) * STAGE, *Bs = As + BM * LDS;\n"
        "%s"
        "    }\n"
        "    cp_async_wait<0>();\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < MI; i++)\n"
        "#pragma unroll\n"
        "        for (int j = 0; j < NI; j++)\n"
        "#pragma unroll\n"
        "            for (int hh = 0; hh < 2; hh++) {  /* c0,c1: row gr, columns gc, gc + 1; c2,c3: row gr + 8 */\n"
        "                long long s = m0 + wm * (BM / 2) + i * 16 + (lane >> 2) + hh * 8;\n"
        "                int n = n0 + wn * (BN / WN) + j * 8 + (lane & 3) * 2;\n"
        "                if (s >= ge || n >= N) continue;\n", mma_nest, mma_kk);
    if (up)
        cb_printf(b, "                float a0 = acc[0][i][j][2 * hh], a1 = acc[0][i][j][2 * hh + 1];\n"
                     "                *(u32 *)(out + s * N + n) = PACK(a0 / (1.0f + expf(-a0)) * acc[1][i][j][2 * hh],\n"
                     "                                                 a1 / (1.0f + expf(-a1)) * acc[1][i][j][2 * hh + 1]);\n");
    else
        cb_printf(b, "                float *y = out + (long long)perm[s] * N + n, gw = gate_w[s];\n"
                     "                atomic_add_pair(y, gw * acc[0][i][j][2 * hh], gw * acc[0][i][j][2 * hh + 1], n + 1 < N);\n");
    cb_printf(b, "            }\n}\n");
}

/* sm_90a's warpgroup MMA for the cp.async form: the same ring of k tiles, laid out in shared memory
 * as wgmma's K-major core matrices without swizzle (8 rows x 16 bytes each, the next 8 columns of k
 * LBO = 128 bytes on, the next 8 rows SBO = BK * 16 bytes on), one wgmma.mma_async m64nBNk16 per
 * warpgroup, matrix and 16 of k, A and B read by descriptors; the copies that fill a tile are fenced
 * into the async proxy before the barrier that hands it to the tensor cores. Accumulators: per
 * matrix BN / 2 floats a thread, the m16n8 C fragment repeated along n. */
static void emit_wgmma_asm(CgBuf *b, const CgCudaGemm *g)
{
    const char *ab = g->wdtype == DT_BF16 ? "bf16" : "f16";
    int nreg = g->bn / 2;
    cb_printf(b, "%s#ifndef MOEPPC_CUDA_EMU\n"
                 "__device__ __forceinline__ void wgmma_fence() { asm volatile(\"wgmma.fence.sync.aligned;\" ::: \"memory\"); }\n"
                 "__device__ __forceinline__ void wgmma_commit() { asm volatile(\"wgmma.commit_group.sync.aligned;\" ::: \"memory\"); }\n"
                 "template <int N> __device__ __forceinline__ void wgmma_wait() {\n"
                 "    asm volatile(\"wgmma.wait_group.sync.aligned %%0;\" :: \"n\"(N) : \"memory\"); }\n"
                 "__device__ __forceinline__ void fence_proxy_async() { asm volatile(\"fence.proxy.async.shared::cta;\" ::: \"memory\"); }\n"
                 "/* D[64 x %d] += A[64 x 16] B[%d x 16]^T, both K-major in shared memory */\n"
                 "__device__ __forceinline__ void wgmma_tile(float *d, unsigned long long a, unsigned long long b) {\n"
                 "    asm volatile(\"{\\n.reg .pred p;\\nsetp.ne.b32 p, %%%d, 0;\\n\"\n"
                 "                 \"wgmma.mma_async.sync.aligned.m64n%dk16.f32.%s.%s {",
              CG_CUDA_SM90A_MARK, g->bn, g->bn, nreg + 2, g->bn, ab, ab);
    for (int i = 0; i < nreg; i++) cb_printf(b, "%s%%%d", i ? ", " : "", i);
    cb_printf(b, "}, %%%d, %%%d, p, 1, 1, 0, 0;\\n}\\n\"\n                 : ", nreg, nreg + 1);
    for (int i = 0; i < nreg; i++) cb_printf(b, "%s\"+f\"(d[%d])", i ? ", " : "", i);
    cb_printf(b, "\n                 : \"l\"(a), \"l\"(b), \"r\"(1)); }\n");
    if (g->tma) /* the tensor memory accelerator and its mbarriers (the emulator has twins) */
        cb_printf(b,
            "struct __align__(64) CUtensorMap { unsigned long long opaque[16]; };\n"
            "__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {\n"
            "    asm volatile(\"mbarrier.init.shared::cta.b64 [%%0], %%1;\" :: \"r\"(bar), \"r\"(count) : \"memory\"); }\n"
            "__device__ __forceinline__ void fence_mbarrier_init() { asm volatile(\"fence.mbarrier_init.release.cluster;\" ::: \"memory\"); }\n"
            "/* arrive (the one arrival a phase waits for) and expect `bytes` of asynchronous copies */\n"
            "__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {\n"
            "    asm volatile(\"mbarrier.arrive.expect_tx.shared::cta.b64 _, [%%0], %%1;\" :: \"r\"(bar), \"r\"(bytes) : \"memory\"); }\n"
            "__device__ __forceinline__ bool mbar_try_wait(u32 bar, u32 parity) {\n"
            "    u32 ok;\n"
            "    asm volatile(\"{\\n.reg .pred p;\\nmbarrier.try_wait.parity.shared::cta.b64 p, [%%1], %%2;\\nselp.u32 %%0, 1, 0, p;\\n}\"\n"
            "                 : \"=r\"(ok) : \"r\"(bar), \"r\"(parity) : \"memory\");\n"
            "    return ok != 0; }\n"
            "/* the box at (c0 inner, c1 outer) of tensor map *map into shared memory at dst, completing on bar */\n"
            "__device__ __forceinline__ void tma_load_2d(void *dst, const CUtensorMap *map, int c0, int c1, u32 bar) {\n"
            "    asm volatile(\"cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%%0], [%%1, {%%2, %%3}], [%%4];\"\n"
            "                 :: \"r\"(smem_u32(dst)), \"l\"((unsigned long long)map), \"r\"(c0), \"r\"(c1), \"r\"(bar) : \"memory\"); }\n");
    if (g->ws) /* the consumers' release of a slot; the warpgroups' register split */
        cb_printf(b,
            "__device__ __forceinline__ void mbar_arrive(u32 bar) {\n"
            "    asm volatile(\"mbarrier.arrive.shared::cta.b64 _, [%%0];\" :: \"r\"(bar) : \"memory\"); }\n"
            "template <int R> __device__ __forceinline__ void regs_dec() { asm volatile(\"setmaxnreg.dec.sync.aligned.u32 %%0;\" :: \"n\"(R)); }\n"
            "template <int R> __device__ __forceinline__ void regs_inc() { asm volatile(\"setmaxnreg.inc.sync.aligned.u32 %%0;\" :: \"n\"(R)); }\n");
    cb_printf(b, "#else\n#define wgmma_tile(d, a, b) cudaemu_wgmma<%d, %s>(d, a, b)\n#endif\n",
              g->bn, g->wdtype == DT_BF16 ? "true" : "false");
}

/* The descriptor bits of a TMA tile (rows of 128 bytes, 128B swizzle: layout 1, SBO 1 KB, LBO 16). */
static const char swizzled[] = "1ull << 62 | (1024ull >> 4) << 32 | 1ull << 16";

/* What both wgmma forms define: the ring (ST slots of STAGE halves), the accumulators, the
 * core-matrix layout of cp.async-copied tiles and A's 16-byte chunks. */
static void emit_wgmma_defs(CgBuf *b, const CgCudaGemm *g)
{
    cb_printf(b, "#define ST %d\n#define STAGE ((BM + NB * BN) * BK)\n#define PACK %s\n#define NACC (BN / 2)\n"
                 "#define KC (BK / 8)   /* 16-byte chunks of a row's k tile */\n"
                 "#define CM(r, c) ((((r) >> 3) * KC + (c)) * 64 + ((r) & 7) * 8)  /* core-matrix layout, halves */\n"
                 "#define A_CH (BM * KC)\n",
              g->stages, g->wdtype == DT_BF16 ? "pack_bf16" : "pack_f16");
}

/* A wgmma tile's epilogue from its accumulators (warpgroup `wgv`'s 64 rows): UP's SwiGLU to h (16-bit),
 * DOWN's gate-weighted atomicAdd into y; each line indented by `in`. */
static void emit_wgmma_epilogue(CgBuf *b, const CgCudaGemm *g, const char *wgv, const char *in)
{
    cb_printf(b,
        "%s#pragma unroll\n"
        "%sfor (int j = 0; j < BN / 8; j++)\n"
        "%s#pragma unroll\n"
        "%s    for (int hh = 0; hh < 2; hh++) {  /* the m16n8 C fragment of warp wq's 16 rows, per 8 columns */\n"
        "%s        long long s = m0 + %s * 64 + wq * 16 + (lane >> 2) + hh * 8;\n"
        "%s        int n = n0 + j * 8 + (lane & 3) * 2;\n"
        "%s        if (s >= ge || n >= N) continue;\n", "", in, "", in, in, wgv, in, in);
    if (g->kind == CG_CUDA_GEMM_UP)
        cb_printf(b, "%s        float a0 = acc[0][4 * j + 2 * hh], a1 = acc[0][4 * j + 2 * hh + 1];\n"
                     "%s        *(u32 *)(out + s * N + n) = PACK(a0 / (1.0f + expf(-a0)) * acc[1][4 * j + 2 * hh],\n"
                     "%s                                         a1 / (1.0f + expf(-a1)) * acc[1][4 * j + 2 * hh + 1]);\n",
                  in, in, in);
    else
        cb_printf(b, "%s        float *y = out + (long long)perm[s] * N + n, gw = gate_w[s];\n"
                     "%s        atomic_add_pair(y, gw * acc[0][4 * j + 2 * hh], gw * acc[0][4 * j + 2 * hh + 1], n + 1 < N);\n",
                  in, in);
    cb_printf(b, "%s    }\n", in);
}

static void emit_mma_wgmma(CgBuf *b, const CgCudaGemm *g, const char *name)
{
    bool ta = cg_cuda_gemm_tma_a(g); /* A (rows in slot order: a 2-D box) by the TMA too: DOWN's h, UP's gathered x */
    emit_wgmma_asm(b, g);
    emit_wgmma_defs(b, g);
    cb_printf(b, "#define PF (ST - 2)\n#define B_CH (NB * BN * KC)\n"
                 "#define A_IT ((A_CH + NT - 1) / NT)\n#define B_IT ((B_CH + NT - 1) / NT)\n");
    emit_head(b, g, name, mma_threads(g), false);
    emit_find_tile(b, g);
    emit_k_range(b);
    if (g->tma)
        cb_printf(b, "    DYN_SHARED(u16, smraw);  /* the ring 1 KB-aligned (the 128-byte swizzle's unit), then the mbarriers */\n"
                     "    u16 *sm = smraw + ((1024u - (smem_u32(smraw) & 1023u)) & 1023u) / 2;\n"
                     "    const u32 mbar = smem_u32(sm + ST * STAGE);  /* slot s's: mbar + 8 s, W's tile landed */\n");
    else
        cb_printf(b, "    DYN_SHARED(u16, sm);  /* [ST][BM + NB*BN rows in core matrices of BK] */\n");
    cb_printf(b,
        "%s"
        "    int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, wq = (tid >> 5) & 3;\n",
        g->tma ? "    (void)wv;  /* W comes by the tensor map */\n" : "    const u16 *w = (const u16 *)wv;\n");
    if (ta)
        cb_printf(b, "    (void)x;  /* A too: its rows m0.. by its tensor map (rows past the group's are the next\n"
                     "               group's, or anything, or zeros: their rows are not stored) */\n");
    else
        cb_printf(b,
        "    /* chunk q: 8 consecutive threads take 8 rows of one k chunk (16 bytes each, one core matrix) */\n"
        "    const u16 *asrc[A_IT];\n"
        "    int adst[A_IT], acol[A_IT];\n"
        "    bool aok[A_IT];\n"
        "#pragma unroll\n"
        "    for (int it = 0; it < A_IT; it++) {\n"
        "        int q = tid + it * NT, c = (q >> 3) %% KC, r = (q >> 3) / KC * 8 + (q & 7);\n"
        "        aok[it] = q < A_CH && m0 + r < ge;\n"
        "        asrc[it] = aok[it] ? AROW(m0 + r) + c * 8 : x;\n"
        "        adst[it] = q < A_CH ? CM(r, c) : -1, acol[it] = c * 8;\n"
        "    }\n");
    if (g->tma) /* W by the TMA: thread 0 arms the slot's mbarrier with the bytes to come and issues a
                   box of BN rows x 64 k per matrix (rows past the group's are another group's or zeros:
                   their columns are not stored; k past KD zeros); DOWN's A likewise, BM rows of h */
        cb_printf(b,
            "    if (tid == 0) {\n"
            "        for (int s = 0; s < ST; s++) mbar_init(mbar + 8 * s, 1);\n"
            "        fence_mbarrier_init();\n"
            "    }\n"
            "    __syncthreads();\n"
            "#define LOAD_B(slot, st_, k0) if (tid == 0) { \\\n"
            "        mbar_expect_tx(mbar + 8 * (slot), (%sNB * BN) * BK * 2); \\\n"
            "%s"
            "        for (int mat = 0; mat < NB; mat++) \\\n"
            "            tma_load_2d(st_ + BM * BK + mat * BN * BK, &tmw, KT0 * BK + (k0), (int)WROW(e, mat, n0), mbar + 8 * (slot)); }\n"
            "#define ADVANCE_B(d)  /* (the TMA's coordinates are absolute) */\n"
            "%s", ta ? "BM + " : "",
            ta ? "        tma_load_2d(st_, &tmx, KT0 * BK + (k0), (int)m0, mbar + 8 * (slot)); \\\n" : "",
            ta ? cp_ring_start_tma : cp_ring_start);
    else
        cb_printf(b,
            "    const u16 *bsrc[B_IT];\n"
            "    int bdst[B_IT], bcol[B_IT];\n"
            "    bool bok[B_IT];\n"
            "#pragma unroll\n"
            "    for (int it = 0; it < B_IT; it++) {\n"
            "        int q = tid + it * NT, c = (q >> 3) %% KC, rr = (q >> 3) / KC * 8 + (q & 7), mat = rr / BN, r = rr %% BN;\n"
            "        bok[it] = q < B_CH && n0 + r < N;\n"
            "        bsrc[it] = bok[it] ? w + WROW(e, mat, n0 + r) * KD + c * 8 : w;\n"
            "        bdst[it] = q < B_CH ? BM * BK + mat * BN * BK + CM(r, c) : -1, bcol[it] = c * 8;\n"
            "    }\n"
            "%s%s", load_b_cp, cp_ring_start);
    cb_printf(b,
        "    /* descriptor: start >> 4 (bits 0-13), LBO >> 4 (16-29), SBO >> 4 (32-45), layout (62-63): A's\n"
        "     * core matrices without swizzle; W's (and a TMA DOWN's A) rows of 128 bytes swizzled (TMA: 1;\n"
        "     * SBO 8 rows, 1 KB) */\n"
        "    const unsigned long long DESCA = %s;\n"
        "    const unsigned long long DESCB = %s;\n",
        ta ? swizzled : "(128ull >> 4) << 16 | ((unsigned long long)(BK * 16) >> 4) << 32",
        g->tma ? swizzled : "DESCA");
    cb_printf(b,
        "    float acc[NB][NACC];\n"
        "#pragma unroll\n"
        "    for (int q = 0; q < NB * NACC; q++) (&acc[0][0])[q] = 0.0f;\n"
        "    for (int kt = 0; kt < KT; kt++) {\n"
        "        cp_async_wait<PF - 1>();  /* tile kt has landed (this thread's copies) */\n"
        "%s"
        "        fence_proxy_async();      /* ... and is visible to the tensor cores' async proxy */\n"
        "        __syncthreads();          /* every thread's; and every warpgroup's wgmmas of tile kt - 2 are\n"
        "                                     done (each waited for them), so their slot can be refilled */\n"
        "        int nk = kt + PF;         /* into tile kt - 2's slot: kt - 1's MMAs may still be reading */\n"
        "        if (nk < KT) LOAD(nk %% ST, nk * BK);\n"
        "        cp_async_commit();\n"
        "        u32 base = smem_u32(sm + (kt %% ST) * STAGE);\n"
        "        wgmma_fence();\n"
        "#pragma unroll\n"
        "        for (int kk = 0; kk < BK / 16; kk++) {  /* 16 of k: A %s; W %s */\n"
        "            unsigned long long da = DESCA | (((base + wg * 64 * BK * 2 + kk * %d) & 0x3ffffu) >> 4);\n"
        "#pragma unroll\n"
        "            for (int mat = 0; mat < NB; mat++)\n"
        "                wgmma_tile(acc[mat], da, DESCB | (((base + (BM + mat * BN) * BK * 2 + kk * %d) & 0x3ffffu) >> 4));\n"
        "        }\n"
        "        wgmma_commit();\n"
        "        wgmma_wait<1>();          /* tile kt's MMAs run on while the next tile is waited for */\n"
        "    }\n"
        "    wgmma_wait<0>();\n"
        "    cp_async_wait<0>();\n",
        g->tma ? "        while (!mbar_try_wait(mbar + 8 * (kt % ST), (kt / ST) & 1)) {}  /* W's tile kt (TMA) */\n" : "",
        ta ? "32 bytes on in its swizzled rows" : "two chunks on (256 bytes)",
        g->tma ? "32 bytes on in its swizzled rows" : "two chunks on", ta ? 32 : 256, g->tma ? 32 : 256);
    emit_wgmma_epilogue(b, g, "wg", "    ");
    cb_printf(b, "}\n");
}

/* The warp-specialised persistent form (CgCudaGemm.ws): warpgroup 0 produces, warpgroups 1.. consume;
 * ring slot s has a "full" mbarrier (its tile has landed: the TMA's bytes, and for UP each producer
 * thread's fenced cp.async copies of A) and an "empty" one (each consumer warp is done with it). Slot
 * and phase come from a k-tile count that runs on across the block's tiles. */
static void emit_mma_ws(CgBuf *b, const CgCudaGemm *g, const char *name)
{
    bool ga = !cg_cuda_gemm_tma_a(g); /* A gathered through perm by the producer threads' cp.async (a gather_a UP) */
    int cw = g->bm / 64;
    emit_wgmma_asm(b, g);
    emit_wgmma_defs(b, g);
    cb_printf(b, "#define A_IT ((A_CH + 127) / 128)  /* UP: A's chunks a producer thread */\n"
                 "#define PD (ST - 2)  /* UP: a tile is published PD tiles after its copies are issued */\n"
                 "#define FULL_ARRIVALS %s\n#define CW %d  /* consumer warpgroups */\n"
                 "#define SK %d  /* the last wave by stream-K */\n",
              ga ? "129  /* thread 0's expect_tx, each producer thread's copies */" : "1", cw, g->stream_k ? 1 : 0);
    cb_printf(b,
        "/* The tiles before the last wave when it would leave more than a tenth of the blocks idle (it goes\n"
        " * by stream-K), else all of them. */\n"
        "__device__ __forceinline__ long long whole_tiles(long long tiles) {\n"
        "    long long G = gridDim.x, waves = (tiles + G - 1) / G, last = tiles - (waves - 1) * G;\n"
        "    return 10 * last >= 9 * G ? tiles : (waves - 1) * G; }\n"
        "/* The block's piece j: tile *t, its k tiles [*k0, *k1); false past the block's last. First the\n"
        " * whole tiles before dp (blockIdx.x, + gridDim.x, ...), then its even share of the k tiles of the\n"
        " * tiles from dp on (tile-major), a contiguous run cut where a tile ends. */\n"
        "__device__ __forceinline__ bool piece(long long j, long long tiles, long long dp, int kt, long long *t,\n"
        "                                      int *k0, int *k1) {\n"
        "    long long b = blockIdx.x, G = gridDim.x, nd = b < dp ? (dp - b + G - 1) / G : 0;\n"
        "    if (j < nd) { *t = b + j * G, *k0 = 0, *k1 = kt; return true; }\n"
        "    long long w = (tiles - dp) * kt, g0 = w * b / G, g1 = w * (b + 1) / G;\n"
        "    long long gi = j == nd ? g0 : (g0 / kt + (j - nd)) * kt;  /* its first k tile */\n"
        "    if (gi >= g1) return false;\n"
        "    long long tt = gi / kt;\n"
        "    *t = dp + tt, *k0 = (int)(gi - tt * kt), *k1 = (int)(g1 - tt * kt < kt ? g1 - tt * kt : kt);\n"
        "    return true; }\n");
    emit_head(b, g, name, mma_threads(g), false);
    cb_printf(b,
        "    const int KT = (KD + BK - 1) / BK;\n"
        "    long long MT = 0;  /* M tiles over all groups (from off[] on the device); tile t: M tile t %% MT, N tile t / MT */\n"
        "    for (int q = 0; q < E; q++) MT += (off[q + 1] - off[q] + BM - 1) / BM;\n"
        "    const long long TILES = MT * ((N + BN - 1) / BN), DPT = SK ? whole_tiles(TILES) : TILES;\n"
        "#define TILE_AT(t) \\\n"
        "        long long ty = (t) %% MT, gs = 0, ge = 0; \\\n"
        "        int e = 0; \\\n"
        "        for (; e < E; e++) { \\\n"
        "            gs = off[e], ge = off[e + 1]; \\\n"
        "            long long tiles_ = (ge - gs + BM - 1) / BM; \\\n"
        "            if (ty < tiles_) break; \\\n"
        "            ty -= tiles_; \\\n"
        "        } \\\n"
        "        long long m0 = gs + ty * BM; \\\n"
        "        int n0 = (int)((t) / MT) * BN\n"
        "    DYN_SHARED(u16, smraw);  /* the ring 1 KB-aligned (the 128-byte swizzle's unit), then the mbarriers */\n"
        "    u16 *sm = smraw + ((1024u - (smem_u32(smraw) & 1023u)) & 1023u) / 2;\n"
        "    const u32 full = smem_u32(sm + ST * STAGE), empty = full + 8 * ST;  /* slot s's: + 8 s */\n"
        "    int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, wq = (tid >> 5) & 3;\n"
        "    (void)wv;  /* W comes by the tensor map */\n"
        "    if (tid == 0) {\n"
        "        for (int s = 0; s < ST; s++) mbar_init(full + 8 * s, FULL_ARRIVALS), mbar_init(empty + 8 * s, 4 * CW);\n"
        "        fence_mbarrier_init();\n"
        "    }\n"
        "    __syncthreads();  /* (the last block barrier: from here the warpgroups meet at mbarriers) */\n"
        "    if (wg == 0) {  /* the producer */\n"
        "%s"
        "%s"
        "        long long it = 0, t;  /* k tiles issued: slot it %% ST, round it / ST */\n"
        "        int k0, k1;\n"
        "        for (long long j = 0; piece(j, TILES, DPT, KT, &t, &k0, &k1); j++) {\n"
        "            TILE_AT(t);\n",
        cw > 1 ? (ga ? "        regs_dec<56>();\n" : "        regs_dec<40>();\n") : "",
        ga ? "" : "        (void)x;\n        if (tid != 0) return;  /* one thread issues every copy */\n");
    if (ga)
        cb_printf(b,
        "            /* A's rows gathered through perm (-1: past the group's, zeros): chunk q = tid + 128 i, 8\n"
        "             * consecutive threads take 8 rows of one k chunk (16 bytes each, one core matrix); only\n"
        "             * the rows are kept (the producer runs on few registers) */\n"
        "            int arow[A_IT];\n"
        "#pragma unroll\n"
        "            for (int i = 0; i < A_IT; i++) {\n"
        "                int q = tid + i * 128, r = (q >> 3) / KC * 8 + (q & 7);\n"
        "                arow[i] = q < A_CH && m0 + r < ge ? perm[m0 + r] : -1;\n"
        "            }\n");
    cb_printf(b,
        "            for (int kt = k0; kt < k1; kt++, it++) {\n"
        "                int s = (int)(it %% ST);\n"
        "                while (!mbar_try_wait(empty + 8 * s, (int)((it / ST) & 1) ^ 1)) {}  /* its last tile's MMAs are done */\n"
        "                u16 *st_ = sm + s * STAGE;\n"
        "                if (tid == 0) {  /* W's rows past the group's are another group's or zeros: not stored */\n"
        "                    mbar_expect_tx(full + 8 * s, (%sNB * BN) * BK * 2);\n"
        "%s"
        "                    for (int mat = 0; mat < NB; mat++)\n"
        "                        tma_load_2d(st_ + BM * BK + mat * BN * BK, &tmw, kt * BK, (int)WROW(e, mat, n0), full + 8 * s);\n"
        "                }\n",
        ga ? "" : "BM + ", ga ? "" : "                    tma_load_2d(st_, &tmx, kt * BK, (int)m0, full + 8 * s);  /* A's rows m0.. */\n");
    if (ga)
        cb_printf(b,
        "#pragma unroll\n"
        "                for (int i = 0; i < A_IT; i++) {\n"
        "                    int q = tid + i * 128, c = (q >> 3) %% KC, r = (q >> 3) / KC * 8 + (q & 7), k = kt * BK + c * 8;\n"
        "                    bool ok = arow[i] >= 0 && k < KD;\n"
        "                    if (q < A_CH) cp_async16(st_ + CM(r, c), ok ? x + (long long)arow[i] * KD + k : x, ok ? 16u : 0u);\n"
        "                }\n"
        "                cp_async_commit();\n"
        "                if (it >= PD) {  /* tile it - PD has landed: fenced into the async proxy, published */\n"
        "                    cp_async_wait<PD>();\n"
        "                    fence_proxy_async();\n"
        "                    mbar_arrive(full + 8 * (int)((it - PD) %% ST));\n"
        "                }\n");
    cb_printf(b, "            }\n        }\n");
    if (ga)
        cb_printf(b,
        "        cp_async_wait<0>();  /* the last PD tiles */\n"
        "        fence_proxy_async();\n"
        "        for (long long j = it > PD ? it - PD : 0; j < it; j++) mbar_arrive(full + 8 * (int)(j %% ST));\n");
    cb_printf(b,
        "        return;\n"
        "    }\n"
        "%s"
        "    const int cw = wg - 1;  /* this consumer's 64 rows of the tile */\n"
        "    /* descriptors (start >> 4 bits 0-13, LBO >> 4 16-29, SBO >> 4 32-45, layout 62-63): %s;\n"
        "     * W's rows of 128 bytes swizzled (SBO 8 rows, 1 KB) */\n"
        "    const unsigned long long DESCA = %s;\n"
        "    const unsigned long long DESCB = %s;\n"
        "    long long it = 0, t;  /* k tiles taken: slot it %% ST, round it / ST */\n"
        "    int k0, k1;\n"
        "    for (long long j = 0; piece(j, TILES, DPT, KT, &t, &k0, &k1); j++) {\n"
        "        TILE_AT(t);\n"
        "        float acc[NB][NACC];\n"
        "#pragma unroll\n"
        "        for (int q = 0; q < NB * NACC; q++) (&acc[0][0])[q] = 0.0f;\n"
        "        for (int kt = k0; kt < k1; kt++, it++) {\n"
        "            int s = (int)(it %% ST);\n"
        "            while (!mbar_try_wait(full + 8 * s, (int)((it / ST) & 1))) {}  /* tile it has landed */\n"
        "            u32 base = smem_u32(sm + s * STAGE);\n"
        "            wgmma_fence();\n"
        "#pragma unroll\n"
        "            for (int kk = 0; kk < BK / 16; kk++) {  /* 16 of k: A %s; W 32 bytes on in its swizzled rows */\n"
        "                unsigned long long da = DESCA | (((base + cw * 64 * BK * 2 + kk * %d) & 0x3ffffu) >> 4);\n"
        "#pragma unroll\n"
        "                for (int mat = 0; mat < NB; mat++)\n"
        "                    wgmma_tile(acc[mat], da, DESCB | (((base + (BM + mat * BN) * BK * 2 + kk * 32) & 0x3ffffu) >> 4));\n"
        "            }\n"
        "            wgmma_commit();\n"
        "            wgmma_wait<1>();  /* tile it - 1's MMAs are done: its slot goes back to the producer */\n"
        "            if (kt > k0 && lane == 0) mbar_arrive(empty + 8 * (int)((it - 1) %% ST));\n"
        "        }\n"
        "        wgmma_wait<0>();\n"
        "        if (k1 > k0 && lane == 0) mbar_arrive(empty + 8 * (int)((it - 1) %% ST));\n"
        "        /* the epilogue, while the producer fills the next tile's first slots */\n",
        cw > 1 ? (ga ? "    regs_inc<224>();\n" : "    regs_inc<232>();\n") : "",
        ga ? "A's core matrices without swizzle" : "A's (by the TMA) rows swizzled as W's",
        ga ? "(128ull >> 4) << 16 | ((unsigned long long)(BK * 16) >> 4) << 32" : swizzled, swizzled,
        ga ? "two chunks on (256 bytes)" : "32 bytes on in its swizzled rows", ga ? 256 : 32);
    emit_wgmma_epilogue(b, g, "cw", "        ");
    cb_printf(b, "    }\n}\n");
}

static void emit_fma(CgBuf *b, const CgCudaGemm *g, const char *name)
{
    bool up = g->kind == CG_CUDA_GEMM_UP;
    cb_printf(b, "#define TM (BM / 16)\n#define TN (BN / 16)\n");
    emit_head(b, g, name, FMA_THREADS, false);
    emit_find_tile(b, g);
    emit_k_range(b);
    cb_printf(b,
        "    __shared__ float As[BK][BM];\n"
        "    __shared__ float Bs[NB][BK][BN];\n"
        "    int tid = threadIdx.x, tx = tid & 15, tyy = tid >> 4;\n"
        "    float acc[NB][TM][TN];\n"
        "#pragma unroll\n"
        "    for (int q = 0; q < NB * TM * TN; q++) (&acc[0][0][0])[q] = 0.0f;\n"
        "    for (int k0 = KT0 * BK; k0 < KT1 * BK; k0 += BK) {\n"
        "        for (int q = tid; q < BM * BK; q += NT) {\n"
        "            int r = q / BK, c = q %% BK;\n"
        "            As[c][r] = (m0 + r < ge && k0 + c < KD) ? AROW(m0 + r)[k0 + c] : 0.0f;\n"
        "        }\n"
        "        for (int q = tid; q < NB * BN * BK; q += NT) {\n"
        "            int mat = q / (BN * BK), rem = q %% (BN * BK), r = rem / BK, c = rem %% BK;\n"
        "            Bs[mat][c][r] = (n0 + r < N && k0 + c < KD) ? ldw(wv, WROW(e, mat, n0 + r) * KD + k0 + c) : 0.0f;\n"
        "        }\n"
        "        __syncthreads();\n"
        "#pragma unroll 4\n"
        "        for (int k = 0; k < BK; k++) {\n"
        "            float a[TM];\n"
        "#pragma unroll\n"
        "            for (int i = 0; i < TM; i++) a[i] = As[k][tyy * TM + i];\n"
        "#pragma unroll\n"
        "            for (int mat = 0; mat < NB; mat++)\n"
        "#pragma unroll\n"
        "                for (int j = 0; j < TN; j++) {\n"
        "                    float bv = Bs[mat][k][tx * TN + j];\n"
        "#pragma unroll\n"
        "                    for (int i = 0; i < TM; i++) acc[mat][i][j] = fmaf(a[i], bv, acc[mat][i][j]);\n"
        "                }\n"
        "        }\n"
        "        __syncthreads();\n"
        "    }\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < TM; i++)\n"
        "#pragma unroll\n"
        "        for (int j = 0; j < TN; j++) {\n"
        "            long long s = m0 + tyy * TM + i;\n"
        "            int n = n0 + tx * TN + j;\n"
        "            if (s >= ge || n >= N) continue;\n");
    if (g->kind == CG_CUDA_GEMM_LINEAR)
        cb_printf(b, "            out[s * LDC + n] = acc[0][i][j];\n");
    else if (up)
        cb_printf(b, "            float a = acc[0][i][j];\n"
                     "            out[s * N + n] = a / (1.0f + expf(-a)) * acc[1][i][j];\n");
    else
        cb_printf(b, "            atomicAdd(out + (long long)perm[s] * N + n, gate_w[s] * acc[0][i][j]);\n");
    cb_printf(b, "        }\n}\n");
}

/* Decode: one warp per output row n (UP: the a and b rows of column n); the group's slots in chunks
 * of MAXS (bm), all accumulated in registers while the warp streams the weight row once per chunk,
 * the k loop unrolled bk times (its 16-byte loads in flight together). With one slot a chunk (bm 1:
 * the decode form and the tuner's 1xW forms) nothing is shared between slots, so each slot has its
 * own row of blocks (grid.y; its group found from off[]): a decode step's two picks stream their
 * experts' rows side by side instead of one after the other.
 * Weights first (`late`: one slot a chunk, DOWN or LINEAR): under programmatic dependent launch the
 * first batch of weight loads is issued before the wait (PDL_ENTRY), so that the weights stream while
 * the kernel before this one drains; x is read after it. Read before the wait: the weights and, for
 * DOWN, off[] (the routing's, two kernels back, with UP between: complete when this kernel can start,
 * as every kernel lets its dependents launch only after its own wait returned), through L2
 * (ld.global.cg: no stale L1 line of an earlier step's). UP's group comes from the kernel just
 * before it, so UP waits first. Every thread waits, also one that leaves early. */
static void emit_gemv(CgBuf *b, const CgCudaGemm *g, const char *name)
{
    bool f32 = g->wdtype == DT_F32, lin = g->kind == CG_CUDA_GEMM_LINEAR;
    bool late = g->bm == 1 && g->kind != CG_CUDA_GEMM_UP;
    CgCudaGemm h = *g;
    h.bm = 1, h.bk = 8;
    cb_printf(b, "#define MAXS %d\n#define NWARP %d\n#define VEC (KD %% 8 == 0)\n#define K8 (VEC ? KD / 8 * 8 : 0)\n"
                 "#define UNROLL_K %d\n#define SEG0 %lld\n#define SEG1 %lld\n"
                 "#define OFF(i) %s\n#define LEAVE %s\n",
              g->bm, g->bn, g->bk, (long long)g->seg[0], (long long)g->seg[1], late ? "__ldcg(off + (i))" : "off[i]",
              late ? "{ PDL_ENTRY(); return; }" : "return;");
    emit_head(b, &h, name, 32 * g->bn, late);
    cb_printf(b,
        "    int lane = threadIdx.x & 31, n = blockIdx.x * NWARP + (threadIdx.x >> 5);\n"
        "%s"
        "    if (n >= N) LEAVE\n"
        "%s"
        "    const int KB = SPLIT > 1 ? (int)blockIdx.z * %lld : 0;  /* this block's k slice [KB, KE) (split-K) */\n"
        "    const int KE = SPLIT > 1 ? (KB + %lld < K8 ? KB + %lld : K8) : K8;\n"
        "%s"
        "%s"
        "%s"
        "    int gs = (int)(%s), ge = (int)(%s);  /* int slots: no spills (T <= 2^31 / k) */\n"
        "    for (int s0 = gs; s0 < ge; s0 += MAXS) {\n"
        "        int cnt = ge - s0 < MAXS ? (int)(ge - s0) : MAXS;\n"
        "        float acc[NB][MAXS];\n"
        "#pragma unroll\n"
        "        for (int s = 0; s < MAXS; s++) {\n"
        "#pragma unroll\n"
        "            for (int mat = 0; mat < NB; mat++) acc[mat][s] = 0.0f;\n"
        "        }\n"
        "        for (int k0 = KB + lane * 8; k0 < KE; k0 += 256 * UNROLL_K) {\n"
        "            /* a batch: the UNROLL_K 16-byte loads of each matrix issued before any is used */\n"
        "            %s raw[UNROLL_K][NB]%s;\n"
        "#pragma unroll\n"
        "            for (int u = 0; u < UNROLL_K; u++)\n"
        "#pragma unroll\n"
        "                for (int mat = 0; mat < NB; mat++) {\n"
        "                    const wtype *wr = w + WROW(e, mat, n) * KD + k0 + u * 256;\n"
        "                    if (k0 + u * 256 < KE) %s\n"
        "                }\n"
        "%s"
        "#pragma unroll\n"
        "            for (int u = 0; u < UNROLL_K; u++) {\n"
        "                int k = k0 + u * 256;\n"
        "                if (k >= KE) break;\n"
        "                float wf[NB][8];\n"
        "#pragma unroll\n"
        "                for (int mat = 0; mat < NB; mat++) {\n",
        late ? "    bool waited = false;  /* PDL_ENTRY done: after the first batch of weights */\n" : "",
        !g->seg[0] ? "" : g->seg[1]
            ? "    int ldc_ = SEG0;  /* row n's matrix: its weights, output and width */\n"
              "    if (n >= SEG0 + SEG1) wv = wv3, out = out3, n -= SEG0 + SEG1, ldc_ = N - SEG0 - SEG1;\n"
              "    else if (n >= SEG0) wv = wv2, out = out2, n -= SEG0, ldc_ = SEG1;\n"
              "    (void)wv3, (void)out3;\n"
              "#undef LDC\n#define LDC ldc_\n"
            : "    int ldc_ = SEG0;  /* row n's matrix: its weights, output and width */\n"
              "    if (n >= SEG0) wv = wv2, out = out2, n -= SEG0, ldc_ = N - SEG0;\n"
              "    (void)wv3, (void)out3;\n"
              "#undef LDC\n#define LDC ldc_\n",
        (long long)split_chunk(g), (long long)split_chunk(g), (long long)split_chunk(g),
        g->w_table ? "" : "    const wtype *w = (const wtype *)wv;\n",
        g->bm != 1 ? "#pragma unroll 1\n"
                     "    for (int e = 0; e < E; e++) {  /* the groups with slots (a decode step has a few) */\n"
        : lin ? "    const int sp = blockIdx.y;  /* one slot (token) per block row: side by side */\n"
                "    if (sp >= T) LEAVE\n"
                "    for (int e = 0; e < 1; e++) {\n"
              : "    const int sp = blockIdx.y;  /* one slot per block row: the slots side by side, not in turn */\n"
                "    if (sp >= OFF(E)) LEAVE  /* (a zero-computation pick's) */\n"
                "    int es = 0;\n"
                "    while (OFF(es + 1) <= sp) es++;  /* its group */\n"
                "    for (int e = es; e < es + 1; e++) {\n",
        g->w_table ? "    const wtype *w = (const wtype *)wtab[e];\n" : "",
        g->bm == 1 ? "sp" : lin ? "0" : "off[e]", g->bm == 1 ? "sp + 1" : lin ? "T" : "off[e + 1]",
        f32 ? "float4" : "uint4", f32 ? "[2]" : "",
        f32 ? "raw[u][mat][0] = ((const float4 *)wr)[0], raw[u][mat][1] = ((const float4 *)wr)[1];"
            : "raw[u][mat] = *(const uint4 *)wr;  /* 8 weights */",
        late ? "            if (!waited) PDL_ENTRY(), waited = true;  /* x is read from here on */\n" : "");
    if (f32)
        cb_printf(b, "                    float4 lo = raw[u][mat][0], hi = raw[u][mat][1];\n"
                     "                    wf[mat][0] = lo.x, wf[mat][1] = lo.y, wf[mat][2] = lo.z, wf[mat][3] = lo.w;\n"
                     "                    wf[mat][4] = hi.x, wf[mat][5] = hi.y, wf[mat][6] = hi.z, wf[mat][7] = hi.w;\n");
    else
        cb_printf(b, "                    u32 p[4] = {raw[u][mat].x, raw[u][mat].y, raw[u][mat].z, raw[u][mat].w};\n"
                     "#pragma unroll\n"
                     "                    for (int q = 0; q < 4; q++) {\n"
                     "                        wf[mat][2 * q] = %s((u16)(p[q] & 0xffffu));\n"
                     "                        wf[mat][2 * q + 1] = %s((u16)(p[q] >> 16));\n"
                     "                    }\n",
                  g->wdtype == DT_BF16 ? "bf16_f32" : "f16_f32", g->wdtype == DT_BF16 ? "bf16_f32" : "f16_f32");
    cb_printf(b,
        "                }\n"
        "#pragma unroll\n"
        "                for (int s = 0; s < MAXS; s++) {\n"
        "                    if (s >= cnt) break;\n"
        "                    const float *xs = AROW(s0 + s) + k;\n"
        "                    float4 lo = *(const float4 *)xs, hi = *(const float4 *)(xs + 4);\n"
        "                    float xv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};\n"
        "#pragma unroll\n"
        "                    for (int mat = 0; mat < NB; mat++)\n"
        "#pragma unroll\n"
        "                        for (int q = 0; q < 8; q++) acc[mat][s] = fmaf(wf[mat][q], xv[q], acc[mat][s]);\n"
        "                }\n"
        "            }\n"
        "        }\n"
        "%s"
        "        for (int k = K8 + lane; k < KD && (SPLIT == 1 || blockIdx.z == SPLIT - 1); k += 32)  /* scalar tail (k not a multiple of 8) */\n"
        "#pragma unroll\n"
        "            for (int s = 0; s < MAXS; s++) {\n"
        "                if (s >= cnt) break;\n"
        "#pragma unroll\n"
        "                for (int mat = 0; mat < NB; mat++) acc[mat][s] = fmaf(ldw(w, WROW(e, mat, n) * KD + k), AROW(s0 + s)[k], acc[mat][s]);\n"
        "            }\n"
        "#pragma unroll\n"
        "        for (int s = 0; s < MAXS; s++) {\n"
        "            if (s >= cnt) break;\n"
        "            float r[NB];\n"
        "#pragma unroll\n"
        "            for (int mat = 0; mat < NB; mat++) r[mat] = warp_sum(acc[mat][s]);\n"
        "            if (lane != 0) continue;\n",
        late ? "        if (!waited) PDL_ENTRY(), waited = true;  /* (a lane with no 8-element chunk) */\n" : "");
    if (g->kind == CG_CUDA_GEMM_LINEAR)
        cb_printf(b, "            out[(long long)(s0 + s) * LDC + n] = r[0];\n");
    else if (g->kind == CG_CUDA_GEMM_UP)
        cb_printf(b, "            out[(long long)(s0 + s) * N + n] = r[0] / (1.0f + expf(-r[0])) * r[NB - 1];\n");
    else
        cb_printf(b, "            atomicAdd(out + (long long)perm[s0 + s] * N + n, gate_w[s0 + s] * r[0]);\n");
    cb_printf(b, "        }\n    }\n    }\n}\n");
}

char *cg_cuda_gemm_source(const CgCudaGemm *g, char *err, size_t errlen)
{
    if (!check(g, err, errlen)) return NULL;
    char name[256];
    cg_cuda_gemm_symbol(g, name, sizeof name);
    CgBuf b = {0};
    cb_prelude(&b, g->wdtype);
    switch (g->path) {
    case CG_CUDA_PATH_MMA:
        if (g->ws) emit_mma_ws(&b, g, name);
        else if (g->wgmma) emit_mma_wgmma(&b, g, name);
        else if (cg_cuda_gemm_a16(g)) emit_mma_async(&b, g, name);
        else emit_mma(&b, g, name);
        break;
    case CG_CUDA_PATH_FMA: emit_fma(&b, g, name); break;
    case CG_CUDA_PATH_GEMV: emit_gemv(&b, g, name); break;
    }
    return b.s;
}

void cg_cuda_gemm_launch(const CgCudaGemm *g, int64_t T, unsigned grid[3], unsigned block[3], size_t *smem)
{
    grid[2] = g->split > 1 ? (unsigned)g->split : 1u, block[1] = block[2] = 1;
    *smem = cg_cuda_gemm_smem(g);
    if (g->path == CG_CUDA_PATH_GEMV) { /* one slot a pass: a block row per slot (the decode form's) */
        int64_t rows = g->bm != 1 ? 1 : (T > 0 ? T : 1) * (g->kind == CG_CUDA_GEMM_LINEAR ? 1 : g->k_top);
        grid[0] = (unsigned)((g->n + g->bn - 1) / g->bn), grid[1] = (unsigned)rows, block[0] = 32u * (unsigned)g->bn;
        return;
    }
    /* sum over groups of ceil(count / bm) <= ceil(T*k / bm) + E; spare blocks return at once */
    int64_t slots = (T > 0 ? T : 0) * g->k_top;
    grid[0] = (unsigned)((slots + g->bm - 1) / g->bm + (g->kind == CG_CUDA_GEMM_LINEAR ? 0 : g->experts));
    grid[1] = (unsigned)((g->n + g->bn - 1) / g->bn);
    block[0] = g->path == CG_CUDA_PATH_MMA ? (unsigned)mma_threads(g) : FMA_THREADS;
    if (g->ws) { /* the tiles in one row of blocks that loop over them: as many as tiles, at most persist */
        uint64_t tiles = (uint64_t)grid[0] * grid[1];
        grid[0] = (unsigned)(g->persist > 0 && tiles > (uint64_t)g->persist ? (uint64_t)g->persist : tiles ? tiles : 1);
        grid[1] = 1;
    }
}

/* ---- rounding activations to 16 bits (the input of an a16 UP) ------------------------------------ */

void cg_cuda_round16_symbol(moe_dtype wdtype, char *out, size_t n)
{
    snprintf(out, n, "moeppc_cu_round16_%s", dtype_name(wdtype));
}

/* The kernel named `name` that rounds 8 f32 a thread to 16 bits, from x's element src (after the
 * parameters and the checks of `head`, which set src and leave threads past the end) to y[i]. */
static char *pack16_source(moe_dtype wdtype, const char *name, const char *params, const char *head)
{
    CgBuf b = {0};
    cb_prelude(&b, wdtype);
    cb_printf(&b, "#define PACK %s\n"
                  "extern \"C\" __global__ void __launch_bounds__(256) %s(%s) {\n"
                  "    PDL_ENTRY();\n"
                  "    long long i = ((long long)blockIdx.x * 256 + threadIdx.x) * 8;\n"
                  "%s"
                  "    float4 lo = *(const float4 *)src, hi = *(const float4 *)(src + 4);\n"
                  "    *(uint4 *)(y + i) = make_uint4(PACK(lo.x, lo.y), PACK(lo.z, lo.w), PACK(hi.x, hi.y), PACK(hi.z, hi.w));\n"
                  "}\n", wdtype == DT_BF16 ? "pack_bf16" : "pack_f16", name, params, head);
    return b.s;
}

char *cg_cuda_round16_source(moe_dtype wdtype)
{
    char name[64];
    cg_cuda_round16_symbol(wdtype, name, sizeof name);
    return pack16_source(wdtype, name, "long long n, const float *x, u16 *y",
                         "    if (i >= n) return;\n"
                         "    const float *src = x + i;\n");
}

void cg_cuda_round16_launch(int64_t n, unsigned grid[3], unsigned block[3])
{
    grid[0] = (unsigned)((n / 8 + 255) / 256), grid[1] = grid[2] = 1;
    block[0] = 256, block[1] = block[2] = 1;
}

void cg_cuda_gather16_symbol(moe_dtype wdtype, char *out, size_t n)
{
    snprintf(out, n, "moeppc_cu_gather16_%s", dtype_name(wdtype));
}

char *cg_cuda_gather16_source(moe_dtype wdtype)
{
    char name[64];
    cg_cuda_gather16_symbol(wdtype, name, sizeof name);
    return pack16_source(wdtype, name,
                         "long long slots, long long d, long long e, const float *x, const long long *off,\n"
                         "        const int *perm, u16 *y",
                         "    long long s = i / d;\n"
                         "    if (s >= slots || s >= off[e]) return;  /* (past the FFN picks' slots: no row reads it) */\n"
                         "    const float *src = x + (long long)perm[s] * d + (i - s * d);\n");
}

void cg_cuda_gather16_launch(int64_t slots, int64_t d, unsigned grid[3], unsigned block[3])
{
    cg_cuda_round16_launch(slots * d, grid, block);
}
