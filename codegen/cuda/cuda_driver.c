/* cuda_driver.c — the CUDA driver API through dlopen("libcuda.so.1"): nothing links libcuda, so
 * binaries run where there is no GPU and fail with a clear message only when CUDA is asked for.
 * The handful of entry points are declared here with the driver's ABI (cuda.h's _v2 names). */
#include "codegen/cuda/cg_cuda.h"

#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult; /* CUDA_SUCCESS = 0 */
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef unsigned long long CUdeviceptr;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;

#define CU_STREAM_NON_BLOCKING 1
#define CU_CAPTURE_MODE_THREAD_LOCAL 1
#define CU_ERROR_INVALID_CONTEXT 201
#define CU_ERROR_NO_DEVICE 100
#define CU_POINTER_ATTRIBUTE_MEMORY_TYPE 2
#define CU_POINTER_ATTRIBUTE_IS_MANAGED 8
#define CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL 9
#define CU_MEMORYTYPE_HOST 1
#define CU_MEMORYTYPE_DEVICE 2

#define CU_ATTR_CC_MAJOR 75 /* CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR */
#define CU_ATTR_SMS 16      /* CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT */
#define CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION 6

/* cuda.h's launch configuration for cuLaunchKernelEx (CUDA 12+): an attribute is its id, padding to
 * 8 bytes and a 64-byte value union. */
typedef struct CUlaunchAttribute {
    int id;
    char pad[4];
    union {
        char bytes[64];
        long long align; /* (the driver's union holds pointers) */
        int programmatic_stream_serialization_allowed;
    } value;
} CUlaunchAttribute;
typedef struct CUlaunchConfig {
    unsigned grid_x, grid_y, grid_z, block_x, block_y, block_z, smem;
    CUstream stream;
    CUlaunchAttribute *attrs;
    unsigned n_attrs;
} CUlaunchConfig;
#define CU_ATTR_CC_MINOR 76

typedef struct CuApi {
    CUresult (*init)(unsigned);
    CUresult (*device_get)(CUdevice *, int);
    CUresult (*device_attr)(int *, int, CUdevice);
    CUresult (*ctx_create)(CUcontext *, unsigned, CUdevice);
    CUresult (*ctx_destroy)(CUcontext);
    CUresult (*module_load_data)(CUmodule *, const void *);
    CUresult (*module_get_function)(CUfunction *, CUmodule, const char *);
    CUresult (*launch)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, void *,
                       void **, void **);
    CUresult (*mem_alloc)(CUdeviceptr *, size_t);
    CUresult (*mem_free)(CUdeviceptr);
    CUresult (*htod)(CUdeviceptr, const void *, size_t);
    CUresult (*dtoh)(void *, CUdeviceptr, size_t);
    CUresult (*sync)(void);
    CUresult (*error_string)(CUresult, const char **);
    CUresult (*stream_create)(CUstream *, unsigned);
    CUresult (*stream_destroy)(CUstream);
    CUresult (*stream_sync)(CUstream);
    CUresult (*htod_async)(CUdeviceptr, const void *, size_t, CUstream);
    CUresult (*dtod_async)(CUdeviceptr, CUdeviceptr, size_t, CUstream);
    CUresult (*memset_d32_async)(CUdeviceptr, unsigned, size_t, CUstream);
    CUresult (*event_create)(CUevent *, unsigned);
    CUresult (*event_record)(CUevent, CUstream);
    CUresult (*event_sync)(CUevent);
    CUresult (*event_elapsed)(float *, CUevent, CUevent);
    CUresult (*event_destroy)(CUevent);
    CUresult (*begin_capture)(CUstream, int);
    CUresult (*end_capture)(CUstream, CUgraph *);
    CUresult (*graph_instantiate)(CUgraphExec *, CUgraph, unsigned long long);
    CUresult (*graph_launch)(CUgraphExec, CUstream);
    CUresult (*graph_exec_destroy)(CUgraphExec);
    CUresult (*graph_destroy)(CUgraph);
    CUresult (*mem_info)(size_t *, size_t *);
    CUresult (*device_name)(char *, int, CUdevice);
    CUresult (*primary_retain)(CUcontext *, CUdevice);
    CUresult (*primary_release)(CUdevice);
    CUresult (*ctx_push)(CUcontext);
    CUresult (*ctx_pop)(CUcontext *);
    CUresult (*ctx_get_device)(CUdevice *);
    CUresult (*pointer_attr)(void *, int, CUdeviceptr);
    CUresult (*module_unload)(CUmodule);
    CUresult (*dtod)(CUdeviceptr, CUdeviceptr, size_t);
    CUresult (*device_count)(int *);
    CUresult (*func_set_attr)(CUfunction, int, int);
    CUresult (*driver_version)(int *);                                  /* optional (not the emulator's) */
    CUresult (*total_mem)(size_t *, CUdevice);                          /* optional (not the emulator's) */
    CUresult (*launch_ex)(const CUlaunchConfig *, CUfunction, void **, void **); /* optional (CUDA 12+) */
    CUresult (*tensor_map_tiled)(void *, int, unsigned, void *, const uint64_t *, const uint64_t *, const unsigned *,
                                 const unsigned *, int, int, int, int); /* optional (CUDA 12+) */
} CuApi;

