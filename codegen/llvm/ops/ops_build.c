/* ops_build.c — the builder helpers of ops_build.h. Pointers are passed around as i8* and cast to the
 * element type at each access: a no-op with opaque pointers (LLVM 15+), required by LLVM 14's typed
 * GEPs. Every load and store carries the element's alignment, never the vector type's. */
#include "codegen/llvm/ops/ops_build.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ob_begin(Ob *o, LLVMContextRef ctx, const char *symbol, LLVMTypeRef *params, unsigned n_params, int vw)
{
    memset(o, 0, sizeof *o);
    o->ctx = ctx;
    o->vw = vw;
    o->tv = LLVMVoidTypeInContext(ctx);
    o->ti1 = LLVMInt1TypeInContext(ctx);
    o->ti8 = LLVMInt8TypeInContext(ctx);
    o->ti16 = LLVMInt16TypeInContext(ctx);
    o->ti32 = LLVMInt32TypeInContext(ctx);
    o->ti64 = LLVMInt64TypeInContext(ctx);
    o->tf16 = LLVMHalfTypeInContext(ctx);
    o->tf32 = LLVMFloatTypeInContext(ctx);
    o->tf64 = LLVMDoubleTypeInContext(ctx);
    o->tptr = LLVMPointerType(o->ti8, 0);
    o->tvf = LLVMVectorType(o->tf32, (unsigned)vw);
    o->mod = LLVMModuleCreateWithNameInContext(symbol, ctx);
    o->fn = LLVMAddFunction(o->mod, symbol, LLVMFunctionType(o->tv, params, n_params, 0));
    /* The loop vectoriser follows the CPU's preferred width (256 on recent Intel parts); our
     * explicit vectors are vw wide, so ask for the same. Never set min-legal-vector-width (splits). */
    if (vw == 16) LLVMAddTargetDependentFunctionAttr(o->fn, "prefer-vector-width", "512");
    unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
    LLVMAddAttributeAtIndex(o->fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(ctx, nounwind, 0));
    o->b = LLVMCreateBuilderInContext(ctx);
    o->entry = LLVMAppendBasicBlockInContext(ctx, o->fn, "entry");
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(ctx, o->fn, "body");
    LLVMPositionBuilderAtEnd(o->b, o->entry);
    LLVMBuildBr(o->b, body); /* allocas are inserted before this branch */
    LLVMPositionBuilderAtEnd(o->b, body);
}

LLVMModuleRef ob_finish(Ob *o)
{
    LLVMBuildRetVoid(o->b);
    LLVMDisposeBuilder(o->b);
    o->b = NULL;
    return o->mod;
}

LLVMValueRef ob_arg(const Ob *o, unsigned i) { return LLVMGetParam(o->fn, i); }

LLVMValueRef ob_i64(const Ob *o, int64_t v) { return LLVMConstInt(o->ti64, (unsigned long long)v, 1); }
LLVMValueRef ob_i32(const Ob *o, int32_t v) { return LLVMConstInt(o->ti32, (unsigned long long)(int64_t)v, 1); }
LLVMValueRef ob_f32(const Ob *o, double v) { return LLVMConstReal(o->tf32, (double)(float)v); }

LLVMValueRef ob_splat(const Ob *o, LLVMValueRef scalar) { return ob_splat_n(o, scalar, o->vw); }

LLVMValueRef ob_splat_n(const Ob *o, LLVMValueRef scalar, int lanes)
{
    LLVMTypeRef vt = LLVMVectorType(LLVMTypeOf(scalar), (unsigned)lanes);
    LLVMValueRef v = LLVMBuildInsertElement(o->b, LLVMGetUndef(vt), scalar, ob_i32(o, 0), "");
    LLVMValueRef zeros = LLVMConstNull(LLVMVectorType(o->ti32, (unsigned)lanes));
    return LLVMBuildShuffleVector(o->b, v, LLVMGetUndef(vt), zeros, "splat");
}

/* The lanes of a vector type, 0 for a scalar. */
static int lanes_of(LLVMTypeRef t)
{
    return LLVMGetTypeKind(t) == LLVMVectorTypeKind ? (int)LLVMGetVectorSize(t) : 0;
}

