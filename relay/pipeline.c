/*
 * relay/pipeline.c - one pipeline: outbox reader, in-flight window, sink,
 * checkpoint.
 *
 * Upholds DESIGN.md invariants 2 (no skipped rows), 3 (ack before
 * checkpoint), 4 (stable identity) and 5 (bounded memory).
 *
 * Reading. The reader walks the outbox in snapshot ranges (outbox/outbox.h):
 * OPEN takes a new upper snapshot `hi`; PAGE reads rows visible in `hi` but
 * not in `lo` with id > last id, ordered by id. A page shorter than asked
 * completes the range (lo := hi).
 *
 * Window. Every message sent to the sink enters the window (relay/window.c),
 * which derives the acknowledged position from acks arriving in any order.
 * Reads are issued only while the window has room for a whole page
 * (max_inflight messages and max_inflight_bytes), which is the backpressure:
 * a slow or dead sink stops the reader, never grows memory.
 *
 * Checkpoint. The window turns acks into the acknowledged position. The
 * pipeline writes it at most once per checkpoint_interval_ms (once a minute
 * when only the snapshot moved), and the UPDATE refuses to move it backwards.
 * After a crash, a restart re-reads from the written position: only the
 * unacknowledged window (plus what was acknowledged since the last write) is
 * sent again.
 *
 * States:
 *
 *   CONNECTING ──pg up──▶ SETUP ──locked, loaded──▶ RUNNING ──stop──▶ DRAINING
 *       ▲                   │                          │                 │
 *       └──── pg down ──────┴──────────────────────────┘     acked or deadline
 *                                                                        ▼
 *   any state ── permanent error ──▶ DRAINING (2 s, `failed`) ──▶ CLOSING ─▶ STOPPED
 *
 * A permanent error (a message the sink rejects, the catalog missing) sets
 * `failed`, stops reading and drains briefly so acknowledged messages before
 * it are checkpointed.
 * A lost PostgreSQL connection keeps the window and the in-memory position:
 * acks keep arriving from the sink, and the checkpoint is written once the
 * connection is back. Everything runs on the loop thread.
 */
#include "relay/relay_int.h"

#include "outbox/outbox.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Stats are logged at most this often while messages flow. */
#define SL_PIPELINE_STATS_MS 10000
/*
 * An idle pipeline's position still moves (every snapshot differs, if only
 * because of its own checkpoint writes). Writing it without new deliveries
 * only saves re-scanning on restart, so do it at most this often.
 */
#define SL_PIPELINE_IDLE_CKPT_MS 60000
/* Retention runs this often, or every second while it finds full batches. */
#define SL_PIPELINE_PRUNE_MS 10000
#define SL_PIPELINE_PRUNE_BUSY_MS 1000
/* After a failure, how long to wait for acks of messages before the failed one. */
#define SL_PIPELINE_FAIL_DRAIN_MS 2000
/*
 * After arming the doorbell, look again after this long, then 4 times longer
 * each time up to poll_interval_ms: a publisher that checked the doorbell just
 * before it was armed, and so did not ring, is found within about that delay
 * of its commit (see "the doorbell" in docs/concepts.md).
 */
#define SL_PIPELINE_IDLE_FIRST_MS 5
/*
 * A pipeline disarms as soon as it finds new rows, and arms again only after
 * finding nothing for SL_PIPELINE_ARM_AFTER_MS, looking every
 * SL_PIPELINE_IDLE_POLL_MS meanwhile. Publishers that keep the relay busy
 * (even with short gaps) therefore never ring: ringing would make every
 * commit queue behind NOTIFY's lock, slowing commits, which would leave the
 * relay idle more often and keep the doorbell armed.
 */
#define SL_PIPELINE_ARM_AFTER_MS 50
#define SL_PIPELINE_IDLE_POLL_MS 1
#define SL_PIPELINE_IDLE_GROWTH 4
/* Envelope bytes beyond payload, headers, topic and key (ids, ts, field names). */
#define SL_PIPELINE_ENVELOPE_OVERHEAD 200
/* Assumed envelope size before the first message was measured. */
#define SL_PIPELINE_FIRST_MSG_BYTES 1024

/*
 * Pages read but not yet handed to the sink. Two lets the next page be read
 * while the sink takes the current one (read-ahead), so PostgreSQL and the
 * relay work at the same time; their rows count against the window.
 */
#define SL_PIPELINE_HELD_MAX 2

typedef enum sl_pipeline_state {
    SL_PIPELINE_CONNECTING,
    SL_PIPELINE_SETUP,
    SL_PIPELINE_RUNNING,
    SL_PIPELINE_DRAINING,
    SL_PIPELINE_CLOSING,
    SL_PIPELINE_STOPPED,
} sl_pipeline_state_t;

static const char *const pipeline_state_names[] = {
    [SL_PIPELINE_CONNECTING] = "connecting", [SL_PIPELINE_SETUP] = "setup",
    [SL_PIPELINE_RUNNING] = "running",       [SL_PIPELINE_DRAINING] = "draining",
    [SL_PIPELINE_CLOSING] = "closing",       [SL_PIPELINE_STOPPED] = "stopped",
};

/* The statement in flight on the pipeline's connection. */
typedef enum sl_pipeline_op {
    SL_OP_NONE,
    SL_OP_SESSION, /* SET ...; LISTEN */
    SL_OP_LOCK,    /* pg_try_advisory_lock */
    SL_OP_LOAD,    /* checkpoint load */
    SL_OP_OPEN,    /* new upper snapshot */
    SL_OP_PAGE,    /* read a page */
    SL_OP_SAVE,    /* checkpoint write */
    SL_OP_PRUNE,   /* outbox retention */
    SL_OP_ARM,     /* take the doorbell lock: idle, ring me */
    SL_OP_DISARM,  /* release it: busy, do not ring */
} sl_pipeline_op_t;

