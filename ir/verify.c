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

/* ---- fused and sparse MoE ops ------------------------------------------------------------- */

static bool want_type(Verifier *v, const IrValue *x, IrType t, const char *what)
{
    if (ir_type_equal(&x->type, &t)) return true;
    verr(v, "%s %%%s must be %s, found %s", what, x->name, type_str(v, 0, &t), type_str(v, 1, &x->type));
    return false;
}

static bool want_count(Verifier *v, int n, int expect, const char *what)
{
    return want(v, n == expect, "expects %d %s, found %d", expect, what, n);
}

/* A list of same-shaped weights in[first .. first+n). */
static bool want_weights(Verifier *v, const IrInstr *i, int first, int n, int64_t d0, int64_t d1, const char *what)
{
    for (int k = first; k < first + n; k++) {
        if (!want_weight(v, i->in[k], 2, what)) return false;
        const IrType *t = &i->in[k]->type;
        if (!want(v, t->dims[0] == d0 && t->dims[1] == d1, "%s %%%s must be [%lld, %lld], found %s", what,
                  i->in[k]->name, (long long)d0, (long long)d1, type_str(v, 0, t)))
            return false;
    }
    return true;
}

static bool check_route(Verifier *v, const IrInstr *i)
{
    int64_t E = ir_attr_int(i, "experts"), k = ir_attr_int(i, "k"), L = ir_attr_int(i, "router_layers");
    int64_t res = ir_attr_int(i, "residual"), nc = ir_attr_int(i, "n_const");
    int64_t zlo = ir_attr_int(i, "zero_lo"), zhi = ir_attr_int(i, "zero_hi");
    if (!want(v, E >= 1 && k >= 1 && k <= E && (L == 1 || L == 2) && (res == 0 || res == 1) && nc >= 0 && nc <= E &&
                     0 <= zlo && zlo <= zhi && zhi <= E && ir_attr_int(i, "gating") >= 0 &&
                     ir_attr_int(i, "gating") <= 1 && ir_attr_float(i, "norm_std") >= 0 && ir_attr_float(i, "s") > 0,
              "inconsistent attributes (experts %lld, k %lld, router_layers %lld, residual %lld, n_const %lld, "
              "zero experts [%lld, %lld))", (long long)E, (long long)k, (long long)L, (long long)res, (long long)nc,
              (long long)zlo, (long long)zhi) ||
        !want_count(v, i->n_in, (int)(1 + L + 2 * res + nc), "operands") ||
        !want_count(v, i->n_out, nc ? 4 : 3, "results") || !want_act(v, i->in[0], 2, true, "input"))
        return false;
    int64_t D = cols(i->in[0]);
    int at = 1;
    if (L == 2) {
        int64_t Hr = i->in[1]->type.dims[0];
        if (!want_weights(v, i, 1, 1, Hr, D, "router W1") || !want_weights(v, i, 2, 1, E, Hr, "router W2")) return false;
    } else if (!want_weights(v, i, 1, 1, E, D, "router W")) {
        return false;
    }
    at += (int)L;
    if (res && (!want_type(v, i->in[at], ir_type_2d(DT_F32, IR_DIM_T, E), "residual logits") ||
                !want_weights(v, i, at + 1, 1, E, E, "gate map")))
        return false;
    at += 2 * (int)res;
    if (!want_weights(v, i, at, (int)nc, 2, D, "constant-expert gate")) return false;
    IrType wt = ir_type_2d(DT_F32, IR_DIM_T, k), it = ir_type_2d(DT_I32, IR_DIM_T, k);
    IrType zt = ir_type_2d(DT_F32, IR_DIM_T, E), at_ = ir_type_2d(DT_F32, IR_DIM_T, 2 * (nc ? nc : 1));
    return want_result(v, 0, &wt, false) && want_result(v, 1, &it, false) && want_result(v, 2, &zt, false) &&
           (!nc || want_result(v, 3, &at_, false));
}

