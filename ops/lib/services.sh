# shellcheck shell=bash
# Shared helpers for the ops scripts (ops/dev, ops/test, ops/readme-tour, ops/chaos): console
# output, Postgres and Redis (reach, start, install, or docker compose), ports and Postgres
# databases, background processes with their logs, the fake OpenAI server, cargo paths.
#
# Source it from a script that already runs under `set -euo pipefail`:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/services.sh"
# It only defines variables and functions; nothing runs at source time.

# Where the services are expected. chatq's defaults (DATABASE_URL, REDIS_URL) point here; the
# helpers start local services only at these addresses.
CHATQ_PG_HOST=127.0.0.1
CHATQ_PG_PORT=5432
CHATQ_REDIS_HOST=127.0.0.1
CHATQ_REDIS_PORT=6379
# Seconds to wait for a service to answer after starting it.
: "${CHATQ_SERVICE_TIMEOUT:=60}"

# Repository root (this file is ops/lib/services.sh).
CHATQ_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Services this shell started, so a caller can stop exactly those: any of
# "postgres" "redis" "docker".
CHATQ_STARTED_SERVICES=()

# --- console ------------------------------------------------------------------------------

# section TITLE: a visible header between the steps of a script.
section() {
    printf '\n==> %s\n' "$*" >&2
}

# info MESSAGE: one line of progress on stderr.
info() {
    printf '    %s\n' "$*" >&2
}

# warn MESSAGE
warn() {
    printf 'warning: %s\n' "$*" >&2
}

# die MESSAGE...: print an error (each argument on its own line) and exit 1.
die() {
    printf 'error: %s\n' "$1" >&2
    shift
    local line
    for line in "$@"; do
        printf '       %s\n' "$line" >&2
    done
    exit 1
}

# have COMMAND: whether COMMAND is on PATH.
have() {
    command -v "$1" >/dev/null 2>&1
}

# as_root CMD...: run CMD as root (directly, or with passwordless sudo); fails otherwise.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif have sudo && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

# --- network probes -----------------------------------------------------------------------

