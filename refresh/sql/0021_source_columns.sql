-- refresh/sql/0021_source_columns.sql - migration 21: a stream table whose
-- source changed a column it reads (type, name, dropped) or was renamed
-- goes into status 'error' naming the change, instead of refreshing with
-- columns its query and storage were not made for.
--
-- Until now such DDL showed only when it made a refresh fail, and then
-- with PostgreSQL's message about the refresh's own statements. After
--
--     ALTER TABLE orders ALTER amount TYPE numeric(12,2)
--
-- a stream table `SELECT id, amount FROM orders` created while amount was
-- an integer still has an integer column. Its differential refreshes
-- stored and published 2 for an order of 1.5 (an assignment cast into the
-- scratch table typed like the stream table), silently; a full refresh
-- failed with "cannot compare dissimilar column types integer and numeric
-- at record column 2", which names neither the source nor the column. The
-- aggregates kept from the changes (migration 20) are exact only for the
-- column types they were analysed with (a sum of a column changed to
-- double precision would have gone on being kept from the changes). And a
-- source renamed, with a new table created under its old name, was read by
-- the stored query while capture followed the renamed one.
--
-- Now the columns of each stream table's sources are recorded when its
-- query is validated (create_stream_table, alter_stream_table with a
-- query), in sluice.stream_table_columns, with their name, type, type
-- modifier and collation at that time, and whether the query reads them:
-- the dependencies PostgreSQL records for the temporary view holding the
-- query (a view depends on each column it names). Before a refresh that
-- has changes to apply, sluice._refresh_if_changed compares them with the
-- catalog (four small statements, about 0.08 ms; nothing when there is no
-- change). A column the query reads that was dropped, renamed or
-- changed its type or collation raises
--
--     column amount of source public.orders, read by stream table
--     order_lines, changed type from integer to numeric(12,2)
--
-- with SQLSTATE 42804 (a type or collation) or 42703 (a column dropped or
-- renamed); a source renamed raises 42P01. The engine's
-- sluice._record_failure already turns these into status 'error'.
--
-- Columns the query does not read may change as they like, with one
-- catch that holds for read columns too: the change buffers hold images
-- captured before the change, with values of the old type, and a
-- differential refresh reads every image as a row of the source's current
-- type. A value that does not convert ('abc' after text became integer)
-- failed every such refresh with "invalid input syntax", counted as
-- transient, for ever, even when the type was changed back before the
-- refresh. So each recorded column also keeps the xmin of its pg_attribute
-- row, which every ALTER of the column renews: when one differs, that cycle
-- is refreshed in full (it reads no image, and the window's images are
-- then behind the frontier) and the column's new state is recorded. Other
-- ALTERs of a column (SET NOT NULL, SET DEFAULT, SET STATISTICS) and a
-- column-level GRANT, which rewrite that row too, cost one full refresh.
-- A column added later is recorded, as not read, at the next check (the
-- images from before it lack it, which is harmless). A query that reads a
-- table only as a whole row (row_to_json(t)) or not at all (count(*)) has
-- no column dependencies on it: all its columns count as not read.
--
-- Re-validating with alter_stream_table(name, query => <the same query>)
-- records the new columns; the stream table is rebuilt when its own output
-- columns change (migration 5), and analysed again by the engine.
--
-- Upgrade: existing stream tables get their columns recorded from the
-- catalog as it is now (a type change made before the upgrade is not
-- seen); a stored query that no longer plans is left unchecked until it
-- is re-validated.

