-- refresh/sql/0040_measured_mode_choice.sql - migration 40: a cycle is
-- refreshed in full when the last refreshes of the same stream table say
-- that will be cheaper than a differential refresh of its changes, and the
-- reason for every FULL refresh is recorded.
--
-- A differential refresh costs about in proportion to the changes it
-- reads; a FULL one costs about the same whatever they are (the query and
-- a comparison with every stored row). Until now the only switch between
-- the two was full_refresh_fraction: a cycle whose changes to one source
-- pass 0.3 of its estimated rows is FULL. Where the two costs cross
-- depends on the query, far below that fraction for some. Measured by hand
-- (scripts/dev-env, the benchmark's 1,000,000 orders, pairs of stream
-- tables of one query, one refreshed differentially and one in full after
-- the same random updates): a GROUP BY of 100 buckets is cheaper in full
-- from about 3 % of the rows changed (222 against 192 ms; at 10 %, 581
-- against 179 ms), a GROUP BY of 100,000 groups from 3-10 % (1,170
-- against 1,235 ms at 3 %, 2,837 against 1,997 ms at 10 %), a join of
-- orders and customers not below 12 % (4,589 against 5,793 ms).
--
-- So each refresh now records its time up to the delta (what follows,
-- applying and publishing the delta, costs the same in both modes): the
-- last 8 differential refreshes of at least 1,000 change images as
-- (images, ms), the last 3 FULL ones as ms (the refresh that fills a new
-- stream table is the first), in refresh_costs. A window of at least 1,000
-- images is refreshed in full when the estimate of its differential
-- refresh (a line fitted to those points, or their average per image when
-- their sizes are too close for a line) exceeds the median of the FULL
-- ones. Estimates that are too low correct themselves: a cycle refreshed
-- in full because of one measures it. To follow the data the other way,
-- the 8th cycle in a row that the estimates would refresh in full is
-- refreshed differentially, and measured.
--
-- A new query (alter_stream_table) forgets the costs of the old one.
--
-- full_refresh_by_cost (a column of the catalog, true by default) turns
-- this off for one stream table; full_refresh_fraction applies either way.
-- last_full_reason (the catalog, and the view sluice.stream_tables) says
-- why the last refresh was FULL, and explain_stream_table shows the
-- estimates and from how many changes a cycle is refreshed in full.
--
-- Upgrade: existing stream tables start with the durations of their last
-- 3 FULL refreshes in refresh_history, and no differential measurement.
-- Those durations include publishing, so most are higher than what is
-- measured from now on and the choice leans towards differential refreshes
-- until a FULL refresh is measured; one that is too low (the deletes that
-- alter_stream_table publishes before a rebuild are recorded as FULL)
-- costs one FULL refresh, which then measures it.

ALTER TABLE sluice.stream_table_catalog
    ADD COLUMN full_refresh_by_cost boolean NOT NULL DEFAULT true,
    ADD COLUMN refresh_costs jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(refresh_costs) = 'object'),
    ADD COLUMN last_full_reason text;

UPDATE sluice.stream_table_catalog c
   SET refresh_costs = jsonb_build_object('full', h.ms)
  FROM (SELECT x.stream_table_id, jsonb_agg(round(x.duration_ms::numeric, 1) ORDER BY x.refresh_id) AS ms
          FROM (SELECT h.stream_table_id, h.refresh_id, h.duration_ms,
                       row_number() OVER (PARTITION BY h.stream_table_id ORDER BY h.refresh_id DESC) AS k
                  FROM sluice.refresh_history h
                 WHERE h.mode = 'full') x
         WHERE x.k <= 3
         GROUP BY x.stream_table_id) h
 WHERE h.stream_table_id = c.id;

-- The costs measured for one query say nothing of another: a new query
-- (alter_stream_table) starts from none, and the FULL refresh that fills
-- its table is the first.
CREATE FUNCTION sluice._st_forget_costs()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF NEW.query IS DISTINCT FROM OLD.query THEN
        NEW.refresh_costs := '{}';
    END IF;
    RETURN NEW;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_forget_costs() FROM PUBLIC;

CREATE TRIGGER stream_table_forget_costs
    BEFORE UPDATE OF query ON sluice.stream_table_catalog
    FOR EACH ROW EXECUTE FUNCTION sluice._st_forget_costs();

