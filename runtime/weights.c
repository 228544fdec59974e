/* weights.c — the WeightSet (lookup, ownership), seeded random weights, and checking a checkpoint
 * against a spec's tensor list.
 *
 * Random weights (weights_random), the distribution the README quotes:
 *   every tensor of spec_tensors(spec), in that order and in the spec's dtype, gets its own generator
 *       rng_seed(&r, seed ^ hash_str(name))          (splitmix64; hash_str is FNV-1a 64)
 *   and fills its elements in row-major order with u = 2·rng_uniform(&r) − 1, uniform in [-1, 1)
 *   (rng_uniform: the top 53 bits of rng_next / 2^53), scaled by the tensor's kind:
 *       TK_EMBED, TK_CONST_VEC                     u
 *       TK_NORM                                    1 + 0.1·u
 *       every matrix (attention, router, gate map,
 *       expert up/down, constant gate, dense MLP,
 *       lm_head)                                   u / sqrt(fan_in)   (PyTorch nn.Linear's bound)
 *   computed in double, then rounded to float and from float to the dtype, each to nearest even
 *   (exactly dtype_store). A tensor's values depend only on the seed and its name, so adding or
 *   removing other tensors does not change it.
 * The weights live in one 64-byte-aligned block, each tensor at a 64-byte-aligned offset, its pages
 * untouched until the tensor is read whole (weights_data): a weight its reader packs, row by row
 * from the generator (weights_make_rows), never occupies them.
 */
#include "runtime/weights_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h> /* the random weights' draws, four at a time, behind a CPU check */
#define MOEPPC_X86_INTRINSICS 1
#endif

static const void *random_again(const WeightSet *w, const Tensor *t);
static void random_release(const WeightSet *w, const void *data, size_t bytes);

/* ---- the WeightSet ------------------------------------------------------------------------------ */
WeightSet *ws_new(const char *origin)
{
    WeightSet *w = xcalloc(1, sizeof *w);
    w->origin = xstrdup(origin);
    return w;
}

void ws_push(WeightSet *w, const Tensor *t)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 64;
        w->tensors = xrealloc(w->tensors, (size_t)w->cap * sizeof *w->tensors);
    }
    w->tensors[w->n++] = *t;
}

void ws_add_mapping(WeightSet *w, void *base, size_t len, char *ident)
{
    w->maps = xrealloc(w->maps, (size_t)(w->n_maps + 1) * sizeof *w->maps);
    w->maps[w->n_maps++] = (WsMapping){base, len, ident};
}

void ws_add_copy(WeightSet *w, void *block)
{
    w->copies = xrealloc(w->copies, (size_t)(w->n_copies + 1) * sizeof *w->copies);
    w->copies[w->n_copies++] = block;
}

static int ws_name_cmp(const void *a, const void *b)
{
    return strcmp(((const WsName *)a)->name, ((const WsName *)b)->name);
}

int ws_build_index(WeightSet *w)
{
    free(w->by_name);
    w->by_name = xmalloc((size_t)(w->n ? w->n : 1) * sizeof *w->by_name);
    for (int i = 0; i < w->n; i++) w->by_name[i] = (WsName){w->tensors[i].name, i};
    qsort(w->by_name, (size_t)w->n, sizeof *w->by_name, ws_name_cmp);
    for (int i = 1; i < w->n; i++)
        if (strcmp(w->by_name[i].name, w->by_name[i - 1].name) == 0) return w->by_name[i].index;
    return -1;
}

const Tensor *weights_find(const WeightSet *w, const char *name)
{
    if (!w || !w->by_name) return NULL;
    WsName key = {name, 0};
    const WsName *hit = bsearch(&key, w->by_name, (size_t)w->n, sizeof key, ws_name_cmp);
    return hit ? &w->tensors[hit->index] : NULL;
}

static int ws_parts_cmp(const void *a, const void *b)
{
    return strcmp(((const WsParts *)a)->name, ((const WsParts *)b)->name);
}

