/* test_cpu.c — the CPU backend (JIT-compiled kernels, planned arena, KV cache) against the reference
 * interpreter on the same widened, optimised IR, and decoding on the KV cache against a full re-run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/batch_rows.h"
#include "tests/tiny_specs.h"

#include "passes/passes.h"
#include "runtime/cpu/cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static CpuKernelSource *ks;

static int setup(void **state)
{
    (void)state;
    RtError err = {{0}};
    ks = cpu_jit_source_new(&err);
    if (!ks) fprintf(stderr, "JIT: %s\n", err.msg);
    return ks ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    cpu_jit_source_free(ks);
    return 0;
}

static void load(const char *name, ModelSpec *s) { assert_true(tiny_spec_load(name, s)); }

static IrModule *codegen_ir(const ModelSpec *s)
{
    IrModule *m = ir_lower_spec(s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true};
    Diag d = {stderr, s->name, 0};
    assert_true(passes_run(m, &po, &d));
    return m;
}

/* Spec `name` lowered for the CPU backend, and random weights for it of the given seed. */
static IrModule *open_spec(const char *name, uint64_t seed, ModelSpec *s, WeightSet **w)
{
    RtError err = {{0}};
    load(name, s);
    IrModule *m = codegen_ir(s);
    assert_true(weights_random(s, seed, w, &err));
    return m;
}

/* max |a - b| / max |b| over the last `rows` rows of two [*, V] logit arrays */
static double rel_err(const float *a, const double *b, int64_t rows, int64_t V)
{
    double num = 0, den = 0;
    for (int64_t j = 0; j < rows * V; j++) {
        num = fmax(num, fabs((double)a[j] - b[j]));
        den = fmax(den, fabs(b[j]));
    }
    return num / den;
}

static void ids_for(int32_t *ids, int32_t *pos, int64_t T, int64_t vocab)
{
    for (int64_t t = 0; t < T; t++) ids[t] = (int32_t)((t * 71 + 13) % vocab), pos[t] = (int32_t)t;
}

/* The model's logits for ids_for's T tokens (T ≤ 64) against the interpreter's on the same weights:
 * max rel err over every row. */
static double against_interpreter(CpuModel *cm, const IrModule *m, const WeightSet *w, int64_t T, int64_t vocab)
{
    int32_t ids[64], pos[64];
    RtError err = {{0}};
    MOE_ASSERT(T <= 64);
    ids_for(ids, pos, T, vocab);
    EvalResult ref;
    assert_true(ir_eval(m, w, ids, pos, T, EVAL_F64, &ref, &err));
    assert_true(cpu_model_run(cm, ids, pos, T, &err));
    int64_t V;
    const float *logits = cpu_model_output(cm, "logits", &V, NULL);
    double e = rel_err(logits, eval_output(&ref, "logits")->data, T, V);
    ir_eval_result_free(&ref);
    return e;
}

/* Every tiny spec at T = 1, 13, 25, 37, with every row of logits, then with the last one only, then
 * the last 5 (cpu_model_set_last_rows: the final norm and lm_head on those rows alone; the row before
 * them is then not computed). */
static void test_cpu_equals_interpreter(void **state)
{
    (void)state;
    for (size_t k = 0; k < MOE_ARRAY_LEN(tiny_specs); k++) {
        ModelSpec s;
        WeightSet *w;
        IrModule *m = open_spec(tiny_specs[k], 11, &s, &w);
        RtError err = {{0}};
        int32_t ids[40], pos[40];
        double worst[3] = {0, 0, 0};
        static const int64_t lasts[3] = {0, 1, 5};
        for (int l = 0; l < 3; l++) {
            int64_t last = lasts[l];
            for (int64_t T = 1; T <= 37; T += 12) {
                ids_for(ids, pos, T, s.vocab);
                EvalResult ref;
                assert_true(ir_eval(m, w, ids, pos, T, EVAL_F64, &ref, &err));
                CpuModel *cm = cpu_model_new(m, w, s.max_positions, ks, 2, &err);
                if (!cm) fprintf(stderr, "%s\n", err.msg);
                assert_non_null(cm);
                cpu_model_set_last_rows(cm, last);
                assert_true(cpu_model_last_rows(cm) == last); /* every tiny spec ends in the final norm and lm_head */
                assert_true(cpu_model_run(cm, ids, pos, T, &err));
                int64_t V, rows = last && last < T ? last : T;
                const float *logits = cpu_model_output(cm, "logits", &V, NULL);
                const double *want = eval_output(&ref, "logits")->data;
                double e = rel_err(logits + (T - rows) * V, want + (T - rows) * V, rows, V);
                worst[l] = fmax(worst[l], e);
                assert_true(e <= 1e-5);
                if (rows < T) /* the row before them not computed */
                    assert_true(rel_err(logits + (T - rows - 1) * V, want + (T - rows - 1) * V, 1, V) > 1e-3);
                cpu_model_free(cm);
                ir_eval_result_free(&ref);
            }
        }
        printf("%-16s CPU backend vs interpreter: worst rel err %.3g (last row only: %.3g, last 5: %.3g) over T = 1, 13, "
               "25, 37\n", tiny_specs[k], worst[0], worst[1], worst[2]);
        weights_close(w);
        ir_module_free(m);
    }
}

