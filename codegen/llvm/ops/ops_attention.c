/* ops_attention.c — causal GQA attention over a KV cache, streaming (flash-attention style), for a
 * few query rows of one head at a time.
 *
 * A call handles rows t0 .. t0 + rows - 1 of head h, qb rows at once (qb 1, 2 or 4, chosen so that
 * their output accumulators stay in registers; the last rows one at a time). Keys come in blocks of
 * kb = 16·nt (kv_block rounded up to 16, at most 64; 0: 64): per block,
 *   scores  — the K cache lies in tiles of 16 keys × head_dim (cg_attention_kt_index; a kv head's
 *             tiles one run of memory, then the next head's, cap positions each), so one query's
 *             scores of 16 keys are one <16 x float> built by head_dim FMAs of a broadcast q element
 *             with a tile row: no horizontal sum per key, and each tile row loaded once serves qb rows;
 *   softmax — keys past a row's position masked to -inf (probability 0), the running max m and sum l
 *             of each row updated once per block, its accumulator rescaled by e^(m_old - m_new);
 *   values  — each V row (row layout, [head_dim] of kv head g) loaded once and added to the qb
 *             accumulators with the rows' probabilities.
 * On the 16-register ISAs one row's accumulators above head_dim 32 fill the register file, so there
 * the accumulators of qb = 4 rows live on the stack instead: per block each chunk of head_dim (2
 * vectors a row) is loaded, runs the block's keys with every V load serving the 4 rows, and is
 * stored back — a few loads and stores a block against a quarter of the V loads, which come from
 * L2 — and the scores run one 16-key tile a pass over d (8 accumulators). 1.5–2.2× on one AVX2 core.
 * No [T, T] buffer: the block's probabilities (qb·kb floats) and those accumulators (qb·head_dim)
 * are the only scratch, on the stack. The cache holds f32, or a 16-bit model's keys and values as
 * bf16/f16 (kv_dtype), widened as they are loaded: half the bytes every decode step reads; a single
 * query row prefetches the blocks PF_BLOCKS ahead. */
#include "codegen/llvm/ops/ops_build.h"

#include <math.h>

#define KT CG_ATTENTION_KT_KEYS
#define MAX_QB 4 /* query rows a tile */
#define MAX_NT 4 /* 16-key tiles a block */
#define MAX_CHUNK 8 /* accumulator vectors a row in one values pass from the stack */
/* Rows a tile and score tiles a pass over d with the accumulators on the stack. Measured at T = 512 on
 * one AVX2 core (Zen 3, tests/llvm_ops/ops_timing, GFLOP/s; registers, one row: 26–30 at 12 heads of
 * 64, 19–25 at 16 of 96): 2 rows × 2 tiles 38–43 and 34–36, 2 × 1 33–35 and 31–32, 4 × 1 43–45
 * and 42–43, 4 × 2 (spilling scores) 30–37 and 35–36. */
#define STACK_QB 4
/* Key blocks ahead a single query row (a decode step) prefetches the caches: one row uses each byte
 * once, and a head's pass waited on memory. Measured at position 4095 on one AVX2 core (ops_timing,
 * bf16 caches, 16 heads of 96): 1.84 -> 0.85-1.16 ms; f32 within noise. Tiles of 4 rows (prefill)
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
    LLVMValueRef h, g;               /* the query head and its kv head */
    int64_t heads, hd, vwp, nvp;     /* vwp lanes per accumulator vector, nvp = hd / vwp vectors a row */
    int nt;                          /* 16-key tiles a block */
    int chunk;                       /* > 0: accumulators in accm, chunk vectors a row at a time */
    int score_tiles;                 /* > 0: tiles a pass over d in block_scores (else nt) */
    LLVMValueRef accm;               /* [MAX_QB][hd] (chunk > 0) */
    double scale;
} Att;

/* Scores of tile-rows j0/16 .. j0/16 + nt - 1 for qb rows: s[i·nt + u] = Σ_d q_i[d] · kt_tile_u[d][:],
 * a->score_tiles tiles per pass over d (all nt but where qb rows' scores of nt tiles would not fit
 * the registers). */
