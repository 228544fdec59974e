/* kernel_ir.c — the GEMM micro-kernel as LLVM IR: an MR x NR register tile of <W x float>
 * accumulators, one broadcast of A and NR/W loads of B per k step (B converted to f32 right after
 * loading), llvm.fma (mul + add on SSE), a K-unrolled main loop, a remainder loop, then a store that
 * overwrites or accumulates. Explicit vectors: O3 has nothing to guess, it only schedules.
 * The bf16-dot form (a_bf16) steps over k pairs instead: a 32-bit broadcast of A's pair, B's pairs
 * loaded as they are, llvm.x86.avx512bf16.dpbf16ps.512 into the same f32 accumulators.
 * The AMX form (amx) keeps the tile in AMX tile registers instead: C tiles 0-3, A 4-5, B 6-7, named
 * by the immediates of the intrinsics that take tile numbers (llvm.x86.tileloadd64 and friends, as
 * GCC's _tile_* builtins), configured by one ldtilecfg of a constant at entry. */
#include "codegen/llvm/cg_internal.h"

#include <string.h>

enum { MAX_ACC = 64 };

typedef struct KB {
    LLVMContextRef ctx;
    LLVMModuleRef  mod;
    LLVMBuilderRef b;
    const CgTarget *t;
    const CgKernelConfig *cfg;
    int W, NV, MR, NR;                   /* lanes, vectors per row, tile */
    LLVMTypeRef f32, i16, i32, i64, vf32, vi32, b_elem, b_vec;
    LLVMTypeRef fma_ty;
    LLVMValueRef fma_fn;
    CgDotIntrinsic dot;                     /* a_bf16: vdpbf16ps */
    LLVMValueRef kc, ap, bp, c, ldc, beta, pf, pf_shift; /* the function's parameters */
    LLVMValueRef acc[MAX_ACC];           /* [MR][NV], the current values */
} KB;

static LLVMValueRef ci64(KB *k, long long v) { return LLVMConstInt(k->i64, (unsigned long long)v, 1); }
static LLVMValueRef ci32(KB *k, long long v) { return LLVMConstInt(k->i32, (unsigned long long)v, 1); }

static LLVMValueRef splat_i32(KB *k, unsigned v) {
    LLVMValueRef lanes[16];
    for (int i = 0; i < k->W; i++) lanes[i] = LLVMConstInt(k->i32, v, 0);
    return LLVMConstVector(lanes, (unsigned)k->W);
}

/* Load a <W x elem> vector from base + idx elements (unaligned: B rows are NR*size bytes apart). */
static LLVMValueRef load_vec(KB *k, LLVMTypeRef elem, LLVMTypeRef vec, LLVMValueRef base,
                             LLVMValueRef idx, unsigned align) {
    LLVMValueRef p = LLVMBuildGEP2(k->b, elem, base, &idx, 1, "");
    p = LLVMBuildBitCast(k->b, p, LLVMPointerType(vec, 0), ""); /* no-op with opaque pointers */
    LLVMValueRef v = LLVMBuildLoad2(k->b, vec, p, "");
    LLVMSetAlignment(v, align);
    return v;
}

/* f16 bits -> f32 without F16C: place exponent and mantissa in f32 position and rescale by 2^112
 * (exact for normals and subnormals); Inf/NaN get the all-ones exponent; then the sign. */
static LLVMValueRef f16_bits_to_f32(KB *k, LLVMValueRef h) {
    LLVMBuilderRef b = k->b;
    LLVMValueRef x = LLVMBuildZExt(b, h, k->vi32, "");
    LLVMValueRef sign = LLVMBuildShl(b, LLVMBuildAnd(b, x, splat_i32(k, 0x8000), ""), splat_i32(k, 16), "");
    LLVMValueRef em = LLVMBuildAnd(b, x, splat_i32(k, 0x7fff), "");
    LLVMValueRef shifted = LLVMBuildShl(b, em, splat_i32(k, 13), "");
    LLVMValueRef scale = LLVMBuildBitCast(b, splat_i32(k, 0x77800000u), k->vf32, ""); /* 2^112 */
    LLVMValueRef mag = LLVMBuildFMul(b, LLVMBuildBitCast(b, shifted, k->vf32, ""), scale, "");
    LLVMValueRef special = LLVMBuildOr(b, shifted, splat_i32(k, 0x7f800000u), "");
    LLVMValueRef is_special = LLVMBuildICmp(b, LLVMIntUGE, em, splat_i32(k, 0x7c00), "");
    LLVMValueRef bits = LLVMBuildSelect(b, is_special, special, LLVMBuildBitCast(b, mag, k->vi32, ""), "");
    return LLVMBuildBitCast(b, LLVMBuildOr(b, bits, sign, ""), k->vf32, "");
}

