/*
 * tests/integration/0012_doorbell.c - the relay arms the doorbell when idle,
 * is woken by it at once, and disarms while busy.
 *
 * The relay runs with poll_interval_ms = 60000, so after its idle re-checks
 * (5, 20, 80, 320, 1280, 5120 ms after arming) only the doorbell can wake it
 * quickly. Steps:
 *   1. the relay takes the doorbell lock in shared mode once it is idle;
 *   2. two seconds later (its next re-check is more than four seconds away)
 *      a publish reaches the file sink within a second: the NOTIFY woke it;
 *   3. the relay arms again after delivering;
 *   4. with the relay stopped, nothing holds the lock and publish() sends no
 *      NOTIFY at all (checked with a LISTEN session and a marker);
 *   5. a relay that stays armed and idle for many re-checks (poll_interval_ms
 *      = 10, the minimum, so hundreds of them in IDLE_MS) stays responsive:
 *      it uses little CPU, delivers a publish at once and stops on SIGTERM.
 *      Its re-check delay once grew on every re-check until it wrapped to
 *      0 ms after 32 of them; the loop then spun in its timer phase for good,
 *      serving no I/O and no signal.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Step 5: how long the relay idles armed, and the CPU it may use meanwhile
 * (a spinning loop uses all of IDLE_MS; polling every 10 ms, even under
 * AddressSanitizer, a small part of it). */
#define IDLE_MS 3000
#define IDLE_CPU_MAX_MS 1000

/* Sessions holding the doorbell lock (outbox/outbox.h) in shared mode. */
#define ARMED_SQL                                                                       \
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' " \
    "AND granted AND ((classid::bigint << 32) | objid::bigint) = 8317132985617640448"

typedef struct armed_arg {
    PGconn *conn;
    long long want;
} armed_arg_t;

static bool
armed_is(void *p)
{
    armed_arg_t *a = p;
    return th_sql_int(a->conn, ARMED_SQL) == a->want;
}

typedef struct file_arg {
    const char *path;
    const char *needle;
} file_arg_t;

static bool
file_has(void *p)
{
    file_arg_t *a = p;
    return th_file_contains(a->path, a->needle);
}

/* User plus system CPU time of a process in ms, or -1. */
static long long
cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* Fields after the command name (which may hold spaces) start at ") ". */
    const char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    unsigned long long utime = 0, stime = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (long long)((utime + stime) * 1000 / (unsigned long long)sysconf(_SC_CLK_TCK));
}

