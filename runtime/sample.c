/* sample.c — choosing the next token from a row of logits (runtime.h, "choosing the next token"):
 * greedy, or drawn at a temperature from the top-k and top-p (nucleus) candidates, in Hugging Face's
 * order (temperature, then top-k, then top-p over what top-k kept, renormalised).
 *
 * No sort of the vocabulary: top-k keeps a heap of k; top-p looks only at the tokens whose
 * probability is at least θ = (1 - top_p)/n of the n candidates' mass (those below θ, fewer than n,
 * hold less than (1 - top_p) of it, so the ones above θ hold more than top_p and, coming first in
 * descending order, contain the whole nucleus: an exact cut), and finds the nucleus among them by a
 * quickselect on mass. The candidates then go out in ascending id order (Hugging Face's multinomial
 * over the vocabulary walks it so too: a few sorted, many by a pass over the vocabulary), and the draw
 * takes the first whose cumulative probability passes u = rng_uniform. A draw costs O(vocabulary)
 * (bench/bench_sample). */
#include "runtime/runtime.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Each bias within ±SAMPLE_MAX_BIAS of a token id >= 0, no token twice. */
static bool bias_ok(const SampleParams *p, char *why, size_t n)
{
    for (int64_t k = 0; k < p->n_bias; k++) {
        const SampleBias *b = &p->bias[k];
        if (b->id < 0 || !(fabs(b->bias) <= SAMPLE_MAX_BIAS)) {
            snprintf(why, n, "logit bias %g of token %d: expected a token id and a number in [-%g, %g]", b->bias,
                     (int)b->id, SAMPLE_MAX_BIAS, SAMPLE_MAX_BIAS);
            return false;
        }
        for (int64_t j = 0; j < k; j++)
            if (p->bias[j].id == b->id) {
                snprintf(why, n, "logit bias: token %d given twice", (int)b->id);
                return false;
            }
    }
    return true;
}

SampleBias *sample_bias_parse(const char *text, int64_t vocab, int64_t *n, char *why, size_t why_len)
{
    SampleBias *b = xmalloc(sizeof *b);
    *n = 0;
    for (const char *s = text;;) {
        char *end;
        errno = 0;
        long long id = strtoll(s, &end, 10);
        bool ok = end != s && *end == ':' && errno == 0 && !isspace((unsigned char)*s);
        double x = 0;
        if (ok) {
            s = end + 1;
            x = strtod(s, &end);
            ok = end != s && (*end == ',' || !*end) && !isspace((unsigned char)*s);
        }
        if (!ok) {
            snprintf(why, why_len, "'%s': expected ID:BIAS pairs separated by commas (\"13:-100,42:2.5\")", text);
            break;
        }
        if (id < 0 || id >= vocab) {
            snprintf(why, why_len, "token %lld: not in the vocabulary of %lld", id, (long long)vocab);
            break;
        }
        if (*n == SAMPLE_MAX_BIASES) {
            snprintf(why, why_len, "more than %d logit biases", SAMPLE_MAX_BIASES);
            break;
        }
        b = xrealloc(b, (size_t)(*n + 1) * sizeof *b);
        b[(*n)++] = (SampleBias){(int32_t)id, x};
        if (!*end) { /* the ranges and tokens given twice, once all are read */
            if (bias_ok(&(SampleParams){.bias = b, .n_bias = *n}, why, why_len)) return b;
            break;
        }
        s = end + 1;
    }
    free(b);
    *n = 0;
    return NULL;
}

