/*
 * tests/unit/window_test.c - the in-flight window and the checkpoint position
 * it derives (relay/window.c): DESIGN.md invariant 3 without servers.
 *
 * Each row is a script of steps run against a fresh window; after the script
 * the derived position is rendered "lo|hi|last_id|range_no" (hi "-" outside a
 * range) and compared with the expected text. One assertion per row.
 *
 * Steps (one letter and arguments):
 *   o LO HI N   open range (LO, HI) with range number N
 *   p ID        push a message with outbox id ID (bytes 10)
 *   c K         close the open range with K rows still to push
 *   a SEQ       acknowledge sequence number SEQ
 */
#include "relay/relay_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ROWS(a) (sizeof(a) / sizeof((a)[0]))

typedef struct window_row {
    const char *name;
    size_t cap;
    const char *script; /* steps separated by ';' */
    const char *want;   /* rendered position after the script */
} window_row_t;

static const window_row_t rows[] = {
    {"nothing_acked_keeps_start", 8, "o L H 0;p 10;p 11;c 0", "L0|-|0|0"},
    {"ack_out_of_order_waits_for_prefix", 8, "o L H 0;p 10;p 11;p 12;c 0;a 1", "L0|-|0|0"},
    {"prefix_inside_range", 8, "o L H 0;p 10;p 11;p 12;c 0;a 1;a 0", "L|H|11|0"},
    {"complete_range_moves_lo", 8, "o L H 0;p 10;p 11;c 0;a 0;a 1", "H|-|0|1"},
    {"open_range_does_not_complete", 8, "o L H 0;p 10;p 11;a 0;a 1", "L|H|11|0"},
    /* Regression: with a full window, the slot of message tail-1 is reused by
     * the newest message; the position must not take that newer id. */
    {"full_window_slot_reuse", 2, "o L H 0;p 10;p 11;a 0;p 12;a 2", "L|H|10|0"},
    {"full_window_then_prefix", 2, "o L H 0;p 10;p 11;a 0;p 12;a 2;a 1", "L|H|12|0"},
    {"empty_range_with_empty_window", 8, "o L H 0;c 0", "H|-|0|1"},
    {"empty_range_folds_into_previous", 8, "o L H 0;p 10;c 0;o H H2 1;c 0;a 0", "H2|-|0|2"},
    {"fold_waits_for_previous_acks", 8, "o L H 0;p 10;c 0;o H H2 1;c 0", "L0|-|0|0"},
    {"pending_rows_hold_completion", 8, "o L H 0;p 10;c 1;a 0", "L|H|10|0"},
    {"pending_rows_then_complete", 8, "o L H 0;p 10;c 1;a 0;p 11;a 1", "H|-|0|1"},
    {"second_range_in_flight", 8, "o L H 0;p 10;c 0;o H H2 1;p 5;p 20;c 0;a 0;a 1", "H|H2|5|1"},
    {"stale_ack_ignored", 8, "o L H 0;p 10;c 0;a 0;a 0;a 7", "H|-|0|1"},
    {"late_commit_low_id_next_range", 8, "o L H 0;p 20;c 0;o H H2 1;p 3;c 0;a 1;a 0", "H2|-|0|2"},
};

static void
run_script(sl_window_t *w, const char *script)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", script);
    sl_err_t err;
    sl_err_clear(&err);
    for (char *save = NULL, *step = strtok_r(buf, ";", &save); step != NULL;
         step = strtok_r(NULL, ";", &save)) {
        char lo[32], hi[32];
        long long a;
        if (sscanf(step, "o %31s %31s %lld", lo, hi, &a) == 3)
            assert_int_equal(sl_window_range_open(w, lo, hi, a, &err), SL_OK);
        else if (sscanf(step, "p %lld", &a) == 1)
            sl_window_push(w, a, 10);
        else if (sscanf(step, "c %lld", &a) == 1)
            sl_window_range_close(w, (uint64_t)a);
        else if (sscanf(step, "a %lld", &a) == 1)
            sl_window_ack(w, (uint64_t)a);
        else
            fail_msg("bad step \"%s\"", step);
    }
}

static void
test_window(void **state)
{
    const window_row_t *r = *state;
    sl_window_t *w = NULL;
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_window_new(r->cap, &w, &err), SL_OK);
    sl_pos_t ck = {0};
    assert_int_equal(sl_pos_set(&ck, "L0", NULL, 0, 0), SL_OK);
    run_script(w, r->script);
    assert_true(sl_window_position(w, &ck) >= 0);
    char got[128];
    snprintf(got, sizeof got, "%s|%s|%lld|%lld", ck.lo, ck.hi ? ck.hi : "-", (long long)ck.last_id,
             (long long)ck.range_no);
    sl_pos_clear(&ck);
    sl_window_free(w);
    assert_string_equal(got, r->want);
}

/* Bytes are counted in and out, and the used count follows the prefix. */
static void
test_accounting(void **state)
{
    (void)state;
    sl_window_t *w = NULL;
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_window_new(4, &w, &err), SL_OK);
    assert_int_equal(sl_window_range_open(w, "L", "H", 0, &err), SL_OK);
    sl_window_push(w, 1, 100);
    sl_window_push(w, 2, 200);
    sl_window_push(w, 3, 300);
    uint64_t grown = sl_window_ack(w, 1) + sl_window_ack(w, 0);
    char got[64];
    snprintf(got, sizeof got, "grown=%llu used=%zu bytes=%llu", (unsigned long long)grown,
             sl_window_used(w), (unsigned long long)sl_window_bytes(w));
    sl_window_free(w);
    assert_string_equal(got, "grown=2 used=1 bytes=300");
}

int
main(void)
{
    struct CMUnitTest tests[ROWS(rows) + 1];
    size_t n = 0;
    for (size_t i = 0; i < ROWS(rows); i++)
        tests[n++] = (struct CMUnitTest){rows[i].name, test_window, NULL, NULL, (void *)&rows[i]};
    tests[n++] = (struct CMUnitTest){"accounting", test_accounting, NULL, NULL, NULL};
    return _cmocka_run_group_tests("window", tests, n, NULL, NULL);
}
