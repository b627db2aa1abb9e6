/*
 * sinks/kafka.c - the Kafka sink (librdkafka).
 *
 * Delivery: an idempotent producer with acks=all. A message counts as
 * acknowledged only when its delivery report says so; the report carries the
 * pipeline's sequence number as the message opaque. Transient failures
 * (broker down, leader change, timeouts) are retried inside librdkafka for as
 * long as it takes (message.timeout.ms = 0 means "no timeout"), with its
 * reconnect backoff set to sluice's schedule (100 ms doubling to 30 s).
 * Because the pipeline bounds how many messages are in flight, a broker
 * outage stops reading from the outbox instead of growing memory. A report
 * with an error therefore means a permanent failure for that message (too
 * large, not authorised, invalid topic) or a fatal producer error: the
 * pipeline stops before that message and a restart resumes from there.
 *
 * Threads: librdkafka runs its own threads, but everything it reports
 * (delivery reports, errors, logs) is put on its main queue, which wakes the
 * libuv loop through a pipe (rd_kafka_queue_io_event_enable) and is served by
 * rd_kafka_poll() on the loop thread. A 100 ms timer also serves the queue in
 * case a wake-up is coalesced away. No call here blocks the loop except
 * rd_kafka_destroy at close, after everything was purged.
 *
 * Record layout: key = the entity key given to publish() (NULL when none, so
 * librdkafka spreads those over partitions); value = the envelope (JSON or
 * msgpack); headers sluice-id, sluice-topic, sluice-op, then the publish()
 * headers (string values as they are, other JSON values as JSON text).
 *
 * Tombstones (option "tombstones"): a stream-table delete is then two
 * records, the envelope and after it a record with the same key and no value,
 * which is what tells a compacted topic to forget the key. Same key, so same
 * partition, in that order. The message is acknowledged once both reports
 * are in, whatever order they come in (sinks/kafka_pairs.h).
 */
#include "sinks/kafka_pairs.h"
#include "sinks/sink_int.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

/* Safety net for coalesced queue wake-ups; cheap when idle. */
#define SL_KAFKA_POLL_MS 100
/* Topics named at start at most (the rest are named at their first record). */
#define SL_KAFKA_NAMED_TOPICS_MAX 64
/* Longest rendered Kafka topic name plus NUL (Kafka's limit is 249). */
#define SL_KAFKA_TOPIC_MAX 256
/* Set in the opaque of both records of a delete followed by a tombstone. */
#define SL_KAFKA_PAIR (UINT64_C(1) << 63)

typedef struct kafka_conf {
    char *type;
    char *brokers;
    char *topic;
    char *format;
    const cJSON *properties;
    bool tombstones;
    /* Set by validate. */
    sl_template_t *tpl;
    sl_format_t fmt;
} kafka_conf_t;

typedef struct kafka_sink {
    struct sl_sink base;
    rd_kafka_t *rk;          /* owned */
    rd_kafka_queue_t *mainq; /* owned reference to rk's main queue */
    int pipefd[2];           /* librdkafka writes [1] when the queue wakes */
    uv_poll_t wake;          /* watches pipefd[0] */
    uv_timer_t timer;        /* fallback queue service */
    int open_handles;
    const sl_template_t *tpl; /* borrowed from the config */
    rd_kafka_topic_t **rkts;  /* owned handles of the Kafka topics known up front */
    size_t nrkts;
    sl_format_t fmt;
    sl_buf_t value;     /* reused envelope buffer */
    bool closing;       /* reports after close are dropped */
    sl_kpairs_t *pairs; /* owned; NULL unless tombstones are on */
} kafka_sink_t;

static const char *const kafka_formats[] = {"json", "msgpack", NULL};

