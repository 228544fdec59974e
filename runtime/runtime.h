/* runtime.h — weights for a compiled (or interpreted) model.
 *
 * In:  a safetensors checkpoint (one file, a sharded set through model.safetensors.index.json, or a
 *      directory holding either), or a seed for random weights; the spec's tensor list (frontend.h).
 * Out: a WeightSet: named tensors in their stored dtype, either mapped read-only from the files
 *      (mmap, nothing copied) or owned in memory (random weights).
 * Errors: every failure is returned as false with a message in err (file name, tensor name,
 *      expected vs found) — truncated files, bad headers, overlapping offsets never crash.
 * Memory: the WeightSet owns its mappings/buffers and the tensor table; free with weights_close().
 *      Tensor data pointers stay valid until then.
 */
#ifndef MOEPPC_RUNTIME_H
#define MOEPPC_RUNTIME_H

#include "frontend/frontend.h"
#include "support/support.h"

typedef struct Tensor {
    char       *name;
    moe_dtype   dtype;          /* DT_F32, DT_BF16 or DT_F16 */
    int         ndim;           /* 0..4 */
    int64_t     shape[4];
    const void *data;           /* little-endian, row-major, aligned to the element size */
    size_t      nbytes;
} Tensor;

typedef struct WeightSet WeightSet;

/* Error text buffer used by every runtime call that can fail on user input. Room for
 * weights_check's report (a header line and up to 20 problem lines). */
typedef struct RtError {
    char msg[4096];
} RtError;

/* Open a checkpoint: PATH may be a .safetensors file, a model.safetensors.index.json, or a
 * directory containing model.safetensors or model.safetensors.index.json. */
bool        weights_open(const char *path, WeightSet **out, RtError *err);
/* Seeded random weights for every tensor of the spec, in the spec's dtype (distribution: see
 * weights_random's definition and README). */
bool        weights_random(const ModelSpec *s, uint64_t seed, WeightSet **out, RtError *err);
/* Check that every tensor the spec needs exists with the right shape and dtype. Reports the
 * first problems (all of them, one per line, up to a limit) in err. */
bool        weights_check(const WeightSet *w, const ModelSpec *s, RtError *err);
const Tensor *weights_find(const WeightSet *w, const char *name);
int         weights_count(const WeightSet *w);
const Tensor *weights_at(const WeightSet *w, int i);
void        weights_close(WeightSet *w);

/* Write tensors to one safetensors file (atomically: a temporary file renamed into place, so a
 * failure leaves nothing half-written). Header keys in the given order; data contiguous in the
 * given order (the reference reader rejects gaps), header padded with spaces to a multiple of 8.
 * safetensors_write writes no __metadata__; safetensors_write_meta writes meta, a NULL-terminated
 * list of key, value strings (e.g. {"format", "pt", NULL}), or none if meta is NULL. */
bool        safetensors_write(const char *path, const Tensor *tensors, int n, RtError *err);
bool        safetensors_write_meta(const char *path, const Tensor *tensors, int n, const char *const *meta,
                                   RtError *err);

int cmd_init_weights(int argc, char **argv);

#endif
