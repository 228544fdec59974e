/* test_malformed.c — every kind of broken checkpoint is refused with a message naming the problem,
 * never a crash; and a fuzz loop over a valid header. */
#include "tests/weights/util.h"

#include <stdlib.h>
#include <string.h>


/* Open PATH, expect failure, and expect each of the NULL-terminated strings in the message. */
static void expect_fail(const char *path, const char *const *want)
{
    WeightSet *w = NULL;
    RtError err;
    bool ok = weights_open(path, &w, &err);
    if (ok) weights_close(w);
    assert_false(ok);
    assert_null(w);
    assert_true(strncmp(err.msg, path, strlen(path)) == 0 || strstr(err.msg, "error:"));
    for (int i = 0; want[i]; i++) {
        if (!strstr(err.msg, want[i])) fail_msg("message '%s' lacks '%s'", err.msg, want[i]);
    }
    for (const char *c = err.msg; *c; c++) /* one printable line, whatever the names hold */
        if ((unsigned char)*c < 0x20 || *c == 0x7f) fail_msg("message '%s' holds the control byte 0x%02x", err.msg, *c);
}

#define EXPECT_FAIL(path, ...) expect_fail(path, (const char *const[]){__VA_ARGS__, NULL})

static unsigned char zeros[64];

/* A file with this header and 64 zero data bytes. */
static void header_case(const char *header, const char *const *want)
{
    char *p = tu_path(tmp, "bad.safetensors");
    tu_write_st(p, header, zeros, sizeof zeros);
    expect_fail(p, want);
    free(p);
}

#define HEADER_CASE(header, ...) header_case(header, (const char *const[]){__VA_ARGS__, NULL})

static void test_empty_file(void **state)
{
    (void)state;
    char *p = tu_path(tmp, "e.safetensors");
    tu_write_file(p, "", 0);
    EXPECT_FAIL(p, "e.safetensors: error:", "empty");
    free(p);
}

static void test_five_byte_file(void **state)
{
    (void)state;
    char *p = tu_path(tmp, "five.safetensors");
    tu_write_file(p, "\x02\0\0\0\0", 5);
    EXPECT_FAIL(p, "5 bytes", "at least 8");
    free(p);
}

static void test_header_length_past_eof(void **state)
{
    (void)state;
    char *p = tu_path(tmp, "h.safetensors");
    tu_write_st_raw(p, 1000, "{}", NULL, 0);
    EXPECT_FAIL(p, "header length 1000", "past the end");
    free(p);
}

static void test_header_length_huge(void **state)
{
    (void)state;
    char *p = tu_path(tmp, "h.safetensors");
    tu_write_st_raw(p, (uint64_t)1 << 63, "{}", NULL, 0);
    EXPECT_FAIL(p, "header length 9223372036854775808", "limit");
    free(p);
}

static void test_header_not_json(void **state)
{
    (void)state;
    HEADER_CASE("{\"x\": nope}", "not valid JSON", "header byte 6");
    HEADER_CASE("{\"x\":{}} trailing", "not valid JSON", "after the JSON");
    HEADER_CASE("", "not valid JSON");
}

static void test_header_json_array(void **state)
{
    (void)state;
    HEADER_CASE("[1, 2, 3]", "expected a JSON object", "array");
}

static void test_entry_not_object(void **state)
{
    (void)state;
    HEADER_CASE("{\"x\": 5}", "tensor 'x'", "expected an object", "found 5");
}

static void test_missing_dtype(void **state)
{
    (void)state;
    HEADER_CASE("{\"x\":{\"shape\":[2],\"data_offsets\":[0,8]}}", "tensor 'x'", "dtype", "found nothing");
}

static void test_unknown_dtype(void **state)
{
    (void)state;
    HEADER_CASE("{\"x\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", "tensor 'x'", "F64",
                "expected dtype F32, BF16 or F16");
    HEADER_CASE("{\"y\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}", "tensor 'y'", "I64");
}

