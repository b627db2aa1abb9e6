-- refresh/sql/0037_payload_limit.sql - migration 37: the outbox messages of
-- stream tables obey sluice.max_payload_bytes, as sluice.publish() does.
--
-- sluice.publish() refuses a payload over the limit (900 000 bytes of its
-- jsonb text unless sluice.max_payload_bytes says otherwise), so that the
-- writer hears of it and Kafka never sees a record it would refuse. The
-- messages of a stream table went into the outbox unchecked: a row with a
-- wide column (a document, an image as text) made a message that Kafka
-- refused, and the relay's pipeline then stopped at it, holding back every
-- topic it carries (docs/operations.md, "A pipeline failed").
--
-- Now every message a refresh writes (the engine's, refresh_stream_table's,
-- and the ones create_stream_table and alter_stream_table run), and every
-- message of snapshot_stream_table, is measured the way publish() measures
-- (octet_length of the payload's jsonb text; see below for when) against
-- the same setting, read in the session that runs it.
-- A message over the limit fails the statement with SQLSTATE 54000, naming
-- the stream table, the row's key, its op and both sizes. Nothing of the
-- refresh is applied or published and the captured changes stay, so the
-- next refresh after the cause is fixed (the row made smaller, the column
-- left out of the query, the limit raised) publishes every change. The
-- engine records the failure as a transient one (last_error,
-- consecutive_failures) and retries with its backoff; the other stream
-- tables go on.
--
-- Measuring a payload's text costs a jsonb-to-text, about 1.5 us a
-- message of a few columns (15 ms on a refresh of 10,000 rows). So it is
-- done only for a payload whose jsonb form is over an eighth of the limit:
-- below that its text cannot reach the limit (the text of a jsonb value
-- is at most about six times its binary form: a control character prints
-- as \u0001), unless it holds numbers of hundreds of digits stored in a
-- few bytes (1e1000, or a numeric column of scale 500). Such a rare
-- message is not caught here, and Kafka's limit stops it at the relay, as
-- before this migration.

-- sluice._max_payload_bytes(fn) -> the limit in bytes: the setting
-- sluice.max_payload_bytes, or 900000 when it is unset or empty. A value
-- that is not a whole number fails with what is wrong and how to fix it.
CREATE FUNCTION sluice._max_payload_bytes(fn text)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v text := btrim(coalesce(current_setting('sluice.max_payload_bytes', true), ''));
BEGIN
    IF v = '' THEN
        RETURN 900000;
    END IF;
    IF v !~ '^[0-9]{1,18}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: the setting sluice.max_payload_bytes is %L, not a number of bytes', fn, v),
            HINT = 'Set it to a whole number of bytes (SET sluice.max_payload_bytes = 2000000), or RESET it for the default of 900000.';
    END IF;
    RETURN v::bigint;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._max_payload_bytes(text) FROM PUBLIC;

-- sluice._st_payload_too_large(fn, name, op, key, nbytes, max_bytes):
-- raises the error for one message over the limit. fn is the function
-- called (sluice.snapshot_stream_table), or NULL for a refresh. Called from
-- a CASE in the statements that write the messages, only for such a
-- message.
CREATE FUNCTION sluice._st_payload_too_large(fn text, name text, op text, key text, nbytes bigint,
                                             max_bytes bigint)
RETURNS jsonb
LANGUAGE plpgsql
VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'program_limit_exceeded',
        MESSAGE = concat_ws(': ', fn,
                            format('stream table %s: the %s of the row with key %s makes an outbox payload of %s bytes, '
                                   'over the limit of %s bytes (sluice.max_payload_bytes)',
                                   name, op, key, nbytes, max_bytes)),
        DETAIL = CASE WHEN fn IS NULL
                      THEN 'Nothing was applied or published: the refresh (and the creation or alter_stream_table that ran it) is rolled back, and the captured changes are kept for the next refresh.'
                      ELSE 'Nothing was written to the outbox.' END,
        HINT = 'Leave the wide columns out of the stream table''s query (publish a reference to them instead), '
               || CASE WHEN fn IS NULL
                       THEN 'or raise sluice.max_payload_bytes for the session that refreshes, together with Kafka''s '
                            'message.max.bytes (for a running engine: in postgresql.conf or with ALTER SYSTEM, then '
                            'SELECT pg_reload_conf()).'
                       ELSE 'or raise sluice.max_payload_bytes in this session (SET sluice.max_payload_bytes = N), '
                            'together with Kafka''s message.max.bytes.' END;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_payload_too_large(text, text, text, text, bigint, bigint) FROM PUBLIC;

