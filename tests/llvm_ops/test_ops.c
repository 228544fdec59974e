/* test_ops.c — every kernel of cg_ops.h, JIT-compiled for the host, against the reference
 * interpreter in EVAL_F32 mode on random shapes and data (and, for attention over a KV cache, which
 * the IR cannot express, against a C reference in double). Rows are always run as two calls
 * (row0 = 0 and row0 > 0) to cover sub-ranges. Tolerance: 1e-5 of the largest reference value;
 * ids, permutations and offsets exact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/llvm_ops/ops_test_util.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <llvm-c/Core.h>

#define TOL 1e-5

static OpsJit *J;
static const int64_t Ts[] = {1, 3, 17};
static const moe_dtype dtypes[] = {DT_F32, DT_BF16, DT_F16};

typedef void (*fn3)(int64_t, int64_t, const void *, const void *, void *);
typedef void (*fn2)(int64_t, int64_t, const void *, void *);
typedef void (*fn5)(int64_t, int64_t, const void *, const void *, const void *, void *, void *);
typedef void (*fn_att)(int64_t, int64_t, int64_t, const float *, const void *, const void *, const int32_t *, float *);
typedef void (*fn_route)(int64_t, int64_t, const float *, const float *, float *, const float *, float *, int32_t *,
                         float *);
typedef void (*fn_combine)(int64_t, int64_t, const float *, const float *, const int32_t *, const float *,
                           const void *const *, float *);
typedef void (*fn_dispatch)(int64_t, const int32_t *, const float *, int64_t *, int32_t *, float *);

static int64_t split(int64_t T) { return T / 2; } /* first call rows [0, split), second [split, T) */

static Tensor tensor(const char *name, moe_dtype dt, int64_t d0, int64_t d1, const void *data)
{
    Tensor t = {.name = (char *)name, .dtype = dt, .ndim = d1 ? 2 : 1, .shape = {d0, d1}, .data = data};
    t.nbytes = (size_t)(d0 * (d1 ? d1 : 1)) * dtype_size(dt);
    return t;
}

/* n random values in [lo, hi) as dtype dt (raw, what the kernel reads) */
static void *rand_dtype(moe_rng *r, size_t n, moe_dtype dt, double lo, double hi)
{
    float *f = xmalloc(n * sizeof *f);
    oj_random(r, f, n, lo, hi);
    void *p = xmalloc(n * dtype_size(dt) + 1);
    for (size_t i = 0; i < n; i++) dtype_store(dt, p, i, f[i]);
    free(f);
    return p;
}

static void iota(int32_t *p, int64_t n, int32_t first, int32_t stride)
{
    for (int64_t i = 0; i < n; i++) p[i] = first + (int32_t)i * stride;
}

/* ---- embed, rms_norm, add_rms_norm, swiglu, add, scale, tanh ---------------------------------------- */
static void check_rows_case(moe_rng *r, int64_t C, moe_dtype dt, int64_t T)
{
    const int64_t V = 5;
    const double eps = 0.0009765625, s = 1.75;
    float *xa = xmalloc((size_t)(T * C) * 4), *xb = xmalloc((size_t)(T * C) * 4);
    oj_random(r, xa, (size_t)(T * C), -3, 3);
    oj_random(r, xb, (size_t)(T * C), -3, 3);
    void *w = rand_dtype(r, (size_t)C, dt, -2, 2), *tab = rand_dtype(r, (size_t)(V * C), dt, -2, 2);
    int32_t ids[17], pos[17];
    for (int64_t t = 0; t < T; t++) ids[t] = (int32_t)(rng_next(r) % V);
    iota(pos, T, 0, 1);
    Tensor p[4] = {tensor("xa", DT_F32, T, C, xa), tensor("xb", DT_F32, T, C, xb), tensor("w", dt, C, 0, w),
                   tensor("tab", dt, V, C, tab)};
    char body[2048];
    snprintf(body, sizeof body,
             "  %%a : f32[T, %1$lld] = embed %%xa, %%pos\n  %%b : f32[T, %1$lld] = embed %%xb, %%pos\n"
             "  %%e : f32[T, %1$lld] = embed %%tab, %%ids\n"
             "  %%n : f32[T, %1$lld] = rms_norm %%a, %%w {eps = 0.0009765625}\n"
             "  %%s : f32[T, %1$lld], %%n2 : f32[T, %1$lld] = add_rms_norm %%a, %%b, %%w {eps = 0.0009765625}\n"
             "  %%sw : f32[T, %1$lld] = swiglu %%a, %%b\n  %%ad : f32[T, %1$lld] = add %%a, %%b\n"
             "  %%sc : f32[T, %1$lld] = scale %%a {s = 1.75}\n  %%th : f32[T, %1$lld] = tanh %%a\n"
             "  output \"e\" = %%e\n  output \"n\" = %%n\n  output \"s\" = %%s\n  output \"n2\" = %%n2\n"
             "  output \"th\" = %%th\n  output \"sw\" = %%sw\n  output \"ad\" = %%ad\n  output \"sc\" = %%sc\n",
             (long long)C);
    EvalResult res;
    oj_eval(body, p, 4, ids, pos, T, &res);
    CgOpDesc d = {.wdtype = dt, .cols = C, .eps = eps, .s = s};
    size_t n = (size_t)(T * C);
    float *out = xmalloc(n * 4), *sum = xmalloc(n * 4);
    int64_t h = split(T);
    char label[96];
#define RUN(kind_, call_, ref_)                                                                        \
    do {                                                                                               \
        d.kind = kind_;                                                                                \
        memset(out, 0xff, n * 4); /* NaN: rows the kernel skips show */                               \
        call_;                                                                                         \
        snprintf(label, sizeof label, "%s C=%lld %s T=%lld", cg_op_name(kind_), (long long)C, dtype_name(dt), \
                 (long long)T);                                                                        \
        assert_true(oj_rel_err(label, out, oj_out(&res, ref_), n) <= TOL);                             \
    } while (0)
    fn3 f3;
    RUN(CG_OP_EMBED, (f3 = (fn3)oj_kernel(J, &d, NULL), f3(0, h, ids, tab, out), f3(h, T - h, ids, tab, out)), "e");
    RUN(CG_OP_RMS_NORM, (f3 = (fn3)oj_kernel(J, &d, NULL), f3(0, h, xa, w, out), f3(h, T - h, xa, w, out)), "n");
    RUN(CG_OP_SWIGLU, (f3 = (fn3)oj_kernel(J, &d, NULL), f3(0, h, xa, xb, out), f3(h, T - h, xa, xb, out)), "sw");
    RUN(CG_OP_ADD, (f3 = (fn3)oj_kernel(J, &d, NULL), f3(0, h, xa, xb, out), f3(h, T - h, xa, xb, out)), "ad");
    fn2 f2;
    RUN(CG_OP_SCALE, (f2 = (fn2)oj_kernel(J, &d, NULL), f2(0, h, xa, out), f2(h, T - h, xa, out)), "sc");
    RUN(CG_OP_TANH, (f2 = (fn2)oj_kernel(J, &d, NULL), f2(0, h, xa, out), f2(h, T - h, xa, out)), "th");
    fn5 f5;
    RUN(CG_OP_ADD_RMS_NORM,
        (f5 = (fn5)oj_kernel(J, &d, NULL), f5(0, h, xa, xb, w, sum, out), f5(h, T - h, xa, xb, w, sum, out)), "n2");
    assert_true(oj_rel_err("add_rms_norm sum", sum, oj_out(&res, "s"), n) <= TOL);
#undef RUN
    ir_eval_result_free(&res);
    free(xa), free(xb), free(w), free(tab), free(out), free(sum);
}

