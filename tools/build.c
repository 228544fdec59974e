/* build.c — `moeppc build SPEC -o MODEL`: one self-contained executable; and `moeppc emit`, which
 * writes the same kernels as files (objects, LLVM IR, or CUDA C / PTX / cubin through emit_cuda.c). The spec is lowered and
 * optimised for the CPU backend, every kernel it needs is generated through the LLVM C API and
 * written as an object file, and a small C main embedding the spec and the planned IR is linked with
 * them and the runtime (libmoeppc_driver, libmoeppc_core) by the system's C compiler. */
#include "codegen/llvm/cg_internal.h"
#include "passes/passes.h"
#include "passes/tuning.h"
#include "runtime/cpu/cpu.h"
#include "tools/build_config.h"
#include "tools/commands.h"
#include "tools/help.h"
#include "tools/recorder.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef MOEPPC_HAVE_CUDA
#include "runtime/cuda/cuda_exec.h"

/* The CUDA kernels of the module, compiled for arch: cubin for it and PTX for newer GPUs. */
typedef struct {
    CudaKernelCode *code;
    CgCudaBinary *bin;
    int n;
} GpuKernels;

static bool gpu_kernels(const IrModule *m, const char *arch, const char *const sched[4], GpuKernels *g, RtError *err)
{
    *g = (GpuKernels){0};
    CudaOptions o = {.images_arch = arch, .tile_sched = {sched[0], sched[1], sched[2], sched[3]}};
    if (!cuda_module_kernels(m, &o, &g->code, &g->n, err)) return false;
    g->bin = xcalloc((size_t)g->n + 1, sizeof *g->bin);
    if (cuda_compile_kernels(g->code, g->n, arch, true, true, g->bin, err->msg, sizeof err->msg)) {
        cuda_warn_serialized(g->code, g->bin, g->n);
        return true;
    }
    free(g->bin);
    g->bin = NULL;
    return false;
}

static void gpu_kernels_free(GpuKernels *g)
{
    for (int k = 0; g->bin && k < g->n; k++) cg_cuda_binary_free(&g->bin[k]);
    free(g->bin);
    cuda_kernel_code_free(g->code, g->n);
}

void write_cuda_images(FILE *f, const CudaKernelCode *code, const CgCudaBinary *bin, int n, const char *table)
{
    for (int k = 0; k < n; k++) {
        fprintf(f, "static const char cubin%d[] =\n", k);
        write_c_bytes(f, bin[k].cubin, bin[k].cubin_len);
        fputs(";\n", f);
        if (!bin[k].ptx) continue; /* arch emu: the emulator's object only */
        fprintf(f, "static const char ptx%d[] =\n", k);
        write_c_bytes(f, (const unsigned char *)bin[k].ptx, bin[k].ptx_len + 1);
        fputs(";\n", f);
    }
    fprintf(f, "\nstatic const CudaKernelImage %s[] = {\n", table);
    for (int k = 0; k < n; k++) {
        char ptx[32] = "NULL";
        if (bin[k].ptx) snprintf(ptx, sizeof ptx, "ptx%d", k);
        fprintf(f, "    {\"%s\", (const unsigned char *)cubin%d, sizeof cubin%d - 1, %s},\n", code[k].symbol, k, k, ptx);
    }
    fprintf(f, "};\n");
}

static void write_gpu_table(FILE *f, const GpuKernels *g, const char *arch)
{
    write_cuda_images(f, g->code, g->bin, g->n, "gpu_table");
    fprintf(f, "static const char gpu_arch[] = \"%s\";\n\n", arch);
}
#else
typedef struct {
    int n;
} GpuKernels;
#endif

bool recorder_compile(Recorder *r, const IrModule *m, RtError *err)
{
    CpuKernelList l;
    bool ok = cpu_kernel_list(r->jit, m, &l, err);
    char **paths = xcalloc((size_t)l.n + 1, sizeof *paths);
    for (int k = 0; ok && !r->no_objects && k < l.n; k++) {
        StrBuf p = {0};
        if (r->by_symbol) strbuf_printf(&p, "%s/%s.o", r->dir, l.jobs[k].symbol);
        else strbuf_printf(&p, "%s/k%d.o", r->dir, k);
        l.jobs[k].obj_path = paths[k] = p.s;
    }
    ok = ok && cg_jit_emit_many(r->jit, l.jobs, l.n, cpu_jit_threads(), err->msg, sizeof err->msg);
    r->e = xcalloc((size_t)l.n + 1, sizeof *r->e);
    for (int k = 0; k < l.n; k++) {
        if (ok) r->e[r->n++] = (CpuKernelEntry){xstrdup(l.jobs[k].symbol), NULL, l.jobs[k].gemm, l.jobs[k].cfg};
        else if (paths[k]) unlink(paths[k]); /* nothing half-written */
        free(paths[k]);
    }
    free(paths);
    cpu_kernel_list_free(&l);
    return ok;
}

