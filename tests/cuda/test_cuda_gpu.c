/* test_cuda_gpu.c — generated kernels run on the GPU against C references (dispatch: exact; grouped
 * GEMMs, every path: f32 1e-4, bf16 2e-2 relative). Skips cleanly (CMocka skip, exit 0) when there is
 * no driver or no GPU. Label "cuda;gpu". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "codegen/cuda/cg_cuda.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static CgCudaDriver *drv;
static char arch[16];

static int setup(void **state)
{
    (void)state;
    char err[512];
    drv = cg_cuda_driver_open(0, err, sizeof err);
    if (!drv) printf("cuda_gpu: skipping: %s\n", err);
    else cg_cuda_device_arch(drv, arch, sizeof arch);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cg_cuda_driver_close(drv);
    return 0;
}

static void *kernel(const char *src, const char *sym)
{
    CgCudaBinary bin;
    char err[16384];
    bool ok = cg_cuda_compile(src, sym, arch, true, false, &bin, err, sizeof err);
    if (!ok) fprintf(stderr, "%s\n", err);
    assert_true(ok);
    void *fn = NULL;
    ok = cg_cuda_function(drv, bin.cubin, sym, &fn, err, sizeof err);
    if (!ok) fprintf(stderr, "%s\n", err);
    assert_true(ok);
    cg_cuda_binary_free(&bin);
    return fn;
}

/* g's kernel, generated and compiled for this GPU; its symbol in sym[256] */
static void *gemm_kernel(const CgCudaGemm *g, char *sym)
{
    char err[512];
    cg_cuda_gemm_symbol(g, sym, 256);
    char *src = cg_cuda_gemm_source(g, err, sizeof err);
    if (!src) fprintf(stderr, "%s\n", err);
    assert_non_null(src);
    void *fn = kernel(src, sym);
    free(src);
    return fn;
}

static uint64_t upload(const void *p, size_t n)
{
    char err[512];
    uint64_t d = 0;
    assert_true(cg_cuda_alloc(drv, &d, n, err, sizeof err));
    if (p) assert_true(cg_cuda_upload(drv, d, p, n, err, sizeof err));
    return d;
}

static void download(void *p, uint64_t d, size_t n)
{
    char err[512];
    assert_true(cg_cuda_download(drv, p, d, n, err, sizeof err));
}

static void launch(void *fn, const unsigned g[3], const unsigned b[3], size_t smem, void **args)
{
    char err[512];
    bool ok = cg_cuda_launch(drv, fn, g, b, smem, args, err, sizeof err);
    if (!ok) fprintf(stderr, "%s\n", err);
    assert_true(ok);
}

/* Stable counting sort of the picks by FFN expert (cg_ops.h CG_OP_DISPATCH). */
static void dispatch_ref(int64_t T, int k, int E, const int32_t *ids, const float *w, int64_t *off, int32_t *perm,
                         float *gw)
{
    int64_t s = 0;
    for (int e = 0; e < E; e++) {
        off[e] = s;
        for (int64_t p = 0; p < T * k; p++)
            if (ids[p] == e) perm[s] = (int32_t)(p / k), gw[s++] = w[p];
    }
    off[E] = s;
}

/* Random top-k picks (distinct per token) over E_all experts, the first E of them FFN. */
static void random_picks(moe_rng *r, int64_t T, int k, int E_all, int32_t *ids, float *w)
{
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            int id;
            bool dup;
            do {
                id = (int)(rng_next(r) % (uint64_t)E_all);
                dup = false;
                for (int q = 0; q < j; q++) dup |= ids[t * k + q] == id;
            } while (dup);
            ids[t * k + j] = id;
            w[t * k + j] = (float)rng_uniform(r);
        }
}

static void test_dispatch(void **state)
{
    (void)state;
    if (!drv) skip();
    enum { T = 1500, K = 2, E = 6, EALL = 9 };
    moe_rng r;
    rng_seed(&r, 7);
    int32_t *ids = xmalloc(T * K * sizeof *ids), *perm = xmalloc(T * K * sizeof *perm), *perm_d = xmalloc(T * K * 4);
    float *w = xmalloc(T * K * sizeof *w), *gw = xmalloc(T * K * 4), *gw_d = xmalloc(T * K * 4);
    int64_t off[E + 1], off_d[E + 1];
    random_picks(&r, T, K, EALL, ids, w);
    dispatch_ref(T, K, E, ids, w, off, perm, gw);
    CgOpDesc d = {.kind = CG_OP_DISPATCH, .experts = E, .k = K};
    char sym[600], err[256];
    cg_cuda_op_symbol(&d, sym, sizeof sym);
    char *src = cg_cuda_op_source(&d, err, sizeof err);
    void *fn = kernel(src, sym);
    uint64_t dids = upload(ids, T * K * 4), dw = upload(w, T * K * 4), doff = upload(NULL, sizeof off),
             dperm = upload(NULL, T * K * 4), dgw = upload(NULL, T * K * 4);
    long long TT = T;
    void *args[] = {&TT, &dids, &dw, &doff, &dperm, &dgw};
    unsigned g[3], b[3];
    size_t smem;
    cg_cuda_op_launch(&d, T, g, b, &smem);
    launch(fn, g, b, smem, args);
    download(off_d, doff, sizeof off_d);
    assert_memory_equal(off, off_d, sizeof off);
    download(perm_d, dperm, (size_t)off[E] * 4);
    download(gw_d, dgw, (size_t)off[E] * 4);
    assert_memory_equal(perm, perm_d, (size_t)off[E] * 4);
    assert_memory_equal(gw, gw_d, (size_t)off[E] * 4);
    printf("dispatch: %lld FFN slots placed exactly\n", (long long)off[E]);
    free(src), free(ids), free(perm), free(perm_d), free(w), free(gw), free(gw_d);
}

/* COMBINE with the scale and the dispatch fused (the executor's form at T <= 16): y against a C
 * reference (f32 against f64: 1e-5 relative), u = s x and the dispatch exactly; with off NULL the dispatch
 * buffers stay untouched. FFN experts 0..5, constant 6..7, copy 8, zero 9. */
