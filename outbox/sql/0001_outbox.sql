-- sluice outbox, version 1.
--
-- The outbox is an append-only table written by sluice.publish() (and, later,
-- by stream-table refreshes) inside the writer's own transaction. Each row
-- records the 64-bit id of the transaction that wrote it (txid, xid8), which
-- is what lets the relay read in commit-visibility order without ever
-- blocking writers: see docs/concepts.md, "No skipped rows".

-- One row identifying this sluice installation; its instance_id prefixes every
-- stable message id so ids from two databases never collide.
CREATE TABLE sluice.meta (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    instance_id uuid NOT NULL DEFAULT gen_random_uuid(),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO sluice.meta DEFAULT VALUES;

CREATE TABLE sluice.outbox (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    txid       xid8 NOT NULL DEFAULT pg_current_xact_id(),
    topic      text NOT NULL,
    key        text,
    op         text NOT NULL DEFAULT 'event',
    payload    jsonb NOT NULL,
    headers    jsonb NOT NULL DEFAULT '{}',
    refresh_id bigint,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- The relay scans by transaction id range, then orders by id.
CREATE INDEX outbox_txid_idx ON sluice.outbox (txid);

COMMENT ON TABLE sluice.outbox IS
    'Events waiting to be relayed; written by sluice.publish() in the caller''s transaction';

-- Per pipeline delivery position. Meaning:
--   every outbox row visible in snap_lo has been acknowledged by the sink;
--   when snap_hi is set, rows visible in snap_hi but not in snap_lo with
--   id <= last_id have been acknowledged too.
-- (range_no, last_id) only ever increases; the relay refuses to move it back.
CREATE TABLE sluice.relay_checkpoints (
    pipeline     text PRIMARY KEY,
    snap_lo      pg_snapshot NOT NULL,
    snap_hi      pg_snapshot,
    last_id      bigint NOT NULL DEFAULT 0,
    range_no     bigint NOT NULL DEFAULT 0,
    delivered    bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- sluice.publish(topic, payload, key, headers) -> outbox id
--
-- Writes one event into the outbox as part of the caller's transaction: the
-- event exists if and only if the caller commits. Rings the relay's doorbell
-- (one NOTIFY per transaction, deduplicated by PostgreSQL) when a relay is
-- idle and waiting for it, unless the setting sluice.doorbell is off ('off',
-- 'false', '0' or 'no', any case).
CREATE FUNCTION sluice.publish(topic text, payload jsonb, key text DEFAULT NULL,
                               headers jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    new_id    bigint;
    max_bytes bigint := coalesce(nullif(current_setting('sluice.max_payload_bytes', true), '')::bigint,
                                 900000);
    nbytes    bigint;
    bad_key   text;
BEGIN
    IF topic IS NULL OR topic !~ '^[A-Za-z0-9._-]{1,200}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sluice.publish: invalid topic %s', coalesce(quote_literal(topic), 'NULL')),
            HINT = 'A topic is 1 to 200 characters from A-Z, a-z, 0-9, ".", "_" and "-".';
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('sluice.publish: payload is NULL (topic %s)', topic),
            HINT = 'Pass a JSON value, for example ''{}''::jsonb or ''null''::jsonb.';
    END IF;
    headers := coalesce(headers, '{}'::jsonb);
    IF jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sluice.publish: headers must be a JSON object, got %s (topic %s)',
                             jsonb_typeof(headers), topic),
            HINT = 'Pass headers as an object of names to string values, e.g. ''{"trace-id": "abc"}''.';
    END IF;
    SELECT k INTO bad_key FROM jsonb_object_keys(headers) AS k
     WHERE lower(k) LIKE 'sluice-%' OR k = '' LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sluice.publish: header name %L is reserved or empty (topic %s)', bad_key, topic),
            HINT = 'Header names starting with "sluice-" are set by the relay; choose another name.';
    END IF;
    nbytes := octet_length(payload::text);
    IF nbytes > max_bytes THEN
        RAISE EXCEPTION USING
            ERRCODE = 'program_limit_exceeded',
            MESSAGE = format('sluice.publish: payload of %s bytes exceeds the limit of %s bytes (topic %s)',
                             nbytes, max_bytes, topic),
            HINT = 'Store large documents elsewhere and publish a reference, or raise the limit with SET sluice.max_payload_bytes (and the Kafka broker''s message.max.bytes).';
    END IF;

    INSERT INTO sluice.outbox (topic, key, payload, headers)
    VALUES (topic, key, payload, headers)
    RETURNING id INTO new_id;

    -- The doorbell. NOTIFY makes committing transactions queue behind one
    -- lock, so ring only when it helps: when a relay is idle and waiting. An
    -- idle relay holds advisory lock 8317132985617640448 ("sldbell") in shared
    -- mode; failing to take it exclusively means someone is listening.
    IF lower(coalesce(current_setting('sluice.doorbell', true), '')) NOT IN ('off', 'false', '0', 'no') THEN
        IF pg_try_advisory_lock(8317132985617640448) THEN
            PERFORM pg_advisory_unlock(8317132985617640448);
        ELSE
            PERFORM pg_notify('sluice_outbox', '');
        END IF;
    END IF;
    RETURN new_id;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.publish(text, jsonb, text, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION sluice.publish(text, jsonb, text, jsonb) IS
    'Write one event to the outbox in the current transaction; returns its outbox id';

-- sluice.prune_outbox(keep, max_rows) -> rows deleted
--
-- Deletes outbox rows that every pipeline has delivered (their transaction is
-- below the xmin of every checkpoint's lower snapshot) and that are older
-- than `keep`, at most max_rows per call so each call is a short
-- transaction. With no checkpoint at all nothing is deleted: a pipeline that
-- starts later at "beginning" still finds every row. Concurrent calls do not
-- wait on each other: all but one return 0 at once. The relay calls it
-- periodically (outbox_retention_s); it can also be scheduled by hand.
CREATE FUNCTION sluice.prune_outbox(keep interval DEFAULT '1 hour', max_rows int DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    horizon xid8;
    n       bigint;
BEGIN
    IF keep IS NULL OR keep < interval '0' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sluice.prune_outbox: keep must be a non-negative interval, got %s',
                             coalesce(keep::text, 'NULL')),
            HINT = 'Pass how long delivered events stay, e.g. ''1 hour'' or ''0''.';
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtextextended('sluice.prune_outbox', 0)) THEN
        RETURN 0;
    END IF;
    SELECT min(pg_snapshot_xmin(snap_lo)) INTO horizon FROM sluice.relay_checkpoints;
    IF horizon IS NULL THEN
        RETURN 0;
    END IF;
    DELETE FROM sluice.outbox
     WHERE id IN (SELECT id FROM sluice.outbox
                   WHERE txid < horizon AND created_at < now() - keep
                   ORDER BY id LIMIT max_rows);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.prune_outbox(interval, int) FROM PUBLIC;

-- What each relay pipeline has delivered, for operators.
CREATE VIEW sluice.relay_status AS
SELECT c.pipeline,
       c.delivered,
       c.last_id,
       pg_snapshot_xmin(c.snap_lo) AS delivered_below_txid,
       c.updated_at,
       now() - c.updated_at AS since_update
  FROM sluice.relay_checkpoints c;
