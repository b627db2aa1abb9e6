-- refresh/sql/0017_derived_subqueries.sql - migration 17: a subquery in
-- FROM that aggregates, removes duplicates or joins is refreshed
-- differentially when the query around it only filters and projects it.
--
-- Until now a subquery in FROM was differential only as a table seen
-- through a projection (one table, filtered, its primary key selected).
-- The common shape of a derived table was refreshed in full:
--
--     SELECT s.customer_id, s.total
--       FROM (SELECT customer_id, sum(amount) AS total
--               FROM orders GROUP BY customer_id) AS s
--      WHERE s.total > 500
--
-- The engine (refresh/analyze.c, analyze_derived) now analyses such a
-- subquery as a stream table's query of its own, its row identity being the
-- columns of the subquery that the query's row identity is made of, and
-- wraps that analysis: the affected keys are the subquery's, renamed to the
-- query's columns, and the new rows are the query with the subquery replaced
-- by the subquery restricted to those keys, so the outer WHERE and select
-- list apply to recomputed rows (a group whose total falls to 500 is
-- deleted from the stream table). It applies when the subquery is the only
-- item in the query's FROM, written without LATERAL and without column
-- aliases, and the query has no GROUP BY, HAVING or DISTINCT; the
-- subquery may be anything the engine refreshes differentially as a whole
-- query, except a LEFT JOIN (its refresh unit is not a row of the result)
-- or a UNION ALL, and may itself be such a query around a subquery.
--
-- sluice._st_query_fallback(view) follows: such a subquery (kind 'derived'
-- in the function) gets the rules of the outer query, its reasons starting
-- with "the subquery in FROM: ", instead of the rule that it filter and
-- project one table, and any LEFT JOIN in it is FULL. Rules that were the
-- engine's alone are now decided at creation too:
--
--   a LEFT JOIN's ON must be equalities of plain columns: a cast (written,
--     or added by PostgreSQL, as for int = numeric: the stored query that
--     the engine reads spells it out) or a bare boolean column is not
--     (sluice._st_equi_quals, which replaces migration 16's list of nodes);
--   every table of a join, or read through a subquery in FROM that is
--     joined, needs a primary key and is read without ONLY
--     (sluice._st_join_table_reason, the engine's check_join).
--
-- Every other rule is migration 16's.
--
-- The row identity of such a query is found through the subquery too.
-- PostgreSQL keeps a subquery that aggregates, or whose columns the query
-- does not all select in order, as a Subquery Scan above the subquery's own
-- plan; sluice._st_select_keys (migration 5's rules, which read the plan)
-- now maps the scan's outputs, alias.column, to the subquery's outputs by
-- the columns' positions (their names from PostgreSQL's analysed tree,
-- sluice._st_subquery_columns) and applies its rules below it. Before, such
-- a query had content identity ("rows have no key") and was always FULL.
-- Stream tables created before keep the identity they have: drop and create
-- one again to give it the new one.
--
-- Stream tables whose stored reason the new check no longer gives (created
-- before this version with such a query and a row identity) lose it and
-- are analysed again by the engine; a reason that changed wording is
-- stored in its new words (sluice._st_recheck_stored_fallbacks()). Those
-- without a reason are checked again (sluice._st_recheck_query_fallbacks()
-- of migration 16): one that now has a reason (a cast in a LEFT JOIN's ON,
-- a join over a table without a primary key) is FULL and decided, as the
-- engine had already made it.

-- sluice._st_subquery_columns(query, alias) -> text[] or NULL
--
-- The column names of the subquery in FROM that query calls alias, in
-- order, read from PostgreSQL's analysed tree of a temporary view of the
-- query (a range-table entry of kind subquery, rtekind 1, named alias).
-- NULL when no entry or more than one has that name (the same alias at two
-- levels), when the alias needs quoting, or when the view cannot be made.
CREATE OR REPLACE FUNCTION sluice._st_subquery_columns(query text, alias text)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tree  text;
    lists text[];
BEGIN
    IF alias IS NULL OR alias !~ '^[a-z_][a-z0-9_]*$' THEN
        RETURN NULL;
    END IF;
    BEGIN
        EXECUTE 'CREATE TEMP VIEW __sluice_subquery_columns AS ' || query;
        tree := (SELECT r.ev_action::text FROM pg_rewrite r
                  WHERE r.ev_class = 'pg_temp.__sluice_subquery_columns'::regclass AND r.rulename = '_RETURN');
        DROP VIEW pg_temp.__sluice_subquery_columns;
    EXCEPTION WHEN OTHERS THEN
        RETURN NULL; -- not a view PostgreSQL makes: no identity found this way
    END;
    -- The names print as "..." separated by spaces, with a backslash before
    -- every space, brace, parenthesis and backslash in them (not before a
    -- double quote).
    lists := ARRAY(SELECT m[1]
                     FROM regexp_matches(tree, ' :eref \{ALIAS :aliasname ' || alias
                                               || ' :colnames \(((?:[^)\\]|\\.)*)\)\} :rtekind 1 ', 'g') AS m);
    IF cardinality(lists) <> 1 THEN
        RETURN NULL;
    END IF;
    RETURN ARRAY(SELECT regexp_replace(m[1], '\\(.)', '\1', 'g')
                   FROM regexp_matches(lists[1], '"((?:[^\\ ]|\\.)*)"', 'g') WITH ORDINALITY AS c(m, o)
                  ORDER BY c.o);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_subquery_columns(text, text) FROM PUBLIC;

-- sluice._st_select_keys(query, relid) -> key_columns (NULL: content identity)
--
-- Migration 5's rules (there named _st_key_columns), read through a subquery
-- in FROM that the plan keeps as a Subquery Scan: its outputs alias.column
-- are mapped to the subquery's own outputs (sluice._st_subquery_columns),
-- so that the GROUP BY keys, DISTINCT or primary keys inside it are found.
CREATE OR REPLACE FUNCTION sluice._st_select_keys(query text, relid oid)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    old_par text := current_setting('max_parallel_workers_per_gather');
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
BEGIN
    PERFORM set_config('max_parallel_workers_per_gather', '0', true);
    -- Wrapped in a subquery: with a single relation in the range table
    -- EXPLAIN prints Output without the alias but Group Key with it; with
    -- two (the wrapper's, which the planner then removes) both have it.
    EXECUTE 'EXPLAIN (VERBOSE, FORMAT JSON) SELECT * FROM (' || query || ') __sluice_q' INTO plan;
    PERFORM set_config('max_parallel_workers_per_gather', old_par, true);

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

    IF node ->> 'Node Type' IN ('Aggregate', 'Group') THEN
        IF node ? 'Grouping Sets' THEN
            RETURN NULL;
        END IF;
        IF NOT node ? 'Group Key' THEN
            RETURN '{}';
        END IF;
        gkeys := ARRAY(SELECT jsonb_array_elements_text(node -> 'Group Key'));
        IF NOT gkeys <@ top_out THEN
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

    -- Projections, filters and joins of tables with primary keys.
    FOR scan IN SELECT n FROM jsonb_path_query(plan -> 0 -> 'Plan', 'strict $.**') n
                 WHERE jsonb_typeof(n) = 'object' AND n ? 'Node Type' LOOP
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
            pos := array_position(top_out, quote_ident(scan ->> 'Alias') || '.' || quote_ident(pkcol));
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

-- sluice._st_equi_quals(quals) -> boolean
--
-- quals: the node text of a join's ON condition. True when it is an
-- equality (an operator named =) of two plain columns, or an AND of such
-- (nested ANDs included): what the engine calls an equi-join. A column
-- wrapped in a cast, even one PostgreSQL adds (varchar = text, int =
-- numeric), is not: the engine reads the stored query, which spells such a
-- cast out. Anything else left over (a constant, a bare boolean column, a
-- test, OR, NOT, a function call, no ON at all) makes it false.
CREATE OR REPLACE FUNCTION sluice._st_equi_quals(quals text)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rest text;
    prev text;
BEGIN
    IF EXISTS (SELECT
                 FROM regexp_matches(quals, '\{OPEXPR :opno ([0-9]+) ', 'g') m
                 JOIN pg_operator o ON o.oid = m[1]::oid
                WHERE o.oprname <> '=') THEN
        RETURN false;
    END IF;
    rest := regexp_replace(quals, '\{OPEXPR :opno [0-9]+ [^{}]*:args \(\{VAR [^{}]*\} \{VAR [^{}]*\}\) :location -?[0-9]+\}',
                           '', 'g');
    LOOP
        prev := rest;
        rest := regexp_replace(rest, '\{BOOLEXPR :boolop and :args \( *\) :location -?[0-9]+\}', '', 'g');
        EXIT WHEN rest = prev;
    END LOOP;
    RETURN btrim(rest) = '';
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_equi_quals(text) FROM PUBLIC;

-- sluice._st_join_table_reason(query) -> reason or NULL
--
-- query: one query's own text as _st_query_fallback cuts it, whose tables
-- take part in a join. The engine's reason for the first of its tables
-- (range-table entries of kind relation that FROM lists) that has no
-- primary key or is read with ONLY, or NULL.
CREATE OR REPLACE FUNCTION sluice._st_join_table_reason(query text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN NOT t.has_pk
                THEN format('table %s has no primary key: joins over it are refreshed in full', t.rel::regclass)
                ELSE format('FROM ONLY %s is refreshed in full', t.rel::regclass) END
      FROM (SELECT m[1]::oid AS rel, m[2] = 'false' AS only, s.o,
                   EXISTS (SELECT FROM pg_index i WHERE i.indrelid = m[1]::oid AND i.indisprimary) AS has_pk
              FROM regexp_matches(query, ' :rtekind 0 :relid ([0-9]+) [^{}]*? :inh (true|false) :inFromCl true ', 'g')
                   WITH ORDINALITY AS s(m, o)) t
     WHERE t.only OR NOT t.has_pk
     ORDER BY t.o
     LIMIT 1
$fn$;

REVOKE ALL ON FUNCTION sluice._st_join_table_reason(text) FROM PUBLIC;

-- sluice._st_query_fallback(view) -> reason or NULL
--
-- view: a view of the stream table's query (the temporary view that
-- create_stream_table and alter_stream_table make). As in migration 16, with
-- the derived subqueries of the file header.
CREATE OR REPLACE FUNCTION sluice._st_query_fallback(view regclass)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tree   text := (SELECT r.ev_action::text FROM pg_rewrite r
                     WHERE r.ev_class = view AND r.rulename = '_RETURN');
    why_shape constant text :=
        'a subquery in FROM is refreshed differentially only when it filters and projects one '
        'table and selects that table''s primary key, or when it is the whole FROM of a query '
        'that only filters and projects its rows (no LATERAL, no column aliases)';
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
    why    text;
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
                     ELSE 'from' END;
        kinds[q] := kind;
        -- A branch's reasons, and those of the queries nested in it, name
        -- the branch (its place among its set operation's branches).
        pre[q] := CASE WHEN kind = 'branch'
                       THEN format('UNION ALL branch %s: ',
                                   (SELECT count(*) FROM generate_subscripts(up, 1) AS b(i)
                                     WHERE up[b.i] = up[q] AND via[b.i] = 'subquery' AND b.i <= q))
                       WHEN kind = 'derived' THEN coalesce(pre[up[q]], '') || 'the subquery in FROM: '
                       WHEN q > 1 THEN coalesce(pre[up[q]], '')
                       ELSE '' END;
        prefix := pre[q];
        -- A query in an expression or in WITH: the query it is in has
        -- already given the reason (subqueries in expressions, WITH).
        CONTINUE WHEN kind = 'other';
        IF kind IN ('outer', 'branch', 'derived') THEN
            FOR chk IN
                SELECT v.bad, v.why
                  FROM (VALUES
                    (1, '\{SETOPERATIONSTMT :op (?!1 :all true )',
                     'UNION (without ALL), INTERSECT and EXCEPT are refreshed in full'),
                    (2, ' :cteList [^<]', 'WITH (common table expressions) is refreshed in full'),
                    (3, ' :hasForUpdate true ', 'FOR UPDATE/SHARE has no meaning in a stream table'),
                    (4, ' :hasWindowFuncs true ', 'window functions are refreshed in full'),
                    (5, ' :hasSubLinks true ',
                     'subqueries in expressions (IN/EXISTS/scalar subqueries) are refreshed in full'),
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
        IF kind IN ('outer', 'branch', 'derived') THEN
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
                IF NOT sluice._st_tree_has_key(own[q], first, rel) THEN
                    RETURN prefix || format('with a LEFT JOIN, every row (or group) must include the primary key '
                                            'of the first table (%s) for differential refresh', rel::regclass);
                END IF;
                -- Even a chain is differential only as the whole query.
                IF kind = 'branch' THEN
                    RETURN rtrim(prefix, ': ') || ' has a LEFT JOIN, which is refreshed differentially as a '
                                               || 'whole query but not inside a UNION ALL';
                END IF;
                IF kind = 'derived' THEN
                    RETURN rtrim(prefix, ': ') || ' has a LEFT JOIN, which is refreshed differentially as a '
                                               || 'whole query but not inside a subquery';
                END IF;
            END IF;
        ELSE
            IF own[q] ~ ' :hasSubLinks true ' THEN
                RETURN prefix || 'subqueries in expressions (IN/EXISTS/scalar subqueries) are refreshed in full';
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

-- sluice._st_recheck_stored_fallbacks() -> void
--
-- Runs the current sluice._st_query_fallback on every stream table that has
-- a reason stored (the check decided FULL), from a temporary view of its
-- stored query. No reason any more: the stream table is left to the engine
-- again, as if just created (its analysis cleared, FULL until the engine
-- has analysed it), unless it has no key or asked for 'full'. Another
-- reason: stored, and shown as the fallback reason where the old one was.
-- A query that no longer plans keeps its reason. Called by migrations that
-- relax the check; sluice._st_recheck_query_fallbacks (migration 16) is the
-- other direction.
CREATE OR REPLACE FUNCTION sluice._st_recheck_stored_fallbacks()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st  record;
    why text;
BEGIN
    FOR st IN SELECT c.id, c.query, c.query_fallback
                FROM sluice.stream_table_catalog c
               WHERE c.query_fallback IS NOT NULL
               ORDER BY c.id LOOP
        BEGIN
            EXECUTE 'CREATE TEMP VIEW __sluice_recheck AS ' || st.query;
            why := sluice._st_query_fallback('pg_temp.__sluice_recheck'::regclass);
            DROP VIEW pg_temp.__sluice_recheck;
        EXCEPTION WHEN OTHERS THEN
            CONTINUE;
        END;
        CONTINUE WHEN why IS NOT DISTINCT FROM st.query_fallback;
        UPDATE sluice.stream_table_catalog c
           SET query_fallback = why,
               fallback_reason = CASE WHEN c.fallback_reason IS NOT DISTINCT FROM st.query_fallback
                                      THEN why ELSE c.fallback_reason END
         WHERE c.id = st.id;
        CONTINUE WHEN why IS NOT NULL;
        UPDATE sluice.stream_table_catalog c
           SET analyzed_query = NULL, effective_mode = NULL, fallback_reason = NULL,
               operator_tree = NULL, affected_sql = NULL, recompute_sql = NULL,
               unit_columns = NULL, branch_analysis = NULL
         WHERE c.id = st.id AND c.requested_mode <> 'full' AND c.key_columns IS NOT NULL;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_recheck_stored_fallbacks() FROM PUBLIC;

SELECT sluice._st_recheck_stored_fallbacks();
SELECT sluice._st_recheck_query_fallbacks();
