/*
 * tests/integration/0010_notify_sink.c - the "notify" sink (sinks/notify.c)
 * and the listener's contract of docs/notify.md.
 *
 * One relay runs four notify pipelines against the environment's PostgreSQL;
 * listeners are plain libpq connections polled with a deadline.
 *
 *   (a) Sizes: three events whose envelopes are exactly 7999, 8000 and 8001
 *       bytes (created_at and the payload are set in the publishing
 *       transaction so the envelope is known byte for byte). 7999 arrives as
 *       the full envelope, identical to the one computed here and equal (as
 *       jsonb) to sluice.outbox_message(id); 8000 and 8001 arrive as
 *       references {"id","topic","key","op","outbox_id","truncated":true}
 *       that resolve through sluice.outbox_message() to the full message.
 *   (b) Many per transaction: 2000 events published in one transaction
 *       arrive as 2000 notifications, in outbox id order, each id once.
 *   (c) Late listener: a listener takes its watermark with
 *       sluice.outbox_messages_since(NULL), goes away, misses 300 events
 *       (another listener sees them notified), comes back: LISTEN, catch up
 *       from its watermark, then receive live notifications. Events
 *       committed between its LISTEN and its catch-up, and 200 after, are
 *       included. The union is exactly the events published after the
 *       watermark, each at least once, nothing else.
 *   (d) Ack only after delivery: a pipeline whose notify connection cannot
 *       log in (its role is NOLOGIN) sends nothing and its checkpoint stays
 *       at 0 delivered while the other pipelines deliver; once the role may
 *       log in, all 20 events arrive and the checkpoint reaches 20.
 *   (f) Connection loss: 3 rounds of 1000 events on the bulk pipeline while
 *       the sink's backend is terminated right after each commit. Whether a
 *       batch was in flight (and is resent) depends on timing; either way
 *       every event arrives at least once, repeats only of whole batches
 *       (ids never go backwards except to resend), and the checkpoint
 *       reaches the total.
 *   (e) Config errors: a channel template over 63 bytes and a "format" key
 *       are refused by check-config (exit 2) with the config path.
 */
#include "harness.h"

#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define RUN_MS 60000
#define WAIT_MS 30000

#define BULK_EVENTS 2000
#define LATE_MISSED 300
#define LATE_LIVE 200
#define GATE_EVENTS 20

/* ------------------------------------------------------------------------ */
/* Listeners                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct note {
    char *channel;
    char *payload;
} note_t;

typedef struct listener {
    PGconn *conn;
    note_t *v;
    size_t n, cap;
} listener_t;

static void
listener_open(listener_t *l, const char *url, const char *channel)
{
    memset(l, 0, sizeof *l);
    l->conn = th_pg_connect(url);
    /* Channels with characters other than [a-z0-9_] need double quotes. */
    th_sql(l->conn, "LISTEN \"%s\"", channel);
}

static void
listener_close(listener_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        free(l->v[i].channel);
        free(l->v[i].payload);
    }
    free(l->v);
    if (l->conn != NULL)
        PQfinish(l->conn);
    memset(l, 0, sizeof *l);
}

static void
listener_drain(listener_t *l)
{
    TH_ASSERT(PQconsumeInput(l->conn) == 1, "listener input: %s", PQerrorMessage(l->conn));
    PGnotify *n;
    while ((n = PQnotifies(l->conn)) != NULL) {
        if (l->n == l->cap) {
            l->cap = l->cap ? l->cap * 2 : 256;
            l->v = realloc(l->v, l->cap * sizeof *l->v);
            TH_ASSERT(l->v != NULL, "allocation");
        }
        l->v[l->n].channel = strdup(n->relname);
        l->v[l->n].payload = strdup(n->extra);
        l->n++;
        PQfreemem(n);
    }
}

/* Collects notifications until at least `want` arrived or timeout_ms passed. */
static bool
listener_wait(listener_t *l, size_t want, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        listener_drain(l);
        if (l->n >= want)
            return true;
        int64_t left = deadline - th_now_ms();
        if (left <= 0)
            return false;
        struct pollfd pfd = {.fd = PQsocket(l->conn), .events = POLLIN};
        poll(&pfd, 1, left > 100 ? 100 : (int)left);
    }
}

/* The outbox_id of a notification payload (envelope or reference); -1 if none. */
static long long
payload_outbox_id(const char *payload)
{
    const char *p = strstr(payload, "\"outbox_id\":");
    return p ? atoll(p + strlen("\"outbox_id\":")) : -1;
}

