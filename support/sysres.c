/* sysres.c — what the machine gives this process: its CPUs (affinity, cores, the cgroup's CPU quota)
 * and its memory (MemAvailable, the cgroup's memory limit). In a container the CPUs and memory Linux
 * lists are the host's; the cgroup says what the process may use: a pool as wide as the host's CPUs
 * under a quota of two spends its time descheduled, and a model the host could hold but the container
 * cannot is killed by the OOM killer instead of refused with a message.
 *
 * The cgroup of a controller comes from /proc/self/cgroup (v1: the line naming the controller; v2:
 * "0::PATH"), its folder from /proc/self/mountinfo (the mount of that hierarchy, PATH taken relative
 * to the mount's root: a container without a cgroup namespace sees its own cgroup mounted as the
 * root), and the limit is the tightest of the cgroup's and its ancestors' up to the mount. v1 is read
 * first for each controller: on a hybrid system the v2 mount holds no controllers. */
#include "support/support.h"

#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

enum { PATH_BYTES = 4096 };

/* The text of the file dir/name (file_read_all: NULL where it cannot be read). The caller frees it. */
static char *read_in(const char *dir, const char *name)
{
    char path[3 * PATH_BYTES + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return file_read_all(path, NULL);
}

/* Is word one of the comma-separated words of list[0..n)? */
static bool has_word(const char *list, size_t n, const char *word)
{
    size_t w = strlen(word);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && list[j] != ',') j++;
        if (j - i == w && memcmp(list + i, word, w) == 0) return true;
        i = j + 1;
    }
    return false;
}

/* A mountinfo path field (spaces and the like as \ooo) from s up to a space, into out. */
static const char *path_field(const char *s, char *out, size_t size)
{
    size_t n = 0;
    while (*s && *s != ' ' && *s != '\n') {
        int c = (unsigned char)*s++;
        if (c == '\\' && s[0] >= '0' && s[0] <= '3' && s[1] >= '0' && s[1] <= '7' && s[2] >= '0' && s[2] <= '7')
            c = (s[0] - '0') * 64 + (s[1] - '0') * 8 + (s[2] - '0'), s += 3;
        if (n + 1 < size) out[n++] = (char)c;
    }
    out[n] = '\0';
    return s;
}

/* The mount of the hierarchy: v1 (controller given) a "cgroup" mount whose options name it, v2
 * (controller NULL) the "cgroup2" mount. Its root and mount point, or false. */
static bool mount_line(const char *s, const char *controller, char *root, char *point)
{
    for (int f = 0; f < 3 && s; f++) s = strchr(s, ' '), s = s ? s + 1 : NULL; /* id, parent, dev */
    if (!s) return false;
    s = path_field(s, root, PATH_BYTES);
    if (*s != ' ') return false;
    s = path_field(s + 1, point, PATH_BYTES);
    const char *dash = strstr(s, " - ");
    if (!dash) return false;
    const char *type = dash + 3, *src = strchr(type, ' ');
    if (!src) return false;
    const char *opts = strchr(src + 1, ' ');
    size_t tn = (size_t)(src - type);
    if (!controller) return tn == 7 && memcmp(type, "cgroup2", 7) == 0;
    return tn == 6 && memcmp(type, "cgroup", 6) == 0 && opts && has_word(opts + 1, strlen(opts + 1), controller);
}

static bool find_mount(const char *mountinfo, const char *controller, char *root, char *point)
{
    bool found = false;
    for (const char *line = mountinfo; !found && line && *line;) {
        const char *eol = strchr(line, '\n');
        size_t n = eol ? (size_t)(eol - line) : strlen(line);
        char *copy = xmalloc(n + 1); /* one line alone: no field runs into the next */
        memcpy(copy, line, n);
        copy[n] = '\0';
        found = mount_line(copy, controller, root, point);
        free(copy);
        line = eol ? eol + 1 : NULL;
    }
    return found;
}

/* The process's cgroup path in the hierarchy: v1 the line whose controllers name controller, v2
 * (NULL) the "0::" line. */
