#!/usr/bin/env bash
# `just bench`: the benchmarks of the order service, back to back, against the local Redis
# (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, user postgres) only.
#
#   ingest     POST /orders, no events: the real service (--roles api) against orders-baseline
#              (the same handler without Redis, benches/baseline.rs), alternating, 3 runs each.
#   drain      50,000 orders, zero processing delay, all roles in one process.
#   steady     2,000 orders/s open loop for 20 s, zero delay, freshly started service.
#   realistic  20,000 orders, 1000-3000 ms delay, ORDERS_MAX_IN_FLIGHT=5000; peak RSS. Judged on
#              the sustained completion rate (10th to 90th percentile of completion times): over
#              the whole run, 5,000 perfect slots would complete 20,000 such orders at about
#              2,000/s (fill, then the tail of the last delays), so the whole-run rate is shown too.
#   replicated POST /orders against a private primary with one replica, ORDERS_REDIS_MIN_REPLICAS=0
#              and =1 (each request waits for `WAIT 1`) alternating, 3 runs each: what the
#              replica acknowledgement costs.
#   idle       RSS 3 s after start-up.
#   stats      GET /stats with a million orders stored (inserted with SQL).
#
# Every scenario gets a fresh service process on a free port; a throw-away database
# (orders_bench_<random>, dropped at the end) and a fresh Redis key prefix and event channel
# (deleted at the end) keep it apart from anything else on the machine. Writes the Markdown table
# to bench-results/bench-<date>.md and each run's raw JSON, the service logs and RSS samples to
# bench-results/bench-<date>/. Needs cargo, curl, jq, psql/createdb/dropdb and redis-cli.
#
# Knobs (environment): BENCH_NO_BUILD=1 uses the release binaries already built; BENCH_BIN=DIR
# uses orders, orders-load and orders-baseline from DIR instead (no build; for A/B comparisons);
# BENCH_INGEST_COUNT (100000: runs of 3 s or so; at 20,000 a run lasted half a second and the ratio
# swung from 0.64 to 0.92 between runs of one build), BENCH_INGEST_RUNS (3), BENCH_DRAIN_COUNT (50000),
# BENCH_STEADY_RATE (2000), BENCH_STEADY_SECONDS (20), BENCH_REALISTIC_COUNT (20000).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START_SECONDS=$SECONDS

INGEST_COUNT=${BENCH_INGEST_COUNT:-100000}
INGEST_RUNS=${BENCH_INGEST_RUNS:-3}
INGEST_CONCURRENCY=64
WARMUP_COUNT=2000
DRAIN_COUNT=${BENCH_DRAIN_COUNT:-50000}
DRAIN_BATCH=100
DRAIN_CONCURRENCY=8
STEADY_RATE=${BENCH_STEADY_RATE:-2000}
STEADY_SECONDS=${BENCH_STEADY_SECONDS:-20}
STEADY_CONCURRENCY=128
REALISTIC_COUNT=${BENCH_REALISTIC_COUNT:-20000}
REALISTIC_CONCURRENCY=64
REALISTIC_IN_FLIGHT=5000
IDLE_SECONDS=3

# Only ever this machine.
HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
REDIS_PORT=6379
REDIS_URL_BENCH="redis://$HOST:$REDIS_PORT"

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

for tool in cargo curl jq psql createdb dropdb redis-cli; do
    have "$tool" || die "$tool is needed (jq: apt-get install jq; redis-cli: redis-tools; psql/createdb/dropdb: postgresql-client)"
done

# No ORDERS_* setting of the caller leaks into the runs: each scenario sets what it needs.
while IFS= read -r name; do
    unset "$name"
done < <(compgen -e | grep '^ORDERS_' || true)
unset DATABASE_URL REDIS_URL

# --- build -------------------------------------------------------------------------------------
if [[ -n ${BENCH_BIN:-} ]]; then
    BIN=$(cd "$BENCH_BIN" && pwd)
else
    TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
    BIN=$TARGET_DIR/release
fi
if [[ ${BENCH_NO_BUILD:-0} != 1 && -z ${BENCH_BIN:-} ]]; then
    say "building release binaries (orders, orders-load, orders-baseline)"
    cargo build --release --locked --quiet --bin orders --bin orders-load --bin orders-baseline ||
        die "cargo build failed"
fi
for b in orders orders-load orders-baseline; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing (build it, or unset BENCH_NO_BUILD)"
done

