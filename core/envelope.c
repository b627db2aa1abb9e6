/*
 * core/envelope.c - the wire envelope of one outbox message.
 *
 * Every message a sink sends is wrapped in the same envelope, so consumers
 * see one shape whatever produced the row (publish() or a stream-table
 * refresh). The keys, always in this order:
 *
 *   id         stable message id: the same bytes on every redelivery, so
 *              consumers can deduplicate
 *   topic      outbox topic
 *   op         "event", or insert/update/delete for stream tables
 *   key        entity key, or null
 *   payload    the message body, any JSON value
 *   headers    JSON object, {} when none
 *   ts         created_at, RFC 3339 with time zone
 *   outbox_id  sluice.outbox.id, a number (int64)
 *   source     {"db": database name, "txid": xid8 as a decimal string}
 *
 * txid is a string because an xid8 is an unsigned 64-bit value: as a JSON
 * number it would lose precision in every consumer that reads numbers as
 * doubles.
 *
 * Two formats:
 *
 *   json     Written by hand into an sl_buf_t. payload and headers are
 *            already valid JSON text (PostgreSQL's jsonb output), so they are
 *            embedded as-is, unparsed: this is the relay's hot path and it
 *            allocates nothing beyond growing the caller's reused buffer.
 *            Only an empty payload or headers (what PQgetvalue() returns for
 *            SQL NULL) is rejected, because it would make the envelope
 *            invalid JSON.
 *
 *   msgpack  A map with the same keys in the same order, written through a
 *            msgpack_packer whose write callback appends to the sl_buf_t.
 *            payload and headers become native msgpack values: they are
 *            parsed with cJSON (which allocates a tree per message; msgpack
 *            is the opt-in format) and walked once. Numbers follow their
 *            JSON spelling: an integer literal (no fraction, no exponent)
 *            that fits int64 becomes a msgpack int, any other number a
 *            float64. cJSON keeps numbers only as doubles, which would
 *            silently round integers above 2^53 (snowflake ids, bigint keys),
 *            so integer literals are re-read from the JSON text itself; see
 *            mp_numscan_next(). cJSON refuses nesting deeper than
 *            CJSON_NESTING_LIMIT (1000) levels, which bounds the recursion of
 *            mp_value() as well.
 *
 * Failure is atomic: on error, `out` is restored to the length it had on
 * entry and err says what failed, naming the outbox id.
 */
#include "core/core.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <msgpack.h>

/* The formats accepted in configuration, in the order the hint lists them. */
static const struct {
    const char *name;
    sl_format_t format;
} sl_formats[] = {
    {"json", SL_FORMAT_JSON},
    {"msgpack", SL_FORMAT_MSGPACK},
};

