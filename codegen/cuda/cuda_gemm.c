/* cuda_gemm.c — CUDA C for the grouped GEMMs of the MoE experts (cg_cuda.h: UP with the SwiGLU
 * epilogue, DOWN with the gate-weighted scatter-add), three paths: tensor-core MMA (bf16/f16),
 * f32 FMA tiles, and the decode GEMV. Every shape and tile is a compile-time constant. */
#include "codegen/cuda/cuda_internal.h"

#include <string.h>

#define MMA_THREADS 128 /* 2 x 2 warps */
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
    case CG_CUDA_PATH_MMA: g.bm = 64, g.bn = 64, g.bk = 32; break;
    case CG_CUDA_PATH_FMA: g.bm = 64, g.bn = 64, g.bk = 16; break;
    case CG_CUDA_PATH_GEMV: g.bn = 4; break;
    }
    return g;
}

void cg_cuda_gemm_symbol(const CgCudaGemm *g, char *out, size_t n)
{
    snprintf(out, n, "moeppc_cu_gemm_%s_%s_%s_e%lld_k%lld_n%lld_k%lld_t%dx%dx%d",
             g->kind == CG_CUDA_GEMM_UP ? "up" : "down", cg_cuda_gemm_path_name(g->path), dtype_name(g->wdtype),
             (long long)g->experts, (long long)g->k_top, (long long)g->n, (long long)g->k, g->bm, g->bn, g->bk);
}

static bool check(const CgCudaGemm *g, char *err, size_t errlen)
{
    const char *why = NULL;
    bool half = g->wdtype == DT_BF16 || g->wdtype == DT_F16;
    if (g->experts <= 0 || g->k_top <= 0 || g->n <= 0 || g->k <= 0) why = "experts, top_k, n and k must be positive";
    else if (!half && g->wdtype != DT_F32) why = "weights must be f32, bf16 or f16";
    else if (g->path == CG_CUDA_PATH_MMA && (!half || g->k % 8))
        why = "the MMA path needs bf16/f16 weights and k a multiple of 8 (16-byte rows)";
    else if (g->path == CG_CUDA_PATH_MMA && (g->bm % 32 || g->bn % 16 || g->bk % 16 || g->bm > 128 || g->bn > 128))
        why = "MMA tile: bm a multiple of 32, bn of 16, bk of 16, bm and bn <= 128";
    else if (g->path == CG_CUDA_PATH_FMA && (g->wdtype != DT_F32 || g->bm % 16 || g->bn % 16 || g->bk <= 0))
        why = "the FMA path needs f32 weights and bm, bn multiples of 16";
    else if (g->path == CG_CUDA_PATH_GEMV && (g->bn <= 0 || g->bn > 32)) why = "GEMV: 1..32 warps";
    if (why) {
        char sym[256];
        cg_cuda_gemm_symbol(g, sym, sizeof sym);
        snprintf(err, errlen, "cuda gemm %s: %s", sym, why);
    }
    return why == NULL;
}

/* The constants, the signature and the (group, tile) search every tiled path starts with. */
static void emit_head(CgBuf *b, const CgCudaGemm *g, const char *name, int threads)
{
    bool up = g->kind == CG_CUDA_GEMM_UP;
    cb_printf(b, "#define E %lld\n#define N %lld\n#define KD %lld\n#define BM %d\n#define BN %d\n#define BK %d\n"
                 "#define NB %d\n#define NT %d\n",
              (long long)g->experts, (long long)g->n, (long long)g->k, g->bm, g->bn, g->bk, up ? 2 : 1, threads);
    /* UP: W rows of a are e*2N + n, of b e*2N + N + n; DOWN: e*N + n */
    cb_printf(b, "#define WROW(e, mat, n) ((long long)(e) * (NB * N) + (mat) * N + (n))\n");
    if (up)
        cb_printf(b, "extern \"C\" __global__ void __launch_bounds__(NT) %s(long long T, const float *x, "
                     "const long long *off, const int *perm, const void *wv, float *out) {\n"
                     "#define AROW(s) (x + (long long)perm[s] * KD)\n", name);
    else
        cb_printf(b, "extern \"C\" __global__ void __launch_bounds__(NT) %s(long long T, const float *x, "
                     "const long long *off, const int *perm, const float *gate_w, const void *wv, float *out) {\n"
                     "#define AROW(s) (x + (long long)(s) * KD)\n", name);
}

static void emit_find_tile(CgBuf *b)
{
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
}

