-- refresh/sql/0031_snapshots.sql - migration 31: sluice.snapshot_stream_table,
-- a stream table's current rows sent again, for consumers that start late.
--
-- A stream table's topic carries its deltas. A consumer that reads it from
-- the first message rebuilds the table; one that starts later cannot: the
-- relay's retention deletes delivered outbox rows (an hour by default), a
-- pipeline added later starts with what is left, a Kafka topic may have
-- been recreated. sluice.snapshot_stream_table(name) writes one outbox
-- message per current row, op 'snapshot', in the caller's transaction:
--
--   topic       the stream table's name, as for its deltas
--   key         the row identity, as for its deltas
--   op          'snapshot'
--   payload     {"before": null, "after": <the row>, "refresh_id": <id>}
--   refresh_id  a new id from sluice.refresh_id_seq, the same for every row
--
-- so a consumer that applies "insert or replace by key" for snapshot
-- messages, as for inserts and updates, has the table's content after the
-- last one. The rows are those of the last committed refresh: the call
-- takes the stream table's catalog row FOR UPDATE, as a refresh does, so it
-- waits for a refresh in progress and the next one waits for it; its
-- messages are ordered between the two refreshes' deltas. The images are
-- printed under the stream table's recorded settings (migration 29), as
-- the deltas' are. Nothing else changes: no refresh history, no frontier,
-- no notification to subscribers (the table did not change). Only the
-- owner (or a member of the owning role, or a superuser) may call it, as
-- for refresh_stream_table.

-- sluice._ring_doorbell(): wakes an idle relay, as sluice.publish() and a
-- refresh do (outbox/sql/0001_outbox.sql): an idle relay holds advisory
-- lock 8317132985617640448 in shared mode and listens on sluice_outbox.
CREATE FUNCTION sluice._ring_doorbell()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF lower(coalesce(current_setting('sluice.doorbell', true), '')) NOT IN ('off', 'false', '0', 'no') THEN
        IF pg_try_advisory_lock(8317132985617640448) THEN
            PERFORM pg_advisory_unlock(8317132985617640448);
        ELSE
            PERFORM pg_notify('sluice_outbox', '');
        END IF;
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._ring_doorbell() FROM PUBLIC;

CREATE FUNCTION sluice.snapshot_stream_table(name text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st   sluice.stream_table_catalog := sluice._st_lookup('sluice.snapshot_stream_table', name, true);
    prev jsonb;
    sid  bigint;
    n    bigint;
    nm   text := st.name;
BEGIN
    -- Between refreshes (file header); read again, as it may have changed
    -- while this waited.
    SELECT * INTO st FROM sluice.stream_table_catalog c WHERE c.id = st.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('sluice.snapshot_stream_table: stream table %s was dropped while this call waited for it', nm);
    END IF;
    sid := nextval('sluice.refresh_id_seq');
    prev := sluice._st_use_settings(st.settings);
    EXECUTE format('INSERT INTO sluice.outbox (topic, key, op, payload, headers, refresh_id) '
                   'SELECT $1, s.__sluice_row_id::text, ''snapshot'', '
                   'jsonb_build_object(''before'', NULL, ''after'', to_jsonb(s) - ''__sluice_row_id'', '
                   '''refresh_id'', $2), ''{}'', $2 '
                   'FROM %s s ORDER BY s.__sluice_row_id', st.relid::regclass)
        USING st.name, sid;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM sluice._st_use_settings(prev);
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM sluice._ring_doorbell();
    RETURN sid;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.snapshot_stream_table(text) FROM PUBLIC;

COMMENT ON FUNCTION sluice.snapshot_stream_table(text) IS
    'Writes one outbox message per current row of the stream table (op snapshot, after = the row), '
    'for consumers that start after its history left the outbox; returns their refresh id, or NULL '
    'for an empty stream table';
