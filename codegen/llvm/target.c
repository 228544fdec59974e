/* target.c — what CPU we generate code for: host name and features from LLVM, the vector ISA chosen
 * at run time (and capped for testing), and target machines built from name + features. */
#include "codegen/llvm/cg_internal.h"

#if defined(__x86_64__)
#include <immintrin.h> /* the bf16 dot product's probe */
#endif
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <llvm-c/Target.h>

bool cg_fail(char *err, size_t errlen, const char *fmt, ...) {
    if (err && errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return false;
}

bool cg_fail_llvm(char *err, size_t errlen, const char *what, LLVMErrorRef e) {
    char *msg = LLVMGetErrorMessage(e); /* consumes e */
    cg_fail(err, errlen, "%s: %s", what, msg);
    LLVMDisposeErrorMessage(msg);
    return false;
}

const char *cg_isa_name(cg_isa isa) {
    switch (isa) {
    case CG_ISA_AUTO: return "auto";
    case CG_ISA_SSE: return "sse";
    case CG_ISA_AVX2: return "avx2";
    case CG_ISA_AVX512: return "avx512";
    }
    return "?";
}

/* "+name" present in an LLVM feature string ("+avx2,-avx512f,..."), matched as a whole item. */
static bool has_feature(const char *features, const char *name) {
    size_t n = strlen(name);
    for (const char *p = features; (p = strstr(p, name)) != NULL; p += n) {
        bool starts = p > features && p[-1] == '+';
        bool ends = p[n] == ',' || p[n] == '\0';
        if (starts && ends) return true;
    }
    return false;
}

static cg_isa isa_of_features(const char *f) {
    if (has_feature(f, "avx512f") && has_feature(f, "fma")) return CG_ISA_AVX512;
    if (has_feature(f, "avx2") && has_feature(f, "fma")) return CG_ISA_AVX2;
    return CG_ISA_SSE;
}

static int str_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Whether feature name (without its sign) is a vector extension a kernel may use under isa. */
static bool vector_feature(const char *name, size_t n, cg_isa isa) {
    static const struct { const char *prefix; cg_isa from; } kinds[] = {
        {"sse", CG_ISA_SSE},     {"ssse3", CG_ISA_SSE}, {"avx512", CG_ISA_AVX512}, {"amx", CG_ISA_AVX512},
        {"avx", CG_ISA_AVX2},    {"fma", CG_ISA_AVX2},  {"f16c", CG_ISA_AVX2},
    };
    for (size_t k = 0; k < sizeof kinds / sizeof *kinds; k++) {
        size_t p = strlen(kinds[k].prefix);
        if (n >= p && strncmp(name, kinds[k].prefix, p) == 0) return isa >= kinds[k].from; /* (avx512 before avx) */
    }
    return false;
}

char *cg_vector_features(const char *features, cg_isa isa) {
    char *copy = xstrdup(features), *out = xmalloc(strlen(features) + 1);
    char **items = xmalloc((strlen(features) / 2 + 1) * sizeof *items);
    size_t n = 0, at = 0;
    for (char *p = copy, *next; p; p = next) { /* (the items, each ended in place) */
        next = strchr(p, ',');
        if (next) *next++ = '\0';
        if (p[0] == '+' && vector_feature(p + 1, strlen(p + 1), isa)) items[n++] = p;
    }
    qsort(items, n, sizeof *items, str_cmp);
    for (size_t i = 0; i < n; i++)
        if (!i || strcmp(items[i], items[i - 1]) != 0) /* (listed twice: once) */
            at += (size_t)sprintf(out + at, "%s%s", at ? "," : "", items[i]);
    out[at] = '\0';
    free(items);
    free(copy);
    return out;
}

cg_isa cg_host_isa(void) {
    char *f = LLVMGetHostCPUFeatures();
    cg_isa isa = isa_of_features(f);
    LLVMDisposeMessage(f);
    return isa;
}

static bool isa_from_env(cg_isa *out, char *err, size_t errlen) {
    const char *s = getenv("MOEPPC_ISA");
    *out = CG_ISA_AVX512;
    if (!s || !*s) return true;
    if (!strcmp(s, "sse")) *out = CG_ISA_SSE;
    else if (!strcmp(s, "avx2")) *out = CG_ISA_AVX2;
    else if (strcmp(s, "avx512") != 0)
        return cg_fail(err, errlen, "MOEPPC_ISA=%s: expected avx512, avx2 or sse", s);
    return true;
}

/* Switch off what lies above isa. LLVM applies the list in order and "-x" also clears every feature
 * that implies x, so one item at the end suffices: -avx512f drops all AVX-512, -avx drops AVX,
 * AVX2, FMA, F16C and AVX-512. The CPU name's own defaults (applied first) are overridden too. */
static char *capped_features(const char *host, cg_isa isa) {
    const char *cut = isa == CG_ISA_AVX2 ? ",-avx512f" : isa == CG_ISA_SSE ? ",-avx" : "";
    size_t n = strlen(host) + strlen(cut) + 1;
    char *f = xmalloc(n);
    snprintf(f, n, "%s%s", host, cut);
    return f;
}

bool cg_target_detect(CgTarget *t, cg_isa max_isa, char *err, size_t errlen) {
    memset(t, 0, sizeof *t);
    if (max_isa == CG_ISA_AUTO && !isa_from_env(&max_isa, err, errlen)) return false;
    char *name = LLVMGetHostCPUName();
    char *host = LLVMGetHostCPUFeatures();
    snprintf(t->cpu, sizeof t->cpu, "%s", name);
    cg_isa have = isa_of_features(host);
    t->isa = max_isa < have ? max_isa : have;
    t->features = capped_features(host, t->isa);
    t->vec_width = t->isa == CG_ISA_AVX512 ? 16 : t->isa == CG_ISA_AVX2 ? 8 : 4;
    t->has_fma = t->isa != CG_ISA_SSE;
    t->has_f16c = t->isa != CG_ISA_SSE && has_feature(host, "f16c");
    t->has_bf16_dot = t->isa == CG_ISA_AVX512 && has_feature(host, "avx512bf16");
    t->has_amx = t->has_bf16_dot && has_feature(host, "amx-tile") && has_feature(host, "amx-bf16") && cg_amx_grant();
    LLVMDisposeMessage(name);
    LLVMDisposeMessage(host);
    return true;
}

void cg_target_dispose(CgTarget *t) {
    free(t->features);
    t->features = NULL;
}

LLVMTargetMachineRef cg_target_machine(const CgTarget *t, bool pic, char *err, size_t errlen) {
    char *triple = LLVMGetDefaultTargetTriple();
    LLVMTargetRef target = NULL;
    char *msg = NULL;
    LLVMTargetMachineRef tm = NULL;
    if (LLVMGetTargetFromTriple(triple, &target, &msg)) {
        cg_fail(err, errlen, "LLVMGetTargetFromTriple(%s): %s", triple, msg);
        LLVMDisposeMessage(msg);
    } else {
        tm = LLVMCreateTargetMachine(target, triple, t->cpu, t->features, LLVMCodeGenLevelAggressive,
                                     pic ? LLVMRelocPIC : LLVMRelocDefault,
                                     pic ? LLVMCodeModelDefault : LLVMCodeModelJITDefault);
        if (!tm) cg_fail(err, errlen, "LLVMCreateTargetMachine(%s, %s) failed", triple, t->cpu);
    }
    LLVMDisposeMessage(triple);
    return tm;
}

/* ---- does the bf16 dot product pay? ------------------------------------------------------ */
#if defined(__x86_64__)
static double mono_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds for n rounds of 16 independent chains of 512-bit FMAs (16 multiply-adds each) or of
 * vdpbf16ps (32 each): the throughput, not the latency, of either. The loop is assembly, on
 * zmm16-31, so that what it times does not depend on the compiler: written in C, its chains stayed in
 * memory at -O1 (the sanitizer build), where the probe timed store-load chains whose ratio could sit
 * at the decision's threshold, and two processes decided differently (CI, 2026-12-04). x and y are
 * small normal numbers: no operand or sum is subnormal. */
#define ON_CHAINS(M) M("16") M("17") M("18") M("19") M("20") M("21") M("22") M("23") \
                     M("24") M("25") M("26") M("27") M("28") M("29") M("30") M("31")
#define CHAIN_ZERO(r) "vpxord %%zmm" r ", %%zmm" r ", %%zmm" r "\n\t"
#define CHAIN_FMA(r) "vfmadd231ps %[y], %[x], %%zmm" r "\n\t"
#define CHAIN_DOT(r) "vdpbf16ps %[y], %[x], %%zmm" r "\n\t"
#define CHAINS(step, n, x, y)                                                                          \
    do {                                                                                               \
        long left = (n);                                                                               \
        __asm__ volatile(ON_CHAINS(CHAIN_ZERO) "1:\n\t" ON_CHAINS(step) "dec %[left]\n\tjnz 1b"         \
                         : [left] "+r"(left)                                                           \
                         : [x] "v"(x), [y] "v"(y)                                                      \
                         : "cc", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", \
                           "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31");   \
    } while (0)

__attribute__((target("avx512f"))) static double time_fma(long n) {
    __m512 x = _mm512_set1_ps(1e-9f), y = _mm512_set1_ps(1.0f);
    double t0 = mono_s();
    CHAINS(CHAIN_FMA, n, x, y);
    return mono_s() - t0;
}

__attribute__((target("avx512f,avx512bf16"))) static double time_dot(long n) {
    __m512bh x = (__m512bh)_mm512_set1_epi16(0x3080), y = (__m512bh)_mm512_set1_epi16(0x3f80);
    double t0 = mono_s();
    CHAINS(CHAIN_DOT, n, x, y);
    return mono_s() - t0;
}

/* Multiply-adds per second of vdpbf16ps over those of f32 FMAs: the best of 5 runs of each, 0.3 ms
 * apiece on a 3 GHz core (2 ms in all), interleaved, so that a busy neighbour or a clock change
 * cannot favour one. */
static double dot_over_fma(void) {
    const long n = 60000;
    double best_fma = 1e9, best_dot = 1e9;
    for (int r = 0; r < 5; r++) {
        double a = time_fma(n), b = time_dot(n);
        if (a < best_fma) best_fma = a;
        if (b < best_dot) best_dot = b;
    }
    return 2.0 * best_fma / best_dot; /* a dot does twice the multiply-adds */
}
#else
static double dot_over_fma(void) { return 0; } /* (has_bf16_dot is never set off x86) */
#endif

double cg_bf16_dot_ratio(const CgTarget *t) {
    static double ratio = -1; /* the CPU does not change under us: measure once */
    if (!t->has_bf16_dot) return 0;
    if (ratio < 0) ratio = dot_over_fma();
    return ratio;
}

bool cg_bf16_dot_pays(const CgTarget *t) {
    if (!t->has_bf16_dot) return false;
    const char *env = getenv("MOEPPC_BF16_DOT");
    if (env && (strcmp(env, "0") == 0 || strcmp(env, "1") == 0)) return env[0] == '1';
    static bool warned;
    if (env && !warned) {
        fprintf(stderr, "moeppc: warning: MOEPPC_BF16_DOT='%s' is neither 0 nor 1; measuring whether it pays instead\n",
                env);
        warned = true;
    }
    return cg_bf16_dot_ratio(t) >= 1.5;
}
