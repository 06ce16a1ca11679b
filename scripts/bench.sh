#!/usr/bin/env bash
# `just bench`: the benchmarks of the order service, back to back, against the local Redis
# (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432, user postgres) only.
#
#   ingest     POST /orders, no events: the real service (--roles api) against orders-baseline
#              (the same handler without Redis, benches/baseline.rs), alternating, 3 runs each.
#   drain      50,000 orders, zero processing delay, all roles in one process; then the event
#              stream's length and Redis memory (MEMORY USAGE), and that of the default
#              retention (100,000 events) at the same size per event.
#   steady     2,000 orders/s open loop for 20 s, zero delay, freshly started service.
#   tracing    steady, A/B: with no trace endpoint (tracing off) and with OTEL_EXPORTER_OTLP_ENDPOINT
#              at a local sink (a python3 HTTP server that answers 200 and counts the bytes), every
#              order traced (ratio 1.0); alternating, 3 runs each (the first variant alternates
#              too), each a fresh service; medians and their ratios. With BENCH_TRACING_BASE=DIR,
#              a third variant "base": DIR/orders, a build from before tracing, so that "off" is
#              measured against the code without it.
#   realistic  20,000 orders, 1000-3000 ms delay, ORDERS_MAX_IN_FLIGHT=5000; peak RSS. Judged on
#              the sustained completion rate (10th to 90th percentile of completion times): over
#              the whole run, 5,000 perfect slots would complete 20,000 such orders at about
#              2,000/s (fill, then the tail of the last delays), so the whole-run rate is shown too.
#   replicated POST /orders against a private primary with one replica, ORDERS_REDIS_MIN_REPLICAS=0
#              and =1 (each request waits for `WAIT 1`) alternating, 3 runs each: what the
#              replica acknowledgement costs.
#   idle       RSS 3 s after start-up.
#   console    every call the operator's console makes, with 1,000,000 orders in PostgreSQL and
#              100,000 dead letters in Redis (issue 15: each under 50 ms, median of 20). One
#              seeding by SQL: orders with items, a spread of statuses and customers, errors and
#              request ids (V7), notifications; from the same rows, the dead letters (entries hash
#              and index, as the service stores them), 1,000 scheduled retries with their pending
#              entries and the per-second counters of the chart, piped into redis-cli --pipe.
#              Then the service (api and worker, admin token set) and a second worker process,
#              one warm-up and 20 timed calls (curl's time_total) of each: GET /stats (what the
#              `stats` scenario timed before), /stats/history, /workers, order lists and detail,
#              dead-letter pages, filters and actions, /scheduled, /metrics, and /console when
#              this build serves it.
#
# Every scenario gets a fresh service process on a free port; a throw-away database
# (orders_bench_<random>, dropped at the end) and a fresh Redis key prefix and event channel
# (deleted at the end) keep it apart from anything else on the machine. Writes the Markdown table
# to bench-results/bench-<date>.md and each run's raw JSON, the service logs and RSS samples to
# bench-results/bench-<date>/. Needs cargo, curl, jq, psql/createdb/dropdb and redis-cli.
#
# Knobs (environment): BENCH_SCENARIOS runs only these, comma- or space-separated (default all;
# they run in the order ingest, replicated, drain, steady, tracing, realistic, idle, console whatever the
# order named; `stats` is another name for `console`), e.g. `BENCH_SCENARIOS=console just bench`;
# BENCH_NO_BUILD=1 uses the release binaries already built; BENCH_BIN=DIR uses orders,
# orders-load and orders-baseline from DIR instead (no build; for A/B comparisons);
# BENCH_INGEST_COUNT (100000: runs of 3 s or so; at 20,000 a run lasted half a second and the ratio
# swung from 0.64 to 0.92 between runs of one build), BENCH_INGEST_RUNS (3), BENCH_DRAIN_COUNT (50000),
# BENCH_STEADY_RATE (2000), BENCH_STEADY_SECONDS (20), BENCH_TRACING_RUNS (3), BENCH_TRACING_SECONDS
# (BENCH_STEADY_SECONDS: each run is steady at BENCH_STEADY_RATE), BENCH_TRACING_BASE (unset),
# BENCH_REALISTIC_COUNT (20000),
# BENCH_CONSOLE_ROWS (1000000 orders; a tenth of them failed, and as many dead letters: 99% of
# the failed orders' plus 1,000 payloads that are no order).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START_SECONDS=$SECONDS

INGEST_COUNT=${BENCH_INGEST_COUNT:-100000}
INGEST_RUNS=${BENCH_INGEST_RUNS:-3}
INGEST_CONCURRENCY=64
INGEST_ARGS=(--count "$INGEST_COUNT" --concurrency "$INGEST_CONCURRENCY" --no-events)
WARMUP_COUNT=2000
DRAIN_COUNT=${BENCH_DRAIN_COUNT:-50000}
DRAIN_BATCH=100
DRAIN_CONCURRENCY=8
STEADY_RATE=${BENCH_STEADY_RATE:-2000}
STEADY_SECONDS=${BENCH_STEADY_SECONDS:-20}
STEADY_CONCURRENCY=128
TRACING_RUNS=${BENCH_TRACING_RUNS:-3}
TRACING_SECONDS=${BENCH_TRACING_SECONDS:-$STEADY_SECONDS}
TRACING_BASE=${BENCH_TRACING_BASE:-}
REALISTIC_COUNT=${BENCH_REALISTIC_COUNT:-20000}
REALISTIC_CONCURRENCY=64
REALISTIC_IN_FLIGHT=5000
IDLE_SECONDS=3
CONSOLE_ROWS=${BENCH_CONSOLE_ROWS:-1000000}
CONSOLE_CALLS=20
CONSOLE_TARGET_MS=50

# Only ever this machine.
HOST=127.0.0.1
PG_PORT=5432
PG_USER=postgres
REDIS_PORT=6379
REDIS_URL_BENCH="redis://$HOST:$REDIS_PORT"

say() { printf 'bench: %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

# The scenarios to run: want NAME says whether NAME is one.
ALL_SCENARIOS=(ingest replicated drain steady tracing realistic idle console)
declare -A WANTED=()
SCENARIOS_NAMED=${BENCH_SCENARIOS:-all}
read -ra NAMED <<<"${SCENARIOS_NAMED//,/ }"
for name in "${NAMED[@]}"; do
    case $name in
        all) for n in "${ALL_SCENARIOS[@]}"; do WANTED[$n]=1; done ;;
        stats) WANTED[console]=1 ;;
        *) [[ " ${ALL_SCENARIOS[*]} " == *" $name "* ]] ||
            die "unknown scenario '$name' in BENCH_SCENARIOS (one of: ${ALL_SCENARIOS[*]}, all)"
           WANTED[$name]=1 ;;
    esac
