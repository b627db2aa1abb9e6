/*
 * tests/integration/harness.c - implementation of the integration-test harness.
 *
 * Design notes for whoever extends this file:
 *
 *   - A test is one process. Everything it starts is recorded in two small
 *     static registries: environments (by directory, copied, because the
 *     caller's th_env_t may live in main()'s frame, which is gone when the
 *     exit hook runs) and spawned processes (pid, log path, wait status).
 *     One atexit hook, installed on first use and active only in the test's
 *     own process (never in a forked child), kills leftover children,
 *     dumps logs when the test failed, stops environments and removes the
 *     scratch directory.
 *
 *   - Forked children never return into test code: they exec or _exit(127),
 *     so no atexit hook and no stdio buffer of the parent runs twice. They
 *     ask for SIGKILL when the test dies (PR_SET_PDEATHSIG); environments
 *     are covered by dev-env's watchdog (SLUICE_ENV_WATCH_PID).
 *
 *   - Failing helpers call th_fail_at() with the caller's file and line
 *     (the header wraps them in macros), which exit(1)s. Code that runs
 *     inside the exit hook must not fail that way: it uses the *_quiet
 *     variants that only report.
 *
 *   - Every wait is a bounded poll of a condition.
 */
#include "harness.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SL_SOURCE_DIR
#error "SL_SOURCE_DIR must be defined (tests/integration/CMakeLists.txt does it)"
#endif
#ifndef SL_TEST_BROKER_BIN
#error "SL_TEST_BROKER_BIN must be defined (tests/integration/CMakeLists.txt does it)"
#endif

#define TH_DEV_ENV SL_SOURCE_DIR "/scripts/dev-env"

/* Registry sizes: a test that needs more is doing too much in one file. */
#define TH_ENV_MAX 8
#define TH_PROC_MAX 128

/* Lines of each log shown when a test fails. */
#define TH_FAIL_LOG_LINES 40

/* Largest output th_run keeps (kcat reading a big topic stays far below). */
#define TH_RUN_OUT_MAX (256u * 1024u * 1024u)

typedef struct th_env_slot {
    bool used;
    char dir[TH_PATH_MAX];
} th_env_slot_t;

typedef struct th_proc {
    pid_t pid;             /* 0 = free slot */
    bool reaped;           /* waitpid() has collected it */
    int status;            /* raw wait status once reaped */
    char log[TH_PATH_MAX]; /* "" when output was inherited */
} th_proc_t;

static th_env_slot_t th_envs[TH_ENV_MAX];
static th_proc_t th_procs[TH_PROC_MAX];
static pid_t th_main_pid; /* the test process; 0 until th_init() */
static bool th_failed;    /* a failure is being reported */
static bool th_exiting;   /* the exit hook is running */
static int64_t th_t0_ms;  /* start time for TH_LOG */
static char th_tmp[TH_PATH_MAX];
static unsigned th_tmp_seq; /* unique names inside th_tmp */

static void th_at_exit(void);

/* ------------------------------------------------------------------------ */
/* Basics                                                                    */
/* ------------------------------------------------------------------------ */

int64_t
th_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
th_sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void
th_init(void)
{
    if (th_main_pid != 0)
        return;
    th_main_pid = getpid();
    if (th_t0_ms == 0)
        th_t0_ms = th_now_ms();
    if (atexit(th_at_exit) != 0) {
        fprintf(stderr, "harness: atexit failed\n");
        exit(1);
    }
    /* A write to a closed pipe (a dead child) must be an error, not death. */
    signal(SIGPIPE, SIG_IGN);
}