/* Input scaling by s = top_k = 3, not a power of two: the CPU router computes the constants' alpha logits
 * as s (Wc x), the interpreter as Wc (s x), f32 roundings apart (tiny-moepp with top_k 3). */
static void test_input_scale_of_three(void **state)
{
    (void)state;
    ModelSpec s;
    load("tiny-moepp", &s);
    s.top_k = 3;
    IrModule *m = codegen_ir(&s);
    WeightSet *w;
    RtError err = {{0}};
    assert_true(weights_random(&s, 11, &w, &err));
    CpuModel *cm = cpu_model_new(m, w, s.max_positions, ks, 2, &err);
    assert_non_null(cm);
    double e = against_interpreter(cm, m, w, 37, s.vocab);
    printf("tiny-moepp, top_k 3: CPU backend vs interpreter: rel err %.3g\n", e);
    assert_true(e <= 1e-5);
    cpu_model_free(cm);
    weights_close(w);
    ir_module_free(m);
}

/* The kernels compiled all at once on every CPU (the JIT source's prefetch) are the ones compiled one
 * by one as the model asks: the same logits, bit for bit, on every tiny spec. */
static void test_parallel_jit_equals_serial(void **state)
{
    (void)state;
    for (size_t k = 0; k < MOE_ARRAY_LEN(tiny_specs); k++) {
        ModelSpec s;
        WeightSet *w;
        IrModule *m = open_spec(tiny_specs[k], 7, &s, &w);
        RtError err = {{0}};
        enum { T = 11 };
        int32_t ids[T], pos[T];
        ids_for(ids, pos, T, s.vocab);
        CpuKernelSource *both[2] = {cpu_jit_source_new(&err), cpu_jit_source_new(&err)};
        assert_true(both[0] && both[1] && both[0]->prefetch);
        both[1]->prefetch = NULL; /* one kernel at a time, as asked */
        assert_true(both[0]->prefetch(both[0]->ctx, m, &err)); /* (cpu_model_new's call then finds them made) */
        float *out[2];
        int64_t V = 0;
        for (int j = 0; j < 2; j++) {
            CpuModel *cm = cpu_model_new(m, w, s.max_positions, both[j], 2, &err);
            if (!cm) fprintf(stderr, "%s\n", err.msg);
            assert_non_null(cm);
            assert_true(cpu_model_run(cm, ids, pos, T, &err));
            const float *logits = cpu_model_output(cm, "logits", &V, NULL);
            out[j] = xmalloc((size_t)(T * V) * sizeof *out[j]);
            memcpy(out[j], logits, (size_t)(T * V) * sizeof *out[j]);
            cpu_model_free(cm);
        }
        assert_memory_equal(out[0], out[1], (size_t)(T * V) * sizeof *out[0]);
        free(out[0]);
        free(out[1]);
        cpu_jit_source_free(both[0]);
        cpu_jit_source_free(both[1]);
        weights_close(w);
        ir_module_free(m);
    }
}

/* An expert FFN's two grouped GEMMs run as one cg_moe_ffn (h written into the down-projection's tiles
 * by the up-projection's epilogue) give the logits the two calls give, bit for bit: every tiny spec in
 * f32, and tiny-moepp in bf16 on the bf16 dot product where the CPU takes it, at T = 1, 13, 37 and
 * 64; MOEPPC_FUSE_FFN=0 the two calls. */
static void test_ffn_fused_equals_unfused(void **state)
{
    (void)state;
    bool dot = cpu_bf16_dot();
    for (size_t k = 0; k <= MOE_ARRAY_LEN(tiny_specs); k++) {
        bool bf16 = k == MOE_ARRAY_LEN(tiny_specs);
        if (bf16 && !dot) break;
        ModelSpec s;
        load(bf16 ? "tiny-moepp" : tiny_specs[k], &s);
        if (bf16) s.dtype = DT_BF16;
        IrModule *m = ir_lower_spec(&s);
        PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true, .bf16_dot = bf16};
        Diag d = {stderr, s.name, 0};
        assert_true(passes_run(m, &po, &d));
        WeightSet *w;
        RtError err = {{0}};
        assert_true(weights_random(&s, 23, &w, &err));
        int32_t ids[64], pos[64];
        static const int64_t Ts[] = {1, 13, 37, 64};
        for (size_t t = 0; t < MOE_ARRAY_LEN(Ts); t++) {
            int64_t T = Ts[t], V = 0;
            ids_for(ids, pos, T, s.vocab);
            float *out[2];
            double fused[2];
            for (int j = 0; j < 2; j++) {
                if (j) setenv("MOEPPC_FUSE_FFN", "0", 1);
                CpuModel *cm = cpu_model_new(m, w, s.max_positions, ks, 2, &err);
                unsetenv("MOEPPC_FUSE_FFN");
                assert_non_null(cm);
                assert_true(cpu_model_run(cm, ids, pos, T, &err));
                const float *logits = cpu_model_output(cm, "logits", &V, NULL);
                out[j] = xmalloc((size_t)(T * V) * sizeof *out[j]);
                memcpy(out[j], logits, (size_t)(T * V) * sizeof *out[j]);
                fused[j] = cpu_model_profile(cm).ffn_fused;
                cpu_model_free(cm);
            }
            if (fused[0] == 0 || fused[1] != 0 || memcmp(out[0], out[1], (size_t)(T * V) * sizeof *out[0]) != 0)
                fprintf(stderr, "%s%s T = %lld: %g and %g FFNs fused\n", s.name, bf16 ? " (bf16)" : "", (long long)T,
                        fused[0], fused[1]);
            assert_true(fused[0] > 0 && fused[1] == 0);
            assert_memory_equal(out[0], out[1], (size_t)(T * V) * sizeof *out[0]);
            free(out[0]), free(out[1]);
        }
        weights_close(w);
        ir_module_free(m);
    }
}

