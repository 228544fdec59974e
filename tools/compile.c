/* compile.c — `moeppc compile` (spec or IR text → verified IR, printed) and `moeppc run` (the
 * reference interpreter on a whole model with real or random weights). */
#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"
#include "runtime/runtime.h"
#include "tools/commands.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- small shared helpers of the commands ------------------------------------------------------ */

static int usage_error(const char *cmd, const char *usage, const char *fmt, const char *arg)
{
    fprintf(stderr, "moeppc %s: error: ", cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: moeppc %s\n", usage);
    return 2;
}

/* Write a buffer to PATH through a temporary file renamed into place: all or nothing. */
static bool write_file_atomic(const char *path, const void *data, size_t n, const char *cmd)
{
    size_t len = strlen(path);
    char *tmp = xmalloc(len + 16);
    snprintf(tmp, len + 16, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    bool ok = fd >= 0;
    if (ok) {
        FILE *f = fdopen(fd, "wb");
        ok = f && fwrite(data, 1, n, f) == n;
        if (f) ok = (fclose(f) == 0) && ok;
        else close(fd);
        ok = ok && rename(tmp, path) == 0;
        if (!ok) unlink(tmp);
    }
    if (!ok) fprintf(stderr, "moeppc %s: error: cannot write '%s': %s\n", cmd, path, strerror(errno));
    free(tmp);
    return ok;
}

static bool load_spec(const char *path, ModelSpec *s)
{
    Diag d = {stderr, path, 0};
    return spec_load_file(path, s, &d);
}

/* ---- moeppc compile ------------------------------------------------------------------------------ */

#define COMPILE_USAGE "compile (SPEC | --ir FILE) [-O0|-O1] [--target cpu|sm_80|sm_86|sm_89|sm_90] [--print-ir] " \
                      "[--print-after=PASS|all] [--pass NAME] [--stats] [-o FILE.ir]"

typedef struct {
    const char *spec, *ir, *out, *only_pass;
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
                (double)plan_arena_bytes(after, Ts[k]) / 1048576.0, (double)plan_naive_bytes(after, Ts[k]) / 1048576.0);
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
        else if (strcmp(o, "--help") == 0) return printf("usage: moeppc %s\n", COMPILE_USAGE), -1;
        else if (o[0] == '-' && !v) return usage_error("compile", COMPILE_USAGE, "unknown or incomplete option '%s'", o);
        else if (strcmp(o, "--ir") == 0) c->ir = v, a++;
        else if (strcmp(o, "-o") == 0) c->out = v, a++;
        else if (strcmp(o, "--pass") == 0) c->only_pass = v, a++;
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
    IrModule *m = compile_input(c.spec, c.ir);
    if (!m) return 1;
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
    return ok ? 0 : 1;
}

/* ---- moeppc run ---------------------------------------------------------------------------------- */

#define RUN_USAGE "run SPEC (--weights W | --random-weights SEED) --ids \"1 2 3\" [--logits-out F] " \
                  "[--routes-out F] [--precision f64|f32] [--top N] [-O0|-O1]"

typedef struct {
    const char *spec, *weights, *ids, *logits_out, *routes_out;
    bool random;
    uint64_t seed;
    eval_precision prec;
    int top;
    int opt_level;
} RunArgs;

static bool parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-') return false;
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno) return false;
    *out = v;
    return true;
}

static int parse_run_args(int argc, char **argv, RunArgs *r)
{
    *r = (RunArgs){.prec = EVAL_F64, .top = 5, .opt_level = 1};
    for (int a = 1; a < argc; a++) {
        const char *o = argv[a], *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (strcmp(o, "-O0") == 0 || strcmp(o, "-O1") == 0) {
            r->opt_level = o[2] - '0';
            continue;
        }
        if (o[0] == '-' && strcmp(o, "--help") != 0 && !v)
            return usage_error("run", RUN_USAGE, "option '%s' needs a value", o);
        if (strcmp(o, "--weights") == 0) r->weights = v, a++;
        else if (strcmp(o, "--random-weights") == 0) {
            if (!parse_u64(v, &r->seed)) return usage_error("run", RUN_USAGE, "--random-weights: '%s' is not a seed (a non-negative integer)", v);
            r->random = true, a++;
        } else if (strcmp(o, "--ids") == 0) r->ids = v, a++;
        else if (strcmp(o, "--logits-out") == 0) r->logits_out = v, a++;
        else if (strcmp(o, "--routes-out") == 0) r->routes_out = v, a++;
        else if (strcmp(o, "--precision") == 0) {
            if (strcmp(v, "f64") && strcmp(v, "f32")) return usage_error("run", RUN_USAGE, "--precision: expected f64 or f32, found '%s'", v);
            r->prec = strcmp(v, "f32") == 0 ? EVAL_F32 : EVAL_F64, a++;
        } else if (strcmp(o, "--top") == 0) {
            uint64_t n;
            if (!parse_u64(v, &n) || n < 1 || n > 100) return usage_error("run", RUN_USAGE, "--top: expected 1..100, found '%s'", v);
            r->top = (int)n, a++;
        } else if (strcmp(o, "--help") == 0) return printf("usage: moeppc %s\n", RUN_USAGE), -1;
        else if (o[0] == '-') return usage_error("run", RUN_USAGE, "unknown option '%s'", o);
        else if (!r->spec) r->spec = o;
        else return usage_error("run", RUN_USAGE, "unexpected argument '%s'", o);
    }
    if (!r->spec) return usage_error("run", RUN_USAGE, "%s", "missing SPEC");
    if (!r->weights == !r->random) return usage_error("run", RUN_USAGE, "%s", "give exactly one of --weights and --random-weights");
    if (!r->ids) return usage_error("run", RUN_USAGE, "%s", "missing --ids");
    return 0;
}

