/* test_grouped.c — the MoE drivers against a naive f64 reference on ragged groups (sizes 0, 1, 5, 8,
 * 13: empty, single, below/at/above MR): SwiGLU up-projection, then the gate-weighted scatter-add
 * down-projection fed with the kernel's own h (so each epilogue is judged on its own). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/llvm/llvm_test_util.h"

enum { T = 14, G = 6, D = 67, I = 100 };
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

static int run_case(cg_isa isa, moe_dtype dt, bool dot, CgPool *pool, bool edges, uint64_t seed) {
    moe_rng r;
    rng_seed(&r, seed);
    Problem *p = xcalloc(1, sizeof *p);
    make_problem(p, dt, &r);
    CgKernelConfig cfg = cg_kernel_config_default(tu_jit(isa), dt);
    cfg.a_bf16 = dot;
    cfg = cg_kernel_form(cg_jit_target(tu_jit(isa)), cfg); /* the executor's (AVX-512: bf16 in k pairs) */
    const CgKernel *kern = tu_kernel(isa, &cfg);
    CgPackedB up[G], down[G];
    for (int g = 0; g < G; g++) {
        cg_pack_b_swiglu(&up[g], p->w_up[g], dt, 2 * I, D, cfg.nr, cg_kernel_kpair(&cfg));
        cg_pack_b(&down[g], p->w_down[g], dt, D, I, cfg.nr, cg_kernel_kpair(&cfg));
    }
    CgRouting route = {G, p->off, p->perm, p->gate_w};
    CgBlocking blk = {.kc = 32, .mc = cfg.mr}; /* K blocks and one-tile row blocks: every loop runs */
    if (edges) tu_edges(isa, kern, &blk);      /* a group's last rows on 4-, 2- and 1-row kernels */
    CgWork work = {0};
    float *h = xcalloc((size_t)p->n_slots * I + 1, sizeof *h), out0[T * D], out[T * D];
    tu_random(&r, out0, T * D);
    memcpy(out, out0, sizeof out);
    cg_moe_up_swiglu(kern, &blk, pool, &work, &route, p->x, up, h);
    cg_moe_down_scatter(kern, &blk, pool, &work, &route, h, down, out);
    char label[128];
    snprintf(label, sizeof label, "%s threads=%d%s", kern->symbol, cg_pool_threads(pool), edges ? " edges" : "");
    int bad = check_up(p, dt, dot, h, label) + check_down(p, dt, dot, h, out0, out, label);
    for (int g = 0; g < G; g++) {
        cg_packed_b_free(&up[g]), cg_packed_b_free(&down[g]);
        free(p->w_up[g]), free(p->w_down[g]);
    }
    cg_work_free(&work);
    free(h), free(p);
    return bad;
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

/* No groups, and groups that are all empty: nothing is written. */
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
                                       cmocka_unit_test(test_grouped_empty)};
    return cmocka_run_group_tests(tests, NULL, teardown);
}
