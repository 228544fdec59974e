/* cuda_nvrtc.c — compile one generated kernel with NVRTC (linked, no GPU needed): cubin for sm_XX
 * with ptxas's resource report, and/or PTX for compute_XX.
 *
 * MOEPPC_NVRTC_CACHE=DIR keeps each pass's result (cubin or PTX, and NVRTC's log, which holds the
 * resource report) in DIR, by a hash of the source, the kernel's name, the options and NVRTC's
 * version: the test suite sets it so that a kernel several tests (and the sanitizer build) compile
 * goes through NVRTC once. A file that does not read back whole is compiled again. */
#include "codegen/cuda/cg_cuda.h"

#include <dlfcn.h>
#include <link.h>
#include <nvrtc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

/* Every NVRTC call goes through this: on failure, the call, NVRTC's message, the kernel name and the
 * program log (when there is one) go to err, and the function jumps to `fail`. */
#define NVRTC_CHECK(call)                                                                                  \
    do {                                                                                                   \
        nvrtcResult rc_ = (call);                                                                          \
        if (rc_ != NVRTC_SUCCESS) {                                                                        \
            nvrtc_error(#call, rc_, prog, name, err, errlen);                                              \
            goto fail;                                                                                     \
        }                                                                                                  \
    } while (0)

static char *program_log(nvrtcProgram prog)
{
    size_t n = 0;
    if (!prog || nvrtcGetProgramLogSize(prog, &n) != NVRTC_SUCCESS) return xstrdup("");
    char *log = xcalloc(n + 1, 1);
    if (nvrtcGetProgramLog(prog, log) != NVRTC_SUCCESS) log[0] = 0;
    return log;
}

static void nvrtc_error(const char *call, nvrtcResult rc, nvrtcProgram prog, const char *name, char *err,
                        size_t errlen)
{
    char *log = program_log(prog);
    snprintf(err, errlen, "NVRTC: %s: %s (kernel %s)%s%s", call, nvrtcGetErrorString(rc), name,
             log[0] ? "\n--- NVRTC log ---\n" : "", log);
    free(log);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return 1e3 * (double)ts.tv_sec + 1e-6 * (double)ts.tv_nsec;
}

/* "ptxas info : Used 40 registers, used 1 barriers, 4352 bytes smem" and
 * "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads". */
static void parse_resources(const char *log, CgCudaBinary *b)
{
    const char *p;
    if ((p = strstr(log, "Used "))) b->registers = atoi(p + 5), b->smem_bytes = 0; /* smem only listed when > 0 */
    if ((p = strstr(log, " bytes smem"))) {
        while (p > log && p[-1] >= '0' && p[-1] <= '9') p--;
        b->smem_bytes = atoi(p);
    }
    /* wgmma serialised (a tile whose accumulators ptxas cannot keep in flight, a call inside the
     * pipeline, ...): the kernel is correct but the tensor cores wait for each MMA */
    b->wgmma_serialized[0] = 0;
    if ((p = strstr(log, "(C7510)"))) {
        const char *why = strstr(p, "due to "), *end = strchr(p, '\n');
        if (!end) end = p + strlen(p);
        if (!why || why > end) why = p;
        else why += strlen("due to ");
        const char *in = strstr(why, " in the function");
        if (in && in < end) end = in;
        snprintf(b->wgmma_serialized, sizeof b->wgmma_serialized, "%.*s", (int)(end - why), why);
        if (!b->wgmma_serialized[0]) snprintf(b->wgmma_serialized, sizeof b->wgmma_serialized, "(no reason given)");
    }
    if ((p = strstr(log, "bytes stack frame, "))) {
        p += strlen("bytes stack frame, ");
        b->spill_stores = atoi(p);
        if ((p = strstr(p, "spill stores, "))) b->spill_loads = atoi(p + strlen("spill stores, "));
    }
}

static bool valid_arch(const char *arch)
{
    if (strncmp(arch, "sm_", 3) != 0 || strlen(arch) < 5 || strlen(arch) > 7) return false;
    for (const char *c = arch + 3; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c == 'a' && c[1] == 0))) return false;
    return atoi(arch + 3) >= 80;
}

/* A cache file: this line, then the key (what was compiled, how, by which NVRTC), the output and the
 * log; the sum an XXH64 of those three. A hit compares the key byte for byte and the sum (compiled
 * code is not trusted as data is: a changed byte would be a fault on the GPU, not a wrong number),
 * as the JIT's cache does; anything else is a miss, compiled and written again. */
#define NVRTC_CACHE_MAGIC "MOEPPC-NVRTC-2"

