/* cpu_jit.c — the executor's kernels from the JIT: GEMM micro-kernels (cg_jit_kernel) and op kernels
 * (cg_ops_build → cg_jit_compile_module), each compiled on first request and cached by symbol. */
#include "codegen/llvm/cg_internal.h"
#include "passes/passes.h"
#include "runtime/cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

/* The kernel jit makes for what an op asks: its tile if the ISA (or AMX) holds it, else the default,
 * in the form the ISA runs it (cg_kernel_form: on AVX-512 bf16 weights in k pairs). */
static CgKernelConfig cpu_gemm_config(CgJit *jit, const CgKernelConfig *want)
{
    if (want->amx) return cg_kernel_config_amx(want->mr, want->nr);
    CgKernelConfig cfg = cg_kernel_config_tile(jit, want->b_dtype, want->mr, want->nr, want->k_unroll);
    cfg.a_bf16 = want->a_bf16;
    cfg.kpair_b = want->kpair_b; /* an AMX kernel's few-row edges */
    return cg_kernel_form(cg_jit_target(jit), cfg);
}

typedef struct {
    CgJit *jit;
    char **symbols;
    void **fns;
    int n;
} JitSource;

static const CgKernel *jit_gemm(void *ctx, const CgKernelConfig *want, RtError *err)
{
    JitSource *js = ctx;
    CgKernelConfig cfg = cpu_gemm_config(js->jit, want);
    const CgKernel *k = cg_jit_kernel(js->jit, &cfg, NULL, err->msg, sizeof err->msg);
    return k;
}

/* An op kernel in the cache jit_op looks in. */
static void keep_op(JitSource *js, const char *sym, void *fn)
{
    js->symbols = xrealloc(js->symbols, (size_t)(js->n + 1) * sizeof *js->symbols);
    js->fns = xrealloc(js->fns, (size_t)(js->n + 1) * sizeof *js->fns);
    js->symbols[js->n] = xstrdup(sym);
    js->fns[js->n++] = fn;
}

static void *jit_op(void *ctx, const CgOpDesc *d, RtError *err)
{
    JitSource *js = ctx;
    char sym[256];
    cg_op_symbol(d, sym, sizeof sym);
    for (int k = 0; k < js->n; k++)
        if (strcmp(js->symbols[k], sym) == 0) return js->fns[k];
    const CgTarget *t = cg_jit_target(js->jit);
    if (d->kind == CG_OP_ATTENTION && ((d->amx == CG_ATTENTION_AMX && !t->has_amx) ||
                                       (d->amx == CG_ATTENTION_DOT && !t->has_bf16_dot))) {
        snprintf(err->msg, sizeof err->msg, "attention's amx form %d needs %s, which this CPU (at ISA %s) lacks",
                 d->amx, d->amx == CG_ATTENTION_AMX ? "AMX-BF16 tiles" : "AVX512-BF16", cg_isa_name(t->isa));
        return NULL;
    }
    LLVMModuleRef mod = cg_ops_build(cg_jit_context(js->jit), d, t->vec_width, sym, err->msg, sizeof err->msg);
    void *fn = mod ? cg_jit_compile_module(js->jit, mod, sym, err->msg, sizeof err->msg) : NULL;
    if (fn) keep_op(js, sym, fn);
    return fn;
}

/* ---- every kernel of a module at once ---------------------------------------------------------- */

static LLVMModuleRef build_op(LLVMContextRef ctx, const void *arg, int vec_width, const char *symbol, char *err,
                              size_t errlen)
{
    return cg_ops_build(ctx, arg, vec_width, symbol, err, errlen);
}

static bool listed(const CpuKernelList *l, const char *sym)
{
    for (int k = 0; k < l->n; k++)
        if (strcmp(l->jobs[k].symbol, sym) == 0) return true;
    return false;
}

