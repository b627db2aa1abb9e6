/*
 * sinks/sink_int.h - internals shared by the sink implementations.
 */
#ifndef SL_SINK_INT_H
#define SL_SINK_INT_H

#include "sinks/sink.h"

extern const sl_sink_ops_t sl_sink_kafka_ops;
extern const sl_sink_ops_t sl_sink_stdout_ops;
extern const sl_sink_ops_t sl_sink_file_ops;
extern const sl_sink_ops_t sl_sink_notify_ops;
extern const sl_sink_ops_t sl_sink_inbox_ops;

/* The header every sink starts with; pipelines only see sl_sink_t. */
struct sl_sink {
    const sl_sink_ops_t *ops;
    sl_sink_env_t env;
    void (*done)(void *); /* close callback, set by sl_sink_close_begin */
    void *done_arg;
};

/*
 * The two ends of every sink's asynchronous close. begin remembers done(arg)
 * and returns true; for a NULL sink it calls done at once and returns false.
 * end, called when the sink's own resources are released, frees the sink
 * (one allocation that starts with its header) and then calls done.
 */
bool sl_sink_close_begin(sl_sink_t *sk, void (*done)(void *arg), void *arg);
void sl_sink_close_end(sl_sink_t *sk);

/* ------------------------------------------------------------------------ */
/* Batches written to PostgreSQL (sinks/pgbatch.c)                           */
/* ------------------------------------------------------------------------ */

struct pg_result;

/* What a database-writing sink does with a batch. */
typedef struct sl_pgbatch_ops {
    const char *what; /* sink type, for logs and errors: "inbox" */
    /* One statement: $1 is the batch as a JSON array of the sink's
     * elements, $2 the fixed argument given to sl_pgbatch_new (if any). */
    const char *sql;
    /* Run once on every new connection before any batch (session settings),
     * or NULL. Its failure is logged, not fatal. */
    const char *session_sql;
    /* Checks the committed statement's result (n messages); SL_OK, or an
     * error that refuses the batch. May be NULL. */
    int (*result)(void *ctx, struct pg_result *res, size_t n, sl_err_t *err);
} sl_pgbatch_ops_t;

typedef struct sl_pgbatch sl_pgbatch_t;

/* Starts a batch writer with its own connection to conninfo. ops is static;
 * arg (copied, may be NULL) becomes $2; ctx goes to ops->result. Acks go to
 * env->on_ack. Close with sl_pgbatch_close. */
int sl_pgbatch_new(const sl_sink_env_t *env, const char *conninfo, const sl_pgbatch_ops_t *ops,
                   const char *arg, void *ctx, sl_pgbatch_t **out, sl_err_t *err);

/* Adds one message as the JSON element elem (len bytes) to the current batch.
 * Atomic on failure. */
int sl_pgbatch_add(sl_pgbatch_t *b, const char *elem, size_t len, int64_t outbox_id, uint64_t token,
                   sl_err_t *err);

/* Ends the current batch: sends it now, or after the statement in flight. */
void sl_pgbatch_flush(sl_pgbatch_t *b);

/* Closes the connection and frees b; unacknowledged messages are dropped
 * (never acked). done(arg) runs after. Accepts NULL. */
void sl_pgbatch_close(sl_pgbatch_t *b, void (*done)(void *arg), void *arg);

#endif /* SL_SINK_INT_H */
