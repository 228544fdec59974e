/* bench_cuda.c — `moeppc bench SPEC --device cuda`: one layer of the spec (cut to one MoE layer, a
 * small vocabulary, random weights) on the GPU, timed with CUDA events after warm-up: the whole layer,
 * its MoE block (router, combine, dispatch, grouped GEMMs) and the grouped expert GEMMs alone, per
 * token count (at T = 1 each part replayed as a CUDA graph, as a decode step runs: the host's launch
 * time is not the GPU's). Reports TFLOP/s of the FFN-expert work actually executed and, when the ceilings are
 * given (--peak-tflops, --bandwidth-gbs: scripts/device-check.sh measures them in the same run), the
 * fraction of the bf16 peak and, for the MoE block, the bytes of the router and of the selected
 * experts' weights per second as a fraction of the copy bandwidth; the attention alone, with the
 * bytes of the KV cache it reads (--context P: the tokens after a prefill of P, a long context's
 * decode step). At T = 1 the MoE block and its GEMMs also IN_GRAPH times over in one graph: what a
 * block costs inside a whole decode step's graph, whose one launch serves every layer. */
#include "tools/commands.h"
#include "tools/help.h"

#ifdef MOEPPC_HAVE_CUDA
#include "passes/passes.h"
#include "passes/tuning.h"
#include "runtime/cuda/cuda_exec.h"

#include <stdlib.h>
#include <string.h>

#define IN_GRAPH 20

typedef struct {
    const char *spec;
    int64_t tokens[16];
    int n_tokens, reps;
    uint64_t seed;
    bool dtype_set, json;
    moe_dtype dtype;
    double peak_tflops, bw_gbs;
    double zc_share;              /* --zc-share P: synthetic routing for the MoE block (< 0: the router's) */
    int64_t context;              /* --context P: the tokens at positions P.., after a prefill of P tokens */
    bool batch;                   /* --batch: T sequences of one token each, at position P of its own */
    int64_t rows;                 /* --rows R (with --batch): T / R sequences of R tokens each instead, at
                                     positions P..P+R-1 (a step of prompts' chunks) */
    int tile[2][3];               /* --tile UP[/DOWN] */
    const char *tuning;           /* --tuning: a GPU tuning database (moeppc tune --target sm_XX) */
    int device;                   /* --device cuda:N's ordinal */
} CudaBenchArgs;

