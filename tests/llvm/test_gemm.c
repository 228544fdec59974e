/* test_gemm.c — the generated GEMM against a naive f64 reference on every B dtype (and bf16 in k
 * pairs), every ISA the host has, edge shapes (M % MR, N % NR, tiny K), accumulation, strides and K
 * blocking. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/llvm/llvm_test_util.h"

static const moe_dtype DTYPES[] = {DT_F32, DT_BF16, DT_F16};

/* C = (acc ? C : 0) + A B^T with the kernel, checked element-wise against f64 with a tolerance
 * relative to sum |a_k b_k| (the scale of the dot product's rounding error). Returns mismatches. */
static int check_gemm(const CgKernel *kern, const CgBlocking *blk, CgPool *pool, int64_t m, int64_t n,
                      int64_t k, bool acc, uint64_t seed) {
    moe_rng r;
    rng_seed(&r, seed);
    int64_t lda = k + 3, ldc = n + 5; /* strides wider than the rows */
    float *a = xmalloc(sizeof(float) * (size_t)(m * lda + 1)), *w = xmalloc(sizeof(float) * (size_t)(n * k + 1));
    float *c = xmalloc(sizeof(float) * (size_t)(m * ldc + 1)), *c0 = xmalloc(sizeof(float) * (size_t)(m * ldc + 1));
    tu_random(&r, a, (size_t)(m * lda));
    tu_random(&r, w, (size_t)(n * k));
    tu_random(&r, c0, (size_t)(m * ldc));
    memcpy(c, c0, sizeof(float) * (size_t)(m * ldc));
    moe_dtype dt = kern->cfg.b_dtype;
    void *wd = tu_to_dtype(w, (size_t)(n * k), dt);
    CgPackedB pb;
    cg_pack_b(&pb, wd, dt, n, k, kern->cfg.nr, cg_kernel_kpair(&kern->cfg));
    CgWork work = {0};
    cg_gemm(kern, blk, pool, &work, m, a, lda, &pb, c, ldc, acc);
    int bad = 0;
    char label[128];
    snprintf(label, sizeof label, "%s M=%lld N=%lld K=%lld acc=%d", kern->symbol, (long long)m, (long long)n,
             (long long)k, acc);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double want = acc ? c0[i * ldc + j] : 0.0, scale = 0.0;
            for (int64_t kk = 0; kk < k; kk++) { /* the bf16 dot product and AMX multiply A rounded to bf16 */
                double ai = kern->cfg.a_bf16 ? bf16_to_f32(f32_to_bf16(a[i * lda + kk])) : a[i * lda + kk];
                double p = ai * dtype_load(dt, wd, (size_t)(j * k + kk));
                want += p;
                scale += fabs(p);
            }
            double tol = 1e-5 * scale + 1e-7 * fabs(want) + 1e-30;
            tu_close(label, (size_t)(i * ldc + j), c[i * ldc + j], want, tol, &bad);
        }
    for (int64_t i = 0; i < m; i++) /* the padding between rows must be untouched */
        for (int64_t j = n; j < ldc && i * ldc + j < m * ldc; j++)
            if (c[i * ldc + j] != c0[i * ldc + j] && bad++ < 5) fprintf(stderr, "  %s: wrote padding\n", label);
    cg_work_free(&work);
    cg_packed_b_free(&pb);
    free(a), free(w), free(c), free(c0), free(wd);
    return bad;
}

typedef struct Sizes {
    const int64_t *v;
    size_t n;
} Sizes;
#define SIZES(a) ((Sizes){a, MOE_ARRAY_LEN(a)})

/* check_gemm at every M x N x K of the lists, padded and on edge kernels (one of each pair
 * accumulating); mismatches, with the GEMMs run counted in *runs. */
