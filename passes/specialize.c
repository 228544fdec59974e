/* specialize.c — per-target decisions recorded on the ops.
 *
 * Every linear, router and grouped GEMM gets a tile configuration (tile_m × tile_n register/CTA tile,
 * tile_k depth of a K block; on the CPU also tile_unroll, the micro-kernel's k unroll, and tile_mc,
 * rows per M block) and where it came from (tile_src = "rule" or "database"); on the CPU each
 * attention gets its key block (kv_block) the same way, on a GPU the database's kernel form (tile_m
 * queries a block, tile_n threads a query, kv_block keys a tile; codegen/cuda's CgCudaAttnForm). A
 * tuned op also carries tile_schedule, the database's measurements per token bucket, from which the
 * executor picks per call (schedule.c).
 * Shapes are already compile-time constants in the types. And the residual add feeding an RMSNorm
 * becomes one add_rms_norm, which writes the sum and its normalisation in one pass over the row. */
#include "passes/passes.h"
#include "passes/schedule.h"

#include <stdlib.h>
#include <string.h>

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* The rule: on the CPU the ISA's register tile — AVX-512's 8×48 (24 accumulators, measured at 88–95 %
 * of the FMA peak, shared/PERFORMANCE.md), AVX2's 6×16 (12 of 16 ymm) as PassOptions.cpu_tile_m/n
 * say —, narrower when N is small, and K in one pass (tile_k = K:
 * on the 7B expert shapes one pass measured 83 % of peak against 79 % with K blocked at 256, since a
 * panel's packed A rows stay in L2 either way). On NVIDIA GPUs the CUDA executor's own default
 * block tile, so that --print-ir says what runs: the grouped GEMMs of 16-bit weights on the cp.async
 * form (cg_cuda_gemm_async: 128×64×32 up, 128×128×32 down), other tensor-core GEMMs 64×64×32 or
 * 64×128×32 for a down-projection of 128 columns or more (cg_cuda_gemm_default), f32 weights 64×64×16.
 * (Kernels for sm_90 on an sm_90 GPU run the TMA form's two tiles instead, by T: cuda_tma_rule and
 * cg_cuda_gemm_tma; the pass knows neither the GPU nor T.) */
static void tile_rule(const PassOptions *o, bool grouped, bool down, moe_dtype dt, int64_t N, int64_t K,
                      int64_t tile[3])
{
    if (o->target == TARGET_CPU) {
        int64_t nr = o->cpu_tile_n > 0 ? o->cpu_tile_n : 48, vec = o->cpu_vec > 0 ? o->cpu_vec : 16;
        tile[0] = o->cpu_tile_m > 0 ? o->cpu_tile_m : 8;
        tile[1] = min64(nr, round_up(N, vec));
        /* past one panel, a narrower width (down to half) where the last panel would otherwise be more
         * than an eighth of N in padding: the 7B router's W1 of 160 outputs in four panels of 48 (a
         * fifth of its multiply-adds on zeros) measured 1.07 ms at T = 512 (Zen 5, two threads), in
         * five of 32 (none) 0.88 ms */
        int64_t pad = round_up(N, nr) - N;
        for (int64_t w = nr - vec; N > nr && pad > N / 8 && w >= nr / 2 && w >= vec; w -= vec)
            if (round_up(N, w) - N < pad) tile[1] = w, pad = round_up(N, w) - N;
        tile[2] = K;
    } else if (grouped && dt != DT_F32 && K % 8 == 0 && N % 8 == 0) {
        tile[0] = 128, tile[1] = down ? 128 : 64, tile[2] = 32;
    } else {
        tile[0] = 64;
        tile[1] = down && N >= 128 && dt != DT_F32 ? 128 : 64;
        tile[2] = dt == DT_F32 ? 16 : 32;
    }
}

/* The tuning database's entries for this op's shape and activations, one per token bucket measured. */
static int db_entries(const TuneDb *db, const char *kind, moe_dtype dt, bool act_bf16, bool amx, int64_t n,
                      int64_t k, int64_t groups, const TuneEntry **out)
{
    int found = 0;
    for (int j = 0; db && j < db->n && found < TILE_MAX_BUCKETS; j++) {
        const TuneEntry *e = &db->e[j];
        if (strcmp(e->op, kind) == 0 && e->dtype == dt && e->act_bf16 == act_bf16 && e->amx == amx && e->n == n &&
            e->k == k && e->groups == groups)
            out[found++] = e;
    }
    return found;
}

/* Of the entries found, the one whose bucket is nearest 512 tokens: its best fixes what cannot vary
 * per call (on a GPU; on the CPU a GEMM's panel width, which the packing of the weights depends on,
 * is the one that loses least over all buckets, tile_schedule_width, at its best here). */
static const TuneEntry *representative(const TuneEntry **found, int n)
{
    const TuneEntry *rep = n ? found[0] : NULL;
    for (int k = 1; k < n; k++)
        if (llabs(found[k]->tokens - 512) < llabs(rep->tokens - 512)) rep = found[k];
    return rep;
}

static const char *gemm_kind(const IrInstr *i)
{
    switch (i->op) {
    case IR_OP_LINEAR: return "linear";
    case IR_OP_MOE_ROUTE: return "route";
    case IR_OP_MOE_GROUPED_UP: return "grouped_up";
    default: return "grouped_down";
    }
}

static void set_tiles(IrModule *m, IrInstr *i, const PassOptions *o)
{
    int64_t tile[3];
    bool up = i->op == IR_OP_MOE_GROUPED_UP, grouped = up || i->op == IR_OP_MOE_GROUPED_DOWN;
    const IrValue *w = i->in[i->op == IR_OP_MOE_GROUPED_DOWN ? 5 : up ? 3 : 1]; /* route: its first matrix */
    int64_t N = w->type.dims[0], K = w->type.dims[1];
    /* up: the tile covers a and b columns of the same rows */
    tile_rule(o, grouped, i->op == IR_OP_MOE_GROUPED_DOWN, w->type.dtype, up ? N / 2 : N, K, tile);
    if (i->op == IR_OP_MOE_ROUTE && o->target != TARGET_CPU) /* the GPU router: f32 math, FMA tiles (1xN: fused) */
        tile[0] = 64, tile[1] = 64, tile[2] = 16;
    /* bf16 weights on a CPU that gains from the bf16 dot product: activations rounded to bf16 (SEMANTICS
     * §4 holds bf16 activations; the rest of the executor keeps them in f32); never the router's */
    bool act = o->target == TARGET_CPU && (o->bf16_dot || o->amx) && i->op != IR_OP_MOE_ROUTE &&
               w->type.dtype == DT_BF16;
    bool amx = act && o->amx; /* AMX tiles: 32 x 32 (two A and two B tiles, four accumulators) */
    if (act) ir_attr_set_int(m, i, "act_bf16", 1);
    if (amx) {
        ir_attr_set_int(m, i, "amx", 1);
        tile[0] = 32, tile[1] = 32;
    }
    const TuneEntry *found[TILE_MAX_BUCKETS];
    /* the database is the target's (the caller checked): a CPU one, or a GPU one with grouped entries;
     * an AMX op takes only entries measured on AMX tiles (`act: amx`) */
    int n = db_entries(o->tuning, gemm_kind(i), w->type.dtype, act, amx, N, K, grouped ? ir_attr_int(i, "experts") : 1,
                       found);
    const TuneEntry *rep = representative(found, n);
    TuneConfig rule = {.tile_m = (int)tile[0], .tile_n = (int)tile[1]}, c = rep && !rep->best.mlp ? rep->best : rule;
    if (rep && o->target == TARGET_CPU) tile_schedule_width(found, n, rep, &rule, &c); /* else rep's best */
    ir_attr_set_int(m, i, "tile_m", c.tile_m);
    ir_attr_set_int(m, i, "tile_n", c.tile_n);
    ir_attr_set_int(m, i, "tile_k", c.kc ? c.kc : tile[2]);
    if (o->target == TARGET_CPU) { /* the rule's values said, not left implicit */
        ir_attr_set_int(m, i, "tile_unroll", c.unroll ? c.unroll : amx ? 1 : 4);
        ir_attr_set_int(m, i, "tile_mc", c.mc ? c.mc : round_up(256, c.tile_m));
    }
    ir_attr_set_str(m, i, "tile_src", rep ? "database" : "rule");
    if (rep) /* per token count; the GPU's grouped GEMMs take any tile width (T <= 16 runs the GEMV) */
        ir_attr_set_str(m, i, "tile_schedule",
                        tile_schedule_format(found, n, o->target == TARGET_CPU ? c.tile_n : TILE_SCHED_GPU, &m->arena));
}

/* Attention's key block on the CPU: 64 by the rule, else the database's. On a GPU its kernel's form
 * near 512 tokens: the database's (its entries keyed by the model's dtype, tune_attention_dtype:
 * 16-bit models have a tensor-core form, tile_n 16 with tc), else the CUDA executor's rule decides per
 * T (codegen/cuda, cg_cuda_attention_rule; tile_src "rule", no form recorded). */
static void set_kv_block(IrModule *m, IrInstr *i, const PassOptions *o)
{
    bool gpu = o->target != TARGET_CPU;
    int64_t H = ir_attr_int(i, "heads"), hd = i->in[0]->type.dims[1] / H;
    const TuneEntry *found[TILE_MAX_BUCKETS];
    int n = db_entries(o->tuning, "attention", gpu ? tune_attention_dtype(i) : DT_F32, false, false, H, hd,
                       ir_attr_int(i, "kv_heads"), found);
    const TuneEntry *rep = representative(found, n);
    TuneConfig c = rep ? rep->best : (TuneConfig){.kv_block = gpu ? 16 : TUNE_CPU_ATTENTION_KV_BLOCK};
    if (gpu && rep) {
        ir_attr_set_int(m, i, "tile_m", c.tile_m);
        ir_attr_set_int(m, i, "tile_n", c.tile_n);
    }
    ir_attr_set_int(m, i, "kv_block", c.kv_block ? c.kv_block : hd <= 128 ? 32 : 16);
    /* on AMX hosts, bf16 caches and head_dim a multiple of 32 (its tiles' k block): the AMX form,
     * whose q and weights are bf16 (eval_attention; the kv_block is the FMA form's); the same form on
     * the bf16 dot product where the GEMMs take it (amx 2: twice the FMAs' rate on a Zen 4 or 5) */
    const IrAttr *kvd = ir_attr_get(i, "kv_dtype");
    bool bf16_cache = kvd ? !strcmp(kvd->s, "bf16") : i->in[1]->type.dtype == DT_BF16; /* (widened or not) */
    if (!gpu && (o->amx || o->bf16_dot) && bf16_cache && hd % 32 == 0) ir_attr_set_int(m, i, "amx", o->amx ? 1 : 2);
    ir_attr_set_str(m, i, "tile_src", rep ? "database" : "rule");
    if (rep) ir_attr_set_str(m, i, "tile_schedule", tile_schedule_format(found, n, gpu ? TILE_SCHED_GPU : 0, &m->arena));
}

/* h = add(a, b) whose result an rms_norm reads → (h, hn) = add_rms_norm(a, b, w). */
static IrInstr *fuse_add_norm(IrModule *m, IrInstr *add)
{
    IrInstr *norm = NULL;
    for (IrInstr *j = add->next; j && !norm; j = j->next)
        if (j->op == IR_OP_RMS_NORM && j->in[0] == add->out[0]) norm = j;
    if (!norm) return NULL;
    IrValue *in[3] = {add->in[0], add->in[1], norm->in[1]};
    IrType t[2] = {add->out[0]->type, norm->out[0]->type};
    const char *names[2] = {add->out[0]->name, norm->out[0]->name};
    IrInstr *f = ir_instr_append(m, IR_OP_ADD_RMS_NORM, in, 3, t, names, 2);
    ir_attr_set_float(m, f, "eps", ir_attr_float(norm, "eps"));
    ir_instr_move_before(m, f, add);
    ir_replace_uses(m, add->out[0], f->out[0]);
    ir_replace_uses(m, norm->out[0], f->out[1]);
    ir_instr_remove(m, add);
    ir_instr_remove(m, norm);
    return f;
}

bool pass_specialize(IrModule *m, const PassOptions *o)
{
    for (IrInstr *i = m->first, *next; i; i = next) {
        next = i->next;
        if (i->op == IR_OP_ADD) {
            IrInstr *f = fuse_add_norm(m, i);
            if (f) next = f->next; /* the norm that followed may be gone */
        } else if (i->op == IR_OP_LINEAR || i->op == IR_OP_MOE_GROUPED_UP || i->op == IR_OP_MOE_GROUPED_DOWN ||
                   i->op == IR_OP_MOE_ROUTE) {
            set_tiles(m, i, o);
        } else if (i->op == IR_OP_ATTENTION) {
            set_kv_block(m, i, o);
        }
    }
    ir_module_compact(m);
    return true;
}
