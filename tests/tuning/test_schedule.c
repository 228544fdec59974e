/* test_schedule.c — a tuned op's tile height for any token count comes from the measured neighbours. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "passes/schedule.h"

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pick_by_measured_neighbours),
        cmocka_unit_test(test_malformed_schedules_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
