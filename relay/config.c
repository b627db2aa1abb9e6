/*
 * relay/config.c - the relay's configuration: key tables and validation.
 *
 * The tables below are the single description of the config file: they drive
 * parsing, defaults, range checks, `sluice relay --help-config` and the
 * reference in docs/relay-config.md. Every error names the JSON path of the
 * offending value and says how to fix it; nothing secret is echoed (values
 * that came from ${ENV:..}/${FILE:..} only ever appear as [redacted]).
 */
#include "relay/relay_int.h"

#include "outbox/outbox.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const start_choices[] = {"beginning", "now", NULL};

static const sl_cfg_key_t relay_keys[] = {
    {"database", SL_CFG_STRING, offsetof(sl_relay_cfg_t, database), true, NULL, 0, 0, NULL, false,
     "PostgreSQL connection string (URI or key=value) of the outbox database"},
    {"pipelines", SL_CFG_ARRAY, offsetof(sl_relay_cfg_t, pipelines), true, NULL, 0, 0, NULL, false,
     "the pipelines to run, at least one"},
    {"log_level", SL_CFG_STRING, offsetof(sl_relay_cfg_t, log_level), false, "\"info\"", 0, 0,
     log_levels, false, "lowest level written to stderr"},
    {"shutdown_timeout_ms", SL_CFG_INT, offsetof(sl_relay_cfg_t, shutdown_timeout_ms), false,
     "10000", 0, 3600000, NULL, false,
     "on SIGTERM/SIGINT, how long to wait for in-flight messages to be acknowledged"},
    {"checkpoint_interval_ms", SL_CFG_INT, offsetof(sl_relay_cfg_t, checkpoint_interval_ms), false,
     "100", 0, 60000, NULL, false,
     "at most one checkpoint write per pipeline per interval (a crash resends at most this "
     "much more than the unacknowledged window)"},
    {"outbox_retention_s", SL_CFG_INT, offsetof(sl_relay_cfg_t, outbox_retention_s), false, "3600",
     -1, 315360000, NULL, false,
     "delete outbox rows every pipeline delivered once they are this old (seconds); "
     "-1 keeps them forever"},
};

static const sl_cfg_key_t pipeline_keys[] = {
    {"name", SL_CFG_STRING, offsetof(sl_pipeline_cfg_t, name), true, NULL, 0, 0, NULL, false,
     "unique name; keys the pipeline's checkpoint, so renaming restarts delivery"},
    {"topics", SL_CFG_STRLIST, offsetof(sl_pipeline_cfg_t, topics), false, NULL, 0, 0, NULL, false,
     "outbox topics to relay; '*' matches any characters; absent = every topic"},
    {"source", SL_CFG_OBJECT, offsetof(sl_pipeline_cfg_t, source), false, NULL, 0, 0, NULL, false,
     "where messages come from when not the outbox: a Kafka source (see below)"},
    {"sink", SL_CFG_OBJECT, offsetof(sl_pipeline_cfg_t, sink), true, NULL, 0, 0, NULL, false,
     "where messages go; see the sink keys below"},
    {"database", SL_CFG_STRING, offsetof(sl_pipeline_cfg_t, database), false, NULL, 0, 0, NULL,
     false, "outbox database of this pipeline, if not the relay's"},
    {"start", SL_CFG_STRING, offsetof(sl_pipeline_cfg_t, start), false, "\"beginning\"", 0, 0,
     start_choices, false, "where a pipeline without a checkpoint starts"},
    {"batch_size", SL_CFG_INT, offsetof(sl_pipeline_cfg_t, batch_size), false, "1000", 1, 100000,
     NULL, false, "outbox rows read per query"},
    {"max_inflight", SL_CFG_INT, offsetof(sl_pipeline_cfg_t, max_inflight), false, "10000", 1,
     10000000, NULL, false, "messages sent but not yet acknowledged; reading pauses at this"},
    {"max_inflight_bytes", SL_CFG_INT, offsetof(sl_pipeline_cfg_t, max_inflight_bytes), false,
     "67108864", 1024, 17179869184LL, NULL, false,
     "bytes of envelopes sent but not yet acknowledged; reading pauses at this"},
    {"poll_interval_ms", SL_CFG_INT, offsetof(sl_pipeline_cfg_t, poll_interval_ms), false, "1000",
     10, 3600000, NULL, false,
     "fallback poll when no doorbell rings (the doorbell wakes the relay at once)"},
    {"doorbell", SL_CFG_BOOL, offsetof(sl_pipeline_cfg_t, doorbell), false, "true", 0, 0, NULL,
     false,
     "LISTEN for publish() notifications and arm the doorbell while idle, to wake immediately"},
};

#define NKEYS(t) (sizeof(t) / sizeof((t)[0]))

