/* emit_lib.c — `moeppc emit SPEC --emit lib -o DIR`: one MoE layer of a spec as a library behind the C
 * ABI of embed/moepp_layer.h. The layer alone is lowered (ir_lower_moe_layer, for the spec's first MoE
 * layer: every MoE layer runs the same code on its own weights) and optimised for the CPU; its
 * kernels are generated as objects; a C file holding the planned IR, the kernel table and the tensor
 * list (embed/layer_image.h) is compiled; all of it and the runtime archive (moeppc_layer_rt) become
 * one relocatable object whose only global symbols are the ABI's, archived as libmoepp_layer.a and
 * linked as libmoepp_layer.so.1. DIR also gets moepp_layer.h (the ABI plus what this spec is),
 * moepp_layer.pc and the layer's IR. The system's cc, ar and objcopy do the linking. */
#include "codegen/llvm/cg_internal.h"
#include "embed/emit_lib_config.h"
#include "passes/passes.h"
#include "runtime/cpu/cpu.h"
#include "tools/build_config.h"
#include "tools/commands.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* The ABI's functions: the library's only global symbols. */
static const char *const exports[] = {
    "moepp_layer_create", "moepp_layer_forward", "moepp_layer_workspace_size", "moepp_layer_set_workspace",
    "moepp_layer_max_tokens", "moepp_layer_route_stats", "moepp_layer_destroy", "moepp_status_string",
    "moepp_last_error", "moepp_layer_get_info", "moepp_layer_tensor_info"};

#define GATE_MAP "mlp.moe.gate.gate_map.weight"

/* ---- the kernels, each written as DIR/kN.o while the JIT compiles it (as moeppc build does) ---- */
typedef struct {
    CgJit *jit;
    const char *dir;
    CpuKernelEntry *e;
    int n;
} Recorder;

static void record(Recorder *r, const char *sym, void *fn, bool is_gemm, const CgKernelConfig *cfg)
{
    r->e = xrealloc(r->e, (size_t)(r->n + 1) * sizeof *r->e);
    r->e[r->n++] = (CpuKernelEntry){xstrdup(sym), fn, is_gemm, cfg ? *cfg : (CgKernelConfig){0}};
}

static const CgKernel *rec_gemm(void *ctx, moe_dtype dt, int mr, int nr, RtError *err)
{
    Recorder *r = ctx;
    CgKernelConfig cfg = cg_kernel_config_tile(r->jit, dt, mr, nr);
    for (int k = 0; k < r->n; k++)
        if (r->e[k].is_gemm && r->e[k].cfg.b_dtype == dt && r->e[k].cfg.mr == cfg.mr && r->e[k].cfg.nr == cfg.nr)
            return cg_jit_kernel(r->jit, &cfg, NULL, err->msg, sizeof err->msg);
    char path[600];
    snprintf(path, sizeof path, "%s/k%d.o", r->dir, r->n);
    const CgKernel *g = cg_jit_kernel(r->jit, &cfg, path, err->msg, sizeof err->msg);
    if (g) record(r, g->symbol, (void *)g->fn, true, &cfg);
    return g;
}

static void *rec_op(void *ctx, const CgOpDesc *d, RtError *err)
{
    Recorder *r = ctx;
    char sym[256], path[600];
    cg_op_symbol(d, sym, sizeof sym);
    for (int k = 0; k < r->n; k++)
        if (!r->e[k].is_gemm && strcmp(r->e[k].symbol, sym) == 0) return r->e[k].fn;
    snprintf(path, sizeof path, "%s/k%d.o", r->dir, r->n);
    LLVMModuleRef mod = cg_ops_build(cg_jit_context(r->jit), d, cg_jit_target(r->jit)->vec_width, sym, err->msg,
                                     sizeof err->msg);
    void *fn = mod ? cg_jit_compile_module(r->jit, mod, sym, path, err->msg, sizeof err->msg) : NULL;
    if (fn) record(r, sym, fn, false, NULL);
    return fn;
}

/* ---- the generated image (embed/layer_image.h) ------------------------------------------------------ */

