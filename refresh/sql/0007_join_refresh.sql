-- refresh/sql/0007_join_refresh.sql - migration 7: differential joins.
--
-- The analyzer (refresh/analyze.c) now refreshes inner joins and chains of
-- LEFT JOINs differentially. What the driver needs for that:
--
--   * the change tables pg_temp.__sluice_chg_<relid> carry the buffer's seq
--     (__sluice_seq), so a table's state before the window can be rebuilt:
--     the first change of a key in capture order says whether the key
--     existed, and its 'D' image what the row was; large ones are analysed, so
--     the planner drives the generated joins from the changed keys, and JIT
--     is off for the refresh (its compile time dwarfs these statements);
--     stored rows are found with "= ANY (ARRAY(...))", an index lookup per
--     key, where the planner preferred to scan the whole stream table;
--   * a refresh unit other than the row identity: for a LEFT JOIN, the rows
--     of the first table (catalog column unit_columns, the stream table's
--     columns holding that table's primary key). The driver reads the old
--     rows of the affected units through an index _set_analysis creates.
--
-- _refresh and explain_stream_table are replaced whole; their earlier text
-- in 0005 is history.

ALTER TABLE sluice.stream_table_catalog ADD COLUMN unit_columns text[];
COMMENT ON COLUMN sluice.stream_table_catalog.unit_columns IS
    'DIFFERENTIAL refresh unit when not the row identity: columns holding the key of a LEFT JOIN''s first table';

DROP FUNCTION sluice._set_analysis(bigint, text, text, text, text, text, text);

-- sluice._set_analysis(id, analyzed_query, effective_mode, fallback_reason,
--                      operator_tree, affected_sql, recompute_sql,
--                      unit_columns) -> stored?
--
-- As in migration 5, plus unit_columns (see above): indexed on the stream
-- table when given.
CREATE FUNCTION sluice._set_analysis(id bigint, analyzed_query text, effective_mode text, fallback_reason text,
                                     operator_tree text, affected_sql text, recompute_sql text,
                                     unit_columns text[] DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st   sluice.stream_table_catalog;
    mode text := effective_mode;
    why  text := fallback_reason;
    ix   text;
BEGIN
    IF mode IS NULL OR mode NOT IN ('full', 'differential') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sluice._set_analysis: invalid effective_mode %s', coalesce(quote_literal(mode), 'NULL')),
            HINT = 'effective_mode is ''full'' or ''differential''.';
    END IF;
    IF mode = 'differential' AND (_set_analysis.affected_sql IS NULL OR _set_analysis.recompute_sql IS NULL) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'sluice._set_analysis: a differential analysis needs affected_sql and recompute_sql',
            HINT = 'Pass both, or effective_mode ''full'' with a fallback_reason.';
    END IF;
    SELECT * INTO st FROM sluice.stream_table_catalog c WHERE c.id = _set_analysis.id FOR UPDATE;
    IF NOT FOUND OR st.query IS DISTINCT FROM analyzed_query THEN
        RETURN false;
    END IF;
    IF st.requested_mode = 'full' THEN
        mode := 'full';
        why := 'refresh_mode full was requested';
    ELSIF st.key_columns IS NULL THEN
        mode := 'full';
        why := 'rows have no key (content identity)';
    END IF;
    -- The index the LEFT JOIN refresh reads old rows by, named after the
    -- table's oid; any other one of an earlier analysis goes.
    ix := format('%I.%I', (SELECT n.nspname FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
                            WHERE k.oid = st.relid),
                 '__sluice_units_' || st.relid);
    IF to_regclass(ix) IS NOT NULL THEN
        EXECUTE format('DROP INDEX %s', ix);
    END IF;
    IF mode = 'differential' AND _set_analysis.unit_columns IS NOT NULL THEN
        EXECUTE format('CREATE INDEX %I ON %s (%s)', '__sluice_units_' || st.relid, st.relid::regclass,
                       (SELECT string_agg(format('%I', u), ', ') FROM unnest(_set_analysis.unit_columns) u));
    END IF;
    UPDATE sluice.stream_table_catalog c
       SET analyzed_query = _set_analysis.analyzed_query, effective_mode = mode,
           unit_columns = CASE WHEN mode = 'differential' THEN _set_analysis.unit_columns END,
           fallback_reason = CASE WHEN mode = 'full' THEN why END,
           operator_tree = _set_analysis.operator_tree,
           affected_sql = _set_analysis.affected_sql, recompute_sql = _set_analysis.recompute_sql,
           status = CASE WHEN st.requested_mode = 'differential' AND mode = 'full' THEN 'error' ELSE c.status END,
           last_error = CASE WHEN st.requested_mode = 'differential' AND mode = 'full'
                             THEN 'differential refresh is not possible: ' || coalesce(why, 'no reason given')
                             ELSE c.last_error END,
           last_error_at = CASE WHEN st.requested_mode = 'differential' AND mode = 'full'
                                THEN clock_timestamp() ELSE c.last_error_at END
     WHERE c.id = st.id;
    RETURN true;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._set_analysis(bigint, text, text, text, text, text, text, text[]) FROM PUBLIC;

-- The refresh driver (see migration 5), with the changes above.
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

    -- 4. Old and new rows.
    storage := st.relid::regclass::text;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
      FROM pg_attribute a WHERE a.attrelid = st.relid AND a.attnum > 0 AND NOT a.attisdropped;
    PERFORM sluice._st_drop_temps();
    IF mode = 'full' THEN
        EXECUTE format('CREATE TEMP TABLE __sluice_new ON COMMIT DROP AS SELECT %s AS __sluice_row_id, __sluice_q.* FROM (%s) __sluice_q',
                       sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_q'), st.query);
        old_rel := storage;
    ELSE
        FOR src IN
            SELECT s.relid, b.buffer FROM sluice.stream_table_sources s
              JOIN sluice.cdc_sources b ON b.relid = s.relid
             WHERE s.stream_table_id = st.id
        LOOP
            IF to_regclass(format('pg_temp.%I', '__sluice_chg_' || src.relid)) IS NOT NULL THEN
                EXECUTE format('DROP TABLE pg_temp.%I', '__sluice_chg_' || src.relid);
            END IF;
            EXECUTE format('CREATE TEMP TABLE %I ON COMMIT DROP AS SELECT r.*, b.op AS __sluice_op, b.seq AS __sluice_seq FROM %s b CROSS JOIN LATERAL jsonb_populate_record(NULL::%s, b.img) r WHERE b.op <> ''T'' AND %s',
                           '__sluice_chg_' || src.relid, src.buffer, src.relid::regclass,
                           replace(replace(win, '$1', quote_literal(st.frontier::text) || '::pg_snapshot'),
                                   '$2', quote_literal(cur::text) || '::pg_snapshot'));
            -- Statistics for many changes, so the planner drives joins from
            -- the changed keys; a few are cheaper than an ANALYZE.
            GET DIAGNOSTICS nimg = ROW_COUNT;
            IF nimg >= 1000 THEN
                EXECUTE format('ANALYZE pg_temp.%I', '__sluice_chg_' || src.relid);
            END IF;
        END LOOP;
        -- The generated statements are cheap but their estimates can be
        -- large; JIT compilation would cost more than running them.
        PERFORM set_config('jit', 'off', true);
        EXECUTE format('CREATE TEMP TABLE __sluice_aff ON COMMIT DROP AS %s', st.affected_sql);
        IF st.unit_columns IS NULL THEN
            -- Units are rows or groups: the stored rows of those identities.
            EXECUTE format('CREATE TEMP TABLE __sluice_old ON COMMIT DROP AS SELECT __sluice_s.* FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id = ANY (ARRAY(SELECT %s FROM pg_temp.__sluice_aff __sluice_a))',
                           storage, sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_a'));
        ELSE
            -- Units are the first table's rows of a LEFT JOIN: every stored
            -- row of those (indexed by _set_analysis).
            SELECT string_agg(format('__sluice_s.%I', u), ', '), string_agg(format('%I', u), ', ')
              INTO ucols, uaff
              FROM unnest(st.unit_columns) u;
            EXECUTE format('CREATE TEMP TABLE __sluice_old ON COMMIT DROP AS SELECT __sluice_s.* FROM %s __sluice_s WHERE (%s) IN (SELECT %s FROM pg_temp.__sluice_aff)',
                           storage, ucols, uaff);
        END IF;
        EXECUTE format('CREATE TEMP TABLE __sluice_new ON COMMIT DROP AS SELECT %s AS __sluice_row_id, __sluice_r.* FROM (%s) __sluice_r',
                       sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_r'), st.recompute_sql);
        old_rel := 'pg_temp.__sluice_old';
    END IF;

    -- 5. The delta, by identity.
    -- Images are compared as jsonb: column types without an equality
    -- operator (json, point, ...) work too.
    EXECUTE format($q$
        CREATE TEMP TABLE __sluice_delta ON COMMIT DROP AS
        SELECT coalesce(__sluice_n.__sluice_row_id, __sluice_o.__sluice_row_id) AS row_id,
               CASE WHEN __sluice_o.__sluice_row_id IS NULL THEN 'insert'
                    WHEN __sluice_n.__sluice_row_id IS NULL THEN 'delete'
                    ELSE 'update' END AS op,
               CASE WHEN __sluice_o.__sluice_row_id IS NOT NULL THEN to_jsonb(__sluice_o) - '__sluice_row_id' END AS before,
               CASE WHEN __sluice_n.__sluice_row_id IS NOT NULL THEN to_jsonb(__sluice_n) - '__sluice_row_id' END AS after
          FROM %s __sluice_o
          FULL JOIN pg_temp.__sluice_new __sluice_n ON __sluice_n.__sluice_row_id = __sluice_o.__sluice_row_id
         WHERE __sluice_o.__sluice_row_id IS NULL OR __sluice_n.__sluice_row_id IS NULL
            OR to_jsonb(__sluice_o) IS DISTINCT FROM to_jsonb(__sluice_n)$q$, old_rel);

    -- 6. Apply it (an update is a delete and an insert of the row).
    -- "= ANY (ARRAY(...))": looked up through the primary key, whatever
    -- the planner would guess of a join with the temp table.
    EXECUTE format('DELETE FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id = ANY (ARRAY(SELECT __sluice_d.row_id FROM pg_temp.__sluice_delta __sluice_d WHERE __sluice_d.op <> ''insert''))',
                   storage);
    GET DIAGNOSTICS del = ROW_COUNT;
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM pg_temp.__sluice_new __sluice_n WHERE __sluice_n.__sluice_row_id IN (SELECT __sluice_d.row_id FROM pg_temp.__sluice_delta __sluice_d WHERE __sluice_d.op <> ''delete'')',
                   storage, cols, cols);
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
    PERFORM sluice._st_drop_temps();
    RETURN rid;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._refresh(bigint, boolean) FROM PUBLIC;

CREATE OR REPLACE FUNCTION sluice.explain_stream_table(name text)
RETURNS TABLE (property text, value text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st sluice.stream_table_catalog := sluice._st_lookup('sluice.explain_stream_table', name, false);
    current boolean := st.analyzed_query IS NOT DISTINCT FROM st.query;
BEGIN
    RETURN QUERY VALUES
        ('name', st.name),
        ('query', st.query_as_given),
        ('resolved query', st.query),
        ('requested mode', st.requested_mode),
        ('effective mode', CASE WHEN st.effective_mode IS NULL OR NOT current THEN 'full (not analysed yet)'
                                ELSE st.effective_mode END),
        ('fallback reason', CASE WHEN current THEN st.fallback_reason END),
        ('row identity', CASE WHEN st.key_columns IS NULL THEN 'content'
                              WHEN cardinality(st.key_columns) = 0 THEN 'single row'
                              ELSE 'key (' || array_to_string(st.key_columns, ', ') || ')' END),
        ('refresh unit', CASE WHEN NOT current OR st.effective_mode IS DISTINCT FROM 'differential' THEN NULL
                              WHEN st.unit_columns IS NULL THEN 'row identity'
                              ELSE 'rows of the first table, by (' || array_to_string(st.unit_columns, ', ') || ')' END),
        ('sources', (SELECT string_agg(s.relname || CASE WHEN s.is_stream_table THEN ' (stream table)' ELSE '' END,
                                       ', ' ORDER BY s.relname)
                       FROM sluice.stream_table_sources s WHERE s.stream_table_id = st.id)),
        ('operator tree', CASE WHEN current THEN st.operator_tree END),
        ('affected SQL', CASE WHEN current THEN st.affected_sql END),
        ('recompute SQL', CASE WHEN current THEN st.recompute_sql END),
        ('status', st.status || coalesce(': ' || st.last_error, ''));
END
$fn$;

REVOKE ALL ON FUNCTION sluice.explain_stream_table(text) FROM PUBLIC;
