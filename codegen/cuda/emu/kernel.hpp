// kernel.hpp — the CUDA C++ that moeppc's kernels use, for the CPU: included before a generated kernel
// when it is compiled for the CUDA emulator (arch "emu", emu_compile.c). Each CUDA thread is a fiber
// of the emulator (cudaemu.c); __shared__ variables are per block (blocks of one OS thread run one at
// a time); warp intrinsics and mma.sync are warp collectives with the PTX ISA's fragment layouts.
// The PTX-only helpers of the generated prelude (cuda_src.c: f16_f32, pack_bf16, pack_f16, mma_*)
// are defined here instead. Mirrors cudaemu_abi.h.
//
// It includes no header of the C or C++ library beyond <stddef.h> and <stdint.h>: C++'s <math.h> brings
// <cmath>'s templates, whose precompiled form (15 MB) took 0.06 s of every kernel's compile to load
// (0.2 s a kernel). What the kernels call of the library is declared here, as NVRTC declares it: the
// float functions, the double ones, and the double names' float overloads (a float argument stays
// float, as in CUDA C++).
#include <stddef.h>
#include <stdint.h>
extern "C" {
#define CUDAEMU_MATH(n) float n##f(float) noexcept; double n(double) noexcept;
CUDAEMU_MATH(exp) CUDAEMU_MATH(exp2) CUDAEMU_MATH(log) CUDAEMU_MATH(log2) CUDAEMU_MATH(sqrt) CUDAEMU_MATH(fabs)
CUDAEMU_MATH(tanh) CUDAEMU_MATH(sin) CUDAEMU_MATH(cos) CUDAEMU_MATH(erf) CUDAEMU_MATH(floor) CUDAEMU_MATH(ceil)
CUDAEMU_MATH(round) CUDAEMU_MATH(trunc) CUDAEMU_MATH(rint) CUDAEMU_MATH(nearbyint)
#undef CUDAEMU_MATH
#define CUDAEMU_MATH2(n) float n##f(float, float) noexcept; double n(double, double) noexcept;
CUDAEMU_MATH2(fmax) CUDAEMU_MATH2(fmin) CUDAEMU_MATH2(pow)
#undef CUDAEMU_MATH2
float fmaf(float, float, float) noexcept;
double fma(double, double, double) noexcept;
int snprintf(char *, size_t, const char *, ...) noexcept;
void *memcpy(void *, const void *, size_t) noexcept;
void *memmove(void *, const void *, size_t) noexcept;
void *memset(void *, int, size_t) noexcept;
}
#define CUDAEMU_MATH(n) static inline float n(float x) { return n##f(x); }
CUDAEMU_MATH(exp) CUDAEMU_MATH(exp2) CUDAEMU_MATH(log) CUDAEMU_MATH(log2) CUDAEMU_MATH(sqrt) CUDAEMU_MATH(fabs)
CUDAEMU_MATH(tanh) CUDAEMU_MATH(sin) CUDAEMU_MATH(cos) CUDAEMU_MATH(erf) CUDAEMU_MATH(floor) CUDAEMU_MATH(ceil)
CUDAEMU_MATH(round) CUDAEMU_MATH(trunc) CUDAEMU_MATH(rint) CUDAEMU_MATH(nearbyint)
#undef CUDAEMU_MATH
#define CUDAEMU_MATH2(n) static inline float n(float x, float y) { return n##f(x, y); }
CUDAEMU_MATH2(fmax) CUDAEMU_MATH2(fmin) CUDAEMU_MATH2(pow)
#undef CUDAEMU_MATH2
static inline float fma(float x, float y, float z) { return fmaf(x, y, z); }
#define INFINITY (__builtin_inff())
#define NAN (__builtin_nanf(""))
// std::remove_cv and std::index_sequence_for, for the entry points at the end
template <typename T> struct cudaemu_unqual { typedef T type; };
template <typename T> struct cudaemu_unqual<const T> { typedef T type; };
template <typename T> struct cudaemu_unqual<volatile T> { typedef T type; };
template <typename T> struct cudaemu_unqual<const volatile T> { typedef T type; };
template <size_t... I> struct cudaemu_seq {};
template <size_t N, size_t... I> struct cudaemu_make_seq : cudaemu_make_seq<N - 1, N - 1, I...> {};
template <size_t... I> struct cudaemu_make_seq<0, I...> { typedef cudaemu_seq<I...> type; };

