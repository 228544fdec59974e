/* gemm.c — the drivers: plain GEMM and the two grouped GEMMs of an MoE layer share one engine.
 *  1. Pack A: each group's rows (gathered through the permutation) into MR-row tiles, K-major,
 *     zero-padded to a multiple of MR; done once per call, in parallel, shared by all threads.
 *  2. Tasks are chunks of N panels; a task walks groups, then its panels, then row blocks of MC, so a
 *     group's packed A stays in L2 across panels and each weight panel is read once. A thread owns
 *     its columns of the output for every group: the scatter-add needs no atomics.
 *  3. Per (group, panel, row block) the kernel fills a per-thread tile S[rows, NR] (over K blocks of
 *     KC, accumulating), then an epilogue reads S: store, SwiGLU, or gate-weighted scatter-add.
 * Edges: padded B columns are zeros and never stored. A group's r rows past its last whole MR tile
 * run as the cheapest cover by the kernel and the blocking's edge kernels (MR 4, 2[, 1]), each tile
 * packed at its own MR and zero-padded (cover_plan); without edge kernels, one tile padded to MR.
 * bf16-dot kernels (a_bf16): A is packed rounded to bf16 in k pairs (one 32-bit word per pair and
 * row, so a tile holds ceil(K/2) x MR words), K blocks are even, and B's panels are in k pairs.
 * AMX kernels (amx) take the same words a tile row of 16 pairs at a time (cg_kernel_fn), K blocks a
 * multiple of 32 and each row's words zero-padded to a multiple of 16; the process asks Linux for the
 * tiles (cg_amx_grant) before the first.
 * cg_moe_ffn runs an expert FFN's two grouped GEMMs as two jobs: DOWN laid out first (its packed A's
 * place), then UP, whose SwiGLU epilogue writes h straight into DOWN's tiles (swiglu_packed), then
 * DOWN without a pack (prepacked). */
#include "codegen/llvm/cg_llvm.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h> /* the SwiGLU epilogue and bf16 packing, each behind a CPU check */
#define MOEPPC_X86_INTRINSICS 1
#endif

typedef enum { EPI_STORE, EPI_SWIGLU, EPI_SCATTER } Epilogue;
typedef void (*swiglu_fn)(float *restrict h, const float *restrict a, const float *restrict b, int64_t n);

enum { MAX_MR = 64, N_TILE_KINDS = 1 + CG_GEMM_EDGES }; /* MAX_MR: kernel_ir.c's accumulator bound */
enum { MIN_PART_TILES = 4 }; /* MR-row tiles a chunk's rows hold at least when rows are split (run) */

/* How the last r < MR rows of a group run: n[c] tiles of kernel c of Job.ks, kinds in order. */
typedef struct Cover {
    uint8_t n[N_TILE_KINDS];
} Cover;

typedef struct Job {
    const CgKernel *kern;
    const CgKernel *ks[N_TILE_KINDS]; /* kern, then the blocking's edge kernels */
    int n_ks;
    Cover cover[MAX_MR];   /* [r] for r in 1 .. MR-1 */
    int64_t kc, mc, K;
    int64_t kw;            /* 32-bit words of a packed row of A: K, or (K + 1) / 2 pairs (a_bf16),
                              rounded up to 16 (amx) */
    Epilogue epi;
    int64_t n_groups;
    const int64_t *off;    /* [n_groups + 1]: group g owns rows/slots off[g] .. off[g+1]-1 */
    const int32_t *gather; /* A row of slot s is x[gather[s]] (NULL: x[s]) */
    const float *x;        /* A source, row stride ldx */
    int64_t ldx;
    const CgPackedB *b;    /* [n_groups] */
    int64_t *tile_off;     /* [n_groups + 1]: first MR-tile of each group in ap */
    float *ap;             /* packed A, all groups */
    float *tiles;          /* per-thread S, tile_floats each */
    size_t tile_floats;
    int64_t n_panels, n_chunks;
    int64_t row_parts;     /* chunks a panel range's rows are split into (one group, few panels) */
    float *c;              /* EPI_STORE: C[m, n], ldc */
    int64_t ldc;
    bool accumulate;
    float *h;              /* EPI_SWIGLU: h[slots, inter], or (hd) none */
    const struct Job *hd;  /* EPI_SWIGLU of cg_moe_ffn: h into this job's packed A (DOWN's, laid out) */
    bool prepacked;        /* cg_moe_ffn's DOWN: A's tiles written already (by UP's epilogue) */
    swiglu_fn swiglu;      /* its row function (swiglu_for_host) */
    int vec_bits;          /* host_vector_bits at the call: pack_rows's blocks */
    bool bf16;             /* ... and whether it has AVX512-BF16 (swiglu_block's target) */
    int64_t inter;
    const int32_t *perm;   /* EPI_SCATTER: out[perm[s], d] += gate_w[s] * S */
    const float *gate_w;
    float *out;
    int64_t d;
    int n_multi;           /* cg_gemm_multi: n_multi matrices of one A, C_q = A . W_q^T (0: none) */
    const CgKernel *mks[CG_GEMM_MULTI][N_TILE_KINDS]; /* matrix q's kernel and edge kernels (ks's rows) */
    const CgPackedB *mw[CG_GEMM_MULTI];
    float *mout[CG_GEMM_MULTI];
    int64_t mldc[CG_GEMM_MULTI];
    int64_t mpanel[CG_GEMM_MULTI + 1]; /* matrix q owns panels mpanel[q] .. mpanel[q+1]-1 of the call */
} Job;

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* This CPU's L2 a core (sysconf's, 1 MB where it does not say), held within 256 KB .. 4 MB. */
static size_t l2_bytes(void) {
    static size_t l2;
    if (!l2) {
        long v = 0;
#if defined(__linux__) && defined(_SC_LEVEL2_CACHE_SIZE)
        v = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
        l2 = v <= 0 ? (size_t)1 << 20 : v < 256 << 10 ? (size_t)256 << 10 : v > 4 << 20 ? (size_t)4 << 20 : (size_t)v;
    }
    return l2;
}

/* Words of a packed row of A for kern over K columns (Job.kw). */
static int64_t row_words(const CgKernelConfig *cfg, int64_t K) {
    return cfg->amx ? round_up((K + 1) / 2, 16) : cfg->a_bf16 ? (K + 1) / 2 : cfg->kpair_b ? round_up(K, 2) : K;
}

/* Words of a packed row of A for a call of kern and blk's edge kernels over K columns: the most any
 * of them needs, so that every tile of a group has the same stride (Job.kw). */
static int64_t call_words(const CgKernel *kern, const CgBlocking *blk, int64_t K) {
    int64_t kw = row_words(&kern->cfg, K);
    for (int e = 0; e < CG_GEMM_EDGES && blk->edge[e]; e++)
        if (row_words(&blk->edge[e]->cfg, K) > kw) kw = row_words(&blk->edge[e]->cfg, K);
    return kw;
}

bool cg_kernel_kpair(const CgKernelConfig *cfg) { return cfg->a_bf16 || cfg->kpair_b; }

bool cg_amx_grant(void) {
#if defined(__linux__) && defined(__x86_64__)
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    static int granted = -1; /* asked once: the answer holds for the process */
    if (granted < 0) granted = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return granted == 1;
#else
    return false;
#endif
}

void cg_work_free(CgWork *w) {
    if (!w->borrowed) {
        free(w->a_packed);
        free(w->tiles);
        free(w->tile_off);
        free(w->h_packed);
        free(w->h_tile_off);
    }
    memset(w, 0, sizeof *w);
}

/* p holding at least need elements of elem bytes: reallocated (owned) or asserted (borrowed). */
static void *grow(void *p, size_t *cap, size_t need, size_t elem, bool borrowed) {
    if (need <= *cap) return p;
    MOE_ASSERT(!borrowed); /* cg_work_need sized it for every call the caller makes */
    free(p);
    *cap = need + need / 4;
    void *q = aligned_alloc(64, ((*cap * elem) + 63) & ~(size_t)63);
    MOE_ASSERT(q);
    return q;
}

/* A call's row block (Job.mc): blk's, a multiple of kern's MR, 256 rows where it says none. */
static int64_t row_block(const CgKernel *kern, const CgBlocking *blk) {
    return round_up(blk->mc > 0 ? blk->mc : 256, kern->cfg.mr);
}

/* layout(): Σ_g ceil(rows_g / MR) tiles ≤ ceil(m / MR) + n_groups, each MR × K floats, plus one */
static size_t packed_floats(const CgKernel *kern, const CgBlocking *blk, int64_t m, int64_t n_groups, int64_t K) {
    int mr = kern->cfg.mr;
    int64_t kw = call_words(kern, blk, K) > K ? call_words(kern, blk, K) : K;
    return (size_t)(((m + mr - 1) / mr + n_groups) * mr * kw) + 1;
}

