/* commands.h — the subcommands that live in tools/ (the others are declared by their layer). */
#ifndef MOEPPC_COMMANDS_H
#define MOEPPC_COMMANDS_H
#include "frontend/frontend.h"
#include "ir/ir.h"
#include "passes/passes.h"

int cmd_compile(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_build(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tune(int argc, char **argv);
int cmd_emit(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_panel_cache(int argc, char **argv);
int cmd_version(int argc, char **argv); /* `moeppc --version [--verbose]` (argv[0] "--version") */
#define PANEL_CACHE_USAGE "panel-cache DIR [--verify] [--remove-damaged] [--remove-stale] [--max MB] [--threads N]"
#define TOKENIZE_USAGE "tokenize TOKENIZER [--decode] [--pieces] [--no-bos] [--special] [--escape] (TEXT... | --file F)"
/* bench_cuda.c: `moeppc bench SPEC --device cuda` (cmd_bench hands over when asked for cuda). */
int bench_cuda(int argc, char **argv);
/* Synthetic routing (bench --experts and --device cuda --zc-share): token t's k picks each a
 * zero-computation expert ([nf, E)) with probability p, else an FFN expert, uniform among that
 * class's experts not yet picked; weights uniform in [0.1, 1), normalised. Returns the FFN picks.
 * bench/baseline_openblas.c draws the same routing. */
int64_t bench_synthetic_routing(int64_t T, int64_t k, int64_t nf, int64_t E, double p, uint64_t seed, int32_t *ids,
                                float *w);
/* bench --rows R (with --batch: T / R sequences of R tokens) against the rest of the command line:
 * 0, or a usage error's exit status (usage: the command's usage line). */
int bench_rows_check(const char *usage, bool batch, int64_t rows, const int64_t *tokens, int n_tokens);
/* bench_cuda.c: the median GPU milliseconds (CUDA events) of instructions [first, last) of a CUDA
 * model on T tokens over reps runs after `warmup` runs, each run the range in_graph times over in one
 * call (one graph at T = 1; cuda_model_run_steps_reps) and its time divided by in_graph; seq: the
 * tokens' sequences (bench --batch: cuda_model_run_steps_seqs), or NULL. */
struct CudaModel;
struct RtError;
bool bench_cuda_time_steps(struct CudaModel *cm, int first, int last, int in_graph, const int32_t *ids,
                           const int32_t *pos, const int32_t *seq, int64_t T, int warmup, int reps, double *ms,
                           struct RtError *err);
/* bench.c: spec s's CPU model on random weights (seed 1), its kernels tuned by db (NULL: the rule), and
 * the median seconds of reps runs of T tokens through it after two warm-ups: `moeppc tune --check`
 * times its database against the rule so. bench_model_new: NULL, err set, when it cannot be made. */
typedef struct BenchModel BenchModel;
struct TuneDb;
BenchModel *bench_model_new(const ModelSpec *s, const struct TuneDb *db, int threads, struct RtError *err);
bool        bench_model_median(BenchModel *bm, int64_t T, int reps, double *median, struct RtError *err);
void        bench_model_free(BenchModel *bm);
/* `moeppc tune`'s arguments (common.c): 0, else the usage exit status (printed). */
typedef struct TuneArgs {
    const char *spec, *out;
    int64_t tokens[16];
    int n_tokens, threads;
    double budget, check_margin; /* --check: how much slower (%) the database may run than the rule */
    bool dtype_set, check;
    moe_dtype dtype;
    pass_target target;
    int device;                  /* --device cuda:N: the GPU a GPU target is measured on */
    bool device_set;
} TuneArgs;
int tune_parse_args(int argc, char **argv, TuneArgs *a);
/* max |a - ref| / max |ref| over n values (max |a - ref| when ref is all zeros): how the tuners check
 * a candidate's output against the rule's. */
double tune_rel_err(const float *a, const float *ref, size_t n);
/* tune_cuda.c: `moeppc tune SPEC --target sm_XX` (cmd_tune hands over for a GPU target). */
int tune_cuda(const TuneArgs *a);
/* Index (program order) of the first instruction of op after index `after`, or -1. */
int bench_instr_index(const IrModule *m, ir_op op, int after);
/* The value after option opt in argv, or NULL. */
const char *args_value(int argc, char **argv, const char *opt);
/* emit_cuda.c: the CUDA kernels of a spec as .cu, .ptx or .cubin files for arch ("sm_90") in dir. */
int emit_cuda(const char *spec, const char *kind, const char *arch, const char *dir);
/* emit_lib.c: one MoE layer of the spec as a library behind embed/moepp_layer.h, written to dir; for the
 * host CPU (arch NULL) or a CUDA build for arch ("sm_90"). */
struct TuneDb;
int emit_lib(const char *spec, const char *dir, const struct TuneDb *tuning, const char *arch);

/* common.c */
/* "moeppc CMD: error: <fmt with arg>" and the usage line; returns 2 (the usage exit status). */
int  usage_error(const char *cmd, const char *usage, const char *fmt, const char *arg);
/* Write n bytes to path through a temporary file renamed into place: all or nothing. */
bool write_file_atomic(const char *path, const void *data, size_t n, const char *cmd);
/* tune.c: load a tuning database for this host (a database for another target, compiler or LLVM is
 * emptied with a warning); false on a malformed file (diagnostics printed). */
bool tuning_load_for_host(const char *path, struct TuneDb *db);
/* For `build --target`: a GPU database (target.isa sm_XX) made for arch by this NVRTC and moeppc sets
 * *gpu (any other GPU database is emptied with a warning); a CPU database is loaded as above. */
bool tuning_load_gpu_or_host(const char *path, const char *arch, struct TuneDb *db, bool *gpu);
/* Load a spec with diagnostics on stderr. */
bool load_spec(const char *path, ModelSpec *s);
#endif
