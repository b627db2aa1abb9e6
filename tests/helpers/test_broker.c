/*
 * tests/helpers/test_broker.c - sl_test_broker, a Kafka cluster for tests.
 *
 * sluice's integration tests and dev environment need a Kafka cluster that
 * starts in milliseconds, needs no JVM and no network, and can be broken on
 * purpose. librdkafka ships one: the mock cluster (rdkafka_mock.h), a set of
 * in-process brokers that speak the Kafka protocol on 127.0.0.1 ephemeral
 * ports. This program hosts one in a process of its own so that any client
 * (the sluice relay, kcat, python3-kafka) can talk to it.
 *
 *   sl_test_broker [--brokers N] [--partitions P] [--topic NAME[:P]]...
 *                  [--control PATH]
 *
 * Start-up: the mock cluster needs a host rd_kafka_t for its book keeping; we
 * create an idle producer for that. Topics given with --topic are created up
 * front with P partitions (default --partitions). Topics nobody created are
 * auto-created by the mock cluster when a producer asks for their metadata,
 * with the mock's fixed default of 4 partitions (librdkafka 2.0.2 has no API
 * to change that default); a consumer never auto-creates.
 *
 * Then exactly one line "BOOTSTRAP=<host:port,...>" goes to stdout, flushed,
 * and the program serves until SIGTERM, SIGINT or a `quit` command.
 *
 * Control protocol: one command per line, read from the FIFO given with
 * --control (or stdin without it). Each command gets exactly one reply line
 * on stdout, starting with "ok " or "error ":
 *
 *   down <broker_id|all>      rd_kafka_mock_broker_set_down
 *   up <broker_id|all>        rd_kafka_mock_broker_set_up
 *   topic <name> <partitions> rd_kafka_mock_topic_create
 *   quit                      stop serving, exit 0
 *
 * FIFO handling: we open the FIFO for reading without blocking and then open
 * it once more for writing and keep that descriptor. With a writer always
 * present, read() never reports end of file when a client closes its end,
 * so clients may open, write one command and close, as often as they like.
 * With stdin instead, end of file means quit.
 *
 * Threads: the mock brokers run on librdkafka's threads; every mock API call
 * used here is a synchronous request to the mock cluster thread, safe from
 * our main thread. Signals only set a flag, which the poll() loop checks.
 *
 * Exit codes: 0 after a signal or `quit`, 1 on a runtime failure, 2 on a
 * usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

/* Longest accepted command line; a topic name is at most 249 characters, so
 * this leaves ample room. Longer lines are rejected whole. */
#define TB_LINE_MAX 1024

/* How often the main loop wakes up to notice a signal even when idle. */
#define TB_POLL_MS 200

/* Upper bounds that catch typos ("--brokers 1000") rather than real limits. */
#define TB_BROKERS_MAX 16
#define TB_PARTITIONS_MAX 1024

/* Replication factor of created topics: Kafka's usual 3, or fewer brokers. */
#define TB_REPLICATION_MAX 3

static volatile sig_atomic_t tb_stop_requested;

/* Everything the command handlers need. */
typedef struct tb_state {
    rd_kafka_t *rk;                    /* host producer instance, owned */
    rd_kafka_mock_cluster_t *mcluster; /* owned, destroyed before rk */
    int brokers;                       /* number of mock brokers (ids 1..brokers) */
    int partitions;                    /* default partition count of created topics */
    bool quit;                         /* a `quit` command was received */
} tb_state_t;

/* Line assembly buffer for the control stream. */
typedef struct tb_linebuf {
    char buf[TB_LINE_MAX]; /* bytes of the current, unfinished line */
    size_t len;            /* bytes used in buf */
    bool overflow;         /* current line exceeded TB_LINE_MAX: drop it */
} tb_linebuf_t;

static void
tb_on_signal(int sig)
{
    (void)sig;
    tb_stop_requested = 1;
}

