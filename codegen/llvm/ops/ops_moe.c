/* ops_moe.c — the routing kernels around the grouped GEMMs: route_post (logits → gate weights, ids,
 * α), combine (the copy and constant experts' contribution) and dispatch (picks grouped by FFN
 * expert). Each follows eval_moe.c step by step, so decisions (top-k, ties, zero masking) are the
 * interpreter's exactly and the weights agree to a few ulps. */
#include "codegen/llvm/ops/ops_build.h"

#include <math.h>

static LLVMValueRef add(const Ob *o, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWAdd(o->b, a, b, ""); }
static LLVMValueRef mul(const Ob *o, LLVMValueRef a, int64_t c) { return LLVMBuildNSWMul(o->b, a, ob_i64(o, c), ""); }
/* &p[t·n] as an i8* (so it mixes with the untyped arguments in selects) */
static LLVMValueRef row_ptr(const Ob *o, LLVMValueRef p, LLVMValueRef t, int64_t n)
{
    return LLVMBuildPointerCast(o->b, ob_gep(o, o->tf32, p, mul(o, t, n)), o->tptr, "");
}
static LLVMValueRef in_range(const Ob *o, LLVMValueRef e, int64_t lo, int64_t hi)
{
    LLVMValueRef ge = LLVMBuildICmp(o->b, LLVMIntSGE, e, ob_i64(o, lo), "");
    return LLVMBuildAnd(o->b, ge, LLVMBuildICmp(o->b, LLVMIntSLT, e, ob_i64(o, hi), ""), "");
}

/* dst[e] = z0[e] (+ g[e] when g is not NULL), into both logits and the working copy z. */
static void route_logits(Ob *o, const CgOpDesc *d, LLVMValueRef z0, LLVMValueRef g, LLVMValueRef logits,
                         LLVMValueRef z)
{
    LLVMValueRef has_g = LLVMBuildIsNotNull(o->b, g, "has_g");
    for (int pass = 0; pass < 2; pass++) {
        LLVMBasicBlockRef join = pass ? ob_if_begin(o, has_g) : NULL;
        ObLoop e;
        ob_loop_begin(o, &e, ob_i64(o, 0), ob_i64(o, d->experts), 0, NULL);
        LLVMValueRef v = ob_ldf(o, z0, e.i);
        if (pass) v = LLVMBuildFAdd(o->b, v, ob_ldf(o, g, e.i), "");
        ob_stf(o, logits, e.i, v);
        ob_stf(o, z, e.i, v);
        ob_loop_end(o, &e, NULL);
        if (pass) ob_if_end(o, join);
    }
}

/* z / (std(z) / target), std with Bessel's correction; rows with zero spread unchanged. */
static void logits_norm(Ob *o, LLVMValueRef z, int64_t n, double target)
{
    LLVMValueRef zero = ob_f32(o, 0);
    ObLoop e;
    ob_loop_begin(o, &e, ob_i64(o, 0), ob_i64(o, n), 1, &zero);
    LLVMValueRef s = LLVMBuildFAdd(o->b, e.v[0], ob_ldf(o, z, e.i), "");
    ob_loop_end(o, &e, &s);
    LLVMValueRef mean = LLVMBuildFDiv(o->b, e.v[0], ob_f32(o, (double)n), "mean");
    ob_loop_begin(o, &e, ob_i64(o, 0), ob_i64(o, n), 1, &zero);
    LLVMValueRef dv = LLVMBuildFSub(o->b, ob_ldf(o, z, e.i), mean, "");
    LLVMValueRef var = ob_fma(o, dv, dv, e.v[0]);
    ob_loop_end(o, &e, &var);
    if (n < 2) return; /* sd = 0: nothing to do */
    LLVMValueRef v = LLVMBuildFDiv(o->b, e.v[0], ob_f32(o, (double)(n - 1)), "");
    LLVMValueRef sd = ob_intr(o, "llvm.sqrt", o->tf32, &v, 1);
    LLVMBasicBlockRef join = ob_if_begin(o, LLVMBuildFCmp(o->b, LLVMRealOGT, sd, zero, ""));
    LLVMValueRef div = LLVMBuildFDiv(o->b, sd, ob_f32(o, target), "");
    ob_loop_begin(o, &e, ob_i64(o, 0), ob_i64(o, n), 0, NULL);
    ob_stf(o, z, e.i, LLVMBuildFDiv(o->b, ob_ldf(o, z, e.i), div, ""));
    ob_loop_end(o, &e, NULL);
    ob_if_end(o, join);
}

