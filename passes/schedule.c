/* schedule.c — tuning schedules: how an op carries the tuning database's measurements to run time.
 *
 * The specialize pass fixes a GEMM's panel width NR (packing depends on it) and records, per token
 * bucket the tuner measured, the GFLOP/s of the configurations at that NR that won some bucket, as
 * the string attribute tile_schedule = "NR;T:CONFIG@G,CONFIG@G;T:…" (CONFIG as in tuning.h, e.g.
 * 1x48/u2; attention's schedules have NR 0 and kvB configurations). At run time the executor picks
 * a configuration for the call's T: the best measured at a bucket it hits, else among the two
 * neighbouring buckets' winners the one whose GFLOP/s, interpolated in log T between those buckets,
 * is higher — measured neighbours, not the nearest bucket. */
#include "passes/schedule.h"

#include "ir/ir.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- configurations (tuning.h; here, since the runtime links this file but not the YAML reader) ---- */
/* A positive decimal integer at *s (no sign, no leading zero), at most max; *s moves past it. */
static bool parse_count(const char **s, int64_t max, int64_t *out)
{
    const char *p = *s;
    if (p[0] < '1' || p[0] > '9') return false;
    int64_t v = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        v = v * 10 + (*p - '0');
        if (v > max) return false;
    }
    *out = v, *s = p;
    return true;
}

/* The bounds are the IR verifier's for the attributes these become (tile_m, tile_n <= 4096,
 * tile_unroll <= 16, tile_mc <= 65536, kv_block <= 1024); a GPU tile's stages (s) 2..6, split-K
 * (sk) 2..16, attention's query heads a block (g) 1..64 (the form checks its group). */
bool tune_config_parse(const char *text, TuneConfig *c)
{
    memset(c, 0, sizeof *c);
    if (!text || !text[0]) return false;
    if (!strcmp(text, "rule")) return true;
    bool seen[13] = {false};
    for (const char *s = text;;) {
        int64_t v, w;
        int field;
        if (s[0] >= '1' && s[0] <= '9') { /* MxN */
            if (!parse_count(&s, 4096, &v) || *s++ != 'x' || !parse_count(&s, 4096, &w)) return false;
            c->tile_m = (int)v, c->tile_n = (int)w, field = 0;
        } else if (s[0] == 'u') {
            s++;
            if (!parse_count(&s, 16, &v)) return false;
            c->unroll = (int)v, field = 1;
        } else if (!strncmp(s, "kc", 2) || !strncmp(s, "mc", 2)) {
            bool kc = s[0] == 'k';
            s += 2;
            if (!parse_count(&s, kc ? (int64_t)1 << 40 : 65536, &v)) return false;
            if (kc) c->kc = v;
            else c->mc = v;
            field = kc ? 2 : 3;
        } else if (!strncmp(s, "kv", 2)) {
            s += 2;
            if (!parse_count(&s, 1024, &v)) return false;
            c->kv_block = (int)v, field = 4;
        } else if (!strncmp(s, "tc", 2)) {
            s += 2;
            c->tc = 1, field = 9;
        } else if (!strncmp(s, "tma", 3)) {
            s += 3;
            c->tma = 1, field = 8;
        } else if (!strncmp(s, "wg", 2)) {
            s += 2;
            c->wgmma = 1, field = 6;
        } else if (!strncmp(s, "mlp", 3)) {
            s += 3;
            c->mlp = 1, field = 11;
        } else if (!strncmp(s, "ws", 2)) {
            s += 2;
            c->ws = 1, field = 10;
        } else if (s[0] == 'g') {
            s++;
            if (!parse_count(&s, 64, &v)) return false;
            c->gq = (int)v, field = 12;
        } else if (!strncmp(s, "sk", 2)) {
            s += 2;
            if (!parse_count(&s, 16, &v) || v < 2) return false;
            c->split = (int)v, field = 7;
        } else if (s[0] == 's') {
            s++;
            if (!parse_count(&s, 6, &v) || v < 2) return false;
            c->stages = (int)v, field = 5;
        } else {
            return false;
        }
        if (seen[field]) return false;
        seen[field] = true;
        if (*s == 0) return true;
        if (*s++ != '/') return false;
    }
}