-- sluice._st_publish(st, mode, started) -> refresh id, or NULL: as in
-- migration 5, with each message measured against the limit.
CREATE OR REPLACE FUNCTION sluice._st_publish(st sluice.stream_table_catalog, mode text, started timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rid       bigint;
    ins       bigint;
    upd       bigint;
    del       bigint;
    max_bytes bigint;
BEGIN
    SELECT count(*) FILTER (WHERE d.op = 'insert'), count(*) FILTER (WHERE d.op = 'update'),
           count(*) FILTER (WHERE d.op = 'delete')
      INTO ins, upd, del
      FROM pg_temp.__sluice_delta d;
    IF ins + upd + del = 0 THEN
        RETURN NULL;
    END IF;
    max_bytes := sluice._max_payload_bytes('stream table ' || st.name);
    rid := nextval('sluice.refresh_id_seq');
    -- Not through sluice.publish(): one set-based insert. Stream table names
    -- are valid topics by construction (sluice._st_norm_name). OFFSET 0
    -- keeps each payload built once, for the size and the row.
    INSERT INTO sluice.outbox (topic, key, op, payload, headers, refresh_id)
    SELECT st.name, m.key, m.op,
           CASE WHEN pg_column_size(m.payload) <= max_bytes / 8 THEN m.payload
                WHEN octet_length(m.payload::text) <= max_bytes THEN m.payload
                ELSE sluice._st_payload_too_large(NULL, st.name, m.op, m.key,
                                                  octet_length(m.payload::text), max_bytes) END,
           '{}', rid
      FROM (SELECT d.row_id, d.row_id::text AS key, d.op,
                   CASE d.op WHEN 'delete' THEN 0 WHEN 'update' THEN 1 ELSE 2 END AS rank,
                   jsonb_build_object('before', d.before, 'after', d.after, 'refresh_id', rid) AS payload
              FROM pg_temp.__sluice_delta d
            OFFSET 0) m
     ORDER BY m.rank, m.row_id;
    -- The relay's doorbell, exactly as sluice.publish() rings it.
    PERFORM sluice._ring_doorbell();
    INSERT INTO sluice.refresh_history (refresh_id, stream_table_id, started_at, duration_ms, mode,
                                        inserted, updated, deleted)
    VALUES (rid, st.id, started, 1000 * extract(epoch FROM clock_timestamp() - started), mode,
            ins, upd, del);
    -- Keep the last 1000 per stream table; look only every 100th refresh.
    IF rid % 100 = 0 THEN
        DELETE FROM sluice.refresh_history h
         WHERE h.stream_table_id = st.id
           AND h.refresh_id < (SELECT h2.refresh_id FROM sluice.refresh_history h2
                                WHERE h2.stream_table_id = st.id
                                ORDER BY h2.refresh_id DESC OFFSET 999 LIMIT 1);
    END IF;
    PERFORM sluice._st_notify(st.id, st.name, rid, ins, upd, del);
    RETURN rid;
END
$fn$;

-- sluice.snapshot_stream_table(name): as in migration 31, with each message
-- measured against the limit. The subquery is ordered too, so that the
-- stream table's primary key gives the order (no sort of the payloads).
CREATE OR REPLACE FUNCTION sluice.snapshot_stream_table(name text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st        sluice.stream_table_catalog := sluice._st_lookup('sluice.snapshot_stream_table', name, true);
    prev      jsonb;
    sid       bigint;
    n         bigint;
    nm        text := st.name;
    max_bytes bigint := sluice._max_payload_bytes('sluice.snapshot_stream_table');
BEGIN
    -- Between refreshes (migration 31); read again, as it may have changed
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
                   'SELECT $1, m.key, ''snapshot'', '
                   'CASE WHEN pg_column_size(m.payload) <= $3 / 8 THEN m.payload '
                   'WHEN octet_length(m.payload::text) <= $3 THEN m.payload '
                   'ELSE sluice._st_payload_too_large(''sluice.snapshot_stream_table'', $1, ''snapshot'', m.key, '
                   'octet_length(m.payload::text), $3) END, ''{}'', $2 '
                   'FROM (SELECT s.__sluice_row_id AS row_id, s.__sluice_row_id::text AS key, '
                   'jsonb_build_object(''before'', NULL, ''after'', to_jsonb(s) - ''__sluice_row_id'', '
                   '''refresh_id'', $2) AS payload FROM %s s ORDER BY s.__sluice_row_id OFFSET 0) m '
                   'ORDER BY m.row_id', st.relid::regclass)
        USING st.name, sid, max_bytes;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM sluice._st_use_settings(prev);
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM sluice._ring_doorbell();
    RETURN sid;
END
$fn$;
