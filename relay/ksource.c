/*
 * relay/ksource.c - the reverse relay: a pipeline whose source is Kafka and
 * whose sink is an inbox.
 *
 *   {"name": "orders-in",
 *    "source": {"type": "kafka", "brokers": "...", "topics": ["orders"],
 *               "group": "orders-inbox", "format": "sluice"},
 *    "sink": {"type": "inbox", "inbox": "orders"}}
 *
 * A librdkafka consumer in a consumer group reads the topics; each record
 * becomes one inbox message and is handed to the inbox sink, whose batches
 * commit in PostgreSQL before they are acknowledged. Kafka offsets are
 * committed only past acknowledged records, so a crash anywhere redelivers
 * records the inbox may already hold: the inbox drops them by message id
 * (counted as duplicates) and nothing is lost or seen twice.
 *
 * Message id: the record's `sluice-id` header (what the kafka sink writes,
 * the outbox message's stable id) when present, else "<topic>/<partition>/
 * <offset>", which is just as stable for a record that stays in its topic.
 *
 * Formats: "sluice" (default) expects the JSON envelope the kafka sink writes
 * and stores its payload and headers as they were published; "json" stores
 * any JSON value as the payload and the record's headers as headers. A record
 * that is not valid for its format (not UTF-8, not JSON, no envelope payload,
 * a key that is not text) is not dropped and does not stop its partition: it
 * is stored as a dead inbox message whose last_error says what is wrong and
 * whose payload keeps the raw value ({"raw": text} or {"raw_base64": ..}).
 *
 * Offsets: per assigned partition, a FIFO of the offsets sent to the sink in
 * order; acknowledgements pop its acknowledged prefix, and the offset after
 * the last popped record is what gets committed (asynchronously, at most once
 * per checkpoint_interval_ms, and synchronously before partitions are given
 * up). Rebalances use the eager protocol: on revocation the source stops
 * reading, waits for the sink to settle what is in flight, commits, and only
 * then gives the partitions up (librdkafka waits for that assign call), so
 * the next owner starts after every record this one stored.
 *
 * Memory: at most max_inflight records (and max_inflight_bytes of inbox
 * elements) are unacknowledged; librdkafka's pre-fetch queue is bounded by
 * queued.max.messages.kbytes (set from max_inflight_bytes unless the user
 * sets it).
 *
 * Everything runs on the loop thread: the consumer queue wakes the loop
 * through a pipe (rd_kafka_queue_io_event_enable), with a timer as a safety
 * net for coalesced wake-ups. rd_kafka_commit (synchronous) and
 * rd_kafka_consumer_close block the loop, only when partitions are revoked and
 * at shutdown.
 */
#include "relay/relay_int.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

/* Safety-net service interval of the consumer queue. */
#define SL_KSRC_TICK_MS 100
/* Longest sluice-id header taken as a message id. */
#define SL_KSRC_ID_MAX 256
/* librdkafka's pre-fetch queue bounds, in KiB. */
#define SL_KSRC_QUEUE_KB_MIN 1024
#define SL_KSRC_QUEUE_KB_MAX 65536

static const char *const ks_formats[] = {"sluice", "json", NULL};
static const char *const ks_types[] = {"kafka", NULL};

static const sl_cfg_key_t ks_keys[] = {
    {"type", SL_CFG_STRING, offsetof(sl_ksource_conf_t, type), true, NULL, 0, 0, ks_types, false,
     "\"kafka\" (without a source, a pipeline reads the outbox)"},
    {"brokers", SL_CFG_STRING, offsetof(sl_ksource_conf_t, brokers), true, NULL, 0, 0, NULL, false,
     "bootstrap servers, host:port[,host:port...]"},
    {"topics", SL_CFG_STRLIST, offsetof(sl_ksource_conf_t, topics), true, NULL, 0, 0, NULL, false,
     "Kafka topics to read"},
    {"group", SL_CFG_STRING, offsetof(sl_ksource_conf_t, group), true, NULL, 0, 0, NULL, false,
     "consumer group id; its committed offsets are the pipeline's checkpoint"},
    {"format", SL_CFG_STRING, offsetof(sl_ksource_conf_t, format), false, "\"sluice\"", 0, 0,
     ks_formats, false,
     "record values: \"sluice\" envelopes (payload and headers kept) or any \"json\""},
    {"properties", SL_CFG_OBJECT, offsetof(sl_ksource_conf_t, properties), false, NULL, 0, 0, NULL,
     false, "librdkafka consumer properties, passed through (strings, numbers, booleans)"},
};

/* Consumer properties sluice sets before the user's. */
static const char *const ks_defaults[][2] = {
    {"enable.partition.eof", "false"},
    {"client.id", "sluice-relay"},
    {"reconnect.backoff.ms", "100"},
    {"reconnect.backoff.max.ms", "30000"},
    {"partition.assignment.strategy", "range,roundrobin"},
};

/* Properties that the offset and rebalance handling below depend on. */
static const char *const ks_reserved[] = {"enable.auto.commit",
                                          "enable.auto.offset.store",
                                          "group.id",
                                          "bootstrap.servers",
                                          "partition.assignment.strategy",
                                          "log.queue",
                                          NULL};

