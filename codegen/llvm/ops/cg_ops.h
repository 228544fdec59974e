/* cg_ops.h — kernels for the non-GEMM ops of the optimised IR, built as LLVM IR through the LLVM C
 * API and specialised for their compile-time constants (hidden size, heads, eps, theta, expert counts,
 * weight dtype). The GEMMs themselves (linear, grouped up/down, the router's projections) run on the
 * micro-kernels of cg_llvm.h; these kernels do everything around them.
 *
 * In:  an op descriptor (CgOpDesc: kind + constants), an LLVM context and target (cg_internal.h).
 * Out: an LLVM module defining one function named `symbol` with the C signature of its kind below;
 *      cg_ops_build() only builds (not optimised, not compiled): the JIT or object emitter takes it.
 * Conventions: activations are f32 row-major, T rows (the token count, a run-time argument); weights
 *      (embedding table, norm weights, constant-expert vectors) are in `wdtype` (f32/bf16/f16) and
 *      converted to f32 on load; ids and positions are int32; every kernel handles T = 0 as a no-op
 *      and any T >= 1; kernels never allocate and are thread-safe over disjoint rows (`row0`, `rows`
 *      select the rows a call handles, so the executor can split T across threads).
 * Memory: the module belongs to the caller's context.
 */
#ifndef MOEPPC_CG_OPS_H
#define MOEPPC_CG_OPS_H

#include "support/support.h"

/* The two LLVM handles cg_ops_build takes, declared as llvm-c/Types.h declares them, so the
 * LLVM-free runtime (names, symbols, signatures) can include this header without LLVM's. */
typedef struct LLVMOpaqueContext *LLVMContextRef;
typedef struct LLVMOpaqueModule *LLVMModuleRef;

typedef enum {
    CG_OP_EMBED,        /* void f(int64 row0, int64 rows, const int32 *ids, const void *table, float *out)
                         *   out[t, :] = table[ids[t], :], D = cols; ids already checked < vocab      */
    CG_OP_RMS_NORM,     /* void f(int64 row0, int64 rows, const float *x, const void *w, float *out)
                         *   out[t] = w ⊙ x[t] / sqrt(mean(x[t]²) + eps)                              */
    CG_OP_ADD_RMS_NORM, /* void f(int64 row0, int64 rows, const float *a, const float *b, const void *w,
                         *        float *sum, float *out)   sum = a + b; out = rms_norm(sum)           */
    CG_OP_ROPE,         /* void f(int64 row0, int64 rows, const float *x, const int32 *pos, float *out)
                         *   half-split RoPE per head: heads, head_dim, theta (out may alias x)        */
    CG_OP_ATTENTION,    /* void f(int64 item0, int64 rows, int64 cap, const float *q, const void *kt,
                         *        const void *vc, const int32 *pos, float *out)
                         *   kt, vc: the caches (cg_attention_store), of cap positions a head and of
                         *   wdtype (f32, bf16 or f16)
                         *   query rows t0 .. t0 + rows - 1 of heads h .. h + G - 1, where item0 =
                         *   t0·heads + h, G = cg_attention_heads_per_call and h a multiple of G (so a
                         *   decode step's heads spread over threads, a prefill's rows in blocks, and
                         *   the query heads of one kv head share each load of its keys and values);
                         *   q: [T, heads·hd]; vc: the V cache in rows; kt: the K cache in key tiles,
                         *   so that one query's scores of 16 keys are one vector; query t attends to positions 0..pos[t]
                         *   (causal; every position up to the largest pos of a call written), scale
                         *   1/sqrt(hd), GQA (query head h reads kv head h / (heads / kv_heads));
                         *   softmax in f32, streaming (online max/sum, updated every kv_block keys,
                         *   rounded up to 16, at most 64; 0: 64), so no [T, T] buffer is needed; a
                         *   few query rows of the head share each tile of keys and values.
                         *   amx (bf16 caches, head_dim a multiple of 32): the caches in k pairs
                         *   (cg_attention_kt_index) and the IR's amx attention: q rounded to bf16,
                         *   a row's max over all its keys first, its weights rounded to bf16 (and
                         *   summed as rounded), 16 query rows at a time on AMX tiles (amx 1) or 8
                         *   on the bf16 dot product, vdpbf16ps (amx 2: AVX512-BF16 without AMX),
                         *   the rest and decode steps on FMAs over the same pairs                     */
    CG_OP_SWIGLU,       /* void f(int64 row0, int64 rows, const float *a, const float *b, float *out)
                         *   out = silu(a) · b over cols columns                                       */
    CG_OP_ADD,          /* void f(int64 row0, int64 rows, const float *a, const float *b, float *out)  */
    CG_OP_SCALE,        /* void f(int64 row0, int64 rows, const float *x, float *out)   out = s · x     */
    CG_OP_TANH,         /* void f(int64 row0, int64 rows, const float *x, float *out)   out = tanh(x)
                         *   (the two-layer router's hidden layer; added by the lead after the brief) */
    CG_OP_ROUTE_POST,   /* void f(int64 row0, int64 rows, const float *z0, const float *g, float *logits,
                         *        const float *alpha_logits, float *weights, int32 *ids, float *alpha)
                         *   z0: [T, E] router logits (after W2 or the one-layer W); g: [T, E] Wg·r or
                         *   NULL when there is no gating residual; logits = z0 + g (the r carried on);
                         *   then optional logits norm (norm_std > 0, Bessel std), softmax_topk (top-k
                         *   of softmax, ties → lower index, weights of ids in [zero_lo, zero_hi) set to
                         *   0, renormalised, all-zero rows stay 0) or topk_softmax (top-k of z,
                         *   softmax over the k); alpha_logits: [T, 2·n_const] (Wc·u per constant
                         *   expert) or NULL; alpha = pairwise softmax of it                          */
    CG_OP_COMBINE,      /* void f(int64 row0, int64 rows, const float *x, const float *weights,
                         *        const int32 *ids, const float *alpha, const void *const *vc, float *y)
                         *   y[t] = Σ over t's picks: copy ids [copy_lo, copy_hi): w·s·x[t];
                         *   constant ids [const_lo, const_lo + n_const): w·(α0·s·x[t] + α1·v_c) with
                         *   v_c = vc[id - const_lo] (wdtype, D values); y is overwritten            */
    CG_OP_DISPATCH,     /* void f(int64 T, const int32 *ids, const float *weights, int64 *off,
                         *        int32 *perm, float *gate_w)
                         *   stable counting sort of the T·k picks by FFN expert (ids < experts):
                         *   off[experts + 1], slot s of expert e in off[e] .. off[e+1]-1 holds token
                         *   perm[s] = p / k and gate_w[s] = weights[p] for pick p = t·k + j; picks of
                         *   zero-computation experts (ids >= experts) are left out                  */
    CG_OP_COUNT
} cg_op_kind;

