-- refresh/sql/0009_union_all.sql - migration 9: differential UNION ALL.
--
-- A row of `A UNION ALL B` is identified by its branch and by the row
-- identity inside that branch: a row of A and a row of B with equal keys
-- (or equal content) are two rows. Until now such a query had content
-- identity and was refreshed in full. From this version on:
--
--   * sluice._st_union_all_branches(query) cuts a stored query (the text of
--     pg_get_viewdef, see migration 5) at its top-level UNION ALLs;
--   * sluice._st_branches(query, relid) gives, when every branch has a row
--     identity of its own (the same rules as a whole query,
--     sluice._st_select_keys), the branches with their key columns; the
--     catalog keeps them in the new column `branches` (a trigger keeps it in
--     step with query and key_columns) and key_columns is then every column
--     that is a key in some branch (sluice._st_key_columns, replaced);
--   * the row id of a row of branch n is md5(jsonb_build_array(n, k1, ...)):
--     the branch number first, so the same keys in two branches are two ids
--     (sluice._st_branch_identity_sql); a FULL refresh computes it branch by
--     branch (sluice._st_rows_sql);
--   * the analysis of a UNION ALL is one affected/recompute pair per branch
--     (new column `branch_analysis`, stored by _set_analysis), which the
--     driver runs branch after branch into one set of old and new rows.
--
-- Also here:
--   * a new or changed query, or an alter_stream_table that clears the
--     analysis of an unchanged one, rings the engine (pg_notify on
--     sluice_changes, the capture doorbell of migration 8) from the same
--     trigger, so the engine analyses it at once rather than at its next
--     safety poll;
--   * the delta's row images are built column by column
--     (sluice._st_image_sql: jsonb_build_object('column', alias.column,
--     ...), the same jsonb value as to_jsonb of the row). Up to migration 8
--     the driver wrote to_jsonb(<alias>) of whole rows, also of the
--     temporary tables __sluice_old and __sluice_new that every refresh
--     creates. Each of those has a row type of its own, and PostgreSQL 15
--     keeps every row type it was asked about in the session's type cache
--     for the session's life and walks the whole cache on every relation
--     cache invalidation, of which the refresh's temporary tables send many:
--     a refresh's cost grew with the number of refreshes its session had
--     done. Replaying the property test's statements in one session:
--     16.5 ms per refresh over cycles 0-99, 81 ms over cycles 900-999 (perf:
--     71 % of the backend's time in hash_seq_search under
--     TypeCacheRelCallback); built column by column, 15.6 and 12 ms. The
--     engine's workers keep their sessions for days;
--   * stored analyses are cleared so the engine redoes them: the analyzer
--     now restricts the recompute of a stream table with a single row (an
--     aggregate without GROUP BY) to refreshes whose changes reach it; the
--     earlier analysis recomputed that row for any change, and a change its
--     WHERE clause filtered out made the refresh insert the row twice (a
--     duplicate-key error until a change passed the filter).

ALTER TABLE sluice.stream_table_catalog ADD COLUMN branches jsonb, ADD COLUMN branch_analysis jsonb;
COMMENT ON COLUMN sluice.stream_table_catalog.branches IS
    'UNION ALL whose branches all have a row identity: [{"query": text, "keys": [column, ...]}, ...], in order; NULL otherwise';
COMMENT ON COLUMN sluice.stream_table_catalog.branch_analysis IS
    'DIFFERENTIAL UNION ALL: [{"affected": sql, "recompute": sql}, ...], one per branch';

-- sluice._st_union_all_branches(query) -> the branches of a top-level
-- UNION ALL, or NULL
--
-- query is a stored query (pg_get_viewdef's text: no comments, no dollar
-- quoting). Tokens are string literals, quoted identifiers, words,
-- whitespace and single characters; parentheses set the depth. The query is
-- cut at every depth-0 UNION ALL. NULL (no split) when there is none, when
-- another set operation, ORDER BY, LIMIT, OFFSET, FETCH, FOR or WITH is at
-- depth 0 (they would apply to the whole union), or when an E'...' string
-- is present (its backslash escapes are not followed here).
CREATE FUNCTION sluice._st_union_all_branches(query text)
RETURNS text[]
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tok   text;
    prev  text := '';
    word  text;
    depth int := 0;
    cur   text := '';
    parts text[] := '{}';
    union_at boolean := false; -- the last word at depth 0 was UNION
