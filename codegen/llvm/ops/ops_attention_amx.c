/* ops_attention_amx.c — causal GQA attention on AMX tiles (CgOpDesc.amx: bf16 caches, head_dim a
 * multiple of 32), for the query rows t0 .. t0 + rows - 1 of head h that one call is given.
 *
 * What it computes is the IR's amx attention (ir/eval.c mirrors it): q rounded to bf16; a row's
 * scores s_j = q · k_j · scale over its keys 0 .. pos[t], their max m first, then the weights
 * p_j = bf16(e^(s_j - m)) and o = Σ p_j v_j / Σ p_j, the sum over the rounded weights. A weight
 * rounded against the row's final max, not a running one, is the same whatever the blocking, so
 * every path below (and the interpreter) rounds it alike.
 *
 * The caches are in k pairs (cg_attention_kt_index, pairs): a key tile [head_dim / 2][16][2] is, 32
 * dims at a time, one AMX B tile of 16 pair rows × 16 keys; the V cache [cap / 2][head_dim][2] is, 32
 * keys and 16 dims at a time, one B tile of 16 key pairs × 16 dims.
 *   16 rows at a time (tile16): their q as a bf16 A tile [16][head_dim]; pass 1 runs the scores of
 *   32 keys a step (two S tiles, head_dim / 32 products each) for the rows' max, keeping them on
 *   the stack where cap <= KEEP_CAP (else pass 2 runs them again); pass 2 turns each 32 keys into a
 *   bf16 P tile and, 256 keys a step, adds P · V into the rows' f32 output [16][head_dim] (loaded and stored
 *   around the step, four 16-dim tiles at a time). V rows past the rows' last key are never read
 *   into a product: the 32 keys that hold the last one are copied with the later keys' halves zeroed
 *   (a cache past its positions may hold anything, NaN in the tests). One tile configuration a call.
 *   Other rows (decode steps, a call's last rows % 16) one at a time on FMAs (row1): pass 1 the
 *   scores of each 16-key tile (even and odd dims of the pair words: the word's two halves, shifted
 *   or masked into f32s) into a [cap] stack buffer and their max, then the weights in place, then
 *   the values a pair of keys at a time. A decode step streams each cache once and prefetches ahead.
 * Measured at T = 512 on one core of the AMX Xeon (tests/llvm_ops/ops_timing, OPS_TIMING_AMX=1):
 * 1.4-2.4x the FMA form, and the kept scores 1.1-1.6x more; on that VM a tile product takes 17 ns
 * and a tile load 11, barely overlapped, so fewer tile instructions is what pays (README). Tried and
 * not kept: the scores of 64 keys a run (four S tiles, their chains side by side: slower), prefetching the
 * next 32 keys' K and V into L1 (slower), q's tiles kept in registers and the key and value tiles
 * round three registers (alike), a decode step's prefetch 4x as far (slower). */
#include "codegen/llvm/cg_internal.h"
#include "codegen/llvm/ops/ops_build.h"

#include <math.h>

#define KT CG_ATTENTION_KT_KEYS /* keys of a K tile */
#define ROWS 16                 /* query rows of an AMX tile */
#define SUB 32                  /* keys of a P tile (16 pairs) */
/* Caches of up to this capacity (cg_attention_cap of 4096 positions and a little) keep pass 1's scores
 * for pass 2, on the stack (16 rows of cap floats, 270 KB at most); larger ones score the keys again */
#define KEEP_CAP 4224
#define STEP_SUBS 8             /* P tiles a step of pass 2: the O tiles loaded and stored once a step */
#define PF_TILES 2              /* key tiles ahead a single row prefetches K */
#define PF_PAIRS 32             /* key pairs ahead it prefetches V */
#define DOT_ROWS 8              /* the dot form's query rows a tile: 8 × 2 key tiles = 16 score chains */
#define DOT_CHUNK 2             /* its output vectors a row a pass over the values: 8 × 2 chains */

enum { T_S = 0, T_O = 0, T_Q = 4, T_P = 4, T_B = 6 }; /* tile registers: S 0-1 or O 0-3, A 4, B 6-7 */

typedef struct {
    LLVMValueRef q, kt, vc, pos, out;
    OpsAttRows rows;                     /* the call's rows: pairs of a position and a query head */
    LLVMValueRef head_tiles, head_pairs; /* kv head g's first K tile and first V pair row */
    int64_t heads, hd;
    double scale;
    LLVMValueRef sc, qr;                 /* row1: [cap] scores then weights, [hd] q rounded */
    /* tile16: q [16][hd] bf16, S [16][32] f32, P STEP_SUBS x [16][32] bf16, the last keys' V copy
     * [16][hd] words, O [16][hd] f32, per row its key count, running max and sum lanes [16][16] */
    LLVMValueRef qb, sb, pb, vt, ob, nr, mv, lv;
    LLVMValueRef keep, kept;             /* cap <= KEEP_CAP: pass 1's scores kept, [cap / 32][16][32] */
    CgDotIntrinsic dot;                  /* the dot form (amx 2): vdpbf16ps */
    LLVMTypeRef cvt_ty;                  /* ... and vcvtne2ps2bf16 (AVX512-BF16 too) */
    LLVMValueRef cvt_fn;
} Am;

static LLVMValueRef add(const Ob *o, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWAdd(o->b, a, b, ""); }
static LLVMValueRef mul(const Ob *o, LLVMValueRef a, int64_t c) { return LLVMBuildNSWMul(o->b, a, ob_i64(o, c), ""); }
static LLVMValueRef addc(const Ob *o, LLVMValueRef a, int64_t c) { return add(o, a, ob_i64(o, c)); }
static LLVMTypeRef vi(const Ob *o, LLVMTypeRef e, int n) { return LLVMVectorType(e, (unsigned)n); }

static LLVMValueRef splat_u32(const Ob *o, uint32_t c, int n)
{
    return ob_splat_n(o, LLVMConstInt(o->ti32, c, 0), n);
}

