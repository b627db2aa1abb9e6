/*
 * sinks/kafka_pairs.c - see kafka_pairs.h.
 */
#include "sinks/kafka_pairs.h"

#include <stdlib.h>

typedef struct kpair {
    uint64_t token;
    uint8_t parts; /* reports still to come; 0: the slot is free */
    bool failed;   /* an error was reported (or the message abandoned) */
} kpair_t;

struct sl_kpairs {
    kpair_t *v;
    size_t n; /* a power of two */
};

int
sl_kpairs_new(size_t max_inflight, sl_kpairs_t **out, sl_err_t *err)
{
    sl_kpairs_t *t = calloc(1, sizeof *t);
    if (t == NULL)
        return sl_err_nomem(err, "the Kafka sink's tombstone table");
    t->n = 64;
    while (t->n < 2 * max_inflight)
        t->n *= 2;
    t->v = calloc(t->n, sizeof *t->v);
    if (t->v == NULL) {
        free(t);
        return sl_err_nomem(err, "the Kafka sink's tombstone table");
    }
    *out = t;
    return SL_OK;
}

void
sl_kpairs_free(sl_kpairs_t *t)
{
    if (t == NULL)
        return;
    free(t->v);
    free(t);
}

static kpair_t *
slot(sl_kpairs_t *t, uint64_t token)
{
    return &t->v[token & (t->n - 1)];
}

bool
sl_kpairs_start(sl_kpairs_t *t, uint64_t token)
{
    kpair_t *p = slot(t, token);
    if (p->parts > 0)
        return false;
    *p = (kpair_t){.token = token, .parts = 2};
    return true;
}

void
sl_kpairs_cancel(sl_kpairs_t *t, uint64_t token)
{
    kpair_t *p = slot(t, token);
    if (p->token == token)
        p->parts = 0;
}

void
sl_kpairs_abandon(sl_kpairs_t *t, uint64_t token)
{
    kpair_t *p = slot(t, token);
    if (p->parts > 0 && p->token == token) {
        p->parts = 1;
        p->failed = true;
    }
}

sl_kpair_verdict_t
sl_kpairs_report(sl_kpairs_t *t, uint64_t token, bool ok)
{
    kpair_t *p = slot(t, token);
    if (p->parts == 0 || p->token != token)
        return ok ? SL_KPAIR_ACK : SL_KPAIR_FAIL;
    p->parts--;
    if (!ok) {
        bool first = !p->failed;
        p->failed = true;
        return first ? SL_KPAIR_FAIL : SL_KPAIR_WAIT;
    }
    return p->parts == 0 && !p->failed ? SL_KPAIR_ACK : SL_KPAIR_WAIT;
}