void
th_log(const char *fmt, ...)
{
    if (th_t0_ms == 0)
        th_t0_ms = th_now_ms();
    int64_t el = th_now_ms() - th_t0_ms;
    fflush(stdout);
    fprintf(stderr, "# +%lld.%03llds ", (long long)(el / 1000), (long long)(el % 1000));
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void
th_fail_at(const char *file, int line, const char *cond, const char *fmt, ...)
{
    fflush(stdout);
    fprintf(stderr, "FAIL %s:%d: ", file, line);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (cond != NULL)
        fprintf(stderr, "  condition: %s\n", cond);
    th_failed = true;
    if (th_exiting || (th_main_pid != 0 && getpid() != th_main_pid))
        _exit(1); /* exit() inside an atexit hook, or in a child, is wrong */
    exit(1);
}

/* Out of memory in the harness is a test failure like any other. */
static void *
th_xmalloc_at(const char *file, int line, size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        th_fail_at(file, line, NULL, "out of memory (%zu bytes)", n);
    return p;
}

static char *
th_xstrdup_at(const char *file, int line, const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = th_xmalloc_at(file, line, n);
    memcpy(p, s, n);
    return p;
}

/* vasprintf without _GNU_SOURCE; fails the test on allocation failure. */
static char *
th_vformat_at(const char *file, int line, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        th_fail_at(file, line, NULL, "bad format string \"%s\"", fmt);
    char *s = th_xmalloc_at(file, line, (size_t)n + 1);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

/* Prints the last `lines` lines of path to stderr, framed. */
static void
th_dump_tail(const char *what, const char *path, int lines)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return;
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return;
    }
    long size = ftell(f);
    /* Read at most the last 64 KiB: enough for TH_FAIL_LOG_LINES lines. */
    long start = size > 65536 ? size - 65536 : 0;
    char *buf = malloc((size_t)(size - start) + 1);
    if (buf == NULL || fseek(f, start, SEEK_SET) != 0) {
        free(buf);
        fclose(f);
        return;
    }
    size_t got = fread(buf, 1, (size_t)(size - start), f);
    fclose(f);
    buf[got] = '\0';
    size_t pos = got;
    int seen = 0;
    if (pos > 0 && buf[pos - 1] == '\n')
        pos--;
    while (pos > 0) {
        if (buf[pos - 1] == '\n' && ++seen == lines)
            break;
        pos--;
    }
    fprintf(stderr, "---- %s (%s), last %d lines ----\n", what, path, lines);
    fwrite(buf + pos, 1, got - pos, stderr);
    if (got > 0 && buf[got - 1] != '\n')
        fputc('\n', stderr);
    fprintf(stderr, "---- end of %s ----\n", what);
    free(buf);
}

/* ------------------------------------------------------------------------ */
/* Processes                                                                 */
/* ------------------------------------------------------------------------ */

static th_proc_t *
th_proc_find(pid_t pid)
{
    for (size_t i = 0; i < TH_PROC_MAX; i++) {
        if (th_procs[i].pid == pid)
            return &th_procs[i];
    }
    return NULL;
}

/*
 * Runs in a freshly forked child: die with the test, and give up if the test
 * died before we could ask for that.
 */
static void
th_child_setup(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    signal(SIGPIPE, SIG_DFL);
}

pid_t
th_spawn_at(const char *file, int line, const char *const argv[], const char *log_path)
{
    th_init();
    TH_ASSERT(argv != NULL && argv[0] != NULL, "th_spawn: empty argv (called from %s:%d)", file,
              line);
    th_proc_t *slot = th_proc_find(0);
    if (slot == NULL)
        th_fail_at(file, line, NULL, "th_spawn: more than %d processes", TH_PROC_MAX);
    if (log_path != NULL && strlen(log_path) >= sizeof(slot->log))
        th_fail_at(file, line, NULL, "th_spawn: log path too long");

    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        th_fail_at(file, line, NULL, "th_spawn %s: fork: %s", argv[0], strerror(errno));
    if (pid == 0) {
        th_child_setup(parent);
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0) {
            dup2(in, STDIN_FILENO);
            close(in);
        }
        if (log_path != NULL) {
            int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
            if (fd < 0) {
                fprintf(stderr, "th_spawn: open %s: %s\n", log_path, strerror(errno));
                _exit(127);
            }
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "th_spawn: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    slot->pid = pid;
    slot->reaped = false;
    slot->status = 0;
    snprintf(slot->log, sizeof(slot->log), "%s", log_path ? log_path : "");
    return pid;
}

int
th_wait_exit(pid_t pid, int timeout_ms, int *status)
{
    th_proc_t *p = th_proc_find(pid);
    if (p != NULL && p->reaped) {
        if (status)
            *status = p->status;
        return 0;
    }
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        int st = 0;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (p != NULL) {
                p->reaped = true;
                p->status = st;
            }
            if (status)
                *status = st;
            return 0;
        }
        if (r < 0 && errno != EINTR) {
            /* Not our child (or already collected elsewhere): nothing to wait for. */
            if (status)
                *status = 0;
            return 0;
        }
        if (th_now_ms() >= deadline)
            return -1;
        th_sleep_ms(10);
    }
}

int
th_kill(pid_t pid, int sig)
{
    th_proc_t *p = th_proc_find(pid);
    if (pid <= 0 || (p != NULL && p->reaped))
        return -1; /* never signal a pid that may have been reused */
    return kill(pid, sig) == 0 ? 0 : -1;
}

/* Reads all of fd into a growing buffer until EOF or the deadline. */
static int
th_read_all(int fd, char **buf, size_t *len, int64_t deadline)
{
    size_t cap = 4096;
    *len = 0;
    *buf = malloc(cap);
    if (*buf == NULL)
        return -1;
    for (;;) {
        int64_t left = deadline - th_now_ms();
        if (left <= 0)
            return -1;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, (int)(left > 1000 ? 1000 : left));
        if (rc < 0 && errno != EINTR)
            return -1;
        if (rc <= 0)
            continue;
        if (*len + 4096 + 1 > cap) {
            if (cap >= TH_RUN_OUT_MAX)
                return -1;
            char *nb = realloc(*buf, cap * 2);
            if (nb == NULL)
                return -1;
            *buf = nb;
            cap *= 2;
        }
        ssize_t got = read(fd, *buf + *len, cap - *len - 1);
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return -1;
        }
        if (got == 0)
            return 0;
        *len += (size_t)got;
    }
}

