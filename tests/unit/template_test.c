/*
 * tests/unit/template_test.c - name templates and Kafka topic names.
 *
 * Table-driven, one registered test per row:
 *   - templates: text -> rendered name (and whether it is constant), or the
 *     SL_EUSAGE error it must produce (a substring, the config path, the hint);
 *   - rendering into buffers too small returns -1;
 *   - sl_kafka_topic_check(): names accepted or rejected, with the reason.
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

#define ROWS(a) (sizeof(a) / sizeof((a)[0]))

/* The config path every template row is compiled under. */
#define PATH "pipelines[0].sink.topic"

static const sl_msg_t msg = {
    .outbox_id = 1,
    .id = "m-1",
    .topic = "orders",
    .key = "k",
    .op = "insert",
    .payload = "{}",
    .headers = "{}",
    .ts = "2026-11-21T08:30:00Z",
    .db = "shop",
    .txid = "1",
};

/* ------------------------------------------------------------------------ */
/* Templates                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct tpl_row {
    const char *name;
    const char *tpl;
    const char *want;     /* rendered for msg, or NULL when compiling must fail */
    bool constant;        /* when want is set */
    const char *want_err; /* when want is NULL: substring of the message */
} tpl_row_t;

static const tpl_row_t tpl_rows[] = {
    {"tpl_constant", "events", "events", true, NULL},
    {"tpl_prefix_topic", "app.{topic}", "app.orders", false, NULL},
    {"tpl_topic_only", "{topic}", "orders", false, NULL},
    {"tpl_op_only", "{op}", "insert", false, NULL},
    {"tpl_topic_and_op", "cdc_{topic}_{op}_v1", "cdc_orders_insert_v1", false, NULL},
    {"tpl_adjacent_placeholders", "{topic}{op}{topic}", "ordersinsertorders", false, NULL},
    {"tpl_escaped_braces", "{{literal}}", "{literal}", true, NULL},
    {"tpl_escaped_around_placeholder", "{{{topic}}}", "{orders}", false, NULL},
    {"tpl_escaped_close", "a}}b", "a}b", true, NULL},
    {"tpl_utf8_literal", "caf\xc3\xa9.{topic}", "caf\xc3\xa9.orders", false, NULL},
    {"tpl_unknown_placeholder", "app.{tabel}", NULL, false,
     PATH ": unknown placeholder \"{tabel}\" at position 5 of template \"app.{tabel}\""},
    {"tpl_placeholder_case_matters", "{TOPIC}", NULL, false,
     "unknown placeholder \"{TOPIC}\" at position 1"},
    {"tpl_placeholder_no_spaces", "{ topic }", NULL, false,
     "unknown placeholder \"{ topic }\" at position 1"},
    {"tpl_empty_placeholder", "x{}", NULL, false, "unknown placeholder \"{}\" at position 2"},
    {"tpl_unclosed", "app.{topic", NULL, false, "unclosed '{' at position 5"},
    {"tpl_unclosed_nested", "{to{pic}", NULL, false, "unclosed '{' at position 1"},
    {"tpl_lone_open_at_end", "app{", NULL, false, "unclosed '{' at position 4"},
    {"tpl_unmatched_close", "app.topic}", NULL, false, "unmatched '}' at position 10"},
    {"tpl_half_escaped", "{{topic}", NULL, false, "unmatched '}' at position 8"},
    {"tpl_empty", "", NULL, false, PATH ": template is empty"},
};

static void
test_tpl(void **state)
{
    const tpl_row_t *row = *state;
    sl_template_t *t = (sl_template_t *)&t; /* must be reset to NULL on failure */
    sl_err_t err;
    sl_err_clear(&err);
    int rc = sl_template_new(row->tpl, PATH, &t, &err);

    if (row->want == NULL) {
        assert_int_equal(rc, SL_EUSAGE);
        assert_null(t);
        if (strstr(err.msg, row->want_err) == NULL)
            fail_msg("error \"%s\" does not contain \"%s\"", err.msg, row->want_err);
        assert_non_null(strstr(err.hint, "{topic}"));
        return;
    }

    assert_int_equal(rc, SL_OK);
    assert_non_null(t);
    assert_int_equal(sl_template_is_constant(t), row->constant);
    char buf[256];
    int n = sl_template_render(t, &msg, buf, sizeof buf);
    assert_int_equal(n, (int)strlen(row->want));
    assert_string_equal(buf, row->want);
    sl_template_free(t);
}

/* A constant template renders without a message. */
static void
test_tpl_constant_without_msg(void **state)
{
    sl_template_t *t = NULL;
    sl_err_t err;
    assert_int_equal(sl_template_new("events", PATH, &t, &err), SL_OK);
    char buf[16];
    assert_int_equal(sl_template_render(t, NULL, buf, sizeof buf), 6);
    assert_string_equal(buf, "events");
    sl_template_free(t);
    sl_template_free(NULL);
}

typedef struct fit_row {
    const char *name;
    const char *tpl;
    size_t n; /* buffer size, NUL included */
    int want; /* return value */
} fit_row_t;