void recorder_free(Recorder *r)
{
    for (int k = 0; k < r->n; k++) free((char *)r->e[k].symbol);
    free(r->e);
    cg_jit_free(r->jit);
    *r = (Recorder){0};
}

void write_kernel_table(FILE *f, const Recorder *r, const char *name)
{
    for (int k = 0; k < r->n; k++) fprintf(f, "extern void %s(void);\n", r->e[k].symbol);
    fprintf(f, "\nstatic const CpuKernelEntry %s[] = {\n", name);
    for (int k = 0; k < r->n; k++) {
        const CgKernelConfig *c = &r->e[k].cfg;
        fprintf(f, "    {\"%s\", (void *)%s, %s, {(moe_dtype)%d, %d, %d, %d, %s, %s, %s}},\n", r->e[k].symbol,
                r->e[k].symbol, r->e[k].is_gemm ? "true" : "false", (int)c->b_dtype, c->mr, c->nr, c->k_unroll,
                c->a_bf16 ? "true" : "false", c->amx ? "true" : "false", c->kpair_b ? "true" : "false");
    }
    fprintf(f, "};\n\n");
}

void write_c_literal(FILE *f, const char *text)
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

void write_c_bytes(FILE *f, const unsigned char *p, size_t n)
{
    fputs("    \"", f);
    for (size_t i = 0; i < n; i++) {
        fprintf(f, "\\%o", p[i]);
        if (i % 40 == 39 && i + 1 < n) fputs("\"\n    \"", f);
    }
    fputs("\"", f);
}

/* text as a C string literal, one source line per text line */
static void write_c_string(FILE *f, const char *name, const char *text)
{
    fprintf(f, "static const char %s[] =\n    ", name);
    write_c_literal(f, text);
    fputs(";\n\n", f);
}

static bool write_main(const char *path, const char *spec_text, const char *ir_text, const Recorder *r,
                       const GpuKernels *gpu, const char *arch, const char *const sched[4])
{
    FILE *f = fopen(path, "w");
    if (!f) return false;
    fprintf(f, "/* generated by moeppc %s: the main of a compiled model */\n#include \"runtime/cpu/driver.h\"\n\n",
            MOEPPC_VERSION);
#ifdef MOEPPC_HAVE_CUDA
    if (gpu) write_gpu_table(f, gpu, arch);
#else
    (void)arch;
#endif
    write_c_string(f, "spec_text", spec_text);
    write_c_string(f, "ir_text", ir_text);
    write_kernel_table(f, r, "table");
    const CgTarget *t = cg_jit_target(r->jit);
    fprintf(f, "/* the CPU the kernels were compiled for, checked at start (a kernel would die of an illegal\n"
               " * instruction on a CPU without the extensions) */\n");
    write_c_string(f, "cpu_name", t->cpu);
    write_c_string(f, "cpu_features", t->features);
    char *vf = cg_vector_features(t->features, t->isa);
    write_c_string(f, "cpu_vector_features", vf);
    free(vf);
    fprintf(f, "static CpuKernelSource *kernels(RtError *err)\n{\n"
               "    return cpu_table_source_checked(table, %d, cpu_name, cpu_features, err);\n}\n\n", r->n);
    fprintf(f, "int main(int argc, char **argv)\n{\n"
               "    DriverConfig cfg = {.prog = argv[0], .spec_text = spec_text, .ir_text = ir_text, .default_cpu = true,\n"
               "                        .kernels_new = kernels, .kernels_free = cpu_table_source_free,\n"
               "                        .built_by = \"moeppc %s\", .cpu_name = cpu_name,\n"
               "                        .cpu_features = cpu_features, .cpu_vector_features = cpu_vector_features,\n"
               "                        .n_cpu_kernels = %d};\n",
            MOEPPC_VERSION, r->n);
    if (gpu)
        fprintf(f, "    cfg.cuda = &cuda_backend; /* --device cuda: the kernels above, no compiler at run time */\n"
                   "    cfg.cuda_images = gpu_table;\n    cfg.n_cuda_images = %d;\n    cfg.cuda_arch = gpu_arch;\n"
                   "    /* the grouped GEMMs' tiles, attention's and the router's forms built in, by token count\n"
                   "     * (a GPU tuning database's; NULL: the rule's) */\n"
                   "    static const char *const tile_sched[4] = {",
                gpu->n);
    for (int k = 0; gpu && k < 4; k++)
        fprintf(f, sched[k] ? "%s\"%s\"" : "%sNULL", k ? ", " : "", sched[k]);
    if (gpu) fprintf(f, "};\n    cfg.cuda_tile_sched = tile_sched;\n");
    fprintf(f, "    return driver_main(argc, argv, &cfg);\n}\n");
    return fclose(f) == 0;
}

