/*
 * tests/integration/0018_engine.c - `sluice engine` keeps stream tables
 * current on their own.
 *
 *   1. Stream tables: an aggregate and a join (analysed as differential), a
 *      LIMIT query and a LIMIT inside a subquery in FROM (both FULL from
 *      creation, with the reason), a LEFT JOIN whose ON compares with a
 *      cast (FULL from creation too since migration 17; its decision is
 *      cleared, as an older catalog holds it, and the engine analyses it
 *      as full, with the reason), a join with a subquery that groups
 *      filtered on its aggregate (the engine's to decide: full, with the
 *      reason) and one over a table whose column is dropped later. The
 *      engine analyses them and logs each decision.
 *   2. Changes to the sources reach the stream tables within their schedule,
 *      a LISTEN client subscribed with coalesce_ms 0 hears of each refresh,
 *      and the deltas are in the outbox.
 *   3. Dropping a column the third stream table reads, and changing the type
 *      of one the fourth reads, puts each into status 'error' with a message
 *      naming the column (and both types); a row over the payload limit
 *      (migration 37) fails its stream table's refreshes, retried, with
 *      the limit in last_error and the hint in the log, until the row is
 *      small again, then its changes are published; a big row again is
 *      published once the limit is raised with ALTER SYSTEM and a reload,
 *      without restarting the engine; the other stream tables keep
 *      refreshing.
 *   4. SIGTERM stops the engine with exit 0; bad usage exits 2; --once
 *      against an unreachable database exits 1 with the error, against a
 *      database without the catalog or with an older one too; against a
 *      newer one it refreshes (in full what awaits an analysis) and
 *      analyses nothing.
 *
 * Alongside: a UNION ALL of orders and customers (their ids overlap, so a
 * row's identity must include its branch) is analysed and refreshed as
 * differential and always equals its query; a UNION without ALL is
 * FULL from creation, with the reason; a one-row aggregate with a WHERE clause
 * stays correct and active through a change its WHERE filters out (once a
 * duplicate-key error).
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/wait.h>

/* Waits up to timeout_ms for a notification on conn; its payload (caller frees) or NULL. */
static char *
wait_notify(PGconn *conn, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        PQconsumeInput(conn);
        PGnotify *n = PQnotifies(conn);
        if (n != NULL) {
            char *p = strdup(n->extra);
            PQfreemem(n);
            return p;
        }
        int fd = PQsocket(conn);
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(fd, &rd);
        struct timeval tv = {0, 50 * 1000};
        select(fd + 1, &rd, NULL, NULL, &tv);
    }
    return NULL;
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    TH_ASSERT(th_run(init, NULL, 60000) == 0, "sluice init succeeds");
    PGconn *conn = th_pg_connect(env.pg_url);
    PGconn *lis = th_pg_connect(env.pg_url);
    th_sql(conn, "SET client_min_messages = warning");
    th_sql(conn, "CREATE TABLE customers (id int PRIMARY KEY, name text);"
                 "CREATE TABLE orders (id int PRIMARY KEY, customer_id int, amount int);"
                 "CREATE TABLE legacy (id int PRIMARY KEY, x int, y int);"
                 "CREATE TABLE wide (id int PRIMARY KEY, body text);"
                 "INSERT INTO wide VALUES (1, 'one');"
                 "INSERT INTO customers VALUES (1, 'ann'), (2, 'bob');"
                 "INSERT INTO orders VALUES (1, 1, 10), (2, 2, 20);"
                 "INSERT INTO legacy VALUES (1, 1, 1)");
    th_sql(conn, "SELECT sluice.create_stream_table('totals', 'SELECT customer_id, sum(amount) "
                 "AS total FROM orders GROUP BY customer_id', schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('named', 'SELECT o.id AS order_id, c.id AS "
                 "customer_id, c.name FROM orders o JOIN customers c ON c.id = o.customer_id', "
                 "schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('legacy_x', 'SELECT id, x FROM legacy', "
                 "schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('legacy_y', 'SELECT id, y FROM legacy', "
                 "schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('wide_st', 'SELECT id, body FROM wide', "
                 "schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('top', 'SELECT id, amount FROM orders ORDER BY "
                 "amount DESC LIMIT 2', schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('feed', 'SELECT id, customer_id AS who, "
                 "amount, ''order'' AS kind FROM orders UNION ALL SELECT id, id, NULL::int, "
                 "''customer'' FROM customers', schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('who', 'SELECT customer_id FROM orders "
                 "INTERSECT ALL SELECT id FROM customers', schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('big', 'SELECT count(*) AS n, sum(amount) AS "
                 "s FROM orders WHERE amount > 100', schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('top_sub', 'SELECT s.id, s.amount FROM "
                 "(SELECT id, amount FROM orders ORDER BY id LIMIT 5) s', schedule => '100 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('left_cast', 'SELECT o.id, c.id AS cid FROM "
                 "orders o LEFT JOIN customers c ON c.id = o.customer_id::bigint', schedule => "
                 "'100 ms')");
    /* Decided FULL at creation (a cast in ON); its decision forgotten, as
     * a catalog made before version 17 holds it, it is the engine's. */
    th_sql(conn, "UPDATE sluice.stream_table_catalog SET query_fallback = NULL, analyzed_query = "
                 "NULL, effective_mode = NULL, fallback_reason = NULL WHERE name = 'left_cast'");
    /* Left to the engine, which refreshes it in full (migration 18): a
     * join's WHERE on an aggregate of a subquery that groups. */
    th_sql(conn, "SELECT sluice.create_stream_table('big_buyers', 'SELECT c.id, c.name, s.total "
                 "FROM customers c JOIN (SELECT customer_id, sum(amount) AS total FROM orders "
                 "GROUP BY customer_id) s ON s.customer_id = c.id WHERE s.total > 15', schedule "
                 "=> '100 ms')");
    th_sql(conn, "SELECT sluice.subscribe('totals', 'totals_changed', 0)");
    th_sql(lis, "LISTEN totals_changed");

    /* Decided at creation, before any engine runs: the outer query's LIMIT
     * and INTERSECT ALL (migration 15), a LIMIT in a subquery in FROM (16). */
    char *mode = th_sql_text(conn, "SELECT string_agg(name || '|' || effective_mode || '|' || "
                                   "fallback_reason, ', ' ORDER BY name) FROM "
                                   "sluice.stream_table_catalog WHERE name IN ('top', 'top_sub', "
                                   "'who') AND analyzed_query = query");
    TH_ASSERT(mode != NULL && strncmp(mode, "top|full|LIMIT", 14) == 0 &&
                  strstr(mode, ", top_sub|full|the subquery in FROM: LIMIT") != NULL &&
                  strstr(mode, ", who|full|INTERSECT ALL and EXCEPT ALL") != NULL,
              "the LIMIT, subquery and INTERSECT queries are FULL from creation, with the reason "
              "(%s)",
              mode ? mode : "NULL");
    free(mode);

    /* 1. Analysis. */
    char log[TH_PATH_MAX];
    snprintf(log, sizeof log, "%s/engine.log", th_tmpdir());
    const char *const argv[] = {SLUICE_BIN, "engine", "--db", env.pg_url, NULL};
    pid_t pid = th_spawn(argv, log);
    TH_ASSERT(th_wait_file_contains(log,
                                    "event=engine.analysed stream_table=totals "
                                    "mode=differential",
                                    20000),
              "the engine analyses the aggregate as differential");
    TH_ASSERT(th_wait_file_contains(log, "stream_table=named mode=differential", 20000),
              "the engine analyses the join as differential");
    TH_ASSERT(th_wait_file_contains(log,
                                    "stream_table=left_cast mode=full reason=\"a LEFT JOIN is "
                                    "refreshed differentially only in a chain of equi-joins",
                                    20000),
              "a LEFT JOIN whose ON compares with a cast is analysed by the engine as full, with "
              "the reason");
    mode = th_sql_text(conn, "SELECT effective_mode || '|' || fallback_reason FROM "
                             "sluice.stream_table_catalog WHERE name = 'left_cast'");
    TH_ASSERT(mode != NULL && strncmp(mode, "full|a LEFT JOIN is refreshed", 29) == 0,
              "the catalog records the mode and reason (%s)", mode ? mode : "NULL");
    free(mode);
    TH_ASSERT(th_wait_file_contains(log,
                                    "stream_table=big_buyers mode=full reason=\"the subquery s "
                                    "in FROM groups: the join's ON and WHERE may use only its key "
                                    "columns, and total is not one",
                                    20000),
              "a join's WHERE on the aggregate of a subquery that groups is analysed as full, "
              "with the reason");
    TH_ASSERT(th_wait_sql(conn, "SELECT count(*) = 1 FROM big_buyers WHERE id = 2", 10000, 20),
              "the FULL join is populated (bob's 20 passes the filter)");
    TH_ASSERT(th_wait_file_contains(log, "stream_table=feed mode=differential", 20000),
              "the UNION ALL is analysed as differential");
    TH_ASSERT(th_wait_file_contains(log, "stream_table=big mode=differential", 20000),
              "the filtered one-row aggregate is analysed as differential");
    char *ident = th_sql_text(conn, "SELECT value FROM sluice.explain_stream_table('feed') WHERE "
                                    "property = 'row identity'");
    TH_ASSERT(ident != NULL && strstr(ident, "branch 1 (id), branch 2 (id)") != NULL,
              "explain gives the UNION ALL's row identity per branch (%s)", ident ? ident : "NULL");
    free(ident);

    /* 2. Changes flow on their own. */
    th_sql(conn, "INSERT INTO orders VALUES (3, 1, 5); UPDATE customers SET name = 'anne' WHERE "
                 "id = 1");
    TH_ASSERT(th_wait_sql(conn, "SELECT total = 15 FROM totals WHERE customer_id = 1", 10000, 20),
              "the engine refreshes the aggregate after an insert");
    TH_ASSERT(th_wait_sql(conn, "SELECT count(*) = 2 FROM named WHERE name = 'anne'", 10000, 20),
              "the engine refreshes the join after an update of the other table");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                               "'named' AND last_refresh_mode = 'differential'") == 1,
              "the join was refreshed differentially");
    char *note = wait_notify(lis, 10000);
    TH_ASSERT(note != NULL && strstr(note, "\"name\": \"totals\"") != NULL &&
                  strstr(note, "\"updated_count\": 1") != NULL,
              "the subscriber hears of the refresh (%s)", note ? note : "nothing");
    free(note);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.outbox WHERE topic = 'totals' AND op = "
                               "'update' AND payload->'after'->>'total' = '15' AND "
                               "payload->'before'->>'total' = '10'") == 1,
              "the update of the aggregate is in the outbox with before and after");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                               "'totals' AND last_refresh_mode = 'differential'") == 1,
              "the aggregate was refreshed differentially");
    const char *feed_equal =
        "WITH q AS (SELECT id, customer_id AS who, amount, 'order' AS kind FROM orders UNION ALL "
        "SELECT id, id, NULL::int, 'customer' FROM customers), s AS (SELECT id, who, amount, kind "
        "FROM feed) SELECT NOT EXISTS (SELECT * FROM s EXCEPT ALL SELECT * FROM q) AND NOT EXISTS "
        "(SELECT * FROM q EXCEPT ALL SELECT * FROM s)";
    TH_ASSERT(th_wait_sql(conn, feed_equal, 10000, 20),
              "the UNION ALL stream table equals its query after the changes");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM feed WHERE id = 1") == 2,
              "order 1 and customer 1 are two rows of the UNION ALL");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.refresh_history h JOIN "
                               "sluice.stream_table_catalog c ON c.id = h.stream_table_id WHERE "
                               "c.name = 'feed' AND h.mode = 'differential'") >= 1,
              "the UNION ALL was refreshed differentially");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.outbox WHERE topic = 'feed' AND op = "
                               "'update' AND payload->'after'->>'who' = '1' AND "
                               "payload->'after'->>'kind' = 'customer'") == 0,
              "the customer's rename does not touch the UNION ALL (no column of it changed)");
    TH_ASSERT(th_wait_sql(conn,
                          "SELECT n = 0 AND s IS NULL AND c.status = 'active' AND c.last_error IS "
                          "NULL AND c.last_refresh_mode = 'differential' FROM big, "
                          "sluice.stream_table_catalog c WHERE c.name = 'big' AND "
                          "c.last_refresh_at > now() - interval '5 s'",
                          10000, 20),
              "the one-row aggregate stays correct and active through a change its WHERE "
              "filters out");
    th_sql(conn, "INSERT INTO orders VALUES (4, 2, 500)");
    TH_ASSERT(th_wait_sql(conn, "SELECT n = 1 AND s = 500 FROM big", 10000, 20),
              "and follows a change that passes its WHERE");
    TH_ASSERT(th_wait_sql(conn, feed_equal, 10000, 20),
              "the UNION ALL follows an insert into one branch");

    /* 3. DDL on a source: an error state for that stream table only. */
    th_sql(conn, "ALTER TABLE legacy DROP COLUMN x");
    th_sql(conn, "ALTER TABLE legacy ALTER y TYPE numeric(8,2)");
    th_sql(conn, "INSERT INTO legacy VALUES (2, 2.5)");
    TH_ASSERT(th_wait_sql(conn,
                          "SELECT status = 'error' FROM sluice.stream_table_catalog WHERE "
                          "name = 'legacy_x'",
                          15000, 50),
              "the stream table whose column was dropped goes into status error");
    char *why = th_sql_text(conn, "SELECT last_error FROM sluice.stream_table_catalog WHERE "
                                  "name = 'legacy_x'");
    TH_ASSERT(why != NULL && strstr(why, "column x of source public.legacy") != NULL,
              "the error names the column (%s)", why ? why : "NULL");
    free(why);
    TH_ASSERT(th_wait_sql(conn,
                          "SELECT status = 'error' FROM sluice.stream_table_catalog WHERE "
                          "name = 'legacy_y'",
                          15000, 50),
              "the stream table whose column changed type goes into status error");
    why = th_sql_text(conn, "SELECT last_error FROM sluice.stream_table_catalog WHERE "
                            "name = 'legacy_y'");
    TH_ASSERT(why != NULL && strstr(why, "column y of source public.legacy, read by stream table "
                                         "legacy_y, changed type from integer to "
                                         "numeric(8,2)") != NULL,
              "the error names the column and both types (%s)", why ? why : "NULL");
    free(why);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM legacy_y WHERE id = 2") == 0,
              "and nothing of the new row was stored");
    /* A row over the payload limit (migration 37): a failure of that stream
     * table, retried, logged with how to fix it; fixed, nothing is lost. */
    long long before = th_sql_int(conn, "SELECT coalesce(max(id), 0) FROM sluice.outbox");
    th_sql(conn, "UPDATE wide SET body = repeat('z', 1000000) WHERE id = 1;"
                 "INSERT INTO wide VALUES (2, 'two')");
    TH_ASSERT(th_wait_sql(conn,
                          "SELECT consecutive_failures >= 2 AND status = 'active' AND last_error "
                          "LIKE 'stream table wide_st: the update of the row with key % makes an "
                          "outbox payload of 1000% bytes, over the limit of 900000 bytes "
                          "(sluice.max_payload_bytes)' FROM sluice.stream_table_catalog WHERE "
                          "name = 'wide_st'",
                          15000, 50),
              "a row over the payload limit fails the stream table's refresh, retried, naming the "
              "limit");
    TH_ASSERT(th_file_contains(log, "event=engine.refresh_failed stream_table=wide_st "
                                    "sqlstate=54000") &&
                  th_file_contains(log, "hint=\"Leave the wide columns out of the stream "
                                        "table's query"),
              "the failure is logged with its hint");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM wide_st WHERE body = 'one'") == 1 &&
                  th_sql_int(conn,
                             "SELECT count(*) FROM sluice.outbox WHERE topic = 'wide_st' "
                             "AND id > %lld",
                             before) == 0,
              "nothing of the failed refreshes was stored or published");
    th_sql(conn, "UPDATE wide SET body = 'small' WHERE id = 1");
    TH_ASSERT(th_wait_sql(conn,
                          "SELECT c.consecutive_failures = 0 AND (SELECT string_agg(id || '=' || "
                          "body, ',' ORDER BY id) FROM wide_st) = '1=small,2=two' FROM "
                          "sluice.stream_table_catalog c WHERE c.name = 'wide_st'",
                          20000, 50),
              "once the row is small again the retry refreshes the stream table");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.outbox WHERE topic = 'wide_st' AND id "
                         "> %lld AND ((op = 'update' AND payload->'before'->>'body' = 'one' "
                         "AND payload->'after'->>'body' = 'small') OR (op = 'insert' AND "
                         "payload->'after'->>'body' = 'two'))",
                         before) == 2,
              "its update and insert are published");
    /* Or the limit raised in the server's configuration: a running engine's
     * sessions get it at the reload, and its next retry publishes. */
    th_sql(conn, "UPDATE wide SET body = repeat('w', 1000000) WHERE id = 2");
    TH_ASSERT(
        th_wait_sql(conn,
                    "SELECT consecutive_failures >= 1 AND last_error LIKE '%over the limit of "
                    "900000 bytes%' FROM sluice.stream_table_catalog WHERE name = 'wide_st'",
                    15000, 50),
        "a big row fails the refresh again");
    /* (ALTER SYSTEM knows a sluice.* setting once the session has one.) */
    th_sql(conn, "SET sluice.max_payload_bytes = 900000");
    th_sql(conn, "ALTER SYSTEM SET sluice.max_payload_bytes = 3000000");
    th_sql(conn, "SELECT pg_reload_conf()");
    TH_ASSERT(th_wait_sql(conn,
                          "SELECT c.consecutive_failures = 0 AND (SELECT length(body) FROM wide_st "
                          "WHERE id = 2) = 1000000 FROM sluice.stream_table_catalog c WHERE c.name "
                          "= 'wide_st'",
                          20000, 50),
              "after ALTER SYSTEM and a reload the running engine publishes the big row");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.outbox WHERE topic = 'wide_st' AND op = "
                         "'update' AND length(payload->'after'->>'body') = 1000000") == 1,
              "its update is in the outbox");
    th_sql(conn, "ALTER SYSTEM RESET sluice.max_payload_bytes");
    th_sql(conn, "SELECT pg_reload_conf()");
    th_sql(conn, "RESET sluice.max_payload_bytes");

    th_sql(conn, "DELETE FROM orders WHERE id = 3");
    TH_ASSERT(th_wait_sql(conn, "SELECT total = 10 FROM totals WHERE customer_id = 1", 10000, 20),
              "the other stream tables keep refreshing");
    TH_ASSERT(th_file_contains(log, "event=engine.refresh_failed stream_table=legacy_x"),
              "the failure is logged with the stream table's name");

    /* 4. Stop, usage, unreachable database. */
    th_kill(pid, SIGTERM);
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, 10000, &status) == 0 && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "SIGTERM stops the engine with exit 0");
    TH_ASSERT(th_file_contains(log, "event=engine.stopped"), "the stop is logged");
    const char *const nodb[] = {SLUICE_BIN, "engine", NULL};
    unsetenv("SLUICE_DB");
    TH_ASSERT(th_run(nodb, NULL, 10000) == 2, "sluice engine without --db exits 2");
    const char *const bad[] = {SLUICE_BIN, "engine",
                               "--db",     "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2",
                               "--once",   NULL};
    TH_ASSERT(th_run(bad, NULL, 20000) == 1, "--once against an unreachable database exits 1");

    /* A database without the catalog, or with one older than this binary's
     * migrations, is refused with what to do. */
    th_sql(conn, "CREATE DATABASE nocatalog");
    char nocat[600];
    snprintf(nocat, sizeof nocat, "postgresql://postgres@127.0.0.1:%d/nocatalog", env.pg_port);
    const char *const fresh[] = {
        "sh", "-c", "exec \"$0\" \"$@\" 2>&1", SLUICE_BIN, "engine", "--db", nocat, "--once", NULL};
    char *out = NULL;
    int rc = th_run(fresh, &out, 20000);
    TH_ASSERT(rc == 1 && out != NULL && strstr(out, "has no sluice catalog") != NULL &&
                  strstr(out, "sluice init") != NULL,
              "--once against a database without the catalog exits 1 naming sluice init (exit %d, "
              "output: %s)",
              rc, out ? out : "");
    free(out);
    th_sql(conn, "CREATE TABLE newest AS SELECT * FROM sluice.schema_version ORDER BY version DESC "
                 "LIMIT 1;"
                 "DELETE FROM sluice.schema_version WHERE version = (SELECT version FROM newest)");
    const char *const old[] = {"sh",       "-c",     "exec \"$0\" \"$@\" 2>&1",
                               SLUICE_BIN, "engine", "--db",
                               env.pg_url, "--once", NULL};
    out = NULL;
    rc = th_run(old, &out, 20000);
    TH_ASSERT(rc == 1 && out != NULL && strstr(out, "needs version") != NULL,
              "--once against an older catalog exits 1 saying which version it needs (exit %d, "
              "output: %s)",
              rc, out ? out : "");
    free(out);
    th_sql(conn, "INSERT INTO sluice.schema_version SELECT * FROM newest; DROP TABLE newest");
    const char *const again[] = {SLUICE_BIN, "engine", "--db", env.pg_url, "--once", NULL};
    TH_ASSERT(th_run(again, NULL, 20000) == 0, "and runs once the catalog is current again");

    /* A catalog newer than the engine (between `sluice init` and the
     * engine's restart with the new binary): the engine refreshes, in full
     * where an analysis is missing, and analyses nothing, which its older
     * analyzer could get wrong for that catalog. */
    th_sql(conn, "INSERT INTO sluice.schema_version (version, name) SELECT max(version) + 1, "
                 "'9999_from_a_newer_release.sql' FROM sluice.schema_version");
    th_sql(conn, "SELECT sluice.create_stream_table('later', 'SELECT customer_id, count(*) AS n "
                 "FROM orders GROUP BY customer_id', schedule => '100 ms')");
    char log2[TH_PATH_MAX];
    snprintf(log2, sizeof log2, "%s/engine-newer.log", th_tmpdir());
    pid = th_spawn(argv, log2);
    TH_ASSERT(th_wait_file_contains(log2, "event=engine.catalog_newer", 20000),
              "the engine logs that the catalog is newer than itself");
    th_sql(conn, "INSERT INTO orders VALUES (900, 1, 3)");
    TH_ASSERT(th_wait_sql(conn,
                          "SELECT n = (SELECT count(*) FROM orders WHERE customer_id = 1) FROM "
                          "later WHERE customer_id = 1",
                          10000, 20),
              "the engine refreshes a stream table it may not analyse");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                               "'later' AND analyzed_query IS NULL AND last_refresh_mode = "
                               "'full'") == 1,
              "in full, without an analysis");
    th_kill(pid, SIGTERM);
    TH_ASSERT(th_wait_exit(pid, 10000, &status) == 0 && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "SIGTERM stops that engine with exit 0");
    TH_ASSERT(!th_file_contains(log2, "event=engine.analysed"), "it analysed nothing");
    out = NULL;
    rc = th_run(old, &out, 20000);
    TH_ASSERT(rc == 0 && out != NULL && strstr(out, "event=engine.catalog_newer") != NULL &&
                  strstr(out, "event=engine.analysed") == NULL,
              "--once against a newer catalog runs, analysing nothing (exit %d, output: %s)", rc,
              out ? out : "");
    free(out);
    th_sql(conn, "DELETE FROM sluice.schema_version WHERE name = '9999_from_a_newer_release.sql'");
    TH_ASSERT(th_run(again, NULL, 20000) == 0 &&
                  th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE name "
                                   "= 'later' AND analyzed_query = query AND effective_mode = "
                                   "'differential'") == 1,
              "the engine of the catalog's version analyses it");

    PQfinish(lis);
    PQfinish(conn);
    return 0;
}