-- sluice.stream_table_columns: the columns of each stream table's sources
-- as they were when its query was validated.
CREATE TABLE sluice.stream_table_columns (
    stream_table_id bigint NOT NULL,
    relid           oid NOT NULL,
    attnum          smallint NOT NULL,
    attname         name NOT NULL,
    atttypid        oid NOT NULL,
    atttypmod       int NOT NULL,
    attcollation    oid NOT NULL,
    -- format_type(atttypid, atttypmod), for messages
    type_name       text NOT NULL,
    -- named by the query (a column dependency of its view)
    read            boolean NOT NULL,
    -- xmin of the pg_attribute row: renewed by every ALTER of the column
    def_xmin        xid NOT NULL,
    PRIMARY KEY (stream_table_id, relid, attnum),
    FOREIGN KEY (stream_table_id, relid) REFERENCES sluice.stream_table_sources (stream_table_id, relid)
        ON DELETE CASCADE
);

COMMENT ON TABLE sluice.stream_table_columns IS
    'The source columns of each stream table as validated, and which its query reads; checked before each refresh (migration 21)';

-- sluice._st_set_columns(st_id, view): records the columns of the sources
-- of the query in `view` (see the file header). The stream table's sources
-- must be recorded already.
CREATE FUNCTION sluice._st_set_columns(st_id bigint, view regclass)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    DELETE FROM sluice.stream_table_columns c WHERE c.stream_table_id = st_id;
    INSERT INTO sluice.stream_table_columns (stream_table_id, relid, attnum, attname, atttypid, atttypmod,
                                             attcollation, type_name, read, def_xmin)
    SELECT st_id, a.attrelid, a.attnum, a.attname, a.atttypid, a.atttypmod, a.attcollation,
           format_type(a.atttypid, a.atttypmod),
           EXISTS (SELECT 1 FROM pg_rewrite w
                     JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
                    WHERE w.ev_class = view AND d.refclassid = 'pg_class'::regclass
                      AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum),
           a.xmin
      FROM sluice.stream_table_sources s
      JOIN pg_attribute a ON a.attrelid = s.relid
     WHERE s.stream_table_id = st_id AND a.attnum > 0 AND NOT a.attisdropped;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_set_columns(bigint, regclass) FROM PUBLIC;

