/*
 * tests/unit/file_sink_test.c - the "file" sink (sinks/stdout.c) acknowledges
 * every flushed message exactly once, also when the pipeline sends and
 * flushes more from inside an acknowledgement, as the relay does when an ack
 * frees room for held rows (relay/pipeline.c, pipeline_on_ack).
 *
 * Runs the sink on a private libuv loop against a temporary file; no server.
 */
#include "sinks/sink.h"

#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#define MAX_TOKENS 64

typedef struct acks {
    const sl_sink_ops_t *ops;
    sl_sink_t *sk;
    int count[MAX_TOKENS]; /* acknowledgements per token */
    int failed;            /* acknowledgements with a status other than SL_OK */
    /* Acknowledging token `trigger` sends tokens more_from..more_to and flushes. */
    uint64_t trigger, more_from, more_to;
    bool closed;
} acks_t;

static void
send_one(acks_t *a, uint64_t token)
{
    char id[32];
    snprintf(id, sizeof id, "test:%llu", (unsigned long long)token);
    sl_msg_t m = {.outbox_id = (int64_t)token,
                  .id = id,
                  .topic = "orders",
                  .key = "k",
                  .op = "event",
                  .payload = "{\"n\": 1}",
                  .headers = "{}",
                  .ts = "2026-11-22T00:00:00Z",
                  .db = "db",
                  .txid = "1"};
    size_t bytes = 0;
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(a->ops->send(a->sk, &m, token, &bytes, &err), SL_OK);
    assert_true(bytes > 0);
}

static void
flush_ok(acks_t *a)
{
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(a->ops->flush(a->sk, &err), SL_OK);
}

static void
on_ack(void *ctx, uint64_t token, int status, const sl_err_t *err)
{
    (void)err;
    acks_t *a = ctx;
    assert_true(token < MAX_TOKENS);
    a->count[token]++;
    if (status != SL_OK)
        a->failed++;
    if (token == a->trigger && a->count[token] == 1) {
        for (uint64_t t = a->more_from; t <= a->more_to; t++)
            send_one(a, t);
        flush_ok(a);
    }
}

static void
on_closed(void *arg)
{
    ((acks_t *)arg)->closed = true;
}

static size_t
count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = 0;
    int c;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

/* Sends 1..first, flushes, and lets the loop deliver the acks; acknowledging
 * `trigger` sends and flushes more_from..more_to. Every token must be
 * acknowledged once, and the file must hold one line per message. */
static void
run_case(uint64_t first, uint64_t trigger, uint64_t more_from, uint64_t more_to)
{
    char path[] = "/tmp/sluice-file-sink-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);

    cJSON *obj = cJSON_CreateObject();
    assert_non_null(obj);
    assert_non_null(cJSON_AddStringToObject(obj, "type", "file"));
    assert_non_null(cJSON_AddStringToObject(obj, "path", path));
    const sl_sink_ops_t *ops = NULL;
    void *conf = NULL;
    sl_err_t err;
    sl_err_clear(&err);
    assert_int_equal(sl_sink_conf_parse(obj, "sink", &ops, &conf, &err), SL_OK);
    cJSON_Delete(obj);

    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    acks_t *a = calloc(1, sizeof *a);
    assert_non_null(a);
    a->ops = ops;
    a->trigger = trigger;
    a->more_from = more_from;
    a->more_to = more_to;
    sl_sink_env_t env = {.loop = &loop,
                         .pipeline = "test",
                         .database = "db",
                         .on_ack = on_ack,
                         .ctx = a,
                         .max_inflight = 1000,
                         .max_inflight_bytes = 1 << 20};
    assert_int_equal(ops->create(conf, &env, &a->sk, &err), SL_OK);

    for (uint64_t t = 1; t <= first; t++)
        send_one(a, t);
    flush_ok(a);
    uv_run(&loop, UV_RUN_DEFAULT);

    uint64_t last = more_to > first ? more_to : first;
    for (uint64_t t = 1; t <= last; t++)
        if (a->count[t] != 1)
            fail_msg("token %llu was acknowledged %d times, want once", (unsigned long long)t,
                     a->count[t]);
    assert_int_equal(a->failed, 0);
    assert_int_equal(count_lines(path), (size_t)last);

    ops->close(a->sk, on_closed, a);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(a->closed);
    assert_int_equal(uv_loop_close(&loop), 0);
    sl_sink_conf_free(ops, conf);
    free(a);
    unlink(path);
}

static void
test_acks_each_once(void **state)
{
    (void)state;
    run_case(3, 0, 1, 0); /* no trigger: 1..3 only */
}

static void
test_flush_inside_first_ack(void **state)
{
    (void)state;
    run_case(3, 1, 4, 5);
}

static void
test_flush_inside_last_ack(void **state)
{
    (void)state;
    run_case(3, 3, 4, 8);
}

static void
test_flush_inside_ack_of_many(void **state)
{
    (void)state;
    /* More sent from inside an ack than the batch being acknowledged. */
    run_case(2, 1, 3, 40);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_acks_each_once),
        cmocka_unit_test(test_flush_inside_first_ack),
        cmocka_unit_test(test_flush_inside_last_ack),
        cmocka_unit_test(test_flush_inside_ack_of_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