/* x (f32 lanes) rounded to the nearest bf16, ties to even, as f32 (x finite). */
static LLVMValueRef round_bf16(const Ob *o, LLVMValueRef x)
{
    int n = (int)LLVMGetVectorSize(LLVMTypeOf(x));
    LLVMValueRef w = LLVMBuildBitCast(o->b, x, vi(o, o->ti32, n), "");
    LLVMValueRef lsb = LLVMBuildAnd(o->b, LLVMBuildLShr(o->b, w, splat_u32(o, 16, n), ""), splat_u32(o, 1, n), "");
    w = LLVMBuildAdd(o->b, w, LLVMBuildAdd(o->b, lsb, splat_u32(o, 0x7fff, n), ""), "");
    return LLVMBuildBitCast(o->b, LLVMBuildAnd(o->b, w, splat_u32(o, 0xffff0000u, n), ""), LLVMTypeOf(x), "");
}

/* Two <16 x float> of bf16 values (round_bf16's) as the 32 bf16 of one tile row, stored at ptr[idx]
 * (i16 elements). */
static void store_bf16x32(const Ob *o, LLVMValueRef lo, LLVMValueRef hi, LLVMValueRef ptr, LLVMValueRef idx)
{
    LLVMValueRef h[2], sel[32];
    LLVMValueRef halves[2] = {lo, hi};
    for (int k = 0; k < 2; k++) {
        LLVMValueRef w = LLVMBuildBitCast(o->b, halves[k], vi(o, o->ti32, 16), "");
        h[k] = LLVMBuildTrunc(o->b, LLVMBuildLShr(o->b, w, splat_u32(o, 16, 16), ""), vi(o, o->ti16, 16), "");
    }
    for (int k = 0; k < 32; k++) sel[k] = ob_i32(o, k);
    LLVMValueRef v = LLVMBuildShuffleVector(o->b, h[0], h[1], LLVMConstVector(sel, 32), "");
    LLVMValueRef p = ob_gep(o, o->ti16, ptr, idx);
    p = LLVMBuildPointerCast(o->b, p, LLVMPointerType(vi(o, o->ti16, 32), 0), "");
    LLVMSetAlignment(LLVMBuildStore(o->b, v, p), 2);
}

/* 16 pair words (i32 elements) at ptr[idx]; their even and odd halves as f32. */
static LLVMValueRef ld_words(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx)
{
    LLVMValueRef p = ob_gep(o, o->ti32, ptr, idx);
    p = LLVMBuildPointerCast(o->b, p, LLVMPointerType(vi(o, o->ti32, 16), 0), "");
    LLVMValueRef v = LLVMBuildLoad2(o->b, vi(o, o->ti32, 16), p, "");
    LLVMSetAlignment(v, 4);
    return v;
}
static void st_words(const Ob *o, LLVMValueRef ptr, LLVMValueRef idx, LLVMValueRef v)
{
    LLVMValueRef p = ob_gep(o, o->ti32, ptr, idx);
    p = LLVMBuildPointerCast(o->b, p, LLVMPointerType(vi(o, o->ti32, 16), 0), "");
    LLVMSetAlignment(LLVMBuildStore(o->b, v, p), 4);
}
static LLVMValueRef even_half(const Ob *o, LLVMValueRef w)
{
    return LLVMBuildBitCast(o->b, LLVMBuildShl(o->b, w, splat_u32(o, 16, 16), ""), vi(o, o->tf32, 16), "");
}
static LLVMValueRef odd_half(const Ob *o, LLVMValueRef w)
{
    return LLVMBuildBitCast(o->b, LLVMBuildAnd(o->b, w, splat_u32(o, 0xffff0000u, 16), ""), vi(o, o->tf32, 16), "");
}

/* lanes k of 16 where base + k < left (i64 scalars) */
static LLVMValueRef lanes_below(const Ob *o, int base, LLVMValueRef left)
{
    LLVMValueRef lane[16];
    for (int k = 0; k < 16; k++) lane[k] = ob_i32(o, base + k);
    LLVMValueRef l32 = LLVMBuildTrunc(o->b, ob_min64(o, left, ob_i64(o, 1 << 30)), o->ti32, "");
    return LLVMBuildICmp(o->b, LLVMIntSLT, LLVMConstVector(lane, 16), ob_splat_n(o, l32, 16), "");
}

/* ---- AMX calls ------------------------------------------------------------------------------- */
static void amx(const Ob *o, const char *name, LLVMValueRef *args, unsigned n)
{
    unsigned id = LLVMLookupIntrinsicID(name, strlen(name));
    MOE_ASSERT(id != 0);
    LLVMBuildCall2(o->b, LLVMIntrinsicGetType(o->ctx, id, NULL, 0), LLVMGetIntrinsicDeclaration(o->mod, id, NULL, 0),
                   args, n, "");
}
static LLVMValueRef tno(const Ob *o, int t) { return LLVMConstInt(o->ti8, (unsigned)t, 0); }
static LLVMValueRef bytes_at(const Ob *o, LLVMValueRef base, LLVMValueRef off)
{
    return ob_gep(o, o->ti8, LLVMBuildPointerCast(o->b, base, o->tptr, ""), off);
}
/* tileloadd64 / tilestored64 of tile t at base + off bytes, rows stride bytes apart */
static void tile_ld(const Ob *o, int t, LLVMValueRef base, LLVMValueRef off, int64_t stride)
{
    LLVMValueRef args[3] = {tno(o, t), bytes_at(o, base, off), ob_i64(o, stride)};
    amx(o, "llvm.x86.tileloadd64", args, 3);
}
static void tile_st(const Ob *o, int t, LLVMValueRef base, LLVMValueRef off, int64_t stride)
{
    LLVMValueRef args[3] = {tno(o, t), bytes_at(o, base, off), ob_i64(o, stride)};
    amx(o, "llvm.x86.tilestored64", args, 3);
}
static void tile_dp(const Ob *o, int c, int a, int b)
{
    LLVMValueRef args[3] = {tno(o, c), tno(o, a), tno(o, b)};
    amx(o, "llvm.x86.tdpbf16ps", args, 3);
}
static void tile_zero(const Ob *o, int t)
{
    LLVMValueRef a = tno(o, t);
    amx(o, "llvm.x86.tilezero", &a, 1);
}
/* Every tile 16 rows of 64 bytes (palette 1). */
static void tile_config(const Ob *o)
{
    unsigned char cfg[64] = {1};
    for (int t = 0; t < 8; t++) cfg[16 + 2 * t] = 64, cfg[48 + t] = 16;
    LLVMValueRef bytes[64];
    for (int i = 0; i < 64; i++) bytes[i] = LLVMConstInt(o->ti8, cfg[i], 0);
    LLVMTypeRef arr = LLVMArrayType(o->ti8, 64);
    LLVMValueRef g = LLVMAddGlobal(o->mod, arr, "amx_attention_config");
    LLVMSetInitializer(g, LLVMConstArray(o->ti8, bytes, 64));
    LLVMSetGlobalConstant(g, 1);
    LLVMSetLinkage(g, LLVMPrivateLinkage);
    LLVMSetAlignment(g, 64);
    LLVMValueRef p = LLVMBuildPointerCast(o->b, g, o->tptr, "");
    amx(o, "llvm.x86.ldtilecfg", &p, 1);
}

