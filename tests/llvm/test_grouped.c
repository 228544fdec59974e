/* test_grouped.c — the MoE drivers against a naive f64 reference on ragged groups (sizes 0, 1, 5, 8,
 * 13: empty, single, below/at/above MR): SwiGLU up-projection, then the gate-weighted scatter-add
 * down-projection fed with the kernel's own h (so each epilogue is judged on its own); and the two in
 * one call (cg_moe_ffn, h packed by the up-projection's epilogue) bit for bit as the two. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/llvm/llvm_test_util.h"

enum { T = 14, G = 6, D = 67 };
static int64_t I = 100; /* h's columns (101 in test_ffn_odd_inter: a last bf16 pair of one) */
static const int SIZES[G] = {0, 1, 5, 8, 13, 0};

typedef struct Problem {
    int64_t off[G + 1];
    int32_t perm[T * G];
    float gate_w[T * G];
    float x[T * D];
    void *w_up[G], *w_down[G]; /* [2I, D] and [D, I] in the tested dtype */
    int64_t n_slots;
} Problem;

/* Group g takes the first SIZES[g] tokens of a fresh shuffle: distinct tokens within a group. */
static void make_problem(Problem *p, moe_dtype dt, moe_rng *r) {
    p->off[0] = 0;
    for (int g = 0; g < G; g++) {
        int32_t order[T];
        for (int t = 0; t < T; t++) order[t] = t;
        for (int t = T - 1; t > 0; t--) {
            int u = (int)(rng_next(r) % (uint64_t)(t + 1));
            int32_t tmp = order[t];
            order[t] = order[u], order[u] = tmp;
        }
        for (int s = 0; s < SIZES[g]; s++) p->perm[p->off[g] + s] = order[s];
        p->off[g + 1] = p->off[g] + SIZES[g];
    }
    p->n_slots = p->off[G];
    tu_random(r, p->gate_w, (size_t)p->n_slots);
    tu_random(r, p->x, T * D);
    float *tmp = xmalloc(sizeof(float) * 2 * I * D);
    for (int g = 0; g < G; g++) {
        tu_random(r, tmp, 2 * I * D);
        p->w_up[g] = tu_to_dtype(tmp, 2 * I * D, dt);
        tu_random(r, tmp, D * I);
        p->w_down[g] = tu_to_dtype(tmp, D * I, dt);
    }
    free(tmp);
}

/* dot(x, W row n) in f64 and sum of |terms|; x rounded to bf16 first for the bf16 dot product. */
static double dot_ref(const float *x, const void *w, moe_dtype dt, int64_t n, int64_t k, bool bf16_x, double *scale) {
    double s = 0.0;
    *scale = 0.0;
    for (int64_t kk = 0; kk < k; kk++) {
        double xk = bf16_x ? bf16_to_f32(f32_to_bf16(x[kk])) : x[kk];
        double t = xk * dtype_load(dt, w, (size_t)(n * k + kk));
        s += t;
        *scale += fabs(t);
    }
    return s;
}

static int check_up(const Problem *p, moe_dtype dt, bool dot, const float *h, const char *label) {
    int bad = 0;
    for (int g = 0; g < G; g++)
        for (int64_t s = p->off[g]; s < p->off[g + 1]; s++)
            for (int j = 0; j < I; j++) {
                double sa, sb, a = dot_ref(p->x + p->perm[s] * D, p->w_up[g], dt, j, D, dot, &sa);
                double b = dot_ref(p->x + p->perm[s] * D, p->w_up[g], dt, I + j, D, dot, &sb);
                double silu = a / (1.0 + exp(-a)), want = silu * b;
                double tol = 2e-5 * (1.1 * sa * fabs(b) + fabs(silu) * sb) + 1e-6 * fabs(want) + 1e-30;
                tu_close(label, (size_t)(s * I + j), h[s * I + j], want, tol, &bad);
            }
    return bad;
}

