/* pack.c — weights W[N, K] into K-major panels of NR columns, once at load time, in their stored
 * dtype (bf16/f16 stay 2 bytes: the kernel converts after loading, so memory traffic halves); for
 * the bf16-dot kernels (a_bf16) in k pairs, each 32-bit word two k steps of one column. */
#include "codegen/llvm/cg_llvm.h"

#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

void cg_pack_b_size(CgPackedB *out, moe_dtype dt, int64_t n, int64_t k, int nr, bool kpair, bool swiglu) {
    MOE_ASSERT(n >= 0 && k >= 0 && nr > 0 && nr % 4 == 0);
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
}

size_t cg_packed_b_bytes(const CgPackedB *b) { return b->panel_bytes * (size_t)b->n_panels; }

void cg_pack_b_alloc_data(CgPackedB *b) {
    b->data = alloc_large(cg_packed_b_bytes(b)); /* (huge pages: the panels are streamed, a decode step's whole) */
    MOE_ASSERT(b->data);
}

void cg_pack_b_alloc(CgPackedB *out, moe_dtype dt, int64_t n, int64_t k, int nr, bool kpair, bool swiglu) {
    cg_pack_b_size(out, dt, n, k, nr, kpair, swiglu);
    cg_pack_b_alloc_data(out);
}

/* Where W's row r is: w's, or from row rows_lo on w_hi's (a weight held in two parts), each part's
 * first skip rows left out. */
typedef struct {
    const void *w, *w_hi;
    int64_t rows_lo, skip;
} Rows;

static const char *row_of(const CgPackedB *b, const Rows *w, int64_t src_row) {
    bool hi = w->w_hi && src_row >= w->rows_lo;
    int64_t r = (hi ? src_row - w->rows_lo : src_row) - w->skip;
    MOE_ASSERT(r >= 0);
    return (const char *)(hi ? w->w_hi : w->w) + (size_t)(r * b->k) * dtype_size(b->dtype);
}

/* A panel is the transpose of its NR source rows (a padding column's: zeros) in units: f32
 * elements, bf16/f16 ones, or (kpair) a bf16 k pair as one 32-bit word, the even k in its low half
 * as the two lie in the row: dst[u * nr + j] = rows[j][u]. In blocks of 16 units, so that a block's
 * stores stay in L1 (column by column over all of K, each store missed to L2: the 7B's 15 GB took
 * most of its start-up); with SSE2, 4 x 4 words or 8 x 8 halves a step. */
enum { UNITS = 16 };

/* Units ua .. ub - 1 (of es bytes) of block u0 for rows j0 .. j1 - 1, one at a time. */
static void copy_units(char *dst, const char *const *rows, int nr, size_t es, int64_t u0, int j0, int j1, int64_t ua,
                       int64_t ub) {
    for (int j = j0; j < j1; j++)
        for (int64_t u = ua; u < ub; u++) memcpy(dst + ((size_t)((u0 + u) * nr) + (size_t)j) * es, rows[j] + es * (size_t)(u0 + u), es);
}

static void transpose32(uint32_t *dst, const char *const *rows, int nr, int64_t units) {
    for (int64_t u0 = 0; u0 < units; u0 += UNITS) {
        int64_t ub = units - u0 < UNITS ? units - u0 : UNITS;
        int j = 0;
#ifdef __SSE2__
        for (; j + 4 <= nr; j += 4) { /* 4 rows x 4 units a step */
            int64_t u = 0;
            for (; u + 4 <= ub; u += 4) {
                __m128i r0 = _mm_loadu_si128((const __m128i *)(rows[j] + 4 * (u0 + u)));
                __m128i r1 = _mm_loadu_si128((const __m128i *)(rows[j + 1] + 4 * (u0 + u)));
                __m128i r2 = _mm_loadu_si128((const __m128i *)(rows[j + 2] + 4 * (u0 + u)));
                __m128i r3 = _mm_loadu_si128((const __m128i *)(rows[j + 3] + 4 * (u0 + u)));
                __m128i t0 = _mm_unpacklo_epi32(r0, r1), t1 = _mm_unpacklo_epi32(r2, r3);
                __m128i t2 = _mm_unpackhi_epi32(r0, r1), t3 = _mm_unpackhi_epi32(r2, r3);
                uint32_t *d = dst + (u0 + u) * nr + j;
                _mm_storeu_si128((__m128i *)d, _mm_unpacklo_epi64(t0, t1));
                _mm_storeu_si128((__m128i *)(d + nr), _mm_unpackhi_epi64(t0, t1));
                _mm_storeu_si128((__m128i *)(d + 2 * nr), _mm_unpacklo_epi64(t2, t3));
                _mm_storeu_si128((__m128i *)(d + 3 * nr), _mm_unpackhi_epi64(t2, t3));
            }
            copy_units((char *)dst, rows, nr, 4, u0, j, j + 4, u, ub);
        }
#endif
        copy_units((char *)dst, rows, nr, 4, u0, j, nr, 0, ub);
    }
}

