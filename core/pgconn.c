/*
 * core/pgconn.c - one libpq connection on the libuv loop.
 *
 * libpq runs in non-blocking mode; its socket is watched with a uv_poll_t.
 * The state machine is drawn in core/core.h. Design notes:
 *
 *  - During connect, libpq may close its socket and open another (next host,
 *    or IPv6 then IPv4 for "localhost"), possibly under the same descriptor
 *    number. libuv must never watch a descriptor it did not see opened, so
 *    every connect step stops and closes the poll handle before calling
 *    PQconnectPoll and opens a fresh one on the socket libpq returns. That
 *    costs an allocation per step, only while connecting.
 *  - Once up, one poll handle watches for readable (results, notifications,
 *    EOF) at all times and for writable only while libpq has unsent data.
 *  - Losing the connection (PQconsumeInput fails, or the server ends the
 *    session) moves to BACKOFF; the reconnect delay follows core's backoff
 *    schedule (100 ms doubling to 30 s, +/-20 % jitter, reset after a healthy
 *    minute) and every attempt is logged with its next delay.
 *  - Keepalives are on, so a server that vanished without closing the socket
 *    is noticed in about 30 s even when the connection is idle.
 */
#include "core/core.h"

#include <libpq-fe.h>
#include <uv.h>

#include <assert.h>
#include <stdlib.h>
#include <string.h>

struct sl_pgconn {
    uv_loop_t *loop; /* borrowed */
    char *conninfo;  /* owned */
    char *name;      /* owned, for logs */
    sl_pgconn_cbs_t cbs;
    void *ctx; /* passed to callbacks */
    sl_pgconn_state_t state;
    PGconn *conn;     /* owned, NULL when down */
    uv_poll_t *poll;  /* owned; closed asynchronously */
    int poll_fd;      /* descriptor poll watches, -1 when none */
    int poll_events;  /* UV_READABLE/UV_WRITABLE currently requested */
    uv_timer_t timer; /* reconnect delay */
    sl_backoff_t bo;
    PGresult *pending;    /* result of the statement in flight */
    uint32_t attempts;    /* connect attempts since the last success */
    int closing_handles;  /* handles still to close before freeing */
    void (*done)(void *); /* run after free on close */
    void *done_arg;
};

static const char *const pgconn_state_names[] = {
    [SL_PGCONN_DOWN] = "down", [SL_PGCONN_CONNECTING] = "connecting", [SL_PGCONN_READY] = "ready",
    [SL_PGCONN_BUSY] = "busy", [SL_PGCONN_BACKOFF] = "backoff",       [SL_PGCONN_CLOSED] = "closed",
};

static void pgconn_poll_cb(uv_poll_t *h, int status, int events);
static void pgconn_connect_step(sl_pgconn_t *pc);
static void pgconn_lost(sl_pgconn_t *pc, const sl_err_t *why);

static void
pgconn_set_state(sl_pgconn_t *pc, sl_pgconn_state_t to)
{
    if (pc->state == to)
        return;
    sl_log_debug("pg.state", "conn=%s from=%s to=%s", pc->name, pgconn_state_names[pc->state],
                 pgconn_state_names[to]);
    pc->state = to;
}

static void
poll_free_cb(uv_handle_t *h)
{
    free(h);
}

/* Stops and releases the current poll handle (its memory is freed on close). */
static void
pgconn_unwatch(sl_pgconn_t *pc)
{
    if (pc->poll == NULL)
        return;
    uv_poll_stop(pc->poll);
    uv_close((uv_handle_t *)pc->poll, poll_free_cb);
    pc->poll = NULL;
    pc->poll_fd = -1;
    pc->poll_events = 0;
}

/* Watches fd for events, creating a handle when the descriptor changed. */
static int
pgconn_watch(sl_pgconn_t *pc, int fd, int events, sl_err_t *err)
{
    if (pc->poll != NULL && pc->poll_fd != fd)
        pgconn_unwatch(pc);
    if (pc->poll == NULL) {
        pc->poll = malloc(sizeof *pc->poll);
        if (pc->poll == NULL)
            return sl_err_nomem(err, "a poll handle");
        int rc = uv_poll_init(pc->loop, pc->poll, fd);
        if (rc != 0) {
            free(pc->poll);
            pc->poll = NULL;
            sl_err_set(err, SL_ERR, "cannot watch the PostgreSQL socket: %s", uv_strerror(rc));
            err->native = rc;
            return SL_ERR;
        }
        pc->poll->data = pc;
        pc->poll_fd = fd;
        pc->poll_events = 0;
    }
    if (events != pc->poll_events) {
        int rc = uv_poll_start(pc->poll, events, pgconn_poll_cb);
        if (rc != 0) {
            sl_err_set(err, SL_ERR, "cannot watch the PostgreSQL socket: %s", uv_strerror(rc));
            err->native = rc;
            return SL_ERR;
        }
        pc->poll_events = events;
    }
    return SL_OK;
}

