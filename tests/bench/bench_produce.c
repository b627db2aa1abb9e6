/*
 * tests/bench/bench_produce.c - sl_bench_produce: the raw Kafka produce rate.
 *
 *   sl_bench_produce --brokers B --topic T --n N --size BYTES [--linger-ms L]
 *
 * Produces N records of BYTES bytes (NULL key, so librdkafka spreads them over
 * the partitions) with the delivery settings the relay's Kafka sink uses
 * (sinks/kafka.c: enable.idempotence=true, acks=all, linger.ms=1), and waits
 * for every delivery report. No headers and no envelope: this is the ceiling
 * for what one producer can push into this broker on this machine.
 *
 * The clock starts at the first produce call, after the topic's metadata is
 * known (so topic creation and the first connection are not counted), and
 * stops when the last delivery report has been served.
 *
 * Output, one line on stdout:
 *   msgs=N seconds=S rate=N/S mb_per_s=M failed=F
 * Exit 1 when any report carries an error.
 */
#include "tests/bench/bench.h"

#include <inttypes.h>
#include <librdkafka/rdkafka.h>

#define PROG "sl_bench_produce"

/* Counted on the thread that calls rd_kafka_poll/flush (this one). */
static int64_t dr_ok, dr_failed;
static char first_error[256];

static void
dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        dr_ok++;
        return;
    }
    if (dr_failed++ == 0)
        snprintf(first_error, sizeof first_error, "%s", rd_kafka_err2str(msg->err));
}

static void
conf_set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char errstr[512];
    if (rd_kafka_conf_set(conf, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        bench_die(PROG, "%s=%s: %s", k, v, errstr);
}

int
main(int argc, char **argv)
{
    const char *brokers = NULL, *topic = NULL, *linger = "1";
    int64_t n = 0, size = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--brokers") == 0 && i + 1 < argc)
            brokers = argv[++i];
        else if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc)
            topic = argv[++i];
        else if (strcmp(argv[i], "--n") == 0 && i + 1 < argc)
            n = bench_parse_int(PROG, "--n", argv[++i]);
        else if (strcmp(argv[i], "--size") == 0 && i + 1 < argc)
            size = bench_parse_int(PROG, "--size", argv[++i]);
        else if (strcmp(argv[i], "--linger-ms") == 0 && i + 1 < argc)
            linger = argv[++i];
        else
            bench_die(PROG, "usage: " PROG " --brokers B --topic T --n N --size BYTES "
                            "[--linger-ms L]");
    }
    if (brokers == NULL || topic == NULL || n == 0 || size == 0)
        bench_die(PROG, "--brokers, --topic, --n and --size are required");

    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    conf_set(conf, "bootstrap.servers", brokers);
    conf_set(conf, "enable.idempotence", "true");
    conf_set(conf, "acks", "all");
    conf_set(conf, "linger.ms", linger);
    /* A deep local queue, so the producer is limited by the broker, not by
     * QUEUE_FULL round trips (those are still handled below). */
    conf_set(conf, "queue.buffering.max.messages", "1000000");
    conf_set(conf, "queue.buffering.max.kbytes", "1048576");
    rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (rk == NULL)
        bench_die(PROG, "rd_kafka_new: %s", errstr);

    /* Warm up: connect and learn the topic's partitions before the clock. */
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        bench_die(PROG, "metadata of %s: %s", topic, rd_kafka_err2str(e));
    rd_kafka_metadata_destroy(md);

    char *value = malloc((size_t)size);
    if (value == NULL)
        bench_die(PROG, "out of memory");
    memset(value, 'x', (size_t)size);

    int64_t t0 = bench_now_us();
    for (int64_t i = 0; i < n;) {
        if (rd_kafka_produce(rkt, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY, value, (size_t)size,
                             NULL, 0, NULL) == 0) {
            i++;
            if ((i & 1023) == 0)
                rd_kafka_poll(rk, 0);
            continue;
        }
        if (rd_kafka_last_error() != RD_KAFKA_RESP_ERR__QUEUE_FULL)
            bench_die(PROG, "produce: %s", rd_kafka_err2str(rd_kafka_last_error()));
        rd_kafka_poll(rk, 1); /* Queue full: serve reports, then retry. */
    }
    while (dr_ok + dr_failed < n)
        rd_kafka_poll(rk, 100);
    double secs = (double)(bench_now_us() - t0) / 1e6;

    printf("msgs=%" PRId64 " seconds=%.3f rate=%.0f mb_per_s=%.1f failed=%" PRId64 "\n", n, secs,
           (double)n / secs, (double)n * (double)size / secs / 1e6, dr_failed);
    if (dr_failed > 0)
        fprintf(stderr, PROG ": %" PRId64 " deliveries failed, first: %s\n", dr_failed,
                first_error);
    free(value);
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return dr_failed > 0 ? 1 : 0;
}
