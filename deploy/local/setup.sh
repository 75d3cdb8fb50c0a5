#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for Attune: the system packages the real
# local servers need (Java 17 and Maven for Kafka, a JDK's javac for the hostile-input
# test's reader class, Debian's redis-server, openssl and redis-cli for their secure
# mode), then
# the attune package with its test extras, editable. Installs only what is
# missing; safe to run again. The Kafka jars are fetched by deploy/local/kafka.sh
# the first time a broker starts (once, cached in ~/.cache/attune).
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
# The JDK (it includes the JRE): tests/integration/test_hostile.py compiles a line reader
# for Kafka's own console producer with javac.
command -v javac >/dev/null 2>&1 || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# The secure servers (deploy/local/secure.sh, tests/integration/test_security.py): openssl
# makes the throwaway certificates, redis-cli checks the TLS port.
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v redis-cli >/dev/null 2>&1 || need+=(redis-tools)
if ((${#need[@]})); then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || {
            echo "setup: need root or sudo to install ${need[*]} (apt-get install ${need[*]})" >&2
            exit 1
        }
        sudo=sudo
    fi
    echo "setup: installing ${need[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

python -m pip install -q -e ".[test]"
echo "setup: done (java: $(command -v java), mvn: $(command -v mvn), redis-server: $(command -v redis-server))" >&2
