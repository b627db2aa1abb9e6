-- refresh/sql/0036_clock_refresh.sql - migration 36: a stream table whose
-- rows depend on the clock is refreshed at every look, changes or not.
--
-- SELECT id, at FROM events WHERE at > now() - interval '1 day' gives
-- fewer rows as time passes, with no change of events. Since migration 33
-- such a query is refreshed in full, but like every stream table only when
-- a source has changes in the window: on a quiet source the rows that had
-- left the day stayed in the stream table until the next write, however
-- long that took. The stream table should hold its query's result as of
-- its last look (the engine looks at its schedule; refresh_stream_table
-- when called), so now a look that finds no change still refreshes such a
-- stream table in full: the rows that left are deleted and those that came
-- in (WHERE at < now(): rows whose time has come) inserted. A FULL refresh
-- whose result did not change publishes nothing, as always; it costs the
-- query and the diff at every look, so give a large stream table of this
-- kind a schedule that matches how fast its window moves.
--
-- Which stream tables: those whose rows depend on the clock by the rule of
-- migrations 33 and 34 (sluice._st_tree_clock_keyed), recorded when the
-- query is stored (the column reads_clock, set by a trigger on the
-- catalog, as stream_table_settings is). now() in the select list of a
-- query that does not group only shows when a row was computed: such a
-- stream table is not refreshed without changes (every row would change
-- at every look).
--
-- Upgrade: the column is set for every existing stream table whose stored
-- query still plans (the others are in status error, and get it when
-- alter_stream_table gives them a query again).

ALTER TABLE sluice.stream_table_catalog ADD COLUMN reads_clock boolean NOT NULL DEFAULT false;

-- sluice._st_query_reads_clock(query) -> whether the rows of query (a
-- stored, schema-qualified query) depend on the clock. Only a query with
-- the name of a clock function or keyword in its text is planned (as a
-- temporary view) to read its analysed tree.
CREATE FUNCTION sluice._st_query_reads_clock(query text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tree text;
BEGIN
    IF query IS NULL
       OR query !~* '(now|statement_timestamp|transaction_timestamp|current_date|current_time|current_timestamp|localtime|localtimestamp)' THEN
        RETURN false;
    END IF;
    EXECUTE 'CREATE TEMP VIEW __sluice_clock_check AS ' || query;
    tree := (SELECT r.ev_action::text FROM pg_rewrite r
              WHERE r.ev_class = 'pg_temp.__sluice_clock_check'::regclass AND r.rulename = '_RETURN');
    DROP VIEW pg_temp.__sluice_clock_check;
    RETURN coalesce(sluice._st_tree_clock_keyed(tree), false);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_query_reads_clock(text) FROM PUBLIC;

CREATE FUNCTION sluice._st_record_reads_clock()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    NEW.reads_clock := sluice._st_query_reads_clock(NEW.query);
    RETURN NEW;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_record_reads_clock() FROM PUBLIC;

-- Existing stream tables. A stored query that no longer plans (a source
-- dropped: the stream table is in status error) is left false.
DO $do$
DECLARE
    st record;
BEGIN
    FOR st IN SELECT c.id, c.query FROM sluice.stream_table_catalog c ORDER BY c.id LOOP
        BEGIN
            UPDATE sluice.stream_table_catalog c
               SET reads_clock = sluice._st_query_reads_clock(st.query)
             WHERE c.id = st.id;
        EXCEPTION WHEN OTHERS THEN
            CONTINUE;
        END;
    END LOOP;
END
$do$;

CREATE TRIGGER stream_table_reads_clock
    BEFORE INSERT OR UPDATE OF query ON sluice.stream_table_catalog
    FOR EACH ROW EXECUTE FUNCTION sluice._st_record_reads_clock();

-- sluice._refresh_if_changed(id): version 29's, but a stream table that
-- reads the clock is refreshed in full at every look, under its settings,
-- without looking for changes first. The sources' columns are checked
-- first all the same, so that a read column that was dropped or changed
-- is named as with changes (migration 21).
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
    -- Reads the clock: refreshed in full at every look, without looking
    -- for changes; the sources' columns are checked first all the same.
    IF st.reads_clock THEN
        prev := sluice._st_use_settings(st.settings);
        PERFORM sluice._st_check_columns(st.id, st.name);
        rid := sluice._refresh(st.id, true);
        PERFORM sluice._st_use_settings(prev);
        RETURN rid;
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
