/* match.c — helpers shared by the MoE passes. */
#include "passes/match.h"

#include <string.h>

int match_accums(const IrModule *m, const IrValue *G, IrInstr ***out)
{
    int n = 0, cap = 8;
    IrInstr **v = xmalloc((size_t)cap * sizeof *v);
    for (IrInstr *i = m->first; i; i = i->next) {
        if (i->op != IR_OP_GATE_ACCUM || i->in[1] != G) continue;
        if (n == cap) v = xrealloc(v, (size_t)(cap *= 2) * sizeof *v);
        v[n++] = i;
    }
    *out = v;
    return n;
}

const char *match_name(IrModule *m, const char *like, const char *suffix)
{
    size_t n = strcspn(like, ".");
    return arena_printf(&m->arena, "%.*s.%s", (int)n, like, suffix);
}
