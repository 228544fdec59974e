/* fuse_routing.c — the router chain of each MoE layer becomes one moe.route op.
 *
 * Anchored at each gate_dense(w, ids), the pass walks back through what lowering writes:
 *   softmax_topk:  w = renorm([mask_experts](topk(softmax(z')).values))
 *   topk_softmax:  w = softmax(topk(z').values)
 *   z' = [logits_norm](z),  z = z0 [+ convert(linear(convert(r), Wg))],
 *   z0 = linear(tanh(linear(convert(x), W1)), W2)  or  linear(convert(x), W)
 * and the constant experts' α = softmax(linear(u, Wc)) found through the gate_accum chain. Anything
 * that does not match is left alone. The route's logits replace z (the next layer's gating residual
 * input), its α columns replace each constant expert's α. */
#include "passes/match.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    IrInstr *gate, *topk;
    IrInstr *chain[8];       /* the ops the route replaces: topk, softmax, mask, renorm, logits_norm */
    int n_chain;
    IrValue *x, *w1, *w2, *r, *wg, *z_resid;
    int router_layers, gating;
    int64_t zero_lo, zero_hi;
    double norm_std, s;
    int n_const;
    IrInstr *const_mix[64];  /* by constant expert, in expert order */
    IrValue *wc[64];
} Route;

static void chain_add(Route *R, IrInstr *i) { R->chain[R->n_chain++] = i; }

/* w → gating mode, zero-mask range and the scores topk ran on (before softmax for softmax_topk). */
static IrValue *match_gating(Route *R, IrValue *w)
{
    IrInstr *sm = def_of(w, IR_OP_SOFTMAX), *rn = def_of(w, IR_OP_RENORM);
    if (sm && sm->in[0] == R->topk->out[0]) {
        R->gating = 1;
        chain_add(R, sm);
        return R->topk->in[0];
    }
    if (!rn) return NULL;
    IrInstr *mk = def_of(rn->in[0], IR_OP_MASK_EXPERTS);
    if (mk && mk->in[0] == R->topk->out[0] && mk->in[1] == R->topk->out[1]) {
        R->zero_lo = ir_attr_int(mk, "lo");
        R->zero_hi = ir_attr_int(mk, "hi");
        chain_add(R, mk);
    } else if (rn->in[0] != R->topk->out[0]) {
        return NULL;
    }
    IrInstr *p = def_of(R->topk->in[0], IR_OP_SOFTMAX);
    R->gating = 0;
    chain_add(R, rn);
    if (p) chain_add(R, p);
    return p ? p->in[0] : NULL;
}

/* z0 [+ Wg·r]: fills the router weights and the residual; false if the shape is not the router's. */
static bool match_logits(Route *R, IrValue *z)
{
    IrInstr *add = def_of(z, IR_OP_ADD);
    R->z_resid = z;
    if (add) {
        IrInstr *g = def_of(strip_convert(add->in[1]), IR_OP_LINEAR);
        if (!g) return false;
        R->r = strip_convert(g->in[0]);
        R->wg = g->in[1];
        if (R->r->type.dtype != DT_F32) return false;
        z = add->in[0];
    }
    IrInstr *l2 = def_of(z, IR_OP_LINEAR);
    if (!l2 || l2->in[1]->kind != IR_VAL_PARAM) return false;
    IrInstr *th = def_of(l2->in[0], IR_OP_TANH), *l1 = th ? def_of(th->in[0], IR_OP_LINEAR) : NULL;
    if (l1) {
        R->router_layers = 2;
        R->w1 = l1->in[1];
        R->w2 = l2->in[1];
        R->x = strip_convert(l1->in[0]);
    } else {
        R->router_layers = 1;
        R->w1 = l2->in[1];
        R->x = strip_convert(l2->in[0]);
    }
    return true;
}

/* Constant experts: gate_accum(y, G, const_mix(u, softmax(linear(u, Wc)), v)) with u = [scale](x). */
static bool match_constants(const IrModule *m, Route *R)
{
    IrInstr **acc;
    int n = match_accums(m, R->gate->out[0], &acc);
    R->s = 1.0;
    for (int k = 0; k < n; k++) {
        IrInstr *cm = def_of(acc[k]->in[2], IR_OP_CONST_MIX);
        IrInstr *sm = cm ? def_of(cm->in[1], IR_OP_SOFTMAX) : NULL;
        IrInstr *lin = sm ? def_of(sm->in[0], IR_OP_LINEAR) : NULL;
        if (!lin || lin->in[0] != cm->in[0] || R->n_const == 64) continue;
        IrInstr *sc = def_of(cm->in[0], IR_OP_SCALE);
        if ((sc ? sc->in[0] : cm->in[0]) != R->x) continue;
        R->s = sc ? ir_attr_float(sc, "s") : 1.0;
        R->const_mix[R->n_const] = cm;
        R->wc[R->n_const++] = lin->in[1];
    }
    free(acc);
    return true;
}

static bool in_chain(const Route *R, const IrInstr *i)
{
    for (int k = 0; k < R->n_chain; k++)
        if (R->chain[k] == i) return true;
    return false;
}

/* The replaced ops must all die. The route stands where the gate does and takes over the weights,
 * the ids and the logits z: other readers may take those, after the gate; nothing else of the
 * chain may be read elsewhere (a kept op would read the route's logits before they exist), and
 * each constant expert's mix must come after the gate to read the route's α. Lowering always writes
 * it so; IR text may not (found by fuzzing). */
