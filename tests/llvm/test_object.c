/* test_object.c — the optimised kernel module written as an object file: it exists, defines the
 * kernel symbol as code (nm), and the JIT-compiled twin still computes correctly; the kernels' forms
 * and the vector features a tuning database is matched on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codegen/llvm/cg_internal.h"
#include "tests/llvm/llvm_test_util.h"

#include <llvm-c/Transforms/PassBuilder.h>

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

/* Prefetches of B in the kernel's IR for cfg on the host's target with its ISA set to isa (only the
 * IR is built: AVX-512's needs no AVX-512 host); *spread (if given): whether the main loop's first
 * prefetch comes before its last product (not all of them after the U steps). */
static int prefetches_placed(cg_isa isa, CgKernelConfig cfg, bool *spread) {
    CgTarget t = *cg_jit_target(tu_jit(CG_ISA_SSE));
    t.isa = isa;
    t.vec_width = isa == CG_ISA_AVX512 ? 16 : isa == CG_ISA_AVX2 ? 8 : 4;
    t.has_fma = t.has_f16c = isa >= CG_ISA_AVX2;
    t.has_bf16_dot = cfg.a_bf16;
    LLVMContextRef ctx = LLVMContextCreate();
    LLVMModuleRef mod = cg_build_kernel_module(ctx, &t, &cfg, "k");
    char *ir = LLVMPrintModuleToString(mod), *at = ir;
    int n = 0;
    while ((at = strstr(at, "call void @llvm.prefetch"))) n++, at++;
    if (spread) {
        char *body = strstr(ir, "\nmain:"), *end = body ? strstr(body, "\nmid:") : NULL;
        assert_non_null(end);
        *end = 0;
        char *first = strstr(body, "call void @llvm.prefetch"), *last = NULL;
        for (char *p = body; (p = strstr(p, cfg.a_bf16 ? "dpbf16ps" : "@llvm.fma")); p++) last = p;
        assert_non_null(first);
        assert_non_null(last);
        *spread = first < last;
    }
    LLVMDisposeMessage(ir);
    LLVMDisposeModule(mod);
    LLVMContextDispose(ctx);
    return n;
}

static int prefetches(cg_isa isa, CgKernelConfig cfg) { return prefetches_placed(isa, cfg, NULL); }

static CgKernelConfig tile(moe_dtype dt, int mr, int nr, int unroll, bool dot) {
    return (CgKernelConfig){.b_dtype = dt, .mr = mr, .nr = nr, .k_unroll = unroll, .a_bf16 = dot};
}

/* kernel_ir.c's B prefetch: each main-loop iteration over 16-bit weights (on AVX-512 over f32 too)
 * touches every 64-byte line its U k steps of B span (NR x 2 or 4 bytes a step; a k pair's twice);
 * the dot product's too (k pairs); f32 weights' loops on SSE and AVX2 do not (AMX prefetches per k
 * block, in its own loop). */