LLVMValueRef ob_fmax(const Ob *o, LLVMValueRef a, LLVMValueRef b)
{
    return LLVMBuildSelect(o->b, LLVMBuildFCmp(o->b, LLVMRealOGT, a, b, ""), a, b, "max");
}

LLVMValueRef ob_min64(const Ob *o, LLVMValueRef a, LLVMValueRef b)
{
    return LLVMBuildSelect(o->b, LLVMBuildICmp(o->b, LLVMIntSLT, a, b, ""), a, b, "min");
}

LLVMValueRef ob_intr(const Ob *o, const char *name, LLVMTypeRef type, LLVMValueRef *args, unsigned n)
{
    unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
    MOE_ASSERT(id != 0);
    LLVMValueRef f = LLVMGetIntrinsicDeclaration(o->mod, id, &type, 1);
    LLVMTypeRef fty = LLVMIntrinsicGetType(o->ctx, id, &type, 1);
    return LLVMBuildCall2(o->b, fty, f, args, n, "");
}

LLVMValueRef ob_intrinsic(const Ob *o, const char *name, LLVMTypeRef *type)
{
    unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
    MOE_ASSERT(id != 0);
    *type = LLVMIntrinsicGetType(o->ctx, id, NULL, 0);
    return LLVMGetIntrinsicDeclaration(o->mod, id, NULL, 0);
}

LLVMValueRef ob_exp(const Ob *o, LLVMValueRef x) { return ob_intr(o, "llvm.exp", LLVMTypeOf(x), &x, 1); }

void ob_prefetch(const Ob *o, moe_dtype dt, LLVMValueRef ptr, LLVMValueRef idx)
{
    LLVMTypeRef e = dt == DT_F32 ? o->tf32 : o->ti16, i8p = LLVMPointerType(LLVMInt8TypeInContext(o->ctx), 0);
    LLVMValueRef args[4] = {LLVMBuildPointerCast(o->b, ob_gep(o, e, ptr, idx), i8p, ""), ob_i32(o, 0), ob_i32(o, 3),
                            ob_i32(o, 1)}; /* read, keep in every cache level, data */
    ob_intr(o, "llvm.prefetch", i8p, args, 4);
}

LLVMValueRef ob_like(const Ob *o, LLVMValueRef x, double v)
{
    LLVMValueRef c = ob_f32(o, v);
    int n = lanes_of(LLVMTypeOf(x));
    return n ? ob_splat_n(o, c, n) : c;
}

/* Cephes' expf, as the grouped GEMM's SwiGLU epilogue computes it (codegen/llvm/gemm.c exp_poly):
 * range reduction by ln 2 in two parts, a degree-6 polynomial, the exponent put in by integer ops.
 * nonpos (x <= 0 or NaN, or above 0 by a rounding's worth): no upper clamp, the same values; scalef
 * (nonpos, 16 lanes, AVX-512 only): the exponent by vscalefps (one instruction for four), the same
 * values too, since from the clamp at -87.3 up to 0 p · 2^n is normal. */