struct sl_pipeline {
    uv_loop_t *loop;              /* borrowed */
    const sl_pipeline_cfg_t *cfg; /* borrowed */
    const sl_relay_cfg_t *rcfg;   /* borrowed */
    sl_pipeline_state_t state;
    bool failed;    /* stopped by an error it cannot heal */
    bool loaded;    /* checkpoint loaded at least once */
    bool lock_wait; /* another session holds the pipeline lock */
    sl_pipeline_op_t op;

    sl_pgconn_t *pc;       /* owned */
    sl_sink_t *sk;         /* owned */
    uv_timer_t poll_timer; /* fallback poll, stats, deadlines */
    uv_timer_t ckpt_timer; /* delayed checkpoint write / lock retry */
    int open_handles;      /* timers not yet closed */
    void (*on_stopped)(sl_pipeline_t *, void *);
    void *on_stopped_arg;

    /* Identity. */
    char *instance;     /* owned, sluice.meta.instance_id */
    char *db;           /* owned, database name */
    char *topics_exact; /* owned text[] literal or NULL */
    char *topics_like;  /* owned text[] literal or NULL */

    /* Reader. */
    sl_pos_t rd;                          /* where the next read starts */
    bool rd_bounded;                      /* rd_max_id is known for the open range */
    int64_t rd_max_id;                    /* highest id in the open range */
    bool wake;                            /* something may have been published */
    bool armed;                           /* holds the doorbell lock (idle, ring me) */
    bool disarm_wanted;                   /* busy again: release the doorbell lock */
    uint64_t arm_after_ms;                /* do not try to arm before this */
    uint64_t idle_delay_ms;               /* next poll delay while armed */
    uint64_t idle_since_ms;               /* when reads started finding nothing, 0 if busy */
    PGresult *held[SL_PIPELINE_HELD_MAX]; /* pages not yet handed to the sink, oldest first */
    int nheld;                            /* pages in `held` */
    int held_row;                         /* next row of held[0] to send */
    uint64_t held_rows;                   /* rows in `held` not yet sent */
    uint64_t avg_msg_bytes;               /* moving average of envelope sizes */
    int64_t page_limit;                   /* rows asked for by the PAGE in flight */
    bool sink_full;                       /* the sink said AGAIN: wait for an ack */

    sl_window_t *win; /* owned: unacknowledged messages and their ranges */

    /* Checkpoint. */
    sl_pos_t ck;                  /* acknowledged position (in memory) */
    int64_t delivered;            /* messages acknowledged in total */
    int64_t ck_saved_delivered;   /* `delivered` as last stored */
    int64_t ck_sending_delivered; /* `delivered` in the write in flight */
    bool ck_dirty;                /* ck differs from what is stored */
    uint64_t ck_written_ms;       /* last write */

    /* Retention. */
    uint64_t next_prune_ms; /* UINT64_MAX when disabled */

    /* Shutdown. */
    uint64_t deadline_ms;

    /* Stats. */
    int64_t stats_delivered;
    uint64_t stats_ms;
};

static void pipeline_kick(sl_pipeline_t *pl);
static void pipeline_fail(sl_pipeline_t *pl, const sl_err_t *err);
static void pipeline_close(sl_pipeline_t *pl);
static void pipeline_poll_schedule(sl_pipeline_t *pl);
static void pipeline_poll_timer_cb(uv_timer_t *t);

/* ------------------------------------------------------------------------ */

static void
pipeline_set_state(sl_pipeline_t *pl, sl_pipeline_state_t to)
{
    if (pl->state == to)
        return;
    sl_log_info("pipeline.state", "pipeline=%s from=%s to=%s", pl->cfg->name,
                pipeline_state_names[pl->state], pipeline_state_names[to]);
    pl->state = to;
}

static uint64_t
window_used(const sl_pipeline_t *pl)
{
    return sl_window_used(pl->win);
}

/* Brings the in-memory checkpoint up to the acknowledged prefix. */
static void
pipeline_advance(sl_pipeline_t *pl)
{
    /* Out of memory keeps the older position, which stays true; retried on the next ack. */
    if (sl_window_position(pl->win, &pl->ck) == 1)
        pl->ck_dirty = true;
}

/* ------------------------------------------------------------------------ */
/* Sink side                                                                 */
/* ------------------------------------------------------------------------ */

static void
pipeline_on_ack(void *ctx, uint64_t token, int status, const sl_err_t *err)
{
    sl_pipeline_t *pl = ctx;
    if (!sl_window_has(pl->win, token))
        return; /* From before a restart of the reader: nothing refers to it. */
    if (status != SL_OK) {
        sl_err_t e;
        if (err != NULL)
            e = *err;
        else
            sl_err_set(&e, SL_ERR, "the sink rejected the message");
        sl_err_prefix(&e, "outbox message %" PRId64 " was not delivered: ",
                      sl_window_outbox_id(pl->win, token));
        if (e.hint[0] == '\0')
            sl_err_hint(&e, "the checkpoint stays before this message; fix the cause and "
                            "restart the relay to deliver it");
        pipeline_fail(pl, &e);
        return;
    }
    pl->delivered += (int64_t)sl_window_ack(pl->win, token);
    pipeline_advance(pl);
    pl->sink_full = false;
    pipeline_kick(pl);
}

static void
fix_timestamp(const char *pg, char *out, size_t n)
{
    /* "2026-11-21 08:30:00.123456+00" -> "2026-11-21T08:30:00.123456Z" */
    size_t len = strlen(pg);
    if (len >= 3 && strcmp(pg + len - 3, "+00") == 0)
        len -= 3;
    snprintf(out, n, "%.*sZ", (int)len, pg);
    char *sp = strchr(out, ' ');
    if (sp != NULL)
        *sp = 'T';
}

/*
 * Hands the held pages' rows to the sink, oldest first, flushing after each
 * page. Stops early when the sink is full (resumes on the next ack). Returns
 * SL_OK, SL_AGAIN (sink full) or SL_ERR (the pipeline failed).
 */
