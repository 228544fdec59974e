/* test_cuda_compile.c — NVRTC, no GPU: every kernel the specs need (specs/tiny/ and the 7B) compiles
 * for sm_80 and sm_90 with an empty warning list, the grouped GEMMs spill nothing; bad sources,
 * targets and descriptors give clear errors. Prints compile time and resources per kernel. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "codegen/cuda/cg_cuda.h"
#include "frontend/frontend.h"
#include "passes/passes.h"
#include "runtime/cuda/cuda_exec.h"
#include "tests/tiny_specs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const archs[] = {"sm_80", "sm_90"};

/* Symbols already compiled (per arch), so shared kernels of the tiny specs compile once. */
typedef struct Seen {
    char (*sym)[300];
    int n, cap;
} Seen;

static bool seen_add(Seen *s, const char *sym)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->sym[i], sym) == 0) return false;
    if (s->n == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->sym = xrealloc(s->sym, (size_t)s->cap * sizeof *s->sym);
    }
    snprintf(s->sym[s->n++], sizeof s->sym[0], "%s", sym);
    return true;
}

/* no_spill: a kernel that must not spill (the grouped GEMMs, the bar; attention's too) */
static void compile_one(const char *spec, const char *sym, const char *src, const char *arch, bool no_spill, bool ptx)
{
    CgCudaBinary bin;
    char err[65536];
    bool ok = cg_cuda_compile(src, sym, arch, true, ptx, &bin, err, sizeof err);
    if (!ok) fprintf(stderr, "%s: %s\n%s\n", spec, err, src);
    assert_true(ok);
    if (strstr(bin.log, "warning")) fprintf(stderr, "%s %s %s: warnings:\n%s\n", spec, arch, sym, bin.log);
    assert_null(strstr(bin.log, "warning"));
    /* ptxas says a wgmma pipeline is serialised in an info line, not a warning */
    if (bin.wgmma_serialized[0]) fprintf(stderr, "%s %s %s: wgmma serialised:\n%s\n", spec, arch, sym, bin.log);
    assert_string_equal(bin.wgmma_serialized, "");
    assert_non_null(bin.cubin);
    assert_true(bin.cubin_len > 0);
    if (ptx) assert_non_null(strstr(bin.ptx, ".entry"));
    assert_true(bin.registers > 0); /* the ptxas report was found and parsed */
    printf("  %-6s %8.1f ms  regs %3d  smem %6d  spill %d/%d  %s%s\n", arch, bin.compile_ms, bin.registers,
           bin.smem_bytes, bin.spill_stores, bin.spill_loads, no_spill ? "no spills: " : "", sym);
    if (no_spill) {
        if (bin.spill_stores || bin.spill_loads) fprintf(stderr, "%s: spills\n%s\n", sym, bin.log);
        assert_int_equal(bin.spill_stores, 0);
        assert_int_equal(bin.spill_loads, 0);
    }
    cg_cuda_binary_free(&bin);
}

/* Spec `path` (into *s) lowered and optimised as the CUDA executor runs it. */
static IrModule *optimised_module(const char *path, ModelSpec *s)
{
    Diag d = {.out = stderr, .file = path};
    assert_true(spec_load_file(path, s, &d));
    IrModule *m = ir_lower_spec(s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true};
    assert_true(passes_run(m, &po, &d));
    return m;
}

/* Every kernel the CUDA executor asks for when it runs the spec's optimised module for each arch (the
 * list `moeppc build --target` embeds: on sm_90 the grouped GEMMs of 16-bit models on wgmma with the
 * TMA); its grouped GEMMs and attention kernels without spills, and a full-size spec's fused router. With `generate_only`, the sources are
 * generated and not compiled. */
static void compile_spec(const char *path, Seen *seen, bool generate_only)
{
    ModelSpec s;
    IrModule *m = optimised_module(path, &s);
    bool big = strstr(path, "7b") != NULL; /* PTX too for the 7B's kernels (once per arch) */
    for (int a = 0; a < 2; a++) {
        CudaKernelCode *k = NULL;
        int n = 0;
        RtError err = {{0}};
        CudaOptions o = {.images_arch = archs[a]};
        bool ok = cuda_module_kernels(m, &o, &k, &n, &err);
        if (!ok) fprintf(stderr, "%s: %s\n", path, err.msg);
        assert_true(ok);
        int gemms = 0;
        for (int i = 0; i < n; i++) gemms += strncmp(k[i].symbol, "moeppc_cu_gemm_", 15) == 0;
        printf("%s for %s: %d kernels, %d of them GEMMs%s\n", s.name, archs[a], n, gemms,
               generate_only ? " (generated, not compiled)" : "");
        assert_true(gemms >= 4);
        for (int i = 0; i < n && !generate_only; i++) {
            char key[700];
            snprintf(key, sizeof key, "%s/%s", archs[a], k[i].symbol);
            /* (and a full-size model's fused router: the tiny f32 ones spill a few bytes on sm_90) */
            bool router = strstr(k[i].symbol, "fused_route") && !strstr(path, "tiny");
            if (seen_add(seen, key))
                compile_one(s.name, k[i].symbol, k[i].source, archs[a],
                            strncmp(k[i].symbol, "moeppc_cu_gemm_", 15) == 0 || strstr(k[i].symbol, "attention") || router,
                            big);
        }
        cuda_kernel_code_free(k, n);
    }
    ir_module_free(m);
}

/* The symbols of the kernels the executor asks for when it runs spec `path` with options o (a dry run,
 * as `moeppc build --target` makes), each followed by a newline (free it). */
