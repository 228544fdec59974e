/* baseline_openblas.c — the MoE++ layer (router + experts + combine) run the way the published PyTorch
 * code runs it: a single-threaded loop over experts, each FFN expert's tokens gathered into a contiguous
 * buffer and multiplied with OpenBLAS cblas_sgemm (OpenBLAS threads inside the GEMM), then scattered back.
 * The fair f32 baseline for `moeppc bench --layer`; see bench/README.md. Self-contained: OpenBLAS + libm. */
#include <cblas.h>

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#undef I /* cblas.h pulls in <complex.h>; I is the FFN width here, not the imaginary unit */

#define USAGE                                                                                          \
    "usage: bench_baseline_openblas [--hidden D] [--inter I] [--ffn Nf] [--const Nc] [--copy Ncp]\n"   \
    "         [--zero Nz] [--topk k] [--router-layers 1|2] [--tokens 1,64,512]\n"                      \
    "         [--zc-share P | --random-router] [--threads N] [--reps N] [--seed S] [--json]\n"          \
    "         [--check] [--allow-unfair]\n"

enum { MAX_TOKEN_COUNTS = 16, MAX_TOPK = 16 };

typedef struct Config {
    int D, I, n_ffn, n_const, n_copy, n_zero, E, topk, router_layers;
    int tokens[MAX_TOKEN_COUNTS], n_tokens;
    double zc_share; /* < 0: the real router decides (--random-router) */
    int threads, reps;
    uint64_t seed;
    bool json, check, allow_unfair;
} Config;

/* All f32, row-major, PyTorch nn.Linear layout (weight [out, in]). */
typedef struct Weights {
    float *w1;   /* [8E, D] router layer 1 (2-layer router), or [E, D] (1-layer router) */
    float *w2;   /* [E, 8E] router layer 2; NULL for the 1-layer router */
    float **wu;  /* n_ffn x [2I, D]: rows 0..I-1 give a (silu side), rows I..2I-1 give b */
    float **wd;  /* n_ffn x [D, I] */
    float **wc;  /* n_const x [2, D] */
    float **vc;  /* n_const x [D] */
} Weights;

/* Per-T scratch, allocated once outside the timed region. */
typedef struct Work {
    int T;
    float *x, *u, *y;      /* [T, D] input, scaled input s*x, layer output */
    float *hid, *logits;   /* [T, 8E] router hidden, [T, E] router logits */
    int *ids;              /* [T, k] expert picks */
    float *w;              /* [T, k] combine weights */
    int *rows;             /* [T] tokens routed to the current expert */
    float *rw;             /* [T] their weights */
    float *xe, *up, *h, *ye; /* [T, D], [T, 2I], [T, I], [T, D]: one expert's gathered batch */
} Work;

/* ---- random numbers: splitmix64, identical to moeppc's support/support.c rng ---- */

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_uniform(uint64_t *s) { return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0); }