static void test_row_ops(void **state)
{
    (void)state;
    moe_rng r;
    rng_seed(&r, 11);
    const int64_t cols[] = {1, 7, 16, 64, 100};
    for (size_t c = 0; c < MOE_ARRAY_LEN(cols); c++)
        for (size_t k = 0; k < MOE_ARRAY_LEN(dtypes); k++)
            for (size_t t = 0; t < MOE_ARRAY_LEN(Ts); t++) check_rows_case(&r, cols[c], dtypes[k], Ts[t]);
}

/* tanh without libm (ob_tanh): each element within TANH_TOL of tanh in f64, relative, over 2^-40 .. 2^7
 * both signs (the Taylor branch below 1/2, the exp branch above, both sides of the switch), in place
 * and not, rows whose ends fall inside a vector; 0 and -0 kept, ±inf to ±1, NaN to NaN. */
#define TANH_TOL 2e-7
static void test_tanh(void **state)
{
    (void)state;
    enum { ROWS = 3, C = 4001 }; /* 12003 elements: whole vectors and a scalar tail in each call */
    float *x = xmalloc(sizeof(float) * ROWS * C), *out = xmalloc(sizeof(float) * ROWS * C);
    const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 0.5f, -0.5f, nextafterf(0.5f, 0.0f),
                             nextafterf(-0.5f, 0.0f), 1e-45f, 88.0f, -1e30f};
    size_t n_special = MOE_ARRAY_LEN(special);
    for (size_t i = 0; i < ROWS * C; i++) /* 2^-40 .. 2^7 evenly in the exponent, signs alternating */
        x[i] = i < n_special ? special[i] : (i % 2 ? -1.0f : 1.0f) * exp2f(-40.0f + 47.0f * (float)i / (ROWS * C));
    CgOpDesc d = {.kind = CG_OP_TANH, .wdtype = DT_F32, .cols = C};
    fn2 f = (fn2)oj_kernel(J, &d, NULL);
    for (int in_place = 0; in_place < 2; in_place++) {
        if (in_place) memcpy(out, x, sizeof(float) * ROWS * C);
        else memset(out, 0xff, sizeof(float) * ROWS * C); /* NaN: elements it skips show */
        const float *in = in_place ? out : x;
        f(0, 1, in, out), f(1, ROWS - 1, in, out);
        double worst = 0;
        size_t at = 0;
        for (size_t i = 0; i < ROWS * C; i++) {
            double want = tanh((double)x[i]), got = out[i];
            double e = isnan(want) ? (isnan(got) ? 0 : INFINITY)
                       : want == 0 ? (got == 0 && !signbit(got) == !signbit(want) ? 0 : INFINITY)
                                   : fabs(got - want) / fabs(want);
            if (!(e <= worst)) worst = e, at = i;
        }
        if (!(worst <= TANH_TOL))
            fprintf(stderr, "tanh%s: rel err %.3g at x = %.9g: got %.9g\n", in_place ? " in place" : "", worst,
                    (double)x[at], (double)out[at]);
        assert_true(worst <= TANH_TOL);
    }
    free(x), free(out);
}

/* ---- rope ------------------------------------------------------------------------------------- */
static void check_rope_case(moe_rng *r, int64_t H, int64_t hd, int64_t T)
{
    int64_t C = H * hd;
    size_t n = (size_t)(T * C);
    float *x = xmalloc(n * 4), *out = xmalloc(n * 4);
    oj_random(r, x, n, -2, 2);
    int32_t ids[17], pos[17];
    iota(ids, T, 0, 1);
    for (int64_t t = 0; t < T; t++) pos[t] = (int32_t)(rng_next(r) % 5000);
    Tensor p = tensor("xa", DT_F32, T, C, x);
    char body[512];
    snprintf(body, sizeof body,
             "  %%x : f32[T, %1$lld] = embed %%xa, %%ids\n"
             "  %%y : f32[T, %1$lld] = rope %%x, %%pos {heads = %2$lld, theta = 10000.0}\n  output \"y\" = %%y\n",
             (long long)C, (long long)H);
    EvalResult res;
    oj_eval(body, &p, 1, ids, pos, T, &res);
    CgOpDesc d = {.kind = CG_OP_ROPE, .wdtype = DT_F32, .heads = H, .head_dim = hd, .theta = 10000.0};
    fn3 f = (fn3)oj_kernel(J, &d, NULL);
    int64_t h = split(T);
    f(0, h, x, pos, out);
    f(h, T - h, x, pos, out);
    assert_true(oj_rel_err("rope", out, oj_out(&res, "y"), n) <= TOL);
    memcpy(out, x, n * 4); /* out == x */
    f(0, h, out, pos, out);
    f(h, T - h, out, pos, out);
    assert_true(oj_rel_err("rope in place", out, oj_out(&res, "y"), n) <= TOL);
    ir_eval_result_free(&res);
    free(x), free(out);
}

static void test_rope(void **state)
{
    (void)state;
    moe_rng r;
    rng_seed(&r, 12);
    const int64_t heads[] = {4, 2}, hds[] = {2, 16, 64};
    for (size_t a = 0; a < 2; a++)
        for (size_t b = 0; b < 3; b++)
            for (size_t t = 0; t < 3; t++) check_rope_case(&r, heads[a], hds[b], Ts[t]);
}

/* RoPE's angles at positions up to int32's largest, against cos and sin in double from libm, rounded
 * to f32 and applied as the kernel applies them: each output within 2 f32 ulps of the inputs' scale
 * (a cos or sin an f32 ulp off where the double lies at a rounding boundary). Positions below and
 * from ROPE_NEAR_POS (2^19, where the kernel's own sincos gives way to libm), head_dim 2 (no whole
 * vector of angles), 38 (a vector and a tail on AVX-512) and 128. A reduction by π/2 in one part
 * instead of three is off by ~1e-5 at position 500 000; a wrong quadrant by 1. */
