/* panel_cache.c — packed weights kept in files (see panel_cache.h).
 *
 * A file: a 40-byte header (magic "MOEPPCPN", format version, log2 of the checksums' chunk, the
 * description's length, where the panels begin, the file's size; little-endian u32/u64), the
 * description, the panels' checksums (an XXH64 of each 4 MiB chunk of them, seeded with the chunk's
 * index, u64 each), zeros to a 4 KiB boundary, then each kept weight's panels in the step's order,
 * each at a 64-byte boundary (panel_bytes is a multiple of 64, so they follow one another). Format 1
 * (before 2026-12-07) had no checksums: a later run does not map its files (another header). */
#include "runtime/cpu/panel_cache.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PC_MAGIC "MOEPPCPN"
#define PC_VERSION 2u
#define PC_HEADER 40
#define PC_CHUNK_LOG2 22 /* the checksums' chunk: 4 MiB (15 GB of the 7B's panels: 3600, 29 KB of sums) */
#define PC_CHUNK ((size_t)1 << PC_CHUNK_LOG2)

struct PanelCache {
    char *dir;
    CgPool *pool; /* the checksums' threads (borrowed; NULL: this one) */
    bool  verify; /* a hit's panels checked against their sums before they are used */
    char **mine;  /* names of the files this cache's model maps (panel_cache_trim keeps them) */
    int n_mine;
    bool  warned; /* a failure said once; the rest packed in memory quietly */
    bool  broken; /* the directory cannot be made: every step packs in memory */
    PanelCacheStats st;
};

struct PanelFile {
    void  *base;
    size_t len;
    int    fd;       /* a miss's, until panel_file_commit; -1 after */
    char  *tmp;      /* a miss's temporary name (no O_TMPFILE), NULL otherwise */
    char  *path;     /* the name it has (hit) or gets (miss) */
    size_t desc_len, data; /* its description's length; where its panels begin */
};

PanelCache *panel_cache_new(const char *dir, CgPool *pool, bool verify)
{
    PanelCache *pc = xcalloc(1, sizeof *pc);
    pc->dir = xstrdup(dir);
    pc->pool = pool;
    pc->verify = verify;
    return pc;
}

void panel_cache_free(PanelCache *pc)
{
    if (!pc) return;
    for (int i = 0; i < pc->n_mine; i++) free(pc->mine[i]);
    free(pc->mine);
    free(pc->dir);
    free(pc);
}

PanelCacheStats panel_cache_stats(const PanelCache *pc) { return pc->st; }

const char *panel_cache_stats_line(const PanelCacheStats *st, const char *dir, char *buf, size_t n)
{
    int k = snprintf(buf, n, "panel cache %s: %d steps' panels mapped (%.1f MB), %d packed and kept (%.1f MB)%s", dir,
                     st->hits, st->hit_bytes / 1e6, st->misses, st->kept_bytes / 1e6,
                     st->failed ? ", the rest packed in memory" : "");
    if (st->damaged && k >= 0 && (size_t)k < n)
        k += snprintf(buf + k, n - (size_t)k, "; %d damaged (packed again)", st->damaged);
    if (st->removed && k >= 0 && (size_t)k < n)
        snprintf(buf + k, n - (size_t)k, "; %d least recently used files removed (%.1f MB)", st->removed,
                 st->removed_bytes / 1e6);
    return buf;
}

static void pc_warn(PanelCache *pc, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void pc_warn(PanelCache *pc, const char *fmt, ...)
{
    pc->st.failed++;
    if (pc->warned) return;
    pc->warned = true;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "moeppc: panel cache %s: %s; packing in memory\n", pc->dir, msg);
}

static size_t pc_align(size_t n, size_t a) { return (n + a - 1) / a * a; }

static void pc_mine(PanelCache *pc, const char *path)
{
    const char *slash = strrchr(path, '/');
    pc->mine = xrealloc(pc->mine, (size_t)(pc->n_mine + 1) * sizeof *pc->mine);
    pc->mine[pc->n_mine++] = xstrdup(slash ? slash + 1 : path);
}