static void c_string(FILE *f, const char *text)
{
    fputc('"', f);
    for (const char *p = text; *p; p++) {
        if (*p == '\n') fputs(p[1] ? "\\n\"\n    \"" : "\\n", f);
        else if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if ((unsigned char)*p < 32 || (unsigned char)*p > 126) fprintf(f, "\\%03o", (unsigned char)*p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

/* The part of a param's tensor name after "model.layers.L." */
static const char *suffix_of(const IrValue *v, int64_t l)
{
    char prefix[64];
    int n = snprintf(prefix, sizeof prefix, "model.layers.%lld.", (long long)l);
    MOE_ASSERT(strncmp(v->tensor, prefix, (size_t)n) == 0);
    return v->tensor + n;
}

static void write_tensors(FILE *f, const IrModule *m, int64_t l)
{
    fprintf(f, "static const LayerTensor tensors[] = {\n");
    for (int k = 0; k < m->n_values; k++) {
        const IrValue *v = m->values[k];
        if (v->kind != IR_VAL_PARAM) continue;
        const char *suf = suffix_of(v, l);
        fprintf(f, "    {");
        c_string(f, suf);
        fprintf(f, ", (moe_dtype)%d, %d, {%lld, %lld}, %s},\n", (int)v->type.dtype, v->type.ndim,
                (long long)v->type.dims[0], (long long)(v->type.ndim > 1 ? v->type.dims[1] : 0),
                strcmp(suf, GATE_MAP) == 0 ? "false" : "true");
    }
    fprintf(f, "};\n\n");
}

static int count_params(const IrModule *m)
{
    int n = 0;
    for (int k = 0; k < m->n_values; k++) n += m->values[k]->kind == IR_VAL_PARAM;
    return n;
}

static bool write_image(const char *path, const ModelSpec *s, int64_t l, const IrModule *m, const Recorder *r,
                        const char *isa)
{
    FILE *f = fopen(path, "w");
    if (!f) return false;
    fprintf(f, "/* generated by moeppc %s emit --emit lib: one MoE layer of %s */\n#include \"embed/layer_image.h\"\n\n",
            MOEPPC_VERSION, s->name);
    char *ir = ir_print_string(m);
    fprintf(f, "static const char ir_text[] =\n    ");
    c_string(f, ir);
    fprintf(f, ";\n\n");
    free(ir);
    for (int k = 0; k < r->n; k++) fprintf(f, "extern void %s(void);\n", r->e[k].symbol);
    fprintf(f, "\nstatic const CpuKernelEntry kernels[] = {\n");
    for (int k = 0; k < r->n; k++) {
        const CgKernelConfig *c = &r->e[k].cfg;
        fprintf(f, "    {\"%s\", (void *)%s, %s, {(moe_dtype)%d, %d, %d, %d}},\n", r->e[k].symbol, r->e[k].symbol,
                r->e[k].is_gemm ? "true" : "false", (int)c->b_dtype, c->mr, c->nr, c->k_unroll);
    }
    fprintf(f, "};\n\n");
    write_tensors(f, m, l);
    fprintf(f, "const LayerImage moeppc_layer_image = {\n    .spec_name = ");
    c_string(f, s->name);
    fprintf(f, ",\n    .isa = \"%s\", .moeppc_version = \"%s\", .ir_text = ir_text, .layer = %lld,\n", isa,
            MOEPPC_VERSION, (long long)l);
    fprintf(f, "    .hidden = %lld, .n_experts = %lld, .n_ffn = %lld, .n_const = %lld, .n_copy = %lld, .n_zero = %lld,\n",
            (long long)s->hidden, (long long)spec_n_experts(s), (long long)s->n_ffn, (long long)s->n_const,
            (long long)s->n_copy, (long long)s->n_zero);
    fprintf(f, "    .top_k = %lld, .ffn_intermediate = %lld, .n_layers = %lld, .moe_every = %lld,\n",
            (long long)s->top_k, (long long)s->ffn_intermediate, (long long)s->n_layers, (long long)s->moe_every);
    fprintf(f, "    .dtype = (moe_dtype)%d, .gating_residual = %s,\n", (int)s->dtype, s->gating_residual ? "true" : "false");
    fprintf(f, "    .tensors = tensors, .n_tensors = %d, .kernels = kernels, .n_kernels = %d};\n", count_params(m), r->n);
    return fclose(f) == 0;
}

/* ---- linking --------------------------------------------------------------------------------------- */

static bool sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Run a shell command (printf-formatted); false with the command printed when it fails. */
static bool sh(const char *fmt, ...)
{
    char cmd[32768];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    MOE_ASSERT(n > 0 && n < (int)sizeof cmd);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "moeppc emit: error: command failed (exit %d): %s\n", WEXITSTATUS(rc), cmd);
    return rc == 0;
}

/* tmp/layer.o: the image, the kernels and what they need of the runtime, with only exports global. */
static bool link_object(const char *tmp, int n_kernels)
{
    StrBuf objs = {0}, undef = {0};
    for (int k = 0; k < n_kernels; k++) strbuf_printf(&objs, " '%s/k%d.o'", tmp, k);
    for (size_t k = 0; k < MOE_ARRAY_LEN(exports); k++) strbuf_printf(&undef, " -Wl,-u,%s", exports[k]);
    char syms[600];
    snprintf(syms, sizeof syms, "%s/exports.txt", tmp);
    FILE *f = fopen(syms, "w");
    for (size_t k = 0; f && k < MOE_ARRAY_LEN(exports); k++) fprintf(f, "%s\n", exports[k]);
    bool ok = f && fclose(f) == 0;
    ok = ok && sh("%s -c -fPIC -O2 -std=c11 -D_GNU_SOURCE -I'%s' '%s/image.c' -o '%s/image.o'", MOEPPC_CC,
                  MOEPPC_SOURCE_DIR, tmp, tmp);
    ok = ok && sh("%s -r -nostdlib -o '%s/all.o' '%s/image.o'%s%s '%s'", MOEPPC_CC, tmp, tmp, objs.s ? objs.s : "",
                  undef.s, MOEPPC_LAYER_RT);
    ok = ok && sh("'%s' --keep-global-symbols='%s' '%s/all.o' '%s/layer.o'", MOEPPC_OBJCOPY, syms, tmp, tmp);
    free(objs.s);
    free(undef.s);
    return ok;
}

/* Rename path.tmp to path; false with a message. */
static bool commit_file(const char *path)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (rename(tmp, path) == 0) return true;
    fprintf(stderr, "moeppc emit: error: cannot write '%s': %s\n", path, strerror(errno));
    unlink(tmp);
    return false;
}

/* DIR/libmoepp_layer.a and DIR/libmoepp_layer.so.1 with the link libmoepp_layer.so, each built under a
 * temporary name and renamed into place. */
static bool write_libraries(const char *tmp, const char *dir)
{
    char a[4200], so[4200], link[4200];
    snprintf(a, sizeof a, "%s/libmoepp_layer.a", dir);
    snprintf(so, sizeof so, "%s/libmoepp_layer.so.%d", dir, 1);
    snprintf(link, sizeof link, "%s/libmoepp_layer.so", dir);
    bool ok = sh("rm -f '%s.tmp' && '%s' rcs '%s.tmp' '%s/layer.o'", a, MOEPPC_AR, a, tmp) && commit_file(a);
    ok = ok && sh("%s -shared %s -Wl,-soname,libmoepp_layer.so.1 -Wl,--no-undefined -o '%s.tmp' '%s/layer.o' -lm -lpthread",
                  MOEPPC_CC, MOEPPC_LIB_FLAGS, so, tmp) && commit_file(so);
    if (!ok) { /* a failed step leaves no half-written library behind */
        char t[4300];
        snprintf(t, sizeof t, "%s.tmp", a), unlink(t);
        snprintf(t, sizeof t, "%s.tmp", so), unlink(t);
        return false;
    }
    unlink(link);
    if (symlink("libmoepp_layer.so.1", link) != 0) {
        fprintf(stderr, "moeppc emit: error: cannot link '%s': %s\n", link, strerror(errno));
        ok = false;
    }
    return ok;
}

/* ---- the header, the pkg-config file ------------------------------------------------------------- */

/* DIR/name := text, atomically, readable by everyone (like the libraries beside it). */
static bool write_text(const char *dir, const char *name, const char *text, size_t len)
{
    char path[4200], why[4400] = "";
    snprintf(path, sizeof path, "%s/%s", dir, name);
    bool ok = file_write_atomic(path, text, len, why, sizeof why) && chmod(path, 0644) == 0;
    if (!ok) fprintf(stderr, "moeppc emit: error: %s\n", why[0] ? why : strerror(errno));
    return ok;
}

static const char *dtype_macro(moe_dtype t)
{
    return t == DT_BF16 ? "MOEPP_DTYPE_BF16" : t == DT_F16 ? "MOEPP_DTYPE_F16" : "MOEPP_DTYPE_F32";
}

/* What this copy of the header was emitted for: the spec's numbers as macros, its tensors listed. */
static void spec_block(StrBuf *b, const ModelSpec *s, int64_t l, const IrModule *m, const char *isa)
{
    strbuf_printf(b, "/* ---- this copy: emitted by moeppc %s for spec \"%s\", kernels for %s -------------------------- */\n",
                  MOEPPC_VERSION, s->name, isa);
    strbuf_printf(b, "#define MOEPP_LAYER_SPEC_NAME \"%s\"\n", s->name);
    strbuf_printf(b, "#define MOEPP_LAYER_HIDDEN %lld\n#define MOEPP_LAYER_N_EXPERTS %lld\n", (long long)s->hidden,
                  (long long)spec_n_experts(s));
    strbuf_printf(b, "#define MOEPP_LAYER_N_FFN %lld\n#define MOEPP_LAYER_N_CONST %lld\n#define MOEPP_LAYER_N_COPY %lld\n"
                  "#define MOEPP_LAYER_N_ZERO %lld\n", (long long)s->n_ffn, (long long)s->n_const, (long long)s->n_copy,
                  (long long)s->n_zero);
    strbuf_printf(b, "#define MOEPP_LAYER_TOP_K %lld\n#define MOEPP_LAYER_FFN_INTERMEDIATE %lld\n", (long long)s->top_k,
                  (long long)s->ffn_intermediate);
    strbuf_printf(b, "#define MOEPP_LAYER_N_LAYERS %lld\n#define MOEPP_LAYER_MOE_EVERY %lld\n", (long long)s->n_layers,
                  (long long)s->moe_every);
    strbuf_printf(b, "#define MOEPP_LAYER_WEIGHT_DTYPE %s\n#define MOEPP_LAYER_GATING_RESIDUAL %d\n", dtype_macro(s->dtype),
                  s->gating_residual ? 1 : 0);
    strbuf_printf(b, "/* router: %d layer%s, gating %s%s, input scale s = %g;\n * the tensors of MoE layer l, in moepp_layer_tensor_info's order:\n",
                  s->router_layers, s->router_layers > 1 ? "s (W2 * tanh(W1 * x))" : " (W * x)",
                  s->gating == GATING_SOFTMAX_TOPK ? "softmax_topk" : "topk_softmax",
                  s->logits_norm ? ", logits normalised" : "", spec_input_scale(s));
    for (int k = 0; k < m->n_values; k++) {
        const IrValue *v = m->values[k];
        if (v->kind != IR_VAL_PARAM) continue;
        const char *suf = suffix_of(v, l);
        strbuf_printf(b, " *   model.layers.{l}.%-50s %s [%lld", suf, dtype_name(v->type.dtype), (long long)v->type.dims[0]);
        if (v->type.ndim > 1) strbuf_printf(b, ", %lld", (long long)v->type.dims[1]);
        strbuf_printf(b, "]%s\n", strcmp(suf, GATE_MAP) == 0 ? "  (optional)" : "");
    }
    strbuf_printf(b, " */");
}

static bool write_header(const char *dir, const ModelSpec *s, int64_t l, const IrModule *m, const char *isa)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/embed/moepp_layer.h", MOEPPC_SOURCE_DIR);
    size_t len;
    char *tmpl = file_read_all(path, &len);
    const char *marker = "/* @MOEPP_LAYER_SPEC@ */";
    char *at = tmpl ? strstr(tmpl, marker) : NULL;
    if (!at) {
        fprintf(stderr, "moeppc emit: error: cannot read the header template '%s'%s\n", path, tmpl ? " (no marker)" : "");
        free(tmpl);
        return false;
    }
    StrBuf b = {0};
    strbuf_printf(&b, "%.*s", (int)(at - tmpl), tmpl);
    spec_block(&b, s, l, m, isa);
    strbuf_printf(&b, "%s", at + strlen(marker));
    bool ok = write_text(dir, "moepp_layer.h", b.s, b.len);
    free(b.s);
    free(tmpl);
    return ok;
}