static void test_combine(void **state)
{
    (void)state;
    if (!drv) skip();
    enum { D = 300, K = 2, E = 6, NC = 2, EALL = 10, TMAX = 16 };
    const float S = 1.75f;
    moe_rng r;
    rng_seed(&r, 11);
    CgOpDesc d = {.kind = CG_OP_COMBINE, .wdtype = DT_F32, .cols = D, .k = K, .s = S, .n_const = NC, .const_lo = 6,
                  .copy_lo = 8, .copy_hi = 9, .experts = E};
    char sym[600], err[256];
    cg_cuda_op_symbol(&d, sym, sizeof sym);
    char *src = cg_cuda_op_source(&d, err, sizeof err);
    assert_non_null(src);
    void *fn = kernel(src, sym);
    float *v = xmalloc(NC * D * sizeof *v), *x = xmalloc(TMAX * D * sizeof *x), *al = xmalloc(TMAX * 2 * NC * 4);
    for (int j = 0; j < NC * D; j++) v[j] = (float)rng_uniform(&r) - 0.5f;
    uint64_t dv[NC] = {upload(v, D * 4), upload(v + D, D * 4)}, dvc = upload(dv, sizeof dv);
    for (int T = 1; T <= TMAX; T += 15)
        for (int with_disp = 0; with_disp < 2; with_disp++) {
            int32_t ids[TMAX * K], perm[TMAX * K], perm_d[TMAX * K];
            float w[TMAX * K], gw[TMAX * K], gw_d[TMAX * K], *y = xmalloc(T * D * 4), *u = xmalloc(T * D * 4);
            int64_t off[E + 1], off_d[E + 1], unset[E + 1];
            for (int q = 0; q <= E; q++) unset[q] = 0x7fffffff7fffffffLL;
            random_picks(&r, T, K, EALL, ids, w);
            for (int j = 0; j < T * D; j++) x[j] = (float)rng_uniform(&r) * 4 - 2;
            for (int j = 0; j < T * 2 * NC; j++) al[j] = (float)rng_uniform(&r) * 2 - 1;
            dispatch_ref(T, K, E, ids, w, off, perm, gw);
            uint64_t dx = upload(x, T * D * 4), dw = upload(w, T * K * 4), dids = upload(ids, T * K * 4),
                     dal = upload(al, T * 2 * NC * 4), dy = upload(NULL, T * D * 4), du = upload(NULL, T * D * 4),
                     doff = upload(unset, sizeof unset), dperm = upload(NULL, T * K * 4), dgw = upload(NULL, T * K * 4);
            long long TT = T;
            uint64_t o = with_disp ? doff : 0;
            void *args[] = {&TT, &dx, &dw, &dids, &dal, &dvc, &dy, &du, &o, &dperm, &dgw};
            unsigned g[3], b[3];
            size_t smem;
            cg_cuda_op_launch(&d, T, g, b, &smem);
            launch(fn, g, b, smem, args);
            download(y, dy, T * D * 4), download(u, du, T * D * 4), download(off_d, doff, sizeof off_d);
            double worst = 0, scale = 0;
            for (int t = 0; t < T; t++)
                for (int c = 0; c < D; c++) {
                    double want = 0, xv = (double)(S * x[t * D + c]);
                    for (int j = 0; j < K; j++) {
                        int id = ids[t * K + j];
                        if (id == 8) want += w[t * K + j] * xv;
                        else if (id >= 6 && id < 8)
                            want += w[t * K + j] * (al[t * 2 * NC + 2 * (id - 6)] * xv + al[t * 2 * NC + 2 * (id - 6) + 1] *
                                                                                         (double)v[(id - 6) * D + c]);
                    }
                    assert_true(u[t * D + c] == S * x[t * D + c]);
                    worst = fmax(worst, fabs(y[t * D + c] - want)), scale = fmax(scale, fabs(want));
                }
            assert_true(worst <= 1e-5 * scale);
            if (with_disp) {
                assert_memory_equal(off, off_d, sizeof off);
                download(perm_d, dperm, (size_t)off[E] * 4), download(gw_d, dgw, (size_t)off[E] * 4);
                assert_memory_equal(perm, perm_d, (size_t)off[E] * 4);
                assert_memory_equal(gw, gw_d, (size_t)off[E] * 4);
            } else
                assert_memory_equal(off_d, unset, sizeof unset); /* untouched */
            printf("combine: T = %d, u = s x exactly, y within %.2g%s\n", T, scale > 0 ? worst / scale : worst,
                   with_disp ? ", its dispatch exact" : ", no dispatch (off NULL)");
            uint64_t bufs[] = {dx, dw, dids, dal, dy, du, doff, dperm, dgw};
            for (size_t q = 0; q < MOE_ARRAY_LEN(bufs); q++) cg_cuda_free(drv, bufs[q]);
            free(y), free(u);
        }
    cg_cuda_free(drv, dv[0]), cg_cuda_free(drv, dv[1]), cg_cuda_free(drv, dvc);
    free(src), free(v), free(x), free(al);
}

static double rel_err(const float *got, const double *want, size_t n)
{
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) return INFINITY; /* fmax would drop a NaN: an unwritten element */
        worst = fmax(worst, fabs(got[i] - want[i]));
    }
    return scale > 0 ? worst / scale : worst;
}

/* One path: dispatch on the host, then UP and DOWN on the device against f64 references computed from
 * the same (rounded) weights; hidden size D, intermediate I; decode: the GEMV's decode form. async
 * (MMA): the cp.async form with {stages, bm, bn, bk} (0: its default), x uploaded 16-bit and h
 * coming out 16-bit, as the executor runs it; async[4]: on sm_90a's wgmma. */
