/*
 * tests/integration/0005_config_errors.c - bad relay configs fail clearly;
 * secrets never reach the output.
 *
 * DESIGN.md invariant 7 and "Relay": an invalid config, a missing variable or
 * file is a start-up error (exit 2) that names the offending JSON path and
 * says how to fix it; nothing secret is ever printed.
 *
 *   1. Table-driven: each bad config is written to a file and given to both
 *      `sluice check-config --config F` and `sluice relay --config F`. Both
 *      must exit 2, print nothing on stdout, and print on stderr
 *      "sluice <cmd>: error: F: ..." containing the expected JSON path and the
 *      expected fix (a "hint:" line, or the message itself when it already
 *      says what to write).
 *   2. Values that came from ${ENV:..} may be secrets: when such a value is
 *      invalid, the error still names the path but never echoes the value.
 *   3. A valid config whose database URL and a Kafka property (sasl.password)
 *      come from a secret variable: check-config prints the resolved config
 *      with "[redacted]" and never the secret; a relay running with it (one
 *      pipeline on the real database, one on an unreachable port, log level
 *      debug) never writes the secret to its log.
 */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define RUN_MS 30000
#define WAIT_MS 30000

#define SECRET "s3cr3t-value"
#define SECRET_VAR "SLT_0005_SECRET"
/* An invalid value (a space, "!") for any key, that is also a secret. */
#define BAD_SECRET_VAR "SLT_0005_BAD_SECRET"
#define MISSING_VAR "SLT_0005_NOT_SET"
#define MISSING_FILE "/nonexistent/sluice-0005/secret"

/* A config text and up to three substrings its error output must contain. */
typedef struct bad_case {
    const char *name;
    const char *json;
    const char *want[3];
} bad_case_t;

/* pipelines[] with one valid stdout pipeline, for cases about other keys. */
#define OK_PIPELINES "\"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"stdout\"}}]"

