-- refresh/sql/0013_scratch_tables.sql - migration 13: a session keeps the
-- refresh's work tables instead of creating and dropping them each time.
--
-- Up to version 12 every differential refresh created its work tables with
-- CREATE TEMP TABLE ... AS ... ON COMMIT DROP: the window's changes of each
-- source (__sluice_chg_<oid>), the old images of a joined source
-- (__sluice_before_<oid>), the affected keys (__sluice_aff), the stored and
-- recomputed rows (__sluice_old, __sluice_new) and the delta
-- (__sluice_delta). Creating and dropping a temporary table writes and
-- deletes its rows in pg_class, pg_attribute, pg_type and pg_depend and
-- sends relation cache invalidations; about 1.4 ms a table here, whatever
-- its size. For a refresh of a few changed rows that was most of its cost,
-- and it left dead catalog rows behind at the rate of the schedules (the
-- engine's sessions live for days; autovacuum has to clean the catalogs).
--
-- From this version those tables, but the affected keys, are kept by the
-- session between refreshes (ON COMMIT PRESERVE ROWS), one per source or
-- per stream table, and emptied at the start of the next refresh that uses
-- them (sluice._st_scratch):
--
--   pg_temp.__sluice_chg_<source oid>     the source's columns, __sluice_op,
--                                         __sluice_seq (as before)
--   pg_temp.__sluice_before_<source oid>  the source's columns (as before)
--   pg_temp.__sluice_old_<stream table id> __sluice_tid, the stream table's
--                                         columns
--   pg_temp.__sluice_new_<stream table id> the stream table's columns
--   pg_temp.__sluice_delta                row_id, op, before, after, tid (as
--                                         before; sluice._st_publish reads it)
--
-- A kept table is used only if its columns are still exactly those asked
-- for (names, types, type modifiers, collations; sluice._st_shape), else it
-- is dropped and created again: a source or stream table whose columns
-- changed gets new tables. Emptying is a DELETE while the table is small
-- (at most 8 pages) and its statistics cannot mislead the planner, else a
-- TRUNCATE; a refresh that leaves a table larger than that truncates it at
-- its end, so a large refresh does not hold its space until the next one.
-- A rolled-back refresh takes its new tables and its rows with it.
--
-- The affected keys keep the old way: their columns are whatever the
-- analysis's affected_sql returns, and the analysis refers to them by a
-- fixed name. A FULL refresh, whose new rows are the whole query result,
-- also keeps the old way for those (pg_temp.__sluice_new).
--
-- The tables are visible in the session that ran the refresh (\dt
-- pg_temp*.*) until it ends or runs DISCARD TEMP; nothing but the refresh
-- reads them.
--
-- Also, at the end of this file: three helpers every refresh calls, written
-- in SQL, are now PL/pgSQL (same results), because PostgreSQL parses and
-- plans a SQL function with a SET clause again at each call.
--
-- Measured (docs/benchmarks.md, "Small changes (migration 13)"): 10 orders
-- changed on the benchmark's set-up, a refresh with its commit in one
-- session, median of 40: the aggregate 10.8-12.1 -> 8.2-9.9 ms, the join
-- 16.1-18.2 -> 11.8-13.2 ms (three sessions each, without the helpers'
-- change, which saved another 0.3-2 ms inside the driver).

-- sluice._st_shape(rel) -> the column list of table rel as CREATE TABLE
-- reads it: "name type [COLLATE collation], ..." in column order, NULL for
-- a relation without columns. The same columns give the same text, so two
-- tables (or a table and the wanted columns of another) compare as text.
CREATE FUNCTION sluice._st_shape(rel oid)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    -- PL/pgSQL, not SQL: the session plans this statement once, where a
    -- SQL function's statement is parsed and planned at every call.
    RETURN (SELECT string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod))
                              || CASE WHEN a.attcollation <> t.typcollation
                                      THEN format(' COLLATE %I.%I', cn.nspname, c.collname) ELSE '' END,
                              ', ' ORDER BY a.attnum)
              FROM pg_attribute a
              JOIN pg_type t ON t.oid = a.atttypid
              LEFT JOIN pg_collation c ON c.oid = a.attcollation
              LEFT JOIN pg_namespace cn ON cn.oid = c.collnamespace
             WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_shape(oid) FROM PUBLIC;