void tune_config_format(const TuneConfig *c, char *buf, size_t n)
{
    StrBuf b = {NULL, 0, 0};
    const char *sep = "";
    if (c->tile_m) strbuf_printf(&b, "%dx%d", c->tile_m, c->tile_n), sep = "/";
    if (c->unroll) strbuf_printf(&b, "%su%d", sep, c->unroll), sep = "/";
    if (c->kc) strbuf_printf(&b, "%skc%lld", sep, (long long)c->kc), sep = "/";
    if (c->mc) strbuf_printf(&b, "%smc%lld", sep, (long long)c->mc), sep = "/";
    if (c->kv_block) strbuf_printf(&b, "%skv%d", sep, c->kv_block), sep = "/";
    if (c->stages) strbuf_printf(&b, "%ss%d", sep, c->stages), sep = "/";
    if (c->wgmma) strbuf_printf(&b, "%swg", sep), sep = "/";
    if (c->tma) strbuf_printf(&b, "%stma", sep), sep = "/";
    if (c->ws) strbuf_printf(&b, "%sws", sep), sep = "/";
    if (c->split) strbuf_printf(&b, "%ssk%d", sep, c->split), sep = "/";
    if (c->tc) strbuf_printf(&b, "%stc", sep), sep = "/";
    if (c->gq) strbuf_printf(&b, "%sg%d", sep, c->gq), sep = "/";
    if (c->mlp) strbuf_printf(&b, "%smlp", sep);
    snprintf(buf, n, "%s", b.s ? b.s : "rule");
    free(b.s);
}

bool tune_config_equal(const TuneConfig *a, const TuneConfig *b)
{
    return a->tile_m == b->tile_m && a->tile_n == b->tile_n && a->unroll == b->unroll && a->kc == b->kc &&
           a->mc == b->mc && a->kv_block == b->kv_block && a->stages == b->stages && a->wgmma == b->wgmma &&
           a->split == b->split && a->tma == b->tma && a->ws == b->ws && a->tc == b->tc && a->mlp == b->mlp &&
           a->gq == b->gq;
}

moe_dtype tune_attention_dtype(const struct IrInstr *i)
{
    const IrValue *v = i->in[0];
    while (v->kind == IR_VAL_RESULT && v->def->op == IR_OP_ROPE) v = v->def->in[0];
    return v->kind == IR_VAL_RESULT && v->def->op == IR_OP_LINEAR ? v->def->in[1]->type.dtype : DT_F32;
}

bool tune_op_is_gemm(const char *op)
{
    return !strcmp(op, "linear") || !strcmp(op, "route") || !strcmp(op, "grouped_up") || !strcmp(op, "grouped_down");
}

/* ---- schedules ---------------------------------------------------------------------------------- */
static int cmp_tokens(const void *a, const void *b)
{
    const TuneEntry *x = *(const TuneEntry *const *)a, *y = *(const TuneEntry *const *)b;
    return x->tokens < y->tokens ? -1 : x->tokens > y->tokens;
}

/* Does c belong in a schedule of width nr (a GEMM tile of that width; nr = 0: attention's key block)? */
static bool fits_width(const TuneConfig *c, int nr)
{
    if (nr == TILE_SCHED_GPU) return c->tile_m > 0; /* (attention's forms may name a key tile) */
    if (c->mlp) return false;                       /* (the GPU's decode MLP)                      */
    return nr == 0 ? c->tile_m == 0 && c->kv_block > 0 : c->tile_n == nr && c->kv_block == 0;
}

/* The best measured configuration of e at width nr (NULL: none). */
static const TuneMeasure *best_at(const TuneEntry *e, int nr)
{
    const TuneMeasure *best = NULL;
    for (int c = 0; c < e->n_measured; c++)
        if (fits_width(&e->measured[c].c, nr) && (!best || e->measured[c].gflops > best->gflops)) best = &e->measured[c];
    return best;
}

/* e's measurement of configuration c (NULL: none). */
static const TuneMeasure *measured_of(const TuneEntry *e, const TuneConfig *c)
{
    for (int k = 0; k < e->n_measured; k++)
        if (tune_config_equal(&e->measured[k].c, c)) return &e->measured[k];
    return NULL;
}

bool tile_schedule_width(const TuneEntry **e, int n, const TuneEntry *near, const TuneConfig *rule, TuneConfig *out)
{
    int widths[64], n_w = 0;
    for (int k = 0; k < n; k++)
        for (int c = 0; c < e[k]->n_measured; c++) {
            const TuneConfig *m = &e[k]->measured[c].c;
            bool have = m->tile_m <= 0 || m->kv_block != 0;
            for (int w = 0; w < n_w && !have; w++) have = widths[w] == m->tile_n;
            if (!have && n_w < (int)MOE_ARRAY_LEN(widths)) widths[n_w++] = m->tile_n;
        }
    double best_loss = 0;
    const TuneMeasure *pick = NULL;
    for (int w = 0; w < n_w; w++) {
        double loss = 0;
        bool fit = best_at(near, widths[w]) != NULL;
        for (int k = 0; k < n && fit; k++) {
            const TuneMeasure *at = best_at(e[k], widths[w]), *any = best_at(e[k], TILE_SCHED_GPU); /* any tile */
            const TuneMeasure *r = measured_of(e[k], rule);
            fit = at && at->gflops > 0 && (!r || at->gflops >= r->gflops);
            if (fit) loss += any->gflops / at->gflops;
        }
        if (fit && (!pick || loss < best_loss)) best_loss = loss, pick = best_at(near, widths[w]);
    }
    if (pick) *out = pick->c;
    return pick != NULL;
}