static const bad_case_t cases[] = {
    {"unknown top-level key",
     "{\"database\": \"x\", \"log_levle\": \"info\", " OK_PIPELINES "}",
     {"log_levle: unknown key", "hint: did you mean \"log_level\"?"}},
    {"unknown pipeline key",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"batch_sise\": 10, "
     "\"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0].batch_sise: unknown key", "hint: did you mean \"batch_size\"?"}},
    {"unknown sink key",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", "
     "\"sink\": {\"type\": \"kafka\", \"broker\": \"h:1\"}}]}",
     {"pipelines[0].sink.broker: unknown key", "hint: did you mean \"brokers\"?"}},
    {"wrong type: string for integer",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"batch_size\": \"10\", "
     "\"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0].batch_size: expected an integer, got string"}},
    {"wrong type: boolean for integer",
     "{\"database\": \"x\", \"shutdown_timeout_ms\": true, " OK_PIPELINES "}",
     {"shutdown_timeout_ms: expected an integer, got boolean"}},
    {"wrong type: string for boolean",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"doorbell\": \"yes\", "
     "\"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0].doorbell: expected a boolean, got string"}},
    {"wrong type: object for pipelines",
     "{\"database\": \"x\", \"pipelines\": {\"name\": \"a\"}}",
     {"pipelines: expected an array, got object"}},
    {"integer out of range",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"max_inflight\": 0, "
     "\"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0].max_inflight: must be between 1 and 10000000, got 0"}},
    {"missing database", "{" OK_PIPELINES "}", {"missing required key \"database\""}},
    {"missing pipelines", "{\"database\": \"x\"}", {"missing required key \"pipelines\""}},
    {"missing sink",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\"}]}",
     {"pipelines[0]: missing required key \"sink\""}},
    {"missing pipeline name",
     "{\"database\": \"x\", \"pipelines\": [{\"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0]: missing required key \"name\""}},
    {"missing sink.type",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {}}]}",
     {"pipelines[0].sink: missing required key \"type\"",
      "hint: set \"type\" to one of: kafka, stdout, file"}},
    {"missing kafka brokers",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"kafka\"}}]}",
     {"pipelines[0].sink: missing required key \"brokers\""}},
    {"empty kafka brokers",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", "
     "\"sink\": {\"type\": \"kafka\", \"brokers\": \"\"}}]}",
     {"pipelines[0].sink.brokers: is empty", "hint: set it to host:port"}},
    {"missing file sink path",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"file\"}}]}",
     {"pipelines[0].sink: missing required key \"path\""}},
    {"unknown sink type",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"kafak\"}}]}",
     {"pipelines[0].sink.type: unknown sink type \"kafak\"",
      "hint: known sink types: kafka, stdout, file"}},
    {"bad format choice",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", "
     "\"sink\": {\"type\": \"kafka\", \"brokers\": \"h:1\", \"format\": \"avro\"}}]}",
     {"pipelines[0].sink.format: expected one of \"json\", \"msgpack\", got \"avro\""}},
    {"tombstones with a topic template that splits a row's operations",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": "
     "\"kafka\", \"brokers\": \"h:1\", \"topic\": \"{topic}.{op}\", \"tombstones\": true}}]}",
     {"pipelines[0].sink.tombstones: the topic template \"{topic}.{op}\" puts a row's inserts "
      "and deletes in different topics (\"orders.insert\", \"orders.delete\")",
      "hint: remove {op} from \"topic\", or set \"tombstones\": false"}},
    {"tombstones not a boolean",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": "
     "\"kafka\", \"brokers\": \"h:1\", \"tombstones\": \"yes\"}}]}",
     {"pipelines[0].sink.tombstones: expected a boolean"}},
    {"bad log_level choice with a suggestion",
     "{\"database\": \"x\", \"log_level\": \"inf\", " OK_PIPELINES "}",
     {"log_level: expected one of \"debug\", \"info\", \"warn\", \"error\"",
      "hint: did you mean \"info\"?"}},
    {"batch_size larger than max_inflight",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"batch_size\": 500, "
     "\"max_inflight\": 100, \"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0]: batch_size (500) is larger than max_inflight (100)",
      "hint: lower batch_size or raise max_inflight"}},
    {"duplicate pipeline names",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"stdout\"}}, "
     "{\"name\": \"a\", \"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[1].name: pipeline name \"a\" is also used by pipelines[0]",
      "hint: each pipeline needs its own name"}},
    {"invalid pipeline name",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a b\", \"sink\": {\"type\": "
     "\"stdout\"}}]}",
     {"pipelines[0].name: invalid pipeline name \"a b\"", "hint: use 1 to 100 characters"}},
    {"empty pipeline name",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"\", \"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0].name: invalid pipeline name \"\"", "hint: use 1 to 100 characters"}},
    {"bad topic glob",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"topics\": [\"ok.*\", \"bad "
     "topic\"], "
     "\"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0].topics[1]: invalid topic pattern \"bad topic\"",
      "'*' matches any run of characters"}},
    {"topics element not a string",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"topics\": [\"ok\", 7], "
     "\"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0].topics[1]: expected a string, got number"}},
    {"bad topic template placeholder",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", "
     "\"sink\": {\"type\": \"kafka\", \"brokers\": \"h:1\", \"topic\": \"x.{nope}\"}}]}",
     {"pipelines[0].sink.topic: unknown placeholder \"{nope}\"",
      "hint: placeholders are {topic} and {op}"}},
    {"constant kafka topic that Kafka refuses",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", "
     "\"sink\": {\"type\": \"kafka\", \"brokers\": \"h:1\", \"topic\": \"..\"}}]}",
     {"pipelines[0].sink.topic:", "249 characters from A-Z a-z 0-9"}},
    {"reserved kafka property",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"kafka\", "
     "\"brokers\": \"h:1\", \"properties\": {\"log.queue\": false}}}]}",
     {"pipelines[0].sink.properties.log.queue: set by sluice and cannot be changed",
      "hint: remove this property"}},
    {"kafka property librdkafka rejects",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"kafka\", "
     "\"brokers\": \"h:1\", \"properties\": {\"no.such.property\": \"1\"}}}]}",
     {"pipelines[0].sink.properties.no.such.property: rejected by librdkafka",
      "hint: see librdkafka's CONFIGURATION.md"}},
    {"invalid JSON with line and column",
     "{\n  \"database\": \"x\",\n  \"pipelines\": [ { \"name\": \"a\" \"sink\": {} } ]\n}\n",
     {":3:32: invalid JSON near", "hint: comments (// and /* */) are allowed"}},
    {"trailing comma",
     "{\n  \"database\": \"x\",\n  // a comment\n"
     "  \"pipelines\": [ { \"name\": \"a\", \"sink\": {\"type\": \"stdout\"}, } ]\n}\n",
     {":4:61: invalid JSON", "hint: remove the trailing comma"}},
    {"top level not an object", "[]", {"the top level must be a JSON object"}},
    {"pipeline not an object",
     "{\"database\": \"x\", \"pipelines\": [1]}",
     {"pipelines[0]: expected an object"}},
    {"missing environment variable",
     "{\"database\": \"postgresql://u:${ENV:" MISSING_VAR "}@h/db\", " OK_PIPELINES "}",
     {"database: environment variable " MISSING_VAR " is not set",
      "hint: export " MISSING_VAR "=... or use ${ENV:" MISSING_VAR ":-default}"}},
    {"missing environment variable deep inside",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"kafka\", "
     "\"brokers\": \"${ENV:" MISSING_VAR "}\"}}]}",
     {"pipelines[0].sink.brokers: environment variable " MISSING_VAR " is not set",
      "hint: export " MISSING_VAR "="}},
    {"missing ${FILE:..}",
     "{\"database\": \"${FILE:" MISSING_FILE "}\", " OK_PIPELINES "}",
     {"database: cannot read ${FILE:" MISSING_FILE "}", "No such file or directory"}},
    {"unterminated reference",
     "{\"database\": \"${ENV:" MISSING_VAR "\", " OK_PIPELINES "}",
     {"database: unterminated \"${\"", "hint: close the reference with \"}\""}},
    {"unknown reference source",
     "{\"database\": \"${env:X}\", " OK_PIPELINES "}",
     {"database: unknown source \"env\"", "hint: sources are ENV and FILE (upper case)"}},
    {"empty pipelines",
     "{\"database\": \"x\", \"pipelines\": []}",
     {"pipelines: is empty", "hint: add at least one pipeline"}},
};

