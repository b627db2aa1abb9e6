/*
 * tests/bench/bench_relay.c - sl_bench_relay: time a relay draining a backlog.
 *
 *   sl_bench_relay --db CONNINFO --pipeline NAME --n N --log FILE
 *                  --brokers B --kafka-topic KT
 *                  [--timeout-s S] [--broker-pid PID] [--postmaster-pid PID]
 *                  -- RELAY_COMMAND [ARGS...]
 *
 * Starts RELAY_COMMAND (the real `sluice relay --config ...`, writing to the
 * Kafka topic KT) with its stderr in FILE. Then, every SL_BENCH_POLL_MS, it
 * reads two counters until both reach N or the deadline passes:
 *
 *   delivered  sluice.relay_checkpoints.delivered of pipeline NAME: what the
 *              relay has stored as acknowledged (its checkpoint);
 *   in Kafka   the sum of KT's partition high watermarks, minus their sum at
 *              the start: what the broker has appended. It does not depend
 *              on how often the relay writes its checkpoint.
 *
 * Once delivered reaches N it reads the relay's peak resident set (VmHWM in
 * /proc/PID/status), then stops the relay with SIGTERM and waits for it.
 *
 * Timing, all from the fork of the relay, so start-up (connections, Kafka
 * metadata) is included:
 *   seconds        until delivered >= N (what an operator watching
 *                  sluice.relay_status sees); rate = N / seconds;
 *   first_ms       until the first record is in Kafka;
 *   kafka_seconds  until N records are in Kafka; kafka_rate = N / that;
 *   steady_rate    the sustained rate in the middle of the drain, free of
 *                  start-up and tail: records appended to Kafka between the
 *                  first poll that saw >= 10% of N there and the first that
 *                  saw >= 90%, over the time between those polls;
 *   ckpt_gap_ms    the longest time delivered stayed unchanged while the
 *                  relay was delivering (between its first change and N):
 *                  about checkpoint_interval_ms when checkpoints keep up.
 *
 * CPU. Clock ticks from /proc/PID/stat (utime + stime) over the steady window,
 * as a percentage of one core: the relay, every PostgreSQL process (children
 * of --postmaster-pid, the relay's backend and this program's own polling
 * backend included), the relay's backend alone (application_name
 * 'sluice-relay'), the broker (--broker-pid), and the whole machine from
 * /proc/stat (so 200 means both cores of a 2-core machine were busy).
 *
 * Output, one line on stdout:
 *   delivered=D seconds=S rate=R first_ms=F kafka_seconds=S2 kafka_rate=R2 steady_rate=R3
 *   ckpt_gap_ms=G vmhwm_kb=K vmrss_kb=K2 cpu_relay=P cpu_pg=P cpu_backend=P
 *   cpu_broker=P cpu_machine=P cores=C exit=X
 * Exit 1 when the relay exits early, fails to stop, or the deadline passes.
 */
#include "tests/bench/bench.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define PROG "sl_bench_relay"

/* How often the counters are polled: small against the 100 ms checkpoint
 * interval; one primary-key lookup and one ListOffsets per partition. */
#define SL_BENCH_POLL_MS 20
/* Most partitions of the Kafka topic summed. */
#define SL_BENCH_MAX_PARTITIONS 64
/* How long a SIGTERM'ed relay may take to drain and exit before SIGKILL. */
#define SL_BENCH_STOP_S 30
/* Most PostgreSQL processes tracked (a dev-env cluster has about ten). */
#define SL_BENCH_MAX_PIDS 256

/* CPU time of a set of processes at one moment. */
typedef struct cpu_set {
    int n;
    pid_t pid[SL_BENCH_MAX_PIDS];
    int64_t ticks[SL_BENCH_MAX_PIDS];
} cpu_snap_t;

/* utime + stime of pid in clock ticks, or -1 when it is gone. */
static int64_t
proc_ticks(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    /* The command name may hold spaces; fields resume after the last ')'. */
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    unsigned long long utime = 0, stime = 0;
    /* After ") ": state ppid pgrp session tty tpgid flags minflt cminflt
     * majflt cmajflt utime stime (fields 3..15 of proc(5)). */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime) != 2)
        return -1;
    return (int64_t)(utime + stime);
}

