/*
 * tests/integration/0019_engine_scheduling.c - `sluice engine` is woken by
 * changes and refreshes stream tables concurrently.
 *
 * The engine runs with --safety-poll-ms 60000, so within this test nothing
 * is refreshed because of a poll: a change that shows up in a stream table
 * within WAKE_DEADLINE_MS was delivered by capture's doorbell
 * (cdc/sql/0008_cdc_wake.sql).
 *
 *   0. The doorbell's race: a write whose trigger ran before any engine held
 *      the doorbell lock (so it did not ring) and that commits after the
 *      engine armed and made its confirming pass reaches the stream table
 *      within ANALYSE_DEADLINE_MS: the engine listed it when arming and
 *      looked again once it was gone (refresh/engine.c), without waiting
 *      for a longer transaction also in progress when it armed.
 *   1. Wake: once the engine is idle (it holds the doorbell lock), an insert
 *      into a source reaches a stream table with a 1 ms schedule within
 *      WAKE_DEADLINE_MS, several times in a row; the latencies are logged.
 *   1c. A stream table whose sources did not change is checked by the
 *      engine (sluice._refresh_if_changed finds nothing, records the time)
 *      at most once per schedule: rings from other tables' writes do not
 *      make it due again before its schedule has passed since that check.
 *   1d. A stream table whose rows depend on the clock is looked at on its
 *      schedule without a ring: the idle engine still refreshes it more
 *      than a second later, and a row that leaves its now() window with no
 *      write that capture sees is gone within ANALYSE_DEADLINE_MS.
 *   2. One slow stream table (its full refresh sleeps SLOW_S seconds in
 *      pg_sleep) does not delay a fast one: while the slow refresh is
 *      running (pg_stat_activity shows it sleeping), a change to the fast
 *      one's source reaches the fast stream table, and the slow refresh is
 *      still running afterwards.
 *   3. Dependency order: a stream table over the fast stream table sees a
 *      change of the fast one's source shortly after, in one pass.
 *   4. A failing stream table (division by zero) is retried with backoff
 *      (consecutive_failures grows, status stays 'active', the error is
 *      recorded) while the others keep refreshing; fixed, it recovers.
 *   5. A worker whose connection is terminated in the middle of a refresh
 *      reconnects; the others go on, and the refresh is retried.
 *   6. SIGTERM stops the engine with exit 0; bad --workers exits 2.
 *
 * And after 1: a stream table created while the engine is idle is analysed
 * within ANALYSE_DEADLINE_MS (create_stream_table rings the engine), not at
 * the safety poll, and so is one re-validated by alter_stream_table with the
 * same query (which clears its analysis).
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

/* Well below the 60 s safety poll and the old 100 ms tick's worst case
 * plus a refresh on a busy machine; a change that waited for a poll could
 * not make it. */
#define WAKE_DEADLINE_MS 500
/* An analysis plus its refresh, on a busy machine; far below the poll. */
#define ANALYSE_DEADLINE_MS 5000
#define WAKES 5
/* Long enough to observe the slow refresh while it runs. */
#define SLOW_S 6
/* The doorbell lock (SL_ENGINE_DOORBELL_LOCK) as pg_locks shows it: a
 * bigint key is classid (high 32 bits), objid (low 32 bits), objsubid 1. */
#define DOORBELL_HELD                                                                          \
    "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' "    \
    "AND granted AND objsubid = 1 AND classid = (x'736c77616b650000'::bigint >> 32)::oid AND " \
    "objid = (x'736c77616b650000'::bigint & x'ffffffff'::bigint)::oid"
/* Idle: armed, and no refresh running (a refresh of fast_st writes its
 * storage, which fast_sum reads, and so would ring and disarm the engine). */
#define ENGINE_IDLE                                                                   \
    DOORBELL_HELD " AND NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE query LIKE " \
                  "'SELECT sluice._refresh%' AND state = 'active')"
#define SLOW_RUNNING                                                                        \
    "SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE 'SELECT sluice._refresh%' " \
    "AND state = 'active' AND wait_event = 'PgSleep'"

