/* help.h — the command line's own documentation: each command's synopsis (the line a usage error
 * prints, and the first line of its --help) and its help page (what it does, every option with its
 * default, the environment it reads, its exit status).
 *
 * `moeppc COMMAND --help` and `moeppc help COMMAND` print the page; `moeppc --help` lists the
 * commands with a line each. `run` prints its own page (runtime/cpu/driver.c), which the executables
 * `moeppc build` writes share. tests/frontend/test_help.sh checks that every option a command's
 * parser accepts is on its page and that the synopses here are the ones its errors print.
 */
#ifndef MOEPPC_TOOLS_HELP_H
#define MOEPPC_TOOLS_HELP_H

#include <stdbool.h>
#include <stdio.h>

#define COMPILE_USAGE "compile (SPEC | --ir FILE) [-O0|-O1] [--target cpu|sm_80|sm_86|sm_89|sm_90] [--print-ir] " \
                      "[--print-after=PASS|all] [--pass NAME] [--stats] [--tuning DB] [-o FILE.ir]"
#define BENCH_USAGE "bench SPEC [--layer] [--model [--context P] [--batch [--rows R]]] [--experts [--zc-share P]] " \
                    "[--tokens 1,64,512] [--threads N] " \
                    "[--device cpu|cuda[:N]] [--random-weights SEED] [--dtype f32|bf16|f16] [--reps N] [--tuning DB] " \
                    "[--panel-cache DIR] [--json]"
#define BENCH_CUDA_USAGE "bench SPEC --device cuda[:N] [--tokens 1,64,512,4096] [--reps N] [--random-weights SEED] " \
                         "[--dtype f32|bf16|f16] [--context P [--batch [--rows R]]] [--zc-share P] [--peak-tflops X] " \
                         "[--bandwidth-gbs Y] " \
                         "[--tile MxNxK[/MxNxK]] [--tuning GPU-DB] [--json]"
#define TUNE_USAGE "tune SPEC -o DB [--target cpu|sm_80|sm_86|sm_89|sm_90 [--device cuda[:N]]] " \
                   "[--tokens 1,16,64,512,4096] " \
                   "[--budget SECONDS] [--threads N] [--dtype f32|bf16|f16] [--check] [--check-margin PCT]"
#define BUILD_USAGE "build SPEC -o MODEL [--target cpu|sm_80|sm_86|sm_89|sm_90] [--tuning DB] [--keep-temps]"
#define EMIT_USAGE "emit SPEC --emit llvm|obj|lib|cuda|ptx|cubin -o DIR [--target cpu|sm_80|sm_86|sm_89|sm_90|emu (lib)] " \
                   "[--tuning DB]"

/* The one-line summary of a command for `moeppc --help`, or NULL for an unknown one. */
const char *help_summary(const char *cmd);
/* Print the page of cmd to f: false when cmd has none here (unknown, or `run`, which prints its own). */
bool help_print(FILE *f, const char *cmd);

#endif
