/* test_cudaemu.c — the CUDA emulator (codegen/cuda/emu) itself: small kernels compiled for arch emu
 * and run through the driver API as moeppc runs them. What it must catch (a divergent barrier, a warp
 * collective with lanes missing: errors naming the kernel, never a hang), what it must refuse (a GPU
 * image, a corrupt self-contained one), what it must model (graph capture runs nothing until the graph is launched; cp.async lands
 * at the wait_group that retires it; ldmatrix's fragments; shuffles; shared memory per block), and an
 * access past a device allocation's end (or before its start), which must end the process with a
 * line naming the kernel, block and thread (run in a child: `cudaemu oob N`).
 * Run with MOEPPC_CUDA_DRIVER naming the emulator (CTest does); skips otherwise. Label "cuda;emu". */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "codegen/cuda/cg_cuda.h"
#include "codegen/cuda/emu/cudaemu_abi.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static CgCudaDriver *drv;

static int setup(void **state)
{
    (void)state;
    char err[512], arch[16];
    drv = cg_cuda_driver_open(0, err, sizeof err);
    if (!drv) printf("cudaemu: skipping: %s\n", err);
    else if (cg_cuda_device_arch(drv, arch, sizeof arch), strcmp(arch, CG_CUDA_EMU_ARCH) != 0) {
        printf("cudaemu: skipping: the driver is a GPU's (%s), not the emulator\n", arch);
        cg_cuda_driver_close(drv);
        drv = NULL;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cg_cuda_driver_close(drv);
    return 0;
}

/* One kernel `k` from source; NULL with err on a failure to compile or load. */
static void *kernel(const char *src, char *err, size_t errlen)
{
    CgCudaBinary bin;
    if (!cg_cuda_compile(src, "k", CG_CUDA_EMU_ARCH, true, false, &bin, err, errlen)) return NULL;
    void *fn = NULL;
    bool ok = cg_cuda_function(drv, bin.cubin, "k", &fn, err, errlen);
    cg_cuda_binary_free(&bin);
    return ok ? fn : NULL;
}

static void *must_kernel(const char *src)
{
    char err[8192];
    void *fn = kernel(src, err, sizeof err);
    if (!fn) fprintf(stderr, "%s\n", err);
    assert_non_null(fn);
    return fn;
}

static uint64_t dev(size_t n)
{
    char err[512];
    uint64_t d = 0;
    assert_true(cg_cuda_alloc(drv, &d, n, err, sizeof err));
    return d;
}

/* Launches k(out) with grid g and block b; the error message (empty when it ran). */
static void run1(void *fn, unsigned g, unsigned b, uint64_t out, char *err, size_t errlen)
{
    unsigned grid[3] = {g, 1, 1}, block[3] = {b, 1, 1};
    void *args[] = {&out};
    err[0] = 0;
    cg_cuda_launch(drv, fn, grid, block, 0, args, err, errlen);
}

/* k(out) on grid g of blocks of b, which must run without an error; out's first n floats into h. */
static void run_floats(void *fn, unsigned g, unsigned b, float *h, size_t n)
{
    char err[8192];
    uint64_t o = dev(n * sizeof *h);
    run1(fn, g, b, o, err, sizeof err);
    assert_string_equal(err, "");
    assert_true(cg_cuda_download(drv, h, o, n * sizeof *h, err, sizeof err));
}

static void test_divergent_barrier(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel("extern \"C\" __global__ void k(float *o) {\n"
                           "    if ((threadIdx.x & 31) < 16) __syncthreads(); else __syncwarp();\n"
                           "    o[threadIdx.x] = 1.0f; }\n");
    char err[1024];
    run1(fn, 1, 64, dev(256), err, sizeof err);
    printf("divergent barrier -> %s\n", err);
    assert_non_null(strstr(err, "deadlock"));
    assert_non_null(strstr(err, "kernel k, block (0,0,0)"));
    /* a barrier that threads which have exited do not reach is not one */
    fn = must_kernel("extern \"C\" __global__ void k(float *o) {\n"
                     "    if (threadIdx.x >= 40) return;\n"
                     "    o[threadIdx.x] = 1.0f + threadIdx.x; __syncthreads(); o[64 + threadIdx.x] = o[threadIdx.x] + o[39 - threadIdx.x]; }\n");
    uint64_t o = dev(512);
    run1(fn, 1, 64, o, err, sizeof err);
    assert_string_equal(err, "");
    float h[40];
    assert_true(cg_cuda_download(drv, h, o + 256, sizeof h, err, sizeof err));
    for (int i = 0; i < 40; i++) assert_true(h[i] == 41.0f);
}

#define WARP_SUM "__device__ float warp_sum(float v) {\n" \
    "    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);\n    return v; }\n"

static void test_partial_warp(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel(WARP_SUM "extern \"C\" __global__ void k(float *o) {\n"
                           "    if ((threadIdx.x & 31) >= 16) return;\n"
                           "    o[threadIdx.x] = warp_sum(1.0f); }\n");
    char err[1024];
    run1(fn, 1, 64, dev(256), err, sizeof err);
    printf("partial warp -> %s\n", err);
    assert_non_null(strstr(err, "16 of 32 lanes"));
    /* whole warps: every lane gets the sum; blocks of several warps, several blocks */
    fn = must_kernel(WARP_SUM "extern \"C\" __global__ void k(float *o) {\n"
                     "    int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
                     "    o[i] = warp_sum((float)(threadIdx.x & 31)) + __shfl_xor_sync(0xffffffffu, (float)i, 1); }\n");
    uint64_t o = dev(4 * 256);
    run1(fn, 4, 64, o, err, sizeof err);
    assert_string_equal(err, "");
    float h[256];
    assert_true(cg_cuda_download(drv, h, o, sizeof h, err, sizeof err));
    for (int i = 0; i < 256; i++) assert_true(h[i] == 496.0f + (float)(i ^ 1));
}

static void test_gpu_image_refused(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = NULL;
    char err[1024];
    static const char cubin[] = "\x7f" "ELF not a kernel for the emulator";
    assert_false(cg_cuda_function(drv, cubin, "k", &fn, err, sizeof err));
    printf("cubin -> %s\n", err);
    assert_non_null(strstr(err, "compiled for arch emu"));
    /* and a kernel that does not compile: the compiler's message with the kernel's name */
    assert_null(kernel("extern \"C\" __global__ void k(float *o) { o[0] = undeclared; }\n", err, sizeof err));
    assert_non_null(strstr(err, "undeclared"));
    assert_non_null(strstr(err, "kernel k"));
}

/* The C library as kernel.hpp declares it (none of the C++ library's headers): the math functions give
 * the host's values, a double name called with a float is the float overload (as in CUDA C++, and as
 * C++'s <cmath> made it), a double stays double; an object is compiled once, then taken from the
 * cache (a folder of its own here). */
static void test_library(void **state)
{
    (void)state;
    if (!drv) skip();
    char dir[] = "/tmp/moeppc-cudaemu-lib-XXXXXX", err[8192], *was = getenv("MOEPPC_CUDAEMU_CACHE");
    char *keep = was ? strdup(was) : NULL;
    assert_non_null(mkdtemp(dir));
    setenv("MOEPPC_CUDAEMU_CACHE", dir, 1);
    static const char src[] =
        "extern \"C\" __global__ void k(float *o) {\n"
        "    float x = 0.3f + (float)threadIdx.x;\n"
        "    o[0] = expf(x); o[1] = tanhf(x); o[2] = erff(x); o[3] = nearbyintf(2.5f + x); o[4] = powf(x, 1.7f);\n"
        "    o[5] = (float)sizeof(sqrt(x)); o[6] = (float)sizeof(fmax(x, 1.0f)); o[7] = (float)sizeof(exp(0.3));\n"
        "    o[8] = (float)cos(0.3 + threadIdx.x); o[9] = -INFINITY; o[10] = fabs(-x); o[11] = log2f(x);\n"
        "}\n";
    CgCudaBinary a, b;
    assert_true(cg_cuda_compile(src, "k", CG_CUDA_EMU_ARCH, true, false, &a, err, sizeof err));
    assert_true(cg_cuda_compile(src, "k", CG_CUDA_EMU_ARCH, true, false, &b, err, sizeof err));
    assert_true(a.compiled && !b.compiled);
    void *fn = NULL;
    bool ok = cg_cuda_function(drv, b.cubin, "k", &fn, err, sizeof err);
    if (!ok) fprintf(stderr, "%s\n", err);
    assert_true(ok);
    float h[12];
    run_floats(fn, 1, 1, h, 12);
    volatile float vx = 0.3f; /* (the library's values at run time, not the compiler's folded ones) */
    volatile double vd = 0.3;
    const float x = vx, want[12] = {expf(x), tanhf(x), erff(x), nearbyintf(2.5f + x), powf(x, 1.7f), 4, 4, 8,
                                    (float)cos(vd), -INFINITY, x, log2f(x)};
    for (int i = 0; i < 12; i++) {
        if (h[i] != want[i]) printf("o[%d] = %.9g, the host's %.9g\n", i, h[i], want[i]);
        assert_true(h[i] == want[i]);
    }
    cg_cuda_binary_free(&a), cg_cuda_binary_free(&b);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -r %s", dir);
    assert_int_equal(system(cmd), 0);
    if (keep) setenv("MOEPPC_CUDAEMU_CACHE", keep, 1), free(keep);
    else unsetenv("MOEPPC_CUDAEMU_CACHE");
}

/* A self-contained image (format 2, what an emitted library embeds) runs without its object file;
 * a truncated or corrupt one is refused with a message, never loaded. */
static void test_embedded_image(void **state)
{
    (void)state;
    if (!drv) skip();
    char err[8192];
    CgCudaBinary bin;
    assert_true(cg_cuda_compile("extern \"C\" __global__ void k(float *o) { o[threadIdx.x] = 2.0f * threadIdx.x; }\n",
                                "k", CG_CUDA_EMU_ARCH, true, false, &bin, err, sizeof err));
    char *path = strdup((const char *)bin.cubin + strlen(CUDAEMU_IMAGE_MAGIC));
    assert_true(cg_cuda_emu_embed(&bin, err, sizeof err));
    assert_memory_equal(bin.cubin, CUDAEMU_IMAGE_MAGIC2, strlen(CUDAEMU_IMAGE_MAGIC2));
    char moved[4200];
    snprintf(moved, sizeof moved, "%s.moved", path); /* the object gone from where format 1 would look */
    assert_int_equal(rename(path, moved), 0);
    void *fn = NULL;
    bool ok = cg_cuda_function(drv, bin.cubin, "k", &fn, err, sizeof err);
    assert_int_equal(rename(moved, path), 0);
    if (!ok) fprintf(stderr, "%s\n", err);
    assert_true(ok);
    float h[32];
    run_floats(fn, 1, 32, h, 32);
    for (int i = 0; i < 32; i++) assert_true(h[i] == 2.0f * (float)i);
    static const char *const bad[] = {"MOEPPC-CUDAEMU-2\n", "MOEPPC-CUDAEMU-2\nx\n", "MOEPPC-CUDAEMU-2\n0\n",
                                      "MOEPPC-CUDAEMU-2\n99999999999\n", "MOEPPC-CUDAEMU-2\n16\n\177ELF and no more"};
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        assert_false(cg_cuda_function(drv, bad[k], "k", &fn, err, sizeof err));
        printf("corrupt image %zu -> %s\n", k, err);
    }
    assert_non_null(strstr(err, "embedded")); /* the last: an ELF header that is not one */
    strcpy(bin.cubin, "MOEPPC-CUDAEMU-3\n");
    assert_false(cg_cuda_emu_embed(&bin, err, sizeof err)); /* only a format-1 image is embedded */
    cg_cuda_binary_free(&bin);
    free(path);
}