static char *kernel_names(const char *path, const CudaOptions *o)
{
    ModelSpec s;
    IrModule *m = optimised_module(path, &s);
    CudaKernelCode *k = NULL;
    int n = 0;
    RtError err = {{0}};
    assert_true(cuda_module_kernels(m, o, &k, &n, &err));
    size_t len = 1;
    for (int i = 0; i < n; i++) len += strlen(k[i].symbol) + 1;
    char *names = xmalloc(len), *p = names;
    for (int i = 0; i < n; i++) p += sprintf(p, "%s\n", k[i].symbol);
    *p = '\0';
    cuda_kernel_code_free(k, n);
    ir_module_free(m);
    return names;
}

/* How many lines of names have `part` in them. */
static int count_with(const char *names, const char *part)
{
    int with = 0;
    for (const char *l = names; *l; l = strchr(l, '\n') + 1) {
        const char *hit = strstr(l, part), *end = strchr(l, '\n');
        with += hit && hit < end;
    }
    return with;
}

/* How many of those kernels have `part` in their symbol. */
static int kernels_with(const char *path, const CudaOptions *o, const char *part)
{
    char *names = kernel_names(path, o);
    int with = count_with(names, part);
    free(names);
    return with;
}

/* An sm_90 build of spec asks for the rule's two TMA tiles of each grouped GEMM and no other TMA
 * kernel: up and down are the symbols' shape parts ("bf16_e4_k2_n32_k64"), tiles[] UP's small and
 * large tile, then DOWN's ("64x128x64_s4"). */
static void expect_tile_pair(const char *spec, const char *up, const char *down, const char *const tiles[4])
{
    char *rule = kernel_names(spec, &(CudaOptions){.images_arch = "sm_90"});
    char *no_ws = kernel_names(spec, &(CudaOptions){.images_arch = "sm_90", .no_ws = true});
    assert_int_equal(count_with(rule, "_wg_tma"), 4);
    for (int q = 0; q < 4; q++) { /* DOWN's large tile warp-specialised (not with MOEPPC_CUDA_WS=0) */
        char name[160];
        snprintf(name, sizeof name, "_%s_mma_%s_t%s_wg_tma_ws", q < 2 ? "up" : "down", q < 2 ? up : down, tiles[q]);
        assert_int_equal(count_with(rule, name), q == 3);
        assert_int_equal(count_with(no_ws, name), 0);
        name[strlen(name) - 3] = '\0'; /* (without "_ws") */
        assert_int_equal(count_with(rule, name), 1);
        assert_int_equal(count_with(no_ws, name), 1);
    }
    free(rule);
    free(no_ws);
}

/* The rule's sm_90 form (cuda_tma_rule): a 16-bit model's grouped GEMMs on wgmma with W by the TMA for
 * an sm_90 target, the cp.async mma.sync form for other targets, with MOEPPC_CUDA_TMA=0's no_tma, on
 * the emulator, for f32 weights and for weights used in place (the embedding library). */
static void test_sm90_rule(void **state)
{
    (void)state;
    const char *bf16 = MOEPPC_SOURCE_DIR "/specs/tiny/tiny-bf16.yaml";
    const char *f32 = MOEPPC_SOURCE_DIR "/specs/tiny/tiny-moepp.yaml";
    CudaOptions sm90 = {.images_arch = "sm_90"}, sm80 = {.images_arch = "sm_80"};
    CudaOptions off = {.images_arch = "sm_90", .no_tma = true}, table = {.images_arch = "sm_90", .weights_in_place = true};
    /* up and down, each on the rule's two tiles (cg_cuda_gemm_tma): UP 32 wide (64-column tiles) on
     * rings of 5 and 4, DOWN 64 wide (128 columns, not 256) on rings of 4; the 7B's: the H200
     * database's winners at T = 512 and 4096 */
    static const char *const tiny_tiles[4] = {"64x64x64_s5", "128x64x64_s4", "64x128x64_s4", "128x128x64_s4"};
    static const char *const b7_tiles[4] = {"64x128x64_s5", "128x128x64_s4", "64x128x64_s4", "128x256x64_s4"};
    const char *b7 = MOEPPC_SOURCE_DIR "/specs/moepp-7b.yaml";
    expect_tile_pair(bf16, "bf16_e4_k2_n32_k64", "bf16_e4_k2_n64_k32", tiny_tiles);
    expect_tile_pair(b7, "bf16_e16_k2_n4096_k1536", "bf16_e16_k2_n1536_k4096", b7_tiles);
    CgCudaGemm d7 = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, CG_CUDA_PATH_MMA, DT_BF16, 16, 2, 1536, 4096);
    assert_false(cg_cuda_gemm_tma_large(&d7, 1023)); /* 2046 slots: below 128 a group */
    assert_true(cg_cuda_gemm_tma_large(&d7, 1024));
    /* warp-specialised (asked for), or MOEPPC_CUDA_TILE_PAIR=0's A/B: one tile, the wgmma form's */
    CudaOptions ws = {.images_arch = "sm_90", .ws = true}, one = {.images_arch = "sm_90", .no_tile_pair = true};
    assert_int_equal(kernels_with(bf16, &ws, "_wg_tma"), 2);
    assert_int_equal(kernels_with(b7, &one, "_wg_tma"), 2);
    assert_int_equal(kernels_with(b7, &one, "_up_mma_bf16_e16_k2_n4096_k1536_t128x64x64_s5_wg_tma"), 1);
    assert_int_equal(kernels_with(bf16, &sm80, "_wg"), 0);
    assert_int_equal(kernels_with(bf16, &off, "_wg"), 0);
    assert_true(kernels_with(bf16, &off, "_s3") >= 2); /* the cp.async form's ring of 3 */
    assert_int_equal(kernels_with(bf16, &table, "_tma"), 0);
    assert_int_equal(kernels_with(f32, &sm90, "_wg"), 0);
    assert_true(cuda_tma_rule("sm_90", "sm_90", &(CudaOptions){0}));
    assert_false(cuda_tma_rule("sm_90", "sm_90", &off));
    assert_false(cuda_tma_rule("sm_80", "sm_90", &(CudaOptions){0})); /* an sm_80 build on an H200 */
    assert_false(cuda_tma_rule(CG_CUDA_EMU_ARCH, CG_CUDA_EMU_ARCH, &(CudaOptions){0}));
}

