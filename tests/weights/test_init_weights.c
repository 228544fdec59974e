/* test_init_weights.c — `moeppc init-weights`: usage errors (exit 2), bad specs (exit 1), nothing
 * written on failure, and a written file that matches weights_random byte for byte. */
#include "tests/weights/util.h"

#include <stdlib.h>
#include <string.h>


static const char tiny_yaml[] =
    "format: 1\nname: tiny\nmodel:\n  vocab: 64\n  hidden: 16\n  layers: 2\n  heads: 2\n  kv_heads: 2\n"
    "  rope_theta: 10000.0\n  norm_eps: 1.0e-6\n  max_positions: 128\n  dtype: bf16\n  tie_embeddings: false\n"
    "moe:\n  every: 1\n  dense_intermediate: 0\n  top_k: 2\n  experts:\n    ffn: 2\n    constant: 1\n"
    "    copy: 1\n    zero: 1\n  intermediate: 8\n  router:\n    layers: 2\n    gating: softmax_topk\n"
    "    logits_norm: false\n    logits_norm_std: 1.0\n    residual: true\n  input_scaling: true\n";

/* Run cmd_init_weights with a NULL-terminated argument list. */
static int run(const char *const *args)
{
    char *argv[16];
    int argc = 0;
    argv[argc++] = "init-weights";
    for (int i = 0; args[i]; i++) argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    fflush(stdout);
    return cmd_init_weights(argc, argv);
}

#define RUN(...) run((const char *const[]){__VA_ARGS__, NULL})

static char *write_spec(const char *text)
{
    char *p = tu_path(tmp, "tiny.yaml");
    tu_write_file(p, text, strlen(text));
    return p;
}

static void test_usage_errors(void **state)
{
    (void)state;
    char *spec = write_spec(tiny_yaml), *out = tu_path(tmp, "w.safetensors");
    assert_int_equal(RUN(spec, "--seed", "1"), 2);                       /* missing -o     */
    assert_int_equal(RUN(spec, "--seed", "1", "-o"), 2);                 /* -o without FILE */
    assert_int_equal(RUN(spec, "-o", out), 2);                           /* missing --seed */
    assert_int_equal(RUN("--seed", "1", "-o", out), 2);                  /* missing SPEC   */
    assert_int_equal(RUN(spec, "--seed", "abc", "-o", out), 2);
    assert_int_equal(RUN(spec, "--seed", "-1", "-o", out), 2);
    assert_int_equal(RUN(spec, "--seed", "12x", "-o", out), 2);
    assert_int_equal(RUN(spec, "--seed", "99999999999999999999999", "-o", out), 2);
    assert_int_equal(RUN(spec, "--seed", "1", "-o", out, "--frobnicate"), 2);
    assert_int_equal(RUN(spec, spec, "--seed", "1", "-o", out), 2);
    assert_int_equal(RUN("--help"), 0);
    assert_int_equal(tu_count_entries(tmp), 1);                          /* only the spec  */
    free(spec), free(out);
}

static void test_bad_spec(void **state)
{
    (void)state;
    char *missing = tu_path(tmp, "nope.yaml"), *out = tu_path(tmp, "w.safetensors");
    assert_int_equal(RUN(missing, "--seed", "1", "-o", out), 1);
    char *spec = write_spec("format: 1\nmodel: [\n");
    assert_int_equal(RUN(spec, "--seed", "1", "-o", out), 1);
    assert_int_equal(tu_count_entries(tmp), 1);
    free(missing), free(out), free(spec);
}

static void test_writes_random_weights(void **state)
{
    (void)state;
    char *spec = write_spec(tiny_yaml), *out = tu_path(tmp, "w.safetensors");
    assert_int_equal(RUN(spec, "--seed=7", "-o", out), 0);
    WeightSet *file, *mem;
    RtError err;
    assert_true(weights_open(out, &file, &err));
    ModelSpec s = tu_tiny_spec(DT_BF16);
    assert_true(weights_check(file, &s, &err));
    assert_true(weights_random(&s, 7, &mem, &err));
    assert_int_equal(weights_count(file), weights_count(mem));
    for (int i = 0; i < weights_count(mem); i++) {
        const Tensor *a = weights_at(mem, i), *b = weights_at(file, i);
        assert_string_equal(a->name, b->name);
        assert_memory_equal(weights_data(mem, a, &err), b->data, a->nbytes); /* (made when read) */
    }
    size_t len;
    char *raw = file_read_all(out, &len);
    assert_memory_equal(raw + 8, "{\"__metadata__\":{\"format\":\"pt\"}", 31);
    free(raw);
    weights_close(file), weights_close(mem);
    assert_int_equal(tu_count_entries(tmp), 2);
    free(spec), free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_usage_errors, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_bad_spec, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_writes_random_weights, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
