/* jit.c — from a kernel configuration to callable code: build the IR, verify it, run "default<O3>"
 * with the host target machine, optionally write an object file, then compile it to an object in
 * memory and link that into LLJIT. Kernels are cached per configuration for the life of the CgJit.
 *
 * Profiling: with MOEPPC_PERF_MAP=1 in the environment, each kernel linked is also written to
 * /tmp/perf-PID.map ("ADDRESS SIZE SYMBOL", hexadecimal, the size its object's symbol table gives),
 * the file `perf report` reads to name code in anonymous memory: `MOEPPC_PERF_MAP=1 perf record
 * moeppc run …` then names each JIT kernel instead of showing bare addresses.
 *
 * Objects kept between processes: with MOEPPC_JIT_CACHE=DIR, each kernel the JIT links is kept in
 * DIR/HASH.jit under its key — LLVM's version, the triple, the CPU's name and features, and the
 * module's IR as built, before optimisation — written whole beside the object and its checksum; a
 * later JIT that builds the same IR for the same target reads the object back instead of optimising
 * and compiling (a hit compares the key byte for byte and the object's FNV-1a; a file not whole, or
 * changed, is a miss, written again). Objects for files (`moeppc build`) and runs that dump IR are
 * never cached. */
#include "codegen/llvm/cg_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Object.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>
#include <llvm/Config/llvm-config.h>

const char *cg_llvm_version(void) { return LLVM_VERSION_STRING; }

struct CgJit {
    char *ir_dump_dir;        /* when set, every optimised module is also written there as SYMBOL.ll */
    CgTarget t;
    LLVMOrcThreadSafeContextRef tsc;
    LLVMContextRef ctx;      /* tsc's context, where every kernel module is built; tsc owns it */
    LLVMTargetMachineRef tm; /* for LLVMRunPasses and object files; the JIT owns its own */
    LLVMTargetMachineRef tm_link; /* the objects the JIT links (not position-independent, as the JIT's own) */
    LLVMOrcLLJITRef lljit;
    CgKernel **kernels;
    int n_kernels;
    char *cache_dir;         /* MOEPPC_JIT_CACHE (NULL: none) */
    int cache_hits, cache_kept; /* (atomics: compile_job counts on threads) */
};

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static int init_failed;
static void init_llvm_native(void) {
    init_failed = LLVMInitializeNativeTarget() || LLVMInitializeNativeAsmPrinter();
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* LLJIT whose target machine has the host's name + features (its default would not), plus the
 * process's symbols so a stray libcall (fmaf, ...) resolves instead of failing to link. */
static bool start_lljit(CgJit *jit, char *err, size_t errlen) {
    LLVMTargetMachineRef jit_tm = cg_target_machine(&jit->t, false, err, errlen);
    if (!jit_tm) return false;
    LLVMOrcJITTargetMachineBuilderRef jtmb = LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(jit_tm);
    LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
    LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(builder, jtmb); /* takes jtmb, which took jit_tm */
    LLVMErrorRef e = LLVMOrcCreateLLJIT(&jit->lljit, builder);   /* takes builder */
    if (e) {
        jit->lljit = NULL;
        return cg_fail_llvm(err, errlen, "LLVMOrcCreateLLJIT", e);
    }
    LLVMOrcDefinitionGeneratorRef gen = NULL;
    e = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(&gen, LLVMOrcLLJITGetGlobalPrefix(jit->lljit),
                                                             NULL, NULL);
    if (e) return cg_fail_llvm(err, errlen, "LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess", e);
    LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(jit->lljit), gen);
    return true;
}

LLVMOrcThreadSafeContextRef cg_thread_safe_context(LLVMContextRef *ctx) {
#if LLVM_VERSION_MAJOR >= 21
    /* LLVM 21 took LLVMOrcThreadSafeContextGetContext away: make the context, then wrap it. */
    *ctx = LLVMContextCreate();
    return LLVMOrcCreateNewThreadSafeContextFromLLVMContext(*ctx);
#else
    LLVMOrcThreadSafeContextRef tsc = LLVMOrcCreateNewThreadSafeContext();
    *ctx = LLVMOrcThreadSafeContextGetContext(tsc);
    return tsc;
#endif
}

