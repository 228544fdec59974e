/* test_fuzz.c — damaged IR text never crashes the parser or the verifier: 3000 random mutations of a
 * planned, optimised module (byte flips, deletions, duplicated spans, cut-offs) each either parse and
 * verify or give diagnostics. Run under ASan by the test command, this also checks memory safety. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tests/tiny_specs.h"
#include "ir/ir.h"
#include "passes/passes.h"

#include <stdlib.h>
#include <string.h>

static char *mutate(const char *src, size_t n, moe_rng *r, size_t *out_n)
{
    char *s = xmalloc(2 * n + 64);
    memcpy(s, src, n);
    size_t len = n;
    int edits = 1 + (int)(rng_next(r) % 4);
    for (int e = 0; e < edits && len > 1; e++) {
        size_t at = rng_next(r) % len, span = 1 + rng_next(r) % 24;
        switch (rng_next(r) % 4) {
        case 0: s[at] = (char)(rng_next(r) & 0xff); break;                  /* flip a byte */
        case 1:                                                              /* delete a span */
            if (at + span > len) span = len - at;
            memmove(s + at, s + at + span, len - at - span);
            len -= span;
            break;
        case 2:                                                              /* duplicate a span */
            if (at + span > len) span = len - at;
            if (len + span < 2 * n + 64) {
                memmove(s + at + span, s + at, len - at);
                len += span;
            }
            break;
        default: len = at; break;                                           /* cut the file */
        }
    }
    *out_n = len;
    return s;
}

static void test_damaged_ir_never_crashes(void **state)
{
    (void)state;
    ModelSpec s;
    assert_true(tiny_spec_load("tiny-moepp", &s));
    IrModule *m = ir_lower_spec(&s);
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU};
    Diag d = {stderr, "fuzz", 0};
    assert_true(passes_run(m, &po, &d));
    char *text = ir_print_string(m);
    size_t n = strlen(text);
    FILE *sink = fopen("/dev/null", "w");
    assert_non_null(sink);
    moe_rng r;
    rng_seed(&r, 12345);
    int parsed = 0;
    for (int k = 0; k < 3000; k++) {
        size_t len;
        char *bad = mutate(text, n, &r, &len);
        Diag q = {sink, "fuzz.ir", 0};
        IrModule *p = ir_parse(bad, len, &q);
        if (p) parsed++;
        else assert_true(q.n_errors > 0); /* a refusal always says why */
        ir_module_free(p);
        free(bad);
    }
    printf("3000 damaged modules: %d still parsed and verified, the rest refused with diagnostics\n", parsed);
    fclose(sink);
    free(text);
    ir_module_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_damaged_ir_never_crashes)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
