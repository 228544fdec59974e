/* checkpoint_layout.c — a Mixtral checkpoint's MoE tensors under the names SEMANTICS.md §6 gives them.
 *
 * Mixtral (transformers' MixtralForCausalLM) names a layer's router and experts
 *   model.layers.{l}.block_sparse_moe.gate.weight           [E, D]   router
 *   model.layers.{l}.block_sparse_moe.experts.{e}.w1.weight [I, D]   gate projection (a, through SiLU)
 *   model.layers.{l}.block_sparse_moe.experts.{e}.w3.weight [I, D]   up projection (b)
 *   model.layers.{l}.block_sparse_moe.experts.{e}.w2.weight [D, I]   down projection
 * and everything else as MoE++ does. The router and w2 are renamed (mlp.moe.gate.wg.weight,
 * mlp.moe.experts.experts.{e}.down_proj.weight); w1 and w3 become one up_proj [2I, D] with w1's rows
 * first (SEMANTICS.md §3: rows 0..I−1 give a) — held in two parts, since the two need not be adjacent
 * in the file (nor in the same shard): the CPU backend packs and the CUDA executor uploads each part in
 * place, and only a reader that needs one block (the interpreter) gets a copy (weights_data). Copying
 * them at load took two thirds of an 87 GiB Mixtral-8x7B's weights again. The set is then read like
 * any other; weights_check sees the mapped names.
 */
#include "runtime/weights_internal.h"

#include <stdlib.h>
#include <string.h>

#define MIXTRAL_MOE ".block_sparse_moe."

/* What a Mixtral MoE tensor name says: the router (w = 0) or expert e's w1/w2/w3. */
typedef struct {
    long long layer, expert;
    int w;
} MixtralName;

/* Only the canonical spelling ("layers.1", not "layers.01" or "layers.+1"), so that a mapped name
 * cannot meet another tensor's by accident. */
static bool mixtral_parse(const char *name, MixtralName *m)
{
    char again[160];
    m->expert = -1, m->w = 0;
    if (sscanf(name, "model.layers.%lld.block_sparse_moe.gate.weight", &m->layer) == 1 && m->layer >= 0) {
        snprintf(again, sizeof again, "model.layers.%lld.block_sparse_moe.gate.weight", m->layer);
        if (strcmp(again, name) == 0) return true;
    }
    m->expert = -1, m->w = 0;
    if (sscanf(name, "model.layers.%lld.block_sparse_moe.experts.%lld.w%d.weight", &m->layer, &m->expert, &m->w) == 3 &&
        m->layer >= 0 && m->expert >= 0 && m->w >= 1 && m->w <= 3) {
        snprintf(again, sizeof again, "model.layers.%lld.block_sparse_moe.experts.%lld.w%d.weight", m->layer,
                 m->expert, m->w);
        return strcmp(again, name) == 0;
    }
    return false;
}

static char *mapped_name(const MixtralName *m, const char *what)
{
    char buf[160];
    if (m->expert < 0)
        snprintf(buf, sizeof buf, "model.layers.%lld.mlp.moe.gate.wg.weight", m->layer);
    else
        snprintf(buf, sizeof buf, "model.layers.%lld.mlp.moe.experts.experts.%lld.%s.weight", m->layer, m->expert, what);
    return xstrdup(buf);
}

/* The index in w->tensors of the w3 beside expert m's w1, or -1. */
static int find_w3(const WeightSet *w, const MixtralName *m)
{
    char buf[160];
    snprintf(buf, sizeof buf, "model.layers.%lld.block_sparse_moe.experts.%lld.w3.weight", m->layer, m->expert);
    const Tensor *t = weights_find(w, buf);
    return t ? (int)(t - w->tensors) : -1;
}

/* w1 and w3 stacked into *up, a new tensor named up_proj held in two parts (w1's and w3's bytes in
 * place: no copy unless a reader wants it whole); both marked for removal. */