static const sl_cfg_key_t kafka_keys[] = {
    {"type", SL_CFG_STRING, offsetof(kafka_conf_t, type), true, NULL, 0, 0, NULL, false,
     "\"kafka\""},
    {"brokers", SL_CFG_STRING, offsetof(kafka_conf_t, brokers), true, NULL, 0, 0, NULL, false,
     "bootstrap servers, host:port[,host:port...]"},
    {"topic", SL_CFG_STRING, offsetof(kafka_conf_t, topic), false, "\"{topic}\"", 0, 0, NULL, false,
     "Kafka topic template; {topic} is the outbox topic, {op} the operation"},
    {"format", SL_CFG_STRING, offsetof(kafka_conf_t, format), false, "\"json\"", 0, 0,
     kafka_formats, false, "envelope encoding of the record value"},
    {"properties", SL_CFG_OBJECT, offsetof(kafka_conf_t, properties), false, NULL, 0, 0, NULL,
     false, "librdkafka producer properties, passed through (strings, numbers, booleans)"},
    {"tombstones", SL_CFG_BOOL, offsetof(kafka_conf_t, tombstones), false, "false", 0, 0, NULL,
     false,
     "after each stream-table delete, also produce a tombstone (same key, no value), so that "
     "a compacted topic drops the row"},
};

/* Properties sluice sets before the user's, who may override them. */
static const char *const kafka_defaults[][2] = {
    {"enable.idempotence", "true"},  {"acks", "all"},
    {"message.timeout.ms", "0"},     {"linger.ms", "1"},
    {"reconnect.backoff.ms", "100"}, {"reconnect.backoff.max.ms", "30000"},
    {"retry.backoff.ms", "100"},     {"log.queue", "true"},
    {"client.id", "sluice-relay"},
};

/* Properties that would break the loop integration if changed. */
static const char *const kafka_reserved[] = {"log.queue", "dr_msg_cb", "dr_cb", NULL};

/* Renders a JSON property value as librdkafka wants it (a string). */
static int
property_text(const cJSON *v, char *buf, size_t n)
{
    if (cJSON_IsString(v))
        return snprintf(buf, n, "%s", v->valuestring) < (int)n ? 0 : -1;
    if (cJSON_IsBool(v))
        return snprintf(buf, n, "%s", cJSON_IsTrue(v) ? "true" : "false") < (int)n ? 0 : -1;
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == (double)(long long)d)
            return snprintf(buf, n, "%lld", (long long)d) < (int)n ? 0 : -1;
        return snprintf(buf, n, "%g", d) < (int)n ? 0 : -1;
    }
    return -1;
}

int
sl_kafka_conf_new(const char *const (*defaults)[2], size_t ndefaults, const char *const *reserved,
                  const char *brokers, const cJSON *properties, const char *path,
                  rd_kafka_conf_t **out, sl_err_t *err)
{
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (conf == NULL)
        return sl_err_nomem(err, "a Kafka configuration");
    for (size_t i = 0; i < ndefaults; i++) {
        if (rd_kafka_conf_set(conf, defaults[i][0], defaults[i][1], errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            return sl_err_set(err, SL_ERR, "%s: librdkafka refused %s=%s: %s", path, defaults[i][0],
                              defaults[i][1], errstr);
        }
    }
    if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr, sizeof errstr) !=
        RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        return sl_err_set(err, SL_EUSAGE, "%s.brokers: %s", path, errstr);
    }
    const cJSON *p;
    cJSON_ArrayForEach (p, properties) {
        char val[4096];
        for (const char *const *r = reserved; *r != NULL; r++) {
            if (strcmp(p->string, *r) == 0) {
                rd_kafka_conf_destroy(conf);
                sl_err_set(err, SL_EUSAGE, "%s.properties.%s: set by sluice and cannot be changed",
                           path, p->string);
                return sl_err_hint(err, "remove this property");
            }
        }
        if (property_text(p, val, sizeof val) != 0) {
            rd_kafka_conf_destroy(conf);
            sl_err_set(err, SL_EUSAGE, "%s.properties.%s: expected a string, number or boolean",
                       path, p->string);
            return sl_err_hint(err, "librdkafka properties are scalar values, e.g. "
                                    "\"compression.type\": \"lz4\"");
        }
        if (rd_kafka_conf_set(conf, p->string, val, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            /* errstr may quote the value, which can be a secret: do not echo it. */
            sl_err_set(err, SL_EUSAGE, "%s.properties.%s: rejected by librdkafka", path, p->string);
            return sl_err_hint(err, "see librdkafka's CONFIGURATION.md for the properties and "
                                    "their values");
        }
    }
    *out = conf;
    return SL_OK;
}

