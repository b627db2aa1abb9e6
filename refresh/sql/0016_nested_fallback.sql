-- refresh/sql/0016_nested_fallback.sql - migration 16: the creation check
-- reads every query of the tree, not only the outer one.
--
-- Migration 15 made create_stream_table and alter_stream_table decide from
-- PostgreSQL's analysed query tree what is always refreshed in full. It read
-- the tree's text with patterns anchored on the outer query (a field's first
-- or last occurrence), so everything nested was left to the engine: a RIGHT
-- or FULL JOIN, a subquery in FROM that aggregates, a UNION ALL branch with
-- a window function. refresh_mode => 'differential' succeeded for those and
-- the engine put the stream table in status error a moment later; 'auto'
-- gave the NOTICE "refreshed in full until the engine has analysed the
-- query" instead of the reason.
--
-- sluice._st_query_fallback(view) now first cuts the tree into its queries
-- (the outer one and every query nested in it: subqueries in FROM, UNION
-- ALL branches, subqueries in expressions, WITH queries), each with its own
-- text in which the queries nested in it are replaced by a marker {Q<n>}.
-- A pattern then applies to exactly one query. Rules, in order:
--
--   the outer query and     as in migration 15 (UNION/INTERSECT/EXCEPT,
--   each UNION ALL branch   WITH, FOR UPDATE, window functions, subqueries
--                           in expressions, LIMIT/OFFSET, GROUPING SETS,
--                           DISTINCT ON), a branch's reason prefixed with
--                           "UNION ALL branch <n>: "
--   anywhere                set-returning functions; volatile functions
--   the outer query and     RIGHT and FULL joins; a LEFT JOIN that is not
--   each UNION ALL branch   a chain of equi-joins (more than one item in
--                           FROM, a join on a right side, USING, NATURAL,
--                           an ON with a constant, OR, NOT, a test, a
--                           function called by name or an operator other
--                           than =), or whose rows lack its first table's
--                           primary key; any LEFT JOIN in a branch
--   each subquery in FROM   subqueries in expressions inside it; otherwise
--                           it must read one table and only filter and
--                           project it: no set operation, aggregate,
--                           window function, DISTINCT, GROUP BY, HAVING,
--                           LIMIT/OFFSET or WITH, one relation in its FROM
--                           (not VALUES, not another subquery), every
--                           primary-key column of that table in its
--                           select list, written without LATERAL and
--                           without column aliases
--
-- These are the engine's own rules (refresh/analyze.c), worded as it words
-- them. What stays the engine's to decide: subqueries in FROM over a table
-- without a primary key, a LEFT JOIN chain that starts with a subquery, ON
-- clauses that are not equalities of columns in ways these patterns do not
-- see (a bare boolean column, a cast PostgreSQL adds), and column
-- references it cannot rebind.
--
-- Cutting the tree: the node text escapes every brace that is not
-- structure (names print `\{`), so after neutralising backslash pairs the
-- braces nest exactly; the field that holds a nested query is the last
-- field name before it (:subquery for a relation in FROM or a set
-- operation's branch, :subselect for a subquery in an expression,
-- :ctequery for WITH). A tree it cannot cut yields NULL (the engine
-- decides), as before.
--
-- Both primary-key rules (a subquery in FROM, a LEFT JOIN chain's first
-- table) read the select list through sluice._st_tree_has_key.
--
-- Stream tables created before this version whose query had no reason are
-- checked again, through the new sluice._st_recheck_query_fallbacks(),
-- which later migrations can call after changing the check.

-- sluice._st_tree_has_key(query, rtindex, rel) -> boolean
--
-- query: one query's own text as _st_query_fallback cuts it. True when every
-- primary-key column of table rel is a plain column of range-table entry
-- rtindex in the query's select list (a Var, not a junk entry that only
-- ORDER BY needs); true when rel is NULL or has no primary key.
CREATE OR REPLACE FUNCTION sluice._st_tree_has_key(query text, rtindex int, rel oid)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT NOT EXISTS (
        SELECT
          FROM pg_index i, unnest(i.indkey::int2[]) AS k(att)
         WHERE i.indrelid = rel AND i.indisprimary
           AND query !~ format('\{TARGETENTRY :expr \{VAR :varno %s :varattno %s [^{}]*\} '
                               ':resno [0-9]+ :resname [^ ]+ :ressortgroupref [0-9]+ '
                               ':resorigtbl [0-9]+ :resorigcol [0-9]+ :resjunk false\}',
                               rtindex, k.att))
