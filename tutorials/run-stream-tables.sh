#!/usr/bin/env bash
# tutorials/run-stream-tables.sh - runs tutorials/stream-tables.md from start
# to end, without a human, and checks that every step produced what the
# tutorial says it produces.
#
#   tutorials/run-stream-tables.sh                 build into build/, run every step
#   SLUICE_BUILD_DIR=build-x tutorials/run-stream-tables.sh
#   SLUICE_TUTORIAL_NO_BUILD=1 ...                 use the build as it is (ctest does)
#
# The commands are the tutorial's, in the tutorial's order. The tutorial's
# interactive psql session ("in a second terminal") is a psql reading a FIFO:
# the script writes to it the lines the reader types. Every wait is a bounded
# poll (TUTORIAL_TIMEOUT_S, default 30 s), never a bare sleep. Everything the
# script starts (PostgreSQL, the broker, the engine, the relay, psql) is
# stopped on exit, also on failure. Exit 0 when all checks passed, 1
# otherwise.
set -euo pipefail

TUTORIAL_LOGS=(engine.log relay.log psql.out)
TUTORIAL_PIDS=(PSQL_PID RELAY_PID ENGINE_PID)
ENGINE_PID="" RELAY_PID="" PSQL_PID=""
# shellcheck source=tutorials/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Helpers for the checks (not tutorial steps).
engine_says() { grep -qF -- "$1" "$SLUICE_ENV_DIR/engine.log"; }
# engine_refreshed NAME N: the engine logged at least N refreshes of NAME.
engine_refreshed() { [[ $(grep -c "event=engine.refreshed stream_table=$1 " "$SLUICE_ENV_DIR/engine.log") -ge $2 ]]; }
relay_running() { grep -q 'event=pipeline.state pipeline=totals-to-kafka from=setup to=running' "$SLUICE_ENV_DIR/relay.log"; }
# The second terminal: what the reader types goes to fd 3.
terminal2() { printf '%s\n' "$@" >&3; }
psql_says() { grep -qF -- "$1" "$SLUICE_ENV_DIR/psql.out"; }
notifications() { grep -c '^Asynchronous notification "totals_changed"' "$SLUICE_ENV_DIR/psql.out" || true; }
# psql prints notifications after each command: type ";" until N arrived.
psql_has_notifications() {
  terminal2 ';'
  [[ $(notifications) -ge $1 ]]
}
# op|refresh_id|customer_id|before.total|after.total of every Kafka record,
# ordered by refresh id and customer; parsed by PostgreSQL (no jq needed). A
# record whose Kafka key is not the envelope's key, or whose sluice-op header
# is not the envelope's op, is left out (and so fails the count).
records() {
  {
    printf '%s\n' "CREATE TEMP TABLE r (k text, h text, v jsonb);" \
      "COPY r FROM STDIN WITH (FORMAT csv, DELIMITER E'\t', QUOTE E'\x01');"
    kcat -C -b "$KAFKA_BROKERS" -t order_totals -o beginning -e -q -f '%k\t%h\t%s\n' 2>/dev/null || true
    printf '%s\n' '\.' "SELECT concat_ws('|', v->>'op', p->>'refresh_id', coalesce(nullif(p->'after', 'null'), p->'before')->>'customer_id',
                                   coalesce(p->'before'->>'total', '-'), coalesce(p->'after'->>'total', '-'))
                          FROM r, LATERAL (SELECT v->'payload') AS x(p)
                         WHERE k = v->>'key' AND h LIKE '%sluice-op=' || (v->>'op') || '%'
                         ORDER BY (p->>'refresh_id')::int, (coalesce(nullif(p->'after', 'null'), p->'before')->>'customer_id')::int;"
  } | psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL"
}
# notification_is N FIELDS: notification N's counts and ids, as
# name,refresh_id,inserted,updated,deleted,first,last,refreshes.
notification_is() {
  local json
  json=$(grep '^Asynchronous notification "totals_changed"' "$SLUICE_ENV_DIR/psql.out" | sed -n "$1p" \
    | sed -E 's/^[^{]*(\{.*\})" received from server process.*$/\1/')
  [[ "$(psql_value "SELECT concat_ws(',', j->>'name', j->>'refresh_id', j->>'inserted_count', j->>'updated_count',
                                     j->>'deleted_count', j->>'first_refresh_id', j->>'last_refresh_id', j->>'refreshes')
                      FROM (SELECT \$j\$$json\$j\$::jsonb) AS x(j)")" == "$2" ]]
}
# first_refresh_id,last_refresh_id,updated_count of the notifications after
# the second, one line each.
later_notifications() {
  grep '^Asynchronous notification "totals_changed"' "$SLUICE_ENV_DIR/psql.out" | tail -n +3 \
    | sed -E 's/^[^{]*(\{.*\})" received from server process.*$/\1/' \
    | while IFS= read -r json; do
        psql_value "SELECT concat_ws(',', j->>'first_refresh_id', j->>'last_refresh_id', j->>'updated_count')
                      FROM (SELECT \$j\$$json\$j\$::jsonb) AS x(j)"
      done
}
notified_through_5() { terminal2 ';'; later_notifications | grep -q '^[0-9]*,5,'; }
# The coalescing window (250 ms) since the subscription's last notification
# has passed.
window_passed() { [[ "$(psql_value "SELECT bool_and(last_sent_at < clock_timestamp() - interval '300 ms') FROM sluice.subscriptions")" == t ]]; }
have_records() { [[ $(records | grep -c .) -ge $1 ]]; }
show_records() {
  kcat -C -b "$KAFKA_BROKERS" -t order_totals -o beginning -e -q \
       -f 'partition=%p offset=%o key=%k\n  headers: %h\n  value:   %s\n'
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
"$BUILD"/sluice engine --help | head -n 1
"$BUILD"/sluice engine --help | grep -q -- '--notify-coalesce-ms' || fail "sluice engine has no --notify-coalesce-ms"

# --------------------------------------------------------------------------
step "2. Start PostgreSQL and a Kafka broker"
SLUICE_TEST_BROKER=$(cd "$BUILD" && pwd)/tests/helpers/sl_test_broker
export SLUICE_TEST_BROKER
eval "$(scripts/dev-env start)"
echo "PostgreSQL: $SLUICE_PG_URL"
echo "Kafka:      $KAFKA_BROKERS"
echo "Settings:   $SLUICE_ENV_DIR/env"
scripts/dev-env broker "$SLUICE_ENV_DIR" topic order_totals 3
[[ -f "$SLUICE_ENV_DIR/env" ]] || fail "no settings file $SLUICE_ENV_DIR/env"

# --------------------------------------------------------------------------
step "3. Install the sluice schema"
"$BUILD"/sluice init --db "$SLUICE_PG_URL"
[[ "$(psql_value "SELECT to_regprocedure('sluice.create_stream_table(text,text,text,interval)') IS NOT NULL")" == t ]] \
  || fail "sluice init did not install sluice.create_stream_table"

# --------------------------------------------------------------------------
step "4. A source table with rows"
psql -X -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL, amount numeric NOT NULL);
INSERT INTO orders VALUES (1, 1, 10.00), (2, 1, 5.50), (3, 2, 7.00);
SQL
[[ "$(psql_value "SELECT count(*) FROM orders")" == 3 ]] || fail "orders does not hold 3 rows"

