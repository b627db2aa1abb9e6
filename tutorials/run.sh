#!/usr/bin/env bash
# tutorials/run.sh - runs tutorials/outbox-to-kafka.md from start to end,
# without a human, and checks that every step produced what the tutorial
# says it produces.
#
#   tutorials/run.sh                       build into build/, run every step
#   SLUICE_BUILD_DIR=build-x tutorials/run.sh
#   SLUICE_TUTORIAL_NO_BUILD=1 ...         use the build as it is (ctest does)
#
# The commands are the tutorial's, in the tutorial's order. What the tutorial
# leaves to the reader's eyes ("you see three records") is checked here; every
# wait is a bounded poll (TUTORIAL_TIMEOUT_S, default 30 s), never a bare
# sleep. Everything the script starts (PostgreSQL, the broker, the relay) is
# stopped on exit, also on failure. Exit 0 when all checks passed, 1 otherwise.
set -euo pipefail

TUTORIAL_LOGS=(relay.log)
TUTORIAL_PIDS=(RELAY_PID)
RELAY_PID=""
# shellcheck source=tutorials/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Helpers for the checks (not tutorial steps).
records() {   # key|partition|offset|sluice-id of every record of shop.orders
  kcat -C -b "$KAFKA_BROKERS" -t shop.orders -o beginning -e -q \
    -f '%k|%p|%o|%h|%s\n' 2>/dev/null | sed -E 's/\|sluice-id=([^,|]*)[^|]*\|/|\1|/'
}
have_records() { [[ $(records | grep -c .) -ge $1 ]]; }
delivered_is() { [[ "$(psql_value "SELECT delivered FROM sluice.relay_status WHERE pipeline = 'orders-to-kafka'")" == "$1" ]]; }
relay_running() { grep -q 'event=pipeline.state pipeline=orders-to-kafka from=setup to=running' "$SLUICE_ENV_DIR/relay.log"; }
show_records() {
  kcat -C -b "$KAFKA_BROKERS" -t shop.orders -o beginning -e -q \
       -f 'partition=%p offset=%o key=%k\n  headers: %h\n  value:   %s\n'
}

# --------------------------------------------------------------------------
step "1. Build sluice"
# ctest runs this script against its own, already built tree.
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
scripts/dev-env broker "$SLUICE_ENV_DIR" topic shop.orders 3

# --------------------------------------------------------------------------
step "3. Install the sluice schema"
"$BUILD"/sluice init --db "$SLUICE_PG_URL"
[[ "$(psql_value "SELECT count(*) FROM sluice.schema_version")" -ge 1 &&
   "$(psql_value "SELECT to_regprocedure('sluice.publish(text,jsonb,text,jsonb)') IS NOT NULL")" == t ]] \
  || fail "sluice init did not install the schema (no sluice.publish)"

# --------------------------------------------------------------------------
step "4. Create an application table"
psql -X -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
CREATE TABLE orders (
    id       int PRIMARY KEY,
    customer text NOT NULL,
    status   text NOT NULL,
    total    numeric(10,2) NOT NULL
);
SQL

# --------------------------------------------------------------------------
step "5. Publish events inside transactions"
psql -X -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
-- Order 1 is created: the row and its event commit together.
BEGIN;
INSERT INTO orders VALUES (1, 'ada', 'created', 42.50);
SELECT sluice.publish('orders',
                      '{"order_id": 1, "status": "created", "total": 42.50}',
                      key     => 'order-1',
                      headers => '{"trace-id": "7f3a9c"}');
COMMIT;

-- Order 1 is paid and order 2 is created, in one transaction.
BEGIN;
UPDATE orders SET status = 'paid' WHERE id = 1;
SELECT sluice.publish('orders', '{"order_id": 1, "status": "paid"}', 'order-1');
INSERT INTO orders VALUES (2, 'grace', 'created', 7.00);
SELECT sluice.publish('orders', '{"order_id": 2, "status": "created", "total": 7.00}', 'order-2');
COMMIT;

-- Order 3 is rolled back: its event is rolled back with it.
BEGIN;
INSERT INTO orders VALUES (3, 'nobody', 'created', 0);
SELECT sluice.publish('orders', '{"order_id": 3, "status": "created"}', 'order-3');
ROLLBACK;

SELECT id, txid, topic, key, payload FROM sluice.outbox ORDER BY id;
SQL
[[ "$(psql_value "SELECT string_agg(key, ',' ORDER BY id) FROM sluice.outbox")" == "order-1,order-1,order-2" ]] \
  || fail "the outbox does not hold exactly the three committed events"