static void test_rope_far(void **state)
{
    (void)state;
    moe_rng r;
    rng_seed(&r, 17);
    const int32_t far[] = {0, 1, 2, 3, 7, 100, 4095, 65535, 300001, 524287, 524288, 1 << 24, 2147483647};
    const int64_t hds[] = {2, 38, 128}, H = 2, T = (int64_t)MOE_ARRAY_LEN(far);
    for (size_t b = 0; b < MOE_ARRAY_LEN(hds); b++) {
        int64_t hd = hds[b], C = H * hd, half = hd / 2;
        float *x = xmalloc((size_t)(T * C) * 4), *out = xmalloc((size_t)(T * C) * 4);
        oj_random(&r, x, (size_t)(T * C), -2, 2);
        CgOpDesc d = {.kind = CG_OP_ROPE, .wdtype = DT_F32, .heads = H, .head_dim = hd, .theta = 10000.0};
        fn3 f = (fn3)oj_kernel(J, &d, NULL);
        f(0, T, x, far, out);
        double worst = 0;
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t j = 0; j < half; j++) {
                    double ang = (double)far[t] * pow(10000.0, -2.0 * (double)j / (double)hd);
                    float c = (float)cos(ang), sn = (float)sin(ang);
                    float z0 = x[t * C + h * hd + j], z1 = x[t * C + h * hd + j + half];
                    worst = fmax(worst, fabs(out[t * C + h * hd + j] - (z0 * c - z1 * sn)));
                    worst = fmax(worst, fabs(out[t * C + h * hd + j + half] - (z1 * c + z0 * sn)));
                }
        if (worst > 2.4e-7) fprintf(stderr, "rope far, head_dim %lld: %.3g\n", (long long)hd, worst);
        assert_true(worst <= 2.4e-7); /* 2 ulps of 1 (inputs below 2: an output's ulp is at most 2.4e-7) */
        free(x), free(out);
    }
}

/* ---- attention -------------------------------------------------------------------------------- */
/* query and kv heads: GQA groups of 2, 4 (a decode step's 4 heads one tile) and 6 (the dot form's 8-row
 * tiles, then tiles of the 6 heads, then rows alone) */
static const int64_t head_pairs[][2] = {{4, 4}, {4, 2}, {2, 1}, {8, 2}, {6, 1}};

/* The caches of P positions (rows [P, Hk·hd] of kc and vc) as the kernel reads them, of type dt, each
 * against a guard page; what lies past P holds NaN, which the kernel must mask or never read. */
typedef struct {
    void *kt, *vc;
    int64_t cap;
    size_t bytes;
} Caches;

static Caches caches(const float *kc, const float *vc, int64_t P, int64_t Hk, int64_t hd, moe_dtype dt, bool pairs)
{
    int64_t n = cg_attention_cache_elems(P, Hk, hd);
    Caches c = {.cap = cg_attention_cap(P), .bytes = (size_t)n * dtype_size(dt)};
    c.kt = oj_guarded_alloc(c.bytes), c.vc = oj_guarded_alloc(c.bytes);
    float nan = NAN;
    for (int64_t j = 0; j < n; j++) cg_attention_put(c.kt, dt, j, &nan, 1), cg_attention_put(c.vc, dt, j, &nan, 1);
    for (int64_t p = 0; p < P; p++)
        cg_attention_store(c.kt, c.vc, dt, Hk, hd, c.cap, p, kc + p * Hk * hd, vc + p * Hk * hd, pairs);
    return c;
}

static void caches_free(Caches *c)
{
    oj_guarded_free(c->kt, c->bytes);
    oj_guarded_free(c->vc, c->bytes);
}

/* Every head's rows of T queries in two calls each, rows [0, s) and [s, T), a call for each of d's
 * heads a call (cg_attention_heads_per_call). */
static void run_attention(fn_att f, const CgOpDesc *d, int64_t T, int64_t s, const float *q, const Caches *c,
                          const int32_t *pos, float *out)
{
    int64_t H = d->heads;
    for (int64_t h = 0; h < H; h += cg_attention_heads_per_call(d)) {
        if (s > 0) f(h, s, c->cap, q, c->kt, c->vc, pos, out);
        if (s < T) f(s * H + h, T - s, c->cap, q, c->kt, c->vc, pos, out);
    }
}

/* q, k, v as one table [T, H·hd + 2·Hk·hd] sliced in the IR; positions 0..T-1, cache = k, v rows,
 * held as dt (the IR's kv_dtype: the interpreter rounds them so too). */
static void check_attention_case(moe_rng *r, int64_t H, int64_t Hk, int64_t hd, int64_t T, moe_dtype dt)
{
    int64_t Cq = H * hd, Ck = Hk * hd, W = Cq + 2 * Ck;
    float *tab = xmalloc((size_t)(T * W) * 4), *q = xmalloc((size_t)(T * Cq) * 4);
    float *kc = xmalloc((size_t)(T * Ck) * 4), *vc = xmalloc((size_t)(T * Ck) * 4), *out = xmalloc((size_t)(T * Cq) * 4);
    oj_random(r, tab, (size_t)(T * W), -2, 2);
    for (int64_t t = 0; t < T; t++) {
        memcpy(q + t * Cq, tab + t * W, (size_t)Cq * 4);
        memcpy(kc + t * Ck, tab + t * W + Cq, (size_t)Ck * 4);
        memcpy(vc + t * Ck, tab + t * W + Cq + Ck, (size_t)Ck * 4);
    }
    int32_t ids[17], pos[17];
    iota(ids, T, 0, 1);
    iota(pos, T, 0, 1);
    Tensor p = tensor("tab", DT_F32, T, W, tab);
    char body[1024], kvd[32] = "";
    if (dt != DT_F32) snprintf(kvd, sizeof kvd, ", kv_dtype = \"%s\"", dtype_name(dt));
    snprintf(body, sizeof body,
             "  %%x : f32[T, %1$lld] = embed %%tab, %%ids\n"
             "  %%q : f32[T, %2$lld] = slice %%x {start = 0, len = %2$lld}\n"
             "  %%k : f32[T, %3$lld] = slice %%x {start = %2$lld, len = %3$lld}\n"
             "  %%v : f32[T, %3$lld] = slice %%x {start = %4$lld, len = %3$lld}\n"
             "  %%o : f32[T, %2$lld] = attention %%q, %%k, %%v, %%pos {heads = %5$lld, kv_heads = %6$lld%7$s}\n"
             "  output \"o\" = %%o\n",
             (long long)W, (long long)Cq, (long long)Ck, (long long)(Cq + Ck), (long long)H, (long long)Hk, kvd);
    EvalResult res;
    oj_eval(body, &p, 1, ids, pos, T, &res);
    CgOpDesc d = {.kind = CG_OP_ATTENTION, .wdtype = dt, .heads = H, .kv_heads = Hk, .head_dim = hd};
    fn_att f = (fn_att)oj_kernel(J, &d, NULL);
    Caches c = caches(kc, vc, T, Hk, hd, dt, false);
    run_attention(f, &d, T, split(T), q, &c, pos, out);
    caches_free(&c);
    char label[96];
    snprintf(label, sizeof label, "attention H=%lld Hk=%lld hd=%lld T=%lld kv %s", (long long)H, (long long)Hk,
             (long long)hd, (long long)T, dtype_name(dt));
    assert_true(oj_rel_err(label, out, oj_out(&res, "o"), (size_t)(T * Cq)) <= TOL);
    ir_eval_result_free(&res);
    free(tab), free(q), free(kc), free(vc), free(out);
}

