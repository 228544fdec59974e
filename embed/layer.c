/* layer.c — the embedding ABI (moepp_layer.h) on the CPU executor. A layer is the image's one-layer
 * module (parsed at create), the caller's weights under the module's tensor names (packed by
 * cpu_model_new), the image's kernel table and a thread pool. Forward binds x and the residual to the
 * caller's memory, runs on the caller's workspace and copies y and the router logits out at the end,
 * so that nothing reaches y before every check has passed, and in-place calls (y = x) are safe. */
#include "embed/layer_internal.h"
#include "runtime/weights_internal.h"

#include <stdlib.h>
#include <string.h>

struct moepp_layer {
    const LayerImage *img;
    IrModule *m;
    WeightSet *w;                 /* the module's tensor names → the caller's data (or copies)     */
    CpuKernelSource *ks;
    CpuModel *cm;
    const IrValue *in_x, *in_r;   /* in_r: NULL for a spec without gating residual                 */
    bool has_wg;                  /* Wg was given (else zeros: residual_in must stay NULL)          */
    void *ws;                     /* the caller's workspace: [zero residual][executor workspace]    */
    int64_t max_t;
    float *zero_r;                /* [max_t, E] in ws: the residual of a call without residual_in   */
    char out_y[64], out_r[64], out_ids[64], out_w[64];
    int64_t *picks;               /* [E] per expert, last call                                      */
    moepp_route_stats stats;
};

/* ---- create ------------------------------------------------------------------------------------ */

/* The module's tensors (named for img->layer) over the caller's data; copies of the 1-D tensors
 * (the constant vectors, read at every call) when asked; zeros for a Wg left out. */
static WeightSet *weight_set(const LayerImage *img, const moepp_tensor **given, bool copy)
{
    WeightSet *w = ws_new("moepp_layer");
    for (int k = 0; k < img->n_tensors; k++) {
        const LayerTensor *lt = &img->tensors[k];
        size_t n = (size_t)lt->shape[0] * (size_t)(lt->ndim == 2 ? lt->shape[1] : 1), bytes = n * dtype_size(lt->dtype);
        Tensor t = {.dtype = lt->dtype, .ndim = lt->ndim, .shape = {lt->shape[0], lt->shape[1]}, .nbytes = bytes};
        t.name = xmalloc(strlen(lt->suffix) + 32);
        sprintf(t.name, "model.layers.%lld.%s", (long long)img->layer, lt->suffix);
        if (!given[k] || (copy && lt->ndim == 1)) {
            void *block = xcalloc(bytes ? bytes : 1, 1);
            if (given[k]) memcpy(block, given[k]->data, bytes);
            ws_add_copy(w, block);
            t.data = block;
        } else {
            t.data = given[k]->data;
        }
        ws_push(w, &t);
    }
    MOE_ASSERT(ws_build_index(w) < 0);
    return w;
}

static void layer_free(moepp_layer *l)
{
    cpu_model_free(l->cm);
    cpu_table_source_free(l->ks);
    weights_close(l->w);
    ir_module_free(l->m);
    free(l->picks);
    free(l);
}

moepp_status moepp_layer_create(const moepp_layer_desc *desc, moepp_layer **out)
{
    if (!out) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_create: out is NULL");
    *out = NULL;
    if (!desc) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_create: desc is NULL");
    const LayerImage *img = &moeppc_layer_image;
    moepp_status s = layer_check_desc(img, desc);
    char missing[256];
    if (s == MOEPP_OK && !cpu_runs_features(img->cpu_features, missing, sizeof missing))
        s = layer_fail(MOEPP_ERR_UNSUPPORTED, "this library's kernels were compiled for %s (%s) and this CPU lacks %s",
                       img->cpu, img->isa, missing);
    const moepp_tensor **given = xcalloc((size_t)img->n_tensors + 1, sizeof *given);
    if (s == MOEPP_OK) s = layer_match_tensors(img, desc, given, false);
    if (s != MOEPP_OK) {
        free(given);
        return s;
    }
    moepp_layer *l = xcalloc(1, sizeof *l);
    l->img = img;
    l->has_wg = true;
    for (int k = 0; k < img->n_tensors; k++) l->has_wg &= img->tensors[k].required || given[k] != NULL;
    l->w = weight_set(img, given, desc->flags & MOEPP_LAYER_COPY_WEIGHTS);
    l->m = layer_parse_image(img, l->w);
    free(given);
    l->ks = cpu_table_source_new(img->kernels, img->n_kernels);
    RtError err = {{0}};
    l->cm = cpu_model_new(l->m, l->w, 1, l->ks, desc->n_threads > 0 ? desc->n_threads : 1, &err);
    if (!l->cm) {
        layer_free(l);
        bool oom = strncmp(err.msg, "not enough memory", 17) == 0;
        return layer_fail(oom ? MOEPP_ERR_OUT_OF_MEMORY : MOEPP_ERR_INTERNAL, "%s", err.msg);
    }
    l->in_x = ir_value_find(l->m, "x");
    l->in_r = ir_value_find(l->m, "r");
    MOE_ASSERT(l->in_x && (l->in_r != NULL) == img->gating_residual);
    snprintf(l->out_y, sizeof l->out_y, "y");
    snprintf(l->out_r, sizeof l->out_r, "residual");
    snprintf(l->out_ids, sizeof l->out_ids, "route.%lld.ids", (long long)img->layer);
    snprintf(l->out_w, sizeof l->out_w, "route.%lld.weights", (long long)img->layer);
    l->picks = xcalloc((size_t)img->n_experts, sizeof *l->picks);
    l->stats = (moepp_route_stats){.top_k = img->top_k, .n_experts = img->n_experts, .picks_per_expert = l->picks};
    *out = l;
    return MOEPP_OK;
}

