/* cpu.h — the CPU executor: runs an optimised, planned IR module with native kernels.
 *
 * In:  a module after the pipeline with PassOptions.codegen (activations f32, memory planned), the
 *      weights (WeightSet), and a kernel source: the JIT (cpu_jit.c, for `moeppc run --backend cpu`)
 *      or the object code linked into a built executable.
 * Out: per call, the module's outputs (logits [T, V] f32, route.L.ids i32, route.L.weights f32) in
 *      the activation arena, valid until the next call. Attention keeps a KV cache per layer, so a
 *      call with positions n.. continues a sequence (decode); cpu_model_reset starts a new one.
 * Memory: the CpuModel owns the arena (grown to the largest T seen), the KV caches, the packed
 *      weights (packed once at load, in their stored dtype), scratch and the thread pool. The module
 *      and the WeightSet are borrowed and must outlive it. With cpu_model_set_workspace the arena and
 *      scratch live in caller memory instead, and a run allocates nothing.
 * Errors: user-level problems (T beyond max positions, a token outside the vocabulary) return false
 *      with a message; broken invariants of our own compiler abort.
 */
#ifndef MOEPPC_RUNTIME_CPU_H
#define MOEPPC_RUNTIME_CPU_H

#include "codegen/llvm/cg_llvm.h"
#include "codegen/llvm/ops/cg_ops.h"
#include "ir/ir.h"
#include "runtime/cpu/panel_cache.h"
#include "runtime/runtime.h"

typedef struct CpuKernelSource {
    void *ctx;
    /* The GEMM micro-kernel for weights stored as want->b_dtype with the register tile mr × nr and
     * the k unroll the specialize pass recorded on the op (tile_m, tile_n, tile_unroll), on the bf16
     * dot product when want->a_bf16 (the op's act_bf16); mr, nr 0 or a tile this CPU's ISA cannot
     * hold: the default tile of the ISA; unroll 0: the default unroll. */
    const CgKernel *(*gemm)(void *ctx, const CgKernelConfig *want, RtError *err);
    /* The kernel for d, a function with the signature cg_ops.h gives its kind. */
    void *(*op)(void *ctx, const CgOpDesc *d, RtError *err);
    /* Optional: make every kernel module m will request ready at once (cpu_model_new calls it
     * first; the JIT compiles them on all the CPUs). Its failure is no error: a kernel it did not
     * make is made when asked for, and that reports what is wrong. */
    bool (*prefetch)(void *ctx, const IrModule *m, RtError *err);
} CpuKernelSource;

typedef struct CpuModel CpuModel;

CpuModel *cpu_model_new(const IrModule *m, const WeightSet *w, int64_t max_positions, CpuKernelSource *ks,
                        int threads, RtError *err);
/* cpu_model_new with the options a driver may set. */
typedef struct CpuModelOptions {
    int         threads;
    const char *panel_cache;  /* a directory keeping the packed weights between runs (panel_cache.h); NULL: none */
    double      panel_cache_max; /* > 0: then its least recently used files removed past this many bytes */
    bool        panel_cache_verify; /* each file's panels checked against their checksums before use */
    /* Called on the opening thread after each packing step (its panels mapped from a file or packed):
     * the bytes of the weights whose panels are ready and of all of them (start-up's progress). */
    void      (*progress)(void *ctx, double ready, double total);
    void       *progress_ctx;
} CpuModelOptions;
CpuModel *cpu_model_open(const IrModule *m, const WeightSet *w, int64_t max_positions, CpuKernelSource *ks,
                         const CpuModelOptions *o, RtError *err);
/* The panel cache's counts so far; false (st untouched) without one. */
bool      cpu_model_panel_stats(const CpuModel *cm, PanelCacheStats *st);
/* Bytes a model of m allocates beyond its weights: the packed copies of every GEMM weight and the KV
 * caches (cpu_model_new refuses a model whose need passes 90 % of the memory available; with a panel
 * cache, cpu_model_open counts the KV caches alone, the panels being file pages, and checks what packs
 * in memory after all as it packs). */
double    cpu_model_bytes_needed(const IrModule *m, int64_t max_positions);
/* Of those, the bytes of the weights packed op by op that nothing reads in place: on weights whose
 * release frees memory (weights_release_frees: random ones) each leaves once packed, and
 * cpu_model_new counts them out of its need. */
double    cpu_model_bytes_freed(const IrModule *m);
/* The bytes a model of m on s's random weights keeps in memory once packed: its KV caches, the
 * weights it reads in place and, unless its panels are file pages (panel_files: a panel cache), its
 * panels. */
double    cpu_model_bytes_on_random(const IrModule *m, const ModelSpec *s, bool panel_files);
/* Run T tokens at positions pos (each < max_positions). */
bool      cpu_model_run(CpuModel *cm, const int32_t *ids, const int32_t *pos, int64_t T, RtError *err);
/* Run only instructions [first, last) (indices in program order) on T tokens, after a full run on the
 * same T has laid out the arena; benchmarks time one part of the model this way. */