static size_t pc_chunks(size_t panel_bytes) { return (panel_bytes + PC_CHUNK - 1) >> PC_CHUNK_LOG2; }

/* Where a file's parts lie, from its description's length and its panels' bytes. */
static void pc_layout(size_t desc_len, size_t panel_bytes, size_t *data, size_t *size)
{
    *data = pc_align(PC_HEADER + desc_len + 8 * pc_chunks(panel_bytes), 4096);
    *size = *data + panel_bytes;
}

/* The step's description (the file's key) and its panels' layout: *data the first panel's offset,
 * *size the file's. Returns the description (xmalloc'd). */
static char *pc_describe(const CgPackedB *pk, const char *const *id, int n, size_t *data, size_t *size)
{
    size_t cap = 256, len = 0;
    for (int e = 0; e < n; e++) cap += id[e] ? strlen(id[e]) + 160 : 0;
    char *d = xmalloc(cap);
    len += (size_t)snprintf(d + len, cap - len, "moeppc panels: layout %d\n", CG_PANEL_LAYOUT);
    for (int e = 0; e < n; e++) {
        if (!id[e]) continue;
        const CgPackedB *b = &pk[e];
        len += (size_t)snprintf(d + len, cap - len, "%d %s: %s [%lld, %lld] nr %d%s%s, %lld panels of %zu bytes\n", e,
                                id[e], dtype_name(b->dtype), (long long)b->n, (long long)b->k, b->nr,
                                b->kpair ? " k pairs" : "", b->swiglu ? " swiglu" : "", (long long)b->n_panels,
                                b->panel_bytes);
    }
    MOE_ASSERT(len < cap);
    size_t panels = 0;
    for (int e = 0; e < n; e++)
        if (id[e]) panels += pc_align(cg_packed_b_bytes(&pk[e]), 64);
    pc_layout(len, panels, data, size);
    return d;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void pc_header(unsigned char *h, size_t desc_len, size_t data, size_t size)
{
    memcpy(h, PC_MAGIC, 8);
    put_u32(h + 8, PC_VERSION);
    put_u32(h + 12, PC_CHUNK_LOG2);
    put_u64(h + 16, desc_len);
    put_u64(h + 24, data);
    put_u64(h + 32, size);
}

/* Point the kept weights' data into the mapping at base. */
static void pc_point(CgPackedB *pk, const char *const *id, int n, char *base, size_t data)
{
    for (int e = 0; e < n; e++) {
        if (!id[e]) continue;
        pk[e].data = base + data;
        data += pc_align(cg_packed_b_bytes(&pk[e]), 64);
    }
}

typedef struct {
    const unsigned char *panels;
    size_t               bytes;
    uint64_t            *sum;
} SumJob;

static void sum_task(void *ctx, int64_t c, int thread)
{
    (void)thread;
    const SumJob *j = ctx;
    size_t at = (size_t)c << PC_CHUNK_LOG2, len = j->bytes - at < PC_CHUNK ? j->bytes - at : PC_CHUNK;
    j->sum[c] = hash_xxh64(j->panels + at, len, (uint64_t)c);
}

/* The checksums of the panels of a file mapped at base (data, size: pc_layout's), on pool's threads:
 * xmalloc'd, *n of them. */
static uint64_t *pc_sums(CgPool *pool, const void *base, size_t data, size_t size, size_t *n)
{
    *n = pc_chunks(size - data);
    SumJob j = {(const unsigned char *)base + data, size - data, xmalloc((*n ? *n : 1) * sizeof *j.sum)};
    cg_pool_parallel_for(pool, (int64_t)*n, sum_task, &j);
    return j.sum;
}

/* The first chunk of a mapped file's panels that differs from the checksum stored for it, or -1. */
static int64_t pc_damaged_chunk(CgPool *pool, const void *base, size_t desc_len, size_t data, size_t size)
{
    size_t n;
    uint64_t *sum = pc_sums(pool, base, data, size, &n);
    const unsigned char *kept = (const unsigned char *)base + PC_HEADER + desc_len;
    int64_t bad = -1;
    for (size_t c = 0; c < n && bad < 0; c++)
        if (get_u64(kept + 8 * c) != sum[c]) bad = (int64_t)c;
    free(sum);
    return bad;
}

static bool read_all(int fd, void *buf, size_t n, off_t at)
{
    for (size_t done = 0; done < n;) {
        ssize_t k = pread(fd, (char *)buf + done, n - done, at + (off_t)done);
        if (k <= 0) {
            if (k < 0 && errno == EINTR) continue;
            return false;
        }
        done += (size_t)k;
    }
    return true;
}

/* The file at path if it holds this step: its mapping, else NULL (missing, or another step's, or
 * damaged: a miss, which replaces it). With pc->verify its panels are checked against their sums. */
static PanelFile *pc_hit(PanelCache *pc, const char *path, const char *desc, size_t data, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return NULL;
    struct stat st;
    unsigned char h[PC_HEADER], want[PC_HEADER];
    size_t len = strlen(desc);
    pc_header(want, len, data, size);
    bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size == (uint64_t)size &&
              read_all(fd, h, sizeof h, 0) && memcmp(h, want, sizeof h) == 0;
    char *d = ok ? xmalloc(len) : NULL;
    ok = ok && read_all(fd, d, len, PC_HEADER) && memcmp(d, desc, len) == 0;
    free(d);
    void *base = ok ? mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (base != MAP_FAILED && futimens(fd, NULL) != 0) {} /* (used now: see panel_cache_trim) */
    close(fd);
    if (base == MAP_FAILED) return NULL;
    madvise(base, size, MADV_HUGEPAGE); /* only a hint */
    int64_t bad = pc->verify ? pc_damaged_chunk(pc->pool, base, len, data, size) : -1;
    if (bad >= 0) {
        size_t at = data + ((size_t)bad << PC_CHUNK_LOG2);
        fprintf(stderr, "moeppc: panel cache %s: %s is damaged (bytes %zu to %zu differ from their checksum); "
                "packing it again\n", pc->dir, strrchr(path, '/') + 1, at,
                at + PC_CHUNK < size ? at + PC_CHUNK : size);
        pc->st.damaged++;
        munmap(base, size);
        return NULL;
    }
    PanelFile *f = xcalloc(1, sizeof *f);
    *f = (PanelFile){base, size, -1, NULL, xstrdup(path), len, data};
    return f;
}

/* A new file of size bytes in the cache's directory for path: unnamed where the file system can
 * (O_TMPFILE), else under a temporary name; -1 (errno set) on failure. */
static int pc_create(PanelCache *pc, const char *path, char **tmp)
{
    *tmp = NULL;
    int fd = open(pc->dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    *tmp = xmalloc(strlen(path) + 16);
    sprintf(*tmp, "%s.tmpXXXXXX", path);
    fd = mkstemp(*tmp);
    if (fd < 0) {
        int e = errno;
        free(*tmp), *tmp = NULL;
        errno = e;
        return -1;
    }
    mode_t mask = umask(0); /* mkstemp makes 0600; the cache is shared as the checkpoint is */
    umask(mask);
    if (fchmod(fd, 0666 & ~mask) != 0) {} /* (a private file still serves) */
    /* held until the file is named: `moeppc panel-cache` tells it from a stopped run's and leaves it
     * (never waited for: a file system without locks, or a lister's moment, leaves it unlocked) */
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {}
    return fd;
}

static PanelFile *pc_miss(PanelCache *pc, const char *path, const char *desc, size_t data, size_t size)
{
    if (!make_dirs(pc->dir)) {
        pc->broken = true;
        pc_warn(pc, "cannot make the directory: %s", strerror(errno));
        return NULL;
    }
    char *tmp;
    int fd = pc_create(pc, path, &tmp);
    if (fd < 0) { /* (a directory others filled and this user may only read: its files still serve) */
        pc_warn(pc, "cannot create a file: %s", strerror(errno));
        return NULL;
    }
    int e = posix_fallocate(fd, 0, (off_t)size); /* (its blocks now: no SIGBUS when the disk fills) */
    void *base = e ? MAP_FAILED : mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        pc_warn(pc, "cannot reserve %.1f MB for %s: %s", (double)size / 1e6, path, strerror(e ? e : errno));
        close(fd);
        if (tmp) unlink(tmp);
        free(tmp);
        return NULL;
    }
    madvise(base, size, MADV_HUGEPAGE);
    size_t len = strlen(desc);
    pc_header(base, len, data, size);
    memcpy((char *)base + PC_HEADER, desc, len);
    PanelFile *f = xcalloc(1, sizeof *f);
    *f = (PanelFile){base, size, fd, tmp, xstrdup(path), len, data};
    return f;
}

PanelFile *panel_cache_open(PanelCache *pc, CgPackedB *pk, const char *const *id, int n, bool *hit)
{
    *hit = false;
    bool any = false;
    for (int e = 0; e < n; e++) any |= id[e] != NULL;
    if (!pc || pc->broken || !any) return NULL;
    size_t data, size;
    char *desc = pc_describe(pk, id, n, &data, &size);
    char *path = xmalloc(strlen(pc->dir) + 40);
    sprintf(path, "%s/panels-%016llx.bin", pc->dir, (unsigned long long)hash_str(desc));
    PanelFile *f = pc_hit(pc, path, desc, data, size);
    *hit = f != NULL;
    if (f) pc_mine(pc, path);
    if (!f) f = pc_miss(pc, path, desc, data, size);
    if (f) pc_point(pk, id, n, f->base, data);
    if (f && *hit) pc->st.hits++, pc->st.hit_bytes += (double)size;
    free(desc);
    free(path);
    return f;
}

void panel_file_commit(PanelCache *pc, PanelFile *f)
{
    if (f->fd < 0) return;
    const char *why = NULL;
    int e = 0;
    size_t n;
    uint64_t *sum = pc_sums(pc->pool, f->base, f->data, f->len, &n);
    for (size_t c = 0; c < n; c++) put_u64((unsigned char *)f->base + PC_HEADER + f->desc_len + 8 * c, sum[c]);
    free(sum);
    if (fdatasync(f->fd) != 0) why = "cannot write", e = errno;
    if (mprotect(f->base, f->len, PROT_READ) != 0) {} /* (only a guard) */
    if (!why && f->tmp && rename(f->tmp, f->path) != 0) why = "cannot name", e = errno;
    if (!why && !f->tmp) {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", f->fd);
        unlink(f->path); /* (a damaged one; another run's equal one is as good as this) */
        if (linkat(AT_FDCWD, proc, AT_FDCWD, f->path, AT_SYMLINK_FOLLOW) != 0 && errno != EEXIST)
            why = "cannot name", e = errno;
    }
    if (why) {
        pc_warn(pc, "%s %s: %s", why, f->path, strerror(e));
        if (f->tmp) unlink(f->tmp);
    } else {
        pc->st.misses++;
        pc->st.kept_bytes += (double)f->len;
        pc_mine(pc, f->path);
    }
    close(f->fd);
    f->fd = -1;
    free(f->tmp);
    f->tmp = NULL;
}

bool panel_file_holds(const PanelFile *f, const void *p)
{
    return f && (const char *)p >= (const char *)f->base && (const char *)p < (const char *)f->base + f->len;
}

void panel_file_free(PanelFile *f)
{
    if (!f) return;
    munmap(f->base, f->len);
    if (f->fd >= 0) close(f->fd);
    if (f->tmp) unlink(f->tmp);
    free(f->tmp);
    free(f->path);
    free(f);
}

typedef struct {
    char  *name;
    off_t  size;
    struct timespec used;
    dev_t  dev;
    ino_t  ino;
} PcEntry;

static int pc_by_use(const void *a, const void *b)
{
    const struct timespec *x = &((const PcEntry *)a)->used, *y = &((const PcEntry *)b)->used;
    return x->tv_sec != y->tv_sec ? (x->tv_sec < y->tv_sec ? -1 : 1)
                                  : (x->tv_nsec < y->tv_nsec ? -1 : x->tv_nsec > y->tv_nsec);
}

static bool pc_is_mine(const PanelCache *pc, const char *name)
{
    for (int i = 0; i < pc->n_mine; i++)
        if (strcmp(pc->mine[i], name) == 0) return true;
    return false;
}

/* Remove dir/name if it is still the file (dev, ino): renamed aside first (to name.tmp-rmPID, which a
 * listing shows as unfinished should this stop before the unlink), then compared; a file a run named
 * there meanwhile is put back by link, which never replaces a newer one. */
static PanelRemoved pc_remove_same(const char *dir, const char *name, dev_t dev, ino_t ino)
{
    char path[4400], aside[4440];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(aside, sizeof aside, "%s.tmp-rm%ld", path, (long)getpid());
    if (rename(path, aside) != 0) return errno == ENOENT ? PANEL_GONE : PANEL_NOT_REMOVED;
    struct stat sb;
    if (lstat(aside, &sb) == 0 && sb.st_dev == dev && sb.st_ino == ino) {
        if (unlink(aside) == 0) return PANEL_REMOVED;
        int e = errno;
        if (rename(aside, path) != 0) {} /* (it was the one to remove) */
        errno = e;
        return PANEL_NOT_REMOVED;
    }
    if (link(aside, path) != 0 && errno != EEXIST && rename(aside, path) == 0) return PANEL_REPLACED;
    unlink(aside); /* (put back, or a newer one is there) */
    return PANEL_REPLACED;
}

/* Seconds since st's file last changed (a negative age, a clock behind the file system's, counts as
 * just changed). */
static double pc_quiet_s(const struct stat *st)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double age = (double)(now.tv_sec - st->st_mtim.tv_sec) + 1e-9 * (double)(now.tv_nsec - st->st_mtim.tv_nsec);
    return age > 0 ? age : 0;
}

