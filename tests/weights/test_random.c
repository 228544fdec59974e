/* test_random.c — seeded random weights (determinism, documented distribution, dtype rounding)
 * and weights_check's report. */
#include "tests/weights/util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static WeightSet *make(const ModelSpec *s, uint64_t seed)
{
    WeightSet *w;
    RtError err;
    if (!weights_random(s, seed, &w, &err)) fail_msg("%s", err.msg);
    return w;
}

/* The same with every tensor made (weights_data), for the tests that read t->data. */
static WeightSet *made(const ModelSpec *s, uint64_t seed)
{
    WeightSet *w = make(s, seed);
    RtError err;
    for (int i = 0; i < weights_count(w); i++) assert_non_null(weights_data(w, weights_at(w, i), &err));
    return w;
}

static void test_random_covers_spec(void **state)
{
    (void)state;
    ModelSpec s = tu_tiny_spec(DT_BF16);
    int n;
    TensorDesc *d = spec_tensors(&s, &n);
    WeightSet *w = make(&s, 1);
    assert_int_equal(weights_count(w), n);
    RtError err;
    for (int i = 0; i < n; i++) {
        const Tensor *t = weights_at(w, i);
        assert_string_equal(t->name, d[i].name);              /* spec order */
        assert_int_equal(t->dtype, DT_BF16);
        assert_true(weights_made_on_read(w, t) && !t->data);  /* made when read */
        const void *at = weights_data(w, t, &err);
        assert_ptr_equal(at, t->data);
        assert_false(weights_made_on_read(w, t));
        assert_int_equal((uintptr_t)t->data % 64, 0);
        assert_int_equal(t->nbytes, (size_t)(d[i].shape[0] * (d[i].ndim == 2 ? d[i].shape[1] : 1)) * 2);
    }
    assert_true(weights_check(w, &s, &err));
    weights_close(w);
    free(d);
}

static void test_random_deterministic(void **state)
{
    (void)state;
    ModelSpec s = tu_tiny_spec(DT_F32);
    WeightSet *a = made(&s, 42), *b = made(&s, 42), *c = made(&s, 43);
    int differ = 0;
    for (int i = 0; i < weights_count(a); i++) {
        const Tensor *ta = weights_at(a, i), *tb = weights_at(b, i), *tc = weights_at(c, i);
        assert_memory_equal(ta->data, tb->data, ta->nbytes);
        differ += memcmp(ta->data, tc->data, ta->nbytes) != 0;
    }
    assert_int_equal(differ, weights_count(a));               /* every tensor changes with the seed */
    weights_close(a), weights_close(b), weights_close(c);
}

/* A tensor depends only on (seed, name): a spec with another layer count shares layer 0. */
static void test_random_depends_on_name_only(void **state)
{
    (void)state;
    ModelSpec s2 = tu_tiny_spec(DT_F32), s3 = s2;
    s3.n_layers = 3;
    WeightSet *a = made(&s2, 7), *b = made(&s3, 7);
    const char *name = "model.layers.1.mlp.moe.experts.experts.0.up_proj.weight";
    assert_memory_equal(weights_find(a, name)->data, weights_find(b, name)->data, weights_find(a, name)->nbytes);
    weights_close(a), weights_close(b);
}

/* Whether every whole page of [p, p + bytes) is resident in this process (mincore), or none is;
 * returns how many whole pages there are. */
static size_t assert_resident(const void *p, size_t bytes, bool all)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), a = ((uintptr_t)p + page - 1) / page * page;
    uintptr_t b = ((uintptr_t)p + bytes) / page * page;
    size_t whole = b > a ? (b - a) / page : 0, n = 0;
    unsigned char *vec = calloc(whole + 1, 1);
    assert_int_equal(mincore((void *)a, b - a, vec), 0);
    for (size_t i = 0; i < whole; i++) n += vec[i] & 1;
    free(vec);
    assert_int_equal(n, all ? whole : 0);
    return whole;
}

/* A random tensor released (weights_release, as a backend does with what it has copied): its pages
 * leave the process and its data is NULL until weights_data makes the same values again, where they
 * were; a part of a tensor, bytes of none, and its neighbours are left alone. */
