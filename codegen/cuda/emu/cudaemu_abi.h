/* cudaemu_abi.h — what the CUDA emulator (cudaemu.c, a libcuda.so.1 stand-in) and the kernels it runs
 * (generated CUDA C compiled for the CPU with kernel.hpp, emu_compile.c) share. kernel.hpp mirrors
 * these declarations in C++; CUDAEMU_ABI changes with either. */
#ifndef MOEPPC_CUDAEMU_ABI_H
#define MOEPPC_CUDAEMU_ABI_H

#define CUDAEMU_ABI 7
#define CUDAEMU_SLOT 128     /* bytes one lane may put into a warp collective */
#define CUDAEMU_SCRATCH 2048 /* bytes of a collective's result the warp's lanes share */
/* The first line of a kernel image for the emulator. Format 1 (what the tests and `moeppc run` use):
 * the path of its shared object follows, NUL-terminated. Format 2 (self-contained, what an emitted
 * library embeds): the object's size in decimal and a newline, then that many bytes of the object. */
#define CUDAEMU_IMAGE_MAGIC "MOEPPC-CUDAEMU-1\n"
#define CUDAEMU_IMAGE_MAGIC2 "MOEPPC-CUDAEMU-2\n"
#define CUDAEMU_IMAGE_MAX_BYTES (1ull << 30) /* format 2: a larger size is a corrupt image */

typedef struct CudaEmuDim3 { unsigned x, y, z; } CudaEmuDim3;

/* The CUDA thread a fiber runs: its indices, lane (linear thread index % 32) and warp. */
typedef struct CudaEmuThread {
    CudaEmuDim3 tid, bid, bdim, gdim;
    unsigned lane, warp;
} CudaEmuThread;

typedef struct CudaEmuApi {
    int abi;
    const CudaEmuThread *(*self)(void);
    void (*syncthreads)(void);
    /* A warp collective: every live lane of the calling warp deposits `size` bytes; returns the 32
     * lanes' deposits (lane l at l * CUDAEMU_SLOT) followed by CUDAEMU_SCRATCH bytes the lanes share,
     * all valid until this lane's next collective. *first is 1 for the first lane to return (the one
     * to compute a shared result into the scratch bytes: the lanes of a block run one at a time). */
    void *(*exchange)(const void *mine, unsigned size, int *first);
    void (*fail)(const char *what); /* ends the launch with an error; does not return */
    /* cp.async: copies `bytes`, of which the first src_bytes from src and the rest zeros, when a
     * later cp_wait leaves at most `pending` of this thread's committed groups outstanding. */
    void (*cp_async)(void *dst, const void *src, unsigned bytes, unsigned src_bytes);
    void (*cp_commit)(void);
    void (*cp_wait)(int pending);
    void *(*dyn_smem)(void); /* the block's dynamic shared memory (the launch's bytes, 0xff at start) */
    /* griddepcontrol.wait: counted; a launch with programmatic dependent launch fails unless every
     * one of its threads waited (the kernels before it could still be writing its inputs) */
    void (*grid_dep_wait)(void);
    /* mbarriers (8 bytes of dynamic shared memory at offset bar) and the tensor memory accelerator:
     * init with `count` arrivals a phase; arrive once expecting `bytes` of copies; wait for the phase
     * of parity `parity` to complete (yields to the block's other threads until it does; a wait no
     * thread can end is a deadlock error); copy the box at (c0, c1) of tensor map `map` (made by
     * this emulator's cuTensorMapEncodeTiled) to shared memory at dst, zeros outside the tensor,
     * 128-byte swizzled if the map says so, then complete its bytes on bar */
    void (*mbar_init)(unsigned bar, unsigned count);
    void (*mbar_expect_tx)(unsigned bar, unsigned bytes);
    void (*mbar_wait)(unsigned bar, unsigned parity);
    void (*tma_load_2d)(void *dst, const void *map, int c0, int c1, unsigned bar);
    /* fence.proxy.async: the calling thread's landed cp.async copies (generic-proxy writes) become
     * visible to the async proxy; proxy_writer: 1 + the thread whose landed copy into the 16 bytes
     * of dynamic shared memory at `offset` it has not fenced yet, else 0 (wgmma may not read those) */
    void (*fence_proxy_async)(void);
    unsigned (*proxy_writer)(unsigned offset);
    void (*mbar_arrive)(unsigned bar); /* mbarrier.arrive: one of the phase's arrivals, no bytes */
} CudaEmuApi;
/* The emulator's tensor map (in the 128 bytes of a CUtensorMap). */
typedef struct CudaEmuTensorMap {
    unsigned magic, esize, swizzle, rank; /* swizzle: 0 none, 3 128 bytes (CUtensorMapSwizzle) */
    unsigned box[2];
    unsigned long long addr, dims[2], stride1;
} CudaEmuTensorMap;
#define CUDAEMU_TMAP_MAGIC 0x4d54454du /* "MTEM" */

#endif
