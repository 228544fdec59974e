/* frontend.h — model specifications: YAML spec files and Hugging Face configs in, ModelSpec out.
 *
 * In:  a spec file (YAML, format v1, documented in specs/README.md) or a Hugging Face config.json of
 *      the released MoE++ model.
 * Out: a fully checked ModelSpec (a plain value, no pointers to free), its derived numbers
 *      (parameter and FLOP counts), and the list of checkpoint tensors it needs (SEMANTICS.md §6).
 * Errors: every problem with the input is printed to the Diag sink as
 *      `FILE:LINE:COL: error: what was expected, what was found` and makes the call return false;
 *      nothing is written on failure. Unknown keys get a "did you mean" hint.
 * Memory: ModelSpec is self-contained. spec_tensors() returns an array the caller frees with free().
 */
#ifndef MOEPPC_FRONTEND_H
#define MOEPPC_FRONTEND_H

#include "support/support.h"

typedef enum {
    GATING_SOFTMAX_TOPK,   /* p = softmax(z); top-k of p; zero-expert weights masked; renormalised */
    GATING_TOPK_SOFTMAX    /* Mixtral: top-k of z; softmax over the k picks; no zero masking       */
} spec_gating;

typedef struct ModelSpec {
    char name[128];            /* spec's name: field, or the file's base name                   */
    /* model */
    int64_t vocab;             /* V */
    int64_t hidden;            /* D */
    int64_t n_layers;          /* L */
    int64_t n_heads;           /* H;  head_dim = D / H */
    int64_t n_kv_heads;        /* Hk; divides H (grouped-query attention when < H)               */
    double  rope_theta;
    double  norm_eps;
    int64_t max_positions;
    moe_dtype dtype;           /* DT_F32, DT_BF16 or DT_F16: weights and activations            */
    bool    tie_embeddings;    /* lm_head is embed_tokens                                       */
    bool    has_eos;           /* eos_token_id given: --generate stops after it (run, executables)*/
    int64_t eos_token_id;
    /* moe */
    int64_t moe_every;         /* layer l is MoE iff (l + 1) % moe_every == 0                    */
    int64_t dense_intermediate;/* I_dense of the dense SwiGLU MLP of the other layers (0 if none)*/
    int64_t top_k;             /* k */
    int64_t n_ffn;             /* Nf: SwiGLU experts, indices [0, Nf)                            */
    int64_t n_const;           /* Nc: constant experts, [Nf, Nf+Nc)                              */
    int64_t n_copy;            /* copy experts, next                                              */
    int64_t n_zero;            /* zero experts, last                                              */
    int64_t ffn_intermediate;  /* I of an FFN expert                                              */
    int     router_layers;     /* 1: W [E, D]; 2: W2 · tanh(W1 · x), W1 [8E, D], W2 [E, 8E]       */
    spec_gating gating;
    bool    logits_norm;       /* z = z / (std(z) / logits_norm_std), Bessel-corrected std        */
    double  logits_norm_std;
    bool    gating_residual;   /* z += Wg · r from the previous MoE layer                        */
    bool    input_scaling;     /* experts see u = s·x, s = top_k (forced to 1 for topk_softmax)  */
} ModelSpec;

