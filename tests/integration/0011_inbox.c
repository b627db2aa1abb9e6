/*
 * tests/integration/0011_inbox.c - inbox tables: create/drop, idempotent
 * insert, claim with leases, ack, fail with backoff, dead letters, replay,
 * per-key order, stats and cleanup (inbox/sql/0003_inbox.sql, docs/inbox.md).
 *
 *   1. create_inbox / drop_inbox: the catalog row and the table; invalid
 *      names, a duplicate, a name taken by another relation, bad arguments
 *      (each error names the argument); every function on an unknown inbox
 *      fails with SQLSTATE 42704 and a hint naming create_inbox.
 *   2. inbox_insert: duplicates (in the inbox and inside one array) are
 *      counted and not inserted; a redelivered batch changes nothing; fields
 *      are stored as given; a bad element fails the whole call, naming the
 *      element, and inserts nothing; two concurrent inserts of one id insert
 *      it once.
 *   3. Claimers: a claim in an open transaction does not block another
 *      claimer, which gets other messages (SKIP LOCKED); a rolled-back claim
 *      leaves its messages claimable; three connections claiming and acking
 *      concurrently hand every one of 300 messages out exactly once.
 *   4. inbox_fail: backoff retry_backoff * 2^(attempts-1), not claimable
 *      before it is due, dead after max_attempts; ack/fail of a dead message
 *      refused; inbox_replay brings dead (and done) messages back with
 *      attempts reset and leaves pending or unknown ids alone.
 *   5. Leases: after a lease expires, the old claimer's ack (with or without
 *      its token) is refused with the documented error, rolling back the
 *      work done in the same transaction; the message is claimed again with
 *      a new token; the old token's ack and fail are refused ("claimed
 *      again"); the new claimer acks. A message whose leases keep expiring is
 *      dead after max_attempts claims.
 *   6. one_per_key: at most one message per key in flight, in received order;
 *      a failed message holds its key back until it is done or dead;
 *      messages without a key are not held.
 *   7. inbox_stats counts per status, due, expired leases and the age of the
 *      oldest pending message; inbox_cleanup deletes only done messages older
 *      than the retention, at most max_rows; a cleaned id inserts again;
 *      settings changed in sluice.inboxes apply to the next call.
 *   8. Permissions: EXECUTE is revoked from PUBLIC; a role granted EXECUTE
 *      on inbox_claim/inbox_ack works through them without any privilege on
 *      the inbox table.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUN_MS 60000
#define WAIT_MS 30000
#define CONC_MESSAGES 300
#define CONC_CLAIMERS 3

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * Runs sql, which must fail with SQLSTATE `state` (NULL: any) and a primary
 * message containing `want`, and, when hint_part is not NULL, a hint
 * containing it.
 */
static void
expect_error_at(int line, PGconn *conn, const char *state, const char *want, const char *hint_part,
                const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
    char got[2048];
    snprintf(got, sizeof got, "[%s] %s | hint: %s", code ? code : "-", msg ? msg : "-",
             hint ? hint : "-");
    bool ok = st == PGRES_FATAL_ERROR && msg != NULL && strstr(msg, want) != NULL &&
              (state == NULL || (code != NULL && strcmp(code, state) == 0)) &&
              (hint_part == NULL || (hint != NULL && strstr(hint, hint_part) != NULL));
    PQclear(res);
    if (!ok)
        th_fail_at(__FILE__, line, NULL, "`%s` fails with [%s] \"%s\" (hint \"%s\"), got: %s", sql,
                   state ? state : "any", want, hint_part ? hint_part : "", got);
}
#define expect_error(conn, state, want, hint, sql) \
    expect_error_at(__LINE__, (conn), (state), (want), (hint), (sql))

static long long
count_rows(PGconn *conn, const char *inbox, const char *where)
{
    return th_sql_int(conn, "SELECT count(*) FROM sluice.inbox_%s WHERE %s", inbox, where);
}

/* "inserted/duplicates" of one inbox_insert call. */
static char *
insert_msgs(PGconn *conn, const char *inbox, const char *json)
{
    return th_sql_text(conn,
                       "SELECT inserted || '/' || duplicates FROM sluice.inbox_insert('%s', '%s')",
                       inbox, json);
}

static void
expect_text_at(int line, char *got, const char *want, const char *what)
{
    if (got == NULL || strcmp(got, want) != 0)
        th_fail_at(__FILE__, line, NULL, "%s: want \"%s\", got \"%s\"", what, want,
                   got ? got : "NULL");
    free(got);
}
#define expect_text(got, want, what) expect_text_at(__LINE__, (got), (want), (what))

/* The message ids of one claim, comma-separated in the order returned ("" when none). */
static char *
claim_ids(PGconn *conn, const char *inbox, int batch, const char *extra)
{
    return th_sql_text(conn,
                       "SELECT coalesce(string_agg(message_id, ',' ORDER BY ord), '') "
                       "FROM sluice.inbox_claim('%s', %d%s) WITH ORDINALITY AS c(message_id, "
                       "topic, key, payload, headers, attempts, received_at, claim_token, "
                       "lease_expires_at, ord)",
                       inbox, batch, extra ? extra : "");
}

/* The "pending,due,processing,expired_leases,done,dead,total" of inbox_stats. */
static char *
stats_of(PGconn *conn, const char *inbox)
{
    return th_sql_text(conn,
                       "SELECT concat_ws(',', pending, due, processing, expired_leases, done, "
                       "dead, total) FROM sluice.inbox_stats('%s')",
                       inbox);
}

/* ------------------------------------------------------------------------ */
/* 1. create / drop                                                          */
/* ------------------------------------------------------------------------ */