/* 1c: idle_st's schedule, and the time of its last check that found
 * nothing to refresh (refresh/sql/0014_idle_checks.sql). */
#define IDLE_SCHEDULE_MS 3000
#define IDLE_CHECKED_AT                                                                       \
    "SELECT k.checked_at FROM sluice.stream_table_checks k JOIN sluice.stream_table_catalog " \
    "c ON c.id = k.stream_table_id WHERE c.name = 'idle_st'"

typedef struct log_arg {
    const char *path;
    const char *needle;
    int want;
} log_arg_t;

/* True when the file contains needle at least want times. */
static bool
log_has(void *p)
{
    log_arg_t *a = p;
    char *text = th_read_file(a->path, NULL);
    int n = 0;
    for (const char *s = text; s != NULL && (s = strstr(s, a->needle)) != NULL; s++)
        n++;
    free(text);
    return n >= a->want;
}

/* Waits (polling every 5 ms) until the query is true; returns the
 * milliseconds it took, or -1 at the deadline. */
static int64_t
wait_ms(PGconn *conn, const char *sql, int timeout_ms)
{
    int64_t t0 = th_now_ms();
    if (!th_wait_sql(conn, sql, timeout_ms, 5))
        return -1;
    return th_now_ms() - t0;
}

/* True when the query stays true at every sample (every 5 ms) for ms: a
 * state that must hold over a window, not just at one instant. */
static bool
holds_for(PGconn *conn, const char *sql, int ms)
{
    int64_t end = th_now_ms() + ms;
    do {
        if (!th_sql_true(conn, sql))
            return false;
        th_sleep_ms(5); /* sampling pace inside the window */
    } while (th_now_ms() < end);
    return true;
}

/* Rings the doorbell with an insert into fast_src (id) and waits until the
 * engine has refreshed it into fast_st: the pass that ring started is done. */
static void
ring_fast(PGconn *conn, int id)
{
    th_sql(conn, "INSERT INTO fast_src VALUES (%d, 1)", id);
    char sql[128];
    snprintf(sql, sizeof sql, "SELECT count(*) = 1 FROM fast_st WHERE id = %d", id);
    TH_ASSERT(wait_ms(conn, sql, 20000) >= 0, "insert %d reaches fast_st", id);
}

/* Waits until the engine is idle and stays so for 30 ms (settled, not
 * between two refreshes). */
