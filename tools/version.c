/* version.c — `moeppc --version [--verbose]`: the version; verbose, what a bug report needs beside it:
 * how this moeppc was built, the LLVM it generates CPU code with and what it makes of this CPU, the
 * NVRTC it compiles GPU kernels with and the architectures it can target, and the CUDA driver and GPUs
 * it finds here (each part said as absent where this build or machine has none). */
#include "passes/passes.h"
#include "runtime/runtime.h"
#include "tools/commands.h"

#ifdef MOEPPC_HAVE_JIT
#include "codegen/llvm/cg_llvm.h"
#include "runtime/cpu/cpu.h"
#endif
#ifdef MOEPPC_HAVE_CUDA
#include "codegen/cuda/cg_cuda.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef MOEPPC_BUILD_TYPE
#define MOEPPC_BUILD_TYPE "unknown"
#endif
#define STR_(x) #x
#define STR(x) STR_(x)
#if defined(__clang__)
#define CC_NAME "clang " STR(__clang_major__) "." STR(__clang_minor__) "." STR(__clang_patchlevel__)
#elif defined(__GNUC__)
#define CC_NAME "GCC " __VERSION__
#else
#define CC_NAME "unknown"
#endif

static void cpu_part(void)
{
    printf("  CPU:          %d CPUs this process may use, %.1f GB of memory available\n", cpus_available(),
           mem_available_bytes() / 1e9);
#ifdef MOEPPC_HAVE_JIT
    CgTarget t;
    char err[256], why[160];
    printf("  LLVM:         %s (CPU kernels: JIT, objects)\n", cg_llvm_version());
    if (!cg_target_detect(&t, CG_ISA_AUTO, err, sizeof err)) {
        printf("  CPU kernels:  none: %s\n", err);
        return;
    }
    cg_isa host = cg_host_isa();
    printf("  CPU kernels:  %s, for %s (LLVM's name for this CPU)", cg_isa_name(t.isa), t.cpu);
    if (t.isa < host) printf("; MOEPPC_ISA narrowed them from %s", cg_isa_name(host));
    printf("\n");
    printf("  bf16 GEMMs:   on the bf16 dot product: %s\n", cpu_bf16_dot_why(why, sizeof why));
    printf("                on AMX tiles: %s\n", cpu_amx_why(why, sizeof why));
    cg_target_dispose(&t);
#else
    printf("  LLVM:         not built in (the interpreter only: no CPU kernels)\n");
#endif
}

static void gpu_part(void)
{
#ifdef MOEPPC_HAVE_CUDA
    int major = 0, minor = 0;
    if (!cg_cuda_nvrtc_version(&major, &minor)) {
        printf("  NVRTC:        cannot tell its version\n");
    } else {
        printf("  NVRTC:        %d.%d; targets:", major, minor);
        for (int k = TARGET_SM80; k <= TARGET_SM90; k++) {
            const char *arch = pass_target_name((pass_target)k);
            printf(" %s%s", arch, cg_cuda_nvrtc_supports(arch) ? "" : " (not by this NVRTC)");
        }
        printf("\n");
    }
    const char *path = getenv("MOEPPC_CUDA_DRIVER");
    char err[512];
    CgCudaDriver *d = cg_cuda_driver_probe(err, sizeof err); /* (no context on any GPU) */
    if (!d) {
        printf("  CUDA driver:  none usable: %s\n", err);
        return;
    }
    int v = cg_cuda_driver_version(d), n = cg_cuda_device_count(d);
    printf("  CUDA driver:  %s", path && path[0] ? path : "libcuda.so.1");
    if (v > 0) printf(", CUDA %d.%d", v / 1000, v % 1000 / 10);
    printf("; %d device%s\n", n, n == 1 ? "" : "s");
    for (int k = 0; k < n; k++) {
        CgCudaDeviceInfo di;
        if (!cg_cuda_device_info(d, k, &di)) continue;
        printf("    %d: %s, %s", k, di.name, di.arch[0] ? di.arch : "architecture unknown");
        if (di.sms > 0) printf(", %d SMs", di.sms);
        if (di.bytes > 0) printf(", %.1f GB", (double)di.bytes / 1e9);
        printf("\n");
    }
    cg_cuda_driver_close(d);
#else
    printf("  CUDA:         not built in (no CUDA toolkit when this moeppc was built)\n");
#endif
}

int cmd_version(int argc, char **argv)
{
    bool verbose = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--verbose") == 0 || strcmp(argv[i], "-v") == 0) verbose = true;
        else return usage_error("--version", "--version [--verbose]", "unexpected argument '%s'", argv[i]);
    }
    printf("moeppc %s\n", MOEPPC_VERSION);
    if (!verbose) return 0;
    printf("  built:        %s build, %s, C compiler %s\n", MOEPPC_BUILD_TYPE,
#ifdef MOEPPC_SANITIZED
           "ASan and UBSan",
#else
           "no sanitizers",
#endif
           CC_NAME);
    cpu_part();
    gpu_part();
    return fflush(stdout) == 0 ? 0 : 1;
}