/* Shared memory is the block's: each block reverses its own 64 values through it. */
static void test_shared_per_block(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel("extern \"C\" __global__ void k(float *o) {\n"
                           "    __shared__ float s[64];\n"
                           "    s[threadIdx.x] = (float)(blockIdx.x * 1000 + threadIdx.x);\n"
                           "    __syncthreads();\n"
                           "    o[blockIdx.x * 64 + threadIdx.x] = s[63 - threadIdx.x]; }\n");
    char err[1024];
    uint64_t o = dev(64 * 64 * 4);
    run1(fn, 64, 64, o, err, sizeof err);
    assert_string_equal(err, "");
    float *h = malloc(64 * 64 * 4);
    assert_true(cg_cuda_download(drv, h, o, 64 * 64 * 4, err, sizeof err));
    for (int b = 0; b < 64; b++)
        for (int t = 0; t < 64; t++) assert_true(h[b * 64 + t] == (float)(b * 1000 + 63 - t));
    free(h);
}

/* Nothing runs while the stream captures; the graph runs it, as often as it is launched. */
static void test_capture(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel("extern \"C\" __global__ void k(float *o) { o[threadIdx.x] += 1.0f; }\n");
    char err[1024];
    uint64_t o = dev(32 * 4);
    assert_true(cg_cuda_fill32_async(drv, o, 0, 32, err, sizeof err));
    assert_true(cg_cuda_sync(drv, err, sizeof err));
    unsigned grid[3] = {1, 1, 1}, block[3] = {32, 1, 1};
    void *exec = NULL;
    assert_true(cg_cuda_capture_begin(drv, err, sizeof err));
    {
        uint64_t arg = o; /* goes out of scope: the capture must have copied it */
        void *args[] = {&arg};
        assert_true(cg_cuda_launch_async(drv, fn, grid, block, 0, args, err, sizeof err));
    }
    assert_true(cg_cuda_capture_end(drv, &exec, err, sizeof err));
    float h[32];
    assert_true(cg_cuda_download(drv, h, o, sizeof h, err, sizeof err));
    assert_true(h[0] == 0.0f);
    for (int i = 0; i < 3; i++) assert_true(cg_cuda_graph_launch(drv, exec, err, sizeof err));
    assert_true(cg_cuda_sync(drv, err, sizeof err));
    assert_true(cg_cuda_download(drv, h, o, sizeof h, err, sizeof err));
    for (int i = 0; i < 32; i++) assert_true(h[i] == 3.0f);
    cg_cuda_graph_free(drv, exec);
}

