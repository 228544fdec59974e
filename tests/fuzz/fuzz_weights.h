/* fuzz_weights.h — what the two checkpoint targets check of an opened WeightSet. */
#ifndef MOEPPC_FUZZ_WEIGHTS_H
#define MOEPPC_FUZZ_WEIGHTS_H

#include "runtime/runtime.h"

/* Every tensor: a supported dtype, at most 4 dimensions, nbytes = elements × element size, data
 * aligned to the element size and readable to its last byte, found again by its name. */
void fuzz_check_weights(const WeightSet *w);

#endif