/* cc main.c k*.o runtime libraries -o out: the system C compiler does the linking (with the CUDA
 * executor and the driver API loader for a GPU target: no NVRTC, no libcuda at link time). */
static bool link_model(const char *dir, int n_obj, const char *out, bool gpu)
{
    char cmd[16384];
    int len = snprintf(cmd, sizeof cmd, "%s %s -O2 -std=c11 -I'%s' '%s/main.c'", MOEPPC_CC, MOEPPC_LINK_FLAGS,
                       MOEPPC_SOURCE_DIR, dir);
    for (int k = 0; k < n_obj && len < (int)sizeof cmd - 600; k++) len += snprintf(cmd + len, sizeof cmd - (size_t)len, " '%s/k%d.o'", dir, k);
#ifdef MOEPPC_CUDA_LINK_LIBS
    if (gpu) len += snprintf(cmd + len, sizeof cmd - (size_t)len, " %s", MOEPPC_CUDA_LINK_LIBS);
#else
    (void)gpu;
#endif
    snprintf(cmd + len, sizeof cmd - (size_t)len, " %s -ldl -o '%s'", MOEPPC_LINK_LIBS, out);
    int rc = system(cmd);
    if (rc != 0) fprintf(stderr, "moeppc build: error: linking failed (exit %d): %s\n", WEXITSTATUS(rc), cmd);
    return rc == 0;
}

static void remove_dir(const char *dir, int n_obj)
{
    char p[600];
    for (int k = 0; k < n_obj; k++) {
        snprintf(p, sizeof p, "%s/k%d.o", dir, k);
        unlink(p);
    }
    snprintf(p, sizeof p, "%s/main.c", dir);
    unlink(p);
    rmdir(dir);
}

static int build(const char *spec_path, const char *out, bool keep, const TuneDb *tuning, const TuneDb *gpu_db,
                 const char *arch)
{
    ModelSpec s;
    if (!load_spec(spec_path, &s)) return 1;
    char *spec_text = spec_yaml_text(spec_path, &s); /* what the executable embeds */
    if (!spec_text) {
        fprintf(stderr, "moeppc build: error: cannot read %s: %s\n", spec_path, strerror(errno));
        return 1;
    }
    IrModule *m = ir_lower_spec(&s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true, .tuning = tuning};
    cpu_host_pass_options(&po);
    Diag d = {stderr, spec_path, 0};
    MOE_ASSERT(passes_run(m, &po, &d));
    char dir[] = "/tmp/moeppc-buildXXXXXX", tmp_out[4096];
    RtError err = {{0}};
    Recorder rec = {.dir = mkdtemp(dir)};
    bool ok = rec.dir && (rec.jit = cg_jit_new(CG_ISA_AUTO, err.msg, sizeof err.msg)) != NULL;
    ok = ok && recorder_compile(&rec, m, &err);
    if (!ok) fprintf(stderr, "moeppc build: error: %s\n", err.msg[0] ? err.msg : strerror(errno));
    char *ir_text = ir_print_string(m), main_c[600];
    snprintf(main_c, sizeof main_c, "%s/main.c", dir);
    snprintf(tmp_out, sizeof tmp_out, "%s.tmp", out);
    GpuKernels gpu = {0};
    const char *sched[4] = {NULL, NULL, NULL, NULL};
    if (gpu_db && tune_db_gpu_schedules(gpu_db, m, sched, &m->arena) == 0)
        fprintf(stderr, "moeppc build: warning: the GPU database has no entry for this model's grouped GEMMs, "
                        "attention or router; the rule's kernels are built\n");
#ifdef MOEPPC_HAVE_CUDA
    if (ok && arch) {
        ok = gpu_kernels(m, arch, sched, &gpu, &err);
        if (!ok) fprintf(stderr, "moeppc build: error: %s\n", err.msg);
    }
#endif
    ok = ok && write_main(main_c, spec_text, ir_text, &rec, arch ? &gpu : NULL, arch, sched) &&
         link_model(dir, rec.n, tmp_out, arch != NULL);
    if (ok && rename(tmp_out, out) != 0) {
        fprintf(stderr, "moeppc build: error: cannot write '%s': %s\n", out, strerror(errno));
        ok = false;
    }
    if (!ok) unlink(tmp_out);
    if (ok) printf("wrote %s: %d kernels for %s (%s), IR of %d values embedded\n", out, rec.n,
                   cg_jit_target(rec.jit)->cpu, cg_isa_name(cg_jit_target(rec.jit)->isa), m->n_values);
    if (ok && arch) printf("  and %d CUDA kernels for %s (cubin, and PTX for newer GPUs): run it with --device cuda\n", gpu.n, arch);
#ifdef MOEPPC_HAVE_CUDA
    gpu_kernels_free(&gpu);
#endif
    if (keep) printf("kept the intermediate files in %s\n", dir);
    else if (rec.dir) remove_dir(dir, rec.n);
    recorder_free(&rec);
    free(ir_text);
    free(spec_text);
    ir_module_free(m);
    return ok ? 0 : 1;
}