bool      cpu_model_run_steps(CpuModel *cm, int first, int last, const int32_t *ids, const int32_t *pos, int64_t T,
                              RtError *err);
/* Where value v (a result) lives for T tokens: its buffer in the arena. */
void     *cpu_model_buffer(const CpuModel *cm, const IrValue *v, int64_t T);
/* A module output of the last run: its data in the arena and its shape ([T, cols]). NULL if absent. */
const void *cpu_model_output(const CpuModel *cm, const char *name, int64_t *cols, moe_dtype *dtype);
/* n > 0: from now on the program's tail that makes the logits from the final residual rows (final
 * norm, lm_head) runs on the last n rows of a call only (all of them where T <= n), so only rows
 * T - n .. T - 1 of the logits output are written: what decoding reads after a prefill (its last
 * row), or a serving step whose rows that need logits (each decoding sequence's, each prompt's last)
 * the caller put last. 0 (the default): every row. A module not ending so keeps every row
 * (cpu_model_last_rows says which holds: the n in force, 0 for every row). */
void      cpu_model_set_last_rows(CpuModel *cm, int64_t n);
int64_t   cpu_model_last_rows(const CpuModel *cm);
/* Seconds spent in each kind of work in the runs so far (for --profile and benchmarks). */
typedef struct CpuProfile {
    double gemm_s, grouped_s, attention_s, route_s, other_s;
    double ffn_macs;        /* multiply-adds executed in the grouped expert GEMMs */
    double gemm_bytes;      /* weight bytes the dense GEMMs read (each weight's own size)           */
    double grouped_bytes;   /* ... and the grouped GEMMs: the experts some token picked              */
    double ffn_fused;       /* expert FFNs run as one cg_moe_ffn, h kept packed (MOEPPC_FUSE_FFN=0: none) */
} CpuProfile;
CpuProfile cpu_model_profile(const CpuModel *cm);
void      cpu_model_free(CpuModel *cm);

/* Caller memory, for a module with inputs other than ids and pos (embed/: one MoE layer, x and r).
 * Runs then take ids = pos = NULL. */
/* Read input value `input` (f32 [T, cols], row-major) from data in the following runs. */
void      cpu_model_bind_input(CpuModel *cm, const IrValue *input, const void *data);
/* Bytes of a workspace for runs on up to max_t tokens: the arena, the routing scratch and the GEMM
 * drivers' scratch, laid out in 64-byte aligned blocks. */
size_t    cpu_model_workspace_bytes(const CpuModel *cm, int64_t max_t);
/* From now on every buffer of a run lies in ws (64-byte aligned, cpu_model_workspace_bytes(max_t)
 * bytes, owned by the caller): runs on up to max_t tokens allocate nothing, longer ones fail. */
void      cpu_model_set_workspace(CpuModel *cm, void *ws, int64_t max_t);

/* Sequences: from now on the model keeps KV caches for n (>= 1) sequences of up to max_positions
 * each (a new one's empty; those it had kept; sequence 0 is the one cpu_model_run runs), for
 * cpu_model_run_seqs. False with a message where the memory for them is missing (nothing changed). */
bool      cpu_model_set_sequences(CpuModel *cm, int n, RtError *err);
int       cpu_model_sequences(const CpuModel *cm);
/* Positions 0 .. positions - 1 of sequence from's KV caches into sequence to's (a fork: `to` then
 * goes on from what `from` held there; its later positions are left to be written). False with a
 * message for a sequence or a count out of range. */
bool      cpu_model_copy_sequence(CpuModel *cm, int from, int to, int64_t positions, RtError *err);
/* Run T tokens of several sequences at once (a serving batch): token t of sequence seq[t] (< the n
 * of cpu_model_set_sequences) at position pos[t] of it, which attends to that sequence's cache
 * positions 0 .. pos[t] alone; every other op is row-wise. A decode step of B sequences is B rows
 * here: the grouped GEMMs see each expert's picks of all of them. seq NULL: all sequence 0 (this is
 * cpu_model_run). */
bool      cpu_model_run_seqs(CpuModel *cm, const int32_t *ids, const int32_t *pos, const int32_t *seq, int64_t T,
                             RtError *err);

/* Causal attention of T query rows over the KV caches (kt, vc of cap positions a head:
 * cg_attention_store) with the attention kernel fn, which takes hpc query heads a call
 * (cg_attention_heads_per_call of its op): the work spreads over the pool's threads by those heads
 * and block of rows (the tuner times it so). */
void      cpu_attention_run(CgPool *pool, void *fn, int64_t T, int64_t heads, int64_t hpc, int64_t cap, const void *q,
                            const void *kt, const void *vc, const int32_t *pos, void *out);
