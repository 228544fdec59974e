/* eval_moe.c — the interpreter for the fused and sparse MoE ops the passes write (moe.route,
 * moe.combine, moe.dispatch, moe.grouped_up/down, add_rms_norm). Each rounds exactly where the dense
 * form it replaces rounds, so the two forms agree to the last bits that floating-point reassociation
 * allows (the order of the expert sum changes; nothing else). */
#include "ir/eval_internal.h"

#include <stdlib.h>
#include <string.h>

/* out[T, N] = x[T, K] · W^T for a whole activation, rounded to dtype t per element. */
static double *gemm_all(const Eval *ev, const IrValue *w, const double *x, moe_dtype t)
{
    int64_t N = w->type.dims[0], K = w->type.dims[1], T = ev->T;
    double *out = xcalloc((size_t)(T * N), sizeof *out);
    const double **xr = xmalloc((size_t)T * sizeof *xr);
    double **orow = xmalloc((size_t)T * sizeof *orow);
    for (int64_t r = 0; r < T; r++) xr[r] = x + r * K, orow[r] = out + r * N;
    eval_gemm_rows(ev, NULL, w, xr, orow, T);
    for (int64_t j = 0; j < T * N; j++) out[j] = store(ev, t, out[j]);
    free(xr);
    free(orow);
    return out;
}

static double *scaled_input(const Eval *ev, const IrValue *x, double s)
{
    int64_t n = ev->T * ncols(x);
    double *u = xmalloc((size_t)n * sizeof *u);
    for (int64_t j = 0; j < n; j++) u[j] = s == 1.0 ? ev->vals[x->id][j] : store(ev, x->type.dtype, step(ev, s * ev->vals[x->id][j]));
    return u;
}

/* z = router(x) [+ Wg · r]: the logits carried to the next MoE layer. */
static double *route_logits(const Eval *ev, const IrInstr *i, int *at)
{
    const IrValue *x = i->in[0];
    int64_t E = ir_attr_int(i, "experts"), T = ev->T;
    double *z;
    if (ir_attr_int(i, "router_layers") == 2) {
        double *h = gemm_all(ev, i->in[1], ev->vals[x->id], DT_F32);
        int64_t n = T * i->in[1]->type.dims[0];
        for (int64_t j = 0; j < n; j++) h[j] = store(ev, DT_F32, tanh(h[j]));
        z = gemm_all(ev, i->in[2], h, DT_F32);
        free(h);
        *at = 3;
    } else {
        z = gemm_all(ev, i->in[1], ev->vals[x->id], DT_F32);
        *at = 2;
    }
    if (ir_attr_int(i, "residual")) { /* Wg in the model dtype on r rounded to it (SEMANTICS §4) */
        moe_dtype dt = x->type.dtype;
        double *rd = xmalloc((size_t)(T * E) * sizeof *rd);
        for (int64_t j = 0; j < T * E; j++) rd[j] = store(ev, dt, ev->vals[i->in[*at]->id][j]);
        double *g = gemm_all(ev, i->in[*at + 1], rd, dt);
        for (int64_t j = 0; j < T * E; j++) z[j] = store(ev, DT_F32, step(ev, z[j] + g[j]));
        free(rd);
        free(g);
        *at += 2;
    }
    return z;
}

/* Gate weights and ids of one token from its logits, in either gating mode. */
static void route_gate_row(const Eval *ev, const IrInstr *i, const double *z_in, double *w, double *ids)
{
    int64_t E = ir_attr_int(i, "experts"), k = ir_attr_int(i, "k");
    double norm_std = ir_attr_float(i, "norm_std");
    double *z = xmalloc((size_t)E * sizeof *z), *p = xmalloc((size_t)E * sizeof *p), vals[64];
    MOE_ASSERT(k <= 64);
    memcpy(z, z_in, (size_t)E * sizeof *z);
    if (norm_std > 0) eval_logits_norm(ev, z_in, z, E, norm_std);
    for (int64_t e = 0; e < E; e++) z[e] = store(ev, DT_F32, z[e]);
    if (ir_attr_int(i, "gating") == 0) {
        eval_softmax_row(ev, z, p, E);
        for (int64_t e = 0; e < E; e++) p[e] = store(ev, DT_F32, p[e]);
        eval_topk_row(p, E, k, vals, ids);
        int64_t lo = ir_attr_int(i, "zero_lo"), hi = ir_attr_int(i, "zero_hi");
        for (int64_t j = 0; j < k; j++)
            if (ids[j] >= (double)lo && ids[j] < (double)hi) vals[j] = 0.0;
        eval_renorm_row(ev, vals, w, k);
    } else {
        eval_topk_row(z, E, k, vals, ids);
        eval_softmax_row(ev, vals, w, k);
    }
    for (int64_t j = 0; j < k; j++) w[j] = store(ev, DT_F32, w[j]);
    free(z);
    free(p);
}

