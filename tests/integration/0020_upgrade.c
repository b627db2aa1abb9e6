/*
 * tests/integration/0020_upgrade.c - `sluice init` upgrades a catalog of
 * version 8 that holds live stream tables and unconsumed changes.
 *
 * Migration 9 (refresh/sql/0009_union_all.sql) adds catalog columns and
 * clears stored analyses; migration 10 (cdc/sql/0010_cdc_chunks.sql)
 * converts every change buffer table sluice_changes.c_<oid> into a chunk
 * table c_<oid>_chunks behind a view of the old name. Both run on live data;
 * this test is their upgrade path.
 *
 *   1. Version 8, as `sluice init` of that release made it: the migration
 *      files of this tree with a version <= 8, in version order, each in its
 *      own transaction and recorded in sluice.schema_version, on one
 *      session under the migration lock, exactly as core/migrate.c does.
 *   2. Live state on it: two source tables (one with columns named n and
 *      o, the transition-table aliases of version 4), stream tables over
 *      them (a GROUP BY aggregate, an inner join, a filter over the table
 *      with column n), all refreshed once; the aggregate carries an
 *      analysis stored the version-8 way (sluice._set_analysis with 8
 *      arguments), so its version-8 refresh is differential. Then changes
 *      in several statements and transactions (inserts, updates, a row
 *      updated twice, deletes, an insert deleted in its own transaction)
 *      that no refresh consumes: the old-format buffers hold them.
 *   3. `sluice init` upgrades: it reports the newest version, and
 *      schema_version has one row per migration file, named after it.
 *   4. Conversion: each buffer is a view (relkind 'v') over its chunk table,
 *      sluice.cdc_sources.buffer names the view, and the buffer rows are
 *      those of before: the same count, ops, txids and images in seq order,
 *      each seq s now s * 1024. Migration 9 cleared the stored analysis.
 *      The capture triggers write chunks: a statement of 3 rows is one
 *      chunk of n = 3, read back through the view (rolled back after).
 *      Migration 15 (refresh/sql/0015_query_fallback.sql) checks the
 *      stored queries: two stream tables over a VOLATILE function of the
 *      test's own, created at version 8 in modes auto and differential, are
 *      FULL with the reason (decided: analyzed_query = query), the second
 *      in status error; the first is refreshed in FULL and equals its query.
 *      Migration 16 (refresh/sql/0016_nested_fallback.sql) checks them
 *      again with the check that reads nested queries: a RIGHT JOIN made
 *      at version 8 is FULL with the reason, decided. A filter of an
 *      aggregating subquery (st_derived), FULL and decided by migration 16,
 *      is undecided again after migration 17
 *      (refresh/sql/0017_derived_subqueries.sql), which refreshes it
 *      differentially: step 5 holds for it like for the others; a LEFT
 *      JOIN whose ON has a cast (st_lc), which 16 left to the engine, is
 *      FULL with the reason, decided, after 17. A join with an aggregating
 *      subquery (st_jg), FULL by 16's reason, has none after migration 18
 *      (refresh/sql/0018_joined_groups.sql) but keeps its content identity,
 *      so stays FULL for that reason.
 *      Migration 21 (refresh/sql/0021_source_columns.sql) records the
 *      source columns every stored query reads. A filter around a LEFT
 *      JOIN (st_left_filter), FULL and decided by the creation check of
 *      earlier migrations, is undecided again after migration 22
 *      (refresh/sql/0022_derived_left_joins.sql), and step 5 holds for it;
 *      so does a GROUP BY over a LEFT JOIN without the first table's key
 *      (st_left_group) after migration 23
 *      (refresh/sql/0023_left_join_identity.sql), and a WITH query
 *      (st_with), FULL by migration 15's reason, after migration 27
 *      (refresh/sql/0027_with_and_distinct_on.sql). A DISTINCT ON (st_don)
 *      loses that reason too, keeps the identity it was created with, and
 *      is keyed by its DISTINCT ON column once re-validated. A UNION
 *      without ALL (st_union), FULL by migration 15's reason, has none
 *      after migration 28 (refresh/sql/0028_union.sql); an EXCEPT
 *      (st_except) loses that reason too but keeps the content identity it
 *      was created with (FULL, with the reason to re-validate it), and is
 *      keyed by its column once re-validated. Migration 29
 *      (refresh/sql/0029_session_settings.sql) records the settings every
 *      stream table is refreshed with.
 *   5. `sluice engine --once` analyses every stream table again (they are
 *      not due: their schedule is an hour, so it refreshes none); then each
 *      is refreshed by hand: DIFFERENTIAL, with a delta of exactly the size
 *      of the difference between the stream table and its query (nothing
 *      lost, nothing applied twice), and equal to its query afterwards (a
 *      multiset comparison, EXCEPT ALL both ways). The buffers are then
 *      pruned to nothing. A second round of changes, captured in chunks
 *      after the upgrade, is refreshed and checked the same way.
 *   6. Migrations 38 (refresh/sql/0038_key_semi_joins.sql), 39
 *      (0039_stream_table_fillfactor.sql) and 40
 *      (0040_measured_mode_choice.sql), from version 37 in a second
 *      database: see semi_join_upgrade below.
 */
#include "harness.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUN_MS 60000
/* The last version of the release being upgraded from. */
#define OLD_VERSION 8
/* More than the tree will have for a long time; asserted. */
#define MAX_MIGRATIONS 64
/* core/migrate.c's SL_MIGRATE_LOCK_KEY: "sluice" in ASCII. */
#define MIGRATE_LOCK_KEY 0x736c75696365LL

/* One migration file of the source tree. */
typedef struct migration {
    int version;
    char name[256];               /* file name, e.g. "0004_cdc.sql", as sluice init records it */
    char path[TH_PATH_MAX + 512]; /* absolute path: folder and name */
} migration_t;

static int
migration_cmp(const void *a, const void *b)
{
    const migration_t *x = a, *y = b;
    return (x->version > y->version) - (x->version < y->version);
}

/* Every NNNN_*.sql of the four folders sluice init embeds, in version order;
 * returns their count. Asserts that versions are unique. */
static size_t
migrations_list(migration_t *out)
{
    static const char *const dirs[] = {"outbox/sql", "inbox/sql", "cdc/sql", "refresh/sql"};
    size_t n = 0;
    for (size_t d = 0; d < sizeof dirs / sizeof dirs[0]; d++) {
        char dir[TH_PATH_MAX];
        snprintf(dir, sizeof dir, "%s/%s", SL_SOURCE_DIR, dirs[d]);
        DIR *dp = opendir(dir);
        TH_ASSERT(dp != NULL, "the migration folder %s can be read", dir);
        struct dirent *de;
        while ((de = readdir(dp)) != NULL) {
            size_t len = strlen(de->d_name);
            char *end = NULL;
            long v = strtol(de->d_name, &end, 10);
            if (len < 5 || strcmp(de->d_name + len - 4, ".sql") != 0 || end == de->d_name ||
                *end != '_' || v <= 0)
                continue;
            TH_ASSERT(n < MAX_MIGRATIONS, "at most %d migrations", MAX_MIGRATIONS);
            out[n].version = (int)v;
            snprintf(out[n].name, sizeof out[n].name, "%s", de->d_name);
            snprintf(out[n].path, sizeof out[n].path, "%s/%s", dir, de->d_name);
            n++;
        }
        closedir(dp);
    }
    qsort(out, n, sizeof *out, migration_cmp);
    for (size_t i = 1; i < n; i++)
        TH_ASSERT(out[i].version != out[i - 1].version, "migration versions are unique (%s, %s)",
                  out[i - 1].name, out[i].name);
    return n;
}