bool sample_params_check(const SampleParams *p, char *why, size_t n)
{
    if (!(p->temperature >= 0 && p->temperature <= SAMPLE_MAX_TEMPERATURE)) /* NaN too */
        snprintf(why, n, "temperature %g: expected a number in [0, %g]", p->temperature, SAMPLE_MAX_TEMPERATURE);
    else if (p->top_k < 0)
        snprintf(why, n, "top-k %lld: expected 0 (every token) or more", (long long)p->top_k);
    else if (!(p->top_p > 0 && p->top_p <= 1))
        snprintf(why, n, "top-p %g: expected a number in (0, 1]", p->top_p);
    else if (!(p->repetition_penalty == 0 || (p->repetition_penalty > 0 && p->repetition_penalty <= SAMPLE_MAX_PENALTY)))
        snprintf(why, n, "repetition penalty %g: expected a number in (0, %g]", p->repetition_penalty, SAMPLE_MAX_PENALTY);
    else if (!(fabs(p->presence_penalty) <= SAMPLE_MAX_OPENAI_PENALTY))
        snprintf(why, n, "presence penalty %g: expected a number in [-%g, %g]", p->presence_penalty,
                 SAMPLE_MAX_OPENAI_PENALTY, SAMPLE_MAX_OPENAI_PENALTY);
    else if (!(fabs(p->frequency_penalty) <= SAMPLE_MAX_OPENAI_PENALTY))
        snprintf(why, n, "frequency penalty %g: expected a number in [-%g, %g]", p->frequency_penalty,
                 SAMPLE_MAX_OPENAI_PENALTY, SAMPLE_MAX_OPENAI_PENALTY);
    else if (p->n_bias < 0 || p->n_bias > SAMPLE_MAX_BIASES || (p->n_bias && !p->bias))
        snprintf(why, n, "%lld logit biases: at most %d", (long long)p->n_bias, SAMPLE_MAX_BIASES);
    else if (!bias_ok(p, why, n)) return false;
    else if (p->temperature == 0 && (p->top_k > 0 || p->top_p < 1))
        snprintf(why, n, "top-k and top-p restrict a draw, and temperature 0 draws nothing (it is greedy): give a "
                         "temperature above 0");
    else
        return true;
    return false;
}

void sampler_init(Sampler *s, const SampleParams *p, uint64_t seed, int64_t vocab)
{
    MOE_ASSERT(vocab > 0);
    *s = (Sampler){.p = *p, .vocab = vocab};
    if (s->p.repetition_penalty == 0) s->p.repetition_penalty = 1;
    rng_seed(&s->rng, seed);
    bool counts = s->p.presence_penalty != 0 || s->p.frequency_penalty != 0;
    for (int64_t k = 0; k < s->p.n_bias; k++) MOE_ASSERT(s->p.bias[k].id < vocab);
    if (s->p.repetition_penalty != 1 || counts || s->p.n_bias) s->row = xmalloc((size_t)vocab * sizeof *s->row);
    if (s->p.repetition_penalty != 1) s->mark = xcalloc((size_t)vocab, 1);
    if (counts) s->count = xcalloc((size_t)vocab, sizeof *s->count);
    if (p->temperature > 0) {
        s->ids = xmalloc((size_t)vocab * sizeof *s->ids);
        s->prob = xmalloc((size_t)vocab * sizeof *s->prob);
        s->cand = xmalloc((size_t)vocab * sizeof *s->cand);
        s->by_id = xcalloc((size_t)vocab, sizeof *s->by_id);
    }
}

void sampler_free(Sampler *s)
{
    free(s->ids);
    free(s->prob);
    free(s->cand);
    free(s->by_id);
    free(s->row);
    free(s->mark);
    free(s->count);
    *s = (Sampler){0};
}

/* NaN is never chosen: it compares below everything. */
static double key_of(double x) { return isnan(x) ? -INFINITY : x; }

/* a before b: the larger logit, then the lower id (so ties resolve as greedy's). */
static bool ahead(const double *logits, int64_t a, int64_t b)
{
    double x = key_of(logits[a]), y = key_of(logits[b]);
    return x > y || (x == y && a < b);
}

int64_t sample_argmax(const double *logits, int64_t vocab)
{
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; v++)
        if (ahead(logits, v, best)) best = v;
    return best;
}

/* Heap of the k best so far, the worst of them at the root. */
static void sift_down(int64_t *h, int64_t n, int64_t i, const double *logits)
{
    for (;;) {
        int64_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < n && ahead(logits, h[w], h[l])) w = l;
        if (r < n && ahead(logits, h[w], h[r])) w = r;
        if (w == i) return;
        int64_t t = h[i];
        h[i] = h[w], h[w] = t, i = w;
    }
}

