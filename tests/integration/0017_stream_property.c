/*
 * tests/integration/0017_stream_property.c - the stream-table property test
 * (DESIGN.md invariant 6: DIFFERENTIAL == FULL, and the deltas rebuild the
 * content).
 *
 * Three source tables (a, b joined to a through b.a_k = a.k, c joined to b)
 * with small value domains, so duplicates, NULLs and collisions are common.
 * Stream tables over them: aggregates (count/sum/min/max/avg, HAVING),
 * DISTINCT, a filtered projection, a global aggregate, two- and three-table
 * joins (inner and left), DISTINCT over a join, and a stream table reading
 * another one. After `sluice engine --once` has analysed them, every cycle:
 *
 *   1. runs a random batch of INSERT/UPDATE/DELETE (sometimes TRUNCATE) on
 *      the sources: NULLs, duplicate rows, primary-key changes, and a join
 *      partner deleted in the same cycle as the key that joined it changes;
 *   2. refreshes every stream table with sluice.refresh_stream_table;
 *   3. asserts for each stream table that its content equals its query's
 *      result (as multisets), and that replaying every delta it published
 *      (sluice.outbox rows of its topic, in order) from empty rebuilds
 *      exactly that content, row identities included. Replaying also checks
 *      the delta model itself: an insert of a row id that exists, or an
 *      update/delete of one that does not, fails the test.
 *
 * Seeded: the seed is printed, SLUICE_TEST_SEED=<n> reruns it and
 * SLUICE_PROPERTY_CYCLES=<n> sets the number of cycles (default 1000). A
 * failure prints the seed, the cycle, the stream table and the statements of
 * the failing cycle; every statement since the start is in the scratch
 * directory's statements.sql (kept on failure), which replays the run in psql.
 */
#include "harness.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct st_def {
    const char *name;
    const char *cols; /* the output columns, for comparisons */
    const char *query;
} st_def_t;

static const st_def_t sts[] = {
    {"p_agg", "k, n, sv, mn, mx, av",
     "SELECT k, count(*) AS n, sum(v) AS sv, min(v) AS mn, max(v) AS mx, avg(v) AS av FROM a "
     "GROUP BY k"},
    {"p_having", "k, sv",
     "SELECT k, sum(v) AS sv FROM a WHERE v > 2 GROUP BY k HAVING count(*) >= 2"},
    {"p_distinct", "k, s", "SELECT DISTINCT k, s FROM a"},
    {"p_proj", "id, k, v", "SELECT id, k, v FROM a WHERE v IS NULL OR v % 3 <> 0"},
    {"p_global", "n, total", "SELECT count(*) AS n, sum(v) AS total FROM a"},
    {"p_join", "a_id, b_id, v, w",
     "SELECT a.id AS a_id, b.id AS b_id, a.v, b.w FROM a JOIN b ON b.a_k = a.k"},
    {"p_left", "a_id, b_id, w",
     "SELECT a.id AS a_id, b.id AS b_id, b.w FROM a LEFT JOIN b ON b.a_k = a.k"},
    {"p_join3", "w, n, sz",
     "SELECT b.w, count(*) AS n, sum(c.z) AS sz FROM a JOIN b ON b.a_k = a.k JOIN c ON c.b_id = "
     "b.id GROUP BY b.w"},
    {"p_dist_join", "k, w", "SELECT DISTINCT a.k, b.w FROM a JOIN b ON b.a_k = a.k"},
    {"p_of_st", "k, n", "SELECT k, n FROM p_agg WHERE n > 1"},
};
#define NSTS (sizeof sts / sizeof sts[0])

static FILE *stmt_log;
static char cycle_sql[1 << 16];
static size_t cycle_len;

