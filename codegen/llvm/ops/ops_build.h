/* ops_build.h — a thin layer over the LLVM C builder so each kernel of cg_ops.h reads as a short
 * function: counted loops with phi-carried values, typed loads of activations (f32) and weights
 * (f32/bf16/f16 widened to f32), explicit <vw x float> vectors for reductions (the C API of LLVM 14
 * cannot set fast-math flags, so O3 never vectorises an fp reduction we write as a scalar loop),
 * and math through LLVM intrinsics (exp, sqrt, cos and sin lower to libm calls; the JIT must resolve
 * process symbols).
 * Every helper emits at the builder's current position. Integers are i64 unless named otherwise.
 */
#ifndef MOEPPC_CG_OPS_BUILD_H
#define MOEPPC_CG_OPS_BUILD_H

#include "codegen/llvm/ops/cg_ops.h"

#include <llvm-c/Core.h>

typedef struct Ob {
    LLVMContextRef ctx;
    LLVMModuleRef mod;
    LLVMBuilderRef b;
    LLVMValueRef fn;
    LLVMBasicBlockRef entry;  /* allocas live here, so mem2reg/SROA can see them */
    LLVMTypeRef tv, ti1, ti8, ti16, ti32, ti64, tf16, tf32, tf64, tptr, tvf; /* tvf = <vw x float> */
    int vw;                   /* f32 lanes per vector */
} Ob;

/* A new module holding `void symbol(params...)`, builder at the start of its body. */
void ob_begin(Ob *o, LLVMContextRef ctx, const char *symbol, LLVMTypeRef *params, unsigned n_params, int vw);
/* Close the function (ret void), free the builder; the module goes to the caller. */
LLVMModuleRef ob_finish(Ob *o);
LLVMValueRef ob_arg(const Ob *o, unsigned i);

/* ---- constants and arithmetic ---------------------------------------------------------------- */
LLVMValueRef ob_i64(const Ob *o, int64_t v);
LLVMValueRef ob_i32(const Ob *o, int32_t v);
LLVMValueRef ob_f32(const Ob *o, double v);
LLVMValueRef ob_splat(const Ob *o, LLVMValueRef scalar); /* f32 -> <vw x float> */
LLVMValueRef ob_splat_n(const Ob *o, LLVMValueRef scalar, int lanes); /* scalar -> <lanes x its type> */
LLVMValueRef ob_like(const Ob *o, LLVMValueRef x, double v); /* the f32 v in x's shape: scalar or splatted */
LLVMValueRef ob_fmax(const Ob *o, LLVMValueRef a, LLVMValueRef b); /* a > b ? a : b, as the interpreter */
LLVMValueRef ob_min64(const Ob *o, LLVMValueRef a, LLVMValueRef b);
/* An intrinsic overloaded on `type` (llvm.exp, llvm.sqrt, llvm.fmuladd, ...), called with args. */
LLVMValueRef ob_intr(const Ob *o, const char *name, LLVMTypeRef type, LLVMValueRef *args, unsigned n);
/* The declaration of a target intrinsic that is not overloaded, and its type (*type) in this LLVM */
LLVMValueRef ob_intrinsic(const Ob *o, const char *name, LLVMTypeRef *type);
LLVMValueRef ob_exp(const Ob *o, LLVMValueRef x);
/* A hint to fetch element idx of an array of dt (f32, or 16-bit) into the caches. */
void         ob_prefetch(const Ob *o, moe_dtype dt, LLVMValueRef ptr, LLVMValueRef idx);          /* scalar or vector (any lanes) */
/* e^x inline (Cephes' polynomial, relative error < 2e-7; x clamped to [-87.3, 88.7], so e^-inf is
 * 1.2e-38, not 0): no libm call, vectorisable. For attention's weights, not for routing decisions. */
LLVMValueRef ob_exp_poly(const Ob *o, LLVMValueRef x);
LLVMValueRef ob_exp_nonpos(const Ob *o, LLVMValueRef x);        /* x <= 0 (or a rounding above): no upper clamp */
LLVMValueRef ob_exp_nonpos_avx512(const Ob *o, LLVMValueRef x); /* x <= 0, <16 x float> (ops_build.c) */
LLVMValueRef ob_tanh(const Ob *o, LLVMValueRef x); /* scalar or vector, without libm */
LLVMValueRef ob_fma(const Ob *o, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c); /* a·b + c */
/* <n x float> -> float by a pairwise tree (n a power of two): the sum; the max as ob_fmax takes it */
LLVMValueRef ob_hsum(const Ob *o, LLVMValueRef v);
LLVMValueRef ob_hmax(const Ob *o, LLVMValueRef v);