int
sl_ksource_conf_parse(const cJSON *obj, const char *path, sl_ksource_conf_t **out, sl_err_t *err)
{
    sl_ksource_conf_t *c = calloc(1, sizeof *c);
    if (c == NULL)
        return sl_err_nomem(err, "a source config");
    int rc = sl_cfg_object_parse(obj, path, ks_keys, sizeof ks_keys / sizeof ks_keys[0], c, err);
    if (rc != SL_OK) {
        free(c);
        return rc;
    }
    if (c->topics.n == 0) {
        sl_err_set(err, SL_EUSAGE, "%s.topics: is empty", path);
        sl_err_hint(err, "name at least one Kafka topic to read");
        sl_ksource_conf_free(c);
        return SL_EUSAGE;
    }
    for (size_t i = 0; i < c->topics.n; i++) {
        char tp[128];
        snprintf(tp, sizeof tp, "%s.topics[%zu]", path, i);
        if ((rc = sl_kafka_topic_check(c->topics.v[i], tp, err)) != SL_OK) {
            sl_ksource_conf_free(c);
            return rc;
        }
    }
    /* Catch bad properties at load time, before anything starts. */
    rd_kafka_conf_t *probe = NULL;
    rc = sl_kafka_conf_new(ks_defaults, sizeof ks_defaults / sizeof ks_defaults[0], ks_reserved,
                           c->brokers, c->properties, path, &probe, err);
    if (rc != SL_OK) {
        sl_ksource_conf_free(c);
        return rc;
    }
    rd_kafka_conf_destroy(probe);
    *out = c;
    return SL_OK;
}

void
sl_ksource_conf_free(sl_ksource_conf_t *c)
{
    if (c == NULL)
        return;
    sl_cfg_release(ks_keys, sizeof ks_keys / sizeof ks_keys[0], c);
    free(c);
}

void
sl_ksource_help(FILE *out)
{
    fprintf(out, "\n  pipelines[].source (optional; absent = the outbox):\n");
    sl_cfg_keys_help(out, ks_keys, sizeof ks_keys / sizeof ks_keys[0], "    ");
}

/* ------------------------------------------------------------------------ */
/* Partitions and their in-flight offsets                                    */
/* ------------------------------------------------------------------------ */

typedef struct ks_entry {
    int64_t offset;
    uint32_t bytes;
    bool acked;
} ks_entry_t;

typedef struct ks_part {
    char *topic; /* owned */
    int32_t partition;
    uint16_t epoch; /* bumped on every assignment: older tokens are stale */
    bool assigned;
    int64_t commit_off; /* next offset to commit; -1 = nothing acknowledged yet */
    int64_t committed;  /* last commit sent; -1 = none */
    ks_entry_t *q;      /* ring of records sent to the sink, in offset order */
    size_t head, len, cap;
    uint32_t head_seq; /* sequence number of q[head] */
} ks_part_t;

typedef enum ks_state {
    KS_RUNNING,
    KS_DRAINING, /* stop: no more reads, wait for acks until the deadline */
    KS_CLOSING,  /* handles and the sink are closing */
    KS_STOPPED,
} ks_state_t;

struct sl_ksource {
    uv_loop_t *loop;
    const sl_relay_cfg_t *rcfg;
    const sl_pipeline_cfg_t *cfg;
    const sl_ksource_conf_t *kc;
    void (*on_stopped)(sl_ksource_t *ks, void *arg);
    void *arg;
    ks_state_t state;
    bool failed;
    bool revoking; /* partitions are being given up: wait for in-flight, then unassign */
    uint64_t deadline_ms;

    rd_kafka_t *rk;
    rd_kafka_queue_t *cq; /* owned reference to the consumer queue */
    int pipefd[2];
    uv_poll_t wake;
    uv_timer_t tick;
    int open_handles;
    sl_sink_t *sk;

    ks_part_t *parts; /* owned; slots are reused when a partition comes back */
    size_t nparts, capparts;
    rd_kafka_message_t *held; /* refused by a full sink; sent first next time */
    size_t inflight;
    uint64_t inflight_bytes;
    bool dirty; /* acknowledged offsets not yet committed */
    uint64_t next_commit_ms;

    sl_buf_t id, payload, headers; /* scratch for one message */
    char errbuf[512];
    int64_t received, invalid, tombstones;
};

static int
ks_part_slot(sl_ksource_t *ks, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < ks->nparts; i++)
        if (ks->parts[i].partition == partition && strcmp(ks->parts[i].topic, topic) == 0)
            return (int)i;
    if (ks->nparts == 0xFFFF)
        return -1;
    if (ks->nparts == ks->capparts) {
        size_t cap = ks->capparts ? ks->capparts * 2 : 16;
        ks_part_t *p = realloc(ks->parts, cap * sizeof *p);
        if (p == NULL)
            return -1;
        ks->parts = p;
        ks->capparts = cap;
    }
    ks_part_t *p = &ks->parts[ks->nparts];
    memset(p, 0, sizeof *p);
    p->topic = strdup(topic);
    if (p->topic == NULL)
        return -1;
    p->partition = partition;
    p->commit_off = p->committed = -1;
    return (int)ks->nparts++;
}