static int
pipeline_send_held(sl_pipeline_t *pl)
{
    char idbuf[96], tsbuf[64];
    sl_err_t err;
    sl_err_clear(&err);
    while (pl->nheld > 0) {
        PGresult *res = pl->held[0];
        int nrows = PQntuples(res);
        while (pl->held_row < nrows) {
            int i = pl->held_row;
            sl_msg_t m = {0};
            m.outbox_id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
            snprintf(idbuf, sizeof idbuf, "%s:%" PRId64, pl->instance, m.outbox_id);
            fix_timestamp(PQgetvalue(res, i, 6), tsbuf, sizeof tsbuf);
            m.id = idbuf;
            m.topic = PQgetvalue(res, i, 1);
            m.key = PQgetisnull(res, i, 2) ? NULL : PQgetvalue(res, i, 2);
            m.op = PQgetvalue(res, i, 3);
            m.payload = PQgetvalue(res, i, 4);
            m.headers = PQgetvalue(res, i, 5);
            m.ts = tsbuf;
            m.db = pl->db;
            m.txid = PQgetvalue(res, i, 7);
            size_t bytes = 0;
            /* The sink never acks inside send, so the token can be pushed after. */
            uint64_t seq = sl_window_next(pl->win);
            int rc = pl->cfg->sink_ops->send(pl->sk, &m, seq, &bytes, &err);
            if (rc == SL_AGAIN) {
                pl->sink_full = true;
                return SL_AGAIN;
            }
            if (rc != SL_OK) {
                sl_err_prefix(&err, "outbox message %" PRId64 ": ", m.outbox_id);
                pipeline_fail(pl, &err);
                return SL_ERR;
            }
            uint64_t pushed = sl_window_push(pl->win, m.outbox_id, (uint32_t)bytes);
            assert(pushed == seq);
            (void)pushed;
            /* Exponential moving average, weight 1/16: sizes the next reads. */
            pl->avg_msg_bytes = pl->avg_msg_bytes - pl->avg_msg_bytes / 16 + bytes / 16;
            if (pl->avg_msg_bytes == 0)
                pl->avg_msg_bytes = 1;
            pl->held_row++;
            pl->held_rows--;
        }
        PQclear(res);
        memmove(&pl->held[0], &pl->held[1], (size_t)(pl->nheld - 1) * sizeof pl->held[0]);
        pl->nheld--;
        pl->held_row = 0;
        if (pl->cfg->sink_ops->flush(pl->sk, &err) != SL_OK) {
            pipeline_fail(pl, &err);
            return SL_ERR;
        }
    }
    return SL_OK;
}

static void
pipeline_held_clear(sl_pipeline_t *pl)
{
    for (int i = 0; i < pl->nheld; i++)
        PQclear(pl->held[i]);
    pl->nheld = 0;
    pl->held_row = 0;
    pl->held_rows = 0;
}

/* ------------------------------------------------------------------------ */
/* PostgreSQL side                                                           */
/* ------------------------------------------------------------------------ */

static void
pipeline_send(sl_pipeline_t *pl, sl_pipeline_op_t op, const char *sql, int n,
              const char *const *params)
{
    sl_err_t err;
    sl_err_clear(&err);
    pl->op = op;
    if (sl_pgconn_send(pl->pc, sql, n, params, &err) != SL_OK)
        pl->op = SL_OP_NONE; /* The connection is going down; on_down follows. */
}

static void
pipeline_save(sl_pipeline_t *pl)
{
    char last[24], rno[24], dlv[24];
    snprintf(last, sizeof last, "%" PRId64, pl->ck.last_id);
    snprintf(rno, sizeof rno, "%" PRId64, pl->ck.range_no);
    snprintf(dlv, sizeof dlv, "%" PRId64, pl->delivered);
    const char *params[6] = {pl->cfg->name, pl->ck.lo, pl->ck.hi, last, rno, dlv};
    pl->ck_dirty = false;
    pl->ck_sending_delivered = pl->delivered;
    pl->ck_written_ms = sl_now_ms();
    pipeline_send(pl, SL_OP_SAVE, SL_OUTBOX_SQL_CHECKPOINT_SAVE, 6, params);
}

static uint64_t
min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/*
 * Rows asked for by the next page: a batch, or what the window has room for
 * (in messages and, at the average envelope size, in bytes) once the held
 * rows are in it. The byte side is an estimate, so a page of unusually large
 * messages can pass max_inflight_bytes by at most one page: pipeline_on_page
 * raises the average from that page before reading ahead.
 */
static int64_t
pipeline_page_limit(const sl_pipeline_t *pl)
{
    uint64_t used = window_used(pl) + pl->held_rows;
    uint64_t max = (uint64_t)pl->cfg->max_inflight;
    uint64_t room = max > used ? max - used : 0;
    uint64_t bytes_used = sl_window_bytes(pl->win) + pl->held_rows * pl->avg_msg_bytes;
    uint64_t bmax = (uint64_t)pl->cfg->max_inflight_bytes;
    uint64_t broom = bmax > bytes_used ? (bmax - bytes_used) / pl->avg_msg_bytes : 0;
    return (int64_t)min_u64((uint64_t)pl->cfg->batch_size, min_u64(room, broom));
}

/* The page size an empty window allows: reads wait until this much room is free. */
static int64_t
pipeline_page_target(const sl_pipeline_t *pl)
{
    uint64_t by_bytes = (uint64_t)pl->cfg->max_inflight_bytes / pl->avg_msg_bytes;
    uint64_t t =
        min_u64((uint64_t)pl->cfg->batch_size, min_u64((uint64_t)pl->cfg->max_inflight, by_bytes));
    return t > 0 ? (int64_t)t : 1;
}