static void test_specs_compile(void **state)
{
    (void)state;
    int major = 0, minor = 0;
    assert_true(cg_cuda_nvrtc_version(&major, &minor));
    printf("NVRTC %d.%d\n", major, minor);
    Seen seen = {0};
    char p[1024];
    /* MOEPPC_COMPILE_SAMPLE (the sanitizer build: NVRTC on its allocator is slow there): every
     * spec's kernels generated, those of tiny-moepp and tiny-bf16 compiled (the release build
     * compiles them all; the 7B's alone took 2 of the sanitizer build's 5 minutes here) */
    bool sample = getenv("MOEPPC_COMPILE_SAMPLE") != NULL;
    for (size_t i = 0; i < MOE_ARRAY_LEN(tiny_specs); i++) {
        snprintf(p, sizeof p, "%s/specs/tiny/%s.yaml", MOEPPC_SOURCE_DIR, tiny_specs[i]);
        compile_spec(p, &seen, sample && strcmp(tiny_specs[i], "tiny-moepp") != 0 && strcmp(tiny_specs[i], "tiny-bf16") != 0);
    }
    compile_spec(MOEPPC_SOURCE_DIR "/specs/moepp-7b.yaml", &seen, sample);
    printf("%d kernel compilations\n", seen.n);
    free(seen.sym);
}

static void test_bad_source(void **state)
{
    (void)state;
    CgCudaBinary bin;
    char err[8192];
    const char *src = "extern \"C\" __global__ void broken_kernel(float *x) { x[0] = undeclared_thing; }\n";
    assert_false(cg_cuda_compile(src, "broken_kernel", "sm_80", true, false, &bin, err, sizeof err));
    printf("bad source -> %s\n", err);
    assert_non_null(strstr(err, "NVRTC: nvrtcCompileProgram"));
    assert_non_null(strstr(err, "NVRTC_ERROR_COMPILATION"));
    assert_non_null(strstr(err, "kernel broken_kernel"));
    assert_non_null(strstr(err, "undeclared_thing")); /* the log itself */
    assert_null(bin.cubin);
}

/* MOEPPC_NVRTC_CACHE: the second compile of a kernel reads the first's cubin, PTX, log and resources
 * back from the folder (nothing compiled: 0 ms); a cache file cut short, one whose cubin changed and
 * another kernel's under its name are compiled again; a source that fails is not kept. */
static void test_nvrtc_cache(void **state)
{
    (void)state;
    char dir[] = "/tmp/moeppc-nvrtc-cache-XXXXXX";
    assert_non_null(mkdtemp(dir));
    const char *was = getenv("MOEPPC_NVRTC_CACHE");
    char *keep = was ? xstrdup(was) : NULL;
    setenv("MOEPPC_NVRTC_CACHE", dir, 1);
    CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, CG_CUDA_PATH_MMA, DT_BF16, 4, 2, 64, 32);
    char err[8192], sym[600], *src = cg_cuda_gemm_source(&g, err, sizeof err);
    assert_non_null(src);
    cg_cuda_gemm_symbol(&g, sym, sizeof sym);
    CgCudaBinary a, b, c;
    assert_true(cg_cuda_compile(src, sym, "sm_80", true, true, &a, err, sizeof err));
    assert_true(cg_cuda_compile(src, sym, "sm_80", true, true, &b, err, sizeof err));
    assert_true(a.compile_ms > 0 && a.compiled);
    assert_true(b.compile_ms == 0 && !b.compiled); /* both passes read back */
    assert_int_equal(a.cubin_len, b.cubin_len);
    assert_memory_equal(a.cubin, b.cubin, a.cubin_len);
    assert_string_equal(a.ptx, b.ptx);
    assert_string_equal(a.log, b.log);
    assert_int_equal(a.registers, b.registers);
    assert_int_equal(a.spill_stores, b.spill_stores);
    assert_true(b.registers > 0);
    /* every file cut to half: compiled again, the same cubin */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "for f in %s/*.nvrtc; do n=$(stat -c %%s \"$f\"); truncate -s $((n / 2)) \"$f\"; done",
             dir);
    assert_int_equal(system(cmd), 0);
    assert_true(cg_cuda_compile(src, sym, "sm_80", true, false, &c, err, sizeof err));
    assert_true(c.compile_ms > 0 && c.compiled);
    assert_memory_equal(a.cubin, c.cubin, a.cubin_len);
    cg_cuda_binary_free(&c);
    /* a byte of the cubin changed in place (the middle of the output, after the header's line and the
     * key), and another kernel's file under this one's name (what a collision of the names' hashes
     * would read): each compiled again, the same cubin */
    char other[] = "/tmp/moeppc-nvrtc-other-XXXXXX", how[2][1024];
    assert_non_null(mkdtemp(other));
    CgCudaGemm g2 = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, CG_CUDA_PATH_MMA, DT_BF16, 4, 2, 64, 64);
    char sym2[600], *src2 = cg_cuda_gemm_source(&g2, err, sizeof err);
    cg_cuda_gemm_symbol(&g2, sym2, sizeof sym2);
    setenv("MOEPPC_NVRTC_CACHE", other, 1);
    assert_true(cg_cuda_compile(src2, sym2, "sm_80", true, false, &c, err, sizeof err));
    cg_cuda_binary_free(&c);
    setenv("MOEPPC_NVRTC_CACHE", dir, 1);
    snprintf(how[0], sizeof how[0], "for f in %s/*.nvrtc; do set -- $(head -1 \"$f\"); at=$(( $(head -1 \"$f\" | wc -c)"
             " + $2 + $3 / 2 )); printf '\\001' | dd of=\"$f\" bs=1 seek=$at conv=notrunc status=none; done", dir);
    snprintf(how[1], sizeof how[1], "for f in %s/*.nvrtc; do cp %s/*.nvrtc \"$f\"; done", dir, other);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(system(how[k]), 0);
        assert_true(cg_cuda_compile(src, sym, "sm_80", true, false, &c, err, sizeof err));
        assert_true(c.compiled);
        assert_int_equal(c.cubin_len, a.cubin_len);
        assert_memory_equal(a.cubin, c.cubin, a.cubin_len);
        cg_cuda_binary_free(&c);
    }
    snprintf(cmd, sizeof cmd, "rm -r %s", other);
    assert_int_equal(system(cmd), 0);
    free(src2);
    cg_cuda_binary_free(&a), cg_cuda_binary_free(&b);
    /* a failed compile leaves nothing, and fails again */
    const char *bad = "extern \"C\" __global__ void broken_cached(float *x) { x[0] = nope; }\n";
    assert_false(cg_cuda_compile(bad, "broken_cached", "sm_80", true, false, &a, err, sizeof err));
    assert_false(cg_cuda_compile(bad, "broken_cached", "sm_80", true, false, &a, err, sizeof err));
    assert_non_null(strstr(err, "nope"));
    snprintf(cmd, sizeof cmd, "test $(ls %s | wc -l) -eq 2 && rm -r %s", dir, dir); /* the kernel's cubin and PTX */
    assert_int_equal(system(cmd), 0);
    free(src);
    if (keep) setenv("MOEPPC_NVRTC_CACHE", keep, 1);
    else unsetenv("MOEPPC_NVRTC_CACHE");
    free(keep);
}

