/* match.h — small helpers the MoE passes share for recognising the shapes lowering writes. */
#ifndef MOEPPC_PASSES_MATCH_H
#define MOEPPC_PASSES_MATCH_H

#include "passes/passes.h"

/* The instruction defining v if it is an op of kind op, else NULL. */
static inline IrInstr *def_of(const IrValue *v, ir_op op)
{
    return v && v->kind == IR_VAL_RESULT && v->def->op == op ? v->def : NULL;
}

/* v with any dtype conversion stripped. */
static inline IrValue *strip_convert(IrValue *v)
{
    IrInstr *c = def_of(v, IR_OP_CONVERT);
    return c ? c->in[0] : v;
}

/* The gate_accum instructions that add an expert's output with gate matrix G, in program order
 * (lowering writes them as one chain y_{n+1} = gate_accum(y_n, G, o_n)). Returns the count; *out is
 * an array the caller frees. */
int match_accums(const IrModule *m, const IrValue *G, IrInstr ***out);

/* A fresh value name: PREFIX.SUFFIX where PREFIX is name's part before its first '.' ("l3.ids" → "l3"). */
const char *match_name(IrModule *m, const char *like, const char *suffix);

#endif