/* Step 5 (file header). */
static void
idle_relay_stays_responsive(const th_env_t *env, PGconn *conn)
{
    char out[TH_PATH_MAX], cfg[TH_PATH_MAX], log[TH_PATH_MAX], text[2 * TH_PATH_MAX];
    snprintf(out, sizeof out, "%s/events-idle.jsonl", th_tmpdir());
    snprintf(cfg, sizeof cfg, "%s/relay-idle.json", th_tmpdir());
    snprintf(log, sizeof log, "%s/relay-idle.log", th_tmpdir());
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"pipelines\": [{\"name\": \"bell\", "
             "\"poll_interval_ms\": 10, \"sink\": {\"type\": \"file\", \"path\": \"%s\"}}]}",
             env->pg_url, out);
    th_write_file(cfg, text);
    const char *const relay[] = {SLUICE_BIN, "relay", "--config", cfg, NULL};
    pid_t pid = th_spawn(relay, log);

    armed_arg_t armed = {conn, 1};
    TH_ASSERT(th_wait_until(armed_is, &armed, 20000, 20),
              "the idle relay (poll_interval_ms 10) arms the doorbell within 20 s");
    long long cpu0 = cpu_ms(pid);
    th_sleep_ms(IDLE_MS); /* hundreds of re-checks at 10 ms */
    long long cpu = cpu_ms(pid) - cpu0;
    TH_ASSERT(cpu0 >= 0 && cpu >= 0, "the relay's CPU time can be read from /proc/%d/stat",
              (int)pid);
    TH_LOG("the armed relay used %lld ms of CPU in %d ms of idling", cpu, IDLE_MS);
    TH_ASSERT(cpu < IDLE_CPU_MAX_MS,
              "an armed idle relay does not spin: it used %lld ms of CPU in %d ms (at most %d)",
              cpu, IDLE_MS, IDLE_CPU_MAX_MS);

    int64_t t0 = th_now_ms();
    th_sql(conn, "SELECT sluice.publish('t0012', '{\"after\": \"idling\"}')");
    file_arg_t fa = {out, "\"after\": \"idling\""};
    TH_ASSERT(th_wait_until(file_has, &fa, 2000, 5),
              "after %d ms armed and idle the relay still delivers a publish within 2 s", IDLE_MS);
    TH_LOG("delivered %lld ms after the publish", (long long)(th_now_ms() - t0));

    th_kill(pid, SIGTERM);
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, 15000, &status) == 0 && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "after idling the relay stops with exit 0 on SIGTERM");
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    const char *const init[] = {SLUICE_BIN, "init", "--db", env.pg_url, NULL};
    TH_ASSERT(th_run(init, NULL, 60000) == 0, "sluice init succeeds");
    PGconn *conn = th_pg_connect(env.pg_url);

    char out[TH_PATH_MAX], cfg[TH_PATH_MAX], log[TH_PATH_MAX], text[2 * TH_PATH_MAX];
    snprintf(out, sizeof out, "%s/events.jsonl", th_tmpdir());
    snprintf(cfg, sizeof cfg, "%s/relay.json", th_tmpdir());
    snprintf(log, sizeof log, "%s/relay.log", th_tmpdir());
    snprintf(text, sizeof text,
             "{\"database\": \"%s\", \"pipelines\": [{\"name\": \"bell\", "
             "\"poll_interval_ms\": 60000, \"sink\": {\"type\": \"file\", \"path\": \"%s\"}}]}",
             env.pg_url, out);
    th_write_file(cfg, text);
    const char *const relay[] = {SLUICE_BIN, "relay", "--config", cfg, NULL};
    pid_t pid = th_spawn(relay, log);

    armed_arg_t armed = {conn, 1};
    TH_ASSERT(th_wait_until(armed_is, &armed, 20000, 20),
              "the idle relay arms the doorbell (holds its lock in shared mode) within 20 s");

    /* Let the idle re-checks grow past the publish below. */
    th_sleep_ms(2000);
    int64_t t0 = th_now_ms();
    th_sql(conn, "SELECT sluice.publish('t0012', '{\"wake\": \"me\"}')");
    file_arg_t fa = {out, "\"wake\": \"me\""};
    TH_ASSERT(th_wait_until(file_has, &fa, 1000, 5),
              "the doorbell wakes the idle relay: the event is delivered within 1 s although "
              "the next poll is seconds away");
    TH_LOG("delivered %lld ms after the publish", (long long)(th_now_ms() - t0));

    TH_ASSERT(th_wait_until(armed_is, &armed, 10000, 20),
              "after delivering, the relay arms the doorbell again");

    th_kill(pid, SIGTERM);
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, 15000, &status) == 0 && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "the relay stops with exit 0 on SIGTERM");
    armed.want = 0;
    TH_ASSERT(th_wait_until(armed_is, &armed, 10000, 20),
              "with the relay gone, nothing holds the doorbell lock");

    /* No relay waiting: publish() must not pay for a NOTIFY. */
    PGconn *listener = th_pg_connect(env.pg_url);
    th_sql(listener, "LISTEN sluice_outbox; LISTEN t0012_marker");
    th_sql(conn, "SELECT sluice.publish('t0012', '{\"nobody\": \"listens\"}')");
    th_sql(conn, "SELECT pg_notify('t0012_marker', '')");
    int rings = 0;
    bool marker = false;
    int64_t deadline = th_now_ms() + 10000;
    while (!marker && th_now_ms() < deadline) {
        TH_ASSERT(PQconsumeInput(listener) == 1, "the LISTEN connection reads input");
        PGnotify *n;
        while ((n = PQnotifies(listener)) != NULL) {
            if (strcmp(n->relname, "sluice_outbox") == 0)
                rings++;
            else
                marker = true;
            PQfreemem(n);
        }
        if (!marker)
            th_sleep_ms(5);
    }
    TH_ASSERT(marker, "the marker notification arrives");
    TH_ASSERT(rings == 0, "with no relay waiting, publish() sends no NOTIFY (got %d)", rings);
    PQfinish(listener);

    idle_relay_stays_responsive(&env, conn);
    PQfinish(conn);
    return 0;
}
