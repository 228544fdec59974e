/* ir.h — the intermediate representation: an SSA graph of typed tensor values.
 *
 * In:  a ModelSpec (lowered by ir_lower_spec to the dense form of DESIGN.md) or IR text (ir_parse).
 * Out: an IrModule: inputs (token ids, positions), params (checkpoint tensors, by name), a list of
 *      instructions in execution order, and named outputs (logits, per-layer routing decisions).
 *      ir_print writes the textual form; ir_parse reads it back (print → parse → print is identical);
 *      ir_verify checks arity, attributes, types and shapes; ir_eval (eval.c) executes any module.
 * Types: every value has a dtype and a shape of 1–4 dims; dims[0] may be IR_DIM_T, the token count,
 *      fixed only when the module runs.
 * Memory: a module owns everything reachable from it in its arena; ir_module_free releases it all.
 *      Instructions form a doubly linked list so passes can insert and remove in place.
 */
#ifndef MOEPPC_IR_H
#define MOEPPC_IR_H

#include "frontend/frontend.h"
#include "runtime/runtime.h"
#include "support/support.h"

typedef enum {
#define IR_OP(e, name, nin, nout, attrs, opt) IR_OP_##e,
#include "ir/ops.def"
#undef IR_OP
    IR_OP_COUNT
} ir_op;

typedef struct IrOpInfo {
    const char *name;
    int n_in;                 /* -1: variable, checked by the op's type rule */
    int n_out;                /* -1: variable */
    const char *attrs;        /* comma-separated required attribute names */
    const char *optional;     /* comma-separated optional attribute names */
} IrOpInfo;
const IrOpInfo *ir_op_info(ir_op op);
bool ir_op_lookup(const char *name, ir_op *out);

#define IR_DIM_T (-1)
#define IR_MAX_DIMS 4
/* Bounds the verifier (values) and the parser (arena numbers) hold IR to, far beyond any model (a
 * value of 1 TB per token): with them, sizes, offsets and the plan's checks at T tokens stay inside
 * int64 whatever IR text says. */
#define IR_MAX_VALUE_BYTES ((int64_t)1 << 40)
#define IR_MAX_ARENA ((int64_t)1 << 50)

typedef struct IrType {
    moe_dtype dtype;
    int ndim;
    int64_t dims[IR_MAX_DIMS];   /* dims[0] may be IR_DIM_T */
} IrType;
bool ir_type_equal(const IrType *a, const IrType *b);
/* Number of elements for a concrete token count T. */
int64_t ir_type_numel(const IrType *t, int64_t T);

typedef enum { IR_VAL_INPUT, IR_VAL_PARAM, IR_VAL_RESULT } ir_value_kind;

typedef struct IrInstr IrInstr;

typedef struct IrValue {
    int id;                   /* dense index into IrModule.values */
    const char *name;         /* printed as %name */
    IrType type;
    ir_value_kind kind;
    const char *tensor;       /* IR_VAL_PARAM: checkpoint tensor name */
    IrInstr *def;             /* IR_VAL_RESULT: the defining instruction */
    int line, col;            /* where it was defined in IR text (0 when built) */
    bool planned;             /* plan-memory gave it a place in the activation arena: */
    int64_t off_t, off_c;     /*   byte offset off_t·T + off_c */
} IrValue;

typedef enum { IR_ATTR_INT, IR_ATTR_FLOAT, IR_ATTR_STR } ir_attr_kind;

typedef struct IrAttr {
    const char *key;
    ir_attr_kind kind;
    int64_t i;
    double f;
    const char *s;            /* IR_ATTR_STR */
} IrAttr;

struct IrInstr {
    ir_op op;
    int n_in, n_out, n_attrs;
    IrValue **in;             /* [n_in] */
    IrValue **out;            /* [n_out] */
    IrAttr *attrs;            /* [n_attrs], in insertion order (printed in that order) */
    IrInstr *prev, *next;
    int line, col;            /* position in IR text (0 when built) */
};

