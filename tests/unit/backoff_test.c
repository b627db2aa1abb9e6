/*
 * tests/unit/backoff_test.c - the reconnect schedule (core/backoff.c).
 *
 * DESIGN.md, "Relay": exponential backoff, 100 ms initial, 30 s cap, +/-20 %
 * jitter, reset after a healthy period. Every case is a table row run as its
 * own cmocka test, with one assertion:
 *
 *   schedule_rows  the un-jittered delay of attempt k (jitter set to 0)
 *   jitter_rows    over many seeds, attempt k stays within +/-20 % of its
 *                  un-jittered delay and actually varies
 *   reset_rows     a script of next/success/failure calls, then the delay
 *                  of the next attempt: reset after a healthy period, no
 *                  reset when the connection fails soon after it came up
 */
#include "core/core.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ------------------------------------------------------------------------ */
/* Schedule without jitter                                                   */
/* ------------------------------------------------------------------------ */

typedef struct schedule_row {
    const char *name;
    uint32_t attempt; /* 0 = the first delay */
    uint32_t want_ms;
} schedule_row_t;

static const schedule_row_t schedule_rows[] = {
    {"attempt 0 is the initial delay", 0, 100},
    {"attempt 1 doubles", 1, 200},
    {"attempt 2", 2, 400},
    {"attempt 3", 3, 800},
    {"attempt 4", 4, 1600},
    {"attempt 5", 5, 3200},
    {"attempt 6", 6, 6400},
    {"attempt 7", 7, 12800},
    {"attempt 8", 8, 25600},
    {"attempt 9 is capped", 9, 30000},
    {"attempt 10 stays at the cap", 10, 30000},
    {"attempt 100 stays at the cap", 100, 30000},
};

#define N_SCHEDULE (sizeof schedule_rows / sizeof schedule_rows[0])

/* A schedule with DESIGN.md's defaults and no jitter. */
static void
backoff_exact(sl_backoff_t *bo)
{
    sl_backoff_init(bo, 1);
    bo->jitter_pct = 0;
}

static void
run_schedule(void **state)
{
    const schedule_row_t *row = *state;
    sl_backoff_t bo;
    backoff_exact(&bo);
    uint32_t got = 0;
    for (uint32_t i = 0; i <= row->attempt; i++)
        got = sl_backoff_next(&bo);
    assert_int_equal(got, row->want_ms);
}

/* ------------------------------------------------------------------------ */
/* Jitter bounds                                                             */
/* ------------------------------------------------------------------------ */

typedef struct jitter_row {
    const char *name;
    uint32_t attempt;
    uint32_t base_ms; /* the un-jittered delay of that attempt */
} jitter_row_t;

static const jitter_row_t jitter_rows[] = {
    {"initial delay within 80..120", 0, 100},
    {"attempt 3 within +/-20%", 3, 800},
    {"attempt 8 within +/-20%", 8, 25600},
    {"capped delay within 24000..36000", 12, 30000},
};

#define N_JITTER (sizeof jitter_rows / sizeof jitter_rows[0])

/* How many seeded schedules each jitter row samples. */
#define JITTER_SAMPLES 2000

static void
run_jitter(void **state)
{
    const jitter_row_t *row = *state;
    /* Integer bounds of [0.8 * base, 1.2 * base]. */
    uint32_t lo = row->base_ms * (100 - SL_BACKOFF_JITTER_PCT) / 100;
    uint32_t hi = row->base_ms * (100 + SL_BACKOFF_JITTER_PCT) / 100;
    uint32_t min = UINT32_MAX, max = 0;
    for (uint64_t seed = 1; seed <= JITTER_SAMPLES; seed++) {
        sl_backoff_t bo;
        sl_backoff_init(&bo, seed * 0x9E3779B97F4A7C15ULL);
        uint32_t d = 0;
        for (uint32_t i = 0; i <= row->attempt; i++)
            d = sl_backoff_next(&bo);
        min = d < min ? d : min;
        max = d > max ? d : max;
    }
    /* Within bounds, and spread over most of the band (not a constant). */
    char got[128], want[128];
    uint32_t spread_floor = (hi - lo) / 2;
    snprintf(got, sizeof got, "in bounds: %s, spread: %s", min >= lo && max <= hi ? "yes" : "no",
             max - min >= spread_floor ? "yes" : "no");
    snprintf(want, sizeof want, "in bounds: yes, spread: yes");
    if (strcmp(got, want) != 0)
        print_error("attempt %u: min %u max %u, allowed %u..%u\n", row->attempt, min, max, lo, hi);
    assert_string_equal(got, want);
}