static void test_shape_negative(void **state)
{
    (void)state;
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,8]}}", "tensor 'x'",
                "non-negative", "found -1");
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", "tensor 'x'", "2.5");
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"shape\":\"2\",\"data_offsets\":[0,8]}}", "tensor 'x'", "shape");
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", "tensor 'x'", "shape", "nothing");
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", "at most 4",
                "found 5");
}

static void test_offsets_end_before_begin(void **state)
{
    (void)state;
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,8]}}", "tensor 'x'",
                "end >= begin", "[16, 8]");
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", "tensor 'x'", "two");
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"shape\":[2]}}", "tensor 'x'", "data_offsets");
}

static void test_offsets_past_data(void **state)
{
    (void)state;
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[60,68]}}", "tensor 'x'",
                "data region (64 bytes)", "end 68");
}

static void test_size_mismatch(void **state)
{
    (void)state;
    HEADER_CASE("{\"x\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[0,12]}}", "tensor 'x'",
                "expected 16 bytes for bf16 [2, 4]", "spanning 12");
    /* A shape whose byte count overflows int64. */
    HEADER_CASE("{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
                "tensor 'x'", "2^63");
}

static void test_overlapping_offsets(void **state)
{
    (void)state;
    HEADER_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",
                "overlap", "'a'", "'b'");
}