static int sweep(const CgKernel *kern, const CgBlocking *padded, const CgBlocking *edged, CgPool *pool, Sizes ms,
                 Sizes ns, Sizes ks, uint64_t seed, int *runs) {
    int bad = 0;
    for (size_t mi = 0; mi < ms.n; mi++)
        for (size_t ni = 0; ni < ns.n; ni++)
            for (size_t ki = 0; ki < ks.n; ki++, *runs += 2) {
                bad += check_gemm(kern, padded, pool, ms.v[mi], ns.v[ni], ks.v[ki], *runs % 3 == 1, seed + (uint64_t)*runs);
                bad += check_gemm(kern, edged, pool, ms.v[mi], ns.v[ni], ks.v[ki], *runs % 3 != 1, seed + 1 + (uint64_t)*runs);
            }
    return bad;
}

static void gemm_all_shapes(cg_isa isa) {
    static const int64_t Ms[] = {0, 1, 7, 8, 9, 33, 100}, Ns[] = {1, 47, 48, 49, 96, 130}, Ks[] = {1, 3, 64, 257};
    CgPool *pool = cg_pool_new(2);
    int bad = 0, runs = 0;
    for (size_t d = 0; d <= MOE_ARRAY_LEN(DTYPES); d++) { /* and bf16 in k pairs (kpair_b) */
        CgKernelConfig cfg = cg_kernel_config_default(tu_jit(isa), d < MOE_ARRAY_LEN(DTYPES) ? DTYPES[d] : DT_BF16);
        cfg.kpair_b = d == MOE_ARRAY_LEN(DTYPES);
        const CgKernel *kern = tu_kernel(isa, &cfg);
        /* whole K; row blocks of 64 so M=100 takes two; the last rows zero-padded, then on edge kernels */
        CgBlocking padded = {.kc = 0, .mc = 64}, edged = padded;
        tu_edges(isa, kern, &edged);
        bad += sweep(kern, &padded, &edged, pool, SIZES(Ms), SIZES(Ns), SIZES(Ks), 1000u, &runs);
    }
    cg_pool_free(pool);
    if (bad) fprintf(stderr, "%s: %d mismatches over %d GEMMs\n", cg_isa_name(isa), bad, runs);
    assert_int_equal(bad, 0);
}

static void test_gemm_avx512(void **state) {
    if (cg_host_isa() < CG_ISA_AVX512) skip();
    gemm_all_shapes(CG_ISA_AVX512);
}
static void test_gemm_avx2(void **state) {
    if (cg_host_isa() < CG_ISA_AVX2) skip();
    gemm_all_shapes(CG_ISA_AVX2);
}
static void test_gemm_sse(void **state) { gemm_all_shapes(CG_ISA_SSE); }

/* Other tiles (12 rows: edge covers of up to 11 rows), unrolls and K blocking (kernel called with
 * beta = 1 for later K blocks), each padded and on edge kernels. */
static void test_gemm_configs(void **state) {
    cg_isa isas[3];
    int n_isa = tu_isas(isas), bad = 0;
    for (int i = 0; i < n_isa; i++) {
        int w = cg_jit_target(tu_jit(isas[i]))->vec_width;
        CgKernelConfig cfgs[] = {{DT_F32, 1, w, 1, false, false, false}, {DT_BF16, 4, 2 * w, 3, false, false, false},
                                 {DT_F16, 3, 3 * w, 2, false, false, false}, {DT_BF16, 12, w, 1, false, false, false},
                                 {DT_BF16, 5, 2 * w, 3, false, false, true}};
        for (size_t c = 0; c < MOE_ARRAY_LEN(cfgs); c++) {
            const CgKernel *kern = tu_kernel(isas[i], &cfgs[c]);
            CgBlocking blk = {.kc = 16, .mc = 2 * cfgs[c].mr}, edged = blk;
            tu_edges(isas[i], kern, &edged);
            bad += check_gemm(kern, &blk, NULL, 11, 3 * w + 1, 257, c == 1, 77 + c);
            bad += check_gemm(kern, &blk, NULL, 5, w - 1 > 0 ? w - 1 : 1, 16, false, 99 + c);
            bad += check_gemm(kern, &edged, NULL, 11, 3 * w + 1, 257, c != 1, 88 + c);
            bad += check_gemm(kern, &edged, NULL, 5, w - 1 > 0 ? w - 1 : 1, 16, true, 111 + c);
        }
    }
    assert_int_equal(bad, 0);
}

