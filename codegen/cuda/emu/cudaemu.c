/* cudaemu.c — libmoeppc_cudaemu.so: the CUDA driver entry points moeppc calls (cuda_driver.c), served
 * on the CPU, for kernels compiled for arch "emu" (emu_compile.c). It lets the GPU tests and `moeppc
 * run --device cuda` run where there is no GPU: point MOEPPC_CUDA_DRIVER at this library.
 *
 * Execution: every CUDA thread of a block is a fiber on one OS thread (its own stack; a switch saves
 * the callee-saved registers); __syncthreads waits for every live thread of the block, warp
 * collectives (shuffles, match, mma.sync, ldmatrix) for all 32 lanes of the warp, so a divergent
 * barrier, a collective with exited or missing lanes, or any other deadlock ends the launch with an
 * error naming the kernel, block and thread, instead of a hang. Blocks are spread over a pool of OS
 * threads (MOEPPC_CUDAEMU_THREADS, default: the cores; the launching thread waits); atomics are
 * real atomics. cp.async copies happen at the cp.async.wait_group that retires them, not before.
 * Device memory is host memory (filled with 0xff bytes, NaN as floats, when allocated; each
 * allocation between pages no access may touch, so that one past its end faults and is named:
 * mem_fault; MOEPPC_CUDAEMU_MEMORY bytes caps it); streams run everything at once, in order; a stream capture
 * records launches, copies and fills into a graph that a graph launch replays; events read the
 * host's clock. A programmatic launch fails unless every thread waited; with
 * MOEPPC_CUDAEMU_PDL_HAZARDS=1 what the kernel before it wrote reads as garbage until its block's
 * threads have (see Launch). Timing figures are the CPU's and mean nothing for a GPU.
 * Kernel images: the path of a compiled object (format 1), or the object's bytes themselves (format
 * 2, in an emitted library: written to a private temporary file, opened and unlinked; cudaemu_abi.h).
 * Not emulated: partial warp masks, texture/surface memory, several devices. */
#include "codegen/cuda/emu/cudaemu_abi.h"
#include "support/support.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#define EXPORT __attribute__((visibility("default")))

typedef int CUresult;
enum {
    CU_OK = 0, CU_INVALID_VALUE = 1, CU_OUT_OF_MEMORY = 2, CU_INVALID_DEVICE = 101, CU_INVALID_IMAGE = 200,
    CU_INVALID_CONTEXT = 201, CU_INVALID_HANDLE = 400, CU_NOT_FOUND = 500, CU_LAUNCH_FAILED = 719,
    CU_NOT_SUPPORTED = 801, CU_CAPTURE_UNSUPPORTED = 900,
};
typedef unsigned long long CUdeviceptr;

EXPORT const int moeppc_cudaemu_abi = CUDAEMU_ABI;

/* ---- errors ---------------------------------------------------------------------------------------- */
static char last_error[1024];
static pthread_mutex_t error_mu = PTHREAD_MUTEX_INITIALIZER;

/* The detail of the emulator's last error (the driver API has only codes): cuda_driver.c appends it. */
EXPORT const char *moeppc_cudaemu_last_error(void) { return last_error; }

static CUresult fail_with(CUresult rc, const char *fmt, ...)
{
    pthread_mutex_lock(&error_mu);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&error_mu);
    return rc;
}

EXPORT CUresult cuGetErrorString(CUresult rc, const char **s)
{
    switch (rc) {
    case CU_OK: *s = "no error"; break;
    case CU_INVALID_VALUE: *s = "invalid argument"; break;
    case CU_OUT_OF_MEMORY: *s = "out of memory"; break;
    case CU_INVALID_DEVICE: *s = "invalid device ordinal"; break;
    case CU_INVALID_IMAGE: *s = "device kernel image is invalid"; break;
    case CU_INVALID_CONTEXT: *s = "invalid device context"; break;
    case CU_INVALID_HANDLE: *s = "invalid resource handle"; break;
    case CU_NOT_FOUND: *s = "named symbol not found"; break;
    case CU_LAUNCH_FAILED: *s = "unspecified launch failure"; break;
    case CU_NOT_SUPPORTED: *s = "operation not supported"; break;
    case CU_CAPTURE_UNSUPPORTED: *s = "operation not permitted when stream is capturing"; break;
    default: *s = "unknown error"; return CU_INVALID_VALUE;
    }
    return CU_OK;
}

/* ---- guard pages ----------------------------------------------------------------------------------- */
static void faults_install(void);
static pthread_once_t faults_once = PTHREAD_ONCE_INIT;

/* A mapping of its own for `bytes` (a multiple of 128) between two pages no access may touch, the
 * bytes against the upper one; their start (NULL when out of memory). Installs mem_fault, which names
 * an access that falls on either page. */
static char *guarded_map(size_t bytes, char **map, size_t *span)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    *span = (bytes + page - 1) / page * page + 2 * page;
    *map = mmap(NULL, *span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (*map == MAP_FAILED) return NULL;
    if (mprotect(*map, page, PROT_NONE) || mprotect(*map + *span - page, page, PROT_NONE)) {
        munmap(*map, *span);
        return NULL;
    }
    pthread_once(&faults_once, faults_install);
    return *map + *span - page - bytes;
}

/* ---- fibers ---------------------------------------------------------------------------------------- */
#define MAX_THREADS 1024
#define DYN_SMEM_DEFAULT (48 * 1024)  /* without an opt-in */
#define DYN_SMEM_MAX (227 * 1024)     /* with one (sm_90) */
#define FUNC_ATTR_MAX_DYNAMIC_SHARED 8
#define STACK_BYTES (256 << 10)

enum { F_RUN, F_BAR, F_WX, F_DONE, F_MBAR }; /* F_MBAR: waiting for an mbarrier phase */

typedef struct CpCopy { char *dst; const char *src; unsigned bytes, src_bytes; unsigned group; } CpCopy;

typedef struct Fiber {
    void *sp;
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
    int state;
    unsigned xgen; /* collectives this thread took part in: its warp's slot set is xgen & 1 */
    CudaEmuThread t;
    CpCopy *cp;    /* cp.async copies not yet retired, in issue order */
    int n_cp, cap_cp;
    unsigned committed; /* cp.async groups committed so far; a copy belongs to group `committed` */
    unsigned *marks;    /* the 16-byte chunks of dynamic shared memory its copies wrote since its last
                           fence.proxy.async (Sched.unfenced says whether still its) */
    int n_marks, cap_marks;
} Fiber;

typedef struct Warp {
    struct { unsigned char slots[32][CUDAEMU_SLOT], scratch[CUDAEMU_SCRATCH]; } gen[2];
    bool fresh[2]; /* released, and no lane has returned yet */
} Warp;

typedef struct Kernel {
    void *ctx; /* the context it was loaded into: destroying that unloads it */
    struct Kernel *next;
    void *so;
    void (*call)(void **args);
    int n_args;
    unsigned sizes[64];
    unsigned max_dyn; /* dynamic shared memory a launch may ask for (cuFuncSetAttribute; 0: 48 KB) */
    char name[256];
} Kernel;

typedef struct Sched {
    void *sp; /* the scheduler's, while a fiber runs */
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
    char *stacks;
    size_t stride;
    Fiber fib[MAX_THREADS];
    Warp warps[MAX_THREADS / 32];
    Fiber *cur;
    const Kernel *k;
    void **args;
    struct Launch *launch; /* the one this thread's blocks belong to */
    unsigned char *dyn; /* the block's dynamic shared memory: dyn_bytes (rounded up to 128) ending at */
    size_t dyn_bytes;   /* dyn_top, a guard page (guarded_map: an access past them faults, named) */
    unsigned char *dyn_top;
    char *dyn_map;
    size_t dyn_span;
    /* per 16-byte chunk of it: 1 + the thread whose cp.async (a generic-proxy write) landed there
     * last, until that thread's fence.proxy.async; 0 when written through the async proxy (the TMA)
     * or fenced. wgmma (the async proxy) may not read a marked chunk. */
    uint16_t *unfenced;
    bool failed;
    unsigned long mbar_events; /* mbarrier state changes in this block (a waiter's progress) */
    char msg[768];
} Sched;

static __thread Sched *S __attribute__((tls_model("initial-exec"))); /* no __tls_get_addr per call */

#if defined(__x86_64__)
/* Saves the callee-saved registers and the stack pointer in *save, continues on `to`'s stack. */
void cudaemu_switch(void **save, void *to);
__asm__(".text\n"
        ".globl cudaemu_switch\n"
        ".hidden cudaemu_switch\n"
        ".type cudaemu_switch,@function\n"
        "cudaemu_switch:\n"
        "    pushq %rbp\n    pushq %rbx\n    pushq %r12\n    pushq %r13\n    pushq %r14\n    pushq %r15\n"
        "    movq %rsp, (%rdi)\n    movq %rsi, %rsp\n"
        "    popq %r15\n    popq %r14\n    popq %r13\n    popq %r12\n    popq %rbx\n    popq %rbp\n"
        "    ret\n"
        ".size cudaemu_switch,.-cudaemu_switch\n");