static void
pipeline_read(sl_pipeline_t *pl)
{
    if (pl->rd.hi == NULL || !pl->rd_bounded) {
        /* The new snapshot covers every commit so far; a doorbell ringing
         * while this runs sets wake again. */
        if (pl->rd.hi == NULL)
            pl->wake = false;
        const char *params[4] = {pl->rd.lo, pl->rd.hi, pl->topics_exact, pl->topics_like};
        pipeline_send(pl, SL_OP_OPEN, SL_OUTBOX_SQL_OPEN, 4, params);
        return;
    }
    char last[24], lim[24], max[24];
    snprintf(last, sizeof last, "%" PRId64, pl->rd.last_id);
    pl->page_limit = pipeline_page_limit(pl);
    snprintf(lim, sizeof lim, "%" PRId64, pl->page_limit);
    snprintf(max, sizeof max, "%" PRId64, pl->rd_max_id);
    const char *params[7] = {pl->rd.lo,        pl->rd.hi,       last, lim,
                             pl->topics_exact, pl->topics_like, max};
    pipeline_send(pl, SL_OP_PAGE, SL_OUTBOX_SQL_READ, 7, params);
}

/*
 * When the next checkpoint write is due: new deliveries are stored within
 * checkpoint_interval_ms; a position that moved without deliveries only every
 * SL_PIPELINE_IDLE_CKPT_MS.
 */
static uint64_t
pipeline_ckpt_due(const sl_pipeline_t *pl)
{
    uint64_t wait = pl->delivered != pl->ck_saved_delivered
                        ? (uint64_t)pl->rcfg->checkpoint_interval_ms
                        : SL_PIPELINE_IDLE_CKPT_MS;
    return pl->ck_written_ms + wait;
}

static bool
pipeline_can_read(const sl_pipeline_t *pl)
{
    if (pl->state != SL_PIPELINE_RUNNING || pl->nheld == SL_PIPELINE_HELD_MAX)
        return false;
    /* Wait for room for a whole page, so reads stay large under load. */
    if (pipeline_page_limit(pl) < pipeline_page_target(pl))
        return false;
    return pl->rd.hi != NULL || pl->wake;
}

static void
pipeline_ckpt_timer_cb(uv_timer_t *t)
{
    pipeline_kick(t->data);
}

/* While draining, the checkpoint timer fires at the deadline. */
static void
pipeline_arm_deadline(sl_pipeline_t *pl)
{
    uint64_t now = sl_now_ms();
    uv_timer_start(&pl->ckpt_timer, pipeline_ckpt_timer_cb,
                   pl->deadline_ms > now ? pl->deadline_ms - now : 0, 0);
}

/* Decides what the connection does next. The one place that issues statements. */
static void
pipeline_kick(sl_pipeline_t *pl)
{
    if (pl->state == SL_PIPELINE_CLOSING || pl->state == SL_PIPELINE_STOPPED)
        return;
    /* Rows the sink could not take yet go first; they need no connection. */
    if (pl->nheld > 0 && !pl->sink_full &&
        (pl->state == SL_PIPELINE_RUNNING || pl->state == SL_PIPELINE_DRAINING)) {
        if (pipeline_send_held(pl) == SL_ERR)
            return;
    }
    if (pl->state == SL_PIPELINE_DRAINING) {
        bool drained = window_used(pl) == 0;
        bool late = sl_now_ms() >= pl->deadline_ms;
        if (!sl_pgconn_is_ready(pl->pc)) {
            if (late)
                pipeline_close(pl);
            return;
        }
        if (pl->ck_dirty && pl->loaded) {
            pipeline_save(pl);
            return;
        }
        if (drained || late) {
            if (!drained)
                sl_log_warn("pipeline.drain_timeout",
                            "pipeline=%s unacknowledged=%" PRIu64
                            " note=\"these messages will be sent again on restart\"",
                            pl->cfg->name, window_used(pl));
            pipeline_close(pl);
        }
        return;
    }
    if (pl->state != SL_PIPELINE_RUNNING || !sl_pgconn_is_ready(pl->pc))
        return;
    uint64_t now = sl_now_ms();
    uint64_t due = pipeline_ckpt_due(pl);
    if (pl->ck_dirty && now >= due) {
        pipeline_save(pl);
        return;
    }
    if (pl->armed && pl->disarm_wanted) {
        pl->disarm_wanted = false;
        pipeline_send(pl, SL_OP_DISARM, SL_OUTBOX_SQL_DISARM, 0, NULL);
        return;
    }
    if (pipeline_can_read(pl)) {
        pipeline_read(pl);
        return;
    }
    /* Nothing new was found: wait for the doorbell. */
    if (pl->cfg->doorbell && !pl->armed && !pl->wake && pl->rd.hi == NULL && pl->nheld == 0 &&
        now >= pl->arm_after_ms && pl->idle_since_ms != 0 &&
        now - pl->idle_since_ms >= SL_PIPELINE_ARM_AFTER_MS) {
        pipeline_send(pl, SL_OP_ARM, SL_OUTBOX_SQL_ARM, 0, NULL);
        return;
    }
    if (now >= pl->next_prune_ms) {
        char keep[24], max[24];
        snprintf(keep, sizeof keep, "%" PRId64, pl->rcfg->outbox_retention_s);
        snprintf(max, sizeof max, "%d", SL_OUTBOX_PRUNE_BATCH);
        const char *params[2] = {keep, max};
        pl->next_prune_ms = now + SL_PIPELINE_PRUNE_MS;
        pipeline_send(pl, SL_OP_PRUNE, SL_OUTBOX_SQL_PRUNE, 2, params);
        return;
    }
    if (pl->ck_dirty && !uv_is_active((uv_handle_t *)&pl->ckpt_timer))
        uv_timer_start(&pl->ckpt_timer, pipeline_ckpt_timer_cb, due - now, 0);
}

/*
 * Marks the open range as completely read. Its end is the sequence number
 * after its last message, counting rows still held for a full sink.
 */
static int
pipeline_range_done(sl_pipeline_t *pl, sl_err_t *err)
{
    bool empty = sl_window_range_close(pl->win, pl->held_rows);
    if (sl_pos_set(&pl->rd, pl->rd.hi, NULL, 0, pl->rd.range_no + 1) != SL_OK)
        return sl_err_nomem(err, "the read position");
    pl->rd_bounded = false;
    /* A range that had rows may have more behind it: look again at once. */
    pl->wake = pl->wake || !empty;
    pipeline_advance(pl);
    return SL_OK;
}