CgJit *cg_jit_new(cg_isa max_isa, char *err, size_t errlen) {
    pthread_once(&init_once, init_llvm_native);
    if (init_failed) {
        cg_fail(err, errlen, "LLVM: no native target (LLVMInitializeNativeTarget failed)");
        return NULL;
    }
    CgJit *jit = xcalloc(1, sizeof *jit);
    bool ok = cg_target_detect(&jit->t, max_isa, err, errlen) && start_lljit(jit, err, errlen) &&
              (jit->tm = cg_target_machine(&jit->t, true, err, errlen)) != NULL &&
              (jit->tm_link = cg_target_machine(&jit->t, false, err, errlen)) != NULL;
    if (!ok) {
        cg_jit_free(jit);
        return NULL;
    }
    jit->tsc = cg_thread_safe_context(&jit->ctx);
    const char *dir = getenv("MOEPPC_JIT_CACHE");
    jit->cache_dir = dir && *dir ? xstrdup(dir) : NULL;
    return jit;
}

void cg_jit_free(CgJit *jit) {
    if (!jit) return;
    if (jit->lljit) {
        LLVMErrorRef e = LLVMOrcDisposeLLJIT(jit->lljit);
        if (e) {
            char msg[512];
            cg_fail_llvm(msg, sizeof msg, "LLVMOrcDisposeLLJIT", e);
            fprintf(stderr, "moeppc: warning: %s\n", msg);
        }
    }
    if (jit->tsc) LLVMOrcDisposeThreadSafeContext(jit->tsc);
    if (jit->tm) LLVMDisposeTargetMachine(jit->tm);
    if (jit->tm_link) LLVMDisposeTargetMachine(jit->tm_link);
    free(jit->ir_dump_dir);
    free(jit->cache_dir);
    for (int i = 0; i < jit->n_kernels; i++) free(jit->kernels[i]);
    free(jit->kernels);
    cg_target_dispose(&jit->t);
    free(jit);
}

const CgTarget *cg_jit_target(const CgJit *jit) { return &jit->t; }

CgKernelConfig cg_target_default_tile(const CgTarget *t, moe_dtype b_dtype) {
    /* AVX-512: 24 zmm accumulators + 3 B vectors + 1 broadcast of 32 registers (8x48 measured at
     * ~100 % of peak). AVX2: 16 ymm: 12 accumulators + 2 B + 1 A. SSE: fewer, see below. */
    if (t->isa == CG_ISA_AVX512) return (CgKernelConfig){b_dtype, 8, 48, 4, false, false, false};
    if (t->isa == CG_ISA_AVX2) return (CgKernelConfig){b_dtype, 6, 16, 4, false, false, false};
    return (CgKernelConfig){b_dtype, 4, 8, 4, false, false, false}; /* SSE: 6x8 spills once mul, add and f16 decoding need temps */
}

CgKernelConfig cg_kernel_config_default(const CgJit *jit, moe_dtype b_dtype) { return cg_target_default_tile(&jit->t, b_dtype); }

CgKernelConfig cg_kernel_config_tile(const CgJit *jit, moe_dtype b_dtype, int mr, int nr, int k_unroll) {
    CgKernelConfig d = cg_kernel_config_default(jit, b_dtype);
    if (k_unroll >= 1 && k_unroll <= 16) d.k_unroll = k_unroll;
    int w = jit->t.vec_width, regs = jit->t.isa == CG_ISA_AVX512 ? 32 : 16;
    /* accumulators + one vector per B column block + the A broadcast must fit the register file */
    if (mr < 1 || nr < w || nr % w || mr * (nr / w) + nr / w + 1 > regs) return d;
    d.mr = mr;
    d.nr = nr;
    return d;
}

CgKernelConfig cg_kernel_form(const CgTarget *t, CgKernelConfig cfg) {
    if (t->isa == CG_ISA_AVX512 && cfg.b_dtype == DT_BF16 && !cfg.a_bf16 && !cfg.amx) cfg.kpair_b = true;
    return cfg;
}

