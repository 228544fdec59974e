/* test_abi.c — a layer library (moeppc emit --emit lib of specs/tiny/tiny-moepp.yaml) through its ABI
 * only, built against it with pkg-config like any engine: every kind of bad input gets its status, a
 * message, and leaves y and residual_out untouched; the promises of moepp_layer.h hold (in-place
 * calls, residual aliasing, no residual = a zero residual, rows independent of the batch and of the
 * thread count, routing statistics, MOEPP_LAYER_COPY_WEIGHTS, a workspace shared by two layers, no
 * allocation in forward). Exit 0 when every check passed; each failure is printed. */
#include "moepp_layer.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        checks++;                                                                                  \
        if (!(cond)) failures++, fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    } while (0)

/* ---- allocation counting (not under ASan, which owns malloc) ---------------------------------- */
#if defined(__SANITIZE_ADDRESS__) /* GCC's */
#define UNDER_ASAN 1
#elif defined(__has_feature) /* clang's */
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#if defined(UNDER_ASAN)
#define COUNTS_ALLOCATIONS 0
static long allocations(void) { return 0; }
static void count_allocations(int on) { (void)on; }
#else
#define COUNTS_ALLOCATIONS 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
static atomic_long n_alloc;
static atomic_int counting;
static void note(void)
{
    if (atomic_load(&counting)) atomic_fetch_add(&n_alloc, 1);
}
void *malloc(size_t n) { return note(), __libc_malloc(n); }
void *calloc(size_t a, size_t b) { return note(), __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { return note(), __libc_realloc(p, n); }
void *aligned_alloc(size_t a, size_t n) { return note(), __libc_memalign(a, n); }
void *memalign(size_t a, size_t n) { return note(), __libc_memalign(a, n); }
int posix_memalign(void **p, size_t a, size_t n)
{
    note();
    *p = __libc_memalign(a, n);
    return *p ? 0 : 12;
}
static long allocations(void) { return atomic_load(&n_alloc); }
static void count_allocations(int on) { atomic_store(&counting, on); }
#endif

/* ---- a layer on random weights ------------------------------------------------------------------ */
typedef struct {
    moepp_tensor t[64];
    char names[64][160];
    int n;
} Weights;

static unsigned long long rng = 88172645463325252ull;
static float uniform(void) /* [-1, 1) */
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void weights_make(Weights *w, int64_t layer)
{
    moepp_layer_info info;
    moepp_layer_get_info(&info);
    w->n = 0;
    for (int64_t i = 0; i < info.n_tensors; i++) {
        moepp_tensor_info ti;
        CHECK(moepp_layer_tensor_info(layer, i, &ti) == MOEPP_OK);
        moepp_tensor *t = &w->t[w->n];
        size_t n = (size_t)ti.shape[0] * (size_t)(ti.ndim == 2 ? ti.shape[1] : 1);
        float *d = malloc(n * sizeof *d), s = ti.ndim == 2 ? 1.0f / sqrtf((float)ti.shape[1]) : 1.0f;
        for (size_t j = 0; j < n; j++) d[j] = s * uniform();
        snprintf(w->names[w->n], sizeof w->names[w->n], "%s", ti.name);
        *t = (moepp_tensor){.name = w->names[w->n], .data = d, .dtype = ti.dtype, .memory = MOEPP_MEMORY_HOST,
                            .ndim = ti.ndim, .shape = {ti.shape[0], ti.shape[1]}};
        w->n++;
    }
}

static void weights_free(Weights *w)
{
    for (int k = 0; k < w->n; k++) free((void *)w->t[k].data);
}

static moepp_layer_desc desc_for(const Weights *w, int64_t layer, int threads)
{
    moepp_layer_desc d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.abi_version = MOEPP_LAYER_ABI_VERSION;
    d.layer_index = layer;
    d.tensors = w->t;
    d.n_tensors = w->n;
    d.n_threads = threads;
    return d;
}

static int find(const Weights *w, const char *part)
{
    for (int k = 0; k < w->n; k++)
        if (strstr(w->t[k].name, part)) return k;
    return -1;
}

/* ---- bad input: a status, a message, nothing written ---------------------------------------------- */
static void expect(moepp_status got, moepp_status want, const char *what)
{
    checks++;
    if (got != want) {
        failures++;
        fprintf(stderr, "%s: expected %s, got %s (%s)\n", what, moepp_status_string(want), moepp_status_string(got),
                moepp_last_error());
    } else if (!moepp_last_error()[0] || !moepp_status_string(got)[0]) {
        failures++;
        fprintf(stderr, "%s: no message\n", what);
    } else {
        printf("  %-44s -> %s\n     %s\n", what, moepp_status_string(got), moepp_last_error());
    }
}

static void test_create_rejects(void)
{
    Weights w;
    weights_make(&w, 1);
    moepp_layer *l = (moepp_layer *)&w; /* must be reset to NULL on failure */
    moepp_layer_desc d = desc_for(&w, 1, 1);
    expect(moepp_layer_create(NULL, &l), MOEPP_ERR_NULL_POINTER, "create: desc NULL");
    CHECK(l == NULL);
    expect(moepp_layer_create(&d, NULL), MOEPP_ERR_NULL_POINTER, "create: out NULL");
    d.abi_version = 99;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_VERSION, "create: another ABI version");
    d = desc_for(&w, 1, 1), d.struct_size -= 8;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_VERSION, "create: another struct size");
    d = desc_for(&w, 1, 1), d.layer_index = 2;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_INVALID_ARGUMENT, "create: layer index past the model");
    d = desc_for(&w, 1, 1), d.n_threads = -1;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_INVALID_ARGUMENT, "create: n_threads -1");
    d = desc_for(&w, 1, 1), d.flags = 0x80;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_INVALID_ARGUMENT, "create: unknown flag");
    d = desc_for(&w, 1, 1), d.tensors = NULL;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_NULL_POINTER, "create: tensors NULL");
    d = desc_for(&w, 0, 1); /* the names say layer 1 */
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_BAD_TENSOR, "create: a tensor of another layer");
    d = desc_for(&w, 1, 1);
    moepp_tensor saved = w.t[3];
    w.t[3].name = NULL;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_NULL_POINTER, "create: a tensor without name");
    w.t[3] = saved, w.t[3].name = "model.layers.1.mlp.moe.experts.experts.9.up_proj.weight";
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_BAD_TENSOR, "create: an unknown tensor");
    w.t[3] = w.t[4];
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_BAD_TENSOR, "create: a tensor given twice");
    w.t[3] = saved, w.t[3].dtype = MOEPP_DTYPE_BF16;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_BAD_TENSOR, "create: wrong dtype");
    w.t[3] = saved, w.t[3].shape[1] += 1;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_BAD_TENSOR, "create: wrong shape");
    w.t[3] = saved, w.t[3].ndim = 1;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_BAD_TENSOR, "create: wrong rank");
    w.t[3] = saved, w.t[3].data = NULL;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_NULL_POINTER, "create: tensor data NULL");
    w.t[3] = saved, w.t[3].data = (const char *)saved.data + 1;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_MISALIGNED, "create: misaligned tensor");
    w.t[3] = saved, w.t[3].memory = MOEPP_MEMORY_DEVICE;
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_UNSUPPORTED, "create: device pointer on a CPU build");
    w.t[3] = saved;
    setenv("MOEPPC_CPU_HIDE", "sse2", 1); /* a CPU without an extension the kernels were compiled with */
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_UNSUPPORTED, "create: a CPU without sse2");
    CHECK(strstr(moepp_last_error(), "lacks sse2") != NULL);
    unsetenv("MOEPPC_CPU_HIDE");
    d.n_tensors = w.n - 1; /* the last one (a constant vector) missing */
    expect(moepp_layer_create(&d, &l), MOEPP_ERR_BAD_TENSOR, "create: a missing tensor");
    CHECK(l == NULL);
    weights_free(&w);
}

