/*
 * tests/bench/bench_claim.c - sl_bench_claim: inbox claim + ack throughput.
 *
 *   sl_bench_claim --db CONNINFO --inbox NAME --n N [--workers W] [--batch B]
 *                  [--timeout-s S]
 *
 * The inbox NAME must already hold N pending messages and nothing else. W
 * worker threads (default 2), each with its own libpq connection, loop:
 *
 *   SELECT message_id, claim_token FROM sluice.inbox_claim(NAME, B)
 *   SELECT sluice.inbox_ack_batch(NAME, $1::text[], $2::uuid[])
 *
 * both in autocommit: the claim commits on its own (so its leases are
 * visible to the other worker, as docs/inbox.md asks), then the whole batch
 * is acknowledged in one statement (sluice.inbox_ack_batch, all or nothing),
 * one transaction per batch of acks. Its count must equal the number claimed. A worker stops when a
 * claim returns nothing and the inbox has no pending message left (a claim
 * can come back empty while the other worker's claim holds the last rows).
 *
 * Timing: from the moment every worker is connected and prepared until the
 * last worker stops. rate = acked / seconds. Then the inbox is checked: N
 * messages, every one 'done', every one claimed once (attempts = 1), and the
 * workers' acks add up to N. Any SQL error is fatal.
 *
 * CPU over the run, in % of one core: this program (getrusage), the workers'
 * PostgreSQL backends (/proc/PID/stat of PQbackendPID), and the machine's
 * busy time (/proc/stat; 200 means both cores of a 2-core machine).
 *
 * Output, one line on stdout:
 *   n=N acked=A done=D attempts_max=M seconds=S rate=R batches=K empty_claims=E
 *   cpu_self=P cpu_backends=P cpu_machine=P cores=C
 * Exit 1 when a check fails.
 */
#include "tests/bench/bench.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#define PROG "sl_bench_claim"
#define SL_BENCH_MAX_WORKERS 64

typedef struct worker {
    int id;
    const char *db;
    const char *inbox;
    int64_t batch;
    int64_t deadline_us;
    PGconn *conn;
    pid_t backend;
    pthread_barrier_t *ready;
    int64_t acked, batches, empty;
} worker_t;

static PGresult *
pg_check(PGconn *conn, PGresult *res, const char *what)
{
    ExecStatusType s = PQresultStatus(res);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        bench_die(PROG, "%s: %s", what, PQerrorMessage(conn));
    return res;
}

/* Appends s to a growing buffer, or dies. */
static void
buf_put(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (*len + n + 1 > c)
            c *= 2;
        char *p = realloc(*buf, c);
        if (p == NULL)
            bench_die(PROG, "out of memory");
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
}

/* Appends one double-quoted element of an array literal. */
static void
buf_put_elem(char **buf, size_t *len, size_t *cap, const char *s)
{
    buf_put(buf, len, cap, "\"", 1);
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\')
            buf_put(buf, len, cap, "\\", 1);
        buf_put(buf, len, cap, p, 1);
    }
    buf_put(buf, len, cap, "\"", 1);
}

static int64_t
pending_count(worker_t *w)
{
    const char *params[1] = {w->inbox};
    PGresult *res = pg_check(w->conn, PQexecPrepared(w->conn, "pending", 1, params, NULL, NULL, 0),
                             "pending count");
    int64_t n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return n;
}