/* A temporary file: removed unless a running moeppc holds its lock or it changed in the last
 * PANEL_TMP_QUIET_S seconds (it is being written), and held while removed. */
static PanelRemoved pc_remove_unfinished(const char *dir, const char *name, dev_t dev, ino_t ino)
{
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return errno == ENOENT ? PANEL_GONE : PANEL_NOT_REMOVED;
    struct stat sb;
    PanelRemoved r = PANEL_WRITING;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
    } else if (fstat(fd, &sb) != 0 || sb.st_dev != dev || sb.st_ino != ino) {
        r = PANEL_REPLACED;
    } else if (pc_quiet_s(&sb) < PANEL_TMP_QUIET_S) {
        errno = 0; /* (written to since it was listed, or listed as written to) */
    } else {
        r = unlink(path) == 0 ? PANEL_REMOVED : errno == ENOENT ? PANEL_GONE : PANEL_NOT_REMOVED;
    }
    int e = errno;
    close(fd);
    errno = e;
    return r;
}

PanelRemoved panel_cache_remove(const char *dir, const PanelFileInfo *fi)
{
    if (fi->state == PANEL_FILE_WRITING) return PANEL_WRITING;
    if (fi->state == PANEL_FILE_UNFINISHED) return pc_remove_unfinished(dir, fi->name, fi->dev, fi->ino);
    return pc_remove_same(dir, fi->name, fi->dev, fi->ino);
}