/* Runs sql (any text: no printf formatting) and asserts it succeeded. */
static void
exec_ok_at(int line, PGconn *conn, const char *sql, const char *what)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        th_fail_at(__FILE__, line, NULL, "%s: %s", what, PQerrorMessage(conn));
    PQclear(res);
}
#define exec_ok(conn, sql, what) exec_ok_at(__LINE__, (conn), (sql), (what))

/*
 * Brings the database to `upto` the way core/migrate.c does (read it before
 * changing this): the migration lock, schema sluice and sluice.schema_version
 * created by the same statement, then each file in version order in its own
 * transaction followed by its schema_version row, all on one session (so
 * session settings of one file reach the next, as in sluice init).
 */
static void
migrate_to(const char *url, const migration_t *m, size_t n, int upto)
{
    PGconn *conn = th_pg_connect(url);
    char lock[128];
    snprintf(lock, sizeof lock, "SELECT pg_advisory_lock(%lld)", MIGRATE_LOCK_KEY);
    exec_ok(conn, lock, "the migration lock");
    exec_ok(conn,
            "SET client_min_messages = warning;"
            "CREATE SCHEMA IF NOT EXISTS sluice;"
            "CREATE TABLE IF NOT EXISTS sluice.schema_version ("
            "  version int PRIMARY KEY,"
            "  name text NOT NULL,"
            "  applied_at timestamptz NOT NULL DEFAULT now())",
            "schema sluice and sluice.schema_version");
    for (size_t i = 0; i < n && m[i].version <= upto; i++) {
        char *text = th_read_file(m[i].path, NULL);
        TH_ASSERT(text != NULL, "migration %s can be read", m[i].path);
        exec_ok(conn, "BEGIN", "BEGIN");
        exec_ok(conn, text, m[i].name);
        free(text);
        char vbuf[16];
        snprintf(vbuf, sizeof vbuf, "%d", m[i].version);
        const char *params[2] = {vbuf, m[i].name};
        PGresult *res = PQexecParams(
            conn, "INSERT INTO sluice.schema_version(version, name) VALUES ($1::int, $2)", 2, NULL,
            params, NULL, NULL, 0);
        TH_ASSERT(PQresultStatus(res) == PGRES_COMMAND_OK, "migration %s is recorded: %s",
                  m[i].name, PQerrorMessage(conn));
        PQclear(res);
        exec_ok(conn, "COMMIT", "COMMIT");
    }
    snprintf(lock, sizeof lock, "SELECT pg_advisory_unlock(%lld)", MIGRATE_LOCK_KEY);
    exec_ok(conn, lock, "the migration unlock");
    PQfinish(conn);
}

/* The stream tables: name, query, and the query's output columns (the
 * stream table's columns after __sluice_row_id). */
typedef struct st_def {
    const char *name;
    const char *query;
    const char *cols;
} st_def_t;

static const st_def_t sts[] = {
    {"st_agg", "SELECT grp, count(*) AS cnt, sum(n) AS total FROM items GROUP BY grp",
     "grp, cnt, total"},
    {"st_join", "SELECT i.id, i.n, g.grp, g.label, g.o FROM items i JOIN groups g ON g.grp = i.grp",
     "id, n, grp, label, o"},
    {"st_n", "SELECT id, n, o FROM items WHERE mod(n, 3) <> 0", "id, n, o"},
    /* An aggregating subquery in FROM: migrations 15 and 16 store the
     * reason that makes it FULL, migration 17 takes it back. */
    {"st_derived",
     "SELECT s.grp, s.total FROM (SELECT grp, sum(n) AS total FROM items GROUP BY grp) s WHERE "
     "s.total > 0",
     "grp, total"},
    /* A filter around a LEFT JOIN: earlier migrations store a reason that
     * makes it FULL, migration 22 takes it back. */
    {"st_left_filter",
     "SELECT j.id, j.grp, j.label FROM (SELECT i.id, g.grp, g.label FROM items i LEFT JOIN groups "
     "g ON g.grp = i.grp) j WHERE j.grp IS NULL OR j.grp <> 3",
     "id, grp, label"},
    /* Groups over a LEFT JOIN without its first table's key: earlier
     * migrations store a reason that makes it FULL, migration 23 takes it
     * back. */
    {"st_left_group",
     "SELECT g.label, count(i.id) AS cnt, sum(i.n) AS total FROM groups g LEFT JOIN items i ON "
     "i.grp = g.grp GROUP BY g.label",
     "label, cnt, total"},
    /* A WITH query: migration 15 stores the reason that makes it FULL,
     * migration 27 takes it back. */
    {"st_with",
     "WITH s AS (SELECT grp, sum(n) AS total FROM items GROUP BY grp) SELECT s.grp, s.total FROM "
     "s WHERE s.total > 0",
     "grp, total"},
    /* A UNION (without ALL): migration 15 stores the reason that makes it
     * FULL, migration 28 takes it back. */
    {"st_union", "SELECT grp, n FROM items WHERE n > 5 UNION SELECT grp, o FROM groups", "grp, n"},
};
#define NSTS (sizeof sts / sizeof sts[0])

/* Over a function that is VOLATILE (CREATE FUNCTION's default), created at
 * version 8 in modes auto and differential: migration 15 makes the first
 * FULL and puts the second in error. */
static const st_def_t vol = {"st_vol", "SELECT id, grp, public.same_n(n) AS n FROM items",
                             "id, grp, n"};

/* Rows of the stream table not in its query plus rows of the query not in
 * the stream table, as multisets: 0 when they are equal. */
static long long
st_diff(PGconn *conn, const st_def_t *st)
{
    return th_sql_int(conn,
                      "SELECT (SELECT count(*) FROM (SELECT %s FROM %s EXCEPT ALL (%s)) a)"
                      "     + (SELECT count(*) FROM ((%s) EXCEPT ALL SELECT %s FROM %s) b)",
                      st->cols, st->name, st->query, st->query, st->cols, st->name);
}

static void
assert_equal_at(int line, PGconn *conn, const st_def_t *st, const char *when)
{
    long long d = st_diff(conn, st);
    if (d != 0)
        th_fail_at(__FILE__, line, NULL, "%s equals its query %s (%lld rows differ)", st->name,
                   when, d);
    long long rows = th_sql_int(conn, "SELECT count(*) FROM %s", st->name);
    long long cat = th_sql_int(
        conn, "SELECT rows FROM sluice.stream_table_catalog WHERE name = '%s'", st->name);
    if (rows != cat)
        th_fail_at(__FILE__, line, NULL, "%s: the catalog's row count %lld is the table's %lld %s",
                   st->name, cat, rows, when);
}
#define assert_equal(conn, st, when) assert_equal_at(__LINE__, (conn), (st), (when))

/*
 * Refreshes every stream table by hand and checks each refresh: it changed
 * something, ran in `want_mode`, its delta (inserted + deleted + 2 *
 * updated, from sluice.refresh_history) is exactly the multiset difference
 * measured before it, and the stream table equals its query after it.
 */