typedef struct IrOutput {
    const char *name;         /* "logits", "route.3.ids", "route.3.weights" */
    IrValue *value;
} IrOutput;

typedef struct IrModule {
    Arena arena;
    const char *name;
    IrValue **values;         /* every value: inputs, params, results; [n_values] */
    int n_values, cap_values;
    IrInstr *first, *last;
    IrOutput *outputs;
    int n_outputs, cap_outputs;
    bool planned;             /* every result has an arena offset; the arena holds arena_t·T + arena_c bytes */
    int64_t arena_t, arena_c;
} IrModule;

/* ---- ir.c: building ------------------------------------------------------------------------- */
IrModule *ir_module_new(const char *name);
void      ir_module_free(IrModule *m);
IrValue  *ir_value_find(const IrModule *m, const char *name);
IrValue  *ir_input_new(IrModule *m, const char *name, IrType t);
IrValue  *ir_param_new(IrModule *m, const char *name, const char *tensor, IrType t);
/* A new instruction appended at the end; results are created from types/names (a NULL name is
 * replaced by a fresh numbered one). */
IrInstr  *ir_instr_append(IrModule *m, ir_op op, IrValue *const *in, int n_in, const IrType *out_types,
                          const char *const *out_names, int n_out);
void      ir_attr_set_int(IrModule *m, IrInstr *i, const char *key, int64_t v);
void      ir_attr_set_float(IrModule *m, IrInstr *i, const char *key, double v);
void      ir_attr_set_str(IrModule *m, IrInstr *i, const char *key, const char *v);
const IrAttr *ir_attr_get(const IrInstr *i, const char *key);
int64_t   ir_attr_int(const IrInstr *i, const char *key);     /* asserts presence (verified IR) */
double    ir_attr_float(const IrInstr *i, const char *key);   /* int attributes convert */
void      ir_output_add(IrModule *m, const char *name, IrValue *v);
IrType    ir_type_2d(moe_dtype dt, int64_t d0, int64_t d1);

/* ---- ir.c: rewriting (for passes) --------------------------------------------------------------- */
/* Every use of old (operands and outputs) becomes a use of new. */
void      ir_replace_uses(IrModule *m, const IrValue *old, IrValue *new_value);
/* Unlink i from the instruction list (its memory stays in the arena). */
void      ir_instr_remove(IrModule *m, IrInstr *i);
/* Move i (just appended, say) to stand right before at. */
void      ir_instr_move_before(IrModule *m, IrInstr *i, IrInstr *at);
/* The program's logits tail: the last two instructions, when they are the final norm (RMS_NORM or
 * ADD_RMS_NORM, none of whose results is a module output) and the LINEAR of the "logits" output
 * that alone reads it, each working row by row: an executor may run them on the last row alone when
 * only it is read. The index of the first (program order), or the instruction count if it ends so not. */
int       ir_logits_tail(const IrModule *m);
/* Number of uses of every value by instructions and outputs; caller frees. */
int      *ir_use_counts(const IrModule *m);
/* Position of instruction i in program order (0 = first); asserts it belongs to m. */
int       ir_instr_position(const IrModule *m, const IrInstr *i);
/* Drop values nobody defines or uses any more (results of removed instructions, unused params) and
 * renumber the rest densely, in their current order. Inputs are always kept. */
void      ir_module_compact(IrModule *m);
IrType    ir_type_1d(moe_dtype dt, int64_t d0);

/* Live ranges by instruction index: value v is defined at def[v] and last needed at last[v] (the
 * instruction count for module outputs: they live to the end). Inputs and params: -1, -1. Caller
 * frees both arrays. Returns the instruction count. */
int       ir_liveness(const IrModule *m, int **def, int **last);
/* Bytes a result needs for T tokens as per_t·T + fixed, each rounded up to 64. */
void      ir_value_bytes(const IrValue *v, int64_t *per_t, int64_t *fixed);
/* The input whose buffer result v takes over when that input dies at v's instruction (an accumulator
 * updated in place: moe.grouped_down's y0 becomes its y), or NULL. plan-memory gives both one place
 * then; ir_plan_check accepts exactly that overlap. */
