-- refresh/sql/0033_grouped_functions.sql - migration 33: a GROUP BY over
-- the rows of set-returning functions in FROM is refreshed differentially;
-- a query whose rows depend on the clock is refreshed in full.
--
-- Counting or summing the elements of a column is the next step after
-- exploding it (migration 32):
--
--   SELECT t.tag, count(*) AS posts
--     FROM posts p, unnest(p.tags) AS t(tag)
--    GROUP BY t.tag
--
--   SELECT l.item ->> 'sku' AS sku, sum((l.item ->> 'qty')::int) AS qty
--     FROM orders o, jsonb_array_elements(o.items) AS l(item)
--    WHERE o.status <> 'cancelled'
--    GROUP BY 1
--
-- Until now such a query was refreshed in full: every refresh exploded and
-- grouped every row of the table. The rows a row of the table gives are
-- the functions called on that row alone, so the rows a window's changes
-- add and take away are the functions called on the changed rows' images:
-- the analyzer (refresh/analyze.c, srf_groups) writes the query's FROM
-- clause over the change images instead of the table, and from there the
-- refresh is that of a GROUP BY over one table: the groups of those rows
-- are the affected ones, and count, sum, avg, min and max are kept from
-- the stored row and the images where that is exact (a sum or an extreme
-- needs its argument's type: a column of the table, a cast, a column of a
-- function's column definition list, or the aggregate's own result type,
-- which the engine now reads from the stream table); any other group is
-- recomputed from the query. Its rows are keyed by the group keys, so the functions
-- need no WITH ORDINALITY, and the table no primary key.
--
-- The shape (sluice._st_srf_shape_reason): one table and functions in
-- FROM, joined as in migration 32, with WHERE, GROUP BY (or aggregates
-- alone: one row) and HAVING; no DISTINCT, window function, subquery,
-- WITH, set operation or LIMIT; and functions in FROM that give the same
-- rows for the same arguments whenever they are called (below). The
-- reason for any other shape now names both shapes (the engine's words,
-- why_srf in refresh/analyze.c).
--
-- The creation check is wrapped once more: sluice._st_query_fallback (of
-- migration 32) becomes sluice._st_query_fallback_32, and the new function
-- of that name applies the shapes above where it gave migration 32's
-- reason.
--
-- Also: a query that reads the clock (now(), CURRENT_DATE, ...) in a
-- condition, a join, a function in FROM or what it groups by is refreshed
-- in full (the engine's analyzer: clock_keyed in refresh/analyze.c). A
-- differential refresh finds the rows a change touches through those
-- conditions, evaluated when it runs: a row that WHERE at > now() -
-- interval '1 day' kept when it came and rejects when it is deleted was
-- never found again, and stayed in the stream table. now() in the select
-- list of a query that does not group stays differential (each row shows
-- the time it was computed). Stream tables whose stored query may read
-- the clock are analysed again (the UPDATE at the end; a few that only
-- look like it are analysed again for nothing).
--
-- Upgrade: every stored creation reason is checked again
-- (sluice._st_recheck_stored_fallbacks, migration 17): a stream table with
-- such a query has its reason cleared (its rows are keyed by its group
-- keys already), and the engine analyses it again; the other ones with a
-- function in FROM get the reason in its new words.

-- sluice._st_srf_shape_reason(tree) -> reason or NULL
--
-- Whether the query of tree (PostgreSQL's analysed tree in node-tree text
-- form), which has a function in FROM, has one of the shapes refreshed
-- differentially: filtered and projected rows (sluice._st_srf_reason,
-- migration 32), or grouped ones. For the latter, the clauses are checked
-- here and the FROM clause by sluice._st_srf_reason, given a tree of the
-- range table alone (the clauses that make it refuse a query are not in
-- one). A grouped query's functions in FROM are called again on a changed
-- row's old image, to take the rows it gave away from their groups: one
-- that may give other rows for the same arguments later would take away
-- rows it never gave. So each function they call must be IMMUTABLE, or
-- PostgreSQL's own (whose results depend at most on the session settings,
-- fixed per stream table since migration 29) but for the ones that read
-- the clock. Volatile functions are judged by the caller.
CREATE FUNCTION sluice._st_srf_shape_reason(tree text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    why constant text :=
        'a set-returning function in FROM is refreshed differentially in a query over one table and '
        'functions called in its FROM (joined by commas, CROSS JOIN, an inner JOIN, or a LEFT JOIN '
        'whose right side is a function) that filters and projects their rows (the table with a '
        'primary key) or groups them with GROUP BY or aggregates (no DISTINCT, window function, '
        'subquery, WITH, set operation or LIMIT); this one is refreshed in full';
    rtable text;
    calls  text;
BEGIN
    IF tree IS NULL OR tree !~ '^\(\{QUERY ' THEN
        RETURN why;
    END IF;
    IF tree !~ ' :hasAggs true ' AND tree !~ ' :(groupClause|havingQual) [^<]' THEN
        RETURN CASE WHEN sluice._st_srf_reason(tree) IS NULL THEN NULL ELSE why END;
    END IF;
    rtable := substring(tree FROM ' :rtable \((.*?)\) :(?:rteperminfos|jointree) ');
    IF rtable IS NULL OR position('{QUERY ' IN substr(tree, 3)) > 0
       OR tree ~ ' :(hasWindowFuncs|hasTargetSRFs|hasSubLinks|hasDistinctOn|hasRecursive|hasForUpdate) true '
       OR tree ~ ' :(cteList|groupingSets|windowClause|distinctClause|limitOffset|limitCount|rowMarks|setOperations) [^<]'
       OR sluice._st_srf_reason('({QUERY :rtable (' || rtable || ') :jointree <>})') IS NOT NULL THEN
        RETURN why;
    END IF;
    SELECT string_agg(DISTINCT p.oid::regprocedure::text, ', ') INTO calls
      FROM sluice._st_rtable(tree) r
     CROSS JOIN LATERAL regexp_matches(r.entry, '\{FUNCEXPR :funcid ([0-9]+) ', 'g') m
      JOIN pg_proc p ON p.oid = m[1]::oid
     WHERE r.kind = 3 AND p.provolatile <> 'i'
       AND (p.pronamespace <> 'pg_catalog'::regnamespace
            OR p.proname IN ('now', 'statement_timestamp', 'transaction_timestamp'));
    IF calls IS NULL AND EXISTS (SELECT FROM sluice._st_rtable(tree) r
                                  WHERE r.kind = 3 AND r.entry ~ '\{SQLVALUEFUNCTION ') THEN
        calls := 'the current date or time';
    END IF;
    IF calls IS NOT NULL THEN
        RETURN format('the set-returning functions in FROM call %s, which may give other rows for the same '
                      'arguments later (a function that is not IMMUTABLE, or the clock): a GROUP BY over '
                      'their rows, which takes the rows of a changed row away from their groups by calling '
                      'the functions again on its old values, is refreshed in full', calls);
    END IF;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_srf_shape_reason(text) FROM PUBLIC;

-- sluice._st_query_fallback(view) -> reason or NULL
--
-- Migration 32's rules (now sluice._st_query_fallback_32); where they gave
-- the reason of sluice._st_srf_reason, the shapes of
-- sluice._st_srf_shape_reason, then, as migration 32 does, the rules on
-- volatile functions and on types with their own =.
ALTER FUNCTION sluice._st_query_fallback(regclass) RENAME TO _st_query_fallback_32;

CREATE FUNCTION sluice._st_query_fallback(view regclass)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    why  text := sluice._st_query_fallback_32(view);
    tree text;
BEGIN
    IF why IS NULL THEN
        RETURN NULL;
    END IF;
    tree := (SELECT r.ev_action::text FROM pg_rewrite r WHERE r.ev_class = view AND r.rulename = '_RETURN');
    IF why IS DISTINCT FROM sluice._st_srf_reason(tree) THEN
        RETURN why;
    END IF;
    RETURN coalesce(sluice._st_srf_shape_reason(tree), sluice._st_volatile_reason(tree),
                    sluice._st_own_equality_reason(view, tree));
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_query_fallback(regclass) FROM PUBLIC;

SELECT sluice._st_recheck_stored_fallbacks();

UPDATE sluice.stream_table_catalog c
   SET analyzed_query = NULL
 WHERE c.query_fallback IS NULL AND c.requested_mode <> 'full'
   AND c.query ~* '\m(now|statement_timestamp|transaction_timestamp)\s*\(|\m(current_date|current_time|current_timestamp|localtime|localtimestamp)\M';
