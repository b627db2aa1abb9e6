/*
 * sinks/notify.c - the "notify" sink: one PostgreSQL NOTIFY per message.
 *
 * Every message becomes one pg_notify(channel, payload) on the sink's own
 * connection to "database" (default: the pipeline's outbox database). The
 * channel is a name template ({topic}, {op}); the payload is the JSON
 * envelope when it is shorter than PostgreSQL's limit (SL_NOTIFY_PAYLOAD_MAX,
 * 8000 bytes), otherwise a small reference
 *
 *   {"id":..,"topic":..,"key":..,"op":..,"outbox_id":N,"truncated":true}
 *
 * that a listener resolves with sluice.outbox_message(outbox_id)
 * (outbox/sql/0002_message.sql). docs/notify.md is the listener's contract.
 *
 * Batches (sinks/pgbatch.c). send() encodes the message as one element
 * [channel, payload] of the current batch; a batch is one statement,
 *
 *   SELECT count(pg_notify(e->>0, e->>1)) FROM jsonb_array_elements($1::jsonb) e
 *
 * which runs as its own transaction: when it commits, every notification of
 * the batch is queued for every listener, in array order (outbox id order),
 * and the batch is acknowledged. A batch whose commit is unknown after a lost
 * connection is sent again, so listeners may see a notification twice
 * (at-least-once; they deduplicate by "id"). A statement error that is not
 * about the connection stops the pipeline before the batch.
 *
 * The session runs with synchronous_commit off (see SL_NOTIFY_SQL_SESSION):
 * a notification is with its listeners once its transaction commits, and a
 * server crash loses PostgreSQL's notification queue whatever the WAL says.
 *
 * Everything runs on the loop thread.
 */
#include "sinks/sink_int.h"

#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/*
 * PostgreSQL refuses a payload of 8000 bytes or more (NOTIFY_PAYLOAD_MAX_LENGTH
 * = BLCKSZ - NAMEDATALEN - 128 with the default 8 kB block): an envelope is
 * sent whole only when strictly shorter.
 */
#define SL_NOTIFY_PAYLOAD_MAX 8000
/* A channel is an identifier: at most NAMEDATALEN - 1 = 63 bytes. */
#define SL_NOTIFY_CHANNEL_MAX 63

/*
 * Session set-up. A notify transaction writes nothing but its commit record,
 * and notifications are not crash-safe anyway (PostgreSQL's queue is emptied
 * by a restart): listeners have them once the commit returns, whether or not
 * the commit record reached the disk. So the sink does not wait for the WAL
 * flush, which would otherwise cost one fsync per batch.
 */
#define SL_NOTIFY_SQL_SESSION "SET synchronous_commit = off"

#define SL_NOTIFY_SQL \
    "SELECT count(pg_notify(e->>0, e->>1)) FROM jsonb_array_elements($1::jsonb) AS e"

typedef struct notify_conf {
    char *type;
    char *channel;
    char *database;
    /* Set by validate. */
    sl_template_t *tpl;
} notify_conf_t;

typedef struct notify_sink {
    struct sl_sink base;
    sl_pgbatch_t *batch;      /* owned */
    const sl_template_t *tpl; /* borrowed from the config */
    sl_buf_t env;             /* scratch: one envelope */
    sl_buf_t ref;             /* scratch: one reference payload */
    sl_buf_t elem;            /* scratch: one [channel, payload] element */
} notify_sink_t;

static const sl_cfg_key_t notify_keys[] = {
    {"type", SL_CFG_STRING, offsetof(notify_conf_t, type), true, NULL, 0, 0, NULL, false,
     "\"notify\""},
    {"channel", SL_CFG_STRING, offsetof(notify_conf_t, channel), true, NULL, 0, 0, NULL, false,
     "NOTIFY channel template, 1..63 bytes; {topic} is the outbox topic, {op} the operation"},
    {"database", SL_CFG_STRING, offsetof(notify_conf_t, database), false, NULL, 0, 0, NULL, false,
     "database to notify in (connection string), if not the pipeline's"},
};