static void eval_route(Eval *ev, const IrInstr *i)
{
    int64_t E = ir_attr_int(i, "experts"), k = ir_attr_int(i, "k"), nc = ir_attr_int(i, "n_const");
    double *w = eval_result(ev, i, 0), *ids = eval_result(ev, i, 1), *logits = eval_result(ev, i, 2);
    int at;
    double *z = route_logits(ev, i, &at);
    memcpy(logits, z, (size_t)(ev->T * E) * sizeof *z);
    for (int64_t t = 0; t < ev->T; t++) route_gate_row(ev, i, z + t * E, w + t * k, ids + t * k);
    free(z);
    if (!nc) return;
    /* the constant experts' α = softmax(Wc · u), u = s·x */
    double *alpha = eval_result(ev, i, 3);
    double *u = scaled_input(ev, i->in[0], ir_attr_float(i, "s"));
    for (int64_t c = 0; c < nc; c++) {
        double *al = gemm_all(ev, i->in[at + c], u, DT_F32);
        for (int64_t t = 0; t < ev->T; t++) {
            double a[2];
            eval_softmax_row(ev, al + 2 * t, a, 2);
            alpha[t * 2 * nc + 2 * c] = a[0];
            alpha[t * 2 * nc + 2 * c + 1] = a[1];
        }
        free(al);
    }
    free(u);
}

/* y = Σ over a token's copy and constant picks, in expert order as the dense form adds them. */
static void eval_combine(Eval *ev, const IrInstr *i, double *y)
{
    const IrValue *x = i->in[0];
    int64_t D = ncols(x), k = ncols(i->in[1]), nc = ir_attr_int(i, "n_const");
    int64_t clo = ir_attr_int(i, "const_lo"), plo = ir_attr_int(i, "copy_lo"), phi = ir_attr_int(i, "copy_hi");
    double *u = scaled_input(ev, x, ir_attr_float(i, "s"));
    const double *w = ev->vals[i->in[1]->id], *ids = ev->vals[i->in[2]->id];
    moe_dtype dt = x->type.dtype;
    for (int64_t t = 0; t < ev->T; t++) {
        bool done[64] = {false};
        MOE_ASSERT(k <= 64);
        for (int64_t n = 0; n < k; n++) {
            int64_t j = -1; /* the next pick in expert order */
            for (int64_t q = 0; q < k; q++)
                if (!done[q] && (j < 0 || ids[t * k + q] < ids[t * k + j])) j = q;
            done[j] = true;
            int64_t e = (int64_t)ids[t * k + j];
            double wj = w[t * k + j];
            const double *ur = u + t * D;
            double *yr = y + t * D;
            if (e >= plo && e < phi) {
                for (int64_t d = 0; d < D; d++) yr[d] = step(ev, yr[d] + wj * ur[d]);
            } else if (e >= clo && e < clo + nc) {
                const double *al = ev->vals[i->in[3]->id] + t * 2 * nc + 2 * (e - clo);
                const IrValue *v = i->in[4 + (e - clo)];
                for (int64_t d = 0; d < D; d++) {
                    double o = store(ev, dt, step(ev, step(ev, al[0] * ur[d]) + step(ev, al[1] * eval_get(ev, v, d))));
                    yr[d] = step(ev, yr[d] + wj * o);
                }
            }
        }
    }
    free(u);
}

/* Stable counting sort of the picks t·k+j by FFN expert; zero-computation picks are left out. */
static void eval_dispatch(Eval *ev, const IrInstr *i)
{
    int64_t E = ir_attr_int(i, "experts"), k = ncols(i->in[0]), n = ev->T * k;
    const double *ids = ev->vals[i->in[0]->id];
    double *off = eval_result(ev, i, 0), *slots = eval_result(ev, i, 1);
    for (int64_t p = 0; p < n; p++)
        if (ids[p] < (double)E) off[(int64_t)ids[p] + 1] += 1;
    for (int64_t e = 0; e < E; e++) off[e + 1] += off[e];
    int64_t *fill = xcalloc((size_t)E, sizeof *fill);
    for (int64_t p = 0; p < n; p++) slots[p] = -1;
    for (int64_t p = 0; p < n; p++) {
        if (ids[p] >= (double)E) continue;
        int64_t e = (int64_t)ids[p];
        slots[(int64_t)off[e] + fill[e]++] = (double)p;
    }
    free(fill);
}