static void test_random_release(void **state)
{
    (void)state;
    ModelSpec s = tu_tiny_spec(DT_F32);
    s.ffn_intermediate = 4096; /* up_proj [8192, 16]: 128 pages of 4 KiB */
    WeightSet *w = made(&s, 5), *ref = made(&s, 5);
    assert_true(weights_release_frees(w));
    int i = 0;
    while (strcmp(weights_at(w, i)->name, "model.layers.0.mlp.moe.experts.experts.0.up_proj.weight") != 0) i++;
    const Tensor *t = weights_at(w, i), *next = weights_at(w, i + 1), *want = weights_at(ref, i);
    const void *at = t->data;
    assert_true(assert_resident(at, t->nbytes, true) >= 100);

    weights_release(w, at, t->nbytes - 4); /* a part */
    float x = 1;
    weights_release(w, &x, sizeof x);       /* no tensor's */
    assert_ptr_equal(t->data, at);
    assert_resident(at, t->nbytes, true);

    weights_release(w, at, t->nbytes);
    assert_null(t->data);
    assert_resident(at, t->nbytes, false);
    assert_memory_equal(next->data, weights_at(ref, i + 1)->data, next->nbytes);
    weights_release(w, at, t->nbytes); /* (again: nothing) */

    RtError err;
    assert_ptr_equal(weights_data(w, t, &err), at);
    assert_ptr_equal(t->data, at);
    assert_memory_equal(t->data, want->data, t->nbytes);
    weights_close(w), weights_close(ref);
}

/* The documented formula, recomputed independently element by element through dtype_store; the rows
 * weights_make_rows makes, 7 at a time (a run starting anywhere in the generator's blocks) and all but
 * the first at once (in parts, on threads), of a set never made whole, are the same bytes, and leave
 * their tensors unmade. */
static void test_random_formula_and_rounding(void **state)
{
    (void)state;
    moe_dtype dts[3] = {DT_F32, DT_BF16, DT_F16};
    for (int k = 0; k < 6; k++) {
        ModelSpec s = tu_tiny_spec(dts[k % 3]);
        if (k >= 3) s.vocab = 40000, s.hidden = 64; /* embeddings of 2.56 M values: filled in parts by threads */
        int n;
        TensorDesc *d = spec_tensors(&s, &n);
        WeightSet *w = made(&s, 99), *lazy = make(&s, 99);
        unsigned char want[8];
        for (int i = 0; i < n; i++) {
            const Tensor *t = weights_find(w, d[i].name);
            moe_rng r;
            rng_seed(&r, 99 ^ hash_str(d[i].name));
            size_t count = t->nbytes / dtype_size(t->dtype);
            for (size_t j = 0; j < count; j++) {
                double u = 2.0 * rng_uniform(&r) - 1.0, v;
                if (d[i].kind == TK_EMBED || d[i].kind == TK_CONST_VEC) v = u;
                else if (d[i].kind == TK_NORM) v = 1.0 + 0.1 * u;
                else v = u / sqrt((double)d[i].fan_in);
                dtype_store(t->dtype, want, 0, v);
                assert_memory_equal((const char *)t->data + j * dtype_size(t->dtype), want, dtype_size(t->dtype));
            }
            const Tensor *u = weights_find(lazy, d[i].name);
            size_t row = t->nbytes / (size_t)t->shape[0];
            char *rows = xmalloc(7 * row);
            for (int64_t r0 = 0; r0 < t->shape[0]; r0 += 7) {
                int64_t nr = t->shape[0] - r0 < 7 ? t->shape[0] - r0 : 7;
                weights_make_rows(lazy, u, r0, nr, rows);
                assert_memory_equal(rows, (const char *)t->data + (size_t)r0 * row, (size_t)nr * row);
            }
            char *most = xmalloc(t->nbytes); /* rows 1 .. the last in one call: 2.56 M values on a pool */
            weights_make_rows(lazy, u, 1, t->shape[0] - 1, most);
            assert_memory_equal(most, (const char *)t->data + row, t->nbytes - row);
            assert_true(weights_made_on_read(lazy, u));
            free(rows), free(most);
        }
        weights_close(w), weights_close(lazy);
        free(d);
    }
}

