/* test_cuda_isa.c — which devices a CUDA build of the layer library accepts (layer_cuda_isa_fits,
 * what create checks before it loads a kernel): an sm_XX library on that GPU and newer ones, an
 * emu library (emit --target emu) on the CUDA emulator only, and an sm_XX library never there; each
 * refusal a sentence naming both sides and the --target that fits. The refusals on the emulator
 * run end to end in embed_cuda_emu_refusal; an emu library on a real GPU only here (and in
 * scripts/device-check.sh). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "embed/layer_internal.h"

#include <string.h>

const LayerImage moeppc_layer_image; /* layer_common.c's moepp_layer_get_info reads it; unused here */

static bool fits(const char *isa, const char *dev, char *why)
{
    why[0] = 0;
    bool ok = layer_cuda_isa_fits(isa, dev, 3, why, 400);
    if (!ok) printf("%s on %s: %s\n", isa, dev, why);
    return ok;
}

static void test_isa(void **state)
{
    (void)state;
    char why[400];
    assert_true(fits("sm_80", "sm_80", why));
    assert_true(fits("sm_80", "sm_90", why));
    assert_true(fits("emu", "emu", why));
    assert_false(fits("sm_90", "sm_80", why));
    assert_non_null(strstr(why, "sm_90 and newer"));
    assert_false(fits("emu", "sm_90", why));
    assert_non_null(strstr(why, "CUDA emulator"));
    assert_non_null(strstr(why, "device 3 is a GPU (sm_90)"));
    assert_non_null(strstr(why, "--target sm_90"));
    assert_false(fits("sm_80", "emu", why));
    assert_non_null(strstr(why, "sm_80 GPUs"));
    assert_non_null(strstr(why, "--target emu"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_isa)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
