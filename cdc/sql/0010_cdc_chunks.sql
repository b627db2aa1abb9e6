-- sluice change capture, version 10: images are stored in chunks.
--
-- Up to version 8 every captured row image was one row of the buffer table
-- sluice_changes.c_<oid>, with two btree entries (seq, txid) and a
-- to_jsonb() image. Writing such a row costs about what writing the source
-- row costs, so a bulk INSERT into a captured table ran at about a third of
-- the uncaptured speed (scripts/bench step 8: 0.32x; docs/benchmarks.md).
-- Measured on 200,000-row INSERT ... SELECT statements (docs/cdc.md, "Bulk
-- writes since migration 10"), the capture's time went to its two indexes
-- (about 40 %, each about 1.5 us a row), to_jsonb and the larger row it
-- makes (about 35 %) and the buffer's heap rows, identity and WAL (the
-- rest; an UNLOGGED buffer saved under 10 %); the transition table and the
-- doorbell cost a few percent. No row-per-image layout reached 0.6x: without
-- any index and without images it was still 0.42x.
--
-- From this version on, a statement's images are written in chunks: one row
-- of the chunk table sluice_changes.c_<oid>_chunks holds up to 1,000 images
-- of one statement and one op, as a json[] (compressed with lz4 where the
-- server has it). The heap row, the index entries and the tuple header are
-- paid once per chunk, the images compress against each other (their keys
-- repeat), and an image is row_to_json(row), about half the cost of
-- to_jsonb(row). Readers get jsonb as before: the view below casts.
--
-- What readers see does not change. sluice_changes.c_<oid>, the buffer named
-- in sluice.cdc_sources.buffer, is now a view that unnests the chunks into
-- the rows of version 4 (0004_cdc.sql documents them):
--
--   seq   bigint  chunk seq * 1024 + the image's position in the chunk
--                 (0..999): unique and increasing in capture order, no longer
--                 consecutive
--   txid  xid8    the writing transaction
--   op    "char"  'I', 'D' or 'T'
--   img   jsonb   the row image, row_to_json(row)::jsonb, which is
--                 to_jsonb(row) (same keys, same values); NULL for 'T'
--
-- so the window predicate, jsonb_populate_record(NULL::<source>, b.img) and
-- ORDER BY seq work on it unchanged, and the window predicate's conditions
-- on txid reach the chunk table's txid index through the view (PostgreSQL
-- flattens it). A query that does not read img (EXISTS, count(*)) parses no
-- image. The view is read-only: rows leave the buffer only through
-- sluice.cdc_prune (or cdc_detach), which now delete chunks.
--
-- The chunk table, sluice_changes.c_<oid>_chunks:
--
--   seq   bigint  identity, primary key: the order chunks were written in
--   txid  xid8    the writing transaction, indexed
--   op    "char"  'I', 'D' or 'T' (every image of a chunk has this op)
--   n     int     how many images (view rows) the chunk holds, 1..1000
--   imgs  json[]  the images in capture order; '{NULL}' for a 'T' chunk
--
-- Chunk bounds. Each image weighs 16,384 plus its size in bytes, and a
-- chunk is written once its weight reaches 16,384,000: so at most 1,000
-- images (seq * 1024 + position never collides) and about 16 MB of images.
-- A writer holds at most one chunk in memory, and a json[] stays far below
-- PostgreSQL's 1 GB limit for one value even when single images are large.
-- (One weight instead of a count and a size: one PL/pgSQL statement less
-- per row, measurable on bulk writes.)
--
-- A chunk never mixes statements, ops or transactions, so what held for rows
-- holds for chunks: an UPDATE writes its 'D' chunks, then its 'I' chunks; a
-- chunk is visible exactly when its transaction is; cdc_prune deletes whole
-- chunks by txid and returns the number of images deleted (the sum of n).
--
-- Kept from earlier versions: statement-level triggers with transition
-- tables, SECURITY DEFINER functions with a pinned search_path, the doorbell
-- of 0008_cdc_wake.sql (a statement that captured nothing does not ring),
-- whole-row images (row_to_json(r.*), whatever the columns are called).
--
-- Existing sources are converted below: each buffer table becomes its chunk
-- table (one image per chunk; rows and their order kept, seq s becoming
-- view seq s * 1024), the view takes its name, sluice.cdc_sources.buffer
-- points to the view, and the trigger functions are regenerated.

