/*
 * tests/integration/0001_env.c - the harness and the test environment work.
 *
 * Every other integration test stands on this one: if it fails, fix the
 * environment (scripts/dev-env, tests/helpers/test_broker.c) or the harness
 * before reading any other failure. It checks, in order:
 *
 *   1. an environment starts, its settings are exported to children;
 *   2. PostgreSQL: a fresh database, SQL results, error messages, a crash
 *      (immediate stop) and restart that keeps committed data, a start that
 *      waits until something holding its port lets go;
 *   3. Kafka: three records with keys and headers (values holding tabs and
 *      newlines) round-trip through kcat into th_record_t, on a created topic
 *      and on an auto-created one;
 *   4. a mock broker taken down refuses producers, and works again once up;
 *   5. process helpers: spawn, log files, signals, exit status, th_run.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define WAIT_MS 30000

typedef struct rows_arg {
    PGconn *conn;
    long long want;
} rows_arg_t;

static bool
rows_reached(void *p)
{
    rows_arg_t *a = p;
    return th_sql_int(a->conn, "SELECT count(*) FROM items") >= a->want;
}

/* True once the postmaster's log says its port was taken. */
static bool
bind_refused(void *p)
{
    const th_env_t *env = p;
    char path[TH_PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s/pg.log", env->dir);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return false;
    char line[1024];
    bool seen = false;
    while (!seen && fgets(line, sizeof(line), f) != NULL)
        seen = strstr(line, "Address already in use") != NULL;
    fclose(f);
    return seen;
}

/*
 * A start on the environment's own port outlasts something holding that port
 * for a while (in CI: an outgoing connection that had it as its local end).
 * A child process keeps a socket bound to the port until the postmaster's log
 * shows a refused bind, then lets go; pg-start must succeed regardless.
 */
static void
check_port_held(th_env_t *env)
{
    TH_LOG("start postgres while something holds its port");
    th_env_pg_stop(env, NULL);
    TH_ASSERT(!bind_refused(env), "the log shows no refused bind before the test");

    /* The connections the stopped postmaster closed leave the port in
     * TIME_WAIT, which refuses a plain bind: SO_REUSEADDR, as PostgreSQL
     * itself uses. A listening socket then refuses the postmaster's bind,
     * SO_REUSEADDR or not. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    TH_ASSERT(fd >= 0, "socket: %s", strerror(errno));
    int one = 1;
    TH_ASSERT(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0,
              "setsockopt SO_REUSEADDR: %s", strerror(errno));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)env->pg_port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    TH_ASSERT(bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0, "bind 127.0.0.1:%d: %s",
              env->pg_port, strerror(errno));
    TH_ASSERT(listen(fd, 1) == 0, "listen on 127.0.0.1:%d: %s", env->pg_port, strerror(errno));

    pid_t holder = fork();
    TH_ASSERT(holder >= 0, "fork: %s", strerror(errno));
    if (holder == 0) {
        /* Lets go of the port once the postmaster has been refused it, or
         * after the deadline; the parent's start fails in that case. */
        bool refused = th_wait_until(bind_refused, env, WAIT_MS, 20);
        close(fd);
        _exit(refused ? 0 : 1);
    }
    close(fd);

    th_env_pg_start(env);
    int status = 0;
    TH_ASSERT(waitpid(holder, &status, 0) == holder, "waitpid: %s", strerror(errno));
    TH_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the first start was refused the held port (exit status %d)", status);
    PGconn *conn = th_pg_connect(env->pg_url);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM pg_database WHERE datname = 't0001'") == 1,
              "postgres runs on its own port once the port is free again");
    PQfinish(conn);
}

