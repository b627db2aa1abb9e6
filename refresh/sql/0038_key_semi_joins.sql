-- refresh/sql/0038_key_semi_joins.sql - migration 38: stored recompute
-- statements that restrict a query to its affected keys with
-- key = ANY (ARRAY(SELECT ...)) are forgotten, so that the engine writes
-- them again with key IN (SELECT ...).
--
-- A differential refresh recomputes the rows (groups, partitions, units)
-- whose keys the window's changes reach: the query, restricted to those
-- keys. Up to version 37 the engine wrote that restriction as
-- key = ANY (ARRAY(SELECT key FROM <affected keys>)), and the keys with a
-- NULL part as jsonb_build_array(...) = ANY (ARRAY(SELECT ...)). Where an
-- index leads with the key, PostgreSQL answers it with one index lookup per
-- key. Where none does (a GROUP BY on a column or expression without an
-- index, a window's PARTITION BY, the rows whose key has a NULL part) it
-- scans the table and compares every row with the array's elements one
-- after the other: PostgreSQL 15 hashes only arrays that are constants,
-- not one that a subquery builds. So the refresh cost rows times keys:
-- 12.7 s for 3,000 changed rows of a 1,000,000-row table grouped by a
-- column without an index, where a full refresh took 0.7 s
-- (docs/stream-tables.md, "Recomputing the affected keys").
--
-- The engine now writes key IN (SELECT ...), a semi-join, which PostgreSQL
-- answers through an index when there is one and the keys are few, and
-- otherwise by hashing the keys and reading the table once. The
-- statements an engine of version 37 or older stored still have the old
-- form. The statements below forget those analyses; the engine analyses
-- the stream tables again on its next pass, and until then they are
-- refreshed in full, as after migration 30. (The affected-keys statements
-- keep = ANY for primary keys, which always have their index.)
UPDATE sluice.stream_table_catalog c
   SET analyzed_query = NULL, effective_mode = NULL, fallback_reason = NULL, operator_tree = NULL,
       affected_sql = NULL, recompute_sql = NULL, unit_columns = NULL, branch_analysis = NULL
 WHERE c.query_fallback IS NULL AND c.key_columns IS NOT NULL AND c.requested_mode <> 'full'
   AND c.analyzed_query IS NOT DISTINCT FROM c.query
   AND (strpos(c.recompute_sql, '= ANY (ARRAY(SELECT ') > 0
        OR EXISTS (SELECT 1 FROM jsonb_array_elements(c.branch_analysis) AS b(v)
                    WHERE strpos(b.v ->> 'recompute', '= ANY (ARRAY(SELECT ') > 0));
