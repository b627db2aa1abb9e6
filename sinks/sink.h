/*
 * sinks/sink.h - the one contract every sink implements.
 *
 * A sink takes messages from a pipeline and acknowledges each one exactly
 * once, on the loop thread, after it is durable at the destination (Kafka:
 * delivery report with acks=all; file: written and flushed; stdout: written).
 * The pipeline advances its checkpoint only past acknowledged messages, so a
 * sink must never acknowledge early.
 *
 * Lifecycle, all on the loop thread:
 *   conf = parse(json)            at config load; validates, no side effects
 *   sk   = ops->create(conf, env) starts the sink (threads, connections)
 *   ops->send(sk, msg, token)     any number of times; SL_AGAIN = full, retry
 *                                 after the next ack
 *   ops->flush(sk)                end of a read batch: push buffered output
 *   ops->close(sk, done)          purges what is unacknowledged (never acked),
 *                                 frees sk, then calls done
 *
 * Acknowledgement: env->on_ack(ctx, token, status, err): status SL_OK
 * (delivered) or SL_ERR (the message cannot be delivered: the pipeline stops
 * without passing it, so its checkpoint stays before the message). err is
 * NULL on success. Transient trouble (a broker or server down) is the sink's
 * to retry: it simply does not acknowledge until delivery succeeds, and the
 * pipeline's window stops the reader meanwhile.
 * A sink never calls on_ack from inside send or flush (the pipeline is in the
 * middle of its own bookkeeping then): acks come from a later loop callback.
 */
#ifndef SL_SINK_H
#define SL_SINK_H

#include "core/core.h"

#include <stdio.h>
#include <uv.h>

struct cJSON;

typedef struct sl_sink sl_sink_t;

typedef void (*sl_sink_ack_fn)(void *ctx, uint64_t token, int status, const sl_err_t *err);

/* What a pipeline gives its sink. Copied by create. */
typedef struct sl_sink_env {
    uv_loop_t *loop;
    const char *pipeline;      /* pipeline name, for logs; outlives the sink */
    const char *database;      /* the pipeline's outbox database (conninfo); outlives the sink */
    const char *const *topics; /* the pipeline's outbox topics (may hold '*' globs); outlive it */
    size_t ntopics;            /* 0: every topic */
    sl_sink_ack_fn on_ack;
    void *ctx;
    size_t max_inflight; /* the pipeline's window, to size sink queues */
    size_t max_inflight_bytes;
} sl_sink_env_t;

typedef struct sl_sink_ops {
    const char *type;         /* "kafka", "stdout", "file" */
    const sl_cfg_key_t *keys; /* config keys of this sink's object */
    size_t nkeys;
    size_t conf_size; /* size of the parsed config struct */
    /* Extra validation after table parsing (templates, properties). */
    int (*validate)(void *conf, const char *path, sl_err_t *err);
    /* Frees what validate added to conf (the table's fields are released by the caller). */
    void (*conf_release)(void *conf);
    int (*create)(const void *conf, const sl_sink_env_t *env, sl_sink_t **out, sl_err_t *err);
    /* Hands over one message. m and its strings are borrowed for the call only.
     * *bytes receives what the message costs in the in-flight window. */
    int (*send)(sl_sink_t *sk, const sl_msg_t *m, uint64_t token, size_t *bytes, sl_err_t *err);
    int (*flush)(sl_sink_t *sk, sl_err_t *err);
    void (*close)(sl_sink_t *sk, void (*done)(void *arg), void *arg);
} sl_sink_ops_t;

/* Looks a sink type up by name; NULL when unknown. */
const sl_sink_ops_t *sl_sink_ops_find(const char *type);

/* Writes the list of known types ("kafka, stdout, file") into buf. */
const char *sl_sink_types(char *buf, size_t n);

/* Parses a sink config object: type lookup, table parse, validate.
 * *conf (allocated, conf_size bytes) freed with sl_sink_conf_free. */
int sl_sink_conf_parse(const struct cJSON *obj, const char *path, const sl_sink_ops_t **ops,
                       void **conf, sl_err_t *err);
void sl_sink_conf_free(const sl_sink_ops_t *ops, void *conf);

/* Prints every sink's key table (for `sluice relay --help-config` and docs). */
void sl_sink_help(FILE *out);

/*
 * Builds a librdkafka configuration (for the kafka sink, and for the reverse
 * relay's consumer): `defaults` first, then bootstrap.servers = brokers, then
 * the user's `properties` object (scalar values; names in `reserved`, a NULL
 * terminated list, are refused). Errors name `path` and never echo a value.
 */
typedef struct rd_kafka_conf_s rd_kafka_conf_t;
int sl_kafka_conf_new(const char *const (*defaults)[2], size_t ndefaults,
                      const char *const *reserved, const char *brokers,
                      const struct cJSON *properties, const char *path, rd_kafka_conf_t **out,
                      sl_err_t *err);

#endif /* SL_SINK_H */
