/* schedule.c — tile schedules: how a GEMM op carries the tuning database's measurements to run time.
 *
 * The specialize pass fixes a GEMM's panel width NR (packing depends on it) and records, per token
 * bucket the tuner measured, the GFLOP/s of each register-tile height MR at that NR, as the string
 * attribute tile_schedule = "NR;T:MR@G,MR@G;T:…". At run time the executor picks MR for the call's T:
 * the best measured at a bucket it hits, else among the two neighbouring buckets' winners the one
 * whose GFLOP/s, interpolated in log T between those buckets, is higher — measured neighbours, not
 * the nearest bucket. */
#include "passes/schedule.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_tokens(const void *a, const void *b)
{
    const TuneEntry *x = *(const TuneEntry *const *)a, *y = *(const TuneEntry *const *)b;
    return x->tokens < y->tokens ? -1 : x->tokens > y->tokens;
}

char *tile_schedule_format(const TuneEntry **e, int n, int nr, Arena *arena)
{
    qsort(e, (size_t)n, sizeof *e, cmp_tokens);
    StrBuf b = {NULL, 0, 0};
    strbuf_printf(&b, "%d", nr);
    for (int k = 0; k < n && k < TILE_MAX_BUCKETS; k++) {
        int at_nr = 0; /* a bucket that measured no tile of this width has nothing to say */
        for (int c = 0; c < e[k]->n_measured; c++) at_nr += e[k]->measured[c].tile_n == nr;
        if (!at_nr) continue;
        strbuf_printf(&b, ";%lld:", (long long)e[k]->tokens);
        const char *sep = "";
        for (int c = 0; c < e[k]->n_measured; c++) {
            if (e[k]->measured[c].tile_n != nr) continue;
            strbuf_printf(&b, "%s%d@%.1f", sep, e[k]->measured[c].tile_m, e[k]->measured[c].gflops);
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
    out->nr = (int)strtol(s, &end, 10);
    if (end == s || out->nr < 1) return false;
    for (const char *p = end; *p == ';' && out->n < TILE_MAX_BUCKETS;) {
        TileBucket *b = &out->b[out->n++];
        b->tokens = strtoll(p + 1, &end, 10);
        if (*end != ':' || b->tokens < 1) return false;
        p = end + 1;
        while (*p && *p != ';' && b->n < TUNE_MAX_MEASURED) {
            b->mr[b->n] = (int)strtol(p, &end, 10);
            if (*end != '@' || b->mr[b->n] < 1) return false;
            b->gflops[b->n++] = strtod(end + 1, &end);
            p = *end == ',' ? end + 1 : end;
        }
        if (b->n == 0) return false;
    }
    return out->n > 0;
}

static int best_of(const TileBucket *b)
{
    int best = 0;
    for (int c = 1; c < b->n; c++)
        if (b->gflops[c] > b->gflops[best]) best = c;
    return b->mr[best];
}

static double gflops_of(const TileBucket *b, int mr)
{
    for (int c = 0; c < b->n; c++)
        if (b->mr[c] == mr) return b->gflops[c];
    return -1;
}

int tile_schedule_pick(const TileSchedule *s, int64_t T)
{
    if (T <= s->b[0].tokens) return best_of(&s->b[0]);
    for (int i = 0; i + 1 < s->n; i++) {
        const TileBucket *lo = &s->b[i], *hi = &s->b[i + 1];
        if (T >= hi->tokens) continue;
        if (T == lo->tokens) return best_of(lo);
        double f = (log((double)T) - log((double)lo->tokens)) / (log((double)hi->tokens) - log((double)lo->tokens));
        int cand[2] = {best_of(lo), best_of(hi)}, pick = cand[0];
        double best = -1;
        for (int c = 0; c < 2; c++) {
            double a = gflops_of(lo, cand[c]), b = gflops_of(hi, cand[c]);
            if (a < 0 || b < 0) continue; /* not measured at both neighbours */
            double g = a + (b - a) * f;
            if (g > best) best = g, pick = cand[c];
        }
        return pick;
    }
    return best_of(&s->b[s->n - 1]);
}