#endif

static void to_scheduler(void)
{
    Fiber *f = S->cur;
#if defined(__x86_64__)
    cudaemu_switch(&f->sp, S->sp);
#else
    swapcontext(&f->uc, &S->uc);
#endif
}

static void fiber_entry(void)
{
    S->k->call(S->args);
    S->cur->state = F_DONE;
    to_scheduler();
    abort(); /* a finished fiber is never resumed */
}

static void fiber_start(Sched *s, int i)
{
    Fiber *f = &s->fib[i];
    /* stack tops staggered by 64 bytes a fiber: at one offset in their pages they would share the
     * few cache sets of that offset, and a round of switches would evict itself */
    char *top = s->stacks + (size_t)(i + 1) * s->stride - (size_t)(i % 64) * 64;
#if defined(__x86_64__)
    uint64_t *sp = (uint64_t *)((uintptr_t)top & ~(uintptr_t)15);
    *--sp = 0;                          /* fiber_entry's return address: it never returns */
    *--sp = (uint64_t)(uintptr_t)fiber_entry;
    for (int r = 0; r < 6; r++) *--sp = 0; /* rbp rbx r12 r13 r14 r15 */
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = top - s->stride + 4096;
    f->uc.uc_stack.ss_size = s->stride - 4096;
    f->uc.uc_link = NULL;
    makecontext(&f->uc, fiber_entry, 0);
#endif
}

static void to_fiber(Sched *s, Fiber *f)
{
    s->cur = f;
#if defined(__x86_64__)
    cudaemu_switch(&s->sp, f->sp);
#else
    swapcontext(&s->uc, &f->uc);
#endif
}

