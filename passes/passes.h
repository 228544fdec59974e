/* passes.h — the optimisation pipeline: the dense form in, the sparse, fused and planned form out.
 *
 * In:  a verified IrModule in the dense form (ir_lower_spec), or IR text at any stage.
 * Out: the same module rewritten in place. Each pass is one file of passes/, and every pass is
 *      followed by ir_verify; a pass that finds nothing to do leaves the module as it was.
 *      -O0 runs nothing (the dense form); -O1 and up run, in this order:
 *        simplify         drop identities: scale by 1, converts to the same type, full-width slices
 *        dce              remove what no output needs; drop unused params
 *        fuse-routing     the router chain of each MoE layer → one moe.route (ids, weights, logits, α)
 *        elide-experts    zero experts vanish; copy/constant experts → one moe.combine (residual adds)
 *        group-experts    the FFN expert sum → moe.dispatch + moe.grouped_up (SwiGLU epilogue) +
 *                         moe.grouped_down (gate-weighted scatter-add epilogue)
 *        dce
 *        specialize       tile configuration on every GEMM for the target; residual add + RMSNorm fused
 *        plan-memory      every intermediate gets an offset a·T + b in one activation arena
 *      For code generation (PassOptions.codegen) widen-activations runs first: activations in f32,
 *      weights left in their stored dtype.
 * Memory: passes allocate from the module's arena; nothing to free.
 */
#ifndef MOEPPC_PASSES_H
#define MOEPPC_PASSES_H

#include "ir/ir.h"

typedef enum { TARGET_CPU, TARGET_SM80, TARGET_SM86, TARGET_SM89, TARGET_SM90 } pass_target;
bool pass_target_parse(const char *s, pass_target *out);
const char *pass_target_name(pass_target t);

typedef struct PassOptions {
    int opt_level;            /* 0: dense form; 1 (default): the whole pipeline */
    pass_target target;
    const char *print_after;  /* a pass name, or "all"; NULL: none */
    FILE *print_out;          /* where --print-after writes (stdout) */
    bool codegen;             /* for a code generator: widen-activations runs first */
    const struct TuneDb *tuning; /* measured tiles (passes/tuning.h) for specialize; NULL: the rule */
    bool bf16_dot;            /* CPU codegen: GEMMs of bf16 weights (not the router's) take their
                                 activations rounded to bf16 (act_bf16 = 1), for the bf16 dot-product
                                 kernels; the caller decides (cpu_bf16_dot) */
    bool amx;                 /* CPU codegen: the same GEMMs (act_bf16 = 1) on AMX tiles (amx = 1; the
                                 rule's 32 x 32 tile, no database entry); the caller decides (cpu_amx) */
    int cpu_tile_m, cpu_tile_n, cpu_vec; /* CPU codegen: the rule's register tile and the vector width of
                                 the ISA the kernels are compiled for (cpu_host_pass_options); 0:
                                 AVX-512's 8 × 48 on 16 lanes, so that output without a host (compile)
                                 is the same everywhere */
} PassOptions;

typedef bool (*PassFn)(IrModule *m, const PassOptions *o);

/* Run the pipeline; false (with diagnostics) only if a pass broke the IR — an internal error. */
bool passes_run(IrModule *m, const PassOptions *o, Diag *d);
/* Run one pass by name (for per-pass golden tests); false with a message for an unknown name. */
bool passes_run_one(IrModule *m, const char *name, const PassOptions *o, Diag *d);
/* The pass names, NULL-terminated, in pipeline order. */
const char *const *passes_names(void);

/* the passes */
bool pass_widen_activations(IrModule *m, const PassOptions *o);
bool pass_simplify(IrModule *m, const PassOptions *o);
bool pass_dce(IrModule *m, const PassOptions *o);
bool pass_fuse_routing(IrModule *m, const PassOptions *o);
bool pass_elide_experts(IrModule *m, const PassOptions *o);
bool pass_group_experts(IrModule *m, const PassOptions *o);
bool pass_specialize(IrModule *m, const PassOptions *o);
bool pass_plan_memory(IrModule *m, const PassOptions *o);

/* plan_memory.c: the planned arena size for T tokens, and the sum of every intermediate for comparison */
double plan_arena_bytes(const IrModule *m, int64_t T);
double plan_naive_bytes(const IrModule *m, int64_t T);

#endif
