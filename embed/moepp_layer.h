/* moepp_layer.h - one MoE++ layer as a library, for engines that keep their own runtime.
 *
 * Written by `moeppc emit SPEC --emit lib [--target sm_XX|emu] -o DIR` next to libmoepp_layer.a,
 * libmoepp_layer.so and moepp_layer.pc; the library holds the kernels moeppc generated for SPEC's MoE
 * layer, specialised for its sizes and for the CPU of the machine that ran moeppc, or (--target
 * sm_80, sm_86, sm_89, sm_90) for NVIDIA GPUs: a CUDA build (see CUDA BUILD below), or (--target emu)
 * a CUDA build for moeppc's CUDA emulator, for tests without a GPU. This header is the whole ABI: C89,
 * versioned (MOEPP_LAYER_ABI_VERSION), every struct of fixed-size fields. The block at the end names
 * the spec this copy was emitted for.
 *
 * WHAT A LAYER COMPUTES (moeppc's SEMANTICS.md section 3; T = n_tokens, D hidden size, E experts,
 * k = top-k)
 *
 *   in   x            f32 [T, D]  the layer's input: RMSNorm(h; post_attention_layernorm), i.e. the
 *                                 normed hidden state, not h itself
 *        residual_in  f32 [T, E]  the gating residual: the router logits the previous MoE layer
 *                                 returned in residual_out; NULL for the first MoE layer (no residual)
 *   out  y            f32 [T, D]  the MoE output sum_j w_j * Expert_{id_j}(u): the residual-stream add
 *                                 (h + y) is the caller's
 *        residual_out f32 [T, E]  this layer's router logits, to pass to the next MoE layer
 *
 *   z  = W2 * tanh(W1 * x)        (two-layer router; W * x for a one-layer router), in f32
 *   z += Wg * residual_in         when the spec has a gating residual and residual_in is not NULL
 *   residual_out = z              (after the gating residual, before logits normalisation/softmax)
 *   (w, ids) = softmax -> top-k -> zero experts' weight 0 -> renormalise   (or the spec's other mode)
 *   u  = s * x                    s = k for MoE++ input scaling, else 1 (see the spec block)
 *   y  = sum_j w_j * Expert_{ids_j}(u): FFN experts Wd * (silu(a) . b) with [a; b] = Wu * u,
 *        constant experts a0*u + a1*v with (a0, a1) = softmax(Wc * u), copy experts u, zero 0
 *
 * Activations are f32 in every build, whatever the weights' dtype (bf16/f16 weights are converted
 * as the kernels load them; every reduction accumulates in f32), except that a library whose isa
 * (moepp_layer_info) is "avx512+bf16" runs the expert GEMMs of bf16 weights on the CPU's bf16 dot
 * product, and one whose isa is "avx512+amx" on its AMX tiles: their inputs (u, and the SwiGLU
 * output h) are rounded to bf16 first, as SEMANTICS.md holds a bf16 model's activations; the
 * router stays f32. Arrays are row-major and
 * contiguous (row t of x starts at x + t*D), aligned to 4 bytes. y may be x (in place) and
 * residual_out may be residual_in; no other overlap is allowed.
 *
 * WEIGHTS are given per tensor (moepp_tensor) by their checkpoint name (SEMANTICS.md section 6, the
 * Hugging Face layout of the released model: "model.layers.{l}.mlp.moe.gate.wg.0.weight", ...) with
 * l = moepp_layer_desc.layer_index, or by the part after "model.layers.{l}."; in that layout
 * (row-major [out, in]) and the spec's dtype. moepp_layer_tensor_info lists what a layer needs.
 * Every layer of a model shares the kernels: one library, one moepp_layer per MoE layer index.
 *
 * MEMORY. The caller owns x, y, the residuals, the stream, the weights and the workspace. The
 * library copies nothing of the caller's, except: the CPU build packs the router's, the experts' and
 * the constant experts' gate matrices into its GEMM panel layout once, at create (a copy in the
 * weights' own dtype, the size of those matrices plus panel padding). The constant vectors are read
 * in place, so the caller's tensors must outlive the layer unless MOEPP_LAYER_COPY_WEIGHTS asks the
 * library to copy them too. Every buffer a forward call uses lies in the workspace the caller gives
 * (moepp_layer_workspace_size, moepp_layer_set_workspace): once it is set, forward allocates nothing.
 * The workspace is scratch between calls; layers that run one after the other may share one (sized
 * for the largest), except that the routing of the last call (moepp_layer_route_stats: ids,
 * weights) lives there until the workspace is used again.
 *
 * ERRORS. Every call that can fail returns a moepp_status; moepp_status_string names the code and
 * moepp_last_error the details of this thread's last failure ("tensor ...: expected bf16 [64, 32],
 * found f32 [64, 32]"). Bad input (NULL pointers, n_tokens <= 0 or above the workspace's maximum,
 * misaligned pointers, a stream or device pointers given to a CPU build, wrong tensors) returns a
 * status and writes nothing to y or residual_out. Broken internal invariants abort.
 *
 * THREADS. Forward runs on the calling thread plus n_threads - 1 workers the layer owns (they sleep
 * between calls). A layer is used by one thread at a time; different layers are independent.
 *
 * BACKENDS. moepp_layer_info.backend says what this build runs on. In a CPU build (MOEPP_BACKEND_CPU)
 * every pointer is a host pointer and stream must be NULL. A CUDA build (MOEPP_BACKEND_CUDA, same
 * ABI) takes device pointers for x, the residuals, y, the weights (MOEPP_MEMORY_DEVICE) and the
 * workspace, and enqueues forward on `stream` (a cudaStream_t) without synchronising.
 *
 * CUDA BUILD (moepp_layer_info.backend == MOEPP_BACKEND_CUDA; info.isa is the GPU architecture the
 * cubins are for, "sm_80", ...).
 *   Kernels: cubin for info.isa and PTX, which the driver compiles at create for newer GPUs (an
 *     older GPU: MOEPP_ERR_UNSUPPORTED). info.isa "emu": the kernels are objects for moeppc's CUDA
 *     emulator (libmoeppc_cudaemu.so, opened instead of libcuda when MOEPPC_CUDA_DRIVER names it),
 *     carried whole in the library; such a library runs only there, and an sm_XX library does not
 *     run there (both: MOEPP_ERR_UNSUPPORTED at create). libcuda.so.1 is opened with dlopen at create: the library
 *     links nothing of CUDA and loads anywhere; without a driver or a GPU, create returns
 *     MOEPP_ERR_NO_DEVICE and moepp_last_error says why.
 *   Device and context: the layer runs on the device of the CUDA context current on the thread that
 *     calls create (after cudaSetDevice(n) in a CUDA runtime program: device n), else device 0, in
 *     that device's primary context, the one the CUDA runtime uses (retained at create, released at
 *     destroy). Every call makes it current and restores the caller's current context before it
 *     returns, so the caller needs no particular context current. Memory the caller allocated in
 *     another context of its own (cuCtxCreate) cannot be used.
 *   Weights: MOEPP_MEMORY_DEVICE tensors are used in place, never copied (the experts' matrices are
 *     reached through a small device table of pointers built at create): they must stay valid and
 *     unchanged until destroy, unless MOEPP_LAYER_COPY_WEIGHTS asks for one device copy of every
 *     tensor at create. MOEPP_MEMORY_HOST tensors are uploaded once at create into device memory
 *     the layer owns (the caller may free them after create). Device tensors must be device (or
 *     managed) memory of the layer's device, 16-byte aligned (the kernels load 16 bytes at a time;
 *     cudaMalloc and PyTorch's allocator give 256): create checks each with cuPointerGetAttribute.
 *   Workspace: device memory (cudaMalloc), 64-byte aligned, moepp_layer_workspace_size(l, T) bytes.
 *   Forward: x, residual_in, y and residual_out are device memory of the layer's device (checked
 *     with cuPointerGetAttribute: a host pointer is MOEPP_ERR_INVALID_ARGUMENT, nothing enqueued).
 *     Every check runs before anything is enqueued; then the kernels and two device-to-device copies
 *     (y, residual_out: written last, so y = x and residual_out = residual_in stay safe) are enqueued
 *     on `stream` and forward returns without synchronising and without allocating. stream is a
 *     cudaStream_t / CUstream of the layer's device (the same handle); NULL is the legacy default
 *     stream (stream 0; pass cudaStreamPerThread for the per-thread one). y and residual_out are
 *     written when the stream has run the call. Calls of one layer (and of layers sharing a
 *     workspace) must run one after the other on the GPU: use one stream, or order the streams.
 *     A kernel that fails on the GPU is reported by the caller's next synchronisation, as any CUDA
 *     error; forward's own status covers what it checked and enqueued.
 *   Routing statistics: moepp_layer_route_stats after the caller has waited for the stream (e.g.
 *     cudaStreamSynchronize) and before the workspace is used again: ids and weights are device
 *     pointers into the workspace; the counts (picks_*) are computed by that call, which copies the
 *     n_tokens * top_k ids to the host (a synchronous copy; it does not wait for the stream itself).
 *   n_threads is ignored.
 *
 * EXAMPLE
 *   moepp_layer_desc d = {0};  moepp_layer *l;  size_t n;  void *ws;
 *   d.struct_size = sizeof d;  d.abi_version = MOEPP_LAYER_ABI_VERSION;
 *   d.layer_index = 3;  d.tensors = tensors;  d.n_tensors = n_tensors;  d.n_threads = 8;
 *   if (moepp_layer_create(&d, &l) != MOEPP_OK) { puts(moepp_last_error()); return 1; }
 *   n = moepp_layer_workspace_size(l, 512);  ws = aligned_alloc(64, n);  moepp_layer_set_workspace(l, ws, n);
 *   moepp_layer_forward(l, xn, r_prev, y, r_next, n_tokens, NULL);     then h += y
 *   moepp_layer_destroy(l);  free(ws);
 * Build: cc app.c $(pkg-config --cflags --libs moepp_layer)   (PKG_CONFIG_PATH=DIR; or, static,
 *        cc app.c $(pkg-config --cflags moepp_layer) $(pkg-config --variable=static_libs moepp_layer))
 */