static Sched *sched_get(void)
{
    if (S) return S;
    Sched *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->stride = STACK_BYTES + 4096; /* the lowest page of each stack is a guard */
    s->stacks = mmap(NULL, s->stride * MAX_THREADS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
    if (s->stacks == MAP_FAILED) {
        free(s);
        return NULL;
    }
    for (int i = 0; i < MAX_THREADS; i++) mprotect(s->stacks + (size_t)i * s->stride, 4096, PROT_NONE);
    pthread_once(&faults_once, faults_install); /* (a kernel's faults and traps named) */
    return S = s;
}

/* This thread's scheduler and fiber stacks, freed (a pool worker that ends). */
static void sched_put(void)
{
    if (!S) return;
    munmap(S->stacks, S->stride * MAX_THREADS);
    if (S->dyn_map) munmap(S->dyn_map, S->dyn_span);
    free(S->unfenced);
    free(S);
    S = NULL;
}

/* ---- what kernels call (CudaEmuApi) ---------------------------------------------------------------- */
static const CudaEmuThread *api_self(void) { return &S->cur->t; }

static void api_fail(const char *what)
{
    Sched *s = S;
    const CudaEmuThread *t = &s->cur->t;
    if (!s->failed)
        snprintf(s->msg, sizeof s->msg, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s", s->k->name, t->bid.x,
                 t->bid.y, t->bid.z, t->tid.x, t->tid.y, t->tid.z, what);
    s->failed = true;
    s->cur->state = F_DONE;
    to_scheduler();
    abort();
}

static void api_syncthreads(void)
{
    S->cur->state = F_BAR;
    to_scheduler();
}

static void *api_exchange(const void *mine, unsigned size, int *first)
{
    Fiber *f = S->cur;
    if (size > CUDAEMU_SLOT) api_fail("a warp collective of more bytes than the emulator's slot");
    Warp *w = &S->warps[f->t.warp];
    unsigned g = f->xgen & 1;
    if (size) memcpy(w->gen[g].slots[f->t.lane], mine, size);
    f->state = F_WX;
    to_scheduler();
    f->xgen++;
    if (first) *first = w->fresh[g];
    w->fresh[g] = false;
    return w->gen[g].slots;
}

/* Where cp.async's copies land: at the wait that covers them (the latest a GPU may: a read of a tile
 * before its wait sees the old bytes), or (MOEPPC_CUDAEMU_CP_ASYNC=eager) at once, the earliest (a
 * copy into a buffer that other threads still read, without a barrier in between, shows). Read at
 * each launch. */
static bool cp_eager;

/* A copy of f's lands: its bytes, and (in dynamic shared memory) its chunks marked as f's. */
static void cp_land(Fiber *f, void *to, const void *src, unsigned bytes, unsigned src_bytes)
{
    unsigned char *dst = to;
    memcpy(dst, src, src_bytes);
    memset(dst + src_bytes, 0, bytes - src_bytes);
    if (dst < S->dyn || dst >= S->dyn + S->dyn_bytes) return;
    uint16_t me = (uint16_t)(f - S->fib + 1);
    for (size_t c = (size_t)(dst - S->dyn) / 16; c <= (size_t)(dst + bytes - 1 - S->dyn) / 16; c++) {
        if (S->unfenced[c] == me) continue;
        if (f->n_marks == f->cap_marks) {
            int cap = f->cap_marks ? 2 * f->cap_marks : 64;
            unsigned *p = realloc(f->marks, (size_t)cap * sizeof *p);
            if (!p) api_fail("cp.async: out of host memory");
            f->marks = p, f->cap_marks = cap;
        }
        S->unfenced[c] = me, f->marks[f->n_marks++] = (unsigned)c;
    }
}

/* fence.proxy.async: this thread's landed copies become visible to the async proxy */
static void api_fence_proxy_async(void)
{
    Fiber *f = S->cur;
    uint16_t me = (uint16_t)(f - S->fib + 1);
    for (int i = 0; i < f->n_marks; i++)
        if (S->unfenced[f->marks[i]] == me) S->unfenced[f->marks[i]] = 0;
    f->n_marks = 0;
}

static unsigned api_proxy_writer(unsigned offset)
{
    return offset < S->dyn_bytes ? S->unfenced[offset / 16] : 0;
}

static void api_cp_async(void *dst, const void *src, unsigned bytes, unsigned src_bytes)
{
    Fiber *f = S->cur;
    if (src_bytes > bytes) api_fail("cp.async: src-size larger than cp-size");
    if (cp_eager) {
        cp_land(f, dst, src, bytes, src_bytes);
        return;
    }
    if (f->n_cp == f->cap_cp) {
        int cap = f->cap_cp ? 2 * f->cap_cp : 16;
        CpCopy *p = realloc(f->cp, (size_t)cap * sizeof *p);
        if (!p) api_fail("cp.async: out of host memory");
        f->cp = p, f->cap_cp = cap;
    }
    f->cp[f->n_cp++] = (CpCopy){dst, src, bytes, src_bytes, f->committed};
}

static void api_cp_commit(void) { S->cur->committed++; }

/* cp.async.wait_group n: every copy of a committed group but the n newest lands now. */
static void api_cp_wait(int pending)
{
    Fiber *f = S->cur;
    int kept = 0;
    for (int i = 0; i < f->n_cp; i++) {
        CpCopy *c = &f->cp[i];
        if (c->group + (unsigned)pending < f->committed) cp_land(f, c->dst, c->src, c->bytes, c->src_bytes);
        else f->cp[kept++] = *c;
    }
    f->n_cp = kept;
}

static void *api_dyn_smem(void) { return S->dyn; }

static void api_grid_dep_wait(void);

/* An mbarrier (8 bytes of dynamic shared memory): arrivals a phase (16 bits), arrivals pending (16),
 * bytes of copies pending (31) and the phase's parity (1). */
static uint32_t *mbar_at(unsigned bar, const char *op)
{
    if (bar % 8 || (size_t)bar + 8 > S->dyn_bytes) {
        char m[160];
        snprintf(m, sizeof m, "%s: mbarrier at %u, not 8-byte aligned in the %zu bytes of dynamic shared memory", op,
                 bar, S->dyn_bytes);
        api_fail(m);
    }
    return (uint32_t *)(S->dyn + bar);
}

static void mbar_maybe_complete(uint32_t *m)
{
    if ((m[0] >> 16) == 0 && (m[1] & 0x7fffffffu) == 0) /* phase done: flip it, arrivals pending again */
        m[0] = (m[0] & 0xffffu) | (m[0] & 0xffffu) << 16, m[1] ^= 0x80000000u;
    S->mbar_events++;
}

static void api_mbar_init(unsigned bar, unsigned count)
{
    uint32_t *m = mbar_at(bar, "mbarrier.init");
    if (count == 0 || count > 0xffffu) api_fail("mbarrier.init: an arrival count of 0 or above 65535");
    m[0] = count | count << 16, m[1] = 0;
    S->mbar_events++;
}

static void api_mbar_expect_tx(unsigned bar, unsigned bytes)
{
    uint32_t *m = mbar_at(bar, "mbarrier.arrive.expect_tx");
    if ((m[0] >> 16) == 0) api_fail("mbarrier.arrive.expect_tx: more arrivals than the phase expects");
    if ((m[1] & 0x7fffffffu) + (uint64_t)bytes > 0x7fffffffu) api_fail("mbarrier.arrive.expect_tx: too many bytes");
    m[1] += bytes, m[0] -= 1u << 16;
    mbar_maybe_complete(m);
}

static void api_mbar_arrive(unsigned bar)
{
    uint32_t *m = mbar_at(bar, "mbarrier.arrive");
    if ((m[0] >> 16) == 0) api_fail("mbarrier.arrive: more arrivals than the phase expects");
    m[0] -= 1u << 16;
    mbar_maybe_complete(m);
}

static void api_mbar_wait(unsigned bar, unsigned parity)
{
    for (;;) {
        uint32_t *m = mbar_at(bar, "mbarrier.try_wait.parity");
        if ((m[1] >> 31) != (parity & 1)) return; /* the phase of that parity has completed */
        S->cur->state = F_MBAR;
        to_scheduler();
    }
}

static void api_tma_load_2d(void *dst, const void *map, int c0, int c1, unsigned bar)
{
    const CudaEmuTensorMap *t = map;
    if (t->magic != CUDAEMU_TMAP_MAGIC || t->rank != 2) api_fail("cp.async.bulk.tensor: not a 2-D tensor map of this emulator");
    size_t o = (size_t)((unsigned char *)dst - S->dyn), row = (size_t)t->box[0] * t->esize;
    if ((unsigned char *)dst < S->dyn || o + row * t->box[1] > S->dyn_bytes || o % (t->swizzle ? 1024 : 128))
        api_fail("cp.async.bulk.tensor: the box does not fit dynamic shared memory at a 128-byte (swizzled: 1 KB) boundary");
    for (unsigned r = 0; r < t->box[1]; r++)
        for (unsigned e = 0; e < t->box[0]; e++) {
            long long x = (long long)c0 + e, y = (long long)c1 + r;
            size_t at = o + r * row + (size_t)e * t->esize;
            if (t->swizzle) at ^= ((at >> 7) & 7) << 4;
            if (x < 0 || y < 0 || (unsigned long long)x >= t->dims[0] || (unsigned long long)y >= t->dims[1])
                memset(S->dyn + at, 0, t->esize);
            else
                memcpy(S->dyn + at, (const char *)(uintptr_t)t->addr + (size_t)y * t->stride1 + (size_t)x * t->esize, t->esize);
        }
    memset(S->unfenced + o / 16, 0, (row * t->box[1] + 15) / 16 * sizeof *S->unfenced); /* the async proxy's */
    uint32_t *m = mbar_at(bar, "cp.async.bulk.tensor");
    unsigned bytes = (unsigned)(row * t->box[1]);
    if ((m[1] & 0x7fffffffu) < bytes) api_fail("cp.async.bulk.tensor: more bytes than its mbarrier expects");
    m[1] -= bytes;
    mbar_maybe_complete(m);
}

static const CudaEmuApi api = {CUDAEMU_ABI,       api_self,        api_syncthreads,    api_exchange,
                               api_fail,          api_cp_async,    api_cp_commit,      api_cp_wait,
                               api_dyn_smem,      api_grid_dep_wait, api_mbar_init,    api_mbar_expect_tx,
                               api_mbar_wait,     api_tma_load_2d, api_fence_proxy_async, api_proxy_writer,
                               api_mbar_arrive};

/* ---- one block ------------------------------------------------------------------------------------- */
/* The order a block's runnable threads take turns in: by index, or (MOEPPC_CUDAEMU_ORDER=reverse)
 * from the last. A thread runs until it blocks, so a missing barrier between one thread's write and
 * another's read of shared memory goes unseen in one of the two orders and shows in the other. Taking
 * turns, warps stay within a warp collective of each other; with MOEPPC_CUDAEMU_ORDER=reverse-warps
 * one warp at a time (from the last) runs until it reaches a block barrier (or waits on an mbarrier),
 * as far ahead of the others as a GPU may let it: a write into a buffer the other warps still read
 * (with MOEPPC_CUDAEMU_CP_ASYNC=eager, a cp.async prefetch) shows. Read at each launch (run_launch,
 * before its blocks run). */
static bool order_reverse, order_warps;

static bool run_block(Sched *s, const Kernel *k, void **args, CudaEmuDim3 grid, CudaEmuDim3 block, CudaEmuDim3 bid)
{
    int n = (int)(block.x * block.y * block.z), nw = (n + 31) / 32;
    s->k = k, s->args = args, s->failed = false;
    if (s->dyn_bytes) memset(s->dyn, 0xff, s->dyn_bytes); /* shared memory starts as garbage on a GPU: NaN here */
    if (s->dyn_bytes) memset(s->unfenced, 0, (s->dyn_bytes + 15) / 16 * sizeof *s->unfenced);
    for (int i = 0; i < n; i++) {
        Fiber *f = &s->fib[i];
        f->state = F_RUN, f->xgen = 0, f->n_cp = 0, f->committed = 0, f->n_marks = 0;
        f->t = (CudaEmuThread){{(unsigned)i % block.x, (unsigned)i / block.x % block.y, (unsigned)i / (block.x * block.y)},
                               bid, block, grid, (unsigned)i & 31u, (unsigned)i >> 5};
        fiber_start(s, i);
    }
    bool rev = order_reverse;
    unsigned long woke_at = 0; /* mbar_events when the mbarrier waiters were last woken */
    bool woke = false;
    s->mbar_events = 0;
    for (;;) {
        int w_run = -1; /* order_warps: the one warp that runs this round */
        for (int jw = 0; order_warps && jw < nw && w_run < 0; jw++) {
            int w = rev ? nw - 1 - jw : jw;
            for (int l = 32 * w; l < n && l < 32 * w + 32; l++)
                if (s->fib[l].state == F_RUN) w_run = w;
        }
        for (int j = 0; j < n && !s->failed; j++) {
            int i = rev ? n - 1 - j : j;
            if (s->fib[i].state == F_RUN && (w_run < 0 || i >> 5 == w_run)) to_fiber(s, &s->fib[i]);
        }
        if (s->failed) return false;
        int live = 0, at_bar = 0, in_wx = 0, released = 0, in_mbar = 0;
        for (int i = 0; i < n; i++) in_mbar += s->fib[i].state == F_MBAR;
        for (int w = 0; w < nw; w++) {
            int lanes = n - 32 * w < 32 ? n - 32 * w : 32, wl = 0, wx = 0;
            for (int l = 0; l < lanes; l++) {
                int st = s->fib[32 * w + l].state;
                wl += st != F_DONE, wx += st == F_WX, at_bar += st == F_BAR;
            }
            live += wl, in_wx += wx;
            if (wx == 0 || wx != wl) continue;
            if (wl != 32) {
                snprintf(s->msg, sizeof s->msg, "kernel %s, block (%u,%u,%u), warp %d: a warp collective with %d of 32 "
                         "lanes (%s)", k->name, bid.x, bid.y, bid.z, w, wl, lanes < 32 ? "the block is not whole warps"
                                                                                     : "the others have exited");
                return false;
            }
            for (int l = 0; l < 32; l++) s->fib[32 * w + l].state = F_RUN;
            s->warps[w].fresh[s->fib[32 * w].xgen & 1] = true;
            released++;
        }
        if (live == 0) return true;
        if (released) continue;
        bool waiting = false; /* (order_warps: warps that have not had their turn) */
        for (int i = 0; i < n && !waiting; i++) waiting = s->fib[i].state == F_RUN;
        if (waiting) continue;
        if (at_bar == live) {
            for (int i = 0; i < n; i++)
                if (s->fib[i].state == F_BAR) s->fib[i].state = F_RUN;
            continue;
        }
        /* mbarrier waiters run again while some mbarrier changed since they last did */
        if (in_mbar && (!woke || s->mbar_events != woke_at)) {
            for (int i = 0; i < n; i++)
                if (s->fib[i].state == F_MBAR) s->fib[i].state = F_RUN;
            woke = true, woke_at = s->mbar_events;
            continue;
        }
        snprintf(s->msg, sizeof s->msg, "kernel %s, block (%u,%u,%u): deadlock: of %d live threads %d wait at "
                 "__syncthreads, %d in warp collectives whose warps are not all there (divergent barrier or "
                 "collective) and %d for an mbarrier phase no thread will complete", k->name, bid.x, bid.y, bid.z,
                 live, at_bar, in_wx, in_mbar);
        return false;
    }
}

/* ---- launches: blocks over a pool of OS threads ------------------------------------------------------ */
typedef struct Launch {
    const Kernel *k;
    void **args;
    CudaEmuDim3 grid, block;
    unsigned smem;
    long next, total;
    int failed;
    bool pdl;             /* launched with programmatic dependent launch              */
    long waits;           /* griddepcontrol.wait calls (atomic)                       */
    bool hazards;         /* the kernel before's writes poisoned until each block's wait (below) */
    bool claimed;         /* (hazards) taken by the one worker that runs its blocks   */
} Launch;

/* Programmatic-launch hazards (MOEPPC_CUDAEMU_PDL_HAZARDS=1): on a GPU a kernel launched with
 * programmatic dependent launch may start while the kernel before it still runs, so what it reads
 * before its griddepcontrol.wait of that kernel's writes may be old. Launches run one after another
 * here; with the check on, the bytes the kernel before wrote (found by comparing the device memory
 * with a copy taken before it ran, while all of it is at most HAZARD_CAP bytes; none after a copy or
 * fill, which a programmatic launch does not overlap) hold 0xff bytes (NaN) in each block of a
 * programmatic launch until all of the block's threads have waited: a read before the wait gets
 * garbage, as it might on a GPU, and the results show it. Such a launch runs its blocks one at a time,
 * its wait a block barrier. Kernels two launches back are complete on a GPU too (each lets its
 * dependents launch only after its own wait): their writes are not poisoned. */
#define HAZARD_CAP ((size_t)256 << 20)
static void hazard_poison(void);
static void hazard_restore(void);
static bool hazard_snapshot(void);
static bool hazard_diff(void);
static bool hazard_valid; /* the last stream operation was a kernel whose writes hazard_diff found */

static void api_grid_dep_wait(void)
{
    __atomic_fetch_add(&S->launch->waits, 1, __ATOMIC_RELAXED);
    if (!S->launch->hazards) return;
    S->cur->state = F_BAR; /* every thread of the block waits, then the kernel before's writes are back */
    to_scheduler();
    hazard_restore();
}

static void launch_work(Launch *L)
{
    if (L->hazards && __atomic_exchange_n(&L->claimed, true, __ATOMIC_SEQ_CST)) return; /* one block at a time */
    Sched *s = sched_get();
    if (s) s->launch = L;
    if (!s) {
        __atomic_store_n(&L->failed, 1, __ATOMIC_SEQ_CST);
        fail_with(CU_OUT_OF_MEMORY, "no memory for the emulator's fiber stacks");
        return;
    }
    if (L->smem && !s->dyn_map) { /* room for the most any launch may ask for */
        char *start = NULL;
        s->unfenced = calloc(DYN_SMEM_MAX / 16, sizeof *s->unfenced);
        if (s->unfenced) start = guarded_map(DYN_SMEM_MAX, &s->dyn_map, &s->dyn_span);
        if (!start) {
            free(s->unfenced);
            s->unfenced = NULL, s->dyn_map = NULL;
            __atomic_store_n(&L->failed, 1, __ATOMIC_SEQ_CST);
            fail_with(CU_OUT_OF_MEMORY, "no memory for %u bytes of dynamic shared memory", L->smem);
            return;
        }
        s->dyn_top = (unsigned char *)start + DYN_SMEM_MAX;
    }
    s->dyn_bytes = L->smem;
    s->dyn = s->dyn_top - (L->smem + 127) / 128 * 128; /* (dyn_top: the guard page) */
    for (;;) {
        long b = __atomic_fetch_add(&L->next, 1, __ATOMIC_SEQ_CST);
        if (b >= L->total || __atomic_load_n(&L->failed, __ATOMIC_SEQ_CST)) return;
        CudaEmuDim3 bid = {(unsigned)(b % L->grid.x), (unsigned)(b / L->grid.x % L->grid.y),
                           (unsigned)(b / ((long)L->grid.x * L->grid.y))};
        if (L->hazards) hazard_poison();
        bool ok = run_block(s, L->k, L->args, L->grid, L->block, bid);
        if (L->hazards) hazard_restore(); /* (a block whose threads never waited) */
        if (!ok) {
            if (__atomic_exchange_n(&L->failed, 1, __ATOMIC_SEQ_CST) == 0) fail_with(CU_LAUNCH_FAILED, "%s", s->msg);
            return;
        }
    }
}

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER, launch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cv = PTHREAD_COND_INITIALIZER, pool_done = PTHREAD_COND_INITIALIZER;
static Launch *pool_job;
static unsigned pool_gen;
static int pool_busy, n_workers = -1;
static pthread_t pool_threads[64];

static void *pool_worker(void *arg)
{
    unsigned seen = (unsigned)(uintptr_t)arg; /* the generation when it was started (pool_start) */
    for (;;) {
        pthread_mutex_lock(&pool_mu);
        while (pool_gen == seen) pthread_cond_wait(&pool_cv, &pool_mu);
        seen = pool_gen;
        Launch *L = pool_job;
        if (!L) { /* pool_stop's: end (it joins) */
            pthread_mutex_unlock(&pool_mu);
            sched_put();
            return NULL;
        }
        pthread_mutex_unlock(&pool_mu);
        launch_work(L);
        pthread_mutex_lock(&pool_mu);
        if (--pool_busy == 0) pthread_cond_signal(&pool_done);
        pthread_mutex_unlock(&pool_mu);
    }
    return NULL;
}

static void pool_start(void)
{
    const char *e = getenv("MOEPPC_CUDAEMU_THREADS");
    long n = e && e[0] ? atol(e) : sysconf(_SC_NPROCESSORS_ONLN);
    n = n < 1 ? 1 : n > 64 ? 64 : n;
    n_workers = 0;
    pthread_mutex_lock(&pool_mu);
    void *gen = (void *)(uintptr_t)pool_gen; /* (a pool_stop's generation is past: not a job) */
    pthread_mutex_unlock(&pool_mu);
    for (long i = 0; i < n; i++)
        if (pthread_create(&pool_threads[n_workers], NULL, pool_worker, gen) == 0) n_workers++;
}

/* The workers end (the next launch starts new ones). Before kernel objects are closed: each worker
 * holds their __shared__ arrays (thread_local) in its dynamic TLS, which a dlclose leaves stale in a
 * live thread, and LeakSanitizer (GCC 12's) crashed reading it at exit (random_models.py's --batch
 * runs under ASan, which end a model's context before the process). For the same reason the thread
 * that launches never runs a block itself, unless no worker could be started: it outlives every
 * module, and LeakSanitizer's scan of its stale TLS at exit crashed ("Tracer caught signal 11", in
 * ScanRangeForPointers) about one `run --device cuda` in 200 under load (tune_cuda_emu failed so in
 * the 43rd and 67th stops' CI). */
static void pool_stop(void)
{
    pthread_mutex_lock(&launch_mu);
    pthread_mutex_lock(&pool_mu);
    int n = n_workers;
    if (n > 0) pool_job = NULL, pool_gen++, pthread_cond_broadcast(&pool_cv);
    pthread_mutex_unlock(&pool_mu);
    for (int i = 0; i < n; i++) pthread_join(pool_threads[i], NULL);
    n_workers = -1;
    pthread_mutex_unlock(&launch_mu);
}

static CUresult run_launch(const Kernel *k, CudaEmuDim3 grid, CudaEmuDim3 block, unsigned smem, void **args, bool pdl)
{
    Launch L = {k, args, grid, block, smem, 0, (long)grid.x * grid.y * grid.z, 0, pdl, 0, false, false};
    pthread_mutex_lock(&launch_mu); /* one launch at a time: kernels of a stream run in order anyway */
    const char *check = getenv("MOEPPC_CUDAEMU_PDL_HAZARDS");
    bool hazards = check && strcmp(check, "1") == 0, snapped = hazards && hazard_snapshot();
    L.hazards = hazards && pdl && hazard_valid;
    const char *order = getenv("MOEPPC_CUDAEMU_ORDER");
    order_reverse = order && strncmp(order, "reverse", 7) == 0;
    order_warps = order && strcmp(order, "reverse-warps") == 0;
    const char *cp = getenv("MOEPPC_CUDAEMU_CP_ASYNC");
    cp_eager = cp && strcmp(cp, "eager") == 0;
    if (n_workers < 0) pool_start();
    bool pool = n_workers > 0; /* (hazards: the first worker takes every block, launch_work) */
    if (pool) {
        pthread_mutex_lock(&pool_mu);
        pool_job = &L, pool_busy = n_workers, pool_gen++;
        pthread_cond_broadcast(&pool_cv);
        while (pool_busy) pthread_cond_wait(&pool_done, &pool_mu);
        pthread_mutex_unlock(&pool_mu);
    } else launch_work(&L);
    hazard_valid = snapped && !L.failed && hazard_diff();
    pthread_mutex_unlock(&launch_mu);
    long threads = L.total * (long)block.x * block.y * block.z;
    if (!L.failed && pdl && L.waits < threads)
        return fail_with(CU_LAUNCH_FAILED, "kernel %s: launched with programmatic dependent launch, but %ld of its %ld "
                         "threads never executed griddepcontrol.wait (they could read inputs the kernel before it "
                         "had not finished writing)", k->name, threads - L.waits, threads);
    return L.failed ? CU_LAUNCH_FAILED : CU_OK;
}

/* ---- device, contexts ------------------------------------------------------------------------------- */
typedef struct Ctx { int dev; } Ctx;
static Ctx primary_ctx;
static __thread Ctx *ctx_stack[16];
static __thread int ctx_depth;
static void *current_ctx(void) { return ctx_depth ? ctx_stack[ctx_depth - 1] : NULL; }
static void ctx_release(void *ctx); /* unloads its modules, frees its memory (cuCtxDestroy) */

EXPORT CUresult cuInit(unsigned flags) { return flags ? CU_INVALID_VALUE : CU_OK; }
EXPORT CUresult cuDeviceGetCount(int *n) { *n = 1; return CU_OK; }
EXPORT CUresult cuDeviceGet(int *dev, int ordinal)
{
    if (ordinal != 0) return fail_with(CU_INVALID_DEVICE, "the emulator has one device, 0");
    *dev = 0;
    return CU_OK;
}
EXPORT CUresult cuDeviceGetName(char *name, int len, int dev)
{
    (void)dev;
    snprintf(name, (size_t)len, "moeppc CUDA emulator (CPU)");
    return CU_OK;
}
EXPORT CUresult cuDeviceGetAttribute(int *v, int attr, int dev)
{
    (void)dev;
    /* compute capability 9.0 (the kernels are compiled for arch emu, not for it); 4 multiprocessors (a
       persistent kernel's blocks then loop over several tiles each) */
    *v = attr == 75 ? 9 : attr == 16 ? 4 : 0;
    return CU_OK;
}
/* MOEPPC_CUDAEMU_NO_CONTEXTS=1 refuses every context (a test that a caller makes none: moeppc
 * --version --verbose's queries). */
EXPORT CUresult cuCtxCreate_v2(void **ctx, unsigned flags, int dev)
{
    (void)flags;
    const char *no = getenv("MOEPPC_CUDAEMU_NO_CONTEXTS");
    if (no && no[0] == '1') return CU_OUT_OF_MEMORY;
    Ctx *c = calloc(1, sizeof *c);
    if (!c) return CU_OUT_OF_MEMORY;
    c->dev = dev;
    *ctx = c;
    if (ctx_depth < 16) ctx_stack[ctx_depth++] = c;
    return CU_OK;
}
EXPORT CUresult cuCtxDestroy_v2(void *ctx)
{
    for (int i = 0; i < ctx_depth; i++)
        if (ctx_stack[i] == ctx) memmove(&ctx_stack[i], &ctx_stack[i + 1], (size_t)(--ctx_depth - i) * sizeof *ctx_stack);
    ctx_release(ctx);
    free(ctx);
    return CU_OK;
}
EXPORT CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev)
{
    (void)dev;
    *ctx = &primary_ctx;
    return CU_OK;
}
EXPORT CUresult cuDevicePrimaryCtxRelease_v2(int dev) { (void)dev; return CU_OK; }
EXPORT CUresult cuCtxPushCurrent_v2(void *ctx)
{
    if (ctx_depth == 16) return fail_with(CU_INVALID_VALUE, "context stack deeper than the emulator keeps");
    ctx_stack[ctx_depth++] = ctx;
    return CU_OK;
}
EXPORT CUresult cuCtxPopCurrent_v2(void **ctx)
{
    if (ctx_depth == 0) return CU_INVALID_CONTEXT;
    *ctx = ctx_stack[--ctx_depth];
    return CU_OK;
}
EXPORT CUresult cuCtxGetDevice(int *dev)
{
    if (ctx_depth == 0) return CU_INVALID_CONTEXT;
    *dev = 0;
    return CU_OK;
}
EXPORT CUresult cuCtxSynchronize(void) { return CU_OK; }

