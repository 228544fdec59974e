/* cg_internal.h — what the files of codegen/llvm share and nobody else needs: error helpers,
 * target-machine creation and the IR builder entry point. */
#ifndef MOEPPC_CG_INTERNAL_H
#define MOEPPC_CG_INTERNAL_H

#include "codegen/llvm/cg_llvm.h"

#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/Orc.h>
#include <llvm-c/TargetMachine.h>

/* printf into err[errlen] (NULL/0 allowed); always returns false so callers can `return cg_fail(...)`. */
bool cg_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Report an LLVMErrorRef with LLVM's own message (consumes it); false. */
bool cg_fail_llvm(char *err, size_t errlen, const char *what, LLVMErrorRef e);

/* vdpbf16ps (llvm.x86.avx512bf16.dpbf16ps.512) declared in mod: its function type and function, and the
 * types of its two bf16-pair operands (<16 x i32> on LLVM 14, <32 x bfloat> on newer LLVMs: bitcast
 * pair words to them). The GEMMs' dot-product kernels and attention's dot form call it. */
typedef struct {
    LLVMTypeRef ty, a, b;
    LLVMValueRef fn;
} CgDotIntrinsic;
CgDotIntrinsic cg_dot_intrinsic(LLVMModuleRef mod);

/* A target machine for t: O3, PIC when `pic` (objects linked into PIE executables), else JIT code. */
LLVMTargetMachineRef cg_target_machine(const CgTarget *t, bool pic, char *err, size_t errlen);

/* Build the micro-kernel for cfg as function `symbol` in a new module of ctx (not yet optimised). */
LLVMModuleRef cg_build_kernel_module(LLVMContextRef ctx, const CgTarget *t, const CgKernelConfig *cfg,
                                     const char *symbol);

/* A new thread-safe context for LLJIT modules, with the LLVM context inside it in *ctx (owned by the
 * returned reference: dispose that alone). Hides LLVM 21's change of how the two are made. */
LLVMOrcThreadSafeContextRef cg_thread_safe_context(LLVMContextRef *ctx);
/* The JIT's LLVM context: build modules in it for cg_jit_compile_module. */
LLVMContextRef cg_jit_context(CgJit *jit);
/* Verify mod, optimise it with "default<O3>" for the host, JIT it and return the address of
 * `symbol`. Takes mod (disposed on failure). NULL with err on failure. Not thread-safe, like every
 * kernel build. (Object files of such kernels: cg_jit_emit_many.) */
void *cg_jit_compile_module(CgJit *jit, LLVMModuleRef mod, const char *symbol, char *err, size_t errlen);

/* Many kernels compiled at once on `threads` threads, each then linked into jit: a GEMM micro-kernel
 * (gemm: cfg, a tile of this ISA; cached in jit, cg_jit_kernel finds it) or another kernel, the
 * module build(ctx, arg, ...) makes under symbol (thread-safe: it touches only ctx), its address in
 * fn. None may be in jit already, none twice. False with err (the first failure) if any fails; the
 * ones linked before it stay. */
typedef LLVMModuleRef (*CgJitBuild)(LLVMContextRef ctx, const void *arg, int vec_width, const char *symbol, char *err,
                                    size_t errlen);
typedef struct CgJitJob {
    bool           gemm;
    CgKernelConfig cfg;
    CgJitBuild     build;
    const void    *arg;
    char           symbol[256];  /* another kernel's (set by the caller); a GEMM's is set here */
    const char    *obj_path;     /* cg_jit_emit_many: where its object goes (NULL: none, only IR dumps) */
    void          *fn;           /* out (cg_jit_compile_many) */
    bool           done;         /* out: compiled (and written) */
    char           err[512];     /* (a job's own failure) */
    LLVMMemoryBufferRef obj;
} CgJitJob;
bool cg_jit_compile_many(CgJit *jit, CgJitJob *jobs, int n, int threads, char *err, size_t errlen);
/* The same jobs compiled ahead of time: each optimised as cg_jit_kernel with obj_path optimises
 * (cg_jit_dump_ir's IR included) and written position-independent to its obj_path, bit for bit what
 * cg_jit_kernel writes there; nothing is linked into jit. */
bool cg_jit_emit_many(CgJit *jit, CgJitJob *jobs, int n, int threads, char *err, size_t errlen);
/* The kernels jit read from MOEPPC_JIT_CACHE (hits) and wrote there (kept), so far. */
void cg_jit_cache_counts(const CgJit *jit, int *hits, int *kept);
/* Whether jit has compiled the GEMM micro-kernel of cfg already. */
bool cg_jit_has_kernel(const CgJit *jit, const CgKernelConfig *cfg);

#endif