/* Vector v of B row k (index k*NR + v*W) as <W x float>. */
static LLVMValueRef load_b(KB *k, LLVMValueRef kk, int v) {
    LLVMBuilderRef b = k->b;
    LLVMValueRef idx = LLVMBuildAdd(b, LLVMBuildMul(b, kk, ci64(k, k->NR), ""), ci64(k, (long long)v * k->W), "");
    switch (k->cfg->b_dtype) {
    case DT_BF16: {
        LLVMValueRef x = load_vec(k, k->i16, k->b_vec, k->bp, idx, 2);
        x = LLVMBuildShl(b, LLVMBuildZExt(b, x, k->vi32, ""), splat_i32(k, 16), "");
        return LLVMBuildBitCast(b, x, k->vf32, "");
    }
    case DT_F16: {
        LLVMValueRef x = load_vec(k, k->b_elem, k->b_vec, k->bp, idx, 2);
        return k->t->has_f16c ? LLVMBuildFPExt(b, x, k->vf32, "") : f16_bits_to_f32(k, x);
    }
    default: return load_vec(k, k->f32, k->vf32, k->bp, idx, 4);
    }
}

static LLVMValueRef broadcast_a(KB *k, LLVMValueRef kk, int i) {
    LLVMBuilderRef b = k->b;
    LLVMValueRef idx = LLVMBuildAdd(b, LLVMBuildMul(b, kk, ci64(k, k->MR), ""), ci64(k, i), "");
    LLVMValueRef p = LLVMBuildGEP2(b, k->f32, k->ap, &idx, 1, "");
    LLVMValueRef a = LLVMBuildLoad2(b, k->f32, p, "");
    LLVMSetAlignment(a, 4);
    LLVMValueRef v = LLVMBuildInsertElement(b, LLVMGetUndef(k->vf32), a, ci32(k, 0), "");
    LLVMValueRef zeros = LLVMConstNull(LLVMVectorType(k->i32, (unsigned)k->W));
    return LLVMBuildShuffleVector(b, v, LLVMGetUndef(k->vf32), zeros, "");
}

static LLVMValueRef fma3(KB *k, LLVMValueRef a, LLVMValueRef b, LLVMValueRef c) {
    if (!k->fma_fn) /* SSE: no FMA unit; a call to fmaf would be far slower than mul + add */
        return LLVMBuildFAdd(k->b, LLVMBuildFMul(k->b, a, b, ""), c, "");
    LLVMValueRef args[3] = {a, b, c};
    return LLVMBuildCall2(k->b, k->fma_ty, k->fma_fn, args, 3, "");
}

/* Word idx of base (A's or B's k pairs) as <W x i32>: a broadcast or a vector load. */
static LLVMValueRef pair_words(KB *k, LLVMValueRef base, LLVMValueRef idx, bool splat) {
    LLVMBuilderRef b = k->b;
    LLVMValueRef p = LLVMBuildBitCast(b, base, LLVMPointerType(k->i32, 0), "");
    if (!splat) return load_vec(k, k->i32, k->vi32, p, idx, 4);
    LLVMValueRef a = LLVMBuildLoad2(b, k->i32, LLVMBuildGEP2(b, k->i32, p, &idx, 1, ""), "");
    LLVMSetAlignment(a, 4);
    LLVMValueRef v = LLVMBuildInsertElement(b, LLVMGetUndef(k->vi32), a, ci32(k, 0), "");
    return LLVMBuildShuffleVector(b, v, LLVMGetUndef(k->vi32), LLVMConstNull(k->vi32), "");
}

/* One k pair of the bf16-dot form: acc[i][v] += A(2p, i) B(2p, v) + A(2p+1, i) B(2p+1, v). The
 * intrinsic's pair operands are <16 x i32> up to LLVM 16 and <32 x bfloat> after: a bitcast to
 * whichever the declaration says. */
static void emit_pair_step(KB *k, LLVMValueRef kp) {
    LLVMBuilderRef b = k->b;
    LLVMValueRef bv[MAX_ACC];
    for (int v = 0; v < k->NV; v++) {
        LLVMValueRef idx = LLVMBuildAdd(b, LLVMBuildMul(b, kp, ci64(k, k->NR), ""), ci64(k, (long long)v * k->W), "");
        bv[v] = LLVMBuildBitCast(b, pair_words(k, k->bp, idx, false), k->dot.b, "");
    }
    for (int i = 0; i < k->MR; i++) {
        LLVMValueRef idx = LLVMBuildAdd(b, LLVMBuildMul(b, kp, ci64(k, k->MR), ""), ci64(k, i), "");
        LLVMValueRef a = LLVMBuildBitCast(b, pair_words(k, k->ap, idx, true), k->dot.a, "");
        for (int v = 0; v < k->NV; v++) {
            LLVMValueRef args[3] = {k->acc[i * k->NV + v], a, bv[v]};
            k->acc[i * k->NV + v] = LLVMBuildCall2(b, k->dot.ty, k->dot.fn, args, 3, "");
        }
    }
}

/* Word idx of B's k pairs (16 lanes) with each word's low half zeroed, as <16 x float>: the high
 * halves' bf16 widened, by a masked load (vmovdqu16 {k}{z}: the mask in a mask register, where x &
 * 0xffff0000 holds its constant in a vector one). */
