/* fuzz_spec.c — the YAML spec frontend (spec_load_string, what `moeppc check` reads).
 * Accepted: the spec is self-consistent, its summary and tensor list exist, it writes out as YAML that
 * reads back to the same spec, and — when small enough to lower quickly — its dense form verifies,
 * the whole pass pipeline runs on it and the optimised IR text round-trips. */
#include "tests/fuzz/fuzz.h"

#include "ir/ir.h"
#include "passes/passes.h"

#include <stdlib.h>
#include <string.h>

static void check_fields(const ModelSpec *s)
{
    int64_t E = spec_n_experts(s);
    FUZZ_CHECK(s->vocab > 0 && s->hidden > 0 && s->n_layers > 0 && s->n_heads > 0 && s->n_kv_heads > 0,
               "a size below 1 was accepted");
    FUZZ_CHECK(s->hidden % s->n_heads == 0 && spec_head_dim(s) % 2 == 0 && s->n_heads % s->n_kv_heads == 0,
               "inconsistent attention sizes accepted");
    FUZZ_CHECK(E > 0 && s->top_k >= 1 && s->top_k <= E, "top_k %lld of %lld experts accepted", (long long)s->top_k,
               (long long)E);
    FUZZ_CHECK(s->moe_every >= 1 && s->moe_every <= s->n_layers, "moe.every out of range accepted");
    FUZZ_CHECK(s->router_layers == 1 || s->router_layers == 2, "router layers %d", s->router_layers);
}

static void check_written_back(const ModelSpec *s)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    FUZZ_CHECK(f && spec_write_yaml(s, f), "spec_write_yaml failed");
    fclose(f);
    FuzzDiag fd;
    fuzz_diag_open(&fd, "written.yaml");
    ModelSpec back;
    bool ok = spec_load_string(text, len, &back, &fd.d);
    fuzz_diag_close(&fd, !ok);
    FUZZ_CHECK(ok, "the spec as written does not read back:\n%s", text);
    FUZZ_CHECK(fuzz_spec_equal(&back, s), "the spec reads back different:\n%s", text);
    free(text);
}

/* The dense form, the pipeline and the printed IR, for specs whose dense form is small. */
static void check_lowered(const ModelSpec *s)
{
    if (s->n_layers * spec_n_experts(s) > 64) return;
    IrModule *m = ir_lower_spec(s);
    FuzzDiag fd;
    fuzz_diag_open(&fd, "lowered.ir");
    FUZZ_CHECK(ir_verify(m, &fd.d), "the dense form does not verify");
    PassOptions po = {.opt_level = 1, .target = TARGET_CPU};
    FUZZ_CHECK(passes_run(m, &po, &fd.d), "the pipeline broke the IR");
    fuzz_diag_close(&fd, false);
    char *text = ir_print_string(m);
    fuzz_diag_open(&fd, "optimised.ir");
    IrModule *back = ir_parse(text, strlen(text), &fd.d);
    fuzz_diag_close(&fd, !back);
    FUZZ_CHECK(back, "the optimised IR does not parse back");
    char *again = ir_print_string(back);
    FUZZ_CHECK(strcmp(text, again) == 0, "print → parse → print differs");
    free(again);
    free(text);
    ir_module_free(back);
    ir_module_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzDiag fd;
    fuzz_diag_open(&fd, "spec.yaml");
    ModelSpec s;
    bool ok = spec_load_string((const char *)data, size, &s, &fd.d);
    fuzz_diag_close(&fd, !ok);
    if (!ok) return 0;
    check_fields(&s);
    SpecSummary sum;
    spec_summarize(&s, &sum);
    FUZZ_CHECK(sum.params_total > 0 && sum.params_active > 0 && sum.params_active <= sum.params_total,
               "parameter counts %lld active of %lld", (long long)sum.params_active, (long long)sum.params_total);
    int n = 0;
    free(spec_tensors(&s, &n));
    FUZZ_CHECK(n > 0, "no tensors");
    check_written_back(&s);
    check_lowered(&s);
    return 0;
}