static void test_attention(void **state)
{
    (void)state;
    moe_rng r;
    rng_seed(&r, 13);
    const int64_t hds[] = {2, 16, 40, 64, 158}; /* 158 = 2·79: one <158 x float> accumulator; 40: 5
                                                   * vectors of 8, accumulators on the stack in chunks of
                                                   * 2, 2 (a loop), then 1 on AVX2 */
    for (size_t a = 0; a < MOE_ARRAY_LEN(head_pairs); a++)
        for (size_t b = 0; b < MOE_ARRAY_LEN(hds); b++)
            for (size_t t = 0; t < 3; t++) {
                check_attention_case(&r, head_pairs[a][0], head_pairs[a][1], hds[b], Ts[t], DT_F32);
                /* a 16-bit model's cache (kv_dtype) */
                check_attention_case(&r, head_pairs[a][0], head_pairs[a][1], hds[b], Ts[t], t % 2 ? DT_F16 : DT_BF16);
            }
}

/* SEMANTICS §2 in double: query t at position pos[t] attends to cache rows 0..pos[t]; bf16 (the amx
 * form's): q and each weight rounded to bf16, the weight against the row's max, summed as rounded. */
static void attention_ref(int64_t H, int64_t Hk, int64_t hd, int64_t T, const float *q, const float *kc,
                          const float *vc, const int32_t *pos, bool bf16, double *out)
{
    int64_t group = H / Hk, P = 0;
    for (int64_t t = 0; t < T; t++) P = pos[t] + 1 > P ? pos[t] + 1 : P;
    double *p = xmalloc((size_t)P * sizeof *p);
    for (int64_t t = 0; t < T; t++)
        for (int64_t h = 0; h < H; h++) {
            const float *qr = q + (t * H + h) * hd;
            int64_t kv = (h / group) * hd, n = pos[t] + 1;
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < n; j++) {
                double s = 0;
                for (int64_t c = 0; c < hd; c++)
                    s += (bf16 ? dtype_round(DT_BF16, qr[c]) : (double)qr[c]) * kc[j * Hk * hd + kv + c];
                p[j] = s / sqrt((double)hd);
                mx = fmax(mx, p[j]);
            }
            for (int64_t j = 0; j < n; j++) {
                p[j] = exp(p[j] - mx);
                sum += (p[j] = bf16 ? dtype_round(DT_BF16, (float)p[j]) : p[j]);
            }
            for (int64_t c = 0; c < hd; c++) {
                double acc = 0;
                for (int64_t j = 0; j < n; j++) acc += p[j] * vc[j * Hk * hd + kv + c];
                out[(t * H + h) * hd + c] = acc / sum;
            }
        }
    free(p);
}

/* Decode-like calls: T new tokens at positions p0.. (or the same positions backwards, so that a tile's
 * rows end at different keys in any order) over a cache of p0 + T rows, several blocks, at key blocks
 * the tuner may choose (0: the default 64; 1, 7: rounded up to 16; 40: 48, whose last block ends past
 * a 64-key boundary; 64), calls split at every row count; both caches end at a guard page. */
static void test_attention_kv_cache(void **state)
{
    (void)state;
    moe_rng r;
    rng_seed(&r, 14);
    /* 38: 19 vectors of 2; 64: 4 of 16, 6 rows a tile on AVX-512; 96: 6 of 16, 4 rows */
    const int64_t p0s[] = {5, 40}, hds[] = {2, 38, 64, 96};
    const int blocks[] = {0, 1, 7, 40, 64};
    for (size_t a = 0; a < MOE_ARRAY_LEN(head_pairs); a++)
        for (size_t b = 0; b < MOE_ARRAY_LEN(hds); b++)
            for (size_t c = 0; c < 2; c++)
                for (size_t t = 0; t < 3; t++) {
                    int kv_block = blocks[(a + b + c + t) % 5];
                    const moe_dtype dts[] = {DT_F32, DT_BF16, DT_F16};
                    moe_dtype dt = dts[(a + c + t) % 3]; /* the cache's (a 16-bit model's: kv_dtype) */
                    int64_t H = head_pairs[a][0], Hk = head_pairs[a][1], hd = hds[b], T = Ts[t], P = p0s[c] + T;
                    float *q = xmalloc((size_t)(T * H * hd) * 4), *out = xmalloc((size_t)(T * H * hd) * 4);
                    float *kc = xmalloc((size_t)(P * Hk * hd) * 4), *vc = xmalloc((size_t)(P * Hk * hd) * 4);
                    double *ref = xmalloc((size_t)(T * H * hd) * 8);
                    oj_random(&r, q, (size_t)(T * H * hd), -2, 2);
                    oj_random(&r, kc, (size_t)(P * Hk * hd), -2, 2);
                    oj_random(&r, vc, (size_t)(P * Hk * hd), -2, 2);
                    for (int64_t e = 0; e < P * Hk * hd; e++) /* what the cache holds */
                        kc[e] = (float)dtype_round(dt, kc[e]), vc[e] = (float)dtype_round(dt, vc[e]);
                    int32_t pos[17];
                    if ((a + t) % 2) iota(pos, T, (int32_t)p0s[c], 1);
                    else iota(pos, T, (int32_t)(p0s[c] + T - 1), -1);
                    attention_ref(H, Hk, hd, T, q, kc, vc, pos, false, ref);
                    CgOpDesc d = {.kind = CG_OP_ATTENTION, .wdtype = dt, .heads = H, .kv_heads = Hk, .head_dim = hd,
                                  .kv_block = kv_block};
                    fn_att f = (fn_att)oj_kernel(J, &d, NULL);
                    Caches cs = caches(kc, vc, P, Hk, hd, dt, false);
                    for (int64_t sp = 0; sp <= T; sp++) {
                        memset(out, 0xff, (size_t)(T * H * hd) * 4); /* NaN: rows left unwritten fail */
                        run_attention(f, &d, T, sp, q, &cs, pos, out);
                        assert_true(oj_rel_err("attention kv cache", out, ref, (size_t)(T * H * hd)) <= TOL);
                    }
                    caches_free(&cs);
                    free(q), free(out), free(kc), free(vc), free(ref);
                }
}