static void block_scores(Ob *o, const Att *a, int qb, const LLVMValueRef *qi, LLVMValueRef tile0, LLVMValueRef *s)
{
    LLVMValueRef zero = LLVMConstNull(LLVMVectorType(o->tf32, KT)), init[MAX_QB * MAX_NT], next[MAX_QB * MAX_NT];
    int ug = qb > 1 && a->score_tiles > 0 && a->score_tiles < a->nt ? a->score_tiles : a->nt;
    for (int u0 = 0; u0 < a->nt; u0 += ug) {
        int nu = a->nt - u0 < ug ? a->nt - u0 : ug, n = qb * nu;
        for (int k = 0; k < n; k++) init[k] = zero;
        LLVMValueRef base[MAX_NT];
        for (int u = 0; u < nu; u++) /* tile tile0 + u0 + u of kv head g: [hd][16] values */
            base[u] = mul(o, add(o, a->head_tiles, addc(o, tile0, u0 + u)), a->hd * KT);
        ObLoop D;
        ob_loop_begin(o, &D, ob_i64(o, 0), ob_i64(o, a->hd), n, init);
        LLVMValueRef kv[MAX_NT];
        for (int u = 0; u < nu; u++) {
            LLVMValueRef at = add(o, base[u], mul(o, D.i, KT));
            kv[u] = ob_ldvw_n(o, a->kvdt, KT, a->kt, at);
            if (a->pf && qb == 1) ob_prefetch(o, a->kvdt, a->kt, addc(o, at, a->pf * a->nt * a->hd * KT)); /* a later block's */
        }
        for (int i = 0; i < qb; i++) {
            LLVMValueRef qd = ob_splat_n(o, ob_ldf(o, a->q, add(o, qi[i], D.i)), KT);
            for (int u = 0; u < nu; u++) next[i * nu + u] = ob_fma(o, qd, kv[u], D.v[i * nu + u]);
        }
        ob_loop_end(o, &D, next);
        for (int i = 0; i < qb; i++)
            for (int u = 0; u < nu; u++) s[i * a->nt + u0 + u] = D.v[i * nu + u];
    }
}

/* acc[i·nc + c] += Σ over the block's keys of p_i[j] · V[j0 + j][(c0 + c)·vwp ..]: the accumulator
 * vectors c0 .. c0 + nc - 1 of qb rows (in place). */
static void values_pass(Ob *o, const Att *a, int qb, int64_t kb, LLVMValueRef j0, LLVMValueRef keys, int c0, int nc,
                        LLVMValueRef *acc)
{
    ObLoop J;
    ob_loop_begin(o, &J, ob_i64(o, 0), keys, qb * nc, acc);
    LLVMValueRef vrow = mul(o, add(o, a->head_rows, add(o, j0, J.i)), a->hd), nx[OB_MAX_CARRY];
    LLVMValueRef p[MAX_QB];
    for (int i = 0; i < qb; i++) p[i] = ob_splat_n(o, ob_ldf(o, a->ps, add(o, ob_i64(o, i * kb), J.i)), (int)a->vwp);
    if (c0 == 0 && a->pf && qb == 1) /* the same key's row in a later block */
        for (int64_t b = 0; b < a->hd * (int64_t)dtype_size(a->kvdt); b += 64)
            ob_prefetch(o, a->kvdt, a->vc, addc(o, vrow, a->pf * kb * a->hd + b / (int64_t)dtype_size(a->kvdt)));
    for (int c = 0; c < nc; c++) {
        LLVMValueRef v = ob_ldvw_n(o, a->kvdt, (int)a->vwp, a->vc, addc(o, vrow, (c0 + c) * a->vwp));
        for (int i = 0; i < qb; i++) nx[i * nc + c] = ob_fma(o, p[i], v, J.v[i * nc + c]);
    }
    ob_loop_end(o, &J, nx);
    for (int k = 0; k < qb * nc; k++) acc[k] = J.v[k];
}

