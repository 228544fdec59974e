/* bench.c — `moeppc bench`: one MoE++ layer (router + experts + combine) and the whole model on the
 * CPU backend, timed after warm-up; medians, tokens/s, GFLOP/s of the FFN-expert multiply-adds
 * actually executed, and the fraction of this machine's f32 FMA peak (measured here, bench/). */
#include "bench/probe.h"
#include "passes/passes.h"
#include "passes/tuning.h"
#include "runtime/cpu/cpu.h"
#include "tools/commands.h"
#include "tools/help.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *spec, *tuning;
    const char *panel_cache;      /* --panel-cache DIR: the packed weights kept there, mapped when there */
    const TuneDb *db;
    bool layer, model, experts, json;
    double zc_share;              /* --experts: share of picks sent to zero-computation experts; < 0: the router's own */
    int64_t tokens[16];
    int n_tokens, threads, reps;
    int64_t context;              /* --context P: the model's T tokens at positions P.. after a P-token prefill */
    bool batch;                   /* --batch: T sequences' tokens at position P each (a decode step of a batch) */
    int64_t rows;                 /* --rows R (with --batch): T / R sequences of R tokens at P..P+R-1 instead */
    uint64_t seed;
    bool dtype_set;
    moe_dtype dtype;
    double read_gbs;              /* the memory read rate of a streaming sum, measured at start */
} BenchArgs;

typedef struct {
    double median, lo, hi;        /* seconds: of the timed scope */
    double ffn_macs;              /* per run */
    double grouped_s, route_s;    /* per run, averaged: the grouped GEMMs, routing + combine + dispatch */
    double attention_s, linear_s; /* per run, averaged: attention; the dense GEMMs (projections, lm_head) */
    double grouped_bytes, linear_bytes; /* per run: the weight bytes the grouped and the dense GEMMs read */
} Timing;

/* Run T tokens at positions P.. (after one untimed P-token prefill that fills the KV caches) reps
 * times after 2 warm-ups; time either the whole run or its MoE part. batch: T / R sequences instead
 * (R = rows), each prefilled with P tokens of its own, then R tokens of each at positions P..P+R-1 a
 * run. False (err set) when the first run is refused (an arena for T tokens or caches for the
 * sequences that do not fit in memory). */
static bool time_runs(CpuModel *cm, int64_t T, int64_t P, bool batch, int64_t rows, int64_t vocab, int reps,
                      bool moe_only, Timing *out, RtError *err)
{
    int64_t n = P > T ? P : T, n_seqs = batch ? T / rows : 1;
    int32_t *ids = xmalloc((size_t)n * sizeof *ids), *pos = xmalloc((size_t)n * sizeof *pos), *seq = NULL;
    bool ok = !batch || cpu_model_sequences(cm) >= n_seqs || cpu_model_set_sequences(cm, (int)n_seqs, err);
    for (int64_t q = 0; ok && q < n_seqs; q++) { /* sequence q's tokens: q offsets the hash */
        for (int64_t t = 0; t < n; t++) ids[t] = (int32_t)(((t + q * 7919) * 2654435761u) % (uint64_t)vocab), pos[t] = (int32_t)t;
        int32_t *one = q ? xmalloc((size_t)P * sizeof *one) : NULL;
        for (int64_t t = 0; one && t < P; t++) one[t] = (int32_t)q;
        ok = P == 0 || cpu_model_run_seqs(cm, ids, pos, one, P, err);
        free(one);
    }
    if (batch) {
        seq = xmalloc((size_t)T * sizeof *seq);
        for (int64_t t = 0; t < T; t++) ids[t] = (int32_t)(((P + t * 7919) * 2654435761u) % (uint64_t)vocab);
    }
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(batch ? P + t % rows : P + t);
    for (int64_t t = 0; seq && t < T; t++) seq[t] = (int32_t)(t / rows);
    double *s = xmalloc((size_t)reps * sizeof *s), macs = 0, grouped = 0, route = 0, attention = 0, linear = 0;
    double gbytes = 0, lbytes = 0;
    for (int r = -2; ok && r < reps; r++) {
        CpuProfile p0 = cpu_model_profile(cm);
        double t0 = bench_now_s();
        if (!(ok = cpu_model_run_seqs(cm, ids, pos, seq, T, err))) break;
        double dt = bench_now_s() - t0;
        CpuProfile p1 = cpu_model_profile(cm);
        if (moe_only) dt = (p1.route_s - p0.route_s) + (p1.grouped_s - p0.grouped_s);
        if (r >= 0) {
            s[r] = dt;
            grouped += (p1.grouped_s - p0.grouped_s) / reps;
            route += (p1.route_s - p0.route_s) / reps;
            if (!moe_only) { /* (a layer's attention and projections run untimed around its MoE part) */
                attention += (p1.attention_s - p0.attention_s) / reps;
                linear += (p1.gemm_s - p0.gemm_s) / reps;
            }
        }
        macs = p1.ffn_macs - p0.ffn_macs;
        gbytes = p1.grouped_bytes - p0.grouped_bytes, lbytes = moe_only ? 0 : p1.gemm_bytes - p0.gemm_bytes;
    }
    if (ok) {
        qsort(s, (size_t)reps, sizeof *s, bench_cmp_double);
        *out = (Timing){s[reps / 2], s[0], s[reps - 1], macs, grouped, route, attention, linear, gbytes, lbytes};
    }
    free(s);
    free(ids);
    free(pos);
    free(seq);
    return ok;
}

