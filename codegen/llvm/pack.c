/* pack.c — weights W[N, K] into K-major panels of NR columns, once at load time, in their stored
 * dtype (bf16/f16 stay 2 bytes: the kernel converts after loading, so memory traffic halves); for
 * the bf16-dot kernels (a_bf16) in k pairs, each 32-bit word two k steps of one column. */
#include "codegen/llvm/cg_llvm.h"

#include <stdlib.h>
#include <string.h>

static void packed_alloc(CgPackedB *out, moe_dtype dt, int64_t n, int64_t k, int nr, bool kpair, int64_t n_panels) {
    MOE_ASSERT(n >= 0 && k >= 0 && nr > 0);
    MOE_ASSERT(dt == DT_F32 || dt == DT_BF16 || dt == DT_F16);
    MOE_ASSERT(!kpair || dt == DT_BF16);
    memset(out, 0, sizeof *out);
    out->dtype = dt;
    out->nr = nr;
    out->kpair = kpair;
    out->n = n;
    out->k = k;
    out->n_panels = n_panels;
    int64_t kp = kpair ? (k + 1) / 2 * 2 : k; /* an odd K's last pair: zeros in its high halves */
    out->panel_bytes = ((size_t)kp * (size_t)nr * dtype_size(dt) + 63) & ~(size_t)63;
    size_t total = out->panel_bytes * (size_t)n_panels;
    out->data = aligned_alloc(64, total ? total : 64);
    MOE_ASSERT(out->data);
    memset(out->data, 0, total); /* padding columns must be zero: the kernel computes them */
}

/* Column j of panel p := row `src_row` of w (k elements), strided by nr. */
static void pack_column(CgPackedB *b, int64_t p, int j, const void *w, int64_t src_row) {
    char *panel = (char *)b->data + (size_t)p * b->panel_bytes;
    int64_t k = b->k, nr = b->nr;
    if (dtype_size(b->dtype) == 4) {
        const uint32_t *src = (const uint32_t *)w + src_row * k;
        uint32_t *dst = (uint32_t *)panel + j;
        for (int64_t kk = 0; kk < k; kk++) dst[kk * nr] = src[kk];
    } else if (b->kpair) { /* (kk, j) at [kk/2][nr][kk%2] */
        const uint16_t *src = (const uint16_t *)w + src_row * k;
        uint16_t *dst = (uint16_t *)panel + 2 * j;
        for (int64_t kk = 0; kk < k; kk++) dst[(kk >> 1) * 2 * nr + (kk & 1)] = src[kk];
    } else {
        const uint16_t *src = (const uint16_t *)w + src_row * k;
        uint16_t *dst = (uint16_t *)panel + j;
        for (int64_t kk = 0; kk < k; kk++) dst[kk * nr] = src[kk];
    }
}

void cg_pack_b(CgPackedB *out, const void *w, moe_dtype dtype, int64_t n, int64_t k, int nr, bool kpair) {
    packed_alloc(out, dtype, n, k, nr, kpair, (n + nr - 1) / nr);
    for (int64_t col = 0; col < n; col++) pack_column(out, col / nr, (int)(col % nr), w, col);
}

void cg_pack_b_swiglu(CgPackedB *out, const void *w_up, moe_dtype dtype, int64_t two_i, int64_t k, int nr,
                      bool kpair) {
    MOE_ASSERT(two_i % 2 == 0 && nr % 2 == 0);
    int64_t inter = two_i / 2, half = nr / 2;
    packed_alloc(out, dtype, two_i, k, nr, kpair, (inter + half - 1) / half);
    out->swiglu = true;
    for (int64_t col = 0; col < inter; col++) {
        int64_t p = col / half;
        int j = (int)(col % half);
        pack_column(out, p, j, w_up, col);                       /* a: rows 0 .. I-1 */
        pack_column(out, p, (int)half + j, w_up, inter + col);   /* b: rows I .. 2I-1 */
    }
}

void cg_packed_b_free(CgPackedB *b) {
    free(b->data);
    b->data = NULL;
}