/* A thread runs until it blocks, in index order, or from the last with MOEPPC_CUDAEMU_ORDER=reverse:
 * a kernel that reads its left neighbour's shared-memory write without a barrier between (a race)
 * gets it in index order and shows the race in reverse; with the barrier both are right. */
/* One block of 64 threads of kernel k(float *o, arg): o's 64 floats into h. */
static void block64(const char *src, uint64_t o, void *arg, float h[64])
{
    char err[1024];
    void *fn = must_kernel(src);
    unsigned grid[3] = {1, 1, 1}, block[3] = {64, 1, 1};
    void *args[] = {&o, arg};
    assert_true(cg_cuda_launch(drv, fn, grid, block, 0, args, err, sizeof err));
    assert_true(cg_cuda_download(drv, h, o, 64 * sizeof *h, err, sizeof err));
}

/* The thread that launches waits while the pool's workers run the blocks, a grid of one block and
 * one run one at a time (MOEPPC_CUDAEMU_PDL_HAZARDS) included: a kernel object's thread_local
 * __shared__ arrays then live only in threads that end before it is closed (LeakSanitizer crashed
 * at exit scanning the launching thread's stale TLS, cudaemu.c pool_stop). */
static void test_launcher_waits(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel("#include <sys/syscall.h>\n#include <unistd.h>\n"
                           "extern \"C\" __global__ void k(long long *o) {\n"
                           "    if (threadIdx.x == 0) o[blockIdx.x] = (long long)syscall(SYS_gettid); }\n");
    long long me = (long long)syscall(SYS_gettid), h[8];
    char err[1024];
    for (int hz = 0; hz < 2; hz++)
        for (unsigned g = 1; g <= 8; g += 7) {
            if (hz) setenv("MOEPPC_CUDAEMU_PDL_HAZARDS", "1", 1);
            uint64_t o = dev(sizeof h);
            run1(fn, g, 32, o, err, sizeof err);
            unsetenv("MOEPPC_CUDAEMU_PDL_HAZARDS");
            assert_string_equal(err, "");
            assert_true(cg_cuda_download(drv, h, o, g * sizeof *h, err, sizeof err));
            for (unsigned b = 0; b < g; b++) assert_true(h[b] > 0 && h[b] != me);
        }
}

static void test_order(void **state)
{
    (void)state;
    if (!drv) skip();
    /* (each launch writes other values: static shared memory keeps the last block's, not garbage) */
    const char *fmt = "extern \"C\" __global__ void k(float *o, float base) {\n"
                      "    __shared__ float s[64];\n"
                      "    s[threadIdx.x] = base + (float)threadIdx.x;\n%s"
                      "    o[threadIdx.x] = s[(threadIdx.x + 63) %% 64];\n}\n";
    char src[2][512];
    snprintf(src[0], sizeof src[0], fmt, "");
    snprintf(src[1], sizeof src[1], fmt, "    __syncthreads();\n");
    uint64_t o = dev(64 * 4);
    for (int order = 0; order < 2; order++) {
        if (order) setenv("MOEPPC_CUDAEMU_ORDER", "reverse", 1);
        for (int bar = 0; bar < 2; bar++) {
            float base = (float)(1000 * (2 * order + bar + 1)), h[64];
            block64(src[bar], o, &base, h);
            bool right = true;
            for (int t = 1; t < 64; t++) right &= h[t] == base + (float)(t - 1); /* (thread 0 reads thread 63's) */
            printf("order %s, %s: %s\n", order ? "reverse" : "by index", bar ? "barrier" : "no barrier",
                   right ? "right" : "the race shows");
            assert_true(right == (bar || !order));
        }
    }
    unsetenv("MOEPPC_CUDAEMU_ORDER");
}