/* Parent pid of pid, or -1. */
static pid_t
proc_ppid(pid_t pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t len = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[len] = '\0';
    char *p = strrchr(buf, ')');
    int ppid = -1;
    if (p == NULL || sscanf(p + 2, "%*c %d", &ppid) != 1)
        return -1;
    return (pid_t)ppid;
}

/* The postmaster and all its children, with their CPU time. */
static void
pg_snapshot(pid_t postmaster, cpu_snap_t *s)
{
    s->n = 0;
    if (postmaster <= 0)
        return;
    s->pid[s->n] = postmaster;
    s->ticks[s->n++] = proc_ticks(postmaster);
    DIR *d = opendir("/proc");
    if (d == NULL)
        return;
    struct dirent *de;
    while ((de = readdir(d)) != NULL && s->n < SL_BENCH_MAX_PIDS) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end != '\0' || pid <= 0 || proc_ppid((pid_t)pid) != postmaster)
            continue;
        int64_t t = proc_ticks((pid_t)pid);
        if (t < 0)
            continue;
        s->pid[s->n] = (pid_t)pid;
        s->ticks[s->n++] = t;
    }
    closedir(d);
}

/* Ticks used between two snapshots; a process born in between counts whole. */
static int64_t
pg_delta(const cpu_snap_t *a, const cpu_snap_t *b)
{
    int64_t sum = 0;
    for (int i = 0; i < b->n; i++) {
        int64_t before = 0;
        for (int j = 0; j < a->n; j++)
            if (a->pid[j] == b->pid[i])
                before = a->ticks[j];
        sum += b->ticks[i] - before;
    }
    return sum;
}

/* Busy ticks of the whole machine (all CPUs) from /proc/stat. */
static int64_t
machine_busy_ticks(void)
{
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return 0;
    unsigned long long v[10] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
    fclose(f);
    if (n < 8)
        return 0;
    /* user nice system idle iowait irq softirq steal: busy = all - idle - iowait */
    return (int64_t)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
}

/* Reads "Key:   123 kB" from /proc/PID/status; -1 when missing. */
static int64_t
proc_status_kb(pid_t pid, const char *key)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t klen = strlen(key);
    int64_t kb = -1;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            kb = strtoll(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb;
}

/* CPU time of everything watched, at one moment. */
typedef struct cpu_sample {
    int64_t relay, backend, broker, machine;
    cpu_snap_t pg;
} cpu_sample_t;

static void
cpu_sample_take(cpu_sample_t *c, pid_t relay, pid_t backend, pid_t broker, pid_t postmaster)
{
    c->relay = proc_ticks(relay);
    c->backend = backend > 0 ? proc_ticks(backend) : 0;
    c->broker = broker > 0 ? proc_ticks(broker) : 0;
    c->machine = machine_busy_ticks();
    pg_snapshot(postmaster, &c->pg);
}

/* delivered of the pipeline, 0 while its checkpoint row does not exist. */
static int64_t
query_delivered(PGconn *conn, const char *pipeline)
{
    const char *params[1] = {pipeline};
    PGresult *res = PQexecParams(conn,
                                 "SELECT delivered FROM sluice.relay_checkpoints "
                                 "WHERE pipeline = $1",
                                 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        bench_die(PROG, "polling delivered: %s", PQerrorMessage(conn));
    int64_t d = PQntuples(res) == 1 ? strtoll(PQgetvalue(res, 0, 0), NULL, 10) : 0;
    PQclear(res);
    return d;
}

/* The relay's backend pid (application_name 'sluice-relay'), or 0. */
static pid_t
query_backend_pid(PGconn *conn)
{
    PGresult *res = PQexec(conn, "SELECT pid FROM pg_stat_activity "
                                 "WHERE application_name = 'sluice-relay' ORDER BY pid LIMIT 1");
    pid_t pid = 0;
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
        pid = (pid_t)strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return pid;
}

/* Sends SIGTERM and reaps the relay; SIGKILL after SL_BENCH_STOP_S. */
static int
relay_stop(pid_t pid)
{
    kill(pid, SIGTERM);
    int64_t deadline = bench_now_us() + (int64_t)SL_BENCH_STOP_S * 1000000;
    int status = 0;
    for (;;) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return -1;
        if (bench_now_us() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -2;
        }
        usleep(10000);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The Kafka side: a client used only to read high watermarks. */
typedef struct kafka_counter {
    rd_kafka_t *rk;
    const char *topic;
    int npart;
    int64_t base; /* sum of high watermarks at the start */
} kafka_counter_t;

static void
kafka_counter_init(kafka_counter_t *kc, const char *brokers, const char *topic)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK)
        bench_die(PROG, "bootstrap.servers: %s", errstr);
    kc->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (kc->rk == NULL)
        bench_die(PROG, "rd_kafka_new: %s", errstr);
    kc->topic = topic;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(kc->rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(kc->rk, 0, rkt, &md, 10000);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 || md->topics[0].err != 0 ||
        md->topics[0].partition_cnt == 0)
        bench_die(PROG, "metadata of %s failed (create the topic first)", topic);
    kc->npart = md->topics[0].partition_cnt;
    if (kc->npart > SL_BENCH_MAX_PARTITIONS)
        bench_die(PROG, "%s has %d partitions; at most %d are supported", topic, kc->npart,
                  SL_BENCH_MAX_PARTITIONS);
    rd_kafka_metadata_destroy(md);
    rd_kafka_topic_destroy(rkt);
    kc->base = 0;
}

