/*
 * refresh/engine.c - `sluice engine`: keeps every stream table of one
 * database current.
 *
 * Refreshes run in PostgreSQL (sluice._refresh, refresh/sql): the engine
 * decides when and where. It runs one libuv loop with
 *
 *   - the main connection (blocking libpq, its socket watched by the loop):
 *     LISTEN sluice_changes, the doorbell lock, analysis of new or altered
 *     stream tables (refresh/analyze.c, stored with sluice._set_analysis),
 *     reading the catalog's schedule state, and sending coalesced
 *     subscription notifications (sluice._flush_notifications);
 *   - a pool of --workers refresh connections (core's sl_pgconn:
 *     non-blocking libpq on the loop, reconnect with backoff), each running
 *     one sluice._refresh_if_changed(id) at a time (a look at the change
 *     buffers that writes no WAL when nothing changed, else the driver
 *     sluice._refresh), so one slow stream table occupies one worker and
 *     never delays the others.
 *
 * When a stream table is refreshed. Each stream table has, in the engine's
 * memory, a `pending` flag: it may have changes not yet refreshed. It is
 * set by a ring of the doorbell (below), by the safety poll (every
 * --safety-poll-ms, for anything a ring missed), by a refresh of a stream
 * table it reads that changed something, by a failed refresh (retried), and
 * for every stream table when the main connection (re)connects; a stream
 * table whose rows depend on the clock is always pending (each look
 * refreshes it in full: refresh/sql/0036_clock_refresh.sql). A pending
 * stream table is started as soon as
 *
 *   - its schedule has passed since its last refresh, or since its last
 *     check that found nothing to refresh (SQL_LAST_LOOK), and
 *     its failure backoff has passed (100 ms * 2^(failures-1), at most 30 s,
 *     after its last failure);
 *   - it is not in flight (a refresh also locks its catalog row);
 *   - no stream table it reads is in flight, or pending and due itself: a
 *     reader runs after what it reads, so one pass sees a consistent chain;
 *   - a worker is free (lower dependency depth first, then id).
 * Starting a refresh clears `pending`: its snapshot is taken after the ring
 * that set it, so it sees every change committed before that ring.
 * The loop sleeps until the earliest of: a ring, the next time a pending
 * stream table becomes due, the safety poll, a coalesced notification's
 * window, a worker's result, a signal.
 *
 * The doorbell (cdc/sql/0008_cdc_wake.sql). Capture triggers notify
 * sluice_changes only while some engine holds advisory lock
 * SL_ENGINE_DOORBELL_LOCK in shared mode ("armed"): NOTIFY serialises
 * committing writers, so they ring only when it helps. States of the main
 * connection:
 *
 *            connect            nothing can start, and some stream table
 *   (down) ──────────▶ DISARMED ───is not pending (a ring would help)───▶ ARMED
 *      ▲                 ▲  │    lock taken; what started while         │
 *      │ lost            │  │    disarmed is pending once more          │
 *      └─────────────────┼──┘    (the confirming pass)                  │
 *                        └────────── a ring: lock released, ───────────┘
 *                                    every stream table pending
 *
 * While disarmed the engine is busy with everything anyway and writers do
 * not notify; the confirming pass after arming refreshes again what started
 * while disarmed, since writes after its snapshot rang nobody. A write
 * whose trigger ran just before the engine armed and that commits after the
 * confirming pass read its snapshot rings nobody either, so arming also
 * lists the transactions then in progress (their transaction-id locks in
 * pg_locks: a writer has its id before its trigger tries the doorbell lock;
 * our own workers' refreshes are left out, their readers learn of them from
 * their results) and, whenever some of them have ended (polled, 5 ms
 * doubling to 250 ms), every stream table is pending once more: a further
 * confirming pass, so a long transaction in the list does not hold back a
 * short one's changes. A ring in between disarms and drops the list (the
 * next arm lists afresh).
 *
 * Failures. A failed refresh is recorded with sluice._record_failure() on
 * the worker that ran it (which counts it, or puts the stream table in
 * status 'error' when a source's DDL caused it); the stream table stays
 * pending and is retried after its backoff, while the others keep their
 * schedules. A stream table in status 'error' is skipped until
 * alter_stream_table fixes it. A worker whose connection breaks reconnects
 * with the usual backoff (100 ms .. 30 s, +-20 %) while the other workers go
 * on; the refresh it was running is retried elsewhere (its transaction was
 * rolled back, or committed, which a refresh tolerates). The main
 * connection reconnects the same way; meanwhile nothing new starts.
 *
 * SIGTERM/SIGINT: nothing new starts; refreshes in flight get
 * SL_ENGINE_STOP_GRACE_MS to finish, then are cancelled; exit 0.
 *
 * --once keeps the simple form: one connection, analyse, refresh every
 * stream table whose schedule has come one after another in dependency
 * order, flush notifications, return.
 *
 * Logs: one key=value line per event (engine.*).
 */
#include "refresh/refresh.h"

#include <cjson/cJSON.h>
#include <uv.h>

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The doorbell of cdc/sql/0008_cdc_wake.sql: x'736c77616b650000' ("slwake"). */
#define SL_ENGINE_DOORBELL_LOCK "8317153872143777792"
#define SL_ENGINE_CHANNEL "sluice_changes"
/* How long refreshes in flight may finish after SIGTERM before they are
 * cancelled: long enough for an ordinary refresh, short enough for a
 * service manager's stop timeout (systemd's default is 90 s). */
#define SL_ENGINE_STOP_GRACE_MS 5000
/* After a failed analysis (a database error storing it), wait this long
 * before analysing again, so a broken catalog does not spin the loop. */
#define SL_ENGINE_ANALYSE_RETRY_MS 1000
/* At most one flush of coalesced notifications per this many ms: a
 * notification a refresh in flight holds locked (FOR UPDATE SKIP LOCKED in
 * the flush) stays due until it commits, and must not spin the loop. */
#define SL_ENGINE_FLUSH_GAP_MS 10

/* Set by the signal handler of --once (the loop uses uv_signal instead). */
static volatile sig_atomic_t engine_stop;

static void
engine_on_signal(int sig)
{
    (void)sig;
    engine_stop = 1;
}

/* Stream tables needing an analysis, with what the analyzer needs. */
#define SQL_STALE                                                                                  \
    "SELECT c.id, c.name, c.query, c.key_columns IS NOT NULL, coalesce(c.key_columns, '{}'), "     \
    "       c.requested_mode = 'full', "                                                           \
    "       (SELECT coalesce(json_agg(json_build_object("                                          \
    "                 'relid', k.oid::bigint, 'schema', n.nspname, 'name', k.relname, "            \
    "                 'pk', ARRAY(SELECT a.attname FROM pg_index i "                               \
    "                              CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY u(n, o) "   \
    "                              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = " \
    "u.n "                                                                                         \
    "                             WHERE i.indrelid = k.oid AND i.indisprimary ORDER BY u.o), "     \
    "                 'cols', ARRAY(SELECT a.attname FROM pg_attribute a "                         \
    "                                WHERE a.attrelid = k.oid AND a.attnum > 0 "                   \
    "                                  AND NOT a.attisdropped ORDER BY a.attnum), "                \
    "                 'types', ARRAY(SELECT format_type(a.atttypid, a.atttypmod) "                 \
    "                                 FROM pg_attribute a "                                        \
    "                                WHERE a.attrelid = k.oid AND a.attnum > 0 "                   \
    "                                  AND NOT a.attisdropped ORDER BY a.attnum), "                \
    "                 'notnull', ARRAY(SELECT a.attnotnull FROM pg_attribute a "                   \
    "                                WHERE a.attrelid = k.oid AND a.attnum > 0 "                   \
    "                                  AND NOT a.attisdropped ORDER BY a.attnum)) "                \
    "                 ORDER BY k.oid), '[]') "                                                     \
    "          FROM sluice.stream_table_sources s "                                                \
    "          JOIN pg_class k ON k.oid = s.relid "                                                \
    "          JOIN pg_namespace n ON n.oid = k.relnamespace "                                     \
    "         WHERE s.stream_table_id = c.id), "                                                   \
    "       c.branches, "                                                                          \
    "       (SELECT coalesce(json_agg(json_build_array(a.attname, split_part(f.v, chr(1), 1), "    \
    "                                 split_part(f.v, chr(1), 2), e.t) ORDER BY a.attnum), '[]') " \
    "          FROM pg_attribute a "                                                               \
    "         CROSS JOIN LATERAL sluice._st_key_value_sql(chr(1), a.atttypid, a.atttypmod) f(v) "  \
    "         CROSS JOIN LATERAL sluice._st_own_equality(a.atttypid) e(t) "                        \
    "         WHERE a.attrelid = c.relid AND a.attnum > 0 AND NOT a.attisdropped "                 \
    "           AND (f.v <> chr(1) OR e.t IS NOT NULL)), "                                         \
    "       (SELECT coalesce(json_agg(json_build_array(a.attname, "                                \
    "                                 format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum), "  \
    "                        '[]') "                                                               \
    "          FROM pg_attribute a "                                                               \
    "         WHERE a.attrelid = c.relid AND a.attnum > 0 AND NOT a.attisdropped) "                \
    "  FROM sluice.stream_table_catalog c "                                                        \
    " WHERE c.analyzed_query IS DISTINCT FROM c.query ORDER BY c.id"

#define SQL_SET_ANALYSIS "SELECT sluice._set_analysis($1, $2, $3, $4, $5, $6, $7, $8, $9)"
/* After an analysis that refreshes by units: statistics for a stream table
 * that has none (refresh/sql/0032_set_returning_functions.sql). */
