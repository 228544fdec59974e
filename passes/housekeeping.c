/* housekeeping.c — simplify (identities folded away) and dead-code elimination. */
#include "passes/passes.h"

#include <stdlib.h>

/* The operand an identity instruction passes through, or NULL if i changes its input. */
static IrValue *identity_of(const IrInstr *i)
{
    IrValue *x = i->n_in ? i->in[0] : NULL;
    switch (i->op) {
    case IR_OP_SCALE: return ir_attr_float(i, "s") == 1.0 ? x : NULL;
    case IR_OP_CONVERT: return x->type.dtype == i->out[0]->type.dtype ? x : NULL;
    case IR_OP_SLICE: return ir_attr_int(i, "start") == 0 && ir_attr_int(i, "len") == x->type.dims[1] ? x : NULL;
    default: return NULL;
    }
}

bool pass_simplify(IrModule *m, const PassOptions *o)
{
    (void)o;
    for (IrInstr *i = m->first, *next; i; i = next) {
        next = i->next;
        IrValue *x = identity_of(i);
        if (!x) continue;
        ir_replace_uses(m, i->out[0], x);
        ir_instr_remove(m, i);
    }
    ir_module_compact(m);
    return true;
}

/* Walk backwards: an instruction is live if an output or a live instruction uses a result of it. */
bool pass_dce(IrModule *m, const PassOptions *o)
{
    (void)o;
    bool *live = xcalloc((size_t)m->n_values + 1, sizeof *live);
    for (int k = 0; k < m->n_outputs; k++) live[m->outputs[k].value->id] = true;
    for (IrInstr *i = m->last, *prev; i; i = prev) {
        prev = i->prev;
        bool needed = false;
        for (int k = 0; k < i->n_out; k++) needed |= live[i->out[k]->id];
        if (!needed) {
            ir_instr_remove(m, i);
            continue;
        }
        for (int k = 0; k < i->n_in; k++) live[i->in[k]->id] = true;
    }
    free(live);
    ir_module_compact(m);
    return true;
}