static void transpose16(uint16_t *dst, const char *const *rows, int nr, int64_t units) {
    for (int64_t u0 = 0; u0 < units; u0 += UNITS) {
        int64_t ub = units - u0 < UNITS ? units - u0 : UNITS;
        int j = 0;
#ifdef __SSE2__
        for (; j + 8 <= nr; j += 8) { /* 8 rows x 8 units a step */
            int64_t u = 0;
            for (; u + 8 <= ub; u += 8) {
                __m128i r[8], t[8], v[8];
                for (int m = 0; m < 8; m++) r[m] = _mm_loadu_si128((const __m128i *)(rows[j + m] + 2 * (u0 + u)));
                for (int m = 0; m < 8; m += 2) /* rows m, m+1 interleaved: units 0-3, then 4-7 */
                    t[m] = _mm_unpacklo_epi16(r[m], r[m + 1]), t[m + 1] = _mm_unpackhi_epi16(r[m], r[m + 1]);
                for (int m = 0; m < 8; m += 4) { /* rows m..m+3: units 0-1, 2-3, 4-5, 6-7 */
                    v[m] = _mm_unpacklo_epi32(t[m], t[m + 2]), v[m + 1] = _mm_unpackhi_epi32(t[m], t[m + 2]);
                    v[m + 2] = _mm_unpacklo_epi32(t[m + 1], t[m + 3]), v[m + 3] = _mm_unpackhi_epi32(t[m + 1], t[m + 3]);
                }
                uint16_t *d = dst + (u0 + u) * nr + j;
                for (int q = 0; q < 4; q++) { /* unit 2q and 2q+1 of all 8 rows */
                    _mm_storeu_si128((__m128i *)(d + (2 * q) * nr), _mm_unpacklo_epi64(v[q], v[q + 4]));
                    _mm_storeu_si128((__m128i *)(d + (2 * q + 1) * nr), _mm_unpackhi_epi64(v[q], v[q + 4]));
                }
            }
            copy_units((char *)dst, rows, nr, 2, u0, j, j + 8, u, ub);
        }
#endif
        copy_units((char *)dst, rows, nr, 2, u0, j, nr, 0, ub);
    }
}

/* Panel p of b from its source rows (row[j]: column j's, a row of zeros for padding): every byte of
 * it written, the K padding (to the AMX kernels' k block) and the 64-byte rounding zeroed. */
static void pack_panel(CgPackedB *b, int64_t p, const char *const *rows) {
    char *panel = (char *)b->data + (size_t)p * b->panel_bytes;
    int nr = b->nr;
    size_t done;
    if (dtype_size(b->dtype) == 4) {
        transpose32((uint32_t *)panel, rows, nr, b->k);
        done = (size_t)b->k * (size_t)nr * 4;
    } else if (b->kpair) { /* (kk, j) at [kk/2][nr][kk%2]: whole pairs as words, an odd K's last k alone */
        transpose32((uint32_t *)panel, rows, nr, b->k / 2);
        for (int j = 0; b->k % 2 && j < nr; j++) {
            uint16_t last;
            memcpy(&last, rows[j] + 2 * (b->k - 1), 2);
            ((uint32_t *)panel)[(b->k / 2) * nr + j] = last; /* (its pair's other half 0) */
        }
        done = (size_t)((b->k + 1) / 2) * (size_t)nr * 4;
    } else {
        transpose16((uint16_t *)panel, rows, nr, b->k);
        done = (size_t)b->k * (size_t)nr * 2;
    }
    memset(panel + done, 0, b->panel_bytes - done);
}

void cg_pack_b_fill(CgPackedB *b, const void *w, int64_t p0, int64_t p1) {
    cg_pack_b_fill_parts(b, w, NULL, 0, 0, p0, p1);
}

void cg_pack_b_source_rows(const CgPackedB *b, int64_t p0, int64_t p1, int64_t rows[4]) {
    MOE_ASSERT(0 <= p0 && p0 <= p1 && p1 <= b->n_panels);
    int64_t w = b->swiglu ? b->nr / 2 : b->nr, n = b->swiglu ? b->n / 2 : b->n; /* (the a half's) */
    rows[0] = p0 * w < n ? p0 * w : n;
    rows[1] = p1 * w < n ? p1 * w : n;
    rows[2] = rows[0] + (b->swiglu ? n : 0);
    rows[3] = b->swiglu ? rows[1] + n : rows[2];
}

void cg_pack_b_fill_parts(CgPackedB *b, const void *w, const void *w_hi, int64_t rows_lo, int64_t skip, int64_t p0,
                          int64_t p1) {
    const Rows src = {w, w_hi, rows_lo, skip};
    MOE_ASSERT(0 <= p0 && p0 <= p1 && p1 <= b->n_panels);
    int64_t nr = b->nr, half = nr / 2, inter = b->n / 2;
    const char **rows = xmalloc((size_t)nr * sizeof *rows), *zero = NULL; /* padding columns: the kernel computes them */
    for (int64_t p = p0; p < p1; p++) {
        for (int64_t j = 0; j < nr; j++) {
            int64_t col = b->swiglu ? p * half + j % half : p * nr + j; /* swiglu: a's rows, then b's (row I + ·) */
            bool real = b->swiglu ? col < inter : col < b->n;
            if (!real && !zero) zero = xcalloc((size_t)b->k + 1, dtype_size(b->dtype));
            rows[j] = real ? row_of(b, &src, b->swiglu && j >= half ? inter + col : col) : zero;
        }
        pack_panel(b, p, rows);
    }
    free(rows);
    free((void *)zero);
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
