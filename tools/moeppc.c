/* moeppc.c — the command line: one binary, git-style subcommands. */
#include "frontend/frontend.h"
#include "runtime/runtime.h"
#include "tools/commands.h"
#include "tools/help.h"
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
} Command;

static const Command commands[] = { /* each with its page in tools/help.c */
    {"check", cmd_check}, {"import-hf", cmd_import_hf}, {"compile", cmd_compile}, {"init-weights", cmd_init_weights},
    {"run", cmd_run},     {"bench", cmd_bench},         {"tune", cmd_tune},       {"emit", cmd_emit},
    {"build", cmd_build}, {"tokenize", cmd_tokenize},     {"panel-cache", cmd_panel_cache},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moeppc COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < MOE_ARRAY_LEN(commands); i++)
        fprintf(f, "  %-13s %s\n", commands[i].name, help_summary(commands[i].name));
    fprintf(f, "\nmoeppc COMMAND --help (or moeppc help COMMAND): what a command does, each option, its defaults\n"
               "moeppc --version [--verbose]   (verbose: the build, LLVM, this CPU, NVRTC, the CUDA driver, GPUs)\n");
}

static const Command *find_command(const char *name)
{
    for (size_t i = 0; i < MOE_ARRAY_LEN(commands); i++)
        if (strcmp(name, commands[i].name) == 0) return &commands[i];
    return NULL;
}

/* "moeppc: error: unknown command 'x'; did you mean 'y'?" and the command list; returns 2. */
static int unknown_command(const char *cmd)
{
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

/* COMMAND's page; run prints its own (the executables share it). */
static int help(const Command *c)
{
    if (help_print(stdout, c->name)) return 0;
    char *argv[] = {(char *)c->name, (char *)"--help", NULL};
    return c->fn(2, argv);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "help") == 0 && argc > 2) {
        const Command *c = find_command(argv[2]);
        return c ? help(c) : unknown_command(argv[2]);
    }
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(cmd, "--version") == 0) return cmd_version(argc - 1, argv + 1);
    const Command *c = find_command(cmd);
    if (!c) return unknown_command(cmd);
    for (int a = 2; a < argc; a++)
        if (strcmp(argv[a], "--help") == 0 || strcmp(argv[a], "-h") == 0) return help(c);
    return c->fn(argc - 1, argv + 1);
}