/* th_run with the output length, for binary-safe parsing (kcat). */
static int
th_run_len(const char *const argv[], char **out, size_t *out_len, int timeout_ms)
{
    th_init();
    int fds[2];
    if (out)
        *out = NULL;
    if (out_len)
        *out_len = 0;
    if (pipe(fds) != 0) {
        fprintf(stderr, "th_run %s: pipe: %s\n", argv[0], strerror(errno));
        return -1;
    }
    fflush(stdout);
    fflush(stderr);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "th_run %s: fork: %s\n", argv[0], strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        th_child_setup(parent);
        int in = open("/dev/null", O_RDONLY);
        if (in >= 0) {
            dup2(in, STDIN_FILENO);
            close(in);
        }
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execvp(argv[0], (char *const *)argv);
        fprintf(stderr, "th_run: exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    int64_t deadline = th_now_ms() + timeout_ms;
    char *buf = NULL;
    size_t len = 0;
    int rrc = th_read_all(fds[0], &buf, &len, deadline);
    close(fds[0]);

    int st = 0;
    bool exited = false;
    while (rrc == 0) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            exited = true;
            break;
        }
        if (th_now_ms() >= deadline)
            break;
        th_sleep_ms(5);
    }
    if (!exited) {
        kill(pid, SIGKILL);
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
        }
        free(buf);
        fprintf(stderr, "th_run %s: %s after %d ms\n", argv[0],
                rrc == 0 ? "did not exit" : "no end of output (or out of memory)", timeout_ms);
        return -1;
    }
    if (buf != NULL)
        buf[len] = '\0';
    if (out) {
        *out = buf;
        if (out_len)
            *out_len = len;
    } else {
        free(buf);
    }
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return -1;
}

int
th_run(const char *const argv[], char **out, int timeout_ms)
{
    return th_run_len(argv, out, NULL, timeout_ms);
}

char *
th_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    char *buf = NULL;
    size_t n = 0;
    /* A regular file never blocks; the deadline only bounds pathological cases. */
    int rc = th_read_all(fd, &buf, &n, th_now_ms() + 10000);
    close(fd);
    if (rc != 0) {
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

const char *
th_self_exe(void)
{
    static char path[TH_PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    TH_ASSERT(n > 0, "readlink /proc/self/exe works (%s)", strerror(errno));
    path[n] = '\0';
    return path;
}

bool
th_file_contains(const char *path, const char *needle)
{
    size_t len = 0;
    char *buf = th_read_file(path, &len);
    if (buf == NULL)
        return false;
    size_t nl = strlen(needle);
    bool found = false;
    for (size_t i = 0; nl <= len && i <= len - nl; i++) {
        if (memcmp(buf + i, needle, nl) == 0) {
            found = true;
            break;
        }
    }
    free(buf);
    return found;
}

bool
th_wait_file_contains(const char *path, const char *needle, int timeout_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        if (th_file_contains(path, needle))
            return true;
        if (th_now_ms() >= deadline)
            return false;
        th_sleep_ms(20);
    }
}

bool
th_wait_until(bool (*cond)(void *), void *arg, int timeout_ms, int poll_ms)
{
    int64_t deadline = th_now_ms() + timeout_ms;
    for (;;) {
        if (cond(arg))
            return true;
        if (th_now_ms() >= deadline)
            return false;
        th_sleep_ms(poll_ms > 0 ? poll_ms : 1);
    }
}

bool
th_sql_true(PGconn *conn, const char *sql)
{
    char *v = th_sql_text(conn, "%s", sql);
    bool ok = v != NULL && strcmp(v, "t") == 0;
    free(v);
    return ok;
}

typedef struct th_sql_arg {
    PGconn *conn;
    const char *sql;
} th_sql_arg_t;

static bool
th_sql_cond(void *p)
{
    th_sql_arg_t *a = p;
    return th_sql_true(a->conn, a->sql);
}

bool
th_wait_sql(PGconn *conn, const char *sql, int timeout_ms, int poll_ms)
{
    th_sql_arg_t a = {conn, sql};
    return th_wait_until(th_sql_cond, &a, timeout_ms, poll_ms);
}

const char *
th_tmpdir(void)
{
    th_init();
    if (th_tmp[0] == '\0') {
        char tmpl[] = "/tmp/sluice-test.XXXXXX";
        if (mkdtemp(tmpl) == NULL)
            TH_FAIL("th_tmpdir: mkdtemp: %s", strerror(errno));
        snprintf(th_tmp, sizeof(th_tmp), "%s", tmpl);
    }
    return th_tmp;
}

void
th_write_file_at(const char *file, int line, const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL)
        th_fail_at(file, line, NULL, "write %s: %s", path, strerror(errno));
    size_t n = strlen(text);
    bool ok = fwrite(text, 1, n, f) == n;
    ok = (fclose(f) == 0) && ok;
    if (!ok)
        th_fail_at(file, line, NULL, "write %s: %s", path, strerror(errno));
}

