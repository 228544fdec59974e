/* bench_gemm — the grouped GEMMs of one MoE++ 7B layer (D = 1536, I = 4096, 16 experts, top-2,
 * uniform random routing): SwiGLU up-projection + gate-weighted scatter-add down-projection, for
 * T = 1, 64, 512 on 1 and 2 threads, f32 and bf16 weights (and, on AVX-512 hosts, bf16 in k pairs; on
 * AVX512-BF16 hosts, bf16 on the bf16 dot-product kernels; on AMX hosts, bf16 on 32 x 32 AMX tiles)
 * interleaved round by round, each as two calls and (where the down-projection takes h packed, marked
 * "+ffn") as one cg_moe_ffn, what the executor runs. Prints the median (min-max) time, GFLOP/s and
 * the fraction of the f32 FMA peak measured in the same run.
 * Usage: bench_gemm [max_threads [T]]   (T: any token count, else 1, 64 and 512)
 *  (MOEPPC_KC=n tries K blocking; MOEPPC_ISA caps the ISA) */
#include "bench/probe.h"

#include <stdlib.h>
#include <string.h>

enum { D = 1536, I = 4096, E = 16, TOPK = 2, MAX_REPS = 64, N_KINDS = 5, N_ROWS = 2 * N_KINDS };

typedef struct Weights {
    moe_dtype dt;
    const CgKernel *kern;
    CgPackedB up[E], down[E];
} Weights;

static uint64_t xs_state = 88172645463325252ull;
static float fast_rand(void) { /* xorshift: 600M weights in about a second */
    xs_state ^= xs_state << 13, xs_state ^= xs_state >> 7, xs_state ^= xs_state << 17;
    return (float)(xs_state >> 40) * (1.0f / 16777216.0f) * 0.04f - 0.02f;
}

/* Random expert weights in dtype, packed; the unpacked copy lives only while one matrix packs. */
static void make_weights(Weights *w, moe_dtype dt, const CgKernel *kern) {
    w->dt = dt;
    w->kern = kern;
    size_t n_up = (size_t)2 * I * D, n_down = (size_t)D * I;
    void *buf = xmalloc(n_up * dtype_size(dt));
    for (int e = 0; e < E; e++) {
        for (size_t i = 0; i < n_up; i++) dtype_store(dt, buf, i, fast_rand());
        cg_pack_b_swiglu(&w->up[e], buf, dt, 2 * I, D, kern->cfg.nr, cg_kernel_kpair(&kern->cfg));
        for (size_t i = 0; i < n_down; i++) dtype_store(dt, buf, i, fast_rand());
        cg_pack_b(&w->down[e], buf, dt, D, I, kern->cfg.nr, cg_kernel_kpair(&kern->cfg));
    }
    free(buf);
}

typedef struct Batch {
    int t;
    int64_t off[E + 1];
    int32_t *perm;
    float *gate_w, *x, *h, *out;
} Batch;

/* Each token picks TOPK distinct experts uniformly; slots sorted by expert (counting sort). */
static void make_batch(Batch *b, int t, moe_rng *r) {
    b->t = t;
    int *pick = xmalloc(sizeof(int) * (size_t)t * TOPK);
    int64_t count[E] = {0};
    for (int i = 0; i < t; i++) {
        int e0 = (int)(rng_next(r) % E), e1 = (int)(rng_next(r) % (E - 1));
        e1 += e1 >= e0;
        pick[i * TOPK] = e0, pick[i * TOPK + 1] = e1;
        count[e0]++, count[e1]++;
    }
    b->off[0] = 0;
    for (int e = 0; e < E; e++) b->off[e + 1] = b->off[e] + count[e];
    int64_t fill[E];
    memcpy(fill, b->off, sizeof fill);
    b->perm = xmalloc(sizeof(int32_t) * (size_t)t * TOPK);
    b->gate_w = xmalloc(sizeof(float) * (size_t)t * TOPK);
    for (int i = 0; i < t * TOPK; i++) {
        int64_t s = fill[pick[i]]++;
        b->perm[s] = i / TOPK;
        b->gate_w[s] = 0.5f;
    }
    b->x = xmalloc(sizeof(float) * (size_t)t * D);
    for (size_t i = 0; i < (size_t)t * D; i++) b->x[i] = fast_rand();
    b->h = xmalloc(sizeof(float) * (size_t)t * TOPK * I);
    b->out = xcalloc((size_t)t * D, sizeof(float));
    free(pick);
}

static void free_batch(Batch *b) { free(b->perm), free(b->gate_w), free(b->x), free(b->h), free(b->out); }

static double run_layer(const Weights *w, bool ffn, const Batch *b, CgPool *pool, CgWork *work) {
    CgRouting r = {E, b->off, b->perm, b->gate_w};
    CgBlocking blk = cg_blocking_default(w->kern);
    double t0 = bench_now_s();
    if (ffn) /* h's tiles in h's place where they fit, as the executor puts them */
        cg_moe_ffn(w->kern, &blk, w->kern, &blk, pool, work, &r, b->x, w->up, w->down, b->out, b->h,
                   (size_t)b->t * TOPK * I);
    else {
        cg_moe_up_swiglu(w->kern, &blk, pool, work, &r, b->x, w->up, b->h);
        cg_moe_down_scatter(w->kern, &blk, pool, work, &r, b->h, w->down, b->out);
    }
    return bench_now_s() - t0;
}

