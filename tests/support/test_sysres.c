/* test_sysres.c — the CPUs and memory a process may use (support/sysres.c): cgroup v2 and v1 limits
 * read from made-up mountinfo and /proc/self/cgroup texts over a made-up folder tree (nested limits,
 * a hybrid system, a container's own cgroup mounted as the root, escaped mount points, no limits,
 * nonsense), cores from sysfs topology, the default thread count, and the pool's spin when it has
 * more threads than CPUs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "support/support.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_root[64]; /* the made-up "/", a fresh folder under the test's working directory */

/* Write text to g_root/rel, making its folders. */
static void put(const char *rel, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", g_root, rel);
    for (char *s = path + strlen(g_root) + 1; (s = strchr(s, '/')) != NULL; s++) {
        *s = '\0';
        mkdir(path, 0755);
        *s = '/';
    }
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(g_root, sizeof g_root, "sysres-XXXXXX");
    return mkdtemp(g_root) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
    return system(cmd) == 0 ? 0 : -1;
}

static const char *const v2_mounts =
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "30 22 0:26 / /v2/sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";

/* cgroup v2, the process in /a/b: /a limits CPUs to 2 and memory to 8 GiB of which 2 GiB are used
 * (1.5 GiB of it file pages, inactive and active), /a/b memory to 4 GiB with 3.5 used: the tightest of
 * each. */
static void test_v2_nested(void **state)
{
    (void)state;
    put("v2/sys/fs/cgroup/a/cpu.max", "200000 100000\n");
    put("v2/sys/fs/cgroup/a/b/cpu.max", "max 100000\n");
    put("v2/sys/fs/cgroup/a/memory.max", "8589934592\n");
    put("v2/sys/fs/cgroup/a/memory.current", "2147483648\n");
    put("v2/sys/fs/cgroup/a/memory.stat", "anon 5\ninactive_anon 7\ninactive_file 1073741824\nactive_file 536870912\n");
    put("v2/sys/fs/cgroup/a/b/memory.max", "4294967296\n");
    put("v2/sys/fs/cgroup/a/b/memory.current", "3758096384\n");
    CgroupLimits l = cgroup_limits(v2_mounts, "0::/a/b\n", g_root);
    assert_true(l.cpus == 2.0);
    assert_true(l.mem_bytes == 536870912.0); /* 4 GiB - 3.5 GiB, below /a's 8 - (2 - 1.5) */
    /* the parent alone: its own memory, file pages (both lists) counted free */
    l = cgroup_limits(v2_mounts, "0::/a\n", g_root);
    assert_true(l.cpus == 2.0 && l.mem_bytes == 8053063680.0);
    /* a cgroup with no limits up its path (the root has no cpu.max) */
    l = cgroup_limits(v2_mounts, "0::/elsewhere\n", g_root);
    assert_true(l.cpus == 0 && l.mem_bytes == 0);
    /* a cgroup above the mount's root (a cgroup namespace's "/.."): the mount's own, never a folder
     * outside the mount */
    put("v2/sys/fs/x/cpu.max", "100000 100000\n");
    assert_true(cgroup_limits(v2_mounts, "0::/../x\n", g_root).cpus == 0);
    /* memory.high (a throttle) below memory.max, or with no memory.max: the limit; above it, not */
    put("v2/sys/fs/cgroup/h/memory.max", "max\n");
    put("v2/sys/fs/cgroup/h/memory.high", "2147483648\n");
    put("v2/sys/fs/cgroup/h/memory.current", "1073741824\n");
    assert_true(cgroup_limits(v2_mounts, "0::/h\n", g_root).mem_bytes == 1073741824.0);
    put("v2/sys/fs/cgroup/h/memory.max", "3221225472\n");
    assert_true(cgroup_limits(v2_mounts, "0::/h\n", g_root).mem_bytes == 1073741824.0);
    put("v2/sys/fs/cgroup/h/memory.high", "4294967296\n");
    assert_true(cgroup_limits(v2_mounts, "0::/h\n", g_root).mem_bytes == 2147483648.0);
    put("v2/sys/fs/cgroup/h/memory.high", "max\n");
    assert_true(cgroup_limits(v2_mounts, "0::/h\n", g_root).mem_bytes == 2147483648.0);
    /* over its limit: one byte left, not a negative size */
    put("v2/sys/fs/cgroup/full/memory.max", "1000\n");
    put("v2/sys/fs/cgroup/full/memory.current", "5000\n");
    assert_true(cgroup_limits(v2_mounts, "0::/full\n", g_root).mem_bytes == 1.0);
}