static uint64_t
ks_token(size_t slot, const ks_part_t *p, uint32_t seq)
{
    return (uint64_t)slot << 48 | (uint64_t)p->epoch << 32 | seq;
}

static int
ks_part_push(ks_part_t *p, int64_t offset, uint32_t bytes, uint32_t *seq)
{
    if (p->len == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 64;
        ks_entry_t *q = malloc(cap * sizeof *q);
        if (q == NULL)
            return SL_ENOMEM;
        for (size_t i = 0; i < p->len; i++)
            q[i] = p->q[(p->head + i) % p->cap];
        free(p->q);
        p->q = q;
        p->cap = cap;
        p->head = 0;
    }
    p->q[(p->head + p->len) % p->cap] = (ks_entry_t){offset, bytes, false};
    *seq = p->head_seq + (uint32_t)p->len;
    p->len++;
    return SL_OK;
}

/* Moves p's offset to commit past its acknowledged prefix. */
static void
ks_part_settle(sl_ksource_t *ks, ks_part_t *p)
{
    while (p->len > 0 && p->q[p->head].acked) {
        p->commit_off = p->q[p->head].offset + 1;
        p->head = (p->head + 1) % p->cap;
        p->head_seq++;
        p->len--;
        ks->dirty = true;
    }
}

/* ------------------------------------------------------------------------ */
/* Records -> inbox messages                                                 */
/* ------------------------------------------------------------------------ */

/* Appends the record's headers as a JSON object of strings (non-text values
 * as {"base64": ..}). */
static int
ks_headers_json(const rd_kafka_message_t *m, sl_buf_t *b, sl_err_t *err)
{
    rd_kafka_headers_t *hdrs = NULL;
    int rc = sl_buf_append_str(b, "{", err);
    if (rc != SL_OK)
        return rc;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *val;
        size_t size;
        bool first = true;
        for (size_t i = 0;
             rd_kafka_header_get_all(hdrs, i, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR;
             i++) {
            if (!sl_utf8_valid(name, strlen(name)))
                continue; /* a JSON object key must be text; such a header is rare enough */
            if ((rc = sl_buf_append_str(b, first ? "" : ",", err)) != SL_OK ||
                (rc = sl_buf_append_json_str(b, name, strlen(name), err)) != SL_OK ||
                (rc = sl_buf_append_str(b, ":", err)) != SL_OK)
                return rc;
            first = false;
            if (val == NULL)
                rc = sl_buf_append_str(b, "null", err);
            else if (sl_utf8_valid(val, size))
                rc = sl_buf_append_json_str(b, val, size, err);
            else if ((rc = sl_buf_append_str(b, "{\"base64\":\"", err)) == SL_OK &&
                     (rc = sl_buf_append_base64(b, val, size, err)) == SL_OK)
                rc = sl_buf_append_str(b, "\"}", err);
            if (rc != SL_OK)
                return rc;
        }
    }
    return sl_buf_append_str(b, "}", err);
}

/* Keeps the raw value of an invalid record as the payload. */
static int
ks_raw_payload(const rd_kafka_message_t *m, sl_buf_t *b, sl_err_t *err)
{
    int rc;
    if (m->payload == NULL)
        return sl_buf_append_str(b, "{\"raw\":null}", err);
    if (sl_utf8_valid(m->payload, m->len)) {
        if ((rc = sl_buf_append_str(b, "{\"raw\":", err)) != SL_OK ||
            (rc = sl_buf_append_json_str(b, m->payload, m->len, err)) != SL_OK)
            return rc;
        return sl_buf_append_str(b, "}", err);
    }
    if ((rc = sl_buf_append_str(b, "{\"raw_base64\":\"", err)) != SL_OK ||
        (rc = sl_buf_append_base64(b, m->payload, m->len, err)) != SL_OK)
        return rc;
    return sl_buf_append_str(b, "\"}", err);
}

/*
 * Checks the value against the format and fills ks->payload and ks->headers.
 * Returns NULL when valid, else why not (in ks->errbuf).
 */
static const char *
ks_check_value(sl_ksource_t *ks, const rd_kafka_message_t *m, sl_err_t *err, int *rc)
{
    const char *v = m->payload;
    size_t n = m->len;
    *rc = SL_OK;
    if (v == NULL)
        return "the record has no value (a tombstone), which is not valid JSON";
    if (!sl_utf8_valid(v, n))
        return "the record value is not UTF-8 text (or holds NUL bytes)";
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(v, n, &end, false);
    if (root == NULL) {
        size_t at = end != NULL && end >= v ? (size_t)(end - v) : 0;
        snprintf(ks->errbuf, sizeof ks->errbuf,
                 "the record value is not valid JSON (near byte %zu)", at);
        return ks->errbuf;
    }
    bool object = cJSON_IsObject(root);
    cJSON_Delete(root);
    if (strcmp(ks->kc->format, "json") == 0) {
        if ((*rc = sl_buf_append(&ks->payload, v, n, err)) != SL_OK)
            return NULL;
        *rc = ks_headers_json(m, &ks->headers, err);
        return NULL;
    }
    size_t off, len;
    if (!object || sl_json_member(v, n, "payload", &off, &len) != 1)
        return "the record value is not a sluice envelope: no \"payload\" member "
               "(set the source's format to \"json\" to take any JSON value)";
    if ((*rc = sl_buf_append(&ks->payload, v + off, len, err)) != SL_OK)
        return NULL;
    if (sl_json_member(v, n, "headers", &off, &len) == 1 && v[off] == '{')
        *rc = sl_buf_append(&ks->headers, v + off, len, err);
    else
        *rc = ks_headers_json(m, &ks->headers, err);
    return NULL;
}