static bool write_pc(const char *dir, const ModelSpec *s, const char *isa)
{
    const char *san = MOEPPC_LIB_FLAGS;
    StrBuf b = {0};
    strbuf_printf(&b, "# moepp_layer: one MoE layer of %s (moeppc %s emit --emit lib); PKG_CONFIG_PATH=%s\n", s->name,
                  MOEPPC_VERSION, dir);
    strbuf_printf(&b, "prefix=${pcfiledir}\nlibdir=${prefix}\nincludedir=${prefix}\n");
    strbuf_printf(&b, "# static linking: cc app.c $(pkg-config --cflags moepp_layer) $(pkg-config --variable=static_libs moepp_layer)\n");
    strbuf_printf(&b, "static_libs=${libdir}/libmoepp_layer.a -lm -lpthread%s%s\n\n", *san ? " " : "", san);
    strbuf_printf(&b, "Name: moepp_layer\nDescription: one MoE++ layer of %s behind the moepp_layer.h C ABI (%s kernels)\n",
                  s->name, isa);
    strbuf_printf(&b, "Version: %d.0.0\nCflags: -I${includedir}%s%s\nLibs: -L${libdir} -lmoepp_layer%s%s\n", 1,
                  *san ? " " : "", san, *san ? " " : "", san);
    strbuf_printf(&b, "Libs.private: -lm -lpthread\n");
    bool ok = write_text(dir, "moepp_layer.pc", b.s, b.len);
    free(b.s);
    return ok;
}

