/* hf.c — a Hugging Face config.json of the released MoE++ model, or of a Mixtral model (the vanilla MoE
 * baseline's architecture), → ModelSpec.
 *
 * The released code's defaults fill absent keys (configuration class of the Skywork-MoE lineage MoE++ is
 * built on: moe_expert_interval 1, moe_use_mixtral_gating false, moe_2layer_gate true, moe_use_logits_norm
 * false, moe_gate_norm_std 1.0, moe_feature_no_mul_topk false, num_key_value_heads = heads, rope_theta
 * 10000, rms_norm_eps 1e-6, vocab 32000, max_position_embeddings 2048, tie_word_embeddings false).
 * Mixtral (model_type "mixtral"): transformers' MixtralConfig defaults fill absent keys (rope_theta 1e6,
 * rms_norm_eps 1e-5, num_key_value_heads 8, max_position_embeddings 131072, num_local_experts 8,
 * num_experts_per_tok 2), and the spec is the vanilla one: no zero-computation experts, a one-layer
 * router, top-k then softmax over the picks (Mixtral's softmax-then-top-k-renormalised is the same),
 * no gating residual, no input scaling. Its checkpoint's expert names are the loader's to map
 * (runtime/checkpoint_layout.c).
 * The result is re-checked by the spec loader, so an import never produces a spec `moeppc check` rejects.
 */
#include "frontend/frontend.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The released code fixes these; they are not config keys. */
#define HF_TOP_K 2
#define HF_N_ZC 4 /* 1 zero + 1 copy + 2 constant experts, counted in num_experts */

typedef struct {
    const cJSON *root;
    Diag *d;
} HfConfig;

/* "a string \"x\"", "1.5", "an array": a JSON value, for "found ...". */
static void describe_json(const cJSON *v, char *buf, size_t n)
{
    if (cJSON_IsNumber(v))
        snprintf(buf, n, "%.17g", v->valuedouble);
    else if (cJSON_IsString(v)) {
        char shown[48];
        str_escape(v->valuestring, strlen(v->valuestring), shown, sizeof shown);
        snprintf(buf, n, "the string \"%s\"", shown);
    }
    else if (cJSON_IsBool(v))
        snprintf(buf, n, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v))
        snprintf(buf, n, "null");
    else if (cJSON_IsArray(v))
        snprintf(buf, n, "a list of %d elements", cJSON_GetArraySize(v));
    else
        snprintf(buf, n, "an object");
}

static void hf_bad(HfConfig *c, const char *key, const cJSON *v, const char *expected)
{
    char found[96];
    describe_json(v, found, sizeof found);
    diag_error(c->d, 0, 0, "%s: expected %s, found %s", key, expected, found);
}

static bool json_int(const cJSON *v, int64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double x = v->valuedouble;
    if (!isfinite(x) || x != floor(x) || fabs(x) > 9007199254740992.0) return false; /* 2^53: exact */
    *out = (int64_t)x;
    return true;
}

/* An integer >= min; def when absent (required keys pass def < 0 and report absence). */
static int64_t hf_int(HfConfig *c, const char *key, int64_t min, int64_t def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, key);
    int64_t x;
    if (!v || cJSON_IsNull(v)) {
        if (def < 0) diag_error(c->d, 0, 0, "missing required key '%s'", key);
        return def;
    }
    if (!json_int(v, &x) || x < min) {
        hf_bad(c, key, v, min > 0 ? "a positive integer" : "a non-negative integer");
        return -1;
    }
    return x;
}

static double hf_float(HfConfig *c, const char *key, double def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, key);
    if (!v || cJSON_IsNull(v)) return def;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || !(v->valuedouble > 0)) {
        hf_bad(c, key, v, "a positive number");
        return def;
    }
    return v->valuedouble;
}

static bool hf_bool(HfConfig *c, const char *key, bool def)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, key);
    if (!v || cJSON_IsNull(v)) return def;
    if (!cJSON_IsBool(v)) {
        hf_bad(c, key, v, "true or false");
        return def;
    }
    return cJSON_IsTrue(v);
}

static moe_dtype hf_dtype(HfConfig *c)
{
    static const struct { const char *hf; moe_dtype t; } names[] = {
        {"bfloat16", DT_BF16}, {"float16", DT_F16}, {"float32", DT_F32}};
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, "torch_dtype");
    if (!v || cJSON_IsNull(v)) return DT_BF16; /* the released checkpoint's */
    for (size_t i = 0; i < MOE_ARRAY_LEN(names); i++)
        if (cJSON_IsString(v) && strcmp(v->valuestring, names[i].hf) == 0) return names[i].t;
    hf_bad(c, "torch_dtype", v, "one of \"bfloat16\", \"float16\", \"float32\"");
    return DT_BF16;
}