/* A matrix of fewer panels than twice the threads splits its rows over chunks as well (gemm.c run):
 * 1 to 3 panels, M from 5 tiles to 333 rows (parts of whole tiles, the last cut), row blocks (mc)
 * smaller than a part, pools of 1, 2, 3 and 5 threads, padded and on edge kernels; each against f64. */
static void test_gemm_row_parts(void **state) {
    cg_isa isas[3];
    int n_isa = tu_isas(isas), bad = 0, runs = 0;
    for (int threads = 1; threads <= 5; threads += threads < 3 ? 1 : 2) {
        CgPool *pool = cg_pool_new(threads);
        for (int i = 0; i < n_isa; i++) {
            CgKernelConfig cfg = cg_kernel_config_default(tu_jit(isas[i]), DT_BF16);
            const CgKernel *kern = tu_kernel(isas[i], &cfg);
            int mr = kern->cfg.mr, nr = kern->cfg.nr;
            const int64_t ms[] = {5 * mr, 37, 333}, ns[] = {1, 12, 2 * nr + 3}, ks[] = {40};
            CgBlocking padded = {.kc = 0, .mc = 2 * mr}, edged = padded;
            tu_edges(isas[i], kern, &edged);
            bad += sweep(kern, &padded, &edged, pool, SIZES(ms), SIZES(ns), SIZES(ks), 4000u + (uint64_t)threads, &runs);
        }
        cg_pool_free(pool);
    }
    if (bad) fprintf(stderr, "row parts: %d mismatches over %d GEMMs\n", bad, runs);
    assert_int_equal(bad, 0);
}

/* cg_gemm_multi: three matrices of one A (N of 49, 47 and 130: panels of each whole and cut, 7 chunks
 * over 2 threads crossing from one matrix to the next), M of 1, 7, 100 (row blocks of 64) and 1000
 * (parts of rows over all the panels: the weights small beside A), every B dtype and ISA, padded and
 * on edge kernels, and (cg_gemm_multi_kernels) the third matrix on a kernel one vector wide: each C_q
 * as cg_gemm makes it alone on its kernel (check_gemm checks that against f64), bit for bit, and the
 * padding between rows untouched. */