void cg_work_need(CgWorkNeed *need, const CgKernel *kern, const CgBlocking *blk, int threads, int64_t m,
                  int64_t n_groups, int64_t K) {
    int64_t mc = row_block(kern, blk);
    size_t a = packed_floats(kern, blk, m, n_groups, K);
    size_t tiles = (size_t)(mc * kern->cfg.nr) * (size_t)(threads < 1 ? 1 : threads);
    size_t off = (size_t)n_groups + 1;
    if (a > need->a_floats) need->a_floats = a;
    if (tiles > need->tile_floats) need->tile_floats = tiles;
    if (off > need->n_tile_off) need->n_tile_off = off;
}

static size_t block64(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

void cg_work_need_ffn(CgWorkNeed *need, const CgKernel *up, const CgBlocking *up_blk, const CgKernel *down,
                      const CgBlocking *down_blk, int threads, int64_t m, int64_t n_groups, int64_t D, int64_t inter) {
    cg_work_need(need, up, up_blk, threads, m, n_groups, D);
    cg_work_need(need, down, down_blk, threads, m, n_groups, inter);
    int64_t mc = row_block(up, up_blk);
    size_t h = packed_floats(down, down_blk, m, n_groups, inter);
    size_t tiles = (size_t)(mc * up->cfg.nr + MAX_MR * (up->cfg.nr / 2)) * /* S and its h (run) */
                   (size_t)(threads < 1 ? 1 : threads);
    if (h > need->h_floats) need->h_floats = h;
    if (tiles > need->tile_floats) need->tile_floats = tiles;
}

/* (the h tiles' offsets only where there are h tiles) */
static size_t h_tile_offs(const CgWorkNeed *need) { return need->h_floats ? need->n_tile_off : 0; }

size_t cg_work_need_bytes(const CgWorkNeed *need) {
    return block64(need->a_floats * sizeof(float)) + block64(need->tile_floats * sizeof(float)) +
           block64(need->n_tile_off * sizeof(int64_t)) + block64(need->h_floats * sizeof(float)) +
           block64(h_tile_offs(need) * sizeof(int64_t));
}

void cg_work_borrow(CgWork *w, void *mem, const CgWorkNeed *need) {
    MOE_ASSERT(((uintptr_t)mem & 63) == 0);
    cg_work_free(w);
    char *p = mem;
    w->a_packed = (float *)p, w->a_cap = need->a_floats;
    p += block64(need->a_floats * sizeof(float));
    w->tiles = (float *)p, w->tiles_cap = need->tile_floats;
    p += block64(need->tile_floats * sizeof(float));
    w->tile_off = (int64_t *)p, w->tile_off_cap = need->n_tile_off;
    p += block64(need->n_tile_off * sizeof(int64_t));
    w->h_packed = (float *)p, w->h_cap = need->h_floats;
    p += block64(need->h_floats * sizeof(float));
    w->h_tile_off = (int64_t *)p, w->h_tile_off_cap = h_tile_offs(need);
    w->borrowed = true;
}

CgBlocking cg_blocking_default(const CgKernel *kern) {
    int mr = kern->cfg.mr;
    const char *kc = getenv("MOEPPC_KC"); /* for tuning runs; 0 = whole K */
    return (CgBlocking){.kc = kc ? atoll(kc) : 0, .mc = (256 / mr) * mr};
}

CgBlocking cg_blocking_make(const CgKernel *kern, int64_t kc, int64_t mc, int64_t K) {
    CgBlocking blk = cg_blocking_default(kern);
    if (kc > 0 && kc < K) blk.kc = kc;
    if (mc > 0) blk.mc = round_up(mc < 65536 ? mc : 65536, kern->cfg.mr);
    return blk;
}

/* 4, 2 and 1 rows for 16-bit weights; 4 and 2 for f32, whose one-row tile measured slower than a
 * two-row one with a padded row (the 7B's expert shapes at T = 1 and 16: the tuning databases'
 * 1x48 against 2x48; for bf16 the one-row tile is the faster). AMX: 16, 4 and 1 (cover_plan). */
bool cg_blocking_edges(CgBlocking *blk, const CgKernel *kern, cg_kernel_get get, void *ctx) {
    static const int vec_rows[CG_GEMM_EDGES] = {4, 2, 1}, amx_rows[CG_GEMM_EDGES] = {16, 4, 1};
    const int *rows = kern->cfg.amx ? amx_rows : vec_rows;
    memset(blk->edge, 0, sizeof blk->edge);
    for (int e = 0, n = 0; e < CG_GEMM_EDGES; e++) {
        if (rows[e] >= kern->cfg.mr || (rows[e] == 1 && kern->cfg.b_dtype == DT_F32)) continue;
        CgKernelConfig c = kern->cfg;
        c.mr = rows[e];
        if (c.amx && c.mr < 16) /* a few rows: f32 FMAs on the same k pairs (the tiles' latency would bind) */
            c.amx = c.a_bf16 = false, c.kpair_b = true, c.k_unroll = 4;
        const CgKernel *g = get(ctx, &c);
        if (!g || g->cfg.mr != c.mr || g->cfg.nr != c.nr || g->cfg.b_dtype != c.b_dtype || g->cfg.a_bf16 != c.a_bf16 ||
            g->cfg.amx != c.amx || g->cfg.kpair_b != c.kpair_b) {
            memset(blk->edge, 0, sizeof blk->edge);
            return false;
        }
        blk->edge[n++] = g;
    }
    return true;
}

/* The cheapest way to run r rows (r < MR) on kern and the edge kernels, one tile each padded with
 * zero rows, by a cost of rows + 1 per tile: the one is a tile's fixed cost (its B panel streamed
 * again), which makes a 1-row tile about a quarter of an 8-row one and 2 and 4 rows a third and
 * a half, as the 7B expert shapes measured them (tuning/cpu-*: 1x48, 2x48, 4x48 against 8x48).
 * So (MR 8) r = 1, 2 get their own tile (f32: r = 1 a padded 2-row one), 3 a 4-row one, 5 and 6
 * 4 + 1 (f32: 4 + 2) and 4 + 2, 7 the padded whole tile. An AMX tile's fixed cost is its B tiles'
 * loads, 2 KB a k block against 64 bytes a row of A, and it multiplies about four times as fast as
 * FMAs: costs are 4 (rows + 1) for a vector tile, rows + 16 for an AMX one (AMX MR 32 with edges of
 * 16 AMX rows and 4 and 1 rows of FMAs on the same k pairs: r = 1 one 1-row tile, 2 two, 3-4 a
 * 4-row one, 5 4 + 1, 6-16 a 16-row AMX tile, 17 16 + 1, 18-31 the whole tile).
 * A cover never holds more than MR rows (one whole tile costs less), so it fits the tile's space. */
static void cover_plan(Job *j, const CgKernel *const *edge) {
    int mr = j->kern->cfg.mr, cost[MAX_MR], first[MAX_MR];
    j->ks[0] = j->kern, j->n_ks = 1;
    while (j->n_ks < N_TILE_KINDS && edge[j->n_ks - 1]) j->ks[j->n_ks] = edge[j->n_ks - 1], j->n_ks++;
    cost[0] = 0;
    for (int r = 1; r < mr; r++) {
        cost[r] = -1;
        for (int c = 0; c < j->n_ks; c++) { /* the largest first: ties go to fewer tiles */
            int rows = j->ks[c]->cfg.mr, left = r > rows ? r - rows : 0;
            int k = (j->ks[c]->cfg.amx ? rows + 16 : 4 * (rows + 1)) + cost[left];
            if (cost[r] < 0 || k < cost[r]) cost[r] = k, first[r] = c;
        }
    }
    for (int r = 1; r < mr; r++) {
        Cover *cv = &j->cover[r];
        memset(cv, 0, sizeof *cv);
        int covered = 0;
        for (int left = r; left > 0; left = left > j->ks[first[left]]->cfg.mr ? left - j->ks[first[left]]->cfg.mr : 0) {
            cv->n[first[left]]++;
            covered += j->ks[first[left]]->cfg.mr;
        }
        MOE_ASSERT(covered <= mr);
    }
}

/* The widest vectors the host code here (packing A in blocks, the SwiGLU epilogue) may take: 512, 256
 * (AVX2 with FMA) or 0, as the CPU it runs on has them, never assumed, and as MOEPPC_ISA allows (so
 * the narrower ISAs' tests run the other forms); *bf16: with 512, whether it has AVX512-BF16 too. */
static int host_vector_bits(bool *bf16) {
    *bf16 = false;
#ifdef MOEPPC_X86_INTRINSICS
    static int have512 = -1, have256 = -1, have_bf16 = -1;
    if (have512 < 0) {
        __builtin_cpu_init();
        have512 = __builtin_cpu_supports("avx512f");
        have256 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        have_bf16 = have512 && __builtin_cpu_supports("avx512bf16");
    }
    const char *isa = getenv("MOEPPC_ISA");
    if (have512 && (!isa || strcmp(isa, "avx512") == 0)) return *bf16 = have_bf16, 512;
    if (have256 && (!isa || strcmp(isa, "avx512") == 0 || strcmp(isa, "avx2") == 0)) return 256;
#endif
    return 0;
}

/* ---- step 1: pack A ---------------------------------------------------------------------- */
/* Row src as word i of each k pair of a tile of mr rows: bf16(src[2p]) | bf16(src[2p+1]) << 16.
 * The bf16 dot-product kernels need AVX512-BF16, so its conversion (vcvtne2ps2bf16: round to
 * nearest even, as f32_to_bf16; denormals to zero, which vdpbf16ps does to its inputs anyway)
 * packs 32 columns a step, scattered to their pairs' rows of the tile. */
#ifdef MOEPPC_X86_INTRINSICS
__attribute__((target("avx512f,avx512bf16"))) static int64_t pack_pairs_avx512(const float *src, int64_t K, int mr,
                                                                               uint32_t *dst) {
    __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                      _mm512_set1_epi32(mr));
    int64_t p = 0;
    for (; 2 * p + 32 <= K; p += 16) {
        __m512bh w = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 2 * p + 16), _mm512_loadu_ps(src + 2 * p));
        _mm512_i32scatter_epi32(dst + p * mr, rows, (__m512i)w, 4);
    }
    return p;
}
#endif