#define MOEPPC_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
// 64-byte aligned: GCC 12's vectorizer stores 16 bytes at a time with aligned moves (vmovdqa) into a
// thread_local array it takes to be so aligned, which the TLS segment does not make it (the per-query
// attention's accumulators of 4 heads, sacc[g][w][4 lane + i], faulted at offset 0x34)
#define __shared__ static thread_local __attribute__((aligned(64)))
#define __constant__ static
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict
#define __grid_constant__

#define CUDAEMU_ABI 7
#define CUDAEMU_SLOT 128
#define CUDAEMU_SCRATCH 2048
struct CudaEmuDim3 { unsigned x, y, z; };
struct CudaEmuThread { CudaEmuDim3 tid, bid, bdim, gdim; unsigned lane, warp; };
struct CudaEmuApi {
    int abi;
    const CudaEmuThread *(*self)(void);
    void (*syncthreads)(void);
    void *(*exchange)(const void *mine, unsigned size, int *first);
    void (*fail)(const char *what);
    void (*cp_async)(void *dst, const void *src, unsigned bytes, unsigned src_bytes);
    void (*cp_commit)(void);
    void (*cp_wait)(int pending);
    void *(*dyn_smem)(void);
    void (*grid_dep_wait)(void);
    void (*mbar_init)(unsigned bar, unsigned count);
    void (*mbar_expect_tx)(unsigned bar, unsigned bytes);
    void (*mbar_wait)(unsigned bar, unsigned parity);
    void (*tma_load_2d)(void *dst, const void *map, int c0, int c1, unsigned bar);
    void (*fence_proxy_async)(void);
    unsigned (*proxy_writer)(unsigned offset);
    void (*mbar_arrive)(unsigned bar);
};
static const CudaEmuApi *cudaemu;

#define threadIdx (cudaemu->self()->tid)
#define blockIdx (cudaemu->self()->bid)
#define blockDim (cudaemu->self()->bdim)
#define gridDim (cudaemu->self()->gdim)
#define warpSize 32

struct __attribute__((aligned(16))) float4 { float x, y, z, w; };
struct __attribute__((aligned(8))) float2 { float x, y; };
struct __attribute__((aligned(16))) uint4 { unsigned x, y, z, w; };
struct __attribute__((aligned(8))) uint2 { unsigned x, y; };
struct __attribute__((aligned(16))) int4 { int x, y, z, w; };
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
static inline float2 make_float2(float a, float b) { return float2{a, b}; }
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
static inline uint2 make_uint2(unsigned a, unsigned b) { return uint2{a, b}; }
static inline int4 make_int4(int a, int b, int c, int d) { return int4{a, b, c, d}; }

template <typename To, typename From> static inline To cudaemu_bits(From f)
{
    static_assert(sizeof(To) == sizeof(From), "bit cast of unequal sizes");
    To t;
    memcpy(&t, &f, sizeof t);
    return t;
}
static inline float __int_as_float(int i) { return cudaemu_bits<float>(i); }
static inline float __uint_as_float(unsigned i) { return cudaemu_bits<float>(i); }
static inline int __float_as_int(float f) { return cudaemu_bits<int>(f); }
static inline unsigned __float_as_uint(float f) { return cudaemu_bits<unsigned>(f); }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __fdividef(float a, float b) { return a / b; }
template <typename T> static inline T __ldg(const T *p) { return *p; }
// ld.global.cg: past L1, so another block's writes after its fence are seen (a load the emulator
// makes atomic: blocks may run on several OS threads)
template <typename T> static inline T __ldcg(const T *p)
{
    T r;
    __atomic_load(p, &r, __ATOMIC_RELAXED);
    return r;
}

