/*
 * sinks/stdout.c - the "stdout" and "file" sinks: one JSON envelope per line.
 *
 * Meant for debugging, archiving and piping into other tools. Messages of a
 * batch are encoded into one buffer; flush writes the buffer with write(2)
 * (and fsync(2) when "fsync" is true) and only then acknowledges the batch,
 * on the next loop iteration (a sink never acks from inside flush). A failed
 * write is a permanent error for the pipeline: nothing is acknowledged, so the
 * checkpoint stays before the batch.
 */
#include "sinks/sink_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct stdout_conf {
    char *type;
    char *path; /* file sink only */
    bool fsync; /* file sink only */
} stdout_conf_t;

typedef struct stdout_sink {
    struct sl_sink base;
    int fd; /* 1 for stdout, owned otherwise */
    bool own_fd;
    bool fsync;
    char *path;        /* owned copy, for errors */
    sl_buf_t out;      /* encoded lines of the current batch */
    sl_buf_t line;     /* scratch for one envelope */
    uint64_t *pending; /* tokens written but not yet acknowledged (owned) */
    size_t npending, cap;
    uint64_t *acking; /* tokens being acknowledged by the timer (owned) */
    size_t nacking, acking_cap;
    uv_timer_t ack_timer; /* delivers acks on the next loop iteration */
} stdout_sink_t;

static const sl_cfg_key_t stdout_keys[] = {
    {"type", SL_CFG_STRING, offsetof(stdout_conf_t, type), true, NULL, 0, 0, NULL, false,
     "\"stdout\""},
};

static const sl_cfg_key_t file_keys[] = {
    {"type", SL_CFG_STRING, offsetof(stdout_conf_t, type), true, NULL, 0, 0, NULL, false,
     "\"file\""},
    {"path", SL_CFG_STRING, offsetof(stdout_conf_t, path), true, NULL, 0, 0, NULL, false,
     "file to append JSON lines to (created if missing)"},
    {"fsync", SL_CFG_BOOL, offsetof(stdout_conf_t, fsync), false, "false", 0, 0, NULL, false,
     "fsync after every batch before acknowledging it"},
};

static void
stdout_ack_cb(uv_timer_t *t)
{
    stdout_sink_t *s = t->data;
    /* The list is taken out before the first ack: an ack may send and
     * flush more (the relay fills the room it frees), and that flush
     * starts a new list for the next iteration instead of writing over,
     * or reallocating, the one being read. */
    uint64_t *list = s->acking;
    size_t n = s->nacking, cap = s->acking_cap;
    s->acking = NULL;
    s->nacking = s->acking_cap = 0;
    for (size_t i = 0; i < n; i++)
        s->base.env.on_ack(s->base.env.ctx, list[i], SL_OK, NULL);
    if (s->acking == NULL) {
        s->acking = list; /* nothing new: keep the allocation */
        s->acking_cap = cap;
    } else {
        free(list);
    }
}

static int
stdout_create_common(int fd, bool own, bool do_fsync, const char *path, const sl_sink_ops_t *ops,
                     const sl_sink_env_t *env, sl_sink_t **out, sl_err_t *err)
{
    stdout_sink_t *s = calloc(1, sizeof *s);
    if (s == NULL)
        return sl_err_nomem(err, "a stdout sink");
    s->path = strdup(path);
    if (s->path == NULL) {
        free(s);
        return sl_err_nomem(err, "a stdout sink");
    }
    s->base.ops = ops;
    s->base.env = *env;
    s->fd = fd;
    s->own_fd = own;
    s->fsync = do_fsync;
    uv_timer_init(env->loop, &s->ack_timer);
    s->ack_timer.data = s;
    *out = &s->base;
    return SL_OK;
}

static int
stdout_create(const void *conf, const sl_sink_env_t *env, sl_sink_t **out, sl_err_t *err)
{
    return stdout_create_common(STDOUT_FILENO, false, false, "stdout", &sl_sink_stdout_ops, env,
                                out, err);
}

