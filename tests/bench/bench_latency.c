/*
 * tests/bench/bench_latency.c - sl_bench_latency: commit -> consumer latency
 * through a running relay.
 *
 *   sl_bench_latency --db CONNINFO --brokers B --kafka-topic KT --topic T
 *                    [--rate EVENTS_PER_S] [--per-txn N] [--seconds S]
 *                    [--warmup-s W] [--pad BYTES]
 *
 * A publisher (main thread) runs transactions of --per-txn calls of
 * sluice.publish(T, ...) each, on an absolute schedule: transaction k starts
 * at t0 + k * per_txn / rate, so a slow transaction delays the next ones but
 * the average rate never drifts. Each transaction is BEGIN, one SELECT that
 * publishes per_txn events (payload {"i": .., "pad": "xx..", "txn": k}), and
 * COMMIT. Just before COMMIT is sent, the publisher stores the
 * CLOCK_MONOTONIC time in commit_us[k].
 *
 * A consumer (second thread, librdkafka) is assigned every partition of KT
 * at its current high watermark before publishing starts, with
 * fetch.wait.max.ms=1, so it sees each record as soon as the broker has it.
 * For each record it reads k from the envelope's payload and records
 * now - commit_us[k].
 *
 * What that measures: from the moment COMMIT is sent to the moment a
 * consumer holds the record. It includes the commit itself (WAL flush), the
 * doorbell, the relay's read, the produce with its linger.ms and acks=all
 * round trip, and the consumer's fetch: an upper bound of commit -> the
 * relay's delivery report. A timestamp inside the payload could not do
 * this: the row is written before COMMIT, so it cannot hold COMMIT's time;
 * sharing commit_us[] between the two threads of one process can, on one
 * monotonic clock.
 *
 * The first --warmup-s seconds of transactions are sent but not counted.
 *
 * Output, one line on stdout:
 *   events=E received=R missing=M p50_ms= p90_ms= p99_ms= max_ms= rate=
 *   commit_p50_ms= commit_p99_ms= late_max_ms=
 * (commit_* is how long COMMIT itself took; late_max_ms how far behind its
 * schedule the publisher fell at worst.) Exit 1 when records are missing.
 */
#include "tests/bench/bench.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#define PROG "sl_bench_latency"

/* How long the consumer waits for stragglers after the last commit. */
#define SL_BENCH_DRAIN_S 15
/* Most partitions of the Kafka topic followed by the consumer. */
#define SL_BENCH_MAX_PARTITIONS 64

typedef struct lat_state {
    rd_kafka_t *rk; /* the consumer */
    int64_t ntxn;   /* transactions in the run */
    int64_t per_txn;
    int64_t warmup_txn;         /* transactions not counted */
    _Atomic int64_t *commit_us; /* [ntxn], 0 until the COMMIT is sent */
    int64_t *lat_us;            /* counted latencies, consumer thread only */
    int64_t nlat;
    int64_t received;            /* counted records received */
    int64_t early;               /* records seen before their COMMIT was sent */
    atomic_bool stop;            /* set by main once publishing is over */
    atomic_llong last_commit_us; /* when the last COMMIT returned */
} lat_state_t;

/* Finds "\"txn\": <n>" in an envelope. Returns -1 when absent. */
static int64_t
envelope_txn(const char *v, size_t len)
{
    static const char needle[] = "\"txn\": ";
    size_t nl = sizeof needle - 1;
    for (size_t i = 0; i + nl < len; i++) {
        if (v[i] == '"' && memcmp(v + i, needle, nl) == 0) {
            int64_t k = 0;
            size_t j = i + nl;
            if (j >= len || v[j] < '0' || v[j] > '9')
                return -1;
            for (; j < len && v[j] >= '0' && v[j] <= '9'; j++)
                k = k * 10 + (v[j] - '0');
            return k;
        }
    }
    return -1;
}