static void pack_pairs(const float *src, int64_t K, int mr, int i, int64_t p, uint32_t *dst) {
#ifdef MOEPPC_X86_INTRINSICS
    if (p == 0) p = pack_pairs_avx512(src, K, mr, dst + i);
#endif
    for (; 2 * p + 1 < K; p++)
        dst[p * mr + i] = (uint32_t)f32_to_bf16(src[2 * p]) | (uint32_t)f32_to_bf16(src[2 * p + 1]) << 16;
    if (2 * p < K) dst[p * mr + i] = f32_to_bf16(src[2 * p]); /* (an odd K's last word) */
}

/* Row src as row i of an AMX tile of mr rows: each block of 16 pairs 64 bytes at [(p/16)*mr*16 +
 * i*16], the words past K zeros up to kw. AMX CPUs have AVX512-BF16: 32 columns a conversion. */
#ifdef MOEPPC_X86_INTRINSICS
__attribute__((target("avx512f,avx512bf16"))) static int64_t pack_amx_avx512(const float *src, int64_t K, int mr,
                                                                             uint32_t *dst) {
    int64_t p = 0;
    for (; 2 * p + 32 <= K; p += 16) {
        __m512bh w = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 2 * p + 16), _mm512_loadu_ps(src + 2 * p));
        _mm512_storeu_si512(dst + p * mr, (__m512i)w);
    }
    return p;
}
#endif

static void pack_amx_row(const float *src, int64_t K, int64_t kw, int mr, int i, uint32_t *dst) {
    dst += i * 16;
    int64_t p = 0;
#ifdef MOEPPC_X86_INTRINSICS
    p = pack_amx_avx512(src, K, mr, dst);
#endif
    for (; p < kw; p++) {
        uint32_t lo = 2 * p < K ? f32_to_bf16(src[2 * p]) : 0, hi = 2 * p + 1 < K ? f32_to_bf16(src[2 * p + 1]) : 0;
        dst[(p / 16) * mr * 16 + p % 16] = lo | hi << 16;
    }
}

/* Rows in blocks of 8 and 4, 16 words of each at a time (AVX-512): the words of a tile are column-major
 * (word (k, i) at k * mr + i), so row by row each word lands mr words from the last: one scatter or 16
 * stores per 16 words. Instead a block's rows are transposed in registers, then each word position's
 * rows stored as one piece (8 or 4 words). A row is 16 f32 or 16 bf16 pairs (32 columns by
 * vcvtne2ps2bf16: round to nearest even, subnormals to zero, as pack_pairs_avx512); a NULL row is
 * zeros. Measured on a Zen 5 (the 0.6B at T = 2048, a timer around the pack, two threads, two runs
 * each): a call's pack of 2048 rows for the attention's output projection 0.40 -> 0.32 ms (of 5.5 its
 * multiplying), for the router's f32 W1 0.70 -> 0.47 (of 0.8), the grouped UP's 0.49-0.51 -> 0.34,
 * DOWN's (K = 2048) 0.98-1.02 -> 0.84-0.89; the model's routing at T = 512 8.8 -> 7.3 ms. */
#ifdef MOEPPC_X86_INTRINSICS
/* 4 rows r[0..3] of 16 words: u[m] holds the 4 rows' word 4L + m in its 128-bit lane L. */
__attribute__((target("avx512f"), always_inline)) static inline void transpose4x4_lanes(const __m512 *r, __m512 *u) {
    __m512 t0 = _mm512_unpacklo_ps(r[0], r[1]), t1 = _mm512_unpackhi_ps(r[0], r[1]);
    __m512 t2 = _mm512_unpacklo_ps(r[2], r[3]), t3 = _mm512_unpackhi_ps(r[2], r[3]);
    u[0] = _mm512_shuffle_ps(t0, t2, 0x44), u[1] = _mm512_shuffle_ps(t0, t2, 0xee);
    u[2] = _mm512_shuffle_ps(t1, t3, 0x44), u[3] = _mm512_shuffle_ps(t1, t3, 0xee);
}

/* Words w .. w + n - 1 (n <= 16) of `rows` (8 or 4) rows r[] to their places in the tile: word k's
 * rows at dst + k * mr, 8 or 4 contiguous words. */
__attribute__((target("avx512f"), always_inline)) static inline void store_block(const __m512 *r, int rows, int64_t w,
                                                                               int n, int mr, float *dst) {
    __m512 u[8];
    transpose4x4_lanes(r, u);
    if (rows == 4) {
        for (int m = 0; m < 4 && m < n; m++) {
            _mm_storeu_ps(dst + (w + m) * mr, _mm512_castps512_ps128(u[m]));
            if (4 + m < n) _mm_storeu_ps(dst + (w + 4 + m) * mr, _mm512_extractf32x4_ps(u[m], 1));
            if (8 + m < n) _mm_storeu_ps(dst + (w + 8 + m) * mr, _mm512_extractf32x4_ps(u[m], 2));
            if (12 + m < n) _mm_storeu_ps(dst + (w + 12 + m) * mr, _mm512_extractf32x4_ps(u[m], 3));
        }
        return;
    }
    transpose4x4_lanes(r + 4, u + 4);
    /* word j (0..7) and j + 8: lanes L and L + 2 of u[m] (rows 0..3) and u[4 + m] (rows 4..7), m = j % 4,
     * L = j / 4 */
    const __m512i idx[2] = {_mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),
                            _mm512_setr_epi32(4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31)};
    for (int j = 0; j < 8 && j < n; j++) {
        __m512 o = _mm512_permutex2var_ps(u[j % 4], idx[j / 4], u[4 + j % 4]);
        _mm256_storeu_ps(dst + (w + j) * mr, _mm512_castps512_ps256(o));
        if (j + 8 < n)
            _mm256_storeu_ps(dst + (w + j + 8) * mr, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(o), 1)));
    }
}

/* Loads of columns c .. c + 15 of a row (NULL: zeros), those from `end` on as zeros. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 load16(const float *x, int64_t c, int64_t end) {
    if (!x || c >= end) return _mm512_setzero_ps();
    return end - c >= 16 ? _mm512_loadu_ps(x + c) : _mm512_maskz_loadu_ps((__mmask16)((1u << (end - c)) - 1), x + c);
}

/* `rows` (8 or 4) rows of f32, 16 columns a step (the last few under a mask); returns the words done,
 * all K. */
__attribute__((target("avx512f"))) static int64_t pack_block_f32(const float *const *src, int rows, int64_t K, int mr,
                                                                float *dst) {
    for (int64_t w = 0; w < K; w += 16) {
        __m512 r[8];
        for (int i = 0; i < rows; i++) r[i] = load16(src[i], w, K);
        store_block(r, rows, w, K - w < 16 ? (int)(K - w) : 16, mr, dst);
    }
    return K;
}