/* The machine's memory read bandwidth on `threads` threads (GB/s): the best of ten timed sums of a
 * buffer far beyond the caches (512 MB, less where memory is short), bench_ceilings' probe. A GEMM
 * that prefetches its weights can read faster than this plain stream: over 100 % is possible. */
static double measure_read(int threads)
{
    double have = mem_available_bytes(), bytes = have >= 8e9 ? 512e6 : have / 16;
    size_t n = (size_t)((bytes < 64e6 ? 64e6 : bytes) / sizeof(uint64_t));
    uint64_t *buf = xmalloc(n * sizeof *buf);
    for (size_t i = 0; i < n; i++) buf[i] = i;
    CgPool *pool = cg_pool_new(threads);
    double best = 0;
    for (int r = 0; r < 11; r++) { /* (the first warms the threads and the pages up) */
        double v = probe_read_gbs(pool, buf, n);
        best = r && v > best ? v : best;
    }
    cg_pool_free(pool);
    free(buf);
    return best;
}

/* The machine's f32 FMA peak on `threads` threads: the best of a few short probes. */
static double measure_peak(int threads)
{
    CgPool *pool = cg_pool_new(threads);
    double v[5], best = 0;
    probe_fma_peak_runs(pool, v, 5);
    for (int r = 0; r < 5; r++) best = v[r] > best ? v[r] : best;
    cg_pool_free(pool);
    return best;
}

/* The peak a line's fractions use: the best probe so far, measured again before each line. A shared
 * VM has slow phases of seconds: a first probe on the Zen 2 of 2026-12-03 read 122-133 GFLOP/s where
 * the same probe read 180 a minute later, and the 7B layer's lines said 129 % "of peak". The text
 * says when it rose. */
static double peak_again(const BenchArgs *a, double *peak)
{
    double was = *peak, now = measure_peak(a->threads);
    if (now > was) *peak = now;
    if (!a->json && *peak > 1.03 * was)
        printf("(f32 FMA peak measured again: %.1f GFLOP/s, the first probe ran in a slow phase of this machine; "
               "the fractions from here use it)\n", *peak);
    return *peak;
}

/* bytes in KB, MB or GB, one decimal (a tiny model's weights and caches are kilobytes) */
static void bytes_text(double bytes, char *buf, size_t n)
{
    if (bytes >= 1e9) snprintf(buf, n, "%.2f GB", bytes / 1e9);
    else if (bytes >= 1e6) snprintf(buf, n, "%.1f MB", bytes / 1e6);
    else snprintf(buf, n, "%.1f KB", bytes / 1e3);
}