static void
tb_usage(FILE *out)
{
    fprintf(out, "usage: sl_test_broker [--brokers N] [--partitions P] [--topic NAME[:P]]...\n"
                 "                      [--control FIFO]\n"
                 "\n"
                 "Runs a librdkafka mock Kafka cluster on 127.0.0.1 and prints\n"
                 "BOOTSTRAP=<servers>. Commands (one per line, from FIFO or stdin):\n"
                 "  down <id|all>   up <id|all>   topic <name> <partitions>   quit\n");
}

/* Parses a decimal integer in [min, max]. Returns 0, or -1 when invalid. */
static int
tb_parse_int(const char *s, long min, long max, int *out)
{
    if (s == NULL || *s == '\0')
        return -1;
    errno = 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

/* Writes one reply line to stdout and flushes it, so readers of a file or
 * pipe see it at once. */
static void tb_reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
tb_reply(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stdout, fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static int
tb_replication(const tb_state_t *st)
{
    return st->brokers < TB_REPLICATION_MAX ? st->brokers : TB_REPLICATION_MAX;
}

/* Creates a topic; fills errbuf and returns -1 on failure. */
static int
tb_topic_create(tb_state_t *st, const char *name, int partitions, char *errbuf, size_t n)
{
    if (*name == '\0' || strlen(name) > 249) {
        snprintf(errbuf, n, "invalid topic name");
        return -1;
    }
    rd_kafka_resp_err_t kerr =
        rd_kafka_mock_topic_create(st->mcluster, name, partitions, tb_replication(st));
    if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(errbuf, n, "%s", rd_kafka_err2str(kerr));
        return -1;
    }
    return 0;
}

/*
 * Parses "NAME" or "NAME:PARTITIONS" (a --topic argument) into name (size n)
 * and *partitions (left unchanged without ":P"). Returns 0, or -1 after
 * printing why.
 */
static int
tb_topic_spec(const char *arg, char *name, size_t n, int *partitions)
{
    const char *colon = strrchr(arg, ':');
    size_t len = colon ? (size_t)(colon - arg) : strlen(arg);
    if (len == 0 || len >= n || len > 249) {
        fprintf(stderr, "sl_test_broker: --topic %s: name must be 1..249 characters\n", arg);
        return -1;
    }
    memcpy(name, arg, len);
    name[len] = '\0';
    if (colon && tb_parse_int(colon + 1, 1, TB_PARTITIONS_MAX, partitions) != 0) {
        fprintf(stderr, "sl_test_broker: --topic %s: partitions must be 1..%d\n", arg,
                TB_PARTITIONS_MAX);
        return -1;
    }
    return 0;
}

/* Creates the topic described by a --topic argument (already validated). */
static int
tb_topic_arg(tb_state_t *st, const char *arg)
{
    char name[TB_LINE_MAX];
    int partitions = st->partitions;
    if (tb_topic_spec(arg, name, sizeof(name), &partitions) != 0)
        return -1;
    char errbuf[256];
    if (tb_topic_create(st, name, partitions, errbuf, sizeof(errbuf)) != 0) {
        fprintf(stderr, "sl_test_broker: --topic %s: %s\n", arg, errbuf);
        return -1;
    }
    return 0;
}

/* Parses the broker id of down/up: a number in 1..brokers, or "all" / -1. */
static int
tb_broker_id(const tb_state_t *st, const char *s, int32_t *out)
{
    int id;
    if (s != NULL && (strcmp(s, "all") == 0 || strcmp(s, "-1") == 0)) {
        *out = -1;
        return 0;
    }
    if (tb_parse_int(s, 1, st->brokers, &id) != 0)
        return -1;
    *out = id;
    return 0;
}

/* Executes one command line (NUL-terminated, without the newline). */
static void
tb_command(tb_state_t *st, char *line)
{
    char *save = NULL;
    char *verb = strtok_r(line, " \t\r", &save);
    if (verb == NULL)
        return; /* blank line: no reply, so "echo" with stray newlines is harmless */
    char *a1 = strtok_r(NULL, " \t\r", &save);
    char *a2 = strtok_r(NULL, " \t\r", &save);
    char *extra = strtok_r(NULL, " \t\r", &save);

    if (strcmp(verb, "down") == 0 || strcmp(verb, "up") == 0) {
        bool down = verb[0] == 'd';
        int32_t id;
        if (a1 == NULL || a2 != NULL || tb_broker_id(st, a1, &id) != 0) {
            tb_reply("error %s: expected a broker id 1..%d or \"all\"", verb, st->brokers);
            return;
        }
        rd_kafka_resp_err_t kerr = down ? rd_kafka_mock_broker_set_down(st->mcluster, id)
                                        : rd_kafka_mock_broker_set_up(st->mcluster, id);
        if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR)
            tb_reply("error %s %s: %s", verb, a1, rd_kafka_err2str(kerr));
        else
            tb_reply("ok %s %s", verb, a1);
        return;
    }
    if (strcmp(verb, "topic") == 0) {
        int partitions;
        if (a1 == NULL || a2 == NULL || extra != NULL ||
            tb_parse_int(a2, 1, TB_PARTITIONS_MAX, &partitions) != 0) {
            tb_reply("error topic: usage: topic <name> <partitions 1..%d>", TB_PARTITIONS_MAX);
            return;
        }
        char errbuf[256];
        if (tb_topic_create(st, a1, partitions, errbuf, sizeof(errbuf)) != 0)
            tb_reply("error topic %s: %s", a1, errbuf);
        else
            tb_reply("ok topic %s %d", a1, partitions);
        return;
    }
    if (strcmp(verb, "quit") == 0) {
        tb_reply("ok quit");
        st->quit = true;
        return;
    }
    tb_reply("error unknown command \"%.64s\" (expected down, up, topic or quit)", verb);
}