/* Hands one record to the sink. SL_AGAIN when the sink is full. */
static int
ks_send(sl_ksource_t *ks, rd_kafka_message_t *m, sl_err_t *err)
{
    const char *topic = rd_kafka_topic_name(m->rkt);
    int slot = ks_part_slot(ks, topic, m->partition);
    if (slot < 0)
        return sl_err_nomem(err, "a partition slot");
    ks_part_t *p = &ks->parts[slot];
    sl_buf_reset(&ks->id);
    sl_buf_reset(&ks->payload);
    sl_buf_reset(&ks->headers);
    int rc = SL_OK;

    rd_kafka_headers_t *hdrs = NULL;
    const void *hv = NULL;
    size_t hsize = 0;
    if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        rd_kafka_header_get_last(hdrs, "sluice-id", &hv, &hsize) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        hv != NULL && hsize > 0 && hsize <= SL_KSRC_ID_MAX && sl_utf8_valid(hv, hsize))
        rc = sl_buf_append(&ks->id, hv, hsize, err);
    else {
        char idb[SL_KSRC_ID_MAX + 64];
        snprintf(idb, sizeof idb, "%s/%" PRId32 "/%" PRId64, topic, m->partition, m->offset);
        rc = sl_buf_append_str(&ks->id, idb, err);
    }
    if (rc != SL_OK)
        return rc;

    /* A tombstone that the kafka sink wrote after a delete (no value,
     * sluice-op "tombstone"): the delete before it is the message, and this
     * record only tells a compacted topic to drop the key. Nothing to store;
     * its offset is passed like an acknowledged one. */
    if (m->payload == NULL && hdrs != NULL &&
        rd_kafka_header_get_last(hdrs, "sluice-op", &hv, &hsize) == RD_KAFKA_RESP_ERR_NO_ERROR &&
        hv != NULL && hsize == strlen("tombstone") && memcmp(hv, "tombstone", hsize) == 0) {
        uint32_t seq;
        if (ks_part_push(p, m->offset, 0, &seq) != SL_OK)
            return sl_err_nomem(err, "the in-flight offsets");
        p->q[(p->head + p->len - 1) % p->cap].acked = true;
        ks_part_settle(ks, p);
        ks->received++;
        ks->tombstones++;
        return SL_OK;
    }

    const char *why = NULL;
    bool key_ok = m->key == NULL || sl_utf8_valid(m->key, m->key_len);
    if (!key_ok)
        why = "the record key is not UTF-8 text (or holds NUL bytes)";
    else
        why = ks_check_value(ks, m, err, &rc);
    if (rc != SL_OK)
        return rc;
    if (why != NULL) {
        sl_buf_reset(&ks->payload);
        sl_buf_reset(&ks->headers);
        if ((rc = ks_raw_payload(m, &ks->payload, err)) != SL_OK ||
            (rc = ks_headers_json(m, &ks->headers, err)) != SL_OK)
            return rc;
    }
    char *key = NULL;
    if (m->key != NULL && key_ok) {
        key = strndup(m->key, m->key_len);
        if (key == NULL)
            return sl_err_nomem(err, "a record key");
    }
    sl_msg_t msg = {
        .outbox_id = m->offset,
        .id = ks->id.data,
        .topic = topic,
        .key = key,
        .op = "event",
        .payload = ks->payload.data,
        .headers = ks->headers.data,
        .error = why,
    };
    uint32_t seq;
    if ((rc = ks_part_push(p, m->offset, 0, &seq)) != SL_OK) {
        free(key);
        return sl_err_nomem(err, "the in-flight offsets");
    }
    size_t bytes = 0;
    rc = ks->cfg->sink_ops->send(ks->sk, &msg, ks_token((size_t)slot, p, seq), &bytes, err);
    free(key);
    if (rc != SL_OK) {
        p->len--; /* not sent: forget it */
        return rc;
    }
    p->q[(p->head + p->len - 1) % p->cap].bytes =
        (uint32_t)(bytes > UINT32_MAX ? UINT32_MAX : bytes);
    ks->inflight++;
    ks->inflight_bytes += bytes;
    ks->received++;
    if (why != NULL) {
        ks->invalid++;
        char q[600];
        sl_log_warn("source.invalid",
                    "pipeline=%s topic=%s partition=%" PRId32 " offset=%" PRId64
                    " message_id=%s err=%s",
                    ks->cfg->name, topic, m->partition, m->offset, ks->id.data,
                    sl_log_quote(q, sizeof q, why));
    }
    return SL_OK;
}

