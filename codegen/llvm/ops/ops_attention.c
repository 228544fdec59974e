/* ops_attention.c — causal GQA attention over a KV cache, streaming (flash-attention style), for a
 * few query rows at a time.
 *
 * A call handles rows t0 .. t0 + rows - 1 of heads h .. h + G - 1 (G = cg_attention_heads_per_call:
 * with GQA the query heads of one kv head, so that a decode step's tile of them reads the kv head's
 * caches once, not once a head), as G·rows "pairs" (t0 + p / G, h + p % G): a position's G heads,
 * then the next position's. It takes them qb at once (qb 1, 2, 4 or, on AVX-512 up
 * to head_dim 64, 6 chosen so that their output accumulators stay in registers, or the stack form
 * below; a call's last 2 to qb - 1 rows one more tile that overlaps the one before, as below; the
 * last rows one at a time). Keys come in blocks of kb = 16·nt (kv_block rounded up to 16, at most
 * 64; 0: 64): per block,
 *   scores  — the K cache lies in tiles of 16 keys × head_dim (cg_attention_kt_index; a kv head's
 *             tiles one run of memory, then the next head's, cap positions each), so one query's
 *             scores of 16 keys are one <16 x float> built by head_dim FMAs of a broadcast q element
 *             with a tile row: no horizontal sum per key, and each tile row loaded once serves qb rows;
 *   softmax — keys past a row's position masked to -inf (probability 0; in the stack form below, a
 *             block wholly the row's runs a copy without the masks), the running max m and sum l
 *             of each row updated once per block, its accumulator rescaled by e^(m_old - m_new);
 *   values  — each V row (row layout, [head_dim] of kv head g) loaded once and added to the qb
 *             accumulators with the rows' probabilities.
 * On the 16-register ISAs one row's accumulators above head_dim 32 fill the register file, so there
 * the accumulators of qb = 6 rows (AVX2; 4 on SSE) live on the stack instead, with the rows' max and
 * sum: per block the scores run one 16-key tile a pass over d (12 accumulators: 6 rows × 2 vectors)
 * and are stored, a loop over the tiles; the softmax runs as a loop over the rows, each reading its
 * scores back; each chunk of head_dim (2 vectors a row) is loaded, runs the block's keys with every
 * V load serving the 6 rows, and is stored back, a loop over the chunks. Those loops' indices keep
 * LLVM from promoting the stack arrays to registers (which it did when they were unrolled: it spilled
 * them in an order of its own, and interleaved the rows' softmax to hundreds of spills a block), and
 * keep the kernel small. A call's last 2 to qb - 1 rows make one more tile ending at its last row
 * (overlapping the one before), then a last row runs alone, in registers. A causal block's score
 * tiles past every row's keys are skipped. One AVX2 core (Zen 2, ops_timing, T = 512, the rule's key
 * block 64): 12 heads of 64, bf16 caches 42 -> 56 GFLOP/s, f32 37 -> 53; 16 of 96, bf16 40 -> 63,
 * f32 40 -> 61; 8 of 128, bf16 38 -> 66 (of the core's ~107). No [T, T] buffer: the
 * block's scores and probabilities (qb·kb floats) and those accumulators (qb·head_dim) are the only
 * scratch, on the stack. The cache holds f32, or a 16-bit model's keys and values as
 * bf16/f16 (kv_dtype), widened as they are loaded: half the bytes every decode step reads; a single
 * query row prefetches the blocks PF_BLOCKS ahead. */
#include "codegen/llvm/ops/ops_build.h"

#include <math.h>

#define KT CG_ATTENTION_KT_KEYS
#define MAX_QB 6 /* query rows a tile */
#define MAX_NT 4 /* 16-key tiles a block */
#define MAX_CHUNK 8 /* accumulator vectors a row in one values pass from the stack */
/* Rows a tile and score tiles a pass over d with the accumulators on the stack. Measured at T = 512 on
 * one AVX2 core (Zen 3, tests/llvm_ops/ops_timing, GFLOP/s; registers, one row: 26–30 at 12 heads of
 * 64, 19–25 at 16 of 96): 2 rows × 2 tiles 38–43 and 34–36, 2 × 1 33–35 and 31–32, 4 × 1 43–45
 * and 42–43, 4 × 2 (spilling scores) 30–37 and 35–36 (before the state moved to memory). SSE: 4. */
