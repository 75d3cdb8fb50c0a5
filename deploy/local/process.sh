# Process handling shared by kafka.sh and redis.sh (sourced, not run).
#
# The sourcing script sets PIDFILE, LOG and STOP_TIMEOUT_S, and defines say,
# fail_start and owns_cmdline (true when a command line is its server's).

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# Alive and not a zombie.
alive() {
    kill -0 "$1" 2>/dev/null || return 1
    local stat
    [[ -r /proc/$1/stat ]] && read -r stat <"/proc/$1/stat" 2>/dev/null || return 0
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# The pid of *our* server (pid file, process alive, owns_cmdline accepts its
# command line), else fail: a stale pid reused by another process is never ours.
our_pid() {
    [[ -f $PIDFILE ]] || return 1
    local pid cmdline
    read -r pid <"$PIDFILE" || return 1
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
    if [[ -r /proc/$pid/cmdline ]]; then
        cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline")
    else
        cmdline=$(ps -o command= -p "$pid" 2>/dev/null) || return 1
    fi
    owns_cmdline "$cmdline" || return 1
    printf '%s\n' "$pid"
}

# SIGTERM, then SIGKILL after STOP_TIMEOUT_S.
stop_pid() {
    local pid=$1 deadline=$((SECONDS + STOP_TIMEOUT_S))
    kill -TERM "$pid" 2>/dev/null || return 0
    while alive "$pid"; do
        if ((SECONDS >= deadline)); then
            say "pid $pid still running ${STOP_TIMEOUT_S}s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 5))
            while alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
            break
        fi
        sleep 0.05
    done
}

# launch NAME COMMAND...: start COMMAND in its own session (it outlives this
# script and a Ctrl-C in its terminal), logging to LOG; the inner shell records
# its pid in PIDFILE, then becomes COMMAND. Sets LAUNCHED_PID once it is recorded.
launch() {
    local name=$1
    shift
    setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' "$name-launch" "$PIDFILE" "$@" \
        </dev/null >>"$LOG" 2>&1 &
    local deadline=$((SECONDS + 5))
    until [[ -s $PIDFILE ]]; do
        ((SECONDS < deadline)) || fail_start "$name did not start (no pid file $PIDFILE)"
        sleep 0.02
    done
    read -r LAUNCHED_PID <"$PIDFILE"
}

# Stop our server if it runs; forget its pid file either way.
stop_ours() {
    local pid
    if pid=$(our_pid); then
        say "stopping pid $pid"
        stop_pid "$pid"
        say "stopped"
    else
        say "already down"
    fi
    rm -f "$PIDFILE"
}