struct CgCudaDriver {
    void *lib;
    CuApi api;
    CUdevice dev;
    CUcontext ctx;
    CUstream stream;  /* the one stream every asynchronous call below uses */
    bool shared;      /* ctx is the device's primary context (retained) and stream the caller's   */
    const char *(*emu_error)(void); /* the CUDA emulator's detail of its last error; NULL: a real driver */
    CUmodule *mods;   /* shared: the modules loaded, unloaded at close (the context outlives us)  */
    int n_mods, cap_mods;
};

/* Every driver call goes through this: the call, the driver's own message, and false. */
#define CU_CHECK(d, call)                                                                                  \
    do {                                                                                                   \
        CUresult rc_ = (d)->api.call;                                                                      \
        if (rc_ != 0) return cu_error((d), #call, rc_, err, errlen);                                       \
    } while (0)

static bool cu_error(CgCudaDriver *d, const char *call, CUresult rc, char *err, size_t errlen)
{
    const char *msg = NULL, *detail = d->emu_error ? d->emu_error() : "";
    if (d->api.error_string) d->api.error_string(rc, &msg);
    snprintf(err, errlen, "CUDA driver: %.*s: %s (error %d)%s%s", (int)strcspn(call, "("), call, /* (its name) */
             msg ? msg : "unknown error", rc, detail[0] ? ": " : "", detail);
    return false;
}

static bool load_api(CgCudaDriver *d, char *err, size_t errlen)
{
    static const struct { const char *name; size_t at; } syms[] = {
        {"cuInit", offsetof(CuApi, init)},
        {"cuDeviceGet", offsetof(CuApi, device_get)},
        {"cuDeviceGetAttribute", offsetof(CuApi, device_attr)},
        {"cuCtxCreate_v2", offsetof(CuApi, ctx_create)},
        {"cuCtxDestroy_v2", offsetof(CuApi, ctx_destroy)},
        {"cuModuleLoadData", offsetof(CuApi, module_load_data)},
        {"cuModuleGetFunction", offsetof(CuApi, module_get_function)},
        {"cuLaunchKernel", offsetof(CuApi, launch)},
        {"cuMemAlloc_v2", offsetof(CuApi, mem_alloc)},
        {"cuMemFree_v2", offsetof(CuApi, mem_free)},
        {"cuMemcpyHtoD_v2", offsetof(CuApi, htod)},
        {"cuMemcpyDtoH_v2", offsetof(CuApi, dtoh)},
        {"cuCtxSynchronize", offsetof(CuApi, sync)},
        {"cuGetErrorString", offsetof(CuApi, error_string)},
        {"cuStreamCreate", offsetof(CuApi, stream_create)},
        {"cuStreamDestroy_v2", offsetof(CuApi, stream_destroy)},
        {"cuStreamSynchronize", offsetof(CuApi, stream_sync)},
        {"cuMemcpyHtoDAsync_v2", offsetof(CuApi, htod_async)},
        {"cuMemcpyDtoDAsync_v2", offsetof(CuApi, dtod_async)},
        {"cuMemsetD32Async", offsetof(CuApi, memset_d32_async)},
        {"cuEventCreate", offsetof(CuApi, event_create)},
        {"cuEventRecord", offsetof(CuApi, event_record)},
        {"cuEventSynchronize", offsetof(CuApi, event_sync)},
        {"cuEventElapsedTime", offsetof(CuApi, event_elapsed)},
        {"cuEventDestroy_v2", offsetof(CuApi, event_destroy)},
        {"cuStreamBeginCapture_v2", offsetof(CuApi, begin_capture)},
        {"cuStreamEndCapture", offsetof(CuApi, end_capture)},
        {"cuGraphInstantiateWithFlags", offsetof(CuApi, graph_instantiate)},
        {"cuGraphLaunch", offsetof(CuApi, graph_launch)},
        {"cuGraphExecDestroy", offsetof(CuApi, graph_exec_destroy)},
        {"cuGraphDestroy", offsetof(CuApi, graph_destroy)},
        {"cuMemGetInfo_v2", offsetof(CuApi, mem_info)},
        {"cuDeviceGetName", offsetof(CuApi, device_name)},
        {"cuDevicePrimaryCtxRetain", offsetof(CuApi, primary_retain)},
        {"cuDevicePrimaryCtxRelease_v2", offsetof(CuApi, primary_release)},
        {"cuCtxPushCurrent_v2", offsetof(CuApi, ctx_push)},
        {"cuCtxPopCurrent_v2", offsetof(CuApi, ctx_pop)},
        {"cuCtxGetDevice", offsetof(CuApi, ctx_get_device)},
        {"cuPointerGetAttribute", offsetof(CuApi, pointer_attr)},
        {"cuModuleUnload", offsetof(CuApi, module_unload)},
        {"cuMemcpyDtoD_v2", offsetof(CuApi, dtod)},
        {"cuDeviceGetCount", offsetof(CuApi, device_count)},
        {"cuFuncSetAttribute", offsetof(CuApi, func_set_attr)},
    };
    for (size_t i = 0; i < MOE_ARRAY_LEN(syms); i++) {
        void *fn = dlsym(d->lib, syms[i].name);
        if (!fn) {
            snprintf(err, errlen, "CUDA driver: libcuda.so.1 has no %s (driver too old?)", syms[i].name);
            return false;
        }
        memcpy((char *)&d->api + syms[i].at, &fn, sizeof fn);
    }
    void *ex = dlsym(d->lib, "cuLaunchKernelEx"); /* older drivers lack it: no programmatic launches */
    memcpy(&d->api.launch_ex, &ex, sizeof ex);
    void *tm = dlsym(d->lib, "cuTensorMapEncodeTiled"); /* ... or tensor maps */
    memcpy(&d->api.tensor_map_tiled, &tm, sizeof tm);
    void *dv = dlsym(d->lib, "cuDriverGetVersion"), *mem = dlsym(d->lib, "cuDeviceTotalMem_v2"); /* (reports only) */
    memcpy(&d->api.driver_version, &dv, sizeof dv);
    memcpy(&d->api.total_mem, &mem, sizeof mem);
    return true;
}

static bool driver_start(CgCudaDriver *d, int ordinal, char *err, size_t errlen)
{
    if (!load_api(d, err, errlen)) return false;
    CU_CHECK(d, init(0));
    int n = 0;
    if (d->api.device_count(&n) == 0 && ordinal >= n) { /* (said with the count, not the driver's bare code) */
        snprintf(err, errlen, "CUDA driver: no GPU %d: it has %d (ordinals 0..%d, after CUDA_VISIBLE_DEVICES)", ordinal,
                 n, n - 1);
        return false;
    }
    CU_CHECK(d, device_get(&d->dev, ordinal));
    CU_CHECK(d, ctx_create(&d->ctx, 0, d->dev));
    CU_CHECK(d, stream_create(&d->stream, CU_STREAM_NON_BLOCKING));
    return true;
}

/* libcuda opened, then started on device `ordinal` (driver_start), attached (driver_attach) or only
 * initialised (probe: no context). */
static bool driver_attach(CgCudaDriver *d, char *err, size_t errlen);
typedef enum { DRIVER_START, DRIVER_ATTACH, DRIVER_PROBE } DriverMode;

static bool driver_probe(CgCudaDriver *d, char *err, size_t errlen)
{
    if (!load_api(d, err, errlen)) return false;
    CU_CHECK(d, init(0));
    return true;
}

static CgCudaDriver *driver_new(DriverMode mode, int ordinal, char *err, size_t errlen)
{
    const char *path = getenv("MOEPPC_CUDA_DRIVER");
    void *lib = dlopen(path && path[0] ? path : "libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib && path && path[0]) {
        snprintf(err, errlen, "cannot open the CUDA driver MOEPPC_CUDA_DRIVER=%s: %s", path, dlerror());
        return NULL;
    }
    if (!lib) {
        snprintf(err, errlen, "no CUDA driver (libcuda.so.1) on this machine");
        return NULL;
    }
    CgCudaDriver *d = xcalloc(1, sizeof *d);
    d->lib = lib;
    *(void **)&d->emu_error = dlsym(lib, "moeppc_cudaemu_last_error");
    bool ok = mode == DRIVER_ATTACH  ? driver_attach(d, err, errlen)
              : mode == DRIVER_PROBE ? driver_probe(d, err, errlen)
                                     : driver_start(d, ordinal, err, errlen);
    if (!ok) {
        cg_cuda_driver_close(d);
        return NULL;
    }
    return d;
}

CgCudaDriver *cg_cuda_driver_open(int ordinal, char *err, size_t errlen)
{
    return driver_new(DRIVER_START, ordinal, err, errlen);
}

CgCudaDriver *cg_cuda_driver_probe(char *err, size_t errlen) { return driver_new(DRIVER_PROBE, 0, err, errlen); }

/* The primary context of the device current on this thread (a CUDA runtime caller's, after
 * cudaSetDevice), else of device 0; the caller's stream is set later (cg_cuda_set_stream). */
static bool driver_attach(CgCudaDriver *d, char *err, size_t errlen)
{
    if (!load_api(d, err, errlen)) return false;
    CU_CHECK(d, init(0));
    int n = 0;
    CU_CHECK(d, device_count(&n));
    if (n == 0) return cu_error(d, "device_count", CU_ERROR_NO_DEVICE, err, errlen);
    CUresult rc = d->api.ctx_get_device(&d->dev);
    if (rc == CU_ERROR_INVALID_CONTEXT) CU_CHECK(d, device_get(&d->dev, 0));
    else if (rc != 0) return cu_error(d, "ctx_get_device", rc, err, errlen);
    CU_CHECK(d, primary_retain(&d->ctx, d->dev));
    d->shared = true;
    return true;
}

CgCudaDriver *cg_cuda_driver_attach(char *err, size_t errlen) { return driver_new(DRIVER_ATTACH, 0, err, errlen); }

void cg_cuda_set_stream(CgCudaDriver *d, void *stream)
{
    MOE_ASSERT(d->shared);
    d->stream = (CUstream)stream;
}

bool cg_cuda_push(CgCudaDriver *d, char *err, size_t errlen)
{
    CU_CHECK(d, ctx_push(d->ctx));
    return true;
}

void cg_cuda_pop(CgCudaDriver *d)
{
    CUcontext unused;
    d->api.ctx_pop(&unused);
}

int cg_cuda_device_ordinal(const CgCudaDriver *d) { return d->dev; }

cg_cuda_mem cg_cuda_pointer_memory(CgCudaDriver *d, uint64_t p, int *ordinal)
{
    unsigned long long type = 0, managed = 0; /* the driver writes an unsigned int (or a bool) here */
    int dev = -1;
    *ordinal = -1;
    if (d->api.pointer_attr(&type, CU_POINTER_ATTRIBUTE_MEMORY_TYPE, p) != 0) return CG_CUDA_MEM_UNKNOWN;
    if (d->api.pointer_attr(&managed, CU_POINTER_ATTRIBUTE_IS_MANAGED, p) != 0) managed = 0;
    if (d->api.pointer_attr(&dev, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p) == 0) *ordinal = dev;
    if (managed) return CG_CUDA_MEM_MANAGED;
    return type == CU_MEMORYTYPE_DEVICE ? CG_CUDA_MEM_DEVICE : type == CU_MEMORYTYPE_HOST ? CG_CUDA_MEM_PINNED
                                                                                          : CG_CUDA_MEM_UNKNOWN;
}

bool cg_cuda_copy(CgCudaDriver *d, uint64_t dst, uint64_t src, size_t bytes, char *err, size_t errlen)
{
    CU_CHECK(d, dtod(dst, src, bytes));
    return true;
}

void cg_cuda_driver_close(CgCudaDriver *d)
{
    if (!d) return;
    if (d->shared) { /* the primary context stays: give back only what we put in it */
        bool pushed = d->ctx && d->api.ctx_push(d->ctx) == 0;
        for (int j = 0; pushed && j < d->n_mods; j++) d->api.module_unload(d->mods[j]);
        if (pushed) cg_cuda_pop(d);
        if (d->ctx) d->api.primary_release(d->dev);
        free(d->mods);
    } else {
        if (d->stream) d->api.stream_destroy(d->stream);
        if (d->ctx) d->api.ctx_destroy(d->ctx); /* frees the context's modules and memory */
    }
    dlclose(d->lib);
    free(d);
}

bool cg_cuda_alloc(CgCudaDriver *d, uint64_t *ptr, size_t bytes, char *err, size_t errlen)
{
    CUdeviceptr p = 0;
    CU_CHECK(d, mem_alloc(&p, bytes ? bytes : 1));
    *ptr = p;
    return true;
}

void cg_cuda_free(CgCudaDriver *d, uint64_t ptr)
{
    if (ptr) d->api.mem_free(ptr);
}

bool cg_cuda_upload(CgCudaDriver *d, uint64_t dst, const void *src, size_t bytes, char *err, size_t errlen)
{
    CU_CHECK(d, htod(dst, src, bytes));
    return true;
}

bool cg_cuda_download(CgCudaDriver *d, void *dst, uint64_t src, size_t bytes, char *err, size_t errlen)
{
    CU_CHECK(d, dtoh(dst, src, bytes));
    return true;
}

bool cg_cuda_function(CgCudaDriver *d, const void *image, const char *name, void **fn, char *err, size_t errlen)
{
    CUmodule mod = NULL;
    CUfunction f = NULL;
    CU_CHECK(d, module_load_data(&mod, image));
    if (d->shared) {
        if (d->n_mods == d->cap_mods) d->mods = xrealloc(d->mods, (size_t)(d->cap_mods = d->cap_mods ? 2 * d->cap_mods : 32) * sizeof *d->mods);
        d->mods[d->n_mods++] = mod;
    }
    CU_CHECK(d, module_get_function(&f, mod, name));
    *fn = f;
    return true;
}

/* Above 48 KB, dynamic shared memory needs the function's opt-in first (a host-side attribute, no
 * stream work: fine while capturing). */
#define CU_FUNC_ATTR_MAX_DYNAMIC_SHARED 8
#define SMEM_NO_OPT_IN (48 * 1024)

bool cg_cuda_launch(CgCudaDriver *d, void *fn, const unsigned grid[3], const unsigned block[3], size_t smem,
                    void **args, char *err, size_t errlen)
{
    if (smem > SMEM_NO_OPT_IN) CU_CHECK(d, func_set_attr((CUfunction)fn, CU_FUNC_ATTR_MAX_DYNAMIC_SHARED, (int)smem));
    CU_CHECK(d, launch((CUfunction)fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], (unsigned)smem,
                       NULL, args, NULL));
    CU_CHECK(d, sync());
    return true;
}