#define SQL_ANALYZE_UNITS "SELECT sluice._st_analyze_units($1)"

/* Dependency depth: the longest chain of stream tables below one. */
#define SQL_DEPTH                                                                         \
    "WITH RECURSIVE dep(id, depth) AS ("                                                  \
    "    SELECT c.id, 0 FROM sluice.stream_table_catalog c"                               \
    "  UNION ALL"                                                                         \
    "    SELECT s.stream_table_id, d.depth + 1"                                           \
    "      FROM dep d JOIN sluice.stream_table_catalog p ON p.id = d.id"                  \
    "      JOIN sluice.stream_table_sources s ON s.relid = p.relid AND s.is_stream_table" \
    "     WHERE d.depth < 64) "

/* The last time a stream table was refreshed, or found to have nothing to
 * refresh (refresh/sql/0014_idle_checks.sql; k: its row of
 * sluice.stream_table_checks), NULL if never: its schedule counts from
 * there. */
#define SQL_LAST_LOOK "greatest(c.last_refresh_at, k.checked_at)"

/* The failure backoff: 100 ms * 2^(n-1), at most 30 s, after the last failure. */
#define SQL_BACKOFF_UNTIL                                                                 \
    "CASE WHEN c.consecutive_failures > 0 THEN c.last_error_at + least(interval '30 s', " \
    "     interval '100 ms' * power(2, least(c.consecutive_failures, 20) - 1)) END"

/* --once: due stream tables, readers after what they read. */
#define SQL_DUE                                                                      \
    SQL_DEPTH                                                                        \
    "SELECT c.id, c.name FROM sluice.stream_table_catalog c "                        \
    "  LEFT JOIN sluice.stream_table_checks k ON k.stream_table_id = c.id "          \
    "  JOIN (SELECT id, max(depth) AS depth FROM dep GROUP BY id) d ON d.id = c.id " \
    " WHERE c.status = 'active' "                                                    \
    "   AND coalesce(" SQL_LAST_LOOK " + c.schedule <= clock_timestamp(), true) "    \
    "   AND coalesce(" SQL_BACKOFF_UNTIL " <= clock_timestamp(), true) "             \
    " ORDER BY d.depth, c.id"

/*
 * The loop: every stream table with its depth, whether it is active and
 * needs an analysis, the milliseconds until its schedule and backoff allow
 * a refresh (0: now), the stream tables it reads, (same on every row) the
 * milliseconds until the next coalesced notification is due (NULL: none
 * pending), and whether its rows depend on the clock
 * (refresh/sql/0036_clock_refresh.sql).
 */
#define SQL_STATE                                                                              \
    SQL_DEPTH                                                                                  \
    "SELECT c.id, c.name, d.depth, c.status = 'active', "                                      \
    "       c.analyzed_query IS DISTINCT FROM c.query, "                                       \
    "       coalesce(greatest(0, ceil(1000 * extract(epoch FROM "                              \
    "           greatest(" SQL_LAST_LOOK " + c.schedule, " SQL_BACKOFF_UNTIL ") "              \
    "           - clock_timestamp()))), 0)::bigint, "                                          \
    "       ARRAY(SELECT p.id FROM sluice.stream_table_sources s "                             \
    "               JOIN sluice.stream_table_catalog p ON p.relid = s.relid "                  \
    "              WHERE s.stream_table_id = c.id AND s.is_stream_table ORDER BY p.id), "      \
    "       (SELECT min(CASE WHEN s.last_sent_at IS NULL THEN 0 ELSE greatest(0, ceil(1000 * " \
    "               extract(epoch FROM s.last_sent_at + make_interval(secs => "                \
    "               coalesce(s.coalesce_ms, coalesce(nullif(current_setting("                  \
    "               'sluice.notify_coalesce_ms', true), '')::int, 250)) / 1000.0) "            \
    "               - clock_timestamp()))) END)::bigint "                                      \
    "          FROM sluice.subscriptions s WHERE s.pending IS NOT NULL), "                     \
    "       c.reads_clock "                                                                    \
    "  FROM sluice.stream_table_catalog c "                                                    \
    "  LEFT JOIN sluice.stream_table_checks k ON k.stream_table_id = c.id "                    \
    "  JOIN (SELECT id, max(depth) AS depth FROM dep GROUP BY id) d ON d.id = c.id "           \
    " ORDER BY d.depth, c.id"

#define SQL_REFRESH "SELECT sluice._refresh_if_changed($1)"
#define SQL_FAILURE "SELECT sluice._record_failure($1, $2, $3)"
#define SQL_FLUSH "SELECT sluice._flush_notifications()"
#define SQL_ARM "SELECT pg_advisory_lock_shared(" SL_ENGINE_DOORBELL_LOCK ")"
#define SQL_DISARM "SELECT pg_advisory_unlock_shared(" SL_ENGINE_DOORBELL_LOCK ")"
/* Transactions in progress, as a text array of xids (or NULL) and their
 * number; not ours, nor those of our workers ($1, an int[] of backend pids:
 * what a refresh writes, its readers learn from its result); then how many
 * of them are still in progress. */
#define SQL_WRITERS                                                                  \
    "SELECT array_agg(l.transactionid)::text, count(*) FROM pg_catalog.pg_locks l "  \
    "WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted " \
    "AND l.pid <> pg_catalog.pg_backend_pid() AND l.pid <> ALL ($1::int[])"
#define SQL_WRITERS_LEFT                                                             \
    "SELECT count(*) FROM pg_catalog.pg_locks l WHERE l.locktype = 'transactionid' " \
    "AND l.mode = 'ExclusiveLock' AND l.granted AND l.transactionid = ANY ($1::xid[])"
/* The poll of those transactions: first gap, and the longest. */
#define SL_ENGINE_WRITERS_POLL_MS 5
#define SL_ENGINE_WRITERS_POLL_MAX_MS 250

/* Parses a PostgreSQL text array of simple elements ({a,"b c"}) into v (owned strings). */
static int
parse_text_array(const char *s, char ***out, size_t *n, sl_err_t *err)
{
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    if (*s != '{')
        return sl_err_set(err, SL_ERR, "unexpected array text from the catalog");
    s++;
    while (*s != '}' && *s != '\0') {
        char buf[256];
        size_t len = 0;
        if (*s == '"') {
            for (s++; *s != '\0' && *s != '"'; s++) {
                if (*s == '\\' && s[1] != '\0')
                    s++;
                if (len + 1 < sizeof buf)
                    buf[len++] = *s;
            }
            if (*s == '"')
                s++;
        } else {
            for (; *s != '\0' && *s != ',' && *s != '}'; s++)
                if (len + 1 < sizeof buf)
                    buf[len++] = *s;
        }
        buf[len] = '\0';
        if (*n == cap) {
            cap = cap ? cap * 2 : 4;
            char **nv = realloc(*out, cap * sizeof *nv);
            if (nv == NULL)
                goto nomem;
            *out = nv;
        }
        if (((*out)[*n] = strdup(buf)) == NULL)
            goto nomem;
        (*n)++;
        if (*s == ',')
            s++;
    }
    return SL_OK;
nomem:
    for (size_t i = 0; i < *n; i++)
        free((*out)[i]);
    free(*out);
    *out = NULL;
    *n = 0;
    return sl_err_nomem(err, "a catalog array");
}

static void
free_strs(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* Reads an array of strings (JSON) into v, pointing into the tree. */
static int
json_strs(const cJSON *arr, const char ***v, size_t *n, sl_err_t *err)
{
    *n = (size_t)cJSON_GetArraySize(arr);
    *v = calloc(*n > 0 ? *n : 1, sizeof **v);
    if (*v == NULL)
        return sl_err_nomem(err, "a source's columns");
    size_t i = 0;
    const cJSON *e;
    cJSON_ArrayForEach (e, arr) {
        if (!cJSON_IsString(e))
            return sl_err_set(err, SL_ERR, "unexpected source description from the catalog");
        (*v)[i++] = e->valuestring;
    }
    return SL_OK;
}

/* A source's column types and NOT NULL flags (JSON from SQL_STALE), one per
 * column of s->cols. */
static int
parse_col_types(const cJSON *e, sl_analyze_src_t *s, sl_err_t *err)
{
    const cJSON *nn = cJSON_GetObjectItemCaseSensitive(e, "notnull");
    const char **types = NULL;
    size_t ntypes = 0;
    int rc = json_strs(cJSON_GetObjectItemCaseSensitive(e, "types"), &types, &ntypes, err);
    s->types = types;
    if (rc != SL_OK)
        return rc;
    if (ntypes != s->ncols || cJSON_GetArraySize(nn) != (int)s->ncols)
        return sl_err_set(err, SL_ERR, "unexpected source description from the catalog");
    bool *notnull = calloc(s->ncols > 0 ? s->ncols : 1, sizeof *notnull);
    if (notnull == NULL)
        return sl_err_nomem(err, "a source's columns");
    s->notnull = notnull;
    size_t i = 0;
    const cJSON *v;
    cJSON_ArrayForEach (v, nn) {
        if (!cJSON_IsBool(v))
            return sl_err_set(err, SL_ERR, "unexpected source description from the catalog");
        notnull[i++] = cJSON_IsTrue(v);
    }
    return SL_OK;
}

/* The sources (JSON from SQL_STALE) as the analyzer wants them; strings
 * point into the tree *json, which the caller frees. */
static int
parse_sources(const char *text, cJSON **json, sl_analyze_src_t **out, size_t *n, sl_err_t *err)
{
    *out = NULL;
    *n = 0;
    if ((*json = cJSON_Parse(text)) == NULL || !cJSON_IsArray(*json))
        return sl_err_set(err, SL_ERR, "unexpected source list from the catalog");
    size_t cnt = (size_t)cJSON_GetArraySize(*json);
    if ((*out = calloc(cnt > 0 ? cnt : 1, sizeof **out)) == NULL)
        return sl_err_nomem(err, "the source list");
    const cJSON *e;
    cJSON_ArrayForEach (e, *json) {
        sl_analyze_src_t *s = &(*out)[(*n)++];
        const cJSON *relid = cJSON_GetObjectItemCaseSensitive(e, "relid");
        s->schema = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "schema"));
        s->name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "name"));
        if (!cJSON_IsNumber(relid) || s->schema == NULL || s->name == NULL)
            return sl_err_set(err, SL_ERR, "unexpected source description from the catalog");
        s->relid = (uint32_t)relid->valuedouble;
        const char **pk = NULL, **cols = NULL;
        int rc = json_strs(cJSON_GetObjectItemCaseSensitive(e, "pk"), &pk, &s->npk, err);
        s->pk = pk;
        if (rc == SL_OK)
            rc = json_strs(cJSON_GetObjectItemCaseSensitive(e, "cols"), &cols, &s->ncols, err);
        s->cols = cols;
        if (rc == SL_OK)
            rc = parse_col_types(e, s, err);
        if (rc != SL_OK)
            return rc;
    }
    return SL_OK;
}

