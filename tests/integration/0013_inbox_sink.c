/*
 * tests/integration/0013_inbox_sink.c - outbox -> relay -> inbox table of a
 * second database, each message exactly once.
 *
 *   1. A publisher commits 2000 events in small transactions while the relay
 *      (inbox sink, small window, short checkpoint interval) is SIGKILLed and
 *      restarted three times. Afterwards the inbox holds every event exactly
 *      once, under its stable sluice id, with topic, key, payload and headers
 *      as published: what was sent again after a kill was a duplicate the
 *      inbox ignored.
 *   2. Redelivery is harmless: with the pipeline's checkpoint deleted, a
 *      restarted relay sends everything again; the inbox does not change and
 *      the relay logs all 2000 as duplicates.
 *   3. An inbox that does not exist stops the pipeline with an error naming it
 *      and a hint to create it; the relay exits 1.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define NEVENTS 2000
#define KILLS 3

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

/* Sums "key=N" over the lines of a log that contain event. */
static long long
sum_log(const char *path, const char *event, const char *key)
{
    char *text = th_read_file(path, NULL);
    long long sum = 0;
    char needle[64];
    snprintf(needle, sizeof needle, " %s=", key);
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
    return sum;
}

static pid_t
start_relay(const char *cfg, const char *log)
{
    const char *const argv[] = {SLUICE_BIN, "relay", "--config", cfg, NULL};
    return th_spawn(argv, log);
}