/* The cache file of one pass in MOEPPC_NVRTC_CACHE and its key (xmalloc'd; NULL when that is not set). */
static char *cache_path(const char *source, const char *name, const char *arch_opt, bool cubin, char *path, size_t n)
{
    const char *dir = getenv("MOEPPC_NVRTC_CACHE");
    if (!dir || !dir[0]) return NULL;
    int major = 0, minor = 0;
    nvrtcVersion(&major, &minor);
    size_t n_key = strlen(source) + strlen(name) + strlen(arch_opt) + 64;
    char *key = xmalloc(n_key); /* the source first: the lines after it hold no newline of their own */
    snprintf(key, n_key, "%s\n%s\n%s\n%d.%d/%d", source, name, arch_opt, major, minor, (int)cubin);
    mkdir(dir, 0777);
    snprintf(path, n, "%s/%016llx.nvrtc", dir, (unsigned long long)hash_str(key));
    return key;
}

/* A pass's result from the cache: the output (cubin bytes or PTX) and the log; false when absent, not
 * whole, another key's or changed. */
static bool cache_read(const char *path, const char *key, char **data, size_t *len, char **log)
{
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    size_t n_key = 0, n_out = 0, n_log = 0, limit = (size_t)1 << 30;
    unsigned long long sum = 0;
    bool ok = fscanf(f, NVRTC_CACHE_MAGIC " %zu %zu %zu %llx", &n_key, &n_out, &n_log, &sum) == 4 &&
              fgetc(f) == '\n' && n_key == strlen(key) && n_out < limit && n_log < limit;
    char *all = ok ? xmalloc(n_key + n_out + n_log + 1) : NULL;
    ok = ok && fread(all, 1, n_key + n_out + n_log, f) == n_key + n_out + n_log && fgetc(f) == EOF &&
         memcmp(all, key, n_key) == 0 && hash_xxh64(all, n_key + n_out + n_log, 0) == sum;
    fclose(f);
    if (ok) {
        char *d = xmalloc(n_out + 1), *l = xmalloc(n_log + 1);
        memcpy(d, all + n_key, n_out), memcpy(l, all + n_key + n_out, n_log);
        d[n_out] = 0, l[n_log] = 0;
        *data = d, *len = n_out, *log = l;
    }
    free(all);
    return ok;
}

/* Stores a pass's result (file_write_atomic: a reader never sees part of it); a failure only costs
 * the next compile its hit. */
static void cache_write(const char *path, const char *key, const void *data, size_t len, const char *log)
{
    size_t n_key = strlen(key), n_log = strlen(log), n = n_key + len + n_log;
    enum { HEAD = 128 }; /* (more than the header line: the magic, three sizes and a sum, 95 bytes at most) */
    char *file = xmalloc(HEAD + n), *body = file + HEAD, why[256];
    memcpy(body, key, n_key);
    memcpy(body + n_key, data, len);
    memcpy(body + n_key + len, log, n_log);
    char head[HEAD];
    int h = snprintf(head, sizeof head, NVRTC_CACHE_MAGIC " %zu %zu %zu %016llx\n", n_key, len, n_log,
                     (unsigned long long)hash_xxh64(body, n, 0));
    memcpy(body - h, head, (size_t)h); /* (the line just before the body) */
    (void)file_write_atomic(path, body - h, (size_t)h + n, why, sizeof why);
    free(file);
}

/* dl_iterate_phdr's callback: the folder of the loaded libnvrtc.so.N into `data` (PATH_MAX bytes). */
static int find_nvrtc(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    const char *name = info->dlpi_name, *slash = name ? strrchr(name, '/') : NULL;
    if (!slash || strncmp(slash + 1, "libnvrtc.so", 11) != 0) return 0;
    snprintf(data, 4096, "%.*s", (int)(slash - name), name);
    return 1;
}

/* NVRTC opens libnvrtc-builtins.so.MAJOR.MINOR by name when it compiles, so the loader looks for it
 * where it looks for everything (ld.so.conf, LD_LIBRARY_PATH), not beside libnvrtc, which our
 * RUNPATH found. Where the toolkit is outside those paths (unpacked from a tarball, or a fresh
 * Debian with /usr/local/cuda and no ld.so.conf entry for it: scripts/check-fresh.sh found this)
 * every compile failed with NVRTC_ERROR_BUILTIN_OPERATION_FAILURE. Loaded first from libnvrtc's own
 * folder by its path, the library is found by its soname when NVRTC asks. */
static void preload_builtins(void)
{
    char dir[4096] = "", path[4200];
    int major, minor;
    if (!dl_iterate_phdr(find_nvrtc, dir) || nvrtcVersion(&major, &minor) != NVRTC_SUCCESS) return;
    snprintf(path, sizeof path, "%s/libnvrtc-builtins.so.%d.%d", dir, major, minor);
    if (!dlopen(path, RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD)) (void)dlopen(path, RTLD_NOW | RTLD_GLOBAL);
}

