/* panel_cache.c — `moeppc panel-cache DIR`: what a panel cache's files are (runtime/cpu/panel_cache.h),
 * each checked, with --verify against the checksums its panels were written with; damaged, unfinished
 * and stale files removed on request, and the directory trimmed to a size as a run's
 * --panel-cache-max trims it. */
#include "runtime/cpu/panel_cache.h"
#include "tools/commands.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    const char *dir;
    bool verify, remove_damaged, remove_stale;
    long long max_mb; /* --max MB (-1: none) */
    int threads;
} CacheArgs;

static int cache_usage(const char *fmt, const char *arg)
{
    return usage_error("panel-cache", PANEL_CACHE_USAGE, fmt, arg);
}

static bool int_arg(const char *opt, const char *v, long long lo, long long hi, long long *out)
{
    uint64_t n;
    if (!parse_u64(v, &n) || n < (uint64_t)lo || n > (uint64_t)hi) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s: expected an integer in [%lld, %lld], found '%.40s'", opt, lo, hi, v);
        cache_usage("%s", msg);
        return false;
    }
    *out = (long long)n;
    return true;
}

static int parse_args(int argc, char **argv, CacheArgs *a)
{
    *a = (CacheArgs){.max_mb = -1, .threads = threads_default()};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        long long n;
        if (strcmp(o, "--verify") == 0) a->verify = true;
        else if (strcmp(o, "--remove-damaged") == 0) a->remove_damaged = true;
        else if (strcmp(o, "--remove-stale") == 0) a->remove_stale = true;
        else if (strcmp(o, "--max") == 0 || strcmp(o, "--threads") == 0) {
            if (i + 1 >= argc) return cache_usage("option '%s' needs a value", o);
            bool max = o[2] == 'm';
            if (!int_arg(o, argv[++i], max ? 0 : 1, max ? 1LL << 40 : 256, &n)) return 2;
            if (max) a->max_mb = n;
            else a->threads = (int)n;
        } else if (o[0] == '-' && o[1]) return cache_usage("unknown option '%s'", o);
        else if (a->dir) return cache_usage("unexpected argument '%s' (one DIR)", o);
        else a->dir = o;
    }
    if (!a->dir) return cache_usage("%s", "missing DIR");
    if (!*a->dir) return cache_usage("%s", "DIR: expected a directory, found ''");
    return 0;
}

/* A file's name as it is but for control bytes, '?' (a name in the directory is anyone's). */
static void put_name(const char *name)
{
    for (const char *c = name; *c; c++) putchar((unsigned char)*c < 0x20 || *c == 0x7f ? '?' : *c);
}

static const char *state_word(PanelFileState s)
{
    switch (s) {
    case PANEL_FILE_OK: return "ok";
    case PANEL_FILE_DAMAGED: return "damaged";
    case PANEL_FILE_STALE: return "stale";
    case PANEL_FILE_UNFINISHED: return "unfinished";
    case PANEL_FILE_WRITING: return "writing";
    }
    return "?";
}

static bool to_remove(const CacheArgs *a, PanelFileState s)
{
    return (a->remove_damaged && (s == PANEL_FILE_DAMAGED || s == PANEL_FILE_UNFINISHED)) ||
           (a->remove_stale && s == PANEL_FILE_STALE);
}

int cmd_panel_cache(int argc, char **argv)
{
    CacheArgs a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc;
    CgPool *pool = a.verify ? cg_pool_new(a.threads) : NULL;
    int n;
    char why[4500];
    PanelFileInfo *f = panel_cache_list(a.dir, a.verify, pool, &n, why, sizeof why);
    cg_pool_free(pool);
    if (!f) {
        fprintf(stderr, "moeppc panel-cache: error: %s\n", why);
        return 1;
    }
    int count[5] = {0}, removed = 0, left_bad = 0, verified = 0;
    double total = 0, removed_bytes = 0;
    for (int i = 0; i < n; i++) {
        char when[32] = "?";
        struct tm tm;
        time_t t = f[i].used.tv_sec;
        if (localtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M", &tm);
        put_name(f[i].name);
        printf("  %10.1f MB  %s  ", f[i].bytes / 1e6, when);
        if (f[i].weights) printf("%d weight%s (%s%s)  ", f[i].weights, f[i].weights > 1 ? "s" : "", f[i].first,
                                 f[i].weights > 1 ? ", …" : "");
        printf("%s", state_word(f[i].state));
        if (f[i].state == PANEL_FILE_OK && f[i].verified) printf(", verified");
        if (f[i].state != PANEL_FILE_OK) printf(": %s", f[i].why);
        count[f[i].state]++;
        verified += f[i].verified && f[i].state == PANEL_FILE_OK;
        total += f[i].bytes;
        bool bad = f[i].state == PANEL_FILE_DAMAGED || f[i].state == PANEL_FILE_UNFINISHED;
        if (to_remove(&a, f[i].state)) {
            PanelRemoved r = panel_cache_remove(a.dir, &f[i]);
            if (r == PANEL_REMOVED || r == PANEL_GONE) {
                printf("; removed");
                removed++, removed_bytes += f[i].bytes, bad = false;
            } else if (r == PANEL_REPLACED) {
                printf("; kept: a run put a new file under its name meanwhile");
                bad = false;
            } else if (r == PANEL_WRITING) {
                printf("; kept: a running moeppc is writing it now");
                bad = false;
            } else {
                printf("; cannot be removed: %s", strerror(errno));
            }
        }
        left_bad += bad;
        putchar('\n');
    }
    printf("%s: %d file%s, %.1f MB: %d ok (%d verified), %d damaged, %d stale, %d unfinished", a.dir, n,
           n == 1 ? "" : "s", total / 1e6, count[PANEL_FILE_OK], verified, count[PANEL_FILE_DAMAGED],
           count[PANEL_FILE_STALE], count[PANEL_FILE_UNFINISHED]);
    if (count[PANEL_FILE_WRITING]) printf(", %d being written", count[PANEL_FILE_WRITING]);
    if (removed) printf("; %d removed (%.1f MB)", removed, removed_bytes / 1e6);
    if (a.max_mb >= 0) {
        PanelCache *pc = panel_cache_new(a.dir, NULL, false);
        panel_cache_trim(pc, (double)a.max_mb * 1048576.0);
        PanelCacheStats st = panel_cache_stats(pc);
        printf("; past %lld MB: %d least recently used removed (%.1f MB)", a.max_mb, st.removed,
               st.removed_bytes / 1e6);
        panel_cache_free(pc);
    }
    putchar('\n');
    panel_cache_list_free(f, n);
    if (left_bad)
        fprintf(stderr, "moeppc panel-cache: %d damaged or unfinished file%s in %s (a run packs those steps again; "
                "--remove-damaged removes them)\n", left_bad, left_bad == 1 ? "" : "s", a.dir);
    return left_bad ? 1 : fflush(stdout) == 0 ? 0 : 1;
}