/* Records appended to the topic since kafka_counter_init's base was taken. */
static int64_t
kafka_counter_read(kafka_counter_t *kc)
{
    int64_t sum = 0;
    for (int p = 0; p < kc->npart; p++) {
        int64_t lo = 0, hi = 0;
        rd_kafka_resp_err_t e =
            rd_kafka_query_watermark_offsets(kc->rk, kc->topic, p, &lo, &hi, 5000);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
            bench_die(PROG, "watermarks of %s[%d]: %s", kc->topic, p, rd_kafka_err2str(e));
        sum += hi;
    }
    return sum - kc->base;
}

int
main(int argc, char **argv)
{
    const char *db = NULL, *pipeline = NULL, *log = NULL, *brokers = NULL, *ktopic = NULL;
    int64_t n = 0, timeout_s = 600;
    pid_t broker = 0, postmaster = 0;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            i++;
            break;
        }
        if (strcmp(argv[i], "--db") == 0 && i + 1 < argc)
            db = argv[++i];
        else if (strcmp(argv[i], "--pipeline") == 0 && i + 1 < argc)
            pipeline = argv[++i];
        else if (strcmp(argv[i], "--log") == 0 && i + 1 < argc)
            log = argv[++i];
        else if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc)
            brokers = argv[++i];
        else if (strcmp(argv[i], "--kafka-topic") == 0 && i + 1 < argc)
            ktopic = argv[++i];
        else if (strcmp(argv[i], "--n") == 0 && i + 1 < argc)
            n = bench_parse_int(PROG, "--n", argv[++i]);
        else if (strcmp(argv[i], "--timeout-s") == 0 && i + 1 < argc)
            timeout_s = bench_parse_int(PROG, "--timeout-s", argv[++i]);
        else if (strcmp(argv[i], "--broker-pid") == 0 && i + 1 < argc)
            broker = (pid_t)bench_parse_int(PROG, "--broker-pid", argv[++i]);
        else if (strcmp(argv[i], "--postmaster-pid") == 0 && i + 1 < argc)
            postmaster = (pid_t)bench_parse_int(PROG, "--postmaster-pid", argv[++i]);
        else
            bench_die(PROG, "unknown option %s", argv[i]);
    }
    if (db == NULL || pipeline == NULL || log == NULL || brokers == NULL || ktopic == NULL ||
        n == 0 || i >= argc)
        bench_die(PROG, "usage: " PROG " --db CONNINFO --pipeline NAME --n N --log FILE "
                        "--brokers B --kafka-topic KT [--timeout-s S] [--broker-pid PID] "
                        "[--postmaster-pid PID] -- CMD...");

    PGconn *conn = PQconnectdb(db);
    if (PQstatus(conn) != CONNECTION_OK)
        bench_die(PROG, "cannot connect: %s", PQerrorMessage(conn));
    if (query_delivered(conn, pipeline) != 0)
        bench_die(PROG, "pipeline %s already has a checkpoint; use a new name", pipeline);
    kafka_counter_t kc;
    kafka_counter_init(&kc, brokers, ktopic);
    kc.base = kafka_counter_read(&kc);

    /* Static: each /proc snapshot is a few KiB. */
    static cpu_sample_t c_lo, c_hi;

    int64_t t0 = bench_now_us();
    pid_t pid = fork();
    if (pid < 0)
        bench_die(PROG, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* If this program dies (killed bench, stopped environment), the
         * relay gets SIGTERM instead of outliving it. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0 || dup2(fd, STDERR_FILENO) < 0)
            _exit(126);
        close(fd);
        execv(argv[i], &argv[i]);
        _exit(127);
    }

    int64_t deadline = t0 + timeout_s * 1000000;
    int64_t delivered = 0, in_kafka = 0, done_us = 0, kafka_done_us = 0, first_us = 0;
    int64_t lo_us = 0, lo_count = 0, hi_us = 0, hi_count = 0; /* 10% and 90% in Kafka */
    int64_t last_change_us = 0, prev_delivered = 0, ckpt_gap_us = 0;
    pid_t backend = 0;
    for (;;) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid)
            bench_die(PROG, "the relay exited early (status %d) with delivered=%" PRId64 "; see %s",
                      status, delivered, log);
        in_kafka = kafka_counter_read(&kc);
        delivered = query_delivered(conn, pipeline);
        int64_t now = bench_now_us();
        if (backend == 0)
            backend = query_backend_pid(conn);
        if (delivered != prev_delivered) {
            if (last_change_us != 0 && now - last_change_us > ckpt_gap_us)
                ckpt_gap_us = now - last_change_us;
            last_change_us = now;
            prev_delivered = delivered;
        }
        if (lo_us == 0 && in_kafka * 10 >= n) {
            lo_us = now;
            lo_count = in_kafka;
            cpu_sample_take(&c_lo, pid, backend, broker, postmaster);
        }
        if (hi_us == 0 && in_kafka * 10 >= n * 9) {
            hi_us = now;
            hi_count = in_kafka;
            cpu_sample_take(&c_hi, pid, backend, broker, postmaster);
        }
        if (first_us == 0 && in_kafka > 0)
            first_us = now;
        if (kafka_done_us == 0 && in_kafka >= n)
            kafka_done_us = now;
        if (delivered >= n && kafka_done_us != 0) {
            done_us = now;
            break;
        }
        if (now > deadline) {
            relay_stop(pid);
            bench_die(PROG,
                      "deadline of %" PRId64 " s passed with delivered=%" PRId64 " and %" PRId64
                      " records in Kafka, of %" PRId64 "; see %s",
                      timeout_s, delivered, in_kafka, n, log);
        }
        usleep(SL_BENCH_POLL_MS * 1000);
    }

    int64_t vmhwm = proc_status_kb(pid, "VmHWM");
    int64_t vmrss = proc_status_kb(pid, "VmRSS");
    int rc = relay_stop(pid);

    double secs = (double)(done_us - t0) / 1e6;
    double ksecs = (double)(kafka_done_us - t0) / 1e6;
    double wsecs = (double)(hi_us - lo_us) / 1e6;
    double pct = wsecs > 0 ? 100.0 / ((double)sysconf(_SC_CLK_TCK) * wsecs) : 0.0;
    char steady[32] = "n/a"; /* when N is so small both marks fell in one poll */
    if (wsecs > 0)
        snprintf(steady, sizeof steady, "%.0f", (double)(hi_count - lo_count) / wsecs);
    printf("delivered=%" PRId64 " seconds=%.3f rate=%.0f first_ms=%.0f kafka_seconds=%.3f"
           " kafka_rate=%.0f steady_rate=%s ckpt_gap_ms=%.0f vmhwm_kb=%" PRId64 " vmrss_kb=%" PRId64
           " cpu_relay=%.0f cpu_pg=%.0f cpu_backend=%.0f cpu_broker=%.0f cpu_machine=%.0f"
           " cores=%ld exit=%d\n",
           delivered, secs, (double)delivered / secs, (double)(first_us - t0) / 1000.0, ksecs,
           (double)n / ksecs, steady, (double)ckpt_gap_us / 1000.0, vmhwm, vmrss,
           (double)(c_hi.relay - c_lo.relay) * pct, (double)pg_delta(&c_lo.pg, &c_hi.pg) * pct,
           (double)(c_hi.backend - c_lo.backend) * pct, (double)(c_hi.broker - c_lo.broker) * pct,
           (double)(c_hi.machine - c_lo.machine) * pct, sysconf(_SC_NPROCESSORS_ONLN), rc);
    rd_kafka_destroy(kc.rk);
    PQfinish(conn);
    return rc == 0 ? 0 : 1;
}