static LLVMValueRef exp_poly(const Ob *o, LLVMValueRef x, bool nonpos, bool scalef)
{
    LLVMBuilderRef b = o->b;
    LLVMTypeRef ft = LLVMTypeOf(x);
    int lanes = lanes_of(ft);
    LLVMTypeRef it = lanes ? LLVMVectorType(o->ti32, (unsigned)lanes) : o->ti32;
    /* clamped by compare and select, one vmaxps and one vminps on x86 (llvm.maxnum and minnum add a
     * NaN test and a blend to each): NaN becomes lo either way, as fmaxf takes it in exp_poly */
    LLVMValueRef lo = ob_like(o, x, -87.3), hi = ob_like(o, x, 88.7);
    x = ob_fmax(o, x, lo);
    if (!nonpos) x = LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealOLT, x, hi, ""), x, hi, "");
    LLVMValueRef t = ob_fma(o, x, ob_like(o, x, 1.44269504088896341), ob_like(o, x, 0.5));
    LLVMValueRef n = ob_intr(o, "llvm.floor", ft, &t, 1);
    x = ob_fma(o, n, ob_like(o, x, -0.693359375), x);
    x = ob_fma(o, n, ob_like(o, x, 2.12194440e-4), x);
    static const double c[] = {1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                               5.0000001201e-1};
    LLVMValueRef p = ob_like(o, x, c[0]);
    for (int k = 1; k < 6; k++) p = ob_fma(o, p, x, ob_like(o, x, c[k]));
    p = ob_fma(o, p, LLVMBuildFMul(b, x, x, ""), LLVMBuildFAdd(b, x, ob_like(o, x, 1.0), ""));
    if (scalef) { /* p · 2^n, all lanes (mask 0xffff), the current rounding (4) */
        MOE_ASSERT(lanes == 16);
        LLVMTypeRef fty;
        LLVMValueRef fn = ob_intrinsic(o, "llvm.x86.avx512.mask.scalef.ps.512", &fty);
        LLVMValueRef args[5] = {p, n, p, LLVMConstInt(o->ti16, 0xffff, 0), ob_i32(o, 4)};
        return LLVMBuildCall2(b, fty, fn, args, 5, "exp");
    }
    LLVMValueRef e = LLVMBuildFPToSI(b, n, it, "");
    LLVMValueRef bias = LLVMConstInt(o->ti32, 127, 0), sh = LLVMConstInt(o->ti32, 23, 0);
    if (lanes) {
        LLVMValueRef vb[64], vs[64];
        for (int k = 0; k < lanes; k++) vb[k] = bias, vs[k] = sh;
        bias = LLVMConstVector(vb, (unsigned)lanes), sh = LLVMConstVector(vs, (unsigned)lanes);
    }
    e = LLVMBuildShl(b, LLVMBuildAdd(b, e, bias, ""), sh, "");
    return LLVMBuildFMul(b, p, LLVMBuildBitCast(b, e, ft, ""), "exp");
}
LLVMValueRef ob_exp_poly(const Ob *o, LLVMValueRef x) { return exp_poly(o, x, false, false); }
LLVMValueRef ob_exp_nonpos(const Ob *o, LLVMValueRef x) { return exp_poly(o, x, true, false); }
LLVMValueRef ob_exp_nonpos_avx512(const Ob *o, LLVMValueRef x) { return exp_poly(o, x, true, true); }

/* tanh x without a libm call, so that a loop of it vectorises: tanh |x| with x's sign, where tanh t is
 * (1 - e) / (1 + e) with e = e^(-2t) by ob_exp_poly for t >= 1/2 (there e <= 1/e: 1 - e loses under
 * a bit), and below 1/2 the odd Taylor series to t^15 (its next term, 5.9e-4 t^17, is under 1e-8 of
 * tanh t there). Within 2 f32 roundings of tanh (test_ops); NaN stays NaN, ±inf gives ±1. */
LLVMValueRef ob_tanh(const Ob *o, LLVMValueRef x)
{
    LLVMBuilderRef b = o->b;
    LLVMTypeRef ft = LLVMTypeOf(x);
    LLVMValueRef t = ob_intr(o, "llvm.fabs", ft, &x, 1);
    LLVMValueRef e = ob_exp_poly(o, LLVMBuildFMul(b, t, ob_like(o, x, -2.0), ""));
    LLVMValueRef one = ob_like(o, x, 1.0);
    LLVMValueRef big = LLVMBuildFDiv(b, LLVMBuildFSub(b, one, e, ""), LLVMBuildFAdd(b, one, e, ""), "");
    static const double c[] = {-929569.0 / 638512875.0, 21844.0 / 6081075.0, -1382.0 / 155925.0, 62.0 / 2835.0,
                               -17.0 / 315.0, 2.0 / 15.0, -1.0 / 3.0};
    LLVMValueRef t2 = LLVMBuildFMul(b, t, t, ""), p = ob_like(o, x, c[0]);
    for (int k = 1; k < (int)MOE_ARRAY_LEN(c); k++) p = ob_fma(o, p, t2, ob_like(o, x, c[k]));
    LLVMValueRef small = ob_fma(o, LLVMBuildFMul(b, p, t2, ""), t, t);
    LLVMValueRef below = LLVMBuildFCmp(b, LLVMRealOLT, t, ob_like(o, x, 0.5), "");
    LLVMValueRef sgn[2] = {LLVMBuildSelect(b, below, small, big, ""), x};
    LLVMValueRef y = ob_intr(o, "llvm.copysign", ft, sgn, 2); /* tanh |x| with x's sign (-0 stays -0) */
    return LLVMBuildSelect(b, LLVMBuildFCmp(b, LLVMRealUNO, x, x, ""), x, y, "tanh");
}

