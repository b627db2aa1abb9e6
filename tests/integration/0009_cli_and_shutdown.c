/*
 * tests/integration/0009_cli_and_shutdown.c - the command line's contract and
 * the relay's graceful shutdown.
 *
 *   1. CLI (core/main.c: exit 0 success, 2 usage; errors as
 *      "sluice <cmd>: error: ..." + "hint: ..."):
 *        - `sluice --help` / `-h` / `help` exit 0 and list init, relay,
 *          check-config and the exit codes; `sluice` alone exits 2 with the
 *          help on stderr;
 *        - `sluice --version` prints "sluice <digits>...";
 *        - every subcommand's --help exits 0 with its usage line;
 *          `relay --help-config` lists the config keys;
 *        - an unknown command, an unknown option (each subcommand), a stray
 *          argument, `relay`/`check-config` without --config, --log-level on
 *          check-config and a bad --log-level value all exit 2 with an error
 *          and a hint.
 *   2. Graceful shutdown (DESIGN.md "Relay": stop reading, drain in-flight
 *      within a deadline, checkpoint, exit 0): a Kafka pipeline relays 1000
 *      events; as soon as some are acknowledged the relay gets SIGTERM, and
 *      1000 more are published while it stops. It exits 0 well within
 *      shutdown_timeout_ms, logging event=relay.stopping and
 *      event=pipeline.closed with unacknowledged=0 checkpoint_saved=true; the
 *      stored checkpoint matches what it says it delivered. A restart with
 *      the same config resumes from there (pipeline.resume) and delivers the
 *      rest; stopped with SIGINT it exits 0 too. Kafka then holds each of the
 *      2000 events exactly once: a graceful stop causes no redelivery.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define RUN_MS 30000
#define WAIT_MS 30000
#define SHUTDOWN_MS 10000
#define HALF 1000

/* Runs sluice with a NULL-terminated argument list; *out gets stdout, *err stderr. */
static int
sluice(char **out, char **err, const char *const *args)
{
    char errpath[TH_PATH_MAX];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", th_tmpdir());
    const char *argv[24] = {"sh", "-c",    "f=$1; shift; exec \"$@\" 2>\"$f\"",
                            "sh", errpath, SLUICE_BIN};
    int i = 6;
    for (int k = 0; args[k] != NULL && i < 23; k++)
        argv[i++] = args[k];
    argv[i] = NULL;
    int rc = th_run(argv, out, RUN_MS);
    if (*out == NULL)
        *out = strdup("");
    *err = th_read_file(errpath, NULL);
    if (*err == NULL)
        *err = strdup("");
    return rc;
}

#define SLUICE(out, err, ...) sluice(out, err, (const char *const[]){__VA_ARGS__, NULL})

/* Checks a usage error: exit 2, "sluice <cmd>: error: <what>", a hint. */
static void
expect_usage(const char *label, const char *cmd, const char *what, int rc, char *out, char *err)
{
    TH_ASSERT(rc == 2, "%s: exits 2, got %d (stderr: %s)", label, rc, err);
    char want[256];
    snprintf(want, sizeof want, "sluice %s: error: %s", cmd, what);
    TH_ASSERT(strstr(err, want) != NULL, "%s: stderr has \"%s\", got:\n%s", label, want, err);
    TH_ASSERT(strstr(err, "\nhint: ") != NULL, "%s: stderr has a hint line, got:\n%s", label, err);
    free(out);
    free(err);
}