/* Builds the producer's librdkafka conf from defaults, brokers and user properties. */
static int
kafka_conf_build(const kafka_conf_t *c, const char *path, rd_kafka_conf_t **out, sl_err_t *err)
{
    return sl_kafka_conf_new(kafka_defaults, sizeof kafka_defaults / sizeof kafka_defaults[0],
                             kafka_reserved, c->brokers, c->properties, path, out, err);
}

static int
kafka_validate(void *conf, const char *path, sl_err_t *err)
{
    kafka_conf_t *c = conf;
    char p[256];
    snprintf(p, sizeof p, "%s.format", path);
    int rc = sl_format_parse(c->format, &c->fmt, err);
    if (rc != SL_OK)
        return sl_err_prefix(err, "%s: ", p);
    snprintf(p, sizeof p, "%s.topic", path);
    if ((rc = sl_template_new(c->topic, p, &c->tpl, err)) != SL_OK)
        return rc;
    /* Render once for a sample message: literal parts must be valid in a
     * Kafka topic name too (outbox topics already are). */
    sl_msg_t sample = {.topic = "orders", .op = "event"};
    char rendered[SL_KAFKA_TOPIC_MAX];
    if (sl_template_render(c->tpl, &sample, rendered, sizeof rendered) < 0 ||
        sl_kafka_topic_check(rendered, p, err) != SL_OK) {
        sl_err_set(err, SL_EUSAGE,
                   "%s: template \"%s\" does not make a valid Kafka topic "
                   "(for outbox topic \"orders\" it gives \"%s\")",
                   p, c->topic, rendered);
        return sl_err_hint(err, "Kafka topics are at most 249 characters from A-Z a-z 0-9 . _ -");
    }
    if (c->tombstones) {
        /* A tombstone removes its key from the topic it is in, so every
         * record of a row must go to one topic. */
        char ins[SL_KAFKA_TOPIC_MAX], del[SL_KAFKA_TOPIC_MAX];
        sl_msg_t mi = {.topic = "orders", .op = "insert"}, md = {.topic = "orders", .op = "delete"};
        if (sl_template_render(c->tpl, &mi, ins, sizeof ins) < 0 ||
            sl_template_render(c->tpl, &md, del, sizeof del) < 0 || strcmp(ins, del) != 0) {
            sl_err_set(err, SL_EUSAGE,
                       "%s.tombstones: the topic template \"%s\" puts a row's inserts and "
                       "deletes in different topics (\"%s\", \"%s\"), where a tombstone "
                       "cannot remove the row",
                       path, c->topic, ins, del);
            return sl_err_hint(err, "remove {op} from \"topic\", or set \"tombstones\": false");
        }
    }
    if (c->brokers[0] == '\0') {
        sl_err_set(err, SL_EUSAGE, "%s.brokers: is empty", path);
        return sl_err_hint(err, "set it to host:port of at least one broker, e.g. "
                                "\"${ENV:KAFKA_BROKERS}\"");
    }
    rd_kafka_conf_t *rkc = NULL;
    if ((rc = kafka_conf_build(c, path, &rkc, err)) != SL_OK)
        return rc;
    /* Some properties only conflict as a whole (acks=1 with idempotence):
     * librdkafka checks that when a client is created. A client that never
     * produces is cheap to create and destroy. */
    char errstr[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, rkc, errstr, sizeof errstr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(rkc);
        sl_err_set(err, SL_EUSAGE, "%s.properties: %s", path, errstr);
        return sl_err_hint(err, "fix or remove the conflicting properties; sluice sets "
                                "enable.idempotence=true and acks=all by default");
    }
    rd_kafka_destroy(rk);
    return SL_OK;
}