/* cg_attention_store_run against each element put where cg_attention_kt_index and _v_index say, bit
 * for bit, in every cache type and in k pairs: runs that start and end inside a K tile, span several,
 * hold one position or a decode step's few, with rows farther apart than a row's width, values that
 * round to even, overflow, are NaN (kept quiet, whatever the payload), infinite, subnormal (kept:
 * vcvtneps2bf16 would flush them) or -0; everything outside the run left as it was. Under both forms
 * where the CPU has AVX-512 (MOEPPC_ISA set to sse: the element form), the element form elsewhere. */
static void check_store_case(moe_rng *r, moe_dtype dt, bool pairs, int64_t Hk, int64_t hd, int64_t p0, int64_t n)
{
    const int64_t P = 128, cap = cg_attention_cap(P), ld = Hk * hd + 5;
    const float special[] = {NAN, -NAN, INFINITY, -INFINITY, 1e-40f, -0.0f, 3.4e38f, 1.00390625f, 1.01171875f};
    size_t es = dtype_size(dt), bytes = (size_t)cg_attention_cache_elems(P, Hk, hd) * es;
    float *k = xmalloc((size_t)(n * ld) * 4), *v = xmalloc((size_t)(n * ld) * 4);
    oj_random(r, k, (size_t)(n * ld), -2, 2);
    oj_random(r, v, (size_t)(n * ld), -2, 2);
    const uint32_t nans[] = {0x7fffffffu, 0x7f800001u}; /* rounding would carry into the sign, or to inf */
    for (size_t s = 0; s < MOE_ARRAY_LEN(special) + MOE_ARRAY_LEN(nans); s++) { /* somewhere in the run */
        float x = special[s % MOE_ARRAY_LEN(special)];
        if (s >= MOE_ARRAY_LEN(special)) memcpy(&x, &nans[s - MOE_ARRAY_LEN(special)], 4);
        k[rng_next(r) % (uint64_t)(n * ld)] = x;
        v[rng_next(r) % (uint64_t)(n * ld)] = x;
    }
    unsigned char *kt = xmalloc(bytes), *vc = xmalloc(bytes), *kr = xmalloc(bytes), *vr = xmalloc(bytes);
    memset(kt, 0xab, bytes), memset(vc, 0xab, bytes), memset(kr, 0xab, bytes), memset(vr, 0xab, bytes);
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < Hk; g++)
            for (int64_t d = 0; d < hd; d++) {
                float x[2] = {k[i * ld + g * hd + d], v[i * ld + g * hd + d]};
                size_t at[2] = {(size_t)cg_attention_kt_index(cap, hd, p0 + i, g, d, pairs),
                                (size_t)cg_attention_v_index(cap, hd, p0 + i, g, d, pairs)};
                unsigned char *ref[2] = {kr, vr};
                for (int c = 0; c < 2; c++) {
                    if (dt == DT_F32) memcpy(ref[c] + at[c] * 4, &x[c], 4);
                    else {
                        uint16_t h = dt == DT_BF16 ? f32_to_bf16(x[c]) : f32_to_f16(x[c]);
                        memcpy(ref[c] + at[c] * 2, &h, 2);
                    }
                }
            }
    cg_attention_store_run(kt, vc, dt, Hk, hd, cap, p0, n, k, v, ld, pairs);
    if (memcmp(kt, kr, bytes) || memcmp(vc, vr, bytes))
        fail_msg("store run: %s%s Hk=%lld hd=%lld p0=%lld n=%lld (MOEPPC_ISA=%s): K %s, V %s", dtype_name(dt),
                 pairs ? " pairs" : "", (long long)Hk, (long long)hd, (long long)p0, (long long)n,
                 getenv("MOEPPC_ISA") ? getenv("MOEPPC_ISA") : "-", memcmp(kt, kr, bytes) ? "differs" : "same",
                 memcmp(vc, vr, bytes) ? "differs" : "same");
    free(k), free(v), free(kt), free(vc), free(kr), free(vr);
}

static void test_attention_store(void **state)
{
    (void)state;
    moe_rng r;
    rng_seed(&r, 15);
    const int64_t hds[] = {2, 38, 64, 158}, runs[][2] = {{0, 1}, {5, 3}, {0, 16}, {3, 29}, {16, 40}, {30, 70}, {9, 8}};
    const char *isa = getenv("MOEPPC_ISA");
    char *keep = isa ? xstrdup(isa) : NULL;
    for (int form = 0; form < 2; form++) {
        if (form) setenv("MOEPPC_ISA", "sse", 1);
        for (size_t t = 0; t < 3; t++)
            for (int pairs = 0; pairs < 2; pairs++)
                for (size_t b = 0; b < MOE_ARRAY_LEN(hds); b++)
                    for (size_t c = 0; c < MOE_ARRAY_LEN(runs); c++)
                        if (!pairs || dtypes[t] == DT_BF16)
                            check_store_case(&r, dtypes[t], pairs, 1 + (int64_t)(b % 2) * 2, hds[b], runs[c][0],
                                             runs[c][1]);
    }
    if (keep) setenv("MOEPPC_ISA", keep, 1);
    else unsetenv("MOEPPC_ISA");
    free(keep);
}

/* Random q (nq values) and cache rows k, v (nc each) in [-2, 2), the caches' as bf16 holds them. */
static void amx_inputs(moe_rng *r, size_t nq, size_t nc, float **q, float **kc, float **vc)
{
    *q = xmalloc(nq * 4), *kc = xmalloc(nc * 4), *vc = xmalloc(nc * 4);
    oj_random(r, *q, nq, -2, 2);
    oj_random(r, *kc, nc, -2, 2);
    oj_random(r, *vc, nc, -2, 2);
    for (size_t e = 0; e < nc; e++)
        (*kc)[e] = (float)dtype_round(DT_BF16, (*kc)[e]), (*vc)[e] = (float)dtype_round(DT_BF16, (*vc)[e]);
}

/* The amx form (bf16 caches in k pairs; 16 rows a call on AMX tiles, the rest one at a time) against
 * attention_ref's rounding, at head_dim 32 to 128, over caches of p0 + T positions (p0 0: a prompt),
 * rows in calls split at 0, 7, 16, T/2 and T (so tiles of 16 and single rows run alike; every call
 * of 16 rows or more has tiles whose rows end at different keys), both caches ending at a guard page
 * with NaN past their positions. A weight within an f32 rounding of a bf16 tie may round the other
 * way than in double (~1e-4 of them: one bf16 ulp of one weight, up to ~1e-4 on its row), so each
 * row must agree to TOL but for a few, and all to 2e-3; weights or q not rounded, or rounded against
 * a running max: most rows fail. */
