/* test_sample.c — choosing the next token (runtime/sample.c): greedy, the drawn frequencies against
 * softmax(logits / T) computed here, top-k and top-p against a brute force over the whole sorted
 * vocabulary, Hugging Face's order (top-k first), seeds, and the parameters it refuses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "runtime/runtime.h"

#include <math.h>
#include <stdlib.h>

#define V6 6
static const double L6[V6] = {2, 1, 0.5, 0, -1, -3};

/* Draw n tokens after the sequence seen[n_seen] and check each frequency against want[] (0 where a
 * token must never come) within five standard deviations of the binomial count. */
static void check_frequencies_after(const SampleParams *p, const double *logits, int64_t V, const int32_t *seen,
                                    int64_t n_seen, int64_t from, const double *want, int n)
{
    Sampler s;
    sampler_init(&s, p, 12345, V);
    int64_t *count = calloc((size_t)V, sizeof *count);
    for (int k = 0; k < n; k++) {
        int64_t t = sampler_next(&s, logits, seen, n_seen, from);
        assert_true(t >= 0 && t < V);
        count[t]++;
    }
    for (int64_t v = 0; v < V; v++) {
        double f = (double)count[v] / n, sd = sqrt(want[v] * (1 - want[v]) / n);
        if (want[v] == 0) assert_int_equal(count[v], 0);
        else if (fabs(f - want[v]) > 5 * sd) fail_msg("token %lld: drawn %.5f, want %.5f (5 sd = %.5f)", (long long)v, f, want[v], 5 * sd);
    }
    free(count);
    sampler_free(&s);
}

static void check_frequencies(const SampleParams *p, const double *logits, int64_t V, const double *want, int n)
{
    check_frequencies_after(p, logits, V, NULL, 0, 0, want, n);
}

/* softmax(logits[ids] / T) over the listed ids, 0 elsewhere. */
static void softmax_over(const double *logits, int64_t V, double T, const int64_t *ids, int n, double *out)
{
    double sum = 0;
    for (int64_t v = 0; v < V; v++) out[v] = 0;
    for (int k = 0; k < n; k++) sum += out[ids[k]] = exp(logits[ids[k]] / T);
    for (int k = 0; k < n; k++) out[ids[k]] /= sum;
}

static void test_greedy(void **state)
{
    (void)state;
    const double a[] = {1, 3, 3, NAN, -INFINITY}, b[] = {NAN, 2, 1}, c[] = {NAN, NAN}, d[] = {-INFINITY, -INFINITY};
    assert_int_equal(sample_argmax(a, 5), 1); /* ties: the lowest id, as greedy decoding always did */
    assert_int_equal(sample_argmax(b, 3), 1); /* NaN never chosen */
    assert_int_equal(sample_argmax(c, 2), 0);
    assert_int_equal(sample_argmax(d, 2), 0);
    Sampler s;
    sampler_init(&s, &(SampleParams){.temperature = 0, .top_p = 1}, 7, 5);
    for (int k = 0; k < 10; k++) assert_int_equal(sampler_next(&s, a, NULL, 0, 0), 1);
    sampler_free(&s);
}

static void test_temperature_frequencies(void **state)
{
    (void)state;
    const int64_t all[V6] = {0, 1, 2, 3, 4, 5};
    double want[V6];
    for (int t = 0; t < 3; t++) {
        double T = (double[]){0.7, 1.0, 2.5}[t];
        softmax_over(L6, V6, T, all, V6, want);
        check_frequencies(&(SampleParams){.temperature = T, .top_p = 1}, L6, V6, want, 200000);
    }
}

