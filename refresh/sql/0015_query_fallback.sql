-- refresh/sql/0015_query_fallback.sql - migration 15: PostgreSQL's own
-- analysis of a stream table's query decides, at creation, what is always
-- refreshed in full.
--
-- Up to version 14 the only thing create_stream_table and
-- alter_stream_table decided themselves was the row identity (no key:
-- FULL). Whether the query can be refreshed differentially was left to the
-- engine's analyzer (refresh/analyze.c, libpg_query), which reads the raw
-- parse tree after the transaction has committed. So a query with a window
-- function was created with a NOTICE saying "refreshed in full until the
-- engine has analysed the query", and refresh_mode => 'differential' for
-- it succeeded, to be put in status error by the engine a moment later.
-- Worse, two facts are not in a raw parse tree at all: whether a function
-- is volatile (random(), clock_timestamp(), nextval()) and whether it
-- returns a set. A query calling random() was analysed as DIFFERENTIAL:
-- each refresh then recomputed only the affected rows, so the stream table
-- held values from many different runs of the query.
--
-- From this version the two SECURITY DEFINER halves read PostgreSQL's
-- analysed query tree of the temporary view they are handed (pg_rewrite's
-- _RETURN rule of it, in the node-tree text format) through
-- sluice._st_query_fallback(view), which returns the reason when any of
-- these is there, else NULL:
--
--   in the outer query   UNION (without ALL), INTERSECT, EXCEPT; WITH;
--                        FOR UPDATE/SHARE; window functions; subqueries in
--                        expressions; LIMIT/OFFSET; GROUPING SETS, ROLLUP,
--                        CUBE; DISTINCT ON
--   anywhere             set-returning functions (in a select list or in
--                        FROM); volatile functions and operators
--
-- The first group are rules of the engine's analyzer too, worded the same
-- (it may name another of them first when a query has several): they are
-- now known at creation. The second group is new. A reason found is stored
-- in the new catalog column query_fallback and decides like a missing key:
-- refresh_mode 'differential' fails at once with the reason, 'auto' creates
-- a FULL stream table whose NOTICE and explain_stream_table give it, and
-- the engine has nothing to analyse. Constructs only the engine can judge
-- (join shapes, nested subqueries in FROM, column references it cannot
-- rebind) are still its to find, as before.
--
-- The node-tree text is PostgreSQL's stable serialisation of the analysed
-- query (readable by everyone in pg_rewrite). The function reads only field
-- names that exist in PostgreSQL 15 and later, and positions that hold in
-- every version: a query's flags and WITH list are printed before anything
-- nested in it, its set operation after everything nested in it. Anything
-- it does not recognise yields NULL, which leaves the decision to the
-- engine, as before this version.
--
-- Stream tables created before this version are checked below, from their
-- stored query.

ALTER TABLE sluice.stream_table_catalog ADD COLUMN query_fallback text;
COMMENT ON COLUMN sluice.stream_table_catalog.query_fallback IS
    'Why PostgreSQL''s analysis of the query alone requires FULL refreshes (sluice._st_query_fallback), or NULL';

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
    tree text := (SELECT r.ev_action::text FROM pg_rewrite r
                   WHERE r.ev_class = view AND r.rulename = '_RETURN');
    chk  record;
    vol  text;
BEGIN
    IF tree IS NULL OR tree !~ '^\(\{QUERY ' THEN
        RETURN NULL;
    END IF;
    -- The outer query's fields, in this order: a field's value (the pattern's
    -- capture) matching `bad` gives the reason. A query's flags and WITH
    -- list are printed before anything nested in it (first occurrence), its
    -- set operation after everything nested (last occurrence). Once there
    -- are no subqueries in expressions, nothing nested follows its LIMIT,
    -- OFFSET and GROUP BY either, so their last occurrences are its own.
    FOR chk IN
        SELECT v.pat, v.bad, v.why
          FROM (VALUES
            (1, '.* :setOperations \{SETOPERATIONSTMT :op ([0-9]+ :all [a-z]+)', '^(?!1 :all true$)',
             'UNION (without ALL), INTERSECT and EXCEPT are refreshed in full'),
            (2, ' :cteList (.)', '^[^<]', 'WITH (common table expressions) is refreshed in full'),
            (3, ' :hasForUpdate ([a-z]+)', '^true$', 'FOR UPDATE/SHARE has no meaning in a stream table'),
            (4, ' :hasWindowFuncs ([a-z]+)', '^true$', 'window functions are refreshed in full'),
            (5, ' :hasSubLinks ([a-z]+)', '^true$',
             'subqueries in expressions (IN/EXISTS/scalar subqueries) are refreshed in full'),
            (6, '.* :limitOffset (.)', '^[^<]',
             'LIMIT/OFFSET makes the result depend on rows outside any change; it is refreshed in full'),
            (7, '.* :limitCount (.)', '^[^<]',
             'LIMIT/OFFSET makes the result depend on rows outside any change; it is refreshed in full'),
            (8, '.* :groupingSets (.)', '^[^<]', 'GROUPING SETS, ROLLUP and CUBE are refreshed in full'),
            (9, ' :hasDistinctOn ([a-z]+)', '^true$', 'DISTINCT ON is refreshed in full'))
            AS v(n, pat, bad, why)
         ORDER BY v.n
    LOOP
        IF substring(tree FROM chk.pat) ~ chk.bad THEN
            RETURN chk.why;
        END IF;
    END LOOP;
    -- Anywhere in the query (names in the tree escape their blanks and
    -- braces, so no alias looks like these fields). rtekind 3 and 4 are
    -- RTE_FUNCTION and RTE_TABLEFUNC: a function or XMLTABLE in FROM.
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
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_query_fallback(regclass) FROM PUBLIC;

