/* run.c — `moeppc run`: the driver (runtime/cpu/driver.c) on the CPU backend with kernels from the
 * JIT when it is built (the default then), else the interpreter alone. */
#include "runtime/cpu/driver.h"
#include "tools/commands.h"

int cmd_run(int argc, char **argv)
{
    DriverConfig cfg = {.prog = "moeppc run"};
#ifdef MOEPPC_HAVE_JIT
    cfg.default_cpu = true; /* the generated kernels; --backend interp for the reference interpreter */
    cfg.kernels_new = cpu_jit_source_new;
    cfg.kernels_free = cpu_jit_source_free;
    cfg.load_tuning = tuning_load_for_host;
    cfg.host_options = cpu_host_pass_options;
#endif
#ifdef MOEPPC_HAVE_CUDA
    cfg.cuda = &cuda_backend; /* --device cuda: kernels compiled by NVRTC for the GPU at load */
    cfg.cuda_compile = cuda_nvrtc_cubins;
    cfg.nvrtc_version = cg_cuda_nvrtc_version_text();
#endif
    return driver_main(argc, argv, &cfg);
}