static void report(const BenchArgs *a, const char *scope, int64_t T, const Timing *t, double peak, double read)
{
    double gflops = 2e-9 * t->ffn_macs / t->median;
    if (a->json) {
        printf("{\"scope\": \"%s\", \"tokens\": %lld, \"median_s\": %.6g, \"min_s\": %.6g, \"max_s\": %.6g, "
               "\"tokens_per_s\": %.6g, \"gflops\": %.6g, \"peak_gflops\": %.6g, \"peak_fraction\": %.4f, "
               "\"read_gbs\": %.6g, \"grouped_s\": %.6g, \"grouped_weight_bytes\": %.6g, \"dense_s\": %.6g, "
               "\"dense_weight_bytes\": %.6g}\n",
               scope, (long long)T, t->median, t->lo, t->hi, (double)T / t->median, gflops, peak, gflops / peak, read,
               t->grouped_s, t->grouped_bytes, t->linear_s, t->linear_bytes);
    } else {
        printf("%-6s T = %-5lld %10.3f ms (%.3f-%.3f)  %9.1f tokens/s  %7.1f GFLOP/s FFN  %5.1f %% of peak"
               "  [grouped GEMMs %.2f ms at %.1f %%, routing %.2f ms]\n", scope, (long long)T, 1e3 * t->median,
               1e3 * t->lo, 1e3 * t->hi, (double)T / t->median, gflops, 100.0 * gflops / peak, 1e3 * t->grouped_s,
               t->grouped_s > 0 ? 100.0 * 2e-9 * t->ffn_macs / t->grouped_s / peak : 0.0, 1e3 * t->route_s);
        if (t->attention_s > 0 || t->linear_s > 0)
            printf("%-6s %-9s [attention %.2f ms, dense GEMMs %.2f ms]\n", "", "", 1e3 * t->attention_s, 1e3 * t->linear_s);
        /* the weights each kind of GEMM read, and how fast against the read ceiling (the figure that
         * binds where a weight serves few tokens: a decode step) */
        char gb[32], lb[32];
        bytes_text(t->grouped_bytes, gb, sizeof gb), bytes_text(t->linear_bytes, lb, sizeof lb);
        double gr = t->grouped_s > 0 ? 1e-9 * t->grouped_bytes / t->grouped_s : 0;
        double lr = t->linear_s > 0 ? 1e-9 * t->linear_bytes / t->linear_s : 0;
        printf("%-6s %-9s [weights read: grouped GEMMs %s at %.1f GB/s, %.0f %% of the read probe's", "", "", gb, gr,
               100.0 * gr / read);
        if (t->linear_s > 0) printf("; dense GEMMs %s at %.1f GB/s, %.0f %%", lb, lr, 100.0 * lr / read);
        printf("]\n");
    }
    fflush(stdout);
}

struct BenchModel {
    CpuModel *cm;
    IrModule *m;
    WeightSet *w;
    CpuKernelSource *ks; /* owned when made here */
    bool own_ks;
    int64_t vocab;
};

/* Spec s lowered for the CPU backend of this host, tuned by db (NULL: the rule). */
static IrModule *lower(const ModelSpec *s, const TuneDb *db)
{
    IrModule *m = ir_lower_spec(s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true, .tuning = db};
    cpu_host_pass_options(&po);
    Diag d = {stderr, s->name, 0};
    MOE_ASSERT(passes_run(m, &po, &d));
    return m;
}

/* Spec s's model on random weights of seed, its kernels from ks (NULL: a JIT source of its own) tuned
 * by db (NULL: the rule), its panels kept in and mapped from panel_cache's files (NULL: in memory);
 * NULL with err set when it cannot be made. */
static BenchModel *model_new(const ModelSpec *s, uint64_t seed, const TuneDb *db, int threads, CpuKernelSource *ks,
                             const char *panel_cache, RtError *err)
{
    BenchModel *bm = xcalloc(1, sizeof *bm);
    bm->ks = ks ? ks : cpu_jit_source_new(err), bm->own_ks = !ks, bm->vocab = s->vocab;
    if (bm->ks && weights_random(s, seed, &bm->w, err)) {
        bm->m = lower(s, db);
        CpuModelOptions o = {.threads = threads, .panel_cache = panel_cache};
        bm->cm = cpu_model_open(bm->m, bm->w, s->max_positions, bm->ks, &o, err);
    }
    if (!bm->cm) {
        bench_model_free(bm);
        return NULL;
    }
    PanelCacheStats pst;
    char line[512];
    if (panel_cache && cpu_model_panel_stats(bm->cm, &pst))
        fprintf(stderr, "moeppc bench: %s\n", panel_cache_stats_line(&pst, panel_cache, line, sizeof line));
    return bm;
}