/* One warp at a time (MOEPPC_CUDAEMU_ORDER=reverse-warps): a warp runs ahead of the others to its next
 * block barrier, as a GPU may let it. Warp 0 reads what warp 1 copied in this round; without a
 * barrier after that read, warp 1's next copy may overwrite it first: taking turns (either order) the
 * warps meet at every warp collective and hide that, one warp at a time shows it. And cp.async lands
 * at its wait (a read before it sees the old value) or, with MOEPPC_CUDAEMU_CP_ASYNC=eager, at once. */
static void test_warps_ahead(void **state)
{
    (void)state;
    if (!drv) skip();
    const char *fmt = "extern \"C\" __global__ void k(float *o, const float *src) {\n"
                      "    __shared__ __align__(16) float buf[64 * 4];\n"
                      "    float acc = 0.0f;\n"
                      "    for (int it = 0; it < 3; it++) {\n"
                      "        cp_async16(&buf[threadIdx.x * 4], src + (it * 64 + threadIdx.x) * 4, 16);\n"
                      "        cp_async_commit();\n"
                      "        cp_async_wait<0>();\n"
                      "        __syncthreads();\n"
                      "        float v = buf[(threadIdx.x < 32 ? threadIdx.x + 32 : threadIdx.x) * 4];  /* warp 0: warp 1's */\n"
                      "        acc += __shfl_xor_sync(0xffffffffu, v, 1);\n%s"
                      "    }\n"
                      "    o[threadIdx.x] = acc;\n}\n";
    char src[2][1024], err[1024];
    snprintf(src[0], sizeof src[0], fmt, "");
    snprintf(src[1], sizeof src[1], fmt, "        __syncthreads();  /* the read is done before the next copy */\n");
    float in[3 * 64 * 4] = {0}, want[64] = {0}, h[64];
    for (int it = 0; it < 3; it++)
        for (int t = 0; t < 64; t++) in[(it * 64 + t) * 4] = (float)(1000 * it + t);
    for (int t = 0; t < 64; t++)
        for (int it = 0; it < 3; it++) want[t] += in[(it * 64 + ((t ^ 1) < 32 ? (t ^ 1) + 32 : (t ^ 1))) * 4];
    uint64_t o = dev(sizeof h), d_in = dev(sizeof in);
    assert_true(cg_cuda_upload(drv, d_in, in, sizeof in, err, sizeof err));
    static const char *const orders[] = {NULL, "reverse", "reverse-warps"};
    for (int order = 0; order < 3; order++) {
        if (orders[order]) setenv("MOEPPC_CUDAEMU_ORDER", orders[order], 1);
        for (int bar = 0; bar < 2; bar++) {
            block64(src[bar], o, &d_in, h);
            bool right = !memcmp(h, want, sizeof h);
            printf("order %s, %s: %s\n", orders[order] ? orders[order] : "by index", bar ? "barrier" : "no barrier",
                   right ? "right" : "the race shows");
            assert_true(right == (bar || order < 2));
        }
        unsetenv("MOEPPC_CUDAEMU_ORDER");
    }
    const char *early = "extern \"C\" __global__ void k(float *o, const float *src) {\n"
                        "    __shared__ __align__(16) float buf[64 * 4];\n"
                        "    buf[threadIdx.x * 4] = -1.0f;\n"
                        "    cp_async16(&buf[threadIdx.x * 4], src + threadIdx.x * 4, 16);\n"
                        "    cp_async_commit();\n"
                        "    float before = buf[threadIdx.x * 4];  /* (no wait yet) */\n"
                        "    cp_async_wait<0>();\n"
                        "    o[threadIdx.x] = before;\n}\n";
    for (int eager = 0; eager < 2; eager++) {
        if (eager) setenv("MOEPPC_CUDAEMU_CP_ASYNC", "eager", 1);
        block64(early, o, &d_in, h);
        for (int t = 0; t < 64; t++) assert_true(h[t] == (eager ? in[t * 4] : -1.0f));
        printf("cp.async read before its wait: %s\n", eager ? "the new value (eager)" : "the old value");
    }
    unsetenv("MOEPPC_CUDAEMU_CP_ASYNC");
    cg_cuda_free(drv, o), cg_cuda_free(drv, d_in);
}

/* mbarriers: a thread waiting for a phase yields until another thread completes it (in either
 * order); a wait no thread will end is a deadlock error naming it, not a hang. */
