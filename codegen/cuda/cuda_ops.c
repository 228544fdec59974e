/* cuda_ops.c — CUDA C for the non-GEMM ops (the kinds of cg_ops.h), one translation unit per kernel,
 * every constant of the descriptor baked in as a #define. Launch shapes in cg_cuda_op_launch. */
#include "codegen/cuda/cuda_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ROW_THREADS 256  /* embed, norms, rope, combine: one block per row */
#define EW_THREADS 256   /* elementwise: grid-stride */
#define ROUTE_WARPS 4    /* route_post: tokens per block */

void cg_cuda_op_symbol(const CgOpDesc *d, char *out, size_t n)
{
    char sym[512];
    cg_op_symbol(d, sym, sizeof sym);
    const char *rest = strncmp(sym, "moeppc_op_", 10) == 0 ? sym + 10 : sym;
    snprintf(out, n, "moeppc_cu_%s", rest);
}

static const char block_sum[] =
    "__device__ float block_sum(float v) {\n"
    "    __shared__ float red[32];\n"
    "    v = warp_sum(v);\n"
    "    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;\n"
    "    __syncthreads();\n"
    "    v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;\n"
    "    if (threadIdx.x < 32) v = warp_sum(v);\n"
    "    if (threadIdx.x == 0) red[0] = v;\n"
    "    __syncthreads();\n"
    "    v = red[0];\n"
    "    __syncthreads();\n"
    "    return v;\n"
    "}\n";

static void emit_embed(CgBuf *b, const char *name)
{
    cb_printf(b, "extern \"C\" __global__ void %s(long long T, const int *ids, const void *table, float *out) {\n"
                 "    PDL_ENTRY();\n"
                 "    long long t = blockIdx.x;\n"
                 "    if (t >= T) return;\n"
                 "    long long row = (long long)ids[t] * COLS;\n"
                 "    for (int c = threadIdx.x; c < COLS; c += blockDim.x) out[t * COLS + c] = ldw(table, row + c);\n"
                 "}\n", name);
}

static void emit_norm(CgBuf *b, const char *name, bool add)
{
    cb_printf(b, "%s", block_sum);
    if (add)
        cb_printf(b, "extern \"C\" __global__ void %s(long long T, const float *a, const float *bb, const void *w, "
                     "float *sum, float *out) {\n"
                     "    PDL_ENTRY();\n"
                     "    long long t = blockIdx.x;\n"
                     "    if (t >= T) return;\n"
                     "    const float *ar = a + t * COLS, *br = bb + t * COLS;\n"
                     "    float *x = sum + t * COLS;\n"
                     "    float ss = 0.0f;\n"
                     "    for (int c = threadIdx.x; c < COLS; c += blockDim.x) { float v = ar[c] + br[c]; x[c] = v; ss += v * v; }\n",
                  name);
    else
        cb_printf(b, "extern \"C\" __global__ void %s(long long T, const float *xin, const void *w, float *out) {\n"
                     "    PDL_ENTRY();\n"
                     "    long long t = blockIdx.x;\n"
                     "    if (t >= T) return;\n"
                     "    const float *x = xin + t * COLS;\n"
                     "    float ss = 0.0f;\n"
                     "    for (int c = threadIdx.x; c < COLS; c += blockDim.x) ss += x[c] * x[c];\n",
                  name);
    /* each thread reads back only the sum elements it wrote itself: no barrier needed for them */
    cb_printf(b, "    ss = block_sum(ss);\n"
                 "    float inv = 1.0f / sqrtf(ss / (float)COLS + (float)EPS);\n"
                 "    for (int c = threadIdx.x; c < COLS; c += blockDim.x) out[t * COLS + c] = ldw(w, c) * (x[c] * inv);\n"
                 "}\n");
}

static void emit_rope(CgBuf *b, const CgOpDesc *d, const char *name)
{
    int64_t half = d->head_dim / 2;
    cb_printf(b, "#define HEADS %lld\n#define KVH %lld\n#define HD %lld\n#define HALF %lld\n"
                 "__constant__ double freqs[HALF] = {",
              (long long)d->heads, (long long)d->kv_heads, (long long)d->head_dim, (long long)half);
    for (int64_t j = 0; j < half; j++)
        cb_printf(b, "%s%.17g", j ? ", " : "", pow(d->theta, -2.0 * (double)j / (double)d->head_dim));
    cb_printf(b, "};\n"
                 "/* angles in f64 like the CPU kernel; out may alias x (each thread owns its pairs); with KVH\n"
                 " * (the queries' and the keys' RoPE in one launch) x2 [T, KVH*HD] too, into out2, by the same\n"
                 " * thread as x's pair of the same index: out2 may alias x exactly (read before written) */\n"
                 "extern \"C\" __global__ void %s(long long T, const float *x, const int *pos, float *out%s) {\n"
                 "    PDL_ENTRY();\n"
                 "    long long t = blockIdx.x;\n"
                 "    if (t >= T) return;\n"
                 "    double p = (double)pos[t];\n"
                 "    for (int i = threadIdx.x; i < HEADS * HALF; i += blockDim.x) {\n"
                 "        int h = i / HALF, j = i %% HALF;\n"
                 "        double ang = p * freqs[j];\n"
                 "        float c = (float)cos(ang), s = (float)sin(ang);\n"
                 "        long long base = t * COLS + (long long)h * HD;\n"
                 "        float x0 = x[base + j], x1 = x[base + j + HALF];\n"
                 "%s"
                 "        out[base + j] = x0 * c - x1 * s;\n"
                 "        out[base + j + HALF] = x1 * c + x0 * s;\n"
                 "%s"
                 "    }\n"
                 "}\n", name, d->kv_heads ? ", const float *x2, float *out2" : "",
              d->kv_heads ? "        long long b2 = t * (KVH * HD) + (long long)h * HD;\n"
                            "        float y0 = h < KVH ? x2[b2 + j] : 0.0f, y1 = h < KVH ? x2[b2 + j + HALF] : 0.0f;\n"
                          : "",
              d->kv_heads ? "        if (h < KVH) {\n"
                            "            out2[b2 + j] = y0 * c - y1 * s;\n"
                            "            out2[b2 + j + HALF] = y1 * c + y0 * s;\n"
                            "        }\n"
                          : "");
}

/* The KV cache's element for a model of dtype dt: f32, or its 16-bit type (u16 in signatures). */
static bool kv16(moe_dtype dt) { return dt == DT_BF16 || dt == DT_F16; }
static const char *kv_ctype(moe_dtype dt) { return kv16(dt) ? "u16" : "float"; }

/* kvt, and kv_ld (an element as f32), kv_of (f32 rounded to an element), kv_round (both). */
static void emit_kv_type(CgBuf *b, moe_dtype dt)
{
    if (!kv16(dt)) {
        cb_printf(b, "typedef float kvt;\n"
                     "__device__ __forceinline__ float kv_ld(const kvt *p, long long i) { return p[i]; }\n"
                     "__device__ __forceinline__ kvt kv_of(float x) { return x; }\n"
                     "__device__ __forceinline__ float kv_round(float x) { return x; }\n");
        return;
    }
    const char *w = dt == DT_BF16 ? "bf16" : "f16";
    cb_printf(b, "typedef u16 kvt;  /* the model's %s */\n"
                 "__device__ __forceinline__ float kv_ld(const kvt *p, long long i) { return %s_f32(p[i]); }\n"
                 "__device__ __forceinline__ kvt kv_of(float x) { return (kvt)(pack_%s(x, 0.0f) & 0xffffu); }\n"
                 "__device__ __forceinline__ float kv_round(float x) { return %s_f32(kv_of(x)); }\n", w, w, w, w);
}

/* kv_ld_row(p, i, f): elements i..i+EPL-1 of a cache row into f[], EPL 2 or 4 of them in one load
 * (8 or 16 bytes for f32, 4 or 8 for a 16-bit cache; i a multiple of EPL). */
static void emit_kv_vec_load(CgBuf *b, moe_dtype dt, int epl)
{
    if (!kv16(dt)) {
        cb_printf(b, "__device__ __forceinline__ void kv_ld_row(const kvt *p, long long i, float *f) {\n%s}\n",
                  epl == 4 ? "    float4 v = *(const float4 *)(p + i);\n    f[0] = v.x, f[1] = v.y, f[2] = v.z, f[3] = v.w;\n"
                           : "    float2 v = *(const float2 *)(p + i);\n    f[0] = v.x, f[1] = v.y;\n");
        return;
    }
    const char *cv = dt == DT_BF16 ? "bf16_f32" : "f16_f32";
    if (epl == 4)
        cb_printf(b, "__device__ __forceinline__ void kv_ld_row(const kvt *p, long long i, float *f) {\n"
                     "    uint2 v = *(const uint2 *)(p + i);\n"
                     "    f[0] = %s((u16)(v.x & 0xffffu)), f[1] = %s((u16)(v.x >> 16));\n"
                     "    f[2] = %s((u16)(v.y & 0xffffu)), f[3] = %s((u16)(v.y >> 16));\n}\n", cv, cv, cv, cv);
    else
        cb_printf(b, "__device__ __forceinline__ void kv_ld_row(const kvt *p, long long i, float *f) {\n"
                     "    u32 v = *(const u32 *)(p + i);\n"
                     "    f[0] = %s((u16)(v & 0xffffu)), f[1] = %s((u16)(v >> 16));\n}\n", cv, cv);
}

/* Whether a block of g query heads of warps warps fits its shared accumulators (32 KB). */
static bool gq_fits(const CgOpDesc *d, int64_t g, int warps) { return g * warps * d->head_dim * 4 <= 32 * 1024; }

int cg_cuda_attention_heads_per_block(const CgOpDesc *d, int warps)
{
    int64_t group = d->kv_heads > 0 ? d->heads / d->kv_heads : 1;
    int64_t g = group < CG_CUDA_ATTN_GQ_MAX ? group : CG_CUDA_ATTN_GQ_MAX;
    while (g > 1 && (group % g || !gq_fits(d, g, warps))) g--;
    return (int)g;
}

/* Form f's query heads a block (1 but for the per-query form). */
static int form_gq(const CgOpDesc *d, const CgCudaAttnForm *f)
{
    return f->bq != 1 ? 1 : f->gq > 0 ? f->gq : cg_cuda_attention_heads_per_block(d, f->tpq / 32);
}

/* seqs: the form that takes rows of several sequences in one launch (a serving batch's step,
 * cg_cuda_attention_seqs_source): its row i the model's row t = rows[i] (rows NULL: i), whose
 * caches are kvs[2 seq[t]] and kvs[2 seq[t] + 1], and its grid (heads / G, T, splits), so that the
 * blocks of a row's heads run together (GQA's blocks of one kv head read its caches through L2 once,
 * as the launches a sequence did). */