/* Rows lo .. lo + qb·n_tiles - 1 of the head, qb at a time. */
static void attend_rows(Ob *o, const Att *a, LLVMValueRef lo, LLVMValueRef n_tiles, int qb)
{
    int64_t kb = (int64_t)a->nt * KT;
    bool inmem = a->chunk > 0 && qb > 1; /* the last rows, one at a time, keep theirs in registers */
    int nacc = inmem ? 0 : qb * (int)a->nvp, ncar = 2 * qb + nacc;
    LLVMTypeRef tv16 = LLVMVectorType(o->tf32, KT), tacc = LLVMVectorType(o->tf32, (unsigned)a->vwp);
    ObLoop R;
    ob_loop_begin(o, &R, ob_i64(o, 0), n_tiles, 0, NULL);
    LLVMValueRef t0 = add(o, lo, mul(o, R.i, qb)), n[MAX_QB], qi[MAX_QB], nmax = NULL;
    for (int i = 0; i < qb; i++) {
        LLVMValueRef t = addc(o, t0, i);
        n[i] = addc(o, ob_ldi32(o, a->pos, t), 1); /* keys 0 .. pos[t] */
        qi[i] = mul(o, add(o, mul(o, t, a->heads), a->h), a->hd);
        nmax = nmax ? LLVMBuildSelect(o->b, LLVMBuildICmp(o->b, LLVMIntSGT, n[i], nmax, ""), n[i], nmax, "") : n[i];
    }
    LLVMValueRef init[OB_MAX_CARRY]; /* m[qb], l[qb], acc[qb][nvp] */
    for (int i = 0; i < qb; i++) init[i] = LLVMConstReal(o->tf32, -INFINITY), init[qb + i] = ob_f32(o, 0);
    for (int k = 0; k < nacc; k++) init[2 * qb + k] = LLVMConstNull(tacc);
    for (int k = 0; inmem && k < qb * a->nvp; k++) ob_stv(o, a->accm, ob_i64(o, k * a->vwp), LLVMConstNull(tacc));
    ObLoop B;
    ob_loop_begin(o, &B, ob_i64(o, 0), LLVMBuildSDiv(o->b, addc(o, nmax, kb - 1), ob_i64(o, kb), ""), ncar, init);
    LLVMValueRef j0 = mul(o, B.i, kb), s[MAX_QB * MAX_NT], next[OB_MAX_CARRY];
    block_scores(o, a, qb, qi, mul(o, B.i, a->nt), s);

    LLVMValueRef lane[KT], ninf = ob_splat_n(o, LLVMConstReal(o->tf32, -INFINITY), KT);
    for (int k = 0; k < KT; k++) lane[k] = ob_i32(o, k);
    LLVMValueRef lanes = LLVMConstVector(lane, KT), scale = ob_splat_n(o, ob_f32(o, a->scale), KT);
    for (int i = 0; i < qb; i++) {
        LLVMValueRef valid[MAX_NT], bm = NULL, m_old = B.v[i];
        for (int u = 0; u < a->nt; u++) { /* key j0 + 16u + lane is row i's while below n[i] */
            LLVMValueRef left = LLVMBuildTrunc(o->b, LLVMBuildNSWSub(o->b, n[i], addc(o, j0, KT * u), ""), o->ti32, "");
            valid[u] = LLVMBuildICmp(o->b, LLVMIntSLT, lanes, ob_splat_n(o, left, KT), "");
            LLVMValueRef *su = &s[i * a->nt + u];
            *su = LLVMBuildSelect(o->b, valid[u], LLVMBuildFMul(o->b, *su, scale, ""), ninf, "");
            bm = bm ? ob_fmax(o, *su, bm) : *su;
        }
        LLVMValueRef m_new = ob_fmax(o, ob_hmax(o, bm), m_old);
        /* e^(-inf) ≈ 0 on the first block, when l and acc are still 0; every row has key 0 there */
        LLVMValueRef corr = ob_exp_poly(o, LLVMBuildFSub(o->b, m_old, m_new, ""));
        LLVMValueRef psum = LLVMConstNull(tv16), mv = ob_splat_n(o, m_new, KT);
        for (int u = 0; u < a->nt; u++) {
            LLVMValueRef p = ob_exp_poly(o, LLVMBuildFSub(o->b, s[i * a->nt + u], mv, ""));
            p = LLVMBuildSelect(o->b, valid[u], p, LLVMConstNull(tv16), "p");
            ob_stv(o, a->ps, ob_i64(o, i * kb + KT * u), p);
            psum = LLVMBuildFAdd(o->b, psum, p, "");
        }
        next[i] = m_new;
        next[qb + i] = ob_fma(o, B.v[qb + i], corr, ob_hsum(o, psum));
        LLVMValueRef cv = ob_splat_n(o, corr, (int)a->vwp);
        for (int c = 0; c < a->nvp; c++) {
            if (!inmem) {
                next[2 * qb + i * a->nvp + c] = LLVMBuildFMul(o->b, B.v[2 * qb + i * a->nvp + c], cv, "");
                continue;
            }
            LLVMValueRef at = ob_i64(o, (i * a->nvp + c) * a->vwp);
            ob_stv(o, a->accm, at, LLVMBuildFMul(o->b, ob_ldv_n(o, (int)a->vwp, a->accm, at), cv, ""));
        }
    }

    /* values: keys j0 .. min(j0 + kb, nmax) - 1; rows past their own n add 0 */
    LLVMValueRef keys = ob_min64(o, ob_i64(o, kb), LLVMBuildNSWSub(o->b, nmax, j0, ""));
    if (!inmem) {
        values_pass(o, a, qb, kb, j0, keys, 0, (int)a->nvp, next + 2 * qb);
    } else {
        for (int c0 = 0; c0 < a->nvp; c0 += a->chunk) { /* head_dim a chunk at a time, from and to accm */
            int nc = a->nvp - c0 < a->chunk ? (int)a->nvp - c0 : a->chunk;
            LLVMValueRef acc[MAX_QB * MAX_CHUNK];
            for (int i = 0; i < qb; i++)
                for (int c = 0; c < nc; c++)
                    acc[i * nc + c] = ob_ldv_n(o, (int)a->vwp, a->accm, ob_i64(o, (i * a->nvp + c0 + c) * a->vwp));
            values_pass(o, a, qb, kb, j0, keys, c0, nc, acc);
            for (int i = 0; i < qb; i++)
                for (int c = 0; c < nc; c++)
                    ob_stv(o, a->accm, ob_i64(o, (i * a->nvp + c0 + c) * a->vwp), acc[i * nc + c]);
        }
    }
    ob_loop_end(o, &B, next);

    for (int i = 0; i < qb; i++) {
        LLVMValueRef l = ob_splat_n(o, B.v[qb + i], (int)a->vwp);
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
     * ISAs). Measured at T = 512 on one AVX-512 core (tests/llvm_ops/ops_timing): 4 rows beat 2 by
     * 1.3x at head_dim 96 and 128, though some scores then spill; 8 rows of 64 lost 10 % to 4 */
    int budget = o->vw == 16 ? 32 : 8, qb = 1;
    while (qb * 2 <= MAX_QB && qb * 2 * a.nvp <= budget) qb *= 2;
    if (2 + a.nvp > OB_MAX_CARRY) /* hd = 2 · a large odd number: one <hd x float>, which LLVM splits */
        a.vwp = hd, a.nvp = 1;
    /* 16-register ISAs where one row's accumulators fill the budget (head_dim above 4 vectors): rows
     * in tiles of STACK_QB with their accumulators on the stack, the scores STACK_SCORE_TILES tiles a
     * pass (STACK_QB · that · 2 vectors in registers); see the file comment */
    if (o->vw != 16 && qb == 1 && a.nvp > 1 && a.vwp == o->vw) {
        qb = STACK_QB;
        a.chunk = budget / qb;
        a.score_tiles = STACK_SCORE_TILES;
        a.accm = ob_alloca(o, o->tf32, MAX_QB * hd);
    }
    a.ps = ob_alloca(o, o->tf32, MAX_QB * (int64_t)a.nt * KT);
    LLVMValueRef item0 = ob_arg(o, 0), rows = ob_arg(o, 1);
    LLVMValueRef t0 = LLVMBuildSDiv(o->b, item0, ob_i64(o, d->heads), "t0");
    a.h = LLVMBuildSRem(o->b, item0, ob_i64(o, d->heads), "h");
    a.g = LLVMBuildSDiv(o->b, a.h, ob_i64(o, group), "g");
    LLVMValueRef cap = ob_arg(o, 2);
    a.head_rows = LLVMBuildNSWMul(o->b, a.g, cap, "head_rows");
    a.head_tiles = LLVMBuildNSWMul(o->b, a.g, LLVMBuildSDiv(o->b, cap, ob_i64(o, KT), ""), "head_tiles");
    LLVMValueRef tiles = LLVMBuildSDiv(o->b, rows, ob_i64(o, qb), "tiles");
    attend_rows(o, &a, t0, tiles, qb);
    if (qb > 1) { /* the last rows % qb rows one at a time */
        LLVMValueRef done = mul(o, tiles, qb);
        attend_rows(o, &a, add(o, t0, done), LLVMBuildNSWSub(o->b, rows, done, ""), 1);
    }
}
