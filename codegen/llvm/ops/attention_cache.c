/* attention_cache.c — keys and values into attention's KV caches (cg_ops.h's layouts), for the CPU
 * executor and the tests; no LLVM needed.
 *
 * A prefill stores every key and value it computes, and a key's dims lie 16 elements apart in its
 * tile: stored an element at a time (a conversion and a 2-byte store each) that took a fifth of the
 * 0.6B's prefill attention (0.65 ms a layer at T = 512 on one Zen 5 core). On AVX-512 a run of
 * positions now fills each K tile a row at a time (a dim of its 16 keys: one gather of 16 floats, one
 * conversion, one store) and each value row 16 dims a conversion; elsewhere element by element. */
#include "codegen/llvm/ops/cg_ops.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h> /* behind a CPU check */
#define MOEPPC_X86_INTRINSICS 1
#endif

enum { KT = CG_ATTENTION_KT_KEYS, WIDE_RUN = 8 }; /* WIDE_RUN: the fewest positions the AVX-512 form takes */

void cg_attention_put(void *cache, moe_dtype dt, int64_t at, const float *v, int64_t n)
{
    uint16_t *h = (uint16_t *)cache + at;
    if (dt == DT_F32) memcpy((float *)cache + at, v, (size_t)n * sizeof *v);
    else if (dt == DT_BF16)
        for (int64_t c = 0; c < n; c++) h[c] = f32_to_bf16(v[c]);
    else
        for (int64_t c = 0; c < n; c++) h[c] = f32_to_f16(v[c]);
}

/* Positions p0 .. p0 + n - 1 of kv head g (rows k + i·ld, v + i·ld at the head's dims), element by
 * element. */
static void store_scalar(void *kt, void *vc, moe_dtype dt, int64_t g, int64_t hd, int64_t cap, int64_t p0, int64_t n,
                         const float *k, const float *v, int64_t ld, bool pairs)
{
    for (int64_t i = 0; i < n; i++) {
        const float *kg = k + i * ld, *vg = v + i * ld;
        int64_t k0 = cg_attention_kt_index(cap, hd, p0 + i, g, 0, pairs);
        int64_t v0 = cg_attention_v_index(cap, hd, p0 + i, g, 0, pairs);
        if (pairs) {
            uint16_t *kd = (uint16_t *)kt + k0, *vd = (uint16_t *)vc + v0;
            for (int64_t d = 0; d < hd; d++) {
                kd[(d & ~(int64_t)1) * KT + (d & 1)] = f32_to_bf16(kg[d]);
                vd[2 * d] = f32_to_bf16(vg[d]);
            }
            continue;
        }
        if (dt == DT_F32)
            for (int64_t d = 0; d < hd; d++) ((float *)kt)[k0 + d * KT] = kg[d];
        else if (dt == DT_BF16)
            for (int64_t d = 0; d < hd; d++) ((uint16_t *)kt)[k0 + d * KT] = f32_to_bf16(kg[d]);
        else
            for (int64_t d = 0; d < hd; d++) ((uint16_t *)kt)[k0 + d * KT] = f32_to_f16(kg[d]);
        cg_attention_put(vc, dt, v0, vg, hd);
    }
}

