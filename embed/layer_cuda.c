/* layer_cuda.c — the embedding ABI (moepp_layer.h) on the CUDA executor, inside the caller's CUDA
 * program: the device's primary context (pushed around every call), the caller's stream, the
 * caller's device workspace, the caller's device weights used in place. A layer is the image's
 * one-layer module, its weights as device addresses (the caller's, or the layer's uploads of host
 * tensors), and a CudaModel over the image's cubin/PTX. Forward checks everything first, then only
 * enqueues: the kernels on the workspace, then y and the router logits copied out last, so that
 * nothing reaches y before every check has passed and in-place calls (y = x) are safe. */
#include "embed/layer_internal.h"
#include "runtime/cuda/cuda_exec.h"
#include "runtime/weights_internal.h"

#include <stdlib.h>
#include <string.h>

struct moepp_layer {
    const LayerImage *img;
    IrModule *m;
    WeightSet *w;                 /* the module's tensor names → device addresses                   */
    CgCudaDriver *drv;
    CudaModel *cm;
    const IrValue *in_x, *in_r;   /* in_r: NULL for a spec without gating residual                   */
    bool has_wg;                  /* Wg was given (else zeros: residual_in must stay NULL)            */
    uint64_t owned;               /* the layer's device block: uploads of host tensors, copies, zeros */
    uint64_t ws;                  /* the caller's workspace: [x stage][r stage][executor workspace]  */
    int64_t max_t;
    uint64_t x_stage, r_stage;    /* x, r copied here when not 16-byte aligned; r zeros when NULL     */
    int32_t *ids_host;            /* [max_t, k]: the last call's ids, read back by route_stats        */
    bool counted;                 /* stats' counts are those of the last call                         */
    int64_t *picks;               /* [E] per expert, last call                                        */
    moepp_route_stats stats;
};

static size_t block64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }
static size_t block256(size_t bytes) { return (bytes + 255) & ~(size_t)255; }

/* A driver message as a status: running out of device memory, or anything else the driver said. */
static moepp_status fail_driver(const char *what, const char *msg)
{
    bool oom = strstr(msg, "out of memory") || strstr(msg, "not enough GPU memory");
    return layer_fail(oom ? MOEPP_ERR_OUT_OF_MEMORY : MOEPP_ERR_INTERNAL, "%s: %s", what, msg);
}

/* ---- create ------------------------------------------------------------------------------------ */

/* The driver, on the caller's device, for a device the kernels can run on (layer_cuda_isa_fits: an
 * sm_XX library on that GPU or a newer one, an emu library on the CUDA emulator only). */
static moepp_status attach(const LayerImage *img, CgCudaDriver **out)
{
    char e[512];
    *out = cg_cuda_driver_attach(e, sizeof e);
    if (!*out) return layer_fail(MOEPP_ERR_NO_DEVICE, "no CUDA device for this CUDA build of the library: %s", e);
    char arch[16];
    cg_cuda_device_arch(*out, arch, sizeof arch);
    if (!layer_cuda_isa_fits(img->isa, arch, cg_cuda_device_ordinal(*out), e, sizeof e)) {
        cg_cuda_driver_close(*out);
        *out = NULL;
        return layer_fail(MOEPP_ERR_UNSUPPORTED, "%s", e);
    }
    return MOEPP_OK;
}

/* Where a pointer the ABI needs in device memory lives: device or managed memory of the layer's
 * device, else a message naming it. */
static moepp_status check_device_ptr(CgCudaDriver *d, const void *p, const char *what)
{
    int dev = -1;
    cg_cuda_mem kind = cg_cuda_pointer_memory(d, (uint64_t)(uintptr_t)p, &dev);
    if (kind == CG_CUDA_MEM_UNKNOWN)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "%s (%p) is not device memory (a host pointer?): this CUDA build "
                          "of the library needs device memory there", what, p);
    if (kind == CG_CUDA_MEM_PINNED)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "%s (%p) is page-locked host memory, not device memory", what, p);
    if (dev >= 0 && dev != cg_cuda_device_ordinal(d))
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "%s (%p) is memory of device %d; the layer runs on device %d", what,
                          p, dev, cg_cuda_device_ordinal(d));
    return MOEPP_OK;
}

