/* elide_experts.c — zero-computation experts leave the graph.
 *
 * For each MoE layer whose routing is fused (gate_dense of a moe.route), the expert sum is the chain
 * y_{n+1} = gate_accum(y_n, G, o_n). A zero expert's term (o = zeros) is dropped; copy (o = u) and
 * constant (o = const_mix(u, α, v)) terms become one moe.combine, which computes
 * Σ w·s·x + Σ w·(α0·s·x + α1·v) over each token's own picks only; the FFN terms then accumulate onto
 * it. No per-expert tensor is produced for them and no FLOP is spent on tokens that did not pick them. */
#include "passes/match.h"

#include <stdlib.h>

typedef enum { TERM_FFN, TERM_ZERO, TERM_COPY, TERM_CONST } term_kind;

typedef struct {
    IrInstr *route;
    IrValue *x, *u;
    double s;
    int64_t copy_lo, copy_hi, const_lo, n_const;
    IrValue *vc[64];
    bool ok;
} Terms;

static term_kind classify(const IrInstr *acc, const IrValue *u)
{
    const IrValue *o = acc->in[2];
    if (def_of(o, IR_OP_ZEROS)) return TERM_ZERO;
    if (o == u) return TERM_COPY;
    if (def_of(o, IR_OP_CONST_MIX) && o->def->in[0] == u) return TERM_CONST;
    return TERM_FFN;
}

/* Expert e joins a kind's index range [lo, hi); the ranges of copy and constant experts must be
 * contiguous, as the spec's expert order makes them. */
static void extend(int64_t *lo, int64_t *hi, int64_t e, bool *ok)
{
    if (*lo == *hi) *lo = e, *hi = e;
    if (e != *hi) *ok = false;
    *hi = e + 1;
}

static void gather_terms(IrInstr **acc, int n, Terms *t)
{
    t->ok = true;
    for (int k = 0; k < n; k++) {
        int64_t e = ir_attr_int(acc[k], "expert");
        switch (classify(acc[k], t->u)) {
        case TERM_COPY: extend(&t->copy_lo, &t->copy_hi, e, &t->ok); break;
        case TERM_CONST: {
            int64_t hi = t->const_lo + t->n_const;
            extend(&t->const_lo, &hi, e, &t->ok);
            if (t->n_const < 64) t->vc[t->n_const] = acc[k]->in[2]->def->in[2];
            t->n_const = hi - t->const_lo;
            break;
        }
        default: break;
        }
    }
    /* constant k's α must be the route's columns 2k, 2k+1: fuse-routing ordered them by expert; and
     * moe.combine scales by s > 0, as lowering writes it (IR text may say s = 0: found by fuzzing) */
    t->ok = t->ok && t->n_const <= 64 && t->n_const == ir_attr_int(t->route, "n_const") && t->s > 0;
}

static IrInstr *build_combine(IrModule *m, const Terms *t, IrInstr *before)
{
    IrValue *in[4 + 64];
    int n = 0;
    in[n++] = t->x;
    in[n++] = t->route->out[0];
    in[n++] = t->route->out[1];
    if (t->n_const) {
        in[n++] = t->route->out[3];
        for (int c = 0; c < t->n_const; c++) in[n++] = t->vc[c];
    }
    IrType ty = ir_type_2d(DT_F32, IR_DIM_T, t->x->type.dims[1]);
    const char *name = match_name(m, t->route->out[0]->name, "zc");
    IrInstr *c = ir_instr_append(m, IR_OP_MOE_COMBINE, in, n, &ty, &name, 1);
    ir_attr_set_float(m, c, "s", t->s);
    ir_attr_set_int(m, c, "const_lo", t->const_lo);
    ir_attr_set_int(m, c, "n_const", t->n_const);
    ir_attr_set_int(m, c, "copy_lo", t->copy_lo);
    ir_attr_set_int(m, c, "copy_hi", t->copy_hi);
    ir_instr_move_before(m, c, before);
    return c;
}

/* The FFN terms accumulate onto the combine's output; every other term's result is forwarded. */
static void rethread(IrModule *m, IrInstr **acc, int n, const Terms *t, IrValue *cur)
{
    for (int k = 0; k < n; k++) {
        if (classify(acc[k], t->u) == TERM_FFN) {
            acc[k]->in[0] = cur;
            cur = acc[k]->out[0];
        } else {
            ir_replace_uses(m, acc[k]->out[0], cur);
            ir_instr_remove(m, acc[k]);
        }
    }
}

static void elide_layer(IrModule *m, IrInstr *gate)
{
    IrInstr *route = def_of(gate->in[1], IR_OP_MOE_ROUTE);
    if (!route || gate->in[0] != route->out[0]) return;
    Terms t = {.route = route, .x = route->in[0], .u = route->in[0], .s = 1.0};
    IrInstr **acc;
    int n = match_accums(m, gate->out[0], &acc);
    for (int k = 0; k < n; k++) { /* u = s·x, the input every expert sees: a copy's term or a constant's input */
        IrValue *o = acc[k]->in[2];
        IrValue *cand = def_of(o, IR_OP_CONST_MIX) ? o->def->in[0] : o;
        IrInstr *sc = def_of(cand, IR_OP_SCALE);
        if (sc && sc->in[0] == t.x) t.u = cand, t.s = ir_attr_float(sc, "s");
    }
    gather_terms(acc, n, &t);
    bool any_zc = false;
    for (int k = 0; k < n; k++) any_zc |= classify(acc[k], t.u) != TERM_FFN;
    if (n && any_zc && t.ok && def_of(acc[0]->in[0], IR_OP_ZEROS))
        rethread(m, acc, n, &t, build_combine(m, &t, acc[0])->out[0]);
    free(acc);
}

bool pass_elide_experts(IrModule *m, const PassOptions *o)
{
    for (IrInstr *i = m->first; i; i = i->next)
        if (i->op == IR_OP_GATE_DENSE) elide_layer(m, i);
    return pass_dce(m, o);
}