static void
check_create_drop(PGconn *conn)
{
    TH_LOG("create_inbox: catalog row with the documented defaults, and the table");
    th_sql(conn, "SELECT sluice.create_inbox('orders')");
    expect_text(th_sql_text(conn, "SELECT concat_ws('|', table_name, max_attempts, retry_backoff, "
                                  "lease, retention, owner) FROM sluice.inboxes "
                                  "WHERE name = 'orders'"),
                "inbox_orders|5|00:00:01|00:00:30|7 days|postgres", "the catalog row of orders");
    expect_text(th_sql_text(conn,
                            "SELECT string_agg(attname, ',' ORDER BY attnum) "
                            "FROM pg_attribute WHERE attrelid = 'sluice.inbox_orders'::regclass "
                            "AND attnum > 0 AND NOT attisdropped"),
                "seq,message_id,topic,key,payload,headers,received_at,status,attempts,"
                "next_attempt_at,lease_expires_at,claim_token,last_error,processed_at",
                "the columns of sluice.inbox_orders");
    th_sql(conn, "SELECT sluice.create_inbox('o2', max_attempts => 2, retry_backoff => '5 min', "
                 "lease => '1 min', retention => '0')");
    expect_text(th_sql_text(conn, "SELECT concat_ws('|', max_attempts, retry_backoff, lease, "
                                  "retention) FROM sluice.inboxes WHERE name = 'o2'"),
                "2|00:05:00|00:01:00|00:00:00", "create_inbox stores the arguments given");
    char name41[64], sql[256];
    memset(name41, 'a', 41);
    name41[41] = '\0';
    th_sql(conn, "SELECT sluice.create_inbox('%s')", name41);

    TH_LOG("create_inbox: invalid names");
    const char *bad[] = {"'Orders'", "'1abc'",          "''",
                         "NULL",     "'a-b'",           "'a b'",
                         "'_x'",     "repeat('a', 42)", "'x\"; DROP TABLE sluice.outbox; --'"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(sql, sizeof sql, "SELECT sluice.create_inbox(%s)", bad[i]);
        expect_error(conn, "22023", "sluice.create_inbox: invalid inbox name",
                     "1 to 41 characters from a-z, 0-9 and \"_\"", sql);
    }
    expect_error(conn, "22023", "sluice.create_inbox: invalid inbox name NULL", NULL,
                 "SELECT sluice.create_inbox(NULL)");
    expect_error(conn, "22023", "sluice.create_inbox: invalid inbox name 'Orders'", NULL,
                 "SELECT sluice.create_inbox('Orders')");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.outbox") >= 0,
              "sluice.outbox is still there");

    TH_LOG("create_inbox: duplicates and taken names");
    expect_error(conn, "42710", "sluice.create_inbox: inbox 'orders' already exists",
                 "sluice.drop_inbox()", "SELECT sluice.create_inbox('orders')");
    th_sql(conn, "CREATE TABLE sluice.inbox_taken (x int)");
    expect_error(conn, "42P07",
                 "sluice.create_inbox: relation sluice.inbox_taken already exists but is not an "
                 "inbox",
                 NULL, "SELECT sluice.create_inbox('taken')");
    th_sql(conn, "DROP TABLE sluice.inbox_taken");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.inboxes WHERE name = 'taken'") == 0,
              "the refused create left no catalog row");

    TH_LOG("create_inbox: bad arguments name the argument");
    expect_error(conn, "22023", "sluice.create_inbox: max_attempts must be at least 1, got 0", NULL,
                 "SELECT sluice.create_inbox('x', max_attempts => 0)");
    expect_error(conn, "22023", "max_attempts must be at least 1, got NULL", NULL,
                 "SELECT sluice.create_inbox('x', max_attempts => NULL)");
    expect_error(conn, "22023", "sluice.create_inbox: retry_backoff must be a positive interval",
                 "'30 seconds'", "SELECT sluice.create_inbox('x', retry_backoff => '0')");
    expect_error(conn, "22023", "retry_backoff must be a positive interval, got -00:00:01", NULL,
                 "SELECT sluice.create_inbox('x', retry_backoff => '-1 s')");
    expect_error(conn, "22023", "sluice.create_inbox: lease must be a positive interval, got NULL",
                 NULL, "SELECT sluice.create_inbox('x', lease => NULL)");
    expect_error(conn, "22023",
                 "sluice.create_inbox: retention must be a non-negative interval, got -1 days",
                 NULL, "SELECT sluice.create_inbox('x', retention => '-1 day')");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.inboxes WHERE name = 'x'") == 0 &&
                  th_sql_int(conn, "SELECT count(*) FROM pg_class WHERE relname = 'inbox_x'") == 0,
              "failed creates left neither a catalog row nor a table");

    TH_LOG("unknown inboxes");
    const char *calls[] = {
        "SELECT sluice.drop_inbox('nope')",
        "SELECT * FROM sluice.inbox_insert('nope', '[]')",
        "SELECT * FROM sluice.inbox_claim('nope', 1)",
        "SELECT sluice.inbox_ack('nope', 'm')",
        "SELECT sluice.inbox_fail('nope', 'm', 'e')",
        "SELECT sluice.inbox_replay('nope', '{m}')",
        "SELECT * FROM sluice.inbox_stats('nope')",
        "SELECT sluice.inbox_cleanup('nope')",
    };
    for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++)
        expect_error(conn, "42704", "inbox 'nope' does not exist", "sluice.create_inbox('nope')",
                     calls[i]);
    expect_error(conn, "42704", "sluice.inbox_claim: inbox 'nope' does not exist", NULL,
                 "SELECT * FROM sluice.inbox_claim('nope', 1)");
    expect_error(conn, "22023", "sluice.inbox_ack: invalid inbox name 'No'", NULL,
                 "SELECT sluice.inbox_ack('No', 'm')");
    expect_error(conn, "22023", "sluice.inbox_stats: invalid inbox name NULL", NULL,
                 "SELECT * FROM sluice.inbox_stats(NULL)");

    TH_LOG("drop_inbox: table and catalog row go; the name can be used again");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('o2', '[{\"message_id\": \"a\", "
                 "\"topic\": \"t\", \"payload\": 1}]')");
    th_sql(conn, "SELECT sluice.drop_inbox('o2')");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.inboxes WHERE name = 'o2'") == 0,
              "drop_inbox removed the catalog row");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM pg_class WHERE relname = 'inbox_o2'") == 0,
              "drop_inbox dropped the table");
    expect_error(conn, "42704", "sluice.drop_inbox: inbox 'o2' does not exist", NULL,
                 "SELECT sluice.drop_inbox('o2')");
    th_sql(conn, "SELECT sluice.create_inbox('o2')");
    TH_ASSERT(count_rows(conn, "o2", "true") == 0, "a re-created inbox starts empty");
    th_sql(conn, "SELECT sluice.drop_inbox('o2'); SELECT sluice.drop_inbox('%s')", name41);
}

/* ------------------------------------------------------------------------ */
/* 2. inbox_insert                                                           */
/* ------------------------------------------------------------------------ */

