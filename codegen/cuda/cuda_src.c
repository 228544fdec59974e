/* cuda_src.c — the device prelude and literal helpers shared by every generated kernel. */
#include "codegen/cuda/cuda_internal.h"

#include <stdio.h>
#include <stdlib.h>

void cb_double(CgBuf *b, const char *name, double v)
{
    cb_printf(b, "#define %s %.17g\n", name, v);
}

static const char prelude[] =
    "typedef unsigned short u16;\n"
    "typedef unsigned int u32;\n"
    "#ifndef INFINITY  /* NVRTC has no math.h; nvcc brings its own */\n#define INFINITY __int_as_float(0x7f800000)\n#endif\n"
    "__device__ __forceinline__ float bf16_f32(u16 h) { return __uint_as_float((u32)h << 16); }\n"
    "/* The PTX helpers; the CUDA emulator (arch emu, codegen/cuda/emu/kernel.hpp) defines its own. */\n"
    "#ifndef MOEPPC_CUDA_EMU\n"
    "__device__ __forceinline__ float f16_f32(u16 h) {\n"
    "    float f; asm(\"cvt.f32.f16 %0, %1;\" : \"=f\"(f) : \"h\"(h)); return f; }\n"
    "/* two f32 -> packed 16-bit pair, round to nearest even; lo in the low half (sm_80+) */\n"
    "__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {\n"
    "    u32 r; asm(\"cvt.rn.bf16x2.f32 %0, %1, %2;\" : \"=r\"(r) : \"f\"(hi), \"f\"(lo)); return r; }\n"
    "__device__ __forceinline__ u32 pack_f16(float lo, float hi) {\n"
    "    u32 r; asm(\"cvt.rn.f16x2.f32 %0, %1, %2;\" : \"=r\"(r) : \"f\"(hi), \"f\"(lo)); return r; }\n"
    "/* D = A B + D, m16n8k16, f32 accumulators (sm_80+) */\n"
    "#define MMA_16816(T) __device__ __forceinline__ void mma_16816_##T(float *c, const u32 *a, const u32 *b) { \\\n"
    "    asm volatile(\"mma.sync.aligned.m16n8k16.row.col.f32.\" #T \".\" #T \".f32 \" \\\n"
    "                 \"{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\" \\\n"
    "                 : \"+f\"(c[0]), \"+f\"(c[1]), \"+f\"(c[2]), \"+f\"(c[3]) \\\n"
    "                 : \"r\"(a[0]), \"r\"(a[1]), \"r\"(a[2]), \"r\"(a[3]), \"r\"(b[0]), \"r\"(b[1])); }\n"
    "MMA_16816(bf16)\n"
    "MMA_16816(f16)\n"
    "/* shared memory: ldmatrix (lanes 8i..8i+7 give matrix i's row addresses), cp.async (sm_80+) */\n"
    "__device__ __forceinline__ u32 smem_u32(const void *p) { return (u32)__cvta_generic_to_shared(p); }\n"
    "__device__ __forceinline__ void ldmatrix_x4(u32 *r, const void *row) {\n"
    "    asm volatile(\"ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\"\n"
    "                 : \"=r\"(r[0]), \"=r\"(r[1]), \"=r\"(r[2]), \"=r\"(r[3]) : \"r\"(smem_u32(row))); }\n"
    "__device__ __forceinline__ void ldmatrix_x4_trans(u32 *r, const void *row) {\n"
    "    asm volatile(\"ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\"\n"
    "                 : \"=r\"(r[0]), \"=r\"(r[1]), \"=r\"(r[2]), \"=r\"(r[3]) : \"r\"(smem_u32(row))); }\n"
    "__device__ __forceinline__ void ldmatrix_x2(u32 *r, const void *row) {\n"
    "    asm volatile(\"ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\" : \"=r\"(r[0]), \"=r\"(r[1]) : \"r\"(smem_u32(row))); }\n"
    "/* 16 bytes global -> shared, of which src_bytes from src and the rest zeros; lands at a wait */\n"
    "__device__ __forceinline__ void cp_async16(void *dst, const void *src, unsigned src_bytes) {\n"
    "    asm volatile(\"cp.async.cg.shared.global [%0], [%1], 16, %2;\" :: \"r\"(smem_u32(dst)), \"l\"(src), \"r\"(src_bytes) : \"memory\"); }\n"
    "__device__ __forceinline__ void cp_async_commit() { asm volatile(\"cp.async.commit_group;\" ::: \"memory\"); }\n"
    "template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile(\"cp.async.wait_group %0;\" :: \"n\"(N) : \"memory\"); }\n"
    "#define DYN_SHARED(T, name) extern __shared__ __align__(16) T name[]\n"
    "/* y[0] += a and, when both, y[1] += b: one vector reduction on sm_90+ where y is 8-byte aligned (half\n"
    " * the epilogue's atomic operations), else scalar atomics */\n"
    "__device__ __forceinline__ void atomic_add_pair(float *y, float a, float b, bool both) {\n"
    "#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900\n"
    "    if (both && !((unsigned long long)y & 7)) {\n"
    "        asm volatile(\"red.global.add.v2.f32 [%0], {%1, %2};\" :: \"l\"(y), \"f\"(a), \"f\"(b) : \"memory\");\n"
    "        return;\n"
    "    }\n"
    "#endif\n"
    "    atomicAdd(y, a);\n"
    "    if (both) atomicAdd(y + 1, b); }\n"
    "/* y[0..3] += a, b, c, d: one vector reduction on sm_90+ where y is 16-byte aligned, else atomics */\n"
    "__device__ __forceinline__ void atomic_add_quad(float *y, float a, float b, float c, float d) {\n"
    "#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900\n"
    "    if (!((unsigned long long)y & 15)) {\n"
    "        asm volatile(\"red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\"\n"
    "                     :: \"l\"(y), \"f\"(a), \"f\"(b), \"f\"(c), \"f\"(d) : \"memory\");\n"
    "        return;\n"
    "    }\n"
    "#endif\n"
    "    atomicAdd(y, a), atomicAdd(y + 1, b), atomicAdd(y + 2, c), atomicAdd(y + 3, d); }\n"
    "/* the 128-byte line at p into L2, nothing waiting for it */\n"
    "__device__ __forceinline__ void prefetch_l2(const void *p) {\n"
    "    asm volatile(\"prefetch.global.L2 [%0];\" :: \"l\"(p)); }\n"
    "/* programmatic dependent launch (sm_90+; elsewhere nothing): wait until the kernels before this one\n"
    " * have finished and their writes are visible; let the next kernel's blocks start their launch */\n"
    "__device__ __forceinline__ void grid_dep_wait() {\n"
    "#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900\n"
    "    asm volatile(\"griddepcontrol.wait;\" ::: \"memory\");\n"
    "#endif\n"
    "}\n"
    "__device__ __forceinline__ void grid_dep_launch() {\n"
    "#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900\n"
    "    asm volatile(\"griddepcontrol.launch_dependents;\" ::: \"memory\");\n"
    "#endif\n"
    "}\n"
    "#endif\n"
    "/* Every kernel's first statement (a kernel launched with programmatic dependent launch may start while\n"
    " * the one before it still runs). The contract every kernel keeps: it waits before it reads anything a\n"
    " * kernel before it writes, and lets its dependents launch only after its own wait, so that when a kernel\n"
    " * starts, the one two launches back has finished and its writes are in L2. Only the decode GEMVs read\n"
    " * before the wait: weights (never written) and the routing's offsets, two launches back. */\n"
    "#define PDL_ENTRY() (grid_dep_wait(), grid_dep_launch())\n"
    "__device__ __forceinline__ float warp_sum(float v) {\n"
    "    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);\n"
    "    return v; }\n"
    "__device__ __forceinline__ float warp_max(float v) {\n"
    "    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));\n"
    "    return v; }\n";

void cb_prelude(CgBuf *b, moe_dtype wdtype)
{
    cb_printf(b, "/* generated by moeppc (codegen/cuda) */\n%s", prelude);
    switch (wdtype) {
    case DT_BF16:
        cb_printf(b, "typedef u16 wtype;\n__device__ __forceinline__ float ldw(const void *p, long long i) "
                     "{ return bf16_f32(((const u16 *)p)[i]); }\n");
        break;
    case DT_F16:
        cb_printf(b, "typedef u16 wtype;\n__device__ __forceinline__ float ldw(const void *p, long long i) "
                     "{ return f16_f32(((const u16 *)p)[i]); }\n");
        break;
    default:
        cb_printf(b, "typedef float wtype;\n__device__ __forceinline__ float ldw(const void *p, long long i) "
                     "{ return ((const float *)p)[i]; }\n");
    }
}

/* Here, not in cuda_nvrtc.c: the executor frees binaries too, and must link without NVRTC. */
void cg_cuda_binary_free(CgCudaBinary *b)
{
    free(b->ptx);
    free(b->cubin);
    free(b->log);
    b->ptx = NULL, b->cubin = NULL, b->log = NULL;
}
