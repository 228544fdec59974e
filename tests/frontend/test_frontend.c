/* test_frontend.c — unit tests of the frontend: every shipped spec loads, round-trips through
 * spec_write_yaml, the 7B summary matches the paper, import-hf reproduces specs/moepp-7b.yaml, mangled
 * specs never crash, and support.c's bf16/f16 conversions round to nearest even.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "frontend/frontend.h"

#define SRC MOEPPC_SOURCE_DIR

/* Diagnostics go to a memory stream the test can read, not to the terminal. */
typedef struct {
    char *text;
    size_t len;
    FILE *f;
    Diag d;
} Captured;

static void capture_begin(Captured *c, const char *file)
{
    memset(c, 0, sizeof *c);
    c->f = open_memstream(&c->text, &c->len);
    assert_non_null(c->f);
    c->d.out = c->f;
    c->d.file = file;
}

static void capture_end(Captured *c)
{
    fclose(c->f);
    free(c->text);
}

static void load_ok(const char *path, ModelSpec *s)
{
    Captured c;
    capture_begin(&c, NULL);
    bool ok = spec_load_file(path, s, &c.d);
    fflush(c.f);
    if (!ok) print_error("%s", c.text);
    assert_true(ok);
    assert_int_equal(c.d.n_errors, 0);
    capture_end(&c);
}

/* A field added to ModelSpec changes its size: compare it here too, then update the size. */
_Static_assert(sizeof(ModelSpec) == 304, "ModelSpec has a new field: compare it in assert_spec_equal");

static void assert_spec_equal(const ModelSpec *a, const ModelSpec *b, bool same_name)
{
    if (same_name) assert_string_equal(a->name, b->name);
    assert_int_equal(a->vocab, b->vocab);
    assert_int_equal(a->hidden, b->hidden);
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->n_heads, b->n_heads);
    assert_int_equal(a->n_kv_heads, b->n_kv_heads);
    assert_true(a->rope_theta == b->rope_theta);
    assert_true(a->norm_eps == b->norm_eps);
    assert_int_equal(a->max_positions, b->max_positions);
    assert_int_equal(a->dtype, b->dtype);
    assert_int_equal(a->tie_embeddings, b->tie_embeddings);
    assert_int_equal(a->has_eos, b->has_eos);
    if (a->has_eos) assert_int_equal(a->eos_token_id, b->eos_token_id);
    assert_int_equal(a->moe_every, b->moe_every);
    assert_int_equal(a->dense_intermediate, b->dense_intermediate);
    assert_int_equal(a->top_k, b->top_k);
    assert_int_equal(a->n_ffn, b->n_ffn);
    assert_int_equal(a->n_const, b->n_const);
    assert_int_equal(a->n_copy, b->n_copy);
    assert_int_equal(a->n_zero, b->n_zero);
    assert_int_equal(a->ffn_intermediate, b->ffn_intermediate);
    assert_int_equal(a->router_layers, b->router_layers);
    assert_int_equal(a->gating, b->gating);
    assert_int_equal(a->logits_norm, b->logits_norm);
    assert_true(a->logits_norm_std == b->logits_norm_std);
    assert_int_equal(a->gating_residual, b->gating_residual);
    assert_int_equal(a->input_scaling, b->input_scaling);
}

/* Write s as YAML, read it back: the same ModelSpec, name included. */
static void assert_round_trip(const ModelSpec *s)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_true(spec_write_yaml(s, f));
    fclose(f);
    ModelSpec back;
    Captured c;
    capture_begin(&c, "round-trip");
    bool ok = spec_load_string(buf, len, &back, &c.d);
    fflush(c.f);
    if (!ok) print_error("%s\n%s", c.text, buf);
    assert_true(ok);
    assert_spec_equal(s, &back, true);
    capture_end(&c);
    free(buf);
}

/* Calls fn(path) for every *.yaml in dir; returns how many. */
static int for_each_spec(const char *dir, void (*fn)(const char *path))
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".yaml") != 0) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        fn(path);
        n++;
    }
    closedir(d);
    return n;
}

static void check_shipped(const char *path)
{
    ModelSpec s;
    load_ok(path, &s);
    assert_round_trip(&s);
    SpecSummary sum;
    spec_summarize(&s, &sum);
    assert_true(sum.params_active > 0 && sum.params_active <= sum.params_total);
}

static void test_shipped_specs(void **state)
{
    assert_int_equal(for_each_spec(SRC "/specs", check_shipped), 8);
    assert_int_equal(for_each_spec(SRC "/specs/tiny", check_shipped), 15);
}

