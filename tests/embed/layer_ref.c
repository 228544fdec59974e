/* layer_ref.c — the reference the embedding examples check themselves against: one MoE layer of a
 * spec, on the weights of a safetensors file, run by the interpreter on the layer's dense form (f64;
 * SEMANTICS.md written out op by op), for seeded random inputs.
 *
 *   embed_layer_ref SPEC WEIGHTS LAYER T SEED OUTDIR [--no-residual]
 *
 * writes OUTDIR/case.txt ("layer L", "tokens T", "residual 0|1"), x.f32 [T, D], residual_in.f32
 * [T, E] (when the layer gets one), and the expected y.f32 [T, D], residual_out.f32 [T, E], ids.i32
 * [T, k], weights.f32 [T, k]: raw little-endian, row-major. --no-residual: the first MoE layer's call
 * (no residual_in; the reference runs with r = 0, which Wg maps to exactly 0). */
#include "ir/ir.h"

#include <stdlib.h>
#include <string.h>

static bool write_raw(const char *dir, const char *name, const void *data, size_t bytes)
{
    char path[4096], why[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (file_write_atomic(path, data, bytes, why, sizeof why)) return true;
    fprintf(stderr, "embed_layer_ref: error: %s\n", why);
    return false;
}

static bool write_f32(const char *dir, const char *name, const EvalTensor *t, bool as_int)
{
    int64_t n = ir_type_numel(&t->type, 1);
    void *buf = xmalloc((size_t)n * 4);
    for (int64_t j = 0; j < n; j++) {
        if (as_int) ((int32_t *)buf)[j] = (int32_t)t->data[j];
        else ((float *)buf)[j] = (float)t->data[j];
    }
    bool ok = write_raw(dir, name, buf, (size_t)n * 4);
    free(buf);
    return ok;
}

static void fill(float *p, int64_t n, moe_rng *r, double scale)
{
    for (int64_t j = 0; j < n; j++) p[j] = (float)(scale * (2.0 * rng_uniform(r) - 1.0));
}

int main(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: embed_layer_ref SPEC WEIGHTS LAYER T SEED OUTDIR [--no-residual]\n");
        return 2;
    }
    bool residual = !(argc > 7 && strcmp(argv[7], "--no-residual") == 0);
    int64_t l = atoll(argv[3]), T = atoll(argv[4]);
    const char *dir = argv[6];
    ModelSpec s;
    Diag d = {stderr, argv[1], 0};
    if (!spec_load_file(argv[1], &s, &d)) return 1;
    if (l < 0 || l >= s.n_layers || !spec_layer_is_moe(&s, l) || T < 1) {
        fprintf(stderr, "embed_layer_ref: error: layer %lld is not an MoE layer of %s, or T < 1\n", (long long)l, s.name);
        return 1;
    }
    WeightSet *w;
    RtError err = {{0}};
    if (!weights_open(argv[2], &w, &err)) {
        fprintf(stderr, "embed_layer_ref: error: %s\n", err.msg);
        return 1;
    }
    residual = residual && s.gating_residual;
    int64_t D = s.hidden, E = spec_n_experts(&s);
    float *x = xmalloc((size_t)(T * D) * sizeof *x), *r = xcalloc((size_t)(T * E), sizeof *r);
    moe_rng rng;
    rng_seed(&rng, (uint64_t)atoll(argv[5]));
    fill(x, T * D, &rng, 1.7); /* about unit RMS, as an RMSNorm output */
    if (residual) fill(r, T * E, &rng, 2.0);
    IrModule *m = ir_lower_moe_layer(&s, l);
    EvalInput in[2] = {{"x", x}, {"r", r}};
    EvalResult ref;
    bool ok = ir_eval_inputs(m, w, in, s.gating_residual ? 2 : 1, T, EVAL_F64, &ref, &err);
    if (!ok) fprintf(stderr, "embed_layer_ref: error: %s\n", err.msg);
    char text[128], ids[64], wts[64];
    snprintf(text, sizeof text, "layer %lld\ntokens %lld\nresidual %d\n", (long long)l, (long long)T, residual);
    snprintf(ids, sizeof ids, "route.%lld.ids", (long long)l);
    snprintf(wts, sizeof wts, "route.%lld.weights", (long long)l);
    ok = ok && write_raw(dir, "case.txt", text, strlen(text)) &&
         write_raw(dir, "x.f32", x, (size_t)(T * D) * sizeof *x) &&
         (!residual || write_raw(dir, "residual_in.f32", r, (size_t)(T * E) * sizeof *r)) &&
         write_f32(dir, "y.f32", eval_output(&ref, "y"), false) &&
         write_f32(dir, "residual_out.f32", eval_output(&ref, "residual"), false) &&
         write_f32(dir, "ids.i32", eval_output(&ref, ids), true) && write_f32(dir, "weights.f32", eval_output(&ref, wts), false);
    if (ok) printf("reference for layer %lld of %s, T = %lld%s: %s\n", (long long)l, s.name, (long long)T,
                   residual ? " with residual_in" : "", dir);
    ir_eval_result_free(&ref);
    ir_module_free(m);
    weights_close(w);
    free(x);
    free(r);
    return ok ? 0 : 1;
}
