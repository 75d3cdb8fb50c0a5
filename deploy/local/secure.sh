#!/usr/bin/env bash
# Secure local servers: a Kafka broker that speaks only SASL_SSL (SCRAM-SHA-512) and a Redis
# that speaks only TLS and knows one ACL user limited to Attune's keys, on loopback, for
# trying Attune's security settings and for tests/integration/test_security.py
# (docs/security.md). The servers are the ones kafka.sh and redis.sh run, in their
# secure mode; this script makes what that mode needs and says how a client connects.
#
#   secure.sh up [--cache-dir DIR]   make certificates, users and passwords (once), start
#                                    both (or find them running), print the client env file
#   secure.sh down                   stop both; delete Kafka's data and the credentials
#   secure.sh status                 kafka.sh status and redis.sh status, one line each
#
# Environment (as kafka.sh and redis.sh; the defaults differ from theirs so that the
# plain servers of `attune local up` can run next to these):
#   ATTUNE_STATE_DIR              (default ~/.cache/attune)
#   ATTUNE_KAFKA_PORT             SASL_SSL listener (default 19094)
#   ATTUNE_KAFKA_CONTROLLER_PORT  controller listener (default 19095)
#   ATTUNE_REDIS_PORT             TLS port (default 16380)
#   ATTUNE_REDIS_PREFIX           the keys the Redis user may use: <prefix>* (default attune:)
#
# Layout under <state dir>/secure-<kafka port>/:
#   tls/           a throwaway CA and the servers' certificate (deploy/local/tls.sh)
#   kafka-users    SCRAM users: attune-broker (inter-broker) and attune (clients)
#   redis.acl      user default off; user attune, ~<prefix>* and the commands Attune runs
#   client.env     `export ATTUNE_...=...` lines: the settings of a client of both servers
#                  (source it, or pass it to Settings.from_env); mode 600, holds passwords
#
# Exit status: 0 on success, 1 on error, 3 from `status` when a server is not up.
set -euo pipefail
HERE=${BASH_SOURCE[0]%/*}
[[ $HERE == "${BASH_SOURCE[0]}" ]] && HERE=.

say() { printf 'secure: %s\n' "$*" >&2; }
die() { printf 'secure: %s\n' "$*" >&2; exit 1; }

STATE_DIR=${ATTUNE_STATE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/attune}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
export ATTUNE_STATE_DIR=$STATE_DIR
export ATTUNE_KAFKA_PORT=${ATTUNE_KAFKA_PORT:-19094}
export ATTUNE_KAFKA_CONTROLLER_PORT=${ATTUNE_KAFKA_CONTROLLER_PORT:-19095}
export ATTUNE_REDIS_PORT=${ATTUNE_REDIS_PORT:-16380}
PREFIX=${ATTUNE_REDIS_PREFIX:-attune:}
[[ $PREFIX =~ ^[A-Za-z0-9._:-]+$ ]] || die "ATTUNE_REDIS_PREFIX=$PREFIX: use letters, digits and . _ : - (it goes into an ACL key pattern)"

CMD=${1:-}
[[ $# -gt 0 ]] && shift
KAFKA_ARGS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --cache-dir) [[ $# -ge 2 ]] || die "--cache-dir needs a directory"; KAFKA_ARGS+=(--cache-dir "$2"); shift ;;
        --cache-dir=*) KAFKA_ARGS+=("$1") ;;
        *) die "unknown option $1 (usage: secure.sh up [--cache-dir DIR] | down | status)" ;;
    esac
    shift
done

DIR=$STATE_DIR/secure-$ATTUNE_KAFKA_PORT
TLS_DIR=$DIR/tls
KAFKA_USERS=$DIR/kafka-users
REDIS_ACL=$DIR/redis.acl
CLIENT_ENV=$DIR/client.env
readonly CLIENT_USER=attune

# The Redis commands Attune runs, and nothing else: the flow's sink (SET/EXPIRE, hashes,
# the alias buckets' EXPIREAT, audience sets, trending sorted sets, EVAL of the one-off segments conversion and the
# commands inside it), the model board (GETRANGE of a snapshot's header, GET), the stream
# clock (HSET/EXPIRE/HGETALL), the clients' reads (GET/MGET, HGETALL/HMGET/HKEYS, SMEMBERS,
# ZREVRANGE, pipelines), `attune erase` (SCAN, MGET, SREM/SMISMEMBER, DEL, HDEL),
# `attune redis-upgrade` (HSETNX into the alias buckets) and a
# connection's own (AUTH, HELLO, PING, CLIENT SETNAME). A command the
# code starts to use must be added here, or the secure tests fail with NOPERM.
readonly REDIS_COMMANDS=(
    ping auth hello select client\|setname
    get getrange mget set del unlink exists type ttl pttl expire pexpire expireat scan
    hset hsetnx hdel hget hmget hgetall hkeys hlen
    sadd srem smembers smismember sismember
    zadd zrem zrevrange zrange zremrangebyrank zscore
    eval
)

# "name password" lines; passwords from /dev/urandom, letters and digits only.
new_password() { head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24; }

make_credentials() {
    mkdir -p "$DIR"
    chmod 700 "$DIR"
    bash "$HERE/tls.sh" "$TLS_DIR"
    if [[ ! -s $KAFKA_USERS ]]; then
        umask 077
        printf 'attune-broker %s\n%s %s\n' "$(new_password)" "$CLIENT_USER" "$(new_password)" >"$KAFKA_USERS"
    fi
    local kafka_password redis_password="" line
    kafka_password=$(awk -v u="$CLIENT_USER" '$1 == u {print $2}' "$KAFKA_USERS")
    if [[ -s $REDIS_ACL ]]; then
        line=$(grep "^user $CLIENT_USER " "$REDIS_ACL") || die "$REDIS_ACL has no user $CLIENT_USER; run secure.sh down to start clean"
        redis_password=$(sed -n 's/.* >\([A-Za-z0-9]*\) .*/\1/p' <<<"$line")
    fi
    [[ -n $redis_password ]] || redis_password=$(new_password)
    (
        umask 077
        printf '%s\n' "user default off" \
            "user $CLIENT_USER on >$redis_password resetkeys ~${PREFIX}* resetchannels -@all $(printf '+%s ' "${REDIS_COMMANDS[@]}")" \
            >"$REDIS_ACL"
        cat >"$CLIENT_ENV" <<EOF
# Settings of a client of the secure local servers (deploy/local/secure.sh); holds passwords.
export ATTUNE_KAFKA_BOOTSTRAP=127.0.0.1:$ATTUNE_KAFKA_PORT
export ATTUNE_KAFKA_SECURITY_PROTOCOL=SASL_SSL
export ATTUNE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512
export ATTUNE_KAFKA_SASL_USERNAME=$CLIENT_USER
export ATTUNE_KAFKA_SASL_PASSWORD=$kafka_password
export ATTUNE_KAFKA_SSL_CAFILE=$TLS_DIR/ca.pem
export ATTUNE_REDIS_URL=rediss://127.0.0.1:$ATTUNE_REDIS_PORT/0
export ATTUNE_REDIS_USERNAME=$CLIENT_USER
export ATTUNE_REDIS_PASSWORD=$redis_password
export ATTUNE_REDIS_SSL_CAFILE=$TLS_DIR/ca.pem
export ATTUNE_REDIS_PREFIX=$PREFIX
EOF
    )
}

cmd_up() {
    make_credentials
    bash "$HERE/redis.sh" up --tls "$TLS_DIR" --acl "$REDIS_ACL"
    bash "$HERE/kafka.sh" up "${KAFKA_ARGS[@]}" --tls "$TLS_DIR" --scram "$KAFKA_USERS"
    say "client settings in $CLIENT_ENV (source it: . $CLIENT_ENV)"
    printf '%s\n' "$CLIENT_ENV"
}

cmd_down() {
    local rc=0
    bash "$HERE/kafka.sh" down || rc=1
    bash "$HERE/redis.sh" down || rc=1
    rm -rf -- "$DIR"
    return "$rc"
}

cmd_status() {
    local rc=0
    bash "$HERE/kafka.sh" status || rc=$?
    bash "$HERE/redis.sh" status || rc=$?
    return "$rc"
}

case $CMD in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) die "usage: secure.sh up [--cache-dir DIR] | down | status" ;;
esac
