/*
 * tests/integration/0014_cdc.c - change capture for stream tables
 * (cdc/sql/0004_cdc.sql, docs/cdc.md): triggers that copy every change of a
 * source table into its buffer sluice_changes.c_<oid>.
 *
 *   1. Attach: the buffer, the catalog row and four triggers; a second
 *      attach returns the same buffer and changes nothing; views,
 *      materialized views, partitions, temporary tables, sluice's own tables
 *      and NULL are refused with a clear error naming the relation.
 *   2. Buffer rows: INSERT (one and many rows), UPDATE (all 'D' images, then
 *      all 'I' images, in seq order, one txid: the writer's), a primary-key
 *      change, DELETE, NULL values (JSON null) and TRUNCATE ('T', img NULL);
 *      a rolled-back statement leaves nothing.
 *   3. The window predicate of the file header, with two snapshots: a
 *      transaction in progress at snapshot A and committed later, and one
 *      that commits after A, are in window (A, B] and not in (P, A]; one
 *      still in progress at B is in neither; a change committed before A is
 *      in (P, A] only.
 *   4. cdc_prune deletes exactly the rows visible in the given snapshot,
 *      returns their count, and keeps rows of a transaction in progress at
 *      that snapshot.
 *   5. DDL: ALTER TABLE ADD COLUMN and DROP COLUMN while a writer session
 *      keeps its cached plans: its INSERT/UPDATE/DELETE keep working and the
 *      images follow the new columns.
 *   6. A writer role with only INSERT/UPDATE/DELETE on the source (no right
 *      on sluice_changes at all) writes, and its changes are captured.
 *   7. Partitioned tables: capture on the parent covers writes through the
 *      parent, writes addressed to a partition and rows moving between
 *      partitions; a partition created later is captured once cdc_attach is
 *      called again.
 *   8. Detach: triggers (also on partitions), functions, buffer and catalog
 *      row are gone and writes still work; detaching a dropped source by its
 *      oid removes the leftovers; a second detach is a no-op.
 *   9. Column names n and o (the transition tables' aliases).
 *  10. Chunks (cdc/sql/0010_cdc_chunks.sql): a 2,500-row INSERT is three
 *      chunks of at most 1,000 images read back as 2,500 buffer rows
 *      with distinct increasing seqs; large images close a chunk early (by
 *      size); images of columns of many types equal to_jsonb(row); cdc_prune
 *      counts images, not chunks; the buffer view cannot be written.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUN_MS 60000

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

/* Runs sql, which must fail with SQLSTATE `state` and a primary message
 * containing `want`, and, when hint_part is not NULL, a hint containing it. */
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
    bool ok = st == PGRES_FATAL_ERROR && msg != NULL && strstr(msg, want) != NULL && code != NULL &&
              strcmp(code, state) == 0 &&
              (hint_part == NULL || (hint != NULL && strstr(hint, hint_part) != NULL));
    PQclear(res);
    if (!ok)
        th_fail_at(__FILE__, line, NULL, "`%s` fails with [%s] \"%s\" (hint \"%s\"), got: %s", sql,
                   state, want, hint_part ? hint_part : "", got);
}
#define expect_error(conn, state, want, hint, sql) \
    expect_error_at(__LINE__, (conn), (state), (want), (hint), (sql))

/* Compares and frees got. */
static void
expect_text_at(int line, char *got, const char *want, const char *what)
{
    if (got == NULL || strcmp(got, want) != 0)
        th_fail_at(__FILE__, line, NULL, "%s:\n    want \"%s\"\n    got  \"%s\"", what, want,
                   got ? got : "NULL");
    free(got);
}
#define expect_text(got, want, what) expect_text_at(__LINE__, (got), (want), (what))

static long long
oid_of(PGconn *conn, const char *rel)
{
    return th_sql_int(conn, "SELECT '%s'::regclass::oid", rel);
}

/* The highest seq of the buffer of source oid (0 when empty). */
static long long
last_seq(PGconn *conn, long long oid)
{
    return th_sql_int(conn, "SELECT coalesce(max(seq), 0) FROM sluice_changes.c_%lld", oid);
}

/* The buffer rows of source oid after seq `after`, in seq order, as
 * "op img | op img | ..." ("T" alone for a TRUNCATE; "" when none). */
static char *
changes_since(PGconn *conn, long long oid, long long after)
{
    return th_sql_text(
        conn,
        "SELECT coalesce(string_agg(op::text || coalesce(' ' || img::text, ''), ' | ' "
        "ORDER BY seq), '') FROM sluice_changes.c_%lld WHERE seq > %lld",
        oid, after);
}