static void
refresh_all_at(int line, PGconn *conn, const char *want_mode, const char *when)
{
    for (size_t i = 0; i < NSTS; i++) {
        const st_def_t *st = &sts[i];
        long long before = st_diff(conn, st);
        if (before == 0)
            th_fail_at(__FILE__, line, NULL,
                       "%s: the changes %s reach it (else this refresh proves nothing)", st->name,
                       when);
        char *rid = th_sql_text(conn, "SELECT sluice.refresh_stream_table('%s')", st->name);
        if (rid == NULL)
            th_fail_at(__FILE__, line, NULL, "%s: the refresh %s finds changes", st->name, when);
        char *mode = th_sql_text(conn,
                                 "SELECT h.mode || '/' || c.last_refresh_mode || '/' || "
                                 "coalesce(c.effective_mode, 'NULL') FROM sluice.refresh_history "
                                 "h JOIN sluice.stream_table_catalog c ON c.id = "
                                 "h.stream_table_id WHERE h.refresh_id = %s",
                                 rid);
        char want[64];
        snprintf(want, sizeof want, "%s/%s/", want_mode, want_mode);
        if (mode == NULL || strncmp(mode, want, strlen(want)) != 0)
            th_fail_at(__FILE__, line, NULL,
                       "%s: the refresh %s is %s (history/last_refresh_mode/effective_mode: %s)",
                       st->name, when, want_mode, mode ? mode : "NULL");
        free(mode);
        long long delta = th_sql_int(conn,
                                     "SELECT inserted + deleted + 2 * updated FROM "
                                     "sluice.refresh_history WHERE refresh_id = %s",
                                     rid);
        if (delta != before)
            th_fail_at(__FILE__, line, NULL,
                       "%s: the refresh %s applies exactly the difference (delta %lld, "
                       "difference before %lld)",
                       st->name, when, delta, before);
        free(rid);
        assert_equal_at(line, conn, st, when);
    }
}
#define refresh_all(conn, mode, when) refresh_all_at(__LINE__, (conn), (mode), (when))

/* What a buffer holds, row by row in seq order: "op txid img". */
static char *
buffer_rows(PGconn *conn, const char *table)
{
    return th_sql_text(conn,
                       "SELECT coalesce(string_agg(op::text || ' ' || txid::text || ' ' || "
                       "coalesce(img::text, 'NULL'), E'\\n' ORDER BY seq), '') FROM "
                       "sluice_changes.c_%s",
                       table);
}

/* Refreshes st by hand and asserts that the refresh ran in mode and left st
 * equal to its query. */
static void
refresh_in_at(int line, PGconn *conn, const st_def_t *st, const char *mode, const char *when)
{
    char *rid = th_sql_text(conn, "SELECT sluice.refresh_stream_table('%s')", st->name);
    if (rid == NULL)
        th_fail_at(__FILE__, line, NULL, "%s: the refresh %s finds changes", st->name, when);
    long long n = th_sql_int(conn,
                             "SELECT count(*) FROM sluice.refresh_history WHERE refresh_id = %s "
                             "AND mode = '%s'",
                             rid, mode);
    free(rid);
    if (n != 1)
        th_fail_at(__FILE__, line, NULL, "%s: the refresh %s is %s", st->name, when, mode);
    assert_equal_at(line, conn, st, when);
}
#define refresh_in(conn, st, mode, when) refresh_in_at(__LINE__, (conn), (st), (mode), (when))

/* The catalog's last_full_reason of stream table `name` is `want`. */
static void
expect_reason(PGconn *conn, const char *name, const char *want)
{
    char *got = th_sql_text(conn,
                            "SELECT coalesce(last_full_reason, 'NULL') FROM sluice.stream_tables "
                            "WHERE name = '%s'",
                            name);
    TH_ASSERT(got != NULL && strcmp(got, want) == 0, "%s: last_full_reason \"%s\", want \"%s\"",
              name, got ? got : "(no row)", want);
    free(got);
}

/*
 * 6. Migration 38 (refresh/sql/0038_key_semi_joins.sql), in a database of
 * its own at version 37: a GROUP BY (with HAVING, so its groups are
 * recomputed) with an analysis of version 37's form (the keys by = ANY
 * (ARRAY(...))), and the same query with an analysis that restricts by IN.
 * After `sluice init` the first has no analysis and refreshes in full; the
 * second keeps its own. `sluice engine --once` analyses the first
 * again, in the new form (IN (SELECT ...)), and it refreshes
 * differentially, equal to its query each time, NULL group included.
 * Migration 39 gives st_who fillfactor 90 and keeps the 80 set on
 * st_who_in by hand. Migration 40 (0040_measured_mode_choice.sql) seeds
 * st_who's costs with the FULL refresh in its history, and
 * last_full_reason says why its refreshes are FULL, and nothing when they
 * are not.
 */
