/*
 * tests/bench/bench_st_notify.c - sl_bench_st_notify: refresh commit ->
 * LISTEN client notified, for a stream table subscription without
 * coalescing.
 *
 *   sl_bench_st_notify --db CONNINFO --stream-table NAME --channel C
 *                      --change SQL [--n N] [--warmup N] [--timeout-ms MS]
 *
 * The caller has subscribed C to the stream table with
 * sluice.subscribe(NAME, C, 0) (coalesce_ms 0: one notification per
 * refresh). Two connections: a listener (LISTEN C) and a writer. N + warmup
 * iterations (default 1,000 + 20), one at a time:
 *
 *   1. writer, autocommit: SQL with $1 = the iteration number (it must change
 *      a source row so that the refresh has something to publish);
 *   2. writer: BEGIN; SELECT sluice.refresh_stream_table(NAME) -> refresh id
 *      r (must not be NULL); t0 = now; COMMIT sent without waiting;
 *   3. both sockets are polled (poll, PQconsumeInput, PQnotifies) until the
 *      COMMIT's result is in and the listener has received the notification
 *      whose "refresh_id" is r; its arrival time minus t0 is the latency.
 *
 * So the latency covers exactly the commit of the refresh transaction
 * (pg_notify is sent by it) and the delivery to the listener; the refresh
 * itself is before t0 and reported separately. Every time is on
 * CLOCK_MONOTONIC. A notification missing after --timeout-ms (default 5000)
 * fails the run; notifications of other refresh ids fail it too (nothing
 * else may refresh the stream table meanwhile).
 *
 * Output, one line on stdout:
 *   n= received= p50_ms= p90_ms= p99_ms= max_ms= commit_p50_ms=
 *   commit_p99_ms= refresh_p50_ms= refresh_p99_ms=
 * (commit_*: t0 -> the COMMIT's result read by the writer; refresh_*: the
 * SELECT refresh_stream_table call inside the transaction.)
 */
#include "tests/bench/bench.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdbool.h>

#define PROG "sl_bench_st_notify"

static void
pg_ok(PGconn *conn, PGresult *res, const char *what)
{
    ExecStatusType s = PQresultStatus(res);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        bench_die(PROG, "%s: %s", what, PQerrorMessage(conn));
    PQclear(res);
}

/* "refresh_id": <n> in a notification payload; -1 when absent. */
static int64_t
payload_refresh_id(const char *v)
{
    const char *p = strstr(v, "\"refresh_id\": ");
    return p ? strtoll(p + 14, NULL, 10) : -1;
}

static double
ms_at(const int64_t *sorted, int64_t n, double q)
{
    return (double)bench_quantile(sorted, (size_t)n, q) / 1000.0;
}