static void emit_attention(CgBuf *b, const CgOpDesc *d, const char *name, int warps, int splits, int gq, bool seqs)
{
    /* lane l holds dimensions l, l + 32, ... of the head; or, when the head fits 2 or 4 a lane in
     * pieces of that many (33..64 wide and even, 65..128 and a multiple of 4: the 7B's 96 takes 4 a
     * lane on 24 lanes), the EPL consecutive ones from l EPL: one vector load of a key's (value's) EPL
     * elements instead of EPL loads (lanes past the head's end load nothing) */
    int epl = (int)((d->head_dim + 31) / 32);
    if (epl == 3) epl = 4;
    int vec = (epl == 2 || epl == 4) && d->head_dim % epl == 0;
    if (!vec) epl = (int)((d->head_dim + 31) / 32);
    /* KB keys (and values) a warp loads at once; with G heads a block each serves G dot products, so
     * half as many are in flight and the G heads' queries and accumulators have the registers */
    int kb = (d->head_dim <= 128 ? 8 : 4) / (gq > 1 ? 2 : 1);
    cb_printf(b, "#define HEADS %lld\n#define KVH %lld\n#define HD %lld\n#define NW %d\n"
                 "#define EPL %d\n#define GROUP (HEADS / KVH)\n#define GQ %d\n#define SPLITS %d\n#define MINK %d\n"
                 "#define KB %d\n#define VEC %d\n#define DD(i) (VEC ? lane * EPL + (i) : lane + 32 * (i))\n",
              (long long)d->heads, (long long)d->kv_heads, (long long)d->head_dim, warps, epl, gq,
              splits > 1 ? splits : 1, CG_CUDA_ATTN_SPLIT_MIN_KEYS, kb, vec);
    cb_printf(b, "#define SCALE ((float)%.17g)\n", 1.0 / sqrt((double)d->head_dim));
    emit_kv_type(b, d->wdtype);
    if (vec) emit_kv_vec_load(b, d->wdtype, epl);
    else cb_printf(b, "#define kv_ld_row(p, i, f) ((void)0)  /* (not used: VEC 0) */\n");
    char params[96];
    if (seqs) snprintf(params, sizeof params, "const unsigned long long *kvs, const int *seq, const int *rows");
    else snprintf(params, sizeof params, "%s *kc, %s *vc", kv_ctype(d->wdtype), kv_ctype(d->wdtype));
    cb_printf(b,
        "/* knew, vnew (a decode step: T = 1, or rows of T distinct sequences, kvs and seq giving each row's\n"
        " * caches): row t's key and value at pos[t] come from them, not the caches, and the first query head\n"
        " * of each KV head stores them there for the steps to come (no block of this launch reads that\n"
        " * row). Split s of A takes keys j0..j1-1; with A > 1 the last split to\n"
        " * finish merges the splits' partial results (part) and resets the count (cnt). */\n"
        "extern \"C\" __global__ void __launch_bounds__(NW * 32) %s(long long T, const float *q, %s,\n"
        "        const int *pos, float *out, const float *knew, const float *vnew, float *part, unsigned *cnt) {\n"
        "    PDL_ENTRY();\n"
        "    __shared__ float sm[GQ][NW], sl[GQ][NW], sacc[GQ][NW][HD], se[GQ][SPLITS];\n"
        "    __shared__ unsigned last;\n"
        "    long long i = blockIdx.%c;  /* the launch's row i: the model's row t (its part and cnt are i's) */\n"
        "    int h0 = blockIdx.%c * GQ, s = blockIdx.z, kvh = h0 / GROUP;\n"
        "    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;\n"
        "    if (i >= T) return;\n%s"
        "    int n = pos[t] + 1;\n"
        "    int chunk = part ? (n + (int)gridDim.z - 1) / (int)gridDim.z : n;  /* (gridDim.z <= SPLITS) */\n"
        "    if (part && chunk < MINK) chunk = MINK;\n"
        "    int A = (n + chunk - 1) / chunk;\n"
        "    if (s >= A) return;  /* (a short context: fewer splits) */\n"
        "    int j0 = s * chunk, j1 = n - j0 < chunk ? n : j0 + chunk;\n"
        "    if (knew && h0 %% GROUP == 0 && s == 0)\n"
        "        for (int dd = threadIdx.x; dd < HD; dd += blockDim.x) {\n"
        "            long long c = (long long)pos[t] * (KVH * HD) + kvh * HD + dd;\n"
        "            long long at = t * (KVH * HD) + kvh * HD + dd;\n"
        "            kc[c] = kv_of(knew[at]), vc[c] = kv_of(vnew[at]);\n"
        "        }\n"
        "    float qr[GQ][EPL], acc[GQ][EPL], m[GQ], l[GQ];  /* per query head g of the block's */\n"
        "#pragma unroll\n"
        "    for (int g = 0; g < GQ; g++) {\n"
        "        m[g] = -INFINITY, l[g] = 0.0f;\n"
        "#pragma unroll\n"
        "        for (int i = 0; i < EPL; i++) {\n"
        "            int dd = DD(i);\n"
        "            qr[g][i] = dd < HD ? q[t * (HEADS * HD) + (h0 + g) * HD + dd] : 0.0f;\n"
        "            acc[g][i] = 0.0f;\n"
        "        }\n"
        "    }\n"
        "    for (int jb = j0 + w * KB; jb < j1; jb += NW * KB) {  /* streaming softmax, KB keys a time */\n"
        "        float kx[KB][EPL], vx[KB][EPL], sc[KB];\n"
        "#pragma unroll\n"
        "        for (int u = 0; u < KB; u++) {  /* every load of the KB keys and values first */\n"
        "            int j = jb + u;\n"
        "            bool fresh = knew && j == n - 1;  /* (rounded as the cache would hold it) */\n"
        "            long long row = (long long)j * (KVH * HD) + kvh * HD, fr = t * (KVH * HD) + kvh * HD;\n"
        "            const kvt *kr = kc + row, *vr = vc + row;\n"
        "            const float *kn = fresh ? knew + fr : 0, *vn = fresh ? vnew + fr : 0;\n"
        "            if (VEC && j < j1 && !fresh) {  /* the lane's EPL elements, one load each */\n"
        "                if (lane * EPL < HD) {\n"
        "                    kv_ld_row(kr, lane * EPL, kx[u]);\n"
        "                    kv_ld_row(vr, lane * EPL, vx[u]);\n"
        "                } else\n"
        "#pragma unroll\n"
        "                    for (int i = 0; i < EPL; i++) kx[u][i] = vx[u][i] = 0.0f;\n"
        "                continue;\n"
        "            }\n"
        "#pragma unroll\n"
        "            for (int i = 0; i < EPL; i++) {\n"
        "                int dd = DD(i);\n"
        "                bool ok = j < j1 && dd < HD;\n"
        "                kx[u][i] = !ok ? 0.0f : fresh ? kv_round(kn[dd]) : kv_ld(kr, dd);\n"
        "                vx[u][i] = !ok ? 0.0f : fresh ? kv_round(vn[dd]) : kv_ld(vr, dd);\n"
        "            }\n"
        "        }\n"
        "#pragma unroll\n"
        "        for (int g = 0; g < GQ; g++) {  /* each loaded key and value serves the GQ heads */\n"
        "            float mn = m[g];\n"
        "#pragma unroll\n"
        "            for (int u = 0; u < KB; u++) {\n"
        "                float dot = 0.0f;\n"
        "#pragma unroll\n"
        "                for (int i = 0; i < EPL; i++) dot += qr[g][i] * kx[u][i];\n"
        "                sc[u] = warp_sum(dot) * SCALE;\n"
        "                if (jb + u < j1) mn = fmaxf(mn, sc[u]);\n"
        "            }\n"
        "            float corr = expf(m[g] - mn);  /* key jb is in range: mn is finite */\n"
        "            l[g] *= corr;\n"
        "#pragma unroll\n"
        "            for (int i = 0; i < EPL; i++) acc[g][i] *= corr;\n"
        "#pragma unroll\n"
        "            for (int u = 0; u < KB; u++) {\n"
        "                float p = jb + u < j1 ? expf(sc[u] - mn) : 0.0f;\n"
        "                l[g] += p;\n"
        "#pragma unroll\n"
        "                for (int i = 0; i < EPL; i++) acc[g][i] += p * vx[u][i];\n"
        "            }\n"
        "            m[g] = mn;\n"
        "        }\n"
        "    }\n"
        "#pragma unroll\n"
        "    for (int g = 0; g < GQ; g++) {\n"
        "        if (lane == 0) { sm[g][w] = m[g]; sl[g][w] = l[g]; }\n"
        "#pragma unroll\n"
        "        for (int i = 0; i < EPL; i++) { int dd = DD(i); if (dd < HD) sacc[g][w][dd] = acc[g][i]; }\n"
        "    }\n"
        "    __syncthreads();\n"
        "    for (int g = 0; g < GQ; g++) {\n"
        "        float mx = sm[g][0];  /* warp 0 always has key j0, so mx is finite */\n"
        "        for (int k = 1; k < NW; k++) mx = fmaxf(mx, sm[g][k]);\n"
        "        float tot = 0.0f;\n"
        "        for (int k = 0; k < NW; k++) tot += sl[g][k] * expf(sm[g][k] - mx);\n"
        "        float *pp = part + ((i * HEADS + h0 + g) * SPLITS + s) * (HD + 2);  /* (used only when A > 1) */\n"
        "        for (int dd = threadIdx.x; dd < HD; dd += blockDim.x) {\n"
        "            float o = 0.0f;\n"
        "            for (int k = 0; k < NW; k++) o += sacc[g][k][dd] * expf(sm[g][k] - mx);\n"
        "            if (A == 1) out[t * (HEADS * HD) + (h0 + g) * HD + dd] = o / tot;\n"
        "            else pp[2 + dd] = o;\n"
        "        }\n"
        "        if (A > 1 && threadIdx.x == 0) pp[0] = mx, pp[1] = tot;\n"
        "    }\n"
        "    if (A == 1) return;\n"
        "    __threadfence();  /* this split's results, before its arrival counts */\n"
        "    __syncthreads();\n"
        "    if (threadIdx.x == 0) last = atomicAdd(cnt + i * HEADS + h0, 1u) == (unsigned)A - 1;\n"
        "    __syncthreads();\n"
        "    if (!last) return;\n"
        "    __threadfence();\n"
        "    for (int g = 0; g < GQ; g++) {  /* the last split merges the GQ heads' */\n"
        "        const float *pb = part + (i * HEADS + h0 + g) * SPLITS * (HD + 2);\n"
        "        float M = -INFINITY;\n"
        "        for (int k = 0; k < A; k++) M = fmaxf(M, __ldcg(pb + k * (HD + 2)));\n"
        "        for (int k = threadIdx.x; k < A; k += blockDim.x) se[g][k] = expf(__ldcg(pb + k * (HD + 2)) - M);\n"
        "        __syncthreads();\n"
        "        float L = 0.0f;\n"
        "        for (int k = 0; k < A; k++) L += se[g][k] * __ldcg(pb + k * (HD + 2) + 1);\n"
        "        for (int dd = threadIdx.x; dd < HD; dd += blockDim.x) {\n"
        "            float o = 0.0f;\n"
        "            for (int k = 0; k < A; k++) o += se[g][k] * __ldcg(pb + k * (HD + 2) + 2 + dd);\n"
        "            out[t * (HEADS * HD) + (h0 + g) * HD + dd] = o / L;\n"
        "        }\n"
        "    }\n"
        "    if (threadIdx.x == 0) cnt[i * HEADS + h0] = 0u;  /* for the next launch */\n"
        "}\n", name, params, seqs ? 'y' : 'x', seqs ? 'x' : 'y',
        seqs ? "    long long t = rows ? rows[i] : i;\n"
               "    kvt *kc = (kvt *)kvs[2 * seq[t]], *vc = (kvt *)kvs[2 * seq[t] + 1];\n"
             : "    long long t = i;\n");
}