static void
check_cli(void)
{
    char *out, *err;
    int rc;

    static const char *const help_flags[] = {"--help", "-h", "help"};
    for (int i = 0; i < 3; i++) {
        rc = SLUICE(&out, &err, help_flags[i]);
        TH_ASSERT(rc == 0, "sluice %s exits 0, got %d", help_flags[i], rc);
        TH_ASSERT(strstr(out, "  init ") && strstr(out, "  relay ") &&
                      strstr(out, "  check-config "),
                  "sluice %s lists init, relay and check-config:\n%s", help_flags[i], out);
        TH_ASSERT(strstr(out, "Exit codes: 0 success, 1 runtime failure, 2 usage") != NULL,
                  "sluice %s documents the exit codes:\n%s", help_flags[i], out);
        free(out);
        free(err);
    }

    const char *const bare[] = {SLUICE_BIN, NULL};
    TH_ASSERT(th_run(bare, &out, RUN_MS) == 2, "sluice without arguments exits 2");
    TH_ASSERT(out != NULL && out[0] == '\0',
              "sluice without arguments prints help on stderr, "
              "not stdout: %s",
              out ? out : "");
    free(out);

    rc = SLUICE(&out, &err, "--version");
    TH_ASSERT(rc == 0, "sluice --version exits 0, got %d", rc);
    TH_ASSERT(strncmp(out, "sluice ", 7) == 0 && out[7] >= '0' && out[7] <= '9' &&
                  strchr(out, '.') != NULL,
              "sluice --version prints \"sluice <version>\", got \"%s\"", out);
    free(out);
    free(err);

    static const char *const cmds[] = {"init", "relay", "check-config"};
    for (int i = 0; i < 3; i++) {
        for (int h = 0; h < 2; h++) {
            const char *flag = h ? "-h" : "--help";
            rc = SLUICE(&out, &err, cmds[i], flag);
            TH_ASSERT(rc == 0, "sluice %s %s exits 0, got %d (%s)", cmds[i], flag, rc, err);
            char want[64];
            snprintf(want, sizeof want, "usage: sluice %s ", cmds[i]);
            TH_ASSERT(strncmp(out, want, strlen(want)) == 0,
                      "sluice %s %s prints its usage on stdout, got:\n%s", cmds[i], flag, out);
            TH_ASSERT(strstr(out, "--help") != NULL, "the usage lists --help:\n%s", out);
            free(out);
            free(err);
        }
    }
    rc = SLUICE(&out, &err, "relay", "--help-config");
    TH_ASSERT(rc == 0, "sluice relay --help-config exits 0, got %d", rc);
    TH_ASSERT(strstr(out, "database") && strstr(out, "pipelines[]") &&
                  strstr(out, "max_inflight") && strstr(out, "sink \"kafka\"") &&
                  strstr(out, "brokers"),
              "--help-config lists the keys:\n%s", out);
    free(out);
    free(err);

    rc = SLUICE(&out, &err, "frobnicate");
    TH_ASSERT(rc == 2, "an unknown command exits 2, got %d", rc);
    TH_ASSERT(strstr(err, "sluice: error: unknown command \"frobnicate\"") != NULL &&
                  strstr(err, "hint: run `sluice --help`") != NULL,
              "an unknown command is named, with a hint:\n%s", err);
    free(out);
    free(err);

    rc = SLUICE(&out, &err, "--frobnicate");
    TH_ASSERT(rc == 2 && strstr(err, "unknown command \"--frobnicate\"") != NULL,
              "an unknown global option exits 2 (got %d):\n%s", rc, err);
    free(out);
    free(err);

    for (int i = 0; i < 3; i++) {
        char label[64];
        snprintf(label, sizeof label, "sluice %s --bogus", cmds[i]);
        rc = SLUICE(&out, &err, cmds[i], "--bogus");
        expect_usage(label, cmds[i], "invalid option", rc, out, err);
    }
    rc = SLUICE(&out, &err, "relay");
    expect_usage("relay without --config", "relay", "missing --config FILE", rc, out, err);
    rc = SLUICE(&out, &err, "check-config");
    expect_usage("check-config without --config", "check-config", "missing --config FILE", rc, out,
                 err);
    rc = SLUICE(&out, &err, "relay", "--config");
    expect_usage("relay --config without a value", "relay", "invalid option", rc, out, err);
    rc = SLUICE(&out, &err, "relay", "--config", "x.json", "stray");
    expect_usage("relay with a stray argument", "relay", "unexpected argument", rc, out, err);
    rc = SLUICE(&out, &err, "check-config", "--config", "x.json", "--log-level", "debug");
    expect_usage("check-config --log-level", "check-config",
                 "--log-level is not an option of this command", rc, out, err);

    char cfg[TH_PATH_MAX];
    snprintf(cfg, sizeof cfg, "%s/level.json", th_tmpdir());
    th_write_file(cfg, "{\"database\": \"host=127.0.0.1 port=1\", \"pipelines\": "
                       "[{\"name\": \"a\", \"sink\": {\"type\": \"stdout\"}}]}");
    rc = SLUICE(&out, &err, "relay", "--config", cfg, "--log-level", "verbose");
    TH_ASSERT(rc == 2, "relay --log-level verbose exits 2, got %d (%s)", rc, err);
    TH_ASSERT(strstr(err, "sluice relay: error: ") != NULL && strstr(err, "verbose") != NULL,
              "a bad --log-level value is named:\n%s", err);
    free(out);
    free(err);
}

/* ------------------------------------------------------------------------ */
/* Graceful shutdown                                                         */
/* ------------------------------------------------------------------------ */

typedef struct sql_arg {
    PGconn *conn;
    long long want;
} sql_arg_t;