/* Where diagnostics go. file is the name printed before line:col. */
typedef struct Diag {
    FILE       *out;           /* stderr by default                                                */
    const char *file;
    int         n_errors;
} Diag;
void diag_error(Diag *d, int line, int col, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* The same form with "warning" (not counted: the input is taken, changed as the message says). */
void diag_warning(Diag *d, int line, int col, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* ---- spec.c: YAML spec v1 ---------------------------------------------------------------------- */
/* Parse and check a spec; false (with diagnostics printed) on any error. */
bool spec_load_file(const char *path, ModelSpec *out, Diag *d);
bool spec_load_string(const char *text, size_t len, ModelSpec *out, Diag *d);
/* A spec's default name from a file path: "specs/tiny/tiny-gqa.yaml" → "tiny-gqa". */
void spec_name_from_path(const char *path, char *buf, size_t n);
/* The file reading both loaders share: path's text to parse, the spec named by name_of(path), and
 * "cannot read the WHAT: reason" where it cannot be read; d->file is path while it runs (if unset). */
typedef bool (*SpecParseFn)(const char *text, size_t len, const char *name, ModelSpec *out, Diag *d);
bool spec_read_file(const char *path, const char *what, void (*name_of)(const char *path, char *buf, size_t n),
                    SpecParseFn parse, ModelSpec *out, Diag *d);
/* Write a spec as YAML v1 (what import-hf produces). Returns false on I/O error. */
bool spec_write_yaml(const ModelSpec *s, FILE *f);

/* ---- derived quantities ------------------------------------------------------------------------ */
static inline int64_t spec_n_experts(const ModelSpec *s) { return s->n_ffn + s->n_const + s->n_copy + s->n_zero; }
static inline int64_t spec_head_dim(const ModelSpec *s) { return s->hidden / s->n_heads; }
static inline bool    spec_layer_is_moe(const ModelSpec *s, int64_t l) { return (l + 1) % s->moe_every == 0; }
/* s in u = s·x: top_k when input scaling is on and gating is softmax_topk, else 1. */
static inline double  spec_input_scale(const ModelSpec *s) {
    return (s->input_scaling && s->gating == GATING_SOFTMAX_TOPK) ? (double)s->top_k : 1.0;
}

typedef struct SpecSummary {
    int64_t params_total;      /* every stored parameter (lm_head once if tied)                   */
    int64_t params_active;     /* per token with top_k FFN experts picked                          */
    int64_t params_embedding;  /* embed + lm_head                                                  */
    double  flops_per_token;   /* 2·params_active matmul FLOPs, all-FFN routing, excluding attention scores */
    double  flops_attention_per_token_ctx; /* extra FLOPs per token per context position (QK and PV) */
} SpecSummary;
void spec_summarize(const ModelSpec *s, SpecSummary *out);
void spec_print_summary(const ModelSpec *s, FILE *f);

/* ---- the checkpoint tensors a spec needs (SEMANTICS.md §6) -------------------------------------- */
typedef enum {
    TK_EMBED, TK_NORM, TK_ATTN, TK_ROUTER, TK_GATE_MAP, TK_EXPERT_UP, TK_EXPERT_DOWN,
    TK_CONST_VEC, TK_CONST_GATE, TK_DENSE, TK_LM_HEAD
} tensor_kind;

typedef struct TensorDesc {
    char        name[128];     /* e.g. "model.layers.3.self_attn.q_proj.weight"                    */
    moe_dtype   dtype;         /* the spec's dtype (every tensor is stored in it)                  */
    int         ndim;          /* 1 or 2                                                           */
    int64_t     shape[2];
    tensor_kind kind;
    int64_t     fan_in;        /* the input size the tensor multiplies (shape[1] for matrices)     */
} TensorDesc;
/* Every tensor the spec reads, in a fixed order; *n gets the count. Caller frees. */
TensorDesc *spec_tensors(const ModelSpec *s, int *n);

/* ---- hf.c: Hugging Face config.json of the released MoE++ model or of a Mixtral ----------------- */
bool spec_from_hf_config(const char *path, ModelSpec *out, Diag *d);
/* SPEC as every command takes it: a YAML spec, a Hugging Face config.json (a path ending in .json),
 * or a model directory holding config.json (spec_is_model_dir: `run` then reads its weights there). */
bool spec_load_any(const char *path, ModelSpec *out, Diag *d);
bool spec_is_model_dir(const char *path);
/* The spec's YAML text: the file's own for a YAML spec, spec_write_yaml's for a config (malloc'd). */
char *spec_yaml_text(const char *path, const ModelSpec *s);
/* The same from the config's text; name is the spec's name (NULL: "moepp"). */
bool spec_from_hf_json(const char *text, size_t len, const char *name, ModelSpec *out, Diag *d);

/* ---- commands (return the process exit status) -------------------------------------------------- */
int cmd_check(int argc, char **argv);
int cmd_import_hf(int argc, char **argv);

#endif