/* ---- 16 rows on the tiles -------------------------------------------------------------------- */

/* Where the scores of 32·sub .. are: a->kept's block sub when pass 1 keeps them, else a->sb. */
static LLVMValueRef scores_at(const Ob *o, const Am *a, LLVMValueRef sub)
{
    LLVMValueRef at = ob_gep(o, o->tf32, a->kept, mul(o, sub, ROWS * SUB));
    return LLVMBuildSelect(o->b, a->keep, at, LLVMBuildPointerCast(o->b, a->sb, LLVMTypeOf(at), ""), "");
}

/* S[16][32] = the 16 rows' q · keys 32·sub .. 32·sub + 31 (unscaled), into scores_at(sub). */
static void scores16(const Ob *o, const Am *a, LLVMValueRef sub)
{
    LLVMValueRef tile0 = add(o, a->head_tiles, mul(o, sub, SUB / KT));
    tile_zero(o, T_S), tile_zero(o, T_S + 1);
    for (int64_t c = 0; c < a->hd / 32; c++) {
        tile_ld(o, T_Q, a->qb, ob_i64(o, 64 * c), 2 * a->hd);
        for (int u = 0; u < 2; u++) /* key tile u: pair rows 16c .. 16c + 15, 64 bytes each */
            tile_ld(o, T_B + u, a->kt, mul(o, addc(o, mul(o, addc(o, tile0, u), a->hd * KT), 512 * c), 2), 64);
        tile_dp(o, T_S, T_Q, T_B);
        tile_dp(o, T_S + 1, T_Q, T_B + 1);
    }
    LLVMValueRef to = scores_at(o, a, sub);
    tile_st(o, T_S, to, ob_i64(o, 0), 4 * SUB);
    tile_st(o, T_S + 1, to, ob_i64(o, 4 * KT), 4 * SUB);
}

/* Row i's scaled scores of keys j0 .. j0 + 31 from `from` (scores_at), keys from its count on -inf. */
static void row_scores(const Ob *o, const Am *a, int i, LLVMValueRef j0, LLVMValueRef from, LLVMValueRef *s)
{
    LLVMValueRef left = LLVMBuildNSWSub(o->b, ob_ld(o, o->ti64, a->nr, ob_i64(o, i)), j0, "");
    LLVMValueRef scale = ob_splat_n(o, ob_f32(o, a->scale), 16);
    LLVMValueRef ninf = ob_splat_n(o, LLVMConstReal(o->tf32, -INFINITY), 16);
    for (int u = 0; u < 2; u++) {
        LLVMValueRef v = LLVMBuildFMul(o->b, ob_ldv_n(o, 16, from, ob_i64(o, i * SUB + 16 * u)), scale, "");
        s[u] = LLVMBuildSelect(o->b, lanes_below(o, 16 * u, left), v, ninf, "");
    }
}

/* V pairs of keys j0 .. j0 + 31 with the halves of keys >= nmax zeroed, into a->vt. */
static void copy_v_tail(Ob *o, const Am *a, LLVMValueRef j0, LLVMValueRef nmax)
{
    LLVMValueRef vt = a->vt;
    for (int r = 0; r < 16; r++) {
        LLVMValueRef key = addc(o, j0, 2 * r);
        LLVMValueRef mask = LLVMBuildSelect(o->b, LLVMBuildICmp(o->b, LLVMIntSLT, addc(o, key, 1), nmax, ""),
                                            LLVMConstInt(o->ti32, 0xffffffffu, 0),
                                            LLVMBuildSelect(o->b, LLVMBuildICmp(o->b, LLVMIntSLT, key, nmax, ""),
                                                            LLVMConstInt(o->ti32, 0xffffu, 0), ob_i32(o, 0), ""),
                                            "");
        LLVMValueRef mv = ob_splat_n(o, mask, 16);
        LLVMValueRef row = mul(o, add(o, a->head_pairs, addc(o, LLVMBuildSDiv(o->b, j0, ob_i64(o, 2), ""), r)), a->hd);
        for (int64_t c = 0; c < a->hd / 16; c++)
            st_words(o, vt, ob_i64(o, r * a->hd + 16 * c),
                     LLVMBuildAnd(o->b, ld_words(o, a->vc, addc(o, row, 16 * c)), mv, ""));
    }
}

/* A tile's rows, the call's pairs p0 .. p0 + rows - 1: each one's key count n[i] (the largest returned)
 * and output offset qi[i], its q rounded to bf16 into a->qb, its output accumulators a->ob zeroed. */