static void grouped_case(cg_cuda_gemm_path path, moe_dtype dt, int64_t T, double tol, int D, int I, bool decode,
                         const int *async, int split)
{
    enum { K = 2, E = 4, EALL = 6 };
    moe_rng r;
    rng_seed(&r, 11 + (uint64_t)T);
    int32_t *ids = xmalloc((size_t)T * K * 4), *perm = xmalloc((size_t)T * K * 4);
    float *w = xmalloc((size_t)T * K * 4), *gw = xmalloc((size_t)T * K * 4), *x = xmalloc((size_t)T * D * 4);
    int64_t off[E + 1];
    random_picks(&r, T, K, EALL, ids, w);
    dispatch_ref(T, K, E, ids, w, off, perm, gw);
    int64_t S = off[E];
    size_t esz = dtype_size(dt), nu = (size_t)E * 2 * I * D, nd = (size_t)E * D * I;
    void *wu = xmalloc(nu * esz), *wd = xmalloc(nd * esz);
    for (size_t i = 0; i < nu; i++) dtype_store(dt, wu, i, (rng_uniform(&r) - 0.5) * 0.25);
    for (size_t i = 0; i < nd; i++) dtype_store(dt, wd, i, (rng_uniform(&r) - 0.5) * 0.25);
    for (int64_t i = 0; i < T * D; i++) x[i] = (float)(rng_uniform(&r) * 2 - 1);
    double *h = xcalloc((size_t)S * I + 1, 8), *y = xcalloc((size_t)T * D, 8);
    for (int e = 0; e < E; e++)
        for (int64_t s = off[e]; s < off[e + 1]; s++) {
            for (int n = 0; n < I; n++) {
                double a = 0, bb = 0;
                for (int c = 0; c < D; c++) {
                    double xv = dtype_round(dt, x[perm[s] * D + c]); /* the MMA path stages x in dt */
                    if (path != CG_CUDA_PATH_MMA) xv = x[perm[s] * D + c];
                    a += xv * dtype_load(dt, wu, ((size_t)e * 2 * I + n) * D + c);
                    bb += xv * dtype_load(dt, wu, ((size_t)e * 2 * I + I + n) * D + c);
                }
                h[s * I + n] = a / (1 + exp(-a)) * bb;
            }
            for (int n = 0; n < D; n++) {
                double acc = 0;
                for (int c = 0; c < I; c++) {
                    double hv = path == CG_CUDA_PATH_MMA ? dtype_round(dt, (float)h[s * I + c]) : h[s * I + c];
                    acc += hv * dtype_load(dt, wd, ((size_t)e * D + n) * I + c);
                }
                y[perm[s] * D + n] += gw[s] * acc;
            }
        }
    CgCudaGemm gu = cg_cuda_gemm_default(CG_CUDA_GEMM_UP, path, dt, E, K, I, D);
    CgCudaGemm gd = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, path, dt, E, K, D, I);
    gd.split = split;
    if (decode) gu = cg_cuda_gemm_decode(&gu), gd = cg_cuda_gemm_decode(&gd);
    CgCudaGemm *both[] = {&gu, &gd};
    for (int q = 0; async && q < 2; q++) {
        CgCudaGemm *g = both[q];
        *g = async[4] == 5 ? cg_cuda_gemm_tma(g, cg_cuda_gemm_tma_large(g, T)) /* 5: sm_90's rule at T */
             : async[4]    ? cg_cuda_gemm_wgmma(g)
                           : cg_cuda_gemm_async(g);
        if (async[0]) g->stages = async[0];
        if (async[1]) g->bm = async[1], g->bn = async[2], g->bk = async[3];
        g->tma = async[4] > 1; /* W by the TMA, and A: DOWN's h, UP's x gathered into slot order first */
        /* 3: warp-specialised, 3 blocks looping over the tiles (the ring running on across them),
           DOWN's last wave by stream-K, as the executor runs them; 8: without stream-K; 4:
           warp-specialised, a block a tile (DOWN: all by stream-K); 6: TMA with UP's A gathered by
           cp.async (gather_a); 7: that warp-specialised, 3 blocks */
        bool rule_ws = async[4] == 5 && g->ws; /* (the rule's large DOWN tile) */
        g->ws = async[4] == 3 || async[4] == 4 || async[4] == 7 || async[4] == 8 || rule_ws;
        cg_cuda_gemm_persist(g, async[4] == 4 ? 0 : 3, async[4] == 8);
        g->gather_a = (async[4] == 6 || async[4] == 7) && q == 0;
    }
    char su[256], sd[256];
    void *fu = gemm_kernel(&gu, su), *fd = gemm_kernel(&gd, sd);
    float *hgot = xmalloc((size_t)S * I * 4 + 4), *ygot = xcalloc((size_t)T * D, 4);
    size_t hsz = async ? 2 : 4, xsz = async ? 2 : 4; /* async: x and h 16-bit */
    uint16_t *x16 = xmalloc((size_t)T * D * 2);
    for (int64_t i = 0; i < T * D && async; i++) dtype_store(dt, x16, (size_t)i, x[i]);
    for (int64_t i = 0; i < S * I; i++) hgot[i] = NAN; /* poison: unwritten elements show (0xffff: NaN too) */
    uint64_t dx = upload(async ? (void *)x16 : x, (size_t)T * D * xsz), doff = upload(off, sizeof off),
             dperm = upload(perm, (size_t)T * K * 4), dgw = upload(gw, (size_t)T * K * 4), dwu = upload(wu, nu * esz),
             dwd = upload(wd, nd * esz), dh = upload(hgot, (size_t)S * I * 4 + 4), dy = upload(ygot, (size_t)T * D * 4);
    long long TT = T;
    unsigned g[3], b[3];
    size_t smem;
    /* TMA: the weights' tensor maps, last arguments, then A's (DOWN's h; UP's x in slot order, which
     * the gather16 kernel makes from f32 x as the executor does: rows past the FFN picks' slots poisoned,
     * their outputs are not stored) */
    _Alignas(128) unsigned char mapu[128], mapd[128], maph[128], mapx[128];
    bool ua = cg_cuda_gemm_tma_a(&gu);
    uint64_t dxs = 0;
    if (ua) {
        char gs[64];
        cg_cuda_gather16_symbol(dt, gs, sizeof gs);
        char *src = cg_cuda_gather16_source(dt);
        void *fg = kernel(src, gs);
        free(src);
        uint16_t *poison = xmalloc((size_t)(T * K * D) * 2);
        memset(poison, 0xff, (size_t)(T * K * D) * 2);
        uint64_t dxf = upload(x, (size_t)(T * D) * 4);
        dxs = upload(poison, (size_t)(T * K * D) * 2);
        long long slots = T * K, dd = D, ee = E;
        void *ga[] = {&slots, &dd, &ee, &dxf, &doff, &dperm, &dxs};
        cg_cuda_gather16_launch(slots, D, g, b);
        launch(fg, g, b, 0, ga);
        cg_cuda_free(drv, dxf);
        free(poison);
    }
    if (gu.tma) {
        char e[512];
        uint64_t rows;
        unsigned box;
        cg_cuda_gemm_tma_map(&gu, &rows, &box);
        bool ok = cg_cuda_tensor_map_2d(drv, mapu, dwu, (uint64_t)D, rows, 64, box, true, e, sizeof e);
        cg_cuda_gemm_tma_map(&gd, &rows, &box);
        ok = ok && cg_cuda_tensor_map_2d(drv, mapd, dwd, (uint64_t)I, rows, 64, box, true, e, sizeof e);
        assert_true(cg_cuda_gemm_tma_map_a(&gu, T, &rows, &box) == !gu.gather_a);
        if (ua) {
            assert_true(rows == (uint64_t)(T * K) && box == (unsigned)gu.bm);
            ok = ok && cg_cuda_tensor_map_2d(drv, mapx, dxs, (uint64_t)D, rows, 64, box, true, e, sizeof e);
        }
        assert_true(cg_cuda_gemm_tma_map_a(&gd, T, &rows, &box));
        assert_true(rows == (uint64_t)(T * K) && rows >= (uint64_t)S && box == (unsigned)gd.bm);
        /* (the slots of FFN picks only: h here holds S rows, the executor's arena T * k) */
        ok = ok && cg_cuda_tensor_map_2d(drv, maph, dh, (uint64_t)I, (uint64_t)S, 64, box, true, e, sizeof e);
        if (!ok) fprintf(stderr, "%s\n", e);
        assert_true(ok);
    }
    void *au[] = {&TT, ua ? &dxs : &dx, &doff, &dperm, &dwu, &dh, mapu, mapx};
    cg_cuda_gemm_launch(&gu, T, g, b, &smem);
    launch(fu, g, b, smem, au);
    void *ad[] = {&TT, &dh, &doff, &dperm, &dgw, &dwd, &dy, mapd, maph};
    cg_cuda_gemm_launch(&gd, T, g, b, &smem);
    launch(fd, g, b, smem, ad);
    download(hgot, dh, (size_t)S * I * hsz);
    for (int64_t i = S * I - 1; async && i >= 0; i--) hgot[i] = (float)dtype_load(dt, hgot, (size_t)i); /* widen in place */
    download(ygot, dy, (size_t)T * D * 4);
    double eu = rel_err(hgot, h, (size_t)S * I), ed = rel_err(ygot, y, (size_t)T * D);
    printf("%s%s %s T=%lld D=%d I=%d: up rel err %.3g, down%s%s rel err %.3g (tol %g)\n",
           async ? su : cg_cuda_gemm_path_name(path), decode ? " (decode)" : "", dtype_name(dt), (long long)T, D, I, eu,
           async ? " " : "", async ? strstr(sd, "_t") + 1 : "", ed, tol);
    assert_true(eu <= tol);
    assert_true(ed <= tol);
    uint64_t bufs[] = {dx, doff, dperm, dgw, dwu, dwd, dh, dy, dxs};
    for (size_t i = 0; i < MOE_ARRAY_LEN(bufs); i++) cg_cuda_free(drv, bufs[i]);
    free(ids), free(perm), free(w), free(gw), free(x), free(wu), free(wd), free(h), free(y);
    free(hgot), free(ygot), free(x16);
}

/* Where a wgmma form's elements come from, exactly (small integers, exact in bf16 and f32): the
 * down-projection kernel of the form `base` over one group of BM slots, N = BN, one k tile of 64,
 * h[s][k] one-hot at k = s % 64 and W coded so that y[s][n] names what was read —
 *   k probe: W[n][k] = k + 1            -> y[s][n] = s % 64 + 1 (the k that met row s's one)
 *   n probe: W[n][k] = n + 1            -> y[s][n] = n + 1      (the W row column n read)
 *   row probe: h[s][0] = s + 1, W[n][0] = 1, the rest 0 -> y[s][n] = s + 1 (the A row output row s got).
 * A layout the emulator reads otherwise than a GPU (descriptors, swizzle, fragment order) shows as a
 * map of what went where, printed (the first mismatches decoded) before the assertion fails. */
