/* layer_internal.h — what the two builds of the embedding ABI share (layer_common.c): the error
 * text, the info and tensor queries, and the checks of a desc, of its tensors and of a forward
 * call's arguments. layer.c runs a layer on the CPU executor, layer_cuda.c on the CUDA executor. */
#ifndef MOEPPC_EMBED_LAYER_INTERNAL_H
#define MOEPPC_EMBED_LAYER_INTERNAL_H

#include "embed/layer_image.h"
#include "embed/moepp_layer.h"

/* Set this thread's moepp_last_error text and return s. */
moepp_status layer_fail(moepp_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

int32_t layer_abi_dtype(moe_dtype t);

/* desc against the image: version and size, an MoE layer index, n_threads, flags, the tensor array. */
moepp_status layer_check_desc(const LayerImage *img, const moepp_layer_desc *desc);

/* given[k] := the caller's tensor for the image's tensor k (NULL: not given, allowed only for
 * optional ones): names, dtypes, shapes, element alignment. device_ok: MOEPP_MEMORY_DEVICE is
 * accepted (a CUDA build), else it is MOEPP_ERR_UNSUPPORTED. */
moepp_status layer_match_tensors(const LayerImage *img, const moepp_layer_desc *desc, const moepp_tensor **given,
                                 bool device_ok);

/* The image's one-layer module, parsed; its params checked against w (moeppc wrote both: a
 * mismatch aborts). */
IrModule *layer_parse_image(const LayerImage *img, const WeightSet *w);

/* The arguments of a forward call every build checks the same way, before anything runs: the
 * pointers (align: bytes of alignment the activations need), n_tokens against the workspace, a
 * residual_in for a layer created without its gating-residual matrix. */
typedef struct LayerCall {
    const void *x, *residual_in, *y, *residual_out;
    int64_t T;
    bool has_workspace;
    int64_t max_t;
    bool takes_residual, has_wg;
} LayerCall;
moepp_status layer_check_call(const LayerCall *c);

/* The largest T with bytes_for(ctx, T) <= bytes (0 if not even one token fits). */
int64_t layer_tokens_that_fit(size_t (*bytes_for)(const void *ctx, int64_t T), const void *ctx, size_t bytes);
/* moepp_layer_set_workspace's checks of its arguments, either build: l and workspace not NULL, the
 * workspace 64-byte aligned and big enough for one token; *T: the tokens it holds. */
moepp_status layer_workspace_args(const void *l, const void *workspace, size_t bytes,
                                  size_t (*bytes_for)(const void *ctx, int64_t T), int64_t *T);

/* Whether a CUDA build's kernels (isa "sm_XX": cubin for it and PTX for newer GPUs; "emu": objects
 * for the CUDA emulator) run on device `ordinal` of arch dev_arch ("sm_XY", or "emu" for the
 * emulator): true, or false with why (a sentence naming both and the --target that would fit). */
bool layer_cuda_isa_fits(const char *isa, const char *dev_arch, int ordinal, char *why, size_t n);

/* The statistics of a call's picks (ids [T, k] in host memory) into s and picks[E]. */
void layer_count_routes(const LayerImage *img, const int32_t *ids, int64_t T, int64_t *picks, moepp_route_stats *s);

#endif
