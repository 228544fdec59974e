/* spec.c — YAML spec v1 → checked ModelSpec, and ModelSpec → YAML (specs/README.md documents the format).
 *
 * Two phases, so one run reports every independent problem without cascades: the walk checks the shape
 * of the document (keys, types, ranges of single values) and records each field's value, location and
 * state; the cross-field checks then run only on fields that parsed (a bad heads value does not also
 * produce "heads does not divide hidden").
 */
#include "frontend/frontend.h"
#include "frontend/yaml_util.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* ---- the schema --------------------------------------------------------------------------------- */
typedef enum {
    F_ROOT, F_FORMAT, F_NAME, F_MODEL, F_MOE,
    F_VOCAB, F_HIDDEN, F_LAYERS, F_HEADS, F_KV_HEADS, F_ROPE_THETA, F_NORM_EPS, F_MAX_POS, F_DTYPE, F_TIE, F_EOS,
    F_EVERY, F_DENSE_I, F_TOP_K, F_EXPERTS, F_INTERMEDIATE, F_ROUTER, F_INPUT_SCALING,
    F_FFN, F_CONST, F_COPY, F_ZERO,
    F_R_LAYERS, F_GATING, F_LOGITS_NORM, F_LOGITS_STD, F_RESIDUAL,
    F_COUNT
} field_id;

typedef enum { T_MAP, T_INT, T_FLOAT, T_BOOL, T_STR, T_DTYPE, T_GATING } field_type;

typedef struct {
    const char *key;
    field_type  type;
    field_id    parent;
    bool        required;
    int64_t     min;       /* T_INT: smallest valid value                                   */
    int64_t     def_i;     /* default for T_INT, T_BOOL, T_DTYPE, T_GATING                   */
    double      def_f;     /* default for T_FLOAT                                            */
} FieldDef;

/* Indexed by field_id. Defaults are the released model's (SEMANTICS.md; specs/README.md). */
static const FieldDef fields[F_COUNT] = {
    [F_ROOT]          = {"", T_MAP, F_ROOT, true, 0, 0, 0},
    [F_FORMAT]        = {"format", T_INT, F_ROOT, true, 1, 1, 0},
    [F_NAME]          = {"name", T_STR, F_ROOT, false, 0, 0, 0},
    [F_MODEL]         = {"model", T_MAP, F_ROOT, true, 0, 0, 0},
    [F_MOE]           = {"moe", T_MAP, F_ROOT, true, 0, 0, 0},
    [F_VOCAB]         = {"vocab", T_INT, F_MODEL, true, 1, 0, 0},
    [F_HIDDEN]        = {"hidden", T_INT, F_MODEL, true, 1, 0, 0},
    [F_LAYERS]        = {"layers", T_INT, F_MODEL, true, 1, 0, 0},
    [F_HEADS]         = {"heads", T_INT, F_MODEL, true, 1, 0, 0},
    [F_KV_HEADS]      = {"kv_heads", T_INT, F_MODEL, false, 1, 0, 0}, /* default: heads */
    [F_ROPE_THETA]    = {"rope_theta", T_FLOAT, F_MODEL, false, 0, 0, 10000.0},
    [F_NORM_EPS]      = {"norm_eps", T_FLOAT, F_MODEL, false, 0, 0, 1e-6},
    [F_MAX_POS]       = {"max_positions", T_INT, F_MODEL, false, 1, 4096, 0},
    [F_DTYPE]         = {"dtype", T_DTYPE, F_MODEL, false, 0, DT_F32, 0},
    [F_TIE]           = {"tie_embeddings", T_BOOL, F_MODEL, false, 0, 0, 0},
    [F_EOS]           = {"eos_token_id", T_INT, F_MODEL, false, 0, 0, 0}, /* default: none (has_eos) */
    [F_EVERY]         = {"every", T_INT, F_MOE, false, 1, 1, 0},
    [F_DENSE_I]       = {"dense_intermediate", T_INT, F_MOE, false, 0, 0, 0},
    [F_TOP_K]         = {"top_k", T_INT, F_MOE, true, 1, 0, 0},
    [F_EXPERTS]       = {"experts", T_MAP, F_MOE, true, 0, 0, 0},
    [F_INTERMEDIATE]  = {"intermediate", T_INT, F_MOE, true, 1, 0, 0},
    [F_ROUTER]        = {"router", T_MAP, F_MOE, false, 0, 0, 0},
    [F_INPUT_SCALING] = {"input_scaling", T_BOOL, F_MOE, false, 0, 1, 0},
    [F_FFN]           = {"ffn", T_INT, F_EXPERTS, true, 0, 0, 0},
    [F_CONST]         = {"constant", T_INT, F_EXPERTS, false, 0, 0, 0},
    [F_COPY]          = {"copy", T_INT, F_EXPERTS, false, 0, 0, 0},
    [F_ZERO]          = {"zero", T_INT, F_EXPERTS, false, 0, 0, 0},
    [F_R_LAYERS]      = {"layers", T_INT, F_ROUTER, false, 1, 2, 0},
    [F_GATING]        = {"gating", T_GATING, F_ROUTER, false, 0, GATING_SOFTMAX_TOPK, 0},
    [F_LOGITS_NORM]   = {"logits_norm", T_BOOL, F_ROUTER, false, 0, 0, 0},
    [F_LOGITS_STD]    = {"logits_norm_std", T_FLOAT, F_ROUTER, false, 0, 0, 1.0},
    [F_RESIDUAL]      = {"residual", T_BOOL, F_ROUTER, false, 0, 1, 0},
};