static void
pgconn_drop(sl_pgconn_t *pc)
{
    pgconn_unwatch(pc);
    if (pc->pending != NULL) {
        PQclear(pc->pending);
        pc->pending = NULL;
    }
    if (pc->conn != NULL) {
        PQfinish(pc->conn);
        pc->conn = NULL;
    }
}

/* libpq would print server notices (and a server's goodbye message) straight
 * to stderr; route them through the structured log instead. */
static void
pgconn_notice_cb(void *arg, const char *message)
{
    sl_pgconn_t *pc = arg;
    char q[1024];
    size_t len = strlen(message);
    char trimmed[1024];
    snprintf(trimmed, sizeof trimmed, "%.*s",
             (int)(len > 0 && message[len - 1] == '\n' ? len - 1 : len), message);
    bool bad = strncmp(trimmed, "FATAL", 5) == 0 || strncmp(trimmed, "WARNING", 7) == 0 ||
               strncmp(trimmed, "PANIC", 5) == 0;
    sl_log(bad ? SL_LOG_WARN : SL_LOG_INFO, "pg.notice", "conn=%s msg=%s", pc->name,
           sl_log_quote(q, sizeof q, trimmed));
}

static void
pgconn_timer_cb(uv_timer_t *t)
{
    sl_pgconn_t *pc = t->data;
    if (pc->state != SL_PGCONN_BACKOFF && pc->state != SL_PGCONN_DOWN)
        return;
    sl_pgconn_start(pc);
}

/* Connection failed or was lost: schedule the next attempt. */
static void
pgconn_lost(sl_pgconn_t *pc, const sl_err_t *why)
{
    bool was_up = pc->state == SL_PGCONN_READY || pc->state == SL_PGCONN_BUSY;
    pgconn_drop(pc);
    sl_backoff_failure(&pc->bo, sl_now_ms());
    uint32_t delay = sl_backoff_next(&pc->bo);
    pc->attempts++;
    char q[SL_ERR_MSG_MAX + 16];
    sl_log_warn(was_up ? "pg.disconnected" : "pg.connect_failed",
                "conn=%s attempt=%u next_delay_ms=%u err=%s", pc->name, pc->attempts, delay,
                sl_log_quote(q, sizeof q, why->msg));
    pgconn_set_state(pc, SL_PGCONN_BACKOFF);
    uv_timer_start(&pc->timer, pgconn_timer_cb, delay, 0);
    if (was_up && pc->cbs.on_down != NULL)
        pc->cbs.on_down(pc, why, pc->ctx);
}

static void
pgconn_fail_from_libpq(sl_pgconn_t *pc, const char *what)
{
    sl_err_t err;
    sl_err_clear(&err);
    sl_pg_result_err(NULL, pc->conn, &err);
    sl_err_prefix(&err, "%s: ", what);
    pgconn_lost(pc, &err);
}

int
sl_pgconn_new(uv_loop_t *loop, const char *conninfo, const char *name, const sl_pgconn_cbs_t *cbs,
              void *ctx, sl_pgconn_t **out, sl_err_t *err)
{
    sl_pgconn_t *pc = calloc(1, sizeof *pc);
    if (pc == NULL)
        return sl_err_nomem(err, "a PostgreSQL connection");
    pc->conninfo = strdup(conninfo);
    pc->name = strdup(name);
    if (pc->conninfo == NULL || pc->name == NULL) {
        free(pc->conninfo);
        free(pc->name);
        free(pc);
        return sl_err_nomem(err, "a PostgreSQL connection");
    }
    pc->loop = loop;
    pc->cbs = *cbs;
    pc->ctx = ctx;
    pc->poll_fd = -1;
    pc->state = SL_PGCONN_DOWN;
    sl_backoff_init(&pc->bo, sl_now_us() ^ (uintptr_t)pc);
    uv_timer_init(loop, &pc->timer);
    pc->timer.data = pc;
    *out = pc;
    return SL_OK;
}