static int
pipeline_on_page(sl_pipeline_t *pl, PGresult *res, sl_err_t *err)
{
    int nrows = PQntuples(res);
    bool complete = nrows < pl->page_limit;
    /* Size the read-ahead by this page at once when its messages are larger
     * than the running average (smaller ones lower it gradually as they are
     * sent), so a page of large messages is not followed by another. */
    if (nrows > 0) {
        uint64_t page = 0;
        for (int i = 0; i < nrows; i++)
            page += (uint64_t)PQgetlength(res, i, 4) + (uint64_t)PQgetlength(res, i, 5) +
                    (uint64_t)PQgetlength(res, i, 1) + (uint64_t)PQgetlength(res, i, 2) +
                    SL_PIPELINE_ENVELOPE_OVERHEAD;
        if (page / (uint64_t)nrows > pl->avg_msg_bytes)
            pl->avg_msg_bytes = page / (uint64_t)nrows;
    }
    if (nrows > 0)
        pl->rd.last_id = strtoll(PQgetvalue(res, nrows - 1, 0), NULL, 10);
    complete = complete || pl->rd.last_id >= pl->rd_max_id;
    assert(pl->nheld < SL_PIPELINE_HELD_MAX);
    pl->held[pl->nheld++] = res;
    pl->held_rows += (uint64_t)nrows;
    if (complete)
        return pipeline_range_done(pl, err);
    /* Read ahead: PostgreSQL prepares the next page while the sink takes this
     * one, unless a checkpoint write is due (pipeline_kick does that first;
     * reading ahead here would starve it during a long drain). */
    if (sl_pgconn_is_ready(pl->pc) && pipeline_can_read(pl) &&
        !(pl->ck_dirty && sl_now_ms() >= pipeline_ckpt_due(pl)))
        pipeline_read(pl);
    return SL_OK;
}

/* A read found nothing new: start (or continue) the idle period. */
static void
pipeline_idle(sl_pipeline_t *pl)
{
    if (pl->idle_since_ms != 0 || pl->armed || !pl->cfg->doorbell)
        return;
    pl->idle_since_ms = sl_now_ms();
    pipeline_poll_schedule(pl); /* look again every SL_PIPELINE_IDLE_POLL_MS */
}

static int
pipeline_on_open(sl_pipeline_t *pl, PGresult *res, sl_err_t *err)
{
    const char *hi = PQgetvalue(res, 0, 0);
    bool empty = PQgetisnull(res, 0, 1);
    int64_t min_id = empty ? 0 : strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    int64_t max_id = empty ? 0 : strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    if (pl->rd.hi == NULL) {
        if (strcmp(hi, pl->rd.lo) == 0) {
            pipeline_idle(pl);
            return SL_OK; /* Nothing committed since the last range. */
        }
        if (sl_window_range_open(pl->win, pl->rd.lo, hi, pl->rd.range_no, err) != SL_OK)
            return SL_ENOMEM;
        if (sl_pos_set(&pl->rd, pl->rd.lo, hi, 0, pl->rd.range_no) != SL_OK)
            return sl_err_nomem(err, "the read position");
    }
    /* Otherwise this resumes a range loaded from the checkpoint. */
    if (empty || pl->rd.last_id >= max_id) {
        pipeline_idle(pl);
        return pipeline_range_done(pl, err);
    }
    /* Busy: publishers need not ring while it lasts. */
    pl->idle_since_ms = 0;
    pl->disarm_wanted = pl->armed;
    pl->rd_bounded = true;
    pl->rd_max_id = max_id;
    if (pl->rd.last_id < min_id - 1)
        pl->rd.last_id = min_id - 1;
    return SL_OK;
}

static int
pipeline_on_load(sl_pipeline_t *pl, PGresult *res, sl_err_t *err)
{
    if (PQntuples(res) != 1)
        return sl_err_set(err, SL_ERR, "checkpoint row of pipeline \"%s\" not found",
                          pl->cfg->name);
    const char *lo = PQgetvalue(res, 0, 0);
    const char *hi = PQgetisnull(res, 0, 1) ? NULL : PQgetvalue(res, 0, 1);
    int64_t last_id = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
    int64_t range_no = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    pl->delivered = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
    pl->stats_delivered = pl->delivered;
    pl->ck_saved_delivered = pl->delivered;
    free(pl->instance);
    free(pl->db);
    pl->instance = strdup(PQgetvalue(res, 0, 5));
    pl->db = strdup(PQgetvalue(res, 0, 6));
    if (pl->instance == NULL || pl->db == NULL)
        return sl_err_nomem(err, "the pipeline identity");
    if (sl_pos_set(&pl->ck, lo, hi, last_id, range_no) != SL_OK ||
        sl_pos_set(&pl->rd, lo, hi, last_id, range_no) != SL_OK)
        return sl_err_nomem(err, "the checkpoint");
    if (hi != NULL && sl_window_range_open(pl->win, lo, hi, range_no, err) != SL_OK)
        return SL_ENOMEM;
    pl->loaded = true;
    pl->wake = true;
    sl_log_info("pipeline.resume",
                "pipeline=%s delivered=%" PRId64 " last_id=%" PRId64 " in_range=%s", pl->cfg->name,
                pl->delivered, last_id, hi ? "true" : "false");
    return SL_OK;
}