/* The same in bf16 k pairs, 32 columns (16 words) a step; an odd K's last word has a zero high half. */
__attribute__((target("avx512f,avx512bf16"))) static int64_t pack_block_pairs(const float *const *src, int rows,
                                                                             int64_t K, int mr, float *dst) {
    int64_t words = (K + 1) / 2;
    for (int64_t w = 0; w < words; w += 16) {
        __m512 r[8];
        for (int i = 0; i < rows; i++)
            r[i] = _mm512_castsi512_ps(
                (__m512i)_mm512_cvtne2ps_pbh(load16(src[i], 2 * w + 16, K), load16(src[i], 2 * w, K)));
        store_block(r, rows, w, words - w < 16 ? (int)(words - w) : 16, mr, dst);
    }
    return words;
}

/* pack_block_f32 on AVX2: 8 columns a step, the 4-row transposes (unpack, shuffle) in both 128-bit
 * halves, then for 8 rows each word's halves joined (vperm2f128). */
__attribute__((target("avx2"))) static int64_t pack_block_f32_avx2(const float *const *src, int rows, int64_t K, int mr,
                                                                  float *dst) {
    int64_t w = 0;
    for (; w + 8 <= K; w += 8) {
        __m256 r[8], u[8];
        for (int i = 0; i < rows; i++) r[i] = src[i] ? _mm256_loadu_ps(src[i] + w) : _mm256_setzero_ps();
        for (int h = 0; h < rows; h += 4) { /* u[h + m]: rows h .. h + 3 of word m (low half) and m + 4 (high) */
            __m256 t0 = _mm256_unpacklo_ps(r[h], r[h + 1]), t1 = _mm256_unpackhi_ps(r[h], r[h + 1]);
            __m256 t2 = _mm256_unpacklo_ps(r[h + 2], r[h + 3]), t3 = _mm256_unpackhi_ps(r[h + 2], r[h + 3]);
            u[h] = _mm256_shuffle_ps(t0, t2, 0x44), u[h + 1] = _mm256_shuffle_ps(t0, t2, 0xee);
            u[h + 2] = _mm256_shuffle_ps(t1, t3, 0x44), u[h + 3] = _mm256_shuffle_ps(t1, t3, 0xee);
        }
        for (int m = 0; m < 4; m++) {
            if (rows == 4) {
                _mm_storeu_ps(dst + (w + m) * mr, _mm256_castps256_ps128(u[m]));
                _mm_storeu_ps(dst + (w + 4 + m) * mr, _mm256_extractf128_ps(u[m], 1));
            } else {
                _mm256_storeu_ps(dst + (w + m) * mr, _mm256_permute2f128_ps(u[m], u[4 + m], 0x20));
                _mm256_storeu_ps(dst + (w + 4 + m) * mr, _mm256_permute2f128_ps(u[m], u[4 + m], 0x31));
            }
        }
    }
    return w;
}
#endif

/* Rows src[0 .. n) (NULL: zeros) as lanes 0 .. n - 1 of a tile of mr rows at dst (word k of lane i
 * at dst[k * mr + i]), K columns in f32 words or bf16 pairs, a NULL row's words zeros up to kw (an f32
 * row's too): blocks of 8 and 4 rows (pack_block_*) as `bits` allows, then each row's rest (all of it
 * for the others) one word at a time. */
static void pack_lanes(const float *const *src, int n, int64_t K, int64_t kw, int mr, bool pairs, int bits,
                       float *dst) {
    int blocked = 0; /* rows 0 .. blocked - 1 have words 0 .. done - 1 packed */
    int64_t done = 0;
#ifdef MOEPPC_X86_INTRINSICS
    for (int b = 8; bits && b >= 4; b -= 4)
        for (; blocked + b <= n; blocked += b)
            done = pairs ? pack_block_pairs(src + blocked, b, K, mr, dst + blocked)
                   : bits == 512 ? pack_block_f32(src + blocked, b, K, mr, dst + blocked)
                                 : pack_block_f32_avx2(src + blocked, b, K, mr, dst + blocked);
#else
    (void)bits;
#endif
    for (int i = 0; i < n; i++) {
        int64_t from = i < blocked ? done : 0;
        if (!src[i])
            for (int64_t k = from; k < kw; k++) dst[k * mr + i] = 0.0f; /* zero bits, in either form */
        else if (pairs) pack_pairs(src[i], K, mr, i, from, (uint32_t *)dst);
        else for (int64_t k = from; k < kw; k++) dst[k * mr + i] = k < K ? src[i][k] : 0.0f; /* kpair_b: K even */
    }
}

/* Rows r0 .. r0 + n - 1 of group g as one tile of mr rows for kernel cfg (rows past the group's are
 * zeros; pack_lanes but for AMX tiles and their edges' rounded f32). */
static void pack_rows(const Job *j, int64_t g, int64_t r0, int64_t n, const CgKernelConfig *cfg, float *dst) {
    int64_t rows = j->off[g + 1] - j->off[g], K = j->K, kw = j->kw, own = row_words(cfg, K); /* kw >= own */
    int mr = cfg->mr;
    const float *src[MAX_MR];
    for (int i = 0; i < mr; i++) {
        int64_t s = j->off[g] + r0 + i;
        src[i] = i < n && r0 + i < rows ? j->x + (j->gather ? j->gather[s] : s) * j->ldx : NULL;
    }
    if (cfg->amx) {
        for (int i = 0; i < mr; i++)
            if (src[i]) pack_amx_row(src[i], K, own, mr, i, (uint32_t *)dst);
            else for (int64_t p = 0; p < own; p += 16) memset(dst + p * mr + i * 16, 0, 64);
        return;
    }
    if (cfg->a_bf16 || !j->kern->cfg.a_bf16) { /* (bf16 pairs: their kernels need AVX512-BF16) */
        pack_lanes(src, mr, K, kw, mr, cfg->a_bf16, cfg->a_bf16 ? 512 : j->vec_bits, dst);
        return;
    }
    for (int i = 0; i < mr; i++) /* an AMX kernel's kpair_b edge: A rounded as its tiles' */
        for (int64_t k = 0; k < kw; k++)
            dst[k * mr + i] = src[i] && k < K ? bf16_to_f32(f32_to_bf16(src[i][k])) : 0.0f;
}

/* Where row r of group g lies in job d's packed A: the tile (word k of lane i at [k * *mr + i]), *mr
 * its rows and *lane the row's (pack_a_task's layout: whole tiles, then the cover of the rest). */
static float *packed_tile(const Job *d, int64_t g, int64_t r, int *mr, int *lane) {
    int64_t rows = d->off[g + 1] - d->off[g], whole = rows / d->kern->cfg.mr * d->kern->cfg.mr;
    float *tile = d->ap + (d->tile_off[g] * d->kern->cfg.mr + (r < whole ? r - r % d->kern->cfg.mr : whole)) * d->kw;
    *mr = d->kern->cfg.mr;
    *lane = (int)(r % *mr);
    if (r < whole) return tile;
    const Cover *cv = &d->cover[rows - whole];
    r -= whole;
    for (int c = 0; c < d->n_ks; c++)
        for (int n = 0, k = d->ks[c]->cfg.mr; n < cv->n[c]; n++, tile += k * d->kw, r -= k)
            if (r < k) {
                *mr = k, *lane = (int)r;
                return tile;
            }
    MOE_ASSERT(!"a row past its group's cover");
    return NULL;
}

/* The tiles of group g's last rows in job d's packed A (its cover's): zeros, their lanes past the rows
 * as pack_rows leaves them (the rows' own written later, by the up-projection's epilogue). */
static void zero_padding(const Job *d, int64_t g) {
    int mr = d->kern->cfg.mr;
    int64_t rows = d->off[g + 1] - d->off[g], whole = rows / mr * mr, lanes = 0;
    if (whole == rows) return;
    const Cover *cv = &d->cover[rows - whole];
    for (int c = 0; c < d->n_ks; c++) lanes += cv->n[c] * d->ks[c]->cfg.mr;
    memset(d->ap + (d->tile_off[g] * mr + whole) * d->kw, 0, (size_t)(lanes * d->kw) * sizeof(float));
}

static void pack_a_task(void *ctx, int64_t t, int thread) {
    const Job *j = ctx;
    int64_t g = 0;
    while (j->tile_off[g + 1] <= t) g++;
    if (j->hd && t == j->tile_off[g + 1] - 1) zero_padding(j->hd, g);
    int mr = j->kern->cfg.mr;
    int64_t rows = j->off[g + 1] - j->off[g], r0 = (t - j->tile_off[g]) * mr, K = j->kw;
    float *dst = j->ap + t * mr * K;
    if (r0 + mr <= rows) {
        pack_rows(j, g, r0, mr, &j->kern->cfg, dst);
        return;
    }
    const Cover *cv = &j->cover[rows - r0]; /* the last tile's space: its cover's tiles */
    for (int c = 0; c < j->n_ks; c++)
        for (int n = 0, k = j->ks[c]->cfg.mr; n < cv->n[c]; n++, dst += k * K, r0 += k)
            pack_rows(j, g, r0, k, &j->ks[c]->cfg, dst);
}

