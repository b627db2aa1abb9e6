/*
 * tests/integration/0007_init.c - `sluice init`: idempotent, safe when run
 * concurrently, refuses a newer catalog, clear about bad input.
 *
 * core/migrate.c: an advisory lock serialises concurrent runs; each missing
 * migration is applied in its own transaction and recorded in
 * sluice.schema_version; a database whose recorded version is newer than the
 * binary is refused. core/main.c: exit 0 success, 1 runtime failure, 2 usage.
 *
 *   1. init on a fresh database applies every migration (exit 0); a second
 *      init applies none ("0 migrations applied", exit 0) and changes nothing.
 *   2. Four inits started at once on another fresh database all exit 0; the
 *      migrations were applied exactly once in total (schema_version has one
 *      row per version, sluice.meta one row).
 *   3. A database "newer" than the binary (version 999 recorded): init exits 1
 *      naming version 999 with a hint, changes nothing, and leaves the
 *      migration lock free (a later init after the row is removed works).
 *   4. Bad connection strings exit 1 with "cannot connect to PostgreSQL" and
 *      a hint, and never echo the password; a missing --db (or an empty one,
 *      or a stray argument) exits 2; SLUICE_DB is the documented default.
 */
#include "harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define RUN_MS 60000

/* Runs `sluice init ARGS...` with stdout+stderr captured into *out. */
static int
run_init(const char *db, const char *extra, char **out)
{
    const char *argv[10];
    int i = 0;
    argv[i++] = "sh";
    argv[i++] = "-c";
    argv[i++] = "exec \"$0\" \"$@\" 2>&1";
    argv[i++] = SLUICE_BIN;
    argv[i++] = "init";
    if (db != NULL) {
        argv[i++] = "--db";
        argv[i++] = db;
    }
    if (extra != NULL)
        argv[i++] = extra;
    argv[i] = NULL;
    int rc = th_run(argv, out, RUN_MS);
    if (*out == NULL)
        *out = strdup("");
    return rc;
}

/* Parses "(N migration(s) applied)" from init's output; -1 when absent. */
static int
applied_of(const char *out)
{
    const char *p = strstr(out, " migration");
    if (p == NULL)
        return -1;
    while (p > out && p[-1] >= '0' && p[-1] <= '9')
        p--;
    if (p == out || p[-1] != '(')
        return -1;
    return atoi(p);
}

static long long
count_embedded_migrations(void)
{
    /* The binary embeds every <folder>/sql/NNNN_*.sql; count them in the source. */
    char *out = NULL;
    const char *const argv[] = {"sh", "-c", "ls \"$0\"/*/sql/[0-9][0-9][0-9][0-9]_*.sql | wc -l",
                                SL_SOURCE_DIR, NULL};
    TH_ASSERT(th_run(argv, &out, RUN_MS) == 0 && out != NULL, "listing outbox/sql works");
    long long n = atoll(out);
    free(out);
    return n;
}

static void
check_twice(th_env_t *env, long long nmig, char **url_out)
{
    char *url = th_createdb(env, "t0007_twice");
    *url_out = url;
    char *out = NULL;
    int rc = run_init(url, NULL, &out);
    TH_ASSERT(rc == 0, "init on a fresh database exits 0 (got %d): %s", rc, out);
    TH_ASSERT(applied_of(out) == nmig, "the first init applies all %lld migrations: %s", nmig, out);
    TH_ASSERT(strstr(out, "sluice init: schema sluice is at version ") != NULL,
              "init reports the schema version: %s", out);
    free(out);

    PGconn *conn = th_pg_connect(url);
    long long version = th_sql_int(conn, "SELECT max(version) FROM sluice.schema_version");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.schema_version") == nmig,
              "schema_version has one row per migration");
    th_sql(conn, "SELECT sluice.publish('t0007', '{}')");
    char *instance = th_sql_text(conn, "SELECT instance_id::text FROM sluice.meta");

    rc = run_init(url, NULL, &out);
    TH_ASSERT(rc == 0, "a second init exits 0 (got %d): %s", rc, out);
    TH_ASSERT(applied_of(out) == 0 && strstr(out, "(0 migrations applied)") != NULL,
              "the second init reports 0 migrations: %s", out);
    char want[128];
    snprintf(want, sizeof want, "at version %lld ", version);
    TH_ASSERT(strstr(out, want) != NULL, "the second init reports version %lld: %s", version, out);
    free(out);

    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.schema_version") == nmig,
              "the second init records nothing new");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.outbox") == 1,
              "the second init keeps the outbox rows");
    char *instance2 = th_sql_text(conn, "SELECT instance_id::text FROM sluice.meta");
    TH_ASSERT(instance && instance2 && strcmp(instance, instance2) == 0,
              "the instance id (part of every message id) survives a re-init: %s vs %s",
              instance ? instance : "NULL", instance2 ? instance2 : "NULL");
    free(instance);
    free(instance2);
    PQfinish(conn);
}

