-- refresh/sql/0024_where_subqueries.sql - migration 24: EXISTS, NOT
-- EXISTS and IN (SELECT ...) in the WHERE clause are refreshed
-- differentially.
--
-- Until now any subquery in an expression made a stream table FULL. Now a
-- query over tables (joined by inner joins, or a LEFT JOIN chain), or a
-- UNION ALL branch of one, may AND into its WHERE clause
--
--     EXISTS (SELECT ... FROM t WHERE ...)
--     NOT EXISTS (SELECT ... FROM t WHERE ...)
--     col IN (SELECT t.c FROM t WHERE ...)     (or col <op> ANY (...))
--
-- each over one table, with no GROUP BY, HAVING, aggregate (under IN),
-- window function, DISTINCT ON, LIMIT or subquery of its own, correlated
-- with the outer rows in any way. The engine (refresh/analyze.c,
-- gen_affected_sublinks) finds the rows such a subquery can change: a
-- row's EXISTS changes only when a row of t that meets the subquery's
-- condition for it appears or goes, and every such row is among t's change
-- images; so the affected keys are those of the rows, before and after the
-- window, for which the same subquery over t's change images finds a row.
-- (In a LEFT JOIN chain refreshed by its first table's rows, the first
-- table's rows of those combinations.) The recompute is the query itself,
-- restricted to those keys. The refresh driver runs these statements as
-- it runs any other analysis (its one change, a lock, is below).
--
-- NOT IN stays FULL: one NULL among the subquery's values makes it false
-- for every row, which no changed row matching a given row would tell.
-- Scalar subqueries, ALL, subqueries in the select list, HAVING or a JOIN's
-- ON, and subqueries inside a subquery in FROM stay FULL too.
--
-- sluice._st_query_fallback (restated from migration 23) accepts these at
-- creation; the engine judges what it cannot see (where in WHERE, the
-- correlation). sluice._st_select_keys (restated from migration 20) finds
-- the row identity of such a query: PostgreSQL plans the subquery as a semi
-- or anti join, whose inner side is not part of the rows. sluice._refresh
-- (restated from migration 20) holds writers off under READ COMMITTED for
-- a stream table over one table read twice (a self-join, or such a
-- subquery over the query's own table), as it did for joins of two
-- tables. Upgrade: stored creation reasons the check no longer gives
-- are cleared (sluice._st_recheck_stored_fallbacks of migration 17), so
-- stream tables with such a query are analysed again by the engine. Row
-- identities are not derived again (as in 17 to 20): a stream table created
-- before with such a query, which had no key, keeps its content identity
-- and stays FULL; create it again to have it refreshed differentially.

-- sluice._st_plan_output_position(nodes, outputs, expr, inner_joins) -> int
--
-- As in migration 18, but the condition of a semi or anti join (a subquery
-- in WHERE) makes nothing equal: an anti join's rows are those for which
-- no row meets it.
CREATE OR REPLACE FUNCTION sluice._st_plan_output_position(nodes jsonb, outputs text[], expr text, inner_joins boolean)
RETURNS int
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    pairs text[]; -- {a, b} per equality, flattened
    equal text[] := ARRAY[expr];
    more  text[];
BEGIN
    IF array_position(outputs, expr) IS NOT NULL OR NOT inner_joins THEN
        RETURN array_position(outputs, expr);
    END IF;
    pairs := ARRAY(SELECT x
                     FROM jsonb_array_elements(nodes) p,
                          LATERAL (SELECT p -> 'n' ->> f AS cond
                                     FROM unnest(ARRAY['Hash Cond', 'Merge Cond', 'Join Filter', 'Index Cond',
                                                       'Recheck Cond', 'Filter']) f) c,
                          LATERAL regexp_matches(c.cond, '\(([^() ]+) = ([^() ]+)\)', 'g') m,
                          LATERAL unnest(m) x
                    WHERE NOT (p ->> 'inside')::boolean
                      AND coalesce(p -> 'n' ->> 'Join Type', '') NOT IN ('Semi', 'Anti', 'Right Semi', 'Right Anti')
                      AND c.cond IS NOT NULL AND c.cond !~ ' OR | NOT |NOT \(');
    -- Equal to equal is equal: follow the pairs until nothing is added.
    LOOP
        more := ARRAY(SELECT DISTINCT CASE WHEN i % 2 = 1 THEN pairs[i + 1] ELSE pairs[i - 1] END
                        FROM generate_subscripts(pairs, 1) i
                       WHERE pairs[i] = ANY (equal)
                      EXCEPT SELECT unnest(equal));
        EXIT WHEN cardinality(more) = 0;
        equal := equal || more;
    END LOOP;
    RETURN (SELECT min(array_position(outputs, e)) FROM unnest(equal) e);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_plan_output_position(jsonb, text[], text, boolean) FROM PUBLIC;

-- sluice._st_select_keys(query, relid) -> key_columns (NULL: content identity)
--
-- As in migration 20, with a subquery in WHERE planned as a semi join (see
-- the comment in the function): the tables it reads are not rows of the
-- result, so neither their primary keys nor the subquery's conditions
-- count, and a semi or anti join does not stop the equalities of inner
-- joins from naming a key.
CREATE OR REPLACE FUNCTION sluice._st_select_keys(query text, relid oid)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    old_par text := current_setting('max_parallel_workers_per_gather');
    old_hashagg text := current_setting('enable_hashagg');
    old_sort text := current_setting('enable_sort');
    own_rels text[]; -- with subqueries in WHERE: the aliases of the query's own relations
    plan    jsonb;
    node    jsonb;
    top_out text[];
    names   text[];
    gkeys   text[];
    keys    text[] := '{}';
    scan    jsonb;
    pkcol   text;
    pos     int;
    nscans  int := 0;
    sub     text[];
    inner_out text[];
    grp     record;
    gkey    text;
    inner_joins boolean;
    pnodes  jsonb;
BEGIN
    PERFORM set_config('max_parallel_workers_per_gather', '0', true);
    -- A subquery in WHERE (pg_get_viewdef prints EXISTS ( SELECT, IN (
    -- SELECT, = ANY ( SELECT) is planned as a semi or anti join, as an
    -- inner join with the subquery's rows made unique by a group node
    -- (which the rules below would take for a subquery in FROM that
    -- groups), or, when what it compares is unique, as a plain inner join.
    -- Without hash aggregation and sorts (costly, not refused) the planner
    -- keeps the semi join rather than the group node; and a scan whose
    -- alias is not one of the query's own relations (PostgreSQL's range
    -- table as the view of the query prints it; EXPLAIN names a second
    -- relation of the same name alias_1, and the query's own come first)
    -- reads a subquery's table. Not with a subquery in FROM (such a query
    -- is refreshed in full): its tables' aliases are not all in that list,
    -- and one taken for a subquery's would leave its key out of the row
    -- identity, which could then repeat; without the list, a subquery's
    -- table planned as an inner join leaves the query without a key
    -- (content identity), which is always safe.
    IF query ~ '\m(EXISTS|IN|ANY|SOME)\s*\(\s*SELECT\M' THEN
        PERFORM set_config('enable_hashagg', 'off', true), set_config('enable_sort', 'off', true);
        IF to_regclass('pg_temp.__sluice_keys_probe') IS NOT NULL THEN
            DROP VIEW pg_temp.__sluice_keys_probe;
        END IF;
        EXECUTE 'CREATE TEMP VIEW __sluice_keys_probe AS ' || query;
        SELECT CASE WHEN r.ev_action::text !~ ' :rtekind 1 '
                    THEN ARRAY(SELECT m[1]
                                 FROM regexp_matches(substring(r.ev_action::text FROM ' :rtable \((.*?) :jointree '),
                                                     ':eref \{ALIAS :aliasname ([^ ]+) ', 'g') m) END
          INTO own_rels
          FROM pg_rewrite r
         WHERE r.ev_class = 'pg_temp.__sluice_keys_probe'::regclass AND r.rulename = '_RETURN';
        DROP VIEW pg_temp.__sluice_keys_probe;
    END IF;
    -- Wrapped in a subquery: with a single relation in the range table
    -- EXPLAIN prints Output without the alias but Group Key with it; with
    -- two (the wrapper's, which the planner then removes) both have it.
    EXECUTE 'EXPLAIN (VERBOSE, FORMAT JSON) SELECT * FROM (' || query || ') __sluice_q' INTO plan;
    PERFORM set_config('max_parallel_workers_per_gather', old_par, true),
            set_config('enable_hashagg', old_hashagg, true), set_config('enable_sort', old_sort, true);

    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO names
      FROM pg_attribute a
     WHERE a.attrelid = relid AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname <> '__sluice_row_id';
    node := plan -> 0 -> 'Plan';
    top_out := ARRAY(SELECT jsonb_array_elements_text(coalesce(node -> 'Output', '[]')));
    top_out := top_out[1:cardinality(names)];
    LOOP
        WHILE node ->> 'Node Type' IN ('Sort', 'Incremental Sort', 'Limit', 'Result', 'Gather',
                                       'Gather Merge', 'Materialize')
              AND node ? 'Plans' AND jsonb_array_length(node -> 'Plans') = 1 LOOP
            node := node -> 'Plans' -> 0;
        END LOOP;
        -- A subquery in FROM that PostgreSQL keeps as a node of its own
        -- (it aggregates, or the query selects other columns than it has):
        -- the outputs that are its columns, alias.column, stand for the
        -- subquery's outputs at those columns' positions.
        EXIT WHEN node ->> 'Node Type' <> 'Subquery Scan' OR NOT node ? 'Plans'
                  OR jsonb_array_length(node -> 'Plans') <> 1;
        sub := sluice._st_subquery_columns(query, node ->> 'Alias');
        EXIT WHEN sub IS NULL; -- the rules below, as before this migration
        inner_out := ARRAY(SELECT jsonb_array_elements_text(coalesce(node -> 'Plans' -> 0 -> 'Output', '[]')));
        top_out := ARRAY(SELECT inner_out[array_position(ARRAY(SELECT quote_ident(node ->> 'Alias') || '.' || quote_ident(c)
                                                                  FROM unnest(sub) WITH ORDINALITY AS s(c, o) ORDER BY o),
                                                            u.e)]
                           FROM unnest(top_out) WITH ORDINALITY AS u(e, i) ORDER BY u.i);
        node := node -> 'Plans' -> 0;
    END LOOP;

    -- Every node of the plan, in order, and whether it is inside a group
    -- node below the top (inside), the nearest Subquery Scan above it
    -- (sscan) and whether only nodes that pass rows through stand between
    -- (direct).
    -- nulled: the conditions of the LEFT JOINs (Right: the plan's sides
    -- swapped) above it on whose NULL-extended side it is, each in
    -- parentheses as the plan prints it, those with OR or NOT left out.
    pnodes := (WITH RECURSIVE w(n, depth, ord, inside, sscan, direct, nulled) AS (
                   SELECT node, 0, ARRAY[]::bigint[], false, NULL::jsonb, false, ''
                 UNION ALL
                   SELECT c.v, w.depth + 1, w.ord || c.i,
                          w.inside OR (w.depth > 0 AND w.n ->> 'Node Type' IN ('Aggregate', 'Group', 'Unique'))
                          -- A subquery in WHERE: the side of a semi or anti
                          -- join that it is, a subplan (not rows of the result).
                          OR coalesce((w.n ->> 'Join Type' IN ('Semi', 'Anti') AND c.i = 2)
                                      OR (w.n ->> 'Join Type' IN ('Right Semi', 'Right Anti') AND c.i = 1)
                                      OR c.v ->> 'Parent Relationship' IN ('SubPlan', 'InitPlan')
                                      OR (c.v ? 'Relation Name' AND NOT (c.v ->> 'Alias') = ANY (own_rels)), false),
                          CASE WHEN w.n ->> 'Node Type' = 'Subquery Scan' THEN w.n ELSE w.sscan END,
                          CASE WHEN w.n ->> 'Node Type' = 'Subquery Scan' THEN true
                               ELSE w.direct AND w.n ->> 'Node Type' IN ('Sort', 'Incremental Sort', 'Materialize',
                                                                        'Hash', 'Gather', 'Gather Merge', 'Memoize') END,
                          CASE WHEN (w.n ->> 'Join Type' = 'Left' AND c.i = 2) OR (w.n ->> 'Join Type' = 'Right' AND c.i = 1)
                               THEN w.nulled || coalesce((SELECT string_agg(' ' || (w.n ->> f), '')
                                                            FROM unnest(ARRAY['Hash Cond', 'Merge Cond', 'Join Filter']) f
                                                           WHERE (w.n ->> f) !~ ' OR | NOT |NOT \('), '')
                               ELSE w.nulled END
                     FROM w, jsonb_array_elements(w.n -> 'Plans') WITH ORDINALITY AS c(v, i))
               SELECT jsonb_agg(jsonb_build_object('n', w.n, 'depth', w.depth, 'inside', w.inside,
                                                   'sscan', w.sscan, 'direct', w.direct, 'nulled', w.nulled)
                                ORDER BY w.ord)
                 FROM w);

    IF node ->> 'Node Type' IN ('Aggregate', 'Group') THEN
        IF node ? 'Grouping Sets' THEN
            RETURN NULL;
        END IF;
        IF NOT node ? 'Group Key' THEN
            RETURN '{}';
        END IF;
        -- A key that is an expression (GROUP BY date_trunc('day', at)) is
        -- computed below the group node, which prints its reference to it
        -- in one more pair of parentheses.
        gkeys := ARRAY(SELECT jsonb_array_elements_text(node -> 'Group Key'));
        gkeys := gkeys || ARRAY(SELECT '(' || g || ')' FROM unnest(gkeys) g);
        -- (An output that no rule above could name is NULL in top_out.)
        IF EXISTS (SELECT FROM jsonb_array_elements_text(node -> 'Group Key') g
                    WHERE NOT coalesce(g = ANY (top_out) OR '(' || g || ')' = ANY (top_out), false)) THEN
            RETURN NULL;
        END IF;
        RETURN ARRAY(SELECT names[i] FROM generate_subscripts(top_out, 1) i
                      WHERE top_out[i] = ANY (gkeys) ORDER BY i);
    END IF;
    IF node ->> 'Node Type' = 'Unique'
       OR (node ->> 'Node Type' IN ('SetOp', 'HashSetOp') AND node ->> 'Command' NOT LIKE '% All') THEN
        -- Below a subquery's scan, only when the query selects every column
        -- that makes its rows distinct.
        IF sub IS NOT NULL
           AND NOT ARRAY(SELECT jsonb_array_elements_text(coalesce(node -> 'Output', '[]'))) <@ top_out THEN
            RETURN NULL;
        END IF;
        RETURN names;
    END IF;

    -- Below the top: a subquery in FROM that groups, joined (a group node
    -- not inside another). Its keys, the group's Group Key (Unique: its
    -- columns), are found among the outputs as the plan prints them: the
    -- subquery's alias.column when a Subquery Scan stands right above it
    -- (its outputs are the subquery's columns in order), else the
    -- expressions themselves (PostgreSQL drops a Subquery Scan that only
    -- passes its subquery's columns through). A key the query does not
    -- select may stand for a selected column that an inner join's
    -- condition makes equal to it, when every join is inner. A key that a
    -- LEFT JOIN's condition makes equal to a column of the other side, the
    -- group being on the NULL-extended side, is not needed: each row of the
    -- other side meets at most one group with that key value. The tables
    -- below such a group are not read by the rules after this one.
    inner_joins := NOT EXISTS (SELECT FROM jsonb_array_elements(pnodes) p
                                WHERE NOT (p ->> 'inside')::boolean AND p -> 'n' ? 'Join Type'
                                  AND p -> 'n' ->> 'Join Type' NOT IN ('Inner', 'Semi', 'Anti', 'Right Semi', 'Right Anti'));
    FOR grp IN SELECT p.e -> 'n' AS n, nullif(p.e -> 'sscan', 'null') AS sscan, (p.e ->> 'direct')::boolean AS direct,
                      p.e ->> 'nulled' AS nulled
                 FROM jsonb_array_elements(pnodes) WITH ORDINALITY AS p(e, o)
                WHERE NOT (p.e ->> 'inside')::boolean AND (p.e ->> 'depth')::int > 0
                  AND p.e -> 'n' ->> 'Node Type' IN ('Aggregate', 'Group', 'Unique')
                ORDER BY p.o LOOP
        IF grp.n ? 'Grouping Sets' OR (grp.n ->> 'Node Type' <> 'Unique' AND NOT grp.n ? 'Group Key')
           OR (grp.sscan IS NOT NULL AND NOT grp.direct) THEN
            RETURN NULL;
        END IF;
        gkeys := ARRAY(SELECT jsonb_array_elements_text(grp.n -> CASE WHEN grp.n ->> 'Node Type' = 'Unique'
                                                                       THEN 'Output' ELSE 'Group Key' END));
        inner_out := ARRAY(SELECT jsonb_array_elements_text(coalesce(grp.n -> 'Output', '[]')));
        IF grp.sscan IS NOT NULL THEN
            sub := sluice._st_subquery_columns(query, grp.sscan ->> 'Alias');
            IF sub IS NULL THEN
                RETURN NULL;
            END IF;
            gkeys := ARRAY(SELECT quote_ident(grp.sscan ->> 'Alias') || '.' || quote_ident(sub[array_position(inner_out, g.k)])
                             FROM unnest(gkeys) WITH ORDINALITY AS g(k, o) ORDER BY g.o);
        END IF;
        FOREACH gkey IN ARRAY gkeys LOOP
            IF gkey IS NULL THEN
                RETURN NULL;
            END IF;
            pos := sluice._st_plan_output_position(pnodes, top_out, gkey, inner_joins);
            CONTINUE WHEN pos IS NULL AND (position('(' || gkey || ' = ' IN grp.nulled) > 0
                                           OR position(' = ' || gkey || ')' IN grp.nulled) > 0);
            IF pos IS NULL THEN
                RETURN NULL;
            END IF;
            IF NOT names[pos] = ANY (keys) THEN
                keys := keys || names[pos];
            END IF;
        END LOOP;
        nscans := nscans + 1;
    END LOOP;

    -- Projections, filters and joins of tables with primary keys.
    FOR scan IN SELECT p.e -> 'n' FROM jsonb_array_elements(pnodes) WITH ORDINALITY AS p(e, o)
                 WHERE NOT (p.e ->> 'inside')::boolean ORDER BY p.o LOOP
        IF scan ->> 'Node Type' IN ('ProjectSet', 'Function Scan', 'Values Scan', 'CTE Scan',
                                    'WorkTable Scan', 'Table Function Scan', 'Named Tuplestore Scan',
                                    'Foreign Scan', 'Custom Scan', 'Recursive Union') THEN
            RETURN NULL;
        END IF;
        CONTINUE WHEN NOT scan ? 'Relation Name';
        nscans := nscans + 1;
        IF NOT EXISTS (SELECT 1 FROM pg_index i
                        WHERE i.indrelid = format('%I.%I', scan ->> 'Schema', scan ->> 'Relation Name')::regclass
                          AND i.indisprimary) THEN
            RETURN NULL;
        END IF;
        FOR pkcol IN
            SELECT a.attname
              FROM pg_index i
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = format('%I.%I', scan ->> 'Schema', scan ->> 'Relation Name')::regclass
               AND i.indisprimary
        LOOP
            pos := sluice._st_plan_output_position(pnodes, top_out,
                                                   quote_ident(scan ->> 'Alias') || '.' || quote_ident(pkcol),
                                                   inner_joins);
            IF pos IS NULL THEN
                RETURN NULL;
            END IF;
            IF NOT names[pos] = ANY (keys) THEN
                keys := keys || names[pos];
            END IF;
        END LOOP;
    END LOOP;
    IF nscans = 0 THEN
        RETURN NULL;
    END IF;
    -- Output order.
    RETURN ARRAY(SELECT n FROM unnest(names) WITH ORDINALITY AS u(n, o) WHERE n = ANY (keys) ORDER BY o);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_select_keys(text, oid) FROM PUBLIC;

-- sluice._refresh(id, force_full): migration 20's driver, with the SHARE
-- lock of READ COMMITTED refreshes also taken when the analysis rebuilds a
-- source's state before the window (it reads pg_temp.__sluice_before_<oid>)
-- and the stream table has one source: a self-join, or a subquery in WHERE
-- over the table the query reads. Until now only stream tables over more
-- than one table took it, though a self-join's next refresh rebuilds the
-- old state the same way: a row changed by a writer that committed during
-- the refresh (its key, say) could leave a stored row that no later
-- refresh finds. The engine refreshes under REPEATABLE READ and never
-- needed it.
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

-- sluice._st_query_fallback(view) -> reason or NULL
--
-- As in migration 23, with the rules for subqueries in expressions above:
-- in the outer query and in UNION ALL branches, a SubLink of type EXISTS
-- or ANY outside NOT (for ANY), before the select list, in a query without
-- a subquery in FROM, whose query reads one table plainly; elsewhere
-- refused.
CREATE OR REPLACE FUNCTION sluice._st_query_fallback(view regclass)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tree   text := (SELECT r.ev_action::text FROM pg_rewrite r
                     WHERE r.ev_class = view AND r.rulename = '_RETURN');
    why_sublink constant text :=
        'subqueries in expressions are refreshed differentially only as EXISTS, NOT EXISTS or IN '
        '(SELECT ...) conditions ANDed into the WHERE clause, each reading one table with no GROUP '
        'BY, HAVING, aggregate, window function, DISTINCT ON, LIMIT or subquery of its own (NOT IN '
        'is refreshed in full: write NOT EXISTS); this one is refreshed in full';
    why_sublink_nested constant text :=
        'subqueries in expressions are refreshed differentially in the WHERE clause of the stream '
        'table''s query or of a UNION ALL branch, not inside a subquery in FROM';
    why_shape constant text :=
        'a subquery in FROM is refreshed differentially when it filters and projects one table and '
        'selects that table''s primary key, when it is the whole FROM of a query that only filters '
        'and projects its rows, or when it groups (GROUP BY or DISTINCT) and is joined by its key '
        'columns (no LATERAL, no column aliases)';
    piece  text;
    own    text[] := '{}'; -- own[q]: query q's text, its nested queries replaced by {Q<n>}
    up     int[] := '{}';  -- up[q]: the query that q is nested in (0: q is the outer query)
    via    text[] := '{}'; -- via[q]: the field of up[q] that holds q
    opens  int[] := '{}';  -- per open brace: the query it opened, or 0
    cur    int := 0;
    n      int := 0;
    q      int;
    kind   text;
    pre    text[] := '{}'; -- pre[q]: the start of q's reasons (its UNION ALL branch, its subquery)
    kinds  text[] := '{}'; -- kinds[q]: what q is (below)
    prefix text;
    chk    record;
    vol    text;
    first  int;    -- a LEFT JOIN chain's first table: its range table index
    rel    oid;    -- and its oid
    grouped boolean; -- the chain joins a subquery that groups
    why    text;
    typ    text;   -- a subquery in an expression: its SubLinkType (0 EXISTS, 2 ANY)
BEGIN
    IF tree IS NULL OR tree !~ '^\(\{QUERY ' THEN
        RETURN NULL;
    END IF;
    -- Cut the tree into its queries (see the file header).
    FOR piece IN SELECT s.p
                   FROM regexp_split_to_table(regexp_replace(tree, '\\.', '__', 'g'), '(?=[{}])')
                        WITH ORDINALITY AS s(p, i)
                  ORDER BY s.i LOOP
        IF left(piece, 7) = '{QUERY ' THEN
            n := n + 1;
            up[n] := cur;
            IF cur > 0 THEN
                via[n] := substring(own[cur] FROM ' :([A-Za-z]+) $');
                own[cur] := own[cur] || '{Q' || n || '}';
            END IF;
            own[n] := piece;
            opens := opens || n;
            cur := n;
        ELSIF cur = 0 THEN
            CONTINUE; -- the list's parentheses around the outer query
        ELSIF left(piece, 1) = '{' THEN
            opens := opens || 0;
            own[cur] := own[cur] || piece;
        ELSIF coalesce(opens[cardinality(opens)], 0) > 0 THEN
            own[cur] := own[cur] || '}';
            opens := opens[1:cardinality(opens) - 1];
            cur := up[cur];
            IF cur > 0 THEN
                own[cur] := own[cur] || substr(piece, 2);
            END IF;
        ELSIF cardinality(opens) > 0 THEN
            opens := opens[1:cardinality(opens) - 1];
            own[cur] := own[cur] || piece;
        ELSE
            RETURN NULL; -- unbalanced: not a tree this function understands
        END IF;
    END LOOP;
    IF n = 0 OR cur <> 0 THEN
        RETURN NULL;
    END IF;

    FOR q IN 1..n LOOP
        -- A subquery in FROM is 'derived' when it is the one item of the
        -- FROM of a query that only filters and projects it (the engine
        -- analyses it as a query of its own), else 'from' (it must be a
        -- table seen through a projection). One RangeTblRef and no join in
        -- the parent's join tree: its range table also lists a view's OLD
        -- and NEW (PostgreSQL 15), which FROM does not.
        kind := CASE WHEN q = 1 THEN 'outer'
                     WHEN via[q] IS DISTINCT FROM 'subquery' THEN 'other'
                     WHEN own[up[q]] ~ ' :setOperations \{SETOPERATIONSTMT ' THEN 'branch'
                     WHEN kinds[up[q]] IN ('outer', 'branch', 'derived')
                          AND regexp_count(own[up[q]], '\{RANGETBLREF ') = 1
                          AND own[up[q]] !~ '\{JOINEXPR '
                          AND own[up[q]] !~ (' :(hasAggs|hasWindowFuncs) true '
                                             '| :(groupClause|groupingSets|havingQual|distinctClause) [^<]')
                          AND own[up[q]] ~ (':alias \{ALIAS :aliasname [^ ]+ :colnames <>\} :eref \{ALIAS [^}]*\} '
                                            ':rtekind 1 :subquery \{Q' || q || '\}[^{}]* :lateral false ')
                     THEN 'derived'
                     -- A subquery that groups, joined (the engine's
                     -- analyze_joined).
                     WHEN kinds[up[q]] IN ('outer', 'branch', 'derived')
                          AND regexp_count(own[up[q]], '\{RANGETBLREF ') > 1
                          AND own[q] ~ ' :(groupClause|distinctClause) [^<]'
                          AND own[q] !~ ' :setOperations [^<]'
                          AND own[up[q]] ~ (':alias \{ALIAS :aliasname [^ ]+ :colnames <>\} :eref \{ALIAS [^}]*\} '
                                            ':rtekind 1 :subquery \{Q' || q || '\}[^{}]* :lateral false ')
                     THEN 'joined'
                     ELSE 'from' END;
        kinds[q] := kind;
        -- A branch's reasons, and those of the queries nested in it, name
        -- the branch (its place among its set operation's branches).
        pre[q] := CASE WHEN kind = 'branch'
                       THEN format('UNION ALL branch %s: ',
                                   (SELECT count(*) FROM generate_subscripts(up, 1) AS b(i)
                                     WHERE up[b.i] = up[q] AND via[b.i] = 'subquery' AND b.i <= q))
                       WHEN kind IN ('derived', 'joined') THEN coalesce(pre[up[q]], '') || 'the subquery in FROM: '
                       WHEN q > 1 THEN coalesce(pre[up[q]], '')
                       ELSE '' END;
        prefix := pre[q];
        -- A subquery in an expression of a query that may have them (see
        -- the file header): one table, read plainly; under IN, one column.
        IF kind = 'other' AND via[q] = 'subselect' AND kinds[up[q]] IN ('outer', 'branch') THEN
            typ := substring(substr(own[up[q]], 1, position(' :subselect {Q' || q || '}' IN own[up[q]]))
                             FROM '.*\{SUBLINK :subLinkType ([0-9]) ');
            IF own[q] ~ (' :(hasWindowFuncs|hasDistinctOn|hasSubLinks|hasForUpdate) true '
                         '| :(cteList|groupClause|groupingSets|havingQual|limitOffset|limitCount|setOperations) [^<]')
               OR regexp_count(own[q], '\{RANGETBLENTRY ') <> 1
               OR own[q] !~ ' :rtekind 0 .* :inh true '
               OR (typ = '2' AND (own[q] ~ ' :hasAggs true '
                                  OR own[q] !~ ' :targetList \(\{TARGETENTRY :expr \{VAR [^{}]*\} [^{}]*\}\) ')) THEN
                RETURN prefix || why_sublink;
            END IF;
        END IF;
        -- A query in an expression or in WITH: the query it is in has
        -- already given the reason (subqueries in expressions, WITH).
        CONTINUE WHEN kind = 'other';
        IF kind = 'joined' THEN
            -- The join around it (the engine's order: one such subquery, a
            -- query that neither groups nor aggregates).
            IF (SELECT count(*) FROM generate_subscripts(up, 1) AS b(i)
                 WHERE up[b.i] = up[q] AND via[b.i] = 'subquery'
                   AND own[b.i] ~ ' :(groupClause|distinctClause) [^<]') > 1 THEN
                RETURN coalesce(pre[up[q]], '') || 'a join with more than one subquery that groups (GROUP BY or DISTINCT) '
                       || 'is refreshed in full';
            END IF;
            -- Next to a LEFT JOIN, not as the chain's first relation (the
            -- leftmost leaf of the join tree: see the chain's rules below).
            IF own[up[q]] ~ '\{JOINEXPR :jointype 1 '
               AND (regexp_split_to_array(own[up[q]], '\{RANGETBLENTRY '))[
                       substring(substr(own[up[q]], position(' :jointree ' IN own[up[q]]))
                                 FROM '\{RANGETBLREF :rtindex ([0-9]+)\}')::int + 1]
                   ~ (' :rtekind 1 :subquery \{Q' || q || '\}') THEN
                RETURN coalesce(pre[up[q]], '') || 'a subquery that groups (GROUP BY or DISTINCT) is joined '
                       || 'differentially by inner joins, or as the right side of a LEFT JOIN, not as the first '
                       || 'relation of a chain of LEFT JOINs';
            END IF;
            IF own[up[q]] ~ (' :hasAggs true | :(groupClause|havingQual|distinctClause) [^<]') THEN
                RETURN coalesce(pre[up[q]], '') || 'a query that groups, aggregates or removes duplicates over a join '
                       || 'with a subquery that groups is refreshed in full';
            END IF;
            -- Refreshed by its groups: a whole query, or one that a query
            -- around filters, but not a UNION ALL branch (nor a join's
            -- subquery, which is 'from' above).
            IF kinds[up[q]] = 'branch' OR pre[up[q]] LIKE 'UNION ALL branch %' THEN
                RETURN substring(pre[up[q]] FROM '^UNION ALL branch [0-9]+') || ' has a subquery that groups joined '
                       || 'with tables, which is refreshed differentially as a whole query but not inside a UNION ALL';
            END IF;
        END IF;
        IF kind IN ('outer', 'branch', 'derived', 'joined') THEN
            FOR chk IN
                SELECT v.bad, v.why
                  FROM (VALUES
                    (1, '\{SETOPERATIONSTMT :op (?!1 :all true )',
                     'UNION (without ALL), INTERSECT and EXCEPT are refreshed in full'),
                    (2, ' :cteList [^<]', 'WITH (common table expressions) is refreshed in full'),
                    (3, ' :hasForUpdate true ', 'FOR UPDATE/SHARE has no meaning in a stream table'),
                    (4, ' :hasWindowFuncs true ', 'window functions are refreshed in full'),
                    (5, CASE WHEN kind IN ('derived', 'joined') THEN ' :hasSubLinks true ' ELSE '^$' END,
                     why_sublink_nested),
                    (6, ' :limit(Offset|Count) [^<]',
                     'LIMIT/OFFSET makes the result depend on rows outside any change; it is refreshed in full'),
                    (7, ' :groupingSets [^<]', 'GROUPING SETS, ROLLUP and CUBE are refreshed in full'),
                    (8, ' :hasDistinctOn true ', 'DISTINCT ON is refreshed in full'))
                    AS v(n, bad, why)
                 ORDER BY v.n
            LOOP
                IF own[q] ~ chk.bad THEN
                    RETURN prefix || chk.why;
                END IF;
            END LOOP;
        END IF;
        -- Subqueries in the WHERE clause (the engine's sublink_reason):
        -- EXISTS (0) or ANY (2, IN), not NOT IN, not elsewhere (the
        -- select list and what follows it; WHERE comes before), and over
        -- tables only (the rules of joins and LEFT JOIN chains below).
        IF kind IN ('outer', 'branch') AND own[q] ~ ' :hasSubLinks true ' THEN
            IF own[q] ~ '\{SUBLINK :subLinkType [^02] '
               OR own[q] ~ '\{BOOLEXPR :boolop not :args \(\{SUBLINK :subLinkType 2 '
               OR substr(own[q], position(' :targetList ' IN own[q])) ~ '\{SUBLINK ' THEN
                RETURN prefix || why_sublink;
            END IF;
            IF own[q] ~ ' :rtekind 1 ' THEN
                RETURN prefix || 'a query with a subquery in its WHERE clause (EXISTS, NOT EXISTS, IN) is refreshed '
                              || 'differentially when its FROM has only tables (joined, or in a LEFT JOIN chain), no '
                              || 'subquery in FROM';
            END IF;
        END IF;
        IF q = 1 THEN
            -- Anywhere in the query. rtekind 3 and 4 are RTE_FUNCTION and
            -- RTE_TABLEFUNC: a function or XMLTABLE in FROM.
            IF tree ~ ' :hasTargetSRFs true' OR tree ~ ' :rtekind [34] ' THEN
                RETURN 'set-returning functions are refreshed in full';
            END IF;
            SELECT string_agg(DISTINCT p.oid::regprocedure::text, ', ') INTO vol
              FROM (SELECT m[1]::oid AS f FROM regexp_matches(tree, '\{FUNCEXPR :funcid ([0-9]+) ', 'g') m
                    UNION
                    SELECT o.oprcode::oid FROM regexp_matches(tree, ' :opno ([0-9]+) ', 'g') m
                      JOIN pg_operator o ON o.oid = m[1]::oid) f
              JOIN pg_proc p ON p.oid = f.f
             WHERE p.provolatile = 'v';
            IF vol IS NOT NULL THEN
                RETURN format('volatile functions (%s) may give another result at every run, so the query is refreshed in full '
                              '(a function of your own that is not volatile can be declared IMMUTABLE or STABLE)', vol);
            END IF;
        END IF;
        IF kind IN ('outer', 'branch', 'derived', 'joined') THEN
            -- JoinType: 2 is JOIN_FULL, 3 JOIN_RIGHT.
            IF own[q] ~ '\{JOINEXPR :jointype [23] ' THEN
                RETURN prefix || 'RIGHT and FULL joins are refreshed in full (write a RIGHT JOIN as a LEFT '
                              || 'JOIN with the tables swapped)';
            END IF;
            -- A join (more than one item in the join tree) finds every
            -- table's changed rows by its primary key, and reads the whole
            -- table (FROM ONLY is not followed). :inFromCl leaves out a
            -- view's OLD and NEW.
            IF regexp_count(own[q], '\{RANGETBLREF ') > 1 THEN
                why := sluice._st_join_table_reason(own[q]);
                IF why IS NOT NULL THEN
                    RETURN prefix || why;
                END IF;
            END IF;
            -- JoinType 1 is JOIN_LEFT. A chain: one item in FROM (a tree of
            -- binary joins has one leaf more than it has joins), no join
            -- on a right side, ON rather than USING or NATURAL, and every
            -- join's ON (the text between a join's :quals and its :alias;
            -- no expression node has an alias) only equalities of columns
            -- (sluice._st_equi_quals).
            IF own[q] ~ '\{JOINEXPR :jointype 1 '
               AND (own[q] ~ ' :rarg \{JOINEXPR | :isNatural true | :usingClause [^<]'
                    OR regexp_count(own[q], '\{RANGETBLREF ') <> regexp_count(own[q], '\{JOINEXPR ') + 1
                    OR EXISTS (SELECT
                                 FROM regexp_matches(own[q], ' :join_using_alias <> :quals (.*?) :alias ', 'g') j
                                WHERE NOT sluice._st_equi_quals(j[1]))) THEN
                RETURN prefix || 'a LEFT JOIN is refreshed differentially only in a chain of equi-joins '
                              || 'whose right sides are tables (a LEFT JOIN b ON b.x = a.y LEFT JOIN c ON '
                              || 'c.z = b.w ...)';
            END IF;
            -- A chain's rows (or groups) carry the primary key of its first
            -- table, the leftmost leaf (the first RangeTblRef printed in the
            -- join tree), as plain columns of the select list. A first item
            -- that is not a table is the engine's to judge.
            IF own[q] ~ '\{JOINEXPR :jointype 1 ' THEN
                first := substring(substr(own[q], position(' :jointree ' IN own[q]))
                                   FROM '\{RANGETBLREF :rtindex ([0-9]+)\}')::int;
                rel := substring((regexp_split_to_array(own[q], '\{RANGETBLENTRY '))[first + 1]
                                 FROM '^[^{]*(?:\{ALIAS [^}]*\}[^{]*)* :rtekind 0 :relid ([0-9]+) ')::oid;
                -- A chain of tables is refreshed by its first table's rows
                -- when its rows carry that table's key, else (and in a
                -- UNION ALL branch) by its row identity. A chain with a
                -- subquery that groups only by the first table's rows.
                grouped := EXISTS (SELECT FROM generate_subscripts(up, 1) AS b(i)
                                    WHERE up[b.i] = q AND via[b.i] = 'subquery'
                                      AND own[b.i] ~ ' :(groupClause|distinctClause) [^<]');
                IF grouped AND NOT sluice._st_tree_has_key(own[q], first, rel) THEN
                    RETURN prefix || format('with a LEFT JOIN and a subquery that groups, every row (or group) must '
                                            'include the primary key of the first table (%s) for differential refresh',
                                            rel::regclass);
                END IF;
                -- A chain is differential as the whole query, or as the
                -- one subquery of queries that only filter and project it,
                -- which keep its refresh unit; with a subquery that groups,
                -- not in a UNION ALL branch; not joined.
                IF grouped AND (kind = 'branch' OR (kind = 'derived' AND prefix LIKE 'UNION ALL branch %')) THEN
                    RETURN substring(prefix FROM '^UNION ALL branch [0-9]+')
                           || ' has a LEFT JOIN, which is refreshed differentially as a '
                           || 'whole query but not inside a UNION ALL';
                END IF;
                IF kind = 'joined' THEN
                    RETURN rtrim(prefix, ': ') || ' has a LEFT JOIN, which is refreshed differentially as a '
                                               || 'whole query but not inside a subquery';
                END IF;
            END IF;
        ELSE
            IF own[q] ~ ' :hasSubLinks true ' THEN
                RETURN prefix || why_sublink_nested;
            END IF;
            -- One relation (rtekind 0) and nothing that groups, removes or
            -- limits rows; in the parent, an alias without column names
            -- and no LATERAL (later versions print more fields, without
            -- braces, between :subquery and :lateral).
            IF own[q] ~ (' :(hasAggs|hasWindowFuncs|hasDistinctOn) true '
                         '| :(cteList|groupClause|groupingSets|havingQual|distinctClause|limitOffset|limitCount|setOperations) [^<]')
               OR regexp_count(own[q], '\{RANGETBLENTRY ') <> 1
               OR own[q] !~ ' :eref \{ALIAS [^}]*\} :rtekind 0 '
               OR own[up[q]] !~ (':alias \{ALIAS :aliasname [^ ]+ :colnames <>\} :eref \{ALIAS [^}]*\} '
                                 ':rtekind 1 :subquery \{Q' || q || '\}[^{}]* :lateral false ') THEN
                RETURN prefix || why_shape;
            END IF;
            -- Its table takes part in a join (the engine's rules for one).
            why := sluice._st_join_table_reason(own[q]);
            IF why IS NOT NULL THEN
                RETURN prefix || why;
            END IF;
            -- Its select list has every primary-key column of that table
            -- (its one relation, range-table entry 1).
            IF NOT sluice._st_tree_has_key(own[q], 1, substring(own[q] FROM ' :rtekind 0 :relid ([0-9]+) ')::oid) THEN
                RETURN prefix || why_shape;
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_query_fallback(regclass) FROM PUBLIC;

SELECT sluice._st_recheck_stored_fallbacks();