-- sluice._st_scratch(name, shape, analysed)
--
-- Internal: makes pg_temp.<name> an empty table of the columns <shape> (as
-- sluice._st_shape writes them) that the session keeps after commit. An
-- existing table of other columns is dropped first. An existing table of
-- these columns is emptied: with DELETE when it has at most 8 pages and
-- either has no statistics or gets new ones after it is filled (analysed);
-- otherwise with TRUNCATE, which also forgets row counts that ANALYZE left
-- (a table analysed with 20,000 rows and filled with 10 would otherwise be
-- planned as 20,000).
--
-- When it creates a table, it also drops the session's kept tables of
-- stream tables and captured sources that no longer exist, so a session
-- that lives through many of them keeps only the tables of current ones.
CREATE FUNCTION sluice._st_scratch(name text, shape text, analysed boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rel   oid := to_regclass(format('pg_temp.%I', name));
    stale text;
BEGIN
    IF rel IS NOT NULL AND sluice._st_shape(rel) IS DISTINCT FROM shape THEN
        EXECUTE format('DROP TABLE pg_temp.%I', name);
        rel := NULL;
    END IF;
    IF rel IS NULL THEN
        FOR stale IN
            SELECT k.relname FROM pg_class k
             WHERE k.relnamespace = pg_my_temp_schema() AND k.relkind = 'r'
               AND CASE WHEN k.relname ~ '^__sluice_(old|new)_[0-9]+$'
                        THEN NOT EXISTS (SELECT 1 FROM sluice.stream_table_catalog c
                                          WHERE c.id = substring(k.relname FROM '[0-9]+$')::bigint)
                        WHEN k.relname ~ '^__sluice_(chg|before)_[0-9]+$'
                        THEN NOT EXISTS (SELECT 1 FROM sluice.cdc_sources b
                                          WHERE b.relid = substring(k.relname FROM '[0-9]+$')::oid)
                        ELSE false END
        LOOP
            EXECUTE format('DROP TABLE pg_temp.%I', stale);
        END LOOP;
        EXECUTE format('CREATE TEMP TABLE %I (%s)', name, shape);
    ELSIF pg_relation_size(rel) > 8 * current_setting('block_size')::bigint
          OR (NOT analysed AND (SELECT k.reltuples >= 0 FROM pg_class k WHERE k.oid = rel)) THEN
        EXECUTE format('TRUNCATE pg_temp.%I', name);
    ELSE
        EXECUTE format('DELETE FROM pg_temp.%I', name);
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_scratch(text, text, boolean) FROM PUBLIC;

-- sluice._st_scratch_release(names): truncates those of the kept tables
-- pg_temp.<name> that are larger than 8 pages, at the end of a refresh.
CREATE FUNCTION sluice._st_scratch_release(names text[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t   text;
    rel oid;
BEGIN
    FOREACH t IN ARRAY names LOOP
        rel := to_regclass(format('pg_temp.%I', t));
        IF rel IS NOT NULL AND pg_relation_size(rel) > 8 * current_setting('block_size')::bigint THEN
            EXECUTE format('TRUNCATE pg_temp.%I', t);
        END IF;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_scratch_release(text[]) FROM PUBLIC;

-- sluice._st_drop_temps(names): drops those of the temporary tables
-- pg_temp.<name> that exist, without the NOTICE of DROP ... IF EXISTS. (The
-- version without arguments, which sluice.alter_stream_table calls, drops
-- the four tables of version 5, the kept delta included.)
CREATE FUNCTION sluice._st_drop_temps(names text[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY names LOOP
        IF to_regclass(format('pg_temp.%I', t)) IS NOT NULL THEN
            EXECUTE format('DROP TABLE pg_temp.%I', t);
        END IF;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_drop_temps(text[]) FROM PUBLIC;

-- The refresh driver of migration 12 with the kept tables of this one.
CREATE OR REPLACE FUNCTION sluice._refresh(id bigint, force_full boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    started  timestamptz := clock_timestamp();
    st       sluice.stream_table_catalog;
    snap     pg_snapshot;
    cur      pg_snapshot;
    next_fr  pg_snapshot;
    src      record;
    -- The window predicate of cdc/sql/0004_cdc.sql, over buffer alias b,
    -- plus txid < xmax(cur), implied, for the index range.
    win      constant text := 'b.txid >= pg_snapshot_xmin($1) AND b.txid < pg_snapshot_xmax($2) AND NOT pg_visible_in_snapshot(b.txid, $1) AND pg_visible_in_snapshot(b.txid, $2)';
    changed  boolean := false;
    has      boolean;
    nchg     bigint;
    ntrunc   boolean;
    diff_ok  boolean;
    mode     text;
    storage  text;
    old_rel  text;
    cols     text;
    ucols    text;
    nimg     bigint;
    uaff     text;
    rid      bigint;
    nrows    bigint;
    ins      bigint;
    del      bigint;
    br       record;
    sets     text;
    scols    text;
    rcols    text;
    old_wm   text := current_setting('work_mem');
    old_jit  text := current_setting('jit');
    old_par  text := current_setting('max_parallel_workers_per_gather');
    pkcols   text;
    joined   boolean;
    joins    boolean := false;
    sshape   text;
    stshape  text;
    old_n    text := '__sluice_old_' || id;
    new_n    text := '__sluice_new_' || id;
    new_rel  text;
    kept     text[] := '{}';
BEGIN
    -- 1. Serialise refreshes of this stream table.
    SELECT * INTO st FROM sluice.stream_table_catalog c WHERE c.id = _refresh.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('sluice._refresh: no stream table has id %s', _refresh.id),
            HINT = 'Stream tables and their ids are in sluice.stream_table_catalog.';
    END IF;
    IF st.status = 'error' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('stream table %s is in error: %s', st.name, st.last_error),
            HINT = format('Fix the cause, then re-validate it with SELECT sluice.alter_stream_table(%L, query => ...) (the same query is fine), or drop it.',
                          st.name);
    END IF;

    -- 2. One state of the sources. A stream table over several tables must
    -- hold exactly their state at the frontier it stores: a join's next
    -- refresh rebuilds that state from the change buffers (old rows of
    -- changed keys), and a row the table holds from a later state could be
    -- missed. Under REPEATABLE READ (the engine's refreshes) every statement
    -- below sees the snapshot taken here. Under READ COMMITTED each statement
    -- would see later commits, so writers of the sources are held off for
    -- the refresh (SHARE lock, until commit) and the snapshot is taken once
    -- none is in progress.
    IF current_setting('transaction_isolation') = 'read committed'
       AND (SELECT count(*) FROM sluice.stream_table_sources s WHERE s.stream_table_id = st.id) > 1 THEN
        FOR src IN
            SELECT s.relid FROM sluice.stream_table_sources s
              JOIN pg_class k ON k.oid = s.relid
             WHERE s.stream_table_id = st.id ORDER BY s.relid
        LOOP
            EXECUTE format('LOCK TABLE %s IN SHARE MODE', src.relid::regclass);
        END LOOP;
    END IF;

    -- 3. The window (frontier, cur] and whether anything is in it.
    snap := pg_current_snapshot();
    cur := sluice._snap_own(snap, true);
    next_fr := sluice._snap_own(snap, false);
    diff_ok := NOT force_full AND st.effective_mode = 'differential' AND st.analyzed_query = st.query
               AND st.key_columns IS NOT NULL AND st.requested_mode <> 'full';
    mode := CASE WHEN diff_ok THEN 'differential' ELSE 'full' END;
    FOR src IN
        SELECT s.relid, s.relname, k.oid IS NULL AS gone, b.buffer, k.reltuples
          FROM sluice.stream_table_sources s
          LEFT JOIN pg_class k ON k.oid = s.relid
          LEFT JOIN sluice.cdc_sources b ON b.relid = s.relid
         WHERE s.stream_table_id = st.id
    LOOP
        IF src.gone OR src.buffer IS NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'undefined_table',
                MESSAGE = format('source %s of stream table %s no longer exists%s', src.relname, st.name,
                                 CASE WHEN src.gone THEN '' ELSE ' (its change capture is gone)' END),
                HINT = format('Recreate it and re-validate with SELECT sluice.alter_stream_table(%L, query => ...), or drop the stream table.',
                              st.name);
        END IF;
        CONTINUE WHEN force_full OR (changed AND mode = 'full');
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s b WHERE %s)', src.buffer, win)
           INTO has USING st.frontier, cur;
        CONTINUE WHEN NOT has;
        changed := true;
        IF mode = 'differential' THEN
            -- Too many changes, or a TRUNCATE: FULL for this cycle.
            EXECUTE format('SELECT count(*), coalesce(bool_or(b.op = ''T''), false) FROM %s b WHERE %s',
                           src.buffer, win)
               INTO nchg, ntrunc USING st.frontier, cur;
            IF ntrunc OR (src.reltuples >= 0 AND nchg > st.full_refresh_fraction * greatest(src.reltuples, 1)) THEN
                mode := 'full';
            END IF;
        END IF;
    END LOOP;
    IF NOT changed AND NOT force_full THEN
        UPDATE sluice.stream_table_catalog c
           SET frontier = next_fr, last_refresh_at = clock_timestamp()
         WHERE c.id = st.id;
        RETURN NULL;
    END IF;

    -- 4. Old and new rows. The statements below sort and hash sets of the
    -- size of the delta: at least 64 MB of work_mem (back to the caller's
    -- at the end).
    IF pg_size_bytes(old_wm) < 64 * 1024 * 1024 THEN
        PERFORM set_config('work_mem', '64MB', true);
    END IF;
    storage := st.relid::regclass::text;
    -- The stored columns, and the SET list of an update in step 6.
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
           string_agg(format('%I = __sluice_n.%I', a.attname, a.attname), ', ' ORDER BY a.attnum)
               FILTER (WHERE a.attname <> '__sluice_row_id')
      INTO cols, sets
      FROM pg_attribute a WHERE a.attrelid = st.relid AND a.attnum > 0 AND NOT a.attisdropped;
    -- The tables made for one refresh (a refresh earlier in this
    -- transaction leaves them until commit), and the delta's kept table.
    PERFORM sluice._st_drop_temps(ARRAY['__sluice_new', '__sluice_aff']);
    PERFORM sluice._st_scratch('__sluice_delta', 'row_id uuid, op text, before jsonb, after jsonb, tid tid', false);
    kept := kept || '__sluice_delta'::text;
    IF mode = 'full' THEN
        EXECUTE format('CREATE TEMP TABLE __sluice_new ON COMMIT DROP AS %s',
                       sluice._st_rows_sql(st.relid, st.query, st.key_columns, st.branches));
        old_rel := storage;
        new_rel := 'pg_temp.__sluice_new';
    ELSE
        FOR src IN
            SELECT s.relid, b.buffer FROM sluice.stream_table_sources s
              JOIN sluice.cdc_sources b ON b.relid = s.relid
             WHERE s.stream_table_id = st.id
        LOOP
            -- Read from the chunks (cdc/sql/0010_cdc_chunks.sql), a chunk's
            -- images in one call, with the view's seq (chunk * 1024 + position).
            -- (Source columns may be called like the chunk table's: r.x.)
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
                   string_agg('r.' || quote_ident(a.attname), ', ' ORDER BY a.attnum)
              INTO scols, rcols
              FROM pg_attribute a WHERE a.attrelid = src.relid AND a.attnum > 0 AND NOT a.attisdropped;
            sshape := sluice._st_shape(src.relid);
            PERFORM sluice._st_scratch('__sluice_chg_' || src.relid, sshape || ', __sluice_op "char", __sluice_seq bigint', false);
            kept := kept || ('__sluice_chg_' || src.relid);
            EXECUTE format('INSERT INTO pg_temp.%I (%s, __sluice_op, __sluice_seq) SELECT %s, b.op, b.seq * 1024 + r.__sluice_pos - 1 FROM sluice_changes.%I b CROSS JOIN LATERAL json_populate_recordset(NULL::%s, array_to_json(b.imgs)) WITH ORDINALITY AS r(%s, __sluice_pos) WHERE b.op <> ''T'' AND %s',
                           '__sluice_chg_' || src.relid, scols, rcols, 'c_' || src.relid || '_chunks', src.relid::regclass,
                           scols,
                           replace(replace(win, '$1', quote_literal(st.frontier::text) || '::pg_snapshot'),
                                   '$2', quote_literal(cur::text) || '::pg_snapshot'));
            GET DIAGNOSTICS nimg = ROW_COUNT;
            -- The old images of the touched keys, when the analysis joins
            -- this table with others (analyze.c, out_old_state): for every
            -- key, its first image if its first change removed a row.
            joined := concat(st.affected_sql, st.branch_analysis::text) ~ ('__sluice_before_' || src.relid || '\D');
            -- Statistics for many changes; a few are cheaper than an
            -- ANALYZE (the generated SQL reads this table's keys through
            -- = ANY and NOT IN, where estimates matter little).
            IF nimg >= 1000 THEN
                EXECUTE format('ANALYZE pg_temp.%I', '__sluice_chg_' || src.relid);
            END IF;
            CONTINUE WHEN NOT joined;
            joins := true;
            SELECT string_agg(quote_ident(a.attname), ', ') INTO pkcols
              FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = src.relid AND i.indisprimary;
            IF pkcols IS NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'object_not_in_prerequisite_state',
                    MESSAGE = format('source %s of stream table %s has no primary key any more', src.relid::regclass, st.name),
                    HINT = format('Add it back, or re-validate the stream table with SELECT sluice.alter_stream_table(%L, query => ...).',
                                  st.name);
            END IF;
            PERFORM sluice._st_scratch('__sluice_before_' || src.relid, sshape, true);
            kept := kept || ('__sluice_before_' || src.relid);
            EXECUTE format('INSERT INTO pg_temp.%I (%s) SELECT %s FROM (SELECT DISTINCT ON (%s) * FROM pg_temp.%I ORDER BY %s, __sluice_seq) __sluice_f WHERE __sluice_op = ''D''',
                           '__sluice_before_' || src.relid, scols, scols, pkcols, '__sluice_chg_' || src.relid, pkcols);
            -- Always: the terms over the old state start from these rows (a
            -- temporary table without statistics is taken to have hundreds
            -- of rows, and the join from it would read a whole source).
            EXECUTE format('ANALYZE pg_temp.%I', '__sluice_before_' || src.relid);
        END LOOP;
        -- The generated statements are cheap but their estimates can be
        -- large; JIT compilation would cost more than running them, and
        -- parallel workers would start for nothing (see the file header).
        PERFORM set_config('jit', 'off', true), set_config('max_parallel_workers_per_gather', '0', true);
        -- The stored rows of the affected units (with their tuple ids) and
        -- their recomputed rows, typed like the stream table.
        stshape := sluice._st_shape(st.relid);
        PERFORM sluice._st_scratch(old_n, '__sluice_tid tid, ' || stshape, false),
                sluice._st_scratch(new_n, stshape, false);
        kept := kept || old_n || new_n;
        old_rel := format('pg_temp.%I', old_n);
        new_rel := format('pg_temp.%I', new_n);
        IF st.branch_analysis IS NOT NULL THEN
            -- A UNION ALL: each branch's affected rows, stored and
            -- recomputed, with the branch's own row ids, into one old and
            -- one new set (typed like the stream table: a branch's columns
            -- may have narrower types than the union's).
            FOR br IN
                SELECT a.v AS sql, ARRAY(SELECT jsonb_array_elements_text(st.branches -> (a.n::int - 1) -> 'keys')) AS keys,
                       a.n::int AS n
                  FROM jsonb_array_elements(st.branch_analysis) WITH ORDINALITY AS a(v, n)
                 ORDER BY a.n
            LOOP
                IF to_regclass('pg_temp.__sluice_aff') IS NOT NULL THEN
                    DROP TABLE pg_temp.__sluice_aff;
                END IF;
                EXECUTE format('CREATE TEMP TABLE __sluice_aff ON COMMIT DROP AS %s', br.sql ->> 'affected');
                IF joins THEN
                    ANALYZE pg_temp.__sluice_aff;
                END IF;
                EXECUTE format('INSERT INTO %s SELECT __sluice_s.ctid, __sluice_s.* FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id = ANY (ARRAY(SELECT %s FROM pg_temp.__sluice_aff __sluice_a))',
                               old_rel, storage, sluice._st_branch_identity_sql(st.relid, br.keys, '__sluice_a', br.n));
                EXECUTE format('INSERT INTO %s SELECT %s, __sluice_r.* FROM (%s) __sluice_r',
                               new_rel, sluice._st_branch_identity_sql(st.relid, br.keys, '__sluice_r', br.n),
                               br.sql ->> 'recompute');
            END LOOP;
        ELSE
            EXECUTE format('CREATE TEMP TABLE __sluice_aff ON COMMIT DROP AS %s', st.affected_sql);
            -- A join's recompute_sql is driven from these keys too.
            IF joins THEN
                ANALYZE pg_temp.__sluice_aff;
            END IF;
            IF st.unit_columns IS NULL THEN
                -- Units are rows or groups: the stored rows of those identities.
                EXECUTE format('INSERT INTO %s SELECT __sluice_s.ctid, __sluice_s.* FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id = ANY (ARRAY(SELECT %s FROM pg_temp.__sluice_aff __sluice_a))',
                               old_rel, storage, sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_a'));
            ELSE
                -- Units are the first table's rows of a LEFT JOIN: every stored
                -- row of those (indexed by _set_analysis).
                SELECT string_agg(format('__sluice_s.%I', u), ', '), string_agg(format('%I', u), ', ')
                  INTO ucols, uaff
                  FROM unnest(st.unit_columns) u;
                EXECUTE format('INSERT INTO %s SELECT __sluice_s.ctid, __sluice_s.* FROM %s __sluice_s WHERE (%s) IN (SELECT %s FROM pg_temp.__sluice_aff)',
                               old_rel, storage, ucols, uaff);
            END IF;
            EXECUTE format('INSERT INTO %s (%s) SELECT %s AS __sluice_row_id, __sluice_r.* FROM (%s) __sluice_r',
                           new_rel, cols, sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_r'), st.recompute_sql);
        END IF;
    END IF;

    -- 5. The delta, by identity. Rows whose columns are identical byte for
    -- byte are unchanged; the others get their images, built once (OFFSET
    -- 0 keeps the subquery, so its image expressions are not copied into
    -- the outer filter), and are compared as jsonb: column types without
    -- an equality operator (json, point, ...) work too. Images are built
    -- column by column (sluice._st_image_sql), never from a temporary
    -- table's whole row: see migration 9.
    EXECUTE format($q$
        INSERT INTO pg_temp.__sluice_delta (row_id, op, before, after, tid)
        SELECT __sluice_x.row_id, __sluice_x.op, __sluice_x.before, __sluice_x.after, __sluice_x.tid
          FROM (SELECT coalesce(__sluice_n.__sluice_row_id, __sluice_o.__sluice_row_id) AS row_id,
                       __sluice_o.%s AS tid,
                       CASE WHEN __sluice_o.__sluice_row_id IS NULL THEN 'insert'
                            WHEN __sluice_n.__sluice_row_id IS NULL THEN 'delete'
                            ELSE 'update' END AS op,
                       CASE WHEN __sluice_o.__sluice_row_id IS NOT NULL THEN %s END AS before,
                       CASE WHEN __sluice_n.__sluice_row_id IS NOT NULL THEN %s END AS after
                  FROM %s __sluice_o
                  FULL JOIN %s __sluice_n ON __sluice_n.__sluice_row_id = __sluice_o.__sluice_row_id
                 WHERE __sluice_o.__sluice_row_id IS NULL OR __sluice_n.__sluice_row_id IS NULL
                    OR NOT (%s)
                OFFSET 0) __sluice_x
         WHERE __sluice_x.op <> 'update' OR __sluice_x.before IS DISTINCT FROM __sluice_x.after$q$,
        CASE WHEN mode = 'full' THEN 'ctid' ELSE '__sluice_tid' END,
        sluice._st_image_sql(st.relid, '__sluice_o'), sluice._st_image_sql(st.relid, '__sluice_n'), old_rel, new_rel,
        sluice._st_same_sql(st.relid, '__sluice_o', '__sluice_n'));

    -- 6. Apply it: deleted rows, updated rows in place, new rows. Stored
    -- rows are found by the tuple ids read in step 4 (this transaction
    -- holds the stream table's catalog row, so no other refresh moved
    -- them): a TID scan, not a second index lookup.
    -- "= ANY (ARRAY(...))": whatever the planner would guess of a join
    -- with the temp table.
    EXECUTE format('DELETE FROM %s __sluice_s WHERE __sluice_s.ctid = ANY (ARRAY(SELECT __sluice_d.tid FROM pg_temp.__sluice_delta __sluice_d WHERE __sluice_d.op = ''delete''))',
                   storage);
    GET DIAGNOSTICS del = ROW_COUNT;
    IF sets IS NOT NULL THEN
        EXECUTE format('UPDATE %s __sluice_s SET %s FROM %s __sluice_n WHERE __sluice_s.ctid = ANY (ARRAY(SELECT __sluice_d.tid FROM pg_temp.__sluice_delta __sluice_d WHERE __sluice_d.op = ''update'')) AND __sluice_n.__sluice_row_id = __sluice_s.__sluice_row_id',
                       storage, sets, new_rel);
    END IF;
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM %s __sluice_n WHERE __sluice_n.__sluice_row_id IN (SELECT __sluice_d.row_id FROM pg_temp.__sluice_delta __sluice_d WHERE __sluice_d.op = ''insert'')',
                   storage, cols, cols, new_rel);
    GET DIAGNOSTICS ins = ROW_COUNT;
    IF mode = 'full' THEN
        SELECT count(*) INTO nrows FROM pg_temp.__sluice_new;
    ELSE
        nrows := coalesce(st.rows, 0) + ins - del;
    END IF;

    -- 7. Outbox, history, notifications.
    rid := sluice._st_publish(st, mode, started);

    -- 8. Advance; prune what every reader of each source has seen.
    UPDATE sluice.stream_table_catalog c
       SET frontier = next_fr, last_refresh_at = clock_timestamp(),
           last_refresh_ms = 1000 * extract(epoch FROM clock_timestamp() - started),
           last_refresh_mode = mode, rows = nrows, consecutive_failures = 0
     WHERE c.id = st.id;
    FOR src IN
        SELECT s.relid,
               sluice._snap_intersect(ARRAY(SELECT c.frontier FROM sluice.stream_table_sources s2
                                              JOIN sluice.stream_table_catalog c ON c.id = s2.stream_table_id
                                             WHERE s2.relid = s.relid)) AS horizon
          FROM sluice.stream_table_sources s
         WHERE s.stream_table_id = st.id
    LOOP
        PERFORM sluice.cdc_prune(src.relid::regclass, src.horizon);
    END LOOP;
    PERFORM sluice._st_drop_temps(ARRAY['__sluice_new', '__sluice_aff']);
    PERFORM sluice._st_scratch_release(kept);
    PERFORM set_config('work_mem', old_wm, true), set_config('jit', old_jit, true),
            set_config('max_parallel_workers_per_gather', old_par, true);
    RETURN rid;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._refresh(bigint, boolean) FROM PUBLIC;

-- Three helpers of every refresh, from SQL to PL/pgSQL with the same
-- results: a SQL function with a SET clause is never inlined, and its
-- statement is parsed and planned again at each call (0.1-0.3 ms each
-- here); PL/pgSQL plans it once per session. Versions 9, 11 and 5 explain
-- what they compute.
CREATE OR REPLACE FUNCTION sluice._st_image_sql(relid oid, alias text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN (SELECT coalesce(string_agg(part, ' || ' ORDER BY chunk), '''{}''::jsonb')
              FROM (SELECT c.chunk, format('jsonb_build_object(%s)',
                                           string_agg(format('%L, %I.%I', c.attname, alias, c.attname), ', '
                                                      ORDER BY c.attnum)) AS part
                      FROM (SELECT a.attname, a.attnum, (row_number() OVER (ORDER BY a.attnum) - 1) / 50 AS chunk
                              FROM pg_attribute a
                             WHERE a.attrelid = relid AND a.attnum > 0 AND NOT a.attisdropped
                               AND a.attname <> '__sluice_row_id') c
                     GROUP BY c.chunk) p);
END
$fn$;

CREATE OR REPLACE FUNCTION sluice._st_same_sql(relid oid, a text, b text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN (SELECT coalesce(format('pg_catalog.record_image_eq(ROW(%s), ROW(%s))',
                                   string_agg(format('%I.%I', a, c.attname), ', ' ORDER BY c.attnum),
                                   string_agg(format('%I.%I', b, c.attname), ', ' ORDER BY c.attnum)),
                            'true')
              FROM pg_attribute c
             WHERE c.attrelid = relid AND c.attnum > 0 AND NOT c.attisdropped AND c.attname <> '__sluice_row_id');
END
$fn$;

CREATE OR REPLACE FUNCTION sluice._snap_intersect(snaps pg_snapshot[])
RETURNS pg_snapshot
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN (WITH b AS (SELECT min(pg_snapshot_xmin(s)) AS lo, min(pg_snapshot_xmax(s)) AS hi
                         FROM unnest(snaps) s)
            SELECT format('%s:%s:%s', least(b.lo, b.hi), b.hi,
                          (SELECT coalesce(string_agg(x::text, ',' ORDER BY x), '')
                             FROM (SELECT DISTINCT x FROM unnest(snaps) s, pg_snapshot_xip(s) x
                                    WHERE x >= least(b.lo, b.hi) AND x < b.hi) xs))::pg_snapshot
              FROM b
             WHERE b.hi IS NOT NULL);
END
$fn$;