static bool check_combine(Verifier *v, const IrInstr *i)
{
    int64_t nc = ir_attr_int(i, "n_const");
    if (!want(v, nc >= 0 && ir_attr_int(i, "const_lo") >= 0 && ir_attr_int(i, "copy_lo") >= 0 &&
                     ir_attr_int(i, "copy_lo") <= ir_attr_int(i, "copy_hi") && ir_attr_float(i, "s") > 0,
              "inconsistent expert ranges") ||
        !want_count(v, i->n_in, (int)(3 + (nc ? 1 + nc : 0)), "operands") || !want_act(v, i->in[0], 2, true, "input") ||
        !want_act(v, i->in[1], 2, true, "weights") || !want_act(v, i->in[2], 2, false, "expert ids"))
        return false;
    int64_t D = cols(i->in[0]);
    if (nc && !want_type(v, i->in[3], ir_type_2d(DT_F32, IR_DIM_T, 2 * nc), "alpha")) return false;
    for (int c = 0; c < nc; c++)
        if (!want_weight(v, i->in[4 + c], 1, "constant vector") ||
            !want(v, cols(i->in[4 + c]) == D, "constant vector %%%s must have %lld elements", i->in[4 + c]->name,
                  (long long)D))
            return false;
    IrType y = ir_type_2d(DT_F32, IR_DIM_T, D);
    return want_result(v, 0, &y, false);
}

static IrType slot_type(moe_dtype dt, int64_t k, int64_t n) { return (IrType){dt, 3, {IR_DIM_T, k, n, 0}}; }

static bool check_grouped(Verifier *v, const IrInstr *i)
{
    int64_t E = ir_attr_int(i, "experts");
    bool up = i->op == IR_OP_MOE_GROUPED_UP;
    if (!want(v, E >= 1, "experts must be positive") || !want_count(v, i->n_in, (int)(E + (up ? 3 : 5)), "operands") ||
        !want_type(v, i->in[1], ir_type_1d(DT_I32, E + 1), "offsets") || !want_act(v, i->in[2], 2, false, "slots"))
        return false;
    int64_t k = cols(i->in[2]);
    const IrValue *w0 = i->in[up ? 3 : 5];
    if (!want_weight(v, w0, 2, "expert weight")) return false;
    if (up) {
        int64_t I2 = w0->type.dims[0], D;
        if (!want_act(v, i->in[0], 2, true, "input") || !want(v, I2 % 2 == 0, "up-projection rows must be even"))
            return false;
        D = cols(i->in[0]);
        if (!want_weights(v, i, 3, (int)E, I2, D, "up-projection")) return false;
        IrType h = slot_type(i->in[0]->type.dtype, k, I2 / 2);
        return want_result(v, 0, &h, false);
    }
    const IrValue *h = i->in[0];
    if (!want(v, h->type.ndim == 3 && h->type.dims[0] == IR_DIM_T && h->type.dims[1] == k,
              "slot buffer %%%s must be [T, %lld, I]", h->name, (long long)k) ||
        !want_type(v, i->in[3], ir_type_2d(DT_F32, IR_DIM_T, k), "weights") ||
        !want_act(v, i->in[4], 2, true, "accumulator") ||
        !want_weights(v, i, 5, (int)E, cols(i->in[4]), h->type.dims[2], "down-projection"))
        return false;
    return want_result(v, 0, &i->in[4]->type, false);
}

static bool check_moe(Verifier *v, const IrInstr *i)
{
    switch (i->op) {
    case IR_OP_MOE_ROUTE: return check_route(v, i);
    case IR_OP_MOE_COMBINE: return check_combine(v, i);
    case IR_OP_MOE_DISPATCH: {
        int64_t E = ir_attr_int(i, "experts");
        if (!want(v, E >= 1, "experts must be positive") || !want_act(v, i->in[0], 2, false, "expert ids")) return false;
        IrType off = ir_type_1d(DT_I32, E + 1);
        return want_result(v, 0, &off, false) && want_result(v, 1, &i->in[0]->type, false);
    }
    case IR_OP_ADD_RMS_NORM:
        if (!want_act(v, i->in[0], 2, true, "operand") || !want_same(v, i->in[0], i->in[1]) ||
            !want_weight(v, i->in[2], 1, "weight") ||
            !want(v, cols(i->in[2]) == cols(i->in[0]), "weight has %lld elements, input %lld columns",
                  (long long)cols(i->in[2]), (long long)cols(i->in[0])) ||
            !want(v, ir_attr_float(i, "eps") > 0, "eps must be positive"))
            return false;
        return want_result(v, 0, &i->in[0]->type, false) && want_result(v, 1, &i->in[0]->type, false);
    default: return check_grouped(v, i);
    }
}

