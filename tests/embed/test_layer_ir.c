/* test_layer_ir.c — the one-layer module the embedding library runs (ir_lower_moe_layer), on the CPU
 * executor with a caller workspace and bound inputs, against the interpreter: on the same optimised
 * IR (f64, ≤ 1e-5) and on the layer's dense form (SEMANTICS §4: 1e-4 f32, 2e-2 bf16/f16); routing
 * picks equal except on a near-tie of the reference logits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/tiny_specs.h"

#include "passes/passes.h"
#include "runtime/cpu/cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static CpuKernelSource *ks;

static int setup(void **state)
{
    (void)state;
    RtError err = {{0}};
    ks = cpu_jit_source_new(&err);
    if (!ks) fprintf(stderr, "JIT: %s\n", err.msg);
    return ks ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    cpu_jit_source_free(ks);
    return 0;
}

static IrModule *layer_ir(const ModelSpec *s, int64_t l, bool optimise)
{
    IrModule *m = ir_lower_moe_layer(s, l);
    Diag d = {stderr, s->name, 0};
    assert_true(ir_verify(m, &d));
    PassOptions po = {.opt_level = optimise, .target = TARGET_CPU, .codegen = true};
    assert_true(passes_run(m, &po, &d));
    return m;
}

static double rel_err(const float *a, const double *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t j = 0; j < n; j++) {
        num = fmax(num, fabs((double)a[j] - b[j]));
        den = fmax(den, fabs(b[j]));
    }
    return den > 0 ? num / den : num;
}

static void fill(float *p, int64_t n, uint64_t seed, double scale)
{
    moe_rng r;
    rng_seed(&r, seed);
    for (int64_t j = 0; j < n; j++) p[j] = (float)(scale * (2.0 * rng_uniform(&r) - 1.0));
}

/* Picks equal, or the differing experts' reference logits within 1e-4 of each other (a near-tie). */
static int route_flips(const int32_t *ids, const EvalTensor *ref_ids, const EvalTensor *ref_z, int64_t T, int64_t k,
                       int64_t E)
{
    int hard = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t j = 0; j < k; j++) {
            int64_t a = ids[t * k + j], b = (int64_t)ref_ids->data[t * k + j];
            if (a == b) continue;
            double za = ref_z->data[t * E + a], zb = ref_z->data[t * E + b];
            if (fabs(za - zb) > 1e-4 * fmax(1.0, fabs(zb))) hard++;
        }
    return hard;
}

/* Every tiny spec, its first and last MoE layer, T = 1, 13, 37 on one workspace sized for 37. */
static void test_layer_on_workspace_equals_interpreter(void **state)
{
    (void)state;
    for (size_t k = 0; k < MOE_ARRAY_LEN(tiny_specs); k++) {
        ModelSpec s;
        assert_true(tiny_spec_load(tiny_specs[k], &s));
        int64_t D = s.hidden, E = spec_n_experts(&s), K = s.top_k;
        WeightSet *w;
        RtError err = {{0}};
        assert_true(weights_random(&s, 21, &w, &err));
        double worst_same = 0, worst_dense = 0;
        int64_t layers[2] = {s.moe_every - 1, s.n_layers - 1};
        for (int li = 0; li < 2; li++) {
            int64_t l = layers[li];
            IrModule *m = layer_ir(&s, l, true), *dense = layer_ir(&s, l, false);
            CpuModel *cm = cpu_model_new(m, w, 1, ks, 2, &err);
            assert_non_null(cm);
            size_t bytes = cpu_model_workspace_bytes(cm, 37);
            void *ws = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
            memset(ws, 0xff, bytes); /* nothing may rely on a zeroed workspace */
            cpu_model_set_workspace(cm, ws, 37);
            float *x = xmalloc(37 * (size_t)D * sizeof *x), *r = xmalloc(37 * (size_t)E * sizeof *r);
            for (int64_t T = 1; T <= 37; T += 12) {
                fill(x, T * D, 100 + (uint64_t)T, 3.0);
                fill(r, T * E, 200 + (uint64_t)T, 1.0);
                EvalInput in[2] = {{"x", x}, {"r", r}};
                EvalResult same, ref;
                int n_in = s.gating_residual ? 2 : 1;
                assert_true(ir_eval_inputs(m, w, in, n_in, T, EVAL_F64, &same, &err));
                assert_true(ir_eval_inputs(dense, w, in, n_in, T, EVAL_F64, &ref, &err));
                cpu_model_bind_input(cm, ir_value_find(m, "x"), x);
                if (s.gating_residual) cpu_model_bind_input(cm, ir_value_find(m, "r"), r);
                assert_true(cpu_model_run(cm, NULL, NULL, T, &err));
                const float *y = cpu_model_output(cm, "y", NULL, NULL), *z = cpu_model_output(cm, "residual", NULL, NULL);
                char name[64];
                snprintf(name, sizeof name, "route.%lld.ids", (long long)l);
                const int32_t *ids = cpu_model_output(cm, name, NULL, NULL);
                assert_true(y && z && ids);
                double e_same = fmax(rel_err(y, eval_output(&same, "y")->data, T * D),
                                     rel_err(z, eval_output(&same, "residual")->data, T * E));
                double e_dense = fmax(rel_err(y, eval_output(&ref, "y")->data, T * D),
                                      rel_err(z, eval_output(&ref, "residual")->data, T * E));
                worst_same = fmax(worst_same, e_same);
                worst_dense = fmax(worst_dense, e_dense);
                assert_true(e_same <= 1e-5);
                assert_true(e_dense <= (s.dtype == DT_F32 ? 1e-4 : 2e-2));
                assert_int_equal(route_flips(ids, eval_output(&same, name), eval_output(&same, "residual"), T, K, E), 0);
                ir_eval_result_free(&same);
                ir_eval_result_free(&ref);
            }
            free(x);
            free(r);
            cpu_model_free(cm);
            free(ws);
            ir_module_free(m);
            ir_module_free(dense);
        }
        printf("%-16s layer on a workspace vs interpreter: same IR %.3g, dense form %.3g\n", tiny_specs[k],
               worst_same, worst_dense);
        weights_close(w);
    }
}

/* A workspace sized for T tokens refuses T + 1 with a message (and allocates nothing to cope). */
static void test_workspace_bounds_tokens(void **state)
{
    (void)state;
    ModelSpec s;
    assert_true(tiny_spec_load("tiny-moepp", &s));
    WeightSet *w;
    RtError err = {{0}};
    assert_true(weights_random(&s, 3, &w, &err));
    IrModule *m = layer_ir(&s, 0, true);
    CpuModel *cm = cpu_model_new(m, w, 1, ks, 1, &err);
    assert_non_null(cm);
    assert_true(cpu_model_workspace_bytes(cm, 8) > cpu_model_workspace_bytes(cm, 4));
    size_t bytes = cpu_model_workspace_bytes(cm, 4);
    void *ws = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    cpu_model_set_workspace(cm, ws, 4);
    float x[5 * 64] = {0}, r[5 * 8] = {0};
    cpu_model_bind_input(cm, ir_value_find(m, "x"), x);
    cpu_model_bind_input(cm, ir_value_find(m, "r"), r);
    assert_true(cpu_model_run(cm, NULL, NULL, 4, &err));
    assert_false(cpu_model_run(cm, NULL, NULL, 5, &err));
    assert_non_null(strstr(err.msg, "exceed the workspace"));
    cpu_model_free(cm);
    free(ws);
    ir_module_free(m);
    weights_close(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer_on_workspace_equals_interpreter),
        cmocka_unit_test(test_workspace_bounds_tokens),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