/* For expert e, the slot range [off[e], off[e+1]) and the token row of each slot. */
static int64_t group_rows(const Eval *ev, const IrInstr *i, int64_t e, int64_t *first)
{
    const double *off = ev->vals[i->in[1]->id];
    *first = (int64_t)off[e];
    return (int64_t)off[e + 1] - (int64_t)off[e];
}

static void eval_grouped_up(Eval *ev, const IrInstr *i, double *h)
{
    const IrValue *x = i->in[0];
    int64_t E = ir_attr_int(i, "experts"), D = ncols(x), k = ncols(i->in[2]), I = i->out[0]->type.dims[2];
    const double *slots = ev->vals[i->in[2]->id];
    moe_dtype dt = x->type.dtype;
    const double **xr = xmalloc((size_t)(ev->T * k) * sizeof *xr);
    double **orow = xmalloc((size_t)(ev->T * k) * sizeof *orow);
    double *ab = xmalloc((size_t)(ev->T * k * 2 * I) * sizeof *ab);
    for (int64_t e = 0; e < E; e++) {
        int64_t s0, n = group_rows(ev, i, e, &s0);
        for (int64_t r = 0; r < n; r++)
            xr[r] = ev->vals[x->id] + ((int64_t)slots[s0 + r] / k) * D, orow[r] = ab + r * 2 * I;
        eval_gemm_rows(ev, i, i->in[3 + e], xr, orow, n);
        for (int64_t r = 0; r < n; r++)
            for (int64_t c = 0; c < I; c++)
                h[(s0 + r) * I + c] = eval_swiglu(ev, store(ev, dt, orow[r][c]), store(ev, dt, orow[r][I + c]));
        ev->macs_grouped += (double)n * (double)(2 * I) * (double)D;
    }
    free(xr);
    free(orow);
    free(ab);
}

static void eval_grouped_down(Eval *ev, const IrInstr *i, double *y)
{
    const IrValue *hv = i->in[0];
    int64_t E = ir_attr_int(i, "experts"), k = hv->type.dims[1], I = hv->type.dims[2], D = ncols(i->in[4]);
    const double *slots = ev->vals[i->in[2]->id], *w = ev->vals[i->in[3]->id], *h = ev->vals[hv->id];
    moe_dtype dt = hv->type.dtype;
    memcpy(y, ev->vals[i->in[4]->id], (size_t)(ev->T * D) * sizeof *y);
    const double **xr = xmalloc((size_t)(ev->T * k) * sizeof *xr);
    double **orow = xmalloc((size_t)(ev->T * k) * sizeof *orow);
    double *o = xmalloc((size_t)(ev->T * k * D) * sizeof *o);
    for (int64_t e = 0; e < E; e++) {
        int64_t s0, n = group_rows(ev, i, e, &s0);
        for (int64_t r = 0; r < n; r++) xr[r] = h + (s0 + r) * I, orow[r] = o + r * D;
        eval_gemm_rows(ev, i, i->in[5 + e], xr, orow, n);
        for (int64_t r = 0; r < n; r++) {
            int64_t p = (int64_t)slots[s0 + r], t = p / k;
            for (int64_t d = 0; d < D; d++) y[t * D + d] = step(ev, y[t * D + d] + w[p] * store(ev, dt, orow[r][d]));
        }
        ev->macs_grouped += (double)n * (double)D * (double)I;
    }
    free(xr);
    free(orow);
    free(o);
}

static void eval_add_rms_norm(Eval *ev, const IrInstr *i)
{
    const IrValue *a = i->in[0];
    int64_t D = ncols(a), n = ev->T * D;
    double *sum = eval_result(ev, i, 0), *normed = eval_result(ev, i, 1);
    for (int64_t j = 0; j < n; j++) sum[j] = store(ev, a->type.dtype, step(ev, ev->vals[a->id][j] + ev->vals[i->in[1]->id][j]));
    for (int64_t t = 0; t < ev->T; t++)
        eval_rms_norm_row(ev, sum + t * D, i->in[2], ir_attr_float(i, "eps"), D, normed + t * D);
}

bool eval_moe(Eval *ev, const IrInstr *i)
{
    switch (i->op) {
    case IR_OP_MOE_ROUTE: eval_route(ev, i); break;
    case IR_OP_MOE_COMBINE: eval_combine(ev, i, eval_result(ev, i, 0)); break;
    case IR_OP_MOE_DISPATCH: eval_dispatch(ev, i); break;
    case IR_OP_MOE_GROUPED_UP: eval_grouped_up(ev, i, eval_result(ev, i, 0)); break;
    case IR_OP_MOE_GROUPED_DOWN: eval_grouped_down(ev, i, eval_result(ev, i, 0)); break;
    case IR_OP_ADD_RMS_NORM: eval_add_rms_norm(ev, i); break;
    default: return false;
    }
    return true;
}
