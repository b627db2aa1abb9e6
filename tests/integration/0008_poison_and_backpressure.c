/*
 * tests/integration/0008_poison_and_backpressure.c - a poison message stops
 * only its pipeline; a dead sink stops reading, not memory; the file sink.
 *
 *   (c) File sink: 100 events published in 10 transactions reach the file as
 *       100 JSON lines, one envelope each, in outbox id order, with the
 *       right ids and topic; SIGTERM exits 0.
 *   (a) Permanent error (DESIGN.md invariant 7): two Kafka pipelines on the
 *       same topic; A's producer has message.max.bytes 2000, so a ~3000-byte
 *       event e2 can never be sent by A. After e1 (acknowledged by both),
 *       then e2 and e3:
 *         - the log has event=pipeline.failed for A naming outbox message e2,
 *           with a hint about message.max.bytes;
 *         - A delivered e1 only (its Kafka topic holds exactly e1), and its
 *           checkpoint stops before e2 (delivered = 1, last_id < e2, e2 not
 *           visible in snap_lo);
 *         - B delivers e1, e2, e3, and keeps running and delivering (e4)
 *           after A failed;
 *         - SIGTERM: exit 1, as core/main.c documents (exit 1 = runtime
 *           failure, "a pipeline failed"; relay.c: "even after a clean
 *           SIGTERM: a failed pipeline needs a human"), with relay.stopped
 *           counting the failed pipeline and an error + hint on stderr.
 *       A restart with the same config fails A again at e2 without resending
 *       e1; a restart with A fixed (no message.max.bytes) delivers e2, e3, e4:
 *       nothing was lost, nothing duplicated.
 *   (b) Backpressure (invariant 5): all brokers down before the relay starts;
 *       one Kafka pipeline with max_inflight 500 and batch_size 100 (its
 *       topic has 32 partitions: the mock broker keeps ~5 MB each); 5000
 *       events of ~10 KB (50 MB in all) are published. While the broker is
 *       down nothing is acknowledged (checkpoint delivered = 0), the
 *       pipeline.stats line shows the window full at exactly 500, and the
 *       relay's VmRSS, sampled every 100 ms, stays under a bound far below
 *       the 50 MB it would need to buffer everything. Once the broker is up,
 *       all 5000 arrive in Kafka exactly once.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define RUN_MS 60000
#define WAIT_MS 30000

/* (b): events, their payload size, the window. */
#define BP_EVENTS 5000
#define BP_PAD 10000
#define BP_WINDOW 500
#define BP_PARTITIONS 32

/*
 * (b): VmRSS bounds. Buffering all 5000 events would take 50 MB (twice that
 * with librdkafka's copies); the window holds 500 (5 MB, 10 MB copied).
 * Measured: start ~11 MB, peak ~17 MB with max_inflight 500, and ~65 MB when
 * max_inflight is 5000 (everything buffered). The sanitizer runtime adds its
 * own shadow memory and quarantine (start ~19 MB, peak ~33 MB), so its bounds
 * are looser but still below what buffering everything would need.
 */
#if defined(__SANITIZE_ADDRESS__)
#define BP_RSS_MAX_KB (72 * 1024)
#define BP_RSS_GROWTH_MAX_KB (32 * 1024)
#else
#define BP_RSS_MAX_KB (48 * 1024)
#define BP_RSS_GROWTH_MAX_KB (24 * 1024)
#endif

/* Returns a copy of the first log line containing every non-NULL needle. */
static char *
log_find(const char *path, const char *a, const char *b, const char *c)
{
    char *text = th_read_file(path, NULL);
    if (text == NULL)
        return NULL;
    char *found = NULL;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line != NULL && found == NULL;
         line = strtok_r(NULL, "\n", &save)) {
        if (strstr(line, a) && (b == NULL || strstr(line, b)) && (c == NULL || strstr(line, c)))
            found = strdup(line);
    }
    free(text);
    return found;
}

typedef struct log_arg {
    const char *path;
    const char *a, *b, *c;
} log_arg_t;

static bool
log_has(void *p)
{
    log_arg_t *l = p;
    char *line = log_find(l->path, l->a, l->b, l->c);
    free(line);
    return line != NULL;
}