#define STACK_QB 4
/* AVX2: 6 rows, so that the scores (6 rows × 2 vectors of one tile) and the values (6 × 2 vectors a
 * chunk) each run 12 accumulator chains, enough to hide the FMA's latency (8 chains of 5-cycle FMAs
 * fed 2 a cycle wait on it): the GEMMs' 6x16 tile. */
#define STACK_QB_AVX2 6
#define STACK_ACC_AVX2 12
/* Key blocks ahead a single query row (a decode step) prefetches the caches: one row uses each byte
 * once, and a head's pass waited on memory. Measured at position 4095 on one AVX2 core (ops_timing,
 * bf16 caches, 16 heads of 96): 1.84 -> 0.85-1.16 ms; f32 within noise. Tiles of rows (prefill)
 * reuse the block from L2 and do not prefetch. */
#define PF_BLOCKS 2
#define STACK_SCORE_TILES 1

static LLVMValueRef add(const Ob *o, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildNSWAdd(o->b, a, b, ""); }
static LLVMValueRef mul(const Ob *o, LLVMValueRef a, int64_t c) { return LLVMBuildNSWMul(o->b, a, ob_i64(o, c), ""); }
static LLVMValueRef addc(const Ob *o, LLVMValueRef a, int64_t c) { return add(o, a, ob_i64(o, c)); }

typedef struct {
    LLVMValueRef q, kt, vc, pos, out;
    LLVMValueRef head_tiles, head_rows; /* the kv head's first K tile and first V row (cap positions a head) */
    moe_dtype kvdt;                  /* the KV cache's elements (f32, bf16, f16), widened as loaded */
    int pf;                          /* key blocks ahead the caches are prefetched */
    LLVMValueRef ps;                 /* [MAX_QB][kb] the block's probabilities */
    OpsAttRows rows;                 /* the call's rows: pairs of a position and a query head */
    LLVMValueRef g;                  /* their kv head */
    int64_t heads, hd, vwp, nvp;     /* vwp lanes per accumulator vector, nvp = hd / vwp vectors a row */
    int nt;                          /* 16-key tiles a block */
    int chunk;                       /* > 0: accumulators in accm, chunk vectors a row at a time */
    int score_tiles;                 /* > 0: tiles a pass over d in block_scores (else nt) */
    LLVMValueRef accm;               /* [MAX_QB][hd] (chunk > 0) */
    LLVMValueRef ml;                 /* [2][MAX_QB]: the rows' max and sum (chunk > 0) */
    double scale;
} Att;

OpsAttRows ops_attention_rows(const Ob *o, const CgOpDesc *d, LLVMValueRef *pairs)
{
    LLVMValueRef item0 = ob_arg(o, 0);
    OpsAttRows r = {.t0 = LLVMBuildSDiv(o->b, item0, ob_i64(o, d->heads), "t0"),
                    .h = LLVMBuildSRem(o->b, item0, ob_i64(o, d->heads), "h"),
                    .hpc = cg_attention_heads_per_call(d), .heads = d->heads, .hd = d->head_dim};
    *pairs = mul(o, ob_arg(o, 1), r.hpc);
    return r;
}

LLVMValueRef ops_attention_pair(const Ob *o, const OpsAttRows *r, LLVMValueRef p, LLVMValueRef *t)
{
    bool more = r->hpc > 1; /* (p >= 0) */
    *t = add(o, r->t0, more ? LLVMBuildUDiv(o->b, p, ob_i64(o, r->hpc), "") : p);
    LLVMValueRef h = more ? add(o, r->h, LLVMBuildURem(o->b, p, ob_i64(o, r->hpc), "")) : r->h;
    return mul(o, add(o, mul(o, *t, r->heads), h), r->hd);
}

/* One pass over d: the scores of tiles tile0 + u0 .. tile0 + u0 + nu - 1 of kv head g for qb rows,
 * sc[i·nu + u] = Σ_d q_i[d] · kt_tile[d][:] (a tile: [hd][16] values). */
