/* layer_common.c — the parts of the embedding ABI (moepp_layer.h) that do not depend on where the
 * layer runs: errors and their text, what the library is (moepp_layer_get_info, _tensor_info), and
 * the checks of a desc, its tensors and a call's arguments (layer_internal.h). */
#include "embed/layer_internal.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char last_error[1024];

moepp_status layer_fail(moepp_status s, const char *fmt, ...)
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
    case MOEPP_ERR_NO_DEVICE: return "MOEPP_ERR_NO_DEVICE: no usable CUDA driver or GPU";
    }
    return "unknown moepp_status";
}

/* ---- what the library is ------------------------------------------------------------------------- */

int32_t layer_abi_dtype(moe_dtype t) { return t == DT_BF16 ? MOEPP_DTYPE_BF16 : t == DT_F16 ? MOEPP_DTYPE_F16 : MOEPP_DTYPE_F32; }

static const char *abi_dtype_name(int32_t t)
{
    return t == MOEPP_DTYPE_F32 ? "f32" : t == MOEPP_DTYPE_BF16 ? "bf16" : t == MOEPP_DTYPE_F16 ? "f16" : "unknown dtype";
}

moepp_status moepp_layer_get_info(moepp_layer_info *out)
{
    if (!out) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_get_info: out is NULL");
    const LayerImage *img = &moeppc_layer_image;
    memset(out, 0, sizeof *out);
    out->abi_version = MOEPP_LAYER_ABI_VERSION;
    out->backend = img->backend;
    snprintf(out->spec_name, sizeof out->spec_name, "%s", img->spec_name);
    snprintf(out->isa, sizeof out->isa, "%s", img->isa);
    snprintf(out->moeppc_version, sizeof out->moeppc_version, "%s", img->moeppc_version);
    out->hidden = img->hidden, out->n_experts = img->n_experts, out->n_ffn = img->n_ffn;
    out->n_const = img->n_const, out->n_copy = img->n_copy, out->n_zero = img->n_zero, out->top_k = img->top_k;
    out->ffn_intermediate = img->ffn_intermediate, out->n_layers = img->n_layers, out->moe_every = img->moe_every;
    out->weight_dtype = layer_abi_dtype(img->dtype);
    out->gating_residual = img->gating_residual;
    out->n_tensors = img->n_tensors;
    return MOEPP_OK;
}

static moepp_status check_layer_index(const LayerImage *img, int64_t l)
{
    if (l < 0 || l >= img->n_layers)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "layer index %lld is outside [0, %lld) (the layers of %s)", (long long)l,
                    (long long)img->n_layers, img->spec_name);
    if ((l + 1) % img->moe_every != 0)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "layer %lld of %s is a dense layer: MoE layers are those with "
                    "(l + 1) %% %lld == 0", (long long)l, img->spec_name, (long long)img->moe_every);
    return MOEPP_OK;
}

moepp_status moepp_layer_tensor_info(int64_t layer_index, int64_t i, moepp_tensor_info *out)
{
    const LayerImage *img = &moeppc_layer_image;
    if (!out) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_tensor_info: out is NULL");
    moepp_status s = check_layer_index(img, layer_index);
    if (s != MOEPP_OK) return s;
    if (i < 0 || i >= img->n_tensors)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "tensor %lld is outside [0, %d)", (long long)i, img->n_tensors);
    const LayerTensor *t = &img->tensors[i];
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "model.layers.%lld.%s", (long long)layer_index, t->suffix);
    out->dtype = layer_abi_dtype(t->dtype);
    out->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) out->shape[d] = t->shape[d];
    out->required = t->required;
    return MOEPP_OK;
}