static CgJitJob *list_job(CpuKernelList *l)
{
    l->jobs = xrealloc(l->jobs, (size_t)(l->n + 1) * sizeof *l->jobs);
    l->ops = xrealloc(l->ops, (size_t)(l->n + 1) * sizeof *l->ops);
    CgJitJob *j = &l->jobs[l->n++];
    memset(j, 0, sizeof *j);
    return j;
}

static const CgKernel *list_gemm(void *ctx, const CgKernelConfig *want, RtError *err)
{
    (void)err;
    CpuKernelList *l = ctx;
    CgKernelConfig cfg = cpu_gemm_config(l->jit, want);
    CgKernel *k = xcalloc(1, sizeof *k);
    k->cfg = cfg;
    cg_kernel_symbol(&cfg, cg_jit_target(l->jit)->isa, k->symbol, sizeof k->symbol);
    l->fake = xrealloc(l->fake, (size_t)(l->n_fake + 1) * sizeof *l->fake);
    l->fake[l->n_fake++] = k;
    if (!listed(l, k->symbol)) {
        CgJitJob *j = list_job(l);
        j->gemm = true, j->cfg = cfg;
        snprintf(j->symbol, sizeof j->symbol, "%s", k->symbol);
    }
    return k;
}

static void *list_op(void *ctx, const CgOpDesc *d, RtError *err)
{
    (void)err;
    CpuKernelList *l = ctx;
    char sym[256];
    cg_op_symbol(d, sym, sizeof sym);
    if (!listed(l, sym)) {
        CgJitJob *j = list_job(l);
        l->ops[l->n - 1] = *d;
        j->build = build_op;
        snprintf(j->symbol, sizeof j->symbol, "%s", sym);
    }
    return l; /* (never called: the preparation is dry) */
}

bool cpu_kernel_list(CgJit *jit, const IrModule *m, CpuKernelList *l, RtError *err)
{
    *l = (CpuKernelList){.jit = jit};
    CpuKernelSource asks = {l, list_gemm, list_op, NULL};
    bool ok = cpu_request_kernels(m, &asks, err);
    for (int k = 0; k < l->n; k++) l->jobs[k].arg = l->jobs[k].gemm ? NULL : &l->ops[k];
    return ok;
}

void cpu_kernel_list_free(CpuKernelList *l)
{
    for (int k = 0; k < l->n_fake; k++) free(l->fake[k]);
    free(l->fake);
    free(l->jobs);
    free(l->ops);
    *l = (CpuKernelList){0};
}

static bool jit_serial(void)
{
    const char *serial = getenv("MOEPPC_JIT_SERIAL");
    return serial && *serial && strcmp(serial, "0") != 0;
}

int cpu_jit_threads(void)
{
    if (jit_serial()) return 1;
    int cpus = cpus_available();
    return cpus < 8 ? cpus : 8;
}

static bool jit_prefetch(void *ctx, const IrModule *m, RtError *err)
{
    JitSource *js = ctx;
    CpuKernelList l;
    bool ok = cpu_kernel_list(js->jit, m, &l, err);
    int n = 0; /* only what the JIT has not made yet */
    for (int k = 0; k < l.n; k++) {
        bool made = l.jobs[k].gemm && cg_jit_has_kernel(js->jit, &l.jobs[k].cfg);
        for (int o = 0; !made && !l.jobs[k].gemm && o < js->n; o++) made = strcmp(js->symbols[o], l.jobs[k].symbol) == 0;
        if (!made) l.jobs[n++] = l.jobs[k];
    }
    ok = ok && cg_jit_compile_many(js->jit, l.jobs, n, cpu_jit_threads(), err->msg, sizeof err->msg);
    for (int k = 0; k < n; k++)
        if (!l.jobs[k].gemm && l.jobs[k].fn) keep_op(js, l.jobs[k].symbol, l.jobs[k].fn);
    cpu_kernel_list_free(&l);
    return ok;
}