char *tile_schedule_format(const TuneEntry **e, int n, int nr, Arena *arena)
{
    qsort(e, (size_t)n, sizeof *e, cmp_tokens);
    if (n > TILE_MAX_BUCKETS) n = TILE_MAX_BUCKETS;
    TuneConfig win[TILE_MAX_BUCKETS];
    int n_win = 0;
    for (int k = 0; k < n; k++) {
        const TuneMeasure *b = best_at(e[k], nr);
        bool have = false;
        for (int w = 0; b && w < n_win; w++) have |= tune_config_equal(&win[w], &b->c);
        if (b && !have) win[n_win++] = b->c;
    }
    StrBuf b = {NULL, 0, 0};
    strbuf_printf(&b, "%d", nr);
    for (int k = 0; k < n; k++) {
        if (!best_at(e[k], nr)) continue; /* a bucket that measured nothing at this width has nothing to say */
        strbuf_printf(&b, ";%lld:", (long long)e[k]->tokens);
        const char *sep = "";
        const TuneMeasure *mlp = NULL, *other = NULL; /* the bucket's best decode MLP, and best else */
        for (int c = 0; c < e[k]->n_measured; c++) {
            const TuneMeasure *m = &e[k]->measured[c], **to = m->c.mlp ? &mlp : &other;
            if (fits_width(&m->c, nr) && (!*to || m->gflops > (*to)->gflops)) *to = m;
        }
        for (int c = 0; c < e[k]->n_measured; c++) {
            const TuneMeasure *m = &e[k]->measured[c];
            bool won = mlp && (m == mlp || m == other);
            for (int w = 0; w < n_win; w++) won |= tune_config_equal(&win[w], &m->c);
            if (!won || !fits_width(&m->c, nr)) continue;
            char name[64];
            tune_config_format(&m->c, name, sizeof name);
            strbuf_printf(&b, m->gflops >= 1 || m->gflops == 0 ? "%s%s@%.1f" : "%s%s@%.3g", sep, name, m->gflops);
            sep = ",";
        }
    }
    char *s = arena_strdup(arena, b.s);
    free(b.s);
    return s;
}

bool tile_schedule_parse(const char *s, TileSchedule *out)
{
    memset(out, 0, sizeof *out);
    char *end;
    long nr = strtol(s, &end, 10);
    if (end == s || nr < TILE_SCHED_GPU || nr > 4096 || (*end != ';' && *end)) return false;
    out->nr = (int)nr;
    const char *p = end;
    while (*p == ';') {
        if (out->n == TILE_MAX_BUCKETS) return false;
        TileBucket *b = &out->b[out->n++];
        b->tokens = strtoll(p + 1, &end, 10);
        if (*end != ':' || b->tokens < 1 || (out->n > 1 && b->tokens <= out->b[out->n - 2].tokens)) return false;
        p = end + 1;
        while (*p && *p != ';') {
            if (b->n == TILE_MAX_BUCKETS) return false;
            size_t len = strcspn(p, "@;,");
            char name[64];
            if (p[len] != '@' || len == 0 || len >= sizeof name) return false;
            memcpy(name, p, len), name[len] = 0;
            if (!tune_config_parse(name, &b->c[b->n]) || !fits_width(&b->c[b->n], out->nr)) return false;
            b->gflops[b->n++] = strtod(p + len + 1, &end);
            if (end == p + len + 1 || (*end && *end != ',' && *end != ';')) return false;
            p = *end == ',' ? end + 1 : end;
        }
        if (b->n == 0) return false;
    }
    return out->n > 0 && *p == 0;
}

static TuneConfig best_of(const TileBucket *b)
{
    int best = 0;
    for (int c = 1; c < b->n; c++)
        if (b->gflops[c] > b->gflops[best]) best = c;
    return b->c[best];
}

static double gflops_of(const TileBucket *b, const TuneConfig *c)
{
    for (int k = 0; k < b->n; k++)
        if (tune_config_equal(&b->c[k], c)) return b->gflops[k];
    return -1;
}

TuneConfig tile_schedule_pick(const TileSchedule *s, int64_t T)
{
    if (T <= s->b[0].tokens) return best_of(&s->b[0]);
    for (int i = 0; i + 1 < s->n; i++) {
        const TileBucket *lo = &s->b[i], *hi = &s->b[i + 1];
        if (T >= hi->tokens) continue;
        if (T == lo->tokens) return best_of(lo);
        double f = (log((double)T) - log((double)lo->tokens)) / (log((double)hi->tokens) - log((double)lo->tokens));
        TuneConfig cand[2] = {best_of(lo), best_of(hi)}, pick = cand[0];
        double best = -1;
        for (int c = 0; c < 2; c++) {
            double a = gflops_of(lo, &cand[c]), b = gflops_of(hi, &cand[c]);
            if (a < 0 || b < 0) continue; /* not measured at both neighbours */
            double g = a + (b - a) * f;
            if (g > best) best = g, pick = cand[c];
        }
        return pick;
    }
    return best_of(&s->b[s->n - 1]);
}