/* Prefill attention, tiled: a block per BQ consecutive queries of one head, TPQ threads a query
 * (dimension d of the head belongs to thread d % TPQ of its query: a query's threads read adjacent
 * words of a staged key, no bank conflicts). Keys and values come through shared memory in tiles of
 * BKV rows, loaded once for the block's queries (the one-block-per-query kernel reads them once per
 * query); each query keeps the online max, sum and accumulator of SEMANTICS.md's softmax over its
 * keys 0..pos[t] (masked past them: the block walks to its largest). */
static bool check(const CgOpDesc *d, char *err, size_t errlen);

int cg_cuda_attention_splits(const CgOpDesc *d)
{
    int s = 1;
    int64_t blocks = d->heads / cg_cuda_attention_heads_per_block(d, CG_CUDA_ATTN_WARPS); /* a query's */
    while (s < CG_CUDA_ATTN_SPLIT_MAX && s * blocks < CG_CUDA_ATTN_SPLIT_BLOCKS) s *= 2;
    return s;
}


static int attn_bkv(const CgOpDesc *d, const CgCudaAttnForm *f)
{
    if (f->tpq == 0) return f->bkv ? f->bkv : 64;         /* tensor cores: 16-bit tiles */
    return f->bkv ? f->bkv : d->head_dim <= 128 ? 32 : 16; /* 2 x BKV x HD floats: at most 32 KB */
}

void cg_cuda_attention_symbol(const CgOpDesc *d, const CgCudaAttnForm *f, char *out, size_t n)
{
    bool own_gq = f->bq == 1 && form_gq(d, f) != cg_cuda_attention_heads_per_block(d, f->tpq / 32);
    if (f->bq == 1 && f->tpq == 32 * CG_CUDA_ATTN_WARPS && f->bkv == cg_cuda_attention_splits(d) && !own_gq) {
        cg_cuda_op_symbol(d, out, n);
        return;
    }
    if (f->bq > 1 && f->tpq == 0) {
        snprintf(out, n, "moeppc_cu_attention_mma_%s_h%lld_kv%lld_hd%lld_q%d_b%d", dtype_name(d->wdtype),
                 (long long)d->heads, (long long)d->kv_heads, (long long)d->head_dim, f->bq, attn_bkv(d, f));
        return;
    }
    int w = snprintf(out, n, "moeppc_cu_attention_%s%s%sh%lld_kv%lld_hd%lld_q%d", f->bq > 1 ? "tiled_" : "",
                     kv16(d->wdtype) ? dtype_name(d->wdtype) : "", kv16(d->wdtype) ? "_" : "", (long long)d->heads,
                     (long long)d->kv_heads, (long long)d->head_dim, f->bq);
    if (f->bq == 1 && w > 0 && (size_t)w < n) {
        int x = snprintf(out + w, n - (size_t)w, f->bkv > 1 ? "_t%d_s%d" : "_t%d", f->tpq, f->bkv);
        if (own_gq && x > 0 && (size_t)(w + x) < n) snprintf(out + w + x, n - (size_t)(w + x), "_g%d", f->gq);
    }
    else if ((f->tpq != 4 || f->bkv) && w > 0 && (size_t)w < n)
        snprintf(out + w, n - (size_t)w, "_t%d_b%d", f->tpq, attn_bkv(d, f));
}

static bool attn_form_check(const CgOpDesc *d, const CgCudaAttnForm *f, char *err, size_t errlen)
{
    const char *why = NULL;
    bool pow2 = f->tpq > 0 && (f->tpq & (f->tpq - 1)) == 0, tc = f->bq != 1 && f->tpq == 0; /* tc: tensor cores */
    if (d->kind != CG_OP_ATTENTION) why = "not an attention op";
    else if (f->bq == 1 && (f->tpq % 32 || f->tpq < 32 || f->tpq > 1024 || f->bkv < 0 || f->bkv > CG_CUDA_ATTN_SPLIT_MAX))
        why = "per-query form: 32..1024 threads, whole warps, 0..32 key splits";
    else if (tc && d->wdtype != DT_BF16 && d->wdtype != DT_F16)
        why = "tensor-core form: 16-bit models only (f32 ones keep f32 math)";
    else if (tc && (d->head_dim % 16 || d->head_dim > 128)) why = "tensor-core form: head_dim a multiple of 16 up to 128";
    else if (tc && (f->bq < 16 || f->bq > 128 || f->bq % 16 || f->bkv < 0 || f->bkv % 16 || f->bkv > 128 ||
                    8L * attn_bkv(d, f) * (d->head_dim + 8) + 4 > 48 * 1024)) /* two slots of K and V, 16-bit */
        why = "tensor-core form: 16..128 queries a block (16 a warp), key tiles of 16..128 (a multiple of 16) within 48 KB";
    else if (!tc && f->bq != 1 && (f->bq < 2 || !pow2 || f->tpq > 32 || (f->bq * f->tpq) % 32 || f->bq * f->tpq > 1024))
        why = "tiled form: 2 or more queries a block, a power of two up to 32 threads each, whole warps up to 1024";
    else if (!tc && f->bq != 1 && (f->bkv < 0 || f->bkv > 256 || 2L * attn_bkv(d, f) * d->head_dim * 4 + 4 > 48 * 1024))
        why = "tiled form: key tiles of 1..256 rows within 48 KB of shared memory";  /* (+ the block's key count) */
    else if (f->gq < 0 || (f->gq > 0 && (f->bq != 1 || f->gq > CG_CUDA_ATTN_GQ_MAX ||
                                         (d->heads / d->kv_heads) % f->gq || !gq_fits(d, f->gq, f->tpq / 32))))
        why = "query heads a block: the per-query form's, a divisor of heads / kv_heads up to 4 within 32 KB";
    char g[24] = "";
    if (f->gq) snprintf(g, sizeof g, "/g%d", f->gq);
    if (why) snprintf(err, errlen, "cuda attention %dx%d/kv%d%s: %s", f->bq, f->tpq, f->bkv, g, why);
    return why == NULL;
}

CgCudaAttnForm cg_cuda_attention_rule(const CgOpDesc *d, int64_t T)
{
    if (T < CG_CUDA_ATTN_TILED_MIN_T)
        return (CgCudaAttnForm){1, 32 * CG_CUDA_ATTN_WARPS, cg_cuda_attention_splits(d), 0};
    CgCudaAttnForm tc = {CG_CUDA_ATTN_BQ, 0, d->head_dim <= 64 ? 64 : 32, 0}; /* (64 keys of 96 dims spill on sm_90) */
    char unused[256];
    return attn_form_check(d, &tc, unused, sizeof unused) ? tc : (CgCudaAttnForm){CG_CUDA_ATTN_BQ, 4, 0, 0};
}

/* The tiled forms' parameters and first lines: the block's rows t0.. (those below T live) and its
 * caches kc, vc of type kt. seqs: the form for runs of several sequences' rows in one launch
 * (cg_cuda_attention_seqs_source): runs[2 k], runs[2 k + 1] the first row and the row count of run k
 * of R, each of one sequence, whose caches are kvs[2 seq[row]] and kvs[2 seq[row] + 1]; its blocks
 * the runs' tiles of BQ rows (the last of a run's may have fewer) in order: block x finds its run by
 * walking them, so the list needs no entry a tile and holds for any BQ. */
static void emit_tiled_head(CgBuf *b, const char *name, const char *kt, bool seqs)
{
    if (!seqs) {
        cb_printf(b,
            "extern \"C\" __global__ void __launch_bounds__(NT) %s(long long T, const float *q, const %s *kc,\n"
            "                                const %s *vc, const int *pos, float *out) {\n"
            "    PDL_ENTRY();\n"
            "    long long t0 = (long long)blockIdx.x * BQ;\n", name, kt, kt);
        return;
    }
    cb_printf(b,
        "extern \"C\" __global__ void __launch_bounds__(NT) %s(long long R, const float *q,\n"
        "        const unsigned long long *kvs, const int *seq, const int *runs, const int *pos, float *out) {\n"
        "    PDL_ENTRY();\n"
        "    long long tile = blockIdx.x;  /* the block's tile, then its tile within its run rk */\n"
        "    int rk = 0;\n"
        "    for (; rk + 1 < R && tile >= (runs[2 * rk + 1] + BQ - 1) / BQ; rk++) tile -= (runs[2 * rk + 1] + BQ - 1) / BQ;\n"
        "    long long t0 = runs[2 * rk] + tile * BQ, T = (long long)runs[2 * rk] + runs[2 * rk + 1];\n"
        "    const %s *kc = (const %s *)kvs[2 * seq[t0]], *vc = (const %s *)kvs[2 * seq[t0] + 1];\n",
        name, kt, kt, kt);
}

