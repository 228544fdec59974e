/* pipeline.c — the pass pipeline as one readable function, each pass followed by the verifier. */
#include "passes/passes.h"

#include <string.h>

typedef struct {
    const char *name;
    PassFn fn;
} Pass;

static const Pass pipeline[] = {
    {"simplify", pass_simplify},
    {"dce", pass_dce},
    {"fuse-routing", pass_fuse_routing},
    {"elide-experts", pass_elide_experts},
    {"group-experts", pass_group_experts},
    {"dce", pass_dce},
    {"specialize", pass_specialize},
    {"plan-memory", pass_plan_memory},
};

static const Pass widen = {"widen-activations", pass_widen_activations};

static const char *const names[] = {"widen-activations", "simplify", "dce", "fuse-routing", "elide-experts", "group-experts",
                                    "specialize", "plan-memory", NULL};

const char *const *passes_names(void) { return names; }

static const char *const target_names[] = {"cpu", "sm_80", "sm_86", "sm_89", "sm_90"};

bool pass_target_parse(const char *s, pass_target *out)
{
    for (size_t k = 0; k < MOE_ARRAY_LEN(target_names); k++) {
        if (strcmp(s, target_names[k]) == 0) {
            *out = (pass_target)k;
            return true;
        }
    }
    return false;
}

const char *pass_target_name(pass_target t) { return target_names[t]; }

/* IR text that plan-memory wrote comes planned, and a pass before plan-memory may end a value's life
 * later (simplify forwarding an identity scale's input to its uses) or add values: that plan no longer
 * holds. It is dropped, not reported as a broken pass: plan-memory, the pipeline's last pass, plans
 * again. (A plan that plan-memory itself leaves broken is still an internal error.) */
static void drop_stale_plan(IrModule *m)
{
    char why[256];
    const IrValue *where = NULL;
    if (!m->planned || ir_plan_check(m, why, sizeof why, &where)) return;
    m->planned = false;
    for (int k = 0; k < m->n_values; k++) m->values[k]->planned = false;
}

static bool run_pass(IrModule *m, const Pass *p, const PassOptions *o, Diag *d)
{
    p->fn(m, o);
    if (p->fn != pass_plan_memory) drop_stale_plan(m);
    if (!ir_verify(m, d)) {
        fprintf(d->out, "moeppc: internal error: the IR is invalid after pass '%s'\n", p->name);
        return false;
    }
    if (o->print_after && (strcmp(o->print_after, p->name) == 0 || strcmp(o->print_after, "all") == 0)) {
        fprintf(o->print_out, "# IR after %s\n", p->name);
        ir_print(m, o->print_out);
    }
    return true;
}

bool passes_run(IrModule *m, const PassOptions *o, Diag *d)
{
    if (o->opt_level <= 0) return true;
    if (o->codegen && !run_pass(m, &widen, o, d)) return false;
    for (size_t k = 0; k < MOE_ARRAY_LEN(pipeline); k++)
        if (!run_pass(m, &pipeline[k], o, d)) return false;
    return true;
}

bool passes_run_one(IrModule *m, const char *name, const PassOptions *o, Diag *d)
{
    if (strcmp(widen.name, name) == 0) return run_pass(m, &widen, o, d);
    for (size_t k = 0; k < MOE_ARRAY_LEN(pipeline); k++)
        if (strcmp(pipeline[k].name, name) == 0) return run_pass(m, &pipeline[k], o, d);
    fprintf(d->out, "moeppc: error: unknown pass '%s' (passes:", name);
    for (const char *const *n = names; *n; n++) fprintf(d->out, " %s", *n);
    fprintf(d->out, ")\n");
    return false;
}
