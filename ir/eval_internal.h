/* eval_internal.h — what the interpreter's files share: the evaluation state and its helpers. */
#ifndef MOEPPC_EVAL_INTERNAL_H
#define MOEPPC_EVAL_INTERNAL_H

#include "ir/ir.h"

#include <math.h>

typedef struct {
    const IrModule *m;
    const WeightSet *w;
    eval_precision prec;
    int64_t T;
    double **vals;            /* [n_values]: activations (ints stored exactly as doubles) */
    const Tensor **params;    /* [n_values]: bound checkpoint tensors */
    double macs_linear;       /* multiply-adds in linear ops */
    double macs_grouped;      /* multiply-adds in grouped GEMMs: only the rows routed there */
    RtError *err;
} Eval;

/* Rounding of one arithmetic step: f32 steps in EVAL_F32 mode, none in EVAL_F64. */
static inline double step(const Eval *ev, double v) { return ev->prec == EVAL_F32 ? (double)(float)v : v; }

/* Rounding of a stored value to its type: bf16/f16 always (the model's own precision), f32 only in
 * EVAL_F32 mode. */
static inline double store(const Eval *ev, moe_dtype t, double v)
{
    if (t == DT_BF16 || t == DT_F16 || (t == DT_F32 && ev->prec == EVAL_F32)) return dtype_round(t, v);
    return v;
}

static inline int64_t ncols(const IrValue *v) { return v->type.ndim == 1 ? 1 : v->type.dims[v->type.ndim - 1]; }

/* silu(a) · b with silu(a) = a / (1 + e^-a) */
static inline double eval_swiglu(const Eval *ev, double a, double b)
{
    return step(ev, step(ev, a / step(ev, 1.0 + exp(-a))) * b);
}

/* Element i of a value that may be an activation or a param. */
static inline double eval_get(const Eval *ev, const IrValue *v, int64_t i)
{
    if (v->kind == IR_VAL_PARAM) return dtype_load(ev->params[v->id]->dtype, ev->params[v->id]->data, (size_t)i);
    return ev->vals[v->id][i];
}

/* A zeroed buffer for result k of i, registered in ev->vals; and its rounding to the result's type. */
double *eval_result(Eval *ev, const IrInstr *i, int k);
void eval_round_result(const Eval *ev, const IrInstr *i, int k);

void eval_gemm_rows(const Eval *ev, const IrInstr *i, const IrValue *w, const double *const *x_rows,
                    double *const *out_rows, int64_t n_rows);
void eval_softmax_row(const Eval *ev, const double *z, double *o, int64_t n);
void eval_logits_norm(const Eval *ev, const double *z, double *o, int64_t n, double target);
void eval_rms_norm_row(const Eval *ev, const double *x, const IrValue *w, double eps, int64_t D, double *out);
void eval_topk_row(const double *z, int64_t E, int64_t k, double *vals, double *ids);
void eval_renorm_row(const Eval *ev, const double *w, double *o, int64_t n);
/* eval_moe.c: runs i if it is one of the fused and sparse MoE ops (making its results); else false */
bool eval_moe(Eval *ev, const IrInstr *i);

#endif