/* Prefill attention on tensor cores (16-bit models; tpq = 0): a block per BQ consecutive queries of one
 * head, a warp per 16 of them (mma.sync m16n8k16, f32 accumulators). The queries are the warp's A
 * fragments, rounded to the model's 16-bit type once; tiles of BKV keys come from the cache (in that
 * type) by cp.async into a ring of two in shared memory, the next in flight while one is used; K's B
 * fragments are pairs of k in its rows, V's come transposed by ldmatrix.trans. S = Q K^T in f32,
 * scaled and masked past each query's position, the online softmax of SEMANTICS.md in f32 on the
 * accumulator fragments (a row's four threads agree through shuffles), P rounded to 16 bits straight
 * from S's fragments as A of O += P V. Rows of shared memory padded by 8 elements: the fragments'
 * reads fall in distinct banks. */
static void emit_attention_mma(CgBuf *b, const CgOpDesc *d, const CgCudaAttnForm *f, const char *name, bool seqs)
{
    bool bf = d->wdtype == DT_BF16;
    cb_printf(b, "#define HEADS %lld\n#define KVH %lld\n#define HD %lld\n#define GROUP (HEADS / KVH)\n"
                 "#define BQ %d\n#define BKV %d\n#define NT (BQ * 2)\n#define KS (HD + 8)\n#define CH (HD / 8)\n"
                 "#define PACK %s\n#define mma %s\n",
              (long long)d->heads, (long long)d->kv_heads, (long long)d->head_dim, f->bq, attn_bkv(d, f),
              bf ? "pack_bf16" : "pack_f16", bf ? "mma_16816_bf16" : "mma_16816_f16");
    cb_printf(b, "#define SCALE ((float)%.17g)\n", 1.0 / sqrt((double)d->head_dim));
    emit_tiled_head(b, name, "u16", seqs);
    cb_printf(b,
        "    __shared__ __align__(16) u16 ks[2][BKV * KS], vs[2][BKV * KS];  /* a ring of two tiles */\n"
        "    __shared__ int nmax;\n"
        "    int tid = threadIdx.x, lane = tid & 31, g = lane >> 2, c = lane & 3, h = blockIdx.y, kvh = h / GROUP;\n"
        "    int ta = (int)t0 + (tid >> 5) * 16 + g, tb = ta + 8;  /* this thread's two rows */\n"
        "    int na = ta < T ? pos[ta] + 1 : 0, nb = tb < T ? pos[tb] + 1 : 0;  /* their keys: 0..n-1 */\n"
        "    if (tid == 0) nmax = 0;\n"
        "    __syncthreads();\n"
        "    if (na > 0 || nb > 0) atomicMax(&nmax, na > nb ? na : nb);\n"
        "    __syncthreads();\n"
        "    const int N = nmax;\n"
        "    const float *qa_ = q + (long long)ta * (HEADS * HD) + h * HD, *qb_ = q + (long long)tb * (HEADS * HD) + h * HD;\n"
        "    u32 qf[HD / 16][4];\n"
        "#pragma unroll\n"
        "    for (int kk = 0; kk < HD / 16; kk++) {\n"
        "        int d0 = 16 * kk + 2 * c, d1 = d0 + 8;\n"
        "        qf[kk][0] = ta < T ? PACK(qa_[d0], qa_[d0 + 1]) : 0u, qf[kk][1] = tb < T ? PACK(qb_[d0], qb_[d0 + 1]) : 0u;\n"
        "        qf[kk][2] = ta < T ? PACK(qa_[d1], qa_[d1 + 1]) : 0u, qf[kk][3] = tb < T ? PACK(qb_[d1], qb_[d1 + 1]) : 0u;\n"
        "    }\n"
        "    float o[HD / 8][4];\n"
        "#pragma unroll\n"
        "    for (int dn = 0; dn < HD / 8; dn++) o[dn][0] = o[dn][1] = o[dn][2] = o[dn][3] = 0.0f;\n"
        "    float ma = -INFINITY, mb = -INFINITY, la = 0.0f, lb = 0.0f;  /* row max, this thread's part of the sum */\n"
        "    const u16 *kb = kc + kvh * HD, *vb = vc + kvh * HD;\n"
        "/* keys j0.. into ring slot sl: 16-byte cp.async copies of the cache's rows, rows past N zeros */\n"
        "#define LOAD_TILE(sl, j0) do { \\\n"
        "        for (int x = tid; x < BKV * CH; x += NT) { \\\n"
        "            int r = x / CH, ch = x %% CH, j = (j0) + r; \\\n"
        "            long long at = (long long)(j < N ? j : 0) * (KVH * HD) + ch * 8; \\\n"
        "            cp_async16(&ks[sl][r * KS + ch * 8], kb + at, j < N ? 16u : 0u); \\\n"
        "            cp_async16(&vs[sl][r * KS + ch * 8], vb + at, j < N ? 16u : 0u); \\\n"
        "        } \\\n"
        "        cp_async_commit(); } while (0)\n"
        "    LOAD_TILE(0, 0);\n"
        "    for (int j0 = 0, sl = 0; j0 < N; j0 += BKV, sl ^= 1) {\n"
        "        if (j0 + BKV < N) LOAD_TILE(sl ^ 1, j0 + BKV);  /* the next tile in flight while this one is used */\n"
        "        else cp_async_commit();  /* (an empty group: the wait below counts alike) */\n"
        "        cp_async_wait<1>();\n"
        "        __syncthreads();  /* tile j0 landed, every thread's copies */\n"
        "        const u16 *kt = ks[sl], *vt_ = vs[sl];\n"
        "        float sf[BKV / 8][4];  /* S = Q K^T: key n-tiles of 8 */\n"
        "#pragma unroll\n"
        "        for (int nt = 0; nt < BKV / 8; nt++) {\n"
        "            sf[nt][0] = sf[nt][1] = sf[nt][2] = sf[nt][3] = 0.0f;\n"
        "            const u16 *kr = kt + (nt * 8 + g) * KS + 2 * c;\n"
        "#pragma unroll\n"
        "            for (int kk = 0; kk < HD / 16; kk++) {\n"
        "                u32 bk[2] = {*(const u32 *)(kr + 16 * kk), *(const u32 *)(kr + 16 * kk + 8)};\n"
        "                mma(sf[nt], qf[kk], bk);\n"
        "            }\n"
        "        }\n"
        "        float xa = ma, xb = mb;\n"
        "#pragma unroll\n"
        "        for (int nt = 0; nt < BKV / 8; nt++)\n"
        "#pragma unroll\n"
        "            for (int e = 0; e < 2; e++) {\n"
        "                int j = j0 + nt * 8 + 2 * c + e;\n"
        "                sf[nt][e] = j < na ? sf[nt][e] * SCALE : -INFINITY;\n"
        "                sf[nt][2 + e] = j < nb ? sf[nt][2 + e] * SCALE : -INFINITY;\n"
        "                xa = fmaxf(xa, sf[nt][e]), xb = fmaxf(xb, sf[nt][2 + e]);\n"
        "            }\n"
        "        xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 1)), xa = fmaxf(xa, __shfl_xor_sync(0xffffffffu, xa, 2));\n"
        "        xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 1)), xb = fmaxf(xb, __shfl_xor_sync(0xffffffffu, xb, 2));\n"
        "        float ba = xa == -INFINITY ? 0.0f : xa, bb = xb == -INFINITY ? 0.0f : xb;  /* (a row with no key yet) */\n"
        "        float ca = expf(ma - ba), cb = expf(mb - bb);\n"
        "        ma = xa, mb = xb, la *= ca, lb *= cb;\n"
        "#pragma unroll\n"
        "        for (int dn = 0; dn < HD / 8; dn++) o[dn][0] *= ca, o[dn][1] *= ca, o[dn][2] *= cb, o[dn][3] *= cb;\n"
        "#pragma unroll\n"
        "        for (int nt = 0; nt < BKV / 8; nt++)\n"
        "#pragma unroll\n"
        "            for (int e = 0; e < 2; e++) {\n"
        "                sf[nt][e] = expf(sf[nt][e] - ba), sf[nt][2 + e] = expf(sf[nt][2 + e] - bb);\n"
        "                la += sf[nt][e], lb += sf[nt][2 + e];\n"
        "            }\n"
        "#pragma unroll\n"
        "        for (int kk = 0; kk < BKV / 16; kk++) {  /* O += P V: P's A fragments are S's accumulators */\n"
        "            u32 pf[4] = {PACK(sf[2 * kk][0], sf[2 * kk][1]), PACK(sf[2 * kk][2], sf[2 * kk][3]),\n"
        "                         PACK(sf[2 * kk + 1][0], sf[2 * kk + 1][1]), PACK(sf[2 * kk + 1][2], sf[2 * kk + 1][3])};\n"
        "#pragma unroll\n"
        "            for (int dn = 0; dn < HD / 8; dn += 2) {  /* V's B fragments of two dimension tiles, transposed */\n"
        "                u32 bv[4];\n"
        "                int key = 16 * kk + ((lane >> 3) & 1) * 8 + (lane & 7);  /* this lane's row: matrix lane / 8 */\n"
        "                ldmatrix_x4_trans(bv, vt_ + key * KS + dn * 8 + (lane >> 4) * 8);\n"
        "                mma(o[dn], pf, bv);\n"
        "                mma(o[dn + 1], pf, bv + 2);\n"
        "            }\n"
        "        }\n"
        "        __syncthreads();  /* slot sl consumed: the next tile's prefetch refills it */\n"
        "    }\n"
        "    la += __shfl_xor_sync(0xffffffffu, la, 1), la += __shfl_xor_sync(0xffffffffu, la, 2);\n"
        "    lb += __shfl_xor_sync(0xffffffffu, lb, 1), lb += __shfl_xor_sync(0xffffffffu, lb, 2);\n"
        "    float *oa = out + (long long)ta * (HEADS * HD) + h * HD + 2 * c;\n"
        "    float *ob = out + (long long)tb * (HEADS * HD) + h * HD + 2 * c;\n"
        "#pragma unroll\n"
        "    for (int dn = 0; dn < HD / 8; dn++) {\n"
        "        if (ta < T) oa[dn * 8] = o[dn][0] / la, oa[dn * 8 + 1] = o[dn][1] / la;\n"
        "        if (tb < T) ob[dn * 8] = o[dn][2] / lb, ob[dn * 8 + 1] = o[dn][3] / lb;\n"
        "    }\n"
        "}\n");
}

void cg_cuda_attention_seqs_symbol(const CgOpDesc *d, const CgCudaAttnForm *f, char *out, size_t n)
{
    char base[560];
    cg_cuda_attention_symbol(d, f, base, sizeof base);
    snprintf(out, n, "%s_seqs", base);
}

