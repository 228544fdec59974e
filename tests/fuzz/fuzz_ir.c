/* fuzz_ir.c — IR text through the parser and the verifier (ir_parse, what `moeppc compile --ir` reads),
 * then the pass pipeline as compile runs it. Accepted: the module verifies, prints as text that parses
 * back and prints identically, and the pipeline (-O1) runs on it without breaking it. */
#include "tests/fuzz/fuzz.h"

#include "ir/ir.h"
#include "passes/passes.h"

#include <stdlib.h>
#include <string.h>

static IrModule *parse(const char *text, size_t len, const char *file, bool must)
{
    FuzzDiag fd;
    fuzz_diag_open(&fd, file);
    IrModule *m = ir_parse(text, len, &fd.d);
    fuzz_diag_close(&fd, !m);
    FUZZ_CHECK(m || !must, "%s does not parse:\n%s", file, text);
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    IrModule *m = parse((const char *)data, size, "input.ir", false);
    if (!m) return 0;
    FuzzDiag fd;
    fuzz_diag_open(&fd, "input.ir");
    FUZZ_CHECK(ir_verify(m, &fd.d), "a parsed module does not verify");
    fuzz_diag_close(&fd, false);
    char *text = ir_print_string(m);
    IrModule *back = parse(text, strlen(text), "printed.ir", true);
    char *again = ir_print_string(back);
    FUZZ_CHECK(strcmp(text, again) == 0, "print → parse → print differs:\n%s\n----\n%s", text, again);
    free(again);
    free(text);
    ir_module_free(back);
    fuzz_diag_open(&fd, "input.ir");
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU};
    FUZZ_CHECK(passes_run(m, &po, &fd.d), "the pipeline broke a verified module");
    fuzz_diag_close(&fd, false);
    ir_module_free(m);
    return 0;
}
