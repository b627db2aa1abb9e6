/*
 * sinks/inbox.c - the "inbox" sink: messages into an inbox table of a local
 * or remote PostgreSQL database, each exactly once.
 *
 *   {"type": "inbox", "inbox": "orders", "database": "${ENV:DOWNSTREAM_DSN}"}
 *
 * Each message becomes one element of a batch for sluice.inbox_insert()
 * (inbox/sql/0003_inbox.sql) on the destination database:
 *
 *   {"message_id": <stable id>, "topic": .., "key": ..|null,
 *    "payload": <the published payload>, "headers": <the published headers>}
 *
 * inbox_insert does INSERT ... ON CONFLICT (message_id) DO NOTHING and
 * returns how many rows were new and how many were duplicates. The batch is
 * one statement, so its transaction commits before the batch is
 * acknowledged (sinks/pgbatch.c). A batch sent again after a crash or a lost
 * connection therefore changes nothing in the inbox: its messages are
 * counted as duplicates (logged as event=inbox.duplicates) and never become
 * visible twice. The destination needs `sluice init` (for the function) and
 * sluice.create_inbox(name) before the relay starts; an unknown inbox stops
 * the pipeline with the error and a hint.
 */
#include "sinks/sink_int.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* An inbox name, as sluice.create_inbox accepts it: [a-z][a-z0-9_]{0,40}. */
#define SL_INBOX_NAME_MAX 41

#define SL_INBOX_SQL "SELECT inserted, duplicates FROM sluice.inbox_insert($2, $1::jsonb)"

typedef struct inbox_conf {
    char *type;
    char *inbox;
    char *database;
} inbox_conf_t;

typedef struct inbox_sink {
    struct sl_sink base;
    sl_pgbatch_t *batch; /* owned */
    sl_buf_t elem;       /* scratch: one element */
    int64_t inserted;    /* totals, for logs */
    int64_t duplicates;
} inbox_sink_t;

static const sl_cfg_key_t inbox_keys[] = {
    {"type", SL_CFG_STRING, offsetof(inbox_conf_t, type), true, NULL, 0, 0, NULL, false,
     "\"inbox\""},
    {"inbox", SL_CFG_STRING, offsetof(inbox_conf_t, inbox), true, NULL, 0, 0, NULL, false,
     "name of the inbox (made with sluice.create_inbox) in the destination database"},
    {"database", SL_CFG_STRING, offsetof(inbox_conf_t, database), false, NULL, 0, 0, NULL, false,
     "destination database (connection string), if not the pipeline's"},
};