void cg_cuda_device_arch(CgCudaDriver *d, char *out, size_t n)
{
    int major = 0, minor = 0;
    if (d->emu_error) {
        snprintf(out, n, "%s", CG_CUDA_EMU_ARCH);
        return;
    }
    d->api.device_attr(&major, CU_ATTR_CC_MAJOR, d->dev);
    d->api.device_attr(&minor, CU_ATTR_CC_MINOR, d->dev);
    snprintf(out, n, "sm_%d%d", major, minor);
}

int cg_cuda_device_sms(CgCudaDriver *d)
{
    int sms = 0;
    return d->api.device_attr(&sms, CU_ATTR_SMS, d->dev) == 0 && sms > 0 ? sms : 1;
}

void cg_cuda_device_name(CgCudaDriver *d, char *out, size_t n)
{
    if (d->api.device_name(out, (int)n, d->dev) != 0) snprintf(out, n, "(unknown GPU)");
}

int cg_cuda_device_count(CgCudaDriver *d)
{
    int n = 0;
    return d->api.device_count(&n) == 0 && n > 0 ? n : 0;
}

int cg_cuda_driver_version(CgCudaDriver *d)
{
    int v = 0;
    return d->api.driver_version && d->api.driver_version(&v) == 0 ? v : 0;
}