-- sluice._st_check_columns(st_id, st_name) -> whether this refresh must be
-- full. Raises when a source of the stream table was renamed, or a column
-- its query reads was dropped, renamed or changed its type or collation,
-- since the query was validated. Returns true, and records the columns'
-- new state, when a column was altered otherwise (file header).
CREATE FUNCTION sluice._st_check_columns(st_id bigint, st_name text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r       record;
    altered boolean;
    hint    constant text := format('Change the source back, or re-validate the stream table with SELECT sluice.alter_stream_table(%L, query => ...) '
                                 '(the same query if it still fits: the stream table is rebuilt if its own columns change).', st_name);
BEGIN
    -- Names as _st_sources recorded them: regclass text under this
    -- function's search_path, so always schema-qualified.
    SELECT s.relname, k.oid::regclass::text AS now_name INTO r
      FROM sluice.stream_table_sources s
      JOIN pg_class k ON k.oid = s.relid
     WHERE s.stream_table_id = st_id AND k.oid::regclass::text <> s.relname
     ORDER BY s.relname LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_table',
            MESSAGE = format('source %s of stream table %s was renamed to %s', r.relname, st_name, r.now_name),
            DETAIL = 'The stored query names the source by its old name; change capture follows the renamed table.',
            HINT = hint;
    END IF;
    SELECT s.relname, c.attname, c.type_name, a.attname AS now_name, a.attisdropped AS dropped,
           format_type(a.atttypid, a.atttypmod) AS now_type, a.atttypid = c.atttypid AND a.atttypmod = c.atttypmod AS same_type,
           (SELECT l.collname FROM pg_collation l WHERE l.oid = c.attcollation) AS coll,
           (SELECT l.collname FROM pg_collation l WHERE l.oid = a.attcollation) AS now_coll
      INTO r
      FROM sluice.stream_table_columns c
      JOIN sluice.stream_table_sources s ON s.stream_table_id = c.stream_table_id AND s.relid = c.relid
      JOIN pg_attribute a ON a.attrelid = c.relid AND a.attnum = c.attnum
     WHERE c.stream_table_id = st_id AND c.read
       AND (a.attisdropped OR a.attname <> c.attname OR a.atttypid <> c.atttypid
            OR a.atttypmod <> c.atttypmod OR a.attcollation <> c.attcollation)
     ORDER BY s.relname, c.attnum LIMIT 1;
    IF FOUND THEN
        IF r.dropped OR r.now_name <> r.attname THEN
            RAISE EXCEPTION USING
                ERRCODE = 'undefined_column',
                MESSAGE = format('column %I of source %s, read by stream table %s, was %s', r.attname, r.relname, st_name,
                                 CASE WHEN r.dropped THEN 'dropped' ELSE format('renamed to %I', r.now_name) END),
                HINT = hint;
        END IF;
        RAISE EXCEPTION USING
            ERRCODE = 'datatype_mismatch',
            MESSAGE = format('column %I of source %s, read by stream table %s, changed %s', r.attname, r.relname, st_name,
                             CASE WHEN NOT r.same_type THEN format('type from %s to %s', r.type_name, r.now_type)
                                  ELSE format('collation from %s to %s', coalesce(r.coll::text, 'none'),
                                              coalesce(r.now_coll::text, 'none')) END),
            DETAIL = 'The stream table''s columns, and the way its refresh computes them, were made for the old definition.',
            HINT = hint;
    END IF;
    -- Columns altered in another way: images of their old definition may
    -- be in the window. Then columns added since (images before them lack
    -- them: nothing to do).
    UPDATE sluice.stream_table_columns c
       SET attname = a.attname, atttypid = a.atttypid, atttypmod = a.atttypmod, attcollation = a.attcollation,
           type_name = format_type(a.atttypid, a.atttypmod), def_xmin = a.xmin
      FROM pg_attribute a
     WHERE c.stream_table_id = st_id AND a.attrelid = c.relid AND a.attnum = c.attnum AND a.xmin <> c.def_xmin;
    altered := FOUND;
    INSERT INTO sluice.stream_table_columns (stream_table_id, relid, attnum, attname, atttypid, atttypmod,
                                             attcollation, type_name, read, def_xmin)
    SELECT st_id, a.attrelid, a.attnum, a.attname, a.atttypid, a.atttypmod, a.attcollation,
           format_type(a.atttypid, a.atttypmod), false, a.xmin
      FROM sluice.stream_table_sources s
      JOIN pg_attribute a ON a.attrelid = s.relid
     WHERE s.stream_table_id = st_id AND a.attnum > 0 AND NOT a.attisdropped
       AND NOT EXISTS (SELECT 1 FROM sluice.stream_table_columns c2
                        WHERE c2.stream_table_id = st_id AND c2.relid = a.attrelid AND c2.attnum = a.attnum);
    RETURN altered;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_check_columns(bigint, text) FROM PUBLIC;

-- As in version 5, and the columns the query reads are recorded.
CREATE OR REPLACE FUNCTION sluice._st_set_sources(st_id bigint, view regclass, fn text, name text, caller oid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    src   record;
    cycle text;
    old   oid[];
    st_relid oid := (SELECT c.relid FROM sluice.stream_table_catalog c WHERE c.id = st_id);
BEGIN
    old := ARRAY(SELECT s.relid FROM sluice.stream_table_sources s WHERE s.stream_table_id = st_id);
    DELETE FROM sluice.stream_table_sources s WHERE s.stream_table_id = st_id;
    FOR src IN SELECT * FROM sluice._st_sources(fn, name, view) LOOP
        IF NOT has_table_privilege(caller, src.relid, 'SELECT') THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('%s: permission denied for table %s', fn, src.relname),
                HINT = format('The owner of stream table %s needs SELECT on every table its query reads.', name);
        END IF;
        INSERT INTO sluice.stream_table_sources (stream_table_id, relid, relname, is_stream_table)
        VALUES (st_id, src.relid, src.relname, src.is_stream_table);
    END LOOP;
    PERFORM sluice._st_set_columns(st_id, view);
    -- A cycle: this stream table reachable from one of its own sources.
    WITH RECURSIVE up(relid, path) AS (
        SELECT s.relid, ARRAY[_st_set_sources.name, c.name]
          FROM sluice.stream_table_sources s
          JOIN sluice.stream_table_catalog c ON c.relid = s.relid
         WHERE s.stream_table_id = st_id
        UNION ALL
        SELECT s.relid, up.path || c2.name
          FROM up
          JOIN sluice.stream_table_catalog c1 ON c1.relid = up.relid
          JOIN sluice.stream_table_sources s ON s.stream_table_id = c1.id
          JOIN sluice.stream_table_catalog c2 ON c2.relid = s.relid
         WHERE cardinality(up.path) < 100 AND up.relid <> st_relid
    )
    SELECT array_to_string(path, ' -> ') INTO cycle FROM up WHERE up.relid = st_relid LIMIT 1;
    IF cycle IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_recursion',
            MESSAGE = format('%s: stream table %s would read itself: %s', fn, name, cycle),
            DETAIL = 'A -> B means A reads B.',
            HINT = 'A stream table cannot depend on itself through other stream tables; change the query.';
    END IF;
    FOR src IN SELECT s.relid FROM sluice.stream_table_sources s WHERE s.stream_table_id = st_id LOOP
        PERFORM sluice.cdc_attach(src.relid::regclass);
    END LOOP;
    -- Tables this stream table no longer reads and nobody else does.
    FOR src IN SELECT o AS relid FROM unnest(old) o
                WHERE NOT EXISTS (SELECT 1 FROM sluice.stream_table_sources s WHERE s.relid = o) LOOP
        PERFORM sluice.cdc_detach(src.relid::regclass);
    END LOOP;
END
$fn$;

-- As in version 14, and the sources' columns are checked before a refresh
-- that has changes to apply, which is full when a column was altered in a
-- way the query survives (file header).
CREATE OR REPLACE FUNCTION sluice._refresh_if_changed(id bigint)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st  sluice.stream_table_catalog;
    cur pg_snapshot;
    src record;
    has boolean;
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
            RETURN sluice._refresh(st.id, false);
        END IF;
        -- The window predicate of _refresh (cdc/sql/0004_cdc.sql).
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s b WHERE b.txid >= pg_snapshot_xmin($1) AND b.txid < pg_snapshot_xmax($2) '
                       'AND NOT pg_visible_in_snapshot(b.txid, $1) AND pg_visible_in_snapshot(b.txid, $2))', src.buffer)
           INTO has USING st.frontier, cur;
        IF has THEN
            -- true: a column was altered, and images of its old definition
            -- may be in the window (file header).
            RETURN sluice._refresh(st.id, sluice._st_check_columns(st.id, st.name));
        END IF;
    END LOOP;
    INSERT INTO sluice.stream_table_checks AS k (stream_table_id, checked_at)
    VALUES (st.id, clock_timestamp())
    ON CONFLICT (stream_table_id) DO UPDATE SET checked_at = excluded.checked_at;
    RETURN NULL;
END
$fn$;

-- Existing stream tables: their columns as the catalog has them now, from
-- a temporary view of the stored (schema-qualified) query. One that no
-- longer plans is skipped (it is or will be in error; re-validating it
-- records its columns).
DO $do$
DECLARE
    st record;
BEGIN
    FOR st IN SELECT c.id, c.query FROM sluice.stream_table_catalog c ORDER BY c.id LOOP
        BEGIN
            EXECUTE 'CREATE TEMP VIEW __sluice_m21 AS ' || st.query;
            PERFORM sluice._st_set_columns(st.id, 'pg_temp.__sluice_m21'::regclass);
            DROP VIEW pg_temp.__sluice_m21;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
END
$do$;