-- sluice._cdc_functions(src, buf)
--
-- Internal: creates (or replaces) the trigger functions
-- sluice_changes.capture_<src>_{ins,upd,del,trunc}, which write chunks into
-- the chunk table sluice_changes.<buf> (from this version on, buf names the
-- chunk table c_<src>_chunks, not the view). Static SQL, so each session
-- plans its statements once per trigger relation. CREATE OR REPLACE keeps
-- the functions' owner and privileges.
CREATE OR REPLACE FUNCTION sluice._cdc_functions(src oid, buf text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    ev   text;
    -- Copies the images of transition table %1$s (alias r) as op %2$L into
    -- chunks of buffer %3$I: accumulated in an array (appended in place,
    -- PL/pgSQL expands it), written at 1,000 images or 16 MB.
    copy constant text := $copy$
                FOR __sluice_img IN SELECT row_to_json(r.*) FROM %1$s r LOOP
                    __sluice_imgs := __sluice_imgs || __sluice_img;
                    __sluice_weight := __sluice_weight + 16384 + pg_column_size(__sluice_img);
                    IF __sluice_weight >= 16384000 THEN
                        __sluice_n := cardinality(__sluice_imgs);
                        INSERT INTO sluice_changes.%3$I (op, n, imgs) VALUES (%2$L, __sluice_n, __sluice_imgs);
                        __sluice_total := __sluice_total + __sluice_n;
                        __sluice_imgs := '{}';
                        __sluice_weight := 0;
                    END IF;
                END LOOP;
                IF __sluice_weight > 0 THEN
                    __sluice_n := cardinality(__sluice_imgs);
                    INSERT INTO sluice_changes.%3$I (op, n, imgs) VALUES (%2$L, __sluice_n, __sluice_imgs);
                    __sluice_total := __sluice_total + __sluice_n;
                    __sluice_imgs := '{}';
                    __sluice_weight := 0;
                END IF;$copy$;
    -- Rings the doorbell (0008_cdc_wake.sql) when the statement captured
    -- images.
    ring constant text := $ring$
                IF __sluice_total > 0 THEN
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
                __sluice_img    json;
                __sluice_imgs   json[] := '{}';
                __sluice_weight bigint := 0;
                __sluice_n      int;
                __sluice_total  bigint := 0;
            BEGIN
                %2$s
                %3$s
                RETURN NULL;
            END
            $body$$ddl$,
            format('capture_%s_%s', src, ev),
            CASE ev
                WHEN 'ins' THEN format(copy, '__sluice_new', 'I', buf)
                WHEN 'upd' THEN format(copy, '__sluice_old', 'D', buf) || format(copy, '__sluice_new', 'I', buf)
                WHEN 'del' THEN format(copy, '__sluice_old', 'D', buf)
                ELSE format($t$INSERT INTO sluice_changes.%I (op, n, imgs) VALUES ('T', 1, '{NULL}');
                __sluice_total := 1;$t$, buf)
            END,
            ring);
        EXECUTE format('REVOKE ALL ON FUNCTION sluice_changes.%I() FROM PUBLIC',
                       format('capture_%s_%s', src, ev));
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._cdc_functions(oid, text) FROM PUBLIC;

-- sluice._cdc_buffer_view(src)
--
-- Internal: creates the view sluice_changes.c_<src> over the chunk table
-- sluice_changes.c_<src>_chunks (see the file header) and returns it.
CREATE FUNCTION sluice._cdc_buffer_view(src oid)
RETURNS regclass
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    EXECUTE format($ddl$
        CREATE VIEW sluice_changes.%1$I AS
        SELECT k.seq * 1024 + (u.ord - 1) AS seq, k.txid, k.op, u.img::jsonb AS img
          FROM sluice_changes.%2$I k
         CROSS JOIN LATERAL unnest(k.imgs) WITH ORDINALITY AS u(img, ord)$ddl$,
        'c_' || src, 'c_' || src || '_chunks');
    EXECUTE format('COMMENT ON VIEW sluice_changes.%I IS %L', 'c_' || src,
                   format('Changes of %s captured by sluice, one row per image (see sluice.cdc_sources, docs/cdc.md)',
                          src::regclass::text));
    RETURN format('sluice_changes.%I', 'c_' || src)::regclass;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._cdc_buffer_view(oid) FROM PUBLIC;