# --- where the results go ----------------------------------------------------------------------
STAMP=$(date -u +%Y-%m-%dT%H%M%SZ)
BUILD_SECONDS=$((SECONDS - START_SECONDS))
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
OUT_MD=$ROOT/bench-results/bench-$STAMP.md
RUN_DIR=$ROOT/bench-results/bench-$STAMP
mkdir -p "$RUN_DIR"

# --- clean-up ----------------------------------------------------------------------------------
RAND=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
DB=orders_bench_$RAND
PREFIX=bench-$RAND
CHANNEL=bench-$RAND.completed
DB_URL="postgres://$PG_USER@$HOST:$PG_PORT/$DB"
export PGCONNECT_TIMEOUT=5
DB_CREATED=0
PIDS=()        # every process started here (services, baseline, samplers)

rcli() { timeout 10 redis-cli -h "$HOST" -p "$REDIS_PORT" "$@"; }
psql_db() { psql -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB" -tA -c "$1"; }

# Stops one process started here (and not yet reaped, so its pid cannot have been reused):
# SIGTERM, up to 15 s, then SIGKILL. Its exit code is left in STOPPED_EXIT.
STOPPED_EXIT=
stop_pid() {
    local pid=$1 i rest=() p
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 150; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "pid $pid did not stop within 15 s of SIGTERM; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    STOPPED_EXIT=0
    wait "$pid" 2>/dev/null || STOPPED_EXIT=$?
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || rest+=("$p")
    done
    PIDS=("${rest[@]}")
}

delete_redis_keys() {
    # The prefix is a hash tag: every key of the service is "{<prefix>}:...".
    timeout 120 redis-cli -h "$HOST" -p "$REDIS_PORT" --scan --pattern "{$PREFIX}:*" \
        | xargs -r -n 1000 timeout 10 redis-cli -h "$HOST" -p "$REDIS_PORT" UNLINK >/dev/null
}

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        stop_pid "$pid"
    done 2>/dev/null
    delete_redis_keys 2>/dev/null || true
    if [[ $DB_CREATED == 1 ]]; then
        dropdb --if-exists --force -h "$HOST" -p "$PG_PORT" -U "$PG_USER" "$DB" 2>/dev/null ||
            say "could not drop database $DB; drop it by hand"
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- services ----------------------------------------------------------------------------------
rcli PING 2>/dev/null | grep -q PONG || die "Redis does not answer on $HOST:$REDIS_PORT (just services)"
createdb -h "$HOST" -p "$PG_PORT" -U "$PG_USER" "$DB" || die "cannot create database $DB on $HOST:$PG_PORT"
DB_CREATED=1

# A port no socket uses, below the ephemeral range (where the load generator's and everyone
# else's outgoing connections take their local ports, so a free-looking port can be taken by the
# time the service binds it).
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range
PORT_LOW=10000
PORT_HIGH=$((EPHEMERAL_LOW > PORT_LOW + 1000 ? EPHEMERAL_LOW - 1 : 65000))
free_port() {
    local port i
    for ((i = 0; i < 200; i++)); do
        port=$((PORT_LOW + (RANDOM * 32768 + RANDOM) % (PORT_HIGH - PORT_LOW + 1)))
        if [[ -z $(ss -Htan "( sport = :$port )" 2>/dev/null) ]] &&
            ! (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    die "no free port found"
}

service_env() { # the environment of every service process
    printf '%s\n' "DATABASE_URL=$DB_URL" "REDIS_URL=$REDIS_URL_BENCH" \
        "ORDERS_REDIS_PREFIX=$PREFIX" "ORDERS_EVENT_CHANNEL=$CHANNEL" \
        "ORDERS_LOG_LEVEL=warning" "ORDERS_LOG_FORMAT=term" "ORDERS_SHUTDOWN_TIMEOUT_MS=5000"
}

# Applies the migrations once, so the tables exist for TRUNCATE from the start.
mapfile -t ENV_COMMON < <(service_env)
env "${ENV_COMMON[@]}" "$BIN/orders" migrate >"$RUN_DIR/migrate.log" 2>&1 ||
    die "orders migrate failed; see $RUN_DIR/migrate.log"

SVC_PID=
SVC_PORT=
SVC_LOG=
# start_service NAME ROLES [VAR=value...]: a fresh service on a free port, ready (readyz 200).
# Tries another port if the one chosen was taken in the meantime.
start_service() {
    local name=$1 roles=$2 i try
    shift 2
    SVC_LOG=$RUN_DIR/$name.service.log
    for try in 1 2 3; do
        SVC_PORT=$(free_port) || exit 1
        env "${ENV_COMMON[@]}" "ORDERS_LISTEN=$HOST:$SVC_PORT" "$@" \
            "$BIN/orders" serve --roles "$roles" >"$SVC_LOG" 2>&1 &
        SVC_PID=$!
        PIDS+=("$SVC_PID")
        for ((i = 0; i < 300; i++)); do
            if curl -sf --max-time 1 -o /dev/null "http://$HOST:$SVC_PORT/readyz"; then
                return 0
            fi
            kill -0 "$SVC_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SVC_PID" 2>/dev/null; then
            die "service ($name) not ready after 30 s; see $SVC_LOG"
        fi
        stop_pid "$SVC_PID"
        if ! grep -q 'Address already in use' "$SVC_LOG"; then
            tail -n 20 "$SVC_LOG" >&2
            die "service ($name) exited at start-up; see $SVC_LOG"
        fi
        say "port $SVC_PORT was taken; trying another (attempt $try)"
    done
    die "service ($name) could not bind a port"
}

BASE_PID=
BASE_PORT=
start_baseline() {
    local i
    BASE_PORT=$(free_port) || exit 1   # started before any load: no race with its connections
    ORDERS_LISTEN=$HOST:$BASE_PORT "$BIN/orders-baseline" >"$RUN_DIR/ingest.baseline.log" 2>&1 &
    BASE_PID=$!
    PIDS+=("$BASE_PID")
    for ((i = 0; i < 100; i++)); do
        curl -sf --max-time 1 -o /dev/null "http://$HOST:$BASE_PORT/healthz" && return 0
        kill -0 "$BASE_PID" 2>/dev/null || die "orders-baseline exited at start-up"
        sleep 0.1
    done
    die "orders-baseline not ready after 10 s"
}

kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

# Stops the scenario's service and empties Redis (the prefix) and the database for the next one.
# Leaves the service's exit code in SVC_EXIT.
SVC_EXIT=
stop_service_and_reset() {
    stop_pid "$SVC_PID"
    SVC_EXIT=$STOPPED_EXIT
    reset_state
}

reset_state() {
    delete_redis_keys
    # order_counts (migration V2, when present) mirrors the orders table, so it goes too.
    if [[ $(psql_db "SELECT to_regclass('order_counts') IS NOT NULL") == t ]]; then
        psql_db 'TRUNCATE orders, order_items, notifications, notifications_due, order_counts CASCADE'
    else
        psql_db 'TRUNCATE orders, order_items, notifications CASCADE'
    fi
}

# RSS sampler: VmRSS of PID every 100 ms into FILE (KiB, one a line) until the process ends.
SAMPLER_PID=
start_sampler() {
    local pid=$1 file=$2
    (
        while [[ -r /proc/$pid/status ]]; do
            awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status" 2>/dev/null || true
            sleep 0.1
        done
    ) >"$file" &
    SAMPLER_PID=$!
    PIDS+=("$SAMPLER_PID")
}
stop_sampler() {
    [[ -n $SAMPLER_PID ]] && stop_pid "$SAMPLER_PID"
    SAMPLER_PID=
}

CLK_TCK=$(getconf CLK_TCK)
# CPU time (user + system, clock ticks) PID has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# load NAME URL PID ARGS...: one orders-load run against the server PID, raw JSON in
# RUN_DIR/NAME.json; notes its exit code, its wall time and the CPU time the server used.
declare -A LOAD_EXIT LOAD_WALL SERVER_CPU
load() {
    local name=$1 url=$2 pid=$3 code=0 t0 c0
    shift 3
    c0=$(cpu_ticks "$pid")
    t0=$(date +%s.%N)
    "$BIN/orders-load" --url "$url" --redis-url "$REDIS_URL_BENCH" --channel "$CHANNEL" \
        --json "$@" >"$RUN_DIR/$name.json" 2>"$RUN_DIR/$name.stderr" || code=$?
    LOAD_WALL[$name]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    SERVER_CPU[$name]=$(awk -v a="$c0" -v b="$(cpu_ticks "$pid")" -v t="$CLK_TCK" 'BEGIN { printf "%.1f", (b - a) / t }')
    LOAD_EXIT[$name]=$code
    if [[ $code -ge 2 || ! -s $RUN_DIR/$name.json ]]; then
        cat "$RUN_DIR/$name.stderr" >&2
        die "orders-load ($name) could not run"
    fi
    jq -c '{accepted, rejected, transport_errors, accept_rate, http_latency_ms,
            completed, missing, completion_rate, end_to_end_ms}' "$RUN_DIR/$name.json" |
        sed "s/^/bench:   $name: /" >&2
}
j() { jq -r "$2" "$RUN_DIR/$1.json"; }

# --- ingest ------------------------------------------------------------------------------------
say "ingest: warm-up ($WARMUP_COUNT orders each), then baseline and service alternating, $INGEST_RUNS runs each"
start_baseline
start_service ingest api
INGEST_ARGS=(--count "$INGEST_COUNT" --concurrency "$INGEST_CONCURRENCY" --no-events)
load ingest-warmup-baseline "http://$HOST:$BASE_PORT" "$BASE_PID" --count "$WARMUP_COUNT" --concurrency "$INGEST_CONCURRENCY" --no-events
load ingest-warmup-service "http://$HOST:$SVC_PORT" "$SVC_PID" --count "$WARMUP_COUNT" --concurrency "$INGEST_CONCURRENCY" --no-events
reset_state
for ((run = 1; run <= INGEST_RUNS; run++)); do
    load "ingest-baseline-$run" "http://$HOST:$BASE_PORT" "$BASE_PID" "${INGEST_ARGS[@]}"
    load "ingest-service-$run" "http://$HOST:$SVC_PORT" "$SVC_PID" "${INGEST_ARGS[@]}"
    delete_redis_keys   # the api-only service leaves its orders queued; start each run empty
done
INGEST_SVC_HWM=$(kib "$SVC_PID" VmHWM)
stop_pid "$BASE_PID"
stop_service_and_reset
INGEST_SVC_EXIT=$SVC_EXIT

# --- replicated --------------------------------------------------------------------------------
# A private primary and one replica (nothing on disk), so the shared Redis gets no replica.
REPL_PRIMARY_PORT=$(free_port)
REPL_REPLICA_PORT=$(free_port)
for port in "$REPL_PRIMARY_PORT" "$REPL_REPLICA_PORT"; do
    args=(--port "$port" --bind "$HOST" --save '' --appendonly no --dir "$RUN_DIR")
    [[ $port == "$REPL_REPLICA_PORT" ]] && args+=(--replicaof "$HOST" "$REPL_PRIMARY_PORT")
    redis-server "${args[@]}" >"$RUN_DIR/replicated.redis-$port.log" 2>&1 &
    PIDS+=("$!")
done
for ((i = 0; i < 100; i++)); do
    timeout 2 redis-cli -h "$HOST" -p "$REPL_REPLICA_PORT" INFO replication 2>/dev/null |
        grep -q 'master_link_status:up' && break
    sleep 0.1
done
((i < 100)) || die "the private replica did not sync with its primary in 10 s"
REPL_URL="redis://$HOST:$REPL_PRIMARY_PORT"
say "replicated: primary :$REPL_PRIMARY_PORT with one replica, MIN_REPLICAS 0 and 1 alternating, $INGEST_RUNS runs each"
start_service replicated-0 api "REDIS_URL=$REPL_URL"
REPL0_PID=$SVC_PID REPL0_PORT=$SVC_PORT
start_service replicated-1 api "REDIS_URL=$REPL_URL" ORDERS_REDIS_MIN_REPLICAS=1
REPL1_PID=$SVC_PID REPL1_PORT=$SVC_PORT
load replicated-warmup-0 "http://$HOST:$REPL0_PORT" "$REPL0_PID" --count "$WARMUP_COUNT" --concurrency "$INGEST_CONCURRENCY" --no-events
load replicated-warmup-1 "http://$HOST:$REPL1_PORT" "$REPL1_PID" --count "$WARMUP_COUNT" --concurrency "$INGEST_CONCURRENCY" --no-events
for ((run = 1; run <= INGEST_RUNS; run++)); do
    timeout 10 redis-cli -h "$HOST" -p "$REPL_PRIMARY_PORT" FLUSHALL >/dev/null
    load "replicated-0-$run" "http://$HOST:$REPL0_PORT" "$REPL0_PID" "${INGEST_ARGS[@]}"
    timeout 10 redis-cli -h "$HOST" -p "$REPL_PRIMARY_PORT" FLUSHALL >/dev/null
    load "replicated-1-$run" "http://$HOST:$REPL1_PORT" "$REPL1_PID" "${INGEST_ARGS[@]}"
done
stop_pid "$REPL0_PID"
stop_pid "$REPL1_PID"
reset_state

# --- drain -------------------------------------------------------------------------------------
say "drain: $DRAIN_COUNT orders, zero delay, all roles, --batch $DRAIN_BATCH --concurrency $DRAIN_CONCURRENCY"
start_service drain api,worker,notifier ORDERS_PROCESSING_DELAY_MS=0
load drain "http://$HOST:$SVC_PORT" "$SVC_PID" --count "$DRAIN_COUNT" --batch "$DRAIN_BATCH" \
    --concurrency "$DRAIN_CONCURRENCY" --wait 60
DRAIN_HWM=$(kib "$SVC_PID" VmHWM)
DRAIN_ROWS=$(psql_db "SELECT count(*) FILTER (WHERE status = 'completed') || '/' || count(*) FROM orders")
stop_service_and_reset
DRAIN_EXIT=$SVC_EXIT

# --- steady ------------------------------------------------------------------------------------
say "steady: $STEADY_RATE orders/s open loop for $STEADY_SECONDS s, zero delay, fresh service"
start_service steady api,worker,notifier ORDERS_PROCESSING_DELAY_MS=0
load steady "http://$HOST:$SVC_PORT" "$SVC_PID" --rate "$STEADY_RATE" --duration "$STEADY_SECONDS" \
    --concurrency "$STEADY_CONCURRENCY" --wait 30
STEADY_HWM=$(kib "$SVC_PID" VmHWM)
stop_service_and_reset
STEADY_EXIT=$SVC_EXIT

# --- realistic ---------------------------------------------------------------------------------
say "realistic: $REALISTIC_COUNT orders, 1000-3000 ms delay, ORDERS_MAX_IN_FLIGHT=$REALISTIC_IN_FLIGHT"
start_service realistic api,worker,notifier ORDERS_PROCESSING_DELAY_MS=1000-3000 \
    ORDERS_MAX_IN_FLIGHT="$REALISTIC_IN_FLIGHT"
start_sampler "$SVC_PID" "$RUN_DIR/realistic.rss-kib.txt"
load realistic "http://$HOST:$SVC_PORT" "$SVC_PID" --count "$REALISTIC_COUNT" \
    --concurrency "$REALISTIC_CONCURRENCY" --wait 60
REALISTIC_HWM=$(kib "$SVC_PID" VmHWM)
stop_sampler
REALISTIC_SAMPLED=$(sort -n "$RUN_DIR/realistic.rss-kib.txt" | tail -n 1)
stop_service_and_reset
REALISTIC_EXIT=$SVC_EXIT

# --- idle --------------------------------------------------------------------------------------
say "idle: RSS ${IDLE_SECONDS} s after start-up (all roles, default settings)"
start_service idle api,worker,notifier
sleep "$IDLE_SECONDS"
IDLE_RSS=$(kib "$SVC_PID" VmRSS)
IDLE_HWM=$(kib "$SVC_PID" VmHWM)
stop_service_and_reset
IDLE_EXIT=$SVC_EXIT

# --- stats -------------------------------------------------------------------------------------
STATS_ROWS=${BENCH_STATS_ROWS:-1000000}
say "stats: GET /stats with ${STATS_ROWS} orders stored (20 calls, after one warm-up)"
psql_db "INSERT INTO orders (order_id, customer_id, total, status, attempts, accepted_at,
                             processing_started_at, completed_at)
         SELECT gen_random_uuid(), 'c' || (i % 1000), 10.00,
                CASE WHEN i % 50 = 0 THEN 'cancelled' ELSE 'completed' END, 1,
                now() - (i || ' ms')::interval - interval '2 s',
                now() - (i || ' ms')::interval - interval '1 s',
                CASE WHEN i % 50 = 0 THEN NULL ELSE now() - (i || ' ms')::interval END
         FROM generate_series(1, $STATS_ROWS) i; ANALYZE orders;" >/dev/null
