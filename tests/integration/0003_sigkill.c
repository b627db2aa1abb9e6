/*
 * tests/integration/0003_sigkill.c - SIGKILL the relay mid-stream, again and
 * again: nothing is lost, duplicates stay within the window, the checkpoint
 * never moves backwards (DESIGN.md invariant 3).
 *
 * A publisher process (this program re-executed with --publish) commits 5000
 * events in small transactions at a steady pace. Meanwhile the relay
 * (max_inflight 200, checkpoint_interval_ms 20) is killed with SIGKILL at
 * KILLS random points (seeded; the seed is printed, rerun with TH_SEED=...)
 * and restarted each time; then it finishes and stops gracefully.
 *
 * Asserted:
 *   - every outbox id is in the Kafka topic (sluice-id header);
 *   - the stored checkpoint (range_no, last_id) and its delivered count never
 *     decrease: sampled continuously, just before each kill, after each kill,
 *     and as loaded by the next relay (its pipeline.resume line);
 *   - ack before checkpoint: after each kill, every event the stored
 *     checkpoint covers (visible in snap_lo, or in snap_hi with id <= last_id)
 *     is in Kafka;
 *   - no relay exits by itself (e.g. a pipeline failing on its checkpoint);
 *   - at each kill, the events in Kafka beyond the stored checkpoint (the
 *     ones the restarted relay sends again) are at most
 *     max_inflight + CKPT_ALLOWANCE, and the duplicates in the topic at the
 *     end are at most KILLS * (max_inflight + CKPT_ALLOWANCE).
 *
 * CKPT_ALLOWANCE is what checkpoint_interval_ms allows on top of the
 * unacknowledged window: the checkpoint is written at most every 20 ms, so
 * the acknowledgements of up to 20 ms (plus the write's own round trip) may
 * be missing from it. The relay reads a page only when the window has room
 * for a whole page (max_inflight here), and one window's round trip (read,
 * produce, acks=all delivery reports) takes about 20-50 ms with the mock
 * broker, so at most two windows can be acknowledged in that time; two
 * windows are allowed. Measured: up to max_inflight + one window (398) per
 * kill.
 */
#include "harness.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define OUTBOX_TOPIC "events"
#define KAFKA_TOPIC "t0003.events"
#define NEVENTS 5000
#define PUB_RATE 500 /* events per second: publishing lasts 10 s */
#define KILLS 5
#define MAX_INFLIGHT 200
#define CKPT_INTERVAL_MS 20
#define CKPT_ALLOWANCE (2 * MAX_INFLIGHT)
#define PER_KILL_BOUND (MAX_INFLIGHT + CKPT_ALLOWANCE)
#define WAIT_MS 60000

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/* xorshift: the test's own random numbers, reproducible from the seed. */
static uint64_t rng_state;

static uint64_t
rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static int
rng_between(int lo, int hi)
{
    return lo + (int)(rng() % (uint64_t)(hi - lo + 1));
}

/* ------------------------------------------------------------------------ */
/* Publisher process (this program with --publish)                           */
/* ------------------------------------------------------------------------ */

static int
publisher_main(const char *url, int n, int rate)
{
    PGconn *c = PQconnectdb(url);
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "publisher: connect: %s", PQerrorMessage(c));
        return 2;
    }
    char *sql = malloc(8192);
    if (sql == NULL)
        return 2;
    int64_t t0 = th_now_ms();
    int done = 0, tx = 0;
    while (done < n) {
        int size = 1 + tx % 5;
        if (size > n - done)
            size = n - done;
        size_t len = (size_t)snprintf(sql, 8192, "BEGIN;");
        for (int i = 0; i < size; i++)
            len += (size_t)snprintf(sql + len, 8192 - len,
                                    "SELECT sluice.publish('" OUTBOX_TOPIC "', "
                                    "'{\"n\": %d, \"pad\": \"%s\"}', 'k-%d');",
                                    done + i, "0123456789abcdef0123456789abcdef", (done + i) % 50);
        snprintf(sql + len, 8192 - len, "COMMIT");
        PGresult *r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "publisher: transaction %d failed: %s", tx, PQerrorMessage(c));
            return 2;
        }
        PQclear(r);
        done += size;
        tx++;
        /* Pace: never ahead of `rate` events per second. */
        int64_t due = t0 + (int64_t)done * 1000 / rate;
        int64_t now = th_now_ms();
        if (due > now)
            th_sleep_ms((int)(due - now));
    }
    printf("publisher: committed %d events in %d transactions in %lld ms\n", done, tx,
           (long long)(th_now_ms() - t0));
    free(sql);
    PQfinish(c);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Checkpoint samples                                                        */
