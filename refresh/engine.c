/*
 * refresh/engine.c - `sluice engine`: keeps every stream table of one
 * database current.
 *
 * One connection, one loop, a tick every SL_ENGINE_TICK_MS:
 *
 *   1. analyse: every stream table whose query has no current analysis
 *      (new, or altered) is read by the analyzer (refresh/analyze.c) and the
 *      result stored with sluice._set_analysis();
 *   2. refresh: every active stream table whose schedule has come is
 *      refreshed with sluice._refresh(id), each in its own transaction, in
 *      dependency order (a stream table after the stream tables it reads),
 *      so one tick sees a consistent chain;
 *   3. coalesced notifications whose window passed are sent
 *      (sluice._flush_notifications()).
 *
 * Refreshes run in PostgreSQL (refresh/sql): the engine decides when, and
 * records failures with sluice._record_failure(), which counts them. A
 * stream table that failed is retried after 100 ms, 200 ms, ... up to 30 s,
 * while the others keep their schedules. A stream table in status 'error'
 * (its source lost a column, was dropped, ...) is skipped until
 * alter_stream_table fixes it.
 *
 * The connection is re-established with the usual backoff (100 ms .. 30 s,
 * +-20 %), each attempt logged with its next delay. SIGTERM/SIGINT end the
 * loop after the refresh in progress; exit 0.
 */
#include "refresh/refresh.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>

#define SL_ENGINE_TICK_MS 100

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
    "                                  AND NOT a.attisdropped ORDER BY a.attnum)) "                \
    "                 ORDER BY k.oid), '[]') "                                                     \
    "          FROM sluice.stream_table_sources s "                                                \
    "          JOIN pg_class k ON k.oid = s.relid "                                                \
    "          JOIN pg_namespace n ON n.oid = k.relnamespace "                                     \
    "         WHERE s.stream_table_id = c.id) "                                                    \
    "  FROM sluice.stream_table_catalog c "                                                        \
    " WHERE c.analyzed_query IS DISTINCT FROM c.query ORDER BY c.id"

#define SQL_SET_ANALYSIS "SELECT sluice._set_analysis($1, $2, $3, $4, $5, $6, $7, $8)"

/*
 * Due stream tables, readers after what they read: depth = the longest
 * chain of stream tables below. A failed one waits 100 ms * 2^(n-1), at
 * most 30 s, after its last failure.
 */
#define SQL_DUE                                                                                  \
    "WITH RECURSIVE dep(id, depth) AS ("                                                         \
    "    SELECT c.id, 0 FROM sluice.stream_table_catalog c"                                      \
    "  UNION ALL"                                                                                \
    "    SELECT s.stream_table_id, d.depth + 1"                                                  \
    "      FROM dep d JOIN sluice.stream_table_catalog p ON p.id = d.id"                         \
    "      JOIN sluice.stream_table_sources s ON s.relid = p.relid AND s.is_stream_table"        \
    "     WHERE d.depth < 64) "                                                                  \
    "SELECT c.id, c.name FROM sluice.stream_table_catalog c "                                    \
    "  JOIN (SELECT id, max(depth) AS depth FROM dep GROUP BY id) d ON d.id = c.id "             \
    " WHERE c.status = 'active' "                                                                \
    "   AND (c.last_refresh_at IS NULL OR c.last_refresh_at + c.schedule <= clock_timestamp()) " \
    "   AND (c.consecutive_failures = 0 OR c.last_error_at + least(interval '30 s', "            \
    "        interval '100 ms' * power(2, least(c.consecutive_failures, 20) - 1)) "              \
    "        <= clock_timestamp()) "                                                             \
    " ORDER BY d.depth, c.id"

#define SQL_REFRESH "SELECT sluice._refresh($1)"
#define SQL_FAILURE "SELECT sluice._record_failure($1, $2, $3)"
#define SQL_FLUSH "SELECT sluice._flush_notifications()"

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
    }
    free(v);
}

