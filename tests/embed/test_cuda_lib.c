/* test_cuda_lib.c — a CUDA build of the layer library (moeppc emit --emit lib --target ARCH), as an
 * engine links it, on any machine: what it says it is, the checks that need no GPU (they come
 * before the driver is opened), and then either the documented answer of a machine without a
 * usable driver or GPU (MOEPP_ERR_NO_DEVICE, a message, no layer, nothing written) or, with a GPU,
 * a layer whose forward refuses host pointers before enqueueing anything.
 *
 * With "unsupported", the device must be refused instead (an sm_XX library on the CUDA emulator):
 * MOEPP_ERR_UNSUPPORTED, a message naming the --target that fits, no layer. With "oom", the device is
 * too small for the weights (the emulator with MOEPPC_CUDAEMU_MEMORY): MOEPP_ERR_OUT_OF_MEMORY, a
 * message naming the memory, no layer.
 *
 *   test_cuda_lib ARCH [unsupported|oom]   exit 0: every check holds; 1: one failed (each failure printed) */
#include "moepp_layer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                                   \
    do {                                                                                                   \
        if (!(cond)) {                                                                                     \
            printf("FAILED (line %d): ", __LINE__);                                                        \
            printf(__VA_ARGS__);                                                                           \
            printf("\n");                                                                                  \
            failures++;                                                                                    \
        }                                                                                                  \
    } while (0)

#define EXPECT(call, want)                                                                                 \
    do {                                                                                                   \
        moepp_status s_ = (call);                                                                          \
        CHECK(s_ == (want), "%s: %s, expected %s (%s)", #call, moepp_status_string(s_),                      \
              moepp_status_string(want), moepp_last_error());                                              \
    } while (0)

/* Zero-filled host tensors of the right names, dtypes and shapes for MoE layer l. */
static moepp_tensor *host_tensors(int64_t l, int64_t n)
{
    moepp_tensor *t = calloc((size_t)n, sizeof *t);
    for (int64_t i = 0; i < n; i++) {
        moepp_tensor_info ti;
        size_t bytes;
        moepp_layer_tensor_info(l, i, &ti);
        bytes = ti.dtype == MOEPP_DTYPE_F32 ? 4 : 2;
        for (int d = 0; d < ti.ndim; d++) bytes *= (size_t)ti.shape[d];
        t[i].name = strdup(ti.name);
        t[i].data = calloc(bytes, 1);
        t[i].dtype = ti.dtype;
        t[i].memory = MOEPP_MEMORY_HOST;
        t[i].ndim = ti.ndim;
        memcpy(t[i].shape, ti.shape, sizeof t[i].shape);
    }
    return t;
}

/* With a GPU: a layer of zero weights refuses a host workspace and a call without a workspace, with
 * a message, writing nothing. (Device buffers need the CUDA runtime: the examples' GPU test.) */
static void gpu_checks(moepp_layer *layer)
{
    float x[64], y[64];
    size_t bytes = moepp_layer_workspace_size(layer, 4);
    void *host_ws = aligned_alloc(64, (bytes + 63) / 64 * 64);
    CHECK(bytes > 0 && bytes % 64 == 0, "workspace_size(4) = %zu", bytes);
    memset(x, 0, sizeof x);
    memset(y, 0x7f, sizeof y);
    EXPECT(moepp_layer_forward(layer, x, NULL, y, NULL, 1, NULL), MOEPP_ERR_NO_WORKSPACE);
    EXPECT(moepp_layer_set_workspace(layer, host_ws, bytes), MOEPP_ERR_INVALID_ARGUMENT);
    CHECK(strstr(moepp_last_error(), "not device memory") != NULL, "message: %s", moepp_last_error());
    CHECK(moepp_layer_max_tokens(layer) == 0, "a refused workspace was taken");
    CHECK(y[0] != 0 && y[63] != 0, "y was written");
    free(host_ws);
}