# --------------------------------------------------------------------------
step "6. Write the relay configuration"
cat >"$SLUICE_ENV_DIR/relay.json" <<'JSON'
{
  // Connection strings come from the environment; they are never printed.
  "database": "${ENV:SLUICE_PG_URL}",
  "pipelines": [
    {
      "name": "orders-to-kafka",
      "topics": ["orders"],
      "sink": {
        "type": "kafka",
        "brokers": "${ENV:KAFKA_BROKERS}",
        "topic": "shop.{topic}"
      }
    }
  ]
}
JSON

# --------------------------------------------------------------------------
step "7. Check the configuration"
"$BUILD"/sluice check-config --config "$SLUICE_ENV_DIR/relay.json"

# --------------------------------------------------------------------------
step "8. Run the relay"
"$BUILD"/sluice relay --config "$SLUICE_ENV_DIR/relay.json" 2>"$SLUICE_ENV_DIR/relay.log" &
RELAY_PID=$!
wait_for "pipeline in state running" relay_running
cat "$SLUICE_ENV_DIR/relay.log"

# --------------------------------------------------------------------------
step "9. Read the events from Kafka"
wait_for "3 records in shop.orders" have_records 3
show_records
out=$(records)
[[ $(grep -c . <<<"$out") -eq 3 ]] || fail "expected 3 records, got: $out"
grep -q '^order-3|' <<<"$out" && fail "the rolled-back event reached Kafka"
# Both events of order-1 are in one partition, created before paid.
[[ $(grep '^order-1|' <<<"$out" | cut -d'|' -f2 | sort -u | wc -l) -eq 1 ]] \
  || fail "the events of order-1 are in more than one partition"
[[ "$(grep '^order-1|' <<<"$out" | sort -t'|' -k3,3n | grep -o '"status": "[a-z]*"' | tr '\n' ' ')" \
   == '"status": "created" "status": "paid" ' ]] || fail "order-1 events out of order"

# --------------------------------------------------------------------------
step "10. Kill the relay with SIGKILL, publish while it is down, restart it"
wait_for "checkpoint at 3 delivered" delivered_is 3
psql -X "$SLUICE_PG_URL" -c "SELECT pipeline, delivered, since_update FROM sluice.relay_status"
kill -KILL "$RELAY_PID"
wait "$RELAY_PID" 2>/dev/null || echo "relay exit status: $? (killed by SIGKILL)"
RELAY_PID=""

psql -X -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
BEGIN;
UPDATE orders SET status = 'shipped' WHERE id = 1;
SELECT sluice.publish('orders', '{"order_id": 1, "status": "shipped"}', 'order-1');
COMMIT;
BEGIN;
UPDATE orders SET status = 'paid' WHERE id = 2;
SELECT sluice.publish('orders', '{"order_id": 2, "status": "paid"}', 'order-2');
COMMIT;
SQL

"$BUILD"/sluice relay --config "$SLUICE_ENV_DIR/relay.json" 2>"$SLUICE_ENV_DIR/relay.log" &
RELAY_PID=$!
wait_for "5 records in shop.orders" have_records 5
show_records
grep 'event=pipeline.resume' "$SLUICE_ENV_DIR/relay.log"
out=$(records)
[[ $(grep -c . <<<"$out") -eq 5 ]] || fail "expected 5 records, got: $out"
[[ $(cut -d'|' -f4 <<<"$out" | sort -u | wc -l) -eq 5 ]] || fail "duplicate sluice-id: $out"
[[ "$(grep '^order-1|' <<<"$out" | sort -t'|' -k3,3n | grep -o '"status": "[a-z]*"' | tr '\n' ' ')" \
   == '"status": "created" "status": "paid" "status": "shipped" ' ]] || fail "order-1 events out of order"
wait_for "checkpoint at 5 delivered" delivered_is 5

# --------------------------------------------------------------------------
step "11. Stop the relay with SIGTERM"
kill -TERM "$RELAY_PID"
rc=0
wait "$RELAY_PID" || rc=$?
RELAY_PID=""
echo "relay exit status: $rc"
((rc == 0)) || fail "the relay exited with status $rc after SIGTERM"
cat "$SLUICE_ENV_DIR/relay.log"
psql -X "$SLUICE_PG_URL" -c "SELECT * FROM sluice.relay_status"
grep -q 'event=pipeline.closed pipeline=orders-to-kafka delivered_total=5 unacknowledged=0 checkpoint_saved=true' \
  "$SLUICE_ENV_DIR/relay.log" || fail "the pipeline did not close cleanly"
# Retention (outbox_retention_s, default one hour) has not removed them yet.
[[ "$(psql_value "SELECT count(*) FROM sluice.outbox")" == 5 ]] \
  || fail "the outbox does not hold the five delivered events any more"

# --------------------------------------------------------------------------
step "12. Clean up"
scripts/dev-env stop "$SLUICE_ENV_DIR"
SLUICE_ENV_DIR=""
