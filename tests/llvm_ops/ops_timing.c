/* ops_timing.c — not a test: the cost of building each kernel (cg_ops_build + verify, O3, JIT code
 * generation) at the MoE++ 7B shapes, and single-threaded run times of attention (T = 512, 16 heads
 * of 96, positions 0..511; OPS_TIMING_HEADS=HxHD other heads, HxHD/KVH with KVH kv heads (GQA: Mixtral's
 * 32x128/8), OPS_TIMING_KV=bf16|f16 a 16-bit KV cache,
 * OPS_TIMING_KVB and OPS_TIMING_TASK the key block and the rows a call;
 * decode steps at 511 and 4095, and a serving batch's at 511 over 64 MB of caches) and of the row
 * kernels at T = 512. Medians of repeated calls. */
#include "tests/llvm_ops/ops_test_util.h"

#include <stdlib.h>
#include <string.h>

typedef void (*fn_att)(int64_t, int64_t, int64_t, const float *, const void *, const void *, const int32_t *, float *);
typedef void (*fn3)(int64_t, int64_t, const void *, const void *, void *);

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *ms, int n)
{
    qsort(ms, (size_t)n, sizeof *ms, cmp_double);
    printf("%-44s median %8.3f ms  (min %.3f, max %.3f, %d runs)\n", what, ms[n / 2], ms[0], ms[n - 1], n);
}