/* num_experts is a one-element list holding E, the 4 zero-computation experts included. */
static int64_t hf_num_experts(HfConfig *c)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, "num_experts");
    int64_t n;
    if (!v) {
        diag_error(c->d, 0, 0, "missing required key 'num_experts'");
        return -1;
    }
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 1) {
        hf_bad(c, "num_experts", v, "a list of one integer (one expert count for every MoE layer)");
        return -1;
    }
    if (!json_int(cJSON_GetArrayItem(v, 0), &n) || n <= HF_N_ZC || n > (1 << 16)) {
        hf_bad(c, "num_experts[0]", cJSON_GetArrayItem(v, 0),
               "an integer > 4 (the count includes 1 zero, 1 copy and 2 constant experts)");
        return -1;
    }
    return n;
}

/* Keys the released model never sets to anything else; a different value is a different model. */
static void hf_unsupported(HfConfig *c)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, "rope_scaling");
    if (v && !cJSON_IsNull(v)) hf_bad(c, "rope_scaling", v, "null (RoPE scaling is not supported)");
    v = cJSON_GetObjectItemCaseSensitive(c->root, "hidden_act");
    if (v && !(cJSON_IsString(v) && strcmp(v->valuestring, "silu") == 0)) hf_bad(c, "hidden_act", v, "\"silu\"");
}

/* eos_token_id: an id, or a list of ids (newer configs) of which the spec keeps the first (run's
 * --stop takes several); absent or null: none. Its range is the spec loader's check (hf_recheck). */
static void hf_eos(HfConfig *c, ModelSpec *s)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, "eos_token_id"), *e;
    if (!v || cJSON_IsNull(v)) return;
    const cJSON *first = cJSON_IsArray(v) ? v->child : v;
    bool ok = first && json_int(first, &s->eos_token_id) && s->eos_token_id >= 0;
    if (cJSON_IsArray(v))
        cJSON_ArrayForEach(e, v) {
            int64_t x = -1;
            ok = ok && json_int(e, &x) && x >= 0;
        }
    if (!ok) {
        hf_bad(c, "eos_token_id", v, "a token id or a list of them");
        return;
    }
    s->has_eos = true;
}

/* The defaults of the keys both model types share, where their configuration classes differ. */
typedef struct HfDefaults {
    int64_t kv_heads;          /* 0: num_attention_heads */
    double  rope_theta, norm_eps;
    int64_t max_positions;
} HfDefaults;

static const HfDefaults hf_moepp_defaults = {0, 10000.0, 1e-6, 2048};
static const HfDefaults hf_mixtral_defaults = {8, 1e6, 1e-5, 4096 * 32};

static void hf_read_model(HfConfig *c, ModelSpec *s, const HfDefaults *def)
{
    s->vocab = hf_int(c, "vocab_size", 1, 32000);
    s->hidden = hf_int(c, "hidden_size", 1, -1);
    s->n_layers = hf_int(c, "num_hidden_layers", 1, -1);
    s->n_heads = hf_int(c, "num_attention_heads", 1, -1);
    s->n_kv_heads = hf_int(c, "num_key_value_heads", 1, def->kv_heads ? def->kv_heads : s->n_heads > 0 ? s->n_heads : 0);
    s->rope_theta = hf_float(c, "rope_theta", def->rope_theta);
    s->norm_eps = hf_float(c, "rms_norm_eps", def->norm_eps);
    s->max_positions = hf_int(c, "max_position_embeddings", 1, def->max_positions);
    s->dtype = hf_dtype(c);
    s->tie_embeddings = hf_bool(c, "tie_word_embeddings", false);
    hf_eos(c, s);
}

static void hf_read_moe(HfConfig *c, ModelSpec *s)
{
    int64_t n = hf_num_experts(c);
    s->ffn_intermediate = hf_int(c, "intermediate_size", 1, -1);
    s->moe_every = hf_int(c, "moe_expert_interval", 1, 1);
    /* the released code's dense layers use the same intermediate_size */
    s->dense_intermediate = s->moe_every > 1 ? s->ffn_intermediate : 0;
    s->top_k = HF_TOP_K;
    s->n_ffn = n > 0 ? n - HF_N_ZC : 0;
    s->n_const = 2, s->n_copy = 1, s->n_zero = 1;
    s->router_layers = hf_bool(c, "moe_2layer_gate", true) ? 2 : 1;
    s->gating = hf_bool(c, "moe_use_mixtral_gating", false) ? GATING_TOPK_SOFTMAX : GATING_SOFTMAX_TOPK;
    s->logits_norm = hf_bool(c, "moe_use_logits_norm", false);
    s->logits_norm_std = hf_float(c, "moe_gate_norm_std", 1.0);
    s->gating_residual = true; /* always on in the released model */
    s->input_scaling = !hf_bool(c, "moe_feature_no_mul_topk", false);
}