/* ---- step 3: epilogues on S[rows, NR] of (group g, rows row0.., panel p) ---------------------- */

/* e^x by Cephes' expf (range reduction by ln 2 in two parts, degree-6 polynomial; relative error
 * below 2e-7 on the clamped range), written branch-free so the row loop below vectorises. */
static inline float exp_poly(float x) {
    x = fminf(fmaxf(x, -87.3f), 88.7f);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    x = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * x + 1.3981999507e-3f;
    p = p * x + 8.3334519073e-3f;
    p = p * x + 4.1665795894e-2f;
    p = p * x + 1.6666665459e-1f;
    p = p * x + 5.0000001201e-1f;
    p = p * x * x + x + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

static void swiglu_scalar(float *restrict h, const float *restrict a, const float *restrict b, int64_t n) {
    for (int64_t c = 0; c < n; c++) h[c] = a[c] / (1.0f + exp_poly(-a[c])) * b[c];
}

#ifdef MOEPPC_X86_INTRINSICS
/* exp_poly on 16 lanes: the same clamp, range reduction and polynomial (FMAs where it had a
 * multiply and an add: within an f32 rounding of it). */
__attribute__((target("avx512f"))) static inline __m512 exp_poly16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.7f));
    __m512 n = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
                                    _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm512_fmadd_ps(n, _mm512_set1_ps(2.12194440e-4f), _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, x, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, x), x, x), _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* silu(x) * y on 16 lanes. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 swiglu16(__m512 x, __m512 y) {
    __m512 d = _mm512_add_ps(_mm512_set1_ps(1.0f), exp_poly16(_mm512_sub_ps(_mm512_setzero_ps(), x)));
    return _mm512_mul_ps(_mm512_div_ps(x, d), y);
}

/* 16 columns a step, the last few under a mask. */
__attribute__((target("avx512f"))) static void swiglu_avx512(float *restrict h, const float *restrict a,
                                                             const float *restrict b, int64_t n) {
    for (int64_t c = 0; c < n; c += 16) {
        __mmask16 m = n - c >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - c)) - 1);
        _mm512_mask_storeu_ps(h + c, m, swiglu16(_mm512_maskz_loadu_ps(m, a + c), _mm512_maskz_loadu_ps(m, b + c)));
    }
}

/* h = silu(a) * b of `rows` (8 or 4; or 1 to 3) rows of S (row i at s + i * nr, a its columns
 * 0 .. nr/2 - 1, b the rest), columns 0 .. ncols - 1, straight into a tile of mr rows at dst as
 * pack_block_pairs or pack_block_f32 would pack them from f32 h (swiglu_avx512's numbers, the same
 * roundings): 32 or 16 columns a step, the last under masks, transposed in registers (or below 4 rows,
 * each row's words scattered); no row of h in memory (cg_moe_ffn). */
__attribute__((target("avx512f,avx512bf16"), always_inline)) static inline void
swiglu_rows(const float *s, int nr, int rows, int64_t ncols, int mr, bool pairs, float *dst) {
    int64_t words = pairs ? (ncols + 1) / 2 : ncols, half = nr / 2;
    const __m512i at = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(mr));
    for (int64_t w = 0; w < words; w += 16) {
        __m512 r[8];
        int n = words - w < 16 ? (int)(words - w) : 16;
        int64_t c = pairs ? 2 * w : w; /* columns c .. c + 15 (and c + 16 .. c + 31 for pairs) under masks */
        __mmask16 m0 = ncols - c >= 16 ? 0xffff : (__mmask16)((1u << (ncols - c)) - 1);
        __mmask16 m1 = !pairs || ncols - c <= 16 ? 0
                       : ncols - c >= 32         ? 0xffff
                                                 : (__mmask16)((1u << (ncols - c - 16)) - 1);
        for (int i = 0; i < rows; i++) {
            const float *a = s + i * nr + c, *b = a + half;
            __m512 lo = swiglu16(_mm512_maskz_loadu_ps(m0, a), _mm512_maskz_loadu_ps(m0, b));
            __m512 hi = m1 ? swiglu16(_mm512_maskz_loadu_ps(m1, a + 16), _mm512_maskz_loadu_ps(m1, b + 16))
                           : _mm512_setzero_ps(); /* (what swiglu16 gives zeros) */
            r[i] = !pairs ? lo : _mm512_castsi512_ps((__m512i)_mm512_cvtne2ps_pbh(hi, lo));
            if (rows < 4) _mm512_mask_i32scatter_ps(dst + w * mr + i, (__mmask16)((1u << n) - 1), at, r[i], 4);
        }
        if (rows >= 4) store_block(r, rows, w, n, mr, dst);
    }
}

/* swiglu_rows with the row counts and forms constants (its rows' vectors then in registers). */
__attribute__((target("avx512f,avx512bf16"))) static void swiglu_block(const float *s, int nr, int rows, int64_t ncols,
                                                                      int mr, bool pairs, float *dst) {
    if (rows == 8 && pairs) swiglu_rows(s, nr, 8, ncols, mr, true, dst);
    else if (rows == 8) swiglu_rows(s, nr, 8, ncols, mr, false, dst);
    else if (rows == 4 && pairs) swiglu_rows(s, nr, 4, ncols, mr, true, dst);
    else if (rows == 4) swiglu_rows(s, nr, 4, ncols, mr, false, dst);
    else swiglu_rows(s, nr, rows, ncols, mr, pairs, dst);
}

/* The same on 8 lanes for AVX2 with FMA (the last few columns under a lane mask). */
__attribute__((target("avx2,fma"))) static inline __m256 exp_poly8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    __m256 n = _mm256_round_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)),
                               _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    x = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, x, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, x), x, x), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma"))) static void swiglu_avx2(float *restrict h, const float *restrict a,
                                                           const float *restrict b, int64_t n) {
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t c = 0; c < n; c += 8) {
        __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - c < 8 ? n - c : 8)), lane);
        __m256 x = _mm256_maskload_ps(a + c, m), y = _mm256_maskload_ps(b + c, m);
        __m256 d = _mm256_add_ps(_mm256_set1_ps(1.0f), exp_poly8(_mm256_sub_ps(_mm256_setzero_ps(), x)));
        _mm256_maskstore_ps(h + c, m, _mm256_mul_ps(_mm256_div_ps(x, d), y));
    }
}
#endif

/* h = silu(a) · b over n columns, for one call of the drivers. The SwiGLU epilogue runs once per
 * FFN pick and intermediate column, so it is written for AVX-512 and for AVX2 + FMA (GCC 12
 * vectorises the scalar loop at neither -O2 nor -O3: without -ffast-math its clamp and floor stay
 * calls or branches), as host_vector_bits allows; the scalar loop elsewhere. */
static swiglu_fn swiglu_for_host(int bits) {
#ifdef MOEPPC_X86_INTRINSICS
    if (bits) return bits == 512 ? swiglu_avx512 : swiglu_avx2;
#endif
    (void)bits;
    return swiglu_scalar;
}

/* EPI_SWIGLU of cg_moe_ffn: the rows' h (columns col0 .. col0 + ncols - 1) packed into DOWN's tiles as
 * its kernels read them (bf16 pairs or f32 words, with the conversion of DOWN's own pack of f32 h), a
 * run of rows of one tile at a time: with AVX512-BF16 straight from S (swiglu_block), else each row's h first
 * in hb (the thread's, MAX_MR x half f32), then pack_lanes.
 * Measured on a Zen 5 (bench_gemm, the 7B layer's grouped GEMMs, bf16 dot product, two threads, the two
 * calls against one cg_moe_ffn in the same run): T = 512 45.1 -> 44.6 ms, T = 2048 174.2 -> 170.0; T = 128
 * alike; T = 64 10.05 -> 10.19 (padded tiles, no edges: rows 5-7 of a tile cost more in blocks of 4 and
 * scattered rows than the f32 rows did; the executor's 7B layer at T = 64, with edges, alike). A block
 * of 8 rows took 64 ns against 52 for the rows' f32 h (swiglu_avx512), the transposes' share. */