/* The ids (img->>'id') of the buffer rows of source oid in window (prev,
 * cur], with the predicate of cdc/sql/0004_cdc.sql, sorted, comma-separated. */
static char *
window_ids(PGconn *conn, long long oid, const char *prev, const char *cur)
{
    return th_sql_text(conn,
                       "SELECT coalesce(string_agg(img->>'id', ',' ORDER BY (img->>'id')::int), "
                       "'') FROM sluice_changes.c_%lld "
                       "WHERE txid >= pg_snapshot_xmin('%s'::pg_snapshot) "
                       "AND NOT pg_visible_in_snapshot(txid, '%s'::pg_snapshot) "
                       "AND pg_visible_in_snapshot(txid, '%s'::pg_snapshot)",
                       oid, prev, prev, cur);
}

/* Number of sluice capture triggers on rel. */
static long long
capture_triggers(PGconn *conn, const char *rel)
{
    return th_sql_int(conn,
                      "SELECT count(*) FROM pg_trigger WHERE tgrelid = '%s'::regclass "
                      "AND tgname LIKE 'sluice\\_capture\\_%%'",
                      rel);
}

static PGconn *
connect_as(th_env_t *env, const char *user)
{
    char url[600];
    snprintf(url, sizeof url, "host=127.0.0.1 port=%d dbname=postgres user=%s", env->pg_port, user);
    return th_pg_connect(url);
}

/* ------------------------------------------------------------------------ */
/* 1. attach                                                                 */
/* ------------------------------------------------------------------------ */

static void
check_attach(PGconn *conn)
{
    TH_LOG("attach: buffer, catalog row, four triggers; idempotent");
    th_sql(conn, "CREATE SCHEMA app; CREATE TABLE app.orders (id int PRIMARY KEY, customer "
                 "text, amount numeric, note text)");
    long long oid = oid_of(conn, "app.orders");
    char want[128], row[160];
    snprintf(want, sizeof want, "sluice_changes.c_%lld", oid);
    snprintf(row, sizeof row, "app.orders|%s", want);
    expect_text(th_sql_text(conn, "SELECT sluice.cdc_attach('app.orders')::text"), want,
                "cdc_attach returns the buffer");
    expect_text(th_sql_text(conn,
                            "SELECT relname || '|' || buffer::text FROM sluice.cdc_sources "
                            "WHERE relid = %lld",
                            oid),
                row, "the catalog row");
    TH_ASSERT(capture_triggers(conn, "app.orders") == 4, "four capture triggers on app.orders");
    expect_text(th_sql_text(conn,
                            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), "
                            "', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = "
                            "'sluice_changes.c_%lld'::regclass AND attnum > 0",
                            oid),
                "seq bigint, txid xid8, op \"char\", img jsonb", "the buffer's columns");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM pg_class WHERE oid = "
                         "'sluice_changes.c_%lld'::regclass AND relkind = 'v'",
                         oid) == 1,
              "the buffer is a view (over its chunk table)");
    expect_text(th_sql_text(conn,
                            "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), "
                            "', ' ORDER BY attnum) FROM pg_attribute WHERE attrelid = "
                            "'sluice_changes.c_%lld_chunks'::regclass AND attnum > 0",
                            oid),
                "seq bigint, txid xid8, op \"char\", n integer, imgs json[]",
                "the chunk table's columns");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM pg_index WHERE indrelid = "
                         "'sluice_changes.c_%lld_chunks'::regclass AND indkey::text = '2'",
                         oid) == 1,
              "the chunk table has an index on txid");

    th_sql(conn, "INSERT INTO app.orders VALUES (100, 'keep', 1, NULL)");
    expect_text(th_sql_text(conn, "SELECT sluice.cdc_attach('app.orders')::text"), want,
                "a second cdc_attach returns the same buffer");
    TH_ASSERT(capture_triggers(conn, "app.orders") == 4, "still four triggers after re-attach");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.cdc_sources") == 1,
              "still one catalog row after re-attach");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%lld", oid) == 1,
              "re-attach keeps the captured row");
    th_sql(conn, "DELETE FROM app.orders WHERE id = 100");

    TH_LOG("attach: relations that cannot be captured are refused clearly");
    th_sql(conn,
           "CREATE VIEW app.big_orders AS SELECT id, amount FROM app.orders WHERE amount > 10");
    expect_error(conn, "42809", "app.big_orders is a view, not a table",
                 "Capture the tables the view reads", "SELECT sluice.cdc_attach('app.big_orders')");
    th_sql(conn, "CREATE MATERIALIZED VIEW app.mv AS SELECT 1 AS x");
    expect_error(conn, "42809", "app.mv is a materialized view", NULL,
                 "SELECT sluice.cdc_attach('app.mv')");
    th_sql(conn, "CREATE TEMP TABLE scratch (x int)");
    expect_error(conn, "42809", "is a temporary table", NULL,
                 "SELECT sluice.cdc_attach('scratch')");
    expect_error(conn, "42809", "sluice.outbox belongs to sluice", NULL,
                 "SELECT sluice.cdc_attach('sluice.outbox')");
    expect_error(conn, "22004", "the table is NULL", NULL, "SELECT sluice.cdc_attach(NULL)");
    th_sql(conn, "CREATE SEQUENCE app.s");
    expect_error(conn, "42809", "app.s is not a table", NULL, "SELECT sluice.cdc_attach('app.s')");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.cdc_sources") == 1,
              "refused attaches left no catalog row");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM pg_trigger WHERE tgname LIKE "
                         "'sluice\\_capture\\_%%' AND tgrelid <> 'app.orders'::regclass") == 0,
              "refused attaches left no trigger");
}