static void
wait_log(const char *path, const char *a, const char *b, const char *c, const char *what)
{
    log_arg_t arg = {path, a, b, c};
    TH_ASSERT(th_wait_until(log_has, &arg, WAIT_MS, 50), "%s (log line with \"%s\" %s %s)", what, a,
              b ? b : "", c ? c : "");
}

typedef struct sql_arg {
    PGconn *conn;
    const char *sql;
    long long want;
} sql_arg_t;

static bool
sql_reaches(void *p)
{
    sql_arg_t *a = p;
    return th_sql_int(a->conn, "%s", a->sql) >= a->want;
}

static pid_t
start_relay(const char *cfg_path, const char *cfg, const char *log)
{
    th_write_file(cfg_path, cfg);
    const char *const argv[] = {SLUICE_BIN, "relay", "--config", cfg_path, NULL};
    return th_spawn(argv, log);
}

/* SIGTERM, then the exit code (asserts a normal exit within the deadline). */
static int
stop_relay(pid_t pid, const char *what)
{
    TH_ASSERT(th_kill(pid, SIGTERM) == 0, "%s: the relay is running before SIGTERM", what);
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, WAIT_MS, &status) == 0, "%s: the relay exits after SIGTERM", what);
    TH_ASSERT(WIFEXITED(status), "%s: the relay exits normally (status %d)", what, status);
    return WEXITSTATUS(status);
}

/* The outbox id in a record's sluice-id header ("instance:id"); -1 if none. */
static long long
record_outbox_id(const th_record_t *r)
{
    char buf[128];
    if (th_record_header(r, "sluice-id", buf, sizeof buf) == NULL)
        return -1;
    const char *colon = strrchr(buf, ':');
    return colon ? atoll(colon + 1) : -1;
}

/* ------------------------------------------------------------------------ */
/* (c) file sink                                                             */
/* ------------------------------------------------------------------------ */

static bool
file_has_lines(void *p)
{
    const char **a = p;
    char *text = th_read_file(a[0], NULL);
    if (text == NULL)
        return false;
    long want = atol(a[1]);
    long n = 0;
    for (const char *s = text; *s; s++)
        n += *s == '\n';
    free(text);
    return n >= want;
}

static void
check_file_sink(th_env_t *env, PGconn *conn)
{
    char cfgp[TH_PATH_MAX], log[TH_PATH_MAX], out[TH_PATH_MAX], cfg[8192];
    snprintf(cfgp, sizeof cfgp, "%s/file.json", th_tmpdir());
    snprintf(log, sizeof log, "%s/relay-file.log", th_tmpdir());
    snprintf(out, sizeof out, "%s/events.jsonl", th_tmpdir());
    snprintf(cfg, sizeof cfg,
             "{\"database\": \"%s\", \"pipelines\": [{\"name\": \"file\", "
             "\"topics\": [\"t0008.file\"], \"batch_size\": 7, \"max_inflight\": 20, "
             "\"sink\": {\"type\": \"file\", \"path\": \"%s\", \"fsync\": true}}]}",
             env->pg_url, out);
    pid_t pid = start_relay(cfgp, cfg, log);
    wait_log(log, "event=pipeline.state", "pipeline=file", "to=running",
             "the file pipeline reaches running");

    long long ids[100];
    int k = 0;
    for (int t = 0; t < 10; t++) {
        th_sql(conn, "BEGIN");
        for (int i = 0; i < 10; i++, k++)
            ids[k] = th_sql_int(conn,
                                "SELECT sluice.publish('t0008.file', jsonb_build_object('n', %d), "
                                "'k%d')",
                                k, k % 3);
        th_sql(conn, "COMMIT");
    }
    const char *arg[2] = {out, "100"};
    TH_ASSERT(th_wait_until(file_has_lines, arg, WAIT_MS, 50), "the file gets 100 lines");
    TH_ASSERT(stop_relay(pid, "file sink") == 0, "the file relay exits 0 after SIGTERM");

    char *text = th_read_file(out, NULL);
    TH_ASSERT(text != NULL, "the file can be read");
    char *save = NULL;
    int n = 0;
    for (char *line = strtok_r(text, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save), n++) {
        TH_ASSERT(n < 100, "no more than 100 lines; extra line: %s", line);
        size_t len = strlen(line);
        TH_ASSERT(len > 2 && line[0] == '{' && line[len - 1] == '}',
                  "line %d is one JSON object: %s", n + 1, line);
        const char *oid = strstr(line, "\"outbox_id\":");
        TH_ASSERT(oid != NULL, "line %d has an outbox_id: %s", n + 1, line);
        long long got = atoll(oid + strlen("\"outbox_id\":"));
        TH_ASSERT(got == ids[n], "line %d is outbox id %lld (id order), got %lld: %s", n + 1,
                  ids[n], got, line);
        TH_ASSERT(strstr(line, "\"topic\":\"t0008.file\"") != NULL,
                  "line %d has the outbox topic: %s", n + 1, line);
        char want[64];
        snprintf(want, sizeof want, "\"payload\":{\"n\": %d}", n);
        TH_ASSERT(strstr(line, want) != NULL, "line %d carries payload n=%d: %s", n + 1, n, line);
        snprintf(want, sizeof want, ":%lld\"", ids[n]);
        TH_ASSERT(strstr(line, want) != NULL, "line %d's stable id ends with its outbox id: %s",
                  n + 1, line);
    }
    TH_ASSERT(n == 100, "the file has exactly 100 lines, got %d", n);
    free(text);
}