static void
check_insert(th_env_t *env, PGconn *conn)
{
    TH_LOG("inbox_insert: duplicates counted, never inserted twice");
    th_sql(conn, "SELECT sluice.create_inbox('ins')");
    const char *batch =
        "[{\"message_id\": \"i1\", \"topic\": \"orders\", \"key\": \"k1\", "
        "\"payload\": {\"n\": 1}, \"headers\": {\"trace\": \"x\"}},"
        " {\"message_id\": \"i2\", \"topic\": \"orders\", \"key\": null, \"payload\": null},"
        " {\"message_id\": \"i1\", \"topic\": \"orders\", \"key\": \"k1\", \"payload\": {\"n\": "
        "99}},"
        " {\"message_id\": \"i3\", \"topic\": \"other\", \"payload\": [1, 2], \"headers\": null}]";
    expect_text(insert_msgs(conn, "ins", batch), "3/1",
                "a batch with one repeated id: 3 inserted, 1 duplicate");
    expect_text(insert_msgs(conn, "ins", batch), "0/4",
                "the same batch redelivered: 0 inserted, 4 duplicates");
    expect_text(
        insert_msgs(conn, "ins", "{\"message_id\": \"i4\", \"topic\": \"orders\", \"payload\": 4}"),
        "1/0", "a single object is a batch of one");
    expect_text(insert_msgs(conn, "ins", "[]"), "0/0", "an empty array inserts nothing");
    expect_text(th_sql_text(conn, "SELECT string_agg(concat_ws('|', message_id, topic, "
                                  "coalesce(key, '-'), payload::text, headers::text, status, "
                                  "attempts), ';' ORDER BY seq) FROM sluice.inbox_ins"),
                "i1|orders|k1|{\"n\": 1}|{\"trace\": \"x\"}|pending|0;"
                "i2|orders|-|null|{}|pending|0;"
                "i3|other|-|[1, 2]|{}|pending|0;"
                "i4|orders|-|4|{}|pending|0",
                "stored in array order as given (the first copy of i1 wins); NULL headers are {}");

    TH_LOG("inbox_insert: a bad element fails the call and inserts nothing");
    struct {
        const char *json, *want;
    } bad[] = {
        {"\"x\"", "messages must be a JSON array of objects, got string (inbox ins)"},
        {"[{\"message_id\": \"ok1\", \"topic\": \"t\", \"payload\": 1}, 5]",
         "message 1 of the array is a JSON number, not an object (inbox ins)"},
        {"[{\"topic\": \"t\", \"payload\": 1}]",
         "message 0 of the array has no message_id (a non-empty string)"},
        {"[{\"message_id\": \"\", \"topic\": \"t\", \"payload\": 1}]",
         "message 0 of the array has no message_id"},
        {"[{\"message_id\": 7, \"topic\": \"t\", \"payload\": 1}]",
         "message 0 of the array has no message_id"},
        {"[{\"message_id\": \"b1\", \"payload\": 1}]",
         "message 0 of the array (message_id 'b1') has no topic (a string)"},
        {"[{\"message_id\": \"b1\", \"topic\": \"t\"}]",
         "message 0 of the array (message_id 'b1') has no payload"},
        {"[{\"message_id\": \"b1\", \"topic\": \"t\", \"paylod\": 1}]",
         "message 0 of the array has unknown field 'paylod'"},
        {"[{\"message_id\": \"b1\", \"topic\": \"t\", \"payload\": 1, \"key\": 5}]",
         "has a key that is a JSON number, not a string or null"},
        {"[{\"message_id\": \"b1\", \"topic\": \"t\", \"payload\": 1, \"headers\": []}]",
         "has headers that are a JSON array, not an object"},
    };
    char sql[1024];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(sql, sizeof sql, "SELECT * FROM sluice.inbox_insert('ins', '%s')", bad[i].json);
        expect_error(conn, "22023", bad[i].want, "nothing was inserted", sql);
    }
    expect_error(conn, "22004", "sluice.inbox_insert: messages is NULL (inbox ins)", NULL,
                 "SELECT * FROM sluice.inbox_insert('ins', NULL)");
    TH_ASSERT(count_rows(conn, "ins", "true") == 4, "the refused batches inserted nothing");

    TH_LOG("inbox_insert: two concurrent inserts of one id insert it once");
    PGconn *other = th_pg_connect(env->pg_url);
    th_sql(conn, "BEGIN");
    expect_text(
        insert_msgs(conn, "ins", "[{\"message_id\": \"race\", \"topic\": \"t\", \"payload\": 1}]"),
        "1/0", "the first transaction inserts race");
    TH_ASSERT(PQsendQuery(other, "SELECT inserted || '/' || duplicates FROM sluice.inbox_insert("
                                 "'ins', '[{\"message_id\": \"race\", \"topic\": \"t\", "
                                 "\"payload\": 2}]')") == 1,
              "the second insert is sent: %s", PQerrorMessage(other));
    /* The second insert waits for the first transaction's row lock. */
    th_sql(conn, "SELECT pg_sleep(0.2)");
    TH_ASSERT(PQconsumeInput(other) == 1 && PQisBusy(other) == 1,
              "the second insert waits for the first transaction");
    th_sql(conn, "COMMIT");
    PGresult *res = PQgetResult(other);
    TH_ASSERT(PQresultStatus(res) == PGRES_TUPLES_OK, "the second insert succeeds: %s",
              PQresultErrorMessage(res));
    TH_ASSERT(strcmp(PQgetvalue(res, 0, 0), "0/1") == 0,
              "after the first commits, the second counts race as a duplicate (got %s)",
              PQgetvalue(res, 0, 0));
    PQclear(res);
    while ((res = PQgetResult(other)) != NULL)
        PQclear(res);
    PQfinish(other);
    expect_text(th_sql_text(conn, "SELECT payload::text FROM sluice.inbox_ins "
                                  "WHERE message_id = 'race'"),
                "1", "race holds the first insert's payload");
    th_sql(conn, "SELECT sluice.drop_inbox('ins')");
}

/* ------------------------------------------------------------------------ */
/* 3. Concurrent claimers                                                    */
/* ------------------------------------------------------------------------ */

/* Collects the one result of the query sent on c; returns it (caller clears). */
static PGresult *
collect(PGconn *c, const char *what)
{
    PGresult *res = PQgetResult(c);
    TH_ASSERT(res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK, "%s succeeds: %s", what,
              res ? PQresultErrorMessage(res) : PQerrorMessage(c));
    PGresult *extra;
    while ((extra = PQgetResult(c)) != NULL)
        PQclear(extra);
    return res;
}

