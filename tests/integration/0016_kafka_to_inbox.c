/*
 * tests/integration/0016_kafka_to_inbox.c - publish -> relay -> Kafka ->
 * reverse relay -> inbox -> two concurrent claimers, each message processed
 * exactly once while both relays are SIGKILLed at random points.
 *
 *   1. A publisher commits NEVENTS events (7 keys, sequence numbers per key)
 *      in small transactions. Relay A (outbox -> Kafka topic "orders", 4
 *      partitions) runs once; the reverse relay B (Kafka source, consumer
 *      group, inbox sink into a second database) runs as two processes of one
 *      group, so partitions move between them. At seeded random points one of
 *      the three processes is SIGKILLed and restarted. Two claimer threads
 *      claim with one_per_key, record each message in a `processed` table and
 *      acknowledge it in the same transaction. Afterwards: every event is in
 *      the inbox once, was processed exactly once, in publish order per key;
 *      the inbox ids are the outbox's stable ids.
 *   2. Invalid records (not JSON, JSON but not an envelope) are stored as dead
 *      messages with the reason, under topic/partition/offset ids, and records
 *      behind them on the same partition still arrive.
 *   3. A record whose sluice-id header repeats an id the inbox holds is
 *      counted as a duplicate (inbox.duplicates) and changes nothing.
 *   4. Config errors: a Kafka source with a non-inbox sink, or with outbox
 *      topics, is refused by check-config with the JSON path and a hint.
 *
 * The seed is printed; SLUICE_TEST_SEED=<n> reruns the same kill schedule.
 */
#include "harness.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#define NEVENTS 3000
#define NKEYS 7
#define NKILLS 5

typedef struct count_arg {
    PGconn *conn;
    const char *sql;
    long long want;
} count_arg_t;

static bool
count_reached(void *p)
{
    count_arg_t *a = p;
    return th_sql_int(a->conn, "%s", a->sql) >= a->want;
}

/* ------------------------------------------------------------------------ */
/* Claimers                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct claimer {
    const char *url;
    int id;
    atomic_bool *stop;
    long long processed;
    char err[512]; /* first error; empty when none */
} claimer_t;

/* Claims up to 25 messages, records them in `processed` and acknowledges
 * them in one transaction. Returns how many, or -1 with c->err set. */
static int
claim_once(PGconn *conn, claimer_t *c)
{
    PGresult *r = PQexec(conn, "SELECT message_id, claim_token FROM "
                               "sluice.inbox_claim('orders', 25, '30 seconds', true)");
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(c->err, sizeof c->err, "claim: %s", PQerrorMessage(conn));
        PQclear(r);
        return -1;
    }
    int n = PQntuples(r);
    if (n == 0) {
        PQclear(r);
        return 0;
    }
    /* Arrays of ids and tokens for one INSERT and one ack_batch. */
    size_t cap = (size_t)n * 160 + 16;
    char *ids = malloc(cap), *toks = malloc(cap);
    if (ids == NULL || toks == NULL) {
        snprintf(c->err, sizeof c->err, "out of memory");
        free(ids);
        free(toks);
        PQclear(r);
        return -1;
    }
    size_t li = 0, lt = 0;
    li += (size_t)snprintf(ids + li, cap - li, "{");
    lt += (size_t)snprintf(toks + lt, cap - lt, "{");
    for (int i = 0; i < n; i++) {
        li += (size_t)snprintf(ids + li, cap - li, "%s\"%s\"", i ? "," : "", PQgetvalue(r, i, 0));
        lt += (size_t)snprintf(toks + lt, cap - lt, "%s%s", i ? "," : "", PQgetvalue(r, i, 1));
    }
    snprintf(ids + li, cap - li, "}");
    snprintf(toks + lt, cap - lt, "}");
    PQclear(r);
    const char *params[3] = {ids, toks, NULL};
    char who[16];
    snprintf(who, sizeof who, "%d", c->id);
    params[2] = who;
    r = PQexecParams(
        conn,
        "WITH p AS (INSERT INTO processed (message_id, k, n, claimer) "
        "  SELECT i.message_id, i.key, (i.payload->>'n')::int, $3::int "
        "    FROM sluice.inbox_orders i WHERE i.message_id = ANY($1::text[]) "
        "  RETURNING 1) "
        "SELECT (SELECT count(*) FROM p), sluice.inbox_ack_batch('orders', $1::text[], "
        "$2::uuid[])",
        3, NULL, params, NULL, NULL, 0);
    free(ids);
    free(toks);
    if (PQresultStatus(r) != PGRES_TUPLES_OK) {
        snprintf(c->err, sizeof c->err, "process+ack: %s", PQerrorMessage(conn));
        PQclear(r);
        return -1;
    }
    PQclear(r);
    return n;
}