/* ------------------------------------------------------------------------ */
/* 2. buffer rows                                                            */
/* ------------------------------------------------------------------------ */

static void
check_buffer_rows(PGconn *conn)
{
    long long oid = oid_of(conn, "app.orders");
    long long mark = last_seq(conn, oid);

    TH_LOG("buffer: INSERT, one row and many rows, with NULLs");
    th_sql(conn, "INSERT INTO app.orders VALUES (1, 'ann', 10.5, NULL)");
    th_sql(conn, "INSERT INTO app.orders VALUES (2, 'bob', 20, 'x'), (3, NULL, NULL, NULL)");
    expect_text(changes_since(conn, oid, mark),
                "I {\"id\": 1, \"note\": null, \"amount\": 10.5, \"customer\": \"ann\"} | "
                "I {\"id\": 2, \"note\": \"x\", \"amount\": 20, \"customer\": \"bob\"} | "
                "I {\"id\": 3, \"note\": null, \"amount\": null, \"customer\": null}",
                "INSERTs give one 'I' row per row, NULLs as JSON null");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(DISTINCT txid) FROM sluice_changes.c_%lld WHERE seq > %lld",
                         oid, mark) == 2,
              "two INSERT statements in autocommit: two txids");

    TH_LOG("buffer: a multi-row UPDATE writes all 'D' images, then all 'I' images, one txid");
    mark = last_seq(conn, oid);
    th_sql(conn, "BEGIN");
    th_sql(conn, "UPDATE app.orders SET amount = coalesce(amount, 0) + 1");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice_changes.c_%lld WHERE seq > %lld AND txid = "
                         "pg_current_xact_id()",
                         oid, mark) == 6,
              "the 6 rows of the UPDATE carry the writer's txid");
    th_sql(conn, "COMMIT");
    expect_text(th_sql_text(conn,
                            "SELECT string_agg(op::text, '' ORDER BY seq) || ' ' || "
                            "(max(seq) - min(seq))::text FROM sluice_changes.c_%lld WHERE seq > "
                            "%lld",
                            oid, mark),
                "DDDIII 1026",
                "UPDATE of 3 rows: D D D then I I I (a chunk of each: seqs s*1024 + 0..2, then "
                "(s+1)*1024 + 0..2)");
    expect_text(
        th_sql_text(conn,
                    "SELECT string_agg(op::text || (img->>'id') || '=' || coalesce(img->>'amount', "
                    "'null'), ' ' ORDER BY op DESC, (img->>'id')::int) FROM "
                    "sluice_changes.c_%lld WHERE seq > %lld",
                    oid, mark),
        "I1=11.5 I2=21 I3=1 D1=10.5 D2=20 D3=null",
        "the UPDATE's old images ('D') and new images ('I')");

    TH_LOG("buffer: a primary-key change is the old key's 'D' and the new key's 'I'");
    mark = last_seq(conn, oid);
    th_sql(conn, "UPDATE app.orders SET id = 30 WHERE id = 3");
    expect_text(changes_since(conn, oid, mark),
                "D {\"id\": 3, \"note\": null, \"amount\": 1, \"customer\": null} | "
                "I {\"id\": 30, \"note\": null, \"amount\": 1, \"customer\": null}",
                "primary-key change");

    TH_LOG("buffer: DELETE, a rolled-back statement, a statement changing no row, TRUNCATE");
    mark = last_seq(conn, oid);
    th_sql(conn, "DELETE FROM app.orders WHERE id IN (1, 30)");
    expect_text(
        th_sql_text(conn,
                    "SELECT string_agg(op::text || (img->>'id'), ' ' ORDER BY (img->>'id')::int) "
                    "FROM sluice_changes.c_%lld WHERE seq > %lld",
                    oid, mark),
        "D1 D30", "DELETE of two rows: two 'D' rows with the deleted images");
    mark = last_seq(conn, oid);
    th_sql(conn, "BEGIN; INSERT INTO app.orders VALUES (99, 'gone', 1, NULL); ROLLBACK");
    th_sql(conn, "BEGIN; SAVEPOINT a; DELETE FROM app.orders; ROLLBACK TO a; COMMIT");
    th_sql(conn, "UPDATE app.orders SET note = 'none' WHERE id = -1");
    expect_text(changes_since(conn, oid, mark), "",
                "rolled-back statements and a statement that changes no row leave nothing");
    th_sql(conn, "TRUNCATE app.orders");
    expect_text(changes_since(conn, oid, mark), "T", "TRUNCATE writes one 'T' row, img NULL");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice_changes.c_%lld WHERE seq > %lld AND op = "
                         "'T' AND img IS NULL",
                         oid, mark) == 1,
              "the 'T' row's img is SQL NULL");
}