static void
check_claimers(th_env_t *env, PGconn *conn)
{
    th_sql(conn, "SELECT sluice.create_inbox('conc')");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('conc', (SELECT jsonb_agg(jsonb_build_object("
                 "'message_id', 'c' || i, 'topic', 't', 'payload', i) ORDER BY i) "
                 "FROM generate_series(1, 20) i))");
    PGconn *a = th_pg_connect(env->pg_url);
    PGconn *b = th_pg_connect(env->pg_url);

    TH_LOG("a claim in an open transaction does not block another claimer (SKIP LOCKED)");
    th_sql(a, "BEGIN");
    expect_text(claim_ids(a, "conc", 5, NULL), "c1,c2,c3,c4,c5",
                "the first claimer gets the five oldest messages");
    th_sql(b, "SET statement_timeout = '10s'");
    expect_text(claim_ids(b, "conc", 5, NULL), "c6,c7,c8,c9,c10",
                "the second claimer, while the first has not committed, gets the next five "
                "without waiting");
    th_sql(b, "RESET statement_timeout");
    th_sql(a, "ROLLBACK");
    expect_text(claim_ids(b, "conc", 5, NULL), "c1,c2,c3,c4,c5",
                "after the first claimer rolls back, its messages are claimable again");
    TH_ASSERT(
        count_rows(conn, "conc", "message_id IN ('c1','c2','c3','c4','c5') AND attempts = 1") == 5,
        "a rolled-back claim did not count as an attempt");
    th_sql(conn, "SELECT sluice.drop_inbox('conc')");
    PQfinish(a);
    PQfinish(b);

    TH_LOG("%d connections claim and ack %d messages concurrently", CONC_CLAIMERS, CONC_MESSAGES);
    th_sql(conn, "SELECT sluice.create_inbox('conc')");
    th_sql(
        conn,
        "SELECT * FROM sluice.inbox_insert('conc', (SELECT jsonb_agg(jsonb_build_object("
        "'message_id', 'm' || i, 'topic', 't', 'key', 'k' || (i %% 7), 'payload', i) ORDER BY i) "
        "FROM generate_series(1, %d) i))",
        CONC_MESSAGES);
    PGconn *c[CONC_CLAIMERS];
    for (int i = 0; i < CONC_CLAIMERS; i++)
        c[i] = th_pg_connect(env->pg_url);
    int handed[CONC_MESSAGES + 1] = {0};
    int per_claimer[CONC_CLAIMERS] = {0};
    int rounds = 0;
    int64_t deadline = th_now_ms() + RUN_MS;
    for (;;) {
        TH_ASSERT(th_now_ms() < deadline, "the claimers finish within %d ms", RUN_MS);
        rounds++;
        for (int i = 0; i < CONC_CLAIMERS; i++)
            TH_ASSERT(PQsendQuery(c[i], "SELECT message_id, claim_token "
                                        "FROM sluice.inbox_claim('conc', 7)") == 1,
                      "claim %d is sent: %s", i, PQerrorMessage(c[i]));
        int claimed = 0;
        char *acks[CONC_CLAIMERS];
        for (int i = 0; i < CONC_CLAIMERS; i++) {
            PGresult *res = collect(c[i], "a concurrent claim");
            size_t cap = 256 + (size_t)PQntuples(res) * 128;
            acks[i] = malloc(cap);
            TH_ASSERT(acks[i] != NULL, "memory");
            size_t len = (size_t)snprintf(acks[i], cap,
                                          "SELECT count(sluice.inbox_ack('conc', m, "
                                          "t::uuid)) FROM (VALUES ('-', NULL)");
            for (int r = 0; r < PQntuples(res); r++) {
                const char *id = PQgetvalue(res, r, 0);
                int n = atoi(id + 1);
                TH_ASSERT(id[0] == 'm' && n >= 1 && n <= CONC_MESSAGES, "a known id: %s", id);
                handed[n]++;
                TH_ASSERT(handed[n] == 1, "message %s was handed out twice", id);
                len += (size_t)snprintf(acks[i] + len, cap - len, ", ('%s', '%s')", id,
                                        PQgetvalue(res, r, 1));
            }
            snprintf(acks[i] + len, cap - len, ") v(m, t) WHERE m <> '-'");
            claimed += PQntuples(res);
            per_claimer[i] += PQntuples(res);
            PQclear(res);
        }
        for (int i = 0; i < CONC_CLAIMERS; i++)
            TH_ASSERT(PQsendQuery(c[i], acks[i]) == 1, "acks %d are sent: %s", i,
                      PQerrorMessage(c[i]));
        for (int i = 0; i < CONC_CLAIMERS; i++) {
            PQclear(collect(c[i], "concurrent acks"));
            free(acks[i]);
        }
        if (claimed == 0)
            break;
    }
    for (int n = 1; n <= CONC_MESSAGES; n++)
        TH_ASSERT(handed[n] == 1, "message m%d was handed out once (got %d)", n, handed[n]);
    for (int i = 0; i < CONC_CLAIMERS; i++)
        TH_ASSERT(per_claimer[i] > 0, "claimer %d got messages too (%d)", i, per_claimer[i]);
    TH_LOG("%d rounds; per claimer: %d, %d, %d", rounds, per_claimer[0], per_claimer[1],
           per_claimer[2]);
    TH_ASSERT(count_rows(conn, "conc", "status = 'done' AND attempts = 1") == CONC_MESSAGES,
              "every message is done after exactly one attempt");
    for (int i = 0; i < CONC_CLAIMERS; i++)
        PQfinish(c[i]);
    th_sql(conn, "SELECT sluice.drop_inbox('conc')");
}

/* ------------------------------------------------------------------------ */
/* 4. fail, backoff, dead letters, replay                                    */
/* ------------------------------------------------------------------------ */

/* Makes message `id` due now (the test stands in for the passing of time). */
static void
make_due(PGconn *conn, const char *inbox, const char *id)
{
    th_sql(conn,
           "UPDATE sluice.inbox_%s SET next_attempt_at = now() - interval '1 ms' "
           "WHERE message_id = '%s'",
           inbox, id);
}

/* Asserts that id's next attempt is `hours` hours after the fail (within 1 minute). */
static void
expect_backoff_at(int line, PGconn *conn, const char *id, int hours)
{
    long long ok = th_sql_int(conn,
                              "SELECT count(*) FROM sluice.inbox_retry WHERE message_id = '%s' "
                              "AND status = 'pending' AND next_attempt_at <= clock_timestamp() + "
                              "interval '%d hours' AND next_attempt_at > clock_timestamp() + "
                              "interval '%d hours' - interval '1 minute'",
                              id, hours, hours);
    if (ok != 1)
        th_fail_at(__FILE__, line, NULL, "%s is pending, due in %d hour(s): %s", id, hours,
                   th_sql_text(conn,
                               "SELECT status || ' ' || (next_attempt_at - clock_timestamp())"
                               " FROM sluice.inbox_retry WHERE message_id = '%s'",
                               id));
}
#define expect_backoff(conn, id, hours) expect_backoff_at(__LINE__, (conn), (id), (hours))

static void
check_fail_dead_replay(PGconn *conn)
{
    TH_LOG("inbox_fail: exponential backoff, dead after max_attempts");
    th_sql(conn,
           "SELECT sluice.create_inbox('retry', max_attempts => 3, retry_backoff => '1 hour')");
    expect_text(insert_msgs(conn, "retry",
                            "[{\"message_id\": \"r1\", \"topic\": \"t\", \"payload\": 1},"
                            " {\"message_id\": \"r2\", \"topic\": \"t\", \"payload\": 2}]"),
                "2/0", "two messages");
    expect_text(th_sql_text(conn, "SELECT string_agg(message_id || ':' || attempts, ',') "
                                  "FROM sluice.inbox_claim('retry', 1)"),
                "r1:1", "the first claim is attempt 1");
    expect_text(th_sql_text(conn, "SELECT sluice.inbox_fail('retry', 'r1', 'error one')"),
                "pending", "the first failure leaves r1 pending");
    expect_backoff(conn, "r1", 1);
    expect_text(th_sql_text(conn,
                            "SELECT last_error || '|' || (lease_expires_at IS NULL) || '|' || "
                            "(claim_token IS NULL) FROM sluice.inbox_retry "
                            "WHERE message_id = 'r1'"),
                "error one|true|true", "the failure is recorded and the lease released");
    expect_text(claim_ids(conn, "retry", 10, NULL), "r2", "r1 is not due: only r2 is claimed");
    th_sql(conn, "SELECT sluice.inbox_ack('retry', 'r2')");
    expect_text(claim_ids(conn, "retry", 10, NULL), "", "nothing is due");
    expect_error(conn, "55000",
                 "sluice.inbox_fail: message 'r1' of inbox retry is not claimed (status pending)",
                 "sluice.inbox_claim()", "SELECT sluice.inbox_fail('retry', 'r1', 'x')");

    make_due(conn, "retry", "r1");
    expect_text(th_sql_text(conn, "SELECT string_agg(message_id || ':' || attempts, ',') "
                                  "FROM sluice.inbox_claim('retry', 10)"),
                "r1:2", "once due, r1 is claimed again: attempt 2");
    expect_text(th_sql_text(conn, "SELECT sluice.inbox_fail('retry', 'r1', 'error two')"),
                "pending", "the second failure leaves r1 pending");
    expect_backoff(conn, "r1", 2);
    make_due(conn, "retry", "r1");
    expect_text(claim_ids(conn, "retry", 10, NULL), "r1", "attempt 3");
    expect_text(th_sql_text(conn, "SELECT sluice.inbox_fail('retry', 'r1', 'error three')"), "dead",
                "the failure of attempt max_attempts (3) makes r1 dead");
    expect_text(th_sql_text(conn, "SELECT concat_ws('|', status, attempts, last_error, "
                                  "processed_at IS NOT NULL, lease_expires_at IS NULL) "
                                  "FROM sluice.inbox_retry WHERE message_id = 'r1'"),
                "dead|3|error three|t|t", "the dead letter keeps its attempts and error");
    make_due(conn, "retry", "r1");
    expect_text(claim_ids(conn, "retry", 10, NULL), "", "a dead message is never claimed");
    expect_error(conn, "55000",
                 "sluice.inbox_ack: message 'r1' of inbox retry is dead (attempts: 3)",
                 "sluice.inbox_replay()", "SELECT sluice.inbox_ack('retry', 'r1')");
    expect_error(conn, "55000", "sluice.inbox_fail: message 'r1' of inbox retry is dead", NULL,
                 "SELECT sluice.inbox_fail('retry', 'r1', 'again')");

    TH_LOG("inbox_fail: argument errors");
    expect_error(conn, "22004", "sluice.inbox_fail: error is NULL (inbox retry, message 'r1')",
                 NULL, "SELECT sluice.inbox_fail('retry', 'r1', NULL)");
    expect_error(conn, "22004", "sluice.inbox_ack: message_id is NULL (inbox retry)", NULL,
                 "SELECT sluice.inbox_ack('retry', NULL)");
    expect_error(conn, "P0002", "sluice.inbox_ack: inbox retry has no message 'zz'", NULL,
                 "SELECT sluice.inbox_ack('retry', 'zz')");
    expect_error(conn, "55000", "sluice.inbox_ack: message 'r2' of inbox retry is already done",
                 NULL, "SELECT sluice.inbox_ack('retry', 'r2')");

    TH_LOG("inbox_replay: dead and done come back with attempts reset");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('retry', '[{\"message_id\": \"r3\", "
                 "\"topic\": \"t\", \"payload\": 3}]')");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_replay('retry', '{r1, r3, unknown}')") == 1,
              "replay of a dead, a pending and an unknown id replays only the dead one");
    expect_text(th_sql_text(conn, "SELECT concat_ws('|', status, attempts, processed_at IS NULL, "
                                  "next_attempt_at <= clock_timestamp(), last_error) "
                                  "FROM sluice.inbox_retry WHERE message_id = 'r1'"),
                "pending|0|t|t|error three",
                "a replayed message is pending, due now, attempts 0, last error kept");
    expect_text(th_sql_text(conn, "SELECT string_agg(message_id || ':' || attempts, ',') "
                                  "FROM sluice.inbox_claim('retry', 10)"),
                "r1:1,r3:1", "the replayed message is claimed again as attempt 1");
    th_sql(conn, "SELECT sluice.inbox_ack('retry', 'r1'); SELECT sluice.inbox_ack('retry', 'r3')");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_replay('retry', '{r2}')") == 1,
              "a done message can be replayed too");
    expect_text(claim_ids(conn, "retry", 10, NULL), "r2", "the replayed done message is claimable");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_replay('retry', '{r2}')") == 0,
              "a processing message is not replayed");
    th_sql(conn, "SELECT sluice.inbox_ack('retry', 'r2')");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_replay('retry', '{}')") == 0,
              "an empty array replays nothing");
    expect_error(conn, "22004", "sluice.inbox_replay: message_ids is NULL (inbox retry)",
                 "status = 'dead'", "SELECT sluice.inbox_replay('retry', NULL)");

    TH_LOG("max_attempts 1: the first failure is final");
    th_sql(conn, "SELECT sluice.create_inbox('once', max_attempts => 1)");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('once', '[{\"message_id\": \"o1\", "
                 "\"topic\": \"t\", \"payload\": 1}]')");
    expect_text(claim_ids(conn, "once", 1, NULL), "o1", "o1 is claimed");
    expect_text(th_sql_text(conn, "SELECT sluice.inbox_fail('once', 'o1', 'no retry')"), "dead",
                "with max_attempts 1 a failure is final");
    th_sql(conn, "SELECT sluice.drop_inbox('once'); SELECT sluice.drop_inbox('retry')");
}