void ws_sort_parts(WeightSet *w)
{
    if (w->n_parts) qsort(w->parts, (size_t)w->n_parts, sizeof *w->parts, ws_parts_cmp);
}

bool weights_parts(const WeightSet *w, const Tensor *t, const void *part[2], size_t *part0_bytes)
{
    if (t->data || !w->n_parts) return false;
    WsParts key = {.name = t->name};
    const WsParts *p = bsearch(&key, w->parts, (size_t)w->n_parts, sizeof *w->parts, ws_parts_cmp);
    if (!p) return false;
    part[0] = p->part[0], part[1] = p->part[1], *part0_bytes = p->part0_bytes;
    return true;
}

const void *weights_data(const WeightSet *w, const Tensor *t, RtError *err)
{
    const void *part[2];
    size_t lo;
    if (!t->data && w->regen) return random_again(w, t);
    if (!weights_parts(w, t, part, &lo)) return t->data;
    void *whole = aligned_alloc(64, (t->nbytes + 63) & ~(size_t)63);
    if (!whole) {
        rt_errorf(err, w->origin, "tensor '%s': cannot allocate %zu bytes to stack its two parts", t->name, t->nbytes);
        return NULL;
    }
    memcpy(whole, part[0], lo);
    memcpy((char *)whole + lo, part[1], t->nbytes - lo);
    ws_add_copy((WeightSet *)w, whole); /* (the set owns its tensors: filling one in is its business) */
    ((Tensor *)t)->data = whole;
    return whole;
}

bool weights_release_frees(const WeightSet *w) { return w && w->regen; }

int weights_count(const WeightSet *w) { return w ? w->n : 0; }

const Tensor *weights_at(const WeightSet *w, int i) { return w && i >= 0 && i < w->n ? &w->tensors[i] : NULL; }

void weights_release(const WeightSet *w, const void *data, size_t bytes)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo = (uintptr_t)data, hi = lo + bytes;
    for (int i = 0; i < w->n_maps; i++) {
        uintptr_t base = (uintptr_t)w->maps[i].base;
        if (lo < base || hi > base + w->maps[i].len) continue;
        uintptr_t a = (lo + page - 1) / page * page, b = hi / page * page; /* (a neighbour's pages stay) */
        if (a < b) madvise((void *)a, b - a, MADV_DONTNEED); /* only a hint: failure changes nothing */
        return;
    }
    if (w->regen) random_release(w, data, bytes);
}

void weights_close(WeightSet *w)
{
    if (!w) return;
    for (int i = 0; i < w->n; i++) free(w->tensors[i].name);
    for (int i = 0; i < w->n_maps; i++) munmap(w->maps[i].base, w->maps[i].len), free(w->maps[i].ident);
    free(w->tensors);
    free(w->by_name);
    free(w->maps);
    for (int i = 0; i < w->n_copies; i++) free(w->copies[i]);
    free(w->copies);
    free(w->parts);
    free(w->regen);
    free(w->owned);
    free(w->origin);
    free(w);
}

/* ---- messages -------------------------------------------------------------------------------------- */
void rt_errorf(RtError *err, const char *where, const char *fmt, ...)
{
    char text[sizeof err->msg];
    int k = snprintf(text, sizeof text, "%s: error: ", where);
    if (k < 0 || (size_t)k >= sizeof text) k = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text + k, sizeof text - (size_t)k, fmt, ap);
    va_end(ap);
    /* names come from checkpoints and paths from users: one printable line, whatever they hold */
    str_escape(text, strlen(text), err->msg, sizeof err->msg);
}

void rt_format_type(char *buf, size_t len, moe_dtype dt, int ndim, const int64_t *shape)
{
    size_t k = (size_t)snprintf(buf, len, "%s [", dtype_name(dt));
    for (int i = 0; i < ndim && k < len; i++)
        k += (size_t)snprintf(buf + k, len - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < len) snprintf(buf + k, len - k, "]");
}

