/*
 * sinks/pgbatch.c - batches of messages written to PostgreSQL, one statement
 * per batch, acknowledged when that statement commits.
 *
 * The machinery shared by the sinks that write to a database (notify,
 * inbox). A sink encodes each message as one JSON element; the batch is a
 * JSON array kept as text. When the batch ends (flush) and no statement is in
 * flight, it goes out as ONE statement taking the array as $1 (and the
 * sink's fixed argument as $2). A single statement runs as its own
 * transaction, so when its result arrives OK everything it did is committed,
 * and every message of the batch is acknowledged from the result callback.
 * While a statement is in flight the next batch accumulates. Batches hold at
 * most the pipeline's window, so memory is bounded by it.
 *
 *            add/flush                     result OK: ack batch
 *   (cur) ──────────────▶ (inflight) ──────────────────────────▶ (acked)
 *                              │ connection lost: commit unknown
 *                              ▼
 *                         kept; sent again after the reconnect
 *
 * A lost connection with a batch in flight leaves its commit unknown: the
 * batch is sent again after the reconnect, so a destination may see it twice
 * (the sinks say what that means for them: duplicate notifications, or
 * duplicates an inbox ignores). A statement error that is not about the
 * connection fails the batch's first message with SL_ERR: the pipeline stops
 * before it and nothing more is sent.
 *
 * Everything runs on the loop thread. Acks come only from the result
 * callback, never from inside add or flush.
 */
#include "sinks/sink_int.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

/* One batch: the statement parameter and the tokens it acknowledges. */
typedef struct pgbatch_batch {
    sl_buf_t json;    /* "[elem,elem,..." without the closing bracket */
    uint64_t *tokens; /* owned */
    size_t ntokens, cap;
    int64_t first_outbox_id; /* for messages */
} pgbatch_batch_t;

struct sl_pgbatch {
    sl_sink_env_t env;           /* copy of the sink's */
    const sl_pgbatch_ops_t *ops; /* borrowed, static */
    void *ctx;                   /* passed to ops->result */
    char *arg;                   /* owned: $2 of the statement, or NULL */
    sl_pgconn_t *pc;             /* owned */
    pgbatch_batch_t cur;         /* accumulating */
    pgbatch_batch_t inflight;    /* sent (or to be sent again after a reconnect) */
    pgbatch_batch_t acking;      /* being acknowledged by the result callback */
    bool busy;                   /* a statement is on the wire */
    bool setting_up;             /* the statement on the wire is ops->session_sql */
    bool inflight_sent;          /* inflight went out at least once (its commit may be unknown) */
    bool failed;                 /* a batch was refused: send nothing more */
    bool closing;                /* close was called: no more acks */
    void (*done)(void *);
    void *done_arg;
};

static void
batch_reset(pgbatch_batch_t *b)
{
    sl_buf_reset(&b->json);
    b->ntokens = 0;
    b->first_outbox_id = 0;
}

static void
batch_free(pgbatch_batch_t *b)
{
    sl_buf_free(&b->json);
    free(b->tokens);
    memset(b, 0, sizeof *b);
}

static void
batch_swap(pgbatch_batch_t *a, pgbatch_batch_t *b)
{
    pgbatch_batch_t t = *a;
    *a = *b;
    *b = t;
}

/* Sends `inflight` when the connection is ready and nothing is on the wire. */
static void
pgbatch_send_inflight(sl_pgbatch_t *b)
{
    if (b->busy || b->failed || b->closing || b->inflight.ntokens == 0 ||
        !sl_pgconn_is_ready(b->pc))
        return;
    sl_err_t err;
    sl_err_clear(&err);
    /* Close the array for the statement; reopened if it must be resent. */
    if (sl_buf_append(&b->inflight.json, "]", 1, &err) != SL_OK)
        return; /* Out of memory: retried on the next flush or result. */
    const char *params[2] = {b->inflight.json.data, b->arg};
    int rc = sl_pgconn_send(b->pc, b->ops->sql, b->arg != NULL ? 2 : 1, params, &err);
    b->inflight.json.data[--b->inflight.json.len] = '\0';
    if (rc == SL_OK) {
        b->busy = true;
        b->inflight_sent = true;
    }
    /* Otherwise the connection is going down: on_down, then on_up resends. */
}