/* ---- memory --------------------------------------------------------------------------------------- */
/* Device memory: each allocation a mapping of its own between two pages no access may touch
 * (guarded_map), its bytes rounded up to 256 (cuMemAlloc's alignment) against the upper one, so that
 * a kernel's read or write past an allocation's last 256-byte unit faults at once, and mem_fault
 * names the kernel, block and thread and the allocation, instead of it reading or changing a
 * neighbour's bytes unseen (a GPU goes on, or faults later and elsewhere); one before its first page
 * faults too. A block's dynamic shared memory likewise (launch_work). */
typedef struct Alloc { uintptr_t base; size_t bytes; void *ctx; char *map; size_t span; } Alloc;
static Alloc *allocs;
static int n_allocs, cap_allocs;
static size_t allocated;
static pthread_mutex_t mem_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sigaction segv_before, ill_before; /* the process's SIGSEGV and SIGILL actions before ours */

/* Whether p is on one of the guard pages of the mapping [map, map + span). */
static bool on_guard(uintptr_t p, const char *map, size_t span)
{
    uintptr_t lo = (uintptr_t)map, hi = lo + span, page = (uintptr_t)sysconf(_SC_PAGESIZE);
    return map && p >= lo && p < hi && (p < lo + page || p >= hi - page);
}