/* ------------------------------------------------------------------------ */

typedef struct ckpt {
    bool present;
    long long range_no, last_id, delivered;
} ckpt_t;

static PGconn *g_conn;
static ckpt_t g_prev; /* last sample, for the monotonic check */
static long long g_samples;
static pid_t g_relay;  /* the relay running now */
static int g_relay_no; /* its number: relay-<n>.log */

/* The current relay must not exit by itself (it runs until killed). */
static void
relay_alive(void)
{
    int st = 0;
    if (th_wait_exit(g_relay, 0, &st) == 0)
        TH_FAIL("relay #%d exited by itself (wait status %d, exit code %d) instead of running "
                "until it is killed; see relay-%d.log below",
                g_relay_no, st, WIFEXITED(st) ? WEXITSTATUS(st) : -1, g_relay_no);
}

static ckpt_t
ckpt_read(void)
{
    ckpt_t c = {0};
    PGresult *r = PQexec(g_conn, "SELECT range_no, last_id, delivered FROM "
                                 "sluice.relay_checkpoints WHERE pipeline = 'p0003'");
    TH_ASSERT(PQresultStatus(r) == PGRES_TUPLES_OK, "the checkpoint can be read: %s",
              PQerrorMessage(g_conn));
    if (PQntuples(r) == 1) {
        c.present = true;
        c.range_no = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        c.last_id = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
        c.delivered = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    }
    PQclear(r);
    return c;
}

static bool
ckpt_ge(const ckpt_t *a, const ckpt_t *b)
{
    if (!b->present)
        return true;
    if (!a->present)
        return false;
    bool pos =
        a->range_no > b->range_no || (a->range_no == b->range_no && a->last_id >= b->last_id);
    return pos && a->delivered >= b->delivered;
}

/* Reads the checkpoint and asserts it did not move back since the last sample. */
static ckpt_t
ckpt_sample(const char *when)
{
    ckpt_t c = ckpt_read();
    TH_ASSERT(ckpt_ge(&c, &g_prev),
              "the checkpoint never moves backwards (%s): was range_no=%lld "
              "last_id=%lld delivered=%lld, now range_no=%lld last_id=%lld delivered=%lld",
              when, g_prev.range_no, g_prev.last_id, g_prev.delivered, c.range_no, c.last_id,
              c.delivered);
    g_prev = c;
    g_samples++;
    return c;
}

typedef struct kill_arg {
    long long outbox;    /* the outbox holds at least this many events */
    long long delivered; /* and the stored checkpoint counts more than this */
} kill_arg_t;

/* A kill point is reached (the checkpoint is sampled, the relay must live):
 * the outbox is big enough and this relay wrote a checkpoint of its own (or
 * has nothing left to deliver). */
static bool
kill_point(void *p)
{
    kill_arg_t *a = p;
    relay_alive();
    ckpt_t c = ckpt_sample("while publishing");
    long long n = th_sql_int(g_conn, "SELECT count(*) FROM sluice.outbox");
    return n >= a->outbox && (c.delivered > a->delivered || c.delivered >= n);
}

/* ------------------------------------------------------------------------ */
/* Kafka contents                                                            */
/* ------------------------------------------------------------------------ */