static void swiglu_packed(const Job *j, int64_t g, int64_t row0, int64_t rows, int64_t col0, int64_t ncols,
                          const float *s, float *hb) {
    const Job *d = j->hd;
    int nr = j->kern->cfg.nr, half = nr / 2, dmr = d->kern->cfg.mr, mr, lane;
    bool pairs = d->kern->cfg.a_bf16;
    int64_t whole = (d->off[g + 1] - d->off[g]) / dmr * dmr, at = pairs ? col0 / 2 : col0;
    const float *src[MAX_MR];
    float *tile = packed_tile(d, g, row0, &mr, &lane);
    for (int64_t i = 0, n; i < rows; i += n) {
        if (i > 0 && row0 + i < whole) tile += (int64_t)mr * d->kw, lane = 0; /* the next whole tile */
        else if (i > 0) tile = packed_tile(d, g, row0 + i, &mr, &lane);       /* the cover's */
        n = mr - lane < rows - i ? mr - lane : rows - i;
        int64_t blocked = 0; /* in blocks of 8 and 4 and the rest (AVX512-BF16, its target), else through hb */
#ifdef MOEPPC_X86_INTRINSICS
        for (int b = 8; j->bf16 && blocked < n; b = b > 4 ? 4 : (int)(n - blocked))
            for (; blocked + b <= n; blocked += b)
                swiglu_block(s + (i + blocked) * nr, nr, b, ncols, mr, pairs, tile + lane + blocked + at * mr);
#endif
        for (int64_t k = blocked; k < n; k++) {
            src[k - blocked] = hb + (k - blocked) * half;
            j->swiglu(hb + (k - blocked) * half, s + (i + k) * nr, s + (i + k) * nr + half, ncols);
        }
        pack_lanes(src, (int)(n - blocked), ncols, pairs ? (ncols + 1) / 2 : ncols, mr, pairs,
                   pairs ? 512 : j->vec_bits, tile + lane + blocked + at * mr);
    }
}

static void epilogue(const Job *j, int64_t g, int64_t row0, int64_t rows, int64_t p, float *s) {
    int nr = j->kern->cfg.nr, half = nr / 2;
    int64_t slot0 = j->off[g] + row0;
    if (j->epi == EPI_STORE) {
        int64_t col0 = p * nr, ncols = j->b[g].n - col0 < nr ? j->b[g].n - col0 : nr;
        for (int64_t i = 0; i < rows; i++) {
            float *c = j->c + (slot0 + i) * j->ldc + col0;
            const float *si = s + i * nr;
            if (j->accumulate) for (int64_t c_ = 0; c_ < ncols; c_++) c[c_] += si[c_];
            else memcpy(c, si, (size_t)ncols * sizeof *c);
        }
    } else if (j->epi == EPI_SWIGLU) { /* a in S[:, 0..half), b in S[:, half..nr) */
        int64_t col0 = p * half, ncols = j->inter - col0 < half ? j->inter - col0 : half;
        if (j->hd) {
            swiglu_packed(j, g, row0, rows, col0, ncols, s, s + j->mc * nr);
            return;
        }
        for (int64_t i = 0; i < rows; i++) {
            float *h = j->h + (slot0 + i) * j->inter + col0;
            const float *si = s + i * nr;
            j->swiglu(h, si, si + half, ncols);
        }
    } else {
        int64_t col0 = p * nr, ncols = j->d - col0 < nr ? j->d - col0 : nr;
        for (int64_t i = 0; i < rows; i++) {
            float *o = j->out + (int64_t)j->perm[slot0 + i] * j->d + col0;
            float w = j->gate_w[slot0 + i];
            const float *si = s + i * nr;
            for (int64_t c_ = 0; c_ < ncols; c_++) o[c_] += w * si[c_];
        }
    }
}

/* ---- step 2: S = A_tiles . panel over K blocks ------------------------------------------------ */
/* S[rows, NR] of `rows` packed rows: whole tiles, then the cover of the rest. next: the panel (of the
 * same K and width) the caller reads after this one, or NULL.
 *
 * What the kernels prefetch (cg_kernel_fn's pf and pf_shift). Each tile's call prefetches its own
 * weights CG_B_PREFETCH bytes ahead (4 KB; measured on a Zen 2, AVX2, bench_gemm, the 7B layer's
 * grouped GEMMs, 2 threads, two rounds interleaved: bf16 T = 1 3.90 -> 2.91-3.03 ms, T = 64
 * 44.5-45.3 -> 37.2-38.2, T = 512 224-227 -> 213-216; 2 and 4 KB ahead, L1 or L2, alike; 1 KB less;
 * there not for f32 weights, which stream near the read ceiling unaided. On an Intel Xeon with
 * AVX-512, f32 too: bf16 T = 64 45-54 -> 33-41, T = 512 193-224 -> 170-205; f32 T = 64 66-82 ->
 * 53-67, T = 512 192-223 -> 160-227; 2 KB ahead slower, 8 KB alike). But a panel's first tile still
 * read it from memory, faster than one core streams, and its later tiles from L2: on that Xeon (the
 * 7B layer's grouped GEMMs at T = 512, one thread, 7.5 calls a panel) the first call took 48.5
 * thousand cycles against the others' 27.1, 9 % of the time. So in a panel of 3 calls or more, calls
 * 1 .. 2^s (the most that 2^s <= calls - 1 allows) prefetch instead a 2^-s share of the weights read
 * next each (the next panel; the panel's next K block where a K blocking splits it), at 2^-s of the
 * pace they read their own: the next panel is in L2 when its first tile comes
 * (one call prefetching the whole of it stalled on memory, 41 thousand cycles, for 37 in the next
 * first tile). bench_gemm T = 512, one thread, two rounds: f32 317.8, 316.5 -> 289.2, 288.9 ms, bf16
 * in k pairs 306.0, 305.4 -> 289.3, 291.2. Panels of one or two calls (T <= 64 of the 7B's 16
 * experts) keep their own prefetch: one panel ahead in every call was slower at T = 1. */
static void panel_compute(const Job *j, int64_t rows, const float *ap, const char *bpanel, const char *next,
                          float *s) {
    int mr = j->kern->cfg.mr, nr = j->kern->cfg.nr;
    int64_t K = j->K, kc = j->kc > 0 && j->kc < K ? j->kc : (K > 0 ? K : 1), whole = rows / mr * mr, kw = j->kw;
    const Cover *cv = &j->cover[rows - whole];
    /* of 3 calls or more, the calls 1 .. 2^shift prefetch a 2^-shift share of the weights read next
     * each: the panel's next K block, or after its last the next panel's first */
    int calls = (int)(whole / mr), shift = 0;
    for (int c = 0; c < j->n_ks; c++) calls += cv->n[c];
    while (2 << shift <= calls - 1) shift++;
    size_t bsz = dtype_size(j->kern->cfg.b_dtype); /* k pairs: a pair of columns' k0 / 2 rows, as many bytes */
    /* k steps per word of packed A, a tile kind's own (AMX's pairs, its kpair_b edges' f32) */
#define KSTEP(cfg) ((cfg).a_bf16 ? 2 : 1) /* (run() made kc even) */
    for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kc) {
        int64_t kb = K - k0 < kc ? K - k0 : kc, kw0 = k0 / KSTEP(j->kern->cfg);
        size_t at = (size_t)(k0 * nr) * bsz, share = ((size_t)(kb * nr) * bsz >> shift) & ~(size_t)63;
        const char *bp = bpanel + at, *nx = k0 + kb < K ? bp + (size_t)(kb * nr) * bsz : next;
        int call = 0, last = nx && calls >= 3 ? 1 + (1 << shift) : 0; /* calls 1 .. last - 1 prefetch nx */
        /* (bp + CG_B_PREFETCH may lie past the weights' end: formed as an integer, never read) */
        const void *own = (const void *)((uintptr_t)bp + CG_B_PREFETCH);
#define PF(call) ((call) >= 1 && (call) < last ? nx + (size_t)((call) - 1) * share : own)
#define SHIFT(call) ((call) >= 1 && (call) < last ? shift : 0)
        for (int64_t m0 = 0; m0 < whole; m0 += mr, call++)
            j->kern->fn(kb, ap + m0 * kw + kw0 * mr, bp, s + m0 * nr, nr, k0 > 0, PF(call), SHIFT(call));
        int64_t m0 = whole;
        for (int c = 0; c < j->n_ks; c++) {
            const CgKernel *e = j->ks[c];
            for (int n = 0; n < cv->n[c]; n++, m0 += e->cfg.mr, call++)
                e->fn(kb, ap + m0 * kw + k0 / KSTEP(e->cfg) * e->cfg.mr, bp, s + m0 * nr, nr, k0 > 0, PF(call),
                      SHIFT(call));
        }
#undef PF
#undef SHIFT
        if (K == 0) break;
    }
}

/* Panels p_begin .. p_end - 1 of a cg_gemm_multi call over rows r_begin .. r_end - 1: each matrix's
 * through a view of the job with its kernels, weights and output (one group). */