/* ------------------------------------------------------------------------ */
/* Environments                                                              */
/* ------------------------------------------------------------------------ */

/* Runs dev-env with up to 4 arguments; returns its exit code (-1 timeout). */
static int
th_dev_env(const char *a1, const char *a2, const char *a3, const char *a4, char **out,
           int timeout_ms)
{
    const char *argv[] = {TH_DEV_ENV, a1, a2, a3, a4, NULL};
    return th_run(argv, out, timeout_ms);
}

static int
th_env_stop_dir_quiet(const char *dir)
{
    int rc = th_dev_env("stop", dir, NULL, NULL, NULL, TH_ENV_OP_TIMEOUT_MS);
    if (rc != 0)
        fprintf(stderr, "harness: dev-env stop %s failed (exit %d)\n", dir, rc);
    return rc == 0 ? 0 : -1;
}

/* Undoes the quoting of bash's printf %q for the plain values dev-env prints. */
static int
th_unquote(const char *in, char *out, size_t n)
{
    size_t o = 0;
    bool squote = false;
    if (strncmp(in, "$'", 2) == 0)
        return -1; /* ANSI-C quoting: dev-env never produces it for our values */
    for (const char *p = in; *p; p++) {
        char c = *p;
        if (squote) {
            if (c == '\'') {
                squote = false;
                continue;
            }
        } else if (c == '\'') {
            squote = true;
            continue;
        } else if (c == '\\' && p[1] != '\0') {
            c = *++p;
        }
        if (o + 1 >= n)
            return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return squote ? -1 : 0;
}

/* Copies src into dst (size n). Returns -1, leaving dst empty, if it does not fit. */
static int
th_copy(char *dst, size_t n, const char *src)
{
    size_t len = strlen(src);
    if (len >= n) {
        dst[0] = '\0';
        return -1;
    }
    memcpy(dst, src, len + 1);
    return 0;
}

/* Parses dev-env's `export K=V` lines into env; setenv()s each. */
static int
th_env_parse(th_env_t *env, char *text)
{
    char *save = NULL;
    for (char *ln = strtok_r(text, "\n", &save); ln != NULL; ln = strtok_r(NULL, "\n", &save)) {
        if (strncmp(ln, "export ", 7) != 0)
            continue;
        char *key = ln + 7;
        char *eq = strchr(key, '=');
        if (eq == NULL)
            continue;
        *eq = '\0';
        char val[TH_PATH_MAX];
        if (th_unquote(eq + 1, val, sizeof(val)) != 0) {
            fprintf(stderr, "harness: cannot parse dev-env line for %s\n", key);
            return -1;
        }
        if (setenv(key, val, 1) != 0)
            return -1;
        int rc = 0;
        if (strcmp(key, "SLUICE_ENV_DIR") == 0)
            rc = th_copy(env->dir, sizeof(env->dir), val);
        else if (strcmp(key, "SLUICE_PG_URL") == 0)
            rc = th_copy(env->pg_url, sizeof(env->pg_url), val);
        else if (strcmp(key, "PGPORT") == 0)
            env->pg_port = atoi(val);
        else if (strcmp(key, "KAFKA_BROKERS") == 0)
            rc = th_copy(env->brokers, sizeof(env->brokers), val);
        if (rc != 0) {
            fprintf(stderr, "harness: dev-env value of %s too long\n", key);
            return -1;
        }
    }
    if (env->dir[0] == '\0' || env->pg_url[0] == '\0' || env->pg_port <= 0 ||
        env->brokers[0] == '\0') {
        fprintf(stderr, "harness: dev-env start printed incomplete settings\n");
        return -1;
    }
    return 0;
}

int
th_env_start(th_env_t *env)
{
    th_init();
    memset(env, 0, sizeof(*env));
    th_env_slot_t *slot = NULL;
    for (size_t i = 0; i < TH_ENV_MAX && slot == NULL; i++) {
        if (!th_envs[i].used)
            slot = &th_envs[i];
    }
    if (slot == NULL) {
        fprintf(stderr, "harness: more than %d environments\n", TH_ENV_MAX);
        return -1;
    }
    char pid[32];
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    if (setenv("SLUICE_TEST_BROKER", SL_TEST_BROKER_BIN, 1) != 0 ||
        setenv("SLUICE_ENV_WATCH_PID", pid, 1) != 0) {
        fprintf(stderr, "harness: setenv: %s\n", strerror(errno));
        return -1;
    }
    int64_t t0 = th_now_ms();
    char *out = NULL;
    int rc = th_dev_env("start", NULL, NULL, NULL, &out, TH_ENV_START_TIMEOUT_MS);
    if (rc != 0) {
        fprintf(stderr, "harness: scripts/dev-env start failed (exit %d)\n", rc);
        free(out);
        return -1;
    }
    rc = th_env_parse(env, out);
    free(out);
    if (rc != 0) {
        if (env->dir[0] != '\0')
            th_env_stop_dir_quiet(env->dir);
        return -1;
    }
    slot->used = true;
    snprintf(slot->dir, sizeof(slot->dir), "%s", env->dir);
    env->running = true;
    th_log("environment %s: postgres port %d, kafka %s (%lld ms)", env->dir, env->pg_port,
           env->brokers, (long long)(th_now_ms() - t0));
    return 0;
}

static void
th_env_unregister(const char *dir)
{
    for (size_t i = 0; i < TH_ENV_MAX; i++) {
        if (th_envs[i].used && strcmp(th_envs[i].dir, dir) == 0)
            th_envs[i].used = false;
    }
}

void
th_env_stop_at(const char *file, int line, th_env_t *env)
{
    if (!env->running)
        return;
    env->running = false;
    th_env_unregister(env->dir);
    if (th_env_stop_dir_quiet(env->dir) != 0)
        th_fail_at(file, line, NULL, "dev-env stop %s failed", env->dir);
}

/* Runs a dev-env subcommand on a running env, failing the test on error. */
static void
th_env_cmd_at(const char *file, int line, th_env_t *env, const char *cmd, const char *a1,
              const char *a2)
{
    if (!env->running)
        th_fail_at(file, line, NULL, "dev-env %s: environment not running", cmd);
    int rc = th_dev_env(cmd, env->dir, a1, a2, NULL, TH_ENV_OP_TIMEOUT_MS);
    if (rc != 0)
        th_fail_at(file, line, NULL, "dev-env %s %s %s %s failed (exit %d)", cmd, env->dir,
                   a1 ? a1 : "", a2 ? a2 : "", rc);
}

void
th_env_pg_stop_at(const char *file, int line, th_env_t *env, const char *mode)
{
    th_env_cmd_at(file, line, env, "pg-stop", mode ? mode : "fast", NULL);
}

void
th_env_pg_start_at(const char *file, int line, th_env_t *env)
{
    th_env_cmd_at(file, line, env, "pg-start", NULL, NULL);
}

void
th_env_pg_restart_at(const char *file, int line, th_env_t *env, const char *mode)
{
    th_env_cmd_at(file, line, env, "pg-restart", mode ? mode : "fast", NULL);
}

static void
th_env_broker_cmd_at(const char *file, int line, th_env_t *env, const char *verb, int id)
{
    char ids[32];
    if (id < 0)
        snprintf(ids, sizeof(ids), "all");
    else
        snprintf(ids, sizeof(ids), "%d", id);
    const char *argv[] = {TH_DEV_ENV, "broker", env->dir, verb, ids, NULL};
    if (!env->running)
        th_fail_at(file, line, NULL, "broker %s: environment not running", verb);
    int rc = th_run(argv, NULL, TH_ENV_OP_TIMEOUT_MS);
    if (rc != 0)
        th_fail_at(file, line, NULL, "broker %s %s failed (exit %d)", verb, ids, rc);
}

void
th_env_broker_down_at(const char *file, int line, th_env_t *env, int id)
{
    th_env_broker_cmd_at(file, line, env, "down", id);
}

void
th_env_broker_up_at(const char *file, int line, th_env_t *env, int id)
{
    th_env_broker_cmd_at(file, line, env, "up", id);
}

void
th_env_topic_create_at(const char *file, int line, th_env_t *env, const char *name, int partitions)
{
    char ps[32];
    snprintf(ps, sizeof(ps), "%d", partitions);
    const char *argv[] = {TH_DEV_ENV, "broker", env->dir, "topic", name, ps, NULL};
    if (!env->running)
        th_fail_at(file, line, NULL, "topic %s: environment not running", name);
    int rc = th_run(argv, NULL, TH_ENV_OP_TIMEOUT_MS);
    if (rc != 0)
        th_fail_at(file, line, NULL, "create topic %s (%d partitions) failed (exit %d)", name,
                   partitions, rc);
}

/* ------------------------------------------------------------------------ */
/* PostgreSQL                                                                */
/* ------------------------------------------------------------------------ */

PGconn *
th_pg_connect_at(const char *file, int line, const char *url)
{
    PGconn *conn = PQconnectdb(url);
    if (conn == NULL)
        th_fail_at(file, line, NULL, "connect %s: out of memory", url);
    if (PQstatus(conn) != CONNECTION_OK) {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", PQerrorMessage(conn));
        msg[strcspn(msg, "\n")] = '\0';
        PQfinish(conn);
        th_fail_at(file, line, NULL, "connect %s: %s", url, msg);
    }
    return conn;
}

/* Executes sql; on failure fails the test naming the statement. */
static PGresult *
th_exec_at(const char *file, int line, PGconn *conn, const char *sql)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        char msg[2048];
        snprintf(msg, sizeof(msg), "%s", res ? PQresultErrorMessage(res) : PQerrorMessage(conn));
        size_t n = strlen(msg);
        while (n > 0 && msg[n - 1] == '\n')
            msg[--n] = '\0';
        PQclear(res);
        th_fail_at(file, line, NULL, "SQL failed: %s\n  statement: %.2000s", msg, sql);
    }
    return res;
}