static void
check_postgres(th_env_t *env)
{
    char *url = th_createdb(env, "t0001");
    TH_ASSERT(strstr(url, "/t0001") != NULL, "createdb returns the new database's URL: %s", url);

    PGconn *conn = th_pg_connect(url);
    th_sql(conn, "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)");
    th_sql(conn, "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, %d) g", 10);
    long long sum = th_sql_int(conn, "SELECT sum(id) FROM items");
    TH_ASSERT(sum == 55, "sum of ids 1..10 is 55, got %lld", sum);

    char *name = th_sql_text(conn, "SELECT name FROM items WHERE id = %d", 7);
    TH_ASSERT(name != NULL && strcmp(name, "item 7") == 0, "row 7 is named \"item 7\", got %s",
              name ? name : "NULL");
    free(name);
    char *null = th_sql_text(conn, "SELECT NULL::text");
    TH_ASSERT(null == NULL, "SQL NULL reads as a NULL pointer");

    char *wal = th_sql_text(conn, "SHOW wal_level");
    TH_ASSERT(strcmp(wal, "logical") == 0, "wal_level is logical, got %s", wal);
    free(wal);
    char *listen = th_sql_text(conn, "SHOW listen_addresses");
    TH_ASSERT(strcmp(listen, "127.0.0.1") == 0, "postgres listens on 127.0.0.1 only, got %s",
              listen);
    free(listen);

    char err[256];
    int rc = th_sql_try(conn, err, sizeof(err), "INSERT INTO items VALUES (1, 'dup')");
    TH_ASSERT(rc == -1, "a duplicate key fails");
    TH_ASSERT(strstr(err, "duplicate key value violates unique constraint") != NULL,
              "th_sql_try returns the server message, got \"%s\"", err);
    rc = th_sql_try(conn, err, sizeof(err), "SELECT 1");
    TH_ASSERT(rc == 0 && err[0] == '\0', "a good statement succeeds with an empty message");

    rows_arg_t arg = {.conn = conn, .want = 10};
    TH_ASSERT(th_wait_until(rows_reached, &arg, 1000, 10), "the condition holds at once");
    arg.want = 11;
    int64_t t0 = th_now_ms();
    TH_ASSERT(!th_wait_until(rows_reached, &arg, 200, 20), "an unmet condition times out");
    TH_ASSERT(th_now_ms() - t0 >= 200, "th_wait_until waits for its whole timeout");
    PQfinish(conn);

    TH_LOG("crash and restart postgres");
    th_env_pg_restart(env, "immediate");
    conn = th_pg_connect(url);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM items") == 10,
              "committed rows survive an immediate stop");
    PQfinish(conn);

    th_env_pg_stop(env, NULL);
    th_env_pg_start(env);
    conn = th_pg_connect(env->pg_url);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM pg_database WHERE datname = 't0001'") == 1,
              "the database survives a clean stop and start on the same port");
    PQfinish(conn);
    free(url);

    check_port_held(env);
}

/* Produces the three test records; returns kcat's exit code of the first failure. */
static int
produce_three(const char *brokers, const char *topic)
{
    static const char *const h1[] = {"id=m-1", "op=insert", NULL};
    static const char *const h2[] = {"id=m-2", "op=update", NULL};
    static const char *const h3[] = {"id=m-3", "op=delete", "trace=abc", NULL};
    int rc = th_kcat_produce(brokers, topic, "k1", "{\"v\":1}", h1, WAIT_MS);
    if (rc == 0)
        rc = th_kcat_produce(brokers, topic, "k2", "tab\there\nnew line", h2, WAIT_MS);
    if (rc == 0)
        rc = th_kcat_produce(brokers, topic, NULL, "no key", h3, WAIT_MS);
    return rc;
}

/* Finds the record with header id=<id>. */
static const th_record_t *
find_by_id(const th_record_t *recs, size_t n, const char *id)
{
    char buf[64];
    for (size_t i = 0; i < n; i++) {
        const char *v = th_record_header(&recs[i], "id", buf, sizeof(buf));
        if (v != NULL && strcmp(v, id) == 0)
            return &recs[i];
    }
    return NULL;
}

static void
check_three(const char *brokers, const char *topic)
{
    th_record_t *recs = NULL;
    size_t n = 0;
    int rc = th_kcat_consume(brokers, topic, 3, WAIT_MS, &recs, &n);
    TH_ASSERT(rc == 0 && n == 3, "topic %s holds exactly 3 records, got %zu", topic, n);

    char buf[64];
    const th_record_t *r1 = find_by_id(recs, n, "m-1");
    const th_record_t *r2 = find_by_id(recs, n, "m-2");
    const th_record_t *r3 = find_by_id(recs, n, "m-3");
    TH_ASSERT(r1 && r2 && r3, "records m-1, m-2, m-3 are all there (headers: %s | %s | %s)",
              recs[0].headers, recs[1].headers, recs[2].headers);

    TH_ASSERT(r1->key && strcmp(r1->key, "k1") == 0, "m-1 has key k1");
    TH_ASSERT(strcmp(r1->value, "{\"v\":1}") == 0, "m-1 value round-trips: %s", r1->value);
    TH_ASSERT(strcmp(th_record_header(r1, "op", buf, sizeof(buf)), "insert") == 0,
              "m-1 has header op=insert");

    TH_ASSERT(r2->key && strcmp(r2->key, "k2") == 0, "m-2 has key k2");
    const char *tricky = "tab\there\nnew line";
    TH_ASSERT(strcmp(r2->value, tricky) == 0 && r2->value_len == strlen(tricky),
              "a value with a tab and a newline round-trips exactly: \"%s\"", r2->value);
    TH_ASSERT(strcmp(th_record_header(r2, "op", buf, sizeof(buf)), "update") == 0,
              "m-2 has header op=update");

    TH_ASSERT(r3->key == NULL, "m-3 has no key");
    TH_ASSERT(strcmp(r3->value, "no key") == 0, "m-3 value round-trips");
    TH_ASSERT(th_record_header(r3, "trace", buf, sizeof(buf)) != NULL && strcmp(buf, "abc") == 0,
              "m-3 has header trace=abc");
    TH_ASSERT(th_record_header(r3, "missing", buf, sizeof(buf)) == NULL,
              "an absent header reads as NULL");

    for (size_t i = 1; i < n; i++) {
        TH_ASSERT(
            recs[i - 1].partition < recs[i].partition ||
                (recs[i - 1].partition == recs[i].partition && recs[i - 1].offset < recs[i].offset),
            "records come sorted by partition and offset");
    }
    th_records_free(recs, n);
}