static LLVMValueRef tile_rows(Ob *o, const Am *a, LLVMValueRef p0, int rows, LLVMValueRef *n, LLVMValueRef *qi)
{
    LLVMValueRef nmax = ob_i64(o, 0), zero16 = LLVMConstNull(vi(o, o->tf32, 16));
    for (int i = 0; i < rows; i++) {
        LLVMValueRef t;
        qi[i] = ops_attention_pair(o, &a->rows, addc(o, p0, i), &t);
        n[i] = addc(o, ob_ldi32(o, a->pos, t), 1);
        nmax = LLVMBuildSelect(o->b, LLVMBuildICmp(o->b, LLVMIntSGT, n[i], nmax, ""), n[i], nmax, "");
        for (int64_t c = 0; c < a->hd / 32; c++)
            store_bf16x32(o, round_bf16(o, ob_ldv_n(o, 16, a->q, addc(o, qi[i], 32 * c))),
                          round_bf16(o, ob_ldv_n(o, 16, a->q, addc(o, qi[i], 32 * c + 16))), a->qb,
                          ob_i64(o, i * a->hd + 32 * c));
        for (int64_t c = 0; c < a->hd / 16; c++) ob_stv(o, a->ob, ob_i64(o, i * a->hd + 16 * c), zero16);
    }
    return nmax;
}

/* Where the V pairs of keys 32·vsub .. 32·vsub + 31 are read from: the cache, or a->vt (copy_v_tail's)
 * for the 32 keys that hold the rows' last one (nmax - 1). */
static LLVMValueRef v_source(const Ob *o, const Am *a, LLVMValueRef vsub, LLVMValueRef nmax)
{
    LLVMValueRef tail = LLVMBuildICmp(o->b, LLVMIntSGT, addc(o, mul(o, vsub, SUB), SUB), nmax, "");
    LLVMValueRef vrow = add(o, a->head_pairs, mul(o, vsub, SUB / 2)); /* its first pair row */
    LLVMValueRef direct = bytes_at(o, a->vc, mul(o, vrow, 4 * a->hd));
    return LLVMBuildSelect(o->b, tail, LLVMBuildPointerCast(o->b, a->vt, o->tptr, ""), direct, "");
}

static void tile16(Ob *o, const Am *a, LLVMValueRef p0)
{
    LLVMValueRef zero16 = LLVMConstNull(vi(o, o->tf32, 16)), n[ROWS], qi[ROWS];
    LLVMValueRef ninf = ob_splat_n(o, LLVMConstReal(o->tf32, -INFINITY), 16);
    LLVMValueRef nmax = tile_rows(o, a, p0, ROWS, n, qi);
    for (int i = 0; i < ROWS; i++) {
        ob_st(o, o->ti64, a->nr, ob_i64(o, i), n[i]);
        ob_stv(o, a->mv, ob_i64(o, 16 * i), ninf);
        ob_stv(o, a->lv, ob_i64(o, 16 * i), zero16);
    }
    LLVMValueRef nsub = LLVMBuildSDiv(o->b, addc(o, nmax, SUB - 1), ob_i64(o, SUB), "");

    ObLoop S; /* pass 1: each row's max lanes */
    ob_loop_begin(o, &S, ob_i64(o, 0), nsub, 0, NULL);
    scores16(o, a, S.i);
    LLVMValueRef from1 = scores_at(o, a, S.i);
    for (int i = 0; i < ROWS; i++) {
        LLVMValueRef s[2];
        row_scores(o, a, i, mul(o, S.i, SUB), from1, s);
        LLVMValueRef m = ob_fmax(o, ob_fmax(o, s[0], s[1]), ob_ldv_n(o, 16, a->mv, ob_i64(o, 16 * i)));
        ob_stv(o, a->mv, ob_i64(o, 16 * i), m);
    }
    ob_loop_end(o, &S, NULL);
    LLVMValueRef m[ROWS];
    for (int i = 0; i < ROWS; i++) m[i] = ob_splat_n(o, ob_hmax(o, ob_ldv_n(o, 16, a->mv, ob_i64(o, 16 * i))), 16);

    ObLoop B; /* pass 2: STEP_SUBS · 32 keys a step */
    ob_loop_begin(o, &B, ob_i64(o, 0), LLVMBuildSDiv(o->b, addc(o, nsub, STEP_SUBS - 1), ob_i64(o, STEP_SUBS), ""), 0,
                  NULL);
    LLVMValueRef sub0 = mul(o, B.i, STEP_SUBS);
    LLVMValueRef nin = ob_min64(o, ob_i64(o, STEP_SUBS), LLVMBuildNSWSub(o->b, nsub, sub0, ""));
    ObLoop U; /* each 32 keys' P tile; the V of the step that holds the rows' last key copied, masked */
    ob_loop_begin(o, &U, ob_i64(o, 0), nin, 0, NULL);
    LLVMValueRef sub = add(o, sub0, U.i), j0 = mul(o, sub, SUB);
    LLVMBasicBlockRef again = ob_if_begin(o, LLVMBuildNot(o->b, a->keep, "")); /* unless pass 1 kept them */
    scores16(o, a, sub);
    ob_if_end(o, again);
    LLVMValueRef from2 = scores_at(o, a, sub);
    for (int i = 0; i < ROWS; i++) {
        LLVMValueRef s[2], p[2];
        row_scores(o, a, i, j0, from2, s);
        for (int k = 0; k < 2; k++) {
            LLVMValueRef e = ob_exp_poly(o, LLVMBuildFSub(o->b, s[k], m[i], ""));
            LLVMValueRef masked = LLVMBuildFCmp(o->b, LLVMRealOEQ, s[k], ninf, "");
            p[k] = round_bf16(o, LLVMBuildSelect(o->b, masked, zero16, e, ""));
        }
        LLVMValueRef at = ob_i64(o, 16 * i);
        ob_stv(o, a->lv, at, LLVMBuildFAdd(o->b, ob_ldv_n(o, 16, a->lv, at), LLVMBuildFAdd(o->b, p[0], p[1], ""), ""));
        store_bf16x32(o, p[0], p[1], a->pb, add(o, mul(o, U.i, ROWS * SUB), ob_i64(o, i * SUB)));
    }
    LLVMBasicBlockRef join = ob_if_begin(o, LLVMBuildICmp(o->b, LLVMIntSGT, addc(o, j0, SUB), nmax, ""));
    copy_v_tail(o, a, j0, nmax);
    ob_if_end(o, join);
    ob_loop_end(o, &U, NULL);
    for (int64_t e0 = 0; e0 < a->hd / 16; e0 += 4) { /* O += P · V, four 16-dim tiles at a time */
        int ne = a->hd / 16 - e0 < 4 ? (int)(a->hd / 16 - e0) : 4;
        for (int e = 0; e < ne; e++) tile_ld(o, T_O + e, a->ob, ob_i64(o, 4 * 16 * (e0 + e)), 4 * a->hd);
        ObLoop V;
        ob_loop_begin(o, &V, ob_i64(o, 0), nin, 0, NULL);
        LLVMValueRef vsrc = v_source(o, a, add(o, sub0, V.i), nmax);
        tile_ld(o, T_P, a->pb, mul(o, V.i, 2 * ROWS * SUB), 2 * SUB);
        for (int e = 0; e < ne; e++) {
            tile_ld(o, T_B, vsrc, ob_i64(o, 4 * 16 * (e0 + e)), 4 * a->hd);
            tile_dp(o, T_O + e, T_P, T_B);
        }
        ob_loop_end(o, &V, NULL);
        for (int e = 0; e < ne; e++) tile_st(o, T_O + e, a->ob, ob_i64(o, 4 * 16 * (e0 + e)), 4 * a->hd);
    }
    ob_loop_end(o, &B, NULL);

    for (int i = 0; i < ROWS; i++) {
        LLVMValueRef l = ob_splat_n(o, ob_hsum(o, ob_ldv_n(o, 16, a->lv, ob_i64(o, 16 * i))), 16);
        for (int64_t c = 0; c < a->hd / 16; c++)
            ob_stv(o, a->out, addc(o, qi[i], 16 * c),
                   LLVMBuildFDiv(o->b, ob_ldv_n(o, 16, a->ob, ob_i64(o, i * a->hd + 16 * c)), l, ""));
    }
}

