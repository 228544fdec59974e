/* tuning.c — the tuning database (tuning.h documents the format): YAML in with every problem a
 * diagnostic at its node, YAML out atomically, and the check that a database was made for this target.
 *
 * The walk reports every independent problem in one run (like spec.c): each mapping's keys are matched
 * against a fixed list first (unknown, duplicate and missing keys), then each present value is read.
 */
#include "passes/tuning.h"
#include "passes/schedule.h"

#include "frontend/yaml_util.h"
#include "ir/ir.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* ---- reading YAML nodes ------------------------------------------------------------------------ */
typedef struct {
    yaml_document_t *doc;
    Diag *d;
} Ctx;

static int node_line(const yaml_node_t *nd) { return (int)nd->start_mark.line + 1; }
static int node_col(const yaml_node_t *nd) { return (int)nd->start_mark.column + 1; }

static void bad_value(Ctx *c, const char *path, const yaml_node_t *nd, const char *expected)
{
    char found[160];
    yaml_describe_node(nd, found, sizeof found);
    diag_error(c->d, node_line(nd), node_col(nd), "%s: expected %s, found %s", path, expected, found);
}

/* A scalar with no NUL inside: its text, else NULL. */
static const char *scalar_text(const yaml_node_t *nd)
{
    if (nd->type != YAML_SCALAR_NODE) return NULL;
    const char *s = (const char *)nd->data.scalar.value;
    return strlen(s) == nd->data.scalar.length ? s : NULL;
}