/* ------------------------------------------------------------------------ */
/* 5. Leases                                                                 */
/* ------------------------------------------------------------------------ */

struct lease_wait {
    PGconn *conn;
    const char *inbox;
    const char *id;
};

static bool
lease_expired(void *arg)
{
    struct lease_wait *w = arg;
    return count_rows(w->conn, w->inbox,
                      "status = 'processing' AND lease_expires_at <= "
                      "clock_timestamp()") > 0;
}

static void
wait_lease_expiry(PGconn *conn, const char *inbox)
{
    struct lease_wait w = {conn, inbox, NULL};
    TH_ASSERT(th_wait_until(lease_expired, &w, WAIT_MS, 20), "the lease expires");
}

static void
check_leases(th_env_t *env, PGconn *conn)
{
    TH_LOG("a lease that expires: the late ack is refused and rolls back the work");
    th_sql(conn, "SELECT sluice.create_inbox('lease_t', max_attempts => 3)");
    th_sql(conn, "CREATE TABLE t0011_effects (message_id text)");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('lease_t', '[{\"message_id\": \"l1\", "
                 "\"topic\": \"t\", \"payload\": 1}]')");
    PGconn *old = th_pg_connect(env->pg_url);
    char *tok1 = th_sql_text(old, "SELECT claim_token FROM sluice.inbox_claim('lease_t', 1, "
                                  "lease => '300 milliseconds')");
    TH_ASSERT(tok1 != NULL, "the old claimer gets l1 with a token");
    TH_ASSERT(count_rows(conn, "lease_t",
                         "lease_expires_at <= clock_timestamp() + "
                         "interval '300 milliseconds' AND status = "
                         "'processing'") == 1,
              "the lease given to inbox_claim applies");
    wait_lease_expiry(conn, "lease_t");
    expect_text(stats_of(conn, "lease_t"), "0,0,1,1,0,0,1",
                "stats: one processing message, its lease expired");

    th_sql(old, "BEGIN; INSERT INTO t0011_effects VALUES ('l1')");
    expect_error(old, "55000",
                 "sluice.inbox_ack: the lease on message 'l1' of inbox lease_t "
                 "expired at ",
                 "roll back the work done for this claim",
                 "SELECT sluice.inbox_ack('lease_t', 'l1')");
    th_sql(old, "ROLLBACK");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM t0011_effects") == 0,
              "the work done in the late ack's transaction is rolled back with it");
    char sql[512];
    snprintf(sql, sizeof sql, "SELECT sluice.inbox_ack('lease_t', 'l1', '%s')", tok1);
    expect_error(old, "55000", "the lease on message 'l1' of inbox lease_t expired at", NULL, sql);
    snprintf(sql, sizeof sql, "SELECT sluice.inbox_fail('lease_t', 'l1', 'late', '%s')", tok1);
    expect_error(old, "55000",
                 "sluice.inbox_fail: the lease on message 'l1' of inbox lease_t "
                 "expired at",
                 NULL, sql);

    TH_LOG("the expired message is claimed again; the old claimer's token is refused");
    PGconn *fresh = th_pg_connect(env->pg_url);
    char *row = th_sql_text(fresh, "SELECT message_id || '|' || attempts || '|' || claim_token "
                                   "FROM sluice.inbox_claim('lease_t', 5)");
    TH_ASSERT(row != NULL && strncmp(row, "l1|2|", 5) == 0,
              "a new claimer gets l1 as attempt 2, got %s", row ? row : "NULL");
    const char *tok2 = row + 5;
    TH_ASSERT(strcmp(tok1, tok2) != 0, "the new claim has a new token");
    expect_text(th_sql_text(conn, "SELECT (last_error LIKE 'lease expired at %% (attempt 1 of 3)')"
                                  "::text FROM sluice.inbox_lease_t WHERE message_id = 'l1'"),
                "true", "the expiry is recorded in last_error");
    snprintf(sql, sizeof sql, "SELECT sluice.inbox_ack('lease_t', 'l1', '%s')", tok1);
    expect_error(old, "55000",
                 "sluice.inbox_ack: message 'l1' of inbox lease_t was claimed again after your "
                 "lease expired (the claim token does not match)",
                 "before its lease expires", sql);
    snprintf(sql, sizeof sql, "SELECT sluice.inbox_fail('lease_t', 'l1', 'late', '%s')", tok1);
    expect_error(old, "55000", "sluice.inbox_fail: message 'l1' of inbox lease_t was claimed again",
                 NULL, sql);
    expect_error(old, "55000", "was claimed again", NULL,
                 "SELECT sluice.inbox_ack('lease_t', 'l1', gen_random_uuid())");
    th_sql(fresh, "BEGIN; INSERT INTO t0011_effects VALUES ('l1')");
    th_sql(fresh, "SELECT sluice.inbox_ack('lease_t', 'l1', '%s')", tok2);
    th_sql(fresh, "COMMIT");
    expect_text(th_sql_text(conn, "SELECT concat_ws('|', status, attempts, claim_token IS NULL) "
                                  "FROM sluice.inbox_lease_t WHERE message_id = 'l1'"),
                "done|2|t", "the new claimer's ack makes l1 done");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM t0011_effects") == 1,
              "the message's work was committed once");
    snprintf(sql, sizeof sql, "SELECT sluice.inbox_ack('lease_t', 'l1', '%s')", tok1);
    expect_error(old, "55000", "message 'l1' of inbox lease_t is already done", NULL, sql);
    free(row);
    free(tok1);

    PQfinish(old);
    PQfinish(fresh);

    TH_LOG("a message whose leases keep expiring is dead after max_attempts claims");
    th_sql(conn, "SELECT sluice.create_inbox('crash', max_attempts => 2)");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('crash', '[{\"message_id\": \"x1\", "
                 "\"topic\": \"t\", \"payload\": 1}]')");
    for (int attempt = 1; attempt <= 2; attempt++) {
        expect_text(claim_ids(conn, "crash", 1, ", lease => '100 ms'"), "x1",
                    "x1 is claimed (its claimer then crashes)");
        wait_lease_expiry(conn, "crash");
    }
    expect_text(claim_ids(conn, "crash", 1, NULL), "",
                "after max_attempts (2) expired leases, x1 is not claimed again");
    expect_text(th_sql_text(conn, "SELECT status || '|' || attempts || '|' || "
                                  "(last_error LIKE 'lease expired at %% (attempt 2 of 2)') "
                                  "FROM sluice.inbox_crash"),
                "dead|2|true", "x1 is dead, and last_error says why");
    expect_error(conn, "55000", "sluice.inbox_ack: message 'x1' of inbox crash is dead", NULL,
                 "SELECT sluice.inbox_ack('crash', 'x1')");
    th_sql(conn, "SELECT sluice.drop_inbox('crash'); SELECT sluice.drop_inbox('lease_t')");
    th_sql(conn, "DROP TABLE t0011_effects");
}

