/*
 * sinks/kafka_pairs.h - delivery state of messages the Kafka sink sends as two
 * records (a stream-table delete and the tombstone after it).
 *
 * Such a message is acknowledged once both delivery reports are in, in
 * whatever order they arrive, and reports at most one error. The table is a
 * ring indexed by the pipeline's sequence number (the token): the pipeline's
 * window keeps the tokens in flight within max_inflight of each other, so a
 * ring of at least twice that gives each its own slot. Pure bookkeeping, no
 * I/O (tests/unit/kafka_pairs_test.c).
 */
#ifndef SL_KAFKA_PAIRS_H
#define SL_KAFKA_PAIRS_H

#include "core/core.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct sl_kpairs sl_kpairs_t;

/* What one report means for its message. */
typedef enum sl_kpair_verdict {
    SL_KPAIR_WAIT, /* nothing to do now (the other report is to come, or an error was reported) */
    SL_KPAIR_ACK,  /* the last report, and both records were delivered: acknowledge */
    SL_KPAIR_FAIL, /* the message's first error: report it */
} sl_kpair_verdict_t;

/* A table for a pipeline window of max_inflight messages. */
int sl_kpairs_new(size_t max_inflight, sl_kpairs_t **out, sl_err_t *err);
void sl_kpairs_free(sl_kpairs_t *t);

/* Records that message token has two records in flight. False when its
 * slot holds another message still in flight (the window was exceeded). */
bool sl_kpairs_start(sl_kpairs_t *t, uint64_t token);

/* Neither record could be queued: frees the slot. */
void sl_kpairs_cancel(sl_kpairs_t *t, uint64_t token);

/* The second record could not be queued after the first was: the first's
 * report must neither acknowledge nor fail the message. */
void sl_kpairs_abandon(sl_kpairs_t *t, uint64_t token);

/* One delivery report (ok: delivered) of a record of message token. A
 * token not in flight gets the verdict of a lone record. */
sl_kpair_verdict_t sl_kpairs_report(sl_kpairs_t *t, uint64_t token, bool ok);

#endif /* SL_KAFKA_PAIRS_H */