static int check_down(const Problem *p, moe_dtype dt, bool dot, const float *h, const float *out0,
                      const float *out, const char *label) {
    double want[T * D], scale[T * D];
    for (int i = 0; i < T * D; i++) want[i] = out0[i], scale[i] = fabs(out0[i]) * 1e-2;
    for (int g = 0; g < G; g++)
        for (int64_t s = p->off[g]; s < p->off[g + 1]; s++)
            for (int n = 0; n < D; n++) {
                double sc, y = dot_ref(h + s * I, p->w_down[g], dt, n, I, dot, &sc);
                want[p->perm[s] * D + n] += p->gate_w[s] * y;
                scale[p->perm[s] * D + n] += fabs(p->gate_w[s]) * sc;
            }
    int bad = 0;
    for (int i = 0; i < T * D; i++) tu_close(label, (size_t)i, out[i], want[i], 1e-5 * scale[i] + 1e-30, &bad);
    return bad;
}

/* up_mr: the up-projection's tile rows, if not the down-projection's (0): h's rows then reach DOWN's
 * tiles part of a tile at a time; down_mr: the down-projection's, if not the default's (0), both
 * kernels then 32 columns wide. */
static int run_case_up(cg_isa isa, moe_dtype dt, bool dot, CgPool *pool, bool edges, int up_mr, int down_mr,
                       uint64_t seed) {
    moe_rng r;
    rng_seed(&r, seed);
    Problem *p = xcalloc(1, sizeof *p);
    make_problem(p, dt, &r);
    CgKernelConfig cfg = cg_kernel_config_default(tu_jit(isa), dt);
    cfg.a_bf16 = dot;
    cfg = cg_kernel_form(cg_jit_target(tu_jit(isa)), cfg); /* the executor's (AVX-512: bf16 in k pairs) */
    if (down_mr) cfg.mr = down_mr, cfg.nr = 32;
    const CgKernel *kern = tu_kernel(isa, &cfg);
    CgKernelConfig ucfg = cfg;
    ucfg.mr = up_mr ? up_mr : cfg.mr;
    const CgKernel *ukern = tu_kernel(isa, &ucfg);
    CgPackedB up[G], down[G];
    for (int g = 0; g < G; g++) {
        cg_pack_b_swiglu(&up[g], p->w_up[g], dt, 2 * I, D, cfg.nr, cg_kernel_kpair(&cfg));
        cg_pack_b(&down[g], p->w_down[g], dt, D, I, cfg.nr, cg_kernel_kpair(&cfg));
    }
    CgRouting route = {G, p->off, p->perm, p->gate_w};
    CgBlocking blk = {.kc = 32, .mc = cfg.mr}; /* K blocks and one-tile row blocks: every loop runs */
    CgBlocking ublk = {.kc = 32, .mc = ucfg.mr};
    if (edges) /* a group's last rows on 4-, 2- and 1-row kernels */
        tu_edges(isa, kern, &blk), tu_edges(isa, ukern, &ublk);
    /* both ways on works borrowed from NaN bytes (what a driver leaves unwritten), sized for cg_moe_ffn:
     * the up-projection's, the down-projection's (its pack of h alone in it) and cg_moe_ffn's */
    CgWorkNeed need = {0};
    cg_work_need_ffn(&need, ukern, &ublk, kern, &blk, cg_pool_threads(pool), p->n_slots, G, D, I);
    size_t bytes = cg_work_need_bytes(&need);
    void *mem[3];
    CgWork work[3] = {{0}};
    for (int k = 0; k < 3; k++) {
        mem[k] = aligned_alloc(64, bytes);
        memset(mem[k], 0xff, bytes);
        cg_work_borrow(&work[k], mem[k], &need);
    }
    float *h = xcalloc((size_t)p->n_slots * I + 1, sizeof *h), out0[T * D], out[T * D];
    tu_random(&r, out0, T * D);
    memcpy(out, out0, sizeof out);
    cg_moe_up_swiglu(ukern, &ublk, pool, &work[0], &route, p->x, up, h);
    cg_moe_down_scatter(kern, &blk, pool, &work[1], &route, h, down, out);
    char label[128];
    snprintf(label, sizeof label, "%s threads=%d%s", kern->symbol, cg_pool_threads(pool), edges ? " edges" : "");
    int bad = check_up(p, dt, dot, h, label) + check_down(p, dt, dot, h, out0, out, label);
    if (cg_moe_ffn_packs_h(kern, &blk, I)) {
        /* h's tiles in the work, in a room of the caller's that holds them, and (one too small) in the
         * work again; each as the down-projection's own pack left them, padding included */
        size_t words = cfg.a_bf16 ? (size_t)(I + 1) / 2 : (size_t)I, packed = 0;
        for (int g = 0; g < G; g++) packed += (size_t)((SIZES[g] + cfg.mr - 1) / cfg.mr * cfg.mr) * words;
        float *room = xmalloc((packed + 1) * sizeof *room);
        for (int k = 0; k < 3; k++) {
            float fused[T * D];
            memcpy(fused, out0, sizeof fused);
            memset(room, 0xff, (packed + 1) * sizeof *room);
            cg_moe_ffn(ukern, &ublk, kern, &blk, pool, &work[2], &route, p->x, up, down, fused, k ? room : NULL,
                       k == 1 ? packed + 1 : packed);
            const float *tiles = k == 1 ? room : work[2].h_packed;
            if (memcmp(fused, out, sizeof fused) != 0 || memcmp(tiles, work[1].a_packed, packed * sizeof(float)) != 0) {
                print_error("%s: cg_moe_ffn (h %s) differs from the two calls\n", label,
                            k == 1 ? "in the room" : "in the work");
                bad++;
            }
            memset(work[2].h_packed, 0xff, packed * sizeof(float));
        }
        free(room);
    } else if (!dot && dt == DT_F32) {
        print_error("%s: f32 kernels should take h packed\n", label);
        bad++;
    }
    for (int g = 0; g < G; g++) {
        cg_packed_b_free(&up[g]), cg_packed_b_free(&down[g]);
        free(p->w_up[g]), free(p->w_down[g]);
    }
    for (int k = 0; k < 3; k++) cg_work_free(&work[k]), free(mem[k]);
    free(h), free(p);
    return bad;
}

