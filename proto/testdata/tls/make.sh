#!/usr/bin/env bash
# Makes the test certificates in this directory (run once; the output is committed).
# Two CAs, each with one leaf certificate valid for gatehouse.test, localhost and
# 127.0.0.1, usable by servers and clients. For tests only: the keys are public.
set -euo pipefail
cd "$(dirname "$0")"
days=36500
leaf_ext=$(mktemp)
trap 'rm -f "$leaf_ext" ./*.csr ./*-ca-key.pem ./*.srl' EXIT
cat > "$leaf_ext" <<'EXT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:gatehouse.test, DNS:localhost, IP:127.0.0.1
EXT
for name in test other; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$name-ca-key.pem" -out "$name-ca.pem" -days "$days" -subj "/CN=gatehouse $name CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$name-key.pem" -out "$name.csr" -subj "/CN=gatehouse.test"
  openssl x509 -req -in "$name.csr" -CA "$name-ca.pem" -CAkey "$name-ca-key.pem" \
    -CAcreateserial -out "$name.pem" -days "$days" -extfile "$leaf_ext"
done
