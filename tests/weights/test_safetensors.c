/* test_safetensors.c — safetensors write/read round trips, sharded sets, lookup, atomic writes. */
#include "tests/weights/util.h"

#include <stdlib.h>
#include <string.h>


/* Values chosen to be exact in every dtype, plus rounding-sensitive ones stored raw. */
static void roundtrip(moe_dtype dt)
{
    float f32[6] = {0.0f, -1.5f, 3.25f, 1e-3f, -65504.0f, 0.1f};
    uint16_t h16[6] = {0x0000, 0xbfc0, 0x4050, 0x3a83, 0xc77f, 0x3dcd};  /* bf16 bits */
    uint16_t f16[6] = {0x0000, 0xbe00, 0x4280, 0x1419, 0xfbff, 0x2e66};  /* f16 bits  */
    const void *data = dt == DT_F32 ? (const void *)f32 : dt == DT_BF16 ? (const void *)h16 : (const void *)f16;
    size_t es = dtype_size(dt);
    Tensor in[3] = {
        {"b.matrix", dt, 2, {2, 3}, data, 6 * es},
        {"a.vector", dt, 1, {4}, data, 4 * es},
        {"c.scalar", dt, 0, {0}, data, es},
    };
    char *path = tu_path(tmp, "rt.safetensors");
    RtError err;
    static const char *const meta[] = {"format", "pt", NULL};
    assert_true(safetensors_write_meta(path, in, 3, meta, &err));
    WeightSet *w;
    assert_true(weights_open(path, &w, &err));
    assert_int_equal(weights_count(w), 3);
    for (int i = 0; i < 3; i++) {
        const Tensor *t = weights_at(w, i);   /* header order is the given order */
        assert_string_equal(t->name, in[i].name);
        assert_ptr_equal(weights_find(w, in[i].name), t);
        assert_int_equal(t->dtype, dt);
        assert_int_equal(t->ndim, in[i].ndim);
        for (int j = 0; j < t->ndim; j++) assert_int_equal(t->shape[j], in[i].shape[j]);
        assert_int_equal(t->nbytes, in[i].nbytes);
        assert_memory_equal(t->data, data, t->nbytes);
    }
    assert_null(weights_find(w, "nope"));
    assert_null(weights_at(w, 3));
    weights_close(w);

    /* Header: length a multiple of 8, metadata first, keys in the given order. */
    size_t len;
    char *raw = file_read_all(path, &len);
    assert_non_null(raw);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | (unsigned char)raw[i];
    assert_int_equal(hlen % 8, 0);
    assert_int_equal(len, 8 + hlen + 11 * es);
    assert_memory_equal(raw + 8, "{\"__metadata__\":{\"format\":\"pt\"},\"b.matrix\":", 43);
    assert_true(strstr(raw + 8, "\"data_offsets\":[0,") != NULL);
    free(raw);
    assert_int_equal(tu_count_entries(tmp), 1);    /* no temporary left behind */
    free(path);
}

static void test_roundtrip_f32(void **state) { (void)state; roundtrip(DT_F32); }
static void test_roundtrip_bf16(void **state) { (void)state; roundtrip(DT_BF16); }
static void test_roundtrip_f16(void **state) { (void)state; roundtrip(DT_F16); }

/* A file we did not write (hand-made header, no padding, zero-size tensor, mixed dtypes). */
static void test_read_handmade(void **state)
{
    (void)state;
    char *path = tu_path(tmp, "hand.safetensors");
    float x[2] = {1.0f, -2.0f};
    unsigned char data[12];
    memcpy(data, x, 8);
    data[8] = 0x80, data[9] = 0x3f, data[10] = 0x00, data[11] = 0x40;  /* bf16 1.0, 2.0 */
    tu_write_st(path, "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"empty\":{\"dtype\":\"F16\",\"shape\":[0,5],\"data_offsets\":[8,8]},"
                      "\"y\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[8,12]},"
                      "\"__metadata__\":{\"format\":\"pt\"}}  ", data, sizeof data);
    WeightSet *w;
    RtError err;
    assert_true(weights_open(path, &w, &err));
    assert_int_equal(weights_count(w), 3);
    const Tensor *y = weights_find(w, "y");
    assert_non_null(y);
    /* The unpadded header leaves the data region at an odd offset: tensors are copied aligned. */
    for (int i = 0; i < weights_count(w); i++)
        assert_int_equal((uintptr_t)weights_at(w, i)->data % dtype_size(weights_at(w, i)->dtype), 0);
    assert_true(dtype_load(DT_BF16, y->data, 0) == 1.0 && dtype_load(DT_BF16, y->data, 1) == 2.0);
    assert_int_equal(weights_find(w, "empty")->nbytes, 0);
    assert_true(dtype_load(DT_F32, weights_find(w, "x")->data, 1) == -2.0);
    weights_close(w);
    free(path);
}