/* ------------------------------------------------------------------------ */
/* (a) poison message                                                        */
/* ------------------------------------------------------------------------ */

static void
poison_config(char *cfg, size_t n, th_env_t *env, bool poisoned)
{
    snprintf(
        cfg, n,
        "{\"database\": \"%s\", \"pipelines\": [\n"
        " {\"name\": \"A\", \"topics\": [\"t0008.poison\"],\n"
        "  \"sink\": {\"type\": \"kafka\", \"brokers\": \"%s\", \"topic\": \"a.{topic}\"%s}},\n"
        " {\"name\": \"B\", \"topics\": [\"t0008.poison\"],\n"
        "  \"sink\": {\"type\": \"kafka\", \"brokers\": \"%s\", \"topic\": \"b.{topic}\"}}\n"
        "]}\n",
        env->pg_url, env->brokers,
        poisoned ? ", \"properties\": {\"message.max.bytes\": 2000}" : "", env->brokers);
}

/* Reads topic (want records); checks it holds exactly the outbox ids in want_ids. */
static void
expect_topic(th_env_t *env, const char *topic, const long long *want_ids, size_t nwant,
             const char *what)
{
    th_record_t *recs = NULL;
    size_t n = 0;
    int rc = th_kcat_consume(env->brokers, topic, nwant, WAIT_MS, &recs, &n);
    TH_ASSERT(rc == 0, "%s: %s has at least %zu records, got %zu", what, topic, nwant, n);
    TH_ASSERT(n == nwant, "%s: %s has exactly %zu records, got %zu", what, topic, nwant, n);
    for (size_t i = 0; i < nwant; i++) {
        size_t seen = 0;
        for (size_t j = 0; j < n; j++)
            seen += record_outbox_id(&recs[j]) == want_ids[i];
        TH_ASSERT(seen == 1, "%s: %s holds outbox message %lld exactly once (seen %zu)", what,
                  topic, want_ids[i], seen);
    }
    th_records_free(recs, n);
}

