#!/usr/bin/env bash
# tutorials/run-outbox-to-inbox.sh - runs tutorials/outbox-to-inbox.md from
# start to end, without a human, and checks that every step produced what the
# tutorial says it produces.
#
#   tutorials/run-outbox-to-inbox.sh                 build into build/, run every step
#   SLUICE_BUILD_DIR=build-x tutorials/run-outbox-to-inbox.sh
#   SLUICE_TUTORIAL_NO_BUILD=1 ...                   use the build as it is (ctest does)
#
# The commands are the tutorial's, in the tutorial's order. Where the tutorial
# says "wait a second" or "run it until", the script polls a condition,
# bounded (TUTORIAL_TIMEOUT_S, default 30 s), never a bare sleep. Everything
# the script starts (PostgreSQL, the broker, both relays) is stopped on exit,
# also on failure. Exit 0 when all checks passed, 1 otherwise.
set -euo pipefail

TUTORIAL_LOGS=(relay-a.log relay-b.log)
TUTORIAL_PIDS=(RELAY_B_PID RELAY_A_PID)
RELAY_A_PID="" RELAY_B_PID=""
# shellcheck source=tutorials/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Helpers for the checks (not tutorial steps).
down_value() { psql -X -qAt -v ON_ERROR_STOP=1 "$DOWNSTREAM_URL" -c "$1"; }
down_is() { [[ "$(down_value "$1")" == "$2" ]]; }
b_log_has() { grep -q -- "$1" "$SLUICE_ENV_DIR/relay-b.log"; }
a_running() { grep -q 'event=pipeline.state pipeline=to-kafka from=setup to=running' "$SLUICE_ENV_DIR/relay-a.log"; }
inbox_count_is() { down_is "SELECT count(*) FROM sluice.inbox_orders" "$1"; }
inbox_count_at_least() { (($(down_value "SELECT count(*) FROM sluice.inbox_orders") >= $1)); }
# The message of order $1 is due for another attempt.
order_due() { down_is "SELECT status = 'pending' AND next_attempt_at <= now() FROM sluice.inbox_orders WHERE payload->>'order_id' = '$1'" t; }
# The worker, as the tutorial runs it, with its output appended to worker.out.
worker() { psql -X -q -v ON_ERROR_STOP=1 "$DOWNSTREAM_URL" -f "$SLUICE_ENV_DIR/worker.sql" | tee -a "$SLUICE_ENV_DIR/worker.out"; }
# The tutorial's "until nothing is left" loop, bounded.
nothing_left() { down_is "SELECT pending + processing FROM sluice.inbox_stats('orders')" 0; }
drain_inbox() {
  local end=$((SECONDS + TIMEOUT_S))
  until nothing_left; do
    ((SECONDS < end)) || fail "the worker did not empty the inbox after ${TIMEOUT_S}s"
    psql -X -q -v ON_ERROR_STOP=1 "$DOWNSTREAM_URL" -f "$SLUICE_ENV_DIR/worker.sql" >/dev/null
  done
}
# True when process $1 has exited (a zombie not yet reaped counts as exited).
proc_gone() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [[ "${stat%% *}" == Z ]]
}

# --------------------------------------------------------------------------
step "1. Build sluice"
if [[ "${SLUICE_TUTORIAL_NO_BUILD:-0}" != 1 ]]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$BUILD" -j"$(nproc)" >/dev/null
fi
"$BUILD"/sluice --version

# --------------------------------------------------------------------------
step "2. Start PostgreSQL and a Kafka broker"
SLUICE_TEST_BROKER=$(cd "$BUILD" && pwd)/tests/helpers/sl_test_broker
export SLUICE_TEST_BROKER
eval "$(scripts/dev-env start)"
echo "PostgreSQL: $SLUICE_PG_URL"
echo "Kafka:      $KAFKA_BROKERS"
scripts/dev-env broker "$SLUICE_ENV_DIR" topic orders 3 | tee "$SLUICE_ENV_DIR/topic.out"
grep -qx 'ok topic orders 3' "$SLUICE_ENV_DIR/topic.out" || fail "the topic was not created"

# --------------------------------------------------------------------------
step "3. Two databases"
"$BUILD"/sluice init --db "$SLUICE_PG_URL" 2>&1 | tail -n 1
psql -X -q -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" -c 'CREATE DATABASE downstream'
DOWNSTREAM_URL=${SLUICE_PG_URL%/*}/downstream
echo "$DOWNSTREAM_URL"
"$BUILD"/sluice init --db "$DOWNSTREAM_URL" 2>&1 | tail -n 1
[[ "$DOWNSTREAM_URL" == postgresql://*/downstream ]] || fail "unexpected downstream URL $DOWNSTREAM_URL"
down_is "SELECT to_regprocedure('sluice.inbox_insert(text,jsonb)') IS NOT NULL" t \
  || fail "sluice init did not install the inbox functions downstream"

