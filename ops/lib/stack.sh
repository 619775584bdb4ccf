# shellcheck shell=bash
# A throwaway chatq stack for the ops scripts that test it from outside (ops/readme-tour,
# ops/fuzz-api): chatq-fake-openai, the worker and the API (debug binaries) on free ports, a
# fresh Postgres database and a unique Redis queue prefix, an admin and a client key.
#
# Source it after ops/lib/services.sh, from a script under `set -euo pipefail` that has set
# CHATQ_RUN_DIR (where the logs go) and calls stack_stop on exit:
#   stack_build
#   stack_start tour        # NAME goes into the database name and the queue prefix
#   curl "$STACK_API_URL/v1/threads" -H "Authorization: Bearer $STACK_CLIENT_KEY" ...
# It only defines variables and functions; nothing runs at source time.

STACK_BIN_DIR=""
STACK_DB=""
STACK_PREFIX=""
STACK_API_URL=""
STACK_ADMIN_KEY=""
STACK_CLIENT_KEY=""

# stack_build: builds the three binaries and sets STACK_BIN_DIR.
stack_build() {
    use_sqlx_offline_data
    cargo build -p chatq-api -p chatq-worker -p chatq-fake-openai
    STACK_BIN_DIR="$(cargo_target_dir)/debug"
    local bin
    for bin in chatq-api chatq-worker chatq-fake-openai; do
        [[ -x $STACK_BIN_DIR/$bin ]] || die "$STACK_BIN_DIR/$bin was not built."
    done
}

# stack_start NAME: migrates a fresh database, starts the fake OpenAI server, the worker and
# the API, waits until both answer /readyz and creates the keys. Exports the stack's
# DATABASE_URL, REDIS_URL, CHATQ_QUEUE_PREFIX and CHATQ_TOKEN_SECRET for the CLI.
stack_start() {
    local name=$1 suffix
    # Only what this function sets: a variable from the caller's shell must not point it elsewhere.
    unset CHATQ_LISTEN CHATQ_WORKER_LISTEN CHATQ_METRICS_LISTEN CHATQ_FAKE_OPENAI_LISTEN OPENAI_API_KEY OPENAI_BASE_URL
    suffix=$(random_hex 4)
    STACK_DB="chatq_${name}_$suffix"
    STACK_PREFIX="chatq-$name-$suffix"
    export DATABASE_URL="postgres://postgres@${CHATQ_PG_HOST}:${CHATQ_PG_PORT}/$STACK_DB"
    export REDIS_URL="redis://${CHATQ_REDIS_HOST}:${CHATQ_REDIS_PORT}"
    export CHATQ_QUEUE_PREFIX=$STACK_PREFIX
    export RUST_LOG="${RUST_LOG:-info}"
    CHATQ_TOKEN_SECRET=$(random_hex 32)
    export CHATQ_TOKEN_SECRET
    pick_listen CHATQ_FAKE_OPENAI_LISTEN 127.0.0.1:18089
    start_fake_openai "$STACK_BIN_DIR" "$CHATQ_FAKE_OPENAI_LISTEN"
    # A script that checks another OpenAI-compatible server sets STACK_PROVIDER_URL and
    # STACK_PROVIDER_KEY: the worker and the API talk to it instead of the fake.
    if [[ -n ${STACK_PROVIDER_URL:-} ]]; then
        export OPENAI_BASE_URL=$STACK_PROVIDER_URL OPENAI_API_KEY=${STACK_PROVIDER_KEY:-sk-unused}
        info "provider: $OPENAI_BASE_URL"
    fi
    pick_listen CHATQ_LISTEN 127.0.0.1:18080
    pick_listen CHATQ_WORKER_LISTEN 127.0.0.1:19091
    pick_listen CHATQ_METRICS_LISTEN 127.0.0.1:19092
    STACK_API_URL="http://$(connect_addr "$CHATQ_LISTEN")"
    info "database $STACK_DB, queue prefix $STACK_PREFIX, API $STACK_API_URL"
    "$STACK_BIN_DIR/chatq-api" migrate >"$CHATQ_RUN_DIR/migrate.log" 2>&1 || {
        log_tail migrate
        die "chatq-api migrate failed."
    }
    : >"$CHATQ_RUN_DIR/worker.log"
    : >"$CHATQ_RUN_DIR/api.log"
    start_bg worker "$STACK_BIN_DIR/chatq-worker"
    start_bg api "$STACK_BIN_DIR/chatq-api" serve
    wait_http worker "http://$(connect_addr "$CHATQ_WORKER_LISTEN")/readyz"
    wait_http api "$STACK_API_URL/readyz"
    STACK_ADMIN_KEY=$("$STACK_BIN_DIR/chatq-api" keys create --role admin --name "$name-admin" 2>>"$CHATQ_RUN_DIR/cli.log") ||
        die "chatq-api keys create failed" "$(tail -n 20 "$CHATQ_RUN_DIR/cli.log")"
    STACK_CLIENT_KEY=$("$STACK_BIN_DIR/chatq-api" keys create --role client --name "$name-client" 2>>"$CHATQ_RUN_DIR/cli.log") ||
        die "chatq-api keys create failed" "$(tail -n 20 "$CHATQ_RUN_DIR/cli.log")"
}

# stack_stop: stops what stack_start started, drops its database and its Redis keys, and stops
# the services ensure_services started.
stack_stop() {
    stop_background
    if [[ -n $STACK_DB ]]; then
        drop_database "$STACK_DB"
    fi
    if [[ -n $STACK_PREFIX ]] && have redis-cli; then
        redis-cli -h "$CHATQ_REDIS_HOST" -p "$CHATQ_REDIS_PORT" --scan --pattern "$STACK_PREFIX*" |
            xargs -r redis-cli -h "$CHATQ_REDIS_HOST" -p "$CHATQ_REDIS_PORT" del >/dev/null 2>&1 || true
    fi
    stop_started_services
}