int cmd_build(int argc, char **argv)
{
    const char *spec = NULL, *out = NULL, *tuning = NULL, *arch = NULL;
    bool keep = false;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "-o") == 0 && a + 1 < argc) out = argv[++a];
        else if (strcmp(argv[a], "--keep-temps") == 0) keep = true;
        else if (strcmp(argv[a], "--tuning") == 0 && a + 1 < argc) tuning = argv[++a];
        else if (strcmp(argv[a], "--target") == 0 && a + 1 < argc) {
            const char *t = argv[++a];
            static const char *const gpus[] = {"sm_80", "sm_86", "sm_89", "sm_90"};
            arch = NULL;
            for (size_t g = 0; g < MOE_ARRAY_LEN(gpus); g++)
                if (strcmp(t, gpus[g]) == 0) arch = gpus[g];
            if (strcmp(t, "cpu") != 0 && !arch)
                return usage_error("build", BUILD_USAGE, "--target: expected cpu, sm_80, sm_86, sm_89 or sm_90, found '%s'", t);
#ifndef MOEPPC_HAVE_CUDA
            if (arch) {
                fprintf(stderr, "moeppc build: error: --target %s: this moeppc was built without the CUDA toolkit's NVRTC\n", t);
                return 1;
            }
#endif
        } else if (argv[a][0] == '-') return usage_error("build", BUILD_USAGE, "unknown or incomplete option '%s'", argv[a]);
        else if (!spec) spec = argv[a];
        else return usage_error("build", BUILD_USAGE, "unexpected argument '%s'", argv[a]);
    }
    if (!spec) return usage_error("build", BUILD_USAGE, "%s", "missing SPEC");
    if (!out) return usage_error("build", BUILD_USAGE, "%s", "missing -o MODEL");
    char why[512];
    if (!file_can_write(out, why, sizeof why)) { /* said before the compile, not by the linker after it */
        fprintf(stderr, "moeppc build: error: %s\n", why);
        return 1;
    }
    TuneDb db = {0}, gpu_db = {0};
    bool gpu = false;
    if (tuning && !tuning_load_gpu_or_host(tuning, arch, &db, &gpu)) return 1;
    if (gpu) gpu_db = db, db = (TuneDb){0};
    int rc = build(spec, out, keep, tuning && !gpu ? &db : NULL, gpu ? &gpu_db : NULL, arch);
    tune_db_free(&db);
    tune_db_free(&gpu_db);
    return rc;
}

/* ---- moeppc emit ---------------------------------------------------------------------------------- */

/* Every CPU kernel of the spec into dir: objects named by symbol, or the optimised LLVM IR; plus
 * kernels.txt, one symbol per line (GEMM kernels with their tile). */