static void multi_chunk(const Job *j, int64_t p_begin, int64_t p_end, int64_t r_begin, int64_t r_end, float *s) {
    Job v;
    int q = -1;
    for (int64_t p = p_begin; p < p_end; p++) {
        if (q < 0 || p >= j->mpanel[q + 1]) {
            for (q = 0; j->mpanel[q + 1] <= p; q++) {}
            v = *j;
            v.b = j->mw[q], v.c = j->mout[q], v.ldc = j->mldc[q];
            v.kern = j->mks[q][0];
            memcpy(v.ks, j->mks[q], sizeof v.ks);
        }
        int64_t lp = p - j->mpanel[q];
        const char *bpanel = (const char *)v.b->data + (size_t)lp * v.b->panel_bytes;
        const char *next = p + 1 < p_end && p + 1 < j->mpanel[q + 1] ? bpanel + v.b->panel_bytes : NULL;
        for (int64_t row0 = r_begin; row0 < r_end; row0 += j->mc) {
            int64_t rows = r_end - row0 < j->mc ? r_end - row0 : j->mc;
            panel_compute(&v, rows, j->ap + row0 * j->kw, bpanel, row0 > r_begin ? NULL : next, s);
            epilogue(&v, 0, row0, rows, lp, s);
        }
    }
}

/* The first panel chunk_task reads after group g's last (p_begin of the next group with rows), or NULL. */
static const char *next_group(const Job *j, int64_t g, int64_t p_begin) {
    for (int64_t h = g + 1; h < j->n_groups; h++)
        if (j->off[h + 1] > j->off[h]) return (const char *)j->b[h].data + (size_t)p_begin * j->b[h].panel_bytes;
    return NULL;
}

/* Part rc of a group's `rows` rows, whole MR-row tiles: rows *begin .. *end - 1 (one part unless
 * row_parts > 1). */
static void part_rows(const Job *j, int64_t rc, int64_t rows, int64_t *begin, int64_t *end) {
    int64_t mr = j->kern->cfg.mr, tiles = (rows + mr - 1) / mr;
    *begin = rc * tiles / j->row_parts * mr;
    *end = (rc + 1) * tiles / j->row_parts * mr;
    *end = *end < rows ? *end : rows;
}

static void chunk_task(void *ctx, int64_t chunk, int thread) {
    const Job *j = ctx;
    int mr = j->kern->cfg.mr;
    int64_t parts = j->n_chunks / j->row_parts, pc = chunk / j->row_parts, rc = chunk % j->row_parts;
    int64_t p_begin = pc * j->n_panels / parts, p_end = (pc + 1) * j->n_panels / parts;
    float *s = j->tiles + (size_t)thread * j->tile_floats;
    int64_t r_begin, r_end; /* this chunk's rows of a group */
    if (j->n_multi) {
        part_rows(j, rc, j->off[1], &r_begin, &r_end);
        multi_chunk(j, p_begin, p_end, r_begin, r_end, s);
        return;
    }
    for (int64_t g = 0; g < j->n_groups; g++) {
        part_rows(j, rc, j->off[g + 1] - j->off[g], &r_begin, &r_end);
        const float *ap_g = j->ap + j->tile_off[g] * mr * j->kw;
        for (int64_t p = p_begin; p < p_end && r_end > r_begin; p++) {
            const char *bpanel = (const char *)j->b[g].data + (size_t)p * j->b[g].panel_bytes;
            const char *next = p + 1 < p_end ? bpanel + j->b[g].panel_bytes : next_group(j, g, p_begin);
            for (int64_t row0 = r_begin; row0 < r_end; row0 += j->mc) {
                int64_t rows = r_end - row0 < j->mc ? r_end - row0 : j->mc;
                panel_compute(j, rows, ap_g + row0 * j->kw, bpanel, row0 > r_begin ? NULL : next, s);
                epilogue(j, g, row0, rows, p, s);
            }
        }
    }
}

static void check_weights(const Job *j, bool swiglu) {
    const CgKernelConfig *cfg = &j->kern->cfg;
    for (int64_t g = 0; g < j->n_groups; g++) {
        const CgPackedB *b = &j->b[g];
        MOE_ASSERT(b->dtype == cfg->b_dtype && b->nr == cfg->nr && b->k == j->K && b->swiglu == swiglu &&
                   b->kpair == cg_kernel_kpair(cfg));
        MOE_ASSERT(b->n == j->b[0].n);
    }
}

/* Edge kernels as CgBlocking describes them: fewer rows than the kernel's, descending, the same
 * panel width and B dtype. */
static void check_edges(const CgKernel *kern, const CgKernel *const *edge) {
    int last = kern->cfg.mr;
    for (int e = 0; e < CG_GEMM_EDGES && edge[e]; e++) {
        const CgKernelConfig *c = &edge[e]->cfg;
        MOE_ASSERT(c->mr < last && c->nr == kern->cfg.nr && c->b_dtype == kern->cfg.b_dtype &&
                   cg_kernel_kpair(c) == cg_kernel_kpair(&kern->cfg) && (!c->amx || kern->cfg.amx));
        last = c->mr;
    }
}

/* A job's plan and the place of its packed A: the cover of a group's last rows, K's blocks, the words
 * of a packed row, row blocks, each group's first tile (in *tile_off) and A's tiles (in room where
 * they fit in room_floats, else in *ap), both grown to fit (asserted, in a borrowed work). */
static void layout(Job *j, const CgBlocking *blk, bool borrowed, int64_t **tile_off, size_t *tile_off_cap,
                   float **ap, size_t *ap_cap, float *room, size_t room_floats) {
    int mr = j->kern->cfg.mr;
    check_edges(j->kern, blk->edge);
    MOE_ASSERT(mr <= MAX_MR);
    cover_plan(j, blk->edge);
    /* a k pair never straddles two K blocks, nor an AMX k block */
    j->kc = j->kern->cfg.amx ? round_up(blk->kc, 32) : blk->kc + (cg_kernel_kpair(&j->kern->cfg) && blk->kc % 2);
    j->kw = call_words(j->kern, blk, j->K);
    if (j->kern->cfg.amx && !cg_amx_grant()) {
        fprintf(stderr, "moeppc: Linux refused this process the AMX tiles its kernels were built for\n");
        abort();
    }
    j->vec_bits = host_vector_bits(&j->bf16); /* (once a call, here: the pool's threads only read it) */
    j->swiglu = swiglu_for_host(j->vec_bits);
    j->mc = row_block(j->kern, blk);
    *tile_off = grow(*tile_off, tile_off_cap, (size_t)(j->n_groups + 1), sizeof(int64_t), borrowed);
    j->tile_off = *tile_off;
    j->tile_off[0] = 0;
    for (int64_t g = 0; g < j->n_groups; g++)
        j->tile_off[g + 1] = j->tile_off[g] + (j->off[g + 1] - j->off[g] + mr - 1) / mr;
    size_t need = (size_t)(j->tile_off[j->n_groups] * mr * j->kw) + 1;
    if (room && need <= room_floats) {
        j->ap = room;
        return;
    }
    *ap = grow(*ap, ap_cap, need, sizeof(float), borrowed);
    j->ap = *ap;
}

/* A job: laid out (but for a prepacked one, which was), A packed, then its panels and rows in chunks
 * over the pool. */