-- sluice._cdc_chunk_table_finish(src)
--
-- Internal: what a chunk table sluice_changes.c_<src>_chunks gets once its
-- columns exist: the checks, the txid index (the window predicate's and
-- cdc_prune's range scan), lz4 compression of imgs where the server has it
-- (cheaper than the default pglz, measured) and a comment.
CREATE FUNCTION sluice._cdc_chunk_table_finish(src oid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t constant text := 'c_' || src || '_chunks';
BEGIN
    EXECUTE format('ALTER TABLE sluice_changes.%I ADD CONSTRAINT %I CHECK (n BETWEEN 1 AND 1000 AND n = cardinality(imgs))',
                   t, t || '_n_check');
    EXECUTE format('CREATE INDEX %I ON sluice_changes.%I (txid)', t || '_txid_idx', t);
    BEGIN
        EXECUTE format('ALTER TABLE sluice_changes.%I ALTER COLUMN imgs SET COMPRESSION lz4', t);
    EXCEPTION WHEN feature_not_supported THEN
        NULL;   -- a server built without lz4: the default compression
    END;
    EXECUTE format('COMMENT ON TABLE sluice_changes.%I IS %L', t,
                   format('Chunks of captured changes of %s, read through view sluice_changes.c_%s (docs/cdc.md)',
                          src::regclass::text, src));
END
$fn$;

REVOKE ALL ON FUNCTION sluice._cdc_chunk_table_finish(oid) FROM PUBLIC;

-- sluice.cdc_attach(rel) -> the change buffer
--
-- As in version 8 (0004_cdc.sql documents it), except that the buffer is
-- the view sluice_changes.c_<oid> over the chunk table
-- sluice_changes.c_<oid>_chunks, into which the trigger functions write.
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
    leftover text;
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
    FOREACH leftover IN ARRAY ARRAY[buf, buf || '_chunks'] LOOP
        IF to_regclass(format('sluice_changes.%I', leftover)) IS NOT NULL THEN
            RAISE EXCEPTION USING
                ERRCODE = 'duplicate_table',
                MESSAGE = format('%s: sluice_changes.%I exists but %s is not in sluice.cdc_sources', fn, leftover, rel),
                HINT = format('A failed detach left it behind; drop it with DROP %s sluice_changes.%I CASCADE, then attach again.',
                              CASE (SELECT k.relkind FROM pg_class k
                                     WHERE k.oid = to_regclass(format('sluice_changes.%I', leftover)))
                                   WHEN 'v' THEN 'VIEW' ELSE 'TABLE' END,
                              leftover);
        END IF;
    END LOOP;

    EXECUTE format($ddl$
        CREATE TABLE sluice_changes.%1$I (
            seq  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
            op   "char" NOT NULL CHECK (op IN ('I', 'D', 'T')),
            n    int NOT NULL,
            imgs json[] NOT NULL
        )$ddl$, buf || '_chunks');
    PERFORM sluice._cdc_chunk_table_finish(rel::oid);
    buf_rc := sluice._cdc_buffer_view(rel::oid);

    PERFORM sluice._cdc_functions(rel::oid, buf || '_chunks');

    INSERT INTO sluice.cdc_sources (relid, relname, buffer) VALUES (rel, rel::text, buf_rc);
    PERFORM sluice._cdc_install_triggers(rel);
    RETURN buf_rc;
END
$fn$;

-- sluice.cdc_detach(rel)
--
-- As in version 4 (0004_cdc.sql documents it); drops the view and the chunk
-- table (or a buffer table of an earlier version left without catalog row).
CREATE OR REPLACE FUNCTION sluice.cdc_detach(rel regclass)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    tg   record;
    ev   text;
    kind "char";
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
    SELECT k.relkind INTO kind FROM pg_class k
     WHERE k.relnamespace = 'sluice_changes'::regnamespace AND k.relname = 'c_' || rel::oid;
    IF kind = 'v' THEN
        EXECUTE format('DROP VIEW sluice_changes.%I', 'c_' || rel::oid);
    ELSIF kind = 'r' THEN
        EXECUTE format('DROP TABLE sluice_changes.%I', 'c_' || rel::oid);
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS sluice_changes.%I', 'c_' || rel::oid || '_chunks');
    DELETE FROM sluice.cdc_sources s WHERE s.relid = rel;
END
$fn$;

-- sluice.cdc_prune(rel, keep_before) -> images deleted
--
-- As in version 4 (0004_cdc.sql documents it): deletes the chunks whose
-- transaction is visible in keep_before and returns how many images (buffer
-- view rows) they held.
CREATE OR REPLACE FUNCTION sluice.cdc_prune(rel regclass, keep_before pg_snapshot)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    found_rel boolean;
    n         bigint;
BEGIN
    IF keep_before IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('sluice.cdc_prune: keep_before is NULL (table %s)', rel),
            HINT = 'Pass the oldest frontier (a pg_snapshot) of the consumers of this table.';
    END IF;
    found_rel := EXISTS (SELECT 1 FROM sluice.cdc_sources s WHERE s.relid = rel);
    IF NOT found_rel THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('sluice.cdc_prune: %s is not captured', coalesce(rel::text, 'NULL')),
            HINT = 'Captured tables are listed in sluice.cdc_sources; attach one with sluice.cdc_attach().';
    END IF;
    -- txid < xmax is implied by visibility; it gives the txid index a range.
    EXECUTE format('WITH d AS (DELETE FROM sluice_changes.%I WHERE txid < $1 AND pg_visible_in_snapshot(txid, $2) RETURNING n) SELECT coalesce(sum(n), 0) FROM d',
                   'c_' || rel::oid || '_chunks')
       INTO n USING pg_snapshot_xmax(keep_before), keep_before;
    RETURN n;
END
$fn$;

-- Sources attached before this version: the buffer table becomes the chunk
-- table (one image per chunk), the view takes the buffer's name, and the
-- trigger functions are regenerated. ACCESS EXCLUSIVE on each buffer until
-- commit: writers of captured tables wait for this migration (buffers are
-- pruned after every refresh, so they are normally small). A source whose
-- table was dropped is converted too (cdc_detach(oid) removes it).
DO $mig$
DECLARE
    s   record;
    t   text;
    vw  regclass;
BEGIN
    FOR s IN
        SELECT c.relid, k.relname AS buf
          FROM sluice.cdc_sources c JOIN pg_class k ON k.oid = c.buffer
         WHERE k.relkind = 'r'
         ORDER BY c.relid
    LOOP
        t := s.buf || '_chunks';
        EXECUTE format('LOCK TABLE sluice_changes.%I IN ACCESS EXCLUSIVE MODE', s.buf);
        EXECUTE format('ALTER TABLE sluice_changes.%I RENAME TO %I', s.buf, t);
        EXECUTE format('DROP INDEX IF EXISTS sluice_changes.%I', s.buf || '_txid_idx');
        EXECUTE format('ALTER TABLE sluice_changes.%I RENAME CONSTRAINT %I TO %I', t, s.buf || '_pkey', t || '_pkey');
        EXECUTE format('ALTER TABLE sluice_changes.%I RENAME CONSTRAINT %I TO %I', t, s.buf || '_op_check', t || '_op_check');
        EXECUTE format('ALTER TABLE sluice_changes.%I RENAME COLUMN img TO imgs', t);
        EXECUTE format('ALTER TABLE sluice_changes.%I ALTER COLUMN imgs TYPE json[] USING ARRAY[imgs::json], '
                       'ALTER COLUMN imgs SET NOT NULL, ADD COLUMN n int NOT NULL DEFAULT 1', t);
        EXECUTE format('ALTER TABLE sluice_changes.%I ALTER COLUMN n DROP DEFAULT', t);
        PERFORM sluice._cdc_chunk_table_finish(s.relid);
        vw := sluice._cdc_buffer_view(s.relid);
        UPDATE sluice.cdc_sources c SET buffer = vw WHERE c.relid = s.relid;
        PERFORM sluice._cdc_functions(s.relid, t);
    END LOOP;
END
$mig$;
