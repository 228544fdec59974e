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

/* The double constant v in x's shape (scalar or vector). */
static LLVMValueRef dlike(const Ob *o, LLVMValueRef x, double v)
{
    LLVMValueRef c = LLVMConstReal(o->tf64, v);
    LLVMTypeRef t = LLVMTypeOf(x);
    return LLVMGetTypeKind(t) == LLVMVectorTypeKind ? ob_splat_n(o, c, (int)LLVMGetVectorSize(t)) : c;
}

/* cos x and sin x of doubles (scalar or vector, |x| < 2^19·π/2) as fdlibm computes them, without
 * libm: x less k·π/2 in three parts (Cody–Waite; k·part exact while |k| < 2^20), its polynomials on
 * [−π/4, π/4], then k's quadrant. Within an ulp or so of libm's in double, so the same f32 once
 * rounded but where a value lies within that of an f32 rounding boundary. */
static void sincos_f64(const Ob *o, LLVMValueRef x, LLVMValueRef *c, LLVMValueRef *s)
{
    LLVMBuilderRef b = o->b;
    LLVMValueRef kx = LLVMBuildFMul(b, x, dlike(o, x, 6.36619772367581382433e-01), ""); /* 2/π */
    LLVMValueRef k = ob_intr(o, "llvm.rint", LLVMTypeOf(x), &kx, 1);
    static const double part[3] = {1.57079632673412561417e+00, 6.07710050630396597660e-11,
                                   2.02226624871116645580e-21}; /* π/2 in three parts (fdlibm's pio2_1..3) */
    LLVMValueRef r = x;
    for (int q = 0; q < 3; q++) r = LLVMBuildFSub(b, r, LLVMBuildFMul(b, k, dlike(o, x, part[q]), ""), "");
    LLVMValueRef z = LLVMBuildFMul(b, r, r, "");
    static const double S[6] = {-1.66666666666666324348e-01, 8.33333333332248946124e-03,
                                -1.98412698298579493134e-04, 2.75573137070700676789e-06,
                                -2.50507602534068634195e-08, 1.58969099521155010221e-10};
    static const double C[6] = {4.16666666666666019037e-02, -1.38888888888741095749e-03,
                                2.48015872894767294178e-05, -2.75573143513906633035e-07,
                                2.08757232129817482790e-09, -1.13596475577881948265e-11};
    LLVMValueRef ps = dlike(o, x, S[5]), pc = dlike(o, x, C[5]);
    for (int q = 4; q >= 0; q--) {
        ps = LLVMBuildFAdd(b, LLVMBuildFMul(b, ps, z, ""), dlike(o, x, S[q]), "");
        pc = LLVMBuildFAdd(b, LLVMBuildFMul(b, pc, z, ""), dlike(o, x, C[q]), "");
    }
    LLVMValueRef s0 = LLVMBuildFAdd(b, r, LLVMBuildFMul(b, LLVMBuildFMul(b, z, r, ""), ps, ""), "");
    LLVMValueRef c0 = LLVMBuildFSub(b, dlike(o, x, 1.0), LLVMBuildFMul(b, z, dlike(o, x, 0.5), ""), "");
    c0 = LLVMBuildFAdd(b, c0, LLVMBuildFMul(b, LLVMBuildFMul(b, z, z, ""), pc, ""), "");
    /* quadrant q = k mod 4: sin = s0, c0, −s0, −c0 and cos = c0, −s0, −c0, s0 */
    LLVMTypeRef it = LLVMGetTypeKind(LLVMTypeOf(x)) == LLVMVectorTypeKind
                         ? LLVMVectorType(o->ti64, LLVMGetVectorSize(LLVMTypeOf(x))) : o->ti64;
    LLVMValueRef qi = LLVMBuildFPToSI(b, k, it, "");
    LLVMValueRef one = LLVMConstInt(o->ti64, 1, 0), two = LLVMConstInt(o->ti64, 2, 0);
    LLVMValueRef zero = LLVMConstInt(o->ti64, 0, 0);
    if (it != o->ti64) {
        int n = (int)LLVMGetVectorSize(it);
        one = ob_splat_n(o, one, n), two = ob_splat_n(o, two, n), zero = ob_splat_n(o, zero, n);
    }
    LLVMValueRef swap = LLVMBuildICmp(b, LLVMIntNE, LLVMBuildAnd(b, qi, one, ""), zero, "");
    LLVMValueRef neg_s = LLVMBuildICmp(b, LLVMIntNE, LLVMBuildAnd(b, qi, two, ""), zero, "");
    LLVMValueRef neg_c = LLVMBuildICmp(b, LLVMIntNE, LLVMBuildAnd(b, LLVMBuildAdd(b, qi, one, ""), two, ""), zero, "");
    LLVMValueRef sv = LLVMBuildSelect(b, swap, c0, s0, ""), cv = LLVMBuildSelect(b, swap, s0, c0, "");
    *s = LLVMBuildSelect(b, neg_s, LLVMBuildFNeg(b, sv, ""), sv, "");
    *c = LLVMBuildSelect(b, neg_c, LLVMBuildFNeg(b, cv, ""), cv, "");
}

/* Positions from which a row's angles go through libm: past them sincos_f64's reduction would lose
 * bits (its largest angle is the position itself: j = 0's frequency is 1). */
#define ROPE_NEAR_POS (1 << 19)

/* Half-split RoPE. The angles depend on the position only, so a row computes its hd/2 cos/sin pairs
 * once (in double, rounded to f32 as the interpreter does) and rotates every head with them. The
 * pairs are vw/2 doubles a step through sincos_f64 (libm's cos and sin a pair took 1.9 % of the
 * 0.6B's prefill at T = 2048), positions from ROPE_NEAR_POS one at a time through libm. Each pair
 * of x is loaded before either half is stored, so out may alias x. */
