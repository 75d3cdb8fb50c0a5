#!/usr/bin/env bash
# Run a real Apache Kafka 4.1.0 broker on loopback, without Docker.
#
# One process in KRaft mode, broker and controller combined (node 1), with the
# machine's Java 17 and the Kafka jars fetched once from Maven Central by
# deploy/local/pom.xml. Used by hand, by flows/local.py (`attune local ...`)
# and by the pytest session fixtures in tests/conftest.py.
#
#   kafka.sh up [--cache-dir DIR] [--tls DIR --scram FILE]
#                                   start (or find already running) and wait until ready
#   kafka.sh down [--keep]          stop; delete the broker's data unless --keep
#   kafka.sh status                 one line: "<up|starting|down> bootstrap=... log=..."
#   kafka.sh check [--cache-dir DIR]  say what is missing (java, mvn) and how to install it
#
# Secure mode (deploy/local/secure.sh uses it): `up --tls DIR --scram FILE` makes the
# listener on ATTUNE_KAFKA_PORT SASL_SSL instead of PLAINTEXT: TLS with the keystore
# DIR/server.p12 made by deploy/local/tls.sh, and SASL/SCRAM-SHA-512 with the users of
# FILE (one "name password" a line; the first is the broker's own, inter-broker) created
# when the storage is formatted (kafka-storage format --add-scram). Nothing listens
# unauthenticated then but the controller port. `status` and a later `up` read the mode
# from server.properties; readiness is then a verified TLS handshake and the log's
# "Kafka Server started", as a raw metadata request needs SASL.
#
# Environment (the same variables flows/settings.py reads; defaults equal):
#   ATTUNE_STATE_DIR              data, logs, pid file, jar cache (default ~/.cache/attune)
#   ATTUNE_KAFKA_PORT             PLAINTEXT listener (default 19092)
#   ATTUNE_KAFKA_CONTROLLER_PORT  CONTROLLER listener (default 19093)
#   ATTUNE_PARTITIONS             num.partitions for topics created without a count (default 3)
#
# Layout under the state dir:
#   kafka-4.1.0/libs/             the jars (46, ~43 MB); fetched only when missing.
#                                 --cache-dir DIR reads them from DIR/kafka-4.1.0/libs
#                                 instead (tests share the default cache).
#   kafka-<port>/server.properties, kafka.pid, kafka.log (previous run: kafka.log.1)
#   kafka-<port>/data/            log.dirs and KRaft metadata; `down` deletes it so the
#                                 next `up` starts from an empty cluster, `down --keep`
#                                 keeps topics and offsets for the next `up`.
#
# auto.create.topics.enable=false: a misspelt topic fails loudly instead of
# appearing with default settings. Create topics explicitly with
# `attune topics create` (flows/topics.py).
#
# Exit status: 0 on success (`up` when already up and `down` when already down
# included; `status` when up), 1 on error, 3 from `status` when not up.
set -euo pipefail
# shellcheck source=deploy/local/process.sh
HERE=${BASH_SOURCE[0]%/*}
[[ $HERE == "${BASH_SOURCE[0]}" ]] && HERE=.
source "$HERE/process.sh"

# Our broker: the command line names kafka.Kafka and our server.properties.
owns_cmdline() { [[ $1 == *kafka.Kafka* && $1 == *"$PROPS"* ]]; }

readonly KAFKA_VERSION=4.1.0
readonly EXPECTED_JARS=46          # what deploy/local/pom.xml resolves to
readonly START_TIMEOUT_S=60        # bound on "process started" -> "metadata request answered"
readonly STOP_TIMEOUT_S=30         # SIGTERM (controlled shutdown), then SIGKILL
# 2-core machines: keep the heap modest.
readonly JAVA_OPTS=(-Xmx512m -Xms256m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
    -Dorg.slf4j.simpleLogger.showDateTime=true
    "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS")

# Builtins only until the tools are checked: `check` must work with an empty PATH.
HERE=${BASH_SOURCE[0]%/*}
[[ $HERE == "${BASH_SOURCE[0]}" ]] && HERE=.
STATE_DIR=${ATTUNE_STATE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/attune}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
PORT=${ATTUNE_KAFKA_PORT:-19092}
CONTROLLER_PORT=${ATTUNE_KAFKA_CONTROLLER_PORT:-19093}
PARTITIONS=${ATTUNE_PARTITIONS:-3}
CACHE_DIR=$STATE_DIR

say() { printf 'kafka: %s\n' "$*" >&2; }
die() { printf 'kafka: %s\n' "$*" >&2; exit 1; }

for _v in PORT CONTROLLER_PORT PARTITIONS; do
    [[ ${!_v} =~ ^[0-9]+$ ]] || die "$_v=${!_v} is not a number (check ATTUNE_KAFKA_PORT, ATTUNE_KAFKA_CONTROLLER_PORT, ATTUNE_PARTITIONS)"
done
((PORT != CONTROLLER_PORT)) || die "ATTUNE_KAFKA_PORT and ATTUNE_KAFKA_CONTROLLER_PORT are both $PORT; they must differ"

CMD=${1:-}
[[ $# -gt 0 ]] && shift
KEEP=0
TLS_DIR=""
SCRAM_FILE=""
SCRAM_NAMES=() SCRAM_PASSWORDS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --keep) KEEP=1 ;;
        --cache-dir) [[ $# -ge 2 ]] || die "--cache-dir needs a directory"; CACHE_DIR=$2; shift ;;
        --cache-dir=*) CACHE_DIR=${1#--cache-dir=} ;;
        --tls) [[ $# -ge 2 ]] || die "--tls needs a directory (made by deploy/local/tls.sh)"; TLS_DIR=$2; shift ;;
        --scram) [[ $# -ge 2 ]] || die "--scram needs a file of \"name password\" lines"; SCRAM_FILE=$2; shift ;;
        *) die "unknown option $1 (usage: kafka.sh up [--cache-dir DIR] [--tls DIR --scram FILE] | down [--keep] | status | check)" ;;
    esac
    shift
done
[[ $CACHE_DIR == /* ]] || CACHE_DIR=$PWD/$CACHE_DIR
if [[ -n $TLS_DIR || -n $SCRAM_FILE ]]; then
    [[ -n $TLS_DIR && -n $SCRAM_FILE ]] || die "--tls and --scram go together (secure mode needs both)"
    [[ $TLS_DIR == /* ]] || TLS_DIR=$PWD/$TLS_DIR
    [[ $SCRAM_FILE == /* ]] || SCRAM_FILE=$PWD/$SCRAM_FILE
fi

JARS_DIR=$CACHE_DIR/kafka-$KAFKA_VERSION/libs
INSTANCE_DIR=$STATE_DIR/kafka-$PORT
DATA_DIR=$INSTANCE_DIR/data
PROPS=$INSTANCE_DIR/server.properties
PIDFILE=$INSTANCE_DIR/kafka.pid
LOG=$INSTANCE_DIR/kafka.log

jars_cached() {
    [[ -f $JARS_DIR/kafka_2.13-$KAFKA_VERSION.jar && -f $JARS_DIR/kafka-server-$KAFKA_VERSION.jar ]] || return 1
    local jars=("$JARS_DIR"/*.jar)
    ((${#jars[@]} >= EXPECTED_JARS))
}

check_tools() {
    local missing=()
    command -v java >/dev/null 2>&1 ||
        missing+=("java not found on PATH; install it with apt-get install openjdk-17-jre-headless (Kafka $KAFKA_VERSION needs Java 17 or newer)")
    if ! jars_cached && ! command -v mvn >/dev/null 2>&1; then
        missing+=("mvn not found on PATH (needed once to fetch the Kafka $KAFKA_VERSION jars into $JARS_DIR); install it with apt-get install maven")
    fi
    if ((${#missing[@]})); then
        printf 'kafka: %s\n' "${missing[@]}" >&2
        exit 1
    fi
    local version
    version=$(java -version 2>&1) || die "java -version failed: $version"
    if [[ $version =~ version\ \"([0-9]+) ]] && ((BASH_REMATCH[1] < 17)); then
        die "Kafka $KAFKA_VERSION needs Java 17 or newer, $(command -v java) is Java ${BASH_REMATCH[1]}; install openjdk-17-jre-headless and put it first on PATH"
    fi
    if [[ -n $TLS_DIR ]]; then
        command -v openssl >/dev/null 2>&1 || die "openssl not found on PATH (secure mode checks the TLS listener with it); install it with apt-get install openssl"
        local f
        for f in ca.pem server.p12 server.p12.password; do
            [[ -r $TLS_DIR/$f ]] || die "$TLS_DIR/$f missing: make the certificates with deploy/local/tls.sh $TLS_DIR"
        done
    fi
}

fetch_jars() {
    jars_cached && return 0
    local tmp=$JARS_DIR.partial.$$
    say "fetching the Kafka $KAFKA_VERSION jars from Maven Central into $JARS_DIR (once, about a minute)"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    if ! mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies -DoutputDirectory="$tmp" >"$tmp.log" 2>&1; then
        tail -n 30 "$tmp.log" >&2 || true
        rm -rf "$tmp"
        die "mvn could not fetch the Kafka jars (output above, full log $tmp.log); check network access to Maven Central (or a mirror in ~/.m2/settings.xml)"
    fi
    rm -f "$tmp.log"
    # Rename into place so an interrupted fetch never looks like a cache.
    rm -rf "$JARS_DIR"
    mv "$tmp" "$JARS_DIR"
    jars_cached || die "mvn finished but $JARS_DIR lacks the expected $EXPECTED_JARS jars; delete it and retry"
}

# True when the broker answers a Metadata request (v4: the oldest Kafka 4 still
# serves) listing at least one broker. Raw bytes so that no client is needed.
metadata_ok() {
    local out bytes
    # size=27 | api_key=3 api_version=4 correlation_id=1 client_id="attune-probe" | topics=null allow_auto_create=false
    out=$(timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT || exit 1
        printf '\x00\x00\x00\x1b\x00\x03\x00\x04\x00\x00\x00\x01\x00\x0cattune-probe\xff\xff\xff\xff\x00' >&3
        od -An -tu1 -N16 <&3" 2>/dev/null) || return 1
    read -ra bytes <<<"$out"
    ((${#bytes[@]} == 16)) || return 1
    # Response: size(4) correlation_id(4) throttle_time_ms(4) brokers array length(4) ...
    ((bytes[4] == 0 && bytes[5] == 0 && bytes[6] == 0 && bytes[7] == 1)) || return 1
    (((bytes[12] << 24 | bytes[13] << 16 | bytes[14] << 8 | bytes[15]) >= 1))
}

# True when the SASL_SSL listener completes a TLS handshake verified with the CA.
tls_ok() {
    timeout 5 openssl s_client -connect "127.0.0.1:$PORT" -CAfile "$TLS_DIR/ca.pem" \
        -verify_return_error -brief </dev/null >/dev/null 2>&1
}

# True when the broker serves clients: it answers a metadata request (PLAINTEXT) or, in
# secure mode, logged its start and completes a verified TLS handshake.
broker_ready() {
    if [[ -z $TLS_DIR ]]; then
        port_open "$PORT" && metadata_ok
    else
        grep -q 'Kafka Server started' "$LOG" 2>/dev/null && tls_ok
    fi
}

# Secure mode of a broker started before (status, or up while it runs): from its
# server.properties, when no --tls was given.
detect_mode() {
    [[ -z $TLS_DIR && -f $PROPS ]] || return 0
    grep -q '^listeners=SASL_SSL' "$PROPS" || return 0
    TLS_DIR=$(sed -n 's|^ssl.keystore.location=\(.*\)/server.p12$|\1|p' "$PROPS")
}

# The SCRAM users of secure mode: "name password" lines, names and passwords of
# [A-Za-z0-9._-] (they go into a JAAS line and --add-scram unquoted); sets SCRAM_NAMES
# and SCRAM_PASSWORDS.
read_scram_users() {
    SCRAM_NAMES=() SCRAM_PASSWORDS=()
    [[ -r $SCRAM_FILE ]] || die "cannot read the SCRAM users file $SCRAM_FILE"
    local name password rest
    while read -r name password rest || [[ -n $name ]]; do
        [[ -z $name || $name == \#* ]] && continue
        [[ $name =~ ^[A-Za-z0-9._-]+$ && $password =~ ^[A-Za-z0-9._-]+$ && -z $rest ]] ||
            die "$SCRAM_FILE: each line must be \"name password\" of letters, digits, . _ -"
        SCRAM_NAMES+=("$name") SCRAM_PASSWORDS+=("$password")
    done <"$SCRAM_FILE"
    ((${#SCRAM_NAMES[@]})) || die "$SCRAM_FILE names no SCRAM user"
}

# The listener lines: PLAINTEXT, or SASL_SSL with SCRAM-SHA-512 in secure mode.
listener_properties() {
    if [[ -z $TLS_DIR ]]; then
        cat <<EOF
listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
EOF
        return
    fi
    local keystore_password
    read -r keystore_password <"$TLS_DIR/server.p12.password"
    cat <<EOF
listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${SCRAM_NAMES[0]}" password="${SCRAM_PASSWORDS[0]}";
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_DIR/server.p12
ssl.keystore.password=$keystore_password
# The broker checks its own certificate (and, inter-broker, its peers') against the CA.
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
ssl.client.auth=none
EOF
}

write_properties() {
    {
        cat <<EOF
# Written by deploy/local/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
EOF
        listener_properties
        cat <<EOF
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$CONTROLLER_PORT
log.dirs=$DATA_DIR
num.partitions=$PARTITIONS
# Topics are created explicitly (attune topics create, test fixtures).
auto.create.topics.enable=false
# One broker: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions than the default 50: the first consumer group joins faster.
offsets.topic.num.partitions=5
transaction.state.log.num.partitions=5
# No 3 s wait before the first rebalance of a new consumer group.
group.initial.rebalance.delay.ms=0
EOF
    } >"$PROPS"
    chmod 600 "$PROPS"
}

format_storage() {
    [[ -f $DATA_DIR/meta.properties ]] && {
        local formatted_for=""
        [[ -f $DATA_DIR/attune-controller-port ]] && read -r formatted_for <"$DATA_DIR/attune-controller-port"
        [[ -z $formatted_for || $formatted_for == "$CONTROLLER_PORT" ]] ||
            die "$DATA_DIR was formatted for controller port $formatted_for, not $CONTROLLER_PORT; run 'kafka.sh down' (without --keep) to start clean"
        return 0
    }
    local cluster_id scram=() i
    for ((i = 0; i < ${#SCRAM_NAMES[@]}; i++)); do
        scram+=(--add-scram "SCRAM-SHA-512=[name=${SCRAM_NAMES[i]},password=${SCRAM_PASSWORDS[i]}]")
    done
    # Any 16 random bytes in URL-safe base64 without padding is a valid cluster id.
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
    mkdir -p "$DATA_DIR"
    say "formatting $DATA_DIR (cluster id $cluster_id)"
    if ! java -Xmx256m -cp "$JARS_DIR/*" kafka.tools.StorageTool format --standalone \
        -t "$cluster_id" -c "$PROPS" "${scram[@]}" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2 || true
        rm -rf "$DATA_DIR"
        die "formatting the storage failed (log above, full log $LOG)"
    fi
    printf '%s\n' "$CONTROLLER_PORT" >"$DATA_DIR/attune-controller-port"
}

# Stop the process $1: SIGTERM, wait, then SIGKILL.

fail_start() {
    {
        printf 'kafka: %s\n' "$1"
        printf 'kafka: last 40 lines of %s:\n' "$LOG"
        tail -n 40 "$LOG" 2>/dev/null | sed 's/^/    /'
        if [[ -d $DATA_DIR ]]; then
            printf 'kafka: if %s holds data from an older run, "kafka.sh down" deletes it and the next "up" starts clean\n' "$DATA_DIR"
        fi
    } >&2
    local pid
    if pid=$(our_pid); then stop_pid "$pid"; fi
    rm -f "$PIDFILE"
    exit 1
}

wait_ready() {
    local pid=$1 started=$SECONDS deadline=$((SECONDS + START_TIMEOUT_S))
    while :; do
        alive "$pid" || fail_start "the broker (pid $pid) exited during start-up"
        if broker_ready; then
            say "up at 127.0.0.1:$PORT (pid $pid, ready after $((SECONDS - started))s)"
            return 0
        fi
        ((SECONDS < deadline)) || fail_start "the broker (pid $pid) did not answer a metadata request on 127.0.0.1:$PORT within ${START_TIMEOUT_S}s"
        sleep 0.25
    done
}

cmd_up() {
    check_tools
    local pid
    if pid=$(our_pid); then
        detect_mode
        if broker_ready; then
            say "already up at 127.0.0.1:$PORT (pid $pid)"
            return 0
        fi
        say "already starting (pid $pid); waiting until ready"
        wait_ready "$pid"
        return 0
    fi
    rm -f "$PIDFILE"
    local p
    for p in "$PORT" "$CONTROLLER_PORT"; do
        port_open "$p" && die "port $p on 127.0.0.1 is already in use by another process; stop it, or choose other ports with ATTUNE_KAFKA_PORT / ATTUNE_KAFKA_CONTROLLER_PORT"
    done
    fetch_jars
    [[ -z $TLS_DIR ]] || read_scram_users
    mkdir -p "$INSTANCE_DIR"
    [[ -f $LOG ]] && mv -f "$LOG" "$LOG.1"
    write_properties
    format_storage
    say "starting on 127.0.0.1:$PORT (controller 127.0.0.1:$CONTROLLER_PORT, log $LOG)"
    launch "the broker" java "${JAVA_OPTS[@]}" -cp "$JARS_DIR/*" kafka.Kafka "$PROPS"
    wait_ready "$LAUNCHED_PID"
}

cmd_down() {
    stop_ours
    if ((KEEP)); then
        [[ -d $DATA_DIR ]] && say "kept $DATA_DIR (--keep)"
    elif [[ -d $DATA_DIR ]]; then
        rm -rf -- "$DATA_DIR"
        say "deleted $DATA_DIR (use down --keep to keep topics for the next up)"
    fi
    return 0
}

cmd_status() {
    local pid state=down rc=3 extra=""
    detect_mode
    if pid=$(our_pid); then
        if broker_ready; then state=up rc=0; else state=starting; fi
        extra=" pid=$pid"
    elif [[ -f $PIDFILE ]]; then
        extra=" (stale pid file)"
    fi
    [[ -z $TLS_DIR ]] || extra+=" security=SASL_SSL"
    printf '%s bootstrap=127.0.0.1:%s%s log=%s\n' "$state" "$PORT" "$extra" "$LOG"
    return "$rc"
}

case $CMD in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    check) check_tools; say "java found$(jars_cached && echo ", jars cached in $JARS_DIR" || echo ", mvn found")" ;;
    *) die "usage: kafka.sh up [--cache-dir DIR] | down [--keep] | status | check" ;;
esac