/* ---- DOT_ROWS rows on the bf16 dot product (the dot form) ----------------------------------- */

/* acc + the pairwise products of 16 pair words with one pair word in every lane (vdpbf16ps: per lane
 * acc + a0·b0 + a1·b1, each product exact in f32, the sums rounded). */
static LLVMValueRef dot(const Ob *o, const Am *a, LLVMValueRef acc, LLVMValueRef words, LLVMValueRef word)
{
    LLVMValueRef args[3] = {acc, LLVMBuildBitCast(o->b, words, a->dot.a, ""),
                            LLVMBuildBitCast(o->b, ob_splat_n(o, word, 16), a->dot.b, "")};
    return LLVMBuildCall2(o->b, a->dot.ty, a->dot.fn, args, 3, "");
}

/* lo and hi (16 f32 each, finite, zero or normal) rounded to bf16, nearest even, as 16 pair words: word
 * k = bf16(lo or hi's 2k) | bf16(their 2k + 1) << 16, lo's in words 0 .. 7 (round_bf16 and
 * store_bf16x32 in one instruction, vcvtne2ps2bf16; it flushes subnormals, which these are not). */
static LLVMValueRef cvt_pairs(const Ob *o, const Am *a, LLVMValueRef lo, LLVMValueRef hi)
{
    LLVMValueRef args[2] = {hi, lo}; /* (its second operand gives the low half) */
    return LLVMBuildBitCast(o->b, LLVMBuildCall2(o->b, a->cvt_ty, a->cvt_fn, args, 2, ""), vi(o, o->ti32, 16), "");
}

/* The tile16 computation for DOT_ROWS rows by vdpbf16ps, with the same roundings (so the same
 * weights): q's pair words broadcast against a K tile's pair rows (a row: one pair of dims of 16
 * keys) give 16 keys' scores a chain, two key tiles × DOT_ROWS rows at once; the rows' scaled, masked
 * scores are kept (the caller runs this only when they fit, cap <= KEEP_CAP); the weights' pair words
 * broadcast against a V pair row (16 dims of two keys) add to DOT_CHUNK output vectors a row, loaded
 * from and stored to a->ob around each step of STEP_SUBS · 32 keys, the 16 key pairs of 32 keys a loop
 * (written out, LLVM's scheduler hoisted their V loads and spilled them). The weights go by
 * vcvtne2ps2bf16 and their exponentials by vscalefps (cvt_pairs, ob_exp_nonpos_avx512): the same
 * values. One core of a Zen 5, T = 512 (OPS_TIMING_AMX=2, README): 16 heads of 96 2.62 -> 2.22 ms,
 * 12 of 64 1.37 -> 1.17, 8 of 128 1.66 -> 1.45 (the loop 8-10 %, the rest 7-8 %). */