static void test_b_prefetch(void **state) {
    assert_int_equal(prefetches(CG_ISA_AVX2, tile(DT_BF16, 6, 16, 4, false)), 2);  /* 4 x 32 bytes */
    assert_int_equal(prefetches(CG_ISA_AVX2, tile(DT_F16, 1, 32, 8, false)), 8);   /* 8 x 64 */
    assert_int_equal(prefetches(CG_ISA_AVX2, tile(DT_BF16, 2, 16, 1, false)), 1);  /* 32: one line */
    assert_int_equal(prefetches(CG_ISA_SSE, tile(DT_BF16, 4, 8, 4, false)), 1);    /* 4 x 16 */
    assert_int_equal(prefetches(CG_ISA_SSE, tile(DT_F16, 4, 8, 3, false)), 1);     /* 3 x 16 */
    assert_int_equal(prefetches(CG_ISA_AVX2, tile(DT_F32, 6, 16, 4, false)), 0);
    assert_int_equal(prefetches(CG_ISA_SSE, tile(DT_F32, 4, 8, 4, false)), 0);
    assert_int_equal(prefetches(CG_ISA_AVX512, tile(DT_BF16, 8, 48, 4, false)), 6);  /* 4 x 96 */
    assert_int_equal(prefetches(CG_ISA_AVX512, tile(DT_F32, 8, 48, 4, false)), 12);  /* 4 x 192 */
    assert_int_equal(prefetches(CG_ISA_AVX512, tile(DT_F32, 2, 16, 1, false)), 1);   /* 64 */
    CgKernelConfig kp = tile(DT_BF16, 4, 32, 4, false);                              /* AMX's edges */
    kp.kpair_b = true;
    assert_int_equal(prefetches(CG_ISA_AVX512, kp), 8);                              /* 4 pairs x 128 */
    assert_int_equal(prefetches(CG_ISA_AVX512, tile(DT_BF16, 8, 32, 4, true)), 8);   /* 4 pairs x 128 */
    assert_int_equal(prefetches(CG_ISA_AVX512, tile(DT_BF16, 8, 48, 4, true)), 12);  /* 4 pairs x 192 */
    assert_int_equal(prefetches(CG_ISA_AVX512, tile(DT_BF16, 1, 16, 1, true)), 1);   /* 1 pair x 64 */
    /* where: after each step its share where the iteration has a line a step or more (12 at once
     * after the last step held the stream back), else all after the last (AVX2's 2 in 4 steps) */
    bool spread;
    assert_int_equal(prefetches_placed(CG_ISA_AVX512, tile(DT_BF16, 8, 48, 4, true), &spread), 12);
    assert_true(spread);
    assert_int_equal(prefetches_placed(CG_ISA_AVX512, tile(DT_F32, 8, 48, 4, false), &spread), 12);
    assert_true(spread);
    assert_int_equal(prefetches_placed(CG_ISA_AVX2, tile(DT_BF16, 6, 16, 4, false), &spread), 2);
    assert_false(spread);
}

/* cg_kernel_form: AVX-512 runs bf16 weights times f32 A in k pairs (and packs them so); the dot
 * product, AMX, f32 and f16 weights and the 16-register ISAs keep their form. */
static void test_kernel_form(void **state) {
    CgTarget t = *cg_jit_target(tu_jit(CG_ISA_SSE));
    t.isa = CG_ISA_AVX512;
    CgKernelConfig bf = tile(DT_BF16, 8, 48, 4, false), f = cg_kernel_form(&t, bf);
    assert_true(f.kpair_b && !f.a_bf16 && !f.amx && f.mr == 8 && f.nr == 48 && f.k_unroll == 4);
    assert_true(cg_kernel_kpair(&f) && !cg_kernel_kpair(&bf));
    assert_false(cg_kernel_form(&t, tile(DT_F32, 8, 48, 4, false)).kpair_b);
    assert_false(cg_kernel_form(&t, tile(DT_F16, 8, 48, 4, false)).kpair_b);
    assert_false(cg_kernel_form(&t, tile(DT_BF16, 8, 32, 4, true)).kpair_b);
    assert_false(cg_kernel_form(&t, cg_kernel_config_amx(32, 32)).kpair_b);
    for (cg_isa isa = CG_ISA_SSE; isa <= CG_ISA_AVX2; isa++) {
        t.isa = isa;
        assert_false(cg_kernel_form(&t, tile(DT_BF16, 6, 16, 4, false)).kpair_b);
    }
}

/* The vector registers an AVX-512 kernel for cfg spills to the stack (instructions naming a zmm and
 * %rsp in its assembly), compiled as the JIT compiles it (O3) for `cpu` with AVX-512 (and the dot
 * product), whatever the host: "generic" is what LLVM 14 names a Zen 5, skylake-avx512 an Intel one. */
