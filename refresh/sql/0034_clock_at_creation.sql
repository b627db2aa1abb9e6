-- refresh/sql/0034_clock_at_creation.sql - migration 34: the creation
-- check knows the rule on queries that read the clock.
--
-- Since migration 33 the engine refreshes in full a query whose rows
-- depend on the clock (refresh/analyze.c, clock_keyed): now(),
-- statement_timestamp(), transaction_timestamp(), CURRENT_DATE,
-- CURRENT_TIME, CURRENT_TIMESTAMP, LOCALTIME and LOCALTIMESTAMP read
-- anywhere but the select list of a query that neither groups,
-- aggregates, removes duplicates nor has window functions (a subquery in
-- that select list counts), per branch of a UNION ALL. The creation check
-- did not know it: such a stream table was created as one the engine
-- would analyse, create_stream_table(..., refresh_mode => 'differential')
-- was accepted, and the engine then put the stream table in status
-- 'error'. Now the creation check gives the engine's reason, in its words,
-- so the call fails at once (differential) or says at creation that the
-- stream table is refreshed in full (auto), and explain_stream_table shows
-- the reason before the engine has run.
--
-- The check reads PostgreSQL's analysed tree of the query (the view's
-- rule, node-tree text), where the clock is a FUNCEXPR of one of those
-- functions or a SQLVALUEFUNCTION of the date and time kinds (ops 0 to 8,
-- in the order of PostgreSQL's SQLValueFunctionOp, the same in 15 and
-- later). Where the engine reads the raw query, the analysed one differs
-- in two ways the check follows: an ORDER BY expression that is not in
-- the select list is a "resjunk" entry of the select list, and a set
-- operation's branches are subqueries of its range table.
--
-- One difference is left, on the safe side: a set operation with any
-- UNION, INTERSECT or EXCEPT without ALL is judged whole (any clock in it
-- gives the reason), where the engine still looks at the branches of a
-- UNION ALL above such a set operation separately.
--
-- Stream tables made before this version are not touched: the engine
-- analysed them again at the upgrade to version 33 and refreshes those
-- that read the clock in full with the same reason.

-- sluice._st_node_items(t) -> (name, value) per item of node-tree text t
--
-- For a node "{NAME :a x :b (y z)}" its fields: ('a', 'x'), ('b', '(y z)');
-- for a list "(x {N ...} (y))" its elements, with name NULL. Values are
-- the text between the items, trimmed; brackets nest, and a character
-- after a backslash is taken as it is (PostgreSQL's node output escapes
-- brackets and spaces inside names that way). Any other text gives no row.
-- The text is read as tokens (a bracket, an escaped character, or the text
-- between them), not character by character: a tree of a few hundred
-- columns is read in milliseconds, where a loop over its characters in
-- PL/pgSQL took a second.
CREATE FUNCTION sluice._st_node_items(t text)
RETURNS TABLE (name text, value text)
LANGUAGE plpgsql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tok     text[] := ARRAY(SELECT m[1] FROM regexp_matches(btrim(t), '(\\.|[(){}]|[^(){}\\]+)', 'g') m);
    n       int := cardinality(tok);
    is_node boolean := tok[1] = '{';
    depth   int := 0;
    cur     text := '';   -- the current value (a list: element) so far
    field   text;         -- the current field's name (a node)
    parts   text[];
    k       int;
    p       int;