/* Bounds per kind, and that the values actually spread over the range (a test that can fail). */
static void test_random_bounds(void **state)
{
    (void)state;
    ModelSpec s = tu_tiny_spec(DT_BF16);
    s.vocab = 4096;
    int n;
    TensorDesc *d = spec_tensors(&s, &n);
    WeightSet *w = made(&s, 5);
    for (int i = 0; i < n; i++) {
        const Tensor *t = weights_find(w, d[i].name);
        size_t count = t->nbytes / 2;
        double lo = 1e9, hi = -1e9, sum = 0;
        for (size_t j = 0; j < count; j++) {
            double v = dtype_load(DT_BF16, t->data, j);
            lo = v < lo ? v : lo, hi = v > hi ? v : hi, sum += v;
        }
        double center = d[i].kind == TK_NORM ? 1.0 : 0.0;
        bool plain = d[i].kind == TK_EMBED || d[i].kind == TK_CONST_VEC;
        double half = d[i].kind == TK_NORM ? 0.1 : plain ? 1.0 : 1.0 / sqrt((double)d[i].fan_in);
        /* rounding is monotonic: values in [c - h, c + h) land in [round(c - h), round(c + h)] */
        if (lo < dtype_round(DT_BF16, center - half) || hi > dtype_round(DT_BF16, center + half))
            fail_msg("%s: [%g, %g] outside %g±%g", t->name, lo, hi, center, half);
        if (count >= 32 && (hi - center < 0.5 * half || center - lo < 0.5 * half))
            fail_msg("%s: [%g, %g] does not spread over %g±%g", t->name, lo, hi, center, half);
        if (count >= 1024 && fabs(sum / (double)count - center) > 0.1 * half)
            fail_msg("%s: mean %g, expected about %g", t->name, sum / (double)count, center);
    }
    weights_close(w);
    free(d);
}

static void test_random_refuses_too_big(void **state)
{
    (void)state;
    ModelSpec s = tu_tiny_spec(DT_F32);
    s.vocab = (int64_t)1 << 40;        /* 2^40 x 16 x 4 bytes x 2 = 256 TiB */
    WeightSet *w = (WeightSet *)1;
    RtError err;
    assert_false(weights_random(&s, 1, &w, &err));
    assert_null(w);
    assert_non_null(strstr(err.msg, "tiny: error: random weights need 140737488."));
    assert_non_null(strstr(err.msg, "80% of"));
    s.vocab = (int64_t)1 << 62;        /* overflows int64 */
    assert_false(weights_random(&s, 1, &w, &err));
    assert_non_null(strstr(err.msg, "2^63"));
}

/* weights_random_lazy: no check of the whole set against the memory (its reader counts what it keeps),
 * the same values as weights_random's where both run */
static void test_random_lazy_unchecked(void **state)
{
    (void)state;
    ModelSpec s = tu_tiny_spec(DT_F32);
    WeightSet *a = made(&s, 7), *b = NULL;
    RtError err;
    setenv("MOEPPC_MEM_LIMIT_MB", "0.01", 1);
    assert_false(weights_random(&s, 7, &b, &err));
    assert_non_null(strstr(err.msg, "80% of"));
    bool ok = weights_random_lazy(&s, 7, &b, &err);
    unsetenv("MOEPPC_MEM_LIMIT_MB");
    assert_true(ok);
    assert_int_equal(weights_count(a), weights_count(b));
    for (int i = 0; i < weights_count(b); i++) {
        const Tensor *ta = weights_at(a, i), *tb = weights_at(b, i);
        const void *db = weights_data(b, tb, &err);
        assert_non_null(db);
        assert_string_equal(ta->name, tb->name);
        assert_int_equal(ta->nbytes, tb->nbytes);
        assert_memory_equal(ta->data, db, ta->nbytes);
    }
    weights_close(a);
    weights_close(b);
}

/* ---- weights_check ---- */
/* Write the tiny spec's random weights with some tensors dropped, retyped or reshaped. */
static WeightSet *doctored(const char *dir, const ModelSpec *s)
{
    WeightSet *w = made(s, 3);
    int n = weights_count(w), k = 0;
    Tensor *t = xcalloc((size_t)n + 1, sizeof *t);
    static float extra[4];
    for (int i = 0; i < n; i++) {
        Tensor x = *weights_at(w, i);
        if (strcmp(x.name, "model.norm.weight") == 0) continue;                 /* missing   */
        if (strcmp(x.name, "model.layers.0.self_attn.q_proj.weight") == 0)     /* same bytes */
            x.dtype = DT_F32, x.shape[1] = 8;
        if (strcmp(x.name, "model.layers.1.mlp.moe.gate.gate_map.weight") == 0) /* [5,5]→[25] */
            x.ndim = 1, x.shape[0] = 25;
        t[k++] = x;
    }
    t[k++] = (Tensor){"rotary.inv_freq", DT_F32, 1, {4}, extra, 16};            /* extra: fine */
    char *p = tu_path(dir, "d.safetensors");
    RtError err;
    assert_true(safetensors_write(p, t, k, &err));
    weights_close(w);
    WeightSet *r;
    assert_true(weights_open(p, &r, &err));
    free(p), free(t);
    return r;
}