static long long
delivered(PGconn *conn)
{
    char *v = th_sql_text(conn, "SELECT coalesce((SELECT delivered FROM sluice.relay_checkpoints "
                                "WHERE pipeline = 'g'), -1)::text");
    long long d = atoll(v);
    free(v);
    return d;
}

static bool
delivered_reaches(void *p)
{
    sql_arg_t *a = p;
    return delivered(a->conn) >= a->want;
}

typedef struct log_arg {
    const char *path;
    const char *a, *b;
} log_arg_t;

/* Copy of the first line of the log containing a and b (b may be NULL). */
static char *
log_find(const char *path, const char *a, const char *b)
{
    char *text = th_read_file(path, NULL);
    if (text == NULL)
        return NULL;
    char *found = NULL, *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && !found;
         line = strtok_r(NULL, "\n", &save))
        if (strstr(line, a) && (b == NULL || strstr(line, b)))
            found = strdup(line);
    free(text);
    return found;
}

static bool
log_has(void *p)
{
    log_arg_t *l = p;
    char *line = log_find(l->path, l->a, l->b);
    free(line);
    return line != NULL;
}

static void
publish_half(PGconn *conn, int base)
{
    /* Ten transactions of 100 events. */
    for (int t = 0; t < HALF / 100; t++)
        th_sql(conn,
               "SELECT count(sluice.publish('t0009', jsonb_build_object('n', g), "
               "'k' || (g %% 37))) FROM generate_series(%d, %d) g",
               base + t * 100, base + t * 100 + 99);
}

