/* ir.c — building IR modules: values, instructions, attributes, outputs; the op tables. */
#include "ir/ir.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const IrOpInfo op_table[] = {
#define IR_OP(e, name, nin, nout, attrs, opt) {name, nin, nout, attrs, opt},
#include "ir/ops.def"
#undef IR_OP
};
_Static_assert(MOE_ARRAY_LEN(op_table) == IR_OP_COUNT, "op table out of step with ops.def");

const IrOpInfo *ir_op_info(ir_op op)
{
    MOE_ASSERT((unsigned)op < IR_OP_COUNT);
    return &op_table[op];
}

bool ir_op_lookup(const char *name, ir_op *out)
{
    for (int i = 0; i < IR_OP_COUNT; i++) {
        if (strcmp(op_table[i].name, name) == 0) {
            *out = (ir_op)i;
            return true;
        }
    }
    return false;
}

bool ir_type_equal(const IrType *a, const IrType *b)
{
    if (a->dtype != b->dtype || a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->dims[i] != b->dims[i]) return false;
    return true;
}

int64_t ir_type_numel(const IrType *t, int64_t T)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->dims[i] == IR_DIM_T ? T : t->dims[i];
    return n;
}

IrType ir_type_2d(moe_dtype dt, int64_t d0, int64_t d1) { return (IrType){dt, 2, {d0, d1, 0, 0}}; }
IrType ir_type_1d(moe_dtype dt, int64_t d0) { return (IrType){dt, 1, {d0, 0, 0, 0}}; }

IrModule *ir_module_new(const char *name)
{
    IrModule *m = xcalloc(1, sizeof *m);
    m->name = arena_strdup(&m->arena, name);
    return m;
}

void ir_module_free(IrModule *m)
{
    if (!m) return;
    free(m->values);
    free(m->outputs);
    arena_free(&m->arena);
    free(m);
}

IrValue *ir_value_find(const IrModule *m, const char *name)
{
    for (int i = 0; i < m->n_values; i++)
        if (strcmp(m->values[i]->name, name) == 0) return m->values[i];
    return NULL;
}

static IrValue *value_new(IrModule *m, const char *name, IrType t, ir_value_kind kind)
{
    if (m->n_values == m->cap_values) {
        m->cap_values = m->cap_values ? 2 * m->cap_values : 256;
        m->values = xrealloc(m->values, (size_t)m->cap_values * sizeof *m->values);
    }
    IrValue *v = arena_alloc(&m->arena, sizeof *v);
    v->id = m->n_values;
    v->name = name ? arena_strdup(&m->arena, name) : arena_printf(&m->arena, "%d", m->n_values);
    v->type = t;
    v->kind = kind;
    m->values[m->n_values++] = v;
    return v;
}

IrValue *ir_input_new(IrModule *m, const char *name, IrType t) { return value_new(m, name, t, IR_VAL_INPUT); }

IrValue *ir_param_new(IrModule *m, const char *name, const char *tensor, IrType t)
{
    IrValue *v = value_new(m, name, t, IR_VAL_PARAM);
    v->tensor = arena_strdup(&m->arena, tensor);
    return v;
}

IrInstr *ir_instr_append(IrModule *m, ir_op op, IrValue *const *in, int n_in, const IrType *out_types,
                         const char *const *out_names, int n_out)
{
    IrInstr *i = arena_alloc(&m->arena, sizeof *i);
    i->op = op;
    i->n_in = n_in;
    i->n_out = n_out;
    i->in = arena_alloc(&m->arena, (size_t)(n_in ? n_in : 1) * sizeof *i->in);
    i->out = arena_alloc(&m->arena, (size_t)(n_out ? n_out : 1) * sizeof *i->out);
    for (int k = 0; k < n_in; k++) i->in[k] = in[k];
    for (int k = 0; k < n_out; k++) {
        i->out[k] = value_new(m, out_names ? out_names[k] : NULL, out_types[k], IR_VAL_RESULT);
        i->out[k]->def = i;
    }
    i->prev = m->last;
    if (m->last) m->last->next = i;
    else m->first = i;
    m->last = i;
    return i;
}