-- sluice._st_costs_add(costs, mode, n, ms, by_cost) -> refresh_costs after
-- a refresh in mode that read n change images (0 when not counted) and
-- took ms up to its delta; by_cost when it was FULL because of the
-- estimates. {"diff": [[n, ms], ... the last 8 with n >= 1000],
-- "full": [ms, ... the last 3], "skipped": cycles in a row FULL by_cost}.
CREATE FUNCTION sluice._st_costs_add(costs jsonb, mode text, n bigint, ms double precision, by_cost boolean)
RETURNS jsonb
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
SELECT CASE
           WHEN mode = 'full' THEN
               costs || jsonb_build_object(
                   'full', (SELECT jsonb_agg(e.v ORDER BY e.k)
                              FROM (SELECT v, k
                                      FROM jsonb_array_elements(coalesce(costs -> 'full', '[]')
                                                                || to_jsonb(round(ms::numeric, 1))) WITH ORDINALITY AS a(v, k)
                                     ORDER BY k DESC LIMIT 3) e),
                   'skipped', CASE WHEN by_cost THEN coalesce((costs ->> 'skipped')::int, 0) + 1
                                   ELSE coalesce((costs ->> 'skipped')::int, 0) END)
           WHEN n >= 1000 THEN
               costs || jsonb_build_object(
                   'diff', (SELECT jsonb_agg(e.v ORDER BY e.k)
                              FROM (SELECT v, k
                                      FROM jsonb_array_elements(coalesce(costs -> 'diff', '[]')
                                                                || jsonb_build_array(jsonb_build_array(n, round(ms::numeric, 1))))
                                           WITH ORDINALITY AS a(v, k)
                                     ORDER BY k DESC LIMIT 8) e),
                   'skipped', 0)
           ELSE costs
       END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_costs_add(jsonb, text, bigint, double precision, boolean) FROM PUBLIC;