/* form: CG_ATTENTION_AMX (16 rows a tile on AMX tiles) or CG_ATTENTION_DOT (8 on vdpbf16ps). */
static void check_amx_form(int form)
{
    moe_rng r;
    rng_seed(&r, 16);
    const int64_t p0s[] = {0, 5, 40}, hds[] = {32, 64, 96, 128}, Tamx[] = {1, 16, 17, 45, 70};
    int64_t rows_all = 0, rows_off = 0;
    for (size_t a = 0; a < MOE_ARRAY_LEN(head_pairs); a++)
        for (size_t b = 0; b < MOE_ARRAY_LEN(hds); b++)
            for (size_t c = 0; c < MOE_ARRAY_LEN(p0s); c++)
                for (size_t t = 0; t < MOE_ARRAY_LEN(Tamx); t++) {
                    int64_t H = head_pairs[a][0], Hk = head_pairs[a][1], hd = hds[b], T = Tamx[t], P = p0s[c] + T;
                    size_t nq = (size_t)(T * H * hd), nc = (size_t)(P * Hk * hd);
                    float *q, *kc, *vc, *out = xmalloc(nq * 4);
                    double *ref = xmalloc(nq * 8);
                    amx_inputs(&r, nq, nc, &q, &kc, &vc);
                    int32_t pos[70];
                    if ((a + b + t) % 2) iota(pos, T, (int32_t)p0s[c], 1);
                    else iota(pos, T, (int32_t)(p0s[c] + T - 1), -1);
                    attention_ref(H, Hk, hd, T, q, kc, vc, pos, true, ref);
                    CgOpDesc d = {.kind = CG_OP_ATTENTION, .wdtype = DT_BF16, .heads = H, .kv_heads = Hk,
                                  .head_dim = hd, .amx = form};
                    fn_att f = (fn_att)oj_kernel(J, &d, NULL);
                    Caches cs = caches(kc, vc, P, Hk, hd, DT_BF16, true);
                    const int64_t sps[] = {0, 7, 16, T / 2, T};
                    for (size_t k = 0; k < MOE_ARRAY_LEN(sps); k++) {
                        if (sps[k] > T) continue;
                        memset(out, 0xff, nq * 4); /* NaN: rows left unwritten fail */
                        run_attention(f, &d, T, sps[k], q, &cs, pos, out);
                        double most = 0, worst = 0;
                        for (size_t e = 0; e < nq; e++) most = fmax(most, fabs(ref[e]));
                        for (int64_t row = 0; row < T * H; row++) {
                            double err = 0;
                            for (int64_t e = row * hd; e < (row + 1) * hd; e++)
                                err = isnan(out[e]) ? INFINITY : fmax(err, fabs(out[e] - ref[e]) / most);
                            rows_all++;
                            rows_off += err > TOL;
                            worst = fmax(worst, err);
                        }
                        if (worst > 2e-3)
                            fprintf(stderr, "attention amx %d H=%lld Hk=%lld hd=%lld T=%lld p0=%lld split %lld: %.3g\n",
                                    form, (long long)H, (long long)Hk, (long long)hd, (long long)T, (long long)p0s[c],
                                    (long long)sps[k], worst);
                        assert_true(worst <= 2e-3);
                    }
                    caches_free(&cs);
                    free(q), free(out), free(kc), free(vc), free(ref);
                }
    { /* past the kept scores' capacity (ops_attention_amx.c KEEP_CAP): the keys scored again */
        int64_t H = 2, Hk = 1, hd = 64, T = 17, P = 4200;
        size_t nq = (size_t)(T * H * hd), nc = (size_t)(P * Hk * hd);
        float *q, *kc, *vc, *out = xmalloc(nq * 4);
        double *ref = xmalloc(nq * 8), most = 0, worst = 0;
        amx_inputs(&r, nq, nc, &q, &kc, &vc);
        int32_t pos[17];
        iota(pos, T, (int32_t)(P - T), 1);
        attention_ref(H, Hk, hd, T, q, kc, vc, pos, true, ref);
        CgOpDesc d = {.kind = CG_OP_ATTENTION, .wdtype = DT_BF16, .heads = H, .kv_heads = Hk, .head_dim = hd,
                      .amx = form};
        Caches cs = caches(kc, vc, P, Hk, hd, DT_BF16, true);
        memset(out, 0xff, nq * 4);
        run_attention((fn_att)oj_kernel(J, &d, NULL), &d, T, 0, q, &cs, pos, out);
        for (size_t e = 0; e < nq; e++) most = fmax(most, fabs(ref[e]));
        for (size_t e = 0; e < nq; e++)
            worst = isnan(out[e]) ? INFINITY : fmax(worst, fabs(out[e] - ref[e]) / most);
        fprintf(stderr, "attention amx %d over %lld positions (scored again, or rows alone): %.3g\n", form,
                (long long)P, worst);
        assert_true(worst <= 1e-4);
        caches_free(&cs);
        free(q), free(out), free(kc), free(vc), free(ref);
    }
    fprintf(stderr, "attention amx %d: %lld of %lld rows beyond %g\n", form, (long long)rows_off, (long long)rows_all,
            TOL);
    assert_true(rows_off * 50 <= rows_all);
}

static void test_attention_amx(void **state)
{
    (void)state;
    if (!oj_has_amx(J) && oj_vec_width(J) == 16) { /* it cannot run here, but its IR must verify (it shares
                                                    * code with the dot form) */
        CgOpDesc d = {.kind = CG_OP_ATTENTION, .wdtype = DT_BF16, .heads = 4, .kv_heads = 2, .head_dim = 64,
                      .amx = CG_ATTENTION_AMX};
        char *ir = oj_ir_text(J, &d);
        assert_non_null(strstr(ir, "llvm.x86.tdpbf16ps"));
        free(ir);
        fprintf(stderr, "attention amx: this host has no AMX tiles (its IR verified; the runs skipped)\n");
        skip();
    }
    if (!oj_has_amx(J)) {
        fprintf(stderr, "attention amx: this host has no AMX tiles (skipped)\n");
        skip();
    }
    check_amx_form(CG_ATTENTION_AMX);
}

/* The same on the bf16 dot product: 8 rows a tile, two key tiles a pass, the output 2 vectors a row a
 * pass over the values; the same roundings, so the same bounds. */
static void test_attention_dot(void **state)
{
    (void)state;
    if (!oj_has_bf16_dot(J)) {
        fprintf(stderr, "attention dot: this host has no AVX512-BF16 (skipped)\n");
        skip();
    }
    check_amx_form(CG_ATTENTION_DOT);
}