bool cg_cuda_device_info(CgCudaDriver *d, int ordinal, CgCudaDeviceInfo *out)
{
    memset(out, 0, sizeof *out);
    CUdevice dev;
    if (d->api.device_get(&dev, ordinal) != 0) return false;
    if (d->api.device_name(out->name, (int)sizeof out->name, dev) != 0) snprintf(out->name, sizeof out->name, "?");
    int major = 0, minor = 0;
    if (d->emu_error) {
        snprintf(out->arch, sizeof out->arch, "%s", CG_CUDA_EMU_ARCH);
    } else if (d->api.device_attr(&major, CU_ATTR_CC_MAJOR, dev) == 0 &&
               d->api.device_attr(&minor, CU_ATTR_CC_MINOR, dev) == 0) {
        snprintf(out->arch, sizeof out->arch, "sm_%d%d", major, minor);
    }
    if (d->api.device_attr(&out->sms, CU_ATTR_SMS, dev) != 0) out->sms = 0;
    if (d->api.total_mem && d->api.total_mem(&out->bytes, dev) != 0) out->bytes = 0;
    return true;
}

bool cg_cuda_mem_info(CgCudaDriver *d, size_t *free_bytes, size_t *total_bytes)
{
    return d->api.mem_info(free_bytes, total_bytes) == 0;
}