static void
free_sources(sl_analyze_src_t *v, size_t n)
{
    for (size_t i = 0; v != NULL && i < n; i++) {
        free((void *)v[i].pk);
        free((void *)v[i].cols);
        free((void *)v[i].types);
        free((void *)v[i].notnull);
    }
    free(v);
}

/* The UNION ALL branches (catalog column branches, JSON; empty text: none)
 * as the analyzer wants them; strings point into *json. */
static int
parse_branches(const char *text, cJSON **json, sl_analyze_branch_t **out, size_t *n, sl_err_t *err)
{
    *json = NULL;
    *out = NULL;
    *n = 0;
    if (text[0] == '\0')
        return SL_OK;
    if ((*json = cJSON_Parse(text)) == NULL || !cJSON_IsArray(*json))
        return sl_err_set(err, SL_ERR, "unexpected UNION ALL branches in the catalog");
    size_t cnt = (size_t)cJSON_GetArraySize(*json);
    if ((*out = calloc(cnt > 0 ? cnt : 1, sizeof **out)) == NULL)
        return sl_err_nomem(err, "the branch list");
    const cJSON *e;
    cJSON_ArrayForEach (e, *json) {
        sl_analyze_branch_t *b = &(*out)[(*n)++];
        b->query = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "query"));
        if (b->query == NULL)
            return sl_err_set(err, SL_ERR, "unexpected UNION ALL branches in the catalog");
        const char **keys = NULL;
        int rc = json_strs(cJSON_GetObjectItemCaseSensitive(e, "keys"), &keys, &b->nkeys, err);
        b->keys = keys;
        if (rc != SL_OK)
            return rc;
    }
    return SL_OK;
}

/* The key forms of the stream table's columns (JSON array of [column,
 * open, close, own_eq]; see sl_analyze_keyform_t); strings point into
 * *json. */
static int
parse_keyforms(const char *text, cJSON **json, sl_analyze_keyform_t **out, size_t *n, sl_err_t *err)
{
    *out = NULL;
    *n = 0;
    if ((*json = cJSON_Parse(text)) == NULL || !cJSON_IsArray(*json))
        return sl_err_set(err, SL_ERR, "unexpected key forms of the stream table's columns");
    size_t cnt = (size_t)cJSON_GetArraySize(*json);
    if ((*out = calloc(cnt > 0 ? cnt : 1, sizeof **out)) == NULL)
        return sl_err_nomem(err, "the key forms");
    const cJSON *e;
    cJSON_ArrayForEach (e, *json) {
        sl_analyze_keyform_t *f = &(*out)[(*n)++];
        f->col = cJSON_GetStringValue(cJSON_GetArrayItem(e, 0));
        f->open = cJSON_GetStringValue(cJSON_GetArrayItem(e, 1));
        f->close = cJSON_GetStringValue(cJSON_GetArrayItem(e, 2));
        f->own_eq = cJSON_GetStringValue(cJSON_GetArrayItem(e, 3)); /* JSON null: NULL */
        if (f->col == NULL || f->open == NULL || f->close == NULL)
            return sl_err_set(err, SL_ERR, "unexpected key forms of the stream table's columns");
    }
    return SL_OK;
}

/* The stream table's columns and their types (JSON array of [name,
 * type]); strings point into *json. */
static int
parse_cols(const char *text, cJSON **json, sl_analyze_col_t **out, size_t *n, sl_err_t *err)
{
    *out = NULL;
    *n = 0;
    if ((*json = cJSON_Parse(text)) == NULL || !cJSON_IsArray(*json))
        return sl_err_set(err, SL_ERR, "unexpected columns of the stream table");
    size_t cnt = (size_t)cJSON_GetArraySize(*json);
    if ((*out = calloc(cnt > 0 ? cnt : 1, sizeof **out)) == NULL)
        return sl_err_nomem(err, "the columns");
    const cJSON *e;
    cJSON_ArrayForEach (e, *json) {
        sl_analyze_col_t *c = &(*out)[(*n)++];
        c->name = cJSON_GetStringValue(cJSON_GetArrayItem(e, 0));
        c->type = cJSON_GetStringValue(cJSON_GetArrayItem(e, 1));
        if (c->name == NULL || c->type == NULL)
            return sl_err_set(err, SL_ERR, "unexpected columns of the stream table");
    }
    return SL_OK;
}

static void
free_branches(sl_analyze_branch_t *v, size_t n)
{
    for (size_t i = 0; v != NULL && i < n; i++)
        free((void *)v[i].keys);
    free(v);
}

/* Analyses one stale stream table (row r of res) and stores the result. */
static int
engine_analyse_one(PGconn *conn, PGresult *res, int r, sl_err_t *err)
{
    const char *id = PQgetvalue(res, r, 0);
    const char *name = PQgetvalue(res, r, 1);
    char **keys = NULL;
    size_t nkeys = 0, nsrcs = 0, nbranches = 0;
    size_t nforms = 0, ncols = 0;
    cJSON *json = NULL, *bjson = NULL, *fjson = NULL, *cjson = NULL;
    sl_analyze_col_t *cols = NULL;
    sl_analyze_src_t *srcs = NULL;
    sl_analyze_branch_t *branches = NULL;
    sl_analyze_keyform_t *forms = NULL;
    int rc = parse_text_array(PQgetvalue(res, r, 4), &keys, &nkeys, err);
    if (rc == SL_OK)
        rc = parse_sources(PQgetvalue(res, r, 6), &json, &srcs, &nsrcs, err);
    if (rc == SL_OK)
        rc = parse_branches(PQgetvalue(res, r, 7), &bjson, &branches, &nbranches, err);
    if (rc == SL_OK)
        rc = parse_keyforms(PQgetvalue(res, r, 8), &fjson, &forms, &nforms, err);
    if (rc == SL_OK)
        rc = parse_cols(PQgetvalue(res, r, 9), &cjson, &cols, &ncols, err);
    sl_analysis_t a = {0};
    char old_rel[64]; /* sluice._refresh's stored rows of the affected units */
    snprintf(old_rel, sizeof old_rel, "pg_temp.\"__sluice_old_%s\"", id);
    if (rc == SL_OK) {
        sl_analyze_in_t in = {
            .query = PQgetvalue(res, r, 2),
            .keys = (const char *const *)keys,
            .nkeys = nkeys,
            .has_keys = PQgetvalue(res, r, 3)[0] == 't',
            .sources = srcs,
            .nsources = nsrcs,
            .requested_full = PQgetvalue(res, r, 5)[0] == 't',
            .branches = branches,
            .nbranches = nbranches,
            .old_rel = old_rel,
            .keyforms = forms,
            .nkeyforms = nforms,
            .cols = cols,
            .ncols = ncols,
        };
        rc = sl_analyze(&in, &a, err);
        if (rc != SL_OK)
            sl_err_prefix(err, "stream table %s: ", name);
    }
    if (rc == SL_OK) {
        const char *params[9] = {id,        PQgetvalue(res, r, 2), a.mode,          a.reason,
                                 a.tree,    a.affected_sql,        a.recompute_sql, a.unit_columns,
                                 a.branches};
        PGresult *s = PQexecParams(conn, SQL_SET_ANALYSIS, 9, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(s) != PGRES_TUPLES_OK) {
            rc = sl_pg_result_err(s, conn, err);
            sl_err_prefix(err, "stream table %s: storing its analysis: ", name);
        } else {
            char q[512];
            sl_log_info("engine.analysed", "stream_table=%s mode=%s reason=%s", name, a.mode,
                        sl_log_quote(q, sizeof q, a.reason != NULL ? a.reason : ""));
        }
        PQclear(s);
        if (rc == SL_OK && a.unit_columns != NULL) {
            /* Not a failure of the analysis: autovacuum does it later. */
            s = PQexecParams(conn, SQL_ANALYZE_UNITS, 1, NULL, params, NULL, NULL, 0);
            char q[512];
            if (PQresultStatus(s) != PGRES_TUPLES_OK)
                sl_log_warn("engine.table_analyse_failed", "stream_table=%s err=%s", name,
                            sl_log_quote(q, sizeof q, PQresultErrorMessage(s)));
            else if (strcmp(PQgetvalue(s, 0, 0), "t") == 0)
                sl_log_info("engine.table_analysed", "stream_table=%s", name);
            PQclear(s);
        }
    }
    sl_analysis_free(&a);
    free_sources(srcs, nsrcs);
    free_branches(branches, nbranches);
    free(forms);
    free(cols);
    cJSON_Delete(json);
    cJSON_Delete(bjson);
    cJSON_Delete(fjson);
    cJSON_Delete(cjson);
    free_strs(keys, nkeys);
    return rc;
}

