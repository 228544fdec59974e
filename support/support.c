/* support.c — element types, checked allocation, the arena, numbers, strings, random numbers. */
#include "support/support.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

void moe_assert_fail(const char *file, int line, const char *expr)
{
    fprintf(stderr, "%s:%d: internal error: assertion failed: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}

/* ---- element types ------------------------------------------------------------------------ */
static const char *const dtype_names[DT_COUNT] = {"f32", "bf16", "f16", "f64", "i32"};
static const size_t dtype_sizes[DT_COUNT] = {4, 2, 2, 8, 4};
_Static_assert(MOE_ARRAY_LEN(dtype_names) == DT_COUNT, "dtype name table out of step with moe_dtype");

const char *dtype_name(moe_dtype t)
{
    MOE_ASSERT((unsigned)t < DT_COUNT);
    return dtype_names[t];
}

bool dtype_parse(const char *s, moe_dtype *out)
{
    for (int i = 0; i < DT_COUNT; i++) {
        if (strcmp(s, dtype_names[i]) == 0) {
            *out = (moe_dtype)i;
            return true;
        }
    }
    return false;
}

size_t dtype_size(moe_dtype t)
{
    MOE_ASSERT((unsigned)t < DT_COUNT);
    return dtype_sizes[t];
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t f32_to_f16(float f)
{
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);            /* NaN */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);           /* overflow → inf */
    if (abs < 0x38800000u) {                                             /* subnormal or zero */
        /* value = abs_f * 2^24 half-ulps; rounding by adding 0.5 in float is exact here */
        float a = bits_f32(abs);
        float scaled = a * 16777216.0f;                                  /* 2^24 */
        uint32_t q = (uint32_t)scaled;
        float rem = scaled - (float)q;
        if (rem > 0.5f || (rem == 0.5f && (q & 1u))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t mant = abs & 0x7fffffu;
    uint32_t exp = (abs >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;           /* may carry into exp: fine */
    return (uint16_t)(sign | h);
}

float f16_to_f32(uint16_t h)
{
    uint32_t sign = ((uint32_t)h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        float v = (float)mant * (1.0f / 16777216.0f);                    /* mant · 2^-24 */
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13));
    return bits_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

double dtype_round(moe_dtype t, double v)
{
    switch (t) {
    case DT_F32: return (double)(float)v;
    case DT_BF16: return (double)bf16_to_f32(f32_to_bf16((float)v));
    case DT_F16: return (double)f16_to_f32(f32_to_f16((float)v));
    case DT_F64:
    case DT_I32:
    case DT_COUNT: break;
    }
    return v;
}

double dtype_load(moe_dtype t, const void *data, size_t i)
{
    switch (t) {
    case DT_F32: return ((const float *)data)[i];
    case DT_BF16: return bf16_to_f32(((const uint16_t *)data)[i]);
    case DT_F16: return f16_to_f32(((const uint16_t *)data)[i]);
    case DT_F64: return ((const double *)data)[i];
    case DT_I32: return ((const int32_t *)data)[i];
    case DT_COUNT: break;
    }
    MOE_ASSERT(!"bad dtype");
    return 0;
}

void dtype_store(moe_dtype t, void *data, size_t i, double v)
{
    switch (t) {
    case DT_F32: ((float *)data)[i] = (float)v; return;
    case DT_BF16: ((uint16_t *)data)[i] = f32_to_bf16((float)v); return;
    case DT_F16: ((uint16_t *)data)[i] = f32_to_f16((float)v); return;
    case DT_F64: ((double *)data)[i] = v; return;
    case DT_I32: ((int32_t *)data)[i] = (int32_t)v; return;
    case DT_COUNT: break;
    }
    MOE_ASSERT(!"bad dtype");
}

/* ---- memory --------------------------------------------------------------------------------- */
static void out_of_memory(size_t n)
{
    fprintf(stderr, "moeppc: error: out of memory (asked for %zu bytes)\n", n);
    exit(70);
}

void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) out_of_memory(n);
    return p;
}

void *alloc_large(size_t n)
{
    const size_t huge = (size_t)2 << 20;
    if (n < huge) return aligned_alloc(64, n ? (n + 63) & ~(size_t)63 : 64);
    size_t size = (n + huge - 1) & ~(huge - 1);
    void *p = aligned_alloc(huge, size);
    if (p) madvise(p, size, MADV_HUGEPAGE); /* failure changes nothing */
    return p;
}

void *xcalloc(size_t count, size_t size)
{
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) out_of_memory(count * size);
    return p;
}

void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) out_of_memory(n);
    return q;
}