static void test_gemm_multi(void **state) {
    static const int64_t Ns[3] = {49, 47, 130}, Ms[] = {1, 7, 100, 1000}, K = 257;
    cg_isa isas[3];
    int n_isa = tu_isas(isas), bad = 0;
    CgPool *pool = cg_pool_new(2);
    for (int is = 0; is < n_isa; is++)
        for (size_t d = 0; d < MOE_ARRAY_LEN(DTYPES); d++)
            for (size_t mi = 0; mi < MOE_ARRAY_LEN(Ms); mi++)
                for (int edges = 0; edges < 4; edges++) { /* edges & 2: the narrow third kernel */
                    CgKernelConfig cfg = cg_kernel_config_default(tu_jit(isas[is]), DTYPES[d]);
                    const CgKernel *kern = tu_kernel(isas[is], &cfg), *ks[3] = {kern, kern, kern};
                    CgBlocking blk = {.kc = 0, .mc = 64}, nblk = blk;
                    const CgBlocking *bs[3] = {&blk, &blk, &blk};
                    if (edges & 1) tu_edges(isas[is], kern, &blk);
                    if (edges & 2) {
                        CgKernelConfig n = cg_kernel_config_tile(tu_jit(isas[is]), DTYPES[d], cfg.mr,
                                                                 cg_jit_target(tu_jit(isas[is]))->vec_width, 0);
                        ks[2] = tu_kernel(isas[is], &n), bs[2] = &nblk;
                        if (edges & 1) tu_edges(isas[is], ks[2], &nblk);
                        assert_true(cg_gemm_packs_alike(kern, &blk, ks[2], &nblk) && ks[2]->cfg.nr < kern->cfg.nr);
                        assert_false(cg_gemm_packs_alike(ks[2], &nblk, kern, &blk)); /* wider than the first */
                    }
                    int64_t m = Ms[mi], lda = K + 3;
                    moe_rng r;
                    rng_seed(&r, 500 + (uint64_t)(mi * 2 + (size_t)edges));
                    float *a = xmalloc(sizeof(float) * (size_t)(m * lda));
                    tu_random(&r, a, (size_t)(m * lda));
                    CgPackedB pb[3];
                    const CgPackedB *bp[3];
                    float *c[3], *want[3];
                    int64_t ldc[3];
                    void *wd[3];
                    CgWork work = {0};
                    for (int q = 0; q < 3; q++) {
                        float *w = xmalloc(sizeof(float) * (size_t)(Ns[q] * K));
                        tu_random(&r, w, (size_t)(Ns[q] * K));
                        wd[q] = tu_to_dtype(w, (size_t)(Ns[q] * K), DTYPES[d]);
                        free(w);
                        cg_pack_b(&pb[q], wd[q], DTYPES[d], Ns[q], K, ks[q]->cfg.nr, cg_kernel_kpair(&ks[q]->cfg));
                        bp[q] = &pb[q], ldc[q] = Ns[q] + 2 + q;
                        c[q] = xmalloc(sizeof(float) * (size_t)(m * ldc[q]));
                        want[q] = xmalloc(sizeof(float) * (size_t)(m * ldc[q]));
                        for (int64_t e = 0; e < m * ldc[q]; e++) c[q][e] = want[q][e] = -7.0f - (float)q;
                        cg_gemm(ks[q], bs[q], pool, &work, m, a, lda, &pb[q], want[q], ldc[q], false);
                    }
                    if (edges & 2) cg_gemm_multi_kernels(ks, bs, pool, &work, m, a, lda, 3, bp, c, ldc);
                    else cg_gemm_multi(kern, &blk, pool, &work, m, a, lda, 3, bp, c, ldc);
                    for (int q = 0; q < 3; q++) {
                        if (memcmp(c[q], want[q], sizeof(float) * (size_t)(m * ldc[q])) != 0 && bad++ < 5)
                            fprintf(stderr, "  %s %s M=%lld edges=%d: matrix %d differs from cg_gemm's\n", kern->symbol,
                                    dtype_name(DTYPES[d]), (long long)m, edges, q);
                        cg_packed_b_free(&pb[q]);
                        free(c[q]), free(want[q]), free(wd[q]);
                    }
                    cg_work_free(&work);
                    free(a);
                }
    cg_pool_free(pool);
    assert_int_equal(bad, 0);
}

/* The bf16 dot-product kernels (AVX512-BF16 hosts): every shape of gemm_all_shapes (odd K: a last
 * pair half zero), other tiles and unrolls, K blocks of odd sizes (made even by the driver), padded
 * and on edge kernels. Without the instruction the kernels must be refused with a message. */
static void test_gemm_bf16_dot(void **state) {
    if (cg_host_isa() < CG_ISA_AVX512) skip();
    CgJit *jit = tu_jit(CG_ISA_AVX512);
    CgKernelConfig cfg = cg_kernel_config_default(jit, DT_BF16);
    cfg.a_bf16 = true;
    if (!cg_jit_target(jit)->has_bf16_dot) {
        char err[256];
        assert_null(cg_jit_kernel(jit, &cfg, NULL, err, sizeof err));
        assert_non_null(strstr(err, "AVX512-BF16"));
        skip();
    }
    static const int64_t Ms[] = {0, 1, 2, 3, 7, 8, 9, 33, 100}, Ns[] = {1, 47, 48, 49, 130}, Ks[] = {1, 2, 3, 64, 257};
    CgPool *pool = cg_pool_new(2);
    int bad = 0, runs = 0;
    CgKernelConfig cfgs[] = {cfg, {DT_BF16, 4, 32, 3, true, false, false}, {DT_BF16, 12, 16, 1, true, false, false},
                             {DT_BF16, 1, 48, 2, true, false, false}};
    for (size_t c = 0; c < MOE_ARRAY_LEN(cfgs); c++) {
        const CgKernel *kern = tu_kernel(CG_ISA_AVX512, &cfgs[c]);
        CgBlocking padded = {.kc = c == 0 ? 0 : c == 1 ? 15 : 64, .mc = 64}, edged = padded;
        tu_edges(CG_ISA_AVX512, kern, &edged);
        for (int e = 0; e < CG_GEMM_EDGES && edged.edge[e]; e++) assert_true(edged.edge[e]->cfg.a_bf16);
        bad += sweep(kern, &padded, &edged, pool, SIZES(Ms), SIZES(Ns), SIZES(Ks), 3000u, &runs);
    }
    cg_pool_free(pool);
    if (bad) fprintf(stderr, "bf16 dot: %d mismatches over %d GEMMs\n", bad, runs);
    assert_int_equal(bad, 0);
    char err[256];
    char *ir = cg_kernel_ir_text(jit, &cfg, err, sizeof err);
    assert_non_null(ir);
    assert_non_null(strstr(ir, "@llvm.x86.avx512bf16.dpbf16ps.512"));
    assert_null(strstr(ir, "@llvm.fma"));
    free(ir);
    CgKernelConfig f16 = cfg;
    f16.b_dtype = DT_F16;
    assert_null(cg_jit_kernel(jit, &f16, NULL, err, sizeof err));
}