/* ------------------------------------------------------------------------ */
/* 3. window predicate, 4. prune                                             */
/* ------------------------------------------------------------------------ */

static void
check_window_and_prune(th_env_t *env, PGconn *conn)
{
    TH_LOG("window: (prev, cur] by snapshot visibility, with transactions in progress");
    long long oid = oid_of(conn, "app.orders");
    th_sql(conn, "DELETE FROM sluice_changes.c_%lld_chunks", oid);
    PGconn *w2 = th_pg_connect(env->pg_url);
    PGconn *w3 = th_pg_connect(env->pg_url);

    char *snap_p = th_sql_text(conn, "SELECT pg_current_snapshot()::text");
    th_sql(conn, "INSERT INTO app.orders VALUES (10, 'before A', 1, NULL)");
    th_sql(w2, "BEGIN; INSERT INTO app.orders VALUES (11, 'in progress at A', 1, NULL)");
    char *snap_a = th_sql_text(conn, "SELECT pg_current_snapshot()::text");
    th_sql(w2, "COMMIT");
    th_sql(conn, "INSERT INTO app.orders VALUES (12, 'after A', 1, NULL)");
    th_sql(w3, "BEGIN; INSERT INTO app.orders VALUES (13, 'in progress at B', 1, NULL)");
    char *snap_b = th_sql_text(conn, "SELECT pg_current_snapshot()::text");

    expect_text(window_ids(conn, oid, snap_p, snap_a), "10",
                "window (P, A]: only the row "
                "committed before A");
    expect_text(window_ids(conn, oid, snap_a, snap_b), "11,12",
                "window (A, B]: the row in progress at A and the row committed after A");
    th_sql(w3, "COMMIT");
    expect_text(window_ids(conn, oid, snap_a, snap_b), "11,12",
                "window (A, B]: a transaction in progress at B stays out after it commits");
    char *snap_c = th_sql_text(conn, "SELECT pg_current_snapshot()::text");
    expect_text(window_ids(conn, oid, snap_b, snap_c), "13",
                "window (B, C]: the transaction that was in progress at B");
    expect_text(window_ids(conn, oid, snap_p, snap_c), "10,11,12,13",
                "window (P, C] holds all four");

    TH_LOG("prune: deletes exactly the rows visible in the snapshot");
    th_sql(w3, "BEGIN; INSERT INTO app.orders VALUES (14, 'in progress at D', 1, NULL)");
    /* A later transaction commits first, so 14's txid is below D's xmax and
     * only D's list of transactions in progress keeps it. */
    th_sql(conn, "INSERT INTO app.orders VALUES (15, 'committed before D', 1, NULL)");
    char *snap_d = th_sql_text(conn, "SELECT pg_current_snapshot()::text");
    th_sql(w3, "COMMIT");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.cdc_prune('app.orders', '%s')", snap_a) == 1,
              "prune at A deletes one row (id 10)");
    expect_text(th_sql_text(conn,
                            "SELECT string_agg(img->>'id', ',' ORDER BY seq) FROM "
                            "sluice_changes.c_%lld",
                            oid),
                "11,12,13,14,15", "prune at A kept the rows A does not see");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.cdc_prune('app.orders', '%s')", snap_a) == 0,
              "a second prune at A deletes nothing");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.cdc_prune('app.orders', '%s')", snap_d) == 4,
              "prune at D deletes 11, 12, 13, 15");
    expect_text(th_sql_text(conn,
                            "SELECT string_agg(img->>'id', ',' ORDER BY seq) FROM "
                            "sluice_changes.c_%lld",
                            oid),
                "14", "prune at D kept the row of the transaction in progress at D");
    expect_error(conn, "42704", "app.big_orders is not captured", "sluice.cdc_attach",
                 "SELECT sluice.cdc_prune('app.big_orders', pg_current_snapshot())");
    expect_error(conn, "22004", "keep_before is NULL", NULL,
                 "SELECT sluice.cdc_prune('app.orders', NULL)");

    free(snap_p);
    free(snap_a);
    free(snap_b);
    free(snap_c);
    free(snap_d);
    PQfinish(w2);
    PQfinish(w3);
}

