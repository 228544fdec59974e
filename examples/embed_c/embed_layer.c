/* embed_layer.c — an engine's use of a layer library written by `moeppc emit SPEC --emit lib -o LIB`:
 * it knows nothing of moeppc but moepp_layer.h and the library (built through pkg-config):
 *
 *   cc embed_layer.c $(PKG_CONFIG_PATH=LIB pkg-config --cflags --libs moepp_layer) -Wl,-rpath,LIB -o embed_layer
 *
 *   ./embed_layer DATA [--threads N] [--mutate none|weight|residual]
 *
 * DATA holds a checkpoint (w.safetensors, the Hugging Face layout) and one case prepared by the test
 * (tests/embed/layer_ref.c): case.txt ("layer L", "tokens T", "residual 0|1"), the inputs x.f32
 * [T, D] and residual_in.f32 [T, E], and what moeppc's reference interpreter computed: y.f32,
 * residual_out.f32, ids.i32 (raw little-endian, row-major). The program takes layer L's tensors from
 * the checkpoint by name (moepp_layer_tensor_info lists them), creates the layer, runs it once and
 * compares y and residual_out with the reference (max |a - b| / max |b| within 1e-4 for f32
 * weights, 2e-2 for bf16/f16: SEMANTICS.md section 4) and the routing picks: equal, or flipped on a
 * near-tie (the two experts' reference logits within that tolerance), which SEMANTICS allows; such
 * tokens (at most a quarter) are left out of the comparison of y.
 * --mutate makes it wrong on purpose, to show the check can fail: "weight" negates every expert's
 * down-projection, "residual" drops residual_in. Exit 0: match; 1: mismatch; 2: usage or I/O.
 *
 * Built with -DEMBED_CUDA against a CUDA build of the library (moeppc emit --emit lib --target sm_XX)
 * and the CUDA runtime (-I/usr/local/cuda/include -L/usr/local/cuda/lib64 -lcudart), it does the same
 * on the GPU: weights, inputs, outputs and workspace in device memory (cudaMalloc), forward on a
 * stream of its own, the results copied back after cudaStreamSynchronize. There --host-weights gives
 * the weights as host memory (the library uploads them) instead of device memory used in place, and
 * --in-place runs y = x (and residual_out = residual_in). Exit 77: no usable GPU. */
#include "moepp_layer.h"

#ifdef EMBED_CUDA
#include <cuda_runtime.h>
#endif

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *read_file(const char *dir, const char *name, size_t *len)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *p = malloc(n > 0 ? (size_t)n : 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) free(p), p = NULL;
    fclose(f);
    if (len) *len = (size_t)n;
    return p;
}

/* ---- a minimal safetensors reader: 8-byte header length, JSON header, data ------------------- */
typedef struct {
    unsigned char *file;
    size_t len;
    const char *header;   /* NUL-terminated copy */
    size_t data_at;
} Safetensors;

/* The entry "name": {"dtype": "F32", "shape": [..], "data_offsets": [a, b]} into t; 0 if absent. */
static int st_find(const Safetensors *st, const char *name, moepp_tensor *t)
{
    char key[256];
    snprintf(key, sizeof key, "\"%s\"", name);
    const char *at = strstr(st->header, key), *end, *p;
    if (!at) return 0;
    end = strchr(at, '}');
    p = strstr(at, "\"dtype\"");
    if (!end || !p || p > end) return 0;
    p = strchr(p + 7, '"') + 1;
    t->dtype = strncmp(p, "F32\"", 4) == 0 ? MOEPP_DTYPE_F32 : strncmp(p, "BF16\"", 5) == 0 ? MOEPP_DTYPE_BF16
             : strncmp(p, "F16\"", 4) == 0 ? MOEPP_DTYPE_F16 : -1;
    p = strstr(at, "\"shape\"");
    if (!p || p > end) return 0;
    p = strchr(p, '[') + 1;
    for (t->ndim = 0; *p != ']' && t->ndim < 4; t->ndim++) {
        char *next;
        t->shape[t->ndim] = strtoll(p, &next, 10);
        p = next + strspn(next, " ,");
    }
    p = strstr(at, "\"data_offsets\"");
    if (!p || p > end) return 0;
    p = strchr(p, '[') + 1;
    size_t a = strtoull(p, (char **)&p, 10);
    t->data = st->file + st->data_at + a;
    t->memory = MOEPP_MEMORY_HOST;
    return 1;
}