static void run(Job *j, const CgBlocking *blk, CgPool *pool, CgWork *work) {
    if (!j->prepacked)
        layout(j, blk, work->borrowed, &work->tile_off, &work->tile_off_cap, &work->a_packed, &work->a_cap, NULL, 0);
    int mr = j->kern->cfg.mr, threads = cg_pool_threads(pool);
    int64_t n_tiles = j->tile_off[j->n_groups];
    /* a thread's S, and after it for cg_moe_ffn's UP its rows of h (swiglu_packed) */
    j->tile_floats = (size_t)(j->mc * j->kern->cfg.nr + (j->hd ? MAX_MR * (j->kern->cfg.nr / 2) : 0));
    work->tiles = grow(work->tiles, &work->tiles_cap, j->tile_floats * (size_t)threads, sizeof(float), work->borrowed);
    j->tiles = work->tiles;
    /* More chunks than threads balances a noisy machine; few enough that packed A is re-read little.
     * A single matrix with fewer panels than that (a router's 96 or 12 outputs, the constant experts'
     * 4) also splits its rows, in parts of at least MIN_PART_TILES tiles: else its panels alone
     * leave threads idle (one panel: one thread), which a many-core machine feels most. */
    int64_t panel_parts = j->n_panels < 2 * threads ? j->n_panels : 2 * threads;
    j->row_parts = 1;
    bool single = j->n_groups == 1 && j->epi == EPI_STORE;
    size_t a_bytes = (size_t)(n_tiles * mr * j->kw) * sizeof(float);
    size_t b_bytes = (size_t)j->n_panels * j->b[0].panel_bytes;
    if (j->n_multi) {
        b_bytes = 0;
        for (int q = 0; q < j->n_multi; q++) b_bytes += (size_t)j->mw[q]->n_panels * j->mw[q]->panel_bytes;
    }
    if (single && j->n_panels > 1 && b_bytes <= l2_bytes() && a_bytes >= 2 * b_bytes) {
        /* weights that fit in L2 beside a part of many rows (a router's W1): parts of rows (a quarter of
         * L2 of A) over all the panels, so that A is read once and the weights from L2, not A once a
         * panel (the 7B's W1, 160 outputs of 1536, at T = 2048: A 12.6 MB in f32 read four times from
         * memory). (Measured on a Zen 5's 1 MB of L2; weights of 2 MB there, the 0.6B's output
         * projection, ran slower so.) */
        int64_t part_tiles = (int64_t)(l2_bytes() / 4 / ((size_t)(mr * j->kw) * sizeof(float)));
        part_tiles = part_tiles > MIN_PART_TILES ? part_tiles : MIN_PART_TILES;
        panel_parts = 1;
        j->row_parts = (n_tiles + part_tiles - 1) / part_tiles;
        j->row_parts = j->row_parts > 2 * threads ? j->row_parts : 2 * threads < n_tiles ? 2 * threads : n_tiles;
    } else if (single && panel_parts > 0 && panel_parts < 2 * threads) {
        int64_t want = (2 * threads + panel_parts - 1) / panel_parts, most = n_tiles / MIN_PART_TILES;
        j->row_parts = want < most ? want : most > 1 ? most : 1;
    }
    j->n_chunks = panel_parts * j->row_parts;
    if (!j->prepacked) cg_pool_parallel_for(pool, n_tiles, pack_a_task, j);
    cg_pool_parallel_for(pool, j->n_chunks, chunk_task, j);
}

void cg_gemm(const CgKernel *kern, const CgBlocking *blk, CgPool *pool, CgWork *work, int64_t m,
             const float *a, int64_t lda, const CgPackedB *b, float *c, int64_t ldc, bool accumulate) {
    int64_t off[2] = {0, m};
    Job j = {.kern = kern, .K = b->k, .epi = EPI_STORE, .n_groups = 1, .off = off, .x = a, .ldx = lda,
             .b = b, .n_panels = b->n_panels, .c = c, .ldc = ldc, .accumulate = accumulate};
    check_weights(&j, false);
    run(&j, blk, pool, work);
}

bool cg_gemm_packs_alike(const CgKernel *a, const CgBlocking *ba, const CgKernel *b, const CgBlocking *bb) {
    for (int e = -1; e < CG_GEMM_EDGES; e++) {
        const CgKernel *x = e < 0 ? a : ba->edge[e], *y = e < 0 ? b : bb->edge[e];
        if (!x != !y) return false;
        if (x && (x->cfg.mr != y->cfg.mr || x->cfg.a_bf16 != y->cfg.a_bf16 || x->cfg.amx != y->cfg.amx ||
                  cg_kernel_kpair(&x->cfg) != cg_kernel_kpair(&y->cfg)))
            return false;
    }
    return b->cfg.nr <= a->cfg.nr;
}

void cg_gemm_multi_kernels(const CgKernel *const *kern, const CgBlocking *const *blk, CgPool *pool, CgWork *work,
                           int64_t m, const float *a, int64_t lda, int n, const CgPackedB *const *b, float *const *c,
                           const int64_t *ldc) {
    MOE_ASSERT(n >= 1 && n <= CG_GEMM_MULTI);
    int64_t off[2] = {0, m};
    Job j = {.kern = kern[0], .K = b[0]->k, .epi = EPI_STORE, .n_groups = 1, .off = off, .x = a, .ldx = lda,
             .b = b[0], .n_multi = n};
    for (int q = 0; q < n; q++) {
        MOE_ASSERT(cg_gemm_packs_alike(kern[0], blk[0], kern[q], blk[q]));
        check_edges(kern[q], blk[q]->edge);
        j.kern = kern[q], j.b = b[q]; /* each checked as the job's weights; their n may differ */
        check_weights(&j, false);
        j.mks[q][0] = kern[q];
        for (int e = 0; e < CG_GEMM_EDGES; e++) j.mks[q][1 + e] = blk[q]->edge[e];
        j.mw[q] = b[q], j.mout[q] = c[q], j.mldc[q] = ldc[q];
        j.mpanel[q + 1] = j.mpanel[q] + b[q]->n_panels;
    }
    j.kern = kern[0], j.b = b[0], j.n_panels = j.mpanel[n];
    run(&j, blk[0], pool, work);
}

void cg_gemm_multi(const CgKernel *kern, const CgBlocking *blk, CgPool *pool, CgWork *work, int64_t m,
                   const float *a, int64_t lda, int n, const CgPackedB *const *b, float *const *c,
                   const int64_t *ldc) {
    const CgKernel *ks[CG_GEMM_MULTI];
    const CgBlocking *bs[CG_GEMM_MULTI];
    for (int q = 0; q < n && q < CG_GEMM_MULTI; q++) ks[q] = kern, bs[q] = blk;
    cg_gemm_multi_kernels(ks, bs, pool, work, m, a, lda, n, b, c, ldc);
}

static Job up_job(const CgKernel *kern, const CgRouting *r, const float *x, const CgPackedB *w_up, float *h) {
    return (Job){.kern = kern, .K = w_up[0].k, .epi = EPI_SWIGLU, .n_groups = r->n_groups, .off = r->off,
                 .gather = r->perm, .x = x, .ldx = w_up[0].k, .b = w_up, .n_panels = w_up[0].n_panels, .h = h,
                 .inter = w_up[0].n / 2};
}

void cg_moe_up_swiglu(const CgKernel *kern, const CgBlocking *blk, CgPool *pool, CgWork *work,
                      const CgRouting *r, const float *x, const CgPackedB *w_up, float *h) {
    if (r->n_groups == 0) return;
    Job j = up_job(kern, r, x, w_up, h);
    check_weights(&j, true);
    run(&j, blk, pool, work);
}

static Job down_job(const CgKernel *kern, const CgRouting *r, const float *h, const CgPackedB *w_down, float *out) {
    return (Job){.kern = kern, .K = w_down[0].k, .epi = EPI_SCATTER, .n_groups = r->n_groups, .off = r->off,
                 .x = h, .ldx = w_down[0].k, .b = w_down, .n_panels = w_down[0].n_panels, .perm = r->perm,
                 .gate_w = r->gate_w, .out = out, .d = w_down[0].n};
}

void cg_moe_down_scatter(const CgKernel *kern, const CgBlocking *blk, CgPool *pool, CgWork *work,
                         const CgRouting *r, const float *h, const CgPackedB *w_down, float *out) {
    if (r->n_groups == 0) return;
    Job j = down_job(kern, r, h, w_down, out);
    check_weights(&j, false);
    run(&j, blk, pool, work);
}

bool cg_moe_ffn_packs_h(const CgKernel *down, const CgBlocking *blk, int64_t inter) {
    const CgKernelConfig *c = &down->cfg;
    if (c->amx || call_words(down, blk, inter) != (c->a_bf16 ? (inter + 1) / 2 : inter)) return false;
    for (int e = 0; e < CG_GEMM_EDGES && blk->edge[e]; e++)
        if (blk->edge[e]->cfg.a_bf16 != c->a_bf16) return false;
    return true;
}

void cg_moe_ffn(const CgKernel *up, const CgBlocking *up_blk, const CgKernel *down, const CgBlocking *down_blk,
                CgPool *pool, CgWork *work, const CgRouting *r, const float *x, const CgPackedB *w_up,
                const CgPackedB *w_down, float *out, float *room, size_t room_floats) {
    if (r->n_groups == 0) return;
    MOE_ASSERT(w_down[0].k == w_up[0].n / 2 && cg_moe_ffn_packs_h(down, down_blk, w_down[0].k));
    Job d = down_job(down, r, NULL, w_down, out);
    check_weights(&d, false);
    layout(&d, down_blk, work->borrowed, &work->h_tile_off, &work->h_tile_off_cap, &work->h_packed, &work->h_cap,
           room, room_floats);
    d.prepacked = true;
    Job u = up_job(up, r, x, w_up, NULL);
    u.hd = &d;
    check_weights(&u, true);
    run(&u, up_blk, pool, work);
    run(&d, down_blk, pool, work);
}