static void *
consumer_main(void *arg)
{
    lat_state_t *st = arg;
    int64_t want = (st->ntxn - st->warmup_txn) * st->per_txn;
    for (;;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(st->rk, 50);
        int64_t now = bench_now_us();
        if (m != NULL) {
            if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
                int64_t k = envelope_txn(m->payload, m->len);
                if (k >= 0 && k < st->ntxn) {
                    int64_t c = atomic_load_explicit(&st->commit_us[k], memory_order_acquire);
                    if (c == 0)
                        st->early++;
                    else if (k >= st->warmup_txn && st->nlat < want) {
                        st->lat_us[st->nlat++] = now - c;
                        st->received++;
                    }
                }
            } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
                fprintf(stderr, PROG ": consumer: %s\n", rd_kafka_message_errstr(m));
            }
            rd_kafka_message_destroy(m);
        }
        if (st->received >= want)
            break;
        if (atomic_load(&st->stop)) {
            int64_t last = atomic_load(&st->last_commit_us);
            if (now - last > (int64_t)SL_BENCH_DRAIN_S * 1000000)
                break;
        }
    }
    return NULL;
}

static void
conf_set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        bench_die(PROG, "%s=%s: %s", k, v, errstr);
}

/* Creates the consumer and assigns every partition of topic at its end. */
static rd_kafka_t *
consumer_new(const char *brokers, const char *topic)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    conf_set(conf, "bootstrap.servers", brokers);
    conf_set(conf, "group.id", "sl-bench-latency");
    conf_set(conf, "enable.auto.commit", "false");
    conf_set(conf, "enable.partition.eof", "false");
    conf_set(conf, "fetch.wait.max.ms", "1");
    conf_set(conf, "fetch.min.bytes", "1");
    conf_set(conf, "fetch.error.backoff.ms", "1");
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (rk == NULL)
        bench_die(PROG, "consumer: %s", errstr);
    rd_kafka_poll_set_consumer(rk);

    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 || md->topics[0].err != 0 ||
        md->topics[0].partition_cnt == 0)
        bench_die(PROG, "metadata of %s: %s (create the topic first)", topic,
                  e != 0 ? rd_kafka_err2str(e)
                         : rd_kafka_err2str(md->topic_cnt ? md->topics[0].err : e));
    int np = md->topics[0].partition_cnt;
    if (np > SL_BENCH_MAX_PARTITIONS)
        bench_die(PROG, "%s has %d partitions; at most %d are supported", topic, np,
                  SL_BENCH_MAX_PARTITIONS);
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);

    rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(np);
    for (int p = 0; p < np; p++) {
        int64_t lo = 0, hi = 0;
        e = rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, 10000);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
            bench_die(PROG, "watermarks of %s[%d]: %s", topic, p, rd_kafka_err2str(e));
        rd_kafka_topic_partition_list_add(parts, topic, p)->offset = hi;
    }
    e = rd_kafka_assign(rk, parts);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        bench_die(PROG, "assign: %s", rd_kafka_err2str(e));
    rd_kafka_topic_partition_list_destroy(parts);
    return rk;
}

static void
pg_ok(PGconn *conn, PGresult *res, const char *what)
{
    ExecStatusType s = PQresultStatus(res);
    if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
        bench_die(PROG, "%s: %s", what, PQerrorMessage(conn));
    PQclear(res);
}