static LLVMValueRef high_halves16(KB *k, LLVMValueRef idx) {
    LLVMBuilderRef b = k->b;
    LLVMTypeRef words = LLVMVectorType(k->i16, 32), bit = LLVMInt1TypeInContext(k->ctx);
    LLVMValueRef p = LLVMBuildGEP2(b, k->i32, LLVMBuildBitCast(b, k->bp, LLVMPointerType(k->i32, 0), ""), &idx, 1, "");
    p = LLVMBuildBitCast(b, p, LLVMPointerType(words, 0), "");
    LLVMTypeRef tys[2] = {words, LLVMTypeOf(p)};
    unsigned id = LLVMLookupIntrinsicID("llvm.masked.load", 16);
    LLVMValueRef odd[32];
    for (int l = 0; l < 32; l++) odd[l] = LLVMConstInt(bit, (unsigned long long)(l & 1), 0);
    LLVMTypeRef fty = LLVMIntrinsicGetType(k->ctx, id, tys, 2);
    unsigned n = LLVMCountParamTypes(fty); /* 4 (pointer, alignment, mask, pass-through); 3 in LLVM 22 */
    LLVMValueRef args[4] = {p, ci32(k, 4), LLVMConstVector(odd, 32), LLVMConstNull(words)};
    if (n == 3) args[1] = args[2], args[2] = args[3];
    LLVMValueRef w = LLVMBuildCall2(b, fty, LLVMGetIntrinsicDeclaration(k->mod, id, tys, 2), args, n, "");
    return LLVMBuildBitCast(b, w, k->vf32, "");
}

/* One k pair of the kpair_b form: B's pair words widened (low half: k = 2p, high: 2p + 1), each
 * times A's f32 of its k: acc[i][v] += A(2p, i) B(2p, v) + A(2p+1, i) B(2p+1, v), in that order. On
 * 16 lanes every row's low-half products go first, then the high halves come by high_halves16
 * (loaded again, not kept from the low halves' load) and their products: 24 accumulators, 3 + 3
 * halves and the broadcasts fit AVX-512's 32 registers, where the high halves by an AND (its mask
 * a 33rd) made LLVM 14 spill three a pair on 8 x 48 (either change alone did not; one core of a Zen
 * 5, `bench_gemm 1 512`'s bf16kp, two rounds: 204, 204 -> 167, 167 ms, as fast as f32 weights;
 * LLVM 22 spilled one a pair and ran 167 before). The same products in the same order. */
static void emit_kpair_f32_step(KB *k, LLVMValueRef kp) {
    LLVMBuilderRef b = k->b;
    LLVMValueRef lo[MAX_ACC], hi[MAX_ACC], idx[MAX_ACC];
    bool split = k->W == 16;
    for (int v = 0; v < k->NV; v++) {
        idx[v] = LLVMBuildAdd(b, LLVMBuildMul(b, kp, ci64(k, k->NR), ""), ci64(k, (long long)v * k->W), "");
        LLVMValueRef x = pair_words(k, k->bp, idx[v], false);
        lo[v] = LLVMBuildBitCast(b, LLVMBuildShl(b, x, splat_i32(k, 16), ""), k->vf32, "");
        if (!split) hi[v] = LLVMBuildBitCast(b, LLVMBuildAnd(b, x, splat_i32(k, 0xffff0000u), ""), k->vf32, "");
    }
    LLVMValueRef k0 = LLVMBuildMul(b, kp, ci64(k, 2), ""), k1 = LLVMBuildAdd(b, k0, ci64(k, 1), "");
    if (split) {
        for (int i = 0; i < k->MR; i++) {
            LLVMValueRef a0 = broadcast_a(k, k0, i);
            for (int v = 0; v < k->NV; v++) k->acc[i * k->NV + v] = fma3(k, a0, lo[v], k->acc[i * k->NV + v]);
        }
        for (int v = 0; v < k->NV; v++) hi[v] = high_halves16(k, idx[v]);
        for (int i = 0; i < k->MR; i++) {
            LLVMValueRef a1 = broadcast_a(k, k1, i);
            for (int v = 0; v < k->NV; v++) k->acc[i * k->NV + v] = fma3(k, a1, hi[v], k->acc[i * k->NV + v]);
        }
        return;
    }
    for (int i = 0; i < k->MR; i++) {
        LLVMValueRef a0 = broadcast_a(k, k0, i), a1 = broadcast_a(k, k1, i);
        for (int v = 0; v < k->NV; v++) {
            LLVMValueRef *acc = &k->acc[i * k->NV + v];
            *acc = fma3(k, a1, hi[v], fma3(k, a0, lo[v], *acc));
        }
    }
}