static void test_bad_target(void **state)
{
    (void)state;
    CgCudaBinary bin;
    char err[512];
    for (int i = 0; i < 4; i++) {
        const char *bad[] = {"sm_20", "gfx90a", "sm_", "sm_9x"};
        assert_false(cg_cuda_compile("extern \"C\" __global__ void k() {}", "k", bad[i], true, false, &bin, err,
                                     sizeof err));
        assert_non_null(strstr(err, "unknown CUDA target"));
    }
    printf("bad target -> %s\n", err);
}

static void test_bad_desc(void **state)
{
    (void)state;
    char err[512];
    CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_UP, CG_CUDA_PATH_MMA, DT_F32, 4, 2, 32, 64);
    assert_null(cg_cuda_gemm_source(&g, err, sizeof err));
    assert_non_null(strstr(err, "MMA path needs bf16/f16"));
    g = cg_cuda_gemm_default(CG_CUDA_GEMM_UP, CG_CUDA_PATH_MMA, DT_BF16, 4, 2, 32, 60);
    assert_null(cg_cuda_gemm_source(&g, err, sizeof err));
    CgOpDesc d = {.kind = CG_OP_ATTENTION, .cols = 64, .heads = 4, .kv_heads = 3, .head_dim = 16};
    assert_null(cg_cuda_op_source(&d, err, sizeof err));
    assert_non_null(strstr(err, "kv_heads"));
}

static void test_symbols(void **state)
{
    (void)state;
    CgOpDesc a = {.kind = CG_OP_RMS_NORM, .wdtype = DT_BF16, .cols = 64, .eps = 1e-6}, b = a;
    char sa[600], sb[600];
    cg_cuda_op_symbol(&a, sa, sizeof sa);
    cg_cuda_op_symbol(&b, sb, sizeof sb);
    assert_string_equal(sa, sb);
    assert_int_equal(strncmp(sa, "moeppc_cu_rms_norm_bf16_c64_", 28), 0);
    b.eps = 1e-5;
    cg_cuda_op_symbol(&b, sb, sizeof sb);
    assert_string_not_equal(sa, sb);
    CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, CG_CUDA_PATH_MMA, DT_BF16, 16, 2, 1536, 4096);
    cg_cuda_gemm_symbol(&g, sa, sizeof sa);
    assert_string_equal(sa, "moeppc_cu_gemm_down_mma_bf16_e16_k2_n1536_k4096_t64x128x32");
    /* the generated source defines exactly that kernel */
    char err[256], *src = cg_cuda_gemm_source(&g, err, sizeof err);
    assert_non_null(src);
    assert_non_null(strstr(src, "extern \"C\" __global__ void __launch_bounds__(NT) moeppc_cu_gemm_down_mma_bf16"));
    free(src);
}

/* The wgmma form (not in a spec's kernel list: MOEPPC_CUDA_WGMMA=1 asks for it) for the 7B's shapes:
 * compiles for sm_90 (as sm_90a) without warnings, spills or serialised MMAs; refused for sm_80 with a message; a
 * tile it cannot hold is refused by the generator. */