# tcp_open HOST PORT: whether something accepts TCP connections there (bash /dev/tcp, 1 s max).
tcp_open() {
    # shellcheck disable=SC2016 # $1 and $2 are expanded by the inner bash, on purpose.
    timeout 1 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# wait_for DESCRIPTION SECONDS CMD...: run CMD every 0.2 s until it succeeds or SECONDS pass.
wait_for() {
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            warn "$what did not come up within ${seconds}s"
            return 1
        fi
        sleep 0.2
    done
}

# port_free HOST PORT: whether nothing listens on HOST:PORT.
port_free() {
    ! tcp_open "$1" "$2"
}

# pick_listen VAR DEFAULT: sets VAR to a HOST:PORT to listen on. An address the user set is
# kept (and must be free); otherwise the first free port from DEFAULT's port upwards is used,
# so a second stack or a stray process on 8080 does not stop the dev command.
pick_listen() {
    local var=$1 default=$2
    local user_value="${!var:-}"
    if [[ -n $user_value ]]; then
        port_free "${user_value%:*}" "${user_value##*:}" ||
            die "$var=$user_value is already in use." "Stop what listens there, or set $var to another address."
        return 0
    fi
    local host=${default%:*} port=${default##*:} tries=0
    # A port picked earlier in this shell may not be bound yet: never hand it out twice.
    while [[ " ${CHATQ_PICKED_PORTS:-} " == *" $port "* ]] || ! port_free "$host" "$port"; do
        tries=$((tries + 1))
        ((tries < 50)) || die "no free port near $default for $var."
        port=$((port + 1))
    done
    printf -v "$var" '%s:%s' "$host" "$port"
    export "${var?}"
    CHATQ_PICKED_PORTS="${CHATQ_PICKED_PORTS:-} $port"
}

# --- Postgres -----------------------------------------------------------------------------

pg_reachable() {
    if have pg_isready; then
        pg_isready -q -h "$CHATQ_PG_HOST" -p "$CHATQ_PG_PORT"
    else
        tcp_open "$CHATQ_PG_HOST" "$CHATQ_PG_PORT"
    fi
}

# The newest Debian cluster version under /etc/postgresql (e.g. "15"), or nothing.
pg_cluster_version() {
    [[ -d /etc/postgresql ]] || return 0
    find /etc/postgresql -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort -V | tail -n 1
}

pg_installed() {
    have pg_ctlcluster && [[ -n $(pg_cluster_version) ]]
}

pg_start_local() {
    local version
    version=$(pg_cluster_version)
    info "starting PostgreSQL $version (pg_ctlcluster)"
    # pg_ctlcluster as root switches to the cluster owner itself; as the owner it needs no root.
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
        pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
        die "could not start PostgreSQL $version." \
            "Try: sudo pg_ctlcluster --skip-systemctl-redirect $version main start"
    CHATQ_STARTED_SERVICES+=(postgres)
}

# A freshly installed Debian Postgres only trusts the local socket (peer auth); chatq connects
# over TCP as postgres without a password, so let loopback in. Only ever done right after this
# script installed Postgres itself: an existing cluster's auth is the owner's business.
pg_trust_loopback() {
    local hba
    hba="/etc/postgresql/$(pg_cluster_version)/main/pg_hba.conf"
    [[ -f $hba ]] || return 0
    info "allowing passwordless loopback connections as postgres (dev/test only) in $hba"
    as_root sed -i -e '1i host all postgres 127.0.0.1/32 trust' -e '1i host all postgres ::1/128 trust' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_cluster_version)" main reload || true
}

# --- Redis --------------------------------------------------------------------------------

redis_reachable() {
    local reply
    if have redis-cli; then
        # A Redis requiring a password (the compose one) answers NOAUTH: it is up.
        reply=$(redis-cli -h "$CHATQ_REDIS_HOST" -p "$CHATQ_REDIS_PORT" ping 2>/dev/null) || true
        [[ $reply == PONG || $reply == NOAUTH* ]]
    else
        tcp_open "$CHATQ_REDIS_HOST" "$CHATQ_REDIS_PORT"
    fi
}

redis_start_local() {
    info "starting Redis (redis-server --daemonize yes, nothing saved to disk)"
    # --dir /tmp: a daemonized redis-server must not depend on the caller's working directory.
    redis-server --daemonize yes --bind "$CHATQ_REDIS_HOST" -::1 --port "$CHATQ_REDIS_PORT" \
        --save "" --appendonly no --dir /tmp ||
        die "could not start redis-server."
    CHATQ_STARTED_SERVICES+=(redis)
}

# --- scratch Postgres and Redis (ops/chaos) -------------------------------------------------
# Throwaway servers in a temporary directory on other ports, for scripts that kill, flush and
# restart them: the machine's shared services are never touched.

# pg_server_bin: the newest Postgres server binary directory (with initdb), installing the
# server package when none is there.
pg_server_bin() {
    local dir found=""
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb ]] && found=$dir
    done
    if [[ -z $found ]] && apt_install postgresql; then
        for dir in /usr/lib/postgresql/*/bin; do
            [[ -x $dir/initdb ]] && found=$dir
        done
    fi
    [[ -n $found ]] || die "the Postgres server binaries (initdb) are not installed." \
        "Install them, e.g.: sudo apt-get install -y postgresql"
    printf '%s\n' "$found"
}

# as_pg_owner CMD...: run a Postgres server command as user postgres when this script is root
# (the server refuses to run as root), else as the current user.
as_pg_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# scratch_pg_ctl DIR PORT ARGS...: pg_ctl for the scratch cluster in DIR/pg, serving PORT on
# 127.0.0.1 with its socket in DIR/pg and its log in DIR/pg/server.log.
scratch_pg_ctl() {
    local dir=$1 port=$2
    shift 2
    as_pg_owner "$(pg_server_bin)/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" \
        -o "-p $port -k $dir/pg -c listen_addresses=127.0.0.1" "$@" >/dev/null
}

# start_scratch_postgres DIR PORT: a new cluster in DIR/pg (trust auth for user postgres),
# started on 127.0.0.1:PORT.
start_scratch_postgres() {
    local dir=$1 port=$2
    mkdir -p "$dir/pg"
    [[ $(id -u) -ne 0 ]] || chown postgres "$dir/pg"
    as_pg_owner "$(pg_server_bin)/initdb" -D "$dir/pg" -U postgres -A trust >/dev/null ||
        die "initdb of a scratch Postgres in $dir/pg failed."
    scratch_pg_ctl "$dir" "$port" start -w || die "the scratch Postgres on port $port did not start."
}

# stop_scratch_postgres DIR: stop the scratch cluster in DIR/pg at once; best effort.
stop_scratch_postgres() {
    [[ -f $1/pg/postmaster.pid ]] || return 0
    as_pg_owner "$(pg_server_bin)/pg_ctl" -D "$1/pg" stop -m immediate >/dev/null 2>&1 || true
}

# start_scratch_redis DIR PORT: a Redis on 127.0.0.1:PORT that saves nothing, logging to
# DIR/redis.log.
start_scratch_redis() {
    local dir=$1 port=$2
    have redis-server || apt_install redis-server ||
        die "redis-server is not installed." "Install it, e.g.: sudo apt-get install -y redis-server"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
        --dir "$dir" --logfile "$dir/redis.log" || die "the scratch Redis on port $port did not start."
}

# stop_scratch_redis PORT: shut the scratch Redis on PORT down; best effort.
stop_scratch_redis() {
    redis-cli -p "$1" shutdown nosave >/dev/null 2>&1 || true
}

# --- install / docker fallbacks -----------------------------------------------------------

apt_install() {
    have apt-get || return 1
    [[ $(id -u) -eq 0 ]] || { have sudo && sudo -n true 2>/dev/null; } || return 1
    info "installing $* with apt-get"
    as_root apt-get update -q >&2 &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >&2
}

docker_compose_usable() {
    have docker && docker compose version >/dev/null 2>&1 && docker info >/dev/null 2>&1 &&
        [[ -f $CHATQ_ROOT/docker-compose.yml || -f $CHATQ_ROOT/compose.yaml || -f $CHATQ_ROOT/compose.yml ]]
}

docker_compose_up() {
    local added
    # The compose file requires its secrets; generate the missing ones into .env (read by
    # compose and by ops/dev), once: later runs reuse them.
    added=$(ensure_compose_secrets "$CHATQ_ROOT/.env")
    [[ -z $added ]] || info "generated random ${added//$'\n'/ } in .env (kept for later runs)"
    load_dotenv "$CHATQ_ROOT/.env"
    info "starting $* with docker compose"
    (cd "$CHATQ_ROOT" && docker compose up -d "$@") >&2 || return 1
    CHATQ_STARTED_SERVICES+=(docker)
}

missing_services_message() {
    die "$1 is not reachable at $2 and could not be started." \
        "Install it, e.g. on Debian/Ubuntu: sudo apt-get install -y postgresql redis-server" \
        "(chatq expects Postgres on 127.0.0.1:5432 with trust auth for user postgres," \
        " and Redis on 127.0.0.1:6379), or install Docker and run: docker compose up -d postgres redis"
}

# --- the entry points ---------------------------------------------------------------------

# ensure_postgres: make Postgres answer on 127.0.0.1:5432, starting or installing it if needed.
ensure_postgres() {
    local addr="$CHATQ_PG_HOST:$CHATQ_PG_PORT"
    if pg_reachable; then
        info "PostgreSQL is up at $addr"
        return 0
    fi
    if pg_installed; then
        pg_start_local
    elif apt_install postgresql; then
        pg_reachable || pg_start_local
        pg_trust_loopback
    elif docker_compose_usable; then
        docker_compose_up postgres || missing_services_message PostgreSQL "$addr"
    else
        missing_services_message PostgreSQL "$addr"
    fi
    wait_for "PostgreSQL at $addr" "$CHATQ_SERVICE_TIMEOUT" pg_reachable ||
        missing_services_message PostgreSQL "$addr"
    info "PostgreSQL is up at $addr"
}

# ensure_redis: make Redis answer on 127.0.0.1:6379, starting or installing it if needed.
ensure_redis() {
    local addr="$CHATQ_REDIS_HOST:$CHATQ_REDIS_PORT"
    if redis_reachable; then
        info "Redis is up at $addr"
        return 0
    fi
    if have redis-server; then
        redis_start_local
    elif apt_install redis-server; then
        # The package's own service start may or may not work without systemd.
        wait_for "Redis (package service)" 3 redis_reachable 2>/dev/null || redis_start_local
    elif docker_compose_usable; then
        docker_compose_up redis || missing_services_message Redis "$addr"
    else
        missing_services_message Redis "$addr"
    fi
    wait_for "Redis at $addr" "$CHATQ_SERVICE_TIMEOUT" redis_reachable ||
        missing_services_message Redis "$addr"
    info "Redis is up at $addr"
}

# ensure_services: Postgres and Redis reachable, or exit with a message saying what to install.
ensure_services() {
    ensure_postgres
    ensure_redis
}

# stop_started_services: stop the services this shell started (and only those).
stop_started_services() {
    local service
    for service in "${CHATQ_STARTED_SERVICES[@]}"; do
        case $service in
        postgres)
            info "stopping PostgreSQL (started by this script)"
            as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_cluster_version)" main stop ||
                pg_ctlcluster --skip-systemctl-redirect "$(pg_cluster_version)" main stop || true
            ;;
        redis)
            info "stopping Redis (started by this script)"
            redis-cli -h "$CHATQ_REDIS_HOST" -p "$CHATQ_REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
            ;;
        docker)
            info "stopping docker compose services (started by this script)"
            (cd "$CHATQ_ROOT" && docker compose stop postgres redis) >&2 || true
            ;;
        esac
    done
    CHATQ_STARTED_SERVICES=()
}

# pg_admin_psql ARGS...: psql as user postgres on database postgres (the local psql, else psql
# inside the compose container); returns 3 when neither is available.
pg_admin_psql() {
    if have psql; then
        # The compose Postgres wants POSTGRES_PASSWORD; a trusting local one ignores it.
        PGPASSWORD=${PGPASSWORD:-${POSTGRES_PASSWORD:-}} psql -X -q -v ON_ERROR_STOP=1 -h "$CHATQ_PG_HOST" -p "$CHATQ_PG_PORT" -U postgres -d postgres "$@"
    elif docker_compose_usable; then
        docker compose -f "$CHATQ_ROOT/docker-compose.yml" exec -T postgres psql -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres "$@"
    else
        return 3
    fi
}

# ensure_database NAME: create database NAME on the local Postgres unless it exists.
ensure_database() {
    local name=$1
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "invalid database name: $name"
    if ! have psql && ! docker_compose_usable; then
        warn "no psql: cannot check that database $name exists (install postgresql-client)"
        return 0
    fi
    local exists
    exists=$(pg_admin_psql -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'") ||
        die "cannot connect to PostgreSQL at $CHATQ_PG_HOST:$CHATQ_PG_PORT as user postgres." \
            "chatq needs passwordless (trust) access for postgres over TCP in dev and test;" \
            "add 'host all postgres 127.0.0.1/32 trust' to pg_hba.conf and reload Postgres."
    if [[ $exists != 1 ]]; then
        info "creating database $name"
        pg_admin_psql -c "CREATE DATABASE \"$name\"" >/dev/null ||
            die "could not create database $name"
    fi
}

# drop_database NAME: drop database NAME (closing its connections) if it exists; best effort.
drop_database() {
    local name=$1
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "invalid database name: $name"
    pg_admin_psql -c "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1 ||
        warn "could not drop database $name"
}

# load_dotenv FILE: export the KEY=VALUE lines of FILE (a .env made from .env.example) for
# variables not already set: the environment wins, as with dotenv. Values may be quoted with
# '…' or "…"; no interpolation, no `export` prefix needed (but allowed).
load_dotenv() {
    local file=$1 line key value
    [[ -f $file ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line#export }
        [[ $line =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] || continue
        key=${BASH_REMATCH[1]}
        value=${BASH_REMATCH[2]}
        if [[ $value =~ ^\"(.*)\"[[:space:]]*$ || $value =~ ^\'(.*)\'[[:space:]]*$ ]]; then
            value=${BASH_REMATCH[1]}
        fi
        [[ -n ${!key+set} ]] || export "$key=$value"
    done <"$file"
}

# random_hex BYTES: BYTES random bytes as lowercase hex.
random_hex() {
    od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'
}

# The secrets docker-compose.yml requires (it has no default for any of them).
CHATQ_COMPOSE_SECRETS=(CHATQ_TOKEN_SECRET POSTGRES_PASSWORD REDIS_PASSWORD GRAFANA_ADMIN_PASSWORD)

# ensure_compose_secrets FILE: append a random value (32 bytes, hex: safe in URLs) to FILE for
# each compose secret set neither in the environment nor in FILE; values already there are
# kept, since the Postgres and Grafana volumes remember the passwords they were created with.
# FILE is readable by its owner only. Prints the names it added.
ensure_compose_secrets() {
    local file=$1 name
    (umask 077 && touch "$file")
    chmod 600 "$file"
    for name in "${CHATQ_COMPOSE_SECRETS[@]}"; do
        [[ -n ${!name:-} ]] && continue
        grep -Eq "^(export )?$name=.+" "$file" && continue
        [[ -z $(tail -c 1 "$file") ]] || printf '\n' >>"$file"
        printf '%s=%s\n' "$name" "$(random_hex 32)" >>"$file"
        printf '%s\n' "$name"
    done
}

# --- Rust tooling -------------------------------------------------------------------------

# have_nextest: whether `cargo nextest` works here.
have_nextest() {
    cargo nextest --version >/dev/null 2>&1
}

# use_sqlx_offline_data: builds check sqlx::query! macros against the committed .sqlx/ data
# rather than against whatever database DATABASE_URL names (which may be empty or not migrated
# yet). Respects an SQLX_OFFLINE the user set.
use_sqlx_offline_data() {
    if [[ -z ${SQLX_OFFLINE:-} && -d $CHATQ_ROOT/.sqlx ]]; then
        export SQLX_OFFLINE=true
    fi
}

# cargo_target_dir: where cargo puts binaries (CARGO_TARGET_DIR, or target/ in the repo).
cargo_target_dir() {
    local dir=${CARGO_TARGET_DIR:-target}
    [[ $dir == /* ]] || dir="$CHATQ_ROOT/$dir"
    printf '%s\n' "$dir"
}

# --- background processes -----------------------------------------------------------------

# Where start_bg writes each process's log (NAME.log); the caller sets it and creates it.
CHATQ_RUN_DIR=${CHATQ_RUN_DIR:-$CHATQ_ROOT/ops/.run}
# Parallel arrays: pid and name of each process start_bg started, in start order.
CHATQ_BG_PIDS=()
CHATQ_BG_NAMES=()

# start_bg NAME CMD...: run CMD in the background with its output in $CHATQ_RUN_DIR/NAME.log
# (appended, so a restarted process keeps one log).
start_bg() {
    local name=$1
    shift
    info "starting $name (log: $CHATQ_RUN_DIR/$name.log)"
    "$@" >>"$CHATQ_RUN_DIR/$name.log" 2>&1 &
    CHATQ_BG_PIDS+=("$!")
    CHATQ_BG_NAMES+=("$name")
}

# bg_pid NAME: the pid of the newest process start_bg started as NAME.
bg_pid() {
    local i
    for ((i = ${#CHATQ_BG_PIDS[@]} - 1; i >= 0; i--)); do
        if [[ ${CHATQ_BG_NAMES[i]} == "$1" ]]; then
            printf '%s\n' "${CHATQ_BG_PIDS[i]}"
            return 0
        fi
    done
    return 1
}

# log_tail NAME: the end of a process's log on stderr, for error messages.
log_tail() {
    printf '\n--- last lines of %s/%s.log ---\n' "$CHATQ_RUN_DIR" "$1" >&2
    tail -n 40 "$CHATQ_RUN_DIR/$1.log" >&2 || true
    printf -- '---\n' >&2
}

# stop_background: stop every process start_bg started, newest first (the API stops taking
# requests before the worker and the upstream go away): SIGTERM, then SIGKILL after 10 s.
stop_background() {
    local i pid deadline
    for ((i = ${#CHATQ_BG_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${CHATQ_BG_PIDS[i]}
        if kill -0 "$pid" 2>/dev/null; then
            info "stopping ${CHATQ_BG_NAMES[i]} (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + 10))
    for ((i = ${#CHATQ_BG_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${CHATQ_BG_PIDS[i]}
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            warn "${CHATQ_BG_NAMES[i]} (pid $pid) did not stop within 10s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    CHATQ_BG_PIDS=()
    CHATQ_BG_NAMES=()
}

# connect_addr ADDR: the address to connect to for a listen address (0.0.0.0 and [::] mean
# loopback).
connect_addr() {
    local addr=$1 host=${1%:*} port=${1##*:}
    case $host in
    0.0.0.0 | "[::]" | "") addr="127.0.0.1:$port" ;;
    esac
    printf '%s\n' "$addr"
}

# wait_http NAME URL [SECONDS]: wait until URL answers 2xx while the process start_bg started
# as NAME stays alive; exits with its log's tail when it dies or SECONDS pass.
wait_http() {
    local name=$1 url=$2 seconds=${3:-$CHATQ_SERVICE_TIMEOUT} pid
    pid=$(bg_pid "$name") || pid=""
    local deadline=$((SECONDS + seconds))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            log_tail "$name"
            die "$name exited during start-up (see the log above)."
        fi
        if ((SECONDS >= deadline)); then
            log_tail "$name"
            die "$name did not answer $url within ${seconds}s (see the log above)."
        fi
        sleep 0.2
    done
    info "$name is ready ($url)"
}

# fake_openai_listening: whether the fake OpenAI server started by start_fake_openai listens.
fake_openai_listening() {
    grep -q 'listening on' "$CHATQ_RUN_DIR/fake-openai.log" 2>/dev/null
}

# start_fake_openai BIN_DIR LISTEN [SECONDS]: start chatq-fake-openai on LISTEN (as process
# "fake-openai"), wait until it listens, and point OPENAI_BASE_URL and OPENAI_API_KEY at it.
start_fake_openai() {
    local bin_dir=$1 listen=$2 seconds=${3:-$CHATQ_SERVICE_TIMEOUT} printed
    : >"$CHATQ_RUN_DIR/fake-openai.log"
    start_bg fake-openai "$bin_dir/chatq-fake-openai" --listen "$listen"
    if ! wait_for "chatq-fake-openai" "$seconds" fake_openai_listening; then
        log_tail fake-openai
        die "chatq-fake-openai did not start (see the log above)."
    fi
    # Prefer the address the server says it bound.
    printed=$(sed -n 's/.*chatq-fake-openai listening on \(http[^[:space:]]*\).*/\1/p' "$CHATQ_RUN_DIR/fake-openai.log" | head -n 1)
    export OPENAI_BASE_URL="${printed:-http://$(connect_addr "$listen")/v1}"
    export OPENAI_API_KEY=sk-fake-dev
}