/* ---- random weights ----------------------------------------------------------------------------------- */
/* v = a + (b·u)/c reproduces each kind's formula exactly: (0, 1, 1) → u; (1, 0.1, 1) → 1 + 0.1·u;
 * (0, 1, sqrt(fan_in)) → u / sqrt(fan_in). */
typedef struct {
    double a, b, c;
} FillScale;

static FillScale fill_scale(const TensorDesc *d)
{
    switch (d->kind) {
    case TK_EMBED:
    case TK_CONST_VEC: return (FillScale){0.0, 1.0, 1.0};
    case TK_NORM: return (FillScale){1.0, 0.1, 1.0};
    case TK_ATTN:
    case TK_ROUTER:
    case TK_GATE_MAP:
    case TK_EXPERT_UP:
    case TK_EXPERT_DOWN:
    case TK_CONST_GATE:
    case TK_DENSE:
    case TK_LM_HEAD: break;
    }
    return (FillScale){0.0, 1.0, sqrt((double)d->fan_in)};
}

/* f32_to_f16 (support.c) decides rounding with a data-dependent branch that mispredicts about half
 * the time (3x slower than bf16 here). For results in f16's normal range this is the same
 * round-to-nearest-even without the branch (the bf16 trick, exponent rebased from 127 to 15:
 * 112 << 23 = 0x38000000); subnormals, overflow and NaN still go through f32_to_f16. */
static inline uint16_t fill_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t abs = u & 0x7fffffffu;
    if (abs < 0x38800000u || abs >= 0x477ff000u) return f32_to_f16(f);
    uint32_t m = abs - 0x38000000u;
    m += 0xfffu + ((m >> 13) & 1u);
    return (uint16_t)(((u >> 16) & 0x8000u) | (m >> 13));
}

#define FILL_BLOCK 256
#ifdef MOEPPC_X86_INTRINSICS
/* a · c mod 2^64 in each 64-bit lane (AVX2 multiplies 32-bit halves only) */
__attribute__((target("avx2"))) static inline __m256i mul64c(__m256i a, uint64_t c)
{
    __m256i cl = _mm256_set1_epi64x((long long)(c & 0xffffffffu)), ch = _mm256_set1_epi64x((long long)(c >> 32));
    __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(a, 32), cl), _mm256_mul_epu32(a, ch));
    return _mm256_add_epi64(_mm256_mul_epu32(a, cl), _mm256_slli_epi64(cross, 32));
}

/* The FILL_BLOCK values after state s, bit for bit the scalar loops': splitmix64 four lanes at a time
 * (draw j from state s + (j + 1)·γ), its top 53 bits made a double exactly in two halves (each below
 * 2^52: OR'd into 2^52's mantissa, 2^52 taken away; their sum is below 2^53), scaled by 2^-52 (exact)
 * and 1 taken away (u = 2 · rng_uniform − 1, the scalar loop's one rounding), then v = a + (b·u)/c in
 * doubles, rounded to f32 (f), and for bf16 to nearest even (h: every value is finite). The scalar
 * loops ran 4 ns a value on a Zen 3, with the page faults most of a random model's start-up. */