static void test_top_k(void **state)
{
    (void)state;
    const int64_t top3[] = {0, 1, 2};
    double want[V6];
    softmax_over(L6, V6, 1.3, top3, 3, want);
    check_frequencies(&(SampleParams){.temperature = 1.3, .top_k = 3, .top_p = 1}, L6, V6, want, 200000);
    /* ties at the cut: the lower ids stay */
    const double flat[5] = {1, 1, 1, 1, 1};
    Sampler s;
    sampler_init(&s, &(SampleParams){.temperature = 1, .top_k = 2, .top_p = 1}, 1, 5);
    int64_t ids[5];
    double prob[5];
    assert_int_equal(sampler_candidates(&s, flat, ids, prob), 2);
    assert_true((ids[0] == 0 && ids[1] == 1) || (ids[0] == 1 && ids[1] == 0));
    assert_float_equal(prob[0], 0.5, 1e-15);
    sampler_free(&s);
    /* k at or above the vocabulary: every token */
    sampler_init(&s, &(SampleParams){.temperature = 1, .top_k = 99, .top_p = 1}, 1, 5);
    assert_int_equal(sampler_candidates(&s, flat, ids, prob), 5);
    sampler_free(&s);
}

static void by_id(int64_t *ids, double *prob, int64_t n);

/* The candidates of (T, k, p) on four tokens of probability 0.5, 0.3, 0.15, 0.05 at T = 1. */
static int64_t candidates4(double T, int64_t k, double p, int64_t *ids, double *prob)
{
    const double l[4] = {log(0.5), log(0.3), log(0.15), log(0.05)};
    Sampler s;
    sampler_init(&s, &(SampleParams){.temperature = T, .top_k = k, .top_p = p}, 1, 4);
    int64_t n = sampler_candidates(&s, l, ids, prob);
    sampler_free(&s);
    by_id(ids, prob, n); /* in id order, which is the order of probability here */
    return n;
}

static void test_top_p(void **state)
{
    (void)state;
    int64_t ids[4];
    double prob[4];
    assert_int_equal(candidates4(1, 0, 0.75, ids, prob), 2); /* 0.5 < 0.75, then 0.8 reaches it */
    assert_int_equal(ids[0], 0), assert_int_equal(ids[1], 1);
    assert_float_equal(prob[0], 0.625, 1e-12), assert_float_equal(prob[1], 0.375, 1e-12);
    assert_int_equal(candidates4(1, 0, 0.85, ids, prob), 3);
    assert_int_equal(ids[2], 2);
    assert_float_equal(prob[2], 0.15 / 0.95, 1e-12);
    assert_int_equal(candidates4(1, 0, 0.3, ids, prob), 1); /* the most likely alone reaches it */
    assert_int_equal(ids[0], 0), assert_float_equal(prob[0], 1, 0);
    assert_int_equal(candidates4(1, 0, 1, ids, prob), 4);
    /* Hugging Face's order: top-k 2 leaves 0.625 / 0.375, and top-p 0.6 of that keeps token 0
     * alone; top-p first would have kept 0 and 1 (0.5 < 0.6) */
    assert_int_equal(candidates4(1, 2, 0.6, ids, prob), 1);
    assert_int_equal(ids[0], 0);
    /* temperature before top-p: at T = 3 the four flatten to 0.36, 0.30, 0.24, 0.10 (rounded), and
     * 0.75 needs three of them */
    assert_int_equal(candidates4(3, 0, 0.75, ids, prob), 3);
    /* and the draws follow the kept probabilities */
    const double l[4] = {log(0.5), log(0.3), log(0.15), log(0.05)}, want[4] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
    check_frequencies(&(SampleParams){.temperature = 1, .top_p = 0.85}, l, 4, want, 200000);
}

static int cmp_desc(const void *a, const void *b, const double *p)
{
    int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    return p[i] > p[j] ? -1 : p[i] < p[j] ? 1 : (i > j) - (i < j);
}
static const double *g_p;
static int cmp_desc_g(const void *a, const void *b) { return cmp_desc(a, b, g_p); }