/* "1 5 9" or "1,5,9" → ids; every id checked against the vocabulary and the position limit. */
static int32_t *parse_ids(const char *text, const ModelSpec *s, int64_t *n_out)
{
    int64_t n = 0, cap = 16;
    int32_t *ids = xmalloc((size_t)cap * sizeof *ids);
    const char *p = text;
    for (;;) {
        while (*p == ' ' || *p == ',' || *p == '\t' || *p == '\n') p++;
        if (!*p) break;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || (*end && !strchr(" ,\t\n", *end)) || errno) {
            int len = (int)strcspn(p, " ,\t\n");
            fprintf(stderr, "moeppc run: error: --ids: '%.*s' (token %lld) is not a token id\n", len, p, (long long)n + 1);
            free(ids);
            return NULL;
        }
        if (v < 0 || v >= s->vocab) {
            fprintf(stderr, "moeppc run: error: --ids: token %lld is %lld, outside the vocabulary [0, %lld)\n",
                    (long long)n + 1, v, (long long)s->vocab);
            free(ids);
            return NULL;
        }
        if (n == cap) ids = xrealloc(ids, (size_t)(cap *= 2) * sizeof *ids);
        ids[n++] = (int32_t)v;
        p = end;
    }
    if (n == 0 || n > s->max_positions) {
        if (n == 0) fprintf(stderr, "moeppc run: error: --ids: the list is empty\n");
        else fprintf(stderr, "moeppc run: error: --ids: %lld tokens exceed max_positions (%lld)\n", (long long)n,
                     (long long)s->max_positions);
        free(ids);
        return NULL;
    }
    *n_out = n;
    return ids;
}

static bool open_weights(const RunArgs *r, const ModelSpec *s, WeightSet **w)
{
    RtError err = {{0}};
    bool ok = r->random ? weights_random(s, r->seed, w, &err) : weights_open(r->weights, w, &err);
    if (ok && !weights_check(*w, s, &err)) {
        weights_close(*w);
        ok = false;
    }
    if (!ok) fprintf(stderr, "moeppc run: error: %s\n", err.msg);
    return ok;
}

static void print_predictions(const EvalTensor *logits, const int32_t *ids, int top, FILE *f)
{
    int64_t T = logits->type.dims[0], V = logits->type.dims[1];
    fprintf(f, "\n position  token  next: top %d (logit)\n", top);
    int *best = xmalloc((size_t)top * sizeof *best);
    for (int64_t t = 0; t < T; t++) {
        const double *row = logits->data + t * V;
        int nb = 0;
        for (int64_t v = 0; v < V; v++) {
            int j = nb < top ? nb++ : top;
            if (j == top && row[v] <= row[best[top - 1]]) continue;
            if (j == top) j = top - 1;
            while (j > 0 && row[v] > row[best[j - 1]]) best[j] = best[j - 1], j--;
            best[j] = (int)v;
        }
        fprintf(f, " %8lld %6d  ", (long long)t, ids[t]);
        for (int j = 0; j < nb; j++) fprintf(f, " %6d (%.3f)", best[j], row[best[j]]);
        fputc('\n', f);
    }
    free(best);
}

/* Per MoE layer, the share of the T·k picks that went to each kind of expert. */
static void print_route_stats(const ModelSpec *s, const EvalResult *res, FILE *f)
{
    fprintf(f, "\n routing: share of picks per MoE layer (%lld FFN, %lld constant, %lld copy, %lld zero experts; top-%lld)\n",
            (long long)s->n_ffn, (long long)s->n_const, (long long)s->n_copy, (long long)s->n_zero, (long long)s->top_k);
    fprintf(f, " layer      FFN  constant     copy     zero\n");
    int64_t b1 = s->n_ffn, b2 = b1 + s->n_const, b3 = b2 + s->n_copy;
    for (int64_t l = 0; l < s->n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "route.%lld.ids", (long long)l);
        const EvalTensor *ids = eval_output(res, name);
        if (!ids) continue;
        int64_t n = ids->type.dims[0] * ids->type.dims[1], c[4] = {0};
        for (int64_t j = 0; j < n; j++) {
            int64_t e = (int64_t)ids->data[j];
            c[e < b1 ? 0 : e < b2 ? 1 : e < b3 ? 2 : 3]++;
        }
        fprintf(f, " %5lld", (long long)l);
        for (int k = 0; k < 4; k++) fprintf(f, "  %6.1f%%", 100.0 * (double)c[k] / (double)n);
        fputc('\n', f);
    }
}