static void test_check_reports_problems(void **state)
{
    (void)state;
    char *dir = tu_tmpdir();
    ModelSpec s = tu_tiny_spec(DT_BF16);
    WeightSet *w = doctored(dir, &s);
    RtError err;
    assert_false(weights_check(w, &s, &err));
    char *p = tu_path(dir, "d.safetensors");
    char want[2048];
    snprintf(want, sizeof want,
             "%s: error: checkpoint does not match spec 'tiny': 3 problems\n"
             "  model.layers.0.self_attn.q_proj.weight: expected bf16 [16, 16], found f32 [16, 8]\n"
             "  model.layers.1.mlp.moe.gate.gate_map.weight: expected bf16 [5, 5], found bf16 [25]\n"
             "  missing tensor model.norm.weight", p);
    assert_string_equal(err.msg, want);
    weights_close(w);
    tu_rmtree(dir);
    free(dir), free(p);
}

/* Many problems: the first 20 lines, then a count of the rest; the message is never cut mid-way. */
static void test_check_many_problems(void **state)
{
    (void)state;
    ModelSpec s = tu_tiny_spec(DT_BF16), other = s;
    other.dtype = DT_F16;
    WeightSet *w = make(&other, 1);
    int n;
    free(spec_tensors(&s, &n));
    RtError err;
    assert_false(weights_check(w, &s, &err));
    char head[160];
    snprintf(head, sizeof head, "random weights (seed 1): error: checkpoint does not match spec 'tiny': %d problems\n", n);
    assert_true(strncmp(err.msg, head, strlen(head)) == 0);
    assert_non_null(strstr(err.msg, "  model.embed_tokens.weight: expected bf16 [64, 16], found f16 [64, 16]\n"));
    char tail[64];
    snprintf(tail, sizeof tail, "\n  ... and %d more", n - 20);
    assert_non_null(strstr(err.msg, tail));
    int lines = 0;
    for (const char *c = err.msg; *c; c++) lines += *c == '\n';
    assert_int_equal(lines, 21);
    weights_close(w);
}

/* Random weights written and read back pass the check and keep their bytes. */
static void test_random_write_open_check(void **state)
{
    (void)state;
    char *dir = tu_tmpdir(), *p = tu_path(dir, "model.safetensors");
    ModelSpec s = tu_tiny_spec(DT_F16);
    WeightSet *w = made(&s, 11), *r;
    Tensor *t = xmalloc((size_t)weights_count(w) * sizeof *t);
    for (int i = 0; i < weights_count(w); i++) t[i] = *weights_at(w, i);
    RtError err;
    assert_true(safetensors_write(p, t, weights_count(w), &err));
    assert_true(weights_open(dir, &r, &err));
    assert_true(weights_check(r, &s, &err));
    assert_false(weights_release_frees(r)); /* (a file's pages go back to the page cache) */
    for (int i = 0; i < weights_count(w); i++)
        assert_memory_equal(weights_find(r, t[i].name)->data, t[i].data, t[i].nbytes);
    weights_close(w), weights_close(r);
    tu_rmtree(dir);
    free(t), free(p), free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_covers_spec),
        cmocka_unit_test(test_random_deterministic),
        cmocka_unit_test(test_random_release),
        cmocka_unit_test(test_random_depends_on_name_only),
        cmocka_unit_test(test_random_formula_and_rounding),
        cmocka_unit_test(test_random_bounds),
        cmocka_unit_test(test_random_refuses_too_big),
        cmocka_unit_test(test_random_lazy_unchecked),
        cmocka_unit_test(test_check_reports_problems),
        cmocka_unit_test(test_check_many_problems),
        cmocka_unit_test(test_random_write_open_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
