-- sluice change capture, version 4.
--
-- Stream tables refresh from what changed in the tables they read. This file
-- records those changes: sluice.cdc_attach(source) installs triggers that
-- copy every row a statement adds to or removes from the source into the
-- source's change buffer, in the writer's own transaction, and the refresh
-- driver (refresh/sql/0005_stream_tables.sql) reads the buffer by
-- transaction visibility. See docs/cdc.md.
--
-- Buffer format. One table per source, sluice_changes.c_<source oid>:
--
--   seq   bigint  identity, primary key: the order rows were captured in
--   txid  xid8    the writing transaction (pg_current_xact_id()), indexed
--   op    "char"  'I' a row image added to the source (INSERT, and the new
--                 side of an UPDATE), 'D' a row image removed (DELETE, and
--                 the old side of an UPDATE), 'T' a TRUNCATE (img NULL)
--   img   jsonb   the whole row, to_jsonb(row): {"column": value, ...}
--
-- An UPDATE writes all its 'D' rows, then all its 'I' rows, so in seq order
-- a statement's old images come before its new ones. A primary-key change is
-- nothing special: the old key leaves in a 'D' image and the new key arrives
-- in an 'I' image. Consumers rebuild typed rows with
-- jsonb_populate_record(NULL::<source>, img).
--
-- The window predicate. The refresh side remembers a snapshot (its frontier,
-- from pg_current_snapshot()) and reads the changes committed after it. The
-- buffer rows "in window (prev, cur]" are
--
--   txid >= pg_snapshot_xmin(prev)              -- index range: older ones
--                                               -- are visible in prev
--   AND NOT pg_visible_in_snapshot(txid, prev)  -- not yet seen at prev
--   AND pg_visible_in_snapshot(txid, cur)       -- committed by cur
--
-- Like the relay's outbox reading (docs/concepts.md, "No skipped rows"), this
-- never loses a transaction that was in progress at prev and commits later:
-- it is in prev's xip list, so it falls in the next window that sees it.
-- A transaction still running at cur is left for a later window.
-- sluice.cdc_prune(source, snap) deletes the rows visible in snap once every
-- consumer's frontier has passed them.
--
-- Why statement-level triggers with transition tables: one trigger call per
-- statement, whatever the number of rows, and the copy into the buffer is a
-- single INSERT ... SELECT from the transition table, so bulk writes pay per
-- row only for building the image and the buffer insert. For single-row
-- statements the cost against row-level triggers was measured (scripts/bench
-- step 8, docs/cdc.md).
--
-- Why jsonb images rather than typed columns: the buffer has the same four
-- columns whatever the source looks like, so ALTER TABLE on a captured source
-- (ADD, DROP, ALTER TYPE of a column) never breaks its writers and never
-- needs the buffer altered: rows captured before carry the old columns,
-- later ones the new, and jsonb_populate_record() fills what is missing with
-- NULL and ignores what is gone.
--
-- Security. The generated trigger functions are SECURITY DEFINER (owned, like
-- the buffers, by the role that ran `sluice init`) with a pinned search_path:
-- a writer needs only its usual privileges on the source, none on
-- sluice_changes, and cannot redirect the capture through its search_path.
--
-- DDL on a source:
--   * ALTER TABLE: nothing to do (jsonb images, above).
--   * RENAME (table or schema): buffers are named by oid; capture continues.
--     sluice.cdc_sources.relname keeps the name printed at attach time.
--   * DROP TABLE: PostgreSQL drops the triggers with the table; the buffer,
--     the trigger functions and the catalog row stay until cdc_detach(oid)
--     (the refresh side notices the missing relation and detaches).
--   * Partitioned tables: capture is attached to the partitioned table and
--     to every partition in its tree at attach time (a statement fires only
--     the statement triggers of the table it names, so a write addressed to a
--     partition is captured by the partition's triggers, a write through the
--     parent by the parent's; never both). All of them write to the parent's
--     buffer; images are keyed by column name, so partitions whose column
--     order differs are fine. A partition created or attached LATER is not
--     captured until cdc_attach(parent) is called again (it is idempotent and
--     adds the missing triggers). TRUNCATE of a partitioned table writes
--     one 'T' row per truncated member of the tree (each fires its own
--     TRUNCATE trigger).
-- No event trigger watches any of this.

CREATE SCHEMA sluice_changes;
REVOKE ALL ON SCHEMA sluice_changes FROM PUBLIC;
COMMENT ON SCHEMA sluice_changes IS
    'Change buffers of captured tables (sluice.cdc_attach), one table c_<source oid> each';

CREATE TABLE sluice.cdc_sources (
    relid       oid PRIMARY KEY,
    relname     text NOT NULL,
    buffer      regclass NOT NULL,
    attached_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE sluice.cdc_sources IS
    'Tables whose changes are captured into a buffer in schema sluice_changes (sluice.cdc_attach)';

-- sluice._cdc_install_triggers(relid)
--
-- Internal: creates the four capture triggers on relid and on every member of
-- its partition tree that does not have them yet. The generated functions
-- capture_<relid>_{ins,upd,del,trunc} must exist. Returns how many triggers
-- were created.
CREATE FUNCTION sluice._cdc_install_triggers(src oid)
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    -- event, trigger name suffix, REFERENCING clause
    kinds   constant text[][] := ARRAY[
        ['INSERT',   'ins',   'REFERENCING NEW TABLE AS __sluice_new'],
        ['UPDATE',   'upd',   'REFERENCING OLD TABLE AS __sluice_old NEW TABLE AS __sluice_new'],
        ['DELETE',   'del',   'REFERENCING OLD TABLE AS __sluice_old'],
        ['TRUNCATE', 'trunc', '']];
    member  regclass;
    created int := 0;
BEGIN
    FOR member IN
        SELECT src::regclass
        UNION ALL
        SELECT t.relid FROM pg_partition_tree(src::regclass) t WHERE t.relid <> src::regclass
    LOOP
        FOR i IN 1 .. array_length(kinds, 1) LOOP
            CONTINUE WHEN EXISTS (SELECT 1 FROM pg_trigger g
                                   WHERE g.tgrelid = member
                                     AND g.tgname = 'sluice_capture_' || kinds[i][2]);
            EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s %s FOR EACH STATEMENT EXECUTE FUNCTION sluice_changes.%I()',
                           'sluice_capture_' || kinds[i][2], kinds[i][1], member::text,
                           kinds[i][3], format('capture_%s_%s', src, kinds[i][2]));
            created := created + 1;
        END LOOP;
    END LOOP;
    RETURN created;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._cdc_install_triggers(oid) FROM PUBLIC;

-- sluice.cdc_attach(rel) -> the change buffer
--
-- Starts capturing the changes of table `rel` (plain or partitioned) into
-- sluice_changes.c_<oid>: creates the buffer, the four trigger functions,
-- the triggers and the catalog row, in the caller's transaction. Idempotent:
-- on an attached table it only adds triggers that are missing (partitions
-- created since) and returns the existing buffer.
--
-- Creating a trigger takes a SHARE ROW EXCLUSIVE lock on the table, held to
-- the end of the caller's transaction: it waits for writers in progress and
-- holds new ones back. So once it returns, every change committed before is
-- visible to a snapshot taken now, and every later change is captured: the
-- refresh side takes its first frontier after attaching.
CREATE FUNCTION sluice.cdc_attach(rel regclass)
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
    ev     text;
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

    -- The trigger functions: static SQL, so each session plans the copy once
    -- per trigger relation. Images are to_jsonb of the transition table row.
    FOREACH ev IN ARRAY ARRAY['ins', 'upd', 'del', 'trunc'] LOOP
        EXECUTE format($ddl$
            CREATE FUNCTION sluice_changes.%1$I() RETURNS trigger
            LANGUAGE plpgsql
            SECURITY DEFINER
            SET search_path = pg_catalog, pg_temp
            AS $body$
            BEGIN
                %3$s
                RETURN NULL;
            END
            $body$$ddl$,
            format('capture_%s_%s', rel::oid, ev), buf,
            CASE ev
                WHEN 'ins' THEN format('INSERT INTO sluice_changes.%I (op, img) SELECT ''I'', to_jsonb(n) FROM __sluice_new n;', buf)
                WHEN 'upd' THEN format('INSERT INTO sluice_changes.%1$I (op, img) SELECT ''D'', to_jsonb(o) FROM __sluice_old o;
                INSERT INTO sluice_changes.%1$I (op, img) SELECT ''I'', to_jsonb(n) FROM __sluice_new n;', buf)
                WHEN 'del' THEN format('INSERT INTO sluice_changes.%I (op, img) SELECT ''D'', to_jsonb(o) FROM __sluice_old o;', buf)
                ELSE format('INSERT INTO sluice_changes.%I (op, img) VALUES (''T'', NULL);', buf)
            END);
        EXECUTE format('REVOKE ALL ON FUNCTION sluice_changes.%I() FROM PUBLIC',
                       format('capture_%s_%s', rel::oid, ev));
    END LOOP;

    INSERT INTO sluice.cdc_sources (relid, relname, buffer) VALUES (rel, rel::text, buf_rc);
    PERFORM sluice._cdc_install_triggers(rel);
    RETURN buf_rc;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.cdc_attach(regclass) FROM PUBLIC;
COMMENT ON FUNCTION sluice.cdc_attach(regclass) IS
    'Capture the changes of a table into its buffer sluice_changes.c_<oid> (idempotent); returns the buffer';

-- sluice.cdc_detach(rel)
--
-- Stops capturing `rel` and throws its changes away: drops the triggers (on
-- the table and its partitions), the trigger functions, the buffer and the
-- catalog row. Works on a dropped source too, given its oid
-- (sluice.cdc_detach(16384)): then only the leftovers are dropped. A table
-- that is not attached is left alone (no error), so a retried detach is
-- harmless. Counting who still needs a source is the caller's job.
CREATE FUNCTION sluice.cdc_detach(rel regclass)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tg record;
    ev text;
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = 'sluice.cdc_detach: the table is NULL',
            HINT = 'Pass the captured table, or its oid when it was dropped (see sluice.cdc_sources).';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('sluice.cdc_attach ' || rel::oid, 0));
    -- Triggers calling our functions, wherever they are (the table and its
    -- partitions, including partitions detached since).
    FOR tg IN
        SELECT g.tgname, g.tgrelid::regclass AS relname
          FROM pg_trigger g JOIN pg_proc p ON p.oid = g.tgfoid
         WHERE p.pronamespace = 'sluice_changes'::regnamespace
           AND p.proname IN (format('capture_%s_ins', rel::oid), format('capture_%s_upd', rel::oid),
                             format('capture_%s_del', rel::oid), format('capture_%s_trunc', rel::oid))
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', tg.tgname, tg.relname);
    END LOOP;
    FOREACH ev IN ARRAY ARRAY['ins', 'upd', 'del', 'trunc'] LOOP
        EXECUTE format('DROP FUNCTION IF EXISTS sluice_changes.%I()', format('capture_%s_%s', rel::oid, ev));
    END LOOP;
    EXECUTE format('DROP TABLE IF EXISTS sluice_changes.%I', 'c_' || rel::oid);
    DELETE FROM sluice.cdc_sources s WHERE s.relid = rel;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.cdc_detach(regclass) FROM PUBLIC;
COMMENT ON FUNCTION sluice.cdc_detach(regclass) IS
    'Stop capturing a table: drop its triggers, trigger functions, buffer and catalog row';

-- sluice.cdc_prune(rel, keep_before) -> rows deleted
--
-- Deletes the buffer rows of `rel` whose transaction is visible in snapshot
-- keep_before: the changes every consumer has read when keep_before is the
-- oldest consumer frontier. Rows of transactions still in progress at
-- keep_before, or begun after it, stay. Fails when `rel` is not attached.
CREATE FUNCTION sluice.cdc_prune(rel regclass, keep_before pg_snapshot)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    buf regclass;
    n   bigint;
BEGIN
    IF keep_before IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('sluice.cdc_prune: keep_before is NULL (table %s)', rel),
            HINT = 'Pass the oldest frontier (a pg_snapshot) of the consumers of this table.';
    END IF;
    SELECT s.buffer INTO buf FROM sluice.cdc_sources s WHERE s.relid = rel;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('sluice.cdc_prune: %s is not captured', coalesce(rel::text, 'NULL')),
            HINT = 'Captured tables are listed in sluice.cdc_sources; attach one with sluice.cdc_attach().';
    END IF;
    -- txid < xmax is implied by visibility; it gives the txid index a range.
    EXECUTE format('DELETE FROM %s WHERE txid < $1 AND pg_visible_in_snapshot(txid, $2)', buf)
      USING pg_snapshot_xmax(keep_before), keep_before;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.cdc_prune(regclass, pg_snapshot) FROM PUBLIC;
COMMENT ON FUNCTION sluice.cdc_prune(regclass, pg_snapshot) IS
    'Delete the buffered changes of a table that are visible in the given snapshot; returns how many';
