#!/usr/bin/env bash
# tutorials/run-listen-notify.sh - runs tutorials/listen-notify.md from start
# to end, without a human, and checks that every step produced what the
# tutorial says it produces.
#
#   tutorials/run-listen-notify.sh                 build into build/, run every step
#   SLUICE_BUILD_DIR=build-x tutorials/run-listen-notify.sh
#   SLUICE_TUTORIAL_NO_BUILD=1 ...                 use the build as it is (ctest does)
#
# The commands are the tutorial's, in the tutorial's order. The tutorial's
# interactive psql session ("in a second terminal") is a psql reading a FIFO:
# the script writes to it the lines the reader types. Every wait is a bounded
# poll (TUTORIAL_TIMEOUT_S, default 30 s), never a bare sleep. Everything the
# script starts (PostgreSQL, the broker, the relay, psql, the example
# listener) is stopped on exit, also on failure. Exit 0 when all checks
# passed, 1 otherwise.
set -euo pipefail

TUTORIAL_LOGS=(relay.log psql.out listener.err)
TUTORIAL_PIDS=(PSQL_PID LISTENER_PID RELAY_PID)
RELAY_PID="" LISTENER_PID="" PSQL_PID=""
# shellcheck source=tutorials/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Helpers for the checks (not tutorial steps).
relay_running() { grep -q 'event=pipeline.state pipeline=shop-notify from=setup to=running' "$SLUICE_ENV_DIR/relay.log"; }
delivered_is() { [[ "$(psql_value "SELECT delivered FROM sluice.relay_status WHERE pipeline = 'shop-notify'")" == "$1" ]]; }
# The second terminal: what the reader types goes to fd 3.
terminal2() { printf '%s\n' "$@" >&3; }
psql_says() { grep -qF -- "$1" "$SLUICE_ENV_DIR/psql.out"; }
notifications() { grep -c '^Asynchronous notification "shop_orders"' "$SLUICE_ENV_DIR/psql.out" || true; }
# psql prints notifications after each command: type ";" until N arrived.
psql_has_notifications() {
  terminal2 ';'
  [[ $(notifications) -ge $1 ]]
}
# The whole line, not its start: the check right after reads it exactly.
listener_ready() { grep -q '^caught up: .*; listening on shop_orders$' "$SLUICE_ENV_DIR/listener.err"; }
listener_lines() { [[ $(grep -c . "$SLUICE_ENV_DIR/listener.out") -ge $1 ]]; }
# Outbox ids in listener.out, one per line (the relay writes "outbox_id":N,
# jsonb::text writes "outbox_id": N).
listener_ids() { grep -oE '"outbox_id": ?[0-9]+' "$SLUICE_ENV_DIR/listener.out" | grep -oE '[0-9]+$' | tr '\n' ' '; }
# True when process $1 has exited (a zombie not yet reaped counts as exited).
proc_gone() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  stat=${stat##*) }
  [[ "${stat%% *}" == Z ]]
}

# --------------------------------------------------------------------------
step "1. Build sluice and the example listener"
if [[ "${SLUICE_TUTORIAL_NO_BUILD:-0}" != 1 ]]; then
  cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$BUILD" -j"$(nproc)" >/dev/null
fi
"$BUILD"/sluice --version
ls "$BUILD"/tutorials/sluice-listen-example
[[ -x "$BUILD"/tutorials/sluice-listen-example ]] || fail "sluice-listen-example was not built"

# --------------------------------------------------------------------------
step "2. Start PostgreSQL"
SLUICE_TEST_BROKER=$(cd "$BUILD" && pwd)/tests/helpers/sl_test_broker
export SLUICE_TEST_BROKER
eval "$(scripts/dev-env start)"
echo "PostgreSQL: $SLUICE_PG_URL"
echo "Settings:   $SLUICE_ENV_DIR/env"
[[ -f "$SLUICE_ENV_DIR/env" ]] || fail "no settings file $SLUICE_ENV_DIR/env"

# --------------------------------------------------------------------------
step "3. Install the sluice schema"
"$BUILD"/sluice init --db "$SLUICE_PG_URL"
[[ "$(psql_value "SELECT to_regprocedure('sluice.outbox_messages_since(pg_snapshot,text[])') IS NOT NULL")" == t ]] \
  || fail "sluice init did not install sluice.outbox_messages_since"

# --------------------------------------------------------------------------
step "4. Write and check the relay configuration"
cat >"$SLUICE_ENV_DIR/relay.json" <<'JSON'
{
  "database": "${ENV:SLUICE_PG_URL}",
  "pipelines": [
    {
      "name": "shop-notify",
      "topics": ["orders", "payments"],
      "sink": { "type": "notify", "channel": "shop_{topic}" }
    }
  ]
}
JSON
"$BUILD"/sluice check-config --config "$SLUICE_ENV_DIR/relay.json"

