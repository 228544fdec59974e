/* test_hash.c — hash_xxh64 (support.c), what the panel cache's checksums are: the values libxxhash
 * 0.8.1 gives for a fixed buffer (lengths across every tail of the algorithm: under 4, 8 and 32
 * bytes, the 32-byte stripes; seeds 0, 1 and a large one), the published "abc", and, where the machine
 * has libxxhash.so.0, its XXH64 on random buffers at every alignment. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "support/support.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static void test_vectors(void **state)
{
    (void)state;
    static const struct {
        size_t   n;
        uint64_t seed, want;
    } v[] = {
        {0, 0x0ull, 0xef46db3751d8e999ull},
        {0, 0x1ull, 0xd5afba1336a3be4bull},
        {0, 0x9e3779b97f4a7c15ull, 0xc4349fc93c010000ull},
        {1, 0x0ull, 0xa96c7f0ce858bbb7ull},
        {1, 0x1ull, 0x0766883a0a47a96aull},
        {1, 0x9e3779b97f4a7c15ull, 0x585882422a6165e7ull},
        {3, 0x0ull, 0xbed43740ee6332bbull},
        {3, 0x1ull, 0x95ba63f005e6e6caull},
        {3, 0x9e3779b97f4a7c15ull, 0x45fa1406538fa168ull},
        {4, 0x0ull, 0xfa212ae44b3bb23dull},
        {4, 0x1ull, 0x319607b5ca9d59d4ull},
        {4, 0x9e3779b97f4a7c15ull, 0xa65107f22943365aull},
        {7, 0x0ull, 0x2744460dd675d2c0ull},
        {7, 0x1ull, 0x0047cdce49d4bc99ull},
        {7, 0x9e3779b97f4a7c15ull, 0xc9b637e2c4599de2ull},
        {8, 0x0ull, 0x994b676b71ce94ddull},
        {8, 0x1ull, 0xc14d78e582fe5026ull},
        {8, 0x9e3779b97f4a7c15ull, 0xce592d5f53e192ecull},
        {15, 0x0ull, 0x09e6451ed2ff8b1dull},
        {15, 0x1ull, 0x40a4206cc723cce4ull},
        {15, 0x9e3779b97f4a7c15ull, 0x47a857d1f90c35e1ull},
        {31, 0x0ull, 0x6711d55e306b5d8full},
        {31, 0x1ull, 0xe811d10b03941e82ull},
        {31, 0x9e3779b97f4a7c15ull, 0x24c4e99ab0404b5eull},
        {32, 0x0ull, 0x07f7b8e3bc5d6e25ull},
        {32, 0x1ull, 0xdf4f0f6ea84ebbcaull},
        {32, 0x9e3779b97f4a7c15ull, 0x046e99bbda1a814bull},
        {33, 0x0ull, 0x09f85eeb4e1cbe9full},
        {33, 0x1ull, 0x489f1772049e476cull},
        {33, 0x9e3779b97f4a7c15ull, 0xd7fe2bfee6e4cdedull},
        {63, 0x0ull, 0xb7c9968c066cb6a5ull},
        {63, 0x1ull, 0xbe65bc64322f219bull},
        {63, 0x9e3779b97f4a7c15ull, 0xbd457f9ea47180c8ull},
        {100, 0x0ull, 0x9ddada11d3dc2d8full},
        {100, 0x1ull, 0xe6a0d25e6e0a7f2aull},
        {100, 0x9e3779b97f4a7c15ull, 0x35546bd9a4779ae4ull},
        {255, 0x0ull, 0x15a6db05d4e83df4ull},
        {255, 0x1ull, 0xbeff7578626dae08ull},
        {255, 0x9e3779b97f4a7c15ull, 0xf91cb247d93dfe82ull},
    };
    unsigned char b[256];
    for (int i = 0; i < 256; i++) b[i] = (unsigned char)(i * 131 + 7);
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint64_t got = hash_xxh64(b, v[i].n, v[i].seed);
        if (got != v[i].want)
            fail_msg("XXH64 of %zu bytes, seed %llx: %016llx, libxxhash %016llx", v[i].n,
                     (unsigned long long)v[i].seed, (unsigned long long)got, (unsigned long long)v[i].want);
    }
    assert_true(hash_xxh64("abc", 3, 0) == 0x44bc2cf5ad770999ull);
    assert_true(hash_xxh64("", 0, 0) == 0xef46db3751d8e999ull);
}

static void test_against_libxxhash(void **state)
{
    (void)state;
    void *lib = dlopen("libxxhash.so.0", RTLD_NOW | RTLD_LOCAL);
    if (!lib) skip(); /* (only the vectors, then) */
    unsigned long long (*xxh64)(const void *, size_t, unsigned long long);
    *(void **)&xxh64 = dlsym(lib, "XXH64");
    assert_non_null(xxh64);
    moe_rng r;
    rng_seed(&r, 7);
    enum { N = 1 << 16 };
    unsigned char *b = malloc(N + 8);
    for (size_t i = 0; i < N + 8; i++) b[i] = (unsigned char)rng_next(&r);
    for (int k = 0; k < 2000; k++) {
        size_t at = (size_t)(rng_next(&r) % 8), n = k < 200 ? (size_t)k : (size_t)(rng_next(&r) % N);
        uint64_t seed = k % 3 ? rng_next(&r) : (uint64_t)k;
        if (hash_xxh64(b + at, n, seed) != xxh64(b + at, n, seed))
            fail_msg("XXH64 of %zu bytes at +%zu, seed %llx differs from libxxhash's", n, at, (unsigned long long)seed);
    }
    free(b);
    dlclose(lib);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_against_libxxhash),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
