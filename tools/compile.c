/* compile.c — `moeppc compile` (spec or IR text → verified IR, printed) and `moeppc run` (the
 * reference interpreter on a whole model with real or random weights). */
#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "passes/tuning.h"
#include "runtime/runtime.h"
#include "tools/commands.h"
#include "tools/help.h"
#ifdef MOEPPC_HAVE_JIT
#include "runtime/cpu/cpu.h"
#endif

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- moeppc compile ------------------------------------------------------------------------------ */

typedef struct {
    const char *spec, *ir, *out, *only_pass, *tuning;
    bool print_ir, stats;
    PassOptions po;
} CompileArgs;

static IrModule *compile_input(const char *spec_path, const char *ir_path)
{
    if (ir_path) {
        size_t len;
        char *text = file_read_all(ir_path, &len);
        if (!text) {
            fprintf(stderr, "%s: error: cannot read: %s\n", ir_path, strerror(errno));
            return NULL;
        }
        Diag d = {stderr, ir_path, 0};
        IrModule *m = memchr(text, '\0', len) ? NULL : ir_parse(text, len, &d);
        if (!m && d.n_errors == 0) fprintf(stderr, "%s: error: the file contains NUL bytes; not IR text\n", ir_path);
        free(text);
        return m;
    }
    ModelSpec s;
    if (!load_spec(spec_path, &s)) return NULL;
    IrModule *m = ir_lower_spec(&s);
    Diag d = {stderr, spec_path, 0};
    MOE_ASSERT(ir_verify(m, &d)); /* lowering a checked spec must give valid IR */
    return m;
}

static void count_ops(const IrModule *m, int count[IR_OP_COUNT], int *n_instr, int *n_param)
{
    *n_instr = *n_param = 0;
    for (int op = 0; op < IR_OP_COUNT; op++) count[op] = 0;
    for (const IrInstr *i = m->first; i; i = i->next) count[i->op]++, (*n_instr)++;
    for (int k = 0; k < m->n_values; k++) *n_param += m->values[k]->kind == IR_VAL_PARAM;
}

/* Op counts of the module as it came in and as the pipeline left it, then the arena. */
static void print_stats(const IrModule *before, const IrModule *after, FILE *f)
{
    int cb[IR_OP_COUNT], ca[IR_OP_COUNT], ib, ia, pb, pa;
    count_ops(before, cb, &ib, &pb);
    count_ops(after, ca, &ia, &pa);
    fprintf(f, "module \"%s\"        before   after\n", after->name);
    fprintf(f, "  %-18s %7d %7d\n  %-18s %7d %7d\n", "instructions", ib, ia, "params", pb, pa);
    for (int op = 0; op < IR_OP_COUNT; op++)
        if (cb[op] || ca[op]) fprintf(f, "  %-18s %7d %7d\n", ir_op_info((ir_op)op)->name, cb[op], ca[op]);
    if (!after->planned) return;
    fprintf(f, "activation arena: %lld·T + %lld bytes\n", (long long)after->arena_t, (long long)after->arena_c);
    static const int64_t Ts[] = {1, 512, 4096};
    for (size_t k = 0; k < MOE_ARRAY_LEN(Ts); k++)
        fprintf(f, "  T = %-5lld arena %10.3f MiB   every intermediate separately %10.3f MiB\n", (long long)Ts[k],
                plan_arena_bytes(after, Ts[k]) / 1048576.0, plan_naive_bytes(after, Ts[k]) / 1048576.0);
}

