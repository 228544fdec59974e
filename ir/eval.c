/* eval.c — the reference interpreter: executes any IR module, op by op, in plain C. Slow on purpose:
 * every value is a double array, every op a direct transcription of SEMANTICS.md. In EVAL_F64 mode
 * it is the project's ground truth; in EVAL_F32 mode every step is rounded as an f32 kernel rounds. */
#include "ir/eval_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

double *eval_result(Eval *ev, const IrInstr *i, int k)
{
    int64_t n = ir_type_numel(&i->out[k]->type, ev->T);
    double *p = xcalloc((size_t)n, sizeof *p);
    ev->vals[i->out[k]->id] = p;
    return p;
}

void eval_round_result(const Eval *ev, const IrInstr *i, int k)
{
    const IrValue *v = i->out[k];
    double *p = ev->vals[v->id];
    int64_t n = ir_type_numel(&v->type, ev->T);
    for (int64_t j = 0; j < n; j++) p[j] = store(ev, v->type.dtype, p[j]);
}

static bool eval_embed(Eval *ev, const IrInstr *i, double *out)
{
    const IrValue *tab = i->in[0];
    int64_t V = tab->type.dims[0], D = tab->type.dims[1];
    for (int64_t t = 0; t < ev->T; t++) {
        double id = eval_get(ev, i->in[1], t);
        if (id < 0 || id >= (double)V) {
            snprintf(ev->err->msg, sizeof ev->err->msg, "token id %.0f at position %lld is outside the vocabulary [0, %lld)",
                     id, (long long)t, (long long)V);
            return false;
        }
        for (int64_t d = 0; d < D; d++) out[t * D + d] = eval_get(ev, tab, (int64_t)id * D + d);
    }
    return true;
}

/* One row: out = w ⊙ x / sqrt(mean(x²) + eps). */
void eval_rms_norm_row(const Eval *ev, const double *x, const IrValue *w, double eps, int64_t D, double *out)
{
    double ss = 0;
    for (int64_t d = 0; d < D; d++) ss = step(ev, ss + x[d] * x[d]);
    double r = step(ev, 1.0 / sqrt(step(ev, step(ev, ss / (double)D) + eps)));
    for (int64_t d = 0; d < D; d++) out[d] = step(ev, eval_get(ev, w, d) * step(ev, x[d] * r));
}

static void eval_rms_norm(Eval *ev, const IrInstr *i, double *out)
{
    int64_t D = ncols(i->in[0]);
    for (int64_t t = 0; t < ev->T; t++)
        eval_rms_norm_row(ev, ev->vals[i->in[0]->id] + t * D, i->in[1], ir_attr_float(i, "eps"), D, out + t * D);
}

/* out_rows[r][n] = Σ_k x_rows[r][k] · W[n, k] for the given rows; each weight row is converted
 * once and dotted with every row, so a dtype conversion costs N·K, not rows·N·K. An instruction
 * with act_bf16 = 1 multiplies its activations rounded to bf16 (the CPU's bf16 dot product). */
/* f32 dots of one weight row w with n_rows rows of x (row r at x + r * K), each in k order through
 * fmaf (the reference's rounding), four rows' chains at a time. Where the compiler can, also built for
 * FMA hosts (chosen at load), where fmaf is one instruction and not a call into libm: the same results,
 * the interpreter's GEMMs several times faster. */
#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
__attribute__((target_clones("fma", "default")))
#endif
static void dot_rows_f32(const float *x, const float *w, int64_t K, int64_t n_rows, float *out)
{
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const float *a = x + r * K, *b = a + K, *c = b + K, *d = c + K;
        float sa = 0, sb = 0, sc = 0, sd = 0;
        for (int64_t k = 0; k < K; k++)
            sa = fmaf(a[k], w[k], sa), sb = fmaf(b[k], w[k], sb), sc = fmaf(c[k], w[k], sc), sd = fmaf(d[k], w[k], sd);
        out[r] = sa, out[r + 1] = sb, out[r + 2] = sc, out[r + 3] = sd;
    }
    for (; r < n_rows; r++) {
        const float *a = x + r * K;
        float s = 0;
        for (int64_t k = 0; k < K; k++) s = fmaf(a[k], w[k], s);
        out[r] = s;
    }
}

