/* test_eval.c — the interpreter's ops against hand-computed values, and its two precisions against
 * each other on whole tiny models. Inputs reach an op through `embed` of a param table with ids
 * 0..T-1, so every op sees real [T, N] activations read from a real safetensors file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "ir/ir.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    EvalResult res;
    char dir[64];
} Run;

/* Parse `ops` (instructions and outputs) after a header declaring %tab : f32[rows, cols] = "tab" and
 * %x = embed %tab, %ids (so x = the table's rows), then evaluate on T = rows tokens. */
static void run_ops(Run *r, const float *tab, int64_t rows, int64_t cols, const char *ops, eval_precision prec)
{
    char text[4096];
    snprintf(text, sizeof text,
             "module \"t\" {\n  input %%ids : i32[T]\n  input %%pos : i32[T]\n"
             "  param %%tab : f32[%lld, %lld] = \"tab\"\n  %%x : f32[T, %lld] = embed %%tab, %%ids\n%s}\n",
             (long long)rows, (long long)cols, (long long)cols, ops);
    Diag d = {stderr, "test.ir", 0};
    IrModule *m = ir_parse(text, strlen(text), &d);
    assert_non_null(m);
    strcpy(r->dir, "/tmp/moeppc-evalXXXXXX");
    assert_non_null(mkdtemp(r->dir));
    char path[128];
    snprintf(path, sizeof path, "%s/t.safetensors", r->dir);
    Tensor t = {.name = "tab", .dtype = DT_F32, .ndim = 2, .shape = {rows, cols}, .data = tab,
                .nbytes = (size_t)(rows * cols) * 4};
    RtError err = {{0}};
    assert_true(safetensors_write(path, &t, 1, &err));
    WeightSet *w;
    assert_true(weights_open(path, &w, &err));
    int32_t ids[64], pos[64];
    for (int i = 0; i < rows; i++) ids[i] = i, pos[i] = i;
    bool ok = ir_eval(m, w, ids, pos, rows, prec, &r->res, &err);
    if (!ok) fprintf(stderr, "eval: %s\n", err.msg);
    assert_true(ok);
    weights_close(w);
    ir_module_free(m);
    unlink(path);
    rmdir(r->dir);
}

static const double *out(Run *r, const char *name)
{
    const EvalTensor *t = eval_output(&r->res, name);
    assert_non_null(t);
    return t->data;
}

static void test_topk_ties_take_lower_index(void **state)
{
    (void)state;
    const float tab[] = {0.5f, 0.9f, 0.9f, 0.1f, /* tie between 1 and 2 */
                         0.3f, 0.3f, 0.3f, 0.3f};
    Run r;
    run_ops(&r, tab, 2, 4, "  %w : f32[T, 2], %i : i32[T, 2] = topk %x {k = 2}\n  output \"w\" = %w\n"
                           "  output \"i\" = %i\n", EVAL_F64);
    const double *i = out(&r, "i"), *w = out(&r, "w");
    assert_true(i[0] == 1 && i[1] == 2 && i[2] == 0 && i[3] == 1);
    assert_float_equal(w[0], 0.9f, 0);
    ir_eval_result_free(&r.res);
}

/* softmax_topk with expert 3 the zero expert: a zero pick leaves the other pick weight exactly 1, and
 * two zero picks (several zero experts) give weights 0, never NaN. */
static void test_zero_mask_and_renormalise(void **state)
{
    (void)state;
    const float tab[] = {0.1f, 0.2f, 0.3f, 0.9f, /* picks 3 (zero) and 2 */
                         0.1f, 0.2f, 0.8f, 0.9f, /* picks 3 and 2: both zero experts when lo = 2 */
                         0.5f, 0.4f, 0.0f, 0.0f};
    Run r;
    run_ops(&r, tab, 3, 4,
            "  %w : f32[T, 2], %i : i32[T, 2] = topk %x {k = 2}\n"
            "  %m : f32[T, 2] = mask_experts %w, %i {lo = 3, hi = 4}\n"
            "  %n : f32[T, 2] = renorm %m\n"
            "  %m2 : f32[T, 2] = mask_experts %w, %i {lo = 2, hi = 4}\n"
            "  %n2 : f32[T, 2] = renorm %m2\n"
            "  output \"n\" = %n\n  output \"n2\" = %n2\n", EVAL_F64);
    const double *n = out(&r, "n"), *n2 = out(&r, "n2");
    assert_true(n[0] == 0.0 && n[1] == 1.0);
    assert_true(n2[2] == 0.0 && n2[3] == 0.0);
    assert_float_equal(n[4], 0.5 / 0.9, 1e-7);
    ir_eval_result_free(&r.res);
}