/* fmuladd, not fma: fused where the target has FMA, mul + add where it has not (never a call to
 * fmaf, which an SSE-only target would need). */
LLVMValueRef ob_fma(const Ob *o, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c)
{
    LLVMValueRef args[3] = {a, b, c};
    return ob_intr(o, "llvm.fmuladd", LLVMTypeOf(a), args, 3);
}

static LLVMValueRef half_mask(const Ob *o, int width, int first)
{
    LLVMValueRef idx[64];
    for (int k = 0; k < width; k++) idx[k] = ob_i32(o, first + k);
    return LLVMConstVector(idx, (unsigned)width);
}

/* A pairwise tree over v's lanes (a power of two): the sum, or the max as ob_fmax takes it. */
static LLVMValueRef hreduce(const Ob *o, LLVMValueRef v, bool max)
{
    for (int w = lanes_of(LLVMTypeOf(v)); w > 1; w /= 2) {
        LLVMValueRef lo = LLVMBuildShuffleVector(o->b, v, v, half_mask(o, w / 2, 0), "");
        LLVMValueRef hi = LLVMBuildShuffleVector(o->b, v, v, half_mask(o, w / 2, w / 2), "");
        v = max ? ob_fmax(o, lo, hi) : LLVMBuildFAdd(o->b, lo, hi, "");
    }
    return LLVMBuildExtractElement(o->b, v, ob_i32(o, 0), max ? "hmax" : "hsum");
}

LLVMValueRef ob_hsum(const Ob *o, LLVMValueRef v) { return hreduce(o, v, false); }
LLVMValueRef ob_hmax(const Ob *o, LLVMValueRef v) { return hreduce(o, v, true); }

LLVMValueRef ob_gep(const Ob *o, LLVMTypeRef elem, LLVMValueRef ptr, LLVMValueRef idx)
{
    LLVMValueRef p = LLVMBuildPointerCast(o->b, ptr, LLVMPointerType(elem, 0), "");
    return LLVMBuildInBoundsGEP2(o->b, elem, p, &idx, 1, "");
}

/* Natural alignment of the scalars we store: i32/float 4, i64/pointers 8, i16/half 2. */
static unsigned scalar_align(LLVMTypeRef elem)
{
    switch (LLVMGetTypeKind(elem)) {
    case LLVMIntegerTypeKind: return LLVMGetIntTypeWidth(elem) / 8;
    case LLVMPointerTypeKind: return 8;
    case LLVMHalfTypeKind: return 2;
    default: return 4;
    }
}

static LLVMValueRef load_at(const Ob *o, LLVMTypeRef t, LLVMTypeRef elem, LLVMValueRef ptr, LLVMValueRef idx,
                            unsigned align)
{
    LLVMValueRef p = ob_gep(o, elem, ptr, idx);
    p = LLVMBuildPointerCast(o->b, p, LLVMPointerType(t, 0), "");
    LLVMValueRef v = LLVMBuildLoad2(o->b, t, p, "");
    LLVMSetAlignment(v, align);
    return v;
}

static void store_at(const Ob *o, LLVMTypeRef elem, LLVMValueRef ptr, LLVMValueRef idx, LLVMValueRef v)
{
    LLVMValueRef p = ob_gep(o, elem, ptr, idx);
    p = LLVMBuildPointerCast(o->b, p, LLVMPointerType(LLVMTypeOf(v), 0), "");
    LLVMSetAlignment(LLVMBuildStore(o->b, v, p), scalar_align(elem));
}

LLVMValueRef ob_ld(const Ob *o, LLVMTypeRef elem, LLVMValueRef ptr, LLVMValueRef idx)
{
    return load_at(o, elem, elem, ptr, idx, scalar_align(elem));
}

void ob_st(const Ob *o, LLVMTypeRef elem, LLVMValueRef ptr, LLVMValueRef idx, LLVMValueRef v)
{
    store_at(o, elem, ptr, idx, v);
}