/* SIGSEGV: where the address is on the guard pages of a device allocation or of this thread's
 * dynamic shared memory, a line on stderr naming them (and the kernel, block and thread when a
 * kernel's thread made the access); then the action before this one's takes the fault again (the
 * default: the process ends; a sanitizer's: its report). Reads the allocations' list without its
 * lock: it is not changed while a kernel runs. */
static void mem_fault(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)uc;
    uintptr_t p = (uintptr_t)si->si_addr, base = 0;
    size_t bytes = 0;
    const char *what = NULL;
    const Sched *s = S;
    if (s && on_guard(p, s->dyn_map, s->dyn_span))
        what = "the block's dynamic shared memory", base = (uintptr_t)s->dyn, bytes = s->dyn_bytes;
    for (int i = 0; !what && i < n_allocs; i++)
        if (on_guard(p, allocs[i].map, allocs[i].span))
            what = "the device allocation", base = allocs[i].base, bytes = allocs[i].bytes;
    if (what) {
        char where[384] = "outside the kernels", msg[640];
        if (s && s->cur && s->k) {
            const CudaEmuThread *t = &s->cur->t;
            snprintf(where, sizeof where, "kernel %s, block (%u,%u,%u), thread (%u,%u,%u)", s->k->name, t->bid.x,
                     t->bid.y, t->bid.z, t->tid.x, t->tid.y, t->tid.z);
        }
        int n = p >= base ? snprintf(msg, sizeof msg, "CUDA emulator: %s: an access %llu bytes past the end of %s of "
                                     "%zu bytes at %#llx\n", where, (unsigned long long)(p - base - bytes), what, bytes,
                                     (unsigned long long)base)
                          : snprintf(msg, sizeof msg, "CUDA emulator: %s: an access %llu bytes before %s of %zu bytes "
                                     "at %#llx\n", where, (unsigned long long)(base - p), what, bytes,
                                     (unsigned long long)base);
        if (n > 0 && write(2, msg, (size_t)n) < 0) {} /* (nothing more to do about it) */
    }
    sigaction(SIGSEGV, &segv_before, NULL);
}

/* SIGILL in a kernel's thread: the trap of an index past an array's bounds (emu_compile.c compiles
 * the kernels so), named as mem_fault names an access; then the action before this one's. */
static void bounds_trap(int sig, siginfo_t *si, void *uc)
{
    (void)sig, (void)si, (void)uc;
    const Sched *s = S;
    if (s && s->cur && s->k) {
        const CudaEmuThread *t = &s->cur->t;
        char msg[512];
        int n = snprintf(msg, sizeof msg, "CUDA emulator: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): an index past "
                         "the bounds of an array (a trap of -fsanitize=bounds)\n", s->k->name, t->bid.x, t->bid.y,
                         t->bid.z, t->tid.x, t->tid.y, t->tid.z);
        if (n > 0 && write(2, msg, (size_t)n) < 0) {} /* (nothing more to do about it) */
    }
    sigaction(SIGILL, &ill_before, NULL);
}

static void faults_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = mem_fault;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &segv_before);
    sa.sa_sigaction = bounds_trap;
    sigaction(SIGILL, &sa, &ill_before);
}

/* The device's memory: MOEPPC_CUDAEMU_MEMORY bytes (a GPU's size, or a small one to test running out
 * of it: allocations past it fail as a full GPU's do), else the host's. 0 when not set. */
static size_t memory_limit(void)
{
    const char *e = getenv("MOEPPC_CUDAEMU_MEMORY");
    if (!e || !e[0]) return 0;
    char *end;
    unsigned long long v = strtoull(e, &end, 10);
    return *end == '\0' && v > 0 ? (size_t)v : 0;
}

/* The hazard check's state (under launch_mu): a copy of the device memory before the last launch,
 * the byte runs that launch changed, and while a block runs poisoned, what they held. */
static struct {
    unsigned char *snap, *held;
    size_t snap_cap, held_cap, snap_bytes;
    struct { unsigned char *p; size_t n; } *run;
    int n_run, cap_run;
    bool poisoned;
} hz;