// ---- synchronisation and warp collectives ---------------------------------------------------------
static inline void __syncthreads() { cudaemu->syncthreads(); }
static inline unsigned cudaemu_lane() { return cudaemu->self()->lane; }
static inline void cudaemu_full_mask(unsigned mask)
{
    if (mask != 0xffffffffu) cudaemu->fail("a warp collective with a partial mask (the emulator needs 0xffffffff)");
}
static inline void __syncwarp(unsigned mask = 0xffffffffu)
{
    cudaemu_full_mask(mask);
    cudaemu->exchange(nullptr, 0, nullptr);
}
template <typename T> static inline T cudaemu_lane_value(const void *all, unsigned lane)
{
    T v;
    memcpy(&v, (const char *)all + (size_t)lane * CUDAEMU_SLOT, sizeof v);
    return v;
}
template <typename T> static inline T cudaemu_shfl(unsigned mask, T v, unsigned src)
{
    static_assert(sizeof(T) <= CUDAEMU_SLOT, "shuffle of a type larger than a slot");
    cudaemu_full_mask(mask);
    const void *all = cudaemu->exchange(&v, sizeof v, nullptr);
    return cudaemu_lane_value<T>(all, src & 31u);
}
// width: lanes form segments of `width`; a source outside the caller's segment gives its own value.
template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int o, int width = 32)
{
    unsigned l = cudaemu_lane(), s = l ^ (unsigned)o;
    if ((s & ~(unsigned)(width - 1)) != (l & ~(unsigned)(width - 1))) s = l;
    return cudaemu_shfl(mask, v, s);
}
template <typename T> static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32)
{
    unsigned l = cudaemu_lane();
    return cudaemu_shfl(mask, v, (l & ~(unsigned)(width - 1)) + ((unsigned)src & (unsigned)(width - 1)));
}
template <typename T> static inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32)
{
    unsigned l = cudaemu_lane(), seg = l & ~(unsigned)(width - 1);
    return cudaemu_shfl(mask, v, l + d < seg + (unsigned)width ? l + d : l);
}
template <typename T> static inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32)
{
    unsigned l = cudaemu_lane(), seg = l & ~(unsigned)(width - 1);
    return cudaemu_shfl(mask, v, l >= seg + d ? l - d : l);
}
static inline unsigned __ballot_sync(unsigned mask, int pred)
{
    cudaemu_full_mask(mask);
    int p = pred != 0;
    const void *all = cudaemu->exchange(&p, sizeof p, nullptr);
    unsigned r = 0;
    for (unsigned l = 0; l < 32; l++) r |= (unsigned)cudaemu_lane_value<int>(all, l) << l;
    return r;
}
static inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
static inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == 0xffffffffu; }
template <typename T> static inline unsigned __match_any_sync(unsigned mask, T v)
{
    cudaemu_full_mask(mask);
    const void *all = cudaemu->exchange(&v, sizeof v, nullptr);
    unsigned r = 0;
    for (unsigned l = 0; l < 32; l++) r |= (unsigned)(cudaemu_lane_value<T>(all, l) == v) << l;
    return r;
}

