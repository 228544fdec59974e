/* layer_image.h — what `moeppc emit --emit lib` (tools/emit_lib.c) generates for embed/layer.c (CPU)
 * or embed/layer_cuda.c (--target sm_XX, or emu): one MoE layer of a spec as planned IR text, the
 * kernels it calls (CPU: linked symbols, as in an executable of `moeppc build`; CUDA: cubin for the
 * target and PTX, as C arrays; emu: the CUDA emulator's kernel objects, whole, in the cubin's place),
 * and the tensors a layer takes. The generated file defines moeppc_layer_image;
 * everything but the moepp_* functions is local to the emitted library. */
#ifndef MOEPPC_EMBED_LAYER_IMAGE_H
#define MOEPPC_EMBED_LAYER_IMAGE_H

#include "runtime/cpu/cpu.h"

typedef struct LayerTensor {
    const char *suffix;           /* after "model.layers.{l}."                                 */
    moe_dtype dtype;
    int ndim;                     /* 1 or 2                                                   */
    int64_t shape[2];
    bool required;                /* false: the gating residual's Wg (zeros when left out)     */
} LayerTensor;

typedef struct LayerImage {
    int backend;                  /* MOEPP_BACKEND_CPU or _CUDA                                */
    const char *spec_name, *isa, *moeppc_version; /* isa: CPU "avx2", ...; CUDA "sm_XX" or "emu" */
    const char *ir_text;          /* the planned one-layer module (ir_lower_moe_layer), its    */
    int64_t layer;                /*   tensors named for this layer index                      */
    int64_t hidden, n_experts, n_ffn, n_const, n_copy, n_zero, top_k, ffn_intermediate;
    int64_t n_layers, moe_every;
    moe_dtype dtype;              /* of the weights                                           */
    bool gating_residual;
    const LayerTensor *tensors;
    int n_tensors;
    const char *cpu, *cpu_features;   /* CPU: what the kernels were compiled for (LLVM's name and  */
                                      /*   feature list), checked at create                      */
    const CpuKernelEntry *kernels;    /* CPU */
    int n_kernels;
    const struct CudaKernelImage *cuda_images; /* CUDA: every kernel, cubin for isa and PTX (emu: no PTX) */
    int n_cuda_images;
} LayerImage;

extern const LayerImage moeppc_layer_image;

#endif