LLVMValueRef ob_ldf(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx)
{
    return load_at(o, o->tf32, o->tf32, ptr, idx, 4);
}

void ob_stf(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx, LLVMValueRef v) { store_at(o, o->tf32, ptr, idx, v); }

LLVMValueRef ob_ldi32(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx)
{
    return LLVMBuildSExt(o->b, load_at(o, o->ti32, o->ti32, ptr, idx, 4), o->ti64, "");
}

/* c as an i32 constant of type t (scalar, or splat over t's lanes). */
static LLVMValueRef ci32(const Ob *o, LLVMTypeRef t, uint32_t c)
{
    LLVMValueRef k = LLVMConstInt(o->ti32, c, 0);
    if (LLVMGetTypeKind(t) != LLVMVectorTypeKind) return k;
    unsigned n = LLVMGetVectorSize(t);
    LLVMValueRef *lanes = xmalloc(n * sizeof *lanes), v;
    for (unsigned i = 0; i < n; i++) lanes[i] = k;
    v = LLVMConstVector(lanes, n);
    free(lanes);
    return v;
}

/* f16 bits -> f32 with integer ops (ryg's half_to_float): an SSE-only target has no F16C, and its
 * fpext would become a call to __extendhfsf2, which the process may not define. */
static LLVMValueRef f16_bits_to_f32(const Ob *o, LLVMValueRef h, LLVMTypeRef i32t, LLVMTypeRef f32t)
{
    LLVMBuilderRef b = o->b;
    LLVMValueRef x = LLVMBuildZExt(b, h, i32t, "");
    LLVMValueRef sign = LLVMBuildShl(b, LLVMBuildAnd(b, x, ci32(o, i32t, 0x8000), ""), ci32(o, i32t, 16), "");
    LLVMValueRef v = LLVMBuildShl(b, LLVMBuildAnd(b, x, ci32(o, i32t, 0x7fff), ""), ci32(o, i32t, 13), "");
    LLVMValueRef e = LLVMBuildAnd(b, v, ci32(o, i32t, 0x0f800000), "");
    v = LLVMBuildAdd(b, v, ci32(o, i32t, 112u << 23), "");
    LLVMValueRef is_inf = LLVMBuildICmp(b, LLVMIntEQ, e, ci32(o, i32t, 0x0f800000), "");
    LLVMValueRef is_sub = LLVMBuildICmp(b, LLVMIntEQ, e, ci32(o, i32t, 0), "");
    LLVMValueRef infnan = LLVMBuildAdd(b, v, ci32(o, i32t, 112u << 23), "");
    LLVMValueRef sub = LLVMBuildFSub(b, LLVMBuildBitCast(b, LLVMBuildAdd(b, v, ci32(o, i32t, 1u << 23), ""), f32t, ""),
                                     LLVMBuildBitCast(b, ci32(o, i32t, 113u << 23), f32t, ""), "");
    v = LLVMBuildSelect(b, is_inf, infnan, v, "");
    v = LLVMBuildSelect(b, is_sub, LLVMBuildBitCast(b, sub, i32t, ""), v, "");
    return LLVMBuildBitCast(b, LLVMBuildOr(b, v, sign, ""), f32t, "");
}

/* bf16 is the top half of an f32: widen the bits and shift them into place. */
static LLVMValueRef widen(const Ob *o, moe_dtype dt, LLVMValueRef raw, LLVMTypeRef i32t, LLVMTypeRef f32t)
{
    bool vec = LLVMGetTypeKind(i32t) == LLVMVectorTypeKind;
    if (dt == DT_F16 && o->vw == 4) { /* vw 4 = SSE, the one target without F16C (cg_target_detect) */
        LLVMTypeRef bits = vec ? LLVMVectorType(o->ti16, LLVMGetVectorSize(i32t)) : o->ti16;
        return f16_bits_to_f32(o, LLVMBuildBitCast(o->b, raw, bits, ""), i32t, f32t);
    }
    if (dt == DT_F16) return LLVMBuildFPExt(o->b, raw, f32t, "");
    LLVMValueRef x = LLVMBuildZExt(o->b, raw, i32t, "");
    return LLVMBuildBitCast(o->b, LLVMBuildShl(o->b, x, ci32(o, i32t, 16), ""), f32t, "");
}

