/* tensors.c — the checkpoint tensors a spec reads, with names, shapes and dtypes (SEMANTICS.md §6). */
#include "frontend/frontend.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    TensorDesc *v;
    int n, cap;
    moe_dtype dtype;
} TensorList;

static void add(TensorList *t, tensor_kind kind, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void add(TensorList *t, tensor_kind kind, int64_t rows, int64_t cols, const char *fmt, ...)
{
    if (t->n == t->cap) {
        t->cap = t->cap ? 2 * t->cap : 64;
        t->v = xrealloc(t->v, (size_t)t->cap * sizeof *t->v);
    }
    TensorDesc *d = &t->v[t->n++];
    memset(d, 0, sizeof *d);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->name, sizeof d->name, fmt, ap);
    va_end(ap);
    d->dtype = t->dtype;
    d->kind = kind;
    d->ndim = cols ? 2 : 1;
    d->shape[0] = rows;
    d->shape[1] = cols;
    d->fan_in = cols ? cols : rows;
}

static void add_moe(TensorList *t, const ModelSpec *s, int64_t l)
{
    int64_t D = s->hidden, E = spec_n_experts(s), I = s->ffn_intermediate;
    const char *p = "model.layers";
    if (s->router_layers == 2) {
        add(t, TK_ROUTER, 8 * E, D, "%s.%lld.mlp.moe.gate.wg.0.weight", p, (long long)l);
        add(t, TK_ROUTER, E, 8 * E, "%s.%lld.mlp.moe.gate.wg.2.weight", p, (long long)l);
    } else {
        add(t, TK_ROUTER, E, D, "%s.%lld.mlp.moe.gate.wg.weight", p, (long long)l);
    }
    if (s->gating_residual)
        add(t, TK_GATE_MAP, E, E, "%s.%lld.mlp.moe.gate.gate_map.weight", p, (long long)l);
    for (int64_t e = 0; e < s->n_ffn; e++) {
        add(t, TK_EXPERT_UP, 2 * I, D, "%s.%lld.mlp.moe.experts.experts.%lld.up_proj.weight", p,
            (long long)l, (long long)e);
        add(t, TK_EXPERT_DOWN, D, I, "%s.%lld.mlp.moe.experts.experts.%lld.down_proj.weight", p,
            (long long)l, (long long)e);
    }
    for (int64_t c = s->n_ffn; c < s->n_ffn + s->n_const; c++) {
        add(t, TK_CONST_VEC, D, 0, "%s.%lld.mlp.moe.experts.experts.%lld.constant", p, (long long)l,
            (long long)c);
        add(t, TK_CONST_GATE, 2, D, "%s.%lld.mlp.moe.experts.experts.%lld.wg.weight", p, (long long)l,
            (long long)c);
    }
}

TensorDesc *spec_tensors(const ModelSpec *s, int *n)
{
    TensorList t = {.dtype = s->dtype};
    int64_t D = s->hidden, hd = spec_head_dim(s);
    add(&t, TK_EMBED, s->vocab, D, "model.embed_tokens.weight");
    for (int64_t l = 0; l < s->n_layers; l++) {
        const char *p = "model.layers";
        long long ll = (long long)l;
        add(&t, TK_NORM, D, 0, "%s.%lld.input_layernorm.weight", p, ll);
        add(&t, TK_ATTN, s->n_heads * hd, D, "%s.%lld.self_attn.q_proj.weight", p, ll);
        add(&t, TK_ATTN, s->n_kv_heads * hd, D, "%s.%lld.self_attn.k_proj.weight", p, ll);
        add(&t, TK_ATTN, s->n_kv_heads * hd, D, "%s.%lld.self_attn.v_proj.weight", p, ll);
        add(&t, TK_ATTN, D, s->n_heads * hd, "%s.%lld.self_attn.o_proj.weight", p, ll);
        add(&t, TK_NORM, D, 0, "%s.%lld.post_attention_layernorm.weight", p, ll);
        if (spec_layer_is_moe(s, l)) {
            add_moe(&t, s, l);
        } else {
            int64_t Id = s->dense_intermediate;
            add(&t, TK_DENSE, Id, D, "%s.%lld.mlp.gate_proj.weight", p, ll);
            add(&t, TK_DENSE, Id, D, "%s.%lld.mlp.up_proj.weight", p, ll);
            add(&t, TK_DENSE, D, Id, "%s.%lld.mlp.down_proj.weight", p, ll);
        }
    }
    add(&t, TK_NORM, D, 0, "model.norm.weight");
    if (!s->tie_embeddings) add(&t, TK_LM_HEAD, s->vocab, D, "lm_head.weight");
    *n = t.n;
    return t.v;
}