int
sl_format_parse(const char *name, sl_format_t *out, sl_err_t *err)
{
    assert(out != NULL);
    if (name != NULL) {
        for (size_t i = 0; i < sizeof sl_formats / sizeof sl_formats[0]; i++) {
            if (strcmp(name, sl_formats[i].name) == 0) {
                *out = sl_formats[i].format;
                return SL_OK;
            }
        }
    }
    char quoted[80];
    sl_err_set(err, SL_EUSAGE, "unknown format %s",
               name != NULL ? sl_log_quote(quoted, sizeof quoted, name) : "(null)");
    return sl_err_hint(err, "use \"json\" or \"msgpack\"");
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */
/* ------------------------------------------------------------------------ */

/*
 * Appends `prefix` (the key with its punctuation, e.g. ",\"topic\":") and s
 * as a JSON string, or null when s is NULL.
 */
static int
json_str(sl_buf_t *out, const char *prefix, const char *s, sl_err_t *err)
{
    int rc = sl_buf_append_str(out, prefix, err);
    if (rc != SL_OK)
        return rc;
    if (s == NULL)
        return sl_buf_append(out, "null", 4, err);
    return sl_buf_append_json_str(out, s, strlen(s), err);
}

/* Appends `prefix` and the JSON text `raw` unchanged. */
static int
json_raw(sl_buf_t *out, const char *prefix, const char *raw, sl_err_t *err)
{
    int rc = sl_buf_append_str(out, prefix, err);
    if (rc != SL_OK)
        return rc;
    return sl_buf_append_str(out, raw, err);
}

static int
envelope_json(const sl_msg_t *m, sl_buf_t *out, sl_err_t *err)
{
    char outbox_id[24]; /* "-9223372036854775808" is 20 characters */
    snprintf(outbox_id, sizeof outbox_id, "%" PRId64, m->outbox_id);

    /* The key order here and in envelope_msgpack() is the documented order. */
    int rc;
    if ((rc = json_str(out, "{\"id\":", m->id, err)) != SL_OK ||
        (rc = json_str(out, ",\"topic\":", m->topic, err)) != SL_OK ||
        (rc = json_str(out, ",\"op\":", m->op, err)) != SL_OK ||
        (rc = json_str(out, ",\"key\":", m->key, err)) != SL_OK ||
        (rc = json_raw(out, ",\"payload\":", m->payload, err)) != SL_OK ||
        (rc = json_raw(out, ",\"headers\":", m->headers, err)) != SL_OK ||
        (rc = json_str(out, ",\"ts\":", m->ts, err)) != SL_OK ||
        (rc = json_raw(out, ",\"outbox_id\":", outbox_id, err)) != SL_OK ||
        (rc = json_str(out, ",\"source\":{\"db\":", m->db, err)) != SL_OK ||
        (rc = json_str(out, ",\"txid\":", m->txid, err)) != SL_OK ||
        (rc = sl_buf_append(out, "}}", 2, err)) != SL_OK)
        return rc;
    return SL_OK;
}

/* ------------------------------------------------------------------------ */
/* msgpack                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * The packer's write callback. msgpack-c returns the callback's value from
 * every msgpack_pack_*() call, so a failed append surfaces as that call's
 * non-zero result, with err already filled by sl_buf_append().
 */
typedef struct mp_sink {
    sl_buf_t *out; /* borrowed: the caller's buffer */
    sl_err_t *err; /* borrowed: receives the allocation failure */
    int rc;        /* the first failed append's code, SL_OK until then */
} mp_sink_t;

static int
mp_write(void *data, const char *buf, size_t len)
{
    mp_sink_t *sink = data;
    int rc = sl_buf_append(sink->out, buf, len, sink->err);
    if (rc != SL_OK && sink->rc == SL_OK)
        sink->rc = rc;
    return rc;
}

/*
 * A cursor over the number literals of a JSON text, in document order.
 *
 * cJSON keeps a tree in document order (object members stay in the order
 * written, duplicates included), so the n-th number met by a depth-first walk
 * of the tree is the n-th number literal of the text. Outside strings, a
 * number is the only JSON token that starts with '-' or a digit, and its
 * characters are all from "0123456789+-.eE", so skipping strings (with their
 * escapes) is enough to find every literal.
 */
typedef struct mp_numscan {
    const char *p; /* borrowed: next unread byte of the JSON text */
} mp_numscan_t;

static bool
is_number_char(char c)
{
    return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* Finds the next number literal: *tok and *len describe it. False at the end. */
static bool
mp_numscan_next(mp_numscan_t *ns, const char **tok, size_t *len)
{
    const char *p = ns->p;
    while (*p != '\0') {
        if (*p == '"') {
            p++;
            while (*p != '\0' && *p != '"') {
                if (*p == '\\' && p[1] != '\0')
                    p++;
                p++;
            }
            if (*p == '"')
                p++;
        } else if (*p == '-' || (*p >= '0' && *p <= '9')) {
            const char *start = p;
            while (is_number_char(*p))
                p++;
            *tok = start;
            *len = (size_t)(p - start);
            ns->p = p;
            return true;
        } else {
            p++;
        }
    }
    ns->p = p;
    return false;
}

/*
 * Packs a number. An integer literal that fits int64 is packed as an int,
 * read from the text; anything else as the float64 cJSON parsed.
 */
static int
mp_number(msgpack_packer *pk, const cJSON *item, mp_numscan_t *ns)
{
    const char *tok;
    size_t len;
    if (!mp_numscan_next(ns, &tok, &len))
        return msgpack_pack_double(pk, item->valuedouble);

    /* "-9223372036854775808" is the longest literal that can fit. */
    char digits[24];
    bool integer = len > 0 && len < sizeof digits;
    for (size_t i = 0; integer && i < len; i++)
        integer = (tok[i] >= '0' && tok[i] <= '9') || (i == 0 && tok[i] == '-');
    if (integer) {
        memcpy(digits, tok, len);
        digits[len] = '\0';
        char *end;
        errno = 0;
        long long v = strtoll(digits, &end, 10);
        /*
         * The last test guards the cursor: cJSON read the same literal, so
         * its double must be the nearest double to v. If the two ever
         * disagree, the cursor lost its place and the double is the safe
         * answer.
         */
        if (errno == 0 && end == digits + len && (double)v == item->valuedouble)
            return msgpack_pack_int64(pk, (int64_t)v);
    }
    return msgpack_pack_double(pk, item->valuedouble);
}

/* Packs a NUL-terminated string as a msgpack str. */
static int
mp_str(msgpack_packer *pk, const char *s)
{
    return msgpack_pack_str_with_body(pk, s, strlen(s));
}

/* Packs one cJSON value, recursively. Depth is bounded by CJSON_NESTING_LIMIT. */
static int
mp_value(msgpack_packer *pk, const cJSON *item, mp_numscan_t *ns)
{
    int rc;
    switch (item->type & 0xff) {
    case cJSON_False: return msgpack_pack_false(pk);
    case cJSON_True: return msgpack_pack_true(pk);
    case cJSON_NULL: return msgpack_pack_nil(pk);
    case cJSON_Number: return mp_number(pk, item, ns);
    case cJSON_String: return mp_str(pk, item->valuestring);
    case cJSON_Array:
        if ((rc = msgpack_pack_array(pk, (size_t)cJSON_GetArraySize(item))) != 0)
            return rc;
        for (const cJSON *c = item->child; c != NULL; c = c->next)
            if ((rc = mp_value(pk, c, ns)) != 0)
                return rc;
        return 0;
    case cJSON_Object:
        if ((rc = msgpack_pack_map(pk, (size_t)cJSON_GetArraySize(item))) != 0)
            return rc;
        for (const cJSON *c = item->child; c != NULL; c = c->next) {
            if ((rc = mp_str(pk, c->string)) != 0 || (rc = mp_value(pk, c, ns)) != 0)
                return rc;
        }
        return 0;
    default:
        /* cJSON_Raw and cJSON_Invalid never come out of the parser. */
        assert(!"unexpected cJSON type");
        return msgpack_pack_nil(pk);
    }
}

/*
 * Parses the JSON text of one field (payload or headers) of message m.
 * *out (freed by the caller with cJSON_Delete) receives the tree.
 */
static int
mp_parse(const sl_msg_t *m, const char *field, const char *text, cJSON **out, sl_err_t *err)
{
    const char *end = text;
    *out = cJSON_ParseWithOpts(text, &end, true);
    if (*out != NULL)
        return SL_OK;
    /*
     * cJSON reports an allocation failure the same way as a syntax error;
     * the message says both, since the position tells them apart for anyone
     * who looks at the row.
     */
    size_t at = end != NULL && end >= text ? (size_t)(end - text) : 0;
    return sl_err_set(err, SL_ERR,
                      "outbox id %" PRId64 ": %s is not valid JSON (error at byte %zu; "
                      "nesting is limited to %d levels)",
                      m->outbox_id, field, at, CJSON_NESTING_LIMIT);
}

static int
envelope_msgpack(const sl_msg_t *m, sl_buf_t *out, sl_err_t *err)
{
    /* Parse both JSON fields first, so invalid input never reaches `out`. */
    cJSON *payload = NULL;
    cJSON *headers = NULL;
    int rc = mp_parse(m, "payload", m->payload, &payload, err);
    if (rc != SL_OK)
        goto fail_payload;
    rc = mp_parse(m, "headers", m->headers, &headers, err);
    if (rc != SL_OK)
        goto fail_headers;

    mp_sink_t sink = {.out = out, .err = err, .rc = SL_OK};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sink, mp_write);
    mp_numscan_t payload_ns = {.p = m->payload};
    mp_numscan_t headers_ns = {.p = m->headers};

    /* The key order here and in envelope_json() is the documented order. */
    if (msgpack_pack_map(&pk, 9) != 0 || mp_str(&pk, "id") != 0 || mp_str(&pk, m->id) != 0 ||
        mp_str(&pk, "topic") != 0 || mp_str(&pk, m->topic) != 0 || mp_str(&pk, "op") != 0 ||
        mp_str(&pk, m->op) != 0 || mp_str(&pk, "key") != 0 ||
        (m->key != NULL ? mp_str(&pk, m->key) : msgpack_pack_nil(&pk)) != 0 ||
        mp_str(&pk, "payload") != 0 || mp_value(&pk, payload, &payload_ns) != 0 ||
        mp_str(&pk, "headers") != 0 || mp_value(&pk, headers, &headers_ns) != 0 ||
        mp_str(&pk, "ts") != 0 || mp_str(&pk, m->ts) != 0 || mp_str(&pk, "outbox_id") != 0 ||
        msgpack_pack_int64(&pk, m->outbox_id) != 0 || mp_str(&pk, "source") != 0 ||
        msgpack_pack_map(&pk, 2) != 0 || mp_str(&pk, "db") != 0 || mp_str(&pk, m->db) != 0 ||
        mp_str(&pk, "txid") != 0 || mp_str(&pk, m->txid) != 0) {
        /* Only the write callback fails, and it has filled err. */
        assert(sink.rc != SL_OK);
        rc = sink.rc;
    }

    cJSON_Delete(headers);
fail_headers:
    cJSON_Delete(payload);
fail_payload:
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Entry point                                                               */
/* ------------------------------------------------------------------------ */

int
sl_envelope_encode(const sl_msg_t *m, sl_format_t format, sl_buf_t *out, sl_err_t *err)
{
    assert(m != NULL && out != NULL);
    assert(m->id != NULL && m->topic != NULL && m->op != NULL && m->ts != NULL);
    assert(m->db != NULL && m->txid != NULL);
    assert(m->payload != NULL && m->headers != NULL);

    /* What PQgetvalue() returns for SQL NULL; embedding it would break the envelope. */
    if (m->payload[0] == '\0')
        return sl_err_set(err, SL_ERR, "outbox id %" PRId64 ": payload is empty", m->outbox_id);
    if (m->headers[0] == '\0')
        return sl_err_set(err, SL_ERR, "outbox id %" PRId64 ": headers are empty", m->outbox_id);

    size_t len = out->len;
    int rc;
    switch (format) {
    case SL_FORMAT_JSON: rc = envelope_json(m, out, err); break;
    case SL_FORMAT_MSGPACK: rc = envelope_msgpack(m, out, err); break;
    default:
        /*
         * A value outside the enum (sl_format_parse() never produces one).
         * -Wswitch-enum still flags a new format missing from the cases.
         */
        return sl_err_set(err, SL_EUSAGE, "unknown envelope format %d", (int)format);
    }
    if (rc != SL_OK) {
        /* Drop whatever was appended before the failure. */
        out->len = len;
        if (out->data != NULL)
            out->data[len] = '\0';
    }
    return rc;
}