static bool hazard_snapshot(void)
{
    pthread_mutex_lock(&mem_mu);
    size_t total = 0;
    for (int i = 0; i < n_allocs; i++) total += allocs[i].bytes;
    bool ok = total <= HAZARD_CAP;
    if (ok && total > hz.snap_cap) {
        unsigned char *s = realloc(hz.snap, total);
        if (s) hz.snap = s, hz.snap_cap = total;
        ok = s != NULL;
    }
    size_t at = 0;
    for (int i = 0; ok && i < n_allocs; i++) {
        memcpy(hz.snap + at, (void *)allocs[i].base, allocs[i].bytes);
        at += allocs[i].bytes;
    }
    hz.snap_bytes = ok ? total : 0;
    pthread_mutex_unlock(&mem_mu);
    return ok;
}

/* The runs of bytes that differ from the snapshot (gaps under 16 bytes joined); false when out of
 * memory for them or the allocations changed. */
static bool hazard_diff(void)
{
    pthread_mutex_lock(&mem_mu);
    hz.n_run = 0;
    size_t at = 0, held = 0;
    bool ok = true;
    for (int i = 0; ok && i < n_allocs; i++) {
        const unsigned char *now = (const unsigned char *)allocs[i].base, *was = hz.snap + at;
        size_t n = allocs[i].bytes;
        if (at + n > hz.snap_bytes) { ok = false; break; }
        for (size_t j = 0; j < n;) {
            if (j % 64 == 0 && n - j >= 64 && memcmp(now + j, was + j, 64) == 0) { j += 64; continue; }
            if (now[j] == was[j]) { j++; continue; }
            size_t e = j + 1, same = 0;
            for (; e < n && same < 16; e++) same = now[e] == was[e] ? same + 1 : 0;
            e -= same;
            if (hz.n_run == hz.cap_run) {
                int cap = hz.cap_run ? 2 * hz.cap_run : 64;
                void *r = realloc(hz.run, (size_t)cap * sizeof *hz.run);
                if (!r) { ok = false; break; }
                hz.run = r, hz.cap_run = cap;
            }
            hz.run[hz.n_run].p = (unsigned char *)now + j, hz.run[hz.n_run++].n = e - j;
            held += e - j, j = e;
        }
        at += n;
    }
    if (ok && held > hz.held_cap) {
        unsigned char *h = realloc(hz.held, held);
        if (h) hz.held = h, hz.held_cap = held;
        ok = h != NULL;
    }
    pthread_mutex_unlock(&mem_mu);
    return ok;
}

static void hazard_poison(void)
{
    size_t at = 0;
    for (int i = 0; i < hz.n_run; i++) {
        memcpy(hz.held + at, hz.run[i].p, hz.run[i].n);
        memset(hz.run[i].p, 0xff, hz.run[i].n);
        at += hz.run[i].n;
    }
    hz.poisoned = true;
}

static void hazard_restore(void)
{
    if (!hz.poisoned) return;
    size_t at = 0;
    for (int i = 0; i < hz.n_run; i++) memcpy(hz.run[i].p, hz.held + at, hz.run[i].n), at += hz.run[i].n;
    hz.poisoned = false;
}

EXPORT CUresult cuMemAlloc_v2(CUdeviceptr *p, size_t bytes)
{
    if (bytes == 0) return CU_INVALID_VALUE;
    size_t rounded = (bytes + 255) & ~(size_t)255, limit = memory_limit();
    pthread_mutex_lock(&mem_mu);
    bool over = limit && (rounded > limit || allocated > limit - rounded);
    pthread_mutex_unlock(&mem_mu);
    if (over) return fail_with(CU_OUT_OF_MEMORY, "%zu bytes more than the emulated device's %zu (MOEPPC_CUDAEMU_MEMORY)",
                               bytes, limit);
    char *map;
    size_t span;
    void *m = guarded_map(rounded, &map, &span);
    if (!m) return fail_with(CU_OUT_OF_MEMORY, "host memory for %zu bytes of device memory", bytes);
    memset(m, 0xff, rounded); /* device memory starts as garbage: NaN as floats */
    pthread_mutex_lock(&mem_mu);
    if (n_allocs == cap_allocs) {
        int cap = cap_allocs ? 2 * cap_allocs : 64;
        Alloc *a = realloc(allocs, (size_t)cap * sizeof *a);
        if (!a) {
            pthread_mutex_unlock(&mem_mu);
            munmap(map, span);
            return CU_OUT_OF_MEMORY;
        }
        allocs = a, cap_allocs = cap;
    }
    allocs[n_allocs++] = (Alloc){(uintptr_t)m, bytes, current_ctx(), map, span};
    allocated += rounded;
    pthread_mutex_unlock(&mem_mu);
    *p = (CUdeviceptr)(uintptr_t)m;
    return CU_OK;
}

EXPORT CUresult cuMemFree_v2(CUdeviceptr p)
{
    pthread_mutex_lock(&mem_mu);
    for (int i = 0; i < n_allocs; i++)
        if (allocs[i].base == p) {
            allocated -= (allocs[i].bytes + 255) & ~(size_t)255;
            Alloc a = allocs[i];
            allocs[i] = allocs[--n_allocs];
            pthread_mutex_unlock(&mem_mu);
            munmap(a.map, a.span);
            return CU_OK;
        }
    pthread_mutex_unlock(&mem_mu);
    return fail_with(CU_INVALID_VALUE, "cuMemFree of %#llx, which cuMemAlloc did not return", p);
}

EXPORT CUresult cuMemGetInfo_v2(size_t *free_bytes, size_t *total)
{
    size_t limit = memory_limit();
    if (limit) {
        pthread_mutex_lock(&mem_mu);
        *total = limit, *free_bytes = allocated < limit ? limit - allocated : 0;
        pthread_mutex_unlock(&mem_mu);
        return CU_OK;
    }
    /* the host's memory: free is what the process may still take (MemAvailable, the cgroup's limit),
     * not MemFree, which a page cache filled by earlier work keeps low while reclaim would free it */
    long page = sysconf(_SC_PAGESIZE);
    *total = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)page;
    double avail = mem_available_bytes();
    *free_bytes = avail < (double)*total ? (size_t)avail : *total;
    return CU_OK;
}

EXPORT CUresult cuPointerGetAttribute(void *data, int attr, CUdeviceptr p)
{
    bool found = false;
    pthread_mutex_lock(&mem_mu);
    for (int i = 0; i < n_allocs && !found; i++) found = p >= allocs[i].base && p < allocs[i].base + allocs[i].bytes;
    pthread_mutex_unlock(&mem_mu);
    if (!found) return CU_INVALID_VALUE; /* host memory the driver does not know */
    switch (attr) {
    case 2: *(unsigned *)data = 2; break; /* CU_POINTER_ATTRIBUTE_MEMORY_TYPE: CU_MEMORYTYPE_DEVICE */
    case 8: *(unsigned *)data = 0; break; /* IS_MANAGED */
    case 9: *(int *)data = 0; break;      /* DEVICE_ORDINAL */
    default: return CU_INVALID_VALUE;
    }
    return CU_OK;
}

/* ---- streams, graphs -------------------------------------------------------------------------------- */
typedef enum { N_LAUNCH, N_COPY, N_FILL } NodeKind;
typedef struct Node {
    NodeKind kind;
    const Kernel *k;
    CudaEmuDim3 grid, block;
    unsigned smem;
    bool pdl;             /* programmatic dependent launch */
    void **args;          /* into blob */
    unsigned char *blob;  /* the arguments' values, copied at capture */
    char *dst;
    const char *src;
    size_t bytes;
    unsigned value;
} Node;
typedef struct Graph { Node *nodes; int n, cap; } Graph;
typedef struct Stream { Graph *capture; } Stream;
static Stream legacy_stream;

static Stream *stream_of(void *h) { return h ? (Stream *)h : &legacy_stream; }

static CUresult graph_add(Graph *g, Node n)
{
    if (g->n == g->cap) {
        int cap = g->cap ? 2 * g->cap : 32;
        Node *p = realloc(g->nodes, (size_t)cap * sizeof *p);
        if (!p) return CU_OUT_OF_MEMORY;
        g->nodes = p, g->cap = cap;
    }
    g->nodes[g->n++] = n;
    return CU_OK;
}

static void graph_free(Graph *g)
{
    if (!g) return;
    for (int i = 0; i < g->n; i++) free(g->nodes[i].blob), free(g->nodes[i].args);
    free(g->nodes);
    free(g);
}

/* A launch's argument values copied (the caller's kernelParams point at its own variables). */
static bool copy_args(Node *n, const Kernel *k, void **args)
{
    size_t off = 0;
    for (int i = 0; i < k->n_args; i++) off += (k->sizes[i] + 7) & ~(size_t)7;
    n->blob = malloc(off ? off : 1);
    n->args = calloc((size_t)k->n_args + 1, sizeof *n->args);
    if (!n->blob || !n->args) {
        free(n->blob), free(n->args);
        n->blob = NULL, n->args = NULL;
        return false;
    }
    off = 0;
    for (int i = 0; i < k->n_args; i++) {
        memcpy(n->blob + off, args[i], k->sizes[i]);
        n->args[i] = n->blob + off;
        off += (k->sizes[i] + 7) & ~(size_t)7;
    }
    return true;
}