# --------------------------------------------------------------------------
step "5. Create the stream table"
psql -X -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" >"$SLUICE_ENV_DIR/create.out" 2>&1 <<'SQL'
SELECT sluice.create_stream_table('order_totals',
  'SELECT customer_id, count(*) AS orders, sum(amount) AS total FROM orders GROUP BY customer_id');
SELECT customer_id, orders, total FROM order_totals ORDER BY customer_id;
SELECT id, op, key, payload, refresh_id FROM sluice.outbox WHERE topic = 'order_totals' ORDER BY id;
SQL
cat "$SLUICE_ENV_DIR/create.out"
grep -qF 'NOTICE:  stream table order_totals created: 2 rows; refresh mode auto, refreshed in full until the engine (sluice engine) has analysed the query' \
  "$SLUICE_ENV_DIR/create.out" || fail "no creation NOTICE"
[[ "$(psql_value "SELECT string_agg(customer_id || ':' || orders || ':' || total, ' ' ORDER BY customer_id) FROM order_totals")" \
   == "1:2:15.50 2:1:7.00" ]] || fail "order_totals is not 1:2:15.50 2:1:7.00"
[[ "$(psql_value "SELECT string_agg(op || ':' || refresh_id || ':' || (payload->'before' = 'null') || ':' || (payload->>'refresh_id'), ' ' ORDER BY id)
                    FROM sluice.outbox WHERE topic = 'order_totals'")" == "insert:1:true:1 insert:1:true:1" ]] \
  || fail "the outbox does not hold two inserts of refresh 1"