/* Top-k of src[0..E) by k scans; strict '>' keeps the lower index on ties. taken: i8[E] scratch. */
static void topk(Ob *o, LLVMValueRef src, int64_t E, int64_t k, LLVMValueRef taken, LLVMValueRef vals,
                 LLVMValueRef ids)
{
    ObLoop e, j;
    ob_loop_begin(o, &e, ob_i64(o, 0), ob_i64(o, E), 0, NULL);
    ob_st(o, o->ti8, taken, e.i, LLVMConstInt(o->ti8, 0, 0));
    ob_loop_end(o, &e, NULL);
    ob_loop_begin(o, &j, ob_i64(o, 0), ob_i64(o, k), 0, NULL);
    LLVMValueRef init[2] = {ob_i64(o, -1), ob_f32(o, 0)};
    ob_loop_begin(o, &e, ob_i64(o, 0), ob_i64(o, E), 2, init);
    LLVMValueRef v = ob_ldf(o, src, e.i);
    LLVMValueRef free_ = LLVMBuildICmp(o->b, LLVMIntEQ, ob_ld(o, o->ti8, taken, e.i), LLVMConstInt(o->ti8, 0, 0), "");
    LLVMValueRef first = LLVMBuildICmp(o->b, LLVMIntSLT, e.v[0], ob_i64(o, 0), "");
    LLVMValueRef gt = LLVMBuildFCmp(o->b, LLVMRealOGT, v, e.v[1], "");
    LLVMValueRef better = LLVMBuildAnd(o->b, free_, LLVMBuildOr(o->b, first, gt, ""), "");
    LLVMValueRef next[2] = {LLVMBuildSelect(o->b, better, e.i, e.v[0], ""),
                            LLVMBuildSelect(o->b, better, v, e.v[1], "")};
    ob_loop_end(o, &e, next);
    ob_st(o, o->ti8, taken, e.v[0], LLVMConstInt(o->ti8, 1, 0));
    ob_stf(o, vals, j.i, e.v[1]);
    ob_st(o, o->ti32, ids, j.i, LLVMBuildTrunc(o->b, e.v[0], o->ti32, ""));
    ob_loop_end(o, &j, NULL);
}

/* softmax_topk's tail: zero the picks of zero experts, then w / Σw (an all-zero row stays 0). */
static void mask_renorm(Ob *o, const CgOpDesc *d, LLVMValueRef w, LLVMValueRef ids)
{
    LLVMValueRef zero = ob_f32(o, 0);
    ObLoop j;
    ob_loop_begin(o, &j, ob_i64(o, 0), ob_i64(o, d->k), 1, &zero);
    LLVMValueRef is_zero = in_range(o, ob_ldi32(o, ids, j.i), d->zero_lo, d->zero_hi);
    LLVMValueRef v = LLVMBuildSelect(o->b, is_zero, zero, ob_ldf(o, w, j.i), "");
    ob_stf(o, w, j.i, v);
    LLVMValueRef sum = LLVMBuildFAdd(o->b, j.v[0], v, "");
    ob_loop_end(o, &j, &sum);
    LLVMValueRef total = j.v[0], nz = LLVMBuildFCmp(o->b, LLVMRealUNE, total, zero, "");
    ob_loop_begin(o, &j, ob_i64(o, 0), ob_i64(o, d->k), 0, NULL);
    LLVMValueRef q = LLVMBuildFDiv(o->b, ob_ldf(o, w, j.i), total, "");
    ob_stf(o, w, j.i, LLVMBuildSelect(o->b, nz, q, zero, ""));
    ob_loop_end(o, &j, NULL);
}