/* Thousands of tensors: every one is found by name. */
static void test_many_tensors_lookup(void **state)
{
    (void)state;
    enum { N = 3000 };
    Tensor *t = xcalloc(N, sizeof *t);
    float *vals = xmalloc(N * sizeof *vals);
    for (int i = 0; i < N; i++) {
        vals[i] = (float)i;
        t[i].name = xmalloc(48);
        snprintf(t[i].name, 48, "model.layers.%d.w", (i * 7919) % N);
        t[i] = (Tensor){t[i].name, DT_F32, 1, {1}, &vals[i], 4};
    }
    char *path = tu_path(tmp, "many.safetensors");
    RtError err;
    assert_true(safetensors_write(path, t, N, &err));
    WeightSet *w;
    assert_true(weights_open(path, &w, &err));
    assert_int_equal(weights_count(w), N);
    for (int i = 0; i < N; i++) {
        const Tensor *f = weights_find(w, t[i].name);
        assert_non_null(f);
        assert_true(*(const float *)f->data == (float)i);
    }
    weights_close(w);
    for (int i = 0; i < N; i++) free(t[i].name);
    free(t), free(vals), free(path);
}

static void test_write_refuses_bad_input(void **state)
{
    (void)state;
    float v[4] = {0};
    char *path = tu_path(tmp, "bad.safetensors");
    RtError err;
    Tensor wrong_size = {"w", DT_F32, 2, {2, 3}, v, 16};
    assert_false(safetensors_write(path, &wrong_size, 1, &err));
    assert_non_null(strstr(err.msg, "'w'"));
    Tensor dup[2] = {{"d", DT_F32, 1, {2}, v, 8}, {"d", DT_F32, 1, {2}, v + 2, 8}};
    assert_false(safetensors_write(path, dup, 2, &err));
    assert_non_null(strstr(err.msg, "given twice"));
    Tensor f64 = {"f", DT_F64, 1, {2}, v, 16};
    assert_false(safetensors_write(path, &f64, 1, &err));
    char *nodir = tu_path(tmp, "no/such/dir/x.safetensors");
    Tensor ok = {"ok", DT_F32, 1, {4}, v, 16};
    assert_false(safetensors_write(nodir, &ok, 1, &err));
    assert_non_null(strstr(err.msg, "cannot create"));
    assert_int_equal(tu_count_entries(tmp), 0);     /* nothing written, no temporaries */
    free(nodir), free(path);
}

/* Writing over an existing file replaces it whole. */
static void test_write_replaces(void **state)
{
    (void)state;
    char *path = tu_path(tmp, "x.safetensors");
    tu_write_file(path, "old junk", 8);
    float v[2] = {4.0f, 5.0f};
    Tensor t = {"t", DT_F32, 1, {2}, v, 8};
    RtError err;
    assert_true(safetensors_write(path, &t, 1, &err));
    WeightSet *w;
    assert_true(weights_open(path, &w, &err));
    assert_memory_equal(weights_find(w, "t")->data, v, 8);
    weights_close(w);
    assert_int_equal(tu_count_entries(tmp), 1);
    free(path);
}

/* Two shards and an index; one shard also holds a tensor the map does not mention (allowed). */
static void write_sharded(void)
{
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[3] = {7, 8, 9};
    Tensor s1[2] = {{"a", DT_F32, 2, {2, 2}, a, 16}, {"extra.rotary", DT_F32, 1, {2}, b, 8}};
    Tensor s2[2] = {{"b", DT_F32, 1, {2}, b, 8}, {"c", DT_F32, 1, {3}, c, 12}};
    RtError err;
    char *p1 = tu_path(tmp, "model-00001-of-00002.safetensors"), *p2 = tu_path(tmp, "model-00002-of-00002.safetensors");
    assert_true(safetensors_write(p1, s1, 2, &err));
    assert_true(safetensors_write(p2, s2, 2, &err));
    char *idx = tu_path(tmp, "model.safetensors.index.json");
    const char *json = "{\"metadata\": {\"total_size\": 36}, \"weight_map\": {"
                       "\"c\": \"model-00002-of-00002.safetensors\", \"a\": \"model-00001-of-00002.safetensors\","
                       "\"b\": \"model-00002-of-00002.safetensors\"}}";
    tu_write_file(idx, json, strlen(json));
    free(p1), free(p2), free(idx);
}

