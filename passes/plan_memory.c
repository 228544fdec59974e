/* plan_memory.c — every intermediate gets a place in one activation arena.
 *
 * Sizes are per_t·T + fixed bytes (ir_value_bytes), so the arena is two regions: the fixed-size
 * buffers (dispatch offsets) first, then the token-proportional ones, whose offsets are multiples of T.
 * In each region buffers are placed greedily, largest first, at the lowest offset that overlaps no
 * buffer alive at the same time (TFLite's "greedy by size"), so the arena holds the peak of the live
 * set, not the sum of every intermediate. Offsets are byte offsets off_t·T + off_c. An accumulator
 * updated in place (moe.grouped_down's y0, ir_inplace_input) shares its result's buffer when it dies
 * there, so the executors skip copying it. */
#include "passes/passes.h"

#include <stdlib.h>

typedef struct {
    IrValue *v;
    int64_t size, off;
    int def, last;
} Buf;

static int by_size_desc(const void *a, const void *b)
{
    const Buf *x = a, *y = b;
    if (x->size != y->size) return x->size < y->size ? 1 : -1;
    return x->def - y->def;
}

/* Place bufs[0..n) (sorted); returns the region's size. */
static int64_t place(Buf *bufs, int n)
{
    int64_t top = 0;
    for (int a = 0; a < n; a++) {
        int64_t off = 0;
        for (bool moved = true; moved;) { /* bump past every conflicting placed buffer until none overlaps */
            moved = false;
            for (int b = 0; b < a; b++) {
                if (bufs[b].def > bufs[a].last || bufs[a].def > bufs[b].last) continue;
                if (off < bufs[b].off + bufs[b].size && bufs[b].off < off + bufs[a].size) {
                    off = bufs[b].off + bufs[b].size;
                    moved = true;
                }
            }
        }
        bufs[a].off = off;
        if (off + bufs[a].size > top) top = off + bufs[a].size;
    }
    return top;
}

bool pass_plan_memory(IrModule *m, const PassOptions *o)
{
    (void)o;
    int *def, *last;
    ir_liveness(m, &def, &last);
    /* an accumulator updated in place (ir_inplace_input) that dies there: one buffer for both, alive
     * from the first's definition to the second's last use (no copy of y0 into y) */
    const IrValue **same = xcalloc((size_t)m->n_values + 1, sizeof *same);
    for (int k = 0; k < m->n_values; k++) {
        const IrValue *v = m->values[k], *src = ir_inplace_input(v);
        int64_t ps, fs, pv, fv;
        if (!src) continue;
        ir_value_bytes(src, &ps, &fs);
        ir_value_bytes(v, &pv, &fv);
        if (last[src->id] != def[k] || same[src->id] || ps != pv || fs != fv) continue;
        same[k] = src;
        last[src->id] = last[k];
    }
    Buf *tok = xcalloc((size_t)m->n_values + 1, sizeof *tok), *fix = xcalloc((size_t)m->n_values + 1, sizeof *fix);
    int nt = 0, nf = 0;
    for (int k = 0; k < m->n_values; k++) {
        IrValue *v = m->values[k];
        if (v->kind != IR_VAL_RESULT || same[k]) continue;
        int64_t per_t, fixed;
        ir_value_bytes(v, &per_t, &fixed);
        if (per_t) tok[nt++] = (Buf){v, per_t, 0, def[k], last[k]};
        else fix[nf++] = (Buf){v, fixed, 0, def[k], last[k]};
    }
    qsort(tok, (size_t)nt, sizeof *tok, by_size_desc);
    qsort(fix, (size_t)nf, sizeof *fix, by_size_desc);
    m->arena_c = place(fix, nf);
    m->arena_t = place(tok, nt);
    for (int k = 0; k < nf; k++) fix[k].v->off_t = 0, fix[k].v->off_c = fix[k].off, fix[k].v->planned = true;
    for (int k = 0; k < nt; k++) tok[k].v->off_t = tok[k].off, tok[k].v->off_c = m->arena_c, tok[k].v->planned = true;
    for (int k = 0; k < m->n_values; k++) /* (a source is never itself in place: same[src] was checked) */
        if (same[k]) m->values[k]->off_t = same[k]->off_t, m->values[k]->off_c = same[k]->off_c, m->values[k]->planned = true;
    m->planned = true;
    free(same);
    free(tok);
    free(fix);
    free(def);
    free(last);
    return true;
}

double plan_arena_bytes(const IrModule *m, int64_t T) { return (double)m->arena_t * (double)T + (double)m->arena_c; }

double plan_naive_bytes(const IrModule *m, int64_t T)
{
    double sum = 0; /* in double: summed over a huge model at T = 4096 it may leave int64 */
    for (int k = 0; k < m->n_values; k++) {
        if (m->values[k]->kind != IR_VAL_RESULT) continue;
        int64_t per_t, fixed;
        ir_value_bytes(m->values[k], &per_t, &fixed);
        sum += (double)per_t * (double)T + (double)fixed;
    }
    return sum;
}