static void score_pass(Ob *o, const Att *a, int qb, const LLVMValueRef *qi, LLVMValueRef tile0, LLVMValueRef u0,
                       int nu, LLVMValueRef *sc)
{
    LLVMValueRef init[MAX_QB * MAX_NT], next[MAX_QB * MAX_NT], base[MAX_NT];
    int n = qb * nu;
    for (int k = 0; k < n; k++) init[k] = LLVMConstNull(LLVMVectorType(o->tf32, KT));
    for (int u = 0; u < nu; u++) base[u] = mul(o, add(o, a->head_tiles, add(o, tile0, addc(o, u0, u))), a->hd * KT);
    ObLoop D;
    ob_loop_begin(o, &D, ob_i64(o, 0), ob_i64(o, a->hd), n, init);
    LLVMValueRef kv[MAX_NT];
    for (int u = 0; u < nu; u++) {
        LLVMValueRef at = add(o, base[u], mul(o, D.i, KT));
        kv[u] = ob_ldvw_n(o, a->kvdt, KT, a->kt, at);
        if (a->pf && qb == 1) /* a later block's */
            ob_prefetch(o, a->kvdt, a->kt, addc(o, at, a->pf * a->nt * a->hd * KT));
    }
    for (int i = 0; i < qb; i++) {
        LLVMValueRef qd = ob_splat_n(o, ob_ldf(o, a->q, add(o, qi[i], D.i)), KT);
        for (int u = 0; u < nu; u++) next[i * nu + u] = ob_fma(o, qd, kv[u], D.v[i * nu + u]);
    }
    ob_loop_end(o, &D, next);
    for (int k = 0; k < n; k++) sc[k] = D.v[k];
}

/* Scores of tile-rows j0/16 .. j0/16 + nt - 1 for qb rows: s[i·nt + u] = Σ_d q_i[d] · kt_tile_u[d][:],
 * all nt tiles in one pass over d; s NULL (the stack form): a->score_tiles tiles a pass (a loop over
 * the passes, up to the tile of key keys - 1: a causal block's tiles past every row's keys are left
 * as they were, which the softmax masks), stored to ps[i·kb + 16u] (the block's scores would not fit
 * the registers between the passes and the softmax, which reads them back a row at a time). */
static void block_scores(Ob *o, const Att *a, int qb, const LLVMValueRef *qi, LLVMValueRef tile0, LLVMValueRef keys,
                         LLVMValueRef *s)
{
    LLVMValueRef sc[MAX_QB * MAX_NT];
    if (s) {
        score_pass(o, a, qb, qi, tile0, ob_i64(o, 0), a->nt, sc);
        for (int k = 0; k < qb * a->nt; k++) s[k] = sc[k];
        return;
    }
    int ug = a->score_tiles; /* divides nt (1) */
    ObLoop G;
    LLVMValueRef passes = LLVMBuildSDiv(o->b, addc(o, keys, KT * ug - 1), ob_i64(o, KT * ug), "");
    ob_loop_begin(o, &G, ob_i64(o, 0), ob_min64(o, ob_i64(o, a->nt / ug), passes), 0, NULL);
    LLVMValueRef u0 = mul(o, G.i, ug);
    score_pass(o, a, qb, qi, tile0, u0, ug, sc);
    for (int i = 0; i < qb; i++)
        for (int u = 0; u < ug; u++) ob_stv(o, a->ps, mul(o, addc(o, u0, (int64_t)i * a->nt + u), KT), sc[i * ug + u]);
    ob_loop_end(o, &G, NULL);
}

/* acc[i·nc + c] += Σ over the block's keys of p_i[j] · V[j0 + j][(c0 + c)·vwp ..]: the accumulator
 * vectors c0 .. c0 + nc - 1 of qb rows (in place). A key's nc V vectors are loaded first, then each
 * row's probability broadcast just before its FMAs: nc + 1 registers beside the accumulators. */
static void values_pass(Ob *o, const Att *a, int qb, int64_t kb, LLVMValueRef j0, LLVMValueRef keys, LLVMValueRef c0,
                        int nc, LLVMValueRef *acc)
{
    ObLoop J;
    ob_loop_begin(o, &J, ob_i64(o, 0), keys, qb * nc, acc);
    LLVMValueRef vrow = mul(o, add(o, a->head_rows, add(o, j0, J.i)), a->hd), nx[OB_MAX_CARRY], v[OB_MAX_CARRY];
    if (a->pf && qb == 1) /* the same key's row in a later block */
        for (int64_t b = 0; b < a->hd * (int64_t)dtype_size(a->kvdt); b += 64)
            ob_prefetch(o, a->kvdt, a->vc, addc(o, vrow, a->pf * kb * a->hd + b / (int64_t)dtype_size(a->kvdt)));
    LLVMValueRef at = add(o, vrow, mul(o, c0, a->vwp));
    for (int c = 0; c < nc; c++) v[c] = ob_ldvw_n(o, a->kvdt, (int)a->vwp, a->vc, addc(o, at, c * a->vwp));
    for (int i = 0; i < qb; i++) {
        LLVMValueRef p = ob_splat_n(o, ob_ldf(o, a->ps, add(o, ob_i64(o, i * kb), J.i)), (int)a->vwp);
        for (int c = 0; c < nc; c++) nx[i * nc + c] = ob_fma(o, p, v[c], J.v[i * nc + c]);
    }
    ob_loop_end(o, &J, nx);
    for (int k = 0; k < qb * nc; k++) acc[k] = J.v[k];
}

