/*
 * tests/bench/bench_read.c - sl_bench_read: the raw outbox read rate.
 *
 *   sl_bench_read --db CONNINFO [--page N] [--pages N]
 *
 * Reads the whole outbox the way a new relay pipeline does: one range from
 * the empty snapshot SL_OUTBOX_SNAPSHOT_EMPTY to pg_current_snapshot(), in
 * pages of --page rows (default 1000) through the relay's own statement
 * SL_OUTBOX_SQL_READ, with text results and the relay's session settings.
 * The range is opened first with SL_OUTBOX_SQL_OPEN (upper snapshot and the
 * id bounds of its rows), as the relay does; the clock includes it (open_ms
 * on its own).
 * Every page is a separate round trip, waited for before the next one is
 * sent, exactly as the relay's reader does; nothing is done with the rows.
 * This is the ceiling for the relay's outbox -> sink rate on this machine.
 *
 * --pages N stops after N pages (used to time one page on a table without
 * statistics).
 *
 * Output, one line on stdout:
 *   rows=R pages=P seconds=S rate=R/S open_ms=O first_page_ms=F payload_bytes=B
 * payload_bytes is the total of payload::text lengths read.
 */
#include "tests/bench/bench.h"

#include "outbox/outbox.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdbool.h>

#define PROG "sl_bench_read"

/* Runs a statement that returns nothing useful; dies on failure. */
static void
exec_ok(PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
        bench_die(PROG, "%s: %s", sql, PQerrorMessage(conn));
    PQclear(res);
}

int
main(int argc, char **argv)
{
    const char *db = NULL;
    int64_t page = 1000;
    int64_t max_pages = INT64_MAX;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--db") == 0 && i + 1 < argc)
            db = argv[++i];
        else if (strcmp(argv[i], "--page") == 0 && i + 1 < argc)
            page = bench_parse_int(PROG, "--page", argv[++i]);
        else if (strcmp(argv[i], "--pages") == 0 && i + 1 < argc)
            max_pages = bench_parse_int(PROG, "--pages", argv[++i]);
        else
            bench_die(PROG, "usage: " PROG " --db CONNINFO [--page N] [--pages N]");
    }
    if (db == NULL)
        bench_die(PROG, "missing --db CONNINFO");

    PGconn *conn = PQconnectdb(db);
    if (PQstatus(conn) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(conn));
    /* The relay's session settings (relay/pipeline.c, pipeline_on_up). */
    exec_ok(conn, "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET statement_timeout = 0");

    char last[24], lim[24];
    snprintf(lim, sizeof lim, "%" PRId64, page);
    int64_t last_id = 0, rows = 0, pages = 0, first_page_us = 0, payload_bytes = 0;
    int64_t t0 = bench_now_us();
    PGresult *res;
    /* Open the range: upper snapshot and the id bounds of its rows. No topic
     * filter ($3, $4 NULL), as for a pipeline without "topics". */
    const char *open_params[4] = {SL_OUTBOX_SNAPSHOT_EMPTY, NULL, NULL, NULL};
    res = PQexecParams(conn, SL_OUTBOX_SQL_OPEN, 4, NULL, open_params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        bench_die(PROG, "open: %s", PQerrorMessage(conn));
    char *hi = strdup(PQgetvalue(res, 0, 0));
    bool empty = PQgetisnull(res, 0, 1);
    char max_id[24];
    snprintf(max_id, sizeof max_id, "%s", empty ? "0" : PQgetvalue(res, 0, 2));
    int64_t max_v = strtoll(max_id, NULL, 10);
    if (!empty)
        last_id = strtoll(PQgetvalue(res, 0, 1), NULL, 10) - 1;
    PQclear(res);
    int64_t open_us = bench_now_us() - t0;
    /* Pages until one comes back short or the range's max id is reached,
     * the relay's two completion rules (pipeline_on_page). */
    while (!empty) {
        snprintf(last, sizeof last, "%" PRId64, last_id);
        /* No topic filter: $5 and $6 NULL, as for a pipeline without "topics". */
        const char *params[7] = {SL_OUTBOX_SNAPSHOT_EMPTY, hi, last, lim, NULL, NULL, max_id};
        int64_t tp = bench_now_us();
        res = PQexecParams(conn, SL_OUTBOX_SQL_READ, 7, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            bench_die(PROG, "read: %s", PQerrorMessage(conn));
        if (pages == 0)
            first_page_us = bench_now_us() - tp;
        int n = PQntuples(res);
        for (int r = 0; r < n; r++)
            payload_bytes += PQgetlength(res, r, 4);
        if (n > 0)
            last_id = strtoll(PQgetvalue(res, n - 1, 0), NULL, 10);
        rows += n;
        pages++;
        PQclear(res);
        if (n < page || last_id >= max_v || pages >= max_pages)
            break;
    }
    double secs = (double)(bench_now_us() - t0) / 1e6;
    printf("rows=%" PRId64 " pages=%" PRId64 " seconds=%.3f rate=%.0f open_ms=%.1f "
           "first_page_ms=%.1f payload_bytes=%" PRId64 "\n",
           rows, pages, secs, secs > 0 ? (double)rows / secs : 0.0, (double)open_us / 1000.0,
           (double)first_page_us / 1000.0, payload_bytes);
    free(hi);
    PQfinish(conn);
    return 0;
}