static void emit_mma(CgBuf *b, const CgCudaGemm *g, const char *name)
{
    bool up = g->kind == CG_CUDA_GEMM_UP, bf = g->wdtype == DT_BF16;
    cb_printf(b, "#define MI (BM / 32)\n#define NI (BN / 16)\n#define LDS (BK + 8)\n"
                 "#define PACK %s\n#define MMA_T \"%s\"\n", bf ? "pack_bf16" : "pack_f16", bf ? "bf16" : "f16");
    cb_printf(b, "__device__ __forceinline__ void mma(float *c, const u32 *a, const u32 *bb) {\n"
                 "    asm volatile(\"mma.sync.aligned.m16n8k16.row.col.f32.\" MMA_T \".\" MMA_T \".f32 \"\n"
                 "                 \"{%%0,%%1,%%2,%%3}, {%%4,%%5,%%6,%%7}, {%%8,%%9}, {%%0,%%1,%%2,%%3};\"\n"
                 "                 : \"+f\"(c[0]), \"+f\"(c[1]), \"+f\"(c[2]), \"+f\"(c[3])\n"
                 "                 : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"r\"(bb[0]), \"r\"(bb[1]));\n}\n");
    emit_head(b, g, name, MMA_THREADS);
    emit_find_tile(b);
    cb_printf(b,
        "    __shared__ __align__(16) u16 As[BM][LDS];\n"
        "    __shared__ __align__(16) u16 Bs[NB][BN][LDS];\n"
        "    const u16 *w = (const u16 *)wv;\n"
        "    int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5, wm = wid >> 1, wn = wid & 1;\n"
        "    int gr = lane >> 2, gc = (lane & 3) * 2;\n"
        "    float acc[NB][MI][NI][4];\n"
        "#pragma unroll\n"
        "    for (int q = 0; q < NB * MI * NI * 4; q++) (&acc[0][0][0][0])[q] = 0.0f;\n"
        "    for (int k0 = 0; k0 < KD; k0 += BK) {\n"
        "        for (int q = tid; q < BM * BK / 8; q += NT) {  /* A: f32 rows -> 8 x 16-bit */\n"
        "            int r = q / (BK / 8), c = (q %% (BK / 8)) * 8;\n"
        "            uint4 v = make_uint4(0u, 0u, 0u, 0u);\n"
        "            if (m0 + r < ge && k0 + c < KD) {\n"
        "                const float4 *src = (const float4 *)(AROW(m0 + r) + k0 + c);\n"
        "                float4 lo = src[0], hi = src[1];\n"
        "                v = make_uint4(PACK(lo.x, lo.y), PACK(lo.z, lo.w), PACK(hi.x, hi.y), PACK(hi.z, hi.w));\n"
        "            }\n"
        "            *(uint4 *)&As[r][c] = v;\n"
        "        }\n"
        "        for (int q = tid; q < NB * BN * BK / 8; q += NT) {  /* B: 16-byte weight loads */\n"
        "            int mat = q / (BN * BK / 8), rem = q %% (BN * BK / 8), r = rem / (BK / 8), c = (rem %% (BK / 8)) * 8;\n"
        "            uint4 v = make_uint4(0u, 0u, 0u, 0u);\n"
        "            if (n0 + r < N && k0 + c < KD) v = *(const uint4 *)(w + WROW(e, mat, n0 + r) * KD + k0 + c);\n"
        "            *(uint4 *)&Bs[mat][r][c] = v;\n"
        "        }\n"
        "        __syncthreads();\n"
        "#pragma unroll\n"
        "        for (int kk = 0; kk < BK; kk += 16) {\n"
        "            u32 af[MI][4], bfr[NB][NI][2];\n"
        "#pragma unroll\n"
        "            for (int i = 0; i < MI; i++) {\n"
        "                int r = wm * (BM / 2) + i * 16 + gr;\n"
        "                af[i][0] = *(const u32 *)&As[r][kk + gc];\n"
        "                af[i][1] = *(const u32 *)&As[r + 8][kk + gc];\n"
        "                af[i][2] = *(const u32 *)&As[r][kk + gc + 8];\n"
        "                af[i][3] = *(const u32 *)&As[r + 8][kk + gc + 8];\n"
        "            }\n"
        "#pragma unroll\n"
        "            for (int mat = 0; mat < NB; mat++)\n"
        "#pragma unroll\n"
        "                for (int j = 0; j < NI; j++) {\n"
        "                    int cn = wn * (BN / 2) + j * 8 + gr;\n"
        "                    bfr[mat][j][0] = *(const u32 *)&Bs[mat][cn][kk + gc];\n"
        "                    bfr[mat][j][1] = *(const u32 *)&Bs[mat][cn][kk + gc + 8];\n"
        "                }\n"
        "#pragma unroll\n"
        "            for (int mat = 0; mat < NB; mat++)\n"
        "#pragma unroll\n"
        "                for (int i = 0; i < MI; i++)\n"
        "#pragma unroll\n"
        "                    for (int j = 0; j < NI; j++) mma(acc[mat][i][j], af[i], bfr[mat][j]);\n"
        "        }\n"
        "        __syncthreads();\n"
        "    }\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < MI; i++)\n"
        "#pragma unroll\n"
        "        for (int j = 0; j < NI; j++)\n"
        "#pragma unroll\n"
        "            for (int q = 0; q < 4; q++) {  /* c0,c1: row gr; c2,c3: row gr + 8 */\n"
        "                long long s = m0 + wm * (BM / 2) + i * 16 + gr + (q >> 1) * 8;\n"
        "                int n = n0 + wn * (BN / 2) + j * 8 + gc + (q & 1);\n"
        "                if (s >= ge || n >= N) continue;\n");
    if (up)
        cb_printf(b, "                float a = acc[0][i][j][q];\n"
                     "                out[s * N + n] = a / (1.0f + expf(-a)) * acc[1][i][j][q];\n");
    else
        cb_printf(b, "                atomicAdd(out + (long long)perm[s] * N + n, gate_w[s] * acc[0][i][j][q]);\n");
    cb_printf(b, "            }\n}\n");
}

