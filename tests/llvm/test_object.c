/* test_object.c — the optimised kernel module written as an object file: it exists, defines the
 * kernel symbol as code (nm), and the JIT-compiled twin still computes correctly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/llvm/llvm_test_util.h"

static void test_object_file(void **state) {
    CgJit *jit = tu_jit(cg_host_isa());
    CgKernelConfig cfg = cg_kernel_config_default(jit, DT_BF16);
    char path[512], err[512], cmd[1024], line[512];
    snprintf(path, sizeof path, "%s/llvm_object_kernel.o", MOEPPC_TEST_OUT_DIR);
    remove(path);
    const CgKernel *k = cg_jit_kernel(jit, &cfg, path, err, sizeof err);
    if (!k) fprintf(stderr, "%s\n", err);
    assert_non_null(k);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 0);
    snprintf(cmd, sizeof cmd, "nm '%s'", path);
    FILE *nm = popen(cmd, "r");
    assert_non_null(nm);
    bool found = false;
    while (fgets(line, sizeof line, nm)) {
        char want[96];
        snprintf(want, sizeof want, " T %s\n", k->symbol);
        found |= strstr(line, want) != NULL;
    }
    assert_int_equal(pclose(nm), 0);
    assert_true(found);
    /* Asking again for the cached kernel with a path still writes the file. */
    remove(path);
    assert_ptr_equal(cg_jit_kernel(jit, &cfg, path, err, sizeof err), k);
    assert_int_equal(stat(path, &st), 0);
    /* An unwritable path is an error with a message, not a crash. */
    assert_null(cg_jit_kernel(jit, &cfg, "/nonexistent-dir/x.o", err, sizeof err));
    assert_non_null(strstr(err, "/nonexistent-dir/x.o"));
}

static void test_bad_config(void **state) {
    CgJit *jit = tu_jit(cg_host_isa());
    char err[512];
    CgKernelConfig cfg = {DT_F64, 4, 16, 1, false, false, false};
    assert_null(cg_jit_kernel(jit, &cfg, NULL, err, sizeof err));
    assert_non_null(strstr(err, "f64"));
    cfg = (CgKernelConfig){DT_F32, 4, 3, 1, false, false, false};
    assert_null(cg_jit_kernel(jit, &cfg, NULL, err, sizeof err));
    assert_non_null(strstr(err, "invalid"));
}

static int teardown(void **state) {
    tu_jits_free();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_object_file), cmocka_unit_test(test_bad_config)};
    return cmocka_run_group_tests(tests, NULL, teardown);
}
