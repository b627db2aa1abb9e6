-- refresh/sql/0025_select_list_subqueries.sql - migration 25: subqueries
-- in the select list are refreshed differentially.
--
-- Until now a subquery in the select list made a stream table FULL. Now a
-- query over tables (joined by inner joins, or a LEFT JOIN chain), or a
-- UNION ALL branch of one, that neither groups nor aggregates may compute
-- a column with a subquery that reads one table:
--
--     (SELECT count(*) FROM items i WHERE i.order_id = o.id) AS n_items
--     (SELECT c.name FROM customers c WHERE c.id = o.customer_id) AS name
--     (SELECT r.amount FROM refunds r WHERE r.order_id = o.id
--       ORDER BY r.id DESC LIMIT 1) AS last_refund
--     EXISTS (SELECT FROM refunds r WHERE r.order_id = o.id) AS refunded
--     ARRAY(SELECT t.tag FROM tags t WHERE t.order_id = o.id) AS tags
--
-- (a scalar subquery, EXISTS, IN, ANY, ALL or ARRAY), with any aggregate,
-- GROUP BY, ORDER BY or LIMIT of its own, correlated in any way, but no
-- subquery of its own. The value such a subquery gives a row depends only
-- on the rows of its table that its WHERE clause lets through for that
-- row, and every row of that table that starts or stops being let through,
-- or changes while let through, is among the table's change images. So
-- the engine (refresh/analyze.c, gen_affected_sublinks) adds the keys of
-- the rows, before and after the window, for which a change image passes
-- the subquery's WHERE clause, and recomputes them with the query as
-- written. No new statement shape reaches the refresh driver.
--
-- Still FULL: such subqueries in a query that groups, aggregates or
-- removes duplicates (DISTINCT), in HAVING or a JOIN's ON, next to a
-- subquery in FROM, or inside one; a subquery that reads more than one
-- table, or has a subquery of its own.
--
-- sluice._st_query_fallback (restated from migration 24) accepts them at
-- creation. The row identity needs nothing new: PostgreSQL plans such a
-- subquery as a subplan (or an initplan, uncorrelated), which
-- sluice._st_select_keys of migration 24 already leaves out of the rows.
-- Upgrade: stored creation reasons the check no longer gives are cleared
-- (sluice._st_recheck_stored_fallbacks), so those stream tables are
-- analysed again by the engine and refresh differentially from then on;
-- their row identity was found at creation as it is now.

-- sluice._st_query_fallback(view) -> reason or NULL
--
-- As in migration 24, with subqueries in the select list (above): in the
-- outer query and in UNION ALL branches, in WHERE a SubLink of type EXISTS
-- (0) or ANY (2) outside NOT (for ANY) whose query reads one table
-- plainly; in the select list, of a query that neither groups nor
-- aggregates, a SubLink of type EXISTS (0), ALL (1), ANY (2), EXPR (4,
-- scalar) or ARRAY (6) whose query reads one table and has no subquery of
-- its own; in a query without a subquery in FROM; elsewhere refused.
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
        'is refreshed in full: write NOT EXISTS), or in the select list of a query that neither '
        'groups nor aggregates, each reading one table with no subquery of its own; this one is '
        'refreshed in full';
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
        -- the file header): one table; in the select list (its query
        -- prints the select list after WHERE and FROM), without a subquery
        -- of its own; in WHERE read plainly, and under IN, one column.
        IF kind = 'other' AND via[q] = 'subselect' AND kinds[up[q]] IN ('outer', 'branch') THEN
            typ := substring(substr(own[up[q]], 1, position(' :subselect {Q' || q || '}' IN own[up[q]]))
                             FROM '.*\{SUBLINK :subLinkType ([0-9]) ');
            tl := position(' :targetList ' IN own[up[q]]);
            IF tl > 0 AND position(' :subselect {Q' || q || '}' IN own[up[q]]) > tl THEN
                IF typ NOT IN ('0', '1', '2', '4', '6')
                   OR own[q] ~ (' :(hasSubLinks|hasForUpdate) true | :(cteList|setOperations) [^<]')
                   OR regexp_count(own[q], '\{RANGETBLENTRY ') <> 1
                   OR own[q] !~ ' :rtekind 0 .* :inh true ' THEN
                    RETURN prefix || why_sublink;
                END IF;
            ELSIF own[q] ~ (' :(hasWindowFuncs|hasDistinctOn|hasSubLinks|hasForUpdate) true '
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
        -- Subqueries in expressions (the engine's sublink_reason): in
        -- WHERE and ON (printed before the select list), EXISTS (0) or ANY
        -- (2, IN), not NOT IN; in the select list and what follows it,
        -- those that give a value (above), in a query that neither groups
        -- nor aggregates; and over tables only (the rules of joins and
        -- LEFT JOIN chains below).
        IF kind IN ('outer', 'branch') AND own[q] ~ ' :hasSubLinks true ' THEN
            tl := position(' :targetList ' IN own[q]);
            IF substr(own[q], 1, tl) ~ '\{SUBLINK :subLinkType [^02] '
               OR substr(own[q], 1, tl) ~ '\{BOOLEXPR :boolop not :args \(\{SUBLINK :subLinkType 2 '
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