# --------------------------------------------------------------------------
step "5. Start the relay"
"$BUILD"/sluice relay --config "$SLUICE_ENV_DIR/relay.json" 2>"$SLUICE_ENV_DIR/relay.log" &
RELAY_PID=$!
wait_for "pipeline in state running" relay_running
cat "$SLUICE_ENV_DIR/relay.log"
grep -q 'event=pipeline.start pipeline=shop-notify sink=notify' "$SLUICE_ENV_DIR/relay.log" \
  || fail "the pipeline did not start with the notify sink"

# --------------------------------------------------------------------------
step "6. LISTEN in psql (second terminal)"
# The reader opens a second terminal, sources the settings and starts psql;
# here psql reads what the reader types from a FIFO.
mkfifo "$SLUICE_ENV_DIR/terminal2"
(
  # shellcheck disable=SC1091
  source "$SLUICE_ENV_DIR/env"
  exec psql -X "$SLUICE_PG_URL"
) <"$SLUICE_ENV_DIR/terminal2" >"$SLUICE_ENV_DIR/psql.out" 2>&1 &
PSQL_PID=$!
exec 3>"$SLUICE_ENV_DIR/terminal2"
terminal2 'LISTEN shop_orders;'
wait_for "LISTEN from psql" psql_says LISTEN
cat "$SLUICE_ENV_DIR/psql.out"

# --------------------------------------------------------------------------
step "7. Start the example listener"
"$BUILD"/tutorials/sluice-listen-example "$SLUICE_PG_URL" shop_orders orders \
    >"$SLUICE_ENV_DIR/listener.out" 2>"$SLUICE_ENV_DIR/listener.err" &
LISTENER_PID=$!
wait_for "catch-up of the example listener" listener_ready
cat "$SLUICE_ENV_DIR/listener.err"
grep -qE '^watermark [0-9]+:[0-9]+:' "$SLUICE_ENV_DIR/listener.err" || fail "no watermark printed"
grep -qx 'caught up: 0 messages; listening on shop_orders' "$SLUICE_ENV_DIR/listener.err" \
  || fail "a first start caught up on something"

# --------------------------------------------------------------------------
step "8. Publish events"
psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
BEGIN;
SELECT sluice.publish('orders', '{"order_id": 1, "status": "created"}', 'order-1');
COMMIT;
BEGIN;
SELECT sluice.publish('orders', '{"order_id": 1, "status": "paid"}', 'order-1');
SELECT sluice.publish('payments', '{"order_id": 1, "amount": 42.50}', 'order-1');
COMMIT;
SQL
[[ "$(psql_value "SELECT string_agg(id || ':' || topic, ',' ORDER BY id) FROM sluice.outbox")" \
   == "1:orders,2:orders,3:payments" ]] || fail "the outbox does not hold exactly the three committed events"

# --------------------------------------------------------------------------
step "9. See them arrive"
wait_for "2 notifications in psql" psql_has_notifications 2
terminal2 ';'
grep '^Asynchronous notification' "$SLUICE_ENV_DIR/psql.out"
[[ $(grep -c '^Asynchronous notification' "$SLUICE_ENV_DIR/psql.out") -eq 2 ]] \
  || fail "psql did not get exactly 2 notifications"
grep -q 'shop_payments' "$SLUICE_ENV_DIR/psql.out" && fail "psql got a payments event"
[[ "$(grep '^Asynchronous notification' "$SLUICE_ENV_DIR/psql.out" | grep -o '"status": "[a-z]*"' | tr '\n' ' ')" \
   == '"status": "created" "status": "paid" ' ]] || fail "psql: notifications out of order"

wait_for "2 messages from the example listener" listener_lines 2
cat "$SLUICE_ENV_DIR/listener.out"
[[ "$(listener_ids)" == "1 2 " ]] || fail "the example listener printed outbox ids $(listener_ids), not 1 2"

# --------------------------------------------------------------------------
step "10. A large payload arrives as a reference"
psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
SELECT sluice.publish('orders',
                      jsonb_build_object('order_id', 2, 'status', 'created',
                                         'note', repeat('x', 9000)),
                      'order-2');
SQL
wait_for "the reference in psql" psql_has_notifications 3
grep '^Asynchronous notification' "$SLUICE_ENV_DIR/psql.out" | tail -n 1
grep '^Asynchronous notification' "$SLUICE_ENV_DIR/psql.out" | tail -n 1 \
  | grep -q '"outbox_id":4,"truncated":true}"' || fail "message 4 did not arrive as a reference"
terminal2 "SELECT m->>'key' AS key, m->'payload'->>'status' AS status,
       length(m->'payload'->>'note') AS note_length, length(m::text) AS bytes
  FROM sluice.outbox_message(4) AS m;"
wait_for "the resolved message in psql" psql_says '(1 row)'
sed -n '/ key /,/(1 row)/p' "$SLUICE_ENV_DIR/psql.out"
grep -qE '^ order-2 \| created +\| +9000 \|' "$SLUICE_ENV_DIR/psql.out" \
  || fail "sluice.outbox_message(4) did not return the full message"

