/* cuda_spec.c — the kernels a model of a spec needs, with the constants the passes give them (the
 * descriptors cpu.c builds from the final IR), so the whole set can be compiled without a GPU. */
#include "codegen/cuda/cg_cuda.h"
#include "frontend/frontend.h"

#include <string.h>

static void add_op(CgOpDesc *ops, int *n, CgOpDesc d)
{
    char a[600], b[600];
    cg_op_symbol(&d, a, sizeof a);
    for (int i = 0; i < *n; i++) {
        cg_op_symbol(&ops[i], b, sizeof b);
        if (strcmp(a, b) == 0) return;
    }
    ops[(*n)++] = d;
}

void cg_cuda_spec_kernels(const ModelSpec *s, CgOpDesc **ops_out, int *n_ops, CgCudaGemm **gemms_out, int *n_gemms)
{
    CgOpDesc *ops = xcalloc(32, sizeof *ops);
    int n = 0;
    int64_t D = s->hidden, H = s->n_heads, Hk = s->n_kv_heads, hd = spec_head_dim(s), E = spec_n_experts(s);
    moe_dtype dt = s->dtype;
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_EMBED, .wdtype = dt, .cols = D});
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_RMS_NORM, .wdtype = dt, .cols = D, .eps = s->norm_eps});
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_ADD_RMS_NORM, .wdtype = dt, .cols = D, .eps = s->norm_eps});
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_ROPE, .cols = H * hd, .heads = H, .head_dim = hd, .theta = s->rope_theta});
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_ROPE, .cols = Hk * hd, .heads = Hk, .head_dim = hd, .theta = s->rope_theta});
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_ATTENTION, .cols = H * hd, .heads = H, .kv_heads = Hk, .head_dim = hd});
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_ADD, .cols = D});
    if (s->dense_intermediate > 0) add_op(ops, &n, (CgOpDesc){.kind = CG_OP_SWIGLU, .cols = s->dense_intermediate});
    if (s->router_layers == 2) add_op(ops, &n, (CgOpDesc){.kind = CG_OP_TANH, .cols = 8 * E});
    double sc = spec_input_scale(s);
    if (s->n_const) add_op(ops, &n, (CgOpDesc){.kind = CG_OP_SCALE, .cols = D, .s = sc});
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_ROUTE_POST, .cols = E, .experts = E, .k = s->top_k,
                               .gating = s->gating == GATING_TOPK_SOFTMAX, .zero_lo = E - s->n_zero, .zero_hi = E,
                               .norm_std = s->logits_norm ? s->logits_norm_std : 0.0, .n_const = s->n_const});
    int64_t copy_lo = s->n_ffn + s->n_const;
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_COMBINE, .wdtype = s->n_const ? dt : DT_F32, .cols = D, .s = sc,
                               .k = s->top_k, .n_const = s->n_const, .const_lo = s->n_ffn, .copy_lo = copy_lo,
                               .copy_hi = copy_lo + s->n_copy});
    add_op(ops, &n, (CgOpDesc){.kind = CG_OP_DISPATCH, .experts = s->n_ffn, .k = s->top_k});
    *ops_out = ops;
    *n_ops = n;

    CgCudaGemm *g = xcalloc(6, sizeof *g);
    cg_cuda_gemm_path tiled = dt == DT_F32 ? CG_CUDA_PATH_FMA : CG_CUDA_PATH_MMA;
    int64_t I = s->ffn_intermediate;
    g[0] = cg_cuda_gemm_default(CG_CUDA_GEMM_UP, tiled, dt, s->n_ffn, s->top_k, I, D);
    g[1] = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, tiled, dt, s->n_ffn, s->top_k, D, I);
    g[2] = cg_cuda_gemm_default(CG_CUDA_GEMM_UP, CG_CUDA_PATH_GEMV, dt, s->n_ffn, s->top_k, I, D);
    g[3] = cg_cuda_gemm_default(CG_CUDA_GEMM_DOWN, CG_CUDA_PATH_GEMV, dt, s->n_ffn, s->top_k, D, I);
    g[4] = cg_cuda_gemm_decode(&g[2]);
    g[5] = cg_cuda_gemm_decode(&g[3]);
    *gemms_out = g;
    *n_gemms = 6;
}
