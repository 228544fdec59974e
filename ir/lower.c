/* lower.c — a ModelSpec becomes the dense form of the model (DESIGN.md): every op of SEMANTICS.md
 * written out literally, the router as its individual ops and the MoE layer as the sum over EVERY
 * expert of G[:, e] · Expert_e(u). Obviously correct, slow, and the input of the passes. */
#include "ir/ir.h"

#include <stdarg.h>
#include <string.h>

typedef struct {
    IrModule *m;
    const ModelSpec *s;
    moe_dtype dt;            /* the model's dtype: weights and activations */
    IrValue *ids, *pos;
    int64_t l;               /* the layer being lowered */
} Lower;

static const char *vname(Lower *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Value names carry the layer: %l3.q, %l3.e5.up. */
static const char *vname(Lower *L, const char *fmt, ...)
{
    char buf[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return arena_printf(&L->m->arena, "l%lld.%s", (long long)L->l, buf);
}

static IrValue *weight(Lower *L, const char *name, const char *tensor, int64_t d0, int64_t d1)
{
    IrType t = d1 ? ir_type_2d(L->dt, d0, d1) : ir_type_1d(L->dt, d0);
    return ir_param_new(L->m, name, tensor, t);
}

static IrValue *layer_weight(Lower *L, const char *name, const char *suffix, int64_t d0, int64_t d1)
{
    char tensor[256];
    snprintf(tensor, sizeof tensor, "model.layers.%lld.%s", (long long)L->l, suffix);
    return weight(L, vname(L, "%s", name), tensor, d0, d1);
}

static IrInstr *op1(Lower *L, ir_op op, IrType t, const char *name, IrValue *a, IrValue *b, IrValue *c)
{
    IrValue *in[3] = {a, b, c};
    int n = c ? 3 : b ? 2 : a ? 1 : 0;
    return ir_instr_append(L->m, op, in, n, &t, &name, 1);
}

static IrType act(moe_dtype dt, int64_t n) { return ir_type_2d(dt, IR_DIM_T, n); }

static IrValue *linear(Lower *L, const char *name, IrValue *x, IrValue *w, moe_dtype out)
{
    return op1(L, IR_OP_LINEAR, act(out, w->type.dims[0]), name, x, w, NULL)->out[0];
}

static IrValue *unary(Lower *L, ir_op op, const char *name, IrValue *x)
{
    return op1(L, op, x->type, name, x, NULL, NULL)->out[0];
}

static IrValue *convert(Lower *L, const char *name, IrValue *x, moe_dtype to)
{
    if (x->type.dtype == to) return x;
    return op1(L, IR_OP_CONVERT, act(to, x->type.dims[1]), name, x, NULL, NULL)->out[0];
}

static IrValue *rms_norm(Lower *L, const char *name, IrValue *x, IrValue *w)
{
    IrInstr *i = op1(L, IR_OP_RMS_NORM, x->type, name, x, w, NULL);
    ir_attr_set_float(L->m, i, "eps", L->s->norm_eps);
    return i->out[0];
}

/* h = x + Wo · attention(rope(Wq·xn), rope(Wk·xn), Wv·xn),  xn = RMSNorm(x)   (SEMANTICS §2) */
static IrValue *lower_attention(Lower *L, IrValue *x)
{
    const ModelSpec *s = L->s;
    int64_t D = s->hidden, hd = spec_head_dim(s), H = s->n_heads, Hk = s->n_kv_heads;
    IrValue *wn = layer_weight(L, "attn_norm", "input_layernorm.weight", D, 0);
    IrValue *wq = layer_weight(L, "wq", "self_attn.q_proj.weight", H * hd, D);
    IrValue *wk = layer_weight(L, "wk", "self_attn.k_proj.weight", Hk * hd, D);
    IrValue *wv = layer_weight(L, "wv", "self_attn.v_proj.weight", Hk * hd, D);
    IrValue *wo = layer_weight(L, "wo", "self_attn.o_proj.weight", D, H * hd);
    IrValue *xn = rms_norm(L, vname(L, "attn_in"), x, wn);
    IrValue *q = linear(L, vname(L, "q"), xn, wq, L->dt);
    IrValue *k = linear(L, vname(L, "k"), xn, wk, L->dt);
    IrValue *v = linear(L, vname(L, "v"), xn, wv, L->dt);
    IrInstr *rq = op1(L, IR_OP_ROPE, q->type, vname(L, "q_rope"), q, L->pos, NULL);
    ir_attr_set_int(L->m, rq, "heads", H);
    ir_attr_set_float(L->m, rq, "theta", s->rope_theta);
    IrInstr *rk = op1(L, IR_OP_ROPE, k->type, vname(L, "k_rope"), k, L->pos, NULL);
    ir_attr_set_int(L->m, rk, "heads", Hk);
    ir_attr_set_float(L->m, rk, "theta", s->rope_theta);
    IrValue *in[4] = {rq->out[0], rk->out[0], v, L->pos};
    IrType ot = q->type;
    const char *oname = vname(L, "attn");
    IrInstr *at = ir_instr_append(L->m, IR_OP_ATTENTION, in, 4, &ot, &oname, 1);
    ir_attr_set_int(L->m, at, "heads", H);
    ir_attr_set_int(L->m, at, "kv_heads", Hk);
    IrValue *o = linear(L, vname(L, "attn_out"), at->out[0], wo, L->dt);
    return op1(L, IR_OP_ADD, x->type, vname(L, "h"), x, o, NULL)->out[0];
}

/* Router logits z (f32), with the gating residual added; *r_io carries r between MoE layers. */
static IrValue *lower_router_logits(Lower *L, IrValue *xn, IrValue **r_io)
{
    const ModelSpec *s = L->s;
    int64_t D = s->hidden, E = spec_n_experts(s);
    IrValue *xr = convert(L, vname(L, "router_in"), xn, DT_F32);
    IrValue *z;
    if (s->router_layers == 2) {
        IrValue *w1 = layer_weight(L, "router_w1", "mlp.moe.gate.wg.0.weight", 8 * E, D);
        IrValue *w2 = layer_weight(L, "router_w2", "mlp.moe.gate.wg.2.weight", E, 8 * E);
        IrValue *h1 = linear(L, vname(L, "router_h"), xr, w1, DT_F32);
        IrValue *t1 = unary(L, IR_OP_TANH, vname(L, "router_tanh"), h1);
        z = linear(L, vname(L, "router_z"), t1, w2, DT_F32);
    } else {
        IrValue *w = layer_weight(L, "router_w", "mlp.moe.gate.wg.weight", E, D);
        z = linear(L, vname(L, "router_z"), xr, w, DT_F32);
    }
    if (s->gating_residual && *r_io) {
        /* Wg runs in the model dtype on the previous logits rounded to it (SEMANTICS §4) */
        IrValue *wg = layer_weight(L, "gate_map", "mlp.moe.gate.gate_map.weight", E, E);
        IrValue *rd = convert(L, vname(L, "resid_in"), *r_io, L->dt);
        IrValue *g = linear(L, vname(L, "resid"), rd, wg, L->dt);
        IrValue *gf = convert(L, vname(L, "resid_f32"), g, DT_F32);
        z = op1(L, IR_OP_ADD, z->type, vname(L, "router_zr"), z, gf, NULL)->out[0];
    }
    *r_io = z;
    if (s->logits_norm) {
        IrInstr *n = op1(L, IR_OP_LOGITS_NORM, z->type, vname(L, "router_znorm"), z, NULL, NULL);
        ir_attr_set_float(L->m, n, "std", s->logits_norm_std);
        z = n->out[0];
    }
    return z;
}

/* Gate weights [T, k] and expert ids [T, k] from the logits, in either gating mode (SEMANTICS §3). */
static void lower_gating(Lower *L, IrValue *z, IrValue **w_out, IrValue **ids_out)
{
    const ModelSpec *s = L->s;
    int64_t E = spec_n_experts(s), k = s->top_k;
    IrValue *scores = z;
    if (s->gating == GATING_SOFTMAX_TOPK) scores = unary(L, IR_OP_SOFTMAX, vname(L, "router_p"), z);
    IrType tt[2] = {act(DT_F32, k), act(DT_I32, k)};
    const char *tn[2] = {vname(L, "topk_w"), vname(L, "ids")};
    IrInstr *tk = ir_instr_append(L->m, IR_OP_TOPK, &scores, 1, tt, tn, 2);
    ir_attr_set_int(L->m, tk, "k", k);
    IrValue *w = tk->out[0], *ids = tk->out[1];
    if (s->gating == GATING_TOPK_SOFTMAX) {
        w = unary(L, IR_OP_SOFTMAX, vname(L, "weights"), w);
    } else {
        if (s->n_zero > 0) {
            IrInstr *mk = op1(L, IR_OP_MASK_EXPERTS, w->type, vname(L, "masked_w"), w, ids, NULL);
            ir_attr_set_int(L->m, mk, "lo", E - s->n_zero);
            ir_attr_set_int(L->m, mk, "hi", E);
            w = mk->out[0];
        }
        w = unary(L, IR_OP_RENORM, vname(L, "weights"), w);
    }
    *w_out = w;
    *ids_out = ids;
}

/* A weight of expert e: %lL.eE.NAME = "model.layers.L.mlp.moe.experts.experts.E.SUFFIX". */
static IrValue *expert_weight(Lower *L, int64_t e, const char *name, const char *suffix, int64_t d0, int64_t d1)
{
    char n[64], t[128];
    snprintf(n, sizeof n, "e%lld.%s", (long long)e, name);
    snprintf(t, sizeof t, "mlp.moe.experts.experts.%lld.%s", (long long)e, suffix);
    return layer_weight(L, n, t, d0, d1);
}

static IrValue *expert_ffn(Lower *L, IrValue *u, int64_t e)
{
    int64_t D = L->s->hidden, I = L->s->ffn_intermediate;
    IrValue *wu = expert_weight(L, e, "wu", "up_proj.weight", 2 * I, D);
    IrValue *wd = expert_weight(L, e, "wd", "down_proj.weight", D, I);
    IrValue *ab = linear(L, vname(L, "e%lld.up", (long long)e), u, wu, L->dt);
    IrInstr *a = op1(L, IR_OP_SLICE, act(L->dt, I), vname(L, "e%lld.a", (long long)e), ab, NULL, NULL);
    ir_attr_set_int(L->m, a, "start", 0);
    ir_attr_set_int(L->m, a, "len", I);
    IrInstr *b = op1(L, IR_OP_SLICE, act(L->dt, I), vname(L, "e%lld.b", (long long)e), ab, NULL, NULL);
    ir_attr_set_int(L->m, b, "start", I);
    ir_attr_set_int(L->m, b, "len", I);
    IrValue *g = op1(L, IR_OP_SWIGLU, act(L->dt, I), vname(L, "e%lld.act", (long long)e), a->out[0], b->out[0],
                     NULL)->out[0];
    return linear(L, vname(L, "e%lld.out", (long long)e), g, wd, L->dt);
}

static IrValue *expert_const(Lower *L, IrValue *u, int64_t c)
{
    int64_t D = L->s->hidden;
    IrValue *wc = expert_weight(L, c, "wc", "wg.weight", 2, D);
    IrValue *vc = expert_weight(L, c, "v", "constant", D, 0);
    /* α = softmax(Wc · u): from u = s·x, not x (SEMANTICS §3); a reduction, so kept in f32 */
    IrValue *al = linear(L, vname(L, "e%lld.alpha_logits", (long long)c), u, wc, DT_F32);
    IrValue *alpha = unary(L, IR_OP_SOFTMAX, vname(L, "e%lld.alpha", (long long)c), al);
    return op1(L, IR_OP_CONST_MIX, u->type, vname(L, "e%lld.out", (long long)c), u, alpha, vc)->out[0];
}

/* y = Σ_e G[:, e] · Expert_e(u) over every expert; y accumulates in f32 and is rounded once. */
static IrValue *lower_experts(Lower *L, IrValue *xn, IrValue *G)
{
    const ModelSpec *s = L->s;
    int64_t D = s->hidden, E = spec_n_experts(s);
    double scale = spec_input_scale(s);
    IrValue *u = xn;
    if (scale != 1.0) {
        IrInstr *si = op1(L, IR_OP_SCALE, xn->type, vname(L, "u"), xn, NULL, NULL);
        ir_attr_set_float(L->m, si, "s", scale);
        u = si->out[0];
    }
    IrValue *y = op1(L, IR_OP_ZEROS, act(DT_F32, D), vname(L, "y0"), NULL, NULL, NULL)->out[0];
    for (int64_t e = 0; e < E; e++) {
        IrValue *o;
        if (e < s->n_ffn) o = expert_ffn(L, u, e);
        else if (e < s->n_ffn + s->n_const) o = expert_const(L, u, e);
        else if (e < s->n_ffn + s->n_const + s->n_copy) o = u;
        else o = op1(L, IR_OP_ZEROS, u->type, vname(L, "e%lld.out", (long long)e), NULL, NULL, NULL)->out[0];
        IrInstr *acc = op1(L, IR_OP_GATE_ACCUM, y->type, vname(L, "y%lld", (long long)(e + 1)), y, G, o);
        ir_attr_set_int(L->m, acc, "expert", e);
        y = acc->out[0];
    }
    return convert(L, vname(L, "y"), y, L->dt);
}

static IrValue *lower_moe(Lower *L, IrValue *xn, IrValue **r_io)
{
    IrValue *z = lower_router_logits(L, xn, r_io);
    IrValue *w, *ids;
    lower_gating(L, z, &w, &ids);
    IrInstr *g = op1(L, IR_OP_GATE_DENSE, act(DT_F32, spec_n_experts(L->s)), vname(L, "gates"), w, ids, NULL);
    ir_attr_set_int(L->m, g, "experts", spec_n_experts(L->s));
    char name[64];
    snprintf(name, sizeof name, "route.%lld.ids", (long long)L->l);
    ir_output_add(L->m, name, ids);
    snprintf(name, sizeof name, "route.%lld.weights", (long long)L->l);
    ir_output_add(L->m, name, w);
    return lower_experts(L, xn, g->out[0]);
}

static IrValue *lower_dense_mlp(Lower *L, IrValue *xn)
{
    int64_t D = L->s->hidden, Id = L->s->dense_intermediate;
    IrValue *wg = layer_weight(L, "mlp_gate", "mlp.gate_proj.weight", Id, D);
    IrValue *wu = layer_weight(L, "mlp_up", "mlp.up_proj.weight", Id, D);
    IrValue *wd = layer_weight(L, "mlp_down", "mlp.down_proj.weight", D, Id);
    IrValue *g = linear(L, vname(L, "mlp_g"), xn, wg, L->dt);
    IrValue *u = linear(L, vname(L, "mlp_u"), xn, wu, L->dt);
    IrValue *a = op1(L, IR_OP_SWIGLU, g->type, vname(L, "mlp_act"), g, u, NULL)->out[0];
    return linear(L, vname(L, "mlp_out"), a, wd, L->dt);
}

IrModule *ir_lower_spec(const ModelSpec *s)
{
    Lower L = {.m = ir_module_new(s->name), .s = s, .dt = s->dtype};
    int64_t D = s->hidden;
    L.ids = ir_input_new(L.m, "ids", ir_type_1d(DT_I32, IR_DIM_T));
    L.pos = ir_input_new(L.m, "pos", ir_type_1d(DT_I32, IR_DIM_T));
    IrValue *embed = weight(&L, "embed", "model.embed_tokens.weight", s->vocab, D);
    IrValue *x = op1(&L, IR_OP_EMBED, act(L.dt, D), "x.embed", embed, L.ids, NULL)->out[0];
    IrValue *r = NULL;
    for (L.l = 0; L.l < s->n_layers; L.l++) {
        IrValue *h = lower_attention(&L, x);
        IrValue *wn = layer_weight(&L, "mlp_norm", "post_attention_layernorm.weight", D, 0);
        IrValue *hn = rms_norm(&L, vname(&L, "mlp_in"), h, wn);
        IrValue *y = spec_layer_is_moe(s, L.l) ? lower_moe(&L, hn, &r) : lower_dense_mlp(&L, hn);
        x = op1(&L, IR_OP_ADD, h->type, vname(&L, "x"), h, y, NULL)->out[0];
    }
    IrValue *wf = weight(&L, "final_norm", "model.norm.weight", D, 0);
    IrValue *xf = rms_norm(&L, "x.final", x, wf);
    IrValue *head = s->tie_embeddings ? embed : weight(&L, "lm_head", "lm_head.weight", s->vocab, D);
    IrValue *logits = linear(&L, "logits", xf, head, DT_F32);
    ir_output_add(L.m, "logits", logits);
    return L.m;
}

/* One MoE layer alone (embed/): x = RMSNorm(h; w_post) in, y = MoE(x) out (no residual-stream add),
 * with the gating residual r in and the router logits out when the spec has one. */
IrModule *ir_lower_moe_layer(const ModelSpec *s, int64_t layer)
{
    MOE_ASSERT(layer >= 0 && layer < s->n_layers && spec_layer_is_moe(s, layer));
    Lower L = {.m = ir_module_new(s->name), .s = s, .dt = s->dtype, .l = layer};
    int64_t D = s->hidden, E = spec_n_experts(s);
    IrValue *x = ir_input_new(L.m, "x", act(DT_F32, D));
    IrValue *r = s->gating_residual ? ir_input_new(L.m, "r", act(DT_F32, E)) : NULL;
    IrValue *y = lower_moe(&L, x, &r);
    ir_output_add(L.m, "y", y);
    ir_output_add(L.m, "residual", r);
    return L.m;
}