/* Invalid values that came from a secret variable: never echoed. */
static const bad_case_t secret_cases[] = {
    {"secret as pipeline name",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"${ENV:" BAD_SECRET_VAR "}\", "
     "\"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0].name"}},
    {"secret as topic glob",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"topics\": [\"${ENV:" BAD_SECRET_VAR
     "}\"], \"sink\": {\"type\": \"stdout\"}}]}",
     {"pipelines[0].topics[0]"}},
    {"secret as sink type",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", "
     "\"sink\": {\"type\": \"${ENV:" BAD_SECRET_VAR "}\"}}]}",
     {"pipelines[0].sink.type"}},
    {"secret as kafka topic",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"kafka\", "
     "\"brokers\": \"h:1\", \"topic\": \"${ENV:" BAD_SECRET_VAR "}\"}}]}",
     {"pipelines[0].sink.topic"}},
    {"secret as format",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"kafka\", "
     "\"brokers\": \"h:1\", \"format\": \"${ENV:" BAD_SECRET_VAR "}\"}}]}",
     {"pipelines[0].sink.format"}},
    {"secret as log_level",
     "{\"database\": \"x\", \"log_level\": \"${ENV:" BAD_SECRET_VAR "}\", " OK_PIPELINES "}",
     {"log_level"}},
    {"secret as kafka property value",
     "{\"database\": \"x\", \"pipelines\": [{\"name\": \"a\", \"sink\": {\"type\": \"kafka\", "
     "\"brokers\": \"h:1\", \"properties\": {\"acks\": \"${ENV:" BAD_SECRET_VAR "}\"}}}]}",
     {"pipelines[0].sink.properties.acks"}},
};

/*
 * Runs `sluice <cmd> --config <file>`; returns its exit code and stores its
 * stdout and stderr (caller frees both).
 */
static int
run_sluice(const char *cmd, const char *file, char **out, char **err)
{
    char errpath[TH_PATH_MAX];
    snprintf(errpath, sizeof errpath, "%s/stderr.txt", th_tmpdir());
    const char *const argv[] = {
        "sh", "-c", "f=$1; shift; exec \"$@\" 2>\"$f\"", "sh", errpath, SLUICE_BIN, cmd, "--config",
        file, NULL};
    int rc = th_run(argv, out, RUN_MS);
    *err = th_read_file(errpath, NULL);
    if (*err == NULL)
        *err = strdup("");
    if (*out == NULL)
        *out = strdup("");
    return rc;
}