/* ---- route_post, combine, dispatch ------------------------------------------------------------ */
typedef struct {
    int64_t E, k, D, T, nf, nc; /* experts: FFN [0, nf), constant [nf, nf+nc), one copy, zero to the end */
    int gating, residual;
    double norm_std;
    moe_dtype vdt;
} RouteCase;

/* moe.route with a one-layer router W = I and gate map Wg = I, so its logits are exactly z0 + g;
 * α logits as the interpreter's f32 GEMM computes Wc · (s·x) (fmaf in order). */
static void check_route_case(moe_rng *r, const RouteCase *c)
{
    int64_t E = c->E, k = c->k, D = c->D, T = c->T, nc = c->nc, W = 2 * E + D;
    double s = c->gating == 0 ? (double)k : 1.0;
    float *tab = xmalloc((size_t)(T * W) * 4), *eye = xcalloc((size_t)(E * E), 4), *wc[2];
    oj_random(r, tab, (size_t)(T * W), -2, 2);
    for (int64_t e = 0; e < E; e++) eye[e * E + e] = 1;
    void *v[2];
    for (int i = 0; i < 2; i++) {
        wc[i] = xmalloc((size_t)(2 * E) * 4);
        oj_random(r, wc[i], (size_t)(2 * E), -1, 1);
        v[i] = rand_dtype(r, (size_t)D, c->vdt, -1, 1);
    }
    float *z0 = xmalloc((size_t)(T * E) * 4), *g = xmalloc((size_t)(T * E) * 4), *x2 = xmalloc((size_t)(T * D) * 4);
    float *al = xmalloc((size_t)(T * 4) * 4);
    for (int64_t t = 0; t < T; t++) {
        memcpy(z0 + t * E, tab + t * W, (size_t)E * 4);
        memcpy(g + t * E, tab + t * W + E, (size_t)E * 4);
        memcpy(x2 + t * D, tab + t * W + 2 * E, (size_t)D * 4);
        for (int64_t i = 0; i < nc; i++)
            for (int64_t row = 0; row < 2; row++) {
                float acc = 0;
                for (int64_t e = 0; e < E; e++) {
                    float u = s == 1.0 ? z0[t * E + e] : (float)(s * z0[t * E + e]);
                    acc = fmaf(u, wc[i][row * E + e], acc);
                }
                al[t * 2 * nc + 2 * i + row] = acc;
            }
    }
    Tensor p[7] = {tensor("tab", DT_F32, T, W, tab), tensor("W", DT_F32, E, E, eye), tensor("G", DT_F32, E, E, eye),
                   tensor("Wc0", DT_F32, 2, E, wc[0]), tensor("Wc1", DT_F32, 2, E, wc[1]),
                   tensor("v0", c->vdt, D, 0, v[0]), tensor("v1", c->vdt, D, 0, v[1])};
    char body[4096], cw[64] = "", cv[64] = "";
    for (int64_t i = 0; i < nc; i++) {
        snprintf(cw + strlen(cw), sizeof cw - strlen(cw), ", %%Wc%lld", (long long)i);
        snprintf(cv + strlen(cv), sizeof cv - strlen(cv), ", %%v%lld", (long long)i);
    }
    int64_t copy_lo = c->nf + nc, zero_lo = copy_lo + 1;
    snprintf(body, sizeof body,
             "  %%t : f32[T, %lld] = embed %%tab, %%ids\n"
             "  %%x : f32[T, %lld] = slice %%t {start = 0, len = %lld}\n"
             "  %%r : f32[T, %lld] = slice %%t {start = %lld, len = %lld}\n"
             "  %%x2 : f32[T, %lld] = slice %%t {start = %lld, len = %lld}\n"
             "  %%w : f32[T, %lld], %%i : i32[T, %lld], %%lg : f32[T, %lld], %%al : f32[T, %lld] = moe.route %%x, %%W%s%s"
             " {experts = %lld, k = %lld, router_layers = 1, residual = %d, gating = %d, zero_lo = %lld, zero_hi = %lld,"
             " norm_std = %.1f, n_const = %lld, s = %.1f}\n"
             "  %%y : f32[T, %lld] = moe.combine %%x2, %%w, %%i, %%al%s {s = %.1f, const_lo = %lld, n_const = %lld,"
             " copy_lo = %lld, copy_hi = %lld}\n"
             "  %%off : i32[%lld], %%sl : i32[T, %lld] = moe.dispatch %%i {experts = %lld}\n"
             "  output \"w\" = %%w\n  output \"i\" = %%i\n  output \"lg\" = %%lg\n  output \"al\" = %%al\n"
             "  output \"y\" = %%y\n  output \"off\" = %%off\n  output \"sl\" = %%sl\n",
             (long long)W, (long long)E, (long long)E, (long long)E, (long long)E, (long long)E, (long long)D,
             (long long)(2 * E), (long long)D, (long long)k, (long long)k, (long long)E, (long long)(2 * nc),
             c->residual ? ", %r, %G" : "", cw, (long long)E, (long long)k, c->residual, c->gating,
             (long long)zero_lo, (long long)E, c->norm_std, (long long)nc, s, (long long)D, cv, s, (long long)c->nf,
             (long long)nc, (long long)copy_lo, (long long)zero_lo, (long long)(c->nf + 1), (long long)k,
             (long long)c->nf);
    int32_t ids[17], pos[17];
    iota(ids, T, 0, 1);
    iota(pos, T, 0, 1);
    EvalResult res;
    oj_eval(body, p, 7, ids, pos, T, &res);

    CgOpDesc dr = {.kind = CG_OP_ROUTE_POST, .wdtype = DT_F32, .experts = E, .k = k, .gating = c->gating,
                   .zero_lo = zero_lo, .zero_hi = E, .norm_std = c->norm_std, .n_const = nc};
    float *lg = xmalloc((size_t)(T * E) * 4), *w = xmalloc((size_t)(T * k) * 4), *alpha = xmalloc((size_t)(T * 4) * 4);
    int32_t *kid = xmalloc((size_t)(T * k) * 4);
    fn_route fr = (fn_route)oj_kernel(J, &dr, NULL);
    int64_t h = split(T);
    const float *gp = c->residual ? g : NULL;
    fr(0, h, z0, gp, lg, al, w, kid, alpha);
    fr(h, T - h, z0, gp, lg, al, w, kid, alpha);
    const double *rid = oj_out(&res, "i");
    for (int64_t j = 0; j < T * k; j++) assert_int_equal(kid[j], (int32_t)rid[j]);
    assert_true(oj_rel_err("route weights", w, oj_out(&res, "w"), (size_t)(T * k)) <= TOL);
    assert_true(oj_rel_err("route logits", lg, oj_out(&res, "lg"), (size_t)(T * E)) <= TOL);
    if (nc) assert_true(oj_rel_err("route alpha", alpha, oj_out(&res, "al"), (size_t)(T * 2 * nc)) <= TOL);

    CgOpDesc dc = {.kind = CG_OP_COMBINE, .wdtype = c->vdt, .cols = D, .k = k, .s = s, .n_const = nc,
                   .const_lo = c->nf, .copy_lo = copy_lo, .copy_hi = zero_lo};
    float *y = xmalloc((size_t)(T * D) * 4);
    fn_combine fc = (fn_combine)oj_kernel(J, &dc, NULL);
    const void *vp[2] = {v[0], v[1]};
    fc(0, h, x2, w, kid, alpha, vp, y);
    fc(h, T - h, x2, w, kid, alpha, vp, y);
    assert_true(oj_rel_err("combine", y, oj_out(&res, "y"), (size_t)(T * D)) <= TOL);

    CgOpDesc dd = {.kind = CG_OP_DISPATCH, .wdtype = DT_F32, .experts = c->nf, .k = k};
    int64_t *off = xmalloc((size_t)(c->nf + 1) * 8);
    int32_t *perm = xmalloc((size_t)(T * k) * 4);
    float *gw = xmalloc((size_t)(T * k) * 4);
    ((fn_dispatch)oj_kernel(J, &dd, NULL))(T, kid, w, off, perm, gw);
    const double *roff = oj_out(&res, "off"), *rsl = oj_out(&res, "sl");
    for (int64_t e = 0; e <= c->nf; e++) assert_int_equal(off[e], (int64_t)roff[e]);
    for (int64_t sl = 0; sl < off[c->nf]; sl++) {
        assert_int_equal(perm[sl], (int32_t)rsl[sl] / (int32_t)k);
        assert_true(gw[sl] == w[(int64_t)rsl[sl]]);
    }
    ir_eval_result_free(&res);
    free(tab), free(eye), free(wc[0]), free(wc[1]), free(v[0]), free(v[1]), free(z0), free(g), free(x2), free(al);
    free(lg), free(w), free(alpha), free(kid), free(y), free(off), free(perm), free(gw);
}