void eval_gemm_rows(const Eval *ev, const IrInstr *i, const IrValue *w, const double *const *x_rows,
                    double *const *out_rows, int64_t n_rows)
{
    const IrAttr *act = i ? ir_attr_get(i, "act_bf16") : NULL;
    if (act && act->i) {
        int64_t K = w->type.dims[1];
        double *xb = xmalloc((size_t)(n_rows * K + 1) * sizeof *xb);
        const double **rows = xmalloc((size_t)(n_rows + 1) * sizeof *rows);
        for (int64_t r = 0; r < n_rows; r++) {
            for (int64_t k = 0; k < K; k++) xb[r * K + k] = dtype_round(DT_BF16, x_rows[r][k]);
            rows[r] = xb + r * K;
        }
        eval_gemm_rows(ev, NULL, w, rows, out_rows, n_rows);
        free(rows);
        free(xb);
        return;
    }
    int64_t N = w->type.dims[0], K = w->type.dims[1];
    if (ev->prec == EVAL_F32) { /* every operand rounded to f32 once, the dots in k order (fmaf) */
        float *xf = xmalloc((size_t)(n_rows * K + 1) * sizeof *xf), *wf = xmalloc((size_t)(K + 1) * sizeof *wf);
        float *dots = xmalloc((size_t)(n_rows + 1) * sizeof *dots);
        for (int64_t r = 0; r < n_rows; r++)
            for (int64_t k = 0; k < K; k++) xf[r * K + k] = (float)x_rows[r][k];
        for (int64_t n = 0; n < N && n_rows > 0; n++) {
            for (int64_t k = 0; k < K; k++) wf[k] = (float)eval_get(ev, w, n * K + k);
            dot_rows_f32(xf, wf, K, n_rows, dots);
            for (int64_t r = 0; r < n_rows; r++) out_rows[r][n] = dots[r];
        }
        free(xf), free(wf), free(dots);
        return;
    }
    double *row = xmalloc((size_t)K * sizeof *row);
    for (int64_t n = 0; n < N && n_rows > 0; n++) {
        for (int64_t k = 0; k < K; k++) row[k] = eval_get(ev, w, n * K + k);
        for (int64_t r = 0; r < n_rows; r++) {
            const double *xr = x_rows[r];
            double acc = 0;
            for (int64_t k = 0; k < K; k++) acc += xr[k] * row[k];
            out_rows[r][n] = acc;
        }
    }
    free(row);
}

static void eval_linear(Eval *ev, const IrInstr *i, double *out)
{
    const IrValue *x = i->in[0], *w = i->in[1];
    int64_t K = ncols(x), N = w->type.dims[0];
    const double **xr = xmalloc((size_t)ev->T * sizeof *xr);
    double **orow = xmalloc((size_t)ev->T * sizeof *orow);
    for (int64_t t = 0; t < ev->T; t++) xr[t] = ev->vals[x->id] + t * K, orow[t] = out + t * N;
    eval_gemm_rows(ev, i, w, xr, orow, ev->T);
    free(xr);
    free(orow);
    ev->macs_linear += (double)ev->T * (double)N * (double)K;
}

/* Half-split ("rotate_half") RoPE: the pair (z_i, z_{i+hd/2}) rotates by pos · theta^(-2i/hd). */
static void eval_rope(Eval *ev, const IrInstr *i, double *out)
{
    const IrValue *x = i->in[0];
    int64_t C = ncols(x), H = ir_attr_int(i, "heads"), hd = C / H, half = hd / 2;
    double theta = ir_attr_float(i, "theta");
    for (int64_t t = 0; t < ev->T; t++) {
        double pos = eval_get(ev, i->in[1], t);
        for (int64_t h = 0; h < H; h++) {
            const double *z = ev->vals[x->id] + t * C + h * hd;
            double *o = out + t * C + h * hd;
            for (int64_t j = 0; j < half; j++) {
                double ang = pos * pow(theta, -2.0 * (double)j / (double)hd);
                double c = step(ev, cos(ang)), s = step(ev, sin(ang));
                o[j] = step(ev, step(ev, z[j] * c) - step(ev, z[j + half] * s));
                o[j + half] = step(ev, step(ev, z[j + half] * c) + step(ev, z[j] * s));
            }
        }
    }
}

/* Causal attention by position: query t sees key j when pos[j] <= pos[t]. With kv_dtype (widened IR)
 * the keys and values as the KV cache holds them: rounded to that type. */