/* The stack form's values_pass over accumulator vectors c0 .. c0 + nc - 1, from and to accm. */
static void values_chunk(Ob *o, const Att *a, int qb, int64_t kb, LLVMValueRef j0, LLVMValueRef keys, LLVMValueRef c0,
                         int nc)
{
    LLVMValueRef acc[MAX_QB * MAX_CHUNK], at[MAX_QB];
    for (int i = 0; i < qb; i++) {
        at[i] = mul(o, addc(o, c0, i * a->nvp), a->vwp);
        for (int c = 0; c < nc; c++) acc[i * nc + c] = ob_ldv_n(o, (int)a->vwp, a->accm, addc(o, at[i], c * a->vwp));
    }
    values_pass(o, a, qb, kb, j0, keys, c0, nc, acc);
    for (int i = 0; i < qb; i++)
        for (int c = 0; c < nc; c++) ob_stv(o, a->accm, addc(o, at[i], c * a->vwp), acc[i * nc + c]);
}

/* The online softmax of one row over a block of kb keys from j0: its scores s[0 .. nt - 1] (NULL: read
 * from its ps row), n its keys; stores its probabilities to its ps row (row index ri), returns the
 * new max in *m and sum in *l (from the old ones there) and the factor its accumulators take. The
 * scale goes into the exponent's argument, s · scale - m in one FMA (the max of the raw scores, times
 * the scale, is the max of the scaled ones: the scale is positive), and the arguments are never above
 * 0 but by a rounding (ob_exp_nonpos). full: every key of the block is the row's (j0 + kb <= n), so
 * no lane is masked: the same values as the masked form's, fewer instructions (a quarter of the
 * kernel's time was its softmax on a Zen 3 at head_dim 64, README). */
static LLVMValueRef row_softmax(Ob *o, const Att *a, int64_t kb, LLVMValueRef j0, LLVMValueRef ri, LLVMValueRef n,
                                LLVMValueRef *s, bool full, LLVMValueRef *m, LLVMValueRef *l)
{
    LLVMTypeRef tv16 = LLVMVectorType(o->tf32, KT);
    LLVMValueRef lane[KT], ninf = ob_splat_n(o, LLVMConstReal(o->tf32, -INFINITY), KT), row = mul(o, ri, kb);
    for (int k = 0; k < KT; k++) lane[k] = ob_i32(o, k);
    LLVMValueRef lanes = LLVMConstVector(lane, KT), scale = ob_splat_n(o, ob_f32(o, a->scale), KT);
    LLVMValueRef valid[MAX_NT], sv[MAX_NT], bm = NULL;
    for (int u = 0; u < a->nt; u++) { /* key j0 + 16u + lane is the row's while below n */
        sv[u] = s ? s[u] : ob_ldv_n(o, KT, a->ps, addc(o, row, KT * u));
        if (!full) {
            LLVMValueRef left = LLVMBuildTrunc(o->b, LLVMBuildNSWSub(o->b, n, addc(o, j0, KT * u), ""), o->ti32, "");
            valid[u] = LLVMBuildICmp(o->b, LLVMIntSLT, lanes, ob_splat_n(o, left, KT), "");
            sv[u] = LLVMBuildSelect(o->b, valid[u], sv[u], ninf, "");
        }
        bm = bm ? ob_fmax(o, sv[u], bm) : sv[u];
    }
    LLVMValueRef m_new = ob_fmax(o, LLVMBuildFMul(o->b, ob_hmax(o, bm), ob_f32(o, a->scale), ""), *m);
    /* e^(-inf) ≈ 0 on the first block, when l and acc are still 0; every row has key 0 there */
    LLVMValueRef corr = ob_exp_nonpos(o, LLVMBuildFSub(o->b, *m, m_new, ""));
    LLVMValueRef psum = LLVMConstNull(tv16), nm = ob_splat_n(o, LLVMBuildFNeg(o->b, m_new, ""), KT);
    for (int u = 0; u < a->nt; u++) {
        LLVMValueRef p = ob_exp_nonpos(o, ob_fma(o, sv[u], scale, nm));
        if (!full) p = LLVMBuildSelect(o->b, valid[u], p, LLVMConstNull(tv16), "p");
        ob_stv(o, a->ps, addc(o, row, KT * u), p);
        psum = LLVMBuildFAdd(o->b, psum, p, "");
    }
    *m = m_new;
    *l = ob_fma(o, *l, corr, ob_hsum(o, psum));
    return corr;
}

