-- refresh/sql/0035_kept_affected_keys.sql - migration 35: the affected
-- keys of a differential refresh go into a table the session keeps, like
-- the refresh's other work tables since migration 13.
--
-- Migration 13 kept every work table of a refresh between refreshes but
-- one: the affected keys (the rows of the analysis's affected_sql), whose
-- columns are whatever that SQL returns and which the analysis reads by a
-- fixed name, pg_temp."__sluice_aff". So every differential refresh still
-- created that table (CREATE TEMP TABLE ... AS, ON COMMIT DROP) and
-- dropped it: rows written to and deleted from pg_class, pg_attribute,
-- pg_type and pg_depend, and cache invalidations, at the rate of the
-- schedules, in engine sessions that live for days: 100 refreshes of one
-- changed row wrote 2,763-2,989 rows of those four catalogs (by hand,
-- scripts/dev-env, pg_stat_sys_tables), against 189-415 with this version,
-- all of them from the first refresh of the session making its tables.
-- The time it saves is within the noise of one refresh of a few rows
-- (docs/benchmarks.md, "Small changes (migration 35)").
--
-- Now each stream table has its own kept table of affected keys,
-- pg_temp.__sluice_aff_<id> (a UNION ALL: __sluice_aff_<id>_<branch>),
-- made by sluice._st_affected from affected_sql (CREATE TABLE ... AS ...
-- WITH NO DATA) and emptied at each refresh like the others (DELETE while
-- small and without misleading statistics, else TRUNCATE; truncated at
-- the end of a refresh that grew it past 8 pages). It is made again when
-- affected_sql or the columns of a source change (the session setting
-- sluice.scratch.<name> holds a digest of both, as migration 27 does for
-- the other kept tables): a kept table's columns are then those the SQL
-- returns now. The recompute SQL is run with the kept table's name in
-- place of pg_temp."__sluice_aff", the one spelling of it the analyzer
-- has ever written (refresh/analyze.c, out_aff), or pg_temp.__sluice_aff,
-- as a hand-written analysis may spell it (docs/stream-tables.md), so no
-- stream table needs to be analysed again. The old way stays for a query
-- that itself contains the text __sluice_aff (no text of the user's is
-- replaced) and for recompute SQL that names the table any other way.
--
-- A kept table of a stream table that no longer exists is dropped when the
-- session next makes one, as sluice._st_scratch does for the others.

-- sluice._st_affected(suffix, sql, recompute, token, analysed, may_keep)
-- -> (name, recompute)
--
-- Fills the table of the affected keys of one refresh with the rows of
-- sql, and returns its name in pg_temp and the recompute SQL that reads
-- it. The table is the kept __sluice_aff_<suffix> (made, or made again
-- when sql or token, the sources' columns, differ from those it was made
-- for; the recompute SQL is returned with its name in place of
-- pg_temp."__sluice_aff", as the analyzer writes it, or
-- pg_temp.__sluice_aff, as a hand-written analysis may) when may_keep and
-- the recompute SQL names the table in no other way; else a table made
-- for this transaction as before, __sluice_aff, and the recompute SQL as
-- it is. With analysed the table gets statistics (ANALYZE) once filled.
CREATE FUNCTION sluice._st_affected(suffix text, sql text, recompute text, token text, analysed boolean,
                                    may_keep boolean, OUT name text, OUT recompute_sql text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- The table as the recompute SQL reads it (a subquery over it is
    -- named ) AS "__sluice_aff" by the analyzer).
    spelled constant text := 'pg_temp\.("__sluice_aff"|__sluice_aff\M)';
    keep  boolean := may_keep
                     AND regexp_replace(recompute, spelled || '|\) AS "__sluice_aff"', '', 'g') !~ '__sluice_aff';
    rel   oid;
    want  text := md5(sql || chr(1) || token);
    stale text;
BEGIN
    name := CASE WHEN keep THEN '__sluice_aff_' || suffix ELSE '__sluice_aff' END;
    rel := to_regclass(format('pg_temp.%I', name));
    recompute_sql := CASE WHEN keep THEN regexp_replace(recompute, spelled, 'pg_temp.' || quote_ident(name), 'g')
                          ELSE recompute END;
    IF NOT keep THEN
        IF rel IS NOT NULL THEN
            DROP TABLE pg_temp.__sluice_aff;
        END IF;
        EXECUTE format('CREATE TEMP TABLE __sluice_aff ON COMMIT DROP AS %s', sql);
    ELSE
        IF rel IS NOT NULL AND current_setting('sluice.scratch.' || name, true) IS DISTINCT FROM want THEN
            EXECUTE format('DROP TABLE pg_temp.%I', name);
            rel := NULL;
        END IF;
        IF rel IS NULL THEN
            FOR stale IN
                SELECT k.relname FROM pg_class k
                 WHERE k.relnamespace = pg_my_temp_schema() AND k.relkind = 'r'
                   AND k.relname ~ '^__sluice_aff_[0-9]+(_[0-9]+)?$'
                   AND NOT EXISTS (SELECT 1 FROM sluice.stream_table_catalog c
                                    WHERE c.id = substring(k.relname FROM '^__sluice_aff_([0-9]+)')::bigint)
            LOOP
                EXECUTE format('DROP TABLE pg_temp.%I', stale);
                PERFORM set_config('sluice.scratch.' || stale, '', false);
            END LOOP;
            EXECUTE format('CREATE TEMP TABLE %I AS %s WITH NO DATA', name, sql);
            PERFORM set_config('sluice.scratch.' || name, want, false);
        ELSIF pg_relation_size(rel) > 8 * current_setting('block_size')::bigint
              OR (NOT analysed AND (SELECT k.reltuples >= 0 FROM pg_class k WHERE k.oid = rel)) THEN
            EXECUTE format('TRUNCATE pg_temp.%I', name);
        ELSE
            EXECUTE format('DELETE FROM pg_temp.%I', name);
        END IF;
        EXECUTE format('INSERT INTO pg_temp.%I %s', name, sql);
    END IF;
    IF analysed THEN
        EXECUTE format('ANALYZE pg_temp.%I', name);
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_affected(text, text, text, text, boolean, boolean) FROM PUBLIC;

-- sluice._refresh(id, force_full): migration 26's driver, with the
-- affected keys in kept tables (sluice._st_affected, above).
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
    keep_aff boolean;        -- the affected keys in kept tables (below)
    aff_n    text;           -- the table of the affected keys (in pg_temp)
    aff_rel  text;
    recompute text;          -- the recompute SQL over that table
    aff_tok  text := '';     -- the sources' columns, for sluice._st_affected
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
    -- The affected keys go into a table kept by the session for this
    -- stream table (version 35; sluice._st_affected), not one made and
    -- dropped at every refresh, unless the query itself has the text
    -- __sluice_aff: the recompute SQL is run with that table's name in
    -- place of pg_temp.__sluice_aff, and no text of the user's may be
    -- replaced.
    keep_aff := position('__sluice_aff' IN st.query) = 0;

    -- 2. One state of the sources. A stream table over several tables must
    -- hold exactly their state at the frontier it stores: a join's next
    -- refresh rebuilds that state from the change buffers (old rows of
    -- changed keys), and a row the table holds from a later state could be
    -- missed. Under REPEATABLE READ (the engine's refreshes) every statement
    -- below sees the snapshot taken here. Under READ COMMITTED each statement
    -- would see later commits, so writers of the sources are held off for
    -- the refresh (SHARE lock, until commit) and the snapshot is taken once
    -- none is in progress. The same holds for aggregates kept from the
    -- changes (version 20): the groups its statement recomputes from the
    -- table must not include a later change, which the next refresh would
    -- then add to them a second time. And for one table read twice, in a
    -- self-join or by a subquery in WHERE (version 24): its state before
    -- the window is rebuilt like a join's.
    IF current_setting('transaction_isolation') = 'read committed'
       AND ((SELECT count(*) FROM sluice.stream_table_sources s WHERE s.stream_table_id = st.id) > 1
            OR starts_with(st.recompute_sql, 'WITH "__sluice_dg"')
            OR concat(st.affected_sql, st.branch_analysis::text) ~ '__sluice_before_[0-9]') THEN
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
            aff_tok := aff_tok || src.relid || ' ' || sshape || chr(1);
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
                SELECT a.name, a.recompute_sql INTO aff_n, recompute
                  FROM sluice._st_affected(st.id || '_' || br.n, br.sql ->> 'affected', br.sql ->> 'recompute',
                                           aff_tok, joins, keep_aff) a;
                aff_rel := format('pg_temp.%I', aff_n);
                kept := kept || aff_n;
                EXECUTE format('INSERT INTO %s SELECT __sluice_s.ctid, __sluice_s.* FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id = ANY (ARRAY(SELECT %s FROM %s __sluice_a))',
                               old_rel, storage, sluice._st_branch_identity_sql(st.relid, br.keys, '__sluice_a', br.n), aff_rel);
                EXECUTE format('INSERT INTO %s SELECT %s, __sluice_r.* FROM (%s) __sluice_r',
                               new_rel, sluice._st_branch_identity_sql(st.relid, br.keys, '__sluice_r', br.n),
                               recompute);
            END LOOP;
        ELSE
            -- (Analysed for a join: its recompute_sql is driven from these
            -- keys too.)
            SELECT a.name, a.recompute_sql INTO aff_n, recompute
              FROM sluice._st_affected(st.id::text, st.affected_sql, st.recompute_sql, aff_tok, joins, keep_aff) a;
            aff_rel := format('pg_temp.%I', aff_n);
            kept := kept || aff_n;
            IF st.unit_columns IS NULL THEN
                -- Units are rows or groups: the stored rows of those identities.
                EXECUTE format('INSERT INTO %s SELECT __sluice_s.ctid, __sluice_s.* FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id = ANY (ARRAY(SELECT %s FROM %s __sluice_a))',
                               old_rel, storage, sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_a'), aff_rel);
            ELSE
                -- Units are the first table's rows of a LEFT JOIN: every stored
                -- row of those (indexed by _set_analysis).
                SELECT string_agg(format('__sluice_s.%I', u), ', '), string_agg(format('%I', u), ', ')
                  INTO ucols, uaff
                  FROM unnest(st.unit_columns) u;
                EXECUTE format('INSERT INTO %s SELECT __sluice_s.ctid, __sluice_s.* FROM %s __sluice_s WHERE (%s) IN (SELECT %s FROM %s)',
                               old_rel, storage, ucols, uaff, aff_rel);
                -- Units with a NULL part (a window's partition by a column
                -- with NULLs, since migration 26), which IN does not find:
                -- the stored rows with a NULL part, compared whole.
                EXECUTE format('INSERT INTO %1$s SELECT __sluice_s.ctid, __sluice_s.* FROM %2$s __sluice_s '
                               'WHERE (%3$s) AND EXISTS (SELECT FROM %7$s __sluice_a WHERE (%4$s) IS NOT DISTINCT FROM (%5$s)) '
                               'AND (SELECT count(*) > 0 FROM %7$s WHERE %6$s)',
                               old_rel, storage,
                               (SELECT string_agg(format('__sluice_s.%I IS NULL', u), ' OR ') FROM unnest(st.unit_columns) u),
                               (SELECT 'ROW(' || string_agg(format('__sluice_a.%I', u), ', ') || ')' FROM unnest(st.unit_columns) u),
                               (SELECT 'ROW(' || string_agg(format('__sluice_s.%I', u), ', ') || ')' FROM unnest(st.unit_columns) u),
                               (SELECT string_agg(format('%I IS NULL', u), ' OR ') FROM unnest(st.unit_columns) u),
                               aff_rel);
            END IF;
            EXECUTE format('INSERT INTO %s (%s) SELECT %s AS __sluice_row_id, __sluice_r.* FROM (%s) __sluice_r',
                           new_rel, cols, sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_r'),
                           recompute);
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

