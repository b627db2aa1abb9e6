/*
 * outbox/outbox.h - the transactional outbox: its catalog, and the SQL of its
 * commit-order-safe read path.
 *
 * How reading works (DESIGN.md invariant 2, "no skipped rows"): every outbox
 * row carries the xid8 of the transaction that wrote it. A reader remembers a
 * snapshot `lo` such that every row visible in `lo` was delivered. To move on
 * it takes a new snapshot `hi` (pg_current_snapshot()) and reads exactly the
 * rows visible in `hi` but not in `lo`, ordered by id, in pages. A transaction
 * that took a low id and commits late is invisible in `hi` while it runs, so
 * its rows simply fall into a later range: nothing is skipped, and nobody
 * waits on a lock. This is the technique PgQ uses with its ticks.
 */
#ifndef SL_OUTBOX_H
#define SL_OUTBOX_H

#include "core/core.h"

struct pg_conn;

/* Migrations of schema sluice owned by outbox/ (embedded from outbox/sql). */
extern const sl_sql_file_t sl_outbox_migrations[];
extern const size_t sl_outbox_migrations_count;

/* A snapshot that sees no transaction: the start of a new pipeline. */
#define SL_OUTBOX_SNAPSHOT_EMPTY "1:1:"

/* Channel of the publish doorbell (NOTIFY once per publishing transaction). */
#define SL_OUTBOX_DOORBELL "sluice_outbox"

/*
 * The doorbell is armed by idle relays: each holds this advisory lock in
 * shared mode while it waits, and publish() rings only when it cannot take
 * the lock exclusively, i.e. when someone is waiting. A busy relay disarms,
 * so a steady stream of publishers does not pay for NOTIFY (which makes
 * committing notifiers queue behind one lock). The key is "sldbell" in ASCII;
 * outbox/sql/0001_outbox.sql uses the same number.
 */
#define SL_OUTBOX_DOORBELL_LOCK "8317132985617640448"
#define SL_OUTBOX_SQL_ARM "SELECT pg_try_advisory_lock_shared(" SL_OUTBOX_DOORBELL_LOCK ")"
#define SL_OUTBOX_SQL_DISARM "SELECT pg_advisory_unlock_shared(" SL_OUTBOX_DOORBELL_LOCK ")"

/*
 * Opens a range: takes the upper snapshot (or re-uses $2 when resuming a
 * range after a restart) and finds the id bounds of the rows in the range
 * with one scan of the txid index. Pages then walk the primary key between
 * those bounds, so each page costs O(page) whatever the range's size.
 *   $1 lo snapshot, $2 hi snapshot or NULL (take a new one),
 *   $3 exact topics (text[] or NULL), $4 LIKE patterns (text[] or NULL)
 * Columns: hi, min_id, max_id (both NULL when the range holds no row).
 */
#define SL_OUTBOX_SQL_OPEN                                                       \
    "WITH s AS (SELECT coalesce($2::pg_snapshot, pg_current_snapshot()) AS hi) " \
    "SELECT s.hi::text, b.min_id, b.max_id FROM s CROSS JOIN LATERAL ("          \
    "SELECT min(o.id) AS min_id, max(o.id) AS max_id FROM sluice.outbox o "      \
    "WHERE o.txid >= pg_snapshot_xmin($1::pg_snapshot) "                         \
    "AND o.txid < pg_snapshot_xmax(s.hi) "                                       \
    "AND pg_visible_in_snapshot(o.txid, s.hi) "                                  \
    "AND NOT pg_visible_in_snapshot(o.txid, $1::pg_snapshot) "                   \
    "AND ($3::text[] IS NULL OR o.topic = ANY($3::text[]) OR o.topic LIKE ANY($4::text[]))) b"

/*
 * Reads one page of an open range, in id order.
 *   $1 lo snapshot, $2 hi snapshot, $3 last id read, $4 page size,
 *   $5 exact topics (text[] or NULL), $6 LIKE patterns (text[] or NULL),
 *   $7 the range's max id (from SL_OUTBOX_SQL_OPEN)
 * Columns: id, topic, key, op, payload, headers, created_at (UTC, ISO), txid.
 * The query deliberately has no txid range condition (the visibility tests
 * imply it): with one, the planner may prefer the txid index and re-scan the
 * whole range for every page, e.g. when a bulk insert gave every row the
 * same txid. Without it, the only access path is the primary key range.
 */
