/* widen.c — widen-activations: the CPU backend computes every activation in f32.
 *
 * bf16/f16 models keep their weights in the stored dtype (the GEMM micro-kernels convert them as
 * they load them) but hold activations in f32, which AVX-512 computes at full rate and which is at
 * least as accurate as the model dtype (SEMANTICS §4 accumulates every reduction in f32 anyway).
 * Values that were bf16/f16 become f32; the converts between them then fold away in simplify. The
 * interpreter runs the widened IR as it runs any other, so the executor is checked against it.
 *
 * Except attention's keys and values, which the KV cache holds: an attention whose k was bf16/f16
 * gets kv_dtype = that type, and k and v are held so (rounded to it on the way into the cache, as
 * SEMANTICS §4 holds them): half the cache's memory and of what every decode step reads from it. */
#include "passes/passes.h"

static bool narrow(moe_dtype t) { return t == DT_BF16 || t == DT_F16; }

bool pass_widen_activations(IrModule *m, const PassOptions *o)
{
    (void)o;
    for (IrInstr *i = m->first; i; i = i->next)
        if (i->op == IR_OP_ATTENTION && narrow(i->in[1]->type.dtype) && !ir_attr_get(i, "kv_dtype"))
            ir_attr_set_str(m, i, "kv_dtype", dtype_name(i->in[1]->type.dtype));
    for (IrInstr *i = m->first; i; i = i->next)
        for (int k = 0; k < i->n_out; k++)
            if (narrow(i->out[k]->type.dtype)) i->out[k]->type.dtype = DT_F32;
    return pass_simplify(m, o);
}