static void
kafka_conf_release(void *conf)
{
    kafka_conf_t *c = conf;
    sl_template_free(c->tpl);
    c->tpl = NULL;
}

/* ------------------------------------------------------------------------ */
/* Callbacks, all served on the loop thread by rd_kafka_poll                  */
/* ------------------------------------------------------------------------ */

/* Per-message errors that no retry can fix. */
static bool
kafka_err_is_permanent(rd_kafka_resp_err_t e)
{
    switch ((int)e) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_INVALID_REQUIRED_ACKS:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT: return true;
    default: return false;
    }
}

static void
kafka_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    kafka_sink_t *s = opaque;
    if (s->closing)
        return;
    uint64_t token = (uint64_t)(uintptr_t)msg->_private;
    bool ok = msg->err == RD_KAFKA_RESP_ERR_NO_ERROR;
    if (token & SL_KAFKA_PAIR) {
        /* One record of two: the message is acknowledged by the last
         * report, and fails at most once. */
        token &= ~SL_KAFKA_PAIR;
        sl_kpair_verdict_t v = sl_kpairs_report(s->pairs, token, ok);
        if (v == SL_KPAIR_WAIT)
            return;
        ok = v == SL_KPAIR_ACK;
    }
    if (ok) {
        s->base.env.on_ack(s->base.env.ctx, token, SL_OK, NULL);
        return;
    }
    sl_err_t err;
    sl_err_set(&err, SL_ERR, "Kafka delivery to topic \"%s\" failed: %s",
               rd_kafka_topic_name(msg->rkt), rd_kafka_err2str(msg->err));
    err.native = msg->err;
    if (msg->err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
        sl_err_hint(&err,
                    "the record (%zu bytes) is larger than the broker or topic accepts; "
                    "raise message.max.bytes (properties) and the broker's limit, or "
                    "publish smaller payloads",
                    msg->len);
    if (!kafka_err_is_permanent(msg->err)) {
        /* With message.timeout.ms = 0 librdkafka retries transient errors
         * itself; what reaches us otherwise is a fatal producer error. */
        char why[256];
        if (rd_kafka_fatal_error(rk, why, sizeof why) != RD_KAFKA_RESP_ERR_NO_ERROR)
            sl_err_set(&err, SL_ERR, "the Kafka producer failed fatally: %s", why);
        sl_err_hint(&err, "restart the relay: the pipeline resumes from its checkpoint "
                          "(unacknowledged messages are sent again)");
    }
    s->base.env.on_ack(s->base.env.ctx, token, SL_ERR, &err);
}

static void
kafka_error_cb(rd_kafka_t *rk, int code, const char *reason, void *opaque)
{
    kafka_sink_t *s = opaque;
    char q[1024];
    bool fatal = code == RD_KAFKA_RESP_ERR__FATAL;
    if (fatal) {
        char why[512];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
        sl_log_error("kafka.fatal", "pipeline=%s code=%s err=%s", s->base.env.pipeline,
                     rd_kafka_err2name(orig), sl_log_quote(q, sizeof q, why));
        return;
    }
    /* Transport and all-brokers-down errors are retried by librdkafka. */
    sl_log_warn("kafka.error", "pipeline=%s code=%s err=%s", s->base.env.pipeline,
                rd_kafka_err2name((rd_kafka_resp_err_t)code), sl_log_quote(q, sizeof q, reason));
}