$fn$;

REVOKE ALL ON FUNCTION sluice._st_tree_has_key(text, int, oid) FROM PUBLIC;

-- sluice._st_query_fallback(view) -> reason or NULL
--
-- view: a view of the stream table's query (the temporary view that
-- create_stream_table and alter_stream_table make). See the file header.
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
        'table and selects that table''s primary key';
    piece  text;
    own    text[] := '{}'; -- own[q]: query q's text, its nested queries replaced by {Q<n>}
    up     int[] := '{}';  -- up[q]: the query that q is nested in (0: q is the outer query)
    via    text[] := '{}'; -- via[q]: the field of up[q] that holds q
    opens  int[] := '{}';  -- per open brace: the query it opened, or 0
    cur    int := 0;
    n      int := 0;
    q      int;
    kind   text;
    pre    text[] := '{}'; -- pre[q]: the UNION ALL branch that q is or is in, for its reasons
    prefix text;
    chk    record;
    vol    text;
    first  int;    -- a LEFT JOIN chain's first table: its range table index
    rel    oid;    -- and its oid
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
        kind := CASE WHEN q = 1 THEN 'outer'
                     WHEN via[q] IS DISTINCT FROM 'subquery' THEN 'other'
                     WHEN own[up[q]] ~ ' :setOperations \{SETOPERATIONSTMT ' THEN 'branch'
                     ELSE 'from' END;
        -- A branch's reasons, and those of the queries nested in it, name
        -- the branch (its place among its set operation's branches).
        pre[q] := CASE WHEN kind = 'branch'
                       THEN format('UNION ALL branch %s: ',
                                   (SELECT count(*) FROM generate_subscripts(up, 1) AS b(i)
                                     WHERE up[b.i] = up[q] AND via[b.i] = 'subquery' AND b.i <= q))
                       WHEN q > 1 THEN coalesce(pre[up[q]], '')
                       ELSE '' END;
        prefix := pre[q];
        -- A query in an expression or in WITH: the query it is in has
        -- already given the reason (subqueries in expressions, WITH).
        CONTINUE WHEN kind = 'other';
        IF kind IN ('outer', 'branch') THEN
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
        IF kind IN ('outer', 'branch') THEN
            -- JoinType: 2 is JOIN_FULL, 3 JOIN_RIGHT.
            IF own[q] ~ '\{JOINEXPR :jointype [23] ' THEN
                RETURN prefix || 'RIGHT and FULL joins are refreshed in full (write a RIGHT JOIN as a LEFT '
                              || 'JOIN with the tables swapped)';
            END IF;
            -- JoinType 1 is JOIN_LEFT. A chain: one item in FROM (a tree of
            -- binary joins has one leaf more than it has joins), no join
            -- on a right side, ON rather than USING or NATURAL, and every
            -- join's ON only equalities of columns: an ON (the text between
            -- a join's :quals and its :alias; no expression node has an
            -- alias) holding a constant, an OR or NOT (a BoolExpr prints
            -- its kind as a word), a test, a CASE, a function called by
            -- name or an operator other than = is not. A bare boolean
            -- column (ON a.id = b.id AND b.active) is the engine's to see.
            IF own[q] ~ '\{JOINEXPR :jointype 1 '
               AND (own[q] ~ ' :rarg \{JOINEXPR | :isNatural true | :usingClause [^<]'
                    OR regexp_count(own[q], '\{RANGETBLREF ') <> regexp_count(own[q], '\{JOINEXPR ') + 1
                    OR EXISTS (SELECT
                                 FROM regexp_matches(own[q], ' :join_using_alias <> :quals (.*?) :alias ', 'g') j
                                WHERE j[1] ~ ('\{(CONST|NULLTEST|BOOLEANTEST|SCALARARRAYOPEXPR|DISTINCTEXPR|NULLIFEXPR'
                                              '|CASEEXPR|COALESCEEXPR|MINMAXEXPR|ROWCOMPAREEXPR) '
                                              '|\{BOOLEXPR :boolop (or|not) '
                                              '|\{FUNCEXPR :funcid [0-9]+ :funcresulttype [0-9]+ :funcretset [a-z]+ '
                                              ':funcvariadic [a-z]+ :funcformat 0 ')
                                   OR EXISTS (SELECT
                                                FROM regexp_matches(j[1], '\{OPEXPR :opno ([0-9]+) ', 'g') m
                                                JOIN pg_operator o ON o.oid = m[1]::oid
                                               WHERE o.oprname <> '='))) THEN
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
            -- Its select list has every primary-key column of that table
            -- (its one relation, range-table entry 1). A table without a
            -- primary key is the engine's to judge.
            IF NOT sluice._st_tree_has_key(own[q], 1, substring(own[q] FROM ' :rtekind 0 :relid ([0-9]+) ')::oid) THEN
                RETURN prefix || why_shape;
            END IF;
        END IF;
    END LOOP;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_query_fallback(regclass) FROM PUBLIC;