static void layout_probe(const CgCudaGemm *base)
{
    CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, CG_CUDA_PATH_MMA, DT_BF16, 1, 1, base->bn, 64);
    g.wgmma = base->wgmma, g.tma = base->tma, g.stages = base->stages, g.bm = base->bm, g.bn = base->bn, g.bk = 64;
    const int64_t T = g.bm, N = g.n, KD = 64;
    char sym[256];
    void *fn = gemm_kernel(&g, sym);
    int64_t off[2] = {0, T};
    int32_t *perm = xmalloc((size_t)T * 4);
    float *gw = xmalloc((size_t)T * 4), *y = xmalloc((size_t)(T * N) * 4);
    uint16_t *h = xmalloc((size_t)(T * KD) * 2), *w = xmalloc((size_t)(N * KD) * 2);
    for (int64_t s = 0; s < T; s++) perm[s] = (int32_t)s, gw[s] = 1.0f;
    uint64_t dh = upload(NULL, (size_t)(T * KD) * 2), dw = upload(NULL, (size_t)(N * KD) * 2), doff = upload(off, sizeof off),
             dperm = upload(perm, (size_t)T * 4), dgw = upload(gw, (size_t)T * 4), dy = upload(NULL, (size_t)(T * N) * 4);
    _Alignas(128) unsigned char mapw[128], maph[128];
    if (g.tma) {
        uint64_t rows;
        unsigned box;
        char e[512];
        cg_cuda_gemm_tma_map(&g, &rows, &box);
        bool ok = cg_cuda_tensor_map_2d(drv, mapw, dw, (uint64_t)KD, rows, 64, box, true, e, sizeof e);
        assert_true(cg_cuda_gemm_tma_map_a(&g, T, &rows, &box));
        ok = ok && cg_cuda_tensor_map_2d(drv, maph, dh, (uint64_t)KD, rows, 64, box, true, e, sizeof e);
        if (!ok) fprintf(stderr, "%s\n", e);
        assert_true(ok);
    }
    static const char *const what[3] = {"k", "n", "row"};
    int bad_total = 0;
    for (int pr = 0; pr < 3; pr++) {
        for (int64_t s = 0; s < T; s++)
            for (int64_t k = 0; k < KD; k++)
                dtype_store(DT_BF16, h, (size_t)(s * KD + k), pr == 2 ? (k == 0 ? (double)(s + 1) : 0.0) : (k == s % KD));
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < KD; k++)
                dtype_store(DT_BF16, w, (size_t)(n * KD + k), pr == 0 ? (double)(k + 1) : pr == 1 ? (double)(n + 1) : (k == 0));
        memset(y, 0, (size_t)(T * N) * 4);
        char e[512];
        assert_true(cg_cuda_upload(drv, dh, h, (size_t)(T * KD) * 2, e, sizeof e) &&
                    cg_cuda_upload(drv, dw, w, (size_t)(N * KD) * 2, e, sizeof e) &&
                    cg_cuda_upload(drv, dy, y, (size_t)(T * N) * 4, e, sizeof e));
        long long TT = T;
        void *args[] = {&TT, &dh, &doff, &dperm, &dgw, &dw, &dy, mapw, maph};
        unsigned gr[3], b[3];
        size_t smem;
        cg_cuda_gemm_launch(&g, T, gr, b, &smem);
        launch(fn, gr, b, smem, args);
        download(y, dy, (size_t)(T * N) * 4);
        int bad = 0, shown = 0, nonfinite = 0;
        long long nf_at[2] = {-1, -1};
        for (int64_t s = 0; s < T; s++)
            for (int64_t n = 0, in_row = 0; n < N; n++) {
                double want = pr == 0 ? (double)(s % KD + 1) : pr == 1 ? (double)(n + 1) : (double)(s + 1);
                float got = y[s * N + n];
                if (got == want) continue;
                bad++;
                if (!isfinite(got)) { /* (read past what was loaded, or never written) */
                    if (!nonfinite++) nf_at[0] = s, nf_at[1] = n;
                    continue;
                }
                if (shown < 8 && in_row++ < 2 && ++shown) /* (two a row: the map across rows shows) */
                    printf("  %s probe: y[%lld][%lld] = %g: %s %g read where %s %g belongs\n", what[pr], (long long)s,
                           (long long)n, got, what[pr], got - 1, what[pr], want - 1);
            }
        if (nonfinite) printf("  %s probe: %d elements not finite, the first y[%lld][%lld]\n", what[pr], nonfinite, nf_at[0], nf_at[1]);
        printf("wgmma layout probe %s, %s: %lld of %lld elements right\n", sym, what[pr], (long long)(T * N - bad),
               (long long)(T * N));
        bad_total += bad;
    }
    uint64_t bufs[] = {dh, dw, doff, dperm, dgw, dy};
    for (size_t i = 0; i < MOE_ARRAY_LEN(bufs); i++) cg_cuda_free(drv, bufs[i]);
    free(perm), free(gw), free(y), free(h), free(w);
    assert_int_equal(bad_total, 0);
}

static void test_grouped(void **state)
{
    (void)state;
    if (!drv) skip();
    grouped_case(CG_CUDA_PATH_FMA, DT_F32, 100, 1e-4, 64, 48, false, NULL, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 100, 2e-2, 64, 48, false, NULL, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_F16, 100, 2e-2, 64, 48, false, NULL, 0);
    grouped_case(CG_CUDA_PATH_GEMV, DT_F32, 13, 1e-4, 64, 48, false, NULL, 0);
    grouped_case(CG_CUDA_PATH_GEMV, DT_BF16, 13, 2e-2, 64, 48, false, NULL, 0);
    grouped_case(CG_CUDA_PATH_GEMV, DT_BF16, 40, 2e-2, 64, 48, false, NULL, 0); /* more slots than one register chunk */
    /* the decode form: k loops of 4 and 3 batched loads, the last batch partial; T = 1 and more slots */
    grouped_case(CG_CUDA_PATH_GEMV, DT_BF16, 1, 2e-2, 1000, 600, true, NULL, 0);
    grouped_case(CG_CUDA_PATH_GEMV, DT_F32, 1, 1e-4, 1000, 600, true, NULL, 0);
    grouped_case(CG_CUDA_PATH_GEMV, DT_BF16, 7, 2e-2, 1000, 600, true, NULL, 0);
    grouped_case(CG_CUDA_PATH_GEMV, DT_BF16, 7, 2e-2, 1000, 600, false, NULL, 0);
    /* the cp.async form: its default (tiles wider than N: masked columns), then a 4-stage ring with
     * an odd count of 8-column blocks per warp (ldmatrix x4 and x2), and k tails (48 % 32, 200 % 64) */
    static const int dflt[5] = {0}, odd[5] = {4, 64, 48, 16}, deep[5] = {3, 32, 32, 64};
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 100, 2e-2, 64, 48, false, dflt, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_F16, 300, 2e-2, 96, 200, false, odd, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 150, 2e-2, 200, 136, false, deep, 0);
    /* split-K DOWN on every path: whole k tiles per split (FMA: 3 tiles in 4 splits, one empty), the
     * GEMV's chunks with the scalar k tail in the last split, the decode form's shorter batches */
    static const int odd3[5] = {3, 64, 48, 16};
    grouped_case(CG_CUDA_PATH_FMA, DT_F32, 100, 1e-4, 64, 48, false, NULL, 4);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 100, 2e-2, 64, 48, false, NULL, 2);
    grouped_case(CG_CUDA_PATH_MMA, DT_F16, 300, 2e-2, 96, 200, false, odd3, 3);
    grouped_case(CG_CUDA_PATH_GEMV, DT_F32, 13, 1e-4, 64, 52, false, NULL, 3);
    grouped_case(CG_CUDA_PATH_GEMV, DT_BF16, 1, 2e-2, 1000, 600, true, NULL, 3);
}

/* The wgmma forms apart (sm_90 GPUs and the emulator), so that their first run on a GPU, if it fails,
 * leaves the other paths' results standing. */