/* Checks one bad config against both commands. */
static void
check_bad(const bad_case_t *c, const char *file, bool secret_case, char *leaks, size_t nleaks)
{
    th_write_file(file, c->json);
    static const char *const cmds[] = {"check-config", "relay"};
    for (size_t k = 0; k < 2; k++) {
        char *out = NULL, *err = NULL;
        int rc = run_sluice(cmds[k], file, &out, &err);
        TH_ASSERT(rc == 2, "[%s] sluice %s exits 2 (usage/config error), got %d; stderr:\n%s",
                  c->name, cmds[k], rc, err);
        TH_ASSERT(out[0] == '\0', "[%s] sluice %s prints nothing on stdout, got:\n%s", c->name,
                  cmds[k], out);
        char prefix[TH_PATH_MAX + 64];
        snprintf(prefix, sizeof prefix, "sluice %s: error: %s", cmds[k], file);
        TH_ASSERT(strncmp(err, prefix, strlen(prefix)) == 0,
                  "[%s] stderr starts with \"%s\" (command and config file named), got:\n%s",
                  c->name, prefix, err);
        for (size_t w = 0; w < 3 && c->want[w] != NULL; w++)
            TH_ASSERT(strstr(err, c->want[w]) != NULL,
                      "[%s] sluice %s: stderr contains \"%s\"; got:\n%s", c->name, cmds[k],
                      c->want[w], err);
        if (secret_case && strstr(err, SECRET) != NULL) {
            size_t used = strlen(leaks);
            const char *nl = strchr(err, '\n');
            int first = nl != NULL ? (int)(nl - err) : (int)strlen(err);
            int start = first > 100 ? first - 100 : 0;
            snprintf(leaks + used, nleaks - used, "  [%s] sluice %s: ...%.*s\n", c->name, cmds[k],
                     first - start, err + start);
        }
        free(out);
        free(err);
    }
}

typedef struct log_arg {
    const char *path;
    const char *a;
    const char *b;
} log_arg_t;

/* True when one line of the log contains both a and b. */
static bool
log_line_has(void *p)
{
    log_arg_t *l = p;
    char *text = th_read_file(l->path, NULL);
    if (text == NULL)
        return false;
    bool found = false;
    for (char *line = strtok(text, "\n"); line != NULL && !found; line = strtok(NULL, "\n"))
        found = strstr(line, l->a) != NULL && (l->b == NULL || strstr(line, l->b) != NULL);
    free(text);
    return found;
}

static void
check_secrets(th_env_t *env)
{
    char url[600], file[TH_PATH_MAX], log[TH_PATH_MAX];
    snprintf(file, sizeof file, "%s/secret.json", th_tmpdir());
    snprintf(log, sizeof log, "%s/relay-secret.log", th_tmpdir());

    /* init with the password in the URL: nothing prints it either. */
    snprintf(url, sizeof url, "postgresql://postgres:%s@127.0.0.1:%d/postgres", SECRET,
             env->pg_port);
    char *out = NULL;
    const char *const init[] = {"sh", "-c", "exec \"$0\" \"$@\" 2>&1", SLUICE_BIN, "init", "--db",
                                url,  NULL};
    int rc = th_run(init, &out, RUN_MS);
    TH_ASSERT(rc == 0, "sluice init succeeds (exit %d): %s", rc, out ? out : "");
    TH_ASSERT(strstr(out, SECRET) == NULL, "sluice init never prints the password: %s", out);
    free(out);

    char cfg[4096];
    snprintf(cfg, sizeof cfg,
             "// secrets come from the environment\n"
             "{\n"
             "  \"database\": \"postgresql://postgres:${ENV:" SECRET_VAR
             "}@127.0.0.1:%d/postgres\",\n"
             "  \"log_level\": \"debug\",\n"
             "  \"pipelines\": [\n"
             "    {\"name\": \"live\", \"topics\": [\"t0005\"],\n"
             "     \"sink\": {\"type\": \"kafka\", \"brokers\": \"${ENV:KAFKA_BROKERS}\",\n"
             "              \"properties\": {\"sasl.username\": \"relay\",\n"
             "                             \"sasl.password\": \"${ENV:" SECRET_VAR "}\"}}},\n"
             "    {\"name\": \"unreachable\",\n"
             "     \"database\": \"host=127.0.0.1 port=1 user=postgres password=${ENV:" SECRET_VAR
             "} connect_timeout=2\",\n"
             "     \"sink\": {\"type\": \"stdout\"}}\n"
             "  ]\n"
             "}\n",
             env->pg_port);
    th_write_file(file, cfg);

    char *err = NULL;
    rc = run_sluice("check-config", file, &out, &err);
    TH_ASSERT(rc == 0, "check-config accepts the config with secrets (exit %d): %s", rc, err);
    TH_ASSERT(strstr(out, "[redacted]") != NULL, "check-config shows [redacted]:\n%s", out);
    /* The database line shows the password as [redacted] (in whatever form
     * check-config renders a connection string) and keeps the rest readable. */
    const char *dbline = strstr(out, "\"database\":");
    TH_ASSERT(dbline != NULL, "check-config prints the database key:\n%s", out);
    const char *eol = strchr(dbline, '\n');
    int dblen = eol ? (int)(eol - dbline) : (int)strlen(dbline);
    char port[16];
    snprintf(port, sizeof port, "%d", env->pg_port);
    char dbl[1024];
    snprintf(dbl, sizeof dbl, "%.*s", dblen, dbline);
    TH_ASSERT(strstr(dbl, "[redacted]") != NULL && strstr(dbl, "127.0.0.1") != NULL &&
                  strstr(dbl, port) != NULL,
              "the database URL shows its password as [redacted] and keeps host and port: %s", dbl);
    TH_ASSERT(strstr(out, "\"sasl.password\":\t\"[redacted]\"") != NULL ||
                  strstr(out, "\"sasl.password\": \"[redacted]\"") != NULL,
              "the Kafka property sasl.password shows as [redacted]:\n%s", out);
    TH_ASSERT(strstr(out, "password=[redacted]") != NULL,
              "a key=value conninfo shows password=[redacted]:\n%s", out);
    TH_ASSERT(strstr(out, SECRET) == NULL && strstr(err, SECRET) == NULL,
              "check-config never prints the secret; stdout:\n%s\nstderr:\n%s", out, err);
    TH_ASSERT(strstr(err, "configuration is valid (2 pipelines)") != NULL,
              "check-config says the config is valid: %s", err);
    free(out);
    free(err);

    TH_LOG("relay with secrets, log level debug");
    const char *const relay[] = {SLUICE_BIN, "relay", "--config", file, NULL};
    pid_t pid = th_spawn(relay, log);
    log_arg_t running = {log, "pipeline.state", "pipeline=live from=setup to=running"};
    TH_ASSERT(th_wait_until(log_line_has, &running, WAIT_MS, 50),
              "the pipeline on the real database reaches running");
    log_arg_t refused = {log, "pg.connect_failed", "pipeline:unreachable"};
    TH_ASSERT(th_wait_until(log_line_has, &refused, WAIT_MS, 50),
              "the pipeline on an unreachable port logs pg.connect_failed");
    /* Something flows through the live pipeline too, so its sink logs. */
    PGconn *conn = th_pg_connect(env->pg_url);
    th_sql(conn, "SELECT sluice.publish('t0005', '{\"n\": 1}')");
    PQfinish(conn);
    th_record_t *recs = NULL;
    size_t n = 0;
    TH_ASSERT(th_kcat_consume(env->brokers, "t0005", 1, WAIT_MS, &recs, &n) == 0 && n == 1,
              "the relay with secret-bearing config delivers an event (got %zu)", n);
    th_records_free(recs, n);

    TH_ASSERT(th_kill(pid, SIGTERM) == 0, "the relay is still running before SIGTERM");
    int status = 0;
    TH_ASSERT(th_wait_exit(pid, WAIT_MS, &status) == 0, "the relay exits after SIGTERM");
    TH_ASSERT(WIFEXITED(status), "the relay exits normally (status %d)", status);
    char *text = th_read_file(log, NULL);
    TH_ASSERT(text != NULL && strlen(text) > 0, "the relay wrote a log");
    TH_ASSERT(strstr(text, SECRET) == NULL, "the relay log never contains the secret:\n%s", text);
    free(text);
}