typedef enum { ST_ABSENT, ST_OK, ST_BAD } field_state;

/* What the walk found for each field. */
typedef struct {
    yaml_document_t *doc;
    Diag       *d;
    field_state st[F_COUNT];
    int         line[F_COUNT], col[F_COUNT]; /* 1-based location of the value (or of the key)     */
    int64_t     ival[F_COUNT];
    double      fval[F_COUNT];
    bool        hinted[F_COUNT];             /* suggested by a "did you mean" for a misspelt key    */
    char        name[sizeof(((ModelSpec *)0)->name)];
} Walk;

static const char *gating_names[] = {[GATING_SOFTMAX_TOPK] = "softmax_topk", [GATING_TOPK_SOFTMAX] = "topk_softmax"};
static const moe_dtype spec_dtypes[] = {DT_F32, DT_BF16, DT_F16};

/* "moe.router.layers": a field's dotted path, for messages. */
static void field_path(field_id f, char *buf, size_t n)
{
    if (f == F_ROOT) {
        snprintf(buf, n, "the top level");
        return;
    }
    char parent[96] = "";
    if (fields[f].parent != F_ROOT) field_path(fields[f].parent, parent, sizeof parent);
    snprintf(buf, n, "%s%s%s", parent, parent[0] ? "." : "", fields[f].key);
}