/* ------------------------------------------------------------------------ */
/* SQL with one text parameter                                               */
/* ------------------------------------------------------------------------ */

static bool
sql_true(PGconn *conn, const char *sql, const char *p1, const char *p2)
{
    const char *params[2] = {p1, p2};
    PGresult *res = PQexecParams(conn, sql, p2 ? 2 : 1, NULL, params, NULL, NULL, 0);
    TH_ASSERT(PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1, "%s: %s", sql,
              PQerrorMessage(conn));
    bool t = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return t;
}

/* ------------------------------------------------------------------------ */
/* Relay                                                                     */
/* ------------------------------------------------------------------------ */

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

static bool
log_has(void *p)
{
    const char **a = p;
    return th_file_contains(a[0], a[1]);
}

static int
stop_relay(pid_t pid)
{
    TH_ASSERT(th_kill(pid, SIGTERM) == 0, "the relay is running before SIGTERM");
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, WAIT_MS, &status) == 0, "the relay exits after SIGTERM");
    TH_ASSERT(WIFEXITED(status), "the relay exits normally (status %d)", status);
    return WEXITSTATUS(status);
}

/* ------------------------------------------------------------------------ */
/* (a) sizes                                                                 */
/* ------------------------------------------------------------------------ */

#define SIZE_TS_SQL "2026-01-01 00:00:00.123456+00"
#define SIZE_TS_JSON "2026-01-01T00:00:00.123456Z"

/*
 * Publishes one event on t0010_size whose envelope is exactly `target` bytes
 * and writes that envelope into `want` (caller frees). Returns the outbox id.
 */
static long long
publish_sized(PGconn *conn, size_t target, char **want)
{
    char *inst = th_sql_text(conn, "SELECT instance_id::text FROM sluice.meta");
    char *db = th_sql_text(conn, "SELECT current_database()");
    th_sql(conn, "BEGIN");
    long long id = th_sql_int(conn, "SELECT sluice.publish('t0010_size', '{\"pad\": \"\"}', 'k')");
    char *txid = th_sql_text(conn, "SELECT txid::text FROM sluice.outbox WHERE id = %lld", id);
    const char *fmt = "{\"id\":\"%s:%lld\",\"topic\":\"t0010_size\",\"op\":\"event\",\"key\":\"k\","
                      "\"payload\":{\"pad\": \"%s\"},\"headers\":{},\"ts\":\"" SIZE_TS_JSON "\","
                      "\"outbox_id\":%lld,\"source\":{\"db\":\"%s\",\"txid\":\"%s\"}}";
    size_t base = (size_t)snprintf(NULL, 0, fmt, inst, id, "", id, db, txid);
    TH_ASSERT(base < target, "the envelope without padding (%zu) is below %zu bytes", base, target);
    size_t pad = target - base;
    char *padding = malloc(pad + 1);
    TH_ASSERT(padding != NULL, "allocation");
    memset(padding, 'x', pad);
    padding[pad] = '\0';
    size_t n = base + pad + 1;
    *want = malloc(n);
    TH_ASSERT(*want != NULL, "allocation");
    snprintf(*want, n, fmt, inst, id, padding, id, db, txid);
    TH_ASSERT(strlen(*want) == target, "the computed envelope is %zu bytes", target);
    th_sql(conn,
           "UPDATE sluice.outbox SET created_at = '" SIZE_TS_SQL "', "
           "payload = jsonb_build_object('pad', repeat('x', %zu)) WHERE id = %lld",
           pad, id);
    th_sql(conn, "COMMIT");
    free(padding);
    free(inst);
    free(db);
    free(txid);
    return id;
}