static bool
settled(PGconn *conn)
{
    int64_t end = th_now_ms() + 20000;
    while (th_now_ms() < end)
        if (wait_ms(conn, ENGINE_IDLE, (int)(end - th_now_ms())) >= 0 &&
            holds_for(conn, ENGINE_IDLE, 30))
            return true;
    return false;
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    TH_ASSERT(th_run(init, NULL, 60000) == 0, "sluice init succeeds");
    PGconn *conn = th_pg_connect(env.pg_url);
    th_sql(conn, "SET client_min_messages = warning");
    th_sql(conn, "CREATE TABLE fast_src (id int PRIMARY KEY, v int);"
                 "CREATE TABLE slow_src (id int PRIMARY KEY);"
                 "CREATE TABLE slow_ctl (id int PRIMARY KEY, delay_s float8);"
                 "CREATE TABLE bad_src (id int PRIMARY KEY);"
                 "CREATE TABLE bad_ctl (id int PRIMARY KEY, divisor int);"
                 "INSERT INTO fast_src VALUES (1, 10);"
                 "INSERT INTO slow_src VALUES (1);"
                 "INSERT INTO slow_ctl VALUES (1, 0);"
                 "INSERT INTO bad_src VALUES (1);"
                 "INSERT INTO bad_ctl VALUES (1, 1);"
                 /* pg_sleep in a query: the refresh of slow_st takes delay_s. */
                 "CREATE FUNCTION test_sleep(s float8) RETURNS float8 LANGUAGE sql VOLATILE "
                 "AS 'SELECT pg_sleep(s); SELECT s'");
    th_sql(conn, "SELECT sluice.create_stream_table('fast_st', 'SELECT id, v FROM fast_src', "
                 "schedule => '1 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('fast_sum', 'SELECT count(*) AS n, "
                 "sum(v) AS total FROM fast_st', schedule => '1 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('slow_st', 'SELECT s.id, "
                 "public.test_sleep(c.delay_s) AS d FROM slow_src s CROSS JOIN slow_ctl c', "
                 "refresh_mode => 'full', schedule => '1 ms')");
    th_sql(conn, "SELECT sluice.create_stream_table('bad_st', 'SELECT s.id, 100 / c.divisor AS "
                 "x FROM bad_src s CROSS JOIN bad_ctl c', schedule => '1 ms')");

    /* 0. The race: this write's trigger runs while no engine is armed. A
     * long transaction (it has an id) is in progress too, and stays so
     * until the write has reached the stream table. */
    PGconn *late = th_pg_connect(env.pg_url);
    th_sql(late, "BEGIN; INSERT INTO fast_src VALUES (50, 5)");
    PGconn *longtx = th_pg_connect(env.pg_url);
    th_sql(longtx, "BEGIN; SELECT pg_current_xact_id()");

    char log[TH_PATH_MAX];
    snprintf(log, sizeof log, "%s/engine.log", th_tmpdir());
    const char *const argv[] = {SLUICE_BIN,
                                "engine",
                                "--db",
                                env.pg_url,
                                "--workers",
                                "3",
                                "--safety-poll-ms",
                                "60000",
                                "--notify-coalesce-ms",
                                "0",
                                NULL};
    pid_t pid = th_spawn(argv, log);
    TH_ASSERT(th_wait_file_contains(log, "stream_table=fast_sum mode=differential", 20000),
              "the engine analyses the stream table over a stream table");
    TH_ASSERT(th_wait_file_contains(log, "event=engine.worker_up worker=3", 20000),
              "the three workers connect");
    TH_ASSERT(th_wait_file_contains(log, "safety_poll_ms=60000", 1000),
              "the engine logs its safety poll");

    TH_ASSERT(settled(conn), "the engine goes idle and arms the doorbell");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM fast_st WHERE id = 50") == 0,
              "the uncommitted row is not in the stream table");
    th_sql(late, "COMMIT");
    PQfinish(late);
    int64_t late_ms = wait_ms(conn, "SELECT count(*) = 1 FROM fast_st WHERE id = 50", 20000);
    TH_LOG("a write begun before the engine armed, committed after: in the stream table in %lld ms",
           (long long)late_ms);
    TH_ASSERT(late_ms >= 0 && late_ms < ANALYSE_DEADLINE_MS,
              "a write whose trigger ran before the engine armed and that committed after its "
              "confirming pass is in the stream table within %d ms, not at the 60 s safety poll "
              "nor once a longer transaction begun before the arming ends (took %lld ms)",
              ANALYSE_DEADLINE_MS, (long long)late_ms);
    th_sql(longtx, "COMMIT");
    PQfinish(longtx);

    /* 1. Wake. */
    int64_t worst = 0;
    for (int i = 0; i < WAKES; i++) {
        TH_ASSERT(settled(conn), "the engine goes idle and arms the doorbell (round %d)", i + 1);
        th_sql(conn, "INSERT INTO fast_src VALUES (%d, %d)", 100 + i, i);
        char sql[256];
        snprintf(sql, sizeof sql, "SELECT count(*) = 1 FROM fast_st WHERE id = %d", 100 + i);
        int64_t ms = wait_ms(conn, sql, 20000);
        TH_LOG("wake %d: insert -> stream table in %lld ms", i + 1, (long long)ms);
        TH_ASSERT(ms >= 0 && ms < WAKE_DEADLINE_MS,
                  "an insert wakes the engine: the row is in the stream table within %d ms, "
                  "not at the 60 s safety poll (took %lld ms)",
                  WAKE_DEADLINE_MS, (long long)ms);
        if (ms > worst)
            worst = ms;
    }
    TH_LOG("wake latency, worst of %d: %lld ms", WAKES, (long long)worst);

    /* 1b. A new stream table rings the engine for its analysis. */
    TH_ASSERT(settled(conn), "the engine is idle before the creation");
    th_sql(conn, "SELECT sluice.create_stream_table('late_st', 'SELECT id, v FROM fast_src WHERE "
                 "v > 0', schedule => '1 ms')");
    TH_ASSERT(
        th_wait_file_contains(log, "stream_table=late_st mode=differential", ANALYSE_DEADLINE_MS),
        "a stream table created while the engine is idle is analysed within %d ms, not at "
        "the 60 s safety poll",
        ANALYSE_DEADLINE_MS);
    TH_ASSERT(settled(conn), "the engine is idle before the alteration");
    th_sql(conn, "SELECT sluice.alter_stream_table('late_st', query => 'SELECT id, v FROM fast_src "
                 "WHERE v > 0')");
    TH_ASSERT(th_wait_sql(conn,
                          "SELECT analyzed_query = query AND effective_mode = 'differential' FROM "
                          "sluice.stream_table_catalog WHERE name = 'late_st'",
                          ANALYSE_DEADLINE_MS, 20),
              "re-validating it with the same query clears its analysis, and the engine redoes it "
              "within %d ms",
              ANALYSE_DEADLINE_MS);

    /* 1c. A check that found nothing to refresh counts for the schedule:
     * rings caused by other tables do not make an idle stream table due
     * again before its schedule has passed since its last check. */
    th_sql(conn, "CREATE TABLE idle_src (id int PRIMARY KEY); INSERT INTO idle_src VALUES (1)");
    th_sql(conn,
           "SELECT sluice.create_stream_table('idle_st', 'SELECT id FROM idle_src', "
           "schedule => '%d ms')",
           IDLE_SCHEDULE_MS);
    int64_t deadline = th_now_ms() + 4 * IDLE_SCHEDULE_MS + ANALYSE_DEADLINE_MS;
    int ring = 1000;
    while (th_now_ms() < deadline && !th_sql_true(conn, "SELECT (" IDLE_CHECKED_AT ") = (SELECT "
                                                        "last_refresh_at FROM sluice.stream_tables "
                                                        "WHERE name = 'idle_st')"))
        ring_fast(conn, ring++);
    char *first = th_sql_text(conn, "SELECT (" IDLE_CHECKED_AT ")::text");
    TH_ASSERT(first != NULL,
              "the engine checks idle_st once its schedule has passed, finds nothing, records "
              "the check, and the view shows it as its last refresh");
    char same[512];
    snprintf(same, sizeof same,
             "SELECT c = '%s'::timestamptz OR c >= '%s'::timestamptz + interval '%d ms' FROM "
             "(" IDLE_CHECKED_AT ") AS k(c)",
             first, first, IDLE_SCHEDULE_MS);
    for (int i = 0; i < 10; i++) {
        ring_fast(conn, ring++);
        TH_ASSERT(th_sql_true(conn, same),
                  "ring %d: the idle stream table is not checked again before its schedule "
                  "(%d ms) has passed since its last check (%s)",
                  i + 1, IDLE_SCHEDULE_MS, first);
    }
    free(first);
    th_sql(conn, "SELECT sluice.drop_stream_table('idle_st')");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_checks k WHERE NOT "
                               "EXISTS (SELECT 1 FROM sluice.stream_table_catalog c WHERE c.id = "
                               "k.stream_table_id)") == 0,
              "dropping the stream table removes its check");

    /* 1d. A stream table whose rows depend on the clock (migration 36) is
     * looked at on its schedule with no ring and no poll: a row that
     * leaves its window, moved back with capture off as time would move
     * it (no trigger, so no ring), is gone within ANALYSE_DEADLINE_MS. */
    th_sql(conn, "CREATE TABLE clock_src (id int PRIMARY KEY, at timestamptz);"
                 "INSERT INTO clock_src VALUES (1, now()), (2, now())");
    th_sql(conn, "SELECT sluice.create_stream_table('clock_st', 'SELECT id, at FROM clock_src "
                 "WHERE at > now() - interval ''1 hour''', schedule => '200 ms')");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM clock_st") == 2, "clock_st has both rows");
    TH_ASSERT(settled(conn), "the engine is idle before the clock moves");
    /* Idle, with nothing written: it still looks at clock_st every 200 ms
     * (without ring or poll, the look after the confirming pass would be
     * the last one). */
    char *t0 = th_sql_text(conn, "SELECT clock_timestamp()::text");
    TH_ASSERT(t0 != NULL, "the time is read");
    char later[256];
    snprintf(later, sizeof later,
             "SELECT last_refresh_at > '%s'::timestamptz + interval '1 second' FROM "
             "sluice.stream_table_catalog WHERE name = 'clock_st'",
             t0);
    TH_ASSERT(th_wait_sql(conn, later, ANALYSE_DEADLINE_MS, 20),
              "the idle engine refreshes clock_st more than a second after %s, with no write", t0);
    free(t0);
    th_sql(conn, "SET session_replication_role = replica; UPDATE clock_src SET at = now() - "
                 "interval '2 hours' WHERE id = 1; SET session_replication_role = origin");
    int64_t aged = wait_ms(conn, "SELECT count(*) = 1 FROM clock_st", ANALYSE_DEADLINE_MS);
    TH_LOG("a row that left clock_st's window went in %lld ms, with no write seen by capture",
           (long long)aged);
    TH_ASSERT(aged >= 0,
              "the engine refreshes a stream table that reads the clock on its schedule, without "
              "a ring (the safety poll is 60 s): the row that left the window went within %d ms",
              ANALYSE_DEADLINE_MS);
    th_sql(conn, "SELECT sluice.drop_stream_table('clock_st'); DROP TABLE clock_src");

    /* 3. Dependency order: the reader of fast_st follows in the same pass. */
    TH_ASSERT(settled(conn), "the engine is idle again");
    th_sql(conn, "UPDATE fast_src SET v = v + 1000 WHERE id = 1");
    int64_t chain = wait_ms(conn,
                            "SELECT total = (SELECT sum(v) FROM fast_src) AND n = "
                            "(SELECT count(*) FROM fast_src) FROM fast_sum",
                            20000);
    TH_LOG("chain: source -> stream table over a stream table in %lld ms", (long long)chain);
    TH_ASSERT(chain >= 0 && chain < 2 * WAKE_DEADLINE_MS,
              "the stream table over fast_st sees the change within %d ms (took %lld ms)",
              2 * WAKE_DEADLINE_MS, (long long)chain);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.refresh_history h "
                               "JOIN sluice.stream_table_catalog c ON c.id = h.stream_table_id "
                               "WHERE c.name = 'fast_sum' AND h.mode = 'differential'") >= 1,
              "the reader was refreshed differentially");

    /* 2. A slow refresh does not hold up a fast one. */
    th_sql(conn, "UPDATE slow_ctl SET delay_s = %d", SLOW_S);
    TH_ASSERT(wait_ms(conn, SLOW_RUNNING, 5000) >= 0,
              "the slow refresh starts at once and sleeps in pg_sleep (pg_stat_activity)");
    th_sql(conn, "INSERT INTO fast_src VALUES (200, 2)");
    int64_t beside = wait_ms(conn, "SELECT count(*) = 1 FROM fast_st WHERE id = 200", 20000);
    TH_LOG("fast beside slow: insert -> stream table in %lld ms", (long long)beside);
    TH_ASSERT(beside >= 0 && beside < 2 * WAKE_DEADLINE_MS,
              "the fast stream table is refreshed within %d ms while the slow one runs "
              "(took %lld ms; the slow refresh takes %d s)",
              2 * WAKE_DEADLINE_MS, (long long)beside, SLOW_S);
    TH_ASSERT(th_sql_true(conn, SLOW_RUNNING),
              "the slow refresh was still running when the fast one finished");
    /* A stream table is never refreshed twice at once. */
    th_sql(conn, "UPDATE slow_src SET id = id");
    /* For 300 ms (time for a wrong engine to start a second refresh), at
     * every sample: one refresh sleeps in the slow query, and none waits for
     * a lock (a second refresh of the slow stream table would wait for the
     * first one's catalog row lock). Fast refreshes may come and go. */
    TH_ASSERT(holds_for(conn,
                        "SELECT count(*) FILTER (WHERE wait_event = 'PgSleep') = 1 AND "
                        "count(*) FILTER (WHERE wait_event_type = 'Lock') = 0 "
                        "FROM pg_stat_activity WHERE query LIKE 'SELECT sluice._refresh%' "
                        "AND state = 'active'",
                        300),
              "only the slow refresh runs: its stream table is not started twice");

    /* 5. Kill the worker running the slow refresh. */
    th_sql(conn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE "
                 "'SELECT sluice._refresh%%' AND state = 'active' AND wait_event = 'PgSleep'");
    TH_ASSERT(th_wait_file_contains(log, "event=engine.worker_down", 5000),
              "the engine notices the lost worker");
    th_sql(conn, "UPDATE slow_ctl SET delay_s = 0");
    th_sql(conn, "INSERT INTO fast_src VALUES (201, 3)");
    TH_ASSERT(wait_ms(conn, "SELECT count(*) = 1 FROM fast_st WHERE id = 201", 5000) >= 0,
              "the other workers keep refreshing");
    TH_ASSERT(wait_ms(conn,
                      "SELECT count(*) = 1 FROM slow_st WHERE d = 0 AND NOT EXISTS (SELECT 1 "
                      "FROM pg_stat_activity WHERE wait_event = 'PgSleep')",
                      20000) >= 0,
              "the slow stream table is refreshed again, with the new delay");
    log_arg_t up = {log, "event=engine.worker_up", 4};
    TH_ASSERT(th_wait_until(log_has, &up, 10000, 20),
              "the lost worker reconnects (a fourth engine.worker_up line)");

    /* 4. A failing stream table. */
    th_sql(conn, "UPDATE bad_ctl SET divisor = 0");
    TH_ASSERT(wait_ms(conn,
                      "SELECT consecutive_failures >= 3 AND status = 'active' AND last_error "
                      "LIKE '%division by zero%' FROM sluice.stream_table_catalog WHERE name = "
                      "'bad_st'",
                      20000) >= 0,
              "the failing stream table is retried (with backoff) and each failure recorded");
    th_sql(conn, "INSERT INTO fast_src VALUES (300, 4)");
    TH_ASSERT(
        wait_ms(conn, "SELECT count(*) = 1 FROM fast_st WHERE id = 300", 2 * WAKE_DEADLINE_MS) >= 0,
        "the others keep refreshing while one fails");
    long long fails = th_sql_int(conn, "SELECT consecutive_failures FROM "
                                       "sluice.stream_table_catalog WHERE name = 'bad_st'");
    TH_ASSERT(fails < 20, "failures are backed off, not retried in a tight loop (%lld)", fails);
    TH_ASSERT(th_file_contains(log, "event=engine.refresh_failed stream_table=bad_st"),
              "the failure is logged with the stream table's name");
    th_sql(conn, "UPDATE bad_ctl SET divisor = 4");
    TH_ASSERT(wait_ms(conn,
                      "SELECT consecutive_failures = 0 AND (SELECT x FROM bad_st) = 25 FROM "
                      "sluice.stream_table_catalog WHERE name = 'bad_st'",
                      40000) >= 0,
              "fixed, the failing stream table recovers");

    /* 6. Stop. */
    th_kill(pid, SIGTERM);
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, 15000, &status) == 0 && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "SIGTERM stops the engine with exit 0");
    TH_ASSERT(th_file_contains(log, "event=engine.stopped"), "the stop is logged");
    const char *const bad[] = {SLUICE_BIN, "engine", "--db", env.pg_url, "--workers", "0", NULL};
    TH_ASSERT(th_run(bad, NULL, 10000) == 2, "--workers 0 exits 2");

    PQfinish(conn);
    return 0;
}