static void eval_attention(Eval *ev, const IrInstr *i, double *out)
{
    const IrValue *q = i->in[0];
    int64_t H = ir_attr_int(i, "heads"), Hk = ir_attr_int(i, "kv_heads");
    int64_t hd = ncols(q) / H, group = H / Hk, T = ev->T, kvc = ncols(i->in[1]);
    double scale = 1.0 / sqrt((double)hd);
    double *p = xmalloc((size_t)T * sizeof *p), *held[2] = {NULL, NULL};
    const double *kv[2] = {ev->vals[i->in[1]->id], ev->vals[i->in[2]->id]};
    const IrAttr *kvd = ir_attr_get(i, "kv_dtype");
    moe_dtype kdt;
    if (kvd && dtype_parse(kvd->s, &kdt))
        for (int c = 0; c < 2; c++) {
            held[c] = xmalloc((size_t)(T * kvc) * sizeof *held[c]);
            for (int64_t e = 0; e < T * kvc; e++) held[c][e] = dtype_round(kdt, kv[c][e]);
            kv[c] = held[c];
        }
    /* amx: q rounded to bf16, and each weight, against the row's max, before the sum and the values */
    const IrAttr *amx = ir_attr_get(i, "amx");
    bool bf16 = amx && amx->i;
    double *qh = bf16 ? xmalloc((size_t)(hd + 1) * sizeof *qh) : NULL;
    for (int64_t t = 0; t < T; t++) {
        double pt = eval_get(ev, i->in[3], t);
        for (int64_t h = 0; h < H; h++) {
            const double *qr = ev->vals[q->id] + t * ncols(q) + h * hd;
            if (bf16) {
                for (int64_t d = 0; d < hd; d++) qh[d] = dtype_round(DT_BF16, qr[d]);
                qr = qh;
            }
            int64_t kh = h / group;
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < T; j++) {
                p[j] = NAN;
                if (eval_get(ev, i->in[3], j) > pt) continue;
                const double *kr = kv[0] + j * kvc + kh * hd;
                double s = 0;
                for (int64_t d = 0; d < hd; d++) s = step(ev, s + qr[d] * kr[d]);
                p[j] = step(ev, s * scale);
                if (p[j] > mx) mx = p[j];
            }
            for (int64_t j = 0; j < T; j++)
                if (!isnan(p[j])) {
                    p[j] = step(ev, exp(p[j] - mx));
                    if (bf16) p[j] = dtype_round(DT_BF16, p[j]);
                    sum = step(ev, sum + p[j]);
                }
            double *o = out + t * ncols(q) + h * hd;
            for (int64_t d = 0; d < hd; d++) {
                double acc = 0;
                for (int64_t j = 0; j < T; j++)
                    if (!isnan(p[j])) acc = step(ev, acc + p[j] * kv[1][j * kvc + kh * hd + d]);
                o[d] = step(ev, acc / sum);
            }
        }
    }
    free(p);
    free(qh);
    free(held[0]);
    free(held[1]);
}

void eval_softmax_row(const Eval *ev, const double *z, double *o, int64_t n)
{
    double mx = -INFINITY, sum = 0;
    for (int64_t j = 0; j < n; j++) mx = z[j] > mx ? z[j] : mx;
    for (int64_t j = 0; j < n; j++) sum = step(ev, sum + (o[j] = step(ev, exp(z[j] - mx))));
    for (int64_t j = 0; j < n; j++) o[j] = step(ev, o[j] / sum);
}

/* z / (std(z) / target), std with Bessel's correction; a row with zero spread is left as it is. */
void eval_logits_norm(const Eval *ev, const double *z, double *o, int64_t n, double target)
{
    double mean = 0, var = 0;
    for (int64_t j = 0; j < n; j++) mean = step(ev, mean + z[j]);
    mean = step(ev, mean / (double)n);
    for (int64_t j = 0; j < n; j++) var = step(ev, var + (z[j] - mean) * (z[j] - mean));
    double sd = n > 1 ? step(ev, sqrt(step(ev, var / (double)(n - 1)))) : 0;
    for (int64_t j = 0; j < n; j++) o[j] = sd > 0 ? step(ev, z[j] / step(ev, sd / target)) : z[j];
}