/* Mixtral: every layer a vanilla MoE layer of num_local_experts SwiGLU experts. */
static void hf_read_mixtral(HfConfig *c, ModelSpec *s)
{
    s->ffn_intermediate = hf_int(c, "intermediate_size", 1, -1);
    s->moe_every = 1;
    s->dense_intermediate = 0;
    s->n_ffn = hf_int(c, "num_local_experts", 1, 8);
    s->top_k = hf_int(c, "num_experts_per_tok", 1, 2);
    s->n_const = s->n_copy = s->n_zero = 0;
    s->router_layers = 1;
    s->gating = GATING_TOPK_SOFTMAX;
    s->logits_norm = false;
    s->logits_norm_std = 1.0;
    s->gating_residual = false;
    s->input_scaling = false;
    if (s->n_ffn > 0 && s->top_k > s->n_ffn)
        diag_error(c->d, 0, 0, "num_experts_per_tok (%lld) exceeds num_local_experts (%lld)", (long long)s->top_k,
                   (long long)s->n_ffn);
    /* head_dim (newer configs) may only restate hidden_size / num_attention_heads */
    int64_t hd = hf_int(c, "head_dim", 1, 0);
    if (hd > 0 && s->hidden > 0 && s->n_heads > 0 && hd * s->n_heads != s->hidden)
        diag_error(c->d, 0, 0, "head_dim (%lld) is not hidden_size / num_attention_heads (%lld / %lld): a separate "
                   "head dimension is not supported", (long long)hd, (long long)s->hidden, (long long)s->n_heads);
    /* A sliding window shorter than the context changes attention past it: positions stop there, where
     * full and windowed attention still agree. */
    int64_t win = hf_int(c, "sliding_window", 1, 0);
    if (win > 0 && s->max_positions > win) {
        diag_warning(c->d, 0, 0, "sliding_window %lld is shorter than max_position_embeddings %lld: the spec stops at "
                     "%lld positions, where attention without the window is the same", (long long)win,
                     (long long)s->max_positions, (long long)win);
        s->max_positions = win;
    }
}

/* model_type picks the reader: "moe++" (also when absent: the released config) or "mixtral". */
typedef enum { HF_UNKNOWN, HF_MOEPP, HF_MIXTRAL } HfModelType;

static HfModelType hf_model_type(HfConfig *c)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->root, "model_type");
    if (!v || cJSON_IsNull(v)) return HF_MOEPP;
    if (cJSON_IsString(v) && strcmp(v->valuestring, "moe++") == 0) return HF_MOEPP;
    if (cJSON_IsString(v) && strcmp(v->valuestring, "mixtral") == 0) return HF_MIXTRAL;
    hf_bad(c, "model_type", v, "\"moe++\" (MoE++) or \"mixtral\" (a vanilla MoE)");
    return HF_UNKNOWN;
}

/* Contradictions between keys, named in the config's own terms. */
static void hf_check(HfConfig *c, const ModelSpec *s)
{
    if (s->hidden > 0 && s->n_heads > 0) {
        if (s->hidden % s->n_heads)
            diag_error(c->d, 0, 0, "num_attention_heads (%lld) does not divide hidden_size (%lld)",
                       (long long)s->n_heads, (long long)s->hidden);
        else if (spec_head_dim(s) % 2)
            diag_error(c->d, 0, 0, "head dimension hidden_size / num_attention_heads = %lld is odd; RoPE needs even",
                       (long long)spec_head_dim(s));
    }
    if (s->n_heads > 0 && s->n_kv_heads > 0 && s->n_heads % s->n_kv_heads)
        diag_error(c->d, 0, 0, "num_key_value_heads (%lld) does not divide num_attention_heads (%lld)",
                   (long long)s->n_kv_heads, (long long)s->n_heads);
    if (s->moe_every > 0 && s->n_layers > 0 && s->moe_every > s->n_layers)
        diag_error(c->d, 0, 0, "moe_expert_interval (%lld) exceeds num_hidden_layers (%lld): no MoE layer",
                   (long long)s->moe_every, (long long)s->n_layers);
}

static char *spec_to_yaml(const ModelSpec *s, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    MOE_ASSERT(f);
    spec_write_yaml(s, f);
    fclose(f);
    return buf;
}

/* Whatever hf_check does not catch (sizes that overflow, ...) the spec loader does: run the result
 * through it and report its first complaint against the config. */