static void test_wgmma_compile(void **state)
{
    (void)state;
    Seen seen = {0};
    for (int kind = 0; kind < 12; kind++) { /* up, down; then both with W by the TMA; then the tuner's big
                                               tiles on 4-tile rings: up 128 x (2 x 128), down 128 x 256;
                                               then those warp-specialised (two consumer warpgroups and
                                               setmaxnreg), and 64 rows (one consumer) on 5-tile rings */
        CgCudaGemm g = cg_cuda_gemm_default(kind % 2 ? CG_CUDA_GEMM_DOWN : CG_CUDA_GEMM_UP, CG_CUDA_PATH_MMA, DT_BF16, 16,
                                            2, kind % 2 ? 1536 : 4096, kind % 2 ? 4096 : 1536);
        g = cg_cuda_gemm_wgmma(&g);
        g.tma = kind % 4 >= 2 || kind >= 8;
        if (kind >= 4) g.bn = kind % 2 ? 256 : 128, g.stages = 4;
        g.ws = kind >= 8;
        cg_cuda_gemm_persist(&g, 132, false); /* (DOWN's with its stream-K tail) */
        if (kind >= 10) g.bm = 64, g.stages = 5;
        char sym[256], err[4096];
        cg_cuda_gemm_symbol(&g, sym, sizeof sym);
        char *src = cg_cuda_gemm_source(&g, err, sizeof err);
        assert_non_null(src);
        assert_non_null(strstr(src, CG_CUDA_SM90A_MARK));
        compile_one("moepp-7b", sym, src, "sm_90", true, true);
        CgCudaBinary bin;
        assert_false(cg_cuda_compile(src, sym, "sm_80", true, false, &bin, err, sizeof err));
        assert_non_null(strstr(err, "compiles for target sm_90 only"));
        free(src);
        (void)seen_add(&seen, sym);
    }
    printf("wgmma on sm_80 -> refused\n");
    CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_UP, CG_CUDA_PATH_MMA, DT_BF16, 16, 2, 4096, 1536);
    g = cg_cuda_gemm_wgmma(&g);
    g.bn = 256; /* 2 x 256 accumulator columns: 256 floats a thread */
    char err[512];
    assert_null(cg_cuda_gemm_source(&g, err, sizeof err));
    assert_non_null(strstr(err, "wgmma tile"));
    g.bn = 128, g.bk = 32, g.tma = true; /* TMA rows are 64 of k (128 bytes, the swizzle's) */
    assert_null(cg_cuda_gemm_source(&g, err, sizeof err));
    assert_non_null(strstr(err, "TMA"));
    free(seen.sym);
}

/* A wgmma pipeline that ptxas serialises (here: the MMA in a function that is not inlined) is
 * reported with ptxas's reason, so that the tuner can discard it and a build warn. */
static void test_wgmma_serialized(void **state)
{
    (void)state;
    const char *src =
        CG_CUDA_SM90A_MARK
        "__device__ __noinline__ void tile(float *d, unsigned long long a, unsigned long long b) {\n"
        "    asm volatile(\"{\\n.reg .pred p;\\nsetp.ne.b32 p, %10, 0;\\n\"\n"
        "                 \"wgmma.mma_async.sync.aligned.m64n16k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7}, \"\n"
        "                 \"%8, %9, p, 1, 1, 0, 0;\\n}\\n\"\n"
        "                 : \"+f\"(d[0]), \"+f\"(d[1]), \"+f\"(d[2]), \"+f\"(d[3]), \"+f\"(d[4]), \"+f\"(d[5]), \"+f\"(d[6]),\n"
        "                   \"+f\"(d[7]) : \"l\"(a), \"l\"(b), \"r\"(1)); }\n"
        "extern \"C\" __global__ void serial_wgmma(float *o, unsigned long long a, unsigned long long b, int n) {\n"
        "    float d[8] = {0};\n"
        "    asm volatile(\"wgmma.fence.sync.aligned;\" ::: \"memory\");\n"
        "    for (int i = 0; i < n; i++) tile(d, a + i, b);\n"
        "    asm volatile(\"wgmma.commit_group.sync.aligned;\" ::: \"memory\");\n"
        "    asm volatile(\"wgmma.wait_group.sync.aligned 0;\" ::: \"memory\");\n"
        "    for (int i = 0; i < 8; i++) o[threadIdx.x * 8 + i] = d[i];\n"
        "}\n";
    CgCudaBinary bin;
    char err[8192];
    bool ok = cg_cuda_compile(src, "serial_wgmma", "sm_90", true, false, &bin, err, sizeof err);
    if (!ok) fprintf(stderr, "%s\n", err);
    assert_true(ok);
    printf("a wgmma in a called function -> serialised: %s\n", bin.wgmma_serialized);
    assert_non_null(strstr(bin.wgmma_serialized, "function boundary"));
    assert_null(strstr(bin.wgmma_serialized, "in the function"));
    cg_cuda_binary_free(&bin);
}

/* Split-K DOWN (a tuner's option, in no spec's list) for the 7B's shape on the cp.async, register
 * MMA and GEMV forms: compiles for sm_80 and sm_90 without warnings or spills; UP is refused (its
 * SwiGLU epilogue is not a sum). */
static void test_split_compile(void **state)
{
    (void)state;
    for (int q = 0; q < 3; q++) {
        CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, q == 2 ? CG_CUDA_PATH_GEMV : CG_CUDA_PATH_MMA, DT_BF16,
                                            16, 2, 1536, 4096);
        if (q == 0) g = cg_cuda_gemm_async(&g);
        g.split = 4;
        char sym[256], err[1024];
        cg_cuda_gemm_symbol(&g, sym, sizeof sym);
        assert_non_null(strstr(sym, "_sk4"));
        char *src = cg_cuda_gemm_source(&g, err, sizeof err);
        assert_non_null(src);
        for (int a = 0; a < 2; a++) compile_one("moepp-7b", sym, src, archs[a], true, false);
        free(src);
    }
    CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_UP, CG_CUDA_PATH_MMA, DT_BF16, 16, 2, 1536, 4096);
    g.split = 2;
    char err[512];
    assert_null(cg_cuda_gemm_source(&g, err, sizeof err));
    assert_non_null(strstr(err, "split-K"));
}

