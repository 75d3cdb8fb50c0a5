#!/usr/bin/env bash
# Run a real Redis server on loopback, without Docker.
#
# Debian's redis-server, bound to 127.0.0.1, no persistence (no RDB snapshots,
# no AOF): a scratch server for tests and demos. Used by hand, by
# flows/local.py (`attune local ...`) and by the pytest session fixtures.
#
#   redis.sh up [--tls DIR --acl FILE]
#                     start (or find already running) and wait until it answers PING
#   redis.sh down     stop (SIGTERM, then SIGKILL after a bound); nothing is kept
#   redis.sh status   one line: "<up|starting|down> url=redis://... log=..."
#   redis.sh check    say whether redis-server is installed and how to install it
#
# Secure mode (deploy/local/secure.sh uses it): `up --tls DIR --acl FILE` serves TLS only
# (--tls-port ATTUNE_REDIS_PORT, --port 0) with DIR/server.pem and server.key made by
# deploy/local/tls.sh (clients are not asked for certificates), and loads its users from
# the ACL file FILE (which should disable the default user). `status` and a later `up`
# read the mode from DIR recorded in the instance directory; readiness is then a PING by
# redis-cli over TLS verified with the CA, answered by PONG or NOAUTH (the default user is off).
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
[[ $# -gt 0 ]] && shift
TLS_DIR=""
ACL_FILE=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --tls) [[ $# -ge 2 ]] || die "--tls needs a directory (made by deploy/local/tls.sh)"; TLS_DIR=$2; shift ;;
        --acl) [[ $# -ge 2 ]] || die "--acl needs an ACL file"; ACL_FILE=$2; shift ;;
        *) die "unexpected argument $1 (usage: redis.sh up [--tls DIR --acl FILE] | down | status | check)" ;;
    esac
    shift
done
if [[ -n $TLS_DIR || -n $ACL_FILE ]]; then
    [[ -n $TLS_DIR && -n $ACL_FILE ]] || die "--tls and --acl go together (secure mode needs both)"
    [[ $TLS_DIR == /* ]] || TLS_DIR=$PWD/$TLS_DIR
    [[ $ACL_FILE == /* ]] || ACL_FILE=$PWD/$ACL_FILE
fi

INSTANCE_DIR=$STATE_DIR/redis-$PORT
PIDFILE=$INSTANCE_DIR/redis.pid
LOG=$INSTANCE_DIR/redis.log
# Secure mode of the server that runs: the TLS directory it was started with.
MODE_FILE=$INSTANCE_DIR/tls-dir

check_tools() {
    command -v redis-server >/dev/null 2>&1 ||
        die "redis-server not found on PATH; install it with apt-get install redis-server (or point ATTUNE_REDIS_URL at a running Redis)"
    [[ -n $TLS_DIR ]] || return 0
    command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found on PATH (secure mode checks the TLS port with it); install it with apt-get install redis-tools"
    local f
    for f in ca.pem server.pem server.key; do
        [[ -r $TLS_DIR/$f ]] || die "$TLS_DIR/$f missing: make the certificates with deploy/local/tls.sh $TLS_DIR"
    done
    [[ -r $ACL_FILE ]] || die "cannot read the ACL file $ACL_FILE"
}

detect_mode() {
    [[ -z $TLS_DIR && -f $MODE_FILE ]] || return 0
    read -r TLS_DIR <"$MODE_FILE" || TLS_DIR=""
}


# True when the server answers PING with +PONG (RESP, no redis-cli needed).
# In secure mode: over TLS verified with the CA, and -NOAUTH counts (the default user is off).
ping_ok() {
    if [[ -n $TLS_DIR ]]; then
        local reply
        reply=$(timeout 3 redis-cli --tls --cacert "$TLS_DIR/ca.pem" -h 127.0.0.1 -p "$PORT" \
            PING 2>/dev/null) || return 1
        [[ $reply == PONG* || $reply == NOAUTH* ]]
        return
    fi
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
        detect_mode
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
    local listen=(--port "$PORT")
    rm -f "$MODE_FILE"
    if [[ -n $TLS_DIR ]]; then
        listen=(--port 0 --tls-port "$PORT" --tls-cert-file "$TLS_DIR/server.pem"
            --tls-key-file "$TLS_DIR/server.key" --tls-ca-cert-file "$TLS_DIR/ca.pem"
            --tls-auth-clients no --aclfile "$ACL_FILE")
        printf '%s\n' "$TLS_DIR" >"$MODE_FILE"
    fi
    # Not --daemonize: we know the pid at once and notice an early exit.
    launch redis-server redis-server --bind 127.0.0.1 "${listen[@]}" --protected-mode yes \
        --save '' --appendonly no --daemonize no --dir "$INSTANCE_DIR" --logfile "$LOG"
    wait_ready "$LAUNCHED_PID"
}

cmd_down() {
    stop_ours
    rm -f "$MODE_FILE"
}

cmd_status() {
    local pid state=down rc=3 extra="" scheme=redis
    detect_mode
    [[ -z $TLS_DIR ]] || scheme=rediss
    if pid=$(our_pid); then
        if ping_ok; then state=up rc=0; else state=starting; fi
        extra=" pid=$pid"
    elif [[ -f $PIDFILE ]]; then
        extra=" (stale pid file)"
    fi
    printf '%s url=%s://127.0.0.1:%s/0%s log=%s\n' "$state" "$scheme" "$PORT" "$extra" "$LOG"
    return "$rc"
}

case $CMD in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    check) check_tools; say "redis-server found: $(command -v redis-server)" ;;
    *) die "usage: redis.sh up | down | status | check" ;;
esac
