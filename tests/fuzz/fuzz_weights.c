/* fuzz_weights.c — invariants of a WeightSet that weights_open accepted. */
#include "tests/fuzz/fuzz_weights.h"
#include "tests/fuzz/fuzz.h"

#include <string.h>

void fuzz_check_weights(const WeightSet *w)
{
    for (int i = 0; i < weights_count(w); i++) {
        const Tensor *t = weights_at(w, i);
        FUZZ_CHECK(t->dtype == DT_F32 || t->dtype == DT_BF16 || t->dtype == DT_F16, "tensor '%s': dtype %d", t->name,
                   (int)t->dtype);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= 4, "tensor '%s': %d dimensions", t->name, t->ndim);
        uint64_t n = dtype_size(t->dtype);
        for (int k = 0; k < t->ndim; k++) n *= (uint64_t)t->shape[k];
        FUZZ_CHECK(n == t->nbytes, "tensor '%s': %zu bytes for %llu", t->name, t->nbytes, (unsigned long long)n);
        FUZZ_CHECK(t->nbytes == 0 || (uintptr_t)t->data % dtype_size(t->dtype) == 0, "tensor '%s': misaligned",
                   t->name);
        volatile unsigned char sum = 0; /* every byte must be mapped: a read past the file faults here */
        for (size_t b = 0; b < t->nbytes; b++) sum ^= ((const unsigned char *)t->data)[b];
        (void)sum;
        FUZZ_CHECK(weights_find(w, t->name) == t, "tensor '%s' not found by its name", t->name);
    }
}
