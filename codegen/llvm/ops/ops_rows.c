/* ops_rows.c — the row-wise kernels: embed, rms_norm, add_rms_norm, rope and the elementwise ops.
 * Each loops over its rows at run time and over a compile-time width inside a row; the inner loops
 * are scalar (O3 vectorises them: no reductions, constant trip counts) except the sum of squares,
 * which ob_dot writes with explicit vectors. Rounding follows the interpreter's EVAL_F32 steps. */
#include "codegen/llvm/ops/ops_build.h"

#include <math.h>
#include <stdlib.h>

static LLVMValueRef add(const Ob *o, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWAdd(o->b, a, b, ""); }
static LLVMValueRef mul(const Ob *o, LLVMValueRef a, int64_t c) { return LLVMBuildNSWMul(o->b, a, ob_i64(o, c), ""); }

void ops_emit_embed(Ob *o, const CgOpDesc *d)
{
    LLVMValueRef ids = ob_arg(o, 2), table = ob_arg(o, 3), out = ob_arg(o, 4);
    ObLoop t, c;
    ob_rows_begin(o, &t);
    LLVMValueRef src = mul(o, ob_ldi32(o, ids, t.i), d->cols), dst = mul(o, t.i, d->cols);
    ob_loop_begin(o, &c, ob_i64(o, 0), ob_i64(o, d->cols), 0, NULL);
    ob_stf(o, out, add(o, dst, c.i), ob_ldw(o, d->wdtype, table, add(o, src, c.i)));
    ob_loop_end(o, &c, NULL);
    ob_loop_end(o, &t, NULL);
}

/* out[base..] = w ⊙ x[base..] · r with r = 1 / sqrt(mean(x²) + eps), as eval_rms_norm_row rounds. */
static void rms_norm_row(Ob *o, const CgOpDesc *d, LLVMValueRef x, LLVMValueRef w, LLVMValueRef out,
                         LLVMValueRef base)
{
    LLVMValueRef ss = ob_dot(o, x, base, x, base, d->cols);
    LLVMValueRef mean = LLVMBuildFDiv(o->b, ss, ob_f32(o, (double)d->cols), "mean");
    LLVMValueRef var = LLVMBuildFAdd(o->b, mean, ob_f32(o, d->eps), "");
    LLVMValueRef r = LLVMBuildFDiv(o->b, ob_f32(o, 1.0), ob_intr(o, "llvm.sqrt", o->tf32, &var, 1), "r");
    ObLoop c;
    ob_loop_begin(o, &c, ob_i64(o, 0), ob_i64(o, d->cols), 0, NULL);
    LLVMValueRef xr = LLVMBuildFMul(o->b, ob_ldf(o, x, add(o, base, c.i)), r, "");
    ob_stf(o, out, add(o, base, c.i), LLVMBuildFMul(o->b, ob_ldw(o, d->wdtype, w, c.i), xr, ""));
    ob_loop_end(o, &c, NULL);
}

void ops_emit_rms_norm(Ob *o, const CgOpDesc *d)
{
    ObLoop t;
    ob_rows_begin(o, &t);
    rms_norm_row(o, d, ob_arg(o, 2), ob_arg(o, 3), ob_arg(o, 4), mul(o, t.i, d->cols));
    ob_loop_end(o, &t, NULL);
}

/* sum = a + b is written first and the norm reads it back: the row is in L1 by then. */
void ops_emit_add_rms_norm(Ob *o, const CgOpDesc *d)
{
    LLVMValueRef a = ob_arg(o, 2), b = ob_arg(o, 3), w = ob_arg(o, 4), sum = ob_arg(o, 5), out = ob_arg(o, 6);
    ObLoop t, c;
    ob_rows_begin(o, &t);
    LLVMValueRef base = mul(o, t.i, d->cols);
    ob_loop_begin(o, &c, ob_i64(o, 0), ob_i64(o, d->cols), 0, NULL);
    LLVMValueRef i = add(o, base, c.i);
    ob_stf(o, sum, i, LLVMBuildFAdd(o->b, ob_ldf(o, a, i), ob_ldf(o, b, i), ""));
    ob_loop_end(o, &c, NULL);
    rms_norm_row(o, d, sum, w, out, base);
    ob_loop_end(o, &t, NULL);
}

/* theta^(-2j/hd) for j < hd/2 as a private constant table (doubles, exactly the interpreter's). */
static LLVMValueRef rope_freqs(Ob *o, const CgOpDesc *d)
{
    int64_t half = d->head_dim / 2;
    LLVMValueRef *vals = xmalloc((size_t)half * sizeof *vals);
    for (int64_t j = 0; j < half; j++)
        vals[j] = LLVMConstReal(o->tf64, pow(d->theta, -2.0 * (double)j / (double)d->head_dim));
    LLVMTypeRef ty = LLVMArrayType(o->tf64, (unsigned)half);
    LLVMValueRef g = LLVMAddGlobal(o->mod, ty, "rope_freqs");
    LLVMSetInitializer(g, LLVMConstArray(o->tf64, vals, (unsigned)half));
    LLVMSetGlobalConstant(g, 1);
    LLVMSetLinkage(g, LLVMPrivateLinkage);
    free(vals);
    return g;
}

/* Half-split RoPE. The angles depend on the position only, so a row computes its hd/2 cos/sin pairs
 * once (in double, rounded to f32 as the interpreter does) and rotates every head with them. Each
 * pair is loaded before either half is stored, so out may alias x. */
