/* fuzz.h — what the fuzz targets (fuzz_*.c) share.
 *
 * Each target defines LLVMFuzzerTestOneInput: libFuzzer calls it with generated inputs (scripts/fuzz.sh,
 * -DMOEPPC_FUZZ=ON), replay_main.c with the files of the seed corpus and the regressions (CTest).
 * A target feeds one input to the real entry point and checks what the tool promises: a clean
 * diagnostic (every line `FILE[:LINE:COL]: error: …`, printable, at least one error when refused) or a
 * valid result (verified, round-tripping). A broken promise aborts through FUZZ_CHECK, which both
 * drivers report as a crash; leaks and undefined behaviour are the sanitizers' to catch.
 */
#ifndef MOEPPC_FUZZ_H
#define MOEPPC_FUZZ_H

#include "frontend/frontend.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                                   \
    do {                                                                                        \
        if (!(cond)) fuzz_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);                          \
    } while (0)
_Noreturn void fuzz_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Diagnostics captured in memory (d.out) while one input is read. */
typedef struct FuzzDiag {
    Diag d;
    char *text;
    size_t len;
} FuzzDiag;
void fuzz_diag_open(FuzzDiag *f, const char *file);
/* Stop capturing and check the text: every line names the file, says error or warning, and is
 * printable; refused: at least one error was reported. */
void fuzz_diag_close(FuzzDiag *f, bool refused);
/* A runtime message (RtError.msg): "WHERE…: error: what", printable (WHERE: a path or its start). */
void fuzz_check_message(const char *msg, const char *where);

/* Field by field (padding bytes of a copied struct are not compared). */
bool fuzz_spec_equal(const ModelSpec *a, const ModelSpec *b);

/* A private directory under /tmp for files an API can only read from a path (removed at exit). */
const char *fuzz_tmpdir(void);
/* Write n bytes to path (truncating); aborts on I/O failure (the harness's, not the input's). */
void fuzz_write_file(const char *path, const void *data, size_t n);

#endif