/* ------------------------------------------------------------------------ */
/* Offsets                                                                   */
/* ------------------------------------------------------------------------ */

/* Commits acknowledged offsets of assigned partitions. */
static void
ks_commit(sl_ksource_t *ks, bool sync)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)ks->nparts);
    if (l == NULL)
        return;
    for (size_t i = 0; i < ks->nparts; i++) {
        ks_part_t *p = &ks->parts[i];
        if (p->assigned && p->commit_off > p->committed)
            rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = p->commit_off;
    }
    if (l->cnt > 0) {
        rd_kafka_resp_err_t e = rd_kafka_commit(ks->rk, l, sync ? 0 : 1);
        if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
            sl_log_warn("source.commit_failed", "pipeline=%s err=%s", ks->cfg->name,
                        rd_kafka_err2str(e));
        } else {
            for (size_t i = 0; i < ks->nparts; i++)
                if (ks->parts[i].assigned && ks->parts[i].commit_off > ks->parts[i].committed)
                    ks->parts[i].committed = ks->parts[i].commit_off;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    ks->dirty = false;
    ks->next_commit_ms = sl_now_ms() + (uint64_t)ks->rcfg->checkpoint_interval_ms;
}

static void
ks_offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *offs,
                    void *opaque)
{
    sl_ksource_t *ks = opaque;
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR__NO_OFFSET)
        return;
    /* The next commit sends these offsets again. */
    sl_log_warn("source.commit_failed", "pipeline=%s err=%s", ks->cfg->name, rd_kafka_err2str(e));
    for (int i = 0; offs != NULL && i < offs->cnt; i++) {
        int slot = ks_part_slot(ks, offs->elems[i].topic, offs->elems[i].partition);
        if (slot >= 0)
            ks->parts[slot].committed = -1;
    }
    ks->dirty = true;
}

/* ------------------------------------------------------------------------ */
/* Rebalances                                                                */
/* ------------------------------------------------------------------------ */

static void ks_kick(sl_ksource_t *ks);

/* Gives the assignment up once nothing is in flight. */
static void
ks_finish_revoke(sl_ksource_t *ks)
{
    if (!ks->revoking || ks->inflight > 0)
        return;
    if (!rd_kafka_assignment_lost(ks->rk))
        ks_commit(ks, true);
    for (size_t i = 0; i < ks->nparts; i++) {
        ks_part_t *p = &ks->parts[i];
        p->assigned = false;
        p->len = 0;
    }
    rd_kafka_assign(ks->rk, NULL);
    ks->revoking = false;
    sl_log_info("source.revoked", "pipeline=%s", ks->cfg->name);
}

static void
ks_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e, rd_kafka_topic_partition_list_t *parts,
                void *opaque)
{
    sl_ksource_t *ks = opaque;
    if (ks->state >= KS_CLOSING) {
        /* Inside consumer_close: offsets are committed, give everything up. */
        rd_kafka_assign(rk, NULL);
        return;
    }
    if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        for (int i = 0; i < parts->cnt; i++) {
            int slot = ks_part_slot(ks, parts->elems[i].topic, parts->elems[i].partition);
            if (slot < 0) {
                sl_log_error("source.assign_failed", "pipeline=%s err=out_of_memory",
                             ks->cfg->name);
                continue;
            }
            ks_part_t *p = &ks->parts[slot];
            p->assigned = true;
            p->epoch++;
            p->len = 0;
            p->head_seq = 0;
            p->commit_off = p->committed = -1;
        }
        rd_kafka_assign(rk, parts);
        sl_log_info("source.assigned", "pipeline=%s partitions=%d", ks->cfg->name, parts->cnt);
        ks_kick(ks);
        return;
    }
    /* Revocation (or a rebalance error): settle in-flight records first.
     * A message held for a full sink is dropped: the next owner reads it
     * again from the committed offset. */
    if (ks->held != NULL) {
        rd_kafka_message_destroy(ks->held);
        ks->held = NULL;
    }
    if (e != RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
        sl_log_warn("source.rebalance_error", "pipeline=%s err=%s", ks->cfg->name,
                    rd_kafka_err2str(e));
    ks->revoking = true;
    sl_log_info("source.revoking", "pipeline=%s inflight=%zu", ks->cfg->name, ks->inflight);
    ks_finish_revoke(ks);
}

/* ------------------------------------------------------------------------ */
/* The loop                                                                  */
/* ------------------------------------------------------------------------ */

static void ks_fail(sl_ksource_t *ks, const sl_err_t *err);
static void ks_close(sl_ksource_t *ks);

static bool
ks_has_room(const sl_ksource_t *ks)
{
    return ks->inflight < (size_t)ks->cfg->max_inflight &&
           ks->inflight_bytes < (uint64_t)ks->cfg->max_inflight_bytes;
}