/* ---- the stream ------------------------------------------------------------------------------------ */

bool cg_cuda_launch_async(CgCudaDriver *d, void *fn, const unsigned grid[3], const unsigned block[3], size_t smem,
                          void **args, char *err, size_t errlen)
{
    return cg_cuda_launch_async_pdl(d, fn, grid, block, smem, args, false, err, errlen);
}

bool cg_cuda_can_pdl(CgCudaDriver *d)
{
    int major = 0;
    if (!d->api.launch_ex) return false;
    if (d->emu_error) return true;
    return d->api.device_attr(&major, CU_ATTR_CC_MAJOR, d->dev) == 0 && major >= 9;
}

/* cuda.h's CUtensorMapDataType UINT16, CUtensorMapSwizzle 128B, CUtensorMapL2promotion 128B. */
#define CU_TENSOR_MAP_U16 1
#define CU_TENSOR_MAP_SWIZZLE_128B 3
#define CU_TENSOR_MAP_L2_128B 2

bool cg_cuda_tensor_map_2d(CgCudaDriver *d, void *map, uint64_t addr, uint64_t inner, uint64_t rows, unsigned box_inner,
                           unsigned box_rows, bool swizzle128, char *err, size_t errlen)
{
    if (!d->api.tensor_map_tiled) {
        snprintf(err, errlen, "CUDA driver: libcuda.so.1 has no cuTensorMapEncodeTiled (a CUDA 12 driver is needed for TMA)");
        return false;
    }
    uint64_t dims[2] = {inner, rows}, strides[1] = {inner * 2};
    unsigned box[2] = {box_inner, box_rows}, estr[2] = {1, 1};
    CU_CHECK(d, tensor_map_tiled(map, CU_TENSOR_MAP_U16, 2, (void *)(uintptr_t)addr, dims, strides, box, estr, 0,
                                 swizzle128 ? CU_TENSOR_MAP_SWIZZLE_128B : 0, CU_TENSOR_MAP_L2_128B, 0));
    return true;
}