static CUresult run_node(const Node *n)
{
    switch (n->kind) {
    case N_LAUNCH: return run_launch(n->k, n->grid, n->block, n->smem, n->args, n->pdl);
    case N_COPY: memmove(n->dst, n->src, n->bytes); hazard_valid = false; return CU_OK;
    case N_FILL:
        for (size_t i = 0; i < n->bytes; i++) memcpy(n->dst + 4 * i, &n->value, 4);
        hazard_valid = false;
        return CU_OK;
    }
    return CU_INVALID_VALUE;
}

/* Now, or into the graph of a capturing stream. */
static CUresult enqueue(void *stream, Node n)
{
    Stream *s = stream_of(stream);
    if (!s->capture) return run_node(&n);
    if (n.kind == N_LAUNCH && !copy_args(&n, n.k, n.args)) return CU_OUT_OF_MEMORY;
    CUresult rc = graph_add(s->capture, n);
    if (rc != CU_OK) free(n.blob), free(n.args);
    return rc;
}

static CUresult copy_now(void *dst, const void *src, size_t bytes)
{
    if (stream_of(NULL)->capture) return CU_CAPTURE_UNSUPPORTED;
    memmove(dst, src, bytes);
    hazard_valid = false; /* (the next launch does not overlap it) */
    return CU_OK;
}

EXPORT CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes)
{
    return copy_now((void *)(uintptr_t)dst, src, bytes);
}
EXPORT CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes)
{
    return copy_now(dst, (const void *)(uintptr_t)src, bytes);
}
EXPORT CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes)
{
    return copy_now((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, bytes);
}
EXPORT CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t bytes, void *stream)
{
    return enqueue(stream, (Node){.kind = N_COPY, .dst = (char *)(uintptr_t)dst, .src = src, .bytes = bytes});
}
EXPORT CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t bytes, void *stream)
{
    return enqueue(stream, (Node){.kind = N_COPY, .dst = (char *)(uintptr_t)dst, .src = (const char *)(uintptr_t)src,
                                  .bytes = bytes});
}
EXPORT CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned value, size_t count, void *stream)
{
    return enqueue(stream, (Node){.kind = N_FILL, .dst = (char *)(uintptr_t)dst, .bytes = count, .value = value});
}

EXPORT CUresult cuStreamCreate(void **stream, unsigned flags)
{
    (void)flags;
    *stream = calloc(1, sizeof(Stream));
    return *stream ? CU_OK : CU_OUT_OF_MEMORY;
}
EXPORT CUresult cuStreamDestroy_v2(void *stream)
{
    if (stream) graph_free(((Stream *)stream)->capture), free(stream);
    return CU_OK;
}
EXPORT CUresult cuStreamSynchronize(void *stream)
{
    return stream_of(stream)->capture ? CU_CAPTURE_UNSUPPORTED : CU_OK;
}
EXPORT CUresult cuStreamBeginCapture_v2(void *stream, int mode)
{
    (void)mode;
    Stream *s = stream_of(stream);
    if (s->capture) return CU_CAPTURE_UNSUPPORTED;
    s->capture = calloc(1, sizeof(Graph));
    return s->capture ? CU_OK : CU_OUT_OF_MEMORY;
}
EXPORT CUresult cuStreamEndCapture(void *stream, void **graph)
{
    Stream *s = stream_of(stream);
    if (!s->capture) return fail_with(CU_INVALID_VALUE, "cuStreamEndCapture on a stream that is not capturing");
    *graph = s->capture;
    s->capture = NULL;
    return CU_OK;
}
EXPORT CUresult cuGraphInstantiateWithFlags(void **exec, void *graph, unsigned long long flags)
{
    (void)flags;
    const Graph *g = graph;
    Graph *x = calloc(1, sizeof *x);
    if (!x) return CU_OUT_OF_MEMORY;
    for (int i = 0; i < g->n; i++) {
        Node n = g->nodes[i];
        n.blob = NULL, n.args = NULL;
        if ((n.kind == N_LAUNCH && !copy_args(&n, n.k, g->nodes[i].args)) || graph_add(x, n) != CU_OK) {
            free(n.blob), free(n.args);
            graph_free(x);
            return CU_OUT_OF_MEMORY;
        }
    }
    *exec = x;
    return CU_OK;
}
EXPORT CUresult cuGraphLaunch(void *exec, void *stream)
{
    if (stream_of(stream)->capture) return fail_with(CU_NOT_SUPPORTED, "a graph launched into a capture");
    const Graph *g = exec;
    for (int i = 0; i < g->n; i++) {
        CUresult rc = run_node(&g->nodes[i]);
        if (rc != CU_OK) return rc;
    }
    return CU_OK;
}
EXPORT CUresult cuGraphExecDestroy(void *exec) { graph_free(exec); return CU_OK; }
EXPORT CUresult cuGraphDestroy(void *graph) { graph_free(graph); return CU_OK; }

typedef struct Event { double t; } Event;
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
EXPORT CUresult cuEventCreate(void **ev, unsigned flags)
{
    (void)flags;
    *ev = calloc(1, sizeof(Event));
    return *ev ? CU_OK : CU_OUT_OF_MEMORY;
}
EXPORT CUresult cuEventRecord(void *ev, void *stream)
{
    if (stream_of(stream)->capture) return fail_with(CU_NOT_SUPPORTED, "an event recorded into a capture");
    ((Event *)ev)->t = now_s();
    return CU_OK;
}
EXPORT CUresult cuEventSynchronize(void *ev) { (void)ev; return CU_OK; }
EXPORT CUresult cuEventElapsedTime(float *ms, void *from, void *to)
{
    *ms = (float)(1e3 * (((Event *)to)->t - ((Event *)from)->t));
    return CU_OK;
}
EXPORT CUresult cuEventDestroy_v2(void *ev) { free(ev); return CU_OK; }

/* ---- modules, launches ------------------------------------------------------------------------------- */
static Kernel *modules;
static pthread_mutex_t mod_mu = PTHREAD_MUTEX_INITIALIZER;

static void module_free(Kernel *k)
{
    dlclose(k->so);
    free(k);
}

static void ctx_release(void *ctx)
{
    pool_stop();
    pthread_mutex_lock(&mod_mu);
    for (Kernel **p = &modules; *p;) {
        Kernel *k = *p;
        if (k->ctx == ctx) *p = k->next, module_free(k);
        else p = &k->next;
    }
    pthread_mutex_unlock(&mod_mu);
    pthread_mutex_lock(&mem_mu);
    for (int i = 0; i < n_allocs;) {
        if (allocs[i].ctx == ctx) {
            allocated -= (allocs[i].bytes + 255) & ~(size_t)255;
            munmap(allocs[i].map, allocs[i].span);
            allocs[i] = allocs[--n_allocs];
        } else i++;
    }
    pthread_mutex_unlock(&mem_mu);
}

/* A format-2 image's object (CUDAEMU_IMAGE_MAGIC2, after the magic: size, newline, bytes) written to
 * a private temporary file, opened, and unlinked at once: the mapping outlives the name, and nothing
 * is left behind. NULL with the error set. */