static int
engine_analyse(PGconn *conn, sl_err_t *err)
{
    PGresult *res = PQexec(conn, SQL_STALE);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int rc = sl_pg_result_err(res, conn, err);
        PQclear(res);
        return rc;
    }
    int rc = SL_OK;
    for (int r = 0; r < PQntuples(res) && rc == SL_OK; r++) {
        sl_err_t e;
        sl_err_clear(&e);
        int one = engine_analyse_one(conn, res, r, &e);
        if (one == SL_EUSAGE) {
            /* The analyzer cannot read it: stored as a FULL analysis with the
             * reason, so it is not retried every tick and others go on. */
            const char *params[9] = {PQgetvalue(res, r, 0),
                                     PQgetvalue(res, r, 2),
                                     "full",
                                     e.msg,
                                     NULL,
                                     NULL,
                                     NULL,
                                     NULL,
                                     NULL};
            PQclear(PQexecParams(conn, SQL_SET_ANALYSIS, 9, NULL, params, NULL, NULL, 0));
            char q[SL_ERR_MSG_MAX + 16];
            sl_log_warn("engine.analyse_failed", "err=%s", sl_log_quote(q, sizeof q, e.msg));
        } else if (one != SL_OK) {
            *err = e;
            rc = one;
        }
    }
    PQclear(res);
    return rc;
}

/* " hint=\"...\"" when the server attached a hint to a failed refresh (how
 * to fix it: a payload over sluice.max_payload_bytes, ...), else "": the
 * tail of an engine.refresh_failed line, written into buf when there is a
 * hint. */
static const char *
hint_kv(const PGresult *res, char *buf, size_t n)
{
    const char *hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
    if (hint == NULL || n < 16)
        return "";
    memcpy(buf, " hint=", 6);
    sl_log_quote(buf + 6, n - 6, hint);
    return buf;
}

/* engine_once_refresh's loop. */
static int
engine_once_refresh_due(PGconn *conn, sl_err_t *err)
{
    PGresult *due = PQexec(conn, SQL_DUE);
    if (PQresultStatus(due) != PGRES_TUPLES_OK) {
        int rc = sl_pg_result_err(due, conn, err);
        PQclear(due);
        return rc;
    }
    for (int r = 0; r < PQntuples(due) && !engine_stop; r++) {
        const char *id = PQgetvalue(due, r, 0);
        const char *name = PQgetvalue(due, r, 1);
        const char *params[1] = {id};
        uint64_t t0 = sl_now_ms();
        PGresult *res = PQexecParams(conn, SQL_REFRESH, 1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
            if (!PQgetisnull(res, 0, 0))
                sl_log_info("engine.refreshed", "stream_table=%s refresh_id=%s ms=%" PRIu64, name,
                            PQgetvalue(res, 0, 0), sl_now_ms() - t0);
            PQclear(res);
            continue;
        }
        if (PQstatus(conn) != CONNECTION_OK) {
            int rc = sl_pg_result_err(res, conn, err);
            PQclear(res);
            PQclear(due);
            return rc;
        }
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        char q[1024], hq[1024];
        sl_log_warn("engine.refresh_failed", "stream_table=%s sqlstate=%s err=%s%s", name,
                    state ? state : "", sl_log_quote(q, sizeof q, msg ? msg : ""),
                    hint_kv(res, hq, sizeof hq));
        const char *fp[3] = {id, msg ? msg : "unknown error", state};
        PGresult *f = PQexecParams(conn, SQL_FAILURE, 3, NULL, fp, NULL, NULL, 0);
        if (PQresultStatus(f) != PGRES_TUPLES_OK)
            sl_log_warn("engine.record_failed", "stream_table=%s err=%s", name,
                        sl_log_quote(q, sizeof q, PQerrorMessage(conn)));
        PQclear(f);
        PQclear(res);
    }
    PQclear(due);
    PGresult *fl = PQexec(conn, SQL_FLUSH);
    int rc = PQresultStatus(fl) == PGRES_TUPLES_OK ? SL_OK : sl_pg_result_err(fl, conn, err);
    PQclear(fl);
    return rc;
}

/* --once: refreshes what is due, one after another. Returns SL_ERR only
 * when the connection is gone. */
static int
engine_once_refresh(PGconn *conn, sl_err_t *err)
{
    /* As on the workers: one snapshot per refresh (see wk_on_up). */
    int rc = sl_pg_exec(conn, "SET default_transaction_isolation = 'repeatable read'", err);
    if (rc == SL_OK)
        rc = engine_once_refresh_due(conn, err);
    if (PQstatus(conn) == CONNECTION_OK) {
        sl_err_t e;
        sl_err_clear(&e);
        int reset = sl_pg_exec(conn, "RESET default_transaction_isolation", &e);
        if (rc == SL_OK && reset != SL_OK) {
            *err = e;
            rc = reset;
        }
    }
    return rc;
}

/* ------------------------------------------------------------------------ */
/* The loop                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct engine engine_t;

/* One stream table as the loop sees it; rebuilt from SQL_STATE on every
 * step, carrying `pending` over by id. */
typedef struct engine_st {
    int64_t id;
    char *name;      /* owned */
    int depth;       /* longest chain of stream tables below */
    bool active;     /* status 'active' */
    bool stale;      /* needs an analysis */
    bool pending;    /* may have changes not yet refreshed */
    bool unbelled;   /* its last refresh started while disarmed: writes after
                      * that refresh's snapshot may have rung nobody */
    uint64_t due_ms; /* sl_now_ms() from which schedule and backoff allow a refresh */
    int64_t *up;     /* owned: ids of the stream tables it reads */
    size_t nup;
} engine_st_t;

/*
 * A worker: one refresh connection. States:
 *
 *   DOWN ──up──▶ SETUP ──ok──▶ IDLE ──start──▶ REFRESH ──ok──▶ IDLE
 *    ▲                          ▲                 │ failed
 *    │ connection lost (any)    └──recorded── RECORD ◀┘
 */
typedef enum engine_wk_state {
    WK_DOWN,    /* sl_pgconn connecting or in backoff */
    WK_SETUP,   /* session settings in flight */
    WK_IDLE,    /* ready for a refresh */
    WK_REFRESH, /* sluice._refresh_if_changed(st_id) in flight */
    WK_RECORD,  /* sluice._record_failure(st_id) in flight */
} engine_wk_state_t;

static const char *const wk_state_names[] = {
    [WK_DOWN] = "down",       [WK_SETUP] = "setup",   [WK_IDLE] = "idle",
    [WK_REFRESH] = "refresh", [WK_RECORD] = "record",
};

typedef struct engine_wk {
    engine_t *eng; /* borrowed */
    int no;        /* 1.. for logs */
    sl_pgconn_t *pc;
    engine_wk_state_t state;
    int backend_pid;   /* of the session, 0 when unknown (to cancel on stop) */
    int64_t st_id;     /* in REFRESH/RECORD: the stream table */
    char *st_name;     /* owned, in REFRESH/RECORD */
    uint64_t start_ms; /* when the refresh was sent */
} engine_wk_t;

struct engine {
    const sl_engine_opts_t *o; /* borrowed */
    uv_loop_t loop;
    uv_timer_t kick;   /* 0 ms: run engine_step once per loop iteration */
    uv_timer_t wake;   /* the next due time, safety poll or flush */
    uv_timer_t reconn; /* main connection reconnect; stop deadline */
    uv_signal_t sigterm, sigint;
    PGconn *main;       /* owned, NULL while down */
    uv_poll_t *poll;    /* owned (freed on close): main's socket */
    sl_backoff_t bo;    /* main's reconnect schedule */
    char settings[128]; /* session settings of every connection */
    char red[1024];     /* conninfo, redacted, for logs */
    engine_wk_t *wks;   /* owned array of o->workers */
    engine_st_t *sts;   /* owned array, SQL_STATE order (depth, id) */
    size_t nsts;
    bool armed;                /* main holds the doorbell lock */
    char *writers;             /* owned: xids in progress when armed ({..}), or NULL */
    int writers_n;             /* how many of them were in progress at the last look */
    uint64_t writers_poll_ms;  /* next look at them */
    uint64_t writers_gap_ms;   /* and the one after waits twice as long, up to the max */
    bool rung;                 /* a ring arrived since the last step */
    bool kicked;               /* kick timer started */
    uint64_t next_poll_ms;     /* next safety poll */
    uint64_t flush_ms;         /* next coalesced notification, UINT64_MAX: none */
    uint64_t flushed_ms;       /* last flush */
    uint64_t analyse_after_ms; /* no analysis before (after a failed one) */
    bool analyse_off;          /* the catalog is newer than this engine (catalog_check) */
    bool stopping;             /* a signal came */
    bool cancelled;            /* refreshes in flight were cancelled */
    int handles;               /* worker connections not yet closed */
};

static void engine_step(engine_t *eng);
static void engine_kick(engine_t *eng);
static void engine_main_lost(engine_t *eng, const char *why);
static void writers_drop(engine_t *eng);

