/* ops_attention.c — causal GQA attention over a KV cache, streaming (flash-attention style): keys
 * come in blocks of B (the desc's kv_block, a tuning knob; 16 by default); a block's scores go to a
 * small stack buffer, the running max m and sum l of the query/head are updated once per block (the
 * accumulator rescaled by e^(m_old - m_new)), and the block's values are added with weights
 * e^(s - m_new). No [T, T] buffer; memory per call is B + head_dim floats of stack. The kernel walks
 * (query, head) items, so the executor can spread one decode step's heads over its threads. The
 * head_dim loops use explicit <vw x float> vectors. */
#include "codegen/llvm/ops/ops_build.h"

#include <math.h>

static LLVMValueRef add(const Ob *o, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWAdd(o->b, a, b, ""); }
static LLVMValueRef mul(const Ob *o, LLVMValueRef a, int64_t c) { return LLVMBuildNSWMul(o->b, a, ob_i64(o, c), ""); }

/* y[0..n) = a · x[xi..xi+n) + c · y[0..n) (y a stack buffer; n compile-time): vectors, then the
 * scalar tail. With c = NULL: y = a·x + y; with x = NULL: y = c · y. */
static void axpby(Ob *o, LLVMValueRef y, LLVMValueRef a, LLVMValueRef x, LLVMValueRef xi, LLVMValueRef c, int64_t n)
{
    int64_t nv = n / o->vw;
    for (int vec = 1; vec >= 0; vec--) {
        int64_t lo = vec ? 0 : nv * o->vw, hi = vec ? nv : n;
        if (lo >= hi) continue;
        ObLoop L;
        ob_loop_begin(o, &L, ob_i64(o, lo), ob_i64(o, hi), 0, NULL);
        LLVMValueRef i = vec ? mul(o, L.i, o->vw) : L.i;
        LLVMValueRef yv;
        if (c && LLVMIsConstant(c) && LLVMIsNull(c)) { /* y = 0: never read the (uninitialised) buffer */
            yv = vec ? LLVMConstNull(o->tvf) : c;
        } else {
            yv = vec ? ob_ldv(o, y, i) : ob_ldf(o, y, i);
            if (c) yv = LLVMBuildFMul(o->b, yv, vec ? ob_splat(o, c) : c, "");
        }
        if (x) {
            LLVMValueRef xv = vec ? ob_ldv(o, x, add(o, xi, i)) : ob_ldf(o, x, add(o, xi, i));
            yv = ob_fma(o, vec ? ob_splat(o, a) : a, xv, yv);
        }
        if (vec) ob_stv(o, y, i, yv);
        else ob_stf(o, y, i, yv);
        ob_loop_end(o, &L, NULL);
    }
}

typedef struct {
    LLVMValueRef q, kc, vc, sc, acc; /* sc: [BLOCK] scores; acc: [hd] output accumulator */
    LLVMValueRef qi, kvi;            /* q row offset of this query/head; offset of its kv head in a row */
    int64_t hd, kv_stride, block;
    double scale;
} Att;

/* Scores of keys j0 .. j0+nb-1 into sc; returns their max (as the interpreter: s > m ? s : m). */
static LLVMValueRef block_scores(Ob *o, const Att *a, LLVMValueRef j0, LLVMValueRef nb)
{
    LLVMValueRef ninf = LLVMConstReal(o->tf32, -INFINITY);
    ObLoop L;
    ob_loop_begin(o, &L, ob_i64(o, 0), nb, 1, &ninf);
    LLVMValueRef ki = add(o, mul(o, add(o, j0, L.i), a->kv_stride), a->kvi);
    LLVMValueRef s = ob_dot(o, a->q, a->qi, a->kc, ki, a->hd);
    s = LLVMBuildFMul(o->b, s, ob_f32(o, a->scale), "s");
    ob_stf(o, a->sc, L.i, s);
    LLVMValueRef m = ob_fmax(o, s, L.v[0]);
    ob_loop_end(o, &L, &m);
    return L.v[0];
}

