-- refresh/sql/0028_union.sql - migration 28: a UNION, INTERSECT or EXCEPT
-- (without ALL) of a stream table's query is refreshed differentially.
--
-- Until now UNION without ALL made a stream table FULL ("UNION (without
-- ALL), INTERSECT and EXCEPT are refreshed in full"), although it is how
-- one list is most often made of several tables:
--
--   SELECT email, name FROM customers
--   UNION
--   SELECT email, name FROM newsletter_signups
--
-- A UNION's rows are distinct, so its row identity is all of its columns
-- (sluice._st_select_keys already said so), and a row is in the result
-- when at least one of the queries gives it. The engine
-- (refresh/analyze.c, analyze_distinct_setop) analyses each query of the
-- union on its own as a query keyed by those columns (the stored text
-- names every query's columns as the stream table's). A refresh takes the
-- rows the window's changes touch in any of the queries (their affected
-- rows, united) and recomputes each of them by running every query
-- restricted to those rows, united again; so a row that one query stops
-- giving stays when another still gives it, and its delta is empty.
--
-- INTERSECT and EXCEPT without ALL are refreshed the same way (the engine's
-- analyze_distinct_setop): whether a row is in the result depends only on
-- which queries give it, so the affected rows of every query, united, are
-- recomputed by running every query restricted to them, combined by the
-- same operation. Their rows are distinct too: sluice._st_select_keys
-- (restated from 27) keys a query whose outer set operation is INTERSECT
-- or EXCEPT without ALL by every column, which the plan (a SetOp node)
-- does not say. Such a stream table made before keeps the content
-- identity it was created with (FULL, with migration 26's reason: re-
-- validate it with alter_stream_table to have it keyed).
--
-- The same holds for a UNION that is the subquery in FROM of a query that
-- only filters and projects it (analyze_derived around it), which is what
-- a WITH query holding a UNION becomes once written in place. There each
-- query of the union keeps its own column names (PostgreSQL prints the
-- stream table's names only in the outer query): the engine maps the keys
-- by position, and names an entry that has no name (`SELECT id, 'x' FROM
-- t`) with `AS "__sluice_c<n>"`.
--
-- A WITH over a chain of UNIONs (WITH a AS (...) SELECT ... FROM a UNION
-- SELECT ...) is written in place like any other (the engine's
-- inline_with; the creation check's move of a WITH query to the range-table
-- entry that reads it), where it was refused with the WITH over a UNION
-- ALL.
--
-- sluice._st_query_fallback (restated from migration 27) lets through a
-- chain of UNIONs (`a UNION b UNION c`; PostgreSQL prints a mixed chain,
-- with UNION ALL, INTERSECT or EXCEPT, or a set operation in parentheses
-- as another shape) with nothing applied to the whole (ORDER BY, LIMIT),
-- as the stream table's query or as such a subquery, and judges each of
-- its queries as it judges a UNION ALL branch, named "UNION branch <n>".
-- More rules for them: a query of a UNION neither groups nor aggregates,
-- nor do the subqueries in its FROM (a group's aggregates are not values
-- of rows that a change can find; subqueries in its expressions may
-- aggregate), in a subquery it has no subquery in an expression (the
-- engine follows none there), and one that only filters and projects a
-- subquery selects that subquery's columns as they are (they are the keys
-- it is refreshed by), unless the subquery is a table seen through a
-- projection that selects its primary key. A UNION elsewhere (joined, in a UNION ALL
-- branch) is still refreshed in full, with the reason; INTERSECT and
-- EXCEPT too.
--
-- Upgrade: stream tables whose stored creation reason was the UNION are
-- checked again (sluice._st_recheck_stored_fallbacks); the engine
-- analyses those left to it.

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
    why_distinct_on constant text :=
        'DISTINCT ON is refreshed differentially (by the values of its expressions) in the stream '
        'table''s query itself, when the select list has them as they are, over one table or tables '
        'joined by inner joins, without GROUP BY, aggregates, window functions or subqueries; this '
        'one is refreshed in full';
    why_setop constant text :=
        'UNION, INTERSECT and EXCEPT (without ALL) are refreshed differentially as a chain of one of '
        'them (a UNION b UNION c; no other set operation and no ALL among them, nothing such as '
        'ORDER BY applied to the whole), in the stream table''s query or in the subquery that a query '
        'only filters and projects; this one is refreshed in full';
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
    pre    text[] := '{}'; -- pre[q]: the start of q's reasons (its UNION branch, its subquery)
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
    dep    int[] := '{}';  -- dep[q]: how deep q is nested (the outer query: 0)
    ord    int[];          -- the queries, each after the query it is in
    cten   text[] := '{}'; -- cten[q]: the name of the WITH query q stands for
    d      int;    -- the query whose WITH defines a WITH query
    p      int;    -- the query that reads it
    a      int;
    seg    text;
    marker text;
    refs   int;
    udist  text[] := '{}'; -- udist[q]: UNION, INTERSECT or EXCEPT when q is a chain of it (without ALL)
    opn    text;   -- the number of such a chain's operation (1 UNION, 2 INTERSECT, 3 EXCEPT)
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
            dep[n] := CASE WHEN cur > 0 THEN dep[cur] + 1 ELSE 0 END;
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

    -- WITH (since migration 27). A query of a WITH (not RECURSIVE) that is
    -- read once stands for itself written where it is read, as a subquery
    -- in FROM (the engine's inline_with): it is moved there, and judged as
    -- that subquery below. One read no more (the query is not read by the
    -- engine's analysis); a WITH inside a query that has a WITH of its own
    -- is refused, as the engine does (its names could hide the outer ones).
    FOR q IN 1..n LOOP
        CONTINUE WHEN via[q] IS DISTINCT FROM 'ctequery';
        d := up[q];
        IF own[d] ~ ' :hasRecursive true ' THEN
            RETURN 'WITH RECURSIVE is refreshed in full';
        END IF;
        -- (Since migration 28 one over a chain of UNIONs, INTERSECTs or
        -- EXCEPTs is written in place like the others; the chain is judged
        -- below.)
        opn := substring(own[d] FROM ' :setOperations \{SETOPERATIONSTMT :op ([123]) :all false ');
        IF own[d] ~ ' :setOperations [^<]'
           AND (opn IS NULL OR own[d] ~ ('\{SETOPERATIONSTMT :op (?!' || opn || ' :all false )')
                OR own[d] ~ ' :rarg \{SETOPERATIONSTMT ') THEN
            RETURN 'a WITH over a UNION ALL (or a set operation other than a chain of UNIONs, INTERSECTs or EXCEPTs) is refreshed in full';
        END IF;
        a := up[d];
        WHILE a > 0 LOOP
            IF own[a] ~ ' :cteList [^<]' THEN
                RETURN 'a WITH inside a query that has a WITH of its own is refreshed in full (move '
                       || 'its queries into the outer WITH)';
            END IF;
            a := up[a];
        END LOOP;
        -- Its entry in d's WITH: what precedes it, and its reference count.
        seg := regexp_replace(substr(own[d], 1, position('{Q' || q || '}' IN own[d]) - 1),
                              '^.*\{COMMONTABLEEXPR ', '');
        cten[q] := substring(seg FROM '^:ctename ([^ ]+) ');
        refs := substring(substr(own[d], position('{Q' || q || '}' IN own[d])) FROM ' :cterefcount ([0-9]+) ')::int;
        IF cten[q] IS NULL OR refs IS NULL THEN
            RETURN 'WITH (common table expressions) is refreshed in full';
        END IF;
        CONTINUE WHEN refs = 0;
        IF seg !~ ' :aliascolnames <> ' THEN
            RETURN format('the WITH query %s has column names (WITH %s(a, b) AS ...), which is refreshed in '
                          'full; name the columns in its select list instead', cten[q], cten[q]);
        END IF;
        IF refs > 1 THEN
            RETURN format('the WITH query %s is read more than once, which is refreshed in full (write it '
                          'as a subquery where it is read)', cten[q]);
        END IF;
        -- The query that reads it: below d, naming it as d's (levels up).
        p := 0;
        FOR a IN 1..n LOOP
            CONTINUE WHEN dep[a] < dep[d]
                     OR position(format(' :rtekind 6 :ctename %s :ctelevelsup %s ', cten[q], dep[a] - dep[d])
                                 IN own[a]) = 0;
            p := a;
            FOR i IN 1..dep[a] - dep[d] LOOP
                p := up[p];
            END LOOP;
            IF p = d THEN
                p := a;
                EXIT;
            END IF;
            p := 0;
        END LOOP;
        IF p = 0 THEN
            RETURN 'WITH (common table expressions) is refreshed in full';
        END IF;
        -- Its range-table entry becomes that of a subquery in FROM, named
        -- as the WITH query was read (FROM t, FROM t AS x).
        marker := format(' :rtekind 6 :ctename %s :ctelevelsup %s ', cten[q], dep[p] - dep[d]);
        seg := substr(own[p], position(marker IN own[p]) + length(marker));
        own[p] := regexp_replace(substr(own[p], 1, position(marker IN own[p]) - 1),
                                 ':alias <> (:eref \{ALIAS :aliasname ([^ ]+) [^{}]*\})$',
                                 ':alias {ALIAS :aliasname \2 :colnames <>} \1')
                  || ' :rtekind 1 :subquery {Q' || q || '} :security_barrier false'
                  || substr(seg, position(' :lateral ' IN seg));
        up[q] := p;
        via[q] := 'subquery';
    END LOOP;
    -- Each query after the one it is in (WITH queries have moved).
    ord := ARRAY[1];
    a := 1;
    WHILE a <= cardinality(ord) LOOP
        ord := ord || ARRAY(SELECT b.i FROM generate_subscripts(up, 1) AS b(i)
                             WHERE up[b.i] = ord[a] ORDER BY b.i);
        a := a + 1;
    END LOOP;

    FOREACH q IN ARRAY ord LOOP
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
                       THEN coalesce(pre[up[q]], '')
                            || format(coalesce(udist[up[q]], 'UNION ALL') || ' branch %s: ',
                                      (SELECT count(*) FROM generate_subscripts(up, 1) AS b(i)
                                        WHERE up[b.i] = up[q] AND via[b.i] = 'subquery' AND b.i <= q))
                       WHEN kind IN ('derived', 'joined') AND cten[q] IS NOT NULL
                       THEN coalesce(pre[up[q]], '') || format('the WITH query %s: ', cten[q])
                       WHEN kind IN ('derived', 'joined') THEN coalesce(pre[up[q]], '') || 'the subquery in FROM: '
                       WHEN cten[q] IS NOT NULL THEN coalesce(pre[up[q]], '') || format('the WITH query %s: ', cten[q])
                       WHEN q > 1 THEN coalesce(pre[up[q]], '')
                       ELSE '' END;
        prefix := pre[q];
        -- UNION, INTERSECT and EXCEPT without ALL (since migration 28): the
        -- stream table's query, or the subquery that is the whole FROM of a
        -- query that only filters and projects it (a WITH query written in
        -- place, often), may be a chain of one of them, each right side one
        -- query (the engine's analyze_distinct_setop); its queries are
        -- judged as branches.
        opn := substring(own[q] FROM ' :setOperations \{SETOPERATIONSTMT :op ([123]) :all false ');
        IF kind IN ('outer', 'derived') AND prefix !~ '(UNION|INTERSECT|EXCEPT)( ALL)? branch [0-9]+: '
           AND opn IS NOT NULL THEN
            IF own[q] ~ ('\{SETOPERATIONSTMT :op (?!' || opn || ' :all false )') OR own[q] ~ ' :rarg \{SETOPERATIONSTMT '
               OR own[q] ~ ' :(sortClause|limitOffset|limitCount) [^<]' THEN
                RETURN prefix || why_setop;
            END IF;
            udist[q] := (ARRAY['UNION', 'INTERSECT', 'EXCEPT'])[opn::int];
        END IF;
        -- A query of such a chain is refreshed by the values of its rows,
        -- all of them the stream table's key: it and the subqueries in its
        -- FROM neither group nor aggregate (subqueries in its expressions
        -- may).
        IF kind = 'branch' AND udist[up[q]] IS NOT NULL THEN
            -- (In a subquery, the engine follows no subquery in an
            -- expression.)
            IF up[q] > 1 AND own[q] ~ ' :hasSubLinks true ' THEN
                RETURN prefix || why_sublink_nested;
            END IF;
            FOR a IN 1..n LOOP
                p := a;
                WHILE p > 0 AND p <> q AND via[p] = 'subquery' LOOP
                    p := up[p];
                END LOOP;
                -- (VALUES, rtekind 5, is printed as a subquery without FROM,
                -- which the engine has nothing to capture of.)
                IF p = q AND own[a] ~ ' :rtekind 5 ' THEN
                    RETURN prefix || 'the subquery in FROM: a query without FROM has no source to capture';
                END IF;
                IF p = q AND own[a] ~ ' :hasAggs true | :(groupClause|havingQual|groupingSets) [^<]' THEN
                    RETURN rtrim(prefix, ': ') || ' groups or aggregates (GROUP BY, HAVING or an aggregate, in '
                           || 'it or in a subquery in its FROM): inside '
                           || CASE WHEN udist[up[q]] = 'UNION' THEN 'a ' ELSE 'an ' END || udist[up[q]]
                           || ' a query is refreshed by the '
                           || 'values of its rows, which a group''s aggregates are not; this one is refreshed '
                           || 'in full';
                END IF;
            END LOOP;
        END IF;
        -- A query of a UNION that only filters and projects the subquery
        -- in its FROM selects that subquery's columns as they are: they are
        -- its keys, which the subquery is refreshed by (the engine's
        -- analyze_derived). Unless the subquery is a table seen through a
        -- projection that selects its primary key, which the engine reads
        -- as the table (the rules of 'from' below).
        IF kind = 'derived' AND kinds[up[q]] = 'branch' AND udist[up[up[q]]] IS NOT NULL
           AND substring(own[up[q]] FROM ' :targetList \((.*?)\) :override ') ~ '\{TARGETENTRY :expr \{(?!VAR )'
           AND (own[q] ~ (' :(hasAggs|hasWindowFuncs|hasDistinctOn|hasSubLinks) true '
                          '| :(cteList|groupClause|groupingSets|havingQual|distinctClause|limitOffset|limitCount|setOperations) [^<]')
                OR regexp_count(own[q], '\{RANGETBLENTRY ') <> 1
                OR own[q] !~ ' :eref \{ALIAS [^}]*\} :rtekind 0 '
                OR NOT sluice._st_tree_has_key(own[q], 1, substring(own[q] FROM ' :rtekind 0 :relid ([0-9]+) ')::oid)) THEN
            RETURN pre[up[q]] || 'the subquery in FROM: a row-identity column must be one of its columns, '
                   || 'selected unchanged';
        END IF;
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
            IF kinds[up[q]] = 'branch' OR pre[up[q]] ~ '(UNION|INTERSECT|EXCEPT)( ALL)? branch [0-9]+: ' THEN
                typ := substring(pre[up[q]] FROM '.*((?:UNION|INTERSECT|EXCEPT)(?: ALL)?) branch [0-9]+: ');
                RETURN substring(pre[up[q]] FROM '^(.*(?:UNION|INTERSECT|EXCEPT) (?:ALL )?branch [0-9]+): ')
                       || ' has a subquery that groups joined with tables, which is refreshed differentially as a '
                       || 'whole query but not inside ' || CASE WHEN typ LIKE 'U%' THEN 'a ' ELSE 'an ' END || typ;
            END IF;
        END IF;
        IF kind IN ('outer', 'branch', 'derived', 'joined') THEN
            FOR chk IN
                SELECT v.bad, v.why
                  FROM (VALUES
                    (1, '\{SETOPERATIONSTMT :op [23] :all true ', 'INTERSECT ALL and EXCEPT ALL are refreshed in full'),
                    (2, CASE WHEN udist[q] IS NOT NULL THEN '^$' ELSE '\{SETOPERATIONSTMT :op [123] :all false ' END,
                     why_setop),
                    (3, ' :hasForUpdate true ', 'FOR UPDATE/SHARE has no meaning in a stream table'),
                    -- (Window functions: see below.)
                    (5, CASE WHEN kind IN ('derived', 'joined') THEN ' :hasSubLinks true ' ELSE '^$' END,
                     why_sublink_nested),
                    (6, ' :limit(Offset|Count) [^<]',
                     'LIMIT/OFFSET makes the result depend on rows outside any change; it is refreshed in full'),
                    (7, ' :groupingSets [^<]', 'GROUPING SETS, ROLLUP and CUBE are refreshed in full'))
                    AS v(n, bad, why)
                 ORDER BY v.n
            LOOP
                IF own[q] ~ chk.bad THEN
                    RETURN prefix || chk.why;
                END IF;
            END LOOP;
            -- DISTINCT ON (since migration 27): the first row of each
            -- partition of its expressions (the engine's
            -- distinct_on_window), in the outer query, over tables joined
            -- by inner joins (or subqueries that filter and project one,
            -- checked below), nothing that groups, aggregates, has window
            -- functions or subqueries in expressions, and the select list
            -- has its expressions.
            IF own[q] ~ ' :hasDistinctOn true '
               AND (kind <> 'outer'
                    OR own[q] ~ (' :(hasAggs|hasWindowFuncs|hasSubLinks) true | :(groupClause|havingQual) [^<]')
                    OR own[q] ~ '\{JOINEXPR :jointype [1-9]' OR own[q] ~ ' :rtekind [3-9]'
                    -- each of its expressions one the select list has (a
                    -- target entry that is not resjunk)
                    OR EXISTS (SELECT
                                 FROM regexp_matches(substring(own[q] FROM ' :distinctClause \((.*?)\) :sortClause '),
                                                     ':tleSortGroupRef ([0-9]+) ', 'g') r
                                WHERE own[q] !~ (' :resname [^ ]+ :ressortgroupref ' || r[1]
                                                 || ' :resorigtbl [0-9]+ :resorigcol [0-9]+ :resjunk false\}'))) THEN
                RETURN prefix || why_distinct_on;
            END IF;
            -- Window functions (since migration 26): by partition, in the
            -- outer query or the subquery that is the whole FROM of a
            -- query that filters and projects it (top-N per group), not
            -- in a UNION (ALL) branch (refreshed by row identity); over one
            -- table, every window partitioned (an empty PARTITION BY
            -- prints as <>), nothing that groups, aggregates or removes
            -- duplicates, no subquery. The engine then checks that the
            -- select list has the partition columns.
            IF own[q] ~ ' :hasWindowFuncs true ' THEN
                IF own[q] ~ ' :partitionClause <> ' THEN
                    RETURN prefix || 'window functions without PARTITION BY are refreshed in full (a change '
                                  || 'can move every row''s value)';
                END IF;
                IF NOT (kind = 'outer' OR (kind = 'derived' AND prefix !~ '(UNION|INTERSECT|EXCEPT)( ALL)? branch [0-9]+: '))
                   OR own[q] ~ (' :(hasAggs|hasSubLinks|hasDistinctOn) true '
                                '| :(groupClause|havingQual|distinctClause) [^<]')
                   -- (tables, joined by inner joins: jointype 0; rtekind 2
                   -- is a join's own entry; since migration 27 subqueries,
                   -- rtekind 1, that filter and project a table, which
                   -- their own rules below check, as a WITH query is)
                   OR own[q] ~ '\{JOINEXPR :jointype [1-9]' OR own[q] ~ ' :rtekind [3-9]' THEN
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
                IF grouped AND (kind = 'branch'
                                OR (kind = 'derived' AND prefix ~ '(UNION|INTERSECT|EXCEPT)( ALL)? branch [0-9]+: ')) THEN
                    typ := substring(prefix FROM '.*((?:UNION|INTERSECT|EXCEPT)(?: ALL)?) branch [0-9]+: ');
                    RETURN substring(prefix FROM '^(.*(?:UNION|INTERSECT|EXCEPT) (?:ALL )?branch [0-9]+): ')
                           || ' has a LEFT JOIN, which is refreshed differentially as a '
                           || 'whole query but not inside ' || CASE WHEN typ LIKE 'U%' THEN 'a ' ELSE 'an ' END || typ;
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

-- sluice._st_select_keys(query, relid) -> text[] or NULL
--
-- As in migration 27, and a query whose outer set operation is INTERSECT or
-- EXCEPT without ALL is keyed by every column.
CREATE OR REPLACE FUNCTION sluice._st_select_keys(query text, relid oid)
RETURNS text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tree text;
    refs int[];
    keys text[];
BEGIN
    -- (Since migration 28) INTERSECT or EXCEPT without ALL as the outer
    -- query's set operation, the last one printed (those of queries nested
    -- in it print before): its rows are distinct, so every output column
    -- (the plan's SetOp node names none). The storage table's columns
    -- name the outputs.
    IF query ~* '\m(INTERSECT|EXCEPT)\M' THEN
        tree := sluice._st_query_tree(query);
        IF substring(tree FROM '^.* :setOperations (\S+)') = '{SETOPERATIONSTMT'
           AND substring(tree FROM '^.* :setOperations \{SETOPERATIONSTMT :op ([0-9] :all [a-z]+) ')
               IN ('2 :all false', '3 :all false') THEN
            RETURN ARRAY(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = relid AND a.attnum > 0 AND NOT a.attisdropped
                            AND a.attname !~ '^__sluice_'
                          ORDER BY a.attnum);
        END IF;
    END IF;
    IF query ~* '\mDISTINCT\s+ON\M' THEN
        tree := sluice._st_query_tree(query);
        -- The outer query's select list and what follows it: the text
        -- after the last :targetList (subqueries in FROM print before it;
        -- none in expressions).
        tree := CASE WHEN tree !~ ' :(hasAggs|hasWindowFuncs|hasSubLinks) true '
                          -- (the outer query's fields print first)
                          AND substring(tree FROM ' :hasDistinctOn ([a-z]+) ') = 'true'
                     THEN substring(tree FROM '^.* :targetList (.*)$') END;
        IF tree ~ ' :distinctClause \(' THEN
            refs := ARRAY(SELECT m[1]::int
                            FROM regexp_matches(substring(tree FROM ' :distinctClause \((.*?)\) :sortClause '),
                                                ':tleSortGroupRef ([0-9]+) ', 'g') m);
            keys := ARRAY(SELECT r.m[1]
                            FROM regexp_matches(tree, ':resname ([^ ]+) :ressortgroupref ([0-9]+) '
                                                      ':resorigtbl [0-9]+ :resorigcol [0-9]+ :resjunk false',
                                                'g') AS r(m)
                           WHERE r.m[2]::int = ANY (refs)
                           ORDER BY array_position(refs, r.m[2]::int));
            IF cardinality(refs) > 0 AND cardinality(keys) = cardinality(refs)
               AND NOT EXISTS (SELECT FROM unnest(keys) k WHERE k !~ '^[a-z_][a-z0-9_]*$') THEN
                RETURN keys;
            END IF;
        END IF;
    END IF;
    RETURN (sluice._st_identity(sluice._st_unmaterialized(query), relid)).key_columns;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_select_keys(text, oid) FROM PUBLIC;

SELECT sluice._st_recheck_stored_fallbacks();

-- (As in migration 27.) A stream table whose creation reason was cleared
-- above but that has no row identity (an INTERSECT or an EXCEPT made before
-- this version) is still refreshed in full: it gets migration 26's reason
-- (what to select, or to re-validate when its query has an identity now).
DO $do$
DECLARE
    st  record;
    keys_now text[];
BEGIN
    FOR st IN SELECT c.id, c.query, c.relid
                FROM sluice.stream_table_catalog c
               WHERE c.key_columns IS NULL AND c.requested_mode <> 'full'
                 AND c.query_fallback IS NULL AND c.fallback_reason IS NULL
               ORDER BY c.id LOOP
        BEGIN
            keys_now := sluice._st_key_columns(st.query, st.relid);
        EXCEPTION WHEN OTHERS THEN
            keys_now := NULL;
        END;
        UPDATE sluice.stream_table_catalog c
           SET fallback_reason =
                   CASE WHEN keys_now IS NOT NULL
                        THEN 'rows have no key (content identity): the stream table was created before sluice gave '
                             'its query a row identity; re-validate it with sluice.alter_stream_table(name, query => '
                             '<the same query>) to have it keyed and refreshed differentially (that refresh publishes '
                             'every row once as a delete and an insert)'
                        ELSE sluice._st_no_key_reason(st.query, st.relid) END
         WHERE c.id = st.id;
    END LOOP;
END
$do$;