static void
semi_join_upgrade(th_env_t *env, const migration_t *mig, size_t nmig, int newest)
{
    static const st_def_t who = {"st_who",
                                 "SELECT who, count(*) AS n, max(ms) AS slowest FROM visits "
                                 "GROUP BY who HAVING count(*) > 0",
                                 "who, n, slowest"};
    char *url = th_createdb(env, "at37");
    migrate_to(url, mig, nmig, 37);
    PGconn *conn = th_pg_connect(url);
    th_sql(conn, "SET client_min_messages = warning");
    TH_ASSERT(th_sql_int(conn, "SELECT max(version) FROM sluice.schema_version") == 37,
              "the second database is at version 37");
    th_sql(conn, "CREATE TABLE visits (id int PRIMARY KEY, who int, ms int NOT NULL);"
                 "INSERT INTO visits SELECT i, CASE WHEN i %% 10 = 0 THEN NULL ELSE i %% 40 END, "
                 "  i FROM generate_series(1, 400) i");
    th_sql(conn, "SELECT sluice.create_stream_table('%s', '%s', schedule => '1 hour')", who.name,
           who.query);
    th_sql(conn, "SELECT sluice.create_stream_table('st_who_in', '%s', schedule => '1 hour')",
           who.query);
    /* Its analysis as an engine of version 37 wrote it (which this tree's
     * engine cannot run: it needs the newest catalog): the groups of the
     * changed rows, recomputed with both restrictions as = ANY. */
    long long oid = th_sql_int(conn, "SELECT 'visits'::regclass::oid");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT sluice._set_analysis(c.id, c.query, 'differential', NULL, "
                         "'aggregate (stored by the test)', "
                         "'SELECT DISTINCT who FROM pg_temp.__sluice_chg_%lld', "
                         "'(SELECT who, count(*) AS n, max(ms) AS slowest FROM public.visits "
                         "WHERE who = ANY (ARRAY(SELECT who FROM pg_temp.__sluice_aff WHERE who "
                         "IS NOT NULL)) GROUP BY who HAVING count(*) > 0) UNION ALL (SELECT who, "
                         "count(*) AS n, max(ms) AS slowest FROM public.visits WHERE (SELECT "
                         "count(*) > 0 FROM pg_temp.__sluice_aff WHERE who IS NULL) AND who IS "
                         "NULL AND jsonb_build_array(who) = ANY (ARRAY(SELECT "
                         "jsonb_build_array(who) FROM pg_temp.__sluice_aff)) GROUP BY who "
                         "HAVING count(*) > 0)', NULL)::int "
                         "FROM sluice.stream_table_catalog c WHERE c.name = '%s'",
                         oid, who.name) == 1,
              "the version-37 analysis of %s is stored", who.name);
    /* One without that form (a hand-written analysis with IN), which the
     * migration keeps. */
    TH_ASSERT(th_sql_int(conn,
                         "SELECT sluice._set_analysis(c.id, c.query, 'differential', NULL, "
                         "'aggregate (stored by the test)', "
                         "'SELECT DISTINCT who FROM pg_temp.__sluice_chg_%lld', "
                         "'SELECT who, count(*) AS n, max(ms) AS slowest FROM public.visits "
                         "WHERE who IN (SELECT who FROM pg_temp.__sluice_aff) OR (who IS NULL AND "
                         "EXISTS (SELECT FROM pg_temp.__sluice_aff WHERE who IS NULL)) GROUP BY "
                         "who HAVING count(*) > 0', NULL)::int "
                         "FROM sluice.stream_table_catalog c WHERE c.name = 'st_who_in'",
                         oid) == 1,
              "the hand-written analysis of st_who_in is stored");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = '%s' AND "
                         "analyzed_query = query AND effective_mode = 'differential' AND "
                         "strpos(recompute_sql, '= ANY (ARRAY(SELECT ') > 0",
                         who.name) == 1,
              "%s holds an analysis of version 37's form", who.name);
    th_sql(conn, "UPDATE visits SET ms = ms + 1 WHERE id IN (3, 10, 17);"
                 "DELETE FROM visits WHERE id = 24");
    refresh_in(conn, &who, "differential", "after a refresh at version 37");
    /* Migration 39 gives existing stream tables fillfactor 90, but not one
     * that has a fillfactor already. */
    th_sql(conn, "ALTER TABLE st_who_in SET (fillfactor = 80)");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM pg_class WHERE oid = 'st_who'::regclass AND "
                               "reloptions IS NULL") == 1,
              "at version 37 a stream table has no fillfactor");

    const char *const init[] = {SLUICE_BIN, "init", "--db", url, NULL};
    char *out = NULL;
    int rc = th_run(init, &out, RUN_MS);
    char want[128];
    snprintf(want, sizeof want, "schema sluice is at version %d", newest);
    TH_ASSERT(rc == 0 && out != NULL && strstr(out, want) != NULL,
              "sluice init upgrades from 37, saying \"%s\" (exit %d, output: %s)", want, rc,
              out ? out : "");
    free(out);
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = '%s' AND "
                         "analyzed_query IS NULL AND recompute_sql IS NULL",
                         who.name) == 1,
              "migration 38 forgot the analysis of %s", who.name);
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                         "'st_who_in' AND analyzed_query = query AND effective_mode = "
                         "'differential' AND strpos(recompute_sql, 'who IN (SELECT who') > 0") == 1,
              "migration 38 kept the analysis without = ANY");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM pg_class WHERE oid IN ('st_who'::regclass, "
                               "'st_who_in'::regclass) AND reloptions = CASE WHEN oid = "
                               "'st_who'::regclass THEN '{fillfactor=90}' ELSE "
                               "'{fillfactor=80}' END::text[]") == 2,
              "migration 39 set fillfactor 90 on st_who and kept st_who_in's 80");
    TH_ASSERT(
        th_sql_int(conn,
                   "SELECT count(*) FROM sluice.stream_table_catalog c WHERE name = '%s' "
                   "AND full_refresh_by_cost AND NOT refresh_costs ? 'diff' AND "
                   "refresh_costs -> 'full' = (SELECT jsonb_agg(round(h.duration_ms::numeric, "
                   "1) ORDER BY h.refresh_id) FROM sluice.refresh_history h WHERE "
                   "h.stream_table_id = c.id AND h.mode = 'full') AND "
                   "jsonb_array_length(refresh_costs -> 'full') = 1",
                   who.name) == 1,
        "migration 40 seeded the costs of %s with its FULL refresh at version 37", who.name);
    th_sql(conn, "UPDATE visits SET who = NULL WHERE id = 5;"
                 "INSERT INTO visits VALUES (401, 7, 9000)");
    refresh_in(conn, &who, "full", "after its FULL refresh at the new version");
    expect_reason(conn, who.name, "the query awaits the engine's analysis");

    const char *const eng_new[] = {SLUICE_BIN, "engine", "--db", url, "--once", NULL};
    rc = th_run(eng_new, NULL, RUN_MS);
    TH_ASSERT(rc == 0, "sluice engine --once succeeds after the upgrade (exit %d)", rc);
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = '%s' AND "
                         "analyzed_query = query AND effective_mode = 'differential' AND "
                         "strpos(recompute_sql, '= ANY (ARRAY(SELECT ') = 0 AND "
                         "strpos(recompute_sql, '(visits.who) IN (SELECT \"who\"') > 0",
                         who.name) == 1,
              "the engine analysed %s again, its keys restricted by IN (SELECT ...)", who.name);
    th_sql(conn, "UPDATE visits SET ms = ms * 2 WHERE id IN (5, 30, 31);"
                 "UPDATE visits SET who = 8 WHERE id = 40");
    refresh_in(conn, &who, "differential", "after a differential refresh with the new statement");
    expect_reason(conn, who.name, "NULL");
    PQfinish(conn);
    free(url);
    TH_LOG("migration 38: version 37's statements analysed again");
}