#ifndef MOEPP_LAYER_H
#define MOEPP_LAYER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any change of a struct, a signature or a meaning below. */
#define MOEPP_LAYER_ABI_VERSION 1

typedef enum moepp_status {
    MOEPP_OK = 0,
    MOEPP_ERR_NULL_POINTER = 1,          /* a required pointer is NULL                               */
    MOEPP_ERR_INVALID_ARGUMENT = 2,      /* a value out of range: n_tokens <= 0, a layer index that
                                            is not an MoE layer, n_threads, flags, ...; in a CUDA
                                            build, a pointer that is not device memory of the layer's
                                            device where the ABI needs one (or device memory marked
                                            MOEPP_MEMORY_HOST)                                         */
    MOEPP_ERR_MISALIGNED = 3,            /* activations not 4-byte aligned, a tensor not aligned to
                                            its element size (a CUDA build's device tensors: to 16
                                            bytes), a workspace not 64-byte aligned                   */
    MOEPP_ERR_UNSUPPORTED = 4,           /* not what this build runs: a stream or a device pointer
                                            given to a CPU build, a CPU lacking the kernels' ISA, a
                                            GPU older than a CUDA build's architecture                */
    MOEPP_ERR_BAD_TENSOR = 5,            /* a weight missing, unknown, given twice, or of the wrong
                                            dtype or shape                                            */
    MOEPP_ERR_NO_WORKSPACE = 6,          /* forward before moepp_layer_set_workspace                  */
    MOEPP_ERR_WORKSPACE_TOO_SMALL = 7,   /* a workspace smaller than one token needs, or n_tokens
                                            above what the workspace holds (moepp_layer_max_tokens)  */
    MOEPP_ERR_VERSION = 8,               /* desc.abi_version or desc.struct_size is not this header's */
    MOEPP_ERR_OUT_OF_MEMORY = 9,         /* the packed weights do not fit in the available memory
                                            (CUDA build: device memory)                               */
    MOEPP_ERR_INTERNAL = 10,             /* (CUDA build: also a driver call that failed, with the
                                            driver's message in moepp_last_error)                     */
    MOEPP_ERR_NO_DEVICE = 11             /* CUDA build: no usable driver or GPU (libcuda.so.1 missing,
                                            no device, the driver failed to start). Added to version
                                            1 (codes are only ever added); a CPU build never returns it */
} moepp_status;