static void test_grouped_wgmma(void **state)
{
    (void)state;
    if (!drv) skip();
    if (strcmp(arch, "sm_90") != 0 && strcmp(arch, CG_CUDA_EMU_ARCH) != 0) {
        printf("wgmma: not on %s (sm_90 only)\n", arch);
        return;
    }
    /* its default (two warpgroups, k tiles of 64 over k = 48:
     * one partial tile), then one warpgroup with three 8-column blocks and 3 stages */
    static const int wg[5] = {0, 0, 0, 0, 1}, wg_small[5] = {3, 64, 24, 32, 1};
    /* ... with W by the TMA (128-byte swizzled rows): k tails (48 and 200 of 64), a 4-stage ring over
     * k = 200, rows past the last group's (zeros) and one warpgroup of 24 columns */
    static const int tma[5] = {0, 0, 0, 0, 2}, tma_small[5] = {4, 64, 24, 64, 2};
    /* first the exact maps (two warpgroups by 128 and one by 24 columns; cp.async, then TMA) */
    for (int q = 0; q < 4; q++) {
        CgCudaGemm pg = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, CG_CUDA_PATH_MMA, DT_BF16, 1, 1, 128, 64);
        pg = cg_cuda_gemm_wgmma(&pg);
        if (q & 1) pg.bm = 64, pg.bn = 24;
        pg.tma = q >= 2;
        layout_probe(&pg);
    }
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 100, 2e-2, 64, 48, false, wg, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_F16, 300, 2e-2, 96, 200, false, wg_small, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 100, 2e-2, 64, 48, false, tma, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_F16, 300, 2e-2, 96, 200, false, tma_small, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 150, 2e-2, 200, 136, false, tma, 2);
    /* UP's A gathered through perm by cp.async (gather_a, MOEPPC_CUDA_TMA_A=0), plain and warp-specialised */
    static const int tma_ga[5] = {0, 0, 0, 0, 6}, tma_ga_ws[5] = {3, 64, 24, 64, 7};
    grouped_case(CG_CUDA_PATH_MMA, DT_F16, 300, 2e-2, 96, 200, false, tma_ga, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 300, 2e-2, 96, 200, false, tma_ga_ws, 0);
    /* the rule's tiles (cg_cuda_gemm_tma): 64 rows (UP on a ring of 5, DOWN of 4: a group's 50 slots
     * on average) and 128 rows (rings of 4, DOWN 256 columns wide over 296: 150 slots a group) */
    static const int tma_rule[5] = {0, 0, 0, 0, 5};
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 100, 2e-2, 160, 136, false, tma_rule, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 300, 2e-2, 296, 200, false, tma_rule, 0);
    /* k = 600: 10 tiles of 64 around rings of 4 and 5 (cp.async and TMA), each slot refilled twice
     * while the other slots' MMAs may be in flight (the emulator checks none is overwritten early) */
    static const int wg_long[5] = {4, 64, 24, 64, 1}, tma_long[5] = {5, 64, 24, 64, 2};
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 40, 2e-2, 600, 600, false, wg_long, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 40, 2e-2, 600, 600, false, tma_long, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 100, 2e-2, 64, 200, false, wg, 2); /* split-K */
    /* warp-specialised and persistent: two consumer warpgroups (setmaxnreg) over 3 blocks, a tile
     * (both matrices of UP, 128 columns of DOWN) at a time; one consumer by 24 columns on rings of 3
     * (the producer's copies of A published one tile late) and 5 over k = 600, the ring wrapping
     * within and across tiles; a block a tile. DOWN's last wave by stream-K: 4 tiles of 4 k tiles
     * over 3 blocks (a tile and a block's share of the last: k tiles [0,1) [1,2) [2,4)), 32 tiles
     * (10 waves, then 8 k tiles: [0,2) [2,5) [5,8), a block's run across two tiles), 100 of 10 (33
     * waves, then [0,3) [3,6) [6,10)), a block a tile (all by stream-K: 8 blocks, 4 tiles of one k
     * tile, half the blocks empty); and without stream-K */
    static const int ws[5] = {4, 128, 128, 64, 3}, ws_small[5] = {3, 64, 24, 64, 3}, ws_long[5] = {5, 64, 24, 64, 3},
                     ws_one[5] = {4, 64, 64, 64, 4}, ws_dp[5] = {4, 128, 128, 64, 8};
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 300, 2e-2, 96, 200, false, ws, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 300, 2e-2, 96, 200, false, ws_dp, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_F16, 300, 2e-2, 96, 200, false, ws_small, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 40, 2e-2, 600, 600, false, ws_long, 0);
    grouped_case(CG_CUDA_PATH_MMA, DT_BF16, 100, 2e-2, 64, 48, false, ws_one, 0);
}

/* The decode MLP (cg_cuda_mlp_*): UP and DOWN in one kernel over T tokens' picks (some of them to
 * zero-computation experts: their blocks leave), y holding y0 first, against the f64 reference from the
 * same rounded weights with x as it is: f32 math throughout, as the GEMVs', so 1e-4 relative (no
 * activation is rounded to 16 bits that bf16's 2e-2 would allow for). */
static void mlp_case(moe_dtype dt, int64_t T, int D, int I, int rows, int warps)
{
    enum { K = 2, E = 4, EALL = 6 };
    moe_rng r;
    rng_seed(&r, 5 + (uint64_t)(T * D + I + rows));
    int32_t *ids = xmalloc((size_t)T * K * 4), *perm = xmalloc((size_t)T * K * 4);
    float *w = xmalloc((size_t)T * K * 4), *gw = xmalloc((size_t)T * K * 4), *x = xmalloc((size_t)T * D * 4);
    float *y = xmalloc((size_t)T * D * 4);
    int64_t off[E + 1];
    random_picks(&r, T, K, EALL, ids, w);
    dispatch_ref(T, K, E, ids, w, off, perm, gw);
    size_t esz = dtype_size(dt), nu = (size_t)E * 2 * I * D, nd = (size_t)E * D * I;
    void *wu = xmalloc(nu * esz), *wd = xmalloc(nd * esz);
    for (size_t i = 0; i < nu; i++) dtype_store(dt, wu, i, (rng_uniform(&r) - 0.5) * 0.25);
    for (size_t i = 0; i < nd; i++) dtype_store(dt, wd, i, (rng_uniform(&r) - 0.5) * 0.25);
    for (int64_t i = 0; i < T * D; i++) x[i] = (float)(rng_uniform(&r) * 2 - 1), y[i] = (float)(rng_uniform(&r) - 0.5);
    double *want = xmalloc((size_t)T * D * 8), *h = xmalloc((size_t)I * 8);
    for (int64_t i = 0; i < T * D; i++) want[i] = y[i];
    for (int e = 0; e < E; e++)
        for (int64_t s = off[e]; s < off[e + 1]; s++) {
            for (int n = 0; n < I; n++) {
                double a = 0, bb = 0;
                for (int c = 0; c < D; c++) {
                    a += x[perm[s] * D + c] * dtype_load(dt, wu, ((size_t)e * 2 * I + n) * D + c);
                    bb += x[perm[s] * D + c] * dtype_load(dt, wu, ((size_t)e * 2 * I + I + n) * D + c);
                }
                h[n] = a / (1 + exp(-a)) * bb;
            }
            for (int n = 0; n < D; n++) {
                double acc = 0;
                for (int c = 0; c < I; c++) acc += h[c] * dtype_load(dt, wd, ((size_t)e * D + n) * I + c);
                want[perm[s] * D + n] += gw[s] * acc;
            }
        }
    CgCudaMlp m = cg_cuda_mlp_rule(dt, E, K, D, I);
    m.rows = rows, m.warps = warps;
    char sym[256], err[512];
    cg_cuda_mlp_symbol(&m, sym, sizeof sym);
    char *src = cg_cuda_mlp_source(&m, err, sizeof err);
    if (!src) fprintf(stderr, "%s\n", err);
    assert_non_null(src);
    void *fn = kernel(src, sym);
    free(src);
    uint64_t dx = upload(x, (size_t)T * D * 4), doff = upload(off, sizeof off), dperm = upload(perm, (size_t)T * K * 4),
             dgw = upload(gw, (size_t)T * K * 4), dwu = upload(wu, nu * esz), dwd = upload(wd, nd * esz),
             dy = upload(y, (size_t)T * D * 4);
    long long TT = T;
    void *args[] = {&TT, &dx, &doff, &dperm, &dgw, &dwu, &dwd, &dy};
    unsigned g[3], b[3];
    size_t smem;
    cg_cuda_mlp_launch(&m, T, g, b, &smem);
    assert_true(g[0] == (unsigned)((I + rows - 1) / rows) && g[1] == (unsigned)(T * K));
    assert_true(b[0] == 32u * (unsigned)warps);
    assert_true(smem == (size_t)D * (size_t)rows * 2);
    launch(fn, g, b, smem, args);
    download(y, dy, (size_t)T * D * 4);
    double ed = rel_err(y, want, (size_t)T * D);
    printf("%s T=%lld (%lld FFN picks): rel err %.3g (tol 1e-4)\n", sym, (long long)T, (long long)off[E], ed);
    assert_true(ed <= 1e-4);
    uint64_t bufs[] = {dx, doff, dperm, dgw, dwu, dwd, dy};
    for (size_t i = 0; i < MOE_ARRAY_LEN(bufs); i++) cg_cuda_free(drv, bufs[i]);
    free(ids), free(perm), free(w), free(gw), free(x), free(y), free(wu), free(wd), free(want), free(h);
}