static void test_mbarrier(void **state)
{
    (void)state;
    if (!drv) skip();
    const char *fmt = "extern \"C\" __global__ void k(float *o) {\n"
                      "    DYN_SHARED(u16, sm);\n"
                      "    u32 bar = smem_u32(sm);\n"
                      "    if (threadIdx.x == 0) mbar_init(bar, 1);\n"
                      "    __syncthreads();\n"
                      "    if (threadIdx.x == %d) mbar_expect_tx(bar, 0);  /* the phase's one arrival */\n"
                      "    while (!mbar_try_wait(bar, 0)) {}\n"
                      "    o[threadIdx.x] = 1.0f;\n}\n";
    char src[512], err[1024];
    uint64_t o = dev(32 * 4);
    unsigned grid[3] = {1, 1, 1}, block[3] = {32, 1, 1};
    void *args[] = {&o};
    for (int order = 0; order < 2; order++) { /* thread 0 arrives: the others wait for it first in reverse */
        if (order) setenv("MOEPPC_CUDAEMU_ORDER", "reverse", 1);
        snprintf(src, sizeof src, fmt, 0);
        assert_true(cg_cuda_fill32_async(drv, o, 0, 32, err, sizeof err));
        assert_true(cg_cuda_launch(drv, must_kernel(src), grid, block, 64, args, err, sizeof err));
        float h[32];
        assert_true(cg_cuda_download(drv, h, o, sizeof h, err, sizeof err));
        for (int t = 0; t < 32; t++) assert_true(h[t] == 1.0f);
    }
    unsetenv("MOEPPC_CUDAEMU_ORDER");
    snprintf(src, sizeof src, fmt, 99); /* nobody arrives */
    assert_false(cg_cuda_launch(drv, must_kernel(src), grid, block, 64, args, err, sizeof err));
    printf("%s\n", err);
    assert_non_null(strstr(err, "32 for an mbarrier phase no thread will complete"));
}

/* Programmatic dependent launch: a kernel launched with it runs when each of its threads waited
 * (griddepcontrol.wait) before touching memory; one whose thread did not is an error naming the
 * count, also when replayed from a graph; without the attribute the wait is not required. */
static void test_pdl(void **state)
{
    (void)state;
    if (!drv) skip();
    assert_true(cg_cuda_can_pdl(drv));
    void *good = must_kernel("extern \"C\" __global__ void k(float *o) { grid_dep_wait(); grid_dep_launch(); "
                             "o[threadIdx.x] = 1.0f; }\n");
    void *bad = must_kernel("extern \"C\" __global__ void k(float *o) { if (threadIdx.x) grid_dep_wait(); "
                            "o[threadIdx.x] = 2.0f; }\n");
    char err[1024];
    uint64_t o = dev(32 * 4);
    unsigned grid[3] = {1, 1, 1}, block[3] = {32, 1, 1};
    void *args[] = {&o};
    float h[32];
    assert_true(cg_cuda_launch_async_pdl(drv, good, grid, block, 0, args, true, err, sizeof err));
    assert_true(cg_cuda_sync(drv, err, sizeof err));
    assert_true(cg_cuda_download(drv, h, o, sizeof h, err, sizeof err));
    assert_true(h[31] == 1.0f);
    assert_true(cg_cuda_launch_async_pdl(drv, bad, grid, block, 0, args, false, err, sizeof err));
    bool ok = cg_cuda_launch_async_pdl(drv, bad, grid, block, 0, args, true, err, sizeof err) &&
              cg_cuda_sync(drv, err, sizeof err);
    printf("%s\n", err);
    assert_false(ok);
    assert_non_null(strstr(err, "1 of its 32 threads never executed griddepcontrol.wait"));
    void *exec = NULL;
    assert_true(cg_cuda_capture_begin(drv, err, sizeof err));
    assert_true(cg_cuda_launch_async_pdl(drv, bad, grid, block, 0, args, true, err, sizeof err));
    assert_true(cg_cuda_capture_end(drv, &exec, err, sizeof err));
    ok = cg_cuda_graph_launch(drv, exec, err, sizeof err) && cg_cuda_sync(drv, err, sizeof err);
    assert_false(ok);
    assert_non_null(strstr(err, "griddepcontrol.wait"));
    cg_cuda_graph_free(drv, exec);
}

/* cp.async lands at the wait_group that retires it: before, the destination is untouched. */
static void test_cp_async(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel("extern \"C\" __global__ void k(float *o) {\n"
                           "    __shared__ __align__(16) float s[3][4];\n"
                           "    __shared__ __align__(16) float src[8];\n"
                           "    int t = threadIdx.x;\n"
                           "    if (t == 0) {\n"
                           "        for (int i = 0; i < 12; i++) (&s[0][0])[i] = -1.0f;\n"
                           "        for (int i = 0; i < 8; i++) src[i] = (float)i;\n"
                           "        cp_async16(s[0], src, 16); cp_async_commit();\n"
                           "        cp_async16(s[1], src + 4, 8); cp_async_commit();\n"
                           "        o[0] = s[0][0];             /* -1: nothing has landed */\n"
                           "        cp_async_wait<1>();\n"
                           "        o[1] = s[0][3], o[2] = s[1][0]; /* 3, -1: the older group only */\n"
                           "        cp_async_wait<0>();\n"
                           "        o[3] = s[1][1], o[4] = s[1][2]; /* 5, 0: 8 bytes copied, 8 zero-filled */\n"
                           "    } }\n");
    char err[1024];
    uint64_t o = dev(64);
    run1(fn, 1, 32, o, err, sizeof err);
    assert_string_equal(err, "");
    float h[5];
    assert_true(cg_cuda_download(drv, h, o, sizeof h, err, sizeof err));
    assert_true(h[0] == -1.0f && h[1] == 3.0f && h[2] == -1.0f && h[3] == 5.0f && h[4] == 0.0f);
}

/* ldmatrix x4 (and .trans): lane l holds, of matrix i, the pair at row l / 4, columns 2 (l % 4) and
 * 2 (l % 4) + 1 (of the transposed matrix with .trans) — the layout mma.sync's fragments take. */
