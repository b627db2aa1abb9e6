-- refresh/sql/0027_with_and_distinct_on.sql - migration 27: a WITH of a stream
-- table's query is refreshed as the subqueries it stands for, DISTINCT ON
-- as the first row of each partition, and windows partitioned by
-- expressions by partition.
--
-- Until now any WITH made a stream table FULL ("WITH (common table
-- expressions) is refreshed in full"), even the plainest one:
--
--   WITH totals AS (SELECT customer_id, sum(amount) AS total
--                     FROM orders GROUP BY customer_id)
--   SELECT c.id, c.name, t.total
--     FROM customers c JOIN totals t ON t.customer_id = c.id
--
-- A query of a WITH without RECURSIVE that is read once gives the same rows
-- as its text written where it is read, as a subquery in FROM: `FROM
-- totals t` is `FROM (SELECT ... GROUP BY customer_id) t`. MATERIALIZED and
-- NOT MATERIALIZED change how PostgreSQL runs it, not its rows, and a
-- volatile function, the one thing that could tell them apart, makes the
-- stream table FULL anyway. So the engine (refresh/analyze.c,
-- inline_with) writes each such query in place and analyses the result as
-- it analyses any subquery in FROM; what was differential as a subquery is
-- differential as a WITH query, with the same refresh unit, and the rest
-- keeps the subquery's reason, naming the WITH query ("the WITH query
-- totals: ...").
--
-- sluice._st_query_fallback (restated from migration 26) does the same on
-- PostgreSQL's tree: the query of each WITH entry read once is moved to the
-- range-table entry that reads it (an RTE_CTE becomes the RTE_SUBQUERY it
-- stands for, found by name and levels up), and the queries are then
-- judged parents first. Refused at creation, with the reason:
--
--   - WITH RECURSIVE;
--   - a WITH query read more than once (write it as a subquery where it is
--     read) or with column names (WITH t(a, b) AS ...: name the columns in
--     its select list);
--   - a WITH over a UNION ALL (or another set operation);
--   - a WITH inside a query that has a WITH of its own (its names could
--     hide the outer ones).
--
-- A WITH query nobody reads is ignored: PostgreSQL does not run it.
--
-- DISTINCT ON. SELECT DISTINCT ON (k) ... ORDER BY k, x keeps the first
-- row of each k in that order: row number 1 of row_number() OVER
-- (PARTITION BY k ORDER BY k, x). The engine (distinct_on_window) analyses
-- the query in that form, a top-N per group refreshed by partition, when
-- the select list has k as they are (columns or expressions; windows are
-- partitioned by expressions since this version too), over one table or
-- tables joined by inner joins, without GROUP BY, aggregates, window functions or
-- subqueries; sluice._st_query_fallback lets such a query through (only
-- the stream table's query itself, not a branch or a subquery) and gives
-- the rest one reason. Its row identity is k (sluice._st_select_keys):
-- one row per value, so when a later row takes over, consumers see an
-- update of k's row. Ties in the order are broken as PostgreSQL breaks
-- them, which a refresh of one partition may do otherwise than a full
-- run; an order that ends with the table's key has none.
--
-- Window functions partitioned by an expression (PARTITION BY
-- date_trunc('day', at)) are refreshed by partition too when the select
-- list has that expression (the same parse tree, whatever its spacing):
-- the unit is that output column, the affected units the expression's
-- values over the change images. Only the engine decides this; stream
-- tables it had made FULL for it are analysed again (below). Windows (and
-- so DISTINCT ON) also read subqueries in FROM that filter and project one
-- table as that table, which is what most WITH queries written in place
-- are (WITH o AS (SELECT ... FROM orders WHERE ...) SELECT DISTINCT ON
-- (o.customer_id) ... FROM o).
--
-- Row identities: sluice._st_identity reads the plan, in which PostgreSQL
-- has already written a WITH query read once in place, as a Subquery Scan
-- when it is kept as a node of its own. Two things change for it:
--
--   - sluice._st_subquery_columns, which names a Subquery Scan's columns
--     from PostgreSQL's tree, also finds those of a WITH query's entry
--     (RTE_CTE, rtekind 6), by the name it is read under;
--   - a MATERIALIZED query is a CTE Scan in the plan, which reveals
--     nothing of its rows: the identity is read from the plan of the query
--     with NOT MATERIALIZED in its place (sluice._st_unmaterialized), whose
--     rows are the same. sluice._st_select_keys and sluice._st_no_key_reason
--     are restated for it.
--
-- Also, for refreshes of a few rows: a refresh checks the columns of the
-- work tables its session keeps (migration 13) against a session setting
-- instead of the catalog (sluice._st_scratch, restated), and two helpers
-- it calls per source keep one plan (below).
--
-- Upgrade: stream tables whose stored creation reason was the WITH or the
-- DISTINCT ON are checked again (sluice._st_recheck_stored_fallbacks); the
-- engine analyses those that have a row identity, which stays the one they
-- were created with (a DISTINCT ON's was often every column: re-validating
-- with sluice.alter_stream_table(name, query => <the same query>) keys it
-- by its DISTINCT ON columns). One without (content identity) keeps being
-- refreshed in full and is given the reason of migration 26. The engine's
-- own FULL decisions for windows partitioned by expressions are cleared,
-- so it analyses those stream tables again.

-- sluice._st_query_tree(query) -> text or NULL
--
-- PostgreSQL's analysed tree of query (the _RETURN rule of a temporary view
-- of it, in node-tree text form), or NULL when PostgreSQL makes no view of
-- it. For the two functions below, which read it.
CREATE FUNCTION sluice._st_query_tree(query text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tree text;
BEGIN
    EXECUTE 'CREATE TEMP VIEW __sluice_query_tree AS ' || query;
    tree := (SELECT r.ev_action::text FROM pg_rewrite r
              WHERE r.ev_class = 'pg_temp.__sluice_query_tree'::regclass AND r.rulename = '_RETURN');
    DROP VIEW pg_temp.__sluice_query_tree;
    RETURN tree;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL; -- (the view, if made, goes with the block)
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_query_tree(text) FROM PUBLIC;

-- sluice._st_subquery_columns(query, alias) -> text[] or NULL
--
-- As in migration 17 (the tree read by sluice._st_query_tree), and a WITH
-- query's entry (rtekind 6, RTE_CTE) is named the same way as a subquery's
-- (rtekind 1): by the name it is read under, its columns in order.
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
    tree := sluice._st_query_tree(query);
    IF tree IS NULL THEN
        RETURN NULL; -- not a view PostgreSQL makes: no identity found this way
    END IF;
    -- The names print as "..." separated by spaces, with a backslash before
    -- every space, brace, parenthesis and backslash in them (not before a
    -- double quote).
    lists := ARRAY(SELECT m[1]
                     FROM regexp_matches(tree, ' :eref \{ALIAS :aliasname ' || alias
                                               || ' :colnames \(((?:[^)\\]|\\.)*)\)\} :rtekind [16] ', 'g') AS m);
    IF cardinality(lists) <> 1 THEN
        RETURN NULL;
    END IF;
    RETURN ARRAY(SELECT regexp_replace(m[1], '\\(.)', '\1', 'g')
                   FROM regexp_matches(lists[1], '"((?:[^\\ ]|\\.)*)"', 'g') WITH ORDINALITY AS c(m, o)
                  ORDER BY c.o);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_subquery_columns(text, text) FROM PUBLIC;

-- sluice._st_unmaterialized(query) -> text
--
-- query (as pg_get_viewdef prints it) with every WITH query written AS
-- MATERIALIZED written AS NOT MATERIALIZED: the same rows, planned in
-- place. Only for reading a plan's shape: the same words inside a string
-- constant would change too, which changes no plan node's kind.
CREATE FUNCTION sluice._st_unmaterialized(query text)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN query ~* '^\s*WITH\M'
                THEN regexp_replace(query, ' AS MATERIALIZED \(', ' AS NOT MATERIALIZED (', 'g')
                ELSE query END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_unmaterialized(text) FROM PUBLIC;

-- sluice._st_select_keys(query, relid) -> text[] or NULL
--
-- As in migration 26, from the plan of the query as sluice._st_unmaterialized
-- writes it; and a query SELECT DISTINCT ON (k, ...) (after a WITH or not)
-- with no aggregate, window function or subquery in an expression, whose
-- select list has each of its expressions, under a plain name, is keyed by
-- those columns:
-- DISTINCT ON keeps one row per value of them (the plan's Unique node
-- does not say how many of its sort keys are DISTINCT ON's, so the query
-- tree is read).
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

-- sluice._st_no_key_reason(query, relid) -> text
--
-- As in migration 26, from the plan of the query as sluice._st_unmaterialized
-- writes it.
CREATE OR REPLACE FUNCTION sluice._st_no_key_reason(query text, relid oid)
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
            hint := (sluice._st_identity(sluice._st_unmaterialized(query), relid)).missing;
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

-- sluice._st_scratch(name, shape, analysed)
--
-- As in migration 13, but a kept table's columns are compared with the
-- wanted ones through the session setting sluice.scratch.<name>, the shape
-- this session last created or checked the table with, and read from the
-- catalog (sluice._st_shape) only when that differs. Reading the shape was
-- the largest cost of a refresh of a few rows after the driver's own
-- statements: sluice._st_shape ran about 9 times per refresh (0.13 ms each
-- here, about a tenth of such a refresh; pg_stat_user_functions over 200
-- refreshes of a join with one changed row). Only this session's refreshes
-- touch its temporary tables, and the setting follows them through
-- rollbacks (a setting made in a transaction that rolls back is undone, as
-- is the table it made) and DISCARD ALL (which drops both); after DISCARD
-- TEMP alone the table is missing and made again.
CREATE OR REPLACE FUNCTION sluice._st_scratch(name text, shape text, analysed boolean)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rel   oid := to_regclass(format('pg_temp.%I', name));
    stale text;
BEGIN
    IF rel IS NOT NULL AND current_setting('sluice.scratch.' || name, true) IS DISTINCT FROM shape
       AND sluice._st_shape(rel) IS DISTINCT FROM shape THEN
        EXECUTE format('DROP TABLE pg_temp.%I', name);
        rel := NULL;
    END IF;
    IF rel IS NULL THEN
        FOR stale IN
            SELECT k.relname FROM pg_class k
             WHERE k.relnamespace = pg_my_temp_schema() AND k.relkind = 'r'
               AND CASE WHEN k.relname ~ '^__sluice_(old|new)_[0-9]+$'
                        THEN NOT EXISTS (SELECT 1 FROM sluice.stream_table_catalog c
                                          WHERE c.id = substring(k.relname FROM '[0-9]+$')::bigint)
                        WHEN k.relname ~ '^__sluice_(chg|before)_[0-9]+$'
                        THEN NOT EXISTS (SELECT 1 FROM sluice.cdc_sources b
                                          WHERE b.relid = substring(k.relname FROM '[0-9]+$')::oid)
                        ELSE false END
        LOOP
            EXECUTE format('DROP TABLE pg_temp.%I', stale);
            PERFORM set_config('sluice.scratch.' || stale, '', false);
        END LOOP;
        EXECUTE format('CREATE TEMP TABLE %I (%s)', name, shape);
    ELSIF pg_relation_size(rel) > 8 * current_setting('block_size')::bigint
          OR (NOT analysed AND (SELECT k.reltuples >= 0 FROM pg_class k WHERE k.oid = rel)) THEN
        EXECUTE format('TRUNCATE pg_temp.%I', name);
    ELSE
        EXECUTE format('DELETE FROM pg_temp.%I', name);
    END IF;
    PERFORM set_config('sluice.scratch.' || name, shape, false);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_scratch(text, text, boolean) FROM PUBLIC;

-- Two catalog lookups every refresh makes per source (its columns as a
-- table's shape, and the check that they are those recorded) were planned
-- again at each call: PL/pgSQL keeps a custom plan for a statement whose
-- parameter (the table) changes from call to call. Their generic plans are
-- the same index lookups; with them, 300 refreshes of a join with one
-- changed row took 7.6-9.5 ms each against 8.7-10.8 ms (three interleaved
-- rounds, scripts/dev-env, by hand).
ALTER FUNCTION sluice._st_shape(oid) SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION sluice._st_check_columns(bigint, text) SET plan_cache_mode = force_generic_plan;

-- sluice._st_query_fallback(view) -> reason or NULL
--
-- As in migration 26, with the queries of a WITH moved to where they are
-- read, and DISTINCT ON let through where the engine refreshes it by its
-- values (see the file header).
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
    dep    int[] := '{}';  -- dep[q]: how deep q is nested (the outer query: 0)
    ord    int[];          -- the queries, each after the query it is in
    cten   text[] := '{}'; -- cten[q]: the name of the WITH query q stands for
    d      int;    -- the query whose WITH defines a WITH query
    p      int;    -- the query that reads it
    a      int;
    seg    text;
    marker text;
    refs   int;
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
        IF own[d] ~ ' :setOperations [^<]' THEN
            RETURN 'a WITH over a UNION ALL (or another set operation) is refreshed in full';
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
                       THEN format('UNION ALL branch %s: ',
                                   (SELECT count(*) FROM generate_subscripts(up, 1) AS b(i)
                                     WHERE up[b.i] = up[q] AND via[b.i] = 'subquery' AND b.i <= q))
                       WHEN kind IN ('derived', 'joined') AND cten[q] IS NOT NULL
                       THEN coalesce(pre[up[q]], '') || format('the WITH query %s: ', cten[q])
                       WHEN kind IN ('derived', 'joined') THEN coalesce(pre[up[q]], '') || 'the subquery in FROM: '
                       WHEN cten[q] IS NOT NULL THEN coalesce(pre[up[q]], '') || format('the WITH query %s: ', cten[q])
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

-- Window functions partitioned by an expression that the select list has
-- are refreshed by partition since this version (the engine's
-- window_units): the engine's stored decision against them is forgotten,
-- so it analyses them again.
UPDATE sluice.stream_table_catalog
   SET analyzed_query = NULL, effective_mode = NULL, fallback_reason = NULL, operator_tree = NULL,
       affected_sql = NULL, recompute_sql = NULL, unit_columns = NULL, branch_analysis = NULL
 WHERE query_fallback IS NULL AND key_columns IS NOT NULL AND requested_mode <> 'full'
   AND fallback_reason LIKE 'window functions are refreshed differentially by partition: the select list must have%';

-- A stream table whose creation reason was cleared above but that has no
-- row identity is still refreshed in full: it gets migration 26's reason
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