static void test_mlp(void **state)
{
    (void)state;
    if (!drv) skip();
    /* the rule's shape (32 rows, 8 warps) at the 0.6B's D and I; then a last block of 8 of 32 rows
     * (I = 72) and D = 200 (a lane's k loop one batch short: 200 of 256), 3 warps over 16 and 64 rows
     * (rows a warp unequal), 8 rows (a lane a row of the slice), f16, several tokens */
    mlp_case(DT_BF16, 1, 768, 2048, 32, 8);
    mlp_case(DT_BF16, 1, 200, 72, 32, 8);
    mlp_case(DT_F16, 3, 200, 72, 16, 3);
    mlp_case(DT_BF16, 2, 520, 136, 64, 3);
    mlp_case(DT_BF16, 3, 64, 32, 8, 1);
    /* out of range: f32 weights, rows 24, d not a multiple of 8 */
    char err[512];
    CgCudaMlp bad[3] = {cg_cuda_mlp_rule(DT_BF16, 4, 2, 64, 32), cg_cuda_mlp_rule(DT_BF16, 4, 2, 64, 32),
                        cg_cuda_mlp_rule(DT_BF16, 4, 2, 64, 32)};
    bad[0].wdtype = DT_F32, bad[1].rows = 24, bad[2].d = 60;
    for (int q = 0; q < 3; q++) {
        char *src = cg_cuda_mlp_source(&bad[q], err, sizeof err);
        assert_null(src);
        printf("refused: %s\n", err);
    }
    assert_int_equal(cg_cuda_mlp_rule(DT_F32, 4, 2, 64, 32).rows, 0);
    assert_int_equal(cg_cuda_mlp_rule(DT_BF16, 16, 2, 1536, 4096).rows, 32);
    assert_int_equal(cg_cuda_mlp_rule(DT_BF16, 8, 2, 4096, 14336).rows, 0); /* (Mixtral: 128 KB a 16-row slice) */
}

/* The queries' and keys' RoPE in one launch (ROPE with kv_heads): GQA (8 query heads, 2 key heads)
 * and equal shapes with the keys' output in the queries' buffer (the executor's exact alias), against
 * the CPU's formula in f64 (1e-6 relative). */
static void test_rope_pair(void **state)
{
    (void)state;
    if (!drv) skip();
    enum { T = 3, HD = 12 };
    const double theta = 10000.0;
    moe_rng r;
    rng_seed(&r, 31);
    for (int alias = 0; alias < 2; alias++) {
        int H = alias ? 4 : 8, KVH = alias ? 4 : 2, qc = H * HD, kc = KVH * HD;
        float *x = xmalloc((size_t)(T * qc) * 4), *x2 = xmalloc((size_t)(T * kc) * 4), *o = xmalloc((size_t)(T * qc) * 4),
              *o2 = xmalloc((size_t)(T * kc) * 4);
        double *want = xmalloc((size_t)(T * qc) * 8), *want2 = xmalloc((size_t)(T * kc) * 8);
        int32_t pos[T] = {0, 7, 300};
        for (int i = 0; i < T * qc; i++) x[i] = (float)(rng_uniform(&r) * 2 - 1);
        for (int i = 0; i < T * kc; i++) x2[i] = (float)(rng_uniform(&r) * 2 - 1);
        for (int q = 0; q < 2; q++) {
            const float *in = q ? x2 : x;
            double *w = q ? want2 : want;
            int heads = q ? KVH : H;
            for (int t = 0; t < T; t++)
                for (int h = 0; h < heads; h++)
                    for (int j = 0; j < HD / 2; j++) {
                        double ang = pos[t] * pow(theta, -2.0 * j / HD), c = (float)cos(ang), sn = (float)sin(ang);
                        long long b0 = (long long)t * heads * HD + h * HD;
                        w[b0 + j] = in[b0 + j] * c - in[b0 + j + HD / 2] * sn;
                        w[b0 + j + HD / 2] = in[b0 + j + HD / 2] * c + in[b0 + j] * sn;
                    }
        }
        CgOpDesc d = {.kind = CG_OP_ROPE, .cols = qc, .heads = H, .kv_heads = KVH, .head_dim = HD, .theta = theta};
        char sym[600], err[256];
        cg_cuda_op_symbol(&d, sym, sizeof sym);
        char *src = cg_cuda_op_source(&d, err, sizeof err);
        if (!src) fprintf(stderr, "%s\n", err);
        assert_non_null(src);
        void *fn = kernel(src, sym);
        uint64_t dx = upload(x, (size_t)(T * qc) * 4), dx2 = upload(x2, (size_t)(T * kc) * 4), dp = upload(pos, sizeof pos),
                 dout = upload(NULL, (size_t)(T * qc) * 4), dout2 = alias ? dx : upload(NULL, (size_t)(T * kc) * 4);
        long long TT = T;
        void *args[] = {&TT, &dx, &dp, &dout, &dx2, &dout2};
        unsigned g[3], b[3];
        size_t smem;
        cg_cuda_op_launch(&d, T, g, b, &smem);
        launch(fn, g, b, smem, args);
        download(o, dout, (size_t)(T * qc) * 4), download(o2, dout2, (size_t)(T * kc) * 4);
        double e = rel_err(o, want, (size_t)(T * qc)), e2 = rel_err(o2, want2, (size_t)(T * kc));
        printf("rope pair: %d query heads, %d key heads%s: rel err %.3g, %.3g\n", H, KVH,
               alias ? ", keys' output over the queries' input" : "", e, e2);
        assert_true(e <= 1e-6 && e2 <= 1e-6);
        cg_cuda_free(drv, dx), cg_cuda_free(drv, dx2), cg_cuda_free(drv, dp), cg_cuda_free(drv, dout);
        if (!alias) cg_cuda_free(drv, dout2);
        free(src), free(x), free(x2), free(o), free(o2), free(want), free(want2);
    }
}

/* Dense layers (LINEAR) on the GEMV against f64: the general form and the decode form (one token a
 * row of blocks); one matrix, or two or three of one input in one launch (CgCudaGemm.seg: the
 * attention's q, k, v), each output its own buffer and width. */
static void linear_case(moe_rng *r, int64_t T, int64_t K, moe_dtype dt, const int64_t rows[3])
{
    int64_t N = rows[0] + rows[1] + rows[2];
    int nm = rows[2] ? 3 : rows[1] ? 2 : 1;
    float *x = xmalloc((size_t)(T * K) * 4), *got = xmalloc((size_t)(T * N) * 4);
    void *w[3];
    double *want[3];
    uint64_t dw[3] = {0}, dout[3] = {0};
    for (int64_t i = 0; i < T * K; i++) x[i] = (float)(rng_uniform(r) * 2 - 1);
    for (int m = 0; m < nm; m++) {
        w[m] = xmalloc((size_t)(rows[m] * K) * dtype_size(dt));
        want[m] = xcalloc((size_t)(T * rows[m]), 8);
        for (int64_t i = 0; i < rows[m] * K; i++) dtype_store(dt, w[m], (size_t)i, rng_uniform(r) - 0.5);
        for (int64_t t = 0; t < T; t++)
            for (int64_t n = 0; n < rows[m]; n++)
                for (int64_t c = 0; c < K; c++)
                    want[m][t * rows[m] + n] += (double)x[t * K + c] * dtype_load(dt, w[m], (size_t)(n * K + c));
        dw[m] = upload(w[m], (size_t)(rows[m] * K) * dtype_size(dt)), dout[m] = upload(NULL, (size_t)(T * rows[m]) * 4);
    }
    CgCudaGemm gen = cg_cuda_gemm_default(CG_CUDA_GEMM_LINEAR, CG_CUDA_PATH_GEMV, dt, 1, 1, N, K);
    if (nm > 1) gen.seg[0] = rows[0], gen.seg[1] = nm == 3 ? rows[1] : 0;
    CgCudaGemm forms[2] = {gen, cg_cuda_gemm_decode(&gen)};
    uint64_t dx = upload(x, (size_t)(T * K) * 4);
    for (int f = 0; f < 2; f++) {
        char sym[256], err[256], e[512];
        cg_cuda_gemm_symbol(&forms[f], sym, sizeof sym);
        char *src = cg_cuda_gemm_source(&forms[f], err, sizeof err);
        if (!src) fprintf(stderr, "%s\n", err);
        assert_non_null(src);
        void *fn = kernel(src, sym);
        for (int64_t i = 0; i < T * N; i++) got[i] = NAN; /* poison: unwritten elements show */
        for (int m = 0; m < nm; m++) assert_true(cg_cuda_upload(drv, dout[m], got, (size_t)(T * rows[m]) * 4, e, sizeof e));
        long long TT = T;
        void *args[] = {&TT, &dx, &dw[0], &dout[0], &dw[1], &dout[1], &dw[2], &dout[2]};
        unsigned g[3], b[3];
        size_t smem;
        cg_cuda_gemm_launch(&forms[f], T, g, b, &smem);
        launch(fn, g, b, smem, args);
        double worst = 0;
        for (int m = 0; m < nm; m++) {
            download(got, dout[m], (size_t)(T * rows[m]) * 4);
            worst = fmax(worst, rel_err(got, want[m], (size_t)(T * rows[m])));
        }
        printf("linear gemv%s %s T=%lld K=%lld, %d matri%s (%lld, %lld, %lld rows): grid %ux%u, rel err %.3g\n",
               f ? " (decode)" : "", dtype_name(dt), (long long)T, (long long)K, nm, nm > 1 ? "ces of one input" : "x",
               (long long)rows[0], (long long)rows[1], (long long)rows[2], g[0], g[1], worst);
        assert_true(worst <= 1e-5);
        free(src);
    }
    cg_cuda_free(drv, dx);
    for (int m = 0; m < nm; m++) cg_cuda_free(drv, dw[m]), cg_cuda_free(drv, dout[m]), free(w[m]), free(want[m]);
    free(x), free(got);
}