/* Prefill T tokens, then decode one more on the KV cache: its logits equal the last row of a fresh
 * run over all T + 1 tokens. */
static void test_decode_on_kv_cache(void **state)
{
    (void)state;
    static const char *const specs[] = {"tiny-moepp", "tiny-gqa", "tiny-every2"};
    for (size_t k = 0; k < MOE_ARRAY_LEN(specs); k++) {
        ModelSpec s;
        WeightSet *w;
        IrModule *m = open_spec(specs[k], 3, &s, &w);
        RtError err = {{0}};
        enum { T = 9 };
        int32_t ids[T + 1], pos[T + 1];
        ids_for(ids, pos, T + 1, s.vocab);
        CpuModel *step = cpu_model_new(m, w, s.max_positions, ks, 2, &err), *full = cpu_model_new(m, w, s.max_positions, ks, 1, &err);
        assert_true(step && full);
        assert_true(cpu_model_run(step, ids, pos, T, &err));
        assert_true(cpu_model_run(step, ids + T, pos + T, 1, &err));
        assert_true(cpu_model_run(full, ids, pos, T + 1, &err));
        int64_t V;
        const float *a = cpu_model_output(step, "logits", &V, NULL), *b = cpu_model_output(full, "logits", NULL, NULL);
        double num = 0, den = 0;
        for (int64_t v = 0; v < V; v++) {
            num = fmax(num, fabs(a[v] - b[T * V + v]));
            den = fmax(den, fabs(b[T * V + v]));
        }
        printf("%-12s decode step vs full re-run: rel err %.3g\n", specs[k], num / den);
        assert_true(num / den <= 1e-5);
        cpu_model_free(step);
        cpu_model_free(full);
        weights_close(w);
        ir_module_free(m);
    }
}

/* Several sequences in one run (cpu_model_run_seqs): a prefill of three prompts whose rows are mixed
 * (one prompt's in two runs with another's between), then decode steps of one row a sequence in
 * turning orders; every row's logits equal the interpreter's on that sequence alone; then a fork
 * (cpu_model_copy_sequence: a part of a key tile) goes on as the sequence it copied. A sequence
 * outside the model's is refused, and so are caches the memory cannot hold. */