static void
pipeline_on_result(sl_pgconn_t *pc, PGresult *res, void *ctx)
{
    sl_pipeline_t *pl = ctx;
    sl_pipeline_op_t op = pl->op;
    pl->op = SL_OP_NONE;
    sl_err_t err;
    sl_err_clear(&err);
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        sl_pg_result_err(res, NULL, &err);
        PQclear(res);
        if (op == SL_OP_PRUNE && err.sqlstate[0] != '\0' && strncmp(err.sqlstate, "08", 2) != 0 &&
            strncmp(err.sqlstate, "57", 2) != 0) {
            /* Retention is housekeeping: its failure must not stop delivery. */
            char q[SL_ERR_MSG_MAX + 16];
            sl_log_warn("outbox.prune_failed",
                        "pipeline=%s err=%s note=\"retention disabled "
                        "until restart\"",
                        pl->cfg->name, sl_log_quote(q, sizeof q, err.msg));
            pl->next_prune_ms = UINT64_MAX;
            pipeline_kick(pl);
            return;
        }
        if (strcmp(err.sqlstate, "42P01") == 0 || strcmp(err.sqlstate, "3F000") == 0) {
            sl_err_prefix(&err, "the sluice catalog is missing: ");
            sl_err_hint(&err, "run `sluice init --db ...` against this database first");
            pipeline_fail(pl, &err);
            return;
        }
        if (strcmp(err.sqlstate, "42501") == 0) {
            sl_err_prefix(&err, "permission denied reading the outbox: ");
            sl_err_hint(&err,
                        "grant the relay's role access to schema sluice (docs/operations.md)");
            pipeline_fail(pl, &err);
            return;
        }
        /* Anything else may be transient: reconnect and carry on from memory. */
        sl_err_prefix(&err, "pipeline %s: statement failed: ", pl->cfg->name);
        if (op == SL_OP_SAVE)
            pl->ck_dirty = true;
        sl_pgconn_reset(pc, &err);
        return;
    }
    int rc = SL_OK;
    switch (op) {
    case SL_OP_SESSION: {
        const char *p[1] = {pl->cfg->name};
        PQclear(res);
        pipeline_send(pl, SL_OP_LOCK, SL_OUTBOX_SQL_PIPELINE_LOCK, 1, p);
        return;
    }
    case SL_OP_LOCK: {
        bool got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        if (!got) {
            sl_log_warn("pipeline.locked_elsewhere",
                        "pipeline=%s retry_ms=%" PRId64
                        " note=\"another relay runs this pipeline\"",
                        pl->cfg->name, pl->cfg->poll_interval_ms);
            pl->lock_wait = true; /* The poll timer retries. */
            return;
        }
        if (pl->loaded) {
            /* Reconnected: the in-memory position is ahead of the stored one. */
            pipeline_set_state(pl, pl->deadline_ms ? SL_PIPELINE_DRAINING : SL_PIPELINE_RUNNING);
            pl->wake = true;
            pl->ck_dirty = true;
            pl->ck_written_ms = 0;
            break;
        }
        const char *p[2] = {pl->cfg->name, pl->cfg->start};
        pipeline_send(pl, SL_OP_LOAD, SL_OUTBOX_SQL_CHECKPOINT_LOAD, 2, p);
        return;
    }
    case SL_OP_LOAD:
        rc = pipeline_on_load(pl, res, &err);
        PQclear(res);
        if (rc == SL_OK)
            pipeline_set_state(pl, pl->deadline_ms ? SL_PIPELINE_DRAINING : SL_PIPELINE_RUNNING);
        break;
    case SL_OP_OPEN:
        rc = pipeline_on_open(pl, res, &err);
        PQclear(res);
        break;
    case SL_OP_PAGE:
        rc = pipeline_on_page(pl, res, &err); /* takes res */
        break;
    case SL_OP_SAVE: {
        bool moved = strcmp(PQcmdTuples(res), "1") == 0;
        PQclear(res);
        if (moved)
            pl->ck_saved_delivered = pl->ck_sending_delivered;
        if (!moved) {
            pl->ck_dirty = true; /* Not stored: pipeline.closed must say so. */
            sl_err_set(&err, SL_ERR,
                       "the stored checkpoint of pipeline \"%s\" is ahead of this "
                       "relay or was deleted",
                       pl->cfg->name);
            sl_err_hint(&err, "two relays may be running the same pipeline; run each pipeline "
                              "in one relay only");
            rc = SL_ERR;
        }
        break;
    }
    case SL_OP_PRUNE: {
        long long n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        if (n > 0)
            sl_log_info("outbox.pruned", "pipeline=%s rows=%lld", pl->cfg->name, n);
        if (n >= SL_OUTBOX_PRUNE_BATCH)
            pl->next_prune_ms = sl_now_ms() + SL_PIPELINE_PRUNE_BUSY_MS;
        break;
    }
    case SL_OP_ARM: {
        bool got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        if (!got) {
            /* A publisher held it for an instant. Publishers do not ring
             * while it is unarmed, so look again soon rather than at the
             * next poll_interval_ms. */
            pl->arm_after_ms = sl_now_ms() + SL_PIPELINE_IDLE_FIRST_MS;
            uv_timer_start(&pl->poll_timer, pipeline_poll_timer_cb, SL_PIPELINE_IDLE_FIRST_MS, 0);
            break;
        }
        pl->armed = true;
        /* Look once more now (a commit may have raced the arming), then at
         * growing intervals. */
        pl->wake = true;
        pl->idle_delay_ms = SL_PIPELINE_IDLE_FIRST_MS;
        pipeline_poll_schedule(pl);
        break;
    }
    case SL_OP_DISARM:
        PQclear(res);
        pl->armed = false;
        pipeline_poll_schedule(pl);
        break;
    case SL_OP_NONE: PQclear(res); break;
    }
    if (rc != SL_OK) {
        pipeline_fail(pl, &err);
        return;
    }
    pipeline_kick(pl);
}

static void
pipeline_on_up(sl_pgconn_t *pc, void *ctx)
{
    sl_pipeline_t *pl = ctx;
    if (pl->state == SL_PIPELINE_CONNECTING || pl->state == SL_PIPELINE_RUNNING)
        pipeline_set_state(pl, SL_PIPELINE_SETUP);
    const char *session = pl->cfg->doorbell
                              ? "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; "
                                "SET statement_timeout = 0; LISTEN " SL_OUTBOX_DOORBELL
                              : "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; "
                                "SET statement_timeout = 0";
    pipeline_send(pl, SL_OP_SESSION, session, 0, NULL);
}