static bool amx_tile_ok(int mr, int nr) { return ((mr >= 1 && mr <= 16) || mr == 32) && (nr == 16 || nr == 32); }

CgKernelConfig cg_kernel_config_amx(int mr, int nr) {
    bool ok = amx_tile_ok(mr, nr);
    return (CgKernelConfig){DT_BF16, ok ? mr : 32, ok ? nr : 32, 1, true, true, false};
}

void cg_kernel_symbol(const CgKernelConfig *cfg, cg_isa isa, char *out, size_t outlen) {
    snprintf(out, outlen, "moeppc_gemm_%s_%s%s_%dx%d_u%d", cg_isa_name(isa), dtype_name(cfg->b_dtype),
             cfg->amx ? "amx" : cfg->a_bf16 ? "dot" : cfg->kpair_b ? "kp" : "", cfg->mr, cfg->nr, cfg->k_unroll);
}

static bool check_config(const CgJit *jit, const CgKernelConfig *cfg, char *err, size_t errlen) {
    moe_dtype d = cfg->b_dtype;
    if (d != DT_F32 && d != DT_BF16 && d != DT_F16)
        return cg_fail(err, errlen, "kernel: B dtype %s not supported (f32, bf16, f16)", dtype_name(d));
    if (cfg->a_bf16 && (d != DT_BF16 || !jit->t.has_bf16_dot))
        return cg_fail(err, errlen, "kernel: the bf16 dot product needs bf16 weights and AVX512-BF16 with the "
                                    "AVX-512 ISA (this target: %s%s)", cg_isa_name(jit->t.isa),
                       jit->t.has_bf16_dot ? "" : ", no AVX512-BF16");
    if (cfg->kpair_b && (d != DT_BF16 || cfg->a_bf16 || cfg->amx))
        return cg_fail(err, errlen, "kernel: B in k pairs with f32 A needs bf16 weights, without the bf16 dot product");
    if (cfg->amx && !jit->t.has_amx)
        return cg_fail(err, errlen, "kernel: AMX tiles need AMX-TILE and AMX-BF16 with the AVX-512 ISA and the "
                                    "kernel's leave to use them (this target: %s)", cg_isa_name(jit->t.isa));
    if (cfg->amx)
        return cfg->a_bf16 && amx_tile_ok(cfg->mr, cfg->nr)
                   ? true
                   : cg_fail(err, errlen, "kernel: AMX tile %dx%d invalid (1..16 or 32 rows, 16 or 32 columns, "
                                          "bf16 activations)", cfg->mr, cfg->nr);
    int w = jit->t.vec_width;
    if (cfg->mr < 1 || cfg->nr < w || cfg->nr % w || cfg->mr * (cfg->nr / w) > 64 || cfg->k_unroll < 1 ||
        cfg->k_unroll > 16)
        return cg_fail(err, errlen, "kernel: tile %dx%d (unroll %d) invalid for %d-wide vectors", cfg->mr,
                       cfg->nr, cfg->k_unroll, w);
    return true;
}

/* Give mod the JIT's triple and data layout, verify it and run "default<O3>" with tm. Disposes mod
 * and returns false with err on failure. */
static bool optimize_with(CgJit *jit, LLVMTargetMachineRef tm, LLVMModuleRef mod, const char *sym, char *err,
                          size_t errlen) {
    LLVMSetTarget(mod, LLVMOrcLLJITGetTripleString(jit->lljit));
    LLVMSetDataLayout(mod, LLVMOrcLLJITGetDataLayoutStr(jit->lljit));
    char *msg = NULL;
    if (LLVMVerifyModule(mod, LLVMReturnStatusAction, &msg)) {
        cg_fail(err, errlen, "kernel %s: invalid IR (a generator bug): %s", sym, msg);
        LLVMDisposeMessage(msg);
        LLVMDisposeModule(mod);
        return false;
    }
    LLVMDisposeMessage(msg);
    LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
    LLVMErrorRef e = LLVMRunPasses(mod, "default<O3>", tm, opts);
    LLVMDisposePassBuilderOptions(opts);
    if (e) {
        cg_fail_llvm(err, errlen, "LLVMRunPasses(default<O3>)", e);
        LLVMDisposeModule(mod);
        return false;
    }
    if (jit->ir_dump_dir) {
        char path[1024], *why = NULL;
        snprintf(path, sizeof path, "%s/%s.ll", jit->ir_dump_dir, sym);
        bool bad = LLVMPrintModuleToFile(mod, path, &why) != 0;
        if (bad) cg_fail(err, errlen, "writing %s: %s", path, why ? why : "?");
        LLVMDisposeMessage(why);
        if (bad) {
            LLVMDisposeModule(mod);
            return false;
        }
    }
    return true;
}