void moepp_layer_destroy(moepp_layer *l)
{
    if (l) layer_free(l);
}

/* ---- workspace ----------------------------------------------------------------------------------- */

static size_t block64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

static size_t zero_r_bytes(const moepp_layer *l, int64_t T)
{
    return l->in_r ? block64((size_t)(T * l->img->n_experts) * sizeof(float)) : 0;
}

static size_t workspace_bytes(const moepp_layer *l, int64_t T)
{
    return zero_r_bytes(l, T) + cpu_model_workspace_bytes(l->cm, T);
}

size_t moepp_layer_workspace_size(const moepp_layer *l, int64_t max_tokens)
{
    if (!l) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_workspace_size: l is NULL"), 0;
    if (max_tokens < 1 || max_tokens > INT32_MAX)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "max_tokens %lld is outside [1, 2^31)", (long long)max_tokens), 0;
    return workspace_bytes(l, max_tokens);
}

static size_t workspace_bytes_for(const void *l, int64_t T) { return workspace_bytes(l, T); }

moepp_status moepp_layer_set_workspace(moepp_layer *l, void *workspace, size_t bytes)
{
    int64_t T;
    moepp_status st = layer_workspace_args(l, workspace, bytes, workspace_bytes_for, &T);
    if (st != MOEPP_OK) return st;
    l->ws = workspace;
    l->max_t = T;
    l->zero_r = l->in_r ? workspace : NULL;
    cpu_model_set_workspace(l->cm, (unsigned char *)workspace + zero_r_bytes(l, T), T);
    l->stats.n_tokens = 0; /* the last call's routing lived in the old workspace */
    l->stats.ids = NULL;
    l->stats.weights = NULL;
    return MOEPP_OK;
}

int64_t moepp_layer_max_tokens(const moepp_layer *l) { return l ? l->max_t : 0; }

/* ---- forward ------------------------------------------------------------------------------------- */

static void count_routes(moepp_layer *l, int64_t T)
{
    const int32_t *ids = cpu_model_output(l->cm, l->out_ids, NULL, NULL);
    layer_count_routes(l->img, ids, T, l->picks, &l->stats);
    l->stats.n_tokens = T;
    l->stats.ids = ids;
    l->stats.weights = cpu_model_output(l->cm, l->out_w, NULL, NULL);
}

moepp_status moepp_layer_forward(moepp_layer *l, const void *x, const void *residual_in, void *y,
                                 void *residual_out, int64_t n_tokens, void *stream)
{
    if (!l) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_forward: l is NULL");
    if (stream)
        return layer_fail(MOEPP_ERR_UNSUPPORTED, "a stream was given to a CPU build of the library (pass NULL)");
    LayerCall c = {x, residual_in, y, residual_out, n_tokens, l->ws != NULL, l->max_t, l->in_r != NULL, l->has_wg};
    moepp_status s = layer_check_call(&c);
    if (s != MOEPP_OK) return s;
    int64_t T = n_tokens, D = l->img->hidden, E = l->img->n_experts;
    cpu_model_bind_input(l->cm, l->in_x, x);
    if (l->in_r && residual_in) {
        cpu_model_bind_input(l->cm, l->in_r, residual_in);
    } else if (l->in_r) { /* the first MoE layer: Wg · 0 adds exactly nothing */
        memset(l->zero_r, 0, (size_t)(T * E) * sizeof(float));
        cpu_model_bind_input(l->cm, l->in_r, l->zero_r);
    }
    RtError err = {{0}};
    if (!cpu_model_run(l->cm, NULL, NULL, T, &err)) return layer_fail(MOEPP_ERR_INTERNAL, "%s", err.msg);
    const float *yy = cpu_model_output(l->cm, l->out_y, NULL, NULL), *z = cpu_model_output(l->cm, l->out_r, NULL, NULL);
    MOE_ASSERT(yy && z);
    memmove(y, yy, (size_t)(T * D) * sizeof(float));
    if (residual_out) memmove(residual_out, z, (size_t)(T * E) * sizeof(float));
    count_routes(l, T);
    return MOEPP_OK;
}

moepp_status moepp_layer_route_stats(const moepp_layer *l, moepp_route_stats *out)
{
    if (!l || !out) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_route_stats: %s is NULL", l ? "out" : "l");
    *out = l->stats;
    return MOEPP_OK;
}