static void *
claimer_main(void *arg)
{
    claimer_t *c = arg;
    PGconn *conn = PQconnectdb(c->url);
    if (PQstatus(conn) != CONNECTION_OK) {
        snprintf(c->err, sizeof c->err, "connect: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    while (!atomic_load(c->stop)) {
        int n = claim_once(conn, c);
        if (n < 0)
            break;
        c->processed += n;
        if (n == 0) {
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL); /* idle claimer: poll again shortly */
        }
    }
    PQfinish(conn);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Relays                                                                    */
/* ------------------------------------------------------------------------ */

static pid_t
start_relay(const char *cfg, const char *name, int run)
{
    char log[TH_PATH_MAX];
    snprintf(log, sizeof log, "%s/%s-%d.log", th_tmpdir(), name, run);
    const char *const argv[] = {SLUICE_BIN, "relay", "--config", cfg, NULL};
    return th_spawn(argv, log);
}

static int
stop_relay(pid_t pid, int sig)
{
    th_kill(pid, sig);
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, 30000, &status) == 0, "the relay exits after signal %d", sig);
    return status;
}

/* Sums "key=N" over the lines of every log named <name>-*.log that contain event. */
static long long
sum_logs(const char *name, int runs, const char *event, const char *key)
{
    long long sum = 0;
    char needle[64];
    snprintf(needle, sizeof needle, " %s=", key);
    for (int run = 0; run < runs; run++) {
        char path[TH_PATH_MAX];
        snprintf(path, sizeof path, "%s/%s-%d.log", th_tmpdir(), name, run);
        char *text = th_read_file(path, NULL);
        for (char *line = text; line != NULL && *line != '\0';) {
            char *nl = strchr(line, '\n');
            if (nl != NULL)
                *nl = '\0';
            char *k;
            if (strstr(line, event) != NULL && (k = strstr(line, needle)) != NULL)
                sum += strtoll(k + strlen(needle), NULL, 10);
            line = nl != NULL ? nl + 1 : NULL;
        }
        free(text);
    }
    return sum;
}

typedef struct dup_arg {
    int runs_b1, runs_b2;
} dup_arg_t;

/* True once a reverse relay logged an inbox duplicate. */
static bool
dup_logged(void *p)
{
    dup_arg_t *a = p;
    return sum_logs("relay-b1", a->runs_b1, "event=inbox.duplicates", "duplicates") +
               sum_logs("relay-b2", a->runs_b2, "event=inbox.duplicates", "duplicates") >
           0;
}

