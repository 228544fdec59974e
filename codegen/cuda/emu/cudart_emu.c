/* cudart_emu.c — a libcudart.so for tests only: the CUDA runtime calls examples/embed_c makes when
 * built with -DEMBED_CUDA, served by the CUDA emulator's driver API, so that the example runs, as
 * written, against an emitted library for the emulator (tests/embed: embed_cuda_emu_c_*).
 *
 * The driver is the library MOEPPC_CUDA_DRIVER names (libmoeppc_cudaemu.so), opened by that path so
 * that it is the very instance the layer library opens. Every call runs in the primary context of
 * device 0, the one the layer library attaches to; cudaMalloc is cuMemAlloc there, so that the
 * library's cuPointerGetAttribute sees device memory. Only these functions exist: cudaGetDeviceCount,
 * cudaMalloc, cudaFree, cudaMemcpy, cudaStreamCreateWithFlags, cudaStreamSynchronize,
 * cudaStreamDestroy, cudaGetErrorString. Built without sanitizers, like the emulator. */
#include <cuda_runtime_api.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define EXPORT __attribute__((visibility("default")))

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

/* The driver entry points used, by name (what the emulator exports). */
static struct {
    CUresult (*init)(unsigned);
    CUresult (*device_get)(int *, int);
    CUresult (*primary_retain)(void **, int);
    CUresult (*push)(void *);
    CUresult (*pop)(void **);
    CUresult (*alloc)(CUdeviceptr *, size_t);
    CUresult (*free)(CUdeviceptr);
    CUresult (*htod)(CUdeviceptr, const void *, size_t);
    CUresult (*dtoh)(void *, CUdeviceptr, size_t);
    CUresult (*dtod)(CUdeviceptr, CUdeviceptr, size_t);
    CUresult (*stream_create)(void **, unsigned);
    CUresult (*stream_sync)(void *);
    CUresult (*stream_destroy)(void *);
    const char *(*detail)(void); /* moeppc_cudaemu_last_error */
} drv;
static void *ctx;
static cudaError_t open_rc = cudaErrorInitializationError;
static char open_msg[1024];
static pthread_once_t once = PTHREAD_ONCE_INIT;
static _Thread_local char last_msg[1200];
static _Thread_local cudaError_t last_rc = cudaSuccess;

