/*
 * tests/bench/bench_st_noop.c - sl_bench_st_noop: the cost of refreshing a
 * stream table when nothing changed, as a client sees it.
 *
 *   sl_bench_st_noop --db CONNINFO --stream-table NAME [--n N] [--warmup N]
 *
 * One connection, autocommit: N calls of
 *   SELECT sluice.refresh_stream_table($1)
 * each its own transaction, so each includes its commit (since catalog
 * version 14 a refresh that finds nothing writes only to an unlogged table,
 * and that commit does not wait for a WAL flush; before, it updated the
 * catalog row and did),
 * timed one by one on CLOCK_MONOTONIC from just before the query is sent to
 * just after its result is read: the client's round trip included. The
 * statement is prepared once; --warmup calls (default 20) run first and are
 * not counted. Every call must return NULL (nothing changed): anything else
 * means a writer touched a source, and the program fails.
 *
 * Output, one line on stdout:
 *   n= mean_ms= p50_ms= p90_ms= p99_ms= max_ms=
 */
#include "tests/bench/bench.h"

#include <inttypes.h>
#include <libpq-fe.h>

#define PROG "sl_bench_st_noop"

static PGresult *
refresh(PGconn *conn, const char *name)
{
    const char *params[1] = {name};
    PGresult *res = PQexecPrepared(conn, "refresh", 1, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        bench_die(PROG, "refresh_stream_table: %s", PQerrorMessage(conn));
    if (PQntuples(res) != 1 || !PQgetisnull(res, 0, 0))
        bench_die(PROG,
                  "refresh_stream_table('%s') returned refresh id %s: something changed a source",
                  name, PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "(no row)");
    return res;
}

int
main(int argc, char **argv)
{
    const char *db = NULL, *name = NULL;
    int64_t n = 1000, warmup = 20;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            bench_die(PROG, "%s: missing value", a);
        if (strcmp(a, "--db") == 0)
            db = argv[++i];
        else if (strcmp(a, "--stream-table") == 0)
            name = argv[++i];
        else if (strcmp(a, "--n") == 0)
            n = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--warmup") == 0)
            warmup = bench_parse_int(PROG, a, argv[++i]);
        else
            bench_die(PROG, "unknown option %s", a);
    }
    if (db == NULL || name == NULL)
        bench_die(PROG, "--db and --stream-table are required");

    PGconn *conn = PQconnectdb(db);
    if (PQstatus(conn) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(conn));
    PGresult *res = PQprepare(conn, "refresh", "SELECT sluice.refresh_stream_table($1)", 1, NULL);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        bench_die(PROG, "prepare: %s", PQerrorMessage(conn));
    PQclear(res);

    int64_t *lat = calloc((size_t)n, sizeof *lat);
    if (lat == NULL)
        bench_die(PROG, "out of memory");
    for (int64_t k = 0; k < warmup; k++)
        PQclear(refresh(conn, name));
    int64_t sum = 0;
    for (int64_t k = 0; k < n; k++) {
        int64_t t0 = bench_now_us();
        res = refresh(conn, name);
        lat[k] = bench_now_us() - t0;
        PQclear(res);
        sum += lat[k];
    }
    qsort(lat, (size_t)n, sizeof *lat, bench_cmp_i64);
    printf("n=%" PRId64 " mean_ms=%.3f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f\n", n,
           (double)sum / (double)n / 1000.0, (double)bench_quantile(lat, (size_t)n, 0.50) / 1000.0,
           (double)bench_quantile(lat, (size_t)n, 0.90) / 1000.0,
           (double)bench_quantile(lat, (size_t)n, 0.99) / 1000.0,
           (double)bench_quantile(lat, (size_t)n, 1.0) / 1000.0);
    PQfinish(conn);
    free(lat);
    return 0;
}
