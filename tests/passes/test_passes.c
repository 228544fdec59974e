/* test_passes.c — the optimised IR computes what the dense form computes, and the elision is real:
 * the interpreter counts the FFN multiply-adds the grouped GEMMs actually execute. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/tiny_specs.h"

#include "ir/ir.h"
#include "passes/passes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define T_TOKENS 12

static void load(const char *name, ModelSpec *s) { assert_true(tiny_spec_load(name, s)); }

static IrModule *lowered(const ModelSpec *s, int opt)
{
    IrModule *m = ir_lower_spec(s);
    PassOptions po = {.opt_level = opt, .target = TARGET_CPU};
    Diag d = {stderr, s->name, 0};
    assert_true(passes_run(m, &po, &d));
    return m;
}

static void run(const IrModule *m, const WeightSet *w, eval_precision prec, EvalResult *res)
{
    int32_t ids[T_TOKENS], pos[T_TOKENS];
    for (int i = 0; i < T_TOKENS; i++) ids[i] = (int32_t)((i * 53 + 11) % 256), pos[i] = i;
    RtError err = {{0}};
    bool ok = ir_eval(m, w, ids, pos, T_TOKENS, prec, res, &err);
    if (!ok) fprintf(stderr, "eval: %s\n", err.msg);
    assert_true(ok);
}

static double rel_err(const EvalResult *a, const EvalResult *b)
{
    const EvalTensor *la = eval_output(a, "logits"), *lb = eval_output(b, "logits");
    double num = 0, den = 0;
    for (int64_t j = 0; j < la->type.dims[0] * la->type.dims[1]; j++) {
        num = fmax(num, fabs(la->data[j] - lb->data[j]));
        den = fmax(den, fabs(lb->data[j]));
    }
    return num / den;
}

/* The picks of every MoE layer agree between the two forms (no routing decision changed). */
static void assert_same_routes(const EvalResult *a, const EvalResult *b)
{
    for (int k = 0; k < a->n_outputs; k++) {
        if (!strstr(a->outputs[k].name, ".ids")) continue;
        const EvalTensor *tb = eval_output(b, a->outputs[k].name);
        assert_non_null(tb);
        int64_t n = tb->type.dims[0] * tb->type.dims[1];
        assert_memory_equal(a->outputs[k].data, tb->data, (size_t)n * sizeof(double));
    }
}

static void test_optimised_equals_dense(void **state)
{
    (void)state;
    for (size_t k = 0; k < MOE_ARRAY_LEN(tiny_specs); k++) {
        ModelSpec s;
        load(tiny_specs[k], &s);
        IrModule *dense = lowered(&s, 0), *opt = lowered(&s, 1);
        double tol = s.dtype == DT_F32 ? 1e-5 : 2e-2, worst = 0;
        for (uint64_t seed = 1; seed <= 3; seed++) {
            WeightSet *w;
            RtError err = {{0}};
            assert_true(weights_random(&s, seed, &w, &err));
            for (int p = 0; p < 2; p++) {
                EvalResult a, b;
                run(dense, w, p ? EVAL_F32 : EVAL_F64, &a);
                run(opt, w, p ? EVAL_F32 : EVAL_F64, &b);
                assert_same_routes(&a, &b);
                double e = rel_err(&b, &a);
                worst = fmax(worst, e);
                assert_true(e <= tol);
                ir_eval_result_free(&a);
                ir_eval_result_free(&b);
            }
            weights_close(w);
        }
        printf("%-16s optimised vs dense: worst rel err %.3g (tolerance %g)\n", tiny_specs[k], worst, tol);
        ir_module_free(dense);
        ir_module_free(opt);
    }
}

/* Expected FFN multiply-adds of the grouped GEMMs: 3·D·I per pick of an FFN expert. */
static double ffn_macs_expected(const ModelSpec *s, const EvalResult *r)
{
    double picks = 0;
    for (int k = 0; k < r->n_outputs; k++) {
        if (!strstr(r->outputs[k].name, ".ids")) continue;
        const EvalTensor *t = &r->outputs[k];
        for (int64_t j = 0; j < t->type.dims[0] * t->type.dims[1]; j++) picks += t->data[j] < (double)s->n_ffn;
    }
    return picks * 3.0 * (double)s->hidden * (double)s->ffn_intermediate;
}

/* Copies of random weights with routing forced onto the zero-computation experts: every token gets
 * the same embedding (positive), attention adds nothing (Wo = 0), the router's first layer sees only
 * Σx > 0 through row 0 (tanh → ≈ 1) and W2's column 0 ranks the zero and copy experts first. */