/* cpu_bf16_dot's decision, and why in buf[n] (n may be 0). */
static bool bf16_dot_decide(char *buf, size_t n)
{
    CgTarget t;
    char err[256];
    if (!cg_target_detect(&t, CG_ISA_AUTO, err, sizeof err)) { /* a bad MOEPPC_ISA: said where it is used */
        if (n) snprintf(buf, n, "no (%s)", err);
        return false;
    }
    const char *env = getenv("MOEPPC_BF16_DOT");
    bool pays = cg_bf16_dot_pays(&t);
    const char *yes = pays ? "yes" : "no";
    if (n && !t.has_bf16_dot)
        snprintf(buf, n, "no (%s)", t.isa == CG_ISA_AVX512 ? "no AVX512-BF16" : "ISA below AVX-512");
    else if (n && env && (!strcmp(env, "0") || !strcmp(env, "1")))
        snprintf(buf, n, "%s (MOEPPC_BF16_DOT=%s)", yes, env);
    else if (n)
        snprintf(buf, n, "%s (vdpbf16ps %.2fx the f32 FMA's multiply-adds)", yes, cg_bf16_dot_ratio(&t));
    cg_target_dispose(&t);
    return pays;
}

bool cpu_bf16_dot(void) { return bf16_dot_decide(NULL, 0); }

/* cpu_amx's decision, and why in buf[n] (n may be 0). */
static bool amx_decide(char *buf, size_t n)
{
    CgTarget t;
    char err[256];
    if (!cg_target_detect(&t, CG_ISA_AUTO, err, sizeof err)) {
        if (n) snprintf(buf, n, "no (%s)", err);
        return false;
    }
    const char *env = getenv("MOEPPC_AMX");
    bool off = env && strcmp(env, "0") == 0, yes = t.has_amx && !off;
    if (n && !t.has_amx)
        snprintf(buf, n, "no (%s)", t.isa != CG_ISA_AVX512 ? "ISA below AVX-512" : "no AMX-BF16, or Linux refused the tiles");
    else if (n)
        snprintf(buf, n, "%s%s", yes ? "yes" : "no", off ? " (MOEPPC_AMX=0)" : "");
    cg_target_dispose(&t);
    return yes;
}

bool cpu_amx(void) { return amx_decide(NULL, 0); }

const char *cpu_amx_why(char *buf, size_t n)
{
    amx_decide(buf, n);
    return buf;
}

void cpu_host_pass_options(struct PassOptions *po)
{
    po->bf16_dot = cpu_bf16_dot();
    po->amx = cpu_amx();
    CgTarget t;
    char err[256];
    if (!cg_target_detect(&t, CG_ISA_AUTO, err, sizeof err)) return; /* a bad MOEPPC_ISA: said where it is used */
    CgKernelConfig c = cg_target_default_tile(&t, DT_F32);
    po->cpu_tile_m = c.mr;
    po->cpu_tile_n = c.nr;
    po->cpu_vec = t.vec_width;
    cg_target_dispose(&t);
}

const char *cpu_bf16_dot_why(char *buf, size_t n)
{
    bf16_dot_decide(buf, n);
    return buf;
}

CpuKernelSource *cpu_jit_source_new(RtError *err)
{
    CgJit *jit = cg_jit_new(CG_ISA_AUTO, err->msg, sizeof err->msg);
    if (!jit) return NULL;
    JitSource *js = xcalloc(1, sizeof *js);
    js->jit = jit;
    CpuKernelSource *ks = xcalloc(1, sizeof *ks);
    *ks = (CpuKernelSource){js, jit_gemm, jit_op, jit_serial() ? NULL : jit_prefetch};
    return ks;
}

void cpu_jit_source_free(CpuKernelSource *ks)
{
    if (!ks) return;
    JitSource *js = ks->ctx;
    for (int k = 0; k < js->n; k++) free(js->symbols[k]);
    free(js->symbols);
    free(js->fns);
    cg_jit_free(js->jit);
    free(js);
    free(ks);
}