# --------------------------------------------------------------------------
step "4. The inbox and the downstream service's tables"
psql -X -q -v ON_ERROR_STOP=1 "$DOWNSTREAM_URL" <<'SQL'
SELECT sluice.create_inbox('orders', max_attempts => 3, retry_backoff => '1 second');
CREATE TABLE products (sku text PRIMARY KEY);
INSERT INTO products VALUES ('mug'), ('tea');
CREATE TABLE shipments (
    id         bigserial PRIMARY KEY,
    order_id   int  NOT NULL,
    sku        text NOT NULL REFERENCES products,
    message_id text NOT NULL
);
SQL
down_is "SELECT max_attempts || ' ' || retry_backoff FROM sluice.inboxes WHERE name = 'orders'" "3 00:00:01" \
  || fail "the inbox orders was not created as asked"

# --------------------------------------------------------------------------
step "5. Relay A: outbox -> Kafka"
cat >"$SLUICE_ENV_DIR/relay-a.json" <<'JSON'
{
  "database": "${ENV:SLUICE_PG_URL}",
  "pipelines": [
    { "name": "to-kafka", "topics": ["orders"],
      "sink": { "type": "kafka", "brokers": "${ENV:KAFKA_BROKERS}" } }
  ]
}
JSON
"$BUILD"/sluice relay --config "$SLUICE_ENV_DIR/relay-a.json" 2>"$SLUICE_ENV_DIR/relay-a.log" &
RELAY_A_PID=$!
wait_for "relay A running" a_running
grep 'event=pipeline.state' "$SLUICE_ENV_DIR/relay-a.log" | tail -n 1

# --------------------------------------------------------------------------
step "6. Relay B: Kafka -> inbox"
export DOWNSTREAM_URL
cat >"$SLUICE_ENV_DIR/relay-b.json" <<'JSON'
{
  "database": "${ENV:DOWNSTREAM_URL}",
  "checkpoint_interval_ms": 60000,
  "pipelines": [
    { "name": "orders-in",
      "source": { "type": "kafka", "brokers": "${ENV:KAFKA_BROKERS}",
                  "topics": ["orders"], "group": "orders-inbox",
                  "properties": { "session.timeout.ms": 6000 } },
      "sink": { "type": "inbox", "inbox": "orders" } }
  ]
}
JSON
"$BUILD"/sluice check-config --config "$SLUICE_ENV_DIR/relay-b.json" 2>&1 >/dev/null \
  | tee "$SLUICE_ENV_DIR/check.out"
grep -q 'relay-b.json: configuration is valid (1 pipeline)' "$SLUICE_ENV_DIR/check.out" \
  || fail "check-config did not accept relay B's configuration"
"$BUILD"/sluice relay --config "$SLUICE_ENV_DIR/relay-b.json" 2>"$SLUICE_ENV_DIR/relay-b.log" &
RELAY_B_PID=$!
wait_for "partitions assigned to relay B" b_log_has 'event=source.assigned pipeline=orders-in partitions=3'
grep -E 'event=(pipeline.start|source.assigned)' "$SLUICE_ENV_DIR/relay-b.log" | cut -d' ' -f3-
b_log_has 'event=pipeline.start pipeline=orders-in source=kafka group=orders-inbox topics=1 format=sluice sink=inbox' \
  || fail "relay B did not start a Kafka-source pipeline"

# --------------------------------------------------------------------------
step "7. Publish, and watch the events land in the inbox"
psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
BEGIN;
SELECT sluice.publish('orders', '{"order_id": 1, "sku": "mug"}', 'customer-a');
SELECT sluice.publish('orders', '{"order_id": 2, "sku": "tea"}', 'customer-a');
COMMIT;
BEGIN;
SELECT sluice.publish('orders', '{"order_id": 3, "sku": "tea"}', 'customer-b');
SELECT sluice.publish('orders', '{"order_id": 4, "sku": "mug"}', 'customer-c');
SELECT sluice.publish('orders', '{"order_id": 5, "sku": "tea"}', 'customer-c');
COMMIT;
SQL
wait_for "5 messages in the inbox" inbox_count_is 5
psql -X "$DOWNSTREAM_URL" -c "SELECT message_id, key, payload, status FROM sluice.inbox_orders ORDER BY payload->>'order_id'"
INSTANCE=$(psql -X -qAt "$SLUICE_PG_URL" -c "SELECT instance_id FROM sluice.meta")
down_is "SELECT string_agg(message_id || ' ' || key || ' ' || status, ',' ORDER BY payload->>'order_id') FROM sluice.inbox_orders" \
  "$INSTANCE:1 customer-a pending,$INSTANCE:2 customer-a pending,$INSTANCE:3 customer-b pending,$INSTANCE:4 customer-c pending,$INSTANCE:5 customer-c pending" \
  || fail "the inbox does not hold the five events under their outbox ids"