typedef struct CgOpDesc {
    cg_op_kind kind;
    moe_dtype  wdtype;            /* weight dtype (embed table, norm weight, constant vectors); ATTENTION:
                                     the KV cache's (kv_dtype; f32 without it) */
    int64_t    cols;              /* D, or the row width of elementwise ops                    */
    double     eps;               /* RMS_NORM, ADD_RMS_NORM                                    */
    int64_t    heads, kv_heads, head_dim;  /* ROPE (heads, head_dim), ATTENTION               */
    int        kv_block;          /* ATTENTION: keys per online-softmax update (0: CG_ATTENTION_KV_BLOCK;
                                   * rounded up to 16, at most 64)                               */
    int        amx;               /* ATTENTION: the amx form and its caches in k pairs (bf16): 0 none,
                                   * CG_ATTENTION_AMX on AMX tiles, CG_ATTENTION_DOT on vdpbf16ps */
    double     theta;             /* ROPE                                                      */
    double     s;                 /* SCALE, COMBINE                                            */
    int64_t    experts, k;        /* ROUTE_POST: E, top_k; DISPATCH: FFN experts, top_k        */
    int        gating;            /* 0 softmax_topk, 1 topk_softmax                             */
    int64_t    zero_lo, zero_hi;  /* ROUTE_POST                                                */
    double     norm_std;          /* ROUTE_POST: 0 = no logits normalisation                    */
    int64_t    n_const, const_lo, copy_lo, copy_hi; /* ROUTE_POST (n_const), COMBINE          */
} CgOpDesc;

/* Attention's KV caches, each a kv head after another, cap = cg_attention_cap(P) positions a head:
 * the K cache in key tiles, the 16 keys of positions 16b .. 16b + 15 of kv head g as [head_dim][16]
 * values, tile b after tile b - 1; the V cache as rows, [cap][head_dim] a head. One head's keys and
 * values are each one run of memory, which a decode step streams (with the heads interleaved by
 * position every 16 keys it jumped pages and waited on memory). The kernel reads a key block's tiles
 * whole, past the last position (and masks them), and a block of kb keys (16 to 64) that holds
 * position P - 1 ends before P - 1 + kb: so cap is P + 63 rounded up to a tile.
 * In k pairs (pairs, the amx form's: AMX tiles multiply bf16 in pairs of their k index) a key tile is
 * [head_dim / 2][16][2] (the dims 2i, 2i + 1 of a key side by side), and the V cache is
 * [cap / 2][head_dim][2] (the values of positions 2r, 2r + 1 side by side): the same sizes. */
