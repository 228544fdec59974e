/* test_cpu_features.c — the start-time CPU check of built executables and emitted libraries
 * (runtime/cpu/cpu_features.c, CPUID) against LLVM's own reading of this host's features. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "runtime/cpu/cpu.h"

#include <llvm-c/Core.h>
#include <llvm-c/TargetMachine.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every feature LLVM reports on or off for this host that the table knows reads the same from CPUID. */
static void test_features_match_llvm(void **state)
{
    (void)state;
    char *host = LLVMGetHostCPUFeatures();
    int known = 0, on = 0;
    for (char *p = host; p && *p;) {
        char *e = strchr(p, ',');
        char name[64];
        size_t n = e ? (size_t)(e - p) : strlen(p);
        snprintf(name, sizeof name, "%.*s", (int)n - 1, p + 1);
        int got = cpu_feature(name);
        if (got >= 0) {
            if (got != (*p == '+')) fail_msg("%s: LLVM says %c, CPUID %d", name, *p, got);
            known++;
            on += got;
        }
        p = e ? e + 1 : NULL;
    }
#if defined(__x86_64__)
    assert_true(known >= 30); /* the table is read at all */
    assert_true(on >= 4);     /* sse, sse2, cmov, mmx at least */
#endif
    char msg[256];
    assert_true(cpu_runs_features(host, msg, sizeof msg));
    assert_string_equal(msg, "");
    LLVMDisposeMessage(host);
    assert_int_equal(cpu_feature("no-such-feature"), -1);
}

/* A list asking for what this CPU lacks is refused, each missing feature named once; unknown
 * features are not checked; "-avx512f" / "-avx" drop what depends on them. */
static void test_missing_features_are_named(void **state)
{
    (void)state;
#if defined(__x86_64__)
    static const char *candidates[] = {"avx512vp2intersect", "avx512fp16", "xop", "fma4", "avx512bf16", "avx512f",
                                       "sha", "gfni", "avx2"};
    const char *absent = NULL;
    for (size_t k = 0; k < sizeof candidates / sizeof *candidates && !absent; k++)
        if (cpu_feature(candidates[k]) == 0) absent = candidates[k];
    if (!absent) skip();
    char list[128], msg[256];
    snprintf(list, sizeof list, "+sse2,+64bit,+%s,+frobnicate", absent);
    assert_false(cpu_runs_features(list, msg, sizeof msg));
    assert_string_equal(msg, absent);
#endif
    setenv("MOEPPC_CPU_HIDE", "sse2,avx2", 1);
    char msg2[256];
    assert_int_equal(cpu_feature("sse2"), 0);
    assert_false(cpu_runs_features("+sse,+sse2,+cmov,+avx2", msg2, sizeof msg2));
    assert_string_equal(msg2, "sse2, avx2");
    assert_false(cpu_runs_features("+sse2,+avx2,+avx512f,-avx512f", msg2, sizeof msg2));
    assert_string_equal(msg2, "sse2, avx2");
    /* capped below AVX: avx2 is not needed any more; sse2 still is */
    assert_false(cpu_runs_features("+sse2,+avx2,+fma,-avx", msg2, sizeof msg2));
    assert_string_equal(msg2, "sse2");
    assert_true(cpu_runs_features("+avx2,+avx512bf16,-avx", msg2, sizeof msg2));
    unsetenv("MOEPPC_CPU_HIDE");
    char tiny[8]; /* a message too short to hold them still says no */
    setenv("MOEPPC_CPU_HIDE", "sse2,cmov", 1);
    assert_false(cpu_runs_features("+cmov,+sse2", tiny, sizeof tiny));
    unsetenv("MOEPPC_CPU_HIDE");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_features_match_llvm),
        cmocka_unit_test(test_missing_features_are_named),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