static IrAttr *attr_slot(IrModule *m, IrInstr *i, const char *key)
{
    for (int k = 0; k < i->n_attrs; k++)
        if (strcmp(i->attrs[k].key, key) == 0) return &i->attrs[k];
    IrAttr *a = arena_alloc(&m->arena, (size_t)(i->n_attrs + 1) * sizeof *a);
    if (i->n_attrs) memcpy(a, i->attrs, (size_t)i->n_attrs * sizeof *a);
    i->attrs = a;
    a[i->n_attrs].key = arena_strdup(&m->arena, key);
    return &a[i->n_attrs++];
}

void ir_attr_set_int(IrModule *m, IrInstr *i, const char *key, int64_t v)
{
    IrAttr *a = attr_slot(m, i, key);
    a->kind = IR_ATTR_INT;
    a->i = v;
    a->f = (double)v;
}

void ir_attr_set_float(IrModule *m, IrInstr *i, const char *key, double v)
{
    IrAttr *a = attr_slot(m, i, key);
    a->kind = IR_ATTR_FLOAT;
    a->f = v;
    a->i = fabs(v) < 0x1p63 ? (int64_t)v : 0; /* the integer view only where one exists (not 1e26, NaN) */
}

void ir_attr_set_str(IrModule *m, IrInstr *i, const char *key, const char *v)
{
    IrAttr *a = attr_slot(m, i, key);
    a->kind = IR_ATTR_STR;
    a->s = arena_strdup(&m->arena, v);
}

const IrAttr *ir_attr_get(const IrInstr *i, const char *key)
{
    for (int k = 0; k < i->n_attrs; k++)
        if (strcmp(i->attrs[k].key, key) == 0) return &i->attrs[k];
    return NULL;
}

int64_t ir_attr_int(const IrInstr *i, const char *key)
{
    const IrAttr *a = ir_attr_get(i, key);
    MOE_ASSERT(a && a->kind == IR_ATTR_INT);
    return a->i;
}

double ir_attr_float(const IrInstr *i, const char *key)
{
    const IrAttr *a = ir_attr_get(i, key);
    MOE_ASSERT(a && a->kind != IR_ATTR_STR);
    return a->kind == IR_ATTR_INT ? (double)a->i : a->f;
}

void ir_output_add(IrModule *m, const char *name, IrValue *v)
{
    if (m->n_outputs == m->cap_outputs) {
        m->cap_outputs = m->cap_outputs ? 2 * m->cap_outputs : 16;
        m->outputs = xrealloc(m->outputs, (size_t)m->cap_outputs * sizeof *m->outputs);
    }
    m->outputs[m->n_outputs++] = (IrOutput){arena_strdup(&m->arena, name), v};
}

/* ---- rewriting ---------------------------------------------------------------------------------- */

void ir_replace_uses(IrModule *m, const IrValue *old, IrValue *new_value)
{
    for (IrInstr *i = m->first; i; i = i->next)
        for (int k = 0; k < i->n_in; k++)
            if (i->in[k] == old) i->in[k] = new_value;
    for (int k = 0; k < m->n_outputs; k++)
        if (m->outputs[k].value == old) m->outputs[k].value = new_value;
}

void ir_instr_remove(IrModule *m, IrInstr *i)
{
    if (i->prev) i->prev->next = i->next;
    else m->first = i->next;
    if (i->next) i->next->prev = i->prev;
    else m->last = i->prev;
    i->prev = i->next = NULL;
}

void ir_instr_move_before(IrModule *m, IrInstr *i, IrInstr *at)
{
    if (i == at) return;
    ir_instr_remove(m, i);
    i->next = at;
    i->prev = at->prev;
    if (at->prev) at->prev->next = i;
    else m->first = i;
    at->prev = i;
}

