/*
 * tests/integration/0006_publish_errors.c - sluice.publish(): its errors, and
 * that it writes exactly what its caller commits.
 *
 * outbox/sql/0001_outbox.sql documents each validation error of publish();
 * DESIGN.md invariant 1 says its rows commit iff the caller commits, and
 * invariant 7 that bad input fails clearly without writing anything.
 *
 *   1. Every documented error: an invalid topic (spaces, empty, NULL, 201
 *      characters, a slash), a NULL payload, headers that are not an object,
 *      a reserved ("sluice-id", "Sluice-Trace") or empty header name, a
 *      payload over the default limit (900000 bytes) and over a lowered
 *      limit (SET sluice.max_payload_bytes = 1000, 2000 bytes). Each fails
 *      with its message naming the problem (and its SQLSTATE where one is
 *      documented), and the outbox stays empty.
 *   2. A failing publish inside a transaction aborts it: the good publish
 *      before it is gone too.
 *   3. Positive cases: valid publishes return increasing ids and store topic,
 *      key, payload and headers as given; limits are inclusive (a payload of
 *      exactly the limit passes); 200-character topics pass; NULL headers
 *      mean {}; a publish in a rolled-back transaction leaves no row.
 *   4. The doorbell: a session that arms it like an idle relay (LISTEN
 *      sluice_outbox plus the shared doorbell lock) receives a notification
 *      for a committed publish, none for a rolled-back one, none when the
 *      publisher SET sluice.doorbell = off (which still publishes), and none
 *      while no relay is armed (a busy relay costs publishers no NOTIFY). A
 *      NOTIFY sent after each case is the marker that bounds the wait, so
 *      nothing depends on timing.
 */
#include "harness.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUN_MS 60000
#define WAIT_MS 30000

static long long
outbox_count(PGconn *conn)
{
    return th_sql_int(conn, "SELECT count(*) FROM sluice.outbox");
}

/* Runs a statement that must fail with a message containing `want`. */
static void
expect_error(PGconn *conn, const char *what, const char *want, const char *sql)
{
    char err[2048];
    long long before = outbox_count(conn);
    int rc = th_sql_try(conn, err, sizeof err, "%s", sql);
    TH_ASSERT(rc == -1, "%s: publish fails", what);
    TH_ASSERT(strstr(err, want) != NULL, "%s: the error says \"%s\", got \"%s\"", what, want, err);
    TH_ASSERT(outbox_count(conn) == before, "%s: nothing was written to the outbox", what);
}

/* Runs sql on conn and returns the SQLSTATE of its error ("" on success). */
static void
sqlstate_of(PGconn *conn, const char *sql, char *out, size_t n)
{
    PGresult *res = PQexec(conn, sql);
    const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
    snprintf(out, n, "%s|%s", st ? st : "", hint ? hint : "");
    PQclear(res);
}

static void
expect_sqlstate(PGconn *conn, const char *what, const char *state, const char *hint_part,
                const char *sql)
{
    char got[1024];
    sqlstate_of(conn, sql, got, sizeof got);
    size_t sl = strlen(state);
    TH_ASSERT(strncmp(got, state, sl) == 0 && got[sl] == '|', "%s: SQLSTATE is %s, got \"%s\"",
              what, state, got);
    TH_ASSERT(strstr(got + sl + 1, hint_part) != NULL, "%s: the hint mentions \"%s\", got \"%s\"",
              what, hint_part, got + sl + 1);
}

/* ------------------------------------------------------------------------ */
/* LISTEN                                                                    */
/* ------------------------------------------------------------------------ */

/*
 * Waits for notifications on `listener` until one on channel "marker" with
 * payload `marker` arrives; returns how many sluice_outbox notifications came
 * before it, or -1 at the deadline.
 */
static int
doorbells_before_marker(PGconn *listener, const char *marker)
{
    int64_t deadline = th_now_ms() + WAIT_MS;
    int rings = 0;
    for (;;) {
        TH_ASSERT(PQconsumeInput(listener) == 1, "the LISTEN connection reads input: %s",
                  PQerrorMessage(listener));
        PGnotify *n;
        while ((n = PQnotifies(listener)) != NULL) {
            bool is_marker = strcmp(n->relname, "marker") == 0 && strcmp(n->extra, marker) == 0;
            if (strcmp(n->relname, "sluice_outbox") == 0)
                rings++;
            PQfreemem(n);
            if (is_marker)
                return rings;
        }
        int64_t left = deadline - th_now_ms();
        if (left <= 0)
            return -1;
        struct pollfd p = {.fd = PQsocket(listener), .events = POLLIN};
        poll(&p, 1, left > 100 ? 100 : (int)left);
    }
}