static bool verify_and_optimize(CgJit *jit, LLVMModuleRef mod, const char *sym, char *err, size_t errlen) {
    return optimize_with(jit, jit->tm, mod, sym, err, errlen);
}

/* ---- the object cache (MOEPPC_JIT_CACHE, see the top) --------------------------------------- */
#define JIT_CACHE_MAGIC "MOEPPC-JIT-1" /* then the key's and the object's lengths, the object's FNV-1a */

/* mod's key (xmalloc'd): the target and its IR as built; NULL without a cache. */
static char *object_key(const CgJit *jit, LLVMModuleRef mod) {
    if (!jit->cache_dir || jit->ir_dump_dir) return NULL;
    char *ir = LLVMPrintModuleToString(mod);
    size_t n = strlen(ir) + strlen(jit->t.features) + 512;
    char *key = xmalloc(n);
    snprintf(key, n, "LLVM %s\n%s\n%s\n%s\ndefault<O3>, the JIT's code model\n%s", LLVM_VERSION_STRING,
             LLVMOrcLLJITGetTripleString(jit->lljit), jit->t.cpu, jit->t.features, ir);
    LLVMDisposeMessage(ir);
    return key;
}

static void object_path(const CgJit *jit, const char *key, char *path, size_t n) {
    snprintf(path, n, "%s/%016llx.jit", jit->cache_dir, (unsigned long long)hash_str(key));
}

/* The object kept under key, or NULL (none, another key's, not whole). */
static LLVMMemoryBufferRef object_read(CgJit *jit, const char *key) {
    char path[4200];
    object_path(jit, key, path, sizeof path);
    size_t len, n_key = 0, n_obj = 0;
    unsigned long long sum = 0;
    char *buf = file_read_all(path, &len), *body = buf ? memchr(buf, '\n', len < 96 ? len : 96) : NULL;
    bool ok = body && sscanf(buf, JIT_CACHE_MAGIC " %zu %zu %llx", &n_key, &n_obj, &sum) == 3 &&
              n_key == strlen(key) && len - (size_t)(body + 1 - buf) == n_key + n_obj &&
              memcmp(body + 1, key, n_key) == 0 && hash_bytes(body + 1 + n_key, n_obj) == sum;
    LLVMMemoryBufferRef obj = ok ? LLVMCreateMemoryBufferWithMemoryRangeCopy(body + 1 + n_key, n_obj, "kept") : NULL;
    free(buf);
    if (obj) __atomic_add_fetch(&jit->cache_hits, 1, __ATOMIC_RELAXED);
    return obj;
}

/* obj kept under key (all or nothing; a failure only costs the next process its hit). */
static void object_write(CgJit *jit, const char *key, LLVMMemoryBufferRef obj) {
    char path[4200], head[96], why[256];
    if (!make_dirs(jit->cache_dir)) return;
    object_path(jit, key, path, sizeof path);
    size_t n_key = strlen(key), n_obj = LLVMGetBufferSize(obj);
    const void *o = LLVMGetBufferStart(obj);
    int h = snprintf(head, sizeof head, JIT_CACHE_MAGIC " %zu %zu %016llx\n", n_key, n_obj,
                     (unsigned long long)hash_bytes(o, n_obj));
    char *buf = xmalloc((size_t)h + n_key + n_obj);
    memcpy(buf, head, (size_t)h);
    memcpy(buf + h, key, n_key);
    memcpy(buf + h + n_key, o, n_obj);
    if (file_write_atomic(path, buf, (size_t)h + n_key + n_obj, why, sizeof why))
        __atomic_add_fetch(&jit->cache_kept, 1, __ATOMIC_RELAXED);
    free(buf);
}

