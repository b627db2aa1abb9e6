-- refresh/sql/0025_value_subqueries.sql - migration 25: subqueries
-- that give a value, in the select list and anywhere in WHERE, are
-- refreshed differentially.
--
-- Until now a subquery in the select list made a stream table FULL, and
-- in WHERE only EXISTS, NOT EXISTS and IN ANDed into it were followed
-- (migration 24). Now a query over tables (joined by inner joins, or a
-- LEFT JOIN chain), or a UNION ALL branch of one, may use subqueries that
-- each read one table, give a value (a scalar subquery, EXISTS, IN, ANY,
-- ALL or ARRAY) and have no subquery of their own:
--
--   - in the select list, when the query neither groups nor aggregates:
--       (SELECT count(*) FROM items i WHERE i.order_id = o.id) AS n_items
--       (SELECT c.name FROM customers c WHERE c.id = o.customer_id) AS name
--       (SELECT r.amount FROM refunds r WHERE r.order_id = o.id
--         ORDER BY r.id DESC LIMIT 1) AS last_refund
--       ARRAY(SELECT t.tag FROM tags t WHERE t.order_id = o.id) AS tags
--   - anywhere in WHERE: NOT IN, under OR, compared with a column
--       WHERE o.customer_id NOT IN (SELECT b.id FROM blocked b)
--       WHERE o.amount > (SELECT avg(x.amount) FROM orders x
--                          WHERE x.customer_id = o.customer_id)
--
-- with any aggregate, GROUP BY, HAVING, ORDER BY or LIMIT of their own,
-- correlated in any way. The value such a subquery gives a row depends
-- only on the rows of its table that its WHERE clause lets through for
-- that row, and every row of that table that starts or stops being let
-- through, or changes while let through, is among the table's change
-- images. So the engine (refresh/analyze.c, gen_affected_sublinks) adds
-- the keys of the rows, before and after the window, for which a change
-- image passes the subquery's WHERE clause, and recomputes them with the
-- query as written. (EXISTS, NOT EXISTS and IN ANDed into WHERE keep the
-- sharper test of migration 24 when they meet its rules.) No new statement
-- shape reaches the refresh driver.
--
-- Still FULL: such subqueries in the select list of a query that groups,
-- aggregates or removes duplicates (DISTINCT), in HAVING or a JOIN's ON,
-- next to a subquery in FROM, or inside one; a subquery that reads more
-- than one table, or has a subquery of its own.
--
-- sluice._st_query_fallback (restated from migration 24) accepts them at
-- creation, and now refuses a subquery in a JOIN's ON as the engine does.
-- sluice._st_select_keys (restated from migration 24) leaves out of the
-- row identity a group node planned for such a subquery (`x IN (SELECT
-- max(y) FROM t)` becomes a join with an Aggregate over t); other
-- subqueries are planned as subplans, already left out. Upgrade: stored
-- creation reasons the check no longer gives are cleared
-- (sluice._st_recheck_stored_fallbacks), so those stream tables are
-- analysed again by the engine; row identities are not derived again (as
-- in 17 to 24), so one created before without a key keeps content
-- identity and stays FULL until created again.

-- sluice._st_select_keys(query, relid) -> key_columns (NULL: content identity)
--
-- As in migration 24, and a group node below the top of a query with a
-- subquery in WHERE but none in FROM is that subquery's: `x IN (SELECT
-- max(y) FROM t)` is planned as an inner join with an Aggregate over t,
-- which is no more a row of the result than a semi join's inner side (the
-- rules below would take it for a subquery in FROM that groups, and find
-- no key). ALL (SELECT ...) counts as such a subquery too.
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

-- sluice._st_query_fallback(view) -> reason or NULL
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
                RETURN prefix || 'a query with a subquery in its WHERE clause (EXISTS, NOT EXISTS, IN) or in its '
                              || 'select list is refreshed differentially when its FROM has only tables (joined, or '
                              || 'in a LEFT JOIN chain), no subquery in FROM';
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