/* One k step: acc[i][v] += A(k, i) * B(k, v). */
static void emit_k_step(KB *k, LLVMValueRef kk) {
    if (k->cfg->a_bf16) {
        emit_pair_step(k, kk);
        return;
    }
    if (k->cfg->kpair_b) {
        emit_kpair_f32_step(k, kk);
        return;
    }
    LLVMValueRef bv[MAX_ACC];
    for (int v = 0; v < k->NV; v++) bv[v] = load_b(k, kk, v);
    for (int i = 0; i < k->MR; i++) {
        LLVMValueRef a = broadcast_a(k, kk, i);
        for (int v = 0; v < k->NV; v++) k->acc[i * k->NV + v] = fma3(k, a, bv[v], k->acc[i * k->NV + v]);
    }
}

/* Phis for k and every accumulator at the top of the current block; k->acc becomes the phis. */
static LLVMValueRef make_phis(KB *k, LLVMValueRef phis[MAX_ACC]) {
    LLVMValueRef kphi = LLVMBuildPhi(k->b, k->i64, "k");
    for (int a = 0; a < k->MR * k->NV; a++) k->acc[a] = phis[a] = LLVMBuildPhi(k->b, k->vf32, "");
    return kphi;
}

static void add_incoming(KB *k, LLVMValueRef kphi, LLVMValueRef kval, LLVMValueRef phis[MAX_ACC],
                         LLVMValueRef vals[MAX_ACC], LLVMBasicBlockRef from) {
    LLVMAddIncoming(kphi, &kval, &from, 1);
    for (int a = 0; a < k->MR * k->NV; a++) LLVMAddIncoming(phis[a], &vals[a], &from, 1);
}

/* c[i*ldc + v*W ..] = acc (+ old c when beta). */
static void emit_store(KB *k, bool add) {
    LLVMBuilderRef b = k->b;
    for (int i = 0; i < k->MR; i++)
        for (int v = 0; v < k->NV; v++) {
            LLVMValueRef idx = LLVMBuildAdd(b, LLVMBuildMul(b, ci64(k, i), k->ldc, ""), ci64(k, (long long)v * k->W), "");
            LLVMValueRef p = LLVMBuildGEP2(b, k->f32, k->c, &idx, 1, "");
            p = LLVMBuildBitCast(b, p, LLVMPointerType(k->vf32, 0), "");
            LLVMValueRef x = k->acc[i * k->NV + v];
            if (add) {
                LLVMValueRef old = LLVMBuildLoad2(b, k->vf32, p, "");
                LLVMSetAlignment(old, 4);
                x = LLVMBuildFAdd(b, old, x, "");
            }
            LLVMSetAlignment(LLVMBuildStore(b, x, p), 4);
        }
    LLVMBuildRetVoid(b);
}

static void init_types(KB *k) {
    k->W = k->t->vec_width;
    k->NR = k->cfg->nr;
    k->MR = k->cfg->mr;
    k->NV = k->NR / k->W;
    MOE_ASSERT(k->NR % k->W == 0 && k->MR >= 1 && k->NV >= 1 && k->MR * k->NV <= MAX_ACC);
    k->f32 = LLVMFloatTypeInContext(k->ctx);
    k->i16 = LLVMInt16TypeInContext(k->ctx);
    k->i32 = LLVMInt32TypeInContext(k->ctx);
    k->i64 = LLVMInt64TypeInContext(k->ctx);
    k->vf32 = LLVMVectorType(k->f32, (unsigned)k->W);
    k->vi32 = LLVMVectorType(k->i32, (unsigned)k->W);
    moe_dtype bt = k->cfg->b_dtype;
    k->b_elem = bt == DT_F32 ? k->f32 : (bt == DT_F16 && k->t->has_f16c) ? LLVMHalfTypeInContext(k->ctx) : k->i16;
    k->b_vec = LLVMVectorType(k->b_elem, (unsigned)k->W);
    if (k->t->has_fma) {
        unsigned id = LLVMLookupIntrinsicID("llvm.fma", 8);
        k->fma_ty = LLVMIntrinsicGetType(k->ctx, id, &k->vf32, 1);
        k->fma_fn = LLVMGetIntrinsicDeclaration(k->mod, id, &k->vf32, 1);
    }
    if (k->cfg->a_bf16) {
        MOE_ASSERT(k->t->has_bf16_dot && k->W == 16 && bt == DT_BF16);
        k->dot = cg_dot_intrinsic(k->mod);
    }
}

CgDotIntrinsic cg_dot_intrinsic(LLVMModuleRef mod) {
    static const char name[] = "llvm.x86.avx512bf16.dpbf16ps.512";
    unsigned id = LLVMLookupIntrinsicID(name, sizeof name - 1);
    MOE_ASSERT(id != 0);
    CgDotIntrinsic d = {.ty = LLVMIntrinsicGetType(LLVMGetModuleContext(mod), id, NULL, 0),
                        .fn = LLVMGetIntrinsicDeclaration(mod, id, NULL, 0)};
    LLVMTypeRef params[3];
    MOE_ASSERT(LLVMCountParamTypes(d.ty) == 3);
    LLVMGetParamTypes(d.ty, params);
    d.a = params[1], d.b = params[2];
    return d;
}

/* void symbol(i64 kc, float *noalias ap, B *noalias bp, float *noalias c, i64 ldc, i32 beta, i8 *pf,
 *             i64 pf_shift) */