done
((${#WANTED[@]} > 0)) || die "BENCH_SCENARIOS names no scenario"
want() { [[ -n ${WANTED[$1]:-} ]]; }
((CONSOLE_ROWS >= 10000)) || die "BENCH_CONSOLE_ROWS must be at least 10000"

for tool in cargo curl jq psql createdb dropdb redis-cli; do
    have "$tool" || die "$tool is needed (jq: apt-get install jq; redis-cli: redis-tools; psql/createdb/dropdb: postgresql-client)"
done
if want tracing; then
    have python3 || die "python3 is needed for the tracing scenario's OTLP sink"
    if [[ -n $TRACING_BASE ]]; then
        TRACING_BASE=$(cd "$TRACING_BASE" && pwd)
        [[ -x $TRACING_BASE/orders ]] || die "BENCH_TRACING_BASE: $TRACING_BASE/orders is missing"
    fi
fi

# No ORDERS_* setting of the caller leaks into the runs: each scenario sets what it needs.
while IFS= read -r name; do
    unset "$name"
done < <(compgen -e | grep '^ORDERS_' || true)
unset DATABASE_URL REDIS_URL
# Nor the caller's tracing: only the tracing scenario's "on" runs export.
while IFS= read -r name; do
    unset "$name"
done < <(compgen -e | grep '^OTEL_' || true)

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
declare -A LOAD_EXIT LOAD_WALL SERVER_CPU T_E2E T_HTTP T_RATE T_CPU
TRACING_EXITS=()
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

# Figures for the tables.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
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

# --- ingest ------------------------------------------------------------------------------------
if want ingest; then
    say "ingest: warm-up ($WARMUP_COUNT orders each), then baseline and service alternating, $INGEST_RUNS runs each"
    start_baseline
    start_service ingest api
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
fi

# --- replicated --------------------------------------------------------------------------------
if want replicated; then
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
fi

# --- drain -------------------------------------------------------------------------------------
if want drain; then
    say "drain: $DRAIN_COUNT orders, zero delay, all roles, --batch $DRAIN_BATCH --concurrency $DRAIN_CONCURRENCY"
    start_service drain api,worker,notifier ORDERS_PROCESSING_DELAY_MS=0
    load drain "http://$HOST:$SVC_PORT" "$SVC_PID" --count "$DRAIN_COUNT" --batch "$DRAIN_BATCH" \
        --concurrency "$DRAIN_CONCURRENCY" --wait 60
    DRAIN_HWM=$(kib "$SVC_PID" VmHWM)
    DRAIN_ROWS=$(psql_db "SELECT count(*) FILTER (WHERE status = 'completed') || '/' || count(*) FROM orders")
    # The event stream after the drain: its entries and Redis memory (0 on a build without it).
    DRAIN_STREAM_LEN=$(rcli XLEN "{$PREFIX}:events" 2>/dev/null || echo 0)
    DRAIN_STREAM_BYTES=$(rcli MEMORY USAGE "{$PREFIX}:events" SAMPLES 0 2>/dev/null || echo 0)
    [[ $DRAIN_STREAM_BYTES =~ ^[0-9]+$ ]] || DRAIN_STREAM_BYTES=0
    stop_service_and_reset
    DRAIN_EXIT=$SVC_EXIT
fi

# --- steady ------------------------------------------------------------------------------------
if want steady; then
    say "steady: $STEADY_RATE orders/s open loop for $STEADY_SECONDS s, zero delay, fresh service"
    start_service steady api,worker,notifier ORDERS_PROCESSING_DELAY_MS=0
    load steady "http://$HOST:$SVC_PORT" "$SVC_PID" --rate "$STEADY_RATE" --duration "$STEADY_SECONDS" \
        --concurrency "$STEADY_CONCURRENCY" --wait 30
    STEADY_HWM=$(kib "$SVC_PID" VmHWM)
    stop_service_and_reset
    STEADY_EXIT=$SVC_EXIT
fi

# --- tracing -----------------------------------------------------------------------------------
if want tracing; then
    # The OTLP sink: answers every POST with 200 (an empty ExportTraceServiceResponse) and writes
    # the size of each body, one a line.
    SINK_PORT=$(free_port)
    python3 - "$HOST" "$SINK_PORT" "$RUN_DIR/tracing.sink-bytes.txt" >"$RUN_DIR/tracing.sink.log" 2>&1 <<'PY' &
import http.server, sys
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = open(path, "a", buffering=1)
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        out.write(f"{n}\n")
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((host, port), Sink).serve_forever()
PY
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    for ((i = 0; i < 100; i++)); do
        (exec 3<>"/dev/tcp/$HOST/$SINK_PORT") 2>/dev/null && break
        kill -0 "$SINK_PID" 2>/dev/null || die "the OTLP sink exited at start-up; see $RUN_DIR/tracing.sink.log"
        sleep 0.1
    done
    ((i < 100)) || die "the OTLP sink did not listen within 10 s"
    say "tracing: steady ($STEADY_RATE orders/s for $TRACING_SECONDS s) without and with an OTLP endpoint (sink :$SINK_PORT), $TRACING_RUNS runs each"
    TRACING_VARIANTS=(off on)
    [[ -n $TRACING_BASE ]] && TRACING_VARIANTS+=(base)
    for ((run = 1; run <= TRACING_RUNS; run++)); do
        # Each run starts with another variant, so that none always goes first.
        variants=()
        for ((v = 0; v < ${#TRACING_VARIANTS[@]}; v++)); do
            variants+=("${TRACING_VARIANTS[(v + run - 1) % ${#TRACING_VARIANTS[@]}]}")
        done
        for variant in "${variants[@]}"; do
            extra=()
            [[ $variant == on ]] && extra=("OTEL_EXPORTER_OTLP_ENDPOINT=http://$HOST:$SINK_PORT")
            service_bin=$BIN
            [[ $variant == base ]] && service_bin=$TRACING_BASE
            BIN=$service_bin start_service "tracing-$variant-$run" api,worker,notifier ORDERS_PROCESSING_DELAY_MS=0 "${extra[@]}"
            load "tracing-$variant-$run" "http://$HOST:$SVC_PORT" "$SVC_PID" --rate "$STEADY_RATE" \
                --duration "$TRACING_SECONDS" --concurrency "$STEADY_CONCURRENCY" --wait 30
            stop_service_and_reset
            TRACING_EXITS+=("$variant-$run $SVC_EXIT")
        done
    done
    stop_pid "$SINK_PID"
    TRACING_POSTS=$(grep -c . "$RUN_DIR/tracing.sink-bytes.txt" || true)
    TRACING_KIB=$(awk '{ s += $1 } END { printf "%.0f", s / 1024 }' "$RUN_DIR/tracing.sink-bytes.txt" 2>/dev/null || echo 0)
fi

# --- realistic ---------------------------------------------------------------------------------
if want realistic; then
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
fi

# --- idle --------------------------------------------------------------------------------------
if want idle; then
    say "idle: RSS ${IDLE_SECONDS} s after start-up (all roles, default settings)"
    start_service idle api,worker,notifier
    sleep "$IDLE_SECONDS"
    IDLE_RSS=$(kib "$SVC_PID" VmRSS)
    IDLE_HWM=$(kib "$SVC_PID" VmHWM)
    stop_service_and_reset
    IDLE_EXIT=$SVC_EXIT
fi

# --- console -----------------------------------------------------------------------------------
# The seeded orders, one row per order computed from i alone, so every statement that reads the
# view sees the same orders; and the JSON the service writes: a job payload as `Job` serialises
# it (fields in struct order), a dead-letter entry as `DeadLetter::to_stored` does (keys sorted,
# as serde_json's map keeps them; `total` printed as the f64 it was parsed into). Orders are
# accepted every 600 ms back from 10 minutes before the start (a million: a week; i = 1 is the
# newest). By i: failed (i % 100 < 10; dead-lettered, but for i % 1000 = 5, whose dead letter an
# operator deleted), cancelled (10-11), processing (50-59 among the newest 10,000: waiting for
# a scheduled retry), completed (the rest; 20-22 after a failed try). 10,000 customers, 1-3
# items, a request id on the newest 600,000 (the column is V7's: older orders have none).
read -r -d '' CONSOLE_SEED_SQL <<'SQL' || true
SET jit = off;
SET work_mem = '256MB';
CREATE FUNCTION pg_temp.rfc3339(t timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $f$
    SELECT regexp_replace(to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '\.?0+$', '') || 'Z'
$f$;
CREATE FUNCTION pg_temp.unix_ms(t timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE AS $f$
    SELECT floor(extract(epoch FROM t) * 1000)::bigint
$f$;
CREATE FUNCTION pg_temp.f64(n numeric) RETURNS text LANGUAGE sql IMMUTABLE AS $f$
    SELECT CASE WHEN n = trunc(n) THEN trunc(n)::bigint::text || '.0' ELSE n::float8::text END
$f$;
CREATE FUNCTION pg_temp.job(id text, customer text, items text[], total numeric,
                            accepted timestamptz, failures int, errors text[], request_id text)
RETURNS text LANGUAGE sql IMMUTABLE AS $f$
    SELECT '{"order_id":"' || id || '","customer_id":' || to_json(customer)::text
        || ',"items":' || array_to_json(items)::text || ',"total":' || total::text
        || ',"accepted_at":"' || pg_temp.rfc3339(accepted) || '"'
        || CASE WHEN failures > 0 THEN ',"failures":' || failures ELSE '' END
        || CASE WHEN cardinality(errors) > 0 THEN ',"errors":' || array_to_json(errors)::text ELSE '' END
        || coalesce(',"request_id":"' || request_id || '"', '') || '}'
$f$;
CREATE TEMP VIEW seed AS
SELECT s.*, t0.*, t1.*, u.*,
       lpad(pg_temp.unix_ms(u.failed_at)::text, 15, '0') || ':' || t1.id AS dead_key
FROM (
    SELECT i, abs(hashint4(i)) AS h, md5(i::text || :'salt') AS r,
           :'base'::timestamptz - interval '10 min' - i * interval '600 ms' AS accepted,
           CASE WHEN i % 100 < 10 THEN 'failed'
                WHEN i % 100 < 12 THEN 'cancelled'
                WHEN i <= 10000 AND i % 100 BETWEEN 50 AND 59 THEN 'processing'
                ELSE 'completed' END AS status
    FROM generate_series(:rows, 1, -1) i
) s
CROSS JOIN LATERAL (
    SELECT lpad(to_hex(pg_temp.unix_ms(s.accepted)), 12, '0') AS ms_hex,
           'customer-' || lpad((s.h % 10000)::text, 4, '0') AS customer,
           ((abs(hashint4(s.i * 31)) % 50000 + 100) / 100.0)::numeric(12, 2) AS total,
           (ARRAY['sku-' || lpad((s.h / 7 % 5000)::text, 4, '0'),
                  'sku-' || lpad((s.h / 11 % 5000)::text, 4, '0'),
                  'sku-' || lpad((s.h / 13 % 5000)::text, 4, '0')])[1:1 + s.h % 3] AS items,
           CASE WHEN s.status = 'completed' AND s.i % 100 NOT BETWEEN 20 AND 22 THEN '{}'::text[]
           ELSE ARRAY(
               SELECT CASE WHEN k = 8 AND s.i % 100000 = 3
                           THEN 'db error: FATAL: sorry, too many clients already'
                           ELSE (ARRAY['error connecting to server: Connection refused (os error 111)',
                                       'timed out waiting for a database connection',
                                       'db error: ERROR: canceling statement due to statement timeout',
                                       'db error: ERROR: could not serialize access due to concurrent update'
                                      ])[1 + (s.h + k) % 4] END
               FROM generate_series(1, CASE WHEN s.status = 'failed' THEN 8
                                            WHEN s.status = 'processing' THEN 1 + s.h % 6
                                            WHEN s.status = 'completed' THEN 1
                                            ELSE 0 END) k)
           END AS errs
) t0
CROSS JOIN LATERAL (
    -- A UUIDv7 of the acceptance time, as Job::accept makes; request ids likewise.
    SELECT substr(t0.ms_hex, 1, 8) || '-' || substr(t0.ms_hex, 9, 4) || '-7' || substr(s.r, 1, 3)
           || '-8' || substr(s.r, 4, 3) || '-' || substr(s.r, 7, 12) AS id,
           CASE WHEN s.i <= 600000
                THEN t0.ms_hex || '7' || substr(s.r, 19, 14) || substr(s.r, 1, 5) END AS request_id
) t1
CROSS JOIN LATERAL (
    SELECT CASE WHEN s.status = 'failed' THEN s.accepted + (60 + s.h % 240) * interval '1 s' END AS failed_at,
           CASE WHEN s.status = 'cancelled' AND s.h % 2 = 0 THEN NULL
                WHEN s.status = 'failed' THEN s.accepted + (58 + s.h % 240) * interval '1 s'
                ELSE s.accepted + (5 + s.h % 50) * interval '1 ms' END AS started,
           CASE WHEN s.status = 'completed'
                THEN s.accepted + (1005 + s.h % 2000) * interval '1 ms'
                     + CASE WHEN cardinality(t0.errs) > 0 THEN (1 + s.h % 60) * interval '1 s'
                            ELSE interval '0' END
           END AS completed
) u;
SQL

# console_psql: runs the SQL on stdin in one session, after the definitions above.
console_psql() {
    { printf '%s\n' "$CONSOLE_SEED_SQL"; cat; } |
        psql -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U "$PG_USER" -d "$DB" -tA \
            -v rows="$CONSOLE_ROWS" -v base="$CONSOLE_BASE" -v salt="$RAND" -v tag="{$PREFIX}:" -f -
}

# Tab-separated words, a command a line, into the Redis protocol.
to_resp() {
    LC_ALL=C awk -F '\t' '{ printf "*%d\r\n", NF; for (i = 1; i <= NF; i++) printf "$%d\r\n%s\r\n", length($i), $i }'
}

# The Redis side of the same orders, as tab-separated commands: the failed orders' dead letters
# (entries hash and index), the scheduled retries with their pending entries, 1,000 poison
# payloads, the chart's per-second counters.
console_redis_commands() {
    console_psql <<'SQL'
\set FETCH_COUNT 10000
-- The failed orders' dead letters (the payload is the last delivery's: 7 failures before it).
SELECT concat_ws(E'\t', 'HSET', :'tag' || 'dead:entries', id,
           '{"customer_id":' || to_json(customer)::text || ',"errors":' || array_to_json(errs)::text
           || ',"failed_at":"' || pg_temp.rfc3339(failed_at) || '","id":"' || id || '","key":"'
           || dead_key || '","order_id":"' || id || '","payload":'
           || to_json(pg_temp.job(id, customer, items, total, accepted, 7, errs[1:7], request_id))::text
           || ',"total":' || pg_temp.f64(total) || '}')
       || E'\n' || concat_ws(E'\t', 'ZADD', :'tag' || 'dead:index', '0', dead_key)
FROM seed WHERE status = 'failed' AND i % 1000 <> 5;
-- The processing orders' scheduled retries, due in 30 to 60 minutes (after the run), and their
-- pending entries, as WorkerQueue::schedule_retry writes them.
SELECT concat_ws(E'\t', 'ZADD', :'tag' || 'scheduled',
           pg_temp.unix_ms(:'base'::timestamptz + interval '30 min' + h % 1800 * interval '1 s')::text, job)
       || E'\n' || concat_ws(E'\t', 'HSET', :'tag' || 'pending', id, job)
FROM (SELECT id, h, pg_temp.job(id, customer, items, total, accepted, cardinality(errs), errs,
                                request_id) AS job
      FROM seed WHERE status = 'processing') p;
-- 1,000 payloads that are no order at all (no order id, customer or total), spread as the orders.
SELECT concat_ws(E'\t', 'HSET', :'tag' || 'dead:entries', id,
           '{"customer_id":null,"errors":["invalid payload: malformed JSON: expected value at line 1 column 1"]'
           || ',"failed_at":"' || pg_temp.rfc3339(at) || '","id":"' || id || '","key":"' || key
           || '","order_id":null,"payload":"garbage ' || p || '","total":null}')
       || E'\n' || concat_ws(E'\t', 'ZADD', :'tag' || 'dead:index', '0', key)
FROM (SELECT p, id, at, lpad(pg_temp.unix_ms(at)::text, 15, '0') || ':' || id AS key
      FROM (SELECT p, md5(p::text || :'salt' || 'poison')::uuid::text AS id,
                   :'base'::timestamptz - interval '10 min' - p * :rows * interval '0.6 ms' AS at
            FROM generate_series(1, 1000) p) x) y;
-- The chart's per-second counters (completed, dead-lettered) over the last 600 s.
SELECT concat_ws(E'\t', 'SET', :'tag' || 'completed:' || sec, (20 + abs(hashint4(sec::int)) % 30)::text,
                 'EX', '660')
       || E'\n' || concat_ws(E'\t', 'SET', :'tag' || 'failed:' || sec, (abs(hashint4(sec::int)) % 3)::text,
                             'EX', '660')
FROM generate_series(extract(epoch FROM now())::bigint - 600, extract(epoch FROM now())::bigint) sec;
SQL
}

CONSOLE_LABELS=()   # the calls, in the order timed
declare -A C_MEDIAN C_MAX C_BYTES C_NOTE C_BODY
# console_call LABEL STATUS METHOD public|admin PATH...: one warm-up, then CONSOLE_CALLS timed
# calls. With one PATH every call goes there; with more, each call takes the next one (the
# first is the warm-up's), for actions that need a new id each time. The first timed call's
# response is kept in RUN_DIR.
console_call() {
    local label=$1 want=$2 method=$3 auth=$4 k path out code t size body
    shift 4
    local paths=("$@") times=() sizes=() bad=() headers=()
    [[ $auth == admin ]] && headers=(-H "Authorization: Bearer $CONSOLE_TOKEN")
    body=$RUN_DIR/console.call-$(printf '%02d' "$((${#CONSOLE_LABELS[@]} + 1))").body
    for ((k = 0; k <= CONSOLE_CALLS; k++)); do
        path=${paths[0]}
        ((${#paths[@]} == 1)) || path=${paths[k]}
        out=$(curl -s -o "$RUN_DIR/console.last.body" --max-time 30 -X "$method" "${headers[@]}" \
            -w '%{http_code} %{time_total} %{size_download}' "http://$HOST:$SVC_PORT$path") ||
            out="000 0 0"
        read -r code t size <<<"$out"
        [[ $code == "$want" ]] || bad+=("$code")
        ((k == 1)) && cp "$RUN_DIR/console.last.body" "$body"
        ((k > 0)) || continue
        times+=("$(awk -v t="$t" 'BEGIN { printf "%.2f", t * 1000 }')")
        sizes+=("$size")
    done
    CONSOLE_LABELS+=("$label")
    C_BODY[$label]=$body
    C_MEDIAN[$label]=$(printf '%s\n' "${times[@]}" | median)
    C_MAX[$label]=$(printf '%s\n' "${times[@]}" | sort -g | tail -n 1)
    C_BYTES[$label]=$(printf '%s\n' "${sizes[@]}" | median)
    C_NOTE[$label]=
    if ((${#bad[@]} > 0)); then
        C_NOTE[$label]="$(printf '%s\n' "${bad[@]}" | sort | uniq -c |
            awk -v w="$want" '{ printf "%s%d× HTTP %s", (NR > 1 ? ", " : ""), $1, ($2 == "000" ? "transport error" : $2) } END { printf " (expected %s)", w }')"
    fi
    say "  $label: median ${C_MEDIAN[$label]} ms, max ${C_MAX[$label]} ms${C_NOTE[$label]:+; ${C_NOTE[$label]}}"
}

if want console; then
    say "console: seeding $(num "$CONSOLE_ROWS") orders (SQL) and their dead letters (redis-cli --pipe)"
    CONSOLE_BASE=$(date -u '+%Y-%m-%d %H:%M:%S+00')
    t0=$SECONDS
    # One statement: the order_counts triggers run once, on the whole set.
    console_psql >/dev/null <<'SQL'
WITH src AS MATERIALIZED (SELECT * FROM seed),
o AS (
    INSERT INTO orders (order_id, customer_id, total, status, attempts, last_error, accepted_at,
                        processing_started_at, completed_at, created_at, updated_at, request_id,
                        errors)
    SELECT id::uuid, customer, total, status,
           CASE status WHEN 'completed' THEN 1 + cardinality(errs) WHEN 'failed' THEN 8
                       WHEN 'processing' THEN cardinality(errs) ELSE (started IS NOT NULL)::int END,
           CASE WHEN status IN ('failed', 'completed') THEN errs[cardinality(errs)] END,
           accepted, started, completed, coalesce(started, accepted),
           coalesce(completed, failed_at, started + interval '1 s', accepted + interval '30 s'),
           request_id,
           CASE WHEN status IN ('failed', 'completed') AND cardinality(errs) > 0
                THEN array_to_json(errs)::jsonb END
    FROM src
),
it AS (
    INSERT INTO order_items (order_id, position, item)
    SELECT id::uuid, x.position, x.item FROM src, unnest(items) WITH ORDINALITY AS x(item, position)
)
INSERT INTO notifications (order_id, customer_id, channel, sent_at)
SELECT id::uuid, customer, 'email', completed + interval '20 ms' FROM src WHERE status = 'completed';
ANALYZE orders;
ANALYZE order_items;
ANALYZE notifications;
SQL
    CONSOLE_PG_SECONDS=$((SECONDS - t0))
    t0=$SECONDS
    console_redis_commands | to_resp |
        redis-cli -h "$HOST" -p "$REDIS_PORT" --pipe >"$RUN_DIR/console.seed-redis.log" 2>&1 ||
        die "seeding Redis failed (psql or redis-cli --pipe); see $RUN_DIR/console.seed-redis.log"
    grep -q '^errors: 0, ' "$RUN_DIR/console.seed-redis.log" ||
        die "Redis refused some seeding commands; see $RUN_DIR/console.seed-redis.log"
    CONSOLE_REDIS_SECONDS=$((SECONDS - t0))
    CONSOLE_DEAD=$(rcli HLEN "{$PREFIX}:dead:entries")
    CONSOLE_SCHEDULED=$(rcli ZCARD "{$PREFIX}:scheduled")
    [[ $(rcli ZCARD "{$PREFIX}:dead:index") == "$CONSOLE_DEAD" ]] ||
        die "the dead-letter index and entries disagree after seeding"
    CONSOLE_DEAD_MIB=$(awk -v a="$(rcli MEMORY USAGE "{$PREFIX}:dead:entries")" \
        -v b="$(rcli MEMORY USAGE "{$PREFIX}:dead:index")" 'BEGIN { printf "%.0f", (a + b) / 1048576 }')
    CONSOLE_COUNTS=$(psql_db "SELECT string_agg(status || ' ' || to_char(n, 'FM999,999,999'), ', ' ORDER BY n DESC)
                              FROM (SELECT status, sum(n) AS n FROM order_counts GROUP BY status) c")
    say "console: seeded in $CONSOLE_PG_SECONDS s (PostgreSQL) + $CONSOLE_REDIS_SECONDS s (Redis): $CONSOLE_COUNTS; $(num "$CONSOLE_DEAD") dead letters, $(num "$CONSOLE_SCHEDULED") scheduled retries"

    CONSOLE_TOKEN=bench-$RAND-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
    start_service console api,worker "ORDERS_ADMIN_TOKEN=$CONSOLE_TOKEN"
    # A second worker process, so /workers lists two.
    env "${ENV_COMMON[@]}" "$BIN/orders" serve --roles worker >"$RUN_DIR/console-worker.service.log" 2>&1 &
    WORKER2_PID=$!
    PIDS+=("$WORKER2_PID")
    for ((i = 0; i < 300; i++)); do
        [[ $(curl -sf --max-time 2 "http://$HOST:$SVC_PORT/workers" |
            jq '[.workers[] | select(.heartbeat_age_ms != null)] | length') == 2 ]] && break
        kill -0 "$WORKER2_PID" 2>/dev/null || die "the second worker exited; see $RUN_DIR/console-worker.service.log"
        sleep 0.1
    done
    ((i < 300)) || die "GET /workers did not list two live workers within 30 s"

    # Ids: failed orders for the detail calls; the oldest dead letters of orders, a new one for
    # each retry and each delete; the customer of the newest failed order for the filters.
    mapfile -t DETAIL_IDS < <(psql_db "SELECT order_id FROM orders WHERE status = 'failed'
                                       ORDER BY md5(order_id::text) LIMIT $((CONSOLE_CALLS + 1))")
    OLDEST=$(rcli ZRANGE "{$PREFIX}:dead:index" - + BYLEX LIMIT 0 $((4 * CONSOLE_CALLS + 100)) |
        sed 's/^[0-9]*://' | paste -sd, -)
    mapfile -t ACTION_IDS < <(psql_db "SELECT order_id FROM orders
                                       WHERE order_id = ANY('{$OLDEST}'::uuid[]) AND status = 'failed'
                                       ORDER BY accepted_at LIMIT $((2 * CONSOLE_CALLS + 2))")
    ((${#ACTION_IDS[@]} == 2 * CONSOLE_CALLS + 2)) || die "too few dead letters of orders to act on"
    CUSTOMER=$(psql_db "SELECT customer_id FROM orders WHERE status = 'failed'
                        ORDER BY accepted_at DESC LIMIT 1")
    RARE='too many clients'
    RARE_COUNT=$(((CONSOLE_ROWS - 3) / 100000 + 1))   # the failed orders of i % 100000 = 3
    say "console: $CONSOLE_CALLS calls each after one warm-up (customer $CUSTOMER, rare error text '$RARE')"

    console_call 'GET /stats' 200 GET public /stats
    STATS_TOTAL=$(jq -r .orders.total "${C_BODY['GET /stats']}")
    console_call 'GET /stats/history' 200 GET public /stats/history
    console_call 'GET /workers' 200 GET public /workers
    console_call 'GET /orders?limit=50' 200 GET public '/orders?limit=50'
    console_call 'GET /orders?status=failed&limit=50' 200 GET public '/orders?status=failed&limit=50'
    console_call 'GET /orders?customer_id=<one>&limit=50' 200 GET public "/orders?customer_id=$CUSTOMER&limit=50"
    console_call 'GET /orders?status=completed&customer_id=<one>&limit=50' 200 GET public \
        "/orders?status=completed&customer_id=$CUSTOMER&limit=50"
    DETAIL_PATHS=() HISTORY_PATHS=() RETRY_PATHS=() DELETE_PATHS=()
    for id in "${DETAIL_IDS[@]}"; do
        DETAIL_PATHS+=("/orders/$id")
        HISTORY_PATHS+=("/orders/$id/history")
    done
    for ((k = 0; k <= CONSOLE_CALLS; k++)); do
        RETRY_PATHS+=("/dead-letters/${ACTION_IDS[k]}/retry")
        DELETE_PATHS+=("/dead-letters/${ACTION_IDS[k + CONSOLE_CALLS + 1]}")
    done
    console_call 'GET /orders/<id>' 200 GET public "${DETAIL_PATHS[@]}"
    console_call 'GET /orders/<id>/history' 200 GET public "${HISTORY_PATHS[@]}"
    console_call 'GET /dead-letters?limit=50' 200 GET admin '/dead-letters?limit=50'
    DL_FIRST=${C_BODY['GET /dead-letters?limit=50']}
    CURSOR=$(jq -r '.next_cursor // empty' "$DL_FIRST")
    [[ -n $CURSOR ]] || die "the first page of dead letters has no next_cursor"
    console_call 'GET /dead-letters?limit=50&cursor=<its next_cursor>' 200 GET admin \
        "/dead-letters?limit=50&cursor=$CURSOR"
    console_call "GET /dead-letters?limit=50&error=<rare>" 200 GET admin \
        "/dead-letters?limit=50&error=${RARE// /%20}"
    console_call 'GET /dead-letters?limit=50&customer_id=<one>' 200 GET admin \
        "/dead-letters?limit=50&customer_id=$CUSTOMER"
    console_call 'GET /scheduled?limit=50' 200 GET admin '/scheduled?limit=50'
    console_call 'POST /dead-letters/<id>/retry' 202 POST admin "${RETRY_PATHS[@]}"
    console_call 'DELETE /dead-letters/<id>' 204 DELETE admin "${DELETE_PATHS[@]}"
    console_call 'GET /metrics' 200 GET public /metrics
    CONSOLE_PAGE=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$HOST:$SVC_PORT/console" || true)
    if [[ $CONSOLE_PAGE == 404 ]]; then
        say "  GET /console: 404, this build serves no console page; skipped"
    else
        console_call 'GET /console' 200 GET public /console
    fi
    # What the pages held, to show none loaded a whole list.
    CONSOLE_SHAPES=$(
        b() { jq -r "$2" "${C_BODY[$1]}" 2>/dev/null || echo '?'; }
        printf 'dead letters: the first page %s (of a total of %s), the rare-error filter %s and %s, the customer filter %s; /scheduled %s (of %s); the four /orders lists %s, %s, %s and %s orders' \
            "$(b 'GET /dead-letters?limit=50' '.dead_letters | length')" \
            "$(b 'GET /dead-letters?limit=50' '.total')" \
            "$(b 'GET /dead-letters?limit=50&error=<rare>' '.dead_letters | length')" \
            "$(b 'GET /dead-letters?limit=50&error=<rare>' 'if .next_cursor then "a cursor to go on" else "no cursor" end')" \
            "$(b 'GET /dead-letters?limit=50&customer_id=<one>' '.dead_letters | length')" \
            "$(b 'GET /scheduled?limit=50' '.scheduled | length')" \
            "$(b 'GET /scheduled?limit=50' '.total')" \
            "$(b 'GET /orders?limit=50' '.orders | length')" \
            "$(b 'GET /orders?status=failed&limit=50' '.orders | length')" \
            "$(b 'GET /orders?customer_id=<one>&limit=50' '.orders | length')" \
            "$(b 'GET /orders?status=completed&customer_id=<one>&limit=50' '.orders | length')"
    )
    CONSOLE_HWM=$(kib "$SVC_PID" VmHWM)
    stop_pid "$WORKER2_PID"
    CONSOLE_WORKER2_EXIT=$STOPPED_EXIT
    stop_service_and_reset
    CONSOLE_EXIT=$SVC_EXIT
fi

# --- the table ---------------------------------------------------------------------------------
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

tracing_median() { # tracing_median off|on JQ: the median over the runs of that variant
    local r
    for ((r = 1; r <= TRACING_RUNS; r++)); do j "tracing-$1-$r" "$2"; done | median
}
tracing_cpu() { # tracing_cpu off|on: the median server CPU seconds
    local r
    for ((r = 1; r <= TRACING_RUNS; r++)); do printf '%s\n' "${SERVER_CPU[tracing-$1-$r]}"; done | median
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

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
console_verdict() { # console_verdict LABEL: against the target, or the unexpected statuses
    if [[ -n ${C_NOTE[$1]} ]]; then
        printf '**error**: %s' "${C_NOTE[$1]}"
    else
        verdict "${C_MEDIAN[$1]}" "<=" "$CONSOLE_TARGET_MS"
    fi
}

joined() { local IFS=';'; printf '%s' "$*" | sed 's/;/, /g'; }

# The service's exit codes and peak RSS in the scenarios that ran.
EXITS=() HWMS=()
if want ingest; then
    EXITS+=("ingest $INGEST_SVC_EXIT")
    HWMS+=("ingest $(mib "$INGEST_SVC_HWM") MiB")
fi
if want drain; then
    EXITS+=("drain $DRAIN_EXIT")
    HWMS+=("drain $(mib "$DRAIN_HWM") MiB")
fi
if want steady; then
    EXITS+=("steady $STEADY_EXIT")
    HWMS+=("steady $(mib "$STEADY_HWM") MiB")
fi
if want tracing; then EXITS+=("tracing $(joined "${TRACING_EXITS[@]}")"); fi
if want realistic; then EXITS+=("realistic $REALISTIC_EXIT"); fi
if want idle; then EXITS+=("idle $IDLE_EXIT"); fi
if want console; then
    EXITS+=("console $CONSOLE_EXIT (its second worker $CONSOLE_WORKER2_EXIT)")
    HWMS+=("console $(mib "$CONSOLE_HWM") MiB")
fi

COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ $COMMIT != unknown && -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    COMMIT="$COMMIT + uncommitted changes"
fi
CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
WALL=$((SECONDS - START_SECONDS))
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
LOG_LINES=$(cat "$RUN_DIR"/*.service.log | grep -c . || true)
RAN=()
for name in "${ALL_SCENARIOS[@]}"; do
    if want "$name"; then RAN+=("$name"); fi
done

# The backquotes below are Markdown, not command substitutions.
# shellcheck disable=SC2016
{
    printf '# Benchmarks, %s\n\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    [[ -z ${BENCH_BIN:-} ]] || printf -- '- binaries: %s (BENCH_BIN; the commit below is the working tree, not necessarily theirs)\n' "$BIN"
    printf -- '- commit: %s\n- machine: %s CPUs (nproc), %s; %s\n' "$COMMIT" "$(nproc)" "$CPU" "$(uname -sr)"
    printf -- '- Redis %s and PostgreSQL %s on 127.0.0.1, shared with the load generator and the service\n' \
        "$(rcli INFO server | awk -F: '/^redis_version/ { print $2 }' | tr -d '\r')" \
        "$(psql_db 'SHOW server_version' | awk '{ print $1 }')"
    printf -- '- scenarios: %s\n' "${RAN[*]}"
    printf -- '- wall time: %d s (%d s of it building)\n' "$WALL" "$BUILD_SECONDS"
    printf -- '- load average (1, 5, 15 min) before the scenarios: %s; after: %s\n\n' "$LOADAVG_START" "$LOADAVG_END"
    printf '| scenario | measured | target | result |\n|---|---|---|---|\n'
    if want ingest; then
        B_RATE=$(ingest_median baseline .accept_rate)
        S_RATE=$(ingest_median service .accept_rate)
        RATIO=$(awk -v s="$S_RATE" -v b="$B_RATE" 'BEGIN { printf "%.2f", (b > 0 ? s / b : 0) }')
        printf '| ingest: baseline (no Redis) | median %s orders/s (runs: %s); HTTP p50 %s ms, p99 %s ms | | |\n' \
            "$(num "$B_RATE")" "$(ingest_list baseline)" "$(ms "$(ingest_median baseline .http_latency_ms.p50)")" \
            "$(ms "$(ingest_median baseline .http_latency_ms.p99)")"
        printf '| ingest: service (`--roles api`) | median %s orders/s (runs: %s); HTTP p50 %s ms, p99 %s ms | | |\n' \
            "$(num "$S_RATE")" "$(ingest_list service)" "$(ms "$(ingest_median service .http_latency_ms.p50)")" \
            "$(ms "$(ingest_median service .http_latency_ms.p99)")"
        printf '| ingest: service / baseline | **%s×** | ≥ 0.8× baseline | %s |\n' "$RATIO" "$(verdict "$RATIO" ">=" 0.8)"
    fi
    if want replicated; then
        R0_RATE=$(ingest_median replicated-0 .accept_rate)
        R1_RATE=$(ingest_median replicated-1 .accept_rate)
        R_RATIO=$(awk -v a="$R1_RATE" -v b="$R0_RATE" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
        printf '| replicated: `MIN_REPLICAS=0`, one replica attached | median %s orders/s; HTTP p50 %s ms, p99 %s ms | | |\n' \
            "$(num "$R0_RATE")" "$(ms "$(ingest_median replicated-0 .http_latency_ms.p50)")" "$(ms "$(ingest_median replicated-0 .http_latency_ms.p99)")"
        printf '| replicated: `MIN_REPLICAS=1` (`WAIT 1`) | median %s orders/s; HTTP p50 %s ms, p99 %s ms; **%s×** the unreplicated rate | | |\n' \
            "$(num "$R1_RATE")" "$(ms "$(ingest_median replicated-1 .http_latency_ms.p50)")" "$(ms "$(ingest_median replicated-1 .http_latency_ms.p99)")" "$R_RATIO"
    fi
    if want drain; then
        D_RATE=$(j drain .completion_rate)
        printf '| drain: completion rate | **%s orders/s** (%s) | ≥ 10,000 orders/s | %s |\n' \
            "$(num "$D_RATE")" "$(clean drain)" "$(verdict "$D_RATE" ">=" 10000)"
        printf '| drain: end to end | p50 %s ms, p99 %s ms, max %s ms; accept rate %s orders/s | | |\n' \
            "$(j drain .end_to_end_ms.p50)" "$(j drain .end_to_end_ms.p99)" "$(j drain .end_to_end_ms.max)" "$(num "$(j drain .accept_rate)")"
        if ((DRAIN_STREAM_LEN > 0)); then
            printf '| drain: event stream | %s entries, %s MiB of Redis memory (%s bytes each); the default retention of 100,000 such events: **%s MiB** | < 64 MiB | %s |\n' \
                "$(num "$DRAIN_STREAM_LEN")" "$(awk -v b="$DRAIN_STREAM_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }')" \
                "$((DRAIN_STREAM_BYTES / DRAIN_STREAM_LEN))" \
                "$(awk -v b="$DRAIN_STREAM_BYTES" -v n="$DRAIN_STREAM_LEN" 'BEGIN { printf "%.1f", b / n * 100000 / 1048576 }')" \
                "$(verdict "$(awk -v b="$DRAIN_STREAM_BYTES" -v n="$DRAIN_STREAM_LEN" 'BEGIN { printf "%.1f", b / n * 100000 / 1048576 }')" "<=" 64)"
        fi
    fi
    if want steady; then
        ST_P99=$(j steady .end_to_end_ms.p99)
        printf '| steady: end to end | p50 %s ms, **p99 %s ms**, max %s ms (%s) | p99 ≤ 10 ms | %s |\n' \
            "$(j steady .end_to_end_ms.p50)" "$ST_P99" "$(j steady .end_to_end_ms.max)" "$(clean steady)" "$(verdict "$ST_P99" "<=" 10)"
    fi
    if want tracing; then
        for variant in "${TRACING_VARIANTS[@]}"; do
            T_E2E[$variant]=$(tracing_median "$variant" .end_to_end_ms.p99)
            T_HTTP[$variant]=$(tracing_median "$variant" .http_latency_ms.p99)
            T_RATE[$variant]=$(tracing_median "$variant" .completion_rate)
            T_CPU[$variant]=$(tracing_cpu "$variant")
        done
        printf '| tracing: steady, no endpoint (off) | median of %s runs: end to end p99 %s ms, HTTP p99 %s ms, %s completed/s, server CPU %s s | | |\n' \
            "$TRACING_RUNS" "${T_E2E[off]}" "$(ms "${T_HTTP[off]}")" "$(num "${T_RATE[off]}")" "${T_CPU[off]}"
        printf '| tracing: steady, exporting every order to a local OTLP sink (on) | median of %s runs: end to end p99 %s ms, HTTP p99 %s ms, %s completed/s, server CPU %s s; %s posts, %s KiB received | | |\n' \
            "$TRACING_RUNS" "${T_E2E[on]}" "$(ms "${T_HTTP[on]}")" "$(num "${T_RATE[on]}")" "${T_CPU[on]}" "$(num "$TRACING_POSTS")" "$(num "$TRACING_KIB")"
        printf '| tracing: on / off | end to end p99 **%s×**, HTTP p99 %s×, completion rate %s×, server CPU **%s×** | | |\n' \
            "$(ratio "${T_E2E[on]}" "${T_E2E[off]}")" "$(ratio "${T_HTTP[on]}" "${T_HTTP[off]}")" \
            "$(ratio "${T_RATE[on]}" "${T_RATE[off]}")" "$(ratio "${T_CPU[on]}" "${T_CPU[off]}")"
        if [[ -n $TRACING_BASE ]]; then
            printf '| tracing: steady, the build before tracing (base: %s) | median of %s runs: end to end p99 %s ms, HTTP p99 %s ms, %s completed/s, server CPU %s s | | |\n' \
                "$TRACING_BASE" "$TRACING_RUNS" "${T_E2E[base]}" "$(ms "${T_HTTP[base]}")" "$(num "${T_RATE[base]}")" "${T_CPU[base]}"
            printf '| tracing: off / base | end to end p99 **%s×**, HTTP p99 %s×, completion rate %s×, server CPU **%s×** | | |\n' \
                "$(ratio "${T_E2E[off]}" "${T_E2E[base]}")" "$(ratio "${T_HTTP[off]}" "${T_HTTP[base]}")" \
                "$(ratio "${T_RATE[off]}" "${T_RATE[base]}")" "$(ratio "${T_CPU[off]}" "${T_CPU[base]}")"
        fi
    fi
    if want realistic; then
        R_RATE=$(j realistic .sustained_completion_rate)
        R_PEAK=$((REALISTIC_HWM > ${REALISTIC_SAMPLED:-0} ? REALISTIC_HWM : ${REALISTIC_SAMPLED:-0}))
        printf '| realistic: completion rate, sustained | **%s orders/s** (10th to 90th percentile of completions; over the whole run, first request to last event: %s orders/s; %s) | ≥ 2,250 orders/s | %s |\n' \
            "$(num "$R_RATE")" "$(num "$(j realistic .completion_rate)")" "$(clean realistic)" "$(verdict "$R_RATE" ">=" 2250)"
        printf '| realistic: peak RSS | **%s MiB** (VmHWM %s MiB, max of 100 ms VmRSS samples %s MiB) | ≤ 100 MiB | %s |\n' \
            "$(mib "$R_PEAK")" "$(mib "$REALISTIC_HWM")" "$(mib "${REALISTIC_SAMPLED:-0}")" "$(verdict "$R_PEAK" "<=" 102400)"
    fi
    if want idle; then
        printf '| idle: RSS | **%s MiB** (VmRSS %d s after ready; VmHWM %s MiB) | ≤ 20 MiB | %s |\n' \
            "$(mib "$IDLE_RSS")" "$IDLE_SECONDS" "$(mib "$IDLE_HWM")" "$(verdict "$IDLE_RSS" "<=" 20480)"
    fi
    if want console; then
        printf '| stats: GET /stats with %s orders stored | median **%s ms**, max %s ms (%s calls; it counted %s orders) | < 50 ms | %s |\n' \
            "$(num "$CONSOLE_ROWS")" "$(ms "${C_MEDIAN['GET /stats']}")" "$(ms "${C_MAX['GET /stats']}")" "$CONSOLE_CALLS" \
            "$(num "$STATS_TOTAL")" "$(console_verdict 'GET /stats')"
        SLOWEST=
        OVER=0
        for label in "${CONSOLE_LABELS[@]}"; do
            if [[ -z $SLOWEST ]] || awk -v a="${C_MEDIAN[$label]}" -v b="${C_MEDIAN[$SLOWEST]}" 'BEGIN { exit !(a > b) }'; then
                SLOWEST=$label
            fi
            [[ $(console_verdict "$label") == pass ]] || OVER=$((OVER + 1))
        done
        printf '| console: every call, %s orders and %s dead letters stored | slowest median **%s ms** (`%s`); %d of %d calls over the target or failing (table below) | each < %s ms (median of %s) | %s |\n' \
            "$(num "$CONSOLE_ROWS")" "$(num "$CONSOLE_DEAD")" "$(ms "${C_MEDIAN[$SLOWEST]}")" "$SLOWEST" "$OVER" \
            "${#CONSOLE_LABELS[@]}" "$CONSOLE_TARGET_MS" "$CONSOLE_CALLS" "$( ((OVER == 0)) && echo pass || echo '**FAIL**')"
    fi
    printf '\nNotes:\n\n'
    if want ingest; then
        printf -- '- ingest: `orders-load --count %s --concurrency %s --no-events`, baseline and service alternating (%s runs each, medians reported), after one %s-order warm-up run against each; the Redis keys are deleted between runs. Baseline: `orders-baseline` (benches/baseline.rs), the same body checks, `NewOrder::parse`, `Job::accept` and payload, no Redis.\n' \
            "$INGEST_COUNT" "$INGEST_CONCURRENCY" "$INGEST_RUNS" "$WARMUP_COUNT"
    fi
    if want drain; then
        printf -- '- drain: `--count %s --batch %s --concurrency %s` (POST /orders/batch, so ingest is not the limit); completion rate = completed / time from the first request to the last event. Rows in PostgreSQL at the end (completed/all): %s.\n' \
            "$DRAIN_COUNT" "$DRAIN_BATCH" "$DRAIN_CONCURRENCY" "$DRAIN_ROWS"
    fi
    if want steady; then
        printf -- '- steady: `--rate %s --duration %s --concurrency %s`, open loop, latencies from the intended send time.\n' \
            "$STEADY_RATE" "$STEADY_SECONDS" "$STEADY_CONCURRENCY"
    fi
    if want tracing; then
        printf -- '- tracing: each run as steady (`--rate %s --duration %s --concurrency %s`, all roles in one process, zero delay), %s runs of each variant in turn (each run begins with the next variant); "on" is `OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<sink>` with the default ratio 1.0 (8 spans per order) and the SDK'"'"'s default batch processor (2,048 spans queued at most, 512 a post, every 5 s).\n' \
            "$STEADY_RATE" "$TRACING_SECONDS" "$STEADY_CONCURRENCY" "$TRACING_RUNS"
    fi
    if want realistic; then
        printf -- '- realistic: `--count %s --concurrency %s`, closed loop, `ORDERS_PROCESSING_DELAY_MS=1000-3000 ORDERS_MAX_IN_FLIGHT=%s`. The target (0.9 × in-flight ÷ mean delay) is a rate in full swing, so the verdict is on the sustained rate; the whole-run rate also counts the first second, before any order can finish, and the last orders'"'"' 1-3 s, which caps it near 2,000 orders/s for any service (a simulation of perfect slots: scripts/bench.sh header).\n' \
            "$REALISTIC_COUNT" "$REALISTIC_CONCURRENCY" "$REALISTIC_IN_FLIGHT"
    fi
    if want console; then
        printf -- '- console: seeded by SQL in %d s: %s orders (%s), their items and notifications; then, from the same rows, %s dead letters in the entries hash and the index (%s MiB in Redis; 1,000 of them payloads that are no order), %s scheduled retries with their pending entries and the chart'"'"'s per-second counters, by `redis-cli --pipe` in %d s. The service ran `--roles api,worker` with `ORDERS_ADMIN_TOKEN`, beside a second `--roles worker` process; both claim (the dead letters retried here are processed meanwhile), sweep and renew as in production.\n' \
            "$CONSOLE_PG_SECONDS" "$(num "$CONSOLE_ROWS")" "$CONSOLE_COUNTS" "$(num "$CONSOLE_DEAD")" "$CONSOLE_DEAD_MIB" \
            "$(num "$CONSOLE_SCHEDULED")" "$CONSOLE_REDIS_SECONDS"
        printf -- '- console: each call once to warm up, then %s times, one after another, each a new curl and connection; the time is curl'"'"'s `time_total` (connect to last byte). `<id>` is a different failed order each call; retry and delete take a new dead letter each call (the oldest of orders); `<one>` is %s, the customer of the newest failed order; `<rare>` is `%s`, in %s of the dead letters, so that filter reads its whole bounded scan. What the pages held: %s.%s\n' \
            "$CONSOLE_CALLS" "$CUSTOMER" "$RARE" "$(num "$RARE_COUNT")" "$CONSOLE_SHAPES" \
            "$([[ $CONSOLE_PAGE == 404 ]] && printf ' `GET /console` answered 404 (this build serves no console page): not timed.')"
    fi
    printf -- '- Every scenario ran a fresh service process (stopped with SIGTERM between scenarios; exit codes %s), with the Redis keys of its prefix deleted and the tables truncated in between.%s\n' \
        "$(joined "${EXITS[@]}")" "$( ((${#HWMS[@]} > 0)) && printf ' Peak RSS (VmHWM) of the service: %s.' "$(joined "${HWMS[@]}")")"
    printf -- '- The service logged at `ORDERS_LOG_LEVEL=warning` (format term) into files, not the terminal, so that logging does not distort the numbers: %s lines in all (bench-results/bench-%s/*.service.log).\n' \
        "$LOG_LINES" "$STAMP"
    printf -- '- The load generator, the service, Redis and PostgreSQL share the same %s CPUs; nothing else was stopped for the run. The service and the baseline ran their default runtime threads (ORDERS_THREADS=0: half the CPUs, at least one).\n' "$(nproc)"
    printf -- '- Raw JSON of every run: bench-results/bench-%s/.\n' "$STAMP"
    if want ingest || want replicated || want drain || want steady || want tracing || want realistic; then
        printf '\nRuns (latencies in ms; sending s and accept/s are the sending phase, run wall s includes the wait for the last events; server CPU s is user + system time of the server process during the run; load exit code 1 = something missing, duplicated or a transport error):\n\n'
        printf '| run | accepted | rejected | errors | sending s | accept/s | HTTP p50 / p99 / max | completed | missing | dup | completion/s | e2e p50 / p99 / max | run wall s | server CPU s | exit |\n'
        printf '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n'
        if want ingest; then
            for name in ingest-warmup-baseline ingest-warmup-service; do run_row "$name"; done
            for ((r = 1; r <= INGEST_RUNS; r++)); do
                run_row "ingest-baseline-$r"
                run_row "ingest-service-$r"
            done
        fi
        if want replicated; then
            for name in replicated-warmup-0 replicated-warmup-1; do run_row "$name"; done
            for ((r = 1; r <= INGEST_RUNS; r++)); do
                run_row "replicated-0-$r"
                run_row "replicated-1-$r"
            done
        fi
        for name in drain steady; do
            if want "$name"; then run_row "$name"; fi
        done
        if want tracing; then
            for ((r = 1; r <= TRACING_RUNS; r++)); do
                for variant in "${TRACING_VARIANTS[@]}"; do run_row "tracing-$variant-$r"; done
            done
        fi
        if want realistic; then run_row realistic; fi
    fi
    if want console; then
        printf '\nConsole calls (%s orders, %s dead letters, %s scheduled retries, two live workers; ms of curl'"'"'s time_total over %s calls after one warm-up; bytes: median response body):\n\n' \
            "$(num "$CONSOLE_ROWS")" "$(num "$CONSOLE_DEAD")" "$(num "$CONSOLE_SCHEDULED")" "$CONSOLE_CALLS"
        printf '| call | median ms | max ms | bytes | < %s ms |\n|---|---|---|---|---|\n' "$CONSOLE_TARGET_MS"
        for label in "${CONSOLE_LABELS[@]}"; do
            printf '| `%s` | %s | %s | %s | %s |\n' "$label" "$(ms "${C_MEDIAN[$label]}")" "$(ms "${C_MAX[$label]}")" \
                "$(num "${C_BYTES[$label]}")" "$(console_verdict "$label")"
        done
    fi
} >"$OUT_MD"

cat "$OUT_MD"
say "wrote $OUT_MD (raw runs in $RUN_DIR/) in $WALL s"
