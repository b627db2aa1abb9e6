/*
 * tests/integration/0004_outages.c - the relay heals by itself from a
 * PostgreSQL restart and a Kafka outage, loses nothing, and keeps its memory
 * bounded while the sink is down (DESIGN.md invariants 3 and 5).
 *
 * One relay (max_inflight 2000) runs the whole test, while a publisher
 * process (this program re-executed with --publish) publishes ~1 KiB events
 * at a steady pace in batches of BATCH events, one transaction per batch.
 * The publisher survives connection loss: it reconnects, then looks up whether
 * the batch whose commit was interrupted is in the outbox (all of it: done;
 * none of it: publish it again; part of it: atomicity broken, exit 3).
 *
 * (a) PostgreSQL is restarted mid-stream, once with "fast" and once with
 *     "immediate" (crash) shutdown. Asserted: the same relay process keeps
 *     running, and every event committed up to a point after the restart
 *     reaches Kafka (so the relay reconnected and went on by itself).
 * (b) Every mock broker is taken down for OUTAGE_MS while publishing goes on.
 *     Sampled every 200 ms: the relay's VmRSS, the checkpoint, the relay's
 *     PostgreSQL session. Asserted: VmRSS stays under a bound derived from
 *     the window (max_inflight x ~1.2 KiB envelopes is ~2.4 MiB; the bound is
 *     64 MiB, or 64 MiB over the relay's VmRSS before the outage under
 *     AddressSanitizer, whose shadow memory and quarantine inflate RSS);
 *     once 3000+ events were published during the outage (more than the
 *     window holds) the checkpoint's delivered count no longer moves and the
 *     relay starts no outbox read; the relay logged pipeline.stats or kafka.*
 *     lines about it. After the broker is back (publishing stops then),
 *     everything arrives, which may take up to ~30 s: librdkafka's reconnect
 *     backoff grows to reconnect.backoff.max.ms (30 s) during the outage.
 * At the end (graceful stop): every outbox id is in Kafka, with at most
 * max_inflight duplicates in all (a message is only ever sent again from the
 * unacknowledged window), and every pipeline.stats line of the run reports
 * inflight <= max_inflight.
 */
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUTBOX_TOPIC "o4"
#define KAFKA_TOPIC "t0004.o4"
#define MAX_INFLIGHT 2000
#define BATCH 10
#define PUB_RATE 600   /* events per second */
#define PAD_BYTES 1000 /* payload ~1 KiB */
#define OUTAGE_MS 10000
#define OUTAGE_EVENTS 3000 /* published during the outage before the check */
#define RSS_BOUND_KB (64 * 1024)
#define WAIT_MS 60000

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif
#ifndef UNDER_ASAN
#define UNDER_ASAN 0
#endif

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/* A field of /proc/<pid>/status in kB, or -1. */
static long long
proc_status_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t klen = strlen(key);
    long long kb = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            kb = strtoll(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* Lines of a file containing needle. */
static int
count_lines(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return 0;
    char buf[8192];
    int n = 0;
    while (fgets(buf, sizeof buf, f) != NULL)
        if (strstr(buf, needle) != NULL)
            n++;
    fclose(f);
    return n;
}

/* ------------------------------------------------------------------------ */
/* Publisher process (this program with --publish)                           */
/* ------------------------------------------------------------------------ */

static PGconn *
pub_connect(const char *url, int64_t deadline)
{
    for (;;) {
        PGconn *c = PQconnectdb(url);
        if (PQstatus(c) == CONNECTION_OK)
            return c;
        if (th_now_ms() >= deadline) {
            fprintf(stderr, "publisher: cannot reconnect: %s", PQerrorMessage(c));
            PQfinish(c);
            exit(2);
        }
        PQfinish(c);
        th_sleep_ms(100); /* retry pace inside a bounded loop */
    }
}

/* Events of batch b in the outbox, or -1 when the query failed. */
static long long
pub_batch_count(PGconn *c, long long b)
{
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM sluice.outbox WHERE topic = '" OUTBOX_TOPIC "' "
             "AND (payload->>'b')::bigint = %lld",
             b);
    PGresult *r = PQexec(c, sql);
    long long n =
        PQresultStatus(r) == PGRES_TUPLES_OK ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    return n;
}