static void test_routing(void **state)
{
    (void)state;
    moe_rng r;
    rng_seed(&r, 15);
    const int64_t ek[][2] = {{4, 1}, {8, 2}, {5, 2}, {20, 2}};
    int n = 0;
    for (size_t a = 0; a < 4; a++)
        for (int gating = 0; gating < 2; gating++)
            for (int variant = 0; variant < 2; variant++)
                for (size_t t = 0; t < 3; t++) {
                    RouteCase c = {.E = ek[a][0], .k = ek[a][1], .D = variant ? 16 : 7, .T = Ts[t],
                                   .gating = gating, .residual = variant, .norm_std = variant ? 0.0 : 1.5,
                                   .vdt = dtypes[n++ % 3]};
                    c.nc = c.E >= 5 ? 2 : 1;
                    c.nf = c.E - c.nc - 2;
                    check_route_case(&r, &c);
                }
}

/* ---- descriptors -------------------------------------------------------------------------------- */
static void test_symbols_and_bad_descs(void **state)
{
    (void)state;
    char a[256], b[256], err[256];
    CgOpDesc d = {.kind = CG_OP_RMS_NORM, .wdtype = DT_BF16, .cols = 64, .eps = 1e-6};
    cg_op_symbol(&d, a, sizeof a);
    d.eps = 1e-5;
    cg_op_symbol(&d, b, sizeof b);
    assert_string_not_equal(a, b);
    LLVMContextRef ctx = LLVMContextCreate();
    CgOpDesc bad_k = {.kind = CG_OP_ROUTE_POST, .experts = 20, .k = 9};
    assert_null(cg_ops_build(ctx, &bad_k, 16, "x", err, sizeof err));
    assert_non_null(strstr(err, "route_post"));
    CgOpDesc bad_gqa = {.kind = CG_OP_ATTENTION, .heads = 4, .kv_heads = 3, .head_dim = 16};
    assert_null(cg_ops_build(ctx, &bad_gqa, 16, "x", err, sizeof err));
    assert_non_null(strstr(err, "kv_heads 3"));
    CgOpDesc bad_amx = {.kind = CG_OP_ATTENTION, .wdtype = DT_BF16, .heads = 4, .kv_heads = 4, .head_dim = 48,
                        .amx = 1};
    assert_null(cg_ops_build(ctx, &bad_amx, 16, "x", err, sizeof err));
    assert_non_null(strstr(err, "amx"));
    bad_amx.head_dim = 64, bad_amx.wdtype = DT_F16;
    assert_null(cg_ops_build(ctx, &bad_amx, 16, "x", err, sizeof err));
    assert_non_null(strstr(err, "amx"));
    LLVMContextDispose(ctx);
}

/* The hot loops are vectorised at the target's width (explicit in ob_dot, attention and the elementwise
 * ops, by O3 elsewhere). */
static void test_vectorised(void **state)
{
    (void)state;
    char want[32];
    snprintf(want, sizeof want, "<%d x float>", oj_vec_width(J));
    CgOpDesc ds[] = {{.kind = CG_OP_RMS_NORM, .wdtype = DT_BF16, .cols = 1536, .eps = 1e-6},
                     {.kind = CG_OP_ADD, .wdtype = DT_F32, .cols = 1536},
                     {.kind = CG_OP_TANH, .wdtype = DT_F32, .cols = 160}, /* in place too (the router's) */
                     {.kind = CG_OP_ROPE, .wdtype = DT_F32, .heads = 12, .head_dim = 64, .theta = 1e4}, /* (in place) */
                     {.kind = CG_OP_ATTENTION, .wdtype = DT_F32, .heads = 16, .kv_heads = 16, .head_dim = 96}};
    for (size_t i = 0; i < MOE_ARRAY_LEN(ds); i++) {
        char *ir = oj_ir_text(J, &ds[i]);
        bool ok = strstr(ir, want) != NULL;
        if (!ok) fprintf(stderr, "%s: no %s in the optimised IR\n", cg_op_name(ds[i].kind), want);
        free(ir);
        assert_true(ok);
    }
}

static int setup(void **state)
{
    (void)state;
    J = oj_new();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    oj_free(J);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_symbols_and_bad_descs),
        cmocka_unit_test(test_row_ops),
        cmocka_unit_test(test_tanh),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_far),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_kv_cache),
        cmocka_unit_test(test_attention_store),
        cmocka_unit_test(test_attention_amx),
        cmocka_unit_test(test_attention_dot),
        cmocka_unit_test(test_routing),
        cmocka_unit_test(test_vectorised),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