/* ---- memory ---------------------------------------------------------------------------------- */
LLVMValueRef ob_gep(const Ob *o, LLVMTypeRef elem, LLVMValueRef ptr, LLVMValueRef idx);
LLVMValueRef ob_ldf(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx);     /* ptr: float * */
void         ob_stf(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx, LLVMValueRef v);
/* A scalar of integer or float type elem (i32, i64, float) at ptr[idx]. */
LLVMValueRef ob_ld(const Ob *o, LLVMTypeRef elem, LLVMValueRef ptr, LLVMValueRef idx);
void         ob_st(const Ob *o, LLVMTypeRef elem, LLVMValueRef ptr, LLVMValueRef idx, LLVMValueRef v);
LLVMValueRef ob_ldi32(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx);   /* sign-extended to i64 */
/* Element idx of a weight array in dtype dt, as f32 (bf16: bits << 16; f16: fpext). */
LLVMValueRef ob_ldw(const Ob *o, moe_dtype dt, LLVMValueRef ptr, LLVMValueRef idx);
/* vw consecutive elements from ptr[idx] as <vw x float> (unaligned). */
LLVMValueRef ob_ldv(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx);
LLVMValueRef ob_ldv_n(const Ob *o, int lanes, LLVMValueRef ptr, LLVMValueRef idx); /* <lanes x float> */
LLVMValueRef ob_ldvw(const Ob *o, moe_dtype dt, LLVMValueRef ptr, LLVMValueRef idx);
LLVMValueRef ob_ldvw_n(const Ob *o, moe_dtype dt, int lanes, LLVMValueRef ptr, LLVMValueRef idx); /* <lanes x float> */
void         ob_stv(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx, LLVMValueRef v);
/* A stack array of n elements of type t in the entry block (n is a compile-time constant). */
LLVMValueRef ob_alloca(const Ob *o, LLVMTypeRef t, int64_t n);

/* ---- control flow ---------------------------------------------------------------------------- */
#define OB_MAX_CARRY 40
/* for (i = lo; i < hi; i++) with values carried around the loop: between ob_loop_begin and
 * ob_loop_end, L.i is the index and L.v[k] the carried values; ob_loop_end takes their next values
 * and leaves the builder after the loop, where L.v[k] are the final values. */
typedef struct ObLoop {
    LLVMValueRef i, v[OB_MAX_CARRY];
    int n;
    LLVMBasicBlockRef header, exit;
} ObLoop;
void ob_loop_begin(Ob *o, ObLoop *L, LLVMValueRef lo, LLVMValueRef hi, int n_carry, const LLVMValueRef *init);
void ob_loop_end(Ob *o, ObLoop *L, const LLVMValueRef *next);
/* The rows loop every row kernel runs: t from row0 = arg 0 to row0 + rows (arg 1). */
void ob_rows_begin(Ob *o, ObLoop *L);

/* if (cond) { ... } — ob_if_begin returns the join block; ob_if_end branches there and continues. */
LLVMBasicBlockRef ob_if_begin(Ob *o, LLVMValueRef cond);
void ob_if_end(Ob *o, LLVMBasicBlockRef join);

/* ---- compound ---------------------------------------------------------------------------------- */
/* Σ_{d<n} a[ia + d] · b[ib + d] in f32 (n a compile-time constant; b in dtype bt): vw-wide partial
 * sums, a pairwise horizontal sum, then the scalar tail. a == b gives a sum of squares. */
LLVMValueRef ob_dot(Ob *o, LLVMValueRef a, LLVMValueRef ia, LLVMValueRef b, LLVMValueRef ib, int64_t n);
/* Row-wise softmax of n floats in place at p (n compile-time): max, exp(z - max), sum, divide —
 * the interpreter's eval_softmax_row order. */
void ob_softmax(Ob *o, LLVMValueRef p, int64_t n);

/* ---- the kernel bodies (ops_rows.c, ops_attention.c, ops_moe.c) ------------------------------ */
/* Each emits the body of d's function, begun by cg_ops_build with the kind's parameters (the int64
 * arguments first, then the pointers, as cg_ops.h lists them); d is already validated. */
void ops_emit_embed(Ob *o, const CgOpDesc *d);
void ops_emit_rms_norm(Ob *o, const CgOpDesc *d);
void ops_emit_add_rms_norm(Ob *o, const CgOpDesc *d);
void ops_emit_rope(Ob *o, const CgOpDesc *d);
void ops_emit_elementwise(Ob *o, const CgOpDesc *d); /* SWIGLU, ADD, SCALE */
void ops_emit_attention(Ob *o, const CgOpDesc *d);
void ops_emit_attention_amx(Ob *o, const CgOpDesc *d); /* ops_attention_amx.c */
/* Both attention forms' query rows of a call: its first row t0 and query head h (item0 = t0·heads + h)
 * and the heads it takes, hpc (cg_attention_heads_per_call); its rows are pairs p, row t0 + p / hpc of
 * head h + p % hpc (ops_attention.c). ops_attention_rows: those of d's call, and (*pairs) how many:
 * its rows argument times hpc. ops_attention_pair: pair p's row index (*t) and, returned, the offset
 * of its q and output row. */
typedef struct {
    LLVMValueRef t0, h;
    int64_t hpc, heads, hd;
} OpsAttRows;
OpsAttRows   ops_attention_rows(const Ob *o, const CgOpDesc *d, LLVMValueRef *pairs);
LLVMValueRef ops_attention_pair(const Ob *o, const OpsAttRows *r, LLVMValueRef p, LLVMValueRef *t);
void ops_emit_route_post(Ob *o, const CgOpDesc *d);
void ops_emit_combine(Ob *o, const CgOpDesc *d);
void ops_emit_dispatch(Ob *o, const CgOpDesc *d);

#endif