static bool is_plain(const yaml_node_t *nd)
{
    return nd->type == YAML_SCALAR_NODE && nd->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

/* A plain YAML number (integer or float; strtod's own words such as inf, nan and hex are not). */
static bool parse_number(const yaml_node_t *nd, double *out)
{
    const char *s = scalar_text(nd);
    if (!s || !is_plain(nd) || s[0] == 0 || strspn(s, "0123456789+-.eE") != strlen(s)) return false;
    char *end;
    *out = strtod(s, &end);
    return *end == 0 && end != s;
}

/* An AMX tile (`act: amx`): M 1..16 or 32, N 16 or 32, one k step a loop (codegen/llvm's AMX kernels). */
static bool amx_config(const TuneConfig *c)
{
    return ((c->tile_m >= 1 && c->tile_m <= 16) || c->tile_m == 32) && (c->tile_n == 16 || c->tile_n == 32) &&
           c->unroll <= 1 && c->kc % 32 == 0;
}

/* A decode MLP RxW/mlp: R rows of h a block (8, 16, 32 or 64) by W warps (1..32), nothing else. */
static bool mlp_config(const TuneConfig *c)
{
    TuneConfig only = {.tile_m = c->tile_m, .tile_n = c->tile_n, .mlp = 1};
    return (c->tile_m == 8 || c->tile_m == 16 || c->tile_m == 32 || c->tile_m == 64) && c->tile_n >= 1 &&
           c->tile_n <= 32 && tune_config_equal(c, &only);
}

/* Does c suit entry e's op (GEMM ops: a tile and no key block, an AMX tile for `act: amx`, a decode MLP
 * on grouped_down at 1 token; attention: a key block (CPU) or a form QxP[/kvB] (GPU), nothing else)? */
static bool config_fits(const TuneEntry *e, const TuneConfig *c)
{
    const char *op = e->op;
    if (!op[0]) return true; /* the op was reported already */
    if (e->amx && !amx_config(c)) return false;
    if (c->mlp) return mlp_config(c) && !c->gq && !strcmp(op, "grouped_down") && e->tokens == 1;
    if (tune_op_is_gemm(op))
        return c->tile_m > 0 && c->kv_block == 0 && (!c->tma || c->wgmma) && (!c->ws || c->tma) && !c->tc && !c->gq;
    return c->unroll == 0 && c->kc == 0 && c->mc == 0 && c->stages == 0 && c->wgmma == 0 && c->split == 0 && !c->ws &&
           (c->kv_block > 0 || c->tile_m > 0) && (!c->tc || c->tile_m > 0) && (!c->gq || (c->tile_m == 1 && !c->tc));
}

static const char *config_expected(const TuneEntry *e, const TuneConfig *c)
{
    const char *op = e->op;
    if (c->mlp) return "a decode MLP RxW/mlp (R 8, 16, 32 or 64; W 1..32; for grouped_down at tokens 1)";
    if (e->amx) return "an AMX tile MxN[/u1][/kcK][/mcR] (M 1..16 or 32, N 16 or 32, K a multiple of 32)";
    return !op[0] || tune_op_is_gemm(op)
               ? "a GEMM configuration MxN[/uU][/kcK][/mcR] (positive; M, N <= 4096, U <= 16, R <= 65536; tma only with wg, ws only with tma)"
               : "an attention configuration kvB (1 <= B <= 1024), or on a GPU QxP[/kvB][/tc] or 1xP[/kvB][/gG]";
}

/* ---- mappings with a fixed key list ------------------------------------------------------------ */
/* Fill vals[i] with the value of keys[i] (NULL when absent, reported). False when nd is no mapping. */
/* The keys of mapping nd into vals (NULL: absent); keys[n_required..n_keys) may be absent. */
static bool walk_keys(Ctx *c, const char *path, yaml_node_t *nd, const char *const *keys, int n_keys,
                      int n_required, yaml_node_t **vals)
{
    bool hinted[16] = {false}; /* keys a "did you mean" already names: their absence is not repeated */
    MOE_ASSERT(n_keys <= 16);
    for (int i = 0; i < n_keys; i++) vals[i] = NULL;
    if (nd->type != YAML_MAPPING_NODE) {
        bad_value(c, path, nd, "a mapping");
        return false;
    }
    char where[80];
    snprintf(where, sizeof where, path[0] ? "in %s" : "at the top level", path);
    for (yaml_node_pair_t *p = nd->data.mapping.pairs.start; p < nd->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key), *v = yaml_document_get_node(c->doc, p->value);
        const char *text = scalar_text(k);
        int i = 0;
        while (text && i < n_keys && strcmp(text, keys[i]) != 0) i++;
        char shown[128];
        if (!text) {
            yaml_describe_node(k, shown, sizeof shown);
            diag_error(c->d, node_line(k), node_col(k), "expected a key name %s, found %s", where, shown);
        } else if (i == n_keys) {
            int hint = -1, best = strlen(text) <= 3 ? 2 : 3;
            for (int j = 0; j < n_keys; j++) {
                int dist = str_edit_distance(text, keys[j]);
                if (dist < best) best = dist, hint = j;
            }
            yaml_show_text(text, strlen(text), shown, sizeof shown);
            if (hint >= 0) {
                hinted[hint] = true;
                diag_error(c->d, node_line(k), node_col(k), "unknown key '%s' %s; did you mean '%s'?", shown, where,
                           keys[hint]);
            } else
                diag_error(c->d, node_line(k), node_col(k), "unknown key '%s' %s", shown, where);
        } else if (vals[i]) {
            diag_error(c->d, node_line(k), node_col(k), "duplicate key '%s' %s (first set on line %d)", text, where,
                       node_line(vals[i]));
        } else {
            vals[i] = v;
        }
    }
    for (int i = 0; i < n_required; i++)
        if (!vals[i] && !hinted[i])
            diag_error(c->d, node_line(nd), node_col(nd), "missing required key '%s' %s", keys[i], where);
    return true;
}

/* A string that fits in buf (size n): copied, else reported. */
static void read_str(Ctx *c, const char *path, const yaml_node_t *nd, char *buf, size_t n)
{
    const char *s = scalar_text(nd);
    if (!s || !s[0] || strlen(s) >= n) {
        char expected[64];
        snprintf(expected, sizeof expected, "a non-empty string of at most %zu bytes", n - 1);
        bad_value(c, path, nd, expected);
        return;
    }
    memcpy(buf, s, strlen(s) + 1);
}

/* ---- the target --------------------------------------------------------------------------------- */
static void read_features(Ctx *c, const yaml_node_t *nd, uint64_t *out)
{
    const char *s = scalar_text(nd);
    if (!s || strlen(s) != 16 || strspn(s, "0123456789abcdefABCDEF") != 16) {
        bad_value(c, "target.features", nd, "the feature hash as 16 hex digits");
        return;
    }
    *out = strtoull(s, NULL, 16);
}