/* The source of form f's kernel; seqs: its form for several sequences' rows (its symbol "_seqs"). */
static char *attention_source(const CgOpDesc *d, const CgCudaAttnForm *f, bool seqs, char *err, size_t errlen)
{
    if (!check(d, err, errlen) || !attn_form_check(d, f, err, errlen)) return NULL;
    char name[600];
    if (seqs) cg_cuda_attention_seqs_symbol(d, f, name, sizeof name);
    else cg_cuda_attention_symbol(d, f, name, sizeof name);
    CgBuf b = {0};
    cb_prelude(&b, DT_F32);
    if (f->bq == 1) {
        emit_attention(&b, d, name, f->tpq / 32, f->bkv, form_gq(d, f), seqs);
        return b.s;
    }
    if (f->tpq == 0) {
        emit_attention_mma(&b, d, f, name, seqs);
        return b.s;
    }
    cb_printf(&b, "#define HEADS %lld\n#define KVH %lld\n#define HD %lld\n#define GROUP (HEADS / KVH)\n"
                  "#define BQ %d\n#define TPQ %d\n#define NT (BQ * TPQ)\n#define DPT ((HD + TPQ - 1) / TPQ)\n"
                  "#define BKV %d\n",
              (long long)d->heads, (long long)d->kv_heads, (long long)d->head_dim, f->bq, f->tpq, attn_bkv(d, f));
    cb_printf(&b, "#define SCALE ((float)%.17g)\n", 1.0 / sqrt((double)d->head_dim));
    emit_kv_type(&b, d->wdtype);
    emit_tiled_head(&b, name, kv_ctype(d->wdtype), seqs);
    cb_printf(&b,
        "    __shared__ float ks[BKV][HD], vs[BKV][HD];\n"
        "    __shared__ int nmax;\n"
        "    int tid = threadIdx.x, c = tid %% TPQ, h = blockIdx.y, kvh = h / GROUP;\n"
        "    long long t = t0 + tid / TPQ;\n"
        "    bool live = t < T;\n"
        "    int n = live ? pos[t] + 1 : 0;  /* this query's keys: 0..n-1 */\n"
        "    if (tid == 0) nmax = 0;\n"
        "    __syncthreads();\n"
        "    if (live && c == 0) atomicMax(&nmax, n);\n"
        "    __syncthreads();\n"
        "    const int N = nmax;\n"
        "    float qr[DPT], acc[DPT];\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < DPT; i++) {\n"
        "        int dd = TPQ * i + c;\n"
        "        qr[i] = live && dd < HD ? q[t * (HEADS * HD) + h * HD + dd] : 0.0f;\n"
        "        acc[i] = 0.0f;\n"
        "    }\n"
        "    float m = -INFINITY, l = 0.0f;\n"
        "    for (int j0 = 0; j0 < N; j0 += BKV) {\n"
        "        __syncthreads();  /* the last tile is consumed */\n"
        "        for (int x = tid; x < BKV * HD; x += NT) {\n"
        "            int r = x / HD, dd = x %% HD;\n"
        "            long long j = j0 + r, at = j * (KVH * HD) + kvh * HD + dd;\n"
        "            ks[r][dd] = j < N ? kv_ld(kc, at) : 0.0f;\n"
        "            vs[r][dd] = j < N ? kv_ld(vc, at) : 0.0f;\n"
        "        }\n"
        "        __syncthreads();\n"
        "        int rows = N - j0 < BKV ? N - j0 : BKV;\n"
        "        for (int r = 0; r < rows; r++) {\n"
        "            float s = 0.0f;\n"
        "#pragma unroll\n"
        "            for (int i = 0; i < DPT; i++) { int dd = TPQ * i + c; if (dd < HD) s += qr[i] * ks[r][dd]; }\n"
        "#pragma unroll\n"
        "            for (int o = 1; o < TPQ; o <<= 1) s += __shfl_xor_sync(0xffffffffu, s, o);  /* the query's partial sums */\n"
        "            if (j0 + r >= n) continue;  /* past this query's position (its threads agree) */\n"
        "            s *= SCALE;\n"
        "            float mn = fmaxf(m, s), corr = expf(m - mn), p = expf(s - mn);\n"
        "            l = l * corr + p;\n"
        "#pragma unroll\n"
        "            for (int i = 0; i < DPT; i++) { int dd = TPQ * i + c; if (dd < HD) acc[i] = acc[i] * corr + p * vs[r][dd]; }\n"
        "            m = mn;\n"
        "        }\n"
        "    }\n"
        "    if (!live) return;\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < DPT; i++) {\n"
        "        int dd = TPQ * i + c;\n"
        "        if (dd < HD) out[t * (HEADS * HD) + h * HD + dd] = acc[i] / l;\n"
        "    }\n"
        "}\n");
    return b.s;
}

char *cg_cuda_attention_source(const CgOpDesc *d, const CgCudaAttnForm *f, char *err, size_t errlen)
{
    return attention_source(d, f, false, err, errlen);
}

char *cg_cuda_attention_seqs_source(const CgOpDesc *d, const CgCudaAttnForm *f, char *err, size_t errlen)
{
    return attention_source(d, f, true, err, errlen);
}

void cg_cuda_attention_launch(const CgOpDesc *d, const CgCudaAttnForm *f, int64_t T, unsigned grid[3], unsigned block[3])
{
    int64_t rows = T > 0 ? T : 1, gq = form_gq(d, f);
    grid[0] = (unsigned)((rows + f->bq - 1) / f->bq), grid[1] = (unsigned)(d->heads / gq);
    grid[2] = f->bq == 1 && f->bkv > 1 ? (unsigned)((f->bkv + rows - 1) / rows) : 1; /* fewer as queries fill it */
    block[0] = (unsigned)(f->tpq ? f->bq * f->tpq : f->bq * 2), block[1] = block[2] = 1; /* (tensor cores: 16 queries a warp) */
}

void cg_cuda_attention_seqs_launch(const CgOpDesc *d, const CgCudaAttnForm *f, int64_t T, unsigned grid[3],
                                   unsigned block[3])
{
    if (f->bq > 1) { /* T: the runs' tiles, a block each */
        cg_cuda_attention_launch(d, f, 1, grid, block);
        grid[0] = (unsigned)(T > 0 ? T : 1);
        return;
    }
    cg_cuda_attention_launch(d, f, T, grid, block);
    unsigned rows = grid[0];
    grid[0] = grid[1], grid[1] = rows;
}

int64_t cg_cuda_attention_run_tiles(const CgCudaAttnForm *f, const int32_t *runs, int64_t n)
{
    int64_t tiles = 0;
    for (int64_t k = 0; k < n; k++) tiles += (runs[2 * k + 1] + f->bq - 1) / f->bq;
    return tiles;
}

static void emit_elementwise(CgBuf *b, const CgOpDesc *d, const char *name)
{
    bool two = d->kind == CG_OP_SWIGLU || d->kind == CG_OP_ADD;
    const char *expr = d->kind == CG_OP_SWIGLU ? "a[i] / (1.0f + expf(-a[i])) * bb[i]"
                     : d->kind == CG_OP_ADD    ? "a[i] + bb[i]"
                     : d->kind == CG_OP_SCALE  ? "(float)S * a[i]"
                                               : "tanhf(a[i])";
    cb_printf(b, "extern \"C\" __global__ void %s(long long T, const float *a, %sfloat *out) {\n"
                 "    PDL_ENTRY();\n"
                 "    long long n = T * COLS;\n"
                 "    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;\n"
                 "         i += (long long)gridDim.x * blockDim.x)\n"
                 "        out[i] = %s;\n"
                 "}\n", name, two ? "const float *bb, " : "", expr);
}

/* z / (std(z) / target), Bessel-corrected (only when the spec asks for it); a row without spread (one
 * expert, or all logits equal) is left as it is, as the interpreter and the CPU backend leave it */
static const char norm_text[] =
        "    if (E > 1) {\n"
        "        float s = 0.0f;\n"
        "        for (int i = 0; i < EPL; i++) if (lane + 32 * i < E) s += z[i];\n"
        "        float mean = warp_sum(s) / (float)E, v = 0.0f;\n"
        "        for (int i = 0; i < EPL; i++) if (lane + 32 * i < E) v += (z[i] - mean) * (z[i] - mean);\n"
        "        float sd = sqrtf(warp_sum(v) / (float)(E - 1));\n"
        "        if (sd > 0.0f)\n"
        "            for (int i = 0; i < EPL; i++) if (lane + 32 * i < E) z[i] = z[i] / (sd / (float)NORM_STD);\n"
        "    }\n";

/* The constants of the routing decision (the ROUTE_POST descriptor). */
static void emit_route_defs(CgBuf *b, const CgOpDesc *d)
{
    cb_printf(b, "#define E %lld\n#define K %lld\n#define EPL ((E + 31) / 32)\n#define ZLO %lld\n#define ZHI %lld\n"
                 "#define NC %lld\n#define GATING %d\n#define RW %d\n",
              (long long)d->experts, (long long)d->k, (long long)d->zero_lo, (long long)d->zero_hi,
              (long long)d->n_const, d->gating, ROUTE_WARPS);
    cb_double(b, "NORM_STD", d->norm_std);
}

/* One warp decides token t (variables t and lane): logits z = ZIN(e) (written out), optional
 * normalisation, the gate (either mode), top-k, zero mask and renormalisation, and the constant
 * experts' alpha from ALOG(i) (the 2·NC alpha logits, when HAVE_ALOG). */