static void tile_dot(Ob *o, const Am *a, LLVMValueRef p0, int R)
{
    LLVMValueRef zero16 = LLVMConstNull(vi(o, o->tf32, 16)), n[DOT_ROWS], qi[DOT_ROWS];
    LLVMValueRef ninf = ob_splat_n(o, LLVMConstReal(o->tf32, -INFINITY), 16);
    LLVMValueRef scale = ob_splat_n(o, ob_f32(o, a->scale), 16);
    LLVMValueRef nmax = tile_rows(o, a, p0, R, n, qi);
    LLVMValueRef nsub = LLVMBuildSDiv(o->b, addc(o, nmax, SUB - 1), ob_i64(o, SUB), "");

    ObLoop S; /* pass 1: 32 keys a step, their scaled and masked scores kept; each row's max lanes */
    LLVMValueRef mx[DOT_ROWS];
    for (int i = 0; i < R; i++) mx[i] = ninf;
    ob_loop_begin(o, &S, ob_i64(o, 0), nsub, R, mx);
    LLVMValueRef tile0 = add(o, a->head_tiles, mul(o, S.i, SUB / KT)), base[2], acc[2 * DOT_ROWS];
    for (int u = 0; u < 2; u++) base[u] = mul(o, addc(o, tile0, u), a->hd * KT / 2); /* its first pair word */
    for (int k = 0; k < 2 * R; k++) acc[k] = zero16;
    ObLoop D;
    ob_loop_begin(o, &D, ob_i64(o, 0), ob_i64(o, a->hd / 2), 2 * R, acc);
    LLVMValueRef w[2], nx[2 * DOT_ROWS];
    for (int u = 0; u < 2; u++) w[u] = ld_words(o, a->kt, add(o, base[u], mul(o, D.i, KT)));
    for (int i = 0; i < R; i++) {
        LLVMValueRef qw = ob_ld(o, o->ti32, a->qb, addc(o, D.i, i * a->hd / 2));
        for (int u = 0; u < 2; u++) nx[2 * i + u] = dot(o, a, D.v[2 * i + u], w[u], qw);
    }
    ob_loop_end(o, &D, nx);
    LLVMValueRef j0 = mul(o, S.i, SUB), kept = ob_gep(o, o->tf32, a->kept, mul(o, S.i, R * SUB)), nmx[DOT_ROWS];
    for (int i = 0; i < R; i++) {
        LLVMValueRef left = LLVMBuildNSWSub(o->b, n[i], j0, ""), m = S.v[i];
        for (int u = 0; u < 2; u++) {
            LLVMValueRef sc = LLVMBuildFMul(o->b, D.v[2 * i + u], scale, "");
            sc = LLVMBuildSelect(o->b, lanes_below(o, 16 * u, left), sc, ninf, "");
            ob_stv(o, kept, ob_i64(o, i * SUB + 16 * u), sc);
            m = ob_fmax(o, m, sc);
        }
        nmx[i] = m;
    }
    ob_loop_end(o, &S, nmx);
    LLVMValueRef m[DOT_ROWS], lsum[DOT_ROWS];
    for (int i = 0; i < R; i++) m[i] = ob_splat_n(o, ob_hmax(o, S.v[i]), 16), lsum[i] = zero16;

    ObLoop B; /* pass 2: STEP_SUBS · 32 keys a step, the rows' sums of their weights carried */
    ob_loop_begin(o, &B, ob_i64(o, 0), LLVMBuildSDiv(o->b, addc(o, nsub, STEP_SUBS - 1), ob_i64(o, STEP_SUBS), ""), R,
                  lsum);
    LLVMValueRef sub0 = mul(o, B.i, STEP_SUBS), lnow[DOT_ROWS];
    LLVMValueRef nin = ob_min64(o, ob_i64(o, STEP_SUBS), LLVMBuildNSWSub(o->b, nsub, sub0, ""));
    ObLoop U; /* each 32 keys' weights as pair words; the V of the 32 that hold the rows' last key copied, masked */
    ob_loop_begin(o, &U, ob_i64(o, 0), nin, R, B.v);
    LLVMValueRef sub = add(o, sub0, U.i), jj = mul(o, sub, SUB);
    LLVMValueRef from = ob_gep(o, o->tf32, a->kept, mul(o, sub, R * SUB));
    for (int i = 0; i < R; i++) {
        LLVMValueRef p[2];
        for (int k = 0; k < 2; k++) { /* (s - m <= 0: no upper clamp) */
            LLVMValueRef sv = ob_ldv_n(o, 16, from, ob_i64(o, i * SUB + 16 * k));
            LLVMValueRef e = ob_exp_nonpos_avx512(o, LLVMBuildFSub(o->b, sv, m[i], ""));
            p[k] = LLVMBuildSelect(o->b, LLVMBuildFCmp(o->b, LLVMRealOEQ, sv, ninf, ""), zero16, e, "");
        }
        LLVMValueRef words = cvt_pairs(o, a, p[0], p[1]);
        st_words(o, a->pb, add(o, mul(o, U.i, R * SUB / 2), ob_i64(o, i * SUB / 2)), words);
        lnow[i] = LLVMBuildFAdd(o->b, U.v[i], LLVMBuildFAdd(o->b, even_half(o, words), odd_half(o, words), ""), "");
    }
    LLVMBasicBlockRef join = ob_if_begin(o, LLVMBuildICmp(o->b, LLVMIntSGT, addc(o, jj, SUB), nmax, ""));
    copy_v_tail(o, a, jj, nmax);
    ob_if_end(o, join);
    ob_loop_end(o, &U, lnow);
    /* fewer rows (a GQA decode step's tile of the group's heads): more vectors a row a pass, the same
     * chains, and each V pair row read fewer times (4 heads of 128, a serving batch's step, one thread,
     * ops_timing: 5.45-5.61 -> 4.01-4.27 ms) */
    int chunk = DOT_CHUNK * DOT_ROWS / R;
    for (int64_t c0 = 0; c0 < a->hd / 16; c0 += chunk) { /* O += P · V, chunk vectors a row at a time */
        int nc = a->hd / 16 - c0 < chunk ? (int)(a->hd / 16 - c0) : chunk;
        LLVMValueRef oacc[DOT_ROWS * DOT_CHUNK], onx[DOT_ROWS * DOT_CHUNK];
        for (int i = 0; i < R; i++)
            for (int c = 0; c < nc; c++)
                oacc[i * nc + c] = ob_ldv_n(o, 16, a->ob, ob_i64(o, i * a->hd + 16 * (c0 + c)));
        ObLoop V;
        ob_loop_begin(o, &V, ob_i64(o, 0), nin, R * nc, oacc);
        LLVMValueRef vsrc = v_source(o, a, add(o, sub0, V.i), nmax);
        LLVMValueRef prow = mul(o, V.i, R * SUB / 2);
        ObLoop J; /* key pair J.i: its 16-dim pair rows, each row's weight word */
        ob_loop_begin(o, &J, ob_i64(o, 0), ob_i64(o, SUB / 2), R * nc, V.v);
        for (int k = 0; k < R * nc; k++) onx[k] = J.v[k];
        LLVMValueRef vw[DOT_ROWS * DOT_CHUNK], vrow = mul(o, J.i, a->hd), pj = add(o, prow, J.i);
        for (int c = 0; c < nc; c++) vw[c] = ld_words(o, vsrc, addc(o, vrow, 16 * (c0 + c)));
        for (int i = 0; i < R; i++) {
            LLVMValueRef pw = ob_ld(o, o->ti32, a->pb, addc(o, pj, i * SUB / 2));
            for (int c = 0; c < nc; c++) onx[i * nc + c] = dot(o, a, onx[i * nc + c], vw[c], pw);
        }
        ob_loop_end(o, &J, onx);
        ob_loop_end(o, &V, J.v);
        for (int i = 0; i < R; i++)
            for (int c = 0; c < nc; c++) ob_stv(o, a->ob, ob_i64(o, i * a->hd + 16 * (c0 + c)), V.v[i * nc + c]);
    }
    ob_loop_end(o, &B, U.v);

    for (int i = 0; i < R; i++) {
        LLVMValueRef l = ob_splat_n(o, ob_hsum(o, B.v[i]), 16);
        for (int64_t c = 0; c < a->hd / 16; c++)
            ob_stv(o, a->out, addc(o, qi[i], 16 * c),
                   LLVMBuildFDiv(o->b, ob_ldv_n(o, 16, a->ob, ob_i64(o, i * a->hd + 16 * c)), l, ""));
    }
}