int main(void)
{
    OpsJit *j = oj_new();
    const int64_t D = 1536, T = 512; /* attention: the 7B's 16 heads of 96, or OPS_TIMING_HEADS=HxHD */
    int64_t H = 16, hd = 96, Hk = 0;
    const char *heads_env = getenv("OPS_TIMING_HEADS");
    if (heads_env && sscanf(heads_env, "%ldx%ld/%ld", &H, &hd, &Hk) < 2) H = 16, hd = 96;
    if (Hk <= 0 || H % Hk) Hk = H;
    moe_dtype kv = DT_F32;
    if (getenv("OPS_TIMING_KV") && !dtype_parse(getenv("OPS_TIMING_KV"), &kv)) kv = DT_F32;
    /* OPS_TIMING_AMX=1: attention's amx form (bf16 caches in k pairs, head_dim a multiple of 32) on AMX
     * tiles, =2 on the bf16 dot product (each where the host has it) */
    int form = getenv("OPS_TIMING_AMX") ? atoi(getenv("OPS_TIMING_AMX")) : 0;
    int amx = (form == CG_ATTENTION_AMX && oj_has_amx(j)) || (form == CG_ATTENTION_DOT && oj_has_bf16_dot(j)) ? form : 0;
    if (amx) kv = DT_BF16;
    /* OPS_TIMING_KVB=N: attention's key block (16..64; default the rule's); OPS_TIMING_TASK=R: the
     * prefill a call of R rows at a time (the executor's tasks: multiples of 16; default all 512) */
    int kvb = getenv("OPS_TIMING_KVB") ? atoi(getenv("OPS_TIMING_KVB")) : 0;
    int64_t task = getenv("OPS_TIMING_TASK") ? atoll(getenv("OPS_TIMING_TASK")) : 0;
    if (task <= 0 || task > T) task = T;
    CgOpDesc ds[] = {
        {.kind = CG_OP_EMBED, .wdtype = DT_BF16, .cols = D},
        {.kind = CG_OP_RMS_NORM, .wdtype = DT_BF16, .cols = D, .eps = 1e-6},
        {.kind = CG_OP_ADD_RMS_NORM, .wdtype = DT_BF16, .cols = D, .eps = 1e-6},
        {.kind = CG_OP_ROPE, .heads = H, .head_dim = hd, .theta = 10000.0},
        {.kind = CG_OP_ATTENTION, .wdtype = kv, .heads = H, .kv_heads = Hk, .head_dim = hd, .amx = amx,
         .kv_block = kvb},
        {.kind = CG_OP_SWIGLU, .cols = 4096},
        {.kind = CG_OP_ADD, .cols = D},
        {.kind = CG_OP_SCALE, .cols = D, .s = 2.0},
        {.kind = CG_OP_TANH, .cols = 160},
        {.kind = CG_OP_ROUTE_POST, .experts = 20, .k = 2, .zero_lo = 19, .zero_hi = 20, .n_const = 2},
        {.kind = CG_OP_COMBINE, .wdtype = DT_BF16, .cols = D, .k = 2, .s = 2.0, .n_const = 2, .const_lo = 16,
         .copy_lo = 18, .copy_hi = 19},
        {.kind = CG_OP_DISPATCH, .experts = 16, .k = 2},
    };
    printf("vector width %d; compile times (ms): build+verify, O3, JIT codegen\n", oj_vec_width(j));
    double total = 0;
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++) {
        OjTimes tm;
        oj_kernel(j, &ds[i], &tm);
        total += tm.build_ms + tm.opt_ms + tm.jit_ms;
        printf("  %-14s %6.2f %7.2f %7.2f\n", cg_op_name(ds[i].kind), tm.build_ms, tm.opt_ms, tm.jit_ms);
    }
    printf("  all %zu kernels: %.1f ms\n", sizeof ds / sizeof ds[0], total);

    moe_rng r;
    rng_seed(&r, 1);
    size_t n = (size_t)(T * H * hd);
    float *q = xmalloc(n * 4), *kc = xmalloc(n * 4), *vc = xmalloc(n * 4), *out = xmalloc(n * 4);
    oj_random(&r, q, n, -1, 1);
    oj_random(&r, kc, n, -1, 1);
    oj_random(&r, vc, n, -1, 1);
    int32_t *pos = xmalloc((size_t)T * 4);
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)t;
    fn_att att = (fn_att)oj_kernel(j, &ds[4], NULL);
    const int64_t G = cg_attention_heads_per_call(&ds[4]); /* heads a call */
    int64_t cap = cg_attention_cap(T);
    void *kt = xcalloc((size_t)cg_attention_cache_elems(T, Hk, hd), dtype_size(kv));
    void *vh = xcalloc((size_t)cg_attention_cache_elems(T, Hk, hd), dtype_size(kv));
    for (int64_t t = 0; t < T; t++)
        cg_attention_store(kt, vh, kv, Hk, hd, cap, t, kc + t * Hk * hd, vc + t * Hk * hd, amx);
    double ms[15];
    for (int k = 0; k < 15; k++) { /* the executor's order (cpu_attention_run): a head's rows in one call */
        double t0 = oj_now_ms();
        for (int64_t t = 0; t < T; t += task)
            for (int64_t h = 0; h < H; h += G) att(t * H + h, t + task <= T ? task : T - t, cap, q, kt, vh, pos, out);
        ms[k] = oj_now_ms() - t0;
    }
    double flop = 4.0 * (double)H * hd * (double)T * (double)(T + 1) / 2; /* qk and pv, 2 flops per MAC */
    char what[64];
    snprintf(what, sizeof what, "attention T=512 H=%ld hd=%ld kv %s%s (1 thread)", (long)H, (long)hd, dtype_name(kv),
             amx == CG_ATTENTION_AMX ? " amx" : amx ? " amx on the dot product" : "");
    report(what, ms, 15);
    printf("  = %.1f GFLOP/s on the causal half\n", flop / (ms[7] * 1e6));
    for (int k = 0; k < 15; k++) {
        double t0 = oj_now_ms();
        for (int64_t h = 0; h < H; h += G) att((T - 1) * H + h, 1, cap, q, kt, vh, pos, out); /* one decode step at 511 */
        ms[k] = oj_now_ms() - t0;
    }
    report("attention decode step at pos 511", ms, 15);
    { /* at pos 4095: caches of 4096 positions, far past the caches (the bytes a step reads, said) */
        const int64_t L = 4096, capl = cg_attention_cap(L), el = cg_attention_cache_elems(L, Hk, hd);
        void *kl = xcalloc((size_t)el, dtype_size(kv)), *vl = xcalloc((size_t)el, dtype_size(kv));
        float *row = xmalloc((size_t)(2 * H * hd) * 4);
        for (int64_t t = 0; t < L; t++) {
            oj_random(&r, row, (size_t)(2 * Hk * hd), -1, 1);
            cg_attention_store(kl, vl, kv, Hk, hd, capl, t, row, row + Hk * hd, amx);
        }
        int32_t last = (int32_t)(L - 1);
        for (int k = 0; k < 15; k++) {
            double t0 = oj_now_ms();
            for (int64_t h = 0; h < H; h += G) att(h, 1, capl, q, kl, vl, &last, out);
            ms[k] = oj_now_ms() - t0;
        }
        report("attention decode step at pos 4095", ms, 15);
        printf("  = %.1f GB/s of the caches (%.1f MB)\n", 2.0 * L * Hk * hd * dtype_size(kv) / (ms[7] * 1e6),
               2.0 * L * Hk * hd * dtype_size(kv) / 1e6);
        free(kl), free(vl), free(row);
    }
    { /* a serving batch's decode step: sequences of 512 positions, one query row each, their caches
       * 64 MB in all (past any L3 these machines have had; the step at 4095 above may sit in one) */
        const int64_t L = 512, capl = cg_attention_cap(L), el = cg_attention_cache_elems(L, Hk, hd);
        const double seq_bytes = 2.0 * (double)el * (double)dtype_size(kv);
        const int64_t S = (int64_t)(64e6 / seq_bytes) + 1;
        void **kl = xmalloc(sizeof(void *) * (size_t)S), **vl = xmalloc(sizeof(void *) * (size_t)S);
        float *row = xmalloc((size_t)(2 * H * hd) * 4);
        for (int64_t s = 0; s < S; s++) {
            kl[s] = xcalloc((size_t)el, dtype_size(kv)), vl[s] = xcalloc((size_t)el, dtype_size(kv));
            for (int64_t t = 0; t < L; t++) {
                oj_random(&r, row, (size_t)(2 * Hk * hd), -1, 1);
                cg_attention_store(kl[s], vl[s], kv, Hk, hd, capl, t, row, row + Hk * hd, amx);
            }
        }
        int32_t last = (int32_t)(L - 1);
        for (int k = 0; k < 15; k++) { /* cpu_attention_run_segs' order: sequence by sequence, head by head */
            double t0 = oj_now_ms();
            for (int64_t s = 0; s < S; s++)
                for (int64_t h = 0; h < H; h += G) att(h, 1, capl, q, kl[s], vl[s], &last, out);
            ms[k] = oj_now_ms() - t0;
        }
        snprintf(what, sizeof what, "attention decode, %ld sequences at pos 511", (long)S);
        report(what, ms, 15);
        double bytes = 2.0 * (double)(S * L * Hk * hd) * (double)dtype_size(kv);
        printf("  = %.1f GB/s of the caches (%.1f MB)\n", bytes / (ms[7] * 1e6), bytes / 1e6);
        for (int64_t s = 0; s < S; s++) free(kl[s]), free(vl[s]);
        free(kl), free(vl), free(row);
    }
    float *w = xmalloc((size_t)D * 4), *big = xmalloc((size_t)(T * 4096) * 4), *big2 = xmalloc((size_t)(T * 4096) * 4);
    oj_random(&r, w, (size_t)D, -1, 1);
    oj_random(&r, big, (size_t)(T * 4096), -1, 1);
    CgOpDesc rn = {.kind = CG_OP_RMS_NORM, .wdtype = DT_F32, .cols = D, .eps = 1e-6};
    fn3 f = (fn3)oj_kernel(j, &rn, NULL);
    for (int k = 0; k < 15; k++) {
        double t0 = oj_now_ms();
        f(0, T, big, w, big2);
        ms[k] = oj_now_ms() - t0;
    }
    report("rms_norm T=512 D=1536 f32", ms, 15);
    f = (fn3)oj_kernel(j, &ds[5], NULL);
    for (int k = 0; k < 15; k++) {
        double t0 = oj_now_ms();
        f(0, T, big, big2, big2);
        ms[k] = oj_now_ms() - t0;
    }
    report("swiglu T=512 I=4096", ms, 15);
    free(q), free(kc), free(kt), free(vc), free(vh), free(out), free(pos), free(w), free(big), free(big2);
    oj_free(j);
    return 0;
}
