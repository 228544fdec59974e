/* ops.c — cg_ops_build: the consistency check of a descriptor, the kernel's signature, and the
 * dispatch to the kernel bodies (ops_rows.c, ops_attention.c, ops_moe.c). */
#include "codegen/llvm/ops/ops_build.h"

#include <stdarg.h>

#define MAX_TOP_K 8 /* ROUTE_POST and COMBINE keep a token's picks in registers */

typedef struct {
    int n_ints, n_ptrs; /* the C signature: n_ints int64 arguments, then n_ptrs pointers */
    void (*emit)(Ob *o, const CgOpDesc *d);
} OpInfo;

static const OpInfo op_info[] = {
    [CG_OP_EMBED] = {2, 3, ops_emit_embed},
    [CG_OP_RMS_NORM] = {2, 3, ops_emit_rms_norm},
    [CG_OP_ADD_RMS_NORM] = {2, 5, ops_emit_add_rms_norm},
    [CG_OP_ROPE] = {2, 3, ops_emit_rope},
    [CG_OP_ATTENTION] = {3, 5, ops_emit_attention}, /* (d->amx: ops_emit_attention_amx) */
    [CG_OP_SWIGLU] = {2, 3, ops_emit_elementwise},
    [CG_OP_ADD] = {2, 3, ops_emit_elementwise},
    [CG_OP_SCALE] = {2, 2, ops_emit_elementwise},
    [CG_OP_TANH] = {2, 2, ops_emit_elementwise},
    [CG_OP_ROUTE_POST] = {2, 7, ops_emit_route_post},
    [CG_OP_COMBINE] = {2, 6, ops_emit_combine},
    [CG_OP_DISPATCH] = {1, 5, ops_emit_dispatch},
};
_Static_assert(MOE_ARRAY_LEN(op_info) == CG_OP_COUNT, "one op_info entry per cg_op_kind");

static bool bad(char *err, size_t errlen, const CgOpDesc *d, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static bool bad(char *err, size_t errlen, const CgOpDesc *d, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (err && errlen) snprintf(err, errlen, "cg_ops_build(%s): %s", cg_op_name(d->kind), why);
    return false;
}

static bool check_heads(const CgOpDesc *d, char *err, size_t errlen)
{
    if (d->heads < 1 || d->head_dim < 2 || d->head_dim % 2)
        return bad(err, errlen, d, "heads %lld, head_dim %lld (need heads >= 1, even head_dim)",
                   (long long)d->heads, (long long)d->head_dim);
    if (d->kind == CG_OP_ATTENTION && (d->kv_heads < 1 || d->heads % d->kv_heads))
        return bad(err, errlen, d, "kv_heads %lld does not divide heads %lld", (long long)d->kv_heads,
                   (long long)d->heads);
    if (d->kind == CG_OP_ATTENTION && (d->kv_block < 0 || d->kv_block > 1024))
        return bad(err, errlen, d, "kv_block %d (need 1..1024, or 0 for 16)", d->kv_block);
    if (d->kind == CG_OP_ATTENTION && (d->amx < 0 || d->amx > CG_ATTENTION_DOT))
        return bad(err, errlen, d, "amx %d (need 0, 1 for AMX tiles or 2 for the bf16 dot product)", d->amx);
    if (d->kind == CG_OP_ATTENTION && d->amx && (d->wdtype != DT_BF16 || d->head_dim % 32))
        return bad(err, errlen, d, "amx with %s caches and head_dim %lld (need bf16 and a multiple of 32)",
                   dtype_name(d->wdtype), (long long)d->head_dim);
    return true;
}

static bool check_routing(const CgOpDesc *d, char *err, size_t errlen)
{
    if (d->experts < 1 || d->k < 1 || d->k > MAX_TOP_K || (d->kind == CG_OP_ROUTE_POST && d->k > d->experts))
        return bad(err, errlen, d, "experts %lld, k %lld (need 1 <= k <= min(experts, %d))", (long long)d->experts,
                   (long long)d->k, MAX_TOP_K);
    if (d->kind == CG_OP_ROUTE_POST && (d->zero_lo < 0 || d->zero_lo > d->zero_hi || d->zero_hi > d->experts ||
                                        d->n_const < 0 || d->norm_std < 0 || d->gating < 0 || d->gating > 1))
        return bad(err, errlen, d, "zero experts [%lld, %lld), n_const %lld, norm_std %g, gating %d",
                   (long long)d->zero_lo, (long long)d->zero_hi, (long long)d->n_const, d->norm_std, d->gating);
    return true;
}

static bool check_desc(const CgOpDesc *d, int vec_width, char *err, size_t errlen)
{
    if ((unsigned)d->kind >= CG_OP_COUNT) return bad(err, errlen, d, "unknown kind %d", (int)d->kind);
    if (vec_width != 4 && vec_width != 8 && vec_width != 16)
        return bad(err, errlen, d, "vector width %d (need 4, 8 or 16)", vec_width);
    if (d->amx && (d->kind != CG_OP_ATTENTION || vec_width != 16))
        return bad(err, errlen, d, "amx at vector width %d (attention on AVX-512 only)", vec_width);
    if (d->wdtype != DT_F32 && d->wdtype != DT_BF16 && d->wdtype != DT_F16)
        return bad(err, errlen, d, "weight dtype %s (need f32, bf16 or f16)", dtype_name(d->wdtype));
    switch (d->kind) {
    case CG_OP_ROPE:
    case CG_OP_ATTENTION:
        if (d->kind == CG_OP_ROPE && !(d->theta > 0)) return bad(err, errlen, d, "theta %g", d->theta);
        return check_heads(d, err, errlen);
    case CG_OP_ROUTE_POST:
    case CG_OP_DISPATCH: return check_routing(d, err, errlen);
    case CG_OP_COMBINE:
        if (d->k < 1 || d->k > MAX_TOP_K || d->n_const < 0 || d->copy_lo > d->copy_hi)
            return bad(err, errlen, d, "k %lld, n_const %lld, copy [%lld, %lld)", (long long)d->k,
                       (long long)d->n_const, (long long)d->copy_lo, (long long)d->copy_hi);
        break;
    default: break;
    }
    if (d->kind != CG_OP_DISPATCH && d->kind != CG_OP_ROUTE_POST && d->kind != CG_OP_ATTENTION &&
        d->kind != CG_OP_ROPE && d->cols < 1)
        return bad(err, errlen, d, "cols %lld", (long long)d->cols);
    if ((d->kind == CG_OP_RMS_NORM || d->kind == CG_OP_ADD_RMS_NORM) && !(d->eps > 0))
        return bad(err, errlen, d, "eps %g", d->eps);
    return true;
}

LLVMModuleRef cg_ops_build(LLVMContextRef ctx, const CgOpDesc *d, int vec_width, const char *symbol, char *err,
                           size_t errlen)
{
    if (!check_desc(d, vec_width, err, errlen)) return NULL;
    const OpInfo *info = &op_info[d->kind];
    Ob o;
    LLVMTypeRef params[16];
    MOE_ASSERT(info->n_ints + info->n_ptrs <= (int)MOE_ARRAY_LEN(params));
    int n = 0;
    for (int k = 0; k < info->n_ints; k++) params[n++] = LLVMInt64TypeInContext(ctx);
    for (int k = 0; k < info->n_ptrs; k++) params[n++] = LLVMPointerType(LLVMInt8TypeInContext(ctx), 0);
    ob_begin(&o, ctx, symbol, params, (unsigned)n, vec_width);
    if (d->amx) ops_emit_attention_amx(&o, d);
    else info->emit(&o, d);
    return ob_finish(&o);
}