wait_for "3 messages from the example listener" listener_lines 3
cut -c1-120 "$SLUICE_ENV_DIR/listener.out"
tail -n 1 "$SLUICE_ENV_DIR/listener.out" | wc -c
[[ "$(listener_ids)" == "1 2 4 " ]] || fail "the example listener printed outbox ids $(listener_ids), not 1 2 4"
[[ $(tail -n 1 "$SLUICE_ENV_DIR/listener.out" | wc -c) -gt 9000 ]] \
  || fail "the example listener did not resolve the reference"

# --------------------------------------------------------------------------
step "11. The listener disconnects; events keep coming"
WATERMARK=$(sed -n 's/^watermark //p' "$SLUICE_ENV_DIR/listener.err")
echo "$WATERMARK"
kill -TERM "$LISTENER_PID"
rc=0
wait "$LISTENER_PID" || rc=$?
LISTENER_PID=""
echo "listener exit status: $rc"
((rc == 0)) || fail "the example listener exited with status $rc"

psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
BEGIN;
SELECT sluice.publish('orders', '{"order_id": 2, "status": "paid"}', 'order-2');
COMMIT;
BEGIN;
SELECT sluice.publish('orders', '{"order_id": 1, "status": "shipped"}', 'order-1');
COMMIT;
SQL
wait_for "the relay's checkpoint at 6" delivered_is 6
psql -X "$SLUICE_PG_URL" -c "SELECT pipeline, delivered FROM sluice.relay_status"
wait_for "5 notifications in psql" psql_has_notifications 5
grep '^Asynchronous notification' "$SLUICE_ENV_DIR/psql.out" | tail -n 2
grep -q 'event=sink.resend\|level=error' "$SLUICE_ENV_DIR/relay.log" \
  && fail "the relay noticed the listener's departure"

# --------------------------------------------------------------------------
step "12. Catch up from the watermark"
psql -X "$SLUICE_PG_URL" -v since="$WATERMARK" <<'SQL'
SELECT outbox_id, message->>'key' AS key, message->'payload'->>'status' AS status, snapshot
  FROM sluice.outbox_messages_since(:'since', ARRAY['orders']);
SQL
[[ "$(psql_value "SELECT string_agg(coalesce(outbox_id::text, 'w'), ' ')
                    FROM sluice.outbox_messages_since('$WATERMARK', ARRAY['orders'])")" == "w 1 2 4 5 6" ]] \
  || fail "the catch-up does not return w 1 2 4 5 6"

# Empty the old listener's stderr first: the background job's own "2>"
# truncates it only once it runs, and until then the wait below would read
# the first listener's "caught up" line.
: >"$SLUICE_ENV_DIR/listener.err"
"$BUILD"/tutorials/sluice-listen-example "$SLUICE_PG_URL" shop_orders orders --since "$WATERMARK" \
    >>"$SLUICE_ENV_DIR/listener.out" 2>"$SLUICE_ENV_DIR/listener.err" &
LISTENER_PID=$!
wait_for "catch-up of the restarted listener" listener_ready
cat "$SLUICE_ENV_DIR/listener.err"
grep -qx 'caught up: 5 messages; listening on shop_orders' "$SLUICE_ENV_DIR/listener.err" \
  || fail "the restarted listener did not catch up on 5 messages"

psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" \
  -c "SELECT sluice.publish('orders', '{\"order_id\": 2, \"status\": \"shipped\"}', 'order-2')"
wait_for "9 messages from the example listener" listener_lines 9
grep -oE '"outbox_id": ?[0-9]+' "$SLUICE_ENV_DIR/listener.out"
[[ "$(listener_ids)" == "1 2 4 1 2 4 5 6 7 " ]] \
  || fail "the example listener printed outbox ids $(listener_ids), not 1 2 4 1 2 4 5 6 7"
# Duplicates carry the same id: 6 distinct ids in 9 lines.
[[ $(grep -oE '"id": ?"[^"]*"' "$SLUICE_ENV_DIR/listener.out" | tr -d ' ' | sort -u | wc -l) -eq 6 ]] \
  || fail "the duplicates do not carry the same id"

# --------------------------------------------------------------------------
step "13. Stop everything"
terminal2 '\q'
wait_for "psql to quit" proc_gone "$PSQL_PID"
wait "$PSQL_PID" || fail "psql exited with status $?"
PSQL_PID=""
exec 3>&-
kill -TERM "$LISTENER_PID"
wait "$LISTENER_PID" || fail "the example listener exited with status $?"
LISTENER_PID=""
kill -TERM "$RELAY_PID"
rc=0
wait "$RELAY_PID" || rc=$?
RELAY_PID=""
echo "relay exit status: $rc"
((rc == 0)) || fail "the relay exited with status $rc after SIGTERM"
grep 'event=pipeline.closed' "$SLUICE_ENV_DIR/relay.log"
grep -q 'event=pipeline.closed pipeline=shop-notify delivered_total=7 unacknowledged=0 checkpoint_saved=true' \
  "$SLUICE_ENV_DIR/relay.log" || fail "the pipeline did not close cleanly"
scripts/dev-env stop "$SLUICE_ENV_DIR"
[[ ! -e "$SLUICE_ENV_DIR" ]] || fail "the environment directory is still there"
SLUICE_ENV_DIR=""