/* Top-k of one row by repeated scans; a strict '>' keeps the lower index first on ties. */
void eval_topk_row(const double *z, int64_t E, int64_t k, double *vals, double *ids)
{
    bool *taken = xcalloc((size_t)E, sizeof *taken);
    for (int64_t j = 0; j < k; j++) {
        int64_t best = -1;
        for (int64_t e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || z[e] > z[best])) best = e;
        taken[best] = true;
        vals[j] = z[best];
        ids[j] = (double)best;
    }
    free(taken);
}

static void eval_topk(const Eval *ev, const IrInstr *i, double *vals, double *ids)
{
    int64_t E = ncols(i->in[0]), k = ir_attr_int(i, "k");
    for (int64_t t = 0; t < ev->T; t++) eval_topk_row(ev->vals[i->in[0]->id] + t * E, E, k, vals + t * k, ids + t * k);
}

/* w / sum(w); a row whose weights are all 0 (every pick a zero expert) stays 0, never NaN. */
void eval_renorm_row(const Eval *ev, const double *w, double *o, int64_t n)
{
    double sum = 0;
    for (int64_t j = 0; j < n; j++) sum = step(ev, sum + w[j]);
    for (int64_t j = 0; j < n; j++) o[j] = sum != 0 ? step(ev, w[j] / sum) : 0.0;
}

static void eval_rowwise(Eval *ev, const IrInstr *i, double *out)
{
    const IrValue *x = i->in[0];
    int64_t n = ncols(x);
    for (int64_t t = 0; t < ev->T; t++) {
        const double *z = ev->vals[x->id] + t * n;
        double *o = out + t * n;
        if (i->op == IR_OP_SOFTMAX) {
            eval_softmax_row(ev, z, o, n);
        } else if (i->op == IR_OP_LOGITS_NORM) {
            eval_logits_norm(ev, z, o, n, ir_attr_float(i, "std"));
        } else {
            eval_renorm_row(ev, z, o, n);
        }
    }
}

static void eval_gating(Eval *ev, const IrInstr *i, double *out)
{
    const double *w = ev->vals[i->in[0]->id], *ids = ev->vals[i->in[1]->id];
    int64_t k = ncols(i->in[0]);
    if (i->op == IR_OP_MASK_EXPERTS) {
        double lo = (double)ir_attr_int(i, "lo"), hi = (double)ir_attr_int(i, "hi");
        for (int64_t j = 0; j < ev->T * k; j++) out[j] = (ids[j] >= lo && ids[j] < hi) ? 0.0 : w[j];
    } else { /* GATE_DENSE */
        int64_t E = ir_attr_int(i, "experts");
        for (int64_t t = 0; t < ev->T; t++)
            for (int64_t j = 0; j < k; j++) {
                int64_t e = (int64_t)ids[t * k + j];
                MOE_ASSERT(e >= 0 && e < E);
                out[t * E + e] = step(ev, out[t * E + e] + w[t * k + j]);
            }
    }
}

static void eval_experts(Eval *ev, const IrInstr *i, double *out)
{
    const IrValue *x = i->in[0];
    int64_t D = ncols(x);
    const double *u = ev->vals[x->id];
    if (i->op == IR_OP_CONST_MIX) {
        const double *al = ev->vals[i->in[1]->id];
        for (int64_t t = 0; t < ev->T; t++)
            for (int64_t d = 0; d < D; d++)
                out[t * D + d] = step(ev, step(ev, al[2 * t] * u[t * D + d]) + step(ev, al[2 * t + 1] * eval_get(ev, i->in[2], d)));
        return;
    }
    const double *G = ev->vals[i->in[1]->id], *o = ev->vals[i->in[2]->id];
    int64_t E = ncols(i->in[1]), e = ir_attr_int(i, "expert");
    for (int64_t t = 0; t < ev->T; t++)
        for (int64_t d = 0; d < D; d++) out[t * D + d] = step(ev, u[t * D + d] + G[t * E + e] * o[t * D + d]);
}