static bool stack_up(WeightSet *w, int i1, const MixtralName *m, bool *drop, Tensor *up_out, const char *path,
                     RtError *err)
{
    const Tensor *a = &w->tensors[i1];
    int i3 = find_w3(w, m);
    if (i3 < 0) {
        rt_errorf(err, path, "tensor '%s': expected its expert's w3 (the up projection) beside it, found none", a->name);
        return false;
    }
    const Tensor *b = &w->tensors[i3];
    if (a->ndim != 2 || b->ndim != 2 || a->dtype != b->dtype || a->shape[0] != b->shape[0] ||
        a->shape[1] != b->shape[1]) {
        char ta[96], tb[96];
        rt_format_type(ta, sizeof ta, a->dtype, a->ndim, a->shape);
        rt_format_type(tb, sizeof tb, b->dtype, b->ndim, b->shape);
        rt_errorf(err, path, "tensors '%s' (%s) and '%s' (%s): expected two matrices of one type and shape", a->name, ta,
                  b->name, tb);
        return false;
    }
    *up_out = (Tensor){.name = mapped_name(m, "up_proj"), .dtype = a->dtype, .ndim = 2,
                       .shape = {a->shape[0] + b->shape[0], a->shape[1]}, .nbytes = a->nbytes + b->nbytes};
    w->parts = xrealloc(w->parts, (size_t)(w->n_parts + 1) * sizeof *w->parts);
    w->parts[w->n_parts++] = (WsParts){up_out->name, {a->data, b->data}, a->nbytes};
    drop[i1] = drop[i3] = true;
    return true;
}

bool ws_mixtral_origin(const char *mapped, char *buf, size_t n)
{
    long long l, e;
    char what[16], again[160];
    int end = 0;
    if (sscanf(mapped, "model.layers.%lld.mlp.moe.gate.wg.weight%n", &l, &end) == 1 && end > 0 && !mapped[end]) {
        snprintf(buf, n, "model.layers.%lld.block_sparse_moe.gate.weight", l);
        return true;
    }
    if (sscanf(mapped, "model.layers.%lld.mlp.moe.experts.experts.%lld.%15[a-z_].weight", &l, &e, what) != 3) return false;
    snprintf(again, sizeof again, "model.layers.%lld.mlp.moe.experts.experts.%lld.%s.weight", l, e, what);
    if (strcmp(again, mapped) != 0) return false;
    if (strcmp(what, "up_proj") == 0)
        snprintf(buf, n, "model.layers.%lld.block_sparse_moe.experts.%lld.w1.weight over w3.weight", l, e);
    else if (strcmp(what, "down_proj") == 0)
        snprintf(buf, n, "model.layers.%lld.block_sparse_moe.experts.%lld.w2.weight", l, e);
    else
        return false;
    return true;
}

bool ws_map_mixtral(WeightSet *w, const char *path, RtError *err)
{
    int n = w->n;
    bool any = false;
    for (int i = 0; i < n && !any; i++) any = strstr(w->tensors[i].name, MIXTRAL_MOE) != NULL;
    if (!any) return true;
    bool *drop = xcalloc((size_t)n, sizeof *drop);
    Tensor *ups = xcalloc((size_t)n, sizeof *ups); /* pushed at the end: the index covers the first n */
    int n_up = 0;
    bool ok = true;
    /* first the stacking, while the by-name index (which points at the names) still holds */
    for (int i = 0; ok && i < n; i++) {
        const char *name = w->tensors[i].name;
        MixtralName m;
        if (!strstr(name, MIXTRAL_MOE)) continue;
        if (!mixtral_parse(name, &m)) {
            rt_errorf(err, path, "tensor '%s': not a Mixtral MoE tensor (block_sparse_moe.gate.weight or "
                      "block_sparse_moe.experts.E.w1/w2/w3.weight)", name);
            ok = false;
        } else if (m.w == 1) {
            ok = stack_up(w, i, &m, drop, &ups[n_up], path, err);
            n_up += ok;
        }
    }
    /* a w3 no w1 took */
    for (int i = 0; ok && i < n; i++) {
        MixtralName m;
        if (!drop[i] && mixtral_parse(w->tensors[i].name, &m) && m.w == 3) {
            rt_errorf(err, path, "tensor '%s': expected its expert's w1 (the gate projection) beside it, found none",
                      w->tensors[i].name);
            ok = false;
        }
    }
    /* then the router and the down projections renamed (w3s are all dropped by now, or ok is false) */
    for (int i = 0; ok && i < n; i++) {
        MixtralName m;
        if (drop[i] || !strstr(w->tensors[i].name, MIXTRAL_MOE) || !mixtral_parse(w->tensors[i].name, &m)) continue;
        char *to = mapped_name(&m, "down_proj");
        free(w->tensors[i].name);
        w->tensors[i].name = to;
    }
    /* w1 and w3 dropped, the stacked up_proj tensors in their place at the end */
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (drop[i])
            free(w->tensors[i].name);
        else
            w->tensors[k++] = w->tensors[i];
    }
    w->n = k;
    for (int i = 0; i < n_up; i++) ws_push(w, &ups[i]);
    ws_sort_parts(w);
    w->from_mixtral = true;
    free(ups);
    free(drop);
    return ok;
}