int main(int argc, char **argv)
{
    const char *arch = argc > 1 ? argv[1] : "sm_80";
    int refused = argc > 2 && strcmp(argv[2], "unsupported") == 0, oom = argc > 2 && strcmp(argv[2], "oom") == 0;
    moepp_layer_info info;
    moepp_layer_desc d;
    moepp_layer *layer = (moepp_layer *)&d; /* not NULL: create must set it */
    moepp_tensor *t;
    int64_t l;
    float y[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    moepp_status s;

    EXPECT(moepp_layer_get_info(&info), MOEPP_OK);
    CHECK(info.backend == MOEPP_BACKEND_CUDA, "backend %d, expected MOEPP_BACKEND_CUDA", (int)info.backend);
    CHECK(strcmp(info.isa, arch) == 0, "isa '%s', expected '%s'", info.isa, arch);
    CHECK(info.abi_version == MOEPP_LAYER_ABI_VERSION, "abi version %u", info.abi_version);
    CHECK(strstr(moepp_status_string(MOEPP_ERR_NO_DEVICE), "NO_DEVICE") != NULL, "status string of NO_DEVICE");
    l = info.moe_every - 1;
    t = host_tensors(l, info.n_tensors);

    /* what is checked before the driver is opened */
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.abi_version = MOEPP_LAYER_ABI_VERSION;
    d.layer_index = l;
    d.tensors = t;
    d.n_tensors = info.n_tensors;
    EXPECT(moepp_layer_create(NULL, &layer), MOEPP_ERR_NULL_POINTER);
    CHECK(layer == NULL, "create failed and *out is not NULL");
    d.abi_version = 99;
    EXPECT(moepp_layer_create(&d, &layer), MOEPP_ERR_VERSION);
    d.abi_version = MOEPP_LAYER_ABI_VERSION;
    d.n_tensors = info.n_tensors - 1;
    EXPECT(moepp_layer_create(&d, &layer), MOEPP_ERR_BAD_TENSOR);
    d.n_tensors = info.n_tensors;
    t[0].dtype = t[0].dtype == MOEPP_DTYPE_F32 ? MOEPP_DTYPE_BF16 : MOEPP_DTYPE_F32;
    EXPECT(moepp_layer_create(&d, &layer), MOEPP_ERR_BAD_TENSOR);
    CHECK(strstr(moepp_last_error(), t[0].name) != NULL, "the message names the tensor: %s", moepp_last_error());
    t[0].dtype = t[0].dtype == MOEPP_DTYPE_F32 ? MOEPP_DTYPE_BF16 : MOEPP_DTYPE_F32;
    d.layer_index = info.n_layers;
    EXPECT(moepp_layer_create(&d, &layer), MOEPP_ERR_INVALID_ARGUMENT);
    d.layer_index = l;

    /* the calls on no layer */
    EXPECT(moepp_layer_forward(NULL, y, NULL, y, NULL, 1, NULL), MOEPP_ERR_NULL_POINTER);
    CHECK(y[0] == 1 && y[7] == 8, "y was written by a failed call");
    CHECK(moepp_layer_workspace_size(NULL, 8) == 0, "workspace_size(NULL) is not 0");
    CHECK(moepp_layer_max_tokens(NULL) == 0, "max_tokens(NULL) is not 0");
    EXPECT(moepp_layer_set_workspace(NULL, y, sizeof y), MOEPP_ERR_NULL_POINTER);
    EXPECT(moepp_layer_route_stats(NULL, NULL), MOEPP_ERR_NULL_POINTER);
    moepp_layer_destroy(NULL);

    /* a valid desc: the driver decides */
    s = moepp_layer_create(&d, &layer);
    if (refused) {
        CHECK(s == MOEPP_ERR_UNSUPPORTED, "create: %s, expected MOEPP_ERR_UNSUPPORTED (%s)", moepp_status_string(s),
              moepp_last_error());
        CHECK(layer == NULL, "create failed and *out is not NULL");
        CHECK(strstr(moepp_last_error(), arch) && strstr(moepp_last_error(), "--target"), "message: '%s'",
              moepp_last_error());
        printf("refused: create says %s\n  %s\n", moepp_status_string(s), moepp_last_error());
    } else if (oom) {
        CHECK(s == MOEPP_ERR_OUT_OF_MEMORY, "create: %s, expected MOEPP_ERR_OUT_OF_MEMORY (%s)", moepp_status_string(s),
              moepp_last_error());
        CHECK(layer == NULL, "create failed and *out is not NULL");
        CHECK(strstr(moepp_last_error(), "memory") != NULL, "message: '%s'", moepp_last_error());
        printf("too small a device: create says %s\n  %s\n", moepp_status_string(s), moepp_last_error());
    } else if (s == MOEPP_ERR_NO_DEVICE) {
        CHECK(layer == NULL, "create failed and *out is not NULL");
        CHECK(strlen(moepp_last_error()) > 10, "no message: '%s'", moepp_last_error());
        printf("no GPU: create says %s\n  %s\n", moepp_status_string(s), moepp_last_error());
    } else {
        CHECK(s == MOEPP_OK, "create: %s (%s)", moepp_status_string(s), moepp_last_error());
        if (s == MOEPP_OK) {
            printf("a GPU: the layer was created; host activations must be refused\n");
            gpu_checks(layer);
            moepp_layer_destroy(layer);
        }
    }
    for (int64_t i = 0; i < info.n_tensors; i++) {
        free((void *)t[i].name);
        free((void *)t[i].data);
    }
    free(t);
    printf("%s: %d failure(s)\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