static int
pipeline_name_check(const char *name, const char *path, sl_err_t *err)
{
    size_t len = strlen(name);
    bool ok = len > 0 && len <= 100;
    for (size_t i = 0; ok && i < len; i++) {
        char c = name[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '_' || c == '-';
    }
    if (ok)
        return SL_OK;
    sl_err_set(err, SL_EUSAGE, "%s.name: invalid pipeline name \"%s\"", path, name);
    return sl_err_hint(err, "use 1 to 100 characters from A-Z a-z 0-9 . _ -");
}

static int
pipeline_cfg_parse(const cJSON *obj, size_t i, sl_pipeline_cfg_t *pc, sl_err_t *err)
{
    char path[64];
    snprintf(path, sizeof path, "pipelines[%zu]", i);
    pc->path = strdup(path);
    if (pc->path == NULL)
        return sl_err_nomem(err, "a config path");
    if (!cJSON_IsObject(obj))
        return sl_err_set(err, SL_EUSAGE, "%s: expected an object", path);
    int rc = sl_cfg_object_parse(obj, path, pipeline_keys, NKEYS(pipeline_keys), pc, err);
    if (rc != SL_OK)
        return rc;
    if ((rc = pipeline_name_check(pc->name, path, err)) != SL_OK)
        return rc;
    for (size_t t = 0; t < pc->topics.n; t++) {
        char tp[96];
        snprintf(tp, sizeof tp, "%s.topics[%zu]", path, t);
        if ((rc = sl_outbox_topic_glob_check(pc->topics.v[t], tp, err)) != SL_OK)
            return rc;
    }
    /* batch_size sizes outbox reads; a Kafka source has no such reads. */
    if (pc->source == NULL && pc->batch_size > pc->max_inflight) {
        sl_err_set(err, SL_EUSAGE, "%s: batch_size (%lld) is larger than max_inflight (%lld)", path,
                   (long long)pc->batch_size, (long long)pc->max_inflight);
        return sl_err_hint(err, "lower batch_size or raise max_inflight; a read never asks for "
                                "more rows than the window has room for");
    }
    char sp[80];
    snprintf(sp, sizeof sp, "%s.sink", path);
    if ((rc = sl_sink_conf_parse(pc->sink, sp, &pc->sink_ops, &pc->sink_conf, err)) != SL_OK)
        return rc;
    if (pc->source == NULL)
        return SL_OK;
    snprintf(sp, sizeof sp, "%s.source", path);
    if ((rc = sl_ksource_conf_parse(pc->source, sp, &pc->ksrc, err)) != SL_OK)
        return rc;
    if (pc->topics.n > 0) {
        sl_err_set(err, SL_EUSAGE,
                   "%s.topics: selects outbox topics, but this pipeline reads Kafka", path);
        return sl_err_hint(err, "name the Kafka topics in source.topics and remove this key");
    }
    if (strcmp(pc->sink_ops->type, "inbox") != 0) {
        sl_err_set(err, SL_EUSAGE,
                   "%s.sink.type: a Kafka source delivers into an inbox, not \"%s\"", path,
                   pc->sink_ops->type);
        return sl_err_hint(err, "use {\"type\": \"inbox\", \"inbox\": \"<name>\"}: the inbox "
                                "makes redelivered records harmless");
    }
    return SL_OK;
}

static void
pipeline_cfg_release(sl_pipeline_cfg_t *pc)
{
    if (pc->sink_ops != NULL)
        sl_sink_conf_free(pc->sink_ops, pc->sink_conf);
    sl_ksource_conf_free(pc->ksrc);
    sl_cfg_release(pipeline_keys, NKEYS(pipeline_keys), pc);
    free(pc->path);
}

void
sl_relay_cfg_free(sl_relay_cfg_t *cfg)
{
    if (cfg == NULL)
        return;
    for (size_t i = 0; i < cfg->npl; i++)
        pipeline_cfg_release(&cfg->pl[i]);
    free(cfg->pl);
    sl_cfg_release(relay_keys, NKEYS(relay_keys), cfg);
    sl_cfg_doc_free(&cfg->doc);
    free(cfg);
}

int
sl_relay_cfg_load(const char *file, sl_relay_cfg_t **out, sl_err_t *err)
{
    sl_relay_cfg_t *cfg = calloc(1, sizeof *cfg);
    if (cfg == NULL)
        return sl_err_nomem(err, "the relay config");
    int rc = sl_cfg_doc_load(file, &cfg->doc, err);
    if (rc != SL_OK)
        goto fail;
    if (!cJSON_IsObject(cfg->doc.root)) {
        rc = sl_err_set(err, SL_EUSAGE, "%s: the top level must be a JSON object", file);
        goto fail;
    }
    rc = sl_cfg_object_parse(cfg->doc.root, "", relay_keys, NKEYS(relay_keys), cfg, err);
    if (rc != SL_OK)
        goto fail;
    int n = cJSON_GetArraySize(cfg->pipelines);
    if (n == 0) {
        rc = sl_err_set(err, SL_EUSAGE, "pipelines: is empty");
        sl_err_hint(err, "add at least one pipeline, e.g. {\"name\": \"debug\", \"sink\": "
                         "{\"type\": \"stdout\"}}");
        goto fail;
    }
    cfg->pl = calloc((size_t)n, sizeof *cfg->pl);
    if (cfg->pl == NULL) {
        rc = sl_err_nomem(err, "the pipelines");
        goto fail;
    }
    const cJSON *p;
    cJSON_ArrayForEach (p, cfg->pipelines) {
        sl_pipeline_cfg_t *pc = &cfg->pl[cfg->npl++];
        if ((rc = pipeline_cfg_parse(p, cfg->npl - 1, pc, err)) != SL_OK)
            goto fail;
        for (size_t j = 0; j + 1 < cfg->npl; j++) {
            if (strcmp(cfg->pl[j].name, pc->name) == 0) {
                rc = sl_err_set(err, SL_EUSAGE, "%s.name: pipeline name \"%s\" is also used by %s",
                                pc->path, pc->name, cfg->pl[j].path);
                sl_err_hint(err, "each pipeline needs its own name: it keys the checkpoint");
                goto fail;
            }
        }
    }
    *out = cfg;
    return SL_OK;

fail:
    sl_cfg_doc_scrub(&cfg->doc, err);
    if (rc != SL_ENOMEM && err != NULL && strstr(err->msg, file) == NULL)
        sl_err_prefix(err, "%s: ", file);
    sl_relay_cfg_free(cfg);
    return rc;
}

/* True for property names that hold credentials (sasl.password, ssl.key.password, ...). */
static bool
is_secret_property(const char *name)
{
    static const char *const marks[] = {"password", "secret", "token", "ssl.key.pem", "jaas"};
    for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++)
        if (strstr(name, marks[i]) != NULL)
            return true;
    return false;
}