[[ "$(psql_value "SELECT bool_and(o.key = t.__sluice_row_id::text) AND count(*) = 2
                    FROM sluice.outbox o JOIN order_totals t ON (o.payload->'after'->>'customer_id')::int = t.customer_id
                   WHERE o.topic = 'order_totals'")" == t ]] || fail "outbox keys are not the row identities"

# --------------------------------------------------------------------------
step "6. Explain it before the engine ran"
psql -X -At -F ': ' "$SLUICE_PG_URL" -c "SELECT property, value FROM sluice.explain_stream_table('order_totals')
  WHERE property IN ('effective mode', 'row identity', 'sources', 'operator tree')"
[[ "$(psql_value "SELECT value FROM sluice.explain_stream_table('order_totals') WHERE property = 'effective mode'")" \
   == "full (not analysed yet)" ]] || fail "effective mode is not 'full (not analysed yet)' before the engine"

# --------------------------------------------------------------------------
step "7. Start the engine"
"$BUILD"/sluice engine --db "$SLUICE_PG_URL" 2>"$SLUICE_ENV_DIR/engine.log" &
ENGINE_PID=$!
wait_for "analysis of order_totals" engine_says 'event=engine.analysed stream_table=order_totals mode=differential reason=""'
cat "$SLUICE_ENV_DIR/engine.log"
engine_says 'event=engine.start version=' || fail "no engine.start in the engine log"
engine_says 'notify_coalesce_ms=250 once=false' || fail "the engine does not log its coalescing window"
engine_says 'event=engine.connected' || fail "the engine did not connect"

# --------------------------------------------------------------------------
step "8. Explain it again"
psql -X -At -F ': ' "$SLUICE_PG_URL" -c "SELECT property, value FROM sluice.explain_stream_table('order_totals')
  WHERE property IN ('effective mode', 'fallback reason', 'row identity', 'operator tree', 'affected SQL', 'recompute SQL')" \
  | tee "$SLUICE_ENV_DIR/explain.out"
grep -qx 'effective mode: differential' "$SLUICE_ENV_DIR/explain.out" || fail "effective mode is not differential"
grep -qx 'row identity: key (customer_id)' "$SLUICE_ENV_DIR/explain.out" || fail "row identity is not key (customer_id)"
grep -qx 'operator tree: Project (3 columns)' "$SLUICE_ENV_DIR/explain.out" || fail "operator tree does not start with Project"
grep -qx '  Aggregate (GROUP BY 1 key)' "$SLUICE_ENV_DIR/explain.out" || fail "operator tree has no Aggregate"
grep -qx '    Scan public.orders' "$SLUICE_ENV_DIR/explain.out" || fail "operator tree has no Scan public.orders"
grep -qE '^affected SQL: SELECT DISTINCT \(orders.customer_id\) AS "customer_id" FROM pg_temp."__sluice_chg_[0-9]+" AS "orders"$' \
  "$SLUICE_ENV_DIR/explain.out" || fail "unexpected affected SQL"
grep -qF 'pg_temp."__sluice_aff"' "$SLUICE_ENV_DIR/explain.out" || fail "the recompute SQL does not read __sluice_aff"

