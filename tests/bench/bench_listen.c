/*
 * tests/bench/bench_listen.c - sl_bench_listen: an idle doorbell listener.
 *
 *   sl_bench_listen --db CONNINFO [--channel NAME] [--arm]
 *
 * LISTENs on the publish doorbell (SL_OUTBOX_DOORBELL unless --channel) and
 * consumes notifications as they come, like a relay waiting for work, until
 * SIGTERM or SIGINT. With --arm it also arms the doorbell as an idle relay
 * does (SL_OUTBOX_SQL_ARM) and never disarms: every publishing commit then
 * rings, the doorbell's worst case for publishers.
 *
 * Prints "ready" once LISTEN is in effect, and at exit one line:
 *   notifications=N
 */
#include "tests/bench/bench.h"

#include "outbox/outbox.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>

#define PROG "sl_bench_listen"

static volatile sig_atomic_t stop_requested;

static void
on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

int
main(int argc, char **argv)
{
    const char *db = NULL, *channel = SL_OUTBOX_DOORBELL;
    bool arm = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--arm") == 0)
            arm = true;
        else if (strcmp(argv[i], "--db") == 0 && i + 1 < argc)
            db = argv[++i];
        else if (strcmp(argv[i], "--channel") == 0 && i + 1 < argc)
            channel = argv[++i];
        else
            bench_die(PROG, "usage: " PROG " --db CONNINFO [--channel NAME] [--arm]");
    }
    if (db == NULL)
        bench_die(PROG, "missing --db CONNINFO");

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    PGconn *conn = PQconnectdb(db);
    if (PQstatus(conn) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(conn));
    char *ident = PQescapeIdentifier(conn, channel, strlen(channel));
    char sql[300];
    snprintf(sql, sizeof sql, "LISTEN %s", ident);
    PQfreemem(ident);
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        bench_die(PROG, "%s: %s", sql, PQerrorMessage(conn));
    PQclear(res);
    if (arm) {
        res = PQexec(conn, SL_OUTBOX_SQL_ARM);
        if (PQresultStatus(res) != PGRES_TUPLES_OK || strcmp(PQgetvalue(res, 0, 0), "t") != 0)
            bench_die(PROG, "cannot arm the doorbell: %s", PQerrorMessage(conn));
        PQclear(res);
    }
    printf("ready\n");
    fflush(stdout);

    int64_t count = 0;
    struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
    while (!stop_requested) {
        int r = poll(&pfd, 1, 1000);
        if (r < 0 && errno != EINTR)
            bench_die(PROG, "poll: %s", strerror(errno));
        if (r <= 0)
            continue;
        if (!PQconsumeInput(conn))
            bench_die(PROG, "connection lost: %s", PQerrorMessage(conn));
        PGnotify *n;
        while ((n = PQnotifies(conn)) != NULL) {
            count++;
            PQfreemem(n);
        }
    }
    printf("notifications=%" PRId64 "\n", count);
    PQfinish(conn);
    return 0;
}