static void test_ldmatrix(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel("extern \"C\" __global__ void k(float *o) {\n"
                           "    __shared__ __align__(16) u16 m[4][8][8];\n"
                           "    int l = threadIdx.x;\n"
                           "    for (int q = l; q < 256; q += 32) (&m[0][0][0])[q] = (u16)q;\n"
                           "    __syncwarp();\n"
                           "    u32 r[4], t[4];\n"
                           "    ldmatrix_x4(r, &m[l / 8][l % 8][0]);\n"
                           "    ldmatrix_x4_trans(t, &m[l / 8][l % 8][0]);\n"
                           "    for (int i = 0; i < 4; i++) o[l * 8 + i] = (float)r[i], o[l * 8 + 4 + i] = (float)t[i]; }\n");
    char err[1024];
    uint64_t o = dev(32 * 8 * 4);
    run1(fn, 1, 32, o, err, sizeof err);
    assert_string_equal(err, "");
    float h[256];
    assert_true(cg_cuda_download(drv, h, o, sizeof h, err, sizeof err));
    for (unsigned l = 0; l < 32; l++)
        for (unsigned i = 0; i < 4; i++) {
            unsigned r = l / 4, c = 2 * (l % 4);
            unsigned lo = i * 64 + r * 8 + c, hi = lo + 1;             /* m[i][r][c], m[i][r][c + 1] */
            unsigned tlo = i * 64 + c * 8 + r, thi = i * 64 + (c + 1) * 8 + r; /* transposed */
            assert_true(h[l * 8 + i] == (float)(lo | hi << 16));
            assert_true(h[l * 8 + 4 + i] == (float)(tlo | thi << 16));
        }
}

/* Dynamic shared memory: above 48 KB through the launch's opt-in (cg_cuda_launch sets the attribute),
 * garbage (0xff) at the start of a block, shared by its threads; beyond an sm_90 block's 227 KB the
 * opt-in is refused with a message. */
static void test_dynamic_shared(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel("extern \"C\" __global__ void k(unsigned *o) {\n"
                           "    DYN_SHARED(unsigned, d);\n"
                           "    int t = threadIdx.x;\n"
                           "    if (t == 0) o[0] = d[16383];  /* the last word of 64 KB, before anyone wrote */\n"
                           "    __syncthreads();\n"
                           "    d[t * 512] = 100u * blockIdx.x + t;\n"
                           "    __syncthreads();\n"
                           "    o[1 + 32 * blockIdx.x + t] = d[((t + 1) % 32) * 512]; }\n");
    char err[1024];
    uint64_t o = dev(4 * 65);
    unsigned grid[3] = {2, 1, 1}, block[3] = {32, 1, 1};
    void *args[] = {&o};
    assert_true(cg_cuda_launch(drv, fn, grid, block, 64 * 1024, args, err, sizeof err));
    unsigned h[65];
    assert_true(cg_cuda_download(drv, h, o, sizeof h, err, sizeof err));
    assert_true(h[0] == 0xffffffffu);
    for (unsigned b = 0; b < 2; b++)
        for (unsigned t = 0; t < 32; t++) assert_int_equal(h[1 + 32 * b + t], 100 * b + (t + 1) % 32);
    assert_false(cg_cuda_launch(drv, fn, grid, block, 300 * 1024, args, err, sizeof err));
    printf("300 KB of dynamic shared memory -> %s\n", err);
    assert_non_null(strstr(err, "dynamic shared memory"));
}

/* The wgmma tests' tiles: A at the start of dynamic shared memory, B after its 64 rows, K-major core
 * matrices (LBO 128 bytes to the next 8 of k, SBO 256 to the next 8 rows); one m64n8k16 into d[4]. */
#define WG_DESC "    unsigned long long desc = (128ull >> 4) << 16 | (256ull >> 4) << 32;\n"
#define WG_MMA "    cudaemu_wgmma<8, true>(d, desc | (smem_u32(sm) >> 4), desc | (smem_u32(sm + 64 * 16) >> 4));\n"

/* The wgmma tests' kernels: `blocks` blocks of one warpgroup over 80 x 16 halves of dynamic shared
 * memory (A's 64 rows, B's 8 or more), then `bytes` of `out` read back into h. wg_fails: such a
 * launch fails, its message (printed after `what`) holding `need` and, unless NULL, `need2`. */
static void wg_launch(void *fn, unsigned blocks, void **args, uint64_t out, float *h, size_t bytes)
{
    unsigned grid[3] = {blocks, 1, 1}, block[3] = {128, 1, 1};
    char err[1024];
    bool ok = cg_cuda_launch(drv, fn, grid, block, 80 * 16 * 2, args, err, sizeof err) &&
              cg_cuda_download(drv, h, out, bytes, err, sizeof err);
    if (!ok) fprintf(stderr, "%s\n", err);
    assert_true(ok);
}

static void wg_fails(void *fn, unsigned blocks, void **args, const char *what, const char *need, const char *need2)
{
    unsigned grid[3] = {blocks, 1, 1}, block[3] = {128, 1, 1};
    char err[1024];
    assert_false(cg_cuda_launch(drv, fn, grid, block, 80 * 16 * 2, args, err, sizeof err));
    printf("%s -> %s\n", what, err);
    assert_non_null(strstr(err, need));
    if (need2) assert_non_null(strstr(err, need2));
}

/* wgmma m64n8k16 (bf16): A 64 x 16 and B 8 x 16 in the K-major core-matrix layout (LBO 128 bytes
 * to the next 8 of k, SBO 256 to the next 8 rows), A[r][k] = r - k, B[n][k] = k + n % 3; each lane's
 * D fragment (rows 16 w + l / 4 (+ 8), columns 2 (l % 4) (+ 1)) must hold the product plus its
 * start value. Lanes giving different descriptors end the launch with a message. */