/* ---- the command ------------------------------------------------------------------------------------ */

static void remove_temps(const char *tmp, int n_kernels)
{
    static const char *const files[] = {"image.c", "image.o", "all.o", "layer.o", "exports.txt"};
    char p[600];
    for (int k = 0; k < n_kernels; k++) {
        snprintf(p, sizeof p, "%s/k%d.o", tmp, k);
        unlink(p);
    }
    for (size_t k = 0; k < MOE_ARRAY_LEN(files); k++) {
        snprintf(p, sizeof p, "%s/%s", tmp, files[k]);
        unlink(p);
    }
    rmdir(tmp);
}

/* The spec's first MoE layer, lowered alone and optimised for the CPU. */
static IrModule *layer_module(const ModelSpec *s, const char *spec_path, int64_t l, const struct TuneDb *tuning)
{
    IrModule *m = ir_lower_moe_layer(s, l);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true, .tuning = tuning};
    Diag d = {stderr, spec_path, 0};
    MOE_ASSERT(passes_run(m, &po, &d));
    return m;
}

static bool write_ir(const char *dir, const IrModule *m)
{
    char *text = ir_print_string(m);
    bool ok = write_text(dir, "moepp_layer.ir", text, strlen(text));
    free(text);
    return ok;
}

int emit_lib(const char *spec_path, const char *dir, const struct TuneDb *tuning)
{
    ModelSpec s;
    if (!load_spec(spec_path, &s)) return 1;
    int64_t l = s.moe_every - 1;
    if (l >= s.n_layers) {
        fprintf(stderr, "moeppc emit: error: %s has no MoE layer (%lld layers, MoE every %lld)\n", spec_path,
                (long long)s.n_layers, (long long)s.moe_every);
        return 1;
    }
    IrModule *m = layer_module(&s, spec_path, l, tuning);
    char tmp[] = "/tmp/moeppc-libXXXXXX", image[600];
    RtError err = {{0}};
    Recorder rec = {.dir = mkdtemp(tmp)};
    bool ok = rec.dir && (rec.jit = cg_jit_new(CG_ISA_AUTO, err.msg, sizeof err.msg)) != NULL;
    CpuKernelSource ks = {&rec, rec_gemm, rec_op};
    ok = ok && cpu_request_kernels(m, &ks, &err);
    if (!ok) fprintf(stderr, "moeppc emit: error: %s\n", err.msg[0] ? err.msg : strerror(errno));
    const char *isa = ok ? cg_isa_name(cg_jit_target(rec.jit)->isa) : "";
    snprintf(image, sizeof image, "%s/image.c", tmp);
    ok = ok && write_image(image, &s, l, m, &rec, isa) && link_object(tmp, rec.n) && write_libraries(tmp, dir) &&
         write_header(dir, &s, l, m, isa) && write_pc(dir, &s, isa) && write_ir(dir, m);
    if (ok)
        printf("wrote %s: moepp_layer.h, libmoepp_layer.a, libmoepp_layer.so, moepp_layer.pc (one MoE layer of %s, "
               "%d kernels for %s)\n", dir, s.name, rec.n, isa);
    if (rec.dir) remove_temps(tmp, rec.n);
    for (int k = 0; k < rec.n; k++) free((char *)rec.e[k].symbol);
    free(rec.e);
    cg_jit_free(rec.jit);
    ir_module_free(m);
    return ok ? 0 : 1;
}