static void test_batched_sequences(void **state)
{
    (void)state;
    static const char *const specs[] = {"tiny-moepp", "tiny-gqa", "tiny-every2", "tiny-bf16"};
    for (size_t k = 0; k < MOE_ARRAY_LEN(specs); k++) {
        ModelSpec s;
        WeightSet *w;
        IrModule *m = open_spec(specs[k], 5, &s, &w);
        RtError err = {{0}};
        enum { NS = 3, STEPS = 4, MAXLEN = 12 + STEPS };
        int64_t len[NS] = {7, 3, 12};
        int32_t seqs[NS][MAXLEN];
        for (int q = 0; q < NS; q++)
            for (int t = 0; t < MAXLEN; t++) seqs[q][t] = (int32_t)((t * 37 + q * 101 + 5) % s.vocab);
        CpuModel *cm = cpu_model_new(m, w, s.max_positions, ks, 2, &err);
        assert_non_null(cm);
        assert_int_equal(cpu_model_sequences(cm), 1);
        setenv("MOEPPC_MEM_LIMIT_MB", "0.01", 1);
        assert_false(cpu_model_set_sequences(cm, NS, &err));
        unsetenv("MOEPPC_MEM_LIMIT_MB");
        assert_non_null(strstr(err.msg, "not enough memory"));
        assert_int_equal(cpu_model_sequences(cm), 1);
        assert_true(cpu_model_set_sequences(cm, NS + 1, &err) && cpu_model_set_sequences(cm, NS, &err));
        int32_t ids[32], pos[32], sq[32];
        /* the prefill: sequence 2's rows in two runs, sequence 0's between, then sequence 1's */
        static const int runs[4][3] = {{2, 0, 6}, {0, 0, 7}, {2, 6, 12}, {1, 0, 3}};
        double worst = 0;
        for (int step = 0; step <= STEPS; step++) {
            int64_t T = batch_rows(step, NS, runs, 4, &seqs[0][0], MAXLEN, len, ids, pos, sq);
            assert_true(cpu_model_run_seqs(cm, ids, pos, sq, T, &err));
            int64_t V;
            const float *logits = cpu_model_output(cm, "logits", &V, NULL);
            for (int64_t t = 0; t < T; t++) { /* row t: its sequence alone up to its position */
                int32_t p[MAXLEN];
                for (int j = 0; j <= pos[t]; j++) p[j] = j;
                EvalResult ref;
                assert_true(ir_eval(m, w, seqs[sq[t]], p, pos[t] + 1, EVAL_F64, &ref, &err));
                double e = rel_err(logits + t * V, eval_output(&ref, "logits")->data + pos[t] * V, 1, V);
                worst = fmax(worst, e);
                assert_true(e <= 1e-5);
                ir_eval_result_free(&ref);
            }
        }
        printf("%-12s 3 sequences batched (a mixed prefill, %d decode steps) vs each alone in the interpreter: "
               "worst rel err %.3g\n", specs[k], STEPS, worst);
        /* a fork: sequence 2's first 9 positions copied over sequence 0's, which then goes on with
         * sequence 2's tokens 9 .. 15 (its own later positions overwritten) as sequence 2 alone */
        assert_true(cpu_model_copy_sequence(cm, 2, 0, 9, &err));
        for (int t = 0; t < 7; t++) ids[t] = seqs[2][9 + t], pos[t] = 9 + t, sq[t] = 0;
        assert_true(cpu_model_run_seqs(cm, ids, pos, sq, 7, &err));
        EvalResult ref;
        int32_t p[MAXLEN];
        for (int j = 0; j < MAXLEN; j++) p[j] = j;
        assert_true(ir_eval(m, w, seqs[2], p, 16, EVAL_F64, &ref, &err));
        int64_t V;
        const float *logits = cpu_model_output(cm, "logits", &V, NULL);
        assert_true(rel_err(logits, eval_output(&ref, "logits")->data + 9 * V, 7, V) <= 1e-5);
        ir_eval_result_free(&ref);
        assert_false(cpu_model_copy_sequence(cm, 0, NS, 1, &err));
        assert_non_null(strstr(err.msg, "outside the 3 sequences"));
        sq[0] = NS;
        assert_false(cpu_model_run_seqs(cm, ids, pos, sq, 1, &err));
        assert_non_null(strstr(err.msg, "sequence 3 of token 0 is outside [0, 3)"));
        cpu_model_free(cm);
        weights_close(w);
        ir_module_free(m);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A prefill of 210 tokens over 3 sequences in one step (max_positions raised to 256): its K/V caches'
 * store runs in tasks of 64 tokens on the pool, one task's tokens from two sequences, then a decode
 * step reads them; every row against its sequence alone in the interpreter. f32: each row to 1e-5.
 * bf16: the median row to 1e-5, each to 4e-3: an activation within an f32 rounding of a bf16 tie
 * rounds the other way in one of the two (as in bf16_act_equals_interpreter below) and the caches
 * carry it to the sequence's later rows (sequence 2 here, from its first token, 2.8e-4 to 4.2e-4,
 * with the store on one thread too). */
static void test_long_batched_prefill(void **state)
{
    (void)state;
    static const char *const specs[] = {"tiny-moepp", "tiny-bf16"};
    for (size_t k = 0; k < MOE_ARRAY_LEN(specs); k++) {
        ModelSpec s;
        load(specs[k], &s);
        s.max_positions = 256;
        IrModule *m = codegen_ir(&s);
        WeightSet *w;
        RtError err = {{0}};
        assert_true(weights_random(&s, 7, &w, &err));
        enum { NS = 3, MAXLEN = 81, ROWS = 80 + 70 + 60 + NS };
        static const int64_t len[NS] = {80, 70, 60}, order[NS] = {1, 0, 2}; /* the prefill's runs */
        int32_t seqs[NS][MAXLEN], ids[256], pos[256], sq[256], p[MAXLEN];
        for (int q = 0; q < NS; q++)
            for (int t = 0; t < MAXLEN; t++) seqs[q][t] = (int32_t)((t * 53 + q * 97 + 11) % s.vocab);
        for (int j = 0; j < MAXLEN; j++) p[j] = j;
        CpuModel *cm = cpu_model_new(m, w, s.max_positions, ks, 2, &err);
        assert_non_null(cm);
        assert_true(cpu_model_set_sequences(cm, NS, &err));
        double errs[ROWS], each = s.dtype == DT_F32 ? 1e-5 : 4e-3;
        int n = 0;
        for (int step = 0; step < 2; step++) {
            int64_t T = 0;
            for (int r = 0; r < NS; r++) {
                int64_t q = order[r], from = step ? len[q] : 0, to = step ? len[q] + 1 : len[q];
                for (int64_t t = from; t < to; t++) ids[T] = seqs[q][t], pos[T] = (int32_t)t, sq[T++] = (int32_t)q;
            }
            assert_true(cpu_model_run_seqs(cm, ids, pos, sq, T, &err));
            int64_t V;
            const float *logits = cpu_model_output(cm, "logits", &V, NULL);
            EvalResult ref[NS];
            for (int q = 0; q < NS; q++) assert_true(ir_eval(m, w, seqs[q], p, len[q] + 1, EVAL_F64, &ref[q], &err));
            for (int64_t t = 0; t < T; t++) {
                errs[n] = rel_err(logits + t * V, eval_output(&ref[sq[t]], "logits")->data + pos[t] * V, 1, V);
                assert_true(errs[n++] <= each);
            }
            for (int q = 0; q < NS; q++) ir_eval_result_free(&ref[q]);
        }
        assert_int_equal(n, ROWS);
        qsort(errs, ROWS, sizeof *errs, cmp_double);
        printf("%-12s 210 tokens of 3 sequences in one prefill, then a decode step, vs each alone in the "
               "interpreter: median rel err %.3g, worst %.3g\n", specs[k], errs[ROWS / 2], errs[ROWS - 1]);
        assert_true(errs[ROWS / 2] <= 1e-5);
        cpu_model_free(cm);
        weights_close(w);
        ir_module_free(m);
    }
}

/* tiny-moepp lowered for the CPU backend, with random weights of the given seed. */
typedef struct {
    ModelSpec s;
    IrModule *m;
    WeightSet *w;
} Tiny;

static void tiny_open(Tiny *t, uint64_t seed)
{
    RtError err = {{0}};
    load("tiny-moepp", &t->s);
    t->m = codegen_ir(&t->s);
    assert_true(weights_random(&t->s, seed, &t->w, &err));
}

static void tiny_close(Tiny *t)
{
    weights_close(t->w);
    ir_module_free(t->m);
}

static void test_position_out_of_range(void **state)
{
    (void)state;
    Tiny t;
    tiny_open(&t, 3);
    RtError err = {{0}};
    CpuModel *cm = cpu_model_new(t.m, t.w, t.s.max_positions, ks, 1, &err);
    assert_non_null(cm);
    int32_t ids[1] = {5}, pos[1] = {(int32_t)t.s.max_positions};
    assert_false(cpu_model_run(cm, ids, pos, 1, &err));
    assert_non_null(strstr(err.msg, "outside"));
    cpu_model_free(cm);
    tiny_close(&t);
}

/* A model whose packed weights would not fit is refused with a message, not killed mid-way. */
static void test_refuses_when_memory_is_short(void **state)
{
    (void)state;
    Tiny t;
    tiny_open(&t, 3);
    RtError err = {{0}};
    setenv("MOEPPC_MEM_LIMIT_MB", "0.01", 1);
    CpuModel *cm = cpu_model_new(t.m, t.w, t.s.max_positions, ks, 1, &err);
    unsetenv("MOEPPC_MEM_LIMIT_MB");
    assert_null(cm);
    assert_non_null(strstr(err.msg, "not enough memory"));
    tiny_close(&t);
}

/* On random weights, what the backend packs is made row by row into its panels (weights_make_rows)
 * and never whole: once the model is made and has run, every weight packed and read nowhere else has
 * no data, cpu_model_bytes_freed's bytes of them, and every other weight the model reads has:
 * tiny-tied's embedding table, also its lm_head, made where the embedding reads it. The interpreter
 * (the weights made whole for it) then computes the same logits. */
static void test_packed_weights_leave_memory(void **state)
{
    (void)state;
    ModelSpec s;
    WeightSet *w;
    IrModule *m = open_spec("tiny-tied", 9, &s, &w);
    RtError err = {{0}};
    CpuModel *cm = cpu_model_new(m, w, s.max_positions, ks, 2, &err);
    assert_non_null(cm);
    int32_t ids[9], pos[9];
    ids_for(ids, pos, 9, s.vocab);
    assert_true(cpu_model_run(cm, ids, pos, 9, &err));
    double unmade = 0;
    for (int i = 0; i < weights_count(w); i++) {
        const Tensor *t = weights_at(w, i);
        bool used = false; /* (layer 0's gate map is not: no gating residual there) */
        for (int k = 0; k < m->n_values; k++)
            used |= m->values[k]->kind == IR_VAL_PARAM && strcmp(m->values[k]->tensor, t->name) == 0;
        bool packed = used && (strstr(t->name, "proj.weight") || strstr(t->name, "moe.gate.")); /* (W1, W2, Wg) */
        bool kept = strstr(t->name, "norm") || strstr(t->name, "embed_tokens") || strstr(t->name, ".constant") ||
                    strstr(t->name, ".wg.weight"); /* (the constants' Wc: copied, then packed) */
        if (!t->data && used) unmade += (double)t->nbytes;
        if (kept && used ? !t->data : (packed || !used) && t->data) fail_msg("%s: made %d", t->name, !!t->data);
    }
    assert_non_null(weights_find(w, "model.embed_tokens.weight")->data);
    assert_true(unmade > 0 && unmade == cpu_model_bytes_freed(m));
    assert_true(against_interpreter(cm, m, w, 9, s.vocab) <= 1e-5);
    cpu_model_free(cm);
    weights_close(w);
    ir_module_free(m);
}

/* The configuration the specialize pass records on an op is the one its kernel gets: a source that
 * notes every GEMM request, and a module whose GEMMs were re-tiled to 4 × 32, k unrolled by 2, K in
 * blocks of 16 and M in blocks of 4 rows (several per call), with attention's keys in blocks of 3,
 * which must still compute the interpreter's logits. */
typedef struct {
    int mr[256], nr[256], unroll[256], n, dot, amx;
} TileLog;

static TileLog tile_log;

static const CgKernel *logging_gemm(void *ctx, const CgKernelConfig *want, RtError *err)
{
    (void)ctx;
    if (tile_log.n < 256)
        tile_log.mr[tile_log.n] = want->mr, tile_log.nr[tile_log.n] = want->nr, tile_log.unroll[tile_log.n++] = want->k_unroll;
    tile_log.dot += want->a_bf16;
    tile_log.amx += want->amx;
    return ks->gemm(ks->ctx, want, err);
}

static void *logging_op(void *ctx, const CgOpDesc *d, RtError *err)
{
    (void)ctx;
    return ks->op(ks->ctx, d, err);
}

static void test_tiles_come_from_the_ir(void **state)
{
    (void)state;
    ModelSpec s;
    load("tiny-moepp", &s);
    IrModule *m = codegen_ir(&s);
    for (IrInstr *i = m->first; i; i = i->next) {
        if (i->op == IR_OP_ATTENTION) ir_attr_set_int(m, i, "kv_block", 3);
        if (i->op != IR_OP_LINEAR && i->op != IR_OP_MOE_ROUTE && i->op != IR_OP_MOE_GROUPED_UP &&
            i->op != IR_OP_MOE_GROUPED_DOWN)
            continue;
        ir_attr_set_int(m, i, "tile_m", 4);
        ir_attr_set_int(m, i, "tile_n", 32);
        ir_attr_set_int(m, i, "tile_unroll", 2);
        ir_attr_set_int(m, i, "tile_k", 16); /* K blocked: the accumulating passes of the drivers */
        ir_attr_set_int(m, i, "tile_mc", 4);
    }
    WeightSet *w;
    RtError err = {{0}};
    assert_true(weights_random(&s, 5, &w, &err));
    CpuKernelSource logging = {NULL, logging_gemm, logging_op, NULL};
    tile_log.n = 0;
    CpuModel *cm = cpu_model_new(m, w, s.max_positions, &logging, 2, &err);
    assert_non_null(cm);
    int retiled = 0;
    for (int k = 0; k < tile_log.n; k++) retiled += tile_log.mr[k] == 4 && tile_log.nr[k] == 32 && tile_log.unroll[k] == 2;
    assert_true(retiled >= 9 + 2 + 4); /* q, k, v, o of 2 layers and lm_head; 2 routers; 2 × up, down */
    assert_true(against_interpreter(cm, m, w, 13, s.vocab) <= 1e-5);
    cpu_model_free(cm);
    weights_close(w);
    ir_module_free(m);
}

/* The rule's tile is the host ISA's (cpu_host_pass_options): what the kernel source then compiles,
 * so the IR says what runs — AVX-512 8x48, AVX2 6x16, SSE 4x8 (MOEPPC_ISA caps it as it caps the
 * kernels); without the host's options the AVX-512 rule, the same everywhere. */
static void test_rule_tile_is_the_hosts(void **state)
{
    (void)state;
    /* down: the grouped DOWN's 64 columns, in one tile where the host's is wider, else in the host's
     * width; AVX-512's 48 would pad a second panel to 96 columns, so the rule takes 32 there (see
     * test_rule_width_pads_little) */
    static const struct { const char *isa; int mr, nr, down; } want[] = {
        {"avx512", 8, 48, 32}, {"avx2", 6, 16, 16}, {"sse", 4, 8, 8}};
    ModelSpec s;
    load("tiny-moepp", &s);
    int checked = 0;
    for (size_t c = 0; c < sizeof want / sizeof *want; c++) {
        if ((int)cg_host_isa() < (c == 0 ? CG_ISA_AVX512 : c == 1 ? CG_ISA_AVX2 : CG_ISA_SSE)) continue;
        setenv("MOEPPC_ISA", want[c].isa, 1);
        PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true};
        cpu_host_pass_options(&po);
        assert_int_equal(po.cpu_tile_m, want[c].mr);
        assert_int_equal(po.cpu_tile_n, want[c].nr);
        IrModule *m = ir_lower_spec(&s);
        Diag d = {stderr, s.name, 0};
        assert_true(passes_run(m, &po, &d));
        for (IrInstr *i = m->first; i; i = i->next)
            if (i->op == IR_OP_MOE_GROUPED_DOWN) { /* N = 64 */
                assert_int_equal(ir_attr_int(i, "tile_m"), want[c].mr);
                assert_int_equal(ir_attr_int(i, "tile_n"), want[c].down);
                checked++;
            }
        ir_module_free(m);
    }
    unsetenv("MOEPPC_ISA");
    assert_true(checked >= 2);
    IrModule *m = codegen_ir(&s);
    for (IrInstr *i = m->first; i; i = i->next)
        if (i->op == IR_OP_MOE_GROUPED_DOWN) assert_int_equal(ir_attr_int(i, "tile_n"), 32);
    ir_module_free(m);
}