static void emit_fma(CgBuf *b, const CgCudaGemm *g, const char *name)
{
    bool up = g->kind == CG_CUDA_GEMM_UP;
    cb_printf(b, "#define TM (BM / 16)\n#define TN (BN / 16)\n");
    emit_head(b, g, name, FMA_THREADS);
    emit_find_tile(b);
    cb_printf(b,
        "    __shared__ float As[BK][BM];\n"
        "    __shared__ float Bs[NB][BK][BN];\n"
        "    const float *w = (const float *)wv;\n"
        "    int tid = threadIdx.x, tx = tid & 15, tyy = tid >> 4;\n"
        "    float acc[NB][TM][TN];\n"
        "#pragma unroll\n"
        "    for (int q = 0; q < NB * TM * TN; q++) (&acc[0][0][0])[q] = 0.0f;\n"
        "    for (int k0 = 0; k0 < KD; k0 += BK) {\n"
        "        for (int q = tid; q < BM * BK; q += NT) {\n"
        "            int r = q / BK, c = q %% BK;\n"
        "            As[c][r] = (m0 + r < ge && k0 + c < KD) ? AROW(m0 + r)[k0 + c] : 0.0f;\n"
        "        }\n"
        "        for (int q = tid; q < NB * BN * BK; q += NT) {\n"
        "            int mat = q / (BN * BK), rem = q %% (BN * BK), r = rem / BK, c = rem %% BK;\n"
        "            Bs[mat][c][r] = (n0 + r < N && k0 + c < KD) ? w[WROW(e, mat, n0 + r) * KD + k0 + c] : 0.0f;\n"
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
    if (up)
        cb_printf(b, "            float a = acc[0][i][j];\n"
                     "            out[s * N + n] = a / (1.0f + expf(-a)) * acc[1][i][j];\n");
    else
        cb_printf(b, "            atomicAdd(out + (long long)perm[s] * N + n, gate_w[s] * acc[0][i][j]);\n");
    cb_printf(b, "        }\n}\n");
}

/* Decode: one warp per output row n (UP: the a and b rows of column n); the group's slots in chunks
 * of MAXS, all accumulated in registers while the warp streams the weight row once per chunk. */
static void emit_gemv(CgBuf *b, const CgCudaGemm *g, const char *name)
{
    bool up = g->kind == CG_CUDA_GEMM_UP, f32 = g->wdtype == DT_F32;
    CgCudaGemm h = *g;
    h.bm = 1, h.bk = 8;
    cb_printf(b, "#define MAXS %d\n#define NWARP %d\n#define VEC (KD %% 8 == 0)\n#define K8 (VEC ? KD / 8 * 8 : 0)\n",
              CG_CUDA_GEMV_MAX_T, g->bn);
    emit_head(b, &h, name, 32 * g->bn);
    cb_printf(b,
        "    int lane = threadIdx.x & 31, n = blockIdx.x * NWARP + (threadIdx.x >> 5), e = blockIdx.y;\n"
        "    if (n >= N) return;\n"
        "    long long gs = off[e], ge = off[e + 1];\n"
        "    const wtype *w = (const wtype *)wv;\n"
        "    for (long long s0 = gs; s0 < ge; s0 += MAXS) {\n"
        "        int cnt = ge - s0 < MAXS ? (int)(ge - s0) : MAXS;\n"
        "        float acc[NB][MAXS];\n"

        "#pragma unroll\n"
        "        for (int s = 0; s < MAXS; s++) {\n"

        "#pragma unroll\n"
        "            for (int mat = 0; mat < NB; mat++) acc[mat][s] = 0.0f;\n"
        "        }\n"
        "        for (int k = lane * 8; k < K8; k += 256) {\n"
        "            float wf[NB][8];\n"
        "#pragma unroll\n"
        "            for (int mat = 0; mat < NB; mat++) {\n"
        "                const wtype *wr = w + WROW(e, mat, n) * KD + k;\n");
    if (f32)
        cb_printf(b, "                float4 lo = ((const float4 *)wr)[0], hi = ((const float4 *)wr)[1];\n"
                     "                wf[mat][0] = lo.x, wf[mat][1] = lo.y, wf[mat][2] = lo.z, wf[mat][3] = lo.w;\n"
                     "                wf[mat][4] = hi.x, wf[mat][5] = hi.y, wf[mat][6] = hi.z, wf[mat][7] = hi.w;\n");
    else
        cb_printf(b, "                uint4 v = *(const uint4 *)wr;  /* 8 weights, one 16-byte load */\n"
                     "                u32 p[4] = {v.x, v.y, v.z, v.w};\n"
                     "#pragma unroll\n"
                     "                for (int q = 0; q < 4; q++) {\n"
                     "                    wf[mat][2 * q] = %s((u16)(p[q] & 0xffffu));\n"
                     "                    wf[mat][2 * q + 1] = %s((u16)(p[q] >> 16));\n"
                     "                }\n",
                  g->wdtype == DT_BF16 ? "bf16_f32" : "f16_f32", g->wdtype == DT_BF16 ? "bf16_f32" : "f16_f32");
    cb_printf(b,
        "            }\n"
        "#pragma unroll\n"
        "            for (int s = 0; s < MAXS; s++) {\n"
        "                if (s >= cnt) break;\n"
        "                const float *xs = AROW(s0 + s) + k;\n"
        "                float4 lo = *(const float4 *)xs, hi = *(const float4 *)(xs + 4);\n"
        "                float xv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};\n"
        "#pragma unroll\n"
        "                for (int mat = 0; mat < NB; mat++)\n"
        "#pragma unroll\n"
        "                    for (int q = 0; q < 8; q++) acc[mat][s] = fmaf(wf[mat][q], xv[q], acc[mat][s]);\n"
        "            }\n"
        "        }\n"
        "        for (int k = K8 + lane; k < KD; k += 32)  /* scalar tail (k not a multiple of 8) */\n"
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
        "            if (lane != 0) continue;\n");
    if (up)
        cb_printf(b, "            out[(s0 + s) * N + n] = r[0] / (1.0f + expf(-r[0])) * r[NB - 1];\n");
    else
        cb_printf(b, "            atomicAdd(out + (long long)perm[s0 + s] * N + n, gate_w[s0 + s] * r[0]);\n");
    cb_printf(b, "        }\n    }\n}\n");
}

char *cg_cuda_gemm_source(const CgCudaGemm *g, char *err, size_t errlen)
{
    if (!check(g, err, errlen)) return NULL;
    char name[256];
    cg_cuda_gemm_symbol(g, name, sizeof name);
    CgBuf b = {0};
    cb_prelude(&b, g->wdtype);
    switch (g->path) {
    case CG_CUDA_PATH_MMA: emit_mma(&b, g, name); break;
    case CG_CUDA_PATH_FMA: emit_fma(&b, g, name); break;
    case CG_CUDA_PATH_GEMV: emit_gemv(&b, g, name); break;
    }
    return b.s;
}

void cg_cuda_gemm_launch(const CgCudaGemm *g, int64_t T, unsigned grid[3], unsigned block[3], size_t *smem)
{
    grid[2] = 1, block[1] = block[2] = 1;
    *smem = 0;
    if (g->path == CG_CUDA_PATH_GEMV) {
        grid[0] = (unsigned)((g->n + g->bn - 1) / g->bn), grid[1] = (unsigned)g->experts, block[0] = 32u * (unsigned)g->bn;
        return;
    }
    /* sum over groups of ceil(count / bm) <= ceil(T*k / bm) + E; spare blocks return at once */
    int64_t slots = (T > 0 ? T : 0) * g->k_top;
    grid[0] = (unsigned)((slots + g->bm - 1) / g->bm + g->experts);
    grid[1] = (unsigned)((g->n + g->bn - 1) / g->bn);
    block[0] = g->path == CG_CUDA_PATH_MMA ? MMA_THREADS : FMA_THREADS;
}
