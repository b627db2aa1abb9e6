/*
 * tests/integration/harness.h - the integration-test harness (sl_test_harness).
 *
 * Integration tests are plain C programs, one per tests/integration/NNNN_*.c,
 * each registered with ctest as integration.NNNN_<topic>. A test starts its
 * own environment (a private PostgreSQL 15 and a librdkafka mock Kafka
 * cluster, made by scripts/dev-env), drives it through the helpers below and
 * returns 0 from main(). Environments are private, so tests run in parallel.
 *
 *   int main(void) {
 *       th_env_t env;
 *       TH_ASSERT(th_env_start(&env) == 0, "environment starts");
 *       PGconn *conn = th_pg_connect(env.pg_url);
 *       TH_ASSERT(th_sql_int(conn, "SELECT %d + 1", 1) == 2, "arithmetic works");
 *       PQfinish(conn);
 *       return 0;   // environments are stopped at exit
 *   }
 *
 * Failure model: every helper that "asserts" ends the test on failure the
 * same way TH_ASSERT does: it prints `FAIL file:line: message`, dumps the
 * tail of the logs of every started environment and spawned process, kills
 * spawned processes, stops every environment (atexit hook) and exits 1.
 * Helpers that return an int instead say so. The asserting helpers are
 * macros over *_at(file, line, ...) functions, so a failure names the line of
 * the test, not of the harness; call them like functions. Nothing here is
 * thread-safe: call it from the test's main thread.
 *
 * Set TH_KEEP_ENV=1 to leave environments running after a failure (their
 * directories are printed) for a look with `scripts/dev-env psql DIR`.
 *
 * Compile definitions available to every test (from CMake):
 *   SL_SOURCE_DIR        repository root
 *   SLUICE_BIN           path of the built sluice binary
 *   SL_TEST_BROKER_BIN   path of the built sl_test_broker
 */
#ifndef SL_TEST_HARNESS_H
#define SL_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libpq-fe.h>

/* Default deadlines, in milliseconds. Generous: CI machines have 2 cores and
 * run two tests at once under sanitizers. */
#define TH_ENV_START_TIMEOUT_MS 60000
#define TH_ENV_OP_TIMEOUT_MS 60000
#define TH_KCAT_RUN_TIMEOUT_MS 15000

/* ------------------------------------------------------------------------ */
/* Assertions and logging                                                    */
/* ------------------------------------------------------------------------ */

/*
 * TH_ASSERT(cond, fmt, ...): when cond is false, prints
 *   FAIL file:line: <message>
 *     condition: <cond>
 * then ends the test (see the failure model above). fmt is required.
 */
