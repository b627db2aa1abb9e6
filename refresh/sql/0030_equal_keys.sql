-- refresh/sql/0030_equal_keys.sql - migration 30: key values that
-- PostgreSQL finds equal get one row identity, however they print.
--
-- The row id of a keyed row is md5 of its key values as a JSON array
-- (migration 5). Some types have values that are equal but print
-- differently:
--
--   - numeric without a declared scale: 1.0, 1.00 and 1 (numeric(12,2)
--     values are cast to the column type first, so they print alike);
--   - interval: '1 day' and '24:00:00', '1 mon' and '30 days';
--   - character without a length (bpchar): 'a' and 'a  ' (trailing blanks
--     do not count; character(n) pads every value to n);
--   - citext (the extension): 'Ann@X.org' and 'ann@x.org'.
--
-- (A float's -0 and 0 already print alike inside JSON, which stores the
-- number as numeric.) A DISTINCT, GROUP BY or UNION key meeting two such
-- values made two ids for one group: the stream table kept two rows where
-- its query gives one, each with part of the group's aggregates, and a
-- later refresh could fail on a duplicate id.
--
-- Now the id hashes each key value in a form that equal values share:
-- trim_scale() of such a numeric, justify_interval() of an interval, a
-- bpchar without its trailing blanks, a citext in lower case. Other values
-- hash as before, so the ids of stream tables keyed by other types do not
-- change.
--
-- A stream table's ids must all come from one formula, so the catalog
-- records which one its stored ids use (identity_version: 1 as printed, 2
-- the form above). New stream tables, and any given a query again
-- (alter_stream_table with a query, the same one included: its rows are
-- refreshed in full and every row whose id changes is published as a
-- delete and an insert), get 2, set by a trigger on the catalog.
--
-- Upgrade: a stream table with a key column of one of those types keeps
-- version 1 and its ids until it is given its query again; the others get
-- version 2, which computes the same ids for them.

ALTER TABLE sluice.stream_table_catalog ADD COLUMN identity_version smallint;
COMMENT ON COLUMN sluice.stream_table_catalog.identity_version IS
    'How row ids hash key values: 1 as printed (before version 30), 2 with equal numeric, interval, '
    'bpchar and citext values hashed alike (sluice._st_key_value_sql)';

-- sluice._st_key_value_sql(value, typid, typmod) -> SQL: the expression
-- value, of type typid(typmod), in the form a row id hashes (version 2):
-- equal values give equal JSON. value is SQL text, already cast to the
-- column's type. A domain is judged by its base type. The functions are
-- qualified: the SQL runs under the stream table's search_path too.
CREATE FUNCTION sluice._st_key_value_sql(value text, typid oid, typmod int)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    base oid := typid;
    mod  int := typmod;
BEGIN
    SELECT t.typbasetype, t.typtypmod INTO base, mod
      FROM pg_type t WHERE t.oid = typid AND t.typtype = 'd';
    IF NOT FOUND THEN
        base := typid;
        mod := typmod;
    END IF;
    RETURN CASE
        WHEN base = 'numeric'::regtype AND mod < 0 THEN format('pg_catalog.trim_scale(%s)', value)
        WHEN base = 'interval'::regtype THEN format('pg_catalog.justify_interval(%s)', value)
        WHEN base = 'bpchar'::regtype AND mod < 0 THEN format('pg_catalog.rtrim(%s, '' '')', value)
        -- The extension's type, which compares its values in lower case
        -- (looked for only among types created after initdb: oid 16384 on).
        WHEN base >= 16384 AND EXISTS (SELECT 1 FROM pg_depend e JOIN pg_extension x ON x.oid = e.refobjid
                      WHERE e.classid = 'pg_type'::regclass AND e.objid = base AND e.deptype = 'e'
                        AND x.extname = 'citext')
        THEN format('pg_catalog.lower(%s::pg_catalog.text)', value)
        ELSE value
    END;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_key_value_sql(text, oid, int) FROM PUBLIC;