# --------------------------------------------------------------------------
step "9. Subscribe and LISTEN in psql (second terminal)"
mkfifo "$SLUICE_ENV_DIR/terminal2"
(
  # shellcheck disable=SC1091
  source "$SLUICE_ENV_DIR/env"
  exec psql -X "$SLUICE_PG_URL"
) <"$SLUICE_ENV_DIR/terminal2" >"$SLUICE_ENV_DIR/psql.out" 2>&1 &
PSQL_PID=$!
exec 3>"$SLUICE_ENV_DIR/terminal2"
terminal2 "SELECT sluice.subscribe('order_totals', 'totals_changed');" 'LISTEN totals_changed;'
wait_for "LISTEN from psql" psql_says LISTEN
cat "$SLUICE_ENV_DIR/psql.out"
[[ "$(psql_value "SELECT stream_table || ':' || channel FROM sluice.list_subscriptions()")" == "order_totals:totals_changed" ]] \
  || fail "the subscription is not listed"

# --------------------------------------------------------------------------
step "10. Relay the stream table's topic to Kafka"
cat >"$SLUICE_ENV_DIR/relay.json" <<'JSON'
{
  "database": "${ENV:SLUICE_PG_URL}",
  "pipelines": [
    {
      "name": "totals-to-kafka",
      "topics": ["order_totals"],
      "sink": { "type": "kafka", "brokers": "${ENV:KAFKA_BROKERS}" }
    }
  ]
}
JSON
"$BUILD"/sluice check-config --config "$SLUICE_ENV_DIR/relay.json" >/dev/null
"$BUILD"/sluice relay --config "$SLUICE_ENV_DIR/relay.json" 2>"$SLUICE_ENV_DIR/relay.log" &
RELAY_PID=$!
wait_for "pipeline in state running" relay_running
grep -q 'event=kafka.start pipeline=totals-to-kafka topic="{topic}"' "$SLUICE_ENV_DIR/relay.log" \
  || fail "the pipeline did not start with the Kafka sink on topic {topic}"
wait_for "the 2 initial records in Kafka" have_records 2
records
[[ "$(records | tr '\n' ' ')" == "insert|1|1|-|15.50 insert|1|2|-|7.00 " ]] \
  || fail "Kafka does not hold the two initial inserts: $(records | tr '\n' ' ')"

# --------------------------------------------------------------------------
step "11. Change the orders"
psql -X -q -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
BEGIN;
INSERT INTO orders VALUES (4, 3, 20.00);         -- a new customer
UPDATE orders SET amount = 12.00 WHERE id = 1;   -- customer 1 spends more
DELETE FROM orders WHERE id = 3;                 -- customer 2's only order
COMMIT;
SQL
wait_for "the engine's refresh 2" engine_says 'event=engine.refreshed stream_table=order_totals refresh_id=2 '
grep 'event=engine.refreshed' "$SLUICE_ENV_DIR/engine.log"
psql -X "$SLUICE_PG_URL" -c "SELECT customer_id, orders, total FROM order_totals ORDER BY customer_id"
[[ "$(psql_value "SELECT string_agg(customer_id || ':' || orders || ':' || total, ' ' ORDER BY customer_id) FROM order_totals")" \
   == "1:2:17.50 3:1:20.00" ]] || fail "order_totals is not 1:2:17.50 3:1:20.00"

# The notification (second terminal: ";").
wait_for "1 notification in psql" psql_has_notifications 1
grep '^Asynchronous notification' "$SLUICE_ENV_DIR/psql.out"
notification_is 1 order_totals,2,1,1,1,2,2,1 || fail "notification 1 is not refresh 2 with 1 insert, 1 update, 1 delete"

# The Kafka records.
wait_for "5 records in Kafka" have_records 5
show_records
records
[[ "$(records | tr '\n' ' ')" == "insert|1|1|-|15.50 insert|1|2|-|7.00 update|2|1|15.50|17.50 delete|2|2|7.00|- insert|2|3|-|20.00 " ]] \
  || fail "Kafka records are not the expected 5: $(records | tr '\n' ' ')"
# Every record of one customer on one partition, under one key.
[[ $(kcat -C -b "$KAFKA_BROKERS" -t order_totals -o beginning -e -q -f '%k %p\n' 2>/dev/null | sort -u | cut -d' ' -f1 | uniq -d | wc -l) -eq 0 ]] \
  || fail "one key on several partitions"