/* ------------------------------------------------------------------------ */
/* Config                                                                    */
/* ------------------------------------------------------------------------ */

static int
notify_validate(void *conf, const char *path, sl_err_t *err)
{
    notify_conf_t *c = conf;
    char p[256];
    snprintf(p, sizeof p, "%s.channel", path);
    int rc = sl_template_new(c->channel, p, &c->tpl, err);
    if (rc != SL_OK)
        return rc;
    sl_msg_t sample = {.topic = "orders", .op = "event"};
    char rendered[SL_NOTIFY_CHANNEL_MAX + 1];
    int len = sl_template_render(c->tpl, &sample, rendered, sizeof rendered);
    if (len <= 0) {
        sl_err_set(err, SL_EUSAGE,
                   "%s: template \"%s\" does not make a valid channel (for outbox topic "
                   "\"orders\" it gives %s)",
                   p, c->channel, len == 0 ? "an empty name" : "more than 63 bytes");
        return sl_err_hint(err, "a NOTIFY channel is 1 to 63 bytes, e.g. \"orders_{topic}\"; "
                                "use [a-z0-9_] so that LISTEN needs no double quotes");
    }
    if (c->database != NULL && c->database[0] == '\0') {
        sl_err_set(err, SL_EUSAGE, "%s.database: is empty", path);
        return sl_err_hint(err, "remove the key to notify in the pipeline's database, or set a "
                                "connection string");
    }
    return SL_OK;
}

static void
notify_conf_release(void *conf)
{
    notify_conf_t *c = conf;
    sl_template_free(c->tpl);
    c->tpl = NULL;
}

static const sl_pgbatch_ops_t notify_batch_ops = {
    .what = "notify",
    .sql = SL_NOTIFY_SQL,
    .session_sql = SL_NOTIFY_SQL_SESSION,
};

/* ------------------------------------------------------------------------ */
/* Sink operations                                                           */
/* ------------------------------------------------------------------------ */

static int
notify_create(const void *conf, const sl_sink_env_t *env, sl_sink_t **out, sl_err_t *err)
{
    const notify_conf_t *c = conf;
    notify_sink_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return sl_err_nomem(err, "a notify sink");
    s->base.ops = &sl_sink_notify_ops;
    s->base.env = *env;
    s->tpl = c->tpl;
    const char *db = c->database != NULL ? c->database : env->database;
    int rc = sl_pgbatch_new(env, db, &notify_batch_ops, NULL, s, &s->batch, err);
    if (rc != SL_OK) {
        free(s);
        return rc;
    }
    char q[512];
    sl_log_info("notify.start", "pipeline=%s channel=%s own_database=%s", env->pipeline,
                sl_log_quote(q, sizeof q, c->channel), c->database != NULL ? "true" : "false");
    *out = &s->base;
    return SL_OK;
}

/* Builds the reference payload of m into s->ref; drops the key if it does not fit. */
static int
notify_reference(notify_sink_t *s, const sl_msg_t *m, bool with_key, sl_err_t *err)
{
    char oid[24];
    snprintf(oid, sizeof oid, "%" PRId64, m->outbox_id);
    sl_buf_t *b = &s->ref;
    sl_buf_reset(b);
    int rc;
    if ((rc = sl_buf_append_str(b, "{\"id\":", err)) != SL_OK ||
        (rc = sl_buf_append_json_str(b, m->id, strlen(m->id), err)) != SL_OK ||
        (rc = sl_buf_append_str(b, ",\"topic\":", err)) != SL_OK ||
        (rc = sl_buf_append_json_str(b, m->topic, strlen(m->topic), err)) != SL_OK ||
        (rc = sl_buf_append_str(b, ",\"key\":", err)) != SL_OK)
        return rc;
    if (with_key && m->key != NULL)
        rc = sl_buf_append_json_str(b, m->key, strlen(m->key), err);
    else
        rc = sl_buf_append_str(b, "null", err);
    if (rc != SL_OK || (rc = sl_buf_append_str(b, ",\"op\":", err)) != SL_OK ||
        (rc = sl_buf_append_json_str(b, m->op, strlen(m->op), err)) != SL_OK ||
        (rc = sl_buf_append_str(b, ",\"outbox_id\":", err)) != SL_OK ||
        (rc = sl_buf_append_str(b, oid, err)) != SL_OK ||
        (rc = sl_buf_append_str(b, ",\"truncated\":true}", err)) != SL_OK)
        return rc;
    return SL_OK;
}