/* Moves the current batch to inflight (when inflight is free) and sends it. */
static void
pgbatch_kick(sl_pgbatch_t *b)
{
    if (b->inflight.ntokens == 0 && b->cur.ntokens > 0) {
        batch_swap(&b->inflight, &b->cur);
        b->inflight_sent = false;
    }
    pgbatch_send_inflight(b);
}

/* The session is ready: resend what was in doubt, then carry on. */
static void
pgbatch_on_ready(sl_pgbatch_t *b)
{
    if (b->inflight_sent && b->inflight.ntokens > 0)
        sl_log_warn("sink.resend",
                    "pipeline=%s sink=%s messages=%zu first_outbox_id=%" PRId64
                    " note=\"commit unknown after a lost connection; sent again\"",
                    b->env.pipeline, b->ops->what, b->inflight.ntokens,
                    b->inflight.first_outbox_id);
    pgbatch_kick(b);
}

static void
pgbatch_on_up(sl_pgconn_t *pc, void *ctx)
{
    sl_pgbatch_t *b = ctx;
    if (b->ops->session_sql == NULL) {
        pgbatch_on_ready(b);
        return;
    }
    sl_err_t err;
    sl_err_clear(&err);
    if (sl_pgconn_send(pc, b->ops->session_sql, 0, NULL, &err) == SL_OK) {
        b->busy = true;
        b->setting_up = true;
    }
    /* Otherwise the connection is going down again: on_down, then on_up. */
}

static void
pgbatch_on_down(sl_pgconn_t *pc, const sl_err_t *err, void *ctx)
{
    sl_pgbatch_t *b = ctx;
    /* The batch on the wire, if any, stays in `inflight` and goes out again. */
    b->busy = false;
    b->setting_up = false;
}

/* Connection-level failures: the session is in doubt, not the batch. */
static bool
pgbatch_err_is_connection(const sl_err_t *err)
{
    return err->sqlstate[0] == '\0' || strncmp(err->sqlstate, "08", 2) == 0 ||
           strncmp(err->sqlstate, "57P", 3) == 0;
}

/* Fails the in-flight batch: its first message is refused, the pipeline stops. */
static void
pgbatch_refuse(sl_pgbatch_t *b, sl_err_t *err)
{
    b->failed = true;
    sl_err_prefix(err, "%s sink refused a batch of %zu messages: ", b->ops->what,
                  b->inflight.ntokens);
    if (!b->closing && b->inflight.ntokens > 0)
        b->env.on_ack(b->env.ctx, b->inflight.tokens[0], SL_ERR, err);
}

static void
pgbatch_on_result(sl_pgconn_t *pc, PGresult *res, void *ctx)
{
    sl_pgbatch_t *b = ctx;
    b->busy = false;
    sl_err_t err;
    sl_err_clear(&err);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (b->setting_up) {
        b->setting_up = false;
        if (st != PGRES_COMMAND_OK) {
            /* Session settings only tune: log and carry on without them. */
            sl_pg_result_err(res, NULL, &err);
            char q[SL_ERR_MSG_MAX + 16];
            sl_log_warn("sink.session", "pipeline=%s sink=%s err=%s", b->env.pipeline, b->ops->what,
                        sl_log_quote(q, sizeof q, err.msg));
        }
        PQclear(res);
        pgbatch_on_ready(b);
        return;
    }
    if (st != PGRES_TUPLES_OK) {
        sl_pg_result_err(res, NULL, &err);
        PQclear(res);
        if (pgbatch_err_is_connection(&err)) {
            sl_err_prefix(&err, "%s sink of pipeline %s: ", b->ops->what, b->env.pipeline);
            sl_pgconn_reset(pc, &err); /* inflight is sent again after the reconnect */
            return;
        }
        pgbatch_refuse(b, &err);
        return;
    }
    int rc =
        b->ops->result != NULL ? b->ops->result(b->ctx, res, b->inflight.ntokens, &err) : SL_OK;
    PQclear(res);
    if (rc != SL_OK) {
        pgbatch_refuse(b, &err);
        return;
    }
    /* Committed. Acks may re-enter add/flush, which may send `cur` as the new
     * inflight: iterate over a batch nobody else touches. */
    batch_swap(&b->acking, &b->inflight);
    batch_reset(&b->inflight);
    b->inflight_sent = false;
    pgbatch_kick(b);
    for (size_t i = 0; i < b->acking.ntokens && !b->closing; i++)
        b->env.on_ack(b->env.ctx, b->acking.tokens[i], SL_OK, NULL);
    batch_reset(&b->acking);
    if (!b->closing)
        pgbatch_kick(b);
}