bool cg_cuda_launch_async_pdl(CgCudaDriver *d, void *fn, const unsigned grid[3], const unsigned block[3], size_t smem,
                              void **args, bool pdl, char *err, size_t errlen)
{
    if (smem > SMEM_NO_OPT_IN) CU_CHECK(d, func_set_attr((CUfunction)fn, CU_FUNC_ATTR_MAX_DYNAMIC_SHARED, (int)smem));
    if (!pdl || !d->api.launch_ex) {
        CU_CHECK(d, launch((CUfunction)fn, grid[0], grid[1], grid[2], block[0], block[1], block[2], (unsigned)smem,
                           d->stream, args, NULL));
        return true;
    }
    CUlaunchAttribute at = {.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION};
    at.value.programmatic_stream_serialization_allowed = 1;
    CUlaunchConfig c = {grid[0], grid[1], grid[2], block[0], block[1], block[2], (unsigned)smem, d->stream, &at, 1};
    CU_CHECK(d, launch_ex(&c, (CUfunction)fn, args, NULL));
    return true;
}

bool cg_cuda_sync(CgCudaDriver *d, char *err, size_t errlen)
{
    CU_CHECK(d, stream_sync(d->stream));
    return true;
}

bool cg_cuda_upload_async(CgCudaDriver *d, uint64_t dst, const void *src, size_t bytes, char *err, size_t errlen)
{
    CU_CHECK(d, htod_async(dst, src, bytes, d->stream));
    return true;
}

