/*
 * tests/integration/0021_tombstones.c - tombstones after stream-table deletes
 * (the kafka sink's "tombstones" option), and the reverse relay passing them.
 *
 * Stream table acct over accounts (keyed by id) is created (20 inserts) and
 * refreshed after updates and deletes, after the insert of a deleted id
 * again, and, after two publish() events of another outbox topic, after one
 * more delete, so that a partition ends with a tombstone. Two pipelines relay
 * both outbox topics: "compacted" into Kafka topic t0021.compacted with
 * tombstones on, "plain" into t0021.plain without. Asserted:
 *
 *   1. plain: exactly the outbox messages, each with a value;
 *   2. compacted: the same records, and right after each delete envelope
 *      (the next offset of its partition) one record with the delete's key,
 *      no value, and headers sluice-id (the delete's) and sluice-op
 *      "tombstone"; no other record lacks a value;
 *   3. what compaction keeps of t0021.compacted (the last record of each
 *      stream-table key, none after a tombstone) is the stream table: its
 *      row ids, each with its current row as the envelope's "after";
 *   4. both pipelines' checkpoints count every message once;
 *   5. a reverse relay reading t0021.compacted into an inbox stores every
 *      envelope once and nothing for the tombstones (no dead message), and
 *      its committed offsets reach the end of every partition, the one that
 *      ends with a tombstone included.
 */
#include "harness.h"

#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define COMPACTED "t0021.compacted"
#define PLAIN "t0021.plain"
#define PARTITIONS 4
#define WAIT_MS 60000

/* Stores the records in table `name` (partition, offset, key, value, op). */
static void
store_records(PGconn *conn, const char *name, const th_record_t *recs, size_t n)
{
    th_sql(conn,
           "CREATE TABLE %s (partition int, off bigint, key text, value text, op text, "
           "message_id text)",
           name);
    char sql[128];
    snprintf(sql, sizeof sql, "INSERT INTO %s VALUES ($1, $2, $3, $4, $5, $6)", name);
    for (size_t i = 0; i < n; i++) {
        char part[16], off[32], op[64], id[256];
        snprintf(part, sizeof part, "%d", (int)recs[i].partition);
        snprintf(off, sizeof off, "%lld", (long long)recs[i].offset);
        const char *params[6] = {part,
                                 off,
                                 recs[i].key,
                                 recs[i].value,
                                 th_record_header(&recs[i], "sluice-op", op, sizeof op),
                                 th_record_header(&recs[i], "sluice-id", id, sizeof id)};
        PGresult *r = PQexecParams(conn, sql, 6, NULL, params, NULL, NULL, 0);
        TH_ASSERT(PQresultStatus(r) == PGRES_COMMAND_OK, "record %zu is stored: %s", i,
                  PQerrorMessage(conn));
        PQclear(r);
    }
}

/* Reads the committed offsets of `group` on topic and the topic's high
 * watermarks; returns how many partitions have a committed offset below
 * their high watermark (and logs them). */
static int
partitions_behind(const char *brokers, const char *group, const char *topic)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    TH_ASSERT(conf != NULL, "a librdkafka conf is created");
    TH_ASSERT(rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof errstr) ==
                      RD_KAFKA_CONF_OK &&
                  rd_kafka_conf_set(conf, "group.id", group, errstr, sizeof errstr) ==
                      RD_KAFKA_CONF_OK,
              "the consumer is configured: %s", errstr);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    TH_ASSERT(rk != NULL, "a consumer is created: %s", errstr);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(PARTITIONS);
    for (int p = 0; p < PARTITIONS; p++)
        rd_kafka_topic_partition_list_add(l, topic, p);
    rd_kafka_resp_err_t e = rd_kafka_committed(rk, l, 20000);
    TH_ASSERT(e == RD_KAFKA_RESP_ERR_NO_ERROR, "the committed offsets of %s are read: %s", group,
              rd_kafka_err2str(e));
    int behind = 0;
    for (int i = 0; i < l->cnt; i++) {
        int64_t lo = 0, hi = 0;
        e = rd_kafka_query_watermark_offsets(rk, topic, l->elems[i].partition, &lo, &hi, 20000);
        TH_ASSERT(e == RD_KAFKA_RESP_ERR_NO_ERROR, "the watermarks of %s [%d] are read: %s", topic,
                  (int)l->elems[i].partition, rd_kafka_err2str(e));
        int64_t committed = l->elems[i].offset < 0 ? 0 : l->elems[i].offset;
        th_log("%s [%d]: committed %lld, high watermark %lld", topic, (int)l->elems[i].partition,
               (long long)committed, (long long)hi);
        if (committed < hi)
            behind++;
    }
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
    return behind;
}

static pid_t
start_relay(const char *cfg, const char *name)
{
    char log[TH_PATH_MAX];
    snprintf(log, sizeof log, "%s/%s.log", th_tmpdir(), name);
    const char *const argv[] = {SLUICE_BIN, "relay", "--config", cfg, NULL};
    return th_spawn(argv, log);
}