void str_bytes(double bytes, char *buf, size_t n)
{
    if (bytes >= 1e9) snprintf(buf, n, "%.2f GB", bytes / 1e9);
    else snprintf(buf, n, "%.1f MB", bytes / 1e6);
}

char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = xmalloc(n);
    memcpy(p, s, n);
    return p;
}

struct ArenaChunk {
    ArenaChunk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
};

void *arena_alloc(Arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    ArenaChunk *c = a->head;
    if (!c || c->used + n > c->cap) {
        size_t cap = n > 65536 ? n : 65536;
        c = xmalloc(sizeof(ArenaChunk) + cap);
        c->next = a->head;
        c->used = 0;
        c->cap = cap;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

char *arena_strdup(Arena *a, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = arena_alloc(a, n);
    memcpy(p, s, n);
    return p;
}

char *arena_printf(Arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    MOE_ASSERT(n >= 0);
    char *p = arena_alloc(a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void arena_free(Arena *a)
{
    ArenaChunk *c = a->head;
    while (c) {
        ArenaChunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
}

void strbuf_printf(StrBuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    MOE_ASSERT(n >= 0);
    if (b->len + (size_t)n + 1 > b->cap) {
        b->cap = (b->len + (size_t)n + 1) * 2;
        b->s = xrealloc(b->s, b->cap);
    }
    va_start(ap, fmt);
    vsnprintf(b->s + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* ---- numbers and strings -------------------------------------------------------------------- */
bool i64_mul_ok(int64_t a, int64_t b, int64_t *out) { return !__builtin_mul_overflow(a, b, out); }
bool i64_add_ok(int64_t a, int64_t b, int64_t *out) { return !__builtin_add_overflow(a, b, out); }

void str_escape(const char *s, size_t len, char *buf, size_t n)
{
    if (n == 0) return;
    size_t full = 0;
    for (size_t i = 0; i < len; i++) full += (unsigned char)s[i] >= 0x20 && s[i] != 0x7f ? 1 : 4;
    size_t room = full < n ? n - 1 : (n > 4 ? n - 4 : 0); /* cut: keep room for "..." */
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool plain = c >= 0x20 && c != 0x7f;
        if (o + (plain ? 1 : 4) > room) break;
        if (plain)
            buf[o++] = (char)c;
        else
            o += (size_t)snprintf(buf + o, n - o, "\\x%02x", c);
    }
    if (full >= n && n > 4) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = 0;
}

void str_copy_trunc(char *dst, size_t n, const char *src)
{
    size_t l = strlen(src);
    if (l >= n) l = n - 1;
    memcpy(dst, src, l);
    dst[l] = 0;
}

int str_edit_distance(const char *a, const char *b)
{
    size_t na = strlen(a), nb = strlen(b);
    if (na > 64 || nb > 64) return 1000;
    int row[65];
    for (size_t j = 0; j <= nb; j++) row[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        int diag = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int up = row[j];
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int best = diag + cost;
            if (row[j] + 1 < best) best = row[j] + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[nb];
}

char *file_read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > FILE_READ_LIMIT) {
        fclose(f); /* refused before anything is allocated */
        errno = EFBIG;
        return NULL;
    }
    size_t cap = 4096, n = 0;
    char *buf = xmalloc(cap + 1);
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (n < cap || n > FILE_READ_LIMIT) break;
        cap *= 2;
        buf = xrealloc(buf, cap + 1);
    }
    int bad = ferror(f) ? EIO : n > FILE_READ_LIMIT ? EFBIG : 0; /* EFBIG: /dev/zero, a 10 GB "spec" */
    fclose(f);
    if (bad) {
        free(buf);
        errno = bad;
        return NULL;
    }
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

/* A temporary file beside path (PATH.tmpXXXXXX, its name in *tmp, malloc'd): its descriptor, or -1. */
static int open_beside(const char *path, char **tmp)
{
    size_t len = strlen(path);
    *tmp = xmalloc(len + 16);
    snprintf(*tmp, len + 16, "%s.tmpXXXXXX", path);
    return mkstemp(*tmp);
}

bool file_write_atomic(const char *path, const void *data, size_t n, char *why, size_t why_len)
{
    char *tmp;
    int fd = open_beside(path, &tmp);
    bool ok = fd >= 0;
    if (ok) {
        mode_t mask = umask(0); /* mkstemp makes 0600; the file gets what open(..., 0666) would */
        umask(mask);
        ok = fchmod(fd, 0666 & ~mask) == 0;
        FILE *f = fdopen(fd, "wb");
        ok = ok && f && fwrite(data, 1, n, f) == n;
        if (f) ok = (fclose(f) == 0) && ok;
        else close(fd);
        ok = ok && rename(tmp, path) == 0;
        if (!ok) unlink(tmp);
    }
    if (!ok) snprintf(why, why_len, "cannot write '%s': %s", path, strerror(errno));
    free(tmp);
    return ok;
}

bool make_dirs(const char *dir)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) return errno = ENAMETOOLONG, false;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0777) != 0 && errno != EEXIST) return false;
        *p = '/';
    }
    return mkdir(buf, 0777) == 0 || errno == EEXIST;
}