BEGIN
    FOR tok IN
        SELECT m.t[1]
          FROM regexp_matches(query, '(''(?:[^'']|'''')*''|"(?:[^"]|"")*"|[[:alpha:]_][[:alnum:]_$]*|\s+|.)', 'g')
               WITH ORDINALITY AS m(t, n)
         ORDER BY m.n
    LOOP
        IF left(tok, 1) = '''' AND upper(prev) IN ('E', 'U&') THEN
            RETURN NULL;
        END IF;
        prev := tok;
        IF tok = '(' THEN
            depth := depth + 1;
        ELSIF tok = ')' THEN
            depth := depth - 1;
        ELSIF depth = 0 AND tok ~ '^[[:alpha:]_]' THEN
            word := upper(tok);
            IF union_at THEN
                IF word <> 'ALL' THEN
                    RETURN NULL; -- UNION [DISTINCT]
                END IF;
                parts := parts || btrim(cur, E' \t\r\n');
                cur := '';
                union_at := false;
                CONTINUE;
            END IF;
            IF word = 'UNION' THEN
                union_at := true;
                CONTINUE;
            END IF;
            IF word IN ('INTERSECT', 'EXCEPT', 'ORDER', 'LIMIT', 'OFFSET', 'FETCH', 'FOR', 'WITH') THEN
                RETURN NULL;
            END IF;
        END IF;
        CONTINUE WHEN union_at AND tok ~ '^\s+$';
        IF union_at THEN
            RETURN NULL; -- UNION followed by something other than a word
        END IF;
        cur := cur || tok;
    END LOOP;
    IF cardinality(parts) = 0 OR union_at THEN
        RETURN NULL;
    END IF;
    RETURN parts || btrim(cur, E' \t\r\n');
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_union_all_branches(text) FROM PUBLIC;

-- The whole-query rules of migration 5 keep their code under a new name;
-- sluice._st_key_columns (below) applies them to a query or to each branch.
ALTER FUNCTION sluice._st_key_columns(text, oid) RENAME TO _st_select_keys;

-- sluice._st_branches(query, relid) -> [{"query", "keys"}, ...] or NULL
--
-- The branches of a top-level UNION ALL when every one has a row identity
-- by the rules of sluice._st_select_keys (relid: the storage table, whose
-- columns name the outputs by position). NULL for anything else, including
-- a split that does not plan on its own (the branches are EXPLAINed).
CREATE FUNCTION sluice._st_branches(query text, relid oid)
RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    parts text[] := sluice._st_union_all_branches(query);
    part  text;
    keys  text[];
    res   jsonb := '[]';
BEGIN
    IF parts IS NULL THEN
        RETURN NULL;
    END IF;
    FOREACH part IN ARRAY parts LOOP
        BEGIN
            keys := sluice._st_select_keys(part, relid);
        EXCEPTION WHEN OTHERS THEN
            RETURN NULL;
        END;
        IF keys IS NULL THEN
            RETURN NULL;
        END IF;
        res := res || jsonb_build_array(jsonb_build_object('query', part, 'keys', to_jsonb(keys)));
    END LOOP;
    RETURN res;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_branches(text, oid) FROM PUBLIC;

-- sluice._st_key_columns(query, relid) -> key_columns (NULL: content identity)
--
-- As migration 5's (now sluice._st_select_keys), and for a UNION ALL whose
-- branches all have a row identity: every column that is a key in some
-- branch, in output order (the row id itself comes from the branches, see
-- sluice._st_rows_sql).
CREATE FUNCTION sluice._st_key_columns(query text, relid oid)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    br jsonb := sluice._st_branches(query, relid);
BEGIN
    IF br IS NULL THEN
        RETURN sluice._st_select_keys(query, relid);
    END IF;
    RETURN ARRAY(SELECT a.attname::text FROM pg_attribute a
                  WHERE a.attrelid = relid AND a.attnum > 0 AND NOT a.attisdropped
                    AND a.attname IN (SELECT jsonb_array_elements_text(b -> 'keys') FROM jsonb_array_elements(br) b)
                  ORDER BY a.attnum);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_key_columns(text, oid) FROM PUBLIC;

-- sluice._st_branch_identity_sql(relid, keys, alias, branch) -> SQL
-- expression of the row id of a row `alias` of UNION ALL branch `branch`
-- (1-based) whose row identity is `keys`: like sluice._st_identity_sql, with
-- the branch number first in the hashed array.
CREATE FUNCTION sluice._st_branch_identity_sql(relid oid, keys text[], alias text, branch int)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    parts text;
BEGIN
    SELECT string_agg(format(', (%I.%I)::%s', alias, k.col, format_type(a.atttypid, a.atttypmod)), ''
                      ORDER BY k.ord)
      INTO parts
      FROM unnest(keys) WITH ORDINALITY AS k(col, ord)
      JOIN pg_attribute a ON a.attrelid = relid AND a.attname = k.col AND NOT a.attisdropped;
    RETURN format('md5(jsonb_build_array(%s%s)::text)::uuid', branch, coalesce(parts, ''));
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_branch_identity_sql(oid, text[], text, int) FROM PUBLIC;

-- sluice._st_rows_sql(relid, query, key_columns, branches) -> a SELECT of
-- the stream table's whole content with its row ids: (__sluice_row_id,
-- the query's columns). A UNION ALL with branches is computed branch by
-- branch, each with its own ids, and unioned again (the same branches, so
-- the same column types as the query).
CREATE FUNCTION sluice._st_rows_sql(relid oid, query text, key_columns text[], branches jsonb)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN branches IS NULL THEN
                format('SELECT %s AS __sluice_row_id, __sluice_q.* FROM (%s) __sluice_q',
                       sluice._st_identity_sql(relid, key_columns, '__sluice_q'), query)
           ELSE (SELECT string_agg(format('SELECT %s AS __sluice_row_id, __sluice_q.* FROM (%s) __sluice_q',
                                          sluice._st_branch_identity_sql(
                                              relid, ARRAY(SELECT jsonb_array_elements_text(b.v -> 'keys')),
                                              '__sluice_q', b.n::int),
                                          b.v ->> 'query'),
                                   ' UNION ALL ' ORDER BY b.n)
                   FROM jsonb_array_elements(branches) WITH ORDINALITY AS b(v, n))
           END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_rows_sql(oid, text, text[], jsonb) FROM PUBLIC;

-- The catalog trigger: branches follow query and key_columns (computed
-- where create_stream_table and alter_stream_table store them), a new
-- analysis is due, and the engine is rung to do it now; also rung when
-- alter_stream_table clears the analysis of an unchanged query.
CREATE FUNCTION sluice._st_catalog_query_changed()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.query IS DISTINCT FROM OLD.query
       OR NEW.key_columns IS DISTINCT FROM OLD.key_columns OR NEW.relid IS DISTINCT FROM OLD.relid THEN
        NEW.branches := CASE WHEN NEW.key_columns IS NOT NULL THEN sluice._st_branches(NEW.query, NEW.relid) END;
        NEW.branch_analysis := NULL;
        PERFORM pg_notify('sluice_changes', '');
    ELSIF NEW.analyzed_query IS DISTINCT FROM NEW.query AND OLD.analyzed_query IS NOT DISTINCT FROM OLD.query THEN
        -- The analysis was cleared (alter_stream_table with the same query).
        PERFORM pg_notify('sluice_changes', '');
    END IF;
    RETURN NEW;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_catalog_query_changed() FROM PUBLIC;

CREATE TRIGGER stream_table_catalog_query_changed
    BEFORE INSERT OR UPDATE OF query, key_columns, relid ON sluice.stream_table_catalog
    FOR EACH ROW EXECUTE FUNCTION sluice._st_catalog_query_changed();

-- The analyses of earlier versions are redone by the engine (file header);
-- until then those stream tables refresh in full.
UPDATE sluice.stream_table_catalog SET analyzed_query = NULL WHERE key_columns IS NOT NULL;

DROP FUNCTION sluice._set_analysis(bigint, text, text, text, text, text, text, text[]);

-- sluice._set_analysis(id, analyzed_query, effective_mode, fallback_reason,
--                      operator_tree, affected_sql, recompute_sql,
--                      unit_columns, branch_analysis) -> stored?
--
-- As in migration 7, plus branch_analysis: for a UNION ALL with branches,
-- the per-branch pairs replace affected_sql and recompute_sql.
CREATE FUNCTION sluice._set_analysis(id bigint, analyzed_query text, effective_mode text, fallback_reason text,
                                     operator_tree text, affected_sql text, recompute_sql text,
                                     unit_columns text[] DEFAULT NULL, branch_analysis jsonb DEFAULT NULL)
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
    SELECT * INTO st FROM sluice.stream_table_catalog c WHERE c.id = _set_analysis.id FOR UPDATE;
    IF NOT FOUND OR st.query IS DISTINCT FROM analyzed_query THEN
        RETURN false;
    END IF;
    IF mode = 'differential' THEN
        IF st.branches IS NULL AND (_set_analysis.affected_sql IS NULL OR _set_analysis.recompute_sql IS NULL) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'sluice._set_analysis: a differential analysis needs affected_sql and recompute_sql',
                HINT = 'Pass both, or effective_mode ''full'' with a fallback_reason.';
        END IF;
        IF st.branches IS NOT NULL
           AND (jsonb_typeof(_set_analysis.branch_analysis) IS DISTINCT FROM 'array'
                OR jsonb_array_length(_set_analysis.branch_analysis) <> jsonb_array_length(st.branches)
                OR EXISTS (SELECT 1 FROM jsonb_array_elements(_set_analysis.branch_analysis) b
                            WHERE jsonb_typeof(b -> 'affected') IS DISTINCT FROM 'string'
                               OR jsonb_typeof(b -> 'recompute') IS DISTINCT FROM 'string')) THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = format('sluice._set_analysis: stream table %s is a UNION ALL of %s branches; a differential analysis needs branch_analysis with one {"affected", "recompute"} per branch',
                                 st.name, jsonb_array_length(st.branches)),
                HINT = 'Pass branch_analysis, or effective_mode ''full'' with a fallback_reason.';
        END IF;
        IF st.branches IS NOT NULL AND _set_analysis.unit_columns IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'sluice._set_analysis: a UNION ALL is refreshed by row identity; unit_columns must be NULL',
                HINT = 'Analyse a branch with a LEFT JOIN as FULL.';
        END IF;
    END IF;
    IF st.requested_mode = 'full' THEN
        mode := 'full';
        why := 'refresh_mode full was requested';
    ELSIF st.key_columns IS NULL THEN
        mode := 'full';
        why := 'rows have no key (content identity)';
    END IF;
    -- The index the LEFT JOIN refresh reads old rows by (migration 7).
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
           branch_analysis = CASE WHEN mode = 'differential' AND st.branches IS NOT NULL
                                  THEN _set_analysis.branch_analysis END,
           fallback_reason = CASE WHEN mode = 'full' THEN why END,
           operator_tree = _set_analysis.operator_tree,
           affected_sql = CASE WHEN st.branches IS NULL THEN _set_analysis.affected_sql END,
           recompute_sql = CASE WHEN st.branches IS NULL THEN _set_analysis.recompute_sql END,
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

REVOKE ALL ON FUNCTION sluice._set_analysis(bigint, text, text, text, text, text, text, text[], jsonb) FROM PUBLIC;
-- sluice._st_image_sql(relid, alias) -> SQL expression of the JSON image
-- of row `alias`, which carries the stream table's columns (relid: the
-- stream table): every column but __sluice_row_id, keyed by name. Objects of
-- at most 50 columns are concatenated (a function takes at most 100
-- arguments).
CREATE FUNCTION sluice._st_image_sql(relid oid, alias text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(string_agg(part, ' || ' ORDER BY chunk), '''{}''::jsonb')
      FROM (SELECT c.chunk, format('jsonb_build_object(%s)', string_agg(format('%L, %I.%I', c.attname, alias, c.attname), ', '
                                                                      ORDER BY c.attnum)) AS part
              FROM (SELECT a.attname, a.attnum, (row_number() OVER (ORDER BY a.attnum) - 1) / 50 AS chunk
                      FROM pg_attribute a
                     WHERE a.attrelid = relid AND a.attnum > 0 AND NOT a.attisdropped
                       AND a.attname <> '__sluice_row_id') c
             GROUP BY c.chunk) p
$fn$;

REVOKE ALL ON FUNCTION sluice._st_image_sql(oid, text) FROM PUBLIC;

-- The refresh driver (see migrations 5 and 7), with UNION ALL branches: the
-- FULL rows come from sluice._st_rows_sql, a differential UNION ALL runs its
-- branches one after the other (step 4); the delta's images are built by
-- sluice._st_image_sql (step 5, see the file header).
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
        EXECUTE format('CREATE TEMP TABLE __sluice_new ON COMMIT DROP AS %s',
                       sluice._st_rows_sql(st.relid, st.query, st.key_columns, st.branches));
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
        IF st.branch_analysis IS NOT NULL THEN
            -- A UNION ALL: each branch's affected rows, stored and
            -- recomputed, with the branch's own row ids, into one old and
            -- one new set (typed like the stream table: a branch's columns
            -- may have narrower types than the union's).
            EXECUTE format('CREATE TEMP TABLE __sluice_old ON COMMIT DROP AS SELECT * FROM %s LIMIT 0', storage);
            EXECUTE format('CREATE TEMP TABLE __sluice_new ON COMMIT DROP AS SELECT * FROM %s LIMIT 0', storage);
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
                EXECUTE format('INSERT INTO pg_temp.__sluice_old SELECT __sluice_s.* FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id = ANY (ARRAY(SELECT %s FROM pg_temp.__sluice_aff __sluice_a))',
                               storage, sluice._st_branch_identity_sql(st.relid, br.keys, '__sluice_a', br.n));
                EXECUTE format('INSERT INTO pg_temp.__sluice_new SELECT %s, __sluice_r.* FROM (%s) __sluice_r',
                               sluice._st_branch_identity_sql(st.relid, br.keys, '__sluice_r', br.n),
                               br.sql ->> 'recompute');
            END LOOP;
        ELSE
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
        END IF;
        old_rel := 'pg_temp.__sluice_old';
    END IF;

    -- 5. The delta, by identity.
    -- Images are compared as jsonb: column types without an equality
    -- operator (json, point, ...) work too. They are built column by column
    -- (sluice._st_image_sql), never from a temporary table's whole row: see
    -- the file header.
    EXECUTE format($q$
        CREATE TEMP TABLE __sluice_delta ON COMMIT DROP AS
        SELECT __sluice_x.row_id,
               CASE WHEN __sluice_x.before IS NULL THEN 'insert'
                    WHEN __sluice_x.after IS NULL THEN 'delete'
                    ELSE 'update' END AS op,
               __sluice_x.before, __sluice_x.after
          FROM (SELECT coalesce(__sluice_n.__sluice_row_id, __sluice_o.__sluice_row_id) AS row_id,
                       CASE WHEN __sluice_o.__sluice_row_id IS NOT NULL THEN %s END AS before,
                       CASE WHEN __sluice_n.__sluice_row_id IS NOT NULL THEN %s END AS after
                  FROM %s __sluice_o
                  FULL JOIN pg_temp.__sluice_new __sluice_n ON __sluice_n.__sluice_row_id = __sluice_o.__sluice_row_id) __sluice_x
         WHERE __sluice_x.before IS NULL OR __sluice_x.after IS NULL
            OR __sluice_x.before IS DISTINCT FROM __sluice_x.after$q$,
        sluice._st_image_sql(st.relid, '__sluice_o'), sluice._st_image_sql(st.relid, '__sluice_n'), old_rel);

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

-- explain_stream_table, as in migration 7, with a UNION ALL's row identity
-- (branch number, then the branch's keys) and its SQL branch by branch.
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
                              WHEN st.branches IS NOT NULL THEN
                                  'UNION ALL branch number, then the branch''s key: '
                                  || (SELECT string_agg(format('branch %s (%s)', b.n,
                                                               CASE WHEN jsonb_array_length(b.v -> 'keys') = 0 THEN 'single row'
                                                                    ELSE (SELECT string_agg(k, ', ')
                                                                            FROM jsonb_array_elements_text(b.v -> 'keys') k) END),
                                                        ', ' ORDER BY b.n)
                                        FROM jsonb_array_elements(st.branches) WITH ORDINALITY AS b(v, n))
                              WHEN cardinality(st.key_columns) = 0 THEN 'single row'
                              ELSE 'key (' || array_to_string(st.key_columns, ', ') || ')' END),
        ('refresh unit', CASE WHEN NOT current OR st.effective_mode IS DISTINCT FROM 'differential' THEN NULL
                              WHEN st.unit_columns IS NULL THEN 'row identity'
                              ELSE 'rows of the first table, by (' || array_to_string(st.unit_columns, ', ') || ')' END),
        ('sources', (SELECT string_agg(s.relname || CASE WHEN s.is_stream_table THEN ' (stream table)' ELSE '' END,
                                       ', ' ORDER BY s.relname)
                       FROM sluice.stream_table_sources s WHERE s.stream_table_id = st.id)),
        ('operator tree', CASE WHEN current THEN st.operator_tree END),
        ('affected SQL', CASE WHEN NOT current THEN NULL
                              WHEN st.branch_analysis IS NOT NULL THEN
                                  (SELECT string_agg(format('-- branch %s%s%s', b.n, E'\n', b.v ->> 'affected'),
                                                     E';\n' ORDER BY b.n)
                                     FROM jsonb_array_elements(st.branch_analysis) WITH ORDINALITY AS b(v, n))
                              ELSE st.affected_sql END),
        ('recompute SQL', CASE WHEN NOT current THEN NULL
                               WHEN st.branch_analysis IS NOT NULL THEN
                                   (SELECT string_agg(format('-- branch %s%s%s', b.n, E'\n', b.v ->> 'recompute'),
                                                      E';\n' ORDER BY b.n)
                                      FROM jsonb_array_elements(st.branch_analysis) WITH ORDINALITY AS b(v, n))
                               ELSE st.recompute_sql END),
        ('status', st.status || coalesce(': ' || st.last_error, ''));
END
$fn$;

REVOKE ALL ON FUNCTION sluice.explain_stream_table(text) FROM PUBLIC;