/* Candidates in id order (sampler_candidates leaves them in none), probabilities alongside. */
static int cand_by_id(const void *a, const void *b)
{
    int64_t x = ((const SampleCand *)a)->id, y = ((const SampleCand *)b)->id;
    return (x > y) - (x < y);
}

static void by_id(int64_t *ids, double *prob, int64_t n)
{
    SampleCand *c = malloc((size_t)n * sizeof *c);
    for (int64_t i = 0; i < n; i++) c[i] = (SampleCand){prob[i], ids[i]};
    qsort(c, (size_t)n, sizeof *c, cand_by_id);
    for (int64_t i = 0; i < n; i++) ids[i] = c[i].id, prob[i] = c[i].p;
    free(c);
}

/* The nucleus without the cut at θ: the whole vocabulary (or its top k) sorted. */
static int64_t brute_nucleus(const double *logits, int64_t V, double T, int64_t k, double top_p, int64_t *ids, double *prob)
{
    double *p = malloc((size_t)V * sizeof *p), top = -INFINITY, mass = 0, cum = 0;
    for (int64_t v = 0; v < V; v++) top = fmax(top, logits[v]);
    for (int64_t v = 0; v < V; v++) p[v] = exp((logits[v] - top) / T), ids[v] = v;
    g_p = p;
    qsort(ids, (size_t)V, sizeof *ids, cmp_desc_g);
    int64_t n = k > 0 && k < V ? k : V, m = 0;
    for (int64_t c = 0; c < n; c++) mass += p[ids[c]];
    while (m < n && cum < top_p * mass) cum += p[ids[m++]];
    for (int64_t c = 0; c < m; c++) prob[c] = p[ids[c]] / cum;
    free(p);
    return m;
}

static void test_nucleus_exact_on_a_vocabulary(void **state)
{
    (void)state;
    const int64_t V = 32000;
    double *l = malloc((size_t)V * sizeof *l), *pa = malloc((size_t)V * sizeof *pa), *pb = malloc((size_t)V * sizeof *pb);
    int64_t *ia = malloc((size_t)V * sizeof *ia), *ib = malloc((size_t)V * sizeof *ib);
    moe_rng r;
    rng_seed(&r, 3);
    for (int64_t v = 0; v < V; v++) { /* roughly normal, with a few strong tokens as a trained model has */
        double x = 0;
        for (int k = 0; k < 4; k++) x += rng_uniform(&r) - 0.5;
        l[v] = 3 * x + (v % 997 == 0 ? 8 : 0);
    }
    const double ps[] = {0.1, 0.5, 0.9, 0.99, 0.999};
    const double Ts[] = {0.5, 1, 2};
    const int64_t ks[] = {0, 40};
    for (size_t a = 0; a < 5; a++)
        for (size_t b = 0; b < 3; b++)
            for (size_t c = 0; c < 2; c++) {
                Sampler s;
                sampler_init(&s, &(SampleParams){.temperature = Ts[b], .top_k = ks[c], .top_p = ps[a]}, 1, V);
                int64_t n = sampler_candidates(&s, l, ia, pa), m = brute_nucleus(l, V, Ts[b], ks[c], ps[a], ib, pb);
                if (n != m) fail_msg("T %g, k %lld, p %g: %lld candidates, the brute force %lld", Ts[b], (long long)ks[c], ps[a], (long long)n, (long long)m);
                by_id(ia, pa, n), by_id(ib, pb, m);
                for (int64_t i = 0; i < n; i++) {
                    assert_int_equal(ia[i], ib[i]);
                    assert_float_equal(pa[i], pb[i], 1e-12);
                }
                sampler_free(&s);
            }
    free(l), free(pa), free(pb), free(ia), free(ib);
}