static int st_open(const char *dir, const char *name, Safetensors *st)
{
    unsigned long long n = 0;
    st->file = read_file(dir, name, &st->len);
    if (!st->file || st->len < 8) return 0;
    for (int k = 7; k >= 0; k--) n = n << 8 | st->file[k];
    if (n > st->len - 8) return 0;
    char *h = malloc(n + 1);
    memcpy(h, st->file + 8, n);
    h[n] = 0;
    st->header = h;
    st->data_at = 8 + n;
    return 1;
}

/* ---- where the layer's memory lives: host, or (EMBED_CUDA) device ------------------------------ */
#ifdef EMBED_CUDA
static void cuda_check(cudaError_t rc, const char *what)
{
    if (rc == cudaSuccess) return;
    fprintf(stderr, "embed_layer: %s: %s\n", what, cudaGetErrorString(rc));
    exit(2);
}

/* A device copy of n bytes of host memory (NULL stays NULL). */
static void *to_device(const void *host, size_t n)
{
    void *d = NULL;
    if (!host) return NULL;
    cuda_check(cudaMalloc(&d, n ? n : 1), "cudaMalloc");
    cuda_check(cudaMemcpy(d, host, n, cudaMemcpyHostToDevice), "cudaMemcpy to the GPU");
    return d;
}

static void to_host(void *host, const void *dev, size_t n)
{
    cuda_check(cudaMemcpy(host, dev, n, cudaMemcpyDeviceToHost), "cudaMemcpy from the GPU");
}
#endif

/* ---- the check ---------------------------------------------------------------------------------------- */
/* Routing against the reference, token by token: 0 same picks; 1 a near-tie (each differing pick's
 * two experts have reference logits within tie * max(1, |z|): a flip SEMANTICS.md section 4 allows,
 * after which the token's y legitimately differs); 2 a real difference. */
static int route_check(const int32_t *ids, const int32_t *ref, const float *z, int64_t k, double tie)
{
    int worst = 0;
    for (int64_t j = 0; j < k; j++) {
        if (ids[j] == ref[j]) continue;
        double za = z[ids[j]], zb = z[ref[j]];
        worst = fabs(za - zb) <= tie * fmax(1.0, fabs(zb)) ? (worst > 1 ? worst : 1) : 2;
    }
    return worst;
}

/* max |a - b| / max |b| over the rows whose skip flag is 0 */
static double rel_err(const float *a, const float *b, int64_t rows, size_t cols, const char *skip)
{
    double num = 0, den = 0;
    for (int64_t t = 0; t < rows; t++)
        for (size_t c = 0; c < cols && !(skip && skip[t]); c++) {
            num = fmax(num, fabs((double)a[t * cols + c] - b[t * cols + c]));
            den = fmax(den, fabs((double)b[t * cols + c]));
        }
    return den > 0 ? num / den : num;
}

/* Negate a tensor in place (flip every element's sign bit): f32 bit 31, bf16/f16 bit 15. */
static void negate(moepp_tensor *t)
{
    size_t n = 1, size = t->dtype == MOEPP_DTYPE_F32 ? 4 : 2;
    for (int d = 0; d < t->ndim; d++) n *= (size_t)t->shape[d];
    for (size_t j = 0; j < n; j++) ((unsigned char *)t->data)[j * size + size - 1] ^= 0x80;
}

