#!/usr/bin/env bash
# Make sure Redis and PostgreSQL answer on REDIS_URL and DATABASE_URL, and that the database named
# in DATABASE_URL exists. Used by `just services`; safe to run any number of times.
#
#   REDIS_URL     default redis://127.0.0.1:6379
#   DATABASE_URL  default postgres://postgres@127.0.0.1:5432/orders
#
# A service that already answers is left alone (Redis is only asked, at run time, to turn its
# append-only file on). A service that does not answer is installed with apt-get if missing and
# started without systemd, but only when its host is this machine (127.0.0.1, localhost, ::1).
# Redis started here keeps its data in /var/lib/orders/redis-<port> (root) or
# ${XDG_STATE_HOME:-~/.local/state}/orders/redis-<port>; stop it with `redis-cli -p <port> shutdown`.
#
# With --with-browser (what `just test` runs) it also installs Debian's Chromium and its driver
# when missing, for the console's browser tests (tests/console.rs).
#
# Exit status: 0 when both answer and the database exists; 1 when something could not be made to
# work (the message says what); 2 when a URL cannot be understood.
set -euo pipefail
WITH_BROWSER=0
[[ ${1:-} == --with-browser ]] && WITH_BROWSER=1

REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/orders}
WAIT_SECONDS=30