static void *dlopen_embedded(const char *p, char *what, size_t n)
{
    char *end;
    unsigned long long bytes = strtoull(p, &end, 10);
    if (end == p || *end != '\n' || bytes == 0 || bytes > CUDAEMU_IMAGE_MAX_BYTES) {
        snprintf(what, n, "an embedded kernel object");
        int shown = (int)strcspn(p, "\n");
        fail_with(CU_INVALID_IMAGE, "an emulator image of format 2 without a valid size line (\"%.*s\")",
                  shown < 20 ? shown : 20, p);
        return NULL;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(what, n, "%s/moeppc-cudaemu-kernel-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    int fd = mkstemp(what);
    if (fd < 0) {
        fail_with(CU_INVALID_IMAGE, "cannot create a temporary file for an embedded kernel object (%s): %s", what,
                  strerror(errno));
        return NULL;
    }
    const char *at = end + 1;
    size_t left = (size_t)bytes;
    while (left > 0) {
        ssize_t w = write(fd, at, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        at += w, left -= (size_t)w;
    }
    int err = errno;
    close(fd);
    void *so = left == 0 ? dlopen(what, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (left) fail_with(CU_INVALID_IMAGE, "cannot write the embedded kernel object to %s: %s", what, strerror(err));
    else if (!so) fail_with(CU_INVALID_IMAGE, "an embedded kernel object: %s", dlerror());
    unlink(what);
    snprintf(what, n, "an embedded kernel object (%llu bytes)", bytes);
    return so;
}

EXPORT CUresult cuModuleLoadData(void **mod, const void *image)
{
    size_t m = strlen(CUDAEMU_IMAGE_MAGIC);
    bool embedded = strncmp(image, CUDAEMU_IMAGE_MAGIC2, m) == 0;
    if (!embedded && strncmp(image, CUDAEMU_IMAGE_MAGIC, m) != 0)
        return fail_with(CU_INVALID_IMAGE, "the image is not an emulator kernel (a cubin or PTX for a GPU?): the "
                         "emulator runs kernels compiled for arch emu");
    char tmp_path[4200];
    const char *path = embedded ? tmp_path : (const char *)image + m;
    void *so = embedded ? dlopen_embedded((const char *)image + m, tmp_path, sizeof tmp_path)
                        : dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!so) return embedded ? CU_INVALID_IMAGE : fail_with(CU_INVALID_IMAGE, "%s", dlerror());
    int (*bind)(const CudaEmuApi *) = (int (*)(const CudaEmuApi *))dlsym(so, "moeppc_emu_bind");
    int (*arg_sizes)(unsigned *, int) = (int (*)(unsigned *, int))dlsym(so, "moeppc_emu_arg_sizes");
    const char *name = dlsym(so, "moeppc_emu_name");
    Kernel *k = calloc(1, sizeof *k);
    if (!k || !bind || !arg_sizes || !name || !(k->call = (void (*)(void **))dlsym(so, "moeppc_emu_call")) ||
        bind(&api) != CUDAEMU_ABI) {
        free(k);
        dlclose(so);
        return fail_with(CU_INVALID_IMAGE, "%s: not a kernel object of this emulator (ABI %d)", path, CUDAEMU_ABI);
    }
    k->so = so;
    k->ctx = current_ctx();
    k->n_args = arg_sizes(k->sizes, 64);
    snprintf(k->name, sizeof k->name, "%s", name);
    if (k->n_args > 64) {
        dlclose(so), free(k);
        return fail_with(CU_INVALID_IMAGE, "kernel %s has more than 64 parameters", name);
    }
    pthread_mutex_lock(&mod_mu);
    k->next = modules, modules = k;
    pthread_mutex_unlock(&mod_mu);
    *mod = k;
    return CU_OK;
}
EXPORT CUresult cuModuleUnload(void *mod)
{
    pthread_mutex_lock(&mod_mu);
    for (Kernel **p = &modules; *p; p = &(*p)->next)
        if (*p == mod) {
            *p = ((Kernel *)mod)->next;
            pthread_mutex_unlock(&mod_mu);
            module_free(mod);
            return CU_OK;
        }
    pthread_mutex_unlock(&mod_mu);
    return fail_with(CU_INVALID_HANDLE, "cuModuleUnload of a module not loaded");
}
EXPORT CUresult cuModuleGetFunction(void **fn, void *mod, const char *name)
{
    Kernel *k = mod;
    if (strcmp(k->name, name) != 0) return fail_with(CU_NOT_FOUND, "the module has kernel %s, not %s", k->name, name);
    *fn = k;
    return CU_OK;
}
static CUresult launch_kernel(void *fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                              unsigned smem, void *stream, void **params, void **extra, bool pdl)
{
    const Kernel *k = fn;
    if (!k || !params || extra) return fail_with(CU_INVALID_VALUE, "cuLaunchKernel: no kernel or no parameters");
    if (!gx || !gy || !gz || !bx || !by || !bz || (unsigned long long)bx * by * bz > MAX_THREADS)
        return fail_with(CU_INVALID_VALUE, "kernel %s: launch of grid (%u,%u,%u) and block (%u,%u,%u)", k->name, gx, gy,
                         gz, bx, by, bz);
    unsigned max = k->max_dyn ? k->max_dyn : DYN_SMEM_DEFAULT;
    if (smem > max)
        return fail_with(CU_INVALID_VALUE, "kernel %s: launch with %u bytes of dynamic shared memory, above its %u (more "
                         "than 48 KB needs cuFuncSetAttribute(CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) first)",
                         k->name, smem, max);
    return enqueue(stream, (Node){.kind = N_LAUNCH, .k = k, .grid = {gx, gy, gz}, .block = {bx, by, bz}, .smem = smem,
                                  .pdl = pdl, .args = params});
}

EXPORT CUresult cuLaunchKernel(void *fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                               unsigned smem, void *stream, void **params, void **extra)
{
    return launch_kernel(fn, gx, gy, gz, bx, by, bz, smem, stream, params, extra, false);
}

/* cuda.h's CUlaunchConfig and CUlaunchAttribute (64-byte value union after an 8-byte id). */
typedef struct EmuLaunchAttr { int id; char pad[4]; union { char bytes[64]; long long align; int i; } value; } EmuLaunchAttr;
typedef struct EmuLaunchConfig {
    unsigned gx, gy, gz, bx, by, bz, smem;
    void *stream;
    EmuLaunchAttr *attrs;
    unsigned n_attrs;
} EmuLaunchConfig;
#define LAUNCH_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION 6

/* Of the launch attributes, programmatic dependent launch (what moeppc asks for). */
EXPORT CUresult cuLaunchKernelEx(const EmuLaunchConfig *c, void *fn, void **params, void **extra)
{
    if (!c || (c->n_attrs && !c->attrs)) return fail_with(CU_INVALID_VALUE, "cuLaunchKernelEx: no launch configuration");
    bool pdl = false;
    for (unsigned i = 0; i < c->n_attrs; i++) {
        if (c->attrs[i].id != LAUNCH_ATTR_PROGRAMMATIC_STREAM_SERIALIZATION)
            return fail_with(CU_NOT_SUPPORTED, "cuLaunchKernelEx: launch attribute %d is not emulated", c->attrs[i].id);
        pdl = c->attrs[i].value.i != 0;
    }
    return launch_kernel(fn, c->gx, c->gy, c->gz, c->bx, c->by, c->bz, c->smem, c->stream, params, extra, pdl);
}

/* A tiled tensor map for the emulator's cp.async.bulk.tensor (what moeppc's kernels use: rank 2,
 * element strides 1, no interleave, no swizzle or 128 bytes; the driver's requirements checked). */
EXPORT CUresult cuTensorMapEncodeTiled(void *map, int dtype, unsigned rank, void *addr, const uint64_t *dims,
                                       const uint64_t *strides, const unsigned *box, const unsigned *estr,
                                       int interleave, int swizzle, int l2, int oob)
{
    static const unsigned sizes[] = {1, 2, 4, 4, 8, 8, 2, 4, 8, 2};
    (void)l2;
    if (!map || (uintptr_t)map % 64) return fail_with(CU_INVALID_VALUE, "cuTensorMapEncodeTiled: the map is not 64-byte aligned");
    if (rank != 2 || interleave != 0 || oob != 0 || dtype < 0 || dtype > 9 || (swizzle != 0 && swizzle != 3))
        return fail_with(CU_NOT_SUPPORTED, "cuTensorMapEncodeTiled: emulated are rank 2, no interleave, no OOB NaN fill, "
                         "swizzle none or 128 bytes, data types 0-9 (rank %u, interleave %d, swizzle %d, type %d)",
                         rank, interleave, swizzle, dtype);
    unsigned es = sizes[dtype];
    if (!addr || (uintptr_t)addr % 16 || !dims[0] || !dims[1] || strides[0] % 16 || strides[0] < dims[0] * es ||
        !box[0] || !box[1] || box[0] > 256 || box[1] > 256 || box[0] * es % 16 || estr[0] != 1 || estr[1] != 1 ||
        (swizzle == 3 && box[0] * es > 128))
        return fail_with(CU_INVALID_VALUE, "cuTensorMapEncodeTiled: a tensor or box the driver refuses (address 16-byte "
                         "aligned, stride a multiple of 16, box rows of 16-byte multiples up to 256, swizzled up to 128 bytes)");
    CudaEmuTensorMap t = {CUDAEMU_TMAP_MAGIC, es, (unsigned)swizzle, rank, {box[0], box[1]}, (unsigned long long)(uintptr_t)addr,
                          {dims[0], dims[1]}, strides[0]};
    memset(map, 0, 128);
    memcpy(map, &t, sizeof t);
    return CU_OK;
}

/* Of the function attributes, the one moeppc sets: the dynamic shared memory a launch may use. */
EXPORT CUresult cuFuncSetAttribute(void *fn, int attr, int value)
{
    Kernel *k = fn;
    if (!k) return fail_with(CU_INVALID_HANDLE, "cuFuncSetAttribute without a function");
    if (attr != FUNC_ATTR_MAX_DYNAMIC_SHARED)
        return fail_with(CU_NOT_SUPPORTED, "cuFuncSetAttribute: attribute %d is not emulated", attr);
    if (value < 0 || value > DYN_SMEM_MAX)
        return fail_with(CU_INVALID_VALUE, "kernel %s: %d bytes of dynamic shared memory, above the %d of an sm_90 block",
                         k->name, value, DYN_SMEM_MAX);
    k->max_dyn = (unsigned)value;
    return CU_OK;
}