static bool chain_is_private(const IrModule *m, const Route *R)
{
    bool after_gate = false;
    for (const IrInstr *i = m->first; i; i = i->next) {
        after_gate |= i == R->gate;
        if (i == R->gate || in_chain(R, i)) continue;
        for (int k = 0; k < i->n_in; k++) {
            const IrValue *v = i->in[k];
            bool replaced = v == R->gate->in[0] || v == R->topk->out[1] || v == R->z_resid;
            if ((replaced && !after_gate) || (!replaced && v->kind == IR_VAL_RESULT && in_chain(R, v->def)))
                return false;
        }
        for (int c = 0; c < R->n_const; c++)
            if (i == R->const_mix[c] && !after_gate) return false;
    }
    for (int k = 0; k < m->n_outputs; k++) {
        const IrValue *v = m->outputs[k].value;
        if (v->kind == IR_VAL_RESULT && in_chain(R, v->def) && v != R->gate->in[0] && v != R->topk->out[1])
            return false;
    }
    return true;
}

/* What moe.route can say (its verifier's rule) and lowering always writes: zero experts within the
 * E experts, at most E constant ones, a positive input scale, residual logits of width E. IR text may
 * say otherwise (found by fuzzing); such a layer is left unfused. */
static bool route_expressible(const Route *R)
{
    int64_t E = R->z_resid->type.dims[1];
    return R->zero_hi <= E && R->n_const <= E && R->s > 0 && (!R->r || R->r->type.dims[1] == E);
}

static bool match_route(const IrModule *m, IrInstr *gate, Route *R)
{
    memset(R, 0, sizeof *R);
    R->gate = gate;
    R->topk = def_of(gate->in[1], IR_OP_TOPK);
    if (!R->topk || gate->in[0]->kind != IR_VAL_RESULT) return false;
    chain_add(R, R->topk);
    IrValue *z = match_gating(R, gate->in[0]);
    if (!z) return false;
    IrInstr *nm = def_of(z, IR_OP_LOGITS_NORM);
    if (nm) {
        R->norm_std = ir_attr_float(nm, "std");
        z = nm->in[0];
        chain_add(R, nm);
    }
    return match_logits(R, z) && match_constants(m, R) && route_expressible(R) && chain_is_private(m, R);
}

static IrInstr *build_route(IrModule *m, const Route *R)
{
    IrValue *in[2 + 1 + 2 + 64];
    int n = 0;
    in[n++] = R->x;
    in[n++] = R->w1;
    if (R->router_layers == 2) in[n++] = R->w2;
    if (R->r) in[n++] = R->r, in[n++] = R->wg;
    for (int c = 0; c < R->n_const; c++) in[n++] = R->wc[c];
    int64_t E = R->z_resid->type.dims[1], k = R->topk->out[1]->type.dims[1];
    IrType t[4] = {ir_type_2d(DT_F32, IR_DIM_T, k), ir_type_2d(DT_I32, IR_DIM_T, k), ir_type_2d(DT_F32, IR_DIM_T, E),
                   ir_type_2d(DT_F32, IR_DIM_T, 2 * R->n_const)};
    const char *like = R->topk->out[1]->name;
    const char *names[4] = {match_name(m, like, "route.weights"), match_name(m, like, "route.ids"),
                            match_name(m, like, "route.logits"), match_name(m, like, "route.alpha")};
    IrInstr *r = ir_instr_append(m, IR_OP_MOE_ROUTE, in, n, t, names, R->n_const ? 4 : 3);
    ir_attr_set_int(m, r, "experts", E);
    ir_attr_set_int(m, r, "k", k);
    ir_attr_set_int(m, r, "router_layers", R->router_layers);
    ir_attr_set_int(m, r, "residual", R->r != NULL);
    ir_attr_set_int(m, r, "gating", R->gating);
    ir_attr_set_int(m, r, "zero_lo", R->zero_lo);
    ir_attr_set_int(m, r, "zero_hi", R->zero_hi);
    ir_attr_set_float(m, r, "norm_std", R->norm_std);
    ir_attr_set_int(m, r, "n_const", R->n_const);
    ir_attr_set_float(m, r, "s", R->s);
    ir_instr_move_before(m, r, R->gate);
    return r;
}

/* Each constant expert now reads its two α columns from the route. */
static void rewire_constants(IrModule *m, const Route *R, IrInstr *route)
{
    for (int c = 0; c < R->n_const; c++) {
        IrInstr *cm = R->const_mix[c];
        IrType t = ir_type_2d(DT_F32, IR_DIM_T, 2);
        const char *name = arena_printf(&m->arena, "%s.%d", route->out[3]->name, c);
        IrInstr *sl = ir_instr_append(m, IR_OP_SLICE, &route->out[3], 1, &t, &name, 1);
        ir_attr_set_int(m, sl, "start", 2 * c);
        ir_attr_set_int(m, sl, "len", 2);
        ir_instr_move_before(m, sl, R->gate);
        cm->in[1] = sl->out[0];
    }
}

bool pass_fuse_routing(IrModule *m, const PassOptions *o)
{
    for (IrInstr *i = m->first; i; i = i->next) {
        Route R;
        if (i->op != IR_OP_GATE_DENSE || !match_route(m, i, &R)) continue;
        IrInstr *route = build_route(m, &R);
        ir_replace_uses(m, R.topk->out[1], route->out[1]);
        ir_replace_uses(m, i->in[0], route->out[0]);
        ir_replace_uses(m, R.z_resid, route->out[2]);
        rewire_constants(m, &R, route);
    }
    return pass_dce(m, o);
}
