-- sluice inbox, version 3.
--
-- An inbox is a table of messages received from elsewhere (a Kafka topic
-- through the relay's inbox sink, or any producer calling inbox_insert())
-- that SQL consumers work through with claim / ack / fail:
--
--   * idempotent: every message has a message id, unique in its inbox, so a
--     redelivered message is counted as a duplicate and never seen twice;
--   * leased: inbox_claim() hands each due message to one claimer for a
--     lease (FOR UPDATE SKIP LOCKED: two live claimers never get the same
--     message); an ack after the lease expired is refused;
--   * retried: inbox_fail() schedules the next attempt with exponential
--     backoff; after max_attempts the message is dead (a dead letter) until
--     inbox_replay() brings it back;
--   * cleaned: inbox_cleanup() deletes done messages after the retention.
--
-- Each inbox is its own table sluice."inbox_<name>", described by one row of
-- sluice.inboxes. See docs/inbox.md.

CREATE TABLE sluice.inboxes (
    name          text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,40}$'),
    table_name    text NOT NULL UNIQUE,
    max_attempts  int NOT NULL CHECK (max_attempts >= 1),
    retry_backoff interval NOT NULL CHECK (retry_backoff > interval '0'),
    lease         interval NOT NULL CHECK (lease > interval '0'),
    retention     interval NOT NULL CHECK (retention >= interval '0'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    owner         text NOT NULL DEFAULT session_user
);

COMMENT ON TABLE sluice.inboxes IS
    'One row per inbox made by sluice.create_inbox(); its messages live in sluice.<table_name>';

-- sluice._inbox_lookup(fn, name) -> the inbox's catalog row
--
-- Internal: validates an inbox name and returns its catalog row, or raises
-- the error every inbox function gives for a bad or unknown name. `fn` is
-- the calling function's name, for the message.
CREATE FUNCTION sluice._inbox_lookup(fn text, inbox text)
RETURNS sluice.inboxes
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    ib sluice.inboxes;
BEGIN
    IF inbox IS NULL OR inbox !~ '^[a-z][a-z0-9_]{0,40}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: invalid inbox name %s', fn, coalesce(quote_literal(inbox), 'NULL')),
            HINT = 'An inbox name is 1 to 41 characters from a-z, 0-9 and "_", starting with a letter.';
    END IF;
    SELECT * INTO ib FROM sluice.inboxes i WHERE i.name = inbox;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'undefined_object',
            MESSAGE = format('%s: inbox %L does not exist', fn, inbox),
            HINT = format('Create it with SELECT sluice.create_inbox(%L); the existing inboxes are listed in sluice.inboxes.',
                          inbox);
    END IF;
    RETURN ib;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._inbox_lookup(text, text) FROM PUBLIC;

-- sluice._inbox_check_interval(fn, arg, value, allow_zero): raises unless
-- value is a positive (or, with allow_zero, non-negative) interval.
CREATE FUNCTION sluice._inbox_check_interval(fn text, arg text, val interval, allow_zero boolean)
RETURNS void
LANGUAGE plpgsql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF val IS NULL OR val < interval '0' OR (val = interval '0' AND NOT allow_zero) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: %s must be a %s interval, got %s', fn, arg,
                             CASE WHEN allow_zero THEN 'non-negative' ELSE 'positive' END,
                             coalesce(val::text, 'NULL')),
            HINT = format('Pass a duration such as ''30 seconds'' or ''5 minutes''%s.',
                          CASE WHEN allow_zero THEN ', or ''0''' ELSE '' END);
    END IF;
END
$fn$;

REVOKE ALL ON FUNCTION sluice._inbox_check_interval(text, text, interval, boolean) FROM PUBLIC;