static LLVMValueRef declare_kernel(KB *k, const char *symbol) {
    LLVMTypeRef pf = LLVMPointerType(k->f32, 0);
    LLVMTypeRef params[8] = {k->i64, pf, LLVMPointerType(k->b_elem, 0), pf, k->i64, k->i32,
                             LLVMPointerType(LLVMInt8TypeInContext(k->ctx), 0), k->i64};
    LLVMTypeRef fty = LLVMFunctionType(LLVMVoidTypeInContext(k->ctx), params, 8, 0);
    LLVMValueRef fn = LLVMAddFunction(k->mod, symbol, fty);
    unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
    unsigned nounwind = LLVMGetEnumAttributeKindForName("nounwind", 8);
    for (unsigned p = 2; p <= 4; p++) /* attribute index = parameter number + 1 */
        LLVMAddAttributeAtIndex(fn, p, LLVMCreateEnumAttribute(k->ctx, noalias, 0));
    LLVMAddAttributeAtIndex(fn, LLVMAttributeFunctionIndex, LLVMCreateEnumAttribute(k->ctx, nounwind, 0));
    /* No "min-legal-vector-width": with it at 0 the backend splits <16 x float> into ymm halves. */
    k->kc = LLVMGetParam(fn, 0);
    k->ap = LLVMGetParam(fn, 1);
    k->bp = LLVMGetParam(fn, 2);
    k->c = LLVMGetParam(fn, 3);
    k->ldc = LLVMGetParam(fn, 4);
    k->beta = LLVMGetParam(fn, 5);
    k->pf = LLVMGetParam(fn, 6);
    k->pf_shift = LLVMGetParam(fn, 7);
    return fn;
}

/* ---- the AMX form --------------------------------------------------------------------------- */
enum { AMX_C = 0, AMX_A = 4, AMX_B = 6, AMX_PF = 4 };

static LLVMValueRef amx_call(KB *k, const char *name, LLVMValueRef *args, unsigned n) {
    unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
    MOE_ASSERT(id != 0);
    LLVMTypeRef ty = LLVMIntrinsicGetType(k->ctx, id, NULL, 0);
    return LLVMBuildCall2(k->b, ty, LLVMGetIntrinsicDeclaration(k->mod, id, NULL, 0), args, n, "");
}

static LLVMValueRef tile_no(KB *k, int t) { return LLVMConstInt(LLVMInt8TypeInContext(k->ctx), (unsigned)t, 0); }

/* base + off bytes as i8*. */
static LLVMValueRef byte_ptr(KB *k, LLVMValueRef base, LLVMValueRef off) {
    LLVMTypeRef i8 = LLVMInt8TypeInContext(k->ctx);
    LLVMValueRef p = LLVMBuildBitCast(k->b, base, LLVMPointerType(i8, 0), "");
    return LLVMBuildGEP2(k->b, i8, p, &off, 1, "");
}

/* Prefetch the byte at base + off into L2 (llvm.prefetch: read, locality 2 = T1, data). */
static void prefetch_l2(KB *k, LLVMValueRef base, LLVMValueRef off) {
    LLVMTypeRef i8p = LLVMPointerType(LLVMInt8TypeInContext(k->ctx), 0);
    LLVMValueRef args[4] = {byte_ptr(k, base, off), ci32(k, 0), ci32(k, 2), ci32(k, 1)};
    unsigned id = LLVMLookupIntrinsicID("llvm.prefetch", 13);
    MOE_ASSERT(id != 0);
    LLVMBuildCall2(k->b, LLVMIntrinsicGetType(k->ctx, id, &i8p, 1), LLVMGetIntrinsicDeclaration(k->mod, id, &i8p, 1),
                   args, 4, "");
}

static void tile_move(KB *k, const char *name, int t, LLVMValueRef base, LLVMValueRef off, LLVMValueRef stride) {
    LLVMValueRef args[3] = {tile_no(k, t), byte_ptr(k, base, off), stride};
    amx_call(k, name, args, 3);
}

/* The 64-byte tile configuration: palette 1, bytes per row (colsb, u16 at 16 + 2t) and rows (u8 at
 * 48 + t) of each tile used. */
static LLVMValueRef amx_config(KB *k, int na, int nb, int rows) {
    unsigned char cfg[64] = {1};
    for (int t = 0; t < 8; t++) {
        bool used = (t < AMX_A && t < na * nb) || (t >= AMX_A && t < AMX_A + na) || (t >= AMX_B && t < AMX_B + nb);
        if (!used) continue;
        cfg[16 + 2 * t] = 64;                           /* 16 f32, 32 bf16 or 16 pair columns */
        cfg[48 + t] = (unsigned char)(t >= AMX_B ? 16 : rows); /* B: 16 k pairs */
    }
    LLVMTypeRef i8 = LLVMInt8TypeInContext(k->ctx), arr = LLVMArrayType(i8, 64);
    LLVMValueRef bytes[64];
    for (int i = 0; i < 64; i++) bytes[i] = LLVMConstInt(i8, cfg[i], 0);
    LLVMValueRef g = LLVMAddGlobal(k->mod, arr, "amx_tile_config");
    LLVMSetInitializer(g, LLVMConstArray(i8, bytes, 64));
    LLVMSetGlobalConstant(g, 1);
    LLVMSetLinkage(g, LLVMPrivateLinkage);
    LLVMSetAlignment(g, 64);
    return LLVMBuildBitCast(k->b, g, LLVMPointerType(i8, 0), "");
}