static void
check_sizes(PGconn *conn, listener_t *l)
{
    size_t targets[3] = {7999, 8000, 8001};
    long long ids[3];
    char *want[3];
    for (int i = 0; i < 3; i++)
        ids[i] = publish_sized(conn, targets[i], &want[i]);
    TH_ASSERT(listener_wait(l, 3, WAIT_MS), "3 notifications arrive on size_t0010_size, got %zu",
              l->n);
    TH_ASSERT(l->n == 3, "exactly 3 notifications, got %zu", l->n);
    for (int i = 0; i < 3; i++) {
        const char *p = l->v[i].payload;
        char idtxt[24];
        snprintf(idtxt, sizeof idtxt, "%lld", ids[i]);
        TH_ASSERT(strcmp(l->v[i].channel, "size_t0010_size") == 0, "channel is %s",
                  l->v[i].channel);
        TH_ASSERT(payload_outbox_id(p) == ids[i], "notification %d is outbox message %lld", i,
                  ids[i]);
        if (targets[i] < 8000) {
            TH_ASSERT(strlen(p) == targets[i] && strcmp(p, want[i]) == 0,
                      "the %zu-byte envelope arrives whole and byte for byte (got %zu bytes)",
                      targets[i], strlen(p));
            TH_ASSERT(
                sql_true(conn, "SELECT $1::jsonb = sluice.outbox_message($2::bigint)", p, idtxt),
                "sluice.outbox_message(%lld) equals the notified envelope", ids[i]);
        } else {
            TH_ASSERT(strlen(p) < 400, "a %zu-byte envelope arrives as a short reference: %.200s",
                      targets[i], p);
            TH_ASSERT(sql_true(conn,
                               "SELECT $1::jsonb = jsonb_build_object('id', "
                               "(SELECT instance_id::text FROM sluice.meta) || ':' || $2, "
                               "'topic', 't0010_size', 'key', 'k', 'op', 'event', "
                               "'outbox_id', $2::bigint, 'truncated', true)",
                               p, idtxt),
                      "the reference has exactly id, topic, key, op, outbox_id, truncated: %s", p);
            TH_ASSERT(sql_true(conn, "SELECT sluice.outbox_message($2::bigint) = $1::jsonb",
                               want[i], idtxt),
                      "the reference resolves through sluice.outbox_message(%lld) to the full "
                      "%zu-byte message",
                      ids[i], targets[i]);
        }
        free(want[i]);
    }
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.outbox_message(-1) m "
                               "WHERE m IS NULL") == 1,
              "sluice.outbox_message() of an unknown id is NULL");
}

/* ------------------------------------------------------------------------ */
/* (b) many per transaction                                                  */
/* ------------------------------------------------------------------------ */

static void
check_bulk(PGconn *conn, listener_t *l)
{
    int64_t t0 = th_now_ms();
    th_sql(conn,
           "SELECT sluice.publish('t0010_bulk', jsonb_build_object('i', g), 'k' || g) "
           "FROM generate_series(1, %d) g",
           BULK_EVENTS);
    TH_ASSERT(listener_wait(l, BULK_EVENTS, RUN_MS), "%d notifications arrive, got %zu",
              BULK_EVENTS, l->n);
    int64_t ms = th_now_ms() - t0;
    TH_LOG("%d notifications of one transaction arrived %lld ms after its commit", BULK_EVENTS,
           (long long)ms);
    listener_wait(l, BULK_EVENTS + 1, 500);
    TH_ASSERT(l->n == BULK_EVENTS, "exactly %d notifications, got %zu", BULK_EVENTS, l->n);
    PGresult *res = PQexec(conn, "SELECT id FROM sluice.outbox WHERE topic = 't0010_bulk' "
                                 "ORDER BY id");
    TH_ASSERT(PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == BULK_EVENTS,
              "the outbox holds the %d events", BULK_EVENTS);
    for (int i = 0; i < BULK_EVENTS; i++) {
        long long want = atoll(PQgetvalue(res, i, 0));
        long long got = payload_outbox_id(l->v[i].payload);
        TH_ASSERT(got == want,
                  "notification %d is outbox message %lld (id order, each once), "
                  "got %lld",
                  i, want, got);
        TH_ASSERT(strcmp(l->v[i].channel, "bulk") == 0, "constant channel \"bulk\"");
    }
    PQclear(res);
}

/* ------------------------------------------------------------------------ */
/* (c) late listener                                                         */
/* ------------------------------------------------------------------------ */

/* Marks the outbox ids in payload-bearing rows or notifications as seen. */
static void
mark_seen(unsigned char *seen, long long first, long long n, long long id, const char *what)
{
    TH_ASSERT(id >= first && id < first + n, "%s: outbox id %lld belongs to the late events", what,
              id);
    seen[id - first] = 1;
}

static void
publish_late(PGconn *conn, int n)
{
    th_sql(conn,
           "SELECT sluice.publish('t0010_late', jsonb_build_object('i', g)) "
           "FROM generate_series(1, %d) g",
           n);
}