void ops_emit_rope(Ob *o, const CgOpDesc *d)
{
    LLVMValueRef x = ob_arg(o, 2), pos = ob_arg(o, 3), out = ob_arg(o, 4);
    int64_t hd = d->head_dim, half = hd / 2, C = d->heads * hd;
    LLVMValueRef freqs = rope_freqs(o, d), cs = ob_alloca(o, o->tf32, half), sn = ob_alloca(o, o->tf32, half);
    ObLoop t, j, h;
    ob_rows_begin(o, &t);
    LLVMValueRef p = LLVMBuildSIToFP(o->b, ob_ldi32(o, pos, t.i), o->tf64, "pos");
    ob_loop_begin(o, &j, ob_i64(o, 0), ob_i64(o, half), 0, NULL);
    LLVMValueRef ang = LLVMBuildFMul(o->b, p, ob_ld(o, o->tf64, freqs, j.i), "ang");
    ob_stf(o, cs, j.i, LLVMBuildFPTrunc(o->b, ob_intr(o, "llvm.cos", o->tf64, &ang, 1), o->tf32, ""));
    ob_stf(o, sn, j.i, LLVMBuildFPTrunc(o->b, ob_intr(o, "llvm.sin", o->tf64, &ang, 1), o->tf32, ""));
    ob_loop_end(o, &j, NULL);
    ob_loop_begin(o, &h, ob_i64(o, 0), ob_i64(o, d->heads), 0, NULL);
    LLVMValueRef base = add(o, mul(o, t.i, C), mul(o, h.i, hd));
    ob_loop_begin(o, &j, ob_i64(o, 0), ob_i64(o, half), 0, NULL);
    LLVMValueRef i0 = add(o, base, j.i), i1 = add(o, i0, ob_i64(o, half));
    LLVMValueRef z0 = ob_ldf(o, x, i0), z1 = ob_ldf(o, x, i1), c = ob_ldf(o, cs, j.i), s = ob_ldf(o, sn, j.i);
    LLVMValueRef o0 = LLVMBuildFSub(o->b, LLVMBuildFMul(o->b, z0, c, ""), LLVMBuildFMul(o->b, z1, s, ""), "");
    LLVMValueRef o1 = LLVMBuildFAdd(o->b, LLVMBuildFMul(o->b, z1, c, ""), LLVMBuildFMul(o->b, z0, s, ""), "");
    ob_stf(o, out, i0, o0);
    ob_stf(o, out, i1, o1);
    ob_loop_end(o, &j, NULL);
    ob_loop_end(o, &h, NULL);
    ob_loop_end(o, &t, NULL);
}

/* silu(a) · b = a / (1 + e^-a) · b, in the interpreter's order. */
static LLVMValueRef swiglu(const Ob *o, LLVMValueRef a, LLVMValueRef b)
{
    LLVMValueRef e = ob_exp(o, LLVMBuildFNeg(o->b, a, ""));
    LLVMValueRef silu = LLVMBuildFDiv(o->b, a, LLVMBuildFAdd(o->b, ob_like(o, a, 1.0), e, ""), "silu");
    return LLVMBuildFMul(o->b, silu, b, "");
}

/* The elementwise op of d on x (and y): one f32 or a vector of them. */
static LLVMValueRef elementwise(const Ob *o, const CgOpDesc *d, LLVMValueRef x, LLVMValueRef y)
{
    if (d->kind == CG_OP_SCALE) return LLVMBuildFMul(o->b, ob_like(o, x, d->s), x, "");
    if (d->kind == CG_OP_TANH) return ob_tanh(o, x);
    if (d->kind == CG_OP_ADD) return LLVMBuildFAdd(o->b, x, y, "");
    return swiglu(o, x, y);
}

/* SWIGLU, ADD (out = f(a, b)), SCALE (out = s · x) and TANH over the rows' elements as one flat run:
 * whole vectors, then what is left one at a time. Vectors by hand: a loop LLVM vectorises itself
 * checks a and out for overlap at run time and runs scalar when they meet, as they do in place (the
 * router's tanh). */
void ops_emit_elementwise(Ob *o, const CgOpDesc *d)
{
    bool unary = d->kind == CG_OP_SCALE || d->kind == CG_OP_TANH;
    LLVMValueRef a = ob_arg(o, 2), b = unary ? NULL : ob_arg(o, 3), out = ob_arg(o, unary ? 3 : 4);
    LLVMValueRef lo = mul(o, ob_arg(o, 0), d->cols), n = mul(o, ob_arg(o, 1), d->cols);
    LLVMValueRef nv = LLVMBuildSDiv(o->b, n, ob_i64(o, o->vw), "");
    ObLoop v;
    ob_loop_begin(o, &v, ob_i64(o, 0), nv, 0, NULL);
    LLVMValueRef at = add(o, lo, mul(o, v.i, o->vw));
    ob_stv(o, out, at, elementwise(o, d, ob_ldv(o, a, at), unary ? NULL : ob_ldv(o, b, at)));
    ob_loop_end(o, &v, NULL);
    ObLoop c;
    ob_loop_begin(o, &c, add(o, lo, mul(o, nv, o->vw)), add(o, lo, n), 0, NULL);
    ob_stf(o, out, c.i, elementwise(o, d, ob_ldf(o, a, c.i), unary ? NULL : ob_ldf(o, b, c.i)));
    ob_loop_end(o, &c, NULL);
}