/* The top-k candidates' ids into ids (in no order); their count. */
static int64_t top_k_ids(const double *logits, int64_t vocab, int64_t k, int64_t *ids)
{
    if (k == 0 || k >= vocab) {
        for (int64_t v = 0; v < vocab; v++) ids[v] = v;
        return vocab;
    }
    for (int64_t v = 0; v < k; v++) ids[v] = v;
    for (int64_t i = k / 2 - 1; i >= 0; i--) sift_down(ids, k, i, logits);
    for (int64_t v = k; v < vocab; v++)
        if (ahead(logits, v, ids[0])) ids[0] = v, sift_down(ids, k, 0, logits);
    return k;
}

/* a before b: the larger probability, then the lower id (a total order: ids differ). */
static bool cand_ahead(const SampleCand *a, const SampleCand *b) { return a->p > b->p || (a->p == b->p && a->id < b->id); }

static int cand_cmp(const void *a, const void *b) { return cand_ahead(a, b) ? -1 : cand_ahead(b, a); }

static int cand_id_cmp(const void *a, const void *b)
{
    int64_t x = ((const SampleCand *)a)->id, y = ((const SampleCand *)b)->id;
    return (x > y) - (x < y);
}

static void cand_swap(SampleCand *a, SampleCand *b)
{
    SampleCand t = *a;
    *a = *b, *b = t;
}

/* Move the nucleus of cd[0..n) to its front: the fewest candidates, taken in cand_ahead's order,
 * whose mass reaches target (each one is in while the mass ahead of it is below target). Returns
 * their count; *kept gets their mass. A quickselect on mass, expected O(n): a flat distribution's
 * nucleus is most of the vocabulary, and sorting it cost milliseconds a token. The nucleus is left
 * in no particular order (sampler_candidates puts it in id order). */
static int64_t nucleus(SampleCand *cd, int64_t n, double target, double *kept)
{
    int64_t lo = 0, hi = n; /* cd[0..lo) are in, cd[hi..n) out, [lo, hi) undecided */
    double in = 0;          /* mass of cd[0..lo) */
    uint64_t pick = 0x9e3779b97f4a7c15ull;
    while (hi - lo > 32) {
        pick = pick * 6364136223846793005ull + 1442695040888963407ull; /* a pivot no input can defeat */
        cand_swap(&cd[lo + (int64_t)((pick >> 33) % (uint64_t)(hi - lo))], &cd[hi - 1]);
        SampleCand pv = cd[hi - 1];
        int64_t a = lo;
        double before = 0; /* the mass ahead of the pivot */
        for (int64_t c = lo; c < hi - 1; c++)
            if (cand_ahead(&cd[c], &pv)) before += cd[c].p, cand_swap(&cd[c], &cd[a++]);
        cand_swap(&cd[a], &cd[hi - 1]); /* cd[lo..a) ahead of the pivot, cd[a] the pivot */
        if (in + before >= target) {
            hi = a;
        } else {
            in += before + pv.p, lo = a + 1;
            if (in >= target) return *kept = in, lo;
        }
    }
    qsort(cd + lo, (size_t)(hi - lo), sizeof *cd, cand_cmp);
    while (lo < hi && in < target) in += cd[lo++].p;
    *kept = in;
    return lo;
}