/* ---- one row on FMAs ------------------------------------------------------------------------- */
static void row1(Ob *o, const Am *a, LLVMValueRef pair)
{
    LLVMValueRef t, qi = ops_attention_pair(o, &a->rows, pair, &t), n = addc(o, ob_ldi32(o, a->pos, t), 1);
    LLVMValueRef zero16 = LLVMConstNull(vi(o, o->tf32, 16));
    LLVMValueRef ninf = ob_splat_n(o, LLVMConstReal(o->tf32, -INFINITY), 16);
    for (int64_t c = 0; c < a->hd / 16; c++)
        ob_stv(o, a->qr, ob_i64(o, 16 * c), round_bf16(o, ob_ldv_n(o, 16, a->q, addc(o, qi, 16 * c))));
    LLVMValueRef ntile = LLVMBuildSDiv(o->b, addc(o, n, KT - 1), ob_i64(o, KT), "");

    ObLoop B; /* pass 1: scores of 16 keys a tile, and their max */
    ob_loop_begin(o, &B, ob_i64(o, 0), ntile, 1, &ninf);
    LLVMValueRef base = mul(o, add(o, a->head_tiles, B.i), a->hd * KT / 2), init[2] = {zero16, zero16}; /* words */
    ObLoop D;
    ob_loop_begin(o, &D, ob_i64(o, 0), ob_i64(o, a->hd / 2), 2, init);
    LLVMValueRef at = add(o, base, mul(o, D.i, KT)), w = ld_words(o, a->kt, at), next[2];
    ob_prefetch(o, DT_F32, a->kt, addc(o, at, PF_TILES * a->hd * KT / 2));
    LLVMValueRef qe = ob_splat_n(o, ob_ldf(o, a->qr, mul(o, D.i, 2)), 16);
    LLVMValueRef qo = ob_splat_n(o, ob_ldf(o, a->qr, addc(o, mul(o, D.i, 2), 1)), 16);
    next[0] = ob_fma(o, qe, even_half(o, w), D.v[0]);
    next[1] = ob_fma(o, qo, odd_half(o, w), D.v[1]);
    ob_loop_end(o, &D, next);
    LLVMValueRef s = LLVMBuildFAdd(o->b, D.v[0], D.v[1], "");
    s = LLVMBuildFMul(o->b, s, ob_splat_n(o, ob_f32(o, a->scale), 16), "");
    s = LLVMBuildSelect(o->b, lanes_below(o, 0, LLVMBuildNSWSub(o->b, n, mul(o, B.i, KT), "")), s, ninf, "");
    ob_stv(o, a->sc, mul(o, B.i, KT), s);
    LLVMValueRef mx = ob_fmax(o, s, B.v[0]);
    ob_loop_end(o, &B, &mx);
    LLVMValueRef m = ob_splat_n(o, ob_hmax(o, B.v[0]), 16);

    ObLoop P; /* the weights, in place */
    ob_loop_begin(o, &P, ob_i64(o, 0), ntile, 1, &zero16);
    LLVMValueRef sv = ob_ldv_n(o, 16, a->sc, mul(o, P.i, KT));
    LLVMValueRef p = ob_exp_poly(o, LLVMBuildFSub(o->b, sv, m, ""));
    p = round_bf16(o, LLVMBuildSelect(o->b, LLVMBuildFCmp(o->b, LLVMRealOEQ, sv, ninf, ""), zero16, p, ""));
    ob_stv(o, a->sc, mul(o, P.i, KT), p);
    LLVMValueRef lsum = LLVMBuildFAdd(o->b, P.v[0], p, "");
    ob_loop_end(o, &P, &lsum);
    LLVMValueRef l = ob_splat_n(o, ob_hsum(o, P.v[0]), 16);

    int nacc = (int)(a->hd / 16);
    LLVMValueRef acc[OB_MAX_CARRY], nx[OB_MAX_CARRY];
    for (int c = 0; c < nacc; c++) acc[c] = zero16;
    ObLoop R; /* the values, a pair of keys at a time (a last odd key's partner, maybe unwritten, masked) */
    ob_loop_begin(o, &R, ob_i64(o, 0), LLVMBuildSDiv(o->b, addc(o, n, 1), ob_i64(o, 2), ""), nacc, acc);
    LLVMValueRef pe = ob_splat_n(o, ob_ldf(o, a->sc, mul(o, R.i, 2)), 16);
    LLVMValueRef po = ob_splat_n(o, ob_ldf(o, a->sc, addc(o, mul(o, R.i, 2), 1)), 16);
    LLVMValueRef odd_ok = LLVMBuildICmp(o->b, LLVMIntSLT, addc(o, mul(o, R.i, 2), 1), n, "");
    LLVMValueRef row = mul(o, add(o, a->head_pairs, R.i), a->hd);
    for (int c = 0; c < nacc; c++) {
        LLVMValueRef wv = ld_words(o, a->vc, addc(o, row, 16 * c));
        ob_prefetch(o, DT_F32, a->vc, addc(o, row, 16 * c + PF_PAIRS * a->hd));
        LLVMValueRef vo = LLVMBuildSelect(o->b, odd_ok, odd_half(o, wv), zero16, "");
        nx[c] = ob_fma(o, po, vo, ob_fma(o, pe, even_half(o, wv), R.v[c]));
    }
    ob_loop_end(o, &R, nx);
    for (int c = 0; c < nacc; c++) ob_stv(o, a->out, addc(o, qi, 16 * c), LLVMBuildFDiv(o->b, R.v[c], l, ""));
}