static int parse_compile_args(int argc, char **argv, CompileArgs *c)
{
    *c = (CompileArgs){.po = {.opt_level = 1, .target = TARGET_CPU, .print_out = stdout}};
    for (int a = 1; a < argc; a++) {
        const char *o = argv[a], *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (strcmp(o, "--print-ir") == 0) c->print_ir = true;
        else if (strcmp(o, "--stats") == 0) c->stats = true;
        else if (strcmp(o, "-O0") == 0 || strcmp(o, "-O1") == 0) c->po.opt_level = o[2] - '0';
        else if (strncmp(o, "--print-after=", 14) == 0) c->po.print_after = o + 14;
        else if (o[0] == '-' && !v) return usage_error("compile", COMPILE_USAGE, "unknown or incomplete option '%s'", o);
        else if (strcmp(o, "--ir") == 0) c->ir = v, a++;
        else if (strcmp(o, "-o") == 0) c->out = v, a++;
        else if (strcmp(o, "--pass") == 0) c->only_pass = v, a++;
        else if (strcmp(o, "--tuning") == 0) c->tuning = v, a++;
        else if (strcmp(o, "--print-after") == 0) c->po.print_after = v, a++;
        else if (strcmp(o, "--target") == 0) {
            if (!pass_target_parse(v, &c->po.target))
                return usage_error("compile", COMPILE_USAGE, "--target: expected cpu, sm_80, sm_86, sm_89 or sm_90, found '%s'", v);
            a++;
        } else if (o[0] == '-') return usage_error("compile", COMPILE_USAGE, "unknown option '%s'", o);
        else if (!c->spec) c->spec = o;
        else return usage_error("compile", COMPILE_USAGE, "unexpected argument '%s'", o);
    }
    if (!c->spec == !c->ir) return usage_error("compile", COMPILE_USAGE, "%s", "give either a spec or --ir FILE");
    if (c->po.print_after && strcmp(c->po.print_after, "all") != 0) {
        bool known = false;
        for (const char *const *n = passes_names(); *n; n++) known |= strcmp(*n, c->po.print_after) == 0;
        if (!known) {
            fprintf(stderr, "moeppc compile: error: --print-after: unknown pass '%s' (passes: all", c->po.print_after);
            for (const char *const *n = passes_names(); *n; n++) fprintf(stderr, ", %s", *n);
            fprintf(stderr, ")\nusage: moeppc %s\n", COMPILE_USAGE);
            return 2;
        }
    }
    return 0;
}

int cmd_compile(int argc, char **argv)
{
    CompileArgs c;
    int rc = parse_compile_args(argc, argv, &c);
    if (rc) return rc < 0 ? 0 : rc;
    TuneDb db = {0};
    if (c.tuning) {
#ifdef MOEPPC_HAVE_JIT
        bool gpu = false, gpu_target = c.po.target != TARGET_CPU;
        if (!(gpu_target ? tuning_load_gpu_or_host(c.tuning, pass_target_name(c.po.target), &db, &gpu)
                         : tuning_load_for_host(c.tuning, &db)))
            return 1;
        if (gpu_target && !gpu && db.n) {
            fprintf(stderr, "%s: warning: a CPU tuning database for --target %s; its entries are ignored and the rule "
                            "decides\n", c.tuning, pass_target_name(c.po.target));
            tune_db_free(&db);
        }
        c.po.tuning = &db;
        /* a CPU database is this host's: the ops as this host runs them (act_bf16 where the bf16 dot
         * product pays, the rule's tile of its ISA), whose entries it keys; without --tuning the output
         * is the same everywhere */
        if (!gpu_target) cpu_host_pass_options(&c.po);
#else
        fprintf(stderr, "moeppc compile: error: --tuning needs the CPU code generator (this build has no LLVM)\n");
        return 1;
#endif
    }
    IrModule *m = compile_input(c.spec, c.ir);
    if (!m) {
        tune_db_free(&db);
        return 1;
    }
    IrModule *before = c.stats ? compile_input(c.spec, c.ir) : NULL;
    Diag d = {stderr, c.ir ? c.ir : c.spec, 0};
    bool ok = c.only_pass ? passes_run_one(m, c.only_pass, &c.po, &d) : passes_run(m, &c.po, &d);
    if (ok && c.print_ir) ir_print(m, stdout);
    if (ok && c.stats) print_stats(before, m, stdout);
    if (ok && c.out) {
        char *text = ir_print_string(m);
        ok = write_file_atomic(c.out, text, strlen(text), "compile");
        free(text);
    }
    ir_module_free(before);
    ir_module_free(m);
    tune_db_free(&db);
    return ok ? 0 : 1;
}

