/* recorder.h — every CPU kernel a module asks for, compiled at once on the available CPUs and written
 * as object files: what `moeppc build`, `moeppc emit --emit llvm|obj` and `moeppc emit --emit lib`
 * link or ship (tools/build.c). */
#ifndef MOEPPC_TOOLS_RECORDER_H
#define MOEPPC_TOOLS_RECORDER_H

#include "codegen/llvm/cg_internal.h"
#include "runtime/cpu/cpu.h"

#include <stdio.h>

typedef struct Recorder {
    CgJit *jit;
    const char *dir;
    bool by_symbol;           /* emit: DIR/SYMBOL.o; build and lib: DIR/kN.o */
    bool no_objects;          /* emit llvm: only the IR text (cg_jit_dump_ir) */
    CpuKernelEntry *e;        /* what was compiled, in the order m asks (symbols xstrdup'd; fn NULL) */
    int n;
} Recorder;

/* Every kernel m asks for (cpu_kernel_list) compiled by r->jit's generators on cpu_jit_threads()
 * threads (cg_jit_emit_many), each to its object file in r->dir (or, no_objects, its optimised IR
 * when cg_jit_dump_ir is on), and listed in r->e. On failure false with err, no object left behind
 * and nothing listed. */
bool recorder_compile(Recorder *r, const IrModule *m, RtError *err);
/* The entries and the JIT. */
void recorder_free(Recorder *r);
/* The recorded kernels as C: their extern declarations and `static const CpuKernelEntry NAME[]`. */
void write_kernel_table(FILE *f, const Recorder *r, const char *name);

/* text as a C string literal, one source line per line of text, escaped. */
void write_c_literal(FILE *f, const char *text);
/* n bytes as a C string literal of octal escapes (the length is given separately). */
void write_c_bytes(FILE *f, const unsigned char *p, size_t n);
/* Each kernel's cubin and PTX as C arrays, then `static const CudaKernelImage TABLE[]` naming them. */
struct CudaKernelCode;
struct CgCudaBinary;
void write_cuda_images(FILE *f, const struct CudaKernelCode *code, const struct CgCudaBinary *bin, int n,
                       const char *table);

#endif