static void test_seeds(void **state)
{
    (void)state;
    const SampleParams p = {.temperature = 1, .top_p = 1};
    Sampler a, b, c;
    sampler_init(&a, &p, 5, V6), sampler_init(&b, &p, 5, V6), sampler_init(&c, &p, 6, V6);
    int differ = 0;
    for (int k = 0; k < 1000; k++) {
        int64_t x = sampler_next(&a, L6, NULL, 0, 0);
        assert_int_equal(x, sampler_next(&b, L6, NULL, 0, 0));
        differ += x != sampler_next(&c, L6, NULL, 0, 0);
    }
    assert_true(differ > 100);
    sampler_free(&a), sampler_free(&b), sampler_free(&c);
}

/* A draw is u = rng_uniform (splitmix64 from the seed) against the candidates' cumulative
 * probabilities in id order, whatever order the selection found them in: computed here for one draw,
 * then logits whose near-equal values trade places by 1e-12 (other heap and quickselect orders, the
 * same set) draw the same tokens for every seed, as another backend's logits must. */
static void test_draw_in_id_order(void **state)
{
    (void)state;
    moe_rng r;
    rng_seed(&r, 42);
    double u = rng_uniform(&r), want[V6], cum = 0;
    const int64_t all[V6] = {0, 1, 2, 3, 4, 5};
    softmax_over(L6, V6, 0.8, all, V6, want);
    int64_t expect = 0;
    while (u >= (cum += want[expect])) expect++;
    Sampler s;
    sampler_init(&s, &(SampleParams){.temperature = 0.8, .top_p = 1}, 42, V6);
    assert_int_equal(sampler_next(&s, L6, NULL, 0, 0), expect);
    sampler_free(&s);
    /* pairs of a value, ordered one way in a and the other in b; no cut splits a pair, so the sets are
     * the same. 40 tokens: every candidate set is put in id order by the pass over the vocabulary;
     * 640: small sets (top-k 8, a nucleus of 4) by sorting them */
    enum { V = 640 };
    double a[V], b[V];
    for (int v = 0; v < V; v++) a[v] = -0.3 * (v / 2) + 1e-12 * (v % 2), b[v] = -0.3 * (v / 2) - 1e-12 * (v % 2);
    const SampleParams ps[] = {{.temperature = 1, .top_p = 1}, {.temperature = 0.7, .top_k = 14, .top_p = 1},
                               {.temperature = 1.5, .top_p = 0.7}, {.temperature = 1, .top_k = 30, .top_p = 0.75},
                               {.temperature = 1, .top_k = 8, .top_p = 1}, {.temperature = 0.5, .top_p = 0.6}};
    const int64_t vocab[] = {40, 40, 40, 40, 640, 640};
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++)
        for (uint64_t seed = 0; seed < 500; seed++) {
            Sampler x, y;
            sampler_init(&x, &ps[k], seed, vocab[k]), sampler_init(&y, &ps[k], seed, vocab[k]);
            int64_t tx = sampler_next(&x, a, NULL, 0, 0), ty = sampler_next(&y, b, NULL, 0, 0);
            if (tx != ty)
                fail_msg("params %zu, seed %llu: %lld and %lld", k, (unsigned long long)seed, (long long)tx,
                         (long long)ty);
            sampler_free(&x), sampler_free(&y);
        }
}

static void test_degenerate_logits(void **state)
{
    (void)state;
    const double inf[4] = {0, INFINITY, 1, NAN}, ninf[3] = {-INFINITY, -INFINITY, -INFINITY};
    const double nan1[4] = {NAN, 0, 0, NAN}, want[4] = {0, 0.5, 0.5, 0};
    Sampler s;
    sampler_init(&s, &(SampleParams){.temperature = 1, .top_p = 0.9}, 1, 4);
    for (int k = 0; k < 20; k++) assert_int_equal(sampler_next(&s, inf, NULL, 0, 0), 1);
    sampler_free(&s);
    sampler_init(&s, &(SampleParams){.temperature = 1, .top_p = 1}, 1, 3);
    assert_int_equal(sampler_next(&s, ninf, NULL, 0, 0), 0);
    sampler_free(&s);
    check_frequencies(&(SampleParams){.temperature = 1, .top_p = 1}, nan1, 4, want, 100000);
}

