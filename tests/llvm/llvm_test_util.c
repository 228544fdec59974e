/* llvm_test_util.c — see llvm_test_util.h. */
#include "tests/llvm/llvm_test_util.h"

#include <math.h>
#include <stdlib.h>

static CgJit *jits[4];

int tu_isas(cg_isa out[3]) {
    cg_isa host = cg_host_isa();
    int n = 0;
    if (host >= CG_ISA_AVX512) out[n++] = CG_ISA_AVX512;
    if (host >= CG_ISA_AVX2) out[n++] = CG_ISA_AVX2;
    out[n++] = CG_ISA_SSE;
    return n;
}

CgJit *tu_jit(cg_isa isa) {
    if (!jits[isa]) {
        char err[512];
        jits[isa] = cg_jit_new(isa, err, sizeof err);
        if (!jits[isa]) fprintf(stderr, "cg_jit_new(%s): %s\n", cg_isa_name(isa), err);
        MOE_ASSERT(jits[isa]);
        MOE_ASSERT(cg_jit_target(jits[isa])->isa == isa);
    }
    return jits[isa];
}

void tu_jits_free(void) {
    for (size_t i = 0; i < MOE_ARRAY_LEN(jits); i++) {
        cg_jit_free(jits[i]);
        jits[i] = NULL;
    }
}

const CgKernel *tu_kernel(cg_isa isa, const CgKernelConfig *cfg) {
    char err[512];
    const CgKernel *k = cg_jit_kernel(tu_jit(isa), cfg, NULL, err, sizeof err);
    if (!k) fprintf(stderr, "cg_jit_kernel(%s): %s\n", cg_isa_name(isa), err);
    MOE_ASSERT(k);
    return k;
}

void tu_edges(cg_isa isa, const CgKernel *kern, CgBlocking *blk) {
    char err[512];
    bool ok = cg_jit_edges(tu_jit(isa), kern, blk, err, sizeof err);
    if (!ok) fprintf(stderr, "cg_jit_edges(%s): %s\n", cg_isa_name(isa), err);
    MOE_ASSERT(ok);
}

void tu_random(moe_rng *r, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = (float)(2.0 * rng_uniform(r) - 1.0);
}

void *tu_to_dtype(const float *src, size_t n, moe_dtype dt) {
    void *p = xmalloc(n * dtype_size(dt) + 1);
    for (size_t i = 0; i < n; i++) dtype_store(dt, p, i, src[i]);
    return p;
}

bool tu_close(const char *label, size_t idx, double got, double want, double tol, int *n_bad) {
    if (fabs(got - want) <= tol) return true; /* NaN fails here too */
    if ((*n_bad)++ < 5)
        fprintf(stderr, "  %s: [%zu] got %.9g want %.9g (|diff| %.3g > tol %.3g)\n", label, idx, got, want,
                fabs(got - want), tol);
    return false;
}