int
main(void)
{
    unsigned seed = (unsigned)time(NULL);
    const char *fixed = getenv("SLUICE_TEST_SEED");
    if (fixed != NULL)
        seed = (unsigned)strtoul(fixed, NULL, 10);
    th_log("seed %u (rerun with SLUICE_TEST_SEED=%u)", seed, seed);
    srand(seed);

    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    th_env_topic_create(&env, "orders", 4);
    char *down = th_createdb(&env, "downstream");
    const char *const init_src[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    const char *const init_dst[] = {SLUICE_BIN, "init", "--db", down, NULL};
    TH_ASSERT(th_run(init_src, NULL, 60000) == 0, "sluice init of the source succeeds");
    TH_ASSERT(th_run(init_dst, NULL, 60000) == 0, "sluice init of the destination succeeds");
    PGconn *src = th_pg_connect(env.pg_url);
    PGconn *dst = th_pg_connect(down);
    th_sql(dst, "SELECT sluice.create_inbox('orders')");
    th_sql(dst, "CREATE TABLE processed (seq bigserial PRIMARY KEY, message_id text NOT NULL, "
                "k text, n int, claimer int)");

    char cfg_a[TH_PATH_MAX], cfg_b[TH_PATH_MAX], text[4 * TH_PATH_MAX];
    snprintf(cfg_a, sizeof cfg_a, "%s/relay-a.json", th_tmpdir());
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"checkpoint_interval_ms\": 20, \"pipelines\": [{\"name\": "
             "\"to-kafka\", \"batch_size\": 100, \"max_inflight\": 400, \"sink\": {\"type\": "
             "\"kafka\", \"brokers\": \"%s\"}}]}",
             env.pg_url, env.brokers);
    th_write_file(cfg_a, text);
    snprintf(cfg_b, sizeof cfg_b, "%s/relay-b.json", th_tmpdir());
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"checkpoint_interval_ms\": 20, \"pipelines\": [{\"name\": "
             "\"from-kafka\", \"max_inflight\": 300, \"source\": {\"type\": \"kafka\", "
             "\"brokers\": \"%s\", \"topics\": [\"orders\"], \"group\": \"orders-inbox\", "
             "\"properties\": {\"session.timeout.ms\": 6000, \"heartbeat.interval.ms\": 500}}, "
             "\"sink\": {\"type\": \"inbox\", \"inbox\": \"orders\"}}]}",
             down, env.brokers);
    th_write_file(cfg_b, text);

    /* Processes: [0] relay A, [1] and [2] two reverse relays of one group. */
    const char *names[3] = {"relay-a", "relay-b1", "relay-b2"};
    const char *cfgs[3] = {cfg_a, cfg_b, cfg_b};
    int runs[3] = {0, 0, 0};
    pid_t pids[3];
    for (int i = 0; i < 3; i++)
        pids[i] = start_relay(cfgs[i], names[i], runs[i]);

    atomic_bool stop = false;
    claimer_t cl[2] = {{.url = down, .id = 1, .stop = &stop},
                       {.url = down, .id = 2, .stop = &stop}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        TH_ASSERT(pthread_create(&th[i], NULL, claimer_main, &cl[i]) == 0, "claimer %d starts", i);

    /* 1. Publish, killing a random process at random points. */
    int kill_points[NKILLS];
    for (int i = 0; i < NKILLS; i++)
        kill_points[i] = (NEVENTS / (NKILLS + 1)) * (i + 1) + (rand() % 100) * 2;
    int published = 0, kills = 0;
    while (published < NEVENTS) {
        th_sql(src,
               "SELECT sluice.publish('orders', jsonb_build_object('n', g), 'k' || (g %% %d), "
               "jsonb_build_object('h', g::text)) FROM generate_series(%d, %d) g",
               NKEYS, published + 1, published + 20);
        published += 20;
        if (kills < NKILLS && published >= kill_points[kills]) {
            int victim = rand() % 3;
            /* Let the victim get some work done first. */
            count_arg_t some = {dst, "SELECT count(*) FROM sluice.inbox_orders", published / 3};
            TH_ASSERT(th_wait_until(count_reached, &some, 60000, 20),
                      "messages keep reaching the inbox before kill %d", kills);
            th_log("kill %d: SIGKILL %s at %d published", kills, names[victim], published);
            stop_relay(pids[victim], SIGKILL);
            runs[victim]++;
            pids[victim] = start_relay(cfgs[victim], names[victim], runs[victim]);
            kills++;
        }
    }
    count_arg_t all = {dst, "SELECT count(*) FROM processed", NEVENTS};
    bool done = th_wait_until(count_reached, &all, 120000, 50);
    atomic_store(&stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    TH_ASSERT(cl[0].err[0] == '\0' && cl[1].err[0] == '\0', "the claimers saw no error (%s%s)",
              cl[0].err, cl[1].err);
    TH_ASSERT(done, "all %d events are processed despite %d SIGKILLs (processed %lld)", NEVENTS,
              NKILLS, th_sql_int(dst, "SELECT count(*) FROM processed"));
    TH_ASSERT(cl[0].processed > 0 && cl[1].processed > 0,
              "both claimers processed messages (%lld and %lld)", cl[0].processed, cl[1].processed);

    TH_ASSERT(th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_orders") == NEVENTS,
              "the inbox holds exactly %d messages", NEVENTS);
    TH_ASSERT(th_sql_int(dst, "SELECT count(DISTINCT message_id) FROM processed") == NEVENTS &&
                  th_sql_int(dst, "SELECT count(*) FROM processed") == NEVENTS,
              "every message was processed exactly once");
    TH_ASSERT(th_sql_int(dst, "SELECT count(DISTINCT n) FROM processed") == NEVENTS,
              "every published event was processed");
    TH_ASSERT(th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_orders WHERE status <> 'done'") ==
                  0,
              "every inbox message is done");
    long long out_of_order =
        th_sql_int(dst, "SELECT count(*) FROM (SELECT n, lag(n) OVER (PARTITION BY k ORDER BY "
                        "seq) AS prev FROM processed) x WHERE prev > n");
    TH_ASSERT(out_of_order == 0,
              "per-key order holds (%lld messages processed before an earlier "
              "one of their key)",
              out_of_order);
    char *inst = th_sql_text(src, "SELECT instance_id::text FROM sluice.meta");
    TH_ASSERT(th_sql_int(dst,
                         "SELECT count(*) FROM sluice.inbox_orders WHERE split_part(message_id, "
                         "':', 1) = '%s' AND headers->>'h' = payload->>'n' AND key = 'k' || "
                         "((payload->>'n')::int %% %d)",
                         inst, NKEYS) == NEVENTS,
              "ids are the outbox's stable ids; key, payload and headers arrive as published");
    free(inst);

    /* 2. Invalid records are stored as dead, and do not block their partition. */
    TH_ASSERT(th_kcat_produce(env.brokers, "orders", "bad-1", "this is not json", NULL, 30000) == 0,
              "kcat produces a record that is not JSON");
    TH_ASSERT(th_kcat_produce(env.brokers, "orders", "bad-1", "[1, 2, 3]", NULL, 30000) == 0,
              "kcat produces a JSON record that is not an envelope");
    const char *const h_ok[] = {"sluice-id=external-1", NULL};
    TH_ASSERT(th_kcat_produce(env.brokers, "orders", "bad-1",
                              "{\"payload\": {\"n\": 123456789012345678901}, \"headers\": {}}",
                              h_ok, 30000) == 0,
              "kcat produces a valid envelope behind them (same key, same partition)");
    count_arg_t three = {dst, "SELECT count(*) FROM sluice.inbox_orders WHERE key = 'bad-1'", 3};
    TH_ASSERT(th_wait_until(count_reached, &three, 60000, 20), "all three records reach the inbox");
    TH_ASSERT(th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_orders WHERE key = 'bad-1' AND "
                              "status = 'dead' AND message_id ~ '^orders/[0-3]/[0-9]+$' AND "
                              "last_error LIKE '%%not valid JSON%%' AND payload->>'raw' = 'this is "
                              "not json'") == 1,
              "the non-JSON record is dead, keeps its raw value and says why");
    TH_ASSERT(th_sql_int(dst,
                         "SELECT count(*) FROM sluice.inbox_orders WHERE key = 'bad-1' AND "
                         "status = 'dead' AND last_error LIKE '%%not a sluice envelope%%'") == 1,
              "the JSON array is dead as not an envelope");
    char *big = th_sql_text(dst, "SELECT payload->>'n' FROM sluice.inbox_orders WHERE "
                                 "message_id = 'external-1' AND status = 'pending'");
    TH_ASSERT(big != NULL && strcmp(big, "123456789012345678901") == 0,
              "the valid record behind them is pending under its sluice-id, its payload exact "
              "(%s)",
              big ? big : "NULL");
    free(big);

    /* 3. A repeated sluice-id is a duplicate. */
    long long before = th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_orders");
    TH_ASSERT(th_kcat_produce(env.brokers, "orders", "bad-1",
                              "{\"payload\": {\"n\": -1}, \"headers\": {}}", h_ok, 30000) == 0,
              "kcat produces a record with an id the inbox already holds");
    /* Wait until some reverse relay logged the duplicate. */
    dup_arg_t da = {runs[1] + 1, runs[2] + 1};
    bool dup = th_wait_until(dup_logged, &da, 30000, 100);
    TH_ASSERT(dup, "the repeated id is logged as a duplicate (event=inbox.duplicates)");
    TH_ASSERT(th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_orders") == before,
              "the duplicate did not become a second message");

    for (int i = 0; i < 3; i++) {
        int status = stop_relay(pids[i], SIGTERM);
        TH_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s stops with exit 0", names[i]);
    }

    /* 4. Config errors. */
    char bad[TH_PATH_MAX];
    snprintf(bad, sizeof bad, "%s/bad.json", th_tmpdir());
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"pipelines\": [{\"name\": \"x\", \"source\": {\"type\": "
             "\"kafka\", \"brokers\": \"%s\", \"topics\": [\"orders\"], \"group\": \"g\"}, "
             "\"sink\": {\"type\": \"stdout\"}}]}",
             down, env.brokers);
    th_write_file(bad, text);
    const char *const check[] = {SLUICE_BIN, "check-config", "--config", bad, NULL};
    char *out = NULL;
    int rc = th_run(check, &out, 30000);
    free(out);
    TH_ASSERT(rc == 2, "check-config refuses a Kafka source with a stdout sink (exit %d)", rc);
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"pipelines\": [{\"name\": \"x\", \"topics\": [\"a\"], "
             "\"source\": {\"type\": \"kafka\", \"brokers\": \"%s\", \"topics\": [\"orders\"], "
             "\"group\": \"g\"}, \"sink\": {\"type\": \"inbox\", \"inbox\": \"orders\"}}]}",
             down, env.brokers);
    th_write_file(bad, text);
    rc = th_run(check, &out, 30000);
    free(out);
    TH_ASSERT(rc == 2, "check-config refuses outbox topics on a Kafka-source pipeline (exit %d)",
              rc);

    free(down);
    PQfinish(src);
    PQfinish(dst);
    return 0;
}