/* acc += Σ_j e^(sc[j] - m) · v_j over the block; returns l + Σ e^(sc[j] - m). */
static LLVMValueRef block_values(Ob *o, const Att *a, LLVMValueRef j0, LLVMValueRef nb, LLVMValueRef m,
                                 LLVMValueRef l)
{
    ObLoop L;
    ob_loop_begin(o, &L, ob_i64(o, 0), nb, 1, &l);
    LLVMValueRef p = ob_exp_poly(o, LLVMBuildFSub(o->b, ob_ldf(o, a->sc, L.i), m, ""));
    LLVMValueRef vi = add(o, mul(o, add(o, j0, L.i), a->kv_stride), a->kvi);
    axpby(o, a->acc, p, a->vc, vi, NULL, a->hd);
    LLVMValueRef l2 = LLVMBuildFAdd(o->b, L.v[0], p, "");
    ob_loop_end(o, &L, &l2);
    return L.v[0];
}

/* One query row t, one head: stream over keys 0 .. n-1 (n = pos[t] + 1), write out. */
static void attend(Ob *o, Att *a, LLVMValueRef n, LLVMValueRef out)
{
    LLVMValueRef zero = ob_f32(o, 0), init[2] = {LLVMConstReal(o->tf32, -INFINITY), zero};
    axpby(o, a->acc, NULL, NULL, NULL, zero, a->hd);  /* acc = 0 */
    LLVMValueRef n_blocks = LLVMBuildSDiv(o->b, add(o, n, ob_i64(o, a->block - 1)), ob_i64(o, a->block), "");
    ObLoop B;
    ob_loop_begin(o, &B, ob_i64(o, 0), n_blocks, 2, init);
    LLVMValueRef j0 = mul(o, B.i, a->block);
    LLVMValueRef nb = ob_min64(o, ob_i64(o, a->block), LLVMBuildNSWSub(o->b, n, j0, ""));
    LLVMValueRef m_new = ob_fmax(o, block_scores(o, a, j0, nb), B.v[0]);
    /* e^(-inf) = 0 on the first block, when acc and l are still 0 */
    LLVMValueRef corr = ob_exp_poly(o, LLVMBuildFSub(o->b, B.v[0], m_new, ""));
    axpby(o, a->acc, NULL, NULL, NULL, corr, a->hd);
    LLVMValueRef l = block_values(o, a, j0, nb, m_new, LLVMBuildFMul(o->b, B.v[1], corr, ""));
    LLVMValueRef next[2] = {m_new, l};
    ob_loop_end(o, &B, next);
    ObLoop D;
    ob_loop_begin(o, &D, ob_i64(o, 0), ob_i64(o, a->hd), 0, NULL);
    ob_stf(o, out, add(o, a->qi, D.i), LLVMBuildFDiv(o->b, ob_ldf(o, a->acc, D.i), B.v[1], ""));
    ob_loop_end(o, &D, NULL);
}

void ops_emit_attention(Ob *o, const CgOpDesc *d)
{
    int64_t hd = d->head_dim, group = d->heads / d->kv_heads;
    Att a = {.q = ob_arg(o, 2), .kc = ob_arg(o, 3), .vc = ob_arg(o, 4), .hd = hd, .kv_stride = d->kv_heads * hd,
             .block = d->kv_block > 0 ? d->kv_block : 16, .scale = 1.0 / sqrt((double)hd)};
    LLVMValueRef pos = ob_arg(o, 5), out = ob_arg(o, 6);
    a.sc = ob_alloca(o, o->tf32, a.block);
    a.acc = ob_alloca(o, o->tf32, hd);
    ObLoop it; /* items item0 .. item0 + items - 1: t = item / heads, h = item % heads */
    ob_rows_begin(o, &it);
    LLVMValueRef t = LLVMBuildSDiv(o->b, it.i, ob_i64(o, d->heads), "t");
    LLVMValueRef h = LLVMBuildSRem(o->b, it.i, ob_i64(o, d->heads), "h");
    LLVMValueRef n = add(o, ob_ldi32(o, pos, t), ob_i64(o, 1));
    a.qi = mul(o, it.i, hd); /* t·heads·hd + h·hd */
    a.kvi = mul(o, LLVMBuildSDiv(o->b, h, ob_i64(o, group), "kvh"), hd);
    attend(o, &a, n, out);
    ob_loop_end(o, &it, NULL);
}