void
th_sql_at(const char *file, int line, PGconn *conn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = th_vformat_at(file, line, fmt, ap);
    va_end(ap);
    PGresult *res = th_exec_at(file, line, conn, sql);
    PQclear(res);
    free(sql);
}

/* Runs a query and returns its result after checking it has a first row. */
static PGresult *
th_query_row_at(const char *file, int line, PGconn *conn, const char *fmt, va_list ap)
{
    char *sql = th_vformat_at(file, line, fmt, ap);
    PGresult *res = th_exec_at(file, line, conn, sql);
    if (PQntuples(res) < 1 || PQnfields(res) < 1) {
        PQclear(res);
        /* sql is leaked on purpose: the process is about to exit. */
        th_fail_at(file, line, NULL, "query returned no row: %.2000s", sql);
    }
    free(sql);
    return res;
}

long long
th_sql_int_at(const char *file, int line, PGconn *conn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *res = th_query_row_at(file, line, conn, fmt, ap);
    va_end(ap);
    if (PQgetisnull(res, 0, 0)) {
        PQclear(res);
        th_fail_at(file, line, NULL, "expected an integer, got NULL");
    }
    const char *v = PQgetvalue(res, 0, 0);
    char *end = NULL;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0') {
        char copy[128];
        snprintf(copy, sizeof(copy), "%s", v);
        PQclear(res);
        th_fail_at(file, line, NULL, "expected an integer, got \"%s\"", copy);
    }
    PQclear(res);
    return n;
}