#ifdef MOEPPC_X86_INTRINSICS
/* f32_to_bf16 on 16 lanes: nearest even, NaN kept quiet (denormals kept, unlike vcvtneps2bf16). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline __m256i bf16x16(__m512 x)
{
    __m512i u = _mm512_castps_si512(x);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                            _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x400000)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

/* The same positions of head g in bf16, a K tile's rows (16 keys of a dim, or in pairs of a dim pair)
 * and 16 values at a time; keys past the run's are left alone (masked). */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void store_bf16_avx512(void *kt, void *vc, int64_t g,
    int64_t hd, int64_t cap, int64_t p0, int64_t n, const float *k, const float *v, int64_t ld, bool pairs)
{
    __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                      _mm512_set1_epi32((int)ld));
    for (int64_t p = p0, e; p < p0 + n; p = e) { /* the keys of one tile: lanes p % 16 .. */
        e = (p / KT + 1) * KT < p0 + n ? (p / KT + 1) * KT : p0 + n;
        int64_t j0 = p % KT;
        __mmask16 m = (__mmask16)(((1u << (e - p)) - 1) << j0);
        __m512i idx = _mm512_sub_epi32(rows, _mm512_set1_epi32((int)(j0 * ld))); /* lane j: row p - p0 + j - j0 */
        const float *src = k + (p - p0) * ld;
        uint16_t *dst = (uint16_t *)kt + cg_attention_kt_index(cap, hd, p - j0, g, 0, pairs);
        for (int64_t d = 0; d < hd; d++) {
            __m256i h = bf16x16(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, src + d, 4));
            if (!pairs) _mm256_mask_storeu_epi16(dst + d * KT, m, h);
            else { /* dims d, d + 1 as the low and high halves of the pair words; hd is even */
                __m256i h1 = bf16x16(_mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, src + d + 1, 4));
                __m512i w = _mm512_or_si512(_mm512_cvtepu16_epi32(h), _mm512_slli_epi32(_mm512_cvtepu16_epi32(h1), 16));
                _mm512_mask_storeu_epi32(dst + d * KT, m, w);
                d++;
            }
        }
    }
    for (int64_t i = 0; i < n; i++) {
        const float *vg = v + i * ld;
        int64_t p = p0 + i, v0 = cg_attention_v_index(cap, hd, p, g, 0, pairs), d = 0;
        if (!pairs) {
            uint16_t *dst = (uint16_t *)vc + v0;
            for (; d + 16 <= hd; d += 16) _mm256_storeu_si256((__m256i *)(dst + d), bf16x16(_mm512_loadu_ps(vg + d)));
            for (; d < hd; d++) dst[d] = f32_to_bf16(vg[d]);
        } else { /* every other element: the pair words' low halves (p even) or high (odd) */
            uint16_t *dst = (uint16_t *)vc + v0 - p % 2;
            __mmask32 half = p % 2 ? 0xaaaaaaaau : 0x55555555u;
            for (; d + 16 <= hd; d += 16) {
                __m512i w = _mm512_cvtepu16_epi32(bf16x16(_mm512_loadu_ps(vg + d)));
                w = _mm512_slli_epi32(w, (int)(p % 2) * 16);
                _mm512_mask_storeu_epi16(dst + 2 * d, half, w);
            }
            for (; d < hd; d++) dst[2 * d + p % 2] = f32_to_bf16(vg[d]);
        }
    }
}
#endif

/* bf16 caches take the AVX-512 form where the CPU has AVX-512 F, BW and VL and MOEPPC_ISA does not
 * ask for a narrower ISA (whose tests then run the element form). The pool's threads all ask: the
 * answer, the same for each, is kept in an atomic. */
static bool store_avx512(void)
{
#ifdef MOEPPC_X86_INTRINSICS
    static _Atomic int have = -1;
    if (atomic_load_explicit(&have, memory_order_relaxed) < 0) {
        __builtin_cpu_init();
        atomic_store_explicit(&have, __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                         __builtin_cpu_supports("avx512vl"), memory_order_relaxed);
    }
    const char *isa = getenv("MOEPPC_ISA");
    return atomic_load_explicit(&have, memory_order_relaxed) && (!isa || strcmp(isa, "avx512") == 0);
#else
    return false;
#endif
}

void cg_attention_store_run(void *kt, void *vc, moe_dtype dt, int64_t kv_heads, int64_t head_dim, int64_t cap,
                            int64_t p0, int64_t n, const float *k, const float *v, int64_t ld, bool pairs)
{
    /* (a decode step's one position: a gather of one lane a dim would cost more than it saves) */
    bool wide = dt == DT_BF16 && n >= WIDE_RUN && store_avx512() && ld * KT < INT32_MAX; /* gather offsets: i32 */
    for (int64_t g = 0; g < kv_heads; g++) {
        const float *kg = k + g * head_dim, *vg = v + g * head_dim;
#ifdef MOEPPC_X86_INTRINSICS
        if (wide) {
            store_bf16_avx512(kt, vc, g, head_dim, cap, p0, n, kg, vg, ld, pairs);
            continue;
        }
#endif
        store_scalar(kt, vc, dt, g, head_dim, cap, p0, n, kg, vg, ld, pairs);
    }
}