/* ---- create ------------------------------------------------------------------------------------ */

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
static moepp_status check_tensor(const LayerTensor *want, const moepp_tensor *t, bool device_ok)
{
    if (t->memory == MOEPP_MEMORY_DEVICE && !device_ok)
        return layer_fail(MOEPP_ERR_UNSUPPORTED, "tensor %s: a device pointer was given to a CPU build of the library",
                    t->name);
    if (t->memory != MOEPP_MEMORY_HOST && t->memory != MOEPP_MEMORY_DEVICE)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "tensor %s: memory %d is neither MOEPP_MEMORY_HOST nor _DEVICE",
                    t->name, (int)t->memory);
    if (!t->data) return layer_fail(MOEPP_ERR_NULL_POINTER, "tensor %s: data is NULL", t->name);
    int64_t shape[4] = {want->shape[0], want->shape[1]};
    bool same = t->dtype == layer_abi_dtype(want->dtype) && t->ndim == want->ndim;
    for (int d = 0; same && d < want->ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char exp[96], got[96];
        format_type(exp, sizeof exp, layer_abi_dtype(want->dtype), want->ndim, shape);
        format_type(got, sizeof got, t->dtype, t->ndim >= 0 && t->ndim <= 4 ? t->ndim : 0, t->shape);
        return layer_fail(MOEPP_ERR_BAD_TENSOR, "tensor %s: expected %s, found %s", t->name, exp, got);
    }
    if ((uintptr_t)t->data % dtype_size(want->dtype) != 0)
        return layer_fail(MOEPP_ERR_MISALIGNED, "tensor %s: data %p is not aligned to its %zu-byte elements", t->name,
                    t->data, dtype_size(want->dtype));
    return MOEPP_OK;
}

/* given[k] = the caller's tensor for the image's tensor k (NULL: not given). */
moepp_status layer_match_tensors(const LayerImage *img, const moepp_layer_desc *desc, const moepp_tensor **given,
                                 bool device_ok)
{
    for (int64_t j = 0; j < desc->n_tensors; j++) {
        const moepp_tensor *t = &desc->tensors[j];
        if (!t->name) return layer_fail(MOEPP_ERR_NULL_POINTER, "tensors[%lld] has no name", (long long)j);
        int k = tensor_index(img, desc->layer_index, t->name);
        if (k < 0)
            return layer_fail(MOEPP_ERR_BAD_TENSOR, "tensor %s is not one of the %d a layer %lld of %s takes "
                        "(moepp_layer_tensor_info lists them)", t->name, img->n_tensors, (long long)desc->layer_index,
                        img->spec_name);
        if (given[k]) return layer_fail(MOEPP_ERR_BAD_TENSOR, "tensor %s is given twice", t->name);
        moepp_status s = check_tensor(&img->tensors[k], t, device_ok);
        if (s != MOEPP_OK) return s;
        given[k] = t;
    }
    int missing = 0, first = -1;
    for (int k = 0; k < img->n_tensors; k++)
        if (!given[k] && img->tensors[k].required && missing++ == 0) first = k;
    if (missing)
        return layer_fail(MOEPP_ERR_BAD_TENSOR, "tensor model.layers.%lld.%s is missing%s", (long long)desc->layer_index,
                    img->tensors[first].suffix, missing > 1 ? " (and others: moepp_layer_tensor_info lists them)" : "");
    return MOEPP_OK;
}

moepp_status layer_check_desc(const LayerImage *img, const moepp_layer_desc *desc)
{
    if (desc->struct_size != sizeof *desc || desc->abi_version != MOEPP_LAYER_ABI_VERSION)
        return layer_fail(MOEPP_ERR_VERSION, "desc says ABI version %u, struct size %u; this library is version %d, "
                    "size %zu", desc->abi_version, desc->struct_size, MOEPP_LAYER_ABI_VERSION, sizeof *desc);
    moepp_status s = check_layer_index(img, desc->layer_index);
    if (s != MOEPP_OK) return s;
    if (desc->n_threads < 0 || desc->n_threads > 1024)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "n_threads %d is outside [0, 1024]", (int)desc->n_threads);
    if (desc->flags & ~MOEPP_LAYER_COPY_WEIGHTS)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "unknown flags 0x%x", desc->flags & ~MOEPP_LAYER_COPY_WEIGHTS);
    if (desc->n_tensors < 0) return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "n_tensors is negative");
    if (desc->n_tensors > 0 && !desc->tensors) return layer_fail(MOEPP_ERR_NULL_POINTER, "tensors is NULL");
    return MOEPP_OK;
}


/* ---- the module ---------------------------------------------------------------------------------- */

/* The image's module, whose params must be the image's tensors (both were written by moeppc). */
IrModule *layer_parse_image(const LayerImage *img, const WeightSet *w)
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

/* ---- forward ------------------------------------------------------------------------------------- */

static int arch_number(const char *arch) { return strncmp(arch, "sm_", 3) == 0 ? atoi(arch + 3) : 0; }