static void read_target(Ctx *c, yaml_node_t *nd, TuneTarget *t)
{
    static const char *const keys[] = {"cpu", "isa", "features"};
    yaml_node_t *v[3];
    if (!walk_keys(c, "target", nd, keys, 3, 3, v)) return;
    if (v[0]) read_str(c, "target.cpu", v[0], t->cpu, sizeof t->cpu);
    if (v[1]) read_str(c, "target.isa", v[1], t->isa, sizeof t->isa);
    if (v[2]) read_features(c, v[2], &t->features);
}

/* ---- entries ------------------------------------------------------------------------------------ */
static const char *const tune_ops[] = {"linear", "route", "grouped_up", "grouped_down", "attention"};
static const moe_dtype tune_dtypes[] = {DT_F32, DT_BF16, DT_F16};

static void read_op(Ctx *c, const char *path, const yaml_node_t *nd, TuneEntry *e)
{
    const char *s = scalar_text(nd);
    for (size_t i = 0; s && i < MOE_ARRAY_LEN(tune_ops); i++)
        if (!strcmp(s, tune_ops[i])) {
            snprintf(e->op, sizeof e->op, "%s", s);
            return;
        }
    bad_value(c, path, nd, "one of linear, route, grouped_up, grouped_down, attention");
}

static void read_dtype(Ctx *c, const char *path, const yaml_node_t *nd, TuneEntry *e)
{
    const char *s = scalar_text(nd);
    for (size_t i = 0; s && i < MOE_ARRAY_LEN(tune_dtypes); i++)
        if (!strcmp(s, dtype_name(tune_dtypes[i]))) {
            e->dtype = tune_dtypes[i];
            return;
        }
    bad_value(c, path, nd, "one of f32, bf16, f16");
}

static bool read_positive(Ctx *c, const char *path, const yaml_node_t *nd, int64_t *out)
{
    if (!yaml_node_int(nd, out) || *out < 1) {
        bad_value(c, path, nd, "a positive integer");
        return false;
    }
    return true;
}

/* measured: {CONFIG: gflops, ...}. False when anything in it is wrong. */
static bool read_measured(Ctx *c, const char *path, yaml_node_t *nd, TuneEntry *e)
{
    if (nd->type != YAML_MAPPING_NODE) {
        bad_value(c, path, nd, "a mapping of configurations to GFLOP/s");
        return false;
    }
    int n_pairs = (int)(nd->data.mapping.pairs.top - nd->data.mapping.pairs.start);
    if (n_pairs > TUNE_MAX_MEASURED) {
        diag_error(c->d, node_line(nd), node_col(nd), "%s: expected at most %d configurations, found %d", path,
                   TUNE_MAX_MEASURED, n_pairs);
        return false;
    }
    bool ok = true;
    for (yaml_node_pair_t *p = nd->data.mapping.pairs.start; p < nd->data.mapping.pairs.top; p++) {
        yaml_node_t *k = yaml_document_get_node(c->doc, p->key), *v = yaml_document_get_node(c->doc, p->value);
        TuneMeasure m;
        char sub[96], name[64];
        if (!tune_config_parse(scalar_text(k), &m.c) || !config_fits(e, &m.c)) {
            char expected[192];
            snprintf(expected, sizeof expected, "%s as the key", config_expected(e, &m.c));
            bad_value(c, path, k, expected);
            ok = false;
            continue;
        }
        tune_config_format(&m.c, name, sizeof name);
        snprintf(sub, sizeof sub, "%s.%s", path, name);
        for (int i = 0; i < e->n_measured; i++)
            if (tune_config_equal(&e->measured[i].c, &m.c)) {
                diag_error(c->d, node_line(k), node_col(k), "%s: duplicate configuration %s", path, name);
                ok = false;
            }
        if (!parse_number(v, &m.gflops) || !isfinite(m.gflops) || m.gflops < 0) {
            bad_value(c, sub, v, "a number of GFLOP/s >= 0");
            ok = false;
            continue;
        }
        e->measured[e->n_measured++] = m;
    }
    return ok;
}

static void check_best(Ctx *c, const char *path, const yaml_node_t *best_nd, const TuneEntry *e)
{
    char list[TUNE_MAX_MEASURED * 32] = "", name[64];
    for (int i = 0; i < e->n_measured; i++) {
        if (tune_config_equal(&e->measured[i].c, &e->best)) return;
        tune_config_format(&e->measured[i].c, name, sizeof name);
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", name);
    }
    tune_config_format(&e->best, name, sizeof name);
    diag_error(c->d, node_line(best_nd), node_col(best_nd), "%s.best: %s is not among the measured configurations (%s)",
               path, name, e->n_measured ? list : "none");
}

