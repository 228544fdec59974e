/* ops_desc.c — the LLVM-free half of cg_ops.h: op names and kernel symbols, which the runtime needs
 * to find kernels in an object file or a table without linking LLVM. */
#include "codegen/llvm/ops/cg_ops.h"

#include "ir/ir.h"

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
             "moeppc_op_%s_%s_c%lld_e%llx_h%lld_%lld_%lld_b%d_a%d_t%llx_s%llx_x%lld_%lld_g%d_z%lld_%lld_n%llx_k%lld_%lld_%lld_%lld",
             cg_op_name(d->kind), dtype_name(d->wdtype), (long long)d->cols, bits(d->eps), (long long)d->heads,
             (long long)d->kv_heads, (long long)d->head_dim, d->kv_block, d->amx, bits(d->theta), bits(d->s), (long long)d->experts,
             (long long)d->k, d->gating, (long long)d->zero_lo, (long long)d->zero_hi, bits(d->norm_std),
             (long long)d->n_const, (long long)d->const_lo, (long long)d->copy_lo, (long long)d->copy_hi);
}

static int64_t last_dim(const IrValue *v) { return v->type.dims[v->type.ndim - 1]; }

bool cg_op_desc_for(const IrInstr *i, CgOpDesc *d)
{
    *d = (CgOpDesc){.kind = CG_OP_COUNT, .wdtype = DT_F32, .cols = i->n_out ? last_dim(i->out[0]) : 0};
    switch (i->op) {
    case IR_OP_EMBED: d->kind = CG_OP_EMBED, d->wdtype = i->in[0]->type.dtype; break;
    case IR_OP_RMS_NORM: d->kind = CG_OP_RMS_NORM, d->wdtype = i->in[1]->type.dtype, d->eps = ir_attr_float(i, "eps"); break;
    case IR_OP_ADD_RMS_NORM:
        d->kind = CG_OP_ADD_RMS_NORM, d->wdtype = i->in[2]->type.dtype, d->eps = ir_attr_float(i, "eps");
        break;
    case IR_OP_ROPE:
        d->kind = CG_OP_ROPE, d->heads = ir_attr_int(i, "heads"), d->head_dim = d->cols / d->heads;
        d->theta = ir_attr_float(i, "theta");
        break;
    case IR_OP_SWIGLU: d->kind = CG_OP_SWIGLU; break;
    case IR_OP_ADD: d->kind = CG_OP_ADD; break;
    case IR_OP_SCALE: d->kind = CG_OP_SCALE, d->s = ir_attr_float(i, "s"); break;
    case IR_OP_TANH: d->kind = CG_OP_TANH; break;
    case IR_OP_MOE_COMBINE:
        d->kind = CG_OP_COMBINE, d->s = ir_attr_float(i, "s"), d->n_const = ir_attr_int(i, "n_const");
        d->const_lo = ir_attr_int(i, "const_lo"), d->copy_lo = ir_attr_int(i, "copy_lo");
        d->copy_hi = ir_attr_int(i, "copy_hi"), d->k = last_dim(i->in[1]);
        d->wdtype = d->n_const ? i->in[4]->type.dtype : DT_F32;
        break;
    case IR_OP_ATTENTION: {
        int64_t H = ir_attr_int(i, "heads"), hd = last_dim(i->in[0]) / H;
        const IrAttr *kb = ir_attr_get(i, "kv_block"), *kvd = ir_attr_get(i, "kv_dtype");
        *d = (CgOpDesc){.kind = CG_OP_ATTENTION, .heads = H, .kv_heads = ir_attr_int(i, "kv_heads"), .head_dim = hd,
                        .cols = H * hd, .kv_block = kb && kb->i != CG_ATTENTION_KV_BLOCK ? (int)kb->i : 0}; /* the default's symbol */
        if (kvd && !dtype_parse(kvd->s, &d->wdtype)) return false; /* (the verifier says which) */
        const IrAttr *amx = ir_attr_get(i, "amx");
        d->amx = amx ? (int)amx->i : 0; /* (the verifier holds it to 0, 1, 2) */
        if (d->amx) d->kv_block = 0; /* (the FMA form's knob: one kernel, whatever the op says) */
        break;
    }
    case IR_OP_MOE_DISPATCH:
        *d = (CgOpDesc){.kind = CG_OP_DISPATCH, .experts = ir_attr_int(i, "experts"), .k = last_dim(i->in[0])};
        break;
    case IR_OP_MOE_ROUTE: {
        int64_t E = ir_attr_int(i, "experts");
        *d = (CgOpDesc){.kind = CG_OP_ROUTE_POST, .experts = E, .k = ir_attr_int(i, "k"),
                        .gating = (int)ir_attr_int(i, "gating"), .zero_lo = ir_attr_int(i, "zero_lo"),
                        .zero_hi = ir_attr_int(i, "zero_hi"), .norm_std = ir_attr_float(i, "norm_std"),
                        .n_const = ir_attr_int(i, "n_const"), .cols = E};
        break;
    }
    default: return false;
    }
    return true;
}

size_t cg_route_scratch_floats(const IrModule *m)
{
    size_t most = 0;
    for (const IrInstr *i = m->first; i; i = i->next) {
        if (i->op != IR_OP_MOE_ROUTE) continue;
        int64_t E = ir_attr_int(i, "experts"), L = ir_attr_int(i, "router_layers");
        size_t n = (size_t)((L == 2 ? i->in[1]->type.dims[0] : 0) + 2 * E + last_dim(i->in[0]) + 2 * ir_attr_int(i, "n_const"));
        if (n > most) most = n;
    }
    return most;
}
