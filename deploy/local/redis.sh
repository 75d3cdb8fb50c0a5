#!/usr/bin/env bash
# Run a real Redis server on loopback, without Docker.
#
# Debian's redis-server, bound to 127.0.0.1, no persistence (no RDB snapshots,
# no AOF): a scratch server for tests and demos. Used by hand, by
# flows/local.py (`attune local ...`) and by the pytest session fixtures.
#
#   redis.sh up       start (or find already running) and wait until it answers PING
#   redis.sh down     stop (SIGTERM, then SIGKILL after a bound); nothing is kept
#   redis.sh status   one line: "<up|starting|down> url=redis://... log=..."
#   redis.sh check    say whether redis-server is installed and how to install it
#
# Environment (the same variables flows/settings.py reads; defaults equal):
#   ATTUNE_STATE_DIR   pid file and log (default ~/.cache/attune)
#   ATTUNE_REDIS_PORT  port (default 16379)
#
# Layout: <state dir>/redis-<port>/redis.pid, redis.log (previous run: redis.log.1).
# Exit status: 0 on success (`up` when already up and `down` when already down
# included; `status` when up), 1 on error, 3 from `status` when not up.
set -euo pipefail
# shellcheck source=deploy/local/process.sh
HERE=${BASH_SOURCE[0]%/*}
[[ $HERE == "${BASH_SOURCE[0]}" ]] && HERE=.
source "$HERE/process.sh"

# Our server: Redis rewrites its title to "redis-server 127.0.0.1:<port>".
owns_cmdline() { [[ $1 == *redis-server* && $1 == *":$PORT"* ]]; }

readonly START_TIMEOUT_S=10
readonly STOP_TIMEOUT_S=10

# Builtins only until the tools are checked: `check` must work with an empty PATH.
STATE_DIR=${ATTUNE_STATE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/attune}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
PORT=${ATTUNE_REDIS_PORT:-16379}

say() { printf 'redis: %s\n' "$*" >&2; }
die() { printf 'redis: %s\n' "$*" >&2; exit 1; }

[[ $PORT =~ ^[0-9]+$ ]] || die "ATTUNE_REDIS_PORT=$PORT is not a number"
CMD=${1:-}
[[ $# -le 1 ]] || die "unexpected arguments after $CMD (usage: redis.sh up | down | status | check)"

INSTANCE_DIR=$STATE_DIR/redis-$PORT
PIDFILE=$INSTANCE_DIR/redis.pid
LOG=$INSTANCE_DIR/redis.log

check_tools() {
    command -v redis-server >/dev/null 2>&1 ||
        die "redis-server not found on PATH; install it with apt-get install redis-server (or point ATTUNE_REDIS_URL at a running Redis)"
}


# True when the server answers PING with +PONG (RESP, no redis-cli needed).
ping_ok() {
    timeout 3 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT || exit 1
        printf 'PING\r\n' >&3
        read -r reply <&3 && [[ \$reply == +PONG* ]]" 2>/dev/null
}

# True while process $1 runs (a zombie waiting for its parent to reap it has exited).



fail_start() {
    {
        printf 'redis: %s\n' "$1"
        printf 'redis: last 20 lines of %s:\n' "$LOG"
        tail -n 20 "$LOG" 2>/dev/null | sed 's/^/    /'
    } >&2
    local pid
    if pid=$(our_pid); then stop_pid "$pid"; fi
    rm -f "$PIDFILE"
    exit 1
}

wait_ready() {
    local pid=$1 deadline=$((SECONDS + START_TIMEOUT_S))
    until ping_ok; do
        alive "$pid" || fail_start "redis-server (pid $pid) exited during start-up"
        ((SECONDS < deadline)) || fail_start "redis-server (pid $pid) did not answer PING on 127.0.0.1:$PORT within ${START_TIMEOUT_S}s"
        sleep 0.05
    done
    say "up at 127.0.0.1:$PORT (pid $pid)"
}

cmd_up() {
    check_tools
    local pid
    if pid=$(our_pid); then
        if ping_ok; then
            say "already up at 127.0.0.1:$PORT (pid $pid)"
            return 0
        fi
        wait_ready "$pid"
        return 0
    fi
    rm -f "$PIDFILE"
    port_open "$PORT" && die "port $PORT on 127.0.0.1 is already in use by another process; stop it, or choose another port with ATTUNE_REDIS_PORT"
    mkdir -p "$INSTANCE_DIR"
    [[ -f $LOG ]] && mv -f "$LOG" "$LOG.1"
    say "starting on 127.0.0.1:$PORT (log $LOG)"
    # Not --daemonize: we know the pid at once and notice an early exit.
    launch redis-server redis-server --bind 127.0.0.1 --port "$PORT" --protected-mode yes \
        --save '' --appendonly no --daemonize no --dir "$INSTANCE_DIR" --logfile "$LOG"
    wait_ready "$LAUNCHED_PID"
}

cmd_down() {
    stop_ours
}

cmd_status() {
    local pid state=down rc=3 extra=""
    if pid=$(our_pid); then
        if ping_ok; then state=up rc=0; else state=starting; fi
        extra=" pid=$pid"
    elif [[ -f $PIDFILE ]]; then
        extra=" (stale pid file)"
    fi
    printf '%s url=redis://127.0.0.1:%s/0%s log=%s\n' "$state" "$PORT" "$extra" "$LOG"
    return "$rc"
}

case $CMD in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    check) check_tools; say "redis-server found: $(command -v redis-server)" ;;
    *) die "usage: redis.sh up | down | status | check" ;;
esac
