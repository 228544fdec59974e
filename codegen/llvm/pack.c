/* pack.c — weights W[N, K] into K-major panels of NR columns, once at load time, in their stored
 * dtype (bf16/f16 stay 2 bytes: the kernel converts after loading, so memory traffic halves); for
 * the bf16-dot kernels (a_bf16) in k pairs, each 32-bit word two k steps of one column. */
#include "codegen/llvm/cg_llvm.h"

#include <stdlib.h>
#include <string.h>

void cg_pack_b_alloc(CgPackedB *out, moe_dtype dt, int64_t n, int64_t k, int nr, bool kpair, bool swiglu) {
    MOE_ASSERT(n >= 0 && k >= 0 && nr > 0);
    MOE_ASSERT(dt == DT_F32 || dt == DT_BF16 || dt == DT_F16);
    MOE_ASSERT(!kpair || dt == DT_BF16);
    MOE_ASSERT(!swiglu || (n % 2 == 0 && nr % 2 == 0));
    memset(out, 0, sizeof *out);
    out->dtype = dt;
    out->nr = nr;
    out->kpair = kpair;
    out->swiglu = swiglu;
    out->n = n;
    out->k = k;
    out->n_panels = swiglu ? (n / 2 + nr / 2 - 1) / (nr / 2) : (n + nr - 1) / nr;
    int64_t kp = kpair ? (k + 31) / 32 * 32 : k; /* zeros to the AMX kernels' k block (an odd K's last pair too) */
    out->panel_bytes = ((size_t)kp * (size_t)nr * dtype_size(dt) + 63) & ~(size_t)63;
    size_t total = out->panel_bytes * (size_t)out->n_panels;
    out->data = alloc_large(total); /* (huge pages: the panels are streamed from memory, a decode step's whole) */
    MOE_ASSERT(out->data);
}

/* Where W's row r is: w's, or from row rows_lo on w_hi's (a weight held in two parts). */
typedef struct {
    const void *w, *w_hi;
    int64_t rows_lo;
} Rows;

/* Column j of panel p := row `src_row` of the weight (k elements), strided by nr. */
static void pack_column(CgPackedB *b, int64_t p, int j, const Rows *w, int64_t src_row) {
    char *panel = (char *)b->data + (size_t)p * b->panel_bytes;
    int64_t k = b->k, nr = b->nr;
    bool hi = w->w_hi && src_row >= w->rows_lo;
    int64_t r = hi ? src_row - w->rows_lo : src_row;
    const char *row = (const char *)(hi ? w->w_hi : w->w) + (size_t)(r * k) * dtype_size(b->dtype);
    if (dtype_size(b->dtype) == 4) {
        const uint32_t *src = (const uint32_t *)row;
        uint32_t *dst = (uint32_t *)panel + j;
        for (int64_t kk = 0; kk < k; kk++) dst[kk * nr] = src[kk];
    } else if (b->kpair) { /* (kk, j) at [kk/2][nr][kk%2] */
        const uint16_t *src = (const uint16_t *)row;
        uint16_t *dst = (uint16_t *)panel + 2 * j;
        for (int64_t kk = 0; kk < k; kk++) dst[(kk >> 1) * 2 * nr + (kk & 1)] = src[kk];
    } else {
        const uint16_t *src = (const uint16_t *)row;
        uint16_t *dst = (uint16_t *)panel + j;
        for (int64_t kk = 0; kk < k; kk++) dst[kk * nr] = src[kk];
    }
}

void cg_pack_b_fill(CgPackedB *b, const void *w, int64_t p0, int64_t p1) {
    cg_pack_b_fill_parts(b, w, NULL, 0, p0, p1);
}

void cg_pack_b_fill_parts(CgPackedB *b, const void *w, const void *w_hi, int64_t rows_lo, int64_t p0, int64_t p1) {
    const Rows src = {w, w_hi, rows_lo};
    MOE_ASSERT(0 <= p0 && p0 <= p1 && p1 <= b->n_panels);
    memset((char *)b->data + (size_t)p0 * b->panel_bytes, 0, (size_t)(p1 - p0) * b->panel_bytes); /* padding: the kernel computes it */
    int64_t nr = b->nr, half = nr / 2, inter = b->n / 2;
    for (int64_t p = p0; p < p1; p++) {
        if (!b->swiglu) {
            for (int64_t col = p * nr; col < b->n && col < (p + 1) * nr; col++) pack_column(b, p, (int)(col - p * nr), &src, col);
            continue;
        }
        for (int64_t col = p * half; col < inter && col < (p + 1) * half; col++) {
            int j = (int)(col - p * half);
            pack_column(b, p, j, &src, col);                     /* a: rows 0 .. I-1 */
            pack_column(b, p, (int)half + j, &src, inter + col); /* b: rows I .. 2I-1 */
        }
    }
}

void cg_pack_b(CgPackedB *out, const void *w, moe_dtype dtype, int64_t n, int64_t k, int nr, bool kpair) {
    cg_pack_b_alloc(out, dtype, n, k, nr, kpair, false);
    cg_pack_b_fill(out, w, 0, out->n_panels);
}

void cg_pack_b_swiglu(CgPackedB *out, const void *w_up, moe_dtype dtype, int64_t two_i, int64_t k, int nr,
                      bool kpair) {
    cg_pack_b_alloc(out, dtype, two_i, k, nr, kpair, true);
    cg_pack_b_fill(out, w_up, 0, out->n_panels);
}

void cg_packed_b_free(CgPackedB *b) {
    free(b->data);
    b->data = NULL;
}
