-- refresh/sql/0029_session_settings.sql - migration 29: a stream table is
-- computed with the settings of the session that created it, whoever
-- refreshes it.
--
-- Until now a refresh ran with the settings of whatever session ran it: the
-- engine's, or that of a client calling sluice.refresh_stream_table (a JDBC
-- client sends its JVM's time zone when it connects, for one). Several
-- settings change what a query returns and how its values print:
--
--   - TimeZone: date_trunc('day', at), at::date and extract() of a
--     timestamptz, and the offset a timestamptz prints with;
--   - DateStyle and IntervalStyle: dates, timestamps and intervals cast to
--     text, and intervals in JSON;
--   - extra_float_digits: how a float prints;
--   - bytea_output: how a bytea prints.
--
-- The printed values are the row identity (md5 of the key columns as JSON)
-- and the images of the outbox. So a stream table grouped by
-- date_trunc('day', at), created in UTC and refreshed once from a session in
-- Asia/Kolkata, got a second row for the same day under another id, with
-- the wrong count in both; a later refresh could fail on a duplicate id.
--
-- Now sluice.stream_table_catalog.settings records those five settings of
-- the session that creates the stream table, or gives it its query
-- (alter_stream_table with a query, the same one included), set by a
-- trigger on the catalog; that session populates it. Every later refresh,
-- the engine's and sluice.refresh_stream_table's, goes through
-- sluice._refresh_if_changed, which runs sluice._refresh (the driver,
-- unchanged) under the recorded settings and puts the caller's back when
-- it returns (set_config(..., true), so an error, which ends the
-- transaction or the subtransaction, undoes them too). sluice._refresh
-- called directly, as tests and the benchmark do, keeps the caller's.
--
-- Upgrade: stream tables created before get the settings of the session
-- that runs `sluice init` (the server's defaults, unless that session
-- changes them), the settings their refreshes most likely ran with.
-- sluice.alter_stream_table(name, query => <the same query>) records the
-- caller's instead.

ALTER TABLE sluice.stream_table_catalog ADD COLUMN settings jsonb;
COMMENT ON COLUMN sluice.stream_table_catalog.settings IS
    'The settings every refresh runs with (TimeZone, DateStyle, IntervalStyle, extra_float_digits, '
    'bytea_output): those of the session that created the stream table or gave it its query';

-- sluice._st_session_settings() -> jsonb: the caller's values of the
-- settings a stream table is computed with.
CREATE FUNCTION sluice._st_session_settings()
RETURNS jsonb
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT jsonb_build_object('TimeZone', current_setting('TimeZone'),
                              'DateStyle', current_setting('DateStyle'),
                              'IntervalStyle', current_setting('IntervalStyle'),
                              'extra_float_digits', current_setting('extra_float_digits'),
                              'bytea_output', current_setting('bytea_output'))
$fn$;

REVOKE ALL ON FUNCTION sluice._st_session_settings() FROM PUBLIC;

-- sluice._st_use_settings(want) -> jsonb: sets each setting of want that
-- differs from the caller's, until the end of the transaction, and returns
-- the values it replaced (sluice._st_use_settings of those puts them back).
-- want NULL: nothing.
CREATE FUNCTION sluice._st_use_settings(want jsonb)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    k    text;
    v    text;
    prev jsonb := '{}';
BEGIN
    FOR k, v IN SELECT e.key, e.value FROM jsonb_each_text(want) AS e LOOP
        CONTINUE WHEN current_setting(k) = v;
        prev := prev || jsonb_build_object(k, current_setting(k));
        PERFORM set_config(k, v, true);
    END LOOP;
    RETURN prev;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_use_settings(jsonb) FROM PUBLIC;

-- The trigger: a new stream table, or a query given to one (an UPDATE that
-- sets query or relid, as alter_stream_table's with a query does even when
-- it is the same), records the caller's settings.
CREATE FUNCTION sluice._st_record_settings()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    NEW.settings := sluice._st_session_settings();
    RETURN NEW;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_record_settings() FROM PUBLIC;

UPDATE sluice.stream_table_catalog SET settings = sluice._st_session_settings();
ALTER TABLE sluice.stream_table_catalog ALTER COLUMN settings SET NOT NULL;

CREATE TRIGGER stream_table_settings
    BEFORE INSERT OR UPDATE OF query, relid ON sluice.stream_table_catalog
    FOR EACH ROW EXECUTE FUNCTION sluice._st_record_settings();

-- As in version 21, under the stream table's settings (file header): the
-- engine's refreshes and sluice.refresh_stream_table's come through here.
-- (Creation and alter_stream_table refresh in the session whose settings
-- they have just recorded.)
CREATE OR REPLACE FUNCTION sluice._refresh_if_changed(id bigint)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st   sluice.stream_table_catalog;
    cur  pg_snapshot;
    src  record;
    has  boolean := false;
    prev jsonb;
    rid  bigint;
BEGIN
    SELECT * INTO st FROM sluice.stream_table_catalog c WHERE c.id = _refresh_if_changed.id;
    IF NOT FOUND OR st.status <> 'active' THEN
        RETURN sluice._refresh(_refresh_if_changed.id, false);   -- its errors
    END IF;
    cur := sluice._snap_own(pg_current_snapshot(), true);
    FOR src IN
        SELECT k.oid IS NULL AS gone, b.buffer
          FROM sluice.stream_table_sources s
          LEFT JOIN pg_class k ON k.oid = s.relid
          LEFT JOIN sluice.cdc_sources b ON b.relid = s.relid
         WHERE s.stream_table_id = st.id
    LOOP
        IF src.gone OR src.buffer IS NULL THEN
            has := NULL; -- (its errors)
            EXIT;
        END IF;
        -- The window predicate of _refresh (cdc/sql/0004_cdc.sql).
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s b WHERE b.txid >= pg_snapshot_xmin($1) AND b.txid < pg_snapshot_xmax($2) '
                       'AND NOT pg_visible_in_snapshot(b.txid, $1) AND pg_visible_in_snapshot(b.txid, $2))', src.buffer)
           INTO has USING st.frontier, cur;
        EXIT WHEN has;
    END LOOP;
    IF has IS NOT DISTINCT FROM false THEN
        INSERT INTO sluice.stream_table_checks AS k (stream_table_id, checked_at)
        VALUES (st.id, clock_timestamp())
        ON CONFLICT (stream_table_id) DO UPDATE SET checked_at = excluded.checked_at;
        RETURN NULL;
    END IF;
    -- Under the stream table's settings, the caller's put back after it.
    -- With changes, the sources' columns are checked first: true when a
    -- column was altered and images of its old definition may be in the
    -- window (migration 21).
    prev := sluice._st_use_settings(st.settings);
    rid := sluice._refresh(st.id, CASE WHEN has THEN sluice._st_check_columns(st.id, st.name) ELSE false END);
    PERFORM sluice._st_use_settings(prev);
    RETURN rid;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._refresh_if_changed(bigint) FROM PUBLIC;