enum { K_OP, K_DTYPE, K_N, K_K, K_GROUPS, K_TOKENS, K_BEST, K_MEASURED, K_ACT, K_COUNT }; /* act optional */

/* One entry; false (reported) when anything in it is wrong. */
static bool read_entry(Ctx *c, int idx, yaml_node_t *nd, TuneEntry *e)
{
    static const char *const keys[K_COUNT] = {"op", "dtype", "n", "k", "groups", "tokens", "best", "measured", "act"};
    int errors_before = c->d->n_errors;
    char path[48], sub[80];
    yaml_node_t *v[K_COUNT];
    memset(e, 0, sizeof *e);
    e->line = node_line(nd);
    snprintf(path, sizeof path, "entries[%d]", idx);
    if (!walk_keys(c, path, nd, keys, K_COUNT, K_ACT, v)) return false;
    int64_t *ints[] = {[K_N] = &e->n, [K_K] = &e->k, [K_GROUPS] = &e->groups, [K_TOKENS] = &e->tokens};
    bool best_ok = false, measured_ok = false;
#define SUB(i) (snprintf(sub, sizeof sub, "%s.%s", path, keys[i]), sub)
    if (v[K_OP]) read_op(c, SUB(K_OP), v[K_OP], e);
    if (v[K_DTYPE]) read_dtype(c, SUB(K_DTYPE), v[K_DTYPE], e);
    if (v[K_ACT]) { /* bf16 activations of a GEMM measured on the bf16 dot product, or on AMX tiles */
        const char *s = scalar_text(v[K_ACT]);
        if (!s || (strcmp(s, "bf16") && strcmp(s, "amx")))
            bad_value(c, SUB(K_ACT), v[K_ACT], "bf16 or amx");
        else if (e->dtype != DT_BF16 || !tune_op_is_gemm(e->op) || !strcmp(e->op, "route"))
            diag_error(c->d, node_line(v[K_ACT]), node_col(v[K_ACT]),
                       "%s: bf16 activations are for a linear or grouped GEMM of bf16 weights, not %s of %s", SUB(K_ACT),
                       e->op, dtype_name(e->dtype));
        else
            e->act_bf16 = true, e->amx = !strcmp(s, "amx");
    }
    for (int i = K_N; i <= K_TOKENS; i++) {
        bool ok = v[i] && read_positive(c, SUB(i), v[i], ints[i]);
        if (i == K_GROUPS && ok && (!strcmp(e->op, "linear") || !strcmp(e->op, "route")) && e->groups != 1)
            diag_error(c->d, node_line(v[i]), node_col(v[i]), "%s.groups: expected 1 for op %s, found %lld", path,
                       e->op, (long long)e->groups);
    }
    if (v[K_BEST]) {
        best_ok = tune_config_parse(scalar_text(v[K_BEST]), &e->best) && config_fits(e, &e->best);
        if (!best_ok) bad_value(c, SUB(K_BEST), v[K_BEST], config_expected(e, &e->best));
    }
    if (v[K_MEASURED]) measured_ok = read_measured(c, SUB(K_MEASURED), v[K_MEASURED], e);
#undef SUB
    if (best_ok && measured_ok) check_best(c, path, v[K_BEST], e);
    return c->d->n_errors == errors_before;
}

static bool same_key(const TuneEntry *a, const TuneEntry *b)
{
    return !strcmp(a->op, b->op) && a->dtype == b->dtype && a->n == b->n && a->k == b->k && a->groups == b->groups &&
           a->tokens == b->tokens && a->act_bf16 == b->act_bf16 && a->amx == b->amx;
}