static cudaError_t fail(cudaError_t rc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* This thread's message for rc (what cudaGetErrorString returns for it), and rc. */
static cudaError_t fail(cudaError_t rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    last_rc = rc;
    return rc;
}

static void open_driver(void)
{
    const char *path = getenv("MOEPPC_CUDA_DRIVER");
    void *lib = path && path[0] ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (!lib) {
        snprintf(open_msg, sizeof open_msg, "moeppc's test libcudart: %s", path && path[0] ? dlerror() :
                 "MOEPPC_CUDA_DRIVER does not name the CUDA emulator (libmoeppc_cudaemu.so)");
        open_rc = cudaErrorInsufficientDriver;
        return;
    }
    const char *missing = NULL;
#define LOAD(field, name) if (!missing && !(*(void **)&drv.field = dlsym(lib, name))) missing = name
    LOAD(init, "cuInit");
    LOAD(device_get, "cuDeviceGet");
    LOAD(primary_retain, "cuDevicePrimaryCtxRetain");
    LOAD(push, "cuCtxPushCurrent_v2");
    LOAD(pop, "cuCtxPopCurrent_v2");
    LOAD(alloc, "cuMemAlloc_v2");
    LOAD(free, "cuMemFree_v2");
    LOAD(htod, "cuMemcpyHtoD_v2");
    LOAD(dtoh, "cuMemcpyDtoH_v2");
    LOAD(dtod, "cuMemcpyDtoD_v2");
    LOAD(stream_create, "cuStreamCreate");
    LOAD(stream_sync, "cuStreamSynchronize");
    LOAD(stream_destroy, "cuStreamDestroy_v2");
    LOAD(detail, "moeppc_cudaemu_last_error");
#undef LOAD
    if (missing) {
        snprintf(open_msg, sizeof open_msg, "moeppc's test libcudart: %s has no %s (not the CUDA emulator?)", path,
                 missing);
        open_rc = cudaErrorInsufficientDriver;
        return;
    }
    int dev;
    CUresult rc = drv.init(0);
    if (rc == 0) rc = drv.device_get(&dev, 0);
    if (rc == 0) rc = drv.primary_retain(&ctx, dev);
    if (rc != 0) {
        snprintf(open_msg, sizeof open_msg, "moeppc's test libcudart: the emulator's device 0: error %d: %s", rc,
                 drv.detail());
        open_rc = cudaErrorNoDevice;
        return;
    }
    open_rc = cudaSuccess;
}

/* The driver open and device 0's primary context current (until leave). */
static cudaError_t enter(void)
{
    pthread_once(&once, open_driver);
    if (open_rc != cudaSuccess) return fail(open_rc, "%s", open_msg);
    if (drv.push(ctx) != 0) return fail(cudaErrorUnknown, "moeppc's test libcudart: cuCtxPushCurrent: %s", drv.detail());
    return cudaSuccess;
}

/* The context popped; a driver error as the runtime's. */
static cudaError_t leave(CUresult rc, const char *what)
{
    void *prev;
    drv.pop(&prev);
    if (rc == 0) return cudaSuccess;
    return fail(rc == 2 ? cudaErrorMemoryAllocation : rc == 1 ? cudaErrorInvalidValue : cudaErrorUnknown,
                "%s: driver error %d: %s", what, rc, drv.detail());
}

EXPORT cudaError_t cudaGetDeviceCount(int *count)
{
    if (!count) return fail(cudaErrorInvalidValue, "cudaGetDeviceCount: count is NULL");
    *count = 0;
    cudaError_t rc = enter();
    if (rc != cudaSuccess) return rc;
    *count = 1;
    return leave(0, "cudaGetDeviceCount");
}

EXPORT cudaError_t cudaMalloc(void **p, size_t bytes)
{
    if (!p) return fail(cudaErrorInvalidValue, "cudaMalloc: devPtr is NULL");
    cudaError_t rc = enter();
    if (rc != cudaSuccess) return rc;
    CUdeviceptr d = 0;
    rc = leave(drv.alloc(&d, bytes), "cudaMalloc");
    *p = (void *)(uintptr_t)d;
    return rc;
}

EXPORT cudaError_t cudaFree(void *p)
{
    if (!p) return cudaSuccess;
    cudaError_t rc = enter();
    return rc != cudaSuccess ? rc : leave(drv.free((CUdeviceptr)(uintptr_t)p), "cudaFree");
}

EXPORT cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, enum cudaMemcpyKind kind)
{
    cudaError_t rc = enter();
    if (rc != cudaSuccess) return rc;
    CUdeviceptr d = (CUdeviceptr)(uintptr_t)dst, s = (CUdeviceptr)(uintptr_t)src;
    switch (kind) {
    case cudaMemcpyHostToDevice: return leave(drv.htod(d, src, bytes), "cudaMemcpy (host to device)");
    case cudaMemcpyDeviceToHost: return leave(drv.dtoh(dst, s, bytes), "cudaMemcpy (device to host)");
    case cudaMemcpyDeviceToDevice: return leave(drv.dtod(d, s, bytes), "cudaMemcpy (device to device)");
    default:
        leave(0, "cudaMemcpy");
        return fail(cudaErrorInvalidMemcpyDirection, "cudaMemcpy: kind %d is not emulated (host to device, device to "
                    "host and device to device are)", (int)kind);
    }
}

EXPORT cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned int flags)
{
    if (!stream) return fail(cudaErrorInvalidValue, "cudaStreamCreateWithFlags: pStream is NULL");
    cudaError_t rc = enter();
    if (rc != cudaSuccess) return rc;
    void *s = NULL;
    rc = leave(drv.stream_create(&s, flags), "cudaStreamCreateWithFlags");
    *stream = s;
    return rc;
}

EXPORT cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    cudaError_t rc = enter();
    return rc != cudaSuccess ? rc : leave(drv.stream_sync(stream), "cudaStreamSynchronize");
}

EXPORT cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    cudaError_t rc = enter();
    return rc != cudaSuccess ? rc : leave(drv.stream_destroy(stream), "cudaStreamDestroy");
}

EXPORT const char *cudaGetErrorString(cudaError_t rc)
{
    if (rc == cudaSuccess) return "no error";
    if (rc == last_rc) return last_msg;
    return "an error of moeppc's test libcudart (no detail kept for it)";
}