static void *xalloc(size_t n) {
    void *p = aligned_alloc(64, (n + 63) / 64 * 64);
    if (!p) {
        fprintf(stderr, "bench_baseline_openblas: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

/* n floats uniform in [-scale, scale). */
static float *rand_floats(size_t n, float scale, uint64_t *s) {
    float *p = xalloc(n * sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = ((float)(rng_next(s) >> 40) * (2.0f / 16777216.0f) - 1.0f) * scale;
    return p;
}

static Weights weights_new(const Config *c) {
    uint64_t s = c->seed ^ 0x5eed5eedull;
    size_t D = (size_t)c->D, I = (size_t)c->I, E = (size_t)c->E;
    Weights w = {0};
    if (c->router_layers == 2) {
        w.w1 = rand_floats(8 * E * D, 1.0f / sqrtf((float)D), &s);
        w.w2 = rand_floats(E * 8 * E, 1.0f / sqrtf((float)(8 * E)), &s);
    } else {
        w.w1 = rand_floats(E * D, 1.0f / sqrtf((float)D), &s);
    }
    w.wu = xalloc((size_t)(c->n_ffn + 1) * sizeof *w.wu);
    w.wd = xalloc((size_t)(c->n_ffn + 1) * sizeof *w.wd);
    for (int e = 0; e < c->n_ffn; e++) {
        w.wu[e] = rand_floats(2 * I * D, 1.0f / sqrtf((float)D), &s);
        w.wd[e] = rand_floats(D * I, 1.0f / sqrtf((float)I), &s);
    }
    w.wc = xalloc((size_t)(c->n_const + 1) * sizeof *w.wc);
    w.vc = xalloc((size_t)(c->n_const + 1) * sizeof *w.vc);
    for (int e = 0; e < c->n_const; e++) {
        w.wc[e] = rand_floats(2 * D, 1.0f / sqrtf((float)D), &s);
        w.vc[e] = rand_floats(D, 1.0f, &s);
    }
    return w;
}

static void weights_free(const Config *c, Weights *w) {
    for (int e = 0; e < c->n_ffn; e++) free(w->wu[e]), free(w->wd[e]);
    for (int e = 0; e < c->n_const; e++) free(w->wc[e]), free(w->vc[e]);
    free(w->w1), free(w->w2), free(w->wu), free(w->wd), free(w->wc), free(w->vc);
}

static Work work_new(const Config *c, int T) {
    size_t t = (size_t)T, D = (size_t)c->D, I = (size_t)c->I, E = (size_t)c->E, k = (size_t)c->topk;
    Work wk = {.T = T};
    uint64_t s = c->seed ^ (0x1234567ull + t);
    wk.x = rand_floats(t * D, 1.0f, &s);
    wk.u = xalloc(t * D * sizeof(float));
    wk.y = xalloc(t * D * sizeof(float));
    wk.hid = xalloc(t * 8 * E * sizeof(float));
    wk.logits = xalloc(t * E * sizeof(float));
    wk.ids = xalloc(t * k * sizeof(int));
    wk.w = xalloc(t * k * sizeof(float));
    wk.rows = xalloc(t * sizeof(int));
    wk.rw = xalloc(t * sizeof(float));
    wk.xe = xalloc(t * D * sizeof(float));
    wk.up = xalloc(t * 2 * I * sizeof(float));
    wk.h = xalloc(t * I * sizeof(float));
    wk.ye = xalloc(t * D * sizeof(float));
    return wk;
}

static void work_free(Work *wk) {
    void *p[] = {wk->x, wk->u, wk->y, wk->hid, wk->logits, wk->ids, wk->w, wk->rows, wk->rw, wk->xe, wk->up, wk->h, wk->ye};
    for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
}

/* ---- routing ---- */

/* softmax over E, top-k (ties: lower index), zero experts masked, renormalised (SEMANTICS §3). */
static void gate_softmax_topk(const Config *c, const float *z, int *ids, float *w) {
    int E = c->E, k = c->topk, first_zero = c->E - c->n_zero;
    float p[E], mx = z[0], sum = 0.0f, wsum = 0.0f;
    bool taken[E];
    for (int e = 1; e < E; e++) mx = z[e] > mx ? z[e] : mx;
    for (int e = 0; e < E; e++) sum += (p[e] = expf(z[e] - mx)), taken[e] = false;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!taken[e] && (best < 0 || p[e] > p[best])) best = e;
        taken[best] = true;
        ids[j] = best;
        w[j] = best >= first_zero ? 0.0f : p[best] / sum;
        wsum += w[j];
    }
    for (int j = 0; j < k; j++) w[j] = wsum > 0.0f ? w[j] / wsum : 0.0f; /* all-zero picks: output 0 */
}

/* The router: z = W2 tanh(W1 x) (or W x) through sgemm, then the gate per token. */
static void route_tokens(const Config *c, const Weights *W, Work *wk) {
    int T = wk->T, D = c->D, E = c->E;
    if (c->router_layers == 2) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, 8 * E, D, 1.0f, wk->x, D, W->w1, D, 0.0f, wk->hid, 8 * E);
        for (size_t i = 0; i < (size_t)T * 8 * E; i++) wk->hid[i] = tanhf(wk->hid[i]);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, E, 8 * E, 1.0f, wk->hid, 8 * E, W->w2, 8 * E, 0.0f, wk->logits, E);
    } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, E, D, 1.0f, wk->x, D, W->w1, D, 0.0f, wk->logits, E);
    }
    for (int t = 0; t < T; t++) gate_softmax_topk(c, wk->logits + (size_t)t * E, wk->ids + (size_t)t * c->topk, wk->w + (size_t)t * c->topk);
}