typedef enum moepp_dtype {
    MOEPP_DTYPE_F32 = 0,
    MOEPP_DTYPE_BF16 = 1,
    MOEPP_DTYPE_F16 = 2
} moepp_dtype;

typedef enum moepp_memory {
    MOEPP_MEMORY_HOST = 0,
    MOEPP_MEMORY_DEVICE = 1              /* CUDA builds only */
} moepp_memory;

typedef enum moepp_backend {
    MOEPP_BACKEND_CPU = 0,
    MOEPP_BACKEND_CUDA = 1
} moepp_backend;

/* desc.flags */
#define MOEPP_LAYER_COPY_WEIGHTS 1u      /* copy every tensor the layer keeps reading (the constant
                                            vectors; in a CUDA build every device tensor): the caller
                                            may free its weights after create                         */

/* One weight: row-major, contiguous, aligned to its element size. */
typedef struct moepp_tensor {
    const char *name;                    /* "model.layers.{l}.mlp.moe...." or "mlp.moe...."         */
    const void *data;
    int32_t dtype;                       /* moepp_dtype: must be the spec's (moepp_layer_info)        */
    int32_t memory;                      /* moepp_memory                                              */
    int32_t ndim;                        /* 1 or 2                                                    */
    int32_t reserved;                    /* 0                                                         */
    int64_t shape[4];                    /* shape[0..ndim), checked                                   */
} moepp_tensor;