-- sluice._st_costs_estimate(costs, n) -> (diff_ms, full_ms, base_ms,
-- per_image_ms): the estimated time, up to the delta, of a differential
-- refresh of n change images (base_ms + per_image_ms * n) and of a FULL
-- one, from refresh_costs; NULL where nothing was measured. The line is
-- fitted to the differential points when the largest window is at least
-- twice the smallest and the fit has a positive slope and base; otherwise
-- it goes through zero with the points' average time per image.
CREATE FUNCTION sluice._st_costs_estimate(costs jsonb, n bigint, OUT diff_ms double precision,
                                          OUT full_ms double precision, OUT base_ms double precision,
                                          OUT per_image_ms double precision)
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
WITH d AS (SELECT (e ->> 0)::float8 AS n, (e ->> 1)::float8 AS ms
             FROM jsonb_array_elements(coalesce(costs -> 'diff', '[]')) e),
     l AS (SELECT max(d.n) >= 2 * min(d.n) AND regr_slope(d.ms, d.n) > 0 AND regr_intercept(d.ms, d.n) >= 0 AS fit,
                  regr_slope(d.ms, d.n) AS slope, regr_intercept(d.ms, d.n) AS icpt,
                  sum(d.ms) / nullif(sum(d.n), 0) AS avg
             FROM d),
     f AS (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY (e #>> '{}')::float8) AS ms
             FROM jsonb_array_elements(coalesce(costs -> 'full', '[]')) e)
SELECT CASE WHEN l.fit THEN l.icpt + l.slope * n ELSE l.avg * n END,
       f.ms,
       CASE WHEN l.fit THEN l.icpt WHEN l.avg IS NOT NULL THEN 0 END,
       CASE WHEN l.fit THEN l.slope ELSE l.avg END
  FROM l, f
$fn$;

REVOKE ALL ON FUNCTION sluice._st_costs_estimate(jsonb, bigint) FROM PUBLIC;

-- sluice._st_costs_summary(costs) -> from how many change images a cycle
-- is refreshed in full, and the estimates behind it, for
-- explain_stream_table.
CREATE FUNCTION sluice._st_costs_summary(costs jsonb)
RETURNS text
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
SELECT CASE
           WHEN e.per_image_ms IS NULL OR e.full_ms IS NULL THEN
               'not measured yet: it needs a FULL refresh and a differential one of at least 1000 change images '
               || format('(measured: %s FULL, %s differential)',
                         jsonb_array_length(coalesce(costs -> 'full', '[]')),
                         jsonb_array_length(coalesce(costs -> 'diff', '[]')))
           ELSE format('windows of %s change images or more are refreshed in full (estimated: differential %s ms + %s ms per 1000 images, '
                       'from %s; FULL %s ms, the median of %s)',
                       greatest(1000, ceil((e.full_ms - e.base_ms) / e.per_image_ms)::bigint),
                       round(e.base_ms::numeric, 1), round(1000 * e.per_image_ms::numeric, 1),
                       CASE jsonb_array_length(costs -> 'diff') WHEN 1 THEN '1 refresh'
                            ELSE jsonb_array_length(costs -> 'diff') || ' refreshes' END,
                       round(e.full_ms::numeric, 1), jsonb_array_length(costs -> 'full'))
       END
  FROM sluice._st_costs_estimate(costs, 0) e
$fn$;

REVOKE ALL ON FUNCTION sluice._st_costs_summary(jsonb) FROM PUBLIC;

-- As in version 30, with the estimates that choose between a differential
-- and a FULL refresh, and why the last refresh was FULL.
CREATE OR REPLACE FUNCTION sluice.explain_stream_table(name text)
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
                              WHEN st.branches IS NOT NULL THEN
                                  'UNION ALL branch number, then the branch''s key: '
                                  || (SELECT string_agg(format('branch %s (%s)', b.n,
                                                               CASE WHEN jsonb_array_length(b.v -> 'keys') = 0 THEN 'single row'
                                                                    ELSE (SELECT string_agg(k, ', ')
                                                                            FROM jsonb_array_elements_text(b.v -> 'keys') k) END),
                                                        ', ' ORDER BY b.n)
                                        FROM jsonb_array_elements(st.branches) WITH ORDINALITY AS b(v, n))
                              WHEN cardinality(st.key_columns) = 0 THEN 'single row'
                              ELSE 'key (' || array_to_string(st.key_columns, ', ') || ')' END
                         || CASE WHEN st.identity_version < 2 THEN
                                     ', its values hashed as printed (made before version 30): give the stream table '
                                     'its query again (alter_stream_table) to hash equal values alike'
                                 ELSE '' END),
        ('refresh unit', CASE WHEN NOT current OR st.effective_mode IS DISTINCT FROM 'differential' THEN NULL
                              WHEN st.unit_columns IS NULL THEN 'row identity'
                              ELSE 'all rows with the same (' || array_to_string(st.unit_columns, ', ') || ')' END),
        ('sources', (SELECT string_agg(s.relname || CASE WHEN s.is_stream_table THEN ' (stream table)' ELSE '' END,
                                       ', ' ORDER BY s.relname)
                       FROM sluice.stream_table_sources s WHERE s.stream_table_id = st.id)),
        ('full refresh by cost', CASE WHEN NOT current OR st.effective_mode IS DISTINCT FROM 'differential' THEN NULL
                                      WHEN NOT st.full_refresh_by_cost THEN 'off (full_refresh_by_cost is false)'
                                      ELSE sluice._st_costs_summary(st.refresh_costs) END),
        ('last full reason', st.last_full_reason),
        ('operator tree', CASE WHEN current THEN st.operator_tree END),
        ('affected SQL', CASE WHEN NOT current THEN NULL
                              WHEN st.branch_analysis IS NOT NULL THEN
                                  (SELECT string_agg(format('-- branch %s%s%s', b.n, E'\n', b.v ->> 'affected'),
                                                     E';\n' ORDER BY b.n)
                                     FROM jsonb_array_elements(st.branch_analysis) WITH ORDINALITY AS b(v, n))
                              ELSE st.affected_sql END),
        ('recompute SQL', CASE WHEN NOT current THEN NULL
                               WHEN st.branch_analysis IS NOT NULL THEN
                                   (SELECT string_agg(format('-- branch %s%s%s', b.n, E'\n', b.v ->> 'recompute'),
                                                      E';\n' ORDER BY b.n)
                                      FROM jsonb_array_elements(st.branch_analysis) WITH ORDINALITY AS b(v, n))
                               ELSE st.recompute_sql END),
        ('status', st.status || coalesce(': ' || st.last_error, ''));
END
$fn$;

REVOKE ALL ON FUNCTION sluice.explain_stream_table(text) FROM PUBLIC;

-- As in version 14, with last_full_reason at the end.
CREATE OR REPLACE VIEW sluice.stream_tables AS
SELECT c.name,
       c.query_as_given AS query,
       c.requested_mode,
       coalesce(c.effective_mode, 'full') AS effective_mode,
       c.schedule,
       greatest(c.last_refresh_at, sluice._st_checked_at(c.id)) AS last_refresh_at,
       c.last_refresh_ms,
       c.last_refresh_mode,
       c.rows,
       now() - greatest(c.last_refresh_at, sluice._st_checked_at(c.id)) AS staleness,
       c.last_error,
       c.last_error_at,
       c.consecutive_failures,
       c.status,
       c.key_columns,
       pg_get_userbyid(c.owner) AS owner,
       c.last_full_reason
  FROM sluice.stream_table_catalog c;