static void test_wgmma(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel(
        "extern \"C\" __global__ void k(float *o) {\n"
        "    DYN_SHARED(u16, sm);\n"
        "    int t = threadIdx.x, l = t & 31;\n"
        "    for (int i = t; i < 80 * 16; i += 128) {  /* rows 0..63: A, 64..71: B */\n"
        "        int r = i / 16, k = i % 16, rr = r < 64 ? r : r - 64;\n"
        "        float v = r < 64 ? (float)(r - k) : (float)(k + rr % 3);\n"
        "        sm[(r < 64 ? 0 : 64 * 16) + (rr / 8) * 128 + (k / 8) * 64 + (rr % 8) * 8 + k % 8] = (u16)(pack_bf16(v, 0.f) & 0xffffu);\n"
        "    }\n"
        "    __syncthreads();\n"
        WG_DESC
        "    float d[4] = {1.f, 2.f, 3.f, 4.f};\n"
        WG_MMA
        "    for (int v = 0; v < 4; v++) o[t * 4 + v] = d[v];\n"
        "    if (blockIdx.x == 1) cudaemu_wgmma<8, true>(d, desc | (unsigned)l, desc);  /* lanes disagree */\n"
        "}\n");
    uint64_t o = dev(128 * 4 * 4);
    void *args[] = {&o};
    float h[512];
    wg_launch(fn, 1, args, o, h, sizeof h);
    for (int t = 0; t < 128; t++)
        for (int v = 0; v < 4; v++) {
            int w = t / 32, l = t % 32, r = 16 * w + l / 4 + 8 * (v / 2), n = 2 * (l % 4) + v % 2;
            double want = 1 + v;
            for (int k = 0; k < 16; k++) want += (double)(r - k) * (k + n % 3);
            assert_float_equal(h[t * 4 + v], want, 1e-3);
        }
    wg_fails(fn, 2, args, "wgmma with lanes disagreeing", "different descriptors", NULL);
}

/* A wgmma's tiles must stay as they were until the wait_group that retires it (the tensor cores
 * read them asynchronously): block 0 waits and then rewrites A (fine), block 1 rewrites A while the
 * group is in flight, which ends the launch with a message; a group left in flight by wait_group 1
 * is checked at the next wait. */
static void test_wgmma_in_flight(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel(
        "extern \"C\" __global__ void k(float *o) {\n"
        "    DYN_SHARED(u16, sm);\n"
        "    int t = threadIdx.x;\n"
        "    for (int i = t; i < 80 * 16; i += 128) sm[i] = (u16)0x3f80u;  /* 1.0 */\n"
        "    __syncthreads();\n"
        WG_DESC
        "    float d[4] = {0.f, 0.f, 0.f, 0.f};\n"
        "    wgmma_fence();\n"
        WG_MMA
        "    wgmma_commit();\n"
        "    wgmma_commit();  /* an empty group after it */\n"
        "    if (blockIdx.x == 0) wgmma_wait<0>();\n"
        "    else wgmma_wait<1>();  /* the MMA's group is older: retired too; then the empty one in flight */\n"
        "    __syncthreads();\n"
        "    if (blockIdx.x == 2) {\n"
        "    " WG_MMA
        "        wgmma_commit();\n"
        "    }\n"
        "    if (t == 0) sm[0] = (u16)0x4000u;  /* 2.0 into A */\n"
        "    __syncthreads();\n"
        "    wgmma_wait<0>();\n"
        "    o[blockIdx.x * 128 + t] = d[0];\n"
        "}\n");
    uint64_t o = dev(3 * 128 * 4);
    void *args[] = {&o};
    float h[256];
    wg_launch(fn, 2, args, o, h, sizeof h);
    for (int i = 0; i < 256; i++) assert_float_equal(h[i], 16.0, 0); /* 16 products of 1 x 1 */
    wg_fails(fn, 3, args, "a wgmma's tile rewritten before its wait_group", "block (2,0,0)",
             "written between its issue and the wait_group");
}

/* Tiles filled by cp.async (generic-proxy writes) need each copying thread's fence.proxy.async
 * before a wgmma (the async proxy) reads them: block 0 fences and computes, block 1 does not and
 * ends the launch with a message naming a thread whose copy was not fenced. */
static void test_wgmma_proxy_fence(void **state)
{
    (void)state;
    if (!drv) skip();
    void *fn = must_kernel(
        "extern \"C\" __global__ void k(const u16 *src, float *o) {\n"
        "    DYN_SHARED(u16, sm);\n"
        "    int t = threadIdx.x;\n"
        "    for (int i = t; i < 80 * 16 / 8; i += 128) cp_async16(sm + 8 * i, src + 8 * i, 16u);\n"
        "    cp_async_commit();\n"
        "    cp_async_wait<0>();\n"
        "    if (blockIdx.x == 0) fence_proxy_async();\n"
        "    __syncthreads();\n"
        WG_DESC
        "    float d[4] = {0.f, 0.f, 0.f, 0.f};\n"
        "    wgmma_fence();\n"
        WG_MMA
        "    wgmma_commit();\n"
        "    wgmma_wait<0>();\n"
        "    o[t] = d[0];\n"
        "}\n");
    uint16_t ones[80 * 16];
    for (int i = 0; i < 80 * 16; i++) ones[i] = 0x3f80u; /* 1.0 in bf16 */
    char err[1024];
    uint64_t src = dev(sizeof ones), o = dev(128 * 4);
    assert_true(cg_cuda_upload(drv, src, ones, sizeof ones, err, sizeof err));
    void *args[] = {&src, &o};
    float h[128];
    wg_launch(fn, 1, args, o, h, sizeof h);
    for (int i = 0; i < 128; i++) assert_float_equal(h[i], 16.0, 0);
    wg_fails(fn, 2, args, "wgmma over cp.async tiles without fence.proxy.async", "block (1,0,0)", "no fence.proxy.async");
}

/* The child of test_out_of_bounds: kernel k writes o[i] for thread i of a block of `threads` over an
 * allocation of `bytes` (offset by `at` bytes); or, with smem bytes of dynamic shared memory, there
 * (and o[i] from it); or (smem 1) into a thread's array of 32 floats: returns only if nothing faulted. */