/* Analyses one stale stream table (row r of res) and stores the result. */
static int
engine_analyse_one(PGconn *conn, PGresult *res, int r, sl_err_t *err)
{
    const char *id = PQgetvalue(res, r, 0);
    const char *name = PQgetvalue(res, r, 1);
    char **keys = NULL;
    size_t nkeys = 0, nsrcs = 0;
    cJSON *json = NULL;
    sl_analyze_src_t *srcs = NULL;
    int rc = parse_text_array(PQgetvalue(res, r, 4), &keys, &nkeys, err);
    if (rc == SL_OK)
        rc = parse_sources(PQgetvalue(res, r, 6), &json, &srcs, &nsrcs, err);
    sl_analysis_t a = {0};
    if (rc == SL_OK) {
        sl_analyze_in_t in = {
            .query = PQgetvalue(res, r, 2),
            .keys = (const char *const *)keys,
            .nkeys = nkeys,
            .has_keys = PQgetvalue(res, r, 3)[0] == 't',
            .sources = srcs,
            .nsources = nsrcs,
            .requested_full = PQgetvalue(res, r, 5)[0] == 't',
        };
        rc = sl_analyze(&in, &a, err);
        if (rc != SL_OK)
            sl_err_prefix(err, "stream table %s: ", name);
    }
    if (rc == SL_OK) {
        const char *params[8] = {id,     PQgetvalue(res, r, 2), a.mode,          a.reason,
                                 a.tree, a.affected_sql,        a.recompute_sql, a.unit_columns};
        PGresult *s = PQexecParams(conn, SQL_SET_ANALYSIS, 8, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(s) != PGRES_TUPLES_OK) {
            rc = sl_pg_result_err(s, conn, err);
            sl_err_prefix(err, "stream table %s: storing its analysis: ", name);
        } else {
            char q[512];
            sl_log_info("engine.analysed", "stream_table=%s mode=%s reason=%s", name, a.mode,
                        sl_log_quote(q, sizeof q, a.reason != NULL ? a.reason : ""));
        }
        PQclear(s);
    }
    sl_analysis_free(&a);
    free_sources(srcs, nsrcs);
    cJSON_Delete(json);
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
            const char *params[8] = {PQgetvalue(res, r, 0),
                                     PQgetvalue(res, r, 2),
                                     "full",
                                     e.msg,
                                     NULL,
                                     NULL,
                                     NULL,
                                     NULL};
            PQclear(PQexecParams(conn, SQL_SET_ANALYSIS, 8, NULL, params, NULL, NULL, 0));
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

/* Refreshes what is due. Returns SL_ERR only when the connection is gone. */
static int
engine_refresh_due(PGconn *conn, sl_err_t *err)
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
        char q[1024];
        sl_log_warn("engine.refresh_failed", "stream_table=%s sqlstate=%s err=%s", name,
                    state ? state : "", sl_log_quote(q, sizeof q, msg ? msg : ""));
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

/* Waits up to ms for the connection's socket or a signal. */
static void
engine_wait(PGconn *conn, int ms)
{
    int fd = PQsocket(conn);
    fd_set rd;
    FD_ZERO(&rd);
    if (fd >= 0)
        FD_SET(fd, &rd);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    if (select(fd >= 0 ? fd + 1 : 0, &rd, NULL, NULL, &tv) > 0)
        PQconsumeInput(conn);
}

int
sl_engine_run(const sl_engine_opts_t *o, sl_err_t *err)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = engine_on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char settings[128];
    snprintf(settings, sizeof settings, "SET sluice.notify_coalesce_ms = %d",
             o->notify_coalesce_ms);
    sl_backoff_t bo;
    sl_backoff_init(&bo, sl_now_ms());
    char red[1024];
    sl_log_info("engine.start", "version=%s db=%s notify_coalesce_ms=%d once=%s", SL_VERSION,
                sl_pg_conninfo_redact(o->db, red, sizeof red), o->notify_coalesce_ms,
                o->once ? "true" : "false");
    int rc = SL_OK;
    while (!engine_stop) {
        PGconn *conn = NULL;
        sl_err_t e;
        sl_err_clear(&e);
        rc = sl_pg_connect(o->db, "sluice-engine", &conn, &e);
        if (rc == SL_OK)
            rc = sl_pg_exec(conn, settings, &e);
        if (rc != SL_OK) {
            PQfinish(conn);
            if (o->once) {
                *err = e;
                return rc;
            }
            sl_backoff_failure(&bo, sl_now_ms());
            uint32_t delay = sl_backoff_next(&bo);
            char q[SL_ERR_MSG_MAX + 16];
            sl_log_warn("engine.connect_failed", "err=%s next_delay_ms=%" PRIu32,
                        sl_log_quote(q, sizeof q, e.msg), delay);
            for (uint32_t waited = 0; waited < delay && !engine_stop; waited += 50) {
                struct timespec ts = {0, 50 * 1000 * 1000};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        sl_backoff_success(&bo, sl_now_ms());
        sl_log_info("engine.connected", "db=%s", red);
        while (!engine_stop) {
            rc = engine_analyse(conn, &e);
            if (rc == SL_OK)
                rc = engine_refresh_due(conn, &e);
            if (rc != SL_OK || o->once)
                break;
            engine_wait(conn, SL_ENGINE_TICK_MS);
            if (PQstatus(conn) != CONNECTION_OK)
                break;
        }
        PQfinish(conn);
        if (o->once) {
            if (rc != SL_OK)
                *err = e;
            break;
        }
        if (!engine_stop) {
            char q[SL_ERR_MSG_MAX + 16];
            sl_log_warn("engine.disconnected", "err=%s", sl_log_quote(q, sizeof q, e.msg));
            rc = SL_OK;
        }
    }
    sl_log_info("engine.stopped", "signal=%s", engine_stop ? "true" : "false");
    return o->once ? rc : SL_OK;
}
