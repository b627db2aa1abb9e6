/*
 * relay/window.c - the in-flight window and the checkpoint it implies.
 *
 * This is the bookkeeping behind DESIGN.md invariant 3 ("ack before
 * checkpoint"), kept free of I/O so it can be tested on its own
 * (tests/unit/window_test.c).
 *
 * Every message handed to a sink gets a sequence number; the window is a ring
 * of `cap` slots indexed by it, allocated once. Acks arrive in any order;
 * `tail` moves over the acknowledged prefix only.
 *
 * Messages come from snapshot ranges (outbox/outbox.h). The ranges that still
 * have messages in the window are queued, oldest first, each with the
 * sequence numbers it covers. The durable position follows from the
 * acknowledged prefix:
 *
 *   - a complete range whose messages are all acknowledged is done: the
 *     position becomes (lo := its hi, no range, last_id 0);
 *   - otherwise, inside the oldest range: (its lo, its hi, the outbox id of
 *     the last acknowledged message).
 *
 * Ids inside a range increase with the sequence number (pages are read in id
 * order), so "every message of the range up to this id" is exactly the
 * acknowledged prefix.
 *
 * A range that turns out to hold no message is folded into the range before
 * it: both together select the same rows as the earlier one alone, so the
 * position may jump straight to the later upper snapshot once the earlier
 * range's messages are acknowledged. This keeps the queue no longer than the
 * number of non-empty ranges in the window.
 */
#include "relay/relay_int.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* One in-flight message. */
typedef struct sl_slot {
    int64_t outbox_id;
    uint32_t bytes;
    bool acked;
} sl_slot_t;

/* A range with messages (or the read position) still in the window. */
typedef struct sl_range {
    char *lo;             /* owned */
    char *hi;             /* owned */
    int64_t range_no;     /* position number while inside this range */
    int64_t end_range_no; /* position number once this range is done */
    uint64_t start_seq;   /* first message of the range */
    uint64_t end_seq;     /* one past its last message, once complete */
    bool complete;        /* every page read */
} sl_range_t;

struct sl_window {
    sl_slot_t *slots; /* owned ring of cap */
    size_t cap;
    uint64_t head;      /* next sequence number */
    uint64_t tail;      /* first unacknowledged sequence number */
    int64_t tail_id;    /* outbox id of message tail - 1 (its slot may be reused) */
    uint64_t bytes;     /* bytes of unacknowledged messages */
    sl_range_t *ranges; /* owned queue, oldest first */
    size_t nranges, ranges_cap;
};

void
sl_pos_clear(sl_pos_t *p)
{
    free(p->lo);
    free(p->hi);
    memset(p, 0, sizeof *p);
}

int
sl_pos_set(sl_pos_t *p, const char *lo, const char *hi, int64_t last_id, int64_t range_no)
{
    char *l = strdup(lo);
    char *h = hi != NULL ? strdup(hi) : NULL;
    if (l == NULL || (hi != NULL && h == NULL)) {
        free(l);
        free(h);
        return SL_ENOMEM;
    }
    free(p->lo);
    free(p->hi);
    p->lo = l;
    p->hi = h;
    p->last_id = last_id;
    p->range_no = range_no;
    return SL_OK;
}

int
sl_window_new(size_t cap, sl_window_t **out, sl_err_t *err)
{
    assert(cap > 0);
    sl_window_t *w = calloc(1, sizeof *w);
    if (w == NULL)
        return sl_err_nomem(err, "the in-flight window");
    w->slots = calloc(cap, sizeof *w->slots);
    if (w->slots == NULL) {
        free(w);
        return sl_err_nomem(err, "the in-flight window");
    }
    w->cap = cap;
    *out = w;
    return SL_OK;
}

static void
window_ranges_pop(sl_window_t *w)
{
    assert(w->nranges > 0);
    free(w->ranges[0].lo);
    free(w->ranges[0].hi);
    memmove(&w->ranges[0], &w->ranges[1], (w->nranges - 1) * sizeof w->ranges[0]);
    w->nranges--;
}

void
sl_window_reset(sl_window_t *w)
{
    while (w->nranges > 0)
        window_ranges_pop(w);
    for (size_t i = 0; i < w->cap; i++)
        w->slots[i].acked = false;
    w->tail = w->head;
    w->bytes = 0;
}

