/*
 * sinks/sink.c - the registry of sink types and their shared config parsing.
 *
 * Each sink type is one sl_sink_ops_t in its own file; this table is the only
 * place that lists them, so adding a sink is one file and one line here.
 */
#include "sinks/sink.h"
#include "sinks/sink_int.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

static const sl_sink_ops_t *const sink_types[] = {
    &sl_sink_kafka_ops,  &sl_sink_stdout_ops, &sl_sink_file_ops,
    &sl_sink_notify_ops, &sl_sink_inbox_ops,
};

#define SINK_NTYPES (sizeof sink_types / sizeof sink_types[0])

const sl_sink_ops_t *
sl_sink_ops_find(const char *type)
{
    for (size_t i = 0; i < SINK_NTYPES; i++)
        if (strcmp(sink_types[i]->type, type) == 0)
            return sink_types[i];
    return NULL;
}

const char *
sl_sink_types(char *buf, size_t n)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < SINK_NTYPES && off < n; i++) {
        int w = snprintf(buf + off, n - off, "%s%s", i ? ", " : "", sink_types[i]->type);
        if (w < 0)
            break;
        off += (size_t)w;
    }
    return buf;
}

int
sl_sink_conf_parse(const cJSON *obj, const char *path, const sl_sink_ops_t **ops, void **conf,
                   sl_err_t *err)
{
    char types[128];
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "type");
    if (type == NULL) {
        sl_err_set(err, SL_EUSAGE, "%s: missing required key \"type\"", path);
        return sl_err_hint(err, "set \"type\" to one of: %s", sl_sink_types(types, sizeof types));
    }
    if (!cJSON_IsString(type)) {
        sl_err_set(err, SL_EUSAGE, "%s.type: expected a string", path);
        return sl_err_hint(err, "set \"type\" to one of: %s", sl_sink_types(types, sizeof types));
    }
    const sl_sink_ops_t *o = sl_sink_ops_find(type->valuestring);
    if (o == NULL) {
        sl_err_set(err, SL_EUSAGE, "%s.type: unknown sink type \"%s\"", path, type->valuestring);
        return sl_err_hint(err, "known sink types: %s", sl_sink_types(types, sizeof types));
    }
    void *c = calloc(1, o->conf_size);
    if (c == NULL)
        return sl_err_nomem(err, "a sink config");
    int rc = sl_cfg_object_parse(obj, path, o->keys, o->nkeys, c, err);
    if (rc != SL_OK) {
        free(c);
        return rc;
    }
    if (o->validate != NULL && (rc = o->validate(c, path, err)) != SL_OK) {
        sl_sink_conf_free(o, c);
        return rc;
    }
    *ops = o;
    *conf = c;
    return SL_OK;
}

bool
sl_sink_close_begin(sl_sink_t *sk, void (*done)(void *arg), void *arg)
{
    if (sk == NULL) {
        if (done != NULL)
            done(arg);
        return false;
    }
    sk->done = done;
    sk->done_arg = arg;
    return true;
}

void
sl_sink_close_end(sl_sink_t *sk)
{
    void (*done)(void *) = sk->done;
    void *arg = sk->done_arg;
    free(sk);
    if (done != NULL)
        done(arg);
}

void
sl_sink_conf_free(const sl_sink_ops_t *ops, void *conf)
{
    if (conf == NULL)
        return;
    if (ops->conf_release != NULL)
        ops->conf_release(conf);
    sl_cfg_release(ops->keys, ops->nkeys, conf);
    free(conf);
}

void
sl_sink_help(FILE *out)
{
    for (size_t i = 0; i < SINK_NTYPES; i++) {
        fprintf(out, "\n  sink \"%s\":\n", sink_types[i]->type);
        sl_cfg_keys_help(out, sink_types[i]->keys, sink_types[i]->nkeys, "    ");
    }
}
