/* ops_desc.c — the LLVM-free half of cg_ops.h: op names and kernel symbols, which the runtime needs
 * to find kernels in an object file or a table without linking LLVM. */
#include "codegen/llvm/ops/cg_ops.h"

#include <string.h>

static const char *const op_names[] = {
    [CG_OP_EMBED] = "embed",   [CG_OP_RMS_NORM] = "rms_norm", [CG_OP_ADD_RMS_NORM] = "add_rms_norm",
    [CG_OP_ROPE] = "rope",     [CG_OP_ATTENTION] = "attention", [CG_OP_SWIGLU] = "swiglu",
    [CG_OP_ADD] = "add",       [CG_OP_SCALE] = "scale",       [CG_OP_TANH] = "tanh",
    [CG_OP_ROUTE_POST] = "route_post", [CG_OP_COMBINE] = "combine", [CG_OP_DISPATCH] = "dispatch",
};
_Static_assert(MOE_ARRAY_LEN(op_names) == CG_OP_COUNT, "one name per cg_op_kind");

const char *cg_op_name(cg_op_kind k)
{
    return (unsigned)k < CG_OP_COUNT && op_names[k] ? op_names[k] : "?";
}

/* Doubles as their bit patterns: exact, and identifier characters only. */
static unsigned long long bits(double v)
{
    uint64_t u;
    memcpy(&u, &v, sizeof u);
    return (unsigned long long)u;
}

void cg_op_symbol(const CgOpDesc *d, char *out, size_t n)
{
    MOE_ASSERT((unsigned)d->kind < CG_OP_COUNT);
    snprintf(out, n,
             "moeppc_op_%s_%s_c%lld_e%llx_h%lld_%lld_%lld_t%llx_s%llx_x%lld_%lld_g%d_z%lld_%lld_n%llx_k%lld_%lld_%lld_%lld",
             cg_op_name(d->kind), dtype_name(d->wdtype), (long long)d->cols, bits(d->eps), (long long)d->heads,
             (long long)d->kv_heads, (long long)d->head_dim, bits(d->theta), bits(d->s), (long long)d->experts,
             (long long)d->k, d->gating, (long long)d->zero_lo, (long long)d->zero_hi, bits(d->norm_std),
             (long long)d->n_const, (long long)d->const_lo, (long long)d->copy_lo, (long long)d->copy_hi);
}