#define SL_OUTBOX_SQL_READ                                                                   \
    "SELECT o.id, o.topic, o.key, o.op, o.payload::text, o.headers::text, "                  \
    "o.created_at, o.txid::text "                                                            \
    "FROM sluice.outbox o "                                                                  \
    "WHERE o.id > $3::bigint AND o.id <= $7::bigint "                                        \
    "AND pg_visible_in_snapshot(o.txid, $2::pg_snapshot) "                                   \
    "AND NOT pg_visible_in_snapshot(o.txid, $1::pg_snapshot) "                               \
    "AND ($5::text[] IS NULL OR o.topic = ANY($5::text[]) OR o.topic LIKE ANY($6::text[])) " \
    "ORDER BY o.id LIMIT $4::int"

/*
 * Creates the pipeline's checkpoint if missing and returns it, with the
 * instance id and database name that make up stable message ids.
 *   $1 pipeline, $2 'beginning' or 'now'
 * Columns: snap_lo, snap_hi, last_id, range_no, delivered, instance_id, db.
 */
#define SL_OUTBOX_SQL_CHECKPOINT_LOAD                                                         \
    "WITH ins AS (INSERT INTO sluice.relay_checkpoints (pipeline, snap_lo) "                  \
    "  VALUES ($1, CASE WHEN $2 = 'now' THEN pg_current_snapshot() "                          \
    "                   ELSE '" SL_OUTBOX_SNAPSHOT_EMPTY "'::pg_snapshot END) "               \
    "  ON CONFLICT (pipeline) DO NOTHING "                                                    \
    "  RETURNING snap_lo, snap_hi, last_id, range_no, delivered), "                           \
    "cur AS (SELECT snap_lo, snap_hi, last_id, range_no, delivered FROM ins "                 \
    "  UNION ALL SELECT snap_lo, snap_hi, last_id, range_no, delivered "                      \
    "  FROM sluice.relay_checkpoints WHERE pipeline = $1) "                                   \
    "SELECT cur.snap_lo::text, cur.snap_hi::text, cur.last_id, cur.range_no, cur.delivered, " \
    "(SELECT instance_id::text FROM sluice.meta), current_database() FROM cur"

/*
 * Advances a checkpoint; refuses to move it backwards (0 rows updated).
 *   $1 pipeline, $2 lo, $3 hi (NULL), $4 last_id, $5 range_no, $6 delivered
 */
#define SL_OUTBOX_SQL_CHECKPOINT_SAVE                                          \
    "UPDATE sluice.relay_checkpoints SET snap_lo = $2::pg_snapshot, "          \
    "snap_hi = $3::pg_snapshot, last_id = $4::bigint, range_no = $5::bigint, " \
    "delivered = $6::bigint, updated_at = now() "                              \
    "WHERE pipeline = $1 AND (range_no, last_id) <= ($5::bigint, $4::bigint)"

/*
 * Deletes delivered rows older than the retention ($1 seconds), a bounded
 * number per call. Returns one bigint: rows deleted.
 */
#define SL_OUTBOX_SQL_PRUNE "SELECT sluice.prune_outbox(make_interval(secs => $1::bigint), $2::int)"
/* Rows deleted per prune call: keeps each call a short transaction. */
#define SL_OUTBOX_PRUNE_BATCH 10000

/*
 * Takes the pipeline's advisory lock (session level), so two relays never
 * run the same pipeline at once. $1 pipeline. Returns one boolean.
 */
#define SL_OUTBOX_SQL_PIPELINE_LOCK \
    "SELECT pg_try_advisory_lock(hashtextextended('sluice.pipeline:' || $1, 0))"

/*
 * Turns a pipeline's topic list (exact names and globs with '*') into the
 * two text[] literals of SL_OUTBOX_SQL_READ ($5 exact, $6 patterns).
 * *exact and *like are malloc'ed (NULL when the list is empty: no filter).
 * Topics must already be validated ([A-Za-z0-9._-] and '*').
 */
int sl_outbox_topic_filter(const char *const *topics, size_t n, char **exact, char **like,
                           sl_err_t *err);

/* Validates one topic or glob from a config ("orders", "payments.*"). */
int sl_outbox_topic_glob_check(const char *glob, const char *path, sl_err_t *err);

#endif /* SL_OUTBOX_H */