/* Attention's tuner forms (not in a spec's list) for a head of 128, GQA's groups of 4: the per-query
 * kernel with 8 warps, and with 2 warps and 16 key splits, and with 1 and 2 query heads a block (the
 * rule's 4; its symbol unchanged when named), tiled ones with 2 and 32 threads a query and key tiles
 * of 16 and 32 compile for sm_80 and sm_90 without warnings, and their forms for several sequences'
 * rows (the per-query ones') or runs of rows (the tiled ones'; the rule's, in a spec's list, must not
 * spill); shapes the kernels cannot take are refused with a message. */
static void test_attention_forms_compile(void **state)
{
    (void)state;
    CgOpDesc d = {.kind = CG_OP_ATTENTION, .cols = 16 * 128, .heads = 16, .kv_heads = 4, .head_dim = 128};
    static const CgCudaAttnForm good[] = {{1, 256, 0, 0}, {128, 2, 16, 0}, {8, 32, 32, 0},
                                          {1, 64, 16, 0}, {1, 128, 8, 1}, {1, 128, 8, 2}};
    char rule[600], named[600];
    CgCudaAttnForm one = cg_cuda_attention_rule(&d, 1), four = one;
    four.gq = 4;
    cg_cuda_attention_symbol(&d, &one, rule, sizeof rule), cg_cuda_attention_symbol(&d, &four, named, sizeof named);
    assert_string_equal(rule, named); /* (the rule's G named: the same kernel) */
    cg_cuda_op_symbol(&d, named, sizeof named);
    assert_string_equal(rule, named); /* (the rule's form: the op's kernel) */
    /* MOEPPC_CUDA_ATTN_GQ=0 (no_attn_gq): tiny-gqa's decode attention (group 2) a head a block, its
     * per-query kernel and that kernel's for several sequences; by default the op's */
    const char *gqa = MOEPPC_SOURCE_DIR "/specs/tiny/tiny-gqa.yaml";
    CudaOptions sm80 = {.images_arch = "sm_80"}, head = {.images_arch = "sm_80", .no_attn_gq = true};
    assert_int_equal(kernels_with(gqa, &head, "_g1\n"), 1);
    assert_int_equal(kernels_with(gqa, &head, "_g1_seqs\n"), 1);
    assert_int_equal(kernels_with(gqa, &sm80, "_g1\n") + kernels_with(gqa, &sm80, "_g1_seqs\n"), 0);
    /* a tuning database's form with its own G (1xP/kvB/gG): its kernel and its several sequences' */
    CudaOptions db = {.images_arch = "sm_80", .tile_sched = {[2] = "-1;1:1x64/kv8/g1@1.0;64:16x8/kv16@1.0"}};
    assert_int_equal(kernels_with(gqa, &db, "_q1_t64_s8_g1\n"), 1);
    assert_int_equal(kernels_with(gqa, &db, "_q1_t64_s8_g1_seqs\n"), 1);
    /* and the tiled forms' for a call's long runs: the rule's (64 queries a block), the database's */
    assert_int_equal(kernels_with(gqa, &sm80, "_q64_seqs\n"), 1);
    assert_int_equal(kernels_with(gqa, &db, "_q16_t8_b16_seqs\n"), 1);
    for (size_t k = 0; k < MOE_ARRAY_LEN(good); k++) {
        char sym[600], err[512];
        cg_cuda_attention_symbol(&d, &good[k], sym, sizeof sym);
        char *src = cg_cuda_attention_source(&d, &good[k], err, sizeof err);
        assert_non_null(src);
        assert_non_null(strstr(src, sym));
        if (good[k].gq) { /* its G in its symbol and its kernel */
            char g[32];
            snprintf(g, sizeof g, "_g%d", good[k].gq), assert_non_null(strstr(sym, g));
            snprintf(g, sizeof g, "#define GQ %d\n", good[k].gq), assert_non_null(strstr(src, g));
        }
        for (int a = 0; a < 2; a++) compile_one("attention", sym, src, archs[a], false, false);
        free(src);
        cg_cuda_attention_seqs_symbol(&d, &good[k], sym, sizeof sym);
        assert_non_null(strstr(sym, "_seqs"));
        src = cg_cuda_attention_seqs_source(&d, &good[k], err, sizeof err);
        assert_non_null(src);
        assert_non_null(strstr(src, sym));
        assert_non_null(strstr(src, good[k].bq == 1 ? "kvs[2 * seq[t]]" : "kvs[2 * seq[t0]]"));
        for (int a = 0; a < 2; a++) compile_one("attention", sym, src, archs[a], false, false);
        free(src);
    }
    static const CgCudaAttnForm bad[] = {{1, 48, 0, 0}, {1, 64, 33, 0}, {16, 3, 0, 0}, {4, 4, 0, 0}, {64, 32, 0, 0},
                                         {32, 4, 64, 0}, {64, 0, 0, 0} /* tensor cores: not for f32 models */,
                                         {1, 128, 0, 3} /* not a divisor of the group */, {1, 128, 0, -1},
                                         {8, 32, 32, 2} /* the per-query form's */, {1, 1024, 0, 4} /* 128 KB */};
    for (size_t k = 0; k < MOE_ARRAY_LEN(bad); k++) {
        char err[512];
        assert_null(cg_cuda_attention_source(&d, &bad[k], err, sizeof err));
        assert_non_null(strstr(err, "cuda attention"));
        printf("%s\n", err);
    }
    /* the 7B's head of 96, bf16: the tensor-core forms compile; key tiles whose shared memory and the
     * block's key count pass 48 KB are refused (64 rows of K and V in f32 are 48 KB alone: NVRTC
     * refused that kernel, which stopped the tuner) */
    CgOpDesc d96 = {.kind = CG_OP_ATTENTION, .cols = 16 * 96, .heads = 16, .kv_heads = 16, .head_dim = 96, .wdtype = DT_BF16};
    const CgCudaAttnForm good96[] = {cg_cuda_attention_rule(&d96, 512) /* no spills */, {128, 0, 32, 0}, {16, 0, 16, 0},
                                     {64, 4, 32, 0}};
    for (size_t k = 0; k < MOE_ARRAY_LEN(good96); k++) {
        char sym[600], err[512];
        cg_cuda_attention_symbol(&d96, &good96[k], sym, sizeof sym);
        char *src = cg_cuda_attention_source(&d96, &good96[k], err, sizeof err);
        assert_non_null(src);
        for (int a = 0; a < 2; a++) compile_one("attention", sym, src, archs[a], k == 0, false);
        free(src);
        cg_cuda_attention_seqs_symbol(&d96, &good96[k], sym, sizeof sym); /* its runs of rows' form */
        src = cg_cuda_attention_seqs_source(&d96, &good96[k], err, sizeof err);
        assert_non_null(src);
        for (int a = 0; a < 2; a++) compile_one("attention", sym, src, archs[a], k == 0, false);
        free(src);
    }
    CgCudaAttnForm tc = cg_cuda_attention_rule(&d96, 512);
    assert_int_equal(tc.tpq, 0); /* the rule's prefill form for a 16-bit model: tensor cores */
    static const CgCudaAttnForm bad96[] = {{64, 4, 64, 0}, {16, 2, 64, 0}, {64, 0, 128, 0}, {8, 0, 0, 0},
                                           {64, 0, 24, 0}};
    for (size_t k = 0; k < MOE_ARRAY_LEN(bad96); k++) {
        char err[512];
        assert_null(cg_cuda_attention_source(&d96, &bad96[k], err, sizeof err));
        printf("%s\n", err);
    }
    d96.head_dim = 130, d96.cols = 16 * 130; /* not a multiple of 16: the rule keeps the f32 tiled form */
    assert_int_equal(cg_cuda_attention_rule(&d96, 512).tpq, 4);
}