/* The AMX kernels (AMX-BF16 hosts that Linux grants the tiles): 32 x 32 (two A tiles, two B),
 * 16 x 32, 7 x 16 and 32 x 16, over M around 16 and 32 (edge covers of 16 AMX rows and 4 and 1 rows
 * of f32 FMAs on the same k pairs, A rounded alike), N around
 * the panel, K around the 32-step k block (the rest zeros in A and B) and K blocks the driver rounds
 * up to 32, padded and on edge kernels, against f64 with A rounded to bf16; the kernel's IR holds
 * the tile multiply and no vector one. Without AMX the kernels must be refused with a message. */
static void test_gemm_amx(void **state) {
    if (cg_host_isa() < CG_ISA_AVX512) skip();
    CgJit *jit = tu_jit(CG_ISA_AVX512);
    CgKernelConfig cfg = cg_kernel_config_amx(32, 32);
    char err[256];
    if (!cg_jit_target(jit)->has_amx) {
        assert_null(cg_jit_kernel(jit, &cfg, NULL, err, sizeof err));
        assert_non_null(strstr(err, "AMX"));
        skip();
    }
    static const int64_t Ms[] = {0, 1, 2, 5, 16, 17, 31, 32, 33, 100}, Ns[] = {1, 31, 32, 33, 130},
                         Ks[] = {1, 2, 31, 32, 33, 64, 257};
    CgPool *pool = cg_pool_new(2);
    int bad = 0, runs = 0;
    CgKernelConfig cfgs[] = {cfg, cg_kernel_config_amx(16, 32), cg_kernel_config_amx(7, 16), cg_kernel_config_amx(32, 16)};
    for (size_t c = 0; c < MOE_ARRAY_LEN(cfgs); c++) {
        assert_true(cfgs[c].amx && cfgs[c].a_bf16);
        const CgKernel *kern = tu_kernel(CG_ISA_AVX512, &cfgs[c]);
        CgBlocking padded = {.kc = c == 0 ? 0 : c == 1 ? 15 : 64, .mc = 64}, edged = padded;
        tu_edges(CG_ISA_AVX512, kern, &edged);
        for (int e = 0; e < CG_GEMM_EDGES && edged.edge[e]; e++) /* 16 rows AMX, fewer FMAs on the k pairs */
            assert_true(edged.edge[e]->cfg.mr >= 16 ? edged.edge[e]->cfg.amx : edged.edge[e]->cfg.kpair_b);
        bad += sweep(kern, &padded, &edged, pool, SIZES(Ms), SIZES(Ns), SIZES(Ks), 5000u, &runs);
    }
    cg_pool_free(pool);
    if (bad) fprintf(stderr, "amx: %d mismatches over %d GEMMs\n", bad, runs);
    assert_int_equal(bad, 0);
    char *ir = cg_kernel_ir_text(jit, &cfg, err, sizeof err);
    assert_non_null(ir);
    assert_non_null(strstr(ir, "@llvm.x86.tdpbf16ps"));
    assert_null(strstr(ir, "@llvm.fma"));
    free(ir);
    CgKernelConfig bad_tile = cfg;
    bad_tile.nr = 48; /* three B tiles and six accumulators: more than 8 tiles */
    assert_null(cg_jit_kernel(jit, &bad_tile, NULL, err, sizeof err));
    assert_non_null(strstr(err, "AMX tile"));
}

