/* driver.h — the command-line driver that runs a whole model: `moeppc run` and every executable
 * `moeppc build` writes share it.
 *
 * In:  argv (SPEC unless one is embedded, --weights/--random-weights, --ids, --backend, --threads,
 *      --generate, --logits-out, --routes-out, --route-stats, …) and a DriverConfig saying where the
 *      spec, the IR and the kernels come from.
 * Out: predictions, routing statistics and timings on stdout, files on request; the exit status
 *      (0 ok, 1 bad input or failure, 2 usage).
 */
#ifndef MOEPPC_RUNTIME_DRIVER_H
#define MOEPPC_RUNTIME_DRIVER_H

#include "runtime/cpu/cpu.h"
#include "runtime/cuda/cuda_exec.h"

struct TuneDb; /* passes/tuning.h */

typedef struct DriverConfig {
    const char *prog;             /* "moeppc run" or the executable's name, for messages           */
    const char *spec_text;        /* an embedded spec (YAML), or NULL: SPEC is the first argument   */
    const char *ir_text;          /* an embedded planned IR, or NULL: lower and optimise the spec   */
    bool default_cpu;             /* --backend cpu unless told otherwise                            */
    /* Where the CPU backend's kernels come from (NULL: no CPU backend in this build). */
    CpuKernelSource *(*kernels_new)(RtError *err);
    void (*kernels_free)(CpuKernelSource *ks);
    /* --tuning DB: load a tuning database for this host (NULL: the option is not available here). */
    bool (*load_tuning)(const char *path, struct TuneDb *db);
    /* The host's part of the pass options for the CPU backend (cpu_host_pass_options: the bf16 dot
     * product, the rule's tile). NULL: none (an executable's module was planned when it was built). */
    void (*host_options)(struct PassOptions *po);
    /* --device cuda: the CUDA executor (NULL: no CUDA backend in this build), and the kernels built
     * into an executable (NULL: NVRTC compiles them for the GPU at load). */
    const CudaBackend *cuda;
    const CudaKernelImage *cuda_images;
    int n_cuda_images;
    const char *cuda_arch;
    const char *const *cuda_tile_sched; /* the grouped GEMMs' tiles, attention's and the router's
                                     forms by token count the kernels were built with (up, down,
                                     attention, route;
                                     CudaOptions.tile_sched), from a GPU
                                     tuning database; NULL: the rule's                             */
    CudaCompileFn cuda_compile;   /* NVRTC for what is not built in (moeppc run), or NULL          */
    const char *nvrtc_version;    /* "NVRTC 13.0" with cuda_compile: what a GPU tuning database
                                     must have been made with (--tuning with --device cuda)        */
    /* A built executable's --version: what made it ("moeppc 0.1.0"; NULL: moeppc run itself), the
     * CPU its n_cpu_kernels kernels were compiled for (LLVM's name), that compilation's LLVM
     * feature list (checked against this CPU) and its vector extensions alone (to print). */
    const char *built_by, *cpu_name, *cpu_features, *cpu_vector_features;
    int n_cpu_kernels;
} DriverConfig;

int driver_main(int argc, char **argv, const DriverConfig *cfg);

#endif