int
main(void)
{
    char file[TH_PATH_MAX];
    snprintf(file, sizeof file, "%s/bad.json", th_tmpdir());
    TH_ASSERT(unsetenv(MISSING_VAR) == 0, "the missing variable is unset");
    TH_ASSERT(setenv(SECRET_VAR, SECRET, 1) == 0, "the secret variable is exported");
    TH_ASSERT(setenv(BAD_SECRET_VAR, SECRET " pw!", 1) == 0, "the bad secret is exported");

    size_t ncases = sizeof cases / sizeof cases[0];
    TH_LOG("%zu bad configs, each through check-config and relay", ncases);
    for (size_t i = 0; i < ncases; i++)
        check_bad(&cases[i], file, false, NULL, 0);

    char *out = NULL, *err = NULL;
    int rc = run_sluice("check-config", "/nonexistent/sluice-0005.json", &out, &err);
    TH_ASSERT(rc == 2 && strstr(err, "cannot read configuration file") != NULL &&
                  strstr(err, "No such file or directory") != NULL,
              "a config file that does not exist exits 2 naming the problem (exit %d): %s", rc,
              err);
    free(out);
    free(err);

    char leaks[16384] = "";
    size_t nsecret = sizeof secret_cases / sizeof secret_cases[0];
    TH_LOG("%zu invalid values from a secret variable", nsecret);
    for (size_t i = 0; i < nsecret; i++)
        check_bad(&secret_cases[i], file, true, leaks, sizeof leaks);

    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    check_secrets(&env);

    TH_ASSERT(leaks[0] == '\0',
              "an invalid value that came from ${ENV:..} is never echoed in an error "
              "(it may be a secret); these errors print it:\n%s",
              leaks);
    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