[[ $(kcat -C -b "$KAFKA_BROKERS" -t order_totals -o beginning -e -q -f '%k %p\n' 2>/dev/null | sort -u | wc -l) -eq 3 ]] \
  || fail "not 3 distinct keys"

# --------------------------------------------------------------------------
step "12. Several refreshes in quick succession"
wait_for "the coalescing window after notification 1" window_passed
psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
BEGIN; INSERT INTO orders VALUES (5, 1, 1.00); SELECT sluice.refresh_stream_table('order_totals'); COMMIT;
BEGIN; INSERT INTO orders VALUES (6, 1, 2.00); SELECT sluice.refresh_stream_table('order_totals'); COMMIT;
BEGIN; INSERT INTO orders VALUES (7, 3, 3.00); SELECT sluice.refresh_stream_table('order_totals'); COMMIT;
SQL
wait_for "notifications up to refresh 5 in psql" notified_through_5
grep '^Asynchronous notification' "$SLUICE_ENV_DIR/psql.out" | tail -n +2
notification_is 2 order_totals,3,0,1,0,3,3,1 || fail "notification 2 is not refresh 3 alone"
# Refreshes 4 and 5 come well within the window of refresh 3's notification
# and arrive coalesced, as the tutorial shows. On a host so busy that refresh
# 4 starts after that window has passed, it is notified at once, which is
# right too; either way every refresh is covered exactly once.
later="$(later_notifications | tr '\n' ' ')"
case "$later" in
  "4,5,2 ") ;;
  "4,4,1 5,5,1 ") echo "note: refresh 4 came after the window of refresh 3's notification (a busy host): nothing to coalesce" ;;
  *) fail "the notifications after refresh 3 do not cover refreshes 4 and 5 once: $later" ;;
esac
expected_notifications=$((2 + $(later_notifications | grep -c .)))
psql -X "$SLUICE_PG_URL" -c "SELECT refresh_id, op, payload->'before'->>'total' AS before, payload->'after'->>'total' AS after
  FROM sluice.outbox WHERE topic = 'order_totals' AND refresh_id BETWEEN 3 AND 5 ORDER BY id"
wait_for "8 records in Kafka" have_records 8
records | tail -n 3
[[ "$(records | tail -n 3 | tr '\n' ' ')" == "update|3|1|17.50|18.50 update|4|1|18.50|20.50 update|5|3|20.00|23.00 " ]] \
  || fail "Kafka does not hold the three updates of refreshes 3-5: $(records | tail -n 3 | tr '\n' ' ')"
# Coalescing is per subscription and window: nothing more arrives.
terminal2 ';'
[[ $(notifications) -eq $expected_notifications ]] || fail "more than $expected_notifications notifications"

