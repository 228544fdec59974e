/* test_jit_cache.c — MOEPPC_JIT_CACHE: the objects a JIT compiles are kept, a second JIT reads them
 * back instead of compiling (many at once and one at a time) and its kernels compute what the first's
 * do, bit for bit; a file whose key differs (damaged, or another kernel's) is a miss, written again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codegen/llvm/cg_internal.h"
#include "tests/llvm/llvm_test_util.h"

static char dir[] = "/tmp/moeppc-jit-XXXXXX";

static int setup(void **state) {
    (void)state;
    if (!mkdtemp(dir)) return -1;
    return setenv("MOEPPC_JIT_CACHE", dir, 1);
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static CgJit *new_jit(void) {
    char err[512];
    CgJit *jit = cg_jit_new(CG_ISA_AUTO, err, sizeof err);
    if (!jit) fail_msg("%s", err);
    return jit;
}

enum { N_JOBS = 3 };

/* The default kernel of each dtype, compiled at once; kernel k of them in out[k]. */
static void compile_defaults(CgJit *jit, const CgKernel *out[N_JOBS]) {
    static const moe_dtype dts[N_JOBS] = {DT_F32, DT_BF16, DT_F16};
    CgJitJob jobs[N_JOBS];
    memset(jobs, 0, sizeof jobs);
    for (int k = 0; k < N_JOBS; k++) jobs[k].gemm = true, jobs[k].cfg = cg_kernel_config_default(jit, dts[k]);
    char err[512];
    if (!cg_jit_compile_many(jit, jobs, N_JOBS, 2, err, sizeof err)) fail_msg("%s", err);
    for (int k = 0; k < N_JOBS; k++) {
        out[k] = cg_jit_kernel(jit, &jobs[k].cfg, NULL, err, sizeof err);
        assert_non_null(out[k]);
    }
}

/* C = A B^T by kern (M = 13, N = 37, K = 29), into c. */
static void run_gemm(const CgKernel *kern, float *c) {
    enum { M = 13, N = 37, K = 29 };
    moe_rng r;
    rng_seed(&r, 7);
    float a[M * K], w[N * K];
    tu_random(&r, a, M * K);
    tu_random(&r, w, N * K);
    void *wd = tu_to_dtype(w, N * K, kern->cfg.b_dtype);
    CgPackedB pb;
    cg_pack_b(&pb, wd, kern->cfg.b_dtype, N, K, kern->cfg.nr, cg_kernel_kpair(&kern->cfg));
    CgBlocking blk = cg_blocking_default(kern);
    CgWork work = {0};
    cg_gemm(kern, &blk, NULL, &work, M, a, K, &pb, c, N, false);
    cg_work_free(&work);
    cg_packed_b_free(&pb);
    free(wd);
}

static int files(void) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += strstr(e->d_name, ".jit") != NULL;
    if (d) closedir(d);
    return n;
}

/* The path of the n-th kept object (readdir's order). */
static void nth_file(int n, char *path, size_t len) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    path[0] = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strstr(e->d_name, ".jit") && n-- == 0) snprintf(path, len, "%s/%s", dir, e->d_name);
    closedir(d);
    assert_true(path[0]);
}

/* The byte at offset at from whence of path changed. */
static void flip(const char *path, long at, int whence) {
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, at, whence), 0);
    int c = fgetc(f);
    assert_int_equal(fseek(f, at, whence), 0);
    fputc(c ^ 0x01, f);
    fclose(f);
}

static void test_kept_then_read(void **state) {
    (void)state;
    CgJit *a = new_jit(), *b = new_jit();
    const CgKernel *ka[N_JOBS], *kb[N_JOBS];
    int hits, kept;
    compile_defaults(a, ka);
    cg_jit_cache_counts(a, &hits, &kept);
    assert_int_equal(hits, 0);
    assert_int_equal(kept, N_JOBS);
    assert_int_equal(files(), N_JOBS);
    compile_defaults(b, kb);
    cg_jit_cache_counts(b, &hits, &kept);
    assert_int_equal(hits, N_JOBS);
    assert_int_equal(kept, 0);
    for (int k = 0; k < N_JOBS; k++) {
        float ca[13 * 37], cb[13 * 37];
        run_gemm(ka[k], ca);
        run_gemm(kb[k], cb);
        assert_memory_equal(ca, cb, sizeof ca);
    }
    /* one at a time (cg_jit_kernel): another tile, kept by a, read by b */
    CgKernelConfig cfg = {DT_F32, 4, 16, 1, false, false, false};
    char err[512];
    const CgKernel *one_a = cg_jit_kernel(a, &cfg, NULL, err, sizeof err), *one_b;
    assert_non_null(one_a);
    one_b = cg_jit_kernel(b, &cfg, NULL, err, sizeof err);
    assert_non_null(one_b);
    cg_jit_cache_counts(b, &hits, &kept);
    assert_int_equal(hits, N_JOBS + 1);
    float ca[13 * 37], cb[13 * 37];
    run_gemm(one_a, ca);
    run_gemm(one_b, cb);
    assert_memory_equal(ca, cb, sizeof ca);
    cg_jit_free(a);
    cg_jit_free(b);
}

/* A byte of one file's key changed, another file replaced by a third's, the third cut short, a byte
 * of the fourth's object changed: four misses, each written again. */
static void test_damaged_files_are_misses(void **state) {
    (void)state;
    CgJit *a = new_jit();
    const CgKernel *k[N_JOBS];
    compile_defaults(a, k); /* (kept by the test before) */
    cg_jit_free(a);
    assert_int_equal(files(), N_JOBS + 1);
    char p0[4200], p1[4200], p2[4200], p3[4200], cmd[9000];
    nth_file(0, p0, sizeof p0);
    nth_file(1, p1, sizeof p1);
    nth_file(2, p2, sizeof p2);
    nth_file(3, p3, sizeof p3);
    flip(p0, 60, SEEK_SET); /* (in the key: the header is shorter) */
    flip(p3, -1, SEEK_END);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s' && truncate -s -16 '%s'", p2, p1, p2);
    assert_int_equal(system(cmd), 0);
    CgJit *b = new_jit();
    const CgKernel *kb[N_JOBS];
    compile_defaults(b, kb);
    char err[512];
    CgKernelConfig cfg = {DT_F32, 4, 16, 1, false, false, false};
    assert_non_null(cg_jit_kernel(b, &cfg, NULL, err, sizeof err));
    int hits, kept;
    cg_jit_cache_counts(b, &hits, &kept);
    assert_int_equal(hits, N_JOBS + 1 - 4);
    assert_int_equal(kept, 4);
    cg_jit_free(b);
    CgJit *d = new_jit();
    compile_defaults(d, kb);
    assert_non_null(cg_jit_kernel(d, &cfg, NULL, err, sizeof err));
    cg_jit_cache_counts(d, &hits, &kept);
    assert_int_equal(hits, N_JOBS + 1);
    assert_int_equal(kept, 0);
    cg_jit_free(d);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kept_then_read),
        cmocka_unit_test(test_damaged_files_are_misses),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
