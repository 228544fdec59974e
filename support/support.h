/* support.h — the few things every layer of moeppc shares.
 *
 * In:  nothing; this header depends only on the C library.
 * Out: element types (dtype) and their conversions, the compilation arena, checked allocation,
 *      MOE_ASSERT for broken invariants, and small string helpers.
 * Memory: an Arena owns everything allocated from it and frees it all at once in arena_free();
 *      xmalloc/xcalloc/xstrdup abort on exhaustion (an internal failure, not a user error).
 * User errors are never reported here: each layer returns them as diagnostics with a location.
 */
#ifndef MOEPPC_SUPPORT_H
#define MOEPPC_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MOEPPC_VERSION "0.1.0"

/* Broken internal invariant: print where and abort (ggml's GGML_ASSERT). Never for user input. */
#define MOE_ASSERT(x)                                                                           \
    do {                                                                                        \
        if (!(x)) moe_assert_fail(__FILE__, __LINE__, #x);                                      \
    } while (0)
_Noreturn void moe_assert_fail(const char *file, int line, const char *expr);

#define MOE_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- element types ------------------------------------------------------------------------ */
typedef enum {
    DT_F32,
    DT_BF16,
    DT_F16,
    DT_F64,
    DT_I32,
    DT_COUNT
} moe_dtype;

const char *dtype_name(moe_dtype t);            /* "f32", "bf16", ... */
bool        dtype_parse(const char *s, moe_dtype *out);
size_t      dtype_size(moe_dtype t);             /* bytes per element */

/* Round-to-nearest-even conversions; NaN stays NaN, overflow goes to infinity. The bf16 ones are
 * inline: the CPU GEMMs' packing of A for the bf16 dot product converts every activation. */
static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                             /* nearest even */
    return (uint16_t)(u >> 16);
}
static inline float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
uint16_t f32_to_f16(float f);
float    f16_to_f32(uint16_t h);
/* Round a double to what a value of type t can hold (f32, bf16, f16; f64 and i32 unchanged). */
double   dtype_round(moe_dtype t, double v);
/* Read element i of a buffer of type t as a double. */
double   dtype_load(moe_dtype t, const void *data, size_t i);
/* Store v (rounded to nearest even) as element i of a buffer of type t. */
void     dtype_store(moe_dtype t, void *data, size_t i, double v);

/* ---- memory --------------------------------------------------------------------------------- */
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
/* n bytes, 64-byte aligned; from 2 MiB on, 2 MiB aligned and marked for transparent huge pages (only a
 * hint): such a block faults in, and streams through the TLB, in 2 MiB pages instead of 4 KiB ones.
 * NULL when there is no memory; free() frees it. */
void *alloc_large(size_t n);