typedef struct topic_ids {
    size_t records;      /* records in the topic */
    size_t distinct;     /* distinct outbox ids among them */
    size_t dups;         /* records - distinct */
    unsigned char *seen; /* seen[id] counts (saturating) for id <= max_id */
    long long max_id;
} topic_ids_t;

static void
topic_ids_free(topic_ids_t *t)
{
    free(t->seen);
    memset(t, 0, sizeof *t);
}

/* Reads the whole topic (want: records to wait for, 0 = one read). */
static void
topic_read(const char *brokers, const char *prefix, long long max_id, size_t want, topic_ids_t *out)
{
    th_record_t *recs = NULL;
    size_t n = 0;
    int rc = th_kcat_consume(brokers, KAFKA_TOPIC, want, WAIT_MS, &recs, &n);
    TH_ASSERT(rc == 0, "kcat reads at least %zu records of %s, got %zu", want, KAFKA_TOPIC, n);
    memset(out, 0, sizeof *out);
    out->max_id = max_id;
    out->seen = calloc((size_t)max_id + 1, 1);
    TH_ASSERT(out->seen != NULL, "out of memory");
    out->records = n;
    size_t plen = strlen(prefix);
    for (size_t i = 0; i < n; i++) {
        char buf[160];
        TH_ASSERT(th_record_header(&recs[i], "sluice-id", buf, sizeof buf) != NULL,
                  "record at partition %d offset %lld has a sluice-id, headers: %s",
                  recs[i].partition, (long long)recs[i].offset, recs[i].headers);
        TH_ASSERT(strncmp(buf, prefix, plen) == 0,
                  "sluice-id %s starts with the instance "
                  "prefix %s",
                  buf, prefix);
        long long id = strtoll(buf + plen, NULL, 10);
        TH_ASSERT(id >= 1 && id <= max_id, "sluice-id %s names an outbox id in 1..%lld", buf,
                  max_id);
        if (out->seen[id] == 0)
            out->distinct++;
        if (out->seen[id] < 255)
            out->seen[id]++;
    }
    out->dups = out->records - out->distinct;
    th_records_free(recs, n);
}

/*
 * Ack before checkpoint: every event the stored checkpoint covers must be in
 * Kafka. Covered (see outbox/sql/0001_outbox.sql): visible in snap_lo, or
 * visible in snap_hi with id <= last_id. Returns how many covered events are
 * missing from t; *first gets the lowest.
 */
static long long
covered_missing(const topic_ids_t *t, long long *covered, long long *first)
{
    PGresult *r =
        PQexec(g_conn, "SELECT o.id FROM sluice.outbox o, sluice.relay_checkpoints c "
                       "WHERE c.pipeline = 'p0003' AND (pg_visible_in_snapshot(o.txid, c.snap_lo) "
                       "OR (c.snap_hi IS NOT NULL AND pg_visible_in_snapshot(o.txid, c.snap_hi) "
                       "AND o.id <= c.last_id)) ORDER BY o.id");
    TH_ASSERT(PQresultStatus(r) == PGRES_TUPLES_OK, "the covered ids can be read: %s",
              PQerrorMessage(g_conn));
    long long miss = 0;
    *first = 0;
    *covered = PQntuples(r);
    for (int i = 0; i < PQntuples(r); i++) {
        long long id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        if ((id > t->max_id || t->seen[id] == 0) && miss++ == 0)
            *first = id;
    }
    PQclear(r);
    return miss;
}

/* Parses "name=<int>" from a log line. */
static bool
log_field(const char *line, const char *name, long long *out)
{
    char pat[64];
    snprintf(pat, sizeof pat, " %s=", name);
    const char *p = strstr(line, pat);
    if (p == NULL)
        return false;
    *out = strtoll(p + strlen(pat), NULL, 10);
    return true;
}