static void read_entries(Ctx *c, yaml_node_t *nd, TuneDb *db)
{
    if (nd->type != YAML_SEQUENCE_NODE) {
        bad_value(c, "entries", nd, "a sequence");
        return;
    }
    int idx = 0;
    for (yaml_node_item_t *it = nd->data.sequence.items.start; it < nd->data.sequence.items.top; it++, idx++) {
        yaml_node_t *item = yaml_document_get_node(c->doc, *it);
        TuneEntry e;
        if (!item || !read_entry(c, idx, item, &e)) continue;
        int dup = -1;
        for (int j = 0; j < db->n && dup < 0; j++)
            if (same_key(&db->e[j], &e)) dup = j;
        if (dup >= 0)
            diag_error(c->d, node_line(item), node_col(item),
                       "entries[%d]: duplicate entry (op %s, dtype %s, n %lld, k %lld, groups %lld, tokens %lld), "
                       "first on line %d",
                       idx, e.op, dtype_name(e.dtype), (long long)e.n, (long long)e.k, (long long)e.groups,
                       (long long)e.tokens, db->e[dup].line);
        else
            tune_db_add(db, &e);
    }
}

/* ---- the document ------------------------------------------------------------------------------- */
static void read_root(Ctx *c, yaml_node_t *root, TuneDb *db)
{
    static const char *const keys[] = {"moeppc_tuning", "compiler", "llvm", "target", "entries"};
    yaml_node_t *v[5];
    if (root->type != YAML_MAPPING_NODE) {
        char found[160];
        yaml_describe_node(root, found, sizeof found);
        diag_error(c->d, node_line(root), node_col(root), "expected a YAML mapping at the top level, found %s", found);
        return;
    }
    /* the version first: another version's keys would only produce noise */
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        const char *key = scalar_text(yaml_document_get_node(c->doc, p->key));
        yaml_node_t *val = yaml_document_get_node(c->doc, p->value);
        int64_t version;
        if (key && !strcmp(key, keys[0]) && yaml_node_int(val, &version) && version != 1) {
            diag_error(c->d, node_line(val), node_col(val),
                       "moeppc_tuning: unsupported version %lld; this moeppc reads version 1", (long long)version);
            return;
        }
    }
    walk_keys(c, "", root, keys, 5, 5, v);
    if (v[0] && !yaml_node_int(v[0], &(int64_t){0})) bad_value(c, "moeppc_tuning", v[0], "an integer");
    if (v[1]) read_str(c, "compiler", v[1], db->target.compiler, sizeof db->target.compiler);
    if (v[2]) read_str(c, "llvm", v[2], db->target.llvm, sizeof db->target.llvm);
    if (v[3]) read_target(c, v[3], &db->target);
    if (v[4]) read_entries(c, v[4], db);
}

/* Exactly one YAML document; false (reported) otherwise. The caller deletes *doc on success. */
static bool load_document(const char *text, size_t len, yaml_document_t *doc, Diag *d)
{
    bool empty = false;
    if (!yaml_load_one(text, len, "a tuning database", doc, d, &empty)) return false;
    if (!empty) return true;
    diag_error(d, 1, 1, "expected a YAML mapping, found an empty document");
    yaml_document_delete(doc);
    return false;
}

bool tune_db_load_string(const char *text, size_t len, TuneDb *db, Diag *d)
{
    memset(db, 0, sizeof *db);
    int errors_before = d->n_errors;
    yaml_document_t doc;
    if (load_document(text, len, &doc, d)) {
        Ctx c = {&doc, d};
        read_root(&c, yaml_document_get_root_node(&doc), db);
        yaml_document_delete(&doc);
    }
    if (d->n_errors == errors_before) return true;
    tune_db_free(db);
    return false;
}

bool tune_db_load(const char *path, TuneDb *db, Diag *d)
{
    memset(db, 0, sizeof *db);
    const char *saved = d->file;
    if (!d->file) d->file = path;
    size_t len = 0;
    char *text = file_read_all(path, &len);
    bool ok = false;
    if (!text)
        diag_error(d, 0, 0, "cannot read the tuning database: %s", strerror(errno));
    else
        ok = tune_db_load_string(text, len, db, d);
    free(text);
    d->file = saved;
    return ok;
}

/* ---- writing ------------------------------------------------------------------------------------ */
static void buf_quoted(StrBuf *b, const char *s)
{
    strbuf_printf(b, "\"");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            strbuf_printf(b, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7f)
            strbuf_printf(b, "\\x%02x", *p);
        else
            strbuf_printf(b, "%c", *p);
    }
    strbuf_printf(b, "\"");
}