/* ------------------------------------------------------------------------ */
/* Reset after a healthy period                                              */
/* ------------------------------------------------------------------------ */

/*
 * A script is a space-separated list of steps, run in order on a fresh,
 * un-jittered schedule:
 *   nK   call sl_backoff_next() K times (K attempts that failed)
 *   sT   sl_backoff_success() at T ms
 *   fT   sl_backoff_failure() at T ms
 * The row then checks the delay returned by one more sl_backoff_next().
 */
typedef struct reset_row {
    const char *name;
    const char *script;
    uint32_t want_ms;
} reset_row_t;

static const reset_row_t reset_rows[] = {
    {"fresh schedule starts at the initial delay", "", 100},
    {"failures keep doubling", "n5 f1000", 3200},
    {"failure without a success does not reset", "n5 f100000", 3200},
    {"healthy for exactly the healthy period resets", "n5 s1000 f61000", 100},
    {"healthy for long resets", "n9 s1000 f9000000", 100},
    {"failing soon after success keeps backing off", "n5 s1000 f1500", 3200},
    {"failing 1 ms before the healthy period keeps backing off", "n5 s1000 f60999", 3200},
    {"a failure ends the healthy period", "n5 s1000 f2000 n1 f70000", 6400},
    {"a new success starts a new healthy period", "n5 s1000 f2000 n1 s70000 f130000", 100},
    {"the latest success counts", "n5 s1000 s50000 f61000", 3200},
};

#define N_RESET (sizeof reset_rows / sizeof reset_rows[0])

static void
run_reset(void **state)
{
    const reset_row_t *row = *state;
    sl_backoff_t bo;
    backoff_exact(&bo);
    const char *p = row->script;
    while (*p != '\0') {
        char op = *p++;
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        assert_true(end != p); /* a malformed script is a bug in the table */
        p = end;
        switch (op) {
        case 'n':
            for (unsigned long long i = 0; i < v; i++)
                sl_backoff_next(&bo);
            break;
        case 's': sl_backoff_success(&bo, v); break;
        case 'f': sl_backoff_failure(&bo, v); break;
        default: fail_msg("unknown step '%c' in script \"%s\"", op, row->script);
        }
        while (*p == ' ')
            p++;
    }
    assert_int_equal(sl_backoff_next(&bo), row->want_ms);
}

/* ------------------------------------------------------------------------ */
/* Registration: one cmocka test per row                                     */
/* ------------------------------------------------------------------------ */

#define N_TESTS (N_SCHEDULE + N_JITTER + N_RESET)

static struct CMUnitTest tests[N_TESTS];
static char test_names[N_TESTS][128];

static size_t
add_rows(size_t at, const char *group, void (*fn)(void **), const void *rows, size_t stride,
         size_t n)
{
    for (size_t i = 0; i < n; i++, at++) {
        const void *row = (const char *)rows + i * stride;
        /* Every row type starts with its name. */
        const char *name = *(const char *const *)row;
        snprintf(test_names[at], sizeof test_names[at], "%s: %s", group, name);
        tests[at] = (struct CMUnitTest){
            .name = test_names[at],
            .test_func = fn,
            .initial_state = (void *)(uintptr_t)row,
        };
    }
    return at;
}

int
main(void)
{
    size_t at = 0;
    at = add_rows(at, "schedule", run_schedule, schedule_rows, sizeof schedule_rows[0], N_SCHEDULE);
    at = add_rows(at, "jitter", run_jitter, jitter_rows, sizeof jitter_rows[0], N_JITTER);
    at = add_rows(at, "reset", run_reset, reset_rows, sizeof reset_rows[0], N_RESET);
    if (at != N_TESTS)
        return 1;
    return cmocka_run_group_tests_name("backoff", tests, NULL, NULL);
}
