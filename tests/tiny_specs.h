/* tiny_specs.h — what the C tests share about the tiny specs of specs/tiny/: their list and loading
 * one by name (MOEPPC_SOURCE_DIR is set by the test's CMake target). */
#ifndef MOEPPC_TESTS_TINY_SPECS_H
#define MOEPPC_TESTS_TINY_SPECS_H

#include "frontend/frontend.h"

/* Every tiny spec: between them they exercise each knob of the spec format. */
static const char *const tiny_specs[] = {"tiny-moepp",  "tiny-gqa",   "tiny-router1", "tiny-mixtral", "tiny-logitsnorm",
                                         "tiny-noresidual", "tiny-noscale", "tiny-zeros", "tiny-every2", "tiny-bf16",
                                         "tiny-f16",    "tiny-vanilla", "tiny-tied",  "tiny-top1",    "tiny-oneffn"};

/* Load specs/tiny/NAME.yaml; false (diagnostics on stderr) if it does not load. */
static inline bool tiny_spec_load(const char *name, ModelSpec *s)
{
    char path[512];
    snprintf(path, sizeof path, "%s/specs/tiny/%s.yaml", MOEPPC_SOURCE_DIR, name);
    Diag d = {stderr, path, 0};
    return spec_load_file(path, s, &d);
}

#endif