/* α pairs: alpha[2c..2c+1] = softmax(alpha_logits[2c..2c+1]) for each constant expert c. */
static void route_alpha(Ob *o, const CgOpDesc *d, LLVMValueRef al, LLVMValueRef alpha, LLVMValueRef t)
{
    LLVMBasicBlockRef join = ob_if_begin(o, LLVMBuildIsNotNull(o->b, al, ""));
    int64_t n = 2 * d->n_const;
    LLVMValueRef src = row_ptr(o, al, t, n), dst = row_ptr(o, alpha, t, n);
    ObLoop c;
    ob_loop_begin(o, &c, ob_i64(o, 0), ob_i64(o, n), 0, NULL);
    ob_stf(o, dst, c.i, ob_ldf(o, src, c.i));
    ob_loop_end(o, &c, NULL);
    for (int64_t k = 0; k < d->n_const; k++) ob_softmax(o, ob_gep(o, o->tf32, dst, ob_i64(o, 2 * k)), 2);
    ob_if_end(o, join);
}

void ops_emit_route_post(Ob *o, const CgOpDesc *d)
{
    int64_t E = d->experts, k = d->k;
    LLVMValueRef z = ob_alloca(o, o->tf32, E), p = ob_alloca(o, o->tf32, E), taken = ob_alloca(o, o->ti8, E);
    ObLoop t;
    ob_rows_begin(o, &t);
    LLVMValueRef w = row_ptr(o, ob_arg(o, 6), t.i, k), ids = ob_gep(o, o->ti32, ob_arg(o, 7), mul(o, t.i, k));
    LLVMValueRef g = ob_arg(o, 3), g_row = LLVMBuildSelect(o->b, LLVMBuildIsNotNull(o->b, g, ""),
                                                            row_ptr(o, g, t.i, E), g, "");
    route_logits(o, d, row_ptr(o, ob_arg(o, 2), t.i, E), g_row, row_ptr(o, ob_arg(o, 4), t.i, E), z);
    if (d->norm_std > 0) logits_norm(o, z, E, d->norm_std);
    if (d->gating == 0) {
        ObLoop e;
        ob_loop_begin(o, &e, ob_i64(o, 0), ob_i64(o, E), 0, NULL);
        ob_stf(o, p, e.i, ob_ldf(o, z, e.i));
        ob_loop_end(o, &e, NULL);
        ob_softmax(o, p, E);
        topk(o, p, E, k, taken, w, ids);
        mask_renorm(o, d, w, ids);
    } else {
        topk(o, z, E, k, taken, w, ids);
        ob_softmax(o, w, k);
    }
    if (d->n_const > 0) route_alpha(o, d, ob_arg(o, 5), ob_arg(o, 8), t.i);
    ob_loop_end(o, &t, NULL);
}

/* The next pick of a token in expert order (the order the interpreter adds them): the lowest id
 * not yet done, lower pick index on equal ids. Returns the pick index j (i64); *id gets its id. */
static LLVMValueRef next_pick(Ob *o, LLVMValueRef ids, LLVMValueRef done, int64_t k, LLVMValueRef *id)
{
    LLVMValueRef init[2] = {ob_i64(o, -1), ob_i64(o, 0)};
    ObLoop q;
    ob_loop_begin(o, &q, ob_i64(o, 0), ob_i64(o, k), 2, init);
    LLVMValueRef e = ob_ldi32(o, ids, q.i);
    LLVMValueRef bit = LLVMBuildShl(o->b, ob_i64(o, 1), q.i, "");
    LLVMValueRef open = LLVMBuildICmp(o->b, LLVMIntEQ, LLVMBuildAnd(o->b, done, bit, ""), ob_i64(o, 0), "");
    LLVMValueRef first = LLVMBuildICmp(o->b, LLVMIntSLT, q.v[0], ob_i64(o, 0), "");
    LLVMValueRef lower = LLVMBuildICmp(o->b, LLVMIntSLT, e, q.v[1], "");
    LLVMValueRef take = LLVMBuildAnd(o->b, open, LLVMBuildOr(o->b, first, lower, ""), "");
    LLVMValueRef next[2] = {LLVMBuildSelect(o->b, take, q.i, q.v[0], ""), LLVMBuildSelect(o->b, take, e, q.v[1], "")};
    ob_loop_end(o, &q, next);
    *id = q.v[1];
    return q.v[0];
}