-- sluice._st_recheck_query_fallbacks() -> void
--
-- Runs the current sluice._st_query_fallback on every stream table that has
-- no reason stored yet, from a temporary view of its stored (schema-
-- qualified) query. One that now has a reason becomes FULL and decided,
-- like a stream table created with it, and goes into status error when it
-- requires DIFFERENTIAL (as the engine would have put it). A query that no
-- longer plans (a source dropped: the stream table is or will be in error)
-- is left to the engine. Called by migrations that change the check.
CREATE OR REPLACE FUNCTION sluice._st_recheck_query_fallbacks()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st  record;
    why text;
    ix  text;
BEGIN
    FOR st IN SELECT c.id, c.query, c.relid, c.requested_mode, c.key_columns
                FROM sluice.stream_table_catalog c
               WHERE c.query_fallback IS NULL
               ORDER BY c.id LOOP
        BEGIN
            EXECUTE 'CREATE TEMP VIEW __sluice_recheck AS ' || st.query;
            why := sluice._st_query_fallback('pg_temp.__sluice_recheck'::regclass);
            DROP VIEW pg_temp.__sluice_recheck;
        EXCEPTION WHEN OTHERS THEN
            why := NULL;
        END;
        CONTINUE WHEN why IS NULL;
        UPDATE sluice.stream_table_catalog c SET query_fallback = why WHERE c.id = st.id;
        CONTINUE WHEN st.requested_mode = 'full' OR st.key_columns IS NULL;
        UPDATE sluice.stream_table_catalog c
           SET analyzed_query = c.query, effective_mode = 'full', fallback_reason = why,
               operator_tree = NULL, affected_sql = NULL, recompute_sql = NULL,
               unit_columns = NULL, branch_analysis = NULL,
               status = CASE WHEN c.requested_mode = 'differential' THEN 'error' ELSE c.status END,
               last_error = CASE WHEN c.requested_mode = 'differential'
                                 THEN 'differential refresh is not possible: ' || why ELSE c.last_error END,
               last_error_at = CASE WHEN c.requested_mode = 'differential'
                                    THEN clock_timestamp() ELSE c.last_error_at END
         WHERE c.id = st.id;
        -- The index of a LEFT JOIN's differential refresh (migration 7).
        ix := format('%I.%I', (SELECT n.nspname FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace
                                WHERE k.oid = st.relid),
                     '__sluice_units_' || st.relid);
        IF to_regclass(ix) IS NOT NULL THEN
            EXECUTE format('DROP INDEX %s', ix);
        END IF;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_recheck_query_fallbacks() FROM PUBLIC;

SELECT sluice._st_recheck_query_fallbacks();