/* Sleeps until the CLOCK_MONOTONIC time t_us (absolute, so nothing drifts). */
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
    const char *db = NULL, *brokers = NULL, *ktopic = NULL, *topic = NULL;
    int64_t rate = 5000, per_txn = 10, seconds = 20, warmup_s = 2, pad = 150;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            bench_die(PROG, "%s: missing value", a);
        if (strcmp(a, "--db") == 0)
            db = argv[++i];
        else if (strcmp(a, "--brokers") == 0)
            brokers = argv[++i];
        else if (strcmp(a, "--kafka-topic") == 0)
            ktopic = argv[++i];
        else if (strcmp(a, "--topic") == 0)
            topic = argv[++i];
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
    if (db == NULL || brokers == NULL || ktopic == NULL || topic == NULL)
        bench_die(PROG, "--db, --brokers, --kafka-topic and --topic are required");

    lat_state_t st;
    memset(&st, 0, sizeof st);
    int64_t interval_us = per_txn * 1000000 / rate;
    st.per_txn = per_txn;
    st.ntxn = (seconds + warmup_s) * rate / per_txn;
    st.warmup_txn = warmup_s * rate / per_txn;
    st.commit_us = calloc((size_t)st.ntxn, sizeof *st.commit_us);
    st.lat_us = calloc((size_t)((st.ntxn - st.warmup_txn) * per_txn), sizeof *st.lat_us);
    int64_t *commit_dur = calloc((size_t)st.ntxn, sizeof *commit_dur);
    char *padstr = malloc((size_t)pad + 1);
    if (st.commit_us == NULL || st.lat_us == NULL || commit_dur == NULL || padstr == NULL)
        bench_die(PROG, "out of memory");
    memset(padstr, 'x', (size_t)pad);
    padstr[pad] = '\0';

    PGconn *conn = PQconnectdb(db);
    if (PQstatus(conn) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(conn));
    pg_ok(conn,
          PQprepare(conn, "pub",
                    "SELECT sluice.publish($1, jsonb_build_object('txn', $2::bigint, 'i', g, "
                    "'pad', $3::text)) FROM generate_series(1, $4::int) g",
                    4, NULL),
          "prepare");

    st.rk = consumer_new(brokers, ktopic);
    atomic_store(&st.last_commit_us, bench_now_us());
    pthread_t th;
    if (pthread_create(&th, NULL, consumer_main, &st) != 0)
        bench_die(PROG, "pthread_create failed");

    char kbuf[24], nbuf[24];
    snprintf(nbuf, sizeof nbuf, "%" PRId64, per_txn);
    int64_t late_max = 0;
    int64_t t0 = bench_now_us() + 100000; /* let the consumer's first fetch start */
    int64_t tm0 = 0;
    for (int64_t k = 0; k < st.ntxn; k++) {
        int64_t due = t0 + k * interval_us;
        sleep_until_us(due);
        int64_t late = bench_now_us() - due;
        if (late > late_max && k >= st.warmup_txn)
            late_max = late;
        if (k == st.warmup_txn)
            tm0 = bench_now_us();
        snprintf(kbuf, sizeof kbuf, "%" PRId64, k);
        const char *params[4] = {topic, kbuf, padstr, nbuf};
        pg_ok(conn, PQexec(conn, "BEGIN"), "BEGIN");
        pg_ok(conn, PQexecPrepared(conn, "pub", 4, params, NULL, NULL, 0), "publish");
        int64_t c = bench_now_us();
        atomic_store_explicit(&st.commit_us[k], c, memory_order_release);
        pg_ok(conn, PQexec(conn, "COMMIT"), "COMMIT");
        int64_t done = bench_now_us();
        commit_dur[k] = done - c;
        atomic_store(&st.last_commit_us, done);
    }
    double pub_secs = (double)(bench_now_us() - tm0) / 1e6;
    atomic_store(&st.stop, true);
    pthread_join(th, NULL);

    int64_t want = (st.ntxn - st.warmup_txn) * per_txn;
    qsort(st.lat_us, (size_t)st.nlat, sizeof *st.lat_us, bench_cmp_i64);
    int64_t ncd = st.ntxn - st.warmup_txn;
    qsort(commit_dur + st.warmup_txn, (size_t)ncd, sizeof *commit_dur, bench_cmp_i64);
    const int64_t *cd = commit_dur + st.warmup_txn;
    printf("events=%" PRId64 " received=%" PRId64 " missing=%" PRId64 " early=%" PRId64
           " p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f rate=%.0f commit_p50_ms=%.2f"
           " commit_p99_ms=%.2f late_max_ms=%.2f\n",
           want, st.received, want - st.received, st.early,
           (double)bench_quantile(st.lat_us, (size_t)st.nlat, 0.50) / 1000.0,
           (double)bench_quantile(st.lat_us, (size_t)st.nlat, 0.90) / 1000.0,
           (double)bench_quantile(st.lat_us, (size_t)st.nlat, 0.99) / 1000.0,
           (double)bench_quantile(st.lat_us, (size_t)st.nlat, 1.0) / 1000.0,
           (double)want / pub_secs, (double)bench_quantile(cd, (size_t)ncd, 0.50) / 1000.0,
           (double)bench_quantile(cd, (size_t)ncd, 0.99) / 1000.0, (double)late_max / 1000.0);

    rd_kafka_consumer_close(st.rk);
    rd_kafka_destroy(st.rk);
    PQfinish(conn);
    free(st.commit_us);
    free(st.lat_us);
    free(commit_dur);
    free(padstr);
    return st.received == want ? 0 : 1;
}