static int run_case(cg_isa isa, moe_dtype dt, bool dot, CgPool *pool, bool edges, uint64_t seed) {
    return run_case_up(isa, dt, dot, pool, edges, 0, 0, seed);
}

static void test_grouped_all(void **state) {
    static const moe_dtype dts[] = {DT_F32, DT_BF16, DT_F16};
    cg_isa isas[3];
    int n_isa = tu_isas(isas), bad = 0;
    CgPool *pools[2] = {NULL, cg_pool_new(2)};
    for (int i = 0; i < n_isa; i++) {
        setenv("MOEPPC_ISA", cg_isa_name(isas[i]), 1); /* the SwiGLU epilogue's AVX-512, AVX2 or scalar form */
        for (size_t d = 0; d < MOE_ARRAY_LEN(dts); d++)
            for (int pi = 0; pi < 4; pi++)
                bad += run_case(isas[i], dts[d], false, pools[pi % 2], pi >= 2, 7 + d + 10u * (unsigned)i);
    }
    unsetenv("MOEPPC_ISA");
    cg_pool_free(pools[1]);
    assert_int_equal(bad, 0);
}

/* The same on the bf16 dot product (AVX512-BF16 hosts): K = 67 and 100, odd and even, gathered rows,
 * K blocks of 32, one-tile row blocks, padded and on edge kernels, 1 and 2 threads. */