say() { printf 'services: %s\n' "$*"; }
die() { printf 'services: error: %s\n' "$*" >&2; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi
as_root() {
    if [[ ${#SUDO[@]} -gt 0 ]] && ! have sudo; then
        die "need root for: $* (not root and no sudo)"
    fi
    "${SUDO[@]}" "$@"
}

# --- URL parsing (plain bash) ----------------------------------------------------------------
# parse_url URL DEFAULT_PORT: sets U_SCHEME U_USER U_PASS U_HOST U_PORT U_PATH.
urldecode() { local s=${1//+/ }; printf '%b' "${s//%/\\x}"; }
parse_url() {
    local url=$1 default_port=$2 rest auth hostport
    [[ $url == *://* ]] || { printf 'services: error: not a URL: %s\n' "$url" >&2; exit 2; }
    U_SCHEME=${url%%://*}
    rest=${url#*://}
    rest=${rest%%#*}                       # fragment
    rest=${rest%%\?*}                      # query string
    if [[ $rest == */* ]]; then
        U_PATH=${rest#*/}
        rest=${rest%%/*}
    else
        U_PATH=
    fi
    U_USER='' U_PASS=''
    if [[ $rest == *@* ]]; then
        auth=${rest%@*}
        hostport=${rest##*@}
        if [[ $auth == *:* ]]; then
            U_USER=$(urldecode "${auth%%:*}")
            U_PASS=$(urldecode "${auth#*:}")
        else
            U_USER=$(urldecode "$auth")
        fi
    else
        hostport=$rest
    fi
    if [[ $hostport == \[* ]]; then        # [::1]:5432
        U_HOST=${hostport#\[}
        U_HOST=${U_HOST%%\]*}
        U_PORT=${hostport#*\]}
        U_PORT=${U_PORT#:}
    elif [[ $hostport == *:* ]]; then
        U_HOST=${hostport%%:*}
        U_PORT=${hostport#*:}
    else
        U_HOST=$hostport
        U_PORT=
    fi
    U_HOST=${U_HOST:-127.0.0.1}
    U_PORT=${U_PORT:-$default_port}
    [[ $U_PORT =~ ^[0-9]+$ ]] || { printf 'services: error: bad port in %s\n' "$url" >&2; exit 2; }
}

is_local() {
    case $1 in
        127.*|localhost|::1) return 0 ;;
        *) return 1 ;;
    esac
}

# --- apt ---------------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    have apt-get || die "cannot install $*: no apt-get here; install them by hand"
    if [[ $APT_UPDATED -eq 0 ]]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

wait_for() { # wait_for WHAT COMMAND...: retry for up to WAIT_SECONDS.
    local what=$1 i
    shift
    for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
        if "$@"; then
            return 0
        fi
        sleep 0.5
    done
    die "$what did not answer within ${WAIT_SECONDS}s"
}

# --- Redis -------------------------------------------------------------------------------------
parse_url "$REDIS_URL" 6379
R_SCHEME=$U_SCHEME R_HOST=$U_HOST R_PORT=$U_PORT R_USER=$U_USER R_PASS=$U_PASS
case $R_SCHEME in
    redis|rediss) ;;
    *) printf 'services: error: REDIS_URL must be redis:// or rediss://, not %s\n' "$R_SCHEME://" >&2; exit 2 ;;
esac

# One Redis command; prints the reply. redis-cli when present, otherwise a bare TCP socket
# (inline protocol), so that a running Redis needs no package installed.
redis_cmd() {
    if have redis-cli; then
        local args=(-h "$R_HOST" -p "$R_PORT") envs=()
        [[ $R_SCHEME == rediss ]] && args+=(--tls)
        if [[ -n $R_PASS ]]; then
            envs+=("REDISCLI_AUTH=$R_PASS")
            [[ -n $R_USER ]] && args+=(--user "$R_USER")
        fi
        env "${envs[@]}" timeout 5 redis-cli "${args[@]}" "$@" 2>/dev/null
    else
        [[ $R_SCHEME == redis ]] || return 1
        (
            exec 3<>"/dev/tcp/$R_HOST/$R_PORT" || exit 1
            if [[ -n $R_PASS ]]; then
                printf 'AUTH %s %s\r\n' "${R_USER:-default}" "$R_PASS" >&3
                resp_read >/dev/null
            fi
            printf '%s\r\n' "$*" >&3
            resp_read
        ) 2>/dev/null
    fi
}
# Reads one RESP reply from fd 3 and prints its values, one a line (errors included, as text).
resp_read() {
    local line n i
    IFS= read -r -t 5 line <&3 || return 1
    line=${line%$'\r'}
    case $line in
        [+:-]*) printf '%s\n' "${line:1}" ;;
        \$-1) printf '\n' ;;
        \$*) IFS= read -r -t 5 line <&3 || return 1; printf '%s\n' "${line%$'\r'}" ;;
        \**) n=${line:1}; for ((i = 0; i < n; i++)); do resp_read || return 1; done ;;
        *) return 1 ;;
    esac
}
redis_answers() { [[ $(redis_cmd PING || true) == PONG ]]; }
redis_aof() {
    local v
    v=$(redis_cmd CONFIG GET appendonly | tail -n 1 || true)
    printf '%s' "${v:-unknown}"
}

if redis_answers; then
    say "redis: answers on $R_HOST:$R_PORT, left running"
    aof_before=$(redis_aof)
    redis_cmd CONFIG SET appendonly yes >/dev/null || true
    redis_cmd CONFIG SET appendfsync everysec >/dev/null || true
    aof=$(redis_aof)
    if [[ $aof == yes && $aof_before == yes ]]; then
        say "redis: append-only file is on"
    elif [[ $aof == yes ]]; then
        say "redis: append-only file turned on (at run time only; put 'appendonly yes' in its config to keep it after a restart)"
    else
        say "redis: WARNING: append-only file is $aof (CONFIG SET refused); orders queued in Redis may be lost if it restarts"
    fi
else
    is_local "$R_HOST" || die "redis: nothing answers on $R_HOST:$R_PORT, and it is not this machine, so it is not started here"
    [[ $R_SCHEME == redis ]] || die "redis: nothing answers on $R_HOST:$R_PORT, and a TLS Redis (rediss://) is not started here"
    say "redis: nothing answers on $R_HOST:$R_PORT"
    if ! have redis-server || ! have redis-cli; then
        apt_install redis-server   # also brings redis-tools (redis-cli)
    fi
    if redis_answers; then         # the package may have started one itself
        say "redis: the package started Redis on $R_HOST:$R_PORT"
        redis_cmd CONFIG SET appendonly yes >/dev/null || true
        redis_cmd CONFIG SET appendfsync everysec >/dev/null || true
        say "redis: append-only file is $(redis_aof)"
    else
        if [[ $(id -u) -eq 0 ]]; then
            rdir=/var/lib/orders/redis-$R_PORT
        else
            rdir=${XDG_STATE_HOME:-$HOME/.local/state}/orders/redis-$R_PORT
        fi
        mkdir -p "$rdir"
        bind=(127.0.0.1)
        [[ $R_HOST == ::1 ]] && bind+=(::1)
        extra=()
        [[ -n $R_PASS ]] && extra+=(--requirepass "$R_PASS")
        if [[ -n $R_USER && $R_USER != default ]]; then
            say "redis: WARNING: user '$R_USER' from REDIS_URL is not created; only the default user's password is set"
        fi
        say "redis: starting redis-server on port $R_PORT (data and log in $rdir)"
        log_size=$(stat -c %s "$rdir/redis.log" 2>/dev/null || echo 0)
        redis-server --daemonize yes --bind "${bind[@]}" --port "$R_PORT" \
            --appendonly yes --appendfsync everysec \
            --dir "$rdir" --logfile "$rdir/redis.log" --pidfile "$rdir/redis.pid" \
            "${extra[@]}" >/dev/null ||
            die "redis: redis-server failed to start; see $rdir/redis.log"
        redis_started() {
            redis_answers && return 0
            # Gone already (port taken, bad option...): say so now rather than after the wait.
            # The daemon logs "pid=N, just started" when it starts.
            local pid
            pid=$(tail -c "+$((log_size + 1))" "$rdir/redis.log" 2>/dev/null |
                grep -o 'pid=[0-9]*' | head -n 1 || true)
            if [[ -n $pid ]] && ! kill -0 "${pid#pid=}" 2>/dev/null; then
                tail -c "+$((log_size + 1))" "$rdir/redis.log" | tail -n 3 >&2 || true
                die "redis: redis-server exited; see $rdir/redis.log"
            fi
            return 1
        }
        wait_for "redis on $R_HOST:$R_PORT (log: $rdir/redis.log)" redis_started
        say "redis: answers on $R_HOST:$R_PORT, append-only file is $(redis_aof)"
    fi
fi

# --- PostgreSQL --------------------------------------------------------------------------------
parse_url "$DATABASE_URL" 5432
case $U_SCHEME in
    postgres|postgresql) ;;
    *) printf 'services: error: DATABASE_URL must be postgres:// or postgresql://, not %s\n' "$U_SCHEME://" >&2; exit 2 ;;
esac
P_HOST=$U_HOST P_PORT=$U_PORT
P_USER=${U_USER:-postgres}
P_DB=$(urldecode "${U_PATH%%/*}")
P_DB=${P_DB:-$P_USER}           # libpq's default: the database named like the user
export PGCONNECT_TIMEOUT=5
if [[ -n $U_PASS ]]; then
    export PGPASSWORD=$U_PASS
fi

pg_answers() {
    if have pg_isready; then
        pg_isready -q -h "$P_HOST" -p "$P_PORT" -t 3
    else
        (exec 3<>"/dev/tcp/$P_HOST/$P_PORT") 2>/dev/null
    fi
}
# psql_admin SQL: runs SQL in the maintenance database; :'db' is the database name.
psql_admin() {
    psql -X -q -v ON_ERROR_STOP=1 -v db="$P_DB" -h "$P_HOST" -p "$P_PORT" -U "$P_USER" \
        -d postgres -tA <<<"$1"
}

# Debian clusters: "version name port status" of the one on P_PORT, if any.
pg_cluster_on_port() {
    have pg_lsclusters || return 0
    pg_lsclusters -h 2>/dev/null | awk -v p="$P_PORT" '$3 == p { print $1, $2, $3, $4; exit }'
}
pg_ctl_cmd() { as_root pg_ctlcluster --skip-systemctl-redirect "$@"; }

# Lets every local TCP connection in without a password (trust) for 127.0.0.1/32 and ::1/128,
# by putting two lines at the top of pg_hba.conf (first match wins), and reloads.
PG_HBA_MARK='# orders scripts/services.sh: local dev/CI set-up, trust TCP connections from this machine'
pg_trust_loopback() {
    local ver=$1 name=$2 hba
    hba=/etc/postgresql/$ver/$name/pg_hba.conf
    as_root test -f "$hba" || { say "postgres: WARNING: $hba not found, authentication left as it is"; return 1; }
    if as_root grep -qF "$PG_HBA_MARK" "$hba"; then
        return 1                    # already done; the problem is elsewhere
    fi
    as_root cp -p "$hba" "$hba.orig-$(date +%Y%m%d%H%M%S)"
    {
        printf '%s\n' "$PG_HBA_MARK" \
            'host    all             all             127.0.0.1/32            trust' \
            'host    all             all             ::1/128                 trust' ''
        as_root cat "$hba"
    } >"${TMPDIR:-/tmp}/pg_hba.$$"
    as_root cp "${TMPDIR:-/tmp}/pg_hba.$$" "$hba"
    rm -f "${TMPDIR:-/tmp}/pg_hba.$$"
    say "postgres: NOTE: set 'trust' authentication for TCP from 127.0.0.1/32 and ::1/128 in $hba (local dev/CI only; original kept beside it)"
    pg_ctl_cmd "$ver" "$name" reload
    sleep 1
}

if pg_answers; then
    say "postgres: answers on $P_HOST:$P_PORT, left running"
else
    is_local "$P_HOST" || die "postgres: nothing answers on $P_HOST:$P_PORT, and it is not this machine, so it is not started here"
    say "postgres: nothing answers on $P_HOST:$P_PORT"
    need=()
    if ! have pg_ctlcluster || ! compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; then
        need+=(postgresql)
    fi
    if ! have psql || ! have pg_isready || ! have createdb; then
        need+=(postgresql-client)
    fi
    [[ ${#need[@]} -eq 0 ]] || apt_install "${need[@]}"
    if pg_answers; then             # the package may have started its cluster itself
        say "postgres: the package started PostgreSQL on $P_HOST:$P_PORT"
    else
        read -r c_ver c_name _ c_status <<<"$(pg_cluster_on_port)" || true
        if [[ -n ${c_ver:-} && $c_status == online* ]]; then
            die "postgres: cluster $c_ver/$c_name runs on port $P_PORT but does not answer on $P_HOST (see listen_addresses in /etc/postgresql/$c_ver/$c_name/)"
        elif [[ -n ${c_ver:-} ]]; then
            say "postgres: starting cluster $c_ver/$c_name (was $c_status)"
            pg_ctl_cmd "$c_ver" "$c_name" start ||
                die "postgres: pg_ctlcluster $c_ver $c_name start failed; see /var/log/postgresql/postgresql-$c_ver-$c_name.log"
        else
            c_ver=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
                awk -F/ '{ print $5 }' | sort -n | tail -n 1)
            [[ -n $c_ver ]] || die "postgres: no PostgreSQL server installed under /usr/lib/postgresql"
            c_name=main
            if [[ -d /etc/postgresql/$c_ver/main ]]; then
                c_name=orders$P_PORT    # main exists, on another port
            fi
            say "postgres: creating cluster $c_ver/$c_name on port $P_PORT"
            as_root pg_createcluster "$c_ver" "$c_name" -p "$P_PORT" >/dev/null
            pg_ctl_cmd "$c_ver" "$c_name" start ||
                die "postgres: pg_ctlcluster $c_ver $c_name start failed; see /var/log/postgresql/postgresql-$c_ver-$c_name.log"
        fi
        wait_for "postgres on $P_HOST:$P_PORT" pg_answers
        say "postgres: answers on $P_HOST:$P_PORT"
    fi
fi

# The database, created as user P_USER over TCP like the service connects.
if ! have psql || ! have createdb; then
    apt_install postgresql-client
fi
if ! err=$(psql_admin 'SELECT 1' 2>&1 >/dev/null); then
    read -r c_ver c_name _ <<<"$(pg_cluster_on_port)" || true
    if is_local "$P_HOST" && [[ -n ${c_ver:-} && ( $err == *authentication* || $err == *password* ) ]] &&
        pg_trust_loopback "$c_ver" "$c_name" && psql_admin 'SELECT 1' >/dev/null 2>&1; then
        :
    else
        die "postgres: cannot connect as '$P_USER' to $P_HOST:$P_PORT: ${err//$'\n'/ }"
    fi
fi
if [[ $(psql_admin "SELECT 1 FROM pg_database WHERE datname = :'db'") == 1 ]]; then
    say "postgres: database '$P_DB' exists"
else
    createdb -h "$P_HOST" -p "$P_PORT" -U "$P_USER" -- "$P_DB"
    say "postgres: created database '$P_DB'"
fi
say "ready: redis on $R_HOST:$R_PORT, postgres database '$P_DB' on $P_HOST:$P_PORT (user $P_USER)"
if ((WITH_BROWSER)); then
    browser=()
    [[ -x /usr/bin/chromium ]] || browser+=(chromium)
    [[ -x /usr/bin/chromedriver ]] || browser+=(chromium-driver)
    [[ ${#browser[@]} -eq 0 ]] || apt_install "${browser[@]}"
    say "ready: chromium and chromedriver for the browser tests"
fi