/* ------------------------------------------------------------------------ */
/* 5. DDL, 6. writer role                                                    */
/* ------------------------------------------------------------------------ */

static void
check_ddl_and_writer(th_env_t *env, PGconn *conn)
{
    TH_LOG("DDL: ADD/DROP COLUMN under a writer with cached plans; a writer with only DML rights");
    th_sql(conn, "CREATE ROLE t0014_writer LOGIN; GRANT USAGE ON SCHEMA app TO t0014_writer; "
                 "GRANT INSERT, UPDATE, DELETE ON app.orders TO t0014_writer");
    long long oid = oid_of(conn, "app.orders");
    th_sql(conn, "TRUNCATE app.orders");
    long long mark = last_seq(conn, oid);

    PGconn *w = connect_as(env, "t0014_writer");
    expect_error(w, "42501", "permission denied for schema sluice_changes", NULL,
                 "SELECT 1 FROM sluice_changes.c_1");
    /* Warm the writer's cached plans of all four trigger functions. */
    th_sql(w, "INSERT INTO app.orders VALUES (1, 'w', 1, NULL)");
    th_sql(w, "UPDATE app.orders SET amount = 2");
    th_sql(w, "DELETE FROM app.orders");
    th_sql(w, "INSERT INTO app.orders VALUES (2, 'w', 1, NULL)");
    expect_text(changes_since(conn, oid, mark),
                "I {\"id\": 1, \"note\": null, \"amount\": 1, \"customer\": \"w\"} | "
                "D {\"id\": 1, \"note\": null, \"amount\": 1, \"customer\": \"w\"} | "
                "I {\"id\": 1, \"note\": null, \"amount\": 2, \"customer\": \"w\"} | "
                "D {\"id\": 1, \"note\": null, \"amount\": 2, \"customer\": \"w\"} | "
                "I {\"id\": 2, \"note\": null, \"amount\": 1, \"customer\": \"w\"}",
                "the DML-only writer's changes are captured");

    mark = last_seq(conn, oid);
    th_sql(conn, "ALTER TABLE app.orders ADD COLUMN region text DEFAULT 'eu'");
    th_sql(w, "INSERT INTO app.orders (id, customer, amount) VALUES (3, 'w', 3)");
    /* Without SELECT rights the writer cannot use WHERE: it changes every row. */
    th_sql(w, "UPDATE app.orders SET amount = 4");
    th_sql(conn, "ALTER TABLE app.orders DROP COLUMN note");
    th_sql(w, "INSERT INTO app.orders (id, customer, amount, region) VALUES (4, 'w', 5, 'us')");
    th_sql(w, "DELETE FROM app.orders");
    expect_text(
        th_sql_text(conn,
                    "SELECT string_agg(op::text || (img->>'id') || ':' || (img->>'amount') "
                    "|| ':' || coalesce(img->>'region', '-') || ':' || (img ? 'note')::text, "
                    "' ' ORDER BY seq) FROM sluice_changes.c_%lld WHERE seq > %lld",
                    oid, mark),
        "I3:3:eu:true D2:1:eu:true D3:3:eu:true I2:4:eu:true I3:4:eu:true "
        "I4:5:us:false D2:4:eu:false D3:4:eu:false D4:5:us:false",
        "after ADD COLUMN and DROP COLUMN the writer works and images follow "
        "(op id:amount:region:has note)");
    expect_text(th_sql_text(conn,
                            "SELECT string_agg(format('%%s|%%s|%%s', r.id, r.amount, r.region), "
                            "' ' ORDER BY seq) FROM sluice_changes.c_%lld b, "
                            "jsonb_populate_record(NULL::app.orders, b.img) r WHERE seq > %lld",
                            oid, mark),
                "3|3|eu 2|1|eu 3|3|eu 2|4|eu 3|4|eu 4|5|us 2|4|eu 3|4|eu 4|5|us",
                "images read back as rows of the current table");
    PQfinish(w);
    th_sql(conn, "TRUNCATE app.orders");
}