/* The call's rows (pairs) lo .. lo + qb·n_tiles - 1, qb at a time; a tile starts last rows past lo at
 * the most (when non-NULL): a call's last tile of qb rows may overlap the one before it, whose rows it
 * computes again, to the same values. The stack form (inmem) keeps each row's max, sum and
 * accumulators in memory (ml, accm) and runs the softmax and the values' chunks as loops: their
 * indices keep LLVM from promoting those to registers it does not have (it would spill them, from an
 * order of its own). The last rows, one at a time, keep theirs in registers. */
static void attend_rows(Ob *o, const Att *a, LLVMValueRef lo, LLVMValueRef n_tiles, int qb,
                        LLVMValueRef last)
{
    int64_t kb = (int64_t)a->nt * KT;
    bool inmem = a->chunk > 0 && qb > 1;
    int nacc = inmem ? 0 : qb * (int)a->nvp, ncar = inmem ? 0 : 2 * qb + nacc;
    LLVMTypeRef tacc = LLVMVectorType(o->tf32, (unsigned)a->vwp);
    ObLoop R;
    ob_loop_begin(o, &R, ob_i64(o, 0), n_tiles, 0, NULL);
    LLVMValueRef r0 = mul(o, R.i, qb), p0 = add(o, lo, last ? ob_min64(o, r0, last) : r0), n[MAX_QB], qi[MAX_QB];
    LLVMValueRef nmax = NULL;
    for (int i = 0; i < qb; i++) {
        LLVMValueRef t;
        qi[i] = ops_attention_pair(o, &a->rows, addc(o, p0, i), &t);
        n[i] = addc(o, ob_ldi32(o, a->pos, t), 1); /* keys 0 .. pos[t] */
        nmax = nmax ? LLVMBuildSelect(o->b, LLVMBuildICmp(o->b, LLVMIntSGT, n[i], nmax, ""), n[i], nmax, "") : n[i];
    }
    LLVMValueRef init[OB_MAX_CARRY]; /* registers: m[qb], l[qb], acc[qb][nvp] */
    for (int i = 0; i < qb; i++) {
        init[i] = LLVMConstReal(o->tf32, -INFINITY), init[qb + i] = ob_f32(o, 0);
        if (inmem) ob_stf(o, a->ml, ob_i64(o, i), init[i]), ob_stf(o, a->ml, ob_i64(o, MAX_QB + i), init[qb + i]);
    }
    for (int k = 0; k < nacc; k++) init[2 * qb + k] = LLVMConstNull(tacc);
    for (int k = 0; inmem && k < qb * a->nvp; k++) ob_stv(o, a->accm, ob_i64(o, k * a->vwp), LLVMConstNull(tacc));
    ObLoop B;
    ob_loop_begin(o, &B, ob_i64(o, 0), LLVMBuildSDiv(o->b, addc(o, nmax, kb - 1), ob_i64(o, kb), ""), ncar, init);
    LLVMValueRef j0 = mul(o, B.i, kb), s[MAX_QB * MAX_NT], next[OB_MAX_CARRY];
    /* keys j0 .. min(j0 + kb, nmax) - 1 are some row's; rows past their own n add 0 */
    LLVMValueRef keys = ob_min64(o, ob_i64(o, kb), LLVMBuildNSWSub(o->b, nmax, j0, ""));
    block_scores(o, a, qb, qi, mul(o, B.i, a->nt), keys, inmem ? NULL : s);
    if (!inmem) {
        for (int i = 0; i < qb; i++) {
            next[i] = B.v[i], next[qb + i] = B.v[qb + i];
            LLVMValueRef corr =
                row_softmax(o, a, kb, j0, ob_i64(o, i), n[i], s + i * a->nt, false, &next[i], &next[qb + i]);
            LLVMValueRef cv = ob_splat_n(o, corr, (int)a->vwp);
            for (int c = 0; c < a->nvp; c++)
                next[2 * qb + i * a->nvp + c] = LLVMBuildFMul(o->b, B.v[2 * qb + i * a->nvp + c], cv, "");
        }
    } else {
        ObLoop I;
        ob_loop_begin(o, &I, ob_i64(o, 0), ob_i64(o, qb), 0, NULL);
        LLVMValueRef li = addc(o, I.i, MAX_QB), ti;
        ops_attention_pair(o, &a->rows, add(o, p0, I.i), &ti); /* (its offset unused) */
        LLVMValueRef ni = addc(o, ob_ldi32(o, a->pos, ti), 1);
        LLVMValueRef full = LLVMBuildICmp(o->b, LLVMIntSLE, addc(o, j0, kb), ni, "full");
        for (int f = 0; f < 2; f++) { /* the block whole the row's, else masked: two copies, one runs */
            LLVMBasicBlockRef join = ob_if_begin(o, f ? full : LLVMBuildNot(o->b, full, ""));
            LLVMValueRef m = ob_ldf(o, a->ml, I.i), l = ob_ldf(o, a->ml, li);
            LLVMValueRef cv = ob_splat_n(o, row_softmax(o, a, kb, j0, I.i, ni, NULL, f, &m, &l), (int)a->vwp);
            ob_stf(o, a->ml, I.i, m), ob_stf(o, a->ml, li, l);
            for (int c = 0; c < a->nvp; c++) {
                LLVMValueRef at = mul(o, addc(o, mul(o, I.i, a->nvp), c), a->vwp);
                ob_stv(o, a->accm, at, LLVMBuildFMul(o->b, ob_ldv_n(o, (int)a->vwp, a->accm, at), cv, ""));
            }
            ob_if_end(o, join);
        }
        ob_loop_end(o, &I, NULL);
    }

    if (!inmem) {
        values_pass(o, a, qb, kb, j0, keys, ob_i64(o, 0), (int)a->nvp, next + 2 * qb);
    } else { /* head_dim a chunk at a time, from and to accm (a loop), then what is left of it */
        ObLoop C;
        ob_loop_begin(o, &C, ob_i64(o, 0), ob_i64(o, a->nvp / a->chunk), 0, NULL);
        values_chunk(o, a, qb, kb, j0, keys, mul(o, C.i, a->chunk), a->chunk);
        ob_loop_end(o, &C, NULL);
        if (a->nvp % a->chunk)
            values_chunk(o, a, qb, kb, j0, keys, ob_i64(o, a->nvp - a->nvp % a->chunk), (int)(a->nvp % a->chunk));
    }
    ob_loop_end(o, &B, next);

    for (int i = 0; i < qb; i++) {
        LLVMValueRef l = ob_splat_n(o, inmem ? ob_ldf(o, a->ml, ob_i64(o, MAX_QB + i)) : B.v[qb + i], (int)a->vwp);
        for (int c = 0; c < a->nvp; c++) {
            LLVMValueRef v = inmem ? ob_ldv_n(o, (int)a->vwp, a->accm, ob_i64(o, (i * a->nvp + c) * a->vwp))
                                   : B.v[2 * qb + i * a->nvp + c];
            ob_stv(o, a->out, addc(o, qi[i], c * a->vwp), LLVMBuildFDiv(o->b, v, l, ""));
        }
    }
    ob_loop_end(o, &R, NULL);
}