static bool write_logits(const char *path, const EvalTensor *logits)
{
    size_t n = (size_t)(logits->type.dims[0] * logits->type.dims[1]);
    float *buf = xmalloc(n * sizeof *buf);
    for (size_t j = 0; j < n; j++) buf[j] = (float)logits->data[j]; /* little-endian hosts only (x86, arm) */
    bool ok = write_file_atomic(path, buf, n * sizeof *buf, "run");
    free(buf);
    return ok;
}

/* "layer token id0 .. id{k-1} w0 .. w{k-1}" per MoE layer and token: compared against the oracle. */
static bool write_routes(const char *path, const ModelSpec *s, const EvalResult *res)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    for (int64_t l = 0; l < s->n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "route.%lld.ids", (long long)l);
        const EvalTensor *ids = eval_output(res, name);
        snprintf(name, sizeof name, "route.%lld.weights", (long long)l);
        const EvalTensor *w = eval_output(res, name);
        if (!ids || !w) continue;
        int64_t T = ids->type.dims[0], k = ids->type.dims[1];
        for (int64_t t = 0; t < T; t++) {
            fprintf(f, "%lld %lld", (long long)l, (long long)t);
            for (int64_t j = 0; j < k; j++) fprintf(f, " %d", (int)ids->data[t * k + j]);
            for (int64_t j = 0; j < k; j++) fprintf(f, " %.9g", w->data[t * k + j]);
            fputc('\n', f);
        }
    }
    fclose(f);
    bool ok = write_file_atomic(path, buf, len, "run");
    free(buf);
    return ok;
}

static int run_model(const RunArgs *r, const ModelSpec *s, const int32_t *ids, int64_t T)
{
    WeightSet *w;
    if (!open_weights(r, s, &w)) return 1;
    IrModule *m = ir_lower_spec(s);
    PassOptions po = {.opt_level = r->opt_level, .target = TARGET_CPU};
    Diag d = {stderr, r->spec, 0};
    MOE_ASSERT(passes_run(m, &po, &d));
    int32_t *pos = xmalloc((size_t)T * sizeof *pos);
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)t;
    EvalResult res;
    RtError err = {{0}};
    int rc = 1;
    if (!ir_eval(m, w, ids, pos, T, r->prec, &res, &err)) {
        fprintf(stderr, "moeppc run: error: %s\n", err.msg);
    } else {
        const EvalTensor *logits = eval_output(&res, "logits");
        printf("interpreted the %s IR in %.3f s (%s accumulation, %.1f tokens/s): %.1f M multiply-adds in linear "
               "ops, %.1f M in grouped expert GEMMs\n", r->opt_level ? "optimised" : "dense", res.seconds,
               r->prec == EVAL_F32 ? "f32" : "f64", (double)T / res.seconds, res.macs_linear / 1e6, res.macs_grouped / 1e6);
        print_predictions(logits, ids, r->top, stdout);
        print_route_stats(s, &res, stdout);
        rc = 0;
        if (r->logits_out && !write_logits(r->logits_out, logits)) rc = 1;
        if (r->routes_out && !write_routes(r->routes_out, s, &res)) rc = 1;
        ir_eval_result_free(&res);
    }
    free(pos);
    ir_module_free(m);
    weights_close(w);
    return rc;
}

int cmd_run(int argc, char **argv)
{
    RunArgs r;
    int rc = parse_run_args(argc, argv, &r);
    if (rc) return rc < 0 ? 0 : rc;
    ModelSpec s;
    if (!load_spec(r.spec, &s)) return 1;
    int64_t T;
    int32_t *ids = parse_ids(r.ids, &s, &T);
    if (!ids) return 1;
    printf("moeppc run: %s: %s, %lld layers, %lld experts per MoE layer, top-%lld; %lld tokens; weights: ",
           r.spec, dtype_name(s.dtype), (long long)s.n_layers, (long long)spec_n_experts(&s), (long long)s.top_k,
           (long long)T);
    if (r.random) printf("random (seed %llu)\n", (unsigned long long)r.seed);
    else printf("%s\n", r.weights);
    fflush(stdout);
    rc = run_model(&r, &s, ids, T);
    free(ids);
    return rc;
}