LLVMValueRef ob_ldw(const Ob *o, moe_dtype dt, LLVMValueRef ptr, LLVMValueRef idx)
{
    if (dt == DT_F32) return ob_ldf(o, ptr, idx);
    LLVMTypeRef t = dt == DT_F16 ? o->tf16 : o->ti16;
    return widen(o, dt, load_at(o, t, t, ptr, idx, 2), o->ti32, o->tf32);
}

LLVMValueRef ob_ldv(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx)
{
    return load_at(o, o->tvf, o->tf32, ptr, idx, 4);
}

LLVMValueRef ob_ldv_n(const Ob *o, int lanes, LLVMValueRef ptr, LLVMValueRef idx)
{
    return load_at(o, LLVMVectorType(o->tf32, (unsigned)lanes), o->tf32, ptr, idx, 4);
}

LLVMValueRef ob_ldvw(const Ob *o, moe_dtype dt, LLVMValueRef ptr, LLVMValueRef idx)
{
    return ob_ldvw_n(o, dt, o->vw, ptr, idx);
}

LLVMValueRef ob_ldvw_n(const Ob *o, moe_dtype dt, int lanes, LLVMValueRef ptr, LLVMValueRef idx)
{
    if (dt == DT_F32) return ob_ldv_n(o, lanes, ptr, idx);
    unsigned w = (unsigned)lanes;
    LLVMTypeRef e = dt == DT_F16 ? o->tf16 : o->ti16;
    LLVMValueRef raw = load_at(o, LLVMVectorType(e, w), e, ptr, idx, 2);
    return widen(o, dt, raw, LLVMVectorType(o->ti32, w), LLVMVectorType(o->tf32, w));
}

void ob_stv(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx, LLVMValueRef v) { store_at(o, o->tf32, ptr, idx, v); }

LLVMValueRef ob_alloca(const Ob *o, LLVMTypeRef t, int64_t n)
{
    LLVMBuilderRef b = LLVMCreateBuilderInContext(o->ctx);
    LLVMPositionBuilderBefore(b, LLVMGetBasicBlockTerminator(o->entry));
    LLVMValueRef a = LLVMBuildAlloca(b, LLVMArrayType(t, (unsigned)(n > 0 ? n : 1)), "buf");
    LLVMSetAlignment(a, 64);
    LLVMDisposeBuilder(b);
    return a;
}

void ob_loop_begin(Ob *o, ObLoop *L, LLVMValueRef lo, LLVMValueRef hi, int n_carry, const LLVMValueRef *init)
{
    MOE_ASSERT(n_carry <= OB_MAX_CARRY);
    L->n = n_carry;
    LLVMBasicBlockRef pre = LLVMGetInsertBlock(o->b);
    L->header = LLVMAppendBasicBlockInContext(o->ctx, o->fn, "loop");
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(o->ctx, o->fn, "body");
    L->exit = LLVMAppendBasicBlockInContext(o->ctx, o->fn, "done");
    LLVMBuildBr(o->b, L->header);
    LLVMPositionBuilderAtEnd(o->b, L->header);
    L->i = LLVMBuildPhi(o->b, o->ti64, "i");
    LLVMAddIncoming(L->i, &lo, &pre, 1);
    for (int k = 0; k < n_carry; k++) {
        L->v[k] = LLVMBuildPhi(o->b, LLVMTypeOf(init[k]), "c");
        LLVMValueRef in = init[k];
        LLVMAddIncoming(L->v[k], &in, &pre, 1);
    }
    LLVMBuildCondBr(o->b, LLVMBuildICmp(o->b, LLVMIntSLT, L->i, hi, ""), body, L->exit);
    LLVMPositionBuilderAtEnd(o->b, body);
}

