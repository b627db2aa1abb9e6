/*
 * tests/integration/0002_commit_order.c - commit order: nothing skipped,
 * nothing twice, per-key order, late commits, rollbacks (DESIGN.md
 * invariants 1, 2 and 4).
 *
 * While the relay runs, four publisher processes (this program re-executed
 * with --publish, each with its own PostgreSQL connection) publish 3000
 * events concurrently, in transactions of 1 to 8 events, over 20 keys. Each
 * key belongs to one publisher, which numbers the key's events 1, 2, 3...
 * in the payload and publishes them in that order, so the expected per-key
 * order is well defined. Publishers also roll back some transactions and
 * some savepoints (payload marked "rb").
 *
 * Meanwhile the test holds two transactions of its own open:
 *   - a long transaction that published one event EARLY (so its outbox id is
 *     lower than almost every other) and commits LAST, after the relay
 *     delivered everything else;
 *   - a transaction that published three events and then rolls back.
 *
 * Asserted, reading the Kafka topic with kcat after a graceful stop:
 *   - every committed event arrives exactly once (sluice-id header, which
 *     also equals "<instance uuid>:<outbox_id>" of the envelope);
 *   - the long transaction's event is absent while it is open, even though
 *     every event with a higher outbox id was delivered; it arrives after
 *     the commit;
 *   - no event of a rolled-back transaction or savepoint ever arrives;
 *   - per key: one partition, and the sequence numbers are exactly 1..n in
 *     offset order.
 */
#include "harness.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUTBOX_TOPIC "orders"
#define KAFKA_TOPIC "t0002.orders"
#define PARTITIONS 4
#define NPUB 4
#define NKEYS 20
#define NEVENTS 3000 /* committed by the publishers, in total */
#define WAIT_MS 60000

/* ------------------------------------------------------------------------ */
/* Small helpers                                                             */
/* ------------------------------------------------------------------------ */

/* Finds "name" as an object member in JSON text and parses its integer
 * value. Good enough for the envelope and payloads this test writes. */
static bool
json_int(const char *json, const char *name, long long *out)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", name);
    for (const char *p = json ? strstr(json, pat) : NULL; p != NULL; p = strstr(p + 1, pat)) {
        const char *q = p + strlen(pat);
        while (*q == ' ')
            q++;
        if (*q != ':')
            continue;
        q++;
        while (*q == ' ')
            q++;
        char *end = NULL;
        errno = 0;
        long long v = strtoll(q, &end, 10);
        if (end == q || errno != 0)
            continue;
        *out = v;
        return true;
    }
    return false;
}

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ------------------------------------------------------------------------ */
/* Publisher process (this program with --publish)                           */
/* ------------------------------------------------------------------------ */

/* Plain libpq, no harness: a failure prints why and exits 2. */
static PGconn *pub_conn;

static void
pub_exec(const char *sql)
{
    PGresult *r = PQexec(pub_conn, sql);
    ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        fprintf(stderr, "publisher: \"%s\" failed: %s", sql, PQerrorMessage(pub_conn));
        PQclear(r);
        exit(2);
    }
    PQclear(r);
}

static void
pub_publish(int key, long long seq, int pub, bool rolled_back)
{
    char sql[512];
    snprintf(sql, sizeof sql,
             "SELECT sluice.publish('" OUTBOX_TOPIC "', "
             "'{\"k\": \"key-%02d\", \"seq\": %lld, \"p\": %d%s}', 'key-%02d', "
             "'{\"pub\": \"%d\"}')",
             key, seq, pub, rolled_back ? ", \"rb\": true" : "", key, pub);
    pub_exec(sql);
}

/*
 * Publisher `pub` of `npub` owns the keys k with k % npub == pub and commits
 * exactly `n` events over them, in transactions of 1..8 events. About one
 * transaction in 8 is rolled back and one in 10 has a rolled-back savepoint;
 * their events carry "rb" and no sequence number of their own.
 */
