/* ops_test_util.h — the harness of the codegen/llvm/ops tests: one LLJIT for the host (process
 * symbols attached, so libm calls like expf/cos resolve), kernels built with cg_ops_build, verified,
 * optimised with "default<O3>" and JIT-compiled (cached by symbol); and the reference interpreter run
 * on a tiny IR module whose params are written to a temporary safetensors file. */
#ifndef MOEPPC_OPS_TEST_UTIL_H
#define MOEPPC_OPS_TEST_UTIL_H

#include "codegen/llvm/ops/cg_ops.h"
#include "ir/ir.h"

typedef struct OpsJit OpsJit;

typedef struct OjTimes {
    double build_ms, opt_ms, jit_ms; /* cg_ops_build + verify; O3; add to the JIT + lookup (codegen) */
} OjTimes;

OpsJit *oj_new(void);              /* aborts on failure (the test cannot run without a JIT) */
void    oj_free(OpsJit *j);
int     oj_vec_width(const OpsJit *j);
bool    oj_has_amx(const OpsJit *j);      /* the host's AMX tiles, granted (CgTarget.has_amx) */
bool    oj_has_bf16_dot(const OpsJit *j); /* AVX512-BF16 at the JIT's ISA (CgTarget.has_bf16_dot) */
/* The kernel for d (compiled on first request); times may be NULL. Aborts with LLVM's message on any
 * failure. */
void   *oj_kernel(OpsJit *j, const CgOpDesc *d, OjTimes *times);
/* d's optimised IR as text (caller frees). */
char   *oj_ir_text(OpsJit *j, const CgOpDesc *d);

/* Evaluate `body` (instructions and outputs, IR text) after the header
 *   input %ids : i32[T]; input %pos : i32[T]; param %<name> : <dtype>[shape] = "<name>" per tensor
 * on T tokens in EVAL_F32 mode. Aborts if parsing or evaluation fails. */
void    oj_eval(const char *body, const Tensor *params, int n_params, const int32_t *ids, const int32_t *pos,
                int64_t T, EvalResult *res);
const double *oj_out(const EvalResult *res, const char *name);

void    oj_random(moe_rng *r, float *out, size_t n, double lo, double hi);
/* max |got - want| / max |want| over n values (0 when both are all zero); prints the worst index. */
double  oj_rel_err(const char *label, const float *got, const double *want, size_t n);
double  oj_now_ms(void);
/* bytes (a multiple of 4: the kernels load at a float's alignment) that end where an unmapped page begins, so that a kernel reading past
 * them faults instead of reading the next allocation (JIT code carries no sanitizer checks). */
void   *oj_guarded_alloc(size_t bytes);
void    oj_guarded_free(void *p, size_t bytes);

#endif