static void
kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    kafka_sink_t *s = rd_kafka_opaque(rk);
    sl_log_level_t lv = level <= LOG_ERR       ? SL_LOG_ERROR
                        : level <= LOG_WARNING ? SL_LOG_WARN
                        : level <= LOG_INFO    ? SL_LOG_INFO
                                               : SL_LOG_DEBUG;
    if (!sl_log_is_enabled(lv))
        return;
    char q[1024];
    sl_log(lv, "kafka.log", "pipeline=%s facility=%s msg=%s", s ? s->base.env.pipeline : "?", fac,
           sl_log_quote(q, sizeof q, buf));
}

static void
kafka_serve(kafka_sink_t *s)
{
    while (!s->closing && rd_kafka_poll(s->rk, 0) > 0) {
    }
}

static void
kafka_wake_cb(uv_poll_t *h, int status, int events)
{
    kafka_sink_t *s = h->data;
    char drain[256];
    while (read(s->pipefd[0], drain, sizeof drain) > 0) {
    }
    kafka_serve(s);
}

static void
kafka_timer_cb(uv_timer_t *t)
{
    kafka_serve(t->data);
}

/* ------------------------------------------------------------------------ */
/* Sink operations                                                           */
/* ------------------------------------------------------------------------ */

/*
 * Names the Kafka topics known before the first message: the template's only
 * topic when it is constant, else the rendering of each exact outbox topic of
 * the pipeline (when the template does not depend on {op}). Their metadata
 * then comes with the producer's first request; a topic first named at the
 * first produce waits for librdkafka's next metadata scan (about a second).
 * Best effort: a topic not named here still works, only its first record
 * may wait.
 */
static void
kafka_name_topics(kafka_sink_t *s, const sl_template_t *tpl, const sl_sink_env_t *env)
{
    size_t max = env->ntopics > 0 ? env->ntopics : 1;
    if (max > SL_KAFKA_NAMED_TOPICS_MAX)
        max = SL_KAFKA_NAMED_TOPICS_MAX;
    s->rkts = calloc(max, sizeof *s->rkts);
    if (s->rkts == NULL)
        return;
    for (size_t i = 0; i < max; i++) {
        const char *outbox = env->ntopics > 0 ? env->topics[i] : "";
        if (!sl_template_is_constant(tpl) && (env->ntopics == 0 || strchr(outbox, '*') != NULL))
            continue;
        char a[SL_KAFKA_TOPIC_MAX], b[SL_KAFKA_TOPIC_MAX];
        sl_msg_t ma = {.topic = outbox, .op = "a"}, mb = {.topic = outbox, .op = "b"};
        if (sl_template_render(tpl, &ma, a, sizeof a) < 0 ||
            sl_template_render(tpl, &mb, b, sizeof b) < 0 || strcmp(a, b) != 0 ||
            sl_kafka_topic_check(a, "topic", NULL) != SL_OK)
            continue;
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(s->rk, a, NULL);
        if (rkt != NULL)
            s->rkts[s->nrkts++] = rkt;
        if (sl_template_is_constant(tpl))
            break;
    }
}

static void
kafka_topics_release(kafka_sink_t *s)
{
    for (size_t i = 0; i < s->nrkts; i++)
        rd_kafka_topic_destroy(s->rkts[i]);
    free(s->rkts);
    s->rkts = NULL;
    s->nrkts = 0;
}