/* Safe names plain (znver3, avx512), anything a YAML reader could take for something else quoted. */
static void buf_name(StrBuf *b, const char *s)
{
    bool plain = s[0] != 0 && strchr("-.+0123456789", s[0]) == NULL &&
                 strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+") == strlen(s) &&
                 strcmp(s, "true") && strcmp(s, "false") && strcmp(s, "null");
    if (plain)
        strbuf_printf(b, "%s", s);
    else
        buf_quoted(b, s);
}

bool tune_db_save(const TuneDb *db, const char *path, char *why, size_t why_len)
{
    StrBuf b = {NULL, 0, 0};
    const TuneTarget *t = &db->target;
    strbuf_printf(&b, "moeppc_tuning: 1\ncompiler: ");
    buf_quoted(&b, t->compiler);
    strbuf_printf(&b, "\nllvm: ");
    buf_quoted(&b, t->llvm);
    strbuf_printf(&b, "\ntarget: {cpu: ");
    buf_name(&b, t->cpu);
    strbuf_printf(&b, ", isa: ");
    buf_name(&b, t->isa);
    char feat[20];
    snprintf(feat, sizeof feat, "%016llx", (unsigned long long)t->features);
    /* all digits (or digits and an 'e') would read as a number to other YAML tools */
    if (strspn(feat, "0123456789e") == strlen(feat))
        strbuf_printf(&b, ", features: \"%s\"}\n", feat);
    else
        strbuf_printf(&b, ", features: %s}\n", feat);
    strbuf_printf(&b, "entries:%s\n", db->n ? "" : " []");
    for (int i = 0; i < db->n; i++) {
        const TuneEntry *e = &db->e[i];
        char name[64];
        tune_config_format(&e->best, name, sizeof name);
        const char *act = e->amx ? " act: amx," : e->act_bf16 ? " act: bf16," : "";
        strbuf_printf(&b, "  - {op: %s, dtype: %s,%s n: %lld, k: %lld, groups: %lld, tokens: %lld, best: %s, measured: {",
                   e->op, dtype_name(e->dtype), act, (long long)e->n, (long long)e->k, (long long)e->groups,
                   (long long)e->tokens, name);
        for (int j = 0; j < e->n_measured; j++) {
            tune_config_format(&e->measured[j].c, name, sizeof name);
            double g = e->measured[j].gflops; /* below 1 (a GEMV at T = 1 on the emulator) with 3 digits */
            strbuf_printf(&b, g >= 1 || g == 0 ? "%s%s: %.1f" : "%s%s: %.3g", j ? ", " : "", name, g);
        }
        strbuf_printf(&b, "}}\n");
    }
    bool ok = file_write_atomic(path, b.s, b.len, why, why_len);
    free(b.s);
    return ok;
}

/* ---- the database in memory --------------------------------------------------------------------- */
void tune_db_add(TuneDb *db, const TuneEntry *e)
{
    if (db->n == db->cap) {
        db->cap = db->cap ? db->cap * 2 : 16;
        db->e = xrealloc(db->e, (size_t)db->cap * sizeof *db->e);
    }
    db->e[db->n++] = *e;
}

void tune_db_free(TuneDb *db)
{
    free(db->e);
    memset(db, 0, sizeof *db);
}

void tune_gpu_target(TuneTarget *t, const char *gpu_name, const char *arch, const char *nvrtc)
{
    memset(t, 0, sizeof *t);
    snprintf(t->cpu, sizeof t->cpu, "%s", gpu_name);
    snprintf(t->isa, sizeof t->isa, "%s", arch);
    snprintf(t->llvm, sizeof t->llvm, "%s", nvrtc);
    snprintf(t->compiler, sizeof t->compiler, "%s", MOEPPC_VERSION);
    t->features = hash_str(gpu_name);
}

