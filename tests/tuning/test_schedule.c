/* test_schedule.c — a tuned op's tile height for any token count comes from the measured neighbours. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "passes/schedule.h"

#include <string.h>

static void test_pick_by_measured_neighbours(void **state)
{
    (void)state;
    TileSchedule s;
    assert_true(tile_schedule_parse("48;1:1@10.0,8@5.0;64:1@20.0,8@40.0;512:8@100.0,1@30.0", &s));
    assert_int_equal(s.nr, 48);
    assert_int_equal(s.n, 3);
    assert_int_equal(tile_schedule_pick(&s, 1), 1);    /* a bucket: its best */
    assert_int_equal(tile_schedule_pick(&s, 64), 8);
    assert_int_equal(tile_schedule_pick(&s, 2), 1);    /* 1 vs 64, at 1/6 of the log range: 11.7 vs 10.8 */
    assert_int_equal(tile_schedule_pick(&s, 8), 8);    /* halfway: 15.0 vs 22.5 */
    assert_int_equal(tile_schedule_pick(&s, 4096), 8); /* beyond the last bucket: its best */
}

static void test_malformed_schedules_are_refused(void **state)
{
    (void)state;
    TileSchedule s;
    assert_false(tile_schedule_parse("", &s));
    assert_false(tile_schedule_parse("48", &s));
    assert_false(tile_schedule_parse("48;1:", &s));
    assert_false(tile_schedule_parse("48;x:8@1.0", &s));
    assert_false(tile_schedule_parse("48;1:8", &s));
    assert_false(tile_schedule_parse("0;1:8@1.0", &s));
}

/* A bucket that measured no tile of the schedule's width is left out, not written empty (which the
 * executor would refuse, dropping the whole schedule; found by fuzzing); a long schedule is whole. */
static void test_format_skips_buckets_without_the_width(void **state)
{
    (void)state;
    TuneEntry a = {.tokens = 64, .n_measured = 2, .measured = {{8, 48, 100.0}, {4, 48, 90.0}}};
    TuneEntry b = {.tokens = 1, .n_measured = 1, .measured = {{1, 96, 20.0}}};
    TuneEntry c = {.tokens = 512, .n_measured = TUNE_MAX_MEASURED};
    for (int i = 0; i < TUNE_MAX_MEASURED; i++) c.measured[i] = (TuneMeasure){i + 1, 48, 1e300};
    const TuneEntry *e[3] = {&a, &b, &c};
    Arena arena = {0};
    const char *s = tile_schedule_format(e, 3, 48, &arena);
    assert_true(strncmp(s, "48;64:8@100.0,4@90.0;512:1@1", 28) == 0);
    assert_true(strlen(s) > 4096); /* 32 tiles of 1e300 GFLOP/s: once cut at a 4 KB buffer */
    TileSchedule t;
    assert_true(tile_schedule_parse(s, &t));
    assert_int_equal(t.n, 2);
    assert_int_equal(t.b[1].n, TUNE_MAX_MEASURED);
    arena_free(&arena);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_by_measured_neighbours),
        cmocka_unit_test(test_malformed_schedules_are_refused),
        cmocka_unit_test(test_format_skips_buckets_without_the_width),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