BenchModel *bench_model_new(const ModelSpec *s, const TuneDb *db, int threads, RtError *err)
{
    return model_new(s, 1, db, threads, NULL, NULL, err);
}

bool bench_model_median(BenchModel *bm, int64_t T, int reps, double *median, RtError *err)
{
    Timing t;
    if (!time_runs(bm->cm, T, 0, false, 1, bm->vocab, reps, false, &t, err)) return false;
    *median = t.median;
    return true;
}

void bench_model_free(BenchModel *bm)
{
    if (!bm) return;
    cpu_model_free(bm->cm);
    if (bm->m) ir_module_free(bm->m);
    if (bm->w) weights_close(bm->w);
    if (bm->own_ks) cpu_jit_source_free(bm->ks);
    free(bm);
}

/* Build the CPU model for spec s and time it at every T of the list. */
static int bench_spec(const BenchArgs *a, const ModelSpec *s, const char *scope, bool moe_only, double *peak,
                      CpuKernelSource *ks)
{
    RtError err = {{0}};
    BenchModel *bm = model_new(s, a->seed, a->db, a->threads, ks, a->panel_cache, &err);
    if (!bm) {
        fprintf(stderr, "moeppc bench: error: %s\n", err.msg);
        return 1;
    }
    CpuModel *cm = bm->cm;
    IrModule *m = bm->m;
    int rc = 0;
    for (int k = 0; cm && k < a->n_tokens; k++) {
        if (a->context + (a->batch ? a->rows : a->tokens[k]) > s->max_positions) {
            if (a->context && !a->json) printf("%-6s T = %-5lld skipped: positions %lld.. pass max_positions %lld\n", scope,
                                   (long long)a->tokens[k], (long long)a->context, (long long)s->max_positions);
            continue;
        }
        Timing t;
        if (!time_runs(cm, a->tokens[k], a->context, a->batch, a->rows, s->vocab, a->reps, moe_only, &t, &err)) {
            fprintf(stderr, "moeppc bench: error: %s\n", err.msg);
            rc = 1;
            break;
        }
        report(a, scope, a->tokens[k], &t, peak_again(a, peak), a->read_gbs);
        if (a->context && !a->json && t.attention_s > 0) { /* the KV caches every step reads whole */
            double bytes = 0;
            for (const IrInstr *i = m->first; i; i = i->next) {
                CgOpDesc od;
                if (i->op == IR_OP_ATTENTION && cg_op_desc_for(i, &od))
                    bytes += 2.0 *
                             (double)(a->batch ? a->tokens[k] / a->rows * (a->context + a->rows)
                                               : a->context + a->tokens[k]) *
                             (double)i->in[1]->type.dims[1] * (double)dtype_size(od.wdtype);
            }
            char kv[32];
            bytes_text(bytes, kv, sizeof kv);
            printf("%-6s %-9s [KV caches at position %lld%s: %s, read at %.1f GB/s in attention]\n", "", "",
                   (long long)a->context, a->batch ? ", every sequence's" : "", kv, bytes / t.attention_s / 1e9);
        }
    }
    bench_model_free(bm);
    return rc;
}

static bool parse_tokens(const char *v, BenchArgs *a)
{
    a->n_tokens = 0;
    for (const char *p = v; *p && a->n_tokens < 16;) {
        char *end;
        long long t = strtoll(p, &end, 10);
        if (end == p || t < 1 || t > 65536) return false;
        a->tokens[a->n_tokens++] = t;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return false;
    }
    return a->n_tokens > 0;
}