static void
st_free_all(engine_st_t *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        free(v[i].up);
    }
    free(v);
}

static engine_st_t *
st_find(engine_t *eng, int64_t id)
{
    for (size_t i = 0; i < eng->nsts; i++)
        if (eng->sts[i].id == id)
            return &eng->sts[i];
    return NULL;
}

static bool
st_in_flight(const engine_t *eng, int64_t id)
{
    for (int i = 0; i < eng->o->workers; i++)
        if ((eng->wks[i].state == WK_REFRESH || eng->wks[i].state == WK_RECORD) &&
            eng->wks[i].st_id == id)
            return true;
    return false;
}

static int
in_flight_count(const engine_t *eng)
{
    int n = 0;
    for (int i = 0; i < eng->o->workers; i++)
        n += eng->wks[i].state == WK_REFRESH || eng->wks[i].state == WK_RECORD;
    return n;
}

static void
mark_all_pending(engine_t *eng)
{
    for (size_t i = 0; i < eng->nsts; i++)
        eng->sts[i].pending = true;
}

/* The stream tables that read stream table id have something new to read. */
static void
readers_pending(engine_t *eng, int64_t id)
{
    for (size_t i = 0; i < eng->nsts; i++)
        for (size_t u = 0; u < eng->sts[i].nup; u++)
            if (eng->sts[i].up[u] == id)
                eng->sts[i].pending = true;
}

static void
wk_set_state(engine_wk_t *wk, engine_wk_state_t to)
{
    sl_log_debug("engine.worker_state", "worker=%d from=%s to=%s", wk->no,
                 wk_state_names[wk->state], wk_state_names[to]);
    wk->state = to;
}

/* The refresh on wk is over (done, recorded, or lost): the worker is free. */
static void
wk_finish(engine_wk_t *wk, engine_wk_state_t to)
{
    free(wk->st_name);
    wk->st_name = NULL;
    wk->st_id = 0;
    wk_set_state(wk, to);
}

/* Parses a PostgreSQL array of bigints ({1,2}) into an owned array. */
static int
parse_ids(const char *s, int64_t **out, size_t *n, sl_err_t *err)
{
    char **v = NULL;
    size_t nv = 0;
    *out = NULL;
    *n = 0;
    int rc = parse_text_array(s, &v, &nv, err);
    if (rc != SL_OK)
        return rc;
    if (nv > 0) {
        if ((*out = calloc(nv, sizeof **out)) == NULL) {
            free_strs(v, nv);
            return sl_err_nomem(err, "a dependency list");
        }
        for (size_t i = 0; i < nv; i++)
            (*out)[i] = strtoll(v[i], NULL, 10);
        *n = nv;
    }
    free_strs(v, nv);
    return SL_OK;
}

/* Reads SQL_STATE on the main connection into eng->sts, keeping each
 * stream table's pending flag (new ones start pending). On error eng->sts
 * is unchanged. */
static int
engine_load(engine_t *eng, sl_err_t *err)
{
    PGresult *res = PQexec(eng->main, SQL_STATE);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        int rc = sl_pg_result_err(res, eng->main, err);
        PQclear(res);
        return rc;
    }
    uint64_t now = sl_now_ms();
    size_t n = (size_t)PQntuples(res);
    engine_st_t *v = calloc(n > 0 ? n : 1, sizeof *v);
    if (v == NULL) {
        PQclear(res);
        return sl_err_nomem(err, "the stream table list");
    }
    int rc = SL_OK;
    eng->flush_ms = UINT64_MAX;
    for (size_t i = 0; i < n && rc == SL_OK; i++) {
        int r = (int)i;
        engine_st_t *st = &v[i];
        st->id = strtoll(PQgetvalue(res, r, 0), NULL, 10);
        if ((st->name = strdup(PQgetvalue(res, r, 1))) == NULL) {
            rc = sl_err_nomem(err, "a stream table name");
            break;
        }
        st->depth = atoi(PQgetvalue(res, r, 2));
        st->active = PQgetvalue(res, r, 3)[0] == 't';
        st->stale = PQgetvalue(res, r, 4)[0] == 't';
        st->due_ms = now + strtoull(PQgetvalue(res, r, 5), NULL, 10);
        rc = parse_ids(PQgetvalue(res, r, 6), &st->up, &st->nup, err);
        if (!PQgetisnull(res, r, 7))
            eng->flush_ms = now + strtoull(PQgetvalue(res, r, 7), NULL, 10);
        const engine_st_t *old = st_find(eng, st->id);
        /* A stream table whose rows depend on the clock may change at any
         * look: it is always pending, so it is looked at on its schedule
         * even when no ring or poll comes. */
        st->pending = old == NULL || old->pending || PQgetvalue(res, r, 8)[0] == 't';
        st->unbelled = old != NULL && old->unbelled;
    }
    PQclear(res);
    if (rc != SL_OK) {
        st_free_all(v, n);
        return rc;
    }
    st_free_all(eng->sts, eng->nsts);
    eng->sts = v;
    eng->nsts = n;
    return SL_OK;
}

/* True when st may start now (see the file header). */
static bool
st_startable(const engine_t *eng, const engine_st_t *st, uint64_t now)
{
    /* (A stale one waits for its analysis, unless none will come.) */
    bool waits = st->stale && !eng->analyse_off;
    if (!st->active || !st->pending || waits || st->due_ms > now || st_in_flight(eng, st->id))
        return false;
    for (size_t u = 0; u < st->nup; u++) {
        if (st_in_flight(eng, st->up[u]))
            return false;
        for (size_t i = 0; i < eng->nsts; i++) {
            const engine_st_t *up = &eng->sts[i];
            if (up->id == st->up[u] && up->depth < st->depth && up->active && up->pending &&
                (!up->stale || eng->analyse_off) && up->due_ms <= now)
                return false;
        }
    }
    return true;
}

static engine_wk_t *
idle_worker(engine_t *eng)
{
    for (int i = 0; i < eng->o->workers; i++)
        if (eng->wks[i].state == WK_IDLE)
            return &eng->wks[i];
    return NULL;
}

/* Sends sluice._refresh_if_changed(st) on wk. */
static void
wk_start(engine_wk_t *wk, engine_st_t *st)
{
    char *name = strdup(st->name);
    if (name == NULL) {
        sl_log_error("engine.refresh_not_started", "stream_table=%s err=\"out of memory\"",
                     st->name);
        return;
    }
    char id[32];
    snprintf(id, sizeof id, "%" PRId64, st->id);
    const char *params[1] = {id};
    wk->st_id = st->id;
    wk->st_name = name;
    wk->start_ms = sl_now_ms();
    st->pending = false;
    st->unbelled = !wk->eng->armed;
    wk_set_state(wk, WK_REFRESH);
    sl_err_t e;
    sl_err_clear(&e);
    /* On failure the connection is already lost: wk_on_down ran and put
     * the stream table back to pending. */
    (void)sl_pgconn_send(wk->pc, SQL_REFRESH, 1, params, &e);
}

static void
wk_on_up(sl_pgconn_t *pc, void *ctx)
{
    engine_wk_t *wk = ctx;
    (void)pc;
    wk_set_state(wk, WK_SETUP);
    sl_err_t e;
    sl_err_clear(&e);
    char sql[512];
    /* REPEATABLE READ: the whole refresh sees one snapshot, the one its
     * window ends at (refresh/sql/0007_join_refresh.sql: a stream table over
     * several tables needs that, and under READ COMMITTED the driver would
     * lock the sources instead). */
    snprintf(sql, sizeof sql,
             "SET application_name = 'sluice-engine'; SET default_transaction_isolation = "
             "'repeatable read'; %s; SELECT pg_backend_pid()",
             wk->eng->settings);
    (void)sl_pgconn_send(wk->pc, sql, 0, NULL, &e);
}

/* SQLSTATEs that speak of the connection, not of the stream table: class
 * 08 (connection exception) and 57P (operator intervention: shutdown,
 * terminated backend). Such a failure is not recorded against the stream
 * table; the connection is reset. */
static bool
sqlstate_is_connection(const char *state)
{
    return state != NULL && (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0);
}