static int oob_child(int threads, size_t bytes, long at, unsigned smem)
{
    setup(NULL);
    if (!drv) return 2;
    void *fn = must_kernel(smem == 1 ? "extern \"C\" __global__ void k(float *o) {\n"
                                       "    float r[32];\n"
                                       "    for (int i = 0; i < 32; i++) r[i] = o[i];\n"
                                       "    r[threadIdx.x] += 1.0f;\n"
                                       "    o[threadIdx.x] = r[threadIdx.x]; }\n"
                           : smem ? "extern \"C\" __global__ void k(float *o) {\n"
                                    "    DYN_SHARED(float, d);\n"
                                    "    d[threadIdx.x] = 1.0f;\n"
                                    "    __syncthreads();\n"
                                    "    o[threadIdx.x] = d[threadIdx.x]; }\n"
                                  : "extern \"C\" __global__ void k(float *o) { o[threadIdx.x] = 1.0f; }\n");
    smem = smem == 1 ? 0 : smem;
    char err[1024];
    uint64_t o = dev(bytes) + (uint64_t)at;
    unsigned grid[3] = {1, 1, 1}, block[3] = {(unsigned)threads, 1, 1};
    void *args[] = {&o};
    cg_cuda_launch(drv, fn, grid, block, smem, args, err, sizeof err);
    printf("oob child: ran: %s\n", err);
    return 0;
}

/* Runs `cudaemu oob threads bytes at smem` (this binary) and returns what it wrote on stderr;
 * *faulted: whether it ended by a signal or a failure exit (a sanitizer's SEGV report) rather than
 * exit 0. */
static char *oob_run(int threads, size_t bytes, long at, unsigned smem, bool *faulted)
{
    int fd[2];
    assert_int_equal(pipe(fd), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fd[1], 2), close(fd[0]), close(fd[1]);
        unsetenv("MOEPPC_CUDAEMU_BOUNDS"); /* (the kernels' bounds checked, whatever the caller's choice) */
        char t[16], b[32], a[32], sm[16];
        snprintf(t, sizeof t, "%d", threads), snprintf(b, sizeof b, "%zu", bytes), snprintf(a, sizeof a, "%ld", at);
        snprintf(sm, sizeof sm, "%u", smem);
        execl("/proc/self/exe", "cudaemu", "oob", t, b, a, sm, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    size_t cap = 1 << 16, n = 0;
    char *out = calloc(cap, 1);
    for (ssize_t r; n + 1 < cap && (r = read(fd[0], out + n, cap - 1 - n)) > 0;) n += (size_t)r;
    close(fd[0]);
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    *faulted = WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0);
    return out;
}

/* Device memory's guard pages: a block of 65 threads writing o[0..64] over 256 bytes writes 4 past the
 * end, named; 70 threads over 257 bytes (rounded to 512) stay within the rounding and run, as on a GPU;
 * o[-1..] over a page-sized allocation (its start at a page's) reaches before it, named too. Dynamic
 * shared memory's: 33 threads over 128 bytes of it write 4 past its end; 32 run. A thread's array of
 * 32 indexed by threadIdx.x: thread 32 of 33 traps (the kernels compiled with -fsanitize=bounds). */
static void test_out_of_bounds(void **state)
{
    (void)state;
    if (!drv) skip();
    bool faulted;
    char *out = oob_run(65, 256, 0, 0, &faulted);
    printf("65 floats into 256 bytes -> %s", out);
    assert_true(faulted);
    assert_non_null(strstr(out, "CUDA emulator: kernel k, block (0,0,0), thread (64,0,0): an access 0 bytes past the "
                                "end of the device allocation of 256 bytes"));
    free(out);
    out = oob_run(70, 257, 0, 0, &faulted);
    assert_false(faulted);
    assert_null(strstr(out, "CUDA emulator"));
    free(out);
    out = oob_run(8, 4096, -4, 0, &faulted);
    printf("o[-1] of 4096 bytes -> %s", out);
    assert_true(faulted);
    assert_non_null(strstr(out, "thread (0,0,0): an access 4 bytes before the device allocation of 4096 bytes"));
    free(out);
    out = oob_run(33, 256, 0, 128, &faulted);
    printf("33 floats into 128 bytes of shared memory -> %s", out);
    assert_true(faulted);
    assert_non_null(strstr(out, "thread (32,0,0): an access 0 bytes past the end of the block's dynamic shared memory "
                                "of 128 bytes"));
    free(out);
    out = oob_run(32, 256, 0, 128, &faulted);
    assert_false(faulted);
    free(out);
    out = oob_run(33, 256, 0, 1, &faulted);
    printf("r[32] of a thread's 32 floats -> %s", out);
    assert_true(faulted);
    assert_non_null(strstr(out, "thread (32,0,0): an index past the bounds of an array"));
    free(out);
}

int main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "oob") == 0)
        return oob_child(atoi(argv[2]), strtoull(argv[3], NULL, 10), strtol(argv[4], NULL, 10),
                         (unsigned)strtoul(argv[5], NULL, 10));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_divergent_barrier), cmocka_unit_test(test_partial_warp),
        cmocka_unit_test(test_gpu_image_refused), cmocka_unit_test(test_shared_per_block),
        cmocka_unit_test(test_capture),           cmocka_unit_test(test_cp_async),
        cmocka_unit_test(test_ldmatrix),          cmocka_unit_test(test_dynamic_shared),
        cmocka_unit_test(test_embedded_image),    cmocka_unit_test(test_wgmma), cmocka_unit_test(test_wgmma_in_flight), cmocka_unit_test(test_wgmma_proxy_fence),
        cmocka_unit_test(test_pdl),               cmocka_unit_test(test_order),
        cmocka_unit_test(test_warps_ahead),       cmocka_unit_test(test_launcher_waits),
        cmocka_unit_test(test_mbarrier),
        cmocka_unit_test(test_library),           cmocka_unit_test(test_out_of_bounds),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