static size_t tensor_bytes(const LayerTensor *t)
{
    return (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1) * dtype_size(t->dtype);
}

/* Each caller tensor where the CUDA build needs it: device tensors on the device, 16-byte aligned;
 * host tensors really in host memory (an upload reads them with the CPU). */
static moepp_status check_memory(CgCudaDriver *d, const LayerImage *img, const moepp_tensor **given)
{
    for (int k = 0; k < img->n_tensors; k++) {
        const moepp_tensor *t = given[k];
        if (!t) continue;
        int dev;
        if (t->memory == MOEPP_MEMORY_HOST) {
            cg_cuda_mem kind = cg_cuda_pointer_memory(d, (uint64_t)(uintptr_t)t->data, &dev);
            if (kind == CG_CUDA_MEM_DEVICE)
                return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "tensor %s: marked MOEPP_MEMORY_HOST, but %p is device "
                                  "memory (mark it MOEPP_MEMORY_DEVICE to use it in place)", t->name, t->data);
            continue;
        }
        char what[200];
        snprintf(what, sizeof what, "tensor %s (MOEPP_MEMORY_DEVICE)", t->name);
        moepp_status s = check_device_ptr(d, t->data, what);
        if (s != MOEPP_OK) return s;
        if ((uintptr_t)t->data % 16 != 0)
            return layer_fail(MOEPP_ERR_MISALIGNED, "tensor %s: device data %p is not 16-byte aligned (the CUDA "
                              "kernels load 16 bytes at a time)", t->name, t->data);
    }
    return MOEPP_OK;
}

/* Tensor k's device copy: a host tensor (uploaded), a device one under MOEPP_LAYER_COPY_WEIGHTS,
 * a Wg left out (zeros). */
static bool needs_copy(const moepp_tensor *t, bool copy)
{
    return !t || t->memory == MOEPP_MEMORY_HOST || copy;
}

/* The module's tensors over device addresses: the caller's device tensors in place, the rest in
 * one block the layer owns (filled here). */
static moepp_status weight_set(moepp_layer *l, const moepp_tensor **given, bool copy)
{
    const LayerImage *img = l->img;
    size_t total = 0;
    for (int k = 0; k < img->n_tensors; k++)
        if (needs_copy(given[k], copy)) total += block256(tensor_bytes(&img->tensors[k]));
    char e[512];
    if (total && !cg_cuda_alloc(l->drv, &l->owned, total, e, sizeof e))
        return fail_driver("allocating the layer's device copies of its weights", e);
    l->w = ws_new("moepp_layer (CUDA)");
    uint64_t at = l->owned;
    for (int k = 0; k < img->n_tensors; k++) {
        const LayerTensor *lt = &img->tensors[k];
        size_t bytes = tensor_bytes(lt);
        Tensor t = {.dtype = lt->dtype, .ndim = lt->ndim, .shape = {lt->shape[0], lt->shape[1]}, .nbytes = bytes};
        t.name = xmalloc(strlen(lt->suffix) + 32);
        sprintf(t.name, "model.layers.%lld.%s", (long long)img->layer, lt->suffix);
        uint64_t dev = given[k] ? (uint64_t)(uintptr_t)given[k]->data : 0;
        if (needs_copy(given[k], copy)) {
            bool ok;
            if (!given[k]) { /* Wg left out: Wg · r must add exactly nothing */
                void *zeros = xcalloc(bytes ? bytes : 1, 1);
                ok = cg_cuda_upload(l->drv, at, zeros, bytes, e, sizeof e);
                free(zeros);
            } else if (given[k]->memory == MOEPP_MEMORY_HOST) {
                ok = cg_cuda_upload(l->drv, at, given[k]->data, bytes, e, sizeof e);
            } else {
                ok = cg_cuda_copy(l->drv, at, dev, bytes, e, sizeof e);
            }
            if (!ok) {
                free(t.name);
                return fail_driver(lt->suffix, e);
            }
            dev = at;
            at += block256(bytes);
        }
        t.data = (void *)(uintptr_t)dev;
        ws_push(l->w, &t);
    }
    MOE_ASSERT(ws_build_index(l->w) < 0);
    return MOEPP_OK;
}