void ops_emit_rope(Ob *o, const CgOpDesc *d)
{
    LLVMValueRef x = ob_arg(o, 2), pos = ob_arg(o, 3), out = ob_arg(o, 4);
    int64_t hd = d->head_dim, half = hd / 2, C = d->heads * hd, L = o->vw / 2 > 1 ? o->vw / 2 : 2;
    LLVMValueRef freqs = rope_freqs(o, d), cs = ob_alloca(o, o->tf32, half), sn = ob_alloca(o, o->tf32, half);
    ObLoop t, j, h;
    ob_rows_begin(o, &t);
    LLVMValueRef pi = ob_ldi32(o, pos, t.i), p = LLVMBuildSIToFP(o->b, pi, o->tf64, "pos");
    LLVMValueRef near = LLVMBuildICmp(o->b, LLVMIntSLT, pi, ob_i64(o, ROPE_NEAR_POS), "near");
    LLVMBasicBlockRef join = ob_if_begin(o, LLVMBuildNot(o->b, near, ""));
    ob_loop_begin(o, &j, ob_i64(o, 0), ob_i64(o, half), 0, NULL);
    LLVMValueRef ang = LLVMBuildFMul(o->b, p, ob_ld(o, o->tf64, freqs, j.i), "ang");
    ob_stf(o, cs, j.i, LLVMBuildFPTrunc(o->b, ob_intr(o, "llvm.cos", o->tf64, &ang, 1), o->tf32, ""));
    ob_stf(o, sn, j.i, LLVMBuildFPTrunc(o->b, ob_intr(o, "llvm.sin", o->tf64, &ang, 1), o->tf32, ""));
    ob_loop_end(o, &j, NULL);
    ob_if_end(o, join);
    join = ob_if_begin(o, near);
    LLVMTypeRef vd = LLVMVectorType(o->tf64, (unsigned)L), vf = LLVMVectorType(o->tf32, (unsigned)L);
    ob_loop_begin(o, &j, ob_i64(o, 0), ob_i64(o, half / L), 0, NULL);
    LLVMValueRef j0 = mul(o, j.i, L);
    LLVMValueRef fp = LLVMBuildPointerCast(o->b, ob_gep(o, o->tf64, freqs, j0), LLVMPointerType(vd, 0), "");
    LLVMValueRef fv = LLVMBuildLoad2(o->b, vd, fp, "");
    LLVMSetAlignment(fv, 8);
    LLVMValueRef cv, sv;
    sincos_f64(o, LLVMBuildFMul(o->b, ob_splat_n(o, p, (int)L), fv, ""), &cv, &sv);
    ob_stv(o, cs, j0, LLVMBuildFPTrunc(o->b, cv, vf, ""));
    ob_stv(o, sn, j0, LLVMBuildFPTrunc(o->b, sv, vf, ""));
    ob_loop_end(o, &j, NULL);
    ob_loop_begin(o, &j, ob_i64(o, half / L * L), ob_i64(o, half), 0, NULL); /* the last half % L alone */
    LLVMValueRef c1, s1;
    sincos_f64(o, LLVMBuildFMul(o->b, p, ob_ld(o, o->tf64, freqs, j.i), ""), &c1, &s1);
    ob_stf(o, cs, j.i, LLVMBuildFPTrunc(o->b, c1, o->tf32, ""));
    ob_stf(o, sn, j.i, LLVMBuildFPTrunc(o->b, s1, o->tf32, ""));
    ob_loop_end(o, &j, NULL);
    ob_if_end(o, join);
    ob_loop_begin(o, &h, ob_i64(o, 0), ob_i64(o, d->heads), 0, NULL);
    LLVMValueRef base = add(o, mul(o, t.i, C), mul(o, h.i, hd));
    /* vw pairs a step, then the last half % vw alone: written as vectors, since LLVM's own would check
     * out against x at run time and, in place, take its scalar loop */
    for (int pass = 0; pass < 2; pass++) {
        int64_t lo = pass ? half / o->vw * o->vw : 0, hi = pass ? half : half / o->vw;
        ob_loop_begin(o, &j, ob_i64(o, lo), ob_i64(o, hi), 0, NULL);
        LLVMValueRef jj = pass ? j.i : mul(o, j.i, o->vw);
        LLVMValueRef i0 = add(o, base, jj), i1 = add(o, i0, ob_i64(o, half)), z0, z1, c, s;
        if (pass) z0 = ob_ldf(o, x, i0), z1 = ob_ldf(o, x, i1), c = ob_ldf(o, cs, jj), s = ob_ldf(o, sn, jj);
        else z0 = ob_ldv(o, x, i0), z1 = ob_ldv(o, x, i1), c = ob_ldv(o, cs, jj), s = ob_ldv(o, sn, jj);
        LLVMValueRef o0 = LLVMBuildFSub(o->b, LLVMBuildFMul(o->b, z0, c, ""), LLVMBuildFMul(o->b, z1, s, ""), "");
        LLVMValueRef o1 = LLVMBuildFAdd(o->b, LLVMBuildFMul(o->b, z1, c, ""), LLVMBuildFMul(o->b, z0, s, ""), "");
        if (pass) ob_stf(o, out, i0, o0), ob_stf(o, out, i1, o1);
        else ob_stv(o, out, i0, o0), ob_stv(o, out, i1, o1);
        ob_loop_end(o, &j, NULL);
    }
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
