/* recorder.h — a CPU kernel source (cpu.h) that compiles every kernel a module asks for through the
 * JIT and also writes it as an object file: what `moeppc build`, `moeppc emit --emit llvm|obj` and
 * `moeppc emit --emit lib` link or ship (tools/build.c). */
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
    CpuKernelEntry *e;        /* what was compiled, in order (symbols xstrdup'd)  */
    int n;
} Recorder;

/* The two callbacks of a CpuKernelSource whose ctx is a Recorder. */
const CgKernel *recorder_gemm(void *ctx, const CgKernelConfig *want, RtError *err);
void           *recorder_op(void *ctx, const CgOpDesc *d, RtError *err);
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