void ops_emit_attention_amx(Ob *o, const CgOpDesc *d)
{
    int64_t hd = d->head_dim, group = d->heads / d->kv_heads;
    MOE_ASSERT(d->amx && o->vw == 16 && hd % 32 == 0 && hd / 16 <= OB_MAX_CARRY);
    LLVMValueRef cap = ob_arg(o, 2), rows; /* pairs */
    Am a = {.q = ob_arg(o, 3), .kt = ob_arg(o, 4), .vc = ob_arg(o, 5), .pos = ob_arg(o, 6), .out = ob_arg(o, 7),
            .rows = ops_attention_rows(o, d, &rows), .heads = d->heads, .hd = hd, .scale = 1.0 / sqrt((double)hd)};
    LLVMValueRef g = LLVMBuildSDiv(o->b, a.rows.h, ob_i64(o, group), "g");
    a.head_tiles = LLVMBuildNSWMul(o->b, g, LLVMBuildSDiv(o->b, cap, ob_i64(o, KT), ""), "head_tiles");
    a.head_pairs = LLVMBuildNSWMul(o->b, g, LLVMBuildSDiv(o->b, cap, ob_i64(o, 2), ""), "head_pairs");
    a.qr = ob_alloca(o, o->tf32, hd);
    a.qb = ob_alloca(o, o->ti16, ROWS * hd);
    a.sb = ob_alloca(o, o->tf32, ROWS * SUB);
    /* the kept scores: 16 rows of cap floats while cap is at most KEEP_CAP */
    a.keep = LLVMBuildICmp(o->b, LLVMIntSLE, cap, ob_i64(o, KEEP_CAP), "keep");
    LLVMValueRef kept_n = LLVMBuildSelect(o->b, a.keep, mul(o, cap, ROWS), ob_i64(o, ROWS * SUB), "");
    a.kept = LLVMBuildArrayAlloca(o->b, o->tf32, kept_n, "kept");
    LLVMSetAlignment(a.kept, 64);
    a.pb = ob_alloca(o, o->ti16, STEP_SUBS * ROWS * SUB);
    a.vt = ob_alloca(o, o->ti32, 16 * hd);
    a.ob = ob_alloca(o, o->tf32, ROWS * hd);
    a.nr = ob_alloca(o, o->ti64, ROWS);
    a.mv = ob_alloca(o, o->tf32, ROWS * 16);
    a.lv = ob_alloca(o, o->tf32, ROWS * 16);
    /* one row's scores: cap floats (a call's positions are below cap), here once, not in a loop */
    a.sc = LLVMBuildArrayAlloca(o->b, o->tf32, cap, "scores");
    LLVMSetAlignment(a.sc, 64);

    int per = d->amx == CG_ATTENTION_DOT ? DOT_ROWS : ROWS; /* rows a tile */
    LLVMValueRef tiles = LLVMBuildSDiv(o->b, rows, ob_i64(o, per), "tiles");
    if (d->amx == CG_ATTENTION_DOT) { /* (its tiles keep their scores: caches past KEEP_CAP run rows alone) */
        a.dot = cg_dot_intrinsic(o->mod);
        a.cvt_fn = ob_intrinsic(o, "llvm.x86.avx512bf16.cvtne2ps2bf16.512", &a.cvt_ty);
        tiles = LLVMBuildSelect(o->b, a.keep, tiles, ob_i64(o, 0), "");
    }
    LLVMBasicBlockRef join = ob_if_begin(o, LLVMBuildICmp(o->b, LLVMIntSGT, tiles, ob_i64(o, 0), ""));
    if (d->amx == CG_ATTENTION_AMX) tile_config(o); /* once a call: its tiles of rows share the configuration */
    ObLoop R;
    ob_loop_begin(o, &R, ob_i64(o, 0), tiles, 0, NULL);
    if (d->amx == CG_ATTENTION_DOT) tile_dot(o, &a, mul(o, R.i, per), DOT_ROWS);
    else tile16(o, &a, mul(o, R.i, ROWS));
    ob_loop_end(o, &R, NULL);
    if (d->amx == CG_ATTENTION_AMX) amx(o, "llvm.x86.tilerelease", NULL, 0);
    ob_if_end(o, join);
    LLVMValueRef done = mul(o, tiles, per);
    if (d->amx == CG_ATTENTION_DOT && a.rows.hpc > 1 && a.rows.hpc < DOT_ROWS) {
        /* fewer pairs than a tile (a decode step's: one position's hpc heads): tiles of the heads */
        LLVMValueRef more = LLVMBuildSDiv(o->b, LLVMBuildNSWSub(o->b, rows, done, ""), ob_i64(o, a.rows.hpc), "");
        more = LLVMBuildSelect(o->b, a.keep, more, ob_i64(o, 0), "");
        ObLoop G;
        ob_loop_begin(o, &G, ob_i64(o, 0), more, 0, NULL);
        tile_dot(o, &a, add(o, done, mul(o, G.i, a.rows.hpc)), (int)a.rows.hpc);
        ob_loop_end(o, &G, NULL);
        done = add(o, done, mul(o, more, a.rows.hpc));
    }
    ObLoop L;
    ob_loop_begin(o, &L, done, rows, 0, NULL);
    row1(o, &a, L.i);
    ob_loop_end(o, &L, NULL);
}
