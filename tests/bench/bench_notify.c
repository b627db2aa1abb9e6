/*
 * tests/bench/bench_notify.c - sl_bench_notify: the "notify" sink seen from
 * one listener, through a running relay.
 *
 *   sl_bench_notify --db CONNINFO --channel C --topic T --mode throughput
 *                   [--n N] [--pad BYTES]
 *   sl_bench_notify --db CONNINFO --channel C --topic T --mode latency
 *                   [--rate EVENTS_PER_S] [--per-txn N] [--seconds S]
 *                   [--warmup-s W] [--pad BYTES]
 *
 * A listener (second thread, its own libpq connection) LISTENs on C before
 * anything is published and reads notifications as they come (poll,
 * PQconsumeInput, PQnotifies). The relay must already run a notify pipeline
 * for outbox topic T on channel C.
 *
 * throughput: the main thread publishes N events on T in transactions of
 * 10,000 as fast as PostgreSQL takes them, far faster than one relay
 * pipeline notifies; the listener times the first and the last of the N
 * notifications. rate = (N - 1) / (last - first): notifications per second
 * reaching one listener while a backlog drains.
 *
 * latency: as sl_bench_latency does for Kafka: transactions of --per-txn
 * events on an absolute schedule (payload {"txn": k, "i": .., "pad": ..});
 * commit_us[k] is taken just before COMMIT is sent, and the listener records
 * now - commit_us[k] for every notification of transaction k. That is an
 * upper bound of commit -> listener: it includes the commit, the doorbell,
 * the relay's read, the pg_notify transaction and its delivery.
 *
 * Output, one line on stdout:
 *   throughput: events=N received=R rate= first_ms=
 *   latency:    events=E received=R missing=M p50_ms= p90_ms= p99_ms= max_ms= rate=
 * Exit 1 when notifications are missing.
 */
#include "tests/bench/bench.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#define PROG "sl_bench_notify"

/* How long the listener waits for stragglers after the last commit. */
#define SL_BENCH_DRAIN_S 15
/* Events per transaction of the throughput backlog. */
#define SL_BENCH_TPUT_TXN 10000

typedef struct ntf_state {
    PGconn *conn; /* the listener's connection */
    bool latency; /* mode */
    int64_t want; /* notifications to count */
    int64_t ntxn; /* latency: transactions in the run */
    int64_t warmup_txn;
    _Atomic int64_t *commit_us; /* latency: [ntxn], 0 until the COMMIT is sent */
    int64_t *lat_us;            /* latency: counted latencies */
    int64_t nlat;
    int64_t received;
    int64_t first_us, last_us; /* throughput: first and last arrival */
    atomic_bool stop;
    atomic_llong last_commit_us;
} ntf_state_t;

/* Finds "\"txn\": <n>" in a payload. Returns -1 when absent. */
static int64_t
payload_txn(const char *v)
{
    const char *p = strstr(v, "\"txn\": ");
    return p ? strtoll(p + 7, NULL, 10) : -1;
}

static void *
listener_main(void *arg)
{
    ntf_state_t *st = arg;
    for (;;) {
        struct pollfd pfd = {.fd = PQsocket(st->conn), .events = POLLIN};
        poll(&pfd, 1, 50);
        if (PQconsumeInput(st->conn) == 0)
            bench_die(PROG, "listener: %s", PQerrorMessage(st->conn));
        int64_t now = bench_now_us();
        PGnotify *n;
        while ((n = PQnotifies(st->conn)) != NULL) {
            if (st->latency) {
                int64_t k = payload_txn(n->extra);
                if (k >= st->warmup_txn && k < st->ntxn && st->nlat < st->want) {
                    int64_t c = atomic_load_explicit(&st->commit_us[k], memory_order_acquire);
                    if (c != 0) {
                        st->lat_us[st->nlat++] = now - c;
                        st->received++;
                    }
                }
            } else {
                if (st->received == 0)
                    st->first_us = now;
                st->last_us = now;
                st->received++;
            }
            PQfreemem(n);
        }
        if (st->received >= st->want)
            break;
        if (atomic_load(&st->stop) &&
            now - atomic_load(&st->last_commit_us) > (int64_t)SL_BENCH_DRAIN_S * 1000000)
            break;
    }
    return NULL;
}

static void
pg_ok(PGconn *conn, PGresult *res, const char *what)
{
    ExecStatusType s = PQresultStatus(res);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        bench_die(PROG, "%s: %s", what, PQerrorMessage(conn));
    PQclear(res);
}