static void eval_elementwise(Eval *ev, const IrInstr *i, double *out)
{
    const IrValue *x = i->in[0];
    int64_t n = ir_type_numel(&x->type, ev->T);
    const double *a = ev->vals[x->id], *b = i->n_in > 1 ? ev->vals[i->in[1]->id] : NULL;
    switch (i->op) {
    case IR_OP_ADD: for (int64_t j = 0; j < n; j++) out[j] = step(ev, a[j] + b[j]); break;
    case IR_OP_SCALE: {
        double s = ir_attr_float(i, "s");
        for (int64_t j = 0; j < n; j++) out[j] = step(ev, s * a[j]);
        break;
    }
    case IR_OP_TANH: for (int64_t j = 0; j < n; j++) out[j] = step(ev, tanh(a[j])); break;
    case IR_OP_SWIGLU:
        for (int64_t j = 0; j < n; j++) out[j] = eval_swiglu(ev, a[j], b[j]);
        break;
    case IR_OP_CONVERT: memcpy(out, a, (size_t)n * sizeof *out); break;
    case IR_OP_SLICE: {
        int64_t C = ncols(x), s = ir_attr_int(i, "start"), len = ir_attr_int(i, "len");
        for (int64_t t = 0; t < ev->T; t++) memcpy(out + t * len, a + t * C + s, (size_t)len * sizeof *out);
        break;
    }
    default: MOE_ASSERT(!"not an elementwise op");
    }
}

static bool eval_instr(Eval *ev, const IrInstr *i)
{
    if (eval_moe(ev, i)) { /* the fused and sparse MoE ops make their own results */
        for (int k = 0; k < i->n_out; k++) eval_round_result(ev, i, k);
        return true;
    }
    double *out = eval_result(ev, i, 0);
    switch (i->op) {
    case IR_OP_EMBED:
        if (!eval_embed(ev, i, out)) return false;
        break;
    case IR_OP_RMS_NORM: eval_rms_norm(ev, i, out); break;
    case IR_OP_LINEAR: eval_linear(ev, i, out); break;
    case IR_OP_ROPE: eval_rope(ev, i, out); break;
    case IR_OP_ATTENTION: eval_attention(ev, i, out); break;
    case IR_OP_ZEROS: break;
    case IR_OP_SOFTMAX:
    case IR_OP_LOGITS_NORM:
    case IR_OP_RENORM: eval_rowwise(ev, i, out); break;
    case IR_OP_TOPK: eval_topk(ev, i, out, eval_result(ev, i, 1)); break;
    case IR_OP_MASK_EXPERTS:
    case IR_OP_GATE_DENSE: eval_gating(ev, i, out); break;
    case IR_OP_CONST_MIX:
    case IR_OP_GATE_ACCUM: eval_experts(ev, i, out); break;
    default: eval_elementwise(ev, i, out); break;
    }
    for (int k = 0; k < i->n_out; k++) eval_round_result(ev, i, k);
    return true;
}

static bool bind_params(Eval *ev)
{
    for (int k = 0; k < ev->m->n_values; k++) {
        const IrValue *v = ev->m->values[k];
        if (v->kind != IR_VAL_PARAM) continue;
        const Tensor *t = weights_find(ev->w, v->tensor);
        bool ok = t && t->dtype == v->type.dtype && t->ndim == v->type.ndim;
        for (int d = 0; ok && d < t->ndim; d++) ok = t->shape[d] == v->type.dims[d];
        if (!ok) {
            snprintf(ev->err->msg, sizeof ev->err->msg, "%s: %s for %%%s",
                     v->tensor, t ? "shape or dtype differs from the IR's" : "missing tensor", v->name);
            return false;
        }
        if (!weights_data(ev->w, t, ev->err) && t->nbytes) return false; /* (one in two parts: stacked once) */
        ev->params[k] = t;
    }
    return true;
}

/* ids and pos by name, every other input (f32 [T, cols]) from `in`; false if one is not given. */
static bool bind_inputs(Eval *ev, const int32_t *ids, const int32_t *pos, const EvalInput *in, int n_in)
{
    for (int k = 0; k < ev->m->n_values; k++) {
        const IrValue *v = ev->m->values[k];
        if (v->kind != IR_VAL_INPUT) continue;
        int64_t n = ir_type_numel(&v->type, ev->T);
        const int32_t *src = strcmp(v->name, "pos") == 0 ? pos : strcmp(v->name, "ids") == 0 ? ids : NULL;
        const float *f = NULL;
        for (int j = 0; j < n_in && !src && !f; j++)
            if (strcmp(in[j].name, v->name) == 0) f = in[j].data;
        if (!src && !f) {
            snprintf(ev->err->msg, sizeof ev->err->msg, "no data for input %%%s", v->name);
            return false;
        }
        double *p = xcalloc((size_t)n, sizeof *p);
        for (int64_t j = 0; j < n; j++) p[j] = src ? src[j] : store(ev, v->type.dtype, f[j]);
        ev->vals[k] = p;
    }
    return true;
}

