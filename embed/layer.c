/* layer.c — the embedding ABI (moepp_layer.h) on the CPU executor. A layer is the image's one-layer
 * module (parsed at create), the caller's weights under the module's tensor names (packed by
 * cpu_model_new), the image's kernel table and a thread pool. Forward binds x and the residual to the
 * caller's memory, runs on the caller's workspace and copies y and the router logits out at the end,
 * so that nothing reaches y before every check has passed, and in-place calls (y = x) are safe. */
#include "embed/moepp_layer.h"

#include "embed/layer_image.h"
#include "runtime/weights_internal.h"

#include <stdarg.h>
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

static _Thread_local char last_error[1024];

static moepp_status fail(moepp_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static moepp_status fail(moepp_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return s;
}

const char *moepp_last_error(void) { return last_error; }

const char *moepp_status_string(moepp_status s)
{
    switch (s) {
    case MOEPP_OK: return "MOEPP_OK: success";
    case MOEPP_ERR_NULL_POINTER: return "MOEPP_ERR_NULL_POINTER: a required pointer is NULL";
    case MOEPP_ERR_INVALID_ARGUMENT: return "MOEPP_ERR_INVALID_ARGUMENT: an argument is out of range";
    case MOEPP_ERR_MISALIGNED: return "MOEPP_ERR_MISALIGNED: a pointer is not aligned as the ABI requires";
    case MOEPP_ERR_UNSUPPORTED: return "MOEPP_ERR_UNSUPPORTED: not supported by this build of the library";
    case MOEPP_ERR_BAD_TENSOR: return "MOEPP_ERR_BAD_TENSOR: a weight is missing, unknown, repeated or of the wrong type";
    case MOEPP_ERR_NO_WORKSPACE: return "MOEPP_ERR_NO_WORKSPACE: no workspace was given (moepp_layer_set_workspace)";
    case MOEPP_ERR_WORKSPACE_TOO_SMALL: return "MOEPP_ERR_WORKSPACE_TOO_SMALL: the workspace cannot hold that many tokens";
    case MOEPP_ERR_VERSION: return "MOEPP_ERR_VERSION: the caller's header is not this library's ABI version";
    case MOEPP_ERR_OUT_OF_MEMORY: return "MOEPP_ERR_OUT_OF_MEMORY: not enough memory";
    case MOEPP_ERR_INTERNAL: return "MOEPP_ERR_INTERNAL: internal error";
    }
    return "unknown moepp_status";
}

/* ---- what the library is ------------------------------------------------------------------------- */

static int32_t abi_dtype(moe_dtype t) { return t == DT_BF16 ? MOEPP_DTYPE_BF16 : t == DT_F16 ? MOEPP_DTYPE_F16 : MOEPP_DTYPE_F32; }

static const char *abi_dtype_name(int32_t t)
{
    return t == MOEPP_DTYPE_F32 ? "f32" : t == MOEPP_DTYPE_BF16 ? "bf16" : t == MOEPP_DTYPE_F16 ? "f16" : "unknown dtype";
}

moepp_status moepp_layer_get_info(moepp_layer_info *out)
{
    if (!out) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_get_info: out is NULL");
    const LayerImage *img = &moeppc_layer_image;
    memset(out, 0, sizeof *out);
    out->abi_version = MOEPP_LAYER_ABI_VERSION;
    out->backend = MOEPP_BACKEND_CPU;
    snprintf(out->spec_name, sizeof out->spec_name, "%s", img->spec_name);
    snprintf(out->isa, sizeof out->isa, "%s", img->isa);
    snprintf(out->moeppc_version, sizeof out->moeppc_version, "%s", img->moeppc_version);
    out->hidden = img->hidden, out->n_experts = img->n_experts, out->n_ffn = img->n_ffn;
    out->n_const = img->n_const, out->n_copy = img->n_copy, out->n_zero = img->n_zero, out->top_k = img->top_k;
    out->ffn_intermediate = img->ffn_intermediate, out->n_layers = img->n_layers, out->moe_every = img->moe_every;
    out->weight_dtype = abi_dtype(img->dtype);
    out->gating_residual = img->gating_residual;
    out->n_tensors = img->n_tensors;
    return MOEPP_OK;
}

static moepp_status check_layer_index(const LayerImage *img, int64_t l)
{
    if (l < 0 || l >= img->n_layers)
        return fail(MOEPP_ERR_INVALID_ARGUMENT, "layer index %lld is outside [0, %lld) (the layers of %s)", (long long)l,
                    (long long)img->n_layers, img->spec_name);
    if ((l + 1) % img->moe_every != 0)
        return fail(MOEPP_ERR_INVALID_ARGUMENT, "layer %lld of %s is a dense layer: MoE layers are those with "
                    "(l + 1) %% %lld == 0", (long long)l, img->spec_name, (long long)img->moe_every);
    return MOEPP_OK;
}

moepp_status moepp_layer_tensor_info(int64_t layer_index, int64_t i, moepp_tensor_info *out)
{
    const LayerImage *img = &moeppc_layer_image;
    if (!out) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_tensor_info: out is NULL");
    moepp_status s = check_layer_index(img, layer_index);
    if (s != MOEPP_OK) return s;
    if (i < 0 || i >= img->n_tensors)
        return fail(MOEPP_ERR_INVALID_ARGUMENT, "tensor %lld is outside [0, %d)", (long long)i, img->n_tensors);
    const LayerTensor *t = &img->tensors[i];
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "model.layers.%lld.%s", (long long)layer_index, t->suffix);
    out->dtype = abi_dtype(t->dtype);
    out->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) out->shape[d] = t->shape[d];
    out->required = t->required;
    return MOEPP_OK;
}

