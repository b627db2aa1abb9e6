/*
 * core/migrate.c - the catalog migration runner behind `sluice init`.
 *
 * Each folder owns numbered SQL files (outbox/sql/0001_outbox.sql, ...) that
 * are embedded into the binary. The runner:
 *
 *   1. takes a session advisory lock, so two `sluice init` runs at once are
 *      safe: the second waits, then finds nothing left to do;
 *   2. creates schema sluice and the sluice.schema_version table if missing;
 *   3. refuses a database whose recorded version is newer than this binary
 *      knows (an older binary must never "downgrade" a catalog by accident);
 *   4. applies every version not recorded yet, in version order, each in its
 *      own transaction, and records it, so a failure leaves the catalog at
 *      the last good version.
 */
#include "core/core.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fixed key for pg_advisory_lock: "sluice" in ASCII, so it is recognisable in pg_locks. */
#define SL_MIGRATE_LOCK_KEY 0x736c75696365LL

static int
migration_version(const sl_sql_file_t *f, sl_err_t *err)
{
    char *end = NULL;
    long v = strtol(f->name, &end, 10);
    if (end == f->name || *end != '_' || v <= 0)
        return sl_err_set(err, SL_ERR, "embedded migration \"%s\" has no version prefix", f->name);
    return (int)v;
}

static int
query_int(PGconn *conn, const char *sql, long long *out, sl_err_t *err)
{
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        sl_pg_result_err(res, conn, err);
        PQclear(res);
        return SL_ERR;
    }
    *out = PQgetisnull(res, 0, 0) ? 0 : atoll(PQgetvalue(res, 0, 0));
    PQclear(res);
    return SL_OK;
}

int
sl_migrate(PGconn *conn, const sl_sql_file_t *files, size_t nfiles, int *applied, sl_err_t *err)
{
    char sql[256];
    int count = 0;
    int newest = 0;
    for (size_t i = 0; i < nfiles; i++) {
        int v = migration_version(&files[i], err);
        if (v < 0)
            return SL_ERR;
        if (v <= newest)
            return sl_err_set(err, SL_ERR, "embedded migrations out of order at \"%s\"",
                              files[i].name);
        newest = v;
    }

    snprintf(sql, sizeof sql, "SELECT pg_advisory_lock(%lld)", SL_MIGRATE_LOCK_KEY);
    if (sl_pg_exec(conn, sql, err) != SL_OK)
        return sl_err_prefix(err, "cannot take the migration lock: ");

    int rc = sl_pg_exec(conn,
                        "SET client_min_messages = warning;"
                        "CREATE SCHEMA IF NOT EXISTS sluice;"
                        "CREATE TABLE IF NOT EXISTS sluice.schema_version ("
                        "  version int PRIMARY KEY,"
                        "  name text NOT NULL,"
                        "  applied_at timestamptz NOT NULL DEFAULT now())",
                        err);
    if (rc != SL_OK) {
        sl_err_prefix(err, "cannot create schema sluice: ");
        goto fail_unlock;
    }

    long long current = 0;
    rc = query_int(conn, "SELECT max(version) FROM sluice.schema_version", &current, err);
    if (rc != SL_OK)
        goto fail_unlock;
    if (current > newest) {
        rc = sl_err_set(err, SL_ERR,
                        "database schema sluice is at version %lld, newer than this binary "
                        "(which knows up to version %d)",
                        current, newest);
        sl_err_hint(err, "run a sluice release that includes migration %lld", current);
        goto fail_unlock;
    }

    for (size_t i = 0; i < nfiles; i++) {
        int v = migration_version(&files[i], NULL);
        /* Apply every version not recorded yet, not only those above the
         * newest recorded: folders number their migrations independently. */
        long long have = 0;
        snprintf(sql, sizeof sql, "SELECT count(*) FROM sluice.schema_version WHERE version = %d",
                 v);
        if ((rc = query_int(conn, sql, &have, err)) != SL_OK)
            goto fail_unlock;
        if (have > 0)
            continue;
        if ((rc = sl_pg_exec(conn, "BEGIN", err)) != SL_OK)
            goto fail_unlock;
        if ((rc = sl_pg_exec(conn, files[i].text, err)) != SL_OK) {
            sl_err_prefix(err, "migration %s failed: ", files[i].name);
            PQclear(PQexec(conn, "ROLLBACK"));
            goto fail_unlock;
        }
        const char *params[2];
        char vbuf[16];
        snprintf(vbuf, sizeof vbuf, "%d", v);
        params[0] = vbuf;
        params[1] = files[i].name;
        PGresult *res = PQexecParams(
            conn, "INSERT INTO sluice.schema_version(version, name) VALUES ($1::int, $2)", 2, NULL,
            params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            rc = sl_pg_result_err(res, conn, err);
            PQclear(res);
            PQclear(PQexec(conn, "ROLLBACK"));
            goto fail_unlock;
        }
        PQclear(res);
        if ((rc = sl_pg_exec(conn, "COMMIT", err)) != SL_OK)
            goto fail_unlock;
        sl_log_info("init.migration", "version=%d name=%s", v, files[i].name);
        count++;
    }
    rc = SL_OK;

fail_unlock:
    snprintf(sql, sizeof sql, "SELECT pg_advisory_unlock(%lld)", SL_MIGRATE_LOCK_KEY);
    PQclear(PQexec(conn, sql));
    if (rc == SL_OK && applied != NULL)
        *applied = count;
    return rc;
}