/* The FMA kernels' prefetch of weights: each iteration of the main loop touches, into L2, the lines
 * at pf of the offsets (shifted right by pf_shift) of B its U k steps read: the driver's choice of
 * what (cg_kernel_fn: B's own bytes CG_B_PREFETCH ahead, or a share of the panel it reads next;
 * gemm.c's panel_compute says what was measured). A 6-row tile widening bf16 weights asks one core
 * for 18 GB/s, more than it reads from memory unaided. The bf16 dot product's loop too: without it
 * a panel's first tile waited on memory (on a Zen 5, bench_gemm, the 7B layer's grouped GEMMs at
 * T = 512, two rounds: one thread 97.4, 96.6 -> 86.9, 87.6 ms; two 49.1, 49.3 -> 45.3, 45.5; T = 1,
 * 64 and 4096 alike or 1-3 % faster). Not for f32 weights below AVX-512 (on a Zen 2 they stream
 * near the read ceiling unaided: the 7B f32 layer did not gain), nor AMX's loop (its own, per k
 * block). */

/* Does cfg's main loop prefetch B (prefetch_b_ahead)? (The dot product's kernels are AVX-512's.) */
static bool prefetches_b(const CgTarget *t, const CgKernelConfig *cfg) {
    return t->isa == CG_ISA_AVX512 || cfg->b_dtype != DT_F32;
}

static long long b_step_bytes(const KB *k) { /* bytes of B a k step (of kk: pairs where it counts them) */
    long long step = (long long)k->NR * (long long)dtype_size(k->cfg->b_dtype);
    return k->cfg->a_bf16 || k->cfg->kpair_b ? 2 * step : step;
}

/* After step u of the iteration's U: its share of the iteration's lines where it has one a step or
 * more, else all of them after the last. Twelve at once after the U steps (AVX-512's 8 x 48 tiles at
 * U = 4) held the weights' stream back where a panel's calls are few and memory-bound: spread, the 7B
 * layer at T = 128 took 12.5-12.9 ms against 14.4-15.3 (a Zen 5, README); AVX2's 6 x 16 of bf16 (two
 * lines in four steps) ran alike spread, so it keeps them together, its code as it was. */
static void prefetch_b_ahead(KB *k, LLVMValueRef kk, int u, int U) {
    long long step = b_step_bytes(k), lines = (step * U + 63) / 64;
    long long from = lines >= U ? lines * u / U : u == U - 1 ? 0 : lines, to = lines >= U ? lines * (u + 1) / U : lines;
    if (from >= to) return;
    /* (the iteration's first step kk's offset, shifted; formed where used, LLVM merges the copies) */
    LLVMValueRef at = LLVMBuildLShr(k->b, LLVMBuildMul(k->b, kk, ci64(k, step), ""), k->pf_shift, "");
    for (long long line = from; line < to; line++)
        prefetch_l2(k, k->pf, LLVMBuildAdd(k->b, at, ci64(k, 64 * line), ""));
}

/* C[MR, NR] (+)= A . B on tiles: na A tiles of up to 16 rows, nb B tiles of 16 columns, na x nb C
 * tiles; a loop over ceil(kc / 32) k blocks, each loading the A and B tiles and multiplying. Each
 * block first prefetches B's block AMX_PF blocks ahead into L2 (running on into the next panel, the
 * drivers' next call): tile loads that miss get little memory-level parallelism, and without it a
 * layer's group of two 32-row tiles streamed its weights at 3-5 GB/s a thread (bench_gemm, 7B layer,
 * T = 512, 2 threads: 114 -> 90 ms; T = 64 67 -> 45 ms; 4 and 8 blocks ahead, L1 or L2, alike). */