static void emit_route_body(CgBuf *b, const CgOpDesc *d)
{
    cb_printf(b,
        "    float z[EPL];\n"
        "    bool taken[EPL];\n"
        "#pragma unroll\n"
        "    for (int i = 0; i < EPL; i++) {\n"
        "        int e = lane + 32 * i;\n"
        "        taken[i] = false;\n"
        "        z[i] = -INFINITY;\n"
        "        if (e < E) { z[i] = ZIN(e); if (logits) logits[t * E + e] = z[i]; }\n"
        "    }\n"
        "%s"
        "    float p[EPL];\n"
        "    if (GATING == 0) {  /* softmax over all E, top-k of p */\n"
        "        float mx = -INFINITY;\n"
        "        for (int i = 0; i < EPL; i++) mx = fmaxf(mx, z[i]);\n"
        "        mx = warp_max(mx);\n"
        "        float s = 0.0f;\n"
        "        for (int i = 0; i < EPL; i++) { p[i] = lane + 32 * i < E ? expf(z[i] - mx) : 0.0f; s += p[i]; }\n"
        "        s = warp_sum(s);\n"
        "        for (int i = 0; i < EPL; i++) p[i] = lane + 32 * i < E ? p[i] / s : -INFINITY;\n"
        "    } else {\n"
        "        for (int i = 0; i < EPL; i++) p[i] = z[i];\n"
        "    }\n"
        "    float wk[K];\n"
        "    int ik[K];\n"
        "#pragma unroll\n"
        "    for (int j = 0; j < K; j++) {  /* arg-max, ties to the lower index */\n"
        "        float bv = -INFINITY; int bi = 0x7fffffff;\n"
        "        for (int i = 0; i < EPL; i++) {\n"
        "            int e = lane + 32 * i;\n"
        "            if (e < E && !taken[i] && (bi == 0x7fffffff || p[i] > bv)) { bv = p[i]; bi = e; }\n"
        "        }\n"
        "        for (int o = 16; o > 0; o >>= 1) {\n"
        "            float ov = __shfl_xor_sync(0xffffffffu, bv, o);\n"
        "            int oi = __shfl_xor_sync(0xffffffffu, bi, o);\n"
        "            if (oi != 0x7fffffff && (bi == 0x7fffffff || ov > bv || (ov == bv && oi < bi))) { bv = ov; bi = oi; }\n"
        "        }\n"
        "        for (int i = 0; i < EPL; i++) if (lane + 32 * i == bi) taken[i] = true;\n"
        "        wk[j] = bv; ik[j] = bi;\n"
        "    }\n"
        "    if (GATING == 0) {  /* zero experts weigh 0; renormalise; all-zero rows stay 0 */\n"
        "        float s = 0.0f;\n"
        "#pragma unroll\n"
        "        for (int j = 0; j < K; j++) { if (ik[j] >= ZLO && ik[j] < ZHI) wk[j] = 0.0f; s += wk[j]; }\n"
        "#pragma unroll\n"
        "        for (int j = 0; j < K; j++) wk[j] = s > 0.0f ? wk[j] / s : 0.0f;\n"
        "    } else {  /* softmax over the k picked logits (wk[0] is the largest) */\n"
        "        float s = 0.0f, top = wk[0];\n"
        "#pragma unroll\n"
        "        for (int j = 0; j < K; j++) { wk[j] = expf(wk[j] - top); s += wk[j]; }\n"
        "#pragma unroll\n"
        "        for (int j = 0; j < K; j++) wk[j] /= s;\n"
        "    }\n"
        "    if (lane == 0)\n"
        "        for (int j = 0; j < K; j++) { weights[t * K + j] = wk[j]; ids[t * K + j] = ik[j]; }\n"
        "    if (NC > 0 && HAVE_ALOG)\n"
        "        for (int c = lane; c < NC; c += 32) {  /* pairwise softmax per constant expert */\n"
        "            float a0 = ALOG(2 * c), a1 = ALOG(2 * c + 1);\n"
        "            float mx = fmaxf(a0, a1), e0 = expf(a0 - mx), e1 = expf(a1 - mx);\n"
        "            alpha[t * 2 * NC + 2 * c] = e0 / (e0 + e1);\n"
        "            alpha[t * 2 * NC + 2 * c + 1] = e1 / (e0 + e1);\n"
        "        }\n"
        "", d->norm_std > 0 ? norm_text : "");
}

/* One warp per token; lane l holds experts l, l+32, ... */
static void emit_route(CgBuf *b, const CgOpDesc *d, const char *name)
{
    emit_route_defs(b, d);
    cb_printf(b,
        "extern \"C\" __global__ void %s(long long T, const float *z0, const float *g, float *logits,\n"
        "        const float *alpha_logits, float *weights, int *ids, float *alpha) {\n"
        "    PDL_ENTRY();\n"
        "    long long t = blockIdx.x * (long long)RW + (threadIdx.x >> 5);\n"
        "    int lane = threadIdx.x & 31;\n"
        "    if (t >= T) return;  /* whole warps leave together */\n"
        "#define ZIN(e) (z0[t * E + (e)] + (g ? g[t * E + (e)] : 0.0f))\n"
        "#define ALOG(i) alpha_logits[t * 2 * NC + (i)]\n"
        "#define HAVE_ALOG (alpha_logits != 0)\n", name);
    emit_route_body(b, d);
    cb_printf(b, "}\n");
}

/* The dispatch of T tokens' K picks over DE FFN experts by one block of NT threads (DE, K, NT
 * defined by the caller): pass 1 counts (shared atomics: order-free); thread 0 scans the counts into off[];
 * pass 2 places the picks chunk by chunk in pick order: a pick's slot is its expert's cursor + the
 * picks of that expert in earlier warps of the chunk + its rank among equal ids in its warp. */
static void emit_dispatch_block(CgBuf *b)
{
    cb_printf(b,
        "#define DNW (NT / 32)\n"
        "__device__ __forceinline__ void dispatch_block(long long T, const int *ids, const float *weights, long long *off,\n"
        "                                               int *perm, float *gate_w) {\n"
        "    __shared__ int cnt[DE];\n"
        "    __shared__ long long cur[DE];\n"
        "    __shared__ int wc[DNW * DE];\n"
        "    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;\n"
        "    long long P = T * K;\n"
        "    for (int e = tid; e < DE; e += NT) cnt[e] = 0;\n"
        "    for (int i = tid; i < DNW * DE; i += NT) wc[i] = 0;\n"
        "    __syncthreads();\n"
        "    for (long long p = tid; p < P; p += NT) { int id = ids[p]; if (id >= 0 && id < DE) atomicAdd(&cnt[id], 1); }\n"
        "    __syncthreads();\n"
        "    if (tid == 0) {\n"
        "        long long s = 0;\n"
        "        for (int e = 0; e < DE; e++) { off[e] = s; cur[e] = s; s += cnt[e]; }\n"
        "        off[DE] = s;\n"
        "    }\n"
        "    __syncthreads();\n"
        "    for (long long c0 = 0; c0 < P; c0 += NT) {\n"
        "        long long p = c0 + tid;\n"
        "        int id = p < P ? ids[p] : -1;\n"
        "        if (id < 0 || id >= DE) id = -1;\n"
        "        unsigned same = __match_any_sync(0xffffffffu, id);\n"
        "        int rank = __popc(same & ((1u << lane) - 1u));\n"
        "        if (id >= 0 && rank == 0) wc[w * DE + id] = __popc(same);\n"
        "        __syncthreads();\n"
        "        for (int e = tid; e < DE; e += NT) {  /* counts per warp -> exclusive offsets */\n"
        "            int run = 0;\n"
        "            for (int k = 0; k < DNW; k++) { int c = wc[k * DE + e]; wc[k * DE + e] = run; run += c; }\n"
        "            cnt[e] = run;\n"
        "        }\n"
        "        __syncthreads();\n"
        "        if (id >= 0) {\n"
        "            long long s = cur[id] + wc[w * DE + id] + rank;\n"
        "            perm[s] = (int)(p / K);\n"
        "            gate_w[s] = weights[p];\n"
        "        }\n"
        "        __syncthreads();\n"
        "        for (int e = tid; e < DE; e += NT) cur[e] += cnt[e];\n"
        "        for (int i = tid; i < DNW * DE; i += NT) wc[i] = 0;\n"
        "        __syncthreads();\n"
        "    }\n"
        "}\n");
}

/* The MoE combine of token t's row (x[c] the row's element c, W columns, NT threads): y = the copy
 * and constant experts' terms, u = s x too when u is given. Needs K, NC, S, ids, weights, alpha, vc. */
static void emit_combine_row(CgBuf *b, const CgOpDesc *d, const char *x, const char *width)
{
    cb_printf(b, "#define CONST_LO %lld\n#define COPY_LO %lld\n#define COPY_HI %lld\n", (long long)d->const_lo,
              (long long)d->copy_lo, (long long)d->copy_hi);
    cb_printf(b,
        "    for (int c = threadIdx.x; c < %s; c += NT) {\n"
        "        float xv = %s, acc = 0.0f;\n"
        "        if (u) u[t * %s + c] = (float)S * xv;\n"
        "        for (int j = 0; j < K; j++) {\n"
        "            int id = ids[t * K + j];\n"
        "            float w = weights[t * K + j];\n"
        "            if (id >= COPY_LO && id < COPY_HI) acc += w * ((float)S * xv);\n", width, x, width);
    if (d->n_const > 0)
        cb_printf(b,
        "            else if (id >= CONST_LO && id < CONST_LO + NC) {\n"
        "                int ci = id - CONST_LO;\n"
        "                float a0 = alpha[t * 2 * NC + 2 * ci], a1 = alpha[t * 2 * NC + 2 * ci + 1];\n"
        "                acc += w * (a0 * ((float)S * xv) + a1 * ldw(vc[ci], c));\n"
        "            }\n");
    cb_printf(b, "        }\n        y[t * %s + c] = acc;\n    }\n", width);
}

/* COMBINE: y = the copy and constant experts' terms; u = S x when u is given (the scale op feeding
 * the up-projection, fused); with experts > 0, block 0 also dispatches the route's picks when off is
 * given (the dispatch op, fused: its inputs are the route's, as the combine's are). */
static void emit_combine(CgBuf *b, const CgOpDesc *d, const char *name)
{
    cb_printf(b, "#define K %lld\n#define NC %lld\n#define NT %d\n", (long long)d->k, (long long)d->n_const, ROW_THREADS);
    if (d->experts > 0) {
        cb_printf(b, "#define DE %lld\n", (long long)d->experts);
        emit_dispatch_block(b);
    }
    cb_printf(b,
        "extern \"C\" __global__ void __launch_bounds__(NT) %s(long long T, const float *x, const float *weights,\n"
        "        const int *ids, const float *alpha, const void *const *vc, float *y, float *u, long long *off, int *perm,\n"
        "        float *gate_w) {\n"
        "    PDL_ENTRY();\n"
        "%s"
        "    long long t = blockIdx.x;\n"
        "    if (t >= T) return;\n",
        name, d->experts > 0 ? "    if (blockIdx.x == 0 && off) dispatch_block(T, ids, weights, off, perm, gate_w);\n"
                             : "    (void)off, (void)perm, (void)gate_w;\n");
    emit_combine_row(b, d, "x[t * COLS + c]", "COLS");
    cb_printf(b, "}\n");
}

static void emit_dispatch(CgBuf *b, const CgOpDesc *d, const char *name)
{
    cb_printf(b, "#define DE %lld\n#define K %lld\n#define NT %d\n", (long long)d->experts, (long long)d->k,
              CG_CUDA_DISPATCH_THREADS);
    emit_dispatch_block(b);
    cb_printf(b,
        "/* One block (dispatch_block). */\n"
        "extern \"C\" __global__ void __launch_bounds__(NT) %s(long long T, const int *ids, const float *weights,\n"
        "        long long *off, int *perm, float *gate_w) {\n"
        "    PDL_ENTRY();\n"
        "    dispatch_block(T, ids, weights, off, perm, gate_w);\n"
        "}\n", name);
}