int64_t sampler_candidates(Sampler *s, const double *logits, int64_t *ids, double *prob)
{
    MOE_ASSERT(s->p.temperature > 0);
    int64_t n = top_k_ids(logits, s->vocab, s->p.top_k, ids), m = 0;
    double top = -INFINITY, mass = 0, inv_t = 1 / s->p.temperature;
    for (int64_t c = 0; c < n; c++) { /* (fmax is a library call) */
        double x = key_of(logits[ids[c]]);
        top = x > top ? x : top;
    }
    if (!isfinite(top)) { /* every logit -inf or NaN, or one +inf: nothing to weigh, the best one */
        ids[0] = sample_argmax(logits, s->vocab), prob[0] = 1;
        return 1;
    }
    SampleCand *cd = s->cand;
    for (int64_t c = 0; c < n; c++) {
        double p = exp((key_of(logits[ids[c]]) - top) * inv_t);
        if (p > 0) cd[m++] = (SampleCand){p, ids[c]}, mass += p;
    }
    n = m;
    if (s->p.top_p < 1) {
        double theta = (1 - s->p.top_p) / (double)n * mass;
        m = 0;
        for (int64_t c = 0; c < n; c++)
            if (cd[c].p >= theta) cd[m++] = cd[c];
        n = nucleus(cd, m, s->p.top_p * mass, &mass);
    }
    /* In ascending id order (the set's, not the order the selection left them in): a draw then
     * depends on the candidates and their probabilities alone, so logits that differ by less than its
     * margins (another backend's) draw the same token, and it can be reproduced without this code. */
    double inv = 1 / mass;
    if (n * 64 < s->vocab) { /* few (top-k, a peaked nucleus): sorted by id */
        qsort(cd, (size_t)n, sizeof *cd, cand_id_cmp);
        for (int64_t c = 0; c < n; c++) ids[c] = cd[c].id, prob[c] = cd[c].p * inv;
        return n;
    }
    /* many: one pass over the vocabulary without branches; slot m, written for every token, is kept
     * only for a candidate (m < vocab throughout) */
    double *by_id = s->by_id;
    for (int64_t c = 0; c < n; c++) by_id[cd[c].id] = cd[c].p;
    m = 0;
    for (int64_t v = 0; v < s->vocab; v++) {
        double p = by_id[v];
        ids[m] = v, prob[m] = p * inv, by_id[v] = 0;
        m += p > 0;
    }
    return n;
}

/* The logits with the biases added, then each seen token's penalised once (HF's
 * RepetitionPenaltyLogitsProcessor), then each generated one's (seen[from ..]) less frequency_penalty
 * times its count and presence_penalty (vLLM's order, OpenAI's definitions), in s->row. */
static const double *penalised(Sampler *s, const double *logits, const int32_t *seen, int64_t n_seen, int64_t from)
{
    bool rep = s->p.repetition_penalty != 1 && n_seen > 0, counts = s->count && from < n_seen;
    if (!rep && !counts && !s->p.n_bias) return logits;
    memcpy(s->row, logits, (size_t)s->vocab * sizeof *s->row);
    for (int64_t k = 0; k < s->p.n_bias; k++) s->row[s->p.bias[k].id] += s->p.bias[k].bias;
    for (int64_t k = 0; rep && k < n_seen; k++) {
        int32_t t = seen[k];
        MOE_ASSERT(t >= 0 && t < s->vocab);
        if (s->mark[t]) continue;
        s->mark[t] = 1;
        double *x = &s->row[t];
        *x = *x < 0 ? *x * s->p.repetition_penalty : *x / s->p.repetition_penalty;
    }
    for (int64_t k = 0; rep && k < n_seen; k++) s->mark[seen[k]] = 0;
    for (int64_t k = from; counts && k < n_seen; k++) {
        MOE_ASSERT(seen[k] >= 0 && seen[k] < s->vocab);
        s->count[seen[k]]++;
    }
    for (int64_t k = from; counts && k < n_seen; k++) {
        int32_t t = seen[k];
        if (!s->count[t]) continue; /* (done: a token counted once) */
        s->row[t] -= s->p.frequency_penalty * s->count[t] + s->p.presence_penalty;
        s->count[t] = 0;
    }
    return s->row;
}

int64_t sampler_next(Sampler *s, const double *logits, const int32_t *seen, int64_t n_seen, int64_t from)
{
    MOE_ASSERT(from >= 0);
    logits = penalised(s, logits, seen, n_seen, from < n_seen ? from : n_seen);
    if (s->p.temperature == 0) return sample_argmax(logits, s->vocab);
    int64_t n = sampler_candidates(s, logits, s->ids, s->prob);
    double u = rng_uniform(&s->rng), cum = 0;
    for (int64_t c = 0; c < n; c++)
        if (u < (cum += s->prob[c])) return s->ids[c];
    return s->ids[n - 1]; /* u just below 1 and the sum rounded below it */
}