/* A bump allocator: chunks are chained and freed together (chibicc, QBE). */
typedef struct ArenaChunk ArenaChunk;
typedef struct Arena {
    ArenaChunk *head;
} Arena;
void *arena_alloc(Arena *a, size_t n);           /* zeroed, 16-byte aligned */
char *arena_strdup(Arena *a, const char *s);
char *arena_printf(Arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void  arena_free(Arena *a);

/* A growing text buffer (s is NUL-terminated once anything was printed; free(s) when done). */
typedef struct StrBuf {
    char  *s;
    size_t len, cap;
} StrBuf;
void strbuf_printf(StrBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* "3.21 GB" or "12.5 MB" (decimal units), for messages about memory. */
void str_bytes(double bytes, char *buf, size_t n);

/* ---- numbers and strings -------------------------------------------------------------------- */
/* a*b and a+b on int64 with overflow detection: return false when the result does not fit. */
bool i64_mul_ok(int64_t a, int64_t b, int64_t *out);
bool i64_add_ok(int64_t a, int64_t b, int64_t *out);
/* Token ids in text ("1 5 9" or "1,5,9": spaces, commas, tabs, newlines between), each in [0, vocab),
 * at most max of them (max < 0: any number; the first one too many is refused, the rest never read).
 * The ids (malloc'd; none for empty text) and their count in *n; NULL with why[why_n] naming the first
 * bad one (by its place, its bytes escaped). */
int32_t *ids_parse(const char *text, int64_t vocab, int64_t max, int64_t *n, char *why, size_t why_n);
/* Input text for a message, printable: bytes below 0x20 and DEL become \xNN; cut with "..." when
 * buf (n bytes) is full. Names and strings read from a file go through this before they are shown. */
void str_escape(const char *s, size_t len, char *buf, size_t n);
/* src into dst (n bytes), cut to n - 1 bytes where longer; always terminated. */
void str_copy_trunc(char *dst, size_t n, const char *src);
/* Levenshtein distance, for "did you mean" hints. */
int  str_edit_distance(const char *a, const char *b);
/* Write n bytes to path through a temporary file renamed into place: all or nothing. On failure
 * why gets "cannot write 'PATH': REASON". */
bool file_write_atomic(const char *path, const void *data, size_t n, char *why, size_t why_len);
/* Whether file_write_atomic could write path now (a temporary file beside it made and removed; path
 * not a directory): checked before long work whose result goes there, with the same message. */
bool file_can_write(const char *path, char *why, size_t why_len);
/* mkdir -p: dir and each folder above it that is missing (false, errno set, where one cannot be made). */
bool make_dirs(const char *dir);
/* Read a whole file; NULL with errno set on failure. *len gets the byte count. Every text input
 * (spec, config, index, IR, tuning database) is read through this, so none can be larger than
 * FILE_READ_LIMIT (the cap safetensors sets on its header): a bigger one fails with EFBIG before
 * more than that is read. */
#define FILE_READ_LIMIT 100000000
char *file_read_all(const char *path, size_t *len);
/* One line of in into *buf (*cap bytes, grown as needed; NUL-terminated, without its newline), its
 * length in *len; at most limit bytes kept: the rest of a longer one is read and dropped, and
 * *too_long set (a line of any length never takes more than limit bytes). False at the end of in. */
bool  file_read_line(FILE *in, char **buf, size_t *cap, size_t limit, size_t *len, bool *too_long);
/* The same from next(src), which gives a byte (0-255) or EOF. */
bool  read_line_from(int (*next)(void *src), void *src, char **buf, size_t *cap, size_t limit, size_t *len,
                     bool *too_long);

/* ---- deterministic random numbers (splitmix64) ---------------------------------------------- */
typedef struct {
    uint64_t s;
} moe_rng;
void     rng_seed(moe_rng *r, uint64_t seed);
void     rng_seek(moe_rng *r, uint64_t seed, uint64_t k); /* as rng_seed(r, seed) then k draws */
/* splitmix64; inline: random weights draw one a value, billions for a 7B model */
static inline uint64_t rng_next(moe_rng *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
/* [0, 1), 53 random bits */
static inline double rng_uniform(moe_rng *r) { return (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0); }
/* s as a decimal integer in [0, 2^64), nothing after it; false for a sign, empty text or overflow */
bool parse_u64(const char *s, uint64_t *out);
/* A --device value that names a GPU: "cuda" (device 0) or "cuda:N" (N in [0, 255], the CUDA driver's
 * ordinal, after CUDA_VISIBLE_DEVICES); false for anything else. */
bool parse_cuda_device(const char *s, int *ordinal);
uint64_t hash_str(const char *s);                /* FNV-1a 64 */
uint64_t hash_bytes(const void *p, size_t n);    /* FNV-1a 64 of n bytes */
/* XXH64 of n bytes (xxHash's published algorithm): a checksum of data, gigabytes a second */
uint64_t hash_xxh64(const void *p, size_t n, uint64_t seed);

/* ---- thread pool (pool.c): the CPU backend's drivers and packing, random weights ------------ */
/* n_threads in all: the caller plus n_threads-1 workers, created once, never pinned. */
typedef struct CgPool CgPool;
typedef void (*cg_task_fn)(void *ctx, int64_t task, int thread);

CgPool *cg_pool_new(int n_threads);
void    cg_pool_free(CgPool *pool);
int     cg_pool_threads(const CgPool *pool); /* 1 for a NULL pool */
bool    cg_pool_spins(const CgPool *pool);   /* whether its threads spin before they sleep (pool.c) */
/* Run fn(ctx, t, thread) for every t < n_tasks, thread < cg_pool_threads; returns when all ran.
 * A NULL pool runs them on the caller. Not reentrant. */
void cg_pool_parallel_for(CgPool *pool, int64_t n_tasks, cg_task_fn fn, void *ctx);
/* Whether the calling thread is running a task of some pool's parallel_for (then the process's
 * threads are busy already: work split further there goes on the caller alone). */
bool cg_pool_in_task(void);

/* ---- what the machine gives this process (sysres.c) ----------------------------------------- */
enum { MOE_MAX_THREADS = 256 }; /* --threads at most (their messages and help pages say 256) */

/* Memory a new allocation can have: MemAvailable of /proc/meminfo (page cache of mapped checkpoints
 * counts as available), less where this process's cgroup limits its memory to less (what the
 * cgroup may still use, its reclaimable file pages counted free), or MOEPPC_MEM_LIMIT_MB when set
 * (tests). Whatever would allocate a size the input decides (random weights, packed weights, KV
 * caches, activations) checks it first, so a model too large for the machine (or the container) is a
 * message, never an allocation that fails or the OOM killer. */
double mem_available_bytes(void);
/* The CPUs this process may run on: its affinity, cut to its cgroup's CPU quota rounded up; >= 1. */
int cpus_available(void);
/* The default thread count: the cores (not SMT threads) of this process's affinity, cut to its
 * cgroup's CPU quota rounded up; 1 .. MOE_MAX_THREADS. */
int threads_default(void);

/* The parts, for tests. A cgroup's limits from the text of /proc/self/mountinfo and of
 * /proc/self/cgroup (prefix: a folder standing for / in front of the mount points; "" for the real
 * ones): the tightest along the cgroup's path to its hierarchy's root, each controller from v1 where
 * v1 mounts it, else from v2. */
typedef struct CgroupLimits {
    double cpus;      /* quota / period; 0: no limit */
    double mem_bytes; /* limit - (usage - file pages), >= 1; 0: no limit */
} CgroupLimits;
CgroupLimits cgroup_limits(const char *mountinfo, const char *self_cgroup, const char *prefix);
/* Cores among the CPUs cpus[0..n): distinct SYS_CPU/cpuN/topology/thread_siblings_list; n where one
 * is unreadable. */
int cpu_cores_among(const char *sys_cpu, const int *cpus, int n);
/* Threads for that many cores under a cgroup CPU limit (0: none): 1 .. MOE_MAX_THREADS. */
int threads_for(int cores, double cgroup_cpus);

#endif
