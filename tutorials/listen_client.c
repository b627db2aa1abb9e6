/*
 * tutorials/listen_client.c - a small LISTEN client for sluice's "notify"
 * sink, following the listener's contract of docs/notify.md.
 *
 *   sluice-listen-example CONNINFO CHANNEL [TOPIC] [--since SNAPSHOT]
 *
 * CONNINFO is the outbox database (where the relay notifies, unless the sink
 * has its own "database"), CHANNEL the rendered channel name (e.g.
 * orders_orders for "channel": "orders_{topic}"), TOPIC the outbox topic whose
 * missed messages to catch up on (all topics when absent).
 *
 * What it does, in the order the contract requires:
 *   1. LISTEN "CHANNEL" (quoted: channel names are case-sensitive here).
 *   2. Catch up: sluice.outbox_messages_since(SNAPSHOT) prints every message
 *      committed since the watermark SNAPSHOT; without --since it only takes
 *      a first watermark. The new watermark is printed to stderr as
 *      "watermark <snapshot>": store it and pass it with --since next time.
 *   3. Print every notification as it arrives. A payload with
 *      "truncated": true is a reference: the full message is fetched with
 *      sluice.outbox_message(outbox_id).
 * Messages may come twice (from the catch-up and live, or after the relay
 * reconnected); a real consumer deduplicates by "id". This example prints
 * one JSON message per line on stdout and stops on SIGINT/SIGTERM.
 *
 * The role needs EXECUTE on both functions (outbox/sql/0002_message.sql).
 * Build: cmake --build build --target sluice-listen-example
 */
#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static volatile sig_atomic_t stop_requested;

static void
on_signal(int sig)
{
    (void)sig;
    stop_requested = 1;
}

static void
die(PGconn *conn, const char *what)
{
    fprintf(stderr, "sluice-listen-example: %s: %s", what,
            conn != NULL ? PQerrorMessage(conn) : "\n");
    PQfinish(conn);
    exit(1);
}

/* Prints the full message of outbox_id (a truncated notification). */
static void
print_resolved(PGconn *conn, const char *outbox_id)
{
    const char *params[1] = {outbox_id};
    PGresult *res = PQexecParams(conn, "SELECT sluice.outbox_message($1::bigint)::text", 1, NULL,
                                 params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        die(conn, "sluice.outbox_message");
    if (PQgetisnull(res, 0, 0))
        fprintf(stderr, "outbox message %s is gone (deleted by retention)\n", outbox_id);
    else
        printf("%s\n", PQgetvalue(res, 0, 0));
    PQclear(res);
}

/* Handles one notification payload. */
static void
on_payload(PGconn *conn, const char *payload)
{
    /* A reference is small and says "truncated":true; a real client would
     * parse the JSON, this example looks for the two keys. */
    const char *oid = strstr(payload, "\"outbox_id\":");
    if (strstr(payload, "\"truncated\":true") != NULL && oid != NULL) {
        char id[24];
        snprintf(id, sizeof id, "%lld", atoll(oid + strlen("\"outbox_id\":")));
        print_resolved(conn, id);
        return;
    }
    printf("%s\n", payload);
}

int
main(int argc, char **argv)
{
    const char *pos[3] = {NULL, NULL, NULL};
    const char *since = NULL;
    int npos = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--since") == 0 && i + 1 < argc)
            since = argv[++i];
        else if (npos < 3)
            pos[npos++] = argv[i];
        else
            npos = 4;
    }
    if (npos < 2 || npos > 3) {
        fprintf(stderr,
                "usage: sluice-listen-example CONNINFO CHANNEL [TOPIC] [--since SNAPSHOT]\n");
        return 2;
    }
    const char *conninfo = pos[0], *channel = pos[1], *topic = pos[2];

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    PGconn *conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK)
        die(conn, "cannot connect");

    /* 1. LISTEN first: from here on every notification reaches us. */
    char *ident = PQescapeIdentifier(conn, channel, strlen(channel));
    if (ident == NULL)
        die(conn, "bad channel name");
    char sql[256];
    snprintf(sql, sizeof sql, "LISTEN %s", ident);
    PQfreemem(ident);
    PGresult *res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        die(conn, "LISTEN");
    PQclear(res);

    /* 2. Catch up on what was notified before the LISTEN took effect. */
    const char *params[2] = {since, topic};
    res = PQexecParams(conn,
                       "SELECT outbox_id, message::text, snapshot::text "
                       "FROM sluice.outbox_messages_since($1::pg_snapshot, "
                       "CASE WHEN $2::text IS NULL THEN NULL ELSE ARRAY[$2::text] END)",
                       2, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        die(conn, "sluice.outbox_messages_since");
    for (int i = 0; i < PQntuples(res); i++) {
        if (i == 0)
            fprintf(stderr, "watermark %s\n", PQgetvalue(res, 0, 2));
        else
            printf("%s\n", PQgetvalue(res, i, 1));
    }
    fprintf(stderr, "caught up: %d messages; listening on %s\n", PQntuples(res) - 1, channel);
    PQclear(res);
    fflush(stdout);

    /* 3. Live notifications. */
    while (!stop_requested) {
        struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
        if (poll(&pfd, 1, 1000) < 0 && errno != EINTR)
            die(NULL, "poll failed");
        if (PQconsumeInput(conn) == 0)
            die(conn, "connection lost (reconnect, LISTEN, catch up from your watermark)");
        PGnotify *n;
        while ((n = PQnotifies(conn)) != NULL) {
            on_payload(conn, n->extra);
            PQfreemem(n);
        }
        fflush(stdout);
    }
    PQfinish(conn);
    return 0;
}
