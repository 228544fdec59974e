/* llvm_test_util.h — shared by the codegen/llvm tests: one JIT per ISA for the whole process (kernels
 * cached inside), random data, and dtype-rounded weights so references see what the kernel sees. */
#ifndef MOEPPC_LLVM_TEST_UTIL_H
#define MOEPPC_LLVM_TEST_UTIL_H

#include "codegen/llvm/cg_llvm.h"

/* The ISAs this host can run, widest first; returns how many (1..3). */
int      tu_isas(cg_isa out[3]);
CgJit   *tu_jit(cg_isa isa);            /* created on first use, asserts on failure */
void     tu_jits_free(void);
const CgKernel *tu_kernel(cg_isa isa, const CgKernelConfig *cfg);
/* blk's edge kernels for kern (cg_jit_edges; asserts they build). */
void     tu_edges(cg_isa isa, const CgKernel *kern, CgBlocking *blk);
/* n random values in [-1, 1) as f32, and the same values stored in dtype (raw bytes, n elements). */
void     tu_random(moe_rng *r, float *out, size_t n);
void    *tu_to_dtype(const float *src, size_t n, moe_dtype dt);
/* |got - want| <= tol; on failure print label, the index and both values. Counts mismatches. */
bool     tu_close(const char *label, size_t idx, double got, double want, double tol, int *n_bad);

#endif
