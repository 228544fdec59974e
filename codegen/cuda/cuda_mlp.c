/* cuda_mlp.c — CUDA C for the decode MLP (cg_cuda.h): a grouped UP with its SwiGLU and the DOWN that
 * reads its h, in one launch, one slot a row of blocks. */
#include "codegen/cuda/cuda_internal.h"

/* W_down's slice in shared memory, at most: within every target's opt-in (sm_86/89: 99 KB a block). */
#define MLP_SMEM_RULE (96 * 1024)
#define MLP_SMEM_MAX (227 * 1024) /* sm_90's; a larger slice compiles for no target */

static bool half(moe_dtype dt) { return dt == DT_BF16 || dt == DT_F16; }

CgCudaMlp cg_cuda_mlp_rule(moe_dtype wdtype, int64_t experts, int64_t k_top, int64_t d, int64_t i)
{
    CgCudaMlp m = {.wdtype = wdtype, .experts = experts, .k_top = k_top, .d = d, .i = i, .warps = 8};
    if (half(wdtype) && d % 8 == 0 && i % 8 == 0)
        m.rows = d * 32 * 2 <= MLP_SMEM_RULE ? 32 : d * 16 * 2 <= MLP_SMEM_RULE ? 16 : 0;
    return m;
}

static const char *mlp_check(const CgCudaMlp *m)
{
    if (!half(m->wdtype)) return "16-bit weights only";
    if (m->experts < 1 || m->k_top < 1 || m->d < 8 || m->i < 8) return "shapes out of range";
    if (m->d % 8 || m->i % 8) return "d and i multiples of 8 (16-byte rows)";
    if (m->rows != 8 && m->rows != 16 && m->rows != 32 && m->rows != 64) return "rows 8, 16, 32 or 64";
    if (m->warps < 1 || m->warps > 32) return "1..32 warps";
    if (m->d * m->rows * 2 > MLP_SMEM_MAX) return "W_down's slice exceeds a block's shared memory";
    return NULL;
}

void cg_cuda_mlp_symbol(const CgCudaMlp *m, char *out, size_t n)
{
    snprintf(out, n, "moeppc_cu_gemm_mlp_%s_e%lld_k%lld_d%lld_i%lld_r%dw%d", dtype_name(m->wdtype),
             (long long)m->experts, (long long)m->k_top, (long long)m->d, (long long)m->i, m->rows, m->warps);
}

size_t cg_cuda_mlp_smem(const CgCudaMlp *m) { return (size_t)(m->d * m->rows * 2); }

void cg_cuda_mlp_launch(const CgCudaMlp *m, int64_t T, unsigned grid[3], unsigned block[3], size_t *smem)
{
    grid[0] = (unsigned)((m->i + m->rows - 1) / m->rows), grid[1] = (unsigned)((T > 0 ? T : 1) * m->k_top), grid[2] = 1;
    block[0] = 32u * (unsigned)m->warps, block[1] = block[2] = 1;
    *smem = cg_cuda_mlp_smem(m);
}

/* Block (c, s): slot s's group e and rows [r0, r0 + ROWS) of h, r0 = c·ROWS.
 * 1. W_down[e]'s columns r0.. (D rows of ROWS weights, 16 bytes a cp.async) start for shared memory,
 *    so that the block's whole share of both matrices is in flight from the start.
 * 2. h's rows: a warp a row (a and b: UP's rows n and I + n), 16-byte weight loads UNROLL a matrix in
 *    flight, x's row from memory (L1), warp sums; silu(a)·b into hs.
 * 3. Each row d of y: the slice's row · hs, LPR lanes a row (16 bytes each) summed by shuffles, four
 *    consecutive rows gathered into one lane for one vector reduction (atomic_add_quad), times
 *    gate_w[s]; a warp's rows 8 passes at a time, independent (memory is idle meanwhile: no chain
 *    of dependent shared loads, sums and shuffles a pass). The blocks of a slot add into the same
 *    rows of y: the sum's order is not fixed. */