/* HF's repetition penalty: each token already in the sequence once, positive logits divided and
 * negative ones multiplied, before greedy or the draw. */
static int64_t greedy_after(const double *logits, int64_t V, const int32_t *seen, int64_t n_seen, double penalty)
{
    Sampler s;
    sampler_init(&s, &(SampleParams){.temperature = 0, .top_p = 1, .repetition_penalty = penalty}, 1, V);
    int64_t t = sampler_next(&s, logits, seen, n_seen, n_seen);
    sampler_free(&s);
    return t;
}

static void test_repetition_penalty(void **state)
{
    (void)state;
    const double a[4] = {2, 1, -1, 0.5}, b[2] = {2, 0.9}, c[2] = {-1, -1.5};
    const int32_t seen_a[4] = {0, 2, 2, 0}, seen_b[3] = {0, 0, 0}, seen_c[1] = {0};
    assert_int_equal(greedy_after(a, 4, seen_a, 4, 1), 0);
    assert_int_equal(greedy_after(a, 4, seen_a, 4, 4), 1); /* 2 / 4 = 0.5 < 1 */
    assert_int_equal(greedy_after(b, 2, seen_b, 3, 2), 0); /* once: 2 / 2 = 1 > 0.9 (thrice would be 0.25) */
    assert_int_equal(greedy_after(c, 2, seen_c, 1, 2), 1); /* negative: -1 · 2 = -2 < -1.5 */
    assert_int_equal(greedy_after(c, 2, seen_c, 1, 0.5), 0); /* below 1 favours what was seen */
    assert_int_equal(greedy_after(b, 2, NULL, 0, 2), 0);
    Sampler s; /* the marks of one draw do not carry into the next */
    sampler_init(&s, &(SampleParams){.temperature = 0, .top_p = 1, .repetition_penalty = 3}, 1, 2);
    assert_int_equal(sampler_next(&s, b, seen_b, 1, 1), 1);
    assert_int_equal(sampler_next(&s, b, seen_b, 0, 0), 0);
    sampler_free(&s);
    /* the draw follows softmax of the penalised logits */
    const int32_t seen[3] = {1, 0, 1};
    const double adj[V6] = {2 / 1.5, 1 / 1.5, 0.5, 0, -1, -3};
    const int64_t all[V6] = {0, 1, 2, 3, 4, 5};
    double want[V6];
    softmax_over(adj, V6, 1, all, V6, want);
    check_frequencies_after(&(SampleParams){.temperature = 1, .top_p = 1, .repetition_penalty = 1.5}, L6, V6, seen, 3,
                            3, want, 200000);
}

static void test_params_refused(void **state)
{
    (void)state;
    char why[160];
    const SampleParams bad[] = {
        {.temperature = -1, .top_p = 1},    {.temperature = NAN, .top_p = 1},  {.temperature = 101, .top_p = 1},
        {.temperature = 1, .top_p = 0},     {.temperature = 1, .top_p = 1.01}, {.temperature = 1, .top_p = NAN},
        {.temperature = 1, .top_k = -1, .top_p = 1}, {.temperature = 0, .top_k = 5, .top_p = 1},
        {.temperature = 0, .top_p = 0.9},   {.top_p = 1, .repetition_penalty = -1},
        {.top_p = 1, .repetition_penalty = NAN}, {.top_p = 1, .repetition_penalty = 101},
        {.top_p = 1, .presence_penalty = 2.01}, {.top_p = 1, .presence_penalty = -2.5},
        {.top_p = 1, .presence_penalty = NAN}, {.top_p = 1, .frequency_penalty = -2.01},
        {.top_p = 1, .frequency_penalty = INFINITY},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        why[0] = 0;
        assert_false(sample_params_check(&bad[k], why, sizeof why));
        assert_true(why[0] != 0);
    }
    assert_true(sample_params_check(&(SampleParams){.temperature = 0, .top_p = 1}, why, sizeof why));
    assert_true(sample_params_check(&(SampleParams){.temperature = 100, .top_k = 1, .top_p = 1e-9}, why, sizeof why));
    assert_true(sample_params_check(&(SampleParams){.top_p = 1, .presence_penalty = -2, .frequency_penalty = 2}, why,
                                    sizeof why));
}

