/* summary.c — the numbers `moeppc check` prints: parameters (total, active), FLOPs per token, expert mix.
 *
 * Counts come from spec_tensors(), so they always agree with what a checkpoint must contain.
 */
#include "frontend/frontend.h"

#include <stdlib.h>

static int64_t tensor_numel(const TensorDesc *t)
{
    return t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
}

static int64_t n_moe_layers(const ModelSpec *s)
{
    return s->n_layers / s->moe_every;
}

/* Parameters of one FFN expert: up [2I, D] and down [D, I]. */
static int64_t ffn_expert_params(const ModelSpec *s)
{
    return 3 * s->ffn_intermediate * s->hidden;
}

void spec_summarize(const ModelSpec *s, SpecSummary *out)
{
    int n = 0;
    TensorDesc *t = spec_tensors(s, &n);
    int64_t total = 0, embed = 0, lm_head = 0;
    for (int i = 0; i < n; i++) {
        int64_t k = tensor_numel(&t[i]);
        total += k;
        if (t[i].kind == TK_EMBED) embed += k;
        if (t[i].kind == TK_LM_HEAD) lm_head += k;
    }
    free(t);
    /* In an all-FFN routing each MoE layer runs min(k, Nf) FFN experts; the rest are stored, not used. */
    int64_t active_ffn = s->top_k < s->n_ffn ? s->top_k : s->n_ffn;
    int64_t inactive = n_moe_layers(s) * (s->n_ffn - active_ffn) * ffn_expert_params(s);
    /* embed_tokens is a row lookup, not compute, unless it doubles as the (tied) lm_head. */
    int64_t lookup = s->tie_embeddings ? 0 : embed;
    out->params_total = total;
    out->params_embedding = embed + lm_head;
    out->params_active = total - inactive - lookup;
    out->flops_per_token = 2.0 * (double)out->params_active;
    /* QK^T and PV: 2 FLOPs each per head-dim element, per head, per context position, per layer. */
    out->flops_attention_per_token_ctx = 4.0 * (double)s->n_layers * (double)s->n_heads * (double)spec_head_dim(s);
}

/* 7573123456 → "7.573 B"; for reading, the exact count is printed beside it. */
static const char *human(double v, char *buf, size_t n)
{
    const char *unit[] = {"", " K", " M", " B", " T", " P"};
    int u = 0;
    while (v >= 1000.0 && u < 5) v /= 1000.0, u++;
    snprintf(buf, n, u ? "%.3f%s" : "%.0f%s", v, unit[u]);
    return buf;
}

static const char *gating_text(spec_gating g)
{
    return g == GATING_SOFTMAX_TOPK ? "softmax_topk" : "topk_softmax";
}

static void print_structure(const ModelSpec *s, FILE *f)
{
    fprintf(f, "spec %s: %s, %s\n", s->name, s->n_const + s->n_copy + s->n_zero ? "MoE++" : "vanilla MoE",
            dtype_name(s->dtype));
    fprintf(f, "  model: %lld layers, hidden %lld, %lld heads of dim %lld, %lld kv heads, vocab %lld, "
               "max positions %lld%s",
            (long long)s->n_layers, (long long)s->hidden, (long long)s->n_heads, (long long)spec_head_dim(s),
            (long long)s->n_kv_heads, (long long)s->vocab, (long long)s->max_positions,
            s->tie_embeddings ? ", tied embeddings" : "");
    if (s->has_eos) fprintf(f, ", end-of-sequence token %lld", (long long)s->eos_token_id);
    fputc('\n', f);
    fprintf(f, "  MoE layers: %lld of %lld (every %lld)", (long long)n_moe_layers(s), (long long)s->n_layers,
            (long long)s->moe_every);
    if (s->moe_every > 1) fprintf(f, "; dense MLP intermediate %lld", (long long)s->dense_intermediate);
    fprintf(f, "\n  experts per MoE layer: %lld = %lld FFN + %lld constant + %lld copy + %lld zero; top-%lld\n",
            (long long)spec_n_experts(s), (long long)s->n_ffn, (long long)s->n_const, (long long)s->n_copy,
            (long long)s->n_zero, (long long)s->top_k);
    fprintf(f, "  FFN expert intermediate %lld; router: %d-layer, %s, logits norm %s", (long long)s->ffn_intermediate,
            s->router_layers, gating_text(s->gating), s->logits_norm ? "on" : "off");
    if (s->logits_norm) fprintf(f, " (std %g)", s->logits_norm_std);
    fprintf(f, ", gating residual %s, expert input scale %g\n", s->gating_residual ? "on" : "off",
            spec_input_scale(s));
}

void spec_print_summary(const ModelSpec *s, FILE *f)
{
    SpecSummary sum;
    char a[32], b[32], c[32];
    spec_summarize(s, &sum);
    print_structure(s, f);
    fprintf(f, "  parameters: %s total (%lld), %s active per token (%lld), %s in embeddings\n",
            human((double)sum.params_total, a, sizeof a), (long long)sum.params_total,
            human((double)sum.params_active, b, sizeof b), (long long)sum.params_active,
            human((double)sum.params_embedding, c, sizeof c));
    fprintf(f, "  checkpoint: %.3f GiB in %s\n",
            (double)sum.params_total * (double)dtype_size(s->dtype) / (1024.0 * 1024.0 * 1024.0),
            dtype_name(s->dtype));
    fprintf(f, "  FLOPs/token: %s (all-FFN routing, matmuls) + %.0f per context position (attention scores)\n",
            human(sum.flops_per_token, a, sizeof a), sum.flops_attention_per_token_ctx);
    /* Uniform routing: each of the k picks is an FFN expert with probability Nf/E (ignoring the
     * renormalisation after a zero pick), so a token runs k·Nf/E FFN experts on average. */
    double picks = (double)s->top_k * (double)s->n_ffn / (double)spec_n_experts(s);
    double all_ffn = (double)(s->top_k < s->n_ffn ? s->top_k : s->n_ffn);
    double saved = 2.0 * (double)n_moe_layers(s) * (all_ffn - picks) * (double)ffn_expert_params(s);
    fprintf(f, "  FLOPs/token at uniform routing: %s (%.3g FFN experts per token per MoE layer)\n",
            human(sum.flops_per_token - saved, a, sizeof a), picks);
}