static bool is_plain_scalar(const yaml_node_t *nd)
{
    return nd->type == YAML_SCALAR_NODE && nd->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static bool scalar_is(const yaml_node_t *nd, const char *s)
{
    return is_plain_scalar(nd) && nd->data.scalar.length == strlen(s) &&
           memcmp(nd->data.scalar.value, s, nd->data.scalar.length) == 0;
}

/* A YAML float or integer; .inf/.nan spelled the YAML way are parsed so the range check can name them. */
static bool parse_float(const yaml_node_t *nd, double *out)
{
    if (!is_plain_scalar(nd)) return false;
    const char *s = (const char *)nd->data.scalar.value;
    if (nd->data.scalar.length != strlen(s) || s[0] == 0) return false;
    const char *t = (s[0] == '+' || s[0] == '-') ? s + 1 : s;
    if (!strcmp(t, ".inf") || !strcmp(t, ".Inf") || !strcmp(t, ".INF")) {
        *out = s[0] == '-' ? -INFINITY : INFINITY;
        return true;
    }
    if (!strcmp(s, ".nan") || !strcmp(s, ".NaN") || !strcmp(s, ".NAN")) {
        *out = NAN;
        return true;
    }
    for (const char *p = s; *p; p++) /* strtod's own words (inf, nan, hex) are not YAML numbers */
        if (!strchr("0123456789+-.eE", *p)) return false;
    char *end;
    errno = 0;
    *out = strtod(s, &end);
    return *end == 0 && end != s;
}

static void set_loc(Walk *w, field_id f, const yaml_node_t *nd)
{
    w->line[f] = (int)nd->start_mark.line + 1;
    w->col[f] = (int)nd->start_mark.column + 1;
}

static void bad_value(Walk *w, field_id f, const yaml_node_t *nd, const char *expected)
{
    char path[96], found[160];
    field_path(f, path, sizeof path);
    yaml_describe_node(nd, found, sizeof found);
    diag_error(w->d, w->line[f], w->col[f], "%s: expected %s, found %s", path, expected, found);
    w->st[f] = ST_BAD;
}

static void read_int(Walk *w, field_id f, const yaml_node_t *nd)
{
    int64_t v;
    const char *what = fields[f].min == 1 ? "a positive integer" : "a non-negative integer";
    if (f == F_FORMAT) what = "an integer";
    if (!yaml_node_int(nd, &v) || (f != F_FORMAT && v < fields[f].min)) {
        bad_value(w, f, nd, what);
        return;
    }
    w->ival[f] = v;
}

static void read_float(Walk *w, field_id f, const yaml_node_t *nd)
{
    double v;
    /* every float of the format (rope_theta, norm_eps, logits_norm_std) must be positive and finite */
    if (!parse_float(nd, &v) || !isfinite(v) || !(v > 0)) {
        bad_value(w, f, nd, "a positive finite number");
        return;
    }
    w->fval[f] = v;
}

static void read_name_list(Walk *w, field_id f, const yaml_node_t *nd, const char *kind)
{
    char path[96], found[160], list[96] = "";
    bool is_dtype = fields[f].type == T_DTYPE;
    size_t n = is_dtype ? MOE_ARRAY_LEN(spec_dtypes) : MOE_ARRAY_LEN(gating_names);
    for (size_t i = 0; i < n; i++) {
        const char *nm = is_dtype ? dtype_name(spec_dtypes[i]) : gating_names[i];
        if (scalar_is(nd, nm)) {
            w->ival[f] = is_dtype ? (int64_t)spec_dtypes[i] : (int64_t)i;
            return;
        }
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", nm);
    }
    field_path(f, path, sizeof path);
    yaml_describe_node(nd, found, sizeof found);
    diag_error(w->d, w->line[f], w->col[f], "%s: unknown %s %s; expected one of %s", path, kind, found, list);
    w->st[f] = ST_BAD;
}

static void walk_map(Walk *w, field_id map, yaml_node_t *nd);

static void read_field(Walk *w, field_id f, yaml_node_t *nd)
{
    set_loc(w, f, nd);
    w->st[f] = ST_OK;
    switch (fields[f].type) {
    case T_MAP: walk_map(w, f, nd); break;
    case T_INT: read_int(w, f, nd); break;
    case T_FLOAT: read_float(w, f, nd); break;
    case T_BOOL:
        if (scalar_is(nd, "true") || scalar_is(nd, "false"))
            w->ival[f] = scalar_is(nd, "true");
        else
            bad_value(w, f, nd, "true or false");
        break;
    case T_STR:
        if (nd->type != YAML_SCALAR_NODE || nd->data.scalar.length == 0 ||
            nd->data.scalar.length >= sizeof w->name || strlen((char *)nd->data.scalar.value) != nd->data.scalar.length)
            bad_value(w, f, nd, "a non-empty string of at most 127 bytes");
        else
            memcpy(w->name, nd->data.scalar.value, nd->data.scalar.length + 1);
        break;
    case T_DTYPE: read_name_list(w, f, nd, "dtype"); break;
    case T_GATING: read_name_list(w, f, nd, "gating"); break;
    }
}

/* A field that will never be read (its mapping is missing or broken) is BAD without a message. */
static void mark_subtree_bad(Walk *w, field_id map)
{
    for (int f = 1; f < F_COUNT; f++)
        if (fields[f].parent == map && w->st[f] == ST_ABSENT) {
            w->st[f] = ST_BAD;
            if (fields[f].type == T_MAP) mark_subtree_bad(w, (field_id)f);
        }
}

/* The closest key of this mapping, for "did you mean"; NULL when nothing is close. */
static const char *closest_key(field_id map, const char *key)
{
    const char *best = NULL;
    int best_d = strlen(key) <= 3 ? 2 : 3;
    for (int f = 1; f < F_COUNT; f++) {
        if (fields[f].parent != map) continue;
        int dist = str_edit_distance(key, fields[f].key);
        if (dist < best_d) best_d = dist, best = fields[f].key;
    }
    return best;
}

static field_id find_child_named(field_id map, const char *key)
{
    for (int f = 1; f < F_COUNT; f++)
        if (fields[f].parent == map && strcmp(fields[f].key, key) == 0) return (field_id)f;
    return F_COUNT;
}

static void unknown_key(Walk *w, field_id map, const yaml_node_t *k)
{
    char text[128], where[112];
    int line = (int)k->start_mark.line + 1, col = (int)k->start_mark.column + 1;
    if (k->type != YAML_SCALAR_NODE) {
        yaml_describe_node(k, text, sizeof text);
        diag_error(w->d, line, col, "expected a key name, found %s", text);
        return;
    }
    yaml_show_text((const char *)k->data.scalar.value, k->data.scalar.length, text, sizeof text);
    if (map == F_ROOT)
        snprintf(where, sizeof where, "at the top level");
    else {
        char path[96];
        field_path(map, path, sizeof path);
        snprintf(where, sizeof where, "in %s", path);
    }
    const char *hint = closest_key(map, text);
    field_id hinted = hint ? find_child_named(map, hint) : F_COUNT;
    if (hinted != F_COUNT) w->hinted[hinted] = true; /* "did you mean" already covers its absence */
    if (hint)
        diag_error(w->d, line, col, "unknown key '%s' %s; did you mean '%s'?", text, where, hint);
    else
        diag_error(w->d, line, col, "unknown key '%s' %s", text, where);
}

static field_id find_child(field_id map, const yaml_node_t *k)
{
    for (int f = 1; f < F_COUNT; f++)
        if (fields[f].parent == map && scalar_is(k, fields[f].key)) return (field_id)f;
    return F_COUNT;
}

static void check_missing(Walk *w, field_id map, const yaml_node_t *nd)
{
    for (int f = 1; f < F_COUNT; f++) {
        if (fields[f].parent != map || w->st[f] != ST_ABSENT) continue;
        if (fields[f].required && w->hinted[f]) {
            w->st[f] = ST_BAD;
        } else if (fields[f].required) {
            char where[112] = "at the top level";
            if (map != F_ROOT) {
                char path[96];
                field_path(map, path, sizeof path);
                snprintf(where, sizeof where, "in %s", path);
            }
            diag_error(w->d, (int)nd->start_mark.line + 1, (int)nd->start_mark.column + 1,
                       "missing required key '%s' %s", fields[f].key, where);
            w->st[f] = ST_BAD;
        }
        if (fields[f].type == T_MAP && w->st[f] == ST_BAD) mark_subtree_bad(w, (field_id)f);
    }
}

static void walk_map(Walk *w, field_id map, yaml_node_t *nd)
{
    if (nd->type != YAML_MAPPING_NODE) {
        if (map == F_ROOT) {
            char found[160];
            yaml_describe_node(nd, found, sizeof found);
            diag_error(w->d, (int)nd->start_mark.line + 1, (int)nd->start_mark.column + 1,
                       "expected a YAML mapping at the top level, found %s", found);
        } else {
            bad_value(w, map, nd, "a mapping");
        }
        w->st[map] = ST_BAD;
        mark_subtree_bad(w, map);
        return;
    }
    for (yaml_node_pair_t *p = nd->data.mapping.pairs.start; p < nd->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(w->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(w->doc, p->value);
        if (!k || !v) continue;
        field_id f = find_child(map, k);
        if (f == F_COUNT) {
            unknown_key(w, map, k);
        } else if (w->st[f] != ST_ABSENT) {
            char path[96];
            field_path(f, path, sizeof path);
            diag_error(w->d, (int)k->start_mark.line + 1, (int)k->start_mark.column + 1,
                       "duplicate key '%s' (%s is first set on line %d)", fields[f].key, path, w->line[f]);
        } else {
            read_field(w, f, v);
        }
    }
    check_missing(w, map, nd);
}

/* ---- cross-field checks ------------------------------------------------------------------------- */
static bool all_ok(const Walk *w, int n, ...)
{
    va_list ap;
    va_start(ap, n);
    bool ok = true;
    for (int i = 0; i < n; i++)
        if (w->st[va_arg(ap, int)] == ST_BAD) ok = false;
    va_end(ap);
    return ok;
}

/* Where to report a problem with field f: its value, else the enclosing mapping, else 1:1. */
static void loc_of(const Walk *w, field_id f, int *line, int *col)
{
    while (f != F_ROOT && w->st[f] != ST_OK) f = fields[f].parent;
    *line = w->line[f] ? w->line[f] : 1;
    *col = w->col[f] ? w->col[f] : 1;
}

static void err_at(Walk *w, field_id f, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void err_at(Walk *w, field_id f, const char *fmt, ...)
{
    char msg[512];
    int line, col;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    loc_of(w, f, &line, &col);
    diag_error(w->d, line, col, "%s", msg);
}

static void check_attention(Walk *w, const ModelSpec *s)
{
    if (all_ok(w, 2, F_HIDDEN, F_HEADS)) {
        if (s->hidden % s->n_heads != 0) {
            err_at(w, F_HEADS, "model.heads (%lld) does not divide model.hidden (%lld)", (long long)s->n_heads,
                   (long long)s->hidden);
            w->st[F_HEADS] = ST_BAD;
        } else if (spec_head_dim(s) % 2 != 0) {
            err_at(w, F_HEADS,
                   "head dimension model.hidden / model.heads = %lld is odd; RoPE's half-split needs an even one",
                   (long long)spec_head_dim(s));
        }
    }
    if (all_ok(w, 2, F_HEADS, F_KV_HEADS) && s->n_heads % s->n_kv_heads != 0)
        err_at(w, F_KV_HEADS, "model.kv_heads (%lld) does not divide model.heads (%lld)", (long long)s->n_kv_heads,
               (long long)s->n_heads);
    if (w->st[F_EOS] == ST_OK && w->st[F_VOCAB] == ST_OK && s->eos_token_id >= s->vocab)
        err_at(w, F_EOS, "model.eos_token_id (%lld) is outside the vocabulary [0, %lld)", (long long)s->eos_token_id,
               (long long)s->vocab);
}

/* Far beyond any real model; keeps E·E and 8E·D products and the tensor list in range. */
#define SPEC_MAX_EXPERTS (1 << 16)

static void check_moe(Walk *w, const ModelSpec *s)
{
    int64_t E = 0;
    bool experts_ok = all_ok(w, 4, F_FFN, F_CONST, F_COPY, F_ZERO);
    if (experts_ok && (!i64_add_ok(s->n_ffn, s->n_const, &E) || !i64_add_ok(E, s->n_copy, &E) ||
                       !i64_add_ok(E, s->n_zero, &E) || E > SPEC_MAX_EXPERTS)) {
        err_at(w, F_EXPERTS, "moe.experts: more than %d experts in a layer", SPEC_MAX_EXPERTS);
        experts_ok = false;
    }
    if (experts_ok && E == 0) {
        err_at(w, F_EXPERTS, "moe.experts: no experts (ffn + constant + copy + zero is 0)");
        experts_ok = false;
    }
    if (experts_ok && all_ok(w, 1, F_TOP_K) && s->top_k > E)
        err_at(w, F_TOP_K, "moe.top_k (%lld) exceeds the number of experts (%lld)", (long long)s->top_k,
               (long long)E);
    if (all_ok(w, 2, F_EVERY, F_LAYERS) && s->moe_every > s->n_layers)
        err_at(w, F_EVERY, "moe.every (%lld) exceeds model.layers (%lld), so no layer would be an MoE layer",
               (long long)s->moe_every, (long long)s->n_layers);
    if (all_ok(w, 2, F_EVERY, F_DENSE_I) && s->moe_every > 1 && s->dense_intermediate == 0)
        err_at(w, w->st[F_DENSE_I] == ST_OK ? F_DENSE_I : F_EVERY,
               "moe.every is %lld, so the other layers are dense MLPs and need moe.dense_intermediate > 0",
               (long long)s->moe_every);
    if (!experts_ok) w->st[F_EXPERTS] = ST_BAD; /* the size checks below need a sane E */
}

/* Total parameter count with every product checked, so later int64 arithmetic (summary, runtime
 * allocation) cannot overflow; names the first product that does not fit. */
static const char *params_overflow(const ModelSpec *s)
{
    int64_t D = s->hidden, E = spec_n_experts(s), t, per_layer = 0, u;
    if (!i64_mul_ok(s->vocab, D, &t) || !i64_mul_ok(t, 2, &t)) return "model.vocab × model.hidden";
    if (!i64_mul_ok(s->n_heads + s->n_kv_heads, D, &u) || !i64_mul_ok(u, 2 * 2, &u)) return "attention sizes";
    if (!i64_mul_ok(9 * E + 3, D + E + 1, &per_layer) || !i64_add_ok(per_layer, u, &per_layer))
        return "router sizes";
    if (!i64_mul_ok(s->ffn_intermediate, D, &u) || !i64_mul_ok(u, 3, &u) || !i64_mul_ok(u, s->n_ffn, &u) ||
        !i64_add_ok(per_layer, u, &per_layer))
        return "moe.experts.ffn × moe.intermediate × model.hidden";
    if (!i64_mul_ok(s->dense_intermediate, D, &u) || !i64_mul_ok(u, 3, &u) || !i64_add_ok(per_layer, u, &per_layer))
        return "moe.dense_intermediate × model.hidden";
    if (!i64_mul_ok(per_layer, s->n_layers, &u) || !i64_add_ok(t, u, &t))
        return "model.layers × the parameters of one layer";
    return NULL;
}

/* spec_tensors() lists every tensor by name; keep that list (and int counts) bounded. */
#define SPEC_MAX_TENSORS (1 << 18)

/* Every tensor of the model, weights and one token's activations alike, within 2^38 elements: 1 TB in
 * f32, the bound the IR verifier puts on a value (IR_MAX_VALUE_BYTES, ir/ir.h), so that whatever a
 * spec says, its sizes and the memory plan's offsets stay inside int64. Token ids are i32. */
#define SPEC_MAX_ELEMENTS ((int64_t)1 << 38)

static void check_tensor_sizes(Walk *w, const ModelSpec *s)
{
    if (s->vocab > INT32_MAX) {
        err_at(w, F_VOCAB, "model.vocab (%lld) exceeds 2^31 - 1: token ids are 32-bit", (long long)s->vocab);
        return;
    }
    int64_t widest; /* one token's widest activation row: top_k × intermediate of the grouped GEMMs */
    if (!i64_mul_ok(s->top_k, s->ffn_intermediate, &widest) || widest > SPEC_MAX_ELEMENTS) {
        err_at(w, F_INTERMEDIATE, "moe.top_k × moe.intermediate exceeds 2^38 elements in one token's activations");
        return;
    }
    /* the widest tensor of each kind (all layers alike; computed, not listed: a spec may have 2^18) */
    int64_t D = s->hidden, moe_l = s->moe_every - 1;
    struct { int64_t rows; const char *fmt; long long layer; } big[] = {
        {s->vocab, "model.embed_tokens.weight", 0},
        {D, "model.layers.%lld.self_attn.q_proj.weight", 0},
        {2 * s->ffn_intermediate, "model.layers.%lld.mlp.moe.experts.experts.0.up_proj.weight", moe_l},
        {8 * spec_n_experts(s), "model.layers.%lld.mlp.moe.gate.wg.0.weight", moe_l},
        {s->dense_intermediate, "model.layers.%lld.mlp.up_proj.weight", 0},
    };
    for (size_t k = 0; k < MOE_ARRAY_LEN(big); k++) {
        int64_t e;
        if (i64_mul_ok(big[k].rows, D, &e) && e <= SPEC_MAX_ELEMENTS) continue;
        char name[96];
        snprintf(name, sizeof name, big[k].fmt, big[k].layer);
        err_at(w, F_HIDDEN, "tensor %s [%lld, %lld] exceeds 2^38 elements", name, (long long)big[k].rows, (long long)D);
        return;
    }
}

static void check_sizes(Walk *w, const ModelSpec *s)
{
    if (!all_ok(w, 14, F_EXPERTS, F_VOCAB, F_HIDDEN, F_LAYERS, F_HEADS, F_KV_HEADS, F_FFN, F_CONST, F_COPY, F_ZERO,
                F_INTERMEDIATE, F_DENSE_I, F_EVERY, F_R_LAYERS) ||
        spec_n_experts(s) == 0)
        return;
    /* every count is < 2^63 here; bound the per-layer tensor count before multiplying */
    if (s->n_ffn + s->n_const > SPEC_MAX_TENSORS / 2 || s->n_layers > SPEC_MAX_TENSORS ||
        s->n_layers * (12 + 2 * (s->n_ffn + s->n_const)) > SPEC_MAX_TENSORS) {
        err_at(w, F_LAYERS, "the spec needs more than %d checkpoint tensors (model.layers × experts)",
               SPEC_MAX_TENSORS);
        return;
    }
    const char *what = params_overflow(s);
    if (what) err_at(w, F_HIDDEN, "the parameter count overflows a 64-bit integer (%s)", what);
    else check_tensor_sizes(w, s);
}

/* ---- from the walk to a ModelSpec --------------------------------------------------------------- */
static int64_t ival_or_default(const Walk *w, field_id f)
{
    return w->st[f] == ST_OK ? w->ival[f] : fields[f].def_i;
}

static double fval_or_default(const Walk *w, field_id f)
{
    return w->st[f] == ST_OK ? w->fval[f] : fields[f].def_f;
}

static void fill_spec(const Walk *w, ModelSpec *s)
{
    memset(s, 0, sizeof *s);
    memcpy(s->name, w->name, sizeof s->name);
    s->vocab = ival_or_default(w, F_VOCAB);
    s->hidden = ival_or_default(w, F_HIDDEN);
    s->n_layers = ival_or_default(w, F_LAYERS);
    s->n_heads = ival_or_default(w, F_HEADS);
    s->n_kv_heads = w->st[F_KV_HEADS] == ST_ABSENT ? s->n_heads : ival_or_default(w, F_KV_HEADS);
    s->rope_theta = fval_or_default(w, F_ROPE_THETA);
    s->norm_eps = fval_or_default(w, F_NORM_EPS);
    s->max_positions = ival_or_default(w, F_MAX_POS);
    s->dtype = (moe_dtype)ival_or_default(w, F_DTYPE);
    s->tie_embeddings = ival_or_default(w, F_TIE) != 0;
    s->has_eos = w->st[F_EOS] == ST_OK;
    s->eos_token_id = ival_or_default(w, F_EOS);
    s->moe_every = ival_or_default(w, F_EVERY);
    s->dense_intermediate = ival_or_default(w, F_DENSE_I);
    s->top_k = ival_or_default(w, F_TOP_K);
    s->n_ffn = ival_or_default(w, F_FFN);
    s->n_const = ival_or_default(w, F_CONST);
    s->n_copy = ival_or_default(w, F_COPY);
    s->n_zero = ival_or_default(w, F_ZERO);
    s->ffn_intermediate = ival_or_default(w, F_INTERMEDIATE);
    int64_t rl = ival_or_default(w, F_R_LAYERS);
    s->router_layers = rl == 1 || rl == 2 ? (int)rl : 0;
    s->gating = (spec_gating)ival_or_default(w, F_GATING);
    s->logits_norm = ival_or_default(w, F_LOGITS_NORM) != 0;
    s->logits_norm_std = fval_or_default(w, F_LOGITS_STD);
    s->gating_residual = ival_or_default(w, F_RESIDUAL) != 0;
    s->input_scaling = ival_or_default(w, F_INPUT_SCALING) != 0;
}

static void check_spec(Walk *w, ModelSpec *s)
{
    if (w->st[F_FORMAT] == ST_OK && w->ival[F_FORMAT] != 1) {
        err_at(w, F_FORMAT, "format: unsupported version %lld; this moeppc reads format 1",
               (long long)w->ival[F_FORMAT]);
        return; /* another version's keys would only produce noise */
    }
    if (w->st[F_R_LAYERS] == ST_OK && w->ival[F_R_LAYERS] != 1 && w->ival[F_R_LAYERS] != 2) {
        err_at(w, F_R_LAYERS, "moe.router.layers: expected 1 or 2, found %lld", (long long)w->ival[F_R_LAYERS]);
        w->st[F_R_LAYERS] = ST_BAD;
    }
    check_attention(w, s);
    check_moe(w, s);
    check_sizes(w, s);
}

static bool spec_load_named(const char *text, size_t len, const char *default_name, ModelSpec *out, Diag *d)
{
    int errors_before = d->n_errors;
    yaml_document_t doc;
    bool empty = false;
    if (!yaml_load_one(text, len, "a spec", &doc, d, &empty)) return false;
    if (empty) {
        diag_error(d, 1, 1, "expected a YAML mapping, found an empty document");
        yaml_document_delete(&doc);
        return false;
    }
    Walk *w = xcalloc(1, sizeof *w);
    w->doc = &doc;
    w->d = d;
    str_copy_trunc(w->name, sizeof w->name, default_name);
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    w->line[F_ROOT] = (int)root->start_mark.line + 1;
    w->col[F_ROOT] = (int)root->start_mark.column + 1;
    w->st[F_ROOT] = ST_OK;
    walk_map(w, F_ROOT, root);
    ModelSpec s;
    if (w->st[F_ROOT] == ST_OK) {
        fill_spec(w, &s);
        check_spec(w, &s);
    }
    bool ok = d->n_errors == errors_before;
    if (ok) *out = s;
    free(w);
    yaml_document_delete(&doc);
    return ok;
}

bool spec_load_string(const char *text, size_t len, ModelSpec *out, Diag *d)
{
    return spec_load_named(text, len, "spec", out, d);
}

/* "specs/tiny/tiny-gqa.yaml" → "tiny-gqa" ("spec" if nothing is left). */
void spec_name_from_path(const char *path, char *buf, size_t n)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    str_copy_trunc(buf, n, b);
    char *dot = strrchr(buf, '.');
    if (dot && dot != buf) *dot = 0;
    if (!buf[0]) snprintf(buf, n, "spec");
}

bool spec_read_file(const char *path, const char *what, void (*name_of)(const char *path, char *buf, size_t n),
                    SpecParseFn parse, ModelSpec *out, Diag *d)
{
    const char *saved = d->file;
    if (!d->file) d->file = path;
    size_t len = 0;
    char *text = file_read_all(path, &len);
    bool ok = false;
    if (!text) {
        diag_error(d, 0, 0, "cannot read the %s: %s", what, strerror(errno));
    } else {
        char name[sizeof out->name];
        name_of(path, name, sizeof name);
        ok = parse(text, len, name, out, d);
        free(text);
    }
    d->file = saved;
    return ok;
}

bool spec_load_file(const char *path, ModelSpec *out, Diag *d)
{
    return spec_read_file(path, "spec", spec_name_from_path, spec_load_named, out, d);
}

/* ---- writing ------------------------------------------------------------------------------------ */
/* The shortest %g text that reads back as exactly v, always with a '.' or an exponent so a reader
 * sees a float. */
static void format_double(double v, char *buf, size_t n)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, n, "%.1f", v);
        return;
    }
    /* "1e-06" → "1.0e-6": the style of the shipped specs */
    char mant[40], *e = strchr(buf, 'e');
    if (!e) return;
    int exp10 = atoi(e + 1);
    *e = 0;
    snprintf(mant, sizeof mant, "%s%s", buf, strchr(buf, '.') ? "" : ".0");
    char out[64];
    snprintf(out, sizeof out, "%se%d", mant, exp10);
    str_copy_trunc(buf, n, out);
}

