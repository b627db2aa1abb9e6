/*
 * tests/unit/kafka_pairs_test.c - a delete sent with its tombstone
 * (sinks/kafka_pairs.c) is acknowledged once, after both delivery reports,
 * whatever their order, and fails at most once.
 */
#include "sinks/kafka_pairs.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

static sl_kpairs_t *
table(size_t max_inflight)
{
    sl_kpairs_t *t = NULL;
    sl_err_t err;
    assert_int_equal(sl_kpairs_new(max_inflight, &t, &err), SL_OK);
    assert_non_null(t);
    return t;
}

static void
both_delivered_in_either_order(void **state)
{
    (void)state;
    sl_kpairs_t *t = table(10);
    assert_true(sl_kpairs_start(t, 1));
    assert_int_equal(sl_kpairs_report(t, 1, true), SL_KPAIR_WAIT);
    assert_int_equal(sl_kpairs_report(t, 1, true), SL_KPAIR_ACK);
    /* The tombstone's report first (another partitioner, say). */
    assert_true(sl_kpairs_start(t, 2));
    assert_int_equal(sl_kpairs_report(t, 2, true), SL_KPAIR_WAIT);
    assert_int_equal(sl_kpairs_report(t, 2, true), SL_KPAIR_ACK);
    /* Done: its slot is free again, and a report for it is a lone record's. */
    assert_true(sl_kpairs_start(t, 2));
    sl_kpairs_free(t);
}

static void
one_error_per_message(void **state)
{
    (void)state;
    sl_kpairs_t *t = table(10);
    /* First record fails, second delivered: the failure once, no ack. */
    assert_true(sl_kpairs_start(t, 5));
    assert_int_equal(sl_kpairs_report(t, 5, false), SL_KPAIR_FAIL);
    assert_int_equal(sl_kpairs_report(t, 5, true), SL_KPAIR_WAIT);
    /* Delivered, then the other fails. */
    assert_true(sl_kpairs_start(t, 6));
    assert_int_equal(sl_kpairs_report(t, 6, true), SL_KPAIR_WAIT);
    assert_int_equal(sl_kpairs_report(t, 6, false), SL_KPAIR_FAIL);
    /* Both fail: one failure. */
    assert_true(sl_kpairs_start(t, 7));
    assert_int_equal(sl_kpairs_report(t, 7, false), SL_KPAIR_FAIL);
    assert_int_equal(sl_kpairs_report(t, 7, false), SL_KPAIR_WAIT);
    /* Every slot is free again. */
    assert_true(sl_kpairs_start(t, 5) && sl_kpairs_start(t, 6) && sl_kpairs_start(t, 7));
    sl_kpairs_free(t);
}

static void
abandoned_and_cancelled(void **state)
{
    (void)state;
    sl_kpairs_t *t = table(10);
    /* The tombstone could not be queued: the envelope's report says nothing. */
    assert_true(sl_kpairs_start(t, 3));
    sl_kpairs_abandon(t, 3);
    assert_int_equal(sl_kpairs_report(t, 3, true), SL_KPAIR_WAIT);
    assert_true(sl_kpairs_start(t, 3));
    sl_kpairs_cancel(t, 3);
    assert_true(sl_kpairs_start(t, 3));
    sl_kpairs_abandon(t, 3);
    assert_int_equal(sl_kpairs_report(t, 3, false), SL_KPAIR_WAIT);
    /* Neither record queued: the slot is free at once. */
    assert_true(sl_kpairs_start(t, 4));
    sl_kpairs_cancel(t, 4);
    assert_true(sl_kpairs_start(t, 4));
    sl_kpairs_free(t);
}

static void
a_window_of_tokens_never_collides(void **state)
{
    (void)state;
    size_t window = 1000;
    sl_kpairs_t *t = table(window);
    /* Tokens in flight lie within `window` of each other: every one of a
     * full window has its own slot, and the next window reuses them. */
    for (uint64_t k = 100; k < 100 + window; k++)
        assert_true(sl_kpairs_start(t, k));
    for (uint64_t k = 100; k < 100 + window; k++) {
        assert_int_equal(sl_kpairs_report(t, k, true), SL_KPAIR_WAIT);
        assert_int_equal(sl_kpairs_report(t, k, true), SL_KPAIR_ACK);
    }
    for (uint64_t k = 100 + window; k < 100 + 2 * window; k++)
        assert_true(sl_kpairs_start(t, k));
    /* A token whose slot is still taken is refused, not mixed up. */
    size_t n = 64;
    while (n < 2 * window)
        n *= 2;
    assert_false(sl_kpairs_start(t, 100 + window + n));
    /* A report for a token not in flight is a lone record's. */
    assert_int_equal(sl_kpairs_report(t, 100 + window + n, true), SL_KPAIR_ACK);
    assert_int_equal(sl_kpairs_report(t, 100 + window + n, false), SL_KPAIR_FAIL);
    assert_int_equal(sl_kpairs_report(t, 100 + window, true), SL_KPAIR_WAIT);
    sl_kpairs_free(t);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(both_delivered_in_either_order),
        cmocka_unit_test(one_error_per_message),
        cmocka_unit_test(abandoned_and_cancelled),
        cmocka_unit_test(a_window_of_tokens_never_collides),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