static void
check_concurrent(th_env_t *env, long long nmig)
{
    enum { N = 4 };
    char *url = th_createdb(env, "t0007_concurrent");
    pid_t pids[N];
    char logs[N][TH_PATH_MAX];
    for (int i = 0; i < N; i++) {
        snprintf(logs[i], sizeof logs[i], "%s/init-%d.log", th_tmpdir(), i);
        const char *const argv[] = {SLUICE_BIN, "init", "--db", url, NULL};
        pids[i] = th_spawn(argv, logs[i]);
    }
    int total = 0;
    for (int i = 0; i < N; i++) {
        int status = 0;
        TH_ASSERT(th_wait_exit(pids[i], RUN_MS, &status) == 0, "concurrent init %d finishes", i);
        char *log = th_read_file(logs[i], NULL);
        TH_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "concurrent init %d exits 0 (status %d): %s", i, status, log ? log : "");
        int applied = log ? applied_of(log) : -1;
        TH_ASSERT(applied >= 0, "concurrent init %d reports what it applied: %s", i,
                  log ? log : "");
        total += applied;
        free(log);
    }
    TH_ASSERT(total == nmig, "the %d concurrent inits applied %lld migrations in total, got %d", N,
              nmig, total);
    PGconn *conn = th_pg_connect(url);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.schema_version") == nmig,
              "schema_version has exactly %lld rows", nmig);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) - count(DISTINCT version) "
                               "FROM sluice.schema_version") == 0,
              "schema_version has exactly one row per version");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.meta") == 1, "sluice.meta has one row");
    TH_ASSERT(th_sql_int(conn, "SELECT sluice.publish('t0007', '{}')") > 0,
              "publish works after the concurrent inits");
    PQfinish(conn);
    free(url);
}

static void
check_newer(const char *url, long long nmig)
{
    PGconn *conn = th_pg_connect(url);
    th_sql(conn, "INSERT INTO sluice.schema_version VALUES (999, 'future')");
    char *out = NULL;
    int rc = run_init(url, NULL, &out);
    TH_ASSERT(rc == 1, "init on a newer catalog exits 1 (got %d): %s", rc, out);
    TH_ASSERT(strstr(out, "sluice init: error: ") != NULL, "the error has the CLI format: %s", out);
    TH_ASSERT(strstr(out, "version 999") != NULL && strstr(out, "newer than this binary") != NULL,
              "the error names version 999 and says it is newer: %s", out);
    TH_ASSERT(strstr(out, "hint: ") != NULL && strstr(out, "999") != NULL,
              "a hint says what to do: %s", out);
    free(out);
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM sluice.schema_version") == nmig + 1,
              "a refused init changes nothing");
    TH_ASSERT(th_sql_int(conn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0,
              "a refused init releases the migration lock");
    th_sql(conn, "DELETE FROM sluice.schema_version WHERE version = 999");
    rc = run_init(url, NULL, &out);
    TH_ASSERT(rc == 0 && applied_of(out) == 0,
              "once the future row is gone init works again (exit %d): %s", rc, out);
    free(out);
    PQfinish(conn);
}