char *cg_cuda_mlp_source(const CgCudaMlp *m, char *err, size_t errlen)
{
    char name[256];
    cg_cuda_mlp_symbol(m, name, sizeof name);
    const char *why = mlp_check(m);
    if (why) {
        snprintf(err, errlen, "cuda mlp %s: %s", name, why);
        return NULL;
    }
    int64_t iters = (m->d + 255) / 256, batches = (iters + 7) / 8;
    const char *cvt = m->wdtype == DT_BF16 ? "bf16_f32" : "f16_f32";
    CgBuf b = {0};
    cb_prelude(&b, m->wdtype);
    cb_printf(&b, "#define E %lld\n#define D %lld\n#define I %lld\n#define ROWS %d\n#define NW %d\n"
                  "#define NT (NW * 32)\n"
                  "#define UNROLL %lld  /* 16-byte loads a lane and matrix in flight */\n"
                  "#define LPR (ROWS / 8)  /* lanes a row of the slice */\n"
                  "#define RPW (32 / LPR)  /* rows of the slice a warp reads at once */\n"
                  "#define PASSES ((D + NW * RPW - 1) / (NW * RPW))  /* a warp's passes over RPW rows of the slice */\n"
                  "#define PU (PASSES < 8 ? PASSES : 8)\n"
                  "#define W16(v) %s((u16)(v))\n",
              (long long)m->experts, (long long)m->d, (long long)m->i, m->rows, m->warps,
              (long long)((iters + batches - 1) / batches), cvt);
    cb_printf(&b,
        "/* 8 weights (16 bytes) times 8 values, into acc */\n"
        "__device__ __forceinline__ float dot8(uint4 w, const float *v, float acc) {\n"
        "    u32 p[4] = {w.x, w.y, w.z, w.w};\n"
        "#pragma unroll\n"
        "    for (int q = 0; q < 4; q++)\n"
        "        acc = fmaf(W16(p[q] & 0xffffu), v[2 * q], fmaf(W16(p[q] >> 16), v[2 * q + 1], acc));\n"
        "    return acc; }\n"
        "extern \"C\" __global__ void __launch_bounds__(NT) %s(long long T, const float *x, const long long *off,\n"
        "        const int *perm, const float *gate_w, const void *wup, const void *wdown, float *y) {\n"
        "    PDL_ENTRY();\n"
        "    DYN_SHARED(u16, wsl);  /* W_down[e][:, r0 .. r0 + ROWS): D rows of ROWS */\n"
        "    __shared__ __align__(16) float hs[ROWS];\n"
        "    const int sp = blockIdx.y, r0 = blockIdx.x * ROWS, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;\n"
        "    if (sp >= off[E]) return;  /* (a zero-computation pick's) */\n"
        "    int e = 0;\n"
        "    while (off[e + 1] <= sp) e++;  /* its group */\n"
        "    const wtype *wu = (const wtype *)wup + (long long)e * 2 * I * D;\n"
        "    const wtype *wd = (const wtype *)wdown + (long long)e * D * I;\n"
        "    for (int c = threadIdx.x; c < D * LPR; c += NT) {\n"
        "        int d = c / LPR, col = r0 + c %% LPR * 8;\n"
        "        bool in = col < I;  /* (the last block's rows past I: zeros) */\n"
        "        const void *src = in ? (const void *)(wd + (long long)d * I + col) : (const void *)wd;\n"
        "        cp_async16(wsl + d * ROWS + c %% LPR * 8, src, in ? 16u : 0u);\n"
        "    }\n"
        "    cp_async_commit();\n"
        "    const float *xr = x + (long long)perm[sp] * D;\n"
        "    for (int j = warp; j < ROWS; j += NW) {\n"
        "        int n = r0 + j;\n"
        "        float a = 0.0f, b = 0.0f;\n"
        "        if (n < I) {\n"
        "            const wtype *wa = wu + (long long)n * D, *wb = wa + (long long)I * D;\n"
        "            for (int k0 = lane * 8; k0 < D; k0 += 256 * UNROLL) {\n"
        "                uint4 ra[UNROLL], rb[UNROLL];\n"
        "#pragma unroll\n"
        "                for (int u = 0; u < UNROLL; u++)\n"
        "                    if (k0 + u * 256 < D)\n"
        "                        ra[u] = *(const uint4 *)(wa + k0 + u * 256),\n"
        "                        rb[u] = *(const uint4 *)(wb + k0 + u * 256);\n"
        "#pragma unroll\n"
        "                for (int u = 0; u < UNROLL; u++) {\n"
        "                    int k = k0 + u * 256;\n"
        "                    if (k >= D) break;\n"
        "                    float4 lo = *(const float4 *)(xr + k), hi = *(const float4 *)(xr + k + 4);\n"
        "                    float xv[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};\n"
        "                    a = dot8(ra[u], xv, a), b = dot8(rb[u], xv, b);\n"
        "                }\n"
        "            }\n"
        "        }\n"
        "        a = warp_sum(a), b = warp_sum(b);\n"
        "        if (lane == 0) hs[j] = n < I ? a / (1.0f + expf(-a)) * b : 0.0f;\n"
        "    }\n"
        "    cp_async_wait<0>();\n"
        "    __syncthreads();\n"
        "    const int q = lane %% LPR, g = lane / LPR;\n"
        "    float hv[8];\n"
        "#pragma unroll\n"
        "    for (int t = 0; t < 8; t++) hv[t] = hs[q * 8 + t];\n"
        "    const float gw = gate_w[sp];\n"
        "    float *yr = y + (long long)perm[sp] * D;\n"
        "    /* the warp's passes over RPW rows, PU at a time: their loads, sums and shuffles interleaved */\n"
        "    for (int i0 = 0; i0 < PASSES; i0 += PU) {\n"
        "        float s[PU];\n"
        "#pragma unroll\n"
        "        for (int u = 0; u < PU; u++) {\n"
        "            int d = ((i0 + u) * NW + warp) * RPW + g;\n"
        "            bool in = i0 + u < PASSES && d < D;\n"
        "            s[u] = in ? dot8(*(const uint4 *)(wsl + d * ROWS + q * 8), hv, 0.0f) : 0.0f;\n"
        "        }\n"
        "#pragma unroll\n"
        "        for (int o = 1; o < LPR; o <<= 1)\n"
        "#pragma unroll\n"
        "            for (int u = 0; u < PU; u++) s[u] += __shfl_xor_sync(0xffffffffu, s[u], o);\n"
        "#pragma unroll\n"
        "        for (int u = 0; u < PU; u++) {\n"
        "            int d = ((i0 + u) * NW + warp) * RPW + g;\n"
        "            float s1 = __shfl_down_sync(0xffffffffu, s[u], LPR);\n"
        "            float s2 = __shfl_down_sync(0xffffffffu, s[u], 2 * LPR);\n"
        "            float s3 = __shfl_down_sync(0xffffffffu, s[u], 3 * LPR);\n"
        "            if (q == 0 && g %% 4 == 0 && i0 + u < PASSES && d < D)\n"
        "                atomic_add_quad(yr + d, gw * s[u], gw * s1, gw * s2, gw * s3);\n"
        "        }\n"
        "    }\n"
        "}\n", name);
    return b.s;
}