int main(int argc, char **argv)
{
    const char *data = argc > 1 ? argv[1] : NULL, *mutate = "none";
    int threads = 2, host_weights = 0, in_place = 0;
    for (int a = 2; a < argc; a++) {
        if (strcmp(argv[a], "--threads") == 0 && a + 1 < argc) threads = atoi(argv[++a]);
        else if (strcmp(argv[a], "--mutate") == 0 && a + 1 < argc) mutate = argv[++a];
        else if (strcmp(argv[a], "--host-weights") == 0) host_weights = 1;
        else if (strcmp(argv[a], "--in-place") == 0) in_place = 1;
        else data = NULL;
    }
    if (!data) {
        fprintf(stderr, "usage: embed_layer DATA [--threads N] [--mutate none|weight|residual] [--host-weights] [--in-place]\n");
        return 2;
    }
    moepp_layer_info info;
    moepp_layer_get_info(&info);
#ifdef EMBED_CUDA
    int n_gpus = 0;
    if (info.backend != MOEPP_BACKEND_CUDA) {
        fprintf(stderr, "embed_layer: built for a CUDA build of the library, and this one is not\n");
        return 2;
    }
    if (cudaGetDeviceCount(&n_gpus) != cudaSuccess || n_gpus == 0) {
        printf("embed_layer: skipped: no usable GPU\n");
        return 77;
    }
    cudaStream_t stream;
    cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
#else
    void *stream = NULL;
    if (info.backend != MOEPP_BACKEND_CPU) {
        fprintf(stderr, "embed_layer: this is a CUDA build of the library: build the example with -DEMBED_CUDA\n");
        return 2;
    }
    (void)host_weights, (void)in_place;
#endif
    long long L = -1, T = 0;
    int with_residual = 0;
    char *text = read_file(data, "case.txt", NULL);
    Safetensors st;
    if (!text || sscanf(text, "layer %lld tokens %lld residual %d", &L, &T, &with_residual) != 3 ||
        !st_open(data, "w.safetensors", &st)) {
        fprintf(stderr, "embed_layer: cannot read the case in %s\n", data);
        return 2;
    }
    printf("library: one MoE layer of %s (D %lld, %lld experts, top-%lld, %s kernels, ABI %u)\n", info.spec_name,
           (long long)info.hidden, (long long)info.n_experts, (long long)info.top_k, info.isa, info.abi_version);

    /* the layer's weights, by the names the library asks for */
    moepp_tensor *tensors = calloc((size_t)info.n_tensors, sizeof *tensors);
    moepp_tensor_info ti;
    int64_t n = 0;
    for (int64_t i = 0; i < info.n_tensors; i++) {
        moepp_layer_tensor_info(L, i, &ti);
        tensors[n].name = strdup(ti.name);
        if (!st_find(&st, ti.name, &tensors[n])) {
            if (ti.required) fprintf(stderr, "embed_layer: %s is not in the checkpoint\n", ti.name);
            free((char *)tensors[n].name);
            continue;
        }
        if (strcmp(mutate, "weight") == 0 && strstr(ti.name, "down_proj")) negate(&tensors[n]);
#ifdef EMBED_CUDA
        if (!host_weights) { /* device memory, used in place by the library */
            size_t bytes = tensors[n].dtype == MOEPP_DTYPE_F32 ? 4 : 2;
            for (int d = 0; d < tensors[n].ndim; d++) bytes *= (size_t)tensors[n].shape[d];
            tensors[n].data = to_device(tensors[n].data, bytes);
            tensors[n].memory = MOEPP_MEMORY_DEVICE;
        }
#endif
        n++;
    }
    moepp_layer_desc desc;
    memset(&desc, 0, sizeof desc);
    desc.struct_size = sizeof desc;
    desc.abi_version = MOEPP_LAYER_ABI_VERSION;
    desc.layer_index = L;
    desc.tensors = tensors;
    desc.n_tensors = n;
    desc.n_threads = threads;
    moepp_layer *layer;
    moepp_status s = moepp_layer_create(&desc, &layer);
    if (s != MOEPP_OK) {
        fprintf(stderr, "embed_layer: %s\n  %s\n", moepp_status_string(s), moepp_last_error());
        return s == MOEPP_ERR_NO_DEVICE ? 77 : 1;
    }

    /* a workspace for T tokens, the inputs, one call */
    size_t ws_bytes = moepp_layer_workspace_size(layer, T);
    void *ws = aligned_alloc(64, (ws_bytes + 63) / 64 * 64);
    size_t D = (size_t)info.hidden, E = (size_t)info.n_experts, K = (size_t)info.top_k;
    float *x = read_file(data, "x.f32", NULL), *r_in = with_residual ? read_file(data, "residual_in.f32", NULL) : NULL;
    float *y_ref = read_file(data, "y.f32", NULL), *r_ref = read_file(data, "residual_out.f32", NULL);
    int32_t *ids_ref = read_file(data, "ids.i32", NULL);
    float *y = malloc((size_t)T * D * sizeof *y), *r_out = malloc((size_t)T * E * sizeof *r_out);
    if (!x || !y_ref || !r_ref || !ids_ref || (with_residual && !r_in)) {
        fprintf(stderr, "embed_layer: the case in %s is incomplete\n", data);
        return 2;
    }
    const float *r_pass = strcmp(mutate, "residual") == 0 ? NULL : r_in;
#ifdef EMBED_CUDA
    /* device copies of the inputs, device outputs (or, in place, the inputs themselves) */
    size_t x_bytes = (size_t)T * D * sizeof *x, r_bytes = (size_t)T * E * sizeof *r_out;
    void *ws_host = ws, *dx = to_device(x, x_bytes), *dr = to_device(r_pass, r_bytes), *dy, *dz;
    if (in_place) {
        dy = dx;
        if (!dr) cuda_check(cudaMalloc(&dr, r_bytes), "cudaMalloc");
        dz = dr;
    } else {
        cuda_check(cudaMalloc(&dy, x_bytes), "cudaMalloc");
        cuda_check(cudaMalloc(&dz, r_bytes), "cudaMalloc");
    }
    cuda_check(cudaMalloc(&ws, ws_bytes), "cudaMalloc (workspace)");
    s = moepp_layer_set_workspace(layer, ws, ws_bytes);
    if (s == MOEPP_OK) s = moepp_layer_forward(layer, dx, in_place && !r_pass ? NULL : dr, dy, dz, T, stream);
    if (s == MOEPP_OK) cuda_check(cudaStreamSynchronize(stream), "the layer on the GPU");
#else
    s = moepp_layer_set_workspace(layer, ws, ws_bytes);
    if (s == MOEPP_OK) s = moepp_layer_forward(layer, x, r_pass, y, r_out, T, stream);
#endif
    if (s != MOEPP_OK) {
        fprintf(stderr, "embed_layer: %s\n  %s\n", moepp_status_string(s), moepp_last_error());
        return 1;
    }

    /* against the reference */
    moepp_route_stats rs;
    s = moepp_layer_route_stats(layer, &rs);
    if (s != MOEPP_OK) {
        fprintf(stderr, "embed_layer: %s\n  %s\n", moepp_status_string(s), moepp_last_error());
        return 1;
    }
#ifdef EMBED_CUDA
    int32_t *ids_host = malloc((size_t)T * K * sizeof *ids_host);
    to_host(y, dy, x_bytes);
    to_host(r_out, dz, r_bytes);
    to_host(ids_host, rs.ids, (size_t)T * K * sizeof *ids_host);
    rs.ids = ids_host;
#endif
    double tol = info.weight_dtype == MOEPP_DTYPE_F32 ? 1e-4 : 2e-2;
    char *tied = calloc((size_t)T, 1);
    long n_tied = 0, n_wrong = 0;
    for (int64_t t = 0; t < T; t++) {
        int c = route_check(rs.ids + t * K, ids_ref + t * K, r_ref + t * E, (int64_t)K, tol);
        n_tied += (tied[t] = c == 1);
        n_wrong += c == 2;
    }
    double e_y = rel_err(y, y_ref, T, D, tied), e_r = rel_err(r_out, r_ref, T, E, NULL);
    printf("layer %lld, %lld tokens%s%s%s, %d threads: y max rel err %.3g, residual_out %.3g (tolerance %g); "
           "picks: %lld FFN, %lld constant, %lld copy, %lld zero; tokens routed otherwise: %ld on a near-tie "
           "(y not compared), %ld not\n", L, T, r_pass ? ", residual_in given" : "", in_place ? ", in place" : "",
           host_weights ? ", host weights" : "", threads, e_y, e_r, tol,
           (long long)rs.picks_ffn, (long long)rs.picks_const, (long long)rs.picks_copy, (long long)rs.picks_zero,
           n_tied, n_wrong);
    int ok = e_y <= tol && e_r <= tol && n_wrong == 0 && 4 * n_tied <= T;
    printf("%s\n", ok ? "MATCH: the library computes what moeppc's interpreter computes"
                      : "MISMATCH: the library's output differs from the reference");
    moepp_layer_destroy(layer);
#ifdef EMBED_CUDA
    cudaFree(dx), cudaFree(dr), cudaFree(ws);
    if (!in_place) cudaFree(dy), cudaFree(dz);
    for (int64_t i = 0; i < n; i++)
        if (tensors[i].memory == MOEPP_MEMORY_DEVICE) cudaFree((void *)tensors[i].data);
    cudaStreamDestroy(stream);
    free(ids_host);
    ws = ws_host;
#endif
    free(ws);
    for (int64_t i = 0; i < n; i++) free((char *)tensors[i].name);
    free(tensors);
    free(x), free(r_in), free(y), free(r_out), free(y_ref), free(r_ref), free(ids_ref), free(text), free(tied);
    free(st.file), free((char *)st.header);
    return ok ? 0 : 1;
}