void panel_cache_trim(PanelCache *pc, double max_bytes)
{
    DIR *d = pc && !pc->broken ? opendir(pc->dir) : NULL;
    if (!d) return;
    PcEntry *e = NULL;
    int n = 0;
    double total = 0;
    char path[4400];
    for (struct dirent *de; (de = readdir(d));) {
        size_t len = strlen(de->d_name);
        struct stat sb;
        if (strncmp(de->d_name, "panels-", 7) != 0 || len < 11 || strcmp(de->d_name + len - 4, ".bin") != 0) continue;
        snprintf(path, sizeof path, "%s/%s", pc->dir, de->d_name);
        if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        total += (double)sb.st_size;
        if (pc_is_mine(pc, de->d_name)) continue;
        e = xrealloc(e, (size_t)(n + 1) * sizeof *e);
        e[n++] = (PcEntry){xstrdup(de->d_name), sb.st_size, sb.st_mtim, sb.st_dev, sb.st_ino};
    }
    closedir(d);
    if (n) qsort(e, (size_t)n, sizeof *e, pc_by_use); /* (e is NULL without any) */
    for (int i = 0; i < n; i++) {
        if (total > max_bytes && pc_remove_same(pc->dir, e[i].name, e[i].dev, e[i].ino) == PANEL_REMOVED) {
            total -= (double)e[i].size;
            pc->st.removed++;
            pc->st.removed_bytes += (double)e[i].size;
        }
        free(e[i].name);
    }
    free(e);
}