static bool find_cgroup(const char *self_cgroup, const char *controller, char *path)
{
    for (const char *line = self_cgroup; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
        const char *c1 = strchr(line, ':'), *eol = strchr(line, '\n');
        const char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || (eol && c2 > eol)) continue;
        bool match = controller ? has_word(c1 + 1, (size_t)(c2 - c1 - 1), controller)
                                : c1 - line == 1 && line[0] == '0' && c2 == c1 + 1;
        if (!match) continue;
        size_t n = eol ? (size_t)(eol - c2 - 1) : strlen(c2 + 1);
        if (n == 0 || n >= PATH_BYTES) return false;
        memcpy(path, c2 + 1, n);
        path[n] = '\0';
        return path[0] == '/';
    }
    return false;
}

/* One limit of a cgroup folder: a positive number, or 0 where it sets none. */
typedef double (*limit_fn)(const char *dir, bool v1);

/* The tightest limit along the process's cgroup of controller (v1, else v2) and its ancestors. */
static double tightest(const char *mountinfo, const char *self_cgroup, const char *prefix, const char *controller,
                       limit_fn limit)
{
    char *root = xmalloc(PATH_BYTES), *point = xmalloc(PATH_BYTES), *path = xmalloc(PATH_BYTES);
    char *dir = xmalloc(3 * PATH_BYTES);
    double best = 0;
    for (int v1 = 1; v1 >= 0; v1--) {
        const char *c = v1 ? controller : NULL;
        if (!find_mount(mountinfo, c, root, point) || !find_cgroup(self_cgroup, c, path)) continue;
        size_t rn = strcmp(root, "/") == 0 ? 0 : strlen(root);
        const char *rel = ""; /* the path below the mount's root; outside it (or above: "/.."), the root */
        if (strncmp(path, root, rn) == 0 && (path[rn] == '/' || path[rn] == '\0') && !strstr(path, "/.."))
            rel = path + rn;
        size_t len = strlen(rel);
        for (;;) {
            snprintf(dir, 3 * PATH_BYTES, "%s%s%.*s", prefix, point, (int)len, rel);
            double v = limit(dir, v1);
            if (v > 0 && (best == 0 || v < best)) best = v;
            if (len == 0) break;
            while (len > 0 && rel[len - 1] != '/') len--; /* the parent */
            if (len > 0) len--;
        }
        break;
    }
    free(root), free(point), free(path), free(dir);
    return best;
}

/* The number the file dir/name starts with, or NAN; *second (when given) the number after it. */
static double file_number(const char *dir, const char *name, double *second)
{
    char *text = read_in(dir, name), *end;
    double v = text ? strtod(text, &end) : NAN;
    if (text && (end == text || (*end != '\0' && *end != '\n' && *end != ' '))) v = NAN;
    if (second) *second = text && !isnan(v) ? strtod(end, NULL) : NAN;
    free(text);
    return v;
}

static double cpu_limit(const char *dir, bool v1)
{
    double quota, period;
    if (v1) quota = file_number(dir, "cpu.cfs_quota_us", NULL), period = file_number(dir, "cpu.cfs_period_us", NULL);
    else quota = file_number(dir, "cpu.max", &period); /* "QUOTA PERIOD" or "max PERIOD" */
    return quota > 0 && period > 0 ? quota / period : 0; /* (NAN fails both) */
}

/* Bytes still to be had under dir's limit: limit - (usage - the file pages on the LRU lists, active
 * and inactive), at least 1 byte; 0: no limit. A cgroup's usage counts its page cache, which grows up
 * to the limit and which reclaim frees (the active list first demoted) before anything is killed:
 * counted free, as the host's MemAvailable counts it (the inactive list alone would make a cgroup at
 * its limit with a hot cache, the files a build just wrote, look full). Shared memory is not on the
 * file lists and stays used. The limit is v2's memory.high where that is lower than memory.max: above
 * it the kernel throttles the cgroup and reclaims hard, a model there would crawl rather than be
 * killed. Swap (memory.swap.max, memsw) is not counted: weights paged out to it are no way to run. */