-- sluice._create_stream_table and sluice._alter_stream_table, as in
-- migration 5, plus: the query's fallback reason is computed from the view,
-- stored, refused with refresh_mode 'differential', and otherwise decides
-- FULL (with its reason, in the NOTICE too) the way a missing key does.
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
    IF refresh_mode = 'differential' AND keys IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s: refresh_mode differential is not possible for %s: its rows have no key', fn, nm),
            DETAIL = 'Rows are identified by GROUP BY keys, DISTINCT, or the primary keys of the tables read (all of them in the select list); this query has none of these, so identical rows can only be told apart by content and the table is refreshed in full.',
            HINT = 'Select the primary key columns of every table read, or use refresh_mode => ''auto'' or ''full''.';
    END IF;
    why := sluice._st_query_fallback(view);
    IF refresh_mode = 'differential' AND why IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s: refresh_mode differential is not possible for %s: %s', fn, nm, why),
            HINT = 'Change the query, or use refresh_mode => ''auto'' (refreshed in full, for this reason) or ''full''.';
    END IF;

    INSERT INTO sluice.stream_table_catalog (name, relid, query, query_as_given, search_path, requested_mode,
                                             schedule, key_columns, owner, frontier, effective_mode,
                                             fallback_reason, query_fallback)
    VALUES (nm, storage, qtext, query, path, refresh_mode, schedule, keys, owner, pg_current_snapshot(),
            CASE WHEN refresh_mode = 'full' OR keys IS NULL OR why IS NOT NULL THEN 'full' END,
            CASE WHEN refresh_mode = 'full' THEN 'refresh_mode full was requested'
                 WHEN keys IS NULL THEN 'rows have no key (content identity)'
                 ELSE why END,
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
             WHEN keys IS NULL THEN ', refreshed in full: rows have no key (content identity)'
             WHEN why IS NOT NULL THEN ', refreshed in full: ' || why
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
            IF mode = 'differential' AND st.key_columns IS NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'feature_not_supported',
                    MESSAGE = format('%s: refresh_mode differential is not possible for %s: its rows have no key', fn, st.name),
                    HINT = 'Select the primary key columns of every table read, or keep refresh_mode ''auto'' or ''full''.';
            END IF;
            IF mode = 'differential' AND st.query_fallback IS NOT NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'feature_not_supported',
                    MESSAGE = format('%s: refresh_mode differential is not possible for %s: %s', fn, st.name, st.query_fallback),
                    HINT = 'Change the query (alter_stream_table(name, query => ...)), or keep refresh_mode ''auto'' or ''full''.';
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
                                          WHEN c.key_columns IS NULL THEN 'rows have no key (content identity)'
                                          ELSE c.query_fallback END,
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
    IF mode = 'differential' AND keys IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s: refresh_mode differential is not possible for %s: its rows have no key', fn, st.name),
            HINT = 'Select the primary key columns of every table read, or use refresh_mode ''auto'' or ''full''.';
    END IF;
    why := sluice._st_query_fallback(view);
    IF mode = 'differential' AND why IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s: refresh_mode differential is not possible for %s: %s', fn, st.name, why),
            HINT = 'Change the query, or use refresh_mode ''auto'' (refreshed in full, for this reason) or ''full''.';
    END IF;
    UPDATE sluice.stream_table_catalog c
       SET relid = storage, query = qtext, query_as_given = _alter_stream_table.query, search_path = path,
           requested_mode = mode, key_columns = keys, query_fallback = why,
           analyzed_query = CASE WHEN keys IS NULL OR (why IS NOT NULL AND mode <> 'full') THEN qtext END,
           effective_mode = CASE WHEN mode = 'full' OR keys IS NULL OR why IS NOT NULL THEN 'full' END,
           fallback_reason = CASE WHEN mode = 'full' THEN 'refresh_mode full was requested'
                                  WHEN keys IS NULL THEN 'rows have no key (content identity)'
                                  ELSE why END,
           operator_tree = NULL, affected_sql = NULL, recompute_sql = NULL,
           status = 'active', last_error = NULL, consecutive_failures = 0,
           rows = CASE WHEN same THEN c.rows ELSE 0 END
     WHERE c.id = st.id;
    PERFORM sluice._st_set_sources(st.id, view, fn, st.name, st.owner);
    PERFORM sluice._refresh(st.id, true);
END
$fn$;

-- Existing stream tables: the same check, on a temporary view of the stored
-- (schema-qualified) query. A query that no longer plans (a source dropped:
-- the stream table is or will be in error) is left to the engine.
DO $do$
DECLARE
    st  record;
    why text;
    ix  text;
BEGIN
    FOR st IN SELECT c.id, c.name, c.query, c.relid, c.requested_mode, c.key_columns
                FROM sluice.stream_table_catalog c ORDER BY c.id LOOP
        BEGIN
            EXECUTE 'CREATE TEMP VIEW __sluice_m15 AS ' || st.query;
            why := sluice._st_query_fallback('pg_temp.__sluice_m15'::regclass);
            DROP VIEW pg_temp.__sluice_m15;
        EXCEPTION WHEN OTHERS THEN
            why := NULL;
        END;
        CONTINUE WHEN why IS NULL;
        UPDATE sluice.stream_table_catalog c SET query_fallback = why WHERE c.id = st.id;
        CONTINUE WHEN st.requested_mode = 'full' OR st.key_columns IS NULL;
        -- FULL from now on, like a stream table created with this reason
        -- (and in error when DIFFERENTIAL was required, as the engine would
        -- have put it).
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
$do$;