static void *
worker_main(void *arg)
{
    worker_t *w = arg;
    char bbuf[24];
    snprintf(bbuf, sizeof bbuf, "%" PRId64, w->batch);
    char *ids = NULL, *toks = NULL;
    size_t ids_len = 0, ids_cap = 0, toks_len = 0, toks_cap = 0;

    pthread_barrier_wait(w->ready);
    for (;;) {
        if (bench_now_us() > w->deadline_us)
            bench_die(PROG, "worker %d: deadline passed after %" PRId64 " acks", w->id, w->acked);
        const char *cparams[2] = {w->inbox, bbuf};
        PGresult *res = pg_check(
            w->conn, PQexecPrepared(w->conn, "claim", 2, cparams, NULL, NULL, 0), "inbox_claim");
        int rows = PQntuples(res);
        if (rows == 0) {
            PQclear(res);
            w->empty++;
            if (pending_count(w) == 0)
                break;
            continue;
        }
        ids_len = toks_len = 0;
        buf_put(&ids, &ids_len, &ids_cap, "{", 1);
        buf_put(&toks, &toks_len, &toks_cap, "{", 1);
        for (int i = 0; i < rows; i++) {
            if (i > 0) {
                buf_put(&ids, &ids_len, &ids_cap, ",", 1);
                buf_put(&toks, &toks_len, &toks_cap, ",", 1);
            }
            buf_put_elem(&ids, &ids_len, &ids_cap, PQgetvalue(res, i, 0));
            const char *t = PQgetvalue(res, i, 1);
            buf_put(&toks, &toks_len, &toks_cap, t, strlen(t));
        }
        buf_put(&ids, &ids_len, &ids_cap, "}", 1);
        buf_put(&toks, &toks_len, &toks_cap, "}", 1);
        PQclear(res);

        const char *aparams[3] = {w->inbox, ids, toks};
        res = pg_check(w->conn, PQexecPrepared(w->conn, "ack", 3, aparams, NULL, NULL, 0),
                       "inbox_ack_batch");
        int64_t acked = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        if (acked != rows)
            bench_die(PROG, "worker %d: acked %" PRId64 " of %d claimed messages", w->id, acked,
                      rows);
        w->acked += acked;
        w->batches++;
    }
    free(ids);
    free(toks);
    return NULL;
}

/* utime + stime of pid in clock ticks, or -1 when it is gone. */
static int64_t
proc_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    unsigned long long utime = 0, stime = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (int64_t)(utime + stime);
}

/* Busy ticks of the whole machine (all CPUs) from /proc/stat. */
static int64_t
machine_busy_ticks(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return 0;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8)
        return 0;
    return (int64_t)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
}

static int64_t
self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
           ru.ru_stime.tv_usec;
}