bool layer_cuda_isa_fits(const char *isa, const char *dev_arch, int ordinal, char *why, size_t n)
{
    bool lib_emu = strcmp(isa, "emu") == 0, dev_emu = strcmp(dev_arch, "emu") == 0;
    if (lib_emu && dev_emu) return true;
    if (lib_emu)
        snprintf(why, n, "this library's kernels are for the CUDA emulator (emitted with --target emu) and device %d "
                 "is a GPU (%s): emit the library with --target %s for it", ordinal, dev_arch, dev_arch);
    else if (dev_emu)
        snprintf(why, n, "this library's kernels are for %s GPUs (cubin and PTX) and device %d is the CUDA emulator, "
                 "which runs only kernels compiled for it: emit the library with --target emu", isa, ordinal);
    else if (arch_number(dev_arch) < arch_number(isa))
        snprintf(why, n, "this library's kernels are for %s and newer; the GPU (device %d) is %s", isa, ordinal, dev_arch);
    else return true;
    return false;
}

moepp_status layer_check_call(const LayerCall *c)
{
    if (!c->x) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_forward: x is NULL");
    if (!c->y) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_forward: y is NULL");
    if (c->T <= 0) return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "n_tokens is %lld: it must be at least 1", (long long)c->T);
    if (!c->has_workspace) return layer_fail(MOEPP_ERR_NO_WORKSPACE, "no workspace: call moepp_layer_set_workspace first");
    if (c->T > c->max_t)
        return layer_fail(MOEPP_ERR_WORKSPACE_TOO_SMALL, "n_tokens %lld exceeds the %lld tokens the workspace holds",
                          (long long)c->T, (long long)c->max_t);
    const void *ptrs[4] = {c->x, c->residual_in, c->y, c->residual_out};
    static const char *const names[4] = {"x", "residual_in", "y", "residual_out"};
    for (int k = 0; k < 4; k++)
        if ((uintptr_t)ptrs[k] % sizeof(float) != 0)
            return layer_fail(MOEPP_ERR_MISALIGNED, "%s (%p) is not aligned to 4 bytes (f32)", names[k], ptrs[k]);
    if (c->residual_in && c->takes_residual && !c->has_wg)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "residual_in was given to a layer created without its gating "
                          "residual matrix (mlp.moe.gate.gate_map.weight)");
    return MOEPP_OK;
}

int64_t layer_tokens_that_fit(size_t (*bytes_for)(const void *ctx, int64_t T), const void *ctx, size_t bytes)
{
    if (bytes_for(ctx, 1) > bytes) return 0;
    int64_t lo = 1, hi = 2;
    while (hi < INT32_MAX && bytes_for(ctx, hi) <= bytes) lo = hi, hi = hi * 2 < INT32_MAX ? hi * 2 : INT32_MAX;
    if (bytes_for(ctx, hi) <= bytes) return hi;
    while (hi - lo > 1) { /* size(lo) fits, size(hi) does not */
        int64_t mid = lo + (hi - lo) / 2;
        if (bytes_for(ctx, mid) <= bytes) lo = mid;
        else hi = mid;
    }
    return lo;
}

moepp_status layer_workspace_args(const void *l, const void *workspace, size_t bytes,
                                  size_t (*bytes_for)(const void *ctx, int64_t T), int64_t *T)
{
    if (!l) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_set_workspace: l is NULL");
    if (!workspace) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_set_workspace: workspace is NULL");
    if ((uintptr_t)workspace % 64 != 0)
        return layer_fail(MOEPP_ERR_MISALIGNED, "workspace %p is not 64-byte aligned", workspace);
    *T = layer_tokens_that_fit(bytes_for, l, bytes);
    if (*T < 1)
        return layer_fail(MOEPP_ERR_WORKSPACE_TOO_SMALL, "a workspace of %zu bytes is smaller than one token needs (%zu)",
                          bytes, bytes_for(l, 1));
    return MOEPP_OK;
}

void layer_count_routes(const LayerImage *img, const int32_t *ids, int64_t T, int64_t *picks, moepp_route_stats *s)
{
    memset(picks, 0, (size_t)img->n_experts * sizeof *picks);
    s->picks_ffn = s->picks_const = s->picks_copy = s->picks_zero = 0;
    for (int64_t j = 0; j < T * img->top_k; j++) {
        int64_t e = ids[j];
        MOE_ASSERT(e >= 0 && e < img->n_experts);
        picks[e]++;
        if (e < img->n_ffn) s->picks_ffn++;
        else if (e < img->n_ffn + img->n_const) s->picks_const++;
        else if (e < img->n_ffn + img->n_const + img->n_copy) s->picks_copy++;
        else s->picks_zero++;
    }
}