/* mod (taken) as an object the JIT links: optimised with tm_opt, compiled with tm_emit; or read from
 * the cache where it keeps one for mod as built (and kept there when made). NULL with err. */
static LLVMMemoryBufferRef linkable_object(CgJit *jit, LLVMTargetMachineRef tm_opt, LLVMTargetMachineRef tm_emit,
                                           LLVMModuleRef mod, const char *sym, char *err, size_t errlen) {
    char *key = object_key(jit, mod);
    LLVMMemoryBufferRef obj = key ? object_read(jit, key) : NULL;
    if (obj) {
        LLVMDisposeModule(mod);
    } else if (optimize_with(jit, tm_opt, mod, sym, err, errlen)) {
        char *msg = NULL;
        if (LLVMTargetMachineEmitToMemoryBuffer(tm_emit, mod, LLVMObjectFile, &msg, &obj)) {
            cg_fail(err, errlen, "kernel %s: code generation failed: %s", sym, msg ? msg : "?");
            obj = NULL;
        } else if (key) {
            object_write(jit, key, obj);
        }
        LLVMDisposeMessage(msg);
        LLVMDisposeModule(mod);
    }
    free(key);
    return obj;
}

void cg_jit_cache_counts(const CgJit *jit, int *hits, int *kept) {
    *hits = __atomic_load_n(&jit->cache_hits, __ATOMIC_RELAXED);
    *kept = __atomic_load_n(&jit->cache_kept, __ATOMIC_RELAXED);
}

void cg_jit_dump_ir(CgJit *jit, const char *dir) {
    free(jit->ir_dump_dir);
    jit->ir_dump_dir = dir ? xstrdup(dir) : NULL;
}

/* Build, verify and optimise the module for cfg in jit's context. NULL with err on failure. */
static LLVMModuleRef build_optimized(CgJit *jit, const CgKernelConfig *cfg, const char *sym, char *err,
                                     size_t errlen) {
    if (!check_config(jit, cfg, err, errlen)) return NULL;
    LLVMModuleRef mod = cg_build_kernel_module(jit->ctx, &jit->t, cfg, sym);
    return verify_and_optimize(jit, mod, sym, err, errlen) ? mod : NULL;
}

static bool emit_object(CgJit *jit, LLVMModuleRef mod, const char *path, char *err, size_t errlen) {
    char *msg = NULL;
    char *p = xstrdup(path); /* the C API wants a non-const char * */
    LLVMBool failed = LLVMTargetMachineEmitToFile(jit->tm, mod, p, LLVMObjectFile, &msg);
    free(p);
    if (failed) cg_fail(err, errlen, "writing object file %s: %s", path, msg ? msg : "?");
    LLVMDisposeMessage(msg);
    return !failed;
}

static const CgKernel *cache_find(const CgJit *jit, const CgKernelConfig *cfg) {
    for (int i = 0; i < jit->n_kernels; i++) {
        const CgKernelConfig *c = &jit->kernels[i]->cfg;
        if (c->b_dtype == cfg->b_dtype && c->mr == cfg->mr && c->nr == cfg->nr && c->k_unroll == cfg->k_unroll &&
            c->a_bf16 == cfg->a_bf16 && c->amx == cfg->amx && c->kpair_b == cfg->kpair_b)
            return jit->kernels[i];
    }
    return NULL;
}

/* ---- linking, and the perf map ---------------------------------------------------------------- */
static pthread_mutex_t perf_mu = PTHREAD_MUTEX_INITIALIZER;
static FILE *perf_map; /* /tmp/perf-PID.map, opened at the first kernel linked while MOEPPC_PERF_MAP=1 */

static bool perf_map_wanted(void) {
    const char *v = getenv("MOEPPC_PERF_MAP");
    return v && v[0] && strcmp(v, "0") != 0;
}