static LLVMModuleRef build_amx(KB *k, LLVMValueRef fn) {
    LLVMContextRef ctx = k->ctx;
    int na = k->MR > 16 ? k->MR / 16 : 1, nb = k->NR / 16, rows = k->MR > 16 ? 16 : k->MR;
    MOE_ASSERT(k->cfg->a_bf16 && na * nb <= AMX_A && na <= 2 && nb <= 2 && (k->MR <= 16 || k->MR % 16 == 0));
    k->b = LLVMCreateBuilderInContext(ctx);
    LLVMBuilderRef b = k->b;
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(ctx, fn, "entry");
    LLVMBasicBlockRef ld_c = LLVMAppendBasicBlockInContext(ctx, fn, "load_c");
    LLVMBasicBlockRef zero_c = LLVMAppendBasicBlockInContext(ctx, fn, "zero_c");
    LLVMBasicBlockRef head = LLVMAppendBasicBlockInContext(ctx, fn, "head");
    LLVMBasicBlockRef body = LLVMAppendBasicBlockInContext(ctx, fn, "body");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(ctx, fn, "done");
    LLVMValueRef ldc_bytes, blocks;

    LLVMPositionBuilderAtEnd(b, entry);
    LLVMValueRef cfgp = amx_config(k, na, nb, rows);
    amx_call(k, "llvm.x86.ldtilecfg", &cfgp, 1);
    ldc_bytes = LLVMBuildMul(b, k->ldc, ci64(k, 4), "");
    blocks = LLVMBuildSDiv(b, LLVMBuildAdd(b, k->kc, ci64(k, 31), ""), ci64(k, 32), "blocks");
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntNE, k->beta, ci32(k, 0), ""), ld_c, zero_c);

    LLVMPositionBuilderAtEnd(b, ld_c); /* tile (a, c) at c + (a*16*ldc + c*16) floats */
    for (int a = 0; a < na; a++)
        for (int c = 0; c < nb; c++) {
            LLVMValueRef off = LLVMBuildAdd(b, LLVMBuildMul(b, ci64(k, a * 16), ldc_bytes, ""), ci64(k, c * 64), "");
            tile_move(k, "llvm.x86.tileloadd64", AMX_C + a * nb + c, k->c, off, ldc_bytes);
        }
    LLVMBuildBr(b, head);
    LLVMPositionBuilderAtEnd(b, zero_c);
    for (int t = 0; t < na * nb; t++) {
        LLVMValueRef no = tile_no(k, AMX_C + t);
        amx_call(k, "llvm.x86.tilezero", &no, 1);
    }
    LLVMBuildBr(b, head);

    LLVMPositionBuilderAtEnd(b, head);
    LLVMValueRef kb = LLVMBuildPhi(b, k->i64, "kb");
    LLVMValueRef z = ci64(k, 0);
    LLVMAddIncoming(kb, (LLVMValueRef[]){z, z}, (LLVMBasicBlockRef[]){ld_c, zero_c}, 2);
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, kb, blocks, ""), body, done);

    /* body: A tile a of block kb at ap + (kb*MR*16 + a*256) words, rows 64 bytes apart; B tile c at
     * bp + (kb*16*NR + c*16) words, rows NR*4 bytes apart. */
    LLVMPositionBuilderAtEnd(b, body);
    for (int l = 0; l < k->NR; l++) /* block kb + AMX_PF's NR lines of B, past the panel's end too */
        prefetch_l2(k, k->bp, LLVMBuildAdd(b, LLVMBuildMul(b, kb, ci64(k, (long long)k->NR * 64), ""),
                                           ci64(k, (long long)(AMX_PF * k->NR + l) * 64), ""));
    for (int a = 0; a < na; a++) {
        LLVMValueRef off = LLVMBuildAdd(b, LLVMBuildMul(b, kb, ci64(k, (long long)k->MR * 64), ""), ci64(k, a * 1024), "");
        tile_move(k, "llvm.x86.tileloadd64", AMX_A + a, k->ap, off, ci64(k, 64));
    }
    for (int c = 0; c < nb; c++) {
        LLVMValueRef off = LLVMBuildAdd(b, LLVMBuildMul(b, kb, ci64(k, (long long)k->NR * 64), ""), ci64(k, c * 64), "");
        tile_move(k, "llvm.x86.tileloadd64", AMX_B + c, k->bp, off, ci64(k, (long long)k->NR * 4));
    }
    for (int a = 0; a < na; a++)
        for (int c = 0; c < nb; c++) {
            LLVMValueRef args[3] = {tile_no(k, AMX_C + a * nb + c), tile_no(k, AMX_A + a), tile_no(k, AMX_B + c)};
            amx_call(k, "llvm.x86.tdpbf16ps", args, 3);
        }
    LLVMValueRef next = LLVMBuildAdd(b, kb, ci64(k, 1), "");
    LLVMAddIncoming(kb, &next, &body, 1);
    LLVMBuildBr(b, head);

    LLVMPositionBuilderAtEnd(b, done);
    for (int a = 0; a < na; a++)
        for (int c = 0; c < nb; c++) {
            LLVMValueRef off = LLVMBuildAdd(b, LLVMBuildMul(b, ci64(k, a * 16), ldc_bytes, ""), ci64(k, c * 64), "");
            tile_move(k, "llvm.x86.tilestored64", AMX_C + a * nb + c, k->c, off, ldc_bytes);
        }
    amx_call(k, "llvm.x86.tilerelease", NULL, 0);
    LLVMBuildRetVoid(b);
    LLVMDisposeBuilder(b);
    return k->mod;
}