/* ------------------------------------------------------------------------ */
/* 6. one_per_key                                                            */
/* ------------------------------------------------------------------------ */

static void
check_one_per_key(PGconn *conn)
{
    TH_LOG("one_per_key: one message per key in flight, in received order");
    th_sql(conn, "SELECT sluice.create_inbox('keyed', retry_backoff => '1 hour')");
    expect_text(
        insert_msgs(conn, "keyed",
                    "[{\"message_id\": \"a1\", \"topic\": \"t\", \"key\": \"a\", \"payload\": 1},"
                    " {\"message_id\": \"a2\", \"topic\": \"t\", \"key\": \"a\", \"payload\": 2},"
                    " {\"message_id\": \"b1\", \"topic\": \"t\", \"key\": \"b\", \"payload\": 3},"
                    " {\"message_id\": \"a3\", \"topic\": \"t\", \"key\": \"a\", \"payload\": 4},"
                    " {\"message_id\": \"n1\", \"topic\": \"t\", \"key\": null, \"payload\": 5},"
                    " {\"message_id\": \"n2\", \"topic\": \"t\", \"payload\": 6},"
                    " {\"message_id\": \"b2\", \"topic\": \"t\", \"key\": \"b\", \"payload\": 7}]"),
        "7/0", "seven messages, keys a, b and none");
    const char *opk = ", one_per_key => true";
    expect_text(claim_ids(conn, "keyed", 2, opk), "a1,b1", "a batch of 2: the oldest of a and b");
    expect_text(claim_ids(conn, "keyed", 10, opk), "n1,n2",
                "then only the keyless messages: a2 and b2 wait for a1 and b1");
    expect_text(claim_ids(conn, "keyed", 10, opk), "",
                "nothing more while a1 and b1 are in flight");
    th_sql(conn, "SELECT sluice.inbox_ack('keyed', 'a1')");
    expect_text(claim_ids(conn, "keyed", 10, opk), "a2", "a1 done: a2 is next, a3 still waits");
    expect_text(th_sql_text(conn, "SELECT sluice.inbox_fail('keyed', 'a2', 'later')"), "pending",
                "a2 fails (retry in an hour)");
    expect_text(claim_ids(conn, "keyed", 10, opk), "",
                "a3 waits behind the failed a2, which is not due yet");
    expect_text(claim_ids(conn, "keyed", 10, NULL), "a3,b2",
                "(without one_per_key the order is not kept: a3 and b2 are claimable)");
    th_sql(conn, "SELECT sluice.inbox_fail('keyed', 'a3', 'x'); "
                 "SELECT sluice.inbox_fail('keyed', 'b2', 'x')");
    th_sql(conn, "UPDATE sluice.inbox_keyed SET next_attempt_at = now() - interval '1 ms' "
                 "WHERE message_id IN ('a3', 'b2')");
    expect_text(claim_ids(conn, "keyed", 10, opk), "",
                "a3 still waits for a2; b2 still waits for b1");
    th_sql(conn, "SELECT sluice.inbox_ack('keyed', 'b1')");
    expect_text(claim_ids(conn, "keyed", 10, opk), "b2", "b1 done: b2 is next");
    make_due(conn, "keyed", "a2");
    expect_text(claim_ids(conn, "keyed", 10, opk), "a2", "a2 due again: it goes before a3");
    th_sql(conn, "UPDATE sluice.inbox_keyed SET status = 'dead' WHERE message_id = 'a2'");
    expect_text(claim_ids(conn, "keyed", 10, opk), "a3",
                "a dead message no longer holds its key back");
    th_sql(conn, "SELECT sluice.drop_inbox('keyed')");
}