/* The size of symbol sym in object obj (its symbol table's), 0 where it says none. */
static uint64_t object_symbol_size(LLVMMemoryBufferRef obj, const char *sym) {
    char *msg = NULL;
    LLVMBinaryRef bin = LLVMCreateBinary(obj, NULL, &msg); /* (reads obj, which stays the caller's; an
                                                               object, not IR, needs no context) */
    LLVMDisposeMessage(msg);
    uint64_t size = 0;
    if (bin) {
        LLVMSymbolIteratorRef it = LLVMObjectFileCopySymbolIterator(bin);
        for (; it && !LLVMObjectFileIsSymbolIteratorAtEnd(bin, it) && !size; LLVMMoveToNextSymbol(it))
            if (strcmp(LLVMGetSymbolName(it), sym) == 0) size = LLVMGetSymbolSize(it);
        if (it) LLVMDisposeSymbolIterator(it);
        LLVMDisposeBinary(bin);
    }
    return size;
}

/* A line of the perf map for sym at addr (size bytes); the file is opened at the first. A map that
 * cannot be written is said once, and profiling goes on without it. */
static void perf_map_add(uint64_t addr, uint64_t size, const char *sym) {
    static bool failed;
    pthread_mutex_lock(&perf_mu);
    if (!perf_map && !failed) {
        char path[64];
        snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
        if (!(perf_map = fopen(path, "a"))) {
            failed = true;
            fprintf(stderr, "moeppc: warning: MOEPPC_PERF_MAP: cannot write %s; kernels go unnamed\n", path);
        }
    }
    if (perf_map) {
        fprintf(perf_map, "%llx %llx %s\n", (unsigned long long)addr, (unsigned long long)size, sym);
        fflush(perf_map);
    }
    pthread_mutex_unlock(&perf_mu);
}

/* Link object obj into the JIT (which takes it, error or not) and look sym up in it. */
static bool link_object(CgJit *jit, LLVMMemoryBufferRef obj, const char *sym, uint64_t *addr, char *err,
                        size_t errlen) {
    uint64_t size = perf_map_wanted() ? object_symbol_size(obj, sym) : 0;
    LLVMErrorRef e = LLVMOrcLLJITAddObjectFile(jit->lljit, LLVMOrcLLJITGetMainJITDylib(jit->lljit), obj);
    if (e) return cg_fail_llvm(err, errlen, "LLVMOrcLLJITAddObjectFile", e);
    LLVMOrcExecutorAddress a = 0;
    e = LLVMOrcLLJITLookup(jit->lljit, &a, sym);
    if (e) return cg_fail_llvm(err, errlen, "LLVMOrcLLJITLookup", e);
    if (size) perf_map_add(a, size, sym);
    *addr = a;
    return true;
}

/* Compile mod, optimised already (disposed here, error or not), to an object, link that into the JIT
 * and look the symbol up. */
static bool link_optimized(CgJit *jit, LLVMModuleRef mod, const char *sym, uint64_t *addr, char *err,
                           size_t errlen) {
    char *msg = NULL;
    LLVMMemoryBufferRef obj = NULL;
    bool failed = LLVMTargetMachineEmitToMemoryBuffer(jit->tm_link, mod, LLVMObjectFile, &msg, &obj);
    if (failed) cg_fail(err, errlen, "kernel %s: code generation failed: %s", sym, msg ? msg : "?");
    LLVMDisposeMessage(msg);
    LLVMDisposeModule(mod);
    return !failed && link_object(jit, obj, sym, addr, err, errlen);
}

/* Optimise mod as built (taken: disposed here, error or not), compile it to an object (or read that
 * from the cache), link it into the JIT and look the symbol up: the code cg_jit_compile_many makes of
 * the same module. */
static bool jit_add_and_lookup(CgJit *jit, LLVMModuleRef mod, const char *sym, uint64_t *addr, char *err,
                               size_t errlen) {
    LLVMMemoryBufferRef obj = linkable_object(jit, jit->tm, jit->tm_link, mod, sym, err, errlen);
    return obj && link_object(jit, obj, sym, addr, err, errlen);
}