/* The rule's panel width past one panel: narrower (down to half the host's) where the host's would
 * leave more than an eighth of N as padding. The 7B spec on the AVX-512 rule: the router's W1 (160
 * outputs: four panels of 48 hold 192) in five of 32; the 1536-wide linears and the experts in 48;
 * the lm_head's 32000 in 48 as well (16 columns of padding, under an eighth). */
static void test_rule_width_pads_little(void **state)
{
    (void)state;
    ModelSpec s;
    char path[512];
    snprintf(path, sizeof path, "%s/specs/moepp-7b.yaml", MOEPPC_SOURCE_DIR);
    Diag d = {stderr, path, 0};
    assert_true(spec_load_file(path, &s, &d));
    IrModule *m = codegen_ir(&s);
    int routes = 0, linears = 0;
    for (IrInstr *i = m->first; i; i = i->next) {
        if (i->op == IR_OP_MOE_ROUTE) assert_int_equal(ir_attr_int(i, "tile_n"), 32), routes++;
        if (i->op == IR_OP_LINEAR || i->op == IR_OP_MOE_GROUPED_UP || i->op == IR_OP_MOE_GROUPED_DOWN)
            assert_int_equal(ir_attr_int(i, "tile_n"), 48), linears++;
    }
    assert_true(routes == 24 && linears > 24 * 4);
    ir_module_free(m);
}