static int zmm_spills(const char *cpu, CgKernelConfig cfg) {
    CgTarget t = *cg_jit_target(tu_jit(CG_ISA_SSE));
    char features[] = "+avx512f,+avx512bw,+avx512dq,+avx512vl,+avx512cd,+avx512bf16,+avx2,+avx,+fma,+f16c,+bmi2";
    snprintf(t.cpu, sizeof t.cpu, "%s", cpu);
    t.features = features, t.isa = CG_ISA_AVX512, t.vec_width = 16;
    t.has_fma = t.has_f16c = true, t.has_bf16_dot = cfg.a_bf16, t.has_amx = false;
    char err[256];
    LLVMTargetMachineRef tm = cg_target_machine(&t, true, err, sizeof err);
    assert_non_null(tm);
    LLVMContextRef ctx = LLVMContextCreate();
    LLVMModuleRef mod = cg_build_kernel_module(ctx, &t, &cfg, "k");
    char *triple = LLVMGetTargetMachineTriple(tm);
    LLVMTargetDataRef layout = LLVMCreateTargetDataLayout(tm);
    char *layout_str = LLVMCopyStringRepOfTargetData(layout);
    LLVMSetTarget(mod, triple), LLVMSetDataLayout(mod, layout_str);
    LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
    assert_null(LLVMRunPasses(mod, "default<O3>", tm, opts));
    char *msg = NULL;
    LLVMMemoryBufferRef asm_buf = NULL;
    if (LLVMTargetMachineEmitToMemoryBuffer(tm, mod, LLVMAssemblyFile, &msg, &asm_buf)) fprintf(stderr, "%s\n", msg);
    assert_non_null(asm_buf);
    size_t size = LLVMGetBufferSize(asm_buf);
    char *text = malloc(size + 1);
    memcpy(text, LLVMGetBufferStart(asm_buf), size);
    text[size] = 0;
    int n = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) n += strstr(line, "zmm") && strstr(line, "rsp");
    free(text);
    LLVMDisposeMemoryBuffer(asm_buf);
    LLVMDisposePassBuilderOptions(opts);
    LLVMDisposeMessage(layout_str);
    LLVMDisposeTargetData(layout);
    LLVMDisposeMessage(triple);
    LLVMDisposeModule(mod);
    LLVMContextDispose(ctx);
    LLVMDisposeTargetMachine(tm);
    return n;
}

/* AVX-512's 8 x 48 tiles keep their 24 accumulators and operands in the 32 vector registers: f32
 * weights, the dot product, and bf16 in k pairs (whose high halves by an AND's mask had made LLVM 14
 * spill 50 times, 3 a k pair: 1.2x slower, kernel_ir.c emit_kpair_f32_step). */
/* The vector features a tuning database is matched on: the extensions the ISA keeps, sorted, once
 * each; what virtual machines of one CPU differ in (sha, rdpid, shstk) and what is off left out. */
static void test_vector_features(void **state) {
    (void)state;
    static const char *host = "+avx2,-avx512f,+sha,+fma,+avx512bw,+sse4.2,+f16c,+ssse3,+amx-tile,+avx,+rdpid,+avx512f,"
                              "+sse2,+fma,-avx512vl,+avxvnni";
    static const char *const want[3] = {"+sse2,+sse4.2,+ssse3", "+avx,+avx2,+avxvnni,+f16c,+fma,+sse2,+sse4.2,+ssse3",
                                        "+amx-tile,+avx,+avx2,+avx512bw,+avx512f,+avxvnni,+f16c,+fma,+sse2,+sse4.2,+ssse3"};
    static const cg_isa isas[3] = {CG_ISA_SSE, CG_ISA_AVX2, CG_ISA_AVX512};
    for (int i = 0; i < 3; i++) {
        char *v = cg_vector_features(host, isas[i]);
        assert_string_equal(v, want[i]);
        free(v);
    }
    char *a = cg_vector_features("+sse2,+avx,+shstk,+invpcid", CG_ISA_AVX2);
    char *b = cg_vector_features("+avx,+sse2,+pku", CG_ISA_AVX2);
    assert_string_equal(a, b);
    free(a), free(b);
    char *none = cg_vector_features("", CG_ISA_AVX512);
    assert_string_equal(none, "");
    free(none);
}

