/* fuzz_sysres.c — the cgroup reader (support/sysres.c: cgroup_limits), which every command runs at
 * start to size its threads and check its memory: /proc/self/mountinfo and /proc/self/cgroup as the
 * kernel might write them, or not. The input is the mountinfo text, a NUL, then the cgroup text (no
 * NUL: the same text for both). Its paths resolve under a folder made once, holding a v1 and a v2
 * hierarchy with limits at several depths, some of them nonsense. Accepted: limits that are 0 (none)
 * or finite and positive, memory at least one byte, and threads_for's count within its bounds. */
#include "tests/fuzz/fuzz.h"

#include "support/support.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char root[256];

static void put(const char *rel, const char *text)
{
    char path[512], dir[512];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *p = strchr(path + strlen(root) + 1, '/'); p; p = strchr(p + 1, '/')) { /* its folders */
        snprintf(dir, sizeof dir, "%.*s", (int)(p - path), path);
        mkdir(dir, 0755);
    }
    FILE *f = fopen(path, "w");
    FUZZ_CHECK(f != NULL, "cannot write %s", path);
    fputs(text, f);
    fclose(f);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_root(void) { nftw(root, remove_one, 16, FTW_DEPTH | FTW_PHYS); }

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(root, sizeof root, "%s/moeppc-fuzz-sysres-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    FUZZ_CHECK(mkdtemp(root) != NULL, "cannot make a folder under %s", root);
    atexit(remove_root);
    put("cg/cpu/cpu.cfs_quota_us", "150000\n");
    put("cg/cpu/cpu.cfs_period_us", "100000\n");
    put("cg/cpu/a/cpu.cfs_quota_us", "50000\n");
    put("cg/cpu/a/cpu.cfs_period_us", "0\n");
    put("cg/memory/memory.limit_in_bytes", "1073741824\n");
    put("cg/memory/memory.usage_in_bytes", "2147483648\n");
    put("cg/memory/a/memory.limit_in_bytes", "-1\n");
    put("cg/memory/a/memory.stat", "total_inactive_file nan\ntotal_active_file 1e400\n");
    put("v2/cpu.max", "max 100000\n");
    put("v2/a/cpu.max", "250000 100000 7\n");
    put("v2/a/memory.max", "536870912\n");
    put("v2/a/memory.high", "max\n");
    put("v2/a/memory.current", "abc\n");
    put("v2/a/b/memory.max", "0\n");
    put("v2/a/b/memory.stat", "inactive_file -5\nactive_file\n");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    const char *mountinfo = text, *cgroup = text;
    size_t n = strlen(text);
    if (n < size) cgroup = text + n + 1; /* (a second NUL ends the cgroup text there) */
    CgroupLimits l = cgroup_limits(mountinfo, cgroup, root);
    FUZZ_CHECK(l.cpus == 0 || (isfinite(l.cpus) && l.cpus > 0), "cpus %g", l.cpus);
    FUZZ_CHECK(l.mem_bytes == 0 || (isfinite(l.mem_bytes) && l.mem_bytes >= 1), "memory %g", l.mem_bytes);
    int t = threads_for(l.cpus > 0 ? 4 : 0, l.cpus);
    FUZZ_CHECK(t >= 1 && t <= MOE_MAX_THREADS, "threads %d", t);
    free(text);
    return 0;
}