static void test_grouped_bf16_dot(void **state) {
    if (cg_host_isa() < CG_ISA_AVX512 || !cg_jit_target(tu_jit(CG_ISA_AVX512))->has_bf16_dot) skip();
    CgPool *pools[2] = {NULL, cg_pool_new(2)};
    int bad = 0;
    for (int pi = 0; pi < 4; pi++) bad += run_case(CG_ISA_AVX512, DT_BF16, true, pools[pi % 2], pi >= 2, 41u + (unsigned)pi);
    cg_pool_free(pools[1]);
    assert_int_equal(bad, 0);
}

/* cg_moe_ffn with h of an odd width: a bf16 pair's last word has one column (f32, f16 and the dot
 * product; bf16 in k pairs of f32 A pads the row to an even width and does not fuse); and with an
 * up-projection of other tiles than the down-projection's. */
static void test_ffn_odd_inter(void **state) {
    CgPool *pool = cg_pool_new(2);
    bool dot = cg_host_isa() >= CG_ISA_AVX512 && cg_jit_target(tu_jit(CG_ISA_AVX512))->has_bf16_dot;
    int bad = 0;
    I = 101;
    for (int e = 0; e < 2; e++) {
        bad += run_case(cg_host_isa(), DT_F32, false, pool, e, 61u + (unsigned)e);
        bad += run_case(cg_host_isa(), DT_F16, false, pool, e, 63u + (unsigned)e);
        if (dot) bad += run_case(CG_ISA_AVX512, DT_BF16, true, pool, e, 65u + (unsigned)e);
    }
    /* h's rows by 3 at a time into DOWN's tiles of 8, 4, 2, 1; on AVX-512 by 13 into 12 (x 32) */
    for (int e = 0; e < (cg_host_isa() >= CG_ISA_AVX512 ? 4 : 2); e++)
        bad += run_case_up(dot ? CG_ISA_AVX512 : cg_host_isa(), dot ? DT_BF16 : DT_F32, dot, pool, e % 2,
                           e < 2 ? 3 : 13, e < 2 ? 0 : 12, 67u + (unsigned)e);
    I = 100;
    cg_pool_free(pool);
    assert_int_equal(bad, 0);
}

/* No groups, and groups that are all empty: nothing is written (two calls or one cg_moe_ffn). */
static void test_grouped_empty(void **state) {
    CgKernelConfig cfg = cg_kernel_config_default(tu_jit(cg_host_isa()), DT_F32);
    const CgKernel *kern = tu_kernel(cg_host_isa(), &cfg);
    float w[2 * 4 * 3] = {0}, x[3] = {1, 2, 3}, out[3] = {5, 6, 7};
    CgPackedB up, down;
    cg_pack_b_swiglu(&up, w, DT_F32, 8, 3, cfg.nr, false);
    cg_pack_b(&down, w, DT_F32, 3, 4, cfg.nr, false);
    int64_t off[2] = {0, 0};
    CgRouting none = {0, off, NULL, NULL}, empty = {1, off, NULL, NULL};
    CgBlocking blk = cg_blocking_default(kern);
    CgWork work = {0};
    float h[4] = {9, 9, 9, 9};
    cg_moe_up_swiglu(kern, &blk, NULL, &work, &none, x, &up, h);
    cg_moe_up_swiglu(kern, &blk, NULL, &work, &empty, x, &up, h);
    cg_moe_down_scatter(kern, &blk, NULL, &work, &empty, h, &down, out);
    cg_moe_ffn(kern, &blk, kern, &blk, NULL, &work, &none, x, &up, &down, out, NULL, 0);
    cg_moe_ffn(kern, &blk, kern, &blk, NULL, &work, &empty, x, &up, &down, out, NULL, 0);
    assert_true(h[0] == 9 && out[0] == 5 && out[2] == 7);
    cg_work_free(&work);
    cg_packed_b_free(&up), cg_packed_b_free(&down);
}

static int teardown(void **state) {
    tu_jits_free();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_grouped_all), cmocka_unit_test(test_grouped_bf16_dot),
                                       cmocka_unit_test(test_ffn_odd_inter), cmocka_unit_test(test_grouped_empty)};
    return cmocka_run_group_tests(tests, NULL, teardown);
}