static void
wk_on_result(sl_pgconn_t *pc, PGresult *res, void *ctx)
{
    engine_wk_t *wk = ctx;
    engine_t *eng = wk->eng;
    char q[1024];
    ExecStatusType rs = PQresultStatus(res);
    switch (wk->state) {
    case WK_SETUP:
        if (rs != PGRES_TUPLES_OK) {
            sl_err_t e;
            sl_err_clear(&e);
            sl_pg_result_err(res, NULL, &e);
            sl_err_prefix(&e, "engine worker %d: session set-up: ", wk->no);
            PQclear(res);
            wk_set_state(wk, WK_DOWN);
            sl_pgconn_reset(pc, &e);
            return;
        }
        wk->backend_pid = atoi(PQgetvalue(res, 0, 0));
        PQclear(res);
        sl_log_info("engine.worker_up", "worker=%d backend_pid=%d", wk->no, wk->backend_pid);
        wk_set_state(wk, WK_IDLE);
        engine_kick(eng);
        return;
    case WK_REFRESH: {
        engine_st_t *st = st_find(eng, wk->st_id);
        uint64_t ms = sl_now_ms() - wk->start_ms;
        if (rs == PGRES_TUPLES_OK) {
            bool changed = PQntuples(res) == 1 && !PQgetisnull(res, 0, 0);
            if (changed) {
                sl_log_info("engine.refreshed",
                            "stream_table=%s refresh_id=%s ms=%" PRIu64 " worker=%d", wk->st_name,
                            PQgetvalue(res, 0, 0), ms, wk->no);
                readers_pending(eng, wk->st_id);
            }
            PQclear(res);
            wk_finish(wk, WK_IDLE);
            engine_kick(eng);
            return;
        }
        const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (msg == NULL)
            msg =
                PQresultErrorMessage(res)[0] != '\0' ? PQresultErrorMessage(res) : "unknown error";
        if (state != NULL && strcmp(state, "40001") == 0 && st != NULL && !eng->stopping) {
            /* REPEATABLE READ met a concurrent change of the stream table's
             * catalog row (an analysis, an alter, a manual refresh): that
             * transaction is over, so run again at once; not a failure. */
            sl_log_info("engine.refresh_retry", "stream_table=%s sqlstate=40001 worker=%d",
                        wk->st_name, wk->no);
            st->pending = true;
            PQclear(res);
            wk_finish(wk, WK_IDLE);
            engine_kick(eng);
            return;
        }
        char hq[1024];
        sl_log_warn("engine.refresh_failed",
                    "stream_table=%s sqlstate=%s ms=%" PRIu64 " worker=%d err=%s%s", wk->st_name,
                    state ? state : "", ms, wk->no, sl_log_quote(q, sizeof q, msg),
                    hint_kv(res, hq, sizeof hq));
        if (st != NULL)
            st->pending = true; /* retried after its backoff */
        if (eng->stopping || sqlstate_is_connection(state)) {
            /* Not the stream table's fault (or we are going away). */
            sl_err_t e;
            sl_err_clear(&e);
            sl_err_set(&e, SL_ERR, "%s", msg);
            PQclear(res);
            wk_finish(wk, WK_IDLE);
            if (!eng->stopping) {
                wk_set_state(wk, WK_DOWN);
                sl_pgconn_reset(pc, &e);
            }
            engine_kick(eng);
            return;
        }
        char id[32];
        snprintf(id, sizeof id, "%" PRId64, wk->st_id);
        const char *fp[3] = {id, msg, state};
        wk_set_state(wk, WK_RECORD);
        sl_err_t e;
        sl_err_clear(&e);
        int rc = sl_pgconn_send(pc, SQL_FAILURE, 3, fp, &e);
        PQclear(res); /* msg and state point into it */
        (void)rc;     /* on failure wk_on_down ran */
        return;
    }
    case WK_RECORD:
        if (rs == PGRES_TUPLES_OK) {
            sl_log_info("engine.failure_recorded", "stream_table=%s status=%s worker=%d",
                        wk->st_name, PQgetvalue(res, 0, 0), wk->no);
        } else {
            const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
            sl_log_warn("engine.record_failed", "stream_table=%s worker=%d err=%s", wk->st_name,
                        wk->no, sl_log_quote(q, sizeof q, msg ? msg : "unknown error"));
        }
        PQclear(res);
        wk_finish(wk, WK_IDLE);
        engine_kick(eng);
        return;
    case WK_DOWN:
    case WK_IDLE:
        /* Nothing was sent: a stray result. */
        PQclear(res);
        return;
    }
}

static void
wk_on_down(sl_pgconn_t *pc, const sl_err_t *err, void *ctx)
{
    engine_wk_t *wk = ctx;
    (void)pc;
    char q[SL_ERR_MSG_MAX + 16];
    if (wk->state == WK_REFRESH || wk->state == WK_RECORD) {
        engine_st_t *st = st_find(wk->eng, wk->st_id);
        if (st != NULL)
            st->pending = true; /* another worker retries it */
        /* It may have committed before the connection went: its readers
         * look too (the writers' list leaves our workers out). */
        readers_pending(wk->eng, wk->st_id);
        sl_log_warn("engine.worker_down", "worker=%d stream_table=%s err=%s", wk->no, wk->st_name,
                    sl_log_quote(q, sizeof q, err->msg));
    } else {
        sl_log_warn("engine.worker_down", "worker=%d err=%s", wk->no,
                    sl_log_quote(q, sizeof q, err->msg));
    }
    wk->backend_pid = 0;
    wk_finish(wk, WK_DOWN);
    engine_kick(wk->eng);
}

/* --- the main connection ------------------------------------------------ */

static void
main_poll_free(uv_handle_t *h)
{
    free(h);
}

static void
main_poll_cb(uv_poll_t *h, int status, int events)
{
    engine_t *eng = h->data;
    (void)events;
    if (h != eng->poll || eng->main == NULL)
        return;
    if (status < 0 || PQconsumeInput(eng->main) == 0) {
        engine_main_lost(eng, status < 0 ? uv_strerror(status) : PQerrorMessage(eng->main));
        return;
    }
    engine_kick(eng);
}

/* Fails unless the database's sluice catalog is at least at the version
 * this binary was built with (want), and sets *have to its version: the
 * generated SQL and the driver change together (an engine of version 12 on
 * a catalog of version 11 would analyse joins into statements whose
 * temporary tables that catalog's driver never writes). A newer catalog is
 * accepted, for the time between `sluice init` and the restart of the
 * engine with the new binary, but the caller then analyses nothing
 * (catalog_newer): its analyzer could write statements that the catalog
 * has since replaced (migration 38 forgot those that restrict by = ANY; an
 * engine of version 37 would write them again). */
static int
catalog_check(PGconn *conn, int want, int *have, sl_err_t *err)
{
    *have = want;
    if (want <= 0)
        return SL_OK;
    PGresult *res = PQexec(conn, "SELECT max(version) FROM sluice.schema_version");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        bool missing =
            state != NULL && (strcmp(state, "42P01") == 0 || strcmp(state, "3F000") == 0);
        int rc = missing ? sl_err_set(err, SL_ERR,
                                      "this database has no sluice catalog (sluice.schema_version "
                                      "is missing): run `sluice init --db ...` first")
                         : sl_pg_result_err(res, conn, err);
        PQclear(res);
        return rc;
    }
    *have = PQgetisnull(res, 0, 0) ? 0 : atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (*have < want)
        return sl_err_set(err, SL_ERR,
                          "the sluice catalog of this database is at version %d, this engine "
                          "needs version %d: run `sluice init --db ...` (it upgrades in place)",
                          *have, want);
    return SL_OK;
}

/* True (and logged) when the catalog is newer than this engine: stream
 * tables are then refreshed (in full where their analysis is missing) but
 * not analysed. */
static bool
catalog_newer(int have, int want)
{
    if (have <= want)
        return false;
    sl_log_warn("engine.catalog_newer",
                "catalog=%d engine=%d action=\"no analyses; stream tables that await one are "
                "refreshed in full; run the sluice engine of the catalog's release\"",
                have, want);
    return true;
}

/* Connects the main connection (blocking): settings, LISTEN, watch. */
static int
engine_main_connect(engine_t *eng, sl_err_t *err)
{
    PGconn *conn = NULL;
    int have = 0;
    int rc = sl_pg_connect(eng->o->db, "sluice-engine", &conn, err);
    if (rc == SL_OK)
        rc = catalog_check(conn, eng->o->catalog_version, &have, err);
    if (rc == SL_OK)
        eng->analyse_off = catalog_newer(have, eng->o->catalog_version);
    if (rc == SL_OK)
        rc = sl_pg_exec(conn, eng->settings, err);
    if (rc == SL_OK)
        rc = sl_pg_exec(conn, "LISTEN " SL_ENGINE_CHANNEL, err);
    if (rc != SL_OK) {
        PQfinish(conn);
        return rc;
    }
    uv_poll_t *p = malloc(sizeof *p);
    if (p == NULL) {
        PQfinish(conn);
        return sl_err_nomem(err, "a poll handle");
    }
    int urc = uv_poll_init(&eng->loop, p, PQsocket(conn));
    if (urc != 0) {
        free(p);
        PQfinish(conn);
        return sl_err_set(err, SL_ERR, "cannot watch the PostgreSQL socket: %s", uv_strerror(urc));
    }
    p->data = eng;
    if ((urc = uv_poll_start(p, UV_READABLE, main_poll_cb)) != 0) {
        /* An initialised handle is freed only once closed. */
        uv_close((uv_handle_t *)p, main_poll_free);
        PQfinish(conn);
        return sl_err_set(err, SL_ERR, "cannot watch the PostgreSQL socket: %s", uv_strerror(urc));
    }
    eng->main = conn;
    eng->poll = p;
    eng->armed = false;
    writers_drop(eng);
    /* Whatever happened while we were away. */
    mark_all_pending(eng);
    eng->next_poll_ms = sl_now_ms() + (uint64_t)eng->o->safety_poll_ms;
    return SL_OK;
}

static void
engine_main_close(engine_t *eng)
{
    if (eng->poll != NULL) {
        uv_poll_stop(eng->poll);
        uv_close((uv_handle_t *)eng->poll, main_poll_free);
        eng->poll = NULL;
    }
    PQfinish(eng->main);
    eng->main = NULL;
    eng->armed = false;
    writers_drop(eng);
}

static void
reconn_cb(uv_timer_t *t)
{
    engine_t *eng = t->data;
    if (eng->stopping)
        return;
    sl_err_t e;
    sl_err_clear(&e);
    if (engine_main_connect(eng, &e) != SL_OK) {
        sl_backoff_failure(&eng->bo, sl_now_ms());
        uint32_t delay = sl_backoff_next(&eng->bo);
        char q[SL_ERR_MSG_MAX + 16];
        sl_log_warn("engine.connect_failed", "err=%s next_delay_ms=%" PRIu32,
                    sl_log_quote(q, sizeof q, e.msg), delay);
        uv_timer_start(&eng->reconn, reconn_cb, delay, 0);
        return;
    }
    sl_backoff_success(&eng->bo, sl_now_ms());
    sl_log_info("engine.connected", "db=%s workers=%d safety_poll_ms=%d", eng->red, eng->o->workers,
                eng->o->safety_poll_ms);
    engine_kick(eng);
}