bool cg_cuda_copy_async(CgCudaDriver *d, uint64_t dst, uint64_t src, size_t bytes, char *err, size_t errlen)
{
    CU_CHECK(d, dtod_async(dst, src, bytes, d->stream));
    return true;
}

bool cg_cuda_fill32_async(CgCudaDriver *d, uint64_t dst, uint32_t value, size_t count, char *err, size_t errlen)
{
    CU_CHECK(d, memset_d32_async(dst, value, count, d->stream));
    return true;
}

bool cg_cuda_event_new(CgCudaDriver *d, void **ev, char *err, size_t errlen)
{
    CUevent e = NULL;
    CU_CHECK(d, event_create(&e, 0));
    *ev = e;
    return true;
}

bool cg_cuda_event_record(CgCudaDriver *d, void *ev, char *err, size_t errlen)
{
    CU_CHECK(d, event_record((CUevent)ev, d->stream));
    return true;
}

bool cg_cuda_event_ms(CgCudaDriver *d, void *from, void *to, float *ms, char *err, size_t errlen)
{
    CU_CHECK(d, event_sync((CUevent)to));
    CU_CHECK(d, event_elapsed(ms, (CUevent)from, (CUevent)to));
    return true;
}

void cg_cuda_event_free(CgCudaDriver *d, void *ev)
{
    if (ev) d->api.event_destroy((CUevent)ev);
}

bool cg_cuda_capture_begin(CgCudaDriver *d, char *err, size_t errlen)
{
    CU_CHECK(d, begin_capture(d->stream, CU_CAPTURE_MODE_THREAD_LOCAL));
    return true;
}

bool cg_cuda_capture_end(CgCudaDriver *d, void **exec, char *err, size_t errlen)
{
    CUgraph g = NULL;
    CUgraphExec x = NULL;
    CU_CHECK(d, end_capture(d->stream, &g));
    CUresult rc = d->api.graph_instantiate(&x, g, 0);
    d->api.graph_destroy(g);
    if (rc != 0) return cu_error(d, "graph_instantiate", rc, err, errlen);
    *exec = x;
    return true;
}

bool cg_cuda_graph_launch(CgCudaDriver *d, void *exec, char *err, size_t errlen)
{
    CU_CHECK(d, graph_launch((CUgraphExec)exec, d->stream));
    return true;
}

void cg_cuda_graph_free(CgCudaDriver *d, void *exec)
{
    if (exec) d->api.graph_exec_destroy((CUgraphExec)exec);
}
