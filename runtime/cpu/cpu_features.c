/* cpu_features.c — whether this CPU runs kernels compiled for another one: the instruction-set
 * extensions of an LLVM feature list ("+avx2,+fma,-avx512f,...", what the kernels of an executable
 * or library were compiled with) read from CPUID, and the OS's saving of the vector registers from
 * XGETBV. Without LLVM: built executables and emitted libraries check at start, before a kernel
 * runs, instead of dying of an illegal instruction on a CPU older than the one that built them. */
#include "runtime/cpu/cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

enum { NEEDS_NONE, NEEDS_AVX, NEEDS_AVX512, NEEDS_AMX }; /* register state a feature needs the OS to save */

/* Where CPUID reports each feature, by LLVM's name (only features that are instructions). */
typedef struct {
    const char *name;
    unsigned leaf, sub;
    char reg; /* 'a', 'b', 'c', 'd' */
    unsigned char bit, needs;
} Feature;

static const Feature features[] = {
    {"cmov", 1, 0, 'd', 15, NEEDS_NONE},        {"mmx", 1, 0, 'd', 23, NEEDS_NONE},
    {"sse", 1, 0, 'd', 25, NEEDS_NONE},         {"sse2", 1, 0, 'd', 26, NEEDS_NONE},
    {"sse3", 1, 0, 'c', 0, NEEDS_NONE},         {"pclmul", 1, 0, 'c', 1, NEEDS_NONE},
    {"ssse3", 1, 0, 'c', 9, NEEDS_NONE},        {"fma", 1, 0, 'c', 12, NEEDS_AVX},
    {"cx16", 1, 0, 'c', 13, NEEDS_NONE},        {"sse4.1", 1, 0, 'c', 19, NEEDS_NONE},
    {"sse4.2", 1, 0, 'c', 20, NEEDS_NONE},      {"movbe", 1, 0, 'c', 22, NEEDS_NONE},
    {"popcnt", 1, 0, 'c', 23, NEEDS_NONE},      {"aes", 1, 0, 'c', 25, NEEDS_NONE},
    {"avx", 1, 0, 'c', 28, NEEDS_AVX},          {"f16c", 1, 0, 'c', 29, NEEDS_AVX},
    {"bmi", 7, 0, 'b', 3, NEEDS_NONE},          {"avx2", 7, 0, 'b', 5, NEEDS_AVX},
    {"bmi2", 7, 0, 'b', 8, NEEDS_NONE},         {"avx512f", 7, 0, 'b', 16, NEEDS_AVX512},
    {"avx512dq", 7, 0, 'b', 17, NEEDS_AVX512},  {"adx", 7, 0, 'b', 19, NEEDS_NONE},
    {"avx512ifma", 7, 0, 'b', 21, NEEDS_AVX512}, {"avx512cd", 7, 0, 'b', 28, NEEDS_AVX512},
    {"sha", 7, 0, 'b', 29, NEEDS_NONE},         {"avx512bw", 7, 0, 'b', 30, NEEDS_AVX512},
    {"avx512vl", 7, 0, 'b', 31, NEEDS_AVX512},  {"avx512vbmi", 7, 0, 'c', 1, NEEDS_AVX512},
    {"avx512vbmi2", 7, 0, 'c', 6, NEEDS_AVX512}, {"gfni", 7, 0, 'c', 8, NEEDS_NONE},
    {"vaes", 7, 0, 'c', 9, NEEDS_AVX},          {"vpclmulqdq", 7, 0, 'c', 10, NEEDS_AVX},
    {"avx512vnni", 7, 0, 'c', 11, NEEDS_AVX512}, {"avx512bitalg", 7, 0, 'c', 12, NEEDS_AVX512},
    {"avx512vpopcntdq", 7, 0, 'c', 14, NEEDS_AVX512}, {"avx512vp2intersect", 7, 0, 'd', 8, NEEDS_AVX512},
    {"avx512fp16", 7, 0, 'd', 23, NEEDS_AVX512}, {"avxvnni", 7, 1, 'a', 4, NEEDS_AVX},
    {"avx512bf16", 7, 1, 'a', 5, NEEDS_AVX512}, {"lzcnt", 0x80000001u, 0, 'c', 5, NEEDS_NONE},
    {"sse4a", 0x80000001u, 0, 'c', 6, NEEDS_NONE}, {"fma4", 0x80000001u, 0, 'c', 16, NEEDS_AVX},
    {"xop", 0x80000001u, 0, 'c', 11, NEEDS_AVX},
    {"amx-bf16", 7, 0, 'd', 22, NEEDS_AMX},     {"amx-tile", 7, 0, 'd', 24, NEEDS_AMX},
    {"amx-int8", 7, 0, 'd', 25, NEEDS_AMX},
};