static void
engine_main_lost(engine_t *eng, const char *why)
{
    char q[SL_ERR_MSG_MAX + 16];
    sl_log_warn("engine.disconnected", "err=%s", sl_log_quote(q, sizeof q, why));
    engine_main_close(eng);
    if (eng->stopping)
        return;
    sl_backoff_failure(&eng->bo, sl_now_ms());
    uv_timer_start(&eng->reconn, reconn_cb, sl_backoff_next(&eng->bo), 0);
}

/* A statement on main failed: the connection is gone, or the catalog said
 * no. Returns true when the connection was lost (and is being replaced). */
static bool
main_failed(engine_t *eng, const char *what, const sl_err_t *e)
{
    if (PQstatus(eng->main) != CONNECTION_OK) {
        engine_main_lost(eng, e->msg);
        return true;
    }
    char q[SL_ERR_MSG_MAX + 16];
    sl_log_warn("engine.main_failed", "what=%s err=%s", what, sl_log_quote(q, sizeof q, e->msg));
    return false;
}

/* Takes the notifications main has received; true when one was a ring. */
static bool
main_drain_rings(engine_t *eng)
{
    bool rung = false;
    PGnotify *n;
    while ((n = PQnotifies(eng->main)) != NULL) {
        rung = rung || strcmp(n->relname, SL_ENGINE_CHANNEL) == 0;
        PQfreemem(n);
    }
    return rung;
}

static int
main_exec(engine_t *eng, const char *sql, sl_err_t *err)
{
    return sl_pg_exec(eng->main, sql, err);
}

/* --- writers in progress when the doorbell was armed --------------------- */

static void
writers_drop(engine_t *eng)
{
    free(eng->writers);
    eng->writers = NULL;
}

/* Right after arming: lists the transactions in progress (see the file
 * header), to be polled from the next step on. */
static int
writers_list(engine_t *eng, sl_err_t *err)
{
    writers_drop(eng);
    /* Our workers' backends: "{1,2}", at most 12 bytes per pid. */
    size_t cap = 3 + 12 * (size_t)eng->o->workers, len = 0;
    char *pids = malloc(cap);
    if (pids == NULL)
        return sl_err_nomem(err, "the list of worker backends");
    pids[len++] = '{';
    for (int i = 0; i < eng->o->workers; i++)
        if (eng->wks[i].backend_pid > 0)
            len += (size_t)snprintf(pids + len, cap - len, "%s%d", len > 1 ? "," : "",
                                    eng->wks[i].backend_pid);
    snprintf(pids + len, cap - len, "}");
    const char *params[1] = {pids};
    PGresult *res = PQexecParams(eng->main, SQL_WRITERS, 1, NULL, params, NULL, NULL, 0);
    free(pids);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        int rc = sl_pg_result_err(res, eng->main, err);
        PQclear(res);
        return rc;
    }
    if (!PQgetisnull(res, 0, 0)) {
        eng->writers = strdup(PQgetvalue(res, 0, 0));
        if (eng->writers == NULL) {
            PQclear(res);
            return sl_err_set(err, SL_ERR, "out of memory listing transactions in progress");
        }
        eng->writers_n = atoi(PQgetvalue(res, 0, 1));
        eng->writers_gap_ms = SL_ENGINE_WRITERS_POLL_MS;
        eng->writers_poll_ms = sl_now_ms() + eng->writers_gap_ms;
    }
    PQclear(res);
    return SL_OK;
}

/* How many of the listed transactions are still in progress; -1 (err set)
 * on failure. */
static int
writers_left(engine_t *eng, sl_err_t *err)
{
    const char *params[1] = {eng->writers};
    PGresult *res = PQexecParams(eng->main, SQL_WRITERS_LEFT, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        sl_pg_result_err(res, eng->main, err);
        PQclear(res);
        return -1;
    }
    int left = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    return left;
}

/* --- the step ------------------------------------------------------------ */

static void
kick_cb(uv_timer_t *t)
{
    engine_t *eng = t->data;
    eng->kicked = false;
    engine_step(eng);
}

static void
engine_kick(engine_t *eng)
{
    if (eng->kicked)
        return;
    eng->kicked = true;
    uv_timer_start(&eng->kick, kick_cb, 0, 0);
}

static void
wake_cb(uv_timer_t *t)
{
    engine_step(t->data);
}

/* Starts what may start, in SQL_STATE order. Returns how many started. */
static int
engine_start_due(engine_t *eng)
{
    int started = 0;
    uint64_t now = sl_now_ms();
    for (size_t i = 0; i < eng->nsts && !eng->stopping; i++) {
        engine_wk_t *wk = idle_worker(eng);
        if (wk == NULL)
            break;
        if (st_startable(eng, &eng->sts[i], now)) {
            wk_start(wk, &eng->sts[i]);
            started++;
        }
    }
    return started;
}

/* True when a ring would help: no stream table could start now (for want
 * of a worker or otherwise), and some active one is not pending already (a
 * ring would make it so). Refreshes in flight do not count: a slow one must
 * not keep writers from waking the engine for the others. */
static bool
engine_wants_rings(const engine_t *eng)
{
    uint64_t now = sl_now_ms();
    bool useful = false;
    for (size_t i = 0; i < eng->nsts; i++) {
        if (st_startable(eng, &eng->sts[i], now))
            return false;
        useful = useful || (eng->sts[i].active && !eng->sts[i].pending);
    }
    return useful;
}

/* Everything that is not a reaction to one event: see the file header. */
static void
engine_step(engine_t *eng)
{
    if (eng->stopping || eng->main == NULL)
        return;
    sl_err_t e;
    sl_err_clear(&e);
    uint64_t now = sl_now_ms();
    if (main_drain_rings(eng) || eng->rung) {
        eng->rung = false;
        mark_all_pending(eng);
        if (eng->armed) {
            /* Busy from now on: writers need not ring until we are idle. */
            if (main_exec(eng, SQL_DISARM, &e) != SL_OK && main_failed(eng, "disarm", &e))
                return;
            eng->armed = false;
            writers_drop(eng);
            sl_log_debug("engine.disarmed", "reason=ring");
        }
    }
    if (now >= eng->next_poll_ms) {
        mark_all_pending(eng);
        eng->next_poll_ms = now + (uint64_t)eng->o->safety_poll_ms;
    }
    for (int pass = 0; pass < 2; pass++) {
        if (engine_load(eng, &e) != SL_OK) {
            if (main_failed(eng, "read the catalog", &e))
                return;
            break;
        }
        bool stale = false;
        for (size_t i = 0; i < eng->nsts; i++)
            stale = stale || eng->sts[i].stale;
        if (stale && !eng->analyse_off && now >= eng->analyse_after_ms) {
            if (engine_analyse(eng->main, &e) != SL_OK) {
                if (main_failed(eng, "analyse", &e))
                    return;
                eng->analyse_after_ms = now + SL_ENGINE_ANALYSE_RETRY_MS;
            }
            if (engine_load(eng, &e) != SL_OK) {
                if (main_failed(eng, "read the catalog", &e))
                    return;
                break;
            }
        }
        engine_start_due(eng);
        if (eng->armed || !engine_wants_rings(eng))
            break;
        /* Idle and disarmed: arm, then the confirming pass. */
        if (main_exec(eng, SQL_ARM, &e) != SL_OK) {
            if (main_failed(eng, "arm", &e))
                return;
            break;
        }
        eng->armed = true;
        sl_log_debug("engine.armed", "stream_tables=%zu", eng->nsts);
        /* The confirming pass: what started while disarmed runs once more
         * (after its refresh in flight, if any). */
        for (size_t i = 0; i < eng->nsts; i++) {
            if (eng->sts[i].unbelled)
                eng->sts[i].pending = true;
            eng->sts[i].unbelled = false;
        }
        if (main_drain_rings(eng))
            eng->rung = true;
        if (writers_list(eng, &e) != SL_OK && main_failed(eng, "list transactions in progress", &e))
            return;
    }
    if (eng->writers != NULL && now >= eng->writers_poll_ms) {
        int left = writers_left(eng, &e);
        if (left < 0) {
            if (main_failed(eng, "look at transactions in progress", &e))
                return;
        } else if (left < eng->writers_n) {
            /* Some writers that may have tried the lock before it was
             * taken are gone: a confirming pass for them now, not once the
             * slowest of the list is gone too (a long transaction would
             * hold back the others' changes for its whole length). */
            sl_log_debug("engine.confirmed", "reason=writers_done left=%d", left);
            eng->writers_n = left;
            mark_all_pending(eng);
            engine_kick(eng);
            if (left == 0)
                writers_drop(eng);
        }
        if (left > 0) {
            eng->writers_poll_ms = now + eng->writers_gap_ms;
            eng->writers_gap_ms = eng->writers_gap_ms * 2 > SL_ENGINE_WRITERS_POLL_MAX_MS
                                      ? SL_ENGINE_WRITERS_POLL_MAX_MS
                                      : eng->writers_gap_ms * 2;
        }
    }
    if (eng->flush_ms < eng->flushed_ms + SL_ENGINE_FLUSH_GAP_MS)
        eng->flush_ms = eng->flushed_ms + SL_ENGINE_FLUSH_GAP_MS;
    if (eng->flush_ms <= sl_now_ms()) {
        PGresult *fl = PQexec(eng->main, SQL_FLUSH);
        if (PQresultStatus(fl) != PGRES_TUPLES_OK) {
            sl_pg_result_err(fl, eng->main, &e);
            PQclear(fl);
            if (main_failed(eng, "flush notifications", &e))
                return;
        } else {
            PQclear(fl);
        }
        eng->flushed_ms = sl_now_ms();
        eng->flush_ms = UINT64_MAX;
        /* The next one, if any, is learnt by the next step. */
        engine_kick(eng);
    }
    if (main_drain_rings(eng))
        eng->rung = true;
    if (eng->rung) {
        engine_kick(eng);
        return;
    }
    /* Sleep until the earliest timed event; rings, results and signals
     * wake the loop by themselves. */
    now = sl_now_ms();
    uint64_t at = eng->next_poll_ms;
    if (eng->flush_ms < at)
        at = eng->flush_ms;
    if (eng->writers != NULL && eng->writers_poll_ms < at)
        at = eng->writers_poll_ms;
    if (eng->analyse_after_ms > now && eng->analyse_after_ms < at)
        at = eng->analyse_after_ms;
    for (size_t i = 0; i < eng->nsts; i++) {
        const engine_st_t *st = &eng->sts[i];
        /* Due now but not started: waits for a worker or an upstream, whose
         * result wakes the loop. */
        if (st->active && st->pending && st->due_ms > now && st->due_ms < at)
            at = st->due_ms;
    }
    uv_timer_start(&eng->wake, wake_cb, at > now ? at - now : 0, 0);
}