static int
kafka_create(const void *conf, const sl_sink_env_t *env, sl_sink_t **out, sl_err_t *err)
{
    const kafka_conf_t *c = conf;
    kafka_sink_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return sl_err_nomem(err, "a Kafka sink");
    s->base.ops = &sl_sink_kafka_ops;
    s->base.env = *env;
    s->tpl = c->tpl;
    s->fmt = c->fmt;
    s->pipefd[0] = s->pipefd[1] = -1;
    int rc;
    if (c->tombstones && (rc = sl_kpairs_new(env->max_inflight, &s->pairs, err)) != SL_OK) {
        free(s);
        return rc;
    }

    rd_kafka_conf_t *rkc = NULL;
    rc = kafka_conf_build(c, "sink", &rkc, err);
    if (rc != SL_OK)
        goto fail_free;
    /* librdkafka's own queue must never be the limit before our window. */
    char val[32];
    char errstr[512];
    snprintf(val, sizeof val, "%zu", env->max_inflight * (c->tombstones ? 2 : 1) + 1024);
    rd_kafka_conf_set(rkc, "queue.buffering.max.messages", val, errstr, sizeof errstr);
    snprintf(val, sizeof val, "%zu", env->max_inflight_bytes / 1024 * 2 + 1024);
    rd_kafka_conf_set(rkc, "queue.buffering.max.kbytes", val, errstr, sizeof errstr);
    rd_kafka_conf_set_opaque(rkc, s);
    rd_kafka_conf_set_dr_msg_cb(rkc, kafka_dr_cb);
    rd_kafka_conf_set_error_cb(rkc, kafka_error_cb);
    rd_kafka_conf_set_log_cb(rkc, kafka_log_cb);

    s->rk = rd_kafka_new(RD_KAFKA_PRODUCER, rkc, errstr, sizeof errstr);
    if (s->rk == NULL) {
        rd_kafka_conf_destroy(rkc);
        rc = sl_err_set(err, SL_ERR, "cannot create the Kafka producer: %s", errstr);
        goto fail_free;
    }
    /* Logs go to the main queue, which the loop serves. */
    rd_kafka_set_log_queue(s->rk, NULL);
    kafka_name_topics(s, c->tpl, env);
    if (pipe(s->pipefd) != 0 || fcntl(s->pipefd[0], F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(s->pipefd[1], F_SETFL, O_NONBLOCK) != 0) {
        rc = sl_err_set(err, SL_ERR, "cannot create a pipe: %s", strerror(errno));
        goto fail_rk;
    }
    s->mainq = rd_kafka_queue_get_main(s->rk);
    rd_kafka_queue_io_event_enable(s->mainq, s->pipefd[1], "1", 1);
    uv_poll_init(env->loop, &s->wake, s->pipefd[0]);
    uv_timer_init(env->loop, &s->timer);
    s->wake.data = s;
    s->timer.data = s;
    s->open_handles = 2;
    uv_poll_start(&s->wake, UV_READABLE, kafka_wake_cb);
    uv_timer_start(&s->timer, kafka_timer_cb, SL_KAFKA_POLL_MS, SL_KAFKA_POLL_MS);
    /* brokers may come from ${ENV:..}; like every interpolated value it is not logged. */
    char q[512];
    sl_log_info("kafka.start", "pipeline=%s topic=%s format=%s tombstones=%s librdkafka=%s",
                env->pipeline, sl_log_quote(q, sizeof q, c->topic), c->format,
                c->tombstones ? "true" : "false", rd_kafka_version_str());
    *out = &s->base;
    return SL_OK;

fail_rk:
    kafka_topics_release(s);
    rd_kafka_destroy(s->rk);
fail_free:
    sl_kpairs_free(s->pairs);
    free(s);
    return rc;
}

/* Adds the publish() headers (a JSON object) to hdrs. */
static int
kafka_add_user_headers(rd_kafka_headers_t *hdrs, const char *json, uint64_t outbox_id,
                       sl_err_t *err)
{
    if (json == NULL || strcmp(json, "{}") == 0)
        return SL_OK;
    cJSON *obj = cJSON_Parse(json);
    if (obj == NULL || !cJSON_IsObject(obj)) {
        cJSON_Delete(obj);
        return sl_err_set(err, SL_ERR,
                          "headers of outbox message %" PRIu64 " are not a JSON "
                          "object",
                          outbox_id);
    }
    const cJSON *h;
    int rc = SL_OK;
    cJSON_ArrayForEach (h, obj) {
        if (cJSON_IsString(h)) {
            rd_kafka_header_add(hdrs, h->string, -1, h->valuestring, -1);
            continue;
        }
        char *text = cJSON_PrintUnformatted(h);
        if (text == NULL) {
            rc = sl_err_nomem(err, "a Kafka header");
            break;
        }
        rd_kafka_header_add(hdrs, h->string, -1, text, -1);
        cJSON_free(text);
    }
    cJSON_Delete(obj);
    return rc;
}

/* Produces the tombstone that follows a delete: its key, no value, headers
 * sluice-id and sluice-topic of the message and sluice-op "tombstone". */
static rd_kafka_resp_err_t
kafka_send_tombstone(kafka_sink_t *s, const sl_msg_t *m, const char *topic, size_t keylen,
                     uint64_t opaque)
{
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(4);
    if (hdrs == NULL)
        return RD_KAFKA_RESP_ERR__FAIL; /* (librdkafka aborts on out of memory instead) */
    rd_kafka_header_add(hdrs, "sluice-id", -1, m->id, -1);
    rd_kafka_header_add(hdrs, "sluice-topic", -1, m->topic, -1);
    rd_kafka_header_add(hdrs, "sluice-op", -1, "tombstone", -1);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        s->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_VALUE(NULL, 0), RD_KAFKA_V_KEY(m->key, keylen), RD_KAFKA_V_HEADERS(hdrs),
        RD_KAFKA_V_OPAQUE((void *)(uintptr_t)opaque), RD_KAFKA_V_END);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
        rd_kafka_headers_destroy(hdrs); /* Not taken on failure. */
    return e;
}