static void
check_ack_batch(PGconn *conn)
{
    TH_LOG("inbox_ack_batch: many acks in one statement, all or nothing");
    th_sql(conn, "SELECT sluice.create_inbox('batched')");
    expect_text(insert_msgs(conn, "batched",
                            "[{\"message_id\": \"x1\", \"topic\": \"t\", \"payload\": 1},"
                            " {\"message_id\": \"x2\", \"topic\": \"t\", \"payload\": 2},"
                            " {\"message_id\": \"x3\", \"topic\": \"t\", \"payload\": 3},"
                            " {\"message_id\": \"x4\", \"topic\": \"t\", \"payload\": 4}]"),
                "4/0", "four messages");
    th_sql(conn, "CREATE TEMP TABLE claimed AS SELECT * FROM sluice.inbox_claim('batched', 3)");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM claimed") == 3, "three are claimed");
    expect_error(conn, "55000", "is not claimed", NULL,
                 "SELECT sluice.inbox_ack_batch('batched', "
                 "(SELECT array_agg(message_id ORDER BY message_id) FROM claimed) || 'x4'::text)");
    TH_ASSERT(count_rows(conn, "batched", "status = 'done'") == 0,
              "a batch with one unclaimed message acknowledges none of them");
    expect_error(conn, "55000", "claim token does not match", NULL,
                 "SELECT sluice.inbox_ack_batch('batched', ARRAY['x1'], ARRAY[gen_random_uuid()])");
    expect_error(conn, "22023", "2 message_ids but 1 claim_tokens", NULL,
                 "SELECT sluice.inbox_ack_batch('batched', ARRAY['x1', 'x2'], "
                 "ARRAY[gen_random_uuid()])");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_ack_batch('batched', "
                               "(SELECT array_agg(message_id) FROM claimed), "
                               "(SELECT array_agg(claim_token) FROM claimed))") == 3,
              "the claimed batch is acknowledged at once with its tokens");
    TH_ASSERT(count_rows(conn, "batched", "status = 'done'") == 3 &&
                  count_rows(conn, "batched", "status = 'pending'") == 1,
              "three done, the unclaimed one still pending");
    expect_error(conn, "55000", "already done", NULL,
                 "SELECT sluice.inbox_ack_batch('batched', ARRAY['x1'])");
    th_sql(conn, "DROP TABLE claimed");
    th_sql(conn, "SELECT sluice.drop_inbox('batched')");
}

/* ------------------------------------------------------------------------ */
/* 7. stats and cleanup                                                      */
/* ------------------------------------------------------------------------ */