static void test_fields_7b(void **state)
{
    ModelSpec s;
    load_ok(SRC "/specs/moepp-7b.yaml", &s);
    assert_string_equal(s.name, "moepp-7b");
    assert_int_equal(s.hidden, 1536);
    assert_int_equal(s.n_layers, 24);
    assert_int_equal(spec_n_experts(&s), 20);
    assert_int_equal(s.n_ffn, 16);
    assert_int_equal(s.dtype, DT_BF16);
    assert_int_equal(s.router_layers, 2);
    assert_int_equal(s.gating, GATING_SOFTMAX_TOPK);
    assert_true(spec_input_scale(&s) == 2.0);
    assert_true(s.norm_eps == 1e-6);
}

static void test_fields_tiny(void **state)
{
    ModelSpec s;
    load_ok(SRC "/specs/tiny/tiny-gqa.yaml", &s);
    assert_int_equal(s.n_kv_heads, 2);
    assert_int_equal(s.n_layers, 3);
    load_ok(SRC "/specs/tiny/tiny-vanilla.yaml", &s);
    assert_int_equal(spec_n_experts(&s), 8);
    assert_int_equal(s.n_zero + s.n_copy + s.n_const, 0);
    assert_int_equal(s.gating, GATING_TOPK_SOFTMAX);
    assert_false(s.gating_residual);
    assert_true(spec_input_scale(&s) == 1.0);
    load_ok(SRC "/specs/tiny/tiny-every2.yaml", &s);
    assert_int_equal(s.moe_every, 2);
    assert_false(spec_layer_is_moe(&s, 0));
    assert_true(spec_layer_is_moe(&s, 1));
    load_ok(SRC "/specs/tiny/tiny-mixtral.yaml", &s);
    assert_true(s.input_scaling);
    assert_true(spec_input_scale(&s) == 1.0); /* topk_softmax forces the scale off */
    load_ok(SRC "/specs/tiny/tiny-logitsnorm.yaml", &s);
    assert_true(s.logits_norm && s.logits_norm_std == 2.0);
}

/* Only the required keys: everything else takes the documented defaults; the name comes from the file. */
static void test_defaults(void **state)
{
    static const char text[] = "format: 1\nmodel:\n  vocab: 100\n  hidden: 32\n  layers: 2\n  heads: 2\n"
                               "moe:\n  top_k: 2\n  experts:\n    ffn: 4\n  intermediate: 16\n";
    ModelSpec s;
    Captured c;
    capture_begin(&c, "min.yaml");
    assert_true(spec_load_string(text, sizeof text - 1, &s, &c.d));
    capture_end(&c);
    assert_string_equal(s.name, "spec");
    assert_int_equal(s.n_kv_heads, 2);
    assert_true(s.rope_theta == 10000.0 && s.norm_eps == 1e-6);
    assert_int_equal(s.max_positions, 4096);
    assert_int_equal(s.dtype, DT_F32);
    assert_false(s.tie_embeddings);
    assert_int_equal(s.moe_every, 1);
    assert_int_equal(s.dense_intermediate, 0);
    assert_int_equal(s.n_const + s.n_copy + s.n_zero, 0);
    assert_int_equal(s.router_layers, 2);
    assert_int_equal(s.gating, GATING_SOFTMAX_TOPK);
    assert_false(s.logits_norm);
    assert_true(s.logits_norm_std == 1.0);
    assert_true(s.gating_residual && s.input_scaling);
    assert_round_trip(&s);
}

static void test_round_trip_awkward(void **state)
{
    ModelSpec s;
    load_ok(SRC "/specs/tiny/tiny-moepp.yaml", &s);
    snprintf(s.name, sizeof s.name, "%s", "we\"ird: name\\ #1\t");
    s.rope_theta = 500000.123456789;
    s.norm_eps = 1.0 / 3.0 * 1e-5;
    s.logits_norm_std = 0.1;
    assert_round_trip(&s);
    snprintf(s.name, sizeof s.name, "%s", "true");
    assert_round_trip(&s);
}

static void test_summary_7b(void **state)
{
    ModelSpec s;
    SpecSummary sum;
    load_ok(SRC "/specs/moepp-7b.yaml", &s);
    spec_summarize(&s, &sum);
    assert_true(sum.params_total >= 7550000000LL && sum.params_total <= 7600000000LL);
    assert_true(sum.params_active >= 1180000000LL && sum.params_active <= 1200000000LL);
    assert_int_equal(sum.params_embedding, 2LL * 32000 * 1536);
    assert_true(sum.flops_per_token == 2.0 * (double)sum.params_active);
    assert_true(sum.flops_attention_per_token_ctx == 4.0 * 24 * 16 * 96);
    /* tied: lm_head disappears from the total and the embedding becomes compute */
    s.tie_embeddings = true;
    SpecSummary tied;
    spec_summarize(&s, &tied);
    assert_int_equal(tied.params_total, sum.params_total - 32000LL * 1536);
    assert_int_equal(tied.params_active, sum.params_active);
}