static void
check_late(th_env_t *env, PGconn *conn)
{
    /* An always-on listener proves the missed events were notified. */
    listener_t witness;
    listener_open(&witness, env->pg_url, "late_t0010_late");

    /* The late listener takes its watermark, then goes away. */
    listener_t late;
    listener_open(&late, env->pg_url, "late_t0010_late");
    char *since = th_sql_text(late.conn, "SELECT snapshot::text FROM "
                                         "sluice.outbox_messages_since(NULL) LIMIT 1");
    TH_ASSERT(since != NULL, "a new listener gets a watermark");
    listener_close(&late);

    long long first = th_sql_int(conn, "SELECT coalesce(max(id), 0) + 1 FROM sluice.outbox");
    publish_late(conn, LATE_MISSED);
    TH_ASSERT(listener_wait(&witness, LATE_MISSED, WAIT_MS),
              "the %d events are notified while the late listener is away (witness got %zu)",
              LATE_MISSED, witness.n);

    /* Back: LISTEN first, then catch up; events in between are owed too. */
    listener_open(&late, env->pg_url, "late_t0010_late");
    publish_late(conn, 10);
    const char *params[1] = {since};
    PGresult *res = PQexecParams(late.conn,
                                 "SELECT outbox_id, message::text, snapshot::text FROM "
                                 "sluice.outbox_messages_since($1::pg_snapshot, "
                                 "ARRAY['t0010_late'])",
                                 1, NULL, params, NULL, NULL, 0);
    TH_ASSERT(PQresultStatus(res) == PGRES_TUPLES_OK, "catch-up query: %s",
              PQerrorMessage(late.conn));
    TH_ASSERT(PQntuples(res) >= LATE_MISSED + 10 + 1,
              "the catch-up returns the snapshot row and the %d events committed since the "
              "watermark, got %d rows",
              LATE_MISSED + 10, PQntuples(res));
    TH_ASSERT(PQgetisnull(res, 0, 0) && !PQgetisnull(res, 0, 2),
              "the first row carries only the new snapshot");
    publish_late(conn, LATE_LIVE - 10);

    long long total = LATE_MISSED + LATE_LIVE;
    unsigned char *seen = calloc((size_t)total, 1);
    TH_ASSERT(seen != NULL, "allocation");
    long long prev = 0;
    for (int i = 1; i < PQntuples(res); i++) {
        long long id = atoll(PQgetvalue(res, i, 0));
        TH_ASSERT(id > prev, "catch-up rows come in outbox id order");
        prev = id;
        mark_seen(seen, first, total, id, "catch-up");
        TH_ASSERT(strstr(PQgetvalue(res, i, 1), "\"topic\": \"t0010_late\"") != NULL,
                  "catch-up row %d is the full message: %s", i, PQgetvalue(res, i, 1));
    }
    PQclear(res);
    /* Live: everything committed after the LISTEN arrives on the channel. */
    TH_ASSERT(listener_wait(&late, LATE_LIVE - 10, WAIT_MS),
              "the events published after the catch-up arrive live (got %zu)", late.n);
    listener_wait(&late, LATE_LIVE, 1000);
    for (size_t i = 0; i < late.n; i++)
        mark_seen(seen, first, total, payload_outbox_id(late.v[i].payload), "live");
    long long missing = 0, first_missing = -1;
    for (long long i = 0; i < total; i++) {
        if (!seen[i] && missing++ == 0)
            first_missing = first + i;
    }
    TH_LOG("late listener: %d rows caught up, %zu live notifications", LATE_MISSED + 10, late.n);
    TH_ASSERT(missing == 0,
              "the late listener misses nothing published after its watermark: %lld missing, "
              "first %lld",
              missing, first_missing);
    free(seen);
    free(since);
    listener_close(&late);
    listener_close(&witness);
}

/* ------------------------------------------------------------------------ */
/* (d) acknowledged only after delivery                                      */
/* ------------------------------------------------------------------------ */