#define TH_ASSERT(cond, ...)                                    \
    do {                                                        \
        if (!(cond))                                            \
            th_fail_at(__FILE__, __LINE__, #cond, __VA_ARGS__); \
    } while (0)

/* TH_FAIL(fmt, ...): fails unconditionally. */
#define TH_FAIL(...) th_fail_at(__FILE__, __LINE__, NULL, __VA_ARGS__)

/* TH_LOG(fmt, ...): one progress line on stderr, "# <elapsed>s <message>". */
#define TH_LOG(...) th_log(__VA_ARGS__)

void th_fail_at(const char *file, int line, const char *cond, const char *fmt, ...)
    __attribute__((format(printf, 4, 5), noreturn));
void th_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ------------------------------------------------------------------------ */
/* Environments (scripts/dev-env)                                            */
/* ------------------------------------------------------------------------ */

#define TH_PATH_MAX 4096

/* One running environment. Filled by th_env_start; the caller owns the
 * struct (a local in main is fine: the exit hook keeps its own copy). */
typedef struct th_env {
    char dir[TH_PATH_MAX]; /* SLUICE_ENV_DIR: logs are dir/pg.log, dir/broker.log */
    char pg_url[512];      /* postgresql://postgres@127.0.0.1:PORT/postgres */
    int pg_port;           /* PGPORT */
    char brokers[1024];    /* KAFKA_BROKERS: the mock cluster's bootstrap servers */
    bool running;          /* started and not yet stopped */
} th_env_t;

/*
 * Starts a new environment with `scripts/dev-env start`, using the
 * sl_test_broker built with this tree. The environment is stopped at exit,
 * even when an assertion fails, and by dev-env's watchdog when the test is
 * killed. On success it also exports SLUICE_ENV_DIR, PGHOST, PGPORT, PGUSER,
 * PGDATABASE, SLUICE_PG_URL and KAFKA_BROKERS into this process's
 * environment, so spawned programs (sluice, kcat) inherit them; with several
 * environments the last one started wins.
 * SLUICE_BROKERS (number of mock brokers) and SLUICE_BROKER_ARGS, when set
 * (setenv before the call), are passed on to dev-env.
 * Returns 0, or -1 after printing why on stderr (env->running is false).
 */
int th_env_start(th_env_t *env) __attribute__((warn_unused_result));

/* Stops the environment and removes its directory. Accepts a stopped env. */
#define th_env_stop(env) th_env_stop_at(__FILE__, __LINE__, (env))

/*
 * Server control; each asserts success. `mode` is a pg_ctl shutdown mode:
 * NULL or "fast" (clean), "immediate" (crash: recovery on the next start),
 * or "smart". The port and data survive a restart.
 */
#define th_env_pg_stop(env, mode) th_env_pg_stop_at(__FILE__, __LINE__, (env), (mode))
#define th_env_pg_start(env) th_env_pg_start_at(__FILE__, __LINE__, (env))
#define th_env_pg_restart(env, mode) th_env_pg_restart_at(__FILE__, __LINE__, (env), (mode))

/* Takes mock broker `id` (1..SLUICE_BROKERS, or -1 for all) down (connections
 * closed and refused) or back up. Asserts success. */
#define th_env_broker_down(env, id) th_env_broker_down_at(__FILE__, __LINE__, (env), (id))
#define th_env_broker_up(env, id) th_env_broker_up_at(__FILE__, __LINE__, (env), (id))

/* Creates topic `name` with `partitions` partitions on the mock cluster.
 * Topics nobody created are auto-created with 4 partitions on first produce. */
#define th_env_topic_create(env, name, partitions) \
    th_env_topic_create_at(__FILE__, __LINE__, (env), (name), (partitions))

/* ------------------------------------------------------------------------ */
/* PostgreSQL (libpq, blocking)                                              */
/* ------------------------------------------------------------------------ */

/* Connects; asserts success. Close with PQfinish. */
#define th_pg_connect(url) th_pg_connect_at(__FILE__, __LINE__, (url))

/*
 * The SQL helpers take a printf format: write a literal '%' as "%%", and
 * quote values you interpolate (or keep them to numbers and known names).
 */

/* th_sql(conn, fmt, ...): runs a statement (or several separated by ';');
 * asserts success. */
#define th_sql(conn, ...) th_sql_at(__FILE__, __LINE__, (conn), __VA_ARGS__)

/* long long th_sql_int(conn, fmt, ...): the first column of the first row as
 * an integer; asserts that there is a row and the value is a non-NULL integer. */
#define th_sql_int(conn, ...) th_sql_int_at(__FILE__, __LINE__, (conn), __VA_ARGS__)

/* char *th_sql_text(conn, fmt, ...): the first column of the first row as a
 * string the caller frees with free(), or NULL for an SQL NULL; asserts that
 * there is a row. */
#define th_sql_text(conn, ...) th_sql_text_at(__FILE__, __LINE__, (conn), __VA_ARGS__)

/*
 * Runs a statement that may fail. Returns 0 on success (errbuf gets ""), or
 * -1 with the server's primary error message (no "ERROR:" prefix, no
 * trailing newline) in errbuf. errbuf may be NULL when n is 0.
 */
int th_sql_try(PGconn *conn, char *errbuf, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * Creates database `name` in env (dropped with the environment) and returns
 * its URL, which the caller frees with free(). Asserts success.
 */
#define th_createdb(env, name) th_createdb_at(__FILE__, __LINE__, (env), (name))

/* ------------------------------------------------------------------------ */
/* Processes and files                                                       */
/* ------------------------------------------------------------------------ */

/*
 * Starts argv[0] (a path, or a name looked up in PATH) with argv, stdin from
 * /dev/null, stdout and stderr appended to log_path (created if needed;
 * NULL: inherited), the environment inherited. The child gets SIGKILL if the
 * test process dies, and is killed at exit if still running. Asserts that
 * the fork succeeded; an exec failure shows as exit status 127 and a line
 * in the log.
 */
#define th_spawn(argv, log_path) th_spawn_at(__FILE__, __LINE__, (argv), (log_path))

/*
 * Waits up to timeout_ms for child `pid` to exit. Returns 0 and stores its
 * raw wait status in *status (optional; use WIFEXITED/WEXITSTATUS), or -1
 * when it is still running at the deadline.
 */
int th_wait_exit(pid_t pid, int timeout_ms, int *status);

/* Sends sig to pid. Returns 0, or -1 when the process is gone. */
int th_kill(pid_t pid, int sig);

/* True when the file exists and contains needle. */
bool th_file_contains(const char *path, const char *needle);

/* Reads a whole file, NUL-terminated (caller frees); *len (optional) gets its
 * length. NULL when it cannot be read. */
char *th_read_file(const char *path, size_t *len);

/* The running test program's own path (to re-run it as a helper process). */
const char *th_self_exe(void);

/* Polls until the file contains needle; false at the deadline. */
bool th_wait_file_contains(const char *path, const char *needle, int timeout_ms);

/*
 * Runs argv to completion with stdin from /dev/null and stderr inherited,
 * capturing stdout into *out (NUL-terminated, caller frees; out may be NULL
 * to discard). Returns the exit code, 128+signal when killed by a signal, or
 * -1 when it did not finish within timeout_ms (it is then killed).
 */
int th_run(const char *const argv[], char **out, int timeout_ms);

/*
 * A scratch directory private to this test (created on first use), for
 * config files and logs. Removed at exit when the test passes, kept (and
 * named) when it fails.
 */
const char *th_tmpdir(void);

/* Writes `text` to file `path`, replacing it; asserts success. */
#define th_write_file(path, text) th_write_file_at(__FILE__, __LINE__, (path), (text))

/* ------------------------------------------------------------------------ */
/* Kafka through kcat                                                        */
/* ------------------------------------------------------------------------ */

/* One consumed record. Every pointer is owned by the record array. */
typedef struct th_record {
    int32_t partition;
    int64_t offset;
    char *key;      /* NUL-terminated; NULL when the record has no key */
    size_t key_len; /* bytes in key (keys may hold NULs) */
    char *value;    /* NUL-terminated; NULL for a null value (tombstone) */
    size_t value_len;
    char *headers; /* as kcat prints them: "name=value,name=value"; "" when none */
} th_record_t;

/*
 * Reads topic from the beginning with kcat until at least `want` records have
 * been seen or timeout_ms passes (kcat is rerun until then; each run reads
 * the whole topic). On return *out holds the records of the last run, sorted
 * by (partition, offset), and *n their count; free with th_records_free.
 * Returns 0 when *n >= want, -1 at the deadline (with what was read).
 * Values and keys may contain anything except that kcat must be able to print
 * them; header values must not contain ','.
 */
int th_kcat_consume(const char *brokers, const char *topic, size_t want, int timeout_ms,
                    th_record_t **out, size_t *n);

void th_records_free(th_record_t *recs, size_t n);

/*
 * Copies the value of header `name` of rec into buf (size n, truncated) and
 * returns buf, or returns NULL when the record has no such header. A header
 * with a null value reads as "NULL" (kcat's rendering).
 */
const char *th_record_header(const th_record_t *rec, const char *name, char *buf, size_t n);

/*
 * Produces one record with kcat -P: `key` (NULL for none), `value` (the
 * exact bytes of the string), headers a NULL-terminated array of
 * "name=value" strings (or NULL). Returns kcat's exit code (0 once the record
 * was delivered), or -1 on timeout.
 */
int th_kcat_produce(const char *brokers, const char *topic, const char *key, const char *value,
                    const char *const headers[], int timeout_ms);

/* ------------------------------------------------------------------------ */
/* The functions behind the asserting macros: they take the caller's file and
 * line so that a failure points at the test, not at the harness.            */
/* ------------------------------------------------------------------------ */

void th_env_stop_at(const char *file, int line, th_env_t *env);
void th_env_pg_stop_at(const char *file, int line, th_env_t *env, const char *mode);
void th_env_pg_start_at(const char *file, int line, th_env_t *env);
void th_env_pg_restart_at(const char *file, int line, th_env_t *env, const char *mode);
void th_env_broker_down_at(const char *file, int line, th_env_t *env, int id);
void th_env_broker_up_at(const char *file, int line, th_env_t *env, int id);
void th_env_topic_create_at(const char *file, int line, th_env_t *env, const char *name,
                            int partitions);
PGconn *th_pg_connect_at(const char *file, int line, const char *url);
void th_sql_at(const char *file, int line, PGconn *conn, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
long long th_sql_int_at(const char *file, int line, PGconn *conn, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
char *th_sql_text_at(const char *file, int line, PGconn *conn, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
char *th_createdb_at(const char *file, int line, th_env_t *env, const char *name);
pid_t th_spawn_at(const char *file, int line, const char *const argv[], const char *log_path);
void th_write_file_at(const char *file, int line, const char *path, const char *text);

/* ------------------------------------------------------------------------ */
/* Waiting                                                                   */
/* ------------------------------------------------------------------------ */

/* Calls cond(arg) every poll_ms until it returns true (then returns true) or
 * timeout_ms passes (then returns false). cond runs at least once. */
bool th_wait_until(bool (*cond)(void *), void *arg, int timeout_ms, int poll_ms);

/* True when sql's first value is true (an SQL error fails the test). */
bool th_sql_true(PGconn *conn, const char *sql);

/* th_wait_until for a query: polls sql every poll_ms until it returns true. */
bool th_wait_sql(PGconn *conn, const char *sql, int timeout_ms, int poll_ms);

/* Monotonic milliseconds. */
int64_t th_now_ms(void);

/* Sleeps ms milliseconds: only for use inside a bounded polling loop. */
void th_sleep_ms(int ms);

#endif /* SL_TEST_HARNESS_H */