/* Every kernel starts with the programmatic-dependent-launch wait: griddepcontrol in its sm_90 PTX,
 * nothing for sm_80 (which has no such instruction); the decode GEMVs of DOWN and dense layers after
 * their first weight loads. */
static void test_pdl_entry(void **state)
{
    (void)state;
    CgOpDesc d = {.kind = CG_OP_RMS_NORM, .wdtype = DT_BF16, .cols = 96, .eps = 1e-6};
    char sym[600], err[4096];
    cg_cuda_op_symbol(&d, sym, sizeof sym);
    char *src = cg_cuda_op_source(&d, err, sizeof err);
    assert_non_null(strstr(src, "PDL_ENTRY();"));
    for (int a = 0; a < 2; a++) {
        CgCudaBinary bin;
        assert_true(cg_cuda_compile(src, sym, archs[a], false, true, &bin, err, sizeof err));
        bool sm90 = strcmp(archs[a], "sm_90") == 0;
        assert_true((strstr(bin.ptx, "griddepcontrol.wait") != NULL) == sm90);
        assert_true((strstr(bin.ptx, "griddepcontrol.launch_dependents") != NULL) == sm90);
        cg_cuda_binary_free(&bin);
    }
    free(src);
    /* the decode GEMVs of DOWN and dense layers issue their first weight loads before the wait (x
     * after it); UP's waits first (its group comes from the kernel just before) */
    for (int kind = 0; kind < 3; kind++) {
        bool lin = kind == CG_CUDA_GEMM_LINEAR;
        CgCudaGemm g = cg_cuda_gemm_default((cg_cuda_gemm_kind)kind, CG_CUDA_PATH_GEMV, DT_BF16, lin ? 1 : 16,
                                            lin ? 1 : 2, 1536, 4096);
        g = cg_cuda_gemm_decode(&g);
        cg_cuda_gemm_symbol(&g, sym, sizeof sym);
        assert_non_null(src = cg_cuda_gemm_source(&g, err, sizeof err));
        const char *body = strstr(src, sym), *load = strstr(body, "raw[u][mat] = ");
        const char *wait = strstr(body, "PDL_ENTRY()"), *x = strstr(body, "AROW(s0 + s) + k");
        assert_true(load && wait && x && wait < x);
        assert_true(kind == CG_CUDA_GEMM_UP ? wait < load : load < wait);
        CgCudaBinary bin;
        assert_true(cg_cuda_compile(src, sym, "sm_90", false, true, &bin, err, sizeof err));
        assert_non_null(strstr(bin.ptx, "griddepcontrol.wait"));
        assert_null(strstr(bin.log, "warning"));
        cg_cuda_binary_free(&bin);
        free(src);
    }
}

/* The fused router's blocks a token (cg_cuda_route_fused_split) at the 7B's router (160 + 4 rows of
 * 1536, 8 warps): 21 at T = 1 (a row a warp), 16 at 2 (32 blocks in all), 2 at 16, one from 32; and
 * the launch's grid.y. */
static void test_route_split_rule(void **state)
{
    (void)state;
    ModelSpec s;
    IrModule *m = optimised_module(MOEPPC_SOURCE_DIR "/specs/moepp-7b.yaml", &s);
    const IrInstr *i = m->first;
    while (i && i->op != IR_OP_MOE_ROUTE) i = i->next;
    CgCudaRouteFused rf;
    assert_true(i && cuda_route_fused_desc(i, false, &rf));
    static const int64_t T[5] = {1, 2, 16, 31, 32};
    static const int want[5] = {21, 16, 2, 2, 1};
    for (int q = 0; q < 5; q++) {
        assert_int_equal(cg_cuda_route_fused_split(&rf, T[q]), want[q]);
        unsigned g[3], b[3];
        size_t smem;
        rf.split = want[q];
        cg_cuda_route_fused_launch(&rf, T[q], g, b, &smem);
        assert_true(g[0] == (unsigned)T[q] && g[1] == (unsigned)want[q] && b[0] == 256);
    }
    ir_module_free(m);
}

