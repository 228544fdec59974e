/* fuzz_hf_config.c — `moeppc import-hf` on a Hugging Face config.json (spec_from_hf_json).
 * Accepted: the spec it writes is one `moeppc check` accepts, and it reads back unchanged. */
#include "tests/fuzz/fuzz.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    FuzzDiag fd;
    fuzz_diag_open(&fd, "config.json");
    ModelSpec s;
    bool ok = spec_from_hf_json((const char *)data, size, "config", &s, &fd.d);
    fuzz_diag_close(&fd, !ok);
    if (!ok) return 0;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    FUZZ_CHECK(f && spec_write_yaml(&s, f), "spec_write_yaml failed");
    fclose(f);
    fuzz_diag_open(&fd, "imported.yaml");
    ModelSpec back;
    ok = spec_load_string(text, len, &back, &fd.d);
    fuzz_diag_close(&fd, !ok);
    FUZZ_CHECK(ok, "import-hf wrote a spec that check refuses:\n%s", text);
    FUZZ_CHECK(fuzz_spec_equal(&back, &s), "the imported spec reads back different:\n%s", text);
    free(text);
    return 0;
}