void
sl_window_free(sl_window_t *w)
{
    if (w == NULL)
        return;
    sl_window_reset(w);
    free(w->ranges);
    free(w->slots);
    free(w);
}

size_t
sl_window_used(const sl_window_t *w)
{
    return (size_t)(w->head - w->tail);
}

uint64_t
sl_window_bytes(const sl_window_t *w)
{
    return w->bytes;
}

int
sl_window_range_open(sl_window_t *w, const char *lo, const char *hi, int64_t range_no,
                     sl_err_t *err)
{
    assert(w->nranges == 0 || w->ranges[w->nranges - 1].complete);
    if (w->nranges == w->ranges_cap) {
        size_t cap = w->ranges_cap ? w->ranges_cap * 2 : 8;
        sl_range_t *r = realloc(w->ranges, cap * sizeof *r);
        if (r == NULL)
            return sl_err_nomem(err, "the range queue");
        w->ranges = r;
        w->ranges_cap = cap;
    }
    sl_range_t *r = &w->ranges[w->nranges];
    memset(r, 0, sizeof *r);
    r->lo = strdup(lo);
    r->hi = strdup(hi);
    if (r->lo == NULL || r->hi == NULL) {
        free(r->lo);
        free(r->hi);
        return sl_err_nomem(err, "a range");
    }
    r->range_no = range_no;
    r->end_range_no = range_no + 1;
    r->start_seq = w->head;
    w->nranges++;
    return SL_OK;
}

bool
sl_window_range_close(sl_window_t *w, uint64_t pending)
{
    assert(w->nranges > 0 && !w->ranges[w->nranges - 1].complete);
    sl_range_t *r = &w->ranges[w->nranges - 1];
    r->complete = true;
    r->end_seq = w->head + pending;
    bool empty = r->end_seq == r->start_seq;
    if (empty && w->nranges >= 2) {
        /* Nothing matched: fold into the previous range (file header). */
        sl_range_t *prev = &w->ranges[w->nranges - 2];
        free(prev->hi);
        prev->hi = r->hi;
        prev->end_range_no = r->end_range_no;
        free(r->lo);
        w->nranges--;
    }
    return empty;
}

uint64_t
sl_window_push(sl_window_t *w, int64_t outbox_id, uint32_t bytes)
{
    assert(w->head - w->tail < w->cap);
    assert(w->nranges > 0);
    uint64_t seq = w->head++;
    sl_slot_t *s = &w->slots[seq % w->cap];
    s->outbox_id = outbox_id;
    s->bytes = bytes;
    s->acked = false;
    w->bytes += bytes;
    return seq;
}

uint64_t
sl_window_next(const sl_window_t *w)
{
    return w->head;
}

int64_t
sl_window_outbox_id(const sl_window_t *w, uint64_t seq)
{
    assert(seq >= w->tail && seq < w->head);
    return w->slots[seq % w->cap].outbox_id;
}

bool
sl_window_has(const sl_window_t *w, uint64_t seq)
{
    return seq >= w->tail && seq < w->head;
}

uint64_t
sl_window_ack(sl_window_t *w, uint64_t seq)
{
    if (!sl_window_has(w, seq))
        return 0; /* From before a reset: nothing refers to it any more. */
    w->slots[seq % w->cap].acked = true;
    uint64_t n = 0;
    while (w->tail < w->head && w->slots[w->tail % w->cap].acked) {
        sl_slot_t *t = &w->slots[w->tail % w->cap];
        w->bytes -= t->bytes;
        t->acked = false;
        w->tail_id = t->outbox_id;
        w->tail++;
        n++;
    }
    return n;
}

int
sl_window_position(sl_window_t *w, sl_pos_t *ck)
{
    int changed = 0;
    while (w->nranges > 0) {
        sl_range_t *r = &w->ranges[0];
        if (r->complete && r->end_seq <= w->tail) {
            if (sl_pos_set(ck, r->hi, NULL, 0, r->end_range_no) != SL_OK)
                return SL_ENOMEM; /* ck keeps the older, still true, position. */
            changed = 1;
            window_ranges_pop(w);
            continue;
        }
        if (w->tail > r->start_seq &&
            (ck->hi == NULL || ck->last_id != w->tail_id || ck->range_no != r->range_no)) {
            if (sl_pos_set(ck, r->lo, r->hi, w->tail_id, r->range_no) != SL_OK)
                return SL_ENOMEM;
            changed = 1;
        }
        break;
    }
    return changed;
}