/*
 * Feeds n bytes read from the control stream into the line buffer and runs
 * every completed line.
 */
static void
tb_feed(tb_state_t *st, tb_linebuf_t *lb, const char *data, size_t n)
{
    for (size_t i = 0; i < n && !st->quit; i++) {
        char c = data[i];
        if (c == '\n') {
            if (lb->overflow) {
                tb_reply("error command longer than %d bytes", TB_LINE_MAX - 1);
            } else {
                lb->buf[lb->len] = '\0';
                tb_command(st, lb->buf);
            }
            lb->len = 0;
            lb->overflow = false;
        } else if (lb->len + 1 < sizeof(lb->buf)) {
            lb->buf[lb->len++] = c;
        } else {
            lb->overflow = true;
        }
    }
}

/*
 * Opens the control FIFO (see the file header for why we keep a writer).
 * *rfd receives the read end, *wfd the keep-alive writer.
 */
static int
tb_control_open(const char *path, int *rfd, int *wfd)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        if (errno != ENOENT || mkfifo(path, 0600) != 0) {
            fprintf(stderr, "sl_test_broker: control %s: %s\n", path, strerror(errno));
            return -1;
        }
    } else if (!S_ISFIFO(sb.st_mode)) {
        fprintf(stderr, "sl_test_broker: control %s: not a FIFO\n", path);
        return -1;
    }
    *rfd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (*rfd < 0) {
        fprintf(stderr, "sl_test_broker: open %s: %s\n", path, strerror(errno));
        return -1;
    }
    *wfd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (*wfd < 0) {
        fprintf(stderr, "sl_test_broker: open %s for writing: %s\n", path, strerror(errno));
        close(*rfd);
        return -1;
    }
    return 0;
}

/* Serves commands from fd until quit, a signal, or (stdin only) end of file. */
static int
tb_serve(tb_state_t *st, int fd, bool eof_quits)
{
    tb_linebuf_t lb = {.len = 0, .overflow = false};
    char chunk[512];
    while (!tb_stop_requested && !st->quit) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int rc = poll(&pfd, 1, TB_POLL_MS);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "sl_test_broker: poll: %s\n", strerror(errno));
            return -1;
        }
        if (rc == 0)
            continue;
        ssize_t got = read(fd, chunk, sizeof(chunk));
        if (got < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)
                continue;
            fprintf(stderr, "sl_test_broker: read control: %s\n", strerror(errno));
            return -1;
        }
        if (got == 0) {
            if (eof_quits)
                break;
            /* Cannot happen while we hold a writer; avoid spinning anyway. */
            continue;
        }
        tb_feed(st, &lb, chunk, (size_t)got);
    }
    return 0;
}