static void
check_gate(PGconn *conn, listener_t *l)
{
    th_sql(conn,
           "SELECT sluice.publish('t0010_gate', jsonb_build_object('i', g)) "
           "FROM generate_series(1, %d) g",
           GATE_EVENTS);
    /* Other pipelines keep delivering meanwhile (the relay is alive). */
    th_sql(conn, "SELECT sluice.publish('t0010_bulk', '{\"probe\": true}')");
    sql_arg_t bulk = {conn,
                      "SELECT delivered FROM sluice.relay_checkpoints WHERE pipeline = 'bulk'",
                      BULK_EVENTS + 1};
    TH_ASSERT(th_wait_until(sql_reaches, &bulk, WAIT_MS, 50), "the bulk pipeline delivers");
    th_sleep_ms(2000);
    listener_drain(l);
    TH_ASSERT(l->n == 0, "nothing is notified while the notify role cannot log in (got %zu)", l->n);
    TH_ASSERT(th_sql_int(conn, "SELECT delivered FROM sluice.relay_checkpoints "
                               "WHERE pipeline = 'gate'") == 0,
              "the gate checkpoint does not advance before delivery");
    th_sql(conn, "ALTER ROLE t0010_notifier LOGIN");
    TH_ASSERT(listener_wait(l, GATE_EVENTS, WAIT_MS), "the %d events arrive once it can (got %zu)",
              GATE_EVENTS, l->n);
    sql_arg_t gate = {conn,
                      "SELECT delivered FROM sluice.relay_checkpoints WHERE pipeline = 'gate'",
                      GATE_EVENTS};
    TH_ASSERT(th_wait_until(sql_reaches, &gate, WAIT_MS, 50),
              "the gate checkpoint reaches %d after delivery", GATE_EVENTS);
}

/* ------------------------------------------------------------------------ */
/* (f) connection loss                                                       */
/* ------------------------------------------------------------------------ */

#define LOSS_ROUNDS 3
#define LOSS_EVENTS 1000

static void
check_loss(PGconn *conn, listener_t *l, const char *log)
{
    long long delivered0 =
        th_sql_int(conn, "SELECT delivered FROM sluice.relay_checkpoints WHERE pipeline = 'bulk'");
    long long first = th_sql_int(conn, "SELECT coalesce(max(id), 0) + 1 FROM sluice.outbox");
    listener_wait(l, (size_t)-1, 500); /* the probe event of (d), if not read yet */
    size_t base = l->n;
    int terminated = 0;
    for (int r = 0; r < LOSS_ROUNDS; r++) {
        th_sql(conn,
               "SELECT sluice.publish('t0010_bulk', jsonb_build_object('r', %d, 'i', g)) "
               "FROM generate_series(1, %d) g",
               r, LOSS_EVENTS);
        terminated += (int)th_sql_int(conn, "SELECT count(pg_terminate_backend(pid)) FROM "
                                            "pg_stat_activity WHERE pid <> pg_backend_pid() "
                                            "AND query LIKE '%%pg_notify(e->>0%%'");
        th_sleep_ms(300);
    }
    long long total = LOSS_ROUNDS * LOSS_EVENTS;
    sql_arg_t all = {conn, "SELECT delivered FROM sluice.relay_checkpoints WHERE pipeline = 'bulk'",
                     delivered0 + total};
    TH_ASSERT(th_wait_until(sql_reaches, &all, RUN_MS, 50),
              "the bulk checkpoint reaches %lld more after the connection losses", total);
    listener_wait(l, base + (size_t)total, WAIT_MS);
    unsigned char *seen = calloc((size_t)total, 1);
    TH_ASSERT(seen != NULL, "allocation");
    long long prev = 0, repeats = 0;
    for (size_t i = base; i < l->n; i++) {
        long long id = payload_outbox_id(l->v[i].payload);
        TH_ASSERT(id >= first && id < first + total, "notification %zu is one of the new events",
                  i);
        if (seen[id - first])
            repeats++;
        TH_ASSERT(id > prev || seen[id - first],
                  "ids only go backwards to repeat a resent batch (id %lld after %lld)", id, prev);
        seen[id - first] = 1;
        prev = id;
    }
    for (long long i = 0; i < total; i++)
        TH_ASSERT(seen[i], "outbox message %lld arrives despite the connection losses", first + i);
    free(seen);
    TH_LOG("connection loss: %d backends terminated, %lld repeated notifications, resends "
           "logged: %s",
           terminated, repeats, th_file_contains(log, "event=sink.resend") ? "yes" : "no");
}

/* ------------------------------------------------------------------------ */
/* (e) config errors                                                         */
/* ------------------------------------------------------------------------ */