bool file_can_write(const char *path, char *why, size_t why_len)
{
    struct stat st;
    bool ok = !(stat(path, &st) == 0 && S_ISDIR(st.st_mode));
    if (!ok) errno = EISDIR;
    char *tmp = NULL;
    int fd = ok ? open_beside(path, &tmp) : -1;
    ok = fd >= 0;
    if (ok) close(fd), unlink(tmp);
    if (!ok) snprintf(why, why_len, "cannot write '%s': %s", path, strerror(errno));
    free(tmp);
    return ok;
}

bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-') return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return false;
    *out = v;
    return true;
}

bool parse_cuda_device(const char *s, int *ordinal)
{
    uint64_t n = 0;
    if (strcmp(s, "cuda") == 0) n = 0;
    else if (strncmp(s, "cuda:", 5) != 0 || !parse_u64(s + 5, &n) || n > 255) return false;
    *ordinal = (int)n;
    return true;
}

/* ---- random numbers --------------------------------------------------------------------------- */
void rng_seed(moe_rng *r, uint64_t seed) { r->s = seed; }

/* splitmix64's state only counts: k draws later it is seed + k·γ. */
void rng_seek(moe_rng *r, uint64_t seed, uint64_t k) { r->s = seed + k * 0x9e3779b97f4a7c15ull; }

uint64_t hash_str(const char *s) { return hash_bytes(s, strlen(s)); }

uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* XXH64 (Yann Collet's xxHash, 64-bit; its published specification, doc/xxhash_spec.md, followed
 * step by step): what data, not names, is checked with — the panel cache's chunks. About 3x zlib's
 * crc32 here (one core of a Zen 4: 12-14 GB/s against 4.2) and no library to link into what
 * `moeppc build` and `emit --emit lib` write; tests/support checks it against libxxhash where the
 * machine has it, and against the specification's values. */
#define XXH_P1 0x9E3779B185EBCA87ull
#define XXH_P2 0xC2B2AE3D27D4EB4Full
#define XXH_P3 0x165667B19E3779F9ull
#define XXH_P4 0x85EBCA77C2B2AE63ull
#define XXH_P5 0x27D4EB2F165667C5ull

static inline uint64_t xxh_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t xxh_read64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8); /* (little-endian: the specification reads little-endian words) */
    return v;
}

static inline uint32_t xxh_read32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t lane) { return xxh_rotl(acc + lane * XXH_P2, 31) * XXH_P1; }

static inline uint64_t xxh_merge(uint64_t acc, uint64_t lane) { return (acc ^ xxh_round(0, lane)) * XXH_P1 + XXH_P4; }