# --------------------------------------------------------------------------
step "13. A join"
psql -X -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" <<'SQL'
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO customers VALUES (1, 'ada'), (2, 'grace'), (3, 'edsger');
SELECT sluice.create_stream_table('order_details',
  'SELECT o.id AS order_id, o.amount, c.id AS customer_id, c.name
     FROM orders o JOIN customers c ON c.id = o.customer_id');
SQL
wait_for "analysis of order_details" engine_says 'event=engine.analysed stream_table=order_details mode=differential'
grep 'stream_table=order_details' "$SLUICE_ENV_DIR/engine.log"
psql -X -At -F ': ' "$SLUICE_PG_URL" -c "SELECT property, value FROM sluice.explain_stream_table('order_details')
  WHERE property IN ('effective mode', 'row identity', 'refresh unit', 'operator tree')" \
  | tee "$SLUICE_ENV_DIR/explain2.out"
grep -qx 'effective mode: differential' "$SLUICE_ENV_DIR/explain2.out" || fail "order_details is not differential"
grep -qx 'row identity: key (order_id, customer_id)' "$SLUICE_ENV_DIR/explain2.out" || fail "order_details has no key"
grep -qx 'refresh unit: row identity' "$SLUICE_ENV_DIR/explain2.out" || fail "order_details has another refresh unit"
grep -qx '  Inner Join (ON)' "$SLUICE_ENV_DIR/explain2.out" || fail "the operator tree has no join"

# --------------------------------------------------------------------------
step "14. The sluice.stream_tables view"
psql -X -q -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" -c "UPDATE customers SET name = 'grace h.' WHERE id = 2;
  INSERT INTO orders VALUES (8, 2, 9.00);"
wait_for "a refresh of order_details" engine_refreshed order_details 1
wait_for "a second engine refresh of order_totals" engine_refreshed order_totals 2
psql -X "$SLUICE_PG_URL" -c "SELECT name, effective_mode, schedule, rows, last_refresh_mode, status, last_error
  FROM sluice.stream_tables ORDER BY name"
[[ "$(psql_value "SELECT string_agg(name || ':' || effective_mode || ':' || rows || ':' || last_refresh_mode || ':' || status, ' ' ORDER BY name)
                    FROM sluice.stream_tables")" == "order_details:differential:7:differential:active order_totals:differential:3:differential:active" ]] \
  || fail "sluice.stream_tables does not show what the tutorial says"
psql -X "$SLUICE_PG_URL" -c "SELECT refresh_id, mode, inserted, updated, deleted FROM sluice.refresh_history h
  JOIN sluice.stream_table_catalog c ON c.id = h.stream_table_id WHERE c.name = 'order_totals' ORDER BY refresh_id"

# --------------------------------------------------------------------------
step "15. A consumer that starts late"
psql -X "$SLUICE_PG_URL" -c "SELECT sluice.snapshot_stream_table('order_totals')"
psql -X "$SLUICE_PG_URL" -c "SELECT key, payload->'after' AS after FROM sluice.outbox
  WHERE topic = 'order_totals' AND op = 'snapshot' ORDER BY key"
# Each snapshot message is the row as it is now, under its row id.
[[ "$(psql_value "SELECT count(*) FROM sluice.outbox o JOIN order_totals t ON t.__sluice_row_id::text = o.key
                    WHERE o.topic = 'order_totals' AND o.op = 'snapshot'
                      AND o.payload->'after' = to_jsonb(t) - '__sluice_row_id'")" == 3 ]] \
  || fail "the snapshot messages are not the three rows of order_totals"
snapshot_in_kafka() {
  [[ $(kcat -C -b "$KAFKA_BROKERS" -t order_totals -o beginning -e -q -f '%h\n' 2>/dev/null | grep -c 'sluice-op=snapshot') -eq 3 ]]
}
wait_for "the snapshot in Kafka" snapshot_in_kafka
kcat -C -b "$KAFKA_BROKERS" -t order_totals -o beginning -e -q -f '%h\n' | grep -c 'sluice-op=snapshot'
# What a consumer that starts at the snapshot rebuilds: every snapshot record.
[[ "$(records | grep -c '^snapshot|')" == 3 ]] || fail "the snapshot records are not in Kafka as the tutorial says"

# --------------------------------------------------------------------------
step "16. Stop everything"
terminal2 '\q'
wait_for "psql to quit" proc_gone "$PSQL_PID"
wait "$PSQL_PID" || fail "psql exited with status $?"
PSQL_PID=""
exec 3>&-
kill -TERM "$RELAY_PID"
rc=0
wait "$RELAY_PID" || rc=$?
RELAY_PID=""
((rc == 0)) || fail "the relay exited with status $rc after SIGTERM"
kill -TERM "$ENGINE_PID"
rc=0
wait "$ENGINE_PID" || rc=$?
ENGINE_PID=""
echo "engine exit status: $rc"
((rc == 0)) || fail "the engine exited with status $rc after SIGTERM"
tail -n 1 "$SLUICE_ENV_DIR/engine.log"
engine_says 'event=engine.stopped signal=true' || fail "the engine did not log its stop"
grep -q 'level=warn\|level=error' "$SLUICE_ENV_DIR/engine.log" && fail "the engine logged a warning or an error"
scripts/dev-env stop "$SLUICE_ENV_DIR"
[[ ! -e "$SLUICE_ENV_DIR" ]] || fail "the environment directory is still there"
SLUICE_ENV_DIR=""