static void test_isa_detection(void **state) {
    cg_isa isas[3];
    int n = tu_isas(isas);
    static const int width[] = {0, 4, 8, 16};
    for (int i = 0; i < n; i++) {
        const CgTarget *t = cg_jit_target(tu_jit(isas[i]));
        assert_int_equal(t->vec_width, width[isas[i]]);
        assert_true(t->features && strlen(t->features) > 0);
        printf("isa %-6s cpu %s, fma %d, f16c %d\n", cg_isa_name(t->isa), t->cpu, t->has_fma, t->has_f16c);
    }
    char err[256];
    const char *was = getenv("MOEPPC_ISA"); /* (llvm_gemm_avx2 and _sse set it for the tests after this one) */
    char *saved = was ? strdup(was) : NULL;
    setenv("MOEPPC_ISA", "avx9000", 1);
    assert_null(cg_jit_new(CG_ISA_AUTO, err, sizeof err));
    assert_non_null(strstr(err, "MOEPPC_ISA"));
    setenv("MOEPPC_ISA", "sse", 1);
    CgJit *j = cg_jit_new(CG_ISA_AUTO, err, sizeof err);
    assert_non_null(j);
    assert_int_equal(cg_jit_target(j)->isa, CG_ISA_SSE);
    cg_jit_free(j);
    if (saved) setenv("MOEPPC_ISA", saved, 1);
    else unsetenv("MOEPPC_ISA");
    free(saved);
}

/* The optimised IR keeps full-width vectors, uses llvm.fma where there is FMA, calls nothing else but
 * llvm.prefetch (test_object's test_b_prefetch). */
static void test_ir_text(void **state) {
    cg_isa isas[3];
    int n = tu_isas(isas);
    for (int i = 0; i < n; i++) {
        CgJit *jit = tu_jit(isas[i]);
        int w = cg_jit_target(jit)->vec_width;
        CgKernelConfig cfg = cg_kernel_config_default(jit, DT_BF16);
        char err[256], want[64];
        char *ir = cg_kernel_ir_text(jit, &cfg, err, sizeof err);
        assert_non_null(ir);
        snprintf(want, sizeof want, "<%d x float>", w);
        assert_non_null(strstr(ir, want));
        snprintf(want, sizeof want, "@llvm.fma.v%df32", w);
        assert_true((strstr(ir, want) != NULL) == (isas[i] != CG_ISA_SSE));
        for (const char *p = ir; (p = strstr(p, "call ")) != NULL; p += 5) {
            const char *eol = strchr(p, '\n'), *fma = strstr(p, "@llvm.fma"), *pf = strstr(p, "@llvm.prefetch");
            assert_true((fma && (!eol || fma < eol)) || (pf && (!eol || pf < eol)));
        }
        free(ir);
    }
}

/* Packing writes every byte of its panels: K and column padding zero whatever the memory held
 * before (a bf16 NaN there times an A padding of 0 is NaN), and each element where the kernels read
 * it; every layout (f32, 16-bit, k pairs with an odd K, swiglu halves), N and K not multiples. The
 * same panels packed a run at a time from only the rows cg_pack_b_source_rows names, copied apart
 * (each part's first rows skipped: a weight made a run at a time), are the same bytes. */