/* --- start and stop ------------------------------------------------------ */

static void
handle_closed_cb(void *arg)
{
    engine_t *eng = arg;
    eng->handles--;
}

/* Closes everything; uv_run then returns. */
static void
engine_close(engine_t *eng)
{
    uv_timer_stop(&eng->kick);
    uv_timer_stop(&eng->wake);
    uv_timer_stop(&eng->reconn);
    for (int i = 0; i < eng->o->workers; i++) {
        if (eng->wks[i].pc != NULL) {
            sl_pgconn_close(eng->wks[i].pc, handle_closed_cb, eng);
            eng->wks[i].pc = NULL;
        }
        free(eng->wks[i].st_name);
        eng->wks[i].st_name = NULL;
    }
    engine_main_close(eng);
    uv_close((uv_handle_t *)&eng->kick, NULL);
    uv_close((uv_handle_t *)&eng->wake, NULL);
    uv_close((uv_handle_t *)&eng->reconn, NULL);
    uv_close((uv_handle_t *)&eng->sigterm, NULL);
    uv_close((uv_handle_t *)&eng->sigint, NULL);
}

/* While stopping: close once nothing is in flight; past the grace period,
 * cancel what still runs. Runs on the reconn timer every 20 ms. */
static void
stop_check_cb(uv_timer_t *t)
{
    engine_t *eng = t->data;
    if (in_flight_count(eng) == 0) {
        engine_close(eng);
        return;
    }
    if (!eng->cancelled && sl_now_ms() >= eng->next_poll_ms) {
        eng->cancelled = true;
        for (int i = 0; i < eng->o->workers && eng->main != NULL; i++) {
            engine_wk_t *wk = &eng->wks[i];
            if (wk->state != WK_REFRESH || wk->backend_pid == 0)
                continue;
            char sql[64];
            snprintf(sql, sizeof sql, "SELECT pg_cancel_backend(%d)", wk->backend_pid);
            sl_err_t e;
            sl_err_clear(&e);
            sl_log_warn("engine.cancel", "stream_table=%s worker=%d grace_ms=%d", wk->st_name,
                        wk->no, SL_ENGINE_STOP_GRACE_MS);
            (void)main_exec(eng, sql, &e);
        }
    }
    if (sl_now_ms() >= eng->next_poll_ms + SL_ENGINE_STOP_GRACE_MS) {
        /* Cancelled and still not back: the server rolls them back. */
        engine_close(eng);
        return;
    }
    uv_timer_start(&eng->reconn, stop_check_cb, 20, 0);
}

static void
signal_cb(uv_signal_t *h, int signum)
{
    engine_t *eng = h->data;
    if (eng->stopping)
        return;
    eng->stopping = true;
    engine_stop = 1;
    sl_log_info("engine.stopping", "signal=%s in_flight=%d",
                signum == SIGTERM ? "SIGTERM" : "SIGINT", in_flight_count(eng));
    uv_timer_stop(&eng->wake);
    uv_timer_stop(&eng->kick);
    /* next_poll_ms is unused from here on: it holds the grace deadline. */
    eng->next_poll_ms = sl_now_ms() + SL_ENGINE_STOP_GRACE_MS;
    uv_timer_start(&eng->reconn, stop_check_cb, 0, 0);
}

static void
walk_close_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int
engine_loop(const sl_engine_opts_t *o, sl_err_t *err)
{
    engine_t *eng = calloc(1, sizeof *eng);
    if (eng == NULL)
        return sl_err_nomem(err, "the engine");
    eng->o = o;
    eng->flush_ms = UINT64_MAX;
    snprintf(eng->settings, sizeof eng->settings, "SET sluice.notify_coalesce_ms = %d",
             o->notify_coalesce_ms);
    sl_pg_conninfo_redact(o->db, eng->red, sizeof eng->red);
    sl_backoff_init(&eng->bo, sl_now_us());
    if ((eng->wks = calloc((size_t)o->workers, sizeof *eng->wks)) == NULL) {
        free(eng);
        return sl_err_nomem(err, "the engine's workers");
    }
    int urc = uv_loop_init(&eng->loop);
    if (urc != 0) {
        free(eng->wks);
        free(eng);
        return sl_err_set(err, SL_ERR, "cannot create the event loop: %s", uv_strerror(urc));
    }
    uv_timer_init(&eng->loop, &eng->kick);
    uv_timer_init(&eng->loop, &eng->wake);
    uv_timer_init(&eng->loop, &eng->reconn);
    uv_signal_init(&eng->loop, &eng->sigterm);
    uv_signal_init(&eng->loop, &eng->sigint);
    eng->kick.data = eng->wake.data = eng->reconn.data = eng;
    eng->sigterm.data = eng->sigint.data = eng;
    uv_signal_start(&eng->sigterm, signal_cb, SIGTERM);
    uv_signal_start(&eng->sigint, signal_cb, SIGINT);

    int rc = SL_OK;
    const sl_pgconn_cbs_t cbs = {
        .on_up = wk_on_up, .on_result = wk_on_result, .on_down = wk_on_down};
    for (int i = 0; i < o->workers && rc == SL_OK; i++) {
        engine_wk_t *wk = &eng->wks[i];
        wk->eng = eng;
        wk->no = i + 1;
        char name[32];
        snprintf(name, sizeof name, "engine worker %d", wk->no);
        rc = sl_pgconn_new(&eng->loop, o->db, name, &cbs, wk, &wk->pc, err);
        if (rc == SL_OK) {
            eng->handles++;
            sl_pgconn_start(wk->pc);
        }
    }
    if (rc == SL_OK)
        reconn_cb(&eng->reconn); /* the main connection, retried on failure */
    else
        engine_close(eng);
    uv_run(&eng->loop, UV_RUN_DEFAULT);
    /* Anything left (there should be nothing) is closed before the loop. */
    uv_walk(&eng->loop, walk_close_cb, NULL);
    uv_run(&eng->loop, UV_RUN_DEFAULT);
    assert(eng->handles == 0);
    if (uv_loop_close(&eng->loop) != 0)
        sl_log_warn("engine.loop_close", "err=\"handles still open\"");
    st_free_all(eng->sts, eng->nsts);
    free(eng->wks);
    free(eng);
    return rc;
}

/* --- --once -------------------------------------------------------------- */

static int
engine_once(const sl_engine_opts_t *o, sl_err_t *err)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = engine_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    char settings[128];
    snprintf(settings, sizeof settings, "SET sluice.notify_coalesce_ms = %d",
             o->notify_coalesce_ms);
    PGconn *conn = NULL;
    int have = 0;
    int rc = sl_pg_connect(o->db, "sluice-engine", &conn, err);
    if (rc == SL_OK)
        rc = catalog_check(conn, o->catalog_version, &have, err);
    if (rc == SL_OK)
        rc = sl_pg_exec(conn, settings, err);
    if (rc == SL_OK) {
        char red[1024];
        sl_log_info("engine.connected", "db=%s", sl_pg_conninfo_redact(o->db, red, sizeof red));
        if (!catalog_newer(have, o->catalog_version))
            rc = engine_analyse(conn, err);
    }
    if (rc == SL_OK)
        rc = engine_once_refresh(conn, err);
    PQfinish(conn);
    return rc;
}

int
sl_engine_run(const sl_engine_opts_t *o, sl_err_t *err)
{
    assert(o->workers >= 1 && o->safety_poll_ms >= 1);
    signal(SIGPIPE, SIG_IGN);
    char red[1024];
    sl_log_info("engine.start",
                "version=%s db=%s notify_coalesce_ms=%d once=%s workers=%d safety_poll_ms=%d",
                SL_VERSION, sl_pg_conninfo_redact(o->db, red, sizeof red), o->notify_coalesce_ms,
                o->once ? "true" : "false", o->workers, o->safety_poll_ms);
    int rc = o->once ? engine_once(o, err) : engine_loop(o, err);
    sl_log_info("engine.stopped", "signal=%s", engine_stop ? "true" : "false");
    return rc;
}
