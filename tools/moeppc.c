/* moeppc.c — the command line: one binary, git-style subcommands. */
#include "frontend/frontend.h"
#include "runtime/runtime.h"
#include "tools/commands.h"
#include "passes/passes.h"

#include <stdio.h>
#include <string.h>

#ifndef MOEPPC_HAVE_JIT
int cmd_build(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeppc build: error: this moeppc was built without the LLVM C API (install llvm-dev and "
                    "reconfigure), so it cannot generate code\n");
    return 1;
}

int cmd_bench(int argc, char **argv)
{
    const char *dev = args_value(argc, argv, "--device");
    if (dev && strcmp(dev, "cpu") != 0) return bench_cuda(argc, argv);
    fprintf(stderr, "moeppc bench: error: this moeppc was built without the LLVM C API: no CPU backend to time\n");
    return 1;
}

int cmd_tune(int argc, char **argv)
{
    TuneArgs a;
    int rc = tune_parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    if (a.target != TARGET_CPU) return tune_cuda(&a); /* the GPU's tiles need no LLVM */
    fprintf(stderr, "moeppc tune: error: this moeppc was built without the LLVM C API: no CPU kernels to tune\n");
    return 1;
}

int cmd_emit(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeppc emit: error: this moeppc was built without the LLVM C API: no kernels to emit\n");
    return 1;
}
#endif

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *usage;
} Command;

static const Command commands[] = {
    {"check", cmd_check, "check SPEC                      validate a spec; print parameters, FLOPs/token, expert mix"},
    {"import-hf", cmd_import_hf, "import-hf CONFIG.json -o SPEC   convert a Hugging Face MoE++ config to a spec"},
    {"compile", cmd_compile, "compile SPEC|--ir FILE [-O0] [--print-ir] [--print-after=PASS] [--stats] [-o F]  IR"},
    {"init-weights", cmd_init_weights, "init-weights SPEC --seed N -o FILE.safetensors   write seeded random weights"},
    {"run", cmd_run, "run SPEC (--weights W | --random-weights SEED) --ids \"1 2 3\" [--backend interp|cpu] [--generate N]"},
    {"bench", cmd_bench, "bench SPEC [--layer] [--model] [--experts] [--tokens 1,64,512] [--dtype f32] [--device cuda] [--json]"},
    {"tune", cmd_tune, "tune SPEC -o DB [--tokens 1,16,64,512,4096] [--budget S]  measure tiles for this CPU"},
    {"emit", cmd_emit, "emit SPEC --emit llvm|obj|lib|cuda|ptx|cubin -o DIR [--target …]   the kernels as files (lib: a layer library)"},
    {"build", cmd_build, "build SPEC -o MODEL                executable: kernels + plan + runtime (CPU)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moeppc COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < MOE_ARRAY_LEN(commands); i++) fprintf(f, "  moeppc %s\n", commands[i].usage);
    fprintf(f, "\n  moeppc COMMAND --help   details of one command\n  moeppc --version\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) {
        printf("moeppc %s\n", MOEPPC_VERSION);
        return 0;
    }
    for (size_t i = 0; i < MOE_ARRAY_LEN(commands); i++)
        if (strcmp(cmd, commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    const char *best = NULL;
    int best_d = 3;
    for (size_t i = 0; i < MOE_ARRAY_LEN(commands); i++) {
        int d = str_edit_distance(cmd, commands[i].name);
        if (d < best_d) best_d = d, best = commands[i].name;
    }
    fprintf(stderr, "moeppc: error: unknown command '%s'", cmd);
    if (best) fprintf(stderr, "; did you mean '%s'?", best);
    fprintf(stderr, "\n");
    usage(stderr);
    return 2;
}