int tune_db_gpu_schedules(const TuneDb *db, const IrModule *m, const char *sched[4], Arena *arena)
{
    static const ir_op ops[4] = {IR_OP_MOE_GROUPED_UP, IR_OP_MOE_GROUPED_DOWN, IR_OP_ATTENTION, IR_OP_MOE_ROUTE};
    static const char *const names[4] = {"grouped_up", "grouped_down", "attention", "route"};
    int set = 0;
    for (int kind = 0; kind < 4; kind++) {
        const IrInstr *i = m->first;
        while (i && i->op != ops[kind]) i = i->next;
        if (!i) continue;
        /* the key: the weight's shape, as on the CPU (route: its first matrix, one group); attention's
         * heads, head_dim, kv_heads and its activations' dtype (16-bit: a tensor-core form) */
        const IrValue *w = kind == 2 ? NULL : i->in[kind == 0 ? 3 : kind == 1 ? 5 : 1];
        moe_dtype dt = w ? w->type.dtype : tune_attention_dtype(i);
        int64_t n = w ? w->type.dims[0] : ir_attr_int(i, "heads"), k = w ? w->type.dims[1] : i->in[0]->type.dims[1] / n;
        int64_t groups = kind == 3 ? 1 : ir_attr_int(i, w ? "experts" : "kv_heads");
        const TuneEntry *found[TILE_MAX_BUCKETS];
        int nf = 0;
        for (int q = 0; q < db->n && nf < TILE_MAX_BUCKETS; q++) {
            const TuneEntry *e = &db->e[q];
            if (!strcmp(e->op, names[kind]) && e->dtype == dt && e->n == n && e->k == k && e->groups == groups &&
                e->tokens > 0)
                found[nf++] = e;
        }
        char *s = nf ? tile_schedule_format(found, nf, TILE_SCHED_GPU, arena) : NULL;
        TileSchedule check;
        if (!s || !tile_schedule_parse(s, &check)) continue; /* no bucket measured a tile */
        sched[kind] = s;
        set++;
    }
    return set;
}

void tune_db_apply_gpu(const char *path, const TuneDb *db, const char *gpu, const char *arch, const char *nvrtc,
                       const IrModule *m, const char *sched[4], Arena *arena)
{
    TuneTarget t;
    tune_gpu_target(&t, gpu, arch, nvrtc);
    char why[512];
    if (!tune_db_matches(db, &t, why, sizeof why))
        fprintf(stderr, "%s: warning: %s; its entries are ignored and the rule decides\n", path, why);
    else if (tune_db_gpu_schedules(db, m, sched, arena) == 0)
        fprintf(stderr, "%s: warning: no entry for this model's grouped GEMMs, attention or router; the rule decides\n",
                path);
    else
        fprintf(stderr, "%s: grouped GEMM tiles by tokens (T:tile@GFLOP/s;...): up %s, down %s; attention %s; router %s\n",
                path, sched[0] ? strchr(sched[0], ';') + 1 : "the rule's", sched[1] ? strchr(sched[1], ';') + 1 : "the rule's",
                sched[2] ? strchr(sched[2], ';') + 1 : "the rule's", sched[3] ? strchr(sched[3], ';') + 1 : "the rule's");
}

/* "cpu znver3 (avx512) with LLVM 14.0.6 by moeppc 0.1.0", features shown only when they differ. */
static void describe_target(const TuneTarget *t, bool show_features, char *buf, size_t n)
{
    if (show_features)
        snprintf(buf, n, "cpu %s (%s, features %016llx) with LLVM %s by moeppc %s", t->cpu, t->isa,
                 (unsigned long long)t->features, t->llvm, t->compiler);
    else
        snprintf(buf, n, "cpu %s (%s) with LLVM %s by moeppc %s", t->cpu, t->isa, t->llvm, t->compiler);
}

bool tune_db_matches(const TuneDb *db, const TuneTarget *t, char *why, size_t why_len)
{
    const TuneTarget *a = &db->target;
    bool same_features = a->features == t->features || (t->features_all && a->features == t->features_all);
    bool diff[5] = {strcmp(a->cpu, t->cpu) != 0, strcmp(a->isa, t->isa) != 0, !same_features,
                    strcmp(a->llvm, t->llvm) != 0, strcmp(a->compiler, t->compiler) != 0};
    static const char *const names[5] = {"cpu", "isa", "cpu features", "LLVM version", "compiler version"};
    char list[96] = "", mine[200], theirs[200];
    for (int i = 0; i < 5; i++)
        if (diff[i]) snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", list[0] ? ", " : "", names[i]);
    if (why && why_len) why[0] = 0;
    if (!list[0]) return true;
    if (why && why_len) {
        describe_target(a, diff[2], theirs, sizeof theirs);
        describe_target(t, diff[2], mine, sizeof mine);
        snprintf(why, why_len, "tuned for %s; this is %s (differs: %s)", theirs, mine, list);
    }
    return false;
}
