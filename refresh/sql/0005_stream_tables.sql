-- sluice stream tables, version 5.
--
-- A stream table is a table sluice keeps equal to the result of a query.
-- Every refresh computes the row-level difference between what the table
-- holds and what the query returns now (the delta), applies it, and writes
-- one outbox message per changed row in the same transaction, so the relay
-- carries stream-table changes like any other event. See
-- docs/stream-tables.md.
--
-- Objects:
--   sluice.stream_table_catalog   one row per stream table (the C analyzer
--                                 and the engine read and write it too)
--   sluice.stream_table_sources   the tables each one reads
--   sluice.refresh_history        the last refreshes that changed something
--   sluice.subscriptions          LISTEN channels told about refreshes
--   sluice.stream_tables          the view for people
--   sluice._refresh(id, force)    the refresh driver: every refresh, FULL or
--                                 DIFFERENTIAL, from psql or from the engine
--
-- Storage. The stream table itself is an ordinary table named as the user
-- asked, owned by the role that ran `sluice init`, with SELECT granted to
-- the stream table's owner: `__sluice_row_id uuid PRIMARY KEY` followed by
-- the query's output columns. The row id is the row's identity:
--   key_columns NOT NULL  md5(jsonb_build_array(k1, k2, ...)::text)::uuid
--                         (values cast to the stored column types, so the
--                         id is the same whichever SQL computed them)
--   key_columns NULL      md5(to_jsonb(row)::text || '#' || n)::uuid, n
--                         numbering identical rows ("content identity")
-- key_columns are read from PostgreSQL's own plan at creation
-- (sluice._st_key_columns). Content-identity stream tables refresh FULL.
--
-- Frontier. Each stream table remembers a snapshot (pg_current_snapshot()
-- at its last refresh): the changes of transactions visible in it are in the
-- table. A refresh reads the change-buffer rows "in window (frontier, now]"
-- with the predicate documented in cdc/sql/0004_cdc.sql. Two adjustments
-- for the refreshing transaction's own changes (sluice._snap_own): while
-- reading, its own transaction counts as visible (the query sees its own
-- writes); in the stored frontier it counts as NOT visible, so what it wrote
-- after the refresh in the same transaction is read again by the next
-- refresh. Reading a change twice is harmless (a FULL refresh ignores the
-- buffers; a DIFFERENTIAL one recomputes the affected keys from the current
-- source rows, which is idempotent); missing one is not.
--
-- Names and search_path. The query text is resolved once, at creation, with
-- the caller's search_path, by PostgreSQL itself: the public function
-- create_stream_table is SECURITY INVOKER, creates a temporary view from the
-- query (so a bad query fails with PostgreSQL's own error, under the
-- caller's privileges and search_path) and passes it to the SECURITY
-- DEFINER sluice._create_stream_table, which stores pg_get_viewdef() of that
-- view printed under `search_path = pg_catalog, pg_temp`: every relation,
-- function, operator and type outside pg_catalog comes out schema-qualified,
-- so the stored query means the same thing in every later session (the
-- engine's included) and can run under the pinned search_path of the
-- driver. The text as given is kept in query_as_given. alter_stream_table
-- works the same way.
--
-- Who is the caller. Inside a SECURITY DEFINER function current_user is the
-- definer, and PostgreSQL offers no way to see the role that called. The
-- checks use session_user instead: the owner check is
-- pg_has_role(session_user, owner, 'MEMBER') (superusers pass), and the role
-- a wrapper claims to call as is accepted only when session_user is a member
-- of it. A session can SET ROLE to any role it is a member of, so this never
-- grants more than the session could do anyway; the limit is that a
-- SECURITY DEFINER function of someone else calling ours is judged by the
-- session's rights, not by its own owner's.
--
-- Trust. Refreshes run the stored query as the role that ran `sluice init`.
-- Creation checks that the caller may SELECT every source table, but
-- functions the query calls run with sluice's rights at refresh time: grant
-- EXECUTE on create_stream_table / alter_stream_table only to roles you
-- trust with that (EXECUTE is revoked from PUBLIC on everything here).

CREATE SEQUENCE sluice.refresh_id_seq;

CREATE TABLE sluice.stream_table_catalog (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- 'order_totals' (schema public) or 'app.order_totals'; also the topic
    name                  text NOT NULL UNIQUE,
    relid                 oid NOT NULL,
    -- schema-qualified text PostgreSQL printed (see "Names and search_path")
    query                 text NOT NULL,
    query_as_given        text NOT NULL,
    search_path           text NOT NULL,
    requested_mode        text NOT NULL CHECK (requested_mode IN ('auto', 'full', 'differential')),
    schedule              interval NOT NULL CHECK (schedule > interval '0'),
    key_columns           text[],
    owner                 oid NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    frontier              pg_snapshot NOT NULL,
    -- written by the C analyzer through sluice._set_analysis
    analyzed_query        text,
    effective_mode        text CHECK (effective_mode IN ('full', 'differential')),
    fallback_reason       text,
    operator_tree         text,
    affected_sql          text,
    recompute_sql         text,
    full_refresh_fraction real NOT NULL DEFAULT 0.3 CHECK (full_refresh_fraction >= 0),
    -- status
    last_refresh_at       timestamptz,
    last_refresh_ms       double precision,
    last_refresh_mode     text,
    rows                  bigint,
    last_error            text,
    last_error_at         timestamptz,
    consecutive_failures  int NOT NULL DEFAULT 0,
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'error'))
);

COMMENT ON TABLE sluice.stream_table_catalog IS
    'One row per stream table (sluice.create_stream_table); people read sluice.stream_tables';

CREATE TABLE sluice.stream_table_sources (
    stream_table_id bigint NOT NULL REFERENCES sluice.stream_table_catalog (id) ON DELETE CASCADE,
    relid           oid NOT NULL,
    relname         text NOT NULL,
    is_stream_table boolean NOT NULL,
    PRIMARY KEY (stream_table_id, relid)
);
-- "who reads this table": drop, prune, cycle checks.
CREATE INDEX stream_table_sources_relid_idx ON sluice.stream_table_sources (relid);

CREATE TABLE sluice.refresh_history (
    refresh_id      bigint PRIMARY KEY,
    stream_table_id bigint NOT NULL REFERENCES sluice.stream_table_catalog (id) ON DELETE CASCADE,
    started_at      timestamptz NOT NULL,
    duration_ms     double precision NOT NULL,
    mode            text NOT NULL,
    inserted        int NOT NULL,
    updated         int NOT NULL,
    deleted         int NOT NULL
);
CREATE INDEX refresh_history_st_idx ON sluice.refresh_history (stream_table_id, refresh_id);