BEGIN
    IF n < 2 OR NOT ((tok[1] = '{' AND tok[n] = '}') OR (tok[1] = '(' AND tok[n] = ')')) THEN
        RETURN;
    END IF;
    FOR k IN 2 .. n - 1 LOOP
        IF depth > 0 OR tok[k] IN ('(', '{', ')', '}') OR starts_with(tok[k], '\') THEN
            cur := cur || tok[k];
            IF tok[k] IN ('(', '{') THEN
                depth := depth + 1;
            ELSIF tok[k] IN (')', '}') THEN
                depth := depth - 1;
            END IF;
            CONTINUE;
        END IF;
        -- Text between items: a node's field names, a list's separators.
        parts := regexp_split_to_array(tok[k], CASE WHEN is_node THEN '\s+:(?=[A-Za-z_])' ELSE '\s+' END);
        cur := cur || parts[1];
        FOR p IN 2 .. cardinality(parts) LOOP
            IF is_node THEN
                IF field IS NOT NULL THEN
                    name := field;
                    value := btrim(cur);
                    RETURN NEXT;
                END IF;
                field := substring(parts[p] FROM '^\S+');
                cur := substr(parts[p], length(field) + 1);
            ELSE
                IF cur <> '' THEN
                    name := NULL;
                    value := cur;
                    RETURN NEXT;
                END IF;
                cur := parts[p];
            END IF;
        END LOOP;
    END LOOP;
    IF (is_node AND field IS NOT NULL) OR (NOT is_node AND cur <> '') THEN
        name := field;
        value := btrim(cur);
        RETURN NEXT;
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_node_items(text) FROM PUBLIC;

-- sluice._st_clock_pattern() -> a regular expression that matches where
-- node-tree text reads the clock: a call of now(), statement_timestamp()
-- or transaction_timestamp() (of any schema, as the engine matches them by
-- name), or CURRENT_DATE, CURRENT_TIME[STAMP], LOCALTIME[STAMP].
CREATE FUNCTION sluice._st_clock_pattern()
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT '\{SQLVALUEFUNCTION :op [0-8] '
           || coalesce('|\{FUNCEXPR :funcid (' || string_agg(p.oid::text, '|' ORDER BY p.oid) || ') ', '')
      FROM pg_proc p
     WHERE p.proname IN ('now', 'statement_timestamp', 'transaction_timestamp');
$fn$;

REVOKE ALL ON FUNCTION sluice._st_clock_pattern() FROM PUBLIC;

-- sluice._st_sublink_reads_clock(t, clock) -> whether a subquery in the
-- node-tree text t (its test expression included) matches clock.
CREATE FUNCTION sluice._st_sublink_reads_clock(t text, clock text)
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF t !~ clock THEN
        RETURN false;
    END IF;
    IF starts_with(t, '{SUBLINK ') THEN
        RETURN true;
    END IF;
    RETURN EXISTS (SELECT FROM sluice._st_node_items(t) i
                    WHERE i.value ~ '^[({]' AND sluice._st_sublink_reads_clock(i.value, clock));
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_sublink_reads_clock(text, text) FROM PUBLIC;

-- sluice._st_clock_keyed(q, clock) -> whether the rows of the query node
-- q (node-tree text "{QUERY ...}") depend on the clock (matches of clock),
-- by the rule of the engine's clock_keyed (see the file header).
CREATE FUNCTION sluice._st_clock_keyed(q text, clock text)
RETURNS boolean
LANGUAGE plpgsql
IMMUTABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    f       record;
    e       record;
    targets text;
    rtable  text := '';
    setop   text;
    rest    text := '';
    keyed   boolean := false;
    sub     text;
BEGIN
    IF q !~ clock THEN
        RETURN false;
    END IF;
    FOR f IN SELECT * FROM sluice._st_node_items(q) LOOP
        CASE f.name
            WHEN 'targetList' THEN targets := f.value;
            WHEN 'rtable' THEN rtable := f.value;
            WHEN 'setOperations' THEN setop := nullif(f.value, '<>');
            ELSE rest := rest || ' ' || f.value;
        END CASE;
        keyed := keyed OR (f.name IN ('hasAggs', 'hasWindowFuncs') AND f.value = 'true')
                 OR (f.name IN ('groupClause', 'groupingSets', 'havingQual', 'distinctClause')
                     AND f.value <> '<>');
    END LOOP;
    IF targets IS NULL THEN
        RETURN true; -- not a query node as expected: read as a whole
    END IF;
    IF setop IS NOT NULL THEN
        -- Not a chain of UNION ALL: judged whole. Otherwise the clauses
        -- of the whole (ORDER BY, LIMIT, WITH) and each branch, a subquery
        -- of the range table.
        IF setop ~ ':op [02-9]' OR setop ~ ':all false' OR rest ~ clock OR targets ~ clock THEN
            RETURN true;
        END IF;
        FOR e IN SELECT * FROM sluice._st_node_items(rtable) LOOP
            sub := (SELECT i.value FROM sluice._st_node_items(e.value) i WHERE i.name = 'subquery');
            IF coalesce(sub, '<>') = '<>' THEN
                CONTINUE WHEN e.value !~ clock;
                RETURN true;
            END IF;
            IF sluice._st_clock_keyed(sub, clock) THEN
                RETURN true;
            END IF;
        END LOOP;
        RETURN false;
    END IF;
    IF keyed OR rest ~ clock OR rtable ~ clock THEN
        RETURN true;
    END IF;
    -- The select list of a query that does not group: an ORDER BY
    -- expression kept there (resjunk) or a subquery reading the clock.
    FOR e IN SELECT * FROM sluice._st_node_items(targets) LOOP
        CONTINUE WHEN e.value !~ clock;
        IF EXISTS (SELECT FROM sluice._st_node_items(e.value) i WHERE i.name = 'resjunk' AND i.value = 'true')
           OR sluice._st_sublink_reads_clock(e.value, clock) THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_clock_keyed(text, text) FROM PUBLIC;

-- sluice._st_tree_clock_keyed(tree) -> whether the query of a view's
-- analysed tree (pg_rewrite.ev_action as text, a list of one query) reads
-- the clock where its rows depend on it (sluice._st_clock_keyed).
CREATE FUNCTION sluice._st_tree_clock_keyed(tree text)
RETURNS boolean
LANGUAGE plpgsql
STABLE STRICT
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    clock text := sluice._st_clock_pattern();
BEGIN
    RETURN tree ~ clock
           AND EXISTS (SELECT FROM sluice._st_node_items(tree) q WHERE sluice._st_clock_keyed(q.value, clock));
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_tree_clock_keyed(text) FROM PUBLIC;

-- sluice._st_query_fallback(view) -> reason or NULL
--
-- Migration 33's rules (now sluice._st_query_fallback_33), then the clock
-- rule, with the engine's reason (why_clock in refresh/analyze.c).
ALTER FUNCTION sluice._st_query_fallback(regclass) RENAME TO _st_query_fallback_33;

CREATE FUNCTION sluice._st_query_fallback(view regclass)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    why   text := sluice._st_query_fallback_33(view);
BEGIN
    IF why IS NOT NULL THEN
        RETURN why;
    END IF;
    IF sluice._st_tree_clock_keyed((SELECT r.ev_action::text FROM pg_rewrite r
                                     WHERE r.ev_class = view AND r.rulename = '_RETURN')) THEN
        RETURN 'the query reads the clock (now(), CURRENT_DATE, ...) in a condition, a join, a function in '
               'FROM or what it groups by: which rows it gives changes with time as well as with its '
               'sources, and a differential refresh, which finds the rows a change touches through those '
               'conditions evaluated now, could keep rows the query no longer gives (a deleted row among '
               'them); it is refreshed in full';
    END IF;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_query_fallback(regclass) FROM PUBLIC;