static void
check_shutdown(th_env_t *env)
{
    const char *const init[] = {SLUICE_BIN, "init", "--db", env->pg_url, NULL};
    TH_ASSERT(th_run(init, NULL, RUN_MS) == 0, "sluice init succeeds");
    PGconn *conn = th_pg_connect(env->pg_url);

    char cfgp[TH_PATH_MAX], log1[TH_PATH_MAX], log2[TH_PATH_MAX], cfg[4096];
    snprintf(cfgp, sizeof cfgp, "%s/relay.json", th_tmpdir());
    snprintf(log1, sizeof log1, "%s/relay-1.log", th_tmpdir());
    snprintf(log2, sizeof log2, "%s/relay-2.log", th_tmpdir());
    snprintf(
        cfg, sizeof cfg,
        "{\"database\": \"%s\", \"shutdown_timeout_ms\": %d, \"pipelines\": [\n"
        " {\"name\": \"g\", \"topics\": [\"t0009\"], \"batch_size\": 50, "
        "\"max_inflight\": 200,\n"
        "  \"sink\": {\"type\": \"kafka\", \"brokers\": \"%s\", \"topic\": \"g.{topic}\"}}]}\n",
        env->pg_url, SHUTDOWN_MS, env->brokers);
    th_write_file(cfgp, cfg);
    const char *const relay[] = {SLUICE_BIN, "relay", "--config", cfgp, NULL};

    pid_t pid = th_spawn(relay, log1);
    log_arg_t running = {log1, "event=pipeline.state pipeline=g", "to=running"};
    TH_ASSERT(th_wait_until(log_has, &running, WAIT_MS, 20), "the pipeline reaches running");

    TH_LOG("publish %d events, SIGTERM once some are acknowledged", HALF);
    publish_half(conn, 1);
    sql_arg_t some = {conn, 1};
    TH_ASSERT(th_wait_until(delivered_reaches, &some, WAIT_MS, 5),
              "some events are acknowledged and checkpointed");
    long long at_signal = delivered(conn);
    int64_t t0 = th_now_ms();
    TH_ASSERT(th_kill(pid, SIGTERM) == 0, "the relay is running before SIGTERM");
    TH_LOG("SIGTERM with %lld of %d checkpointed; publishing %d more", at_signal, HALF, HALF);
    publish_half(conn, HALF + 1);
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, SHUTDOWN_MS + 5000, &status) == 0, "the relay exits after SIGTERM");
    int64_t took = th_now_ms() - t0;
    TH_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a graceful stop exits 0 (status %d)",
              status);
    TH_ASSERT(took < SHUTDOWN_MS, "the relay stops within shutdown_timeout_ms (%d ms), took %lld",
              SHUTDOWN_MS, (long long)took);
    TH_LOG("stopped in %lld ms", (long long)took);

    char *line = log_find(log1, "event=relay.stopping", NULL);
    TH_ASSERT(line != NULL && strstr(line, "signal=SIGTERM") != NULL,
              "the log has event=relay.stopping signal=SIGTERM: %s", line ? line : "(none)");
    free(line);
    line = log_find(log1, "event=pipeline.closed", "pipeline=g");
    TH_ASSERT(line != NULL, "the log has event=pipeline.closed for g");
    TH_ASSERT(strstr(line, "unacknowledged=0") != NULL && strstr(line, "checkpoint_saved=true"),
              "the pipeline closed drained, with its checkpoint saved: %s", line);
    const char *dt = strstr(line, "delivered_total=");
    TH_ASSERT(dt != NULL, "pipeline.closed says how many were delivered: %s", line);
    long long d1 = atoll(dt + strlen("delivered_total="));
    free(line);
    TH_ASSERT(d1 >= at_signal && d1 <= 2 * HALF, "delivered_total %lld is plausible", d1);
    TH_ASSERT(delivered(conn) == d1,
              "the stored checkpoint (%lld delivered) matches the log (%lld)", delivered(conn), d1);
    TH_ASSERT(log_find(log1, "event=pipeline.drain_timeout", NULL) == NULL,
              "the drain finished before the deadline");
    line = log_find(log1, "event=relay.stopped", NULL);
    TH_ASSERT(line != NULL && strstr(line, "failed=0") != NULL, "relay.stopped with failed=0: %s",
              line ? line : "(none)");
    free(line);
    TH_LOG("first run delivered %lld (%lld checkpointed at SIGTERM)", d1, at_signal);

    TH_LOG("restart: the rest arrives");
    pid = th_spawn(relay, log2);
    char want[64];
    snprintf(want, sizeof want, "delivered=%lld ", d1);
    log_arg_t resume = {log2, "event=pipeline.resume pipeline=g", want};
    TH_ASSERT(th_wait_until(log_has, &resume, WAIT_MS, 20),
              "the restarted pipeline resumes from the saved checkpoint (%s)", want);
    sql_arg_t all = {conn, 2 * HALF};
    TH_ASSERT(th_wait_until(delivered_reaches, &all, WAIT_MS, 20),
              "the restarted relay delivers the rest (checkpoint reaches %d)", 2 * HALF);
    TH_ASSERT(th_kill(pid, SIGINT) == 0, "the restarted relay is running before SIGINT");
    TH_ASSERT(th_wait_exit(pid, SHUTDOWN_MS + 5000, &status) == 0, "it exits after SIGINT");
    TH_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "SIGINT stops it with exit 0 (%d)",
              status);
    line = log_find(log2, "event=relay.stopping", "signal=SIGINT");
    TH_ASSERT(line != NULL, "the second run logs relay.stopping signal=SIGINT");
    free(line);
    TH_ASSERT(delivered(conn) == 2 * HALF, "the checkpoint counts exactly %d delivered, got %lld",
              2 * HALF, delivered(conn));

    long long first = th_sql_int(conn, "SELECT min(id) FROM sluice.outbox WHERE topic = 't0009'");
    TH_ASSERT(th_sql_int(conn, "SELECT max(id) - min(id) + 1 FROM sluice.outbox "
                               "WHERE topic = 't0009'") == 2 * HALF,
              "the outbox ids of the %d events are contiguous", 2 * HALF);
    th_record_t *recs = NULL;
    size_t n = 0;
    int rc = th_kcat_consume(env->brokers, "g.t0009", 2 * HALF, WAIT_MS, &recs, &n);
    TH_ASSERT(rc == 0, "Kafka holds at least %d records, got %zu", 2 * HALF, n);
    int *seen = calloc(2 * HALF, sizeof *seen);
    TH_ASSERT(seen != NULL, "allocation");
    size_t dups = 0;
    for (size_t i = 0; i < n; i++) {
        char buf[128];
        TH_ASSERT(th_record_header(&recs[i], "sluice-id", buf, sizeof buf) != NULL,
                  "record %zu has a sluice-id header", i);
        const char *colon = strrchr(buf, ':');
        long long id = colon ? atoll(colon + 1) : -1;
        TH_ASSERT(id >= first && id < first + 2 * HALF, "record %zu is one of ours (id %lld)", i,
                  id);
        if (seen[id - first]++)
            dups++;
    }
    TH_ASSERT(dups == 0 && n == 2 * HALF,
              "every event arrives exactly once across the graceful stop: %zu records, "
              "%zu duplicates",
              n, dups);
    free(seen);
    th_records_free(recs, n);
    PQfinish(conn);
}

int
main(void)
{
    TH_LOG("command line");
    check_cli();

    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    TH_LOG("graceful shutdown");
    check_shutdown(&env);
    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
