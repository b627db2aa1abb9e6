-- sluice change capture, version 8: a captured write wakes the engine.
--
-- Version 4 (0004_cdc.sql) copies every captured change into the source's
-- buffer; the refresh engine (`sluice engine`, refresh/engine.c) then had to
-- poll the buffers to notice them. From this version on, the generated
-- trigger functions also ring the engine's doorbell: pg_notify on channel
-- sluice_changes, payload '' (PostgreSQL folds identical notifications of
-- one transaction into one and delivers it only at commit, so a rolled-back
-- write wakes nobody). See docs/cdc.md, "Waking the engine".
--
-- The doorbell, as for the outbox (outbox/sql/0001_outbox.sql). A
-- transaction that notified takes a cluster-wide lock at commit and keeps it
-- until its commit record is flushed, so notifying writers commit one at a
-- time: always notifying would cost every writer (scripts/bench step 8
-- measures it, docs/benchmarks.md). So a trigger rings only when it helps:
-- when an engine is idle and waiting for changes. Such an engine holds
-- advisory lock 8317153872143777792 (x'736c77616b650000', "slwake") in
-- shared mode; failing to take it exclusively means someone is waiting.
-- Writes while the engine is busy cost only that try-lock and unlock; the
-- engine disarms (releases the lock) when a ring wakes it and arms again,
-- followed by one more pass over every stream table, once it is idle.
--
-- Fixed on the way: version 4 wrote images as to_jsonb(n) over the
-- transition table aliased n (o for old rows), which PostgreSQL reads as
-- the column when the source has a column named n (or o), so such tables
-- got that column's value as their image. The images are now to_jsonb(n.*)
-- (the whole row, whatever the columns are called).
--
-- A statement that changed no row (an UPDATE or DELETE matching nothing)
-- does not ring.
--
-- The generator of the four trigger functions is now sluice._cdc_functions
-- (used by cdc_attach, which is otherwise unchanged), and the functions of
-- every source attached before this version are regenerated below, so a
-- database upgraded from version 7 rings too.

