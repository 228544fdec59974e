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
        const void *part[2] = {t->data, NULL};
        size_t lo = t->nbytes;
        bool two = weights_parts(w, t, part, &lo);
        FUZZ_CHECK(two != (t->data != NULL || t->nbytes == 0) && lo <= t->nbytes, "tensor '%s': data or parts", t->name);
        for (int p = 0; p < 1 + two; p++) {
            FUZZ_CHECK((p ? t->nbytes - lo : lo) == 0 || (uintptr_t)part[p] % dtype_size(t->dtype) == 0,
                       "tensor '%s': misaligned", t->name);
            volatile unsigned char sum = 0; /* every byte must be mapped: a read past the file faults here */
            for (size_t b = 0; b < (p ? t->nbytes - lo : lo); b++) sum ^= ((const unsigned char *)part[p])[b];
            (void)sum;
        }
        FUZZ_CHECK(weights_find(w, t->name) == t, "tensor '%s' not found by its name", t->name);
    }
}