static double mem_limit(const char *dir, bool v1)
{
    double limit = file_number(dir, v1 ? "memory.limit_in_bytes" : "memory.max", NULL);
    double high = v1 ? NAN : file_number(dir, "memory.high", NULL); /* ("max": NAN) */
    if (high > 0 && (!(limit > 0) || high < limit)) limit = high;
    double usage = file_number(dir, v1 ? "memory.usage_in_bytes" : "memory.current", NULL);
    if (!(limit > 0 && limit < 0x1p60)) return 0; /* "max", v1's page-counter maximum, unreadable */
    double file = 0;
    const char *keys[] = {v1 ? "total_inactive_file " : "inactive_file ", v1 ? "total_active_file " : "active_file "};
    char *stat = read_in(dir, "memory.stat");
    for (const char *line = stat; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL)
        for (int k = 0; k < 2; k++)
            if (strncmp(line, keys[k], strlen(keys[k])) == 0) file += strtod(line + strlen(keys[k]), NULL);
    free(stat);
    double used = usage >= 0 ? usage - (file > 0 && file < usage ? file : 0) : 0;
    return limit - used >= 1 ? limit - used : 1;
}

CgroupLimits cgroup_limits(const char *mountinfo, const char *self_cgroup, const char *prefix)
{
    CgroupLimits l = {0, 0};
    if (!mountinfo || !self_cgroup) return l;
    l.cpus = tightest(mountinfo, self_cgroup, prefix, "cpu", cpu_limit);
    l.mem_bytes = tightest(mountinfo, self_cgroup, prefix, "memory", mem_limit);
    return l;
}

/* This process's tightest limit of one controller (0: none). */
static double own_limit(const char *controller, limit_fn limit)
{
    char *mountinfo = file_read_all("/proc/self/mountinfo", NULL), *self = file_read_all("/proc/self/cgroup", NULL);
    double v = mountinfo && self ? tightest(mountinfo, self, "", controller, limit) : 0;
    free(mountinfo), free(self);
    return v;
}

int cpu_cores_among(const char *sys_cpu, const int *cpus, int n)
{
    char **sib = xcalloc((size_t)(n > 0 ? n : 1), sizeof *sib);
    char dir[PATH_BYTES];
    int cores = 0;
    for (int i = 0; i < n; i++) {
        snprintf(dir, sizeof dir, "%s/cpu%d/topology", sys_cpu, cpus[i]);
        if (!(sib[i] = read_in(dir, "thread_siblings_list"))) {
            cores = n; /* no topology: each CPU its own core */
            break;
        }
        sib[i][strcspn(sib[i], "\n")] = '\0';
        bool seen = false;
        for (int j = 0; j < i && !seen; j++) seen = strcmp(sib[i], sib[j]) == 0;
        cores += !seen;
    }
    for (int i = 0; i < n; i++) free(sib[i]);
    free(sib);
    return cores > 0 ? cores : n;
}

int threads_for(int cores, double cgroup_cpus)
{
    int t = cores;
    if (cgroup_cpus > 0 && ceil(cgroup_cpus) < t) t = (int)ceil(cgroup_cpus);
    return t < 1 ? 1 : t > MOE_MAX_THREADS ? MOE_MAX_THREADS : t;
}

/* The CPUs of this process's affinity, their number. */
static int affinity(int *cpus)
{
    cpu_set_t set;
    int n = 0;
    if (sched_getaffinity(0, sizeof set, &set) != 0) return 0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &set)) cpus[n++] = c;
    return n;
}

int cpus_available(void)
{
    int cpus[CPU_SETSIZE], n = affinity(cpus);
    double q = own_limit("cpu", cpu_limit);
    if (q > 0 && ceil(q) < n) n = (int)ceil(q);
    return n > 0 ? n : 1;
}

int threads_default(void)
{
    int cpus[CPU_SETSIZE], n = affinity(cpus);
    if (n == 0) return 1;
    return threads_for(cpu_cores_among("/sys/devices/system/cpu", cpus, n), own_limit("cpu", cpu_limit));
}

double mem_available_bytes(void)
{
    const char *lim = getenv("MOEPPC_MEM_LIMIT_MB");
    if (lim) return atof(lim) * 1048576.0;
    FILE *f = fopen("/proc/meminfo", "r");
    double kb = 0;
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    if (f) fclose(f);
    double have = kb > 0 ? kb * 1024.0 : 1e18, cg = own_limit("memory", mem_limit);
    return cg > 0 && cg < have ? cg : have;
}