typedef struct moepp_layer_desc {
    uint32_t struct_size;                /* sizeof(moepp_layer_desc)                                  */
    uint32_t abi_version;                /* MOEPP_LAYER_ABI_VERSION                                   */
    int64_t layer_index;                 /* l: an MoE layer of the spec ((l + 1) % moe_every == 0)    */
    const moepp_tensor *tensors;         /* the layer's weights, in any order (the array itself is
                                            read only during create)                                  */
    int64_t n_tensors;
    int32_t n_threads;                   /* CPU threads per forward, the caller's included; 0 = 1
                                            (ignored by a CUDA build)                                 */
    uint32_t flags;                      /* MOEPP_LAYER_COPY_WEIGHTS                                  */
} moepp_layer_desc;

typedef struct moepp_layer moepp_layer;

/* Create a layer from its weights (validated: names, dtypes, shapes, alignment). *out is NULL on
 * failure. The optional gating-residual matrix Wg (...mlp.moe.gate.gate_map.weight) may be left out
 * only for a layer that is always called with residual_in = NULL. */
moepp_status moepp_layer_create(const moepp_layer_desc *desc, moepp_layer **out);

/* Bytes (a multiple of 64) of a workspace for calls of up to max_tokens tokens (CUDA build: of
 * device memory); 0 if l is NULL or max_tokens is outside [1, 2^31). */
size_t moepp_layer_workspace_size(const moepp_layer *l, int64_t max_tokens);

/* Give the layer its workspace: `bytes` bytes at `workspace`, 64-byte aligned, owned by the caller
 * and not used by it while the layer runs. The most tokens a call may then have is the largest T
 * with moepp_layer_workspace_size(l, T) <= bytes (moepp_layer_max_tokens). May be called again. */
moepp_status moepp_layer_set_workspace(moepp_layer *l, void *workspace, size_t bytes);

/* The most tokens a forward call may have with the workspace given; 0 without one or if l is NULL. */
int64_t moepp_layer_max_tokens(const moepp_layer *l);