static void test_pack_every_byte(void **state) {
    (void)state;
    static const struct { moe_dtype dt; bool kpair, swiglu; int nr; } forms[] = {
        {DT_F32, false, false, 48}, {DT_BF16, false, false, 16}, {DT_F16, false, true, 32},
        {DT_BF16, true, false, 32}, {DT_BF16, true, true, 16}, {DT_F32, false, true, 8}};
    for (size_t f = 0; f < sizeof forms / sizeof *forms; f++) {
        int64_t n = 38, k = 37; /* (swiglu: 19 + 19) */
        size_t es = dtype_size(forms[f].dt);
        unsigned char *w = malloc((size_t)(n * k) * es);
        for (size_t i = 0; i < (size_t)(n * k) * es; i++) w[i] = (unsigned char)(i * 7 + 3) | 1;
        CgPackedB b;
        cg_pack_b_alloc(&b, forms[f].dt, n, k, forms[f].nr, forms[f].kpair, forms[f].swiglu);
        memset(b.data, 0xff, b.panel_bytes * (size_t)b.n_panels);
        cg_pack_b_fill(&b, w, 0, b.n_panels);
        int nr = forms[f].nr, half = nr / 2;
        for (int64_t p = 0; p < b.n_panels; p++) {
            const unsigned char *panel = (const unsigned char *)b.data + p * b.panel_bytes;
            size_t real_bytes = 0;
            for (int j = 0; j < nr; j++) {
                int64_t col = forms[f].swiglu ? p * half + j % half : p * nr + j;
                bool real = forms[f].swiglu ? col < n / 2 : col < n;
                int64_t row = forms[f].swiglu && j >= half ? n / 2 + col : col;
                for (int64_t kk = 0; real && kk < k; kk++) {
                    size_t at = forms[f].kpair ? (size_t)((kk / 2) * 2 * nr + 2 * j + kk % 2) : (size_t)(kk * nr + j);
                    assert_memory_equal(panel + at * es, w + (size_t)(row * k + kk) * es, es);
                    real_bytes += es;
                }
            }
            size_t zeros = 0; /* every other byte: padding (w has no zero byte) */
            for (size_t i = 0; i < b.panel_bytes; i++) zeros += panel[i] == 0;
            assert_int_equal(zeros, b.panel_bytes - real_bytes);
        }
        CgPackedB c;
        cg_pack_b_alloc(&c, forms[f].dt, n, k, forms[f].nr, forms[f].kpair, forms[f].swiglu);
        memset(c.data, 0xff, c.panel_bytes * (size_t)c.n_panels);
        size_t row = (size_t)k * es;
        for (int64_t p0 = 0, run = 1; p0 < c.n_panels; p0 += run, run = run % 3 + 1) {
            int64_t p1 = p0 + run < c.n_panels ? p0 + run : c.n_panels, r[4];
            cg_pack_b_source_rows(&c, p0, p1, r);
            assert_true(r[0] <= r[1] && r[1] <= (forms[f].swiglu ? n / 2 : n) && r[2] <= r[3] && r[3] <= n);
            unsigned char *lo = malloc((size_t)(r[1] - r[0]) * row + 1), *hi = malloc((size_t)(r[3] - r[2]) * row + 1);
            memcpy(lo, w + (size_t)r[0] * row, (size_t)(r[1] - r[0]) * row);
            memcpy(hi, w + (size_t)r[2] * row, (size_t)(r[3] - r[2]) * row);
            cg_pack_b_fill_parts(&c, lo, r[3] > r[2] ? hi : NULL, r[2] - r[0], r[0], p0, p1);
            free(lo), free(hi);
        }
        assert_memory_equal(c.data, b.data, c.panel_bytes * (size_t)c.n_panels);
        cg_packed_b_free(&c);
        cg_packed_b_free(&b);
        free(w);
    }
}

static int teardown(void **state) {
    tu_jits_free();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isa_detection), cmocka_unit_test(test_ir_text),
        cmocka_unit_test(test_gemm_avx512),   cmocka_unit_test(test_gemm_avx2),
        cmocka_unit_test(test_gemm_sse),      cmocka_unit_test(test_gemm_configs),
        cmocka_unit_test(test_gemm_multi),    cmocka_unit_test(test_gemm_row_parts),
        cmocka_unit_test(test_gemm_bf16_dot),
        cmocka_unit_test(test_gemm_amx),      cmocka_unit_test(test_pack_every_byte),
    };
    return cmocka_run_group_tests(tests, NULL, teardown);
}