/* Reads records while the window has room; serves rebalances and logs. */
static void
ks_serve(sl_ksource_t *ks)
{
    sl_err_t err;
    sl_err_clear(&err);
    bool sent = false;
    while (ks->state == KS_RUNNING && !ks->revoking) {
        if (ks->held == NULL) {
            if (!ks_has_room(ks))
                break;
            rd_kafka_message_t *m = rd_kafka_consumer_poll(ks->rk, 0);
            if (m == NULL)
                break;
            if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
                char q[512];
                sl_log_warn("source.error", "pipeline=%s code=%s err=%s", ks->cfg->name,
                            rd_kafka_err2name(m->err),
                            sl_log_quote(q, sizeof q, rd_kafka_message_errstr(m)));
                rd_kafka_message_destroy(m);
                continue;
            }
            if (ks->revoking || ks->state != KS_RUNNING) {
                /* Arrived with a revocation: the next owner reads it again. */
                rd_kafka_message_destroy(m);
                break;
            }
            ks->held = m;
        }
        int rc = ks_send(ks, ks->held, &err);
        if (rc == SL_AGAIN)
            break;
        if (rc != SL_OK) {
            sl_err_prefix(&err, "record %s/%" PRId32 "/%" PRId64 ": ",
                          rd_kafka_topic_name(ks->held->rkt), ks->held->partition,
                          ks->held->offset);
            ks_fail(ks, &err);
            return;
        }
        rd_kafka_message_destroy(ks->held);
        ks->held = NULL;
        sent = true;
    }
    if (sent && ks->sk != NULL)
        ks->cfg->sink_ops->flush(ks->sk, &err);
}

static void
ks_kick(sl_ksource_t *ks)
{
    if (ks->state == KS_RUNNING)
        ks_serve(ks);
}

static void
ks_on_ack(void *ctx, uint64_t token, int status, const sl_err_t *err)
{
    sl_ksource_t *ks = ctx;
    size_t slot = (size_t)(token >> 48);
    uint16_t epoch = (uint16_t)(token >> 32);
    uint32_t seq = (uint32_t)token;
    if (slot >= ks->nparts)
        return;
    ks_part_t *p = &ks->parts[slot];
    uint32_t idx = seq - p->head_seq;
    if (p->epoch != epoch || idx >= p->len) {
        /* From before a revocation that already settled it: only the count. */
        return;
    }
    ks_entry_t *e = &p->q[(p->head + idx) % p->cap];
    if (e->acked)
        return;
    ks->inflight--;
    ks->inflight_bytes -= e->bytes;
    if (status != SL_OK) {
        /* Stays unacknowledged: no offset past it is committed. */
        ks_fail(ks, err);
        return;
    }
    e->acked = true;
    ks_part_settle(ks, p);
    if (ks->revoking)
        ks_finish_revoke(ks);
    if (ks->state == KS_DRAINING) {
        if (ks->inflight == 0)
            ks_close(ks);
        return;
    }
    if (ks->revoking)
        return;
    if (ks->dirty && sl_now_ms() >= ks->next_commit_ms)
        ks_commit(ks, false);
    ks_kick(ks);
}

static void
ks_wake_cb(uv_poll_t *h, int status, int events)
{
    sl_ksource_t *ks = h->data;
    char drain[256];
    while (read(ks->pipefd[0], drain, sizeof drain) > 0) {
    }
    ks_kick(ks);
}

static void
ks_tick_cb(uv_timer_t *t)
{
    sl_ksource_t *ks = t->data;
    if (ks->state == KS_DRAINING && sl_now_ms() >= ks->deadline_ms) {
        sl_log_warn("pipeline.drain_timeout", "pipeline=%s inflight=%zu", ks->cfg->name,
                    ks->inflight);
        ks_close(ks);
        return;
    }
    if (ks->state != KS_RUNNING)
        return;
    if (ks->revoking) {
        /* Keep the group session alive while the sink settles. */
        return;
    }
    if (ks->dirty && sl_now_ms() >= ks->next_commit_ms)
        ks_commit(ks, false);
    ks_kick(ks);
}

static void
ks_error_cb(rd_kafka_t *rk, int code, const char *reason, void *opaque)
{
    sl_ksource_t *ks = opaque;
    char q[1024];
    sl_log_warn("kafka.error", "pipeline=%s code=%s err=%s", ks->cfg->name,
                rd_kafka_err2name((rd_kafka_resp_err_t)code), sl_log_quote(q, sizeof q, reason));
}

static void
ks_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    sl_ksource_t *ks = rd_kafka_opaque(rk);
    sl_log_level_t lv = level <= LOG_ERR       ? SL_LOG_ERROR
                        : level <= LOG_WARNING ? SL_LOG_WARN
                        : level <= LOG_INFO    ? SL_LOG_INFO
                                               : SL_LOG_DEBUG;
    if (!sl_log_is_enabled(lv))
        return;
    char q[1024];
    sl_log(lv, "kafka.log", "pipeline=%s facility=%s msg=%s", ks ? ks->cfg->name : "?", fac,
           sl_log_quote(q, sizeof q, buf));
}

/* ------------------------------------------------------------------------ */
/* Stop and close                                                            */
/* ------------------------------------------------------------------------ */

static void
ks_handle_closed(uv_handle_t *h)
{
    sl_ksource_t *ks = h->data;
    if (--ks->open_handles > 0)
        return;
    ks->state = KS_STOPPED;
    sl_log_info(
        "pipeline.stopped",
        "pipeline=%s failed=%s received=%" PRId64 " invalid=%" PRId64 " tombstones=%" PRId64,
        ks->cfg->name, ks->failed ? "true" : "false", ks->received, ks->invalid, ks->tombstones);
    ks->on_stopped(ks, ks->arg);
}