/* A config that imports without a word on stderr (no error, no note). */
static void import_hf_ok(const char *path, ModelSpec *s)
{
    Captured c;
    capture_begin(&c, NULL);
    bool ok = spec_from_hf_config(path, s, &c.d);
    fflush(c.f);
    if (!ok) print_error("%s", c.text);
    assert_true(ok);
    assert_string_equal(c.text, "");
    capture_end(&c);
}

static void test_import_hf_7b(void **state)
{
    ModelSpec want, got;
    load_ok(SRC "/specs/moepp-7b.yaml", &want);
    import_hf_ok(SRC "/tests/frontend/hf/moepp-7b-config.json", &got);
    assert_spec_equal(&want, &got, false);
}

/* Mixtral-8x7B-v0.1's own config.json: the vanilla spec of its sizes, and Mistral's published counts
 * (46.7 B parameters, 12.9 B of them active with the embeddings) from the summary. */
static void test_import_hf_mixtral(void **state)
{
    ModelSpec got;
    import_hf_ok(SRC "/tests/frontend/hf/mixtral-8x7b-config.json", &got); /* no sliding window: no note */
    ModelSpec want = {.vocab = 32000, .hidden = 4096, .n_layers = 32, .n_heads = 32, .n_kv_heads = 8,
                      .rope_theta = 1e6, .norm_eps = 1e-5, .max_positions = 32768, .dtype = DT_BF16,
                      .tie_embeddings = false, .has_eos = true, .eos_token_id = 2, .moe_every = 1,
                      .dense_intermediate = 0, .top_k = 2, .n_ffn = 8, .ffn_intermediate = 14336,
                      .router_layers = 1, .gating = GATING_TOPK_SOFTMAX, .logits_norm = false,
                      .logits_norm_std = 1.0, .gating_residual = false, .input_scaling = false};
    str_copy_trunc(want.name, sizeof want.name, got.name);
    assert_spec_equal(&want, &got, false);
    assert_round_trip(&got);
    SpecSummary sum;
    spec_summarize(&got, &sum);
    assert_true(sum.params_total >= 46650000000LL && sum.params_total <= 46750000000LL);
    int64_t active = sum.params_active + sum.params_embedding / 2; /* + embed_tokens (lm_head is in) */
    assert_true(active >= 12850000000LL && active <= 12950000000LL);
}

/* eos_token_id in a config: an id, a list (the first kept), null or absent (none); anything else, or
 * an id outside the vocabulary, refused with the key named. The spec round-trips it. */