static int
kafka_send(sl_sink_t *sk, const sl_msg_t *m, uint64_t token, size_t *bytes, sl_err_t *err)
{
    kafka_sink_t *s = (kafka_sink_t *)sk;
    char topic[SL_KAFKA_TOPIC_MAX];
    if (sl_template_render(s->tpl, m, topic, sizeof topic) < 0 ||
        sl_kafka_topic_check(topic, "rendered Kafka topic", err) != SL_OK) {
        sl_err_set(err, SL_ERR,
                   "the Kafka topic rendered for outbox topic \"%s\" is not a "
                   "valid Kafka topic name",
                   m->topic);
        return sl_err_hint(err, "check the sink's \"topic\" template: Kafka topics are at most "
                                "249 characters from A-Z a-z 0-9 . _ -");
    }
    sl_buf_reset(&s->value);
    int rc = sl_envelope_encode(m, s->fmt, &s->value, err);
    if (rc != SL_OK)
        return rc;
    rd_kafka_headers_t *hdrs = rd_kafka_headers_new(8);
    if (hdrs == NULL)
        return sl_err_nomem(err, "Kafka headers");
    rd_kafka_header_add(hdrs, "sluice-id", -1, m->id, -1);
    rd_kafka_header_add(hdrs, "sluice-topic", -1, m->topic, -1);
    rd_kafka_header_add(hdrs, "sluice-op", -1, m->op, -1);
    if ((rc = kafka_add_user_headers(hdrs, m->headers, (uint64_t)m->outbox_id, err)) != SL_OK) {
        rd_kafka_headers_destroy(hdrs);
        return rc;
    }
    size_t keylen = m->key ? strlen(m->key) : 0;
    bool pair = s->pairs != NULL && m->key != NULL && strcmp(m->op, "delete") == 0;
    if (pair && !sl_kpairs_start(s->pairs, token)) {
        rd_kafka_headers_destroy(hdrs);
        return sl_err_set(err, SL_ERR,
                          "the Kafka sink holds more deletes in flight than the pipeline's "
                          "window allows (outbox message %" PRId64 ")",
                          m->outbox_id);
    }
    uint64_t opaque = pair ? token | SL_KAFKA_PAIR : token;
    rd_kafka_resp_err_t e = rd_kafka_producev(
        s->rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_VALUE(s->value.data, s->value.len), RD_KAFKA_V_KEY(m->key, keylen),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE((void *)(uintptr_t)opaque), RD_KAFKA_V_END);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR && !pair) {
        *bytes = s->value.len + keylen;
        return SL_OK;
    }
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if ((e = kafka_send_tombstone(s, m, topic, keylen, opaque)) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            *bytes = s->value.len + 2 * keylen;
            return SL_OK;
        }
        /* The envelope is on its way: its report must not acknowledge the
         * message, which the pipeline takes as not sent. After a restart the
         * delete is sent again, with its tombstone. */
        sl_kpairs_abandon(s->pairs, token);
        sl_err_set(err, SL_ERR,
                   "Kafka refused the tombstone that follows the delete of outbox message "
                   "%" PRId64 " (topic \"%s\"): %s",
                   m->outbox_id, topic, rd_kafka_err2str(e));
        err->native = e;
        return sl_err_hint(err, "restart the relay: the pipeline resumes from its checkpoint");
    }
    if (pair)
        sl_kpairs_cancel(s->pairs, token);
    rd_kafka_headers_destroy(hdrs); /* Not taken on failure. */
    if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        return SL_AGAIN;
    sl_err_set(err, SL_ERR, "Kafka refused the record for topic \"%s\": %s", topic,
               rd_kafka_err2str(e));
    err->native = e;
    if (e == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE)
        sl_err_hint(err,
                    "the record (%zu bytes) exceeds the producer's message.max.bytes; "
                    "raise it in the sink's properties (and the broker's limit) or publish "
                    "smaller payloads",
                    s->value.len);
    return SL_ERR;
}