static void check_sharded(WeightSet *w)
{
    assert_int_equal(weights_count(w), 4);
    const float want[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    assert_memory_equal(weights_find(w, "a")->data, want, 16);
    assert_memory_equal(weights_find(w, "b")->data, want + 4, 8);
    assert_memory_equal(weights_find(w, "c")->data, want + 6, 12);
    assert_non_null(weights_find(w, "extra.rotary"));
    assert_int_equal(weights_find(w, "a")->shape[1], 2);
}

static void test_sharded_via_index(void **state)
{
    (void)state;
    write_sharded();
    char *idx = tu_path(tmp, "model.safetensors.index.json");
    WeightSet *w;
    RtError err;
    assert_true(weights_open(idx, &w, &err));
    check_sharded(w);
    weights_close(w);
    free(idx);
}

static void test_sharded_via_directory(void **state)
{
    (void)state;
    write_sharded();
    WeightSet *w;
    RtError err;
    assert_true(weights_open(tmp, &w, &err));
    check_sharded(w);
    weights_close(w);
}

static void test_directory_single_file(void **state)
{
    (void)state;
    float v[2] = {1, 2};
    Tensor t = {"t", DT_F32, 1, {2}, v, 8};
    RtError err;
    WeightSet *w;
    assert_false(weights_open(tmp, &w, &err));       /* empty directory */
    assert_non_null(strstr(err.msg, "model.safetensors"));
    char *p = tu_path(tmp, "model.safetensors");
    assert_true(safetensors_write(p, &t, 1, &err));
    assert_true(weights_open(tmp, &w, &err));
    assert_int_equal(weights_count(w), 1);
    weights_close(w);
    free(p);
}

/* This process's resident pages of file mappings, in KiB (/proc/self/status). */
static long rss_file_kb(void)
{
    size_t len;
    char *st = file_read_all("/proc/self/status", &len);
    assert_non_null(st);
    const char *at = strstr(st, "RssFile:");
    assert_non_null(at);
    long kb = strtol(at + 8, NULL, 10);
    free(st);
    return kb;
}

/* weights_release: a mapped tensor's pages leave the process (RssFile drops by about its size) and
 * read back the same; its neighbours' bytes are untouched; memory that is no file mapping (random
 * weights, which MADV_DONTNEED would zero) keeps its values. */
static void test_release(void **state)
{
    (void)state;
    enum { N = 4 << 20 }; /* 16 MiB of f32 */
    float *big = malloc((size_t)N * sizeof *big), small[5] = {1, 2, 3, 4, 5};
    for (int i = 0; i < N; i++) big[i] = (float)(i % 1000) - 0.5f;
    Tensor in[3] = {{"a", DT_F32, 1, {5}, small, sizeof small}, {"big", DT_F32, 1, {N}, big, (size_t)N * 4},
                    {"c", DT_F32, 1, {5}, small, sizeof small}};
    char *path = tu_path(tmp, "release.safetensors");
    RtError err;
    assert_true(safetensors_write(path, in, 3, &err));
    WeightSet *w;
    assert_true(weights_open(path, &w, &err));
    const Tensor *t = weights_find(w, "big"), *a = weights_find(w, "a"), *c = weights_find(w, "c");
    assert_memory_equal(t->data, big, t->nbytes); /* every page resident */
    long before = rss_file_kb();
    weights_release(w, t->data, t->nbytes);
    long after = rss_file_kb();
    assert_true(before - after >= 15 * 1024);
    assert_memory_equal(t->data, big, t->nbytes); /* read from the file again */
    assert_memory_equal(a->data, small, sizeof small);
    assert_memory_equal(c->data, small, sizeof small);
    weights_release(w, big, 64); /* not w's: nothing */
    assert_true(big[3] == 2.5f);
    weights_close(w);
    free(path);
    free(big);
    ModelSpec spec = tu_tiny_spec(DT_F32); /* one block of all its tensors, several pages */
    assert_true(weights_random(&spec, 3, &w, &err));
    for (int i = 0; i < weights_count(w); i++) assert_non_null(weights_data(w, weights_at(w, i), &err)); /* (made) */
    const Tensor *first = weights_at(w, 0), *last = weights_at(w, weights_count(w) - 1);
    size_t span = (size_t)((const char *)last->data + last->nbytes - (const char *)first->data);
    assert_true(span > 4 * 4096);
    char *keep = malloc(span);
    memcpy(keep, first->data, span);
    weights_release(w, first->data, span);
    assert_memory_equal(first->data, keep, span);
    free(keep);
    weights_close(w);
}

static void test_missing_path(void **state)
{
    (void)state;
    char *p = tu_path(tmp, "nothing.safetensors");
    WeightSet *w = (WeightSet *)1;
    RtError err;
    assert_false(weights_open(p, &w, &err));
    assert_null(w);
    assert_non_null(strstr(err.msg, "No such file"));
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_f32, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_bf16, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_f16, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_read_handmade, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_many_tensors_lookup, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_write_refuses_bad_input, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_write_replaces, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_sharded_via_index, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_sharded_via_directory, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_directory_single_file, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_missing_path, tu_setup, tu_teardown),
        cmocka_unit_test_setup_teardown(test_release, tu_setup, tu_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
