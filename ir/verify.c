/* verify.c — the IR verifier: arity, attributes, dominance (every use after its definition) and
 * the type rule of every op. Passes run it after each rewrite; ir_parse runs it on what it read. */
#include "ir/ir.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    Diag *d;
    const IrInstr *in;
    char typebuf[2][64];
} Verifier;

static void verr(Verifier *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void verr(Verifier *v, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const IrInstr *i = v->in;
    if (i && i->line) diag_error(v->d, i->line, i->col, "%s: %s", ir_op_info(i->op)->name, msg);
    else if (i) diag_error(v->d, 0, 0, "%s defining %%%s: %s", ir_op_info(i->op)->name,
                           i->n_out ? i->out[0]->name : "?", msg);
    else diag_error(v->d, 0, 0, "%s", msg);
}

static const char *type_str(Verifier *v, int slot, const IrType *t)
{
    char *b = v->typebuf[slot];
    int n = snprintf(b, 64, "%s[", dtype_name(t->dtype));
    for (int k = 0; k < t->ndim && n < 60; k++) {
        if (t->dims[k] == IR_DIM_T) n += snprintf(b + n, (size_t)(64 - n), "%sT", k ? ", " : "");
        else n += snprintf(b + n, (size_t)(64 - n), "%s%lld", k ? ", " : "", (long long)t->dims[k]);
    }
    if (n < 63) strcat(b, "]");
    return b;
}

static bool is_float(moe_dtype t) { return t == DT_F32 || t == DT_BF16 || t == DT_F16 || t == DT_F64; }

/* An activation: [T, n] (2-D) or [T] (1-D) of the given kind. */
static bool want_act(Verifier *v, const IrValue *x, int ndim, bool want_float, const char *what)
{
    const IrType *t = &x->type;
    if (t->ndim == ndim && t->dims[0] == IR_DIM_T && is_float(t->dtype) == want_float) return true;
    verr(v, "%s %%%s must be %s%s, found %s", what, x->name, want_float ? "a float " : "an i32 ",
         ndim == 2 ? "[T, N] tensor" : "[T] vector", type_str(v, 0, t));
    return false;
}

static bool want_weight(Verifier *v, const IrValue *x, int ndim, const char *what)
{
    const IrType *t = &x->type;
    bool ok = t->ndim == ndim && is_float(t->dtype);
    for (int k = 0; ok && k < ndim; k++) ok = t->dims[k] != IR_DIM_T;
    if (!ok) verr(v, "%s %%%s must be a float tensor of %d concrete dimension%s, found %s", what, x->name, ndim,
                  ndim > 1 ? "s" : "", type_str(v, 0, t));
    return ok;
}

static bool want_result(Verifier *v, int k, const IrType *expect, bool any_float_dtype)
{
    const IrType *got = &v->in->out[k]->type;
    IrType e = *expect;
    if (any_float_dtype && is_float(got->dtype)) e.dtype = got->dtype;
    if (ir_type_equal(&e, got)) return true;
    verr(v, "result %%%s should have type %s, found %s", v->in->out[k]->name, type_str(v, 0, &e),
         type_str(v, 1, got));
    return false;
}

static bool want_same(Verifier *v, const IrValue *a, const IrValue *b)
{
    if (ir_type_equal(&a->type, &b->type)) return true;
    verr(v, "operands %%%s and %%%s must have the same type, found %s and %s", a->name, b->name,
         type_str(v, 0, &a->type), type_str(v, 1, &b->type));
    return false;
}

static bool want(Verifier *v, bool cond, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static bool want(Verifier *v, bool cond, const char *fmt, ...)
{
    if (cond) return true;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    verr(v, "%s", msg);
    return false;
}

static int64_t cols(const IrValue *x) { return x->type.dims[x->type.ndim - 1]; }

static bool check_attention(Verifier *v, const IrInstr *i)
{
    int64_t H = ir_attr_int(i, "heads"), Hk = ir_attr_int(i, "kv_heads");
    if (!want_act(v, i->in[0], 2, true, "q") || !want_act(v, i->in[1], 2, true, "k") ||
        !want_act(v, i->in[2], 2, true, "v") || !want_act(v, i->in[3], 1, false, "positions"))
        return false;
    if (!want(v, H > 0 && Hk > 0 && H % Hk == 0, "heads (%lld) must be a positive multiple of kv_heads (%lld)",
              (long long)H, (long long)Hk))
        return false;
    if (!want(v, cols(i->in[0]) % H == 0, "q has %lld columns, not a multiple of %lld heads",
              (long long)cols(i->in[0]), (long long)H))
        return false;
    int64_t hd = cols(i->in[0]) / H;
    if (!want(v, cols(i->in[1]) == Hk * hd && cols(i->in[2]) == Hk * hd,
              "k and v must have kv_heads x head_dim = %lld columns, found %lld and %lld", (long long)(Hk * hd),
              (long long)cols(i->in[1]), (long long)cols(i->in[2])))
        return false;
    return want_result(v, 0, &i->in[0]->type, false);
}

static bool check_routing(Verifier *v, const IrInstr *i)
{
    const IrValue *x = i->in[0];
    switch (i->op) {
    case IR_OP_TOPK: {
        int64_t k = ir_attr_int(i, "k");
        if (!want_act(v, x, 2, true, "scores")) return false;
        if (!want(v, k >= 1 && k <= cols(x), "k (%lld) must be in [1, %lld]", (long long)k, (long long)cols(x)))
            return false;
        IrType ids = ir_type_2d(DT_I32, IR_DIM_T, k);
        IrType vals = ir_type_2d(x->type.dtype, IR_DIM_T, k);
        return want_result(v, 0, &vals, false) && want_result(v, 1, &ids, false);
    }
    case IR_OP_MASK_EXPERTS:
    case IR_OP_GATE_DENSE:
        if (!want_act(v, x, 2, true, "weights") || !want_act(v, i->in[1], 2, false, "expert ids")) return false;
        if (!want(v, cols(x) == cols(i->in[1]), "weights and ids differ in width (%lld vs %lld)",
                  (long long)cols(x), (long long)cols(i->in[1])))
            return false;
        if (i->op == IR_OP_MASK_EXPERTS) {
            int64_t lo = ir_attr_int(i, "lo"), hi = ir_attr_int(i, "hi");
            if (!want(v, 0 <= lo && lo < hi, "need 0 <= lo < hi, found lo = %lld, hi = %lld", (long long)lo,
                      (long long)hi))
                return false;
            return want_result(v, 0, &x->type, false);
        } else {
            int64_t E = ir_attr_int(i, "experts");
            if (!want(v, E >= cols(x), "experts (%lld) must be at least k (%lld)", (long long)E, (long long)cols(x)))
                return false;
            IrType g = ir_type_2d(x->type.dtype, IR_DIM_T, E);
            return want_result(v, 0, &g, false);
        }
    default: break;
    }
    MOE_ASSERT(!"not a routing op");
    return false;
}

static bool check_elementwise(Verifier *v, const IrInstr *i)
{
    const IrValue *x = i->in[0];
    switch (i->op) {
    case IR_OP_ADD:
    case IR_OP_SWIGLU:
        return want_act(v, x, 2, true, "operand") && want_same(v, x, i->in[1]) && want_result(v, 0, &x->type, false);
    case IR_OP_SCALE:
    case IR_OP_TANH:
    case IR_OP_SOFTMAX:
    case IR_OP_LOGITS_NORM:
    case IR_OP_RENORM:
        if (i->op == IR_OP_LOGITS_NORM && !want(v, ir_attr_float(i, "std") > 0, "std must be positive")) return false;
        return want_act(v, x, 2, true, "operand") && want_result(v, 0, &x->type, false);
    case IR_OP_CONVERT:
        return want_act(v, x, 2, true, "operand") && want_result(v, 0, &x->type, true);
    case IR_OP_SLICE: {
        int64_t s = ir_attr_int(i, "start"), n = ir_attr_int(i, "len");
        if (!want_act(v, x, 2, true, "operand")) return false;
        if (!want(v, s >= 0 && n >= 1 && s + n <= cols(x), "columns [%lld, %lld) are outside [0, %lld)", (long long)s,
                  (long long)(s + n), (long long)cols(x)))
            return false;
        IrType t = ir_type_2d(x->type.dtype, IR_DIM_T, n);
        return want_result(v, 0, &t, false);
    }
    default: break;
    }
    MOE_ASSERT(!"not an elementwise op");
    return false;
}

static bool check_experts(Verifier *v, const IrInstr *i)
{
    const IrValue *x = i->in[0];
    if (i->op == IR_OP_CONST_MIX) {
        if (!want_act(v, x, 2, true, "u") || !want_act(v, i->in[1], 2, true, "alpha") ||
            !want_weight(v, i->in[2], 1, "constant vector"))
            return false;
        if (!want(v, cols(i->in[1]) == 2 && cols(i->in[2]) == cols(x),
                  "alpha must be [T, 2] and the constant vector [%lld]", (long long)cols(x)))
            return false;
        return want_result(v, 0, &x->type, false);
    }
    int64_t e = ir_attr_int(i, "expert");
    if (!want_act(v, x, 2, true, "accumulator") || !want_act(v, i->in[1], 2, true, "gate matrix") ||
        !want_act(v, i->in[2], 2, true, "expert output"))
        return false;
    if (!want(v, cols(x) == cols(i->in[2]), "accumulator and expert output differ in width (%lld vs %lld)",
              (long long)cols(x), (long long)cols(i->in[2])))
        return false;
    if (!want(v, 0 <= e && e < cols(i->in[1]), "expert %lld is outside the gate matrix's %lld columns",
              (long long)e, (long long)cols(i->in[1])))
        return false;
    return want_result(v, 0, &x->type, false);
}

static bool check_op(Verifier *v, const IrInstr *i)
{
    const IrValue *x = i->n_in ? i->in[0] : NULL;
    switch (i->op) {
    case IR_OP_EMBED: {
        if (!want_weight(v, x, 2, "table") || !want_act(v, i->in[1], 1, false, "token ids")) return false;
        IrType t = ir_type_2d(x->type.dtype, IR_DIM_T, x->type.dims[1]);
        return want_result(v, 0, &t, false);
    }
    case IR_OP_RMS_NORM:
        if (!want_act(v, x, 2, true, "input") || !want_weight(v, i->in[1], 1, "weight")) return false;
        if (!want(v, cols(i->in[1]) == cols(x), "weight has %lld elements, input %lld columns",
                  (long long)cols(i->in[1]), (long long)cols(x)) ||
            !want(v, ir_attr_float(i, "eps") > 0, "eps must be positive"))
            return false;
        return want_result(v, 0, &x->type, false);
    case IR_OP_LINEAR: {
        if (!want_act(v, x, 2, true, "input") || !want_weight(v, i->in[1], 2, "weight")) return false;
        const IrType *w = &i->in[1]->type;
        if (!want(v, w->dims[1] == cols(x), "weight %%%s is %s: its %lld columns do not match the input's %lld",
                  i->in[1]->name, type_str(v, 0, w), (long long)w->dims[1], (long long)cols(x)))
            return false;
        IrType t = ir_type_2d(x->type.dtype, IR_DIM_T, w->dims[0]);
        return want_result(v, 0, &t, true);
    }
    case IR_OP_ROPE: {
        int64_t H = ir_attr_int(i, "heads");
        if (!want_act(v, x, 2, true, "input") || !want_act(v, i->in[1], 1, false, "positions")) return false;
        if (!want(v, H > 0 && cols(x) % H == 0 && (cols(x) / H) % 2 == 0,
                  "%lld columns do not split into %lld heads of even size", (long long)cols(x), (long long)H) ||
            !want(v, ir_attr_float(i, "theta") > 0, "theta must be positive"))
            return false;
        return want_result(v, 0, &x->type, false);
    }
    case IR_OP_ATTENTION: return check_attention(v, i);
    case IR_OP_ZEROS:
        return want(v, i->out[0]->type.dims[0] == IR_DIM_T && is_float(i->out[0]->type.dtype),
                    "result must be a float tensor whose first dimension is T");
    case IR_OP_TOPK:
    case IR_OP_MASK_EXPERTS:
    case IR_OP_GATE_DENSE: return check_routing(v, i);
    case IR_OP_CONST_MIX:
    case IR_OP_GATE_ACCUM: return check_experts(v, i);
    default: return check_elementwise(v, i);
    }
}

/* Required attributes exist with the right kind; no unknown ones. Integer-valued attributes are the
 * ones that count or index things; the others (eps, theta, s, std) are floats but accept integers. */
static bool check_attrs(Verifier *v, const IrInstr *i)
{
    static const char *const int_attrs[] = {"k", "lo", "hi", "start", "len", "experts", "expert", "heads", "kv_heads"};
    const char *req = ir_op_info(i->op)->attrs;
    for (int k = 0; k < i->n_attrs; k++) {
        const char *key = i->attrs[k].key;
        size_t n = strlen(key);
        const char *p = strstr(req, key);
        while (p && !((p == req || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))) p = strstr(p + 1, key);
        if (!want(v, p != NULL, "unknown attribute '%s' (expected: %s)", key, *req ? req : "none")) return false;
        for (size_t j = 0; j < MOE_ARRAY_LEN(int_attrs); j++)
            if (strcmp(key, int_attrs[j]) == 0 && !want(v, i->attrs[k].kind == IR_ATTR_INT,
                                                          "attribute '%s' must be an integer", key))
                return false;
    }
    char buf[128];
    snprintf(buf, sizeof buf, "%s", req);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ","))
        if (!want(v, ir_attr_get(i, tok) != NULL, "missing attribute '%s'", tok)) return false;
    return true;
}