/* OpenAI's logit biases (added first), then the repetition penalty, then OpenAI's presence and
 * frequency penalties (vLLM's order): from each generated token's logit (seen[from ..]; the prompt's
 * before it count for neither) presence once and frequency times its count. Against the logits
 * worked out here, over random sequences: greedy's pick the argmax of those, a draw's frequencies
 * their softmax. */
static void penalised_ref(const double *logits, int64_t V, const int32_t *seen, int64_t n_seen, int64_t from,
                          const SampleParams *p, double *out)
{
    for (int64_t v = 0; v < V; v++) {
        double x = logits[v];
        for (int64_t k = 0; k < p->n_bias; k++) x += p->bias[k].id == v ? p->bias[k].bias : 0;
        int64_t in = 0, count = 0;
        for (int64_t k = 0; k < n_seen; k++) in += seen[k] == v, count += k >= from && seen[k] == v;
        if (in && p->repetition_penalty != 0 && p->repetition_penalty != 1)
            x = x < 0 ? x * p->repetition_penalty : x / p->repetition_penalty;
        if (count) x -= p->frequency_penalty * (double)count + p->presence_penalty;
        out[v] = x;
    }
}

static void test_presence_frequency_penalties(void **state)
{
    (void)state;
    /* by hand: 0 generated three times, 1 once; 2 only in the prompt */
    const double a[4] = {3, 1.4, 1, 0.5};
    const int32_t seq[6] = {2, 2, 0, 1, 0, 0}; /* prompt 2 2, then 0 1 0 0 */
    assert_int_equal(greedy_after(a, 4, seq, 6, 1), 0);
    Sampler s;
    sampler_init(&s, &(SampleParams){.top_p = 1, .presence_penalty = 1.5}, 1, 4); /* 3 - 1.5 = 1.5 > 1.4 - 1.5 */
    assert_int_equal(sampler_next(&s, a, seq, 6, 2), 0);
    sampler_free(&s);
    sampler_init(&s, &(SampleParams){.top_p = 1, .frequency_penalty = 0.7}, 1, 4); /* 3 - 2.1 = 0.9 < 1.4 - 0.7 */
    assert_int_equal(sampler_next(&s, a, seq, 6, 2), 2);
    assert_int_equal(sampler_next(&s, a, seq, 6, 0), 0); /* the prompt generated too: 2 at 1 - 1.4 */
    assert_int_equal(sampler_next(&s, a, seq, 6, 6), 0); /* nothing generated yet */
    assert_int_equal(sampler_next(&s, a, seq, 2, 2), 0); /* (the counts of one draw do not carry) */
    sampler_free(&s);
    sampler_init(&s, &(SampleParams){.top_p = 1, .presence_penalty = -2}, 1, 4); /* negative: favours them */
    const double b[4] = {0, -0.5, 1.9, 0}; /* 0 at 2, 1 at 1.5, 2 (the prompt's) stays at 1.9 */
    assert_int_equal(sampler_next(&s, b, seq, 6, 2), 0);
    sampler_free(&s);
    moe_rng r;
    rng_seed(&r, 77);
    enum { V = 40, N = 60 };
    double l[V], ref[V];
    int32_t seen[N];
    for (int round = 0; round < 300; round++) {
        for (int v = 0; v < V; v++) l[v] = 4 * rng_uniform(&r) - 2;
        int64_t n = 1 + (int64_t)(rng_next(&r) % N), from = (int64_t)(rng_next(&r) % (uint64_t)(n + 1));
        for (int64_t k = 0; k < n; k++) seen[k] = (int32_t)(rng_next(&r) % (k % 3 ? 8 : V)); /* repeats */
        SampleBias bias[3];
        for (int k = 0; k < 3; k++) /* (distinct tokens) */
            bias[k] = (SampleBias){(int32_t)(k * 13 + rng_next(&r) % 13), 6 * rng_uniform(&r) - 3};
        SampleParams p = {.top_p = 1, .presence_penalty = 4 * rng_uniform(&r) - 2,
                          .frequency_penalty = 4 * rng_uniform(&r) - 2,
                          .repetition_penalty = round % 2 ? 1 + 2 * rng_uniform(&r) : 1,
                          .bias = bias, .n_bias = round % 3};
        penalised_ref(l, V, seen, n, from, &p, ref);
        sampler_init(&s, &p, 1, V);
        assert_int_equal(sampler_next(&s, l, seen, n, from), sample_argmax(ref, V));
        sampler_free(&s);
    }
    /* a draw follows softmax of the penalised logits */
    const int32_t seen6[5] = {3, 0, 1, 0, 3}; /* prompt 3, then 0 1 0 3 */
    const SampleBias b6[2] = {{5, 4}, {0, -100}}; /* 5 boosted to 1, 0 never */
    SampleParams p = {.temperature = 0.8, .top_p = 1, .presence_penalty = 0.5, .frequency_penalty = -0.25,
                      .bias = b6, .n_bias = 2};
    const int64_t all[V6] = {0, 1, 2, 3, 4, 5};
    double adj[V6], want[V6];
    penalised_ref(L6, V6, seen6, 5, 1, &p, adj);
    softmax_over(adj, V6, 0.8, all, V6, want);
    assert_true(want[0] < 1e-40);
    check_frequencies_after(&p, L6, V6, seen6, 5, 1, want, 200000);
}

