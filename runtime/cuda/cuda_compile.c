/* cuda_compile.c — NVRTC over a list of kernels, one thread per core: what `moeppc run --device cuda`
 * and the tests hand the executor (CudaOptions.compile) and what `moeppc build --target` embeds. Its
 * own object, so that executables, which never compile, do not need the NVRTC library. */
#include "runtime/cuda/cuda_exec.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct Job {
    const CudaKernelCode *k;
    int n, next;
    const char *arch;
    bool cubin, ptx;
    CgCudaBinary *out;
    bool *ok;
    char (*errs)[4096];
    pthread_mutex_t mu;
} Job;

static void *worker(void *arg)
{
    Job *j = arg;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int q = j->next < j->n ? j->next++ : -1;
        pthread_mutex_unlock(&j->mu);
        if (q < 0) return NULL;
        j->ok[q] = cg_cuda_compile(j->k[q].source, j->k[q].symbol, j->arch, j->cubin, j->ptx, &j->out[q], j->errs[q],
                                   sizeof j->errs[q]);
    }
}

bool cuda_compile_kernels(const CudaKernelCode *k, int n, const char *arch, bool cubin, bool ptx, CgCudaBinary *out,
                          char *err, size_t errlen)
{
    Job job = {.k = k, .n = n, .arch = arch, .cubin = cubin, .ptx = ptx, .out = out};
    job.ok = xcalloc((size_t)n + 1, sizeof *job.ok);
    job.errs = xcalloc((size_t)n + 1, sizeof *job.errs);
    pthread_mutex_init(&job.mu, NULL);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = (int)(ncpu < 1 ? 1 : ncpu > 32 ? 32 : ncpu);
    if (nt > n) nt = n;
    pthread_t th[32];
    for (int t = 0; t < nt; t++) pthread_create(&th[t], NULL, worker, &job);
    for (int t = 0; t < nt; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&job.mu);
    bool ok = true;
    for (int q = 0; q < n; q++) {
        if (ok && !job.ok[q]) snprintf(err, errlen, "%s", job.errs[q]), ok = false;
        if (!job.ok[q]) memset(&out[q], 0, sizeof out[q]);
    }
    if (!ok)
        for (int q = 0; q < n; q++) cg_cuda_binary_free(&out[q]);
    free(job.ok);
    free(job.errs);
    return ok;
}

void cuda_warn_serialized(const CudaKernelCode *k, const CgCudaBinary *bin, int n)
{
    for (int q = 0; q < n; q++)
        if (bin[q].wgmma_serialized[0])
            fprintf(stderr, "moeppc: warning: kernel %s: ptxas serialises its wgmma instructions (%s): correct, but "
                    "its tensor cores wait for each MMA\n", k[q].symbol, bin[q].wgmma_serialized);
}

bool cuda_nvrtc_cubins(const CudaKernelCode *k, int n, const char *arch, CgCudaBinary *out, char *err, size_t errlen)
{
    if (!cuda_compile_kernels(k, n, arch, true, false, out, err, errlen)) return false;
    cuda_warn_serialized(k, out, n);
    return true;
}