/* ---- a directory's files, checked (moeppc panel-cache) -------------------------------------------- */
static int pc_by_name(const void *a, const void *b)
{
    return strcmp(((const PanelFileInfo *)a)->name, ((const PanelFileInfo *)b)->name);
}

/* The weights a description names: their count, and the first one's name ("E LEN:NAME …"). */
static void pc_weights(const char *desc, PanelFileInfo *fi)
{
    for (const char *line = strchr(desc, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
        int e, len, at = 0;
        if (sscanf(line + 1, "%d %d:%n", &e, &len, &at) == 2 && at > 0 && fi->weights++ == 0 && len > 0)
            snprintf(fi->first, sizeof fi->first, "%.*s", len < (int)sizeof fi->first ? len : 95, line + 1 + at);
    }
    for (char *c = fi->first; *c; c++) /* (a damaged file's bytes are not printed as they are) */
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}

/* Check an open panels-*.bin file of st.st_size bytes against what its header says it is. */
static void pc_check(int fd, const struct stat *st, bool verify, CgPool *pool, PanelFileInfo *fi)
{
    unsigned char h[PC_HEADER];
    fi->state = PANEL_FILE_DAMAGED;
    if (!read_all(fd, h, sizeof h, 0) || memcmp(h, PC_MAGIC, 8) != 0) {
        snprintf(fi->why, sizeof fi->why, "not a panel file (its first bytes)");
        return;
    }
    uint32_t version = (uint32_t)get_u64(h + 8) & 0xffffffffu;
    if (version != PC_VERSION) {
        fi->state = PANEL_FILE_STALE;
        snprintf(fi->why, sizeof fi->why, "file format %u (this moeppc writes %u): never mapped", version, PC_VERSION);
        return;
    }
    uint64_t desc_len = get_u64(h + 16), data = get_u64(h + 24), size = get_u64(h + 32);
    size_t want_data, want_size;
    bool sane = get_u64(h + 8) >> 32 == PC_CHUNK_LOG2 && desc_len < ((uint64_t)1 << 26) && data <= size;
    if (sane) pc_layout((size_t)desc_len, (size_t)(size - data), &want_data, &want_size);
    if (!sane || want_data != data) {
        snprintf(fi->why, sizeof fi->why, "its header is not a panel file's");
        return;
    }
    if ((uint64_t)st->st_size != size) {
        snprintf(fi->why, sizeof fi->why, "%lld bytes where its header says %llu (%s)", (long long)st->st_size,
                 (unsigned long long)size, (uint64_t)st->st_size < size ? "cut short" : "grown");
        return;
    }
    char *desc = xmalloc((size_t)desc_len + 1);
    if (!read_all(fd, desc, (size_t)desc_len, PC_HEADER)) {
        snprintf(fi->why, sizeof fi->why, "its description cannot be read: %s", strerror(errno));
        free(desc);
        return;
    }
    desc[desc_len] = '\0';
    int layout;
    char name[40];
    snprintf(name, sizeof name, "panels-%016llx.bin", (unsigned long long)hash_bytes(desc, (size_t)desc_len));
    pc_weights(desc, fi);
    if (sscanf(desc, "moeppc panels: layout %d\n", &layout) != 1 || strcmp(name, fi->name) != 0) {
        snprintf(fi->why, sizeof fi->why, "its description is not the one its name was made from (changed)");
    } else if (layout != CG_PANEL_LAYOUT) {
        fi->state = PANEL_FILE_STALE;
        snprintf(fi->why, sizeof fi->why, "panel layout %d (this moeppc packs layout %d): never mapped", layout,
                 CG_PANEL_LAYOUT);
    } else if (!verify) {
        fi->state = PANEL_FILE_OK;
    } else {
        void *base = mmap(NULL, (size_t)size, PROT_READ, MAP_SHARED, fd, 0);
        int64_t bad = base == MAP_FAILED ? -2 : pc_damaged_chunk(pool, base, (size_t)desc_len, data, size);
        fi->verified = bad != -2;
        if (bad == -2) {
            snprintf(fi->why, sizeof fi->why, "cannot be mapped: %s", strerror(errno));
        } else if (bad >= 0) {
            size_t at = data + ((size_t)bad << PC_CHUNK_LOG2);
            snprintf(fi->why, sizeof fi->why, "bytes %zu to %zu differ from their checksum", at,
                     at + PC_CHUNK < size ? at + PC_CHUNK : size);
        } else {
            fi->state = PANEL_FILE_OK;
        }
        if (base != MAP_FAILED) munmap(base, (size_t)size);
    }
    free(desc);
}

PanelFileInfo *panel_cache_list(const char *dir, bool verify, CgPool *pool, int *n, char *why, size_t why_len)
{
    *n = 0;
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(why, why_len, "cannot read the directory '%s': %s", dir, strerror(errno));
        return NULL;
    }
    PanelFileInfo *fi = NULL;
    char path[4400];
    for (struct dirent *de; (de = readdir(d));) {
        size_t len = strlen(de->d_name);
        bool tmp = strstr(de->d_name, ".bin.tmp") != NULL;
        if (strncmp(de->d_name, "panels-", 7) != 0 || (!tmp && (len < 11 || strcmp(de->d_name + len - 4, ".bin") != 0)))
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        struct stat st;
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK), e = errno;
        if (fd < 0 && e == ENOENT) continue; /* (removed meanwhile, by a run's trim) */
        if (fd >= 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))) {
            close(fd); /* (not a file a run made) */
            continue;
        }
        fi = xrealloc(fi, (size_t)(*n + 1) * sizeof *fi);
        PanelFileInfo *f = &fi[(*n)++];
        *f = (PanelFileInfo){.name = xstrdup(de->d_name), .state = PANEL_FILE_DAMAGED};
        if (fd < 0) {
            snprintf(f->why, sizeof f->why, "cannot be opened: %s", strerror(e));
            continue;
        }
        f->bytes = (double)st.st_size;
        f->used = st.st_mtim;
        f->dev = st.st_dev, f->ino = st.st_ino;
        if (tmp && flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
            f->state = PANEL_FILE_WRITING;
            snprintf(f->why, sizeof f->why, "a running moeppc is packing into it");
        } else if (tmp && pc_quiet_s(&st) < PANEL_TMP_QUIET_S) {
            f->state = PANEL_FILE_WRITING;
            snprintf(f->why, sizeof f->why, "changed %.0f s ago, unlocked: taken for a running moeppc's (removed "
                     "once unchanged for %d s)", pc_quiet_s(&st), PANEL_TMP_QUIET_S);
        } else if (tmp) {
            f->state = PANEL_FILE_UNFINISHED;
            snprintf(f->why, sizeof f->why, "a temporary file a run stopped while packing left");
        } else {
            pc_check(fd, &st, verify, pool, f);
        }
        close(fd);
    }
    closedir(d);
    if (*n) qsort(fi, (size_t)*n, sizeof *fi, pc_by_name);
    return fi ? fi : xcalloc(1, sizeof *fi);
}

void panel_cache_list_free(PanelFileInfo *f, int n)
{
    for (int i = 0; f && i < n; i++) free(f[i].name);
    free(f);
}