/* --logit-bias's text: pairs in order, each token of the vocabulary once, each bias within ±100; bad
 * text refused with a reason and nothing returned. */
static void test_bias_parse(void **state)
{
    (void)state;
    char why[256];
    int64_t n;
    SampleBias *b = sample_bias_parse("13:-100,42:2.5,0:0", 50, &n, why, sizeof why);
    assert_non_null(b);
    assert_int_equal(n, 3);
    assert_true(b[0].id == 13 && b[0].bias == -100 && b[1].id == 42 && b[1].bias == 2.5 && b[2].id == 0);
    assert_true(sample_params_check(&(SampleParams){.top_p = 1, .bias = b, .n_bias = n}, why, sizeof why));
    free(b);
    const char *bad[] = {"", "x", "5", "5:", ":1", "5:1,", "5:1,,6:2", " 5:1", "5: 1", "5:1x", "50:1", "-1:1",
                         "5:1,5:2", "5:100.5", "5:nan", "5:inf", "99999999999999999999:1"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        why[0] = 0;
        assert_null(sample_bias_parse(bad[k], 50, &n, why, sizeof why));
        assert_true(why[0] != 0 && n == 0);
    }
    SampleBias twice[2] = {{3, 1}, {3, 2}}, far[1] = {{3, -100.5}};
    assert_false(sample_params_check(&(SampleParams){.top_p = 1, .bias = twice, .n_bias = 2}, why, sizeof why));
    assert_false(sample_params_check(&(SampleParams){.top_p = 1, .bias = far, .n_bias = 1}, why, sizeof why));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_temperature_frequencies),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_nucleus_exact_on_a_vocabulary),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_draw_in_id_order),
        cmocka_unit_test(test_degenerate_logits),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_presence_frequency_penalties),
        cmocka_unit_test(test_bias_parse),
        cmocka_unit_test(test_params_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
