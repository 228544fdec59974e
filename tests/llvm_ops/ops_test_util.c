/* ops_test_util.c — see ops_test_util.h. The JIT set-up follows codegen/llvm/jit.c: a target machine
 * from the host's name + features for the JIT, a second one for the O3 passes, and the process's
 * symbols as a definition generator. */
#include "tests/llvm_ops/ops_test_util.h"

#include "codegen/llvm/cg_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <llvm-c/Analysis.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/Transforms/PassBuilder.h>

typedef struct {
    char symbol[256];
    void *addr;
} Compiled;

struct OpsJit {
    CgTarget t;
    LLVMTargetMachineRef tm; /* for LLVMRunPasses; the JIT owns its own */
    LLVMOrcLLJITRef lljit;
    LLVMOrcThreadSafeContextRef tsc;
    LLVMContextRef ctx;
    Compiled *done;
    int n_done;
};

static void die(const char *what, const char *msg)
{
    fprintf(stderr, "ops test: %s: %s\n", what, msg);
    abort();
}

static void check(LLVMErrorRef e, const char *what)
{
    if (!e) return;
    char msg[1024];
    cg_fail_llvm(msg, sizeof msg, what, e);
    die(what, msg);
}

double oj_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

OpsJit *oj_new(void)
{
    char err[512];
    if (LLVMInitializeNativeTarget() || LLVMInitializeNativeAsmPrinter()) die("LLVM", "no native target");
    OpsJit *j = xcalloc(1, sizeof *j);
    if (!cg_target_detect(&j->t, CG_ISA_AUTO, err, sizeof err)) die("cg_target_detect", err);
    LLVMTargetMachineRef jit_tm = cg_target_machine(&j->t, false, err, sizeof err);
    j->tm = cg_target_machine(&j->t, false, err, sizeof err);
    if (!jit_tm || !j->tm) die("cg_target_machine", err);
    LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
    LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(builder,
                                                  LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(jit_tm));
    check(LLVMOrcCreateLLJIT(&j->lljit, builder), "LLVMOrcCreateLLJIT");
    LLVMOrcDefinitionGeneratorRef gen = NULL;
    check(LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(&gen, LLVMOrcLLJITGetGlobalPrefix(j->lljit), NULL,
                                                               NULL),
          "LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess");
    LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(j->lljit), gen);
    j->tsc = cg_thread_safe_context(&j->ctx);
    return j;
}

void oj_free(OpsJit *j)
{
    if (!j) return;
    check(LLVMOrcDisposeLLJIT(j->lljit), "LLVMOrcDisposeLLJIT");
    LLVMOrcDisposeThreadSafeContext(j->tsc);
    LLVMDisposeTargetMachine(j->tm);
    cg_target_dispose(&j->t);
    free(j->done);
    free(j);
}

int oj_vec_width(const OpsJit *j) { return j->t.vec_width; }
bool oj_has_amx(const OpsJit *j) { return j->t.has_amx; }
bool oj_has_bf16_dot(const OpsJit *j) { return j->t.has_bf16_dot; }

/* Build, verify and optimise d in the JIT's context. */
static LLVMModuleRef build_optimized(OpsJit *j, const CgOpDesc *d, const char *sym, OjTimes *tm)
{
    char err[512];
    double t0 = oj_now_ms();
    LLVMModuleRef mod = cg_ops_build(j->ctx, d, j->t.vec_width, sym, err, sizeof err);
    if (!mod) die("cg_ops_build", err);
    LLVMSetTarget(mod, LLVMOrcLLJITGetTripleString(j->lljit));
    LLVMSetDataLayout(mod, LLVMOrcLLJITGetDataLayoutStr(j->lljit));
    char *msg = NULL;
    if (LLVMVerifyModule(mod, LLVMReturnStatusAction, &msg)) {
        char *ir = LLVMPrintModuleToString(mod);
        fprintf(stderr, "%s\n", ir);
        die(sym, msg);
    }
    LLVMDisposeMessage(msg);
    double t1 = oj_now_ms();
    LLVMPassBuilderOptionsRef opts = LLVMCreatePassBuilderOptions();
    check(LLVMRunPasses(mod, "default<O3>", j->tm, opts), "LLVMRunPasses(default<O3>)");
    LLVMDisposePassBuilderOptions(opts);
    if (tm) tm->build_ms = t1 - t0, tm->opt_ms = oj_now_ms() - t1;
    return mod;
}