typedef struct {
    LLVMValueRef x, y, alpha, vc; /* x, y: this token's rows; alpha: its [2·n_const] row */
} CombineRow;

/* u = s · x[d] rounded to f32 first, as the interpreter's scaled input. */
static LLVMValueRef scaled(Ob *o, const CgOpDesc *d, LLVMValueRef x, LLVMValueRef i)
{
    LLVMValueRef v = ob_ldf(o, x, i);
    return d->s == 1.0 ? v : LLVMBuildFMul(o->b, ob_f32(o, d->s), v, "u");
}

/* y += w · (α0·u + α1·v_c) for constant expert c = e - const_lo (o rounded as the interpreter). */
static void combine_const(Ob *o, const CgOpDesc *d, const CombineRow *r, LLVMValueRef e, LLVMValueRef w)
{
    LLVMValueRef c = LLVMBuildNSWSub(o->b, e, ob_i64(o, d->const_lo), "c");
    LLVMValueRef a0 = ob_ldf(o, r->alpha, mul(o, c, 2)), a1 = ob_ldf(o, r->alpha, add(o, mul(o, c, 2), ob_i64(o, 1)));
    LLVMValueRef v = ob_ld(o, o->tptr, r->vc, c);
    ObLoop L;
    ob_loop_begin(o, &L, ob_i64(o, 0), ob_i64(o, d->cols), 0, NULL);
    LLVMValueRef m0 = LLVMBuildFMul(o->b, a0, scaled(o, d, r->x, L.i), "");
    LLVMValueRef m1 = LLVMBuildFMul(o->b, a1, ob_ldw(o, d->wdtype, v, L.i), "");
    LLVMValueRef out = LLVMBuildFAdd(o->b, m0, m1, "");
    ob_stf(o, r->y, L.i, ob_fma(o, w, out, ob_ldf(o, r->y, L.i)));
    ob_loop_end(o, &L, NULL);
}

static void combine_copy(Ob *o, const CgOpDesc *d, const CombineRow *r, LLVMValueRef w)
{
    ObLoop L;
    ob_loop_begin(o, &L, ob_i64(o, 0), ob_i64(o, d->cols), 0, NULL);
    ob_stf(o, r->y, L.i, ob_fma(o, w, scaled(o, d, r->x, L.i), ob_ldf(o, r->y, L.i)));
    ob_loop_end(o, &L, NULL);
}