static void
check_stats_cleanup(PGconn *conn)
{
    TH_LOG("inbox_stats");
    th_sql(conn, "SELECT sluice.create_inbox('st', max_attempts => 1, retry_backoff => '1 hour')");
    expect_text(stats_of(conn, "st"), "0,0,0,0,0,0,0", "an empty inbox");
    expect_text(th_sql_text(conn, "SELECT coalesce(oldest_pending_age::text, 'NULL') "
                                  "FROM sluice.inbox_stats('st')"),
                "NULL", "no pending message: no oldest age");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('st', (SELECT jsonb_agg(jsonb_build_object("
                 "'message_id', 's' || i, 'topic', 't', 'payload', i) ORDER BY i) "
                 "FROM generate_series(1, 8) i))");
    th_sql(conn, "UPDATE sluice.inbox_st SET received_at = now() - interval '1 hour' "
                 "WHERE message_id = 's1'");
    expect_text(claim_ids(conn, "st", 5, NULL), "s1,s2,s3,s4,s5", "five claimed");
    th_sql(conn, "SELECT sluice.inbox_ack('st', 's1'); SELECT sluice.inbox_ack('st', 's2'); "
                 "SELECT sluice.inbox_ack('st', 's3'); SELECT sluice.inbox_fail('st', 's4', 'e')");
    th_sql(conn, "UPDATE sluice.inbox_st SET next_attempt_at = now() + interval '1 hour' "
                 "WHERE message_id = 's8'");
    expect_text(stats_of(conn, "st"), "3,2,1,0,3,1,8",
                "pending 3 (2 due), processing 1, done 3, dead 1, total 8");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.inbox_stats('st') "
                         "WHERE oldest_pending_age BETWEEN interval '0' AND interval '1 minute'") ==
                  1,
              "oldest_pending_age is the age of the oldest pending message (s6, just received)");
    th_sql(conn, "UPDATE sluice.inbox_st SET received_at = now() - interval '2 hours' "
                 "WHERE message_id = 's7'");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.inbox_stats('st') "
                               "WHERE oldest_pending_age >= interval '2 hours'") == 1,
              "oldest_pending_age follows the oldest pending message (s7, 2 hours)");

    TH_LOG("inbox_cleanup: done messages older than the retention, at most max_rows");
    th_sql(conn, "UPDATE sluice.inbox_st SET processed_at = now() - interval '8 days' "
                 "WHERE message_id IN ('s1', 's2', 's4')");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_cleanup('st', max_rows => 1)") == 1,
              "max_rows 1 deletes one row");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_cleanup('st')") == 1,
              "the default retention (7 days) deletes the other 8-day-old done message");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_cleanup('st')") == 0, "then nothing more");
    TH_ASSERT(count_rows(conn, "st", "message_id = 's4' AND status = 'dead'") == 1,
              "the 8-day-old dead message is kept");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_cleanup('st', older_than => '1 hour')") == 0,
              "the recent done message (s3) is younger than 1 hour");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_cleanup('st', older_than => '0')") == 1,
              "older_than 0 deletes every done message");
    expect_text(stats_of(conn, "st"), "3,2,1,0,0,1,5", "pending, processing and dead remain");
    expect_text(insert_msgs(conn, "st",
                            "[{\"message_id\": \"s1\", \"topic\": \"t\", \"payload\": 1},"
                            " {\"message_id\": \"s4\", \"topic\": \"t\", \"payload\": 4}]"),
                "1/1",
                "after cleanup, a cleaned id inserts again (s1); a kept one is a duplicate (s4)");
    expect_error(conn, "22023",
                 "sluice.inbox_cleanup: older_than must be a non-negative interval, got -1 days",
                 NULL, "SELECT sluice.inbox_cleanup('st', '-1 day')");
    expect_error(conn, "22023",
                 "sluice.inbox_cleanup: max_rows must be at least 1, got 0 (inbox st)", NULL,
                 "SELECT sluice.inbox_cleanup('st', NULL, 0)");

    TH_LOG("inbox_claim: argument errors");
    expect_error(conn, "22023",
                 "sluice.inbox_claim: batch_size must be at least 1, got 0 (inbox st)", NULL,
                 "SELECT * FROM sluice.inbox_claim('st', 0)");
    expect_error(conn, "22023", "batch_size must be at least 1, got NULL", NULL,
                 "SELECT * FROM sluice.inbox_claim('st', NULL)");
    expect_error(conn, "22023",
                 "sluice.inbox_claim: lease must be a positive interval, got -00:00:01", NULL,
                 "SELECT * FROM sluice.inbox_claim('st', 1, '-1 s')");

    TH_LOG("retention given to create_inbox is the default of inbox_cleanup");
    th_sql(conn, "SELECT sluice.create_inbox('st2', retention => '1 hour')");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('st2', '[{\"message_id\": \"q\", "
                 "\"topic\": \"t\", \"payload\": 1}]')");
    expect_text(claim_ids(conn, "st2", 1, NULL), "q", "q is claimed");
    th_sql(conn, "SELECT sluice.inbox_ack('st2', 'q')");
    th_sql(conn, "UPDATE sluice.inbox_st2 SET processed_at = now() - interval '2 hours'");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.inbox_cleanup('st2')") == 1,
              "a 2-hour-old done message goes with a 1-hour retention");

    TH_LOG("settings changed in sluice.inboxes apply to the next call");
    th_sql(conn, "UPDATE sluice.inboxes SET lease = '2 hours', max_attempts = 1 "
                 "WHERE name = 'st2'");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('st2', '[{\"message_id\": \"q2\", "
                 "\"topic\": \"t\", \"payload\": 2}]')");
    TH_ASSERT(th_sql_int(
                  conn, "SELECT count(*) FROM sluice.inbox_claim('st2', 1) "
                        "WHERE lease_expires_at > clock_timestamp() + interval '119 minutes'") == 1,
              "the new default lease (2 hours) applies");
    expect_text(th_sql_text(conn, "SELECT sluice.inbox_fail('st2', 'q2', 'e')"), "dead",
                "the new max_attempts (1) applies");
    char err[512];
    TH_ASSERT(th_sql_try(conn, err, sizeof err,
                         "UPDATE sluice.inboxes SET max_attempts = 0 WHERE name = 'st2'") == -1 &&
                  strstr(err, "inboxes_max_attempts_check") != NULL,
              "the catalog's checks refuse a bad setting: %s", err);
    th_sql(conn, "SELECT sluice.drop_inbox('st'); SELECT sluice.drop_inbox('st2')");
}

/* ------------------------------------------------------------------------ */
/* 8. Permissions                                                            */
/* ------------------------------------------------------------------------ */

static void
check_permissions(th_env_t *env, PGconn *conn)
{
    TH_LOG("permissions: EXECUTE revoked from PUBLIC; granted functions work without table rights");
    th_sql(conn, "SELECT sluice.create_inbox('perm')");
    th_sql(conn, "SELECT * FROM sluice.inbox_insert('perm', '[{\"message_id\": \"p1\", "
                 "\"topic\": \"t\", \"payload\": 1}]')");
    th_sql(conn, "CREATE ROLE t0011_worker LOGIN; GRANT USAGE ON SCHEMA sluice TO t0011_worker");
    char url[600];
    snprintf(url, sizeof url, "host=127.0.0.1 port=%d dbname=postgres user=t0011_worker",
             env->pg_port);
    PGconn *w = th_pg_connect(url);
    expect_error(w, "42501", "permission denied for function inbox_claim", NULL,
                 "SELECT * FROM sluice.inbox_claim('perm', 1)");
    expect_error(w, "42501", "permission denied for function create_inbox", NULL,
                 "SELECT sluice.create_inbox('mine')");
    th_sql(conn, "GRANT EXECUTE ON FUNCTION sluice.inbox_claim(text, int, interval, boolean), "
                 "sluice.inbox_ack(text, text, uuid) TO t0011_worker");
    char *tok = th_sql_text(w, "SELECT claim_token FROM sluice.inbox_claim('perm', 1)");
    TH_ASSERT(tok != NULL, "with EXECUTE granted, the worker claims p1");
    th_sql(w, "SELECT sluice.inbox_ack('perm', 'p1', '%s')", tok);
    free(tok);
    expect_error(w, "42501", "permission denied for table inbox_perm", NULL,
                 "SELECT * FROM sluice.inbox_perm");
    expect_error(w, "42501", "permission denied for function inbox_insert", NULL,
                 "SELECT * FROM sluice.inbox_insert('perm', '[]')");
    PQfinish(w);
    TH_ASSERT(count_rows(conn, "perm", "status = 'done'") == 1, "the worker's ack took effect");
    th_sql(conn, "SELECT sluice.drop_inbox('perm')");
}

/* ------------------------------------------------------------------------ */

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    TH_ASSERT(th_run(init, NULL, RUN_MS) == 0, "sluice init succeeds");
    PGconn *conn = th_pg_connect(env.pg_url);

    check_create_drop(conn);
    check_insert(&env, conn);
    check_claimers(&env, conn);
    check_fail_dead_replay(conn);
    check_leases(&env, conn);
    check_one_per_key(conn);
    check_ack_batch(conn);
    check_stats_cleanup(conn);
    check_permissions(&env, conn);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.inboxes") == 1,
              "only the inbox orders is left");

    PQfinish(conn);
    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