/* bf16 weights on the bf16 dot product or AMX tiles (with po): the specialize pass marks every linear
 * and grouped GEMM but the router act_bf16 (and amx), the executor asks for such kernels for exactly
 * those, and the logits match the interpreter on the same IR, which rounds those GEMMs' activations
 * to bf16 too. Most runs agree to 1e-5 (measured ~1e-7), and the median of all must; but an
 * activation within an f32 rounding of a bf16 tie rounds the other way in one of the two (one bf16
 * ulp, 2^-8, on that element: ~1e-3 on the logits), so each run only to 4e-3 (2e-3 until an Intel
 * AVX-512 host put tiny-router1 at T = 37 at 2.3e-3 on either kernel: two such flips; SEMANTICS §4
 * allows bf16 models 2e-2). Without the interpreter's rounding the runs differ by ~2e-3 each and the
 * median fails. Every tiny spec made bf16, at T = 1, 13, 37. */
static void bf16_act_equals_interpreter(const PassOptions *po_in, const char *what)
{
    double errs[3 * (MOE_ARRAY_LEN(tiny_specs) + 2)];
    double wide_errs[6];
    int n_errs = 0, amx_attention = 0, n_wide = 0;
    /* tiny-moepp and tiny-gqa again with 2 heads of 32 (1 kv head for tiny-gqa): attention's amx form, on
     * AMX tiles (amx 1) or on the dot product (2) */
    int form = po_in->amx ? CG_ATTENTION_AMX : CG_ATTENTION_DOT;
    size_t n_specs = MOE_ARRAY_LEN(tiny_specs) + 2;
    for (size_t k = 0; k < n_specs; k++) {
        ModelSpec s;
        bool wide = k >= MOE_ARRAY_LEN(tiny_specs);
        load(tiny_specs[k % MOE_ARRAY_LEN(tiny_specs)], &s);
        if (wide) s.n_heads = 2, s.n_kv_heads = s.n_kv_heads < 4 ? 1 : 2;
        s.dtype = DT_BF16;
        IrModule *m = ir_lower_spec(&s);
        PassOptions po = *po_in;
        Diag d = {stderr, s.name, 0};
        assert_true(passes_run(m, &po, &d));
        int marked = 0;
        for (IrInstr *i = m->first; i; i = i->next) {
            const IrAttr *a = ir_attr_get(i, "act_bf16"), *x = ir_attr_get(i, "amx");
            bool gemm = i->op == IR_OP_LINEAR || i->op == IR_OP_MOE_GROUPED_UP || i->op == IR_OP_MOE_GROUPED_DOWN;
            assert_true(gemm ? a && a->i == 1 : a == NULL);
            assert_true(gemm && po.amx ? x && x->i == 1 : x == NULL || i->op == IR_OP_ATTENTION);
            marked += gemm;
            const IrAttr *xa = i->op == IR_OP_ATTENTION ? ir_attr_get(i, "amx") : NULL;
            assert_true(i->op != IR_OP_ATTENTION || (wide ? xa && xa->i == form : xa == NULL));
            amx_attention += xa != NULL;
        }
        WeightSet *w;
        RtError err = {{0}};
        assert_true(weights_random(&s, 17, &w, &err));
        CpuKernelSource logging = {NULL, logging_gemm, logging_op, NULL};
        tile_log.n = tile_log.dot = tile_log.amx = 0;
        CpuModel *cm = cpu_model_new(m, w, s.max_positions, &logging, 2, &err);
        if (!cm) fprintf(stderr, "%s\n", err.msg);
        assert_non_null(cm);
        assert_true(tile_log.dot >= marked); /* (the routers' GEMMs are not among them) */
        assert_true(tile_log.dot < tile_log.n);
        assert_true(po.amx ? tile_log.amx == tile_log.dot : tile_log.amx == 0);
        for (int64_t T = 1; T <= 37; T += 12 + 12 * (T > 1)) {
            double e = against_interpreter(cm, m, w, T, s.vocab);
            errs[n_errs++] = e;
            if (wide) wide_errs[n_wide++] = e;
            if (e > 2e-3)
                fprintf(stderr, "%s%s T = %lld: rel err %.3g\n", tiny_specs[k % MOE_ARRAY_LEN(tiny_specs)],
                        wide ? " (2 heads)" : "", (long long)T, e);
            assert_true(e <= 4e-3);
        }
        cpu_model_free(cm);
        weights_close(w);
        ir_module_free(m);
    }
    qsort(errs, (size_t)n_errs, sizeof *errs, cmp_double);
    printf("bf16 GEMMs %s vs interpreter, every tiny spec at T = 1, 13, 37: median rel err %.3g, worst %.3g\n", what,
           errs[n_errs / 2], errs[n_errs - 1]);
    assert_true(amx_attention >= 4);
    /* attention's amx form: the interpreter rounds q and the weights alike, or most runs are off by
     * ~3e-3 (a weight within an f32 rounding of a bf16 tie: ~5e-5 on that run) */
    if (n_wide) {
        qsort(wide_errs, (size_t)n_wide, sizeof *wide_errs, cmp_double);
        printf("attention's amx form %s vs interpreter, 2 heads of 32: median rel err %.3g, worst %.3g\n", what,
               wide_errs[n_wide / 2], wide_errs[n_wide - 1]);
        assert_true(wide_errs[n_wide / 2] <= 1e-5);
    }
    assert_true(errs[n_errs / 2] <= 1e-5);
}