static bool check_op(Verifier *v, const IrInstr *i)
{
    const IrValue *x = i->n_in ? i->in[0] : NULL;
    switch (i->op) {
    case IR_OP_EMBED: {
        if (!want_weight(v, x, 2, "table") || !want_act(v, i->in[1], 1, false, "token ids")) return false;
        IrType t = ir_type_2d(x->type.dtype, IR_DIM_T, x->type.dims[1]);
        return want_result(v, 0, &t, true); /* any float type: the CPU backend widens activations */
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
    case IR_OP_MOE_ROUTE:
    case IR_OP_MOE_COMBINE:
    case IR_OP_MOE_DISPATCH:
    case IR_OP_MOE_GROUPED_UP:
    case IR_OP_MOE_GROUPED_DOWN:
    case IR_OP_ADD_RMS_NORM: return check_moe(v, i);
    default: return check_elementwise(v, i);
    }
}

static bool in_list(const char *list, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = strstr(list, key); p; p = strstr(p + 1, key))
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return true;
    return false;
}

/* Attributes that count or index things are integers, tile_src, tile_schedule and kv_dtype are
 * strings, the rest (eps, theta, s, std, norm_std) are floats that also accept integers. */
static ir_attr_kind attr_kind(const char *key)
{
    static const char *const ints = "k,lo,hi,start,len,experts,expert,heads,kv_heads,router_layers,residual,"
                                    "gating,zero_lo,zero_hi,n_const,const_lo,copy_lo,copy_hi,tile_m,tile_n,tile_k,tile_unroll,"
                                    "tile_mc,kv_block,act_bf16,amx";
    if (in_list(ints, key)) return IR_ATTR_INT;
    return in_list("tile_src,tile_schedule,kv_dtype", key) ? IR_ATTR_STR : IR_ATTR_FLOAT;
}

