-- sluice outbox, version 2: reading messages back by outbox id.
--
-- The relay's "notify" sink (docs/notify.md) sends each message as a
-- PostgreSQL notification. A payload must be shorter than 8000 bytes, so a
-- larger message is notified as a reference {"id", "topic", "key", "op",
-- "outbox_id", "truncated": true}; listeners resolve it with
-- sluice.outbox_message(). A listener that was not listening for a while
-- catches up with sluice.outbox_messages_since() (docs/notify.md, "The
-- listener's contract").
--
-- Both functions are SECURITY DEFINER so a listener's role needs no access to
-- the outbox table itself: EXECUTE is revoked from PUBLIC; grant it to the
-- listener's role, e.g.
--   GRANT USAGE ON SCHEMA sluice TO app_listener;
--   GRANT EXECUTE ON FUNCTION sluice.outbox_message(bigint),
--                             sluice.outbox_messages_since(pg_snapshot, text[])
--         TO app_listener;

-- sluice.outbox_message(outbox_id) -> jsonb envelope, or NULL
--
-- The message of one outbox row, as the envelope the relay sends
-- (docs/envelope.md): id, topic, op, key, payload, headers, ts, outbox_id,
-- source {db, txid}. As jsonb its keys come in jsonb's order, not the wire
-- order; the values are the same. NULL when no such row exists (never
-- written, or already deleted by retention, see sluice.prune_outbox), and
-- for a row whose transaction has not committed yet.
CREATE FUNCTION sluice.outbox_message(outbox_id bigint)
RETURNS jsonb
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT jsonb_build_object(
               'id', (SELECT m.instance_id::text FROM sluice.meta m) || ':' || o.id,
               'topic', o.topic,
               'op', o.op,
               'key', o.key,
               'payload', o.payload,
               'headers', o.headers,
               -- The relay writes created_at in UTC as 2026-11-21T08:30:00.123456Z
               -- (trailing zeros of the fraction dropped, like PostgreSQL's output).
               'ts', (to_json(o.created_at AT TIME ZONE 'UTC') #>> '{}') || 'Z',
               'outbox_id', o.id,
               'source', jsonb_build_object('db', current_database(), 'txid', o.txid::text))
      FROM sluice.outbox o
     WHERE o.id = $1
$fn$;

REVOKE ALL ON FUNCTION sluice.outbox_message(bigint) FROM PUBLIC;
COMMENT ON FUNCTION sluice.outbox_message(bigint) IS
    'The envelope of one outbox message (resolves truncated notifications); NULL when unknown or pruned';

-- sluice.outbox_messages_since(since, topics) -> (outbox_id, message, snapshot)
--
-- Catch-up for a listener. The first row always has outbox_id and message
-- NULL and carries `snapshot`, the current snapshot: the listener stores it
-- as its next `since`. The following rows are every outbox message committed
-- after snapshot `since` was taken (its transaction is not visible in
-- `since`) and visible now, in outbox id order, optionally only those of
-- `topics` (exact outbox topic names; NULL = all). With `since` NULL only the
-- snapshot row comes back: that is how a new listener takes its first
-- watermark.
--
-- A message whose notification was sent before the listener's LISTEN took
-- effect committed before it, so calling this right after LISTEN returns it;
-- every later notification arrives on the channel. Together they miss
-- nothing (rows deleted by retention excepted) and may overlap: deduplicate
-- by "id". See docs/notify.md.
--
-- STABLE and one statement: the rows and `snapshot` come from one snapshot.
CREATE FUNCTION sluice.outbox_messages_since(since pg_snapshot, topics text[] DEFAULT NULL)
RETURNS TABLE (outbox_id bigint, message jsonb, snapshot pg_snapshot)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT r.id, r.msg, pg_current_snapshot()
      FROM (SELECT NULL::bigint AS id, NULL::jsonb AS msg
            UNION ALL
            SELECT o.id, sluice.outbox_message(o.id)
              FROM sluice.outbox o
             WHERE $1 IS NOT NULL
               AND o.txid >= pg_snapshot_xmin($1)
               AND NOT pg_visible_in_snapshot(o.txid, $1)
               AND ($2 IS NULL OR o.topic = ANY ($2))) r
     ORDER BY r.id NULLS FIRST
$fn$;

REVOKE ALL ON FUNCTION sluice.outbox_messages_since(pg_snapshot, text[]) FROM PUBLIC;
COMMENT ON FUNCTION sluice.outbox_messages_since(pg_snapshot, text[]) IS
    'Outbox messages committed since a snapshot, in id order, with the snapshot to pass next time';
