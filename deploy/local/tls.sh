#!/usr/bin/env bash
# Throwaway TLS certificates for the secure local servers (deploy/local/secure.sh) and tests.
#
#   tls.sh DIR    make in DIR (once: an existing set is kept):
#     ca.pem, ca.key           a certificate authority of its own, made here and trusted by nothing else
#     server.pem, server.key   the servers' certificate for 127.0.0.1 and localhost, signed by that CA
#     server.p12               the same key and chain as a PKCS#12 keystore, for Kafka (Java);
#     server.p12.password      its password (random)
#
# Two calls with two directories make two CAs that do not trust each other: a client
# given the other DIR's ca.pem must refuse the servers (tests/integration/test_security.py).
# The keys are ECDSA P-256 (fast to make, accepted by Java, librdkafka, OpenSSL and Redis);
# the certificates are valid for 30 days. Exit status: 0 on success, 1 on error.
set -euo pipefail

say() { printf 'tls: %s\n' "$*" >&2; }
die() { printf 'tls: %s\n' "$*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: tls.sh DIR"
DIR=$1
readonly DAYS=30
command -v openssl >/dev/null 2>&1 || die "openssl not found on PATH; install it with apt-get install openssl"

if [[ -s $DIR/server.p12 && -s $DIR/ca.pem && -s $DIR/server.pem && -s $DIR/server.key ]]; then
    exit 0
fi
mkdir -p "$DIR"
chmod 700 "$DIR"
# Made aside and moved into place: an interrupted run never looks like a set.
tmp=$(mktemp -d "$DIR/.partial.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
tag=$(openssl rand -hex 4)
openssl req -x509 "${ec[@]}" -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -days "$DAYS" \
    -subj "/O=Attune/CN=Attune throwaway CA $tag" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>"$tmp/openssl.log" || die "openssl could not make the CA: $(cat "$tmp/openssl.log")"
openssl req "${ec[@]}" -keyout "$tmp/server.key" -out "$tmp/server.csr" \
    -subj "/O=Attune/CN=127.0.0.1" 2>"$tmp/openssl.log" ||
    die "openssl could not make the server key: $(cat "$tmp/openssl.log")"
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
    >"$tmp/server.ext"
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days "$DAYS" -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>"$tmp/openssl.log" ||
    die "openssl could not sign the server certificate: $(cat "$tmp/openssl.log")"
openssl rand -hex 16 >"$tmp/server.p12.password"
openssl pkcs12 -export -in "$tmp/server.pem" -inkey "$tmp/server.key" -certfile "$tmp/ca.pem" \
    -name server -out "$tmp/server.p12" -passout "file:$tmp/server.p12.password" \
    2>"$tmp/openssl.log" || die "openssl could not write the keystore: $(cat "$tmp/openssl.log")"
for f in ca.key ca.pem server.key server.pem server.p12 server.p12.password; do
    mv -f "$tmp/$f" "$DIR/$f"
done
chmod 600 "$DIR/ca.key" "$DIR/server.key" "$DIR/server.p12.password"
say "made a CA and a server certificate for 127.0.0.1 in $DIR ($DAYS days)"
