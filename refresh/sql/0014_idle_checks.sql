-- refresh/sql/0014_idle_checks.sql - migration 14: a refresh that finds
-- nothing to do writes nothing that needs a WAL flush.
--
-- Up to version 13 a refresh with no change in its window still locked the
-- stream table's catalog row (SELECT ... FOR UPDATE) and updated it
-- (frontier, last_refresh_at). Both are WAL-logged writes, so the commit
-- waited for a WAL flush: an idle stream table on a 1-second schedule cost
-- one fsync a second, and the commit's flush was most of the time a client
-- saw (p50 0.65-0.96 ms, p99 1.1-3.3 ms here, most of it after the function
-- had returned).
--
-- From this version the engine and sluice.refresh_stream_table() call
-- sluice._refresh_if_changed(id), which first looks, without any lock,
-- whether a source of the stream table has changes in the window
-- (frontier, now]. If none has, it only records the time of the check in
-- the UNLOGGED table sluice.stream_table_checks and returns NULL: no row of
-- a logged table is locked or written, so PostgreSQL commits the
-- transaction without waiting for the WAL (xact.c: a transaction that
-- wrote no WAL does not flush). Otherwise it runs sluice._refresh(id) as
-- before, which locks the row and looks again.
--
-- Why that is safe:
--   * The frontier is left where it is. No change was committed between it
--     and the check's snapshot, so the sources' state at the frontier is
--     their state at the check: a later window starting from the old
--     frontier sees exactly the changes a window starting from the check
--     would, and the stream table still holds its sources' state at its
--     frontier (what a join's next refresh relies on).
--   * The check needs no lock. It decides on snapshot values (the stored
--     frontier and pg_current_snapshot()), not on what its statements see,
--     and writes nothing but the check time: a concurrent refresh, alter or
--     drop cannot be disturbed by it. A change the check does not see
--     (committed after its snapshot) is in the next window.
--   * Anything else than "active, every source captured, no change" goes to
--     sluice._refresh, which raises the errors it always raised.
--   * An unlogged table is emptied by crash recovery: the check times are
--     then lost and last_refresh_at falls back to the catalog's, which is
--     older but true. Standbys cannot read unlogged tables at all, so the
--     view reads the check time through sluice._st_checked_at(), which
--     returns NULL during recovery.
--
-- last_refresh_at (sluice.stream_tables, and the engine's schedule) is
-- from now on the later of the last refresh and the last check.
--
-- Measured (docs/benchmarks.md, "Refresh with no changes (migration 14)"):
-- 2,000 autocommit refresh_stream_table() calls with nothing changed, one
-- client, old and new path alternately: p50 0.65-0.75 -> 0.29-0.40 ms, p99
-- 1.1-1.7 -> 0.46-0.96 ms; in the full benchmark run at b422a17, p50 0.33
-- ms and p99 0.81 ms.

-- sluice.stream_table_checks: when a stream table was last found to have
-- nothing to refresh. UNLOGGED on purpose (file header). No foreign key:
-- checking one would lock the catalog row, a WAL-logged write; a trigger
-- on the catalog removes the row of a dropped stream table instead.
CREATE UNLOGGED TABLE sluice.stream_table_checks (
    stream_table_id bigint PRIMARY KEY,
    checked_at      timestamptz NOT NULL
);

COMMENT ON TABLE sluice.stream_table_checks IS
    'When each stream table was last found to have no change to refresh (unlogged; emptied by crash recovery)';

CREATE FUNCTION sluice._st_checks_forget()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    DELETE FROM sluice.stream_table_checks k WHERE k.stream_table_id = OLD.id;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_checks_forget() FROM PUBLIC;

CREATE TRIGGER stream_table_checks_forget AFTER DELETE ON sluice.stream_table_catalog
    FOR EACH ROW EXECUTE FUNCTION sluice._st_checks_forget();

-- sluice._st_checked_at(id) -> the time of the stream table's last check
-- that found nothing to do, or NULL (none since the last crash, or a
-- standby, which cannot read unlogged tables). PL/pgSQL so that the SELECT
-- is planned only when it runs: planning it on a standby is already an
-- error. EXECUTE stays granted to PUBLIC: the view calls it with its
-- reader's rights, and it tells no more than the view does.
CREATE FUNCTION sluice._st_checked_at(id bigint)
RETURNS timestamptz
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF pg_is_in_recovery() THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT k.checked_at FROM sluice.stream_table_checks k WHERE k.stream_table_id = _st_checked_at.id);
END
$fn$;

-- sluice._refresh_if_changed(id) -> refresh id, or NULL when nothing
-- changed. What the engine and refresh_stream_table() run (file header).
CREATE FUNCTION sluice._refresh_if_changed(id bigint)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st  sluice.stream_table_catalog;
    cur pg_snapshot;
    src record;
    has boolean;
BEGIN
    SELECT * INTO st FROM sluice.stream_table_catalog c WHERE c.id = _refresh_if_changed.id;
    IF NOT FOUND OR st.status <> 'active' THEN
        RETURN sluice._refresh(_refresh_if_changed.id, false);   -- its errors
    END IF;
    cur := sluice._snap_own(pg_current_snapshot(), true);
    FOR src IN
        SELECT k.oid IS NULL AS gone, b.buffer
          FROM sluice.stream_table_sources s
          LEFT JOIN pg_class k ON k.oid = s.relid
          LEFT JOIN sluice.cdc_sources b ON b.relid = s.relid
         WHERE s.stream_table_id = st.id
    LOOP
        IF src.gone OR src.buffer IS NULL THEN
            RETURN sluice._refresh(st.id, false);
        END IF;
        -- The window predicate of _refresh (cdc/sql/0004_cdc.sql).
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s b WHERE b.txid >= pg_snapshot_xmin($1) AND b.txid < pg_snapshot_xmax($2) '
                       'AND NOT pg_visible_in_snapshot(b.txid, $1) AND pg_visible_in_snapshot(b.txid, $2))', src.buffer)
           INTO has USING st.frontier, cur;
        IF has THEN
            RETURN sluice._refresh(st.id, false);
        END IF;
    END LOOP;
    INSERT INTO sluice.stream_table_checks AS k (stream_table_id, checked_at)
    VALUES (st.id, clock_timestamp())
    ON CONFLICT (stream_table_id) DO UPDATE SET checked_at = excluded.checked_at;
    RETURN NULL;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._refresh_if_changed(bigint) FROM PUBLIC;

-- As in version 5, through _refresh_if_changed.
CREATE OR REPLACE FUNCTION sluice.refresh_stream_table(name text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    st sluice.stream_table_catalog := sluice._st_lookup('sluice.refresh_stream_table', name, true);
BEGIN
    RETURN sluice._refresh_if_changed(st.id);
END
$fn$;

-- As in version 5; last_refresh_at and staleness count checks that found
-- nothing to do.
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
       pg_get_userbyid(c.owner) AS owner
  FROM sluice.stream_table_catalog c;