static void test_no_spills(void **state) {
    CgKernelConfig kp = tile(DT_BF16, 8, 48, 4, false);
    kp.kpair_b = true;
    static const char *const cpus[] = {"generic", "skylake-avx512"};
    for (int c = 0; c < 2; c++) {
        assert_int_equal(zmm_spills(cpus[c], kp), 0);
        assert_int_equal(zmm_spills(cpus[c], tile(DT_F32, 8, 48, 4, false)), 0);
    }
    assert_int_equal(zmm_spills("generic", tile(DT_BF16, 8, 48, 4, true)), 0);
}

/* The line of the perf map at path for sym: its address and size (false: none). */
static bool perf_map_line(const char *path, const char *sym, unsigned long long *addr, unsigned long long *size) {
    FILE *f = fopen(path, "r");
    char name[256];
    bool found = false;
    while (f && !found && fscanf(f, "%llx %llx %255s", addr, size, name) == 3) found = strcmp(name, sym) == 0;
    if (f) fclose(f);
    return found;
}

/* Whether [addr, addr + size) lies in one executable mapping of this process. */
static bool in_code(unsigned long long addr, unsigned long long size) {
    FILE *f = fopen("/proc/self/maps", "r");
    char line[512], perm[8];
    unsigned long long lo, hi;
    bool in = false;
    while (f && !in && fgets(line, sizeof line, f))
        in = sscanf(line, "%llx-%llx %7s", &lo, &hi, perm) == 3 && perm[2] == 'x' && addr >= lo && addr + size <= hi;
    if (f) fclose(f);
    return in;
}

/* MOEPPC_PERF_MAP=1: every kernel linked, one by one or many at once, gets a line of /tmp/perf-PID.map
 * naming its code (its address, its size from the object, within an executable mapping); without it
 * no file is written. */
static void test_perf_map(void **state) {
    char path[64], err[512];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
    remove(path);
    unsetenv("MOEPPC_PERF_MAP");
    CgJit *jit = cg_jit_new(cg_host_isa(), err, sizeof err);
    assert_non_null(jit);
    CgKernelConfig f32 = cg_kernel_config_default(jit, DT_F32), bf16 = cg_kernel_config_default(jit, DT_BF16);
    const CgKernel *k = cg_jit_kernel(jit, &f32, NULL, err, sizeof err);
    assert_non_null(k);
    struct stat st;
    assert_int_not_equal(stat(path, &st), 0); /* none asked for */
    setenv("MOEPPC_PERF_MAP", "1", 1);
    k = cg_jit_kernel(jit, &bf16, NULL, err, sizeof err);
    assert_non_null(k);
    CgJitJob job = {.gemm = true, .cfg = cg_kernel_config_default(jit, DT_F16)};
    assert_true(cg_jit_compile_many(jit, &job, 1, 1, err, sizeof err));
    unsigned long long addr, size;
    const char *sym[2] = {k->symbol, job.symbol};
    const void *fn[2] = {(const void *)(uintptr_t)k->fn, job.fn};
    for (int i = 0; i < 2; i++) {
        assert_true(perf_map_line(path, sym[i], &addr, &size));
        assert_true(addr == (unsigned long long)(uintptr_t)fn[i]);
        assert_true(size > 16 && size < (1u << 20));
        assert_true(in_code(addr, size));
    }
    unsetenv("MOEPPC_PERF_MAP");
    cg_jit_free(jit);
    remove(path);
}

static int teardown(void **state) {
    tu_jits_free();
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_object_file), cmocka_unit_test(test_bad_config),
                                       cmocka_unit_test(test_b_prefetch), cmocka_unit_test(test_kernel_form),
                                       cmocka_unit_test(test_no_spills), cmocka_unit_test(test_vector_features),
                                       cmocka_unit_test(test_perf_map)};
    return cmocka_run_group_tests(tests, NULL, teardown);
}