static int parse_args(int argc, char **argv, CudaBenchArgs *a)
{
    *a = (CudaBenchArgs){.reps = 20, .seed = 1, .tokens = {1, 64, 512, 4096}, .n_tokens = 4, .zc_share = -1, .rows = 1};
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (strcmp(o, "--json") == 0) a->json = true;
        else if (strcmp(o, "--batch") == 0) a->batch = true;
        else if (o[0] == '-' && !v) return usage_error("bench", BENCH_CUDA_USAGE, "option '%s' needs a value", o);
        else if (strcmp(o, "--device") == 0) {
            if (!parse_cuda_device(v, &a->device))
                return usage_error("bench", BENCH_CUDA_USAGE,
                                   "--device: expected cuda or cuda:N (N: 0..255), found '%s'", v);
            i++;
        } else if (strcmp(o, "--tokens") == 0) {
            a->n_tokens = 0;
            for (const char *p = v; *p && a->n_tokens < 16;) {
                long long t = strtoll(p, &end, 10);
                if (end == p || t < 1 || t > 1 << 20 || (*end && *end != ','))
                    return usage_error("bench", BENCH_CUDA_USAGE, "--tokens: expected counts like 1,64,512, found '%s'", v);
                a->tokens[a->n_tokens++] = t;
                p = *end ? end + 1 : end;
            }
            i++;
        } else if (strcmp(o, "--reps") == 0) {
            a->reps = (int)strtol(v, &end, 10);
            if (*end || a->reps < 1 || a->reps > 100000) return usage_error("bench", BENCH_CUDA_USAGE, "--reps: expected 1..100000, found '%s'", v);
            i++;
        } else if (strcmp(o, "--random-weights") == 0) {
            a->seed = strtoull(v, &end, 10);
            if (*end || !*v) return usage_error("bench", BENCH_CUDA_USAGE, "--random-weights: '%s' is not a seed", v);
            i++;
        } else if (strcmp(o, "--dtype") == 0) {
            if (!dtype_parse(v, &a->dtype) || a->dtype == DT_I32)
                return usage_error("bench", BENCH_CUDA_USAGE, "--dtype: expected f32, bf16 or f16, found '%s'", v);
            a->dtype_set = true;
            i++;
        } else if (strcmp(o, "--context") == 0) {
            long long p = strtoll(v, &end, 10);
            if (*end || !*v || p < 0 || p > 1 << 20)
                return usage_error("bench", BENCH_CUDA_USAGE, "--context: expected a position in 0..1048576, found '%s'", v);
            a->context = p;
            i++;
        } else if (strcmp(o, "--rows") == 0) {
            long long r = strtoll(v, &end, 10);
            if (*end || !*v || r < 1 || r > 1 << 20)
                return usage_error("bench", BENCH_CUDA_USAGE, "--rows: expected a count in 1..1048576, found '%s'", v);
            a->rows = r;
            i++;
        } else if (strcmp(o, "--zc-share") == 0) {
            a->zc_share = strtod(v, &end);
            if (*end || !(a->zc_share >= 0 && a->zc_share <= 1))
                return usage_error("bench", BENCH_CUDA_USAGE, "--zc-share: expected a share in [0, 1], found '%s'", v);
            i++;
        } else if (strcmp(o, "--peak-tflops") == 0 || strcmp(o, "--bandwidth-gbs") == 0) {
            double x = strtod(v, &end);
            if (*end || !(x > 0)) return usage_error("bench", BENCH_CUDA_USAGE, "expected a positive number, found '%s'", v);
            *(o[2] == 'p' ? &a->peak_tflops : &a->bw_gbs) = x;
            i++;
        } else if (strcmp(o, "--tile") == 0) {
            int *u = a->tile[0], *d = a->tile[1];
            int n = sscanf(v, "%dx%dx%d/%dx%dx%d", &u[0], &u[1], &u[2], &d[0], &d[1], &d[2]);
            if ((n != 3 && n != 6) || u[0] <= 0 || (n == 6 && d[0] <= 0))
                return usage_error("bench", BENCH_CUDA_USAGE, "--tile: expected MxNxK[/MxNxK] (up/down) like 64x64x32, found '%s'", v);
            if (n == 3) memcpy(d, u, sizeof a->tile[1]);
            i++;
        } else if (strcmp(o, "--tuning") == 0) {
            a->tuning = v, i++;
        } else if (o[0] == '-') return usage_error("bench", BENCH_CUDA_USAGE, "unknown option '%s'", o);
        else if (!a->spec) a->spec = o;
        else return usage_error("bench", BENCH_CUDA_USAGE, "unexpected argument '%s'", o);
    }
    if (!a->spec) return usage_error("bench", BENCH_CUDA_USAGE, "%s", "missing SPEC");
    return bench_rows_check(BENCH_CUDA_USAGE, a->batch, a->rows, a->tokens, a->n_tokens);
}