const CgKernel *cg_jit_kernel(CgJit *jit, const CgKernelConfig *cfg, const char *obj_path, char *err,
                              size_t errlen) {
    char sym[64];
    cg_kernel_symbol(cfg, jit->t.isa, sym, sizeof sym);
    const CgKernel *cached = cache_find(jit, cfg);
    if (cached && !obj_path) return cached;
    double t0 = now_ms();
    uint64_t addr = 0;
    if (obj_path) {
        LLVMModuleRef mod = build_optimized(jit, cfg, sym, err, errlen);
        if (!mod) return NULL;
        bool ok = emit_object(jit, mod, obj_path, err, errlen);
        if (ok && cached) {
            LLVMDisposeModule(mod);
            return cached;
        }
        if (!ok || !link_optimized(jit, mod, sym, &addr, err, errlen)) {
            if (!ok) LLVMDisposeModule(mod);
            return NULL;
        }
    } else {
        if (!check_config(jit, cfg, err, errlen)) return NULL;
        if (!jit_add_and_lookup(jit, cg_build_kernel_module(jit->ctx, &jit->t, cfg, sym), sym, &addr, err, errlen))
            return NULL;
    }
    CgKernel *k = xcalloc(1, sizeof *k);
    k->cfg = *cfg;
    k->fn = (cg_kernel_fn)(uintptr_t)addr;
    snprintf(k->symbol, sizeof k->symbol, "%s", sym);
    k->compile_ms = now_ms() - t0;
    jit->kernels = xrealloc(jit->kernels, (size_t)(jit->n_kernels + 1) * sizeof *jit->kernels);
    jit->kernels[jit->n_kernels++] = k;
    return k;
}

typedef struct {
    CgJit *jit;
    char *err;
    size_t errlen;
} EdgeGet;

static const CgKernel *jit_get(void *ctx, const CgKernelConfig *cfg) {
    EdgeGet *g = ctx;
    return cg_jit_kernel(g->jit, cfg, NULL, g->err, g->errlen);
}

bool cg_jit_edges(CgJit *jit, const CgKernel *kern, CgBlocking *blk, char *err, size_t errlen) {
    EdgeGet g = {jit, err, errlen};
    return cg_blocking_edges(blk, kern, jit_get, &g);
}

char *cg_kernel_ir_text(CgJit *jit, const CgKernelConfig *cfg, char *err, size_t errlen) {
    char sym[64];
    cg_kernel_symbol(cfg, jit->t.isa, sym, sizeof sym);
    LLVMModuleRef mod = build_optimized(jit, cfg, sym, err, errlen);
    if (!mod) return NULL;
    char *s = LLVMPrintModuleToString(mod);
    char *copy = xstrdup(s);
    LLVMDisposeMessage(s);
    LLVMDisposeModule(mod);
    return copy;
}

LLVMContextRef cg_jit_context(CgJit *jit) { return jit->ctx; }

void *cg_jit_compile_module(CgJit *jit, LLVMModuleRef mod, const char *symbol, char *err, size_t errlen) {
    uint64_t addr = 0;
    if (!jit_add_and_lookup(jit, mod, symbol, &addr, err, errlen)) return NULL;
    return (void *)(uintptr_t)addr;
}

/* ---- many kernels at once ----------------------------------------------------------------------
 * Each job on a thread of its own: a context and a target machine per thread (LLVM is thread-safe
 * across contexts), the module built and optimised, then either compiled to an object in memory with
 * the JIT's own code model and, on the calling thread, linked into the JIT and its symbol looked up
 * (cheap; cg_jit_compile_many), or compiled position-independent to its object file
 * (cg_jit_emit_many). The code is what compiling the jobs one by one makes. */
typedef struct {
    CgJit *jit;
    CgJitJob *jobs;
    bool link;
    LLVMTargetMachineRef *tm; /* [threads] */
} Many;

