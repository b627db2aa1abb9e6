/*
 * core/pg.c - small blocking libpq helpers.
 *
 * Used by one-shot commands (`sluice init`) and start-up checks. The relay's
 * hot path never blocks: it drives libpq asynchronously on the libuv loop
 * (core/pgconn.c). Errors carry the server's SQLSTATE and hint so callers can
 * pass PostgreSQL's own explanation through to the user.
 */
#include "core/core.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <string.h>

/* sluice relies on pg_current_snapshot()/xid8 and MERGE: PostgreSQL 15. */
#define SL_PG_MIN_SERVER_VERSION 150000

int
sl_pg_result_err(const PGresult *res, PGconn *conn, sl_err_t *err)
{
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    const char *detail = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL) : NULL;
    const char *hint = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_HINT) : NULL;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (primary == NULL) {
        const char *m = conn ? PQerrorMessage(conn) : "unknown libpq error";
        size_t len = strlen(m);
        while (len > 0 && (m[len - 1] == '\n' || m[len - 1] == ' '))
            len--;
        sl_err_set(err, SL_ERR, "%.*s", (int)len, m);
    } else if (detail != NULL) {
        sl_err_set(err, SL_ERR, "%s (%s)", primary, detail);
    } else {
        sl_err_set(err, SL_ERR, "%s", primary);
    }
    if (hint != NULL)
        sl_err_hint(err, "%s", hint);
    if (state != NULL && err != NULL)
        snprintf(err->sqlstate, sizeof err->sqlstate, "%s", state);
    return SL_ERR;
}

int
sl_pg_connect(const char *conninfo, const char *app, PGconn **out, sl_err_t *err)
{
    const char *keys[] = {"dbname", "application_name", NULL};
    const char *vals[] = {conninfo, app, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (conn == NULL)
        return sl_err_nomem(err, "a PostgreSQL connection");
    if (PQstatus(conn) != CONNECTION_OK) {
        sl_pg_result_err(NULL, conn, err);
        sl_err_prefix(err, "cannot connect to PostgreSQL: ");
        sl_err_hint(err, "check the connection string and that the server is running");
        PQfinish(conn);
        return SL_ERR;
    }
    int v = PQserverVersion(conn);
    if (v < SL_PG_MIN_SERVER_VERSION) {
        sl_err_set(err, SL_ERR, "PostgreSQL %d.%d is too old: sluice needs 15 or newer", v / 10000,
                   v % 10000);
        PQfinish(conn);
        return SL_ERR;
    }
    *out = conn;
    return SL_OK;
}

int
sl_pg_exec(PGconn *conn, const char *sql, sl_err_t *err)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        sl_pg_result_err(res, conn, err);
        PQclear(res);
        return SL_ERR;
    }
    PQclear(res);
    return SL_OK;
}

const char *
sl_pg_conninfo_redact(const char *conninfo, char *buf, size_t n)
{
    if (n == 0)
        return buf;
    buf[0] = '\0';
    /* Parse with libpq itself, so every form it accepts (URI, key = value with
     * spaces or quotes, percent-encoding) is understood, then print only what
     * is set, with the password replaced. */
    /* A bare word is a database name (libpq's expand_dbname): nothing to hide. */
    if (conninfo != NULL && strchr(conninfo, '=') == NULL && strstr(conninfo, "://") == NULL) {
        snprintf(buf, n, "%s", conninfo);
        return buf;
    }
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo != NULL ? conninfo : "", &errmsg);
    if (opts == NULL) {
        PQfreemem(errmsg);
        snprintf(buf, n, "[redacted: not a valid connection string]");
        return buf;
    }
    size_t off = 0;
    for (PQconninfoOption *o = opts; o->keyword != NULL && off < n; o++) {
        if (o->val == NULL || o->val[0] == '\0')
            continue;
        bool secret = strcmp(o->keyword, "password") == 0 || o->dispchar[0] == '*';
        int w = snprintf(buf + off, n - off, "%s%s=%s", off ? " " : "", o->keyword,
                         secret ? "[redacted]" : o->val);
        if (w < 0)
            break;
        off += (size_t)w;
    }
    PQconninfoFree(opts);
    return buf;
}