/* The pipeline.resume line of a relay log, into *line (caller frees). */
static char *
resume_line(const char *log)
{
    FILE *f = fopen(log, "r");
    TH_ASSERT(f != NULL, "relay log %s exists", log);
    char buf[4096];
    char *found = NULL;
    while (fgets(buf, sizeof buf, f) != NULL) {
        if (strstr(buf, "event=pipeline.resume") != NULL) {
            found = strdup(buf);
            break;
        }
    }
    fclose(f);
    return found;
}

/* ------------------------------------------------------------------------ */

static pid_t
start_relay(const char *cfg, const char *log)
{
    const char *const relay[] = {SLUICE_BIN, "relay", "--config", cfg, NULL};
    return th_spawn(relay, log);
}

int
main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "--publish") == 0)
        return publisher_main(argv[2], atoi(argv[3]), atoi(argv[4]));

    uint64_t seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 16);
    if (getenv("TH_SEED") != NULL)
        seed = strtoull(getenv("TH_SEED"), NULL, 10);
    TH_LOG("seed %" PRIu64 " (rerun with TH_SEED=%" PRIu64 ")", seed, seed);
    rng_state = seed ? seed : 1;
    for (int i = 0; i < 8; i++)
        rng();

    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *tmp = th_tmpdir();
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    int rc = th_run(init, NULL, WAIT_MS);
    TH_ASSERT(rc == 0, "sluice init exits 0, got %d", rc);
    th_env_topic_create(&env, KAFKA_TOPIC, 4);
    g_conn = th_pg_connect(env.pg_url);
    char *instance = th_sql_text(g_conn, "SELECT instance_id::text FROM sluice.meta");
    char prefix[128];
    snprintf(prefix, sizeof prefix, "%s:", instance);

    char cfg[TH_PATH_MAX + 32];
    snprintf(cfg, sizeof cfg, "%s/relay.json", tmp);
    char cfgtext[1024];
    snprintf(cfgtext, sizeof cfgtext,
             "{\"database\": \"${ENV:SLUICE_PG_URL}\", \"checkpoint_interval_ms\": %d,\n"
             " \"pipelines\": [{\"name\": \"p0003\", \"topics\": [\"" OUTBOX_TOPIC "\"],"
             " \"max_inflight\": %d, \"batch_size\": %d,\n"
             "   \"sink\": {\"type\": \"kafka\", \"brokers\": \"${ENV:KAFKA_BROKERS}\","
             " \"topic\": \"t0003.{topic}\"}}]}\n",
             CKPT_INTERVAL_MS, MAX_INFLIGHT, MAX_INFLIGHT);
    th_write_file(cfg, cfgtext);

    char log[TH_PATH_MAX + 32];
    snprintf(log, sizeof log, "%s/relay-0.log", tmp);
    g_relay = start_relay(cfg, log);
    g_relay_no = 0;

    char rate[16], nev[16], pub_log[TH_PATH_MAX + 32];
    snprintf(rate, sizeof rate, "%d", PUB_RATE);
    snprintf(nev, sizeof nev, "%d", NEVENTS);
    snprintf(pub_log, sizeof pub_log, "%s/publisher.log", tmp);
    const char *const pub_av[] = {th_self_exe(), "--publish", env.pg_url, nev, rate, NULL};
    pid_t pub = th_spawn(pub_av, pub_log);

    /* Kill points: outbox sizes spread over the publishing, in order. */
    long long points[KILLS];
    for (int k = 0; k < KILLS; k++) {
        int lo = 200 + k * (NEVENTS - 400) / KILLS;
        int hi = 200 + (k + 1) * (NEVENTS - 400) / KILLS - 1;
        points[k] = rng_between(lo, hi);
    }

    long long exposure_sum = 0, resumed = 0;
    TH_ASSERT(th_wait_file_contains(log, "event=pipeline.resume", WAIT_MS),
              "relay #0 loads its checkpoint (pipeline.resume in %s)", log);
    for (int k = 0; k < KILLS; k++) {
        /* A random point while the relay delivers: the publisher passed the
         * point's outbox size, this relay wrote a checkpoint, plus 0-60 ms. */
        kill_arg_t arg = {.outbox = points[k], .delivered = resumed};
        TH_ASSERT(th_wait_until(kill_point, &arg, WAIT_MS, 2),
                  "relay #%d delivers (the checkpoint passes delivered=%lld) and the publisher "
                  "reaches %lld events, within %d ms",
                  k, resumed, points[k], WAIT_MS);
        int extra = rng_between(0, 60);
        int64_t until = th_now_ms() + extra;
        while (th_now_ms() < until) { /* keep sampling meanwhile */
            relay_alive();
            ckpt_sample("before a kill");
            th_sleep_ms(2);
        }
        relay_alive();
        ckpt_t before = ckpt_sample("just before a kill");
        TH_ASSERT(th_kill(g_relay, SIGKILL) == 0, "relay #%d is running when killed", k);
        int st = 0;
        TH_ASSERT(th_wait_exit(g_relay, WAIT_MS, &st) == 0, "relay #%d dies after SIGKILL", k);
        TH_ASSERT(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
                  "relay #%d was killed by SIGKILL (it did not exit by itself), wait status %d", k,
                  st);
        ckpt_t after = ckpt_sample("after a kill");

        /* Kafka is frozen now: what is there beyond the checkpoint gets sent again. */
        long long max_id = th_sql_int(g_conn, "SELECT coalesce(max(id), 0) FROM sluice.outbox");
        topic_ids_t t;
        topic_read(env.brokers, prefix, max_id, 0, &t);
        long long exposure = (long long)t.distinct - after.delivered;
        TH_LOG("kill %d at outbox size >= %lld (+%d ms): checkpoint before range_no=%lld "
               "last_id=%lld delivered=%lld, after range_no=%lld last_id=%lld delivered=%lld; "
               "kafka: %zu records, %zu distinct, %lld beyond the checkpoint",
               k + 1, points[k], extra, before.range_no, before.last_id, before.delivered,
               after.range_no, after.last_id, after.delivered, t.records, t.distinct, exposure);
        TH_ASSERT(exposure >= 0,
                  "the checkpoint counts only delivered events: it says %lld "
                  "delivered but Kafka holds only %zu distinct events",
                  after.delivered, t.distinct);
        TH_ASSERT(exposure <= PER_KILL_BOUND,
                  "at kill %d, at most max_inflight (%d) + checkpoint allowance (%d) = %d events "
                  "in Kafka are beyond the stored checkpoint (to be sent again); got %lld",
                  k + 1, MAX_INFLIGHT, CKPT_ALLOWANCE, PER_KILL_BOUND, exposure);
        long long covered = 0, first = 0;
        long long uncovered = covered_missing(&t, &covered, &first);
        TH_ASSERT(uncovered == 0,
                  "ack before checkpoint: the %lld events the stored checkpoint "
                  "covers after kill %d (range_no=%lld last_id=%lld) are all in Kafka; %lld are "
                  "not (first: id %lld), so a restart would skip them",
                  covered, k + 1, after.range_no, after.last_id, uncovered, first);
        exposure_sum += exposure;
        topic_ids_free(&t);

        g_relay_no = k + 1;
        snprintf(log, sizeof log, "%s/relay-%d.log", tmp, k + 1);
        g_relay = start_relay(cfg, log);
        TH_ASSERT(th_wait_file_contains(log, "event=pipeline.resume", WAIT_MS),
                  "relay #%d loads its checkpoint (pipeline.resume in %s)", k + 1, log);
        char *line = resume_line(log);
        long long l_last = -1;
        TH_ASSERT(line != NULL && log_field(line, "delivered", &resumed) &&
                      log_field(line, "last_id", &l_last),
                  "the pipeline.resume line has delivered= and last_id=: %s", line ? line : "");
        TH_ASSERT(resumed >= after.delivered,
                  "relay #%d resumes from the stored checkpoint (delivered %lld) or later; it "
                  "resumed at delivered=%lld: %s",
                  k + 1, after.delivered, resumed, line);
        free(line);
        ckpt_sample("after a restart");
    }

    int st = 0;
    TH_ASSERT(th_wait_exit(pub, WAIT_MS, &st) == 0, "the publisher finishes");
    TH_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the publisher exits 0, status %d (see %s)",
              st, pub_log);
    long long total = th_sql_int(g_conn, "SELECT count(*) FROM sluice.outbox");
    long long max_id = th_sql_int(g_conn, "SELECT max(id) FROM sluice.outbox");
    TH_ASSERT(total == NEVENTS, "the outbox holds the %d published events, got %lld", NEVENTS,
              total);

    /* Let the last relay catch up: every outbox id in Kafka. */
    topic_ids_t t = {0};
    int64_t deadline = th_now_ms() + WAIT_MS;
    for (;;) {
        relay_alive();
        ckpt_sample("catching up");
        topic_read(env.brokers, prefix, max_id, 0, &t);
        if ((long long)t.distinct >= total)
            break;
        TH_ASSERT(th_now_ms() < deadline,
                  "every one of the %lld outbox events reaches Kafka "
                  "within %d ms after the publisher finished; %zu distinct did (lost events?)",
                  total, WAIT_MS, t.distinct);
        topic_ids_free(&t);
        th_sleep_ms(200);
    }
    TH_LOG("caught up: %zu records, %zu distinct", t.records, t.distinct);
    topic_ids_free(&t);

    relay_alive();
    TH_ASSERT(th_kill(g_relay, SIGTERM) == 0, "the last relay is running at the end");
    TH_ASSERT(th_wait_exit(g_relay, WAIT_MS, &st) == 0, "the last relay exits after SIGTERM");
    TH_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the last relay exits 0 after SIGTERM, wait status %d", st);
    ckpt_t fin = ckpt_sample("after the graceful stop");

    /* Final, stable contents. */
    topic_read(env.brokers, prefix, max_id, 0, &t);
    PGresult *r = PQexec(g_conn, "SELECT id FROM sluice.outbox ORDER BY id");
    TH_ASSERT(PQresultStatus(r) == PGRES_TUPLES_OK, "outbox ids can be read");
    long long lost = 0, first_lost = 0;
    for (int i = 0; i < PQntuples(r); i++) {
        long long id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        if (t.seen[id] == 0 && lost++ == 0)
            first_lost = id;
    }
    PQclear(r);
    TH_LOG("final: %zu records, %zu distinct, %zu duplicates (bound %d = %d kills x (%d + %d)); "
           "sum of per-kill exposure %lld; checkpoint delivered=%lld; %lld checkpoint samples",
           t.records, t.distinct, t.dups, KILLS * PER_KILL_BOUND, KILLS, MAX_INFLIGHT,
           CKPT_ALLOWANCE, exposure_sum, fin.delivered, g_samples);
    TH_ASSERT(lost == 0, "no event is lost: %lld outbox ids are missing from Kafka (first: %lld)",
              lost, first_lost);
    TH_ASSERT(t.distinct == (size_t)total,
              "Kafka holds exactly the %lld outbox events, got %zu "
              "distinct ids",
              total, t.distinct);
    TH_ASSERT(t.dups <= (size_t)KILLS * PER_KILL_BOUND,
              "duplicates after %d kills are at most kills x (max_inflight %d + checkpoint "
              "allowance %d) = %d, got %zu",
              KILLS, MAX_INFLIGHT, CKPT_ALLOWANCE, KILLS * PER_KILL_BOUND, t.dups);
    TH_ASSERT((long long)t.dups <= exposure_sum,
              "duplicates (%zu) are only the events that were beyond the checkpoint at a kill "
              "(%lld in total)",
              t.dups, exposure_sum);
    topic_ids_free(&t);

    free(instance);
    PQfinish(g_conn);
    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