void *oj_kernel(OpsJit *j, const CgOpDesc *d, OjTimes *times)
{
    char sym[256];
    cg_op_symbol(d, sym, sizeof sym);
    for (int k = 0; k < j->n_done; k++)
        if (!strcmp(j->done[k].symbol, sym)) return j->done[k].addr;
    OjTimes tm = {0};
    LLVMModuleRef mod = build_optimized(j, d, sym, &tm);
    double t0 = oj_now_ms();
    LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(mod, j->tsc);
    check(LLVMOrcLLJITAddLLVMIRModule(j->lljit, LLVMOrcLLJITGetMainJITDylib(j->lljit), tsm),
          "LLVMOrcLLJITAddLLVMIRModule");
    LLVMOrcExecutorAddress addr = 0;
    check(LLVMOrcLLJITLookup(j->lljit, &addr, sym), "LLVMOrcLLJITLookup");
    tm.jit_ms = oj_now_ms() - t0;
    if (times) *times = tm;
    j->done = xrealloc(j->done, (size_t)(j->n_done + 1) * sizeof *j->done);
    snprintf(j->done[j->n_done].symbol, sizeof j->done[j->n_done].symbol, "%s", sym);
    j->done[j->n_done].addr = (void *)(uintptr_t)addr;
    return j->done[j->n_done++].addr;
}

char *oj_ir_text(OpsJit *j, const CgOpDesc *d)
{
    char sym[256];
    cg_op_symbol(d, sym, sizeof sym);
    LLVMModuleRef mod = build_optimized(j, d, sym, NULL);
    char *s = LLVMPrintModuleToString(mod);
    char *copy = xstrdup(s);
    LLVMDisposeMessage(s);
    LLVMDisposeModule(mod);
    return copy;
}

/* ---- the interpreter ------------------------------------------------------------------------- */
static void append(char **buf, size_t *len, size_t *cap, const char *s)
{
    size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        *cap = 2 * (*len + n + 1);
        *buf = xrealloc(*buf, *cap);
    }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
}

static char *module_text(const char *body, const Tensor *params, int n)
{
    size_t len = 0, cap = 0;
    char *text = NULL, line[256];
    append(&text, &len, &cap, "module \"t\" {\n  input %ids : i32[T]\n  input %pos : i32[T]\n");
    for (int k = 0; k < n; k++) {
        const Tensor *t = &params[k];
        if (t->ndim == 1)
            snprintf(line, sizeof line, "  param %%%s : %s[%lld] = \"%s\"\n", t->name, dtype_name(t->dtype),
                     (long long)t->shape[0], t->name);
        else
            snprintf(line, sizeof line, "  param %%%s : %s[%lld, %lld] = \"%s\"\n", t->name, dtype_name(t->dtype),
                     (long long)t->shape[0], (long long)t->shape[1], t->name);
        append(&text, &len, &cap, line);
    }
    append(&text, &len, &cap, body);
    append(&text, &len, &cap, "}\n");
    return text;
}

void oj_eval(const char *body, const Tensor *params, int n_params, const int32_t *ids, const int32_t *pos,
             int64_t T, EvalResult *res)
{
    char *text = module_text(body, params, n_params);
    Diag d = {stderr, "test.ir", 0};
    IrModule *m = ir_parse(text, strlen(text), &d);
    if (!m) die("ir_parse", text);
    char dir[] = "/tmp/moeppc-opsXXXXXX", path[64];
    if (!mkdtemp(dir)) die("mkdtemp", dir);
    snprintf(path, sizeof path, "%s/t.safetensors", dir);
    RtError err = {{0}};
    WeightSet *w = NULL;
    if (!safetensors_write(path, params, n_params, &err) || !weights_open(path, &w, &err)) die("weights", err.msg);
    if (!ir_eval(m, w, ids, pos, T, EVAL_F32, res, &err)) die("ir_eval", err.msg);
    weights_close(w);
    ir_module_free(m);
    unlink(path);
    rmdir(dir);
    free(text);
}

const double *oj_out(const EvalResult *res, const char *name)
{
    const EvalTensor *t = eval_output(res, name);
    if (!t) die("no output", name);
    return t->data;
}

void oj_random(moe_rng *r, float *out, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++) out[i] = (float)(lo + (hi - lo) * rng_uniform(r));
}

double oj_rel_err(const char *label, const float *got, const double *want, size_t n)
{
    double num = 0, den = 0;
    size_t worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)got[i] - want[i]);
        if (!(e <= num)) num = e, worst = i; /* NaN counts as the worst */
        den = fmax(den, fabs(want[i]));
    }
    double rel = num == 0 ? 0 : den == 0 ? INFINITY : num / den;
    if (!(rel <= 1e-5))
        fprintf(stderr, "  %s: rel err %.3g at [%zu]: got %.9g want %.9g\n", label, rel, worst, (double)got[worst],
                want[worst]);
    return isnan(rel) ? INFINITY : rel;
}

static size_t guarded_pages(size_t bytes, size_t page) { return (bytes + page - 1) / page + 1; }

void *oj_guarded_alloc(size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), n = guarded_pages(bytes, page);
    if (bytes % 4) die("oj_guarded_alloc", "not a multiple of 4 bytes");
    char *base = mmap(NULL, n * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED || mprotect(base + (n - 1) * page, page, PROT_NONE)) die("oj_guarded_alloc", "mmap");
    return base + (n - 1) * page - bytes;
}

void oj_guarded_free(void *p, size_t bytes)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE), n = guarded_pages(bytes, page);
    munmap((char *)p + bytes - (n - 1) * page, n * page);
}