/* Sends the marker notification from `conn` (its own transaction). */
static void
send_marker(PGconn *conn, const char *marker)
{
    th_sql(conn, "SELECT pg_notify('marker', '%s')", marker);
}

static void
check_doorbell(th_env_t *env, PGconn *conn)
{
    PGconn *listener = th_pg_connect(env->pg_url);
    th_sql(listener, "LISTEN sluice_outbox; LISTEN marker");

    TH_LOG("no relay waiting (doorbell not armed): no notification");
    th_sql(conn, "SELECT sluice.publish('t0006.bell', '{\"n\": 0}')");
    send_marker(conn, "m0");
    int unarmed = doorbells_before_marker(listener, "m0");
    TH_ASSERT(unarmed == 0, "with no armed relay a publish sends no NOTIFY (got %d)", unarmed);

    /* Arm it as an idle relay does (outbox/outbox.h, SL_OUTBOX_SQL_ARM). */
    TH_ASSERT(
        th_sql_int(listener, "SELECT pg_try_advisory_lock_shared(8317132985617640448)::int") == 1,
        "the listener takes the doorbell lock in shared mode");

    TH_LOG("doorbell on (default): one notification per committing transaction");
    th_sql(conn, "BEGIN; SELECT sluice.publish('t0006.bell', '{\"n\": 1}'); "
                 "SELECT sluice.publish('t0006.bell', '{\"n\": 2}'); COMMIT");
    send_marker(conn, "m1");
    int rings = doorbells_before_marker(listener, "m1");
    TH_ASSERT(rings == 1,
              "a committed transaction with two publishes rings the doorbell once (got %d)", rings);

    TH_LOG("doorbell on, transaction rolled back: no notification");
    th_sql(conn, "BEGIN; SELECT sluice.publish('t0006.bell', '{\"n\": 3}'); ROLLBACK");
    send_marker(conn, "m2");
    rings = doorbells_before_marker(listener, "m2");
    TH_ASSERT(rings == 0, "a rolled-back publish rings no doorbell (got %d)", rings);

    TH_LOG("SET sluice.doorbell = off: published, no notification");
    long long before = th_sql_int(conn, "SELECT count(*) FROM sluice.outbox WHERE topic = "
                                        "'t0006.quiet'");
    th_sql(conn, "SET sluice.doorbell = off");
    long long id = th_sql_int(conn, "SELECT sluice.publish('t0006.quiet', '{\"quiet\": true}')");
    TH_ASSERT(id > 0, "publish with the doorbell off returns an id (%lld)", id);
    send_marker(conn, "m3");
    rings = doorbells_before_marker(listener, "m3");
    TH_ASSERT(rings == 0, "with sluice.doorbell = off no notification is sent (got %d)", rings);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.outbox WHERE topic = 't0006.quiet'") ==
                  before + 1,
              "with the doorbell off the event is still in the outbox");

    TH_LOG("SET sluice.doorbell = on again: rings");
    th_sql(conn, "SET sluice.doorbell = on");
    th_sql(conn, "SELECT sluice.publish('t0006.bell', '{\"n\": 4}')");
    send_marker(conn, "m4");
    rings = doorbells_before_marker(listener, "m4");
    TH_ASSERT(rings == 1, "with the doorbell back on, a publish rings once (got %d)", rings);

    TH_LOG("SET LOCAL sluice.doorbell = off only lasts the transaction");
    th_sql(conn, "BEGIN; SET LOCAL sluice.doorbell = off; "
                 "SELECT sluice.publish('t0006.quiet', '{}'); COMMIT");
    send_marker(conn, "m5");
    rings = doorbells_before_marker(listener, "m5");
    TH_ASSERT(rings == 0, "SET LOCAL sluice.doorbell = off silences that transaction (got %d)",
              rings);
    th_sql(conn, "SELECT sluice.publish('t0006.bell', '{\"n\": 5}')");
    send_marker(conn, "m6");
    rings = doorbells_before_marker(listener, "m6");
    TH_ASSERT(rings == 1, "the next transaction rings again (got %d)", rings);

    TH_LOG("doorbell disarmed again: no notification");
    th_sql(listener, "SELECT pg_advisory_unlock_shared(8317132985617640448)");
    th_sql(conn, "SELECT sluice.publish('t0006.bell', '{\"n\": 6}')");
    send_marker(conn, "m7");
    rings = doorbells_before_marker(listener, "m7");
    TH_ASSERT(rings == 0, "after the relay disarms, publishing sends no NOTIFY (got %d)", rings);
    PQfinish(listener);
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    TH_ASSERT(th_run(init, NULL, RUN_MS) == 0, "sluice init succeeds");
    PGconn *conn = th_pg_connect(env.pg_url);
    TH_ASSERT(outbox_count(conn) == 0, "the outbox starts empty");

    TH_LOG("invalid topics");
    expect_error(conn, "topic with spaces", "sluice.publish: invalid topic 'has spaces'",
                 "SELECT sluice.publish('has spaces', '{}')");
    expect_error(conn, "empty topic", "sluice.publish: invalid topic ''",
                 "SELECT sluice.publish('', '{}')");
    expect_error(conn, "NULL topic", "sluice.publish: invalid topic NULL",
                 "SELECT sluice.publish(NULL, '{}')");
    expect_error(conn, "topic with a slash", "invalid topic 'a/b'",
                 "SELECT sluice.publish('a/b', '{}')");
    char sql[4096];
    snprintf(sql, sizeof sql, "SELECT sluice.publish(repeat('t', 201), '{}')");
    expect_error(conn, "201-character topic", "sluice.publish: invalid topic 'tttt", sql);
    expect_sqlstate(conn, "invalid topic", "22023", "1 to 200 characters",
                    "SELECT sluice.publish('bad topic', '{}')");

    TH_LOG("invalid payload and headers");
    expect_error(conn, "NULL payload", "sluice.publish: payload is NULL (topic t0006)",
                 "SELECT sluice.publish('t0006', NULL)");
    expect_sqlstate(conn, "NULL payload", "22004", "'{}'::jsonb",
                    "SELECT sluice.publish('t0006', NULL)");
    expect_error(conn, "headers as an array",
                 "sluice.publish: headers must be a JSON object, got array (topic t0006)",
                 "SELECT sluice.publish('t0006', '{}', NULL, '[1, 2]')");
    expect_error(conn, "headers as a string", "headers must be a JSON object, got string",
                 "SELECT sluice.publish('t0006', '{}', NULL, '\"x\"')");
    expect_error(conn, "headers as JSON null", "headers must be a JSON object, got null",
                 "SELECT sluice.publish('t0006', '{}', NULL, 'null')");
    expect_error(conn, "reserved header sluice-id",
                 "sluice.publish: header name 'sluice-id' is reserved or empty (topic t0006)",
                 "SELECT sluice.publish('t0006', '{}', 'k', '{\"sluice-id\": \"x\"}')");
    expect_error(conn, "reserved header, other case", "header name 'Sluice-Trace' is reserved",
                 "SELECT sluice.publish('t0006', '{}', 'k', "
                 "'{\"ok\": \"1\", \"Sluice-Trace\": \"x\"}')");
    expect_error(conn, "empty header name", "header name '' is reserved or empty",
                 "SELECT sluice.publish('t0006', '{}', 'k', '{\"\": \"x\"}')");
    expect_sqlstate(conn, "reserved header", "22023", "\"sluice-\"",
                    "SELECT sluice.publish('t0006', '{}', 'k', '{\"sluice-op\": \"x\"}')");

    TH_LOG("payload limits");
    /* '"' + 900000 x + '"' is 900002 bytes of JSON text. */
    expect_error(conn, "payload over the default limit",
                 "payload of 900002 bytes exceeds the limit of 900000 bytes (topic t0006)",
                 "SELECT sluice.publish('t0006', to_jsonb(repeat('x', 900000)))");
    expect_sqlstate(conn, "payload over the limit", "54000", "sluice.max_payload_bytes",
                    "SELECT sluice.publish('t0006', to_jsonb(repeat('x', 900000)))");
    th_sql(conn, "SET sluice.max_payload_bytes = 1000");
    expect_error(conn, "2000-byte payload over a 1000-byte limit",
                 "payload of 2002 bytes exceeds the limit of 1000 bytes",
                 "SELECT sluice.publish('t0006', to_jsonb(repeat('y', 2000)))");
    long long at_limit = th_sql_int(conn, "SELECT sluice.publish('t0006.limit', "
                                          "to_jsonb(repeat('z', 998)))");
    TH_ASSERT(at_limit > 0, "a payload of exactly the limit (1000 bytes) is accepted");
    th_sql(conn, "RESET sluice.max_payload_bytes");
    long long big = th_sql_int(conn, "SELECT sluice.publish('t0006.limit', "
                                     "to_jsonb(repeat('z', 2000)))");
    TH_ASSERT(big > at_limit, "after RESET the default limit applies again");
    th_sql(conn, "DELETE FROM sluice.outbox");

    TH_LOG("a failing publish aborts its transaction");
    th_sql(conn, "BEGIN");
    long long first = th_sql_int(conn, "SELECT sluice.publish('t0006.txn', '{\"n\": 1}')");
    TH_ASSERT(first > 0, "the first publish of the transaction succeeds");
    char err[1024];
    int rc = th_sql_try(conn, err, sizeof err,
                        "SELECT sluice.publish('t0006.txn', '{}', NULL, '{\"sluice-id\": \"x\"}')");
    TH_ASSERT(rc == -1, "the second publish fails (reserved header)");
    rc = th_sql_try(conn, err, sizeof err, "SELECT sluice.publish('t0006.txn', '{\"n\": 3}')");
    TH_ASSERT(rc == -1 && strstr(err, "current transaction is aborted") != NULL,
              "the transaction is aborted after the failure: \"%s\"", err);
    th_sql(conn, "COMMIT"); /* ends the aborted transaction: a rollback */
    TH_ASSERT(outbox_count(conn) == 0,
              "no partial rows: the good publish before the failure is gone too");

    TH_LOG("valid publishes");
    long long ids[5];
    for (int i = 0; i < 5; i++) {
        ids[i] = th_sql_int(conn,
                            "SELECT sluice.publish('t0006.ok', jsonb_build_object('n', %d), "
                            "'key-%d', '{\"trace-id\": \"abc\", \"n\": 7}')",
                            i, i);
        TH_ASSERT(i == 0 || ids[i] > ids[i - 1], "publish ids increase: %lld then %lld",
                  i ? ids[i - 1] : 0, ids[i]);
    }
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.outbox WHERE topic = 't0006.ok'") == 5,
              "five rows were written");
    char *row = th_sql_text(conn,
                            "SELECT topic || '|' || key || '|' || op || '|' || payload::text || "
                            "'|' || headers::text FROM sluice.outbox WHERE id = %lld",
                            ids[3]);
    TH_ASSERT(row != NULL && strcmp(row, "t0006.ok|key-3|event|{\"n\": 3}|"
                                         "{\"n\": 7, \"trace-id\": \"abc\"}") == 0,
              "the row holds what was published, got \"%s\"", row ? row : "NULL");
    free(row);
    TH_ASSERT(th_sql_int(conn, "SELECT count(DISTINCT txid) FROM sluice.outbox "
                               "WHERE topic = 't0006.ok'") == 5,
              "each row carries the txid of the transaction that wrote it (5 transactions)");

    long long t200 = th_sql_int(conn, "SELECT sluice.publish(repeat('a', 200), 'null')");
    TH_ASSERT(t200 > ids[4], "a 200-character topic and a JSON null payload are accepted");
    long long nullh = th_sql_int(conn, "SELECT sluice.publish('t0006.ok', '[]', NULL, NULL)");
    char *h = th_sql_text(conn,
                          "SELECT headers::text || '|' || (key IS NULL)::text "
                          "FROM sluice.outbox WHERE id = %lld",
                          nullh);
    TH_ASSERT(h != NULL && strcmp(h, "{}|true") == 0, "NULL headers are stored as {}, got %s",
              h ? h : "NULL");
    free(h);

    TH_LOG("publish in a rolled-back transaction");
    long long before = outbox_count(conn);
    th_sql(conn, "BEGIN");
    long long ghost = th_sql_int(conn, "SELECT sluice.publish('t0006.ghost', '{}')");
    TH_ASSERT(ghost > nullh, "publish inside the transaction returns an id");
    TH_ASSERT(outbox_count(conn) == before + 1, "the transaction sees its own row");
    th_sql(conn, "ROLLBACK");
    TH_ASSERT(outbox_count(conn) == before, "after ROLLBACK the row is gone");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.outbox WHERE id = %lld", ghost) == 0,
              "no row with the rolled-back id exists");
    long long after = th_sql_int(conn, "SELECT sluice.publish('t0006.ok', '{}')");
    TH_ASSERT(after > ghost, "ids keep increasing after a rollback (%lld > %lld)", after, ghost);

    check_doorbell(&env, conn);

    PQfinish(conn);
    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