static void
pipeline_on_notify(sl_pgconn_t *pc, const char *channel, void *ctx)
{
    sl_pipeline_t *pl = ctx;
    pl->wake = true;
    pipeline_kick(pl);
}

static void
pipeline_on_down(sl_pgconn_t *pc, const sl_err_t *err, void *ctx)
{
    sl_pipeline_t *pl = ctx;
    if (pl->op == SL_OP_SAVE)
        pl->ck_dirty = true;
    pl->op = SL_OP_NONE;
    pl->lock_wait = false; /* on_up asks again after the reconnect. */
    pl->armed = false;     /* Session locks end with the session. */
    pl->disarm_wanted = false;
    if (pl->state == SL_PIPELINE_RUNNING || pl->state == SL_PIPELINE_SETUP)
        pipeline_set_state(pl, SL_PIPELINE_CONNECTING);
}

/* ------------------------------------------------------------------------ */
/* Timers, lifecycle                                                         */
/* ------------------------------------------------------------------------ */

/*
 * Grows the armed idle delay towards poll_interval_ms and stops there. It must
 * not keep growing: multiplied on every re-check, it wrapped to 0 after 32 of
 * them (about 32 x poll_interval_ms of idling), and a 0 ms timer restarted
 * from its own callback keeps libuv (1.44) in its timer phase for good: no
 * I/O, no signals, one core busy.
 */
static void
pipeline_idle_delay_grow(sl_pipeline_t *pl)
{
    uint64_t max = (uint64_t)pl->cfg->poll_interval_ms;
    if (pl->idle_delay_ms >= max / SL_PIPELINE_IDLE_GROWTH)
        pl->idle_delay_ms = max;
    else
        pl->idle_delay_ms *= SL_PIPELINE_IDLE_GROWTH;
}

/* (Re)starts the poll timer: poll_interval_ms, or the growing idle delay
 * while the doorbell is armed. */
static void
pipeline_poll_schedule(sl_pipeline_t *pl)
{
    uint64_t delay = (uint64_t)pl->cfg->poll_interval_ms;
    if (pl->armed && pl->idle_delay_ms < delay)
        delay = pl->idle_delay_ms;
    else if (!pl->armed && pl->idle_since_ms != 0 && SL_PIPELINE_IDLE_POLL_MS < delay)
        delay = SL_PIPELINE_IDLE_POLL_MS; /* idle, not yet armed */
    assert(delay > 0); /* A 0 ms timer restarted here never yields (see above). */
    uv_timer_start(&pl->poll_timer, pipeline_poll_timer_cb, delay, 0);
}

static void
pipeline_poll_timer_cb(uv_timer_t *t)
{
    sl_pipeline_t *pl = t->data;
    uint64_t now = sl_now_ms();
    if (pl->armed)
        pipeline_idle_delay_grow(pl);
    pipeline_poll_schedule(pl);
    if (now - pl->stats_ms >= SL_PIPELINE_STATS_MS) {
        int64_t n = pl->delivered - pl->stats_delivered;
        if (n > 0 || window_used(pl) > 0)
            sl_log_info("pipeline.stats",
                        "pipeline=%s delivered=%" PRId64 " delivered_total=%" PRId64
                        " rate_per_s=%" PRId64 " inflight=%" PRIu64 " inflight_bytes=%" PRIu64,
                        pl->cfg->name, n, pl->delivered, n * 1000 / (int64_t)(now - pl->stats_ms),
                        window_used(pl), sl_window_bytes(pl->win));
        pl->stats_delivered = pl->delivered;
        pl->stats_ms = now;
    }
    pl->wake = true;
    if (pl->lock_wait && sl_pgconn_is_ready(pl->pc)) {
        pl->lock_wait = false;
        pipeline_on_up(pl->pc, pl);
        return;
    }
    pipeline_kick(pl);
}

static void
pipeline_timer_closed(uv_handle_t *h)
{
    sl_pipeline_t *pl = h->data;
    if (--pl->open_handles > 0)
        return;
    pipeline_set_state(pl, SL_PIPELINE_STOPPED);
    if (pl->on_stopped != NULL)
        pl->on_stopped(pl, pl->on_stopped_arg);
}

static void
pipeline_pg_closed(void *arg)
{
    sl_pipeline_t *pl = arg;
    pl->pc = NULL;
    uv_close((uv_handle_t *)&pl->poll_timer, pipeline_timer_closed);
    uv_close((uv_handle_t *)&pl->ckpt_timer, pipeline_timer_closed);
}

static void
pipeline_sink_closed(void *arg)
{
    sl_pipeline_t *pl = arg;
    pl->sk = NULL;
    sl_pgconn_close(pl->pc, pipeline_pg_closed, pl);
}

/* Tears down sink, connection and timers; on_stopped runs at the end. */
static void
pipeline_close(sl_pipeline_t *pl)
{
    if (pl->state == SL_PIPELINE_CLOSING || pl->state == SL_PIPELINE_STOPPED)
        return;
    pipeline_set_state(pl, SL_PIPELINE_CLOSING);
    uv_timer_stop(&pl->poll_timer);
    uv_timer_stop(&pl->ckpt_timer);
    sl_log_info("pipeline.closed",
                "pipeline=%s delivered_total=%" PRId64 " unacknowledged=%" PRIu64
                " checkpoint_saved=%s",
                pl->cfg->name, pl->delivered, window_used(pl), pl->ck_dirty ? "false" : "true");
    if (pl->sk != NULL)
        pl->cfg->sink_ops->close(pl->sk, pipeline_sink_closed, pl);
    else
        pipeline_sink_closed(pl);
}