static int
notify_send(sl_sink_t *sk, const sl_msg_t *m, uint64_t token, size_t *bytes, sl_err_t *err)
{
    notify_sink_t *s = (notify_sink_t *)sk;
    char channel[SL_NOTIFY_CHANNEL_MAX + 1];
    int clen = sl_template_render(s->tpl, m, channel, sizeof channel);
    if (clen <= 0) {
        sl_err_set(err, SL_ERR, "the NOTIFY channel rendered for outbox topic \"%s\" is %s",
                   m->topic, clen == 0 ? "empty" : "longer than 63 bytes");
        return sl_err_hint(err, "shorten the sink's \"channel\" template (a channel is 1 to 63 "
                                "bytes), or route long topics to another pipeline");
    }
    sl_buf_reset(&s->env);
    int rc = sl_envelope_encode(m, SL_FORMAT_JSON, &s->env, err);
    if (rc != SL_OK)
        return rc;
    const sl_buf_t *payload = &s->env;
    if (s->env.len >= SL_NOTIFY_PAYLOAD_MAX) {
        if ((rc = notify_reference(s, m, true, err)) != SL_OK)
            return rc;
        if (s->ref.len >= SL_NOTIFY_PAYLOAD_MAX &&
            (rc = notify_reference(s, m, false, err)) != SL_OK)
            return rc;
        payload = &s->ref;
    }
    sl_buf_t *e = &s->elem;
    sl_buf_reset(e);
    if ((rc = sl_buf_append_str(e, "[", err)) != SL_OK ||
        (rc = sl_buf_append_json_str(e, channel, (size_t)clen, err)) != SL_OK ||
        (rc = sl_buf_append_str(e, ",", err)) != SL_OK ||
        (rc = sl_buf_append_json_str(e, payload->data, payload->len, err)) != SL_OK ||
        (rc = sl_buf_append_str(e, "]", err)) != SL_OK)
        return rc;
    if ((rc = sl_pgbatch_add(s->batch, e->data, e->len, m->outbox_id, token, err)) != SL_OK)
        return rc;
    *bytes = payload->len;
    return SL_OK;
}

static int
notify_flush(sl_sink_t *sk, sl_err_t *err)
{
    sl_pgbatch_flush(((notify_sink_t *)sk)->batch);
    return SL_OK;
}

static void
notify_closed(void *arg)
{
    notify_sink_t *s = arg;
    sl_buf_free(&s->env);
    sl_buf_free(&s->ref);
    sl_buf_free(&s->elem);
    sl_sink_close_end(&s->base);
}

static void
notify_close(sl_sink_t *sk, void (*done)(void *arg), void *arg)
{
    notify_sink_t *s = (notify_sink_t *)sk;
    if (!sl_sink_close_begin(sk, done, arg))
        return;
    sl_pgbatch_close(s->batch, notify_closed, s);
}

const sl_sink_ops_t sl_sink_notify_ops = {
    .type = "notify",
    .keys = notify_keys,
    .nkeys = sizeof notify_keys / sizeof notify_keys[0],
    .conf_size = sizeof(notify_conf_t),
    .validate = notify_validate,
    .conf_release = notify_conf_release,
    .create = notify_create,
    .send = notify_send,
    .flush = notify_flush,
    .close = notify_close,
};
