/* emit_cuda.c — `moeppc emit --emit cuda|ptx|cubin`: the CUDA kernels of a spec (codegen/cuda) as files,
 * CUDA C as written, or compiled by NVRTC for one architecture. No GPU is needed. */
#include "tools/commands.h"

#ifdef MOEPPC_HAVE_CUDA
#include "codegen/cuda/cg_cuda.h"

#include <stdlib.h>
#include <string.h>

static bool write_bytes(const char *dir, const char *sym, const char *ext, const void *data, size_t n)
{
    char path[1024], why[1200];
    snprintf(path, sizeof path, "%s/%s.%s", dir, sym, ext);
    bool ok = file_write_atomic(path, data, n, why, sizeof why);
    if (!ok) fprintf(stderr, "moeppc emit: error: %s\n", why);
    return ok;
}

/* One kernel's source, written or compiled as kind asks. */
static bool emit_one(const char *kind, const char *arch, const char *dir, const char *sym, char *src, FILE *list)
{
    if (!src) return false;
    bool ok;
    if (strcmp(kind, "cuda") == 0) {
        ok = write_bytes(dir, sym, "cu", src, strlen(src));
    } else {
        CgCudaBinary bin;
        char err[4096];
        bool cubin = strcmp(kind, "cubin") == 0;
        ok = cg_cuda_compile(src, sym, arch, cubin, !cubin, &bin, err, sizeof err);
        if (!ok) fprintf(stderr, "moeppc emit: error: %s\n", err);
        else ok = cubin ? write_bytes(dir, sym, "cubin", bin.cubin, bin.cubin_len) : write_bytes(dir, sym, "ptx", bin.ptx, bin.ptx_len);
        if (ok && cubin)
            fprintf(list, "%s  registers %d, shared memory %d B, spills %d/%d B\n", sym, bin.registers, bin.smem_bytes,
                    bin.spill_stores, bin.spill_loads);
        cg_cuda_binary_free(&bin);
    }
    if (ok && strcmp(kind, "cubin") != 0) fprintf(list, "%s\n", sym);
    free(src);
    return ok;
}

int emit_cuda(const char *spec_path, const char *kind, const char *arch, const char *dir)
{
    ModelSpec s;
    if (!load_spec(spec_path, &s)) return 1;
    CgOpDesc *ops;
    CgCudaGemm *gemms;
    int n_ops, n_gemms;
    cg_cuda_spec_kernels(&s, &ops, &n_ops, &gemms, &n_gemms);
    char path[1024], sym[256], err[1024];
    snprintf(path, sizeof path, "%s/kernels.txt", dir);
    FILE *list = fopen(path, "w");
    bool ok = list != NULL;
    if (!ok) fprintf(stderr, "moeppc emit: error: cannot write %s\n", path);
    for (int k = 0; ok && k < n_ops; k++) {
        cg_cuda_op_symbol(&ops[k], sym, sizeof sym);
        char *src = cg_cuda_op_source(&ops[k], err, sizeof err);
        if (!src) fprintf(stderr, "moeppc emit: error: %s\n", err);
        ok = emit_one(kind, arch, dir, sym, src, list);
    }
    for (int k = 0; ok && k < n_gemms; k++) {
        cg_cuda_gemm_symbol(&gemms[k], sym, sizeof sym);
        char *src = cg_cuda_gemm_source(&gemms[k], err, sizeof err);
        if (!src) fprintf(stderr, "moeppc emit: error: %s\n", err);
        ok = emit_one(kind, arch, dir, sym, src, list);
    }
    if (list && fclose(list) != 0) ok = false;
    if (ok) printf("wrote %d CUDA kernels (%s%s%s) and kernels.txt to %s; argument order: codegen/cuda/cg_cuda.h\n",
                   n_ops + n_gemms, kind, strcmp(kind, "cuda") ? " for " : "", strcmp(kind, "cuda") ? arch : "", dir);
    free(ops);
    free(gemms);
    return ok ? 0 : 1;
}

#else

int emit_cuda(const char *spec, const char *kind, const char *arch, const char *dir)
{
    (void)spec, (void)arch, (void)dir;
    fprintf(stderr, "moeppc emit: error: --emit %s needs the CUDA toolkit's NVRTC, which this build did not find\n", kind);
    return 1;
}

#endif