void
sl_pgconn_start(sl_pgconn_t *pc)
{
    assert(pc->state == SL_PGCONN_DOWN || pc->state == SL_PGCONN_BACKOFF);
    /* keepalives: notice a silently dead server on an idle connection. */
    const char *keys[] = {"dbname",
                          "application_name",
                          "keepalives",
                          "keepalives_idle",
                          "keepalives_interval",
                          "keepalives_count",
                          NULL};
    const char *vals[] = {pc->conninfo, "sluice-relay", "1", "10", "5", "3", NULL};
    pc->conn = PQconnectStartParams(keys, vals, 1);
    sl_err_t err;
    sl_err_clear(&err);
    if (pc->conn == NULL) {
        sl_err_nomem(&err, "a PostgreSQL connection");
        pgconn_set_state(pc, SL_PGCONN_CONNECTING);
        pgconn_lost(pc, &err);
        return;
    }
    pgconn_set_state(pc, SL_PGCONN_CONNECTING);
    PQsetNoticeProcessor(pc->conn, pgconn_notice_cb, pc);
    if (PQstatus(pc->conn) == CONNECTION_BAD) {
        pgconn_fail_from_libpq(pc, "cannot connect to PostgreSQL");
        return;
    }
    /* The first step behaves as if the socket were writable. */
    pgconn_connect_step(pc);
}

static void
pgconn_connect_step(sl_pgconn_t *pc)
{
    sl_err_t err;
    sl_err_clear(&err);
    /* See the file header: never let libuv watch a descriptor libpq may replace. */
    pgconn_unwatch(pc);
    PostgresPollingStatusType st = PQconnectPoll(pc->conn);
    switch (st) {
    case PGRES_POLLING_FAILED: pgconn_fail_from_libpq(pc, "cannot connect to PostgreSQL"); return;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        if (pgconn_watch(pc, PQsocket(pc->conn),
                         st == PGRES_POLLING_READING ? UV_READABLE : UV_WRITABLE, &err) != SL_OK)
            pgconn_lost(pc, &err);
        return;
    case PGRES_POLLING_OK: break;
    case PGRES_POLLING_ACTIVE: /* Obsolete; libpq never returns it. */
        if (pgconn_watch(pc, PQsocket(pc->conn), UV_WRITABLE, &err) != SL_OK)
            pgconn_lost(pc, &err);
        return;
    }
    if (PQsetnonblocking(pc->conn, 1) != 0) {
        pgconn_fail_from_libpq(pc, "cannot switch the connection to non-blocking mode");
        return;
    }
    if (pgconn_watch(pc, PQsocket(pc->conn), UV_READABLE, &err) != SL_OK) {
        pgconn_lost(pc, &err);
        return;
    }
    if (pc->attempts > 0)
        sl_log_info("pg.connected", "conn=%s after_attempts=%u", pc->name, pc->attempts);
    else
        sl_log_debug("pg.connected", "conn=%s", pc->name);
    pc->attempts = 0;
    sl_backoff_success(&pc->bo, sl_now_ms());
    pgconn_set_state(pc, SL_PGCONN_READY);
    if (pc->cbs.on_up != NULL)
        pc->cbs.on_up(pc, pc->ctx);
}

/* Pushes unsent data; watches for writable while some remains. */
static int
pgconn_flush(sl_pgconn_t *pc, sl_err_t *err)
{
    int r = PQflush(pc->conn);
    if (r < 0) {
        sl_pg_result_err(NULL, pc->conn, err);
        return SL_ERR;
    }
    int want = UV_READABLE | (r == 1 ? UV_WRITABLE : 0);
    return pgconn_watch(pc, pc->poll_fd, want, err);
}

static void
pgconn_deliver_notifies(sl_pgconn_t *pc)
{
    PGnotify *n;
    while (pc->conn != NULL && (n = PQnotifies(pc->conn)) != NULL) {
        if (pc->cbs.on_notify != NULL)
            pc->cbs.on_notify(pc, n->relname, pc->ctx);
        PQfreemem(n);
    }
}