static int
inbox_validate(void *conf, const char *path, sl_err_t *err)
{
    inbox_conf_t *c = conf;
    size_t len = strlen(c->inbox);
    bool ok = len > 0 && len <= SL_INBOX_NAME_MAX && c->inbox[0] >= 'a' && c->inbox[0] <= 'z';
    for (size_t i = 1; ok && i < len; i++) {
        char ch = c->inbox[i];
        ok = (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_';
    }
    if (!ok) {
        sl_err_set(err, SL_EUSAGE, "%s.inbox: invalid inbox name \"%s\"", path, c->inbox);
        return sl_err_hint(err, "an inbox name is a lower-case letter followed by up to 40 "
                                "lower-case letters, digits or '_', as in sluice.create_inbox");
    }
    if (c->database != NULL && c->database[0] == '\0') {
        sl_err_set(err, SL_EUSAGE, "%s.database: is empty", path);
        return sl_err_hint(err, "remove the key to write to the pipeline's database, or set a "
                                "connection string");
    }
    return SL_OK;
}

/* Reads (inserted, duplicates) of a committed batch. Runs on the loop. */
static int
inbox_result(void *ctx, PGresult *res, size_t n, sl_err_t *err)
{
    inbox_sink_t *s = ctx;
    if (PQntuples(res) != 1 || PQnfields(res) != 2)
        return sl_err_set(err, SL_ERR, "sluice.inbox_insert returned an unexpected result");
    int64_t ins = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    int64_t dup = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    s->inserted += ins;
    s->duplicates += dup;
    if (dup > 0)
        sl_log_info("inbox.duplicates",
                    "pipeline=%s batch=%zu inserted=%" PRId64 " duplicates=%" PRId64
                    " duplicates_total=%" PRId64,
                    s->base.env.pipeline, n, ins, dup, s->duplicates);
    return SL_OK;
}

static const sl_pgbatch_ops_t inbox_batch_ops = {
    .what = "inbox",
    .sql = SL_INBOX_SQL,
    .result = inbox_result,
};

static int
inbox_create(const void *conf, const sl_sink_env_t *env, sl_sink_t **out, sl_err_t *err)
{
    const inbox_conf_t *c = conf;
    inbox_sink_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return sl_err_nomem(err, "an inbox sink");
    s->base.ops = &sl_sink_inbox_ops;
    s->base.env = *env;
    const char *db = c->database != NULL ? c->database : env->database;
    int rc = sl_pgbatch_new(env, db, &inbox_batch_ops, c->inbox, s, &s->batch, err);
    if (rc != SL_OK) {
        free(s);
        return rc;
    }
    sl_log_info("inbox.start", "pipeline=%s inbox=%s own_database=%s", env->pipeline, c->inbox,
                c->database != NULL ? "true" : "false");
    *out = &s->base;
    return SL_OK;
}

static int
inbox_send(sl_sink_t *sk, const sl_msg_t *m, uint64_t token, size_t *bytes, sl_err_t *err)
{
    inbox_sink_t *s = (inbox_sink_t *)sk;
    sl_buf_t *e = &s->elem;
    sl_buf_reset(e);
    int rc;
    if ((rc = sl_buf_append_str(e, "{\"message_id\":", err)) != SL_OK ||
        (rc = sl_buf_append_json_str(e, m->id, strlen(m->id), err)) != SL_OK ||
        (rc = sl_buf_append_str(e, ",\"topic\":", err)) != SL_OK ||
        (rc = sl_buf_append_json_str(e, m->topic, strlen(m->topic), err)) != SL_OK ||
        (rc = sl_buf_append_str(e, ",\"key\":", err)) != SL_OK)
        return rc;
    rc = m->key != NULL ? sl_buf_append_json_str(e, m->key, strlen(m->key), err)
                        : sl_buf_append_str(e, "null", err);
    /* payload and headers are JSON text from jsonb: embedded as they are. */
    if (rc != SL_OK || (rc = sl_buf_append_str(e, ",\"payload\":", err)) != SL_OK ||
        (rc = sl_buf_append_str(e, m->payload, err)) != SL_OK ||
        (rc = sl_buf_append_str(e, ",\"headers\":", err)) != SL_OK ||
        (rc = sl_buf_append_str(e, m->headers[0] != '\0' ? m->headers : "{}", err)) != SL_OK)
        return rc;
    /* An invalid message (reverse relay) is stored as dead, with the reason. */
    if (m->error != NULL &&
        ((rc = sl_buf_append_str(e, ",\"error\":", err)) != SL_OK ||
         (rc = sl_buf_append_json_str(e, m->error, strlen(m->error), err)) != SL_OK))
        return rc;
    if ((rc = sl_buf_append_str(e, "}", err)) != SL_OK)
        return rc;
    if ((rc = sl_pgbatch_add(s->batch, e->data, e->len, m->outbox_id, token, err)) != SL_OK)
        return rc;
    *bytes = e->len;
    return SL_OK;
}

static int
inbox_flush(sl_sink_t *sk, sl_err_t *err)
{
    sl_pgbatch_flush(((inbox_sink_t *)sk)->batch);
    return SL_OK;
}

static void
inbox_closed(void *arg)
{
    inbox_sink_t *s = arg;
    sl_log_info("inbox.closed", "pipeline=%s inserted_total=%" PRId64 " duplicates_total=%" PRId64,
                s->base.env.pipeline, s->inserted, s->duplicates);
    sl_buf_free(&s->elem);
    sl_sink_close_end(&s->base);
}

static void
inbox_close(sl_sink_t *sk, void (*done)(void *arg), void *arg)
{
    inbox_sink_t *s = (inbox_sink_t *)sk;
    if (!sl_sink_close_begin(sk, done, arg))
        return;
    sl_pgbatch_close(s->batch, inbox_closed, s);
}

const sl_sink_ops_t sl_sink_inbox_ops = {
    .type = "inbox",
    .keys = inbox_keys,
    .nkeys = sizeof inbox_keys / sizeof inbox_keys[0],
    .conf_size = sizeof(inbox_conf_t),
    .validate = inbox_validate,
    .create = inbox_create,
    .send = inbox_send,
    .flush = inbox_flush,
    .close = inbox_close,
};