static void
pipeline_fail(sl_pipeline_t *pl, const sl_err_t *err)
{
    if (pl->failed || pl->state == SL_PIPELINE_CLOSING || pl->state == SL_PIPELINE_STOPPED)
        return;
    pl->failed = true;
    char q[SL_ERR_MSG_MAX + 16], h[SL_ERR_HINT_MAX + 16];
    sl_log_error("pipeline.failed", "pipeline=%s err=%s hint=%s", pl->cfg->name,
                 sl_log_quote(q, sizeof q, err->msg), sl_log_quote(h, sizeof h, err->hint));
    /* Keep what was acknowledged: drain briefly so the checkpoint gets written. */
    pipeline_held_clear(pl);
    pl->deadline_ms = sl_now_ms() + SL_PIPELINE_FAIL_DRAIN_MS;
    pipeline_set_state(pl, SL_PIPELINE_DRAINING);
    pipeline_arm_deadline(pl);
    pipeline_kick(pl);
}

int
sl_pipeline_new(uv_loop_t *loop, const sl_relay_cfg_t *rcfg, const sl_pipeline_cfg_t *cfg,
                void (*on_stopped)(sl_pipeline_t *pl, void *arg), void *arg, sl_pipeline_t **out,
                sl_err_t *err)
{
    sl_pipeline_t *pl = calloc(1, sizeof *pl);
    if (pl == NULL)
        return sl_err_nomem(err, "a pipeline");
    pl->loop = loop;
    pl->cfg = cfg;
    pl->rcfg = rcfg;
    pl->on_stopped = on_stopped;
    pl->on_stopped_arg = arg;
    pl->state = SL_PIPELINE_CONNECTING;
    pl->avg_msg_bytes = SL_PIPELINE_FIRST_MSG_BYTES;
    pl->next_prune_ms =
        rcfg->outbox_retention_s < 0 ? UINT64_MAX : sl_now_ms() + SL_PIPELINE_PRUNE_MS;
    int rc = sl_window_new((size_t)cfg->max_inflight, &pl->win, err);
    if (rc != SL_OK) {
        free(pl);
        return rc;
    }
    rc = sl_outbox_topic_filter((const char *const *)cfg->topics.v, cfg->topics.n,
                                &pl->topics_exact, &pl->topics_like, err);
    if (rc != SL_OK)
        goto fail_slots;

    sl_sink_env_t env = {
        .loop = loop,
        .pipeline = cfg->name,
        .database = cfg->database != NULL ? cfg->database : rcfg->database,
        .topics = (const char *const *)cfg->topics.v,
        .ntopics = cfg->topics.n,
        .on_ack = pipeline_on_ack,
        .ctx = pl,
        .max_inflight = (size_t)cfg->max_inflight,
        .max_inflight_bytes = (size_t)cfg->max_inflight_bytes,
    };
    rc = cfg->sink_ops->create(cfg->sink_conf, &env, &pl->sk, err);
    if (rc != SL_OK) {
        sl_err_prefix(err, "sink %s: ", cfg->sink_ops->type);
        goto fail_filter;
    }
    sl_pgconn_cbs_t cbs = {
        .on_up = pipeline_on_up,
        .on_result = pipeline_on_result,
        .on_notify = pipeline_on_notify,
        .on_down = pipeline_on_down,
    };
    char name[160];
    snprintf(name, sizeof name, "pipeline:%s", cfg->name);
    rc = sl_pgconn_new(loop, cfg->database ? cfg->database : rcfg->database, name, &cbs, pl,
                       &pl->pc, err);
    if (rc != SL_OK)
        goto fail_sink;
    uv_timer_init(loop, &pl->poll_timer);
    uv_timer_init(loop, &pl->ckpt_timer);
    pl->poll_timer.data = pl;
    pl->ckpt_timer.data = pl;
    pl->open_handles = 2;
    pl->stats_ms = sl_now_ms();
    pipeline_poll_schedule(pl);
    sl_log_info("pipeline.start",
                "pipeline=%s sink=%s batch_size=%" PRId64 " max_inflight=%" PRId64
                " max_inflight_bytes=%" PRId64 " topics=%zu",
                cfg->name, cfg->sink_ops->type, cfg->batch_size, cfg->max_inflight,
                cfg->max_inflight_bytes, cfg->topics.n);
    sl_pgconn_start(pl->pc);
    *out = pl;
    return SL_OK;

fail_sink:
    cfg->sink_ops->close(pl->sk, NULL, NULL);
fail_filter:
    free(pl->topics_exact);
    free(pl->topics_like);
fail_slots:
    sl_window_free(pl->win);
    free(pl);
    return rc;
}

void
sl_pipeline_stop(sl_pipeline_t *pl, uint64_t deadline_ms)
{
    if (pl->state == SL_PIPELINE_CLOSING || pl->state == SL_PIPELINE_STOPPED)
        return;
    if (pl->state == SL_PIPELINE_DRAINING) {
        /* A second stop shortens the drain (a second signal: stop now). */
        if (deadline_ms < pl->deadline_ms) {
            pl->deadline_ms = deadline_ms;
            pipeline_arm_deadline(pl);
            pipeline_kick(pl);
        }
        return;
    }
    pl->deadline_ms = deadline_ms;
    if (pl->state == SL_PIPELINE_RUNNING) {
        pipeline_set_state(pl, SL_PIPELINE_DRAINING);
        pipeline_arm_deadline(pl);
        pipeline_kick(pl);
        return;
    }
    /* Not running yet: nothing of ours is in flight. */
    pipeline_close(pl);
}

bool
sl_pipeline_is_failed(const sl_pipeline_t *pl)
{
    return pl->failed;
}

const char *
sl_pipeline_name(const sl_pipeline_t *pl)
{
    return pl->cfg->name;
}

void
sl_pipeline_free(sl_pipeline_t *pl)
{
    if (pl == NULL)
        return;
    assert(pl->state == SL_PIPELINE_STOPPED);
    pipeline_held_clear(pl);
    sl_window_free(pl->win);
    sl_pos_clear(&pl->rd);
    sl_pos_clear(&pl->ck);
    free(pl->instance);
    free(pl->db);
    free(pl->topics_exact);
    free(pl->topics_like);
    free(pl);
}
