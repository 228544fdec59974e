/* table.c — the executor's kernels from a table of linked symbols: how an executable written by
 * `moeppc build` finds the kernels compiled into it (no LLVM at run time). */
#include "runtime/cpu/cpu.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const CpuKernelEntry *table;
    int n;
    CgKernel *gemms; /* one CgKernel per GEMM entry, built on first request */
} TableSource;

/* The GEMM kernel for dt with the mr × nr tile and k unroll (moeppc build compiled exactly the
 * configurations the ops ask for, so one missing from the table only happens for mr, nr = 0 or an
 * unroll of 0 (the default's): then the kernel of that tile, else the first kernel of dt). A kernel
 * in k pairs serves an op that did not ask for them (cg_kernel_form: an AVX-512 build's bf16 FMA
 * kernels all are); the executor packs the weights as the kernel it gets says. */
static const CgKernel *table_gemm(void *ctx, const CgKernelConfig *want, RtError *err)
{
    TableSource *ts = ctx;
    moe_dtype dt = want->b_dtype;
    int mr = want->mr, nr = want->nr, unroll = want->k_unroll;
    for (int k = 0; k < 3 * ts->n; k++) { /* an exact match, then the tile, then any kernel of dt */
        const CpuKernelEntry *e = &ts->table[k % ts->n];
        if (!e->is_gemm || e->cfg.b_dtype != dt || e->cfg.a_bf16 != want->a_bf16 || e->cfg.amx != want->amx ||
            (want->kpair_b && !e->cfg.kpair_b))
            continue;
        if (k < 2 * ts->n && (e->cfg.mr != mr || e->cfg.nr != nr)) continue;
        if (k < ts->n && unroll && e->cfg.k_unroll != unroll) continue;
        CgKernel *g = &ts->gemms[k % ts->n];
        g->cfg = e->cfg;
        g->fn = (cg_kernel_fn)e->fn;
        snprintf(g->symbol, sizeof g->symbol, "%s", e->symbol);
        return g;
    }
    snprintf(err->msg, sizeof err->msg, "no GEMM kernel for %s weights%s was compiled into this executable",
             dtype_name(dt), want->amx ? " on AMX tiles" : want->a_bf16 ? " on the bf16 dot product" : "");
    return NULL;
}

static void *table_op(void *ctx, const CgOpDesc *d, RtError *err)
{
    TableSource *ts = ctx;
    char sym[256];
    cg_op_symbol(d, sym, sizeof sym);
    for (int k = 0; k < ts->n; k++)
        if (!ts->table[k].is_gemm && strcmp(ts->table[k].symbol, sym) == 0) return ts->table[k].fn;
    snprintf(err->msg, sizeof err->msg, "kernel %s was not compiled into this executable", sym);
    return NULL;
}

CpuKernelSource *cpu_table_source_new(const CpuKernelEntry *table, int n)
{
    TableSource *ts = xcalloc(1, sizeof *ts);
    ts->table = table;
    ts->n = n;
    ts->gemms = xcalloc((size_t)n + 1, sizeof *ts->gemms);
    CpuKernelSource *ks = xcalloc(1, sizeof *ks);
    *ks = (CpuKernelSource){ts, table_gemm, table_op, NULL};
    return ks;
}

CpuKernelSource *cpu_table_source_checked(const CpuKernelEntry *table, int n, const char *cpu, const char *features,
                                          RtError *err)
{
    char missing[sizeof err->msg / 2];
    if (cpu_runs_features(features, missing, sizeof missing)) return cpu_table_source_new(table, n);
    snprintf(err->msg, sizeof err->msg,
             "the kernels were compiled for %s and this CPU lacks %s; build again on this machine (or one like it)",
             cpu, missing[0] ? missing : "some of its features");
    return NULL;
}

void cpu_table_source_free(CpuKernelSource *ks)
{
    if (!ks) return;
    TableSource *ts = ks->ctx;
    free(ts->gemms);
    free(ts);
    free(ks);
}