static const fit_row_t fit_rows[] = {
    /* "app.orders" is 10 bytes and needs 11 with its NUL. */
    {"fit_exact", "app.{topic}", 11, 10},           {"fit_one_short", "app.{topic}", 10, -1},
    {"fit_short_in_literal", "app.{topic}", 3, -1}, {"fit_zero", "app.{topic}", 0, -1},
    {"fit_constant_exact", "events", 7, 6},         {"fit_constant_short", "events", 6, -1},
    {"fit_op_short", "{topic}.{op}", 12, -1},       {"fit_op_exact", "{topic}.{op}", 14, 13},
};

static void
test_fit(void **state)
{
    const fit_row_t *row = *state;
    sl_template_t *t = NULL;
    sl_err_t err;
    assert_int_equal(sl_template_new(row->tpl, PATH, &t, &err), SL_OK);
    /* Guard bytes on both sides catch any write outside [0, n). */
    char area[64];
    memset(area, '#', sizeof area);
    char *buf = area + 8;
    int rc = sl_template_render(t, &msg, row->n == 0 ? NULL : buf, row->n);
    assert_int_equal(rc, row->want);
    if (row->n > 0 && rc < 0)
        assert_int_equal(buf[0], '\0'); /* never a truncated name */
    for (size_t i = 0; i < 8; i++)
        assert_int_equal(area[i], '#');
    for (size_t i = 8 + row->n; i < sizeof area; i++)
        assert_int_equal(area[i], '#');
    sl_template_free(t);
}

/* ------------------------------------------------------------------------ */
/* Kafka topic names                                                         */
/* ------------------------------------------------------------------------ */

typedef struct topic_row {
    const char *name;
    const char *topic; /* NULL: use `repeat` copies of 'a' (or NULL itself when 0) */
    size_t repeat;
    const char *want_err; /* NULL when accepted */
} topic_row_t;

static const topic_row_t topic_rows[] = {
    {"topic_simple", "orders", 0, NULL},
    {"topic_one_char", "a", 0, NULL},
    {"topic_all_classes", "App.orders_v1-EU.9", 0, NULL},
    {"topic_three_dots", "...", 0, NULL},
    {"topic_dot_prefix", ".orders", 0, NULL},
    {"topic_249", NULL, 249, NULL},
    {"topic_250", NULL, 250, "is 250 characters long, the maximum is 249"},
    {"topic_empty", "", 0, "sink.topic: topic name is empty"},
    {"topic_null", NULL, 0, "topic name is empty"},
    {"topic_dot", ".", 0, "topic name \".\" is reserved"},
    {"topic_dot_dot", "..", 0, "topic name \"..\" is reserved"},
    {"topic_space", "my topic", 0, "invalid character ' ' at position 3"},
    {"topic_slash", "a/b", 0, "invalid character '/' at position 2"},
    {"topic_colon", "orders:v1", 0, "invalid character ':' at position 7"},
    {"topic_brace", "app.{topic}", 0, "invalid character '{' at position 5"},
    {"topic_utf8", "caf\xc3\xa9", 0, "invalid character byte 0xc3 at position 4"},
    {"topic_tab", "a\tb", 0, "invalid character byte 0x09 at position 2"},
};

static void
test_topic(void **state)
{
    const topic_row_t *row = *state;
    char name[300];
    const char *topic = row->topic;
    if (topic == NULL && row->repeat > 0) {
        assert_true(row->repeat < sizeof name);
        memset(name, 'a', row->repeat);
        name[row->repeat] = '\0';
        topic = name;
    }
    sl_err_t err;
    sl_err_clear(&err);
    int rc = sl_kafka_topic_check(topic, "sink.topic", &err);
    if (row->want_err == NULL) {
        if (rc != SL_OK)
            fail_msg("rejected: %s", err.msg);
        return;
    }
    assert_int_equal(rc, SL_EUSAGE);
    if (strstr(err.msg, row->want_err) == NULL)
        fail_msg("error \"%s\" does not contain \"%s\"", err.msg, row->want_err);
    assert_non_null(strstr(err.hint, "249"));
}

/* ------------------------------------------------------------------------ */

#define ADD_ROWS(table, func)                                                                  \
    for (size_t i = 0; i < ROWS(table); i++)                                                   \
        tests[n++] = (struct CMUnitTest)                                                       \
        {                                                                                      \
            .name = (table)[i].name, .test_func = (func), .initial_state = (void *)&(table)[i] \
        }

#define ADD(func) tests[n++] = (struct CMUnitTest)cmocka_unit_test(func)

int
main(void)
{
    struct CMUnitTest tests[ROWS(tpl_rows) + ROWS(fit_rows) + ROWS(topic_rows) + 4];
    size_t n = 0;
    ADD_ROWS(tpl_rows, test_tpl);
    ADD(test_tpl_constant_without_msg);
    ADD_ROWS(fit_rows, test_fit);
    ADD_ROWS(topic_rows, test_topic);
    if (n > ROWS(tests))
        abort();
    return _cmocka_run_group_tests("template", tests, n, NULL, NULL);
}