static bool check(const CgOpDesc *d, char *err, size_t errlen)
{
    const char *why = NULL;
    if ((unsigned)d->kind >= CG_OP_COUNT) why = "unknown kind";
    else if (d->kind != CG_OP_DISPATCH && d->cols <= 0) why = "cols <= 0";
    else if ((d->kind == CG_OP_ROPE || d->kind == CG_OP_ATTENTION) &&
             (d->heads <= 0 || d->head_dim <= 0 || d->head_dim % 2 || d->heads * d->head_dim != d->cols))
        why = "heads x head_dim != cols (or odd head_dim)";
    else if (d->kind == CG_OP_ROPE && (d->kv_heads < 0 || d->kv_heads > d->heads))
        why = "the second input's heads (kv_heads) outside 0..heads";
    else if (d->kind == CG_OP_ATTENTION && (d->kv_heads <= 0 || d->heads % d->kv_heads || d->head_dim > 256))
        why = "kv_heads must divide heads, head_dim <= 256";
    else if (d->kind == CG_OP_ROUTE_POST && (d->experts <= 0 || d->k <= 0 || d->k > d->experts || d->experts > 1024))
        why = "experts/k out of range";
    else if (d->kind == CG_OP_DISPATCH && (d->experts <= 0 || d->k <= 0 || d->experts > 1024))
        why = "experts/k out of range"; /* k counts picks over all experts: it may exceed the FFN ones */
    else if (d->kind == CG_OP_COMBINE && (d->k <= 0 || d->experts < 0 || d->experts > 1024))
        why = "k <= 0 (or the experts it dispatches outside 0..1024)";
    if (why) snprintf(err, errlen, "cuda op %s: %s", cg_op_name(d->kind), why);
    return why == NULL;
}

char *cg_cuda_op_source(const CgOpDesc *d, char *err, size_t errlen)
{
    if (!check(d, err, errlen)) return NULL;
    char name[600];
    cg_cuda_op_symbol(d, name, sizeof name);
    CgBuf b = {0};
    cb_prelude(&b, d->wdtype);
    cb_printf(&b, "#define COLS %lld\n", (long long)d->cols);
    cb_double(&b, "EPS", d->eps);
    cb_double(&b, "S", d->s);
    switch (d->kind) {
    case CG_OP_EMBED: emit_embed(&b, name); break;
    case CG_OP_RMS_NORM: emit_norm(&b, name, false); break;
    case CG_OP_ADD_RMS_NORM: emit_norm(&b, name, true); break;
    case CG_OP_ROPE: emit_rope(&b, d, name); break;
    case CG_OP_ATTENTION:
        emit_attention(&b, d, name, CG_CUDA_ATTN_WARPS, cg_cuda_attention_splits(d),
                       cg_cuda_attention_heads_per_block(d, CG_CUDA_ATTN_WARPS), false);
        break;
    case CG_OP_SWIGLU:
    case CG_OP_ADD:
    case CG_OP_SCALE:
    case CG_OP_TANH: emit_elementwise(&b, d, name); break;
    case CG_OP_ROUTE_POST: emit_route(&b, d, name); break;
    case CG_OP_COMBINE: emit_combine(&b, d, name); break;
    case CG_OP_DISPATCH: emit_dispatch(&b, d, name); break;
    case CG_OP_COUNT: MOE_ASSERT(!"checked above");
    }
    return b.s;
}

void cg_cuda_op_launch(const CgOpDesc *d, int64_t T, unsigned grid[3], unsigned block[3], size_t *smem)
{
    grid[0] = grid[1] = grid[2] = 1;
    block[0] = ROW_THREADS, block[1] = block[2] = 1;
    *smem = 0;
    int64_t rows = T > 0 ? T : 1;
    switch (d->kind) {
    case CG_OP_ATTENTION:
        grid[0] = (unsigned)rows;
        grid[1] = (unsigned)(d->heads / cg_cuda_attention_heads_per_block(d, CG_CUDA_ATTN_WARPS));
        grid[2] = (unsigned)cg_cuda_attention_splits(d);
        block[0] = 32 * CG_CUDA_ATTN_WARPS;
        break;
    case CG_OP_SWIGLU:
    case CG_OP_ADD:
    case CG_OP_SCALE:
    case CG_OP_TANH: {
        int64_t n = (rows * d->cols + EW_THREADS - 1) / EW_THREADS;
        grid[0] = (unsigned)(n < (1 << 20) ? n : (1 << 20)), block[0] = EW_THREADS;
        break;
    }
    case CG_OP_ROUTE_POST:
        grid[0] = (unsigned)((rows + ROUTE_WARPS - 1) / ROUTE_WARPS), block[0] = 32 * ROUTE_WARPS;
        break;
    case CG_OP_DISPATCH: block[0] = CG_CUDA_DISPATCH_THREADS; break;
    default: grid[0] = (unsigned)rows; break;
    }
}

/* ---- the KV cache store (CUDA only: on the CPU a memcpy per row) ------------------------------------ */

void cg_cuda_kv_store_symbol(int64_t cols, moe_dtype dt, char *out, size_t n)
{
    snprintf(out, n, "moeppc_cu_kv_store_c%lld%s%s", (long long)cols, kv16(dt) ? "_" : "", kv16(dt) ? dtype_name(dt) : "");
}

void cg_cuda_kv_store_seqs_symbol(int64_t cols, moe_dtype dt, char *out, size_t n)
{
    char base[64];
    cg_cuda_kv_store_symbol(cols, dt, base, sizeof base);
    snprintf(out, n, "%s_seqs", base);
}

/* seqs: the form that stores the keys and values of rows of several sequences in one launch (grid (T,
 * 2): blockIdx.y 0 the key, 1 the value), each into its sequence's caches from the table kvs. */
static char *kv_store_source(int64_t cols, moe_dtype dt, bool seqs)
{
    char name[80];
    if (seqs) cg_cuda_kv_store_seqs_symbol(cols, dt, name, sizeof name);
    else cg_cuda_kv_store_symbol(cols, dt, name, sizeof name);
    CgBuf b = {0};
    cb_prelude(&b, DT_F32);
    emit_kv_type(&b, dt);
    cb_printf(&b, "#define COLS %lld\n", (long long)cols);
    if (seqs)
        cb_printf(&b, "extern \"C\" __global__ void %s(long long T, const float *k, const float *v, const int *pos,\n"
                      "        const unsigned long long *kvs, const int *seq) {\n"
                      "    PDL_ENTRY();\n"
                      "    long long t = blockIdx.x;\n"
                      "    if (t >= T) return;\n"
                      "    const float *src = blockIdx.y ? v : k;  /* row t's into its sequence's cache */\n"
                      "    kvt *dst = (kvt *)kvs[2 * seq[t] + blockIdx.y] + (long long)pos[t] * COLS;\n",
                  name);
    else
        cb_printf(&b, "extern \"C\" __global__ void %s(long long T, const float *src, const int *pos, %s *cache) {\n"
                      "    PDL_ENTRY();\n"
                      "    long long t = blockIdx.x;\n"
                      "    if (t >= T) return;\n"
                      "    kvt *dst = cache + (long long)pos[t] * COLS;\n",
                  name, kv_ctype(dt));
    cb_printf(&b, "    for (int c = threadIdx.x; c < COLS; c += blockDim.x) dst[c] = kv_of(src[t * COLS + c]);\n"
                  "}\n");
    return b.s;
}

char *cg_cuda_kv_store_source(int64_t cols, moe_dtype dt) { return kv_store_source(cols, dt, false); }
char *cg_cuda_kv_store_seqs_source(int64_t cols, moe_dtype dt) { return kv_store_source(cols, dt, true); }

/* ---- the fused router (CUDA only: one block per token, for small T) ---------------------------------- */

#define FUSED_ROUTE_THREADS 256

static int fused_route_threads(const CgCudaRouteFused *r) { return r->threads ? r->threads : FUSED_ROUTE_THREADS; }

static long fused_route_smem(const CgCudaRouteFused *r)
{
    return 4L * (r->d + (r->h1 > 0 ? r->h1 : 1) + 2 * r->post.experts + (2 * r->post.n_const > 0 ? 2 * r->post.n_const : 1));
}