static void
check_poison(th_env_t *env, PGconn *conn)
{
    char cfgp[TH_PATH_MAX], log[TH_PATH_MAX], cfg[8192];
    snprintf(cfgp, sizeof cfgp, "%s/poison.json", th_tmpdir());
    snprintf(log, sizeof log, "%s/relay-poison.log", th_tmpdir());
    poison_config(cfg, sizeof cfg, env, true);
    th_env_topic_create(env, "a.t0008.poison", 2);
    th_env_topic_create(env, "b.t0008.poison", 2);
    pid_t pid = start_relay(cfgp, cfg, log);
    wait_log(log, "event=pipeline.state", "pipeline=A", "to=running", "A reaches running");
    wait_log(log, "event=pipeline.state", "pipeline=B", "to=running", "B reaches running");

    /* e1 is acknowledged by both before e2 exists, so A's 2 s post-failure
     * drain never races e1's delivery report. */
    long long e1 = th_sql_int(conn, "SELECT sluice.publish('t0008.poison', '{\"e\": 1}', 'k')");
    sql_arg_t a1 = {conn,
                    "SELECT CASE WHEN count(*) = 2 THEN min(delivered) ELSE 0 END "
                    "FROM sluice.relay_checkpoints WHERE pipeline IN ('A', 'B')",
                    1};
    TH_ASSERT(th_wait_until(sql_reaches, &a1, WAIT_MS, 20), "A and B both deliver e1");
    long long e2 = th_sql_int(conn, "SELECT sluice.publish('t0008.poison', "
                                    "jsonb_build_object('e', 2, 'pad', repeat('p', 3000)), 'k')");
    long long e3 = th_sql_int(conn, "SELECT sluice.publish('t0008.poison', '{\"e\": 3}', 'k')");
    TH_LOG("published e1=%lld e2=%lld (~3000 bytes) e3=%lld", e1, e2, e3);

    char msg[64];
    snprintf(msg, sizeof msg, "outbox message %lld", e2);
    wait_log(log, "event=pipeline.failed", "pipeline=A", msg, "A fails naming the outbox id of e2");
    char *line = log_find(log, "event=pipeline.failed", "pipeline=A", msg);
    TH_ASSERT(line != NULL && strstr(line, "level=error") != NULL, "it is an error: %s",
              line ? line : "");
    TH_ASSERT(strstr(line, "hint=\"") != NULL && strstr(line, "hint=\"\"") == NULL &&
                  strstr(line, "message.max.bytes") != NULL,
              "the failure has a hint about message.max.bytes: %s", line);
    free(line);
    wait_log(log, "event=pipeline.closed", "pipeline=A", NULL, "A closes after failing");
    line = log_find(log, "event=pipeline.closed", "pipeline=A", NULL);
    TH_ASSERT(strstr(line, "delivered_total=1 ") != NULL && strstr(line, "checkpoint_saved=true"),
              "A closes with e1 delivered and its checkpoint saved: %s", line);
    free(line);
    TH_ASSERT(log_find(log, "event=pipeline.failed", "pipeline=B", NULL) == NULL,
              "B does not fail");

    long long b_ids[4] = {e1, e2, e3, 0};
    expect_topic(env, "b.t0008.poison", b_ids, 3, "B delivers e1, e2, e3");
    expect_topic(env, "a.t0008.poison", b_ids, 1, "A delivered e1 only, not e3");

    TH_ASSERT(th_sql_int(conn, "SELECT delivered FROM sluice.relay_checkpoints "
                               "WHERE pipeline = 'A'") == 1,
              "A's checkpoint counts 1 delivered message");
    TH_ASSERT(th_sql_int(conn, "SELECT last_id FROM sluice.relay_checkpoints "
                               "WHERE pipeline = 'A'") < e2,
              "A's checkpoint last_id is before e2");
    TH_ASSERT(th_sql_int(conn,
                         "SELECT count(*) FROM sluice.relay_checkpoints c, sluice.outbox o "
                         "WHERE c.pipeline = 'A' AND o.id IN (%lld, %lld) "
                         "AND pg_visible_in_snapshot(o.txid, c.snap_lo)",
                         e2, e3) == 0,
              "A's checkpoint snapshot does not cover e2 or e3");

    TH_LOG("B keeps running after A failed");
    int status;
    TH_ASSERT(th_wait_exit(pid, 0, &status) == -1, "the relay keeps running while B is alive");
    long long e4 = th_sql_int(conn, "SELECT sluice.publish('t0008.poison', '{\"e\": 4}', 'k')");
    b_ids[3] = e4;
    expect_topic(env, "b.t0008.poison", b_ids, 4, "B delivers e4 after A failed");
    sql_arg_t b4 = {conn, "SELECT delivered FROM sluice.relay_checkpoints WHERE pipeline = 'B'", 4};
    TH_ASSERT(th_wait_until(sql_reaches, &b4, WAIT_MS, 50), "B's checkpoint reaches 4");
    int rc = stop_relay(pid, "poison");
    TH_ASSERT(rc == 1,
              "after SIGTERM the relay exits 1 because a pipeline failed (core/main.c: exit 1 "
              "= a pipeline failed; \"even after a clean SIGTERM: a failed pipeline needs a "
              "human\"), got %d",
              rc);
    TH_ASSERT(log_has(&(log_arg_t){log, "event=relay.stopped", "pipelines=2", "failed=1"}),
              "relay.stopped says 1 of 2 pipelines failed");
    TH_ASSERT(
        log_has(&(log_arg_t){log, "sluice relay: error: 1 of 2 pipelines failed", NULL, NULL}),
        "the exit error names how many pipelines failed");
    TH_ASSERT(log_has(&(log_arg_t){log, "hint: ", "pipeline.failed", NULL}),
              "with a hint pointing at the pipeline.failed lines");

    TH_LOG("restart with the same config: A fails again at e2, resends nothing");
    char log2[TH_PATH_MAX];
    snprintf(log2, sizeof log2, "%s/relay-poison-2.log", th_tmpdir());
    pid = start_relay(cfgp, cfg, log2);
    wait_log(log2, "event=pipeline.failed", "pipeline=A", msg, "A fails at e2 again");
    wait_log(log2, "event=pipeline.closed", "pipeline=A", NULL, "A closes again");
    line = log_find(log2, "event=pipeline.closed", "pipeline=A", NULL);
    TH_ASSERT(strstr(line, "delivered_total=1 ") != NULL,
              "A resumed after e1 and delivered nothing new: %s", line);
    free(line);
    TH_ASSERT(stop_relay(pid, "poison restart") == 1,
              "the restarted relay exits 1 again (A failed again)");
    expect_topic(env, "a.t0008.poison", b_ids, 1, "A's topic still holds e1 only");

    TH_LOG("restart with A fixed: e2, e3, e4 arrive");
    char log3[TH_PATH_MAX];
    snprintf(log3, sizeof log3, "%s/relay-poison-3.log", th_tmpdir());
    poison_config(cfg, sizeof cfg, env, false);
    pid = start_relay(cfgp, cfg, log3);
    sql_arg_t a4 = {conn, "SELECT delivered FROM sluice.relay_checkpoints WHERE pipeline = 'A'", 4};
    TH_ASSERT(th_wait_until(sql_reaches, &a4, WAIT_MS, 50),
              "with the cause fixed, A's checkpoint reaches 4 delivered");
    TH_ASSERT(stop_relay(pid, "poison fixed") == 0, "the fixed relay exits 0");
    TH_ASSERT(log_find(log3, "event=pipeline.failed", NULL, NULL) == NULL,
              "no pipeline fails once the cause is fixed");
    expect_topic(env, "a.t0008.poison", b_ids, 4, "A delivers e1..e4 exactly once in all");
    expect_topic(env, "b.t0008.poison", b_ids, 4, "B resent nothing");
}

