/* common.c — what the subcommands share: usage errors, atomic file writes, loading a spec. */
#include "tools/commands.h"
#include "tools/help.h"
#include "passes/passes.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int usage_error(const char *cmd, const char *usage, const char *fmt, const char *arg)
{
    fprintf(stderr, "moeppc %s: error: ", cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: moeppc %s\n", usage);
    return 2;
}

bool write_file_atomic(const char *path, const void *data, size_t n, const char *cmd)
{
    char why[512];
    bool ok = file_write_atomic(path, data, n, why, sizeof why);
    if (!ok) fprintf(stderr, "moeppc %s: error: %s\n", cmd, why);
    return ok;
}

bool load_spec(const char *path, ModelSpec *s)
{
    Diag d = {stderr, path, 0};
    return spec_load_any(path, s, &d);
}


const char *args_value(int argc, char **argv, const char *opt)
{
    for (int a = 1; a + 1 < argc; a++)
        if (strcmp(argv[a], opt) == 0) return argv[a + 1];
    return NULL;
}

/* ---- synthetic routing for the benchmarks ------------------------------------------------------ */

typedef struct {
    uint64_t s;
} SplitMix;

static double sm_uniform(SplitMix *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (double)((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
}

/* Experts of [lo, hi) not among the first j picks of a token. */
static int64_t n_free(const int32_t *picks, int64_t j, int64_t lo, int64_t hi)
{
    int64_t n = hi - lo;
    for (int64_t q = 0; q < j; q++) n -= picks[q] >= lo && picks[q] < hi;
    return n;
}

int bench_rows_check(const char *usage, bool batch, int64_t rows, const int64_t *tokens, int n_tokens)
{
    if (rows > 1 && !batch) return usage_error("bench", usage, "%s", "--rows: only with --batch");
    for (int q = 0; q < n_tokens; q++)
        if (tokens[q] % rows) {
            char why[96];
            snprintf(why, sizeof why, "%lld, not a multiple of --rows %lld", (long long)tokens[q], (long long)rows);
            return usage_error("bench", usage, "--tokens: each count a multiple of --rows (T / R sequences of R "
                               "tokens), found %s", why);
        }
    return 0;
}

/* Token t's k picks: each a zero-computation expert ([nf, E)) with probability p, else an FFN expert,
 * uniform among that class's experts the token has not picked (the other class when it runs out);
 * weights uniform in [0.1, 1), normalised. bench/baseline_openblas.c draws the same routing. */
int64_t bench_synthetic_routing(int64_t T, int64_t k, int64_t nf, int64_t E, double p, uint64_t seed, int32_t *ids,
                                 float *w)
{
    SplitMix r = {seed};
    int64_t ffn = 0;
    for (int64_t t = 0; t < T; t++) {
        int32_t *picks = ids + t * k;
        for (int64_t j = 0; j < k; j++) {
            bool zc = sm_uniform(&r) < p;
            int64_t lo = zc ? nf : 0, hi = zc ? E : nf;
            if (n_free(picks, j, lo, hi) == 0) lo = zc ? 0 : nf, hi = zc ? nf : E;
            int64_t nth = (int64_t)(sm_uniform(&r) * (double)n_free(picks, j, lo, hi)), e = lo;
            for (;; e++) { /* the nth expert of [lo, hi) not yet picked */
                bool taken = false;
                for (int64_t q = 0; q < j; q++) taken |= picks[q] == e;
                if (!taken && nth-- == 0) break;
            }
            picks[j] = (int32_t)e;
            ffn += e < nf;
        }
        double sum = 0;
        for (int64_t j = 0; j < k; j++) sum += (w[t * k + j] = (float)(0.1 + 0.9 * sm_uniform(&r)));
        for (int64_t j = 0; j < k; j++) w[t * k + j] = (float)(w[t * k + j] / sum);
    }
    return ffn;
}


int bench_instr_index(const IrModule *m, ir_op op, int after)
{
    int n = 0;
    for (const IrInstr *i = m->first; i; i = i->next, n++)
        if (n > after && i->op == op) return n;
    return -1;
}

/* ---- moeppc tune's command line (tune.c for the CPU, tune_cuda.c for GPUs) ---------------------- */

double tune_rel_err(const float *a, const float *ref, size_t n)
{
    double num = 0, den = 0;
    for (size_t j = 0; j < n; j++) {
        num = fmax(num, fabs((double)a[j] - (double)ref[j]));
        den = fmax(den, fabs((double)ref[j]));
    }
    return den > 0 ? num / den : num;
}

int tune_parse_args(int argc, char **argv, TuneArgs *a)
{
    *a = (TuneArgs){.tokens = {1, 16, 64, 512, 4096}, .n_tokens = 5, .threads = threads_default(), .budget = 60,
                    .target = TARGET_CPU, .check_margin = 2};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end;
        if (strcmp(o, "--check") == 0) {
            a->check = true;
            continue;
        }
        if (o[0] == '-' && !v) return usage_error("tune", TUNE_USAGE, "option '%s' needs a value", o);
        if (strcmp(o, "-o") == 0) a->out = v, i++;
        else if (strcmp(o, "--target") == 0) {
            if (!pass_target_parse(v, &a->target))
                return usage_error("tune", TUNE_USAGE, "--target: expected cpu, sm_80, sm_86, sm_89 or sm_90, found '%s'", v);
            i++;
        } else if (strcmp(o, "--budget") == 0) {
            a->budget = strtod(v, &end);
            if (*end || !(a->budget >= 0 && a->budget < 1e6)) return usage_error("tune", TUNE_USAGE, "--budget: expected seconds, found '%s'", v);
            i++;
        } else if (strcmp(o, "--check-margin") == 0) {
            a->check_margin = strtod(v, &end);
            if (*end || !(a->check_margin >= -100 && a->check_margin <= 1000))
                return usage_error("tune", TUNE_USAGE, "--check-margin: expected a percentage from -100 to 1000, "
                                   "found '%s'", v);
            a->check = true, i++;
        } else if (strcmp(o, "--threads") == 0) {
            a->threads = (int)strtol(v, &end, 10);
            if (*end || a->threads < 1 || a->threads > MOE_MAX_THREADS)
                return usage_error("tune", TUNE_USAGE, "--threads: expected 1..256, found '%s'", v);
            i++;
        } else if (strcmp(o, "--dtype") == 0) {
            if (!dtype_parse(v, &a->dtype) || a->dtype > DT_F16) return usage_error("tune", TUNE_USAGE, "--dtype: expected f32, bf16 or f16, found '%s'", v);
            a->dtype_set = true, i++;
        } else if (strcmp(o, "--tokens") == 0) {
            a->n_tokens = 0;
            for (const char *q = v; *q && a->n_tokens < 16; q = *end ? end + 1 : end) {
                long long T = strtoll(q, &end, 10);
                if (end == q || T < 1 || T > 65536 || (*end && *end != ',')) return usage_error("tune", TUNE_USAGE, "--tokens: expected a list like 1,64,512, found '%s'", v);
                a->tokens[a->n_tokens++] = T;
            }
            i++;
        } else if (strcmp(o, "--device") == 0) {
            if (!parse_cuda_device(v, &a->device))
                return usage_error("tune", TUNE_USAGE, "--device: expected cuda or cuda:N (N: 0..255), found '%s'", v);
            a->device_set = true;
            i++;
        } else if (o[0] == '-') return usage_error("tune", TUNE_USAGE, "unknown option '%s'", o);
        else if (!a->spec) a->spec = o;
        else return usage_error("tune", TUNE_USAGE, "unexpected argument '%s'", o);
    }
    if (a->device_set && a->target == TARGET_CPU)
        return usage_error("tune", TUNE_USAGE, "%s", "--device: only with a GPU target (--target sm_XX)");
    if (!a->spec) return usage_error("tune", TUNE_USAGE, "%s", "missing SPEC");
    if (!a->out) return usage_error("tune", TUNE_USAGE, "%s", "missing -o DB");
    return 0;
}