static int parse_bench_args(int argc, char **argv, BenchArgs *a)
{
    *a = (BenchArgs){.tokens = {1, 64, 512}, .n_tokens = 3, .threads = threads_default(), .reps = 7, .seed = 1,
                     .zc_share = -1, .rows = 1};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(o, "--layer") == 0) a->layer = true;
        else if (strcmp(o, "--model") == 0) a->model = true;
        else if (strcmp(o, "--json") == 0) a->json = true;
        else if (strcmp(o, "--batch") == 0) a->batch = true;
        else if (strcmp(o, "--experts") == 0) a->experts = true;
        else if (o[0] == '-' && !v) return usage_error("bench", BENCH_USAGE, "option '%s' needs a value", o);
        else if (strcmp(o, "--device") == 0) i++; /* cpu (cuda went to bench_cuda.c) */
        else if (strcmp(o, "--tokens") == 0) {
            if (!parse_tokens(v, a)) return usage_error("bench", BENCH_USAGE, "--tokens: expected a list like 1,64,512, found '%s'", v);
            i++;
        } else if (strcmp(o, "--threads") == 0) {
            char *end;
            long long n = strtoll(v, &end, 10);
            if (*end || n < 1 || n > MOE_MAX_THREADS)
                return usage_error("bench", BENCH_USAGE, "--threads: expected 1..256, found '%s'", v);
            a->threads = (int)n;
            i++;
        } else if (strcmp(o, "--reps") == 0 || strcmp(o, "--random-weights") == 0) {
            char *end;
            long long n = strtoll(v, &end, 10);
            if (*end || n < (o[3] == 'a' ? 0 : 1) || n > 100000)
                return usage_error("bench", BENCH_USAGE, "expected a positive integer, found '%s'", v);
            if (o[3] == 'e') a->reps = (int)n;
            else a->seed = (uint64_t)n;
            i++;
        } else if (strcmp(o, "--context") == 0) {
            char *end;
            a->context = strtoll(v, &end, 10);
            if (*end || a->context < 0 || a->context > 1 << 20)
                return usage_error("bench", BENCH_USAGE, "--context: expected a position, found '%s'", v);
            i++;
        } else if (strcmp(o, "--rows") == 0) {
            char *end;
            a->rows = strtoll(v, &end, 10);
            if (*end || !*v || a->rows < 1 || a->rows > 65536)
                return usage_error("bench", BENCH_USAGE, "--rows: expected a count in 1..65536, found '%s'", v);
            i++;
        } else if (strcmp(o, "--tuning") == 0) {
            a->tuning = v;
            i++;
        } else if (strcmp(o, "--panel-cache") == 0) {
            if (!*v) return usage_error("bench", BENCH_USAGE, "--panel-cache: expected a directory, found '%s'", v);
            a->panel_cache = v;
            i++;
        } else if (strcmp(o, "--zc-share") == 0) {
            char *end;
            a->zc_share = strtod(v, &end);
            if (*end || !(a->zc_share >= 0 && a->zc_share <= 1))
                return usage_error("bench", BENCH_USAGE, "--zc-share: expected a share in [0, 1], found '%s'", v);
            i++;
        } else if (strcmp(o, "--dtype") == 0) {
            if (!dtype_parse(v, &a->dtype) || a->dtype > DT_F16) return usage_error("bench", BENCH_USAGE, "--dtype: expected f32, bf16 or f16, found '%s'", v);
            a->dtype_set = true;
            i++;
        } else if (o[0] == '-') return usage_error("bench", BENCH_USAGE, "unknown option '%s'", o);
        else if (!a->spec) a->spec = o;
        else return usage_error("bench", BENCH_USAGE, "unexpected argument '%s'", o);
    }
    if (!a->spec) return usage_error("bench", BENCH_USAGE, "%s", "missing SPEC");
    if (!a->layer && !a->model && !a->experts) a->model = true, a->layer = !a->context && !a->batch;
    if ((a->context || a->batch) && (a->layer || a->experts || !a->model))
        return usage_error("bench", BENCH_USAGE, "%s: with --model only (a layer has no attention)",
                           a->batch ? "--batch" : "--context");
    return bench_rows_check(BENCH_USAGE, a->batch, a->rows, a->tokens, a->n_tokens);
}

/* ---- --experts: the expert part of one layer under synthetic routing ----------------------------------- */