char *
th_sql_text_at(const char *file, int line, PGconn *conn, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    PGresult *res = th_query_row_at(file, line, conn, fmt, ap);
    va_end(ap);
    char *out = NULL;
    if (!PQgetisnull(res, 0, 0))
        out = th_xstrdup_at(file, line, PQgetvalue(res, 0, 0));
    PQclear(res);
    return out;
}

int
th_sql_try(PGconn *conn, char *errbuf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *sql = th_vformat_at(__FILE__, __LINE__, fmt, ap);
    va_end(ap);
    PGresult *res = PQexec(conn, sql);
    free(sql);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        if (n > 0)
            errbuf[0] = '\0';
        PQclear(res);
        return 0;
    }
    if (n > 0) {
        const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
        snprintf(errbuf, n, "%s", primary ? primary : PQerrorMessage(conn));
        size_t len = strlen(errbuf);
        while (len > 0 && errbuf[len - 1] == '\n')
            errbuf[--len] = '\0';
    }
    PQclear(res);
    return -1;
}

char *
th_createdb_at(const char *file, int line, th_env_t *env, const char *name)
{
    for (const char *p = name; *p; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            th_fail_at(file, line, NULL,
                       "th_createdb: use a plain lower-case name ([a-z0-9_]), not \"%s\"", name);
    }
    PGconn *conn = th_pg_connect_at(file, line, env->pg_url);
    th_sql_at(file, line, conn, "CREATE DATABASE \"%s\"", name);
    PQfinish(conn);
    size_t n = strlen(name) + 128;
    char *url = th_xmalloc_at(file, line, n);
    snprintf(url, n, "postgresql://postgres@127.0.0.1:%d/%s", env->pg_port, name);
    return url;
}

/* ------------------------------------------------------------------------ */
/* Kafka through kcat                                                        */
/* ------------------------------------------------------------------------ */

/*
 * kcat output format: per record
 *   partition US offset US keylen US valuelen US key US value US headers RS
 * with US = 0x1f and RS = 0x1e. The lengths (-1 for NULL) let us cut key and
 * value exactly, whatever bytes they hold; only headers rely on separators.
 */
#define TH_KCAT_FORMAT "%p\\x1f%o\\x1f%K\\x1f%S\\x1f%k\\x1f%s\\x1f%h\\x1e"
#define TH_US '\x1f'
#define TH_RS '\x1e'

void
th_records_free(th_record_t *recs, size_t n)
{
    if (recs == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        free(recs[i].key);
        free(recs[i].value);
        free(recs[i].headers);
    }
    free(recs);
}

