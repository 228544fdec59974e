/* group_experts.c — the FFN expert sum becomes grouped GEMMs.
 *
 * The remaining chain y_{n+1} = gate_accum(y_n, G, Wd_e · swiglu(slice(Wu_e · u))) over the FFN
 * experts e = 0..Nf-1 becomes
 *   offsets, slots = moe.dispatch(ids)                  tokens sorted by expert: dropless, no capacity,
 *                                                       zero-computation picks left out
 *   h = moe.grouped_up(u, offsets, slots, Wu_0..)       one GEMM per expert over its rows, SwiGLU epilogue
 *   y = moe.grouped_down(h, offsets, slots, w, y_0, Wd_0..)  gate-weighted scatter-add epilogue onto y_0
 * where y_0 is what the chain started from (the zero-computation experts' combine, or zeros). */
#include "passes/match.h"

#include <stdlib.h>

typedef struct {
    IrValue *u, *wu[256], *wd[256];
} Ffn;

/* o = linear(swiglu(slice(up, 0, I), slice(up, I, I)), Wd), up = linear(u, Wu): the expert's weights. */
static bool match_ffn(const IrInstr *acc, IrValue **u, IrValue **wu, IrValue **wd)
{
    IrInstr *down = def_of(acc->in[2], IR_OP_LINEAR);
    IrInstr *sw = down ? def_of(down->in[0], IR_OP_SWIGLU) : NULL;
    IrInstr *a = sw ? def_of(sw->in[0], IR_OP_SLICE) : NULL, *b = sw ? def_of(sw->in[1], IR_OP_SLICE) : NULL;
    if (!a || !b || a->in[0] != b->in[0]) return false;
    int64_t I = a->out[0]->type.dims[1];
    if (ir_attr_int(a, "start") != 0 || ir_attr_int(b, "start") != I || ir_attr_int(b, "len") != I) return false;
    IrInstr *up = def_of(a->in[0], IR_OP_LINEAR);
    if (!up || up->out[0]->type.dims[1] != 2 * I) return false;
    *u = up->in[0];
    *wu = up->in[1];
    *wd = down->in[1];
    return true;
}

static IrInstr *emit(IrModule *m, ir_op op, IrValue **in, int n, const IrType *t, const char **names, int n_out,
                     int64_t experts, IrInstr *before)
{
    IrInstr *i = ir_instr_append(m, op, in, n, t, names, n_out);
    ir_attr_set_int(m, i, "experts", experts);
    ir_instr_move_before(m, i, before);
    return i;
}

static void group_layer(IrModule *m, IrInstr *gate, IrInstr **acc, int n, const Ffn *f)
{
    IrValue *ids = gate->in[1], *w = gate->in[0], *in[5 + 256];
    int64_t k = ids->type.dims[1], I = f->wd[0]->type.dims[1], D = f->wd[0]->type.dims[0];
    const char *like = ids->name;
    IrInstr *last = acc[n - 1];
    IrType dt[2] = {ir_type_1d(DT_I32, n + 1), ids->type};
    const char *dn[2] = {match_name(m, like, "ffn.offsets"), match_name(m, like, "ffn.slots")};
    IrInstr *disp = emit(m, IR_OP_MOE_DISPATCH, &ids, 1, dt, dn, 2, n, last);
    in[0] = f->u, in[1] = disp->out[0], in[2] = disp->out[1];
    for (int e = 0; e < n; e++) in[3 + e] = f->wu[e];
    IrType ht = {f->u->type.dtype, 3, {IR_DIM_T, k, I, 0}};
    const char *hn = match_name(m, like, "ffn.h");
    IrInstr *up = emit(m, IR_OP_MOE_GROUPED_UP, in, 3 + n, &ht, &hn, 1, n, last);
    in[0] = up->out[0], in[3] = w, in[4] = acc[0]->in[0];
    for (int e = 0; e < n; e++) in[5 + e] = f->wd[e];
    IrType yt = ir_type_2d(acc[0]->in[0]->type.dtype, IR_DIM_T, D);
    const char *yn = match_name(m, like, "ffn.y");
    IrInstr *down = emit(m, IR_OP_MOE_GROUPED_DOWN, in, 5 + n, &yt, &yn, 1, n, last);
    ir_replace_uses(m, last->out[0], down->out[0]);
}

bool pass_group_experts(IrModule *m, const PassOptions *o)
{
    for (IrInstr *i = m->first; i; i = i->next) {
        if (i->op != IR_OP_GATE_DENSE || !def_of(i->in[1], IR_OP_MOE_ROUTE)) continue;
        IrInstr **acc;
        int n = match_accums(m, i->out[0], &acc);
        Ffn f = {0};
        bool ok = n > 0 && n <= 256;
        for (int e = 0; ok && e < n; e++) {
            IrValue *u = NULL;
            ok = ir_attr_int(acc[e], "expert") == e && (e == 0 || acc[e]->in[0] == acc[e - 1]->out[0]) &&
                 match_ffn(acc[e], &u, &f.wu[e], &f.wd[e]) && (e == 0 || u == f.u) &&
                 ir_type_equal(&f.wu[e]->type, &f.wu[0]->type) && ir_type_equal(&f.wd[e]->type, &f.wd[0]->type);
            if (ok) f.u = u;
        }
        /* what the grouped ops require (experts of one shape, f32 gate weights), as lowering writes it;
         * IR text may differ and is then left alone */
        IrType wt = ir_type_2d(DT_F32, IR_DIM_T, i->in[1]->type.dims[1]);
        if (ok && ir_type_equal(&i->in[0]->type, &wt)) group_layer(m, i, acc, n, &f);
        free(acc);
    }
    return pass_dce(m, o);
}