static void
ks_sink_closed(void *arg)
{
    sl_ksource_t *ks = arg;
    ks->sk = NULL;
    uv_close((uv_handle_t *)&ks->wake, ks_handle_closed);
    uv_close((uv_handle_t *)&ks->tick, ks_handle_closed);
}

/* Commits what was acknowledged, leaves the group, closes the sink. */
static void
ks_close(sl_ksource_t *ks)
{
    if (ks->state == KS_CLOSING || ks->state == KS_STOPPED)
        return;
    ks->state = KS_CLOSING;
    uv_timer_stop(&ks->tick);
    uv_poll_stop(&ks->wake);
    if (ks->held != NULL) {
        rd_kafka_message_destroy(ks->held);
        ks->held = NULL;
    }
    if (ks->rk != NULL) {
        ks_commit(ks, true);
        /* Leaving the group hands the partitions to the others at once. The
         * revocation it triggers is served inside close (state CLOSING:
         * the callback only unassigns). */
        if (ks->revoking) {
            /* A revocation still waiting for in-flight records (deadline). */
            rd_kafka_assign(ks->rk, NULL);
            ks->revoking = false;
        }
        rd_kafka_queue_io_event_enable(ks->cq, -1, NULL, 0);
        rd_kafka_consumer_close(ks->rk);
        rd_kafka_queue_destroy(ks->cq);
        ks->cq = NULL;
        rd_kafka_destroy(ks->rk);
        ks->rk = NULL;
    }
    ks->cfg->sink_ops->close(ks->sk, ks_sink_closed, ks);
}

static void
ks_fail(sl_ksource_t *ks, const sl_err_t *err)
{
    if (ks->failed || ks->state >= KS_CLOSING)
        return;
    ks->failed = true;
    char q[1024], h[1024];
    sl_log_error("pipeline.failed", "pipeline=%s err=%s hint=%s", ks->cfg->name,
                 sl_log_quote(q, sizeof q, err != NULL ? err->msg : "unknown"),
                 sl_log_quote(h, sizeof h, err != NULL ? err->hint : ""));
    /* Records acknowledged before the failure get their offsets committed;
     * nothing after it is, so a restart reads the failed record again. */
    ks_close(ks);
}

/* ------------------------------------------------------------------------ */
/* Public                                                                    */
/* ------------------------------------------------------------------------ */