static WeightSet *skewed_weights(const ModelSpec *s, const char *dir)
{
    WeightSet *w;
    RtError err = {{0}};
    assert_true(weights_random(s, 5, &w, &err));
    int n = weights_count(w);
    Tensor *t = xcalloc((size_t)n, sizeof *t);
    int64_t E = spec_n_experts(s);
    for (int k = 0; k < n; k++) {
        t[k] = *weights_at(w, k);
        void *data = xmalloc(t[k].nbytes);
        memcpy(data, weights_data(w, weights_at(w, k), &err), t[k].nbytes); /* (made when read) */
        t[k].data = data;
        size_t numel = t[k].nbytes / 4;
        float *f = data;
        const char *name = t[k].name;
        if (strstr(name, "embed_tokens")) for (size_t j = 0; j < numel; j++) f[j] = 0.5f;
        if (strstr(name, "o_proj") || strstr(name, "gate_map")) memset(data, 0, t[k].nbytes);
        if (strstr(name, "gate.wg.0")) for (size_t j = 0; j < numel; j++) f[j] = j < (size_t)s->hidden ? 1.0f : 0.0f;
        if (strstr(name, "gate.wg.2")) {
            int64_t H = t[k].shape[1];
            memset(data, 0, t[k].nbytes);
            for (int64_t e = 0; e < E; e++) f[e * H] = e >= s->n_ffn ? (float)(e - s->n_ffn + 1) : -5.0f;
        }
    }
    char path[256];
    snprintf(path, sizeof path, "%s/skewed.safetensors", dir);
    assert_true(safetensors_write(path, t, n, &err));
    for (int k = 0; k < n; k++) free((void *)t[k].data);
    free(t);
    weights_close(w);
    WeightSet *out;
    assert_true(weights_open(path, &out, &err));
    unlink(path);
    return out;
}

static void test_routing_skew_removes_ffn_work(void **state)
{
    (void)state;
    ModelSpec s;
    load("tiny-moepp", &s);
    IrModule *dense = lowered(&s, 0), *opt = lowered(&s, 1);
    WeightSet *w;
    RtError err = {{0}};
    assert_true(weights_random(&s, 5, &w, &err));
    EvalResult r, rd;
    run(opt, w, EVAL_F64, &r);
    run(dense, w, EVAL_F64, &rd);
    double uniform = r.macs_grouped;
    printf("random routing: %.0f FFN multiply-adds in grouped GEMMs (dense form: %.0f in all linears)\n", uniform,
           rd.macs_linear);
    assert_true(uniform > 0 && uniform == ffn_macs_expected(&s, &r));
    ir_eval_result_free(&r);
    ir_eval_result_free(&rd);
    weights_close(w);

    char dir[] = "/tmp/moeppc-skewXXXXXX";
    assert_non_null(mkdtemp(dir));
    WeightSet *sk = skewed_weights(&s, dir);
    run(opt, sk, EVAL_F64, &r);
    run(dense, sk, EVAL_F64, &rd);
    printf("skewed routing: %.0f FFN multiply-adds in grouped GEMMs; logits rel err vs dense %.3g\n", r.macs_grouped,
           rel_err(&r, &rd));
    assert_true(r.macs_grouped == 0.0 && ffn_macs_expected(&s, &r) == 0.0); /* every group empty */
    assert_true(rel_err(&r, &rd) <= 1e-5);
    ir_eval_result_free(&r);
    ir_eval_result_free(&rd);
    weights_close(sk);
    rmdir(dir);
    ir_module_free(dense);
    ir_module_free(opt);
}

static void test_plan_check_catches_overlap(void **state)
{
    (void)state;
    ModelSpec s;
    load("tiny-moepp", &s);
    IrModule *m = lowered(&s, 1);
    char why[256];
    const IrValue *where;
    assert_true(m->planned && ir_plan_check(m, why, sizeof why, &where));
    assert_true(plan_arena_bytes(m, 512) < plan_naive_bytes(m, 512));
    /* move the attention output onto q, which attention still reads */
    IrValue *q = ir_value_find(m, "l0.q_rope"), *a = ir_value_find(m, "l0.attn");
    assert_non_null(q);
    assert_non_null(a);
    a->off_t = q->off_t;
    a->off_c = q->off_c;
    assert_false(ir_plan_check(m, why, sizeof why, &where));
    assert_non_null(strstr(why, "overlap"));
    assert_true(where == a || where == q);
    ir_module_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_optimised_equals_dense),
        cmocka_unit_test(test_routing_skew_removes_ffn_work),
        cmocka_unit_test(test_plan_check_catches_overlap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