static void
pgconn_read(sl_pgconn_t *pc)
{
    if (PQconsumeInput(pc->conn) == 0) {
        pgconn_fail_from_libpq(pc, "lost the PostgreSQL connection");
        return;
    }
    pgconn_deliver_notifies(pc);
    if (pc->state != SL_PGCONN_BUSY) {
        /* Idle: a readable socket with nothing for us may mean the server said
         * goodbye (e.g. shutdown); libpq marks the connection bad then. */
        if (PQstatus(pc->conn) == CONNECTION_BAD)
            pgconn_fail_from_libpq(pc, "lost the PostgreSQL connection");
        return;
    }
    while (!PQisBusy(pc->conn)) {
        PGresult *res = PQgetResult(pc->conn);
        if (res == NULL) {
            /* The statement is complete. */
            PGresult *done = pc->pending;
            pc->pending = NULL;
            pgconn_set_state(pc, SL_PGCONN_READY);
            if (pc->cbs.on_result != NULL)
                pc->cbs.on_result(pc, done, pc->ctx); /* takes done */
            else
                PQclear(done);
            /* The callback may have sent the next statement or closed us. */
            if (pc->state == SL_PGCONN_READY || pc->state == SL_PGCONN_BUSY)
                pgconn_deliver_notifies(pc);
            return;
        }
        /* Keep the first error, otherwise the last result. */
        if (pc->pending != NULL && PQresultStatus(pc->pending) == PGRES_FATAL_ERROR) {
            PQclear(res);
        } else {
            PQclear(pc->pending);
            pc->pending = res;
        }
    }
    if (PQstatus(pc->conn) == CONNECTION_BAD)
        pgconn_fail_from_libpq(pc, "lost the PostgreSQL connection");
}

static void
pgconn_poll_cb(uv_poll_t *h, int status, int events)
{
    sl_pgconn_t *pc = h->data;
    if (pc == NULL || h != pc->poll)
        return;
    if (pc->state == SL_PGCONN_CONNECTING) {
        pgconn_connect_step(pc);
        return;
    }
    if (status < 0) {
        sl_err_t err;
        sl_err_set(&err, SL_ERR, "socket error on the PostgreSQL connection: %s",
                   uv_strerror(status));
        pgconn_lost(pc, &err);
        return;
    }
    if (events & UV_WRITABLE) {
        sl_err_t err;
        sl_err_clear(&err);
        if (pgconn_flush(pc, &err) != SL_OK) {
            pgconn_lost(pc, &err);
            return;
        }
    }
    if ((events & UV_READABLE) && pc->conn != NULL)
        pgconn_read(pc);
}

int
sl_pgconn_send(sl_pgconn_t *pc, const char *sql, int nparams, const char *const *params,
               sl_err_t *err)
{
    assert(pc->state == SL_PGCONN_READY);
    /* Without parameters use the simple protocol, which allows several
     * statements in one string (session set-up). */
    int sent = nparams == 0
                   ? PQsendQuery(pc->conn, sql)
                   : PQsendQueryParams(pc->conn, sql, nparams, NULL, params, NULL, NULL, 0);
    if (sent == 0) {
        sl_pg_result_err(NULL, pc->conn, err);
        pgconn_lost(pc, err);
        return SL_ERR;
    }
    pgconn_set_state(pc, SL_PGCONN_BUSY);
    if (pgconn_flush(pc, err) != SL_OK) {
        pgconn_lost(pc, err);
        return SL_ERR;
    }
    return SL_OK;
}

bool
sl_pgconn_is_ready(const sl_pgconn_t *pc)
{
    return pc->state == SL_PGCONN_READY;
}

sl_pgconn_state_t
sl_pgconn_state(const sl_pgconn_t *pc)
{
    return pc->state;
}

void
sl_pgconn_reset(sl_pgconn_t *pc, const sl_err_t *why)
{
    if (pc->state == SL_PGCONN_READY || pc->state == SL_PGCONN_BUSY ||
        pc->state == SL_PGCONN_CONNECTING)
        pgconn_lost(pc, why);
}

static void
pgconn_handle_closed(uv_handle_t *h)
{
    sl_pgconn_t *pc = h->data;
    if (--pc->closing_handles > 0)
        return;
    void (*done)(void *) = pc->done;
    void *arg = pc->done_arg;
    free(pc->conninfo);
    free(pc->name);
    free(pc);
    if (done != NULL)
        done(arg);
}

void
sl_pgconn_close(sl_pgconn_t *pc, void (*done)(void *arg), void *arg)
{
    if (pc == NULL) {
        if (done != NULL)
            done(arg);
        return;
    }
    pgconn_drop(pc);
    pgconn_set_state(pc, SL_PGCONN_CLOSED);
    pc->done = done;
    pc->done_arg = arg;
    pc->closing_handles = 1;
    uv_timer_stop(&pc->timer);
    uv_close((uv_handle_t *)&pc->timer, pgconn_handle_closed);
}