static int
file_create(const void *conf, const sl_sink_env_t *env, sl_sink_t **out, sl_err_t *err)
{
    const stdout_conf_t *c = conf;
    int fd = open(c->path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) {
        sl_err_set(err, SL_ERR, "cannot open \"%s\": %s", c->path, strerror(errno));
        err->native = errno;
        return sl_err_hint(err, "check that the directory exists and is writable by the relay");
    }
    int rc = stdout_create_common(fd, true, c->fsync, c->path, &sl_sink_file_ops, env, out, err);
    if (rc != SL_OK)
        close(fd);
    return rc;
}

static int
push_token(uint64_t **v, size_t *n, size_t *cap, uint64_t token, sl_err_t *err)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 256;
        uint64_t *nv = realloc(*v, nc * sizeof *nv);
        if (nv == NULL)
            return sl_err_nomem(err, "the acknowledgement list");
        *v = nv;
        *cap = nc;
    }
    (*v)[(*n)++] = token;
    return SL_OK;
}

static int
stdout_send(sl_sink_t *sk, const sl_msg_t *m, uint64_t token, size_t *bytes, sl_err_t *err)
{
    stdout_sink_t *s = (stdout_sink_t *)sk;
    sl_buf_reset(&s->line);
    int rc = sl_envelope_encode(m, SL_FORMAT_JSON, &s->line, err);
    if (rc == SL_OK)
        rc = sl_buf_append(&s->line, "\n", 1, err);
    if (rc == SL_OK)
        rc = sl_buf_append(&s->out, s->line.data, s->line.len, err);
    if (rc == SL_OK)
        rc = push_token(&s->pending, &s->npending, &s->cap, token, err);
    if (rc != SL_OK)
        return rc;
    *bytes = s->line.len;
    return SL_OK;
}

static int
stdout_flush(sl_sink_t *sk, sl_err_t *err)
{
    stdout_sink_t *s = (stdout_sink_t *)sk;
    size_t off = 0;
    while (off < s->out.len) {
        ssize_t w = write(s->fd, s->out.data + off, s->out.len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            sl_err_set(err, SL_ERR, "write to %s failed: %s", s->path, strerror(errno));
            err->native = errno;
            return SL_ERR;
        }
        off += (size_t)w;
    }
    sl_buf_reset(&s->out);
    if (s->fsync && fsync(s->fd) != 0) {
        sl_err_set(err, SL_ERR, "fsync of %s failed: %s", s->path, strerror(errno));
        err->native = errno;
        return SL_ERR;
    }
    for (size_t i = 0; i < s->npending; i++)
        if (push_token(&s->acking, &s->nacking, &s->acking_cap, s->pending[i], err) != SL_OK)
            return SL_ENOMEM;
    s->npending = 0;
    if (s->nacking > 0)
        uv_timer_start(&s->ack_timer, stdout_ack_cb, 0, 0);
    return SL_OK;
}

static void
stdout_closed(uv_handle_t *h)
{
    stdout_sink_t *s = h->data;
    if (s->own_fd)
        close(s->fd);
    sl_buf_free(&s->out);
    sl_buf_free(&s->line);
    free(s->pending);
    free(s->acking);
    free(s->path);
    sl_sink_close_end(&s->base);
}

static void
stdout_close(sl_sink_t *sk, void (*done)(void *arg), void *arg)
{
    stdout_sink_t *s = (stdout_sink_t *)sk;
    if (!sl_sink_close_begin(sk, done, arg))
        return;
    uv_timer_stop(&s->ack_timer);
    uv_close((uv_handle_t *)&s->ack_timer, stdout_closed);
}

const sl_sink_ops_t sl_sink_stdout_ops = {
    .type = "stdout",
    .keys = stdout_keys,
    .nkeys = sizeof stdout_keys / sizeof stdout_keys[0],
    .conf_size = sizeof(stdout_conf_t),
    .create = stdout_create,
    .send = stdout_send,
    .flush = stdout_flush,
    .close = stdout_close,
};

const sl_sink_ops_t sl_sink_file_ops = {
    .type = "file",
    .keys = file_keys,
    .nkeys = sizeof file_keys / sizeof file_keys[0],
    .conf_size = sizeof(stdout_conf_t),
    .create = file_create,
    .send = stdout_send,
    .flush = stdout_flush,
    .close = stdout_close,
};