static void test_bf16_dot_equals_interpreter(void **state)
{
    (void)state;
    char why[128];
    setenv("MOEPPC_BF16_DOT", "0", 1);
    assert_false(cpu_bf16_dot()); /* the override, either way */
    assert_non_null(strstr(cpu_bf16_dot_why(why, sizeof why), "no ("));
    setenv("MOEPPC_BF16_DOT", "1", 1);
    bool have = cpu_bf16_dot();
    assert_non_null(strstr(cpu_bf16_dot_why(why, sizeof why), have ? "yes (MOEPPC_BF16_DOT=1)" : "no ("));
    unsetenv("MOEPPC_BF16_DOT");
    if (!have) skip();
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true, .bf16_dot = true};
    bf16_act_equals_interpreter(&po, "on the bf16 dot product");
}

/* The same on AMX tiles (AMX-BF16 hosts Linux grants them): 16 and 32 rows of an expert on the tiles,
 * fewer on f32 FMAs over the same k pairs with A rounded alike (T = 1: all of them). MOEPPC_AMX=0
 * turns it off. */
static void test_amx_equals_interpreter(void **state)
{
    (void)state;
    char why[128];
    setenv("MOEPPC_AMX", "0", 1);
    assert_false(cpu_amx());
    assert_non_null(strstr(cpu_amx_why(why, sizeof why), "no ("));
    unsetenv("MOEPPC_AMX");
    bool have = cpu_amx();
    assert_non_null(strstr(cpu_amx_why(why, sizeof why), have ? "yes" : "no ("));
    if (!have) { /* attention's AMX form refused with a message, not built into an illegal instruction */
        CgOpDesc d = {.kind = CG_OP_ATTENTION, .wdtype = DT_BF16, .heads = 2, .kv_heads = 1, .head_dim = 32,
                      .amx = CG_ATTENTION_AMX};
        RtError err = {{0}};
        assert_null(ks->op(ks->ctx, &d, &err));
        assert_non_null(strstr(err.msg, "needs AMX-BF16 tiles"));
        skip();
    }
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true, .amx = true};
    bf16_act_equals_interpreter(&po, "on AMX tiles");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_equals_interpreter),
        cmocka_unit_test(test_input_scale_of_three),
        cmocka_unit_test(test_decode_on_kv_cache),
        cmocka_unit_test(test_batched_sequences),
        cmocka_unit_test(test_long_batched_prefill),
        cmocka_unit_test(test_parallel_jit_equals_serial),
        cmocka_unit_test(test_ffn_fused_equals_unfused),
        cmocka_unit_test(test_position_out_of_range),
        cmocka_unit_test(test_refuses_when_memory_is_short),
        cmocka_unit_test(test_packed_weights_leave_memory),
        cmocka_unit_test(test_tiles_come_from_the_ir),
        cmocka_unit_test(test_rule_tile_is_the_hosts),
        cmocka_unit_test(test_rule_width_pads_little),
        cmocka_unit_test(test_bf16_dot_equals_interpreter),
        cmocka_unit_test(test_amx_equals_interpreter),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