static void test_duplicate_name(void **state)
{
    (void)state;
    HEADER_CASE("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                "tensor 'a'", "twice");
}

static void test_bad_metadata(void **state)
{
    (void)state;
    HEADER_CASE("{\"__metadata__\":{\"format\":1}}", "__metadata__", "format", "string");
}

/* Names are shown escaped: a checkpoint cannot write escape sequences to the terminal (found by
 * fuzzing). */
static void test_control_bytes_in_names(void **state)
{
    (void)state;
    HEADER_CASE("{\"a\\u001b[2J\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]}}", "tensor 'a\\x1b[2J'",
                "I64");
    HEADER_CASE("{\"a\":{\"dtype\":\"F32\\n\",\"shape\":[1],\"data_offsets\":[0,4]}}", "found F32\\x0a");
}

/* ---- sharded sets ---- */
static void write_shard(const char *name, const char *tensor)
{
    float v[2] = {1, 2};
    Tensor t = {(char *)tensor, DT_F32, 1, {2}, v, 8};
    char *p = tu_path(tmp, name);
    RtError err;
    assert_true(safetensors_write(p, &t, 1, &err));
    free(p);
}

static void index_case(const char *map, const char *const *want)
{
    char *idx = tu_path(tmp, "model.safetensors.index.json");
    char json[512];
    snprintf(json, sizeof json, "{\"metadata\":{},\"weight_map\":{%s}}", map);
    tu_write_file(idx, json, strlen(json));
    expect_fail(idx, want);
    expect_fail(tmp, want);     /* the same through the directory */
    free(idx);
}

#define INDEX_CASE(map, ...) index_case(map, (const char *const[]){__VA_ARGS__, NULL})

static void test_index_missing_shard(void **state)
{
    (void)state;
    write_shard("s1.safetensors", "a");
    INDEX_CASE("\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"", "shard 's2.safetensors'", "'b'",
               "No such file");
}

static void test_index_dotdot(void **state)
{
    (void)state;
    write_shard("s1.safetensors", "a");
    INDEX_CASE("\"a\":\"../s1.safetensors\"", "tensor 'a'", "'..'", "../s1.safetensors");
    INDEX_CASE("\"a\":\"sub/s1.safetensors\"", "tensor 'a'", "sub/s1.safetensors");
}

static void test_index_control_bytes(void **state)
{
    (void)state;
    INDEX_CASE("\"a\\n\":\"s\\u0007.safetensors\"", "shard 's\\x07.safetensors'", "tensor 'a\\x0a'");
}

static void test_index_entry_missing_from_shard(void **state)
{
    (void)state;
    write_shard("s1.safetensors", "a");
    write_shard("s2.safetensors", "b");
    INDEX_CASE("\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\"", "tensor 'b'", "s1.safetensors", "not found");
}

static void test_index_broken_shard(void **state)
{
    (void)state;
    char *p = tu_path(tmp, "s1.safetensors");
    tu_write_file(p, "abc", 3);
    INDEX_CASE("\"a\":\"s1.safetensors\"", "s1.safetensors: error:", "3 bytes");
    free(p);
}

static void test_index_bad_json(void **state)
{
    (void)state;
    char *idx = tu_path(tmp, "x.index.json");
    tu_write_file(idx, "{\"weight_map\": [1]}", 19);
    EXPECT_FAIL(idx, "weight_map", "array");
    tu_write_file(idx, "{\"weight_map\": {", 16);
    EXPECT_FAIL(idx, "not valid JSON");
    tu_write_file(idx, "{\"weight_map\": {\"a\": 3}}", 24);
    EXPECT_FAIL(idx, "tensor 'a'", "found 3");
    free(idx);
}

/* ---- fuzz ---- */
/* Flip random bytes of a valid file's length field and header 2000 times: weights_open must
 * either succeed with tensors inside the file or fail cleanly (ASan/UBSan builds check the rest). */
static void test_fuzz_header(void **state)
{
    (void)state;
    float v[12] = {0};
    Tensor t[3] = {{"model.a", DT_F32, 2, {2, 3}, v, 24}, {"model.b", DT_BF16, 1, {4}, v, 8},
                   {"c", DT_F16, 3, {1, 2, 2}, v, 8}};
    char *good = tu_path(tmp, "good.safetensors"), *bad = tu_path(tmp, "fuzz.safetensors");
    RtError err;
    static const char *const meta[] = {"format", "pt", NULL};
    assert_true(safetensors_write_meta(good, t, 3, meta, &err));
    size_t len;
    unsigned char *orig = (unsigned char *)file_read_all(good, &len);
    size_t hend = 8 + (size_t)orig[0] + ((size_t)orig[1] << 8);
    unsigned char *buf = xmalloc(len);
    moe_rng r;
    rng_seed(&r, 12345);
    int opened = 0;
    for (int it = 0; it < 2000; it++) {
        memcpy(buf, orig, len);
        int flips = 1 + (int)(rng_next(&r) % 4);
        for (int k = 0; k < flips; k++) {
            size_t at = rng_next(&r) % hend;
            if (rng_next(&r) & 1) buf[at] = (unsigned char)rng_next(&r);             /* any byte  */
            else buf[at] ^= (unsigned char)(1u << (rng_next(&r) % 8));               /* one bit   */
        }
        size_t n = (it % 10 == 9) ? (size_t)(rng_next(&r) % len) : len;    /* sometimes truncated too */
        tu_write_file(bad, buf, n);
        WeightSet *w;
        if (weights_open(bad, &w, &err)) {
            opened++;
            for (int i = 0; i < weights_count(w); i++) {
                const Tensor *x = weights_at(w, i);
                volatile unsigned char sink = 0;
                for (size_t j = 0; j < x->nbytes; j++) sink ^= ((const unsigned char *)x->data)[j];
                (void)sink;
            }
            weights_close(w);
        } else {
            assert_true(strstr(err.msg, "error:") != NULL);
        }
    }
    print_message("fuzz: %d of 2000 mutated files opened\n", opened);
    free(orig), free(buf), free(good), free(bad);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, tu_setup, tu_teardown)
    const struct CMUnitTest tests[] = {
        T(test_empty_file), T(test_five_byte_file), T(test_header_length_past_eof), T(test_header_length_huge),
        T(test_header_not_json), T(test_header_json_array), T(test_entry_not_object), T(test_missing_dtype),
        T(test_unknown_dtype), T(test_shape_negative), T(test_offsets_end_before_begin),
        T(test_offsets_past_data), T(test_size_mismatch), T(test_overlapping_offsets), T(test_duplicate_name),
        T(test_bad_metadata), T(test_control_bytes_in_names), T(test_index_missing_shard), T(test_index_dotdot),
        T(test_index_control_bytes),
        T(test_index_entry_missing_from_shard), T(test_index_broken_shard), T(test_index_bad_json),
        T(test_fuzz_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
