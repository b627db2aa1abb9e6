-- refresh/sql/0026_keys_and_windows.sql - migration 26: a join has a row
-- identity without the primary keys of tables that its conditions pin to
-- one row; a stream table without one says which keys to select; window
-- functions partitioned by selected columns are refreshed by partition.
--
-- Until now a query over tables had a row identity (and could be refreshed
-- differentially) only when its select list had the primary key of every
-- table it read. The most common join there is did not:
--
--   SELECT o.id, o.amount, c.name
--     FROM orders o JOIN customers c ON c.id = o.customer_id
--
-- selects no customers.id, so it got content identity and was refreshed in
-- full at every refresh, with "rows have no key (content identity)" as the
-- only reason. Yet o.id alone tells its rows apart: the join condition
-- equates the customers' whole primary key with a column of orders, so each
-- order meets at most one customer.
--
-- sluice._st_select_keys (now a wrapper of sluice._st_identity, which
-- restates its rules from migration 25) leaves out of the row identity
-- every table whose primary-key columns each equal a constant or a column
-- of a table that is part of the identity (or, in turn, is left out this
-- way), through a condition that holds wherever the table's rows appear:
--
--   - the conditions of inner joins and WHERE, anywhere;
--   - a LEFT JOIN's own condition, for the tables on its NULL-extended side
--     (orders o LEFT JOIN customers c ON c.id = o.customer_id: o.id); not
--     for the other side, whose rows that meet nothing all come out with
--     NULLs there;
--   - nothing from a FULL JOIN's condition, nor from semi or anti joins
--     (subqueries in WHERE).
--
-- Chains work (items i JOIN orders o ON o.id = i.order_id JOIN customers c
-- ON c.id = o.customer_id: i.id), and so do self-joins (employees e JOIN
-- employees m ON m.id = e.manager_id: e.id). The conditions are read from
-- the plan, as the rest of this function does: an equality of two plain
-- terms as EXPLAIN prints them (alias.column, or a constant), not under OR
-- or NOT; a cast on either side (a join of int with bigint) is not read, and
-- the query then keeps content identity as before. A query that selected
-- every key gets the same identity as before.
--
-- For this, nothing else changes: the engine (refresh/analyze.c) already
-- follows the row identity it is given, whichever columns make it up: the
-- affected rows of a join are found through each table's changes and
-- named by that identity.
--
-- Window functions. Until now any window function made a stream table
-- FULL. A query over one table, or tables joined by inner joins, whose
-- windows are all partitioned is now left to the engine
-- (sluice._st_query_fallback, restated from migration 25), which
-- refreshes it by partition when the select list has, as they
-- are, columns that every window is partitioned by: those columns are the
-- refresh unit (unit_columns, as a LEFT JOIN chain's first table), the
-- affected units are the partition columns of the window's change images
-- (over a join: of the join's rows that involve a changed row, before and
-- after), and those partitions are recomputed whole (refresh/analyze.c,
-- window_units). A row's window values depend only on its partition, and
-- each window's partition lies inside one unit, so that is exact. Such a
-- partition may be NULL, which the driver's `(units) IN (...)` did not
-- find: sluice._refresh (restated from migration 24) also reads the stored
-- rows of units with a NULL part. sluice._st_identity passes through the
-- WindowAgg at the top of the plan (and the wrapper above it), so such a
-- query is keyed by its tables' primary keys. The same holds for such a
-- query as the subquery in FROM of one that only filters and projects it
-- (top-N per group: ... FROM (SELECT ..., row_number() OVER (PARTITION BY
-- ...) AS rn FROM t) s WHERE s.rn <= 3), refreshed by the subquery's
-- partitions. Still FULL: windows without PARTITION BY (at creation), over
-- an outer join or a subquery, with grouping, aggregates, DISTINCT or
-- subqueries, in a UNION ALL branch or in any other subquery.
--
-- When the rows still have no key, the reason now says what to select
-- (sluice._st_identity returns it beside the key columns, and
-- sluice._st_no_key_reason words it): "rows have no key (content
-- identity): the select list lacks the primary key of public.items (i.id),
-- which no join condition pins to one row; select it for a keyed,
-- differential refresh", the GROUP BY keys a grouped query does not
-- select, or the table that has no primary key. And a construct that is
-- always FULL (a window function, say) is the reason given, and the error
-- with refresh_mode 'differential', before a missing key: until now a
-- window function's query said "rows have no key", and selecting keys
-- would not have helped. sluice._create_stream_table and
-- sluice._alter_stream_table are restated from migration 15 for that.
--
-- Also fixed here, in sluice._st_plan_output_position (restated from
-- migration 24): a join condition with OR, planned as a BitmapOr of index
-- scans, could be read as one of its arms, so `SELECT o.id AS oid,
-- o.customer_id ... JOIN customers c ON c.id = o.customer_id OR c.id =
-- o.id` got the identity (oid) although an order meets two customers
-- there. The index scans' conditions are no longer read; the heap scan
-- above them prints the whole OR.
--
-- Upgrade: row identities are not derived again (as in 17 to 25), because
-- a new identity changes every row's id: a stream table created before with
-- content identity keeps it, and stays FULL, until it is re-validated with
-- sluice.alter_stream_table(name, query => <the same query>) (which
-- publishes every row once as a delete and an insert) or created again.
-- The same call gives a stream table with such an OR in a join its right
-- identity (one created with the wrong one fails its refreshes on the
-- stream table's primary key once two rows share an id).
-- Existing stream tables without a key get the new reasons (the end of
-- this file); one whose query has a key by today's rules is told to be
-- re-validated.

-- sluice._st_plan_output_position(nodes, outputs, expr, inner_joins) -> int
--
-- As in migration 24, but the Index Cond of a Bitmap Index Scan is not
-- read: under a BitmapOr, each one is only one arm of an OR (ON c.id =
-- o.customer_id OR c.id = o.id is planned as two of them, each printing
-- one equality), and the Bitmap Heap Scan above repeats them all, with the
-- OR, in its Recheck Cond. Until now such a join could take c.id for equal
-- to o.id and give rows that repeat an identity.
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
                    WHERE NOT (p ->> 'inside')::boolean AND p -> 'n' ->> 'Node Type' <> 'Bitmap Index Scan'
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

-- sluice._st_settle(open_t, eqs, known) -> known
--
-- For sluice._st_identity: the aliases in known, and those of the tables of
-- open_t ({alias, path, cols}) that the equalities eqs ({region, a, b})
-- settle from them, applied until nothing more is settled. A table is
-- settled when every column of its primary key (cols) has an equality that
-- applies to it (its region is empty or holds the table's path) with a
-- constant or a column of a settled table on the other side.
CREATE FUNCTION sluice._st_settle(open_t jsonb, eqs jsonb, known text[])
RETURNS text[]
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t    jsonb;
    more boolean;
BEGIN
    LOOP
        more := false;
        FOR t IN SELECT e FROM jsonb_array_elements(open_t) e WHERE NOT (e ->> 'alias') = ANY (known) LOOP
            CONTINUE WHEN EXISTS (
                SELECT FROM jsonb_array_elements_text(t -> 'cols') k
                 WHERE NOT EXISTS (
                     SELECT FROM jsonb_array_elements(eqs) q,
                            LATERAL (SELECT CASE WHEN q ->> 'a' = k THEN q ->> 'b' ELSE q ->> 'a' END AS other) o
                      WHERE k IN (q ->> 'a', q ->> 'b')
                        AND starts_with(t ->> 'path', q ->> 'region')
                        AND (o.other ~ '^(''|[0-9]|-[0-9])'
                             OR EXISTS (SELECT FROM unnest(known) a WHERE starts_with(o.other, a || '.')))));
            known := known || (t ->> 'alias');
            more := true;
        END LOOP;
        EXIT WHEN NOT more;
    END LOOP;
    RETURN known;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_settle(jsonb, jsonb, text[]) FROM PUBLIC;

-- sluice._st_identity(query, relid) -> (key_columns, missing)
--
-- The rules of sluice._st_select_keys as in migration 25, with a table
-- whose primary key is not selected left out of the identity when its key
-- is determined by the others' (see the file header and the comment in
-- the function). key_columns NULL: content identity; then missing says
-- what to select, when that is what is lacking (tables' primary keys,
-- named with the aliases the query gives them, or a table without one),
-- else NULL.
CREATE FUNCTION sluice._st_identity(query text, relid oid, OUT key_columns text[], OUT missing text)
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
    sc      record;
    pkref   text;
    pkrefs  text[];
    found   text[];
    known   text[] := '{}'; -- aliases (quoted) of the tables whose primary key is in the row identity
    open_t  jsonb := '[]';  -- the tables whose primary key is not: {alias, path, cols}
    eqs     jsonb;          -- the equalities that hold where they apply: {region, a, b}
    unsettled text[];
    need    text[] := '{}'; -- the tables whose keys to select (missing)
    pick    text;
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
    IF query ~ '\m(EXISTS|IN|ANY|SOME|ALL)\s*\(\s*SELECT\M' THEN
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
    -- The wrapper above a query with window functions stays when the
    -- windows read columns the query does not select (PARTITION BY a
    -- column left out): its outputs are the query's, which are the first
    -- outputs of the WindowAgg below it.
    IF node ->> 'Node Type' = 'Subquery Scan' AND node ->> 'Alias' = '__sluice_q'
       AND node -> 'Plans' -> 0 ->> 'Node Type' = 'WindowAgg' AND jsonb_array_length(node -> 'Plans') = 1 THEN
        node := node -> 'Plans' -> 0;
        top_out := (ARRAY(SELECT jsonb_array_elements_text(coalesce(node -> 'Output', '[]'))))[1:cardinality(names)];
    END IF;
    LOOP
        WHILE node ->> 'Node Type' IN ('Sort', 'Incremental Sort', 'Limit', 'Result', 'Gather',
                                       'Gather Merge', 'Materialize', 'WindowAgg')
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
    -- path: where it is in the plan ('/' the top, '/2/1/' the first child
    -- of the top's second); region: the path of the NULL-extended side of
    -- an outer join that it is on, the nearest one ('' when none).
    pnodes := (WITH RECURSIVE w(n, depth, ord, inside, sscan, direct, nulled, path, region) AS (
                   SELECT node, 0, ARRAY[]::bigint[], false, NULL::jsonb, false, '', '/', ''
                 UNION ALL
                   SELECT c.v, w.depth + 1, w.ord || c.i,
                          w.inside OR (w.depth > 0 AND w.n ->> 'Node Type' IN ('Aggregate', 'Group', 'Unique'))
                          -- A subquery in WHERE: the side of a semi or anti
                          -- join that it is, a subplan (not rows of the result).
                          OR coalesce((w.n ->> 'Join Type' IN ('Semi', 'Anti') AND c.i = 2)
                                      OR (w.n ->> 'Join Type' IN ('Right Semi', 'Right Anti') AND c.i = 1)
                                      OR c.v ->> 'Parent Relationship' IN ('SubPlan', 'InitPlan')
                                      OR (c.v ? 'Relation Name' AND NOT (c.v ->> 'Alias') = ANY (own_rels))
                                      -- (own_rels: no subquery in FROM)
                                      OR (c.v ->> 'Node Type' IN ('Aggregate', 'Group', 'Unique')
                                          AND own_rels IS NOT NULL), false),
                          CASE WHEN w.n ->> 'Node Type' = 'Subquery Scan' THEN w.n ELSE w.sscan END,
                          CASE WHEN w.n ->> 'Node Type' = 'Subquery Scan' THEN true
                               ELSE w.direct AND w.n ->> 'Node Type' IN ('Sort', 'Incremental Sort', 'Materialize',
                                                                        'Hash', 'Gather', 'Gather Merge', 'Memoize') END,
                          CASE WHEN (w.n ->> 'Join Type' = 'Left' AND c.i = 2) OR (w.n ->> 'Join Type' = 'Right' AND c.i = 1)
                               THEN w.nulled || coalesce((SELECT string_agg(' ' || (w.n ->> f), '')
                                                            FROM unnest(ARRAY['Hash Cond', 'Merge Cond', 'Join Filter']) f
                                                           WHERE (w.n ->> f) !~ ' OR | NOT |NOT \('), '')
                               ELSE w.nulled END,
                          w.path || c.i || '/',
                          CASE WHEN (w.n ->> 'Join Type' = 'Left' AND c.v ->> 'Parent Relationship' = 'Inner')
                                    OR (w.n ->> 'Join Type' = 'Right' AND c.v ->> 'Parent Relationship' = 'Outer')
                                    OR w.n ->> 'Join Type' = 'Full'
                               THEN w.path || c.i || '/' ELSE w.region END
                     FROM w, jsonb_array_elements(w.n -> 'Plans') WITH ORDINALITY AS c(v, i))
               SELECT jsonb_agg(jsonb_build_object('n', w.n, 'depth', w.depth, 'inside', w.inside,
                                                   'sscan', w.sscan, 'direct', w.direct, 'nulled', w.nulled,
                                                   'path', w.path, 'region', w.region)
                                ORDER BY w.ord)
                 FROM w);

    IF node ->> 'Node Type' IN ('Aggregate', 'Group') THEN
        IF node ? 'Grouping Sets' THEN
            RETURN;
        END IF;
        IF NOT node ? 'Group Key' THEN
            key_columns := '{}';
            RETURN;
        END IF;
        -- A key that is an expression (GROUP BY date_trunc('day', at)) is
        -- computed below the group node, which prints its reference to it
        -- in one more pair of parentheses.
        gkeys := ARRAY(SELECT jsonb_array_elements_text(node -> 'Group Key'));
        gkeys := gkeys || ARRAY(SELECT '(' || g || ')' FROM unnest(gkeys) g);
        -- (An output that no rule above could name is NULL in top_out.)
        IF EXISTS (SELECT FROM jsonb_array_elements_text(node -> 'Group Key') g
                    WHERE NOT coalesce(g = ANY (top_out) OR '(' || g || ')' = ANY (top_out), false)) THEN
            missing := (SELECT format('the select list lacks the GROUP BY %s %s; select %s as grouped for a '
                                      'keyed, differential refresh',
                                      CASE WHEN count(*) > 1 THEN 'keys' ELSE 'key' END, string_agg(g, ', '),
                                      CASE WHEN count(*) > 1 THEN 'them' ELSE 'it' END)
                          FROM jsonb_array_elements_text(node -> 'Group Key') g
                         WHERE NOT coalesce(g = ANY (top_out) OR '(' || g || ')' = ANY (top_out), false));
            RETURN;
        END IF;
        key_columns := ARRAY(SELECT names[i] FROM generate_subscripts(top_out, 1) i
                              WHERE top_out[i] = ANY (gkeys) ORDER BY i);
        RETURN;
    END IF;
    IF node ->> 'Node Type' = 'Unique'
       OR (node ->> 'Node Type' IN ('SetOp', 'HashSetOp') AND node ->> 'Command' NOT LIKE '% All') THEN
        -- Below a subquery's scan, only when the query selects every column
        -- that makes its rows distinct.
        IF sub IS NOT NULL
           AND NOT ARRAY(SELECT jsonb_array_elements_text(coalesce(node -> 'Output', '[]'))) <@ top_out THEN
            RETURN;
        END IF;
        key_columns := names;
        RETURN;
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
            RETURN;
        END IF;
        gkeys := ARRAY(SELECT jsonb_array_elements_text(grp.n -> CASE WHEN grp.n ->> 'Node Type' = 'Unique'
                                                                       THEN 'Output' ELSE 'Group Key' END));
        inner_out := ARRAY(SELECT jsonb_array_elements_text(coalesce(grp.n -> 'Output', '[]')));
        IF grp.sscan IS NOT NULL THEN
            sub := sluice._st_subquery_columns(query, grp.sscan ->> 'Alias');
            IF sub IS NULL THEN
                -- The wrapper of the EXPLAIN above a query that groups:
                -- it selects fewer columns than the group node gives.
                IF grp.sscan ->> 'Alias' = '__sluice_q' AND grp.n ->> 'Node Type' <> 'Unique' THEN
                    missing := format('the select list lacks a GROUP BY key; select %s%s as grouped for a '
                                      'keyed, differential refresh',
                                      CASE WHEN cardinality(gkeys) > 1 THEN 'each of ' ELSE '' END,
                                      array_to_string(gkeys, ', '));
                END IF;
                RETURN;
            END IF;
            gkeys := ARRAY(SELECT quote_ident(grp.sscan ->> 'Alias') || '.' || quote_ident(sub[array_position(inner_out, g.k)])
                             FROM unnest(gkeys) WITH ORDINALITY AS g(k, o) ORDER BY g.o);
        END IF;
        FOREACH gkey IN ARRAY gkeys LOOP
            IF gkey IS NULL THEN
                RETURN;
            END IF;
            pos := sluice._st_plan_output_position(pnodes, top_out, gkey, inner_joins);
            CONTINUE WHEN pos IS NULL AND (position('(' || gkey || ' = ' IN grp.nulled) > 0
                                           OR position(' = ' || gkey || ')' IN grp.nulled) > 0);
            IF pos IS NULL THEN
                RETURN;
            END IF;
            IF NOT names[pos] = ANY (keys) THEN
                keys := keys || names[pos];
            END IF;
        END LOOP;
        nscans := nscans + 1;
    END LOOP;

    -- Projections, filters and joins of tables with primary keys: a table
    -- whose primary key the select list has (open_t: one whose key it
    -- lacks, settled below).
    FOR sc IN SELECT p.e -> 'n' AS n, p.e ->> 'path' AS path
                FROM jsonb_array_elements(pnodes) WITH ORDINALITY AS p(e, o)
               WHERE NOT (p.e ->> 'inside')::boolean ORDER BY p.o LOOP
        scan := sc.n;
        IF scan ->> 'Node Type' IN ('ProjectSet', 'Function Scan', 'Values Scan', 'CTE Scan',
                                    'WorkTable Scan', 'Table Function Scan', 'Named Tuplestore Scan',
                                    'Foreign Scan', 'Custom Scan', 'Recursive Union') THEN
            RETURN;
        END IF;
        CONTINUE WHEN NOT scan ? 'Relation Name';
        nscans := nscans + 1;
        IF NOT EXISTS (SELECT 1 FROM pg_index i
                        WHERE i.indrelid = format('%I.%I', scan ->> 'Schema', scan ->> 'Relation Name')::regclass
                          AND i.indisprimary) THEN
            missing := format('table %I.%I has no primary key; give it one for a keyed, differential refresh',
                              scan ->> 'Schema', scan ->> 'Relation Name');
            RETURN;
        END IF;
        found := '{}';
        pkrefs := '{}';
        FOR pkcol IN
            SELECT a.attname
              FROM pg_index i
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = format('%I.%I', scan ->> 'Schema', scan ->> 'Relation Name')::regclass
               AND i.indisprimary
        LOOP
            pkref := quote_ident(scan ->> 'Alias') || '.' || quote_ident(pkcol);
            pkrefs := pkrefs || pkref;
            pos := sluice._st_plan_output_position(pnodes, top_out, pkref, inner_joins);
            found := found || names[pos];
        END LOOP;
        IF array_position(found, NULL) IS NULL THEN
            keys := keys || ARRAY(SELECT DISTINCT f FROM unnest(found) f WHERE NOT f = ANY (keys));
            known := known || quote_ident(scan ->> 'Alias');
        ELSE
            open_t := open_t || jsonb_build_object('alias', quote_ident(scan ->> 'Alias'), 'path', sc.path,
                                                   'cols', to_jsonb(pkrefs),
                                                   'rel', format('%I.%I', scan ->> 'Schema', scan ->> 'Relation Name'));
        END IF;
    END LOOP;
    IF nscans = 0 THEN
        RETURN;
    END IF;

    -- A table whose primary key the select list lacks adds nothing to the
    -- row identity when every column of that key equals a constant or a
    -- column of a table that is part of it (or, in turn, is settled so),
    -- by a condition that holds wherever that table's rows are in the
    -- result: then each row of the other tables meets at most one of its
    -- rows. orders o JOIN customers c ON c.id = o.customer_id: o.id alone
    -- tells the rows apart. A condition of an inner join or a filter holds
    -- for the rows of the part of the plan it is in; the condition of a
    -- LEFT JOIN, for its NULL-extended side (its other side keeps rows
    -- that meet no row there, so a key found only that way would not tell
    -- those apart); a FULL JOIN's, semi and anti joins', nowhere. Which
    -- part (region): the NULL-extended side of the nearest outer join
    -- above, or everywhere. Only equalities of two plain terms, as the
    -- plan prints them (alias.column, or a constant), count; a Bitmap
    -- Index Scan's are left out, as in _st_plan_output_position above.
    IF open_t <> '[]' THEN
        eqs := (SELECT coalesce(jsonb_agg(jsonb_build_object('region', r.region, 'a', m[1], 'b', m[2])), '[]')
                  FROM jsonb_array_elements(pnodes) p,
                       LATERAL (SELECT p -> 'n' ->> f AS cond,
                                       CASE WHEN f = 'Filter' OR NOT p -> 'n' ? 'Join Type'
                                                 OR p -> 'n' ->> 'Join Type' = 'Inner'
                                            THEN p ->> 'region'
                                            WHEN p -> 'n' ->> 'Join Type' = 'Left'
                                            THEN (SELECT (p ->> 'path') || k.i || '/'
                                                    FROM jsonb_array_elements(p -> 'n' -> 'Plans') WITH ORDINALITY AS k(v, i)
                                                   WHERE k.v ->> 'Parent Relationship' = 'Inner')
                                            WHEN p -> 'n' ->> 'Join Type' = 'Right'
                                            THEN (SELECT (p ->> 'path') || k.i || '/'
                                                    FROM jsonb_array_elements(p -> 'n' -> 'Plans') WITH ORDINALITY AS k(v, i)
                                                   WHERE k.v ->> 'Parent Relationship' = 'Outer')
                                       END AS region
                                  FROM unnest(ARRAY['Hash Cond', 'Merge Cond', 'Join Filter', 'Index Cond',
                                                    'Recheck Cond', 'Filter']) f) r,
                       LATERAL regexp_matches(r.cond, '\(([^() ]+) = ([^() ]+)\)', 'g') m
                 WHERE NOT (p ->> 'inside')::boolean AND p -> 'n' ->> 'Node Type' <> 'Bitmap Index Scan'
                   AND r.cond IS NOT NULL AND r.region IS NOT NULL AND r.cond !~ ' OR | NOT |NOT \(');
        known := sluice._st_settle(open_t, eqs, known);
        IF EXISTS (SELECT FROM jsonb_array_elements(open_t) t(e) WHERE NOT (t.e ->> 'alias') = ANY (known))
           OR cardinality(keys) = 0 THEN
            -- What to select, found greedily: a table that stays unsettled
            -- even with every other one known (nothing pins it), else the
            -- first unsettled (tables that pin only each other), until the
            -- rest follow; with every table pinned by constants and none
            -- keyed, the first.
            LOOP
                unsettled := ARRAY(SELECT t.e ->> 'alias' FROM jsonb_array_elements(open_t) WITH ORDINALITY AS t(e, o)
                                    WHERE NOT (t.e ->> 'alias') = ANY (known) ORDER BY t.o);
                IF cardinality(unsettled) = 0 THEN
                    EXIT WHEN cardinality(keys) + cardinality(need) > 0;
                    unsettled := ARRAY[open_t -> 0 ->> 'alias'];
                END IF;
                pick := coalesce((SELECT u.a FROM unnest(unsettled) WITH ORDINALITY AS u(a, o)
                                   WHERE NOT u.a = ANY (sluice._st_settle(open_t, eqs,
                                                                           known || array_remove(unsettled, u.a)))
                                   ORDER BY u.o LIMIT 1),
                                 unsettled[1]);
                need := need || pick;
                known := sluice._st_settle(open_t, eqs, known || pick);
            END LOOP;
            missing := (SELECT format('the select list lacks the primary key of %s, which no join condition '
                                      'pins to one row; select %s for a keyed, differential refresh',
                                      string_agg(format('%s (%s)', t.e ->> 'rel',
                                                        array_to_string(ARRAY(SELECT jsonb_array_elements_text(t.e -> 'cols')), ', ')),
                                                 ' and ' ORDER BY array_position(need, t.e ->> 'alias')),
                                      CASE WHEN count(*) > 1 THEN 'them' ELSE 'it' END)
                          FROM jsonb_array_elements(open_t) AS t(e)
                         WHERE (t.e ->> 'alias') = ANY (need));
            RETURN;
        END IF;
    END IF;
    -- Output order.
    key_columns := ARRAY(SELECT n FROM unnest(names) WITH ORDINALITY AS u(n, o) WHERE n = ANY (keys) ORDER BY o);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_identity(text, oid) FROM PUBLIC;

-- sluice._st_select_keys(query, relid) -> key_columns (NULL: content identity)
--
-- What it always returned, now from sluice._st_identity.
CREATE OR REPLACE FUNCTION sluice._st_select_keys(query text, relid oid)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN (sluice._st_identity(query, relid)).key_columns;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_select_keys(text, oid) FROM PUBLIC;

-- sluice._st_no_key_reason(query, relid) -> text
--
-- The reason a stream table of `query` (stored in relid) without a row
-- identity gives, saying what to select: "rows have no key (content
-- identity): the select list lacks the primary key of public.items
-- (i.id), which no join condition pins to one row; select it for a keyed,
-- differential refresh". For a UNION ALL, of its first branch without an
-- identity. Until now it was "rows have no key (content identity)" alone,
-- which left the user to find out which key.
CREATE FUNCTION sluice._st_no_key_reason(query text, relid oid)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    parts text[];
    id    record;
    hint  text;
BEGIN
    BEGIN
        parts := sluice._st_union_all_branches(query);
        IF parts IS NULL THEN
            hint := (sluice._st_identity(query, relid)).missing;
        ELSE
            FOR i IN 1 .. cardinality(parts) LOOP
                id := sluice._st_identity(parts[i], relid);
                IF id.key_columns IS NULL THEN
                    hint := format('UNION ALL branch %s: %s', i,
                                   coalesce(id.missing, 'it has no row identity of its own'));
                    EXIT;
                END IF;
            END LOOP;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        hint := NULL;   -- a query that does not plan: the general advice
    END;
    RETURN 'rows have no key (content identity): '
           || coalesce(hint, 'select the primary key of every table read that no join condition pins to one '
                             'row (or every GROUP BY key) for a keyed, differential refresh');
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_no_key_reason(text, oid) FROM PUBLIC;

-- sluice._st_query_fallback(view) -> reason or NULL
--
-- As in migration 25, but window functions are left to the engine when
-- they can be refreshed by partition (see the file header). Migration 25's
-- text:
--
-- As in migration 24, with the rules above: in the outer query and in
-- UNION ALL branches, a SubLink of type EXISTS (0), ALL (1), ANY (2), EXPR
-- (4, scalar) or ARRAY (6) whose query reads one table and has no
-- subquery of its own, anywhere in WHERE (not in a join's ON) and in the
-- select list of a query that neither groups nor aggregates, in a query
-- without a subquery in FROM; elsewhere refused.
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
        'subqueries in expressions are refreshed differentially in the WHERE clause, and in the '
        'select list of a query that neither groups nor aggregates, each reading one table with '
        'no join or subquery of its own; this one is refreshed in full';
    why_sublink_nested constant text :=
        'subqueries in expressions are refreshed differentially in the WHERE clause or the select '
        'list of the stream table''s query or of a UNION ALL branch, not inside a subquery in FROM';
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
    typ    text;   -- a subquery in an expression: its SubLinkType (0 EXISTS, 2 ANY, 4 EXPR)
    tl     int;    -- where a query's select list starts in own[]
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
        -- the file header): one table, no subquery of its own, giving a
        -- value (EXISTS, ALL, ANY, a scalar, ARRAY).
        IF kind = 'other' AND via[q] = 'subselect' AND kinds[up[q]] IN ('outer', 'branch') THEN
            typ := substring(substr(own[up[q]], 1, position(' :subselect {Q' || q || '}' IN own[up[q]]))
                             FROM '.*\{SUBLINK :subLinkType ([0-9]) ');
            IF typ NOT IN ('0', '1', '2', '4', '6')
               OR own[q] ~ (' :(hasSubLinks|hasForUpdate) true | :(cteList|setOperations) [^<]')
               OR regexp_count(own[q], '\{RANGETBLENTRY ') <> 1
               OR own[q] !~ ' :rtekind 0 .* :inh true ' THEN
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
                    -- (Window functions: see below.)
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
            -- Window functions (since migration 26): by partition, in the
            -- outer query or the subquery that is the whole FROM of a
            -- query that filters and projects it (top-N per group), not
            -- in a UNION ALL branch (refreshed by row identity); over one
            -- table, every window partitioned (an empty PARTITION BY
            -- prints as <>), nothing that groups, aggregates or removes
            -- duplicates, no subquery. The engine then checks that the
            -- select list has the partition columns.
            IF own[q] ~ ' :hasWindowFuncs true ' THEN
                IF own[q] ~ ' :partitionClause <> ' THEN
                    RETURN prefix || 'window functions without PARTITION BY are refreshed in full (a change '
                                  || 'can move every row''s value)';
                END IF;
                IF NOT (kind = 'outer' OR (kind = 'derived' AND prefix NOT LIKE 'UNION ALL branch %'))
                   OR own[q] ~ (' :(hasAggs|hasSubLinks|hasDistinctOn) true '
                                '| :(groupClause|havingQual|distinctClause) [^<]')
                   -- (tables, joined by inner joins: jointype 0; rtekind 2
                   -- is a join's own entry)
                   OR own[q] ~ '\{JOINEXPR :jointype [1-9]' OR own[q] ~ ' :rtekind [13-9]' THEN
                    RETURN prefix || 'window functions are refreshed differentially over one table or tables '
                                  || 'joined by inner joins, when every window has a PARTITION BY and the query '
                                  || 'neither groups, aggregates, removes duplicates nor has subqueries; this one '
                                  || 'is refreshed in full';
                END IF;
            END IF;
        END IF;
        -- Subqueries in expressions (the engine's sublink_reason), each
        -- giving a value (checked with its query, above): anywhere in WHERE
        -- (and ON: both are printed before the select list); in the select
        -- list and what follows it, in a query that neither groups nor
        -- aggregates; and over tables only (the rules of joins and LEFT
        -- JOIN chains below).
        IF kind IN ('outer', 'branch') AND own[q] ~ ' :hasSubLinks true ' THEN
            tl := position(' :targetList ' IN own[q]);
            IF substr(own[q], 1, tl) ~ '\{SUBLINK :subLinkType [^01246] '
               -- (in a join's ON: its text runs from :quals to the join's :alias)
               OR EXISTS (SELECT FROM regexp_matches(own[q], ' :join_using_alias <> :quals (.*?) :alias ', 'g') j
                           WHERE j[1] ~ '\{SUBLINK ')
               OR (substr(own[q], tl) ~ '\{SUBLINK '
                   AND (substr(own[q], tl) ~ '\{SUBLINK :subLinkType [^01246] '
                        OR own[q] ~ ' :hasAggs true | :(groupClause|havingQual|distinctClause) [^<]')) THEN
                RETURN prefix || why_sublink;
            END IF;
            IF own[q] ~ ' :rtekind 1 ' THEN
                RETURN prefix || 'a query with a subquery in an expression (in its WHERE clause or its select '
                              || 'list) is refreshed differentially when its FROM has only tables (joined, or in a '
                              || 'LEFT JOIN chain), no subquery in FROM';
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

-- sluice._refresh(id, force_full): migration 24's driver, and the stored
-- rows of units with a NULL part are found too (see the comment in it).
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
                -- Units with a NULL part (a window's partition by a column
                -- with NULLs, since migration 26), which IN does not find:
                -- the stored rows with a NULL part, compared whole.
                EXECUTE format('INSERT INTO %1$s SELECT __sluice_s.ctid, __sluice_s.* FROM %2$s __sluice_s '
                               'WHERE (%3$s) AND EXISTS (SELECT FROM pg_temp.__sluice_aff __sluice_a WHERE (%4$s) IS NOT DISTINCT FROM (%5$s)) '
                               'AND (SELECT count(*) > 0 FROM pg_temp.__sluice_aff WHERE %6$s)',
                               old_rel, storage,
                               (SELECT string_agg(format('__sluice_s.%I IS NULL', u), ' OR ') FROM unnest(st.unit_columns) u),
                               (SELECT 'ROW(' || string_agg(format('__sluice_a.%I', u), ', ') || ')' FROM unnest(st.unit_columns) u),
                               (SELECT 'ROW(' || string_agg(format('__sluice_s.%I', u), ', ') || ')' FROM unnest(st.unit_columns) u),
                               (SELECT string_agg(format('%I IS NULL', u), ' OR ') FROM unnest(st.unit_columns) u));
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

-- sluice._create_stream_table and sluice._alter_stream_table, as in
-- migration 15, but a construct that is always FULL is the reason given
-- (and the error with refresh_mode 'differential') before a missing key,
-- since selecting keys would not help (a window function's query said
-- "rows have no key"); and a missing key's reason is
-- sluice._st_no_key_reason's.
CREATE OR REPLACE FUNCTION sluice._create_stream_table(name text, query text, refresh_mode text, schedule interval,
                                                       view regclass, caller name, schema name, path text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn      constant text := 'sluice.create_stream_table';
    nm      text := sluice._st_norm_name(fn, name);
    owner   oid;
    sch     text;
    tbl     text;
    qtext   text;
    keys    text[];
    why     text;
    nokey   text;   -- the reason when the rows have no key
    st_id   bigint;
    storage regclass;
    nrows   bigint;
BEGIN
    PERFORM sluice._st_check_read_committed(fn);
    PERFORM sluice._st_check_args(fn, coalesce(refresh_mode, 'NULL'), coalesce(schedule, interval '0'));
    owner := (SELECT r.oid FROM pg_roles r WHERE r.rolname = caller);
    IF owner IS NULL OR NOT pg_has_role(session_user, owner, 'MEMBER') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('%s: session user %s may not act as role %s', fn, session_user, caller),
            HINT = 'Call sluice.create_stream_table(), not this internal function.';
    END IF;
    IF position('.' IN nm) > 0 THEN
        sch := split_part(nm, '.', 1);
        tbl := split_part(nm, '.', 2);
    ELSE
        sch := schema;
        tbl := nm;
        IF sch IS NULL OR sch !~ '^[a-z_][a-z0-9_]*$' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'invalid_schema_name',
                MESSAGE = format('%s: no schema to create stream table %s in (current schema %s)', fn, nm,
                                 coalesce(quote_ident(sch), 'none')),
                HINT = format('Qualify the name, e.g. ''public.%s''.', nm);
        END IF;
        IF sch <> 'public' THEN
            nm := sch || '.' || tbl;
        END IF;
    END IF;
    IF sch IN ('sluice', 'sluice_changes', 'pg_catalog', 'information_schema') OR sch LIKE 'pg\_%' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_schema_name',
            MESSAGE = format('%s: stream table %s cannot be created in schema %s', fn, nm, sch),
            HINT = 'Use a schema of your own, e.g. public.';
    END IF;
    IF EXISTS (SELECT 1 FROM sluice.stream_table_catalog c WHERE c.name = nm) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('%s: stream table %s already exists', fn, nm),
            HINT = 'Choose another name, change it with sluice.alter_stream_table(), or drop it with sluice.drop_stream_table() first.';
    END IF;
    IF to_regclass(format('%I.%I', sch, tbl)) IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_table',
            MESSAGE = format('%s: relation %I.%I already exists', fn, sch, tbl),
            HINT = 'A stream table creates its own table; choose a name no relation has.';
    END IF;

    -- The query, schema-qualified by PostgreSQL (see the file header).
    qtext := regexp_replace(pg_get_viewdef(view), '[\s;]+$', '');
    EXECUTE format('CREATE TABLE %I.%I AS SELECT NULL::uuid AS __sluice_row_id, __sluice_q.* FROM (%s) __sluice_q WITH NO DATA',
                   sch, tbl, qtext);
    storage := format('%I.%I', sch, tbl)::regclass;
    EXECUTE format('ALTER TABLE %s ALTER COLUMN __sluice_row_id SET NOT NULL, ADD PRIMARY KEY (__sluice_row_id)', storage);
    EXECUTE format('COMMENT ON TABLE %s IS %L', storage,
                   format('Stream table %s, kept current by sluice (see sluice.stream_tables)', nm));
    IF owner <> (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) THEN
        EXECUTE format('GRANT SELECT ON %s TO %I', storage, caller);
    END IF;

    keys := sluice._st_key_columns(qtext, storage);
    why := sluice._st_query_fallback(view);
    nokey := CASE WHEN keys IS NULL THEN sluice._st_no_key_reason(qtext, storage) END;
    -- A construct that is always FULL first: selecting keys would not help.
    IF refresh_mode = 'differential' AND why IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s: refresh_mode differential is not possible for %s: %s', fn, nm, why),
            HINT = 'Change the query, or use refresh_mode => ''auto'' (refreshed in full, for this reason) or ''full''.';
    END IF;
    IF refresh_mode = 'differential' AND keys IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s: refresh_mode differential is not possible for %s: %s', fn, nm, nokey),
            DETAIL = 'Rows are identified by GROUP BY keys, DISTINCT, or the primary keys of the tables read (in the select list, but for tables a join condition pins to one row); this query has none of these, so identical rows can only be told apart by content and the table is refreshed in full.',
            HINT = 'Select the columns named above, or use refresh_mode => ''auto'' or ''full''.';
    END IF;

    INSERT INTO sluice.stream_table_catalog (name, relid, query, query_as_given, search_path, requested_mode,
                                             schedule, key_columns, owner, frontier, effective_mode,
                                             fallback_reason, query_fallback)
    VALUES (nm, storage, qtext, query, path, refresh_mode, schedule, keys, owner, pg_current_snapshot(),
            CASE WHEN refresh_mode = 'full' OR keys IS NULL OR why IS NOT NULL THEN 'full' END,
            CASE WHEN refresh_mode = 'full' THEN 'refresh_mode full was requested'
                 WHEN why IS NOT NULL THEN why
                 ELSE nokey END,
            why)
    RETURNING id INTO st_id;
    -- Decided here: the engine has nothing to analyse.
    IF keys IS NULL OR (why IS NOT NULL AND refresh_mode <> 'full') THEN
        UPDATE sluice.stream_table_catalog c SET analyzed_query = qtext WHERE c.id = st_id;
    END IF;

    -- Capture first, then fill from a snapshot taken after it (in _refresh).
    PERFORM sluice._st_set_sources(st_id, view, fn, nm, owner);
    PERFORM sluice._refresh(st_id, true);
    SELECT c.rows INTO nrows FROM sluice.stream_table_catalog c WHERE c.id = st_id;
    RAISE NOTICE USING MESSAGE = format(
        'stream table %s created: %s rows; refresh mode %s%s', nm, nrows, refresh_mode,
        CASE WHEN refresh_mode = 'full' THEN ''
             WHEN why IS NOT NULL THEN ', refreshed in full: ' || why
             WHEN keys IS NULL THEN ', refreshed in full: ' || nokey
             ELSE ', refreshed in full until the engine (sluice engine) has analysed the query; see sluice.explain_stream_table(' || quote_literal(nm) || ')'
        END);
END
$fn$;

CREATE OR REPLACE FUNCTION sluice._alter_stream_table(name text, query text, schedule interval, refresh_mode text,
                                                      view regclass, path text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn      constant text := 'sluice.alter_stream_table';
    st      sluice.stream_table_catalog := sluice._st_lookup(fn, name, true);
    mode    text := coalesce(refresh_mode, st.requested_mode);
    qtext   text;
    keys    text[];
    why     text;
    nokey   text;   -- the reason when the rows have no key
    deps    text;
    same    boolean;
    storage regclass := st.relid::regclass;
    sch     text;
    tbl     text;
BEGIN
    PERFORM sluice._st_check_args(fn, mode, schedule);
    PERFORM 1 FROM sluice.stream_table_catalog c WHERE c.id = st.id FOR UPDATE;
    IF schedule IS NOT NULL THEN
        UPDATE sluice.stream_table_catalog c SET schedule = _alter_stream_table.schedule WHERE c.id = st.id;
    END IF;
    IF view IS NULL THEN
        IF refresh_mode IS NOT NULL AND mode IS DISTINCT FROM st.requested_mode THEN
            IF mode = 'differential' AND st.query_fallback IS NOT NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'feature_not_supported',
                    MESSAGE = format('%s: refresh_mode differential is not possible for %s: %s', fn, st.name, st.query_fallback),
                    HINT = 'Change the query (alter_stream_table(name, query => ...)), or keep refresh_mode ''auto'' or ''full''.';
            END IF;
            IF mode = 'differential' AND st.key_columns IS NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'feature_not_supported',
                    MESSAGE = format('%s: refresh_mode differential is not possible for %s: %s', fn, st.name,
                                     sluice._st_no_key_reason(st.query, st.relid)),
                    HINT = 'Change the query to select the columns named above (alter_stream_table(name, query => ...)), or keep refresh_mode ''auto'' or ''full''.';
            END IF;
            -- A new mode: the analysis is redone by the engine, unless the
            -- rows or the query decide it.
            UPDATE sluice.stream_table_catalog c
               SET requested_mode = mode,
                   analyzed_query = CASE WHEN c.key_columns IS NULL OR (c.query_fallback IS NOT NULL AND mode <> 'full')
                                         THEN c.query END,
                   effective_mode = CASE WHEN mode = 'full' OR c.key_columns IS NULL OR c.query_fallback IS NOT NULL
                                         THEN 'full' END,
                   fallback_reason = CASE WHEN mode = 'full' THEN 'refresh_mode full was requested'
                                          WHEN c.query_fallback IS NOT NULL THEN c.query_fallback
                                          WHEN c.key_columns IS NULL THEN sluice._st_no_key_reason(c.query, c.relid)
                                          END,
                   operator_tree = NULL, affected_sql = NULL, recompute_sql = NULL,
                   status = 'active', last_error = NULL
             WHERE c.id = st.id;
        END IF;
        RETURN;
    END IF;

    -- A new query: validated like at creation.
    PERFORM sluice._st_check_read_committed(fn);
    qtext := regexp_replace(pg_get_viewdef(view), '[\s;]+$', '');
    SELECT coalesce(array_agg(format('%s %s', a.attname, format_type(a.atttypid, a.atttypmod)) ORDER BY a.attnum), '{}')
           = coalesce((SELECT array_agg(format('%s %s', b.attname, format_type(b.atttypid, b.atttypmod)) ORDER BY b.attnum)
                         FROM pg_attribute b
                        WHERE b.attrelid = view AND b.attnum > 0 AND NOT b.attisdropped), '{}')
      INTO same
      FROM pg_attribute a
     WHERE a.attrelid = storage AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> '__sluice_row_id';
    IF NOT same THEN
        SELECT string_agg(c.name, ', ' ORDER BY c.name) INTO deps
          FROM sluice.stream_table_sources s JOIN sluice.stream_table_catalog c ON c.id = s.stream_table_id
         WHERE s.relid = st.relid;
        IF deps IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'dependent_objects_still_exist',
                MESSAGE = format('%s: cannot change the columns of stream table %s: stream tables %s read it', fn, st.name, deps),
                HINT = 'Keep the output columns (names and types) unchanged, or drop the dependent stream tables first.';
        END IF;
        -- Every old row leaves (published as deletes), then the table is
        -- rebuilt and filled (published as inserts by the refresh below).
        PERFORM sluice._st_drop_temps();
        EXECUTE format('CREATE TEMP TABLE __sluice_delta ON COMMIT DROP AS SELECT __sluice_s.__sluice_row_id AS row_id, ''delete''::text AS op, to_jsonb(__sluice_s) - ''__sluice_row_id'' AS before, NULL::jsonb AS after FROM %s __sluice_s',
                       storage);
        PERFORM sluice._st_publish(st, 'full', clock_timestamp());
        DROP TABLE pg_temp.__sluice_delta;
        SELECT n.nspname, k.relname INTO sch, tbl FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
         WHERE k.oid = storage;
        IF EXISTS (SELECT 1 FROM sluice.cdc_sources b WHERE b.relid = storage) THEN
            PERFORM sluice.cdc_detach(storage);
        END IF;
        EXECUTE format('DROP TABLE %s', storage);
        EXECUTE format('CREATE TABLE %I.%I AS SELECT NULL::uuid AS __sluice_row_id, __sluice_q.* FROM (%s) __sluice_q WITH NO DATA',
                       sch, tbl, qtext);
        storage := format('%I.%I', sch, tbl)::regclass;
        EXECUTE format('ALTER TABLE %s ALTER COLUMN __sluice_row_id SET NOT NULL, ADD PRIMARY KEY (__sluice_row_id)', storage);
        EXECUTE format('COMMENT ON TABLE %s IS %L', storage,
                       format('Stream table %s, kept current by sluice (see sluice.stream_tables)', st.name));
        IF st.owner <> (SELECT r.oid FROM pg_roles r WHERE r.rolname = current_user) THEN
            EXECUTE format('GRANT SELECT ON %s TO %I', storage, pg_get_userbyid(st.owner));
        END IF;
    END IF;
    keys := sluice._st_key_columns(qtext, storage);
    why := sluice._st_query_fallback(view);
    nokey := CASE WHEN keys IS NULL THEN sluice._st_no_key_reason(qtext, storage) END;
    IF mode = 'differential' AND why IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s: refresh_mode differential is not possible for %s: %s', fn, st.name, why),
            HINT = 'Change the query, or use refresh_mode ''auto'' (refreshed in full, for this reason) or ''full''.';
    END IF;
    IF mode = 'differential' AND keys IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s: refresh_mode differential is not possible for %s: %s', fn, st.name, nokey),
            HINT = 'Select the columns named above, or use refresh_mode ''auto'' or ''full''.';
    END IF;
    UPDATE sluice.stream_table_catalog c
       SET relid = storage, query = qtext, query_as_given = _alter_stream_table.query, search_path = path,
           requested_mode = mode, key_columns = keys, query_fallback = why,
           analyzed_query = CASE WHEN keys IS NULL OR (why IS NOT NULL AND mode <> 'full') THEN qtext END,
           effective_mode = CASE WHEN mode = 'full' OR keys IS NULL OR why IS NOT NULL THEN 'full' END,
           fallback_reason = CASE WHEN mode = 'full' THEN 'refresh_mode full was requested'
                                  WHEN why IS NOT NULL THEN why
                                  ELSE nokey END,
           operator_tree = NULL, affected_sql = NULL, recompute_sql = NULL,
           status = 'active', last_error = NULL, consecutive_failures = 0,
           rows = CASE WHEN same THEN c.rows ELSE 0 END
     WHERE c.id = st.id;
    PERFORM sluice._st_set_sources(st.id, view, fn, st.name, st.owner);
    PERFORM sluice._refresh(st.id, true);
END
$fn$;

-- Stored creation reasons these rules no longer give (window functions
-- by partition) are cleared; the engine analyses those stream tables again.
SELECT sluice._st_recheck_stored_fallbacks();

-- Existing stream tables without a row identity get the reasons above: a
-- construct's when they have one, else what to select; and one whose
-- query has an identity by today's rules (it was created before) is told
-- how to get it.
DO $do$
DECLARE
    st  record;
    keys_now text[];
BEGIN
    FOR st IN SELECT c.id, c.query, c.relid, c.query_fallback
                FROM sluice.stream_table_catalog c
               WHERE c.key_columns IS NULL AND c.requested_mode <> 'full'
                 AND c.fallback_reason = 'rows have no key (content identity)'
               ORDER BY c.id LOOP
        IF st.query_fallback IS NULL THEN
            BEGIN
                keys_now := sluice._st_key_columns(st.query, st.relid);
            EXCEPTION WHEN OTHERS THEN
                keys_now := NULL;
            END;
        END IF;
        UPDATE sluice.stream_table_catalog c
           SET fallback_reason =
                   CASE WHEN st.query_fallback IS NOT NULL THEN st.query_fallback
                        WHEN keys_now IS NOT NULL
                        THEN 'rows have no key (content identity): the stream table was created before sluice gave '
                             'its query a row identity; re-validate it with sluice.alter_stream_table(name, query => '
                             '<the same query>) to have it keyed and refreshed differentially (that refresh publishes '
                             'every row once as a delete and an insert)'
                        ELSE sluice._st_no_key_reason(st.query, st.relid) END
         WHERE c.id = st.id;
    END LOOP;
END
$do$;