/* ---- create ------------------------------------------------------------------------------------ */

/* The kernels were compiled for the ISA of the machine that ran moeppc: refuse a CPU without it
 * (the main feature flags; finer extensions the host had are assumed to come with them). */
static bool cpu_runs(const char *isa)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (strcmp(isa, "avx512") == 0)
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    if (strcmp(isa, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    (void)isa;
    return true;
}

/* The image's tensor a caller name stands for: "model.layers.{l}.SUFFIX" or "SUFFIX"; -1 if none. */
static int tensor_index(const LayerImage *img, int64_t l, const char *name)
{
    char prefix[64];
    int n = snprintf(prefix, sizeof prefix, "model.layers.%lld.", (long long)l);
    const char *suffix = strncmp(name, prefix, (size_t)n) == 0 ? name + n : name;
    for (int k = 0; k < img->n_tensors; k++)
        if (strcmp(img->tensors[k].suffix, suffix) == 0) return k;
    return -1;
}

static void format_type(char *buf, size_t n, int32_t dtype, int32_t ndim, const int64_t *shape)
{
    int len = snprintf(buf, n, "%s [", abi_dtype_name(dtype));
    for (int d = 0; d < ndim && d < 4 && len < (int)n; d++)
        len += snprintf(buf + len, n - (size_t)len, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (len < (int)n) snprintf(buf + len, n - (size_t)len, "]");
}

/* One caller tensor against the image's: memory, data, dtype, shape, alignment. */
static moepp_status check_tensor(const LayerTensor *want, const moepp_tensor *t)
{
    if (t->memory == MOEPP_MEMORY_DEVICE)
        return fail(MOEPP_ERR_UNSUPPORTED, "tensor %s: a device pointer was given to a CPU build of the library",
                    t->name);
    if (t->memory != MOEPP_MEMORY_HOST)
        return fail(MOEPP_ERR_INVALID_ARGUMENT, "tensor %s: memory %d is neither MOEPP_MEMORY_HOST nor _DEVICE",
                    t->name, (int)t->memory);
    if (!t->data) return fail(MOEPP_ERR_NULL_POINTER, "tensor %s: data is NULL", t->name);
    int64_t shape[4] = {want->shape[0], want->shape[1]};
    bool same = t->dtype == abi_dtype(want->dtype) && t->ndim == want->ndim;
    for (int d = 0; same && d < want->ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char exp[96], got[96];
        format_type(exp, sizeof exp, abi_dtype(want->dtype), want->ndim, shape);
        format_type(got, sizeof got, t->dtype, t->ndim >= 0 && t->ndim <= 4 ? t->ndim : 0, t->shape);
        return fail(MOEPP_ERR_BAD_TENSOR, "tensor %s: expected %s, found %s", t->name, exp, got);
    }
    if ((uintptr_t)t->data % dtype_size(want->dtype) != 0)
        return fail(MOEPP_ERR_MISALIGNED, "tensor %s: data %p is not aligned to its %zu-byte elements", t->name,
                    t->data, dtype_size(want->dtype));
    return MOEPP_OK;
}

/* given[k] = the caller's tensor for the image's tensor k (NULL: not given). */
static moepp_status match_tensors(const LayerImage *img, const moepp_layer_desc *desc, const moepp_tensor **given)
{
    for (int64_t j = 0; j < desc->n_tensors; j++) {
        const moepp_tensor *t = &desc->tensors[j];
        if (!t->name) return fail(MOEPP_ERR_NULL_POINTER, "tensors[%lld] has no name", (long long)j);
        int k = tensor_index(img, desc->layer_index, t->name);
        if (k < 0)
            return fail(MOEPP_ERR_BAD_TENSOR, "tensor %s is not one of the %d a layer %lld of %s takes "
                        "(moepp_layer_tensor_info lists them)", t->name, img->n_tensors, (long long)desc->layer_index,
                        img->spec_name);
        if (given[k]) return fail(MOEPP_ERR_BAD_TENSOR, "tensor %s is given twice", t->name);
        moepp_status s = check_tensor(&img->tensors[k], t);
        if (s != MOEPP_OK) return s;
        given[k] = t;
    }
    int missing = 0, first = -1;
    for (int k = 0; k < img->n_tensors; k++)
        if (!given[k] && img->tensors[k].required && missing++ == 0) first = k;
    if (missing)
        return fail(MOEPP_ERR_BAD_TENSOR, "tensor model.layers.%lld.%s is missing%s", (long long)desc->layer_index,
                    img->tensors[first].suffix, missing > 1 ? " (and others: moepp_layer_tensor_info lists them)" : "");
    return MOEPP_OK;
}

static moepp_status check_desc(const LayerImage *img, const moepp_layer_desc *desc)
{
    if (desc->struct_size != sizeof *desc || desc->abi_version != MOEPP_LAYER_ABI_VERSION)
        return fail(MOEPP_ERR_VERSION, "desc says ABI version %u, struct size %u; this library is version %d, "
                    "size %zu", desc->abi_version, desc->struct_size, MOEPP_LAYER_ABI_VERSION, sizeof *desc);
    moepp_status s = check_layer_index(img, desc->layer_index);
    if (s != MOEPP_OK) return s;
    if (desc->n_threads < 0 || desc->n_threads > 1024)
        return fail(MOEPP_ERR_INVALID_ARGUMENT, "n_threads %d is outside [0, 1024]", (int)desc->n_threads);
    if (desc->flags & ~MOEPP_LAYER_COPY_WEIGHTS)
        return fail(MOEPP_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", desc->flags & ~MOEPP_LAYER_COPY_WEIGHTS);
    if (desc->n_tensors < 0) return fail(MOEPP_ERR_INVALID_ARGUMENT, "n_tensors is negative");
    if (desc->n_tensors > 0 && !desc->tensors) return fail(MOEPP_ERR_NULL_POINTER, "tensors is NULL");
    if (!cpu_runs(img->isa))
        return fail(MOEPP_ERR_UNSUPPORTED, "this library's kernels were compiled for %s and this CPU lacks it",
                    img->isa);
    return MOEPP_OK;
}

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

/* The image's module, whose params must be the image's tensors (both were written by moeppc). */
static IrModule *parse_image(const LayerImage *img, const WeightSet *w)
{
    Diag d = {stderr, "moepp_layer (embedded IR)", 0};
    IrModule *m = ir_parse(img->ir_text, strlen(img->ir_text), &d);
    MOE_ASSERT(m && m->planned);
    for (int k = 0; k < m->n_values; k++) {
        const IrValue *v = m->values[k];
        const Tensor *t = v->kind == IR_VAL_PARAM ? weights_find(w, v->tensor) : NULL;
        MOE_ASSERT(v->kind != IR_VAL_PARAM || (t && t->dtype == v->type.dtype && t->ndim == v->type.ndim));
    }
    return m;
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
    if (!out) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_create: out is NULL");
    *out = NULL;
    if (!desc) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_create: desc is NULL");
    const LayerImage *img = &moeppc_layer_image;
    moepp_status s = check_desc(img, desc);
    const moepp_tensor **given = xcalloc((size_t)img->n_tensors + 1, sizeof *given);
    if (s == MOEPP_OK) s = match_tensors(img, desc, given);
    if (s != MOEPP_OK) {
        free(given);
        return s;
    }
    moepp_layer *l = xcalloc(1, sizeof *l);
    l->img = img;
    l->has_wg = true;
    for (int k = 0; k < img->n_tensors; k++) l->has_wg &= img->tensors[k].required || given[k] != NULL;
    l->w = weight_set(img, given, desc->flags & MOEPP_LAYER_COPY_WEIGHTS);
    l->m = parse_image(img, l->w);
    free(given);
    l->ks = cpu_table_source_new(img->kernels, img->n_kernels);
    RtError err = {{0}};
    l->cm = cpu_model_new(l->m, l->w, 1, l->ks, desc->n_threads > 0 ? desc->n_threads : 1, &err);
    if (!l->cm) {
        layer_free(l);
        bool oom = strncmp(err.msg, "not enough memory", 17) == 0;
        return fail(oom ? MOEPP_ERR_OUT_OF_MEMORY : MOEPP_ERR_INTERNAL, "%s", err.msg);
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
    if (!l) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_workspace_size: l is NULL"), 0;
    if (max_tokens < 1 || max_tokens > INT32_MAX)
        return fail(MOEPP_ERR_INVALID_ARGUMENT, "max_tokens %lld is outside [1, 2^31)", (long long)max_tokens), 0;
    return workspace_bytes(l, max_tokens);
}

/* The largest T whose workspace fits in bytes (0 if not even one token's does). */
static int64_t tokens_that_fit(const moepp_layer *l, size_t bytes)
{
    if (workspace_bytes(l, 1) > bytes) return 0;
    int64_t lo = 1, hi = 2;
    while (hi < INT32_MAX && workspace_bytes(l, hi) <= bytes) lo = hi, hi = hi * 2 < INT32_MAX ? hi * 2 : INT32_MAX;
    if (workspace_bytes(l, hi) <= bytes) return hi;
    while (hi - lo > 1) { /* size(lo) fits, size(hi) does not */
        int64_t mid = lo + (hi - lo) / 2;
        if (workspace_bytes(l, mid) <= bytes) lo = mid;
        else hi = mid;
    }
    return lo;
}

moepp_status moepp_layer_set_workspace(moepp_layer *l, void *workspace, size_t bytes)
{
    if (!l) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_set_workspace: l is NULL");
    if (!workspace) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_set_workspace: workspace is NULL");
    if ((uintptr_t)workspace % 64 != 0)
        return fail(MOEPP_ERR_MISALIGNED, "workspace %p is not 64-byte aligned", workspace);
    int64_t T = tokens_that_fit(l, bytes);
    if (T < 1)
        return fail(MOEPP_ERR_WORKSPACE_TOO_SMALL, "a workspace of %zu bytes is smaller than one token needs (%zu)",
                    bytes, workspace_bytes(l, 1));
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

static moepp_status check_forward(const moepp_layer *l, const void *x, const void *residual_in, const void *y,
                                  const void *residual_out, int64_t T, const void *stream)
{
    if (!l) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_forward: l is NULL");
    if (!x) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_forward: x is NULL");
    if (!y) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_forward: y is NULL");
    if (stream)
        return fail(MOEPP_ERR_UNSUPPORTED, "a stream was given to a CPU build of the library (pass NULL)");
    if (T <= 0) return fail(MOEPP_ERR_INVALID_ARGUMENT, "n_tokens is %lld: it must be at least 1", (long long)T);
    if (!l->ws) return fail(MOEPP_ERR_NO_WORKSPACE, "no workspace: call moepp_layer_set_workspace first");
    if (T > l->max_t)
        return fail(MOEPP_ERR_WORKSPACE_TOO_SMALL, "n_tokens %lld exceeds the %lld tokens the workspace holds",
                    (long long)T, (long long)l->max_t);
    const void *ptrs[4] = {x, residual_in, y, residual_out};
    static const char *const names[4] = {"x", "residual_in", "y", "residual_out"};
    for (int k = 0; k < 4; k++)
        if ((uintptr_t)ptrs[k] % sizeof(float) != 0)
            return fail(MOEPP_ERR_MISALIGNED, "%s (%p) is not aligned to 4 bytes (f32)", names[k], ptrs[k]);
    if (residual_in && l->in_r && !l->has_wg)
        return fail(MOEPP_ERR_INVALID_ARGUMENT, "residual_in was given to a layer created without its gating "
                    "residual matrix (mlp.moe.gate.gate_map.weight)");
    return MOEPP_OK;
}

static void count_routes(moepp_layer *l, int64_t T)
{
    const LayerImage *img = l->img;
    const int32_t *ids = cpu_model_output(l->cm, l->out_ids, NULL, NULL);
    const float *w = cpu_model_output(l->cm, l->out_w, NULL, NULL);
    moepp_route_stats *s = &l->stats;
    memset(l->picks, 0, (size_t)img->n_experts * sizeof *l->picks);
    s->picks_ffn = s->picks_const = s->picks_copy = s->picks_zero = 0;
    for (int64_t j = 0; j < T * img->top_k; j++) {
        int64_t e = ids[j];
        MOE_ASSERT(e >= 0 && e < img->n_experts);
        l->picks[e]++;
        if (e < img->n_ffn) s->picks_ffn++;
        else if (e < img->n_ffn + img->n_const) s->picks_const++;
        else if (e < img->n_ffn + img->n_const + img->n_copy) s->picks_copy++;
        else s->picks_zero++;
    }
    s->n_tokens = T;
    s->ids = ids;
    s->weights = w;
}

moepp_status moepp_layer_forward(moepp_layer *l, const void *x, const void *residual_in, void *y,
                                 void *residual_out, int64_t n_tokens, void *stream)
{
    moepp_status s = check_forward(l, x, residual_in, y, residual_out, n_tokens, stream);
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
    if (!cpu_model_run(l->cm, NULL, NULL, T, &err)) return fail(MOEPP_ERR_INTERNAL, "%s", err.msg);
    const float *yy = cpu_model_output(l->cm, l->out_y, NULL, NULL), *z = cpu_model_output(l->cm, l->out_r, NULL, NULL);
    MOE_ASSERT(yy && z);
    memmove(y, yy, (size_t)(T * D) * sizeof(float));
    if (residual_out) memmove(residual_out, z, (size_t)(T * E) * sizeof(float));
    count_routes(l, T);
    return MOEPP_OK;
}

moepp_status moepp_layer_route_stats(const moepp_layer *l, moepp_route_stats *out)
{
    if (!l || !out) return fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_route_stats: %s is NULL", l ? "out" : "l");
    *out = l->stats;
    return MOEPP_OK;
}