static void test_logits_norm_uses_bessel(void **state)
{
    (void)state;
    const float tab[] = {1, 2, 3, 4};
    Run r;
    run_ops(&r, tab, 1, 4, "  %z : f32[T, 4] = logits_norm %x {std = 2.0}\n  output \"z\" = %z\n", EVAL_F64);
    double sd = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3.0); /* n - 1 */
    assert_float_equal(out(&r, "z")[3], 4.0 / (sd / 2.0), 1e-6);
    ir_eval_result_free(&r.res);
}

/* Half-split RoPE on one head of dim 4 at position 2 (the second row): pairs (0, 2) and (1, 3). */
static void test_rope_half_split(void **state)
{
    (void)state;
    const float tab[] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4};
    Run r;
    run_ops(&r, tab, 3, 4, "  %y : f32[T, 4] = rope %x, %pos {heads = 1, theta = 100.0}\n  output \"y\" = %y\n",
            EVAL_F64);
    const double *y = out(&r, "y") + 8;
    double a0 = 2.0, a1 = 2.0 * pow(100.0, -0.5); /* pos · theta^(-2i/hd), i = 0, 1 */
    assert_float_equal(y[0], 1 * cos(a0) - 3 * sin(a0), 1e-6);
    assert_float_equal(y[2], 3 * cos(a0) + 1 * sin(a0), 1e-6);
    assert_float_equal(y[1], 2 * cos(a1) - 4 * sin(a1), 1e-6);
    assert_float_equal(y[3], 4 * cos(a1) + 2 * sin(a1), 1e-6);
    ir_eval_result_free(&r.res);
}

/* Causal attention with GQA: 2 query heads share 1 kv head. Token 0 sees only itself, so its
 * output is v_0 in both heads; token 1 mixes v_0 and v_1 by softmax(q·k/sqrt(hd)). */
static void test_attention_causal_gqa(void **state)
{
    (void)state;
    const float tab[] = {1, 0, 0, 1, 5, 6, /* q (2 heads x 2) | v (1 head x 2); k = q's first head */
                         0, 1, 1, 0, 7, 8};
    Run r;
    run_ops(&r, tab, 2, 6,
            "  %q : f32[T, 4] = slice %x {start = 0, len = 4}\n"
            "  %k : f32[T, 2] = slice %x {start = 0, len = 2}\n"
            "  %v : f32[T, 2] = slice %x {start = 4, len = 2}\n"
            "  %o : f32[T, 4] = attention %q, %k, %v, %pos {heads = 2, kv_heads = 1}\n"
            "  output \"o\" = %o\n", EVAL_F64);
    const double *o = out(&r, "o");
    assert_true(o[0] == 5 && o[1] == 6 && o[2] == 5 && o[3] == 6);
    /* token 1, head 0: q = (0, 1); k0 = (1, 0), k1 = (0, 1): scores 0 and 1/sqrt(2) */
    double p1 = 1.0 / (1.0 + exp(-1.0 / sqrt(2.0)));
    assert_float_equal(o[4], (1 - p1) * 5 + p1 * 7, 1e-6);
    ir_eval_result_free(&r.res);
}

/* Constant expert: α = softmax(a), out = α0·u + α1·v; gate_accum adds G[:, e]·o to y. */
static void test_const_mix_and_gate_accum(void **state)
{
    (void)state;
    const float tab[] = {1, 2, 0, 0.5f, 0.25f, 0.75f};
    Run r;
    run_ops(&r, tab, 1, 6,
            "  %u : f32[T, 2] = slice %x {start = 0, len = 2}\n"
            "  %a : f32[T, 2] = slice %x {start = 2, len = 2}\n"
            "  %al : f32[T, 2] = softmax %a\n"
            "  %g : f32[T, 2] = slice %x {start = 4, len = 2}\n"
            "  %y0 : f32[T, 2] = zeros\n"
            "  %y1 : f32[T, 2] = gate_accum %y0, %g, %u {expert = 1}\n"
            "  output \"y\" = %y1\n  output \"al\" = %al\n", EVAL_F64);
    double a1 = 1.0 / (1.0 + exp(-0.5));
    assert_float_equal(out(&r, "al")[1], a1, 1e-7);
    assert_float_equal(out(&r, "y")[1], 0.75 * 2, 1e-7);
    ir_eval_result_free(&r.res);
}

