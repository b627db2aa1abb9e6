-- refresh/sql/0026_determined_keys.sql - migration 26: a join has a row
-- identity without the primary keys of tables that its conditions pin to
-- one row.
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
-- sluice._st_select_keys (restated from migration 25) now leaves out of
-- the row identity every table whose primary-key columns each equal a
-- constant or a column of a table that is part of the identity (or, in
-- turn, is left out this way), through a condition that holds wherever the
-- table's rows appear:
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
-- Nothing else changes: the engine (refresh/analyze.c) already follows the
-- row identity it is given, whichever columns make it up: the affected
-- rows of a join are found through each table's changes and named by
-- that identity.
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