/* Run the layer on n_tokens tokens (see the top of this file). residual_in and residual_out may be
 * NULL; residual_in is ignored by a spec without gating residual. stream: NULL in a CPU build. */
moepp_status moepp_layer_forward(moepp_layer *l, const void *x, const void *residual_in, void *y,
                                 void *residual_out, int64_t n_tokens, void *stream);

/* Routing of the last successful forward call (in a CUDA build, ids and weights are device
 * pointers, valid once the stream has run the call; call this only then: see CUDA BUILD above). */
typedef struct moepp_route_stats {
    int64_t n_tokens;                    /* 0 before the first call                                   */
    int64_t top_k;
    int64_t n_experts;
    int64_t picks_ffn;                   /* of the n_tokens * top_k picks, by kind of expert          */
    int64_t picks_const;
    int64_t picks_copy;
    int64_t picks_zero;
    const int64_t *picks_per_expert;     /* [n_experts], owned by the layer, until the next call       */
    const int32_t *ids;                  /* [n_tokens, top_k] expert of each pick, in the workspace:   */
    const float *weights;                /* [n_tokens, top_k] its gate weight; valid until the
                                            workspace is next used (by this layer or another)         */
} moepp_route_stats;
moepp_status moepp_layer_route_stats(const moepp_layer *l, moepp_route_stats *out);

/* Free the layer, its packed weights and its threads (not the workspace: the caller's). NULL is ok. */
void moepp_layer_destroy(moepp_layer *l);

/* "MOEPP_ERR_MISALIGNED: a pointer is not aligned ..."; never NULL. */
const char *moepp_status_string(moepp_status s);
/* Details of this thread's last failed call ("" if none), until its next failed call. */
const char *moepp_last_error(void);

/* ---- what this library was built for ---------------------------------------------------------- */
typedef struct moepp_layer_info {
    uint32_t abi_version;                /* MOEPP_LAYER_ABI_VERSION of the library                    */
    int32_t backend;                     /* moepp_backend                                             */
    char spec_name[64];
    char isa[16];                        /* CPU: "avx512" ("avx512+bf16": its bf16 GEMMs need
                                            AVX512-BF16 too; "avx512+amx": AMX-BF16, and Linux's
                                            leave to use the tiles, asked at the first forward),
                                            "avx2" or "sse" (the kernels need it,
                                            and the extensions of the CPU they were compiled on:
                                            create checks them all and names any missing one);
                                            CUDA: the cubins' architecture, "sm_80", ..., or "emu"     */
    char moeppc_version[16];
    int64_t hidden;                      /* D                                                         */
    int64_t n_experts;                   /* E = n_ffn + n_const + n_copy + n_zero, in that order      */
    int64_t n_ffn;
    int64_t n_const;
    int64_t n_copy;
    int64_t n_zero;
    int64_t top_k;
    int64_t ffn_intermediate;            /* I                                                         */
    int64_t n_layers;                    /* of the spec; layer l is MoE iff (l + 1) % moe_every == 0  */
    int64_t moe_every;
    int32_t weight_dtype;                /* moepp_dtype                                               */
    int32_t gating_residual;             /* 1: residual_in / residual_out carry router logits          */
    int64_t n_tensors;                   /* tensors one layer takes (moepp_layer_tensor_info)         */
} moepp_layer_info;
moepp_status moepp_layer_get_info(moepp_layer_info *out);

typedef struct moepp_tensor_info {
    char name[160];                      /* the full name for layer_index                             */
    int32_t dtype;
    int32_t ndim;
    int64_t shape[4];
    int32_t required;                    /* 0: may be left out (the gating residual's Wg)             */
    int32_t reserved;
} moepp_tensor_info;
/* Tensor i (0 <= i < info.n_tensors) of layer layer_index. */
moepp_status moepp_layer_tensor_info(int64_t layer_index, int64_t i, moepp_tensor_info *out);

/* @MOEPP_LAYER_SPEC@ */

#ifdef __cplusplus
}
#endif

#endif /* MOEPP_LAYER_H */