int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"brokers", required_argument, NULL, 'b'}, {"partitions", required_argument, NULL, 'p'},
        {"topic", required_argument, NULL, 't'},   {"control", required_argument, NULL, 'c'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    tb_state_t st = {.brokers = 1, .partitions = 4};
    const char *control = NULL;
    int exit_code = 1;
    int rfd = -1, wfd = -1;

    /* Topic arguments are created once the cluster exists; argv outlives them. */
    const char **topics = calloc((size_t)argc, sizeof(*topics));
    size_t ntopics = 0;
    if (topics == NULL) {
        fprintf(stderr, "sl_test_broker: out of memory\n");
        return 1;
    }

    int opt;
    while ((opt = getopt_long(argc, argv, "b:p:t:c:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            if (tb_parse_int(optarg, 1, TB_BROKERS_MAX, &st.brokers) != 0) {
                fprintf(stderr, "sl_test_broker: --brokers must be 1..%d\n", TB_BROKERS_MAX);
                goto fail_usage;
            }
            break;
        case 'p':
            if (tb_parse_int(optarg, 1, TB_PARTITIONS_MAX, &st.partitions) != 0) {
                fprintf(stderr, "sl_test_broker: --partitions must be 1..%d\n", TB_PARTITIONS_MAX);
                goto fail_usage;
            }
            break;
        case 't': {
            char name[TB_LINE_MAX];
            int partitions = 1;
            if (tb_topic_spec(optarg, name, sizeof(name), &partitions) != 0)
                goto fail_usage;
            topics[ntopics++] = optarg;
            break;
        }
        case 'c': control = optarg; break;
        case 'h':
            tb_usage(stdout);
            free(topics);
            return 0;
        default: tb_usage(stderr); goto fail_usage;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "sl_test_broker: unexpected argument \"%s\"\n", argv[optind]);
        goto fail_usage;
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = tb_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    /* The host instance: an idle producer that never sends anything. */
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf == NULL) {
        fprintf(stderr, "sl_test_broker: out of memory\n");
        goto fail_conf;
    }
    /* log_level 4 (warning) hides the host's notice that it has no
     * bootstrap.servers: it never connects anywhere, by design. */
    if (rd_kafka_conf_set(conf, "client.id", "sl_test_broker", errstr, sizeof(errstr)) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "sl_test_broker: config: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        goto fail_conf;
    }
    st.rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (st.rk == NULL) {
        /* rd_kafka_new frees conf only on success. */
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "sl_test_broker: rd_kafka_new: %s\n", errstr);
        goto fail_conf;
    }

    st.mcluster = rd_kafka_mock_cluster_new(st.rk, st.brokers);
    if (st.mcluster == NULL) {
        fprintf(stderr, "sl_test_broker: cannot create a mock cluster of %d brokers\n", st.brokers);
        goto fail_cluster;
    }

    for (size_t i = 0; i < ntopics; i++) {
        if (tb_topic_arg(&st, topics[i]) != 0)
            goto fail_topics;
    }

    if (control != NULL && tb_control_open(control, &rfd, &wfd) != 0)
        goto fail_topics;

    printf("BOOTSTRAP=%s\n", rd_kafka_mock_cluster_bootstraps(st.mcluster));
    fflush(stdout);

    if (tb_serve(&st, control != NULL ? rfd : STDIN_FILENO, control == NULL) == 0)
        exit_code = 0;

    if (wfd >= 0)
        close(wfd);
    if (rfd >= 0)
        close(rfd);
fail_topics:
    rd_kafka_mock_cluster_destroy(st.mcluster);
fail_cluster:
    rd_kafka_destroy(st.rk);
fail_conf:
    free(topics);
    return exit_code;

fail_usage:
    free(topics);
    return 2;
}