__attribute__((target("avx2"))) static void fill_block_avx2(uint64_t s, FillScale k, float *f, uint16_t *h)
{
    const uint64_t g = 0x9e3779b97f4a7c15ull;
    __m256i st = _mm256_set_epi64x((long long)(s + 4 * g), (long long)(s + 3 * g), (long long)(s + 2 * g),
                                   (long long)(s + g));
    const __m256i step = _mm256_set1_epi64x((long long)(4 * g)), magic = _mm256_set1_epi64x(0x4330000000000000ll);
    const __m256i low32 = _mm256_set1_epi64x(0xffffffffll);
    const __m256d two52 = _mm256_set1_pd(4503599627370496.0), two32 = _mm256_set1_pd(4294967296.0);
    const __m256d ulp = _mm256_set1_pd(1.0 / 4503599627370496.0), one = _mm256_set1_pd(1.0);
    const __m256d a = _mm256_set1_pd(k.a), b = _mm256_set1_pd(k.b), c = _mm256_set1_pd(k.c);
    for (int j = 0; j < FILL_BLOCK; j += 4, st = _mm256_add_epi64(st, step)) {
        __m256i z = mul64c(_mm256_xor_si256(st, _mm256_srli_epi64(st, 30)), 0xbf58476d1ce4e5b9ull);
        z = mul64c(_mm256_xor_si256(z, _mm256_srli_epi64(z, 27)), 0x94d049bb133111ebull);
        __m256i x = _mm256_srli_epi64(_mm256_xor_si256(z, _mm256_srli_epi64(z, 31)), 11);
        __m256d hi = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_srli_epi64(x, 32), magic)), two52);
        __m256d lo = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(x, low32), magic)), two52);
        __m256d u = _mm256_sub_pd(_mm256_mul_pd(_mm256_add_pd(_mm256_mul_pd(hi, two32), lo), ulp), one);
        _mm_storeu_ps(f + j, _mm256_cvtpd_ps(_mm256_add_pd(a, _mm256_div_pd(_mm256_mul_pd(b, u), c))));
    }
    for (int j = 0; h && j < FILL_BLOCK; j += 8) {
        __m256i w = _mm256_loadu_si256((const __m256i *)(f + j));
        __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(w, 16), _mm256_set1_epi32(1));
        w = _mm256_srli_epi32(_mm256_add_epi32(w, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
        __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(w, w), 0x08); /* lanes 0, 2: the 8 words */
        _mm_storeu_si128((__m128i *)(h + j), _mm256_castsi256_si128(packed));
    }
}