start_service stats api
curl -sf -o /dev/null "http://$HOST:$SVC_PORT/stats"
STATS_TIMES=$(for _ in $(seq 20); do
    curl -sf -o /dev/null -w '%{time_total}\n' "http://$HOST:$SVC_PORT/stats"
done | awk '{ printf "%.2f\n", $1 * 1000 }')
STATS_MEDIAN=$(sort -g <<<"$STATS_TIMES" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
STATS_MAX=$(sort -g <<<"$STATS_TIMES" | tail -n 1)
STATS_TOTAL=$(curl -sf "http://$HOST:$SVC_PORT/stats" | jq -r .orders.total)
stop_service_and_reset

# --- the table ---------------------------------------------------------------------------------
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ingest_median() { # ingest_median baseline|service|replicated-0|replicated-1 JQ
    local r name=ingest-$1
    [[ $1 == replicated-* ]] && name=$1
    for ((r = 1; r <= INGEST_RUNS; r++)); do j "$name-$r" "$2"; done | median
}
ingest_list() {
    local r out=()
    for ((r = 1; r <= INGEST_RUNS; r++)); do out+=("$(printf '%.0f' "$(j "ingest-$1-$r" .accept_rate)")"); done
    local IFS=,
    printf '%s' "${out[*]}" | sed 's/,/, /g'
}
num() { printf '%.0f' "$1" | sed ':a; s/\B[0-9]\{3\}\>/,&/; ta'; }   # 12,345
ms() { printf '%.2f' "$1"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
verdict() { # verdict VALUE >=|<= TARGET
    if awk -v a="$1" -v op="$2" -v b="$3" 'BEGIN { exit !(op == ">=" ? a + 0 >= b + 0 : a + 0 <= b + 0) }'; then
        printf 'pass'
    else
        printf '**FAIL**'
    fi
}

B_RATE=$(ingest_median baseline .accept_rate)
R0_RATE=$(ingest_median replicated-0 .accept_rate)
R1_RATE=$(ingest_median replicated-1 .accept_rate)
R_RATIO=$(awk -v a="$R1_RATE" -v b="$R0_RATE" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
S_RATE=$(ingest_median service .accept_rate)
RATIO=$(awk -v s="$S_RATE" -v b="$B_RATE" 'BEGIN { printf "%.2f", (b > 0 ? s / b : 0) }')
B_P50=$(ingest_median baseline .http_latency_ms.p50)
B_P99=$(ingest_median baseline .http_latency_ms.p99)
S_P50=$(ingest_median service .http_latency_ms.p50)
S_P99=$(ingest_median service .http_latency_ms.p99)

D_RATE=$(j drain .completion_rate)
ST_P99=$(j steady .end_to_end_ms.p99)
R_RATE=$(j realistic .sustained_completion_rate)
R_RATE_ALL=$(j realistic .completion_rate)
R_PEAK=$(( REALISTIC_HWM > ${REALISTIC_SAMPLED:-0} ? REALISTIC_HWM : ${REALISTIC_SAMPLED:-0} ))

clean() { # "accepted A, completed C, missing M, duplicated D, errors E, rejected R"
    jq -r '"accepted \(.accepted), completed \(.completed), missing \(.missing), duplicated \(.duplicated), transport errors \(.transport_errors), rejected \([.rejected[]] | add // 0)"' "$RUN_DIR/$1.json"
}
run_row() { # one line of the runs table
    jq -r --arg n "$1" --arg e "${LOAD_EXIT[$1]}" --arg w "${LOAD_WALL[$1]}" --arg c "${SERVER_CPU[$1]}" '
        def f: . * 100 | round / 100;
        "| \($n) | \(.accepted) | \([.rejected[]] | add // 0) | \(.transport_errors) | \(.elapsed_s | f) | \(.accept_rate | round) | \(.http_latency_ms.p50) / \(.http_latency_ms.p99) / \(.http_latency_ms.max) | " +
        (if .events_measured then "\(.completed) | \(.missing) | \(.duplicated) | \(.completion_rate | round) | \(.end_to_end_ms.p50) / \(.end_to_end_ms.p99) / \(.end_to_end_ms.max)" else "– | – | – | – | –" end) +
        " | \($w) | \($c) | \($e) |"' "$RUN_DIR/$1.json"
}

COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $COMMIT != unknown && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    COMMIT="$COMMIT + uncommitted changes"
fi
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
WALL=$((SECONDS - START_SECONDS))
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
LOG_LINES=$(cat "$RUN_DIR"/*.service.log | grep -c . || true)

# The backquotes below are Markdown, not command substitutions.
# shellcheck disable=SC2016
{
    printf '# Benchmarks, %s\n\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    [[ -z ${BENCH_BIN:-} ]] || printf -- '- binaries: %s (BENCH_BIN; the commit below is the working tree, not necessarily theirs)\n' "$BIN"
    printf -- '- commit: %s\n- machine: %s CPUs (nproc), %s; %s\n' "$COMMIT" "$(nproc)" "$CPU" "$(uname -sr)"
    printf -- '- Redis %s and PostgreSQL %s on 127.0.0.1, shared with the load generator and the service\n' \
        "$(rcli INFO server | awk -F: '/^redis_version/ { print $2 }' | tr -d '\r')" \
        "$(psql_db 'SHOW server_version' | awk '{ print $1 }')"
    printf -- '- wall time: %d s (%d s of it building)\n' "$WALL" "$BUILD_SECONDS"
    printf -- '- load average (1, 5, 15 min) before the scenarios: %s; after: %s\n\n' "$LOADAVG_START" "$LOADAVG_END"
    printf '| scenario | measured | target | result |\n|---|---|---|---|\n'
    printf '| ingest: baseline (no Redis) | median %s orders/s (runs: %s); HTTP p50 %s ms, p99 %s ms | | |\n' \
        "$(num "$B_RATE")" "$(ingest_list baseline)" "$(ms "$B_P50")" "$(ms "$B_P99")"
    printf '| ingest: service (`--roles api`) | median %s orders/s (runs: %s); HTTP p50 %s ms, p99 %s ms | | |\n' \
        "$(num "$S_RATE")" "$(ingest_list service)" "$(ms "$S_P50")" "$(ms "$S_P99")"
    printf '| ingest: service / baseline | **%s×** | ≥ 0.8× baseline | %s |\n' "$RATIO" "$(verdict "$RATIO" ">=" 0.8)"
    printf '| replicated: `MIN_REPLICAS=0`, one replica attached | median %s orders/s; HTTP p50 %s ms, p99 %s ms | | |\n' \
        "$(num "$R0_RATE")" "$(ms "$(ingest_median replicated-0 .http_latency_ms.p50)")" "$(ms "$(ingest_median replicated-0 .http_latency_ms.p99)")"
    printf '| replicated: `MIN_REPLICAS=1` (`WAIT 1`) | median %s orders/s; HTTP p50 %s ms, p99 %s ms; **%s×** the unreplicated rate | | |\n' \
        "$(num "$R1_RATE")" "$(ms "$(ingest_median replicated-1 .http_latency_ms.p50)")" "$(ms "$(ingest_median replicated-1 .http_latency_ms.p99)")" "$R_RATIO"
    printf '| drain: completion rate | **%s orders/s** (%s) | ≥ 10,000 orders/s | %s |\n' \
        "$(num "$D_RATE")" "$(clean drain)" "$(verdict "$D_RATE" ">=" 10000)"
    printf '| drain: end to end | p50 %s ms, p99 %s ms, max %s ms; accept rate %s orders/s | | |\n' \
        "$(j drain .end_to_end_ms.p50)" "$(j drain .end_to_end_ms.p99)" "$(j drain .end_to_end_ms.max)" "$(num "$(j drain .accept_rate)")"
    printf '| steady: end to end | p50 %s ms, **p99 %s ms**, max %s ms (%s) | p99 ≤ 10 ms | %s |\n' \
        "$(j steady .end_to_end_ms.p50)" "$ST_P99" "$(j steady .end_to_end_ms.max)" "$(clean steady)" "$(verdict "$ST_P99" "<=" 10)"
    printf '| realistic: completion rate, sustained | **%s orders/s** (10th to 90th percentile of completions; over the whole run, first request to last event: %s orders/s; %s) | ≥ 2,250 orders/s | %s |\n' \
        "$(num "$R_RATE")" "$(num "$R_RATE_ALL")" "$(clean realistic)" "$(verdict "$R_RATE" ">=" 2250)"
    printf '| realistic: peak RSS | **%s MiB** (VmHWM %s MiB, max of 100 ms VmRSS samples %s MiB) | ≤ 100 MiB | %s |\n' \
        "$(mib "$R_PEAK")" "$(mib "$REALISTIC_HWM")" "$(mib "${REALISTIC_SAMPLED:-0}")" "$(verdict "$R_PEAK" "<=" 102400)"
    printf '| idle: RSS | **%s MiB** (VmRSS %d s after ready; VmHWM %s MiB) | ≤ 20 MiB | %s |\n' \
        "$(mib "$IDLE_RSS")" "$IDLE_SECONDS" "$(mib "$IDLE_HWM")" "$(verdict "$IDLE_RSS" "<=" 20480)"
    printf '| stats: GET /stats with %s orders stored | median **%s ms**, max %s ms (20 calls; it counted %s orders) | < 50 ms | %s |\n' \
        "$(num "$STATS_ROWS")" "$STATS_MEDIAN" "$STATS_MAX" "$(num "$STATS_TOTAL")" "$(verdict "$STATS_MEDIAN" "<=" 50)"
    printf '\nNotes:\n\n'
    printf -- '- ingest: `orders-load --count %s --concurrency %s --no-events`, baseline and service alternating (%s runs each, medians reported), after one %s-order warm-up run against each; the Redis keys are deleted between runs. Baseline: `orders-baseline` (benches/baseline.rs), the same body checks, `NewOrder::parse`, `Job::accept` and payload, no Redis.\n' \
        "$INGEST_COUNT" "$INGEST_CONCURRENCY" "$INGEST_RUNS" "$WARMUP_COUNT"
    printf -- '- drain: `--count %s --batch %s --concurrency %s` (POST /orders/batch, so ingest is not the limit); completion rate = completed / time from the first request to the last event. Rows in PostgreSQL at the end (completed/all): %s.\n' \
        "$DRAIN_COUNT" "$DRAIN_BATCH" "$DRAIN_CONCURRENCY" "$DRAIN_ROWS"
    printf -- '- steady: `--rate %s --duration %s --concurrency %s`, open loop, latencies from the intended send time.\n' \
        "$STEADY_RATE" "$STEADY_SECONDS" "$STEADY_CONCURRENCY"
    printf -- '- realistic: `--count %s --concurrency %s`, closed loop, `ORDERS_PROCESSING_DELAY_MS=1000-3000 ORDERS_MAX_IN_FLIGHT=%s`. The target (0.9 × in-flight ÷ mean delay) is a rate in full swing, so the verdict is on the sustained rate; the whole-run rate also counts the first second, before any order can finish, and the last orders'"'"' 1-3 s, which caps it near 2,000 orders/s for any service (a simulation of perfect slots: scripts/bench.sh header).\n' \
        "$REALISTIC_COUNT" "$REALISTIC_CONCURRENCY" "$REALISTIC_IN_FLIGHT"
    printf -- '- Every scenario ran a fresh service process (stopped with SIGTERM between scenarios; exit codes ingest %s, drain %s, steady %s, realistic %s, idle %s), with the Redis keys of its prefix deleted and the tables truncated in between. Peak RSS (VmHWM) of the other scenarios: ingest %s MiB, drain %s MiB, steady %s MiB.\n' \
        "$INGEST_SVC_EXIT" "$DRAIN_EXIT" "$STEADY_EXIT" "$REALISTIC_EXIT" "$IDLE_EXIT" \
        "$(mib "$INGEST_SVC_HWM")" "$(mib "$DRAIN_HWM")" "$(mib "$STEADY_HWM")"
    printf -- '- The service logged at `ORDERS_LOG_LEVEL=warning` (format term) into files, not the terminal, so that logging does not distort the numbers: %s lines in all (bench-results/bench-%s/*.service.log).\n' \
        "$LOG_LINES" "$STAMP"
    printf -- '- The load generator, the service, Redis and PostgreSQL share the same %s CPUs; nothing else was stopped for the run. The service and the baseline ran their default runtime threads (ORDERS_THREADS=0: half the CPUs, at least one).\n' "$(nproc)"
    printf -- '- Raw JSON of every run: bench-results/bench-%s/.\n' "$STAMP"
    printf '\nRuns (latencies in ms; sending s and accept/s are the sending phase, run wall s includes the wait for the last events; server CPU s is user + system time of the server process during the run; load exit code 1 = something missing, duplicated or a transport error):\n\n'
    printf '| run | accepted | rejected | errors | sending s | accept/s | HTTP p50 / p99 / max | completed | missing | dup | completion/s | e2e p50 / p99 / max | run wall s | server CPU s | exit |\n'
    printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
    for name in ingest-warmup-baseline ingest-warmup-service; do run_row "$name"; done
    for ((r = 1; r <= INGEST_RUNS; r++)); do
        run_row "ingest-baseline-$r"
        run_row "ingest-service-$r"
    done
    for name in replicated-warmup-0 replicated-warmup-1; do run_row "$name"; done
    for ((r = 1; r <= INGEST_RUNS; r++)); do
        run_row "replicated-0-$r"
        run_row "replicated-1-$r"
    done
    for name in drain steady realistic; do run_row "$name"; done
} >"$OUT_MD"

cat "$OUT_MD"
say "wrote $OUT_MD (raw runs in $RUN_DIR/) in $WALL s"