static void layer_free(moepp_layer *l)
{
    char e[512];
    bool pushed = l->drv && cg_cuda_push(l->drv, e, sizeof e);
    cuda_model_free(l->cm);
    if (l->owned) cg_cuda_free(l->drv, l->owned);
    if (pushed) cg_cuda_pop(l->drv);
    cg_cuda_driver_close(l->drv);
    if (l->w) weights_close(l->w);
    ir_module_free(l->m);
    free(l->ids_host);
    free(l->picks);
    free(l);
}

/* Everything create does with the context current: the caller's tensors' memory, the device copies,
 * the module and its CudaModel (kernels loaded from the image). */
static moepp_status build(moepp_layer *l, const moepp_layer_desc *desc, const moepp_tensor **given)
{
    const LayerImage *img = l->img;
    moepp_status s = check_memory(l->drv, img, given);
    if (s == MOEPP_OK) s = weight_set(l, given, desc->flags & MOEPP_LAYER_COPY_WEIGHTS);
    if (s != MOEPP_OK) return s;
    l->m = layer_parse_image(img, l->w);
    CudaOptions o = {.images = img->cuda_images, .n_images = img->n_cuda_images, .images_arch = img->isa,
                     .no_graph = true, .driver = l->drv, .weights_in_place = true, .caller_workspace = true,
                     .no_pdl = true}; /* (plain launches on the caller's stream, as checked on an H200) */
    RtError err = {{0}};
    l->cm = cuda_model_new(l->m, l->w, 1, &o, &err);
    if (!l->cm) return fail_driver("loading the layer on the GPU", err.msg);
    return MOEPP_OK;
}