static void test_embed_rejects_out_of_vocab(void **state)
{
    (void)state;
    Diag d = {stderr, "t.ir", 0};
    const char *text = "module \"t\" {\n input %ids : i32[T]\n input %pos : i32[T]\n"
                       " param %tab : f32[2, 2] = \"tab\"\n %x : f32[T, 2] = embed %tab, %ids\n output \"x\" = %x\n}\n";
    IrModule *m = ir_parse(text, strlen(text), &d);
    assert_non_null(m);
    float tab[4] = {0};
    char dir[] = "/tmp/moeppc-evalXXXXXX", path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/t.safetensors", dir);
    Tensor t = {.name = "tab", .dtype = DT_F32, .ndim = 2, .shape = {2, 2}, .data = tab, .nbytes = 16};
    RtError err = {{0}};
    WeightSet *w = NULL;
    assert_true(safetensors_write(path, &t, 1, &err) && weights_open(path, &w, &err));
    int32_t ids[2] = {1, 2}, pos[2] = {0, 1};
    EvalResult res;
    assert_false(ir_eval(m, w, ids, pos, 2, EVAL_F64, &res, &err));
    assert_non_null(strstr(err.msg, "token id 2 at position 1 is outside the vocabulary [0, 2)"));
    weights_close(w);
    ir_module_free(m);
    unlink(path);
    rmdir(dir);
}

/* Whole tiny models: f32 evaluation stays within SEMANTICS §4's tolerance of the f64 ground truth
 * (1e-4 relative for f32; the test asserts 1e-5), and the same seed gives the same logits. */
static double model_rel_err(const char *spec_path, uint64_t seed)
{
    ModelSpec s;
    Diag d = {stderr, spec_path, 0};
    assert_true(spec_load_file(spec_path, &s, &d));
    WeightSet *w;
    RtError err = {{0}};
    assert_true(weights_random(&s, seed, &w, &err));
    IrModule *m = ir_lower_spec(&s);
    int32_t ids[12], pos[12];
    for (int i = 0; i < 12; i++) ids[i] = (int32_t)((i * 37 + 5) % s.vocab), pos[i] = i;
    EvalResult a, b;
    assert_true(ir_eval(m, w, ids, pos, 12, EVAL_F64, &a, &err));
    assert_true(ir_eval(m, w, ids, pos, 12, EVAL_F32, &b, &err));
    const EvalTensor *la = eval_output(&a, "logits"), *lb = eval_output(&b, "logits");
    double num = 0, den = 0;
    for (int64_t j = 0; j < la->type.dims[0] * la->type.dims[1]; j++) {
        num = fmax(num, fabs(la->data[j] - lb->data[j]));
        den = fmax(den, fabs(la->data[j]));
    }
    ir_eval_result_free(&a);
    ir_eval_result_free(&b);
    ir_module_free(m);
    weights_close(w);
    return num / den;
}

static void test_f32_mode_matches_f64(void **state)
{
    (void)state;
    const char *specs[] = {"tiny-moepp", "tiny-gqa", "tiny-every2", "tiny-mixtral", "tiny-zeros"};
    for (size_t k = 0; k < MOE_ARRAY_LEN(specs); k++) {
        char path[512];
        snprintf(path, sizeof path, "%s/specs/tiny/%s.yaml", MOEPPC_SOURCE_DIR, specs[k]);
        double e = model_rel_err(path, 7);
        printf("%-12s f32 vs f64 logits: rel err %.3g\n", specs[k], e);
        assert_true(e > 0 && e < 1e-5); /* > 0: the f32 mode really rounds */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_topk_ties_take_lower_index),
        cmocka_unit_test(test_zero_mask_and_renormalise),
        cmocka_unit_test(test_logits_norm_uses_bessel),
        cmocka_unit_test(test_rope_half_split),
        cmocka_unit_test(test_attention_causal_gqa),
        cmocka_unit_test(test_const_mix_and_gate_accum),
        cmocka_unit_test(test_embed_rejects_out_of_vocab),
        cmocka_unit_test(test_f32_mode_matches_f64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