static void
check_config_error(th_env_t *env, const char *sink, const char *needle)
{
    char cfgp[TH_PATH_MAX], cfg[4096];
    snprintf(cfgp, sizeof cfgp, "%s/bad.json", th_tmpdir());
    snprintf(cfg, sizeof cfg,
             "{\"database\": \"%s\", \"pipelines\": [{\"name\": \"bad\", \"sink\": %s}]}",
             env->pg_url, sink);
    th_write_file(cfgp, cfg);
    char log[TH_PATH_MAX];
    snprintf(log, sizeof log, "%s/check.log", th_tmpdir());
    const char *const argv[] = {SLUICE_BIN, "check-config", "--config", cfgp, NULL};
    pid_t pid = th_spawn(argv, log);
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, WAIT_MS, &status) == 0, "check-config finishes");
    TH_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 2, "check-config exits 2 for %s", sink);
    TH_ASSERT(th_file_contains(log, needle), "the error says \"%s\" for %s", needle, sink);
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    TH_ASSERT(th_run(init, NULL, RUN_MS) == 0, "sluice init succeeds");
    PGconn *conn = th_pg_connect(env.pg_url);

    TH_LOG("(e) config errors");
    check_config_error(&env,
                       "{\"type\": \"notify\", \"channel\": "
                       "\"{topic}_0123456789012345678901234567890123456789012345678901234567\"}",
                       "pipelines[0].sink.channel");
    check_config_error(&env, "{\"type\": \"notify\", \"channel\": \"c\", \"format\": \"json\"}",
                       "pipelines[0].sink.format");

    th_sql(conn, "CREATE ROLE t0010_notifier NOLOGIN");
    char gate_db[600];
    snprintf(gate_db, sizeof gate_db, "postgresql://t0010_notifier@127.0.0.1:%d/postgres",
             env.pg_port);

    char cfgp[TH_PATH_MAX], log[TH_PATH_MAX], cfg[8192];
    snprintf(cfgp, sizeof cfgp, "%s/notify.json", th_tmpdir());
    snprintf(log, sizeof log, "%s/relay.log", th_tmpdir());
    snprintf(cfg, sizeof cfg,
             "{\"database\": \"%s\", \"pipelines\": [\n"
             " {\"name\": \"sizes\", \"topics\": [\"t0010_size\"],\n"
             "  \"sink\": {\"type\": \"notify\", \"channel\": \"size_{topic}\"}},\n"
             " {\"name\": \"bulk\", \"topics\": [\"t0010_bulk\"], \"batch_size\": 500,\n"
             "  \"sink\": {\"type\": \"notify\", \"channel\": \"bulk\"}},\n"
             " {\"name\": \"late\", \"topics\": [\"t0010_late\"], \"batch_size\": 50,\n"
             "  \"sink\": {\"type\": \"notify\", \"channel\": \"late_{topic}\"}},\n"
             " {\"name\": \"gate\", \"topics\": [\"t0010_gate\"],\n"
             "  \"sink\": {\"type\": \"notify\", \"channel\": \"gate\", \"database\": \"%s\"}}\n"
             "]}\n",
             env.pg_url, gate_db);
    th_write_file(cfgp, cfg);

    listener_t sizes, bulk, gate;
    listener_open(&sizes, env.pg_url, "size_t0010_size");
    listener_open(&bulk, env.pg_url, "bulk");
    listener_open(&gate, env.pg_url, "gate");

    const char *const argv[] = {SLUICE_BIN, "relay", "--config", cfgp, NULL};
    pid_t pid = th_spawn(argv, log);
    const char *running[2] = {log, "pipeline=late from=setup to=running"};
    TH_ASSERT(th_wait_until(log_has, running, WAIT_MS, 50), "the pipelines reach running");

    TH_LOG("(a) payload sizes around 8000 bytes");
    check_sizes(conn, &sizes);
    TH_LOG("(b) %d notifications from one transaction", BULK_EVENTS);
    check_bulk(conn, &bulk);
    TH_LOG("(c) a late listener misses nothing it is owed");
    check_late(&env, conn);
    TH_LOG("(d) the checkpoint follows delivery");
    check_gate(conn, &gate);
    TH_LOG("(f) the sink's connection is lost around commits");
    check_loss(conn, &bulk, log);

    TH_ASSERT(stop_relay(pid) == 0, "the relay exits 0 after SIGTERM");
    TH_ASSERT(!th_file_contains(log, "event=pipeline.failed"), "no pipeline failed");
    listener_close(&sizes);
    listener_close(&bulk);
    listener_close(&gate);
    PQfinish(conn);
    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