static void collect_outputs(Eval *ev, EvalResult *out)
{
    out->n_outputs = ev->m->n_outputs;
    out->outputs = xcalloc((size_t)out->n_outputs, sizeof *out->outputs);
    for (int k = 0; k < ev->m->n_outputs; k++) {
        const IrValue *v = ev->m->outputs[k].value;
        EvalTensor *o = &out->outputs[k];
        o->name = xstrdup(ev->m->outputs[k].name); /* the result outlives the module */
        o->type = v->type;
        if (o->type.dims[0] == IR_DIM_T) o->type.dims[0] = ev->T;
        size_t n = (size_t)ir_type_numel(&v->type, ev->T);
        o->data = xmalloc(n * sizeof *o->data);
        for (size_t j = 0; j < n; j++) o->data[j] = eval_get(ev, v, (int64_t)j);
    }
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double numel_f64(const IrType *t, int64_t T) /* in double: no overflow for any shape */
{
    double n = 1;
    for (int i = 0; i < t->ndim; i++) n *= (double)(t->dims[i] == IR_DIM_T ? T : t->dims[i]);
    return n;
}

double ir_eval_bytes(const IrModule *m, int64_t T)
{
    double n = 0;
    for (int k = 0; k < m->n_values; k++)
        if (m->values[k]->kind != IR_VAL_PARAM) n += numel_f64(&m->values[k]->type, T);
    for (int k = 0; k < m->n_outputs; k++) n += numel_f64(&m->outputs[k].value->type, T);
    return n * (double)sizeof(double);
}

static bool eval_run(const IrModule *m, const WeightSet *w, const int32_t *ids, const int32_t *pos,
                     const EvalInput *in, int n_in, int64_t T, eval_precision prec, EvalResult *out, RtError *err)
{
    double need = ir_eval_bytes(m, T), have = mem_available_bytes();
    if (need > 0.9 * have) {
        char a[32], b[32];
        str_bytes(need, a, sizeof a), str_bytes(have, b, sizeof b);
        memset(out, 0, sizeof *out);
        snprintf(err->msg, sizeof err->msg, "not enough memory: the interpreter needs %s for %lld tokens (every value "
                 "in f64), and %s is available", a, (long long)T, b);
        return false;
    }
    Eval ev = {.m = m, .w = w, .prec = prec, .T = T, .err = err};
    double t0 = now_seconds();
    memset(out, 0, sizeof *out);
    ev.vals = xcalloc((size_t)m->n_values, sizeof *ev.vals);
    ev.params = xcalloc((size_t)m->n_values, sizeof *ev.params);
    bool ok = T > 0 && bind_params(&ev);
    if (T <= 0) snprintf(err->msg, sizeof err->msg, "no tokens to run");
    ok = ok && bind_inputs(&ev, ids, pos, in, n_in);
    for (const IrInstr *i = m->first; ok && i; i = i->next) ok = eval_instr(&ev, i);
    if (ok) collect_outputs(&ev, out);
    for (int k = 0; k < m->n_values; k++) free(ev.vals[k]);
    free(ev.vals);
    free(ev.params);
    out->seconds = now_seconds() - t0;
    out->macs_linear = ev.macs_linear;
    out->macs_grouped = ev.macs_grouped;
    return ok;
}

bool ir_eval(const IrModule *m, const WeightSet *w, const int32_t *ids, const int32_t *pos, int64_t T,
             eval_precision prec, EvalResult *out, RtError *err)
{
    return eval_run(m, w, ids, pos, NULL, 0, T, prec, out, err);
}

bool ir_eval_inputs(const IrModule *m, const WeightSet *w, const EvalInput *in, int n_in, int64_t T,
                    eval_precision prec, EvalResult *out, RtError *err)
{
    return eval_run(m, w, NULL, NULL, in, n_in, T, prec, out, err);
}

const EvalTensor *eval_output(const EvalResult *r, const char *name)
{
    for (int k = 0; k < r->n_outputs; k++)
        if (strcmp(r->outputs[k].name, name) == 0) return &r->outputs[k];
    return NULL;
}

void ir_eval_result_free(EvalResult *r)
{
    for (int k = 0; k < r->n_outputs; k++) {
        free(r->outputs[k].data);
        free(r->outputs[k].name);
    }
    free(r->outputs);
    memset(r, 0, sizeof *r);
}