/* The decode MLP (cg_cuda_mlp_*, mark_mlp): a 16-bit model's up/down pair gets one kernel of the rule's
 * shape on every target (the 7B's 32 rows by 8 warps), CudaOptions.mlp another shape
 * (MOEPPC_CUDA_MLP=RxW); none with no_mlp, for f32 weights or for weights used in place (the embedding
 * library's tables); a shape its generator refuses fails the model's kernels with its message. */
static void test_decode_mlp_kernels(void **state)
{
    (void)state;
    const char *bf16 = MOEPPC_SOURCE_DIR "/specs/tiny/tiny-bf16.yaml";
    const char *f32 = MOEPPC_SOURCE_DIR "/specs/tiny/tiny-moepp.yaml";
    const char *b7 = MOEPPC_SOURCE_DIR "/specs/moepp-7b.yaml";
    CudaOptions sm80 = {.images_arch = "sm_80"}, sm90 = {.images_arch = "sm_90"};
    assert_int_equal(kernels_with(b7, &sm90, "_gemm_mlp_bf16_e16_k2_d1536_i4096_r32w8"), 1);
    assert_int_equal(kernels_with(b7, &sm80, "_gemm_mlp_"), 1);
    CudaOptions other = {.images_arch = "sm_80", .mlp = {16, 4}}, none = {.images_arch = "sm_80", .no_mlp = true},
                table = {.images_arch = "sm_80", .weights_in_place = true};
    assert_int_equal(kernels_with(bf16, &sm80, "_gemm_mlp_bf16_e4_k2_d64_i32_r32w8"), 1);
    assert_int_equal(kernels_with(bf16, &other, "_gemm_mlp_bf16_e4_k2_d64_i32_r16w4"), 1);
    assert_int_equal(kernels_with(bf16, &none, "_gemm_mlp_"), 0);
    assert_int_equal(kernels_with(bf16, &table, "_gemm_mlp_"), 0);
    assert_int_equal(kernels_with(f32, &sm80, "_gemm_mlp_"), 0);
    /* a shape its generator refuses: the model's kernels are refused with its message */
    ModelSpec s;
    IrModule *m = optimised_module(bf16, &s);
    CudaKernelCode *k = NULL;
    int n = 0;
    RtError err = {{0}};
    assert_false(cuda_module_kernels(m, &(CudaOptions){.images_arch = "sm_80", .mlp = {24, 8}}, &k, &n, &err));
    printf("MOEPPC_CUDA_MLP=24x8 -> %s\n", err.msg);
    assert_non_null(strstr(err.msg, "rows 8, 16, 32 or 64"));
    ir_module_free(m);
}

/* DOWN's tensor-core epilogues add pairs of columns by one red.global.add.v2.f32 on sm_90 (scalar atomics
 * kept for an unaligned row or the last odd column, and on sm_80); a TMA UP takes its A by a second
 * tensor map, x in slot order, unless gather_a */
static void test_epilogue_and_tma_a(void **state)
{
    (void)state;
    char sym[256], err[4096];
    for (int form = 0; form < 2; form++) {
        CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, CG_CUDA_PATH_MMA, DT_BF16, 16, 2, 1536, 4096);
        g = form ? cg_cuda_gemm_tma(&g, true) : cg_cuda_gemm_async(&g);
        g.tma = form == 1;
        cg_cuda_gemm_symbol(&g, sym, sizeof sym);
        char *src = cg_cuda_gemm_source(&g, err, sizeof err);
        assert_non_null(src);
        for (int a = form; a < 2; a++) { /* (wgmma: sm_90 only) */
            CgCudaBinary bin;
            bool ok = cg_cuda_compile(src, sym, archs[a], false, true, &bin, err, sizeof err);
            if (!ok) fprintf(stderr, "%s\n", err);
            assert_true(ok);
            bool sm90 = strcmp(archs[a], "sm_90") == 0;
            assert_true((strstr(bin.ptx, "red.global.add.v2.f32") != NULL) == sm90);
            assert_non_null(strstr(bin.ptx, "atom.global.add.f32")); /* (the scalar atomics) */
            cg_cuda_binary_free(&bin);
        }
        free(src);
    }
    for (int ga = 0; ga < 2; ga++) {
        CgCudaGemm g = cg_cuda_gemm_default(CG_CUDA_GEMM_UP, CG_CUDA_PATH_MMA, DT_BF16, 16, 2, 4096, 1536);
        g = cg_cuda_gemm_tma(&g, false);
        g.tma = true, g.gather_a = ga;
        uint64_t rows;
        unsigned box;
        assert_true(cg_cuda_gemm_tma_map_a(&g, 100, &rows, &box) == !ga);
        char *src = cg_cuda_gemm_source(&g, err, sizeof err);
        assert_non_null(src);
        assert_true((strstr(src, "CUtensorMap tmx") != NULL) == !ga);
        assert_true((strstr(src, "AROW(m0 + r)") != NULL) == ga); /* (the threads' gather) */
        free(src);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_symbols),   cmocka_unit_test(test_bad_desc), cmocka_unit_test(test_bad_target),
        cmocka_unit_test(test_bad_source), cmocka_unit_test(test_nvrtc_cache), cmocka_unit_test(test_specs_compile), cmocka_unit_test(test_wgmma_compile), cmocka_unit_test(test_wgmma_serialized),
        cmocka_unit_test(test_split_compile), cmocka_unit_test(test_attention_forms_compile),
        cmocka_unit_test(test_pdl_entry), cmocka_unit_test(test_sm90_rule), cmocka_unit_test(test_decode_mlp_kernels),
        cmocka_unit_test(test_route_split_rule),
        cmocka_unit_test(test_epilogue_and_tma_a),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