/* Time the expert part (everything after moe.route up to the grouped down-projection) of layer 0. */
static bool time_experts(const BenchArgs *a, CpuModel *cm, const IrModule *m, const ModelSpec *s, int64_t T,
                         int64_t *ffn_picks, Timing *out, RtError *err)
{
    int route = bench_instr_index(m, IR_OP_MOE_ROUTE, -1), down = bench_instr_index(m, IR_OP_MOE_GROUPED_DOWN, route);
    MOE_ASSERT(route >= 0 && down > route);
    const IrInstr *ri = m->first;
    for (int n = 0; n < route; n++) ri = ri->next;
    int32_t *ids = xmalloc((size_t)T * sizeof *ids), *pos = xmalloc((size_t)T * sizeof *pos);
    for (int64_t t = 0; t < T; t++) ids[t] = (int32_t)(t % s->vocab), pos[t] = (int32_t)t;
    if (!cpu_model_run(cm, ids, pos, T, err)) { /* lays out the arena and runs the real router once */
        free(ids);
        free(pos);
        return false;
    }
    int32_t *rid = cpu_model_buffer(cm, ri->out[1], T);
    float *rw = cpu_model_buffer(cm, ri->out[0], T);
    int64_t k = s->top_k, picks = 0;
    if (a->zc_share >= 0) picks = bench_synthetic_routing(T, k, s->n_ffn, spec_n_experts(s), a->zc_share, a->seed, rid, rw);
    else for (int64_t j = 0; j < T * k; j++) picks += rid[j] < s->n_ffn;
    double *sec = xmalloc((size_t)a->reps * sizeof *sec);
    CpuProfile p0 = cpu_model_profile(cm);
    for (int r = -2; r < a->reps; r++) {
        double t0 = bench_now_s();
        MOE_ASSERT(cpu_model_run_steps(cm, route + 1, down + 1, ids, pos, T, err)); /* the arena is there */
        if (r >= 0) sec[r] = bench_now_s() - t0;
    }
    CpuProfile p1 = cpu_model_profile(cm);
    if (getenv("MOEPPC_BENCH_DEBUG"))
        fprintf(stderr, "grouped %.3f ms, combine+dispatch %.3f ms, other %.3f ms per run\n",
                1e3 * (p1.grouped_s - p0.grouped_s) / (a->reps + 2), 1e3 * (p1.route_s - p0.route_s) / (a->reps + 2),
                1e3 * (p1.other_s - p0.other_s) / (a->reps + 2));
    qsort(sec, (size_t)a->reps, sizeof *sec, bench_cmp_double);
    *out = (Timing){sec[a->reps / 2], sec[0], sec[a->reps - 1],
                    (double)picks * 3.0 * (double)s->hidden * (double)s->ffn_intermediate, 0, 0, 0, 0, 0, 0};
    *ffn_picks = picks;
    free(sec);
    free(ids);
    free(pos);
    return true;
}

static int bench_experts(const BenchArgs *a, const ModelSpec *full, double *peak, CpuKernelSource *ks)
{
    ModelSpec s = *full;
    s.n_layers = s.moe_every;
    s.vocab = 256;
    RtError err = {{0}};
    WeightSet *w;
    if (!weights_random(&s, a->seed, &w, &err)) {
        fprintf(stderr, "moeppc bench: error: %s\n", err.msg);
        return 1;
    }
    IrModule *m = lower(&s, a->db);
    CpuModel *cm = cpu_model_new(m, w, s.max_positions > 8192 ? s.max_positions : 8192, ks, a->threads, &err);
    if (!cm) fprintf(stderr, "moeppc bench: error: %s\n", err.msg);
    int rc = cm ? 0 : 1;
    for (int q = 0; cm && q < a->n_tokens; q++) {
        int64_t T = a->tokens[q], picks;
        Timing t;
        if (!time_experts(a, cm, m, &s, T, &picks, &t, &err)) {
            fprintf(stderr, "moeppc bench: error: %s\n", err.msg);
            rc = 1;
            break;
        }
        double gflops = 2e-9 * t.ffn_macs / t.median, pk = peak_again(a, peak);
        if (a->json)
            printf("{\"scope\": \"experts\", \"spec\": \"%s\", \"tokens\": %lld, \"zc_share\": %.4g, \"ffn_picks\": %lld, "
                   "\"median_s\": %.6g, \"min_s\": %.6g, \"max_s\": %.6g, \"gflops\": %.6g, \"peak_fraction\": %.4f}\n",
                   s.name, (long long)T, a->zc_share, (long long)picks, t.median, t.lo, t.hi, gflops, gflops / pk);
        else
            printf("experts T = %-5lld zc share %-6s %6lld FFN picks  %10.3f ms (%.3f-%.3f)  %7.1f GFLOP/s  %5.1f %% of peak\n",
                   (long long)T, a->zc_share < 0 ? "router" : "set", (long long)picks, 1e3 * t.median, 1e3 * t.lo,
                   1e3 * t.hi, gflops, 100.0 * gflops / pk);
        fflush(stdout);
    }
    cpu_model_free(cm);
    ir_module_free(m);
    weights_close(w);
    return rc;
}