static void
stop_relay(pid_t pid, const char *name)
{
    th_kill(pid, SIGTERM);
    int status = -1;
    TH_ASSERT(th_wait_exit(pid, 30000, &status) == 0 && status == 0,
              "%s stops cleanly on SIGTERM (status %d)", name, status);
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    th_env_topic_create(&env, COMPACTED, PARTITIONS);
    th_env_topic_create(&env, PLAIN, PARTITIONS);
    char *down = th_createdb(&env, "downstream");
    const char *const init_src[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    const char *const init_dst[] = {SLUICE_BIN, "init", "--db", down, NULL};
    TH_ASSERT(th_run(init_src, NULL, 60000) == 0, "sluice init of the source succeeds");
    TH_ASSERT(th_run(init_dst, NULL, 60000) == 0, "sluice init of the destination succeeds");
    PGconn *src = th_pg_connect(env.pg_url);
    PGconn *dst = th_pg_connect(down);

    /* The changes: 20 inserts; 5 updates and 7 deletes (6 rows deleted, one
     * leaving the WHERE); id 1 inserted again; two events; one more delete. */
    th_sql(src, "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance int "
                "NOT NULL); INSERT INTO accounts SELECT g, 'owner ' || g, g * 10 FROM "
                "generate_series(1, 20) g");
    th_sql(src, "SELECT sluice.create_stream_table('acct', 'SELECT id, owner, balance FROM "
                "accounts WHERE balance >= 0', schedule => '1 hour')");
    th_sql(src, "UPDATE accounts SET balance = balance + 1 WHERE id BETWEEN 7 AND 11; DELETE FROM "
                "accounts WHERE id <= 6; UPDATE accounts SET balance = -1 WHERE id = 12");
    th_sql(src, "SELECT sluice.refresh_stream_table('acct')");
    th_sql(src, "INSERT INTO accounts VALUES (1, 'owner 1 again', 5)");
    th_sql(src, "SELECT sluice.refresh_stream_table('acct')");
    th_sql(src, "SELECT sluice.publish('notes', '{\"n\": 1}', 'k1', '{}'); "
                "SELECT sluice.publish('notes', '{\"n\": 2}', NULL, '{}')");
    th_sql(src, "DELETE FROM accounts WHERE id = 20");
    th_sql(src, "SELECT sluice.refresh_stream_table('acct')");
    long long msgs = th_sql_int(src, "SELECT count(*) FROM sluice.outbox");
    long long deletes = th_sql_int(src, "SELECT count(*) FROM sluice.outbox WHERE op = 'delete'");
    TH_ASSERT(msgs == 36 && deletes == 8,
              "the outbox holds 36 messages, 8 of them deletes (%lld, %lld)", msgs, deletes);

    char cfg[TH_PATH_MAX], text[4 * TH_PATH_MAX];
    snprintf(cfg, sizeof cfg, "%s/relay.json", th_tmpdir());
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"checkpoint_interval_ms\": 20, \"pipelines\": ["
             "{\"name\": \"compacted\", \"topics\": [\"acct\", \"notes\"], \"sink\": {\"type\": "
             "\"kafka\", \"brokers\": \"%s\", \"topic\": \"" COMPACTED "\", \"tombstones\": true}},"
             "{\"name\": \"plain\", \"topics\": [\"acct\", \"notes\"], \"sink\": {\"type\": "
             "\"kafka\", \"brokers\": \"%s\", \"topic\": \"" PLAIN "\"}}]}",
             env.pg_url, env.brokers, env.brokers);
    th_write_file(cfg, text);
    pid_t relay = start_relay(cfg, "relay");
    char sql[256];
    snprintf(sql, sizeof sql,
             "SELECT count(*) = 2 FROM sluice.relay_checkpoints WHERE pipeline IN ('compacted', "
             "'plain') AND delivered = %lld",
             msgs);
    TH_ASSERT(th_wait_sql(src, sql, WAIT_MS, 20),
              "4. both pipelines' checkpoints count each of the %lld messages once", msgs);
    stop_relay(relay, "the relay");

    /* 1. The plain topic. */
    th_record_t *recs = NULL;
    size_t n = 0;
    int rc = th_kcat_consume(env.brokers, PLAIN, (size_t)msgs, WAIT_MS, &recs, &n);
    TH_ASSERT(rc == 0 && n == (size_t)msgs, "1. " PLAIN " holds %lld records (%zu)", msgs, n);
    store_records(src, "plain", recs, n);
    th_records_free(recs, n);
    TH_ASSERT(th_sql_int(src, "SELECT count(*) FROM plain WHERE value IS NULL") == 0,
              "1. every record of " PLAIN " has a value");
    TH_ASSERT(th_sql_int(src, "SELECT count(*) FROM sluice.outbox o WHERE NOT EXISTS (SELECT "
                              "FROM plain p WHERE p.message_id = (SELECT instance_id::text FROM "
                              "sluice.meta) || ':' || o.id)") == 0,
              "1. every outbox message is in " PLAIN);

    /* 2. The compacted topic. */
    rc = th_kcat_consume(env.brokers, COMPACTED, (size_t)(msgs + deletes), WAIT_MS, &recs, &n);
    TH_ASSERT(rc == 0 && n == (size_t)(msgs + deletes),
              "2. " COMPACTED " holds the %lld messages and %lld tombstones (%zu records)", msgs,
              deletes, n);
    store_records(src, "compacted", recs, n);
    th_records_free(recs, n);
    TH_ASSERT(th_sql_int(src, "SELECT count(*) FROM compacted WHERE value IS NOT NULL") == msgs &&
                  th_sql_int(src, "SELECT count(DISTINCT message_id) FROM compacted WHERE value "
                                  "IS NOT NULL") == msgs,
              "2. " COMPACTED " holds each message once");
    long long paired =
        th_sql_int(src, "SELECT count(*) FROM compacted d JOIN compacted t ON t.partition = "
                        "d.partition AND t.off = d.off + 1 WHERE d.op = 'delete' AND d.value IS "
                        "NOT NULL AND t.value IS NULL AND t.op = 'tombstone' AND t.key = d.key "
                        "AND t.message_id = d.message_id");
    TH_ASSERT(paired == deletes,
              "2. each of the %lld deletes is followed, at the next offset of its partition, by "
              "a tombstone with its key and id (%lld are)",
              deletes, paired);
    TH_ASSERT(th_sql_int(src, "SELECT count(*) FROM compacted WHERE value IS NULL") == deletes,
              "2. no other record lacks a value");

    /* 3. What compaction keeps: the last record of each key. */
    long long kept = th_sql_int(
        src, "WITH last AS (SELECT DISTINCT ON (key) key, value FROM compacted WHERE key IS NOT "
             "NULL AND (value IS NULL OR value::jsonb->>'topic' = 'acct') ORDER BY key, off DESC) "
             "SELECT count(*) FROM last WHERE value IS NOT NULL");
    long long rows = th_sql_int(src, "SELECT count(*) FROM acct");
    long long match = th_sql_int(
        src, "WITH last AS (SELECT DISTINCT ON (key) key, value FROM compacted WHERE key IS NOT "
             "NULL AND (value IS NULL OR value::jsonb->>'topic' = 'acct') ORDER BY key, off DESC) "
             "SELECT count(*) FROM last l JOIN acct a ON a.__sluice_row_id::text = l.key WHERE "
             "l.value::jsonb->'payload'->'after' = jsonb_build_object('id', a.id, 'owner', "
             "a.owner, 'balance', a.balance)");
    TH_ASSERT(rows == 13 && kept == rows && match == rows,
              "3. compaction keeps the stream table's %lld rows, each as it is now (kept %lld, "
              "matching %lld)",
              rows, kept, match);

    /* 5. The reverse relay. */
    th_sql(dst, "SELECT sluice.create_inbox('acct_in')");
    char cfg_b[TH_PATH_MAX];
    snprintf(cfg_b, sizeof cfg_b, "%s/relay-b.json", th_tmpdir());
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"checkpoint_interval_ms\": 20, \"pipelines\": [{\"name\": "
             "\"from-kafka\", \"source\": {\"type\": \"kafka\", \"brokers\": \"%s\", \"topics\": "
             "[\"" COMPACTED "\"], \"group\": \"t0021-inbox\"}, \"sink\": {\"type\": \"inbox\", "
             "\"inbox\": \"acct_in\"}}]}",
             down, env.brokers);
    th_write_file(cfg_b, text);
    pid_t rev = start_relay(cfg_b, "relay-b");
    snprintf(sql, sizeof sql, "SELECT count(*) >= %lld FROM sluice.inbox_acct_in", msgs);
    TH_ASSERT(th_wait_sql(dst, sql, WAIT_MS, 50), "5. the %lld messages reach the inbox", msgs);
    stop_relay(rev, "the reverse relay");
    TH_ASSERT(th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_acct_in") == msgs &&
                  th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_acct_in WHERE last_error IS "
                                  "NOT NULL OR status = 'dead'") == 0,
              "5. the inbox holds the %lld messages, no dead one for a tombstone", msgs);
    char log[TH_PATH_MAX], needle[64];
    snprintf(log, sizeof log, "%s/relay-b.log", th_tmpdir());
    snprintf(needle, sizeof needle, " invalid=0 tombstones=%lld", deletes);
    TH_ASSERT(th_file_contains(log, needle), "5. the reverse relay counted %lld tombstones (%s)",
              deletes, log);
    TH_ASSERT(partitions_behind(env.brokers, "t0021-inbox", COMPACTED) == 0,
              "5. the reverse relay committed every partition to its end, tombstones included");

    PQfinish(src);
    PQfinish(dst);
    free(down);
    th_env_stop(&env);
    return 0;
}