/* ------------------------------------------------------------------------ */
/* (b) backpressure and memory                                               */
/* ------------------------------------------------------------------------ */

/* VmRSS of pid in kB, or -1. */
static long
rss_kb(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    char *text = th_read_file(path, NULL);
    if (text == NULL)
        return -1;
    const char *p = strstr(text, "VmRSS:");
    long kb = p ? atol(p + strlen("VmRSS:")) : -1;
    free(text);
    return kb;
}

static void
check_backpressure(th_env_t *env, PGconn *conn)
{
    char cfgp[TH_PATH_MAX], log[TH_PATH_MAX], cfg[4096];
    snprintf(cfgp, sizeof cfgp, "%s/bp.json", th_tmpdir());
    snprintf(log, sizeof log, "%s/relay-bp.log", th_tmpdir());
    snprintf(cfg, sizeof cfg,
             "{\"database\": \"%s\", \"pipelines\": [{\"name\": \"bp\", "
             "\"topics\": [\"t0008.bp\"], \"batch_size\": 100, \"max_inflight\": %d, "
             "\"sink\": {\"type\": \"kafka\", \"brokers\": \"%s\", \"topic\": \"bp.{topic}\", "
             "\"properties\": {\"reconnect.backoff.max.ms\": 1000}}}]}",
             env->pg_url, BP_WINDOW, env->brokers);

    /* The mock cluster keeps about 5 MB per partition and drops older records
     * (librdkafka's rdkafka_mock.c); 32 partitions hold the 50 MB with room. */
    th_env_topic_create(env, "bp.t0008.bp", BP_PARTITIONS);
    th_env_broker_down(env, -1);
    pid_t pid = start_relay(cfgp, cfg, log);
    wait_log(log, "event=pipeline.state", "pipeline=bp", "to=running", "bp reaches running");
    long base = rss_kb(pid);
    TH_ASSERT(base > 0, "VmRSS of the relay can be read (%ld kB)", base);

    TH_LOG("publishing %d events of %d bytes with the broker down", BP_EVENTS, BP_PAD);
    th_sql(conn,
           "SELECT sluice.publish('t0008.bp', jsonb_build_object('i', g, 'pad', "
           "repeat(chr(97 + g %% 26), %d)), 'k' || g) "
           "FROM generate_series(1, %d) g",
           BP_PAD, BP_EVENTS);

    /* Sample for at least 5 s, and until the stats line shows the full window. */
    long peak = base;
    int64_t start = th_now_ms();
    int64_t deadline = start + WAIT_MS;
    bool stats = false;
    char want[64];
    snprintf(want, sizeof want, "inflight=%d ", BP_WINDOW);
    for (;;) {
        long kb = rss_kb(pid);
        TH_ASSERT(kb > 0, "the relay is alive while the broker is down");
        if (kb > peak)
            peak = kb;
        TH_ASSERT(th_sql_int(conn, "SELECT delivered FROM sluice.relay_checkpoints "
                                   "WHERE pipeline = 'bp'") == 0,
                  "nothing is acknowledged while the broker is down");
        if (!stats) {
            char *line = log_find(log, "event=pipeline.stats", "pipeline=bp", NULL);
            if (line != NULL) {
                TH_ASSERT(strstr(line, want) != NULL && strstr(line, "delivered_total=0 "),
                          "the stats line shows a full window of %d and nothing delivered: %s",
                          BP_WINDOW, line);
                free(line);
                stats = true;
            }
        }
        int64_t now = th_now_ms();
        if (stats && now - start >= 5000)
            break;
        TH_ASSERT(now < deadline, "a pipeline.stats line appears within %d ms", WAIT_MS);
        th_sleep_ms(100);
    }
    TH_LOG("VmRSS: %ld kB at start, peak %ld kB while %d events (%d MB) wait", base, peak,
           BP_EVENTS, BP_EVENTS * BP_PAD / 1000000);
    TH_ASSERT(peak < BP_RSS_MAX_KB, "the relay's VmRSS stays under %d kB, peak %ld kB",
              BP_RSS_MAX_KB, peak);
    TH_ASSERT(peak - base < BP_RSS_GROWTH_MAX_KB,
              "the relay's VmRSS grows by less than %d kB with the sink down, grew %ld kB",
              BP_RSS_GROWTH_MAX_KB, peak - base);

    TH_LOG("broker up");
    th_env_broker_up(env, -1);
    sql_arg_t all = {conn, "SELECT delivered FROM sluice.relay_checkpoints WHERE pipeline = 'bp'",
                     BP_EVENTS};
    TH_ASSERT(th_wait_until(sql_reaches, &all, RUN_MS, 100),
              "all %d events are acknowledged once the broker is up", BP_EVENTS);
    TH_ASSERT(stop_relay(pid, "backpressure") == 0, "the relay exits 0 after SIGTERM");

    long long first =
        th_sql_int(conn, "SELECT min(id) FROM sluice.outbox WHERE topic = 't0008.bp'");
    th_record_t *recs = NULL;
    size_t n = 0;
    int rc = th_kcat_consume(env->brokers, "bp.t0008.bp", BP_EVENTS, RUN_MS, &recs, &n);
    TH_ASSERT(rc == 0 && n == BP_EVENTS, "Kafka holds exactly %d records, got %zu", BP_EVENTS, n);
    unsigned char *seen = calloc(BP_EVENTS, 1);
    TH_ASSERT(seen != NULL, "allocation");
    for (size_t i = 0; i < n; i++) {
        long long id = record_outbox_id(&recs[i]);
        TH_ASSERT(id >= first && id < first + BP_EVENTS,
                  "record %zu has an outbox id of this batch (%lld)", i, id);
        TH_ASSERT(!seen[id - first], "outbox message %lld arrives once", id);
        seen[id - first] = 1;
        TH_ASSERT(recs[i].value_len > BP_PAD, "record %zu carries its %d-byte payload", i, BP_PAD);
    }
    free(seen);
    th_records_free(recs, n);
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    TH_ASSERT(th_run(init, NULL, RUN_MS) == 0, "sluice init succeeds");
    PGconn *conn = th_pg_connect(env.pg_url);

    TH_LOG("(c) file sink");
    check_file_sink(&env, conn);
    TH_LOG("(a) poison message");
    check_poison(&env, conn);
    TH_LOG("(b) backpressure");
    check_backpressure(&env, conn);

    PQfinish(conn);
    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