static int
kafka_flush(sl_sink_t *sk, sl_err_t *err)
{
    /* librdkafka batches by linger.ms itself; nothing to push here. */
    return SL_OK;
}

static void
kafka_handle_closed(uv_handle_t *h)
{
    kafka_sink_t *s = h->data;
    if (--s->open_handles > 0)
        return;
    rd_kafka_queue_io_event_enable(s->mainq, -1, NULL, 0);
    rd_kafka_queue_destroy(s->mainq);
    kafka_topics_release(s);
    rd_kafka_destroy(s->rk);
    close(s->pipefd[0]);
    close(s->pipefd[1]);
    sl_buf_free(&s->value);
    sl_kpairs_free(s->pairs);
    sl_sink_close_end(&s->base);
}

static void
kafka_close(sl_sink_t *sk, void (*done)(void *arg), void *arg)
{
    kafka_sink_t *s = (kafka_sink_t *)sk;
    if (!sl_sink_close_begin(sk, done, arg))
        return;
    int outq = rd_kafka_outq_len(s->rk);
    if (outq > 0)
        sl_log_warn("kafka.purge", "pipeline=%s unacknowledged=%d", s->base.env.pipeline, outq);
    /* Unacknowledged messages are dropped here and re-read from the outbox
     * after a restart; their reports are ignored. */
    s->closing = true;
    rd_kafka_purge(s->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_poll(s->rk, 0);
    uv_poll_stop(&s->wake);
    uv_timer_stop(&s->timer);
    uv_close((uv_handle_t *)&s->wake, kafka_handle_closed);
    uv_close((uv_handle_t *)&s->timer, kafka_handle_closed);
}

const sl_sink_ops_t sl_sink_kafka_ops = {
    .type = "kafka",
    .keys = kafka_keys,
    .nkeys = sizeof kafka_keys / sizeof kafka_keys[0],
    .conf_size = sizeof(kafka_conf_t),
    .validate = kafka_validate,
    .conf_release = kafka_conf_release,
    .create = kafka_create,
    .send = kafka_send,
    .flush = kafka_flush,
    .close = kafka_close,
};
