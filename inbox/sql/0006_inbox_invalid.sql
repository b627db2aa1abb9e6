-- inbox/sql/0006_inbox_invalid.sql - invalid messages are stored, not dropped.
--
-- The reverse relay (Kafka -> inbox) reads records it did not write: some are
-- not valid for their format (not JSON, not a sluice envelope, a key that is
-- not UTF-8 text). Such a record must neither be dropped (its producer would
-- never learn of it) nor stop its partition (every record behind it would
-- wait). So sluice.inbox_insert accepts an optional "error" member: a message
-- that carries one is inserted with status 'dead' and the error in
-- last_error. It is counted by inbox_stats, never claimed, and can be sent to
-- workers again with sluice.inbox_replay once whatever reads it can cope.
--
-- Everything else is as in 0003_inbox.sql; this replaces the function body.

CREATE OR REPLACE FUNCTION sluice.inbox_insert(name text, messages jsonb,
                                    OUT inserted int, OUT duplicates int)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn    constant text := 'sluice.inbox_insert';
    ib    sluice.inboxes := sluice._inbox_lookup(fn, inbox_insert.name);
    msgs  jsonb := inbox_insert.messages;
    total int;
    bad   record;
BEGIN
    IF msgs IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('%s: messages is NULL (inbox %s)', fn, ib.name),
            HINT = 'Pass a JSON array of {"message_id", "topic", "key", "payload", "headers"} objects.';
    END IF;
    IF jsonb_typeof(msgs) = 'object' THEN
        msgs := jsonb_build_array(msgs);
    END IF;
    IF jsonb_typeof(msgs) <> 'array' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: messages must be a JSON array of objects, got %s (inbox %s)', fn,
                             jsonb_typeof(msgs), ib.name),
            HINT = 'Pass a JSON array of {"message_id", "topic", "key", "payload", "headers"} objects; nothing was inserted.';
    END IF;

    -- The first invalid element, if any, with what is wrong with it.
    SELECT e.ord - 1 AS idx,
           CASE
               WHEN jsonb_typeof(e.m) <> 'object' THEN
                   format('is a JSON %s, not an object', jsonb_typeof(e.m))
               WHEN (SELECT k FROM jsonb_object_keys(e.m) k
                      WHERE k NOT IN ('message_id', 'topic', 'key', 'payload', 'headers', 'error') LIMIT 1) IS NOT NULL THEN
                   format('has unknown field %L',
                          (SELECT k FROM jsonb_object_keys(e.m) k
                            WHERE k NOT IN ('message_id', 'topic', 'key', 'payload', 'headers', 'error') LIMIT 1))
               WHEN jsonb_typeof(e.m -> 'message_id') IS DISTINCT FROM 'string'
                    OR e.m ->> 'message_id' = '' THEN
                   'has no message_id (a non-empty string)'
               WHEN jsonb_typeof(e.m -> 'topic') IS DISTINCT FROM 'string' THEN
                   format('(message_id %L) has no topic (a string)', e.m ->> 'message_id')
               WHEN NOT (e.m ? 'payload') THEN
                   format('(message_id %L) has no payload', e.m ->> 'message_id')
               WHEN coalesce(jsonb_typeof(e.m -> 'key'), 'null') NOT IN ('string', 'null') THEN
                   format('(message_id %L) has a key that is a JSON %s, not a string or null',
                          e.m ->> 'message_id', jsonb_typeof(e.m -> 'key'))
               WHEN coalesce(jsonb_typeof(e.m -> 'headers'), 'null') NOT IN ('object', 'null') THEN
                   format('(message_id %L) has headers that are a JSON %s, not an object',
                          e.m ->> 'message_id', jsonb_typeof(e.m -> 'headers'))
               WHEN coalesce(jsonb_typeof(e.m -> 'error'), 'null') NOT IN ('string', 'null') THEN
                   format('(message_id %L) has an error that is a JSON %s, not a string or null',
                          e.m ->> 'message_id', jsonb_typeof(e.m -> 'error'))
           END AS what
      INTO bad
      FROM jsonb_array_elements(msgs) WITH ORDINALITY AS e(m, ord)
     WHERE jsonb_typeof(e.m) <> 'object'
        OR EXISTS (SELECT 1 FROM jsonb_object_keys(e.m) k
                    WHERE k NOT IN ('message_id', 'topic', 'key', 'payload', 'headers', 'error'))
        OR jsonb_typeof(e.m -> 'message_id') IS DISTINCT FROM 'string'
        OR e.m ->> 'message_id' = ''
        OR jsonb_typeof(e.m -> 'topic') IS DISTINCT FROM 'string'
        OR NOT (e.m ? 'payload')
        OR coalesce(jsonb_typeof(e.m -> 'key'), 'null') NOT IN ('string', 'null')
        OR coalesce(jsonb_typeof(e.m -> 'headers'), 'null') NOT IN ('object', 'null')
        OR coalesce(jsonb_typeof(e.m -> 'error'), 'null') NOT IN ('string', 'null')
     ORDER BY e.ord
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: message %s of the array %s (inbox %s)', fn, bad.idx, bad.what, ib.name),
            HINT = 'Each message is {"message_id": "...", "topic": "...", "key": "..." or null, "payload": <any JSON>, "headers": {...} or null, "error": "..." or null}; nothing was inserted.';
    END IF;

    total := jsonb_array_length(msgs);
    EXECUTE format($q$
        INSERT INTO sluice.%I (message_id, topic, key, payload, headers, status, last_error)
        SELECT e.m ->> 'message_id', e.m ->> 'topic', e.m ->> 'key', e.m -> 'payload',
               coalesce(nullif(e.m -> 'headers', 'null'::jsonb), '{}'::jsonb),
               CASE WHEN e.m ->> 'error' IS NULL THEN 'pending' ELSE 'dead' END,
               e.m ->> 'error'
          FROM jsonb_array_elements($1) WITH ORDINALITY AS e(m, ord)
         ORDER BY e.ord
        ON CONFLICT (message_id) DO NOTHING$q$, ib.table_name) USING msgs;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    duplicates := total - inserted;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.inbox_insert(text, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION sluice.inbox_insert(text, jsonb) IS
    'Insert messages into an inbox idempotently (by message_id); a message with "error" is stored as dead; returns (inserted, duplicates)';