static void compile_job(void *ctx, int64_t i, int thread) {
    Many *w = ctx;
    CgJitJob *j = &w->jobs[i];
    LLVMContextRef c = LLVMContextCreate();
    LLVMModuleRef mod = j->gemm ? cg_build_kernel_module(c, &w->jit->t, &j->cfg, j->symbol)
                                : j->build(c, j->arg, w->jit->t.vec_width, j->symbol, j->err, sizeof j->err);
    if (mod && w->link) {
        j->obj = linkable_object(w->jit, w->tm[thread], w->tm[thread], mod, j->symbol, j->err, sizeof j->err);
        j->done = j->obj != NULL;
    } else if (mod && optimize_with(w->jit, w->tm[thread], mod, j->symbol, j->err, sizeof j->err)) {
        char *msg = NULL;
        char *path = j->obj_path ? xstrdup(j->obj_path) : NULL; /* the C API wants a char * */
        if (path && LLVMTargetMachineEmitToFile(w->tm[thread], mod, path, LLVMObjectFile, &msg))
            cg_fail(j->err, sizeof j->err, "writing object file %s: %s", path, msg ? msg : "?");
        else j->done = true;
        free(path);
        LLVMDisposeMessage(msg);
        LLVMDisposeModule(mod);
    }
    LLVMContextDispose(c);
}

/* Link job j's object into the JIT (which takes it) and note its address. */
static bool link_job(CgJit *jit, CgJitJob *j, char *err, size_t errlen) {
    uint64_t a = 0;
    LLVMMemoryBufferRef obj = j->obj;
    j->obj = NULL;
    if (!link_object(jit, obj, j->symbol, &a, err, errlen)) return false;
    j->fn = (void *)(uintptr_t)a;
    if (!j->gemm) return true;
    CgKernel *k = xcalloc(1, sizeof *k);
    k->cfg = j->cfg;
    k->fn = (cg_kernel_fn)(uintptr_t)a;
    snprintf(k->symbol, sizeof k->symbol, "%s", j->symbol);
    jit->kernels = xrealloc(jit->kernels, (size_t)(jit->n_kernels + 1) * sizeof *jit->kernels);
    jit->kernels[jit->n_kernels++] = k;
    return true;
}

static bool run_many(CgJit *jit, CgJitJob *jobs, int n, int threads, bool link, char *err, size_t errlen) {
    if (threads < 1) threads = 1;
    if (threads > n) threads = n;
    if (n == 0) return true;
    Many w = {jit, jobs, link, xcalloc((size_t)threads, sizeof *w.tm)};
    bool ok = true;
    for (int t = 0; t < threads && ok; t++) ok = (w.tm[t] = cg_target_machine(&jit->t, !link, err, errlen)) != NULL;
    for (int i = 0; i < n; i++) {
        jobs[i].obj = NULL, jobs[i].fn = NULL, jobs[i].done = false, jobs[i].err[0] = 0;
        if (jobs[i].gemm) {
            ok = ok && check_config(jit, &jobs[i].cfg, err, errlen);
            cg_kernel_symbol(&jobs[i].cfg, jit->t.isa, jobs[i].symbol, sizeof jobs[i].symbol);
        }
    }
    if (ok) {
        CgPool *pool = cg_pool_new(threads);
        cg_pool_parallel_for(pool, n, compile_job, &w);
        cg_pool_free(pool);
    }
    for (int i = 0; i < n; i++) {
        if (ok && !jobs[i].done) ok = cg_fail(err, errlen, "%s", jobs[i].err[0] ? jobs[i].err : "kernel: not compiled");
        if (ok && link) ok = link_job(jit, &jobs[i], err, errlen);
        if (jobs[i].obj) LLVMDisposeMemoryBuffer(jobs[i].obj), jobs[i].obj = NULL;
    }
    for (int t = 0; t < threads; t++)
        if (w.tm[t]) LLVMDisposeTargetMachine(w.tm[t]);
    free(w.tm);
    return ok;
}

bool cg_jit_compile_many(CgJit *jit, CgJitJob *jobs, int n, int threads, char *err, size_t errlen) {
    return run_many(jit, jobs, n, threads, true, err, errlen);
}

bool cg_jit_emit_many(CgJit *jit, CgJitJob *jobs, int n, int threads, char *err, size_t errlen) {
    return run_many(jit, jobs, n, threads, false, err, errlen);
}

bool cg_jit_has_kernel(const CgJit *jit, const CgKernelConfig *cfg) { return cache_find(jit, cfg) != NULL; }