/* Names made of safe characters are written plain; anything else double-quoted with escapes. */
static void write_name(FILE *f, const char *name)
{
    bool plain = name[0] != 0 && strchr("-.0123456789", name[0]) == NULL;
    for (const char *p = name; *p; p++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+", *p)) plain = false;
    if (!strcmp(name, "true") || !strcmp(name, "false") || !strcmp(name, "null")) plain = false;
    if (plain) {
        fprintf(f, "name: %s\n", name);
        return;
    }
    fputs("name: \"", f);
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            fprintf(f, "\\x%02x", *p);
        else
            fputc(*p, f);
    }
    fputs("\"\n", f);
}

bool spec_write_yaml(const ModelSpec *s, FILE *f)
{
    char theta[40], eps[40], std[40];
    format_double(s->rope_theta, theta, sizeof theta);
    format_double(s->norm_eps, eps, sizeof eps);
    format_double(s->logits_norm_std, std, sizeof std);
    fprintf(f, "# moeppc model spec, format v1 (specs/README.md)\nformat: 1\n");
    write_name(f, s->name);
    fprintf(f, "model:\n  vocab: %lld\n  hidden: %lld\n  layers: %lld\n  heads: %lld\n  kv_heads: %lld\n",
            (long long)s->vocab, (long long)s->hidden, (long long)s->n_layers, (long long)s->n_heads,
            (long long)s->n_kv_heads);
    fprintf(f, "  rope_theta: %s\n  norm_eps: %s\n  max_positions: %lld\n  dtype: %s\n  tie_embeddings: %s\n",
            theta, eps, (long long)s->max_positions, dtype_name(s->dtype), s->tie_embeddings ? "true" : "false");
    if (s->has_eos) fprintf(f, "  eos_token_id: %lld\n", (long long)s->eos_token_id);
    fprintf(f, "moe:\n  every: %lld\n  dense_intermediate: %lld\n  top_k: %lld\n", (long long)s->moe_every,
            (long long)s->dense_intermediate, (long long)s->top_k);
    fprintf(f, "  experts:\n    ffn: %lld\n    constant: %lld\n    copy: %lld\n    zero: %lld\n",
            (long long)s->n_ffn, (long long)s->n_const, (long long)s->n_copy, (long long)s->n_zero);
    fprintf(f, "  intermediate: %lld\n  router:\n    layers: %d\n    gating: %s\n", (long long)s->ffn_intermediate,
            s->router_layers, gating_names[s->gating]);
    fprintf(f, "    logits_norm: %s\n    logits_norm_std: %s\n    residual: %s\n  input_scaling: %s\n",
            s->logits_norm ? "true" : "false", std, s->gating_residual ? "true" : "false",
            s->input_scaling ? "true" : "false");
    return fflush(f) == 0 && !ferror(f);
}