/* Uniform pick among the experts [lo, hi) this token has not picked yet; -1 when none is left. */
static int pick_unpicked(int lo, int hi, const bool *taken, uint64_t *s) {
    int left = 0;
    for (int e = lo; e < hi; e++) left += !taken[e];
    if (left == 0) return -1;
    int n = (int)(rng_uniform(s) * left);
    for (int e = lo; e < hi; e++)
        if (!taken[e] && n-- == 0) return e;
    return -1; /* unreachable */
}

/* Synthetic routing, the same as moeppc bench's (tools/bench.c synthetic_routing), seed restarted per T: each pick is a zero-computation expert with probability P. */
static void route_synthetic(const Config *c, int T, int *ids, float *w) {
    uint64_t s = c->seed;
    int k = c->topk, Nf = c->n_ffn, E = c->E;
    for (int t = 0; t < T; t++) {
        bool taken[E];
        memset(taken, 0, sizeof taken);
        for (int j = 0; j < k; j++) {
            bool zc = rng_uniform(&s) < c->zc_share;
            int e = zc ? pick_unpicked(Nf, E, taken, &s) : pick_unpicked(0, Nf, taken, &s);
            if (e < 0) e = zc ? pick_unpicked(0, Nf, taken, &s) : pick_unpicked(Nf, E, taken, &s);
            taken[e] = true;
            ids[(size_t)t * k + j] = e;
        }
        float *wt = w + (size_t)t * k;
        double sum = 0; /* in double, as moeppc bench does, so the weights agree to the bit */
        for (int j = 0; j < k; j++) sum += (wt[j] = (float)(0.1 + 0.9 * rng_uniform(&s)));
        for (int j = 0; j < k; j++) wt[j] = (float)(wt[j] / sum);
    }
}

/* ---- the expert loop, as the published PyTorch code runs it ---- */

/* torch.where(expert_mask[e]): the tokens routed to expert e, in token order, with their weights. */
static int tokens_of_expert(const Config *c, const Work *wk, int e) {
    int n = 0, k = c->topk;
    for (int t = 0; t < wk->T; t++)
        for (int j = 0; j < k; j++)
            if (wk->ids[(size_t)t * k + j] == e) wk->rows[n] = t, wk->rw[n++] = wk->w[(size_t)t * k + j];
    return n;
}

/* index_select: the n routed rows of u into the contiguous buffer xe [n, D]. */
static void gather_rows(const Config *c, Work *wk, int n) {
    size_t D = (size_t)c->D;
    for (int r = 0; r < n; r++) memcpy(wk->xe + r * D, wk->u + (size_t)wk->rows[r] * D, D * sizeof(float));
}

/* index_add_: y[rows[r]] += rw[r] * ye[r]. */
static void scatter_add(const Config *c, Work *wk, int n) {
    size_t D = (size_t)c->D;
    for (int r = 0; r < n; r++) {
        float *y = wk->y + (size_t)wk->rows[r] * D, wr = wk->rw[r];
        const float *src = wk->ye + r * D;
        for (size_t d = 0; d < D; d++) y[d] += wr * src[d];
    }
}