const IrValue *ir_inplace_input(const IrValue *v);
/* Whether two planned results' arena places overlap at T tokens. */
bool      ir_places_overlap(const IrValue *a, const IrValue *b, int64_t T);

/* ---- print.c / parse.c: the textual form ------------------------------------------------------ */
void      ir_print(const IrModule *m, FILE *f);
char     *ir_print_string(const IrModule *m);          /* caller frees */
/* Parse IR text; NULL with diagnostics `FILE:LINE:COL: error: …` on failure. Verifies too. */
IrModule *ir_parse(const char *text, size_t len, Diag *d);

/* ---- verify.c --------------------------------------------------------------------------------- */
bool      ir_verify(const IrModule *m, Diag *d);
/* For a planned module: every result has a place inside the arena, and no two results alive at once
 * share bytes, for T = 1, 3 and 512. On failure why says what and *where is the value to blame. */
bool      ir_plan_check(const IrModule *m, char *why, size_t n, const IrValue **where);

/* ---- lower.c: spec → dense form --------------------------------------------------------------- */
IrModule *ir_lower_spec(const ModelSpec *s);
/* One MoE layer (an index l with spec_layer_is_moe) alone: inputs %x f32 [T, D] (the post-attention
 * RMSNorm's output) and, when the spec has a gating residual, %r f32 [T, E] (the previous MoE layer's
 * router logits); outputs "y" [T, D] (the MoE output, before the residual-stream add), "residual"
 * [T, E] (this layer's router logits) and route.l.ids / route.l.weights. */
IrModule *ir_lower_moe_layer(const ModelSpec *s, int64_t layer);

/* ---- eval.c: the reference interpreter ------------------------------------------------------- */
typedef enum {
    EVAL_F64,   /* accumulate in f64; round only to narrower model types (bf16, f16): ground truth */
    EVAL_F32    /* accumulate in f32 and round every value to its dtype: what kernels compute */
} eval_precision;

typedef struct EvalTensor {
    char *name;               /* the module output's name (owned by the result) */
    IrType type;              /* with dims[0] = T resolved */
    double *data;             /* row-major, numel(type) elements */
} EvalTensor;

typedef struct EvalResult {
    EvalTensor *outputs;      /* [n_outputs], in module order */
    int n_outputs;
    double seconds;
    double macs_linear;       /* multiply-adds in linear ops (the dense form runs every expert here) */
    double macs_grouped;      /* multiply-adds in grouped GEMMs: only the rows routed to FFN experts */
} EvalResult;

/* Run the module on T tokens. ids, pos: [T]. Params are bound by tensor name in w (shape and dtype
 * must match the param's type). False with err set on a binding problem. */
bool ir_eval(const IrModule *m, const WeightSet *w, const int32_t *ids, const int32_t *pos, int64_t T,
             eval_precision prec, EvalResult *out, RtError *err);
/* A module input other than ids and pos (the one-layer module's x and r): f32 [T, cols], row-major. */
typedef struct EvalInput {
    const char *name;
    const float *data;
} EvalInput;
/* ir_eval of a module whose inputs are all given in in[0..n_in) by name (no ids, no pos). */
bool ir_eval_inputs(const IrModule *m, const WeightSet *w, const EvalInput *in, int n_in, int64_t T,
                    eval_precision prec, EvalResult *out, RtError *err);
const EvalTensor *eval_output(const EvalResult *r, const char *name);
/* Bytes ir_eval holds for T tokens: every input and result, and the outputs' copies, in f64 (it
 * frees nothing before the end); ir_eval refuses to start when this exceeds the available memory. */
double ir_eval_bytes(const IrModule *m, int64_t T);
void ir_eval_result_free(EvalResult *r);

#endif