/* Whether the kind's down-projection takes h packed (cg_moe_ffn). */
static bool fuses(const Weights *w) {
    CgBlocking blk = cg_blocking_default(w->kern);
    return cg_moe_ffn_packs_h(w->kern, &blk, I);
}

static double median_peak(CgPool *pool) {
    double v[5];
    probe_fma_peak_runs(pool, v, 5);
    qsort(v, 5, sizeof *v, bench_cmp_double);
    return v[2];
}

/* Interleave the dtypes round by round so both see the same machine noise. */
static void bench_case(Weights *ws, int n_w, int t, CgPool *pool, double peak, moe_rng *r) {
    Batch b;
    make_batch(&b, t, r);
    int reps = t >= 512 ? 7 : t >= 64 ? 21 : MAX_REPS;
    double times[N_ROWS][MAX_REPS];
    int kind[N_ROWS], n_rows = 0; /* row: kind kind[row] / 2, as one cg_moe_ffn where kind[row] is odd */
    for (int i = 0; i < n_w; i++) {
        kind[n_rows++] = 2 * i;
        if (fuses(&ws[i])) kind[n_rows++] = 2 * i + 1;
    }
    CgWork work = {0};
    for (int i = 0; i < n_rows; i++)
        for (int k = 0; k < 2; k++) run_layer(&ws[kind[i] / 2], kind[i] % 2, &b, pool, &work);
    for (int rep = 0; rep < reps; rep++)
        for (int i = 0; i < n_rows; i++) times[i][rep] = run_layer(&ws[kind[i] / 2], kind[i] % 2, &b, pool, &work);
    double flops = (double)t * TOPK * (2.0 * D * 2 * I + 2.0 * I * D);
    for (int i = 0; i < n_rows; i++) {
        qsort(times[i], (size_t)reps, sizeof(double), bench_cmp_double);
        double med = times[i][reps / 2];
        const Weights *w = &ws[kind[i] / 2];
        char name[16];
        const char *form = w->kern->cfg.amx       ? "bf16amx"
                           : w->kern->cfg.a_bf16  ? "bf16dot"
                           : w->kern->cfg.kpair_b ? "bf16kp"
                                                  : dtype_name(w->dt);
        snprintf(name, sizeof name, "%s%s", form, kind[i] % 2 ? "+ffn" : "");
        printf("T=%-4d threads=%d %-11s %8.3f ms (min %8.3f, max %8.3f)  %6.1f GFLOP/s  %5.1f %% of f32 peak  "
               "%7.0f tok/s\n",
               t, cg_pool_threads(pool), name,
               med * 1e3,
               times[i][0] * 1e3, times[i][reps - 1] * 1e3,
               flops / med * 1e-9, 100.0 * flops / med * 1e-9 / peak, t / med);
    }
    cg_work_free(&work);
    free_batch(&b);
}

int main(int argc, char **argv) {
    int max_threads = argc > 1 ? atoi(argv[1]) : 2, only_t = argc > 2 ? atoi(argv[2]) : 0;
    char err[512];
    CgJit *jit = cg_jit_new(CG_ISA_AUTO, err, sizeof err);
    if (!jit) return fprintf(stderr, "bench_gemm: %s\n", err), 1;
    const CgTarget *tg = cg_jit_target(jit);
    printf("target: cpu %s, isa %s (probe %s), MOEPPC_KC=%s\n", tg->cpu, cg_isa_name(tg->isa), probe_isa(),
           getenv("MOEPPC_KC") ? getenv("MOEPPC_KC") : "0 (whole K)");
    /* f32; bf16 widened to f32 as loaded; on AVX-512 the same in k pairs (cg_kernel_form, what the
     * executor runs there); the bf16 dot product; AMX */
    static Weights ws[N_KINDS];
    moe_dtype dts[N_KINDS] = {DT_F32, DT_BF16, DT_BF16, DT_BF16, DT_BF16};
    bool kind_on[N_KINDS] = {true, true, tg->isa == CG_ISA_AVX512, tg->has_bf16_dot, tg->has_amx};
    int n_w = 0;
    for (int i = 0; i < N_KINDS; i++) {
        if (!kind_on[i]) continue;
        CgKernelConfig cfg = i == 4 ? cg_kernel_config_amx(32, 32) : cg_kernel_config_default(jit, dts[i]);
        cfg.a_bf16 = i >= 3;
        cfg.kpair_b = i == 2;
        const CgKernel *k = cg_jit_kernel(jit, &cfg, NULL, err, sizeof err);
        if (!k) return fprintf(stderr, "bench_gemm: %s\n", err), 1;
        printf("kernel %s: compiled in %.1f ms\n", k->symbol, k->compile_ms);
        make_weights(&ws[n_w++], dts[i], k);
    }
    moe_rng r;
    rng_seed(&r, 42);
    static const int Ts[] = {1, 64, 512};
    for (int threads = 1; threads <= max_threads; threads++) {
        CgPool *pool = cg_pool_new(threads);
        double peak = median_peak(pool);
        printf("-- %d thread(s): f32 FMA peak %.1f GFLOP/s (median of 5)\n", threads, peak);
        for (size_t i = 0; i < (only_t ? 1 : MOE_ARRAY_LEN(Ts)); i++)
            bench_case(ws, n_w, only_t ? only_t : Ts[i], pool, peak, &r);
        cg_pool_free(pool);
    }
    for (int i = 0; i < n_w; i++)
        for (int e = 0; e < E; e++) cg_packed_b_free(&ws[i].up[e]), cg_packed_b_free(&ws[i].down[e]);
    cg_jit_free(jit);
    return 0;
}