/* One NVRTC pass; `arch_opt` is --gpu-architecture=sm_XX or compute_XX. */
static bool compile_once(const char *source, const char *name, const char *arch_opt, bool cubin, CgCudaBinary *out,
                         char *err, size_t errlen)
{
    nvrtcProgram prog = NULL;
    const char *opts[] = {arch_opt, "-std=c++17", "-default-device", "--ptxas-options=-v"};
    int n_opts = cubin ? 4 : 3;
    char file[300], path[4100];
    char *key = cache_path(source, name, arch_opt, cubin, path, sizeof path);
    char *data = NULL, *log = NULL;
    size_t len = 0;
    if (key && cache_read(path, key, &data, &len, &log)) {
        if (cubin) out->cubin = data, out->cubin_len = len;
        else out->ptx = data, out->ptx_len = strlen(data); /* (a cache written before held the NUL too) */
    } else {
        static pthread_once_t builtins = PTHREAD_ONCE_INIT;
        pthread_once(&builtins, preload_builtins);
        snprintf(file, sizeof file, "%s.cu", name);
        NVRTC_CHECK(nvrtcCreateProgram(&prog, source, file, 0, NULL, NULL));
        double t0 = now_ms();
        NVRTC_CHECK(nvrtcCompileProgram(prog, n_opts, opts));
        out->compile_ms += now_ms() - t0;
        out->compiled = true;
        log = program_log(prog);
        if (cubin) {
            NVRTC_CHECK(nvrtcGetCUBINSize(prog, &out->cubin_len));
            out->cubin = xmalloc(out->cubin_len);
            NVRTC_CHECK(nvrtcGetCUBIN(prog, out->cubin));
        } else {
            NVRTC_CHECK(nvrtcGetPTXSize(prog, &out->ptx_len));
            out->ptx = xmalloc(out->ptx_len + 1);
            NVRTC_CHECK(nvrtcGetPTX(prog, out->ptx));
            out->ptx[out->ptx_len] = 0;
            out->ptx_len = strlen(out->ptx); /* NVRTC's size counts the NUL (a .ptx file with it ptxas refuses) */
        }
        nvrtcDestroyProgram(&prog);
        if (key)
            cache_write(path, key, cubin ? out->cubin : (void *)out->ptx, cubin ? out->cubin_len : out->ptx_len, log);
    }
    free(key);
    if (cubin) {
        parse_resources(log, out);
        free(out->log);
        out->log = log;
    } else if (!out->log) out->log = log;
    else free(log);
    return true;
fail:
    free(log), free(key);
    if (prog) nvrtcDestroyProgram(&prog);
    return false;
}

bool cg_cuda_compile(const char *source, const char *name, const char *arch, bool want_cubin, bool want_ptx,
                     CgCudaBinary *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->registers = out->smem_bytes = out->spill_stores = out->spill_loads = -1;
    if (strcmp(arch, CG_CUDA_EMU_ARCH) == 0) {
        if (want_ptx) {
            snprintf(err, errlen, "kernel %s: the CUDA emulator has no PTX (arch %s)", name, arch);
            return false;
        }
        return cg_cuda_emu_compile(source, name, out, err, errlen);
    }
    if (!valid_arch(arch)) {
        snprintf(err, errlen, "unknown CUDA target '%s' for kernel %s (expected sm_80 or newer: sm_80, sm_86, sm_89, "
                 "sm_90)", arch, name);
        return false;
    }
    /* A kernel with sm_90a's instructions (wgmma: CG_CUDA_SM90A_MARK) compiles for sm_90a, whose
     * cubin runs on sm_90 GPUs and whose PTX on nothing else. */
    const char *suffix = strstr(source, CG_CUDA_SM90A_MARK) ? "a" : "";
    if (suffix[0] && strcmp(arch, "sm_90") != 0) {
        snprintf(err, errlen, "kernel %s uses sm_90a's warpgroup MMA (wgmma): it compiles for target sm_90 only, not %s",
                 name, arch);
        return false;
    }
    char opt[64];
    bool ok = true;
    if (want_cubin) {
        snprintf(opt, sizeof opt, "--gpu-architecture=%s%s", arch, suffix);
        ok = compile_once(source, name, opt, true, out, err, errlen);
    }
    if (ok && want_ptx) {
        snprintf(opt, sizeof opt, "--gpu-architecture=compute_%s%s", arch + 3, suffix);
        ok = compile_once(source, name, opt, false, out, err, errlen);
    }
    if (!ok) cg_cuda_binary_free(out);
    return ok;
}

bool cg_cuda_nvrtc_version(int *major, int *minor)
{
    return nvrtcVersion(major, minor) == NVRTC_SUCCESS;
}

const char *cg_cuda_nvrtc_version_text(void)
{
    static char text[32];
    int major = 0, minor = 0;
    if (!text[0]) snprintf(text, sizeof text, "NVRTC %d.%d", cg_cuda_nvrtc_version(&major, &minor) ? major : 0, minor);
    return text;
}

bool cg_cuda_nvrtc_supports(const char *arch)
{
    int n = 0, want = 0;
    if (sscanf(arch, "sm_%d", &want) != 1 || nvrtcGetNumSupportedArchs(&n) != NVRTC_SUCCESS || n <= 0) return false;
    int *list = xmalloc((size_t)n * sizeof *list);
    bool found = false;
    if (nvrtcGetSupportedArchs(list) == NVRTC_SUCCESS)
        for (int k = 0; k < n && !found; k++) found = list[k] == want;
    free(list);
    return found;
}