void ob_loop_end(Ob *o, ObLoop *L, const LLVMValueRef *next)
{
    LLVMBasicBlockRef latch = LLVMGetInsertBlock(o->b);
    LLVMValueRef inc = LLVMBuildNSWAdd(o->b, L->i, ob_i64(o, 1), "");
    LLVMAddIncoming(L->i, &inc, &latch, 1);
    for (int k = 0; k < L->n; k++) {
        LLVMValueRef nx = next[k];
        LLVMAddIncoming(L->v[k], &nx, &latch, 1);
    }
    LLVMBuildBr(o->b, L->header);
    LLVMPositionBuilderAtEnd(o->b, L->exit);
}

void ob_rows_begin(Ob *o, ObLoop *L)
{
    LLVMValueRef row0 = ob_arg(o, 0);
    ob_loop_begin(o, L, row0, LLVMBuildNSWAdd(o->b, row0, ob_arg(o, 1), "end"), 0, NULL);
}

LLVMBasicBlockRef ob_if_begin(Ob *o, LLVMValueRef cond)
{
    LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(o->ctx, o->fn, "then");
    LLVMBasicBlockRef join = LLVMAppendBasicBlockInContext(o->ctx, o->fn, "join");
    LLVMBuildCondBr(o->b, cond, then, join);
    LLVMPositionBuilderAtEnd(o->b, then);
    return join;
}

void ob_if_end(Ob *o, LLVMBasicBlockRef join)
{
    LLVMBuildBr(o->b, join);
    LLVMPositionBuilderAtEnd(o->b, join);
}

LLVMValueRef ob_dot(Ob *o, LLVMValueRef a, LLVMValueRef ia, LLVMValueRef b, LLVMValueRef ib, int64_t n)
{
    int64_t nv = n / o->vw, done = nv * o->vw;
    LLVMValueRef s = ob_f32(o, 0);
    if (nv > 0) {
        ObLoop L;
        LLVMValueRef zero = LLVMConstNull(o->tvf);
        ob_loop_begin(o, &L, ob_i64(o, 0), ob_i64(o, nv), 1, &zero);
        LLVMValueRef off = LLVMBuildNSWMul(o->b, L.i, ob_i64(o, o->vw), "");
        LLVMValueRef x = ob_ldv(o, a, LLVMBuildNSWAdd(o->b, ia, off, ""));
        LLVMValueRef y = ob_ldv(o, b, LLVMBuildNSWAdd(o->b, ib, off, ""));
        LLVMValueRef acc = ob_fma(o, x, y, L.v[0]);
        ob_loop_end(o, &L, &acc);
        s = ob_hsum(o, L.v[0]);
    }
    if (done < n) {
        ObLoop L;
        ob_loop_begin(o, &L, ob_i64(o, done), ob_i64(o, n), 1, &s);
        LLVMValueRef x = ob_ldf(o, a, LLVMBuildNSWAdd(o->b, ia, L.i, ""));
        LLVMValueRef y = ob_ldf(o, b, LLVMBuildNSWAdd(o->b, ib, L.i, ""));
        LLVMValueRef acc = ob_fma(o, x, y, L.v[0]);
        ob_loop_end(o, &L, &acc);
        s = L.v[0];
    }
    return s;
}

void ob_softmax(Ob *o, LLVMValueRef p, int64_t n)
{
    LLVMValueRef init = LLVMConstReal(o->tf32, -INFINITY), zero = ob_f32(o, 0);
    ObLoop L;
    ob_loop_begin(o, &L, ob_i64(o, 0), ob_i64(o, n), 1, &init);
    LLVMValueRef mx = ob_fmax(o, ob_ldf(o, p, L.i), L.v[0]);
    ob_loop_end(o, &L, &mx);
    mx = L.v[0];
    ob_loop_begin(o, &L, ob_i64(o, 0), ob_i64(o, n), 1, &zero);
    LLVMValueRef e = ob_exp(o, LLVMBuildFSub(o->b, ob_ldf(o, p, L.i), mx, ""));
    ob_stf(o, p, L.i, e);
    LLVMValueRef sum = LLVMBuildFAdd(o->b, L.v[0], e, "");
    ob_loop_end(o, &L, &sum);
    sum = L.v[0];
    ob_loop_begin(o, &L, ob_i64(o, 0), ob_i64(o, n), 0, NULL);
    ob_stf(o, p, L.i, LLVMBuildFDiv(o->b, ob_ldf(o, p, L.i), sum, ""));
    ob_loop_end(o, &L, NULL);
}