static void test_info(void)
{
    moepp_layer_info info;
    moepp_tensor_info ti;
    CHECK(moepp_layer_get_info(&info) == MOEPP_OK);
    CHECK(info.abi_version == MOEPP_LAYER_ABI_VERSION && info.backend == MOEPP_BACKEND_CPU);
    CHECK(strcmp(info.spec_name, MOEPP_LAYER_SPEC_NAME) == 0 && info.hidden == MOEPP_LAYER_HIDDEN);
    CHECK(info.n_experts == info.n_ffn + info.n_const + info.n_copy + info.n_zero);
    CHECK(info.weight_dtype == MOEPP_LAYER_WEIGHT_DTYPE && info.gating_residual == MOEPP_LAYER_GATING_RESIDUAL);
    CHECK(moepp_layer_tensor_info(1, 0, &ti) == MOEPP_OK && strncmp(ti.name, "model.layers.1.", 15) == 0);
    expect(moepp_layer_get_info(NULL), MOEPP_ERR_NULL_POINTER, "get_info: out NULL");
    expect(moepp_layer_tensor_info(-1, 0, &ti), MOEPP_ERR_INVALID_ARGUMENT, "tensor_info: layer -1");
    expect(moepp_layer_tensor_info(0, info.n_tensors, &ti), MOEPP_ERR_INVALID_ARGUMENT, "tensor_info: i past the end");
    expect(moepp_layer_tensor_info(0, 0, NULL), MOEPP_ERR_NULL_POINTER, "tensor_info: out NULL");
}