// ---- atomics (blocks may run on several OS threads) -------------------------------------------------
static inline float atomicAdd(float *p, float v)
{
    unsigned old = __atomic_load_n((unsigned *)p, __ATOMIC_RELAXED), nw;
    do nw = __float_as_uint(__uint_as_float(old) + v);
    while (!__atomic_compare_exchange_n((unsigned *)p, &old, nw, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
    return __uint_as_float(old);
}
template <typename T> static inline T atomicAdd(T *p, T v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
template <typename T> static inline T atomicSub(T *p, T v) { return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
template <typename T> static inline T atomicExch(T *p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
template <typename T> static inline T atomicCAS(T *p, T cmp, T v)
{
    __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return cmp;
}
template <typename T> static inline T atomicMax(T *p, T v)
{
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}
template <typename T> static inline T atomicMin(T *p, T v)
{
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old > v && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
    return old;
}
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
static inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- the prelude's PTX helpers ------------------------------------------------------------------------
typedef unsigned short u16;
typedef unsigned int u32;
// cvt.f32.f16 (exact)
static inline float f16_f32(u16 h)
{
    u32 s = (u32)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) return cudaemu_bits<float>(s | cudaemu_bits<u32>((float)m * 5.9604644775390625e-8f));
    if (e == 31) return cudaemu_bits<float>(s | 0x7f800000u | (m << 13));
    return cudaemu_bits<float>(s | ((e + 112u) << 23) | (m << 13));
}
// cvt.rn.f16.f32: round to nearest even, overflow to infinity, NaN to the canonical NaN
static inline u16 cudaemu_f16(float f)
{
    u32 x = cudaemu_bits<u32>(f), s = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (u16)0x7fffu;
    if (a >= 0x477ff000u) return (u16)(s | 0x7c00u); // >= 65520 and infinity
    if (a < 0x38800000u) return (u16)(s | (u32)nearbyintf(fabsf(f) * 16777216.0f)); // subnormal or zero
    u32 h = ((a >> 23) - 112u) << 10 | ((a & 0x7fffffu) >> 13), rem = a & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++;
    return (u16)(s | h);
}
// cvt.rn.bf16.f32
static inline u16 cudaemu_bf16(float f)
{
    u32 x = cudaemu_bits<u32>(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)0x7fffu;
    return (u16)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
static inline u32 pack_bf16(float lo, float hi) { return (u32)cudaemu_bf16(lo) | (u32)cudaemu_bf16(hi) << 16; }
static inline u32 pack_f16(float lo, float hi) { return (u32)cudaemu_f16(lo) | (u32)cudaemu_f16(hi) << 16; }

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: D = A B + C, C and D in c (in place). Lane l,
// group g = l / 4, t = l % 4: a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..], a[2] = A[g][2t+8..],
// a[3] = A[g+8][2t+8..]; b[0] = B[2t..2t+1][g], b[1] = B[2t+8..][g]; c[0..1] = D[g][2t..2t+1],
// c[2..3] = D[g+8][2t..]; the lower k (and column) in the low half of each register.
// The first lane back from the collective computes the warp's whole D into the shared scratch bytes.
struct CudaEmuMma { u32 a[4], b[2]; float c[4]; };
static inline float cudaemu_half_of(u32 r, unsigned k, bool bf) { u16 h = (u16)(r >> (16 * (k & 1))); return bf ? cudaemu_bits<float>((u32)h << 16) : f16_f32(h); }
static inline void cudaemu_mma16816(float *c, const u32 *a, const u32 *b, bool bf)
{
    CudaEmuMma mine;
    memcpy(mine.a, a, sizeof mine.a);
    memcpy(mine.b, b, sizeof mine.b);
    memcpy(mine.c, c, sizeof mine.c);
    int first = 0;
    char *all = (char *)cudaemu->exchange(&mine, sizeof mine, &first);
    float *d = (float *)(all + 32 * CUDAEMU_SLOT); // D[16][8]
    if (first) {
        float A[16][16], B[16][8];
        for (unsigned l = 0; l < 32; l++) {
            const CudaEmuMma *m = (const CudaEmuMma *)(all + l * CUDAEMU_SLOT);
            unsigned g = l >> 2, t = l & 3;
            for (unsigned j = 0; j < 2; j++) {
                unsigned k = 2 * t + j;
                A[g][k] = cudaemu_half_of(m->a[0], k, bf), A[g + 8][k] = cudaemu_half_of(m->a[1], k, bf);
                A[g][k + 8] = cudaemu_half_of(m->a[2], k, bf), A[g + 8][k + 8] = cudaemu_half_of(m->a[3], k, bf);
                B[k][g] = cudaemu_half_of(m->b[0], k, bf), B[k + 8][g] = cudaemu_half_of(m->b[1], k, bf);
                d[g * 8 + k] = m->c[j], d[(g + 8) * 8 + k] = m->c[2 + j];
            }
        }
        for (unsigned r = 0; r < 16; r++)
            for (unsigned n = 0; n < 8; n++) {
                float acc = d[r * 8 + n];
                for (unsigned k = 0; k < 16; k++) acc = fmaf(A[r][k], B[k][n], acc);
                d[r * 8 + n] = acc;
            }
    }
    unsigned l = cudaemu_lane(), g = l >> 2, t = l & 3;
    c[0] = d[g * 8 + 2 * t], c[1] = d[g * 8 + 2 * t + 1], c[2] = d[(g + 8) * 8 + 2 * t], c[3] = d[(g + 8) * 8 + 2 * t + 1];
}
static inline void mma_16816_bf16(float *c, const u32 *a, const u32 *b) { cudaemu_mma16816(c, a, b, true); }
static inline void mma_16816_f16(float *c, const u32 *a, const u32 *b) { cudaemu_mma16816(c, a, b, false); }

// ldmatrix.sync.aligned.m8n8.x{1,2,4}.shared.b16 [.trans]: lanes 8i..8i+7 give the row addresses of
// matrix i; lane l receives of matrix i the pair at row l / 4, columns 2 (l % 4) .. +1 (.trans: the
// transposed matrix's).
template <int NM, bool TRANS> static inline void cudaemu_ldmatrix(u32 *r, const void *row)
{
    const char *all = (const char *)cudaemu->exchange(&row, sizeof row, nullptr);
    unsigned l = cudaemu_lane();
    for (int i = 0; i < NM; i++) {
        u16 h[2];
        for (int j = 0; j < 2; j++) {
            unsigned rr = TRANS ? 2 * (l & 3) + j : l >> 2, cc = TRANS ? l >> 2 : 2 * (l & 3) + j;
            const u16 *p = cudaemu_lane_value<const u16 *>(all, 8 * i + rr);
            h[j] = p[cc];
        }
        r[i] = (u32)h[0] | (u32)h[1] << 16;
    }
}
static inline void ldmatrix_x4(u32 *r, const void *row) { cudaemu_ldmatrix<4, false>(r, row); }
static inline void ldmatrix_x2(u32 *r, const void *row) { cudaemu_ldmatrix<2, false>(r, row); }
static inline void ldmatrix_x4_trans(u32 *r, const void *row) { cudaemu_ldmatrix<4, true>(r, row); }
static inline void ldmatrix_x2_trans(u32 *r, const void *row) { cudaemu_ldmatrix<2, true>(r, row); }
// cp.async.cg.shared.global [dst], [src], 16, src_bytes; commit_group; wait_group N
static inline void cp_async16(void *dst, const void *src, unsigned src_bytes) { cudaemu->cp_async(dst, src, 16, src_bytes); }
static inline void cp_async_commit() { cudaemu->cp_commit(); }
template <int N> static inline void cp_async_wait() { cudaemu->cp_wait(N); }
// extern __shared__ T name[]: the launch's dynamic shared memory
#define DYN_SHARED(T, name) T *name = (T *)cudaemu->dyn_smem()
// y[0] += a and, when both, y[1] += b (sm_90's red.global.add.v2.f32 on a GPU): two atomics here
static inline void atomic_add_pair(float *y, float a, float b, bool both)
{
    atomicAdd(y, a);
    if (both) atomicAdd(y + 1, b);
}
// prefetch.global.L2: no cache to warm here
static inline void prefetch_l2(const void *p) { (void)p; }
// y[0..3] += a, b, c, d (sm_90's red.global.add.v4.f32 on a GPU): four atomics here
static inline void atomic_add_quad(float *y, float a, float b, float c, float d)
{
    atomicAdd(y, a), atomicAdd(y + 1, b), atomicAdd(y + 2, c), atomicAdd(y + 3, d);
}
// griddepcontrol.wait / .launch_dependents (programmatic dependent launch): launches run one after
// another here, so the wait has nothing to wait for; the emulator checks that every thread of a
// launch made with the attribute called it
static inline void grid_dep_wait() { cudaemu->grid_dep_wait(); }
static inline void grid_dep_launch() {}
// sm_90's tensor memory accelerator and mbarriers (addresses: offsets into dynamic shared memory)
struct alignas(64) CUtensorMap { unsigned long long opaque[16]; };
static inline void mbar_init(u32 bar, u32 count) { cudaemu->mbar_init(bar, count); }
static inline void fence_mbarrier_init() {}
static inline void mbar_expect_tx(u32 bar, u32 bytes) { cudaemu->mbar_expect_tx(bar, bytes); }
static inline bool mbar_try_wait(u32 bar, u32 parity) { cudaemu->mbar_wait(bar, parity); return true; }
static inline void mbar_arrive(u32 bar) { cudaemu->mbar_arrive(bar); }
// setmaxnreg (a warpgroup's register budget): nothing to do on a CPU
template <int R> static inline void regs_dec() {}
template <int R> static inline void regs_inc() {}
static inline void tma_load_2d(void *dst, const CUtensorMap *map, int c0, int c1, u32 bar)
{
    cudaemu->tma_load_2d(dst, map, c0, c1, bar);
}

// ---- sm_90a: the warpgroup MMA (wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}) -------------
// Shared-memory addresses are offsets into the launch's dynamic shared memory (the only kind the
// descriptors of moeppc's kernels point into). A descriptor: start >> 4 (bits 0-13), leading byte
// offset >> 4 (16-29), stride byte offset >> 4 (32-45), swizzle (62-63; none and 128 bytes).
// K-major without swizzle, element (r, k) of a 64 x 16 (A) or N x 16 (B) tile is at start +
// (r / 8) SBO + (k / 8) LBO + (r % 8) 16 + (k % 8) 2 (8 x 16-byte core matrices). D: warp w of the
// warpgroup holds rows 16w..16w+15 as the m16n8 C fragment repeated along n (d[4j..4j+3]: columns
// 8j + 2 (l % 4) + {0, 1} of rows l / 4 and l / 4 + 8). The warp's first lane back computes its D
// into every lane's registers (each deposits where they are), at issue. On a GPU the tensor cores
// may read the tiles any time until the wait_group that retires the MMA, so the warp keeps each
// pending MMA's tiles' hash: commit closes a group, wait_group N retires the oldest groups down to N
// and fails the launch if a retired MMA's tiles have changed since its issue (a ring slot refilled
// too early, which computing at issue would hide). At issue, no 16-byte chunk of the tiles may hold
// a cp.async copy its thread has not followed with fence.proxy.async (generic-proxy writes are not
// ordered before the async proxy's reads without it; the TMA's writes are the async proxy's).
static inline u32 smem_u32(const void *p) { return (u32)((const char *)p - (const char *)cudaemu->dyn_smem()); }
static inline size_t cudaemu_wg_at(unsigned long long desc, unsigned r, unsigned k)
{
    size_t start = (size_t)(desc & 0x3fffu) << 4, lbo = (size_t)((desc >> 16) & 0x3fffu) << 4;
    size_t sbo = (size_t)((desc >> 32) & 0x3fffu) << 4, at;
    if (desc >> 62 == 1) { /* 128-byte swizzle: rows of 128 bytes, SBO per 8 rows, 16-byte chunks XOR row % 8 */
        at = start + (r / 8) * sbo + (r % 8) * 128 + k * 2;
        at ^= ((at >> 7) & 7) << 4;
    } else {
        at = start + (r / 8) * sbo + (k / 8) * lbo + (r % 8) * 16 + (k % 8) * 2;
    }
    return at;
}
static inline float cudaemu_wg_elem(unsigned long long desc, unsigned r, unsigned k, bool bf)
{
    u16 h;
    memcpy(&h, (const char *)cudaemu->dyn_smem() + cudaemu_wg_at(desc, r, k), 2);
    return bf ? cudaemu_bits<float>((u32)h << 16) : f16_f32(h);
}
static inline unsigned long long cudaemu_wg_hash(unsigned long long desc, unsigned rows, unsigned long long h)
{
    for (unsigned r = 0; r < rows; r++)
        for (unsigned k = 0; k < 16; k++) {
            float v = cudaemu_wg_elem(desc, r, k, true); // (the element's 16 bits, widened exactly)
            h = (h ^ cudaemu_bits<u32>(v)) * 0x100000001b3ull;
        }
    return h;
}
// A warp's MMAs in flight: ops[0 .. n) in issue order, those before group_end[n_groups - 1] in
// committed groups; the block they belong to (the state is the OS thread's, like __shared__, and
// the kernel object's: a block that retires all it issued, as every kernel must, leaves it empty).
enum { CUDAEMU_WG_MAX = 64 };
struct CudaEmuWgPending {
    CudaEmuDim3 bid;
    int n, n_groups;
    struct { unsigned long long a, b, hash; unsigned rows_b; } ops[CUDAEMU_WG_MAX];
    int group_end[CUDAEMU_WG_MAX];
};
static thread_local CudaEmuWgPending cudaemu_wg_pending[32];
static inline CudaEmuWgPending *cudaemu_wg_state()
{
    const CudaEmuThread *t = cudaemu->self();
    CudaEmuWgPending *p = &cudaemu_wg_pending[t->warp & 31];
    if (p->bid.x != t->bid.x || p->bid.y != t->bid.y || p->bid.z != t->bid.z) /* another block's */
        *p = CudaEmuWgPending{}, p->bid = t->bid;
    return p;
}
struct CudaEmuWgmma { float *d; unsigned long long a, b; };
template <int N, bool BF> static inline void cudaemu_wgmma(float *d, unsigned long long a, unsigned long long b)
{
    CudaEmuWgmma mine = {d, a, b};
    int first = 0;
    char *all = (char *)cudaemu->exchange(&mine, sizeof mine, &first);
    if (!first) return;
    for (unsigned l = 0; l < 32; l++) {
        const CudaEmuWgmma *m = (const CudaEmuWgmma *)(all + l * CUDAEMU_SLOT);
        if (m->a != a || m->b != b) cudaemu->fail("wgmma: the lanes of a warp give different descriptors");
        if (a >> 62 > 1 || b >> 62 > 1) cudaemu->fail("wgmma: only the 128-byte swizzle is emulated (not 64 or 32)");
        if (((a | b) >> 49) & 7) cudaemu->fail("wgmma: a descriptor's base offset (bits 49-51) is not emulated");
    }
    for (int m = 0; m < 2; m++) // (8 elements of k share a 16-byte chunk in both layouts)
        for (unsigned r = 0; r < (m ? (unsigned)N : 64u); r++)
            for (unsigned k = 0; k < 16; k += 8)
                if (unsigned wr = cudaemu->proxy_writer((unsigned)cudaemu_wg_at(m ? b : a, r, k))) {
                    static thread_local char msg[200];
                    snprintf(msg, sizeof msg, "wgmma: reads shared memory that thread %u's cp.async wrote with no "
                             "fence.proxy.async after it (the tensor cores, in the async proxy, may not see it)", wr - 1);
                    cudaemu->fail(msg);
                }
    CudaEmuWgPending *p = cudaemu_wg_state();
    if (p->n == CUDAEMU_WG_MAX) cudaemu->fail("wgmma: more MMAs in flight than the emulator tracks (a missing wait_group?)");
    p->ops[p->n].a = a, p->ops[p->n].b = b, p->ops[p->n].rows_b = N;
    p->ops[p->n++].hash = cudaemu_wg_hash(b, N, cudaemu_wg_hash(a, 64, 0xcbf29ce484222325ull));
    unsigned w = cudaemu->self()->warp & 3;
    for (unsigned l = 0; l < 32; l++) {
        float *dl = ((const CudaEmuWgmma *)(all + l * CUDAEMU_SLOT))->d;
        for (unsigned j = 0; j < N / 8; j++)
            for (unsigned v = 0; v < 4; v++) {
                unsigned r = 16 * w + l / 4 + 8 * (v / 2), n = 8 * j + 2 * (l % 4) + v % 2;
                float acc = dl[4 * j + v];
                for (unsigned k = 0; k < 16; k++) acc = fmaf(cudaemu_wg_elem(a, r, k, BF), cudaemu_wg_elem(b, n, k, BF), acc);
                dl[4 * j + v] = acc;
            }
    }
}
static inline void wgmma_fence() {}
static inline void wgmma_commit() // wgmma.commit_group.sync.aligned: the warp's uncommitted MMAs, one group
{
    int first = 0;
    char none = 0;
    cudaemu->exchange(&none, 1, &first);
    if (!first) return;
    CudaEmuWgPending *p = cudaemu_wg_state();
    if (p->n_groups == CUDAEMU_WG_MAX) cudaemu->fail("wgmma: more groups in flight than the emulator tracks (a missing wait_group?)");
    p->group_end[p->n_groups++] = p->n; // (an empty group is a group too)
}
template <int N> static inline void wgmma_wait() // wgmma.wait_group.sync.aligned N
{
    int first = 0;
    char none = 0;
    cudaemu->exchange(&none, 1, &first);
    if (!first) return;
    CudaEmuWgPending *p = cudaemu_wg_state();
    if (p->n_groups <= N) return;
    int retire = p->n_groups - N, upto = p->group_end[retire - 1];
    for (int i = 0; i < upto; i++)
        if (cudaemu_wg_hash(p->ops[i].b, p->ops[i].rows_b, cudaemu_wg_hash(p->ops[i].a, 64, 0xcbf29ce484222325ull)) !=
            p->ops[i].hash)
            cudaemu->fail("wgmma: shared memory an MMA reads was written between its issue and the wait_group that "
                          "retires it (the tensor cores may still be reading it)");
    memmove(p->ops, p->ops + upto, (size_t)(p->n - upto) * sizeof p->ops[0]);
    for (int g = retire; g < p->n_groups; g++) p->group_end[g - retire] = p->group_end[g] - upto;
    p->n -= upto, p->n_groups -= retire;
}
static inline void fence_proxy_async() { cudaemu->fence_proxy_async(); }

// ---- the entry points of the kernel's shared object (emu_compile.c appends the kernel's name) -------
template <typename... A, size_t... I> static void cudaemu_call(void (*f)(A...), void **args, cudaemu_seq<I...>)
{
    f(*static_cast<typename cudaemu_unqual<A>::type *>(args[I])...);
}
template <typename... A> static void cudaemu_invoke(void (*f)(A...), void **args)
{
    cudaemu_call(f, args, typename cudaemu_make_seq<sizeof...(A)>::type{});
}
template <typename... A> static int cudaemu_arg_sizes(void (*)(A...), unsigned *sizes, int max)
{
    const unsigned s[] = {0u, (unsigned)sizeof(A)...};
    int n = (int)sizeof...(A);
    for (int i = 0; i < n && i < max; i++) sizes[i] = s[i + 1];
    return n;
}
extern "C" __attribute__((visibility("default"))) int moeppc_emu_bind(const CudaEmuApi *api)
{
    if (api->abi != CUDAEMU_ABI) return 0;
    cudaemu = api;
    return CUDAEMU_ABI;
}
#define CUDAEMU_ENTRY(name)                                                                               \
    extern "C" __attribute__((visibility("default"))) const char moeppc_emu_name[] = #name;              \
    extern "C" __attribute__((visibility("default"))) void moeppc_emu_call(void **args) { cudaemu_invoke(name, args); } \
    extern "C" __attribute__((visibility("default"))) int moeppc_emu_arg_sizes(unsigned *sizes, int max)    \
    {                                                                                                     \
        return cudaemu_arg_sizes(name, sizes, max);                                                       \
    }
#line 1 "kernel.cu"