static int emit_cpu(const char *spec_path, const char *dir, bool llvm, const TuneDb *tuning)
{
    ModelSpec s;
    if (!load_spec(spec_path, &s)) return 1;
    IrModule *m = ir_lower_spec(&s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU, .codegen = true, .tuning = tuning};
    cpu_host_pass_options(&po);
    Diag d = {stderr, spec_path, 0};
    MOE_ASSERT(passes_run(m, &po, &d));
    RtError err = {{0}};
    Recorder rec = {.dir = dir, .by_symbol = true, .no_objects = llvm};
    bool ok = (rec.jit = cg_jit_new(CG_ISA_AUTO, err.msg, sizeof err.msg)) != NULL;
    if (ok && llvm) cg_jit_dump_ir(rec.jit, dir);
    ok = ok && recorder_compile(&rec, m, &err);
    char list[4096];
    snprintf(list, sizeof list, "%s/kernels.txt", dir);
    FILE *f = ok ? fopen(list, "w") : NULL;
    for (int k = 0; f && k < rec.n; k++)
        fprintf(f, "%s%s\n", rec.e[k].symbol, rec.e[k].is_gemm ? "  (GEMM micro-kernel)" : "");
    if (f) ok = fclose(f) == 0 && ok;
    else if (ok) snprintf(err.msg, sizeof err.msg, "cannot write %s", list), ok = false;
    if (!ok) fprintf(stderr, "moeppc emit: error: %s\n", err.msg);
    else printf("wrote %d kernels (%s) and kernels.txt to %s\n", rec.n, llvm ? "LLVM IR, .ll" : "objects, .o", dir);
    recorder_free(&rec);
    ir_module_free(m);
    return ok ? 0 : 1;
}

int cmd_emit(int argc, char **argv)
{
    const char *spec = NULL, *dir = NULL, *kind = NULL, *target = NULL, *tuning = NULL;
    for (int a = 1; a < argc; a++) {
        const char *o = argv[a], *v = a + 1 < argc ? argv[a + 1] : NULL;
        if (o[0] == '-' && !v) return usage_error("emit", EMIT_USAGE, "option '%s' needs a value", o);
        if (strcmp(o, "--emit") == 0) kind = v, a++;
        else if (strcmp(o, "-o") == 0) dir = v, a++;
        else if (strcmp(o, "--target") == 0) target = v, a++;
        else if (strcmp(o, "--tuning") == 0) tuning = v, a++;
        else if (o[0] == '-') return usage_error("emit", EMIT_USAGE, "unknown option '%s'", o);
        else if (!spec) spec = o;
        else return usage_error("emit", EMIT_USAGE, "unexpected argument '%s'", o);
    }
    if (!spec || !dir || !kind) return usage_error("emit", EMIT_USAGE, "%s", "give SPEC, --emit KIND and -o DIR");
    bool lib = strcmp(kind, "lib") == 0, cpu = lib || strcmp(kind, "llvm") == 0 || strcmp(kind, "obj") == 0;
    bool gpu = strcmp(kind, "cuda") == 0 || strcmp(kind, "ptx") == 0 || strcmp(kind, "cubin") == 0;
    if (!cpu && !gpu) return usage_error("emit", EMIT_USAGE, "--emit: expected llvm, obj, lib, cuda, ptx or cubin, found '%s'", kind);
    pass_target t = gpu ? TARGET_SM90 : TARGET_CPU;
    bool emu = target && strcmp(target, "emu") == 0; /* CG_CUDA_EMU_ARCH: a CUDA library for the emulator */
    if (emu && !lib)
        return usage_error("emit", EMIT_USAGE, "--target %s goes with --emit lib only (a layer library for the CUDA emulator)", target);
    if (target && !emu && !pass_target_parse(target, &t))
        return usage_error("emit", EMIT_USAGE, "--target: unknown target '%s'", target);
    if (!lib && cpu != (t == TARGET_CPU)) return usage_error("emit", EMIT_USAGE, "--emit %s does not go with this --target", kind);
    if (!make_dirs(dir)) {
        fprintf(stderr, "moeppc emit: error: cannot create '%s': %s\n", dir, strerror(errno));
        return 1;
    }
    if (gpu) return emit_cuda(spec, kind, pass_target_name(t), dir);
    TuneDb db = {0};
    if (tuning && !tuning_load_for_host(tuning, &db)) return 1;
    const char *arch = emu ? "emu" : t == TARGET_CPU ? NULL : pass_target_name(t); /* lib: a CUDA build */
    int rc = lib ? emit_lib(spec, dir, tuning ? &db : NULL, arch) : emit_cpu(spec, dir, strcmp(kind, "llvm") == 0, tuning ? &db : NULL);
    tune_db_free(&db);
    return rc;
}