int
main(void)
{
    migration_t mig[MAX_MIGRATIONS];
    size_t nmig = migrations_list(mig);
    size_t nold = 0;
    while (nold < nmig && mig[nold].version <= OLD_VERSION)
        nold++;
    TH_ASSERT(nold > 0 && mig[nold - 1].version == OLD_VERSION && nold < nmig,
              "the tree has migrations up to %d and newer ones (%zu of %zu are old)", OLD_VERSION,
              nold, nmig);
    int newest = mig[nmig - 1].version;

    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");

    /* 1. Version 8. */
    migrate_to(env.pg_url, mig, nmig, OLD_VERSION);
    PGconn *conn = th_pg_connect(env.pg_url);
    th_sql(conn, "SET client_min_messages = warning");
    TH_ASSERT(th_sql_int(conn, "SELECT max(version) FROM sluice.schema_version") == OLD_VERSION,
              "the catalog is at version %d", OLD_VERSION);
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM pg_attribute WHERE attrelid = "
                         "'sluice.stream_table_catalog'::regclass AND attname = 'branches'") == 0,
              "the version-8 catalog has no column branches yet");
    TH_LOG("catalog at version %d", OLD_VERSION);

    /* 2. Live state at version 8. */
    th_sql(conn, "CREATE TABLE groups (grp int PRIMARY KEY, label text NOT NULL, o int);"
                 "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, n int, o text);"
                 "INSERT INTO groups SELECT g, 'group ' || g, g * 10 FROM generate_series(1, 20) g;"
                 "INSERT INTO items SELECT i, mod(i, 20) + 1, i, 'o' || i "
                 "  FROM generate_series(1, 300) i");
    for (size_t i = 0; i < NSTS; i++)
        th_sql(conn, "SELECT sluice.create_stream_table('%s', '%s', schedule => '1 hour')",
               sts[i].name, sts[i].query);
    long long items_oid = th_sql_int(conn, "SELECT 'items'::regclass::oid");
    long long groups_oid = th_sql_int(conn, "SELECT 'groups'::regclass::oid");
    char items_buf[64], groups_buf[64];
    snprintf(items_buf, sizeof items_buf, "%lld", items_oid);
    snprintf(groups_buf, sizeof groups_buf, "%lld", groups_oid);
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.cdc_sources s JOIN pg_class k ON k.oid = "
                         "s.buffer WHERE k.relkind = 'r' AND k.relname IN ('c_%s', 'c_%s')",
                         items_buf, groups_buf) == 2,
              "both sources are captured into buffer tables (version 8)");

    /* The aggregate's analysis as the version-8 engine stored it: the
     * affected groups from the change table, their rows recomputed. */
    TH_ASSERT(th_sql_int(conn,
                         "SELECT sluice._set_analysis(c.id, c.query, 'differential', NULL, "
                         "'aggregate (stored by the test)', "
                         "'SELECT DISTINCT grp FROM pg_temp.__sluice_chg_%s', "
                         "'SELECT grp, count(*) AS cnt, sum(n) AS total FROM public.items "
                         "WHERE grp IN (SELECT grp FROM pg_temp.__sluice_aff) GROUP BY grp', "
                         "NULL)::int FROM sluice.stream_table_catalog c WHERE c.name = 'st_agg'",
                         items_buf) == 1,
              "the version-8 analysis of st_agg is stored");

    /* Changes consumed by a version-8 refresh. */
    th_sql(conn, "INSERT INTO items SELECT i, mod(i, 20) + 1, i, 'o' || i "
                 "  FROM generate_series(301, 305) i;"
                 "UPDATE items SET n = n + 100 WHERE id BETWEEN 1 AND 4;"
                 "UPDATE groups SET o = o + 1 WHERE grp = 1");
    for (size_t i = 0; i < NSTS; i++) {
        char *rid = th_sql_text(conn, "SELECT sluice.refresh_stream_table('%s')", sts[i].name);
        TH_ASSERT(rid != NULL, "%s: the version-8 refresh finds changes", sts[i].name);
        free(rid);
        assert_equal(conn, &sts[i], "after the version-8 refresh");
    }
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE "
                               "last_refresh_mode = 'differential'") == 1 &&
                  th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE name "
                                   "= 'st_agg' AND last_refresh_mode = 'differential'") == 1,
              "at version 8 st_agg (analysed) refreshes differentially, the others in full");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s", items_buf) == 0 &&
                  th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s", groups_buf) == 0,
              "the version-8 refreshes pruned both buffers");
    /* Created after that refresh, so that they hold back no pruning. */
    th_sql(conn, "CREATE FUNCTION public.same_n(int) RETURNS int LANGUAGE sql AS 'SELECT $1'");
    th_sql(conn, "SELECT sluice.create_stream_table('%s', '%s', schedule => '1 hour')", vol.name,
           vol.query);
    th_sql(conn,
           "SELECT sluice.create_stream_table('%s_diff', '%s', 'differential', schedule => '1 "
           "hour')",
           vol.name, vol.query);
    th_sql(conn, "SELECT sluice.create_stream_table('st_rj', 'SELECT i.id, g.grp FROM items i "
                 "RIGHT JOIN groups g ON g.grp = i.grp', schedule => '1 hour')");
    th_sql(conn, "SELECT sluice.create_stream_table('st_lc', 'SELECT i.id, g.grp FROM items i "
                 "LEFT JOIN groups g ON g.grp = i.grp::bigint', schedule => '1 hour')");
    th_sql(conn, "SELECT sluice.create_stream_table('st_jg', 'SELECT g.grp, g.label, s.total FROM "
                 "groups g JOIN (SELECT grp, sum(n) AS total FROM items GROUP BY grp) s ON s.grp = "
                 "g.grp', schedule => '1 hour')");
    th_sql(conn, "SELECT sluice.create_stream_table('st_don', 'SELECT DISTINCT ON (grp) grp, id, "
                 "n FROM items ORDER BY grp, n DESC, id', schedule => '1 hour')");
    th_sql(conn, "SELECT sluice.create_stream_table('st_except', 'SELECT grp FROM items EXCEPT "
                 "SELECT grp FROM groups WHERE o > 2', schedule => '1 hour')");
    th_sql(conn, "CREATE TABLE prices (id int PRIMARY KEY, p numeric);"
                 "INSERT INTO prices VALUES (1, 1.50), (2, 2), (3, 3.0), (4, NULL)");
    th_sql(conn, "SELECT sluice.create_stream_table('st_price', 'SELECT p, count(*) AS n FROM "
                 "prices GROUP BY p', schedule => '1 hour')");

    /* Changes no refresh consumes before the upgrade. */
    th_sql(conn, "INSERT INTO items SELECT i, mod(i, 20) + 1, i, 'o' || i "
                 "  FROM generate_series(306, 312) i");
    th_sql(conn, "BEGIN;"
                 "UPDATE items SET n = n + 1 WHERE id BETWEEN 10 AND 14;"
                 "DELETE FROM items WHERE id IN (20, 21);"
                 "UPDATE items SET n = n + 1, o = 'twice' WHERE id = 10;"
                 "COMMIT");
    th_sql(conn, "UPDATE groups SET label = 'relabelled', o = NULL WHERE grp = 3");
    th_sql(conn, "BEGIN;"
                 "UPDATE items SET grp = 5 WHERE id = 30;"
                 "INSERT INTO items VALUES (313, 7, 3, NULL);"
                 "DELETE FROM items WHERE id = 313;"
                 "COMMIT");
    th_sql(conn, "DELETE FROM items WHERE id = 40");
    /* 7 + 10 + 2 + 2 (one transaction) + 2 + 1 + 1 (another) + 1 images. */
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s", items_buf) == 26,
              "the items buffer holds the 26 unconsumed images");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s", groups_buf) == 2,
              "the groups buffer holds the 2 unconsumed images");
    char *items_before = buffer_rows(conn, items_buf);
    char *groups_before = buffer_rows(conn, groups_buf);
    char *items_seq = th_sql_text(
        conn, "SELECT string_agg((seq * 1024)::text, ',' ORDER BY seq) FROM sluice_changes.c_%s",
        items_buf);
    char *groups_seq = th_sql_text(
        conn, "SELECT string_agg((seq * 1024)::text, ',' ORDER BY seq) FROM sluice_changes.c_%s",
        groups_buf);
    TH_ASSERT(strstr(items_before, "D ") != NULL && strstr(items_before, "I ") != NULL,
              "the items buffer holds inserts and deletes:\n%s", items_before);
    TH_LOG("version-8 state ready: 26 + 2 unconsumed images");

    /* 3. The upgrade. */
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    char *out = NULL;
    int rc = th_run(init, &out, RUN_MS);
    char want[128];
    snprintf(want, sizeof want, "schema sluice is at version %d (%zu migrations applied)", newest,
             nmig - nold);
    TH_ASSERT(rc == 0 && out != NULL && strstr(out, want) != NULL,
              "sluice init upgrades, saying \"%s\" (exit %d, output: %s)", want, rc,
              out ? out : "");
    free(out);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.schema_version") == (long long)nmig,
              "schema_version has one row per migration (%zu)", nmig);
    for (size_t i = 0; i < nmig; i++)
        TH_ASSERT(th_sql_int(conn,
                             "SELECT count(*) FROM sluice.schema_version WHERE version = %d AND "
                             "name = '%s'",
                             mig[i].version, mig[i].name) == 1,
                  "schema_version records %s", mig[i].name);
    TH_LOG("upgraded to version %d", newest);
    /* Migration 21 recorded the columns of each stored query's sources, and
     * which it reads. */
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog s WHERE NOT "
                               "EXISTS (SELECT 1 FROM sluice.stream_table_columns c WHERE "
                               "c.stream_table_id = s.id)") == 0,
              "every stream table made at version %d has its columns recorded", OLD_VERSION);
    char *jcols = th_sql_text(conn, "SELECT string_agg(c.relid::regclass || '.' || c.attname || "
                                    "' ' || c.type_name, ', ' ORDER BY c.relid::regclass::text, "
                                    "c.attnum) FROM sluice.stream_table_columns c JOIN "
                                    "sluice.stream_table_catalog s ON s.id = c.stream_table_id "
                                    "WHERE s.name = 'st_join' AND c.read");
    TH_ASSERT(jcols != NULL && strcmp(jcols, "groups.grp integer, groups.label text, groups.o "
                                             "integer, items.id integer, items.grp integer, "
                                             "items.n integer") == 0,
              "st_join's columns (%s)", jcols ? jcols : "NULL");
    free(jcols);

    /* 4. The conversion. */
    const char *bufs[2] = {items_buf, groups_buf};
    char *befores[2] = {items_before, groups_before};
    char *seqs[2] = {items_seq, groups_seq};
    for (int b = 0; b < 2; b++) {
        char *kinds =
            th_sql_text(conn,
                        "SELECT coalesce(string_agg(relname || '=' || relkind::text, ',' ORDER "
                        "BY relname), '') FROM pg_class WHERE relnamespace = "
                        "'sluice_changes'::regnamespace AND relname IN ('c_%s', "
                        "'c_%s_chunks')",
                        bufs[b], bufs[b]);
        char wk[128];
        snprintf(wk, sizeof wk, "c_%s=v,c_%s_chunks=r", bufs[b], bufs[b]);
        TH_ASSERT(strcmp(kinds, wk) == 0, "the buffer is a view over a chunk table (%s, want %s)",
                  kinds, wk);
        free(kinds);
        TH_ASSERT(th_sql_int(conn,
                             "SELECT count(*) FROM sluice.cdc_sources WHERE relid = %s AND buffer "
                             "= 'sluice_changes.c_%s'::regclass",
                             bufs[b], bufs[b]) == 1,
                  "sluice.cdc_sources.buffer names the view c_%s", bufs[b]);
        TH_ASSERT(th_sql_int(conn,
                             "SELECT count(*) FROM pg_depend d JOIN pg_rewrite r ON r.oid = "
                             "d.objid WHERE r.ev_class = 'sluice_changes.c_%s'::regclass AND "
                             "d.refobjid = 'sluice_changes.c_%s_chunks'::regclass",
                             bufs[b], bufs[b]) > 0,
                  "the view c_%s reads c_%s_chunks", bufs[b], bufs[b]);
        char *after = buffer_rows(conn, bufs[b]);
        TH_ASSERT(strcmp(after, befores[b]) == 0,
                  "buffer c_%s holds the same rows (op, txid, img in seq order):\n--- before\n%s\n"
                  "--- after\n%s",
                  bufs[b], befores[b], after);
        free(after);
        char *seq = th_sql_text(
            conn, "SELECT string_agg(seq::text, ',' ORDER BY seq) FROM sluice_changes.c_%s",
            bufs[b]);
        TH_ASSERT(seq != NULL && strcmp(seq, seqs[b]) == 0,
                  "each buffer seq s became s * 1024 (%s, want %s)", seq ? seq : "NULL", seqs[b]);
        free(seq);
        TH_ASSERT(th_sql_int(conn,
                             "SELECT count(*) FROM sluice_changes.c_%s_chunks WHERE n <> 1 OR "
                             "cardinality(imgs) <> 1",
                             bufs[b]) == 0,
                  "every converted row is a chunk of one image");
    }
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE "
                         "(analyzed_query IS NOT NULL AND name NOT LIKE 'st_vol%%' AND "
                         "name NOT IN ('st_rj', 'st_lc', 'st_jg', 'st_except')) OR branches IS NOT "
                         "NULL") == 0,
              "migration 9 cleared the stored analysis (and no stream table has branches; "
              "st_except, without a row identity, is decided FULL)");

    /* Migration 15: the volatile function decides FULL without the engine. */
    char *why = th_sql_text(conn,
                            "SELECT query_fallback || ' | ' || effective_mode || ' | ' || "
                            "fallback_reason || ' | ' || (analyzed_query = query) || ' | ' "
                            "|| status FROM sluice.stream_table_catalog WHERE name = '%s'",
                            vol.name);
    TH_ASSERT(why != NULL && strncmp(why, "volatile functions (public.same_n(integer))", 43) == 0 &&
                  strstr(why, " | full | volatile functions (public.same_n(integer))") != NULL &&
                  strstr(why, " | true | active") != NULL,
              "%s: migration 15 stored the reason and made it FULL, decided (%s)", vol.name,
              why ? why : "NULL");
    free(why);
    char *err = th_sql_text(conn,
                            "SELECT status || ': ' || last_error FROM sluice.stream_table_catalog "
                            "WHERE name = '%s_diff' AND effective_mode = 'full'",
                            vol.name);
    const char *want_err =
        "error: differential refresh is not possible: volatile functions (public.same_n(integer))";
    TH_ASSERT(err != NULL && strncmp(err, want_err, strlen(want_err)) == 0,
              "%s_diff (refresh_mode differential) is in error with the reason (%s)", vol.name,
              err ? err : "NULL");
    free(err);
    /* Its frontier would hold back the pruning of the items buffer. */
    th_sql(conn, "SELECT sluice.drop_stream_table('%s_diff')", vol.name);

    /* Migration 16: a RIGHT JOIN (nested in the jointree, which 15 did not
     * read) is FULL and decided without the engine. */
    why = th_sql_text(conn, "SELECT query_fallback || ' | ' || effective_mode || ' | ' || "
                            "(analyzed_query = query) FROM sluice.stream_table_catalog WHERE "
                            "name = 'st_rj'");
    TH_ASSERT(why != NULL && strncmp(why, "RIGHT and FULL joins are refreshed in full", 42) == 0 &&
                  strstr(why, " | full | true") != NULL,
              "st_rj: migration 16 stored the reason and made it FULL, decided (%s)",
              why ? why : "NULL");
    free(why);
    th_sql(conn, "SELECT sluice.drop_stream_table('st_rj')");

    /* Migration 17: a cast in a LEFT JOIN's ON, which 16 left to the
     * engine, is FULL and decided. */
    why = th_sql_text(conn, "SELECT query_fallback || ' | ' || effective_mode || ' | ' || "
                            "(analyzed_query = query) FROM sluice.stream_table_catalog WHERE "
                            "name = 'st_lc'");
    TH_ASSERT(
        why != NULL &&
            strncmp(why, "a LEFT JOIN is refreshed differentially only in a chain", 55) == 0 &&
            strstr(why, " | full | true") != NULL,
        "st_lc: migration 17 stored the reason and made it FULL, decided (%s)", why ? why : "NULL");
    free(why);
    th_sql(conn, "SELECT sluice.drop_stream_table('st_lc')");

    /* Migration 18: st_jg, a subquery that groups joined with a table,
     * loses the reason 16 gave it, but keeps the content identity it was
     * created with (identities are not derived again), so stays FULL with
     * that reason. */
    why = th_sql_text(conn, "SELECT coalesce(query_fallback, 'none') || ' | ' || effective_mode || "
                            "' | ' || fallback_reason || ' | ' || coalesce(key_columns::text, "
                            "'none') FROM sluice.stream_table_catalog WHERE name = 'st_jg'");
    TH_ASSERT(why != NULL &&
                  strncmp(why, "none | full | rows have no key (content identity): ", 51) == 0 &&
                  strstr(why, "re-validate it with sluice.alter_stream_table(name, query => <the "
                              "same query>)") != NULL &&
                  strstr(why, " | none") != NULL,
              "st_jg: migration 18 took back the reason, the content identity stays, and "
              "migration 26 says how to get a key (%s)",
              why ? why : "NULL");
    free(why);
    /* Doing what the reason says gives it one. */
    th_sql(conn, "SELECT sluice.alter_stream_table('st_jg', query => (SELECT query_as_given FROM "
                 "sluice.stream_table_catalog WHERE name = 'st_jg'))");
    why = th_sql_text(conn, "SELECT coalesce(key_columns::text, 'none') || ' | ' || "
                            "coalesce(fallback_reason, 'none') FROM sluice.stream_table_catalog "
                            "WHERE name = 'st_jg'");
    TH_ASSERT(why != NULL && strcmp(why, "{grp} | none") == 0,
              "st_jg: re-validated, it is keyed and left to the engine (%s)", why ? why : "NULL");
    free(why);
    th_sql(conn, "SELECT sluice.drop_stream_table('st_jg')");

    /* Migration 27: st_don, a DISTINCT ON, FULL by migration 15's reason,
     * loses it and is the engine's, with the identity it was created with
     * (every column); re-validated, it is keyed by the DISTINCT ON column. */
    why = th_sql_text(conn, "SELECT coalesce(query_fallback, 'none') || ' | ' || "
                            "coalesce(effective_mode, 'none') || ' | ' || "
                            "coalesce(fallback_reason, 'none') || ' | ' || "
                            "coalesce(key_columns::text, 'none') FROM sluice.stream_table_catalog "
                            "WHERE name = 'st_don'");
    TH_ASSERT(why != NULL && strcmp(why, "none | none | none | {grp,id,n}") == 0,
              "st_don: migration 27 took back the reason, the identity stays (%s)",
              why ? why : "NULL");
    free(why);
    th_sql(conn, "SELECT sluice.alter_stream_table('st_don', query => (SELECT query_as_given FROM "
                 "sluice.stream_table_catalog WHERE name = 'st_don'))");
    why = th_sql_text(conn, "SELECT coalesce(key_columns::text, 'none') || ' | ' || "
                            "coalesce(fallback_reason, 'none') FROM sluice.stream_table_catalog "
                            "WHERE name = 'st_don'");
    TH_ASSERT(why != NULL && strcmp(why, "{grp} | none") == 0,
              "st_don: re-validated, it is keyed by grp and left to the engine (%s)",
              why ? why : "NULL");
    free(why);
    th_sql(conn, "SELECT sluice.drop_stream_table('st_don')");

    /* Migration 28: st_except, an EXCEPT, FULL by migration 15's reason,
     * loses it but keeps the content identity it was created with: FULL
     * with migration 26's reason; re-validated, it is keyed by its column
     * and left to the engine. */
    why = th_sql_text(conn, "SELECT coalesce(query_fallback, 'none') || ' | ' || "
                            "coalesce(effective_mode, 'none') || ' | ' || "
                            "coalesce(key_columns::text, 'none') || ' | ' || "
                            "coalesce(fallback_reason, 'none') FROM sluice.stream_table_catalog "
                            "WHERE name = 'st_except'");
    TH_ASSERT(why != NULL &&
                  strncmp(why,
                          "none | full | none | rows have no key (content identity): the stream "
                          "table was created before sluice gave its query a row identity; "
                          "re-validate it",
                          146) == 0,
              "st_except: migration 28 took back the reason, FULL for its identity (%s)",
              why ? why : "NULL");
    free(why);
    th_sql(conn, "SELECT sluice.alter_stream_table('st_except', query => (SELECT query_as_given "
                 "FROM sluice.stream_table_catalog WHERE name = 'st_except'))");
    why = th_sql_text(conn, "SELECT coalesce(key_columns::text, 'none') || ' | ' || "
                            "coalesce(fallback_reason, 'none') FROM sluice.stream_table_catalog "
                            "WHERE name = 'st_except'");
    TH_ASSERT(why != NULL && strcmp(why, "{grp} | none") == 0,
              "st_except: re-validated, it is keyed by grp and left to the engine (%s)",
              why ? why : "NULL");
    free(why);
    th_sql(conn, "SELECT sluice.drop_stream_table('st_except')");

    /* Migration 30: st_price, keyed by a numeric without a scale, keeps
     * the ids it was created with (md5 of the values as printed); every
     * other stream table hashes keys in their equal form, which gives them
     * the same ids. Given its query again, st_price gets that form: the
     * rows of 1.50 and 3.0 leave under their old ids and come back under
     * the new ones (those of 1.5 and 3); 2 and NULL keep theirs. */
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE "
                               "identity_version = 1") == 1 &&
                  th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE "
                                   "name = 'st_price' AND identity_version = 1") == 1,
              "st_price alone keeps identity version 1");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM st_price WHERE __sluice_row_id = "
                               "md5(jsonb_build_array(p)::text)::uuid") == 4,
              "st_price's ids are still those of its values as printed");
    why = th_sql_text(conn, "SELECT value FROM sluice.explain_stream_table('st_price') WHERE "
                            "property = 'row identity'");
    TH_ASSERT(why != NULL && strcmp(why, "key (p), its values hashed as printed (made before "
                                         "version 30): give the stream table its query again "
                                         "(alter_stream_table) to hash equal values alike") == 0,
              "explain_stream_table says how to change st_price's ids (%s)", why ? why : "NULL");
    free(why);
    long long before_price = th_sql_int(conn, "SELECT coalesce(max(id), 0) FROM sluice.outbox");
    th_sql(conn, "SELECT sluice.alter_stream_table('st_price', query => (SELECT query_as_given "
                 "FROM sluice.stream_table_catalog WHERE name = 'st_price'))");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                               "'st_price' AND identity_version = 2") == 1 &&
                  th_sql_int(conn, "SELECT count(*) FROM st_price WHERE __sluice_row_id = "
                                   "md5(jsonb_build_array(trim_scale(p))::text)::uuid") == 4,
              "st_price, given its query again, hashes its values in their equal form");
    why = th_sql_text(conn, "SELECT value FROM sluice.explain_stream_table('st_price') WHERE "
                            "property = 'row identity'");
    TH_ASSERT(why != NULL && strcmp(why, "key (p)") == 0,
              "and explain_stream_table says no more (%s)", why ? why : "NULL");
    free(why);
    why = th_sql_text(conn,
                      "SELECT string_agg(op || ' ' || (payload->'before')::text || ' ' || "
                      "(payload->'after')::text || ' ' || (key::uuid = md5(jsonb_build_array("
                      "trim_scale((coalesce(payload->'after', payload->'before')->>'p')::numeric)"
                      ")::text)::uuid)::text, '; ' ORDER BY op, payload::text) FROM sluice.outbox "
                      "WHERE topic = 'st_price' AND id > %lld",
                      before_price);
    TH_ASSERT(why != NULL && strcmp(why, "delete {\"n\": 1, \"p\": 1.50} null false; "
                                         "delete {\"n\": 1, \"p\": 3.0} null false; "
                                         "insert null {\"n\": 1, \"p\": 1.50} true; "
                                         "insert null {\"n\": 1, \"p\": 3.0} true") == 0,
              "st_price: 1.50 and 3.0 published under their new ids (%s)", why ? why : "NULL");
    free(why);
    th_sql(conn, "SELECT sluice.drop_stream_table('st_price'); DROP TABLE prices");

    /* Migration 17: st_derived, which 16 decided FULL, is the engine's again. */
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                         "'st_derived' AND query_fallback IS NULL AND analyzed_query IS NULL AND "
                         "effective_mode IS NULL AND key_columns = '{grp}'") == 1,
              "st_derived: migration 17 took back migration 16's reason");
    /* Migration 22: the same for st_left_filter. */
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                         "'st_left_filter' AND query_fallback IS NULL AND analyzed_query IS NULL "
                         "AND effective_mode IS NULL AND key_columns = '{id,grp}'") == 1,
              "st_left_filter: migration 22 took back the stored reason");
    /* Migration 23: the same for st_left_group. */
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                         "'st_left_group' AND query_fallback IS NULL AND analyzed_query IS NULL "
                         "AND effective_mode IS NULL AND key_columns = '{label}'") == 1,
              "st_left_group: migration 23 took back the stored reason");
    /* Migration 27: the same for st_with. */
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                         "'st_with' AND query_fallback IS NULL AND analyzed_query IS NULL AND "
                         "effective_mode IS NULL AND key_columns = '{grp}'") == 1,
              "st_with: migration 27 took back the stored reason");
    /* Migration 28: the same for st_union, keyed by all its columns. */
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                         "'st_union' AND query_fallback IS NULL AND analyzed_query IS NULL AND "
                         "effective_mode IS NULL AND key_columns = '{grp,n}'") == 1,
              "st_union: migration 28 took back the stored reason");
    /* Migration 29: every stream table has the settings it is refreshed
     * with, those of the session that ran the upgrade. */
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE settings "
                               "->> 'TimeZone' = current_setting('TimeZone') AND settings ? "
                               "'DateStyle'") == th_sql_int(conn, "SELECT count(*) FROM "
                                                                  "sluice.stream_table_catalog") &&
                  th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog") > 0,
              "migration 29 recorded the upgrading session's settings for every stream table");

    /* The capture now writes chunks: one statement of 3 rows, one chunk. */
    th_sql(conn, "BEGIN;"
                 "INSERT INTO items SELECT i, 1, i, NULL FROM generate_series(400, 402) i");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice_changes.c_%s_chunks WHERE txid = "
                         "pg_current_xact_id() AND op = 'I' AND n = 3",
                         items_buf) == 1,
              "the insert of 3 rows wrote one chunk of 3 images");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice_changes.c_%s WHERE txid = "
                         "pg_current_xact_id() AND op = 'I' AND img = jsonb_build_object('id', "
                         "(img->>'id')::int, 'grp', 1, 'n', (img->>'id')::int, 'o', NULL) AND "
                         "(img->>'id')::int BETWEEN 400 AND 402 AND seq > (SELECT max(seq) FROM "
                         "sluice_changes.c_%s WHERE txid < pg_current_xact_id())",
                         items_buf, items_buf) == 3,
              "the view reads its 3 images, after the converted rows");
    th_sql(conn, "ROLLBACK");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s", items_buf) == 26,
              "the rolled-back insert left the buffer as it was");

    /* 5. Analyse again, then refresh. */
    const char *const eng[] = {SLUICE_BIN, "engine", "--db", env.pg_url, "--once", NULL};
    rc = th_run(eng, NULL, RUN_MS);
    TH_ASSERT(rc == 0, "sluice engine --once succeeds (exit %d)", rc);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.stream_table_catalog WHERE "
                               "analyzed_query = query AND effective_mode = 'differential' AND "
                               "status = 'active'") == (long long)NSTS,
              "the engine analysed every stream table as differential");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s", items_buf) == 26 &&
                  th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s", groups_buf) == 2,
              "the engine refreshed nothing (no stream table is due): the changes are still "
              "unconsumed");
    refresh_all(conn, "differential", "of the pre-upgrade changes");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.stream_table_catalog WHERE name = "
                         "'%s' AND effective_mode = 'full' AND analyzed_query = query",
                         vol.name) == 1,
              "%s: the engine left the decision of migration 15 alone", vol.name);
    TH_ASSERT(st_diff(conn, &vol) > 0, "%s: the changes reach it", vol.name);
    char *vrid = th_sql_text(conn, "SELECT sluice.refresh_stream_table('%s')", vol.name);
    TH_ASSERT(vrid != NULL &&
                  th_sql_int(conn,
                             "SELECT count(*) FROM sluice.refresh_history WHERE refresh_id = %s "
                             "AND mode = 'full'",
                             vrid) == 1,
              "%s: refreshed in full", vol.name);
    free(vrid);
    assert_equal(conn, &vol, "after its FULL refresh");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s", items_buf) == 0 &&
                  th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s_chunks", items_buf) ==
                      0 &&
                  th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s", groups_buf) == 0,
              "the refreshes pruned the converted chunks");
    TH_LOG("pre-upgrade changes refreshed");

    /* Changes captured in chunks after the upgrade. */
    th_sql(conn, "INSERT INTO items SELECT i, mod(i, 20) + 1, i * 7, NULL "
                 "  FROM generate_series(500, 520) i");
    th_sql(conn, "BEGIN;"
                 "UPDATE items SET n = n + 2 WHERE id BETWEEN 100 AND 110;"
                 "DELETE FROM items WHERE grp = 9 AND id < 100;"
                 "UPDATE groups SET label = 'again' WHERE grp IN (4, 9);"
                 "COMMIT");
    th_sql(conn, "UPDATE items SET grp = 2 WHERE id = 505");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%s_chunks WHERE n > 1",
                         items_buf) >= 2,
              "the new changes are in chunks of several images");
    refresh_all(conn, "differential", "of changes captured after the upgrade");
    TH_LOG("post-upgrade changes refreshed");

    free(items_before);
    free(groups_before);
    free(items_seq);
    free(groups_seq);
    PQfinish(conn);

    semi_join_upgrade(&env, mig, nmig, newest);
    return 0;
}