int
main(int argc, char **argv)
{
    const char *db = NULL, *name = NULL, *channel = NULL, *change = NULL;
    int64_t n = 1000, warmup = 20, timeout_ms = 5000;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            bench_die(PROG, "%s: missing value", a);
        if (strcmp(a, "--db") == 0)
            db = argv[++i];
        else if (strcmp(a, "--stream-table") == 0)
            name = argv[++i];
        else if (strcmp(a, "--channel") == 0)
            channel = argv[++i];
        else if (strcmp(a, "--change") == 0)
            change = argv[++i];
        else if (strcmp(a, "--n") == 0)
            n = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--warmup") == 0)
            warmup = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--timeout-ms") == 0)
            timeout_ms = bench_parse_int(PROG, a, argv[++i]);
        else
            bench_die(PROG, "unknown option %s", a);
    }
    if (db == NULL || name == NULL || channel == NULL || change == NULL)
        bench_die(PROG, "--db, --stream-table, --channel and --change are required");

    PGconn *lis = PQconnectdb(db);
    if (PQstatus(lis) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(lis));
    char *ident = PQescapeIdentifier(lis, channel, strlen(channel));
    if (ident == NULL)
        bench_die(PROG, "channel: %s", PQerrorMessage(lis));
    char sql[256];
    snprintf(sql, sizeof sql, "LISTEN %s", ident);
    PQfreemem(ident);
    pg_ok(lis, PQexec(lis, sql), "LISTEN");

    PGconn *w = PQconnectdb(db);
    if (PQstatus(w) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(w));
    pg_ok(w, PQprepare(w, "change", change, 1, NULL), "prepare --change");
    pg_ok(w, PQprepare(w, "refresh", "SELECT sluice.refresh_stream_table($1)", 1, NULL),
          "prepare refresh");

    int64_t *lat = calloc((size_t)n, sizeof *lat);
    int64_t *com = calloc((size_t)n, sizeof *com);
    int64_t *ref = calloc((size_t)n, sizeof *ref);
    if (lat == NULL || com == NULL || ref == NULL)
        bench_die(PROG, "out of memory");
    int64_t received = 0;

    for (int64_t k = 0; k < warmup + n; k++) {
        char kbuf[24];
        snprintf(kbuf, sizeof kbuf, "%" PRId64, k);
        const char *cp[1] = {kbuf};
        pg_ok(w, PQexecPrepared(w, "change", 1, cp, NULL, NULL, 0), "--change");

        pg_ok(w, PQexec(w, "BEGIN"), "BEGIN");
        const char *rp[1] = {name};
        int64_t tr = bench_now_us();
        PGresult *res = PQexecPrepared(w, "refresh", 1, rp, NULL, NULL, 0);
        int64_t t_ref = bench_now_us() - tr;
        if (PQresultStatus(res) != PGRES_TUPLES_OK)
            bench_die(PROG, "refresh_stream_table: %s", PQerrorMessage(w));
        if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0))
            bench_die(PROG,
                      "iteration %" PRId64 ": the refresh changed nothing (does --change change a "
                      "row the stream table shows?)",
                      k);
        int64_t rid = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);

        int64_t t0 = bench_now_us();
        if (!PQsendQuery(w, "COMMIT"))
            bench_die(PROG, "COMMIT: %s", PQerrorMessage(w));
        int64_t t_commit = -1, t_arr = -1, deadline = t0 + timeout_ms * 1000;
        while (t_commit < 0 || t_arr < 0) {
            int64_t now = bench_now_us();
            if (now > deadline)
                bench_die(PROG,
                          "iteration %" PRId64 ": no notification of refresh %" PRId64
                          " after %" PRId64 " ms",
                          k, rid, timeout_ms);
            struct pollfd pfd[2] = {{.fd = PQsocket(lis), .events = POLLIN},
                                    {.fd = PQsocket(w), .events = POLLIN}};
            int nfd = t_commit < 0 ? 2 : 1;
            int wait_ms = (int)((deadline - now) / 1000) + 1;
            if (poll(pfd, (nfds_t)nfd, wait_ms) < 0)
                bench_die(PROG, "poll failed");
            if (t_arr < 0) {
                if (PQconsumeInput(lis) == 0)
                    bench_die(PROG, "listener: %s", PQerrorMessage(lis));
                int64_t at = bench_now_us();
                PGnotify *nt;
                while ((nt = PQnotifies(lis)) != NULL) {
                    int64_t got = payload_refresh_id(nt->extra);
                    if (got != rid)
                        bench_die(PROG,
                                  "unexpected notification (refresh %" PRId64 " expected): %s", rid,
                                  nt->extra);
                    t_arr = at;
                    PQfreemem(nt);
                }
            }
            if (t_commit < 0) {
                if (PQconsumeInput(w) == 0)
                    bench_die(PROG, "COMMIT: %s", PQerrorMessage(w));
                if (!PQisBusy(w)) {
                    t_commit = bench_now_us();
                    while ((res = PQgetResult(w)) != NULL)
                        pg_ok(w, res, "COMMIT");
                }
            }
        }
        if (k >= warmup) {
            int64_t i = k - warmup;
            lat[i] = t_arr - t0;
            com[i] = t_commit - t0;
            ref[i] = t_ref;
            received++;
        }
    }

    qsort(lat, (size_t)n, sizeof *lat, bench_cmp_i64);
    qsort(com, (size_t)n, sizeof *com, bench_cmp_i64);
    qsort(ref, (size_t)n, sizeof *ref, bench_cmp_i64);
    printf("n=%" PRId64 " received=%" PRId64
           " p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f max_ms=%.3f commit_p50_ms=%.3f commit_p99_ms=%.3f"
           " refresh_p50_ms=%.3f refresh_p99_ms=%.3f\n",
           n, received, ms_at(lat, n, 0.50), ms_at(lat, n, 0.90), ms_at(lat, n, 0.99),
           ms_at(lat, n, 1.0), ms_at(com, n, 0.50), ms_at(com, n, 0.99), ms_at(ref, n, 0.50),
           ms_at(ref, n, 0.99));
    PQfinish(w);
    PQfinish(lis);
    free(lat);
    free(com);
    free(ref);
    return received == n ? 0 : 1;
}