static bool check_instr(Verifier *v, const IrInstr *i, const bool *defined)
{
    const IrOpInfo *info = ir_op_info(i->op);
    if (!want(v, info->n_in < 0 || i->n_in == info->n_in, "takes %d operand%s, found %d", info->n_in,
              info->n_in == 1 ? "" : "s", i->n_in) ||
        !want(v, i->n_out == info->n_out, "has %d result%s, found %d", info->n_out, info->n_out == 1 ? "" : "s",
              i->n_out))
        return false;
    for (int k = 0; k < i->n_in; k++)
        if (!want(v, defined[i->in[k]->id], "operand %%%s is used before it is defined", i->in[k]->name))
            return false;
    return check_attrs(v, i) && check_op(v, i);
}

bool ir_verify(const IrModule *m, Diag *d)
{
    Verifier v = {.d = d};
    bool *defined = xcalloc((size_t)m->n_values + 1, sizeof *defined);
    bool ok = true;
    for (int k = 0; k < m->n_values; k++) defined[k] = m->values[k]->kind != IR_VAL_RESULT;
    for (const IrInstr *i = m->first; i; i = i->next) {
        v.in = i;
        if (!check_instr(&v, i, defined)) ok = false;
        for (int k = 0; k < i->n_out; k++) defined[i->out[k]->id] = true;
    }
    v.in = NULL;
    for (int k = 0; k < m->n_outputs; k++)
        if (!want(&v, defined[m->outputs[k].value->id], "output \"%s\" names an undefined value",
                  m->outputs[k].name))
            ok = false;
    if (!want(&v, m->n_outputs > 0, "module \"%s\" has no outputs", m->name)) ok = false;
    free(defined);
    return ok;
}
