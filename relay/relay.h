/*
 * relay/relay.h - the public surface of `sluice relay`.
 *
 * A relay runs pipelines. Each pipeline reads the outbox in commit-safe order
 * (outbox/outbox.h), hands messages to one sink (sinks/sink.h) and advances
 * its own checkpoint only past messages the sink acknowledged.
 */
#ifndef SL_RELAY_H
#define SL_RELAY_H

#include "core/core.h"

#include <stdio.h>

struct sl_sink_ops;

/* Limits that bound memory; each is a config key with these defaults. */
#define SL_RELAY_DEFAULT_BATCH_SIZE 1000             /* rows per outbox read */
#define SL_RELAY_DEFAULT_MAX_INFLIGHT 10000          /* unacknowledged messages */
#define SL_RELAY_DEFAULT_MAX_INFLIGHT_BYTES 67108864 /* 64 MiB of unacknowledged envelopes */

/* A Kafka source (the reverse relay: Kafka -> inbox); relay/ksource.c. */
typedef struct sl_ksource_conf {
    char *type;    /* "kafka" */
    char *brokers; /* bootstrap servers */
    sl_strlist_t topics;
    char *group;                    /* consumer group id */
    char *format;                   /* "sluice" (envelopes) or "json" */
    const struct cJSON *properties; /* librdkafka consumer properties, borrowed */
} sl_ksource_conf_t;

/* One pipeline's configuration (one element of "pipelines"). */
typedef struct sl_pipeline_cfg {
    char *name;                 /* unique, [A-Za-z0-9._-]{1,100} */
    sl_strlist_t topics;        /* outbox topics or globs; empty = every topic */
    const struct cJSON *source; /* borrowed; NULL = the outbox */
    const struct cJSON *sink;   /* borrowed from the document */
    char *database;             /* optional override of the relay's database */
    char *start;                /* "beginning" or "now": where a new pipeline starts */
    int64_t batch_size;
    int64_t max_inflight;
    int64_t max_inflight_bytes;
    int64_t poll_interval_ms; /* fallback poll when no doorbell rings */
    bool doorbell;            /* LISTEN for the publish doorbell */
    /* Resolved at load time. */
    const struct sl_sink_ops *sink_ops; /* the sink's vtable */
    void *sink_conf;                    /* parsed sink config, owned */
    sl_ksource_conf_t *ksrc;            /* parsed Kafka source, owned; NULL = the outbox */
    char *path;                         /* "pipelines[0]", owned, for messages */
} sl_pipeline_cfg_t;

/* The whole relay configuration. */
typedef struct sl_relay_cfg {
    char *database;                /* PostgreSQL connection string (may hold secrets) */
    const struct cJSON *pipelines; /* borrowed */
    char *log_level;
    int64_t shutdown_timeout_ms;    /* how long SIGTERM waits for in-flight acks */
    int64_t checkpoint_interval_ms; /* at most one checkpoint write per interval per pipeline */
    int64_t outbox_retention_s;     /* delivered rows older than this are pruned; -1 = never */
    sl_pipeline_cfg_t *pl;          /* owned array */
    size_t npl;
    sl_cfg_doc_t doc; /* owned: resolved and display trees */
} sl_relay_cfg_t;

/* Loads, interpolates and validates a relay config file. Errors are
 * SL_EUSAGE and name the JSON path. *out freed with sl_relay_cfg_free. */
int sl_relay_cfg_load(const char *file, sl_relay_cfg_t **out, sl_err_t *err);

/* Frees the config. Accepts NULL. */
void sl_relay_cfg_free(sl_relay_cfg_t *cfg);

/* Prints the resolved config with interpolated values as [redacted]. */
void sl_relay_cfg_print(const sl_relay_cfg_t *cfg, FILE *out);

/* Prints the reference of every config key (from the key tables). */
void sl_relay_cfg_help(FILE *out);

/*
 * Runs the relay until every pipeline has stopped: after SIGTERM/SIGINT
 * (graceful drain) or because pipelines failed. Returns SL_OK when none
 * failed, SL_ERR (naming how many) when any did. Blocks the calling thread
 * on a libuv loop.
 */
int sl_relay_run(const sl_relay_cfg_t *cfg, sl_err_t *err);

#endif /* SL_RELAY_H */