enum { T = 24, MAXT = 32 };

static void *ws_for(moepp_layer *l, int64_t max_t, size_t *bytes)
{
    *bytes = moepp_layer_workspace_size(l, max_t);
    return aligned_alloc(64, (*bytes + 63) / 64 * 64);
}

static void fill(float *p, size_t n, float scale)
{
    for (size_t j = 0; j < n; j++) p[j] = scale * uniform();
}

static float max_diff(const float *a, const float *b, size_t n)
{
    float m = 0;
    for (size_t j = 0; j < n; j++) m = fmaxf(m, fabsf(a[j] - b[j]));
    return m;
}

static void test_workspace_and_forward_reject(moepp_layer *l, const float *x, const float *r)
{
    moepp_layer_info info;
    moepp_layer_get_info(&info);
    size_t D = (size_t)info.hidden, E = (size_t)info.n_experts, bytes;
    static float y[MAXT * 64 + 1], ro[MAXT * 8 + 1], sent_y[MAXT * 64 + 1], sent_r[MAXT * 8 + 1];
    for (size_t j = 0; j < sizeof y / sizeof *y; j++) y[j] = sent_y[j] = 1234.5f;
    for (size_t j = 0; j < sizeof ro / sizeof *ro; j++) ro[j] = sent_r[j] = -99.0f;
    expect(moepp_layer_forward(l, x, r, y, ro, T, NULL), MOEPP_ERR_NO_WORKSPACE, "forward: before a workspace");
    CHECK(moepp_layer_workspace_size(NULL, 4) == 0 && moepp_layer_workspace_size(l, 0) == 0);
    void *ws = ws_for(l, MAXT, &bytes);
    CHECK(bytes % 64 == 0 && moepp_layer_workspace_size(l, 1) % 64 == 0);
    expect(moepp_layer_set_workspace(NULL, ws, bytes), MOEPP_ERR_NULL_POINTER, "set_workspace: layer NULL");
    expect(moepp_layer_set_workspace(l, NULL, bytes), MOEPP_ERR_NULL_POINTER, "set_workspace: workspace NULL");
    expect(moepp_layer_set_workspace(l, (char *)ws + 32, bytes - 64), MOEPP_ERR_MISALIGNED, "set_workspace: misaligned");
    expect(moepp_layer_set_workspace(l, ws, moepp_layer_workspace_size(l, 1) - 1), MOEPP_ERR_WORKSPACE_TOO_SMALL,
           "set_workspace: smaller than one token");
    CHECK(moepp_layer_set_workspace(l, ws, bytes) == MOEPP_OK);
    int64_t mt = moepp_layer_max_tokens(l);
    CHECK(mt >= MAXT && moepp_layer_workspace_size(l, mt) <= bytes && moepp_layer_workspace_size(l, mt + 1) > bytes);
    expect(moepp_layer_forward(NULL, x, r, y, ro, T, NULL), MOEPP_ERR_NULL_POINTER, "forward: layer NULL");
    expect(moepp_layer_forward(l, NULL, r, y, ro, T, NULL), MOEPP_ERR_NULL_POINTER, "forward: x NULL");
    expect(moepp_layer_forward(l, x, r, NULL, ro, T, NULL), MOEPP_ERR_NULL_POINTER, "forward: y NULL");
    expect(moepp_layer_forward(l, x, r, y, ro, 0, NULL), MOEPP_ERR_INVALID_ARGUMENT, "forward: n_tokens 0");
    expect(moepp_layer_forward(l, x, r, y, ro, -5, NULL), MOEPP_ERR_INVALID_ARGUMENT, "forward: n_tokens -5");
    expect(moepp_layer_forward(l, x, r, y, ro, mt + 1, NULL), MOEPP_ERR_WORKSPACE_TOO_SMALL,
           "forward: n_tokens above the workspace's");
    expect(moepp_layer_forward(l, (const char *)x + 1, r, y, ro, T, NULL), MOEPP_ERR_MISALIGNED, "forward: x misaligned");
    expect(moepp_layer_forward(l, x, (const char *)r + 2, y, ro, T, NULL), MOEPP_ERR_MISALIGNED,
           "forward: residual_in misaligned");
    expect(moepp_layer_forward(l, x, r, (char *)y + 1, ro, T, NULL), MOEPP_ERR_MISALIGNED, "forward: y misaligned");
    expect(moepp_layer_forward(l, x, r, y, (char *)ro + 3, T, NULL), MOEPP_ERR_MISALIGNED,
           "forward: residual_out misaligned");
    int stream;
    expect(moepp_layer_forward(l, x, r, y, ro, T, &stream), MOEPP_ERR_UNSUPPORTED, "forward: a stream on a CPU build");
    CHECK(memcmp(y, sent_y, sizeof y) == 0);   /* no partial write */
    CHECK(memcmp(ro, sent_r, sizeof ro) == 0);
    moepp_route_stats rs;
    CHECK(moepp_layer_route_stats(l, &rs) == MOEPP_OK && rs.n_tokens == 0); /* no call succeeded */
    expect(moepp_layer_route_stats(l, NULL), MOEPP_ERR_NULL_POINTER, "route_stats: out NULL");
    CHECK(moepp_layer_forward(l, x, r, y, ro, T, NULL) == MOEPP_OK);
    (void)D, (void)E;
    free(ws);
}