/* Runs one generated statement, logging it for the reproduction. */
static void run(PGconn *conn, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
run(PGconn *conn, const char *fmt, ...)
{
    char sql[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof sql, fmt, ap);
    va_end(ap);
    fprintf(stmt_log, "%s;\n", sql);
    if (cycle_len + strlen(sql) + 3 < sizeof cycle_sql)
        cycle_len +=
            (size_t)snprintf(cycle_sql + cycle_len, sizeof cycle_sql - cycle_len, "  %s;\n", sql);
    th_sql(conn, "%s", sql);
}

static int
rnd(int n)
{
    return rand() % n;
}

/* A small value or NULL (about one in six). */
static const char *
val(char *buf, size_t n, int domain)
{
    if (rnd(6) == 0)
        return "NULL";
    snprintf(buf, n, "%d", rnd(domain));
    return buf;
}

static int next_id[3] = {1, 1, 1};

static void
random_dml(PGconn *conn)
{
    static const char *const tabs[3] = {"a", "b", "c"};
    char b1[16], b2[16], b3[16];
    int nstmts = 1 + rnd(8);
    for (int i = 0; i < nstmts; i++) {
        int t = rnd(3);
        int what = rnd(100);
        if (what < 40) {
            int rows = 1 + rnd(4);
            for (int r = 0; r < rows; r++) {
                int id = next_id[t]++;
                if (t == 0)
                    run(conn, "INSERT INTO a VALUES (%d, %s, %s, %s)", id, val(b1, 16, 5),
                        val(b2, 16, 8), rnd(2) ? "'x'" : (rnd(2) ? "'y'" : "NULL"));
                else if (t == 1)
                    run(conn, "INSERT INTO b VALUES (%d, %s, %s)", id, val(b1, 16, 5),
                        val(b2, 16, 4));
                else
                    run(conn, "INSERT INTO c VALUES (%d, %s, %s)", id, val(b1, 16, next_id[1] + 1),
                        val(b2, 16, 10));
            }
        } else if (what < 65) {
            if (t == 0)
                run(conn, "UPDATE a SET %s = %s WHERE id %% 7 = %d", rnd(2) ? "v" : "k",
                    val(b1, 16, rnd(2) ? 8 : 5), rnd(7));
            else if (t == 1)
                run(conn, "UPDATE b SET %s = %s WHERE id %% 5 = %d", rnd(2) ? "w" : "a_k",
                    val(b1, 16, 5), rnd(5));
            else
                run(conn, "UPDATE c SET z = %s WHERE id %% 5 = %d", val(b1, 16, 10), rnd(5));
        } else if (what < 75) {
            /* A primary-key change. */
            int id = next_id[t]++;
            run(conn,
                "UPDATE %s SET id = %d WHERE id = (SELECT min(id) FROM %s WHERE id %% 3 = %d)",
                tabs[t], id, tabs[t], rnd(3));
        } else if (what < 85) {
            run(conn, "DELETE FROM %s WHERE id %% 9 = %d", tabs[t], rnd(9));
        } else if (what < 95) {
            /* A join key changes while its partner is deleted in the same cycle. */
            int k = rnd(5);
            run(conn, "UPDATE a SET k = %s WHERE k = %d", val(b1, 16, 5), k);
            run(conn, "DELETE FROM b WHERE a_k = %d AND id %% 2 = %d", k, rnd(2));
            (void)b3;
        } else if (what < 97) {
            run(conn, "TRUNCATE %s", tabs[t]);
        } else {
            /* Duplicate rows (same content, new ids). */
            int id = next_id[0];
            next_id[0] += 3;
            run(conn,
                "INSERT INTO a SELECT %d + g, k, v, s FROM a, generate_series(0, 2) g WHERE a.id = "
                "(SELECT min(id) FROM a)",
                id);
        }
    }
}

/* Applies the new deltas of one stream table to its replay table. */
static const char *replay_fn =
    "CREATE FUNCTION replay(st text, after_id bigint) RETURNS bigint LANGUAGE plpgsql AS $$\n"
    "DECLARE m record; last bigint := after_id; n int;\n"
    "BEGIN\n"
    "  FOR m IN SELECT id, key, op, payload FROM sluice.outbox\n"
    "            WHERE topic = st AND refresh_id IS NOT NULL AND id > after_id ORDER BY id LOOP\n"
    "    IF m.op = 'insert' THEN\n"
    "      INSERT INTO replay_rows VALUES (st, m.key::uuid, m.payload->'after');\n"
    "    ELSIF m.op = 'update' THEN\n"
    "      UPDATE replay_rows SET img = m.payload->'after' WHERE name = st AND row_id = "
    "m.key::uuid AND img = m.payload->'before';\n"
    "      GET DIAGNOSTICS n = ROW_COUNT;\n"
    "      IF n <> 1 THEN RAISE EXCEPTION 'update of % in %: no such row with that before image "
    "(outbox %)', m.key, st, m.id; END IF;\n"
    "    ELSIF m.op = 'delete' THEN\n"
    "      DELETE FROM replay_rows WHERE name = st AND row_id = m.key::uuid AND img = "
    "m.payload->'before';\n"
    "      GET DIAGNOSTICS n = ROW_COUNT;\n"
    "      IF n <> 1 THEN RAISE EXCEPTION 'delete of % in %: no such row with that before image "
    "(outbox %)', m.key, st, m.id; END IF;\n"
    "    ELSE RAISE EXCEPTION 'unknown op % (outbox %)', m.op, m.id; END IF;\n"
    "    last := m.id;\n"
    "  END LOOP;\n"
    "  RETURN last;\n"
    "END $$";

int
main(void)
{
    unsigned seed = (unsigned)time(NULL);
    const char *fixed = getenv("SLUICE_TEST_SEED");
    if (fixed != NULL)
        seed = (unsigned)strtoul(fixed, NULL, 10);
    int cycles = 1000;
    const char *nc = getenv("SLUICE_PROPERTY_CYCLES");
    if (nc != NULL)
        cycles = atoi(nc);
    th_log("seed %u, %d cycles (rerun with SLUICE_TEST_SEED=%u)", seed, cycles, seed);
    srand(seed);

    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    TH_ASSERT(th_run(init, NULL, 60000) == 0, "sluice init succeeds");
    PGconn *conn = th_pg_connect(env.pg_url);
    char path[TH_PATH_MAX];
    snprintf(path, sizeof path, "%s/statements.sql", th_tmpdir());
    stmt_log = fopen(path, "w");
    TH_ASSERT(stmt_log != NULL, "the statement log opens");
    setvbuf(stmt_log, NULL, _IOLBF, 0);

    run(conn, "CREATE TABLE a (id int PRIMARY KEY, k int, v int, s text)");
    run(conn, "CREATE TABLE b (id int PRIMARY KEY, a_k int, w int)");
    run(conn, "CREATE TABLE c (id int PRIMARY KEY, b_id int, z int)");
    for (int i = 0; i < 20; i++)
        random_dml(conn);
    for (size_t i = 0; i < NSTS; i++)
        run(conn, "SELECT sluice.create_stream_table('%s', $q$%s$q$)", sts[i].name, sts[i].query);
    th_sql(conn, "SET client_min_messages = warning");
    th_sql(conn, "CREATE TABLE replay_rows (name text, row_id uuid, img jsonb, PRIMARY KEY "
                 "(name, row_id))");
    th_sql(conn, "%s", replay_fn);

    const char *const once[] = {SLUICE_BIN, "engine", "--db", env.pg_url, "--once", NULL};
    TH_ASSERT(th_run(once, NULL, 60000) == 0, "sluice engine --once analyses the stream tables");
    long long diff = th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE "
                                      "effective_mode = 'differential'");
    TH_ASSERT(diff >= 5, "the single-table stream tables are differential (%lld are)", diff);
    th_log("%lld of %zu stream tables refresh differentially", diff, NSTS);

    long long replayed[NSTS];
    for (size_t i = 0; i < NSTS; i++)
        replayed[i] = 0;
    long long modes_diff = 0, modes_full = 0;
    for (int cycle = 1; cycle <= cycles; cycle++) {
        cycle_len = 0;
        cycle_sql[0] = '\0';
        fprintf(stmt_log, "-- cycle %d\n", cycle);
        random_dml(conn);
        for (size_t i = 0; i < NSTS; i++) {
            run(conn, "SELECT sluice.refresh_stream_table('%s')", sts[i].name);
            char *mode = th_sql_text(conn,
                                     "SELECT last_refresh_mode FROM sluice.stream_table_catalog "
                                     "WHERE name = '%s'",
                                     sts[i].name);
            if (mode != NULL && strcmp(mode, "differential") == 0)
                modes_diff++;
            else
                modes_full++;
            free(mode);
            long long bad = th_sql_int(
                conn,
                "SELECT count(*) FROM ((SELECT %s FROM %s EXCEPT ALL SELECT %s FROM (%s) q) UNION "
                "ALL (SELECT %s FROM (%s) q EXCEPT ALL SELECT %s FROM %s)) x",
                sts[i].cols, sts[i].name, sts[i].cols, sts[i].query, sts[i].cols, sts[i].query,
                sts[i].cols, sts[i].name);
            if (bad != 0)
                fprintf(stderr, "seed %u cycle %d: %s differs from its query; this cycle ran:\n%s",
                        seed, cycle, sts[i].name, cycle_sql);
            TH_ASSERT(bad == 0,
                      "seed %u cycle %d: %s holds what its query returns (%lld rows differ; "
                      "statements.sql replays the run)",
                      seed, cycle, sts[i].name, bad);
            char err[1024];
            char *last = NULL;
            if (th_sql_try(conn, err, sizeof err,
                           "SELECT set_config('sluice_test.last', replay('%s', %lld)::text, false)",
                           sts[i].name, replayed[i]) != 0) {
                fprintf(stderr, "seed %u cycle %d: replaying %s failed: %s; this cycle ran:\n%s",
                        seed, cycle, sts[i].name, err, cycle_sql);
                TH_ASSERT(false, "seed %u cycle %d: the deltas of %s replay cleanly (%s)", seed,
                          cycle, sts[i].name, err);
            }
            last = th_sql_text(conn, "SELECT current_setting('sluice_test.last')");
            replayed[i] = last != NULL ? strtoll(last, NULL, 10) : replayed[i];
            free(last);
            long long rbad = th_sql_int(
                conn,
                "SELECT count(*) FROM ((SELECT row_id, img FROM replay_rows WHERE name = '%s' "
                "EXCEPT ALL SELECT __sluice_row_id, to_jsonb(t) - '__sluice_row_id' FROM %s t) "
                "UNION ALL (SELECT __sluice_row_id, to_jsonb(t) - '__sluice_row_id' FROM %s t "
                "EXCEPT ALL SELECT row_id, img FROM replay_rows WHERE name = '%s')) x",
                sts[i].name, sts[i].name, sts[i].name, sts[i].name);
            if (rbad != 0)
                fprintf(stderr,
                        "seed %u cycle %d: replayed deltas of %s differ from it; this cycle "
                        "ran:\n%s",
                        seed, cycle, sts[i].name, cycle_sql);
            TH_ASSERT(rbad == 0,
                      "seed %u cycle %d: replaying the deltas of %s from empty rebuilds it, row "
                      "ids included (%lld rows differ)",
                      seed, cycle, sts[i].name, rbad);
        }
        if (cycle % 250 == 0)
            th_log("cycle %d: every stream table matches its query and its replayed deltas", cycle);
    }
    th_log("%lld differential and %lld full refreshes checked", modes_diff, modes_full);
    TH_ASSERT(modes_diff > cycles, "most refreshes of the differential tables were differential");
    fclose(stmt_log);
    PQfinish(conn);
    return 0;
}