static int
publisher_main(const char *url, int pub, int npub, int nkeys, int n, unsigned seed)
{
    pub_conn = PQconnectdb(url);
    if (PQstatus(pub_conn) != CONNECTION_OK) {
        fprintf(stderr, "publisher %d: connect: %s", pub, PQerrorMessage(pub_conn));
        return 2;
    }
    srand(seed * 7919u + (unsigned)pub);
    int owned[64], nowned = 0;
    for (int k = 0; k < nkeys && nowned < 64; k++)
        if (k % npub == pub)
            owned[nowned++] = k;
    long long seq[64] = {0};
    int committed = 0, rolled_back_tx = 0, rolled_back_sp = 0;
    while (committed < n) {
        int size = 1 + rand() % 8;
        if (size > n - committed)
            size = n - committed;
        if (rand() % 8 == 0) {
            pub_exec("BEGIN");
            for (int i = 0; i < 1 + rand() % 3; i++)
                pub_publish(owned[rand() % nowned], 0, pub, true);
            pub_exec("ROLLBACK");
            rolled_back_tx++;
            continue;
        }
        pub_exec("BEGIN");
        for (int i = 0; i < size; i++) {
            int slot = rand() % nowned;
            pub_publish(owned[slot], ++seq[slot], pub, false);
            if (i == 0 && rand() % 10 == 0) {
                pub_exec("SAVEPOINT sp");
                pub_publish(owned[slot], 0, pub, true);
                pub_exec("ROLLBACK TO SAVEPOINT sp");
                rolled_back_sp++;
            }
        }
        pub_exec("COMMIT");
        committed += size;
    }
    printf("publisher %d: committed=%d rolled_back_transactions=%d rolled_back_savepoints=%d\n",
           pub, committed, rolled_back_tx, rolled_back_sp);
    PQfinish(pub_conn);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The test                                                                  */
/* ------------------------------------------------------------------------ */

/* Reads the whole topic; every record must carry a sluice-id. */
static void
read_topic(const char *brokers, size_t want, th_record_t **recs, size_t *n)
{
    int rc = th_kcat_consume(brokers, KAFKA_TOPIC, want, WAIT_MS, recs, n);
    TH_ASSERT(rc == 0, "topic %s holds at least %zu records within %d ms, got %zu", KAFKA_TOPIC,
              want, WAIT_MS, *n);
}

/* Index of the record whose key is `key`, or -1 (first match). */
static long
find_key(const th_record_t *recs, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (recs[i].key != NULL && strcmp(recs[i].key, key) == 0)
            return (long)i;
    return -1;
}

typedef struct ckpt_arg {
    PGconn *conn;
    long long want;
} ckpt_arg_t;

static bool
checkpoint_reached(void *p)
{
    ckpt_arg_t *a = p;
    return th_sql_int(a->conn, "SELECT coalesce(max(delivered), 0) FROM sluice.relay_checkpoints "
                               "WHERE pipeline = 'p0002'") >= a->want;
}

int
main(int argc, char **argv)
{
    if (argc == 8 && strcmp(argv[1], "--publish") == 0)
        return publisher_main(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), atoi(argv[6]),
                              (unsigned)strtoul(argv[7], NULL, 10));

    unsigned seed = (unsigned)th_now_ms();
    if (getenv("TH_SEED") != NULL)
        seed = (unsigned)strtoul(getenv("TH_SEED"), NULL, 10);
    TH_LOG("seed %u (rerun with TH_SEED=%u)", seed, seed);

    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *tmp = th_tmpdir();

    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    int rc = th_run(init, NULL, WAIT_MS);
    TH_ASSERT(rc == 0, "sluice init exits 0, got %d", rc);
    th_env_topic_create(&env, KAFKA_TOPIC, PARTITIONS);

    char cfg[TH_PATH_MAX + 32], log[TH_PATH_MAX + 32];
    snprintf(cfg, sizeof cfg, "%s/relay.json", tmp);
    snprintf(log, sizeof log, "%s/relay.log", tmp);
    th_write_file(cfg, "{\"database\": \"${ENV:SLUICE_PG_URL}\", \"checkpoint_interval_ms\": 50,\n"
                       " \"pipelines\": [{\"name\": \"p0002\", \"topics\": [\"" OUTBOX_TOPIC "\"],"
                       " \"max_inflight\": 1000,\n"
                       "   \"sink\": {\"type\": \"kafka\", \"brokers\": \"${ENV:KAFKA_BROKERS}\","
                       " \"topic\": \"t0002.{topic}\"}}]}\n");
    const char *const relay[] = {SLUICE_BIN, "relay", "--config", cfg, NULL};
    pid_t relay_pid = th_spawn(relay, log);

    PGconn *main_conn = th_pg_connect(env.pg_url);
    PGconn *long_conn = th_pg_connect(env.pg_url);
    PGconn *rb_conn = th_pg_connect(env.pg_url);
    char *instance = th_sql_text(main_conn, "SELECT instance_id::text FROM sluice.meta");

    /* A first event, committed, proves the relay runs before the rest starts. */
    long long warm_id = th_sql_int(main_conn, "SELECT sluice.publish('" OUTBOX_TOPIC "', "
                                              "'{\"warm\": true}', 'warm')");
    th_record_t *recs = NULL;
    size_t n = 0;
    read_topic(env.brokers, 1, &recs, &n);
    th_records_free(recs, n);
    TH_LOG("relay delivers (warm-up event id %lld)", warm_id);

    /* The long transaction publishes early, then stays open. */
    th_sql(long_conn, "BEGIN");
    long long long_id = th_sql_int(long_conn, "SELECT sluice.publish('" OUTBOX_TOPIC "', "
                                              "'{\"long\": true}', 'long-key')");
    TH_ASSERT(long_id > warm_id,
              "the long transaction's event gets the next id after the "
              "warm-up's %lld, got %lld",
              warm_id, long_id);
    /* A transaction that will roll back, also open the whole time. */
    th_sql(rb_conn, "BEGIN");
    for (int i = 0; i < 3; i++)
        th_sql(rb_conn,
               "SELECT sluice.publish('" OUTBOX_TOPIC "', '{\"rb\": true, \"i\": %d}', "
               "'rb-key')",
               i);
    TH_LOG("long transaction open with outbox id %lld; starting %d publishers", long_id, NPUB);

    pid_t pubs[NPUB];
    char pub_logs[NPUB][TH_PATH_MAX + 32];
    int64_t t_pub = th_now_ms();
    for (int p = 0; p < NPUB; p++) {
        char idx[16], npub[16], nkeys[16], nev[16], sd[16];
        snprintf(idx, sizeof idx, "%d", p);
        snprintf(npub, sizeof npub, "%d", NPUB);
        snprintf(nkeys, sizeof nkeys, "%d", NKEYS);
        snprintf(nev, sizeof nev, "%d", NEVENTS / NPUB);
        snprintf(sd, sizeof sd, "%u", seed);
        snprintf(pub_logs[p], sizeof pub_logs[p], "%s/publisher-%d.log", tmp, p);
        const char *const av[] = {th_self_exe(), "--publish", env.pg_url, idx, npub,
                                  nkeys,         nev,         sd,         NULL};
        pubs[p] = th_spawn(av, pub_logs[p]);
    }
    for (int p = 0; p < NPUB; p++) {
        int st = 0;
        TH_ASSERT(th_wait_exit(pubs[p], WAIT_MS, &st) == 0, "publisher %d finishes within %d ms", p,
                  WAIT_MS);
        TH_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                  "publisher %d exits 0, got wait status %d (see %s)", p, st, pub_logs[p]);
    }
    TH_LOG("publishers committed %d events in %lld ms", NEVENTS, (long long)(th_now_ms() - t_pub));
    long long in_outbox = th_sql_int(main_conn, "SELECT count(*) FROM sluice.outbox "
                                                "WHERE key LIKE 'key-%%'");
    TH_ASSERT(in_outbox == NEVENTS,
              "the outbox holds exactly the %d committed publisher "
              "events, got %lld",
              NEVENTS, in_outbox);

    /* Everything but the open transactions' events gets delivered, while
     * they are still open: the long transaction blocks nobody. */
    read_topic(env.brokers, 1 + NEVENTS, &recs, &n);
    ckpt_arg_t ck = {.conn = main_conn, .want = 1 + NEVENTS};
    TH_ASSERT(th_wait_until(checkpoint_reached, &ck, WAIT_MS, 20),
              "the checkpoint's delivered count reaches %d while the long transaction is open",
              1 + NEVENTS);
    size_t higher = 0;
    for (size_t i = 0; i < n; i++) {
        long long oid = 0;
        TH_ASSERT(json_int(recs[i].value, "outbox_id", &oid),
                  "every envelope has an outbox_id, record %zu: %.200s", i, recs[i].value);
        if (oid > long_id)
            higher++;
    }
    long before_long = find_key(recs, n, "long-key");
    TH_ASSERT(before_long < 0,
              "the long transaction's event (id %lld) is not delivered while "
              "it is open, but it is at partition %d offset %lld",
              long_id, before_long >= 0 ? recs[before_long].partition : -1,
              before_long >= 0 ? (long long)recs[before_long].offset : -1LL);
    TH_ASSERT(higher >= NEVENTS,
              "all %d publisher events, whose ids are higher than the long "
              "transaction's %lld, were delivered before it commits; %zu were",
              NEVENTS, long_id, higher);
    size_t n_before = n;
    th_records_free(recs, n);
    TH_LOG("%zu records delivered with the long transaction (id %lld) still open", n_before,
           long_id);

    th_sql(rb_conn, "ROLLBACK");
    th_sql(long_conn, "COMMIT");
    int64_t t_commit = th_now_ms();
    long long after_id = th_sql_int(main_conn, "SELECT sluice.publish('" OUTBOX_TOPIC "', "
                                               "'{\"after\": true}', 'after')");
    size_t total = 3 + NEVENTS; /* warm-up, publishers, long, after */
    read_topic(env.brokers, total, &recs, &n);
    long at = find_key(recs, n, "long-key");
    TH_ASSERT(at >= 0, "the long transaction's event arrives after its commit");
    TH_LOG("the long transaction's event arrived %lld ms after its commit (partition %d offset "
           "%lld)",
           (long long)(th_now_ms() - t_commit), recs[at].partition, (long long)recs[at].offset);
    th_records_free(recs, n);

    /* Graceful stop: every message the relay sent is acknowledged, so the
     * topic is final when read next. */
    TH_ASSERT(th_kill(relay_pid, SIGTERM) == 0, "the relay is still running before SIGTERM");
    int st = 0;
    TH_ASSERT(th_wait_exit(relay_pid, WAIT_MS, &st) == 0, "the relay exits after SIGTERM");
    TH_ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "the relay exits 0 after SIGTERM, got wait status %d", st);
    long long delivered = th_sql_int(main_conn, "SELECT delivered FROM sluice.relay_checkpoints "
                                                "WHERE pipeline = 'p0002'");
    TH_ASSERT(delivered == (long long)total,
              "after a clean run the checkpoint counts %zu "
              "delivered messages, got %lld",
              total, delivered);

    read_topic(env.brokers, total, &recs, &n);
    TH_ASSERT(n == total,
              "the topic holds exactly %zu records (warm-up, %d publisher events, "
              "the long transaction's, the one after): got %zu",
              total, NEVENTS, n);

    /* Identity: each sluice-id once, equal to <instance>:<outbox_id>. */
    char **ids = calloc(n, sizeof *ids);
    TH_ASSERT(ids != NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        char buf[160], want[160];
        long long oid = 0;
        TH_ASSERT(th_record_header(&recs[i], "sluice-id", buf, sizeof buf) != NULL,
                  "record at partition %d offset %lld has a sluice-id header, headers: %s",
                  recs[i].partition, (long long)recs[i].offset, recs[i].headers);
        TH_ASSERT(json_int(recs[i].value, "outbox_id", &oid), "envelope has outbox_id: %.200s",
                  recs[i].value);
        snprintf(want, sizeof want, "%s:%lld", instance, oid);
        TH_ASSERT(strcmp(buf, want) == 0, "sluice-id is \"<instance>:<outbox_id>\" = %s, got %s",
                  want, buf);
        TH_ASSERT(strstr(recs[i].value, "\"rb\"") == NULL && recs[i].key != NULL &&
                      strcmp(recs[i].key, "rb-key") != 0,
                  "no event of a rolled-back transaction or savepoint arrives, got key %s "
                  "value %.200s",
                  recs[i].key ? recs[i].key : "(null)", recs[i].value);
        ids[i] = strdup(buf);
        TH_ASSERT(ids[i] != NULL, "out of memory");
    }
    qsort(ids, n, sizeof *ids, cmp_str);
    size_t dups = 0;
    for (size_t i = 1; i < n; i++)
        if (strcmp(ids[i - 1], ids[i]) == 0)
            dups++;
    TH_ASSERT(dups == 0,
              "a clean run delivers no duplicate: %zu sluice-ids appear twice "
              "(e.g. %s)",
              dups, n > 1 ? ids[0] : "");
    for (size_t i = 0; i < n; i++)
        free(ids[i]);
    free(ids);

    long after_at = find_key(recs, n, "after");
    long long seen_after = 0;
    TH_ASSERT(after_at >= 0 && json_int(recs[after_at].value, "outbox_id", &seen_after) &&
                  seen_after == after_id,
              "the event published after the commit arrives with outbox id %lld", after_id);

    /* Per-key order: one partition per key, sequence 1..n in offset order
     * (records come sorted by partition, then offset). */
    long long total_seq = 0;
    for (int k = 0; k < NKEYS; k++) {
        char key[16];
        snprintf(key, sizeof key, "key-%02d", k);
        int part = -1;
        long long last = 0, last_off = -1;
        for (size_t i = 0; i < n; i++) {
            if (recs[i].key == NULL || strcmp(recs[i].key, key) != 0)
                continue;
            long long seq = 0;
            TH_ASSERT(json_int(recs[i].value, "seq", &seq), "%s's payload has a seq: %.200s", key,
                      recs[i].value);
            if (part < 0)
                part = recs[i].partition;
            TH_ASSERT(recs[i].partition == part,
                      "every record of %s is in partition %d, one "
                      "is in %d",
                      key, part, recs[i].partition);
            TH_ASSERT(seq == last + 1,
                      "%s: after seq %lld (offset %lld) comes seq %lld, got "
                      "seq %lld at partition %d offset %lld",
                      key, last, last_off, last + 1, seq, recs[i].partition,
                      (long long)recs[i].offset);
            last = seq;
            last_off = recs[i].offset;
        }
        TH_ASSERT(last > 0, "%s has events in the topic", key);
        total_seq += last;
    }
    TH_ASSERT(total_seq == NEVENTS,
              "the per-key sequences add up to the %d committed events, "
              "got %lld",
              NEVENTS, total_seq);
    th_records_free(recs, n);

    free(instance);
    PQfinish(rb_conn);
    PQfinish(long_conn);
    PQfinish(main_conn);
    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