static void
check_bad_input(th_env_t *env)
{
    char *out = NULL;
    const char *refused = "postgresql://postgres:hunter2-0007@127.0.0.1:1/postgres";
    int rc = run_init(refused, NULL, &out);
    TH_ASSERT(rc == 1, "init against a closed port exits 1 (got %d): %s", rc, out);
    TH_ASSERT(strstr(out, "sluice init: error: cannot connect to PostgreSQL") != NULL,
              "the error says it cannot connect: %s", out);
    TH_ASSERT(strstr(out, "hint: check the connection string") != NULL, "with a hint: %s", out);
    TH_ASSERT(strstr(out, "hunter2-0007") == NULL, "the password is never printed: %s", out);
    free(out);

    char nodb[600];
    snprintf(nodb, sizeof nodb, "postgresql://postgres@127.0.0.1:%d/no_such_db_0007", env->pg_port);
    rc = run_init(nodb, NULL, &out);
    TH_ASSERT(rc == 1, "init against a missing database exits 1 (got %d): %s", rc, out);
    TH_ASSERT(strstr(out, "cannot connect to PostgreSQL") != NULL &&
                  strstr(out, "no_such_db_0007") != NULL,
              "the error names the missing database: %s", out);
    free(out);

    rc = run_init("host=127.0.0.1 bogus_option=1 password=hunter2-0007", NULL, &out);
    TH_ASSERT(rc == 1, "a malformed conninfo exits 1 (got %d): %s", rc, out);
    TH_ASSERT(strstr(out, "cannot connect to PostgreSQL") != NULL &&
                  strstr(out, "bogus_option") != NULL,
              "the error names the bad option: %s", out);
    TH_ASSERT(strstr(out, "hunter2-0007") == NULL, "the password is never printed: %s", out);
    free(out);

    TH_ASSERT(unsetenv("SLUICE_DB") == 0, "SLUICE_DB is unset");
    rc = run_init(NULL, NULL, &out);
    TH_ASSERT(rc == 2, "init without --db exits 2 (got %d): %s", rc, out);
    TH_ASSERT(strstr(out, "sluice init: error: missing --db CONNINFO") != NULL &&
                  strstr(out, "hint: run `sluice init --help`") != NULL,
              "the error names the missing flag with a hint: %s", out);
    free(out);
    rc = run_init("", NULL, &out);
    TH_ASSERT(rc == 2, "init --db \"\" exits 2 (got %d): %s", rc, out);
    free(out);
    rc = run_init(env->pg_url, "stray", &out);
    TH_ASSERT(rc == 2 && strstr(out, "unexpected argument") != NULL,
              "a stray argument exits 2 (got %d): %s", rc, out);
    free(out);

    char *url = th_createdb(env, "t0007_env");
    TH_ASSERT(setenv("SLUICE_DB", url, 1) == 0, "SLUICE_DB is exported");
    rc = run_init(NULL, NULL, &out);
    TH_ASSERT(rc == 0 && applied_of(out) > 0, "init takes the database from $SLUICE_DB (%d): %s",
              rc, out);
    free(out);
    TH_ASSERT(unsetenv("SLUICE_DB") == 0, "SLUICE_DB is unset again");
    free(url);
}

int
main(void)
{
    th_env_t env;
    TH_ASSERT(th_env_start(&env) == 0, "the environment starts");
    long long nmig = count_embedded_migrations();
    TH_ASSERT(nmig >= 1, "at least one migration is embedded (%lld)", nmig);

    TH_LOG("init twice");
    char *url = NULL;
    check_twice(&env, nmig, &url);
    TH_LOG("concurrent inits");
    check_concurrent(&env, nmig);
    TH_LOG("a newer catalog");
    check_newer(url, nmig);
    free(url);
    TH_LOG("bad input");
    check_bad_input(&env);

    th_env_stop(&env);
    TH_LOG("ok");
    return 0;
}