-- sluice.create_inbox(name, max_attempts, retry_backoff, lease, retention)
--
-- Creates inbox `name`: a catalog row in sluice.inboxes and the table
-- sluice."inbox_<name>". max_attempts: claims a message gets before it is
-- dead; retry_backoff: delay before the second attempt (doubling after each
-- failure); lease: default time a claimer has to ack; retention: how long
-- done messages are kept by inbox_cleanup() (and so how long their ids still
-- deduplicate).
CREATE FUNCTION sluice.create_inbox(name text,
                                    max_attempts int DEFAULT 5,
                                    retry_backoff interval DEFAULT '1 second',
                                    lease interval DEFAULT '30 seconds',
                                    retention interval DEFAULT '7 days')
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn  constant text := 'sluice.create_inbox';
    tbl text;
BEGIN
    IF create_inbox.name IS NULL OR create_inbox.name !~ '^[a-z][a-z0-9_]{0,40}$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: invalid inbox name %s', fn,
                             coalesce(quote_literal(create_inbox.name), 'NULL')),
            HINT = 'An inbox name is 1 to 41 characters from a-z, 0-9 and "_", starting with a letter.';
    END IF;
    IF create_inbox.max_attempts IS NULL OR create_inbox.max_attempts < 1 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: max_attempts must be at least 1, got %s (inbox %s)', fn,
                             coalesce(create_inbox.max_attempts::text, 'NULL'), create_inbox.name),
            HINT = 'max_attempts counts claims: after that many a failing message is dead. 1 means no retry.';
    END IF;
    PERFORM sluice._inbox_check_interval(fn, 'retry_backoff', create_inbox.retry_backoff, false);
    PERFORM sluice._inbox_check_interval(fn, 'lease', create_inbox.lease, false);
    PERFORM sluice._inbox_check_interval(fn, 'retention', create_inbox.retention, true);

    tbl := 'inbox_' || create_inbox.name;
    IF EXISTS (SELECT 1 FROM sluice.inboxes i WHERE i.name = create_inbox.name) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('%s: inbox %L already exists', fn, create_inbox.name),
            HINT = 'Choose another name, or drop the old inbox (and its messages) with sluice.drop_inbox() first.';
    END IF;
    IF to_regclass(format('sluice.%I', tbl)) IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_table',
            MESSAGE = format('%s: relation sluice.%I already exists but is not an inbox', fn, tbl),
            HINT = 'Rename or drop that relation, or choose another inbox name.';
    END IF;

    BEGIN
        INSERT INTO sluice.inboxes (name, table_name, max_attempts, retry_backoff, lease, retention)
        VALUES (create_inbox.name, tbl, create_inbox.max_attempts, create_inbox.retry_backoff,
                create_inbox.lease, create_inbox.retention);
    EXCEPTION WHEN unique_violation THEN
        -- A concurrent create_inbox of the same name committed first.
        RAISE EXCEPTION USING
            ERRCODE = 'duplicate_object',
            MESSAGE = format('%s: inbox %L already exists', fn, create_inbox.name),
            HINT = 'Choose another name, or drop the old inbox (and its messages) with sluice.drop_inbox() first.';
    END;

    EXECUTE format($ddl$
        CREATE TABLE sluice.%1$I (
            seq              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            message_id       text NOT NULL CONSTRAINT %2$I UNIQUE,
            topic            text NOT NULL,
            key              text,
            payload          jsonb NOT NULL,
            headers          jsonb NOT NULL DEFAULT '{}',
            received_at      timestamptz NOT NULL DEFAULT now(),
            status           text NOT NULL DEFAULT 'pending'
                             CHECK (status IN ('pending', 'processing', 'done', 'dead')),
            attempts         int NOT NULL DEFAULT 0,
            next_attempt_at  timestamptz NOT NULL DEFAULT now(),
            lease_expires_at timestamptz,
            claim_token      uuid,
            last_error       text,
            processed_at     timestamptz
        )$ddl$, tbl, tbl || '_message_id_key');
    -- Claim scan: pending messages in received order.
    EXECUTE format('CREATE INDEX %I ON sluice.%I (seq) WHERE status = ''pending''',
                   tbl || '_pending_idx', tbl);
    -- Expired-lease sweep.
    EXECUTE format('CREATE INDEX %I ON sluice.%I (lease_expires_at) WHERE status = ''processing''',
                   tbl || '_lease_idx', tbl);
    -- one_per_key: the earliest unfinished message of a key.
    EXECUTE format('CREATE INDEX %I ON sluice.%I (key, seq) WHERE status IN (''pending'', ''processing'')',
                   tbl || '_key_idx', tbl);
    -- inbox_cleanup.
    EXECUTE format('CREATE INDEX %I ON sluice.%I (processed_at) WHERE status = ''done''',
                   tbl || '_done_idx', tbl);
    EXECUTE format('COMMENT ON TABLE sluice.%I IS %L', tbl,
                   format('Messages of inbox %s (see sluice.inboxes and docs/inbox.md)', create_inbox.name));