/* What moepp_layer.h promises of correct calls. */
static void test_promises(void)
{
    moepp_layer_info info;
    moepp_layer_get_info(&info);
    size_t D = (size_t)info.hidden, E = (size_t)info.n_experts, K = (size_t)info.top_k, bytes;
    Weights w;
    weights_make(&w, 1);
    moepp_layer_desc d = desc_for(&w, 1, 2);
    moepp_layer *l, *l1;
    CHECK(moepp_layer_create(&d, &l) == MOEPP_OK);
    d.n_threads = 1;
    CHECK(moepp_layer_create(&d, &l1) == MOEPP_OK);
    static float x[MAXT * 64], r[MAXT * 8], y[MAXT * 64], ro[MAXT * 8], y2[MAXT * 64], ro2[MAXT * 8], io[MAXT * 64];
    fill(x, T * D, 1.7f), fill(r, T * E, 2.0f);
    test_workspace_and_forward_reject(l, x, r);

    void *ws = ws_for(l, MAXT, &bytes); /* one workspace, two layers run one after the other */
    CHECK(moepp_layer_set_workspace(l, ws, bytes) == MOEPP_OK && moepp_layer_set_workspace(l1, ws, bytes) == MOEPP_OK);
    CHECK(moepp_layer_forward(l, x, r, y, ro, T, NULL) == MOEPP_OK);
    moepp_route_stats rs;
    CHECK(moepp_layer_route_stats(l, &rs) == MOEPP_OK);
    CHECK(rs.n_tokens == T && rs.top_k == (int64_t)K && rs.picks_ffn + rs.picks_const + rs.picks_copy + rs.picks_zero == T * (int64_t)K);
    int64_t sum = 0;
    for (size_t e = 0; e < E; e++) sum += rs.picks_per_expert[e];
    CHECK(sum == T * (int64_t)K);
    for (int t = 0; t < T; t++) {
        float ws_sum = 0;
        int all_zero = 1;
        for (size_t j = 0; j < K; j++) {
            int32_t e = rs.ids[t * K + j];
            CHECK(e >= 0 && e < (int32_t)E);
            all_zero &= e >= (int32_t)(E - (size_t)info.n_zero);
            ws_sum += rs.weights[t * K + j];
        }
        CHECK(all_zero || fabsf(ws_sum - 1.0f) < 1e-5f);
    }
    printf("  routing of %d tokens: %lld FFN, %lld constant, %lld copy, %lld zero picks\n", T, (long long)rs.picks_ffn,
           (long long)rs.picks_const, (long long)rs.picks_copy, (long long)rs.picks_zero);

    CHECK(moepp_layer_forward(l1, x, r, y2, ro2, T, NULL) == MOEPP_OK); /* 1 thread, same workspace */
    printf("  2 threads vs 1: max |dy| %.3g\n", max_diff(y, y2, T * D));
    CHECK(max_diff(y, y2, T * D) <= 1e-6f && max_diff(ro, ro2, T * E) <= 1e-6f);

    memcpy(io, x, sizeof io); /* in place: y = x, residual_out = residual_in */
    memcpy(ro2, r, sizeof ro2);
    CHECK(moepp_layer_forward(l, io, ro2, io, ro2, T, NULL) == MOEPP_OK);
    CHECK(max_diff(io, y, T * D) == 0 && max_diff(ro2, ro, T * E) == 0);

    float y_row[64], ro_row[8], worst = 0; /* a token's row does not depend on the others */
    for (int t = 0; t < T; t += 5) {
        CHECK(moepp_layer_forward(l, x + t * D, r + t * E, y_row, ro_row, 1, NULL) == MOEPP_OK);
        worst = fmaxf(worst, max_diff(y_row, y + t * D, D));
    }
    printf("  one token at a time vs a batch of %d: max |dy| %.3g\n", T, worst);
    CHECK(worst <= 1e-5f);

    static float zeros[MAXT * 8], y_first[MAXT * 64]; /* residual_in NULL = a zero residual */
    CHECK(moepp_layer_forward(l, x, NULL, y_first, ro, T, NULL) == MOEPP_OK);
    CHECK(moepp_layer_forward(l, x, zeros, y2, ro2, T, NULL) == MOEPP_OK);
    CHECK(max_diff(y_first, y2, T * D) == 0 && max_diff(ro, ro2, T * E) == 0);

    if (COUNTS_ALLOCATIONS) { /* a new layer's forward calls, from the first, allocate nothing */
        moepp_layer *probe;
        long before = allocations();
        count_allocations(1);
        CHECK(moepp_layer_create(&d, &probe) == MOEPP_OK);
        count_allocations(0);
        long at_create = allocations() - before;
        CHECK(at_create > 0); /* the counter does see the library's allocations */
        CHECK(moepp_layer_set_workspace(probe, ws, bytes) == MOEPP_OK);
        before = allocations();
        count_allocations(1);
        for (int rep = 0; rep < 5; rep++)
            CHECK(moepp_layer_forward(probe, x, rep % 2 ? NULL : r, y, ro, T - rep, NULL) == MOEPP_OK);
        count_allocations(0);
        printf("  allocations: %ld in create, %ld in the 5 forward calls that followed\n", at_create,
               allocations() - before);
        CHECK(allocations() == before);
        moepp_layer_destroy(probe);
    }
    moepp_layer_destroy(l);
    moepp_layer_destroy(l1);
    moepp_layer_destroy(NULL);

    /* Wg left out: fine without residual_in, refused with it */
    int g = find(&w, "gate_map");
    CHECK(g >= 0);
    moepp_tensor gm = w.t[g];
    w.t[g] = w.t[w.n - 1];
    d = desc_for(&w, 1, 1), d.n_tensors = w.n - 1;
    CHECK(moepp_layer_create(&d, &l) == MOEPP_OK && moepp_layer_set_workspace(l, ws, bytes) == MOEPP_OK);
    CHECK(moepp_layer_forward(l, x, NULL, y2, ro2, T, NULL) == MOEPP_OK);
    CHECK(max_diff(y_first, y2, T * D) == 0);
    expect(moepp_layer_forward(l, x, r, y2, ro2, T, NULL), MOEPP_ERR_INVALID_ARGUMENT, "forward: residual_in without Wg");
    moepp_layer_destroy(l);
    w.t[w.n - 1] = w.t[g], w.t[g] = gm;

    /* the constant vectors are read in place, unless MOEPP_LAYER_COPY_WEIGHTS */
    int c = find(&w, ".constant");
    CHECK(c >= 0);
    d = desc_for(&w, 1, 1);
    moepp_layer *copied;
    d.flags = MOEPP_LAYER_COPY_WEIGHTS;
    CHECK(moepp_layer_create(&d, &copied) == MOEPP_OK && moepp_layer_set_workspace(copied, ws, bytes) == MOEPP_OK);
    d.flags = 0;
    CHECK(moepp_layer_create(&d, &l) == MOEPP_OK && moepp_layer_set_workspace(l, ws, bytes) == MOEPP_OK);
    CHECK(moepp_layer_forward(copied, x, r, y, ro, T, NULL) == MOEPP_OK);
    for (int k = 0; k < w.n; k++) /* scribble over every constant vector */
        if (w.t[k].ndim == 1) fill((float *)w.t[k].data, (size_t)w.t[k].shape[0], 50.0f);
    CHECK(moepp_layer_forward(copied, x, r, y2, ro2, T, NULL) == MOEPP_OK);
    CHECK(max_diff(y, y2, T * D) == 0);
    CHECK(moepp_layer_forward(l, x, r, y2, ro2, T, NULL) == MOEPP_OK);
    CHECK(rs.picks_const == 0 || max_diff(y, y2, T * D) > 1e-3f);
    moepp_layer_destroy(copied);
    moepp_layer_destroy(l);
    free(ws);
    weights_free(&w);
}

int main(void)
{
    moepp_layer_info info;
    moepp_layer_get_info(&info);
    printf("ABI test of the %s layer library (D %lld, %lld experts):\n", info.spec_name, (long long)info.hidden,
           (long long)info.n_experts);
    if (info.hidden != 64 || info.n_experts != 8 || !info.gating_residual || info.weight_dtype != MOEPP_DTYPE_F32) {
        fprintf(stderr, "test_abi expects the library of specs/tiny/tiny-moepp.yaml\n");
        return 2;
    }
    test_info();
    test_create_rejects();
    test_promises();
    printf("%d checks, %d failed%s\n", checks, failures, COUNTS_ALLOCATIONS ? "" : " (allocation count skipped under ASan)");
    return failures ? 1 : 0;
}