int
sl_ksource_new(uv_loop_t *loop, const sl_relay_cfg_t *rcfg, const sl_pipeline_cfg_t *cfg,
               void (*on_stopped)(sl_ksource_t *ks, void *arg), void *arg, sl_ksource_t **out,
               sl_err_t *err)
{
    sl_ksource_t *ks = calloc(1, sizeof *ks);
    if (ks == NULL)
        return sl_err_nomem(err, "a Kafka source");
    ks->loop = loop;
    ks->rcfg = rcfg;
    ks->cfg = cfg;
    ks->kc = cfg->ksrc;
    ks->on_stopped = on_stopped;
    ks->arg = arg;
    ks->pipefd[0] = ks->pipefd[1] = -1;
    char path[128];
    snprintf(path, sizeof path, "%s.source", cfg->path);

    rd_kafka_conf_t *conf = NULL;
    int rc = sl_kafka_conf_new(ks_defaults, sizeof ks_defaults / sizeof ks_defaults[0], ks_reserved,
                               ks->kc->brokers, ks->kc->properties, path, &conf, err);
    if (rc != SL_OK)
        goto fail;
    char errstr[512], val[32];
    /* Bound librdkafka's pre-fetch queue by the window unless the user did. */
    if (cJSON_GetObjectItemCaseSensitive(ks->kc->properties, "queued.max.messages.kbytes") ==
        NULL) {
        int64_t kb = cfg->max_inflight_bytes / 1024;
        kb = kb < SL_KSRC_QUEUE_KB_MIN ? SL_KSRC_QUEUE_KB_MIN
                                       : (kb > SL_KSRC_QUEUE_KB_MAX ? SL_KSRC_QUEUE_KB_MAX : kb);
        snprintf(val, sizeof val, "%" PRId64, kb);
        rd_kafka_conf_set(conf, "queued.max.messages.kbytes", val, errstr, sizeof errstr);
    }
    const char *reset = strcmp(cfg->start, "now") == 0 ? "latest" : "earliest";
    if (rd_kafka_conf_set(conf, "group.id", ks->kc->group, errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "auto.offset.reset", reset, errstr, sizeof errstr) !=
            RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log.queue", "true", errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        rd_kafka_conf_destroy(conf);
        rc = sl_err_set(err, SL_ERR, "%s: librdkafka refused a consumer setting: %s", path, errstr);
        goto fail;
    }
    rd_kafka_conf_set_opaque(conf, ks);
    rd_kafka_conf_set_rebalance_cb(conf, ks_rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(conf, ks_offset_commit_cb);
    rd_kafka_conf_set_error_cb(conf, ks_error_cb);
    rd_kafka_conf_set_log_cb(conf, ks_log_cb);
    ks->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (ks->rk == NULL) {
        rd_kafka_conf_destroy(conf);
        rc = sl_err_set(err, SL_ERR, "%s: cannot create the Kafka consumer: %s", path, errstr);
        goto fail;
    }
    /* Everything (logs, rebalances, commits, records) through one queue. */
    rd_kafka_set_log_queue(ks->rk, NULL);
    rd_kafka_poll_set_consumer(ks->rk);
    ks->cq = rd_kafka_queue_get_consumer(ks->rk);
    if (pipe(ks->pipefd) != 0 || fcntl(ks->pipefd[0], F_SETFL, O_NONBLOCK) != 0 ||
        fcntl(ks->pipefd[1], F_SETFL, O_NONBLOCK) != 0) {
        rc = sl_err_set(err, SL_ERR, "cannot create a pipe: %s", strerror(errno));
        goto fail;
    }
    rd_kafka_topic_partition_list_t *subs =
        rd_kafka_topic_partition_list_new((int)ks->kc->topics.n);
    if (subs == NULL) {
        rc = sl_err_nomem(err, "the topic list");
        goto fail;
    }
    for (size_t i = 0; i < ks->kc->topics.n; i++)
        rd_kafka_topic_partition_list_add(subs, ks->kc->topics.v[i], RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(ks->rk, subs);
    rd_kafka_topic_partition_list_destroy(subs);
    if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rc = sl_err_set(err, SL_ERR, "%s: cannot subscribe: %s", path, rd_kafka_err2str(e));
        goto fail;
    }

    sl_sink_env_t env = {
        .loop = loop,
        .pipeline = cfg->name,
        .database = cfg->database != NULL ? cfg->database : rcfg->database,
        .topics = NULL,
        .ntopics = 0,
        .on_ack = ks_on_ack,
        .ctx = ks,
        .max_inflight = (size_t)cfg->max_inflight,
        .max_inflight_bytes = (size_t)cfg->max_inflight_bytes,
    };
    rc = cfg->sink_ops->create(cfg->sink_conf, &env, &ks->sk, err);
    if (rc != SL_OK) {
        sl_err_prefix(err, "sink %s: ", cfg->sink_ops->type);
        goto fail;
    }
    rd_kafka_queue_io_event_enable(ks->cq, ks->pipefd[1], "1", 1);
    uv_poll_init(loop, &ks->wake, ks->pipefd[0]);
    uv_timer_init(loop, &ks->tick);
    ks->wake.data = ks;
    ks->tick.data = ks;
    ks->open_handles = 2;
    uv_poll_start(&ks->wake, UV_READABLE, ks_wake_cb);
    uv_timer_start(&ks->tick, ks_tick_cb, SL_KSRC_TICK_MS, SL_KSRC_TICK_MS);
    ks->next_commit_ms = sl_now_ms() + (uint64_t)rcfg->checkpoint_interval_ms;
    sl_log_info(
        "pipeline.start",
        "pipeline=%s source=kafka group=%s topics=%zu format=%s sink=%s max_inflight=%" PRId64
        " librdkafka=%s",
        cfg->name, ks->kc->group, ks->kc->topics.n, ks->kc->format, cfg->sink_ops->type,
        cfg->max_inflight, rd_kafka_version_str());
    *out = ks;
    return SL_OK;

fail:
    if (ks->cq != NULL)
        rd_kafka_queue_destroy(ks->cq);
    if (ks->rk != NULL)
        rd_kafka_destroy(ks->rk);
    if (ks->pipefd[0] >= 0)
        close(ks->pipefd[0]);
    if (ks->pipefd[1] >= 0)
        close(ks->pipefd[1]);
    free(ks);
    return rc;
}

void
sl_ksource_stop(sl_ksource_t *ks, uint64_t deadline_ms)
{
    if (ks->state >= KS_CLOSING)
        return;
    if (ks->state == KS_DRAINING) {
        if (deadline_ms < ks->deadline_ms)
            ks->deadline_ms = deadline_ms;
        if (sl_now_ms() >= ks->deadline_ms)
            ks_close(ks);
        return;
    }
    ks->state = KS_DRAINING;
    ks->deadline_ms = deadline_ms;
    if (ks->held != NULL) {
        rd_kafka_message_destroy(ks->held);
        ks->held = NULL;
    }
    if (ks->inflight == 0 || sl_now_ms() >= deadline_ms)
        ks_close(ks);
}

bool
sl_ksource_is_failed(const sl_ksource_t *ks)
{
    return ks->failed;
}

void
sl_ksource_free(sl_ksource_t *ks)
{
    if (ks == NULL)
        return;
    for (size_t i = 0; i < ks->nparts; i++) {
        free(ks->parts[i].topic);
        free(ks->parts[i].q);
    }
    free(ks->parts);
    if (ks->pipefd[0] >= 0)
        close(ks->pipefd[0]);
    if (ks->pipefd[1] >= 0)
        close(ks->pipefd[1]);
    sl_buf_free(&ks->id);
    sl_buf_free(&ks->payload);
    sl_buf_free(&ks->headers);
    free(ks);
}