# --------------------------------------------------------------------------
step "8. A worker"
cat >"$SLUICE_ENV_DIR/worker.sql" <<'SQL'
BEGIN;
-- 1. Claim: at most one message per key, for 30 seconds (the inbox's lease).
CREATE TEMP TABLE claimed ON COMMIT DROP AS
  SELECT message_id, key, payload, claim_token, attempts
    FROM sluice.inbox_claim('orders', 100, one_per_key => true);
-- 2. The work: ship what is in the catalogue.
INSERT INTO shipments (order_id, sku, message_id)
  SELECT (payload->>'order_id')::int, payload->>'sku', message_id
    FROM claimed WHERE payload->>'sku' IN (SELECT sku FROM products);
-- 3. Settle: ack what was shipped, fail the rest.
SELECT sluice.inbox_ack_batch('orders', array_agg(message_id), array_agg(claim_token)) AS shipped
  FROM claimed WHERE message_id IN (SELECT message_id FROM shipments)
HAVING count(*) > 0;
SELECT key, payload->>'order_id' AS order_id, attempts,
       sluice.inbox_fail('orders', message_id, 'unknown sku ' || (payload->>'sku'), claim_token) AS now
  FROM claimed WHERE message_id NOT IN (SELECT message_id FROM shipments);
COMMIT;
SQL
: >"$SLUICE_ENV_DIR/worker.out"
worker
grep -qE '^ +3$' "$SLUICE_ENV_DIR/worker.out" || fail "the first round did not ship 3 orders"
down_is "SELECT string_agg(order_id::text, ' ' ORDER BY order_id) FROM shipments" "1 3 4" \
  || fail "the first round did not ship orders 1, 3 and 4"
worker
down_is "SELECT string_agg(order_id::text, ' ' ORDER BY order_id) FROM shipments" "1 2 3 4 5" \
  || fail "the second round did not ship orders 2 and 5"
psql -X "$DOWNSTREAM_URL" -c "SELECT order_id, sku, message_id FROM shipments ORDER BY order_id"
psql -X "$DOWNSTREAM_URL" -c "SELECT pending, processing, done, dead FROM sluice.inbox_stats('orders')"
down_is "SELECT pending || ' ' || processing || ' ' || done || ' ' || dead FROM sluice.inbox_stats('orders')" "0 0 5 0" \
  || fail "the inbox is not 5 done"

# --------------------------------------------------------------------------
step "9. A message that fails"
psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" \
  -c "SELECT sluice.publish('orders', '{\"order_id\": 6, \"sku\": \"lamp\"}', 'customer-d')"
wait_for "order 6 in the inbox" inbox_count_is 6
: >"$SLUICE_ENV_DIR/worker.out"
worker
grep -qE '^ customer-d \| 6 +\| +1 \| pending$' "$SLUICE_ENV_DIR/worker.out" || fail "attempt 1 did not end pending"
psql -X "$DOWNSTREAM_URL" -c "SELECT status, attempts, next_attempt_at - now() AS retry_in, last_error FROM sluice.inbox_orders WHERE key = 'customer-d'"
wait_for "order 6 due again" order_due 6
worker
wait_for "order 6 due again" order_due 6
worker
grep -qE '^ customer-d \| 6 +\| +2 \| pending$' "$SLUICE_ENV_DIR/worker.out" || fail "attempt 2 did not end pending"
grep -qE '^ customer-d \| 6 +\| +3 \| dead$' "$SLUICE_ENV_DIR/worker.out" || fail "attempt 3 did not end dead"
psql -X -v ON_ERROR_STOP=1 "$DOWNSTREAM_URL" <<'SQL'
SELECT message_id, attempts, last_error FROM sluice.inbox_orders WHERE status = 'dead';
INSERT INTO products VALUES ('lamp');
SELECT sluice.inbox_replay('orders', ARRAY(SELECT message_id FROM sluice.inbox_orders WHERE status = 'dead'));
SQL
: >"$SLUICE_ENV_DIR/worker.out"
worker
grep -qE '^ +1$' "$SLUICE_ENV_DIR/worker.out" || fail "the replayed order was not shipped"
down_is "SELECT count(*) FROM shipments WHERE order_id = 6" 1 || fail "order 6 is not shipped once"

# --------------------------------------------------------------------------
step "10. Kill relay B mid-stream"
psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" \
  -c "SELECT count(sluice.publish('orders', jsonb_build_object('order_id', g, 'sku', 'mug'), 'customer-' || g % 20)) FROM generate_series(101, 300) g"
wait_for "the first of them in the inbox" inbox_count_at_least 7
kill -KILL "$RELAY_B_PID"
wait "$RELAY_B_PID" 2>/dev/null || true
RELAY_B_PID=""
psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" \
  -c "SELECT count(sluice.publish('orders', jsonb_build_object('order_id', g, 'sku', 'tea'), 'customer-' || g % 20)) FROM generate_series(301, 400) g"
STORED=$(down_value "SELECT count(*) FROM sluice.inbox_orders")
echo "in the inbox when relay B died: $STORED"
"$BUILD"/sluice relay --config "$SLUICE_ENV_DIR/relay-b.json" 2>"$SLUICE_ENV_DIR/relay-b.log" &
RELAY_B_PID=$!
wait_for "all 306 messages in the inbox" inbox_count_is 306
grep 'event=inbox.duplicates' "$SLUICE_ENV_DIR/relay-b.log" | tail -n 1 | cut -d' ' -f3-
DUPS=$(grep 'event=inbox.duplicates' "$SLUICE_ENV_DIR/relay-b.log" | tail -n 1 | sed -n 's/.* duplicates_total=\([0-9]*\).*/\1/p')
[[ "$DUPS" == "$STORED" ]] || fail "relay B counted ${DUPS:-no} duplicates, not $STORED"
drain_inbox
psql -X "$DOWNSTREAM_URL" -c "SELECT count(*) AS shipments, count(DISTINCT message_id) AS messages, count(DISTINCT order_id) AS orders FROM shipments"
down_is "SELECT count(*) || ' ' || count(DISTINCT message_id) || ' ' || count(DISTINCT order_id) FROM shipments" "306 306 306" \
  || fail "not every order was shipped exactly once"
down_is "SELECT count(*) FROM (SELECT order_id, lag(order_id) OVER (PARTITION BY m.key ORDER BY s.id) AS prev FROM shipments s JOIN sluice.inbox_orders m USING (message_id)) x WHERE prev > order_id" 0 \
  || fail "orders of a customer were shipped out of order"

# --------------------------------------------------------------------------
step "11. A record that is not a sluice envelope"
echo 'order 7: one mug, please' | kcat -P -b "$KAFKA_BROKERS" -t orders -k customer-e
wait_for "the record in the inbox" inbox_count_is 307
psql -X "$DOWNSTREAM_URL" -c "SELECT message_id, status, payload, last_error FROM sluice.inbox_orders WHERE key = 'customer-e'"
down_is "SELECT count(*) FROM sluice.inbox_orders WHERE key = 'customer-e' AND status = 'dead' AND message_id ~ '^orders/[0-2]/[0-9]+$' AND payload = '{\"raw\": \"order 7: one mug, please\"}' AND last_error LIKE 'the record value is not valid JSON%'" 1 \
  || fail "the invalid record is not a dead message with its raw value and the reason"
grep 'event=source.invalid' "$SLUICE_ENV_DIR/relay-b.log" | cut -d' ' -f2-
b_log_has 'level=warn event=source.invalid pipeline=orders-in topic=orders' || fail "relay B did not log the invalid record"

# --------------------------------------------------------------------------
step "12. Stop everything"
kill -TERM "$RELAY_B_PID"
rc=0
wait "$RELAY_B_PID" || rc=$?
RELAY_B_PID=""
kill -TERM "$RELAY_A_PID"
wait "$RELAY_A_PID" || rc=$((rc + $?))
RELAY_A_PID=""
echo "relay exit statuses: $rc"
((rc == 0)) || fail "a relay exited with a non-zero status after SIGTERM"
grep -E 'event=(inbox.closed|pipeline.stopped)' "$SLUICE_ENV_DIR/relay-b.log" | cut -d' ' -f3-
b_log_has "event=inbox.closed pipeline=orders-in inserted_total=$((307 - STORED)) duplicates_total=$STORED" \
  || fail "relay B's totals are not $((307 - STORED)) inserted, $STORED duplicates"
scripts/dev-env stop "$SLUICE_ENV_DIR"
[[ ! -e "$SLUICE_ENV_DIR" ]] || fail "the environment directory is still there"
SLUICE_ENV_DIR=""