/* A hybrid system (v1 controllers, an empty v2 mount beside them) and a container whose own cgroup
 * /docker/abc is mounted as each hierarchy's root: the limits are read from the mount points, and
 * v1's, not the v2 mount's. */
static void test_v1_container(void **state)
{
    (void)state;
    const char *mounts =
        "40 31 0:33 /docker/abc /v1/sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:34 /docker/abc /v1/sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory\n"
        "42 31 0:35 / /v1/sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
    const char *self = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";
    put("v1/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "150000\n");
    put("v1/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us", "100000\n");
    put("v1/sys/fs/cgroup/memory/memory.limit_in_bytes", "1073741824\n");
    put("v1/sys/fs/cgroup/memory/memory.usage_in_bytes", "536870912\n");
    put("v1/sys/fs/cgroup/memory/memory.stat",
        "cache 1\ninactive_file 4\nactive_file 3\ntotal_inactive_file 268435456\ntotal_active_file 134217728\n");
    put("v1/sys/fs/cgroup/unified/docker/abc/cpu.max", "50000 100000\n");
    CgroupLimits l = cgroup_limits(mounts, self, g_root);
    assert_true(l.cpus == 1.5);
    assert_true(l.mem_bytes == 939524096.0); /* 1 GiB - (512 MiB - 256 - 128 MiB) */
    assert_int_equal(threads_for(8, l.cpus), 2);
    /* a path outside the mount's root: the mount point's own limits; one below it, its own too */
    assert_true(cgroup_limits(mounts, "4:cpu,cpuacct:/other\n", g_root).cpus == 1.5);
    put("v1/sys/fs/cgroup/cpu,cpuacct/sub/cpu.cfs_quota_us", "50000\n");
    put("v1/sys/fs/cgroup/cpu,cpuacct/sub/cpu.cfs_period_us", "100000\n");
    assert_true(cgroup_limits(mounts, "4:cpu,cpuacct:/docker/abc/sub\n", g_root).cpus == 0.5);
    /* v1 without limits: quota -1, the page counter's maximum */
    put("v1/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us", "-1\n");
    put("v1/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
    l = cgroup_limits(mounts, self, g_root);
    assert_true(l.cpus == 0 && l.mem_bytes == 0);
}

/* Mount points with octal escapes (a space is \040), a cgroup line with a colon in its path. */
static void test_escapes(void **state)
{
    (void)state;
    put("esc/cg root/x:y/cpu.max", "300000 100000\n");
    const char *mounts = "30 22 0:26 / /esc/cg\\040root rw - cgroup2 cgroup2 rw\n";
    assert_true(cgroup_limits(mounts, "0::/x:y\n", g_root).cpus == 3.0);
}

/* Nothing to read, or nonsense: no limits, no crash. */
static void test_nonsense(void **state)
{
    (void)state;
    static const char *const texts[] = {
        "", "\n\n", "garbage", " - ", "1 2 3", "1 2 3 / /x - cgroup2", "1 2 3 /\\777 /x rw - cgroup2 c rw\n",
        "1 2 3 / /nonexistent rw - cgroup2 cgroup2 rw\n", "1 2 3 / /v2/sys/fs/cgroup rw - cgroup cgroup rw,cpu\n",
    };
    static const char *const selves[] = {"", "0::", "0::relative", "::/a", "0:/a", "x", "4:cpu:/a/b", "0::/a/b"};
    for (size_t i = 0; i < MOE_ARRAY_LEN(texts); i++)
        for (size_t j = 0; j < MOE_ARRAY_LEN(selves); j++) {
            CgroupLimits l = cgroup_limits(texts[i], selves[j], g_root);
            assert_true(l.cpus == 0 && l.mem_bytes == 0);
        }
    CgroupLimits l = cgroup_limits(NULL, NULL, g_root);
    assert_true(l.cpus == 0 && l.mem_bytes == 0);
    /* limit files of the wrong form */
    put("bad/sys/fs/cgroup/g/cpu.max", "banana 100000\n");
    put("bad/sys/fs/cgroup/g/memory.max", "12abc\n");
    put("bad/sys/fs/cgroup/h/cpu.max", "100000 0\n");
    put("bad/sys/fs/cgroup/h/memory.max", "-5\n");
    const char *mounts = "30 22 0:26 / /bad/sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    l = cgroup_limits(mounts, "0::/g\n", g_root);
    assert_true(l.cpus == 0 && l.mem_bytes == 0);
    l = cgroup_limits(mounts, "0::/h\n", g_root);
    assert_true(l.cpus == 0 && l.mem_bytes == 0);
}

/* Cores: CPUs sharing a thread_siblings_list are one core; without topology each CPU is one. */
static void test_cores(void **state)
{
    (void)state;
    put("sys/cpu/cpu0/topology/thread_siblings_list", "0,2\n");
    put("sys/cpu/cpu1/topology/thread_siblings_list", "1,3\n");
    put("sys/cpu/cpu2/topology/thread_siblings_list", "0,2\n");
    put("sys/cpu/cpu3/topology/thread_siblings_list", "1,3\n");
    put("sys/cpu/cpu4/topology/thread_siblings_list", "4\n");
    char dir[128];
    snprintf(dir, sizeof dir, "%s/sys/cpu", g_root);
    assert_int_equal(cpu_cores_among(dir, (const int[]){0, 1, 2, 3}, 4), 2);
    assert_int_equal(cpu_cores_among(dir, (const int[]){0, 2}, 2), 1);
    assert_int_equal(cpu_cores_among(dir, (const int[]){0, 1, 4}, 3), 3);
    assert_int_equal(cpu_cores_among(dir, (const int[]){0, 2, 7}, 3), 3); /* cpu7 has no topology */
    assert_int_equal(threads_for(8, 0), 8);
    assert_int_equal(threads_for(8, 2.0), 2);
    assert_int_equal(threads_for(8, 0.25), 1);
    assert_int_equal(threads_for(4, 16), 4);
    assert_int_equal(threads_for(1000, 0), MOE_MAX_THREADS);
    assert_int_equal(threads_for(0, 0), 1);
}

/* This machine: the defaults are within what its affinity gives. */
static void test_this_machine(void **state)
{
    (void)state;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    int cpus = cpus_available(), threads = threads_default();
    assert_true(cpus >= 1 && cpus <= online);
    assert_true(threads >= 1 && threads <= cpus);
    assert_true(mem_available_bytes() > 0);
}

static void count_task(void *ctx, int64_t task, int thread)
{
    (void)thread;
    ((int64_t *)ctx)[task] += task + 1;
}

/* A pool within the CPUs spins before it sleeps; one with more threads than CPUs does not, and runs
 * every task all the same. */
static void test_pool_oversubscribed(void **state)
{
    (void)state;
    int cpus = cpus_available();
    for (int threads = 1; threads <= cpus + 2; threads++) {
        CgPool *pool = cg_pool_new(threads);
        assert_int_equal(cg_pool_spins(pool), threads > 1 && threads <= cpus);
        int64_t vals[100] = {0};
        for (int round = 0; round < 50; round++) cg_pool_parallel_for(pool, 100, count_task, vals);
        for (int64_t i = 0; i < 100; i++) assert_int_equal(vals[i], 50 * (i + 1));
        cg_pool_free(pool);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v2_nested), cmocka_unit_test(test_v1_container), cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_nonsense),  cmocka_unit_test(test_cores),        cmocka_unit_test(test_this_machine),
        cmocka_unit_test(test_pool_oversubscribed),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
