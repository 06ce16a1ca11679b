#!/usr/bin/env bash
# Contract fuzzing: runs schemathesis (from PyPI) against the real service, driven by the OpenAPI
# document the service itself serves at /openapi.json, over every operation and with every check.
# Used by `just contract`; needs Redis and PostgreSQL (`just services`).
#
# It builds `orders` (release), starts it on a free port against a fresh database
# (orders_contract_<random>) and a fresh Redis key prefix, waits for /readyz, runs schemathesis,
# prints how many requests it made, and stops the service, drops the database and deletes the
# Redis keys on exit, whatever happened. Exit status: 0 when schemathesis found nothing (no server
# error, no response that breaks the document, no crash), non-zero otherwise.
#
#   CONTRACT_EXAMPLES     test cases per operation and phase            (default 50)
#   CONTRACT_PHASES       schemathesis phases   (default examples,coverage,fuzzing,stateful)
#   CONTRACT_WORKERS      concurrent schemathesis workers (default 1: on CPython < 3.13 several
#                         workers can crash schemathesis itself with "SystemError: AST constructor
#                         recursion depth mismatch", CPython issue gh-106905)
#   CONTRACT_SEED         random seed, to replay a run                   (default: random)
#   SCHEMATHESIS_VERSION  the version pip installs                       (default 4.32.5)
#   DATABASE_URL          only its server part is used: the database is made fresh
#                         (default postgres://postgres@127.0.0.1:5432)
#   REDIS_URL             default redis://127.0.0.1:6379
#   CARGO_TARGET_DIR      where the binary, the venv and the reports go (default target)
#
# Reports (JUnit XML, NDJSON events) and the service's log (JSON lines) are left in
# $CARGO_TARGET_DIR/contract/. The number of requests is the service's own count (its
# http_request_duration_seconds histogram on /metrics), before and after the run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
[[ $TARGET == /* ]] || TARGET=$ROOT/$TARGET
EXAMPLES=${CONTRACT_EXAMPLES:-50}
PHASES=${CONTRACT_PHASES:-examples,coverage,fuzzing,stateful}
WORKERS=${CONTRACT_WORKERS:-1}
SCHEMATHESIS_VERSION=${SCHEMATHESIS_VERSION:-4.32.5}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
# The admin token: the service refuses one shorter than 16 characters.
TOKEN=contract-admin-token-0123
OUT=$TARGET/contract
VENV=$TARGET/contract-venv

say() { printf 'contract: %s\n' "$*"; }
die() { printf 'contract: error: %s\n' "$*" >&2; exit 1; }

# PostgreSQL server (scheme, credentials, host and port) from DATABASE_URL, without its database.
PG_SERVER=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orders}
PG_SERVER=${PG_SERVER%%\?*}
if [[ ${PG_SERVER#*://} == */* ]]; then
    PG_SERVER=${PG_SERVER%/*}
fi

# --- schemathesis, in a venv of its own -------------------------------------------------------
if [[ $("$VENV/bin/schemathesis" --version 2>/dev/null) != *" $SCHEMATHESIS_VERSION" ]]; then
    say "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)"
    "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# --- the service --------------------------------------------------------------------------------
say "building orders (release)"
cargo build --release --locked --bin orders
BIN=$TARGET/release/orders

SUFFIX=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
DB=orders_contract_$SUFFIX
PREFIX=contract-$SUFFIX
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE=http://127.0.0.1:$PORT
mkdir -p "$OUT"
LOG=$OUT/orders.log
SERVICE_PID=

DELETE_KEYS='
local cursor, deleted = "0", 0
repeat
  local page = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do deleted = deleted + redis.call("DEL", key) end
until cursor == "0"
return deleted'

cleanup() {
    local status=$?
    if [[ -n $SERVICE_PID ]] && kill -0 "$SERVICE_PID" 2>/dev/null; then
        kill -TERM "$SERVICE_PID" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$SERVICE_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVICE_PID" 2>/dev/null || true
        wait "$SERVICE_PID" 2>/dev/null || true
    fi
    psql "$PG_SERVER/postgres" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 ||
        printf 'contract: warning: could not drop database %s\n' "$DB" >&2
    # The run's Redis keys; in one script, as their names hold whatever the fuzzer sent.
    if command -v redis-cli >/dev/null 2>&1; then
        redis-cli -u "$REDIS_URL" EVAL "$DELETE_KEYS" 0 "{$PREFIX}:*" >/dev/null 2>&1 ||
            printf 'contract: warning: could not delete the Redis keys {%s}:*\n' "$PREFIX" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

createdb --maintenance-db="$PG_SERVER/postgres" "$DB" || die "createdb $DB failed (is PostgreSQL up? just services)"

# schemathesis sends admin requests without the token on purpose (its ignored_auth check), far
# more than the failed attempts a client is allowed: past them the service would answer 429 to
# every admin request, the right token too, and the run would no longer reach the admin
# operations. The limit itself is tested in tests/admin.rs.
# GET /events is an endless stream: ended by the server after 300 ms, each of its answers is a
# whole response schemathesis can check (tests/sse.rs tests the streams themselves).
say "starting orders on $BASE (database $DB, Redis prefix $PREFIX, log $LOG)"
DATABASE_URL=$PG_SERVER/$DB \
REDIS_URL=$REDIS_URL \
ORDERS_LISTEN=127.0.0.1:$PORT \
ORDERS_REDIS_PREFIX=$PREFIX \
ORDERS_PROCESSING_DELAY_MS=0 \
ORDERS_ADMIN_TOKEN=$TOKEN \
ORDERS_ADMIN_AUTH_MAX_FAILURES=1000000000 \
ORDERS_SSE_MAX_STREAM_MS=300 \
ORDERS_LOG_FORMAT=json \
    "$BIN" serve >"$LOG" 2>&1 &
SERVICE_PID=$!

for i in $(seq 1 300); do
    if curl -fsS -o /dev/null "$BASE/readyz" 2>/dev/null; then
        break
    fi
    kill -0 "$SERVICE_PID" 2>/dev/null || { tail -n 30 "$LOG" >&2; die "orders exited before it was ready"; }
    [[ $i -lt 300 ]] || { tail -n 30 "$LOG" >&2; die "orders not ready after 30s"; }
    sleep 0.1
done

# Dead letters, so that GET /dead-letters answers entries of each documented shape and the
# document's link from it leads POST /dead-letters/{id}/retry to a real one (the newest): a
# payload that is not JSON and one that is an order breaking a rule, both pushed on the queue as
# anyone with redis-cli could (a worker dead-letters them), one at a time so that they are
# dead-lettered in this order.
dead_letters() {
    curl -fsS -H "Authorization: Bearer $TOKEN" "$BASE/dead-letters?limit=1" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["total"])'
}
wait_dead_letters() {
    for i in $(seq 1 100); do
        [[ $(dead_letters) -ge $1 ]] && return 0
        sleep 0.1
    done
    die "the worker did not dead-letter a poison payload within 10s (log: $LOG)"
}
if command -v redis-cli >/dev/null 2>&1; then
    POISON_ID=$(python3 -c 'import uuid; print(uuid.uuid4())')
    redis-cli -u "$REDIS_URL" LPUSH "{$PREFIX}:queue" 'not an order' >/dev/null
    wait_dead_letters 1
    redis-cli -u "$REDIS_URL" LPUSH "{$PREFIX}:queue" \
        "{\"order_id\":\"$POISON_ID\",\"customer_id\":\"  \",\"items\":[\"sku-1\"],\"total\":1,\"accepted_at\":\"2026-01-01T00:00:00Z\"}" \
        >/dev/null
    wait_dead_letters 2
else
    say "warning: no redis-cli, so no dead letters: the dead-letter operations are tested empty"
fi

# --- schemathesis -------------------------------------------------------------------------------
SEED_ARGS=()
[[ -n ${CONTRACT_SEED:-} ]] && SEED_ARGS=(--seed "$CONTRACT_SEED")
CHECK_ARGS=(--checks all)
# Checks skipped for a while; each with why, and when it comes back.
EXCLUDED_CHECKS=()
if [[ ${#EXCLUDED_CHECKS[@]} -gt 0 ]]; then
    CHECK_ARGS+=(--exclude-checks "$(IFS=,; echo "${EXCLUDED_CHECKS[*]}")")
fi
# Inputs held back for a while; each with why, and when it comes back.
WORKAROUND_ARGS=()

# Requests the service has answered, by status, from its own HTTP histogram ("200=12 404=3").
served() {
    curl -fsS "$BASE/metrics" | python3 -c '
import collections, re, sys
counts = collections.Counter()
for line in sys.stdin:
    if line.startswith("http_request_duration_seconds_count{"):
        status = re.search(r"status=\"([^\"]*)\"", line)
        counts[status.group(1) if status else "other"] += int(float(line.split()[-1]))
print(" ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "none")
'
}
BEFORE=$(served) || die "GET /metrics failed (log: $LOG)"
rm -f "$OUT/events.ndjson" "$OUT/junit.xml"
# A valid request may also be answered 410: an Idempotency-Key replayed after an admin deleted
# the orders it made (the rest of the list is schemathesis's default).
cat >"$OUT/schemathesis.toml" <<'TOML'
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "410", "429", "5xx"]
TOML
COMMAND=(
    "$VENV/bin/schemathesis" --config-file "$OUT/schemathesis.toml" run "$BASE/openapi.json"
    "${CHECK_ARGS[@]}"
    --phases "$PHASES"
    --max-examples "$EXAMPLES"
    --workers "$WORKERS"
    -H "Authorization: Bearer $TOKEN"
    --request-timeout 10
    --suppress-health-check all
    --generation-database none
    --report junit,ndjson
    --report-dir "$OUT"
    --report-junit-path "$OUT/junit.xml"
    --report-ndjson-path "$OUT/events.ndjson"
    --no-color
    # Every operation: without a filter naming it, schemathesis leaves out the operation that
    # serves the document itself (GET /openapi.json).
    --include-path-regex '^/'
    "${WORKAROUND_ARGS[@]}"
    "${SEED_ARGS[@]}"
)
say "running: ${COMMAND[*]/#$VENV\/bin\//}"
set +e
"${COMMAND[@]}"
RESULT=$?
set -e

if ! kill -0 "$SERVICE_PID" 2>/dev/null; then
    say "FAILED: the service is no longer running (full log: $LOG)"
    exit 1
fi
# Requests made: what the service counted during the run (less the scrape that took BEFORE).
AFTER=$(served) || die "GET /metrics failed after the run (log: $LOG)"
read -r REQUESTS BY_STATUS SERVER_ERRORS < <(python3 - "$BEFORE" "$AFTER" <<'PY'
import collections, sys
def parse(text):
    return collections.Counter({k: int(v) for k, v in (kv.split("=") for kv in text.split() if "=" in kv)})
run = parse(sys.argv[2]) - parse(sys.argv[1])
run["200"] -= 1  # the scrape that took BEFORE
run = +run
# 5xx, and statuses the service labels "other" (none it answers on purpose): server errors.
print(sum(run.values()), ",".join(f"{k}:{v}" for k, v in sorted(run.items())) or "none",
      sum(v for k, v in run.items() if not k.isdigit() or k.startswith("5")))
PY
)
say "schemathesis made $REQUESTS requests (by status: $BY_STATUS)"
if [[ $SERVER_ERRORS -ne 0 ]]; then
    say "FAILED: the service answered $SERVER_ERRORS requests with a 5xx or an unexpected status (log: $LOG)"
    exit 1
fi
PANIC="thread '.*' panicked at|\"msg\":\"unhandled rejection\""
if grep -Eq "$PANIC" "$LOG"; then
    grep -E "$PANIC" "$LOG" | head -n 20 >&2
    say "FAILED: the service logged a panic or an unhandled rejection (full log: $LOG)"
    exit 1
fi
if [[ $RESULT -ne 0 ]]; then
    say "FAILED: schemathesis exit status $RESULT (reports in $OUT)"
    exit "$RESULT"
fi
say "passed"