static void run_ffn_expert(const Config *c, const Weights *W, Work *wk, int e) {
    int n = tokens_of_expert(c, wk, e), D = c->D, I = c->I;
    if (n == 0) return;
    gather_rows(c, wk, n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, 2 * I, D, 1.0f, wk->xe, D, W->wu[e], D, 0.0f, wk->up, 2 * I);
    for (size_t r = 0; r < (size_t)n; r++) {
        const float *a = wk->up + r * 2 * I, *b = a + I;
        float *h = wk->h + r * I;
        for (int i = 0; i < I; i++) h[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, D, I, 1.0f, wk->h, I, W->wd[e], I, 0.0f, wk->ye, D);
    scatter_add(c, wk, n);
}

/* Constant expert: alpha = softmax(Wc u) through a [n, 2] sgemm (nn.Linear), out = a0 u + a1 v. */
static void run_const_expert(const Config *c, const Weights *W, Work *wk, int ci) {
    int n = tokens_of_expert(c, wk, c->n_ffn + ci), D = c->D;
    if (n == 0) return;
    gather_rows(c, wk, n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, 2, D, 1.0f, wk->xe, D, W->wc[ci], D, 0.0f, wk->up, 2);
    for (size_t r = 0; r < (size_t)n; r++) {
        float l0 = wk->up[2 * r], l1 = wk->up[2 * r + 1], m = l0 > l1 ? l0 : l1;
        float e0 = expf(l0 - m), e1 = expf(l1 - m), a0 = e0 / (e0 + e1), a1 = e1 / (e0 + e1);
        const float *u = wk->xe + r * D, *v = W->vc[ci];
        float *o = wk->ye + r * D;
        for (int d = 0; d < D; d++) o[d] = a0 * u[d] + a1 * v[d];
    }
    scatter_add(c, wk, n);
}

/* Copy expert: y[t] += w u[t] (index_add of the gathered rows). */
static void run_copy_expert(const Config *c, Work *wk, int e) {
    int n = tokens_of_expert(c, wk, e);
    gather_rows(c, wk, n);
    memcpy(wk->ye, wk->xe, (size_t)n * (size_t)c->D * sizeof(float));
    scatter_add(c, wk, n);
}

/* One MoE layer: route (unless synthetic routing is in place), scale, loop over experts. */
static void layer_run(const Config *c, const Weights *W, Work *wk) {
    if (c->zc_share < 0) route_tokens(c, W, wk);
    size_t n = (size_t)wk->T * (size_t)c->D;
    for (size_t i = 0; i < n; i++) wk->u[i] = (float)c->topk * wk->x[i]; /* input scaling s = k */
    memset(wk->y, 0, n * sizeof(float));
    for (int e = 0; e < c->n_ffn; e++) run_ffn_expert(c, W, wk, e);
    for (int e = 0; e < c->n_const; e++) run_const_expert(c, W, wk, e);
    for (int e = 0; e < c->n_copy; e++) run_copy_expert(c, wk, c->n_ffn + c->n_const + e);
    /* zero experts: nothing */
}

static int count_ffn_picks(const Config *c, const Work *wk) {
    int n = 0;
    for (size_t i = 0; i < (size_t)wk->T * (size_t)c->topk; i++) n += wk->ids[i] < c->n_ffn;
    return n;
}

/* ---- the naive reference for --check ---- */

/* Reference routing from double-precision logits; compares it with the program's (ids must agree). */
static bool check_routing(const Config *c, const Weights *W, const Work *wk) {
    int D = c->D, E = c->E, H = 8 * E;
    for (int t = 0; t < wk->T; t++) {
        const float *x = wk->x + (size_t)t * D;
        double hid[H], z[E];
        float zf[E], w[MAX_TOPK];
        int ids[MAX_TOPK];
        int n_out = c->router_layers == 2 ? H : E;
        for (int o = 0; o < n_out; o++) {
            double acc = 0;
            for (int d = 0; d < D; d++) acc += (double)W->w1[(size_t)o * D + d] * x[d];
            hid[o] = c->router_layers == 2 ? tanh(acc) : acc;
        }
        for (int e = 0; e < E; e++) {
            double acc = 0;
            if (c->router_layers == 2)
                for (int i = 0; i < H; i++) acc += (double)W->w2[(size_t)e * H + i] * hid[i];
            z[e] = c->router_layers == 2 ? acc : hid[e];
            zf[e] = (float)z[e];
        }
        gate_softmax_topk(c, zf, ids, w);
        for (int j = 0; j < c->topk; j++)
            if (ids[j] != wk->ids[(size_t)t * c->topk + j]) {
                fprintf(stderr, "check: token %d pick %d: reference expert %d, program expert %d\n", t, j, ids[j],
                        wk->ids[(size_t)t * c->topk + j]);
                return false;
            }
    }
    return true;
}

/* One expert on one token, naive loops in double: out [D] = Expert_e(u). */
static void ref_expert(const Config *c, const Weights *W, int e, const float *u, double *out) {
    int D = c->D, I = c->I;
    for (int d = 0; d < D; d++) out[d] = 0;
    if (e < c->n_ffn) {
        for (int i = 0; i < I; i++) {
            double a = 0, b = 0;
            for (int d = 0; d < D; d++) {
                a += (double)W->wu[e][(size_t)i * D + d] * u[d];
                b += (double)W->wu[e][(size_t)(I + i) * D + d] * u[d];
            }
            double h = a / (1.0 + exp(-a)) * b;
            for (int d = 0; d < D; d++) out[d] += (double)W->wd[e][(size_t)d * I + i] * h;
        }
    } else if (e < c->n_ffn + c->n_const) {
        int ci = e - c->n_ffn;
        double l0 = 0, l1 = 0;
        for (int d = 0; d < D; d++) l0 += (double)W->wc[ci][d] * u[d], l1 += (double)W->wc[ci][D + d] * u[d];
        double a0 = 1.0 / (1.0 + exp(l1 - l0)), a1 = 1.0 - a0;
        for (int d = 0; d < D; d++) out[d] = a0 * u[d] + a1 * W->vc[ci][d];
    } else if (e < c->n_ffn + c->n_const + c->n_copy) {
        for (int d = 0; d < D; d++) out[d] = u[d];
    }
}

/* y from the program against the naive reference under the same routing: max|y - ref| / max|ref|. */
static bool check_layer(const Config *c, const Weights *W, const Work *wk) {
    if (c->zc_share < 0 && !check_routing(c, W, wk)) return false;
    int D = c->D, k = c->topk;
    double *out = xalloc((size_t)D * sizeof *out), *ref = xalloc((size_t)D * sizeof *ref), max_err = 0, max_ref = 0;
    float *u = xalloc((size_t)D * sizeof *u);
    for (int t = 0; t < wk->T; t++) {
        for (int d = 0; d < D; d++) ref[d] = 0, u[d] = (float)k * wk->x[(size_t)t * D + d];
        for (int j = 0; j < k; j++) {
            ref_expert(c, W, wk->ids[(size_t)t * k + j], u, out);
            for (int d = 0; d < D; d++) ref[d] += (double)wk->w[(size_t)t * k + j] * out[d];
        }
        for (int d = 0; d < D; d++) {
            double err = fabs(ref[d] - wk->y[(size_t)t * D + d]);
            max_err = err > max_err ? err : max_err;
            max_ref = fabs(ref[d]) > max_ref ? fabs(ref[d]) : max_ref;
        }
    }
    double rel = max_ref > 0 ? max_err / max_ref : max_err;
    bool ok = rel <= 1e-5;
    if (c->json)
        printf("{\"check\": \"%s\", \"tokens\": %d, \"max_rel_err\": %.3g}\n", ok ? "ok" : "FAILED", wk->T, rel);
    else
        printf("check T=%d: max|y-ref|/max|ref| = %.3g (tolerance 1e-5): %s\n", wk->T, rel, ok ? "ok" : "FAILED");
    free(out), free(ref), free(u);
    return ok;
}

/* ---- timing and reporting ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const Config *c, int T, const double *s, int ffn_picks) {
    double med = s[c->reps / 2], gflops = 6.0 * c->D * c->I * ffn_picks / med / 1e9;
    if (c->json) {
        printf("{\"impl\": \"openblas-loop\", \"tokens\": %d, \"median_s\": %.6g, \"min_s\": %.6g, \"max_s\": %.6g, "
               "\"tokens_per_s\": %.6g, \"ffn_picks\": %d, \"gflops\": %.4g, \"corename\": \"%s\", "
               "\"routing\": \"%s\", \"zc_share\": %g, \"router_timed\": %s, \"threads\": %d}\n",
               T, med, s[0], s[c->reps - 1], T / med, ffn_picks, gflops, openblas_get_corename(),
               c->zc_share < 0 ? "random-router" : "zc-share", c->zc_share < 0 ? 0.0 : c->zc_share,
               c->zc_share < 0 ? "true" : "false", c->threads);
    } else {
        printf("openblas-loop T=%-5d median %9.3f ms (min %9.3f, max %9.3f)  %9.1f tok/s  ffn_picks %6d  %6.1f GFLOP/s\n",
               T, 1e3 * med, 1e3 * s[0], 1e3 * s[c->reps - 1], T / med, ffn_picks, gflops);
    }
    fflush(stdout);
}

/* 2 warm-ups, then reps timed layers; returns false when --check fails. */
static bool bench_tokens(const Config *c, const Weights *W, int T) {
    Work wk = work_new(c, T);
    if (c->zc_share >= 0) route_synthetic(c, T, wk.ids, wk.w); /* fixed routing, outside the timing */
    double *s = xalloc((size_t)c->reps * sizeof *s);
    for (int r = -2; r < c->reps; r++) {
        double t0 = now_s();
        layer_run(c, W, &wk);
        double dt = now_s() - t0;
        if (r >= 0) s[r] = dt;
    }
    qsort(s, (size_t)c->reps, sizeof *s, cmp_double);
    report(c, T, s, count_ffn_picks(c, &wk));
    bool ok = !c->check || check_layer(c, W, &wk);
    free(s);
    work_free(&wk);
    return ok;
}

/* ---- command line and the OpenBLAS core check ---- */

static int parse_int(const char *flag, const char *v, int lo, int hi) {
    char *end;
    long n = v ? strtol(v, &end, 10) : 0;
    if (!v || *end || n < lo || n > hi) {
        fprintf(stderr, "bench_baseline_openblas: %s expects an integer in [%d, %d], got '%s'\n", flag, lo, hi, v ? v : "");
        exit(2);
    }
    return (int)n;
}

static void parse_tokens(Config *c, const char *v) {
    char buf[256], *save = NULL;
    snprintf(buf, sizeof buf, "%s", v ? v : "");
    c->n_tokens = 0;
    for (char *p = strtok_r(buf, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
        if (c->n_tokens == MAX_TOKEN_COUNTS) break;
        c->tokens[c->n_tokens++] = parse_int("--tokens", p, 1, 1 << 20);
    }
    if (c->n_tokens == 0) parse_int("--tokens", "", 1, 1);
}

static bool parse_arg(Config *c, const char *a, const char *v, int *i) {
    struct { const char *flag; int *dst, lo, hi; } ints[] = {
        {"--hidden", &c->D, 1, 1 << 16}, {"--inter", &c->I, 1, 1 << 17}, {"--ffn", &c->n_ffn, 0, 1024},
        {"--const", &c->n_const, 0, 1024}, {"--copy", &c->n_copy, 0, 1024}, {"--zero", &c->n_zero, 0, 1024},
        {"--topk", &c->topk, 1, MAX_TOPK}, {"--router-layers", &c->router_layers, 1, 2},
        {"--threads", &c->threads, 1, 256}, {"--reps", &c->reps, 1, 1000}};
    for (size_t j = 0; j < sizeof ints / sizeof ints[0]; j++)
        if (!strcmp(a, ints[j].flag)) return *ints[j].dst = parse_int(a, v, ints[j].lo, ints[j].hi), ++*i, true;
    if (!strcmp(a, "--tokens")) return parse_tokens(c, v), ++*i, true;
    if (!strcmp(a, "--seed")) return c->seed = strtoull(v ? v : "0", NULL, 0), ++*i, true;
    if (!strcmp(a, "--zc-share")) {
        char *end;
        c->zc_share = v ? strtod(v, &end) : -1;
        if (!v || *end || !(c->zc_share >= 0 && c->zc_share <= 1)) return false;
        return ++*i, true;
    }
    if (!strcmp(a, "--random-router")) return c->zc_share = -1, true;
    if (!strcmp(a, "--json")) return c->json = true, true;
    if (!strcmp(a, "--check")) return c->check = true, true;
    if (!strcmp(a, "--allow-unfair")) return c->allow_unfair = true, true;
    return false;
}

static Config parse_args(int argc, char **argv) {
    Config c = {.D = 1536, .I = 4096, .n_ffn = 16, .n_const = 2, .n_copy = 1, .n_zero = 1, .topk = 2,
                .router_layers = 2, .tokens = {1, 64, 512}, .n_tokens = 3, .zc_share = -1, .threads = 2,
                .reps = 7, .seed = 1};
    for (int i = 1; i < argc; i++)
        if (!parse_arg(&c, argv[i], i + 1 < argc ? argv[i + 1] : NULL, &i)) {
            fprintf(stderr, "bench_baseline_openblas: bad argument '%s'\n" USAGE, argv[i]);
            exit(2);
        }
    c.E = c.n_ffn + c.n_const + c.n_copy + c.n_zero;
    if (c.topk > c.E || (c.n_ffn == 0 && c.zc_share < 1 && c.zc_share >= 0) || c.E == 0) {
        fprintf(stderr, "bench_baseline_openblas: top-k (%d) needs at least that many experts (E = %d)\n", c.topk, c.E);
        exit(2);
    }
    return c;
}

/* OpenBLAS 0.3.21 names for its AVX-512 kernels (newer releases add SapphireRapids; Zen 4 maps to these). */
static bool corename_is_avx512(const char *name) {
    const char *fair[] = {"SkylakeX", "Cooperlake", "SapphireRapids"};
    for (size_t i = 0; i < sizeof fair / sizeof fair[0]; i++)
        if (!strcasecmp(name, fair[i])) return true;
    return false;
}

static void print_preamble(const Config *c) {
    const char *env = getenv("OPENBLAS_CORETYPE");
    if (c->json)
        printf("{\"openblas_corename\": \"%s\", \"openblas_config\": \"%s\", \"openblas_threads\": %d, "
               "\"OPENBLAS_CORETYPE\": \"%s\"}\n",
               openblas_get_corename(), openblas_get_config(), openblas_get_num_threads(), env ? env : "");
    else
        printf("OpenBLAS core: %s (OPENBLAS_CORETYPE=%s)\nOpenBLAS config: %s\nOpenBLAS threads: %d\n",
               openblas_get_corename(), env ? env : "<unset>", openblas_get_config(), openblas_get_num_threads());
}

static void print_config(const Config *c) {
    if (c->json) return;
    printf("layer: D %d, I %d, %d FFN + %d const + %d copy + %d zero experts (E %d), top-%d, %d-layer router\n",
           c->D, c->I, c->n_ffn, c->n_const, c->n_copy, c->n_zero, c->E, c->topk, c->router_layers);
    if (c->zc_share < 0)
        printf("routing: the router on random weights (timed: router + experts + combine), reps %d\n", c->reps);
    else
        printf("routing: synthetic, zero-computation share %g, seed %llu (router NOT timed: experts + combine), reps %d\n",
               c->zc_share, (unsigned long long)c->seed, c->reps);
}

int main(int argc, char **argv) {
    Config c = parse_args(argc, argv);
    openblas_set_num_threads(c.threads);
    print_preamble(&c);
    fflush(stdout); /* the preamble comes first, before any warning on stderr */
    if (!corename_is_avx512(openblas_get_corename())) {
        fprintf(stderr, "WARNING: OpenBLAS runs its '%s' kernels, not AVX-512 ones: this baseline is NOT FAIR.\n"
                        "WARNING: rerun with OPENBLAS_CORETYPE=SkylakeX (on an AVX-512 CPU), or pass --allow-unfair.\n",
                openblas_get_corename());
        if (!c.allow_unfair) return 3;
    }
    print_config(&c);
    Weights W = weights_new(&c);
    bool ok = true;
    for (int i = 0; i < c.n_tokens; i++) ok &= bench_tokens(&c, &W, c.tokens[i]);
    weights_free(&c, &W);
    return ok ? 0 : 1;
}