END
$fn$;

REVOKE ALL ON FUNCTION sluice.create_inbox(text, int, interval, interval, interval) FROM PUBLIC;
COMMENT ON FUNCTION sluice.create_inbox(text, int, interval, interval, interval) IS
    'Create an inbox: a catalog row in sluice.inboxes and the message table sluice.inbox_<name>';

-- sluice.drop_inbox(name)
--
-- Drops inbox `name`, its table and every message in it (pending ones too).
CREATE FUNCTION sluice.drop_inbox(name text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    ib sluice.inboxes := sluice._inbox_lookup('sluice.drop_inbox', drop_inbox.name);
BEGIN
    DELETE FROM sluice.inboxes i WHERE i.name = ib.name;
    EXECUTE format('DROP TABLE sluice.%I', ib.table_name);
END
$fn$;

REVOKE ALL ON FUNCTION sluice.drop_inbox(text) FROM PUBLIC;
COMMENT ON FUNCTION sluice.drop_inbox(text) IS
    'Drop an inbox with its table and all its messages';

-- sluice.inbox_insert(name, messages) -> (inserted, duplicates)
--
-- Inserts messages idempotently: `messages` is a JSON array of objects
--   {"message_id": text, "topic": text, "key": text|null,
--    "payload": any JSON, "headers": object|null}
-- (a single object is accepted as an array of one). A message whose
-- message_id is already in the inbox (or earlier in the same array) is not
-- inserted and counts as a duplicate, so a redelivered batch changes
-- nothing. Messages get received order in array order. The whole array is
-- validated first: one bad element fails the call and inserts nothing.
CREATE FUNCTION sluice.inbox_insert(name text, messages jsonb,
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
                      WHERE k NOT IN ('message_id', 'topic', 'key', 'payload', 'headers') LIMIT 1) IS NOT NULL THEN
                   format('has unknown field %L',
                          (SELECT k FROM jsonb_object_keys(e.m) k
                            WHERE k NOT IN ('message_id', 'topic', 'key', 'payload', 'headers') LIMIT 1))
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
           END AS what
      INTO bad
      FROM jsonb_array_elements(msgs) WITH ORDINALITY AS e(m, ord)
     WHERE jsonb_typeof(e.m) <> 'object'
        OR EXISTS (SELECT 1 FROM jsonb_object_keys(e.m) k
                    WHERE k NOT IN ('message_id', 'topic', 'key', 'payload', 'headers'))
        OR jsonb_typeof(e.m -> 'message_id') IS DISTINCT FROM 'string'
        OR e.m ->> 'message_id' = ''
        OR jsonb_typeof(e.m -> 'topic') IS DISTINCT FROM 'string'
        OR NOT (e.m ? 'payload')
        OR coalesce(jsonb_typeof(e.m -> 'key'), 'null') NOT IN ('string', 'null')
        OR coalesce(jsonb_typeof(e.m -> 'headers'), 'null') NOT IN ('object', 'null')
     ORDER BY e.ord
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: message %s of the array %s (inbox %s)', fn, bad.idx, bad.what, ib.name),
            HINT = 'Each message is {"message_id": "...", "topic": "...", "key": "..." or null, "payload": <any JSON>, "headers": {...} or null}; nothing was inserted.';
    END IF;

    total := jsonb_array_length(msgs);
    EXECUTE format($q$
        INSERT INTO sluice.%I (message_id, topic, key, payload, headers)
        SELECT e.m ->> 'message_id', e.m ->> 'topic', e.m ->> 'key', e.m -> 'payload',
               coalesce(nullif(e.m -> 'headers', 'null'::jsonb), '{}'::jsonb)
          FROM jsonb_array_elements($1) WITH ORDINALITY AS e(m, ord)
         ORDER BY e.ord
        ON CONFLICT (message_id) DO NOTHING$q$, ib.table_name) USING msgs;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    duplicates := total - inserted;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.inbox_insert(text, jsonb) FROM PUBLIC;
COMMENT ON FUNCTION sluice.inbox_insert(text, jsonb) IS
    'Insert messages into an inbox idempotently (by message_id); returns (inserted, duplicates)';

-- sluice.inbox_claim(name, batch_size, lease, one_per_key) -> claimed messages
--
-- Leases up to batch_size due messages, oldest received first, and returns
-- them. First returns messages whose lease expired to pending (or to dead
-- when they have had max_attempts claims already), then claims pending
-- messages whose next_attempt_at has come, with FOR UPDATE SKIP LOCKED:
-- concurrent claimers never wait for each other and never get the same
-- message. Each claim counts as an attempt and gets a new claim_token; the
-- lease lasts `lease` (default: the inbox's) from the claim. With
-- one_per_key, a message is claimed only when no earlier message of its key
-- is still pending or processing, so per-key order holds (messages without a
-- key are not ordered).
CREATE FUNCTION sluice.inbox_claim(name text, batch_size int, lease interval DEFAULT NULL,
                                   one_per_key boolean DEFAULT false)
RETURNS TABLE (message_id text, topic text, key text, payload jsonb, headers jsonb,
               attempts int, received_at timestamptz, claim_token uuid,
               lease_expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn        constant text := 'sluice.inbox_claim';
    ib        sluice.inboxes := sluice._inbox_lookup(fn, inbox_claim.name);
    lease_len interval := coalesce(inbox_claim.lease, ib.lease);
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: batch_size must be at least 1, got %s (inbox %s)', fn,
                             coalesce(batch_size::text, 'NULL'), ib.name),
            HINT = 'Pass how many messages to claim at most, e.g. 10.';
    END IF;
    PERFORM sluice._inbox_check_interval(fn, 'lease', lease_len, false);

    -- Expired leases: back to pending, or dead after max_attempts claims.
    -- lease_expires_at is kept so that a late ack can say when it expired.
    EXECUTE format($q$
        UPDATE sluice.%1$I m
           SET status = CASE WHEN m.attempts >= $1 THEN 'dead' ELSE 'pending' END,
               last_error = format('lease expired at %%s (attempt %%s of %%s)',
                                   m.lease_expires_at, m.attempts, $1),
               next_attempt_at = clock_timestamp(),
               processed_at = CASE WHEN m.attempts >= $1 THEN clock_timestamp() END,
               claim_token = NULL
         WHERE m.seq IN (SELECT x.seq FROM sluice.%1$I x
                          WHERE x.status = 'processing' AND x.lease_expires_at <= clock_timestamp()
                            FOR UPDATE SKIP LOCKED)$q$, ib.table_name)
        USING ib.max_attempts;

    RETURN QUERY EXECUTE format($q$
        WITH c AS (
            SELECT t.seq FROM sluice.%1$I t
             WHERE t.status = 'pending' AND t.next_attempt_at <= clock_timestamp()
               AND (NOT $3 OR t.key IS NULL OR NOT EXISTS (
                     SELECT 1 FROM sluice.%1$I e
                      WHERE e.key = t.key AND e.seq < t.seq
                        AND e.status IN ('pending', 'processing')))
             ORDER BY t.seq
             LIMIT $1
             FOR UPDATE OF t SKIP LOCKED
        ), u AS (
            UPDATE sluice.%1$I m
               SET status = 'processing', attempts = m.attempts + 1,
                   lease_expires_at = clock_timestamp() + $2, claim_token = gen_random_uuid()
              FROM c WHERE m.seq = c.seq
            RETURNING m.seq, m.message_id, m.topic, m.key, m.payload, m.headers, m.attempts,
                      m.received_at, m.claim_token, m.lease_expires_at
        )
        SELECT u.message_id, u.topic, u.key, u.payload, u.headers, u.attempts, u.received_at,
               u.claim_token, u.lease_expires_at
          FROM u ORDER BY u.seq$q$, ib.table_name)
        USING batch_size, lease_len, coalesce(one_per_key, false);
END
$fn$;

REVOKE ALL ON FUNCTION sluice.inbox_claim(text, int, interval, boolean) FROM PUBLIC;
COMMENT ON FUNCTION sluice.inbox_claim(text, int, interval, boolean) IS
    'Lease up to batch_size due messages of an inbox (SKIP LOCKED); returns them with their claim tokens';

-- sluice._inbox_leased(fn, inbox, message_id, claim_token) -> seq
--
-- Internal, for inbox_ack and inbox_fail: locks the message's row and
-- returns its seq if the caller may settle it: status 'processing', lease
-- not expired (by clock_timestamp(), not the transaction start), and, when
-- claim_token is given, the token of the current claim. Otherwise raises
-- the error that says why.
CREATE FUNCTION sluice._inbox_leased(fn text, ib sluice.inboxes, msg_id text, token uuid)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r    record;
    n    int;
    verb constant text := CASE WHEN fn LIKE '%fail' THEN 'fail' ELSE 'ack' END;
    late constant text := 'A claim must be acknowledged (or failed) before its lease expires; after that the message is handed to the next claimer, so roll back the work done for this claim. Use a longer lease (inbox_claim''s lease argument, or sluice.inboxes.lease) if handling takes longer.';
BEGIN
    IF msg_id IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('%s: message_id is NULL (inbox %s)', fn, ib.name),
            HINT = 'Pass the message_id that sluice.inbox_claim() returned.';
    END IF;
    EXECUTE format('SELECT seq, status, lease_expires_at, claim_token, attempts, processed_at
                      FROM sluice.%I WHERE message_id = $1 FOR UPDATE', ib.table_name)
       INTO r USING msg_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'no_data_found',
            MESSAGE = format('%s: inbox %s has no message %L', fn, ib.name, msg_id),
            HINT = 'Pass the message_id that sluice.inbox_claim() returned; done messages are deleted by sluice.inbox_cleanup() after the retention.';
    END IF;
    IF r.status = 'done' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('%s: message %L of inbox %s is already done (at %s); refusing the %s',
                             fn, msg_id, ib.name, r.processed_at, verb),
            HINT = 'A claim is settled once, by inbox_ack or inbox_fail.';
    END IF;
    IF r.status = 'dead' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('%s: message %L of inbox %s is dead (attempts: %s); refusing the %s',
                             fn, msg_id, ib.name, r.attempts, verb),
            HINT = 'Bring it back with sluice.inbox_replay() to process it again.';
    END IF;
    IF r.status = 'processing' AND r.lease_expires_at > clock_timestamp()
       AND (token IS NULL OR token = r.claim_token) THEN
        RETURN r.seq;
    END IF;
    IF r.status = 'processing' AND r.lease_expires_at > clock_timestamp() THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('%s: message %L of inbox %s was claimed again after your lease expired (the claim token does not match); refusing the late %s',
                             fn, msg_id, ib.name, verb),
            HINT = late;
    END IF;
    IF r.lease_expires_at IS NOT NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('%s: the lease on message %L of inbox %s expired at %s; refusing the late %s',
                             fn, msg_id, ib.name, r.lease_expires_at, verb),
            HINT = late;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'object_not_in_prerequisite_state',
        MESSAGE = format('%s: message %L of inbox %s is not claimed (status %s); refusing the %s',
                         fn, msg_id, ib.name, r.status, verb),
        HINT = 'Claim messages with sluice.inbox_claim() and settle only those it returned.';
END
$fn$;

REVOKE ALL ON FUNCTION sluice._inbox_leased(text, sluice.inboxes, text, uuid) FROM PUBLIC;

-- sluice.inbox_ack(name, message_id, claim_token)
--
-- Marks a claimed message done. Refused (SQLSTATE 55000) unless the message
-- is processing under a lease that has not expired; with claim_token, also
-- unless that is the token of the current claim (which makes an ack from a
-- claimer whose lease expired and whose message was claimed again fail
-- too). Call it in the transaction that commits the message's effects.
CREATE FUNCTION sluice.inbox_ack(name text, message_id text, claim_token uuid DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn  constant text := 'sluice.inbox_ack';
    ib  sluice.inboxes := sluice._inbox_lookup(fn, inbox_ack.name);
    seq bigint := sluice._inbox_leased(fn, ib, inbox_ack.message_id, inbox_ack.claim_token);
BEGIN
    EXECUTE format('UPDATE sluice.%I SET status = ''done'', processed_at = clock_timestamp(),
                           lease_expires_at = NULL, claim_token = NULL
                     WHERE seq = $1', ib.table_name) USING seq;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.inbox_ack(text, text, uuid) FROM PUBLIC;
COMMENT ON FUNCTION sluice.inbox_ack(text, text, uuid) IS
    'Mark a claimed message done; refused when its lease expired (or, with claim_token, when it was claimed again)';

-- sluice.inbox_ack_batch(name, message_ids, claim_tokens) -> acknowledged
--
-- inbox_ack for many messages at once, all or nothing: every message must be
-- processing under a lease that has not expired (and, where a claim token is
-- given, under that claim), otherwise the call raises the error inbox_ack
-- would raise for the first message that fails the check and acknowledges
-- none. One set-based UPDATE instead of a lookup and an update per message,
-- for workers that settle a claimed batch in one transaction.
CREATE FUNCTION sluice.inbox_ack_batch(name text, message_ids text[], claim_tokens uuid[] DEFAULT NULL)
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn   constant text := 'sluice.inbox_ack_batch';
    ib   sluice.inboxes := sluice._inbox_lookup(fn, inbox_ack_batch.name);
    ids  text[] := inbox_ack_batch.message_ids;
    toks uuid[] := inbox_ack_batch.claim_tokens;
    want int;
    n    int;
    bad  record;
BEGIN
    IF ids IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('%s: message_ids is NULL (inbox %s)', fn, ib.name),
            HINT = 'Pass the message_ids that sluice.inbox_claim() returned.';
    END IF;
    IF toks IS NOT NULL AND cardinality(toks) <> cardinality(ids) THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: %s message_ids but %s claim_tokens (inbox %s)', fn,
                             cardinality(ids), cardinality(toks), ib.name),
            HINT = 'Pass one claim token per message id, in the same order, or none.';
    END IF;
    -- The first message that may not be acknowledged, if any: let the
    -- single-message check raise the precise error for it.
    EXECUTE format($q$
        SELECT x.m, x.t
          FROM unnest($1::text[], $2::uuid[]) WITH ORDINALITY AS x(m, t, o)
          LEFT JOIN sluice.%I i ON i.message_id = x.m
         WHERE i.message_id IS NULL OR i.status <> 'processing'
            OR i.lease_expires_at <= clock_timestamp()
            OR (x.t IS NOT NULL AND x.t IS DISTINCT FROM i.claim_token)
         ORDER BY x.o LIMIT 1$q$, ib.table_name)
       INTO bad USING ids, coalesce(toks, array_fill(NULL::uuid, ARRAY[cardinality(ids)]));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        PERFORM sluice._inbox_leased(fn, ib, bad.m, bad.t); -- raises
    END IF;
    SELECT count(DISTINCT m) INTO want FROM unnest(ids) AS m;
    EXECUTE format($q$
        UPDATE sluice.%I i
           SET status = 'done', processed_at = clock_timestamp(),
               lease_expires_at = NULL, claim_token = NULL
          FROM unnest($1::text[], $2::uuid[]) AS x(m, t)
         WHERE i.message_id = x.m AND i.status = 'processing'
           AND i.lease_expires_at > clock_timestamp()
           AND (x.t IS NULL OR x.t = i.claim_token)$q$, ib.table_name)
       USING ids, coalesce(toks, array_fill(NULL::uuid, ARRAY[cardinality(ids)]));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n <> want THEN
        -- A lease ran out between the check and the update.
        RAISE EXCEPTION USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('%s: %s of %s messages of inbox %s could not be acknowledged (a lease expired meanwhile); nothing was acknowledged',
                             fn, want - n, want, ib.name),
            HINT = 'Roll back the work of this batch; its messages are claimable again once their leases expire.';
    END IF;
    RETURN n;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.inbox_ack_batch(text, text[], uuid[]) FROM PUBLIC;
COMMENT ON FUNCTION sluice.inbox_ack_batch(text, text[], uuid[]) IS
    'Mark many claimed messages done at once, all or nothing, with the checks of inbox_ack';

-- sluice.inbox_fail(name, message_id, error, claim_token) -> new status
--
-- Records a failed attempt of a claimed message (same lease checks as
-- inbox_ack). After max_attempts claims the message is dead; otherwise it is
-- pending again, due after retry_backoff * 2^(attempts - 1). Returns the new
-- status, 'pending' or 'dead'.
CREATE FUNCTION sluice.inbox_fail(name text, message_id text, error text,
                                  claim_token uuid DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn     constant text := 'sluice.inbox_fail';
    ib     sluice.inboxes := sluice._inbox_lookup(fn, inbox_fail.name);
    seq    bigint;
    result text;
BEGIN
    IF inbox_fail.error IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('%s: error is NULL (inbox %s, message %L)', fn, ib.name,
                             inbox_fail.message_id),
            HINT = 'Pass a description of the failure; it is kept in last_error for whoever looks at the message later.';
    END IF;
    seq := sluice._inbox_leased(fn, ib, inbox_fail.message_id, inbox_fail.claim_token);
    EXECUTE format($q$
        UPDATE sluice.%I m
           SET status = CASE WHEN m.attempts >= $2 THEN 'dead' ELSE 'pending' END,
               next_attempt_at = clock_timestamp()
                                 + $3 * power(2, least(greatest(m.attempts - 1, 0), 30)),
               processed_at = CASE WHEN m.attempts >= $2 THEN clock_timestamp() END,
               last_error = $4, lease_expires_at = NULL, claim_token = NULL
         WHERE m.seq = $1
        RETURNING m.status$q$, ib.table_name)
       INTO result USING seq, ib.max_attempts, ib.retry_backoff, inbox_fail.error;
    RETURN result;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.inbox_fail(text, text, text, uuid) FROM PUBLIC;
COMMENT ON FUNCTION sluice.inbox_fail(text, text, text, uuid) IS
    'Record a failed attempt: retry later with exponential backoff, or dead after max_attempts';

-- sluice.inbox_replay(name, message_ids) -> messages replayed
--
-- Makes dead (and done) messages pending again, due now, with their attempt
-- count reset to 0. Ids that are unknown, pending or processing are left
-- alone and not counted.
CREATE FUNCTION sluice.inbox_replay(name text, message_ids text[])
RETURNS int
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn constant text := 'sluice.inbox_replay';
    ib sluice.inboxes := sluice._inbox_lookup(fn, inbox_replay.name);
    n  int;
BEGIN
    IF message_ids IS NULL THEN
        RAISE EXCEPTION USING
            ERRCODE = 'null_value_not_allowed',
            MESSAGE = format('%s: message_ids is NULL (inbox %s)', fn, ib.name),
            HINT = format('Pass an array of ids; every dead message: SELECT sluice.inbox_replay(%L, ARRAY(SELECT message_id FROM sluice.%I WHERE status = ''dead''))',
                          ib.name, ib.table_name);
    END IF;
    EXECUTE format($q$
        UPDATE sluice.%I m
           SET status = 'pending', attempts = 0, next_attempt_at = clock_timestamp(),
               processed_at = NULL, lease_expires_at = NULL, claim_token = NULL
         WHERE m.message_id = ANY ($1) AND m.status IN ('dead', 'done')$q$, ib.table_name)
       USING message_ids;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.inbox_replay(text, text[]) FROM PUBLIC;
COMMENT ON FUNCTION sluice.inbox_replay(text, text[]) IS
    'Make dead or done messages pending again with attempts reset; returns how many';

-- sluice.inbox_stats(name) -> one row of counts
CREATE FUNCTION sluice.inbox_stats(name text)
RETURNS TABLE (pending bigint, due bigint, processing bigint, expired_leases bigint,
               done bigint, dead bigint, total bigint, oldest_pending_age interval)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    ib sluice.inboxes := sluice._inbox_lookup('sluice.inbox_stats', inbox_stats.name);
BEGIN
    RETURN QUERY EXECUTE format($q$
        SELECT count(*) FILTER (WHERE status = 'pending'),
               count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= clock_timestamp()),
               count(*) FILTER (WHERE status = 'processing'),
               count(*) FILTER (WHERE status = 'processing' AND lease_expires_at <= clock_timestamp()),
               count(*) FILTER (WHERE status = 'done'),
               count(*) FILTER (WHERE status = 'dead'),
               count(*),
               clock_timestamp() - min(received_at) FILTER (WHERE status = 'pending')
          FROM sluice.%I$q$, ib.table_name);
END
$fn$;

REVOKE ALL ON FUNCTION sluice.inbox_stats(text) FROM PUBLIC;
COMMENT ON FUNCTION sluice.inbox_stats(text) IS
    'Counts of an inbox''s messages per status, due and expired leases, and the age of the oldest pending one';

-- sluice.inbox_cleanup(name, older_than, max_rows) -> rows deleted
--
-- Deletes done messages processed more than older_than ago (default: the
-- inbox's retention), at most max_rows per call, oldest first. Dead,
-- pending and processing messages are never deleted. A deleted message's id
-- no longer deduplicates: the same id inserted again is a new message.
CREATE FUNCTION sluice.inbox_cleanup(name text, older_than interval DEFAULT NULL,
                                     max_rows int DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    fn   constant text := 'sluice.inbox_cleanup';
    ib   sluice.inboxes := sluice._inbox_lookup(fn, inbox_cleanup.name);
    keep interval := coalesce(older_than, ib.retention);
    n    bigint;
BEGIN
    PERFORM sluice._inbox_check_interval(fn, 'older_than', keep, true);
    IF max_rows IS NULL OR max_rows < 1 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('%s: max_rows must be at least 1, got %s (inbox %s)', fn,
                             coalesce(max_rows::text, 'NULL'), ib.name),
            HINT = 'Pass how many rows one call may delete, e.g. 10000; call again to delete more.';
    END IF;
    EXECUTE format($q$
        DELETE FROM sluice.%1$I
         WHERE seq IN (SELECT seq FROM sluice.%1$I
                        WHERE status = 'done' AND processed_at < clock_timestamp() - $1
                        ORDER BY processed_at LIMIT $2
                          FOR UPDATE SKIP LOCKED)$q$, ib.table_name)
       USING keep, max_rows;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

REVOKE ALL ON FUNCTION sluice.inbox_cleanup(text, interval, int) FROM PUBLIC;
COMMENT ON FUNCTION sluice.inbox_cleanup(text, interval, int) IS
    'Delete done messages older than the retention (or older_than); returns how many';