CREATE TABLE sluice.subscriptions (
    stream_table_id bigint NOT NULL REFERENCES sluice.stream_table_catalog (id) ON DELETE CASCADE,
    channel         text NOT NULL,
    coalesce_ms     int CHECK (coalesce_ms >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_sent_at    timestamptz,
    pending         jsonb,
    PRIMARY KEY (stream_table_id, channel)
);

CREATE VIEW sluice.stream_tables AS
SELECT c.name,
       c.query_as_given AS query,
       c.requested_mode,
       coalesce(c.effective_mode, 'full') AS effective_mode,
       c.schedule,
       c.last_refresh_at,
       c.last_refresh_ms,
       c.last_refresh_mode,
       c.rows,
       now() - c.last_refresh_at AS staleness,
       c.last_error,
       c.last_error_at,
       c.consecutive_failures,
       c.status,
       c.key_columns,
       pg_get_userbyid(c.owner) AS owner
  FROM sluice.stream_table_catalog c;

-- ------------------------------------------------------------------------
-- Internal helpers
-- ------------------------------------------------------------------------

-- sluice._st_norm_name(fn, name) -> normalised name
--
-- 'x', 'public.x' -> 'x'; 'App.X' -> 'app.x'. Each part must be a plain
-- lower-case identifier after PostgreSQL's folding, so the name is also a
-- valid outbox topic and never needs quoting.
CREATE FUNCTION sluice._st_norm_name(fn text, name text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    parts text[];
BEGIN
    BEGIN
        parts := parse_ident(coalesce(name, ''));
    EXCEPTION WHEN invalid_parameter_value THEN
        parts := NULL;
    END;
    IF parts IS NULL OR cardinality(parts) NOT IN (1, 2)
       OR EXISTS (SELECT 1 FROM unnest(parts) p WHERE p !~ '^[a-z_][a-z0-9_]*$' OR octet_length(p) > 63) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_name',
            MESSAGE = format('%s: invalid stream table name %s', fn, coalesce(quote_literal(name), 'NULL')),
            HINT = 'A stream table name is table or schema.table, each part a plain identifier (a-z, 0-9, "_", not starting with a digit, at most 63 bytes); it is also the outbox topic.';
    END IF;
    IF cardinality(parts) = 2 AND parts[1] = 'public' THEN
        RETURN parts[2];
    END IF;
    RETURN array_to_string(parts, '.');
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_norm_name(text, text) FROM PUBLIC;

-- sluice._st_lookup(fn, name, check_owner) -> catalog row
--
-- The stream table called `name`, or the error every function gives for an
-- unknown one. With check_owner, also refuses (42501) unless the session may
-- act as the owner (see "Who is the caller" above).
CREATE FUNCTION sluice._st_lookup(fn text, name text, check_owner boolean)
RETURNS sluice.stream_table_catalog
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    nm text := sluice._st_norm_name(fn, name);
    st sluice.stream_table_catalog;
BEGIN
    SELECT * INTO st FROM sluice.stream_table_catalog c WHERE c.name = nm;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('%s: %s is not a stream table', fn, nm),
            HINT = 'Stream tables are listed in sluice.stream_tables; create one with sluice.create_stream_table(name, query).';
    END IF;
    IF check_owner AND NOT pg_has_role(session_user, st.owner, 'MEMBER') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('%s: permission denied for stream table %s', fn, nm),
            DETAIL = format('Stream table %s is owned by %s; the session user is %s.', nm,
                            pg_get_userbyid(st.owner), session_user),
            HINT = 'Only the owner (or a member of the owning role, or a superuser) may alter, drop or refresh a stream table.';
    END IF;
    RETURN st;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_lookup(text, text, boolean) FROM PUBLIC;

-- sluice._snap_own(snap, visible) -> snap with the current transaction's own
-- xid made visible (visible = true) or invisible (false). See "Frontier".
-- PostgreSQL leaves its own xid out of a snapshot's in-progress list, so it
-- reads as visible or not depending only on whether it is below xmax.
CREATE FUNCTION sluice._snap_own(snap pg_snapshot, visible boolean)
RETURNS pg_snapshot
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    own  xid8 := pg_current_xact_id_if_assigned();
    xmin xid8 := pg_snapshot_xmin(snap);
    xmax xid8 := pg_snapshot_xmax(snap);
    xips xid8[];
BEGIN
    IF own IS NULL OR pg_visible_in_snapshot(own, snap) = visible THEN
        RETURN snap;
    END IF;
    IF visible THEN
        -- own >= xmax: everything in [xmax, own) was not visible, keep it so.
        xips := ARRAY(SELECT x FROM pg_snapshot_xip(snap) x WHERE x <> own
                      UNION
                      SELECT g::text::xid8
                        FROM generate_series(xmax::text::numeric, own::text::numeric - 1) g
                      ORDER BY 1);
        xmax := (own::text::numeric + 1)::text::xid8;
    ELSE
        xips := ARRAY(SELECT x FROM pg_snapshot_xip(snap) x UNION SELECT own ORDER BY 1);
        IF own < xmin THEN
            xmin := own;
        END IF;
    END IF;
    RETURN format('%s:%s:%s', xmin, xmax, array_to_string(xips, ','))::pg_snapshot;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._snap_own(pg_snapshot, boolean) FROM PUBLIC;

-- sluice._snap_intersect(snaps) -> a snapshot in which an xid is visible iff
-- it is visible in every one of snaps (NULL for none). Used to prune a
-- buffer read by several stream tables: the snapshot with the smallest xmin
-- is not enough, another one may have a smaller xmax.
CREATE FUNCTION sluice._snap_intersect(snaps pg_snapshot[])
RETURNS pg_snapshot
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH b AS (SELECT min(pg_snapshot_xmin(s)) AS lo, min(pg_snapshot_xmax(s)) AS hi
                 FROM unnest(snaps) s)
    SELECT format('%s:%s:%s', least(b.lo, b.hi), b.hi,
                  (SELECT coalesce(string_agg(x::text, ',' ORDER BY x), '')
                     FROM (SELECT DISTINCT x FROM unnest(snaps) s, pg_snapshot_xip(s) x
                            WHERE x >= least(b.lo, b.hi) AND x < b.hi) xs))::pg_snapshot
      FROM b
     WHERE b.hi IS NOT NULL
$fn$;

REVOKE ALL ON FUNCTION sluice._snap_intersect(pg_snapshot[]) FROM PUBLIC;

-- sluice._st_identity_sql(relid, key_columns, alias) -> SQL expression of
-- the row id of a row `alias` carrying the stream table's output columns.
-- For content identity it contains a window function: use it in a SELECT
-- list over exactly the rows to number.
CREATE FUNCTION sluice._st_identity_sql(relid oid, key_columns text[], alias text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    parts text;
BEGIN
    IF key_columns IS NULL THEN
        RETURN format('md5(to_jsonb(%1$I)::text || ''#'' || row_number() OVER (PARTITION BY to_jsonb(%1$I)::text))::uuid',
                      alias);
    END IF;
    SELECT string_agg(format('(%I.%I)::%s', alias, k.col, format_type(a.atttypid, a.atttypmod)), ', '
                      ORDER BY k.ord)
      INTO parts
      FROM unnest(key_columns) WITH ORDINALITY AS k(col, ord)
      JOIN pg_attribute a ON a.attrelid = relid AND a.attname = k.col AND NOT a.attisdropped;
    RETURN format('md5(jsonb_build_array(%s)::text)::uuid', coalesce(parts, ''));
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_identity_sql(oid, text[], text) FROM PUBLIC;

-- sluice._st_key_columns(query, relid) -> key_columns (NULL: content identity)
--
-- Reads the row identity off PostgreSQL's plan of the (schema-qualified)
-- query; relid is the storage table, whose attribute names, matched by
-- position with the top plan node's Output list, are the output column names.
--   * Aggregate / Group with a Group Key: the output columns whose
--     expression is a group key, provided every group key is an output;
--     a plain aggregate (no GROUP BY): '{}' (one row).
--   * Unique, or SetOp INTERSECT / EXCEPT (not ALL): every column.
--   * Otherwise, when the plan scans at least one relation, every scan is of
--     a table with a primary key whose columns are all output as
--     alias.column, and nothing can repeat a row (no set-returning function
--     in the select list, no function/values/CTE scan): those columns.
--   * Anything else: NULL.
CREATE FUNCTION sluice._st_key_columns(query text, relid oid)
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
    WHILE node ->> 'Node Type' IN ('Sort', 'Incremental Sort', 'Limit', 'Result', 'Gather',
                                   'Gather Merge', 'Materialize')
          AND node ? 'Plans' AND jsonb_array_length(node -> 'Plans') = 1 LOOP
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

REVOKE ALL ON FUNCTION sluice._st_key_columns(text, oid) FROM PUBLIC;

-- sluice._st_sources(view) -> the relations a query reads, from the
-- dependencies PostgreSQL recorded for the temporary view holding it.
-- Raises for sources capture cannot follow (views, materialized views,
-- foreign tables, temporary tables). `fn`, `name`: for messages.
CREATE FUNCTION sluice._st_sources(fn text, name text, view regclass)
RETURNS TABLE (relid oid, relname text, is_stream_table boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT c.oid, c.relkind, c.relpersistence, c.oid::regclass::text AS rname
          FROM pg_rewrite w
          JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = w.oid
          JOIN pg_class c ON c.oid = d.refobjid
         WHERE w.ev_class = view AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> view
           AND c.relkind NOT IN ('S', 'c', 'i', 'I')
         ORDER BY 4
    LOOP
        IF r.relkind IN ('v', 'm', 'f') THEN
            RAISE EXCEPTION USING
                ERRCODE = 'wrong_object_type',
                MESSAGE = format('%s: stream table %s reads %s, which is a %s', fn, name, r.rname,
                                 CASE r.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                                ELSE 'foreign table' END),
                DETAIL = 'Changes are captured with triggers on the tables that are written; sluice cannot see when this relation''s rows change.',
                HINT = 'Write the query over the underlying tables (inline the view''s query), or make the view a stream table of its own and read that.';
        END IF;
        IF r.relpersistence = 't' THEN
            RAISE EXCEPTION USING
                ERRCODE = 'wrong_object_type',
                MESSAGE = format('%s: stream table %s reads temporary table %s', fn, name, r.rname),
                HINT = 'A stream table outlives the session; read permanent (or unlogged) tables only.';
        END IF;
        relid := r.oid;
        relname := r.rname;
        is_stream_table := EXISTS (SELECT 1 FROM sluice.stream_table_catalog s WHERE s.relid = r.oid);
        RETURN NEXT;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_sources(text, text, regclass) FROM PUBLIC;

-- sluice._st_check_mode(fn, mode) / _st_check_schedule(fn, schedule): raise
-- for an invalid argument.
CREATE FUNCTION sluice._st_check_args(fn text, mode text, schedule interval)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF mode IS NOT NULL AND mode NOT IN ('auto', 'full', 'differential') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: invalid refresh_mode %L', fn, mode),
            HINT = 'refresh_mode is ''auto'' (differential where the query allows it), ''differential'' or ''full''.';
    END IF;
    IF schedule IS NOT NULL AND schedule <= interval '0' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: schedule must be a positive interval, got %s', fn, schedule),
            HINT = 'Pass how often the engine refreshes, e.g. ''1 second'' or ''5 minutes''.';
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_check_args(text, text, interval) FROM PUBLIC;

-- sluice._st_check_read_committed(fn): the population must see every change
-- committed before capture started; see create_stream_table.
CREATE FUNCTION sluice._st_check_read_committed(fn text)
RETURNS void
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'active_sql_transaction',
            MESSAGE = format('%s: must run in a READ COMMITTED transaction, not %s', fn,
                             upper(current_setting('transaction_isolation'))),
            DETAIL = 'Starting change capture waits for the writers in progress; the table is then filled from a snapshot taken after that wait. Under REPEATABLE READ or SERIALIZABLE the snapshot is the one from the start of the transaction, which misses what those writers committed meanwhile, and capture did not record it either.',
            HINT = 'Call it in its own transaction, or in one started with the default isolation level.';
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_check_read_committed(text) FROM PUBLIC;

-- sluice._st_set_sources(st_id, view, fn, name): records and attaches the
-- sources of the query in `view`; detaches tables nobody reads any more.
-- Raises when the sources would make a cycle through stream tables.
CREATE FUNCTION sluice._st_set_sources(st_id bigint, view regclass, fn text, name text, caller oid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    src   record;
    cycle text;
    old   oid[];
    st_relid oid := (SELECT c.relid FROM sluice.stream_table_catalog c WHERE c.id = st_id);
BEGIN
    old := ARRAY(SELECT s.relid FROM sluice.stream_table_sources s WHERE s.stream_table_id = st_id);
    DELETE FROM sluice.stream_table_sources s WHERE s.stream_table_id = st_id;
    FOR src IN SELECT * FROM sluice._st_sources(fn, name, view) LOOP
        IF NOT has_table_privilege(caller, src.relid, 'SELECT') THEN
            RAISE EXCEPTION USING
                ERRCODE = 'insufficient_privilege',
                MESSAGE = format('%s: permission denied for table %s', fn, src.relname),
                HINT = format('The owner of stream table %s needs SELECT on every table its query reads.', name);
        END IF;
        INSERT INTO sluice.stream_table_sources (stream_table_id, relid, relname, is_stream_table)
        VALUES (st_id, src.relid, src.relname, src.is_stream_table);
    END LOOP;
    -- A cycle: this stream table reachable from one of its own sources.
    WITH RECURSIVE up(relid, path) AS (
        SELECT s.relid, ARRAY[_st_set_sources.name, c.name]
          FROM sluice.stream_table_sources s
          JOIN sluice.stream_table_catalog c ON c.relid = s.relid
         WHERE s.stream_table_id = st_id
        UNION ALL
        SELECT s.relid, up.path || c2.name
          FROM up
          JOIN sluice.stream_table_catalog c1 ON c1.relid = up.relid
          JOIN sluice.stream_table_sources s ON s.stream_table_id = c1.id
          JOIN sluice.stream_table_catalog c2 ON c2.relid = s.relid
         WHERE cardinality(up.path) < 100 AND up.relid <> st_relid
    )
    SELECT array_to_string(path, ' -> ') INTO cycle FROM up WHERE up.relid = st_relid LIMIT 1;
    IF cycle IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_recursion',
            MESSAGE = format('%s: stream table %s would read itself: %s', fn, name, cycle),
            DETAIL = 'A -> B means A reads B.',
            HINT = 'A stream table cannot depend on itself through other stream tables; change the query.';
    END IF;
    FOR src IN SELECT s.relid FROM sluice.stream_table_sources s WHERE s.stream_table_id = st_id LOOP
        PERFORM sluice.cdc_attach(src.relid::regclass);
    END LOOP;
    -- Tables this stream table no longer reads and nobody else does.
    FOR src IN SELECT o AS relid FROM unnest(old) o
                WHERE NOT EXISTS (SELECT 1 FROM sluice.stream_table_sources s WHERE s.relid = o) LOOP
        PERFORM sluice.cdc_detach(src.relid::regclass);
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_set_sources(bigint, regclass, text, text, oid) FROM PUBLIC;

-- sluice._st_notify(st, refresh_id, inserted, updated, deleted)
--
-- Tells every subscription of the stream table about one refresh, coalesced
-- per subscription: sent at once when the subscription's window
-- (coalesce_ms, else the setting sluice.notify_coalesce_ms, else 250 ms)
-- has passed since the last notification, merged with anything pending;
-- otherwise added to pending, which the next refresh after the window, or
-- sluice._flush_notifications(), sends.
CREATE FUNCTION sluice._st_notify(st_id bigint, st_name text, rid bigint, ins bigint, upd bigint, del bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    sub  record;
    win  interval;
    msg  jsonb;
    dflt int := coalesce(nullif(current_setting('sluice.notify_coalesce_ms', true), '')::int, 250);
BEGIN
    FOR sub IN SELECT * FROM sluice.subscriptions s WHERE s.stream_table_id = st_id
                ORDER BY s.channel FOR UPDATE LOOP
        win := make_interval(secs => coalesce(sub.coalesce_ms, dflt) / 1000.0);
        msg := jsonb_build_object(
            'name', st_name,
            'refresh_id', rid,
            'inserted_count', ins + coalesce((sub.pending ->> 'inserted_count')::bigint, 0),
            'deleted_count', del + coalesce((sub.pending ->> 'deleted_count')::bigint, 0),
            'updated_count', upd + coalesce((sub.pending ->> 'updated_count')::bigint, 0),
            'first_refresh_id', coalesce((sub.pending ->> 'first_refresh_id')::bigint, rid),
            'last_refresh_id', rid,
            'refreshes', 1 + coalesce((sub.pending ->> 'refreshes')::bigint, 0));
        IF sub.last_sent_at IS NULL OR clock_timestamp() - sub.last_sent_at >= win THEN
            -- name <= 127 bytes and eight numbers: far below the 8000-byte limit.
            PERFORM pg_notify(sub.channel, msg::text);
            UPDATE sluice.subscriptions s SET last_sent_at = clock_timestamp(), pending = NULL
             WHERE s.stream_table_id = st_id AND s.channel = sub.channel;
        ELSE
            UPDATE sluice.subscriptions s SET pending = msg
             WHERE s.stream_table_id = st_id AND s.channel = sub.channel;
        END IF;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_notify(bigint, text, bigint, bigint, bigint, bigint) FROM PUBLIC;

-- sluice._st_publish(st, mode, started) -> refresh id, or NULL
--
-- Publishes the delta in pg_temp.__sluice_delta (row_id, op, before, after):
-- one outbox message per row, the history row, the notifications. NULL and
-- nothing written when the delta is empty.
CREATE FUNCTION sluice._st_publish(st sluice.stream_table_catalog, mode text, started timestamptz)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    rid bigint;
    ins bigint;
    upd bigint;
    del bigint;
BEGIN
    SELECT count(*) FILTER (WHERE d.op = 'insert'), count(*) FILTER (WHERE d.op = 'update'),
           count(*) FILTER (WHERE d.op = 'delete')
      INTO ins, upd, del
      FROM pg_temp.__sluice_delta d;
    IF ins + upd + del = 0 THEN
        RETURN NULL;
    END IF;
    rid := nextval('sluice.refresh_id_seq');
    -- Not through sluice.publish(): one set-based insert. Stream table names
    -- are valid topics by construction (sluice._st_norm_name).
    INSERT INTO sluice.outbox (topic, key, op, payload, headers, refresh_id)
    SELECT st.name, d.row_id::text, d.op,
           jsonb_build_object('before', d.before, 'after', d.after, 'refresh_id', rid), '{}', rid
      FROM pg_temp.__sluice_delta d
     ORDER BY CASE d.op WHEN 'delete' THEN 0 WHEN 'update' THEN 1 ELSE 2 END, d.row_id;
    -- The relay's doorbell, exactly as sluice.publish() rings it.
    IF lower(coalesce(current_setting('sluice.doorbell', true), '')) NOT IN ('off', 'false', '0', 'no') THEN
        IF pg_try_advisory_lock(8317132985617640448) THEN
            PERFORM pg_advisory_unlock(8317132985617640448);
        ELSE
            PERFORM pg_notify('sluice_outbox', '');
        END IF;
    END IF;
    INSERT INTO sluice.refresh_history (refresh_id, stream_table_id, started_at, duration_ms, mode,
                                        inserted, updated, deleted)
    VALUES (rid, st.id, started, 1000 * extract(epoch FROM clock_timestamp() - started), mode,
            ins, upd, del);
    -- Keep the last 1000 per stream table; look only every 100th refresh.
    IF rid % 100 = 0 THEN
        DELETE FROM sluice.refresh_history h
         WHERE h.stream_table_id = st.id
           AND h.refresh_id < (SELECT h2.refresh_id FROM sluice.refresh_history h2
                                WHERE h2.stream_table_id = st.id
                                ORDER BY h2.refresh_id DESC OFFSET 999 LIMIT 1);
    END IF;
    PERFORM sluice._st_notify(st.id, st.name, rid, ins, upd, del);
    RETURN rid;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_publish(sluice.stream_table_catalog, text, timestamptz) FROM PUBLIC;

-- sluice._st_drop_temps(): drops the driver's temporary tables that exist
-- (a refresh earlier in the same transaction leaves them until commit
-- otherwise), without the NOTICE of DROP ... IF EXISTS.
CREATE FUNCTION sluice._st_drop_temps()
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['__sluice_new', '__sluice_old', '__sluice_aff', '__sluice_delta'] LOOP
        IF to_regclass('pg_temp.' || t) IS NOT NULL THEN
            EXECUTE format('DROP TABLE pg_temp.%I', t);
        END IF;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_drop_temps() FROM PUBLIC;

-- ------------------------------------------------------------------------
-- The refresh driver
-- ------------------------------------------------------------------------

-- sluice._refresh(id, force_full) -> refresh id, or NULL when nothing changed
--
-- One refresh of stream table `id` in the caller's transaction (see the
-- steps below). Raises on any error, which aborts the caller's transaction;
-- the engine then records it with sluice._record_failure in a new one.
-- No owner check: refresh_stream_table() checks; the engine's role is
-- trusted (grant EXECUTE on this function to it only).
CREATE FUNCTION sluice._refresh(id bigint, force_full boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    started  timestamptz := clock_timestamp();
    st       sluice.stream_table_catalog;
    snap     pg_snapshot;
    cur      pg_snapshot;
    next_fr  pg_snapshot;
    src      record;
    -- The window predicate of cdc/sql/0004_cdc.sql, over buffer alias b,
    -- plus txid < xmax(cur), implied, for the index range.
    win      constant text := 'b.txid >= pg_snapshot_xmin($1) AND b.txid < pg_snapshot_xmax($2) AND NOT pg_visible_in_snapshot(b.txid, $1) AND pg_visible_in_snapshot(b.txid, $2)';
    changed  boolean := false;
    has      boolean;
    nchg     bigint;
    ntrunc   boolean;
    diff_ok  boolean;
    mode     text;
    storage  text;
    old_rel  text;
    cols     text;
    rid      bigint;
    nrows    bigint;
    ins      bigint;
    del      bigint;
BEGIN
    -- 1. Serialise refreshes of this stream table.
    SELECT * INTO st FROM sluice.stream_table_catalog c WHERE c.id = _refresh.id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('sluice._refresh: no stream table has id %s', _refresh.id),
            HINT = 'Stream tables and their ids are in sluice.stream_table_catalog.';
    END IF;
    IF st.status = 'error' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('stream table %s is in error: %s', st.name, st.last_error),
            HINT = format('Fix the cause, then re-validate it with SELECT sluice.alter_stream_table(%L, query => ...) (the same query is fine), or drop it.',
                          st.name);
    END IF;

    -- 2. The window (frontier, cur] and whether anything is in it.
    snap := pg_current_snapshot();
    cur := sluice._snap_own(snap, true);
    next_fr := sluice._snap_own(snap, false);
    diff_ok := NOT force_full AND st.effective_mode = 'differential' AND st.analyzed_query = st.query
               AND st.key_columns IS NOT NULL AND st.requested_mode <> 'full';
    mode := CASE WHEN diff_ok THEN 'differential' ELSE 'full' END;
    FOR src IN
        SELECT s.relid, s.relname, k.oid IS NULL AS gone, b.buffer, k.reltuples
          FROM sluice.stream_table_sources s
          LEFT JOIN pg_class k ON k.oid = s.relid
          LEFT JOIN sluice.cdc_sources b ON b.relid = s.relid
         WHERE s.stream_table_id = st.id
    LOOP
        IF src.gone OR src.buffer IS NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'undefined_table',
                MESSAGE = format('source %s of stream table %s no longer exists%s', src.relname, st.name,
                                 CASE WHEN src.gone THEN '' ELSE ' (its change capture is gone)' END),
                HINT = format('Recreate it and re-validate with SELECT sluice.alter_stream_table(%L, query => ...), or drop the stream table.',
                              st.name);
        END IF;
        CONTINUE WHEN force_full OR (changed AND mode = 'full');
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s b WHERE %s)', src.buffer, win)
           INTO has USING st.frontier, cur;
        CONTINUE WHEN NOT has;
        changed := true;
        IF mode = 'differential' THEN
            -- 3. Too many changes, or a TRUNCATE: FULL for this cycle.
            EXECUTE format('SELECT count(*), coalesce(bool_or(b.op = ''T''), false) FROM %s b WHERE %s',
                           src.buffer, win)
               INTO nchg, ntrunc USING st.frontier, cur;
            IF ntrunc OR (src.reltuples >= 0 AND nchg > st.full_refresh_fraction * greatest(src.reltuples, 1)) THEN
                mode := 'full';
            END IF;
        END IF;
    END LOOP;
    IF NOT changed AND NOT force_full THEN
        UPDATE sluice.stream_table_catalog c
           SET frontier = next_fr, last_refresh_at = clock_timestamp()
         WHERE c.id = st.id;
        RETURN NULL;
    END IF;

    -- 4. Old and new rows.
    storage := st.relid::regclass::text;
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
      FROM pg_attribute a WHERE a.attrelid = st.relid AND a.attnum > 0 AND NOT a.attisdropped;
    PERFORM sluice._st_drop_temps();
    IF mode = 'full' THEN
        EXECUTE format('CREATE TEMP TABLE __sluice_new ON COMMIT DROP AS SELECT %s AS __sluice_row_id, __sluice_q.* FROM (%s) __sluice_q',
                       sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_q'), st.query);
        old_rel := storage;
    ELSE
        FOR src IN
            SELECT s.relid, b.buffer FROM sluice.stream_table_sources s
              JOIN sluice.cdc_sources b ON b.relid = s.relid
             WHERE s.stream_table_id = st.id
        LOOP
            IF to_regclass(format('pg_temp.%I', '__sluice_chg_' || src.relid)) IS NOT NULL THEN
                EXECUTE format('DROP TABLE pg_temp.%I', '__sluice_chg_' || src.relid);
            END IF;
            EXECUTE format('CREATE TEMP TABLE %I ON COMMIT DROP AS SELECT r.*, b.op AS __sluice_op FROM %s b CROSS JOIN LATERAL jsonb_populate_record(NULL::%s, b.img) r WHERE b.op <> ''T'' AND %s',
                           '__sluice_chg_' || src.relid, src.buffer, src.relid::regclass,
                           replace(replace(win, '$1', quote_literal(st.frontier::text) || '::pg_snapshot'),
                                   '$2', quote_literal(cur::text) || '::pg_snapshot'));
        END LOOP;
        EXECUTE format('CREATE TEMP TABLE __sluice_aff ON COMMIT DROP AS %s', st.affected_sql);
        EXECUTE format('CREATE TEMP TABLE __sluice_old ON COMMIT DROP AS SELECT __sluice_s.* FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id IN (SELECT %s FROM pg_temp.__sluice_aff __sluice_a)',
                       storage, sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_a'));
        EXECUTE format('CREATE TEMP TABLE __sluice_new ON COMMIT DROP AS SELECT %s AS __sluice_row_id, __sluice_r.* FROM (%s) __sluice_r',
                       sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_r'), st.recompute_sql);
        old_rel := 'pg_temp.__sluice_old';
    END IF;

    -- 5. The delta, by identity.
    -- Images are compared as jsonb: column types without an equality
    -- operator (json, point, ...) work too.
    EXECUTE format($q$
        CREATE TEMP TABLE __sluice_delta ON COMMIT DROP AS
        SELECT coalesce(__sluice_n.__sluice_row_id, __sluice_o.__sluice_row_id) AS row_id,
               CASE WHEN __sluice_o.__sluice_row_id IS NULL THEN 'insert'
                    WHEN __sluice_n.__sluice_row_id IS NULL THEN 'delete'
                    ELSE 'update' END AS op,
               CASE WHEN __sluice_o.__sluice_row_id IS NOT NULL THEN to_jsonb(__sluice_o) - '__sluice_row_id' END AS before,
               CASE WHEN __sluice_n.__sluice_row_id IS NOT NULL THEN to_jsonb(__sluice_n) - '__sluice_row_id' END AS after
          FROM %s __sluice_o
          FULL JOIN pg_temp.__sluice_new __sluice_n ON __sluice_n.__sluice_row_id = __sluice_o.__sluice_row_id
         WHERE __sluice_o.__sluice_row_id IS NULL OR __sluice_n.__sluice_row_id IS NULL
            OR to_jsonb(__sluice_o) IS DISTINCT FROM to_jsonb(__sluice_n)$q$, old_rel);

    -- 6. Apply it (an update is a delete and an insert of the row).
    EXECUTE format('DELETE FROM %s __sluice_s USING pg_temp.__sluice_delta __sluice_d WHERE __sluice_s.__sluice_row_id = __sluice_d.row_id AND __sluice_d.op <> ''insert''',
                   storage);
    GET DIAGNOSTICS del = ROW_COUNT;
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM pg_temp.__sluice_new __sluice_n WHERE __sluice_n.__sluice_row_id IN (SELECT __sluice_d.row_id FROM pg_temp.__sluice_delta __sluice_d WHERE __sluice_d.op <> ''delete'')',
                   storage, cols, cols);
    GET DIAGNOSTICS ins = ROW_COUNT;
    IF mode = 'full' THEN
        SELECT count(*) INTO nrows FROM pg_temp.__sluice_new;
    ELSE
        nrows := coalesce(st.rows, 0) + ins - del;
    END IF;

    -- 7. Outbox, history, notifications.
    rid := sluice._st_publish(st, mode, started);

    -- 8. Advance; prune what every reader of each source has seen.
    UPDATE sluice.stream_table_catalog c
       SET frontier = next_fr, last_refresh_at = clock_timestamp(),
           last_refresh_ms = 1000 * extract(epoch FROM clock_timestamp() - started),
           last_refresh_mode = mode, rows = nrows, consecutive_failures = 0
     WHERE c.id = st.id;
    FOR src IN
        SELECT s.relid,
               sluice._snap_intersect(ARRAY(SELECT c.frontier FROM sluice.stream_table_sources s2
                                              JOIN sluice.stream_table_catalog c ON c.id = s2.stream_table_id
                                             WHERE s2.relid = s.relid)) AS horizon
          FROM sluice.stream_table_sources s
         WHERE s.stream_table_id = st.id
    LOOP
        PERFORM sluice.cdc_prune(src.relid::regclass, src.horizon);
    END LOOP;
    PERFORM sluice._st_drop_temps();
    RETURN rid;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._refresh(bigint, boolean) FROM PUBLIC;
COMMENT ON FUNCTION sluice._refresh(bigint, boolean) IS
    'The refresh driver: one FULL or DIFFERENTIAL refresh of a stream table in the caller''s transaction';

-- ------------------------------------------------------------------------
-- Creation and changes
-- ------------------------------------------------------------------------

-- sluice._create_stream_table(...): the SECURITY DEFINER half of
-- create_stream_table; `view` is the caller's temporary view of the query,
-- `caller` the role the wrapper ran as, `schema` its current_schema().
CREATE FUNCTION sluice._create_stream_table(name text, query text, refresh_mode text, schedule interval,
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

    INSERT INTO sluice.stream_table_catalog (name, relid, query, query_as_given, search_path, requested_mode,
                                             schedule, key_columns, owner, frontier, effective_mode,
                                             fallback_reason)
    VALUES (nm, storage, qtext, query, path, refresh_mode, schedule, keys, owner, pg_current_snapshot(),
            CASE WHEN refresh_mode = 'full' OR keys IS NULL THEN 'full' END,
            CASE WHEN refresh_mode = 'full' THEN 'refresh_mode full was requested'
                 WHEN keys IS NULL THEN 'rows have no key (content identity)' END)
    RETURNING id INTO st_id;
    IF keys IS NULL THEN
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
             ELSE ', refreshed in full until the engine (sluice engine) has analysed the query; see sluice.explain_stream_table(' || quote_literal(nm) || ')'
        END);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._create_stream_table(text, text, text, interval, regclass, name, name, text) FROM PUBLIC;

-- sluice.create_stream_table(name, query, refresh_mode, schedule)
--
-- SECURITY INVOKER on purpose: the query is checked by PostgreSQL with the
-- caller's search_path and privileges, as a temporary view, which the
-- SECURITY DEFINER half then reads (file header, "Names and search_path").
CREATE FUNCTION sluice.create_stream_table(name text, query text, refresh_mode text DEFAULT 'auto',
                                           schedule interval DEFAULT '1 second')
RETURNS void
LANGUAGE plpgsql
AS $fn$
BEGIN
    PERFORM sluice._st_norm_name('sluice.create_stream_table', name);
    PERFORM sluice._st_check_args('sluice.create_stream_table', coalesce(refresh_mode, 'NULL'),
                                  coalesce(schedule, interval '0'));
    PERFORM sluice._st_check_read_committed('sluice.create_stream_table');
    IF query IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('sluice.create_stream_table: query is NULL (stream table %s)', name),
            HINT = 'Pass the SELECT whose result the stream table holds.';
    END IF;
    IF pg_catalog.to_regclass('pg_temp.__sluice_query') IS NOT NULL THEN
        EXECUTE 'DROP VIEW pg_temp.__sluice_query';
    END IF;
    -- PostgreSQL's own error for a bad query comes from here.
    EXECUTE 'CREATE TEMP VIEW __sluice_query AS ' || pg_catalog.regexp_replace(query, '[\s;]+$', '');
    -- The caller's privileges on what it reads (LIMIT 0: checked, not run).
    EXECUTE 'SELECT 1 FROM pg_temp.__sluice_query LIMIT 0';
    PERFORM sluice._create_stream_table(name, query, refresh_mode, schedule,
                                        'pg_temp.__sluice_query'::regclass, current_user,
                                        pg_catalog.current_schema(),
                                        pg_catalog.current_setting('search_path'));
    EXECUTE 'DROP VIEW pg_temp.__sluice_query';
END
$fn$;

REVOKE ALL ON FUNCTION sluice.create_stream_table(text, text, text, interval) FROM PUBLIC;
COMMENT ON FUNCTION sluice.create_stream_table(text, text, text, interval) IS
    'Create a stream table: capture its sources, fill it and publish its rows, atomically';

-- sluice._alter_stream_table(...): the SECURITY DEFINER half of
-- alter_stream_table; view is NULL when the query does not change.
CREATE FUNCTION sluice._alter_stream_table(name text, query text, schedule interval, refresh_mode text,
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
            -- A new mode: the analysis is redone by the engine.
            UPDATE sluice.stream_table_catalog c
               SET requested_mode = mode,
                   analyzed_query = CASE WHEN c.key_columns IS NULL THEN c.query END,
                   effective_mode = CASE WHEN mode = 'full' OR c.key_columns IS NULL THEN 'full' END,
                   fallback_reason = CASE WHEN mode = 'full' THEN 'refresh_mode full was requested'
                                          WHEN c.key_columns IS NULL THEN 'rows have no key (content identity)' END,
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
    UPDATE sluice.stream_table_catalog c
       SET relid = storage, query = qtext, query_as_given = _alter_stream_table.query, search_path = path,
           requested_mode = mode, key_columns = keys,
           analyzed_query = CASE WHEN keys IS NULL THEN qtext END,
           effective_mode = CASE WHEN mode = 'full' OR keys IS NULL THEN 'full' END,
           fallback_reason = CASE WHEN mode = 'full' THEN 'refresh_mode full was requested'
                                  WHEN keys IS NULL THEN 'rows have no key (content identity)' END,
           operator_tree = NULL, affected_sql = NULL, recompute_sql = NULL,
           status = 'active', last_error = NULL, consecutive_failures = 0,
           rows = CASE WHEN same THEN c.rows ELSE 0 END
     WHERE c.id = st.id;
    PERFORM sluice._st_set_sources(st.id, view, fn, st.name, st.owner);
    PERFORM sluice._refresh(st.id, true);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._alter_stream_table(text, text, interval, text, regclass, text) FROM PUBLIC;

-- sluice.alter_stream_table(name, query, schedule, refresh_mode)
--
-- Changes what is given (NULL: unchanged). A new query is checked like at
-- creation (SECURITY INVOKER for the same reason) and applied as one FULL
-- refresh: with the same output columns the published delta is the
-- difference between the old and the new content; with other columns every
-- old row is published as deleted, the table rebuilt, and every new row
-- published as inserted (two refresh ids). The analysis is cleared: the
-- engine analyses the new query. Also the way out of the error status.
CREATE FUNCTION sluice.alter_stream_table(name text, query text DEFAULT NULL, schedule interval DEFAULT NULL,
                                          refresh_mode text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
AS $fn$
DECLARE
    v pg_catalog.regclass;
BEGIN
    IF query IS NOT NULL THEN
        PERFORM sluice._st_check_read_committed('sluice.alter_stream_table');
        PERFORM sluice._st_lookup('sluice.alter_stream_table', name, false);
        IF pg_catalog.to_regclass('pg_temp.__sluice_query') IS NOT NULL THEN
            EXECUTE 'DROP VIEW pg_temp.__sluice_query';
        END IF;
        EXECUTE 'CREATE TEMP VIEW __sluice_query AS ' || pg_catalog.regexp_replace(query, '[\s;]+$', '');
        EXECUTE 'SELECT 1 FROM pg_temp.__sluice_query LIMIT 0';
        v := 'pg_temp.__sluice_query'::pg_catalog.regclass;
    END IF;
    PERFORM sluice._alter_stream_table(name, query, schedule, refresh_mode, v,
                                       pg_catalog.current_setting('search_path'));
    IF v IS NOT NULL THEN
        EXECUTE 'DROP VIEW pg_temp.__sluice_query';
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.alter_stream_table(text, text, interval, text) FROM PUBLIC;
COMMENT ON FUNCTION sluice.alter_stream_table(text, text, interval, text) IS
    'Change a stream table''s query, schedule or refresh mode (NULL: unchanged)';

-- sluice.drop_stream_table(name, cascade)
--
-- Drops the stream table and its table; stops capturing tables no other
-- stream table reads. Refuses while other stream tables read it, unless
-- cascade (then those are dropped first, recursively, with the same owner
-- check). Publishes nothing: consumers that need to forget the rows are told
-- by whoever drops it.
CREATE FUNCTION sluice.drop_stream_table(name text, cascade boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn   constant text := 'sluice.drop_stream_table';
    st   sluice.stream_table_catalog := sluice._st_lookup(fn, name, true);
    deps text[];
    dep  text;
    srcs oid[];
    s    oid;
BEGIN
    PERFORM 1 FROM sluice.stream_table_catalog c WHERE c.id = st.id FOR UPDATE;
    deps := ARRAY(SELECT c.name FROM sluice.stream_table_sources x
                    JOIN sluice.stream_table_catalog c ON c.id = x.stream_table_id
                   WHERE x.relid = st.relid ORDER BY c.name);
    IF cardinality(deps) > 0 AND NOT coalesce(cascade, false) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'dependent_objects_still_exist',
            MESSAGE = format('%s: cannot drop stream table %s: stream tables %s read it', fn, st.name,
                             array_to_string(deps, ', ')),
            HINT = format('Drop those first, or drop everything that depends on it with SELECT sluice.drop_stream_table(%L, cascade => true).',
                          st.name);
    END IF;
    FOREACH dep IN ARRAY deps LOOP
        IF EXISTS (SELECT 1 FROM sluice.stream_table_catalog c WHERE c.name = dep) THEN
            PERFORM sluice.drop_stream_table(dep, true);
        END IF;
    END LOOP;
    srcs := ARRAY(SELECT x.relid FROM sluice.stream_table_sources x WHERE x.stream_table_id = st.id);
    DELETE FROM sluice.stream_table_catalog c WHERE c.id = st.id;
    IF EXISTS (SELECT 1 FROM sluice.cdc_sources b WHERE b.relid = st.relid) THEN
        PERFORM sluice.cdc_detach(st.relid::regclass);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_class k WHERE k.oid = st.relid) THEN
        EXECUTE format('DROP TABLE %s', st.relid::regclass);
    END IF;
    FOREACH s IN ARRAY srcs LOOP
        IF NOT EXISTS (SELECT 1 FROM sluice.stream_table_sources x WHERE x.relid = s) THEN
            PERFORM sluice.cdc_detach(s::regclass);
        END IF;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.drop_stream_table(text, boolean) FROM PUBLIC;
COMMENT ON FUNCTION sluice.drop_stream_table(text, boolean) IS
    'Drop a stream table (cascade: and the stream tables reading it); publishes nothing';

-- sluice.refresh_stream_table(name) -> refresh id, or NULL when nothing changed
CREATE FUNCTION sluice.refresh_stream_table(name text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st sluice.stream_table_catalog := sluice._st_lookup('sluice.refresh_stream_table', name, true);
BEGIN
    RETURN sluice._refresh(st.id, false);
END
$fn$;

REVOKE ALL ON FUNCTION sluice.refresh_stream_table(text) FROM PUBLIC;
COMMENT ON FUNCTION sluice.refresh_stream_table(text) IS
    'Refresh a stream table now, in this transaction; returns the refresh id, NULL when nothing changed';

-- sluice.explain_stream_table(name) -> (property, value) rows
CREATE FUNCTION sluice.explain_stream_table(name text)
RETURNS TABLE (property text, value text)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st sluice.stream_table_catalog := sluice._st_lookup('sluice.explain_stream_table', name, false);
    current boolean := st.analyzed_query IS NOT DISTINCT FROM st.query;
BEGIN
    RETURN QUERY VALUES
        ('name', st.name),
        ('query', st.query_as_given),
        ('resolved query', st.query),
        ('requested mode', st.requested_mode),
        ('effective mode', CASE WHEN st.effective_mode IS NULL OR NOT current THEN 'full (not analysed yet)'
                                ELSE st.effective_mode END),
        ('fallback reason', CASE WHEN current THEN st.fallback_reason END),
        ('row identity', CASE WHEN st.key_columns IS NULL THEN 'content'
                              WHEN cardinality(st.key_columns) = 0 THEN 'single row'
                              ELSE 'key (' || array_to_string(st.key_columns, ', ') || ')' END),
        ('sources', (SELECT string_agg(s.relname || CASE WHEN s.is_stream_table THEN ' (stream table)' ELSE '' END,
                                       ', ' ORDER BY s.relname)
                       FROM sluice.stream_table_sources s WHERE s.stream_table_id = st.id)),
        ('operator tree', CASE WHEN current THEN st.operator_tree END),
        ('affected SQL', CASE WHEN current THEN st.affected_sql END),
        ('recompute SQL', CASE WHEN current THEN st.recompute_sql END),
        ('status', st.status || coalesce(': ' || st.last_error, ''));
END
$fn$;

REVOKE ALL ON FUNCTION sluice.explain_stream_table(text) FROM PUBLIC;
COMMENT ON FUNCTION sluice.explain_stream_table(text) IS
    'How a stream table is refreshed: effective mode and why, row identity, sources, delta SQL';

-- ------------------------------------------------------------------------
-- The analyzer and the engine
-- ------------------------------------------------------------------------

-- sluice._set_analysis(id, analyzed_query, effective_mode, fallback_reason,
--                      operator_tree, affected_sql, recompute_sql) -> stored?
--
-- Written by the C analyzer. Stored only if analyzed_query is still the
-- stream table's query (false otherwise: the query changed meanwhile).
-- requested 'full', or a table without a key, stays 'full' whatever the
-- analyzer says. requested 'differential' analysed as 'full' puts the
-- stream table in error (its refreshes stop until it is altered).
CREATE FUNCTION sluice._set_analysis(id bigint, analyzed_query text, effective_mode text, fallback_reason text,
                                     operator_tree text, affected_sql text, recompute_sql text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st   sluice.stream_table_catalog;
    mode text := effective_mode;
    why  text := fallback_reason;
BEGIN
    IF mode IS NULL OR mode NOT IN ('full', 'differential') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('sluice._set_analysis: invalid effective_mode %s', coalesce(quote_literal(mode), 'NULL')),
            HINT = 'effective_mode is ''full'' or ''differential''.';
    END IF;
    IF mode = 'differential' AND (_set_analysis.affected_sql IS NULL OR _set_analysis.recompute_sql IS NULL) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'sluice._set_analysis: a differential analysis needs affected_sql and recompute_sql',
            HINT = 'Pass both, or effective_mode ''full'' with a fallback_reason.';
    END IF;
    SELECT * INTO st FROM sluice.stream_table_catalog c WHERE c.id = _set_analysis.id FOR UPDATE;
    IF NOT FOUND OR st.query IS DISTINCT FROM analyzed_query THEN
        RETURN false;
    END IF;
    IF st.requested_mode = 'full' THEN
        mode := 'full';
        why := 'refresh_mode full was requested';
    ELSIF st.key_columns IS NULL THEN
        mode := 'full';
        why := 'rows have no key (content identity)';
    END IF;
    UPDATE sluice.stream_table_catalog c
       SET analyzed_query = _set_analysis.analyzed_query, effective_mode = mode,
           fallback_reason = CASE WHEN mode = 'full' THEN why END,
           operator_tree = _set_analysis.operator_tree,
           affected_sql = _set_analysis.affected_sql, recompute_sql = _set_analysis.recompute_sql,
           status = CASE WHEN st.requested_mode = 'differential' AND mode = 'full' THEN 'error' ELSE c.status END,
           last_error = CASE WHEN st.requested_mode = 'differential' AND mode = 'full'
                             THEN 'differential refresh is not possible: ' || coalesce(why, 'no reason given')
                             ELSE c.last_error END,
           last_error_at = CASE WHEN st.requested_mode = 'differential' AND mode = 'full'
                                THEN clock_timestamp() ELSE c.last_error_at END
     WHERE c.id = st.id;
    RETURN true;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._set_analysis(bigint, text, text, text, text, text, text) FROM PUBLIC;

-- sluice._record_failure(id, message, sql_state) -> the new status
--
-- The engine records a failed refresh (in a new transaction). A failure
-- caused by DDL on a source (a source gone, a column gone, a type changed:
-- SQLSTATE 42P01, 42703, 42804, or a source missing from pg_class) puts the
-- stream table in status 'error', naming the source; anything else counts as
-- transient (consecutive_failures, retried by the engine with backoff).
CREATE FUNCTION sluice._record_failure(id bigint, message text, sql_state text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    gone   text;
    srcs   text;
    ddl    boolean;
    result text;
BEGIN
    SELECT string_agg(s.relname, ', ' ORDER BY s.relname) INTO gone
      FROM sluice.stream_table_sources s
     WHERE s.stream_table_id = _record_failure.id
       AND NOT EXISTS (SELECT 1 FROM pg_class k WHERE k.oid = s.relid);
    SELECT string_agg(s.relname, ', ' ORDER BY s.relname) INTO srcs
      FROM sluice.stream_table_sources s WHERE s.stream_table_id = _record_failure.id;
    ddl := gone IS NOT NULL OR sql_state IN ('42P01', '42703', '42804');
    UPDATE sluice.stream_table_catalog c
       SET last_error = CASE
               WHEN gone IS NOT NULL THEN format('source %s was dropped: %s', gone, message)
               WHEN ddl THEN format('a source changed (%s): %s', coalesce(srcs, 'none'), message)
               ELSE message END,
           last_error_at = clock_timestamp(),
           consecutive_failures = c.consecutive_failures + 1,
           status = CASE WHEN ddl THEN 'error' ELSE c.status END
     WHERE c.id = _record_failure.id
    RETURNING c.status INTO result;
    RETURN result;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._record_failure(bigint, text, text) FROM PUBLIC;

-- ------------------------------------------------------------------------
-- Subscriptions
-- ------------------------------------------------------------------------

-- sluice.subscribe(stream_table, channel, coalesce_ms)
--
-- After every refresh that changes stream_table, pg_notify(channel, payload)
-- in the refresh transaction, coalesced per coalesce_ms (NULL: the setting
-- sluice.notify_coalesce_ms, else 250). Subscribing again updates
-- coalesce_ms. Needs SELECT on the stream table.
CREATE FUNCTION sluice.subscribe(stream_table text, channel text, coalesce_ms int DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn constant text := 'sluice.subscribe';
    st sluice.stream_table_catalog := sluice._st_lookup(fn, stream_table, false);
BEGIN
    IF channel IS NULL OR channel = '' OR octet_length(channel) > 63 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: invalid channel name %s', fn, coalesce(quote_literal(channel), 'NULL')),
            HINT = 'A channel name is 1 to 63 bytes, the name LISTEN uses (an identifier; case matters as in pg_notify).';
    END IF;
    IF coalesce_ms < 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: coalesce_ms must be >= 0, got %s', fn, coalesce_ms),
            HINT = 'Pass the minimum milliseconds between two notifications, 0 for one per refresh, or NULL for the default.';
    END IF;
    IF NOT has_table_privilege(session_user, st.relid, 'SELECT') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('%s: permission denied for stream table %s', fn, st.name),
            HINT = format('Subscribing needs SELECT on %s.', st.relid::regclass);
    END IF;
    INSERT INTO sluice.subscriptions AS s (stream_table_id, channel, coalesce_ms)
    VALUES (st.id, channel, coalesce_ms)
    ON CONFLICT ON CONSTRAINT subscriptions_pkey DO UPDATE SET coalesce_ms = excluded.coalesce_ms;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.subscribe(text, text, int) FROM PUBLIC;
COMMENT ON FUNCTION sluice.subscribe(text, text, int) IS
    'Notify a LISTEN channel after every refresh that changes the stream table (coalesced)';

-- sluice.unsubscribe(stream_table, channel) -> whether there was one
CREATE FUNCTION sluice.unsubscribe(stream_table text, channel text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st sluice.stream_table_catalog := sluice._st_lookup('sluice.unsubscribe', stream_table, false);
    n  int;
BEGIN
    IF NOT has_table_privilege(session_user, st.relid, 'SELECT') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = format('sluice.unsubscribe: permission denied for stream table %s', st.name),
            HINT = format('Unsubscribing needs SELECT on %s.', st.relid::regclass);
    END IF;
    DELETE FROM sluice.subscriptions s WHERE s.stream_table_id = st.id AND s.channel = unsubscribe.channel;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n > 0;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.unsubscribe(text, text) FROM PUBLIC;
COMMENT ON FUNCTION sluice.unsubscribe(text, text) IS
    'Stop notifying a channel about a stream table; later refreshes send nothing to it';

CREATE FUNCTION sluice.list_subscriptions()
RETURNS TABLE (stream_table text, channel text, created_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT c.name, s.channel, s.created_at
      FROM sluice.subscriptions s JOIN sluice.stream_table_catalog c ON c.id = s.stream_table_id
     ORDER BY c.name, s.channel
$fn$;

REVOKE ALL ON FUNCTION sluice.list_subscriptions() FROM PUBLIC;
COMMENT ON FUNCTION sluice.list_subscriptions() IS
    'Every subscription: stream table, channel, since when';

-- sluice._flush_notifications() -> notifications sent
--
-- Sends the coalesced notifications whose window has passed. The engine
-- calls it periodically (more often than the shortest window).
CREATE FUNCTION sluice._flush_notifications()
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    dflt int := coalesce(nullif(current_setting('sluice.notify_coalesce_ms', true), '')::int, 250);
    sub  record;
    n    int := 0;
BEGIN
    FOR sub IN
        SELECT s.stream_table_id, s.channel, s.pending
          FROM sluice.subscriptions s
         WHERE s.pending IS NOT NULL
           AND (s.last_sent_at IS NULL
                OR clock_timestamp() - s.last_sent_at >= make_interval(secs => coalesce(s.coalesce_ms, dflt) / 1000.0))
         ORDER BY s.stream_table_id, s.channel
           FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM pg_notify(sub.channel, sub.pending::text);
        UPDATE sluice.subscriptions s SET pending = NULL, last_sent_at = clock_timestamp()
         WHERE s.stream_table_id = sub.stream_table_id AND s.channel = sub.channel;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._flush_notifications() FROM PUBLIC;