-- sluice._cdc_functions(src, buf)
--
-- Internal: creates (or replaces) the trigger functions
-- sluice_changes.capture_<src>_{ins,upd,del,trunc} writing into buffer
-- sluice_changes.<buf>. Static SQL, so each session plans the copy once per
-- trigger relation. Images are to_jsonb of the transition table row.
-- CREATE OR REPLACE keeps the functions' owner and privileges.
CREATE FUNCTION sluice._cdc_functions(src oid, buf text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    ev   text;
    -- Rings the doorbell (see the file header) when the statement changed
    -- rows (the row count of the last INSERT into the buffer).
    ring constant text := $ring$
                GET DIAGNOSTICS __sluice_rows = ROW_COUNT;
                IF __sluice_rows > 0 THEN
                    IF pg_try_advisory_lock(8317153872143777792) THEN
                        PERFORM pg_advisory_unlock(8317153872143777792);
                    ELSE
                        PERFORM pg_notify('sluice_changes', '');
                    END IF;
                END IF;$ring$;
BEGIN
    FOREACH ev IN ARRAY ARRAY['ins', 'upd', 'del', 'trunc'] LOOP
        EXECUTE format($ddl$
            CREATE OR REPLACE FUNCTION sluice_changes.%1$I() RETURNS trigger
            LANGUAGE plpgsql
            SECURITY DEFINER
            SET search_path = pg_catalog, pg_temp
            AS $body$
            DECLARE
                __sluice_rows bigint;
            BEGIN
                %2$s
                %3$s
                RETURN NULL;
            END
            $body$$ddl$,
            format('capture_%s_%s', src, ev),
            CASE ev
                WHEN 'ins' THEN format('INSERT INTO sluice_changes.%I (op, img) SELECT ''I'', to_jsonb(n.*) FROM __sluice_new n;', buf)
                WHEN 'upd' THEN format('INSERT INTO sluice_changes.%1$I (op, img) SELECT ''D'', to_jsonb(o.*) FROM __sluice_old o;
                INSERT INTO sluice_changes.%1$I (op, img) SELECT ''I'', to_jsonb(n.*) FROM __sluice_new n;', buf)
                WHEN 'del' THEN format('INSERT INTO sluice_changes.%I (op, img) SELECT ''D'', to_jsonb(o.*) FROM __sluice_old o;', buf)
                ELSE format('INSERT INTO sluice_changes.%I (op, img) VALUES (''T'', NULL);', buf)
            END,
            ring);
        EXECUTE format('REVOKE ALL ON FUNCTION sluice_changes.%I() FROM PUBLIC',
                       format('capture_%s_%s', src, ev));
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._cdc_functions(oid, text) FROM PUBLIC;

-- sluice.cdc_attach(rel) -> the change buffer
--
-- As in version 4 (0004_cdc.sql, which documents it), except that the
-- trigger functions come from sluice._cdc_functions and so ring the engine's
-- doorbell.
CREATE OR REPLACE FUNCTION sluice.cdc_attach(rel regclass)
RETURNS regclass
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn     constant text := 'sluice.cdc_attach';
    c      pg_class;
    nsp    text;
    parent regclass;
    buf    text;
    buf_rc regclass;
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('%s: the table is NULL', fn),
            HINT = 'Pass a table name, e.g. sluice.cdc_attach(''public.orders'').';
    END IF;
    SELECT * INTO c FROM pg_class WHERE oid = rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_table',
            MESSAGE = format('%s: relation with oid %s does not exist', fn, rel::oid),
            HINT = 'Pass the name of an existing table.';
    END IF;
    nsp := (SELECT nspname FROM pg_namespace WHERE oid = c.relnamespace);

    IF c.relkind IN ('v', 'm') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('%s: %s is a %s, not a table', fn, rel,
                             CASE c.relkind WHEN 'v' THEN 'view' ELSE 'materialized view' END),
            DETAIL = 'Change capture uses triggers on the table that is written; a view has no changes of its own.',
            HINT = 'Capture the tables the view reads instead (a stream table over the view''s query does that).';
    ELSIF c.relkind = 'f' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('%s: %s is a foreign table', fn, rel),
            DETAIL = 'Its rows change in another server, where no trigger of this database sees them.',
            HINT = 'Capture the table on the server that owns it, or copy it into a local table.';
    ELSIF c.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('%s: %s is not a table (relkind %L)', fn, rel, c.relkind),
            HINT = 'Only plain and partitioned tables can be captured.';
    END IF;
    IF c.relispartition THEN
        parent := pg_partition_root(rel);
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('%s: %s is a partition of %s', fn, rel, parent),
            DETAIL = 'Capture is attached to the partitioned table and covers all its partitions.',
            HINT = format('Call sluice.cdc_attach(%L) instead.', parent::text);
    END IF;
    IF c.relpersistence = 't' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('%s: %s is a temporary table', fn, rel),
            DETAIL = 'Other sessions (the refresh engine) cannot read a temporary table, nor its changes.',
            HINT = 'Use a permanent (or unlogged) table.';
    END IF;
    IF nsp IN ('sluice', 'sluice_changes') THEN
        RAISE EXCEPTION USING
            ERRCODE = 'wrong_object_type',
            MESSAGE = format('%s: %s belongs to sluice', fn, rel),
            HINT = 'sluice''s own tables (outbox, buffers, catalogs) cannot be captured.';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = rel) AND c.relkind = 'r' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'feature_not_supported',
            MESSAGE = format('%s: %s has inheritance children', fn, rel),
            DETAIL = 'Statements on the parent also change its children, which capture would not see separately.',
            HINT = 'Use declarative partitioning, or capture a table without children.';
    END IF;

    -- Two concurrent attaches of one table: the second waits here, then
    -- finds the catalog row.
    PERFORM pg_advisory_xact_lock(hashtextextended('sluice.cdc_attach ' || rel::oid, 0));

    buf := 'c_' || rel::oid;
    SELECT s.buffer INTO buf_rc FROM sluice.cdc_sources s WHERE s.relid = rel;
    IF FOUND THEN
        PERFORM sluice._cdc_install_triggers(rel);
        RETURN buf_rc;
    END IF;
    IF to_regclass(format('sluice_changes.%I', buf)) IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_table',
            MESSAGE = format('%s: sluice_changes.%I exists but %s is not in sluice.cdc_sources', fn, buf, rel),
            HINT = format('A failed detach left it behind; drop it with DROP TABLE sluice_changes.%I, then attach again.', buf);
    END IF;

    EXECUTE format($ddl$
        CREATE TABLE sluice_changes.%1$I (
            seq  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            op   "char" NOT NULL CHECK (op IN ('I', 'D', 'T')),
            img  jsonb
        )$ddl$, buf);
    -- The window predicate's range scan, and cdc_prune's.
    EXECUTE format('CREATE INDEX %I ON sluice_changes.%I (txid)', buf || '_txid_idx', buf);
    EXECUTE format('COMMENT ON TABLE sluice_changes.%I IS %L', buf,
                   format('Changes of %s captured by sluice (see sluice.cdc_sources, docs/cdc.md)', rel));
    buf_rc := format('sluice_changes.%I', buf)::regclass;

    PERFORM sluice._cdc_functions(rel::oid, buf);

    INSERT INTO sluice.cdc_sources (relid, relname, buffer) VALUES (rel, rel::text, buf_rc);
    PERFORM sluice._cdc_install_triggers(rel);
    RETURN buf_rc;
END
$fn$;

-- Sources attached before this version: same functions, now ringing. A
-- source whose table was dropped keeps its functions until cdc_detach; they
-- are regenerated too (harmless, and detach drops them by name).
SELECT sluice._cdc_functions(s.relid, k.relname)
  FROM sluice.cdc_sources s JOIN pg_class k ON k.oid = s.buffer
 ORDER BY s.relid;