void ops_emit_attention(Ob *o, const CgOpDesc *d)
{
    int64_t hd = d->head_dim, group = d->heads / d->kv_heads;
    int kb = d->kv_block > 0 ? d->kv_block : CG_ATTENTION_KV_BLOCK;
    Att a = {.q = ob_arg(o, 3), .kt = ob_arg(o, 4), .vc = ob_arg(o, 5), .pos = ob_arg(o, 6), .out = ob_arg(o, 7),
             .kvdt = d->wdtype, .pf = PF_BLOCKS, .heads = d->heads, .hd = hd, .vwp = o->vw,
             .nt = kb >= MAX_NT * KT ? MAX_NT : (kb + KT - 1) / KT, .scale = 1.0 / sqrt((double)hd)};
    while (hd % a.vwp) a.vwp /= 2; /* hd is even */
    a.nvp = hd / a.vwp;
    /* rows a tile: up to 4, with at most 32 accumulator vectors on AVX-512 (8 on the 16-register
     * ISAs), and 6 on AVX-512 where they take at most 24 (head_dim up to 64). Measured at T = 512 on
     * one AVX-512 core (tests/llvm_ops/ops_timing): 4 rows beat 2 by 1.3x at head_dim 96 and 128, though
     * some scores then spill; 8 rows of 64 lost 10 % to 4, 6 rows gained 8 % (each K and V vector
     * loaded, and a 16-bit one widened, for 6 rows' FMAs instead of 4) */
    int budget = o->vw == 16 ? 32 : 8, qb = 1;
    while (qb * 2 <= MAX_QB && qb * 2 * a.nvp <= budget) qb *= 2;
    if (o->vw == 16 && MAX_QB * a.nvp <= 24) qb = MAX_QB;
    if (2 + a.nvp > OB_MAX_CARRY) /* hd = 2 · a large odd number: one <hd x float>, which LLVM splits */
        a.vwp = hd, a.nvp = 1;
    /* 16-register ISAs where one row's accumulators fill the budget (head_dim above 4 vectors): rows
     * in tiles of stack_qb with their accumulators on the stack, the scores STACK_SCORE_TILES tiles a
     * pass (stack_qb · that · 2 vectors in registers) and the values chunk vectors a row (stack_acc
     * accumulators in all); see the file comment */
    int stack_qb = o->vw == 8 ? STACK_QB_AVX2 : STACK_QB, stack_acc = o->vw == 8 ? STACK_ACC_AVX2 : budget;
    bool stack = o->vw != 16 && qb == 1 && a.nvp > 1 && a.vwp == o->vw;
    if (stack) {
        qb = stack_qb;
        a.score_tiles = STACK_SCORE_TILES;
        while (a.nt % a.score_tiles) a.score_tiles--; /* whole passes of the key block's tiles */
        a.accm = ob_alloca(o, o->tf32, MAX_QB * hd);
        a.ml = ob_alloca(o, o->tf32, 2 * MAX_QB);
    }
    a.ps = ob_alloca(o, o->tf32, MAX_QB * (int64_t)a.nt * KT);
    LLVMValueRef rows; /* pairs */
    a.rows = ops_attention_rows(o, d, &rows);
    a.g = LLVMBuildSDiv(o->b, a.rows.h, ob_i64(o, group), "g");
    LLVMValueRef cap = ob_arg(o, 2);
    a.head_rows = LLVMBuildNSWMul(o->b, a.g, cap, "head_rows");
    a.head_tiles = LLVMBuildNSWMul(o->b, a.g, LLVMBuildSDiv(o->b, cap, ob_i64(o, KT), ""), "head_tiles");
    /* tiles of qb rows; 2 to qb - 1 rows left over (of at least qb) make one more, which ends at the
     * last row (the executor's tasks of 16 rows in tiles of 6: 0-5, 6-11, 10-15; a kernel for each tile
     * size took LLVM's O3 as long again); then one row at a time (in registers) */
    LLVMValueRef tiles = LLVMBuildSDiv(o->b, rows, ob_i64(o, qb), "tiles"), done = mul(o, tiles, qb), last = NULL;
    if (qb > 2) {
        LLVMValueRef rest = LLVMBuildNSWSub(o->b, rows, done, "");
        LLVMValueRef more = LLVMBuildAnd(o->b, LLVMBuildICmp(o->b, LLVMIntSGE, rest, ob_i64(o, 2), ""),
                                         LLVMBuildICmp(o->b, LLVMIntSGE, rows, ob_i64(o, qb), ""), "");
        tiles = add(o, tiles, LLVMBuildZExt(o->b, more, o->ti64, ""));
        done = LLVMBuildSelect(o->b, more, rows, done, "");
        last = LLVMBuildNSWSub(o->b, rows, ob_i64(o, qb), "");
    }
    a.chunk = stack ? stack_acc / qb : 0;
    attend_rows(o, &a, ob_i64(o, 0), tiles, qb, last);
    a.chunk = 0;
    if (qb > 1) attend_rows(o, &a, done, LLVMBuildNSWSub(o->b, rows, done, ""), 1, NULL);
}