static void test_linear_gemv(void **state)
{
    (void)state;
    if (!drv) skip();
    moe_rng r;
    rng_seed(&r, 23);
    for (int q = 0; q < 8; q++) /* T 1 and 5, k with and without a scalar tail, f32 and bf16 */
        linear_case(&r, q & 1 ? 5 : 1, q & 2 ? 70 : 72, q & 4 ? DT_BF16 : DT_F32, (const int64_t[3]){40, 0, 0});
    for (int q = 0; q < 4; q++) /* two and three matrices of one input */
        linear_case(&r, q & 1 ? 5 : 1, 72, DT_BF16, (const int64_t[3]){40, 16, q & 2 ? 24 : 0});
}

/* Attention against an f64 reference, both kernels: the one-block-per-query form (its keys split
 * across blocks or not) and the tiled prefill form (several blocks, the last partial; queries at
 * positions P0.. over a cache that holds earlier keys; GQA; head sizes that are not multiples of 32,
 * and above 128: smaller key tiles). */
static void attention_case(int64_t T, int H, int KVH, int HD, int P0)
{
    moe_rng r;
    rng_seed(&r, 5 + (uint64_t)HD);
    int64_t P = P0 + T, qc = (int64_t)H * HD, kvc = (int64_t)KVH * HD;
    float *q = xmalloc((size_t)(T * qc) * 4), *kc = xmalloc((size_t)(P * kvc) * 4), *vc = xmalloc((size_t)(P * kvc) * 4);
    float *got = xmalloc((size_t)(T * qc) * 4);
    double *want = xcalloc((size_t)(T * qc), 8), *sc = xmalloc((size_t)P * 8);
    int32_t *pos = xmalloc((size_t)T * 4);
    /* with head_dim a multiple of 16 the tensor-core forms run too: inputs that bf16 (and f16) hold
     * exactly, so that only their P's rounding to 16 bits departs from the f64 reference */
    bool tc = HD % 16 == 0 && HD <= 128;
    for (int64_t i = 0; i < T * qc; i++) q[i] = (float)(rng_uniform(&r) * 2 - 1);
    for (int64_t i = 0; i < P * kvc; i++) kc[i] = (float)(rng_uniform(&r) * 2 - 1), vc[i] = (float)(rng_uniform(&r) * 2 - 1);
    for (int64_t i = 0; tc && i < T * qc; i++) q[i] = (float)dtype_round(DT_BF16, q[i]);
    for (int64_t i = 0; tc && i < P * kvc; i++) kc[i] = (float)dtype_round(DT_BF16, kc[i]), vc[i] = (float)dtype_round(DT_BF16, vc[i]);
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(P0 + t);
    for (int64_t t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            int kh = h / (H / KVH);
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j <= pos[t]; j++) {
                double dot = 0;
                for (int d = 0; d < HD; d++) dot += (double)q[t * qc + h * HD + d] * kc[j * kvc + kh * HD + d];
                sc[j] = dot / sqrt((double)HD), mx = fmax(mx, sc[j]);
            }
            for (int64_t j = 0; j <= pos[t]; j++) sc[j] = exp(sc[j] - mx), sum += sc[j];
            for (int64_t j = 0; j <= pos[t]; j++)
                for (int d = 0; d < HD; d++) want[t * qc + h * HD + d] += sc[j] / sum * vc[j * kvc + kh * HD + d];
        }
    CgOpDesc d = {.kind = CG_OP_ATTENTION, .cols = qc, .heads = H, .kv_heads = KVH, .head_dim = HD};
    uint64_t dq = upload(q, (size_t)(T * qc) * 4), dk = upload(kc, (size_t)(P * kvc) * 4),
             dv = upload(vc, (size_t)(P * kvc) * 4), dp = upload(pos, (size_t)T * 4), dout = upload(NULL, (size_t)(T * qc) * 4);
    /* the per-query kernel's key splits: partial results and arrival counts (zero between launches) */
    size_t rows = (size_t)(T * H), part_n = rows * CG_CUDA_ATTN_SPLIT_MAX * (size_t)(HD + 2);
    uint32_t *cnt = xcalloc(rows, 4);
    uint64_t dpart = upload(NULL, part_n * 4), dcnt = upload(cnt, rows * 4);
    long long TT = T;
    /* the caches of 16-bit models (bf16, f16: d16[0], d16[1]), from the same (16-bit exact) values */
    CgOpDesc d16[2] = {d, d};
    d16[0].wdtype = DT_BF16, d16[1].wdtype = DT_F16;
    uint16_t *h16[2][2] = {{NULL, NULL}, {NULL, NULL}}; /* [dtype][k, v] */
    uint64_t c16[2][2] = {{0, 0}, {0, 0}};
    for (int x = 0; tc && x < 2; x++)
        for (int kv = 0; kv < 2; kv++) {
            h16[x][kv] = xmalloc((size_t)(P * kvc) * 2);
            for (int64_t i = 0; i < P * kvc; i++) dtype_store(d16[x].wdtype, h16[x][kv], (size_t)i, (kv ? vc : kc)[i]);
            c16[x][kv] = upload(h16[x][kv], (size_t)(P * kvc) * 2);
        }
    /* f32: the rule's two forms, then the tuner's other shapes: 1 and 8 warps a query, keys in 1 to 32
     * splits; tiled with 1 to 32 threads a query, several key tiles and the last partial. 16-bit (ds
     * 1, 2): the per-query and tiled forms on their caches, the tensor-core forms (the rule's first) */
    struct { CgCudaAttnForm f; int ds; } forms[32];
    int n_forms = 0;
    const CgCudaAttnForm f32_forms[] = {cg_cuda_attention_rule(&d, 1), cg_cuda_attention_rule(&d, CG_CUDA_ATTN_TILED_MIN_T),
                                        {1, 128, 0, 0}, {1, 32, 3, 0}, {1, 256, 32, 0}, {32, 8, 16, 0}, {16, 2, 8, 0},
                                        {8, 32, 0, 0}, {128, 1, 4, 0}};
    for (size_t k = 0; k < MOE_ARRAY_LEN(f32_forms); k++) forms[n_forms].f = f32_forms[k], forms[n_forms++].ds = 0;
    if (H / KVH > 1) { /* GQA: query heads a block other than the rule's: one (MOEPPC_CUDA_ATTN_GQ=0), two */
        forms[n_forms].f = (CgCudaAttnForm){1, 128, 0, 1}, forms[n_forms++].ds = tc;
        if (H / KVH % 2 == 0) forms[n_forms].f = (CgCudaAttnForm){1, 128, 8, 2}, forms[n_forms++].ds = 0;
    }
    for (int x = 0; tc && x < 2; x++) {
        CgCudaAttnForm rule_tc = cg_cuda_attention_rule(&d16[x], CG_CUDA_ATTN_TILED_MIN_T);
        assert_int_equal(rule_tc.tpq, 0); /* the rule's prefill form at 16 bits: tensor cores */
        const CgCudaAttnForm f16_forms[] = {cg_cuda_attention_rule(&d16[x], 1), {1, 64, 0, 0}, {32, 8, 16, 0}, rule_tc,
                                            x ? (CgCudaAttnForm){32, 0, HD <= 96 ? 48 : 16, 0}
                                              : (CgCudaAttnForm){16, 0, 16, 0},
                                            {128, 0, 32, 0}};
        for (size_t k = 0; k < MOE_ARRAY_LEN(f16_forms); k++) forms[n_forms].f = f16_forms[k], forms[n_forms++].ds = 1 + x;
    }
    for (int k = 0; k < n_forms; k++) {
        const CgCudaAttnForm *f = &forms[k].f;
        int ds = forms[k].ds;
        const CgOpDesc *dd = ds ? &d16[ds - 1] : &d;
        uint64_t kcache = ds ? c16[ds - 1][0] : dk, vcache = ds ? c16[ds - 1][1] : dv;
        size_t es = ds ? 2 : 4; /* a cache element's bytes */
        char sym[600], err[256];
        cg_cuda_attention_symbol(dd, f, sym, sizeof sym);
        char *src = cg_cuda_attention_source(dd, f, err, sizeof err);
        if (!src) fprintf(stderr, "%s\n", err);
        assert_non_null(src);
        void *fn = kernel(src, sym);
        unsigned g[3], b[3];
        cg_cuda_attention_launch(dd, f, T, g, b);
        char e[512];
        for (int64_t i = 0; i < T * qc; i++) got[i] = NAN; /* poison: unwritten elements show */
        assert_true(cg_cuda_upload(drv, dout, got, (size_t)(T * qc) * 4, e, sizeof e));
        uint64_t none = 0;
        void *args[] = {&TT, &dq, &kcache, &vcache, &dp, &dout, &none, &none, &dpart, &dcnt};
        launch(fn, g, b, 0, args);
        download(got, dout, (size_t)(T * qc) * 4);
        double re = rel_err(got, want, (size_t)(T * qc));
        /* tensor cores round P to 16 bits: 2^-9 (bf16), 2^-12 (f16) relative a weight, averaging out;
         * the other forms see the 16-bit caches' values exactly */
        double tol = f->tpq ? 1e-5 : ds == 1 ? 4e-3 : 5e-4;
        printf("attention %dx%d/kv%d/g%d, %s caches, T=%lld H=%d KVH=%d HD=%d from position %d: grid (%u, %u, %u), rel "
               "err %.3g (tolerance %.0e)\n", f->bq, f->tpq, f->bkv, f->gq, dtype_name(dd->wdtype), (long long)T, H,
               KVH, HD, P0, g[0], g[1], g[2], re, tol);
        assert_true(re <= tol);
        download(cnt, dcnt, rows * 4); /* every split's count back to zero */
        for (size_t x = 0; x < rows; x++) assert_int_equal(cnt[x], 0);
        if (f->bq == 1 && f->bkv > 1) { /* no room for the splits (part NULL): one block a query and head */
            for (int64_t i = 0; i < T * qc; i++) got[i] = NAN;
            assert_true(cg_cuda_upload(drv, dout, got, (size_t)(T * qc) * 4, e, sizeof e));
            unsigned g1[3] = {g[0], g[1], 1};
            void *nargs[] = {&TT, &dq, &kcache, &vcache, &dp, &dout, &none, &none, &none, &none};
            launch(fn, g1, b, 0, nargs);
            download(got, dout, (size_t)(T * qc) * 4);
            assert_true(rel_err(got, want, (size_t)(T * qc)) <= 1e-5);
        }
        if (T == 1 && f->bq == 1) { /* a decode step: the new key and value from knew/vnew (f32), stored by
                                       the kernel in the cache's type */
            unsigned char *row = xmalloc((size_t)kvc * es), *kx = xmalloc((size_t)kvc * es), *vx = xmalloc((size_t)kvc * es);
            memset(row, 0xff, (size_t)kvc * es); /* NaN in every type */
            for (int64_t i = 0; i < T * qc; i++) got[i] = NAN;
            uint64_t kn = upload(kc + P0 * kvc, (size_t)kvc * 4), vn = upload(vc + P0 * kvc, (size_t)kvc * 4);
            uint64_t at = (uint64_t)(P0 * kvc) * es;
            assert_true(cg_cuda_upload(drv, kcache + at, row, (size_t)kvc * es, e, sizeof e) &&
                        cg_cuda_upload(drv, vcache + at, row, (size_t)kvc * es, e, sizeof e) &&
                        cg_cuda_upload(drv, dout, got, (size_t)(T * qc) * 4, e, sizeof e));
            void *sargs[] = {&TT, &dq, &kcache, &vcache, &dp, &dout, &kn, &vn, &dpart, &dcnt};
            launch(fn, g, b, 0, sargs);
            download(got, dout, (size_t)(T * qc) * 4);
            download(kx, kcache + at, (size_t)kvc * es), download(vx, vcache + at, (size_t)kvc * es);
            double rs = rel_err(got, want, (size_t)(T * qc));
            printf("  the same as a decode step, key and value given (the cache row poisoned): rel err %.3g, row stored\n", rs);
            assert_true(rs <= 1e-5);
            assert_memory_equal(kx, ds ? (const void *)(h16[ds - 1][0] + P0 * kvc) : (const void *)(kc + P0 * kvc), (size_t)kvc * es);
            assert_memory_equal(vx, ds ? (const void *)(h16[ds - 1][1] + P0 * kvc) : (const void *)(vc + P0 * kvc), (size_t)kvc * es);
            cg_cuda_free(drv, kn), cg_cuda_free(drv, vn);
            free(row), free(kx), free(vx);
        }
        free(src);
    }
    for (int x = 0; tc && x < 2; x++)
        for (int kv = 0; kv < 2; kv++) cg_cuda_free(drv, c16[x][kv]), free(h16[x][kv]);
    uint64_t bufs[] = {dq, dk, dv, dp, dout, dpart, dcnt};
    for (size_t i = 0; i < MOE_ARRAY_LEN(bufs); i++) cg_cuda_free(drv, bufs[i]);
    free(q), free(kc), free(vc), free(got), free(want), free(sc), free(pos), free(cnt);
}