void ops_emit_combine(Ob *o, const CgOpDesc *d)
{
    int64_t D = d->cols, k = d->k;
    ObLoop t, c, n;
    ob_rows_begin(o, &t);
    CombineRow r = {row_ptr(o, ob_arg(o, 2), t.i, D), row_ptr(o, ob_arg(o, 7), t.i, D),
                    row_ptr(o, ob_arg(o, 5), t.i, 2 * d->n_const), ob_arg(o, 6)};
    LLVMValueRef w = row_ptr(o, ob_arg(o, 3), t.i, k), ids = ob_gep(o, o->ti32, ob_arg(o, 4), mul(o, t.i, k));
    ob_loop_begin(o, &c, ob_i64(o, 0), ob_i64(o, D), 0, NULL);
    ob_stf(o, r.y, c.i, ob_f32(o, 0));
    ob_loop_end(o, &c, NULL);
    LLVMValueRef done0 = ob_i64(o, 0);
    ob_loop_begin(o, &n, ob_i64(o, 0), ob_i64(o, k), 1, &done0);
    LLVMValueRef e, j = next_pick(o, ids, n.v[0], k, &e);
    LLVMValueRef wj = ob_ldf(o, w, j);
    if (d->copy_lo < d->copy_hi) {
        LLVMBasicBlockRef join = ob_if_begin(o, in_range(o, e, d->copy_lo, d->copy_hi));
        combine_copy(o, d, &r, wj);
        ob_if_end(o, join);
    }
    if (d->n_const > 0) {
        LLVMBasicBlockRef join = ob_if_begin(o, in_range(o, e, d->const_lo, d->const_lo + d->n_const));
        combine_const(o, d, &r, e, wj);
        ob_if_end(o, join);
    }
    LLVMValueRef done = LLVMBuildOr(o->b, n.v[0], LLVMBuildShl(o->b, ob_i64(o, 1), j, ""), "");
    ob_loop_end(o, &n, &done);
    ob_loop_end(o, &t, NULL);
}

/* Stable counting sort: count per expert into off[e+1], prefix-sum, then place each pick at
 * off[e] + fill[e]++ in pick order (fill: i64[experts] on the stack). */
void ops_emit_dispatch(Ob *o, const CgOpDesc *d)
{
    int64_t E = d->experts;
    LLVMValueRef ids = ob_arg(o, 1), weights = ob_arg(o, 2), off = ob_arg(o, 3), perm = ob_arg(o, 4);
    LLVMValueRef gate_w = ob_arg(o, 5), n = mul(o, ob_arg(o, 0), d->k), fill = ob_alloca(o, o->ti64, E);
    ObLoop L;
    ob_loop_begin(o, &L, ob_i64(o, 0), ob_i64(o, E + 1), 0, NULL);
    ob_st(o, o->ti64, off, L.i, ob_i64(o, 0));
    ob_loop_end(o, &L, NULL);
    ob_loop_begin(o, &L, ob_i64(o, 0), ob_i64(o, E), 0, NULL);
    ob_st(o, o->ti64, fill, L.i, ob_i64(o, 0));
    ob_loop_end(o, &L, NULL);
    for (int place = 0; place < 2; place++) {
        ob_loop_begin(o, &L, ob_i64(o, 0), n, 0, NULL);
        LLVMValueRef e = ob_ldi32(o, ids, L.i);
        LLVMBasicBlockRef join = ob_if_begin(o, in_range(o, e, 0, E));
        if (!place) {
            LLVMValueRef at = add(o, e, ob_i64(o, 1));
            ob_st(o, o->ti64, off, at, add(o, ob_ld(o, o->ti64, off, at), ob_i64(o, 1)));
        } else {
            LLVMValueRef f = ob_ld(o, o->ti64, fill, e), s = add(o, ob_ld(o, o->ti64, off, e), f);
            ob_st(o, o->ti64, fill, e, add(o, f, ob_i64(o, 1)));
            LLVMValueRef tok = LLVMBuildSDiv(o->b, L.i, ob_i64(o, d->k), "");
            ob_st(o, o->ti32, perm, s, LLVMBuildTrunc(o->b, tok, o->ti32, ""));
            ob_stf(o, gate_w, s, ob_ldf(o, weights, L.i));
        }
        ob_if_end(o, join);
        ob_loop_end(o, &L, NULL);
        if (place) break;
        ob_loop_begin(o, &L, ob_i64(o, 0), ob_i64(o, E), 0, NULL); /* prefix sums */
        LLVMValueRef at = add(o, L.i, ob_i64(o, 1));
        ob_st(o, o->ti64, off, at, add(o, ob_ld(o, o->ti64, off, at), ob_ld(o, o->ti64, off, L.i)));
        ob_loop_end(o, &L, NULL);
    }
}