static void
check_kafka(th_env_t *env)
{
    TH_LOG("kafka: created topic");
    th_env_topic_create(env, "t0001.created", 3);
    TH_ASSERT(produce_three(env->brokers, "t0001.created") == 0, "kcat produces 3 records");
    check_three(env->brokers, "t0001.created");

    TH_LOG("kafka: auto-created topic");
    TH_ASSERT(produce_three(env->brokers, "t0001.auto") == 0,
              "kcat produces to a topic nobody created");
    check_three(env->brokers, "t0001.auto");

    TH_LOG("kafka: broker down");
    th_env_broker_down(env, 1);
    static const char *const h[] = {"id=m-4", NULL};
    int rc = th_kcat_produce(env->brokers, "t0001.created", "k4", "while down", h, WAIT_MS);
    TH_ASSERT(rc != 0, "producing fails while the only broker is down");
    th_env_broker_up(env, 1);
    rc = th_kcat_produce(env->brokers, "t0001.created", "k4", "after up", h, WAIT_MS);
    TH_ASSERT(rc == 0, "producing works again once the broker is up (kcat exit %d)", rc);

    th_record_t *recs = NULL;
    size_t n = 0;
    rc = th_kcat_consume(env->brokers, "t0001.created", 4, WAIT_MS, &recs, &n);
    TH_ASSERT(rc == 0 && n == 4, "4 records after the broker came back, got %zu", n);
    const th_record_t *r4 = find_by_id(recs, n, "m-4");
    TH_ASSERT(r4 != NULL && strcmp(r4->value, "after up") == 0,
              "only the record sent after up is there");
    th_records_free(recs, n);
}

static void
check_processes(th_env_t *env)
{
    char log[4200];
    snprintf(log, sizeof(log), "%s/child.log", th_tmpdir());

    const char *const echo_env[] = {"sh", "-c", "echo \"url=$SLUICE_PG_URL\"", NULL};
    char *out = NULL;
    int rc = th_run(echo_env, &out, WAIT_MS);
    TH_ASSERT(rc == 0, "th_run returns the exit code");
    char want[600];
    snprintf(want, sizeof(want), "url=%s\n", env->pg_url);
    TH_ASSERT(strcmp(out, want) == 0, "children inherit SLUICE_PG_URL: got \"%s\"", out);
    free(out);

    const char *const fail[] = {"sh", "-c", "exit 3", NULL};
    TH_ASSERT(th_run(fail, NULL, WAIT_MS) == 3, "th_run returns a failing exit code");

    const char *const server[] = {"sh", "-c", "echo ready; echo oops >&2; exec tail -f /dev/null",
                                  NULL};
    pid_t pid = th_spawn(server, log);
    TH_ASSERT(th_wait_file_contains(log, "ready", WAIT_MS), "the child's stdout reaches its log");
    TH_ASSERT(th_wait_file_contains(log, "oops", WAIT_MS), "the child's stderr reaches its log");
    TH_ASSERT(!th_file_contains(log, "never printed"), "th_file_contains finds only what is there");
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, 100, &status) == -1, "a running child times out th_wait_exit");
    TH_ASSERT(th_kill(pid, SIGTERM) == 0, "th_kill signals the child");
    TH_ASSERT(th_wait_exit(pid, WAIT_MS, &status) == 0, "the child exits after SIGTERM");
    TH_ASSERT(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM,
              "the wait status says SIGTERM (status %d)", status);
    TH_ASSERT(th_kill(pid, SIGTERM) == -1, "a reaped child is never signalled again");

    /* Left running on purpose: the exit hook must kill it. */
    const char *const lingering[] = {"tail", "-f", "/dev/null", NULL};
    th_spawn(lingering, log);
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    TH_ASSERT(env.pg_port > 0 && env.brokers[0] != '\0' && env.dir[0] != '\0',
              "the environment's settings are parsed");
    const char *exported = getenv("KAFKA_BROKERS");
    TH_ASSERT(exported != NULL && strcmp(exported, env.brokers) == 0,
              "KAFKA_BROKERS is exported to this process");

    check_postgres(&env);
    check_kafka(&env);
    check_processes(&env);

    th_env_stop(&env);
    TH_ASSERT(!env.running, "the environment is stopped");
    TH_LOG("ok");
    return 0;
}