/* Parses a decimal number ending at TH_US; advances *p past the separator. */
static int
th_parse_num(const char **p, const char *end, long long *out)
{
    const char *s = *p;
    const char *us = memchr(s, TH_US, (size_t)(end - s));
    if (us == NULL || us == s)
        return -1;
    char tmp[32];
    size_t len = (size_t)(us - s);
    if (len >= sizeof(tmp))
        return -1;
    memcpy(tmp, s, len);
    tmp[len] = '\0';
    char *e = NULL;
    errno = 0;
    *out = strtoll(tmp, &e, 10);
    if (errno != 0 || *e != '\0')
        return -1;
    *p = us + 1;
    return 0;
}

/* Copies len bytes (NULL when len < 0) into a new NUL-terminated string. */
static int
th_take_bytes(const char **p, const char *end, long long len, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    size_t n = len > 0 ? (size_t)len : 0;
    if ((size_t)(end - *p) < n + 1 || (*p)[n] != TH_US)
        return -1;
    if (len >= 0) {
        *out = malloc(n + 1);
        if (*out == NULL)
            return -1;
        memcpy(*out, *p, n);
        (*out)[n] = '\0';
        *out_len = n;
    }
    *p += n + 1;
    return 0;
}

static int
th_record_cmp(const void *a, const void *b)
{
    const th_record_t *x = a, *y = b;
    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    if (x->offset != y->offset)
        return x->offset < y->offset ? -1 : 1;
    return 0;
}

/* Parses one kcat run's output. Returns 0, or -1 on malformed output. */
static int
th_kcat_parse(const char *buf, size_t len, th_record_t **out, size_t *n)
{
    size_t cap = 0, cnt = 0;
    th_record_t *recs = NULL;
    const char *p = buf, *end = buf + len;
    while (p < end) {
        if (cnt == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            th_record_t *nr = realloc(recs, ncap * sizeof(*nr));
            if (nr == NULL)
                goto fail;
            recs = nr;
            cap = ncap;
        }
        th_record_t *r = &recs[cnt];
        memset(r, 0, sizeof(*r));
        cnt++;
        long long part, off, klen, vlen;
        if (th_parse_num(&p, end, &part) != 0 || th_parse_num(&p, end, &off) != 0 ||
            th_parse_num(&p, end, &klen) != 0 || th_parse_num(&p, end, &vlen) != 0)
            goto fail;
        r->partition = (int32_t)part;
        r->offset = off;
        if (th_take_bytes(&p, end, klen, &r->key, &r->key_len) != 0 ||
            th_take_bytes(&p, end, vlen, &r->value, &r->value_len) != 0)
            goto fail;
        const char *rs = memchr(p, TH_RS, (size_t)(end - p));
        if (rs == NULL)
            goto fail;
        size_t hl = (size_t)(rs - p);
        r->headers = malloc(hl + 1);
        if (r->headers == NULL)
            goto fail;
        memcpy(r->headers, p, hl);
        r->headers[hl] = '\0';
        p = rs + 1;
    }
    if (cnt > 1)
        qsort(recs, cnt, sizeof(*recs), th_record_cmp);
    *out = recs;
    *n = cnt;
    return 0;
fail:
    th_records_free(recs, cnt);
    return -1;
}

int
th_kcat_consume(const char *brokers, const char *topic, size_t want, int timeout_ms,
                th_record_t **out, size_t *n)
{
    const char *argv[] = {"kcat", "-C", "-q",        "-e", "-b",           brokers, "-t",
                          topic,  "-o", "beginning", "-f", TH_KCAT_FORMAT, NULL};
    int64_t deadline = th_now_ms() + timeout_ms;
    *out = NULL;
    *n = 0;
    for (;;) {
        int64_t left = deadline - th_now_ms();
        int run_ms = (int)(left < TH_KCAT_RUN_TIMEOUT_MS ? left : TH_KCAT_RUN_TIMEOUT_MS);
        if (run_ms < 1000)
            run_ms = 1000; /* let the last attempt finish its metadata round */
        char *buf = NULL;
        size_t len = 0;
        int rc = th_run_len(argv, &buf, &len, run_ms);
        th_record_t *recs = NULL;
        size_t cnt = 0;
        if (rc == 0 && buf != NULL && th_kcat_parse(buf, len, &recs, &cnt) == 0) {
            if (cnt >= *n) {
                th_records_free(*out, *n);
                *out = recs;
                *n = cnt;
            } else {
                th_records_free(recs, cnt);
            }
        } else if (rc == 0 && buf != NULL) {
            fprintf(stderr, "th_kcat_consume %s: cannot parse kcat output (%zu bytes)\n", topic,
                    len);
        }
        free(buf);
        if (*n >= want)
            return 0;
        if (th_now_ms() >= deadline)
            return -1;
        th_sleep_ms(100);
    }
}