static int
stop_relay(pid_t pid, int sig)
{
    th_kill(pid, sig);
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, 20000, &status) == 0, "the relay exits after signal %d", sig);
    return status;
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    char *down = th_createdb(&env, "downstream");
    const char *const init_src[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    const char *const init_dst[] = {SLUICE_BIN, "init", "--db", down, NULL};
    TH_ASSERT(th_run(init_src, NULL, 60000) == 0, "sluice init of the source succeeds");
    TH_ASSERT(th_run(init_dst, NULL, 60000) == 0, "sluice init of the destination succeeds");
    PGconn *src = th_pg_connect(env.pg_url);
    PGconn *dst = th_pg_connect(down);
    th_sql(dst, "SELECT sluice.create_inbox('orders')");

    char cfg[TH_PATH_MAX], text[4 * TH_PATH_MAX];
    snprintf(cfg, sizeof cfg, "%s/relay.json", th_tmpdir());
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"checkpoint_interval_ms\": 20, \"pipelines\": [{\"name\": "
             "\"to-inbox\", \"batch_size\": 100, \"max_inflight\": 300, \"sink\": {\"type\": "
             "\"inbox\", \"inbox\": \"orders\", \"database\": \"%s\"}}]}",
             env.pg_url, down);
    th_write_file(cfg, text);

    /* 1. Publish while the relay is killed and restarted. */
    char log[TH_PATH_MAX];
    int run = 0;
    snprintf(log, sizeof log, "%s/relay-%d.log", th_tmpdir(), run);
    pid_t pid = start_relay(cfg, log);
    int published = 0;
    for (int kill_at = NEVENTS / (KILLS + 1); published < NEVENTS;) {
        th_sql(src,
               "SELECT sluice.publish('orders', jsonb_build_object('n', g), 'k' || (g %% 7), "
               "jsonb_build_object('h', g::text)) FROM generate_series(%d, %d) g",
               published + 1, published + 10);
        published += 10;
        if (published >= kill_at && run < KILLS) {
            count_arg_t some = {dst, "SELECT count(*) FROM sluice.inbox_orders", published / 2};
            TH_ASSERT(th_wait_until(count_reached, &some, 30000, 10),
                      "run %d delivers into the inbox before it is killed", run);
            stop_relay(pid, SIGKILL);
            run++;
            snprintf(log, sizeof log, "%s/relay-%d.log", th_tmpdir(), run);
            pid = start_relay(cfg, log);
            kill_at += NEVENTS / (KILLS + 1);
        }
    }
    count_arg_t all = {dst, "SELECT count(*) FROM sluice.inbox_orders", NEVENTS};
    TH_ASSERT(th_wait_until(count_reached, &all, 60000, 20),
              "all %d events reach the inbox despite %d SIGKILLs", NEVENTS, KILLS);
    int status = stop_relay(pid, SIGTERM);
    TH_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the last relay stops with exit 0");

    TH_ASSERT(th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_orders") == NEVENTS,
              "the inbox holds exactly %d messages (no duplicate became visible)", NEVENTS);
    TH_ASSERT(th_sql_int(dst, "SELECT count(DISTINCT payload->>'n') FROM sluice.inbox_orders") ==
                  NEVENTS,
              "every published event is in the inbox once");
    char *inst = th_sql_text(src, "SELECT instance_id::text FROM sluice.meta");
    long long lo = th_sql_int(src, "SELECT min(id) FROM sluice.outbox");
    long long hi = th_sql_int(src, "SELECT max(id) FROM sluice.outbox");
    long long ids = th_sql_int(dst,
                               "SELECT count(DISTINCT message_id) FROM sluice.inbox_orders "
                               "WHERE split_part(message_id, ':', 1) = '%s' AND "
                               "split_part(message_id, ':', 2)::bigint BETWEEN %lld AND %lld",
                               inst, lo, hi);
    TH_ASSERT(ids == NEVENTS, "every message id is the stable id <instance>:<outbox id> (%lld)",
              ids);
    free(inst);
    long long bad = th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_orders WHERE topic <> "
                                    "'orders' OR key <> 'k' || ((payload->>'n')::int %% 7) OR "
                                    "headers->>'h' <> payload->>'n'");
    TH_ASSERT(bad == 0, "topic, key, payload and headers arrive as published (%lld rows differ)",
              bad);
    /* 2. Everything again: counted as duplicates, nothing changes. */
    th_sql(src, "DELETE FROM sluice.relay_checkpoints WHERE pipeline = 'to-inbox'");
    snprintf(log, sizeof log, "%s/relay-redeliver.log", th_tmpdir());
    pid = start_relay(cfg, log);
    TH_ASSERT(th_wait_file_contains(log, "duplicates_total=2000", 60000),
              "a full redelivery is logged as %d duplicates", NEVENTS);
    status = stop_relay(pid, SIGTERM);
    TH_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the redelivering relay exits 0");
    TH_ASSERT(sum_log(log, "event=inbox.closed", "inserted_total") == 0,
              "the redelivery inserted nothing");
    TH_ASSERT(th_sql_int(dst, "SELECT count(*) FROM sluice.inbox_orders") == NEVENTS,
              "after a full redelivery the inbox still holds %d messages", NEVENTS);

    /* 3. An unknown inbox fails the pipeline clearly. */
    char cfg2[TH_PATH_MAX];
    snprintf(cfg2, sizeof cfg2, "%s/relay-missing.json", th_tmpdir());
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"pipelines\": [{\"name\": \"to-nowhere\", \"sink\": "
             "{\"type\": \"inbox\", \"inbox\": \"missing\", \"database\": \"%s\"}}]}",
             env.pg_url, down);
    th_write_file(cfg2, text);
    snprintf(log, sizeof log, "%s/relay-missing.log", th_tmpdir());
    pid = start_relay(cfg2, log);
    status = 0;
    TH_ASSERT(th_wait_exit(pid, 30000, &status) == 0 && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 1,
              "a relay whose only pipeline writes to a missing inbox exits 1 by itself");
    TH_ASSERT(th_file_contains(log, "event=pipeline.failed") && th_file_contains(log, "missing") &&
                  th_file_contains(log, "create_inbox"),
              "the failure names the inbox and hints at sluice.create_inbox");

    free(down);
    PQfinish(src);
    PQfinish(dst);
    return 0;
}