void cg_cuda_route_fused_symbol(const CgCudaRouteFused *r, char *out, size_t n)
{
    char post[600];
    cg_cuda_op_symbol(&r->post, post, sizeof post);
    const char *rest = strncmp(post, "moeppc_cu_", 10) == 0 ? post + 10 : post;
    uint64_t sbits;
    memcpy(&sbits, &r->s, sizeof sbits);
    int w = snprintf(out, n, "moeppc_cu_fused_%s_%s_d%lld_h%lld_r%d_s%llx%s", rest, dtype_name(r->wdtype),
                     (long long)r->d, (long long)r->h1, r->residual ? 1 : 0, (unsigned long long)sbits,
                     r->wc_table ? "_wt" : "");
    if (r->threads && r->threads != FUSED_ROUTE_THREADS && w > 0 && (size_t)w < n)
        w += snprintf(out + w, n - (size_t)w, "_t%d", r->threads);
    if (r->combine.kind == CG_OP_COMBINE && w > 0 && (size_t)w < n) { /* the combine's constants, hashed (FNV-1a) */
        char c[600];
        cg_cuda_op_symbol(&r->combine, c, sizeof c);
        uint64_t h = 1469598103934665603ull;
        for (const char *p = c; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
        snprintf(out + w, n - (size_t)w, "_cmb%016llx", (unsigned long long)h);
    }
}

char *cg_cuda_route_fused_source(const CgCudaRouteFused *r, char *err, size_t errlen)
{
    const CgOpDesc *d = &r->post;
    if (!check(d, err, errlen)) return NULL;
    if (r->threads && (r->threads < 32 || r->threads > 1024 || r->threads % 32)) {
        snprintf(err, errlen, "cuda fused route: %d threads a block (whole warps, 32..1024)", r->threads);
        return NULL;
    }
    const CgOpDesc *cm = &r->combine;
    bool cmb = cm->kind == CG_OP_COMBINE;
    if (cmb && !check(cm, err, errlen)) return NULL;
    if (cmb && (cm->cols != r->d || cm->k != d->k || cm->n_const != d->n_const || cm->s != r->s ||
                (cm->n_const && cm->wdtype != r->wdtype))) {
        snprintf(err, errlen, "cuda fused route: its combine differs in width, top-k, constants, s or dtype");
        return NULL;
    }
    if (r->d <= 0 || r->h1 < 0 || fused_route_smem(r) > 48 * 1024) {
        snprintf(err, errlen, "cuda fused route: hidden %lld, router width %lld, %lld experts do not fit one block",
                 (long long)r->d, (long long)r->h1, (long long)d->experts);
        return NULL;
    }
    char name[700];
    cg_cuda_route_fused_symbol(r, name, sizeof name);
    const char *wc_row = r->wc_table
                             ? "        float v = wdot(wct[crow >> 1] + (long long)(crow & 1) * D, xs, D, lane);\n"
                             : "        float v = wdot(wc + (long long)crow * D, xs, D, lane);\n";
    CgBuf b = {0};
    cb_prelude(&b, r->wdtype);
    emit_route_defs(&b, d);
    cb_printf(&b, "#define D %lld\n#define H1 %lld\n#define RES %d\n#define NT %d\n#define NW (NT / 32)\n",
              (long long)r->d, (long long)r->h1, r->residual ? 1 : 0, fused_route_threads(r));
    cb_double(&b, "S", r->s);
    if (cmb && cm->experts > 0) {
        cb_printf(&b, "#define DE %lld\n", (long long)cm->experts);
        emit_dispatch_block(&b);
    }
    cb_printf(&b,
        "/* One weight row (n elements, 16-byte loads when n allows) against a vector in shared memory: the\n"
        " * warp's sum, in every lane. */\n"
        "__device__ __forceinline__ float wdot(const wtype *w, const float *v, int n, int lane) {\n"
        "    float acc = 0.0f;\n"
        "    if (n %% 8 == 0) {\n"
        "        for (int k = lane * 8; k < n; k += 256) {\n"
        "            float f[8];\n");
    if (r->wdtype == DT_F32)
        cb_printf(&b, "            float4 lo = *(const float4 *)(w + k), hi = *(const float4 *)(w + k + 4);\n"
                      "            f[0] = lo.x, f[1] = lo.y, f[2] = lo.z, f[3] = lo.w, f[4] = hi.x, f[5] = hi.y, f[6] = hi.z, f[7] = hi.w;\n");
    else
        cb_printf(&b, "            uint4 q = *(const uint4 *)(w + k);\n"
                      "            u32 p[4] = {q.x, q.y, q.z, q.w};\n"
                      "#pragma unroll\n"
                      "            for (int j = 0; j < 4; j++) { f[2 * j] = ldw(&p[j], 0); f[2 * j + 1] = ldw(&p[j], 1); }\n");
    cb_printf(&b,
        "#pragma unroll\n"
        "            for (int j = 0; j < 8; j++) acc = fmaf(f[j], v[k + j], acc);\n"
        "        }\n"
        "    } else {\n"
        "        for (int k = lane; k < n; k += 32) acc = fmaf(ldw(w, k), v[k], acc);\n"
        "    }\n"
        "    return warp_sum(acc);\n"
        "}\n"
        "extern \"C\" __global__ void __launch_bounds__(NT) %s(long long T, const float *x, const void *w1v,\n"
        "        const void *w2v, const float *r, const void *wgv, const void *wcv, float *logits, float *weights,\n"
        "        int *ids, float *alpha%s, float *part, unsigned *tcount) {\n"
        "    PDL_ENTRY();\n"
        "    __shared__ float xs[D], hs[H1 > 0 ? H1 : 1], zs[E], rs[E], as[2 * NC > 0 ? 2 * NC : 1];\n"
        "    long long t = blockIdx.x;\n"
        "    if (t >= T) return;\n"
        "    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5;\n"
        "    const wtype *w1 = (const wtype *)w1v, *w2 = (const wtype *)w2v, *wg = (const wtype *)wgv;\n"
        "%s"
        "    for (int c = threadIdx.x; c < D; c += NT) xs[c] = x[t * D + c];\n"
        "    if (RES) for (int c = threadIdx.x; c < E; c += NT) rs[c] = r[t * E + c];\n"
        "    __syncthreads();\n"
        "    if (gridDim.y > 1) {  /* the token's rows of W1 and Wc dealt over its gridDim.y blocks, into part */\n"
        "        const int RA = H1 > 0 ? H1 : E;\n"
        "        float *pt = part + t * (RA + 2 * NC);\n"
        "        /* W2 and Wg into L2 meanwhile, for the last block's rounds of rows after the arrivals */\n"
        "        const long long l2 = (H1 > 0 ? (long long)E * H1 : 0) * (long long)sizeof(wtype);\n"
        "        const long long lg = RES ? (long long)E * E * (long long)sizeof(wtype) : 0;\n"
        "        for (long long o = ((long long)blockIdx.y * NT + threadIdx.x) * 128; o < l2 + lg;\n"
        "             o += (long long)gridDim.y * NT * 128)\n"
        "            prefetch_l2(o < l2 ? (const char *)w2v + o : (const char *)wgv + (o - l2));\n"
        "        for (int row = blockIdx.y * NW + wid; row < RA + 2 * NC; row += gridDim.y * NW) {\n"
        "            if (row < RA) {\n"
        "                float v = wdot(w1 + (long long)row * D, xs, D, lane);\n"
        "                if (lane == 0) pt[row] = H1 > 0 ? tanhf(v) : v;\n"
        "            } else {\n"
        "                int crow = row - RA;\n"
        "%s"
        "                if (lane == 0) pt[row] = (float)S * v;\n"
        "            }\n"
        "        }\n"
        "        __shared__ unsigned tlast;  /* the last of the token's blocks to arrive goes on */\n"
        "        __threadfence();\n"
        "        __syncthreads();\n"
        "        if (threadIdx.x == 0) tlast = atomicAdd(tcount + t, 1u) == gridDim.y - 1;\n"
        "        __syncthreads();\n"
        "        if (!tlast) return;\n"
        "        __threadfence();\n"
        "        if (threadIdx.x == 0) tcount[t] = 0u;  /* (zero again for the next launch) */\n"
        "        for (int c = threadIdx.x; c < RA; c += NT) {\n"
        "            if (H1 > 0) hs[c] = __ldcg(pt + c);\n"
        "            else zs[c] = __ldcg(pt + c);\n"
        "        }\n"
        "        for (int c = threadIdx.x; c < 2 * NC; c += NT) as[c] = __ldcg(pt + RA + c);\n"
        "        __syncthreads();\n"
        "        for (int row = wid; H1 > 0 && row < E; row += NW) {\n"
        "            float v = wdot(w2 + (long long)row * H1, hs, H1, lane);\n"
        "            if (lane == 0) zs[row] = v;\n"
        "        }\n"
        "    } else {\n"
        "    if (H1 > 0) {  /* the two-layer gate: z0 = W2 tanh(W1 x) */\n"
        "        for (int row = wid; row < H1; row += NW) { float v = wdot(w1 + (long long)row * D, xs, D, lane); if (lane == 0) hs[row] = tanhf(v); }\n"
        "        __syncthreads();\n"
        "        for (int row = wid; row < E; row += NW) { float v = wdot(w2 + (long long)row * H1, hs, H1, lane); if (lane == 0) zs[row] = v; }\n"
        "    } else {\n"
        "        for (int row = wid; row < E; row += NW) { float v = wdot(w1 + (long long)row * D, xs, D, lane); if (lane == 0) zs[row] = v; }\n"
        "    }\n"
        "    for (int row = wid; row < 2 * NC; row += NW) {  /* alpha logits: Wc (s x) */\n"
        "        int crow = row;\n"
        "%s"
        "        if (lane == 0) as[row] = (float)S * v;\n"
        "    }\n"
        "    }\n"
        "    __syncthreads();\n"
        "    if (RES) {  /* the gating residual: + Wg r */\n"
        "        for (int row = wid; row < E; row += NW) { float v = wdot(wg + (long long)row * E, rs, E, lane); if (lane == 0) zs[row] += v; }\n"
        "        __syncthreads();\n"
        "    }\n"
        "%s"
        "#define ZIN(e) zs[e]\n"
        "#define ALOG(i) as[i]\n"
        "#define HAVE_ALOG 1\n", name,
        cmb ? ", float *y, float *u, const void *const *vc, long long *off, int *perm,\n"
              "        float *gate_w, unsigned *counter" : "",
        r->wc_table ? "    const wtype *const *wct = (const wtype *const *)wcv;  /* constant expert c: wct[c], [2][D] */\n"
                    : "    const wtype *wc = (const wtype *)wcv;\n",
        wc_row, wc_row,
        cmb ? "    if (wid == 0) {  /* warp 0 decides; then the whole block combines */\n" : "    if (wid != 0) return;\n");
    emit_route_body(&b, d);
    if (cmb) {
        cb_printf(&b, "    }\n"
                      "    __syncthreads();  /* the decision (weights, ids, alpha) is visible to the block */\n");
        emit_combine_row(&b, cm, "xs[c]", "D");
        if (cm->experts > 0)
            cb_printf(&b,
                "    if (off) {  /* the dispatch, by the last block to finish */\n"
                "        __shared__ unsigned last;\n"
                "        __threadfence();  /* this block's decision, before its arrival counts */\n"
                "        __syncthreads();\n"
                "        if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == gridDim.x - 1;\n"
                "        __syncthreads();\n"
                "        if (last) {\n"
                "            __threadfence();\n"
                "            dispatch_block(T, ids, weights, off, perm, gate_w);\n"
                "            if (threadIdx.x == 0) *counter = 0u;\n"
                "        }\n"
                "    }\n");
        else cb_printf(&b, "    (void)off, (void)perm, (void)gate_w, (void)counter;\n");
    }
    cb_printf(&b, "}\n");
    return b.s;
}

void cg_cuda_route_fused_launch(const CgCudaRouteFused *r, int64_t T, unsigned grid[3], unsigned block[3], size_t *smem)
{
    grid[0] = (unsigned)(T > 0 ? T : 1), grid[1] = (unsigned)(r->split > 1 ? r->split : 1), grid[2] = 1;
    block[0] = (unsigned)fused_route_threads(r), block[1] = block[2] = 1;
    *smem = 0;
}

int cg_cuda_route_fused_split(const CgCudaRouteFused *r, int64_t T)
{
    int64_t rows = (r->h1 > 0 ? r->h1 : r->post.experts) + 2 * r->post.n_const, nw = fused_route_threads(r) / 32;
    int64_t p = (CG_CUDA_ROUTE_SPLIT_BLOCKS + (T > 0 ? T : 1) - 1) / (T > 0 ? T : 1), most = (rows + nw - 1) / nw;
    p = p < most ? p : most;
    return p > 1 ? (int)p : 1;
}