uint64_t hash_xxh64(const void *data, size_t n, uint64_t seed)
{
    const unsigned char *p = data, *end = p + n;
    uint64_t h;
    if (n >= 32) {
        uint64_t v1 = seed + XXH_P1 + XXH_P2, v2 = seed + XXH_P2, v3 = seed, v4 = seed - XXH_P1;
        for (; end - p >= 32; p += 32) {
            v1 = xxh_round(v1, xxh_read64(p));
            v2 = xxh_round(v2, xxh_read64(p + 8));
            v3 = xxh_round(v3, xxh_read64(p + 16));
            v4 = xxh_round(v4, xxh_read64(p + 24));
        }
        h = xxh_rotl(v1, 1) + xxh_rotl(v2, 7) + xxh_rotl(v3, 12) + xxh_rotl(v4, 18);
        h = xxh_merge(xxh_merge(xxh_merge(xxh_merge(h, v1), v2), v3), v4);
    } else {
        h = seed + XXH_P5;
    }
    h += (uint64_t)n;
    for (; end - p >= 8; p += 8) h = xxh_rotl(h ^ xxh_round(0, xxh_read64(p)), 27) * XXH_P1 + XXH_P4;
    if (end - p >= 4) h = xxh_rotl(h ^ (uint64_t)xxh_read32(p) * XXH_P1, 23) * XXH_P2 + XXH_P3, p += 4;
    for (; p < end; p++) h = xxh_rotl(h ^ *p * XXH_P5, 11) * XXH_P1;
    h ^= h >> 33;
    h *= XXH_P2;
    h ^= h >> 29;
    h *= XXH_P3;
    return h ^ (h >> 32);
}

static int file_next(void *in) { return getc((FILE *)in); }

bool file_read_line(FILE *in, char **buf, size_t *cap, size_t limit, size_t *len, bool *too_long)
{
    return read_line_from(file_next, in, buf, cap, limit, len, too_long);
}

bool read_line_from(int (*next)(void *src), void *src, char **buf, size_t *cap, size_t limit, size_t *len,
                    bool *too_long)
{
    size_t n = 0;
    int ch;
    *too_long = false;
    while ((ch = next(src)) != EOF && ch != '\n') {
        if (n == limit) {
            *too_long = true;
            continue;
        }
        if (n + 1 >= *cap) *buf = xrealloc(*buf, *cap = *cap ? 2 * *cap : 256);
        (*buf)[n++] = (char)ch;
    }
    if (ch == EOF && n == 0 && !*too_long) return false;
    if (!*cap) *buf = xrealloc(*buf, *cap = 256);
    (*buf)[n] = 0;
    *len = n;
    return true;
}

int32_t *ids_parse(const char *text, int64_t vocab, int64_t max, int64_t *n_out, char *why, size_t why_n)
{
    int64_t n = 0, cap = 16;
    int32_t *ids = xmalloc((size_t)cap * sizeof *ids);
    for (const char *p = text;;) {
        p += strspn(p, " ,\t\n");
        if (!*p) break;
        char *end, shown[48]; /* printable and short, whatever the bytes (a --prompts file may hold any) */
        errno = 0;
        const char *d = p + (*p == '+' || *p == '-');
        long long v = strtoll(p, &end, 10); /* (which would skip a \v, \f or \r before the number) */
        if (end == p || !isdigit((unsigned char)*d) || (*end && !strchr(" ,\t\n", *end)) || errno) {
            str_escape(p, strcspn(p, " ,\t\n"), shown, sizeof shown);
            snprintf(why, why_n, "'%s' (token %lld) is not a token id", shown, (long long)n + 1);
        } else if (v < 0 || v >= vocab) {
            snprintf(why, why_n, "token %lld is %lld, outside the vocabulary [0, %lld)", (long long)n + 1, v, (long long)vocab);
        } else if (n == max) {
            snprintf(why, why_n, "more than max_positions (%lld) tokens", (long long)max);
        } else {
            if (n == cap) ids = xrealloc(ids, (size_t)(cap *= 2) * sizeof *ids);
            ids[n++] = (int32_t)v;
            p = end;
            continue;
        }
        free(ids);
        return NULL;
    }
    *n_out = n;
    return ids;
}