/* Required attributes exist with the right kind; optional ones may; no others. */
static bool check_attrs(Verifier *v, const IrInstr *i)
{
    const IrOpInfo *info = ir_op_info(i->op);
    for (int k = 0; k < i->n_attrs; k++) {
        const IrAttr *a = &i->attrs[k];
        if (!want(v, in_list(info->attrs, a->key) || in_list(info->optional, a->key),
                  "unknown attribute '%s' (expected: %s%s%s)", a->key, *info->attrs ? info->attrs : "none",
                  *info->optional ? "; optional: " : "", info->optional))
            return false;
        ir_attr_kind want_kind = attr_kind(a->key);
        bool ok = a->kind == want_kind || (want_kind == IR_ATTR_FLOAT && a->kind == IR_ATTR_INT);
        if (!want(v, ok, "attribute '%s' must be %s", a->key,
                  want_kind == IR_ATTR_INT ? "an integer" : want_kind == IR_ATTR_STR ? "a string" : "a number"))
            return false;
        /* the tuning knobs size buffers and unroll code: bounded, not merely integers */
        static const struct { const char *key; int64_t max; } knobs[] = {
            {"tile_m", 4096}, {"tile_n", 4096}, {"tile_unroll", 16}, {"tile_mc", 65536}, {"kv_block", 1024}};
        for (size_t n = 0; n < MOE_ARRAY_LEN(knobs); n++)
            if (!strcmp(a->key, knobs[n].key) &&
                !want(v, a->i >= 1 && a->i <= knobs[n].max, "attribute '%s' must be in 1..%lld, found %lld", a->key,
                      (long long)knobs[n].max, (long long)a->i))
                return false;
        if (!strcmp(a->key, "act_bf16") && !want(v, a->i == 0 || a->i == 1, "attribute 'act_bf16' must be 0 or 1"))
            return false;
        const IrAttr *act = ir_attr_get(i, "act_bf16");
        const IrAttr *kvd = ir_attr_get(i, "kv_dtype"), *heads = ir_attr_get(i, "heads");
        if (!strcmp(a->key, "amx") && i->op == IR_OP_ATTENTION &&
            !want(v, a->i == 0 || ((a->i == 1 || a->i == 2) &&
                                   (kvd ? kvd->kind == IR_ATTR_STR && !strcmp(kvd->s, "bf16")
                                        : i->in[1]->type.dtype == DT_BF16) &&
                                   i->in[0]->type.ndim == 2 && heads && heads->kind == IR_ATTR_INT &&
                                   heads->i > 0 && heads->i <= INT32_MAX &&
                                   i->in[0]->type.dims[1] % (32 * heads->i) == 0),
                  "attribute 'amx' on attention must be 0, or 1 (AMX tiles) or 2 (the bf16 dot product) with bf16 "
                  "keys and values (kv_dtype \"bf16\") and a head_dim that is a multiple of 32"))
            return false;
        if (!strcmp(a->key, "amx") && i->op != IR_OP_ATTENTION &&
            !want(v, a->i == 0 || (a->i == 1 && act && act->kind == IR_ATTR_INT && act->i == 1),
                  "attribute 'amx' must be 0, or 1 with act_bf16 = 1"))
            return false;
        if (!strcmp(a->key, "kv_dtype") && strcmp(a->s, "bf16") != 0 && strcmp(a->s, "f16") != 0) {
            char shown[64]; /* the IR text's string: shown escaped */
            str_escape(a->s, strlen(a->s), shown, sizeof shown);
            return want(v, false, "attribute 'kv_dtype' must be \"bf16\" or \"f16\", found \"%s\"", shown);
        }
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", info->attrs);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        if (!want(v, ir_attr_get(i, tok) != NULL, "missing attribute '%s'", tok)) return false;
    return true;
}

static bool check_instr(Verifier *v, const IrInstr *i, const bool *defined)
{
    const IrOpInfo *info = ir_op_info(i->op);
    if (!want(v, info->n_in < 0 || i->n_in == info->n_in, "takes %d operand%s, found %d", info->n_in,
              info->n_in == 1 ? "" : "s", i->n_in) ||
        !want(v, info->n_out < 0 || i->n_out == info->n_out, "has %d result%s, found %d", info->n_out,
              info->n_out == 1 ? "" : "s", i->n_out))
        return false;
    for (int k = 0; k < i->n_in; k++)
        if (!want(v, defined[i->in[k]->id], "operand %%%s is used before it is defined", i->in[k]->name))
            return false;
    return check_attrs(v, i) && check_op(v, i);
}

/* A value's bytes per token (T dimension set to 1) or in all, within IR_MAX_VALUE_BYTES. */
static bool value_size_ok(const IrValue *x, Diag *d)
{
    int64_t n = (int64_t)dtype_size(x->type.dtype);
    bool ok = true;
    for (int k = 0; k < x->type.ndim; k++) ok = ok && (x->type.dims[k] == IR_DIM_T || i64_mul_ok(n, x->type.dims[k], &n));
    if (ok && n <= IR_MAX_VALUE_BYTES) return true;
    diag_error(d, x->line, x->col, "%%%s takes more than 2^40 bytes%s", x->name,
               x->type.dims[0] == IR_DIM_T ? " per token" : "");
    return false;
}

bool ir_verify(const IrModule *m, Diag *d)
{
    bool sizes_ok = true;
    for (int k = 0; k < m->n_values; k++) sizes_ok = value_size_ok(m->values[k], d) && sizes_ok;
    if (!sizes_ok) return false; /* the checks below multiply sizes */
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
    char shown[96]; /* names are strings of the IR text: shown escaped */
    for (int k = 0; k < m->n_outputs; k++) {
        str_escape(m->outputs[k].name, strlen(m->outputs[k].name), shown, sizeof shown);
        if (!want(&v, defined[m->outputs[k].value->id], "output \"%s\" names an undefined value", shown)) ok = false;
    }
    str_escape(m->name, strlen(m->name), shown, sizeof shown);
    if (!want(&v, m->n_outputs > 0, "module \"%s\" has no outputs", shown)) ok = false;
    char why[256];
    const IrValue *where = NULL;
    if (ok && m->planned && !ir_plan_check(m, why, sizeof why, &where)) {
        diag_error(d, where->line, where->col, "memory plan: %s", why);
        ok = false;
    }
    free(defined);
    return ok;
}

/* ---- the memory plan ------------------------------------------------------------------------------ */

bool ir_places_overlap(const IrValue *a, const IrValue *b, int64_t T)
{
    int64_t pa, fa, pb, fb;
    ir_value_bytes(a, &pa, &fa);
    ir_value_bytes(b, &pb, &fb);
    int64_t a0 = a->off_t * T + a->off_c, a1 = a0 + pa * T + fa;
    int64_t b0 = b->off_t * T + b->off_c, b1 = b0 + pb * T + fb;
    return a0 < b1 && b0 < a1;
}

/* Every result has a place that fits in the arena for T = 1, 3, 512; *where gets the first that does not. */
static bool plan_places_ok(const IrModule *m, const int64_t *Ts, size_t nT, char *why, size_t n, const IrValue **where)
{
    for (int a = 0; a < m->n_values; a++) {
        const IrValue *v = m->values[a];
        if (v->kind != IR_VAL_RESULT) continue;
        int64_t pa, fa;
        ir_value_bytes(v, &pa, &fa);
        for (size_t t = 0; t < nT; t++) {
            int64_t end = (v->off_t + pa) * Ts[t] + v->off_c + fa;
            if (!v->planned || end > m->arena_t * Ts[t] + m->arena_c) {
                snprintf(why, n, v->planned ? "%%%s does not fit in the arena at T = %lld"
                                            : "%%%s has no arena offset (expected @arena(PER_TOKEN, FIXED))",
                         v->name, (long long)Ts[t]);
                *where = v;
                return false;
            }
        }
    }
    return true;
}

/* v takes over src's place (ir_inplace_input): src dies where v is made, and both have one place. */
static bool same_place_inplace(const IrValue *src, const IrValue *v, const int *def, const int *last)
{
    int64_t ps, fs, pv, fv;
    ir_value_bytes(src, &ps, &fs);
    ir_value_bytes(v, &pv, &fv);
    return ir_inplace_input(v) == src && last[src->id] == def[v->id] && src->off_t == v->off_t &&
           src->off_c == v->off_c && ps == pv && fs == fv;
}

bool ir_plan_check(const IrModule *m, char *why, size_t n, const IrValue **where)
{
    static const int64_t Ts[] = {1, 3, 512};
    if (!plan_places_ok(m, Ts, MOE_ARRAY_LEN(Ts), why, n, where)) return false;
    int *def, *last;
    ir_liveness(m, &def, &last);
    bool ok = true;
    for (int a = 0; ok && a < m->n_values; a++) {
        const IrValue *va = m->values[a];
        for (int b = a + 1; ok && va->kind == IR_VAL_RESULT && b < m->n_values; b++) {
            const IrValue *vb = m->values[b];
            if (vb->kind != IR_VAL_RESULT || def[a] > last[b] || def[b] > last[a]) continue;
            if (same_place_inplace(va, vb, def, last) || same_place_inplace(vb, va, def, last)) continue;
            for (size_t t = 0; ok && t < MOE_ARRAY_LEN(Ts); t++)
                if (ir_places_overlap(va, vb, Ts[t])) {
                    snprintf(why, n, "%%%s and %%%s are alive together and overlap in the arena at T = %lld",
                             va->name, vb->name, (long long)Ts[t]);
                    *where = vb->line ? vb : va;
                    ok = false;
                }
        }
    }
    free(def);
    free(last);
    return ok;
}