/* A block's f16 values from its f32 ones (fill_f16's, bit for bit). */
__attribute__((target("avx2,f16c"))) static void halves_f16c(const float *f, uint16_t *h)
{
    for (int j = 0; j < FILL_BLOCK; j += 8)
        _mm_storeu_si128((__m128i *)(h + j),
                         _mm256_cvtps_ph(_mm256_loadu_ps(f + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
#endif

/* How the draws go: FILL_WIDE four at a time (AVX2), FILL_F16C also f16 rounded eight at a time
 * (vcvtps2ph, to nearest even like f32_to_f16, subnormals included), unless MOEPPC_ISA asks for SSE
 * (the scalar loops, so that a test can compare the two); else FILL_SCALAR. The values are the same
 * either way. (Read from the pool's threads: the CPU's answer is kept in an atomic.) */
enum { FILL_SCALAR, FILL_WIDE, FILL_F16C };

static int fill_isa(void)
{
#ifdef MOEPPC_X86_INTRINSICS
    static _Atomic int have = -1;
    int h = have;
    if (h < 0) {
        unsigned a, b, c = 0, d;
        __builtin_cpu_init();
        h = !__builtin_cpu_supports("avx2") ? FILL_SCALAR
            : __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) ? FILL_F16C : FILL_WIDE;
        have = h;
    }
    const char *isa = getenv("MOEPPC_ISA");
    return isa && strcmp(isa, "sse") == 0 ? FILL_SCALAR : h;
#else
    return FILL_SCALAR;
#endif
}

/* Elements i0 .. i0 + count - 1 of a tensor into dst (its generator seeked there: any part can be
 * made alone, where its reader wants it), FILL_BLOCK at a time: the draws first (a chain through the
 * generator's state; four lanes at a time on AVX2), then the values, whose divisions are independent
 * of each other (whole blocks, so the compiler vectorises the loop at -O2: a last block's extra
 * values are computed and not stored), then the conversion, one loop per dtype (with F16C, f16's
 * eight at a time). */
static void fill_part(void *dst, moe_dtype dt, size_t i0, size_t count, uint64_t seed, FillScale k)
{
    moe_rng r;
    rng_seek(&r, seed, i0);
    double u[FILL_BLOCK];
    float f[FILL_BLOCK];
    uint16_t h[FILL_BLOCK];
    int isa = fill_isa();
    (void)isa, (void)h; /* (no use off x86) */
    for (size_t b = 0; b < count; b += FILL_BLOCK) {
        size_t n = count - b < FILL_BLOCK ? count - b : FILL_BLOCK;
#ifdef MOEPPC_X86_INTRINSICS
        if (isa != FILL_SCALAR) {
            fill_block_avx2(r.s, k, f, dt == DT_BF16 ? h : NULL);
            r.s += FILL_BLOCK * 0x9e3779b97f4a7c15ull;
            if (dt == DT_F16 && isa == FILL_F16C) halves_f16c(f, h);
            if (dt == DT_BF16 || (dt == DT_F16 && isa == FILL_F16C)) {
                memcpy((uint16_t *)dst + b, h, n * sizeof *h);
                continue;
            }
        } else
#endif
        {
            for (size_t i = 0; i < FILL_BLOCK; i++) u[i] = 2.0 * rng_uniform(&r) - 1.0;
            for (size_t i = 0; i < FILL_BLOCK; i++) f[i] = (float)(k.a + (k.b * u[i]) / k.c);
        }
        if (dt == DT_F32) {
            memcpy((float *)dst + b, f, n * sizeof *f);
        } else if (dt == DT_BF16) {
            uint16_t *p = (uint16_t *)dst + b;
            for (size_t i = 0; i < n; i++) p[i] = f32_to_bf16(f[i]);
        } else {
            MOE_ASSERT(dt == DT_F16);
            uint16_t *p = (uint16_t *)dst + b;
            for (size_t i = 0; i < n; i++) p[i] = fill_f16(f[i]);
        }
    }
}

/* The fill in parts of FILL_PART elements, a pool task a part: a 7B model's 7.6 G values took a
 * minute on one core, and the page faults of first touch parallelise too. */
#define FILL_PART ((size_t)1 << 20)
typedef struct FillJob {
    void *dst;    /* where element first goes */
    moe_dtype dt;
    size_t first, count;
    uint64_t seed;
    FillScale k;
} FillJob;
typedef struct {
    const FillJob *jobs;
    size_t *first; /* [n + 1] each job's first part */
} FillWork;

static void fill_task(void *ctx, int64_t part, int thread)
{
    (void)thread;
    const FillWork *fw = ctx;
    int j = 0;
    while (fw->first[j + 1] <= (size_t)part) j++;
    const FillJob *b = &fw->jobs[j];
    size_t i0 = ((size_t)part - fw->first[j]) * FILL_PART, n = b->count - i0 < FILL_PART ? b->count - i0 : FILL_PART;
    fill_part((char *)b->dst + i0 * dtype_size(b->dt), b->dt, b->first + i0, n, b->seed, b->k);
}

/* Every job, on a pool of the CPUs this process may use (up to 8; none for a single part: a norm's
 * few values). The values do not depend on it. */
static void fill_all(const FillJob *jobs, int n)
{
    FillWork fw = {jobs, xmalloc((size_t)(n + 1) * sizeof(size_t))};
    fw.first[0] = 0;
    for (int j = 0; j < n; j++) fw.first[j + 1] = fw.first[j] + (jobs[j].count + FILL_PART - 1) / FILL_PART;
    int cpus = cpus_available();
    /* (not inside a pool's task, the CPU backend's packing by rows: its threads are the CPUs already,
     * and a pool of this call's own would only take them from each other) */
    if (fw.first[n] > 1 && cpus > 1 && !cg_pool_in_task()) {
        CgPool *pool = cg_pool_new(cpus < 8 ? cpus : 8);
        cg_pool_parallel_for(pool, (int64_t)fw.first[n], fill_task, &fw);
        cg_pool_free(pool);
    } else {
        for (size_t part = 0; part < fw.first[n]; part++) fill_task(&fw, (int64_t)part, 0);
    }
    free(fw.first);
}

/* Byte offsets of each tensor in the block (64-byte aligned), the tensors under 64 KiB first,
 * together: those a CPU makes whole (norms, constants) then share their huge pages, where in the
 * spec's order each would take a 2 MiB page of its own between two weights that are never made;
 * false on int64 overflow. */
static bool random_plan(const TensorDesc *d, int n, size_t *offs, size_t *total)
{
    const int64_t small = (int64_t)64 << 10;
    int64_t off = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            int64_t bytes = (int64_t)dtype_size(d[i].dtype);
            for (int j = 0; j < d[i].ndim; j++)
                if (!i64_mul_ok(bytes, d[i].shape[j], &bytes)) return false;
            if ((bytes < small) != (pass == 0)) continue;
            offs[i] = (size_t)off;
            if (!i64_add_ok(off, bytes, &off) || !i64_add_ok(off, 63, &off)) return false;
            off &= ~(int64_t)63;
        }
    *total = (size_t)off;
    return true;
}

size_t weights_random_bytes(const ModelSpec *s)
{
    int n;
    TensorDesc *d = spec_tensors(s, &n);
    size_t *offs = xmalloc((size_t)(n ? n : 1) * sizeof *offs), total = 0;
    if (!random_plan(d, n, offs, &total)) total = 0;
    free(offs);
    free(d);
    return total;
}

/* A random tensor not made yet, or whose pages have been released (random_release), made where it
 * lies: the same values every time, its generator being its own (the readers that go through
 * weights_data never see the gap). */
static const void *random_again(const WeightSet *w, const Tensor *t)
{
    MOE_ASSERT(t >= w->tensors && t < w->tensors + w->n);
    const FillJob *job = &w->regen[t - w->tensors];
    fill_all(job, 1);
    ((Tensor *)t)->data = job->dst; /* (the set owns its tensors: filling one in is its business) */
    return job->dst;
}

/* A whole random tensor no longer needed (weights_release): its whole pages leave the process
 * (MADV_DONTNEED: an anonymous page reads zero when touched again, so data is NULL until
 * weights_data makes it again), and stay out of transparent huge pages, which would fill them in. A
 * part of one, or bytes of no tensor, are left alone. */
static void random_release(const WeightSet *w, const void *data, size_t bytes)
{
    Tensor *t = NULL;
    for (int i = 0; i < w->n && data && !t; i++) /* (once a tensor at most: a model's thousand, microseconds) */
        if (w->tensors[i].data == data) t = &w->tensors[i];
    if (!t || bytes == 0 || t->nbytes != bytes) return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo = (uintptr_t)data, hi = lo + bytes;
    uintptr_t a = (lo + page - 1) / page * page, b = hi / page * page; /* (a neighbour's pages stay) */
    if (a < b) {
        madvise((void *)a, b - a, MADV_NOHUGEPAGE); /* only hints: failure changes nothing but memory */
        madvise((void *)a, b - a, MADV_DONTNEED);
    }
    t->data = NULL;
}

static bool random_fits(const ModelSpec *s, size_t total, RtError *err)
{
    double have = mem_available_bytes(), limit = 0.8 * have;
    if ((double)total <= limit) return true;
    rt_errorf(err, s->name, "random weights need %.1f MB, more than the %.1f MB allowed (80%% of the %.1f MB of "
              "memory available); use a smaller spec", (double)total / 1e6, limit / 1e6, have / 1e6);
    return false;
}

static bool random_set(const ModelSpec *s, uint64_t seed, bool check_fit, WeightSet **out, RtError *err);

bool weights_random(const ModelSpec *s, uint64_t seed, WeightSet **out, RtError *err)
{
    return random_set(s, seed, true, out, err);
}

bool weights_random_lazy(const ModelSpec *s, uint64_t seed, WeightSet **out, RtError *err)
{
    return random_set(s, seed, false, out, err);
}

static bool random_set(const ModelSpec *s, uint64_t seed, bool check_fit, WeightSet **out, RtError *err)
{
    *out = NULL;
    err->msg[0] = '\0';
    int n;
    TensorDesc *d = spec_tensors(s, &n);
    size_t *offs = xmalloc((size_t)(n ? n : 1) * sizeof *offs), total = 0;
    bool ok = random_plan(d, n, offs, &total);
    if (!ok) rt_errorf(err, s->name, "random weights need more than 2^63 bytes");
    ok = ok && (!check_fit || random_fits(s, total, err));
    void *block = ok ? alloc_large(total) : NULL; /* (huge pages: 4 KiB faults cost as much as the values) */
    if (ok && !block) {
        rt_errorf(err, s->name, "cannot allocate %.1f MB for random weights", (double)total / 1e6);
        ok = false;
    }
    if (ok) {
        char origin[96];
        snprintf(origin, sizeof origin, "random weights (seed %llu)", (unsigned long long)seed);
        WeightSet *w = ws_new(origin);
        w->owned = block;
        FillJob *jobs = xmalloc((size_t)(n ? n : 1) * sizeof *jobs);
        for (int i = 0; i < n; i++) {
            Tensor t = {.name = xstrdup(d[i].name), .dtype = d[i].dtype, .ndim = d[i].ndim,
                        .shape = {d[i].shape[0], d[i].shape[1], 0, 0}, .data = NULL}; /* (made when read) */
            size_t count = d[i].ndim == 2 ? (size_t)(d[i].shape[0] * d[i].shape[1]) : (size_t)d[i].shape[0];
            t.nbytes = count * dtype_size(t.dtype);
            jobs[i] = (FillJob){(char *)block + offs[i], t.dtype, 0, count, seed ^ hash_str(d[i].name), fill_scale(&d[i])};
            ws_push(w, &t);
        }
        w->regen = jobs;
        MOE_ASSERT(ws_build_index(w) < 0); /* spec_tensors names are unique */
        *out = w;
    }
    free(offs);
    free(d);
    return ok;
}

bool weights_made_on_read(const WeightSet *w, const Tensor *t) { return w && w->regen && !t->data; }

void weights_make_rows(const WeightSet *w, const Tensor *t, int64_t row0, int64_t rows, void *dst)
{
    MOE_ASSERT(w->regen && t >= w->tensors && t < w->tensors + w->n && t->ndim >= 1);
    if (rows == 0) return; /* (nor a tensor of no rows to divide by) */
    size_t cols = (size_t)(t->nbytes / dtype_size(t->dtype)) / (size_t)t->shape[0];
    MOE_ASSERT(row0 >= 0 && rows >= 0 && row0 + rows <= t->shape[0]);
    FillJob job = w->regen[t - w->tensors];
    job.dst = dst, job.first = (size_t)row0 * cols, job.count = (size_t)rows * cols;
    fill_all(&job, 1);
}

/* The values random weights are made with: change it whenever the generator's values change (the
 * identity below keys panel caches by it). */
#define RANDOM_VALUES_VERSION 1

/* " file … @ OFFSET +BYTES": where bytes at p lie in one of w's file mappings; false if in none. */
static bool mapped_at(const WeightSet *w, const void *p, size_t bytes, char *buf, size_t n)
{
    uintptr_t lo = (uintptr_t)p;
    for (int i = 0; i < w->n_maps; i++) {
        uintptr_t base = (uintptr_t)w->maps[i].base;
        if (lo < base || lo - base > w->maps[i].len || bytes > w->maps[i].len - (lo - base)) continue;
        unsigned long long at = lo - base;
        return (size_t)snprintf(buf, n, " %s @ %llu +%zu", w->maps[i].ident, at, bytes) < n;
    }
    return false;
}

bool weights_identity(const WeightSet *w, const Tensor *t, char *buf, size_t n)
{
    if (!w || t < w->tensors || t >= w->tensors + w->n || n < 2) return false;
    char type[96];
    rt_format_type(type, sizeof type, t->dtype, t->ndim, t->shape);
    size_t k = (size_t)snprintf(buf, n, "%zu:%s %s from", strlen(t->name), t->name, type);
    if (k >= n) return false;
    if (w->regen) {
        const FillJob *j = &w->regen[t - w->tensors];
        return (size_t)snprintf(buf + k, n - k, " random v%d seed %016llx count %zu scale %a %a %a",
                                RANDOM_VALUES_VERSION, (unsigned long long)j->seed, j->count, j->k.a, j->k.b,
                                j->k.c) < n - k;
    }
    const void *part[2];
    size_t lo;
    if (!weights_parts(w, t, part, &lo)) return mapped_at(w, t->data, t->nbytes, buf + k, n - k);
    if (!mapped_at(w, part[0], lo, buf + k, n - k)) return false;
    k += strlen(buf + k);
    return mapped_at(w, part[1], t->nbytes - lo, buf + k, n - k);
}

bool rt_sequences_ok(const int32_t *seq, int64_t T, int n, RtError *err)
{
    for (int64_t t = 0; seq && t < T; t++) {
        if (seq[t] < 0 || seq[t] >= n) {
            snprintf(err->msg, sizeof err->msg, "sequence %d of token %lld is outside [0, %d) (the model's sequences)",
                     seq[t], (long long)t, n);
            return false;
        }
    }
    return true;
}

bool rt_copy_ok(int from, int to, int64_t positions, int n, int64_t max_positions, RtError *err)
{
    if (from >= 0 && from < n && to >= 0 && to < n && positions >= 0 && positions <= max_positions) return true;
    snprintf(err->msg, sizeof err->msg, "copying %lld positions of sequence %d to sequence %d: outside the %d sequences "
             "of %lld positions", (long long)positions, from, to, n, (long long)max_positions);
    return false;
}

/* ---- checking a checkpoint against a spec -------------------------------------------------------------- */
#define CHECK_MAX_LINES 20

typedef struct {
    char   lines[sizeof(((RtError *)0)->msg)];
    size_t len;
    int    shown, total;
} CheckReport;

static void check_add(CheckReport *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Keep a line if it fits (leaving room for the "... and N more" trailer); count it either way. */
static void check_add(CheckReport *r, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    r->total++;
    size_t k = strlen(line);
    if (r->shown < CHECK_MAX_LINES && r->len + k + 4 + 40 + 160 < sizeof r->lines) {
        r->len += (size_t)snprintf(r->lines + r->len, sizeof r->lines - r->len, "\n  %s", line);
        r->shown++;
    }
}

static void check_tensor(CheckReport *r, const WeightSet *w, const TensorDesc *d)
{
    const Tensor *t = weights_find(w, d->name);
    char from[200] = "", src[160];
    if (w->from_mixtral && ws_mixtral_origin(d->name, src, sizeof src)) snprintf(from, sizeof from, " (Mixtral's %s)", src);
    if (!t) {
        check_add(r, "missing tensor %s%s", d->name, from);
        return;
    }
    bool same = t->dtype == d->dtype && t->ndim == d->ndim;
    for (int i = 0; same && i < d->ndim; i++) same = t->shape[i] == d->shape[i];
    if (same) return;
    char want[96], found[96];
    rt_format_type(want, sizeof want, d->dtype, d->ndim, d->shape);
    rt_format_type(found, sizeof found, t->dtype, t->ndim, t->shape);
    check_add(r, "%s%s: expected %s, found %s", d->name, from, want, found);
}

bool weights_check(const WeightSet *w, const ModelSpec *s, RtError *err)
{
    err->msg[0] = '\0';
    int n;
    TensorDesc *d = spec_tensors(s, &n);
    CheckReport *r = xcalloc(1, sizeof *r);
    for (int i = 0; i < n; i++) check_tensor(r, w, &d[i]);
    bool ok = r->total == 0;
    if (!ok) {
        rt_errorf(err, w->origin, "checkpoint does not match spec '%s': %d problem%s", s->name, r->total,
                  r->total == 1 ? "" : "s");
        size_t k = strlen(err->msg); /* the spec's tensor names, one per line */
        k += (size_t)snprintf(err->msg + k, sizeof err->msg - k, "%s", r->lines);
        if (r->total > r->shown && k < sizeof err->msg)
            snprintf(err->msg + k, sizeof err->msg - k, "\n  ... and %d more", r->total - r->shown);
    }
    free(r);
    free(d);
    return ok;
}