static bool hf_recheck(const ModelSpec *s, Diag *d)
{
    char *msgs = NULL;
    size_t len = 0, mlen = 0;
    char *buf = spec_to_yaml(s, &len);
    FILE *m = open_memstream(&msgs, &mlen);
    MOE_ASSERT(m);
    ModelSpec back;
    Diag inner = {.out = m, .file = "spec"};
    bool ok = spec_load_string(buf, len, &back, &inner);
    fclose(m);
    if (!ok) {
        char *nl = strchr(msgs, '\n');
        if (nl) *nl = 0;
        const char *msg = strstr(msgs, "error: ");
        diag_error(d, 0, 0, "the config describes an invalid model: %s", msg ? msg + 7 : msgs);
    }
    free(buf);
    free(msgs);
    return ok;
}

/* cJSON gives an offset; a reader wants line:col. */
static void offset_to_line_col(const char *text, size_t off, int *line, int *col)
{
    *line = 1, *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (text[i] == '\n')
            (*line)++, *col = 1;
        else
            (*col)++;
    }
}

/* "…/MoE-Plus-Plus-7B/config.json" → "MoE-Plus-Plus-7B": HF configs are all called config.json. */
static void hf_name(const char *path, char *buf, size_t n)
{
    char tmp[512];
    str_copy_trunc(tmp, sizeof tmp, path);
    char *slash = strrchr(tmp, '/');
    char *base = slash ? slash + 1 : tmp;
    char *dot = strrchr(base, '.');
    if (dot && dot != base) *dot = 0;
    if (strcmp(base, "config") == 0 && slash) {
        *slash = 0;
        char *up = strrchr(tmp, '/');
        if (up ? up[1] : tmp[0]) base = up ? up + 1 : tmp;
    }
    str_copy_trunc(buf, n, base[0] ? base : "moepp");
}

static cJSON *hf_parse(const char *text, size_t len, Diag *d)
{
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, false);
    if (!root) {
        int line, col;
        size_t off = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        offset_to_line_col(text, off, &line, &col);
        diag_error(d, 0, 0, "not valid JSON: syntax error at line %d, column %d", line, col);
    } else if (!cJSON_IsObject(root)) {
        char found[96];
        describe_json(root, found, sizeof found);
        diag_error(d, 0, 0, "expected a JSON object at the top level, found %s", found);
        cJSON_Delete(root);
        root = NULL;
    }
    return root;
}

bool spec_from_hf_json(const char *text, size_t len, const char *name, ModelSpec *out, Diag *d)
{
    int errors_before = d->n_errors;
    cJSON *root = hf_parse(text, len, d);
    bool ok = false;
    if (root) {
        ModelSpec s;
        memset(&s, 0, sizeof s);
        str_copy_trunc(s.name, sizeof s.name, name ? name : "moepp");
        HfConfig c = {.root = root, .d = d};
        HfModelType type = hf_model_type(&c);
        if (type != HF_UNKNOWN) {
            hf_read_model(&c, &s, type == HF_MIXTRAL ? &hf_mixtral_defaults : &hf_moepp_defaults);
            if (type == HF_MIXTRAL)
                hf_read_mixtral(&c, &s);
            else
                hf_read_moe(&c, &s);
            hf_unsupported(&c);
            hf_check(&c, &s);
        }
        ok = d->n_errors == errors_before && hf_recheck(&s, d);
        if (ok) *out = s;
        cJSON_Delete(root);
    }
    return ok;
}

bool spec_from_hf_config(const char *path, ModelSpec *out, Diag *d)
{
    return spec_read_file(path, "config", hf_name, spec_from_hf_json, out, d);
}

/* ---- SPEC given as a Hugging Face config or model directory --------------------------------------- */
bool spec_is_model_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool ends_with_json(const char *path)
{
    size_t n = strlen(path);
    return n >= 5 && strcmp(path + n - 5, ".json") == 0;
}

bool spec_load_any(const char *path, ModelSpec *out, Diag *d)
{
    if (ends_with_json(path)) return spec_from_hf_config(path, out, d);
    if (!spec_is_model_dir(path)) return spec_load_file(path, out, d);
    size_t n = strlen(path) + sizeof "/config.json";
    char *config = xmalloc(n);
    snprintf(config, n, "%s%sconfig.json", path, path[0] && path[strlen(path) - 1] == '/' ? "" : "/");
    const char *saved = d->file;
    d->file = config; /* its errors are the config's */
    struct stat st;
    bool ok = false;
    if (stat(config, &st) != 0)
        diag_error(d, 0, 0, "the directory given as the model holds no config.json (SPEC is a YAML spec, a Hugging "
                   "Face config.json, or a model directory holding one)");
    else
        ok = spec_from_hf_config(config, out, d);
    d->file = saved;
    free(config);
    return ok;
}

char *spec_yaml_text(const char *path, const ModelSpec *s)
{
    size_t len;
    return ends_with_json(path) || spec_is_model_dir(path) ? spec_to_yaml(s, &len) : file_read_all(path, NULL);
}
