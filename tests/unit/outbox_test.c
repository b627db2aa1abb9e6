/*
 * tests/unit/outbox_test.c - pure helpers of the outbox read path and of
 * core's error/log/redaction utilities.
 *
 * Table-driven, one registered test per row:
 *   - topic globs accepted or rejected;
 *   - topic lists -> the two text[] literals of the read query;
 *   - connection strings -> their redacted display;
 *   - sl_err_prefix keeps the message NUL-terminated when it overflows;
 *   - sl_log_quote escapes and truncates.
 */
#include "core/core.h"
#include "outbox/outbox.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define ROWS(a) (sizeof(a) / sizeof((a)[0]))

typedef struct glob_row {
    const char *name;
    const char *glob;
    bool ok;
} glob_row_t;

static const glob_row_t glob_rows[] = {
    {"glob_plain", "orders", true},     {"glob_star_suffix", "payments.*", true},
    {"glob_star_only", "*", true},      {"glob_all_chars", "A-z_0.9", true},
    {"glob_space", "bad topic", false}, {"glob_percent", "a%b", false},
    {"glob_empty", "", false},          {"glob_quote", "a\"b", false},
};

static void
test_glob(void **state)
{
    const glob_row_t *r = *state;
    sl_err_t err;
    sl_err_clear(&err);
    int rc = sl_outbox_topic_glob_check(r->glob, "pipelines[0].topics[0]", &err);
    assert_int_equal(rc, r->ok ? SL_OK : SL_EUSAGE);
}

typedef struct filter_row {
    const char *name;
    const char *topics[4];
    size_t n;
    const char *exact; /* NULL when no filter */
    const char *like;
} filter_row_t;

static const filter_row_t filter_rows[] = {
    {"filter_none", {NULL}, 0, NULL, NULL},
    {"filter_exact", {"orders", "payments"}, 2, "{\"orders\",\"payments\"}", "{}"},
    {"filter_glob", {"payments.*"}, 1, "{}", "{\"payments.%\"}"},
    {"filter_underscore_escaped", {"a_b*"}, 1, "{}", "{\"a\\\\_b%\"}"},
    {"filter_mixed", {"orders", "pay.*", "x"}, 3, "{\"orders\",\"x\"}", "{\"pay.%\"}"},
};

static void
test_filter(void **state)
{
    const filter_row_t *r = *state;
    sl_err_t err;
    sl_err_clear(&err);
    char *exact = NULL, *like = NULL;
    assert_int_equal(sl_outbox_topic_filter(r->topics, r->n, &exact, &like, &err), SL_OK);
    char got[256];
    snprintf(got, sizeof got, "%s|%s", exact ? exact : "NULL", like ? like : "NULL");
    char want[256];
    snprintf(want, sizeof want, "%s|%s", r->exact ? r->exact : "NULL", r->like ? r->like : "NULL");
    free(exact);
    free(like);
    assert_string_equal(got, want);
}

typedef struct redact_row {
    const char *name;
    const char *in;
    const char *want;
} redact_row_t;

static const redact_row_t redact_rows[] = {
    {"redact_uri", "postgresql://app:s3cret@db:5432/shop",
     "user=app password=[redacted] dbname=shop host=db port=5432"},
    {"redact_uri_no_password", "postgresql://app@db/shop", "user=app dbname=shop host=db"},
    {"redact_keywords_spaces", "host=db password = 's3 cret' dbname=shop",
     "password=[redacted] dbname=shop host=db"},
    {"redact_query_param", "postgresql://db/shop?password=s3cret",
     "password=[redacted] dbname=shop host=db"},
    {"redact_unparseable", "host='unterminated", "[redacted: not a valid connection string]"},
    {"redact_bare_dbname", "shop", "shop"},
};

static void
test_redact(void **state)
{
    const redact_row_t *r = *state;
    char buf[256];
    assert_string_equal(sl_pg_conninfo_redact(r->in, buf, sizeof buf), r->want);
}

static void
test_err_prefix_overflow(void **state)
{
    (void)state;
    sl_err_t err;
    sl_err_clear(&err);
    char big[SL_ERR_MSG_MAX * 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    sl_err_set(&err, SL_ERR, "%s", big);
    sl_err_prefix(&err, "pipeline \"%s\": ", "orders");
    assert_true(strncmp(err.msg, "pipeline \"orders\": xxx", 22) == 0 &&
                strlen(err.msg) == SL_ERR_MSG_MAX - 1);
}

typedef struct quote_row {
    const char *name;
    const char *in;
    size_t n;
    const char *want;
} quote_row_t;

static const quote_row_t quote_rows[] = {
    {"quote_plain", "abc", 64, "\"abc\""},
    {"quote_escapes", "a\"b\\c\nd\te", 64, "\"a\\\"b\\\\c\\nd\\te\""},
    {"quote_control", "a\001b", 64, "\"a\\x01b\""},
    {"quote_truncated", "abcdefghijklmnop", 12, "\"abcdef...\""},
    {"quote_null", NULL, 16, "\"\""},
};

static void
test_quote(void **state)
{
    const quote_row_t *r = *state;
    char buf[64];
    assert_string_equal(sl_log_quote(buf, r->n, r->in), r->want);
}

int
main(void)
{
    struct CMUnitTest
        tests[ROWS(glob_rows) + ROWS(filter_rows) + ROWS(redact_rows) + ROWS(quote_rows) + 1];
    size_t n = 0;
    for (size_t i = 0; i < ROWS(glob_rows); i++)
        tests[n++] =
            (struct CMUnitTest){glob_rows[i].name, test_glob, NULL, NULL, (void *)&glob_rows[i]};
    for (size_t i = 0; i < ROWS(filter_rows); i++)
        tests[n++] = (struct CMUnitTest){filter_rows[i].name, test_filter, NULL, NULL,
                                         (void *)&filter_rows[i]};
    for (size_t i = 0; i < ROWS(redact_rows); i++)
        tests[n++] = (struct CMUnitTest){redact_rows[i].name, test_redact, NULL, NULL,
                                         (void *)&redact_rows[i]};
    for (size_t i = 0; i < ROWS(quote_rows); i++)
        tests[n++] =
            (struct CMUnitTest){quote_rows[i].name, test_quote, NULL, NULL, (void *)&quote_rows[i]};
    tests[n++] =
        (struct CMUnitTest){"err_prefix_overflow", test_err_prefix_overflow, NULL, NULL, NULL};
    return _cmocka_run_group_tests("outbox", tests, n, NULL, NULL);
}