const char *
th_record_header(const th_record_t *rec, const char *name, char *buf, size_t n)
{
    size_t nl = strlen(name);
    const char *p = rec->headers;
    while (p != NULL && *p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t vl = len - nl - 1;
            if (n > 0) {
                if (vl >= n)
                    vl = n - 1;
                memcpy(buf, p + nl + 1, vl);
                buf[vl] = '\0';
            }
            return buf;
        }
        p = comma ? comma + 1 : NULL;
    }
    return NULL;
}

int
th_kcat_produce(const char *brokers, const char *topic, const char *key, const char *value,
                const char *const headers[], int timeout_ms)
{
    TH_ASSERT(value != NULL && value[0] != '\0',
              "th_kcat_produce: kcat cannot send an empty value from a file");
    char path[TH_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/kcat-value-%u", th_tmpdir(), th_tmp_seq++);
    th_write_file_at(__FILE__, __LINE__, path, value);

    size_t nh = 0;
    while (headers != NULL && headers[nh] != NULL)
        nh++;
    /* kcat -P -b B -t T [-k K] [-H h]... FILE NULL */
    size_t argc = 7 + 2 + 2 * nh + 2;
    const char **argv = th_xmalloc_at(__FILE__, __LINE__, argc * sizeof(*argv));
    size_t i = 0;
    argv[i++] = "kcat";
    argv[i++] = "-P";
    argv[i++] = "-q";
    argv[i++] = "-b";
    argv[i++] = brokers;
    argv[i++] = "-t";
    argv[i++] = topic;
    if (key != NULL) {
        argv[i++] = "-k";
        argv[i++] = key;
    }
    for (size_t h = 0; h < nh; h++) {
        argv[i++] = "-H";
        argv[i++] = headers[h];
    }
    argv[i++] = path;
    argv[i] = NULL;
    int rc = th_run(argv, NULL, timeout_ms);
    free(argv);
    unlink(path);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Exit hook                                                                 */
/* ------------------------------------------------------------------------ */

/* Ends dev-env's watchdog of dir, so the environment outlives this process. */
static void
th_env_unwatch(const char *dir)
{
    char path[TH_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/watch.pid", dir);
    char *text = th_read_file(path, NULL);
    if (text == NULL)
        return;
    long pid = strtol(text, NULL, 10);
    free(text);
    if (pid > 1)
        kill((pid_t)pid, SIGTERM);
}

static void
th_at_exit(void)
{
    if (th_main_pid == 0 || getpid() != th_main_pid)
        return;
    th_exiting = true;
    fflush(stdout);

    /* Children first: a relay still running would hold connections open. */
    for (size_t i = 0; i < TH_PROC_MAX; i++) {
        th_proc_t *p = &th_procs[i];
        if (p->pid > 0 && !p->reaped) {
            kill(p->pid, SIGKILL);
            th_wait_exit(p->pid, 5000, NULL);
        }
    }

    bool keep =
        th_failed && getenv("TH_KEEP_ENV") != NULL && strcmp(getenv("TH_KEEP_ENV"), "1") == 0;
    if (th_failed) {
        for (size_t i = 0; i < TH_PROC_MAX; i++) {
            if (th_procs[i].pid > 0 && th_procs[i].log[0] != '\0') {
                bool dup = false;
                for (size_t j = 0; j < i; j++)
                    dup = dup ||
                          (th_procs[j].pid > 0 && strcmp(th_procs[j].log, th_procs[i].log) == 0);
                if (!dup)
                    th_dump_tail("process log", th_procs[i].log, TH_FAIL_LOG_LINES);
            }
        }
        for (size_t i = 0; i < TH_ENV_MAX; i++) {
            if (!th_envs[i].used)
                continue;
            char path[TH_PATH_MAX + 32];
            snprintf(path, sizeof(path), "%s/pg.log", th_envs[i].dir);
            th_dump_tail("postgres log", path, TH_FAIL_LOG_LINES);
            snprintf(path, sizeof(path), "%s/broker.log", th_envs[i].dir);
            th_dump_tail("broker log", path, TH_FAIL_LOG_LINES);
        }
    }

    for (size_t i = 0; i < TH_ENV_MAX; i++) {
        if (!th_envs[i].used)
            continue;
        if (keep) {
            th_env_unwatch(th_envs[i].dir);
            fprintf(stderr,
                    "harness: TH_KEEP_ENV=1: environment left running in %s "
                    "(scripts/dev-env stop %s)\n",
                    th_envs[i].dir, th_envs[i].dir);
            continue;
        }
        th_env_stop_dir_quiet(th_envs[i].dir);
        th_envs[i].used = false;
    }

    if (th_tmp[0] != '\0') {
        if (th_failed) {
            fprintf(stderr, "harness: scratch files kept in %s\n", th_tmp);
        } else {
            const char *argv[] = {"rm", "-rf", th_tmp, NULL};
            th_run(argv, NULL, 30000);
        }
    }
}