static void test_import_hf_eos(void **state)
{
    size_t len = 0;
    char *cfg = file_read_all(SRC "/tests/frontend/hf/moepp-7b-config.json", &len);
    assert_non_null(cfg);
    char *at = strstr(cfg, "\"eos_token_id\": 2,");
    assert_non_null(at);
    const struct {
        const char *value, *error; /* error: NULL to load */
        bool has;
        int64_t id;
    } cases[] = {
        {"7", NULL, true, 7},     {"[5, 9]", NULL, true, 5}, {"null", NULL, false, 0},
        {"-1", "eos_token_id: expected a token id or a list of them, found -1", false, 0},
        {"[2, \"x\"]", "eos_token_id: expected a token id or a list of them, found a list of 2 elements", false, 0},
        {"[]", "eos_token_id: expected a token id or a list of them, found a list of 0 elements", false, 0},
        {"40000", "model.eos_token_id (40000) is outside the vocabulary [0, 32000)", false, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char *text = xmalloc(len + 64);
        int n = sprintf(text, "%.*s\"eos_token_id\": %s,%s", (int)(at - cfg), cfg, cases[k].value,
                        at + strlen("\"eos_token_id\": 2,"));
        ModelSpec s;
        Captured c;
        capture_begin(&c, NULL);
        bool ok = spec_from_hf_json(text, (size_t)n, "m", &s, &c.d);
        fflush(c.f);
        if (ok != !cases[k].error) print_error("eos_token_id %s: %s", cases[k].value, c.text);
        assert_int_equal(ok, !cases[k].error);
        if (cases[k].error && !strstr(c.text, cases[k].error)) fail_msg("eos_token_id %s: %s", cases[k].value, c.text);
        capture_end(&c);
        if (ok) {
            assert_int_equal(s.has_eos, cases[k].has);
            if (s.has_eos) assert_int_equal(s.eos_token_id, cases[k].id);
            assert_round_trip(&s);
        }
        free(text);
    }
    free(cfg);
}

/* Mangled copies of a good spec (bytes replaced, inserted, truncated): each must load or fail with at
 * least one diagnostic, never crash (the ASan build checks the memory side). */
static void test_mangled_specs(void **state)
{
    size_t len = 0;
    char *good = file_read_all(SRC "/specs/tiny/tiny-moepp.yaml", &len);
    assert_non_null(good);
    static const char alphabet[] = " :-\n\t#{}[]&*!|>'\"%@`09.ae\x01\x80\xff";
    moe_rng r;
    rng_seed(&r, 12345);
    char *buf = xmalloc(len + 8);
    for (int iter = 0; iter < 3000; iter++) {
        memcpy(buf, good, len);
        size_t n = len;
        for (int m = 0; m < 1 + iter % 4; m++)
            buf[rng_next(&r) % n] = alphabet[rng_next(&r) % (sizeof alphabet - 1)];
        if (iter % 7 == 0) n = rng_next(&r) % n;
        ModelSpec s;
        Captured c;
        capture_begin(&c, "mangled.yaml");
        bool ok = spec_load_string(buf, n, &s, &c.d);
        assert_true(ok == (c.d.n_errors == 0));
        capture_end(&c);
    }
    free(buf);
    free(good);
}

/* Refused before they are built or read: 2^20 + 1 nodes, a device that never ends, a file over the
 * 100 MB text limit (sparse). Each with one message. */
static void test_resource_limits(void **state)
{
    (void)state;
    size_t n = ((size_t)1 << 20) + 1;
    char *wide = xmalloc(2 * n + 16);
    size_t len = (size_t)sprintf(wide, "x: [");
    for (size_t i = 0; i < n; i++) len += (size_t)sprintf(wide + len, "1,");
    wide[len - 1] = ']';
    ModelSpec s;
    Captured c;
    capture_begin(&c, "wide.yaml");
    assert_false(spec_load_string(wide, len, &s, &c.d));
    fflush(c.f);
    assert_int_equal(c.d.n_errors, 1);
    assert_non_null(strstr(c.text, "expected at most 1048576 nodes in a spec, found more"));
    capture_end(&c);
    free(wide);

    char big[] = "/tmp/moeppc-big-XXXXXX";
    int fd = mkstemp(big);
    assert_true(fd >= 0 && ftruncate(fd, FILE_READ_LIMIT + 1) == 0);
    close(fd);
    const char *paths[] = {"/dev/zero", big};
    for (int i = 0; i < 2; i++) {
        capture_begin(&c, NULL);
        assert_false(spec_load_file(paths[i], &s, &c.d));
        fflush(c.f);
        assert_non_null(strstr(c.text, "cannot read the spec: File too large"));
        capture_end(&c);
    }
    unlink(big);
}

static void test_bf16(void **state)
{
    assert_int_equal(f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(f32_to_bf16(-2.0f), 0xc000);
    assert_true(bf16_to_f32(0x3f80) == 1.0f);
    /* 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0) */
    assert_int_equal(f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    /* 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up */
    assert_int_equal(f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    assert_int_equal(f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81); /* above the tie: up */
    assert_int_equal(f32_to_bf16(INFINITY), 0x7f80);
    assert_true(isnan(bf16_to_f32(f32_to_bf16(NAN))));
    assert_int_equal(f32_to_bf16(3.4e38f), 0x7f80); /* rounds past the largest bf16 */
}

static void test_f16(void **state)
{
    assert_int_equal(f32_to_f16(1.0f), 0x3c00);
    assert_int_equal(f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(f32_to_f16(65520.0f), 0x7c00);        /* halfway to 2^16: ties-to-even overflows */
    assert_int_equal(f32_to_f16(1.0f + 0x1p-11f), 0x3c00); /* tie, even stays */
    assert_int_equal(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02);
    assert_int_equal(f32_to_f16(0x1p-24f), 0x0001);        /* smallest subnormal */
    assert_int_equal(f32_to_f16(0x1p-25f), 0x0000);        /* half of it: tie to even (0) */
    assert_int_equal(f32_to_f16(3 * 0x1p-25f), 0x0002);    /* 1.5 ulp: tie to even (2) */
    assert_int_equal(f32_to_f16(0x1p-14f - 0x1p-24f), 0x03ff); /* largest subnormal */
    assert_true(f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(f16_to_f32(0x03ff) == 0x1p-14f - 0x1p-24f);
    assert_true(f16_to_f32(0x8000) == 0.0f && signbit(f16_to_f32(0x8000)));
    assert_true(isnan(f16_to_f32(f32_to_f16(NAN))));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_specs),   cmocka_unit_test(test_fields_7b),
        cmocka_unit_test(test_fields_tiny),     cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_round_trip_awkward), cmocka_unit_test(test_summary_7b),
        cmocka_unit_test(test_import_hf_7b),    cmocka_unit_test(test_import_hf_mixtral),    cmocka_unit_test(test_import_hf_eos),    cmocka_unit_test(test_mangled_specs),
        cmocka_unit_test(test_resource_limits),
        cmocka_unit_test(test_bf16),            cmocka_unit_test(test_f16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