-- sluice._refresh(id, force_full): migration 35's driver, which also
-- refreshes a cycle in full when that is estimated to be cheaper (step 3),
-- measures each refresh for those estimates (steps 5 and 8) and records
-- why a refresh was FULL (last_full_reason).
CREATE OR REPLACE FUNCTION sluice._refresh(id bigint, force_full boolean DEFAULT false)
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
    ntotal   bigint := 0;    -- change images in the window, all sources
    why_full text;           -- why this refresh is FULL (last_full_reason)
    by_cost  boolean := false;
    est      record;         -- sluice._st_costs_estimate for ntotal
    core_ms  double precision;
    diff_ok  boolean;
    mode     text;
    storage  text;
    old_rel  text;
    cols     text;
    ucols    text;
    nimg     bigint;
    uaff     text;
    rid      bigint;
    nrows    bigint;
    ins      bigint;
    del      bigint;
    br       record;
    sets     text;
    scols    text;
    rcols    text;
    old_wm   text := current_setting('work_mem');
    old_jit  text := current_setting('jit');
    old_par  text := current_setting('max_parallel_workers_per_gather');
    pkcols   text;
    joined   boolean;
    joins    boolean := false;
    sshape   text;
    stshape  text;
    old_n    text := '__sluice_old_' || id;
    new_n    text := '__sluice_new_' || id;
    new_rel  text;
    kept     text[] := '{}';
    keep_aff boolean;        -- the affected keys in kept tables (below)
    aff_n    text;           -- the table of the affected keys (in pg_temp)
    aff_rel  text;
    recompute text;          -- the recompute SQL over that table
    aff_tok  text := '';     -- the sources' columns, for sluice._st_affected
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
    -- The affected keys go into a table kept by the session for this
    -- stream table (version 35; sluice._st_affected), not one made and
    -- dropped at every refresh, unless the query itself has the text
    -- __sluice_aff: the recompute SQL is run with that table's name in
    -- place of pg_temp.__sluice_aff, and no text of the user's may be
    -- replaced.
    keep_aff := position('__sluice_aff' IN st.query) = 0;

    -- 2. One state of the sources. A stream table over several tables must
    -- hold exactly their state at the frontier it stores: a join's next
    -- refresh rebuilds that state from the change buffers (old rows of
    -- changed keys), and a row the table holds from a later state could be
    -- missed. Under REPEATABLE READ (the engine's refreshes) every statement
    -- below sees the snapshot taken here. Under READ COMMITTED each statement
    -- would see later commits, so writers of the sources are held off for
    -- the refresh (SHARE lock, until commit) and the snapshot is taken once
    -- none is in progress. The same holds for aggregates kept from the
    -- changes (version 20): the groups its statement recomputes from the
    -- table must not include a later change, which the next refresh would
    -- then add to them a second time. And for one table read twice, in a
    -- self-join or by a subquery in WHERE (version 24): its state before
    -- the window is rebuilt like a join's.
    IF current_setting('transaction_isolation') = 'read committed'
       AND ((SELECT count(*) FROM sluice.stream_table_sources s WHERE s.stream_table_id = st.id) > 1
            OR starts_with(st.recompute_sql, 'WITH "__sluice_dg"')
            OR concat(st.affected_sql, st.branch_analysis::text) ~ '__sluice_before_[0-9]') THEN
        FOR src IN
            SELECT s.relid FROM sluice.stream_table_sources s
              JOIN pg_class k ON k.oid = s.relid
             WHERE s.stream_table_id = st.id ORDER BY s.relid
        LOOP
            EXECUTE format('LOCK TABLE %s IN SHARE MODE', src.relid::regclass);
        END LOOP;
    END IF;

    -- 3. The window (frontier, cur] and whether anything is in it.
    snap := pg_current_snapshot();
    cur := sluice._snap_own(snap, true);
    next_fr := sluice._snap_own(snap, false);
    diff_ok := NOT force_full AND st.effective_mode = 'differential' AND st.analyzed_query = st.query
               AND st.key_columns IS NOT NULL AND st.requested_mode <> 'full';
    mode := CASE WHEN diff_ok THEN 'differential' ELSE 'full' END;
    why_full := CASE WHEN diff_ok THEN NULL
                     WHEN force_full THEN 'asked for by the caller (creation, a new query, a changed source column, or a query that reads the clock)'
                     WHEN st.analyzed_query IS DISTINCT FROM st.query OR st.effective_mode IS NULL THEN 'the query awaits the engine''s analysis'
                     ELSE coalesce(st.fallback_reason, 'the query is refreshed in full') END;
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
            -- Too many changes, or a TRUNCATE: FULL for this cycle.
            EXECUTE format('SELECT count(*), coalesce(bool_or(b.op = ''T''), false) FROM %s b WHERE %s',
                           src.buffer, win)
               INTO nchg, ntrunc USING st.frontier, cur;
            ntotal := ntotal + nchg;
            IF ntrunc THEN
                mode := 'full';
                why_full := format('%s was truncated', src.relid::regclass);
            ELSIF src.reltuples >= 0 AND nchg > st.full_refresh_fraction * greatest(src.reltuples, 1) THEN
                mode := 'full';
                why_full := format('%s changes to %s, over full_refresh_fraction (%s) of its estimated %s rows',
                                   nchg, src.relid::regclass, st.full_refresh_fraction, src.reltuples::bigint);
            END IF;
        END IF;
    END LOOP;
    -- Whichever is estimated to be cheaper for this many changes, from the
    -- last refreshes of this stream table (sluice._st_costs_estimate); a
    -- window of fewer than 1,000 images is always differential. After 7
    -- cycles in a row refreshed in full for this reason, the 8th is
    -- differential anyway, so that the estimate follows the data.
    IF mode = 'differential' AND st.full_refresh_by_cost AND ntotal >= 1000 THEN
        SELECT e.diff_ms, e.full_ms INTO est FROM sluice._st_costs_estimate(st.refresh_costs, ntotal) e;
        IF est.diff_ms > est.full_ms AND coalesce((st.refresh_costs ->> 'skipped')::int, 0) < 7 THEN
            mode := 'full';
            by_cost := true;
            why_full := format('%s changes: estimated %s ms differential, %s ms full (full_refresh_by_cost)',
                               ntotal, round(est.diff_ms::numeric), round(est.full_ms::numeric));
        END IF;
    END IF;
    IF NOT changed AND NOT force_full THEN
        UPDATE sluice.stream_table_catalog c
           SET frontier = next_fr, last_refresh_at = clock_timestamp()
         WHERE c.id = st.id;
        RETURN NULL;
    END IF;

    -- 4. Old and new rows. The statements below sort and hash sets of the
    -- size of the delta: at least 64 MB of work_mem (back to the caller's
    -- at the end).
    IF pg_size_bytes(old_wm) < 64 * 1024 * 1024 THEN
        PERFORM set_config('work_mem', '64MB', true);
    END IF;
    storage := st.relid::regclass::text;
    -- The stored columns, and the SET list of an update in step 6.
    SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
           string_agg(format('%I = __sluice_n.%I', a.attname, a.attname), ', ' ORDER BY a.attnum)
               FILTER (WHERE a.attname <> '__sluice_row_id')
      INTO cols, sets
      FROM pg_attribute a WHERE a.attrelid = st.relid AND a.attnum > 0 AND NOT a.attisdropped;
    -- The tables made for one refresh (a refresh earlier in this
    -- transaction leaves them until commit), and the delta's kept table.
    PERFORM sluice._st_drop_temps(ARRAY['__sluice_new', '__sluice_aff']);
    PERFORM sluice._st_scratch('__sluice_delta', 'row_id uuid, op text, before jsonb, after jsonb, tid tid', false);
    kept := kept || '__sluice_delta'::text;
    IF mode = 'full' THEN
        EXECUTE format('CREATE TEMP TABLE __sluice_new ON COMMIT DROP AS %s',
                       sluice._st_rows_sql(st.relid, st.query, st.key_columns, st.branches));
        old_rel := storage;
        new_rel := 'pg_temp.__sluice_new';
    ELSE
        FOR src IN
            SELECT s.relid, b.buffer FROM sluice.stream_table_sources s
              JOIN sluice.cdc_sources b ON b.relid = s.relid
             WHERE s.stream_table_id = st.id
        LOOP
            -- Read from the chunks (cdc/sql/0010_cdc_chunks.sql), a chunk's
            -- images in one call, with the view's seq (chunk * 1024 + position).
            -- (Source columns may be called like the chunk table's: r.x.)
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum),
                   string_agg('r.' || quote_ident(a.attname), ', ' ORDER BY a.attnum)
              INTO scols, rcols
              FROM pg_attribute a WHERE a.attrelid = src.relid AND a.attnum > 0 AND NOT a.attisdropped;
            sshape := sluice._st_shape(src.relid);
            aff_tok := aff_tok || src.relid || ' ' || sshape || chr(1);
            PERFORM sluice._st_scratch('__sluice_chg_' || src.relid, sshape || ', __sluice_op "char", __sluice_seq bigint', false);
            kept := kept || ('__sluice_chg_' || src.relid);
            EXECUTE format('INSERT INTO pg_temp.%I (%s, __sluice_op, __sluice_seq) SELECT %s, b.op, b.seq * 1024 + r.__sluice_pos - 1 FROM sluice_changes.%I b CROSS JOIN LATERAL json_populate_recordset(NULL::%s, array_to_json(b.imgs)) WITH ORDINALITY AS r(%s, __sluice_pos) WHERE b.op <> ''T'' AND %s',
                           '__sluice_chg_' || src.relid, scols, rcols, 'c_' || src.relid || '_chunks', src.relid::regclass,
                           scols,
                           replace(replace(win, '$1', quote_literal(st.frontier::text) || '::pg_snapshot'),
                                   '$2', quote_literal(cur::text) || '::pg_snapshot'));
            GET DIAGNOSTICS nimg = ROW_COUNT;
            -- The old images of the touched keys, when the analysis joins
            -- this table with others (analyze.c, out_old_state): for every
            -- key, its first image if its first change removed a row.
            joined := concat(st.affected_sql, st.branch_analysis::text) ~ ('__sluice_before_' || src.relid || '\D');
            -- Statistics for many changes; a few are cheaper than an
            -- ANALYZE (the generated SQL reads this table's keys through
            -- = ANY and NOT IN, where estimates matter little).
            IF nimg >= 1000 THEN
                EXECUTE format('ANALYZE pg_temp.%I', '__sluice_chg_' || src.relid);
            END IF;
            CONTINUE WHEN NOT joined;
            joins := true;
            SELECT string_agg(quote_ident(a.attname), ', ') INTO pkcols
              FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
             WHERE i.indrelid = src.relid AND i.indisprimary;
            IF pkcols IS NULL THEN
                RAISE EXCEPTION USING
                    ERRCODE = 'object_not_in_prerequisite_state',
                    MESSAGE = format('source %s of stream table %s has no primary key any more', src.relid::regclass, st.name),
                    HINT = format('Add it back, or re-validate the stream table with SELECT sluice.alter_stream_table(%L, query => ...).',
                                  st.name);
            END IF;
            PERFORM sluice._st_scratch('__sluice_before_' || src.relid, sshape, true);
            kept := kept || ('__sluice_before_' || src.relid);
            EXECUTE format('INSERT INTO pg_temp.%I (%s) SELECT %s FROM (SELECT DISTINCT ON (%s) * FROM pg_temp.%I ORDER BY %s, __sluice_seq) __sluice_f WHERE __sluice_op = ''D''',
                           '__sluice_before_' || src.relid, scols, scols, pkcols, '__sluice_chg_' || src.relid, pkcols);
            -- Always: the terms over the old state start from these rows (a
            -- temporary table without statistics is taken to have hundreds
            -- of rows, and the join from it would read a whole source).
            EXECUTE format('ANALYZE pg_temp.%I', '__sluice_before_' || src.relid);
        END LOOP;
        -- The generated statements are cheap but their estimates can be
        -- large; JIT compilation would cost more than running them, and
        -- parallel workers would start for nothing (see the file header).
        PERFORM set_config('jit', 'off', true), set_config('max_parallel_workers_per_gather', '0', true);
        -- The stored rows of the affected units (with their tuple ids) and
        -- their recomputed rows, typed like the stream table.
        stshape := sluice._st_shape(st.relid);
        PERFORM sluice._st_scratch(old_n, '__sluice_tid tid, ' || stshape, false),
                sluice._st_scratch(new_n, stshape, false);
        kept := kept || old_n || new_n;
        old_rel := format('pg_temp.%I', old_n);
        new_rel := format('pg_temp.%I', new_n);
        IF st.branch_analysis IS NOT NULL THEN
            -- A UNION ALL: each branch's affected rows, stored and
            -- recomputed, with the branch's own row ids, into one old and
            -- one new set (typed like the stream table: a branch's columns
            -- may have narrower types than the union's).
            FOR br IN
                SELECT a.v AS sql, ARRAY(SELECT jsonb_array_elements_text(st.branches -> (a.n::int - 1) -> 'keys')) AS keys,
                       a.n::int AS n
                  FROM jsonb_array_elements(st.branch_analysis) WITH ORDINALITY AS a(v, n)
                 ORDER BY a.n
            LOOP
                SELECT a.name, a.recompute_sql INTO aff_n, recompute
                  FROM sluice._st_affected(st.id || '_' || br.n, br.sql ->> 'affected', br.sql ->> 'recompute',
                                           aff_tok, joins, keep_aff) a;
                aff_rel := format('pg_temp.%I', aff_n);
                kept := kept || aff_n;
                EXECUTE format('INSERT INTO %s SELECT __sluice_s.ctid, __sluice_s.* FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id = ANY (ARRAY(SELECT %s FROM %s __sluice_a))',
                               old_rel, storage, sluice._st_branch_identity_sql(st.relid, br.keys, '__sluice_a', br.n), aff_rel);
                EXECUTE format('INSERT INTO %s SELECT %s, __sluice_r.* FROM (%s) __sluice_r',
                               new_rel, sluice._st_branch_identity_sql(st.relid, br.keys, '__sluice_r', br.n),
                               recompute);
            END LOOP;
        ELSE
            -- (Analysed for a join: its recompute_sql is driven from these
            -- keys too.)
            SELECT a.name, a.recompute_sql INTO aff_n, recompute
              FROM sluice._st_affected(st.id::text, st.affected_sql, st.recompute_sql, aff_tok, joins, keep_aff) a;
            aff_rel := format('pg_temp.%I', aff_n);
            kept := kept || aff_n;
            IF st.unit_columns IS NULL THEN
                -- Units are rows or groups: the stored rows of those identities.
                EXECUTE format('INSERT INTO %s SELECT __sluice_s.ctid, __sluice_s.* FROM %s __sluice_s WHERE __sluice_s.__sluice_row_id = ANY (ARRAY(SELECT %s FROM %s __sluice_a))',
                               old_rel, storage, sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_a'), aff_rel);
            ELSE
                -- Units are the first table's rows of a LEFT JOIN: every stored
                -- row of those (indexed by _set_analysis).
                SELECT string_agg(format('__sluice_s.%I', u), ', '), string_agg(format('%I', u), ', ')
                  INTO ucols, uaff
                  FROM unnest(st.unit_columns) u;
                EXECUTE format('INSERT INTO %s SELECT __sluice_s.ctid, __sluice_s.* FROM %s __sluice_s WHERE (%s) IN (SELECT %s FROM %s)',
                               old_rel, storage, ucols, uaff, aff_rel);
                -- Units with a NULL part (a window's partition by a column
                -- with NULLs, since migration 26), which IN does not find:
                -- the stored rows with a NULL part, compared whole.
                EXECUTE format('INSERT INTO %1$s SELECT __sluice_s.ctid, __sluice_s.* FROM %2$s __sluice_s '
                               'WHERE (%3$s) AND EXISTS (SELECT FROM %7$s __sluice_a WHERE (%4$s) IS NOT DISTINCT FROM (%5$s)) '
                               'AND (SELECT count(*) > 0 FROM %7$s WHERE %6$s)',
                               old_rel, storage,
                               (SELECT string_agg(format('__sluice_s.%I IS NULL', u), ' OR ') FROM unnest(st.unit_columns) u),
                               (SELECT 'ROW(' || string_agg(format('__sluice_a.%I', u), ', ') || ')' FROM unnest(st.unit_columns) u),
                               (SELECT 'ROW(' || string_agg(format('__sluice_s.%I', u), ', ') || ')' FROM unnest(st.unit_columns) u),
                               (SELECT string_agg(format('%I IS NULL', u), ' OR ') FROM unnest(st.unit_columns) u),
                               aff_rel);
            END IF;
            EXECUTE format('INSERT INTO %s (%s) SELECT %s AS __sluice_row_id, __sluice_r.* FROM (%s) __sluice_r',
                           new_rel, cols, sluice._st_identity_sql(st.relid, st.key_columns, '__sluice_r'),
                           recompute);
        END IF;
    END IF;

    -- 5. The delta, by identity. Rows whose columns are identical byte for
    -- byte are unchanged; the others get their images, built once (OFFSET
    -- 0 keeps the subquery, so its image expressions are not copied into
    -- the outer filter), and are compared as jsonb: column types without
    -- an equality operator (json, point, ...) work too. Images are built
    -- column by column (sluice._st_image_sql), never from a temporary
    -- table's whole row: see migration 9.
    EXECUTE format($q$
        INSERT INTO pg_temp.__sluice_delta (row_id, op, before, after, tid)
        SELECT __sluice_x.row_id, __sluice_x.op, __sluice_x.before, __sluice_x.after, __sluice_x.tid
          FROM (SELECT coalesce(__sluice_n.__sluice_row_id, __sluice_o.__sluice_row_id) AS row_id,
                       __sluice_o.%s AS tid,
                       CASE WHEN __sluice_o.__sluice_row_id IS NULL THEN 'insert'
                            WHEN __sluice_n.__sluice_row_id IS NULL THEN 'delete'
                            ELSE 'update' END AS op,
                       CASE WHEN __sluice_o.__sluice_row_id IS NOT NULL THEN %s END AS before,
                       CASE WHEN __sluice_n.__sluice_row_id IS NOT NULL THEN %s END AS after
                  FROM %s __sluice_o
                  FULL JOIN %s __sluice_n ON __sluice_n.__sluice_row_id = __sluice_o.__sluice_row_id
                 WHERE __sluice_o.__sluice_row_id IS NULL OR __sluice_n.__sluice_row_id IS NULL
                    OR NOT (%s)
                OFFSET 0) __sluice_x
         WHERE __sluice_x.op <> 'update' OR __sluice_x.before IS DISTINCT FROM __sluice_x.after$q$,
        CASE WHEN mode = 'full' THEN 'ctid' ELSE '__sluice_tid' END,
        sluice._st_image_sql(st.relid, '__sluice_o'), sluice._st_image_sql(st.relid, '__sluice_n'), old_rel, new_rel,
        sluice._st_same_sql(st.relid, '__sluice_o', '__sluice_n'));

    -- What the estimates compare: the time up to here. What follows
    -- (applying the delta, publishing it) costs the same in either mode.
    core_ms := 1000 * extract(epoch FROM clock_timestamp() - started);

    -- 6. Apply it: deleted rows, updated rows in place, new rows. Stored
    -- rows are found by the tuple ids read in step 4 (this transaction
    -- holds the stream table's catalog row, so no other refresh moved
    -- them): a TID scan, not a second index lookup.
    -- "= ANY (ARRAY(...))": whatever the planner would guess of a join
    -- with the temp table.
    EXECUTE format('DELETE FROM %s __sluice_s WHERE __sluice_s.ctid = ANY (ARRAY(SELECT __sluice_d.tid FROM pg_temp.__sluice_delta __sluice_d WHERE __sluice_d.op = ''delete''))',
                   storage);
    GET DIAGNOSTICS del = ROW_COUNT;
    IF sets IS NOT NULL THEN
        EXECUTE format('UPDATE %s __sluice_s SET %s FROM %s __sluice_n WHERE __sluice_s.ctid = ANY (ARRAY(SELECT __sluice_d.tid FROM pg_temp.__sluice_delta __sluice_d WHERE __sluice_d.op = ''update'')) AND __sluice_n.__sluice_row_id = __sluice_s.__sluice_row_id',
                       storage, sets, new_rel);
    END IF;
    EXECUTE format('INSERT INTO %s (%s) SELECT %s FROM %s __sluice_n WHERE __sluice_n.__sluice_row_id IN (SELECT __sluice_d.row_id FROM pg_temp.__sluice_delta __sluice_d WHERE __sluice_d.op = ''insert'')',
                   storage, cols, cols, new_rel);
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
           last_refresh_mode = mode, rows = nrows, consecutive_failures = 0,
           last_full_reason = why_full,
           refresh_costs = sluice._st_costs_add(c.refresh_costs, mode, ntotal, core_ms, by_cost)
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
    PERFORM sluice._st_drop_temps(ARRAY['__sluice_new', '__sluice_aff']);
    PERFORM sluice._st_scratch_release(kept);
    PERFORM set_config('work_mem', old_wm, true), set_config('jit', old_jit, true),
            set_config('max_parallel_workers_per_gather', old_par, true);
    RETURN rid;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._refresh(bigint, boolean) FROM PUBLIC;