/* ------------------------------------------------------------------------ */
/* 7. partitioned tables                                                     */
/* ------------------------------------------------------------------------ */

static void
check_partitioned(PGconn *conn)
{
    TH_LOG("partitioned: parent, direct partition writes, row movement, later partitions");
    th_sql(conn, "CREATE TABLE app.events (id int, k int, v text) PARTITION BY RANGE (k); "
                 "CREATE TABLE app.events_a PARTITION OF app.events FOR VALUES FROM (0) TO (10); "
                 /* Different column order: images are keyed by name. */
                 "CREATE TABLE app.events_b (v text, k int, id int); "
                 "ALTER TABLE app.events ATTACH PARTITION app.events_b FOR VALUES FROM (10) TO "
                 "(20)");
    expect_error(conn, "42809", "app.events_a is a partition of app.events",
                 "sluice.cdc_attach('app.events')", "SELECT sluice.cdc_attach('app.events_a')");
    th_sql(conn, "SELECT sluice.cdc_attach('app.events')");
    long long oid = oid_of(conn, "app.events");
    TH_ASSERT(capture_triggers(conn, "app.events") == 4 &&
                  capture_triggers(conn, "app.events_a") == 4 &&
                  capture_triggers(conn, "app.events_b") == 4,
              "triggers on the parent and on both partitions");

    th_sql(conn, "INSERT INTO app.events VALUES (1, 1, 'a'), (2, 15, 'b')");
    th_sql(conn, "INSERT INTO app.events_b VALUES ('c', 16, 3)");
    th_sql(conn, "UPDATE app.events SET k = 12 WHERE id = 1");
    th_sql(conn, "DELETE FROM app.events_b WHERE id = 2");
    expect_text(changes_since(conn, oid, 0),
                "I {\"k\": 1, \"v\": \"a\", \"id\": 1} | I {\"k\": 15, \"v\": \"b\", \"id\": 2} | "
                "I {\"k\": 16, \"v\": \"c\", \"id\": 3} | D {\"k\": 1, \"v\": \"a\", \"id\": 1} | "
                "I {\"k\": 12, \"v\": \"a\", \"id\": 1} | D {\"k\": 15, \"v\": \"b\", \"id\": 2}",
                "writes through the parent and to a partition, each captured once");

    th_sql(conn, "CREATE TABLE app.events_c PARTITION OF app.events FOR VALUES FROM (20) TO (30)");
    TH_ASSERT(capture_triggers(conn, "app.events_c") == 0,
              "a partition created after attach has no triggers yet");
    th_sql(conn, "SELECT sluice.cdc_attach('app.events')");
    TH_ASSERT(capture_triggers(conn, "app.events_c") == 4,
              "cdc_attach again adds the new partition's triggers");
    TH_ASSERT(capture_triggers(conn, "app.events") == 4, "and leaves the parent's alone");
    long long mark = last_seq(conn, oid);
    th_sql(conn, "INSERT INTO app.events_c VALUES (5, 25, 'e')");
    expect_text(changes_since(conn, oid, mark), "I {\"k\": 25, \"v\": \"e\", \"id\": 5}",
                "the new partition's direct writes are captured");
    mark = last_seq(conn, oid);
    th_sql(conn, "TRUNCATE app.events");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice_changes.c_%lld WHERE seq > %lld AND op = "
                         "'T' AND img IS NULL",
                         oid, mark) >= 1 &&
                  th_sql_int(conn,
                             "SELECT count(*) FROM sluice_changes.c_%lld WHERE seq > %lld AND op "
                             "<> 'T'",
                             oid, mark) == 0,
              "TRUNCATE of the parent writes 'T' rows only");
}

/* ------------------------------------------------------------------------ */
/* 8. detach                                                                 */
/* ------------------------------------------------------------------------ */

static long long
leftovers(PGconn *conn, long long oid)
{
    return th_sql_int(
        conn,
        "SELECT (SELECT count(*) FROM pg_proc WHERE pronamespace = "
        "'sluice_changes'::regnamespace AND proname LIKE 'capture\\_%lld\\_%%') + "
        "(SELECT count(*) FROM pg_class WHERE relnamespace = "
        "'sluice_changes'::regnamespace AND relname IN ('c_%lld', 'c_%lld_chunks')) + "
        "(SELECT count(*) FROM sluice.cdc_sources WHERE relid = %lld)",
        oid, oid, oid, oid);
}