/* The same over several sequences' caches: rows [row0, row0 + rows) of q, pos and out attend over
 * kt, vc (task0 is the function's own: where the segment's tasks start). */
typedef struct CpuAttSeg {
    int64_t row0, rows;
    const void *kt, *vc;
    int64_t task0;
} CpuAttSeg;
void      cpu_attention_run_segs(CgPool *pool, void *fn, int64_t heads, int64_t hpc, int64_t cap, const void *q,
                                 const int32_t *pos, void *out, CpuAttSeg *segs, int n);

/* Every kernel the module needs, requested from ks once (moeppc build compiles them this way). */
bool      cpu_request_kernels(const IrModule *m, CpuKernelSource *ks, RtError *err);

/* A kernel linked into an executable: a GEMM micro-kernel (is_gemm, with its configuration) or an
 * op kernel, by the symbol cg_kernel_symbol / cg_op_symbol gives it. */
typedef struct CpuKernelEntry {
    const char *symbol;
    void *fn;
    bool is_gemm;
    CgKernelConfig cfg;
} CpuKernelEntry;
/* The kernel source of a built executable (table.c): lookups in its table (which must outlive it). */
CpuKernelSource *cpu_table_source_new(const CpuKernelEntry *table, int n);
/* The same after checking that this CPU runs the table's kernels, compiled for CPU `cpu` with the
 * LLVM feature list `features` (cpu_runs_features); NULL with a message naming what it lacks. */
CpuKernelSource *cpu_table_source_checked(const CpuKernelEntry *table, int n, const char *cpu, const char *features,
                                          RtError *err);
void             cpu_table_source_free(CpuKernelSource *ks);

/* Whether this CPU has every instruction-set extension an LLVM feature list ("+avx2,+fma,-avx512f")
 * turns on (cpu_features.c: CPUID and the OS's register saving; names it does not know are not
 * checked); false with the missing ones in msg, comma-separated. MOEPPC_CPU_HIDE=a,b (testing)
 * treats features a and b as absent. */
bool cpu_runs_features(const char *features, char *msg, size_t n);
/* One feature by LLVM name: 1 present, 0 absent, -1 not known here (or not an x86 CPU). */
int  cpu_feature(const char *name);

/* The JIT kernel source (cpu_jit.c): kernels compiled on first use for this host. */
CpuKernelSource *cpu_jit_source_new(RtError *err);
/* Should CPU code for this host take the GEMMs of bf16 weights on the bf16 dot product (their
 * activations rounded to bf16: PassOptions.bf16_dot)? cg_bf16_dot_pays for the host at the ISA
 * MOEPPC_ISA allows; MOEPPC_BF16_DOT=0 or 1 decides instead (1 needs AVX512-BF16). */
bool             cpu_bf16_dot(void);
/* What cpu_bf16_dot decided and why, for a report: "yes (vdpbf16ps 2.0x the f32 FMA's multiply-adds)",
 * "no (no AVX512-BF16)", "yes (MOEPPC_BF16_DOT=1)"... */
const char      *cpu_bf16_dot_why(char *buf, size_t n);
/* Should CPU code for this host take those GEMMs on AMX tiles instead (PassOptions.amx)? Where it has
 * AMX-BF16 at the AVX-512 ISA and Linux grants the tiles, unless MOEPPC_AMX=0. */
bool             cpu_amx(void);
const char      *cpu_amx_why(char *buf, size_t n); /* "yes", "no (MOEPPC_AMX=0)", "no (no AMX-BF16...)" */
/* The host's part of the pass options for CPU code generation: bf16_dot (cpu_bf16_dot) and the
 * rule's register tile and vector width for the ISA the kernels are compiled for here (MOEPPC_ISA
 * caps it, as it caps the kernels), so that the IR says what runs. */
struct PassOptions;
void             cpu_host_pass_options(struct PassOptions *po);
void             cpu_jit_source_free(CpuKernelSource *ks);

/* Every kernel a module asks for (a dry cpu_request_kernels), each once, in the order first asked
 * for, as jobs for cg_jit_compile_many or cg_jit_emit_many: a GEMM's tile normalised as jit makes
 * it, an op job's arg pointing at its description in ops. */
struct CgJitJob;
typedef struct CpuKernelList {
    struct CgJitJob *jobs; /* [n] */
    CgOpDesc *ops;         /* [n] (an op job's) */
    int n;
    CgJit *jit;
    CgKernel **fake; /* [n_fake] what the dry preparation was handed for each GEMM */
    int n_fake;
} CpuKernelList;
bool cpu_kernel_list(CgJit *jit, const IrModule *m, CpuKernelList *l, RtError *err);
void cpu_kernel_list_free(CpuKernelList *l);
/* Threads to compile kernels on: the CPUs this process may run on, at most 8; 1 with
 * MOEPPC_JIT_SERIAL set (and not 0). */
int  cpu_jit_threads(void);

#endif