int
sl_pgbatch_new(const sl_sink_env_t *env, const char *conninfo, const sl_pgbatch_ops_t *ops,
               const char *arg, void *ctx, sl_pgbatch_t **out, sl_err_t *err)
{
    sl_pgbatch_t *b = calloc(1, sizeof *b);
    if (b == NULL)
        return sl_err_nomem(err, "a batch writer");
    b->env = *env;
    b->ops = ops;
    b->ctx = ctx;
    if (arg != NULL && (b->arg = strdup(arg)) == NULL) {
        free(b);
        return sl_err_nomem(err, "a batch writer");
    }
    sl_pgconn_cbs_t cbs = {
        .on_up = pgbatch_on_up,
        .on_result = pgbatch_on_result,
        .on_down = pgbatch_on_down,
    };
    char name[160];
    snprintf(name, sizeof name, "%s:%s", ops->what, env->pipeline);
    int rc = sl_pgconn_new(env->loop, conninfo, name, &cbs, b, &b->pc, err);
    if (rc != SL_OK) {
        free(b->arg);
        free(b);
        return rc;
    }
    sl_pgconn_start(b->pc);
    *out = b;
    return SL_OK;
}

int
sl_pgbatch_add(sl_pgbatch_t *b, const char *elem, size_t len, int64_t outbox_id, uint64_t token,
               sl_err_t *err)
{
    pgbatch_batch_t *c = &b->cur;
    if (c->ntokens == c->cap) {
        size_t nc = c->cap ? c->cap * 2 : 256;
        uint64_t *nv = realloc(c->tokens, nc * sizeof *nv);
        if (nv == NULL)
            return sl_err_nomem(err, "a batch");
        c->tokens = nv;
        c->cap = nc;
    }
    size_t old = c->json.len;
    int rc = sl_buf_append(&c->json, c->ntokens ? "," : "[", 1, err);
    if (rc == SL_OK)
        rc = sl_buf_append(&c->json, elem, len, err);
    if (rc != SL_OK) {
        /* Atomic: the batch is as it was. */
        c->json.len = old;
        if (c->json.data != NULL)
            c->json.data[old] = '\0';
        return rc;
    }
    if (c->ntokens == 0)
        c->first_outbox_id = outbox_id;
    c->tokens[c->ntokens++] = token;
    return SL_OK;
}

void
sl_pgbatch_flush(sl_pgbatch_t *b)
{
    pgbatch_kick(b);
}

static void
pgbatch_closed(void *arg)
{
    sl_pgbatch_t *b = arg;
    void (*done)(void *) = b->done;
    void *done_arg = b->done_arg;
    batch_free(&b->cur);
    batch_free(&b->inflight);
    batch_free(&b->acking);
    free(b->arg);
    free(b);
    if (done != NULL)
        done(done_arg);
}

void
sl_pgbatch_close(sl_pgbatch_t *b, void (*done)(void *arg), void *arg)
{
    if (b == NULL) {
        if (done != NULL)
            done(arg);
        return;
    }
    size_t unacked = b->cur.ntokens + b->inflight.ntokens;
    if (unacked > 0)
        sl_log_warn("sink.purge", "pipeline=%s sink=%s unacknowledged=%zu", b->env.pipeline,
                    b->ops->what, unacked);
    /* Unacknowledged batches are dropped (never acked) and re-read from the
     * outbox after a restart. Freed once the connection is closed. */
    b->closing = true;
    b->done = done;
    b->done_arg = arg;
    sl_pgconn_close(b->pc, pgbatch_closed, b);
}