static void
check_detach(PGconn *conn)
{
    TH_LOG("detach: triggers, functions, buffer and catalog row go; writes still work");
    long long oid = oid_of(conn, "app.events");
    TH_ASSERT(leftovers(conn, oid) == 7,
              "before detach: 4 functions, the buffer view, its chunk table, the row");
    th_sql(conn, "SELECT sluice.cdc_detach('app.events')");
    TH_ASSERT(leftovers(conn, oid) == 0, "detach dropped functions, buffer and catalog row");
    TH_ASSERT(capture_triggers(conn, "app.events") + capture_triggers(conn, "app.events_a") +
                      capture_triggers(conn, "app.events_b") +
                      capture_triggers(conn, "app.events_c") ==
                  0,
              "detach dropped the triggers of the parent and every partition");
    th_sql(conn, "INSERT INTO app.events VALUES (7, 7, 'after detach'); UPDATE app.events SET v "
                 "= 'x'; DELETE FROM app.events; TRUNCATE app.events");
    th_sql(conn, "SELECT sluice.cdc_detach('app.events')");
    TH_ASSERT(leftovers(conn, oid) == 0, "a second detach is a no-op");

    TH_LOG("detach: a dropped source, by its oid");
    th_sql(conn, "CREATE TABLE app.tmp (id int PRIMARY KEY)");
    long long tmp = oid_of(conn, "app.tmp");
    th_sql(conn, "SELECT sluice.cdc_attach('app.tmp'); INSERT INTO app.tmp VALUES (1)");
    th_sql(conn, "DROP TABLE app.tmp");
    TH_ASSERT(leftovers(conn, tmp) == 7, "dropping the source keeps the buffer, functions, row");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%lld", tmp) == 1,
              "and the captured change");
    th_sql(conn, "SELECT sluice.cdc_detach(%lld)", tmp);
    TH_ASSERT(leftovers(conn, tmp) == 0, "cdc_detach(oid) removes the leftovers");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.cdc_sources") == 1,
              "only app.orders is still captured");
}

/* ------------------------------------------------------------------------ */
/* 9. column names that are also the transition tables' aliases             */
/* ------------------------------------------------------------------------ */

static void
check_alias_columns(PGconn *conn)
{
    TH_LOG("images of a table with columns named n and o are whole rows");
    th_sql(conn, "CREATE TABLE app.counts (id int PRIMARY KEY, n int, o text); "
                 "SELECT sluice.cdc_attach('app.counts')");
    long long oid = oid_of(conn, "app.counts");
    th_sql(conn, "INSERT INTO app.counts VALUES (1, 10, 'x')");
    th_sql(conn, "UPDATE app.counts SET n = 11 WHERE id = 1");
    th_sql(conn, "DELETE FROM app.counts WHERE id = 1");
    expect_text(changes_since(conn, oid, 0),
                "I {\"n\": 10, \"o\": \"x\", \"id\": 1} | D {\"n\": 10, \"o\": \"x\", \"id\": 1} | "
                "I {\"n\": 11, \"o\": \"x\", \"id\": 1} | D {\"n\": 11, \"o\": \"x\", \"id\": 1}",
                "insert, update and delete images are the rows, not the column n or o");
    th_sql(conn, "SELECT sluice.cdc_detach('app.counts')");
}

/* ------------------------------------------------------------------------ */
/* 10. chunks                                                                */
/* ------------------------------------------------------------------------ */