static int
publisher_main(const char *url, const char *stop_file, int rate)
{
    char pad[PAD_BYTES + 1];
    memset(pad, 'x', PAD_BYTES);
    pad[PAD_BYTES] = '\0';
    size_t cap = (size_t)BATCH * (PAD_BYTES + 256) + 64;
    char *sql = malloc(cap);
    if (sql == NULL)
        return 2;
    PGconn *c = pub_connect(url, th_now_ms() + WAIT_MS);
    int64_t t0 = th_now_ms();
    long long b = 0, events = 0, lost_conn = 0, retried = 0;
    while (access(stop_file, F_OK) != 0) {
        b++;
        size_t len = (size_t)snprintf(sql, cap, "BEGIN;");
        for (int i = 0; i < BATCH; i++)
            len += (size_t)snprintf(sql + len, cap - len,
                                    "SELECT sluice.publish('" OUTBOX_TOPIC "', "
                                    "'{\"b\": %lld, \"i\": %d, \"pad\": \"%s\"}', 'k-%d');",
                                    b, i, pad, (int)((b * BATCH + i) % 16));
        snprintf(sql + len, cap - len, "COMMIT");
        for (;;) {
            PGresult *r = PQexec(c, sql);
            bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
            if (!ok)
                fprintf(stderr, "publisher: batch %lld failed: %s", b, PQerrorMessage(c));
            PQclear(r);
            if (ok)
                break;
            /* Whatever happened, start from a fresh session, then find out
             * whether the batch committed before the error. */
            lost_conn++;
            PQfinish(c);
            c = pub_connect(url, th_now_ms() + WAIT_MS);
            long long have = pub_batch_count(c, b);
            fprintf(stderr, "publisher: reconnected; batch %lld has %lld of %d events\n", b, have,
                    BATCH);
            if (have == BATCH)
                break;
            if (have != 0) {
                fprintf(stderr,
                        "publisher: batch %lld is partly committed (%lld of %d "
                        "events): publish() is not atomic\n",
                        b, have, BATCH);
                return 3;
            }
            retried++;
        }
        events += BATCH;
        int64_t due = t0 + events * 1000 / rate;
        int64_t now = th_now_ms();
        if (due > now)
            th_sleep_ms((int)(due - now)); /* pace */
    }
    printf("publisher: %lld batches, %lld events, %lld connection losses, %lld batches "
           "published again\n",
           b, events, lost_conn, retried);
    free(sql);
    PQfinish(c);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Test state                                                                */
/* ------------------------------------------------------------------------ */

static th_env_t g_env;
static PGconn *g_conn;
static pid_t g_relay;
static char g_relay_log[TH_PATH_MAX + 32];
static char g_prefix[128]; /* "<instance uuid>:" */

static void
relay_alive(void)
{
    int st = 0;
    if (th_wait_exit(g_relay, 0, &st) == 0)
        TH_FAIL("the relay exited by itself (wait status %d, exit code %d); it must heal and "
                "keep running; see its log below",
                st, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

static void
pg_reconnect(void)
{
    PQfinish(g_conn);
    g_conn = th_pg_connect(g_env.pg_url);
}

static long long
delivered_now(void)
{
    return th_sql_int(g_conn, "SELECT coalesce(max(delivered), 0) FROM sluice.relay_checkpoints "
                              "WHERE pipeline = 'p0004'");
}

static long long
outbox_count(void)
{
    return th_sql_int(g_conn, "SELECT count(*) FROM sluice.outbox");
}

/* Kafka contents by outbox id. */
typedef struct topic_ids {
    size_t records, distinct;
    long long max_id;
    unsigned char *seen;
} topic_ids_t;

/* Reads the whole topic. Every id in it must be an outbox id: at most the
 * outbox's max(id) queried after the read. */
static void
topic_read(topic_ids_t *out)
{
    th_record_t *recs = NULL;
    size_t n = 0;
    int rc = th_kcat_consume(g_env.brokers, KAFKA_TOPIC, 0, WAIT_MS, &recs, &n);
    TH_ASSERT(rc == 0, "kcat reads topic %s", KAFKA_TOPIC);
    long long max_id = th_sql_int(g_conn, "SELECT coalesce(max(id), 0) FROM sluice.outbox");
    memset(out, 0, sizeof *out);
    out->max_id = max_id;
    out->seen = calloc((size_t)max_id + 1, 1);
    TH_ASSERT(out->seen != NULL, "out of memory");
    out->records = n;
    size_t plen = strlen(g_prefix);
    for (size_t i = 0; i < n; i++) {
        char buf[160];
        TH_ASSERT(th_record_header(&recs[i], "sluice-id", buf, sizeof buf) != NULL &&
                      strncmp(buf, g_prefix, plen) == 0,
                  "record at partition %d offset %lld has a sluice-id \"%s<id>\", headers: %s",
                  recs[i].partition, (long long)recs[i].offset, g_prefix, recs[i].headers);
        long long id = strtoll(buf + plen, NULL, 10);
        TH_ASSERT(id >= 1 && id <= max_id, "sluice-id %s names an outbox id in 1..%lld", buf,
                  max_id);
        if (out->seen[id] == 0)
            out->distinct++;
        if (out->seen[id] < 255)
            out->seen[id]++;
    }
    th_records_free(recs, n);
}

/* Outbox ids <= upto missing from t; *first gets the lowest one. */
static long long
missing(const topic_ids_t *t, long long upto, long long *first)
{
    PGresult *r = PQexec(g_conn, "SELECT id FROM sluice.outbox ORDER BY id");
    TH_ASSERT(PQresultStatus(r) == PGRES_TUPLES_OK, "outbox ids can be read: %s",
              PQerrorMessage(g_conn));
    long long n = 0;
    *first = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        long long id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        if (id > upto)
            break;
        if ((id > t->max_id || t->seen[id] == 0) && n++ == 0)
            *first = id;
    }
    PQclear(r);
    return n;
}

typedef struct upto_arg {
    long long upto;
} upto_arg_t;

/* The checkpoint counts at least as many deliveries as there are outbox
 * events with id <= upto (a cheap first check before reading Kafka). */
static bool
checkpoint_covers(void *p)
{
    upto_arg_t *a = p;
    relay_alive();
    return delivered_now() >=
           th_sql_int(g_conn, "SELECT count(*) FROM sluice.outbox WHERE id <= %lld", a->upto);
}

/* Waits until every outbox event with id <= upto is in Kafka: first until the
 * checkpoint says so (up to timeout_ms), then reading the topic until nothing
 * is missing (a further 15 s). */
static void
wait_all_delivered(long long upto, const char *what, int timeout_ms)
{
    upto_arg_t a = {.upto = upto};
    int64_t t0 = th_now_ms();
    bool covered = th_wait_until(checkpoint_covers, &a, timeout_ms, 100);
    TH_LOG("%s: the checkpoint %s the events up to id %lld after %lld ms", what,
           covered ? "covers" : "still does not cover", upto, (long long)(th_now_ms() - t0));
    int64_t deadline = th_now_ms() + 15000;
    for (;;) {
        relay_alive();
        topic_ids_t t;
        topic_read(&t);
        long long first = 0;
        long long miss = missing(&t, upto, &first);
        free(t.seen);
        if (miss == 0)
            return;
        TH_ASSERT(th_now_ms() < deadline,
                  "%s: every outbox event up to id %lld reaches Kafka "
                  "within %lld ms; %lld are missing (first: id %lld)",
                  what, upto, (long long)(th_now_ms() - t0), miss, first);
        th_sleep_ms(250);
    }
}

/* Every pipeline.stats line of the relay log reports a window within the
 * configuration; returns how many lines there were. */
static int
check_stats_lines(void)
{
    FILE *f = fopen(g_relay_log, "r");
    TH_ASSERT(f != NULL, "the relay log %s exists", g_relay_log);
    char buf[8192];
    int n = 0;
    while (fgets(buf, sizeof buf, f) != NULL) {
        if (strstr(buf, "event=pipeline.stats") == NULL)
            continue;
        const char *p = strstr(buf, " inflight=");
        TH_ASSERT(p != NULL, "a pipeline.stats line reports inflight=: %s", buf);
        long long inflight = strtoll(p + strlen(" inflight="), NULL, 10);
        TH_ASSERT(inflight <= MAX_INFLIGHT,
                  "the relay never has more than max_inflight = %d "
                  "messages in flight, a stats line says %lld: %s",
                  MAX_INFLIGHT, inflight, buf);
        n++;
    }
    fclose(f);
    return n;
}

typedef struct min_arg {
    long long want;
} min_arg_t;

static bool
max_id_reached(void *p)
{
    min_arg_t *a = p;
    relay_alive();
    return th_sql_int(g_conn, "SELECT coalesce(max(id), 0) FROM sluice.outbox") >= a->want;
}

static bool
delivered_reached(void *p)
{
    min_arg_t *a = p;
    relay_alive();
    return delivered_now() >= a->want;
}

/* ------------------------------------------------------------------------ */
/* (a) PostgreSQL restarts                                                   */
/* ------------------------------------------------------------------------ */

static void
pg_restart_phase(const char *mode)
{
    long long before = th_sql_int(g_conn, "SELECT coalesce(max(id), 0) FROM sluice.outbox");
    int disc0 = count_lines(g_relay_log, "event=pg.disconnected");
    TH_LOG("restarting PostgreSQL (%s) at outbox id %lld", mode, before);
    int64_t t0 = th_now_ms();
    th_env_pg_restart(&g_env, mode);
    TH_LOG("PostgreSQL is back after %lld ms", (long long)(th_now_ms() - t0));
    pg_reconnect();

    /* The publisher reconnects by itself and goes on. */
    min_arg_t arg = {.want = before + 200};
    TH_ASSERT(th_wait_until(max_id_reached, &arg, WAIT_MS, 20),
              "after the %s restart the publisher commits 200+ more events (outbox id > %lld)",
              mode, before + 200);
    long long upto = th_sql_int(g_conn, "SELECT max(id) FROM sluice.outbox");
    wait_all_delivered(upto, mode, WAIT_MS);
    int disc = count_lines(g_relay_log, "event=pg.disconnected") - disc0;
    int conn = count_lines(g_relay_log, "event=pg.connected");
    TH_LOG("after the %s restart every event up to id %lld (published after the restart too) "
           "is in Kafka; the relay logged %d pg.disconnected, %d pg.connected lines so far",
           mode, upto, disc, conn);
}

/* ------------------------------------------------------------------------ */
/* (b) Broker outage                                                         */
/* ------------------------------------------------------------------------ */

/* The relay session's last statement start and text (caller frees both). */
static void
relay_session(char **start, char **query)
{
    PGresult *r = PQexec(g_conn, "SELECT coalesce(max(query_start)::text, ''), "
                                 "coalesce(max(query), '') FROM pg_stat_activity "
                                 "WHERE application_name = 'sluice-relay'");
    TH_ASSERT(PQresultStatus(r) == PGRES_TUPLES_OK, "pg_stat_activity can be read: %s",
              PQerrorMessage(g_conn));
    *start = strdup(PQgetvalue(r, 0, 0));
    *query = strdup(PQgetvalue(r, 0, 1));
    PQclear(r);
}

static void
broker_outage_phase(const char *stop_file)
{
    long long rss0 = proc_status_kb(g_relay, "VmRSS");
    TH_ASSERT(rss0 > 0, "the relay's VmRSS can be read from /proc/%d/status", (int)g_relay);
    long long bound = UNDER_ASAN ? rss0 + RSS_BOUND_KB : RSS_BOUND_KB;
    int stats0 = count_lines(g_relay_log, "event=pipeline.stats");
    int kafka0 = count_lines(g_relay_log, "event=kafka.");
    long long o0 = outbox_count();
    long long d0 = delivered_now();
    TH_LOG("broker outage for %d ms: relay VmRSS %lld kB before, bound %lld kB; outbox %lld, "
           "delivered %lld",
           OUTAGE_MS, rss0, bound, o0, d0);

    th_env_broker_down(&g_env, -1);
    int64_t t_down = th_now_ms();
    long long peak = rss0, d_full = -1, d_last = -1, o_last = o0;
    int64_t t_full = 0;
    char *q_start = NULL, *q_text = NULL;
    int samples = 0;
    while (th_now_ms() - t_down < OUTAGE_MS) {
        relay_alive();
        long long rss = proc_status_kb(g_relay, "VmRSS");
        if (rss > peak)
            peak = rss;
        TH_ASSERT(rss < bound,
                  "with the broker down for %lld ms the relay's VmRSS stays under "
                  "%lld kB (max_inflight %d x ~1 KiB payloads), got %lld kB (%lld kB before)",
                  (long long)(th_now_ms() - t_down), bound, MAX_INFLIGHT, rss, rss0);
        o_last = outbox_count();
        d_last = delivered_now();
        char *s = NULL, *q = NULL;
        relay_session(&s, &q);
        if (d_full < 0 && o_last >= o0 + OUTAGE_EVENTS) {
            /* More was published than the window holds: the relay must be
             * waiting for acks now, not reading. */
            d_full = d_last;
            t_full = th_now_ms();
            q_start = s;
            q_text = q;
            TH_LOG("%lld events published since the outage began; delivered %lld; relay "
                   "session last ran at %s: %.60s",
                   o_last - o0, d_full, q_start, q_text);
            s = q = NULL;
        } else if (d_full >= 0) {
            TH_ASSERT(d_last == d_full,
                      "with the broker down and %lld+ events published, the "
                      "checkpoint's delivered count stays at %lld, got %lld",
                      o_last - o0, d_full, d_last);
            TH_ASSERT(strcmp(s, q_start) == 0 || strstr(q, "sluice.outbox o") == NULL,
                      "with the broker down and the window (max_inflight %d) full the relay "
                      "reads no more outbox rows; its session started a new read at %s: %.200s",
                      MAX_INFLIGHT, s, q);
        }
        free(s);
        free(q);
        samples++;
        th_sleep_ms(200); /* sample interval */
    }
    TH_ASSERT(d_full >= 0,
              "at least %d events are published during the %d ms outage (the "
              "publisher is paced at %d/s); only %lld were",
              OUTAGE_EVENTS, OUTAGE_MS, PUB_RATE, o_last - o0);
    TH_ASSERT(th_now_ms() - t_full >= 2000,
              "delivered was watched for 2 s or more after the "
              "window filled (only %lld ms)",
              (long long)(th_now_ms() - t_full));
    th_env_broker_up(&g_env, -1);
    th_write_file(stop_file, "stop\n"); /* less to catch up with */
    TH_LOG("broker up after %lld ms: %d samples, peak VmRSS %lld kB (bound %lld kB), delivered "
           "%lld -> %lld, %lld events published during the outage",
           (long long)(th_now_ms() - t_down), samples, peak, bound, d0, d_last, o_last - o0);
    free(q_start);
    free(q_text);

    int stats = count_lines(g_relay_log, "event=pipeline.stats") - stats0;
    int kafka = count_lines(g_relay_log, "event=kafka.") - kafka0;
    TH_ASSERT(stats + kafka > 0,
              "the relay logs the outage (pipeline.stats or kafka.* lines), "
              "got %d pipeline.stats and %d kafka.* lines since it began",
              stats, kafka);
    TH_LOG("the relay logged %d pipeline.stats and %d kafka.* lines during the outage", stats,
           kafka);

    /* librdkafka's reconnect backoff (up to reconnect.backoff.max.ms = 30 s)
     * may keep the relay away for a while after the broker is back. */
    long long upto = th_sql_int(g_conn, "SELECT max(id) FROM sluice.outbox");
    wait_all_delivered(upto, "after the broker outage", 90000);
    TH_LOG("every event up to id %lld is in Kafka after the outage", upto);
}

/* ------------------------------------------------------------------------ */

int
main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--publish") == 0)
        return publisher_main(argv[2], argv[3], atoi(argv[4]));

    TH_ASSERT(th_env_start(&g_env) == 0, "the environment starts");
    const char *tmp = th_tmpdir();
    const char *const init[] = {SLUICE_BIN, "init", "--db", g_env.pg_url, NULL};
    int rc = th_run(init, NULL, WAIT_MS);
    TH_ASSERT(rc == 0, "sluice init exits 0, got %d", rc);
    th_env_topic_create(&g_env, KAFKA_TOPIC, 4);
    g_conn = th_pg_connect(g_env.pg_url);
    char *instance = th_sql_text(g_conn, "SELECT instance_id::text FROM sluice.meta");
    snprintf(g_prefix, sizeof g_prefix, "%s:", instance);
    free(instance);

    char cfg[TH_PATH_MAX + 32], cfgtext[1024];
    snprintf(cfg, sizeof cfg, "%s/relay.json", tmp);
    snprintf(cfgtext, sizeof cfgtext,
             "{\"database\": \"${ENV:SLUICE_PG_URL}\", \"checkpoint_interval_ms\": 50,\n"
             " \"pipelines\": [{\"name\": \"p0004\", \"topics\": [\"" OUTBOX_TOPIC "\"],"
             " \"max_inflight\": %d, \"poll_interval_ms\": 100,\n"
             "   \"sink\": {\"type\": \"kafka\", \"brokers\": \"${ENV:KAFKA_BROKERS}\","
             " \"topic\": \"t0004.{topic}\"}}]}\n",
             MAX_INFLIGHT);
    th_write_file(cfg, cfgtext);
    snprintf(g_relay_log, sizeof g_relay_log, "%s/relay.log", tmp);
    const char *const relay[] = {SLUICE_BIN, "relay", "--config", cfg, NULL};
    g_relay = th_spawn(relay, g_relay_log);

    char stop_file[TH_PATH_MAX + 32], pub_log[TH_PATH_MAX + 32], rate[16];
    snprintf(stop_file, sizeof stop_file, "%s/publisher.stop", tmp);
    snprintf(pub_log, sizeof pub_log, "%s/publisher.log", tmp);
    snprintf(rate, sizeof rate, "%d", PUB_RATE);
    const char *const pub_av[] = {th_self_exe(), "--publish", g_env.pg_url, stop_file, rate, NULL};
    pid_t pub = th_spawn(pub_av, pub_log);

    min_arg_t arg = {.want = 300};
    TH_ASSERT(th_wait_until(delivered_reached, &arg, WAIT_MS, 20),
              "the relay delivers its first 300 events within %d ms", WAIT_MS);

    pg_restart_phase("fast");
    pg_restart_phase("immediate");
    broker_outage_phase(stop_file);

    int st = 0;
    TH_ASSERT(th_wait_exit(pub, WAIT_MS, &st) == 0, "the publisher stops when asked");
    TH_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the publisher exits 0 (3: a batch was partly committed), wait status %d", st);
    long long max_id = th_sql_int(g_conn, "SELECT max(id) FROM sluice.outbox");
    wait_all_delivered(max_id, "at the end", WAIT_MS);
    int nstats = check_stats_lines();

    relay_alive();
    TH_ASSERT(th_kill(g_relay, SIGTERM) == 0, "the relay is running at the end");
    TH_ASSERT(th_wait_exit(g_relay, WAIT_MS, &st) == 0, "the relay exits after SIGTERM");
    TH_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the relay exits 0 after SIGTERM, wait status %d", st);

    topic_ids_t t;
    topic_read(&t);
    long long first = 0;
    long long miss = missing(&t, max_id, &first);
    long long total = outbox_count();
    size_t dups = t.records - t.distinct;
    TH_LOG("final: %lld events in the outbox, %zu records in Kafka, %zu distinct, %zu "
           "duplicates; %d pipeline.stats lines, all within max_inflight",
           total, t.records, t.distinct, dups, nstats);
    TH_ASSERT(miss == 0,
              "no event is lost: %lld outbox events are missing from Kafka (first: "
              "id %lld)",
              miss, first);
    TH_ASSERT(t.distinct == (size_t)total, "Kafka holds the %lld outbox events, got %zu distinct",
              total, t.distinct);
    TH_ASSERT(dups <= MAX_INFLIGHT,
              "duplicates come only from the unacknowledged window: at "
              "most max_inflight = %d, got %zu",
              MAX_INFLIGHT, dups);
    free(t.seen);

    PQfinish(g_conn);
    th_env_stop(&g_env);
    TH_LOG("ok");
    return 0;
}