int
main(int argc, char **argv)
{
    const char *db = NULL, *inbox = NULL;
    int64_t n = 0, nworkers = 2, batch = 100, timeout_s = 300;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            bench_die(PROG, "%s: missing value", a);
        if (strcmp(a, "--db") == 0)
            db = argv[++i];
        else if (strcmp(a, "--inbox") == 0)
            inbox = argv[++i];
        else if (strcmp(a, "--n") == 0)
            n = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--workers") == 0)
            nworkers = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--batch") == 0)
            batch = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--timeout-s") == 0)
            timeout_s = bench_parse_int(PROG, a, argv[++i]);
        else
            bench_die(PROG, "unknown option %s", a);
    }
    if (db == NULL || inbox == NULL || n == 0)
        bench_die(PROG, "--db, --inbox and --n are required");
    if (nworkers > SL_BENCH_MAX_WORKERS)
        bench_die(PROG, "--workers: at most %d", SL_BENCH_MAX_WORKERS);

    /* The inbox table's name, for the checks (sluice.inboxes.table_name). */
    PGconn *main_conn = PQconnectdb(db);
    if (PQstatus(main_conn) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(main_conn));
    const char *lp[1] = {inbox};
    PGresult *res = pg_check(main_conn,
                             PQexecParams(main_conn,
                                          "SELECT format('sluice.%I', table_name) FROM "
                                          "sluice.inboxes WHERE name = $1",
                                          1, NULL, lp, NULL, NULL, 0),
                             "inbox lookup");
    if (PQntuples(res) != 1)
        bench_die(PROG, "inbox %s does not exist", inbox);
    char table[128];
    snprintf(table, sizeof table, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);

    char sql[512];
    snprintf(sql, sizeof sql, "SELECT count(*), count(*) FILTER (WHERE status = 'pending') FROM %s",
             table);
    res = pg_check(main_conn, PQexec(main_conn, sql), "pre-check");
    int64_t total0 = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int64_t pending0 = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    if (total0 != n || pending0 != n)
        bench_die(PROG,
                  "inbox %s holds %" PRId64 " messages (%" PRId64 " pending), expected %" PRId64
                  " pending",
                  inbox, total0, pending0, n);

    pthread_barrier_t ready;
    pthread_barrier_init(&ready, NULL, (unsigned)nworkers + 1);
    worker_t w[SL_BENCH_MAX_WORKERS];
    memset(w, 0, sizeof w);
    int64_t deadline_us = bench_now_us() + timeout_s * 1000000;
    char pending_sql[256];
    snprintf(pending_sql, sizeof pending_sql,
             "SELECT count(*) FROM %s WHERE status = 'pending' AND $1::text IS NOT NULL", table);
    for (int i = 0; i < nworkers; i++) {
        w[i].id = i;
        w[i].db = db;
        w[i].inbox = inbox;
        w[i].batch = batch;
        w[i].deadline_us = deadline_us;
        w[i].ready = &ready;
        w[i].conn = PQconnectdb(db);
        if (PQstatus(w[i].conn) != CONNECTION_OK)
            bench_die(PROG, "cannot connect: %s", PQerrorMessage(w[i].conn));
        w[i].backend = (pid_t)PQbackendPID(w[i].conn);
        PQclear(pg_check(w[i].conn,
                         PQprepare(w[i].conn, "claim",
                                   "SELECT message_id, claim_token FROM "
                                   "sluice.inbox_claim($1, $2::int)",
                                   2, NULL),
                         "prepare claim"));
        PQclear(pg_check(w[i].conn,
                         PQprepare(w[i].conn, "ack",
                                   "SELECT sluice.inbox_ack_batch($1, $2::text[], $3::uuid[])", 3,
                                   NULL),
                         "prepare ack"));
        PQclear(pg_check(w[i].conn, PQprepare(w[i].conn, "pending", pending_sql, 1, NULL),
                         "prepare pending"));
    }

    pthread_t th[SL_BENCH_MAX_WORKERS];
    for (int i = 0; i < nworkers; i++)
        if (pthread_create(&th[i], NULL, worker_main, &w[i]) != 0)
            bench_die(PROG, "pthread_create failed");

    int64_t be0[SL_BENCH_MAX_WORKERS];
    for (int i = 0; i < nworkers; i++)
        be0[i] = proc_ticks(w[i].backend);
    int64_t mach0 = machine_busy_ticks();
    int64_t self0 = self_cpu_us();
    pthread_barrier_wait(&ready);
    int64_t t0 = bench_now_us();
    for (int i = 0; i < nworkers; i++)
        pthread_join(th[i], NULL);
    int64_t t1 = bench_now_us();
    int64_t self1 = self_cpu_us();
    int64_t mach1 = machine_busy_ticks();
    int64_t be_ticks = 0;
    for (int i = 0; i < nworkers; i++) {
        int64_t t = proc_ticks(w[i].backend);
        if (t >= 0 && be0[i] >= 0)
            be_ticks += t - be0[i];
    }

    int64_t acked = 0, batches = 0, empty = 0;
    for (int i = 0; i < nworkers; i++) {
        acked += w[i].acked;
        batches += w[i].batches;
        empty += w[i].empty;
        PQfinish(w[i].conn);
    }

    snprintf(
        sql, sizeof sql,
        "SELECT count(*), count(*) FILTER (WHERE status = 'done'), coalesce(max(attempts), 0), "
        "coalesce(min(attempts), 0) FROM %s",
        table);
    res = pg_check(main_conn, PQexec(main_conn, sql), "post-check");
    int64_t total = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int64_t done = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    int64_t amax = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    int64_t amin = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    PQclear(res);
    PQfinish(main_conn);

    double secs = (double)(t1 - t0) / 1e6;
    double hz = (double)sysconf(_SC_CLK_TCK);
    double wall = secs > 0 ? secs : 1e-9;
    printf("n=%" PRId64 " acked=%" PRId64 " done=%" PRId64 " attempts_max=%" PRId64
           " seconds=%.3f rate=%.0f batches=%" PRId64 " empty_claims=%" PRId64
           " cpu_self=%.0f cpu_backends=%.0f cpu_machine=%.0f cores=%ld\n",
           n, acked, done, amax, secs, secs > 0 ? (double)acked / secs : 0.0, batches, empty,
           100.0 * (double)(self1 - self0) / 1e6 / wall, 100.0 * (double)be_ticks / hz / wall,
           100.0 * (double)(mach1 - mach0) / hz / wall, sysconf(_SC_NPROCESSORS_ONLN));
    fflush(stdout);
    if (acked != n || done != n || total != n || amax != 1 || amin != 1)
        bench_die(PROG,
                  "check failed: %" PRId64 " acked, %" PRId64 " done of %" PRId64
                  " messages (expected %" PRId64 "), attempts %" PRId64 "..%" PRId64
                  " (expected 1)",
                  acked, done, total, n, amin, amax);
    return 0;
}