enum { CG_ATTENTION_AMX = 1, CG_ATTENTION_DOT = 2 }; /* CgOpDesc.amx, the IR attention's amx attribute */
#define CG_ATTENTION_KT_KEYS 16
#define CG_ATTENTION_KV_BLOCK 64 /* the CPU rule's keys per update (the fastest at T = 512, ops_timing) */
static inline int64_t cg_attention_cap(int64_t positions)
{
    return (positions + 63 + CG_ATTENTION_KT_KEYS - 1) / CG_ATTENTION_KT_KEYS * CG_ATTENTION_KT_KEYS;
}
/* Query heads one attention call takes (G above): the largest divisor of the GQA group heads / kv_heads
 * up to 8, whose rows (each position's G heads, then the next position's) the kernel takes a tile at a
 * time as it takes a head's consecutive rows, so that a decode step reads each kv head's caches once
 * instead of once a query head; 1 on AMX tiles (amx 1: tiles of 16 rows of one head). */
static inline int64_t cg_attention_heads_per_call(const CgOpDesc *d)
{
    int64_t group = d->kv_heads > 0 ? d->heads / d->kv_heads : 1, g = group < 8 ? group : 8;
    if (d->amx == CG_ATTENTION_AMX) return 1;
    while (g > 1 && group % g) g--;
    return g > 1 ? g : 1;
}
/* Elements of each cache (K and V alike) for P positions. */
static inline int64_t cg_attention_cache_elems(int64_t positions, int64_t kv_heads, int64_t head_dim)
{
    return cg_attention_cap(positions) * kv_heads * head_dim;
}
static inline int64_t cg_attention_kt_index(int64_t cap, int64_t head_dim, int64_t p, int64_t g, int64_t d, bool pairs)
{
    int64_t tile = (g * (cap / CG_ATTENTION_KT_KEYS) + p / CG_ATTENTION_KT_KEYS) * head_dim * CG_ATTENTION_KT_KEYS;
    if (pairs) return tile + (d & ~(int64_t)1) * CG_ATTENTION_KT_KEYS + p % CG_ATTENTION_KT_KEYS * 2 + (d & 1);
    return tile + d * CG_ATTENTION_KT_KEYS + p % CG_ATTENTION_KT_KEYS;
}
static inline int64_t cg_attention_v_index(int64_t cap, int64_t head_dim, int64_t p, int64_t g, int64_t d, bool pairs)
{
    if (pairs) return ((g * cap / 2 + p / 2) * head_dim + d) * 2 + p % 2;
    return (g * cap + p) * head_dim + d;
}
/* attention_cache.c (no LLVM needed): n values as type dt (f32, bf16, f16: rounded to nearest even,
 * as f32_to_bf16 and f32_to_f16) at element `at` of a cache. */
void cg_attention_put(void *cache, moe_dtype dt, int64_t at, const float *v, int64_t n);
/* Positions p0 .. p0 + n - 1 of one sequence, their keys and values the rows k + i·ld and v + i·ld
 * ([kv_heads·head_dim] each), into the caches of type dt (pairs: bf16). Every token of a prefill
 * stores through here; a run writes a K tile's rows (a dim of its keys) a dim at a time, each head's
 * values a row at a time. */
void cg_attention_store_run(void *kt, void *vc, moe_dtype dt, int64_t kv_heads, int64_t head_dim, int64_t cap,
                            int64_t p0, int64_t n, const float *k, const float *v, int64_t ld, bool pairs);
/* Position p's keys and values alone. */
static inline void cg_attention_store(void *kt, void *vc, moe_dtype dt, int64_t kv_heads, int64_t head_dim, int64_t cap,
                                      int64_t p, const float *k, const float *v, bool pairs)
{
    cg_attention_store_run(kt, vc, dt, kv_heads, head_dim, cap, p, 1, k, v, 0, pairs);
}

/* ops_desc.c (no LLVM needed): */
const char *cg_op_name(cg_op_kind k);
/* A deterministic symbol for d: kind and every constant that shapes the code (doubles by their
 * bits), e.g. moeppc_op_rms_norm_bf16_c1536_e3eb0c6f7a0b5ed8d_... */
void cg_op_symbol(const CgOpDesc *d, char *out, size_t n);
/* The descriptor of the one kernel that runs IR instruction i (row-wise ops, attention, dispatch, and
 * moe.route's decision: ROUTE_POST); false for what is not one op kernel (linear, the grouped GEMMs,
 * zeros, convert). The CPU and CUDA executors both build their kernels from it. */
struct IrInstr;
bool cg_op_desc_for(const struct IrInstr *i, CgOpDesc *d);
/* Floats per token an executor's router scratch needs, over every moe.route of m: the first layer's
 * output h [8E], z0 [E], the gating residual g [E], u [D] (the CUDA executor's; the CPU's scales the
 * alpha logits instead of x) and the alpha logits [2·Nc]. */
struct IrModule;
size_t cg_route_scratch_floats(const struct IrModule *m);
/* ops.c (LLVM): */
/* Build d as function `symbol` in a new module of ctx for a target with vec_width f32 lanes.
 * NULL with err set if d is inconsistent (an internal error of the caller). */
LLVMModuleRef cg_ops_build(LLVMContextRef ctx, const CgOpDesc *d, int vec_width, const char *symbol,
                           char *err, size_t errlen);

#endif