int ir_logits_tail(const IrModule *m)
{
    int n = 0;
    for (const IrInstr *i = m->first; i; i = i->next) n++;
    const IrValue *logits = NULL;
    for (int k = 0; k < m->n_outputs; k++)
        if (strcmp(m->outputs[k].name, "logits") == 0) logits = m->outputs[k].value;
    const IrInstr *lin = m->last, *norm = lin ? lin->prev : NULL;
    if (!logits || !norm || logits->def != lin || lin->op != IR_OP_LINEAR || lin->in[0]->def != norm ||
        (norm->op != IR_OP_RMS_NORM && norm->op != IR_OP_ADD_RMS_NORM))
        return n;
    for (int k = 0; k < m->n_outputs; k++)
        if (m->outputs[k].value->def == norm) return n;
    return n - 2;
}

int *ir_use_counts(const IrModule *m)
{
    int *n = xcalloc((size_t)m->n_values + 1, sizeof *n);
    for (const IrInstr *i = m->first; i; i = i->next)
        for (int k = 0; k < i->n_in; k++) n[i->in[k]->id]++;
    for (int k = 0; k < m->n_outputs; k++) n[m->outputs[k].value->id]++;
    return n;
}

void ir_module_compact(IrModule *m)
{
    int *uses = ir_use_counts(m);
    bool *keep = xcalloc((size_t)m->n_values + 1, sizeof *keep);
    for (int k = 0; k < m->n_values; k++) {
        const IrValue *v = m->values[k];
        keep[k] = v->kind == IR_VAL_INPUT || (v->kind == IR_VAL_PARAM && uses[k] > 0);
    }
    for (const IrInstr *i = m->first; i; i = i->next)
        for (int k = 0; k < i->n_out; k++) keep[i->out[k]->id] = true;
    int n = 0;
    for (int k = 0; k < m->n_values; k++) {
        if (!keep[k]) continue;
        m->values[n] = m->values[k];
        m->values[n]->id = n;
        n++;
    }
    m->n_values = n;
    free(keep);
    free(uses);
}

int ir_liveness(const IrModule *m, int **def_out, int **last_out)
{
    int *def = xmalloc(((size_t)m->n_values + 1) * sizeof *def), *last = xmalloc(((size_t)m->n_values + 1) * sizeof *last);
    for (int k = 0; k < m->n_values; k++) def[k] = last[k] = -1;
    int n = 0;
    for (const IrInstr *i = m->first; i; i = i->next, n++) {
        for (int k = 0; k < i->n_in; k++)
            if (i->in[k]->kind == IR_VAL_RESULT) last[i->in[k]->id] = n;
        for (int k = 0; k < i->n_out; k++) def[i->out[k]->id] = last[i->out[k]->id] = n;
    }
    for (int k = 0; k < m->n_outputs; k++)
        if (m->outputs[k].value->kind == IR_VAL_RESULT) last[m->outputs[k].value->id] = n;
    *def_out = def;
    *last_out = last;
    return n;
}

void ir_value_bytes(const IrValue *v, int64_t *per_t, int64_t *fixed)
{
    int64_t n = (int64_t)dtype_size(v->type.dtype);
    for (int k = v->type.dims[0] == IR_DIM_T ? 1 : 0; k < v->type.ndim; k++) n *= v->type.dims[k];
    n = (n + 63) / 64 * 64;
    *per_t = v->type.dims[0] == IR_DIM_T ? n : 0;
    *fixed = v->type.dims[0] == IR_DIM_T ? 0 : n;
}

const IrValue *ir_inplace_input(const IrValue *v)
{
    const IrInstr *i = v->kind == IR_VAL_RESULT ? v->def : NULL;
    if (!i || i->op != IR_OP_MOE_GROUPED_DOWN || i->out[0] != v || i->n_in < 5) return NULL;
    return i->in[4]->kind == IR_VAL_RESULT ? i->in[4] : NULL;
}

int ir_instr_position(const IrModule *m, const IrInstr *i)
{
    int n = 0;
    for (const IrInstr *j = m->first; j; j = j->next, n++)
        if (j == i) return n;
    MOE_ASSERT(!"the instruction is not in the module");
    return -1;
}