LLVMModuleRef cg_build_kernel_module(LLVMContextRef ctx, const CgTarget *t, const CgKernelConfig *cfg,
                                     const char *symbol) {
    KB k = {.ctx = ctx, .t = t, .cfg = cfg};
    k.mod = LLVMModuleCreateWithNameInContext(symbol, ctx);
    init_types(&k);
    if (cfg->amx) return build_amx(&k, declare_kernel(&k, symbol));
    LLVMValueRef fn = declare_kernel(&k, symbol);
    k.b = LLVMCreateBuilderInContext(ctx);
    LLVMBuilderRef b = k.b;
    int n_acc = k.MR * k.NV, U = cfg->k_unroll > 0 ? cfg->k_unroll : 1;
    LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(ctx, fn, "entry");
    LLVMBasicBlockRef main_bb = LLVMAppendBasicBlockInContext(ctx, fn, "main");
    LLVMBasicBlockRef mid = LLVMAppendBasicBlockInContext(ctx, fn, "mid");
    LLVMBasicBlockRef rem = LLVMAppendBasicBlockInContext(ctx, fn, "rem");
    LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(ctx, fn, "done");
    LLVMBasicBlockRef st_add = LLVMAppendBasicBlockInContext(ctx, fn, "store_add");
    LLVMBasicBlockRef st_set = LLVMAppendBasicBlockInContext(ctx, fn, "store_set");
    LLVMValueRef zero[MAX_ACC], out[MAX_ACC], p_main[MAX_ACC], p_mid[MAX_ACC], p_rem[MAX_ACC], p_done[MAX_ACC];
    for (int a = 0; a < n_acc; a++) zero[a] = LLVMConstNull(k.vf32);

    /* entry: kc_main = kc - kc % U; skip the unrolled loop when it has no full iteration. The
     * bf16-dot form counts k pairs: (kc + 1) / 2 of them. */
    LLVMPositionBuilderAtEnd(b, entry);
    if (cfg->a_bf16 || cfg->kpair_b) k.kc = LLVMBuildAShr(b, LLVMBuildAdd(b, k.kc, ci64(&k, 1), ""), ci64(&k, 1), "pairs");
    LLVMValueRef kc_main = LLVMBuildSub(b, k.kc, LLVMBuildSRem(b, k.kc, ci64(&k, U), ""), "kc_main");
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSGT, kc_main, ci64(&k, 0), ""), main_bb, mid);

    /* main: U k steps per iteration (and B's prefetch: see prefetches_b). */
    LLVMPositionBuilderAtEnd(b, main_bb);
    LLVMValueRef k_main = make_phis(&k, p_main);
    for (int u = 0; u < U; u++) {
        emit_k_step(&k, LLVMBuildAdd(b, k_main, ci64(&k, u), ""));
        if (prefetches_b(t, cfg)) prefetch_b_ahead(&k, k_main, u, U);
    }
    LLVMValueRef k_next = LLVMBuildAdd(b, k_main, ci64(&k, U), "");
    for (int a = 0; a < n_acc; a++) out[a] = k.acc[a];
    add_incoming(&k, k_main, ci64(&k, 0), p_main, zero, entry);
    add_incoming(&k, k_main, k_next, p_main, out, main_bb);
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, k_next, kc_main, ""), main_bb, mid);

    /* mid: join; run the remainder loop when kc % U != 0. */
    LLVMPositionBuilderAtEnd(b, mid);
    LLVMValueRef k_mid = make_phis(&k, p_mid);
    add_incoming(&k, k_mid, ci64(&k, 0), p_mid, zero, entry);
    add_incoming(&k, k_mid, kc_main, p_mid, out, main_bb);
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, k_mid, k.kc, ""), rem, done);

    /* rem: one k step per iteration. */
    LLVMPositionBuilderAtEnd(b, rem);
    LLVMValueRef k_rem = make_phis(&k, p_rem);
    emit_k_step(&k, k_rem);
    LLVMValueRef k_rem_next = LLVMBuildAdd(b, k_rem, ci64(&k, 1), "");
    LLVMValueRef rem_out[MAX_ACC];
    for (int a = 0; a < n_acc; a++) rem_out[a] = k.acc[a];
    add_incoming(&k, k_rem, k_mid, p_rem, p_mid, mid);
    add_incoming(&k, k_rem, k_rem_next, p_rem, rem_out, rem);
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntSLT, k_rem_next, k.kc, ""), rem, done);

    /* done: the final accumulators; store, adding the old C when beta != 0. */
    LLVMPositionBuilderAtEnd(b, done);
    LLVMValueRef k_done = make_phis(&k, p_done);
    add_incoming(&k, k_done, k_mid, p_done, p_mid, mid);
    add_incoming(&k, k_done, k_rem_next, p_done, rem_out, rem);
    LLVMBuildCondBr(b, LLVMBuildICmp(b, LLVMIntNE, k.beta, ci32(&k, 0), ""), st_add, st_set);
    LLVMPositionBuilderAtEnd(b, st_add);
    emit_store(&k, true);
    for (int a = 0; a < n_acc; a++) k.acc[a] = p_done[a];
    LLVMPositionBuilderAtEnd(b, st_set);
    emit_store(&k, false);

    LLVMDisposeBuilder(b);
    return k.mod;
}