moepp_status moepp_layer_create(const moepp_layer_desc *desc, moepp_layer **out)
{
    if (!out) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_create: out is NULL");
    *out = NULL;
    if (!desc) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_create: desc is NULL");
    const LayerImage *img = &moeppc_layer_image;
    const moepp_tensor **given = xcalloc((size_t)img->n_tensors + 1, sizeof *given);
    moepp_status s = layer_check_desc(img, desc);
    if (s == MOEPP_OK) s = layer_match_tensors(img, desc, given, true);
    CgCudaDriver *drv = NULL;
    if (s == MOEPP_OK) s = attach(img, &drv);
    char e[512];
    if (s == MOEPP_OK && !cg_cuda_push(drv, e, sizeof e)) {
        s = fail_driver("making the device's primary context current", e);
        cg_cuda_driver_close(drv);
    }
    if (s != MOEPP_OK) {
        free(given);
        return s;
    }
    moepp_layer *l = xcalloc(1, sizeof *l);
    l->img = img;
    l->drv = drv;
    l->has_wg = true;
    for (int k = 0; k < img->n_tensors; k++) l->has_wg &= img->tensors[k].required || given[k] != NULL;
    s = build(l, desc, given);
    cg_cuda_pop(drv);
    free(given);
    if (s != MOEPP_OK) {
        layer_free(l);
        return s;
    }
    l->in_x = ir_value_find(l->m, "x");
    l->in_r = ir_value_find(l->m, "r");
    MOE_ASSERT(l->in_x && (l->in_r != NULL) == img->gating_residual);
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

static size_t x_stage_bytes(const moepp_layer *l, int64_t T) { return block64((size_t)(T * l->img->hidden) * sizeof(float)); }

static size_t r_stage_bytes(const moepp_layer *l, int64_t T)
{
    return l->in_r ? block64((size_t)(T * l->img->n_experts) * sizeof(float)) : 0;
}

static size_t workspace_bytes(const void *lv, int64_t T)
{
    const moepp_layer *l = lv;
    return x_stage_bytes(l, T) + r_stage_bytes(l, T) + cuda_model_workspace_bytes(l->cm, T);
}

size_t moepp_layer_workspace_size(const moepp_layer *l, int64_t max_tokens)
{
    if (!l) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_workspace_size: l is NULL"), 0;
    if (max_tokens < 1 || max_tokens > INT32_MAX)
        return layer_fail(MOEPP_ERR_INVALID_ARGUMENT, "max_tokens %lld is outside [1, 2^31)", (long long)max_tokens), 0;
    return workspace_bytes(l, max_tokens);
}

moepp_status moepp_layer_set_workspace(moepp_layer *l, void *workspace, size_t bytes)
{
    int64_t T;
    moepp_status st = layer_workspace_args(l, workspace, bytes, workspace_bytes, &T);
    if (st != MOEPP_OK) return st;
    char e[512];
    if (!cg_cuda_push(l->drv, e, sizeof e)) return fail_driver("making the device's primary context current", e);
    moepp_status s = check_device_ptr(l->drv, workspace, "the workspace");
    cg_cuda_pop(l->drv);
    if (s != MOEPP_OK) return s;
    uint64_t base = (uint64_t)(uintptr_t)workspace;
    l->ws = base;
    l->max_t = T;
    l->x_stage = base;
    l->r_stage = base + x_stage_bytes(l, T);
    cuda_model_set_workspace(l->cm, l->r_stage + r_stage_bytes(l, T), T);
    free(l->ids_host);
    l->ids_host = xmalloc((size_t)(T * l->img->top_k) * sizeof *l->ids_host);
    l->stats.n_tokens = 0; /* the last call's routing lived in the old workspace */
    l->stats.ids = NULL;
    l->stats.weights = NULL;
    return MOEPP_OK;
}

int64_t moepp_layer_max_tokens(const moepp_layer *l) { return l ? l->max_t : 0; }

/* ---- forward ------------------------------------------------------------------------------------- */

static moepp_status check_activations(const moepp_layer *l, const void *x, const void *residual_in, const void *y,
                                      const void *residual_out)
{
    const void *ptrs[4] = {x, residual_in, y, residual_out};
    static const char *const names[4] = {"x", "residual_in", "y", "residual_out"};
    for (int k = 0; k < 4; k++) {
        moepp_status s = ptrs[k] ? check_device_ptr(l->drv, ptrs[k], names[k]) : MOEPP_OK;
        if (s != MOEPP_OK) return s;
    }
    return MOEPP_OK;
}

/* An input of T rows of `cols` floats: the caller's memory when the kernels can load it 16 bytes at
 * a time, else a copy in the stage; zeros in the stage for a residual not given. */
static bool bind(moepp_layer *l, const IrValue *v, const void *src, uint64_t stage, int64_t T, int64_t cols,
                 char *e, size_t elen)
{
    uint64_t p = (uint64_t)(uintptr_t)src;
    size_t bytes = (size_t)(T * cols) * sizeof(float);
    if (src && p % 16 == 0) {
        cuda_model_bind_input(l->cm, v, p);
        return true;
    }
    bool ok = src ? cg_cuda_copy_async(l->drv, stage, p, bytes, e, elen)
                  : cg_cuda_fill32_async(l->drv, stage, 0, bytes / sizeof(float), e, elen);
    cuda_model_bind_input(l->cm, v, stage);
    return ok;
}

/* The inputs bound, the layer's kernels and the copies out, all on the stream. */
static moepp_status enqueue(moepp_layer *l, const void *x, const void *residual_in, void *y, void *residual_out,
                            int64_t T)
{
    int64_t D = l->img->hidden, E = l->img->n_experts;
    char e[512];
    if (!bind(l, l->in_x, x, l->x_stage, T, D, e, sizeof e) ||
        (l->in_r && !bind(l, l->in_r, residual_in, l->r_stage, T, E, e, sizeof e)))
        return fail_driver("queueing the inputs", e);
    RtError err = {{0}};
    if (!cuda_model_enqueue(l->cm, T, &err)) return fail_driver("queueing the layer's kernels", err.msg);
    uint64_t yy = cuda_model_output_addr(l->cm, "y", T), z = cuda_model_output_addr(l->cm, "residual", T);
    MOE_ASSERT(yy && z);
    if (!cg_cuda_copy_async(l->drv, (uint64_t)(uintptr_t)y, yy, (size_t)(T * D) * sizeof(float), e, sizeof e) ||
        (residual_out && !cg_cuda_copy_async(l->drv, (uint64_t)(uintptr_t)residual_out, z,
                                             (size_t)(T * E) * sizeof(float), e, sizeof e)))
        return fail_driver("queueing the copies of y and residual_out", e);
    return MOEPP_OK;
}

moepp_status moepp_layer_forward(moepp_layer *l, const void *x, const void *residual_in, void *y,
                                 void *residual_out, int64_t n_tokens, void *stream)
{
    if (!l) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_forward: l is NULL");
    LayerCall c = {x, residual_in, y, residual_out, n_tokens, l->ws != 0, l->max_t, l->in_r != NULL, l->has_wg};
    moepp_status s = layer_check_call(&c);
    if (s != MOEPP_OK) return s;
    char e[512];
    if (!cg_cuda_push(l->drv, e, sizeof e)) return fail_driver("making the device's primary context current", e);
    s = check_activations(l, x, residual_in, y, residual_out);
    if (s == MOEPP_OK) {
        cg_cuda_set_stream(l->drv, stream);
        s = enqueue(l, x, residual_in, y, residual_out, n_tokens);
    }
    cg_cuda_pop(l->drv);
    if (s != MOEPP_OK) return s;
    char ids[64], wts[64];
    snprintf(ids, sizeof ids, "route.%lld.ids", (long long)l->img->layer);
    snprintf(wts, sizeof wts, "route.%lld.weights", (long long)l->img->layer);
    l->stats.n_tokens = n_tokens;
    l->stats.ids = (const int32_t *)(uintptr_t)cuda_model_output_addr(l->cm, ids, n_tokens);
    l->stats.weights = (const float *)(uintptr_t)cuda_model_output_addr(l->cm, wts, n_tokens);
    l->counted = false;
    return MOEPP_OK;
}

/* The counts of the last call, from its ids read back (the caller has waited for the stream). */
static moepp_status count_routes(moepp_layer *l)
{
    int64_t T = l->stats.n_tokens;
    char e[512];
    if (!cg_cuda_push(l->drv, e, sizeof e)) return fail_driver("making the device's primary context current", e);
    bool ok = cg_cuda_download(l->drv, l->ids_host, (uint64_t)(uintptr_t)l->stats.ids,
                               (size_t)(T * l->img->top_k) * sizeof *l->ids_host, e, sizeof e);
    cg_cuda_pop(l->drv);
    if (!ok) return fail_driver("copying the routing from the GPU", e);
    for (int64_t j = 0; j < T * l->img->top_k; j++)
        if (l->ids_host[j] < 0 || l->ids_host[j] >= l->img->n_experts)
            return layer_fail(MOEPP_ERR_INTERNAL, "the routing read back has expert %d at pick %lld: was the stream "
                              "synchronised after the forward call?", l->ids_host[j], (long long)j);
    layer_count_routes(l->img, l->ids_host, T, l->picks, &l->stats);
    l->counted = true;
    return MOEPP_OK;
}

moepp_status moepp_layer_route_stats(const moepp_layer *l, moepp_route_stats *out)
{
    if (!l || !out) return layer_fail(MOEPP_ERR_NULL_POINTER, "moepp_layer_route_stats: %s is NULL", l ? "out" : "l");
    moepp_layer *ml = (moepp_layer *)l; /* the counts are computed on first request: the layer is ours */
    if (l->stats.n_tokens > 0 && !l->counted) {
        moepp_status s = count_routes(ml);
        if (s != MOEPP_OK) return s;
    }
    *out = l->stats;
    return MOEPP_OK;
}