-- sluice._st_own_equality(typid) -> the type, printed, when the = of its
-- default btree operator class is not in pg_catalog (an extension's, like
-- citext's); NULL otherwise. A domain is judged by its base type. The
-- engine refreshes a stream table that groups by such a key column in
-- full: the SQL of a differential refresh, run under search_path
-- pg_catalog, would compare its values with the = of a type it casts to
-- (citext as text, case-sensitively).
CREATE FUNCTION sluice._st_own_equality(typid oid)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT format_type(b.base, NULL)
      FROM (SELECT CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END AS base
              FROM pg_type t WHERE t.oid = typid) AS b
      JOIN pg_opclass c ON c.opcintype = b.base AND c.opcdefault
      JOIN pg_am m ON m.oid = c.opcmethod AND m.amname = 'btree'
      JOIN pg_amop o ON o.amopfamily = c.opcfamily AND o.amoplefttype = b.base
                    AND o.amoprighttype = b.base AND o.amopstrategy = 3
      JOIN pg_operator p ON p.oid = o.amopopr
     WHERE p.oprnamespace <> 'pg_catalog'::regnamespace
$fn$;

REVOKE ALL ON FUNCTION sluice._st_own_equality(oid) FROM PUBLIC;

-- sluice._st_identity_version(relid) -> the identity_version of the stream
-- table stored in relid; 2 when none is recorded yet.
CREATE FUNCTION sluice._st_identity_version(relid oid)
RETURNS int
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce((SELECT c.identity_version FROM sluice.stream_table_catalog c
                      WHERE c.relid = _st_identity_version.relid), 2)
$fn$;

REVOKE ALL ON FUNCTION sluice._st_identity_version(oid) FROM PUBLIC;

-- sluice._st_key_parts(relid, keys, alias) -> the SQL of each key column
-- of row `alias` of the stream table stored in relid, cast to its type and
-- in the form of the stream table's identity_version, in the order of keys.
CREATE FUNCTION sluice._st_key_parts(relid oid, keys text[], alias text)
RETURNS text[]
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v2 boolean := sluice._st_identity_version(relid) >= 2;
BEGIN
    -- (PL/pgSQL keeps the plan of this query; a SQL function with SET would
    -- plan it at every call.)
    RETURN ARRAY(
        SELECT CASE WHEN v2 THEN sluice._st_key_value_sql(k.v, a.atttypid, a.atttypmod) ELSE k.v END
          FROM unnest(keys) WITH ORDINALITY AS u(col, ord)
          JOIN pg_attribute a ON a.attrelid = relid AND a.attname = u.col AND NOT a.attisdropped
         CROSS JOIN LATERAL (SELECT format('(%I.%I)::%s', alias, u.col,
                                           format_type(a.atttypid, a.atttypmod)) AS v) AS k
         ORDER BY u.ord);
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_key_parts(oid, text[], text) FROM PUBLIC;

-- As in version 5, each key value in the form of the stream table's
-- identity_version.
CREATE OR REPLACE FUNCTION sluice._st_identity_sql(relid oid, key_columns text[], alias text)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF key_columns IS NULL THEN
        RETURN format('md5(to_jsonb(%1$I)::text || ''#'' || row_number() OVER (PARTITION BY to_jsonb(%1$I)::text))::uuid',
                      alias);
    END IF;
    RETURN format('md5(jsonb_build_array(%s)::text)::uuid',
                  array_to_string(sluice._st_key_parts(relid, key_columns, alias), ', '));
END
$fn$;

-- As in version 9, the same way.
CREATE OR REPLACE FUNCTION sluice._st_branch_identity_sql(relid oid, keys text[], alias text, branch int)
RETURNS text
LANGUAGE plpgsql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RETURN format('md5(jsonb_build_array(%s)::text)::uuid',
                  array_to_string(branch::text || sluice._st_key_parts(relid, keys, alias), ', '));
END
$fn$;

-- The trigger: a new stream table, or a query given to one (as for the
-- settings, migration 29), gets the current formula; the refresh that
-- follows in the same call (creation, alter_stream_table) computes its ids
-- with it.
CREATE FUNCTION sluice._st_record_identity_version()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    NEW.identity_version := 2;
    RETURN NEW;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._st_record_identity_version() FROM PUBLIC;

-- Upgrade (file header): version 1 where a key column's values could hash
-- differently now; content identity hashes whole rows, as before.
UPDATE sluice.stream_table_catalog c
   SET identity_version = CASE WHEN EXISTS (
           SELECT 1
             FROM pg_attribute a
             JOIN unnest(coalesce(c.key_columns, '{}')
                         || coalesce(ARRAY(SELECT jsonb_array_elements_text(b -> 'keys')
                                             FROM jsonb_array_elements(c.branches) AS b), '{}')) AS u(col)
               ON a.attname = u.col
            WHERE a.attrelid = c.relid AND NOT a.attisdropped
              AND sluice._st_key_value_sql('v', a.atttypid, a.atttypmod) <> 'v')
       THEN 1 ELSE 2 END;
ALTER TABLE sluice.stream_table_catalog ALTER COLUMN identity_version SET NOT NULL;

CREATE TRIGGER stream_table_identity_version
    BEFORE INSERT OR UPDATE OF query, relid ON sluice.stream_table_catalog
    FOR EACH ROW EXECUTE FUNCTION sluice._st_record_identity_version();

-- The engine's analyses compare keys as JSON in places (a GROUP BY's
-- stored rows with the changes' groups; keys with a NULL part), now in the
-- same forms, and refuse grouping by a key of a type with its own =:
-- stream tables with a column of such a type are analysed again. Until
-- then they are refreshed in full.
UPDATE sluice.stream_table_catalog c
   SET analyzed_query = NULL, effective_mode = NULL, fallback_reason = NULL, operator_tree = NULL,
       affected_sql = NULL, recompute_sql = NULL, unit_columns = NULL, branch_analysis = NULL
 WHERE c.query_fallback IS NULL AND c.key_columns IS NOT NULL AND c.requested_mode <> 'full'
   AND c.analyzed_query IS NOT DISTINCT FROM c.query
   AND EXISTS (SELECT 1 FROM pg_attribute a
                WHERE a.attrelid = c.relid AND a.attnum > 0 AND NOT a.attisdropped
                  AND (sluice._st_key_value_sql('v', a.atttypid, a.atttypmod) <> 'v'
                       OR sluice._st_own_equality(a.atttypid) IS NOT NULL));

-- As in version 18, the row identity of a stream table that keeps version
-- 1 says so, and how to change it.
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
