/* weights_internal.h — what safetensors.c, weights.c and init_weights.c share about a WeightSet.
 *
 * A WeightSet is a growable array of Tensors (in load order: header order of each file, shards in
 * the index's order) plus a by-name index built once loading is done, and the memory the tensor
 * data lives in: read-only file mappings, or one owned 64-byte-aligned block (random weights, each
 * tensor's pages touched when it is first read whole and left when it is released: data NULL until
 * weights_data makes it).
 * Tensor data is always aligned to its element size (misaligned file tensors are copied).
 * Tensor names are owned (xstrdup) and freed by weights_close().
 */
#ifndef MOEPPC_WEIGHTS_INTERNAL_H
#define MOEPPC_WEIGHTS_INTERNAL_H

#include "runtime/runtime.h"

typedef struct WsName {
    const char *name;          /* the tensor's own name string */
    int         index;         /* into tensors                 */
} WsName;

typedef struct WsMapping {
    void  *base;
    size_t len;
    char  *ident;              /* the file's identity (weights_identity; owned): device, inode, size, mtime */
} WsMapping;

/* A tensor held in two parts (weights_parts). */
typedef struct {
    const char *name;          /* the tensor's (owned by it) */
    const void *part[2];
    size_t      part0_bytes;
} WsParts;

struct WeightSet {
    Tensor    *tensors;        /* [n], load order                                          */
    int        n, cap;
    WsName    *by_name;        /* [n] sorted by name for bsearch; NULL until ws_build_index */
    WsMapping *maps;           /* [n_maps] file mappings (munmap on close)                 */
    int        n_maps;
    void      *owned;          /* one aligned block for random weights (free on close)     */
    void     **copies;         /* [n_copies] aligned copies of misaligned file tensors     */
    int        n_copies;
    char      *origin;         /* file, index or "random weights (seed N)", for messages   */
    bool       from_mixtral;   /* MoE names mapped from Mixtral's (checkpoint_layout.c)    */
    WsParts   *parts;          /* [n_parts] tensors held in two parts, sorted by name      */
    int        n_parts;
    struct FillJob *regen;     /* [n] random weights: how each tensor is made (when read,  */
                               /*   whole or by rows, and again once released); NULL for files */
};

WeightSet *ws_new(const char *origin);
/* Append a tensor; takes ownership of t->name. */
void       ws_push(WeightSet *w, const Tensor *t);
/* Take a file mapping (and ident, the file's identity, owned: see WsMapping) to unmap on close. */
void       ws_add_mapping(WeightSet *w, void *base, size_t len, char *ident);
/* Take a malloc'd block to free on close. */
void       ws_add_copy(WeightSet *w, void *block);
/* Sort the two-part tensors by name (weights_parts looks them up). */
void       ws_sort_parts(WeightSet *w);
/* Sort the by-name index. Returns the index of a name that occurs twice, or -1. */
int        ws_build_index(WeightSet *w);
/* checkpoint_layout.c: a Mixtral checkpoint's block_sparse_moe tensors renamed (router, w2) and
 * stacked (w1 over w3 → up_proj) into SEMANTICS.md §6's names, and from_mixtral set. Needs the index
 * built; leaves it stale (rebuild it). A set without such tensors is left alone (from_mixtral stays
 * false). False, with err, on a malformed one. */
bool       ws_map_mixtral(WeightSet *w, const char *path, RtError *err);
/* The Mixtral tensor(s) a mapped name came from, for messages ("….w2.weight"); false for others. */
bool       ws_mixtral_origin(const char *mapped, char *buf, size_t n);

/* err->msg = "WHERE: error: " + formatted text, as one printable line (control bytes escaped). */
void rt_errorf(RtError *err, const char *where, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* "bf16 [64, 64]" into buf. */
void rt_format_type(char *buf, size_t len, moe_dtype dt, int ndim, const int64_t *shape);

#endif