static const IrInstr *instr_at(const IrModule *m, int idx)
{
    const IrInstr *i = m->first;
    while (idx-- > 0) i = i->next;
    return i;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

bool bench_cuda_time_steps(CudaModel *cm, int first, int last, int in_graph, const int32_t *ids, const int32_t *pos,
                           const int32_t *seq, int64_t T, int warmup, int reps, double *ms, RtError *err)
{
    double *v = xmalloc((size_t)reps * sizeof *v);
    bool ok = true;
    for (int r = -warmup; r < reps && ok; r++) {
        ok = cuda_model_run_steps_seqs(cm, first, last, in_graph, ids, pos, seq, T, err);
        if (r >= 0) v[r] = cuda_model_last_ms(cm) / in_graph;
    }
    if (ok) {
        qsort(v, (size_t)reps, sizeof *v, cmp_double);
        *ms = v[reps / 2];
    }
    free(v);
    return ok;
}

int bench_cuda(int argc, char **argv)
{
    CudaBenchArgs a;
    int rc = parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    ModelSpec s;
    if (!load_spec(a.spec, &s)) return 1;
    if (a.dtype_set) s.dtype = a.dtype;
    s.n_layers = s.moe_every; /* one MoE layer (and the dense ones before it) */
    s.vocab = 256;
    int64_t max_t = 1;
    for (int q = 0; q < a.n_tokens; q++) max_t = a.tokens[q] > max_t ? a.tokens[q] : max_t;
    if (s.max_positions < a.context + max_t) s.max_positions = a.context + max_t;
    RtError err = {{0}};
    WeightSet *w = NULL;
    if (!weights_random(&s, a.seed, &w, &err)) {
        fprintf(stderr, "moeppc bench: error: %s\n", err.msg);
        return 1;
    }
    IrModule *m = ir_lower_spec(&s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true};
    Diag d = {stderr, a.spec, 0};
    MOE_ASSERT(passes_run(m, &po, &d));
    CudaOptions o = {.compile = cuda_nvrtc_cubins, .device = a.device};
    cuda_options_env(&o);
    memcpy(o.tile, a.tile, sizeof o.tile);
    char gpu[128], arch[16];
    TuneDb db = {0};
    Diag tdiag = {stderr, a.tuning, 0};
    if (a.tuning && !tune_db_load(a.tuning, &db, &tdiag)) {
        ir_module_free(m);
        weights_close(w);
        return 1;
    }
    if (a.tuning && cuda_backend.identity(a.device, gpu, sizeof gpu, arch, sizeof arch, &err)) /* no GPU: said below */
        tune_db_apply_gpu(a.tuning, &db, gpu, arch, cg_cuda_nvrtc_version_text(), m, o.tile_sched, &m->arena);
    tune_db_free(&db);
    CudaModel *cm = cuda_model_new(m, w, s.max_positions, &o, &err);
    if (!cm) {
        fprintf(stderr, "moeppc bench: error: CUDA backend: %s\n", err.msg);
        ir_module_free(m);
        weights_close(w);
        return 1;
    }
    int n_steps = 0;
    for (const IrInstr *i = m->first; i; i = i->next) n_steps++;
    int att = bench_instr_index(m, IR_OP_ATTENTION, -1), route = bench_instr_index(m, IR_OP_MOE_ROUTE, -1), up = bench_instr_index(m, IR_OP_MOE_GROUPED_UP, route),
        down = bench_instr_index(m, IR_OP_MOE_GROUPED_DOWN, route);
    MOE_ASSERT(att >= 0 && route >= 0 && up > route && down > up);
    const IrInstr *ai = instr_at(m, att);
    double kv_elem = tune_attention_dtype(ai) == DT_F32 || o.no_attn_tc ? 4.0 : 2.0; /* the caches' (cuda_exec.h) */
    double kv_row_bytes = 2.0 * (double)ai->in[1]->type.dims[ai->in[1]->type.ndim - 1] * kv_elem;
    double qk_cols = (double)ai->in[0]->type.dims[ai->in[0]->type.ndim - 1]; /* heads x head_dim */
    int64_t max_seqs = max_t / a.rows;
    bool ok = !a.batch || cuda_model_set_sequences(cm, (int)max_seqs, &err);
    if (ok && a.context > 0) { /* the KV cache's first P rows: a prefill of P tokens (--batch: copied to each) */
        int32_t *ids = xmalloc((size_t)a.context * sizeof *ids), *pos = xmalloc((size_t)a.context * sizeof *pos);
        for (int64_t t = 0; t < a.context; t++) ids[t] = (int32_t)((t * 2654435761u) % (uint64_t)s.vocab), pos[t] = (int32_t)t;
        ok = cuda_model_run(cm, ids, pos, a.context, &err);
        for (int q = 1; ok && a.batch && q < max_seqs; q++) ok = cuda_model_copy_sequence(cm, 0, q, a.context, &err);
        free(ids), free(pos);
    }
    if (!ok) {
        fprintf(stderr, "moeppc bench: error: CUDA backend: the prefill of --context %lld: %s\n", (long long)a.context,
                err.msg);
        cuda_model_free(cm), ir_module_free(m), weights_close(w);
        return 1;
    }
    const IrInstr *ri = instr_at(m, route);
    double router_bytes = 0, expert_bytes = 3.0 * (double)s.hidden * (double)s.ffn_intermediate * dtype_size(s.dtype);
    for (int k = 1; k < ri->n_in; k++)
        if (ri->in[k]->kind == IR_VAL_PARAM)
            router_bytes += (double)ir_type_numel(&ri->in[k]->type, 1) * dtype_size(ri->in[k]->type.dtype);
    if (!a.json)
        printf("moeppc bench %s --device cuda: one layer, %s weights, %s; median of %d (CUDA events; T = 1 as CUDA "
               "graphs, as decode steps run)%s%s%s\n", s.name,
               dtype_name(s.dtype), cuda_model_device(cm), a.reps,
               a.peak_tflops ? "" : " (give --peak-tflops/--bandwidth-gbs for fractions of the ceilings)",
               a.zc_share >= 0 ? "; synthetic routing: the MoE block is what follows the router" : "",
               !a.batch      ? ""
               : a.rows > 1 ? "; --batch --rows R: T / R sequences, R tokens each (a step of prompts' chunks)"
                            : "; --batch: T sequences, a token each (their steps as graphs from the second)");
    char name[64];
    snprintf(name, sizeof name, "route.%lld.ids", (long long)(s.n_layers - 1));
    for (int q = 0; q < a.n_tokens && rc == 0; q++) {
        int64_t T = a.tokens[q];
        int32_t *ids = xmalloc((size_t)T * sizeof *ids), *pos = xmalloc((size_t)T * sizeof *pos);
        int32_t *seq = a.batch ? xmalloc((size_t)T * sizeof *seq) : NULL;
        for (int64_t t = 0; t < T; t++) { /* --batch: token t of sequence t / R at position P + t % R */
            ids[t] = (int32_t)((t * 2654435761u) % (uint64_t)s.vocab);
            pos[t] = (int32_t)(a.context + (seq ? t % a.rows : t));
            if (seq) seq[t] = (int32_t)(t / a.rows);
        }
        double layer_ms = 0, moe_ms = 0, gemm_ms = 0, att_ms = 0;
        ok = bench_cuda_time_steps(cm, 0, n_steps, 1, ids, pos, seq, T, 3, a.reps, &layer_ms, &err) &&
             bench_cuda_time_steps(cm, att, att + 1, 1, ids, pos, seq, T, 3, a.reps, &att_ms, &err);
        int32_t *sid = NULL;
        if (ok && a.zc_share >= 0) { /* the router's decisions replaced: the block after it is timed */
            int64_t k = s.top_k;
            sid = xmalloc((size_t)(T * k) * sizeof *sid);
            float *sw = xmalloc((size_t)(T * k) * sizeof *sw);
            bench_synthetic_routing(T, k, s.n_ffn, spec_n_experts(&s), a.zc_share, a.seed, sid, sw);
            ok = cuda_model_write(cm, ri->out[1], sid, &err) && cuda_model_write(cm, ri->out[0], sw, &err);
            free(sw);
        }
        int first = a.zc_share >= 0 ? route + 1 : route;
        ok = ok && bench_cuda_time_steps(cm, first, down + 1, 1, ids, pos, seq, T, 3, a.reps, &moe_ms, &err);
        int moe_ops = cuda_model_last_ops(cm); /* the block's launches (and fills, copies) */
        ok = ok && bench_cuda_time_steps(cm, up, down + 1, 1, ids, pos, seq, T, 3, a.reps, &gemm_ms, &err);
        /* a decode step's block as it runs inside the whole step's graph: IN_GRAPH blocks in one graph,
         * its launch shared (the block's ranges rewrite what they read: each run is the first's) */
        double moe_g = 0, gemm_g = 0;
        if (ok && T == 1)
            ok = bench_cuda_time_steps(cm, first, down + 1, IN_GRAPH, ids, pos, seq, T, 3, a.reps, &moe_g, &err) &&
                 bench_cuda_time_steps(cm, up, down + 1, IN_GRAPH, ids, pos, seq, T, 3, a.reps, &gemm_g, &err);
        int64_t cols = s.top_k, picks = 0, used = 0;
        moe_dtype dt;
        const int32_t *rid = !ok ? NULL : sid ? sid : cuda_model_output(cm, name, &cols, &dt, &err);
        if (!rid) {
            fprintf(stderr, "moeppc bench: error: CUDA backend: %s\n", err.msg);
            rc = 1;
        } else {
            bool seen[1024] = {false};
            for (int64_t j = 0; j < T * cols; j++)
                if (rid[j] >= 0 && rid[j] < s.n_ffn && rid[j] < 1024) picks++, used += !seen[rid[j]], seen[rid[j]] = true;
            double tflops = 2e-12 * (double)picks * expert_bytes / dtype_size(s.dtype) / (gemm_ms * 1e-3);
            double gbs = 1e-9 * (router_bytes + (double)used * expert_bytes) / (moe_ms * 1e-3);
            double gbs_g = moe_g > 0 ? gbs * moe_ms / moe_g : 0;
            /* the caches' rows read (each once), and the keys the queries see (causal: the sum of pos + 1) */
            double R = (double)a.rows, n_seqs = seq ? (double)T / R : 1, run = seq ? R : (double)T;
            double rows_read = n_seqs * (double)(a.context + run);
            double kv_gbs = 1e-9 * rows_read * kv_row_bytes / (att_ms * 1e-3);
            double keys = n_seqs * (run * (double)a.context + run * (run + 1) / 2);
            double att_tflops = 4e-12 * keys * qk_cols / (att_ms * 1e-3);                 /* q.k and p.v */
            if (a.json)
                printf("{\"spec\": \"%s\", \"device\": \"cuda\", \"tokens\": %lld, \"ffn_picks\": %lld, \"experts_used\": %lld, "
                       "\"layer_ms\": %.6g, \"moe_ms\": %.6g, \"moe_ops\": %d, \"grouped_ms\": %.6g, \"grouped_tflops\": %.6g, "
                       "\"moe_weight_gbs\": %.6g, \"peak_fraction\": %.4f, \"bandwidth_fraction\": %.4f, \"context\": %lld, "
                       "\"batch\": %s, \"rows\": %lld, "
                       "\"attention_ms\": %.6g, \"attention_tflops\": %.6g, \"kv_gbs\": %.6g, "
                       "\"moe_ms_in_graph\": %.6g, \"grouped_ms_in_graph\": %.6g, \"moe_weight_gbs_in_graph\": %.6g}\n",
                       s.name, (long long)T, (long long)picks, (long long)used, layer_ms, moe_ms, moe_ops, gemm_ms, tflops, gbs,
                       a.peak_tflops ? tflops / a.peak_tflops : 0.0, a.bw_gbs ? gbs / a.bw_gbs : 0.0, (long long)a.context,
                       a.batch ? "true" : "false", (long long)(a.batch ? a.rows : 0),
                       att_ms, att_tflops, kv_gbs, moe_g, gemm_g, gbs_g);
            else {
                printf("T = %-5lld layer %9.4f ms  MoE block %9.4f ms  grouped GEMMs %9.4f ms  %7.1f TFLOP/s", (long long)T,
                       layer_ms, moe_ms, gemm_ms, tflops);
                if (a.peak_tflops) printf(" (%5.1f %% of peak)", 100.0 * tflops / a.peak_tflops);
                printf("  weights %7.0f GB/s", gbs);
                if (a.bw_gbs) printf(" (%5.1f %% of copy bw)", 100.0 * gbs / a.bw_gbs);
                printf("  [%lld FFN picks, %lld experts; MoE block: %d GPU ops]", (long long)picks, (long long)used, moe_ops);
                if (moe_g > 0) {
                    printf("  in a graph of %d: MoE block %.4f ms, weights %.0f GB/s", IN_GRAPH, moe_g, gbs_g);
                    if (a.bw_gbs) printf(" (%5.1f %% of copy bw)", 100.0 * gbs_g / a.bw_gbs);
                    printf(", grouped GEMMs %.4f ms", gemm_g);
                }
                printf("  attention %.4f ms over %lld keys%s, %.1f TFLOP/s (KV cache %.0f GB/s", att_ms,
                       (long long)(seq ? a.context + 1 : a.context + T), seq ? " a sequence" : "", att_tflops, kv_gbs);
                if (a.bw_gbs) printf(", %.1f %% of copy bw", 100.0 * kv_gbs / a.bw_gbs);
                printf(")\n");
            }
            fflush(stdout);
        }
        free(ids);
        free(pos);
        free(seq);
        free(sid);
    }
    cuda_model_free(cm);
    ir_module_free(m);
    weights_close(w);
    return rc;
}
#else
int bench_cuda(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeppc bench: error: --device cuda: this moeppc was built without the CUDA toolkit's NVRTC\n");
    return 1;
}
#endif