static void
sleep_until_us(int64_t t_us)
{
    struct timespec ts = {.tv_sec = t_us / 1000000, .tv_nsec = (t_us % 1000000) * 1000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

int
main(int argc, char **argv)
{
    const char *db = NULL, *channel = NULL, *topic = NULL, *mode = NULL;
    int64_t n = 200000, rate = 5000, per_txn = 10, seconds = 10, warmup_s = 2, pad = 150;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            bench_die(PROG, "%s: missing value", a);
        if (strcmp(a, "--db") == 0)
            db = argv[++i];
        else if (strcmp(a, "--channel") == 0)
            channel = argv[++i];
        else if (strcmp(a, "--topic") == 0)
            topic = argv[++i];
        else if (strcmp(a, "--mode") == 0)
            mode = argv[++i];
        else if (strcmp(a, "--n") == 0)
            n = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--rate") == 0)
            rate = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--per-txn") == 0)
            per_txn = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--seconds") == 0)
            seconds = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--warmup-s") == 0)
            warmup_s = bench_parse_int(PROG, a, argv[++i]);
        else if (strcmp(a, "--pad") == 0)
            pad = bench_parse_int(PROG, a, argv[++i]);
        else
            bench_die(PROG, "unknown option %s", a);
    }
    if (db == NULL || channel == NULL || topic == NULL || mode == NULL)
        bench_die(PROG, "--db, --channel, --topic and --mode are required");
    bool latency = strcmp(mode, "latency") == 0;
    if (!latency && strcmp(mode, "throughput") != 0)
        bench_die(PROG, "--mode is throughput or latency");

    ntf_state_t st;
    memset(&st, 0, sizeof st);
    st.latency = latency;
    int64_t interval_us = per_txn * 1000000 / rate;
    if (latency) {
        st.ntxn = (seconds + warmup_s) * rate / per_txn;
        st.warmup_txn = warmup_s * rate / per_txn;
        st.want = (st.ntxn - st.warmup_txn) * per_txn;
        st.commit_us = calloc((size_t)st.ntxn, sizeof *st.commit_us);
        st.lat_us = calloc((size_t)st.want, sizeof *st.lat_us);
        if (st.commit_us == NULL || st.lat_us == NULL)
            bench_die(PROG, "out of memory");
    } else {
        st.want = n;
    }
    char *padstr = malloc((size_t)pad + 1);
    if (padstr == NULL)
        bench_die(PROG, "out of memory");
    memset(padstr, 'x', (size_t)pad);
    padstr[pad] = '\0';

    st.conn = PQconnectdb(db);
    if (PQstatus(st.conn) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(st.conn));
    char *ident = PQescapeIdentifier(st.conn, channel, strlen(channel));
    char sql[256];
    snprintf(sql, sizeof sql, "LISTEN %s", ident);
    PQfreemem(ident);
    pg_ok(st.conn, PQexec(st.conn, sql), "LISTEN");

    PGconn *conn = PQconnectdb(db);
    if (PQstatus(conn) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(conn));
    pg_ok(conn,
          PQprepare(conn, "pub",
                    "SELECT count(sluice.publish($1, jsonb_build_object('txn', $2::bigint, 'i', g, "
                    "'pad', $3::text))) FROM generate_series(1, $4::int) g",
                    4, NULL),
          "prepare");

    atomic_store(&st.last_commit_us, bench_now_us());
    pthread_t th;
    if (pthread_create(&th, NULL, listener_main, &st) != 0)
        bench_die(PROG, "pthread_create failed");

    char kbuf[24], nbuf[24];
    int64_t t_start = bench_now_us();
    if (!latency) {
        for (int64_t done = 0, k = 0; done < n; k++) {
            int64_t m = n - done < SL_BENCH_TPUT_TXN ? n - done : SL_BENCH_TPUT_TXN;
            snprintf(kbuf, sizeof kbuf, "%" PRId64, -1 - k); /* never a latency txn */
            snprintf(nbuf, sizeof nbuf, "%" PRId64, m);
            const char *params[4] = {topic, kbuf, padstr, nbuf};
            pg_ok(conn, PQexecPrepared(conn, "pub", 4, params, NULL, NULL, 0), "publish");
            done += m;
            atomic_store(&st.last_commit_us, bench_now_us());
        }
    } else {
        snprintf(nbuf, sizeof nbuf, "%" PRId64, per_txn);
        int64_t t0 = bench_now_us() + 100000;
        for (int64_t k = 0; k < st.ntxn; k++) {
            sleep_until_us(t0 + k * interval_us);
            snprintf(kbuf, sizeof kbuf, "%" PRId64, k);
            const char *params[4] = {topic, kbuf, padstr, nbuf};
            pg_ok(conn, PQexec(conn, "BEGIN"), "BEGIN");
            pg_ok(conn, PQexecPrepared(conn, "pub", 4, params, NULL, NULL, 0), "publish");
            atomic_store_explicit(&st.commit_us[k], bench_now_us(), memory_order_release);
            pg_ok(conn, PQexec(conn, "COMMIT"), "COMMIT");
            atomic_store(&st.last_commit_us, bench_now_us());
        }
    }
    atomic_store(&st.stop, true);
    pthread_join(th, NULL);

    if (!latency) {
        double secs = (double)(st.last_us - st.first_us) / 1e6;
        printf("events=%" PRId64 " received=%" PRId64 " rate=%.0f first_ms=%.1f\n", n, st.received,
               secs > 0 ? (double)(st.received - 1) / secs : 0.0,
               (double)(st.first_us - t_start) / 1000.0);
    } else {
        qsort(st.lat_us, (size_t)st.nlat, sizeof *st.lat_us, bench_cmp_i64);
        printf("events=%" PRId64 " received=%" PRId64 " missing=%" PRId64
               " p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f rate=%" PRId64 "\n",
               st.want, st.received, st.want - st.received,
               (double)bench_quantile(st.lat_us, (size_t)st.nlat, 0.50) / 1000.0,
               (double)bench_quantile(st.lat_us, (size_t)st.nlat, 0.90) / 1000.0,
               (double)bench_quantile(st.lat_us, (size_t)st.nlat, 0.99) / 1000.0,
               (double)bench_quantile(st.lat_us, (size_t)st.nlat, 1.0) / 1000.0, rate);
    }
    PQfinish(conn);
    PQfinish(st.conn);
    free(st.commit_us);
    free(st.lat_us);
    free(padstr);
    return st.received == st.want ? 0 : 1;
}