static void
check_chunks(PGconn *conn)
{
    TH_LOG("chunks: 1,000 images a chunk, fewer when images are large; images equal to_jsonb");
    th_sql(conn, "CREATE TABLE app.bulk (id int PRIMARY KEY, t text); "
                 "SELECT sluice.cdc_attach('app.bulk')");
    long long oid = oid_of(conn, "app.bulk");
    th_sql(conn, "INSERT INTO app.bulk SELECT g, 'row ' || g FROM generate_series(1, 2500) g");
    /* Each image weighs 16 kB plus its size, against 16,384,000: small
     * images close a chunk at 999 or 1,000. */
    expect_text(th_sql_text(conn,
                            "SELECT count(*) || ' ' || bool_and(op = 'I' AND n BETWEEN 990 AND "
                            "1000 OR seq = (SELECT max(seq) FROM sluice_changes.c_%lld_chunks)) "
                            "|| ' ' || sum(n) FROM sluice_changes.c_%lld_chunks",
                            oid, oid),
                "3 true 2500", "a 2,500-row INSERT is three chunks of at most 1,000 images");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM (SELECT seq, img->>'id' AS id, lag(seq) OVER (ORDER "
                         "BY seq) AS prev FROM sluice_changes.c_%lld) v WHERE (prev IS NULL OR "
                         "prev < seq) AND id::int BETWEEN 1 AND 2500",
                         oid) == 2500 &&
                  th_sql_int(conn, "SELECT count(DISTINCT seq) FROM sluice_changes.c_%lld", oid) ==
                      2500 &&
                  th_sql_int(conn, "SELECT count(DISTINCT img->>'id') FROM sluice_changes.c_%lld",
                             oid) == 2500,
              "the view gives 2,500 rows, distinct seqs, every id once");
    th_sql(conn, "TRUNCATE sluice_changes.c_%lld_chunks", oid);
    th_sql(conn, "UPDATE app.bulk SET t = repeat(md5(id::text), 3125) WHERE id <= 300");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice_changes.c_%lld_chunks WHERE op = 'I'",
                         oid) >= 3 &&
                  th_sql_int(conn, "SELECT max(n) FROM sluice_changes.c_%lld_chunks WHERE op = 'I'",
                             oid) < 300 &&
                  th_sql_int(conn, "SELECT sum(n) FROM sluice_changes.c_%lld_chunks WHERE op = 'I'",
                             oid) == 300,
              "300 images of 100 kB close their chunks by size (16 MB), none is lost");
    expect_text(th_sql_text(conn,
                            "SELECT string_agg(op::text, '' ORDER BY seq) FROM (SELECT DISTINCT "
                            "ON (op) op, seq FROM sluice_changes.c_%lld ORDER BY op, seq) f",
                            oid),
                "DI", "the UPDATE's 'D' images come before its 'I' images");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.cdc_prune('app.bulk', pg_current_snapshot())") == 600,
              "cdc_prune returns the number of images (300 'D' + 300 'I')");

    th_sql(conn, "CREATE TYPE app.pair AS (a int, b text); "
                 "CREATE TABLE app.types (id int PRIMARY KEY, ts timestamptz, d date, "
                 "num numeric, f float8, r real, b bool, by bytea, j json, jb jsonb, "
                 "arr int[], tarr text[], p app.pair, iv interval, u uuid, \"Mixed Case\" text, "
                 "big bigint, sm smallint); SELECT sluice.cdc_attach('app.types')");
    long long toid = oid_of(conn, "app.types");
    th_sql(conn, "INSERT INTO app.types VALUES "
                 "(1, '2024-02-29 12:34:56.789+01', '2024-01-01', 12345678901234567890.123, "
                 "1e300, 1.5, true, '\\x00ff', '{\"k\": [1, 2], \"k\": 3}', '{\"z\": null}', "
                 "'{1,NULL,3}', '{\"a b\",\"c\\\"d\"}', ROW(1, 'x'), '1 day 2 hours', "
                 "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'quote \" and \\ back', "
                 "9223372036854775807, -32768), "
                 "(2, 'infinity', '-infinity', 'NaN', 'Infinity', '-0', false, '', 'null', "
                 "'[]', '{}', '{}', NULL, '-1 mon', NULL, E'tab\\tnew\\nline \\u00e9', "
                 "NULL, NULL), "
                 "(3, NULL, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, "
                 "ROW(NULL, NULL), NULL, NULL, NULL, NULL, NULL)");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice_changes.c_%lld b JOIN app.types t ON t.id "
                         "= (b.img->>'id')::int WHERE b.img = to_jsonb(t.*)",
                         toid) == 3,
              "images of many column types equal to_jsonb(row)");
    char *rows = th_sql_text(conn, "SELECT string_agg(format('%%s|%%s|%%s', id, ts, p), ' ' "
                                   "ORDER BY id) FROM app.types");
    expect_text(th_sql_text(conn,
                            "SELECT string_agg(format('%%s|%%s|%%s', r.id, r.ts, r.p), ' ' "
                            "ORDER BY seq) FROM sluice_changes.c_%lld b, "
                            "jsonb_populate_record(NULL::app.types, b.img) r",
                            toid),
                rows, "images read back as rows of the table");
    free(rows);
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO sluice_changes.c_%lld (op) VALUES ('I')", toid);
    expect_error(conn, "55000", "cannot insert into view", NULL, sql);
    th_sql(conn, "SELECT sluice.cdc_detach('app.types'); SELECT sluice.cdc_detach('app.bulk')");
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

    check_attach(conn);
    check_buffer_rows(conn);
    check_window_and_prune(&env, conn);
    check_ddl_and_writer(&env, conn);
    check_partitioned(conn);
    check_detach(conn);
    check_alias_columns(conn);
    check_chunks(conn);

    PQfinish(conn);
    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