static const Feature *feature_find(const char *name, size_t len)
{
    for (size_t k = 0; k < sizeof features / sizeof *features; k++)
        if (strlen(features[k].name) == len && strncmp(features[k].name, name, len) == 0) return &features[k];
    return NULL;
}

/* The register state the OS saves on a context switch (XCR0): AVX needs SSE and AVX state (bits
 * 1, 2), AVX-512 also the opmask and upper registers (bits 5–7), AMX (on AVX-512 CPUs only) also
 * the tile configuration and data (bits 17, 18; a process still asks Linux for the data, gemm.c). */
static int os_saves(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return NEEDS_NONE; /* no OSXSAVE */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 0x6) != 0x6) return NEEDS_NONE;
    if ((lo & 0xe0) != 0xe0) return NEEDS_AVX;
    return (lo & 0x60000) == 0x60000 ? NEEDS_AMX : NEEDS_AVX512;
}

/* "a,b,c" contains name as a whole item */
static bool listed(const char *list, const char *name, size_t len)
{
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n == len && strncmp(p, name, len) == 0) return true;
        p = e ? e + 1 : NULL;
    }
    return false;
}

static int feature_present(const Feature *f)
{
    const char *hide = getenv("MOEPPC_CPU_HIDE"); /* testing: features to treat as absent */
    if (hide && listed(hide, f->name, strlen(f->name))) return 0;
    unsigned r[4] = {0, 0, 0, 0};
    if (!__get_cpuid_count(f->leaf, f->sub, &r[0], &r[1], &r[2], &r[3])) return 0;
    if (!((r[f->reg - 'a'] >> f->bit) & 1u)) return 0;
    return os_saves() >= f->needs;
}

int cpu_feature(const char *name)
{
    const Feature *f = feature_find(name, strlen(name));
    return f ? feature_present(f) : -1;
}

bool cpu_runs_features(const char *list, char *msg, size_t n)
{
    /* what the list switches off: "-avx512f" every AVX-512 extension, "-avx" every AVX one (LLVM
     * clears the features that imply the one switched off; capped targets end so, target.c) */
    int cap = NEEDS_AMX;
    if (listed(list, "-avx512f", 8)) cap = NEEDS_AVX;
    if (listed(list, "-avx", 4)) cap = NEEDS_NONE;
    size_t len = 0;
    int missing = 0;
    if (n) msg[0] = '\0';
    for (const char *p = list; p && *p;) {
        const char *e = strchr(p, ',');
        size_t item = e ? (size_t)(e - p) : strlen(p);
        const Feature *f = *p == '+' ? feature_find(p + 1, item - 1) : NULL;
        char neg[32];
        if (f) snprintf(neg, sizeof neg, "-%s", f->name);
        if (f && f->needs <= cap && !listed(list, neg, strlen(neg)) && feature_present(f) == 0) {
            missing++;
            if (len + strlen(f->name) + 3 < n) len += (size_t)snprintf(msg + len, n - len, "%s%s", len ? ", " : "", f->name);
        }
        p = e ? e + 1 : NULL;
    }
    return missing == 0;
}
#else
int cpu_feature(const char *name)
{
    (void)name;
    return -1;
}

bool cpu_runs_features(const char *list, char *msg, size_t n)
{
    (void)list;
    if (n) msg[0] = '\0';
    return true;
}
#endif