int cmd_bench(int argc, char **argv)
{
    const char *dev = args_value(argc, argv, "--device");
    if (dev && strcmp(dev, "cpu") != 0) return bench_cuda(argc, argv); /* the GPU: bench_cuda.c */
    BenchArgs a;
    int rc = parse_bench_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    ModelSpec s;
    if (!load_spec(a.spec, &s)) return 1;
    if (a.dtype_set) s.dtype = a.dtype;
    TuneDb db = {0};
    if (a.tuning && !tuning_load_for_host(a.tuning, &db)) return 1;
    a.db = a.tuning ? &db : NULL;
    RtError err = {{0}};
    CpuKernelSource *ks = cpu_jit_source_new(&err);
    if (!ks) {
        fprintf(stderr, "moeppc bench: error: %s\n", err.msg);
        tune_db_free(&db);
        return 1;
    }
    double peak = measure_peak(a.threads);
    a.read_gbs = measure_read(a.threads);
    if (!a.json) {
        char why[128];
        printf("moeppc bench %s: %s weights, %d threads, f32 FMA peak measured %.1f GFLOP/s (%s), memory read "
               "(a streaming sum) %.1f GB/s, median of %d\n", s.name, dtype_name(s.dtype), a.threads, peak, probe_isa(),
               a.read_gbs, a.reps);
        if (s.dtype == DT_BF16) printf("bf16 GEMMs on the bf16 dot product: %s\n", cpu_bf16_dot_why(why, sizeof why));
        if (s.dtype == DT_BF16) printf("bf16 GEMMs on AMX tiles: %s\n", cpu_amx_why(why, sizeof why));
        if (s.dtype == DT_BF16) /* specialize's choice of attention's form (the amx form needs head_dim % 32 == 0) */
            printf("bf16 attention: %s\n", spec_head_dim(&s) % 32 ? "f32 FMAs (head_dim not a multiple of 32)"
                                           : cpu_amx()         ? "the amx form on AMX tiles"
                                           : cpu_bf16_dot()    ? "the amx form on the bf16 dot product"
                                                               : "f32 FMAs");
    }
    if (a.layer) { /* one MoE layer: the spec cut to one layer, a small vocabulary */
        ModelSpec one = s;
        one.n_layers = one.moe_every;
        one.vocab = 256;
        rc |= bench_spec(&a, &one, "layer", true, &peak, ks);
    }
    if (a.experts) rc |= bench_experts(&a, &s, &peak, ks);
    if (a.model) {
        IrModule *m = lower(&s, a.db); /* (random weights packed are made a run at a time: what stays must fit) */
        double made = (double)weights_random_bytes(&s), kept = cpu_model_bytes_on_random(m, &s, false);
        double have = mem_available_bytes();
        ir_module_free(m);
        if (made > 0.8 * have || kept > 0.9 * have)
            printf("model  skipped: %.2f GB of random weights reserved (80 %% of memory at most), %.2f GB of panels, "
                   "KV caches and the weights read in place (90 %%), do not fit the %.2f GB available\n", made / 1e9,
                   kept / 1e9, have / 1e9);
        else {
            if (a.batch && !a.json && a.rows > 1)
                printf("batch: T / %lld sequences, %lld tokens each at positions %lld.. of its own (a step of prompts' "
                       "chunks)\n", (long long)a.rows, (long long)a.rows, (long long)a.context);
            else if (a.batch && !a.json)
                printf("batch: T sequences, one token each at position %lld of its own (a decode step of them)\n",
                       (long long)a.context);
            rc |= bench_spec(&a, &s, a.batch ? "batch" : "model", false, &peak, ks);
        }
    }
    cpu_jit_source_free(ks);
    tune_db_free(&db);
    return rc;
}
