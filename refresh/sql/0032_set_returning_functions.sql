-- refresh/sql/0032_set_returning_functions.sql - migration 32: a
-- set-returning function in FROM, written WITH ORDINALITY, is refreshed
-- differentially.
--
-- Exploding a column into rows is a common stream table:
--
--   SELECT o.id, e.n, e.item ->> 'sku' AS sku, (e.item ->> 'qty')::int AS qty
--     FROM orders o,
--          jsonb_array_elements(o.items) WITH ORDINALITY AS e(item, n)
--    WHERE o.status <> 'cancelled'
--
-- Until now any function in FROM made the stream table FULL ("set-returning
-- functions are refreshed in full"), and its rows had no key (content
-- identity). The rows such a query gives for one row of its table depend
-- on that row alone, so a refresh can recompute them row by row of the
-- table, as it does the rows of a LEFT JOIN chain's first table: the
-- refresh unit is the table's row, named by its primary key in the select
-- list; the affected units are the changed rows' keys (before and after),
-- the recompute is the query restricted to them (refresh/analyze.c).
--
-- Row identity: the table's primary key and, per function, its ordinality
-- (the element's position in the array, the series, ...). A function
-- without WITH ORDINALITY gives its rows no key (two equal elements of one
-- array are two equal rows), so the rows keep content identity and the
-- reason says what to write. With the ordinality, an element changed in
-- place is an `update` of the row (id, n); one appended is an `insert`; one
-- removed from the middle shifts the positions after it (updates, and a
-- delete of the last).
--
-- The shape (sluice._st_srf_reason): one table (with a primary key) and one
-- or more functions in FROM, joined by commas, CROSS JOIN or an inner JOIN
-- (LATERAL or not), or by a LEFT JOIN whose right side is a function (LEFT
-- JOIN LATERAL f(...) ON true keeps a row whose array is empty, once, its
-- ordinality NULL), with a WHERE; no GROUP BY, DISTINCT, aggregate, window
-- function, subquery, WITH, set operation or LIMIT. Anything
-- else with a function in FROM is refreshed in full, with that reason; a
-- set-returning function in the select list keeps the old one. A volatile
-- function is refused as anywhere else.
--
-- Two functions are restated by wrapping: each existing one is renamed and
-- a new one of the old name calls it, so the code that calls them (by name,
-- resolved when it runs) gets the new rules.
--
--   sluice._st_identity          -> sluice._st_identity_plan (migration 26),
--                                   and the rule above for the queries
--                                   it gives no identity;
--   sluice._st_query_fallback    -> sluice._st_query_fallback_28, and the
--                                   shape above where it answered "set-
--                                   returning functions are refreshed in
--                                   full".
--
-- Also: the creation check gives the engine's reason for a GROUP BY,
-- DISTINCT or set operation keyed by a citext (a type whose = is not
-- pg_catalog's), and for window functions beside one, so refresh_mode
-- 'differential' is refused at once (sluice._st_own_equality_reason).
--
-- Also: sluice._st_analyze_units, which the engine calls after storing an
-- analysis that refreshes by units, analyses a stream table that has no
-- statistics yet.
--
-- Upgrade: stream tables whose stored creation reason was "set-returning
-- functions are refreshed in full" are checked again
-- (sluice._st_recheck_stored_fallbacks). Their rows were
-- made with content identity: they stay FULL with the reason to re-
-- validate them (alter_stream_table with the same query), or with what to
-- select, until that is done (sluice._st_recheck_unkeyed).

-- sluice._st_rtable(tree) -> one row per range-table entry of the outer
-- query of tree (PostgreSQL's analysed tree in node-tree text form, with
-- no nested query): its index, kind (rtekind: 0 relation, 2 join, 3
-- function, ...), whether it is an item of FROM, its alias and column names
-- (backslashes removed), and its text. A view's rule has two entries that
-- are not (OLD and NEW, before PostgreSQL 16): they are listed with
-- in_from false, and count in the indexes as they do in the tree.
CREATE FUNCTION sluice._st_rtable(tree text)
RETURNS TABLE (rtindex int, kind int, in_from boolean, alias text, colnames text[], entry text)
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT (s.i - 1)::int,
           substring(s.e FROM ' :rtekind ([0-9]+) ')::int,
           s.e ~ ' :inFromCl true ',
           regexp_replace(substring(s.e FROM ' :eref \{ALIAS :aliasname ((?:[^ \\]|\\.)*) '), '\\(.)', '\1', 'g'),
           ARRAY(SELECT regexp_replace(c.m[1], '\\(.)', '\1', 'g')
                   FROM regexp_matches(substring(s.e FROM ' :eref \{ALIAS :aliasname (?:[^ \\]|\\.)* :colnames \(((?:[^)\\]|\\.)*)\)\}'),
                                       '"((?:[^\\"]|\\.)*)"', 'g') WITH ORDINALITY AS c(m, o)
                  ORDER BY c.o),
           s.e
      FROM regexp_split_to_table(substring(tree FROM ' :rtable \((.*?)\) :(?:rteperminfos|jointree) '),
                                 '\{RANGETBLENTRY ') WITH ORDINALITY AS s(e, i)
     WHERE s.i > 1
$fn$;

REVOKE ALL ON FUNCTION sluice._st_rtable(text) FROM PUBLIC;

-- sluice._st_srf_reason(tree) -> reason or NULL
--
-- Whether the query of tree (as sluice._st_rtable reads it), which has a
-- function in FROM, has the shape refreshed differentially (NULL), else
-- why not. Volatile functions are judged by the caller.
CREATE FUNCTION sluice._st_srf_reason(tree text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    why constant text :=
        'a set-returning function in FROM is refreshed differentially in a query that only filters '
        'and projects the rows of one table with a primary key and of functions called in its FROM '
        '(joined by commas, CROSS JOIN, an inner JOIN, or a LEFT JOIN whose right side is a function; '
        'no GROUP BY, DISTINCT, aggregate, window function, subquery, WITH, set operation or LIMIT); '
        'this one is refreshed in full';
    j      record;
    vars   int[];
    nleft  int;
    nright int;
BEGIN
    IF tree IS NULL OR tree !~ '^\(\{QUERY ' OR position('{QUERY ' IN substr(tree, 3)) > 0
       OR tree ~ ' :(hasAggs|hasWindowFuncs|hasTargetSRFs|hasSubLinks|hasDistinctOn|hasRecursive|hasForUpdate) true '
       OR tree ~ ' :(cteList|groupClause|groupingSets|havingQual|windowClause|distinctClause|limitOffset|limitCount|rowMarks|setOperations) [^<]' THEN
        RETURN why;
    END IF;
    IF (SELECT count(*) FILTER (WHERE r.kind = 0 AND r.in_from AND r.entry ~ ' :relkind [rp] ') <> 1
               OR bool_or(r.in_from AND r.kind NOT IN (0, 2, 3))
               OR bool_or(r.kind = 0 AND r.in_from AND r.entry !~ ' :relkind [rp] ')
          FROM sluice._st_rtable(tree) r) THEN
        RETURN why;
    END IF;
    -- Joins: inner (jointype 0), or LEFT (1) with one function on the
    -- right, no USING: the last columns of the join, its right side's, are
    -- all of that function (a join's columns print as the Vars of the
    -- entries below it).
    FOR j IN SELECT r.entry FROM sluice._st_rtable(tree) r WHERE r.kind = 2 LOOP
        CONTINUE WHEN j.entry ~ ' :jointype 0 ';
        IF j.entry !~ ' :jointype 1 :joinmergedcols 0 ' THEN
            RETURN why;
        END IF;
        vars := ARRAY(SELECT m[1]::int
                        FROM regexp_matches(substring(j.entry FROM ' :joinaliasvars \((.*?)\) :joinleftcols '),
                                            '\{VAR :varno ([0-9]+) ', 'g') m);
        nleft := (SELECT count(*) FROM regexp_matches(substring(j.entry FROM ' :joinleftcols \(i ([0-9 ]*)\)'), '[0-9]+', 'g'));
        nright := (SELECT count(*) FROM regexp_matches(substring(j.entry FROM ' :joinrightcols \(i ([0-9 ]*)\)'), '[0-9]+', 'g'));
        IF nright = 0 OR cardinality(vars) <> nleft + nright
           OR (SELECT count(DISTINCT v) FROM unnest(vars[nleft + 1:]) v) <> 1
           OR NOT EXISTS (SELECT FROM sluice._st_rtable(tree) f WHERE f.rtindex = vars[nleft + 1] AND f.kind = 3) THEN
            RETURN why;
        END IF;
    END LOOP;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_srf_reason(text) FROM PUBLIC;

-- sluice._st_srf_identity(query, relid) -> (key_columns, missing)
--
-- The row identity of a query of sluice._st_srf_reason's shape: the
-- output columns that are its table's primary-key columns and each
-- function's ordinality column, as they are (a Var in the select list),
-- named as the stream table relid names them; NULL with missing saying
-- what to write or select when one is not there. Both NULL: not that
-- shape.
CREATE FUNCTION sluice._st_srf_identity(query text, relid oid, OUT key_columns text[], OUT missing text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tree    text := sluice._st_query_tree(query);
    names   text[];
    vars    int[][];    -- {varno, varattno, resno} of each select-list entry that is a Var
    r       record;
    tab     regclass;
    att     record;
    resno   int;
    keys    int[] := '{}';
    lacks   text[] := '{}';
    fn      text;
BEGIN
    IF tree IS NULL OR tree !~ ' :rtekind 3 ' OR sluice._st_srf_reason(tree) IS NOT NULL THEN
        RETURN;
    END IF;
    SELECT array_agg(a.attname::text ORDER BY a.attnum) INTO names
      FROM pg_attribute a
     WHERE a.attrelid = relid AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attname <> '__sluice_row_id';
    -- A TargetEntry whose expression is a Var prints it first; a Var holds
    -- no node (its fields are numbers).
    vars := ARRAY(SELECT ARRAY[m[1]::int, m[2]::int, m[3]::int]
                    FROM regexp_matches(substring(tree FROM ' :targetList \((.*)\) :override '),
                                        '\{TARGETENTRY :expr \{VAR :varno ([0-9]+) :varattno ([0-9]+) :[^{}]* :varlevelsup 0 [^{}]*\} :resno ([0-9]+) ',
                                        'g') m);
    FOR r IN SELECT * FROM sluice._st_rtable(tree) WHERE in_from AND kind IN (0, 3) ORDER BY rtindex LOOP
        IF r.kind = 0 THEN
            tab := substring(r.entry FROM ' :relid ([0-9]+) ')::oid::regclass;
            IF NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = tab AND i.indisprimary) THEN
                missing := format('table %s has no primary key; give it one for a keyed, differential refresh', tab);
                RETURN;
            END IF;
            FOR att IN SELECT a.attnum, a.attname
                         FROM pg_index i
                         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
                        WHERE i.indrelid = tab AND i.indisprimary
                        ORDER BY array_position(i.indkey::int2[], a.attnum) LOOP
                resno := (SELECT min(vars[k][3]) FROM generate_subscripts(vars, 1) k
                           WHERE vars[k][1] = r.rtindex AND vars[k][2] = att.attnum AND vars[k][3] <= cardinality(names));
                IF resno IS NULL THEN
                    lacks := lacks || format('%s.%s (the primary key of %s)', quote_ident(r.alias), quote_ident(att.attname), tab);
                ELSE
                    keys := keys || resno;
                END IF;
            END LOOP;
        ELSE
            fn := substring(r.entry FROM ' :funcexpr \{FUNCEXPR :funcid ([0-9]+) ')::oid::regproc::text;
            IF r.entry !~ ' :funcordinality true ' THEN
                missing := format('the rows of %s in FROM (%s) have no key: write it WITH ORDINALITY, as in %s(...) '
                                  'WITH ORDINALITY AS %s(%s, n), and select %s.n for a keyed, differential refresh',
                                  coalesce(fn, 'a function'), quote_ident(r.alias), coalesce(fn, 'f'), quote_ident(r.alias),
                                  array_to_string(ARRAY(SELECT quote_ident(c) FROM unnest(r.colnames) c), ', '),
                                  quote_ident(r.alias));
                RETURN;
            END IF;
            resno := (SELECT min(vars[k][3]) FROM generate_subscripts(vars, 1) k
                       WHERE vars[k][1] = r.rtindex AND vars[k][2] = cardinality(r.colnames)
                         AND vars[k][3] <= cardinality(names));
            IF resno IS NULL THEN
                lacks := lacks || format('%s.%s (the ordinality of %s)', quote_ident(r.alias),
                                         quote_ident(r.colnames[cardinality(r.colnames)]), coalesce(fn, 'a function'));
            ELSE
                keys := keys || resno;
            END IF;
        END IF;
    END LOOP;
    IF cardinality(lacks) > 0 THEN
        missing := format('the select list lacks %s; select %s for a keyed, differential refresh',
                          array_to_string(lacks, ' and '), CASE WHEN cardinality(lacks) > 1 THEN 'them' ELSE 'it' END);
        RETURN;
    END IF;
    key_columns := ARRAY(SELECT names[k] FROM generate_subscripts(names, 1) k WHERE k = ANY (keys) ORDER BY k);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_srf_identity(text, oid) FROM PUBLIC;

-- sluice._st_identity(query, relid) -> (key_columns, missing)
--
-- Migration 26's rules (now sluice._st_identity_plan), which give a plan
-- with a function scan no identity, then sluice._st_srf_identity for such
-- a query.
ALTER FUNCTION sluice._st_identity(text, oid) RENAME TO _st_identity_plan;

CREATE FUNCTION sluice._st_identity(query text, relid oid, OUT key_columns text[], OUT missing text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    SELECT p.key_columns, p.missing INTO key_columns, missing FROM sluice._st_identity_plan(query, relid) p;
    IF key_columns IS NULL AND missing IS NULL THEN
        SELECT s.key_columns, s.missing INTO key_columns, missing FROM sluice._st_srf_identity(query, relid) s;
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_identity(text, oid) FROM PUBLIC;

-- sluice._st_volatile_reason(tree) -> reason or NULL
--
-- The rule on volatile functions of the creation check (migration 15 on;
-- migration 28 has it inline): every function and operator the analysed
-- tree calls, anywhere, and the reason when one is volatile.
CREATE FUNCTION sluice._st_volatile_reason(tree text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format('volatile functions (%s) may give another result at every run, so the query is refreshed in full '
                  '(a function of your own that is not volatile can be declared IMMUTABLE or STABLE)',
                  string_agg(DISTINCT p.oid::regprocedure::text, ', '))
      FROM (SELECT m[1]::oid AS f FROM regexp_matches(tree, '\{FUNCEXPR :funcid ([0-9]+) ', 'g') m
            UNION
            SELECT o.oprcode::oid FROM regexp_matches(tree, ' :opno ([0-9]+) ', 'g') m
              JOIN pg_operator o ON o.oid = m[1]::oid) f
      JOIN pg_proc p ON p.oid = f.f
     WHERE p.provolatile = 'v'
    HAVING count(*) > 0
$fn$;

REVOKE ALL ON FUNCTION sluice._st_volatile_reason(text) FROM PUBLIC;

-- sluice._st_own_equality_reason(view, tree) -> reason or NULL
--
-- The engine's rule on types whose = is not pg_catalog's (migration 30,
-- why_own_equality in refresh/analyze.c), at creation: a query with window
-- functions and a column of such a type (citext), or a GROUP BY, DISTINCT
-- or set operation anywhere in it and a row-identity column of such a
-- type, is refreshed in full, with the engine's words. Until now only the
-- engine said so, after creation: refresh_mode 'differential' was accepted,
-- then put in error.
CREATE FUNCTION sluice._st_own_equality_reason(view regclass, tree text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    col  record;
    keys text[];
BEGIN
    FOR col IN SELECT a.attname::text AS name, sluice._st_own_equality(a.atttypid) AS typ
                 FROM pg_attribute a
                WHERE a.attrelid = view AND a.attnum > 0 AND NOT a.attisdropped
                ORDER BY a.attnum LOOP
        CONTINUE WHEN col.typ IS NULL;
        IF tree ~ ' :hasWindowFuncs true ' THEN
            RETURN format('column %s is of type %s, whose = is not PostgreSQL''s built-in one: a query with window '
                          'functions and such a column is refreshed in full (select %s::text or lower(%s::text) '
                          'instead for a differential refresh)', col.name, col.typ, col.name, col.name);
        END IF;
        IF tree !~ ' :(groupClause|distinctClause) \(' AND tree !~ ' :setOperations \{' THEN
            RETURN NULL;
        END IF;
        IF keys IS NULL THEN
            BEGIN
                keys := coalesce(sluice._st_key_columns(regexp_replace(pg_get_viewdef(view), '[\s;]+$', ''), view), '{}');
            EXCEPTION WHEN OTHERS THEN
                keys := '{}';
            END;
        END IF;
        IF col.name = ANY (keys) THEN
            RETURN format('column %s is of type %s, whose = is not PostgreSQL''s built-in one: a GROUP BY, DISTINCT '
                          'or set operation keyed by it is refreshed in full (select %s::text or lower(%s::text) '
                          'instead for a differential refresh)', col.name, col.typ, col.name, col.name);
        END IF;
    END LOOP;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_own_equality_reason(regclass, text) FROM PUBLIC;

-- sluice._st_query_fallback(view) -> reason or NULL
--
-- Migration 28's rules (now sluice._st_query_fallback_28); where they
-- refused a function in FROM, the shape of sluice._st_srf_reason and the
-- rule on volatile functions, which migration 28 checks after that one;
-- then, for a query they let through, the rule on types with their own =
-- (sluice._st_own_equality_reason).
ALTER FUNCTION sluice._st_query_fallback(regclass) RENAME TO _st_query_fallback_28;

CREATE FUNCTION sluice._st_query_fallback(view regclass)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    why  text := sluice._st_query_fallback_28(view);
    tree text := (SELECT r.ev_action::text FROM pg_rewrite r WHERE r.ev_class = view AND r.rulename = '_RETURN');
BEGIN
    -- (Not in the select list, nor XMLTABLE or JSON_TABLE, rtekind 4: those
    -- keep the reason.)
    IF why IS NOT DISTINCT FROM 'set-returning functions are refreshed in full'
       AND tree !~ ' :hasTargetSRFs true ' AND tree !~ ' :rtekind 4 ' THEN
        why := coalesce(sluice._st_srf_reason(tree), sluice._st_volatile_reason(tree));
    END IF;
    RETURN coalesce(why, sluice._st_own_equality_reason(view, tree));
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_query_fallback(regclass) FROM PUBLIC;

-- sluice._st_analyze_units(id) -> analysed?
--
-- Called by the engine after it stores an analysis (refresh/engine.c): an
-- ANALYZE of the stream table when it is refreshed by units (this shape, a
-- LEFT JOIN chain, window partitions) and has never been analysed. Such a
-- refresh reads the stored rows of its units through (units) IN (SELECT
-- ... FROM pg_temp.__sluice_aff); without statistics the planner expects
-- half the table per unit and scans all of it, until autovacuum analyses
-- the new table (by hand, 500,000 rows, 10 units: 76-84 ms against 21-32
-- ms).
CREATE FUNCTION sluice._st_analyze_units(id bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rel oid;
BEGIN
    SELECT c.relid INTO rel FROM sluice.stream_table_catalog c
     WHERE c.id = _st_analyze_units.id AND c.unit_columns IS NOT NULL AND c.effective_mode = 'differential';
    IF rel IS NULL OR pg_stat_get_last_analyze_time(rel) IS NOT NULL
       OR pg_stat_get_last_autoanalyze_time(rel) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format('ANALYZE %s', rel::regclass);
    RETURN true;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_analyze_units(bigint) FROM PUBLIC;

-- sluice._st_recheck_unkeyed()
--
-- A stream table left to the engine (no creation reason, not 'full') whose
-- rows have no key gets the reason that keeps it FULL: to re-validate it
-- when its query has an identity now (its rows were made without one), or
-- what to select. As the upgrades of migrations 27 and 28 did in place.
CREATE FUNCTION sluice._st_recheck_unkeyed()
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
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
$fn$;

REVOKE ALL ON FUNCTION sluice._st_recheck_unkeyed() FROM PUBLIC;

SELECT sluice._st_recheck_stored_fallbacks();
SELECT sluice._st_recheck_unkeyed();