static void test_attention(void **state)
{
    (void)state;
    if (!drv) skip();
    attention_case(150, 4, 2, 64, 0);
    attention_case(1, 4, 2, 64, 45); /* decode steps: the per-query forms also with the new row given */
    attention_case(1, 3, 1, 36, 0);
    attention_case(70, 2, 1, 36, 45);
    attention_case(40, 2, 2, 130, 3);
    /* long contexts: keys in splits, as many as fit (at least CG_CUDA_ATTN_SPLIT_MIN_KEYS keys each),
     * merged by the last to finish; queries of one launch with different split counts */
    attention_case(1, 4, 2, 64, 1000);
    attention_case(1, 2, 1, 36, 2500);
    attention_case(5, 4, 4, 130, 300);
    /* the tensor-core forms' head sizes: 7B's 96 (GQA, 3 query heads a KV head), 128 and the tiny 16 */
    attention_case(100, 6, 2, 96, 37);
    attention_case(1, 6, 2, 96, 300); /* the 7B's decode: 4 dimensions a lane on 24 lanes, keys split */
    attention_case(70, 2, 2, 128, 200);
    attention_case(50, 4, 4, 16, 10);
    /* GQA groups of 4 and 8 (Mixtral's): the per-query forms take 4 query heads a block
     * (cg_cuda_attention_heads_per_block), each load of a key serving the 4; a group of 8 in two
     * blocks, the first storing the new row; split or not, several queries a launch */
    attention_case(1, 8, 2, 64, 700);
    attention_case(1, 16, 2, 32, 300);
    attention_case(3, 8, 1, 128, 200);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_dispatch), cmocka_unit_test(test_combine), cmocka_unit_test(test_grouped),
                                       cmocka_unit_test(test_grouped_wgmma), cmocka_unit_test(test_mlp),
                                       cmocka_unit_test(test_linear_gemv), cmocka_unit_test(test_rope_pair),
                                       cmocka_unit_test(test_attention)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