/* Redacts secrets written literally (not through ${...}) in a display tree:
 * passwords inside connection strings and credential-like sink properties. */
static void
redact_literals(cJSON *doc)
{
    char buf[2048];
    cJSON *db = cJSON_GetObjectItemCaseSensitive(doc, "database");
    if (cJSON_IsString(db) && strcmp(db->valuestring, "[redacted]") != 0)
        cJSON_SetValuestring(db, sl_pg_conninfo_redact(db->valuestring, buf, sizeof buf));
    const cJSON *pl;
    cJSON_ArrayForEach (pl, cJSON_GetObjectItemCaseSensitive(doc, "pipelines")) {
        cJSON *pdb = cJSON_GetObjectItemCaseSensitive(pl, "database");
        if (cJSON_IsString(pdb) && strcmp(pdb->valuestring, "[redacted]") != 0)
            cJSON_SetValuestring(pdb, sl_pg_conninfo_redact(pdb->valuestring, buf, sizeof buf));
        cJSON *sink = cJSON_GetObjectItemCaseSensitive(pl, "sink");
        cJSON *prop;
        cJSON_ArrayForEach (prop, cJSON_GetObjectItemCaseSensitive(sink, "properties")) {
            if (cJSON_IsString(prop) && is_secret_property(prop->string))
                cJSON_SetValuestring(prop, "[redacted]");
        }
    }
}

void
sl_relay_cfg_print(const sl_relay_cfg_t *cfg, FILE *out)
{
    cJSON *copy = cJSON_Duplicate(cfg->doc.display, 1);
    if (copy == NULL) {
        fprintf(out, "(out of memory printing the config)\n");
        return;
    }
    redact_literals(copy);
    char *text = cJSON_Print(copy);
    cJSON_Delete(copy);
    if (text == NULL) {
        fprintf(out, "(out of memory printing the config)\n");
        return;
    }
    fprintf(out, "%s\n", text);
    cJSON_free(text);
}

void
sl_relay_cfg_help(FILE *out)
{
    fprintf(out, "Relay configuration (JSON; // and /* */ comments allowed).\n"
                 "Every string may use ${ENV:NAME}, ${ENV:NAME:-default}, ${FILE:/path}.\n\n"
                 "  top level:\n");
    sl_cfg_keys_help(out, relay_keys, NKEYS(relay_keys), "    ");
    fprintf(out, "\n  pipelines[]:\n");
    sl_cfg_keys_help(out, pipeline_keys, NKEYS(pipeline_keys), "    ");
    sl_ksource_help(out);
    sl_sink_help(out);
}
